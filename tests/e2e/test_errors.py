"""Bad input and bad credentials: the exact AWS error, and a registry left as it was.

Every refused request is checked for the AWS error code (`Error.Code`, parsed by botocore from
`x-amzn-ErrorType`), the HTTP status, the `x-amzn-ErrorType` header itself, a non-empty message
and an `x-amzn-RequestId`; and the account's certificates and CAs (lists, and the descriptions of
the objects involved) are compared before and after.
"""

from __future__ import annotations

import base64
import contextlib
import datetime as dt
import json
import secrets
import socket
import ssl
import urllib.error
import urllib.request
import uuid
from unittest import mock

import botocore.auth
import pytest
from botocore.exceptions import ClientError

UNKNOWN_ID = "0" * 63 + "1"


# ------------------------------------------------------------------------------------------------
# helpers
# ------------------------------------------------------------------------------------------------
def check_error(e: ClientError, code: str, status: int) -> ClientError:
    err = e.response.get("Error", {})
    meta = e.response.get("ResponseMetadata", {})
    headers = meta.get("HTTPHeaders", {})
    summary = f"{meta.get('HTTPStatusCode')} {err.get('Code')}: {err.get('Message')!r} headers={headers}"
    assert err.get("Code") == code, f"expected {code}, got {summary}"
    assert meta.get("HTTPStatusCode") == status, f"expected HTTP {status}, got {summary}"
    assert headers.get("x-amzn-errortype", "").split(":", 1)[0] == code, f"x-amzn-ErrorType: {summary}"
    assert err.get("Message"), f"empty error message: {summary}"
    assert headers.get("x-amzn-requestid") and meta.get("RequestId"), f"no x-amzn-RequestId: {summary}"
    return e


def expect_error(call, code: str, http_status: int, **kwargs) -> ClientError:
    """Calls `call(**kwargs)`, which must fail with the AWS error `code` and `http_status`."""
    try:
        result = call(**kwargs)
    except ClientError as e:
        return check_error(e, code, http_status)
    pytest.fail(f"expected {code} ({http_status}), but the call succeeded: {result}")


def all_pages(client, op: str, **kwargs) -> list:
    items = []
    for page in client.get_paginator(op).paginate(PaginationConfig={"PageSize": 250}, **kwargs):
        items += page["certificates"]
    return items


def snapshot(client, ca_ids=(), cert_ids=()) -> dict:
    snap = {
        "certificates": all_pages(client, "list_certificates"),
        "cas": all_pages(client, "list_ca_certificates"),
    }
    for ca_id in ca_ids:
        snap[f"ca:{ca_id}"] = client.describe_ca_certificate(certificateId=ca_id)
        snap[f"ca:{ca_id}"].pop("ResponseMetadata")
    for cert_id in cert_ids:
        snap[f"cert:{cert_id}"] = client.describe_certificate(certificateId=cert_id)
        snap[f"cert:{cert_id}"].pop("ResponseMetadata")
    return snap


@contextlib.contextmanager
def unchanged(client, ca_ids=(), cert_ids=()):
    """Asserts that the account's registry (and the described objects) did not change."""
    before = snapshot(client, ca_ids, cert_ids)
    yield
    after = snapshot(client, ca_ids, cert_ids)
    assert after == before, "a refused request changed the registry"


class Acct:
    def __init__(self, server, account):
        self.server = server
        self.account = account
        self.id = account.id
        self.client = server.boto3_client(account.profile)

    def code(self) -> str:
        return self.client.get_registration_code()["registrationCode"]


@pytest.fixture
def acct(server) -> Acct:
    """A fresh account for the test (its registry starts empty)."""
    return Acct(server, server.create_account())


@pytest.fixture
def acct_b(server) -> Acct:
    return Acct(server, server.create_account())


def register_ca(openssl, acct: Acct, name: str, cn: str | None = None, active: bool = True):
    """A fresh self-signed CA registered in DEFAULT mode: (cert file, key file, CA id)."""
    ca, key = openssl.self_signed_ca(name, cn=cn)
    ver = openssl.verification_cert(f"{name}-verif", ca, key, acct.code())
    out = acct.client.register_ca_certificate(
        caCertificate=openssl.read(ca), verificationCertificate=openssl.read(ver), setAsActive=active,
    )
    assert out["certificateId"] == openssl.fingerprint(ca)
    return ca, key, out["certificateId"]


def pem(der: bytes, label: str) -> str:
    b64 = base64.b64encode(der).decode()
    lines = [b64[i:i + 64] for i in range(0, len(b64), 64)]
    return f"-----BEGIN {label}-----\n" + "\n".join(lines) + f"\n-----END {label}-----\n"


