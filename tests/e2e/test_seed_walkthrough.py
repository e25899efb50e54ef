"""MISSION.md section 2 (seed 003): the CA-registration walk-through, with the stock AWS CLI.

Account A is the `default` profile the server created on first start; B and C are accounts made
with `certfleet account create`. Every test builds its own keys and certificates with openssl, so
the tests do not depend on each other's order.
"""

from __future__ import annotations

import calendar
import re
import time
import uuid
from datetime import datetime

import pytest

HEX64 = re.compile(r"[0-9a-f]{64}")
UUIDISH = re.compile(r"[0-9a-fA-F-]{8,}")


# ------------------------------------------------------------------------------------------------
# helpers
# ------------------------------------------------------------------------------------------------
def ts(value) -> float:
    """A timestamp as the CLI prints it (epoch seconds; tolerate ISO-8601) or as boto3 parses it
    (datetime) -> epoch seconds."""
    if isinstance(value, datetime):
        return value.timestamp()
    if isinstance(value, (int, float)):
        return float(value)
    assert isinstance(value, str), f"not a timestamp: {value!r}"
    return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()


def openssl_date(openssl, cert: str, which: str) -> float:
    """notBefore/notAfter of a certificate as epoch seconds (`openssl x509 -startdate/-enddate`)."""
    flag = {"notBefore": "-startdate", "notAfter": "-enddate"}[which]
    out = openssl("x509", "-noout", flag, "-in", cert).stdout.decode().strip()
    value = out.split("=", 1)[1]
    return float(calendar.timegm(time.strptime(value, "%b %d %H:%M:%S %Y GMT")))


def pem_body(pem: str) -> str:
    return "".join(line.strip() for line in pem.strip().splitlines())


def seed_root_ca(openssl, cn: str | None = None) -> str:
    """The seed's root CA commands, unchanged (plus -subj so that openssl does not prompt)."""
    cn = cn or f"seed-root-{uuid.uuid4().hex[:12]}"
    openssl("genrsa", "-out", "rootCA.key", "2048")
    openssl.write("rootCA_openssl.conf", "[ v3_ca ]\nbasicConstraints = CA:TRUE\n")
    openssl("req", "-new", "-sha256", "-key", "rootCA.key", "-nodes", "-subj", f"/O=certfleet e2e/CN={cn}",
            "-out", "rootCA.csr")
    openssl("x509", "-req", "-days", "1024", "-extfile", "rootCA_openssl.conf", "-extensions", "v3_ca",
            "-in", "rootCA.csr", "-signkey", "rootCA.key", "-out", "rootCA.pem")
    return "rootCA.pem"


def seed_verification_cert(openssl, code: str, name: str = "verificationCert") -> str:
    """The seed's verification certificate: CN = registration code, signed by rootCA.key."""
    openssl("genrsa", "-out", f"{name}.key", "2048")
    openssl("req", "-new", "-key", f"{name}.key", "-subj", f"/CN={code}", "-out", f"{name}.csr")
    openssl("x509", "-req", "-in", f"{name}.csr", "-CA", "rootCA.pem", "-CAkey", "rootCA.key", "-CAcreateserial",
            "-out", f"{name}.pem", "-days", "500", "-sha256")
    return f"{name}.pem"


def registration_code(server, profile) -> str:
    out = server.aws("get-registration-code", profile=profile)
    code = out["registrationCode"]
    assert HEX64.fullmatch(code), out
    return code


def register_seed_ca_default(server, openssl, profile="default") -> str:
    """get-registration-code, the verification cert, register-ca-certificate (DEFAULT): the CA id."""
    code = registration_code(server, profile)
    seed_verification_cert(openssl, code)
    out = server.aws(
        "register-ca-certificate", "--ca-certificate", "file://rootCA.pem",
        "--verification-cert", "file://verificationCert.pem", "--set-as-active", "--allow-auto-registration",
        profile=profile, cwd=openssl.dir,
    )
    assert set(out) >= {"certificateArn", "certificateId"}, out
    return out["certificateId"]


