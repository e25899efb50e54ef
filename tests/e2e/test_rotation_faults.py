"""Issue 6, end to end with faults: 100 certfleet-agent processes whose certificates expire in 10
days, an on-demand audit (DEVICE_CERTIFICATE_EXPIRING_CHECK) whose listener opens the rotation
campaign, and, during it:

- agents #0-#4 are killed (SIGKILL) as soon as their log shows the new certificate installed
  (before `crt_ack sent` when the watcher is fast enough; the test reports how many), and
  restarted with the same configuration;
- the server is killed (SIGKILL) mid-campaign and restarted on the same ports and data dir;
- agents #5-#7 are stopped after connecting once: their rotations time out (failed); once they
  are back, a second on-demand audit opens a campaign for them and they rotate.

At the end every agent's current certificate is ACTIVE and the agent connected with it after the
last server restart, the old certificates of retired rotations are deleted, and the ACTIVE
certificates of the account are exactly the agents' current ones (no orphan, no device without a
working credential).

A dedicated server (its own data dir, fixed ports picked by the test): the devices' certificates
are issued under a configuration with `pki.device_certificate_validity = "10d"`; the server is
then restarted with 365 days, so the rotated certificates are not themselves flagged by the
second audit. Agents #0-#4 reach the gateway through a relay that stops accepting new
connections once the campaign starts, so they install the new certificate and cannot reconnect
with it: the kill always falls between storing and acking.

The second test covers, with scripted devices on the shared server, a CSR with a weak key
(refused: failed, nothing sent back, old certificate ACTIVE) and a duplicated csr_res.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import threading
import time
import uuid
from pathlib import Path

import pytest
from conftest import Server

from test_endpoints import agent_events, event_message

N_AGENTS = 100
KILLED = range(0, 5)
SILENT = range(5, 8)
EXPIRING = "DEVICE_CERTIFICATE_EXPIRING_CHECK"
ROLE = "arn:aws:iam::123456789012:role/certfleet-audit"

CONFIG = """
[pki]
device_certificate_validity = "{validity}"
[rotation]
response_timeout = "4s"
max_attempts = 3
sweep_interval = "500ms"
[mqtt]
change_poll_interval = "100ms"
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class FleetServer(Server):
    """A dedicated `certfleet server` on fixed ports, restartable with another config file."""

    def __init__(self, base: Path):
        super().__init__(base / "data", base / "server.log")
        self.base = base
        self.api_port, self.mqtt_port = free_port(), free_port()

    def start_with(self, validity: str) -> None:
        config = self.base / f"config-{validity}.toml"
        config.write_text(CONFIG.format(validity=validity))
        endpoints = self.data_dir / "endpoints.json"
        if endpoints.exists():
            endpoints.unlink()
        self._log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(
            [self.bin, "server", "--config", str(config), "--data-dir", str(self.data_dir),
             "--api-addr", f"127.0.0.1:{self.api_port}", "--mqtt-addr", f"127.0.0.1:{self.mqtt_port}"],
            stdout=self._log, stderr=self._log, stdin=subprocess.DEVNULL, env=self._certfleet_env(),
        )
        deadline = time.monotonic() + 30
        while True:
            assert self.proc.poll() is None, f"server exited {self.proc.returncode}\n{self.log_tail()}"
            try:
                self.endpoints = json.loads(endpoints.read_text())
                if self.endpoints.get("api"):
                    break
            except (OSError, json.JSONDecodeError):
                pass
            assert time.monotonic() < deadline, f"no endpoints.json within 30 s\n{self.log_tail()}"
            time.sleep(0.05)
        self.url = self.endpoints["api"]
        assert self.endpoints["mqtt_addr"] == f"127.0.0.1:{self.mqtt_port}", self.endpoints
        self._cred_cache.clear()  # boto3 clients hold connections to the previous process

    def kill(self) -> None:
        self.proc.kill()
        self.proc.wait(timeout=15)
        self._log.close()


