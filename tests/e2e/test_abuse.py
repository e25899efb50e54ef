"""Strangers against the API listener (issue 13): slow or stalled peers are closed by their
deadline, a flood of idle connections stops at the API's own connection budget, and none of it
reaches the device gateway: a device of the fleet connects and round-trips a message while the
API is saturated. Every case checks its counter in /metrics and that the server is alive.

Sizes are small and every wait is bounded; the deadlines are shortened through the config file
so each case takes seconds."""

from __future__ import annotations

import json
import resource
import socket
import ssl
import subprocess
import time
import uuid

import pytest

from test_gateway import ALLOW_ALL_DOCUMENT, ALLOW_ALL_POLICY
from test_server import Node

CONFIG = """
[api]
max_connections = 40
max_connections_per_peer = 40
handshake_timeout = "2s"
header_timeout = "2s"
body_timeout = "2s"
stall_timeout = "5s"
[mqtt]
max_connections = 200
"""


@pytest.fixture
def node(tmp_path):
    config = tmp_path / "config.toml"
    config.write_text(CONFIG)
    node = Node(tmp_path / "abuse", "--config", str(config), "--metrics-addr", "127.0.0.1:0").wait_listening()
    try:
        yield node
    finally:
        assert node.stop() == 0, node.log.read_text()[-4000:]


def endpoints(node) -> dict:
    return json.loads((node.data_dir / "endpoints.json").read_text())


def api_hostport(node) -> tuple[str, int]:
    host, port = node.url.removeprefix("https://").rsplit(":", 1)
    return host, int(port)


def tls_connect(node) -> ssl.SSLSocket:
    context = ssl.create_default_context(cafile=str(node.data_dir / "server-root.pem"))
    context.check_hostname = False
    raw = socket.create_connection(api_hostport(node), timeout=10)
    return context.wrap_socket(raw)


