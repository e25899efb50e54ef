"""The gateway enforces AWS IoT policies: policies with variables made and attached with the AWS
CLI, devices driven by mosquitto clients and raw MQTT 5 sockets. Each allow has its deny: a
connect with a client ID the policy does not name, a publish or subscribe outside the device's
topics, two devices kept apart by `${iot:Connection.Thing.ThingName}`, and policy changes that
reach a live session without a reconnect."""

from __future__ import annotations

import json
import struct
import time
import uuid

from test_gateway import (
    Device, closed_by_peer, connack, connect_packet, make_device, mosquitto, mqtt_string, packet, read_exactly,
    refused, start_sub, tls_socket,
)

ARN = "arn:aws:iot:us-east-1:*:"


def document(*statements: dict) -> str:
    return json.dumps({"Version": "2012-10-17", "Statement": list(statements)})


def allow(actions, *resources: str) -> dict:
    return {"Effect": "Allow", "Action": actions, "Resource": [ARN + resource for resource in resources]}


def create_policy(server, name: str, doc: str) -> None:
    server.aws("create-policy", "--policy-name", name, "--policy-document", doc)


def attach_policy(server, name: str, device: Device) -> None:
    server.aws("attach-policy", "--policy-name", name, "--target", cert_arn(server, device))


def cert_arn(server, device: Device) -> str:
    return server.aws("describe-certificate", "--certificate-id", device.cert_id)["certificateDescription"]["certificateArn"]


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


# Things keep two devices apart: each may use its thing's name as client ID, and its own topics.
THING_POLICY = document(
    allow("iot:Connect", "client/${iot:Connection.Thing.ThingName}"),
    allow(["iot:Publish", "iot:Receive"], "topic/fleet/${iot:Connection.Thing.ThingName}/*"),
    allow("iot:Subscribe", "topicfilter/fleet/${iot:Connection.Thing.ThingName}/*"),
)


def thing_device(server, openssl, policy: str) -> tuple[Device, str]:
    """A device whose certificate is attached to a new thing and to `policy`, all with the CLI."""
    device = make_device(server, openssl, policy=None)
    thing = unique("thing")
    server.aws("create-thing", "--thing-name", thing)
    server.aws("attach-thing-principal", "--thing-name", thing, "--principal", cert_arn(server, device))
    attach_policy(server, policy, device)
    return device, thing


def test_a_device_without_a_policy_cannot_connect(server, openssl):
    device = make_device(server, openssl, policy=None)
    result = mosquitto("mosquitto_pub", server, device, "-i", unique("bare"), "-t", "t", "-m", "x")
    assert refused(result), result
    sock = tls_socket(server, device, None)
    sock.sendall(connect_packet(unique("bare"), level=5))
    head = read_exactly(sock, 4)
    assert head[0] == 0x20 and head[3] == 0x87, f"CONNACK not authorized, got {head!r}"
    sock.close()


def test_connect_is_allowed_only_with_the_client_ids_the_policy_names(server, openssl):
    name = unique("clientids")
    prefix = unique("cid")
    create_policy(server, name, document(allow(["iot:Connect", "iot:Publish"], f"client/{prefix}-*", "topic/*")))
    device = make_device(server, openssl, policy=None)
    attach_policy(server, name, device)
    allowed = mosquitto("mosquitto_pub", server, device, "-i", f"{prefix}-1", "-t", "ok", "-m", "x", "-q", "1")
    assert allowed.returncode == 0, allowed.stderr
    denied = mosquitto("mosquitto_pub", server, device, "-i", "someone-else", "-t", "ok", "-m", "x", "-q", "1")
    assert refused(denied), denied
    sock = tls_socket(server, device, None)
    sock.sendall(connect_packet("someone-else"))
    assert connack(sock) == 5, "MQTT 3.1.1: CONNACK 5, not authorized"
    sock.close()


