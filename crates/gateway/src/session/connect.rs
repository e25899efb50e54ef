//! The first stage of an authenticated connection: CONNECT within the connect timeout, checked
//! (client ID, authorization, will), then the session attached and CONNACK sent.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::num::{NonZeroU16, NonZeroU32};
use std::sync::Arc;
use std::time::Duration;

use certfleet_mqtt::{
    ConnAck, Connect, Error, Packet, Properties, ProtocolVersion, ReasonCode, check_frame, decode_connect,
};
use time::OffsetDateTime;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::time::Instant;

use super::connected::Connected;
use super::presence::{self, Lifecycle};
use super::transport::Transport;
use super::{ConnectRefusal, forwarded, refuse_connect, reserved};
use crate::broker::{Attach, Broker, BrokerConfig, DeliveryLimits, Will};
use crate::events::{self, OnRecord};
use crate::fabric::{Message, SessionSnapshot};
use crate::fleet::FleetProvisioning;
use crate::fleet::service::ConnectionFleet;
use crate::listener::Authenticated;
use crate::live::{Close, Membership};
use crate::model::Identity;

/// How long a connection waits for the cluster to order its claim of a client ID.
const RESERVE_TIMEOUT: Duration = Duration::from_secs(2);

/// Waits for the first packet: `Some` for a CONNECT; `None` (after answering what can be answered
/// when `answer_errors`) for a timeout, a closed stream or anything else.
pub(crate) async fn read_connect<S: AsyncRead + AsyncWrite>(
    transport: &mut Transport<S>,
    config: &BrokerConfig,
    answer_errors: bool,
) -> Option<Connect> {
    let deadline = Instant::now() + config.connect_timeout;
    loop {
        let level = connect_level(&transport.inbound, config.max_packet_size);
        match decode_connect(&mut transport.inbound, config.max_packet_size) {
            Ok(Some(connect)) => return Some(connect),
            Ok(None) => {}
            Err(error) => {
                tracing::info!(%error, "connection closed: the first packet is not a valid connect");
                if answer_errors {
                    answer_invalid_connect(transport, &error, level);
                }
                return None;
            }
        }
        match tokio::time::timeout_at(deadline, transport.read()).await {
            Ok(Ok(0)) | Ok(Err(_)) => return None,
            Ok(Ok(_)) => {}
            Err(_) => {
                tracing::debug!(timeout = ?config.connect_timeout, "connection closed: no connect in time");
                return None;
            }
        }
    }
}

/// Resolves when the connection is told to close (or its live-sessions entry is gone).
async fn told_to_close(closed: &mut tokio::sync::watch::Receiver<Option<Close>>) {
    // The guard `wait_for` answers is dropped here, not held across the caller's awaits.
    let _ = closed.wait_for(Option::is_some).await;
}

/// The protocol level of a CONNECT whose frame is buffered whole, read before the codec consumes
/// it: the codec's errors do not say which version to answer in.
fn connect_level(buffer: &[u8], max_packet_size: usize) -> Option<u8> {
    let header = check_frame(buffer, max_packet_size).ok()??;
    match buffer.get(header.header_len..header.frame_len())? {
        [0, 4, b'M', b'Q', b'T', b'T', level, ..] => Some(*level),
        _ => None,
    }
}

/// CONNACK for a CONNECT the codec refused, where the protocol allows one: an unsupported protocol
/// level gets MQTT 3.1.1's "unacceptable protocol version" (the one answer every version reads);
/// an MQTT 5 CONNECT gets the error's reason code; anything else is just closed.
fn answer_invalid_connect<S: AsyncRead + AsyncWrite>(transport: &mut Transport<S>, error: &Error, level: Option<u8>) {
    match (error, level) {
        (Error::UnsupportedProtocolVersion(_), _) => {
            refuse_connect(transport, ProtocolVersion::V311, ReasonCode::UNSUPPORTED_PROTOCOL_VERSION);
        }
        (_, Some(5)) => refuse_connect(transport, ProtocolVersion::V5, error.reason_code()),
        _ => {}
    }
}

