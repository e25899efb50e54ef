"""Several gateway nodes as one hub over NATS (issue 14), with real clients: three `certfleet
server` nodes on one PostgreSQL and a nats-server of the tests' own (`cluster.py`); mosquitto_pub
and mosquitto_sub (MQTT 3.1.1 and 5) and the AWS IoT Device SDK v2's MQTT5 client.

Publish on one node, receive on the others at QoS 0, 1 and 2; retained messages as one store
(served by a node started after them); `$share/<group>/...` delivering each message once over
members on different nodes; a client ID taken over across nodes; revocation through one node's
API closing a session on another; a node killed with SIGKILL and its devices reconnecting to
another node; nats-server restarted under traffic; the registry (this cluster's PostgreSQL
database) unreachable for a while; a node with another passphrase refused.

Timings are printed (`pytest -s` shows them) and bounded only generously (5 s): the issue's
targets (a takeover or a revocation within a second) are read from these prints, not asserted.

The stronger expectations of the issue that go beyond "it still works" (a persistent session
and its queued messages surviving a killed node; no acknowledged message lost while NATS
restarts) are tests of their own, named for what they expect.
"""

from __future__ import annotations

import collections
import subprocess
import threading
import time
import uuid

import botocore.exceptions
import pytest

from cluster import ClusterNode, cluster_fixture
from conftest import _ANSI
from test_gateway import closed_by_peer, connack, connect_packet, make_device, mosquitto, read_exactly, tls_socket

GENEROUS = 5.0  # seconds: the bound on what the issue wants within a second
QUEUED = 10  # QoS 1 messages queued for an offline persistent session


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    """Three nodes n1, n2, n3 and NATS for the module. A test that stops or kills a node starts
    it again before it ends."""
    yield from cluster_fixture(tmp_path_factory, "cluster")


# ------------------------------------------------------------------------------------------------
# clients
# ------------------------------------------------------------------------------------------------
class Watcher:
    """A mosquitto_sub on one node, every line it prints (`topic payload`) collected."""

    def __init__(self, node, device, topic: str, qos: str = "1", version: str = "mqttv5", *args: str):
        host, port = node.mqtt_addr
        self.node = node
        self.proc = subprocess.Popen(
            ["mosquitto_sub", "-h", host, "-p", str(port), "--cafile", node.ca_bundle, "--cert", device.cert,
             "--key", device.key, "-V", version, "-q", qos, "-t", topic, "-v", *args],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, bufsize=1,
        )
        self.lines: list[str] = []
        self._changed = threading.Condition()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        for line in self.proc.stdout:
            with self._changed:
                self.lines.append(line.rstrip("\n"))
                self._changed.notify_all()
        with self._changed:
            self._changed.notify_all()

    def payloads(self, topic: str) -> list[str]:
        with self._changed:
            return [line.split(" ", 1)[1] for line in self.lines if line.split(" ", 1)[0] == topic and " " in line]

    def wait_for(self, predicate, timeout: float) -> bool:
        """Waits until `predicate(self)` holds (True) or `timeout` passes (False)."""
        deadline = time.monotonic() + timeout
        with self._changed:
            while not predicate(self):
                left = deadline - time.monotonic()
                if left <= 0 or self.proc.poll() is not None:
                    return predicate(self)
                self._changed.wait(min(left, 0.1))
            return True

    def close(self) -> str:
        """Stops it; returns what it wrote on stderr."""
        if self.proc.poll() is None:
            self.proc.terminate()
        try:
            self.proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self._reader.join(timeout=5)
        return self.proc.stderr.read() if self.proc.stderr else ""


def publish(node, device, topic: str, messages: list[str], qos: str = "1", version: str = "mqttv5", *args: str):
    """Publishes `messages` over one connection to `node` (mosquitto_pub -l: one message a line);
    with QoS 1 or 2 it exits 0 once every one was acknowledged."""
    host, port = node.mqtt_addr
    done = subprocess.run(
        ["mosquitto_pub", "-h", host, "-p", str(port), "--cafile", node.ca_bundle, "--cert", device.cert,
         "--key", device.key, "-V", version, "-q", qos, "-t", topic, "-l", *args],
        input="".join(f"{message}\n" for message in messages), capture_output=True, text=True, timeout=60,
    )
    assert done.returncode == 0, f"mosquitto_pub on {node.name} exited {done.returncode}: {done.stderr}"


