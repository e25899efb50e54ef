"""Device Defender audits end to end with the stock AWS CLI: the account audit configuration,
an on-demand audit that finds expiring device and CA certificates (run in the background by the
server's audit worker), its findings and their filters, the notification delivered to a webhook
(the certfleet reading of the SNS targetArn), scheduled audits, and the refusals.

Every test works in a fresh account.
"""

from __future__ import annotations

import datetime
import json
import queue
import threading
import time
from http.server import BaseHTTPRequestHandler, HTTPServer

import pytest

ROLE = "arn:aws:iam::123456789012:role/certfleet-audit"
EXPIRING = "DEVICE_CERTIFICATE_EXPIRING_CHECK"
CA_EXPIRING = "CA_CERTIFICATE_EXPIRING_CHECK"


@pytest.fixture
def webhook():
    """A webhook receiver on 127.0.0.1:0: (url, queue of received JSON bodies)."""
    received: queue.Queue = queue.Queue()

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self):  # noqa: N802 (http.server's naming)
            length = int(self.headers.get("Content-Length", "0"))
            received.put(json.loads(self.rfile.read(length)))
            self.send_response(200)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *args):
            pass

    httpd = HTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}/audit-hook", received
    httpd.shutdown()


def register_ca(server, acct, openssl, days: int) -> tuple[str, str, str]:
    """A CA valid for `days`, registered ACTIVE in `acct`: (pem path, key path, certificateId)."""
    name = openssl.unique("audit-ca")
    key = openssl.ec_key(f"{name}.key")
    openssl(
        "req", "-new", "-x509", "-key", key, "-sha256", "-days", days, "-subj", f"/CN={name}-{time.time_ns()}",
        "-addext", "basicConstraints=critical,CA:TRUE", "-addext", "keyUsage=critical,keyCertSign,cRLSign",
        "-out", f"{name}.pem",
    )
    code = server.aws("get-registration-code", profile=acct)["registrationCode"]
    verification = openssl.verification_cert(f"{name}-verify", f"{name}.pem", key, code)
    registered = server.aws(
        "register-ca-certificate", "--ca-certificate", f"file://{openssl.path(name + '.pem')}",
        "--verification-cert", f"file://{openssl.path(verification)}", "--set-as-active", profile=acct,
    )
    return f"{name}.pem", key, registered["certificateId"]


def register_device(server, acct, openssl, ca: str, ca_key: str, days: int) -> str:
    name = openssl.unique("audit-device")
    key = openssl.ec_key(f"{name}.key")
    csr = openssl.csr(name, key, f"{name}-{time.time_ns()}")
    pem = openssl.sign(csr, ca, ca_key, f"{name}.pem", days=days)
    return server.aws(
        "register-certificate", "--certificate-pem", f"file://{openssl.path(pem)}", "--set-as-active", profile=acct
    )["certificateId"]


def wait_for_completion(server, acct, task_id: str, timeout: float = 30) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        task = server.aws("describe-audit-task", "--task-id", task_id, profile=acct)
        if task["taskStatus"] != "IN_PROGRESS":
            return task
        assert time.monotonic() < deadline, f"the audit task is still in progress: {task}"
        time.sleep(0.3)


