"""Policies and things end to end: the stock AWS CLI for the happy paths, boto3 for every
refusal, each followed by a check that the refused request changed nothing.

Every test works in fresh accounts (`server.create_account()`), so tests do not depend on each
other's order.
"""

from __future__ import annotations

import contextlib
import json
import re
import uuid

import pytest
from botocore.exceptions import ClientError

ALLOW_ALL = json.dumps({"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "iot:*", "Resource": "*"}]})
UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}")


def document(resource: str = "*", action: str = "iot:Connect") -> str:
    return json.dumps({"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": action, "Resource": resource}]})


# ------------------------------------------------------------------------------------------------
# helpers
# ------------------------------------------------------------------------------------------------
def expect_error(call, code: str, status: int, **kwargs) -> ClientError:
    """Calls `call(**kwargs)`, which must fail with the AWS error `code` and HTTP `status`."""
    try:
        result = call(**kwargs)
    except ClientError as e:
        err, meta = e.response.get("Error", {}), e.response.get("ResponseMetadata", {})
        summary = f"{meta.get('HTTPStatusCode')} {err.get('Code')}: {err.get('Message')!r}"
        assert err.get("Code") == code, f"expected {code}, got {summary}"
        assert meta.get("HTTPStatusCode") == status, f"expected HTTP {status}, got {summary}"
        assert meta.get("HTTPHeaders", {}).get("x-amzn-errortype", "").split(":", 1)[0] == code, summary
        assert err.get("Message"), f"empty message: {summary}"
        return e
    pytest.fail(f"expected {code} ({status}), but the call succeeded: {result}")


def strip(response: dict) -> dict:
    response = dict(response)
    response.pop("ResponseMetadata", None)
    return response


def snapshot(iot, cert_arns=()) -> dict:
    """Everything of an account's policies and things, and the attachments of `cert_arns`."""
    snap = {"policies": {}, "things": {}, "certificates": {}}
    for page in iot.get_paginator("list_policies").paginate():
        for policy in page["policies"]:
            name = policy["policyName"]
            snap["policies"][name] = {
                "policy": strip(iot.get_policy(policyName=name)),
                "versions": strip(iot.list_policy_versions(policyName=name)),
                "targets": sorted(t for p in iot.get_paginator("list_targets_for_policy").paginate(policyName=name) for t in p["targets"]),
            }
    for page in iot.get_paginator("list_things").paginate():
        for thing in page["things"]:
            name = thing["thingName"]
            snap["things"][name] = {
                "thing": strip(iot.describe_thing(thingName=name)),
                "principals": strip(iot.list_thing_principals_v2(thingName=name)),
            }
    for arn in cert_arns:
        cert_id = arn.rsplit("/", 1)[1]
        snap["certificates"][arn] = {
            "description": strip(iot.describe_certificate(certificateId=cert_id)),
            "policies": strip(iot.list_attached_policies(target=arn)),
            "things": strip(iot.list_principal_things_v2(principal=arn)),
        }
    return snap


@contextlib.contextmanager
def unchanged(iot, cert_arns=()):
    before = snapshot(iot, cert_arns)
    yield
    assert snapshot(iot, cert_arns) == before, "a refused request changed the registry"


class Acct:
    def __init__(self, server):
        self.account = server.create_account()
        self.id = self.account.id
        self.profile = self.account.profile
        self.iot = server.boto3_client(self.account.profile)

    def certificate(self) -> str:
        """A new INACTIVE certificate's ARN."""
        return self.iot.create_keys_and_certificate(setAsActive=False)["certificateArn"]


@pytest.fixture
def acct(server) -> Acct:
    return Acct(server)


@pytest.fixture
def acct_b(server) -> Acct:
    return Acct(server)


def cli_certificate(server, profile) -> str:
    return server.aws("create-keys-and-certificate", profile=profile)["certificateArn"]


