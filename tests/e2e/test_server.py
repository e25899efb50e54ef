"""The server itself: TLS versions, the data directory's permissions, CA keys sealed at rest,
restarts (and a wrong passphrase), and two nodes sharing one PostgreSQL registry."""

from __future__ import annotations

import json
import os
import sqlite3
import stat
import subprocess
import time
import uuid
from pathlib import Path

import pytest

from conftest import REGION, TEST_PASSPHRASE, _certfleet_bin, _clean_env

POSTGRES_URL = os.environ.get("CERTFLEET_TEST_POSTGRES_URL", "")


class Node:
    """A `certfleet server` started by a test, with its own data directory."""

    def __init__(self, data_dir: Path, *extra: str, passphrase: str = TEST_PASSPHRASE):
        self.data_dir = data_dir
        self.log = data_dir.parent / f"{data_dir.name}.log"
        env = _clean_env()
        env["CERTFLEET_KEY_PASSPHRASE"] = passphrase
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(
                [_certfleet_bin(), "server", "--data-dir", str(data_dir), "--api-addr", "127.0.0.1:0", "--mqtt-addr", "127.0.0.1:0", *extra],
                stdout=log, stderr=log, stdin=subprocess.DEVNULL, env=env,
            )
        self.url = ""

    def wait_listening(self) -> "Node":
        endpoints = self.data_dir / "endpoints.json"
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, f"server exited {self.proc.returncode}:\n{self.log.read_text()[-4000:]}"
            if endpoints.is_file():
                try:
                    self.url = json.loads(endpoints.read_text())["api"]
                    return self
                except (json.JSONDecodeError, KeyError):
                    pass
            time.sleep(0.05)
        pytest.fail(f"no endpoints.json after 30 s:\n{self.log.read_text()[-4000:]}")

    def wait_exit(self) -> int:
        return self.proc.wait(timeout=30)

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.terminate()
        return self.proc.wait(timeout=15)

    def aws(self, *args: str, credentials_dir: Path | None = None, check: bool = True):
        files = credentials_dir or self.data_dir
        env = _clean_env()
        env.update(AWS_SHARED_CREDENTIALS_FILE=str(files / "credentials"), AWS_CONFIG_FILE=str(files / "config"),
                   AWS_EC2_METADATA_DISABLED="true", AWS_PAGER="")
        proc = subprocess.run(
            ["aws", "--endpoint-url", self.url, "--ca-bundle", str(self.data_dir / "server-root.pem"),
             "--output", "json", "iot", *args],
            capture_output=True, text=True, env=env, timeout=60,
        )
        if check:
            assert proc.returncode == 0, f"aws iot {' '.join(args)}: {proc.stderr}"
            return json.loads(proc.stdout) if proc.stdout.strip() else None
        return proc


def s_client(url: str, *flags: str) -> subprocess.CompletedProcess:
    host_port = url.removeprefix("https://")
    return subprocess.run(
        ["openssl", "s_client", "-connect", host_port, "-brief", *flags],
        input=b"", capture_output=True, timeout=30,
    )


@pytest.mark.parametrize(
    "flags, accepted",
    [
        (["-tls1_3"], True),
        (["-tls1_2"], True),
        (["-tls1_1", "-cipher", "DEFAULT@SECLEVEL=0"], False),
        (["-tls1", "-cipher", "DEFAULT@SECLEVEL=0"], False),
    ],
)
def test_api_speaks_tls_1_2_and_1_3_only(server, flags, accepted):
    proc = s_client(server.url, *flags, "-CAfile", server.ca_bundle, "-verify_return_error")
    output = (proc.stdout + proc.stderr).decode(errors="replace")
    if accepted:
        assert proc.returncode == 0, output
        assert "Verification: OK" in output, output
    else:
        assert proc.returncode != 0, output
        assert "Protocol version:" not in output or "alert" in output.lower(), output


def test_data_directory_is_private(server):
    mode = lambda path: stat.S_IMODE(os.stat(path).st_mode)
    assert mode(server.data_dir) == 0o700
    for name in ("credentials", "config", "registry.db"):
        assert mode(server.data_dir / name) == 0o600, name
    for name in ("server-root.pem", "device-root.pem", "endpoints.json"):
        assert (server.data_dir / name).is_file(), name


def test_ca_keys_are_sealed_and_no_secret_reaches_the_log(server):
    db = sqlite3.connect(f"file:{server.data_dir / 'registry.db'}?mode=ro", uri=True)
    try:
        rows = db.execute("SELECT purpose, sealed_key FROM issuers ORDER BY purpose").fetchall()
    finally:
        db.close()
    assert [purpose for purpose, _ in rows] == ["device", "server"]
    for _, sealed in rows:
        blob = bytes.fromhex(sealed)
        assert blob.startswith(b"CFSEAL1"), blob[:16]
        assert b"PRIVATE KEY" not in blob
    raw = b"".join(p.read_bytes() for p in server.data_dir.glob("registry.db*"))
    assert b"PRIVATE KEY" not in raw
    assert TEST_PASSPHRASE.encode() not in raw

    # Exercise a few calls, then check the log never carries a key, a secret or the passphrase.
    server.aws("create-keys-and-certificate")
    server.aws("get-registration-code")
    _, secret = server.credentials("default")
    log = server.log_path.read_text(errors="replace")
    assert "PRIVATE KEY" not in log
    assert secret not in log
    assert TEST_PASSPHRASE not in log


