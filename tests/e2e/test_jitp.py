"""Just-in-time provisioning (JITP) end to end: a CA registered (AWS CLI) with a registrationConfig
templateBody; devices with distinct common names connect with mosquitto, are refused once (as in
AWS, the first connection registers and provisions, the device retries), and on the retry they
connect and publish on their own topic. Each certificate is ACTIVE, attached to a thing named by
its CN and to the template's policy. A template with an unknown parameter is refused with
InvalidRequestException and registers nothing."""

from __future__ import annotations

import json
import uuid

from test_gateway import Device, mosquitto
from test_jitr import register_auto_registering_ca

DEVICES = 6

POLICY_DOCUMENT = json.dumps({
    "Version": "2012-10-17",
    "Statement": [
        {"Effect": "Allow", "Action": "iot:Connect",
         "Resource": "arn:aws:iot:*:*:client/${iot:Connection.Thing.ThingName}"},
        {"Effect": "Allow", "Action": "iot:Publish",
         "Resource": "arn:aws:iot:*:*:topic/jitp/${iot:Connection.Thing.ThingName}/*"},
    ],
})


def template(policy_name: str, parameter: str = "AWS::IoT::Certificate::CommonName") -> str:
    return json.dumps({
        "Parameters": {"AWS::IoT::Certificate::CommonName": {"Type": "String"}},
        "Resources": {
            "thing": {"Type": "AWS::IoT::Thing", "Properties": {
                "ThingName": {"Ref": parameter},
                "AttributePayload": {"provisioned": {"Fn::Join": ["-", ["jitp", {"Ref": "AWS::IoT::Certificate::Id"}]]}},
            }},
            "certificate": {"Type": "AWS::IoT::Certificate", "Properties": {
                "CertificateId": {"Ref": "AWS::IoT::Certificate::Id"}, "Status": "ACTIVE"}},
            "policy": {"Type": "AWS::IoT::Policy", "Properties": {
                "PolicyName": policy_name, "PolicyDocument": POLICY_DOCUMENT}},
        },
    })


def test_jitp_provisions_things_and_policies_named_by_the_certificates_cns(server, openssl):
    client = server.client()
    ca, ca_key, ca_id = register_auto_registering_ca(server, openssl)
    policy_name = openssl.unique("jitp-policy")
    config = openssl.write(openssl.unique("jitp-config") + ".json", json.dumps({"templateBody": template(policy_name)}))
    server.aws("update-ca-certificate", "--certificate-id", ca_id, "--registration-config", f"file://{openssl.path(config.name)}")
    described = client.describe_ca_certificate(certificateId=ca_id)
    assert described["registrationConfig"]["templateBody"] == template(policy_name)

    names = [f"jitp-{uuid.uuid4().hex[:10]}" for _ in range(DEVICES)]
    devices = {}
    for name in names:
        cert = openssl.device_cert(name, ca, ca_key, cn=name)
        devices[name] = Device(str(openssl.path(cert)), str(openssl.path(f"{name}.key")), openssl.fingerprint(cert))

    def publish(name: str):
        return mosquitto("mosquitto_pub", server, devices[name], "-i", name, "-t", f"jitp/{name}/data", "-m", "hi", "-q", "1")

    for name in names:
        first = publish(name)
        assert first.returncode != 0 and "not authori" in (first.stderr + first.stdout).lower(), first
        retry = publish(name)
        assert retry.returncode == 0, retry.stderr

        certificate_id = devices[name].cert_id
        assert client.describe_certificate(certificateId=certificate_id)["certificateDescription"]["status"] == "ACTIVE"
        thing = server.aws("describe-thing", "--thing-name", name)
        assert thing["thingName"] == name
        assert thing["attributes"] == {"provisioned": f"jitp-{certificate_id}"}
        arn = client.describe_certificate(certificateId=certificate_id)["certificateDescription"]["certificateArn"]
        policies = server.aws("list-attached-policies", "--target", arn)["policies"]
        assert [p["policyName"] for p in policies] == [policy_name]
        assert client.list_principal_things(principal=arn)["things"] == [name]

        # The policy allows publishing only on the device's own topic.
        other = mosquitto("mosquitto_pub", server, devices[name], "-i", name, "-t", "jitp/someone-else/data", "-m", "x",
                          "-q", "1", version="mqttv5")
        assert "not authorized" in (other.stderr + other.stdout).lower(), other

    assert client.get_policy(policyName=policy_name)["policyDocument"] == POLICY_DOCUMENT