@pytest.fixture
def fleet_server(tmp_path):
    srv = FleetServer(tmp_path / "fleet")
    srv.base.mkdir()
    try:
        yield srv
    finally:
        if srv.proc is not None and srv.proc.poll() is None:
            srv.stop()  # SIGTERM; killed (and the test failed) if it does not stop within 15 s


class GatedProxy:
    """A TCP relay to the gateway; with `accepting` False it refuses new connections while the
    ones already open keep flowing (so an agent receives crt_req, installs the new certificate,
    and cannot reconnect with it: it is then killed, deterministically, before the ack)."""

    def __init__(self, target_port: int):
        self.target_port = target_port
        self.accepting = True
        self.closed = False
        self.sockets: list[socket.socket] = []
        self.listener = socket.socket()
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(16)
        self.port = self.listener.getsockname()[1]
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while not self.closed:
            try:
                conn, _ = self.listener.accept()
            except OSError:
                return
            if not self.accepting:
                conn.close()
                continue
            try:
                upstream = socket.create_connection(("127.0.0.1", self.target_port), timeout=5)
                upstream.settimeout(None)
            except OSError:
                conn.close()
                continue
            self.sockets += [conn, upstream]
            threading.Thread(target=self._pump, args=(conn, upstream), daemon=True).start()
            threading.Thread(target=self._pump, args=(upstream, conn), daemon=True).start()

    @staticmethod
    def _pump(src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for sock in (src, dst):
                try:
                    sock.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def close(self) -> None:
        self.closed = True
        self.listener.close()
        for sock in self.sockets:
            try:
                sock.close()
            except OSError:
                pass


class Agent:
    def __init__(self, index: int, base: Path, agent_bin: str):
        self.index = index
        self.client_id = f"fleet-{index:03}-{uuid.uuid4().hex[:6]}"
        self.dir = base / self.client_id
        self.config = self.dir / "agent.toml"
        self.log_path = self.dir / "agent.log"
        self.agent_bin = agent_bin
        self.proc: subprocess.Popen | None = None
        self.old_cert_id = ""

    def start(self) -> None:
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                [self.agent_bin, "run", "--config", str(self.config), "--log-format", "json"],
                stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                env={**os.environ, "RUST_LOG": "info", "NO_COLOR": "1"},
            )

    def events(self, since: int = 0) -> list[dict]:
        try:
            with open(self.log_path, "rb") as f:
                f.seek(since)
                return agent_events(f.read().decode(errors="replace"))
        except OSError:
            return []

    def log_size(self) -> int:
        return self.log_path.stat().st_size if self.log_path.exists() else 0

    def has(self, message: str, since: int = 0) -> bool:
        return any(event_message(e) == message for e in self.events(since))

    def stop(self, sig=signal.SIGTERM) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def status(self) -> dict:
        proc = subprocess.run([self.agent_bin, "status", "--config", str(self.config), "--output", "json"],
                              capture_output=True, text=True, timeout=20)
        assert proc.returncode == 0, proc.stderr
        return json.loads(proc.stdout)


def wait_until(predicate, timeout: float, message, interval: float = 0.3):
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"after {timeout:.0f} s: {message() if callable(message) else message}")
        time.sleep(interval)


def rotations(srv: FleetServer, **filters) -> list[dict]:
    args = ["rotation", "list", "--data-dir", str(srv.data_dir), "--output", "json"]
    for key, value in filters.items():
        args += [f"--{key}", value]
    return json.loads(srv.certfleet(*args).stdout)["rotations"]


def active_certificates(client) -> set[str]:
    ids, marker = set(), None
    while True:
        page = client.list_certificates(pageSize=250, **({"marker": marker} if marker else {}))
        ids |= {c["certificateId"] for c in page["certificates"] if c["status"] == "ACTIVE"}
        marker = page.get("nextMarker")
        if not marker:
            return ids


