//! Routing: QoS 0, 1 and 2 both ways, retained messages, wildcards, unsubscribe, outbound flow
//! control.

use std::num::NonZeroU16;

use certfleet_mqtt::{Packet, Properties, PubAck, PubComp, PubRec, PubRel, QoS, ReasonCode, TopicFilter, Unsubscribe};

use crate::harness::*;

#[tokio::test(start_paused = true)]
async fn qos_0_1_2_round_trips_across_versions() {
    let harness = Harness::new();
    let (mut subscriber, _) = harness.connect(&identity(ACCOUNT_A, 1), Options::v311("sub")).await;
    subscriber.subscribe_to("t/#", QoS::ExactlyOnce).await;
    let (mut publisher, _) = harness.connect(&identity(ACCOUNT_A, 2), Options::v5("pub")).await;

    publisher.publish(publish("t/0", "zero", QoS::AtMostOnce, None)).await;
    let received = subscriber.receive().await;
    assert_eq!((received.qos, received.packet_id, text(&received).as_str()), (QoS::AtMostOnce, None, "zero"));

    publisher.publish(publish("t/1", "one", QoS::AtLeastOnce, Some(10))).await;
    let received = subscriber.receive().await;
    assert_eq!((received.qos, text(&received).as_str(), received.dup), (QoS::AtLeastOnce, "one", false));
    assert!(received.packet_id.is_some(), "the server numbers its own packets");

    publisher.publish(publish("t/2", "two", QoS::ExactlyOnce, Some(11))).await;
    let received = subscriber.receive().await;
    assert_eq!((received.qos, text(&received).as_str()), (QoS::ExactlyOnce, "two"));
    assert_eq!(topic(&received), "t/2");
    subscriber.nothing().await;
    publisher.disconnect().await;
    subscriber.disconnect().await;
}

#[tokio::test(start_paused = true)]
async fn delivery_qos_is_the_lower_of_message_and_subscription() {
    let harness = Harness::new();
    let (mut subscriber, _) = harness.connect(&identity(ACCOUNT_A, 1), Options::v5("sub")).await;
    subscriber.subscribe_to("low", QoS::AtMostOnce).await;
    subscriber.subscribe_to("mid", QoS::AtLeastOnce).await;
    let (mut publisher, _) = harness.connect(&identity(ACCOUNT_A, 2), Options::v5("pub")).await;
    publisher.publish(publish("low", "a", QoS::ExactlyOnce, Some(1))).await;
    assert_eq!(subscriber.receive().await.qos, QoS::AtMostOnce);
    publisher.publish(publish("mid", "b", QoS::ExactlyOnce, Some(2))).await;
    assert_eq!(subscriber.receive().await.qos, QoS::AtLeastOnce);
    publisher.publish(publish("mid", "c", QoS::AtMostOnce, None)).await;
    assert_eq!(subscriber.receive().await.qos, QoS::AtMostOnce);
}

#[tokio::test(start_paused = true)]
async fn a_repeated_qos_2_publish_is_delivered_once() {
    let harness = Harness::new();
    let (mut subscriber, _) = harness.connect(&identity(ACCOUNT_A, 1), Options::v5("sub")).await;
    subscriber.subscribe_to("once", QoS::ExactlyOnce).await;
    let (mut publisher, _) = harness.connect(&identity(ACCOUNT_A, 2), Options::v311("pub")).await;

    publisher.send(Packet::Publish(publish("once", "x", QoS::ExactlyOnce, Some(7)))).await;
    assert_eq!(publisher.recv().await, Packet::PubRec(PubRec::new(id(7))));
    let mut again = publish("once", "x", QoS::ExactlyOnce, Some(7));
    again.dup = true;
    publisher.send(Packet::Publish(again)).await;
    assert_eq!(publisher.recv().await, Packet::PubRec(PubRec::new(id(7))), "acknowledged again");
    publisher.send(Packet::PubRel(PubRel::new(id(7)))).await;
    assert_eq!(publisher.recv().await, Packet::PubComp(PubComp::new(id(7))));
    // A PUBREL for an identifier not in flight still completes (3.1.1 cannot refuse).
    publisher.send(Packet::PubRel(PubRel::new(id(8)))).await;
    assert_eq!(publisher.recv().await, Packet::PubComp(PubComp::new(id(8))));

    assert_eq!(text(&subscriber.receive().await), "x");
    subscriber.nothing().await;
}

#[tokio::test(start_paused = true)]
async fn the_server_side_of_qos_2_and_unknown_acknowledgements() {
    let harness = Harness::new();
    let (mut subscriber, _) = harness.connect(&identity(ACCOUNT_A, 1), Options::v5("sub")).await;
    subscriber.subscribe_to("q2", QoS::ExactlyOnce).await;
    let (mut publisher, _) = harness.connect(&identity(ACCOUNT_A, 2), Options::v5("pub")).await;
    publisher.publish(publish("q2", "x", QoS::ExactlyOnce, Some(1))).await;
    let received = subscriber.message().await;
    let packet_id = received.packet_id.unwrap();
    subscriber.send(Packet::PubRec(PubRec::new(packet_id))).await;
    assert_eq!(subscriber.recv().await, Packet::PubRel(PubRel::new(packet_id)));
    subscriber.send(Packet::PubComp(PubComp::new(packet_id))).await;
    // A PUBREC for nothing sent: MQTT 5 answers PUBREL "packet identifier not found".
    subscriber.send(Packet::PubRec(PubRec::new(id(999)))).await;
    match subscriber.recv().await {
        Packet::PubRel(release) => assert_eq!(release.reason_code, ReasonCode::PACKET_IDENTIFIER_NOT_FOUND),
        other => panic!("{other:?}"),
    }
    // A stray PUBACK and PUBCOMP are ignored.
    subscriber.send(Packet::PubAck(PubAck::new(id(998)))).await;
    subscriber.send(Packet::PubComp(PubComp::new(id(997)))).await;
    subscriber.nothing().await;
}

