"""The device gateway with real clients: mosquitto_pub/mosquitto_sub (MQTT 3.1.1 and 5) over
mutual TLS, openssl s_client, Python ssl sockets for named endpoints (SNI) and protocol abuse,
and the AWS IoT Device SDK v2 for Python. Certificates come from the control plane."""

from __future__ import annotations

import json
import resource
import socket
import ssl
import struct
import subprocess
import time
import uuid

import pytest

from test_server import Node


# ------------------------------------------------------------------------------------------------
# helpers
# ------------------------------------------------------------------------------------------------
class Device:
    """A device identity made through the control plane (or registered), with its files."""

    def __init__(self, cert: str, key: str, cert_id: str):
        self.cert, self.key, self.cert_id = cert, key, cert_id


def gateway_addr(server) -> tuple[str, int]:
    host, port = server.endpoints["mqtt_addr"].rsplit(":", 1)
    return host, int(port)


ALLOW_ALL_POLICY = "e2e-allow-all"
ALLOW_ALL_DOCUMENT = json.dumps(
    {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "iot:*", "Resource": "*"}]}
)


def allow_all_policy(client) -> str:
    """The permissive test policy of the client's account, created on first use (the gateway
    enforces policies: a device without one may not even connect)."""
    try:
        client.create_policy(policyName=ALLOW_ALL_POLICY, policyDocument=ALLOW_ALL_DOCUMENT)
    except client.exceptions.ResourceAlreadyExistsException:
        pass
    return ALLOW_ALL_POLICY


def make_device(server, openssl, profile="default", active=True, policy: str | None = "allow-all") -> Device:
    """A device certificate made from a CSR; with `policy="allow-all"` (the default) the
    permissive test policy is attached, with `policy=None` none is."""
    name = f"dev-{uuid.uuid4().hex[:8]}"
    key = openssl.ec_key(f"{name}.key")
    csr = openssl.csr(name, key, name)
    client = server.client(profile)
    created = client.create_certificate_from_csr(
        certificateSigningRequest=openssl.read(csr), setAsActive=active
    )
    if policy == "allow-all":
        client.attach_policy(policyName=allow_all_policy(client), target=created["certificateArn"])
    elif policy is not None:
        client.attach_policy(policyName=policy, target=created["certificateArn"])
    cert = openssl.write(f"{name}.crt", created["certificatePem"])
    return Device(str(cert), str(openssl.path(key)), created["certificateId"])


def mosquitto(tool: str, server, device: Device | None, *args: str, version="mqttv311", timeout=20):
    host, port = gateway_addr(server)
    cmd = [tool, "-h", host, "-p", str(port), "--cafile", server.ca_bundle, "-V", version, *args]
    if device is not None:
        cmd += ["--cert", device.cert, "--key", device.key]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)


def start_sub(server, device: Device, topic: str, *args: str, version="mqttv311", count=1):
    host, port = gateway_addr(server)
    return subprocess.Popen(
        ["mosquitto_sub", "-h", host, "-p", str(port), "--cafile", server.ca_bundle, "--cert", device.cert,
         "--key", device.key, "-V", version, "-t", topic, "-C", str(count), "-W", "20", "-v", *args],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )


def publish_until_received(server, publisher: Device, sub: subprocess.Popen, topic: str, message: str, *args: str,
                           version="mqttv311") -> str:
    """Publishes every 200 ms until the subscriber exits (it was subscribed by then)."""
    deadline = time.monotonic() + 15
    while sub.poll() is None and time.monotonic() < deadline:
        out = mosquitto("mosquitto_pub", server, publisher, "-t", topic, "-m", message, *args, version=version)
        assert out.returncode == 0, out.stderr
        try:
            sub.wait(timeout=0.2)
        except subprocess.TimeoutExpired:
            pass
    stdout, stderr = sub.communicate(timeout=5)
    assert sub.returncode == 0, stderr
    return stdout


