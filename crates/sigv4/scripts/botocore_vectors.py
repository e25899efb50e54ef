#!/usr/bin/env python3
"""Print requests exactly as botocore signs and sends them, as Rust test cases for tests/sigv4.rs.

Not run by `cargo test`: the output is pasted into the `BOTOCORE_REQUESTS` table so the Rust tests
verify real botocore signatures without needing Python. Uses the `iot` client with a fixed clock and a
`before-send` hook, so nothing goes on the network.

    python3 crates/sigv4/scripts/botocore_vectors.py
"""
import datetime
import json
from unittest import mock
from urllib.parse import urlsplit

import botocore
import botocore.auth
import botocore.session
from botocore.awsrequest import AWSResponse

NOW = datetime.datetime(2026, 11, 24, 20, 59, 7, tzinfo=datetime.timezone.utc)
CERT_ARN = "arn:aws:iot:us-east-1:123456789012:cert/" + "b" * 64

CALLS = [
    ("get_registration_code", {}),
    ("list_attached_policies", {"target": CERT_ARN}),
    ("list_audit_tasks", {"startTime": datetime.datetime(2024, 1, 1, tzinfo=datetime.timezone.utc),
                          "endTime": datetime.datetime(2024, 2, 1, tzinfo=datetime.timezone.utc)}),
    ("list_things", {"maxResults": 5, "attributeName": "color name", "attributeValue": "r&d/x=y+z"}),
    ("describe_endpoint", {"endpointType": "iot:Data-ATS"}),
    ("attach_thing_principal", {"thingName": "t1", "principal": CERT_ARN}),
    ("create_topic_rule", {"ruleName": "r1", "tags": "k=v",
                           "topicRulePayload": {"sql": "SELECT * FROM 'a/b'", "actions": []}}),
    ("create_policy", {"policyName": "p.1", "policyDocument": json.dumps({"Version": "2012-10-17"})}),
]


def rust_str(text):
    return json.dumps(text, ensure_ascii=False)


def main():
    captured = []

    def before_send(request, **_):
        captured.append(request)
        return AWSResponse(request.url, 200, {}, None)

    session = botocore.session.get_session()
    session.set_credentials("AKIDEXAMPLE", "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY")
    client = session.create_client("iot", region_name="us-east-1", endpoint_url="http://127.0.0.1:18765")
    client.meta.events.register("before-send.iot.*", before_send)
    with mock.patch.object(botocore.auth, "get_current_datetime", return_value=NOW.replace(tzinfo=None)):
        for operation, params in CALLS:
            try:
                getattr(client, operation)(**params)
            except Exception:  # the canned empty response may not parse; the request is what matters
                pass
    print(f"    // botocore {botocore.__version__}, signed at {NOW:%Y%m%dT%H%M%SZ}")
    for request in captured:
        url = urlsplit(request.url)
        # The HTTP client adds Host after this hook; botocore signed it as the URL's host:port.
        headers = ", ".join(
            f"({rust_str(name)}, {rust_str(value.decode() if isinstance(value, bytes) else value)})"
            for name, value in [("Host", url.netloc), *request.headers.items()]
            if name.lower() not in ("user-agent", "amz-sdk-invocation-id")
        )
        body = request.body or b""
        if isinstance(body, str):
            body = body.encode()
        print(f"    ({rust_str(request.method)}, {rust_str(url.path)}, {rust_str(url.query)}, &[{headers}], "
              f"{rust_str(body.decode())}),")


if __name__ == "__main__":
    main()
