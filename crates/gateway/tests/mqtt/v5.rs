//! MQTT 5 features: topic aliases, message expiry, subscription identifiers, shared
//! subscriptions, no local, retain handling, the client's maximum packet size, properties.

use std::num::{NonZeroU16, NonZeroU32};
use std::sync::atomic::Ordering;
use std::time::Duration;

use bytes::Bytes;
use certfleet_mqtt::{Packet, Properties, QoS, ReasonCode, RetainHandling, TopicName};

use crate::harness::*;

#[tokio::test(start_paused = true)]
async fn inbound_topic_aliases() {
    let harness = Harness::new();
    let (mut subscriber, _) = harness.connect(&identity(ACCOUNT_A, 1), Options::v5("sub")).await;
    subscriber.subscribe_to("alias/#", QoS::AtMostOnce).await;
    let (mut publisher, _) = harness.connect(&identity(ACCOUNT_A, 2), Options::v5("pub")).await;

    let mut set = publish("alias/t", "set", QoS::AtMostOnce, None);
    set.properties.topic_alias = NonZeroU16::new(10);
    publisher.publish(set).await;
    let mut used = publish("alias/t", "used", QoS::AtLeastOnce, Some(1));
    used.topic = None;
    used.properties.topic_alias = NonZeroU16::new(10);
    publisher.publish(used).await;
    for expected in ["set", "used"] {
        let message = subscriber.receive().await;
        assert_eq!((topic(&message), text(&message).as_str()), ("alias/t", expected));
        assert_eq!(message.properties.topic_alias, None, "aliases are not forwarded");
    }

    let mut over = publish("alias/u", "x", QoS::AtMostOnce, None);
    over.properties.topic_alias = NonZeroU16::new(11);
    publisher.send(Packet::Publish(over)).await;
    assert_eq!(publisher.disconnected().await, Some(ReasonCode::TOPIC_ALIAS_INVALID));

    let (mut publisher, _) = harness.connect(&identity(ACCOUNT_A, 2), Options::v5("pub2")).await;
    let mut unknown = publish("alias/u", "x", QoS::AtMostOnce, None);
    unknown.topic = None;
    unknown.properties.topic_alias = NonZeroU16::new(3);
    publisher.send(Packet::Publish(unknown)).await;
    assert_eq!(publisher.disconnected().await, Some(ReasonCode::PROTOCOL_ERROR));

    // Alias 0 (the codec refuses it).
    let (mut publisher, _) = harness.connect(&identity(ACCOUNT_A, 2), Options::v5("pub3")).await;
    publisher.send_raw(&[0x30, 7, 0, 1, b'a', 3, 0x23, 0, 0]).await;
    assert_eq!(publisher.disconnected().await, Some(ReasonCode::TOPIC_ALIAS_INVALID));
    subscriber.nothing().await;
}

#[tokio::test(start_paused = true)]
async fn expired_messages_are_dropped_and_the_rest_forwarded_with_what_is_left() {
    let harness = Harness::new();
    let device = identity(ACCOUNT_A, 1);
    let (mut subscriber, _) = harness.connect(&device, Options::v5("sub").persistent(600)).await;
    subscriber.subscribe_to("exp", QoS::AtLeastOnce).await;
    subscriber.disconnect().await;
    let (mut publisher, _) = harness.connect(&identity(ACCOUNT_A, 2), Options::v5("pub")).await;
    for (n, (payload, expiry)) in [("short", Some(5)), ("long", Some(100)), ("forever", None)].into_iter().enumerate() {
        let mut message = publish("exp", payload, QoS::AtLeastOnce, Some(n as u16 + 1));
        message.properties.message_expiry_interval = expiry;
        publisher.publish(message).await;
    }
    tokio::time::sleep(Duration::from_secs(10)).await;
    let (mut subscriber, _) = harness.connect(&device, Options::v5("sub").persistent(600)).await;
    let long = subscriber.receive().await;
    assert_eq!((text(&long).as_str(), long.properties.message_expiry_interval), ("long", Some(90)));
    let forever = subscriber.receive().await;
    assert_eq!((text(&forever).as_str(), forever.properties.message_expiry_interval), ("forever", None));
    subscriber.nothing().await;
    assert_eq!(harness.broker.counters().dropped_expired.load(Ordering::Relaxed), 1);

    // A retained message expires too.
    let mut retained = publish("exp/retained", "brief", QoS::AtMostOnce, None);
    retained.retain = true;
    retained.properties.message_expiry_interval = Some(2);
    publisher.publish(retained).await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    subscriber.subscribe_to("exp/#", QoS::AtMostOnce).await;
    subscriber.nothing().await;
}

