//! Byte bounds in the broker (issue 13): retained messages per account, offline session queues
//! per session and per account, offline sessions per account, and messages in flight per
//! connection. Each test acts as the attacker and then checks the broker's own accounting and
//! that the victim (another account, another session) is untouched.

use std::sync::atomic::Ordering;

use certfleet_gateway::broker::BrokerConfig;
use certfleet_mqtt::{Packet, PubAck, Publish, QoS, ReasonCode};

use crate::harness::*;

const KIB: usize = 1024;
const MIB: usize = 1024 * 1024;

fn big(topic: &str, fill: char, qos: QoS, packet_id: Option<u16>) -> Publish {
    let mut message = publish(topic, &fill.to_string().repeat(120 * KIB), qos, packet_id);
    message.retain = true;
    message
}

/// The bytes a retained message of [`big`] costs: payload and topic.
fn cost(topic: &str) -> usize {
    120 * KIB + topic.len()
}

fn retained(topic: &str, payload: &str, qos: QoS, packet_id: Option<u16>) -> Publish {
    let mut message = publish(topic, payload, qos, packet_id);
    message.retain = true;
    message
}

#[tokio::test(start_paused = true)]
async fn a_retained_flood_is_refused_at_the_byte_bound_and_touches_no_one_else() {
    let harness = Harness::with_config(BrokerConfig { max_retained_bytes: MIB, ..BrokerConfig::default() });
    let attacker = identity(ACCOUNT_A, 1);
    let victim = identity(ACCOUNT_B, 2);
    let (mut watcher, _) = harness.connect(&identity(ACCOUNT_A, 3), Options::v5("watcher")).await;
    watcher.subscribe_to("t/#", QoS::AtMostOnce).await;
    let (mut flood, _) = harness.connect(&attacker, Options::v5("flood")).await;

    // 8 messages of 120 KiB fit in 1 MiB; the 9th and every one after are refused with 0x97.
    for n in 1..=8u16 {
        flood.publish(big(&format!("t/{n}"), 'x', QoS::AtLeastOnce, Some(n))).await;
    }
    for n in 9..=20u16 {
        flood.send(Packet::Publish(big(&format!("t/{n}"), 'x', QoS::AtLeastOnce, Some(n)))).await;
        match flood.recv().await {
            Packet::PubAck(ack) => {
                assert_eq!((ack.packet_id, ack.reason_code), (id(n), ReasonCode::QUOTA_EXCEEDED), "message {n}");
            }
            other => panic!("expected PUBACK, got {other:?}"),
        }
    }
    // QoS 2 hears it in PUBREC; QoS 0 is dropped; the connection lives on.
    flood.send(Packet::Publish(big("t/21", 'x', QoS::ExactlyOnce, Some(21)))).await;
    match flood.recv().await {
        Packet::PubRec(rec) => assert_eq!((rec.packet_id, rec.reason_code), (id(21), ReasonCode::QUOTA_EXCEEDED)),
        other => panic!("expected PUBREC, got {other:?}"),
    }
    flood.send(Packet::Publish(big("t/22", 'x', QoS::AtMostOnce, None))).await;
    flood.send(Packet::PingReq).await;
    assert_eq!(flood.recv().await, Packet::PingResp);

    let stored: usize = (1..=8).map(|n| cost(&format!("t/{n}"))).sum();
    assert_eq!(harness.broker.retained_count(&attacker.account), 8, "nothing past the bound is kept");
    assert_eq!(harness.broker.retained_bytes(&attacker.account), stored);
    assert!(stored <= MIB);
    let counters = harness.broker.counters();
    assert_eq!(counters.retained_refused_bytes.load(Ordering::Relaxed), 14);
    assert_eq!(counters.retained_refused_count.load(Ordering::Relaxed), 0);
    // A refused message is not routed either: the watcher saw the 8 kept ones only.
    for n in 1..=8 {
        assert_eq!(topic(&watcher.receive().await), format!("t/{n}"));
    }
    watcher.nothing().await;

    // Replacing a retained message within the bound works; deleting one always does, and frees
    // exactly its bytes for another.
    flood.publish(big("t/1", 'y', QoS::AtLeastOnce, Some(30))).await;
    flood.publish(retained("t/2", "", QoS::AtLeastOnce, Some(31))).await;
    assert_eq!(harness.broker.retained_bytes(&attacker.account), stored - cost("t/2"));
    flood.publish(big("t/9", 'x', QoS::AtLeastOnce, Some(32))).await;
    assert_eq!(harness.broker.retained_count(&attacker.account), 8);
    assert_eq!(harness.broker.retained_bytes(&attacker.account), stored - cost("t/2") + cost("t/9"));

    // Another account's retained publish is untouched by the attacker's quota.
    let (mut other, _) = harness.connect(&victim, Options::v5("victim")).await;
    other.publish(big("t/1", 'v', QoS::AtLeastOnce, Some(1))).await;
    assert_eq!(harness.broker.retained_count(&victim.account), 1);
    let (mut reader, _) = harness.connect(&identity(ACCOUNT_B, 4), Options::v5("reader")).await;
    reader.subscribe_to("t/1", QoS::AtMostOnce).await;
    let got = reader.message().await;
    assert!(got.retain && got.payload.iter().all(|byte| *byte == b'v'));
}