# ------------------------------------------------------------------------------------------------
# happy paths, with the AWS CLI
# ------------------------------------------------------------------------------------------------
def test_policy_versions_with_the_cli(server, acct, tmp_path):
    p = acct.profile
    doc = tmp_path / "policy.json"
    doc.write_text(document("arn:aws:iot:us-east-1:*:client/${iot:ClientId}"))
    created = server.aws("create-policy", "--policy-name", "sensor-policy", "--policy-document", f"file://{doc}", profile=p)
    assert created["policyArn"] == f"arn:aws:iot:us-east-1:{acct.id}:policy/sensor-policy", created
    assert created["policyVersionId"] == "1" and created["policyName"] == "sensor-policy"
    assert json.loads(created["policyDocument"]) == json.loads(doc.read_text())

    got = server.aws("get-policy", "--policy-name", "sensor-policy", profile=p)
    assert got["defaultVersionId"] == "1" and UUID.fullmatch(got["generationId"]), got
    assert got["creationDate"] and got["lastModifiedDate"]

    doc.write_text(ALLOW_ALL)
    second = server.aws("create-policy-version", "--policy-name", "sensor-policy", "--policy-document", f"file://{doc}",
                        "--set-as-default", profile=p)
    assert (second["policyVersionId"], second["isDefaultVersion"]) == ("2", True), second
    for expected in ("3", "4", "5"):
        out = server.aws("create-policy-version", "--policy-name", "sensor-policy", "--policy-document", f"file://{doc}", profile=p)
        assert (out["policyVersionId"], out["isDefaultVersion"]) == (expected, False), out
    server.aws_error("create-policy-version", "--policy-name", "sensor-policy", "--policy-document", f"file://{doc}",
                     code="VersionsLimitExceededException", profile=p)

    versions = server.aws("list-policy-versions", "--policy-name", "sensor-policy", profile=p)["policyVersions"]
    assert sorted(v["versionId"] for v in versions) == ["1", "2", "3", "4", "5"]
    assert [v["versionId"] for v in versions if v["isDefaultVersion"]] == ["2"]
    assert all(v["createDate"] for v in versions)
    assert server.aws("get-policy", "--policy-name", "sensor-policy", profile=p)["policyDocument"] == ALLOW_ALL

    v3 = server.aws("get-policy-version", "--policy-name", "sensor-policy", "--policy-version-id", "3", profile=p)
    assert (v3["policyVersionId"], v3["isDefaultVersion"], v3["policyName"]) == ("3", False, "sensor-policy")
    server.aws("set-default-policy-version", "--policy-name", "sensor-policy", "--policy-version-id", "3", profile=p)
    assert server.aws("get-policy", "--policy-name", "sensor-policy", profile=p)["defaultVersionId"] == "3"
    server.aws_error("delete-policy-version", "--policy-name", "sensor-policy", "--policy-version-id", "3",
                     code="DeleteConflictException", profile=p)
    server.aws_error("delete-policy", "--policy-name", "sensor-policy", code="DeleteConflictException", profile=p)
    for version in ("1", "2", "4", "5"):
        server.aws("delete-policy-version", "--policy-name", "sensor-policy", "--policy-version-id", version, profile=p)
    names = [x["policyName"] for x in server.aws("list-policies", profile=p)["policies"]]
    assert names == ["sensor-policy"]
    server.aws("delete-policy", "--policy-name", "sensor-policy", profile=p)
    server.aws_error("get-policy", "--policy-name", "sensor-policy", code="ResourceNotFoundException", profile=p)
    assert server.aws("list-policies", profile=p)["policies"] == []


def test_policy_attachments_with_the_cli(server, acct, tmp_path):
    p = acct.profile
    arn = cli_certificate(server, p)
    doc = tmp_path / "policy.json"
    doc.write_text(ALLOW_ALL)
    for name in ("allow-all", "other"):
        server.aws("create-policy", "--policy-name", name, "--policy-document", f"file://{doc}", profile=p)
    server.aws("attach-policy", "--policy-name", "allow-all", "--target", arn, profile=p)
    server.aws("attach-policy", "--policy-name", "allow-all", "--target", arn, profile=p)  # again: no change

    attached = server.aws("list-attached-policies", "--target", arn, profile=p)["policies"]
    assert attached == [{"policyName": "allow-all", "policyArn": f"arn:aws:iot:us-east-1:{acct.id}:policy/allow-all"}]
    assert server.aws("list-targets-for-policy", "--policy-name", "allow-all", profile=p)["targets"] == [arn]
    effective = server.aws("get-effective-policies", "--principal", arn, profile=p)["effectivePolicies"]
    assert [(e["policyName"], e["policyDocument"]) for e in effective] == [("allow-all", ALLOW_ALL)]

    # The deprecated principal-header forms see and change the same attachments.
    server.aws("attach-principal-policy", "--policy-name", "other", "--principal", arn, profile=p)
    listed = server.aws("list-principal-policies", "--principal", arn, profile=p)["policies"]
    assert sorted(x["policyName"] for x in listed) == ["allow-all", "other"]
    assert server.aws("list-policy-principals", "--policy-name", "other", profile=p)["principals"] == [arn]
    server.aws("detach-principal-policy", "--policy-name", "other", "--principal", arn, profile=p)

    server.aws_error("delete-policy", "--policy-name", "allow-all", code="DeleteConflictException", profile=p)
    server.aws("detach-policy", "--policy-name", "allow-all", "--target", arn, profile=p)
    assert server.aws("list-attached-policies", "--target", arn, profile=p)["policies"] == []
    assert server.aws("get-effective-policies", "--principal", arn, profile=p)["effectivePolicies"] == []
    server.aws("delete-policy", "--policy-name", "allow-all", profile=p)


