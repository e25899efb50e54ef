"""Fleet provisioning by claim (docs/provisioning.md): a device connected with a shared claim
certificate gets its own certificate over MQTT and registers itself through a FLEET_PROVISIONING
template, driven by the AWS IoT Device SDK v2 for Python's identity clients (the one of the SDK's
current fleet-provisioning sample, over MQTT 5, and the classic one over MQTT 3.1.1) and by
mosquitto clients with JSON and CBOR payloads. Then every way it is refused."""

from __future__ import annotations

import concurrent.futures
import json
import subprocess
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import cbor2
import pytest

from test_gateway import Device, allow_all_policy, gateway_addr, make_device, mosquitto, mqtt_string, packet, read_exactly
from test_policy_enforcement import connected_v5, publish_v5

ROLE_ARN = "arn:aws:iam::123456789012:role/certfleet-provisioning"


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def subscribe_v5(sock, topic_filter: str, packet_id: int) -> int:
    """Subscribes at QoS 1 on an MQTT 5 connection; returns the SUBACK reason code."""
    body = packet_id.to_bytes(2, "big") + b"\x00" + mqtt_string(topic_filter) + b"\x01"
    sock.sendall(packet(0x82, body))
    head = read_exactly(sock, 2)
    assert len(head) == 2 and head[0] == 0x90, f"expected SUBACK, got {head!r}"
    rest = read_exactly(sock, head[1])
    assert int.from_bytes(rest[:2], "big") == packet_id
    return rest[-1]


def claim_policy_document(template: str) -> str:
    """The claim policy docs/provisioning.md recommends: connect, and the provisioning topics of
    one template, nothing else."""
    topics = [
        "$aws/certificates/create/*",
        "$aws/certificates/create-from-csr/*",
        f"$aws/provisioning-templates/{template}/provision/*",
    ]
    return json.dumps({
        "Version": "2012-10-17",
        "Statement": [
            {"Effect": "Allow", "Action": "iot:Connect", "Resource": "*"},
            {"Effect": "Allow", "Action": ["iot:Publish", "iot:Receive"],
             "Resource": [f"arn:aws:iot:*:*:topic/{topic}" for topic in topics]},
            {"Effect": "Allow", "Action": "iot:Subscribe",
             "Resource": [f"arn:aws:iot:*:*:topicfilter/{topic}" for topic in topics]},
        ],
    })


def fleet_template(device_policy: str, prefix: str, **extra_thing) -> str:
    thing = {
        "ThingName": {"Fn::Join": ["", [prefix, {"Ref": "SerialNumber"}]]},
        "AttributePayload": {"model": {"Ref": "Model"}},
        **extra_thing,
    }
    return json.dumps({
        "Parameters": {
            "SerialNumber": {"Type": "String"},
            "Model": {"Type": "String", "Default": "m1"},
            "AWS::IoT::Certificate::Id": {"Type": "String"},
        },
        "Resources": {
            "thing": {"Type": "AWS::IoT::Thing", "Properties": thing},
            "certificate": {"Type": "AWS::IoT::Certificate",
                            "Properties": {"CertificateId": {"Ref": "AWS::IoT::Certificate::Id"}, "Status": "ACTIVE"}},
            "policy": {"Type": "AWS::IoT::Policy", "Properties": {"PolicyName": device_policy}},
        },
        "DeviceConfiguration": {"FallbackUrl": "https://www.example.com/fallback", "Serial": {"Ref": "SerialNumber"}},
    })


class Fleet:
    """A FLEET_PROVISIONING template and a claim certificate allowed to use it."""

    def __init__(self, server, openssl, *, enabled: bool = True, hook: str | None = None, **extra_thing):
        self.server = server
        client = server.client()
        self.device_policy = allow_all_policy(client)
        self.template = unique("fleet")
        self.prefix = f"{self.template}-"
        args = ["create-provisioning-template", "--template-name", self.template,
                "--template-body", fleet_template(self.device_policy, self.prefix, **extra_thing),
                "--provisioning-role-arn", ROLE_ARN, "--enabled" if enabled else "--no-enabled"]
        if hook is not None:
            args += ["--pre-provisioning-hook", json.dumps({"targetArn": hook})]
        server.aws(*args)
        self.claim_policy = unique("claim")
        server.aws("create-policy", "--policy-name", self.claim_policy,
                   "--policy-document", claim_policy_document(self.template))
        self.claim = make_device(server, openssl, policy=self.claim_policy)