def tls_socket(server, device: Device | None, server_hostname: str | None) -> ssl.SSLSocket:
    """A TLS connection to the gateway with an explicit SNI (None: no SNI)."""
    context = ssl.create_default_context(cafile=server.ca_bundle)
    context.check_hostname = False
    if device is not None:
        context.load_cert_chain(device.cert, device.key)
    raw = socket.create_connection(gateway_addr(server), timeout=10)
    return context.wrap_socket(raw, server_hostname=server_hostname)


def mqtt_string(text: str | bytes) -> bytes:
    data = text.encode() if isinstance(text, str) else text
    return struct.pack("!H", len(data)) + data


def remaining_length(n: int) -> bytes:
    out = bytearray()
    while True:
        byte, n = n % 128, n // 128
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


def packet(first: int, body: bytes) -> bytes:
    return bytes([first]) + remaining_length(len(body)) + body


def connect_packet(client_id: str, level: int = 4) -> bytes:
    body = mqtt_string("MQTT") + bytes([level, 0x02]) + struct.pack("!H", 30)
    if level == 5:
        body += b"\x00"  # no properties
    return packet(0x10, body + mqtt_string(client_id))


def read_exactly(sock: ssl.SSLSocket, n: int) -> bytes:
    data = b""
    while len(data) < n:
        chunk = sock.recv(n - len(data))
        if not chunk:
            return data
        data += chunk
    return data


def connack(sock: ssl.SSLSocket) -> int | None:
    """The CONNACK return/reason code, or None if the connection closed first."""
    try:
        head = read_exactly(sock, 4)
    except (ssl.SSLError, OSError):
        return None
    if len(head) < 4 or head[0] != 0x20:
        return None
    return head[3]


def closed_by_peer(sock: ssl.SSLSocket, wait: float = 5) -> bool:
    sock.settimeout(wait)
    try:
        while True:
            if not sock.recv(4096):
                return True
    except (ssl.SSLError, ConnectionResetError, BrokenPipeError):
        return True
    except socket.timeout:
        return False


def endpoint(server, profile="default") -> str:
    return server.client(profile).describe_endpoint(endpointType="iot:Data-ATS")["endpointAddress"]


# ------------------------------------------------------------------------------------------------
# publish / subscribe with mosquitto clients
# ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("version", ["mqttv311", "mqttv5"])
@pytest.mark.parametrize("qos", ["0", "1", "2"])
def test_mosquitto_round_trip(server, openssl, version, qos):
    subscriber, publisher = make_device(server, openssl), make_device(server, openssl)
    topic = f"e2e/{uuid.uuid4().hex[:8]}/data"
    sub = start_sub(server, subscriber, topic, "-q", qos, version=version)
    out = publish_until_received(server, publisher, sub, topic, f"hello-{qos}", "-q", qos, version=version)
    assert out.strip() == f"{topic} hello-{qos}"


def test_retained_messages_are_kept_and_deleted(server, openssl):
    device = make_device(server, openssl)
    topic = f"e2e/{uuid.uuid4().hex[:8]}/state"
    out = mosquitto("mosquitto_pub", server, device, "-t", topic, "-m", "on", "-r", "-q", "1")
    assert out.returncode == 0, out.stderr
    got = mosquitto("mosquitto_sub", server, device, "-t", topic, "-C", "1", "-W", "5", "-v")
    assert got.returncode == 0 and got.stdout.strip() == f"{topic} on", got.stderr
    out = mosquitto("mosquitto_pub", server, device, "-t", topic, "-n", "-r", "-q", "1")
    assert out.returncode == 0, out.stderr
    nothing = mosquitto("mosquitto_sub", server, device, "-t", topic, "-C", "1", "-W", "2")
    assert nothing.stdout == "", "an empty retained payload deletes the retained message"


def test_wildcards_and_dollar_topics(server, openssl):
    device = make_device(server, openssl)
    base = f"e2e/{uuid.uuid4().hex[:8]}"
    sub = start_sub(server, device, f"{base}/+/temp")
    out = publish_until_received(server, device, sub, f"{base}/kitchen/temp", "21")
    assert out.strip() == f"{base}/kitchen/temp 21"


