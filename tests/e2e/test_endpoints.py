"""Endpoints with real clients: server certificates through `aws acm`, domain configurations
through `aws iot`, the chain and TLS policy per domain seen by `openssl s_client -servername`,
mosquitto clients through a custom domain, server-root migration with drain, revert and the
guard (200 TLS clients, half of them trusting only the old root), the test endpoint and the
large-certificate endpoint."""

from __future__ import annotations

import json
import os
import signal
import socket
import ssl
import struct
import subprocess
import threading
import time
import uuid
from pathlib import Path

import pytest
from botocore.exceptions import ClientError

from conftest import OpenSSL, Server
from test_gateway import allow_all_policy, connect_packet, gateway_addr, make_device


# ------------------------------------------------------------------------------------------------
# the server of this module: domain claims need proof of control
# ------------------------------------------------------------------------------------------------
class ConfiguredServer(Server):
    """A `certfleet server` (and its admin commands) reading a configuration file."""

    def __init__(self, data_dir: Path, log_path: Path, config: Path):
        super().__init__(data_dir, log_path)
        self.config_path = config

    def _certfleet_env(self) -> dict:
        env = super()._certfleet_env()
        env["CERTFLEET_CONFIG"] = str(self.config_path)
        return env


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """This module's own server: its domain claims trust a root made here (`server.trust_root`,
    `server.trust_key`), and its default account may claim any name under example.com (the
    other accounts must prove control with a certificate)."""
    base = tmp_path_factory.mktemp("certfleet-domains")
    data_dir, log_path = base / "data", base / "server.log"
    first = Server(data_dir, log_path)
    first.start()  # makes the data directory and the default account
    default_id = first.default_account.id
    assert first.stop() == 0
    (data_dir / "endpoints.json").unlink()  # the restarted server writes its own addresses
    trust = base / "trust"
    trust.mkdir()
    trust_openssl = OpenSSL(trust)
    root, root_key = trust_openssl.self_signed_ca("public-root", cn=f"e2e public root {uuid.uuid4().hex[:6]}")
    config = base / "config.toml"
    config.write_text(
        f'[domains]\ntrust_store = "{trust / root}"\n[domains.claims]\n"{default_id}" = ["example.com"]\n'
    )
    srv = ConfiguredServer(data_dir, log_path, config)
    srv.trust_root, srv.trust_key = str(trust / root), str(trust / root_key)
    srv.start()
    try:
        yield srv
    finally:
        code = srv.stop()
        if code != 0:
            pytest.fail(f"certfleet server exited {code} after SIGTERM (expected 0)\n{srv.log_tail()}")


# ------------------------------------------------------------------------------------------------
# helpers
# ------------------------------------------------------------------------------------------------
def acm(server, profile="default"):
    return server.boto3_client(profile, service="acm")


def root_and_server_cert(openssl, domain: str, label: str, rsa: bool = False):
    """A fresh root CA and a server certificate for `domain` signed by it: (root, cert, key)."""
    root, root_key = openssl.self_signed_ca(f"root-{label}", cn=f"e2e root {label} {uuid.uuid4().hex[:6]}")
    key = openssl.rsa_key(f"srv-{label}.key") if rsa else openssl.ec_key(f"srv-{label}.key")
    csr = openssl.csr(f"srv-{label}", key, domain)
    cert = openssl.sign(
        csr, root, root_key, f"srv-{label}.pem",
        ext=f"basicConstraints=critical,CA:FALSE\nkeyUsage=critical,digitalSignature,keyEncipherment\n"
            f"extendedKeyUsage=serverAuth\nsubjectAltName=DNS:{domain}\n",
    )
    return str(openssl.path(root)), str(openssl.path(cert)), str(openssl.path(key))


def import_cert(server, cert: str, key: str, chain: str | None = None, profile="default") -> str:
    args = {"Certificate": open(cert, "rb").read(), "PrivateKey": open(key, "rb").read()}
    if chain:
        args["CertificateChain"] = open(chain, "rb").read()
    return acm(server, profile).import_certificate(**args)["CertificateArn"]


def s_client(server, servername: str, *flags: str, cafile: str | None = None, device=None) -> tuple[str, int]:
    host, port = gateway_addr(server)
    cmd = ["openssl", "s_client", "-connect", f"{host}:{port}", "-servername", servername, "-showcerts"]
    if device is not None:
        cmd += ["-cert", device.cert, "-key", device.key]
    if cafile:
        cmd += ["-CAfile", cafile, "-verify_return_error"]
    proc = subprocess.run(cmd + list(flags), input=b"", capture_output=True, timeout=30)
    return (proc.stdout + proc.stderr).decode(errors="replace"), proc.returncode


def endpoint_cli(server, *args: str) -> dict:
    proc = server.certfleet("endpoint", *args, "--data-dir", str(server.data_dir), "--output", "json")
    return json.loads(proc.stdout)


def status(server, name: str) -> dict:
    return endpoint_cli(server, "status", name)


def wait_for(predicate, what: str, timeout: float = 60, interval: float = 0.3):
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        last = predicate()
        if last:
            return last
        time.sleep(interval)
    raise AssertionError(f"timed out waiting for {what}; last: {last!r}")


def connected_on(report: dict, chain: str) -> int:
    return sum(c["connected"] for c in report.get("chains", []) if c["chain"] == chain)


class Socks5Proxy:
    """A minimal SOCKS5 proxy that sends every connection to the gateway, whatever host name the
    client asked for: mosquitto clients set SNI from `-h`, and this lets them name a custom
    domain without DNS."""

    def __init__(self, target: tuple[str, int]):
        self.target = target
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self):
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            threading.Thread(target=self._handle, args=(client,), daemon=True).start()

    def _handle(self, client):
        try:
            client.recv(262)  # greeting
            client.sendall(b"\x05\x00")
            head = client.recv(4)
            kind = head[3]
            if kind == 3:
                length = client.recv(1)[0]
                client.recv(length + 2)
            elif kind == 1:
                client.recv(6)
            else:
                client.recv(18)
            upstream = socket.create_connection(self.target)
            client.sendall(b"\x05\x00\x00\x01" + socket.inet_aton("127.0.0.1") + struct.pack("!H", 0))
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()
        except OSError:
            client.close()

    @staticmethod
    def _pipe(a, b):
        try:
            while data := a.recv(65536):
                b.sendall(data)
        except OSError:
            pass
        finally:
            for s in (a, b):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def close(self):
        self.listener.close()