/// An authenticated connection that has not sent CONNECT yet.
pub(crate) struct ExpectConnect<S> {
    broker: Arc<Broker>,
    fleet: Option<Arc<FleetProvisioning>>,
    transport: Transport<S>,
    peer: SocketAddr,
    identity: Arc<Identity>,
    membership: Membership,
}

/// What the gateway grants a CONNECT.
struct Grant {
    client_id: String,
    /// The client ID was empty and this one assigned.
    assigned: bool,
    clean_start: bool,
    keep_alive: u16,
    keep_alive_requested: u16,
    expiry: Duration,
    /// The MQTT 5 Session Expiry Interval asked for (MQTT 3.1.1: the one granted).
    expiry_requested: Duration,
    will: Option<Will>,
    /// What the client accepts (its Receive Maximum and Maximum Packet Size).
    limits: DeliveryLimits,
}

impl<S: AsyncRead + AsyncWrite + Unpin> ExpectConnect<S> {
    pub(crate) fn new(
        broker: Arc<Broker>,
        fleet: Option<Arc<FleetProvisioning>>,
        transport: Transport<S>,
        peer: SocketAddr,
        authenticated: Authenticated,
    ) -> Self {
        let Authenticated { identity, membership } = authenticated;
        ExpectConnect { broker, fleet, transport, peer, identity: Arc::new(identity), membership }
    }

    /// Reads and answers CONNECT; `None` when the connection was refused or closed. A connection
    /// told to close while it waits for CONNECT (revoked, the node shutting down) is closed
    /// without an answer: it has not said which protocol version it speaks.
    pub(crate) async fn accept(mut self) -> Option<Connected<S>> {
        let ExpectConnect { transport, broker, membership, .. } = &mut self;
        let connect = tokio::select! {
            biased;
            // A CONNECT already buffered is answered (refused, when the connection was told to
            // close meanwhile).
            connect = read_connect(transport, &broker.config, true) => connect,
            () = told_to_close(&mut membership.closed) => {
                tracing::debug!("connection closed before its connect: told to close");
                None
            }
        };
        let Some(connect) = connect else {
            self.transport.close().await;
            return None;
        };
        let version = connect.protocol_version;
        let checked = match self.check(connect) {
            Ok(grant) => self.reserve(grant).await,
            Err(refused) => Err(refused),
        };
        let (grant, revision, kept) = match checked {
            Ok(reserved) => reserved,
            Err((refusal, client_id)) => {
                let reason_code = refusal.reason_code();
                // `?`: the client ID is the peer's bytes (it may hold control characters).
                tracing::info!(client_id = ?client_id, reason = %refusal, %reason_code, "connect refused");
                self.broker.counters().connect_refused(refusal);
                refuse_connect(&mut self.transport, version, reason_code);
                self.transport.close().await;
                return None;
            }
        };
        Some(self.attach(grant, revision, kept))
    }

    /// Orders this connection's claim of its client ID among the cluster's (a node alone has
    /// nothing to ask); refused with Server unavailable when the cluster cannot answer within
    /// [`RESERVE_TIMEOUT`].
    /// In a cluster that keeps sessions, a connection that does not start clean also reads the
    /// session another node kept for its client ID, when this node holds none.
    async fn reserve(
        &self,
        grant: Grant,
    ) -> Result<(Grant, Option<u64>, Option<SessionSnapshot>), (ConnectRefusal, String)> {
        let fabric = &self.broker.fabric;
        let account = &self.identity.account;
        let kept =
            if fabric.keeps_sessions() && !grant.clean_start && !self.broker.holds_session(account, &grant.client_id) {
                match tokio::time::timeout(RESERVE_TIMEOUT, fabric.load_session(account, &grant.client_id)).await {
                    Ok(Ok(kept)) => kept,
                    Ok(Err(error)) => {
                        tracing::warn!(%error, "kept session not read");
                        return Err((ConnectRefusal::ClusterUnavailable, grant.client_id));
                    }
                    Err(_) => {
                        tracing::warn!("kept session not read: the cluster did not answer in time");
                        return Err((ConnectRefusal::ClusterUnavailable, grant.client_id));
                    }
                }
            } else {
                None
            };
        let reservation = fabric.reserve_client_id(account, &grant.client_id);
        match tokio::time::timeout(RESERVE_TIMEOUT, reservation).await {
            Ok(Ok(revision)) => Ok((grant, revision, kept)),
            Ok(Err(error)) => {
                tracing::warn!(%error, "client ID not reserved");
                Err((ConnectRefusal::ClusterUnavailable, grant.client_id))
            }
            Err(_) => {
                tracing::warn!("client ID not reserved: the cluster did not answer in time");
                Err((ConnectRefusal::ClusterUnavailable, grant.client_id))
            }
        }
    }

