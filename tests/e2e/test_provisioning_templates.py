"""Fleet provisioning templates end to end with the stock AWS CLI and boto3: a FLEET_PROVISIONING
template (the default type) with a pre-provisioning hook (an https:// URL), its versions
(create, list, describe, delete), UpdateProvisioningTemplate, RegisterThing with a CSR parameter,
CreateProvisioningClaim and a connection with the claim certificate; and the refusals (a sixth
version, deleting the default version, a hook over http:// or not a URL, an invalid template,
RegisterThing with a missing parameter), each followed by a check that nothing changed."""

from __future__ import annotations

import json
import uuid

import botocore.exceptions
import pytest

from test_gateway import Device, allow_all_policy, mosquitto

ROLE = "arn:aws:iam::123456789012:role/Provisioning"
HOOK = "https://hooks.example.com/provisioning"


def fleet_template(attribute: str = "v1") -> str:
    return json.dumps({
        "Parameters": {"SerialNumber": {"Type": "String"}, "Region": {"Type": "String", "Default": "eu"}},
        "Conditions": {"InEurope": {"Fn::Equals": [{"Ref": "Region"}, "eu"]}},
        "Resources": {
            "thing": {"Type": "AWS::IoT::Thing", "OverrideSettings": {"AttributePayload": "MERGE"}, "Properties": {
                "ThingName": {"Fn::Sub": "fleet-${SerialNumber}"},
                "AttributePayload": {"version": attribute,
                                     "zone": {"Fn::If": ["InEurope", "eu-west", {"Ref": "AWS::NoValue"}]}},
            }},
            "certificate": {"Type": "AWS::IoT::Certificate", "Properties": {
                "CertificateId": {"Ref": "AWS::IoT::Certificate::Id"}, "Status": "ACTIVE"}},
        },
        "DeviceConfiguration": {"region": {"Ref": "Region"}},
    })


def register_thing_template(policy_name: str) -> str:
    return json.dumps({
        "Parameters": {"ThingName": {"Type": "String"}, "CSR": {"Type": "String"}},
        "Resources": {
            "thing": {"Type": "AWS::IoT::Thing", "Properties": {"ThingName": {"Ref": "ThingName"}}},
            "certificate": {"Type": "AWS::IoT::Certificate", "Properties": {
                "CertificateSigningRequest": {"Ref": "CSR"}, "Status": "ACTIVE"}},
            "policy": {"Type": "AWS::IoT::Policy", "Properties": {"PolicyName": policy_name, "PolicyDocument": json.dumps(
                {"Version": "2012-10-17",
                 "Statement": [{"Effect": "Allow", "Action": "iot:Connect", "Resource": "*"}]})}},
        },
    })


def create_template(server, openssl, name: str, *extra: str, body: str | None = None):
    path = openssl.write(openssl.unique("fleet-body") + ".json", body or fleet_template())
    return server.aws("create-provisioning-template", "--template-name", name, "--template-body",
                      f"file://{openssl.path(path.name)}", "--provisioning-role-arn", ROLE, *extra)


def describe_template(client, name: str) -> dict:
    """DescribeProvisioningTemplate without the response metadata (request IDs differ)."""
    answer = client.describe_provisioning_template(templateName=name)
    answer.pop("ResponseMetadata", None)
    return answer


def error_code(call) -> str:
    with pytest.raises(botocore.exceptions.ClientError) as raised:
        call()
    return raised.value.response["Error"]["Code"]


