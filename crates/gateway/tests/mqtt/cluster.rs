//! Nodes over NATS (the networked fabric), each a broker of its own on one real `nats-server`
//! with JetStream that the test starts on a free port: messages cross nodes, shared groups
//! deliver once cluster-wide, client IDs are ordered cluster-wide, retained messages and
//! persistent sessions are one store. Real time here (the network does not pause).

use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use certfleet_gateway::broker::{AllowAll, BrokerConfig};
use certfleet_gateway::cluster::{ClusterConfig, NatsFabric};
use certfleet_gateway::fabric::NodeId;
use certfleet_mqtt::{QoS, ReasonCode};

use crate::harness::*;

/// A `nats-server` with JetStream on a free port, in a directory of its own; killed on drop.
struct Nats {
    child: Child,
    url: String,
    _dir: tempdir::Dir,
}

mod tempdir {
    /// A directory removed on drop.
    pub struct Dir(pub std::path::PathBuf);
    impl Drop for Dir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
}

impl Nats {
    fn start() -> Nats {
        let port = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let dir = std::env::temp_dir().join(format!("certfleet-nats-{}-{port}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let child = Command::new("nats-server")
            .args(["-a", "127.0.0.1", "-p", &port.to_string(), "-js", "-sd"])
            .arg(&dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("nats-server (the Debian package nats-server; .ci/run installs it)");
        for _ in 0..100 {
            if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Nats { child, url: format!("nats://127.0.0.1:{port}"), _dir: tempdir::Dir(dir) }
    }

    async fn node(&self, name: &str) -> Harness {
        let node = NodeId::parse(name).unwrap();
        let config = BrokerConfig { node: node.clone(), ..BrokerConfig::default() };
        let fabric =
            NatsFabric::connect(node, ClusterConfig::new(self.url.clone(), config.max_packet_size)).await.unwrap();
        Harness::on_fabric(config, Arc::new(AllowAll), fabric)
    }
}

impl Drop for Nats {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Publishes `topic` from `publisher` until `subscriber` receives it (the other node's NATS
/// subscription is made asynchronously after SUBSCRIBE), then returns.
async fn until_routed(publisher: &mut Client, subscriber: &mut Client, topic: &str) {
    for attempt in 0..100u16 {
        publisher.publish(publish(topic, "probe", QoS::AtMostOnce, None)).await;
        if let Some(certfleet_mqtt::Packet::Publish(got)) = subscriber.next(Duration::from_millis(100)).await {
            assert_eq!(text(&got), "probe");
            // Probes still on their way are read out.
            while subscriber.next(Duration::from_millis(100)).await.is_some() {}
            return;
        }
        assert!(attempt < 99, "no route to the other node");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_shared_groups_and_retained_messages_cross_nodes() {
    let nats = Nats::start();
    let (one, two) = (nats.node("one").await, nats.node("two").await);
    let device = identity(ACCOUNT_A, 1);

    let (mut subscriber, _) = one.connect(&device, Options::v5("sub")).await;
    subscriber.subscribe_to("across/#", QoS::AtLeastOnce).await;
    subscriber.subscribe_to("across/+", QoS::AtLeastOnce).await;
    let (mut publisher, _) = two.connect(&identity(ACCOUNT_A, 2), Options::v311("pub")).await;
    until_routed(&mut publisher, &mut subscriber, "across/probe").await;

    // QoS 1 across nodes, once although two filters of the node match.
    for n in 1..=5u16 {
        publisher.publish(publish("across/x", &n.to_string(), QoS::AtLeastOnce, Some(n))).await;
    }
    let got: Vec<String> = {
        let mut got = Vec::new();
        for _ in 0..5 {
            got.push(text(&subscriber.receive().await));
        }
        got
    };
    assert_eq!(got, ["1", "2", "3", "4", "5"], "in order, each once");
    assert_eq!(subscriber.next(Duration::from_millis(300)).await, None, "no second copy");

    // Another account on the same subjects' prefix sees nothing.
    let (mut stranger, _) = one.connect(&identity(ACCOUNT_B, 3), Options::v5("stranger")).await;
    stranger.subscribe_to("#", QoS::AtLeastOnce).await;
    publisher.publish(publish("across/secret", "a's", QoS::AtLeastOnce, Some(20))).await;
    assert_eq!(text(&subscriber.receive().await), "a's");
    assert_eq!(stranger.next(Duration::from_millis(300)).await, None, "accounts never see each other");

    // A shared group with a member on each node: each message to exactly one member.
    let (mut member_one, _) = one.connect(&identity(ACCOUNT_A, 4), Options::v5("m1")).await;
    member_one.subscribe_to("$share/g/work/#", QoS::AtLeastOnce).await;
    let (mut member_two, _) = two.connect(&identity(ACCOUNT_A, 5), Options::v5("m2")).await;
    member_two.subscribe_to("$share/g/work/#", QoS::AtLeastOnce).await;
    // Probes until each member got one (both nodes' queue subscriptions are in place).
    let (mut reached_one, mut reached_two) = (false, false);
    for attempt in 0..200u16 {
        publisher.publish(publish("work/probe", "probe", QoS::AtMostOnce, None)).await;
        reached_one |= member_one.next(Duration::from_millis(20)).await.is_some();
        reached_two |= member_two.next(Duration::from_millis(20)).await.is_some();
        if reached_one && reached_two {
            break;
        }
        assert!(attempt < 199, "the group's members were not both reached");
    }
    for member in [&mut member_one, &mut member_two] {
        while member.next(Duration::from_millis(200)).await.is_some() {}
    }
    for n in 1..=20u16 {
        publisher.publish(publish("work/item", &n.to_string(), QoS::AtLeastOnce, Some(100 + n))).await;
    }
    let mut delivered = Vec::new();
    for member in [&mut member_one, &mut member_two] {
        while let Some(certfleet_mqtt::Packet::Publish(got)) = member.next(Duration::from_millis(500)).await {
            delivered.push(text(&got).parse::<u16>().unwrap());
        }
    }
    delivered.sort_unstable();
    assert_eq!(delivered, (1..=20).collect::<Vec<_>>(), "each message once over the group");

    // Retained on one node, served by a node started later.
    let mut retained = publish("across/state", "on", QoS::AtLeastOnce, Some(50));
    retained.retain = true;
    publisher.publish(retained).await;
    let three = nats.node("three").await;
    let mut served = None;
    for _ in 0..50 {
        let (mut late, _) = three.connect(&identity(ACCOUNT_A, 6), Options::v5("late")).await;
        late.subscribe_to("across/state", QoS::AtLeastOnce).await;
        if let Some(certfleet_mqtt::Packet::Publish(got)) = late.next(Duration::from_millis(100)).await {
            served = Some(text(&got));
            break;
        }
    }
    assert_eq!(served.as_deref(), Some("on"), "the late node serves the cluster's retained message");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_id_is_taken_over_across_nodes_and_two_at_once_leave_one_winner() {
    let nats = Nats::start();
    let (one, two) = (nats.node("one").await, nats.node("two").await);
    let device = identity(ACCOUNT_A, 1);

    let (mut first, _) = one.connect(&device, Options::v5("dev")).await;
    let (mut second, _) = two.connect(&device, Options::v5("dev")).await;
    assert_eq!(first.disconnected().await, Some(ReasonCode::SESSION_TAKEN_OVER));

    // Two connections at once on two nodes: exactly one keeps the client ID.
    for round in 0..5 {
        let client_id = format!("race-{round}");
        let (a, b) =
            tokio::join!(one.connect(&device, Options::v5(&client_id)), two.connect(&device, Options::v5(&client_id)));
        let (mut a, mut b) = (a.0, b.0);
        let a_left = a.next(Duration::from_secs(2)).await;
        let b_left = b.next(Duration::from_secs(2)).await;
        let left = [&a_left, &b_left].iter().filter(|packet| packet.is_some()).count();
        assert_eq!(left, 1, "round {round}: one winner, one taken over: {a_left:?} {b_left:?}");
    }
    second.nothing().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_persistent_session_and_its_waiting_messages_survive_its_node() {
    let nats = Nats::start();
    let (one, two) = (nats.node("one").await, nats.node("two").await);
    let device = identity(ACCOUNT_A, 1);

    let (mut keeper, connack) = one.connect(&device, Options::v5("keeper").persistent(3600)).await;
    assert!(!connack.session_present);
    keeper.subscribe_to("inbox/#", QoS::AtLeastOnce).await;
    let (mut publisher, _) = two.connect(&identity(ACCOUNT_A, 2), Options::v311("pub")).await;
    until_routed(&mut publisher, &mut keeper, "inbox/probe").await;
    keeper.disconnect().await;
    for n in 1..=3u16 {
        publisher.publish(publish("inbox/x", &n.to_string(), QoS::AtLeastOnce, Some(n))).await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    // The node that held the session is gone (dropped without any goodbye).
    drop(one);

    // Its certificate resumes it on another node: session present, every waiting message, and
    // the subscription with it.
    let (mut keeper, connack) = two.connect(&device, Options::v5("keeper").persistent(3600)).await;
    assert!(connack.session_present, "the kept session is resumed");
    let got: Vec<String> = {
        let mut got = Vec::new();
        for _ in 0..3 {
            got.push(text(&keeper.receive().await));
        }
        got
    };
    assert_eq!(got, ["1", "2", "3"]);
    publisher.publish(publish("inbox/y", "live", QoS::AtLeastOnce, Some(9))).await;
    assert_eq!(text(&keeper.receive().await), "live", "the subscription came along");

    // Another certificate does not get the session with the client ID, on any node.
    keeper.disconnect().await;
    let three = nats.node("three").await;
    let (_stranger, connack) = three.connect(&identity(ACCOUNT_A, 9), Options::v5("keeper").persistent(3600)).await;
    assert!(!connack.session_present, "a session is resumed by the certificate that made it only");
}
