//! Cluster-wide operations (issue 14 item 5) on a real `nats-server` the test starts on a free
//! port (`nats-server -js -sd DIR`; SKIP when it is not installed): two gateway nodes in one
//! process, each with its own NATS fabric, over one registry (a SQLite file standing for the
//! cluster's PostgreSQL).
//!
//! - the operator view of either node lists both nodes' devices (named with their node), sums
//!   their refusals and per-chain counters, and shows each node's view of a configuration;
//! - a node that answers garbage or not at all is counted and left out, and cannot hold the view
//!   past its deadline;
//! - a commit on one node (a revocation) makes the other node's follower read the change feed at
//!   once: its live session closes long before its poll interval (60 s here) comes round;
//! - a server message published through one node's broker (what the rotation service's
//!   `csr_req` is) reaches a device connected to the other node.
//!
//! Timing is asserted only as generous bounds and printed (`--nocapture` shows it).

#[path = "support/chains.rs"]
mod chains;

use std::net::{SocketAddr, TcpListener as StdListener};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use certfleet_gateway::cluster::{ClusterConfig, NatsFabric, OpsConfig};
use certfleet_gateway::fabric::Message;
use certfleet_gateway::identity::{Identity, Refusal};
use certfleet_gateway::listener::{Authenticated, Connection};
use certfleet_gateway::{BrokerConfig, EventSink, Network, Node, NodeId, ShutdownConfig};
use certfleet_mqtt::{
    Connect, MAX_PACKET_SIZE, Packet, Properties, ProtocolVersion, QoS, RetainHandling, Subscribe, Subscription,
    TopicFilter, TopicName, decode, encode,
};
use certfleet_pki::{Issuer, KeyAlgorithm};
use certfleet_registry::{CertificateStatus, SqliteStore, Store};
use certfleet_services::{Caller, Config, DataPlane, Services, SystemClock};
use certfleet_testkit::TempDir;
use futures_util::StreamExt;

use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream};
use tokio::sync::{Notify, watch};

/// How long a test waits for what must come.
const PATIENCE: Duration = Duration::from_secs(15);
/// The view's deadline in these tests.
const DEADLINE: Duration = Duration::from_millis(400);

/// A `nats-server -js` of the test's own, killed when dropped.
struct NatsServer {
    child: Child,
    url: String,
    _store: TempDir,
}