def metric(node, name: str) -> float:
    host, port = endpoints(node)["metrics_addr"].rsplit(":", 1)
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        sock.sendall(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    for line in data.decode().splitlines():
        if line.startswith(name + " "):
            return float(line.split()[-1])
    raise AssertionError(f"{name} not in /metrics")


def closed_within(sock, seconds: float) -> bool:
    """Whether the peer closes `sock` within `seconds` (reads until EOF or a reset)."""
    sock.settimeout(seconds)
    deadline = time.monotonic() + seconds
    try:
        while time.monotonic() < deadline:
            if not sock.recv(4096):
                return True
    except (ConnectionError, ssl.SSLError, OSError) as error:
        return not isinstance(error, socket.timeout)
    return False


def make_device(node, tmp_path, tag: str) -> list:
    """A device of the fleet (certificate, key, the allow-all policy): its mosquitto options."""
    key = tmp_path / f"{tag}.key"
    subprocess.run(["openssl", "ecparam", "-name", "prime256v1", "-genkey", "-noout", "-out", str(key)], check=True)
    csr = tmp_path / f"{tag}.csr"
    subprocess.run(["openssl", "req", "-new", "-key", str(key), "-subj", f"/CN={tag}", "-out", str(csr)], check=True)
    created = node.aws("create-certificate-from-csr", "--certificate-signing-request", f"file://{csr}",
                       "--set-as-active")
    node.aws("attach-policy", "--policy-name", ALLOW_ALL_POLICY, "--target", created["certificateArn"])
    cert = tmp_path / f"{tag}.crt"
    cert.write_text(created["certificatePem"])
    host, port = endpoints(node)["mqtt_addr"].rsplit(":", 1)
    return ["-h", host, "-p", port, "--cafile", str(node.data_dir / "server-root.pem"), "--cert", str(cert),
            "--key", str(key)]


def device_round_trip(common: list, tag: str) -> None:
    """The device connects to the gateway and gets its own message back."""
    topic = f"e2e/abuse/{tag}"
    sub = subprocess.Popen(["mosquitto_sub", *common, "-i", f"{tag}-sub", "-t", topic, "-C", "1", "-W", "20"],
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 20
        while True:
            pub = subprocess.run(["mosquitto_pub", *common, "-i", f"{tag}-pub", "-t", topic, "-m", tag, "-q", "1"],
                                 capture_output=True, text=True, timeout=20)
            assert pub.returncode == 0, pub.stderr
            try:
                out, err = sub.communicate(timeout=1)
                break
            except subprocess.TimeoutExpired:
                assert time.monotonic() < deadline, "the subscriber never got the message"
        assert sub.returncode == 0 and out.strip() == tag, (out, err)
    finally:
        if sub.poll() is None:
            sub.kill()


def test_slow_headers_and_stalled_bodies_are_closed_by_their_deadline(node):
    before_headers = metric(node, 'certfleet_api_connections_closed_total{reason="header_timeout"}')
    before_bodies = metric(node, 'certfleet_api_connections_closed_total{reason="body_timeout"}')
    # Slowloris: a request line and one header, then a byte a second, never the blank line.
    slow = tls_connect(node)
    slow.sendall(b"GET /things HTTP/1.1\r\nHost: x\r\n")
    started = time.monotonic()
    slow.settimeout(0.5)
    closed = False
    while time.monotonic() - started < 8:
        try:
            slow.sendall(b"X")
            if slow.recv(4096) == b"":
                closed = True
                break
        except socket.timeout:
            continue
        except (ConnectionError, ssl.SSLError, OSError):
            closed = True
            break
    assert closed, "a client trickling its headers was not closed within 8 s (header_timeout 2 s)"
    # Idle after the handshake: nothing sent at all.
    idle = tls_connect(node)
    assert closed_within(idle, 6), "an idle connection was not closed (header_timeout 2 s)"
    # A signed request (a stranger's is refused before its body is read) whose body is announced
    # and never sent in full: 408 within the body deadline, nothing done.
    akid, secret = node_credentials(node)
    body = tls_connect(node)
    body.sendall(signed_head(node, akid, secret, "/things/abuse-never", 1000) + b"{\"a\":")
    body.settimeout(8)
    answer = body.recv(4096)
    assert answer.startswith(b"HTTP/1.1 408"), answer[:200]
    assert node.aws("list-things")["things"] == []
    for sock in (slow, idle, body):
        sock.close()
    assert metric(node, 'certfleet_api_connections_closed_total{reason="header_timeout"}') >= before_headers + 2
    assert metric(node, 'certfleet_api_connections_closed_total{reason="body_timeout"}') >= before_bodies + 1


def test_an_idle_connection_flood_stops_at_the_api_budget_and_devices_still_connect(tmp_path):
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, min(hard, 4096)), hard))
    config = tmp_path / "config.toml"
    # Long deadlines, so the flood holds the API's whole budget for the length of the test.
    config.write_text(CONFIG.replace('handshake_timeout = "2s"', 'handshake_timeout = "60s"'))
    node = Node(tmp_path / "flood", "--config", str(config), "--metrics-addr", "127.0.0.1:0").wait_listening()
    try:
        node.aws("create-policy", "--policy-name", ALLOW_ALL_POLICY, "--policy-document", ALLOW_ALL_DOCUMENT)
        tag = f"flood-{uuid.uuid4().hex[:6]}"
        device = make_device(node, tmp_path, tag)
        refused_before = metric(node, 'certfleet_api_connections_total{outcome="refused_full"}')
        host, port = api_hostport(node)
        # Twice the budget of plain TCP connections that never say a word.
        flood = [socket.create_connection((host, port), timeout=10) for _ in range(80)]
        try:
            deadline = time.monotonic() + 10
            while metric(node, 'certfleet_api_connections_total{outcome="refused_full"}') < refused_before + 40:
                assert time.monotonic() < deadline, "the connections over the budget were not refused"
                time.sleep(0.1)
            assert metric(node, "certfleet_api_connections_open") == 40
            # The API is full: one more TLS client is closed at once.
            with pytest.raises((ConnectionError, ssl.SSLError, OSError)):
                tls_connect(node).sendall(b"GET /things HTTP/1.1\r\nHost: x\r\n\r\n")
            # The gateway has its own budget: a device connects and round-trips meanwhile.
            device_round_trip(device, tag)
        finally:
            for sock in flood:
                sock.close()
        # The flood's slots come back as soon as its sockets close; the API answers again.
        deadline = time.monotonic() + 15
        while metric(node, "certfleet_api_connections_open") > 0:
            assert time.monotonic() < deadline, "flood connections still counted open"
            time.sleep(0.2)
        assert node.aws("list-things")["things"] == []
        device_round_trip(device, tag + "-after")
    finally:
        assert node.stop() == 0, node.log.read_text()[-4000:]