def register_seed_ca_sni_only(server, openssl, profile) -> str:
    out = server.aws(
        "register-ca-certificate", "--ca-certificate", "file://rootCA.pem", "--certificate-mode", "SNI_ONLY",
        "--set-as-active", "--allow-auto-registration", profile=profile, cwd=openssl.dir,
    )
    return out["certificateId"]


# The commands under test run through the AWS CLI; checks of the resulting state and setup steps
# that are not the subject of a test use boto3 (an AWS CLI start costs ~0.6 s).
def describe_cert(server, cert_id, profile="default", cli=False) -> dict:
    if cli:
        return server.aws("describe-certificate", "--certificate-id", cert_id, profile=profile)["certificateDescription"]
    return server.client(profile).describe_certificate(certificateId=cert_id)["certificateDescription"]


def describe_ca(server, ca_id, profile="default", cli=False) -> dict:
    if cli:
        return server.aws("describe-ca-certificate", "--certificate-id", ca_id, profile=profile)["certificateDescription"]
    return server.client(profile).describe_ca_certificate(certificateId=ca_id)["certificateDescription"]


def assert_cert_not_found(server, cert_id, profile):
    server.aws_error("describe-certificate", "--certificate-id", cert_id, code="ResourceNotFoundException",
                     profile=profile)


def list_ids(server, profile, ca=False) -> list:
    client = server.client(profile)
    op = "list_ca_certificates" if ca else "list_certificates"
    ids = []
    for page in client.get_paginator(op).paginate(PaginationConfig={"PageSize": 250}):
        ids += [x["certificateId"] for x in page["certificates"]]
    return ids


def create_from_csr(server, openssl, profile="default", active=False, name=None) -> str:
    """A certificate issued from a fresh P-256 CSR (setup step: boto3)."""
    name = name or openssl.unique("dev")
    key = openssl.ec_key(f"{name}.key")
    csr = openssl.read(openssl.csr(name, key, f"{name}-{uuid.uuid4().hex[:6]}"))
    out = server.client(profile).create_certificate_from_csr(certificateSigningRequest=csr, setAsActive=active)
    return out["certificateId"]


@pytest.fixture(scope="module")
def accounts(server):
    """A (default), B and C: B and C are fresh accounts for this module."""
    a = server.default_account
    b = server.create_account()
    c = server.create_account()
    return a, b, c


