"""The egress policy and topic rule destinations, from the attacker's side and with the stock AWS
CLI (docs/egress.md, docs/rules.md).

Under the default policy (the session `server`), a listener the test runs on 127.0.0.1 never
accepts a connection from a destination confirmation or an http action, by address or by a name
resolving to it, and the tenant sees the same generic message for an open and a closed port.
With the operator allowing http and allow-listing 127.0.0.1/32 (`open_egress_server`), the whole
destination flow works: create -> confirmation received -> confirm -> the rule's http action
delivers; disabled or deleted, it stops."""

from __future__ import annotations

import json
import queue
import socket
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, HTTPServer

import pytest

from test_gateway import make_device, mosquitto, start_sub

ROLE = "arn:aws:iam::123456789012:role/rules"
GENERIC = "the destination could not be reached"


def unique(prefix: str) -> str:
    return f"{prefix}_{uuid.uuid4().hex[:8]}"


def rule_file(tmp_path, payload: dict) -> str:
    path = tmp_path / f"rule-{uuid.uuid4().hex[:6]}.json"
    path.write_text(json.dumps(payload))
    return f"file://{path}"


class CountingListener:
    """A TCP listener on 127.0.0.1 that counts every connection it accepts."""

    def __init__(self):
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(64)
        self.port = self.sock.getsockname()[1]
        self.accepted = 0
        self._stop = False
        threading.Thread(target=self._run, daemon=True).start()

    def _run(self):
        self.sock.settimeout(0.2)
        while not self._stop:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                continue
            self.accepted += 1
            conn.close()

    def close(self):
        self._stop = True
        self.sock.close()


def closed_port() -> int:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()
    return port


def create_destination(server, url: str) -> dict:
    config = json.dumps({"httpUrlConfiguration": {"confirmationUrl": url}})
    return server.aws("create-topic-rule-destination", "--destination-configuration", config)["topicRuleDestination"]


def wait_status(server, arn: str, wanted: str, timeout: float = 20) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        got = server.aws("get-topic-rule-destination", "--arn", arn)["topicRuleDestination"]
        if got["status"] == wanted or time.monotonic() > deadline:
            assert got["status"] == wanted, got
            return got
        time.sleep(0.2)