def test_thing_name_variable_keeps_two_devices_apart(server, openssl):
    policy = unique("things")
    create_policy(server, policy, THING_POLICY)
    a, thing_a = thing_device(server, openssl, policy)
    b, thing_b = thing_device(server, openssl, policy)

    # Each connects with its own thing's name, not with the other's nor with another name.
    for device, client_id, ok in [(a, thing_a, True), (a, thing_b, False), (b, thing_b, True), (a, "nobody", False)]:
        result = mosquitto("mosquitto_pub", server, device, "-i", client_id, "-t", f"fleet/{client_id}/hello", "-m", "x",
                           "-q", "1")
        assert (result.returncode == 0) == ok and (ok or refused(result)), (client_id, result)

    # Subscribing to the other device's topics is refused: SUBACK 0x80 (3.1.1) and 0x87 (5).
    for version in ["mqttv311", "mqttv5"]:
        result = mosquitto("mosquitto_sub", server, a, "-i", thing_a, "-t", f"fleet/{thing_b}/#", "-C", "1", "-W", "3",
                           version=version)
        # mosquitto_sub says so (and exits 0): "All subscription requests were denied."
        assert "subscription requests were denied" in result.stderr, result

    # A publishes to B's topic at QoS 1: refused (3.1.1: the connection is closed); B, subscribed
    # to its topics, receives its own marker and never A's message.
    sub = start_sub(server, b, f"fleet/{thing_b}/#", "-i", thing_b)
    operator = make_device(server, openssl)  # allowed everything: writes the marker
    deadline = time.monotonic() + 15
    while sub.poll() is None and time.monotonic() < deadline:
        intrusion = mosquitto("mosquitto_pub", server, a, "-i", thing_a, "-t", f"fleet/{thing_b}/cmd", "-m", "intrusion",
                              "-q", "1")
        assert intrusion.returncode != 0, f"a publish outside the policy must fail: {intrusion}"
        marker = mosquitto("mosquitto_pub", server, operator, "-t", f"fleet/{thing_b}/marker", "-m", "marker", "-q", "1")
        assert marker.returncode == 0 or sub.poll() is not None, marker.stderr
        try:
            sub.wait(timeout=0.3)
        except Exception:
            pass
    stdout, stderr = sub.communicate(timeout=5)
    assert sub.returncode == 0, stderr
    assert stdout.strip() == f"fleet/{thing_b}/marker marker", stdout


def publish_v5(sock, topic: str, packet_id: int) -> int:
    """Publishes at QoS 1 on an MQTT 5 connection; returns the PUBACK reason code."""
    body = mqtt_string(topic) + struct.pack("!H", packet_id) + b"\x00" + b"payload"
    sock.sendall(packet(0x32, body))
    head = read_exactly(sock, 2)
    assert len(head) == 2 and head[0] == 0x40, f"expected PUBACK, got {head!r}"
    rest = read_exactly(sock, head[1])
    assert struct.unpack("!H", rest[:2])[0] == packet_id
    return rest[2] if len(rest) > 2 else 0


def connected_v5(server, device: Device, client_id: str):
    sock = tls_socket(server, device, None)
    sock.sendall(connect_packet(client_id, level=5))
    head = read_exactly(sock, 2)
    assert head[0] == 0x20, head
    body = read_exactly(sock, head[1])
    assert body[1] == 0, f"CONNACK reason {body[1]:#x}"
    return sock


def until(predicate, within: float) -> float:
    """Seconds until `predicate()` holds; fails after `within` seconds."""
    start = time.monotonic()
    while not predicate():
        assert time.monotonic() - start < within, f"not within {within} s"
        time.sleep(0.05)
    return time.monotonic() - start