# ------------------------------------------------------------------------------------------------
# ACM-compatible server certificates
# ------------------------------------------------------------------------------------------------
def test_acm_import_describe_list_get_delete_with_the_cli(server, openssl):
    domain = f"acm-{uuid.uuid4().hex[:6]}.example.com"
    root, cert, key = root_and_server_cert(openssl, domain, "acm")
    imported = server.aws("import-certificate", "--certificate", f"fileb://{cert}", "--private-key", f"fileb://{key}",
                          "--certificate-chain", f"fileb://{root}", service="acm")
    arn = imported["CertificateArn"]
    assert arn.startswith("arn:aws:acm:us-east-1:") and ":certificate/" in arn
    described = server.aws("describe-certificate", "--certificate-arn", arn, service="acm")["Certificate"]
    assert described["DomainName"] == domain and described["Type"] == "IMPORTED"
    assert described["KeyAlgorithm"] == "EC_prime256v1" and described["Status"] == "ISSUED"
    listed = server.aws("list-certificates", service="acm")["CertificateSummaryList"]
    assert arn in [c["CertificateArn"] for c in listed]
    got = server.aws("get-certificate", "--certificate-arn", arn, service="acm")
    assert got["Certificate"].strip() == open(cert).read().strip()
    assert "BEGIN CERTIFICATE" in got["CertificateChain"]
    # In use by a domain configuration: not deletable.
    name = f"dc-{uuid.uuid4().hex[:6]}"
    server.aws("create-domain-configuration", "--domain-configuration-name", name, "--domain-name", domain,
               "--server-certificate-arns", arn)
    proc = server.aws("delete-certificate", "--certificate-arn", arn, service="acm", check=False)
    assert proc.returncode == 255 and "ResourceInUseException" in proc.stderr, proc.stderr
    server.aws("delete-domain-configuration", "--domain-configuration-name", name)
    server.aws("delete-certificate", "--certificate-arn", arn, service="acm")
    proc = server.aws("describe-certificate", "--certificate-arn", arn, service="acm", check=False)
    assert "ResourceNotFoundException" in proc.stderr


def test_acm_bad_input_is_refused_and_changes_nothing(server, openssl):
    client = acm(server)
    before = client.list_certificates()["CertificateSummaryList"]
    _, cert, key = root_and_server_cert(openssl, "bad.example.com", "bad")
    _, other_cert, other_key = root_and_server_cert(openssl, "other.example.com", "other")
    cases = [
        ({"Certificate": b"garbage", "PrivateKey": open(key, "rb").read()}, "ValidationException"),
        ({"Certificate": open(cert, "rb").read(), "PrivateKey": open(other_key, "rb").read()}, "ValidationException"),
        ({"Certificate": open(cert, "rb").read(), "PrivateKey": b"-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n"},
         "ValidationException"),
        ({"Certificate": open(cert, "rb").read(), "PrivateKey": open(key, "rb").read(),
          "CertificateChain": open(other_cert, "rb").read()}, "ValidationException"),
        ({"Certificate": open(cert, "rb").read(), "PrivateKey": open(key, "rb").read(),
          "CertificateArn": "arn:aws:acm:us-east-1:000000000000:certificate/nope"}, "InvalidArnException"),
    ]
    for args, code in cases:
        with pytest.raises(client.exceptions.ClientError) as raised:
            client.import_certificate(**args)
        assert raised.value.response["Error"]["Code"] == code, (args.keys(), raised.value.response)
    with pytest.raises(client.exceptions.ClientError) as raised:
        client.describe_certificate(CertificateArn="arn:aws:acm:us-east-1:123:certificate/x")
    assert raised.value.response["Error"]["Code"] == "InvalidArnException"
    assert client.list_certificates()["CertificateSummaryList"] == before
    # Keys are sealed at rest: no PEM key in the registry file.
    db = (server.data_dir / "registry.db").read_bytes()
    assert b"PRIVATE KEY" not in db


def test_server_cert_import_and_list_offline(server, openssl):
    account = server.create_account()
    root, cert, key = root_and_server_cert(openssl, "offline.example.com", "offline")
    proc = server.certfleet("server-cert", "import", "--data-dir", str(server.data_dir), "--account", account.id,
                            "--certificate", cert, "--private-key", key, "--chain", root, "--output", "json")
    arn = json.loads(proc.stdout)["CertificateArn"]
    assert f":{account.id}:certificate/" in arn
    listed = json.loads(server.certfleet("server-cert", "list", "--data-dir", str(server.data_dir), "--account",
                                         account.id, "--output", "json").stdout)["CertificateSummaryList"]
    assert [c["CertificateArn"] for c in listed] == [arn] and listed[0]["DomainName"] == "offline.example.com"
    # The running server sees it through the ACM API.
    assert acm(server, account.profile).describe_certificate(CertificateArn=arn)["Certificate"]["DomainName"] == \
        "offline.example.com"
    # Bad input: a key of another certificate; nothing is added.
    _, other, other_key = root_and_server_cert(openssl, "other-offline.example.com", "other-offline")
    proc = server.certfleet("server-cert", "import", "--data-dir", str(server.data_dir), "--account", account.id,
                            "--certificate", cert, "--private-key", other_key, check=False)
    assert proc.returncode != 0 and "does not match" in proc.stderr
    listed = json.loads(server.certfleet("server-cert", "list", "--data-dir", str(server.data_dir), "--account",
                                         account.id, "--output", "json").stdout)["CertificateSummaryList"]
    assert len(listed) == 1


def test_server_certificates_are_per_account(server, openssl):
    other = server.create_account()
    _, cert, key = root_and_server_cert(openssl, "mine.example.com", "mine")
    arn = import_cert(server, cert, key)
    with pytest.raises(acm(server).exceptions.ClientError) as raised:
        acm(server, other.profile).describe_certificate(CertificateArn=arn)
    assert raised.value.response["Error"]["Code"] in ("InvalidArnException", "ResourceNotFoundException")
    assert arn not in [c["CertificateArn"] for c in acm(server, other.profile).list_certificates()["CertificateSummaryList"]]


