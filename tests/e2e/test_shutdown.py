"""SIGTERM with devices connected, against the real binary (docs/operations.md, "Shutdown"):
the gateway closes its listener, ends every session at `mqtt.shutdown_disconnects_per_second`
within `mqtt.shutdown_grace` (MQTT 5 clients get DISCONNECT 0x8B "server shutting down", MQTT
3.1.1 clients are closed), flushes the connection history, and only then stops the API and exits
0. The history recorded by the drain is read back through the console after a restart on the
same data directory."""

from __future__ import annotations

import http.client
import re
import signal
import ssl
import subprocess
import time
import urllib.parse
import uuid

from conftest import Server
from test_endpoints import scrape_metrics, wait_for
from test_gateway import connect_packet, gateway_addr, make_device, mqtt_string, packet, read_exactly, tls_socket

ANSI = re.compile(r"\x1b\[[0-9;]*m")
GRACE_SECONDS = 10
CONFIG = (
    "[mqtt]\nshutdown_disconnects_per_second = 5\nshutdown_grace = \"10s\"\n"
    "[console]\naddr = \"127.0.0.1:0\"\n"
)


def start(base, config) -> Server:
    server = Server(base / "data", base / "server.log", extra_args=("--config", str(config)))
    server.start()
    return server


def mosquitto_sub(server, device, version: str, client_id: str, *args: str) -> subprocess.Popen:
    host, port = gateway_addr(server)
    return subprocess.Popen(
        ["mosquitto_sub", "-h", host, "-p", str(port), "--cafile", server.ca_bundle, "--cert", device.cert,
         "--key", device.key, "-V", version, "-i", client_id, "-t", f"shutdown/{client_id}", "-q", "1", *args],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )


def v5_connect_with_will(client_id: str) -> bytes:
    """An MQTT 5 CONNECT, clean start, keep-alive 30 s, with a QoS 1 will on wills/<client_id>."""
    flags = 0x02 | 0x04 | 0x08  # clean start, will, will QoS 1
    body = mqtt_string("MQTT") + bytes([5, flags]) + (30).to_bytes(2, "big") + b"\x00"
    body += mqtt_string(client_id) + b"\x00" + mqtt_string(f"wills/{client_id}") + mqtt_string(b"gone")
    return packet(0x10, body)


def until_closed(sock, wait: float) -> bytes:
    """Everything the server sends until it closes the connection."""
    sock.settimeout(wait)
    received = b""
    try:
        while chunk := sock.recv(4096):
            received += chunk
    except (ssl.SSLError, ConnectionResetError, BrokenPipeError):
        pass
    return received


def console_history(server, certificate_id: str) -> list[list[str]]:
    """The connection history rows (client ID, connected, disconnected, reason) of a certificate
    as the console shows them, signed in with the default profile's access key."""
    host, port = server.endpoints["console"].removeprefix("https://").rstrip("/").rsplit(":", 1)
    context = ssl.create_default_context(cafile=server.ca_bundle)

    def request(method, path, cookie=None, body=None):
        connection = http.client.HTTPSConnection(host, int(port), context=context, timeout=10)
        headers = {"Cookie": cookie} if cookie else {}
        if body is not None:
            headers["Content-Type"] = "application/x-www-form-urlencoded"
        connection.request(method, path, body=body, headers=headers)
        response = connection.getresponse()
        text = response.read().decode()
        connection.close()
        return response, text

    page, text = request("GET", "/signin")
    token = re.search(r'name="token" value="([0-9a-f]+)"', text).group(1)
    signin_cookie = page.getheader("Set-Cookie").split(";", 1)[0]
    key_id, secret = server.credentials("default")
    form = urllib.parse.urlencode({"token": token, "access_key_id": key_id, "secret_access_key": secret})
    signed_in, _ = request("POST", "/signin", cookie=signin_cookie, body=form)
    assert signed_in.status == 303, signed_in.status
    session = next(value.split(";", 1)[0] for name, value in signed_in.getheaders()
                   if name.lower() == "set-cookie" and value.startswith("cf_session="))
    answer, text = request("GET", f"/certificates/{certificate_id}", cookie=session)
    assert answer.status == 200, (answer.status, text[:500])
    table = re.search(r'<table id="history">.*?<tbody>(.*?)</tbody>', text, re.S).group(1)
    return [re.findall(r"<td>(.*?)</td>", row) for row in re.findall(r"<tr>(.*?)</tr>", table, re.S)]