def test_policy_changes_reach_a_live_session_without_a_reconnect(server, openssl):
    name = unique("live")
    topic = unique("live/t")
    create_policy(server, name, document(allow(["iot:Connect", "iot:Publish"], "client/*", "topic/other")))
    device = make_device(server, openssl, policy=None)
    attach_policy(server, name, device)
    sock = connected_v5(server, device, unique("live"))
    packet_ids = iter(range(1, 1000))
    assert publish_v5(sock, topic, next(packet_ids)) == 0x87, "MQTT 5: PUBACK not authorized, and the session stays"

    # A new default version allowing the topic: the same session may publish within a second.
    server.aws("create-policy-version", "--policy-name", name, "--set-as-default",
               "--policy-document", document(allow(["iot:Connect", "iot:Publish"], "client/*", f"topic/{topic}")))
    until(lambda: publish_v5(sock, topic, next(packet_ids)) == 0, within=1.5)

    # Detached: refused again, still without a reconnect.
    server.aws("detach-policy", "--policy-name", name, "--target", cert_arn(server, device))
    until(lambda: publish_v5(sock, topic, next(packet_ids)) == 0x87, within=1.5)
    assert not closed_by_peer(sock, wait=0.2), "MQTT 5 refusals keep the session"
    sock.close()


def test_mqtt311_publish_outside_the_policy_closes_the_connection(server, openssl):
    name = unique("closing")
    create_policy(server, name, document(allow(["iot:Connect", "iot:Publish"], "client/*", "topic/allowed")))
    device = make_device(server, openssl, policy=None)
    attach_policy(server, name, device)
    sock = tls_socket(server, device, None)
    sock.sendall(connect_packet(unique("closing")))
    assert connack(sock) == 0
    sock.sendall(packet(0x32, mqtt_string("allowed") + struct.pack("!H", 1) + b"x"))
    assert read_exactly(sock, 4) == bytes([0x40, 2, 0, 1]), "PUBACK"
    sock.sendall(packet(0x32, mqtt_string("forbidden") + struct.pack("!H", 2) + b"x"))
    assert closed_by_peer(sock, wait=3), "AWS closes an MQTT 3.1.1 connection on an unauthorized publish"


def test_retained_publish_needs_retain_publish(server, openssl):
    name = unique("retain")
    topic = unique("retain/t")
    create_policy(server, name, document(allow(["iot:Connect", "iot:Publish"], "client/*", f"topic/{topic}")))
    device = make_device(server, openssl, policy=None)
    attach_policy(server, name, device)
    plain = mosquitto("mosquitto_pub", server, device, "-t", topic, "-m", "x", "-q", "1", version="mqttv5")
    assert plain.returncode == 0, plain.stderr
    sock = connected_v5(server, device, unique("retain"))
    sock.sendall(packet(0x33, mqtt_string(topic) + struct.pack("!H", 7) + b"\x00" + b"kept"))
    head = read_exactly(sock, 2)
    rest = read_exactly(sock, head[1])
    assert head[0] == 0x40 and rest[2] == 0x87, "iot:RetainPublish is missing"
    sock.close()


def connack_v5(sock) -> int | None:
    """The CONNACK reason code of an MQTT 5 connection, or None if it closed first."""
    head = read_exactly(sock, 2)
    if len(head) < 2 or head[0] != 0x20:
        return None
    body = read_exactly(sock, head[1])
    return body[1] if len(body) > 1 else None


def test_client_ids_with_mqtt_wildcards_are_refused(server, openssl):
    """`+` and `#` would stand for other clients once substituted into a policy or a topic, and
    AWS reserves a leading `$`: CONNACK "identifier rejected", 2 in MQTT 3.1.1 and 0x85 in MQTT 5,
    logged with the reason. `/` is accepted, as in AWS."""
    device = make_device(server, openssl)  # allowed everything: only the client ID is refused
    for client_id in ["+", "#", "clients/+", "x#", "$aws"]:
        sock = tls_socket(server, device, None)
        sock.sendall(connect_packet(client_id))
        assert connack(sock) == 2, f"{client_id!r}: MQTT 3.1.1 return code 2"
        assert closed_by_peer(sock), client_id
        sock.close()
        sock = tls_socket(server, device, None)
        sock.sendall(connect_packet(client_id, level=5))
        assert connack_v5(sock) == 0x85, f"{client_id!r}: MQTT 5 reason 0x85"
        assert closed_by_peer(sock), client_id
        sock.close()
    # NUL is no MQTT string character: the codec refuses the CONNECT as malformed.
    sock = tls_socket(server, device, None)
    sock.sendall(connect_packet("a\x00b", level=5))
    assert connack_v5(sock) == 0x81, "MQTT 5: malformed packet"
    sock.close()
    sock = tls_socket(server, device, None)
    sock.sendall(connect_packet("a\x00b"))
    assert connack(sock) is None, "MQTT 3.1.1: closed"
    sock.close()
    for version in ["mqttv311", "mqttv5"]:
        for client_id in ["+", "#"]:
            result = mosquitto("mosquitto_pub", server, device, "-i", client_id, "-t", "t", "-m", "x", "-q", "1",
                               version=version)
            assert result.returncode != 0, (client_id, version, result)
    assert "client_id_wildcard" in server.log_tail(400), "the refusal is logged with its reason"
    ok = mosquitto("mosquitto_pub", server, device, "-i", unique("site/device"), "-t", "t", "-m", "x", "-q", "1")
    assert ok.returncode == 0, ok.stderr