def test_on_demand_audit_finds_expiring_certificates_and_notifies_the_webhook(open_egress_server, openssl, webhook):
    # The webhook listens on 127.0.0.1 over plain http: a server whose egress policy allows it.
    server = open_egress_server
    url, received = webhook
    acct = server.create_account()
    other = server.create_account()
    ca, ca_key, ca_id = register_ca(server, acct, openssl, days=10)
    expiring = register_device(server, acct, openssl, ca, ca_key, days=5)
    register_device(server, acct, openssl, ca, ca_key, days=3000)
    server.aws("create-keys-and-certificate", "--set-as-active", profile=acct)

    # Before any configuration every check is listed, disabled.
    described = server.aws("describe-account-audit-configuration", profile=acct)
    assert described["auditCheckConfigurations"][EXPIRING] == {"enabled": False}
    # Starting a check that is not enabled is refused.
    server.aws_error("start-on-demand-audit-task", "--target-check-names", EXPIRING, code="InvalidRequestException", profile=acct)

    server.aws(
        "update-account-audit-configuration", "--role-arn", ROLE,
        "--audit-notification-target-configurations",
        json.dumps({"SNS": {"targetArn": url, "roleArn": ROLE, "enabled": True}}),
        "--audit-check-configurations", json.dumps({EXPIRING: {"enabled": True}, CA_EXPIRING: {"enabled": True}}),
        profile=acct,
    )
    described = server.aws("describe-account-audit-configuration", profile=acct)
    assert described["roleArn"] == ROLE
    assert described["auditNotificationTargetConfigurations"]["SNS"] == {"targetArn": url, "roleArn": ROLE, "enabled": True}
    assert described["auditCheckConfigurations"][EXPIRING] == {
        "enabled": True, "configuration": {"CERT_EXPIRATION_THRESHOLD_IN_DAYS": "30"}
    }
    assert described["auditCheckConfigurations"]["DEVICE_CERTIFICATE_SHARED_CHECK"] == {"enabled": False}

    task_id = server.aws("start-on-demand-audit-task", "--target-check-names", EXPIRING, CA_EXPIRING, profile=acct)["taskId"]
    task = wait_for_completion(server, acct, task_id)
    assert task["taskStatus"] == "COMPLETED"
    assert task["taskType"] == "ON_DEMAND_AUDIT_TASK"
    assert task["taskStatistics"] == {
        "totalChecks": 2, "inProgressChecks": 0, "waitingForDataCollectionChecks": 0, "compliantChecks": 0,
        "nonCompliantChecks": 2, "failedChecks": 0, "canceledChecks": 0,
    }
    assert task["auditDetails"][EXPIRING] == {
        "checkRunStatus": "COMPLETED_NON_COMPLIANT", "checkCompliant": False, "totalResourcesCount": 3,
        "nonCompliantResourcesCount": 1, "suppressedNonCompliantResourcesCount": 0,
    }
    assert task["auditDetails"][CA_EXPIRING]["totalResourcesCount"] == 1

    findings = server.aws("list-audit-findings", "--task-id", task_id, profile=acct)["findings"]
    by_check = {finding["checkName"]: finding for finding in findings}
    assert set(by_check) == {EXPIRING, CA_EXPIRING}
    device = by_check[EXPIRING]
    assert device["taskId"] == task_id
    assert device["severity"] == "MEDIUM"
    assert device["nonCompliantResource"]["resourceType"] == "DEVICE_CERTIFICATE"
    assert device["nonCompliantResource"]["resourceIdentifier"] == {"deviceCertificateId": expiring}
    assert device["reasonForNonComplianceCode"] == "CERTIFICATE_APPROACHING_EXPIRATION"
    assert device["isSuppressed"] is False
    assert by_check[CA_EXPIRING]["nonCompliantResource"]["resourceIdentifier"] == {"caCertificateId": ca_id}
    described = server.aws("describe-audit-finding", "--finding-id", device["findingId"], profile=acct)["finding"]
    assert described == device

    # Filters: by resource and time range; by check name.
    now = time.time()
    filtered = server.aws(
        "list-audit-findings", "--resource-identifier", f"deviceCertificateId={expiring}",
        "--start-time", str(int(now - 3600)), "--end-time", str(int(now + 60)), profile=acct,
    )["findings"]
    assert [finding["findingId"] for finding in filtered] == [device["findingId"]]
    only_ca = server.aws("list-audit-findings", "--task-id", task_id, "--check-name", CA_EXPIRING, profile=acct)["findings"]
    assert [finding["checkName"] for finding in only_ca] == [CA_EXPIRING]

    start = (datetime.datetime.now(datetime.timezone.utc) - datetime.timedelta(hours=1)).strftime("%Y-%m-%dT%H:%M:%SZ")
    end = (datetime.datetime.now(datetime.timezone.utc) + datetime.timedelta(hours=1)).strftime("%Y-%m-%dT%H:%M:%SZ")
    tasks = server.aws("list-audit-tasks", "--start-time", start, "--end-time", end, profile=acct)["tasks"]
    assert {"taskId": task_id, "taskStatus": "COMPLETED", "taskType": "ON_DEMAND_AUDIT_TASK"} in tasks

    # The notification reached the webhook.
    body = received.get(timeout=30)
    assert body["accountId"] == acct.id
    assert body["taskId"] == task_id
    assert body["taskStatus"] == "COMPLETED"
    assert body["taskType"] == "ON_DEMAND_AUDIT_TASK"
    assert (body["totalChecksCount"], body["nonCompliantChecksCount"], body["compliantChecksCount"]) == (2, 2, 0)
    assert (body["failedChecksCount"], body["canceledChecksCount"]) == (0, 0)
    details = {detail["checkName"]: detail for detail in body["auditDetails"]}
    assert details[EXPIRING] == {
        "checkName": EXPIRING, "checkRunStatus": "COMPLETED_NON_COMPLIANT", "nonCompliantResourcesCount": 1,
        "totalResourcesCount": 3,
    }

    # Errors, and no cross-account visibility.
    server.aws_error("describe-audit-task", "--task-id", "0" * 32, code="ResourceNotFoundException", profile=acct)
    server.aws_error("describe-audit-task", "--task-id", task_id, code="ResourceNotFoundException", profile=other)
    server.aws_error("describe-audit-finding", "--finding-id", device["findingId"], code="ResourceNotFoundException", profile=other)
    server.aws_error("cancel-audit-task", "--task-id", task_id, code="InvalidRequestException", profile=acct)
    server.aws_error("start-on-demand-audit-task", "--target-check-names", "NO_SUCH_CHECK", code="InvalidRequestException", profile=acct)
    assert server.aws("list-audit-findings", "--task-id", task_id, profile=acct)["findings"] == findings


