"""Thing types, static thing groups and policies attached to groups, end to end: the stock AWS
CLI for every operation, boto3 for the refusals (each followed by a check that nothing changed),
and devices whose rights come from a policy attached to a parent group, at connect time and live.

The module runs its own server with `[things] thing_type_deletion_wait = "0s"`, so a deprecated
thing type can be deleted at once (AWS waits five minutes; the default here too)."""

from __future__ import annotations

import contextlib
import json
import time
import uuid

import pytest
from botocore.exceptions import ClientError

from conftest import configured_server
from test_gateway import make_device, mosquitto, refused
from test_policy_enforcement import allow, cert_arn, connected_v5, document, publish_v5, until


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """A server of its own whose thing types may be deleted right after their deprecation."""
    yield from configured_server(tmp_path_factory, "certfleet-groups", '[things]\nthing_type_deletion_wait = "0s"\n')


class Acct:
    def __init__(self, server):
        self.account = server.create_account()
        self.id = self.account.id
        self.profile = self.account.profile
        self.iot = server.boto3_client(self.account.profile)


@pytest.fixture
def acct(server) -> Acct:
    return Acct(server)


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def expect_error(call, code: str, status: int, **kwargs) -> None:
    try:
        result = call(**kwargs)
    except ClientError as e:
        err, meta = e.response.get("Error", {}), e.response.get("ResponseMetadata", {})
        summary = f"{meta.get('HTTPStatusCode')} {err.get('Code')}: {err.get('Message')!r}"
        assert err.get("Code") == code, f"expected {code}, got {summary}"
        assert meta.get("HTTPStatusCode") == status, f"expected HTTP {status}, got {summary}"
        assert err.get("Message"), summary
        return
    pytest.fail(f"expected {code} ({status}), but the call succeeded: {result}")


def strip(response: dict) -> dict:
    response = dict(response)
    response.pop("ResponseMetadata", None)
    return response


def snapshot(iot) -> dict:
    """An account's thing types, groups (with members and policies), things and policy targets."""
    snap = {"types": strip(iot.list_thing_types(maxResults=250)), "groups": {}, "things": {}, "policies": {}}
    for group in iot.list_thing_groups(maxResults=250)["thingGroups"]:
        name = group["groupName"]
        snap["groups"][name] = {
            "group": strip(iot.describe_thing_group(thingGroupName=name)),
            "things": iot.list_things_in_thing_group(thingGroupName=name, maxResults=250)["things"],
            "policies": iot.list_attached_policies(target=group["groupArn"])["policies"],
        }
    for thing in iot.list_things(maxResults=250)["things"]:
        name = thing["thingName"]
        snap["things"][name] = {
            "thing": strip(iot.describe_thing(thingName=name)),
            "groups": iot.list_thing_groups_for_thing(thingName=name)["thingGroups"],
        }
    for policy in iot.list_policies()["policies"]:
        snap["policies"][policy["policyName"]] = iot.list_targets_for_policy(policyName=policy["policyName"])["targets"]
    return snap


@contextlib.contextmanager
def unchanged(iot):
    before = snapshot(iot)
    yield
    assert snapshot(iot) == before, "a refused request changed the registry"