def test_sigterm_drains_the_gateway_then_exits_0_and_the_history_survives(tmp_path, openssl):
    config = tmp_path / "certfleet.toml"
    config.write_text(CONFIG)
    server = start(tmp_path, config)
    subscriber = None
    try:
        device = make_device(server, openssl)
        tag = uuid.uuid4().hex[:6]
        five, raw_five, three = f"five-{tag}", f"raw-five-{tag}", f"three-{tag}"
        # A persistent MQTT 5 subscriber (mosquitto_sub, session expiry 600 s), an MQTT 5 device
        # with a will and an MQTT 3.1.1 device whose bytes we read ourselves.
        subscriber = mosquitto_sub(server, device, "mqttv5", five, "-c", "-x", "600", "-d")
        v5 = tls_socket(server, device, None)
        v5.sendall(v5_connect_with_will(raw_five))
        head = read_exactly(v5, 2)
        assert head[0] == 0x20 and len(read_exactly(v5, head[1])) == head[1], "CONNACK"
        v311 = tls_socket(server, device, None)
        v311.sendall(connect_packet(three))
        assert read_exactly(v311, 4) == b"\x20\x02\x00\x00", "CONNACK accepted"
        wait_for(lambda: "\ncertfleet_gateway_sessions 3\n" in scrape_metrics(server), "three sessions", timeout=20)

        began = time.monotonic()
        server.proc.send_signal(signal.SIGTERM)
        after_v5 = until_closed(v5, GRACE_SECONDS + 5)
        after_v311 = until_closed(v311, GRACE_SECONDS + 5)
        code = server.proc.wait(timeout=GRACE_SECONDS + 15)
        took = time.monotonic() - began
        assert code == 0, server.log_tail()
        assert took < GRACE_SECONDS + 10, f"exited {took:.1f} s after SIGTERM"

        # MQTT 5: DISCONNECT 0x8B (server shutting down), then the close; mosquitto_sub says so
        # (with -d) and exits 0. MQTT 3.1.1 has no server DISCONNECT: just the close.
        assert after_v5 in (b"\xe0\x02\x8b\x00", b"\xe0\x01\x8b"), after_v5
        assert after_v311 == b"", after_v311
        out, err = subscriber.communicate(timeout=10)
        assert subscriber.returncode == 0, (out, err)
        assert "Received DISCONNECT (139)" in out, (out, err)

        log = ANSI.sub("", server.log_path.read_text(errors="replace"))
        drained = re.search(r"gateway drained.*", log).group(0)
        assert "sessions=3 " in drained and "aborted=0 " in drained and "history=Written" in drained, drained
        # The API stopped only after the gateway had drained.
        assert log.index("gateway listener closed: draining the sessions") < log.index("gateway drained") < log.index(
            "stopping the API"), log
    finally:
        if subscriber is not None and subscriber.poll() is None:
            subscriber.kill()
            subscriber.wait()
        server.stop()

    # The same data directory, started again: the console shows each session's end as the drain
    # recorded it.
    (tmp_path / "data" / "endpoints.json").unlink()
    server = start(tmp_path, config)
    try:
        rows = console_history(server, device.cert_id)
        reasons = {row[0]: row[3] for row in rows}
        for client_id in (five, raw_five, three):
            assert reasons.get(client_id) == "SERVER_INITIATED_DISCONNECT", rows
    finally:
        assert server.stop() == 0, server.log_tail()
