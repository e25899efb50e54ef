//! Limits and garbage: receive maximum, message and packet sizes, invalid topics, slow readers,
//! subscription quota. One misbehaving connection never disturbs another.

use std::num::NonZeroU16;
use std::sync::atomic::Ordering;

use certfleet_gateway::broker::BrokerConfig;
use certfleet_mqtt::{Packet, PubRec, QoS, ReasonCode};

use crate::harness::*;

#[tokio::test(start_paused = true)]
async fn exceeding_the_servers_receive_maximum() {
    let harness = Harness::with_config(BrokerConfig { receive_maximum: 2, ..BrokerConfig::default() });
    let (mut client, connack) = harness.connect(&identity(ACCOUNT_A, 1), Options::v5("eager")).await;
    assert_eq!(connack.properties.receive_maximum, NonZeroU16::new(2));
    for n in 1..=2 {
        client.send(Packet::Publish(publish("q2", "x", QoS::ExactlyOnce, Some(n)))).await;
        assert_eq!(client.recv().await, Packet::PubRec(PubRec::new(id(n))));
    }
    client.send(Packet::Publish(publish("q2", "x", QoS::ExactlyOnce, Some(3)))).await;
    assert_eq!(client.disconnected().await, Some(ReasonCode::RECEIVE_MAXIMUM_EXCEEDED));
}

#[tokio::test(start_paused = true)]
async fn messages_over_the_size_limit() {
    let harness = Harness::new();
    let (mut watcher, _) = harness.connect(&identity(ACCOUNT_A, 9), Options::v5("watcher")).await;
    watcher.subscribe_to("big", QoS::AtMostOnce).await;
    let limit = 128 * 1024;

    let (mut client, _) = harness.connect(&identity(ACCOUNT_A, 1), Options::v5("big5")).await;
    client.publish(publish("big", &"x".repeat(limit), QoS::AtMostOnce, None)).await;
    assert_eq!(watcher.receive().await.payload.len(), limit, "exactly the limit passes");
    client.send(Packet::Publish(publish("big", &"x".repeat(limit + 1), QoS::AtLeastOnce, Some(1)))).await;
    assert_eq!(client.disconnected().await, Some(ReasonCode::PACKET_TOO_LARGE));

    let (mut client, _) = harness.connect(&identity(ACCOUNT_A, 1), Options::v311("big311")).await;
    client.send(Packet::Publish(publish("big", &"x".repeat(limit + 1), QoS::AtMostOnce, None))).await;
    assert!(client.closed().await.is_empty());
    let _ = client.task.await;
    watcher.nothing().await;
    let seen = harness.recorder.seen.lock().unwrap().clone();
    assert!(seen.contains(&("CLIENT_ERROR".into(), "big311".into())), "{seen:?}");
}

#[tokio::test(start_paused = true)]
async fn packets_over_the_maximum_are_refused_from_their_header() {
    let harness = Harness::new();
    let (mut client, _) = harness.connect(&identity(ACCOUNT_A, 1), Options::v5("huge")).await;
    // A PUBLISH declaring 200 KiB: refused before its body is sent.
    client.send_raw(&[0x30, 0x80, 0xC0, 0x0C]).await;
    assert_eq!(client.disconnected().await, Some(ReasonCode::PACKET_TOO_LARGE));
}

#[tokio::test(start_paused = true)]
async fn wildcards_in_a_publish_topic() {
    let harness = Harness::new();
    // PUBLISH QoS 0 to "a/+" (MQTT 5: with an empty property block).
    let (mut client, _) = harness.connect(&identity(ACCOUNT_A, 1), Options::v5("wild5")).await;
    client.send_raw(&[0x30, 6, 0, 3, b'a', b'/', b'+', 0]).await;
    assert_eq!(client.disconnected().await, Some(ReasonCode::TOPIC_NAME_INVALID));
    let (mut client, _) = harness.connect(&identity(ACCOUNT_A, 1), Options::v311("wild311")).await;
    client.send_raw(&[0x30, 5, 0, 3, b'a', b'/', b'#']).await;
    assert!(client.closed().await.is_empty());
}

#[tokio::test(start_paused = true)]
async fn garbage_closes_only_its_own_connection() {
    let harness = Harness::new();
    let (mut bystander, _) = harness.connect(&identity(ACCOUNT_A, 9), Options::v5("bystander")).await;
    bystander.subscribe_to("ok", QoS::AtMostOnce).await;
    let garbage: [&[u8]; 5] = [
        &[0x00, 0x00],
        &[0x30, 0xFF, 0xFF, 0xFF, 0xFF, 0x01],
        &[0x82, 0x02, 0x00, 0x01],
        &[0x62, 0x02, 0x00, 0x00],
        &[0x20, 0x02, 0x00, 0x00],
    ];
    for bytes in garbage {
        let (mut client, _) = harness.connect(&identity(ACCOUNT_A, 1), Options::v5("garbage")).await;
        client.send_raw(bytes).await;
        let reason = client.disconnected().await.expect("a reason code");
        assert!(reason.is_error(), "{bytes:?}: {reason:?}");
    }
    let (mut publisher, _) = harness.connect(&identity(ACCOUNT_A, 2), Options::v5("pub")).await;
    publisher.publish(publish("ok", "still fine", QoS::AtMostOnce, None)).await;
    assert_eq!(text(&bystander.receive().await), "still fine");
}