# ------------------------------------------------------------------------------------------------
# thing types
# ------------------------------------------------------------------------------------------------
def test_thing_types_with_the_cli(server, acct):
    p = acct.profile
    created = server.aws("create-thing-type", "--thing-type-name", "sensor", "--thing-type-properties",
                         json.dumps({"thingTypeDescription": "a sensor", "searchableAttributes": ["model", "site"]}),
                         "--tags", "Key=team,Value=iot", profile=p)
    assert created["thingTypeArn"] == f"arn:aws:iot:us-east-1:{acct.id}:thingtype/sensor", created
    assert created["thingTypeName"] == "sensor" and created["thingTypeId"]
    described = server.aws("describe-thing-type", "--thing-type-name", "sensor", profile=p)
    assert described["thingTypeProperties"] == {"thingTypeDescription": "a sensor", "searchableAttributes": ["model", "site"]}
    assert described["thingTypeMetadata"]["deprecated"] is False and described["thingTypeMetadata"]["creationDate"]
    server.aws("create-thing-type", "--thing-type-name", "gateway", profile=p)
    listed = server.aws("list-thing-types", profile=p)["thingTypes"]
    assert [t["thingTypeName"] for t in listed] == ["gateway", "sensor"], listed
    only = server.aws("list-thing-types", "--thing-type-name", "sensor", profile=p)["thingTypes"]
    assert [t["thingTypeName"] for t in only] == ["sensor"]
    server.aws("update-thing-type", "--thing-type-name", "sensor", "--thing-type-properties",
               json.dumps({"thingTypeDescription": "a better sensor"}), profile=p)
    assert server.aws("describe-thing-type", "--thing-type-name", "sensor", profile=p)["thingTypeProperties"][
        "thingTypeDescription"] == "a better sensor"

    # A thing of the type; up to 50 attributes with a type.
    server.aws("create-thing", "--thing-name", "s1", "--thing-type-name", "sensor", profile=p)
    assert server.aws("describe-thing", "--thing-name", "s1", profile=p)["thingTypeName"] == "sensor"

    # Not deprecated: not deletable.
    with unchanged(acct.iot):
        expect_error(acct.iot.delete_thing_type, "InvalidRequestException", 400, thingTypeName="sensor")

    server.aws("deprecate-thing-type", "--thing-type-name", "sensor", profile=p)
    meta = server.aws("describe-thing-type", "--thing-type-name", "sensor", profile=p)["thingTypeMetadata"]
    assert meta["deprecated"] is True and meta["deprecationDate"], meta
    # Deprecated: no new thing may be given it, existing ones keep it.
    with unchanged(acct.iot):
        expect_error(acct.iot.create_thing, "InvalidRequestException", 400, thingName="s2", thingTypeName="sensor")
    server.aws("create-thing", "--thing-name", "g1", profile=p)
    with unchanged(acct.iot):
        expect_error(acct.iot.update_thing, "InvalidRequestException", 400, thingName="g1", thingTypeName="sensor")
        # A thing still has it: not deletable.
        expect_error(acct.iot.delete_thing_type, "InvalidRequestException", 400, thingTypeName="sensor")

    server.aws("deprecate-thing-type", "--thing-type-name", "sensor", "--undo-deprecate", profile=p)
    assert server.aws("describe-thing-type", "--thing-type-name", "sensor", profile=p)["thingTypeMetadata"]["deprecated"] is False
    server.aws("update-thing", "--thing-name", "g1", "--thing-type-name", "sensor", profile=p)

    server.aws("update-thing", "--thing-name", "g1", "--remove-thing-type", profile=p)
    server.aws("update-thing", "--thing-name", "s1", "--remove-thing-type", profile=p)
    server.aws("deprecate-thing-type", "--thing-type-name", "sensor", profile=p)
    server.aws("delete-thing-type", "--thing-type-name", "sensor", profile=p)
    server.aws_error("describe-thing-type", "--thing-type-name", "sensor", code="ResourceNotFoundException", profile=p)


def test_thing_type_refusals_change_nothing(server, acct):
    iot = acct.iot
    iot.create_thing_type(thingTypeName="t")
    iot.create_thing(thingName="plain")
    with unchanged(iot):
        expect_error(iot.create_thing, "ResourceNotFoundException", 404, thingName="x", thingTypeName="nope")
        expect_error(iot.update_thing, "ResourceNotFoundException", 404, thingName="plain", thingTypeName="nope")
        expect_error(iot.create_thing_type, "ResourceAlreadyExistsException", 409, thingTypeName="t")
        expect_error(iot.create_thing_type, "InvalidRequestException", 400, thingTypeName="four",
                     thingTypeProperties={"searchableAttributes": ["a", "b", "c", "d"]})
        expect_error(iot.create_thing_type, "InvalidRequestException", 400, thingTypeName="bad",
                     thingTypeProperties={"thingTypeDescription": "x" * 2029})
        expect_error(iot.delete_thing_type, "ResourceNotFoundException", 404, thingTypeName="nope")
        expect_error(iot.deprecate_thing_type, "ResourceNotFoundException", 404, thingTypeName="nope")
    # Another account does not see the type.
    other = Acct(server)
    expect_error(other.iot.describe_thing_type, "ResourceNotFoundException", 404, thingTypeName="t")
    expect_error(other.iot.create_thing, "ResourceNotFoundException", 404, thingName="x", thingTypeName="t")


