//! What the gateway tells others about connections: AWS IoT's lifecycle events, published into the
//! account's topic space (`$aws/events/presence/connected/<clientId>` and `.../disconnected/...`),
//! the just-in-time registration event (`$aws/events/certificates/registered/<caCertificateId>`,
//! published through an [`EventSink`] because it happens before any MQTT session exists), and
//! the [`ConnectionObserver`] that keeps the connection history (which client IDs used which
//! certificate, and when) for the audits.

use bytes::Bytes;
use certfleet_mqtt::{PayloadFormat, Properties, QoS, TopicName};
use certfleet_pki::CertificateId;
use certfleet_registry::{AccountId, ConnectionVia, DeviceCertificate};
use time::OffsetDateTime;

use crate::fabric::Message;
use crate::model::Identity;

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
    /// connection (the lifecycle events' `sessionIdentifier`), `via` the endpoint, server chain
    /// and TLS version it came through. Says whether the connection is on the record: a
    /// certificate reconnecting past its budget is counted and summarised instead, in the
    /// connection history and in the log alike.
    fn connected(
        &self,
        identity: &Identity,
        client_id: &str,
        session_identifier: &str,
        via: &ConnectionVia,
        at: OffsetDateTime,
    ) -> OnRecord;

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
        _via: &ConnectionVia,
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
pub(crate) fn json_message(topic: TopicName, payload: serde_json::Value) -> Message {
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

pub(crate) fn millis(at: OffsetDateTime) -> i64 {
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
