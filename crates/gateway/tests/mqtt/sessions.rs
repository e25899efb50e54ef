//! Sessions across connections: persistence and its bounds, redelivery, expiry, takeover, wills
//! and keep-alive.

use std::sync::atomic::Ordering;
use std::time::Duration;

use certfleet_gateway::broker::BrokerConfig;
use certfleet_mqtt::{Disconnect, Packet, Properties, ProtocolVersion, PubAck, PubRec, PubRel, QoS, ReasonCode};

use crate::harness::*;

#[tokio::test(start_paused = true)]
async fn a_persistent_session_queues_while_offline() {
    let harness = Harness::new();
    let device = identity(ACCOUNT_A, 1);
    let (mut subscriber, connack) = harness.connect(&device, Options::v311("keeper").persistent(0)).await;
    assert!(!connack.session_present);
    subscriber.subscribe_to("p/#", QoS::AtLeastOnce).await;
    subscriber.disconnect().await;
    assert_eq!(harness.broker.session_count(&device.account), 1, "kept offline");

    let (mut publisher, _) = harness.connect(&identity(ACCOUNT_A, 2), Options::v311("pub")).await;
    for n in 1..=3u16 {
        publisher.publish(publish("p/x", &n.to_string(), QoS::AtLeastOnce, Some(n))).await;
    }
    publisher.publish(publish("p/x", "qos 0 is not kept", QoS::AtMostOnce, None)).await;

    let (mut subscriber, connack) = harness.connect(&device, Options::v311("keeper").persistent(0)).await;
    assert!(connack.session_present);
    let got: Vec<String> =
        [subscriber.receive().await, subscriber.receive().await, subscriber.receive().await].iter().map(text).collect();
    assert_eq!(got, ["1", "2", "3"]);
    subscriber.nothing().await;
    assert_eq!(harness.broker.counters().dropped_offline_qos0.load(Ordering::Relaxed), 1);

    // The subscription survived too.
    publisher.publish(publish("p/y", "live", QoS::AtLeastOnce, Some(9))).await;
    assert_eq!(text(&subscriber.receive().await), "live");
}

#[tokio::test(start_paused = true)]
async fn the_offline_queue_is_bounded() {
    let harness = Harness::with_config(BrokerConfig { max_queued_messages: 3, ..BrokerConfig::default() });
    let device = identity(ACCOUNT_A, 1);
    let (mut subscriber, _) = harness.connect(&device, Options::v5("keeper").persistent(600)).await;
    subscriber.subscribe_to("q", QoS::AtLeastOnce).await;
    subscriber.disconnect().await;
    let (mut publisher, _) = harness.connect(&identity(ACCOUNT_A, 2), Options::v5("pub")).await;
    for n in 1..=5u16 {
        publisher.publish(publish("q", &n.to_string(), QoS::AtLeastOnce, Some(n))).await;
    }
    assert_eq!(harness.broker.counters().dropped_queue_full.load(Ordering::Relaxed), 2);
    let (mut subscriber, connack) = harness.connect(&device, Options::v5("keeper").persistent(600)).await;
    assert!(connack.session_present);
    for expected in ["1", "2", "3"] {
        assert_eq!(text(&subscriber.receive().await), expected);
    }
    subscriber.nothing().await;
}