#[tokio::test(start_paused = true)]
async fn retained_messages_are_kept_replaced_deleted_and_sent_on_subscribe() {
    let harness = Harness::new();
    let device = identity(ACCOUNT_A, 1);
    let (mut publisher, _) = harness.connect(&device, Options::v311("pub")).await;
    let retained = |topic: &str, payload: &str| {
        let mut message = publish(topic, payload, QoS::AtLeastOnce, Some(1));
        message.retain = true;
        message
    };
    publisher.publish(retained("r/1", "one")).await;
    publisher.publish(retained("r/2", "two")).await;
    publisher.publish(retained("r/2", "two again")).await;
    publisher.publish(retained("other", "x")).await;
    assert_eq!(harness.broker.retained_count(&device.account), 3);

    let (mut subscriber, _) = harness.connect(&identity(ACCOUNT_A, 2), Options::v311("sub")).await;
    subscriber.subscribe_to("r/+", QoS::AtLeastOnce).await;
    let mut got = [subscriber.receive().await, subscriber.receive().await];
    got.sort_by_key(text);
    assert!(got.iter().all(|message| message.retain), "sent on subscribe: retain set");
    assert_eq!(got.iter().map(text).collect::<Vec<_>>(), ["one", "two again"]);
    subscriber.nothing().await;

    // Live delivery to an existing subscription clears RETAIN; an empty payload deletes.
    publisher.publish(retained("r/1", "")).await;
    let live = subscriber.receive().await;
    assert!(!live.retain && live.payload.is_empty());
    assert_eq!(harness.broker.retained_count(&device.account), 2);

    let (mut late, _) = harness.connect(&identity(ACCOUNT_A, 3), Options::v311("late")).await;
    late.subscribe_to("r/#", QoS::AtMostOnce).await;
    let message = late.receive().await;
    assert_eq!((text(&message).as_str(), message.qos, message.retain), ("two again", QoS::AtMostOnce, true));
    late.nothing().await;
}

#[tokio::test(start_paused = true)]
async fn wildcards_do_not_reach_dollar_topics() {
    let harness = Harness::new();
    let (mut everything, _) = harness.connect(&identity(ACCOUNT_A, 1), Options::v311("all")).await;
    everything.subscribe_to("#", QoS::AtMostOnce).await;
    everything.subscribe_to("+/status", QoS::AtMostOnce).await;
    let (mut system, _) = harness.connect(&identity(ACCOUNT_A, 2), Options::v311("sys")).await;
    system.subscribe_to("$SYS/#", QoS::AtMostOnce).await;

    let (mut publisher, _) = harness.connect(&identity(ACCOUNT_A, 3), Options::v311("pub")).await;
    publisher.publish(publish("$SYS/status", "s", QoS::AtMostOnce, None)).await;
    publisher.publish(publish("dev/status", "d", QoS::AtMostOnce, None)).await;
    assert_eq!(text(&system.receive().await), "s");
    let message = everything.receive().await;
    assert_eq!(text(&message), "d", "one copy, though two subscriptions match");
    everything.nothing().await;
    system.nothing().await;
}

#[tokio::test(start_paused = true)]
async fn unsubscribe_stops_delivery() {
    let harness = Harness::new();
    let (mut subscriber, _) = harness.connect(&identity(ACCOUNT_A, 1), Options::v5("sub")).await;
    subscriber.subscribe_to("a/+", QoS::AtMostOnce).await;
    let filters = vec![TopicFilter::new("a/+").unwrap(), TopicFilter::new("never").unwrap()];
    subscriber
        .send(Packet::Unsubscribe(Unsubscribe { packet_id: id(5), filters, properties: Properties::default() }))
        .await;
    match subscriber.recv().await {
        Packet::UnsubAck(unsuback) => {
            assert_eq!(unsuback.reason_codes, [ReasonCode::SUCCESS, ReasonCode::NO_SUBSCRIPTION_EXISTED]);
        }
        other => panic!("{other:?}"),
    }
    let (mut publisher, _) = harness.connect(&identity(ACCOUNT_A, 2), Options::v5("pub")).await;
    publisher.publish(publish("a/b", "x", QoS::AtLeastOnce, Some(1))).await;
    subscriber.nothing().await;
}

#[tokio::test(start_paused = true)]
async fn unacknowledged_messages_are_bounded_by_the_receive_maximum() {
    let harness = Harness::new();
    let mut options = Options::v5("slow");
    options.properties.receive_maximum = NonZeroU16::new(2);
    let (mut subscriber, _) = harness.connect(&identity(ACCOUNT_A, 1), options).await;
    subscriber.subscribe_to("flow", QoS::AtLeastOnce).await;
    let (mut publisher, _) = harness.connect(&identity(ACCOUNT_A, 2), Options::v5("pub")).await;
    for n in 0..5u16 {
        publisher.publish(publish("flow", &n.to_string(), QoS::AtLeastOnce, Some(n + 1))).await;
    }
    let first = subscriber.message().await;
    let second = subscriber.message().await;
    subscriber.nothing().await;
    assert_eq!((text(&first).as_str(), text(&second).as_str()), ("0", "1"));
    subscriber.send(Packet::PubAck(PubAck::new(first.packet_id.unwrap()))).await;
    assert_eq!(text(&subscriber.message().await), "2");
    subscriber.nothing().await;
    subscriber.send(Packet::PubAck(PubAck::new(second.packet_id.unwrap()))).await;
    assert_eq!(text(&subscriber.receive().await), "3");
}
