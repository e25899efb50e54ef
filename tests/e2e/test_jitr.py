"""Just-in-time registration (JITR) end to end: devices presenting certificates from a registered
CA that allows auto-registration are registered PENDING_ACTIVATION and refused, a subscriber on
`$aws/events/certificates/registered/<caCertificateId>` receives one AWS registration event per
certificate, and once activated (with a policy attached) every device connects."""

from __future__ import annotations

import json
import subprocess
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor

from test_gateway import Device, gateway_addr, mosquitto

DEVICES = 100
WORKERS = 16

ALLOW_ALL_POLICY = "e2e-allow-all"
ALLOW_ALL_DOCUMENT = json.dumps(
    {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "iot:*", "Resource": "*"}]}
)


def allow_all_policy(client) -> str:
    """The permissive test policy of the client's account, created on first use."""
    try:
        client.create_policy(policyName=ALLOW_ALL_POLICY, policyDocument=ALLOW_ALL_DOCUMENT)
    except client.exceptions.ResourceAlreadyExistsException:
        pass
    return ALLOW_ALL_POLICY


def subscriber_device(server, openssl) -> Device:
    """An ACTIVE certificate issued from a CSR, with the permissive policy attached."""
    name = f"jitr-sub-{uuid.uuid4().hex[:8]}"
    key = openssl.ec_key(f"{name}.key")
    client = server.client()
    created = client.create_certificate_from_csr(
        certificateSigningRequest=openssl.read(openssl.csr(name, key, name)), setAsActive=True
    )
    client.attach_policy(policyName=allow_all_policy(client), target=created["certificateArn"])
    return Device(str(openssl.write(f"{name}.crt", created["certificatePem"])), str(openssl.path(key)),
                  created["certificateId"])


def register_auto_registering_ca(server, openssl) -> tuple[str, str, str]:
    """A new CA registered in the default account with `--set-as-active --allow-auto-registration`
    (AWS CLI): (its certificate file, its key file, its certificate ID)."""
    name = openssl.unique("jitr-ca")
    ca, ca_key = openssl.self_signed_ca(name)
    code = server.aws("get-registration-code")["registrationCode"]
    verification = openssl.verification_cert(f"{name}-verify", ca, ca_key, code)
    out = server.aws(
        "register-ca-certificate",
        "--ca-certificate", f"file://{openssl.path(ca)}",
        "--verification-certificate", f"file://{openssl.path(verification)}",
        "--set-as-active", "--allow-auto-registration",
    )
    described = server.aws("describe-ca-certificate", "--certificate-id", out["certificateId"])
    assert described["certificateDescription"]["autoRegistrationStatus"] == "ENABLE", described
    assert described["certificateDescription"]["status"] == "ACTIVE", described
    return ca, ca_key, out["certificateId"]


def device_certificates(openssl, ca: str, ca_key: str, count: int) -> tuple[str, list[str]]:
    """`count` distinct certificates (serials 1..count) for one key, signed by the CA."""
    key = openssl.ec_key(openssl.unique("jitr-device") + ".key")
    csr = openssl.csr(openssl.unique("jitr-device"), key, "jitr-device")
    ext = openssl.write(openssl.unique("jitr-ext"), "basicConstraints=critical,CA:FALSE\nkeyUsage=critical,digitalSignature\n")

    def sign(serial: int) -> str:
        out = f"{csr}-{serial}.pem"
        openssl("x509", "-req", "-in", csr, "-CA", ca, "-CAkey", ca_key, "-set_serial", serial, "-sha256",
                "-days", 30, "-extfile", ext.name, "-out", out)
        return str(openssl.path(out))

    with ThreadPoolExecutor(WORKERS) as pool:
        return str(openssl.path(key)), list(pool.map(sign, range(1, count + 1)))


class EventSubscriber:
    """`mosquitto_sub -d` on the registration topic: the debug lines say when SUBACK arrived, the
    other lines are the events' payloads."""

    def __init__(self, server, device: Device, topic: str, count: int):
        host, port = gateway_addr(server)
        self.proc = subprocess.Popen(
            # Line-buffered, so that SUBACK is seen when it arrives.
            ["stdbuf", "-oL", "mosquitto_sub", "-h", host, "-p", str(port), "--cafile", server.ca_bundle, "--cert", device.cert,
             "--key", device.key, "-V", "mqttv311", "-q", "1", "-t", topic, "-C", str(count), "-W", "90", "-d",
             "-i", f"jitr-sub-{uuid.uuid4().hex[:8]}"],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )
        self.subscribed = threading.Event()
        self.payloads: list[dict] = []
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self) -> None:
        for line in self.proc.stdout:
            line = line.strip()
            if line.startswith("Client "):
                if "received SUBACK" in line:
                    self.subscribed.set()
            elif line.startswith("{"):
                self.payloads.append(json.loads(line))

    def wait(self, timeout: float) -> None:
        self.proc.wait(timeout=timeout)
        self.reader.join(timeout=5)