# ------------------------------------------------------------------------------------------------
# domain configurations, TLS policies, chains per domain
# ------------------------------------------------------------------------------------------------
def test_custom_domain_serves_its_chain_and_policy(server, openssl):
    domain = f"dev-{uuid.uuid4().hex[:6]}.example.com"
    root, cert, key = root_and_server_cert(openssl, domain, "custom")
    arn = import_cert(server, cert, key, chain=root)
    name = f"custom-{uuid.uuid4().hex[:6]}"
    created = server.aws("create-domain-configuration", "--domain-configuration-name", name, "--domain-name", domain,
                         "--server-certificate-arns", arn, "--tls-config",
                         "securityPolicy=IoTSecurityPolicy_TLS13_1_3_2022_10")
    assert created["domainConfigurationName"] == name
    assert created["domainConfigurationArn"].split(":domainconfiguration/")[1].startswith(f"{name}/")
    described = server.aws("describe-domain-configuration", "--domain-configuration-name", name)
    assert described["domainName"] == domain and described["domainType"] == "CUSTOMER_MANAGED"
    assert described["serverCertificates"][0]["serverCertificateArn"] == arn
    assert described["serverCertificates"][0]["serverCertificateStatus"] == "VALID"

    device = make_device(server, openssl)
    output, code = s_client(server, domain, "-tls1_3", cafile=root, device=device)
    assert code == 0 and "Verification: OK" in output, output
    assert f"CN = {domain}" in output or f"CN={domain}" in output
    output, code = s_client(server, domain, "-tls1_2", cafile=root, device=device)
    assert code != 0 and "alert protocol version" in output, output
    # The default endpoint still serves the server's own chain.
    output, code = s_client(server, "localhost", cafile=server.ca_bundle, device=device)
    assert code == 0, output

    # Policy change applies to the next handshake.
    server.aws("update-domain-configuration", "--domain-configuration-name", name, "--tls-config",
               "securityPolicy=IoTSecurityPolicy_TLS12_1_2_2022_10")
    wait_for(lambda: s_client(server, domain, "-tls1_2", cafile=root, device=device)[1] == 0, "TLS 1.2 accepted")
    output, code = s_client(server, domain, "-tls1_3", cafile=root, device=device)
    assert code != 0, output

    # Disabled: no handshake at all.
    server.aws("update-domain-configuration", "--domain-configuration-name", name,
               "--domain-configuration-status", "DISABLED")
    wait_for(lambda: s_client(server, domain, cafile=root, device=device)[1] != 0, "disabled endpoint refused")
    server.aws("delete-domain-configuration", "--domain-configuration-name", name)