def test_a_hundred_agents_rotate_through_an_audit_with_faults(fleet_server, openssl, agent_bin):
    srv = fleet_server
    started = time.monotonic()
    agents = [Agent(i, srv.base, agent_bin) for i in range(N_AGENTS)]
    gates = {i: GatedProxy(srv.mqtt_port) for i in KILLED}
    try:
        # -- 100 devices whose certificates expire in 10 days --------------------------------------
        srv.start_with("10d")
        client = srv.client()
        # The strict template: each agent's client ID is the name of the thing attached to its
        # certificate (the rotation gives the new certificate the old one's things and policies).
        policy = "device-policy-strict"
        document = (Path(__file__).resolve().parents[2] / "crates/agent/policy/device-policy-strict.json").read_text()
        client.create_policy(policyName=policy, policyDocument=document)
        endpoint = client.describe_endpoint(endpointType="iot:Data-ATS")["endpointAddress"]
        for agent in agents:
            current = agent.dir / "credentials" / "current"
            current.mkdir(parents=True)
            key = openssl.ec_key(f"{agent.client_id}.key")
            csr = openssl.csr(agent.client_id, key, agent.client_id)
            created = client.create_certificate_from_csr(certificateSigningRequest=openssl.read(csr), setAsActive=True)
            client.attach_policy(policyName=policy, target=created["certificateArn"])
            client.create_thing(thingName=agent.client_id)
            client.attach_thing_principal(thingName=agent.client_id, principal=created["certificateArn"])
            agent.old_cert_id = created["certificateId"]
            (current / "cert.pem").write_text(created["certificatePem"])
            (current / "key.pem").write_text(openssl.read(key))
            agent.config.write_text(
                f'endpoint = "127.0.0.1:{gates[agent.index].port if agent.index in gates else srv.mqtt_port}"\n'
                f'server_name = "{endpoint}"\n'
                f'client_id = "{agent.client_id}"\n'
                f'credentials_dir = "{agent.dir / "credentials"}"\n'
                f'server_trust_bundle = "{srv.ca_bundle}"\n'
                f'device_trust_bundle = "{srv.device_root}"\n'
                'connect_timeout = "5s"\n'
                "[backoff]\n"
                'initial = "200ms"\n'
                'max = "1s"\n'
            )
        described = client.describe_certificate(certificateId=agents[0].old_cert_id)["certificateDescription"]
        lifetime = described["validity"]["notAfter"] - described["validity"]["notBefore"]
        assert 9 * 86400 < lifetime.total_seconds() <= 11 * 86400, described["validity"]
        old_ids = {a.old_cert_id for a in agents}
        # Rotated certificates get a year: the second audit then flags only what was not rotated.
        srv.stop()
        srv.start_with("365d")
        client = srv.client()
        print(f"[{time.monotonic() - started:5.1f}s] 100 devices created")

        # -- 100 agents connected --------------------------------------------------------------------
        for agent in agents:
            agent.start()
        wait_until(lambda: all(a.has("connected") for a in agents), 90,
                   lambda: [a.client_id for a in agents if not a.has("connected")])
        time.sleep(1.5)  # the connection history is written off the session's path
        for i in SILENT:
            agents[i].stop()
        for gate in gates.values():
            gate.accepting = False  # #0-#4 keep their session, cannot open another
        print(f"[{time.monotonic() - started:5.1f}s] agents connected")

        # -- the audit opens the campaign ----------------------------------------------------------
        client.update_account_audit_configuration(roleArn=ROLE, auditCheckConfigurations={EXPIRING: {"enabled": True}})
        client.start_on_demand_audit_task(targetCheckNames=[EXPIRING])

        def campaign_of(ids: set[str], exclude: set[str]):
            found = {r["campaignId"] for r in rotations(srv) if r["oldCertificateId"] in ids} - exclude
            return next(iter(found)) if found else None
        first = wait_until(lambda: campaign_of(old_ids, set()), 60, "no campaign opened by the audit")

        # -- agents #0-#4 killed once the new certificate is installed, before the ack -------------
        def stuck_with_the_new_certificate(agent: Agent) -> bool:
            events = agent.events()
            installed = [n for n, e in enumerate(events)
                         if event_message(e) == "new certificate installed; reconnecting with it"]
            return bool(installed) and any(event_message(e) == "connection failed" for e in events[installed[0]:])
        for i in KILLED:
            wait_until(lambda: stuck_with_the_new_certificate(agents[i]), 60,
                       lambda: f"agent #{i} did not install its new certificate:\n{agents[i].log_path.read_text()[-3000:]}",
                       interval=0.1)
            agents[i].proc.kill()
            agents[i].proc.wait()
            assert not agents[i].has("crt_ack sent"), agents[i].log_path.read_text()[-3000:]
        for gate in gates.values():
            gate.accepting = True
        print(f"[{time.monotonic() - started:5.1f}s] killed #0-#4 after install, before the ack")

        # -- the server killed mid-campaign, restarted on the same ports --------------------------
        states = [r["state"] for r in rotations(srv, campaign=first)]
        assert len(states) == N_AGENTS, states
        assert states.count("retired") < N_AGENTS - len(SILENT), states  # mid-campaign
        srv.kill()
        restart_marks = {a.index: a.log_size() for a in agents}  # nothing connects while it is down
        time.sleep(1)
        srv.start_with("365d")
        client = srv.client()
        for i in KILLED:
            agents[i].start()
        print(f"[{time.monotonic() - started:5.1f}s] server restarted mid-campaign: "
              f"{ {s: states.count(s) for s in set(states)} }")

        def first_done():
            rows = rotations(srv, campaign=first)
            by_state = {}
            for r in rows:
                by_state.setdefault(r["state"], set()).add(r["clientId"])
            silent = {agents[i].client_id for i in SILENT}
            done = by_state.get("retired", set()) | by_state.get("failed", set())
            return rows if len(done) == N_AGENTS and by_state.get("failed", set()) == silent else None
        first_rows = wait_until(first_done, 120, lambda: sorted(
            (r["clientId"], r["state"], r.get("error")) for r in rotations(srv, campaign=first) if r["state"] != "retired"))
        for r in first_rows:
            if r["state"] == "failed":
                assert "time" in (r.get("error") or ""), r
        for i in KILLED:  # restarted holding the unacknowledged certificate: acked it after the restart
            assert agents[i].has("crt_ack sent", restart_marks[i]), agents[i].log_path.read_text()[-3000:]
        print(f"[{time.monotonic() - started:5.1f}s] first campaign: 97 retired, 3 silent failed")

        # -- the silent agents come back; a second audit rotates them -------------------------------
        for i in SILENT:
            restart_marks[i] = agents[i].log_size()
            agents[i].start()
        wait_until(lambda: all(agents[i].has("connected", restart_marks[i]) for i in SILENT), 60,
                   "silent agents did not reconnect")
        time.sleep(1.5)
        client.start_on_demand_audit_task(targetCheckNames=[EXPIRING])
        silent_old = {agents[i].old_cert_id for i in SILENT}
        second = wait_until(lambda: campaign_of(silent_old, {first}), 60, "no campaign opened by the second audit")
        second_rows = wait_until(
            lambda: (lambda rows: rows if [r["state"] for r in rows] == ["retired"] * len(SILENT) else None)(
                rotations(srv, campaign=second)),
            60, lambda: rotations(srv, campaign=second))
        assert {r["clientId"] for r in second_rows} == {agents[i].client_id for i in SILENT}
        print(f"[{time.monotonic() - started:5.1f}s] second campaign: silent agents rotated")

        # -- the end state ---------------------------------------------------------------------------
        retired = [r for r in first_rows if r["state"] == "retired"] + second_rows
        assert len(retired) == N_AGENTS
        new_by_client = {r["clientId"]: r["newCertificateId"] for r in retired}
        for r in retired:
            try:
                client.describe_certificate(certificateId=r["oldCertificateId"])
                raise AssertionError(f"the old certificate {r['oldCertificateId']} still exists")
            except client.exceptions.ResourceNotFoundException:
                pass

        def connected_on_current():
            for agent in agents:
                new = new_by_client[agent.client_id]
                if not any(event_message(e) == "connected" and new in json.dumps(e)
                           for e in agent.events(restart_marks[agent.index])):
                    return False
            return True
        wait_until(connected_on_current, 30, lambda: [
            a.client_id for a in agents
            if not any(event_message(e) == "connected" and new_by_client[a.client_id] in json.dumps(e)
                       for e in a.events(restart_marks[a.index]))])
        current_ids = set()
        for agent in agents:
            status = json.dumps(agent.status())
            new = new_by_client[agent.client_id]
            assert new in status and agent.old_cert_id not in status, status
            assert agent.proc.poll() is None, f"{agent.client_id} exited {agent.proc.returncode}"
            current_ids.add(new)
            arn = client.describe_certificate(certificateId=new)["certificateDescription"]
            assert arn["status"] == "ACTIVE", arn
            assert [p["policyName"] for p in client.list_attached_policies(target=arn["certificateArn"])["policies"]] == [policy]
        assert len(current_ids) == N_AGENTS
        # Zero orphaned ACTIVE certificates, zero devices without a working credential.
        assert active_certificates(client) == current_ids
        print(f"[{time.monotonic() - started:5.1f}s] done")
    finally:
        for gate in gates.values():
            gate.close()
        for agent in agents:
            if agent.proc is not None and agent.proc.poll() is None:
                agent.proc.send_signal(signal.SIGTERM)
        for agent in agents:
            if agent.proc is not None:
                try:
                    agent.proc.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    agent.proc.kill()
                    agent.proc.wait()