# ------------------------------------------------------------------------------------------------
# CA registration: DEFAULT in A, SNI_ONLY in B and C, DEFAULT refused in C
# ------------------------------------------------------------------------------------------------
def test_register_ca_default_describe_and_multi_account(server, openssl, accounts):
    a, b, c = accounts
    seed_root_ca(openssl)
    fingerprint = openssl.fingerprint("rootCA.pem")
    before = time.time()

    ca_id = register_seed_ca_default(server, openssl, profile=a.profile)
    assert ca_id == fingerprint, "certificateId must be the SHA-256 fingerprint of the DER certificate"

    d = describe_ca(server, ca_id, profile=a.profile, cli=True)
    for member in ("certificateArn", "certificateId", "status", "certificatePem", "ownedBy", "creationDate",
                   "autoRegistrationStatus", "lastModifiedDate", "customerVersion", "generationId", "validity",
                   "certificateMode"):
        assert member in d, f"describe-ca-certificate lacks {member}: {d}"
    assert d["certificateArn"] == f"arn:aws:iot:us-east-1:{a.id}:cacert/{ca_id}"
    assert d["certificateId"] == fingerprint
    assert d["status"] == "ACTIVE"
    assert pem_body(d["certificatePem"]) == pem_body(openssl.read("rootCA.pem"))
    assert d["ownedBy"] == a.id
    assert before - 300 <= ts(d["creationDate"]) <= time.time() + 300
    assert ts(d["lastModifiedDate"]) >= ts(d["creationDate"])
    assert d["autoRegistrationStatus"] == "ENABLE"
    assert d["customerVersion"] == 1
    assert isinstance(d["generationId"], str) and UUIDISH.fullmatch(d["generationId"]), d["generationId"]
    assert abs(ts(d["validity"]["notBefore"]) - openssl_date(openssl, "rootCA.pem", "notBefore")) < 1
    assert abs(ts(d["validity"]["notAfter"]) - openssl_date(openssl, "rootCA.pem", "notAfter")) < 1
    assert d["certificateMode"] == "DEFAULT"

    # Account B: the same CA without proof of possession.
    b_id = register_seed_ca_sni_only(server, openssl, b.profile)
    assert b_id == ca_id
    db = describe_ca(server, ca_id, profile=b.profile, cli=True)
    assert db["certificateMode"] == "SNI_ONLY"
    assert db["status"] == "ACTIVE"
    assert db["autoRegistrationStatus"] == "ENABLE"
    assert db["ownedBy"] == b.id
    assert db["certificateArn"] == f"arn:aws:iot:us-east-1:{b.id}:cacert/{ca_id}"
    # A's registration is untouched by B's.
    assert describe_ca(server, ca_id, profile=a.profile, cli=True) == d

    # Account C: DEFAULT refused (A holds the CA in DEFAULT mode in this region), SNI_ONLY allowed.
    code_c = registration_code(server, c.profile)
    seed_verification_cert(openssl, code_c, name="verificationCertC")
    server.aws_error(
        "register-ca-certificate", "--ca-certificate", "file://rootCA.pem",
        "--verification-cert", "file://verificationCertC.pem", "--set-as-active", "--allow-auto-registration",
        code="ResourceAlreadyExistsException", profile=c.profile, cwd=openssl.dir,
    )
    assert ca_id not in list_ids(server, c.profile, ca=True)
    assert register_seed_ca_sni_only(server, openssl, c.profile) == ca_id
    assert describe_ca(server, ca_id, profile=c.profile)["certificateMode"] == "SNI_ONLY"

    # Inside one account a CA exists in one mode only.
    server.aws_error(
        "register-ca-certificate", "--ca-certificate", "file://rootCA.pem", "--certificate-mode", "SNI_ONLY",
        code="ResourceAlreadyExistsException", profile=a.profile, cwd=openssl.dir,
    )
    assert describe_ca(server, ca_id, profile=a.profile)["certificateMode"] == "DEFAULT"

    # list-ca-certificates in A and B.
    for acct, mode_status in ((a, "ACTIVE"), (b, "ACTIVE")):
        listed = server.aws("list-ca-certificates", profile=acct.profile)["certificates"]
        mine = [x for x in listed if x["certificateId"] == ca_id]
        assert len(mine) == 1, listed
        assert mine[0]["status"] == mode_status
        assert mine[0]["certificateArn"] == f"arn:aws:iot:us-east-1:{acct.id}:cacert/{ca_id}"
        assert "creationDate" in mine[0]


# ------------------------------------------------------------------------------------------------
# Device certificates
# ------------------------------------------------------------------------------------------------
def test_create_certificate_from_csr(server, openssl, accounts):
    a = accounts[0]
    openssl.rsa_key("device.key", 2048)
    openssl("req", "-new", "-key", "device.key", "-subj", "/CN=my-device", "-out", "device.csr")
    out = server.aws("create-certificate-from-csr", "--certificate-signing-request", "file://device.csr",
                     "--set-as-active", profile=a.profile, cwd=openssl.dir)
    assert set(out) >= {"certificateArn", "certificateId", "certificatePem"}, out
    openssl.write("issued.pem", out["certificatePem"])
    verify = openssl("verify", "-CAfile", server.device_root, "issued.pem")
    assert b"issued.pem: OK" in verify.stdout
    assert out["certificateId"] == openssl.fingerprint("issued.pem")
    assert out["certificateArn"] == f"arn:aws:iot:us-east-1:{a.id}:cert/{out['certificateId']}"
    # The certificate carries the CSR's public key.
    csr_pub = openssl("req", "-in", "device.csr", "-noout", "-pubkey").stdout
    cert_pub = openssl("x509", "-in", "issued.pem", "-noout", "-pubkey").stdout
    assert csr_pub == cert_pub

    d = describe_cert(server, out["certificateId"], a.profile, cli=True)
    assert d["status"] == "ACTIVE"
    assert d["ownedBy"] == a.id
    assert d["certificateMode"] == "DEFAULT"
    assert d["customerVersion"] == 1
    assert pem_body(d["certificatePem"]) == pem_body(out["certificatePem"])
    assert ts(d["validity"]["notAfter"]) > time.time()