def test_mosquitto_clients_connect_through_a_custom_domain(server, openssl):
    domain = f"mqtt-{uuid.uuid4().hex[:6]}.example.com"
    root, cert, key = root_and_server_cert(openssl, domain, "mq")
    arn = import_cert(server, cert, key)
    name = f"mq-{uuid.uuid4().hex[:6]}"
    server.aws("create-domain-configuration", "--domain-configuration-name", name, "--domain-name", domain,
               "--server-certificate-arns", arn)
    device = make_device(server, openssl)
    proxy = Socks5Proxy(gateway_addr(server))
    try:
        port = str(gateway_addr(server)[1])
        topic = f"e2e/{uuid.uuid4().hex[:8]}"
        base = ["-h", domain, "-p", port, "--proxy", f"socks5h://127.0.0.1:{proxy.port}", "--cafile", root,
                "--cert", device.cert, "--key", device.key]
        sub = subprocess.Popen(["mosquitto_sub", *base, "-t", topic, "-C", "1", "-W", "20"],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        deadline = time.monotonic() + 15
        while sub.poll() is None and time.monotonic() < deadline:
            pub = subprocess.run(["mosquitto_pub", *base, "-t", topic, "-m", "through-custom-domain"],
                                 capture_output=True, text=True, timeout=20)
            assert pub.returncode == 0, pub.stderr
            time.sleep(0.2)
        out, err = sub.communicate(timeout=5)
        assert out.strip() == "through-custom-domain", err
        # The same client, trusting only the server's own root, refuses the custom chain.
        pub = subprocess.run(["mosquitto_pub", *base[:-6], "--cafile", server.ca_bundle, "--cert", device.cert,
                              "--key", device.key, "-t", topic, "-m", "x"], capture_output=True, text=True, timeout=20)
        assert pub.returncode != 0
    finally:
        proxy.close()


def test_domain_configuration_bad_input(server, openssl):
    domain = f"bad-{uuid.uuid4().hex[:6]}.example.com"
    _, cert, key = root_and_server_cert(openssl, domain, "badcfg")
    arn = import_cert(server, cert, key)
    _, wrong_cert, wrong_key = root_and_server_cert(openssl, "elsewhere.example.com", "wrong")
    wrong_arn = import_cert(server, wrong_cert, wrong_key)
    before = server.aws("list-domain-configurations")["domainConfigurations"]
    cases = [
        (["--domain-configuration-name", "bad name", "--domain-name", domain, "--server-certificate-arns", arn],
         "InvalidRequestException"),
        (["--domain-configuration-name", "iot:Data-ATS", "--domain-name", domain, "--server-certificate-arns", arn],
         "InvalidRequestException"),
        (["--domain-configuration-name", "x1", "--domain-name", domain, "--server-certificate-arns", arn,
          "--tls-config", "securityPolicy=NoSuchPolicy"], "InvalidRequestException"),
        (["--domain-configuration-name", "x2", "--domain-name", domain, "--server-certificate-arns", wrong_arn],
         "CertificateValidationException"),
        (["--domain-configuration-name", "x3", "--domain-name", "x.iot.us-east-1.certfleet.local",
          "--server-certificate-arns", arn], "InvalidRequestException"),
        (["--domain-configuration-name", "x4", "--domain-name", domain, "--server-certificate-arns", arn,
          "--application-protocol", "MQTT_WSS"], "InvalidRequestException"),
        (["--domain-configuration-name", "x5", "--domain-name", domain, "--server-certificate-arns",
          arn.replace(arn.rsplit("/", 1)[1], "00000000-0000-4000-8000-000000000000")], "ResourceNotFoundException"),
    ]
    for args, code in cases:
        server.aws_error("create-domain-configuration", *args, code=code)
    server.aws_error("describe-domain-configuration", "--domain-configuration-name", "nope", code="ResourceNotFoundException")
    server.aws_error("delete-domain-configuration", "--domain-configuration-name", "iot:Data-ATS", code="InvalidRequestException")
    assert server.aws("list-domain-configurations")["domainConfigurations"] == before


def test_legacy_data_endpoint_serves_a_different_chain(server, openssl):
    account = server.create_account()
    legacy = server.aws("describe-endpoint", "--endpoint-type", "iot:Data", profile=account)["endpointAddress"]
    ats = server.aws("describe-endpoint", "--endpoint-type", "iot:Data-ATS", profile=account)["endpointAddress"]
    root, cert, key = root_and_server_cert(openssl, legacy, "legacy")
    arn = import_cert(server, cert, key, profile=account.profile)
    proc = server.certfleet("endpoint", "set-chain", "iot:Data", "--cert-arn", arn, "--data-dir", str(server.data_dir),
                            "--profile", account.profile, "--output", "json")
    assert json.loads(proc.stdout)["serverCertificates"][0]["serverCertificateArn"] == arn
    wait_for(lambda: "e2e root legacy" in s_client(server, legacy)[0], "the legacy endpoint to serve its own chain")
    output, _ = s_client(server, ats)
    assert "e2e root legacy" not in output and "certfleet server root CA" in output
    # Back to the built-in chain.
    server.certfleet("endpoint", "set-chain", "iot:Data", "--data-dir", str(server.data_dir), "--profile", account.profile)
    wait_for(lambda: "certfleet server root CA" in s_client(server, legacy)[0], "the built-in chain again")


def test_reserved_configurations_and_endpoints(server):
    listed = [c["domainConfigurationName"] for c in server.aws("list-domain-configurations")["domainConfigurations"]]
    for name in ("iot:Data-ATS", "iot:Data", "iot:Jobs", "iot:CredentialProvider", "certfleet:Test", "certfleet:LargeCert"):
        assert name in listed
    ats = server.aws("describe-domain-configuration", "--domain-configuration-name", "iot:Data-ATS")
    address = server.aws("describe-endpoint", "--endpoint-type", "iot:Data-ATS")["endpointAddress"]
    assert ats["domainName"] == address and ats["domainType"] == "ENDPOINT"
    assert ats["tlsConfig"]["securityPolicy"] == "IoTSecurityPolicy_TLS13_1_2_2022_10"
    for kind in ("iot:Data", "iot:Jobs", "iot:CredentialProvider"):
        assert server.aws("describe-endpoint", "--endpoint-type", kind)["endpointAddress"]
    server.aws_error("describe-endpoint", "--endpoint-type", "iot:Nope", code="InvalidRequestException")


# ------------------------------------------------------------------------------------------------
# server-root migration
# ------------------------------------------------------------------------------------------------
class Fleet:
    """TLS clients (one thread each, blocking sockets, so a refused chain is answered with a TLS
    alert as devices do) that stay connected and reconnect when closed, each with its own trust
    store; `leaf` records the server leaf each one saw on its last connection."""

    def __init__(self, server, device, domain: str, trust: dict[str, str]):
        self.addr = gateway_addr(server)
        self.domain = domain
        self.contexts = {}
        for client_id, cafile in trust.items():
            context = ssl.create_default_context(cafile=cafile)
            context.load_cert_chain(device.cert, device.key)
            self.contexts[client_id] = context
        self.leaf: dict[str, bytes] = {}
        self.stop = threading.Event()
        self.threads = [threading.Thread(target=self._client, args=(c,), daemon=True) for c in self.contexts]
        for thread in self.threads:
            thread.start()

    def _client(self, client_id: str):
        while not self.stop.is_set():
            try:
                with socket.create_connection(self.addr, timeout=10) as raw:
                    with self.contexts[client_id].wrap_socket(raw, server_hostname=self.domain) as tls:
                        self.leaf[client_id] = tls.getpeercert(binary_form=True)
                        tls.sendall(connect_packet(client_id))
                        head = tls.recv(4)
                        if len(head) < 4 or head[3] != 0:
                            raise ConnectionError(f"connack {head!r}")
                        tls.settimeout(5)
                        while not self.stop.is_set():
                            try:
                                if not tls.recv(1024):
                                    break
                            except socket.timeout:
                                tls.sendall(b"\xc0\x00")  # PINGREQ
            except (OSError, ssl.SSLError, ConnectionError):
                pass
            self.stop.wait(0.3 + (hash(client_id) % 100) / 200)

    def close(self):
        self.stop.set()
        for thread in self.threads:
            thread.join(timeout=20)


def test_migration_drain_report_revert_and_guard(server, openssl):
    domain = f"mig-{uuid.uuid4().hex[:6]}.example.com"
    root_a, cert_a, key_a = root_and_server_cert(openssl, domain, "A")
    root_b, cert_b, key_b = root_and_server_cert(openssl, domain, "B")
    both = openssl.write("both-roots.pem", open(root_a).read() + open(root_b).read())
    arn_a, arn_b = import_cert(server, cert_a, key_a), import_cert(server, cert_b, key_b)
    id_a, id_b = arn_a.rsplit("/", 1)[1], arn_b.rsplit("/", 1)[1]
    name = f"mig-{uuid.uuid4().hex[:6]}"
    server.aws("create-domain-configuration", "--domain-configuration-name", name, "--domain-name", domain,
               "--server-certificate-arns", arn_a)
    device = make_device(server, openssl)
    old_only = [f"old-only-{i:03}" for i in range(100)]
    trusting_both = [f"both-{i:03}" for i in range(100)]
    trust = {c: root_a for c in old_only} | {c: str(both) for c in trusting_both}
    fleet = Fleet(server, device, domain, trust)
    try:
        wait_for(lambda: connected_on(status(server, name), id_a) == 200, "200 clients on chain A", timeout=120)

        migrated = endpoint_cli(server, "migrate", name, "--next-cert-arn", arn_b, "--drain-per-second", "200")
        assert migrated["certfleet"]["serving"] == "next"

        def drained():
            report = status(server, name)
            drain = report.get("drain") or {}
            return report if drain.get("closed") == 200 and len(drain.get("cameBack", [])) == 100 else None
        report = wait_for(drained, "the drain to finish with 100 back", timeout=120)
        time.sleep(2)
        report = status(server, name)
        assert sorted(report["drain"]["notBack"]) == old_only
        assert sorted(report["drain"]["cameBack"]) == trusting_both
        chain_b = next(c for c in report["chains"] if c["chain"] == id_b)
        assert chain_b["serving"] and chain_b["connected"] == 100
        assert chain_b["handshakesFailed"].get("unknown_ca", 0) >= 100, chain_b
        assert all(fleet.leaf[c] != fleet.leaf[old_only[0]] for c in trusting_both)

        metrics = scrape_metrics(server)
        failed = [line for line in metrics.splitlines() if line.startswith("certfleet_endpoint_handshakes_failed_total{")
                  and f'configuration="{name}"' in line and f'chain="{id_b}"' in line and 'alert="unknown_ca"' in line]
        assert failed and int(failed[0].rsplit(" ", 1)[1]) >= 100, failed
        assert f'certfleet_endpoint_connected{{account="{report["domainConfigurationArn"].split(":")[4]}",configuration="{name}",chain="{id_b}"}} 100' in metrics
        assert f'configuration="{name}",state="closed"}} 200' in metrics
        # The broker's delivery counters are exported too; nothing was dropped for a slow reader.
        assert "# TYPE certfleet_broker_routed_total counter" in metrics
        assert "certfleet_broker_dropped_queue_full_total 0" in metrics

        text = server.certfleet("endpoint", "status", name, "--data-dir", str(server.data_dir)).stdout
        assert "not back: old-only-000" in text and "came back on the new chain: 100" in text

        reverted = endpoint_cli(server, "revert", name)
        assert reverted["certfleet"]["serving"] == "current"
        wait_for(lambda: connected_on(status(server, name), id_a) == 200, "all 200 back on chain A", timeout=120)

        # The guard: the same migration reverts by itself once 20 handshakes fail.
        endpoint_cli(server, "migrate", name, "--drain-per-second", "200", "--guard-max-failures", "20")
        report = wait_for(lambda: (lambda r: r if r["certfleet"]["serving"] == "current" else None)(status(server, name)),
                          "the guard to revert", timeout=120)
        assert "guard: 20 handshakes failed" in report["certfleet"]["migration"]["revertReason"]
        assert report["drain"]["guardTripped"]
        wait_for(lambda: connected_on(status(server, name), id_a) == 200, "all 200 back after the guard", timeout=120)
    finally:
        fleet.close()


def scrape_metrics(server) -> str:
    host, port = server.endpoints["metrics_addr"].rsplit(":", 1)
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        sock.sendall(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    head, body = data.split(b"\r\n\r\n", 1)
    assert head.startswith(b"HTTP/1.1 200"), head
    return body.decode()


def test_metrics_export_refusals_and_endpoints(server):
    metrics = scrape_metrics(server)
    assert "# TYPE certfleet_gateway_refusals_total counter" in metrics
    assert 'certfleet_gateway_refusals_total{reason="Revoked"}' in metrics
    assert "certfleet_gateway_handshakes_completed_total" in metrics


def test_migration_bad_input(server):
    proc = server.certfleet("endpoint", "migrate", "iot:Data", "--data-dir", str(server.data_dir), check=False)
    assert proc.returncode != 0 and "no next chain" in proc.stderr
    proc = server.certfleet("endpoint", "revert", "iot:Data", "--data-dir", str(server.data_dir), check=False)
    assert proc.returncode != 0 and "not migrating" in proc.stderr
    proc = server.certfleet("endpoint", "status", "nope", "--data-dir", str(server.data_dir), check=False)
    assert proc.returncode != 0 and "404" in proc.stderr and "does not exist" in proc.stderr


# ------------------------------------------------------------------------------------------------
# test endpoint and large-certificate endpoint
# ------------------------------------------------------------------------------------------------
def test_test_endpoint_completes_tls_and_refuses_connect_with_a_reason(server, openssl):
    host = server.aws("describe-endpoint", "--endpoint-type", "certfleet:Test")["endpointAddress"]
    # Any client certificate, even a self-signed one nobody registered.
    stranger = openssl.self_signed_leaf("stranger")
    key = str(openssl.path("stranger.key"))
    client_id = f"probe-{uuid.uuid4().hex[:6]}"
    context = ssl.create_default_context(cafile=server.ca_bundle)
    context.check_hostname = False
    context.load_cert_chain(str(openssl.path(stranger)), key)
    with socket.create_connection(gateway_addr(server), timeout=10) as raw:
        with context.wrap_socket(raw, server_hostname=host) as tls:
            tls.sendall(connect_packet(client_id, level=5))
            data = tls.recv(4096)
    i = 1
    while data[i] & 0x80:
        i += 1
    assert data[0] == 0x20 and data[i + 2] == 0x87, data  # flags, then reason code 0x87 not authorized
    assert b"certfleet test endpoint" in data
    # mosquitto_pub: handshake fine, CONNACK refused.
    proxy = Socks5Proxy(gateway_addr(server))
    try:
        pub = subprocess.run(["mosquitto_pub", "-h", host, "-p", str(gateway_addr(server)[1]), "--proxy",
                              f"socks5h://127.0.0.1:{proxy.port}", "--cafile", server.ca_bundle, "--cert",
                              str(openssl.path(stranger)), "--key", key, "-i", client_id + "-mosq", "-t", "x", "-m", "x"],
                             capture_output=True, text=True, timeout=20)
    finally:
        proxy.close()
    assert pub.returncode != 0
    results = wait_for(
        lambda: [r for r in server_api_results(server) if r["clientId"] in (client_id, client_id + "-mosq")
                 and r["outcome"] == "connect_refused"], "results recorded")
    assert {r["clientId"] for r in results} >= {client_id}
    assert all(r["tlsVersion"] for r in results)


def server_api_results(server) -> list:
    import urllib.request

    import botocore.auth
    import botocore.awsrequest
    import botocore.credentials

    akid, secret = server.credentials()
    request = botocore.awsrequest.AWSRequest(method="GET", url=f"{server.url}/certfleet/test-endpoint-results")
    botocore.auth.SigV4Auth(botocore.credentials.Credentials(akid, secret), "iot", "us-east-1").add_auth(request)
    context = ssl.create_default_context(cafile=server.ca_bundle)
    req = urllib.request.Request(request.url, headers=dict(request.headers.items()), method="GET")
    with urllib.request.urlopen(req, context=context, timeout=10) as response:
        return json.loads(response.read())["results"]


def test_large_certificate_endpoint_serves_over_16_kib(server, openssl):
    host = server.aws("describe-endpoint", "--endpoint-type", "certfleet:LargeCert")["endpointAddress"]
    device = make_device(server, openssl)
    output, code = s_client(server, host, cafile=server.ca_bundle, device=device)
    assert code == 0 and "Verification: OK" in output, output
    pems = [block for block in output.split("-----BEGIN CERTIFICATE-----")[1:]]
    assert len("".join(pems)) * 3 // 4 >= 16 * 1024, "the served chain is at least 16 KiB"
    # A device connects through it like through the data endpoint.
    context = ssl.create_default_context(cafile=server.ca_bundle)
    context.check_hostname = False
    context.load_cert_chain(device.cert, device.key)
    with socket.create_connection(gateway_addr(server), timeout=10) as raw:
        with context.wrap_socket(raw, server_hostname=host) as tls:
            tls.sendall(connect_packet(f"large-{uuid.uuid4().hex[:6]}"))
            assert tls.recv(4)[3] == 0


# ------------------------------------------------------------------------------------------------
# the test and large-certificate endpoints with real device software: the AWS IoT Device SDK v2
# for Python and certfleet-agent
# ------------------------------------------------------------------------------------------------
class ConnectProxy:
    """A minimal HTTP CONNECT proxy that tunnels every CONNECT to the gateway, whatever host the
    client asked for (the SDK then sends the endpoint's host name as SNI without DNS). Records
    the requested authorities."""

    def __init__(self, target: tuple[str, int]):
        self.target = target
        self.requested: list[str] = []
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self):
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            threading.Thread(target=self._handle, args=(client,), daemon=True).start()

    def _handle(self, client):
        try:
            client.settimeout(10)
            head = b""
            while b"\r\n\r\n" not in head:
                chunk = client.recv(4096)
                if not chunk:
                    raise OSError("closed before the request ended")
                head += chunk
            request, rest = head.split(b"\r\n\r\n", 1)
            method, authority, _ = request.split(b"\r\n", 1)[0].decode().split(" ", 2)
            if method != "CONNECT":
                client.sendall(b"HTTP/1.1 405 Method Not Allowed\r\nContent-Length: 0\r\n\r\n")
                client.close()
                return
            self.requested.append(authority)
            upstream = socket.create_connection(self.target, timeout=10)
            client.settimeout(None)
            upstream.settimeout(None)
            client.sendall(b"HTTP/1.1 200 Connection established\r\n\r\n")
            if rest:
                upstream.sendall(rest)
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=Socks5Proxy._pipe, args=(a, b), daemon=True).start()
        except (OSError, ValueError):
            client.close()

    def close(self):
        self.listener.close()