# ------------------------------------------------------------------------------------------------
# refusals
# ------------------------------------------------------------------------------------------------
def refused(result: subprocess.CompletedProcess) -> bool:
    return result.returncode != 0 and "not authori" in (result.stderr + result.stdout).lower()


@pytest.mark.parametrize("status", ["INACTIVE", "REVOKED"])
def test_certificates_not_active_are_refused(server, openssl, status):
    device = make_device(server, openssl)
    server.client().update_certificate(certificateId=device.cert_id, newStatus=status)
    result = mosquitto("mosquitto_pub", server, device, "-t", "e2e/x", "-m", "x")
    assert refused(result), result


def test_unregistered_self_signed_certificate_is_refused(server, openssl):
    cert = openssl.self_signed_leaf(f"stranger-{uuid.uuid4().hex[:6]}")
    device = Device(str(openssl.path(cert)), str(openssl.path(cert.replace(".pem", ".key"))), "")
    result = mosquitto("mosquitto_pub", server, device, "-t", "e2e/x", "-m", "x")
    assert refused(result), result


def test_no_client_certificate_fails_the_handshake(server):
    result = mosquitto("mosquitto_pub", server, None, "-t", "e2e/x", "-m", "x")
    assert result.returncode != 0, result


def test_certificate_of_another_account_at_this_endpoint_is_refused(server, openssl):
    other = server.create_account()
    device = make_device(server, openssl, profile=other.profile)
    sock = tls_socket(server, device, endpoint(server))  # account A's endpoint, B's certificate
    sock.sendall(connect_packet("wrong-account"))
    assert connack(sock) == 5
    sock.close()
    # At its own account's endpoint the same certificate is accepted.
    sock = tls_socket(server, device, endpoint(server, other.profile))
    sock.sendall(connect_packet("right-account"))
    assert connack(sock) == 0
    sock.close()


def test_certificate_registered_without_ca_needs_sni(server, openssl):
    cert = openssl.self_signed_leaf(f"mar-{uuid.uuid4().hex[:6]}")
    registered = server.client().register_certificate_without_ca(certificatePem=openssl.read(cert), status="ACTIVE")
    server.client().attach_policy(policyName=allow_all_policy(server.client()), target=registered["certificateArn"])
    device = Device(str(openssl.path(cert)), str(openssl.path(cert.replace(".pem", ".key"))), registered["certificateId"])
    sock = tls_socket(server, device, None)
    sock.sendall(connect_packet("mar-no-sni"))
    assert connack(sock) == 5, "SNI_ONLY certificates need SNI"
    sock.close()
    sock = tls_socket(server, device, endpoint(server))
    sock.sendall(connect_packet("mar-with-sni"))
    assert connack(sock) == 0
    sock.close()


def test_certificate_whose_ca_is_inactive_is_refused(server, openssl):
    client = server.client()
    ca, ca_key = openssl.self_signed_ca(f"gwca-{uuid.uuid4().hex[:6]}")
    code = client.get_registration_code()["registrationCode"]
    verification = openssl.verification_cert(f"gwver-{uuid.uuid4().hex[:6]}", ca, ca_key, code)
    ca_id = client.register_ca_certificate(caCertificate=openssl.read(ca), verificationCertificate=openssl.read(verification),
                                           setAsActive=True)["certificateId"]
    cert = openssl.device_cert(f"gwdev-{uuid.uuid4().hex[:6]}", ca, ca_key)
    registered = client.register_certificate(certificatePem=openssl.read(cert), caCertificatePem=openssl.read(ca), status="ACTIVE")
    client.attach_policy(policyName=allow_all_policy(client), target=registered["certificateArn"])
    device = Device(str(openssl.path(cert)), str(openssl.path(cert.replace(".pem", ".key"))), registered["certificateId"])
    assert mosquitto("mosquitto_pub", server, device, "-t", "e2e/ca", "-m", "x").returncode == 0
    client.update_ca_certificate(certificateId=ca_id, newStatus="INACTIVE")
    # Every gateway node learns of the change from the registry's change feed within a second.
    deadline = time.monotonic() + 1.0
    while not refused(result := mosquitto("mosquitto_pub", server, device, "-t", "e2e/ca", "-m", "x")):
        assert time.monotonic() < deadline, f"still accepted a second after the CA was set INACTIVE: {result}"