def test_register_certificate_with_ca_default_and_sni_only(server, openssl, accounts):
    a, b, _ = accounts
    seed_root_ca(openssl)
    ca_id = register_seed_ca_default(server, openssl, a.profile)
    assert register_seed_ca_sni_only(server, openssl, b.profile) == ca_id

    openssl.rsa_key("deviceCert.key", 2048)
    openssl("req", "-new", "-key", "deviceCert.key", "-subj", "/CN=seed-device", "-out", "deviceCert.csr")
    openssl("x509", "-req", "-in", "deviceCert.csr", "-CA", "rootCA.pem", "-CAkey", "rootCA.key",
            "-CAcreateserial", "-out", "deviceCert.pem", "-days", "365", "-sha256")
    device_id = openssl.fingerprint("deviceCert.pem")

    out = server.aws("register-certificate", "--certificate-pem", "file://deviceCert.pem",
                     "--ca-certificate-pem", "file://rootCA.pem", "--set-as-active",
                     profile=a.profile, cwd=openssl.dir)
    assert out["certificateId"] == device_id
    assert out["certificateArn"] == f"arn:aws:iot:us-east-1:{a.id}:cert/{device_id}"
    d = describe_cert(server, device_id, a.profile, cli=True)
    assert d["caCertificateId"] == ca_id
    assert d["certificateMode"] == "DEFAULT"
    assert d["status"] == "ACTIVE"
    assert d["ownedBy"] == a.id

    out_b = server.aws("register-certificate", "--certificate-pem", "file://deviceCert.pem",
                       "--ca-certificate-pem", "file://rootCA.pem", "--set-as-active",
                       profile=b.profile, cwd=openssl.dir)
    assert out_b["certificateId"] == device_id
    db = describe_cert(server, device_id, b.profile)
    assert db["certificateMode"] == "SNI_ONLY"
    assert db["caCertificateId"] == ca_id
    assert db["ownedBy"] == b.id

    # list-certificates-by-ca in each account shows that account's registration only.
    by_ca = server.aws("list-certificates-by-ca", "--ca-certificate-id", ca_id, profile=a.profile)["certificates"]
    assert [x["certificateId"] for x in by_ca] == [device_id]
    assert by_ca[0]["status"] == "ACTIVE"
    assert by_ca[0]["certificateArn"] == f"arn:aws:iot:us-east-1:{a.id}:cert/{device_id}"
    by_ca_b = server.aws("list-certificates-by-ca", "--ca-certificate-id", ca_id, profile=b.profile)["certificates"]
    assert [x["certificateArn"] for x in by_ca_b] == [f"arn:aws:iot:us-east-1:{b.id}:cert/{device_id}"]
    assert by_ca_b[0]["certificateMode"] == "SNI_ONLY"
    assert by_ca[0]["certificateMode"] == "DEFAULT"


def test_register_certificate_without_ca(server, openssl, accounts):
    a = accounts[0]
    openssl.ec_key("selfsigned.key")
    openssl("req", "-new", "-x509", "-key", "selfsigned.key", "-subj", "/CN=self-signed-device", "-days", "365",
            "-sha256", "-out", "selfsigned.pem")
    out = server.aws("register-certificate-without-ca", "--certificate-pem", "file://selfsigned.pem",
                     "--status", "ACTIVE", profile=a.profile, cwd=openssl.dir)
    assert out["certificateId"] == openssl.fingerprint("selfsigned.pem")
    d = describe_cert(server, out["certificateId"], a.profile, cli=True)
    assert d["certificateMode"] == "SNI_ONLY"
    assert d["status"] == "ACTIVE"
    assert "caCertificateId" not in d or not d["caCertificateId"]