def sdk_connection(server, device, host: str, client_id: str, proxy: ConnectProxy):
    from awscrt import http
    from awsiot import mqtt_connection_builder

    return mqtt_connection_builder.mtls_from_path(
        endpoint=host,
        port=gateway_addr(server)[1],
        cert_filepath=device.cert,
        pri_key_filepath=device.key,
        ca_filepath=server.ca_bundle,
        client_id=client_id,
        clean_session=True,
        keep_alive_secs=30,
        http_proxy_options=http.HttpProxyOptions(host_name="127.0.0.1", port=proxy.port),
    )


def test_device_sdk_connects_through_the_large_certificate_endpoint_and_is_refused_by_the_test_endpoint(
    server, openssl
):
    from awscrt import mqtt

    large = server.aws("describe-endpoint", "--endpoint-type", "certfleet:LargeCert")["endpointAddress"]
    test = server.aws("describe-endpoint", "--endpoint-type", "certfleet:Test")["endpointAddress"]
    device = make_device(server, openssl)
    proxy = ConnectProxy(gateway_addr(server))
    try:
        # Large certificate endpoint: connects and publishes.
        client_id = f"sdk-large-{uuid.uuid4().hex[:6]}"
        connection = sdk_connection(server, device, large, client_id, proxy)
        connection.connect().result(timeout=20)
        try:
            publish, _ = connection.publish(topic=f"e2e/sdk/{client_id}", payload=b"{}", qos=mqtt.QoS.AT_LEAST_ONCE)
            publish.result(timeout=20)
        finally:
            connection.disconnect().result(timeout=20)
        assert any(a.startswith(large) for a in proxy.requested), proxy.requested

        # Test endpoint: the handshake completes, the CONNECT is refused.
        probe_id = f"sdk-test-{uuid.uuid4().hex[:6]}"
        connection = sdk_connection(server, device, test, probe_id, proxy)
        with pytest.raises(Exception):
            connection.connect().result(timeout=20)
        assert any(a.startswith(test) for a in proxy.requested), proxy.requested
    finally:
        proxy.close()
    results = wait_for(lambda: [r for r in server_api_results(server) if r["clientId"] == probe_id],
                       "the test endpoint's record of the SDK client", timeout=20)
    assert results[0]["outcome"] == "connect_refused", results
    assert results[0]["tlsVersion"], results
    assert not [r for r in server_api_results(server) if r["clientId"] == client_id]