# ------------------------------------------------------------------------------------------------
# live revocation
# ------------------------------------------------------------------------------------------------
def test_revoking_a_certificate_closes_its_session_within_a_second(server, openssl):
    device = make_device(server, openssl)
    sock = tls_socket(server, device, None)
    sock.sendall(connect_packet(f"revoked-{uuid.uuid4().hex[:6]}", level=5))
    head = read_exactly(sock, 2)
    assert head[0] == 0x20
    read_exactly(sock, head[1])
    assert not closed_by_peer(sock, wait=0.5), "the session is up"
    proc = server.aws("update-certificate", "--certificate-id", device.cert_id, "--new-status", "REVOKED", check=False)
    assert proc.returncode == 0, proc.stderr
    revoked_at = time.monotonic()
    assert closed_by_peer(sock, wait=3)
    elapsed = time.monotonic() - revoked_at
    assert elapsed < 1.0, f"closed {elapsed:.2f} s after the CLI returned"


# ------------------------------------------------------------------------------------------------
# sessions belong to a certificate
# ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("version", ["mqttv311", "mqttv5"])
def test_another_certificate_never_resumes_a_persistent_session(server, openssl, version):
    """The attacker's certificate may use the victim's client ID (allow-all policy), yet the
    victim's persistent session and the message queued in it are not its to take: it receives
    nothing. The victim's own certificate, before the attack, does get its queued message."""
    victim, attacker, operator = make_device(server, openssl), make_device(server, openssl), make_device(server, openssl)
    client_id = f"persistent-{uuid.uuid4().hex[:8]}"
    topic = f"e2e/{client_id}/inbox"
    keep = ["-c", "-i", client_id, "-q", "1", *(["-x", "600"] if version == "mqttv5" else [])]

    def queue_for_victim(message: str) -> None:
        # The victim's session subscribes, then goes offline; a QoS 1 message is queued in it.
        offline = mosquitto("mosquitto_sub", server, victim, *keep, "-t", topic, "-W", "1", version=version)
        assert offline.stdout == "", offline
        sent = mosquitto("mosquitto_pub", server, operator, "-t", topic, "-m", message, "-q", "1", version=version)
        assert sent.returncode == 0, sent.stderr

    queue_for_victim("for the victim")
    resumed = mosquitto("mosquitto_sub", server, victim, *keep, "-t", topic, "-C", "1", "-W", "5", "-v",
                        version=version)
    assert resumed.stdout.strip() == f"{topic} for the victim", resumed

    queue_for_victim("secret")
    stolen = mosquitto("mosquitto_sub", server, attacker, *keep, "-t", f"e2e/{client_id}/elsewhere", "-W", "3", "-v",
                       version=version)
    assert stolen.stdout == "", f"the attacker got the victim's queued message: {stolen}"
    assert "session not resumed" in server.log_tail(400)


# ------------------------------------------------------------------------------------------------
# protocol abuse
# ------------------------------------------------------------------------------------------------
ABUSE = {
    "publish-before-connect": packet(0x30, mqtt_string("a/b") + b"x"),
    "unknown-protocol-level": connect_packet("bad-level", level=9),
    "length-over-the-maximum": bytes([0x30, 0xFF, 0xFF, 0xFF, 0x7F]),
    "five-byte-length": bytes([0x30, 0xFF, 0xFF, 0xFF, 0xFF, 0x01]),
}


@pytest.mark.parametrize("name", list(ABUSE))
def test_garbage_before_connect_is_closed(server, openssl, name):
    device = make_device(server, openssl)
    sock = tls_socket(server, device, None)
    sock.sendall(ABUSE[name])
    code = connack(sock)
    assert code in (None, 1, 0x84), f"{name}: answered CONNACK {code}"
    sock.close()


