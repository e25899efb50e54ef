"""The gateway's TLS face, with openssl s_client: SNI naming an account endpoint, protocol
versions (TLS 1.2 and 1.3 only), ALPN `x-amzn-mqtt-ca`, a client certificate required; and the
reason of every refusal in the server log."""

from __future__ import annotations

import subprocess
import uuid

import pytest

from conftest import _ANSI


def s_client(server, *flags: str, cert: tuple[str, str] | None = None) -> str:
    host, port = server.endpoints["mqtt_addr"].rsplit(":", 1)
    cmd = ["openssl", "s_client", "-connect", f"{host}:{port}", "-CAfile", server.ca_bundle, "-verify_return_error"]
    if cert:
        cmd += ["-cert", cert[0], "-key", cert[1]]
    proc = subprocess.run(cmd + list(flags), input=b"", capture_output=True, timeout=30)
    return (proc.stdout + proc.stderr).decode(errors="replace"), proc.returncode


def device(server, openssl) -> tuple[str, str]:
    name = f"tls-{uuid.uuid4().hex[:8]}"
    key = openssl.ec_key(f"{name}.key")
    csr = openssl.csr(name, key, name)
    created = server.client().create_certificate_from_csr(certificateSigningRequest=openssl.read(csr), setAsActive=True)
    cert = openssl.write(f"{name}.crt", created["certificatePem"])
    return str(cert), str(openssl.path(key))


def test_sni_names_an_account_endpoint_and_the_certificate_matches_it(server, openssl):
    endpoint = server.client().describe_endpoint(endpointType="iot:Data-ATS")["endpointAddress"]
    output, code = s_client(server, "-servername", endpoint, "-verify_hostname", endpoint, cert=device(server, openssl))
    assert code == 0, output
    assert "Verification: OK" in output, output


@pytest.mark.parametrize("flags, accepted", [
    (["-tls1_3"], True),
    (["-tls1_2"], True),
    (["-tls1_1", "-cipher", "DEFAULT@SECLEVEL=0"], False),
])
def test_only_tls_1_2_and_1_3(server, openssl, flags, accepted):
    output, code = s_client(server, *flags, cert=device(server, openssl))
    assert (code == 0) == accepted, output


def test_alpn_x_amzn_mqtt_ca_is_accepted(server, openssl):
    output, code = s_client(server, "-alpn", "x-amzn-mqtt-ca", cert=device(server, openssl))
    assert code == 0, output
    assert "ALPN protocol: x-amzn-mqtt-ca" in output, output


def test_refusals_are_logged_with_their_reason(server, openssl):
    cert, key = device(server, openssl)
    cert_id = openssl.fingerprint(cert)
    server.client().update_certificate(certificateId=cert_id, newStatus="REVOKED")
    host, port = server.endpoints["mqtt_addr"].rsplit(":", 1)
    for _ in range(2):
        subprocess.run(["mosquitto_pub", "-h", host, "-p", port, "--cafile", server.ca_bundle, "--cert", cert,
                        "--key", key, "-t", "e2e/x", "-m", "x"], capture_output=True, timeout=20)
    subprocess.run(["mosquitto_pub", "-h", host, "-p", port, "--cafile", server.ca_bundle, "-t", "e2e/x", "-m", "x"],
                   capture_output=True, timeout=20)
    log = _ANSI.sub("", server.log_path.read_text(errors="replace"))
    assert f"cert={cert_id}" in log and "reason=Revoked" in log, "the refusal names the certificate and the reason"
    assert "reason=NoClientCert" in log