# ------------------------------------------------------------------------------------------------
# malformed input
# ------------------------------------------------------------------------------------------------
GARBAGE = {
    "not-pem": "this is not a certificate",
    "bad-base64-in-armour": "-----BEGIN CERTIFICATE-----\nAAAAnotder!!\n-----END CERTIFICATE-----\n",
    "der-junk-in-armour": pem(b"\x30\x82\x01\x00" + b"\x00" * 16, "CERTIFICATE"),
}


@pytest.mark.parametrize("garbage", list(GARBAGE), ids=list(GARBAGE))
@pytest.mark.parametrize("operation", ["register_certificate", "register_certificate_without_ca",
                                       "register_ca_certificate_sni_only", "register_ca_certificate_default"])
def test_malformed_pem_is_certificate_validation_exception(acct, operation, garbage):
    bad = GARBAGE[garbage]
    c = acct.client
    calls = {
        "register_certificate": lambda: c.register_certificate(certificatePem=bad),
        "register_certificate_without_ca": lambda: c.register_certificate_without_ca(certificatePem=bad),
        "register_ca_certificate_sni_only": lambda: c.register_ca_certificate(caCertificate=bad,
                                                                              certificateMode="SNI_ONLY"),
        "register_ca_certificate_default": lambda: c.register_ca_certificate(caCertificate=bad,
                                                                             verificationCertificate=bad),
    }
    with unchanged(c):
        expect_error(calls[operation], "CertificateValidationException", 400)


def test_malformed_ca_pem_with_valid_verification_cert(acct, openssl):
    ca, key = openssl.self_signed_ca("ca")
    ver = openssl.verification_cert("verif", ca, key, acct.code())
    with unchanged(acct.client):
        expect_error(acct.client.register_ca_certificate, "CertificateValidationException", 400,
                     caCertificate=GARBAGE["der-junk-in-armour"], verificationCertificate=openssl.read(ver))


def test_garbage_csr_is_invalid_request(acct):
    with unchanged(acct.client):
        expect_error(acct.client.create_certificate_from_csr, "InvalidRequestException", 400,
                     certificateSigningRequest="not a CSR at all")
        expect_error(acct.client.create_certificate_from_csr, "InvalidRequestException", 400,
                     certificateSigningRequest=pem(b"\x30\x03\x02\x01\x00", "CERTIFICATE REQUEST"))


def _csr_rsa1024(openssl):
    openssl("req", "-new", "-newkey", "rsa:1024", "-nodes", "-keyout", "k.pem", "-subj", "/CN=weak",
            "-out", "r.csr")


def _csr_secp256k1(openssl):
    openssl("ecparam", "-name", "secp256k1", "-genkey", "-noout", "-out", "k.pem")
    openssl("req", "-new", "-key", "k.pem", "-subj", "/CN=k1", "-out", "r.csr")


def _csr_ed25519(openssl):
    openssl("genpkey", "-algorithm", "ed25519", "-out", "k.pem")
    openssl("req", "-new", "-key", "k.pem", "-subj", "/CN=ed", "-out", "r.csr")


@pytest.mark.parametrize("make, named", [(_csr_rsa1024, "1024"), (_csr_secp256k1, "secp256k1"),
                                         (_csr_ed25519, "ed25519")], ids=["rsa1024", "secp256k1", "ed25519"])
def test_csr_with_unsupported_key_is_refused(acct, openssl, make, named):
    make(openssl)
    with unchanged(acct.client):
        e = expect_error(acct.client.create_certificate_from_csr, "InvalidRequestException", 400,
                         certificateSigningRequest=openssl.read("r.csr"))
    message = e.response["Error"]["Message"]
    assert named.lower() in message.lower(), f"the message should name the key ({named}): {message!r}"


@pytest.mark.parametrize("newkey", ["ec:P-384", "ec:P-521", "rsa:2048"])
def test_csr_with_supported_key_is_accepted(acct, openssl, newkey):
    if newkey.startswith("ec:"):
        openssl.ec_key("k.pem", {"ec:P-384": "secp384r1", "ec:P-521": "secp521r1"}[newkey])
    else:
        openssl.rsa_key("k.pem", 2048)
    openssl("req", "-new", "-key", "k.pem", "-subj", "/CN=ok", "-out", "r.csr")
    out = acct.client.create_certificate_from_csr(certificateSigningRequest=openssl.read("r.csr"))
    openssl.write("issued.pem", out["certificatePem"])
    assert openssl.fingerprint("issued.pem") == out["certificateId"]