def test_a_fleet_template_with_a_hook_its_versions_and_updates(server, openssl):
    client = server.client()
    name = f"fleet-{uuid.uuid4().hex[:8]}"
    created = create_template(server, openssl, name, "--enabled", "--pre-provisioning-hook", f"targetArn={HOOK}")
    assert created["defaultVersionId"] == 1 and created["templateArn"].endswith(f":provisioningtemplate/{name}")
    described = server.aws("describe-provisioning-template", "--template-name", name)
    assert described["type"] == "FLEET_PROVISIONING"
    assert described["preProvisioningHook"] == {"targetArn": HOOK, "payloadVersion": "2020-04-01"}
    assert described["templateBody"] == fleet_template()

    # Versions: 2 (not default), 3 (default), then 4 and 5; the default's body is described.
    v2 = openssl.write(openssl.unique("fleet-v2") + ".json", fleet_template("v2"))
    made = server.aws("create-provisioning-template-version", "--template-name", name,
                      "--template-body", f"file://{openssl.path(v2.name)}")
    assert (made["versionId"], made["isDefaultVersion"]) == (2, False)
    made = server.aws("create-provisioning-template-version", "--template-name", name,
                      "--template-body", f"file://{openssl.path(v2.name)}", "--set-as-default")
    assert (made["versionId"], made["isDefaultVersion"]) == (3, True)
    assert server.aws("describe-provisioning-template", "--template-name", name)["templateBody"] == fleet_template("v2")
    for _ in range(2):
        server.aws("create-provisioning-template-version", "--template-name", name,
                   "--template-body", f"file://{openssl.path(v2.name)}")
    versions = server.aws("list-provisioning-template-versions", "--template-name", name)["versions"]
    assert [(v["versionId"], v["isDefaultVersion"]) for v in versions] == [(1, False), (2, False), (3, True), (4, False),
                                                                           (5, False)]
    one = server.aws("describe-provisioning-template-version", "--template-name", name, "--version-id", "1")
    assert (one["templateBody"], one["isDefaultVersion"]) == (fleet_template(), False)

    # A sixth version: VersionsLimitExceededException, nothing changes.
    assert error_code(lambda: client.create_provisioning_template_version(
        templateName=name, templateBody=fleet_template("v6"))) == "VersionsLimitExceededException"
    assert server.aws("list-provisioning-template-versions", "--template-name", name)["versions"] == versions
    # The default version cannot be deleted.
    assert error_code(lambda: client.delete_provisioning_template_version(templateName=name, versionId=3)) == \
        "DeleteConflictException"
    assert server.aws("list-provisioning-template-versions", "--template-name", name)["versions"] == versions
    server.aws("delete-provisioning-template-version", "--template-name", name, "--version-id", "2")
    assert [v["versionId"] for v in server.aws("list-provisioning-template-versions", "--template-name", name)["versions"]] == \
        [1, 3, 4, 5]
    assert error_code(lambda: client.describe_provisioning_template_version(templateName=name, versionId=2)) == \
        "ResourceNotFoundException"

    # UpdateProvisioningTemplate: default version, enabled, description, hook removed.
    server.aws("update-provisioning-template", "--template-name", name, "--default-version-id", "1", "--no-enabled",
               "--description", "line two", "--remove-pre-provisioning-hook")
    updated = server.aws("describe-provisioning-template", "--template-name", name)
    assert (updated["defaultVersionId"], updated["enabled"], updated["description"]) == (1, False, "line two")
    assert updated["templateBody"] == fleet_template() and "preProvisioningHook" not in updated
    server.aws("update-provisioning-template", "--template-name", name, "--pre-provisioning-hook",
               f"targetArn={HOOK}/v2,payloadVersion=2020-04-01")
    assert server.aws("describe-provisioning-template", "--template-name", name)["preProvisioningHook"]["targetArn"] == \
        f"{HOOK}/v2"

    # Refused updates and templates change nothing.
    before = describe_template(client, name)
    for hook in ("http://hooks.example.com/x", "not a url", "arn:aws:lambda:us-east-1:123456789012:function:f"):
        assert error_code(lambda: client.update_provisioning_template(
            templateName=name, preProvisioningHook={"targetArn": hook})) == "InvalidRequestException", hook
    assert error_code(lambda: client.update_provisioning_template(templateName=name, defaultVersionId=2)) == \
        "ResourceNotFoundException"
    assert describe_template(client, name) == before

    listed = {t["templateName"] for t in client.list_provisioning_templates()["templates"]}
    other = f"{name}-x"
    assert error_code(lambda: client.create_provisioning_template(
        templateName=other, templateBody=fleet_template(), provisioningRoleArn=ROLE,
        preProvisioningHook={"targetArn": "http://hooks.example.com/x"})) == "InvalidRequestException"
    bad_body = json.dumps({"Resources": {"thing": {"Type": "AWS::IoT::Thing", "Properties": {
        "ThingName": {"Fn::GetAtt": ["x", "y"]}}}}})
    assert error_code(lambda: client.create_provisioning_template(
        templateName=other, templateBody=bad_body, provisioningRoleArn=ROLE)) == "InvalidRequestException"
    assert error_code(lambda: client.create_provisioning_template(
        templateName=other, templateBody=fleet_template(), provisioningRoleArn=ROLE, type="JITP",
        preProvisioningHook={"targetArn": HOOK})) == "InvalidRequestException"
    assert error_code(lambda: client.create_provisioning_template_version(
        templateName=name, templateBody=bad_body)) == "InvalidRequestException"
    assert {t["templateName"] for t in client.list_provisioning_templates()["templates"]} == listed
    assert describe_template(client, name) == before

    server.aws("delete-provisioning-template", "--template-name", name)
    assert error_code(lambda: client.list_provisioning_template_versions(templateName=name)) == \
        "ResourceNotFoundException"