def test_certificate_status_transitions(server, openssl, accounts):
    a = accounts[0]
    cert_id = create_from_csr(server, openssl, a.profile, active=True)
    assert describe_cert(server, cert_id, a.profile)["status"] == "ACTIVE"

    assert server.aws("update-certificate", "--certificate-id", cert_id, "--new-status", "INACTIVE",
                      profile=a.profile) is None
    d = describe_cert(server, cert_id, a.profile)
    assert d["status"] == "INACTIVE"
    assert ts(d["lastModifiedDate"]) >= ts(d["creationDate"])

    server.aws("update-certificate", "--certificate-id", cert_id, "--new-status", "REVOKED", profile=a.profile)
    assert describe_cert(server, cert_id, a.profile)["status"] == "REVOKED"

    server.aws_error("update-certificate", "--certificate-id", cert_id, "--new-status", "ACTIVE",
                     code="CertificateStateException", profile=a.profile)
    assert describe_cert(server, cert_id, a.profile)["status"] == "REVOKED"


# ------------------------------------------------------------------------------------------------
# Listing and pagination
# ------------------------------------------------------------------------------------------------
def cli_pages(server, profile, *args, page_size="2"):
    """Follows nextMarker by hand: `--page-size N --no-paginate [--marker M]` until no marker."""
    items, marker, pages = [], None, 0
    while True:
        cmd = [*args, "--page-size", page_size, "--no-paginate"]
        if marker:
            cmd += ["--marker", marker]
        page = server.aws(*cmd, profile=profile)
        pages += 1
        assert len(page["certificates"]) <= int(page_size), page
        items += page["certificates"]
        marker = page.get("nextMarker")
        if not marker:
            return items, pages
        assert len(page["certificates"]) == int(page_size), "a page before the last one is short"
        assert re.fullmatch(r"[A-Za-z0-9+/]+={0,2}", marker), f"nextMarker must look base64: {marker!r}"
        assert pages < 100, "pagination does not terminate"


def assert_listing(items, expected_ids, newest_first=True):
    """The listing holds exactly expected_ids (created oldest to newest), ordered by creationDate."""
    ids = [x["certificateId"] for x in items]
    assert len(ids) == len(set(ids)), f"a certificate is listed twice: {ids}"
    assert set(ids) == set(expected_ids), "the listing does not hold exactly the certificates created"
    dates = [ts(x["creationDate"]) for x in items]
    assert dates == sorted(dates, reverse=newest_first), f"not ordered by creationDate: {dates}"
    if len(set(dates)) == len(dates):  # no ties: the order is fully determined
        assert ids == (list(reversed(expected_ids)) if newest_first else list(expected_ids))


def test_list_certificates_pagination(server, openssl):
    # A fresh account, so that the expected listing is exact.
    p = server.create_account()
    created = [create_from_csr(server, openssl, p.profile)]
    client = server.boto3_client(p.profile)
    csr = openssl.read(openssl.csr("extra", openssl.ec_key("extra.key"), "extra"))
    # The same CSR gives a distinct certificate each time.
    for _ in range(4):
        created.append(client.create_certificate_from_csr(certificateSigningRequest=csr)["certificateId"])
    assert len(set(created)) == 5

    # Manual pagination: --no-paginate --page-size 2, following nextMarker: 2 + 2 + 1.
    manual, pages = cli_pages(server, p.profile, "list-certificates")
    assert_listing(manual, created)
    assert pages == 3
    for item in manual:
        assert set(item) >= {"certificateArn", "certificateId", "status", "creationDate", "certificateMode"}, item

    # --ascending-order: oldest first, across pages too.
    asc, _ = cli_pages(server, p.profile, "list-certificates", "--ascending-order")
    assert_listing(asc, created, newest_first=False)

    # The CLI's resumable pagination (--max-items / --starting-token).
    resumed, token = [], None
    for _ in range(10):
        args = ["list-certificates", "--max-items", "2"]
        if token:
            args += ["--starting-token", token]
        out = server.aws(*args, profile=p.profile)
        resumed += [x["certificateId"] for x in out["certificates"]]
        token = out.get("NextToken")
        if not token:
            break
    assert resumed == [x["certificateId"] for x in manual]

    # More than one default page (25): the CLI follows nextMarker itself. (With awscli v1,
    # --page-size on this operation switches auto-pagination off, so it uses the default size.)
    for _ in range(22):
        created.append(client.create_certificate_from_csr(certificateSigningRequest=csr)["certificateId"])
    first = server.aws("list-certificates", "--no-paginate", profile=p.profile)
    assert len(first["certificates"]) == 25 and first.get("nextMarker"), "the default page size is 25"
    auto = server.aws("list-certificates", profile=p.profile)
    assert not auto.get("nextMarker")
    assert_listing(auto["certificates"], created)
    asc_auto = server.aws("list-certificates", "--ascending-order", profile=p.profile)
    assert_listing(asc_auto["certificates"], created, newest_first=False)


