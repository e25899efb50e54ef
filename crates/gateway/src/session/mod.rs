//! The MQTT session layer: one task per connection, from the first byte after the TLS handshake
//! to the close.
//!
//! A connection moves through typed states that consume themselves, so a stage left behind
//! cannot be used again:
//! 1. a refused device ([`crate::identity::Refusal`]) is answered CONNACK "not authorized" and
//!    closed, never told why;
//! 2. [`connect::ExpectConnect`] waits (under the connect timeout) for CONNECT, checks it,
//!    attaches the session in the broker and answers CONNACK;
//! 3. [`connected::Connected`] serves packets both ways until an [`ending::Ending`], the one
//!    value that says what the client is told, what AWS's lifecycle event says and whether the
//!    will goes out.
//!
//! Reading, writing, timers (keep-alive, certificate expiry), live revocation and takeover are
//! branches of one `select!` in the connection's task; the broker state it touches is locked only
//! for short, synchronous steps.

mod connect;
mod connected;
mod ending;
mod transport;

use std::sync::Arc;

use certfleet_mqtt::{ConnAck, Packet, Properties, ProtocolVersion, ReasonCode, TopicName};
use tokio::io::{AsyncRead, AsyncWrite};
use tracing::Instrument;

use crate::broker::Broker;
use crate::fleet::FleetProvisioning;
use crate::listener::Connection;
use connect::{ExpectConnect, read_connect};
use transport::Transport;

/// Serves one connection: the MQTT session of an authenticated device, or the refusal of a
/// device the registry does not accept. Without the fleet provisioning API: its request topics
/// are acknowledged and dropped (a [`crate::Node`] serves its sessions with it).
pub async fn serve<S>(broker: Arc<Broker>, stream: S, connection: Connection)
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    serve_with_fleet(broker, None, stream, connection).await;
}

/// [`serve`], with the fleet provisioning API answering its reserved topics when given (the
/// node hands its own to every session).
pub(crate) async fn serve_with_fleet<S>(
    broker: Arc<Broker>,
    fleet: Option<Arc<FleetProvisioning>>,
    stream: S,
    connection: Connection,
) where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let transport = Transport::new(stream);
    let Connection { peer, auth, .. } = connection;
    match auth {
        Err(refusal) => {
            let span = tracing::debug_span!("mqtt", %peer, refused = %refusal);
            // Boxed: the rare path does not make every connection's task larger.
            Box::pin(
                async move {
                    let mut transport = transport;
                    if let Some(connect) = read_connect(&mut transport, &broker.config, false).await {
                        refuse_connect(&mut transport, connect.protocol_version, ReasonCode::NOT_AUTHORIZED);
                        tracing::debug!(client_id = %connect.client_id, "refused device answered: not authorized");
                    }
                    transport.close().await;
                }
                .instrument(span),
            )
            .await;
        }
        Ok(authenticated) => {
            let span = tracing::info_span!(
                "mqtt",
                account = %authenticated.identity.account,
                cert = %authenticated.identity.certificate_id,
                session = authenticated.membership.session_id,
                client_id = tracing::field::Empty,
                %peer,
            );
            async move {
                // Boxed, so that the memory of the CONNECT exchange is given back once it is
                // over rather than held by every connection for its life.
                let expect = ExpectConnect::new(broker, fleet, transport, peer, authenticated);
                if let Some(connected) = Box::pin(expect.accept()).await {
                    connected.serve().await;
                }
            }
            .instrument(span)
            .await;
        }
    }
}

/// Why the gateway refused the CONNECT of an authenticated device: logged once with the client
/// ID, counted (`certfleet_broker_connect_refusals_total{reason=...}`) and answered with
/// [`ConnectRefusal::reason_code`] (MQTT 3.1.1: its return code, where 3.1.1 has one).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ConnectRefusal {
    /// MQTT 5 enhanced authentication was asked for; the certificate is the only credential.
    AuthenticationMethod,
    /// The certificate stopped being accepted (revoked, say) between the handshake and CONNECT.
    IdentityClosed,
    /// MQTT 3.1.1: an empty client ID with clean session 0 (the spec's return code 2).
    EmptyClientIdWithSession,
    /// The client ID is longer than the gateway allows.
    ClientIdTooLong,
    /// The client ID holds an MQTT wildcard, `+` or `#`: substituted into a policy or a topic it
    /// could stand for other clients.
    ClientIdWildcard,
    /// The client ID holds the character NUL, which no topic may hold.
    ClientIdNul,
    /// The client ID starts with `$`, which AWS IoT reserves.
    ClientIdReserved,
    /// The policies do not allow `iot:Connect` on the client ID.
    ConnectNotAuthorized,
    /// The will's payload is over the message size limit.
    WillTooLarge,
    /// The will's topic is reserved or the policies do not allow publishing (or retaining) on it.
    WillNotAuthorized,
}

