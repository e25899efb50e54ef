"""Certificate rotation through the CLI on a running server: a manual campaign sends csr_req to
the client ID the certificate connected with (the gateway's connection history), shown by
`certfleet rotation list|show`; a certificate never seen connected fails with "no client id
known"; only failed rotations can be retried. (Device answers reach the service through the
rules engine's system rules, integrated separately; the services tests drive them.)"""

from __future__ import annotations

import json
import subprocess
import time
import uuid

from test_gateway import make_device, start_sub


def rotation_cli(server, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    return server.certfleet("rotation", *args, "--data-dir", str(server.data_dir), "--output", "json", check=check)


def test_manual_campaign_sends_csr_req_to_the_client_id_that_used_the_certificate(server, openssl):
    device = make_device(server, openssl)
    client_id = f"rot-{uuid.uuid4().hex[:8]}"
    sub = start_sub(server, device, f"management/topic/{client_id}/csr_req", "-i", client_id, "-q", "1")
    # The gateway records the session in the background: wait until a campaign would find it.
    time.sleep(1.5)
    campaign = json.loads(rotation_cli(server, "start", device.cert_id).stdout)
    assert campaign["source"] == "manual" and campaign["total"] == 1, campaign
    assert campaign["counts"]["requested"] == 1, campaign

    stdout, stderr = sub.communicate(timeout=30)
    assert sub.returncode == 0, stderr
    assert stdout.strip() == f"management/topic/{client_id}/csr_req {{}}"

    listed = json.loads(rotation_cli(server, "list", "--campaign", campaign["campaignId"]).stdout)
    assert listed["campaign"]["counts"]["requested"] == 1
    (rotation,) = listed["rotations"]
    assert rotation["clientId"] == client_id and rotation["oldCertificateId"] == device.cert_id
    assert rotation["state"] == "requested" and rotation["attempts"] >= 1
    shown = json.loads(rotation_cli(server, "show", rotation["rotationId"]).stdout)
    assert shown["rotationId"] == rotation["rotationId"] and shown["newCertificateId"] is None
    # Only a failed rotation can be retried.
    assert rotation_cli(server, "retry", rotation["rotationId"], check=False).returncode != 0


def test_a_certificate_never_connected_fails_without_a_client_id(server, openssl):
    device = make_device(server, openssl)
    campaign = json.loads(rotation_cli(server, "start", device.cert_id).stdout)
    assert campaign["counts"]["failed"] == 1, campaign
    listed = json.loads(rotation_cli(server, "list", "--state", "failed").stdout)
    mine = [r for r in listed["rotations"] if r["campaignId"] == campaign["campaignId"]]
    assert [r["error"] for r in mine] == ["no client id known"]
    assert rotation_cli(server, "retry", mine[0]["rotationId"], check=False).returncode != 0
    # Unknown certificates are refused.
    assert rotation_cli(server, "start", "ab" * 32, check=False).returncode != 0
