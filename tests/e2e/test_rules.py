"""Topic rules with the stock AWS CLI (create, get, list, replace, disable, enable, delete, a bad
SQL statement), and the rules engine with real clients: mosquitto_sub receives what a republish
action publishes (the http action is in test_egress.py)."""

from __future__ import annotations

import json
import time
import uuid

from test_gateway import make_device, mosquitto, publish_until_received, start_sub

ROLE = "arn:aws:iam::123456789012:role/rules"


def rule_file(tmp_path, payload: dict) -> str:
    path = tmp_path / f"rule-{uuid.uuid4().hex[:6]}.json"
    path.write_text(json.dumps(payload))
    return f"file://{path}"


def unique(prefix: str) -> str:
    return f"{prefix}_{uuid.uuid4().hex[:8]}"


def test_topic_rule_lifecycle_with_the_cli(server, tmp_path):
    name = unique("r1")
    payload = {
        "sql": "SELECT temp FROM 'cli/+/data' WHERE temp > 30",
        "description": "hot",
        "actions": [{"republish": {"topic": "cli/alerts", "qos": 1, "roleArn": ROLE}}],
        "ruleDisabled": False,
        "awsIotSqlVersion": "2016-03-23",
    }
    assert server.aws("create-topic-rule", "--rule-name", name, "--topic-rule-payload", rule_file(tmp_path, payload)) is None
    server.aws_error("create-topic-rule", "--rule-name", name, "--topic-rule-payload", rule_file(tmp_path, payload),
                     code="ResourceAlreadyExistsException")
    got = server.aws("get-topic-rule", "--rule-name", name)
    assert got["ruleArn"].endswith(f":rule/{name}")
    rule = got["rule"]
    assert rule["ruleName"] == name and rule["sql"] == payload["sql"] and rule["description"] == "hot"
    assert rule["actions"] == [{"republish": {"topic": "cli/alerts", "qos": 1, "roleArn": ROLE}}]
    assert rule["ruleDisabled"] is False and rule["awsIotSqlVersion"] == "2016-03-23"

    listed = server.aws("list-topic-rules", "--topic", "cli/+/data")["rules"]
    assert [(r["ruleName"], r["topicPattern"], r["ruleDisabled"]) for r in listed] == [(name, "cli/+/data", False)]

    replaced = dict(payload, sql="SELECT * FROM 'cli/other'",
                    errorAction={"republish": {"topic": "cli/errors", "roleArn": ROLE}})
    server.aws("replace-topic-rule", "--rule-name", name, "--topic-rule-payload", rule_file(tmp_path, replaced))
    rule = server.aws("get-topic-rule", "--rule-name", name)["rule"]
    assert rule["sql"] == "SELECT * FROM 'cli/other'"
    assert rule["errorAction"] == {"republish": {"topic": "cli/errors", "qos": 0, "roleArn": ROLE}}

    server.aws("disable-topic-rule", "--rule-name", name)
    disabled = server.aws("list-topic-rules", "--rule-disabled")["rules"]
    assert name in [r["ruleName"] for r in disabled]
    server.aws("enable-topic-rule", "--rule-name", name)
    assert server.aws("get-topic-rule", "--rule-name", name)["rule"]["ruleDisabled"] is False
    server.aws("delete-topic-rule", "--rule-name", name)
    # AWS answers a rule the caller does not have with UnauthorizedException (401).
    server.aws_error("get-topic-rule", "--rule-name", name, code="UnauthorizedException")
    server.aws_error("delete-topic-rule", "--rule-name", name, code="UnauthorizedException")


def test_bad_rules_are_refused(server, tmp_path):
    name = unique("bad")
    bad_sql = {"sql": "SELEC * FROM 'a'", "actions": [{"republish": {"topic": "b", "roleArn": ROLE}}]}
    proc = server.aws_error("create-topic-rule", "--rule-name", name, "--topic-rule-payload",
                            rule_file(tmp_path, bad_sql), code="SqlParseException")
    assert "line 1" in proc.stderr
    lambda_action = {"sql": "SELECT * FROM 'a'", "actions": [{"lambda": {"functionArn": "arn:aws:lambda:x"}}]}
    proc = server.aws_error("create-topic-rule", "--rule-name", name, "--topic-rule-payload",
                            rule_file(tmp_path, lambda_action), code="InvalidRequestException")
    assert "lambda" in proc.stderr
    server.aws_error("create-topic-rule", "--rule-name", "bad-name", "--topic-rule-payload",
                     rule_file(tmp_path, dict(bad_sql, sql="SELECT * FROM 'a'")), code="InvalidRequestException")
    server.aws_error("get-topic-rule", "--rule-name", name, code="UnauthorizedException")


