"""Access keys that can be revoked and accounts whose deletion leaves nothing behind, from the
attacker's side: a deleted key (or a deleted account's key) is refused at once with AWS's
UnrecognizedClientException, writes included, nothing is written, and one tenant cannot delete
another's keys. Two `certfleet server` nodes on one PostgreSQL: a key deleted through the
registry is refused by both within a second."""

from __future__ import annotations

import configparser
import json
import sqlite3
import subprocess
import time
import uuid

import boto3
import botocore.exceptions
from botocore.config import Config

from conftest import REGION, TEST_PASSPHRASE, _certfleet_bin, _clean_env
from test_server import POSTGRES_URL, Node

WITHIN = 1.0  # seconds a revocation may take to reach every node


def refused_within(call) -> float:
    """Calls `call` until it is refused as an unknown key; fails if that takes over WITHIN."""
    started = time.monotonic()
    while True:
        try:
            call()
        except botocore.exceptions.ClientError as error:
            assert error.response["Error"]["Code"] == "UnrecognizedClientException", error.response
            assert error.response["ResponseMetadata"]["HTTPStatusCode"] == 403, error.response
            return time.monotonic() - started
        elapsed = time.monotonic() - started
        assert elapsed < WITHIN, f"the revoked key is still accepted after {elapsed:.2f} s"
        time.sleep(0.02)


def refused_now(call) -> None:
    try:
        call()
    except botocore.exceptions.ClientError as error:
        assert error.response["Error"]["Code"] == "UnrecognizedClientException", error.response
        return
    raise AssertionError("the call was accepted")


def list_keys(server, account_id: str) -> list:
    out = server.certfleet("account", "keys", "list", "--data-dir", str(server.data_dir), "--account", account_id,
                           "--output", "json").stdout
    return json.loads(out)["accessKeys"]


def test_a_deleted_key_is_refused_at_once_and_the_other_key_keeps_working(server):
    alice = server.create_account()
    spare = f"{alice.profile}-spare"
    server.certfleet("account", "keys", "create", "--data-dir", str(server.data_dir), "--account", alice.id,
                     "--profile", spare, "--output", "json")
    listed = server.certfleet("account", "keys", "list", "--data-dir", str(server.data_dir), "--account", alice.id,
                              "--output", "json").stdout
    for profile in (alice.profile, spare):
        assert server.credentials(profile)[1] not in listed, "a listing never shows a secret"
    keys = json.loads(listed)["accessKeys"]
    assert [key["accessKeyId"] for key in keys] == [alice.access_key_id, server.credentials(spare)[0]]
    assert all(key["accountId"] == alice.id and key["createDate"] for key in keys)

    client = server.boto3_client(alice.profile)
    client.list_things()  # served, and cached by the API
    deleted = server.certfleet("account", "keys", "delete", "--data-dir", str(server.data_dir), "--account", alice.id,
                               alice.access_key_id, "--output", "json").stdout
    assert json.loads(deleted) == {"accountId": alice.id, "accessKeyId": alice.access_key_id, "deleted": True}

    took = refused_within(client.list_things)
    print(f"deleted key refused after {took:.3f} s")
    refused_now(lambda: client.create_thing(thingName="after-revocation"))
    server.aws_error("list-things", code="UnrecognizedClientException", profile=alice.profile)

    other = server.boto3_client(spare)
    assert [thing["thingName"] for thing in other.list_things()["things"]] == []
    assert [key["accessKeyId"] for key in list_keys(server, alice.id)] == [server.credentials(spare)[0]]
    again = server.certfleet("account", "keys", "delete", "--data-dir", str(server.data_dir), "--account", alice.id,
                             alice.access_key_id, check=False)
    assert again.returncode != 0 and "has no access key" in again.stderr, again.stderr


def test_a_tenant_cannot_list_or_delete_another_tenants_keys(server):
    alice = server.create_account()
    mallory = server.create_account()
    # Mallory names Alice's key under her own account: refused, and Alice's key still works.
    refused = server.certfleet("account", "keys", "delete", "--data-dir", str(server.data_dir), "--account", mallory.id,
                               alice.access_key_id, check=False)
    assert refused.returncode != 0 and "has no access key" in refused.stderr, refused.stderr
    assert [key["accessKeyId"] for key in list_keys(server, mallory.id)] == [mallory.access_key_id]
    assert [key["accessKeyId"] for key in list_keys(server, alice.id)] == [alice.access_key_id]
    server.boto3_client(alice.profile).list_things()
    missing = server.certfleet("account", "keys", "list", "--data-dir", str(server.data_dir), "--account", "000000000000",
                               check=False)
    assert missing.returncode != 0 and "does not exist" in missing.stderr, missing.stderr