    /// The checks of CONNECT, in the order AWS IoT applies them; a refusal says why and the
    /// client ID (for the log).
    fn check(&self, connect: Connect) -> Result<Grant, (ConnectRefusal, String)> {
        let config = &self.broker.config;
        let version = connect.protocol_version;
        let Connect { clean_start, keep_alive: keep_alive_requested, client_id, will, properties, .. } = connect;
        let refuse = |refusal: ConnectRefusal, client_id: &str| Err((refusal, client_id.to_owned()));
        if properties.authentication_method.is_some() {
            return refuse(ConnectRefusal::AuthenticationMethod, &client_id);
        }
        match *self.membership.closed.borrow() {
            None => {}
            Some(Close::Refused(_)) => return refuse(ConnectRefusal::IdentityClosed, &client_id),
            Some(Close::Shutdown) => return refuse(ConnectRefusal::ServerShuttingDown, &client_id),
        }
        if client_id.is_empty() && version == ProtocolVersion::V311 && !clean_start {
            return refuse(ConnectRefusal::EmptyClientIdWithSession, &client_id);
        }
        if let Some(refusal) = ConnectRefusal::of_client_id(&client_id, config.max_client_id_len) {
            return refuse(refusal, &client_id);
        }
        let assigned = client_id.is_empty();
        let client_id = if assigned { format!("auto-{}", events::session_identifier()) } else { client_id };
        if !self.broker.authorizer.connect(&self.identity, &client_id) {
            return refuse(ConnectRefusal::ConnectNotAuthorized, &client_id);
        }
        let will = match will {
            None => None,
            Some(will) => {
                if will.payload.len() > config.message_size_limit {
                    return refuse(ConnectRefusal::WillTooLarge, &client_id);
                }
                if reserved(&will.topic)
                    || !self.broker.authorizer.publish(&self.identity, &client_id, will.topic.as_str(), will.retain)
                {
                    return refuse(ConnectRefusal::WillNotAuthorized, &client_id);
                }
                let delay = Duration::from_secs(u64::from(will.properties.will_delay_interval.unwrap_or(0)));
                let expiry_interval = will.properties.message_expiry_interval;
                Some(Will {
                    message: Message {
                        topic: will.topic,
                        payload: will.payload,
                        qos: will.qos,
                        retain: will.retain,
                        properties: forwarded(will.properties),
                        expires_at: None,
                        publisher: Some(client_id.clone()),
                    },
                    expiry_interval,
                    delay,
                })
            }
        };
        let max_keep_alive = u16::try_from(config.max_keep_alive.as_secs()).unwrap_or(u16::MAX);
        let keep_alive = match keep_alive_requested {
            0 => max_keep_alive,
            requested => requested.min(max_keep_alive),
        };
        let (expiry_requested, receive_maximum, client_maximum_packet_size) = match version {
            ProtocolVersion::V311 => {
                let expiry = if clean_start { Duration::ZERO } else { config.max_session_expiry };
                (expiry, config.client_receive_maximum.max(1), certfleet_mqtt::MAX_PACKET_SIZE)
            }
            ProtocolVersion::V5 => (
                Duration::from_secs(u64::from(properties.session_expiry_interval.unwrap_or(0))),
                // Never more in flight to one client than the server's bound, whatever it asks.
                properties.receive_maximum.map_or(u16::MAX, NonZeroU16::get).min(config.client_receive_maximum.max(1)),
                properties
                    .maximum_packet_size
                    .map_or(certfleet_mqtt::MAX_PACKET_SIZE, |size| usize::try_from(size.get()).unwrap_or(usize::MAX)),
            ),
        };
        // Nothing larger than the server accepts is ever delivered either, whatever the client
        // allows (an MQTT 3.1.1 client cannot say): a message past it is dropped for the client
        // and counted (`dropped_too_large`).
        let maximum_packet_size = client_maximum_packet_size.min(config.max_packet_size);
        Ok(Grant {
            client_id,
            assigned,
            clean_start,
            keep_alive,
            keep_alive_requested,
            expiry: expiry_requested.min(config.max_session_expiry),
            expiry_requested,
            will,
            limits: DeliveryLimits { version, receive_maximum: usize::from(receive_maximum), maximum_packet_size },
        })
    }