@pytest.mark.parametrize("keytype", ["ec", "rsa"])
def test_csr_with_tampered_signature_is_refused(acct, openssl, keytype):
    if keytype == "ec":
        openssl.ec_key("k.pem")
    else:
        openssl.rsa_key("k.pem", 2048)
    openssl("req", "-new", "-key", "k.pem", "-subj", "/CN=tampered", "-outform", "DER", "-out", "r.der")
    der = bytearray(openssl.path("r.der").read_bytes())
    der[-1] ^= 0x01  # the last byte belongs to the signature BIT STRING
    openssl.write("t.csr", pem(bytes(der), "CERTIFICATE REQUEST"))
    # Sanity: openssl parses it and finds the signature wrong.
    check = openssl("req", "-in", "t.csr", "-noout", "-verify", check=False)
    assert check.returncode != 0 or b"verify failure" in (check.stdout + check.stderr).lower()
    with unchanged(acct.client):
        expect_error(acct.client.create_certificate_from_csr, "InvalidRequestException", 400,
                     certificateSigningRequest=openssl.read("t.csr"))


# ------------------------------------------------------------------------------------------------
# CA registration
# ------------------------------------------------------------------------------------------------
def test_wrong_registration_code(acct, openssl):
    ca, key = openssl.self_signed_ca("ca")
    wrong = secrets.token_hex(32)
    assert wrong != acct.code()
    ver = openssl.verification_cert("verif", ca, key, wrong)
    with unchanged(acct.client):
        expect_error(acct.client.register_ca_certificate, "RegistrationCodeValidationException", 400,
                     caCertificate=openssl.read(ca), verificationCertificate=openssl.read(ver), setAsActive=True)


def test_registration_code_of_another_account(acct, acct_b, openssl):
    ca, key = openssl.self_signed_ca("ca")
    ver = openssl.verification_cert("verif", ca, key, acct_b.code())
    with unchanged(acct.client), unchanged(acct_b.client):
        expect_error(acct.client.register_ca_certificate, "RegistrationCodeValidationException", 400,
                     caCertificate=openssl.read(ca), verificationCertificate=openssl.read(ver))


def test_verification_cert_signed_by_another_key(acct, openssl):
    cn = f"same-subject-{uuid.uuid4().hex[:8]}"
    ca, _ = openssl.self_signed_ca("ca", cn=cn)
    impostor, impostor_key = openssl.self_signed_ca("impostor", cn=cn)  # same subject, other key
    ver = openssl.verification_cert("verif", impostor, impostor_key, acct.code())
    with unchanged(acct.client):
        expect_error(acct.client.register_ca_certificate, "CertificateValidationException", 400,
                     caCertificate=openssl.read(ca), verificationCertificate=openssl.read(ver))


