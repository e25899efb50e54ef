//! Refused devices, live revocation, certificate expiry, the authorizer's hooks and account
//! isolation.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use certfleet_gateway::broker::BrokerConfig;
use certfleet_gateway::identity::Refusal;
use certfleet_mqtt::{Packet, ProtocolVersion, PubAck, PubRec, QoS, ReasonCode};
use time::OffsetDateTime;

use crate::harness::*;

#[tokio::test(start_paused = true)]
async fn refused_devices_get_not_authorized_and_nothing_more() {
    let harness = Harness::new();
    for version in [ProtocolVersion::V311, ProtocolVersion::V5] {
        let mut client = harness.open_refused(Refusal::Revoked, version);
        let options = if version == ProtocolVersion::V5 { Options::v5("refused") } else { Options::v311("refused") };
        let connack = client.connect(options).await;
        assert_eq!(connack.reason_code, ReasonCode::NOT_AUTHORIZED);
        assert!(connack.properties.is_empty(), "no reason string, no detail");
        assert!(client.closed().await.is_empty());
    }
    // Anything but CONNECT, even a malformed CONNECT, is just closed.
    let mut client = harness.open_refused(Refusal::Unregistered, ProtocolVersion::V5);
    client.send_raw(&[0x10, 14, 0, 4, b'M', b'Q', b'T', b'T', 5, 0x03, 0, 60, 0, 0, 1, b'a']).await;
    assert!(client.closed().await.is_empty());
    let mut client = harness.open_refused(Refusal::Unregistered, ProtocolVersion::V311);
    client.send(Packet::PingReq).await;
    assert!(client.closed().await.is_empty());
    let mut client = harness.open_refused(Refusal::Unregistered, ProtocolVersion::V311);
    assert!(client.closed().await.is_empty(), "nothing sent: closed at the connect timeout");
    assert!(harness.recorder.seen.lock().unwrap().is_empty(), "refused devices never connect");
}

#[tokio::test(start_paused = true)]
async fn revocation_closes_live_sessions_at_once() {
    let harness = Harness::new();
    let (mut watcher, _) = harness.connect(&identity(ACCOUNT_A, 9), Options::v5("watcher")).await;
    watcher.subscribe_to("$aws/events/presence/disconnected/+", QoS::AtMostOnce).await;
    let device = identity(ACCOUNT_A, 1);
    let (mut v5, _) = harness.connect(&device, Options::v5("revoked5")).await;
    let (mut v311, _) = harness.connect(&device, Options::v311("revoked311")).await;
    let (mut other, _) = harness.connect(&identity(ACCOUNT_A, 2), Options::v5("innocent")).await;

    assert_eq!(harness.live.close_identity(&device, Refusal::Revoked), 2);
    let started = tokio::time::Instant::now();
    assert_eq!(v5.disconnected().await, Some(ReasonCode::ADMINISTRATIVE_ACTION));
    assert!(v311.closed().await.is_empty());
    assert_eq!(started.elapsed(), Duration::ZERO, "at once");
    for _ in 0..2 {
        let event: serde_json::Value = serde_json::from_slice(&watcher.receive().await.payload).unwrap();
        assert_eq!(event["disconnectReason"], "AUTH_ERROR");
    }
    other.send(Packet::PingReq).await;
    assert_eq!(other.recv().await, Packet::PingResp, "other identities stay");
    assert_eq!(harness.live.count(), 2, "watcher and innocent");

    // Revoked between the handshake and CONNECT: refused at CONNECT.
    let mut late = harness.open(&device, ProtocolVersion::V5);
    harness.live.close_identity(&device, Refusal::Revoked);
    let connack = late.connect(Options::v5("late")).await;
    assert_eq!(connack.reason_code, ReasonCode::NOT_AUTHORIZED);
}

#[tokio::test(start_paused = true)]
async fn the_session_ends_when_the_certificate_expires() {
    let harness = Harness::new();
    let expiring = identity_until(ACCOUNT_A, 1, OffsetDateTime::now_utc() + time::Duration::seconds(20));
    let (mut client, _) = harness.connect(&expiring, Options::v5("mortal")).await;
    let started = tokio::time::Instant::now();
    assert_eq!(client.disconnected().await, Some(ReasonCode::ADMINISTRATIVE_ACTION));
    let lived = started.elapsed().as_secs();
    assert!((19..=20).contains(&lived), "{lived}");
}

