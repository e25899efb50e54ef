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
mod presence;
mod transport;

use std::sync::Arc;

use certfleet_mqtt::{ConnAck, Packet, Properties, ProtocolVersion, ReasonCode, TopicName};
use tokio::io::{AsyncRead, AsyncWrite};
use tracing::Instrument;

use crate::broker::Broker;
use crate::fleet::FleetProvisioning;
use crate::listener::Connection;
pub use crate::model::ConnectRefusal;
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