def test_things_with_the_cli(server, acct):
    p = acct.profile
    payload = json.dumps({"attributes": {"room": "kitchen", "floor": "1"}})
    created = server.aws("create-thing", "--thing-name", "lamp-1", "--attribute-payload", payload, profile=p)
    assert created["thingArn"] == f"arn:aws:iot:us-east-1:{acct.id}:thing/lamp-1", created
    assert UUID.fullmatch(created["thingId"]), created
    again = server.aws("create-thing", "--thing-name", "lamp-1", "--attribute-payload", payload, profile=p)
    assert again["thingId"] == created["thingId"], "an identical CreateThing is idempotent"
    server.aws_error("create-thing", "--thing-name", "lamp-1", code="ResourceAlreadyExistsException", profile=p)

    described = server.aws("describe-thing", "--thing-name", "lamp-1", profile=p)
    assert described["defaultClientId"] == "lamp-1" and described["version"] == 1, described
    assert described["attributes"] == {"room": "kitchen", "floor": "1"}
    assert "thingTypeName" not in described

    merge = json.dumps({"attributes": {"colour": "red", "floor": ""}, "merge": True})
    server.aws("update-thing", "--thing-name", "lamp-1", "--attribute-payload", merge, "--expected-version", "1", profile=p)
    described = server.aws("describe-thing", "--thing-name", "lamp-1", profile=p)
    assert (described["attributes"], described["version"]) == ({"room": "kitchen", "colour": "red"}, 2)
    server.aws_error("update-thing", "--thing-name", "lamp-1", "--attribute-payload", merge, "--expected-version", "1",
                     code="VersionConflictException", profile=p)
    server.aws_error("update-thing", "--thing-name", "lamp-1", "--thing-type-name", "lamp",
                     code="ResourceNotFoundException", profile=p)  # a type must exist first
    server.aws("create-thing-type", "--thing-type-name", "lamp", profile=p)
    server.aws("update-thing", "--thing-name", "lamp-1", "--thing-type-name", "lamp", profile=p)
    assert server.aws("describe-thing", "--thing-name", "lamp-1", profile=p)["thingTypeName"] == "lamp"
    replace = json.dumps({"attributes": {"room": "hall"}})
    server.aws("update-thing", "--thing-name", "lamp-1", "--remove-thing-type", "--attribute-payload", replace, profile=p)
    described = server.aws("describe-thing", "--thing-name", "lamp-1", profile=p)
    assert (described["attributes"], described["version"], "thingTypeName" in described) == ({"room": "hall"}, 4, False)

    for index in range(2, 7):
        room = "hall" if index % 2 else "hallway"
        server.aws("create-thing", "--thing-name", f"lamp-{index}", "--attribute-payload",
                   json.dumps({"attributes": {"room": room}}), profile=p)
    listed = server.aws("list-things", "--attribute-name", "room", "--attribute-value", "hall", profile=p)["things"]
    assert [t["thingName"] for t in listed] == ["lamp-1", "lamp-3", "lamp-5"]
    assert listed[0] == {"thingName": "lamp-1", "thingArn": created["thingArn"], "attributes": {"room": "hall"}, "version": 4}
    # The CLI pages through everything by itself; --max-items stops early with a NextToken.
    everything = server.aws("list-things", "--page-size", "2", profile=p)["things"]
    assert [t["thingName"] for t in everything] == [f"lamp-{i}" for i in range(1, 7)]
    first = server.aws("list-things", "--max-items", "4", "--page-size", "3", profile=p)
    assert [t["thingName"] for t in first["things"]] == ["lamp-1", "lamp-2", "lamp-3", "lamp-4"] and first["NextToken"]
    rest = server.aws("list-things", "--page-size", "3", "--starting-token", first["NextToken"], profile=p)
    assert [t["thingName"] for t in rest["things"]] == ["lamp-5", "lamp-6"]

    server.aws("delete-thing", "--thing-name", "lamp-2", "--expected-version", "1", profile=p)
    server.aws("delete-thing", "--thing-name", "lamp-2", profile=p)  # gone already: still a success
    server.aws_error("describe-thing", "--thing-name", "lamp-2", code="ResourceNotFoundException", profile=p)


