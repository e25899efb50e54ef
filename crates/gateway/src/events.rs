//! What the gateway tells others about connections: AWS IoT's lifecycle events, published into the
//! account's topic space (`$aws/events/presence/connected/<clientId>` and `.../disconnected/...`),
//! the just-in-time registration event (`$aws/events/certificates/registered/<caCertificateId>`,
//! published through an [`EventSink`] because it happens before any MQTT session exists), and
//! the [`ConnectionObserver`] that keeps the connection history (which client IDs used which
//! certificate, and when) for the audits.

use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use certfleet_mqtt::{PayloadFormat, Properties, QoS, TopicName};
use certfleet_pki::CertificateId;
use certfleet_registry::{AccountId, DeviceCertificate};
use time::OffsetDateTime;

use crate::broker::Broker;
use crate::fabric::Message;
use crate::identity::Identity;

/// Told of every accepted connection and of its end.
/// Whether a connection is on the record (its history row, its connect and disconnect log
/// lines), or one of a certificate's reconnections past the hourly budget: counted in
/// `certfleet_history_coalesced_total`, summarised by one log line per certificate and hour,
/// and logged at DEBUG only, so that a device in a reconnect loop cannot flood the log.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[must_use = "log the connection at INFO only when it is on record"]
pub enum OnRecord {
    Yes,
    Coalesced,
}

pub trait ConnectionObserver: Send + Sync {
    /// A connection of `identity` was accepted with `client_id`; `session_identifier` names this
    /// connection (the lifecycle events' `sessionIdentifier`). Says whether the connection is on
    /// the record: a certificate reconnecting past its budget is counted and summarised instead,
    /// in the connection history and in the log alike.
    fn connected(&self, identity: &Identity, client_id: &str, session_identifier: &str, at: OffsetDateTime)
    -> OnRecord;

    /// That connection ended; `reason` is AWS IoT's `disconnectReason` (see [`DisconnectReason`]).
    fn disconnected(
        &self,
        identity: &Identity,
        client_id: &str,
        session_identifier: &str,
        at: OffsetDateTime,
        reason: &str,
    );
}

/// An observer that keeps nothing.
#[derive(Clone, Copy, Debug, Default)]
pub struct IgnoreConnections;

impl ConnectionObserver for IgnoreConnections {
    fn connected(
        &self,
        _identity: &Identity,
        _client_id: &str,
        _session_identifier: &str,
        _at: OffsetDateTime,
    ) -> OnRecord {
        OnRecord::Yes
    }

    fn disconnected(
        &self,
        _identity: &Identity,
        _client_id: &str,
        _session_identifier: &str,
        _at: OffsetDateTime,
        _reason: &str,
    ) {
    }
}

/// Where the gateway publishes the events it makes outside any MQTT session (a certificate
/// registered just in time): into an account's topic space. The broker is one; the node builds
/// it before the registry view, which is given it (`identity::Registry::with_limits`).
pub trait EventSink: Send + Sync {
    /// Publishes `message` to the subscribers of `account`, on every node.
    fn publish_event(&self, account: &AccountId, message: Message);
}

/// Why a connection ended, in AWS IoT's words (the `disconnectReason` of the disconnected event).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum DisconnectReason {
    /// The client sent DISCONNECT.
    ClientInitiatedDisconnect,
    /// The client broke the protocol: a malformed packet, a second CONNECT, a payload over the
    /// message size limit, a receive maximum exceeded, an invalid topic alias.
    ClientError,
    /// The network connection closed without DISCONNECT.
    ConnectionLost,
    /// Another connection took the client ID.
    DuplicateClientId,
    /// Nothing arrived within one and a half keep-alive periods.
    MqttKeepAliveTimeout,
    /// The device's identity was revoked or expired, or it did something it is not authorized to.
    AuthError,
    /// The gateway closed the connection for its own reasons.
    ServerInitiatedDisconnect,
}

impl DisconnectReason {
    pub fn as_str(self) -> &'static str {
        match self {
            DisconnectReason::ClientInitiatedDisconnect => "CLIENT_INITIATED_DISCONNECT",
            DisconnectReason::ClientError => "CLIENT_ERROR",
            DisconnectReason::ConnectionLost => "CONNECTION_LOST",
            DisconnectReason::DuplicateClientId => "DUPLICATE_CLIENTID",
            DisconnectReason::MqttKeepAliveTimeout => "MQTT_KEEP_ALIVE_TIMEOUT",
            DisconnectReason::AuthError => "AUTH_ERROR",
            DisconnectReason::ServerInitiatedDisconnect => "SERVER_INITIATED_DISCONNECT",
        }
    }
}

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

/// AWS IoT's just-in-time registration event for `certificate`, registered PENDING_ACTIVATION
/// under the CA `ca`: published on `$aws/events/certificates/registered/<caCertificateId>`.
/// (`None` cannot happen: a certificate ID, 64 hex digits, is always a valid topic level.)
pub fn certificate_registered(
    certificate: &DeviceCertificate,
    ca: &CertificateId,
    at: OffsetDateTime,
) -> Option<Message> {
    let payload = serde_json::json!({
        "certificateId": certificate.id.to_string(),
        "caCertificateId": ca.to_string(),
        "timestamp": millis(at),
        "certificateStatus": certificate.status.as_str(),
        "awsAccountId": certificate.account.to_string(),
        "certificateRegistrationTimestamp": millis(certificate.created_at),
    });
    let topic = TopicName::new(format!("$aws/events/certificates/registered/{ca}")).ok()?;
    Some(json_message(topic, payload))
}

/// An event: JSON, QoS 1, published by the broker itself.
fn json_message(topic: TopicName, payload: serde_json::Value) -> Message {
    Message {
        topic,
        payload: Bytes::from(payload.to_string()),
        qos: QoS::AtLeastOnce,
        retain: false,
        properties: Properties {
            payload_format_indicator: Some(PayloadFormat::Utf8),
            content_type: Some("application/json".to_owned()),
            ..Properties::default()
        },
        expires_at: None,
        publisher: None,
    }
}

fn millis(at: OffsetDateTime) -> i64 {
    i64::try_from(at.unix_timestamp_nanos() / 1_000_000).unwrap_or(i64::MAX)
}

/// A random version 4 UUID, the `sessionIdentifier` of one connection.
pub(crate) fn session_identifier() -> String {
    let mut bytes = random_bytes();
    bytes[6] = (bytes[6] & 0x0F) | 0x40;
    bytes[8] = (bytes[8] & 0x3F) | 0x80;
    let hex: String = bytes.iter().map(|byte| format!("{byte:02x}")).collect();
    format!("{}-{}-{}-{}-{}", &hex[0..8], &hex[8..12], &hex[12..16], &hex[16..20], &hex[20..32])
}

/// 128 random bits (for identifiers, not for keys).
pub(crate) fn random_bytes() -> [u8; 16] {
    let mut bytes = [0u8; 16];
    if aws_lc_rs::rand::fill(&mut bytes).is_err() {
        // Unreachable in practice; an identifier from the clock is still unique enough.
        let nanos = OffsetDateTime::now_utc().unix_timestamp_nanos();
        bytes = nanos.to_le_bytes();
    }
    bytes
}