def mqtt5_identity_client(server, device: Device, client_id: str):
    """The SDK's current sample: an MQTT 5 client and IotIdentityClientV2 (request-response)."""
    from awscrt import mqtt_request_response
    from awsiot import iotidentity, mqtt5_client_builder

    host, port = gateway_addr(server)
    connected = concurrent.futures.Future()
    client = mqtt5_client_builder.mtls_from_path(
        endpoint=host, port=port, cert_filepath=device.cert, pri_key_filepath=device.key,
        ca_filepath=server.ca_bundle, client_id=client_id,
        on_lifecycle_connection_success=lambda data: connected.done() or connected.set_result(True),
    )
    client.start()
    assert connected.result(timeout=15)
    options = mqtt_request_response.ClientOptions(
        max_request_response_subscriptions=2, max_streaming_subscriptions=2, operation_timeout_in_seconds=15)
    return client, iotidentity.IotIdentityClientV2(client, options)


def mqtt311_connection(server, device: Device, client_id: str):
    from awsiot import mqtt_connection_builder

    host, port = gateway_addr(server)
    connection = mqtt_connection_builder.mtls_from_path(
        endpoint=host, port=port, cert_filepath=device.cert, pri_key_filepath=device.key,
        ca_filepath=server.ca_bundle, client_id=client_id, clean_session=True, keep_alive_secs=30,
    )
    connection.connect().result(timeout=15)
    return connection


class ClassicIdentity:
    """The classic IotIdentityClient over MQTT 3.1.1: subscribe to accepted and rejected, then
    publish, and wait for whichever answers."""

    def __init__(self, connection):
        from awsiot import iotidentity

        self.iotidentity = iotidentity
        self.client = iotidentity.IotIdentityClient(connection)

    def _call(self, subscribe_accepted, subscribe_rejected, subscription, publish, request):
        from awscrt import mqtt

        answer = concurrent.futures.Future()
        subscribe_accepted(subscription, mqtt.QoS.AT_LEAST_ONCE,
                           lambda response: answer.done() or answer.set_result(("accepted", response)))[0].result(10)
        subscribe_rejected(subscription, mqtt.QoS.AT_LEAST_ONCE,
                           lambda error: answer.done() or answer.set_result(("rejected", error)))[0].result(10)
        publish(request, mqtt.QoS.AT_LEAST_ONCE).result(10)
        return answer.result(timeout=20)

    def create_from_csr(self, csr_pem: str):
        identity = self.iotidentity
        return self._call(self.client.subscribe_to_create_certificate_from_csr_accepted,
                          self.client.subscribe_to_create_certificate_from_csr_rejected,
                          identity.CreateCertificateFromCsrSubscriptionRequest(),
                          self.client.publish_create_certificate_from_csr,
                          identity.CreateCertificateFromCsrRequest(certificate_signing_request=csr_pem))

    def create_keys(self):
        identity = self.iotidentity
        return self._call(self.client.subscribe_to_create_keys_and_certificate_accepted,
                          self.client.subscribe_to_create_keys_and_certificate_rejected,
                          identity.CreateKeysAndCertificateSubscriptionRequest(),
                          self.client.publish_create_keys_and_certificate,
                          identity.CreateKeysAndCertificateRequest())

    def register(self, template: str, token: str, parameters: dict):
        identity = self.iotidentity
        return self._call(self.client.subscribe_to_register_thing_accepted,
                          self.client.subscribe_to_register_thing_rejected,
                          identity.RegisterThingSubscriptionRequest(template_name=template),
                          self.client.publish_register_thing,
                          identity.RegisterThingRequest(template_name=template, certificate_ownership_token=token,
                                                        parameters=parameters))