#[tokio::test(start_paused = true)]
async fn the_authorizer_decides_at_connect_publish_subscribe_and_delivery() {
    let harness = Harness::with(BrokerConfig::default(), Arc::new(DenyPrefix));
    let device = identity(ACCOUNT_A, 1);

    let mut client = harness.open(&device, ProtocolVersion::V5);
    assert_eq!(client.connect(Options::v5("deny-me")).await.reason_code, ReasonCode::NOT_AUTHORIZED);
    let mut client = harness.open(&device, ProtocolVersion::V311);
    let connack = client.connect(Options::v311("willing").will("deny/will", "x")).await;
    assert_eq!(connack.reason_code, ReasonCode::NOT_AUTHORIZED, "the will topic is checked at connect");

    let (mut client, _) = harness.connect(&device, Options::v5("ok")).await;
    let suback =
        client.subscribe(1, vec![subscription("deny/x", QoS::AtMostOnce), subscription("fine", QoS::AtMostOnce)]).await;
    assert_eq!(suback.reason_codes, [ReasonCode::NOT_AUTHORIZED, ReasonCode::GRANTED_QOS_0]);
    client.send(Packet::Publish(publish("deny/x", "no", QoS::AtLeastOnce, Some(1)))).await;
    match client.recv().await {
        Packet::PubAck(PubAck { reason_code, .. }) => assert_eq!(reason_code, ReasonCode::NOT_AUTHORIZED),
        other => panic!("{other:?}"),
    }
    client.send(Packet::Publish(publish("deny/x", "no", QoS::ExactlyOnce, Some(2)))).await;
    match client.recv().await {
        Packet::PubRec(PubRec { reason_code, .. }) => assert_eq!(reason_code, ReasonCode::NOT_AUTHORIZED),
        other => panic!("{other:?}"),
    }
    client.publish(publish("deny/x", "qos 0 is dropped silently", QoS::AtMostOnce, None)).await;
    client.send(Packet::Publish(publish("$aws/events/presence/connected/fake", "{}", QoS::AtLeastOnce, Some(3)))).await;
    match client.recv().await {
        Packet::PubAck(PubAck { reason_code, .. }) => assert_eq!(reason_code, ReasonCode::NOT_AUTHORIZED, "reserved"),
        other => panic!("{other:?}"),
    }

    let (mut old, _) = harness.connect(&device, Options::v311("old")).await;
    let suback = old.subscribe(1, vec![subscription("deny/x", QoS::AtMostOnce)]).await;
    assert_eq!(suback.reason_codes, [ReasonCode::UNSPECIFIED_ERROR], "3.1.1 failure");
    old.send(Packet::Publish(publish("deny/x", "no", QoS::AtLeastOnce, Some(1)))).await;
    assert!(old.closed().await.is_empty(), "3.1.1: disconnected, as AWS does");

    // Delivery: the nosy subscriber is skipped, the other gets it.
    let (mut nosy, _) = harness.connect(&device, Options::v5("nosy")).await;
    nosy.subscribe_to("secret/#", QoS::AtMostOnce).await;
    let (mut trusted, _) = harness.connect(&device, Options::v5("trusted")).await;
    trusted.subscribe_to("secret/#", QoS::AtMostOnce).await;
    client.publish(publish("secret/plan", "x", QoS::AtMostOnce, None)).await;
    assert_eq!(text(&trusted.receive().await), "x");
    nosy.nothing().await;
    assert_eq!(harness.broker.counters().dropped_not_authorized.load(Ordering::Relaxed), 1);
}

#[tokio::test(start_paused = true)]
async fn accounts_are_isolated() {
    let harness = Harness::new();
    let in_a = identity(ACCOUNT_A, 1);
    let in_b = identity(ACCOUNT_B, 2);
    let (mut publisher_a, _) = harness.connect(&in_a, Options::v311("same-id")).await;
    let mut retained = publish("shared/topic", "a's secret", QoS::AtMostOnce, None);
    retained.retain = true;
    publisher_a.publish(retained).await;

    // The same client ID in another account is no takeover.
    let (mut subscriber_b, _) = harness.connect(&in_b, Options::v311("same-id")).await;
    subscriber_b.subscribe_to("#", QoS::AtMostOnce).await;
    subscriber_b.subscribe_to("$aws/events/#", QoS::AtMostOnce).await;
    subscriber_b.nothing().await;
    publisher_a.publish(publish("shared/topic", "a again", QoS::AtMostOnce, None)).await;
    publisher_a.send(Packet::PingReq).await;
    assert_eq!(publisher_a.recv().await, Packet::PingResp, "not taken over");
    let (other_a, _) = harness.connect(&in_a, Options::v5("another")).await;
    other_a.disconnect().await;
    subscriber_b.nothing().await;
    assert_eq!(harness.broker.retained_count(&in_b.account), 0);
    assert_eq!(harness.broker.retained_count(&in_a.account), 1);
}

