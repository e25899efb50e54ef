"""The console with real device agents: a rotation campaign started from a certificate search in
Chromium, for three `certfleet-agent` processes connected with their certificates, watched to
completion in the browser (the campaign's progress refreshes without a reload), and the devices
then holding their new certificates. A server of its own, with rotation timings agents can meet
(the console module's server fails a rotation after one 2-second wait)."""

from __future__ import annotations

import os
import signal
import subprocess
import time
import uuid
from pathlib import Path

import pytest

from test_console import ConfiguredServer, browser, console_url, shot, sign_in, stop_server, wait_text  # noqa: F401
from test_endpoints import agent_events, event_message, write_agent_config
from test_gateway import make_device

AGENTS = 3


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    base = tmp_path_factory.mktemp("certfleet-console-agents")
    config = base / "config.toml"
    config.write_text(
        "[rotation]\nresponse_timeout = \"30s\"\nmax_attempts = 3\nsweep_interval = \"1s\"\n"
        "[console]\naddr = \"127.0.0.1:0\"\n"
    )
    srv = ConfiguredServer(base / "data", base / "server.log", config)
    srv.start()
    try:
        yield srv
    finally:
        stop_server(srv)


class Agents:
    """`certfleet-agent run` processes of one account, each on its own certificate (the strict
    device policy: the client ID is the name of the thing attached to the certificate)."""

    def __init__(self, server, openssl, agent_bin: str, profile: str, count: int):
        client = server.client(profile)
        policy = f"device-rotation-{uuid.uuid4().hex[:6]}"
        document = (Path(__file__).resolve().parents[2] / "crates/agent/policy/device-policy-strict.json").read_text()
        client.create_policy(policyName=policy, policyDocument=document)
        endpoint = client.describe_endpoint(endpointType="iot:Data-ATS")["endpointAddress"]
        self.agent_bin = agent_bin
        self.running = []
        for i in range(count):
            device = make_device(server, openssl, profile=profile, policy=policy)
            client_id = f"console-agent-{i}-{uuid.uuid4().hex[:6]}"
            client.create_thing(thingName=client_id)
            arn = client.describe_certificate(certificateId=device.cert_id)["certificateDescription"]["certificateArn"]
            client.attach_thing_principal(thingName=client_id, principal=arn)
            config = write_agent_config(openssl, server, device, endpoint, client_id)
            log_path = openssl.path(f"{client_id}.log")
            log = open(log_path, "wb")
            proc = subprocess.Popen([agent_bin, "run", "--config", config, "--log-format", "json"], stdout=log,
                                    stderr=subprocess.STDOUT, env={**os.environ, "RUST_LOG": "info", "NO_COLOR": "1"})
            self.running.append((device, client_id, config, log_path, proc, log))

    def all_connected(self) -> bool:
        return all(any(event_message(e) == "connected" for e in agent_events(Path(p).read_text(errors="replace")))
                   for _, _, _, p, _, _ in self.running)

    def status(self, config: str) -> str:
        return subprocess.run([self.agent_bin, "status", "--config", config, "--output", "json"],
                              capture_output=True, text=True, timeout=20).stdout

    def close(self):
        for _, _, _, _, proc, _ in self.running:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for _, _, _, _, proc, log in self.running:
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
            log.close()


def test_a_rotation_campaign_started_in_the_browser_completes_with_real_agents(server, openssl, agent_bin, browser):
    tenant = server.create_account()
    client = server.client(tenant.profile)
    agents = Agents(server, openssl, agent_bin, tenant.profile, AGENTS)
    context = browser.new_context(ignore_https_errors=True, viewport={"width": 1280, "height": 900})
    try:
        deadline = time.monotonic() + 60
        while not agents.all_connected():
            assert time.monotonic() < deadline, "the agents did not connect"
            time.sleep(0.3)
        old_ids = sorted(device.cert_id for device, *_ in agents.running)
        page = context.new_page()
        sign_in(page, server, tenant.profile)
        # The connection history (written off the session's path) names every agent, with how
        # it came: a campaign finds their client IDs there.
        deadline = time.monotonic() + 15
        for cert_id in old_ids:
            while True:
                page.goto(console_url(server) + f"certificates/{cert_id}")
                if page.locator("#history tbody tr").count() >= 1:
                    break
                assert time.monotonic() < deadline, f"the session of {cert_id} is not in the history"
                time.sleep(0.3)
            assert page.text_content("#history tbody tr td.endpoint") == "iot:Data-ATS"
            assert page.text_content("#history tbody tr td.chain") == "builtin"
        # Find the agents' certificates by their things' name prefix, and rotate what is found.
        page.goto(console_url(server) + "certificates")
        page.fill("#search-thing", "console-agent-")
        page.click("#search-submit")
        found = sorted(a.get_attribute("href").rsplit("/", 1)[1] for a in page.locator("a.certificate-link").all())
        assert found == old_ids
        page.click("#rotate-found-submit")
        assert page.text_content("#rotate-count").strip() == str(AGENTS)
        page.click("#confirm")
        page.wait_for_url("**/rotations/*?changed=1")
        campaign = page.text_content("#campaign-id").strip()
        # The agents answer; the page follows the campaign to its end without a reload.
        wait_text(page, "#campaign-states", f"retired {AGENTS}", timeout=120)
        wait_text(page, "#campaign-progress", f"{AGENTS} / {AGENTS} closed")
        assert page.get_attribute("#campaign-progress progress", "value") == str(AGENTS)
        page.reload()
        assert page.locator("#rotations td.state").all_text_contents() == ["retired"] * AGENTS
        shot(page, "campaign-completed")
        # Each device holds a new certificate: ACTIVE, the old one gone, the agent on the new one.
        rotations = {}
        for row in page.locator("#rotations tbody tr").all():
            links = [a.get_attribute("href").rsplit("/", 1)[1] for a in row.locator("a").all()]
            client_id = row.locator("td").nth(1).text_content()
            rotations[client_id] = links
        assert sorted(old for old, _ in rotations.values()) == old_ids
        for device, client_id, config, _, _, _ in agents.running:
            old, new = rotations[client_id]
            assert old == device.cert_id and new != old
            assert client.describe_certificate(certificateId=new)["certificateDescription"]["status"] == "ACTIVE"
            with pytest.raises(client.exceptions.ResourceNotFoundException):
                client.describe_certificate(certificateId=old)
            deadline = time.monotonic() + 20
            while new not in (status := agents.status(config)):
                assert time.monotonic() < deadline, status
                time.sleep(0.3)
            assert old not in status, status
        # The campaign is listed as closed, and the overview has no campaign in progress.
        page.goto(console_url(server) + "rotations")
        assert f"{AGENTS} / {AGENTS} closed" in page.text_content(f"tr:has(a[href='/rotations/{campaign}'])")
        page.goto(console_url(server) + "overview")
        assert page.locator("#no-campaigns").count() == 1
    finally:
        context.close()
        agents.close()