def test_jitr_registers_refuses_announces_then_admits_a_hundred_devices(server, openssl):
    client = server.client()
    account = server.default_account.id
    ca, ca_key, ca_id = register_auto_registering_ca(server, openssl)
    key, certs = device_certificates(openssl, ca, ca_key, DEVICES)
    ids = {openssl.fingerprint(cert) for cert in certs}
    assert len(ids) == DEVICES, "every certificate is distinct"

    topic = f"$aws/events/certificates/registered/{ca_id}"
    subscriber = EventSubscriber(server, subscriber_device(server, openssl), topic, DEVICES)
    try:
        assert subscriber.subscribed.wait(20), "the subscriber never got its SUBACK"
        started = time.time()

        def connect(cert: str) -> subprocess.CompletedProcess:
            return mosquitto("mosquitto_pub", server, Device(cert, key, ""), "-t", "e2e/jitr", "-m", "hello",
                             "-i", f"jitr-{uuid.uuid4().hex[:12]}")

        with ThreadPoolExecutor(WORKERS) as pool:
            first = list(pool.map(connect, certs))
        refused = [r for r in first if r.returncode != 0 and "not authori" in (r.stderr + r.stdout).lower()]
        assert len(refused) == DEVICES, [r.stderr for r in first if r not in refused][:3]

        subscriber.wait(timeout=60)
        assert subscriber.proc.returncode == 0, subscriber.proc.stderr.read()
    finally:
        if subscriber.proc.poll() is None:
            subscriber.proc.kill()
            subscriber.proc.wait()

    assert len(subscriber.payloads) == DEVICES
    assert {event["certificateId"] for event in subscriber.payloads} == ids, "one event per certificate"
    for event in subscriber.payloads:
        assert set(event) == {"certificateId", "caCertificateId", "timestamp", "certificateStatus", "awsAccountId",
                              "certificateRegistrationTimestamp"}, event
        assert event["caCertificateId"] == ca_id
        assert event["certificateStatus"] == "PENDING_ACTIVATION"
        assert event["awsAccountId"] == account
        assert started - 60 <= event["timestamp"] / 1000 <= time.time() + 60, event

    listed = client.list_certificates_by_ca(caCertificateId=ca_id, pageSize=250)["certificates"]
    assert {c["certificateId"] for c in listed} == ids
    assert {c["status"] for c in listed} == {"PENDING_ACTIVATION"}
    described = client.describe_certificate(certificateId=next(iter(ids)))["certificateDescription"]
    assert described["caCertificateId"] == ca_id and described["status"] == "PENDING_ACTIVATION", described

    # The operator activates every certificate and attaches a policy.
    policy = allow_all_policy(client)

    # One boto3 client per thread (the fixture's cache is not meant for threads).
    local = threading.local()

    def activate_in_thread(cert_id: str) -> None:
        if not hasattr(local, "client"):
            local.client = server.boto3_client()
        local.client.update_certificate(certificateId=cert_id, newStatus="ACTIVE")
        arn = local.client.describe_certificate(certificateId=cert_id)["certificateDescription"]["certificateArn"]
        local.client.attach_policy(policyName=policy, target=arn)

    with ThreadPoolExecutor(8) as pool:
        list(pool.map(activate_in_thread, sorted(ids)))
    listed = client.list_certificates_by_ca(caCertificateId=ca_id, pageSize=250)["certificates"]
    assert {c["status"] for c in listed} == {"ACTIVE"}

    # Every device now connects (the gateway follows the change feed within a second or so).
    def connect_until_accepted(cert: str) -> subprocess.CompletedProcess:
        deadline = time.monotonic() + 10
        while True:
            result = mosquitto("mosquitto_pub", server, Device(cert, key, ""), "-t", "e2e/jitr", "-m", "hello",
                               "-i", f"jitr-{uuid.uuid4().hex[:12]}")
            if result.returncode == 0 or time.monotonic() > deadline:
                return result
            time.sleep(0.2)

    with ThreadPoolExecutor(WORKERS) as pool:
        second = list(pool.map(connect_until_accepted, certs))
    failed = [r.stderr for r in second if r.returncode != 0]
    assert not failed, failed[:3]