#[tokio::test(start_paused = true)]
async fn a_slow_reader_loses_qos_0_messages_not_the_publisher() {
    let harness = Harness::with_config(BrokerConfig { outbound_capacity: 5, ..BrokerConfig::default() });
    let (mut slow, _) = harness.connect(&identity(ACCOUNT_A, 1), Options::v5("slow")).await;
    slow.subscribe_to("firehose", QoS::AtMostOnce).await;
    let (mut publisher, _) = harness.connect(&identity(ACCOUNT_A, 2), Options::v5("pub")).await;
    let payload = "x".repeat(1024);
    for _ in 0..1000 {
        publisher.publish(publish("firehose", &payload, QoS::AtMostOnce, None)).await;
    }
    publisher.send(Packet::PingReq).await;
    assert_eq!(publisher.recv().await, Packet::PingResp, "the publisher is served all along");
    let dropped = harness.broker.counters().dropped_slow_qos0.load(Ordering::Relaxed);
    assert!(dropped > 500, "dropped {dropped}");
    let mut received = 0;
    while slow.next(std::time::Duration::from_secs(1)).await.is_some() {
        received += 1;
    }
    assert_eq!(received + dropped, 1000, "every message either delivered or counted");
}

/// Publishers that outpace a subscriber which does read are slowed down (flow control through the
/// broker) rather than having their messages dropped: QoS 0 1-to-1 and QoS 1 fan-in, with queues
/// far smaller than the bursts.
#[tokio::test(start_paused = true)]
async fn publishers_wait_for_a_reader_slower_than_them_instead_of_losing_messages() {
    let harness =
        Harness::with_config(BrokerConfig { outbound_capacity: 8, max_queued_messages: 8, ..BrokerConfig::default() });
    for qos in [QoS::AtMostOnce, QoS::AtLeastOnce] {
        let topic = format!("burst/{qos:?}");
        let (mut reader, _) = harness.connect(&identity(ACCOUNT_A, 1), Options::v5("reader")).await;
        reader.subscribe_to(&format!("{topic}/#"), qos).await;
        let publishers = if qos == QoS::AtMostOnce { 1 } else { 4 };
        let per_publisher = 500;
        let mut tasks = Vec::new();
        for n in 0..publishers {
            let (mut publisher, _) =
                harness.connect(&identity(ACCOUNT_A, 2 + n), Options::v5(&format!("pub{n}"))).await;
            let topic = format!("{topic}/{n}");
            tasks.push(tokio::spawn(async move {
                // The whole burst in one write, so the server reads far more than a queue holds.
                let mut bytes = bytes::BytesMut::new();
                for m in 0..per_publisher {
                    let packet_id = (qos != QoS::AtMostOnce).then_some(m + 1);
                    let packet = Packet::Publish(publish(&topic, &m.to_string(), qos, packet_id));
                    certfleet_mqtt::encode(&packet, publisher.version, &mut bytes).unwrap();
                }
                publisher.send_raw(&bytes).await;
                if qos != QoS::AtMostOnce {
                    for _ in 0..per_publisher {
                        assert!(matches!(publisher.recv().await, Packet::PubAck(_)));
                    }
                }
                publisher
            }));
        }
        let expected = publishers as usize * per_publisher as usize;
        let mut received = 0;
        while received < expected {
            reader.receive().await;
            received += 1;
            if received % 50 == 0 {
                tokio::time::sleep(std::time::Duration::from_millis(1)).await;
            }
        }
        reader.nothing().await;
        for task in tasks {
            task.await.unwrap();
        }
        let counters = harness.broker.counters();
        assert_eq!(counters.dropped_slow_qos0.load(Ordering::Relaxed), 0, "{qos:?}");
        assert_eq!(counters.dropped_queue_full.load(Ordering::Relaxed), 0, "{qos:?}");
    }
}

#[tokio::test(start_paused = true)]
async fn the_subscription_quota() {
    let harness = Harness::with_config(BrokerConfig { max_subscriptions: 2, ..BrokerConfig::default() });
    let filters = || {
        vec![
            subscription("a", QoS::AtMostOnce),
            subscription("b", QoS::AtLeastOnce),
            subscription("c", QoS::AtMostOnce),
        ]
    };
    let (mut client, _) = harness.connect(&identity(ACCOUNT_A, 1), Options::v5("many")).await;
    let suback = client.subscribe(1, filters()).await;
    assert_eq!(suback.reason_codes, [ReasonCode::GRANTED_QOS_0, ReasonCode::GRANTED_QOS_1, ReasonCode::QUOTA_EXCEEDED]);
    let suback = client.subscribe(2, vec![subscription("a", QoS::AtLeastOnce)]).await;
    assert_eq!(suback.reason_codes, [ReasonCode::GRANTED_QOS_1], "replacing is not adding");
    let (mut client, _) = harness.connect(&identity(ACCOUNT_A, 1), Options::v311("many311")).await;
    let suback = client.subscribe(1, filters()).await;
    assert_eq!(
        suback.reason_codes,
        [ReasonCode::GRANTED_QOS_0, ReasonCode::GRANTED_QOS_1, ReasonCode::UNSPECIFIED_ERROR]
    );
}