def test_one_peer_cannot_take_more_than_its_share(tmp_path):
    config = tmp_path / "config.toml"
    config.write_text(CONFIG.replace("max_connections_per_peer = 40", "max_connections_per_peer = 5"))
    node = Node(tmp_path / "peer", "--config", str(config), "--metrics-addr", "127.0.0.1:0").wait_listening()
    try:
        host, port = api_hostport(node)
        held = [socket.create_connection((host, port), timeout=10) for _ in range(5)]
        extra = socket.create_connection((host, port), timeout=10)
        assert closed_within(extra, 5), "a sixth connection from one peer was kept"
        assert metric(node, 'certfleet_api_connections_total{outcome="refused_per_peer"}') >= 1
        for sock in held + [extra]:
            sock.close()
    finally:
        assert node.stop() == 0


def test_a_budget_beyond_the_open_files_limit_refuses_to_start(tmp_path):
    config = tmp_path / "config.toml"
    config.write_text("[mqtt]\nmax_connections = 10000000\n")
    node = Node(tmp_path / "toobig", "--config", str(config))
    assert node.wait_exit() != 0
    assert "mqtt.max_connections = 10000000" in node.log.read_text()


def test_made_up_sni_names_and_strangers_fill_only_their_own_bounded_caches(tmp_path):
    config = tmp_path / "config.toml"
    config.write_text(CONFIG + "[caches]\nsni_unknown_names = 50\nunknown_certificates = 20\n")
    node = Node(tmp_path / "sni", "--config", str(config), "--metrics-addr", "127.0.0.1:0").wait_listening()
    try:
        node.aws("create-policy", "--policy-name", ALLOW_ALL_POLICY, "--policy-document", ALLOW_ALL_DOCUMENT)
        tag = f"sni-{uuid.uuid4().hex[:6]}"
        device = make_device(node, tmp_path, tag)
        device_round_trip(device, tag)
        host, port = endpoints(node)["mqtt_addr"].rsplit(":", 1)
        context = ssl.create_default_context(cafile=str(node.data_dir / "server-root.pem"))
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
        failed_before = metric(node, "certfleet_gateway_handshakes_failed_total")
        unknown_before = metric(node, 'certfleet_gateway_refusals_total{reason="Unregistered"}')
        started = time.monotonic()
        # 300 ClientHellos, each naming a different made-up host, no client certificate.
        for index in range(300):
            raw = socket.create_connection((host, int(port)), timeout=10)
            try:
                with context.wrap_socket(raw, server_hostname=f"x{index}-{uuid.uuid4().hex[:8]}.invalid") as tls:
                    tls.recv(1)
            except (ssl.SSLError, ConnectionError, OSError):
                pass  # refused for want of a client certificate, after SNI resolution
            finally:
                raw.close()
        # Strangers with self-signed certificates the registry does not hold.
        for index in range(60):
            key = tmp_path / f"stranger{index}.key"
            cert = tmp_path / f"stranger{index}.crt"
            subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256",
                            "-nodes", "-keyout", str(key), "-out", str(cert), "-subj", f"/CN=stranger{index}",
                            "-days", "1"], check=True, capture_output=True)
            result = subprocess.run(["mosquitto_pub", "-h", host, "-p", port, "--cafile",
                                     str(node.data_dir / "server-root.pem"), "--cert", str(cert), "--key", str(key),
                                     "-t", "x", "-m", "x", "-i", f"stranger{index}"],
                                    capture_output=True, text=True, timeout=20)
            assert result.returncode != 0
        elapsed = time.monotonic() - started
        # Every stranger is counted, but the log holds at most a line a second per kind of
        # refusal (the rest are summed in `suppressed`): strangers cannot flood the log.
        assert metric(node, "certfleet_gateway_handshakes_failed_total") - failed_before >= 300
        assert metric(node, 'certfleet_gateway_refusals_total{reason="Unregistered"}') - unknown_before == 60
        log = node.log.read_text(errors="replace")
        for reason in ("NoClientCert", "Unregistered"):
            lines = sum(1 for entry in log.splitlines() if "device refused" in entry and reason in entry)
            assert 1 <= lines <= elapsed + 2, (reason, lines, elapsed)
        assert "suppressed" in log
        assert metric(node, 'certfleet_cache_entries{cache="sni_unknown_names"}') <= 50
        assert metric(node, 'certfleet_cache_evicted_total{cache="sni_unknown_names"}') > 0
        assert metric(node, 'certfleet_cache_entries{cache="sni_endpoints"}') <= 2
        assert metric(node, 'certfleet_cache_entries{cache="unknown_certificates"}') <= 20
        assert metric(node, 'certfleet_cache_evicted_total{cache="unknown_certificates"}') > 0
        # The fleet's device still connects and round-trips after the strangers.
        device_round_trip(device, tag + "-after")
    finally:
        assert node.stop() == 0, node.log.read_text()[-4000:]