def test_a_weak_key_csr_is_refused_and_a_duplicated_csr_res_gets_the_same_certificate(server, openssl):
    """Two scripted devices (the AWS IoT device SDK, one MQTT session each) on the shared server,
    one manual campaign: one answers csr_req with an Ed25519 CSR (refused by the key rules: the
    rotation fails, nothing is sent back, the old certificate stays ACTIVE, no new one is left);
    the other sends the same valid csr_res twice (the same crt_req twice), then connects with
    the new certificate and acks: retired, the old certificate deleted."""
    import queue

    from awscrt import mqtt
    from awsiot import mqtt_connection_builder
    from test_gateway import gateway_addr, make_device
    from test_rotation import rotation_cli

    host, port = gateway_addr(server)
    client = server.client()

    def connect(cert: str, key: str, client_id: str):
        inbox: queue.Queue = queue.Queue()
        connection = mqtt_connection_builder.mtls_from_path(
            endpoint=host, port=port, cert_filepath=cert, pri_key_filepath=key, ca_filepath=server.ca_bundle,
            client_id=client_id, clean_session=True, keep_alive_secs=30)
        connection.connect().result(timeout=15)
        for step in ("csr_req", "crt_req"):
            future, _ = connection.subscribe(
                topic=f"management/topic/{client_id}/{step}", qos=mqtt.QoS.AT_LEAST_ONCE,
                callback=lambda topic, payload, **kwargs: inbox.put((topic.rsplit("/", 1)[-1], json.loads(payload))))
            future.result(timeout=10)
        return connection, inbox

    def publish(connection, client_id: str, step: str, body: dict) -> None:
        future, _ = connection.publish(topic=f"management/topic/{client_id}/{step}", payload=json.dumps(body),
                                       qos=mqtt.QoS.AT_LEAST_ONCE)
        future.result(timeout=10)

    def next_message(inbox: queue.Queue, step: str, timeout: float = 30) -> dict:
        try:
            got, body = inbox.get(timeout=timeout)
        except queue.Empty:
            raise AssertionError(f"no {step} within {timeout} s") from None
        assert got == step, (got, body)
        return body

    weak, dup = make_device(server, openssl), make_device(server, openssl)
    weak_id, dup_id = f"weak-{uuid.uuid4().hex[:6]}", f"dup-{uuid.uuid4().hex[:6]}"
    connections = []
    try:
        weak_conn, weak_inbox = connect(weak.cert, weak.key, weak_id)
        connections.append(weak_conn)
        dup_conn, dup_inbox = connect(dup.cert, dup.key, dup_id)
        connections.append(dup_conn)
        time.sleep(1.5)  # the connection history is written off the session's path
        campaign = json.loads(rotation_cli(server, "start", weak.cert_id, dup.cert_id).stdout)
        assert campaign["total"] == 2, campaign

        # The weak key: refused.
        assert next_message(weak_inbox, "csr_req") == {}
        openssl("genpkey", "-algorithm", "ed25519", "-out", f"{weak_id}.key")
        openssl("req", "-new", "-key", f"{weak_id}.key", "-subj", f"/CN={weak_id}", "-out", f"{weak_id}.csr")
        publish(weak_conn, weak_id, "csr_res", {"CSR": openssl.read(f"{weak_id}.csr")})

        def rotation_of(client_id: str) -> dict:
            rows = json.loads(rotation_cli(server, "list", "--campaign", campaign["campaignId"]).stdout)["rotations"]
            return next(r for r in rows if r["clientId"] == client_id)
        failed = wait_until(lambda: (lambda r: r if r["state"] == "failed" else None)(rotation_of(weak_id)), 30,
                            lambda: rotation_of(weak_id))
        assert "refused CSR" in failed["error"], failed
        assert failed["newCertificateId"] is None, failed
        assert client.describe_certificate(certificateId=weak.cert_id)["certificateDescription"]["status"] == "ACTIVE"

        # The duplicated csr_res: the same crt_req twice, one certificate.
        assert next_message(dup_inbox, "csr_req") == {}
        key = openssl.ec_key(f"{dup_id}-new.key")
        csr = openssl.csr(f"{dup_id}-new", key, dup_id)
        publish(dup_conn, dup_id, "csr_res", {"CSR": openssl.read(csr)})
        publish(dup_conn, dup_id, "csr_res", {"CSR": openssl.read(csr)})
        first, second = next_message(dup_inbox, "crt_req"), next_message(dup_inbox, "crt_req")
        assert first["certificateId"] == second["certificateId"], (first, second)
        new_id = first["certificateId"]
        assert rotation_of(dup_id)["newCertificateId"] == new_id
        cert = openssl.write(f"{dup_id}-new.crt", first["certificatePem"])
        dup_conn.disconnect().result(timeout=10)
        connections.remove(dup_conn)
        new_conn, _ = connect(str(cert), str(openssl.path(key)), dup_id)
        connections.append(new_conn)
        publish(new_conn, dup_id, "crt_ack", {"certificateId": new_id})
        wait_until(lambda: rotation_of(dup_id)["state"] == "retired", 30, lambda: rotation_of(dup_id))
        try:
            client.describe_certificate(certificateId=dup.cert_id)
            raise AssertionError(f"the old certificate {dup.cert_id} still exists")
        except client.exceptions.ResourceNotFoundException:
            pass
        assert client.describe_certificate(certificateId=new_id)["certificateDescription"]["status"] == "ACTIVE"
        # Nothing came back to the weak-key device.
        assert weak_inbox.empty(), list(weak_inbox.queue)
    finally:
        for connection in connections:
            try:
                connection.disconnect().result(timeout=10)
            except Exception:
                pass