/// The finding of issue 12: under the common `clients/${iot:ClientId}/...` policy, an attacker
/// holding a valid certificate picks a client ID that names the victim's topics (`victim/x`) or
/// all of them (`+`). The `+` is refused at CONNECT; `victim/x` connects (AWS allows `/`) but
/// can neither subscribe to nor publish into `clients/victim/...`, and the victim gets nothing.
#[tokio::test(start_paused = true)]
async fn a_client_id_cannot_reach_into_another_clients_topics() {
    let policy = PolicyOnly::new(
        r#"{"Effect":"Allow","Action":"iot:Connect","Resource":"~client/${iot:ClientId}"},
           {"Effect":"Allow","Action":["iot:Publish","iot:Receive","iot:RetainPublish"],"Resource":"~topic/clients/${iot:ClientId}/*"},
           {"Effect":"Allow","Action":"iot:Subscribe","Resource":"~topicfilter/clients/${iot:ClientId}/#"}"#,
    );
    let harness = Harness::with(BrokerConfig::default(), Arc::new(policy));
    let (mut victim, _) = harness.connect(&identity(ACCOUNT_A, 1), Options::v5("victim")).await;
    victim.subscribe_to("clients/victim/#", QoS::AtLeastOnce).await;
    let attacker = identity(ACCOUNT_A, 2);

    for (version, options) in [(ProtocolVersion::V311, Options::v311("+")), (ProtocolVersion::V5, Options::v5("+"))] {
        let mut wildcard = harness.open(&attacker, version);
        assert_eq!(wildcard.connect(options).await.reason_code, ReasonCode::CLIENT_IDENTIFIER_NOT_VALID);
    }

    let (mut intruder, _) = harness.connect(&attacker, Options::v5("victim/x")).await;
    let suback = intruder
        .subscribe(
            1,
            vec![
                subscription("clients/victim/x/#", QoS::AtLeastOnce),
                subscription("clients/victim/#", QoS::AtLeastOnce),
                subscription("clients/+/#", QoS::AtLeastOnce),
            ],
        )
        .await;
    assert_eq!(suback.reason_codes, [ReasonCode::NOT_AUTHORIZED; 3]);
    for (packet_id, topic) in [(1, "clients/victim/x/cmd"), (2, "clients/victim/cmd")] {
        intruder.send(Packet::Publish(publish(topic, "forged", QoS::AtLeastOnce, Some(packet_id)))).await;
        match intruder.recv().await {
            Packet::PubAck(PubAck { reason_code, .. }) => {
                assert_eq!(reason_code, ReasonCode::NOT_AUTHORIZED, "{topic}")
            }
            other => panic!("{other:?}"),
        }
    }
    let mut retained = publish("clients/victim/x/state", "forged", QoS::AtMostOnce, None);
    retained.retain = true;
    intruder.publish(retained).await;
    victim.nothing().await;
    assert_eq!(harness.broker.retained_count(&attacker.account), 0, "nothing retained for the victim to find");

    // The victim's own traffic still flows, and never to the intruder.
    let (mut peer, _) = harness.connect(&identity(ACCOUNT_A, 3), Options::v5("victim-peer")).await;
    peer.send(Packet::Publish(publish("clients/victim/cmd", "x", QoS::AtLeastOnce, Some(1)))).await;
    match peer.recv().await {
        Packet::PubAck(PubAck { reason_code, .. }) => assert_eq!(reason_code, ReasonCode::NOT_AUTHORIZED),
        other => panic!("{other:?}"),
    }
    let (mut victim_publisher, _) = harness.connect(&identity(ACCOUNT_A, 1), Options::v5("victim")).await;
    assert_eq!(victim.disconnected().await, Some(ReasonCode::SESSION_TAKEN_OVER));
    victim_publisher.subscribe_to("clients/victim/#", QoS::AtLeastOnce).await;
    victim_publisher.publish(publish("clients/victim/x/state", "mine", QoS::AtLeastOnce, Some(1))).await;
    assert_eq!(text(&victim_publisher.receive().await), "mine");
    intruder.nothing().await;
}