def rss_bytes(node) -> int:
    for line in open(f"/proc/{node.proc.pid}/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


def node_credentials(node) -> tuple[str, str]:
    """The node's default access key (access key id, secret)."""
    import configparser

    parser = configparser.ConfigParser()
    parser.read(node.data_dir / "credentials")
    return parser["default"]["aws_access_key_id"], parser["default"]["aws_secret_access_key"]


def signed_head(node, access_key_id: str, secret: str, path: str, body_length: int) -> bytes:
    """The head of a POST to `path` signed with this key (over a body of `body_length` bytes
    `x`), announcing `body_length` bytes."""
    import botocore.auth
    from botocore.awsrequest import AWSRequest
    from botocore.credentials import Credentials

    request = AWSRequest(method="POST", url=node.url + path, data=b"x" * body_length,
                         headers={"Content-Type": "application/json"})
    botocore.auth.SigV4Auth(Credentials(access_key_id, secret), "iot", "us-east-1").add_auth(request)
    host, port = api_hostport(node)
    head = f"POST {path} HTTP/1.1\r\nHost: {host}:{port}\r\nContent-Length: {body_length}\r\n"
    head += "".join(f"{k}: {v}\r\n" for k, v in request.headers.items() if k.lower() not in ("host", "content-length"))
    return (head + "\r\n").encode()


def stranger_request(node, access_key_id: str, body_length: int, sent: int) -> bytes:
    """A POST signed with a made-up access key, announcing `body_length` bytes and sending only
    `sent` of them: the answer (status line and headers), read until the server closes."""
    path = f"/things/abuse-{access_key_id[-6:].lower()}"
    sock = tls_connect(node)
    try:
        sock.sendall(signed_head(node, access_key_id, uuid.uuid4().hex, path, body_length) + b"x" * sent)
        sock.settimeout(10)
        answer = b""
        try:
            while chunk := sock.recv(65536):
                answer += chunk
        except TimeoutError:
            raise AssertionError(f"the server kept the connection of a refused stranger open: {answer[:300]!r}")
        except (ConnectionError, ssl.SSLError):
            pass  # closed with the rest of the body unread: a reset is a close too
        return answer
    finally:
        sock.close()


def test_strangers_with_made_up_keys_and_large_bodies_are_refused_before_their_bodies(node):
    """The finding: an access key ID alone filled the signing-key cache (+648 MiB) and each
    refusal logged ~128 KiB, after a 512 KiB body was buffered. Now a stranger is answered from
    the request's head alone, its body unread (the answer comes although most of the body is
    never sent: body_timeout would answer 408), nothing is cached, memory and log stay flat."""
    node.aws("list-things")  # warm up: the legitimate key is looked up and cached
    refused = 'certfleet_api_auth_refused_total{cause="unknown_access_key"}'
    refused_before = metric(node, refused)
    rss_before = rss_bytes(node)
    log_before = node.log.stat().st_size
    strangers = 300
    for index in range(strangers):
        access_key_id = "AKIA" + uuid.uuid4().hex[:16].upper()
        answer = stranger_request(node, access_key_id, body_length=400 * 1024, sent=16 * 1024)
        assert answer.startswith(b"HTTP/1.1 403"), answer[:300]
        assert b"UnrecognizedClientException" in answer, answer[:300]
        assert b"connection: close" in answer.lower(), answer[:300]
    grown = rss_bytes(node) - rss_before
    log_grown = node.log.stat().st_size - log_before
    print(f"{strangers} strangers: RSS grew by {grown // 1024} KiB (now {rss_bytes(node) // 1024 // 1024} MiB), "
          f"log by {log_grown} bytes")
    # Stated bounds: well under one body per stranger (300 x 400 KiB = 117 MiB), and a log line
    # a second at most rather than one per request.
    assert grown < 32 * 1024 * 1024, f"RSS grew by {grown} bytes"
    assert rss_bytes(node) < 256 * 1024 * 1024
    assert log_grown < 64 * 1024, f"the log grew by {log_grown} bytes for {strangers} refusals"
    assert metric(node, refused) >= refused_before + strangers
    assert metric(node, "certfleet_api_signing_keys_cached") <= 2, "a made-up key was cached"
    assert metric(node, "certfleet_api_signing_keys_evicted_total") == 0
    # Nothing was created, and the legitimate AWS CLI still works.
    assert node.aws("list-things")["things"] == []
    node.aws("create-thing", "--thing-name", "still-served")
    assert [thing["thingName"] for thing in node.aws("list-things")["things"]] == ["still-served"]