def test_list_ca_certificates_and_by_ca(server, openssl, accounts):
    _, b, _ = accounts
    seed_root_ca(openssl)
    ca_id = register_seed_ca_default(server, openssl, b.profile)
    devices = []
    for i in range(3):
        pem = openssl.device_cert(f"d{i}", "rootCA.pem", "rootCA.key")
        out = server.client(b.profile).register_certificate(
            certificatePem=openssl.read(pem), caCertificatePem=openssl.read("rootCA.pem"))
        devices.append(out["certificateId"])
    # Registered without --set-as-active / --status: INACTIVE.
    assert describe_cert(server, devices[0], b.profile)["status"] == "INACTIVE"

    cas, _ = cli_pages(server, b.profile, "list-ca-certificates", page_size="1")
    assert ca_id in [x["certificateId"] for x in cas]
    assert cas == server.aws("list-ca-certificates", profile=b.profile)["certificates"]

    by_ca, pages = cli_pages(server, b.profile, "list-certificates-by-ca", "--ca-certificate-id", ca_id)
    assert pages == 2
    assert sorted(x["certificateId"] for x in by_ca) == sorted(devices)
    asc = server.aws("list-certificates-by-ca", "--ca-certificate-id", ca_id, "--ascending-order",
                     profile=b.profile)["certificates"]
    assert sorted(x["certificateId"] for x in asc) == sorted(devices)
    asc_dates = [ts(x["creationDate"]) for x in asc]
    assert asc_dates == sorted(asc_dates)


# ------------------------------------------------------------------------------------------------
# Transfers
# ------------------------------------------------------------------------------------------------
def test_transfer_accept(server, openssl, accounts):
    a, b, _ = accounts
    cert_id = create_from_csr(server, openssl, a.profile, active=True)
    # An ACTIVE certificate cannot be transferred.
    server.aws_error("transfer-certificate", "--certificate-id", cert_id, "--target-aws-account", b.id,
                     code="CertificateStateException", profile=a.profile)
    server.client(a.profile).update_certificate(certificateId=cert_id, newStatus="INACTIVE")

    out = server.aws("transfer-certificate", "--certificate-id", cert_id, "--target-aws-account", b.id,
                     "--transfer-message", "take it", profile=a.profile)
    assert out["transferredCertificateArn"].endswith(f":cert/{cert_id}"), out
    d = describe_cert(server, cert_id, a.profile)
    assert d["status"] == "PENDING_TRANSFER"
    assert d["transferData"]["transferMessage"] == "take it"
    assert "transferDate" in d["transferData"]

    seen_by_b = describe_cert(server, cert_id, b.profile, cli=True)
    assert seen_by_b["status"] == "PENDING_TRANSFER"

    server.aws("accept-certificate-transfer", "--certificate-id", cert_id, "--set-as-active", profile=b.profile)
    db = describe_cert(server, cert_id, b.profile, cli=True)
    assert db["status"] == "ACTIVE"
    assert db["ownedBy"] == b.id
    assert db["previousOwnedBy"] == a.id
    assert db["certificateArn"] == f"arn:aws:iot:us-east-1:{b.id}:cert/{cert_id}"
    assert "acceptDate" in db["transferData"]
    assert ts(db["transferData"]["acceptDate"]) >= ts(db["transferData"]["transferDate"])

    server.aws_error("describe-certificate", "--certificate-id", cert_id, code="ResourceNotFoundException",
                     profile=a.profile)
    assert cert_id not in list_ids(server, a.profile)
    assert cert_id in list_ids(server, b.profile)
    # Accepting twice: the transfer is over.
    server.aws_error("accept-certificate-transfer", "--certificate-id", cert_id,
                     code="TransferAlreadyCompletedException", profile=b.profile)