#[tokio::test(start_paused = true)]
async fn unacknowledged_messages_are_resent_on_resumption() {
    let harness = Harness::new();
    let device = identity(ACCOUNT_A, 1);
    let (mut subscriber, _) = harness.connect(&device, Options::v5("flaky").persistent(600)).await;
    subscriber.subscribe_to("r/+", QoS::ExactlyOnce).await;
    let (mut publisher, _) = harness.connect(&identity(ACCOUNT_A, 2), Options::v5("pub")).await;
    publisher.publish(publish("r/1", "at least once", QoS::AtLeastOnce, Some(1))).await;
    publisher.publish(publish("r/2", "exactly once", QoS::ExactlyOnce, Some(2))).await;
    let first = subscriber.message().await;
    let second = subscriber.message().await;
    assert!(!first.dup && !second.dup);
    // The client records the QoS 2 message (PUBREC), then its connection breaks.
    subscriber.send(Packet::PubRec(PubRec::new(second.packet_id.unwrap()))).await;
    assert_eq!(subscriber.recv().await, Packet::PubRel(PubRel::new(second.packet_id.unwrap())));
    subscriber.drop_connection().await;

    let (mut subscriber, connack) = harness.connect(&device, Options::v5("flaky").persistent(600)).await;
    assert!(connack.session_present);
    let again = subscriber.message().await;
    assert!(again.dup, "a redelivery has DUP set");
    assert_eq!((again.packet_id, text(&again)), (first.packet_id, text(&first)), "with its packet identifier");
    assert_eq!(subscriber.recv().await, Packet::PubRel(PubRel::new(second.packet_id.unwrap())), "PUBREL again");
    subscriber.send(Packet::PubAck(PubAck::new(first.packet_id.unwrap()))).await;
    subscriber.nothing().await;
}

#[tokio::test(start_paused = true)]
async fn clean_start_discards_and_expiry_ends_sessions() {
    let harness = Harness::new();
    let device = identity(ACCOUNT_A, 1);
    let (mut subscriber, _) = harness.connect(&device, Options::v5("c").persistent(600)).await;
    subscriber.subscribe_to("gone", QoS::AtLeastOnce).await;
    subscriber.disconnect().await;
    let (mut publisher, _) = harness.connect(&identity(ACCOUNT_A, 2), Options::v5("pub")).await;
    publisher.publish(publish("gone", "lost", QoS::AtLeastOnce, Some(1))).await;

    let (mut subscriber, connack) = harness.connect(&device, Options::v5("c")).await;
    assert!(!connack.session_present, "clean start");
    subscriber.nothing().await;
    publisher.publish(publish("gone", "nobody listens", QoS::AtLeastOnce, Some(2))).await;
    subscriber.nothing().await;
    subscriber.disconnect().await;
    assert_eq!(harness.broker.session_count(&device.account), 1, "only the publisher's");

    let (subscriber, _) = harness.connect(&device, Options::v5("c").persistent(10)).await;
    subscriber.disconnect().await;
    assert_eq!(harness.broker.session_count(&device.account), 2);
    tokio::time::sleep(Duration::from_secs(11)).await;
    assert_eq!(harness.broker.session_count(&device.account), 1, "expired after 10 s offline");
    let (_subscriber, connack) = harness.connect(&device, Options::v5("c").persistent(10)).await;
    assert!(!connack.session_present);

    // A DISCONNECT may shorten the expiry: to 0, the session ends at once.
    let (mut other, _) = harness.connect(&device, Options::v5("d").persistent(600)).await;
    let mut disconnect = Disconnect::default();
    disconnect.properties.session_expiry_interval = Some(0);
    other.send(Packet::Disconnect(disconnect)).await;
    other.closed().await;
    assert_eq!(harness.broker.session_count(&device.account), 2, "publisher and c");
}

#[tokio::test(start_paused = true)]
async fn disconnect_may_not_raise_an_expiry_of_zero() {
    let harness = Harness::new();
    let (mut client, _) = harness.connect(&identity(ACCOUNT_A, 1), Options::v5("z")).await;
    let mut disconnect = Disconnect::default();
    disconnect.properties.session_expiry_interval = Some(60);
    client.send(Packet::Disconnect(disconnect)).await;
    assert_eq!(client.disconnected().await, Some(ReasonCode::PROTOCOL_ERROR));
}

