//! Lifecycle events as AWS IoT publishes them, the connection observer, and several nodes on one
//! fabric.

use std::sync::Arc;

use certfleet_gateway::broker::{AllowAll, BrokerConfig};
use certfleet_gateway::fabric::{LocalFabric, NodeId};
use certfleet_mqtt::{ProtocolVersion, QoS, ReasonCode};
use serde_json::Value;

use crate::harness::*;

#[tokio::test(start_paused = true)]
async fn lifecycle_events_are_published_in_the_account() {
    let harness = Harness::new();
    let (mut watcher, _) = harness.connect(&identity(ACCOUNT_A, 9), Options::v5("watcher")).await;
    watcher.subscribe_to("$aws/events/presence/+/+", QoS::AtLeastOnce).await;
    let device = identity(ACCOUNT_A, 1);

    let (client, _) = harness.connect(&device, Options::v311("thing-1")).await;
    let connected = watcher.receive().await;
    assert_eq!(topic(&connected), "$aws/events/presence/connected/thing-1");
    let event: Value = serde_json::from_slice(&connected.payload).unwrap();
    assert_eq!(event["clientId"], "thing-1");
    assert_eq!(event["eventType"], "connected");
    assert_eq!(event["principalIdentifier"], device.certificate_id.to_string());
    assert_eq!(event["ipAddress"], "192.0.2.7");
    assert_eq!(event["versionNumber"], 1);
    assert!(event["timestamp"].as_i64().unwrap() > 1_600_000_000_000, "milliseconds since the epoch");
    let session = event["sessionIdentifier"].as_str().unwrap().to_owned();
    assert_eq!(session.len(), 36, "a UUID: {session}");
    client.disconnect().await;

    let disconnected = watcher.receive().await;
    assert_eq!(topic(&disconnected), "$aws/events/presence/disconnected/thing-1");
    let event: Value = serde_json::from_slice(&disconnected.payload).unwrap();
    assert_eq!(event["eventType"], "disconnected");
    assert_eq!(event["clientInitiatedDisconnect"], true);
    assert_eq!(event["disconnectReason"], "CLIENT_INITIATED_DISCONNECT");
    assert_eq!(event["sessionIdentifier"], session.as_str(), "the same connection");
    assert_eq!(event["versionNumber"], 1);

    let (client, _) = harness.connect(&device, Options::v5("thing-1")).await;
    let event: Value = serde_json::from_slice(&watcher.receive().await.payload).unwrap();
    assert_eq!(event["versionNumber"], 2, "increasing per client ID");
    assert_ne!(event["sessionIdentifier"], session.as_str());
    client.drop_connection().await;
    let event: Value = serde_json::from_slice(&watcher.receive().await.payload).unwrap();
    assert_eq!(
        (&event["disconnectReason"], &event["clientInitiatedDisconnect"]),
        (&"CONNECTION_LOST".into(), &false.into())
    );

    // Client IDs that cannot be a topic level are refused (AWS accepts them and sends no
    // events): no event either.
    let mut client = harness.open(&device, ProtocolVersion::V5);
    assert_eq!(client.connect(Options::v5("odd+id")).await.reason_code, ReasonCode::CLIENT_IDENTIFIER_NOT_VALID);
    client.closed().await;
    watcher.nothing().await;

    let seen = harness.recorder.seen.lock().unwrap().clone();
    let for_thing: Vec<&str> =
        seen.iter().filter(|(_, client_id)| client_id == "thing-1").map(|(what, _)| what.as_str()).collect();
    assert_eq!(for_thing, ["connected", "CLIENT_INITIATED_DISCONNECT", "connected", "CONNECTION_LOST"]);
}

#[tokio::test(start_paused = true)]
async fn nodes_on_one_fabric_share_topics_and_client_ids() {
    let fabric = LocalFabric::new();
    let node = |name: &str| {
        let config = BrokerConfig { node: NodeId::parse(name).unwrap(), ..BrokerConfig::default() };
        Harness::on_fabric(config, Arc::new(AllowAll), fabric.clone())
    };
    let (one, two) = (node("one"), node("two"));

    let (mut subscriber, _) = one.connect(&identity(ACCOUNT_A, 1), Options::v5("sub")).await;
    subscriber.subscribe_to("across/#", QoS::AtLeastOnce).await;
    let (mut publisher, _) = two.connect(&identity(ACCOUNT_A, 2), Options::v311("pub")).await;
    publisher.publish(publish("across/nodes", "hello", QoS::AtLeastOnce, Some(1))).await;
    assert_eq!(text(&subscriber.receive().await), "hello");

    // Retained messages are kept on every node.
    let mut retained = publish("across/kept", "r", QoS::AtMostOnce, None);
    retained.retain = true;
    publisher.publish(retained).await;
    subscriber.receive().await;
    assert_eq!(one.broker.retained_count(&identity(ACCOUNT_A, 1).account), 1);
    assert_eq!(two.broker.retained_count(&identity(ACCOUNT_A, 1).account), 1);

    // The same client ID on the other node takes over.
    let (_again, _) = two.connect(&identity(ACCOUNT_A, 1), Options::v5("sub")).await;
    assert_eq!(subscriber.disconnected().await, Some(ReasonCode::SESSION_TAKEN_OVER));
}