def assert_provisioned(server, fleet: Fleet, thing_name: str, certificate_id: str, serial: str):
    client = server.client()
    thing = client.describe_thing(thingName=thing_name)
    assert thing["attributes"] == {"model": "m1"}
    assert client.list_thing_principals(thingName=thing_name)["principals"] == [
        client.describe_certificate(certificateId=certificate_id)["certificateDescription"]["certificateArn"]]
    description = client.describe_certificate(certificateId=certificate_id)["certificateDescription"]
    assert description["status"] == "ACTIVE"
    policies = client.list_attached_policies(target=description["certificateArn"])["policies"]
    assert [policy["policyName"] for policy in policies] == [fleet.device_policy]
    assert thing_name == f"{fleet.prefix}{serial}"


def publish_with(server, device: Device, version="mqttv311") -> None:
    """The provisioned device connects with its new certificate and publishes."""
    result = mosquitto("mosquitto_pub", server, device, "-t", f"e2e/fleet/{uuid.uuid4().hex[:6]}", "-m", "hello",
                       "-q", "1", version=version)
    assert result.returncode == 0, result.stderr


# ------------------------------------------------------------------------------------------------
# the AWS IoT Device SDK v2 for Python
# ------------------------------------------------------------------------------------------------
def test_sdk_v2_create_keys_and_certificate_then_register_thing(server, openssl):
    from awsiot import iotidentity

    thing_type, group = unique("type"), unique("group")
    server.aws("create-thing-type", "--thing-type-name", thing_type)
    server.aws("create-thing-group", "--thing-group-name", group)
    fleet = Fleet(server, openssl, ThingTypeName=thing_type, ThingGroups=[group])
    client, identity = mqtt5_identity_client(server, fleet.claim, unique("claim5"))
    try:
        created = identity.create_keys_and_certificate(iotidentity.CreateKeysAndCertificateRequest()).result(20)
        assert created.certificate_pem.startswith("-----BEGIN CERTIFICATE-----")
        assert "PRIVATE KEY-----" in created.private_key
        serial = uuid.uuid4().hex[:10]
        registered = identity.register_thing(iotidentity.RegisterThingRequest(
            template_name=fleet.template, certificate_ownership_token=created.certificate_ownership_token,
            parameters={"SerialNumber": serial})).result(20)
    finally:
        client.stop()
    assert registered.thing_name == f"{fleet.prefix}{serial}"
    assert registered.device_configuration == {"FallbackUrl": "https://www.example.com/fallback", "Serial": serial}
    assert_provisioned(server, fleet, registered.thing_name, created.certificate_id, serial)
    described = server.client().describe_thing(thingName=registered.thing_name)
    assert described["thingTypeName"] == thing_type
    groups = server.client().list_thing_groups_for_thing(thingName=registered.thing_name)["thingGroups"]
    assert [entry["groupName"] for entry in groups] == [group]
    cert = openssl.write(f"{serial}.crt", created.certificate_pem)
    key = openssl.write(f"{serial}.key", created.private_key)
    publish_with(server, Device(str(cert), str(key), created.certificate_id), version="mqttv5")


def test_sdk_classic_create_certificate_from_csr_then_register_thing(server, openssl):
    fleet = Fleet(server, openssl)
    key = openssl.ec_key(unique("csr") + ".key")
    csr = openssl.csr(unique("csr"), key, "fleet-device")
    connection = mqtt311_connection(server, fleet.claim, unique("claim311"))
    try:
        identity = ClassicIdentity(connection)
        outcome, created = identity.create_from_csr(openssl.read(csr))
        assert outcome == "accepted", created
        serial = uuid.uuid4().hex[:10]
        outcome, registered = identity.register(fleet.template, created.certificate_ownership_token,
                                                {"SerialNumber": serial})
        assert outcome == "accepted", registered
        # The token was used: a second RegisterThing with it is refused.
        outcome, again = identity.register(fleet.template, created.certificate_ownership_token,
                                           {"SerialNumber": serial + "x"})
        assert outcome == "rejected"
        assert (again.status_code, again.error_code) == (400, "InvalidCertificateOwnershipToken")
    finally:
        connection.disconnect().result(10)
    assert_provisioned(server, fleet, registered.thing_name, created.certificate_id, serial)
    assert server.client().list_things(attributeName="model", attributeValue="m1")  # visible to the account
    cert = openssl.write(f"{serial}.crt", created.certificate_pem)
    publish_with(server, Device(str(cert), str(openssl.path(key)), created.certificate_id))
    # No thing was made for the refused second attempt.
    with pytest.raises(server.client().exceptions.ResourceNotFoundException):
        server.client().describe_thing(thingName=f"{fleet.prefix}{serial}x")


