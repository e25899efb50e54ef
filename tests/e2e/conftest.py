"""Fixtures for the end-to-end tests: a real `certfleet server`, the stock AWS CLI, boto3, openssl.

The server runs once per test session in a temporary data directory (port 0). Tests that need
isolation create their own accounts (`server.create_account()`); the `default` account is the one
the server created on first start (account A of the seed walk-through).
"""

from __future__ import annotations

import configparser
import itertools
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

# awsiotsdk installs awscrt, and with it botocore signs through the CRT; the tests that fake the
# signing clock patch botocore's own signer, so keep that one in use.
os.environ["BOTO_DISABLE_CRT"] = "true"

import boto3  # noqa: E402
import pytest  # noqa: E402
from botocore.config import Config

REGION = "us-east-1"
TEST_PASSPHRASE = "certfleet-e2e-test-passphrase"
START_TIMEOUT = 30
STOP_TIMEOUT = 15
CLI_TIMEOUT = 60
LOG_TAIL_LINES = 80

_ANSI = re.compile(r"\x1b\[[0-9;]*m")


def _certfleet_bin() -> str:
    explicit = os.environ.get("CERTFLEET_BIN")
    if explicit:
        return explicit
    repo = Path(__file__).resolve().parents[2]
    for candidate in (repo / "target" / "debug" / "certfleet", repo / "target" / "release" / "certfleet"):
        if candidate.is_file():
            return str(candidate)
    found = shutil.which("certfleet")
    if found:
        return found
    raise RuntimeError("set CERTFLEET_BIN to the certfleet binary (cargo build -p certfleet)")


def _agent_bin() -> str:
    """certfleet-agent: $CERTFLEET_AGENT_BIN, else next to the certfleet binary (both are built
    into the same target directory by `cargo build -p certfleet -p certfleet-agent`)."""
    explicit = os.environ.get("CERTFLEET_AGENT_BIN")
    if explicit:
        return explicit
    beside = Path(_certfleet_bin()).resolve().parent / "certfleet-agent"
    if beside.is_file():
        return str(beside)
    found = shutil.which("certfleet-agent")
    if found:
        return found
    raise RuntimeError("build the device agent next to CERTFLEET_BIN (cargo build -p certfleet-agent)")


@pytest.fixture(scope="session")
def agent_bin() -> str:
    return _agent_bin()


def _aws_bin() -> str:
    # Prefer the `aws` next to the interpreter running pytest (the venv), then PATH.
    beside = Path(sys.executable).parent / "aws"
    if beside.is_file():
        return str(beside)
    found = shutil.which("aws")
    if not found:
        raise RuntimeError("the AWS CLI (`aws`) is not on PATH; install tests/e2e/requirements.txt")
    return found


def _clean_env() -> dict:
    """The machine's environment without any AWS_* variable (nothing may leak into the tests)."""
    return {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}


class AwsCliError(AssertionError):
    pass


class Account:
    def __init__(self, account_id: str, profile: str, access_key_id: str):
        self.id = account_id
        self.profile = profile
        self.access_key_id = access_key_id

    def __repr__(self) -> str:
        return f"Account({self.id}, profile={self.profile})"