#[tokio::test(start_paused = true)]
async fn subscription_identifiers_are_echoed() {
    let harness = Harness::new();
    let (mut subscriber, _) = harness.connect(&identity(ACCOUNT_A, 1), Options::v5("sub")).await;
    let with_id =
        |id: u32| Properties { subscription_identifiers: vec![NonZeroU32::new(id).unwrap()], ..Properties::default() };
    subscriber.subscribe_with(1, vec![subscription("s/+", QoS::AtMostOnce)], with_id(7)).await;
    subscriber.subscribe_with(2, vec![subscription("s/#", QoS::AtLeastOnce)], with_id(9)).await;
    subscriber.subscribe_to("s/plain", QoS::AtMostOnce).await;
    let (mut old, _) = harness.connect(&identity(ACCOUNT_A, 2), Options::v311("old")).await;
    old.subscribe_to("s/#", QoS::AtMostOnce).await;

    let (mut publisher, _) = harness.connect(&identity(ACCOUNT_A, 3), Options::v5("pub")).await;
    publisher.publish(publish("s/plain", "x", QoS::AtLeastOnce, Some(1))).await;
    let message = subscriber.receive().await;
    let mut identifiers: Vec<u32> = message.properties.subscription_identifiers.iter().map(|id| id.get()).collect();
    identifiers.sort();
    assert_eq!(identifiers, [7, 9], "one copy, every matching identifier");
    assert_eq!(message.qos, QoS::AtLeastOnce, "the highest granted QoS");
    subscriber.nothing().await;
    assert!(old.receive().await.properties.is_empty());
}

#[tokio::test(start_paused = true)]
async fn shared_subscriptions_take_turns() {
    let harness = Harness::new();
    let mut members = Vec::new();
    for (n, name) in ["worker-a", "worker-b"].into_iter().enumerate() {
        let (mut member, _) = harness.connect(&identity(ACCOUNT_A, n as u32 + 1), Options::v5(name)).await;
        member.subscribe_to("$share/workers/jobs/+", QoS::AtLeastOnce).await;
        members.push(member);
    }
    let (mut watcher, _) = harness.connect(&identity(ACCOUNT_A, 8), Options::v311("watcher")).await;
    watcher.subscribe_to("jobs/#", QoS::AtMostOnce).await;
    let (mut publisher, _) = harness.connect(&identity(ACCOUNT_A, 9), Options::v5("pub")).await;
    for n in 0..4u16 {
        publisher.publish(publish("jobs/x", &n.to_string(), QoS::AtLeastOnce, Some(n + 1))).await;
    }
    let mut a = Vec::new();
    let mut b = Vec::new();
    for _ in 0..2 {
        a.push(text(&members[0].receive().await));
        b.push(text(&members[1].receive().await));
    }
    let mut all: Vec<String> = a.iter().chain(&b).cloned().collect();
    all.sort();
    assert_eq!(all, ["0", "1", "2", "3"], "each message to exactly one member");
    assert_ne!(a[0], a[1]);
    members[0].nothing().await;
    members[1].nothing().await;
    for _ in 0..4 {
        watcher.receive().await;
    }

    // Retained messages are not sent to a shared subscription when it is made.
    let mut retained = publish("jobs/r", "kept", QoS::AtMostOnce, None);
    retained.retain = true;
    publisher.publish(retained).await;
    members[0].receive().await;
    let (mut late, _) = harness.connect(&identity(ACCOUNT_A, 3), Options::v5("worker-c")).await;
    late.subscribe_to("$share/other/jobs/#", QoS::AtMostOnce).await;
    late.nothing().await;
}