# ------------------------------------------------------------------------------------------------
# mosquitto clients, JSON and CBOR
# ------------------------------------------------------------------------------------------------
def request(server, device: Device, topic: str, payload: bytes, answer: str) -> bytes:
    """One request with mosquitto_rr (MQTT 5) on one connection: subscribes to `<topic>/<answer>`
    (accepted or rejected: mosquitto_rr takes no wildcard), publishes, and returns the first
    answer's payload; fails when no answer comes there within 10 s."""
    host, port = gateway_addr(server)
    # mosquitto_rr 2.0.11 sends an empty message for -f and -s: the payload goes in -m (bytes,
    # which CBOR without a NUL byte can be).
    assert b"\0" not in payload
    result = subprocess.run(
        [b"mosquitto_rr", b"-h", host.encode(), b"-p", str(port).encode(), b"--cafile", server.ca_bundle.encode(),
         b"--cert", device.cert.encode(), b"--key", device.key.encode(), b"-t", topic.encode(),
         b"-e", f"{topic}/{answer}".encode(), b"-W", b"10", b"-N"] + ([b"-m", payload] if payload else [b"-n"]),
        capture_output=True, timeout=30,
    )
    assert result.returncode == 0, (answer, result.stderr)
    return result.stdout


def test_mosquitto_json_and_cbor(server, openssl):
    fleet = Fleet(server, openssl)
    # Another device of the account, allowed everything, listens on every answer topic: the
    # answers (private keys among them) go to the asking connection only.
    eavesdropper = make_device(server, openssl)
    host, port = gateway_addr(server)
    listener = subprocess.Popen(
        ["mosquitto_sub", "-h", host, "-p", str(port), "--cafile", server.ca_bundle, "--cert", eavesdropper.cert,
         "--key", eavesdropper.key, "-t", "$aws/certificates/#", "-t", "$aws/provisioning-templates/#",
         "-W", "6", "-v"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )
    time.sleep(1)
    created = cbor2.loads(request(server, fleet.claim, "$aws/certificates/create/cbor", b"", "accepted"))
    assert set(created) == {"certificateId", "certificatePem", "privateKey", "certificateOwnershipToken"}
    heard, _ = listener.communicate(timeout=15)
    assert heard == b"", "an answer reached another connection"

    # The token is bound to the connection that asked: from a new connection (same claim
    # certificate) it is refused, and the certificate is never registered.
    serial = uuid.uuid4().hex[:10]
    register = {"certificateOwnershipToken": created["certificateOwnershipToken"], "parameters": {"SerialNumber": serial}}
    rejected = cbor2.loads(request(server, fleet.claim, f"$aws/provisioning-templates/{fleet.template}/provision/cbor",
                                   cbor2.dumps(register), "rejected"))
    assert (rejected["statusCode"], rejected["errorCode"]) == (400, "InvalidCertificateOwnershipToken")
    with pytest.raises(server.client().exceptions.ResourceNotFoundException):
        server.client().describe_certificate(certificateId=created["certificateId"])

    # JSON: a bad CSR is rejected with AWS's error shape.
    body = request(server, fleet.claim, "$aws/certificates/create-from-csr/json",
                   json.dumps({"certificateSigningRequest": "not a csr"}).encode(), "rejected")
    assert json.loads(body)["errorCode"] == "InvalidCSR"
    body = request(server, fleet.claim, "$aws/certificates/create-from-csr/json", b"{not json", "rejected")
    assert (json.loads(body)["statusCode"], json.loads(body)["errorCode"]) == (400, "InvalidPayload")
    # And JSON all the way through: a CSR, then RegisterThing on the same connection is the SDK's
    # job (above); here a JSON CreateKeysAndCertificate answers in JSON.
    created = json.loads(request(server, fleet.claim, "$aws/certificates/create/json", b"{}", "accepted"))
    assert created["certificatePem"].startswith("-----BEGIN CERTIFICATE-----")


# ------------------------------------------------------------------------------------------------
# refusals
# ------------------------------------------------------------------------------------------------
def register_with_fresh_token(server, fleet: Fleet, template: str, parameters: dict, device: Device | None = None):
    """CreateKeysAndCertificate then RegisterThing on one classic SDK connection."""
    connection = mqtt311_connection(server, device or fleet.claim, unique("claim"))
    try:
        identity = ClassicIdentity(connection)
        outcome, created = identity.create_keys()
        assert outcome == "accepted", created
        outcome, answer = identity.register(template, created.certificate_ownership_token, parameters)
        return outcome, answer, created
    finally:
        connection.disconnect().result(10)


def thing_count(server) -> int:
    return len(server.client().list_things(maxResults=250)["things"])


def test_unknown_or_disabled_templates_and_missing_parameters_are_refused(server, openssl):
    fleet = Fleet(server, openssl)
    before = thing_count(server)
    # A claim allowed every template (its policy allows everything) asks for one that does not exist.
    outcome, error, created = register_with_fresh_token(server, fleet, "no-such-template", {"SerialNumber": "1"},
                                                        device=make_device(server, openssl))
    assert (outcome, error.status_code, error.error_code) == ("rejected", 404, "ResourceNotFound")

    server.aws("update-provisioning-template", "--template-name", fleet.template, "--no-enabled")
    outcome, error, _ = register_with_fresh_token(server, fleet, fleet.template, {"SerialNumber": "2"})
    assert (outcome, error.status_code) == ("rejected", 400)
    server.aws("update-provisioning-template", "--template-name", fleet.template, "--enabled")

    outcome, error, created = register_with_fresh_token(server, fleet, fleet.template, {})
    assert (outcome, error.error_code) == ("rejected", "InvalidParameters")
    assert thing_count(server) == before
    with pytest.raises(server.client().exceptions.ResourceNotFoundException):
        server.client().describe_certificate(certificateId=created.certificate_id)


def test_a_claim_certificate_can_do_nothing_else(server, openssl):
    """The claim policy confines the claim certificate to the provisioning topics: anything else
    is refused (MQTT 5: PUBACK 0x87, SUBACK 0x87), and the answer topics are the server's alone,
    whatever a policy allows."""
    fleet = Fleet(server, openssl)
    other = Fleet(server, openssl)
    sock = connected_v5(server, fleet.claim, unique("claim"))
    packet_ids = iter(range(1, 1000))
    for topic in ["devices/anything", f"$aws/provisioning-templates/{other.template}/provision/json",
                  "$aws/certificates/create/json/accepted", f"$aws/things/{unique('t')}/shadow/update"]:
        assert publish_v5(sock, topic, next(packet_ids)) == 0x87, topic
    for topic_filter in ["#", "devices/+", f"$aws/provisioning-templates/{other.template}/provision/json/accepted"]:
        assert subscribe_v5(sock, topic_filter, next(packet_ids)) == 0x87, topic_filter
    assert publish_v5(sock, "$aws/certificates/create/json", next(packet_ids)) == 0, "its own topics are allowed"
    sock.close()

    # Even a device allowed everything cannot forge an answer.
    anyone = make_device(server, openssl)
    sock = connected_v5(server, anyone, unique("forger"))
    assert publish_v5(sock, "$aws/certificates/create/json/accepted", 1) == 0x87
    assert publish_v5(sock, f"$aws/provisioning-templates/{fleet.template}/provision/json/rejected", 2) == 0x87
    sock.close()


# ------------------------------------------------------------------------------------------------
# the pre-provisioning hook
# ------------------------------------------------------------------------------------------------
class Hook(BaseHTTPRequestHandler):
    """A pre-provisioning hook: allows serials starting with "ok", refuses others, and answers
    "slow" ones after 3 s (past the test server's 1 s hook timeout)."""

    calls: list = []

    def do_POST(self):  # noqa: N802 (the http.server API)
        body = json.loads(self.rfile.read(int(self.headers.get("content-length", "0"))))
        Hook.calls.append(body)
        serial = body["parameters"].get("SerialNumber", "")
        if serial.startswith("slow"):
            time.sleep(3)
        answer = {"allowProvisioning": serial.startswith("ok") or serial.startswith("slow"),
                  "parameterOverrides": {"Model": "from-hook"}}
        data = json.dumps(answer).encode()
        self.send_response(200)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args):
        pass