def test_transfer_reject(server, openssl, accounts):
    a, b, _ = accounts
    cert_id = create_from_csr(server, openssl, a.profile, active=False)
    assert describe_cert(server, cert_id, a.profile)["status"] == "INACTIVE"
    server.aws("transfer-certificate", "--certificate-id", cert_id, "--target-aws-account", b.id, profile=a.profile)
    server.aws("reject-certificate-transfer", "--certificate-id", cert_id, "--reject-reason", "not mine",
               profile=b.profile)
    d = describe_cert(server, cert_id, a.profile)
    assert d["status"] == "INACTIVE"
    assert d["ownedBy"] == a.id
    assert d["transferData"]["rejectReason"] == "not mine"
    assert "rejectDate" in d["transferData"]
    server.aws_error("describe-certificate", "--certificate-id", cert_id, code="ResourceNotFoundException",
                     profile=b.profile)


def test_transfer_cancel(server, openssl, accounts):
    a, b, _ = accounts
    cert_id = create_from_csr(server, openssl, a.profile, active=False)
    server.aws("transfer-certificate", "--certificate-id", cert_id, "--target-aws-account", b.id, profile=a.profile)
    assert describe_cert(server, cert_id, a.profile)["status"] == "PENDING_TRANSFER"
    server.aws("cancel-certificate-transfer", "--certificate-id", cert_id, profile=a.profile)
    d = describe_cert(server, cert_id, a.profile)
    assert d["status"] == "INACTIVE"
    assert d["ownedBy"] == a.id
    server.aws_error("describe-certificate", "--certificate-id", cert_id, code="ResourceNotFoundException",
                     profile=b.profile)
    server.aws_error("accept-certificate-transfer", "--certificate-id", cert_id,
                     code="ResourceNotFoundException", profile=b.profile)


# ------------------------------------------------------------------------------------------------
# Updating and deleting
# ------------------------------------------------------------------------------------------------
def test_update_ca_certificate(server, openssl, accounts):
    a = accounts[0]
    seed_root_ca(openssl)
    ca_id = register_seed_ca_default(server, openssl, a.profile)
    before = describe_ca(server, ca_id, a.profile, cli=True)
    assert before["customerVersion"] == 1
    server.aws("update-ca-certificate", "--certificate-id", ca_id, "--new-status", "INACTIVE",
               "--new-auto-registration-status", "DISABLE", profile=a.profile)
    after = describe_ca(server, ca_id, a.profile, cli=True)
    assert after["status"] == "INACTIVE"
    assert after["autoRegistrationStatus"] == "DISABLE"
    assert after["customerVersion"] == 2
    assert ts(after["lastModifiedDate"]) >= ts(before["lastModifiedDate"])
    assert after["creationDate"] == before["creationDate"]
    assert after["certificatePem"] == before["certificatePem"]
    listed = [x for x in server.client(a.profile).list_ca_certificates(pageSize=250)["certificates"]
              if x["certificateId"] == ca_id]
    assert listed and listed[0]["status"] == "INACTIVE"