def test_register_thing_with_a_csr_parameter(server, openssl):
    client = server.client()
    thing_name = f"registered-{uuid.uuid4().hex[:8]}"
    policy_name = openssl.unique("register-policy")
    key = openssl.ec_key(f"{thing_name}.key")
    csr = openssl.read(openssl.csr(thing_name, key, thing_name))

    # A missing parameter: InvalidRequestException, nothing registered.
    certificates = {c["certificateId"] for c in client.list_certificates(pageSize=250)["certificates"]}
    assert error_code(lambda: client.register_thing(
        templateBody=register_thing_template(policy_name), parameters={"CSR": csr})) == "InvalidRequestException"
    assert {c["certificateId"] for c in client.list_certificates(pageSize=250)["certificates"]} == certificates
    assert error_code(lambda: client.describe_thing(thingName=thing_name)) == "ResourceNotFoundException"
    assert policy_name not in {p["policyName"] for p in client.list_policies()["policies"]}

    params = openssl.write(openssl.unique("register-params") + ".json",
                           json.dumps({"ThingName": thing_name, "CSR": csr}))
    body = openssl.write(openssl.unique("register-body") + ".json", register_thing_template(policy_name))
    registered = server.aws("register-thing", "--template-body", f"file://{openssl.path(body.name)}",
                            "--parameters", f"file://{openssl.path(params.name)}")
    assert registered["certificatePem"].startswith("-----BEGIN CERTIFICATE-----")
    arns = registered["resourceArns"]
    assert sorted(arns) == ["certificate", "policy", "thing"]
    assert arns["thing"].endswith(f":thing/{thing_name}") and arns["policy"].endswith(f":policy/{policy_name}")
    certificate_id = arns["certificate"].rsplit("/", 1)[1]
    assert client.describe_certificate(certificateId=certificate_id)["certificateDescription"]["status"] == "ACTIVE"
    assert client.list_principal_things(principal=arns["certificate"])["things"] == [thing_name]
    assert [p["policyName"] for p in client.list_attached_policies(target=arns["certificate"])["policies"]] == \
        [policy_name]

    # The device connects with its registered certificate (the template's policy allows connect).
    cert = openssl.write(f"{thing_name}.crt", registered["certificatePem"])
    device = Device(str(cert), str(openssl.path(key)), certificate_id)
    out = mosquitto("mosquitto_pub", server, device, "-i", thing_name, "-t", "x", "-m", "hi", "-q", "0")
    assert out.returncode == 0, out.stderr


def test_a_provisioning_claim_connects(server, openssl):
    client = server.client()
    name = f"claim-{uuid.uuid4().hex[:8]}"
    create_template(server, openssl, name, "--enabled")
    claim = server.aws("create-provisioning-claim", "--template-name", name)
    assert len(claim["certificateId"]) == 64 and "PRIVATE KEY" in claim["keyPair"]["PrivateKey"]
    described = client.describe_certificate(certificateId=claim["certificateId"])["certificateDescription"]
    assert described["status"] == "ACTIVE"
    validity = described["validity"]
    assert (validity["notAfter"] - validity["notBefore"]).total_seconds() == 300
    assert abs(claim["expiration"] - validity["notAfter"].timestamp()) < 1

    # Registered ACTIVE, the claim certificate authenticates with no policy attached: its rights
    # are the built-in claim policy of its template (docs/provisioning.md), so it may publish on
    # its template's provisioning topics and nowhere else, even with a policy allowing all.
    cert = openssl.write(f"{name}.crt", claim["certificatePem"])
    key = openssl.write(f"{name}.key", claim["keyPair"]["PrivateKey"])
    device = Device(str(cert), str(key), claim["certificateId"])
    out = mosquitto("mosquitto_pub", server, device, "-i", name, "-t", "$aws/certificates/create/json", "-m", "{}",
                    "-q", "1", version="mqttv5")
    assert out.returncode == 0, out.stderr
    client.attach_policy(policyName=allow_all_policy(client), target=described["certificateArn"])
    out = mosquitto("mosquitto_pub", server, device, "-i", name, "-t", "claims/x", "-m", "hi", "-q", "1")
    assert out.returncode != 0, "MQTT 3.1.1: a publish outside the claim policy closes the connection"

    assert error_code(lambda: client.create_provisioning_claim(templateName=f"{name}-missing")) == \
        "ResourceNotFoundException"