def _expired_ca(openssl, name: str):
    """A self-signed CA valid 2020-01-01 .. 2021-01-01 (OpenSSL 3.0's x509 cannot backdate)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"expired-ca-{uuid.uuid4().hex[:8]}")])
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(dt.datetime(2020, 1, 1, tzinfo=dt.timezone.utc))
        .not_valid_after(dt.datetime(2021, 1, 1, tzinfo=dt.timezone.utc))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    openssl.write(f"{name}.pem", cert.public_bytes(serialization.Encoding.PEM))
    openssl.write(f"{name}.key", key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                                   serialization.NoEncryption()))
    return f"{name}.pem", f"{name}.key"


@pytest.mark.parametrize("mode", ["DEFAULT", "SNI_ONLY"])
def test_expired_ca_is_refused(acct, openssl, mode):
    ca, key = _expired_ca(openssl, "expired")
    enddate = openssl("x509", "-in", ca, "-noout", "-enddate").stdout.decode()
    assert "2021" in enddate, enddate
    kwargs = {"caCertificate": openssl.read(ca), "certificateMode": mode}
    if mode == "DEFAULT":
        kwargs["verificationCertificate"] = openssl.read(openssl.verification_cert("verif", ca, key, acct.code()))
    with unchanged(acct.client):
        expect_error(acct.client.register_ca_certificate, "CertificateValidationException", 400, **kwargs)


@pytest.mark.parametrize("mode", ["DEFAULT", "SNI_ONLY"])
def test_non_ca_certificate_registered_as_ca(acct, openssl, mode):
    leaf = openssl.self_signed_leaf("leaf")  # basicConstraints critical, CA:FALSE
    kwargs = {"caCertificate": openssl.read(leaf), "certificateMode": mode}
    if mode == "DEFAULT":
        ver = openssl.verification_cert("verif", leaf, "leaf.key", acct.code())
        kwargs["verificationCertificate"] = openssl.read(ver)
    with unchanged(acct.client):
        expect_error(acct.client.register_ca_certificate, "CertificateValidationException", 400, **kwargs)


def test_sni_only_with_a_verification_certificate_is_invalid(acct, openssl):
    ca, key = openssl.self_signed_ca("ca")
    ver = openssl.verification_cert("verif", ca, key, acct.code())
    with unchanged(acct.client):
        expect_error(acct.client.register_ca_certificate, "InvalidRequestException", 400,
                     caCertificate=openssl.read(ca), verificationCertificate=openssl.read(ver),
                     certificateMode="SNI_ONLY")


def test_default_mode_without_verification_certificate_is_refused(acct, openssl):
    ca, _ = openssl.self_signed_ca("ca")
    with unchanged(acct.client):
        try:
            result = acct.client.register_ca_certificate(caCertificate=openssl.read(ca))
            pytest.fail(f"a DEFAULT-mode CA without a verification certificate was registered: {result}")
        except ClientError as e:
            # The model only says DEFAULT needs one; either 400 error is AWS-shaped.
            code = e.response["Error"]["Code"]
            assert code in ("InvalidRequestException", "CertificateValidationException"), e.response
            check_error(e, code, 400)


def test_duplicate_ca_in_the_same_account(acct, openssl):
    ca, key, ca_id = register_ca(openssl, acct, "ca")
    ver = openssl.verification_cert("verif2", ca, key, acct.code())
    with unchanged(acct.client, ca_ids=[ca_id]):
        e = expect_error(acct.client.register_ca_certificate, "ResourceAlreadyExistsException", 409,
                         caCertificate=openssl.read(ca), verificationCertificate=openssl.read(ver),
                         setAsActive=True)
        assert e.response.get("resourceId") == ca_id, f"resourceId should name the CA: {e.response}"
        if e.response.get("resourceArn"):
            assert e.response["resourceArn"] == f"arn:aws:iot:us-east-1:{acct.id}:cacert/{ca_id}"
        # The other mode too: inside one account a CA exists in one mode only.
        e = expect_error(acct.client.register_ca_certificate, "ResourceAlreadyExistsException", 409,
                         caCertificate=openssl.read(ca), certificateMode="SNI_ONLY")
        assert e.response.get("resourceId") == ca_id


def test_duplicate_device_certificate(acct, openssl):
    ca, key, ca_id = register_ca(openssl, acct, "ca")
    dev = openssl.read(openssl.device_cert("dev", ca, key))
    dev_id = acct.client.register_certificate(certificatePem=dev, caCertificatePem=openssl.read(ca))["certificateId"]
    selfsigned = openssl.read(openssl.self_signed_leaf("ss"))
    ss_id = acct.client.register_certificate_without_ca(certificatePem=selfsigned)["certificateId"]
    with unchanged(acct.client, ca_ids=[ca_id], cert_ids=[dev_id, ss_id]):
        for call, kwargs, cert_id in (
            (acct.client.register_certificate, {"certificatePem": dev, "caCertificatePem": openssl.read(ca)}, dev_id),
            (acct.client.register_certificate, {"certificatePem": dev}, dev_id),
            (acct.client.register_certificate_without_ca, {"certificatePem": selfsigned}, ss_id),
            (acct.client.register_certificate_without_ca, {"certificatePem": dev}, dev_id),
        ):
            e = expect_error(call, "ResourceAlreadyExistsException", 409, **kwargs)
            assert e.response.get("resourceId") == cert_id, f"resourceId should name the certificate: {e.response}"


# ------------------------------------------------------------------------------------------------
# Device certificates and their CA
# ------------------------------------------------------------------------------------------------
def test_device_certificate_not_signed_by_the_named_ca(acct, openssl):
    cn = f"twin-{uuid.uuid4().hex[:8]}"
    ca1, key1, id1 = register_ca(openssl, acct, "ca1", cn=cn)
    ca2, _, id2 = register_ca(openssl, acct, "ca2", cn=cn)  # same subject, another key
    dev = openssl.read(openssl.device_cert("dev", ca1, key1))
    with unchanged(acct.client, ca_ids=[id1, id2]):
        expect_error(acct.client.register_certificate, "CertificateValidationException", 400,
                     certificatePem=dev, caCertificatePem=openssl.read(ca2), status="ACTIVE")


def test_device_certificate_whose_ca_is_not_registered(acct, openssl):
    ca, key = openssl.self_signed_ca("unregistered")
    dev = openssl.read(openssl.device_cert("dev", ca, key))
    with unchanged(acct.client):
        expect_error(acct.client.register_certificate, "CertificateValidationException", 400,
                     certificatePem=dev, status="ACTIVE")
        expect_error(acct.client.register_certificate, "CertificateValidationException", 400,
                     certificatePem=dev, caCertificatePem=openssl.read(ca), status="ACTIVE")


def test_device_certificate_whose_ca_is_registered_in_another_account(acct, acct_b, openssl):
    ca, key, _ = register_ca(openssl, acct_b, "ca")
    dev = openssl.read(openssl.device_cert("dev", ca, key))
    with unchanged(acct.client):
        expect_error(acct.client.register_certificate, "CertificateValidationException", 400,
                     certificatePem=dev, caCertificatePem=openssl.read(ca))


def test_two_cas_with_the_same_subject_need_ca_certificate_pem(acct, openssl):
    cn = f"twin-{uuid.uuid4().hex[:8]}"
    ca1, key1, id1 = register_ca(openssl, acct, "ca1", cn=cn)
    _, _, id2 = register_ca(openssl, acct, "ca2", cn=cn)
    dev = openssl.read(openssl.device_cert("dev", ca1, key1))
    with unchanged(acct.client, ca_ids=[id1, id2]):
        expect_error(acct.client.register_certificate, "CertificateConflictException", 409,
                     certificatePem=dev, status="ACTIVE")
    # Naming the CA resolves it.
    out = acct.client.register_certificate(certificatePem=dev, caCertificatePem=openssl.read(ca1), status="ACTIVE")
    assert acct.client.describe_certificate(certificateId=out["certificateId"])[
        "certificateDescription"]["caCertificateId"] == id1


# ------------------------------------------------------------------------------------------------
# Request shape
# ------------------------------------------------------------------------------------------------
ONE_MIB_CA = "-----BEGIN CERTIFICATE-----\n" + ("A" * 64 + "\n") * (1024 * 1024 // 65) + "-----END CERTIFICATE-----\n"


def _signed_raw_exchange(server, profile: str, method: str, path: str, body: bytes) -> tuple[int, dict, bytes]:
    """Sends a SigV4-signed request on a raw TLS socket, writing the body from a thread while the
    response is read, so that a server answering before it has read the body is still heard."""
    from botocore.awsrequest import AWSRequest
    from botocore.credentials import Credentials

    akid, secret = server.credentials(profile)
    req = AWSRequest(method=method, url=server.url + path, data=body, headers={"Content-Type": "application/json"})
    botocore.auth.SigV4Auth(Credentials(akid, secret), "iot", "us-east-1").add_auth(req)
    hostport = server.url.split("://", 1)[1]
    host, port = hostport.rsplit(":", 1)
    head = f"{method} {path} HTTP/1.1\r\nHost: {hostport}\r\nContent-Length: {len(body)}\r\nConnection: close\r\n"
    head += "".join(f"{k}: {v}\r\n" for k, v in req.headers.items() if k.lower() not in ("host", "content-length"))
    ctx = ssl.create_default_context(cafile=server.ca_bundle)
    sock = ctx.wrap_socket(socket.create_connection((host, int(port)), timeout=30), server_hostname=host)
    try:
        # The whole body first, as the SDKs do: the server reads (and drops) it before answering.
        # (Writing from a second thread while reading is not safe on one SSL socket.)
        sock.sendall((head + "\r\n").encode() + body)
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = sock.recv(65536)
            if not chunk:
                break
            data += chunk
        head_bytes, _, rest = data.partition(b"\r\n\r\n")
        lines = head_bytes.decode("latin-1").split("\r\n")
        status = int(lines[0].split()[1])
        headers = {k.strip().lower(): v.strip() for k, v in (ln.split(":", 1) for ln in lines[1:] if ":" in ln)}
        length = int(headers.get("content-length", "0"))
        while len(rest) < length:
            chunk = sock.recv(65536)
            if not chunk:
                break
            rest += chunk
        return status, headers, rest[:length]
    finally:
        sock.close()


def test_oversized_body_is_413(server, acct):
    body = json.dumps({"caCertificate": ONE_MIB_CA, "certificateMode": "SNI_ONLY"}).encode()
    assert len(body) > 1_000_000
    with unchanged(acct.client):
        status, headers, payload = _signed_raw_exchange(server, acct.account.profile, "POST", "/cacertificate", body)
    assert status == 413, (status, headers, payload)
    assert headers.get("x-amzn-errortype", "").split(":", 1)[0] == "RequestEntityTooLargeException", headers
    assert headers.get("x-amzn-requestid"), headers
    assert json.loads(payload).get("message"), payload


def test_oversized_body_is_413_through_boto3(acct):
    """boto3 (like every AWS SDK) writes the whole body before reading the answer: the 413 must
    still reach it as RequestEntityTooLargeException, not as a broken connection."""
    with unchanged(acct.client):
        expect_error(acct.client.register_ca_certificate, "RequestEntityTooLargeException", 413,
                     caCertificate=ONE_MIB_CA, certificateMode="SNI_ONLY")


@pytest.mark.parametrize("query", [
    "newStatus=REVOKED&newStatus=INACTIVE",
    "newStatus=INACTIVE&newStatus=REVOKED",
    "newStatus=REVOKED&new%53tatus=INACTIVE",
])
def test_a_repeated_query_parameter_is_refused_and_changes_nothing(server, acct, query):
    """SigV4 sorts repeated query values, so both orders carry one signature: a request signed
    (by the account itself, with botocore) with newStatus twice is refused before any work,
    and the certificate keeps its status."""
    cert_id = acct.client.create_keys_and_certificate(setAsActive=True)["certificateId"]
    with unchanged(acct.client, cert_ids=[cert_id]):
        status, headers, payload = _signed_raw_exchange(
            server, acct.account.profile, "PUT", f"/certificates/{cert_id}?{query}", b"")
    assert status == 400, (status, headers, payload)
    assert headers.get("x-amzn-errortype", "").split(":", 1)[0] == "InvalidRequestException", headers
    assert headers.get("x-amzn-requestid"), headers
    assert "newStatus" in json.loads(payload)["message"], payload
    assert acct.client.describe_certificate(certificateId=cert_id)["certificateDescription"]["status"] == "ACTIVE"
    # Counted with authentication's refusals (and logged through the same once-a-second throttle).
    from test_endpoints import scrape_metrics
    counted = [line for line in scrape_metrics(server).splitlines()
               if line.startswith('certfleet_api_auth_refused_total{cause="repeated_query_parameter"}')]
    assert counted and float(counted[0].split()[-1]) >= 1, counted
    # The same request with the parameter once is served (the refusal is the repetition's).
    status, _, payload = _signed_raw_exchange(
        server, acct.account.profile, "PUT", f"/certificates/{cert_id}?newStatus=INACTIVE", b"")
    assert status == 200, (status, payload)
    assert acct.client.describe_certificate(certificateId=cert_id)["certificateDescription"]["status"] == "INACTIVE"


@pytest.mark.parametrize("op", ["list_certificates", "list_ca_certificates", "list_certificates_by_ca"])
@pytest.mark.parametrize("marker", ["bm90IGEgbWFya2Vy", "not-base64!"])
def test_invalid_marker(acct, openssl, op, marker):
    kwargs = {"marker": marker}
    if op == "list_certificates_by_ca":
        _, _, ca_id = register_ca(openssl, acct, "ca")
        kwargs["caCertificateId"] = ca_id
    with unchanged(acct.client):
        expect_error(getattr(acct.client, op), "InvalidRequestException", 400, **kwargs)


@pytest.mark.parametrize("op, kwargs", [
    ("describe_certificate", {}),
    ("update_certificate", {"newStatus": "INACTIVE"}),
    ("delete_certificate", {}),
    ("transfer_certificate", {"targetAwsAccount": "123456789012"}),
    ("accept_certificate_transfer", {}),
    ("reject_certificate_transfer", {}),
    ("cancel_certificate_transfer", {}),
    ("describe_ca_certificate", {}),
    ("update_ca_certificate", {"newStatus": "INACTIVE"}),
    ("delete_ca_certificate", {}),
])
def test_unknown_certificate_id_is_not_found(acct, op, kwargs):
    with unchanged(acct.client):
        expect_error(getattr(acct.client, op), "ResourceNotFoundException", 404, certificateId=UNKNOWN_ID, **kwargs)


@pytest.mark.parametrize("op", ["describe_certificate", "describe_ca_certificate"])
def test_malformed_certificate_id_is_invalid_request(acct, op):
    with unchanged(acct.client):
        expect_error(getattr(acct.client, op), "InvalidRequestException", 400, certificateId="z" * 64)


@pytest.mark.parametrize("status", ["PENDING_TRANSFER", "PENDING_ACTIVATION"])
def test_update_certificate_to_a_pending_status_is_invalid(acct, openssl, status):
    openssl.ec_key("k.pem")
    csr = openssl.read(openssl.csr("r", "k.pem", "pending"))
    cert_id = acct.client.create_certificate_from_csr(certificateSigningRequest=csr, setAsActive=True)["certificateId"]
    with unchanged(acct.client, cert_ids=[cert_id]):
        expect_error(acct.client.update_certificate, "InvalidRequestException", 400,
                     certificateId=cert_id, newStatus=status)
    assert acct.client.describe_certificate(certificateId=cert_id)["certificateDescription"]["status"] == "ACTIVE"


@pytest.mark.parametrize("op", ["list_certificates", "list_ca_certificates", "list_certificates_by_ca"])
def test_page_size_above_250_is_invalid(acct, op):
    kwargs = {"pageSize": 251}
    if op == "list_certificates_by_ca":
        kwargs["caCertificateId"] = UNKNOWN_ID
    with unchanged(acct.client):
        expect_error(getattr(acct.client, op), "InvalidRequestException", 400, **kwargs)


def test_bad_enum_values_are_invalid(acct, openssl):
    _, _, ca_id = register_ca(openssl, acct, "ca")
    openssl.ec_key("k.pem")
    csr = openssl.read(openssl.csr("r", "k.pem", "enum"))
    cert_id = acct.client.create_certificate_from_csr(certificateSigningRequest=csr)["certificateId"]
    with unchanged(acct.client, ca_ids=[ca_id], cert_ids=[cert_id]):
        expect_error(acct.client.update_certificate, "InvalidRequestException", 400,
                     certificateId=cert_id, newStatus="BOGUS")
        expect_error(acct.client.update_ca_certificate, "InvalidRequestException", 400,
                     certificateId=ca_id, newStatus="REVOKED")
        expect_error(acct.client.update_ca_certificate, "InvalidRequestException", 400,
                     certificateId=ca_id, newAutoRegistrationStatus="MAYBE")
        expect_error(acct.client.register_certificate_without_ca, "InvalidRequestException", 400,
                     certificatePem=openssl.read(openssl.self_signed_leaf("ss")), status="BOGUS")


def test_bad_transfer_requests_are_invalid(acct, openssl):
    openssl.ec_key("k.pem")
    csr = openssl.read(openssl.csr("r", "k.pem", "transfer"))
    cert_id = acct.client.create_certificate_from_csr(certificateSigningRequest=csr)["certificateId"]
    with unchanged(acct.client, cert_ids=[cert_id]):
        # Not a 12-digit account id (botocore checks only the length).
        expect_error(acct.client.transfer_certificate, "InvalidRequestException", 400,
                     certificateId=cert_id, targetAwsAccount="abcdefghijkl")
        # A transfer message longer than 128 characters.
        expect_error(acct.client.transfer_certificate, "InvalidRequestException", 400,
                     certificateId=cert_id, targetAwsAccount="123456789012", transferMessage="m" * 129)
        # To its own account.
        expect_error(acct.client.transfer_certificate, "InvalidRequestException", 400,
                     certificateId=cert_id, targetAwsAccount=acct.id)
    assert acct.client.describe_certificate(certificateId=cert_id)["certificateDescription"]["status"] == "INACTIVE"


# ------------------------------------------------------------------------------------------------
# Authentication
# ------------------------------------------------------------------------------------------------
def test_wrong_secret_is_invalid_signature(server, acct):
    bad = server.boto3_client(access_key=acct.account.access_key_id, secret_key="x" * 40)
    with unchanged(acct.client):
        expect_error(bad.list_certificates, "InvalidSignatureException", 403)
        expect_error(bad.update_certificate, "InvalidSignatureException", 403,
                     certificateId=UNKNOWN_ID, newStatus="INACTIVE")


def test_unknown_access_key_is_unrecognized_client(server, acct):
    stranger = server.boto3_client(access_key="AKIA" + "Z" * 16, secret_key="x" * 40)
    with unchanged(acct.client):
        expect_error(stranger.list_certificates, "UnrecognizedClientException", 403)
        expect_error(stranger.get_registration_code, "UnrecognizedClientException", 403)


def test_credential_scoped_to_another_region_is_invalid_signature(server, acct):
    import boto3
    from botocore.config import Config

    akid, secret = server.credentials(acct.account.profile)
    other = boto3.session.Session(aws_access_key_id=akid, aws_secret_access_key=secret,
                                  region_name="eu-west-1").client(
        "iot", endpoint_url=server.url, verify=server.ca_bundle,
        config=Config(retries={"total_max_attempts": 1, "mode": "standard"}))
    with unchanged(acct.client):
        expect_error(other.list_certificates, "InvalidSignatureException", 403)


@pytest.mark.parametrize("skew_minutes, phrase", [(-10, "signature expired"), (10, "signature not yet current")])
def test_request_signed_at_the_wrong_time(server, acct, skew_minutes, phrase):
    client = server.boto3_client(acct.account.profile)
    skewed = dt.datetime.now(dt.timezone.utc).replace(tzinfo=None) + dt.timedelta(minutes=skew_minutes)
    with unchanged(acct.client):
        with mock.patch.object(botocore.auth, "get_current_datetime", return_value=skewed):
            e = expect_error(client.list_certificates, "InvalidSignatureException", 403)
    assert phrase in e.response["Error"]["Message"].lower(), e.response["Error"]["Message"]


def _raw_request(server, method: str, path: str, headers=None, body: bytes | None = None):
    ctx = ssl.create_default_context(cafile=server.ca_bundle)
    req = urllib.request.Request(server.url + path, data=body, method=method, headers=headers or {})
    try:
        with urllib.request.urlopen(req, context=ctx, timeout=30) as resp:
            return resp.status, dict(resp.headers), resp.read()
    except urllib.error.HTTPError as e:
        return e.code, dict(e.headers), e.read()


@pytest.mark.parametrize("method, path", [("GET", "/certificates"), ("GET", "/registrationcode"),
                                          ("DELETE", f"/certificates/{UNKNOWN_ID}")])
def test_no_authorization_header(server, acct, method, path):
    with unchanged(acct.client):
        status, headers, body = _raw_request(server, method, path)
    headers = {k.lower(): v for k, v in headers.items()}
    assert status == 403, (status, headers, body)
    assert headers.get("x-amzn-errortype", "").split(":", 1)[0] == "MissingAuthenticationTokenException", headers
    assert headers.get("x-amzn-requestid"), headers
    assert headers.get("content-type", "").startswith("application/json"), headers
    payload = json.loads(body)
    assert payload.get("message") or payload.get("Message"), payload


# ------------------------------------------------------------------------------------------------
# Accounts are isolated
# ------------------------------------------------------------------------------------------------
def test_other_account_cannot_touch_certificates_or_cas(acct, acct_b, openssl):
    a, b = acct, acct_b
    ca, key, ca_id = register_ca(openssl, a, "ca")
    dev = openssl.read(openssl.device_cert("dev", ca, key))
    cert_id = a.client.register_certificate(certificatePem=dev, caCertificatePem=openssl.read(ca),
                                            status="INACTIVE")["certificateId"]
    with unchanged(a.client, ca_ids=[ca_id], cert_ids=[cert_id]), unchanged(b.client):
        for op, kwargs in (
            ("describe_certificate", {}),
            ("update_certificate", {"newStatus": "REVOKED"}),
            ("delete_certificate", {}),
            ("delete_certificate", {"forceDelete": True}),
            ("transfer_certificate", {"targetAwsAccount": "123456789012"}),
            ("cancel_certificate_transfer", {}),
        ):
            expect_error(getattr(b.client, op), "ResourceNotFoundException", 404, certificateId=cert_id, **kwargs)
        for op, kwargs in (
            ("describe_ca_certificate", {}),
            ("update_ca_certificate", {"newStatus": "INACTIVE", "newAutoRegistrationStatus": "ENABLE"}),
            ("delete_ca_certificate", {}),
        ):
            expect_error(getattr(b.client, op), "ResourceNotFoundException", 404, certificateId=ca_id, **kwargs)
    assert ca_id not in [x["certificateId"] for x in all_pages(b.client, "list_ca_certificates")]
    assert cert_id not in [x["certificateId"] for x in all_pages(b.client, "list_certificates")]
    assert ca_id in [x["certificateId"] for x in all_pages(a.client, "list_ca_certificates")]


def test_pending_transfer_is_only_visible_to_the_target(server, acct, acct_b, openssl):
    """A third account sees neither the certificate nor the transfer."""
    a, b = acct, acct_b
    c = Acct(server, server.create_account())
    openssl.ec_key("k.pem")
    csr = openssl.read(openssl.csr("r", "k.pem", "transfer"))
    cert_id = a.client.create_certificate_from_csr(certificateSigningRequest=csr)["certificateId"]
    a.client.transfer_certificate(certificateId=cert_id, targetAwsAccount=b.id)
    with unchanged(a.client, cert_ids=[cert_id]), unchanged(c.client):
        for op in ("describe_certificate", "accept_certificate_transfer", "reject_certificate_transfer",
                   "cancel_certificate_transfer"):
            expect_error(getattr(c.client, op), "ResourceNotFoundException", 404, certificateId=cert_id)
    # The target cannot cancel (only the owner can); the owner cannot accept.
    with unchanged(a.client, cert_ids=[cert_id]):
        for client, op in ((b.client, "cancel_certificate_transfer"), (a.client, "accept_certificate_transfer")):
            try:
                getattr(client, op)(certificateId=cert_id)
                pytest.fail(f"{op} by the wrong party succeeded")
            except ClientError as e:
                assert e.response["Error"]["Code"] in ("ResourceNotFoundException", "InvalidRequestException",
                                                        "UnauthorizedException"), e.response
    assert a.client.describe_certificate(certificateId=cert_id)["certificateDescription"]["status"] == \
        "PENDING_TRANSFER"
