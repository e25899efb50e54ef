"""`certfleet tls-check` against the running gateway, and `certfleet scan` on blobs holding
openssl-made certificates (DER and PEM), garbage and truncated input."""

from __future__ import annotations

import json
import os
import subprocess
import uuid

import pytest


def certfleet(server, *args: str) -> tuple[int, dict | None, str]:
    proc = subprocess.run([server.bin, *args], capture_output=True, text=True, timeout=60)
    document = json.loads(proc.stdout) if proc.stdout.strip().startswith("{") else None
    return proc.returncode, document, proc.stderr


def gateway(server) -> str:
    host, port = server.endpoints["mqtt_addr"].rsplit(":", 1)
    return f"{host}:{port}"


def endpoint(server) -> str:
    return server.client().describe_endpoint(endpointType="iot:Data-ATS")["endpointAddress"]


def device(server, openssl) -> tuple[str, str]:
    name = f"tools-{uuid.uuid4().hex[:8]}"
    key = openssl.ec_key(f"{name}.key")
    csr = openssl.csr(name, key, name)
    created = server.client().create_certificate_from_csr(certificateSigningRequest=openssl.read(csr), setAsActive=True)
    cert = openssl.write(f"{name}.crt", created["certificatePem"])
    return str(cert), str(openssl.path(key))


def tls_check(server, *extra: str) -> tuple[int, dict | None, str]:
    return certfleet(server, "tls-check", gateway(server), "--servername", endpoint(server), "--ca-file",
                     server.ca_bundle, "--output", "json", *extra)


def test_tls_check_against_the_gateway(server, openssl):
    cert, key = device(server, openssl)
    code, report, stderr = tls_check(server, "--cert", cert, "--key", key, "--alpn", "x-amzn-mqtt-ca")
    assert code == 0, (report, stderr)
    assert report["serverName"] == endpoint(server)
    assert report["connection"]["ok"] is True
    assert report["connection"]["tlsVersion"] == "TLS 1.3"
    assert report["connection"]["alpn"] == "x-amzn-mqtt-ca"
    assert report["connection"]["clientCertificateOffered"] is True
    [leaf] = report["chain"]
    assert leaf["subject"] == "CN=certfleet"
    assert leaf["isCa"] is False and leaf["selfSigned"] is False
    assert leaf["keyType"] == "ec" and leaf["keyBits"] == 256
    assert leaf["daysLeft"] >= 364
    assert len(leaf["sha1"]) == 40 and len(leaf["sha256"]) == 64
    assert report["chainBytes"] == leaf["derBytes"]
    verification = report["verification"]
    assert verification["trusted"] is True and verification["hostnameMatches"] is True
    assert verification["trustedByRootsOnly"] is True
    assert verification["anchor"]["sha256"] == openssl.fingerprint(server.ca_bundle)
    assert verification["anchor"]["selfSigned"] is True
    assert report["warnings"] == [] and report["exitCode"] == 0 and report["result"] == "ok"


def test_tls_check_tls_1_2(server, openssl):
    cert, key = device(server, openssl)
    code, report, stderr = tls_check(server, "--cert", cert, "--key", key, "--tls-version", "1.2")
    assert code == 0, (report, stderr)
    assert report["connection"]["tlsVersion"] == "TLS 1.2"


def test_tls_check_without_a_client_certificate_reports_the_alert(server):
    code, report, _ = tls_check(server)
    assert code == 3, report
    assert report["connection"]["ok"] is False
    assert report["connection"]["error"]["kind"] == "alert"
    assert report["connection"]["error"]["alert"] == "certificate_required"
    assert "requires a client certificate" in report["connection"]["error"]["message"]
    assert report["verification"]["trusted"] is True, "the server's chain is checked all the same"


def test_tls_check_with_next_roots(server, openssl):
    cert, key = device(server, openssl)
    next_root, _ = openssl.self_signed_ca("next-root", cn="Next Root G2")
    roots = openssl.write("next-roots.pem", open(server.ca_bundle).read() + openssl.read(next_root))
    code, report, _ = tls_check(server, "--cert", cert, "--key", key, "--next-roots", str(roots))
    assert code == 4, report
    assert [w["kind"] for w in report["warnings"]] == ["next-root-missing"]
    assert "Next Root G2" in report["warnings"][0]["message"]
    assert [r["inBundle"] for r in report["nextRoots"]] == [True, False]
    assert report["verifiesWithNextRoots"] is True


def test_tls_check_with_the_wrong_bundle(server, openssl):
    cert, key = device(server, openssl)
    code, report, _ = certfleet(server, "tls-check", gateway(server), "--servername", endpoint(server), "--ca-file",
                                server.device_root, "--cert", cert, "--key", key, "--output", "json")
    assert code == 1, report
    assert report["verification"]["trusted"] is False
    assert report["connection"]["ok"] is True


