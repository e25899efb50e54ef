"""A retained-message flood against the broker's byte bound (issue 13, "Byte bounds in the
broker"): a device of one account publishes 120 KiB retained messages on fresh topics with
mosquitto_pub, far past its account's 1 MiB retained bound. The server keeps at most the bound
(the gauge in /metrics), counts every refusal, stays alive with its resident memory growing by
less than the flood, and a device of another account still retains and round-trips a message
of the same size."""

from __future__ import annotations

import json
import socket
import ssl
import struct
import subprocess
import time
import uuid
from concurrent.futures import ThreadPoolExecutor

import pytest

from conftest import _certfleet_bin, _clean_env
from test_abuse import device_round_trip, endpoints, make_device, metric
from test_gateway import ALLOW_ALL_DOCUMENT, ALLOW_ALL_POLICY
from test_server import Node

MIB = 1024 * 1024
PAYLOAD = 120 * 1024
FLOOD = 200  # 200 x 120 KiB = 23.4 MiB offered against a 1 MiB bound
CONFIG = """
[mqtt]
max_connections = 200
[broker]
max_retained_bytes = 1048576
"""


@pytest.fixture
def node(tmp_path):
    config = tmp_path / "config.toml"
    config.write_text(CONFIG)
    node = Node(tmp_path / "broker", "--config", str(config), "--metrics-addr", "127.0.0.1:0").wait_listening()
    try:
        yield node
    finally:
        assert node.stop() == 0, node.log.read_text()[-4000:]