@pytest.fixture
def hook_url():
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Hook)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}/hook"
    finally:
        httpd.shutdown()


def test_the_hook_decides_and_overrides_parameters(open_egress_server, openssl, hook_url):
    server = open_egress_server
    fleet = Fleet(server, openssl, hook=hook_url)
    serial = f"ok{uuid.uuid4().hex[:8]}"
    outcome, registered, created = register_with_fresh_token(server, fleet, fleet.template, {"SerialNumber": serial})
    assert outcome == "accepted", registered
    call = next(call for call in Hook.calls if call["parameters"].get("SerialNumber") == serial)
    assert call["claimCertificateId"] == fleet.claim.cert_id
    assert call["certificateId"] == created.certificate_id
    assert call["templateArn"].endswith(f":provisioningtemplate/{fleet.template}")
    assert call["certificatePem"].startswith("-----BEGIN CERTIFICATE-----")
    # The hook's override won over the template's default.
    assert server.client().describe_thing(thingName=registered.thing_name)["attributes"] == {"model": "from-hook"}

    before = thing_count(server)
    outcome, error, created = register_with_fresh_token(server, fleet, fleet.template, {"SerialNumber": "no-1"})
    assert (outcome, error.status_code, error.error_code) == ("rejected", 403, "AccessDenied")
    outcome, error, _ = register_with_fresh_token(server, fleet, fleet.template, {"SerialNumber": "slow-1"})
    assert (outcome, error.status_code, error.error_code) == ("rejected", 403, "AccessDenied")
    assert thing_count(server) == before
    with pytest.raises(server.client().exceptions.ResourceNotFoundException):
        server.client().describe_certificate(certificateId=created.certificate_id)