impl NatsServer {
    /// Starts one on a free port; `None` (after a SKIP line) when it is not installed.
    fn start() -> Option<NatsServer> {
        let candidates = [
            std::env::var("NATS_SERVER_BIN").ok(),
            Some("/usr/sbin/nats-server".into()),
            Some("/usr/bin/nats-server".into()),
        ];
        let Some(binary) = candidates.into_iter().flatten().map(PathBuf::from).find(|path| path.is_file()) else {
            println!("SKIP: nats-server is not installed (apt-get install nats-server; .ci/run does it)");
            return None;
        };
        let port = StdListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let store = TempDir::new("nats");
        let child = Command::new(binary)
            .args(["-js", "-a", "127.0.0.1", "-p", &port.to_string(), "-sd"])
            .arg(store.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("starting nats-server");
        let started = Instant::now();
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(started.elapsed() < PATIENCE, "nats-server did not listen on {port}");
            std::thread::sleep(Duration::from_millis(20));
        }
        Some(NatsServer { child, url: format!("nats://127.0.0.1:{port}"), _store: store })
    }
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Two nodes `n1` and `n2` on one registry and one NATS. The registry announces its commits to
/// `n1` only: in a real cluster each process has its own store, and "an API call on n1" is
/// what this stands for.
struct Pair {
    services: Arc<Services>,
    caller: Caller,
    n1: Arc<Node>,
    n2: Arc<Node>,
    stop: watch::Sender<bool>,
    _registry: TempDir,
    nats: NatsServer,
}

async fn node(name: &str, services: &Arc<Services>, nats: &NatsServer, commits: Arc<Notify>) -> Arc<Node> {
    let builtin = chains::builtin_chains("ops root");
    let account = services.list_accounts().unwrap().into_iter().next().unwrap().id;
    let gateway = certfleet_gateway::Config {
        region: "us-east-1".into(),
        endpoint_domain: "certfleet.local".into(),
        default_account: account,
        max_connections: 64,
        handshake_timeout: Duration::from_secs(5),
        connect_timeout: Duration::from_secs(5),
        // Far longer than any bound below: only a nudge can explain a quick close.
        change_poll_interval: Duration::from_secs(60),
        caches: Default::default(),
        test_endpoint_records_per_second: 10,
    };
    let id = NodeId::parse(name).unwrap();
    let broker = BrokerConfig { node: id.clone(), ..BrokerConfig::default() };
    let fabric = NatsFabric::connect(id, ClusterConfig::new(nats.url.clone(), broker.max_packet_size)).await.unwrap();
    let operations =
        OpsConfig { deadline: DEADLINE, hello_interval: Duration::from_millis(500), ..OpsConfig::default() };
    Node::new(
        certfleet_gateway::NodeConfig {
            gateway,
            broker,
            rules: Default::default(),
            fleet: Default::default(),
            history_sessions_per_certificate_per_hour: 60,
            // The broker's own decisions are not what these tests are about.
            policies: certfleet_gateway::Policies::DangerAuthorizeEverything,
            shutdown: ShutdownConfig::default(),
        },
        services.clone(),
        Network::Cluster { fabric, commits, operations },
        builtin,
        Arc::new(certfleet_egress::Egress::default()),
    )
}

/// Two running nodes, or `None` without nats-server.
async fn pair() -> Option<Pair> {
    let nats = NatsServer::start()?;
    let registry = TempDir::new("ops-registry");
    let commits = Arc::new(Notify::new());
    let store: Arc<dyn Store> = Arc::new(SqliteStore::open(&registry.path().join("registry.db")).unwrap());
    let announced = commits.clone();
    let store: Arc<dyn Store> =
        Arc::new(certfleet_services::feed::Announcing::new(store, Box::new(move || announced.notify_one())));
    let issuer = Issuer::generate_root(
        "ops device root",
        "certfleet",
        time::Duration::days(30),
        KeyAlgorithm::EcdsaP256,
        time::OffsetDateTime::now_utc() - time::Duration::hours(1),
    )
    .unwrap();
    let services = Arc::new(Services::new(store, Arc::new(SystemClock), Config::default(), Some(issuer)));
    let caller = Caller { account: services.create_account().unwrap().id };
    let n1 = node("n1", &services, &nats, commits).await;
    let n2 = node("n2", &services, &nats, Arc::new(Notify::new())).await;
    let (stop, stopped) = watch::channel(false);
    for node in [&n1, &n2] {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        tokio::spawn(node.clone().run(listener, stopped.clone()));
    }
    Some(Pair { services, caller, n1, n2, stop, _registry: registry, nats })
}

fn peer() -> SocketAddr {
    "192.0.2.7:50000".parse().unwrap()
}

/// A made-up identity of `account` (the view does not check it against the registry).
fn identity(caller: &Caller, certificate: u32) -> Identity {
    Identity {
        account: caller.account.clone(),
        certificate_id: certfleet_pki::CertificateId::parse(&format!("{certificate:064x}")).unwrap(),
        ca_certificate_id: None,
        not_after: time::OffsetDateTime::now_utc() + time::Duration::days(1),
    }
}

/// Waits until `view` lists a device of `client_id`.
async fn until_listed(view: &Arc<dyn DataPlane>, caller: &Caller, client_id: &str) {
    let started = Instant::now();
    loop {
        let view = view.clone();
        let account = caller.account.clone();
        let listed = tokio::task::spawn_blocking(move || view.connected_clients(&account)).await.unwrap();
        if listed.iter().any(|client| client.client_id.as_deref() == Some(client_id)) {
            return;
        }
        assert!(started.elapsed() < PATIENCE, "{client_id} never listed: {listed:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Waits until `node` knows `count` other nodes.
async fn until_peers(node: &Node, count: u64) {
    let started = Instant::now();
    loop {
        let peers = node.render_metrics().lines().find_map(|line| {
            line.strip_prefix("certfleet_cluster_ops_peers ").map(|value| value.parse::<u64>().unwrap())
        });
        if peers == Some(count) {
            return;
        }
        assert!(started.elapsed() < PATIENCE, "{} knows {peers:?} nodes, not {count}", node.id());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn metric(node: &Node, what: &str) -> u64 {
    let needle = format!("certfleet_cluster_ops_total{{what=\"{what}\"}} ");
    node.render_metrics()
        .lines()
        .find_map(|line| line.strip_prefix(&needle).map(|value| value.parse().unwrap()))
        .unwrap_or_else(|| panic!("no {what} counter"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn either_node_sees_every_nodes_devices_refusals_and_counters() {
    let Some(pair) = pair().await else { return };
    let caller = &pair.caller;
    let now = time::OffsetDateTime::now_utc();
    let mut memberships = Vec::new();
    for (node, name, certificate, seconds_ago) in [(&pair.n1, "on-n1", 1, 20), (&pair.n2, "on-n2", 2, 10)] {
        let live = &node.gateway().live;
        let at = now - time::Duration::seconds(seconds_ago);
        let membership = live.join_endpoint(
            identity(caller, certificate),
            None,
            "TLSv1.3",
            peer(),
            at,
            Some("iot:Data-ATS".into()),
            Some(Arc::from("builtin")),
        );
        live.set_client_id(membership.session_id, name);
        memberships.push(membership);
    }
    pair.n1.gateway().live.note_refusal(&caller.account, Refusal::Expired, now);
    for _ in 0..2 {
        pair.n2.gateway().live.note_refusal(&caller.account, Refusal::Revoked, now);
    }
    let views = [pair.n1.data_plane(), pair.n2.data_plane()];
    for view in &views {
        until_listed(view, caller, "on-n2").await;
        until_listed(view, caller, "on-n1").await;
    }

    // Asked from a blocking thread (as the API does) and from a runtime thread (as the console
    // does): the same view, without waiting for the deadline once every node answered.
    let view = views[0].clone();
    let account = caller.account.clone();
    let started = Instant::now();
    let listed = tokio::task::spawn_blocking(move || view.connected_clients(&account)).await.unwrap();
    let took = started.elapsed();
    println!("n1 listed {} devices of 2 nodes in {took:?}", listed.len());
    let listed: Vec<(Option<&str>, Option<&str>)> =
        listed.iter().map(|client| (client.client_id.as_deref(), client.node.as_deref())).collect();
    assert_eq!(listed, [(Some("on-n1"), Some("n1")), (Some("on-n2"), Some("n2"))], "oldest first");
    assert!(took < DEADLINE, "every node known answered: no wait for the deadline ({took:?})");
    let from_runtime = views[1].connected_clients(&caller.account);
    assert_eq!(from_runtime.len(), 2);

    let view = views[1].clone();
    let account = caller.account.clone();
    let refusals = tokio::task::spawn_blocking(move || view.recent_refusals(&account)).await.unwrap();
    assert_eq!(refusals, [("Revoked".to_owned(), 2), ("Expired".to_owned(), 1)]);

    let view = views[0].clone();
    let account = caller.account.clone();
    let report =
        tokio::task::spawn_blocking(move || view.endpoint_report(&account, "iot:Data-ATS")).await.unwrap().unwrap();
    let chains: Vec<(&str, u64)> = report.chains.iter().map(|chain| (chain.chain.as_str(), chain.connected)).collect();
    assert_eq!(chains, [("builtin", 2)], "summed over the nodes");
    let nodes: Vec<(&str, u64)> = report.nodes.iter().map(|view| (view.node.as_str(), view.connected)).collect();
    assert_eq!(nodes, [("n1", 1), ("n2", 1)], "each node's own view");
    assert!(report.missing_nodes.is_empty());
    assert!(metric(&pair.n1, "served") >= 1 && metric(&pair.n2, "served") >= 1);
    assert_eq!(metric(&pair.n1, "malformed"), 0);
    drop(memberships);
    let _ = pair.stop.send(true);
}

/// Says hello as `name` every 100 ms and answers every request with `answer` (nothing: a node
/// too slow to answer).
async fn rogue(url: &str, name: &'static str, answer: Option<Vec<u8>>) -> tokio::task::JoinHandle<()> {
    let client = async_nats::connect(url).await.unwrap();
    let mut asks = client.subscribe("cf.ops.ask.*.*").await.unwrap();
    tokio::spawn(async move {
        let mut hello = tokio::time::interval(Duration::from_millis(100));
        loop {
            tokio::select! {
                _ = hello.tick() => { let _ = client.publish("cf.ops.nodes", Bytes::from_static(name.as_bytes())).await; }
                Some(request) = asks.next() => {
                    if let (Some(reply), Some(answer)) = (request.reply, &answer) {
                        let _ = client.publish(reply, Bytes::from(answer.clone())).await;
                    }
                }
            }
        }
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lying_or_silent_node_is_left_out_within_the_deadline() {
    let Some(pair) = pair().await else { return };
    let caller = &pair.caller;
    let membership =
        pair.n2.gateway().live.join(identity(caller, 7), None, "TLSv1.3", peer(), time::OffsetDateTime::now_utc());
    pair.n2.gateway().live.set_client_id(membership.session_id, "honest");
    // A well-framed part whose body is not a device list, a frame claiming 60,000 parts, and bytes.
    let mut lie = vec![1u8, 4];
    lie.extend_from_slice(b"liar");
    lie.extend_from_slice(&[0, 0, 0, 1]);
    lie.extend_from_slice(b"{\"clients\": \"everyone\"}");
    let liar = rogue(&pair.nats.url, "liar", Some(lie)).await;
    let sloth = rogue(&pair.nats.url, "sloth", None).await;
    let view = pair.n1.data_plane();
    until_peers(&pair.n1, 3).await;
    until_listed(&view, caller, "honest").await;
    let malformed_before = metric(&pair.n1, "malformed");
    let missing_before = metric(&pair.n1, "missing");

    let account = caller.account.clone();
    let started = Instant::now();
    let listed = tokio::task::spawn_blocking(move || view.connected_clients(&account)).await.unwrap();
    let took = started.elapsed();
    println!("with a liar and a silent node, n1 answered in {took:?}");
    let names: Vec<Option<&str>> = listed.iter().map(|client| client.client_id.as_deref()).collect();
    assert_eq!(names, [Some("honest")], "only what an honest node said");
    assert!(took >= DEADLINE - Duration::from_millis(50), "the silent node was waited for ({took:?})");
    assert!(took < DEADLINE + Duration::from_secs(2), "but not past the deadline ({took:?})");
    assert!(metric(&pair.n1, "malformed") > malformed_before, "the lie is counted");
    assert!(metric(&pair.n1, "missing") > missing_before, "the silence is counted");

    let view = pair.n1.data_plane();
    let account = caller.account.clone();
    let report =
        tokio::task::spawn_blocking(move || view.endpoint_report(&account, "iot:Data-ATS")).await.unwrap().unwrap();
    assert!(report.missing_nodes.contains(&"sloth".to_owned()), "{:?}", report.missing_nodes);
    liar.abort();
    sloth.abort();
    drop(membership);
    let _ = pair.stop.send(true);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revocation_committed_on_one_node_closes_a_session_on_the_other_at_once() {
    let Some(pair) = pair().await else { return };
    let caller = &pair.caller;
    let created = pair.services.create_keys_and_certificate(caller, true).unwrap();
    let identity = Identity {
        account: caller.account.clone(),
        certificate_id: created.certificate.id.clone(),
        ca_certificate_id: created.certificate.ca_certificate_id.clone(),
        not_after: created.certificate.not_after,
    };
    let mut membership =
        pair.n2.gateway().live.join(identity, None, "TLSv1.3", peer(), time::OffsetDateTime::now_utc());
    pair.n2.gateway().live.set_client_id(membership.session_id, "to-revoke");
    // Both nodes know each other (so n2 listens for nudges) before the revocation.
    until_listed(&pair.n1.data_plane(), caller, "to-revoke").await;

    let started = Instant::now();
    let services = pair.services.clone();
    let (revoker, id) = (caller.clone(), created.certificate.id.clone());
    tokio::task::spawn_blocking(move || services.update_certificate(&revoker, &id, CertificateStatus::Revoked))
        .await
        .unwrap()
        .unwrap();
    let committed = started.elapsed();
    tokio::time::timeout(PATIENCE, membership.closed.wait_for(Option::is_some))
        .await
        .expect("the session on n2 was not told to close")
        .unwrap();
    let closed = started.elapsed();
    println!(
        "revoked through n1 (commit {committed:?}): n2 closed the session {:?} after the commit",
        closed - committed
    );
    assert!(closed < Duration::from_secs(5), "n2 polls every 60 s: only the nudge explains {closed:?}");
    assert!(metric(&pair.n1, "nudge_sent") >= 1);
    assert!(metric(&pair.n2, "nudge_received") >= 1);
    let _ = pair.stop.send(true);
}

/// A device's MQTT connection to a node, over an in-memory stream.
struct Device {
    stream: DuplexStream,
    buffer: BytesMut,
}

impl Device {
    async fn connect(node: &Node, identity: Identity, client_id: &str) -> Device {
        let (client, server) = tokio::io::duplex(64 * 1024);
        let membership =
            node.gateway().live.join(identity.clone(), None, "TLSv1.3", peer(), time::OffsetDateTime::now_utc());
        let connection = Connection {
            peer: peer(),
            sni: None,
            tls_version: "TLSv1.3",
            auth: Ok(Authenticated { identity, membership }),
        };
        tokio::spawn(certfleet_gateway::serve(node.broker().clone(), server, connection));
        let mut device = Device { stream: client, buffer: BytesMut::new() };
        device
            .send(Packet::Connect(Box::new(Connect {
                protocol_version: ProtocolVersion::V5,
                clean_start: true,
                keep_alive: 60,
                client_id: client_id.into(),
                will: None,
                username: None,
                password: None,
                properties: Properties::default(),
            })))
            .await;
        assert!(matches!(device.next().await, Some(Packet::ConnAck(_))));
        device
    }

    async fn send(&mut self, packet: Packet) {
        let mut bytes = BytesMut::new();
        encode(&packet, ProtocolVersion::V5, &mut bytes).unwrap();
        self.stream.write_all(&bytes).await.unwrap();
    }

    /// The next packet within 200 ms.
    async fn next(&mut self) -> Option<Packet> {
        let deadline = tokio::time::Instant::now() + Duration::from_millis(200);
        loop {
            if let Some(packet) = decode(&mut self.buffer, ProtocolVersion::V5, MAX_PACKET_SIZE).unwrap() {
                return Some(packet);
            }
            self.buffer.reserve(8192);
            match tokio::time::timeout_at(deadline, self.stream.read_buf(&mut self.buffer)).await {
                Ok(Ok(0)) | Ok(Err(_)) | Err(_) => return None,
                Ok(Ok(_)) => {}
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_message_published_through_one_node_reaches_a_device_on_the_other() {
    let Some(pair) = pair().await else { return };
    let caller = &pair.caller;
    let mut device = Device::connect(&pair.n2, identity(caller, 9), "rotating-device").await;
    let topic = "management/topic/rotating-device/csr_req";
    device
        .send(Packet::Subscribe(Subscribe {
            packet_id: certfleet_mqtt::PacketId::new(1).unwrap(),
            subscriptions: vec![Subscription {
                filter: TopicFilter::new(topic).unwrap(),
                qos: QoS::AtLeastOnce,
                no_local: false,
                retain_as_published: false,
                retain_handling: RetainHandling::SendAtSubscribe,
            }],
            properties: Properties::default(),
        }))
        .await;
    assert!(matches!(device.next().await, Some(Packet::SubAck(_))));
    // What the rotation service does (`certfleet`'s `BrokerPublisher`): `EventSink::publish_event`
    // on the broker of the node it runs on, here n1. The route from n1 to n2 follows the
    // subscription shortly: the message is published again until it arrives.
    let started = Instant::now();
    let mut sent = 0;
    let received = loop {
        let message = Message {
            topic: TopicName::new(topic).unwrap(),
            payload: Bytes::from_static(b"{}"),
            qos: QoS::AtLeastOnce,
            retain: false,
            properties: Properties::default(),
            expires_at: None,
            publisher: None,
        };
        pair.n1.broker().publish_event(&caller.account, message);
        sent += 1;
        if let Some(Packet::Publish(publish)) = device.next().await {
            break publish;
        }
        assert!(started.elapsed() < PATIENCE, "csr_req published on n1 never reached the device on n2");
    };
    println!("csr_req from n1 reached the device on n2 after {sent} publish(es), {:?}", started.elapsed());
    assert_eq!(received.topic.as_ref().map(TopicName::as_str), Some(topic));
    assert_eq!(received.payload, Bytes::from_static(b"{}"));
    assert_eq!(received.qos, QoS::AtLeastOnce);
    let _ = pair.stop.send(true);
}