#[tokio::test(start_paused = true)]
async fn no_local_retain_handling_and_retain_as_published() {
    let harness = Harness::new();
    let (mut client, _) = harness.connect(&identity(ACCOUNT_A, 1), Options::v5("me")).await;
    let mut own = subscription("echo", QoS::AtMostOnce);
    own.no_local = true;
    client.subscribe(1, vec![own]).await;
    client.publish(publish("echo", "mine", QoS::AtMostOnce, None)).await;
    client.nothing().await;
    let (mut other, _) = harness.connect(&identity(ACCOUNT_A, 2), Options::v5("other")).await;
    other.publish(publish("echo", "theirs", QoS::AtMostOnce, None)).await;
    assert_eq!(text(&client.receive().await), "theirs");

    let mut retained = publish("rh", "kept", QoS::AtMostOnce, None);
    retained.retain = true;
    other.publish(retained.clone()).await;
    let mut never = subscription("rh", QoS::AtMostOnce);
    never.retain_handling = RetainHandling::DoNotSend;
    client.subscribe(2, vec![never]).await;
    client.nothing().await;
    client
        .send(Packet::Unsubscribe(certfleet_mqtt::Unsubscribe {
            packet_id: id(3),
            filters: vec![certfleet_mqtt::TopicFilter::new("rh").unwrap()],
            properties: Properties::default(),
        }))
        .await;
    client.recv().await;
    let mut if_new = subscription("rh", QoS::AtMostOnce);
    if_new.retain_handling = RetainHandling::SendAtSubscribeIfNew;
    client.subscribe(4, vec![if_new.clone()]).await;
    assert_eq!(text(&client.receive().await), "kept");
    if_new.retain_as_published = true;
    client.subscribe(5, vec![if_new]).await;
    client.nothing().await;

    // Live: RETAIN kept only with retain as published.
    other.publish(retained).await;
    assert!(client.receive().await.retain, "retain as published");
}

/// A message larger than the server's own packet limit (one the server publishes itself, as rules
/// and events do) reaches no subscriber: not a 3.1.1 client, which cannot state a limit, nor an
/// MQTT 5 client that states none. Each drop is counted; a small message still gets through.
#[tokio::test(start_paused = true)]
async fn server_messages_over_the_servers_packet_limit_reach_no_subscriber() {
    let harness = Harness::new();
    let (mut old, _) = harness.connect(&identity(ACCOUNT_A, 1), Options::v311("old")).await;
    old.subscribe_to("size", QoS::AtLeastOnce).await;
    let (mut new, _) = harness.connect(&identity(ACCOUNT_A, 2), Options::v5("new")).await;
    new.subscribe_to("size", QoS::AtMostOnce).await;
    let limit = harness.broker.config().max_packet_size;
    let message = |payload: Bytes| certfleet_gateway::fabric::Message {
        topic: TopicName::new("size").unwrap(),
        payload,
        qos: QoS::AtLeastOnce,
        retain: false,
        properties: Properties::default(),
        expires_at: None,
        publisher: None,
    };
    let account = identity(ACCOUNT_A, 1).account;
    let sink: &dyn certfleet_gateway::EventSink = &*harness.broker;
    sink.publish_event(&account, message(Bytes::from(vec![b'x'; limit + 1])));
    sink.publish_event(&account, message(Bytes::from_static(b"small")));
    assert_eq!(text(&old.receive().await), "small");
    assert_eq!(text(&new.receive().await), "small");
    old.nothing().await;
    new.nothing().await;
    assert_eq!(harness.broker.counters().dropped_too_large.load(Ordering::Relaxed), 2);
}