AFTER_CONNECT = {
    "second-connect": connect_packet("again"),
    "wildcard-in-publish-topic": packet(0x30, mqtt_string("a/+/b") + b"x"),
    "invalid-utf8-topic": packet(0x30, mqtt_string(b"a/\xff\xfe") + b"x"),
    "truncated-frame-then-close": packet(0x30, mqtt_string("a/b") + b"x" * 10)[:-5],
}


@pytest.mark.parametrize("name", list(AFTER_CONNECT))
def test_protocol_violations_after_connect_close_the_connection(server, openssl, name):
    device = make_device(server, openssl)
    sock = tls_socket(server, device, None)
    sock.sendall(connect_packet(f"abuse-{uuid.uuid4().hex[:6]}"))
    assert connack(sock) == 0
    sock.sendall(AFTER_CONNECT[name])
    if name == "truncated-frame-then-close":
        sock.close()
    else:
        assert closed_by_peer(sock, wait=5), name
        sock.close()
    # The gateway still serves everyone else.
    healthy = make_device(server, openssl)
    assert mosquitto("mosquitto_pub", server, healthy, "-t", "e2e/ok", "-m", "ok").returncode == 0


# ------------------------------------------------------------------------------------------------
# lifecycle events and the operator view
# ------------------------------------------------------------------------------------------------
def test_lifecycle_events_and_operator_view(server, openssl):
    watcher, device = make_device(server, openssl), make_device(server, openssl)
    client_id = f"seen-{uuid.uuid4().hex[:6]}"
    sub = start_sub(server, watcher, f"$aws/events/presence/connected/{client_id}")
    deadline = time.monotonic() + 15
    while sub.poll() is None and time.monotonic() < deadline:
        mosquitto("mosquitto_pub", server, device, "-i", client_id, "-t", "e2e/hello", "-m", "hi")
        try:
            sub.wait(timeout=0.3)
        except subprocess.TimeoutExpired:
            pass
    out, err = sub.communicate(timeout=5)
    assert sub.returncode == 0, err
    topic, payload = out.strip().split(" ", 1)
    event = json.loads(payload)
    assert topic == f"$aws/events/presence/connected/{client_id}"
    assert event["clientId"] == client_id and event["eventType"] == "connected"
    assert event["principalIdentifier"] == device.cert_id
    assert isinstance(event["timestamp"], int) and event["sessionIdentifier"]

    long_lived = start_sub(server, device, "e2e/never", "-i", "listed-client", count=1)
    try:
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            listed = server.certfleet("gateway", "sessions", "--data-dir", str(server.data_dir), "--output", "json")
            sessions = json.loads(listed.stdout)["sessions"]
            match = [s for s in sessions if s["clientId"] == "listed-client"]
            if match:
                assert match[0]["certificateId"] == device.cert_id
                assert match[0]["tlsVersion"] in ("TLSv1.2", "TLSv1.3")
                break
            time.sleep(0.1)
        else:
            pytest.fail(f"listed-client never appeared in {sessions}")
    finally:
        long_lived.kill()
        long_lived.wait()