def test_list_things_filters_and_pages_with_boto3(acct):
    iot = acct.iot
    for thing_type in ("sensor", "lamp"):
        iot.create_thing_type(thingTypeName=thing_type)
    for index in range(7):
        iot.create_thing(thingName=f"t{index}", thingTypeName="sensor" if index % 2 else "lamp",
                         attributePayload={"attributes": {"serial": f"sn-{index:03d}", "group": "a_b" if index < 3 else "axb"}})
    cases = [
        ({}, 7),
        ({"thingTypeName": "sensor"}, 3),
        ({"attributeName": "group", "attributeValue": "a_b"}, 3),
        ({"attributeName": "group", "attributeValue": "a_", "usePrefixAttributeValue": True}, 3),
        ({"attributeName": "serial", "attributeValue": "sn-00", "usePrefixAttributeValue": True}, 7),
        ({"attributeName": "serial", "attributeValue": "sn-00"}, 0),
        ({"attributeName": "serial", "attributeValue": "sn-00", "usePrefixAttributeValue": True, "thingTypeName": "lamp"}, 4),
    ]
    for kwargs, expected in cases:
        names, token = [], None
        while True:
            page = iot.list_things(maxResults=2, **kwargs, **({"nextToken": token} if token else {}))
            assert len(page["things"]) <= 2
            names += [t["thingName"] for t in page["things"]]
            token = page.get("nextToken")
            if not token:
                break
        assert len(names) == expected and names == sorted(set(names)), (kwargs, names)


def test_thing_principals_with_the_cli(server, acct):
    p = acct.profile
    shared, exclusive = cli_certificate(server, p), cli_certificate(server, p)
    for name in ("thing-a", "thing-b"):
        server.aws("create-thing", "--thing-name", name, profile=p)
    server.aws("attach-thing-principal", "--thing-name", "thing-a", "--principal", shared, profile=p)
    server.aws("attach-thing-principal", "--thing-name", "thing-b", "--principal", shared,
               "--thing-principal-type", "NON_EXCLUSIVE_THING", profile=p)
    server.aws("attach-thing-principal", "--thing-name", "thing-a", "--principal", exclusive,
               "--thing-principal-type", "EXCLUSIVE_THING", profile=p)

    principals = server.aws("list-thing-principals", "--thing-name", "thing-a", profile=p)["principals"]
    assert sorted(principals) == sorted([shared, exclusive])
    objects = server.aws("list-thing-principals-v2", "--thing-name", "thing-a", profile=p)["thingPrincipalObjects"]
    assert {o["principal"]: o["thingPrincipalType"] for o in objects} == {shared: "NON_EXCLUSIVE_THING", exclusive: "EXCLUSIVE_THING"}
    assert server.aws("list-principal-things", "--principal", shared, profile=p)["things"] == ["thing-a", "thing-b"]
    v2 = server.aws("list-principal-things-v2", "--principal", exclusive, profile=p)["principalThingObjects"]
    assert v2 == [{"thingName": "thing-a", "thingPrincipalType": "EXCLUSIVE_THING"}]

    # An exclusive principal has one thing; one with several things cannot become exclusive.
    server.aws_error("attach-thing-principal", "--thing-name", "thing-b", "--principal", exclusive,
                     code="InvalidRequestException", profile=p)
    server.aws_error("attach-thing-principal", "--thing-name", "thing-a", "--principal", shared,
                     "--thing-principal-type", "EXCLUSIVE_THING", code="InvalidRequestException", profile=p)
    server.aws_error("delete-thing", "--thing-name", "thing-a", code="InvalidRequestException", profile=p)

    for principal in (shared, exclusive):
        server.aws("detach-thing-principal", "--thing-name", "thing-a", "--principal", principal, profile=p)
    assert server.aws("list-thing-principals", "--thing-name", "thing-a", profile=p)["principals"] == []
    assert server.aws("list-principal-things", "--principal", shared, profile=p)["things"] == ["thing-b"]
    server.aws("delete-thing", "--thing-name", "thing-a", profile=p)