# ------------------------------------------------------------------------------------------------
# trusted-user provisioning: CreateProvisioningClaim
# ------------------------------------------------------------------------------------------------
def test_a_provisioning_claim_provisions_with_its_template_only(server, openssl):
    fleet = Fleet(server, openssl)
    other = Fleet(server, openssl)
    claim = server.aws("create-provisioning-claim", "--template-name", fleet.template)
    name = unique("claim")
    cert = openssl.write(f"{name}.crt", claim["certificatePem"])
    key = openssl.write(f"{name}.key", claim["keyPair"]["PrivateKey"])
    device = Device(str(cert), str(key), claim["certificateId"])
    # No policy is attached to it: its rights are the built-in claim policy of its template.
    assert server.client().list_attached_policies(
        target=server.client().describe_certificate(certificateId=claim["certificateId"])
        ["certificateDescription"]["certificateArn"])["policies"] == []
    serial = uuid.uuid4().hex[:10]
    outcome, registered, created = register_with_fresh_token(server, fleet, fleet.template, {"SerialNumber": serial},
                                                             device=device)
    assert outcome == "accepted", registered
    assert_provisioned(server, fleet, registered.thing_name, created.certificate_id, serial)

    # Even with a policy allowing everything attached, it reaches nothing else.
    server.client().attach_policy(policyName=allow_all_policy(server.client()),
                                  target=server.client().describe_certificate(
                                      certificateId=claim["certificateId"])["certificateDescription"]["certificateArn"])
    time.sleep(1)
    sock = connected_v5(server, device, unique("claim"))
    assert publish_v5(sock, "devices/anything", 1) == 0x87
    assert publish_v5(sock, f"$aws/provisioning-templates/{other.template}/provision/json", 2) == 0x87
    assert publish_v5(sock, f"$aws/provisioning-templates/{fleet.template}/provision/json", 3) == 0
    sock.close()