    /// Attaches the session, answers CONNACK and tells the observer, the operator view and the
    /// lifecycle-event subscribers.
    fn attach(self, grant: Grant, revision: Option<u64>, kept: Option<SessionSnapshot>) -> Connected<S> {
        let ExpectConnect { broker, fleet, mut transport, peer, identity, membership } = self;
        let config = &broker.config;
        let version = grant.limits.version;
        let connection = broker.connection_number();
        let attachment = broker.attach(Attach {
            identity: &identity,
            client_id: &grant.client_id,
            clean_start: grant.clean_start,
            expiry: grant.expiry,
            will: grant.will,
            connection,
            revision,
            kept,
        });
        let properties = match version {
            ProtocolVersion::V311 => Properties::default(),
            ProtocolVersion::V5 => Properties {
                session_expiry_interval: (grant.expiry != grant.expiry_requested)
                    .then(|| u32::try_from(grant.expiry.as_secs()).unwrap_or(u32::MAX)),
                receive_maximum: NonZeroU16::new(config.receive_maximum),
                maximum_packet_size: u32::try_from(config.max_packet_size).ok().and_then(NonZeroU32::new),
                topic_alias_maximum: (config.topic_alias_maximum > 0).then_some(config.topic_alias_maximum),
                assigned_client_identifier: grant.assigned.then(|| grant.client_id.clone()),
                server_keep_alive: (grant.keep_alive != grant.keep_alive_requested).then_some(grant.keep_alive),
                ..Properties::default()
            },
        };
        let connack =
            ConnAck { session_present: attachment.session_present, reason_code: ReasonCode::SUCCESS, properties };
        transport.send(&Packet::ConnAck(connack), version);

        let client_id = grant.client_id;
        tracing::Span::current().record("client_id", client_id.as_str());
        broker.live.set_client_id(membership.session_id, &client_id);
        let now = OffsetDateTime::now_utc();
        let session_identifier = events::session_identifier();
        let via = broker.live.via(membership.session_id);
        let on_record = broker.observer.connected(&identity, &client_id, &session_identifier, &via, now);
        let lifecycle = Lifecycle {
            client_id: &client_id,
            identity: &identity,
            session_identifier: &session_identifier,
            peer,
            version_number: attachment.version_number,
        };
        presence::publish_connected(&broker, &lifecycle, now);
        if on_record == OnRecord::Yes {
            tracing::info!(
                ?version,
                clean_start = grant.clean_start,
                session_present = attachment.session_present,
                keep_alive = grant.keep_alive,
                session_expiry = grant.expiry.as_secs(),
                "device connected"
            );
        } else {
            tracing::debug!(?version, "device connected (past its certificate's hourly budget: not on record)");
        }
        let keep_alive = (grant.keep_alive > 0).then(|| Duration::from_millis(u64::from(grant.keep_alive) * 1500));
        Connected {
            broker,
            fleet,
            fleet_connection: ConnectionFleet::default(),
            transport,
            identity,
            membership,
            peer,
            client_id,
            connection,
            session: attachment.session,
            kicked: attachment.kicked,
            wake: attachment.wake,
            keep_alive,
            last_heard: Instant::now(),
            limits: grant.limits,
            topic_aliases: HashMap::new(),
            session_identifier,
            on_record,
            version_number: attachment.version_number,
            expiry_was_zero: grant.expiry_requested.is_zero(),
            congestion: Vec::new(),
            room_deadline: Instant::now(),
        }
    }
}