#[tokio::test(start_paused = true)]
async fn the_retained_count_bound_refuses_new_topics_and_mqtt_311_is_disconnected() {
    let harness = Harness::with_config(BrokerConfig { max_retained_messages: 2, ..BrokerConfig::default() });
    let device = identity(ACCOUNT_A, 1);
    let (mut v5, _) = harness.connect(&device, Options::v5("v5")).await;
    v5.publish(retained("a", "1", QoS::AtLeastOnce, Some(1))).await;
    v5.publish(retained("b", "1", QoS::AtLeastOnce, Some(2))).await;
    v5.send(Packet::Publish(retained("c", "1", QoS::AtLeastOnce, Some(3)))).await;
    assert_eq!(
        v5.recv().await,
        Packet::PubAck(PubAck {
            packet_id: id(3),
            reason_code: ReasonCode::QUOTA_EXCEEDED,
            properties: Default::default()
        })
    );
    v5.publish(retained("a", "2", QoS::AtLeastOnce, Some(4))).await;
    assert_eq!(harness.broker.counters().retained_refused_count.load(Ordering::Relaxed), 1);

    // MQTT 3.1.1 has no negative acknowledgement: the client is disconnected, nothing kept.
    let (mut v311, _) = harness.connect(&identity(ACCOUNT_A, 2), Options::v311("old")).await;
    v311.send(Packet::Publish(retained("d", "1", QoS::AtLeastOnce, Some(1)))).await;
    let after = v311.closed().await;
    assert!(after.is_empty(), "no PUBACK for a refused message: {after:?}");
    assert_eq!(harness.broker.retained_count(&device.account), 2);
    assert_eq!(harness.broker.counters().retained_refused_count.load(Ordering::Relaxed), 2);
}

#[tokio::test(start_paused = true)]
async fn an_offline_session_keeps_at_most_its_byte_bound() {
    let harness = Harness::with_config(BrokerConfig { max_queued_bytes: MIB, ..BrokerConfig::default() });
    let device = identity(ACCOUNT_A, 1);
    let (mut keeper, _) = harness.connect(&device, Options::v5("keeper").persistent(600)).await;
    keeper.subscribe_to("q", QoS::AtLeastOnce).await;
    keeper.disconnect().await;
    let (mut publisher, _) = harness.connect(&identity(ACCOUNT_A, 2), Options::v5("pub")).await;
    for n in 1..=20u16 {
        let mut message = big("q", 'q', QoS::AtLeastOnce, Some(n));
        message.retain = false;
        publisher.publish(message).await;
    }
    let each = cost("q");
    assert_eq!(harness.broker.session_queued_bytes(&device.account, "keeper"), Some(8 * each));
    assert_eq!(harness.broker.queued_bytes(&device.account), 8 * each);
    let counters = harness.broker.counters();
    assert_eq!(counters.dropped_session_bytes.load(Ordering::Relaxed), 12);
    assert_eq!(counters.dropped_queue_bytes.load(Ordering::Relaxed), 12 * each as u64);

    // The 8 kept are delivered; once acknowledged, the accounting is back to zero exactly.
    let (mut keeper, connack) = harness.connect(&device, Options::v5("keeper").persistent(600)).await;
    assert!(connack.session_present);
    for _ in 0..8 {
        keeper.receive().await;
    }
    keeper.nothing().await;
    assert_eq!(harness.broker.session_queued_bytes(&device.account, "keeper"), Some(0));
    assert_eq!(harness.broker.queued_bytes(&device.account), 0);
}

