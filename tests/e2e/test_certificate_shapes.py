"""Device certificates in the shapes real fleets have, made by the exact openssl commands of AWS's
documentation and of the seed, connect when the registry accepts them: the handshake proves that
the device holds the certificate's key and nothing more (issue 15, part 1).

AWS's "Create a client certificate using your CA certificate" (and its JITR/JITP walk-throughs)
signs with `openssl x509 -req -in device.csr -CA rootCA.pem -CAkey rootCA.key -CAcreateserial
-out device.pem -days 500 -sha256` and no extension file: on Debian 12's OpenSSL 3 that is an
X.509 version 1 certificate, which a web PKI verifier (webpki) refuses with UnsupportedCertVersion.
That a client presenting a certificate without holding its key is refused is checked signature by
signature in the verifier's own test (crates/gateway/src/tls.rs): openssl-based clients refuse to
even try.
"""

from __future__ import annotations

import json
import time
import uuid

import pytest

from test_gateway import Device, allow_all_policy, mosquitto, publish_until_received, start_sub
from test_jitp import template

# name -> (key kind, extension file text or None for the documented no-extension command, the
# X.509 version openssl makes)
SHAPES = {
    # AWS's documented commands: RSA 2048, no extensions: version 1.
    "aws-docs-rsa-v1": ("rsa", None, 1),
    # The same command with an EC key: version 1.
    "ec-v1": ("ec", None, 1),
    # Version 3 without subject or authority key identifiers (OpenSSL 1.1's default leaves them out).
    "v3-without-key-identifiers": ("ec", "basicConstraints=CA:FALSE\nsubjectKeyIdentifier=none\nauthorityKeyIdentifier=none\n", 3),
    # Version 3 with OpenSSL 3's defaults (key identifiers added) and no key usage.
    "v3-openssl3-defaults": ("rsa", "basicConstraints=CA:FALSE\n", 3),
}


def registered_ca(server, openssl) -> tuple[str, str, str]:
    """The seed's root CA (RSA, `openssl req -x509`), registered ACTIVE with a verification
    certificate, auto-registration on: (cert, key, CA certificate ID)."""
    name = openssl.unique("shapes-ca")
    openssl.rsa_key(f"{name}.key", 2048)
    openssl("req", "-x509", "-new", "-nodes", "-key", f"{name}.key", "-sha256", "-days", 1024,
            "-subj", f"/CN=shapes-root-{uuid.uuid4().hex[:8]}", "-out", f"{name}.pem")
    code = server.aws("get-registration-code")["registrationCode"]
    verification = openssl.unique("shapes-verify")
    openssl.rsa_key(f"{verification}.key", 2048)
    openssl("req", "-new", "-key", f"{verification}.key", "-subj", f"/CN={code}", "-out", f"{verification}.csr")
    openssl("x509", "-req", "-in", f"{verification}.csr", "-CA", f"{name}.pem", "-CAkey", f"{name}.key",
            "-CAcreateserial", "-out", f"{verification}.pem", "-days", 500, "-sha256")
    out = server.aws("register-ca-certificate", "--ca-certificate", f"file://{openssl.path(name + '.pem')}",
                     "--verification-certificate", f"file://{openssl.path(verification + '.pem')}",
                     "--set-as-active", "--allow-auto-registration")
    return f"{name}.pem", f"{name}.key", out["certificateId"]


def device_of_shape(openssl, shape: str, ca: str, ca_key: str) -> tuple[str, str]:
    """A device key and certificate of `shape`, signed by the CA with `openssl x509 -req`: (cert, key)."""
    kind, extensions, version = SHAPES[shape]
    name = openssl.unique(f"shape-{shape}-")
    key = openssl.rsa_key(f"{name}.key") if kind == "rsa" else openssl.ec_key(f"{name}.key")
    openssl("req", "-new", "-key", key, "-subj", f"/CN={name}", "-out", f"{name}.csr")
    command = ["x509", "-req", "-in", f"{name}.csr", "-CA", ca, "-CAkey", ca_key, "-CAcreateserial",
               "-out", f"{name}.pem", "-days", 500, "-sha256"]
    if extensions is not None:
        command += ["-extfile", openssl.write(f"{name}.ext", extensions).name]
    openssl(*command)
    text = openssl("x509", "-in", f"{name}.pem", "-noout", "-text").stdout.decode()
    assert f"Version: {version} (0x{version - 1})" in text, text[:400]
    if shape == "v3-without-key-identifiers":
        assert "Key Identifier" not in text, text
    return str(openssl.path(f"{name}.pem")), str(openssl.path(key))