def until_routed(node, device, topic: str, watchers: list[Watcher], qos: str = "1", version: str = "mqttv5",
                 timeout: float = 20) -> float:
    """Publishes probes on `topic` through `node` every 200 ms until every watcher received one
    (its subscription is acknowledged and the route from `node` to it exists); returns how long
    that took."""
    started = time.monotonic()
    sent = 0
    while True:
        publish(node, device, topic, [f"probe-{sent}"], qos, version)
        sent += 1
        if all(watcher.wait_for(lambda w: w.payloads(topic), 0.2) for watcher in watchers):
            return time.monotonic() - started
        stalled = [watcher.node.name for watcher in watchers if watcher.proc.poll() is not None]
        assert not stalled, f"mosquitto_sub on {stalled} exited: {[w.close() for w in watchers]}"
        elapsed = time.monotonic() - started
        assert elapsed < timeout, (
            f"after {elapsed:.1f} s and {sent} probes from {node.name}, no probe reached "
            f"{[watcher.node.name for watcher in watchers if not watcher.payloads(topic)]}"
        )


class Sdk5:
    """The AWS IoT Device SDK v2's MQTT5 client against one node: its CONNACKs, disconnections
    and received messages recorded."""

    def __init__(self, node, device, client_id: str, *, rejoin: bool = False, session_expiry: int = 0,
                 reconnect: bool = True):
        from awscrt import mqtt5
        from awsiot import mqtt5_client_builder

        self.mqtt5 = mqtt5
        self.node = node
        self.connacks: list = []
        self.disconnects: list[tuple[float, object, object]] = []  # (monotonic time, DISCONNECT, exception)
        self.received: list[tuple[str, bytes]] = []
        self._changed = threading.Condition()
        self._stopped = threading.Event()
        host, port = node.mqtt_addr
        options = {}
        if not reconnect:  # a client that stays down once disconnected (within the test's time)
            options.update(min_reconnect_delay_ms=3_600_000, max_reconnect_delay_ms=3_600_000)
        self.client = mqtt5_client_builder.mtls_from_path(
            endpoint=host, port=port, cert_filepath=device.cert, pri_key_filepath=device.key,
            ca_filepath=node.ca_bundle, client_id=client_id,
            session_behavior=(mqtt5.ClientSessionBehaviorType.REJOIN_ALWAYS if rejoin
                              else mqtt5.ClientSessionBehaviorType.CLEAN),
            session_expiry_interval_sec=session_expiry,
            on_lifecycle_connection_success=self._connected,
            on_lifecycle_disconnection=self._disconnected,
            on_lifecycle_stopped=lambda data: self._stopped.set(),
            on_publish_received=self._publish,
            **options,
        )
        self.client.start()

    def _connected(self, data) -> None:
        with self._changed:
            self.connacks.append(data.connack_packet)
            self._changed.notify_all()

    def _disconnected(self, data) -> None:
        with self._changed:
            self.disconnects.append((time.monotonic(), data.disconnect_packet, data.exception))
            self._changed.notify_all()

    def _publish(self, data) -> None:
        with self._changed:
            self.received.append((data.publish_packet.topic, bytes(data.publish_packet.payload)))
            self._changed.notify_all()

    def wait(self, predicate, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        with self._changed:
            while not predicate(self):
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._changed.wait(min(left, 0.1))
            return True

    def connack(self, timeout: float = 15):
        assert self.wait(lambda c: c.connacks, timeout), f"no CONNACK from {self.node.name} within {timeout} s"
        return self.connacks[0]

    def payloads(self, topic: str) -> list[str]:
        with self._changed:
            return [payload.decode() for name, payload in self.received if name == topic]

    def subscribe(self, topic_filter: str, qos: int = 1) -> None:
        mqtt5 = self.mqtt5
        suback = self.client.subscribe(mqtt5.SubscribePacket(subscriptions=[
            mqtt5.Subscription(topic_filter=topic_filter, qos=mqtt5.QoS(qos))])).result(timeout=10)
        assert all(code.value < 0x80 for code in suback.reason_codes), suback

    def publish(self, topic: str, payload: str, qos: int = 1):
        """A publish future (its result carries the PUBACK with QoS 1)."""
        return self.client.publish(self.mqtt5.PublishPacket(topic=topic, payload=payload.encode(),
                                                            qos=self.mqtt5.QoS(qos)))

    def stop(self) -> None:
        """DISCONNECT (normal: a persistent session stays) and stop reconnecting."""
        self.client.stop()
        self._stopped.wait(timeout=10)


# ------------------------------------------------------------------------------------------------
# the harness itself
# ------------------------------------------------------------------------------------------------
def test_every_node_serves_the_one_registry_with_one_ca(cluster, openssl):
    """The nodes share the registry and the CAs: a device made through n1's API is served by
    every node, each node's server certificate chains to the same root, every node is named."""
    roots = {node.name: open(node.ca_bundle).read() for node in cluster.nodes}
    assert len(set(roots.values())) == 1, "one server root for the whole cluster"
    device_roots = {open(node.data_dir / "device-root.pem").read() for node in cluster.nodes}
    assert len(device_roots) == 1, "one device root for the whole cluster"
    assert len({node.endpoints["mqtt_addr"] for node in cluster.nodes}) == len(cluster)

    device = make_device(cluster[0], openssl)
    for node in cluster.nodes:
        described = node.client().describe_certificate(certificateId=device.cert_id)
        assert described["certificateDescription"]["status"] == "ACTIVE", node.name
        topic = f"e2e/cluster/{uuid.uuid4().hex[:8]}/{node.name}"
        watcher = Watcher(node, device, topic)
        try:
            until_routed(node, device, topic, [watcher])
        finally:
            watcher.close()
    for node in cluster.nodes:
        assert f"node={node.name}" in _ANSI.sub("", node.log_path.read_text(errors="replace")), node.name


def test_a_node_with_another_passphrase_refuses_to_join(cluster, tmp_path):
    """The CA keys in the shared registry are sealed with the cluster's passphrase: a node
    given another one stops at start instead of serving."""
    stranger = ClusterNode("n9", tmp_path / "n9", tmp_path / "n9.log", cluster.database.url,
                           cluster.nats.url if cluster.nats else None, cluster[0].home, passphrase="not-the-passphrase")
    stranger.launch()
    try:
        code = stranger.proc.wait(timeout=30)
    finally:
        stranger.stop()
    assert code != 0, stranger.log_tail()
    assert "cannot be opened" in stranger.log_path.read_text(errors="replace"), stranger.log_tail()


# ------------------------------------------------------------------------------------------------
# publish on one node, receive on the others
# ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("version", ["mqttv311", "mqttv5"])
@pytest.mark.parametrize("qos", ["0", "1", "2"])
def test_a_message_published_on_one_node_reaches_subscribers_on_every_node(cluster, openssl, qos, version):
    subscriber, publisher = make_device(cluster.api, openssl), make_device(cluster.api, openssl)
    base = f"e2e/cluster/{uuid.uuid4().hex[:8]}"
    watchers = [Watcher(node, subscriber, f"{base}/#", qos, version) for node in cluster.nodes]
    try:
        took = until_routed(cluster[0], publisher, f"{base}/probe", watchers, qos, version)
        sent = [f"m{index}" for index in range(20)]
        publish(cluster[0], publisher, f"{base}/data", sent, qos, version)
        for watcher in watchers:
            watcher.wait_for(lambda w: len(w.payloads(f"{base}/data")) >= len(sent), 10)
            received = watcher.payloads(f"{base}/data")
            # Nothing is lost on an idle loopback, even at QoS 0; QoS 2 is exactly once, and a
            # QoS 1 message is resent only after a reconnection, of which there is none here.
            assert sorted(received, key=lambda m: int(m[1:])) == sent, (
                f"QoS {qos} {version}, published on n1, received on {watcher.node.name}: {received}")
        print(f"QoS {qos} {version}: routes from n1 to every node in {took:.2f} s; 20 of 20 on n1, n2, n3")
    finally:
        for watcher in watchers:
            watcher.close()


# ------------------------------------------------------------------------------------------------
# retained messages
# ------------------------------------------------------------------------------------------------
def retained_on(node, device, topic: str, expected: str | None, timeout: float = 10) -> float:
    """Subscribes on `node` until the retained message of `topic` is `expected` (None: none);
    returns how long it took to be so."""
    started = time.monotonic()
    while True:
        got = mosquitto("mosquitto_sub", node, device, "-t", topic, "-C", "1", "-W", "1", "-v", version="mqttv5")
        value = got.stdout.strip().split(" ", 1)[1] if got.stdout.strip() else None
        if value == expected:
            return time.monotonic() - started
        assert time.monotonic() - started < timeout, (
            f"{node.name} serves retained {value!r} for {topic}, not {expected!r}, after {timeout} s: {got.stderr}")


def test_retained_messages_are_one_store_served_by_every_node(cluster, openssl):
    device = make_device(cluster.api, openssl)
    topic = f"e2e/cluster/{uuid.uuid4().hex[:8]}/state"
    sent = mosquitto("mosquitto_pub", cluster[0], device, "-t", topic, "-m", "on", "-r", "-q", "1")
    assert sent.returncode == 0, sent.stderr
    for node in cluster.nodes:
        took = retained_on(node, device, topic, "on")
        print(f"retained on n1, served by {node.name} after {took:.2f} s")

    # A node started after the message was retained serves it too.
    late = cluster[2]
    assert late.stop() == 0, late.log_tail()
    try:
        sent = mosquitto("mosquitto_pub", cluster[1], device, "-t", topic, "-m", "off", "-r", "-q", "1")
        assert sent.returncode == 0, sent.stderr
    finally:
        late.start()
    took = retained_on(late, device, topic, "off")
    print(f"retained on n2 while n3 was down; n3, started after it, served it after {took:.2f} s")

    # Deleting it through one node deletes it everywhere.
    sent = mosquitto("mosquitto_pub", late, device, "-t", topic, "-n", "-r", "-q", "1")
    assert sent.returncode == 0, sent.stderr
    for node in cluster.nodes:
        retained_on(node, device, topic, None)


# ------------------------------------------------------------------------------------------------
# shared subscriptions
# ------------------------------------------------------------------------------------------------
def test_a_shared_subscription_delivers_each_message_once_over_members_on_different_nodes(cluster, openssl):
    subscriber, publisher = make_device(cluster.api, openssl), make_device(cluster.api, openssl)
    topic = f"e2e/cluster/{uuid.uuid4().hex[:8]}/work"
    probe = f"{topic}/probe"
    # Members on n2 and n3, the publisher on n1: every copy crosses the fabric.
    members = [Watcher(node, subscriber, f"$share/workers/{topic}/#") for node in (cluster[1], cluster[2])]
    try:
        # Probes until each member got one: both are subscribed and reachable (a probe goes to
        # one member, so this also shows that the group spans both nodes).
        deadline = time.monotonic() + 30
        probes = 0
        while not all(member.payloads(probe) for member in members):
            assert time.monotonic() < deadline, (
                f"after {probes} probes, probes per member: {[len(m.payloads(probe)) for m in members]}")
            publish(cluster[0], publisher, probe, [f"probe-{probes}"])
            probes += 1
            time.sleep(0.1)
        every_probe = [payload for member in members for payload in member.payloads(probe)]
        # Every probe went to one member, none to two (the ones still in flight arrive later).
        time.sleep(0.5)
        every_probe = [payload for member in members for payload in member.payloads(probe)]
        assert len(every_probe) == len(set(every_probe)), f"a probe went to two members: {every_probe}"

        sent = [f"job-{index}" for index in range(40)]
        publish(cluster[0], publisher, f"{topic}/jobs", sent)
        deadline = time.monotonic() + 10
        while sum(len(member.payloads(f"{topic}/jobs")) for member in members) < len(sent):
            if time.monotonic() > deadline:
                break
            time.sleep(0.1)
        time.sleep(1)  # a second copy, if any, has time to arrive
        per_member = [member.payloads(f"{topic}/jobs") for member in members]
        counts = collections.Counter(payload for payloads in per_member for payload in payloads)
        assert sorted(counts) == sorted(sent), f"missing: {sorted(set(sent) - set(counts))}"
        assert all(count == 1 for count in counts.values()), (
            f"delivered more than once: {sorted(m for m, c in counts.items() if c > 1)}")
        print(f"$share over n2 and n3: {[len(p) for p in per_member]} of {len(sent)} jobs; "
              f"{probes} probes before both members were reached")
        assert all(per_member), f"one member got every job: {[len(p) for p in per_member]}"
    finally:
        for member in members:
            member.close()


# ------------------------------------------------------------------------------------------------
# client IDs owned cluster-wide
# ------------------------------------------------------------------------------------------------
def test_a_client_id_connecting_on_another_node_takes_it_over_mqtt311(cluster, openssl):
    device = make_device(cluster.api, openssl)
    client_id = f"takeover-{uuid.uuid4().hex[:8]}"
    first = tls_socket(cluster[0], device, None)
    second = None
    try:
        first.sendall(connect_packet(client_id))
        assert connack(first) == 0
        assert not closed_by_peer(first, wait=0.5), "the first connection is up"
        second = tls_socket(cluster[1], device, None)
        second.sendall(connect_packet(client_id))
        assert connack(second) == 0
        connected_at = time.monotonic()
        assert closed_by_peer(first, wait=GENEROUS), f"n1 still holds {client_id} {GENEROUS} s after n2 took it"
        took = time.monotonic() - connected_at
        print(f"MQTT 3.1.1 takeover n1 -> n2: n1's connection closed {took:.3f} s after n2's CONNACK")
        # The new owner keeps it: nobody takes it back.
        assert not closed_by_peer(second, wait=2), "n2's connection was closed after it took the client ID over"
    finally:
        first.close()
        if second is not None:
            second.close()


def test_a_client_id_connecting_on_another_node_takes_it_over_sdk_mqtt5(cluster, openssl):
    device, sender = make_device(cluster.api, openssl), make_device(cluster.api, openssl)
    client_id = f"takeover5-{uuid.uuid4().hex[:8]}"
    topic = f"e2e/cluster/{client_id}/cmd"
    first = Sdk5(cluster[0], device, client_id, reconnect=False)
    second = None
    try:
        first.connack()
        second = Sdk5(cluster[1], device, client_id, reconnect=False)
        second.connack()
        connected_at = time.monotonic()
        assert first.wait(lambda c: c.disconnects, GENEROUS), f"n1 still holds {client_id} {GENEROUS} s later"
        when, packet, error = first.disconnects[0]
        print(f"MQTT 5 takeover n1 -> n2 (SDK): n1's connection closed {when - connected_at:.3f} s after n2's "
              f"CONNACK, DISCONNECT {packet.reason_code if packet else None}, {error}")
        assert packet is not None and packet.reason_code == first.mqtt5.DisconnectReasonCode.SESSION_TAKEN_OVER, (
            f"the first client should see DISCONNECT 0x8E (session taken over): {packet}, {error}")
        # The new owner stays connected and is served: a message sent through n3 reaches it.
        second.subscribe(topic)
        deadline = time.monotonic() + 20
        while not second.payloads(topic):
            assert time.monotonic() < deadline, "nothing published on n3 reached the new owner on n2"
            publish(cluster[2], sender, topic, ["go"])
            second.wait(lambda c: c.payloads(topic), 0.3)
        assert not second.disconnects, f"the new owner was disconnected: {second.disconnects}"
    finally:
        first.stop()
        if second is not None:
            second.stop()


# ------------------------------------------------------------------------------------------------
# revocation on every node
# ------------------------------------------------------------------------------------------------
def test_revocation_through_one_nodes_api_closes_a_session_on_another_node(cluster, openssl):
    device = make_device(cluster[0], openssl)
    sock = tls_socket(cluster[2], device, None)
    try:
        sock.sendall(connect_packet(f"revoked-{uuid.uuid4().hex[:6]}", level=5))
        head = read_exactly(sock, 2)
        assert head[0] == 0x20, head
        read_exactly(sock, head[1])
        assert not closed_by_peer(sock, wait=0.5), "the session on n3 is up"
        called_at = time.monotonic()
        cluster[0].client().update_certificate(certificateId=device.cert_id, newStatus="REVOKED")
        revoked_at = time.monotonic()
        assert closed_by_peer(sock, wait=GENEROUS), f"n3 kept the revoked device's session {GENEROUS} s"
        closed_at = time.monotonic()
        print(f"revoked through n1's API (UpdateCertificate took {revoked_at - called_at:.3f} s): n3 closed the "
              f"session {closed_at - revoked_at:.3f} s after the call returned")
    finally:
        sock.close()
    refused = mosquitto("mosquitto_pub", cluster[1], device, "-t", "e2e/x", "-m", "x")
    assert refused.returncode != 0, "n2 accepts the revoked certificate"


# ------------------------------------------------------------------------------------------------
# a node killed
# ------------------------------------------------------------------------------------------------
class Orphan:
    """A device whose persistent session was on a node that was then killed."""

    def __init__(self, device, client_id: str, topic: str, queued: list[str]):
        self.device, self.client_id, self.topic, self.queued = device, client_id, topic, queued


def orphan_a_persistent_session(cluster, openssl) -> tuple[Orphan, object]:
    """A device (SDK MQTT5, session expiry 1 h) subscribes at QoS 1 on n2 and disconnects,
    keeping its session; QoS 1 messages for it are published through n1, each acknowledged;
    then n2 is SIGKILLed. Returns the device and the publisher (a device too)."""
    device, publisher = make_device(cluster.api, openssl), make_device(cluster.api, openssl)
    client_id = f"survivor-{uuid.uuid4().hex[:8]}"
    topic = f"e2e/cluster/{client_id}/inbox"
    holder = Sdk5(cluster[1], device, client_id, rejoin=True, session_expiry=3600)
    try:
        holder.connack()
        holder.subscribe(topic)
        # The route from n1 to the session on n2 exists before anything is queued.
        deadline = time.monotonic() + 20
        probes = 0
        while not holder.payloads(topic):
            assert time.monotonic() < deadline, "no probe published on n1 reached the device on n2"
            publish(cluster[0], publisher, topic, [f"probe-{probes}"])
            probes += 1
            holder.wait(lambda c: c.payloads(topic), 0.3)
    finally:
        holder.stop()
    queued = [f"queued-{index}" for index in range(QUEUED)]
    publish(cluster[0], publisher, topic, queued)  # exit 0: every one acknowledged (PUBACK)
    cluster.kill(1)
    return Orphan(device, client_id, topic, queued), publisher


def test_a_device_whose_node_is_killed_reconnects_to_another_node(cluster, openssl):
    """What a device can count on today: after its node dies, it connects to another node with
    the same client ID and is served there. (Whether its session came along is printed here and
    asserted in the test below.)"""
    orphan, publisher = orphan_a_persistent_session(cluster, openssl)
    moved = None
    try:
        moved = Sdk5(cluster[2], orphan.device, orphan.client_id, rejoin=True, session_expiry=3600)
        ack = moved.connack()
        assert ack.reason_code.value == 0, ack
        moved.wait(lambda c: len(c.payloads(orphan.topic)) >= QUEUED, 3)
        arrived = [m for m in moved.payloads(orphan.topic) if m.startswith("queued-")]
        print(f"n2 killed; the device reconnected to n3: session_present={ack.session_present}, "
              f"{len(set(arrived))} of {QUEUED} queued QoS 1 messages arrived")
        moved.subscribe(orphan.topic)
        deadline = time.monotonic() + 20
        while "after" not in moved.payloads(orphan.topic):
            assert time.monotonic() < deadline, "nothing published on n1 reached the device on n3"
            publish(cluster[0], publisher, orphan.topic, ["after"])
            moved.wait(lambda c: "after" in c.payloads(orphan.topic), 0.3)
    finally:
        if moved is not None:
            moved.stop()
        cluster.restart(1)


def test_a_persistent_session_and_its_queued_messages_survive_a_killed_node(cluster, openssl):
    """The issue's stronger promise: the device reconnecting to another node finds its session
    (session present) and receives, without subscribing again, every QoS 1 message the broker
    acknowledged to the publisher while it was away."""
    orphan, _ = orphan_a_persistent_session(cluster, openssl)
    moved = None
    try:
        moved = Sdk5(cluster[2], orphan.device, orphan.client_id, rejoin=True, session_expiry=3600)
        ack = moved.connack()
        assert ack.reason_code.value == 0, ack
        moved.wait(lambda c: set(orphan.queued) <= set(c.payloads(orphan.topic)), 10)
        arrived = set(moved.payloads(orphan.topic)) & set(orphan.queued)
        print(f"session_present={ack.session_present}; {len(arrived)} of {QUEUED} acknowledged messages arrived")
        assert ack.session_present, "the session of the killed node was not resumed on n3"
        assert arrived == set(orphan.queued), f"lost: {sorted(set(orphan.queued) - arrived)}"
    finally:
        if moved is not None:
            moved.stop()
        cluster.restart(1)


# ------------------------------------------------------------------------------------------------
# NATS restarted
# ------------------------------------------------------------------------------------------------
class Traffic:
    """An SDK MQTT5 publisher on one node sending `<prefix>-<n>` at QoS 1 every 20 ms in a
    thread; which were acknowledged (PUBACK success), refused or failed."""

    def __init__(self, node, device, topic: str):
        self.client = Sdk5(node, device, f"traffic-{uuid.uuid4().hex[:8]}")
        self.client.connack()
        self.topic = topic
        self.acknowledged: list[str] = []
        self.refused: list[tuple[str, object]] = []
        self.failed: list[tuple[str, str]] = []
        self.prefix = "before"
        self.dropped = 0
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        index = 0
        while not self._stop.is_set():
            message = f"{self.prefix}-{index}"
            index += 1
            future = self.client.publish(self.topic, message)
            future.add_done_callback(lambda done, message=message: self._done(message, done))
            time.sleep(0.02)

    def _done(self, message: str, future) -> None:
        with self._lock:
            try:
                puback = future.result().puback
            except Exception as error:  # noqa: BLE001 (the SDK fails it with a CRT error)
                self.failed.append((message, type(error).__name__))
                return
            if puback is not None and puback.reason_code.value < 0x80:
                self.acknowledged.append(message)
            else:
                self.refused.append((message, puback.reason_code if puback else None))

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        time.sleep(1)  # acknowledgements still in flight
        self.dropped = len(self.client.disconnects)  # before our own DISCONNECT
        self.client.stop()

    def summary(self) -> str:
        with self._lock:
            by_phase = collections.Counter(message.split("-")[0] for message in self.acknowledged)
            codes = sorted({str(code) for _, code in self.refused})
            return (f"acknowledged {dict(by_phase)}, refused {len(self.refused)} {codes}, failed {len(self.failed)}; "
                    f"the publisher's connection dropped {self.dropped} times")


def nats_restarted_under_traffic(cluster, openssl):
    """Subscribers (QoS 1) on n2 and n3, QoS 1 traffic published through n1, NATS stopped for
    2 s and started again on the same port and store. Returns (watchers, traffic, topic,
    seconds until nats-server saw as many connections as there are nodes)."""
    subscriber, publisher = make_device(cluster.api, openssl), make_device(cluster.api, openssl)
    base = f"e2e/cluster/{uuid.uuid4().hex[:8]}"
    topic = f"{base}/flow"
    watchers = [Watcher(node, subscriber, f"{base}/#") for node in (cluster[1], cluster[2])]
    traffic = None
    try:
        until_routed(cluster[0], publisher, f"{base}/probe", watchers)
        before = cluster.nats.connections()
        traffic = Traffic(cluster[0], publisher, topic)
        time.sleep(1)
        traffic.prefix = "during"
        cluster.nats.stop()
        try:
            time.sleep(2)
        finally:
            cluster.nats.start()  # whatever happens, later tests find NATS up
        restarted = time.monotonic()
        traffic.prefix = "after"
        deadline = restarted + 30
        while cluster.nats.connections() < max(before, len(cluster)):
            assert time.monotonic() < deadline, (
                f"{cluster.nats.connections()} connections to nats-server 30 s after its restart, {before} before")
            time.sleep(0.1)
        reconnected = time.monotonic() - restarted
        time.sleep(1)
        return watchers, traffic, topic, reconnected
    except BaseException:
        if traffic is not None:
            traffic.stop()
        for watcher in watchers:
            watcher.close()
        raise


def test_nats_restarted_under_traffic_nodes_reconnect_and_messages_flow_again(cluster, openssl):
    watchers, traffic, topic, reconnected = nats_restarted_under_traffic(cluster, openssl)
    try:
        traffic.stop()
        publisher = make_device(cluster.api, openssl)
        # Probes until both nodes are reached again, then a counted batch.
        took = until_routed(cluster[0], publisher, f"{topic}/again", watchers, timeout=30)
        sent = [f"counted-{index}" for index in range(20)]
        publish(cluster[0], publisher, f"{topic}/counted", sent)
        for watcher in watchers:
            watcher.wait_for(lambda w: set(sent) <= set(w.payloads(f"{topic}/counted")), 10)
            missing = set(sent) - set(watcher.payloads(f"{topic}/counted"))
            assert not missing, f"published on n1 after NATS was back, missing on {watcher.node.name}: {missing}"
        print(f"NATS restarted: as many connections as before {reconnected:.2f} s after its start; routes "
              f"n1 -> n2, n3 again {took:.2f} s later; traffic: {traffic.summary()}")
    finally:
        for watcher in watchers:
            watcher.close()


def test_nats_restarted_under_traffic_loses_no_acknowledged_message(cluster, openssl):
    """The issue's stronger promise: every QoS 1 message the broker acknowledged (PUBACK
    success) before, during and after the restart reaches the subscribers on the other nodes.
    (Which node misses messages, if any, depends on the order the nodes reconnect to NATS in; a
    fabric that loses them does not fail this every time.)"""
    watchers, traffic, topic, _ = nats_restarted_under_traffic(cluster, openssl)
    try:
        time.sleep(2)
        traffic.stop()
        acknowledged = set(traffic.acknowledged)
        for watcher in watchers:
            watcher.wait_for(lambda w: acknowledged <= set(w.payloads(topic)), 10)
        lost = {watcher.node.name: sorted(acknowledged - set(watcher.payloads(topic))) for watcher in watchers}
        print(f"NATS restarted under traffic: {traffic.summary()}; acknowledged but not received: "
              f"{ {name: len(missing) for name, missing in lost.items()} }")
        assert not any(lost.values()), f"acknowledged, never received: {lost}"
    finally:
        for watcher in watchers:
            watcher.close()


# ------------------------------------------------------------------------------------------------
# PostgreSQL unreachable
# ------------------------------------------------------------------------------------------------
def test_postgresql_unreachable_sessions_keep_flowing_new_connections_wait_for_it(cluster, openssl):
    """The registry goes away (this cluster's database refuses connections; the PostgreSQL
    server is shared): devices already connected keep exchanging messages across nodes, a device
    connecting meanwhile is refused (its certificate's status cannot be checked: the nodes fail
    closed), the API answers InternalFailureException; once the database is back, new
    connections and the API work again."""
    subscriber, publisher, newcomer = (make_device(cluster.api, openssl) for _ in range(3))
    topic = f"e2e/cluster/{uuid.uuid4().hex[:8]}/outage"
    watcher = Watcher(cluster[1], subscriber, topic)
    sender = Sdk5(cluster[0], publisher, f"outage-{uuid.uuid4().hex[:8]}")
    try:
        sender.connack()
        deadline = time.monotonic() + 20
        while not watcher.payloads(topic):
            assert time.monotonic() < deadline, "nothing sent on n1 reached n2 before the outage"
            sender.publish(topic, "before").result(timeout=10)
            watcher.wait_for(lambda w: w.payloads(topic), 0.3)

        cluster.database.refuse_connections()
        try:
            sent = [f"during-{index}" for index in range(10)]
            for message in sent:
                sender.publish(topic, message).result(timeout=10)
            assert watcher.wait_for(lambda w: set(sent) <= set(w.payloads(topic)), 10), (
                f"connected devices stopped exchanging messages without the registry: {watcher.payloads(topic)}")
            deadline = time.monotonic() + GENEROUS
            while mosquitto("mosquitto_pub", cluster[2], newcomer, "-t", topic, "-m", "x").returncode == 0:
                assert time.monotonic() < deadline, "a device connecting without the registry is still accepted"
                time.sleep(0.2)
            try:
                cluster[0].client().describe_certificate(certificateId=newcomer.cert_id)
                raise AssertionError("the API answered without its registry")
            except botocore.exceptions.ClientError as error:
                assert error.response["Error"]["Code"] == "InternalFailureException", error.response
            assert all(node.running() for node in cluster.nodes), "a node died without its registry"
        finally:
            cluster.database.allow_connections()
        back = time.monotonic()
        while (joined := mosquitto("mosquitto_pub", cluster[2], newcomer, "-t", topic, "-m", "after")).returncode != 0:
            assert time.monotonic() - back < 30, f"still refused 30 s after the registry came back: {joined.stderr}"
            time.sleep(0.2)
        took = time.monotonic() - back
        cluster[0].client().describe_certificate(certificateId=newcomer.cert_id)
        assert watcher.wait_for(lambda w: "after" in w.payloads(topic), 10), "n3 -> n2 after the outage"
        print(f"registry back: a new device connected {took:.2f} s later; sessions flowed throughout")
        assert not sender.disconnects, f"the connected publisher was dropped: {sender.disconnects}"
    finally:
        sender.stop()
        watcher.close()