# The policy of the finding: each client its own `clients/<clientId>/...` topics.
CLIENT_POLICY = document(
    allow("iot:Connect", "client/${iot:ClientId}"),
    allow(["iot:Publish", "iot:Receive", "iot:RetainPublish"], "topic/clients/${iot:ClientId}/*"),
    allow("iot:Subscribe", "topicfilter/clients/${iot:ClientId}/#"),
)


def test_a_client_id_cannot_reach_into_another_clients_topics(server, openssl):
    """The attacker holds a valid certificate under the same policy as the victim and connects
    as `<victim>/x`: it may connect (AWS allows `/`), but it can neither subscribe to nor publish
    into `clients/<victim>/...`, and the victim receives nothing from it."""
    policy = unique("clients")
    create_policy(server, policy, CLIENT_POLICY)
    victim_device = make_device(server, openssl, policy=policy)
    attacker = make_device(server, openssl, policy=policy)
    victim = unique("victim")
    intruder = f"{victim}/x"

    for version in ["mqttv311", "mqttv5"]:
        for topic in [f"clients/{intruder}/#", f"clients/{victim}/#", "clients/+/#"]:
            result = mosquitto("mosquitto_sub", server, attacker, "-i", intruder, "-t", topic, "-C", "1", "-W", "3",
                               version=version)
            assert "subscription requests were denied" in result.stderr, (topic, version, result)
        wildcard = mosquitto("mosquitto_sub", server, attacker, "-i", "+", "-t", "clients/+/#", "-C", "1", "-W", "3",
                             version=version)
        assert wildcard.returncode != 0 and "denied" not in wildcard.stderr, (version, wildcard)

    sock = connected_v5(server, attacker, intruder)
    assert publish_v5(sock, f"clients/{intruder}/cmd", 1) == 0x87, "inside the victim's topics"
    assert publish_v5(sock, f"clients/{victim}/cmd", 2) == 0x87
    sock.close()

    # The victim, subscribed to its topics, gets the operator's marker and nothing of the attacker.
    sub = start_sub(server, victim_device, f"clients/{victim}/#", "-i", victim)
    operator = make_device(server, openssl)
    deadline = time.monotonic() + 15
    while sub.poll() is None and time.monotonic() < deadline:
        # MQTT 3.1.1: the refused QoS 1 publish closes the connection (MQTT 5's PUBACK 0x87 above).
        intrusion = mosquitto("mosquitto_pub", server, attacker, "-i", intruder, "-t", f"clients/{intruder}/cmd",
                              "-m", "intrusion", "-q", "1")
        assert intrusion.returncode != 0, f"a publish into the victim's topics must fail: {intrusion}"
        marker = mosquitto("mosquitto_pub", server, operator, "-t", f"clients/{victim}/marker", "-m", "marker", "-q", "1")
        assert marker.returncode == 0 or sub.poll() is not None, marker.stderr
        try:
            sub.wait(timeout=0.3)
        except Exception:
            pass
    stdout, stderr = sub.communicate(timeout=5)
    assert sub.returncode == 0, stderr
    assert stdout.strip() == f"clients/{victim}/marker marker", stdout