def test_scheduled_audits_with_the_cli(server):
    acct = server.create_account()
    server.aws(
        "update-account-audit-configuration", "--role-arn", ROLE,
        "--audit-check-configurations", json.dumps({CA_EXPIRING: {"enabled": True}}), profile=acct,
    )
    arn = server.aws(
        "create-scheduled-audit", "--scheduled-audit-name", "weekly", "--frequency", "WEEKLY", "--day-of-week", "MON",
        "--target-check-names", CA_EXPIRING, profile=acct,
    )["scheduledAuditArn"]
    assert arn == f"arn:aws:iot:us-east-1:{acct.id}:scheduledaudit/weekly"
    before = server.aws("list-scheduled-audits", profile=acct)
    for args, code in [
        (["--scheduled-audit-name", "weekly", "--frequency", "DAILY"], "ResourceAlreadyExistsException"),
        (["--scheduled-audit-name", "other", "--frequency", "WEEKLY"], "InvalidRequestException"),
        (["--scheduled-audit-name", "other", "--frequency", "HOURLY"], "InvalidRequestException"),
        (["--scheduled-audit-name", "other", "--frequency", "MONTHLY"], "InvalidRequestException"),
    ]:
        server.aws_error("create-scheduled-audit", *args, "--target-check-names", CA_EXPIRING, code=code, profile=acct)
    server.aws_error(
        "create-scheduled-audit", "--scheduled-audit-name", "other", "--frequency", "DAILY",
        "--target-check-names", EXPIRING, code="InvalidRequestException", profile=acct,
    )
    # A check a scheduled audit uses cannot be disabled.
    server.aws_error(
        "update-account-audit-configuration", "--audit-check-configurations", json.dumps({CA_EXPIRING: {"enabled": False}}),
        code="InvalidRequestException", profile=acct,
    )
    assert server.aws("list-scheduled-audits", profile=acct) == before
    assert before["scheduledAudits"] == [
        {"scheduledAuditName": "weekly", "scheduledAuditArn": arn, "frequency": "WEEKLY", "dayOfWeek": "MON"}
    ]

    server.aws("update-scheduled-audit", "--scheduled-audit-name", "weekly", "--frequency", "MONTHLY", "--day-of-month", "LAST", profile=acct)
    described = server.aws("describe-scheduled-audit", "--scheduled-audit-name", "weekly", profile=acct)
    assert described == {
        "frequency": "MONTHLY", "dayOfMonth": "LAST", "targetCheckNames": [CA_EXPIRING],
        "scheduledAuditName": "weekly", "scheduledAuditArn": arn,
    }
    other = server.create_account()
    server.aws_error("describe-scheduled-audit", "--scheduled-audit-name", "weekly", code="ResourceNotFoundException", profile=other)
    server.aws_error("delete-account-audit-configuration", code="InvalidRequestException", profile=acct)
    server.aws("delete-scheduled-audit", "--scheduled-audit-name", "weekly", profile=acct)
    server.aws_error("describe-scheduled-audit", "--scheduled-audit-name", "weekly", code="ResourceNotFoundException", profile=acct)
    server.aws("delete-account-audit-configuration", "--delete-scheduled-audits", profile=acct)
    server.aws_error("delete-account-audit-configuration", code="ResourceNotFoundException", profile=acct)