def test_a_template_with_an_unknown_parameter_is_refused_and_changes_nothing(server, openssl):
    client = server.client()
    ca, ca_key, ca_id = register_auto_registering_ca(server, openssl)
    config = openssl.write(openssl.unique("jitp-bad") + ".json",
                           json.dumps({"templateBody": template("never", "AWS::IoT::Certificate::Nickname")}))
    out = server.aws_error("update-ca-certificate", "--certificate-id", ca_id,
                           "--registration-config", f"file://{openssl.path(config.name)}", code="InvalidRequestException")
    assert "Nickname" in out.stderr
    assert "registrationConfig" not in client.describe_ca_certificate(certificateId=ca_id) or \
        not client.describe_ca_certificate(certificateId=ca_id)["registrationConfig"].get("templateBody")

    # RegisterCACertificate with the bad template registers nothing.
    other, other_key = openssl.self_signed_ca(openssl.unique("jitp-bad-ca"))
    code = server.aws("get-registration-code")["registrationCode"]
    verification = openssl.verification_cert(openssl.unique("jitp-bad-verify"), other, other_key, code)
    before = {ca["certificateId"] for ca in client.list_ca_certificates(pageSize=250)["certificates"]}
    server.aws_error("register-ca-certificate", "--ca-certificate", f"file://{openssl.path(other)}",
                     "--verification-certificate", f"file://{openssl.path(verification)}", "--set-as-active",
                     "--allow-auto-registration", "--registration-config", f"file://{openssl.path(config.name)}",
                     code="InvalidRequestException")
    after = {ca["certificateId"] for ca in client.list_ca_certificates(pageSize=250)["certificates"]}
    assert after == before
    assert client.list_policies()["policies"] == [] or "never" not in {p["policyName"] for p in client.list_policies()["policies"]}


def test_provisioning_template_crud_and_a_ca_naming_a_template(server, openssl):
    client = server.client()
    name = f"jitp-line-{uuid.uuid4().hex[:8]}"
    policy_name = openssl.unique("jitp-named-policy")
    body = openssl.write(openssl.unique("jitp-body") + ".json", template(policy_name))
    role = "arn:aws:iam::123456789012:role/JITPRole"
    created = server.aws("create-provisioning-template", "--template-name", name, "--template-body",
                         f"file://{openssl.path(body.name)}", "--provisioning-role-arn", role, "--type", "JITP",
                         "--enabled", "--description", "line one")
    assert created["templateName"] == name and created["defaultVersionId"] == 1
    assert created["templateArn"].endswith(f":provisioningtemplate/{name}")
    server.aws_error("create-provisioning-template", "--template-name", name, "--template-body",
                     f"file://{openssl.path(body.name)}", "--provisioning-role-arn", role, "--type", "JITP",
                     code="ResourceAlreadyExistsException")

    described = server.aws("describe-provisioning-template", "--template-name", name)
    assert described["templateBody"] == template(policy_name)
    assert (described["enabled"], described["type"], described["description"]) == (True, "JITP", "line one")
    assert described["provisioningRoleArn"] == role
    listed = server.aws("list-provisioning-templates")["templates"]
    assert name in {t["templateName"] for t in listed}

    # An unknown parameter: InvalidRequestException, nothing created.
    bad = openssl.write(openssl.unique("jitp-bad-body") + ".json", template("never", "AWS::IoT::Certificate::Nickname"))
    out = server.aws_error("create-provisioning-template", "--template-name", f"{name}-bad", "--template-body",
                           f"file://{openssl.path(bad.name)}", "--provisioning-role-arn", role, "--type", "JITP",
                           code="InvalidRequestException")
    assert "Nickname" in out.stderr
    server.aws_error("describe-provisioning-template", "--template-name", f"{name}-bad", code="ResourceNotFoundException")
    assert {t["templateName"] for t in server.aws("list-provisioning-templates")["templates"]} == \
        {t["templateName"] for t in listed}

    # A CA naming the template provisions its devices; the template cannot be deleted meanwhile.
    ca, ca_key, ca_id = register_auto_registering_ca(server, openssl)
    client.update_ca_certificate(certificateId=ca_id, registrationConfig={"templateName": name})
    device_name = f"jitp-named-{uuid.uuid4().hex[:8]}"
    cert = openssl.device_cert(device_name, ca, ca_key, cn=device_name)
    device = Device(str(openssl.path(cert)), str(openssl.path(f"{device_name}.key")), openssl.fingerprint(cert))
    publish = lambda: mosquitto("mosquitto_pub", server, device, "-i", device_name, "-t", f"jitp/{device_name}/x",
                                "-m", "hi", "-q", "1")
    assert publish().returncode != 0
    retry = publish()
    assert retry.returncode == 0, retry.stderr
    assert server.aws("describe-thing", "--thing-name", device_name)["thingName"] == device_name
    server.aws_error("delete-provisioning-template", "--template-name", name, code="DeleteConflictException")

    client.update_ca_certificate(certificateId=ca_id, registrationConfig={"templateBody": template(policy_name)})
    server.aws("delete-provisioning-template", "--template-name", name)
    server.aws_error("describe-provisioning-template", "--template-name", name, code="ResourceNotFoundException")
    server.aws_error("delete-provisioning-template", "--template-name", name, code="ResourceNotFoundException")