# ------------------------------------------------------------------------------------------------
# thing groups
# ------------------------------------------------------------------------------------------------
def test_thing_groups_with_the_cli(server, acct):
    p = acct.profile
    arn = f"arn:aws:iot:us-east-1:{acct.id}:thinggroup/"
    root = server.aws("create-thing-group", "--thing-group-name", "site", "--thing-group-properties",
                      json.dumps({"thingGroupDescription": "a site", "attributePayload": {"attributes": {"city": "Oslo"}}}),
                      "--tags", "Key=team,Value=iot", profile=p)
    assert root["thingGroupArn"] == arn + "site" and root["thingGroupId"], root
    server.aws("create-thing-group", "--thing-group-name", "floor", "--parent-group-name", "site", profile=p)
    server.aws("create-thing-group", "--thing-group-name", "room", "--parent-group-name", "floor", profile=p)
    described = server.aws("describe-thing-group", "--thing-group-name", "room", profile=p)
    assert described["version"] == 1 and described["status"] == "ACTIVE", described
    meta = described["thingGroupMetadata"]
    assert meta["parentGroupName"] == "floor" and meta["creationDate"]
    assert meta["rootToParentThingGroups"] == [{"groupName": "site", "groupArn": arn + "site"},
                                              {"groupName": "floor", "groupArn": arn + "floor"}], meta
    site = server.aws("describe-thing-group", "--thing-group-name", "site", profile=p)
    assert site["thingGroupProperties"] == {"thingGroupDescription": "a site", "attributePayload": {"attributes": {"city": "Oslo"}}}

    updated = server.aws("update-thing-group", "--thing-group-name", "site", "--expected-version", "1",
                         "--thing-group-properties", json.dumps({"attributePayload": {"attributes": {"zip": "0150"}, "merge": True}}),
                         profile=p)
    assert updated["version"] == 2
    assert server.aws("describe-thing-group", "--thing-group-name", "site", profile=p)["thingGroupProperties"][
        "attributePayload"]["attributes"] == {"city": "Oslo", "zip": "0150"}

    names = lambda out: [g["groupName"] for g in out["thingGroups"]]  # noqa: E731
    assert names(server.aws("list-thing-groups", profile=p)) == ["floor", "room", "site"]
    assert names(server.aws("list-thing-groups", "--no-recursive", profile=p)) == ["site"]
    assert names(server.aws("list-thing-groups", "--parent-group", "site", profile=p)) == ["floor"]
    assert names(server.aws("list-thing-groups", "--parent-group", "site", "--recursive", profile=p)) == ["floor", "room"]
    assert names(server.aws("list-thing-groups", "--name-prefix-filter", "fl", profile=p)) == ["floor"]

    for thing in ("t1", "t2"):
        server.aws("create-thing", "--thing-name", thing, profile=p)
    server.aws("add-thing-to-thing-group", "--thing-group-name", "room", "--thing-name", "t1", profile=p)
    server.aws("add-thing-to-thing-group", "--thing-group-arn", arn + "site",
               "--thing-arn", f"arn:aws:iot:us-east-1:{acct.id}:thing/t2", profile=p)
    things = lambda *args: server.aws("list-things-in-thing-group", *args, profile=p)["things"]  # noqa: E731
    assert things("--thing-group-name", "room") == ["t1"]
    assert things("--thing-group-name", "site") == ["t2"]
    assert things("--thing-group-name", "site", "--recursive") == ["t1", "t2"]
    server.aws("update-thing-groups-for-thing", "--thing-name", "t1", "--thing-groups-to-add", "site", "floor",
               "--thing-groups-to-remove", "room", profile=p)
    assert names(server.aws("list-thing-groups-for-thing", "--thing-name", "t1", profile=p)) == ["floor", "site"]
    server.aws("remove-thing-from-thing-group", "--thing-group-name", "floor", "--thing-name", "t1", profile=p)
    assert names(server.aws("list-thing-groups-for-thing", "--thing-name", "t1", profile=p)) == ["site"]

    # A group with children is not deleted; leaves first.
    with unchanged(acct.iot):
        expect_error(acct.iot.delete_thing_group, "InvalidRequestException", 400, thingGroupName="floor")
        expect_error(acct.iot.update_thing_group, "VersionConflictException", 409, thingGroupName="site",
                     thingGroupProperties={"thingGroupDescription": "x"}, expectedVersion=1)
        expect_error(acct.iot.delete_thing_group, "VersionConflictException", 409, thingGroupName="room", expectedVersion=7)
    server.aws("delete-thing-group", "--thing-group-name", "room", profile=p)
    server.aws("delete-thing-group", "--thing-group-name", "floor", profile=p)
    server.aws("delete-thing-group", "--thing-group-name", "floor", profile=p)  # gone already: success
    assert names(server.aws("list-thing-groups", profile=p)) == ["site"]


