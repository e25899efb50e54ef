"""A cluster of `certfleet server` nodes for the end-to-end tests (issue 14).

`Cluster` starts its own `nats-server` with JetStream (an explicit free port, since nats-server
cannot report one it picked, and a store in a temporary directory; it can be stopped, killed and
restarted on the same port and store), and N `certfleet server` nodes `n1`..`nN` on one fresh
PostgreSQL database (`CERTFLEET_TEST_POSTGRES_URL` names the server; each cluster creates a
database of its own and drops it at the end, so test modules never collide). Every node has its
own data directory and its own API, MQTT and metrics ports (127.0.0.1 port 0, read from its
`endpoints.json`), `--node-id nK` and `--nats-url` (unless the cluster is made with
`nats=False`: nodes that share only the registry, as before the fabric). They share one account,
one CA and one passphrase: the first node creates the account and the CAs in the database and
writes the CLI credentials into its data directory; the others find them there, and their CA
keys open with the same passphrase.

A node is a `conftest.Server`, so every helper of the suite works against any node (`aws`,
`client`, `certfleet`, and `test_gateway`'s `make_device`, `mosquitto`, `start_sub`, which read
`endpoints["mqtt_addr"]` and `ca_bundle`). A node can be SIGKILLed and restarted (same node id,
same data directory, new ports).

    yield from cluster_fixture(tmp_path_factory, "cluster")   # in a fixture: 3 nodes and NATS

Teardown stops every node with SIGTERM (and fails the test if one does not exit 0), stops NATS
and drops the database; nothing started here outlives the fixture.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import time
import urllib.request
import uuid
from pathlib import Path

import pytest

from conftest import _ANSI, LOG_TAIL_LINES, START_TIMEOUT, STOP_TIMEOUT, TEST_PASSPHRASE, Account, Server

POSTGRES_URL = os.environ.get("CERTFLEET_TEST_POSTGRES_URL", "")
NATS_START_TIMEOUT = 15


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now (bound to port 0, then closed)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _nats_bin() -> str:
    for candidate in (os.environ.get("NATS_SERVER_BIN"), "/usr/sbin/nats-server", "/usr/bin/nats-server"):
        if candidate and Path(candidate).is_file():
            return candidate
    raise RuntimeError("nats-server is not installed (apt-get install nats-server; .ci/run does it)")


def _tail(path: Path, title: str, lines: int = LOG_TAIL_LINES) -> str:
    try:
        text = _ANSI.sub("", path.read_text(errors="replace"))
    except OSError:
        return f"(no {title} log)"
    tail = "\n".join(text.splitlines()[-lines:])
    return f"--- {title} log ({path}), last {lines} lines ---\n{tail}"


class NatsServer:
    """A `nats-server -js` of the test's own, on a free port with its store in `work`."""

    def __init__(self, work: Path, name: str = "certfleet-e2e"):
        self.work = work
        self.name = name
        self.store = work / "jetstream"
        self.log_path = work / "nats-server.log"
        self.port = free_port()
        self.monitor_port = free_port()
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"nats://127.0.0.1:{self.port}"

    def start(self) -> None:
        """Starts (or starts again) on the same port and store; returns once it is healthy."""
        assert self.proc is None or self.proc.poll() is not None, "nats-server is running already"
        self.work.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                [_nats_bin(), "-js", "-sd", str(self.store), "-a", "127.0.0.1", "-p", str(self.port),
                 "-m", str(self.monitor_port), "-n", self.name],
                stdout=log, stderr=log, stdin=subprocess.DEVNULL,
            )
        deadline = time.monotonic() + NATS_START_TIMEOUT
        while True:
            if self.proc.poll() is not None:
                pytest.fail(f"nats-server exited with {self.proc.returncode}\n{self.log_tail()}", pytrace=False)
            try:
                if self._monitor("healthz").get("status") == "ok":
                    return
            except OSError:
                pass
            if time.monotonic() > deadline:
                self.kill()
                pytest.fail(f"nats-server not healthy within {NATS_START_TIMEOUT}s\n{self.log_tail()}", pytrace=False)
            time.sleep(0.05)

    def stop(self) -> None:
        """SIGTERM, then SIGKILL if it lingers; the store stays for a restart."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

    def restart(self) -> None:
        self.stop()
        self.start()

    def _monitor(self, path: str) -> dict:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.monitor_port}/{path}", timeout=2) as response:
            return json.loads(response.read())

    def connections(self) -> int:
        """How many clients are connected to it (the nodes' NATS connections)."""
        return int(self._monitor("connz")["num_connections"])

    def log_tail(self, lines: int = LOG_TAIL_LINES) -> str:
        return _tail(self.log_path, "nats-server", lines)


class Database:
    """A fresh PostgreSQL database on the test server, dropped (WITH (FORCE)) by `drop`."""

    def __init__(self, server_url: str):
        if not server_url:
            pytest.fail("the cluster tests need PostgreSQL: set CERTFLEET_TEST_POSTGRES_URL "
                        "(e.g. postgres://postgres@127.0.0.1:5432/test)", pytrace=False)
        self.server_url = server_url
        self.name = f"certfleet_cluster_{uuid.uuid4().hex[:10]}"
        self.url = f"{server_url.rsplit('/', 1)[0]}/{self.name}"
        self._psql(f"CREATE DATABASE {self.name}", check=True)

    def _psql(self, statement: str, check: bool = False) -> None:
        done = subprocess.run(["psql", self.server_url, "-qc", statement], capture_output=True, text=True, timeout=60)
        if check and done.returncode != 0:
            raise AssertionError(f"psql: {statement}: {done.stderr}")

    def refuse_connections(self) -> None:
        """An outage of this database only (the PostgreSQL server is shared): no new connection
        is allowed and every open one is closed."""
        self._psql(f"ALTER DATABASE {self.name} ALLOW_CONNECTIONS false", check=True)
        self._psql(f"SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = '{self.name}'",
                   check=True)

    def allow_connections(self) -> None:
        self._psql(f"ALTER DATABASE {self.name} ALLOW_CONNECTIONS true", check=True)

    def drop(self) -> None:
        self._psql(f"ALTER DATABASE {self.name} ALLOW_CONNECTIONS true")
        self._psql(f"DROP DATABASE IF EXISTS {self.name} WITH (FORCE)")


class ClusterNode(Server):
    """One `certfleet server` of a cluster: its own data directory and ports, the cluster's
    database, NATS and credentials (the first node's data directory holds those)."""

    def __init__(self, name: str, data_dir: Path, log_path: Path, database_url: str, nats_url: str | None,
                 home: Path, passphrase: str = TEST_PASSPHRASE):
        extra = ["--node-id", name, "--database-url", database_url]
        if nats_url:
            extra += ["--nats-url", nats_url]
        super().__init__(data_dir, log_path, extra_args=tuple(extra))
        self.name = name
        self.database_url = database_url
        self.home = home  # the first node's data directory: CLI credentials and profiles
        self.passphrase = passphrase

    def __repr__(self) -> str:
        return f"ClusterNode({self.name}, mqtt={self.endpoints.get('mqtt_addr')}, api={self.url})"

    # The default account's credentials were written by the first node: every node uses them.
    @property
    def credentials_file(self) -> str:
        return str(self.home / "credentials")

    @property
    def config_file(self) -> str:
        return str(self.home / "config")

    @property
    def mqtt_addr(self) -> tuple[str, int]:
        host, port = self.endpoints["mqtt_addr"].rsplit(":", 1)
        return host, int(port)

    def _certfleet_env(self) -> dict:
        env = super()._certfleet_env()
        env["CERTFLEET_KEY_PASSPHRASE"] = self.passphrase
        env["CERTFLEET_DATABASE_URL"] = self.database_url  # the CLI's --database-url, for every command
        return env

    # -- lifecycle -----------------------------------------------------------------------------
    def launch(self) -> None:
        """Starts the process; `wait_listening` waits for its endpoints.json (written anew at
        every start: a stale one from a previous run is removed first)."""
        assert self.proc is None or self.proc.poll() is not None, f"{self.name} is running already"
        (self.data_dir / "endpoints.json").unlink(missing_ok=True)
        self.endpoints, self.url = {}, ""
        self._cred_cache = {}
        self._log = open(self.log_path, "ab")
        self._log.write(f"\n=== {self.name} started at {time.strftime('%H:%M:%S')} ===\n".encode())
        self._log.flush()
        self.proc = subprocess.Popen(
            [self.bin, "server", "--data-dir", str(self.data_dir), "--api-addr", "127.0.0.1:0",
             "--mqtt-addr", "127.0.0.1:0", "--metrics-addr", "127.0.0.1:0", *self.extra_args],
            stdout=self._log, stderr=self._log, stdin=subprocess.DEVNULL, env=self._certfleet_env(),
        )

    def wait_listening(self) -> None:
        endpoints_path = self.data_dir / "endpoints.json"
        deadline = time.monotonic() + START_TIMEOUT
        while True:
            if self.proc.poll() is not None:
                pytest.fail(f"node {self.name} exited with {self.proc.returncode} before listening\n{self.log_tail()}",
                            pytrace=False)
            if endpoints_path.is_file():
                try:
                    self.endpoints = json.loads(endpoints_path.read_text())
                    if self.endpoints.get("api") and self.endpoints.get("mqtt_addr"):
                        break
                except (json.JSONDecodeError, OSError):
                    pass  # being written
            if time.monotonic() > deadline:
                self.proc.kill()
                pytest.fail(f"node {self.name} wrote no endpoints.json within {START_TIMEOUT}s\n{self.log_tail()}",
                            pytrace=False)
            time.sleep(0.05)
        self.url = self.endpoints["api"]
        assert self.url.startswith("https://127.0.0.1:"), self.endpoints

    def start(self) -> None:
        self.launch()
        self.wait_listening()

    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def kill(self) -> None:
        """SIGKILL: no goodbye to devices, NATS or the registry."""
        assert self.running(), f"{self.name} is not running"
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=STOP_TIMEOUT)
        if self._log:
            self._log.close()

    def stop(self) -> int:
        """SIGTERM; the exit code (SIGKILL after STOP_TIMEOUT, reported as a failure by the caller)."""
        if self.proc is None:
            return 0
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
                if self._log:
                    self._log.close()
                return -int(signal.SIGKILL)
        if self._log:
            self._log.close()
        return self.proc.returncode

    def log_tail(self, lines: int = LOG_TAIL_LINES) -> str:
        return _tail(self.log_path, f"node {self.name}", lines)

    # -- accounts: kept in the first node's data directory -----------------------------------
    def list_accounts(self) -> list:
        out = self.certfleet("account", "list", "--data-dir", str(self.home), "--output", "json").stdout
        return json.loads(out)["accounts"]

    def create_account(self, profile: str | None = None) -> Account:
        profile = profile or f"acct-{uuid.uuid4().hex[:8]}"
        out = self.certfleet("account", "create", "--data-dir", str(self.home), "--profile", profile,
                             "--output", "json").stdout
        info = json.loads(out)
        self._cred_cache.pop(profile, None)
        return Account(info["accountId"], profile, info["accessKeyId"])