impl ConnectRefusal {
    /// Every reason, in the order the metrics list them.
    pub const ALL: [ConnectRefusal; 10] = [
        ConnectRefusal::AuthenticationMethod,
        ConnectRefusal::IdentityClosed,
        ConnectRefusal::EmptyClientIdWithSession,
        ConnectRefusal::ClientIdTooLong,
        ConnectRefusal::ClientIdWildcard,
        ConnectRefusal::ClientIdNul,
        ConnectRefusal::ClientIdReserved,
        ConnectRefusal::ConnectNotAuthorized,
        ConnectRefusal::WillTooLarge,
        ConnectRefusal::WillNotAuthorized,
    ];

    /// The reason's name in logs and metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            ConnectRefusal::AuthenticationMethod => "authentication_method",
            ConnectRefusal::IdentityClosed => "identity_closed",
            ConnectRefusal::EmptyClientIdWithSession => "empty_client_id_with_session",
            ConnectRefusal::ClientIdTooLong => "client_id_too_long",
            ConnectRefusal::ClientIdWildcard => "client_id_wildcard",
            ConnectRefusal::ClientIdNul => "client_id_nul",
            ConnectRefusal::ClientIdReserved => "client_id_reserved",
            ConnectRefusal::ConnectNotAuthorized => "connect_not_authorized",
            ConnectRefusal::WillTooLarge => "will_too_large",
            ConnectRefusal::WillNotAuthorized => "will_not_authorized",
        }
    }

    /// What the client is told: MQTT 5's reason code (MQTT 3.1.1 maps it to its return code:
    /// 0x85 is 2 "identifier rejected", 0x87 is 5 "not authorized"; the others close silently).
    pub fn reason_code(self) -> ReasonCode {
        match self {
            ConnectRefusal::AuthenticationMethod => ReasonCode::BAD_AUTHENTICATION_METHOD,
            ConnectRefusal::IdentityClosed
            | ConnectRefusal::ConnectNotAuthorized
            | ConnectRefusal::WillNotAuthorized => ReasonCode::NOT_AUTHORIZED,
            ConnectRefusal::EmptyClientIdWithSession
            | ConnectRefusal::ClientIdTooLong
            | ConnectRefusal::ClientIdWildcard
            | ConnectRefusal::ClientIdNul
            | ConnectRefusal::ClientIdReserved => ReasonCode::CLIENT_IDENTIFIER_NOT_VALID,
            ConnectRefusal::WillTooLarge => ReasonCode::PACKET_TOO_LARGE,
        }
    }

    /// Why a client ID cannot be used, if it cannot (the empty one is decided by the caller).
    pub fn of_client_id(client_id: &str, max_len: usize) -> Option<ConnectRefusal> {
        if client_id.len() > max_len {
            Some(ConnectRefusal::ClientIdTooLong)
        } else if client_id.contains(['+', '#']) {
            Some(ConnectRefusal::ClientIdWildcard)
        } else if client_id.contains('\0') {
            Some(ConnectRefusal::ClientIdNul)
        } else if client_id.starts_with('$') {
            Some(ConnectRefusal::ClientIdReserved)
        } else {
            None
        }
    }
}

impl std::fmt::Display for ConnectRefusal {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter.write_str(self.as_str())
    }
}

/// Answers a CONNECT with a refusal (where the protocol version can say it; 3.1.1 has only a few
/// return codes, and the connection is then just closed).
fn refuse_connect<S: AsyncRead + AsyncWrite>(
    transport: &mut Transport<S>,
    version: ProtocolVersion,
    reason_code: ReasonCode,
) {
    if version == ProtocolVersion::V311 && reason_code.to_v311_connack().is_none() {
        return;
    }
    let connack = ConnAck { session_present: false, reason_code, properties: Properties::default() };
    transport.send(&Packet::ConnAck(connack), version);
}

/// Topics clients may not publish to: the broker's own lifecycle events.
fn reserved(topic: &TopicName) -> bool {
    topic.as_str().starts_with("$aws/events/") || crate::fleet::is_reserved(topic.as_str())
}

/// The properties of a PUBLISH (or will) forwarded to subscribers (MQTT 5 3.3.2.3).
fn forwarded(properties: Properties) -> Properties {
    let Properties {
        payload_format_indicator, content_type, response_topic, correlation_data, user_properties, ..
    } = properties;
    Properties {
        payload_format_indicator,
        content_type,
        response_topic,
        correlation_data,
        user_properties,
        ..Properties::default()
    }
}