def write_agent_config(openssl, server, device, server_name: str, client_id: str) -> str:
    import shutil as _shutil

    base = openssl.path(f"agent-{client_id}")
    current = base / "credentials" / "current"
    current.mkdir(parents=True)
    _shutil.copy(device.cert, current / "cert.pem")
    _shutil.copy(device.key, current / "key.pem")
    host, port = gateway_addr(server)
    config = base / "agent.toml"
    config.write_text(
        f'endpoint = "{host}:{port}"\n'
        f'server_name = "{server_name}"\n'
        f'client_id = "{client_id}"\n'
        f'credentials_dir = "{base / "credentials"}"\n'
        f'server_trust_bundle = "{server.ca_bundle}"\n'
        f'device_trust_bundle = "{server.device_root}"\n'
        f'connect_timeout = "5s"\n'
        "[backoff]\n"
        'initial = "200ms"\n'
        'max = "1s"\n'
    )
    return str(config)


def run_agent_until(agent_bin: str, config: str, log_path, predicate, timeout: float = 30) -> str:
    """Runs `certfleet-agent run` until its log satisfies `predicate` (or the timeout), stops it,
    and returns the log."""
    env = dict(os.environ, RUST_LOG="info", NO_COLOR="1")
    with open(log_path, "wb") as log:
        proc = subprocess.Popen([agent_bin, "run", "--config", config, "--log-format", "json"],
                                stdout=log, stderr=subprocess.STDOUT, env=env)
        try:
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline and proc.poll() is None:
                if predicate(Path(log_path).read_text(errors="replace")):
                    break
                time.sleep(0.2)
        finally:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait(timeout=10)
    return Path(log_path).read_text(errors="replace")