def test_tls_check_input_and_connection_errors(server, openssl):
    garbage = openssl.write("garbage.pem", "-----BEGIN CERTIFICATE-----\n!!!!\n-----END CERTIFICATE-----\n")
    code, report, stderr = certfleet(server, "tls-check", gateway(server), "--ca-file", str(garbage))
    assert (code, report) == (2, None)
    assert stderr.startswith("certfleet tls-check: ") and len(stderr.strip().splitlines()) == 1, stderr
    code, _, stderr = certfleet(server, "tls-check", "no-port", "--ca-file", server.ca_bundle)
    assert code == 2 and "is not HOST:PORT" in stderr, stderr
    other_key = openssl.ec_key("other.key")
    cert, _ = device(server, openssl)
    code, _, stderr = certfleet(server, "tls-check", gateway(server), "--ca-file", server.ca_bundle, "--cert", cert,
                                "--key", str(openssl.path(other_key)))
    assert code == 2 and "other.key" in stderr, stderr
    code, report, _ = certfleet(server, "tls-check", "127.0.0.1:1", "--ca-file", server.ca_bundle, "--output", "json")
    assert code == 3 and report["connection"]["error"]["kind"] == "connect", report


# ------------------------------------------------------------------------------------------------
# scan
# ------------------------------------------------------------------------------------------------
def der(openssl, pem: str) -> bytes:
    out = f"{pem}.der"
    openssl("x509", "-in", pem, "-outform", "der", "-out", out)
    return openssl.path(out).read_bytes()


def scan(server, *args: str) -> tuple[int, dict | None, str]:
    return certfleet(server, "scan", *args, "--output", "json")


def test_scan_a_firmware_image(server, openssl):
    ca, ca_key = openssl.self_signed_ca("fw-root", cn="Firmware Root")
    soon_csr = openssl.csr("soon", openssl.ec_key("soon.key"), "expires-soon")
    soon = openssl.sign(soon_csr, ca, ca_key, "soon.pem", days=5)
    later = openssl.device_cert("later", ca, ca_key, cn="expires-later")
    truncated = openssl.device_cert("truncated", ca, ca_key, cn="truncated")
    blob = bytearray(os.urandom(3 * 1024 * 1024))
    placed = {4097: der(openssl, soon), 1_000_003: der(openssl, later)}
    for offset, data in placed.items():
        blob[offset:offset + len(data)] = data
    pem_at = 2_000_001
    pem = openssl.read(ca).encode()
    blob[pem_at:pem_at + len(pem)] = pem
    blob += der(openssl, truncated)[:150]
    image = openssl.write("firmware.bin", bytes(blob))

    code, report, stderr = scan(server, str(image), "--within", "30d")
    assert code == 1, (report, stderr)
    found = {(c["format"], c["offset"]): c for c in report["certificates"]}
    assert set(found) == {("der", 4097), ("der", 1_000_003), ("pem", pem_at)}, report["certificates"]
    assert found[("der", 4097)]["subject"] == "CN=expires-soon"
    assert found[("der", 4097)]["flags"] == ["expires-by-deadline"]
    assert found[("der", 1_000_003)]["flags"] == []
    assert found[("pem", pem_at)]["line"] == blob[:pem_at].count(b"\n") + 1
    assert found[("pem", pem_at)]["sha256"] == openssl.fingerprint(ca)
    assert found[("pem", pem_at)]["selfSigned"] is True and found[("pem", pem_at)]["isCa"] is True
    assert any("truncated" in w["message"] for w in report["warnings"]), report["warnings"]
    assert report["bytesScanned"] == len(blob)

    code, report, _ = scan(server, str(image))
    assert code == 0, report


def test_scan_garbage_and_bundles(server, openssl):
    garbage = openssl.write("garbage.bin", os.urandom(256 * 1024) + b"\x30\x82\x05\x00\x30\x82\x04\xf0\xa0\x03\x02\x01\x02")
    corrupted = openssl.write("corrupted.pem", "-----BEGIN CERTIFICATE-----\nMIIB*not-base64*\n-----END CERTIFICATE-----\n")
    code, report, _ = scan(server, str(garbage), str(corrupted))
    assert code == 0, report
    assert report["certificates"] == []
    assert report["filesScanned"] == 2
    assert any("bad base64" in w["message"] for w in report["warnings"]), report["warnings"]
    assert any("truncated" in w["message"] for w in report["warnings"]), report["warnings"]

    root, root_key = openssl.self_signed_ca("bundle-root", cn="Bundle Root")
    new_root, _ = openssl.self_signed_ca("bundle-new-root", cn="Bundle New Root")
    intermediate_csr = openssl.csr("bundle-intermediate", openssl.ec_key("bundle-intermediate.key"), "Bundle Intermediate")
    intermediate = openssl.sign(intermediate_csr, root, root_key, "bundle-intermediate.pem",
                                ext="basicConstraints=critical,CA:TRUE\nkeyUsage=critical,keyCertSign,cRLSign\n")
    bundle = openssl.write("ca-bundle.pem", openssl.read(root) + openssl.read(intermediate))
    required = openssl.write("required.pem", openssl.read(root) + openssl.read(new_root))
    code, report, _ = scan(server, str(bundle), "--require-roots", str(required))
    assert code == 1, report
    [entry] = report["bundles"]
    assert (entry["certificates"], entry["caCertificates"]) == (2, 2)
    assert [r["subject"] for r in entry["missingRoots"]] == ["CN=Bundle New Root"]
    flags = {c["subject"]: c["flags"] for c in report["certificates"]}
    assert flags == {"CN=Bundle Root": [], "CN=Bundle Intermediate": ["pinned-intermediate"]}, flags

    code, report, stderr = scan(server, str(openssl.path("does-not-exist")))
    assert (code, report) == (2, None)
    assert "does-not-exist" in stderr