def round_trip(server, device: Device, tag: str) -> None:
    topic = f"shapes/{tag}"
    sub = start_sub(server, device, topic, "-i", f"{tag}-sub")
    received = publish_until_received(server, device, sub, topic, f"hello {tag}", "-i", f"{tag}-pub")
    assert f"{topic} hello {tag}" in received


@pytest.mark.parametrize("shape", SHAPES)
def test_registered_certificates_of_every_shape_connect_over_tls_1_2_and_1_3(server, openssl, shape):
    client = server.client()
    ca, ca_key, _ = registered_ca(server, openssl)
    cert, key = device_of_shape(openssl, shape, ca, ca_key)
    out = server.aws("register-certificate", "--certificate-pem", f"file://{cert}",
                     "--ca-certificate-pem", f"file://{openssl.path(ca)}", "--set-as-active")
    client.attach_policy(policyName=allow_all_policy(client), target=out["certificateArn"])
    device = Device(cert, key, out["certificateId"])
    round_trip(server, device, f"{shape}-tls13")
    # TLS 1.2: the handshake signature is checked with the certificate's key as well.
    tag = f"{shape}-tls12"
    result = mosquitto("mosquitto_pub", server, device, "--tls-version", "tlsv1.2", "-t", f"shapes/{tag}",
                       "-m", "x", "-i", tag, "-q", "1")
    assert result.returncode == 0, result.stderr


def test_a_version_1_certificate_is_registered_just_in_time_and_then_admitted(server, openssl):
    """JITR with the documented command's version 1 certificate: the first connection registers it
    PENDING_ACTIVATION (and is refused); once activated, with a policy, it connects."""
    client = server.client()
    ca, ca_key, ca_id = registered_ca(server, openssl)
    cert, key = device_of_shape(openssl, "aws-docs-rsa-v1", ca, ca_key)
    cert_id = openssl.fingerprint(cert)
    device = Device(cert, key, cert_id)
    refused = mosquitto("mosquitto_pub", server, device, "-t", "shapes/jitr", "-m", "x", "-i", "jitr-v1")
    assert refused.returncode != 0
    listed = client.list_certificates_by_ca(caCertificateId=ca_id)["certificates"]
    assert [(c["certificateId"], c["status"]) for c in listed] == [(cert_id, "PENDING_ACTIVATION")]
    client.update_certificate(certificateId=cert_id, newStatus="ACTIVE")
    client.attach_policy(policyName=allow_all_policy(client), target=listed[0]["certificateArn"])
    # The gateway learns of the activation from the change feed (its poll), within seconds.
    deadline = time.monotonic() + 20
    while mosquitto("mosquitto_pub", server, device, "-t", "shapes/jitr", "-m", "x", "-i", "jitr-v1").returncode != 0:
        assert time.monotonic() < deadline, "the activated certificate was not admitted"
        time.sleep(0.5)
    round_trip(server, device, "jitr-v1")


def test_a_version_1_certificate_is_provisioned_just_in_time(server, openssl):
    """JITP with the documented command's version 1 certificate: the first connection registers
    and provisions it (thing named by its CN, the template's policy), the retry connects."""
    client = server.client()
    ca, ca_key, ca_id = registered_ca(server, openssl)
    policy_name = openssl.unique("shapes-jitp-policy")
    config = openssl.write(openssl.unique("shapes-jitp") + ".json", json.dumps({"templateBody": template(policy_name)}))
    server.aws("update-ca-certificate", "--certificate-id", ca_id, "--registration-config",
               f"file://{openssl.path(config.name)}")
    cert, key = device_of_shape(openssl, "aws-docs-rsa-v1", ca, ca_key)
    name = cert.rsplit("/", 1)[1].removesuffix(".pem")  # device_of_shape's subject is /CN=<file stem>
    device = Device(cert, key, openssl.fingerprint(cert))

    def publish():
        return mosquitto("mosquitto_pub", server, device, "-i", name, "-t", f"jitp/{name}/data", "-m", "hi", "-q", "1")

    first = publish()
    assert first.returncode != 0 and "not authori" in (first.stderr + first.stdout).lower(), first
    retry = publish()
    assert retry.returncode == 0, retry.stderr
    assert client.describe_certificate(certificateId=device.cert_id)["certificateDescription"]["status"] == "ACTIVE"
    assert server.aws("describe-thing", "--thing-name", name)["thingName"] == name