class Server:
    """A running `certfleet server` and the helpers to talk to it."""

    def __init__(self, data_dir: Path, log_path: Path, extra_args: tuple = ()):
        self.extra_args = tuple(extra_args)  # e.g. ("--config", path)
        self.bin = _certfleet_bin()
        self.aws_bin = _aws_bin()
        self.data_dir = data_dir
        self.log_path = log_path
        self.proc: subprocess.Popen | None = None
        self._log = None
        self.url = ""
        self.endpoints: dict = {}
        self.default_account: Account | None = None
        self._profiles = itertools.count(1)
        self._cred_cache: dict = {}

    # -- paths / env ---------------------------------------------------------------------------
    @property
    def ca_bundle(self) -> str:
        return str(self.data_dir / "server-root.pem")

    @property
    def device_root(self) -> str:
        return str(self.data_dir / "device-root.pem")

    @property
    def credentials_file(self) -> str:
        return str(self.data_dir / "credentials")

    @property
    def config_file(self) -> str:
        return str(self.data_dir / "config")

    @property
    def env(self) -> dict:
        """Environment for the AWS CLI: the data dir's files, no AWS_* from the machine."""
        env = _clean_env()
        env["AWS_SHARED_CREDENTIALS_FILE"] = self.credentials_file
        env["AWS_CONFIG_FILE"] = self.config_file
        env["AWS_EC2_METADATA_DISABLED"] = "true"
        env["AWS_PAGER"] = ""
        return env

    def _certfleet_env(self) -> dict:
        env = _clean_env()
        env["CERTFLEET_KEY_PASSPHRASE"] = TEST_PASSPHRASE
        env.pop("CERTFLEET_DATABASE_URL", None)
        return env

    # -- lifecycle -----------------------------------------------------------------------------
    def start(self) -> None:
        self._log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(
            [self.bin, "server", "--data-dir", str(self.data_dir), "--api-addr", "127.0.0.1:0", "--mqtt-addr", "127.0.0.1:0",
             "--metrics-addr", "127.0.0.1:0", *self.extra_args],
            stdout=self._log,
            stderr=self._log,
            stdin=subprocess.DEVNULL,
            env=self._certfleet_env(),
        )
        endpoints_path = self.data_dir / "endpoints.json"
        deadline = time.monotonic() + START_TIMEOUT
        while True:
            if self.proc.poll() is not None:
                pytest.fail(
                    f"certfleet server exited with {self.proc.returncode} before listening\n{self.log_tail()}",
                    pytrace=False,
                )
            if endpoints_path.is_file():
                try:
                    self.endpoints = json.loads(endpoints_path.read_text())
                    if self.endpoints.get("api"):
                        break
                except (json.JSONDecodeError, OSError):
                    pass  # being written; try again
            if time.monotonic() > deadline:
                self.proc.kill()
                pytest.fail(
                    f"certfleet server did not write {endpoints_path} within {START_TIMEOUT}s\n{self.log_tail()}",
                    pytrace=False,
                )
            time.sleep(0.05)
        self.url = self.endpoints["api"]
        assert self.url.startswith("https://127.0.0.1:"), self.endpoints
        assert self.endpoints.get("region") == REGION, self.endpoints
        accounts = self.list_accounts()
        assert len(accounts) == 1, f"a fresh data dir should hold exactly one account: {accounts}"
        self.default_account = Account(accounts[0]["accountId"], "default", self.credentials("default")[0])

    def stop(self) -> int:
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
                pytest.fail(f"certfleet server did not stop within {STOP_TIMEOUT}s of SIGTERM\n{self.log_tail()}")
        if self._log:
            self._log.close()
        return self.proc.returncode

    def log_tail(self, lines: int = LOG_TAIL_LINES) -> str:
        try:
            text = _ANSI.sub("", self.log_path.read_text(errors="replace"))
        except OSError:
            return "(no server log)"
        tail = "\n".join(text.splitlines()[-lines:])
        return f"--- certfleet server log ({self.log_path}), last {lines} lines ---\n{tail}"

    # -- accounts ------------------------------------------------------------------------------
    def certfleet(self, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        proc = subprocess.run(
            [self.bin, *args], capture_output=True, text=True, env=self._certfleet_env(), timeout=CLI_TIMEOUT
        )
        if check and proc.returncode != 0:
            raise AssertionError(f"certfleet {' '.join(args)} exited {proc.returncode}\n{proc.stdout}\n{proc.stderr}")
        return proc

    def list_accounts(self) -> list:
        out = self.certfleet("account", "list", "--data-dir", str(self.data_dir), "--output", "json").stdout
        return json.loads(out)["accounts"]

    def create_account(self, profile: str | None = None) -> Account:
        """`certfleet account create` (a new account and CLI profile); returns its id and profile."""
        if profile is None:
            profile = f"acct{next(self._profiles)}-{uuid.uuid4().hex[:6]}"
        out = self.certfleet(
            "account", "create", "--data-dir", str(self.data_dir), "--profile", profile, "--output", "json"
        ).stdout
        info = json.loads(out)
        assert info["profile"] == profile, info
        assert re.fullmatch(r"[0-9]{12}", info["accountId"]), info
        self._cred_cache.pop(profile, None)
        return Account(info["accountId"], profile, info["accessKeyId"])

    def credentials(self, profile: str = "default") -> tuple[str, str]:
        """(access key id, secret) of a profile, read from DIR/credentials."""
        parser = configparser.RawConfigParser()
        parser.read(self.credentials_file)
        section = parser[profile]
        return section["aws_access_key_id"], section["aws_secret_access_key"]

    # -- the AWS CLI ---------------------------------------------------------------------------
    def aws(self, *args, profile: str = "default", check: bool = True, service: str = "iot", cwd=None):
        """Runs `aws --endpoint-url URL --ca-bundle DIR/server-root.pem --profile P iot ARGS`.

        check=True: asserts exit code 0 and returns the parsed JSON output (None if empty).
        check=False: returns the CompletedProcess.
        """
        if isinstance(profile, Account):
            profile = profile.profile
        cmd = [
            self.aws_bin,
            "--endpoint-url", self.url,
            "--ca-bundle", self.ca_bundle,
            "--profile", profile,
            "--output", "json",
            service,
            *[str(a) for a in args],
        ]
        proc = subprocess.run(cmd, capture_output=True, text=True, env=self.env, timeout=CLI_TIMEOUT, cwd=cwd)
        if not check:
            return proc
        if proc.returncode != 0:
            raise AwsCliError(
                f"aws {service} {' '.join(map(str, args))} (profile {profile}) exited {proc.returncode}\n"
                f"stdout: {proc.stdout}\nstderr: {proc.stderr}"
            )
        return json.loads(proc.stdout) if proc.stdout.strip() else None

    def aws_error(self, *args, code: str, profile: str = "default", cwd=None) -> subprocess.CompletedProcess:
        """Runs an AWS CLI command that must fail with the service error `code` (exit code 255)."""
        proc = self.aws(*args, profile=profile, check=False, cwd=cwd)
        assert proc.returncode == 255, (
            f"expected exit code 255 ({code}) from aws iot {' '.join(map(str, args))}, got {proc.returncode}\n"
            f"stdout: {proc.stdout}\nstderr: {proc.stderr}"
        )
        assert f"An error occurred ({code})" in proc.stderr, (
            f"expected {code} from aws iot {' '.join(map(str, args))}\nstderr: {proc.stderr}"
        )
        return proc

    # -- boto3 ---------------------------------------------------------------------------------
    def client(self, profile="default"):
        """A cached boto3 iot client for a profile (see boto3_client)."""
        if isinstance(profile, Account):
            profile = profile.profile
        if profile not in self._cred_cache:
            self._cred_cache[profile] = self.boto3_client(profile)
        return self._cred_cache[profile]

    def boto3_client(self, profile="default", *, access_key: str | None = None, secret_key: str | None = None,
                     service: str = "iot"):
        """A boto3 client for `profile` (credentials read from DIR/credentials, nothing from the
        machine), or for explicit keys; no retries, so every error surfaces at once."""
        if isinstance(profile, Account):
            profile = profile.profile
        if access_key is None or secret_key is None:
            akid, secret = self.credentials(profile)
            access_key = akid if access_key is None else access_key
            secret_key = secret if secret_key is None else secret_key
        session = boto3.session.Session(
            aws_access_key_id=access_key, aws_secret_access_key=secret_key, region_name=REGION
        )
        return session.client(
            service,
            endpoint_url=self.url,
            verify=self.ca_bundle,
            config=Config(retries={"total_max_attempts": 1, "mode": "standard"}, connect_timeout=10,
                          read_timeout=60),
        )


@pytest.fixture(scope="session")
def server(tmp_path_factory):
    base = tmp_path_factory.mktemp("certfleet")
    data_dir = base / "data"  # the server creates it on first start
    log_path = base / "server.log"
    srv = Server(data_dir, log_path)
    srv.start()
    try:
        yield srv
    finally:
        code = srv.stop()
        if code != 0:
            pytest.fail(f"certfleet server exited {code} after SIGTERM (expected 0)\n{srv.log_tail()}")


def configured_server(tmp_path_factory, name: str, config_text: str):
    """A server of its own with a configuration file, for the tests that need other settings
    than the session `server`'s (a fixture generator: yield from it); fails the test when it
    does not exit 0 on SIGTERM."""
    base = tmp_path_factory.mktemp(name)
    config = base / "certfleet.toml"
    config.write_text(config_text)
    srv = Server(base / "data", base / "server.log", extra_args=("--config", str(config)))
    srv.start()
    try:
        yield srv
    finally:
        code = srv.stop()
        if code != 0:
            pytest.fail(f"certfleet server exited {code} after SIGTERM (expected 0)\n{srv.log_tail()}")


@pytest.fixture(scope="session")
def open_egress_server(tmp_path_factory):
    """A second server whose operator allows plain http and allow-lists 127.0.0.1/32, so the
    tests' receivers (webhooks, rule destinations, pre-provisioning hooks) get requests; the rest
    of the default egress deny list stays (docs/egress.md). The session `server` keeps the default
    policy. A short pre-provisioning hook timeout, so the fleet provisioning test of a slow hook
    is quick."""
    yield from configured_server(
        tmp_path_factory, "certfleet-open-egress",
        '[egress]\nallow_http = true\nallow = ["127.0.0.1/32"]\n[provisioning]\nhook_timeout = "1s"\n',
    )


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    """On a failing test, append the tail of the server log (every node's, for a cluster) to the report."""
    outcome = yield
    report = outcome.get_result()
    if report.failed:
        srv = getattr(item, "funcargs", {}).get("server")
        if srv is not None:
            report.sections.append(("certfleet server log", srv.log_tail()))
        cluster = getattr(item, "funcargs", {}).get("cluster")
        if cluster is not None and hasattr(cluster, "log_tails"):
            report.sections.append(("certfleet cluster logs", cluster.log_tails()))


# ------------------------------------------------------------------------------------------------
# openssl
# ------------------------------------------------------------------------------------------------
class OpenSSL:
    """Runs openssl in a per-test directory, plus helpers for the usual keys and certificates."""

    def __init__(self, workdir: Path):
        self.dir = workdir
        self._names = itertools.count(1)

    def __call__(self, *args, input: bytes | None = None, check: bool = True) -> subprocess.CompletedProcess:
        proc = subprocess.run(
            ["openssl", *[str(a) for a in args]], cwd=self.dir, input=input, capture_output=True, timeout=60
        )
        if check and proc.returncode != 0:
            raise AssertionError(
                f"openssl {' '.join(map(str, args))} exited {proc.returncode}\n"
                f"{proc.stdout.decode(errors='replace')}\n{proc.stderr.decode(errors='replace')}"
            )
        return proc

    def path(self, name: str) -> Path:
        return self.dir / name

    def read(self, name: str) -> str:
        return (self.dir / name).read_text()

    def write(self, name: str, content) -> Path:
        p = self.dir / name
        if isinstance(content, bytes):
            p.write_bytes(content)
        else:
            p.write_text(content)
        return p

    def unique(self, prefix: str) -> str:
        return f"{prefix}{next(self._names)}"

    # keys
    def ec_key(self, name: str, curve: str = "prime256v1") -> str:
        self("ecparam", "-name", curve, "-genkey", "-noout", "-out", name)
        return name

    def rsa_key(self, name: str, bits: int = 2048) -> str:
        self("genrsa", "-out", name, bits)
        return name

    # certificates
    def self_signed_ca(self, name: str, cn: str | None = None, key: str | None = None) -> tuple[str, str]:
        """A self-signed CA (basicConstraints CA:TRUE) with a fresh P-256 key: (cert, key)."""
        key = key or self.ec_key(f"{name}.key")
        cn = cn or f"e2e-ca-{uuid.uuid4().hex[:12]}"
        self(
            "req", "-new", "-x509", "-key", key, "-sha256", "-days", 365, "-subj", f"/CN={cn}",
            "-addext", "basicConstraints=critical,CA:TRUE",
            "-addext", "keyUsage=critical,keyCertSign,cRLSign",
            "-out", f"{name}.pem",
        )
        return f"{name}.pem", key

    def csr(self, name: str, key: str, cn: str) -> str:
        self("req", "-new", "-key", key, "-subj", f"/CN={cn}", "-out", f"{name}.csr")
        return f"{name}.csr"

    def sign(self, csr: str, ca: str, ca_key: str, out: str, days: int = 365, ext: str | None = None) -> str:
        """Signs a CSR with a CA (`openssl x509 -req -CA ...`), leaf extensions by default."""
        if ext is None:
            ext = "basicConstraints=critical,CA:FALSE\nkeyUsage=critical,digitalSignature\n"
        extfile = self.write(f"{out}.ext", ext)
        self(
            "x509", "-req", "-in", csr, "-CA", ca, "-CAkey", ca_key, "-CAcreateserial",
            "-sha256", "-days", days, "-extfile", extfile.name, "-out", out,
        )
        return out

    def device_cert(self, name: str, ca: str, ca_key: str, cn: str | None = None) -> str:
        key = self.ec_key(f"{name}.key")
        csr = self.csr(name, key, cn or f"device-{uuid.uuid4().hex[:8]}")
        return self.sign(csr, ca, ca_key, f"{name}.pem")

    def verification_cert(self, name: str, ca: str, ca_key: str, code: str) -> str:
        key = self.ec_key(f"{name}.key")
        csr = self.csr(name, key, code)
        return self.sign(csr, ca, ca_key, f"{name}.pem")

    def self_signed_leaf(self, name: str, cn: str | None = None) -> str:
        key = self.ec_key(f"{name}.key")
        self(
            "req", "-new", "-x509", "-key", key, "-sha256", "-days", 365,
            "-subj", f"/CN={cn or 'device-' + uuid.uuid4().hex[:8]}",
            "-addext", "basicConstraints=critical,CA:FALSE",
            "-addext", "keyUsage=critical,digitalSignature",
            "-out", f"{name}.pem",
        )
        return f"{name}.pem"

    def fingerprint(self, cert: str) -> str:
        """SHA-256 fingerprint as AWS certificate ids are written: lowercase hex, no colons."""
        out = self("x509", "-noout", "-fingerprint", "-sha256", "-inform", "pem", "-in", cert).stdout.decode()
        value = out.strip().split("=", 1)[1]
        return value.replace(":", "").lower()


@pytest.fixture
def openssl(tmp_path) -> OpenSSL:
    work = tmp_path / "openssl"
    work.mkdir()
    return OpenSSL(work)