def test_group_bounds_and_refusals_change_nothing(server, acct):
    iot = acct.iot
    parent = None
    for level in range(1, 8):
        kwargs = {"parentGroupName": parent} if parent else {}
        iot.create_thing_group(thingGroupName=f"l{level}", **kwargs)
        parent = f"l{level}"
    iot.create_thing(thingName="t")
    for index in range(10):
        iot.create_thing_group(thingGroupName=f"g{index}")
        iot.add_thing_to_thing_group(thingGroupName=f"g{index}", thingName="t")
    iot.create_thing_group(thingGroupName="g10")
    with unchanged(iot):
        # An eighth level.
        expect_error(iot.create_thing_group, "InvalidRequestException", 400, thingGroupName="l8", parentGroupName="l7")
        # An eleventh group.
        expect_error(iot.add_thing_to_thing_group, "InvalidRequestException", 400, thingGroupName="g10", thingName="t")
        expect_error(iot.update_thing_groups_for_thing, "InvalidRequestException", 400, thingName="t",
                     thingGroupsToAdd=["g10", "l1"], thingGroupsToRemove=["g0"])
        expect_error(iot.create_thing_group, "ResourceNotFoundException", 404, thingGroupName="orphan", parentGroupName="nope")
        expect_error(iot.add_thing_to_thing_group, "ResourceNotFoundException", 404, thingGroupName="nope", thingName="t")
        expect_error(iot.add_thing_to_thing_group, "ResourceNotFoundException", 404, thingGroupName="g10", thingName="nope")
        expect_error(iot.add_thing_to_thing_group, "ResourceNotFoundException", 404,
                     thingGroupArn="arn:aws:iot:us-east-1:111111111111:thinggroup/g10", thingName="t")
        expect_error(iot.create_thing_group, "ResourceAlreadyExistsException", 409, thingGroupName="g1",
                     thingGroupProperties={"thingGroupDescription": "another"})
        expect_error(iot.create_thing_group, "InvalidRequestException", 400, thingGroupName="bad name")
        expect_error(iot.add_thing_to_thing_group, "InvalidRequestException", 400, thingGroupName="g10", thingName="t",
                     overrideDynamicGroups=True)


# ------------------------------------------------------------------------------------------------
# policies attached to groups
# ------------------------------------------------------------------------------------------------
def test_policies_attach_to_groups(server, acct):
    p, iot = acct.profile, acct.iot
    group_arn = f"arn:aws:iot:us-east-1:{acct.id}:thinggroup/fleet"
    server.aws("create-thing-group", "--thing-group-name", "fleet", profile=p)
    server.aws("create-thing-group", "--thing-group-name", "sub", "--parent-group-name", "fleet", profile=p)
    server.aws("create-policy", "--policy-name", "fleet-policy", "--policy-document", document(allow("iot:Connect", "client/*")),
               profile=p)
    server.aws("attach-policy", "--policy-name", "fleet-policy", "--target", group_arn, profile=p)
    assert server.aws("list-targets-for-policy", "--policy-name", "fleet-policy", profile=p)["targets"] == [group_arn]
    listed = server.aws("list-attached-policies", "--target", group_arn, profile=p)["policies"]
    assert [x["policyName"] for x in listed] == ["fleet-policy"]
    sub_arn = group_arn.replace("fleet", "sub")
    assert server.aws("list-attached-policies", "--target", sub_arn, profile=p)["policies"] == []
    inherited = server.aws("list-attached-policies", "--target", sub_arn, "--recursive", profile=p)["policies"]
    assert [x["policyName"] for x in inherited] == ["fleet-policy"]

    other = Acct(server)
    other.iot.create_thing_group(thingGroupName="fleet")
    foreign = f"arn:aws:iot:us-east-1:{other.id}:thinggroup/fleet"
    with unchanged(iot):
        expect_error(iot.attach_policy, "ResourceNotFoundException", 404, policyName="fleet-policy", target=foreign)
        expect_error(iot.attach_policy, "ResourceNotFoundException", 404, policyName="fleet-policy",
                     target=group_arn.replace("fleet", "missing"))
        expect_error(iot.attach_policy, "ResourceNotFoundException", 404, policyName="fleet-policy",
                     target=group_arn.replace("us-east-1", "eu-west-1"))
        expect_error(iot.detach_policy, "ResourceNotFoundException", 404, policyName="fleet-policy", target=foreign)
        expect_error(iot.delete_policy, "DeleteConflictException", 409, policyName="fleet-policy")
    assert other.iot.list_attached_policies(target=foreign)["policies"] == []

    server.aws("detach-policy", "--policy-name", "fleet-policy", "--target", group_arn, profile=p)
    assert server.aws("list-targets-for-policy", "--policy-name", "fleet-policy", profile=p)["targets"] == []
    server.aws("attach-policy", "--policy-name", "fleet-policy", "--target", sub_arn, profile=p)
    # Deleting a group detaches its policies (as AWS does).
    server.aws("delete-thing-group", "--thing-group-name", "sub", profile=p)
    assert server.aws("list-targets-for-policy", "--policy-name", "fleet-policy", profile=p)["targets"] == []
    server.aws("delete-policy", "--policy-name", "fleet-policy", profile=p)