#[tokio::test(start_paused = true)]
async fn a_second_connection_takes_the_client_id_over() {
    let harness = Harness::new();
    let device = identity(ACCOUNT_A, 1);
    let (mut first, _) = harness.connect(&device, Options::v5("dup").persistent(600)).await;
    first.subscribe_to("t", QoS::AtLeastOnce).await;
    let (mut second, connack) = harness.connect(&device, Options::v5("dup").persistent(600)).await;
    assert!(connack.session_present, "the session passes to the new connection");
    assert_eq!(first.disconnected().await, Some(ReasonCode::SESSION_TAKEN_OVER));

    let (mut publisher, _) = harness.connect(&device, Options::v5("pub")).await;
    publisher.publish(publish("t", "to the new one", QoS::AtLeastOnce, Some(1))).await;
    assert_eq!(text(&second.receive().await), "to the new one");

    // 3.1.1: the first is just closed; a clean session starts over.
    let (mut old, _) = harness.connect(&device, Options::v311("dup311")).await;
    let (_new, connack) = harness.connect(&device, Options::v311("dup311")).await;
    assert!(!connack.session_present);
    assert!(old.closed().await.is_empty());
    let _ = first.task.await;
    let seen = harness.recorder.seen.lock().unwrap().clone();
    assert!(seen.contains(&("DUPLICATE_CLIENTID".into(), "dup".into())), "{seen:?}");
    assert_eq!(harness.broker.counters().takeovers.load(Ordering::Relaxed), 2);
}

/// The attacker's certificate may connect with the victim's client ID (a loose `client/*`
/// policy), but the victim's persistent session is not its to resume: no queued message, no
/// subscription, `session_present` false; the session starts afresh.
#[tokio::test(start_paused = true)]
async fn another_certificate_never_resumes_a_session() {
    let harness = Harness::new();
    let victim = identity(ACCOUNT_A, 1);
    let (mut subscriber, _) = harness.connect(&victim, Options::v5("victim").persistent(600)).await;
    subscriber.subscribe_to("victim/secret", QoS::AtLeastOnce).await;
    subscriber.drop_connection().await;
    let (mut publisher, _) = harness.connect(&identity(ACCOUNT_A, 3), Options::v5("pub")).await;
    publisher.publish(publish("victim/secret", "queued for the victim", QoS::AtLeastOnce, Some(1))).await;

    for (version, certificate) in [(ProtocolVersion::V5, 2), (ProtocolVersion::V311, 4)] {
        let attacker = identity(ACCOUNT_A, certificate);
        let options = match version {
            ProtocolVersion::V5 => Options::v5("victim").persistent(600),
            ProtocolVersion::V311 => Options::v311("victim").persistent(0),
        };
        let (mut thief, connack) = harness.connect(&attacker, options).await;
        assert!(!connack.session_present, "{version:?}: not the attacker's session");
        thief.nothing().await;
        publisher.publish(publish("victim/secret", "sent after the takeover", QoS::AtLeastOnce, Some(2))).await;
        thief.nothing().await;
        thief.disconnect().await;
    }

    // The victim's own certificate gets a fresh session back, never the attacker's.
    let (mut victim_again, connack) = harness.connect(&victim, Options::v5("victim").persistent(600)).await;
    assert!(!connack.session_present, "the attacker's session is not the victim's either");
    victim_again.nothing().await;
}