def rss_bytes(node) -> int:
    for line in open(f"/proc/{node.proc.pid}/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


def aws(node, profile: str, *args: str):
    env = _clean_env()
    env.update(AWS_SHARED_CREDENTIALS_FILE=str(node.data_dir / "credentials"),
               AWS_CONFIG_FILE=str(node.data_dir / "config"), AWS_EC2_METADATA_DISABLED="true", AWS_PAGER="")
    proc = subprocess.run(["aws", "--endpoint-url", node.url, "--ca-bundle", str(node.data_dir / "server-root.pem"),
                           "--profile", profile, "--output", "json", "iot", *args],
                          capture_output=True, text=True, env=env, timeout=60)
    assert proc.returncode == 0, f"aws iot {' '.join(args)}: {proc.stderr}"
    return json.loads(proc.stdout) if proc.stdout.strip() else None


# -- a few MQTT 3.1.1 packets, for the device reached by SNI --------------------------------------
def mqtt_string(data: bytes) -> bytes:
    return struct.pack("!H", len(data)) + data


def frame(first: int, body: bytes) -> bytes:
    length, n = bytearray(), len(body)
    while True:
        byte, n = n % 128, n // 128
        length.append(byte | (0x80 if n else 0))
        if not n:
            return bytes([first]) + bytes(length) + body


def read_packet(sock) -> tuple[int, bytes]:
    def exactly(n: int) -> bytes:
        data = b""
        while len(data) < n:
            chunk = sock.recv(n - len(data))
            assert chunk, "the gateway closed the connection"
            data += chunk
        return data

    first = exactly(1)[0]
    length, shift = 0, 0
    while True:
        byte = exactly(1)[0]
        length |= (byte & 0x7F) << shift
        shift += 7
        if not byte & 0x80:
            break
    return first, exactly(length)


def test_a_retained_flood_stops_at_the_account_bound_and_another_account_is_untouched(node, tmp_path):
    node.aws("create-policy", "--policy-name", ALLOW_ALL_POLICY, "--policy-document", ALLOW_ALL_DOCUMENT)
    attacker = make_device(node, tmp_path, "flood")
    device_round_trip(attacker, "before")
    rss_before = rss_bytes(node)
    payload = tmp_path / "payload.bin"
    payload.write_bytes(b"x" * PAYLOAD)

    def publish(n: int) -> subprocess.CompletedProcess:
        return subprocess.run(["mosquitto_pub", *attacker, "-V", "mqttv5", "-i", f"flood-{n}", "-t", f"flood/{n}",
                               "-f", str(payload), "-r", "-q", "1"], capture_output=True, text=True, timeout=30)

    with ThreadPoolExecutor(max_workers=8) as pool:
        results = list(pool.map(publish, range(FLOOD)))
    kept = metric(node, "certfleet_broker_retained_messages")
    refused = metric(node, "certfleet_broker_refused_retain_bytes_total")
    # Every retained PUBLISH was either kept or refused; what is kept is within the bound.
    assert kept + refused == FLOOD, (kept, refused, [r.stderr for r in results if r.returncode][:3])
    assert 1 <= kept <= MIB // PAYLOAD
    assert metric(node, "certfleet_broker_retained_bytes") <= MIB
    told = [r for r in results if "quota exceeded" in (r.stdout + r.stderr).lower()]
    assert len(told) == refused, ("mosquitto_pub hears Quota exceeded for each refused message",
                                  [r.stdout + r.stderr for r in results[-2:]])
    # Alive, and its memory did not take the flood (23 MiB offered; the bound is 1 MiB).
    rss_after = rss_bytes(node)
    print(f"retained kept {kept:.0f}, refused {refused:.0f}; RSS {rss_before / MIB:.1f} -> {rss_after / MIB:.1f} MiB")
    assert node.proc.poll() is None
    assert rss_after - rss_before < 12 * MIB, (rss_before, rss_after)
    device_round_trip(attacker, "after")

    # A device of another account, reached by its endpoint's name (SNI), retains a message of
    # the same size and gets it back.
    created = json.loads(subprocess.run(
        [_certfleet_bin(), "account", "create", "--data-dir", str(node.data_dir), "--profile", "victim",
         "--output", "json"], capture_output=True, text=True, check=True, timeout=60).stdout)
    assert created["profile"] == "victim"
    aws(node, "victim", "create-policy", "--policy-name", ALLOW_ALL_POLICY, "--policy-document", ALLOW_ALL_DOCUMENT)
    key = tmp_path / "victim.key"
    subprocess.run(["openssl", "ecparam", "-name", "prime256v1", "-genkey", "-noout", "-out", str(key)], check=True)
    csr = tmp_path / "victim.csr"
    subprocess.run(["openssl", "req", "-new", "-key", str(key), "-subj", "/CN=victim", "-out", str(csr)], check=True)
    cert = aws(node, "victim", "create-certificate-from-csr", "--certificate-signing-request", f"file://{csr}",
               "--set-as-active")
    aws(node, "victim", "attach-policy", "--policy-name", ALLOW_ALL_POLICY, "--target", cert["certificateArn"])
    (tmp_path / "victim.crt").write_text(cert["certificatePem"])
    name = aws(node, "victim", "describe-endpoint", "--endpoint-type", "iot:Data-ATS")["endpointAddress"]
    context = ssl.create_default_context(cafile=str(node.data_dir / "server-root.pem"))
    context.check_hostname = False
    context.load_cert_chain(str(tmp_path / "victim.crt"), str(key))
    host, port = endpoints(node)["mqtt_addr"].rsplit(":", 1)
    with context.wrap_socket(socket.create_connection((host, int(port)), timeout=20), server_hostname=name) as sock:
        client_id = f"victim-{uuid.uuid4().hex[:6]}".encode()
        sock.sendall(frame(0x10, mqtt_string(b"MQTT") + bytes([4, 0x02]) + struct.pack("!H", 30)
                           + mqtt_string(client_id)))
        assert read_packet(sock) == (0x20, b"\x00\x00"), "CONNACK accepted"
        sock.sendall(frame(0x33, mqtt_string(b"flood/0") + struct.pack("!H", 7) + b"v" * PAYLOAD))
        assert read_packet(sock) == (0x40, struct.pack("!H", 7)), "PUBACK: the retained message is kept"
        sock.sendall(frame(0x82, struct.pack("!H", 8) + mqtt_string(b"flood/0") + b"\x01"))
        assert read_packet(sock) == (0x90, struct.pack("!H", 8) + b"\x01"), "SUBACK"
        first, body = read_packet(sock)
        assert first & 0xF1 == 0x31, "the retained message comes back, retain set"
        topic_len = struct.unpack("!H", body[:2])[0]
        assert body[2:2 + topic_len] == b"flood/0"
        assert body[2 + topic_len + 2:] == b"v" * PAYLOAD
    assert metric(node, "certfleet_broker_refused_retain_bytes_total") == refused, "the victim was not refused"