# ------------------------------------------------------------------------------------------------
# refusals, with boto3
# ------------------------------------------------------------------------------------------------
MALFORMED = {
    "not-json": "this is not json",
    "wrong-version": ALLOW_ALL.replace("2012-10-17", "2008-10-17"),
    "missing-effect": json.dumps({"Version": "2012-10-17", "Statement": [{"Action": "iot:*", "Resource": "*"}]}),
    "unknown-variable": document("arn:aws:iot:us-east-1:*:client/${iot:NoSuchVariable}"),
    "over-2048-characters": document("arn:aws:iot:us-east-1:*:client/" + "x" * 2100),
    "principal-element": json.dumps({"Version": "2012-10-17", "Statement": [
        {"Effect": "Allow", "Principal": "*", "Action": "iot:*", "Resource": "*"}]}),
    "unknown-action": json.dumps({"Version": "2012-10-17", "Statement": [
        {"Effect": "Allow", "Action": "iot:Publsh", "Resource": "*"}]}),
}


@pytest.mark.parametrize("name", sorted(MALFORMED))
def test_malformed_documents_are_refused_and_not_stored(acct, name):
    iot = acct.iot
    iot.create_policy(policyName="kept", policyDocument=ALLOW_ALL)
    with unchanged(iot):
        expect_error(iot.create_policy, "MalformedPolicyException", 400, policyName="refused", policyDocument=MALFORMED[name])
        expect_error(iot.create_policy_version, "MalformedPolicyException", 400, policyName="kept",
                     policyDocument=MALFORMED[name], setAsDefault=True)
    expect_error(iot.get_policy, "ResourceNotFoundException", 404, policyName="refused")


def test_version_limits_and_default_version_rules(acct):
    iot = acct.iot
    iot.create_policy(policyName="p", policyDocument=ALLOW_ALL)
    for _ in range(4):
        iot.create_policy_version(policyName="p", policyDocument=document())
    with unchanged(iot):
        expect_error(iot.create_policy_version, "VersionsLimitExceededException", 409, policyName="p",
                     policyDocument=document(), setAsDefault=True)
        expect_error(iot.delete_policy_version, "DeleteConflictException", 409, policyName="p", policyVersionId="1")
        expect_error(iot.delete_policy, "DeleteConflictException", 409, policyName="p")
        expect_error(iot.get_policy_version, "ResourceNotFoundException", 404, policyName="p", policyVersionId="9")
        expect_error(iot.set_default_policy_version, "ResourceNotFoundException", 404, policyName="p", policyVersionId="9")
        expect_error(iot.get_policy_version, "InvalidRequestException", 400, policyName="p", policyVersionId="one")
        expect_error(iot.create_policy, "ResourceAlreadyExistsException", 409, policyName="p", policyDocument=ALLOW_ALL)
        expect_error(iot.create_policy, "InvalidRequestException", 400, policyName="bad name", policyDocument=ALLOW_ALL)
        expect_error(iot.create_policy, "InvalidRequestException", 400, policyName="x" * 129, policyDocument=ALLOW_ALL)
    iot.delete_policy_version(policyName="p", policyVersionId="2")
    assert iot.create_policy_version(policyName="p", policyDocument=document())["policyVersionId"] == "6", "numbers are not reused"