def grouped_device(server, openssl, group: str):
    """A device whose certificate has no policy of its own and is attached to a new thing in
    `group`."""
    device = make_device(server, openssl, policy=None)
    thing = unique("thing")
    server.aws("create-thing", "--thing-name", thing)
    server.aws("attach-thing-principal", "--thing-name", thing, "--principal", cert_arn(server, device))
    server.aws("add-thing-to-thing-group", "--thing-group-name", group, "--thing-name", thing)
    return device, thing


def test_a_parent_groups_policy_applies_at_connect(server, openssl):
    parent, child = unique("parent"), unique("child")
    topic = unique("grp/t")
    server.aws("create-thing-group", "--thing-group-name", parent)
    server.aws("create-thing-group", "--thing-group-name", child, "--parent-group-name", parent)
    device, thing = grouped_device(server, openssl, child)
    denied = mosquitto("mosquitto_pub", server, device, "-i", thing, "-t", topic, "-m", "x", "-q", "1")
    assert refused(denied), denied

    policy = unique("parent-policy")
    server.aws("create-policy", "--policy-name", policy, "--policy-document",
               document(allow(["iot:Connect", "iot:Publish"], "client/${iot:Connection.Thing.ThingName}", f"topic/{topic}")))
    group_arn = server.aws("describe-thing-group", "--thing-group-name", parent)["thingGroupArn"]
    server.aws("attach-policy", "--policy-name", policy, "--target", group_arn)
    # The node holds this certificate's policies since the refused attempt: the change feed
    # brings the group's policy within its poll interval (200 ms), so a connect right after the
    # attach may still be refused; within 2 s it is allowed.
    deadline = time.monotonic() + 2.0
    while True:
        allowed = mosquitto("mosquitto_pub", server, device, "-i", thing, "-t", topic, "-m", "x", "-q", "1")
        if allowed.returncode == 0 or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    assert allowed.returncode == 0, allowed.stderr
    outside = mosquitto("mosquitto_pub", server, device, "-i", "someone-else", "-t", topic, "-m", "x", "-q", "1")
    assert refused(outside), outside


def test_group_changes_reach_a_live_session(server, openssl):
    parent, child = unique("live-parent"), unique("live-child")
    topic = unique("live/t")
    server.aws("create-thing-group", "--thing-group-name", parent)
    server.aws("create-thing-group", "--thing-group-name", child, "--parent-group-name", parent)
    device, thing = grouped_device(server, openssl, child)
    connect_only = unique("connect-only")
    server.aws("create-policy", "--policy-name", connect_only, "--policy-document", document(allow("iot:Connect", "client/*")))
    server.aws("attach-policy", "--policy-name", connect_only, "--target", cert_arn(server, device))
    sock = connected_v5(server, device, thing)
    packet_ids = iter(range(1, 1000))
    assert publish_v5(sock, topic, next(packet_ids)) == 0x87

    publish = unique("publish")
    server.aws("create-policy", "--policy-name", publish, "--policy-document", document(allow("iot:Publish", f"topic/{topic}")))
    group_arn = server.aws("describe-thing-group", "--thing-group-name", parent)["thingGroupArn"]
    server.aws("attach-policy", "--policy-name", publish, "--target", group_arn)
    until(lambda: publish_v5(sock, topic, next(packet_ids)) == 0, within=2.0)

    server.aws("remove-thing-from-thing-group", "--thing-group-name", child, "--thing-name", thing)
    until(lambda: publish_v5(sock, topic, next(packet_ids)) == 0x87, within=2.0)

    server.aws("add-thing-to-thing-group", "--thing-group-name", parent, "--thing-name", thing)
    until(lambda: publish_v5(sock, topic, next(packet_ids)) == 0, within=2.0)
    server.aws("detach-policy", "--policy-name", publish, "--target", group_arn)
    until(lambda: publish_v5(sock, topic, next(packet_ids)) == 0x87, within=2.0)
    sock.close()