#[tokio::test(start_paused = true)]
async fn the_account_bounds_the_bytes_of_all_its_offline_queues() {
    let harness = Harness::with_config(BrokerConfig { max_account_queued_bytes: MIB, ..BrokerConfig::default() });
    let device = identity(ACCOUNT_A, 1);
    for client in ["s1", "s2", "s3"] {
        let (mut session, _) = harness.connect(&device, Options::v5(client).persistent(600)).await;
        session.subscribe_to("q", QoS::AtLeastOnce).await;
        session.disconnect().await;
    }
    let (mut publisher, _) = harness.connect(&identity(ACCOUNT_A, 2), Options::v5("pub")).await;
    for n in 1..=5u16 {
        let mut message = big("q", 'q', QoS::AtLeastOnce, Some(n));
        message.retain = false;
        publisher.publish(message).await;
    }
    // 15 copies asked for, 8 fit in the account's MiB.
    assert_eq!(harness.broker.queued_bytes(&device.account), 8 * cost("q"));
    assert_eq!(harness.broker.counters().dropped_account_bytes.load(Ordering::Relaxed), 7);
    // Another account's sessions are not charged for it.
    let other = identity(ACCOUNT_B, 3);
    let (mut session, _) = harness.connect(&other, Options::v5("s1").persistent(600)).await;
    session.subscribe_to("q", QoS::AtLeastOnce).await;
    session.disconnect().await;
    let (mut publisher_b, _) = harness.connect(&identity(ACCOUNT_B, 4), Options::v5("pub")).await;
    let mut message = big("q", 'q', QoS::AtLeastOnce, Some(1));
    message.retain = false;
    publisher_b.publish(message).await;
    assert_eq!(harness.broker.queued_bytes(&other.account), cost("q"));
}

#[tokio::test(start_paused = true)]
async fn past_the_offline_session_bound_the_oldest_offline_session_ends() {
    let harness = Harness::with_config(BrokerConfig { max_offline_sessions: 2, ..BrokerConfig::default() });
    let device = identity(ACCOUNT_A, 1);
    for client in ["old", "mid", "new"] {
        let (mut session, _) = harness.connect(&device, Options::v5(client).persistent(600)).await;
        session.subscribe_to("o", QoS::AtLeastOnce).await;
        session.disconnect().await;
    }
    assert_eq!(harness.broker.offline_session_count(&device.account), 2);
    assert_eq!(harness.broker.counters().offline_sessions_evicted.load(Ordering::Relaxed), 1);
    let (mut publisher, _) = harness.connect(&identity(ACCOUNT_A, 2), Options::v5("pub")).await;
    publisher.publish(publish("o", "kept", QoS::AtLeastOnce, Some(1))).await;

    let (mut old, connack) = harness.connect(&device, Options::v5("old").persistent(600)).await;
    assert!(!connack.session_present, "the oldest offline session ended");
    old.nothing().await;
    let (mut mid, connack) = harness.connect(&device, Options::v5("mid").persistent(600)).await;
    assert!(connack.session_present);
    assert_eq!(text(&mid.receive().await), "kept");
    // "old" and "mid" are online now: only "new" is offline.
    assert_eq!(harness.broker.offline_session_count(&device.account), 1);
    // Another account's offline sessions are its own.
    let other = identity(ACCOUNT_B, 3);
    for client in ["b1", "b2"] {
        let (session, _) = harness.connect(&other, Options::v5(client).persistent(600)).await;
        session.disconnect().await;
    }
    assert_eq!(harness.broker.offline_session_count(&other.account), 2);
    assert_eq!(harness.broker.counters().offline_sessions_evicted.load(Ordering::Relaxed), 1);
}

#[tokio::test(start_paused = true)]
async fn an_mqtt5_client_gets_no_more_in_flight_than_the_server_bound() {
    let harness = Harness::with_config(BrokerConfig { client_receive_maximum: 3, ..BrokerConfig::default() });
    let device = identity(ACCOUNT_A, 1);
    // No Receive Maximum in CONNECT means 65,535 to MQTT 5; the server still sends 3 at most.
    let (mut subscriber, _) = harness.connect(&device, Options::v5("sub")).await;
    subscriber.subscribe_to("i", QoS::AtLeastOnce).await;
    let (mut publisher, _) = harness.connect(&identity(ACCOUNT_A, 2), Options::v5("pub")).await;
    for n in 1..=5u16 {
        publisher.publish(publish("i", &n.to_string(), QoS::AtLeastOnce, Some(n))).await;
    }
    let mut ids = Vec::new();
    for expected in ["1", "2", "3"] {
        let message = subscriber.message().await;
        assert_eq!(text(&message), expected);
        ids.push(message.packet_id.unwrap());
    }
    subscriber.nothing().await;
    subscriber.send(Packet::PubAck(PubAck::new(ids[0]))).await;
    assert_eq!(text(&subscriber.message().await), "4");
    subscriber.nothing().await;
}