def test_a_deleted_accounts_key_is_refused_at_once_and_nothing_is_left(server):
    victim = server.create_account()
    bystander = server.create_account()
    client = server.boto3_client(victim.profile)
    client.create_thing(thingName="before-deletion")
    client.create_policy(policyName="p", policyDocument=json.dumps(
        {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "iot:Connect", "Resource": "*"}]}))
    client.list_things()
    server.certfleet("account", "delete", "--data-dir", str(server.data_dir), victim.id)

    # Writes are refused at once, even where the key may still be cached: the write's own
    # transaction finds the account gone.
    refused_now(lambda: client.create_thing(thingName="after-deletion"))
    refused_within(client.list_things)
    assert victim.id not in [account["accountId"] for account in server.list_accounts()]

    db = sqlite3.connect(f"file:{server.data_dir / 'registry.db'}?mode=ro", uri=True)
    try:
        tables = [row[0] for row in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")]
        owned = {}
        for table in tables:
            columns = [row[1] for row in db.execute(f"PRAGMA table_info({table})")]
            if "account_id" in columns and table != "changes":
                count = db.execute(f"SELECT count(*) FROM {table} WHERE account_id = ?", (victim.id,)).fetchone()[0]
                if count:
                    owned[table] = count
        tags = db.execute("SELECT count(*) FROM tags WHERE resource_arn LIKE ?", (f"%:{victim.id}:%",)).fetchone()[0]
    finally:
        db.close()
    assert owned == {} and tags == 0, f"rows left owned by the deleted account: {owned}, tags {tags}"

    bystander_client = server.boto3_client(bystander.profile)
    bystander_client.create_thing(thingName="still-here")
    assert [t["thingName"] for t in bystander_client.list_things()["things"]] == ["still-here"]


def _client(node: Node, access_key: str, secret: str):
    session = boto3.session.Session(aws_access_key_id=access_key, aws_secret_access_key=secret, region_name=REGION)
    return session.client("iot", endpoint_url=node.url, verify=str(node.data_dir / "server-root.pem"),
                          config=Config(retries={"total_max_attempts": 1, "mode": "standard"}))


def test_two_nodes_on_postgresql_refuse_a_deleted_key_within_a_second(tmp_path):
    if not POSTGRES_URL:
        print("SKIP: two nodes on PostgreSQL: CERTFLEET_TEST_POSTGRES_URL is not set")
        return
    database = f"certfleet_e2e_{uuid.uuid4().hex[:10]}"
    admin_url = POSTGRES_URL.rsplit("/", 1)[0]
    subprocess.run(["psql", POSTGRES_URL, "-qc", f"CREATE DATABASE {database}"], check=True, capture_output=True)
    url = f"{admin_url}/{database}"
    env = {**_clean_env(), "CERTFLEET_KEY_PASSPHRASE": TEST_PASSPHRASE}

    def certfleet(*args: str) -> dict:
        done = subprocess.run([_certfleet_bin(), *args, "--data-dir", str(tmp_path / "first"), "--database-url", url,
                               "--output", "json"], capture_output=True, text=True, check=True, env=env)
        return json.loads(done.stdout)

    first = second = None
    try:
        first = Node(tmp_path / "first", "--database-url", url).wait_listening()
        second = Node(tmp_path / "second", "--database-url", url).wait_listening()
        account = certfleet("account", "create", "--profile", "tenant")["accountId"]
        parser = configparser.RawConfigParser()
        parser.read(tmp_path / "first" / "credentials")
        key, secret = parser["tenant"]["aws_access_key_id"], parser["tenant"]["aws_secret_access_key"]
        on_first, on_second = _client(first, key, secret), _client(second, key, secret)
        on_first.create_thing(thingName="t1")
        assert [t["thingName"] for t in on_second.list_things()["things"]] == ["t1"]

        certfleet("account", "keys", "delete", "--account", account, key)
        took = refused_within(on_second.list_things)
        print(f"node two refused the deleted key after {took:.3f} s")
        refused_within(on_first.list_things)
        refused_now(lambda: on_second.create_thing(thingName="t2"))
    finally:
        for node in (first, second):
            if node is not None:
                assert node.stop() == 0
        subprocess.run(["psql", POSTGRES_URL, "-qc", f"DROP DATABASE IF EXISTS {database} WITH (FORCE)"], capture_output=True)