#[tokio::test(start_paused = true)]
async fn messages_over_the_clients_maximum_packet_size_are_dropped_for_it() {
    let harness = Harness::new();
    let mut options = Options::v5("tiny");
    options.properties.maximum_packet_size = NonZeroU32::new(100);
    let (mut subscriber, _) = harness.connect(&identity(ACCOUNT_A, 1), options).await;
    subscriber.subscribe_to("size", QoS::AtLeastOnce).await;
    let (mut publisher, _) = harness.connect(&identity(ACCOUNT_A, 2), Options::v5("pub")).await;
    publisher.publish(publish("size", &"x".repeat(200), QoS::AtLeastOnce, Some(1))).await;
    publisher.publish(publish("size", "small", QoS::AtLeastOnce, Some(2))).await;
    assert_eq!(text(&subscriber.receive().await), "small");
    subscriber.nothing().await;
    assert_eq!(harness.broker.counters().dropped_too_large.load(Ordering::Relaxed), 1);
}

#[tokio::test(start_paused = true)]
async fn message_properties_are_forwarded() {
    let harness = Harness::new();
    let (mut subscriber, _) = harness.connect(&identity(ACCOUNT_A, 1), Options::v5("sub")).await;
    subscriber.subscribe_to("props", QoS::AtMostOnce).await;
    let (mut publisher, _) = harness.connect(&identity(ACCOUNT_A, 2), Options::v5("pub")).await;
    let mut message = publish("props", "{}", QoS::AtMostOnce, None);
    message.properties = Properties {
        payload_format_indicator: Some(certfleet_mqtt::PayloadFormat::Utf8),
        content_type: Some("application/json".into()),
        response_topic: Some(TopicName::new("reply/here").unwrap()),
        correlation_data: Some(Bytes::from_static(b"42")),
        user_properties: vec![("k".into(), "v".into()), ("k".into(), "w".into())],
        ..Properties::default()
    };
    let sent = message.properties.clone();
    publisher.publish(message).await;
    assert_eq!(subscriber.receive().await.properties, sent);
}

/// A message in flight when a persistent session resumes with a smaller Maximum Packet Size is
/// dropped for it (counted), not resent past the client's limit; a small one still is.
#[tokio::test(start_paused = true)]
async fn in_flight_messages_over_a_resumed_sessions_maximum_packet_size_are_dropped() {
    let harness = Harness::new();
    let device = identity(ACCOUNT_A, 1);
    let (mut subscriber, _) = harness.connect(&device, Options::v5("shrinking").persistent(600)).await;
    subscriber.subscribe_to("size", QoS::AtLeastOnce).await;
    let (mut publisher, _) = harness.connect(&identity(ACCOUNT_A, 2), Options::v5("pub")).await;
    publisher.publish(publish("size", &"x".repeat(200), QoS::AtLeastOnce, Some(1))).await;
    publisher.publish(publish("size", "small", QoS::AtLeastOnce, Some(2))).await;
    // Both arrive, neither is acknowledged, and the connection breaks.
    assert_eq!(subscriber.message().await.payload.len(), 200);
    assert_eq!(text(&subscriber.message().await), "small");
    subscriber.drop_connection().await;

    let mut options = Options::v5("shrinking").persistent(600);
    options.properties.maximum_packet_size = NonZeroU32::new(100);
    let (mut subscriber, connack) = harness.connect(&device, options).await;
    assert!(connack.session_present);
    let again = subscriber.receive().await;
    assert!(again.dup);
    assert_eq!(text(&again), "small");
    subscriber.nothing().await;
    assert_eq!(harness.broker.counters().dropped_too_large.load(Ordering::Relaxed), 1);
}