def agent_events(log: str) -> list[dict]:
    events = []
    for line in log.splitlines():
        try:
            events.append(json.loads(line))
        except ValueError:
            pass
    return events


def event_message(event: dict) -> str:
    fields = event.get("fields", {})
    return str(fields.get("message", event.get("message", "")))


def test_agent_connects_through_the_large_certificate_endpoint_and_is_refused_by_the_test_endpoint(
    server, openssl, agent_bin
):
    large = server.aws("describe-endpoint", "--endpoint-type", "certfleet:LargeCert")["endpointAddress"]
    test = server.aws("describe-endpoint", "--endpoint-type", "certfleet:Test")["endpointAddress"]
    device = make_device(server, openssl)

    client_id = f"agent-large-{uuid.uuid4().hex[:6]}"
    config = write_agent_config(openssl, server, device, large, client_id)
    log = run_agent_until(agent_bin, config, openssl.path(f"{client_id}.log"),
                          lambda text: any(event_message(e) == "connected" for e in agent_events(text)))
    connected = [e for e in agent_events(log) if event_message(e) == "connected"]
    assert connected, log
    assert client_id in json.dumps(connected[0]), connected[0]
    status = subprocess.run([agent_bin, "status", "--config", config, "--output", "json"],
                            capture_output=True, text=True, timeout=20)
    assert status.returncode == 0, status.stderr
    assert device.cert_id in status.stdout, status.stdout

    probe_id = f"agent-test-{uuid.uuid4().hex[:6]}"
    config = write_agent_config(openssl, server, device, test, probe_id)
    log = run_agent_until(agent_bin, config, openssl.path(f"{probe_id}.log"),
                          lambda text: any(event_message(e) == "connection failed" for e in agent_events(text)))
    events = agent_events(log)
    assert not [e for e in events if event_message(e) == "connected"], log
    assert [e for e in events if event_message(e) == "connection failed"], log
    results = wait_for(lambda: [r for r in server_api_results(server) if r["clientId"] == probe_id],
                       "the test endpoint's record of the agent", timeout=20)
    assert results[0]["outcome"] == "connect_refused", results


# ------------------------------------------------------------------------------------------------
# domain claims
# ------------------------------------------------------------------------------------------------
LEAF_EXT = ("basicConstraints=critical,CA:FALSE\nkeyUsage=critical,digitalSignature,keyEncipherment\n"
            "extendedKeyUsage=serverAuth\nsubjectAltName=DNS:{names}\n")


def trusted_cert(server, openssl, names: str, label: str, intermediate: bool = False):
    """A certificate for `names` (comma-separated SAN text) chaining to the server's trust
    store, directly or through an intermediate: (cert, key, chain or None)."""
    ca, ca_key, chain = server.trust_root, server.trust_key, None
    if intermediate:
        ca_key = openssl.ec_key(f"int-{label}.key")
        csr = openssl.csr(f"int-{label}", ca_key, f"e2e intermediate {label}")
        ca = openssl.sign(csr, server.trust_root, server.trust_key, f"int-{label}.pem",
                          ext="basicConstraints=critical,CA:TRUE\nkeyUsage=critical,keyCertSign,cRLSign\n")
        chain = str(openssl.path(ca))
        ca, ca_key = str(openssl.path(ca)), str(openssl.path(ca_key))
    key = openssl.ec_key(f"v-{label}.key")
    csr = openssl.csr(f"v-{label}", key, names.split(",")[0])
    cert = openssl.sign(csr, ca, ca_key, f"v-{label}.pem", ext=LEAF_EXT.format(names=",DNS:".join(names.split(","))))
    return str(openssl.path(cert)), str(openssl.path(key)), chain


def served_leaf(server, domain: str, cafile: str, device) -> str:
    """The leaf certificate a handshake with SNI `domain` gets (PEM), verified against `cafile`."""
    output, _ = s_client(server, domain, cafile=cafile, device=device)
    assert "Verification: OK" in output, output
    start = output.index("-----BEGIN CERTIFICATE-----")
    end = output.index("-----END CERTIFICATE-----", start) + len("-----END CERTIFICATE-----")
    return output[start:end]


def claim_error(call, code: str, **kwargs) -> ClientError:
    try:
        result = call(**kwargs)
    except ClientError as e:
        assert e.response["Error"]["Code"] == code, e.response
        assert e.response["ResponseMetadata"]["HTTPStatusCode"] in (400, 404, 409), e.response
        assert e.response["Error"]["Message"], e.response
        return e
    pytest.fail(f"expected {code}, but the call succeeded: {result}")