def test_republish_reaches_a_mosquitto_subscriber(server, openssl, tmp_path):
    device = make_device(server, openssl)
    tag = uuid.uuid4().hex[:8]
    name = unique("republish")
    payload = {
        "sql": f"SELECT temp, clientid() AS device FROM 'rules/{tag}/+' WHERE temp > 30",
        "actions": [{"republish": {"topic": f"rules/{tag}/alerts", "roleArn": ROLE}}],
    }
    server.aws("create-topic-rule", "--rule-name", name, "--topic-rule-payload", rule_file(tmp_path, payload))
    sub = start_sub(server, device, f"rules/{tag}/alerts")
    deadline = time.monotonic() + 15
    while sub.poll() is None and time.monotonic() < deadline:
        for temp in (10, 45):
            out = mosquitto("mosquitto_pub", server, device, "-t", f"rules/{tag}/kitchen", "-i", "sensor-1",
                            "-m", json.dumps({"temp": temp}))
            assert out.returncode == 0, out.stderr
        try:
            sub.wait(timeout=0.3)
        except Exception:
            pass
    stdout, stderr = sub.communicate(timeout=5)
    assert sub.returncode == 0, stderr
    topic, message = stdout.strip().split(" ", 1)
    assert topic == f"rules/{tag}/alerts"
    assert json.loads(message) == {"temp": 45, "device": "sensor-1"}
    server.aws("delete-topic-rule", "--rule-name", name)


# The http action end to end (destination, confirmation, delivery) is in test_egress.py: it
# needs a server whose egress policy lets a receiver on 127.0.0.1 get requests.


def _peak_rss_mib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) // 1024
    raise AssertionError("no VmHWM")


def test_a_self_republishing_concat_rule_cannot_hurt_the_server(server, openssl, tmp_path):
    """Issue 13's finding, through the real binary: a 60-byte rule republishing concat(x, x, ...)
    to its own topic and one 13-byte publish once aborted the process for every tenant. Now the
    generation that would pass 128 KiB fails, the error action reports it with AWS's payload,
    the server's memory stays bounded, and a device still round-trips a message."""
    attacker = make_device(server, openssl)
    tag = uuid.uuid4().hex[:8]
    name = unique("grow")
    loop = f"loop/{tag}"
    payload = {
        "sql": f"SELECT concat(x, x, x, x, x, x, x, x, x, x) AS x FROM '{loop}'",
        "actions": [{"republish": {"topic": loop, "roleArn": ROLE}}],
        "errorAction": {"republish": {"topic": f"errors/{tag}", "roleArn": ROLE}},
    }
    server.aws("create-topic-rule", "--rule-name", name, "--topic-rule-payload", rule_file(tmp_path, payload))
    errors = start_sub(server, attacker, f"errors/{tag}")
    seed = '{"x":"abcde"}'
    assert len(seed) == 13
    publish_until_received(server, attacker, errors, loop, seed)
    stdout, stderr = errors.communicate(timeout=5)
    assert errors.returncode == 0, stderr
    topic, message = stdout.strip().split(" ", 1)
    report = json.loads(message)
    assert topic == f"errors/{tag}"
    assert report["ruleName"] == name
    assert report["topic"] == loop
    assert report["failures"][0]["failedAction"] == "RepublishAction"
    assert "larger than 131072 bytes" in report["failures"][0]["errorMessage"]

    # Alive: the API answers and a device round-trips a message.
    assert server.proc.poll() is None
    server.aws("get-topic-rule", "--rule-name", name)
    other = make_device(server, openssl)
    echo = start_sub(server, other, f"echo/{tag}")
    publish_until_received(server, other, echo, f"echo/{tag}", "still here")
    stdout, _ = echo.communicate(timeout=5)
    assert stdout.strip() == f"echo/{tag} still here"
    # The bug allocated 1.6 GB in one go.
    assert _peak_rss_mib(server.proc.pid) < 512
    server.aws("delete-topic-rule", "--rule-name", name)