def test_attachment_targets_must_be_the_callers_certificates(acct, acct_b):
    iot = acct.iot
    mine, theirs = acct.certificate(), acct_b.certificate()
    iot.create_policy(policyName="p", policyDocument=ALLOW_ALL)
    iot.create_thing(thingName="t")
    unknown = f"arn:aws:iot:us-east-1:{acct.id}:cert/{'0' * 64}"
    cases = [
        (theirs, "ResourceNotFoundException", 404),
        (unknown, "ResourceNotFoundException", 404),
        (mine.replace("us-east-1", "eu-west-1"), "ResourceNotFoundException", 404),
        ("us-east-1:2a0d6f52-7f7e-4b1f-9d3c-0123456789ab", "InvalidRequestException", 400),
        (f"arn:aws:iot:us-east-1:{acct.id}:cert/not-an-id", "InvalidRequestException", 400),
        ("garbage", "InvalidRequestException", 400),
    ]
    with unchanged(iot, [mine]), unchanged(acct_b.iot, [theirs]):
        for target, code, status in cases:
            expect_error(iot.attach_policy, code, status, policyName="p", target=target)
            expect_error(iot.attach_thing_principal, code, status, thingName="t", principal=target)
            expect_error(iot.list_attached_policies, code, status, target=target)
        # A thing group is a policy target (test_thing_groups.py), never a thing's principal.
        group = f"arn:aws:iot:us-east-1:{acct.id}:thinggroup/group"
        expect_error(iot.attach_policy, "ResourceNotFoundException", 404, policyName="p", target=group)
        expect_error(iot.attach_thing_principal, "InvalidRequestException", 400, thingName="t", principal=group)
        expect_error(iot.attach_policy, "ResourceNotFoundException", 404, policyName="missing", target=mine)
        expect_error(iot.attach_thing_principal, "ResourceNotFoundException", 404, thingName="missing", principal=mine)
        expect_error(acct_b.iot.get_policy, "ResourceNotFoundException", 404, policyName="p")
        expect_error(acct_b.iot.describe_thing, "ResourceNotFoundException", 404, thingName="t")
        expect_error(iot.get_effective_policies, "ResourceNotFoundException", 404, principal=mine, thingName="missing")


@pytest.mark.parametrize("name", ["bad name", "bad$name", "a.b", "a/b", "x" * 129])
def test_bad_thing_names_are_invalid(acct, name):
    with unchanged(acct.iot):
        expect_error(acct.iot.create_thing, "InvalidRequestException", 400, thingName=name)
        expect_error(acct.iot.create_thing, "InvalidRequestException", 400, thingName="ok", thingTypeName=name)


def test_thing_refusals_change_nothing(acct):
    iot = acct.iot
    iot.create_thing(thingName="t", attributePayload={"attributes": {"a": "1", "b": "2"}})
    cert = acct.certificate()
    iot.create_thing(thingName="held")
    iot.attach_thing_principal(thingName="held", principal=cert, thingPrincipalType="EXCLUSIVE_THING")
    too_many = {"attributes": {"a": "1", "b": "2", "c": "3", "d": "4"}}
    with unchanged(iot, [cert]):
        error = expect_error(iot.create_thing, "ResourceAlreadyExistsException", 409, thingName="t")
        assert error.response["Error"].get("Message")
        expect_error(iot.create_thing, "InvalidRequestException", 400, thingName="crowded", attributePayload=too_many)
        expect_error(iot.create_thing, "InvalidRequestException", 400, thingName="x", attributePayload={"attributes": {"bad key": "v"}})
        expect_error(iot.create_thing, "ResourceNotFoundException", 404, thingName="x", billingGroupName="group")
        expect_error(iot.update_thing, "VersionConflictException", 409, thingName="t", expectedVersion=7,
                     attributePayload={"attributes": {"c": "3"}, "merge": True})
        expect_error(iot.update_thing, "InvalidRequestException", 400, thingName="t",
                     attributePayload={"attributes": {"c": "3", "d": "4"}, "merge": True})
        expect_error(iot.update_thing, "InvalidRequestException", 400, thingName="t", thingTypeName="x", removeThingType=True)
        expect_error(iot.update_thing, "ResourceNotFoundException", 404, thingName="missing", attributePayload={"attributes": {}})
        expect_error(iot.delete_thing, "VersionConflictException", 409, thingName="t", expectedVersion=2)
        expect_error(iot.delete_thing, "InvalidRequestException", 400, thingName="held")
        expect_error(iot.attach_thing_principal, "InvalidRequestException", 400, thingName="t", principal=cert)
        expect_error(iot.list_things, "InvalidRequestException", 400, attributeValue="1")
        expect_error(iot.list_things, "InvalidRequestException", 400, nextToken="!!!")
        expect_error(iot.describe_thing, "ResourceNotFoundException", 404, thingName="missing")
    iot.create_thing_type(thingTypeName="sensor")
    iot.create_thing(thingName="typed", thingTypeName="sensor",
                     attributePayload={"attributes": {f"k{i}": "v" for i in range(50)}})
    expect_error(iot.update_thing, "InvalidRequestException", 400, thingName="typed", removeThingType=True)
    iot.delete_thing(thingName="t", expectedVersion=1)