#[tokio::test(start_paused = true)]
async fn wills_on_abnormal_ends_only() {
    let harness = Harness::new();
    let (mut watcher, _) = harness.connect(&identity(ACCOUNT_A, 9), Options::v5("watcher")).await;
    watcher.subscribe_to("will/#", QoS::AtLeastOnce).await;
    let device = identity(ACCOUNT_A, 1);

    let (client, _) = harness.connect(&device, Options::v311("w1").will("will/w1", "gone")).await;
    client.drop_connection().await;
    let will = watcher.receive().await;
    assert_eq!((topic(&will), text(&will).as_str()), ("will/w1", "gone"));

    let (client, _) = harness.connect(&device, Options::v5("w2").will("will/w2", "gone")).await;
    client.disconnect().await;
    watcher.nothing().await;

    let (mut client, _) = harness.connect(&device, Options::v5("w3").will("will/w3", "asked for")).await;
    let disconnect =
        Disconnect { reason_code: ReasonCode::DISCONNECT_WITH_WILL_MESSAGE, properties: Properties::default() };
    client.send(Packet::Disconnect(disconnect)).await;
    client.closed().await;
    assert_eq!(text(&watcher.receive().await), "asked for");

    // A protocol error publishes it too.
    let (mut client, _) = harness.connect(&device, Options::v311("w4").will("will/w4", "broke")).await;
    client.send_raw(&[0xF0, 0x00]).await;
    client.closed().await;
    assert_eq!(text(&watcher.receive().await), "broke");

    // And a takeover (the new connection starts clean).
    let (_client, _) = harness.connect(&device, Options::v5("w5").will("will/w5", "replaced")).await;
    let (_again, _) = harness.connect(&device, Options::v5("w5")).await;
    assert_eq!(text(&watcher.receive().await), "replaced");
    watcher.nothing().await;
}

#[tokio::test(start_paused = true)]
async fn a_delayed_will_is_cancelled_by_a_timely_reconnection() {
    let harness = Harness::new();
    let (mut watcher, _) = harness.connect(&identity(ACCOUNT_A, 9), Options::v5("watcher")).await;
    watcher.subscribe_to("will/#", QoS::AtLeastOnce).await;
    let device = identity(ACCOUNT_A, 1);
    let options = Options::v5("delayed").persistent(600).will("will/delayed", "late").will_delay(10);

    let (client, _) = harness.connect(&device, options.clone()).await;
    client.drop_connection().await;
    tokio::time::sleep(Duration::from_secs(5)).await;
    let (client, connack) = harness.connect(&device, options.clone()).await;
    assert!(connack.session_present);
    tokio::time::sleep(Duration::from_secs(20)).await;
    assert!(watcher.next(Duration::ZERO).await.is_none(), "cancelled by the reconnection");

    client.drop_connection().await;
    let started = tokio::time::Instant::now();
    assert_eq!(text(&watcher.receive().await), "late");
    assert_eq!(started.elapsed().as_secs(), 10, "after the will delay");

    // A delay longer than the session: published when the session ends.
    let options = Options::v5("short").persistent(3).will("will/short", "at expiry").will_delay(100);
    let (client, _) = harness.connect(&device, options).await;
    client.drop_connection().await;
    let started = tokio::time::Instant::now();
    assert_eq!(text(&watcher.receive().await), "at expiry");
    assert_eq!(started.elapsed().as_secs(), 3);
}

#[tokio::test(start_paused = true)]
async fn keep_alive_timeout_closes_at_one_and_a_half_periods() {
    let harness = Harness::new();
    let (mut watcher, _) = harness.connect(&identity(ACCOUNT_A, 9), Options::v5("watcher")).await;
    watcher.subscribe_to("will/#", QoS::AtLeastOnce).await;
    let mut options = Options::v5("sleepy").will("will/sleepy", "timed out");
    options.keep_alive = 2;
    let (mut client, _) = harness.connect(&identity(ACCOUNT_A, 1), options).await;
    // Pings keep it alive.
    for _ in 0..5 {
        tokio::time::sleep(Duration::from_secs(2)).await;
        client.send(Packet::PingReq).await;
        assert_eq!(client.recv().await, Packet::PingResp);
    }
    let started = tokio::time::Instant::now();
    assert_eq!(client.disconnected().await, Some(ReasonCode::KEEP_ALIVE_TIMEOUT));
    assert_eq!(started.elapsed(), Duration::from_secs(3));
    assert_eq!(text(&watcher.receive().await), "timed out");

    let mut options = Options::v311("sleepy311");
    options.keep_alive = 4;
    let (mut client, _) = harness.connect(&identity(ACCOUNT_A, 1), options).await;
    let started = tokio::time::Instant::now();
    assert!(client.closed().await.is_empty());
    assert_eq!(started.elapsed(), Duration::from_secs(6));
}