# ------------------------------------------------------------------------------------------------
# the AWS IoT Device SDK v2 for Python
# ------------------------------------------------------------------------------------------------
def test_aws_iot_device_sdk_mqtt311_and_mqtt5(server, openssl):
    from awscrt import mqtt, mqtt5
    from awsiot import mqtt5_client_builder, mqtt_connection_builder
    import concurrent.futures

    device = make_device(server, openssl)
    host, port = gateway_addr(server)
    topic = f"e2e/sdk/{uuid.uuid4().hex[:8]}"
    received = concurrent.futures.Future()

    connection = mqtt_connection_builder.mtls_from_path(
        endpoint=host, port=port, cert_filepath=device.cert, pri_key_filepath=device.key, ca_filepath=server.ca_bundle,
        client_id=f"sdk311-{uuid.uuid4().hex[:6]}", clean_session=True, keep_alive_secs=30,
    )
    connection.connect().result(timeout=15)
    subscribe_future, _ = connection.subscribe(
        topic=topic, qos=mqtt.QoS.AT_LEAST_ONCE,
        callback=lambda topic, payload, **kwargs: received.done() or received.set_result(payload),
    )
    subscribe_future.result(timeout=10)
    publish_future, _ = connection.publish(topic=topic, payload=b"from-sdk", qos=mqtt.QoS.AT_LEAST_ONCE)
    publish_future.result(timeout=10)
    assert received.result(timeout=10) == b"from-sdk"
    connection.disconnect().result(timeout=10)

    connected = concurrent.futures.Future()
    got5 = concurrent.futures.Future()
    client5 = mqtt5_client_builder.mtls_from_path(
        endpoint=host, port=port, cert_filepath=device.cert, pri_key_filepath=device.key, ca_filepath=server.ca_bundle,
        client_id=f"sdk5-{uuid.uuid4().hex[:6]}",
        on_lifecycle_connection_success=lambda data: connected.done() or connected.set_result(True),
        on_publish_received=lambda data: got5.done() or got5.set_result(bytes(data.publish_packet.payload)),
    )
    client5.start()
    try:
        assert connected.result(timeout=15)
        client5.subscribe(mqtt5.SubscribePacket(subscriptions=[mqtt5.Subscription(topic_filter=topic, qos=mqtt5.QoS.AT_LEAST_ONCE)])).result(timeout=10)
        client5.publish(mqtt5.PublishPacket(topic=topic, payload=b"from-sdk5", qos=mqtt5.QoS.AT_LEAST_ONCE)).result(timeout=10)
        assert got5.result(timeout=10) == b"from-sdk5"
    finally:
        client5.stop()


# ------------------------------------------------------------------------------------------------
# stalled connections
# ------------------------------------------------------------------------------------------------
def test_stalled_connections_are_dropped_and_others_still_served(tmp_path, openssl):
    config = tmp_path / "config.toml"
    config.write_text('[mqtt]\naddr = "127.0.0.1:0"\nhandshake_timeout = "2s"\nconnect_timeout = "2s"\n')
    node = Node(tmp_path / "stall", "--config", str(config)).wait_listening()
    try:
        endpoints = json.loads((tmp_path / "stall" / "endpoints.json").read_text())
        host, port = endpoints["mqtt_addr"].rsplit(":", 1)
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, min(hard, 4096)), hard))
        stalled = []
        for _ in range(1000):
            stalled.append(socket.create_connection((host, int(port)), timeout=10))
        # A real device still gets in while a thousand sockets sit idle.
        key = openssl.ec_key("stall.key")
        csr = openssl.csr("stall", key, "stall")
        created = node.aws("create-certificate-from-csr", "--certificate-signing-request", f"file://{openssl.path(csr)}",
                           "--set-as-active")
        node.aws("create-policy", "--policy-name", ALLOW_ALL_POLICY, "--policy-document", ALLOW_ALL_DOCUMENT)
        node.aws("attach-policy", "--policy-name", ALLOW_ALL_POLICY, "--target", created["certificateArn"])
        cert = openssl.write("stall.crt", created["certificatePem"])
        result = subprocess.run(
            ["mosquitto_pub", "-h", host, "-p", port, "--cafile", str(tmp_path / "stall" / "server-root.pem"),
             "--cert", str(cert), "--key", str(openssl.path(key)), "-t", "e2e/stall", "-m", "x"],
            capture_output=True, text=True, timeout=20,
        )
        assert result.returncode == 0, result.stderr
        # Within the handshake timeout (2 s) every stalled socket is closed by the gateway: the
        # first read waits for it, the others find their socket closed already.
        for sock in stalled:
            sock.settimeout(10)
            try:
                assert sock.recv(1) == b""
            except ConnectionResetError:
                pass
            sock.close()
    finally:
        assert node.stop() == 0