def test_certificates_with_attachments_cannot_be_deleted_or_transferred(acct, acct_b):
    iot = acct.iot
    iot.create_policy(policyName="p", policyDocument=ALLOW_ALL)
    iot.create_thing(thingName="t")
    with_policy, with_thing = acct.certificate(), acct.certificate()
    iot.attach_policy(policyName="p", target=with_policy)
    iot.attach_thing_principal(thingName="t", principal=with_thing)
    cert_id = lambda arn: arn.rsplit("/", 1)[1]  # noqa: E731
    with unchanged(iot, [with_policy, with_thing]):
        expect_error(iot.delete_certificate, "DeleteConflictException", 409, certificateId=cert_id(with_policy))
        expect_error(iot.delete_certificate, "DeleteConflictException", 409, certificateId=cert_id(with_thing))
        expect_error(iot.delete_certificate, "DeleteConflictException", 409, certificateId=cert_id(with_thing), forceDelete=True)
        expect_error(iot.transfer_certificate, "TransferConflictException", 409, certificateId=cert_id(with_policy),
                     targetAwsAccount=acct_b.id)
        expect_error(iot.transfer_certificate, "TransferConflictException", 409, certificateId=cert_id(with_thing),
                     targetAwsAccount=acct_b.id)
        expect_error(iot.delete_policy, "DeleteConflictException", 409, policyName="p")
    # forceDelete detaches the policies and deletes.
    iot.delete_certificate(certificateId=cert_id(with_policy), forceDelete=True)
    expect_error(iot.describe_certificate, "ResourceNotFoundException", 404, certificateId=cert_id(with_policy))
    assert iot.list_targets_for_policy(policyName="p")["targets"] == []
    iot.delete_policy(policyName="p")
    # Detached, a certificate transfers.
    iot.detach_thing_principal(thingName="t", principal=with_thing)
    iot.transfer_certificate(certificateId=cert_id(with_thing), targetAwsAccount=acct_b.id)


def test_pagination_of_attachment_listings(acct):
    iot = acct.iot
    cert = acct.certificate()
    names = [f"p{index}" for index in range(7)]
    for name in names:
        iot.create_policy(policyName=name, policyDocument=ALLOW_ALL)
        iot.attach_policy(policyName=name, target=cert)
    pages = list(iot.get_paginator("list_attached_policies").paginate(target=cert, PaginationConfig={"PageSize": 3}))
    assert [len(page["policies"]) for page in pages] == [3, 3, 1]
    assert [p["policyName"] for page in pages for p in page["policies"]] == names
    policies = list(iot.get_paginator("list_policies").paginate(PaginationConfig={"PageSize": 2}))
    assert sorted(p["policyName"] for page in policies for p in page["policies"]) == names
    ascending = iot.list_policies(ascendingOrder=True, pageSize=250)["policies"]
    descending = iot.list_policies(ascendingOrder=False, pageSize=250)["policies"]
    assert ascending == list(reversed(descending))
    expect_error(iot.list_policies, "InvalidRequestException", 400, marker="bm90LWEtbWFya2Vy")
    for index in range(7, 10):
        iot.create_policy(policyName=f"p{index}", policyDocument=ALLOW_ALL)
        iot.attach_policy(policyName=f"p{index}", target=cert)
    iot.create_policy(policyName="p10", policyDocument=ALLOW_ALL)
    with unchanged(iot, [cert]):
        expect_error(iot.attach_policy, "LimitExceededException", 410, policyName="p10", target=cert)


def test_thing_names_with_colons_and_unique_ids(acct):
    iot = acct.iot
    name = f"factory:{uuid.uuid4().hex[:8]}:line_1-sensor"
    created = iot.create_thing(thingName=name)
    described = iot.describe_thing(thingName=name)
    assert described["thingId"] == created["thingId"] and described["defaultClientId"] == name
    other = iot.create_thing(thingName=name + "-2")
    assert other["thingId"] != created["thingId"]
