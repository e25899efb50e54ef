"""Topic rules with the stock AWS CLI (create, get, list, replace, disable, enable, delete, a bad
SQL statement), and the rules engine with real clients: mosquitto_sub receives what a republish
action publishes (the http action is in test_egress.py)."""

from __future__ import annotations

import json
import time
import uuid

from test_gateway import make_device, mosquitto, start_sub

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