# ------------------------------------------------------------------------------------------------
# bounds
# ------------------------------------------------------------------------------------------------
def read_publish(sock) -> tuple[str, bytes]:
    """The next PUBLISH on an MQTT 5 connection (QoS 0 or 1; a QoS 1 one is acknowledged)."""
    while True:
        first = read_exactly(sock, 1)[0]
        length, shift = 0, 0
        while True:
            byte = read_exactly(sock, 1)[0]
            length |= (byte & 0x7F) << shift
            shift += 7
            if byte < 0x80:
                break
        body = read_exactly(sock, length)
        if first >> 4 != 3:
            continue
        topic_length = int.from_bytes(body[:2], "big")
        topic = body[2:2 + topic_length].decode()
        at = 2 + topic_length
        if (first >> 1) & 3:
            packet_id = body[at:at + 2]
            at += 2
            sock.sendall(packet(0x40, packet_id))
        properties_length, shift = 0, 0
        while True:
            byte = body[at]
            at += 1
            properties_length |= (byte & 0x7F) << shift
            shift += 7
            if byte < 0x80:
                break
        return topic, body[at + properties_length:]


def test_a_claim_in_a_loop_is_throttled_and_holds_nothing(server, openssl):
    """One request in flight per connection, a certificate rate per account: a claim holder
    firing requests gets Throttling (429) answers for the excess, no registry row, and the
    server answers every request."""
    fleet = Fleet(server, openssl)
    sock = connected_v5(server, fleet.claim, unique("loop"))
    assert subscribe_v5(sock, "$aws/certificates/create/json/+", 1) == 1
    requests = 30
    for _ in range(requests):
        sock.sendall(packet(0x30, mqtt_string("$aws/certificates/create/json") + b"\x00" + b"{}"))
    answers = [read_publish(sock) for _ in range(requests)]
    sock.close()
    outcomes = [topic.rsplit("/", 1)[1] for topic, _ in answers]
    throttled = [json.loads(body) for topic, body in answers if topic.endswith("/rejected")]
    assert "accepted" in outcomes and throttled, outcomes
    assert all((error["statusCode"], error["errorCode"]) == (429, "Throttling") for error in throttled), throttled
    # Nothing was registered for the certificates handed out: no RegisterThing came.
    issued = [json.loads(body)["certificateId"] for topic, body in answers if topic.endswith("/accepted")]
    for certificate_id in issued:
        with pytest.raises(server.client().exceptions.ResourceNotFoundException):
            server.client().describe_certificate(certificateId=certificate_id)


def test_the_whole_flow_over_a_plain_mqtt5_connection_with_json(server, openssl):
    """What mosquitto_rr cannot do (a token is worth something on its own connection only, and
    mosquitto_rr makes one request per connection): the whole flow over one plain MQTT 5
    connection, JSON payloads, CreateCertificateFromCsr then RegisterThing."""
    fleet = Fleet(server, openssl)
    key = openssl.ec_key(unique("plain") + ".key")
    csr = openssl.csr(unique("plain"), key, "plain-device")
    sock = connected_v5(server, fleet.claim, unique("plain"))
    assert subscribe_v5(sock, "$aws/certificates/create-from-csr/json/+", 1) == 1
    assert subscribe_v5(sock, f"$aws/provisioning-templates/{fleet.template}/provision/json/+", 2) == 1
    request = json.dumps({"certificateSigningRequest": openssl.read(csr)}).encode()
    sock.sendall(packet(0x30, mqtt_string("$aws/certificates/create-from-csr/json") + b"\x00" + request))
    topic, body = read_publish(sock)
    assert topic == "$aws/certificates/create-from-csr/json/accepted", body
    created = json.loads(body)
    serial = uuid.uuid4().hex[:10]
    register = json.dumps({"certificateOwnershipToken": created["certificateOwnershipToken"],
                           "parameters": {"SerialNumber": serial}}).encode()
    sock.sendall(packet(0x30, mqtt_string(f"$aws/provisioning-templates/{fleet.template}/provision/json") + b"\x00"
                        + register))
    topic, body = read_publish(sock)
    sock.close()
    assert topic.endswith("/provision/json/accepted"), body
    assert json.loads(body)["thingName"] == f"{fleet.prefix}{serial}"
    assert_provisioned(server, fleet, f"{fleet.prefix}{serial}", created["certificateId"], serial)
    cert = openssl.write(f"{serial}.crt", created["certificatePem"])
    publish_with(server, Device(str(cert), str(openssl.path(key)), created["certificateId"]))
