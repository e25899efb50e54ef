//! AWS IoT's lifecycle events of a session (`$aws/events/presence/connected/<clientId>` and
//! `.../disconnected/...`), published through the broker into the account's topic space.

use std::net::SocketAddr;
use std::sync::Arc;

use certfleet_mqtt::TopicName;
use time::OffsetDateTime;

use crate::broker::Broker;
use crate::events::{DisconnectReason, json_message, millis};
use crate::model::Identity;

/// What both lifecycle events of one connection say.
pub(crate) struct Lifecycle<'a> {
    pub(crate) client_id: &'a str,
    pub(crate) identity: &'a Identity,
    pub(crate) session_identifier: &'a str,
    pub(crate) peer: SocketAddr,
    pub(crate) version_number: u64,
}

/// Publishes the `connected` event (see [`publish_presence`]).
pub(crate) fn publish_connected(broker: &Broker, lifecycle: &Lifecycle<'_>, at: OffsetDateTime) {
    publish_presence(broker, lifecycle, "connected", || {
        serde_json::json!({
            "clientId": lifecycle.client_id,
            "timestamp": millis(at),
            "eventType": "connected",
            "sessionIdentifier": lifecycle.session_identifier,
            "principalIdentifier": lifecycle.identity.certificate_id.to_string(),
            "ipAddress": lifecycle.peer.ip().to_string(),
            "versionNumber": lifecycle.version_number,
        })
    });
}

/// Publishes the `disconnected` event (see [`publish_presence`]).
pub(crate) fn publish_disconnected(
    broker: &Broker,
    lifecycle: &Lifecycle<'_>,
    at: OffsetDateTime,
    reason: DisconnectReason,
) {
    publish_presence(broker, lifecycle, "disconnected", || {
        serde_json::json!({
            "clientId": lifecycle.client_id,
            "timestamp": millis(at),
            "eventType": "disconnected",
            "clientInitiatedDisconnect": reason == DisconnectReason::ClientInitiatedDisconnect,
            "sessionIdentifier": lifecycle.session_identifier,
            "principalIdentifier": lifecycle.identity.certificate_id.to_string(),
            "ipAddress": lifecycle.peer.ip().to_string(),
            "disconnectReason": reason.as_str(),
            "versionNumber": lifecycle.version_number,
        })
    });
}

/// Publishes a lifecycle event on `$aws/events/presence/<kind>/<clientId>`, its payload built
/// only when someone, on any node, subscribes to that topic. None for a client ID that cannot
/// be a topic level (AWS publishes no events for client IDs holding `+` or `#`).
fn publish_presence(
    broker: &Broker,
    lifecycle: &Lifecycle<'_>,
    kind: &str,
    payload: impl FnOnce() -> serde_json::Value,
) {
    if lifecycle.client_id.contains(['+', '#']) {
        return;
    }
    let account = &lifecycle.identity.account;
    let topic = format!("$aws/events/presence/{kind}/{}", lifecycle.client_id);
    if !broker.has_subscriber(account, &topic) {
        return;
    }
    if let Ok(topic) = TopicName::new(topic) {
        broker.publish(account, Arc::new(json_message(topic, payload())));
    }
}
