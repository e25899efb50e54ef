"""Cluster-wide operations (issue 14 item 5), against three `certfleet server` nodes on one
PostgreSQL and a nats-server of the tests' own (`cluster.py`):

- `certfleet gateway sessions` (the sessions API) on n1 lists a device connected to n3, named
  with its node;
- the migration status (`certfleet endpoint status`) on n1 shows every node's view of the
  configuration, with n3's device counted;
- a revocation through n1's API closes a session on n3 at once: the nodes here read the change
  feed only every 30 s, so only the nudge over NATS (`cf.ops.changed`) can explain a close within
  the bound. The latency is printed (`pytest -s`) and bounded generously.
"""

from __future__ import annotations

import json
import shutil
import socket
import time
import uuid

import pytest

from cluster import Cluster
from test_gateway import closed_by_peer, connect_packet, make_device, read_exactly, tls_socket

# The nodes' change-feed poll: far above the bound below, so the push is what is measured.
POLL = "30s"
REVOCATION_BOUND = 3.0  # seconds; the issue wants "within a second", printed below


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    """Three nodes n1, n2, n3 polling the change feed every 30 s, and NATS."""
    base = tmp_path_factory.mktemp("cluster-ops")
    config = base / "certfleet.toml"
    config.write_text(f'[mqtt]\nchange_poll_interval = "{POLL}"\n')
    cluster = Cluster(base, nodes=3)
    for node in cluster.nodes:
        node.extra_args = (*node.extra_args, "--config", str(config))
    try:
        cluster.start()
        yield cluster
    finally:
        failed = cluster.close()
        if failed:
            pytest.fail("\n".join(failed))


def connected(node, device, client_id: str):
    """An MQTT 5 session of `device` on `node` (no SNI: the default account's iot:Data-ATS)."""
    sock = tls_socket(node, device, None)
    sock.sendall(connect_packet(client_id, level=5))
    head = read_exactly(sock, 2)
    assert head[0] == 0x20, head
    read_exactly(sock, head[1])
    return sock


def metrics(node) -> str:
    host, port = node.endpoints["metrics_addr"].rsplit(":", 1)
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        sock.sendall(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    return data.split(b"\r\n\r\n", 1)[1].decode()


def counter(node, what: str) -> int:
    prefix = f'certfleet_cluster_ops_total{{what="{what}"}} '
    return next(int(line[len(prefix):]) for line in metrics(node).splitlines() if line.startswith(prefix))


def until(predicate, what: str, timeout: float = 15):
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        assert time.monotonic() < deadline, f"{what} within {timeout} s"
        time.sleep(0.1)


def sessions(node, *args: str):
    return node.certfleet("gateway", "sessions", "--data-dir", str(node.data_dir), *args)


def test_the_sessions_of_node_1_list_a_device_connected_to_node_3(cluster, openssl):
    n1, n3 = cluster[0], cluster[2]
    device = make_device(n1, openssl)
    client_id = f"on-n3-{uuid.uuid4().hex[:6]}"
    sock = connected(n3, device, client_id)
    try:
        def listed():
            started = time.monotonic()
            answer = json.loads(sessions(n1, "--output", "json").stdout)["sessions"]
            took = time.monotonic() - started
            return [(s, took) for s in answer if s["clientId"] == client_id]

        [(session, took)] = until(listed, f"{client_id} (on n3) listed by n1")
        assert session["node"] == "n3", session
        assert session["certificateId"] == device.cert_id
        assert session["accountId"] == cluster.default_account.id
        print(f"n1 listed the device on n3 (the whole CLI call: {took:.3f} s)")
        text = sessions(n1).stdout
        line = next(line for line in text.splitlines() if line.startswith(client_id))
        assert line.split()[-1] == "n3", text
        # Every node's view is the cluster's (the CLI reads the credentials beside endpoints.json).
        for node in cluster.nodes:
            for name in ("credentials", "config"):
                if not (node.data_dir / name).exists():
                    shutil.copy(node.home / name, node.data_dir / name)
            answer = json.loads(sessions(node, "--output", "json").stdout)["sessions"]
            assert [s["node"] for s in answer if s["clientId"] == client_id] == ["n3"], node.name

        status = json.loads(n1.certfleet("endpoint", "status", "iot:Data-ATS", "--data-dir", str(n1.data_dir),
                                         "--output", "json").stdout)
        views = {view["node"]: view for view in status["nodes"]}
        assert sorted(views) == ["n1", "n2", "n3"], status["nodes"]
        assert views["n3"]["connected"] >= 1, views
        assert status["missingNodes"] == [], status
        assert sum(chain["connected"] for chain in status["chains"]) >= 1, status["chains"]
        assert counter(n1, "answer") >= 2 and counter(n3, "served") >= 1
        assert counter(n1, "malformed") == 0
    finally:
        sock.close()


def test_revocation_through_node_1_closes_a_session_on_node_3_at_once(cluster, openssl):
    n1, n3 = cluster[0], cluster[2]
    device = make_device(n1, openssl)
    client_id = f"revoked-{uuid.uuid4().hex[:6]}"
    sock = connected(n3, device, client_id)
    try:
        assert not closed_by_peer(sock, wait=0.5), "the session on n3 is up"
        received_before = counter(n3, "nudge_received")
        called_at = time.monotonic()
        n1.client().update_certificate(certificateId=device.cert_id, newStatus="REVOKED")
        returned_at = time.monotonic()
        assert closed_by_peer(sock, wait=REVOCATION_BOUND + 2), f"n3 kept the revoked device's session"
        closed_at = time.monotonic()
        latency = closed_at - returned_at
        print(f"revoked through n1's API (UpdateCertificate took {returned_at - called_at:.3f} s): n3 closed "
              f"the session {latency:.3f} s after the call returned (change-feed poll: every {POLL})")
        assert latency < REVOCATION_BOUND, f"{latency:.3f} s"
        assert counter(n3, "nudge_received") > received_before
    finally:
        sock.close()