def test_delete_certificate(server, openssl, accounts):
    a = accounts[0]
    active = create_from_csr(server, openssl, a.profile, active=True)
    server.aws_error("delete-certificate", "--certificate-id", active, code="CertificateStateException",
                     profile=a.profile)
    assert describe_cert(server, active, a.profile)["status"] == "ACTIVE"

    inactive = create_from_csr(server, openssl, a.profile, active=False)
    server.aws("delete-certificate", "--certificate-id", inactive, profile=a.profile)
    server.aws_error("describe-certificate", "--certificate-id", inactive, code="ResourceNotFoundException",
                     profile=a.profile)

    forced = create_from_csr(server, openssl, a.profile, active=True)
    server.client(a.profile).update_certificate(certificateId=forced, newStatus="INACTIVE")
    server.aws("delete-certificate", "--certificate-id", forced, "--force-delete", profile=a.profile)
    server.aws_error("describe-certificate", "--certificate-id", forced, code="ResourceNotFoundException",
                     profile=a.profile)
    ids = list_ids(server, a.profile)
    assert inactive not in ids and forced not in ids and active in ids


def test_delete_ca_certificate(server, openssl, accounts):
    a = accounts[0]
    seed_root_ca(openssl)
    ca_id = register_seed_ca_default(server, openssl, a.profile)
    server.aws_error("delete-ca-certificate", "--certificate-id", ca_id, code="CertificateStateException",
                     profile=a.profile)
    assert describe_ca(server, ca_id, a.profile)["status"] == "ACTIVE"
    server.client(a.profile).update_ca_certificate(certificateId=ca_id, newStatus="INACTIVE")
    server.aws("delete-ca-certificate", "--certificate-id", ca_id, profile=a.profile)
    server.aws_error("describe-ca-certificate", "--certificate-id", ca_id, code="ResourceNotFoundException",
                     profile=a.profile)
    assert ca_id not in list_ids(server, a.profile, ca=True)
    # Once deleted, the CA can be registered again (here in SNI_ONLY mode: a mode change).
    assert register_seed_ca_sni_only(server, openssl, a.profile) == ca_id
    assert describe_ca(server, ca_id, a.profile)["certificateMode"] == "SNI_ONLY"


# ------------------------------------------------------------------------------------------------
# Endpoints and the registration code
# ------------------------------------------------------------------------------------------------
def test_describe_endpoint(server, accounts):
    a, b, _ = accounts
    ats = server.aws("describe-endpoint", "--endpoint-type", "iot:Data-ATS", profile=a.profile)["endpointAddress"]
    assert ats.endswith("-ats.iot.us-east-1.certfleet.local"), ats
    m = re.fullmatch(r"([a-z0-9]+)-ats\.iot\.us-east-1\.certfleet\.local", ats)
    assert m, ats
    ident = m.group(1)
    expected = {
        "iot:Data": f"{ident}.iot.us-east-1.certfleet.local",
        "iot:CredentialProvider": f"{ident}.credentials.iot.us-east-1.certfleet.local",
        "iot:Jobs": f"{ident}.jobs.iot.us-east-1.certfleet.local",
    }
    for endpoint_type, address in expected.items():
        out = server.aws("describe-endpoint", "--endpoint-type", endpoint_type, profile=a.profile)
        assert out == {"endpointAddress": address}, (endpoint_type, out)
    # Stable per account, distinct between accounts.
    assert server.aws("describe-endpoint", "--endpoint-type", "iot:Data-ATS", profile=a.profile)["endpointAddress"] == ats
    ats_b = server.aws("describe-endpoint", "--endpoint-type", "iot:Data-ATS", profile=b.profile)["endpointAddress"]
    assert ats_b.endswith("-ats.iot.us-east-1.certfleet.local") and ats_b != ats
    server.aws_error("describe-endpoint", "--endpoint-type", "iot:Nonsense", code="InvalidRequestException",
                     profile=a.profile)


def test_registration_code_delete_and_regenerate(server, accounts):
    a, b, _ = accounts
    first = registration_code(server, a.profile)
    assert registration_code(server, a.profile) == first, "the code is stable until deleted"
    assert server.aws("delete-registration-code", profile=a.profile) in (None, {})
    second = registration_code(server, a.profile)
    assert second != first
    assert registration_code(server, a.profile) == second
    # Per account: B's code is not A's.
    assert registration_code(server, b.profile) not in (first, second)