def metrics(server) -> str:
    host, port = server.endpoints["metrics_addr"].rsplit(":", 1)
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        sock.sendall(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    return data.decode()


def refused(text: str, reason: str) -> int:
    for line in text.splitlines():
        if line.startswith(f'certfleet_egress_refused_total{{reason="{reason}"}}'):
            return int(line.split()[-1])
    raise AssertionError(f"no egress refusal counter for {reason}")


def test_the_default_policy_never_reaches_loopback_and_says_the_same_for_open_and_closed(server, tmp_path):
    listener = CountingListener()
    try:
        denied_before = refused(metrics(server), "denied_address")
        open_port, shut_port = listener.port, closed_port()
        # Plain http is refused at once (https only by default), naming the rule, not the network.
        proc = server.aws_error("create-topic-rule-destination", "--destination-configuration",
                                json.dumps({"httpUrlConfiguration": {"confirmationUrl": f"http://127.0.0.1:{open_port}/c"}}),
                                code="InvalidRequestException")
        assert "https" in proc.stderr
        # https to loopback, by address, by name and IPv4-mapped: created, the confirmation is
        # never sent, and every one ends in ERROR with one generic reason.
        urls = [f"https://127.0.0.1:{open_port}/c", f"https://127.0.0.1:{shut_port}/c",
                f"https://localhost:{open_port}/c", f"https://[::ffff:127.0.0.1]:{open_port}/c"]
        reasons = set()
        arns = []
        for url in urls:
            created = create_destination(server, url)
            assert created["status"] == "IN_PROGRESS" and created["httpUrlProperties"] == {"confirmationUrl": url}
            arns.append(created["arn"])
        for arn in arns:
            reasons.add(wait_status(server, arn, "ERROR")["statusReason"])
        assert reasons == {f"the confirmation could not be delivered: {GENERIC}"}, reasons
        # An http action under a destination that is not ENABLED is refused, and nothing changes.
        payload = {"sql": "SELECT * FROM 'probe'", "actions": [{"http": {"url": urls[0] + "/x"}}]}
        name = unique("probe")
        proc = server.aws_error("create-topic-rule", "--rule-name", name, "--topic-rule-payload",
                                rule_file(tmp_path, payload), code="InvalidRequestException")
        assert "destination" in proc.stderr
        server.aws_error("get-topic-rule", "--rule-name", name, code="UnauthorizedException")
        # Not confirmed: it cannot be enabled.
        server.aws_error("update-topic-rule-destination", "--arn", arns[0], "--status", "ENABLED",
                         code="InvalidRequestException")
        assert wait_status(server, arns[0], "ERROR")
        assert listener.accepted == 0
        assert refused(metrics(server), "denied_address") >= denied_before + len(urls)
        for arn in arns:
            server.aws("delete-topic-rule-destination", "--arn", arn)
        # AWS's model has no ResourceNotFoundException here: a missing destination is Unauthorized.
        server.aws_error("get-topic-rule-destination", "--arn", arns[0], code="UnauthorizedException")
    finally:
        listener.close()
    assert listener.accepted == 0


class _Receiver(BaseHTTPRequestHandler):
    received: queue.Queue = queue.Queue()

    def do_POST(self):  # noqa: N802 (the http.server API)
        body = self.rfile.read(int(self.headers.get("content-length", "0")))
        _Receiver.received.put((self.path, self.headers.get("x-token"), json.loads(body)))
        self.send_response(200)
        self.send_header("content-length", "0")
        self.end_headers()

    def log_message(self, *args):
        pass


def next_post(timeout: float = 15):
    return _Receiver.received.get(timeout=timeout)


def test_the_destination_flow_with_the_cli_then_the_http_action_delivers(open_egress_server, openssl, tmp_path):
    server = open_egress_server
    httpd = HTTPServer(("127.0.0.1", 0), _Receiver)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    try:
        tag = uuid.uuid4().hex[:8]
        base = f"http://127.0.0.1:{httpd.server_address[1]}/hooks/{tag}"
        created = create_destination(server, base)
        arn = created["arn"]
        assert created["status"] == "IN_PROGRESS" and ":ruledestination/http/" in arn
        # AWS's confirmation message reaches the confirmation URL.
        path, _, message = next_post()
        assert path == f"/hooks/{tag}"
        assert message["messageType"] == "DestinationConfirmation" and message["arn"] == arn
        token = message["confirmationToken"]
        assert message["enableUrl"].endswith(f"/confirmdestination/{token}")
        server.aws_error("create-topic-rule-destination", "--destination-configuration",
                         json.dumps({"httpUrlConfiguration": {"confirmationUrl": base}}),
                         code="ResourceAlreadyExistsException")

        name = unique("http")
        payload = {
            "sql": f"SELECT *, topic() AS t FROM 'hooks/{tag}'",
            "actions": [{"http": {"url": f"{base}/in", "headers": [{"key": "x-token", "value": "secret-1"}]}}],
            "errorAction": {"republish": {"topic": f"hooks/{tag}/errors", "roleArn": ROLE}},
        }
        # Not confirmed yet: refused; a wrong token does not confirm it.
        server.aws_error("create-topic-rule", "--rule-name", name, "--topic-rule-payload",
                         rule_file(tmp_path, payload), code="InvalidRequestException")
        server.aws_error("confirm-topic-rule-destination", "--confirmation-token", "0" * 64,
                         code="InvalidRequestException")
        # Another account cannot confirm it with the token.
        stranger = server.create_account()
        server.aws_error("confirm-topic-rule-destination", "--confirmation-token", token,
                         code="InvalidRequestException", profile=stranger)
        assert wait_status(server, arn, "IN_PROGRESS")

        server.aws("confirm-topic-rule-destination", "--confirmation-token", token)
        assert wait_status(server, arn, "ENABLED")
        listed = server.aws("list-topic-rule-destinations")["destinationSummaries"]
        assert [(d["status"], d["httpUrlSummary"]["confirmationUrl"]) for d in listed if d["arn"] == arn] == [
            ("ENABLED", base)]

        server.aws("create-topic-rule", "--rule-name", name, "--topic-rule-payload", rule_file(tmp_path, payload))
        device = make_device(server, openssl)
        got = None
        deadline = time.monotonic() + 15
        while got is None and time.monotonic() < deadline:
            out = mosquitto("mosquitto_pub", server, device, "-t", f"hooks/{tag}", "-m", '{"v": 7}')
            assert out.returncode == 0, out.stderr
            try:
                got = next_post(timeout=0.5)
            except queue.Empty:
                pass
        assert got == (f"/hooks/{tag}/in", "secret-1", {"v": 7, "t": f"hooks/{tag}"})

        # Disabled: the action stops, and the error action says why.
        server.aws("update-topic-rule-destination", "--arn", arn, "--status", "DISABLED")
        assert wait_status(server, arn, "DISABLED")
        while not _Receiver.received.empty():
            _Receiver.received.get_nowait()
        sub = start_sub(server, device, f"hooks/{tag}/errors")
        report = None
        deadline = time.monotonic() + 15
        while sub.poll() is None and time.monotonic() < deadline:
            out = mosquitto("mosquitto_pub", server, device, "-t", f"hooks/{tag}", "-m", '{"v": 8}')
            assert out.returncode == 0, out.stderr
            try:
                sub.wait(timeout=0.3)
            except Exception:
                pass
        stdout, stderr = sub.communicate(timeout=5)
        assert sub.returncode == 0, stderr
        report = json.loads(stdout.strip().split(" ", 1)[1])
        assert "destination" in report["failures"][0]["errorMessage"], report
        assert _Receiver.received.empty(), "nothing is sent while the destination is disabled"

        server.aws("delete-topic-rule", "--rule-name", name)
        server.aws("delete-topic-rule-destination", "--arn", arn)
        assert all(d["arn"] != arn for d in server.aws("list-topic-rule-destinations")["destinationSummaries"])
    finally:
        httpd.shutdown()


def test_the_allow_list_opens_only_what_it_names(open_egress_server):
    """127.0.0.1/32 is allow-listed; the rest of loopback (127.0.0.2) and localhost's ::1 stay
    denied: a listener on 127.0.0.2 gets nothing."""
    server = open_egress_server
    sock = socket.socket()
    sock.bind(("127.0.0.2", 0))
    sock.listen(8)
    sock.settimeout(0.1)
    port = sock.getsockname()[1]
    try:
        created = create_destination(server, f"http://127.0.0.2:{port}/c")
        got = wait_status(server, created["arn"], "ERROR")
        assert got["statusReason"].endswith(GENERIC)
        with pytest.raises(OSError):
            sock.accept()
        server.aws("delete-topic-rule-destination", "--arn", created["arn"])
    finally:
        sock.close()


def test_an_audit_webhook_to_loopback_is_never_sent_under_the_default_policy(server):
    """The attacker points its audit notification at the server's own loopback (https, by name):
    the worker tries a bounded number of times, each refused on the resolved address, and the
    listener never sees a connection."""
    listener = CountingListener()
    try:
        acct = server.create_account()
        role = "arn:aws:iam::123456789012:role/certfleet-audit"
        check = "CA_CERTIFICATE_EXPIRING_CHECK"
        url = f"https://localhost:{listener.port}/audit"
        before = refused(metrics(server), "denied_address")
        server.aws(
            "update-account-audit-configuration", "--role-arn", role,
            "--audit-notification-target-configurations",
            json.dumps({"SNS": {"targetArn": url, "roleArn": role, "enabled": True}}),
            "--audit-check-configurations", json.dumps({check: {"enabled": True}}),
            profile=acct,
        )
        server.aws("start-on-demand-audit-task", "--target-check-names", check, profile=acct)
        # Every attempt (5, the default) is refused and counted.
        deadline = time.monotonic() + 30
        while refused(metrics(server), "denied_address") < before + 5 and time.monotonic() < deadline:
            time.sleep(0.2)
        assert refused(metrics(server), "denied_address") >= before + 5
        assert listener.accepted == 0
    finally:
        listener.close()
