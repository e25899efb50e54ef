"""Issue 12: a rotation is bound to the certificate being rotated, not to a client ID.

An attacker device (its own valid certificate, a permissive policy) connects with the victim's
client ID while the victim's rotation waits for its CSR, and publishes a CSR for its own key on
the victim's `csr_res` topic, then a `crt_err` and a `crt_ack`; it also publishes on the victim's
topics under its own client ID. Nothing reaches it on `crt_req`, no certificate is issued, the
victim's rotation and certificate are untouched (ACTIVE). The victim's own rotation then
completes, and the certificate it gets carries the victim's old subject, not the one its CSR
asked for.
"""

from __future__ import annotations

import json
import queue
import re
import time
import uuid

from test_gateway import gateway_addr, make_device
from test_rotation import rotation_cli

_ANSI = re.compile(r"\x1b\[[0-9;]*m")


def wait_until(predicate, timeout: float, message, interval: float = 0.3):
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"after {timeout:.0f} s: {message() if callable(message) else message}")
        time.sleep(interval)


def test_another_device_cannot_take_over_a_rotation(server, openssl):
    from awscrt import mqtt
    from awsiot import mqtt_connection_builder

    host, port = gateway_addr(server)
    client = server.client()

    def connect(cert: str, key: str, client_id: str, subscribe_to: str):
        inbox: queue.Queue = queue.Queue()
        connection = mqtt_connection_builder.mtls_from_path(
            endpoint=host, port=port, cert_filepath=cert, pri_key_filepath=key, ca_filepath=server.ca_bundle,
            client_id=client_id, clean_session=True, keep_alive_secs=30)
        connection.connect().result(timeout=15)
        for step in ("csr_req", "crt_req"):
            future, _ = connection.subscribe(
                topic=f"management/topic/{subscribe_to}/{step}", qos=mqtt.QoS.AT_LEAST_ONCE,
                callback=lambda topic, payload, **kwargs: inbox.put((topic.rsplit("/", 1)[-1], json.loads(payload))))
            future.result(timeout=10)
        return connection, inbox

    def publish(connection, client_id: str, step: str, body: dict) -> None:
        future, _ = connection.publish(topic=f"management/topic/{client_id}/{step}", payload=json.dumps(body),
                                       qos=mqtt.QoS.AT_LEAST_ONCE)
        future.result(timeout=10)

    def next_message(inbox: queue.Queue, step: str, timeout: float = 30) -> dict:
        try:
            got, body = inbox.get(timeout=timeout)
        except queue.Empty:
            raise AssertionError(f"no {step} within {timeout} s") from None
        assert got == step, (got, body)
        return body

    def log() -> str:
        return _ANSI.sub("", server.log_path.read_text(errors="replace"))

    def status(cert_id: str) -> str:
        return client.describe_certificate(certificateId=cert_id)["certificateDescription"]["status"]

    victim, attacker = make_device(server, openssl), make_device(server, openssl)
    victim_id = f"victim-{uuid.uuid4().hex[:6]}"
    attacker_own_id = f"attacker-{uuid.uuid4().hex[:6]}"
    connections = []
    try:
        victim_conn, victim_inbox = connect(victim.cert, victim.key, victim_id, victim_id)
        connections.append(victim_conn)
        time.sleep(1.5)  # the connection history is written off the session's path
        campaign = json.loads(rotation_cli(server, "start", victim.cert_id).stdout)
        assert campaign["total"] == 1 and campaign["subject"] == "keep-old", campaign
        assert next_message(victim_inbox, "csr_req") == {}

        def rotation() -> dict:
            rows = json.loads(rotation_cli(server, "list", "--campaign", campaign["campaignId"]).stdout)["rotations"]
            (row,) = rows
            return row
        before = rotation()
        assert before["state"] == "requested" and before["newCertificateId"] is None, before
        def certificates() -> set[str]:
            pages = client.get_paginator("list_certificates").paginate(PaginationConfig={"PageSize": 250})
            return {c["certificateId"] for page in pages for c in page["certificates"]}
        certificates_before = certificates()

        # The victim is offline; the attacker takes its client ID, listens on its crt_req, and
        # sends a CSR for its own key, then an error and an ack, on the victim's topics.
        victim_conn.disconnect().result(timeout=10)
        connections.remove(victim_conn)
        attacker_conn, attacker_inbox = connect(attacker.cert, attacker.key, victim_id, victim_id)
        connections.append(attacker_conn)
        attacker_key = openssl.ec_key("attacker-new.key")
        attacker_csr = openssl.csr("attacker-new", attacker_key, victim_id)
        publish(attacker_conn, victim_id, "csr_res", {"CSR": openssl.read(attacker_csr)})
        publish(attacker_conn, victim_id, "crt_err", {"error": "x", "code": "chain-invalid"})
        publish(attacker_conn, victim_id, "crt_ack", {"certificateId": victim.cert_id})
        # Under its own client ID, on the victim's topics: dropped before the service.
        own_conn, _ = connect(attacker.cert, attacker.key, attacker_own_id, attacker_own_id)
        connections.append(own_conn)
        publish(own_conn, victim_id, "csr_res", {"CSR": openssl.read(attacker_csr)})

        def ignored() -> bool:
            lines = [line for line in log().splitlines()
                     if "rotation message ignored" in line and f"cert={attacker.cert_id}" in line]
            dropped = [line for line in log().splitlines()
                       if "device message dropped" in line and attacker_own_id in line]
            return len(lines) >= 3 and len(dropped) >= 1
        wait_until(ignored, 30, lambda: server.log_tail())
        text = log()
        assert "not from a session of the certificate being rotated" in text
        assert "not from a session of the certificate this rotation issued" in text
        assert "AnotherClientsTopic" in text

        after = rotation()
        assert after["state"] == "requested" and after["newCertificateId"] is None, after
        assert after["error"] is None and after["csrKeyFingerprint"] is None, after
        assert status(victim.cert_id) == "ACTIVE"
        assert certificates() == certificates_before, "nothing was issued, nothing deleted"
        assert attacker_inbox.empty(), list(attacker_inbox.queue)
        own_conn.disconnect().result(timeout=10)
        connections.remove(own_conn)
        attacker_conn.disconnect().result(timeout=10)
        connections.remove(attacker_conn)
        assert attacker_inbox.empty(), list(attacker_inbox.queue)

        # The victim's own rotation still completes. Its CSR asks for CN=<client ID>; the
        # certificate carries the old certificate's subject.
        victim_conn, victim_inbox = connect(victim.cert, victim.key, victim_id, victim_id)
        connections.append(victim_conn)
        key = openssl.ec_key(f"{victim_id}-new.key")
        csr = openssl.csr(f"{victim_id}-new", key, victim_id)
        publish(victim_conn, victim_id, "csr_res", {"CSR": openssl.read(csr)})
        body = next_message(victim_inbox, "crt_req")
        new_id = body["certificateId"]
        cert = openssl.write(f"{victim_id}-new.crt", body["certificatePem"])
        def subject(path) -> str:
            return openssl("x509", "-in", str(path), "-noout", "-subject").stdout.decode().strip()
        assert subject(cert) == subject(victim.cert), (subject(cert), subject(victim.cert))
        assert victim_id not in subject(cert)
        victim_conn.disconnect().result(timeout=10)
        connections.remove(victim_conn)
        new_conn, _ = connect(str(cert), str(openssl.path(key)), victim_id, victim_id)
        connections.append(new_conn)
        publish(new_conn, victim_id, "crt_ack", {"certificateId": new_id})
        wait_until(lambda: rotation()["state"] == "retired", 30, rotation)
        assert status(new_id) == "ACTIVE"
        try:
            client.describe_certificate(certificateId=victim.cert_id)
            raise AssertionError(f"the old certificate {victim.cert_id} still exists")
        except client.exceptions.ResourceNotFoundException:
            pass
        assert status(attacker.cert_id) == "ACTIVE", "the attacker's own certificate is not touched either"
    finally:
        for connection in connections:
            try:
                connection.disconnect().result(timeout=10)
            except Exception:
                pass