def test_another_account_cannot_take_change_or_delete_a_claimed_domain(server, openssl):
    """Tenant B against the domain tenant A's devices use: every attempt is refused with the
    AWS error, A's configuration is intact, and A's devices still get A's certificate."""
    domain = f"victim-{uuid.uuid4().hex[:6]}.example.com"
    a = server.client("default")
    # A claims it under the suffix the operator allows A, with a private root's certificate.
    a_root, a_cert, a_key = root_and_server_cert(openssl, domain, "victim")
    a_arn = import_cert(server, a_cert, a_key, chain=a_root)
    name = f"devices-{uuid.uuid4().hex[:6]}"
    a.create_domain_configuration(domainConfigurationName=name, domainName=domain, serverCertificateArns=[a_arn])
    before = a.describe_domain_configuration(domainConfigurationName=name)
    before.pop("ResponseMetadata")
    device = make_device(server, openssl)
    a_leaf = open(a_cert).read().strip()
    assert served_leaf(server, domain, a_root, device) == a_leaf

    b_account = server.create_account()
    b = server.client(b_account)
    # B with no proof (a certificate of its own private root naming the domain).
    b_root, b_cert, b_key = root_and_server_cert(openssl, domain, "attacker")
    b_private = import_cert(server, b_cert, b_key, chain=b_root, profile=b_account.profile)
    for claim_name in (name, "takeover"):
        claim_error(b.create_domain_configuration, "CertificateValidationException",
                    domainConfigurationName=claim_name, domainName=domain, serverCertificateArns=[b_private])
    # B with a proof (a publicly trusted certificate for the name), as a server certificate or
    # as validationCertificateArn: the name is taken; the answer does not say by whom.
    v_cert, v_key, _ = trusted_cert(server, openssl, domain, "attacker-proof")
    b_trusted = import_cert(server, v_cert, v_key, profile=b_account.profile)
    for extra in ({"serverCertificateArns": [b_trusted]},
                  {"serverCertificateArns": [b_private], "validationCertificateArn": b_trusted}):
        error = claim_error(b.create_domain_configuration, "ResourceAlreadyExistsException",
                            domainConfigurationName="takeover", domainName=domain.upper() + ".", **extra)
        assert server.default_account.id not in json.dumps(error.response, default=str), error.response
    # B changing or deleting A's configuration by its name only reaches B's own (none).
    claim_error(b.update_domain_configuration, "ResourceNotFoundException", domainConfigurationName=name,
                domainConfigurationStatus="DISABLED")
    claim_error(b.delete_domain_configuration, "ResourceNotFoundException", domainConfigurationName=name)
    claim_error(b.describe_domain_configuration, "ResourceNotFoundException", domainConfigurationName=name)
    assert [c["domainConfigurationName"] for c in b.list_domain_configurations()["domainConfigurations"]
            if ":" not in c["domainConfigurationName"]] == []

    after = a.describe_domain_configuration(domainConfigurationName=name)
    after.pop("ResponseMetadata")
    assert after == before
    assert served_leaf(server, domain, a_root, device) == a_leaf

    # A lets it go: B, still without proof, cannot take it while A's devices keep connecting.
    a.delete_domain_configuration(domainConfigurationName=name)
    claim_error(b.create_domain_configuration, "CertificateValidationException",
                domainConfigurationName="takeover", domainName=domain, serverCertificateArns=[b_private])


def test_a_claim_is_proven_by_a_validation_certificate_chaining_to_the_trust_store(server, openssl):
    account = server.create_account()
    client = server.client(account)
    domain = f"b-{uuid.uuid4().hex[:6]}.example.net"
    root, cert, key = root_and_server_cert(openssl, domain, "b")
    served = import_cert(server, cert, key, chain=root, profile=account.profile)

    def claim(name, **extra):
        return client.create_domain_configuration(domainConfigurationName=name, domainName=domain,
                                                  serverCertificateArns=[served], **extra)

    def custom():
        return [c["domainConfigurationName"] for c in client.list_domain_configurations()["domainConfigurations"]
                if ":" not in c["domainConfigurationName"]]

    other_cert, other_key, _ = trusted_cert(server, openssl, f"other-{domain}", "other")
    names_other = import_cert(server, other_cert, other_key, profile=account.profile)
    _, private_cert, private_key = root_and_server_cert(openssl, domain, "private")
    untrusted = import_cert(server, private_cert, private_key, profile=account.profile)
    for label, extra in [
        ("no proof", {}),
        ("names another domain", {"validationCertificateArn": names_other}),
        ("does not chain to the trust store", {"validationCertificateArn": untrusted}),
    ]:
        e = claim_error(claim, "CertificateValidationException", name="b", **extra)
        assert custom() == [], label
        assert "validation" in e.response["Error"]["Message"] or "proven" in e.response["Error"]["Message"], label
    # An allowed suffix of another account (the default one's example.com) is no proof here.
    ex_domain = f"b.{uuid.uuid4().hex[:6]}.example.com"
    ex_root, ex_cert, ex_key = root_and_server_cert(openssl, ex_domain, "ex")
    ex_arn = import_cert(server, ex_cert, ex_key, chain=ex_root, profile=account.profile)
    claim_error(client.create_domain_configuration, "CertificateValidationException", domainConfigurationName="ex",
                domainName=ex_domain, serverCertificateArns=[ex_arn])
    assert custom() == []

    # Through an intermediate (the chain imported with it), naming the domain by a wildcard.
    v_cert, v_key, chain = trusted_cert(server, openssl, f"*.example.net,{domain}", "proof", intermediate=True)
    proof = import_cert(server, v_cert, v_key, chain=chain, profile=account.profile)
    claim("b", validationCertificateArn=proof)
    assert custom() == ["b"]
    # The handshake for the domain gets this account's server certificate.
    assert served_leaf(server, domain, root, make_device(server, openssl)) == open(cert).read().strip()
    client.delete_domain_configuration(domainConfigurationName="b")


def test_reserved_names_cannot_be_claimed(server, openssl):
    a = server.client("default")
    for domain, label in [("x.iot.us-east-1.certfleet.local", "endpoint"), ("certfleet.local", "endpoint-domain")]:
        v_cert, v_key, _ = trusted_cert(server, openssl, domain, label)
        arn = import_cert(server, v_cert, v_key)
        claim_error(a.create_domain_configuration, "InvalidRequestException",
                    domainConfigurationName=f"r-{label}", domainName=domain, serverCertificateArns=[arn])
