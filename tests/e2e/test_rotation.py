"""Certificate rotation through the CLI on a running server: a manual campaign sends csr_req to
the client ID the certificate connected with (the gateway's connection history), shown by
`certfleet rotation list|show`; a certificate never seen connected fails with "no client id
known"; only failed rotations can be retried; and real certfleet-agent processes rotated end to
end, their answers reaching the service through the rules engine's system rules."""

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


def test_waiting_for_a_campaign_shows_progress_on_a_terminal_only(server, openssl):
    import os
    import pty

    # Never connected: the campaign closes at once, failed; --wait says so and exits non-zero.
    # Piped, stderr carries the verdict and no progress line.
    lonely = make_device(server, openssl)
    proc = server.certfleet("rotation", "start", lonely.cert_id, "--wait", "--data-dir", str(server.data_dir),
                            "--output", "json", check=False)
    assert proc.returncode != 0
    assert json.loads(proc.stdout)["counts"]["failed"] == 1, proc.stdout
    assert "1 of 1 rotations of campaign" in proc.stderr and "failed" in proc.stderr, proc.stderr
    assert "\r" not in proc.stderr and "closed ·" not in proc.stderr, proc.stderr

    # A device that never answers its csr_req: the campaign stays open; waiting on a terminal
    # redraws its progress every second until the wait's limit.
    device = make_device(server, openssl)
    client_id = f"rot-wait-{uuid.uuid4().hex[:8]}"
    sub = start_sub(server, device, f"management/topic/{client_id}/csr_req", "-i", client_id, "-q", "1")
    time.sleep(1.5)  # the connection history is written off the session's path
    campaign = json.loads(rotation_cli(server, "start", device.cert_id).stdout)["campaignId"]
    sub.communicate(timeout=30)
    master, terminal = pty.openpty()
    started = time.monotonic()
    waiting = subprocess.Popen([server.bin, "rotation", "wait", campaign, "--timeout", "3s", "--data-dir",
                                str(server.data_dir)], stdout=subprocess.PIPE, stderr=terminal,
                               env=server._certfleet_env())
    os.close(terminal)
    shown = b""
    while True:
        try:
            chunk = os.read(master, 4096)
        except OSError:  # EIO: the command closed the terminal
            break
        if not chunk:
            break
        shown += chunk
    os.close(master)
    stdout, _ = waiting.communicate(timeout=30)
    assert waiting.returncode != 0 and time.monotonic() - started >= 3
    lines = shown.decode(errors="replace").split("\r\x1b[2K")
    progress = [line for line in lines if line.startswith(f"campaign {campaign[:8]}: ")]
    assert len(progress) >= 3, shown
    assert all("0/1 closed · requested 1 · " in line for line in progress), progress
    assert f"campaign {campaign} is still open after 3s: 0 of 1 rotations closed" in lines[-1], shown
    assert f"campaign {campaign}" in stdout.decode() and "requested" in stdout.decode()


def test_agents_rotate_end_to_end_through_the_system_rules(server, openssl, agent_bin):
    """Real certfleet-agent processes, each on its own certificate with the documented device
    policy; `certfleet rotation start` for all of them; every rotation ends retired: the old
    certificates are gone, the new ones ACTIVE with the same policy, each agent on its new one."""
    import signal
    from pathlib import Path

    from test_endpoints import agent_events, event_message, write_agent_config

    client = server.client()
    policy_name = f"device-rotation-{uuid.uuid4().hex[:6]}"
    document = (Path(__file__).resolve().parents[2] / "crates/agent/policy/device-policy-strict.json").read_text()
    client.create_policy(policyName=policy_name, policyDocument=document)
    endpoint = client.describe_endpoint(endpointType="iot:Data-ATS")["endpointAddress"]
    agents = []
    for i in range(10):
        device = make_device(server, openssl, policy=policy_name)
        client_id = f"rotate-{i:02}-{uuid.uuid4().hex[:6]}"
        # The strict device policy: the client ID is the name of the thing attached to the certificate.
        client.create_thing(thingName=client_id)
        client.attach_thing_principal(thingName=client_id,
                                      principal=client.describe_certificate(certificateId=device.cert_id)
                                      ["certificateDescription"]["certificateArn"])
        config = write_agent_config(openssl, server, device, endpoint, client_id)
        log_path = openssl.path(f"{client_id}.log")
        log = open(log_path, "wb")
        proc = subprocess.Popen([agent_bin, "run", "--config", config, "--log-format", "json"], stdout=log,
                                stderr=subprocess.STDOUT, env={**__import__("os").environ, "RUST_LOG": "info"})
        agents.append((device, client_id, config, log_path, proc, log))
    try:
        def all_connected():
            return all(any(event_message(e) == "connected" for e in agent_events(Path(p).read_text(errors="replace")))
                       for _, _, _, p, _, _ in agents)
        deadline = time.monotonic() + 60
        while not all_connected():
            assert time.monotonic() < deadline, "agents did not connect"
            time.sleep(0.3)
        time.sleep(1.5)  # the connection history is written off the session's path
        campaign = json.loads(rotation_cli(server, "start", *[a[0].cert_id for a in agents]).stdout)
        assert campaign["total"] == 10, campaign

        def retired():
            listed = json.loads(rotation_cli(server, "list", "--campaign", campaign["campaignId"]).stdout)
            states = [r["state"] for r in listed["rotations"]]
            return listed if states.count("retired") == 10 else None
        deadline = time.monotonic() + 120
        listed = None
        while listed is None:
            assert time.monotonic() < deadline, rotation_cli(server, "list", "--campaign", campaign["campaignId"]).stdout
            listed = retired()
            time.sleep(0.5)
        for rotation in listed["rotations"]:
            old, new = rotation["oldCertificateId"], rotation["newCertificateId"]
            try:
                client.describe_certificate(certificateId=old)
                raise AssertionError(f"the old certificate {old} still exists")
            except client.exceptions.ResourceNotFoundException:
                pass
            assert client.describe_certificate(certificateId=new)["certificateDescription"]["status"] == "ACTIVE"
            arn = client.describe_certificate(certificateId=new)["certificateDescription"]["certificateArn"]
            assert [p["policyName"] for p in client.list_attached_policies(target=arn)["policies"]] == [policy_name]
        for device, client_id, config, _, _, _ in agents:
            status = subprocess.run([agent_bin, "status", "--config", config, "--output", "json"],
                                    capture_output=True, text=True, timeout=20)
            new = next(r["newCertificateId"] for r in listed["rotations"] if r["clientId"] == client_id)
            assert new in status.stdout and device.cert_id not in status.stdout, status.stdout
    finally:
        for _, _, _, _, proc, log in agents:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for _, _, _, _, proc, log in agents:
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
            log.close()