class Cluster:
    """`nodes` certfleet nodes n1..nN on one fresh PostgreSQL database, over one nats-server of
    their own (none with `nats=False`)."""

    def __init__(self, base: Path, nodes: int = 3, nats: bool = True, postgres_url: str = POSTGRES_URL):
        self.base = base
        self.database = Database(postgres_url)
        self.nats = NatsServer(base / "nats") if nats else None
        home = base / "n1"
        self.nodes = [
            ClusterNode(f"n{index}", base / f"n{index}", base / f"n{index}.log", self.database.url,
                        self.nats.url if self.nats else None, home)
            for index in range(1, nodes + 1)
        ]
        self.default_account: Account | None = None

    def __getitem__(self, index: int) -> ClusterNode:
        return self.nodes[index]

    def __len__(self) -> int:
        return len(self.nodes)

    @property
    def api(self) -> ClusterNode:
        """A node to call the API on (any node serves the whole registry): the first running one."""
        return next(node for node in self.nodes if node.running())

    def start(self) -> None:
        """NATS first, then n1 (it creates the account and the CAs), then the others at once."""
        if self.nats:
            self.nats.start()
        first, *others = self.nodes
        first.start()
        for node in others:
            node.launch()
        for node in others:
            node.wait_listening()
        accounts = first.list_accounts()
        assert len(accounts) == 1, f"a fresh cluster holds exactly one account: {accounts}"
        self.default_account = Account(accounts[0]["accountId"], "default", first.credentials("default")[0])
        for node in self.nodes:
            node.default_account = self.default_account

    def kill(self, index: int) -> ClusterNode:
        self.nodes[index].kill()
        return self.nodes[index]

    def restart(self, index: int) -> ClusterNode:
        """Starts a stopped or killed node again (same id and data directory, new ports), or
        stops a running one with SIGTERM first."""
        node = self.nodes[index]
        if node.running():
            code = node.stop()
            assert code == 0, f"{node.name} exited {code} after SIGTERM\n{node.log_tail()}"
        node.start()
        return node

    def close(self) -> list[str]:
        """Stops every node (SIGTERM) and NATS, drops the database; returns the nodes that did
        not exit 0."""
        failed = []
        for node in self.nodes:
            was_running = node.running()
            code = node.stop()
            if was_running and code != 0:
                failed.append(f"{node.name} exited {code} after SIGTERM\n{node.log_tail()}")
        if self.nats:
            self.nats.stop()
        self.database.drop()
        return failed

    def log_tails(self) -> str:
        tails = [node.log_tail() for node in self.nodes]
        if self.nats:
            tails.append(self.nats.log_tail(40))
        return "\n".join(tails)


def cluster_fixture(tmp_path_factory, name: str, nodes: int = 3, nats: bool = True):
    """A started cluster for a fixture (yield from it); fails the test when a node does not
    exit 0 on SIGTERM at the end."""
    cluster = Cluster(tmp_path_factory.mktemp(name), nodes=nodes, nats=nats)
    try:
        cluster.start()
        yield cluster
    finally:
        failed = cluster.close()
        if failed:
            pytest.fail("\n".join(failed))