def certfleet_call(server, acct, method: str, path: str, body: bytes = b"") -> tuple[int, dict]:
    """A SigV4-signed request to a certfleet extension route: (status, JSON body)."""
    import ssl
    import urllib.error
    import urllib.request

    import botocore.auth
    from botocore.awsrequest import AWSRequest
    from botocore.credentials import Credentials

    akid, secret = server.credentials(acct.profile)
    request = AWSRequest(method=method, url=server.url + path, data=body)
    botocore.auth.SigV4Auth(Credentials(akid, secret), "iot", "us-east-1").add_auth(request)
    prepared = request.prepare()
    raw = urllib.request.Request(prepared.url, data=body or None, method=method, headers=dict(prepared.headers))
    context = ssl.create_default_context(cafile=server.ca_bundle)
    try:
        with urllib.request.urlopen(raw, context=context, timeout=30) as response:
            return response.status, json.loads(response.read() or b"{}")
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read() or b"{}")


def test_uploaded_crls_and_overly_permissive_policies(server, openssl):
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization

    acct = server.create_account()
    ca, ca_key, ca_id = register_ca(server, acct, openssl, days=3000)
    revoked = register_device(server, acct, openssl, ca, ca_key, days=3000)
    register_device(server, acct, openssl, ca, ca_key, days=3000)
    # The device registered first is audit-device<N> with the smallest N.
    devices = sorted(openssl.dir.glob("audit-device*.pem"), key=lambda p: int(p.stem.removeprefix("audit-device")))
    revoked_pem = devices[0]
    issuer = x509.load_pem_x509_certificate(openssl.path(ca).read_bytes())
    key = serialization.load_pem_private_key(openssl.path(ca_key).read_bytes(), password=None)
    serial = x509.load_pem_x509_certificate(revoked_pem.read_bytes()).serial_number
    now = datetime.datetime.now(datetime.timezone.utc)
    crl = (
        x509.CertificateRevocationListBuilder()
        .issuer_name(issuer.subject)
        .last_update(now)
        .next_update(now + datetime.timedelta(days=1))
        .add_revoked_certificate(
            x509.RevokedCertificateBuilder().serial_number(serial).revocation_date(now).build()
        )
        .sign(key, hashes.SHA256())
    )

    status, body = certfleet_call(server, acct, "PUT", "/certfleet/crls/root-ca", crl.public_bytes(serialization.Encoding.PEM))
    assert status == 200, body
    assert (body["signatureVerified"], body["revokedCount"], body["caCertificateId"]) == (True, 1, ca_id)
    status, body = certfleet_call(server, acct, "PUT", "/certfleet/crls/bad", b"not a crl")
    assert status == 400, body
    status, body = certfleet_call(server, acct, "GET", "/certfleet/crls")
    assert [entry["crlName"] for entry in body["crls"]] == ["root-ca"]

    server.aws(
        "create-policy", "--policy-name", "everything", "--policy-document",
        json.dumps({"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "iot:*", "Resource": "*"}]}),
        profile=acct,
    )
    checks = ["REVOKED_DEVICE_CERTIFICATE_STILL_ACTIVE_CHECK", "IOT_POLICY_OVERLY_PERMISSIVE_CHECK"]
    server.aws(
        "update-account-audit-configuration", "--role-arn", ROLE,
        "--audit-check-configurations", json.dumps({name: {"enabled": True} for name in checks}), profile=acct,
    )
    task_id = server.aws("start-on-demand-audit-task", "--target-check-names", *checks, profile=acct)["taskId"]
    assert wait_for_completion(server, acct, task_id)["taskStatus"] == "COMPLETED"
    findings = {f["checkName"]: f for f in server.aws("list-audit-findings", "--task-id", task_id, profile=acct)["findings"]}
    device = findings["REVOKED_DEVICE_CERTIFICATE_STILL_ACTIVE_CHECK"]
    assert device["nonCompliantResource"]["resourceIdentifier"] == {"deviceCertificateId": revoked}
    assert device["reasonForNonComplianceCode"] == "CERTIFICATE_REVOKED_BY_ISSUER"
    assert device["severity"] == "MEDIUM"
    policy = findings["IOT_POLICY_OVERLY_PERMISSIVE_CHECK"]
    assert policy["nonCompliantResource"] == {
        "resourceType": "IOT_POLICY",
        "resourceIdentifier": {"policyVersionIdentifier": {"policyName": "everything", "policyVersionId": "1"}},
    }
    assert policy["severity"] == "CRITICAL"
    assert policy["reasonForNonComplianceCode"] == "ALLOWS_BROAD_ACCESS_TO_IOT_DATA_PLANE_ACTIONS"

    assert certfleet_call(server, acct, "DELETE", "/certfleet/crls/root-ca")[0] == 200
    assert certfleet_call(server, acct, "DELETE", "/certfleet/crls/root-ca")[0] == 404