def test_restart_keeps_state_and_a_wrong_passphrase_is_refused(tmp_path, openssl):
    data = tmp_path / "node"
    node = Node(data).wait_listening()
    key = openssl.ec_key("device.key")
    csr = openssl.csr("device.csr", key, "restart-device")
    created = node.aws("create-certificate-from-csr", "--certificate-signing-request", f"file://{openssl.path(csr)}", "--set-as-active")
    assert node.stop() == 0

    wrong = Node(data, passphrase="not-the-passphrase")
    assert wrong.wait_exit() != 0
    assert "cannot be opened" in wrong.log.read_text()

    again = Node(data).wait_listening()
    try:
        found = again.aws("describe-certificate", "--certificate-id", created["certificateId"])
        assert found["certificateDescription"]["status"] == "ACTIVE"
        accounts = subprocess.run(
            [_certfleet_bin(), "account", "list", "--data-dir", str(data), "--output", "json"],
            capture_output=True, text=True, check=True, env={**_clean_env(), "CERTFLEET_KEY_PASSPHRASE": TEST_PASSPHRASE},
        )
        assert len(json.loads(accounts.stdout)["accounts"]) == 1, "a restart creates no second account"
    finally:
        assert again.stop() == 0


def test_two_nodes_share_one_postgresql_registry(tmp_path, openssl):
    if not POSTGRES_URL:
        print("SKIP: two nodes on PostgreSQL: CERTFLEET_TEST_POSTGRES_URL is not set")
        return
    database = f"certfleet_e2e_{uuid.uuid4().hex[:10]}"
    admin_url = POSTGRES_URL.rsplit("/", 1)[0]
    subprocess.run(["psql", POSTGRES_URL, "-qc", f"CREATE DATABASE {database}"], check=True, capture_output=True)
    url = f"{admin_url}/{database}"
    first = second = None
    try:
        first = Node(tmp_path / "first", "--database-url", url).wait_listening()
        second = Node(tmp_path / "second", "--database-url", url).wait_listening()
        # One set of CAs for the whole cluster: both nodes serve a certificate from the same server root.
        assert (tmp_path / "first" / "server-root.pem").read_text() == (tmp_path / "second" / "server-root.pem").read_text()
        assert (tmp_path / "first" / "device-root.pem").read_text() == (tmp_path / "second" / "device-root.pem").read_text()

        key = openssl.ec_key("pg.key")
        csr = openssl.csr("pg.csr", key, "pg-device")
        created = first.aws("create-certificate-from-csr", "--certificate-signing-request", f"file://{openssl.path(csr)}")
        seen = second.aws("describe-certificate", "--certificate-id", created["certificateId"],
                          credentials_dir=tmp_path / "first")
        assert seen["certificateDescription"]["status"] == "INACTIVE"

        # The DEFAULT-mode rule holds across nodes: register through one, refuse through the other.
        code = first.aws("get-registration-code")["registrationCode"]
        ca_pem, ca_key = openssl.self_signed_ca("pgroot")
        verification = openssl.verification_cert("pgverify", ca_pem, ca_key, code)
        first.aws("register-ca-certificate", "--ca-certificate", f"file://{openssl.path(ca_pem)}",
                  "--verification-certificate", f"file://{openssl.path(verification)}")
        other = subprocess.run(
            [_certfleet_bin(), "account", "create", "--data-dir", str(tmp_path / "first"), "--database-url", url,
             "--profile", "other", "--output", "json"],
            capture_output=True, text=True, check=True, env={**_clean_env(), "CERTFLEET_KEY_PASSPHRASE": TEST_PASSPHRASE},
        )
        assert json.loads(other.stdout)["profile"] == "other"
        other_code = second.aws("get-registration-code", "--profile", "other", credentials_dir=tmp_path / "first")
        other_verification = openssl.verification_cert("pgverify2", ca_pem, ca_key, other_code["registrationCode"])
        refused = second.aws("register-ca-certificate", "--ca-certificate", f"file://{openssl.path(ca_pem)}",
                             "--verification-certificate", f"file://{openssl.path(other_verification)}", "--profile", "other",
                             credentials_dir=tmp_path / "first", check=False)
        assert refused.returncode == 255 and "ResourceAlreadyExistsException" in refused.stderr, refused.stderr
    finally:
        for node in (first, second):
            if node is not None:
                assert node.stop() == 0
        subprocess.run(["psql", POSTGRES_URL, "-qc", f"DROP DATABASE IF EXISTS {database} WITH (FORCE)"], capture_output=True)
