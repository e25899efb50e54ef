"""What a stranger can make the registry hold, against the real binary: a handshake flood to an
account's test endpoint (anyone can reach it) is answered as usual but recorded at most at the
configured rate per account; the rest is counted in /metrics and logged once per second, and
the tenant's results API shows only what was recorded."""

from __future__ import annotations

import math
import socket
import ssl
import time
import uuid

import pytest

from conftest import Server
from test_endpoints import ConfiguredServer, scrape_metrics, server_api_results
from test_gateway import connect_packet, gateway_addr

PER_SECOND = 2
SESSIONS_PER_HOUR = 5


@pytest.fixture(scope="module")
def bounded(tmp_path_factory):
    base = tmp_path_factory.mktemp("certfleet-bounds")
    config = base / "config.toml"
    config.write_text(f"[registry]\ntest_endpoint_records_per_second = {PER_SECOND}\n"
                      f"history_sessions_per_certificate_per_hour = {SESSIONS_PER_HOUR}\n")
    srv = ConfiguredServer(base / "data", base / "server.log", config)
    srv.start()
    try:
        yield srv
    finally:
        code = srv.stop()
        if code != 0:
            pytest.fail(f"certfleet server exited {code} after SIGTERM (expected 0)\n{srv.log_tail()}")


def metric(text: str, name: str) -> int:
    for line in text.splitlines():
        if line.startswith(name + " "):
            return int(line.split()[1])
    raise AssertionError(f"{name} not in the metrics")


def probe(server: Server, host: str, client_id: str) -> bytes:
    """A stranger: no client certificate, a CONNECT; returns the CONNACK."""
    context = ssl.create_default_context(cafile=server.ca_bundle)
    context.check_hostname = False
    with socket.create_connection(gateway_addr(server), timeout=10) as raw:
        with context.wrap_socket(raw, server_hostname=host) as tls:
            tls.sendall(connect_packet(client_id))
            return tls.recv(4)


def test_a_handshake_flood_to_the_test_endpoint_is_recorded_at_most_at_the_accounts_rate(bounded):
    host = bounded.aws("describe-endpoint", "--endpoint-type", "certfleet:Test")["endpointAddress"]
    tag = uuid.uuid4().hex[:6]
    before = scrape_metrics(bounded)
    dropped_before = metric(before, "certfleet_gateway_test_endpoint_records_dropped_total")
    written_before = metric(before, "certfleet_gateway_test_endpoint_records_written_total")
    flood = 30
    started = time.monotonic()
    for index in range(flood):
        # Every attacker is still answered: CONNACK return code 5, not authorized.
        assert probe(bounded, host, f"flood-{tag}-{index}") == b"\x20\x02\x00\x05"
    elapsed = time.monotonic() - started
    # At most PER_SECOND per one-second window the flood touched.
    windows = math.ceil(elapsed) + 1
    deadline = time.monotonic() + 10
    while True:
        now = scrape_metrics(bounded)
        written = metric(now, "certfleet_gateway_test_endpoint_records_written_total") - written_before
        dropped = metric(now, "certfleet_gateway_test_endpoint_records_dropped_total") - dropped_before
        if written + dropped >= flood or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    assert written + dropped == flood
    assert 1 <= written <= PER_SECOND * windows, (written, elapsed)
    assert dropped >= flood - PER_SECOND * windows > 0
    recorded = [r for r in server_api_results(bounded) if (r.get("clientId") or "").startswith(f"flood-{tag}-")]
    assert len(recorded) == written
    log = bounded.log_path.read_text(errors="replace")
    warnings = log.count("test endpoint records over the account's rate")
    assert 1 <= warnings <= windows, warnings


def test_a_device_reconnecting_in_a_loop_is_on_record_only_up_to_its_hourly_budget(bounded, openssl):
    """A device of a tenant reconnecting in a loop (a new client ID each time) is served every time,
    but only its first SESSIONS_PER_HOUR sessions are on record: history rows and INFO log lines;
    the rest are counted in /metrics and summarised by one log line, so a tenant's device cannot
    flood the operator's log."""
    from test_gateway import Device, allow_all_policy, mosquitto

    client = bounded.client()
    tag = f"loop-{uuid.uuid4().hex[:6]}"
    key = openssl.ec_key(f"{tag}.key")
    created = client.create_certificate_from_csr(
        certificateSigningRequest=openssl.read(openssl.csr(tag, key, tag)), setAsActive=True)
    client.attach_policy(policyName=allow_all_policy(client), target=created["certificateArn"])
    device = Device(str(openssl.write(f"{tag}.crt", created["certificatePem"])), str(openssl.path(key)),
                    created["certificateId"])
    coalesced_before = metric(scrape_metrics(bounded), "certfleet_connection_history_coalesced_total")
    loops = 4 * SESSIONS_PER_HOUR
    for index in range(loops):
        result = mosquitto("mosquitto_pub", bounded, device, "-i", f"{tag}-{index}", "-t", f"{tag}/x", "-m", "x")
        assert result.returncode == 0, result.stderr
    assert metric(scrape_metrics(bounded), "certfleet_connection_history_coalesced_total") - coalesced_before \
        == loops - SESSIONS_PER_HOUR
    deadline = time.monotonic() + 10
    while True:
        log = bounded.log_path.read_text(errors="replace")
        lines = [line for line in log.splitlines() if tag in line]
        disconnected = sum(1 for line in lines if "device disconnected" in line)
        if disconnected >= SESSIONS_PER_HOUR or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    assert sum(1 for line in lines if "device connected" in line) == SESSIONS_PER_HOUR
    assert disconnected == SESSIONS_PER_HOUR
    summary = [line for line in log.splitlines()
               if "reconnects more than its hourly history allows" in line and created["certificateId"] in line]
    assert len(summary) == 1, summary
