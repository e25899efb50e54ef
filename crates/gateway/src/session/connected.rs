//! A connected session: packets from the client handled one by one, messages for it taken from
//! its session state as fast as it reads them, until an [`Ending`].

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::{Buf, Bytes};
use certfleet_mqtt::{
    Disconnect, Packet, PacketId, Properties, ProtocolVersion, PubAck, PubComp, PubRec, PubRel, Publish, QoS,
    ReasonCode, SubAck, Subscribe, TopicName, UnsubAck, Unsubscribe, decode,
};
use time::OffsetDateTime;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::sync::{Notify, oneshot};
use tokio::time::Instant;

use super::ending::Ending;
use super::presence::{self, Lifecycle};
use super::transport::{READ_BELOW, TAKE_BELOW, Transport};
use super::{forwarded, reserved};
use crate::broker::{
    Broker, DeliveryLimits, Departure, Kick, ROOM_WAIT, Received, Session, SessionState, SubscribeRequest, Subscribed,
    SubscriptionOptions, wait_for_room,
};
use crate::fabric::Message;
use crate::fleet::service::{Caller, ConnectionFleet};
use crate::fleet::{FleetProvisioning, Request};
use crate::live::{Close, Membership};
use crate::model::Identity;

/// How many packets are taken from the session state per lock.
const BATCH: usize = 64;

/// A connection whose CONNECT was accepted.
pub(crate) struct Connected<S> {
    pub(super) broker: Arc<Broker>,
    /// The fleet provisioning API, when this gateway serves it.
    pub(super) fleet: Option<Arc<FleetProvisioning>>,
    /// This connection's ownership tokens and in-flight request.
    pub(super) fleet_connection: ConnectionFleet,
    pub(super) transport: Transport<S>,
    pub(super) identity: Arc<Identity>,
    pub(super) membership: Membership,
    pub(super) peer: SocketAddr,
    pub(super) client_id: String,
    /// This connection's number, which the session state knows it by.
    pub(super) connection: u64,
    pub(super) session: Arc<Session>,
    pub(super) kicked: oneshot::Receiver<Kick>,
    /// Notified when the session has something for the client.
    pub(super) wake: Arc<Notify>,
    /// One and a half keep-alive periods; `None` when keep-alive is off.
    pub(super) keep_alive: Option<Duration>,
    pub(super) last_heard: Instant,
    pub(super) limits: DeliveryLimits,
    /// MQTT 5 topic aliases the client set (client to server only).
    pub(super) topic_aliases: HashMap<u16, TopicName>,
    pub(super) session_identifier: String,
    /// Whether this connection is logged at INFO (see [`crate::events::OnRecord`]).
    pub(super) on_record: crate::events::OnRecord,
    pub(super) version_number: u64,
    /// CONNECT's Session Expiry Interval was 0, so DISCONNECT may not raise it.
    pub(super) expiry_was_zero: bool,
    /// Sessions this client's messages found congested: nothing more is read from the client
    /// until they have room (or `room_deadline` passes).
    pub(super) congestion: Vec<Arc<Session>>,
    pub(super) room_deadline: Instant,
}

/// What woke the connection's task.
enum Event {
    /// The live-sessions entry changed (`false`: it is gone and cannot change again).
    Revocation(bool),
    Kicked,
    CertificateExpired,
    KeepAliveExpired,
    Wrote(std::io::Result<usize>),
    Flushed(std::io::Result<()>),
    Read(std::io::Result<usize>),
    /// Something was queued for the client.
    Woken,
    /// The sessions this client's messages congested have room again.
    Room,
}

impl<S: AsyncRead + AsyncWrite + Unpin> Connected<S> {
    /// Serves the connection to its end.
    pub(crate) async fn serve(mut self) {
        let ending = self.run().await;
        // Boxed: what closing needs is allocated when closing, not held by every live session.
        Box::pin(self.end(ending)).await;
    }

    async fn run(&mut self) -> Ending {
        let not_after = certificate_deadline(&self.identity);
        let mut watching_revocation = true;
        loop {
            match *self.membership.closed.borrow() {
                None => {}
                Some(Close::Refused(reason)) => return Ending::Revoked(reason),
                Some(Close::Shutdown) => return Ending::ServerShutdown,
            }
            self.fill();
            let now = Instant::now();
            let keep_alive_deadline = self.keep_alive.map(|period| self.last_heard + period);
            self.transport.reserve();
            let transport = &mut self.transport;
            let congestion = &self.congestion;
            let queue_limits = self.broker.queue_limits();
            let event = tokio::select! {
                biased;
                changed = self.membership.closed.changed(), if watching_revocation => Event::Revocation(changed.is_ok()),
                _ = &mut self.kicked => Event::Kicked,
                () = tokio::time::sleep_until(not_after.unwrap_or(now)), if not_after.is_some() => Event::CertificateExpired,
                () = tokio::time::sleep_until(keep_alive_deadline.unwrap_or(now)),
                    if keep_alive_deadline.is_some() && congestion.is_empty() => {
                    Event::KeepAliveExpired
                }
                drained = drain(&mut transport.writer, &transport.outbound),
                    if !transport.outbound.is_empty() || transport.unflushed => drained,
                () = wait_for_room(congestion, queue_limits, self.room_deadline), if !congestion.is_empty() => Event::Room,
                read = tokio::io::AsyncReadExt::read_buf(&mut transport.reader, &mut transport.inbound),
                    if transport.outbound.len() < READ_BELOW && congestion.is_empty() => Event::Read(read),
                () = self.wake.notified() => Event::Woken,
            };
            match event {
                Event::Revocation(alive) => watching_revocation = alive,
                Event::Kicked => return Ending::TakenOver,
                Event::CertificateExpired => return Ending::CertificateExpired,
                Event::KeepAliveExpired => return Ending::KeepAliveTimeout,
                Event::Wrote(Ok(0) | Err(_)) | Event::Flushed(Err(_)) | Event::Read(Ok(0) | Err(_)) => {
                    return Ending::ConnectionLost;
                }
                Event::Wrote(Ok(written)) => {
                    self.transport.outbound.advance(written);
                    self.transport.unflushed = true;
                }
                Event::Flushed(Ok(())) => self.transport.unflushed = false,
                Event::Read(Ok(read)) => {
                    self.transport.read_done(read);
                    if let Err(ending) = self.read_packets() {
                        return ending;
                    }
                }
                Event::Woken => {}
                Event::Room => {
                    self.congestion.clear();
                    // The client was not read while it waited: its keep-alive runs from now.
                    self.last_heard = Instant::now();
                    // Packets read before the wait are handled before reading more.
                    if let Err(ending) = self.read_packets() {
                        return ending;
                    }
                }
            }
        }
    }

    /// Handles every whole packet buffered, or those before a PUBLISH that congested a
    /// subscriber (the rest wait until it has room).
    fn read_packets(&mut self) -> Result<(), Ending> {
        loop {
            if !self.congestion.is_empty() {
                return Ok(());
            }
            match decode(&mut self.transport.inbound, self.limits.version, self.broker.config.max_packet_size) {
                Ok(Some(packet)) => {
                    self.last_heard = Instant::now();
                    self.handle(packet)?;
                }
                Ok(None) => return Ok(()),
                Err(error) => return Err(Ending::Malformed(error)),
            }
        }
    }

    fn handle(&mut self, packet: Packet) -> Result<(), Ending> {
        let version = self.limits.version;
        match packet {
            Packet::Publish(publish) => return self.publish(publish),
            Packet::PubAck(ack) => {
                self.with_session(|state| state.acknowledged(ack.packet_id));
            }
            Packet::PubRec(received) => {
                let packet_id = received.packet_id;
                if self.with_session(|state| state.received(packet_id, received.reason_code)) == Some(Received::Unknown)
                {
                    let reason_code = not_found(version);
                    self.send(Packet::PubRel(PubRel { packet_id, reason_code, properties: Properties::default() }));
                }
            }
            Packet::PubRel(release) => {
                let packet_id = release.packet_id;
                if let Some(known) = self.with_session(|state| state.incoming_qos2.remove(&packet_id)) {
                    let reason_code = if known { ReasonCode::SUCCESS } else { not_found(version) };
                    self.send(Packet::PubComp(PubComp { packet_id, reason_code, properties: Properties::default() }));
                }
            }
            Packet::PubComp(complete) => {
                self.with_session(|state| state.completed(complete.packet_id));
            }
            Packet::Subscribe(subscribe) => self.subscribe(subscribe),
            Packet::Unsubscribe(unsubscribe) => self.unsubscribe(unsubscribe),
            Packet::PingReq => self.send(Packet::PingResp),
            Packet::Disconnect(disconnect) => {
                let session_expiry = disconnect.properties.session_expiry_interval;
                if self.expiry_was_zero && session_expiry.is_some_and(|seconds| seconds > 0) {
                    return Err(Ending::Violation {
                        reason_code: ReasonCode::PROTOCOL_ERROR,
                        what: "disconnect sets a session expiry after connect set none",
                    });
                }
                let with_will = disconnect.reason_code == ReasonCode::DISCONNECT_WITH_WILL_MESSAGE;
                return Err(Ending::ClientDisconnect { with_will, session_expiry });
            }
            Packet::Connect(_) => {
                return Err(Ending::Violation { reason_code: ReasonCode::PROTOCOL_ERROR, what: "a second connect" });
            }
            Packet::Auth(_) => {
                return Err(Ending::Violation {
                    reason_code: ReasonCode::PROTOCOL_ERROR,
                    what: "auth without an authentication method",
                });
            }
            Packet::ConnAck(_) | Packet::SubAck(_) | Packet::UnsubAck(_) | Packet::PingResp => {
                return Err(Ending::Violation {
                    reason_code: ReasonCode::PROTOCOL_ERROR,
                    what: "a packet only a server sends",
                });
            }
        }
        Ok(())
    }

    /// A PUBLISH from the client: topic alias resolved, size, flow control and authorization
    /// checked, routed, acknowledged.
    fn publish(&mut self, publish: Publish) -> Result<(), Ending> {
        let Publish { qos, retain, topic, packet_id, properties, payload, .. } = publish;
        let topic = self.resolve_topic(topic, &properties)?;
        if payload.len() > self.broker.config.message_size_limit {
            return Err(Ending::MessageTooLarge { size: payload.len() });
        }
        let packet_id = match (qos, packet_id) {
            (QoS::AtMostOnce, _) => None,
            (_, Some(packet_id)) => Some(packet_id),
            (_, None) => {
                return Err(Ending::Violation {
                    reason_code: ReasonCode::PROTOCOL_ERROR,
                    what: "publish without an id",
                });
            }
        };
        if let (QoS::ExactlyOnce, Some(packet_id)) = (qos, packet_id) {
            let receive_maximum = usize::from(self.broker.config.receive_maximum.max(1));
            let Some((duplicate, unreleased)) =
                self.with_session(|state| (state.incoming_qos2.contains(&packet_id), state.incoming_qos2.len()))
            else {
                return Ok(());
            };
            if duplicate {
                // Delivered already: only the PUBREC was lost.
                self.send(Packet::PubRec(PubRec::new(packet_id)));
                return Ok(());
            }
            if unreleased >= receive_maximum {
                return Err(Ending::Violation {
                    reason_code: ReasonCode::RECEIVE_MAXIMUM_EXCEEDED,
                    what: "more qos 2 messages unreleased than the receive maximum",
                });
            }
        }
        let allowed = !reserved(&topic)
            && self.broker.authorizer.publish(&self.identity, &self.client_id, topic.as_str(), retain);
        if !allowed {
            tracing::info!(%topic, "publish not authorized");
            if self.limits.version == ProtocolVersion::V311 {
                return Err(Ending::NotAuthorized);
            }
            let reason_code = ReasonCode::NOT_AUTHORIZED;
            match (qos, packet_id) {
                (QoS::AtLeastOnce, Some(packet_id)) => {
                    self.send(Packet::PubAck(PubAck { packet_id, reason_code, properties: Properties::default() }));
                }
                (QoS::ExactlyOnce, Some(packet_id)) => {
                    self.send(Packet::PubRec(PubRec { packet_id, reason_code, properties: Properties::default() }));
                }
                _ => {}
            }
            return Ok(());
        }
        if let Some(request) = Request::parse(topic.as_str()) {
            match self.fleet.clone() {
                Some(fleet) => self.fleet_request(fleet, request, (qos, packet_id, payload)),
                // This gateway does not serve the API: nobody may answer there in its stead.
                None => self.acknowledge(qos, packet_id),
            }
            return Ok(());
        }
        let expires_at =
            properties.message_expiry_interval.map(|seconds| Instant::now() + Duration::from_secs(u64::from(seconds)));
        let message = Message {
            topic,
            payload,
            qos,
            retain,
            properties: forwarded(properties),
            expires_at,
            publisher: Some(self.client_id.clone()),
        };
        if retain && let Err(refused) = self.broker.admit_retained(&self.identity.account, &message) {
            // Refused whole (not routed either), counted and logged by the broker: MQTT 5 hears
            // Quota exceeded for QoS 1 and 2 (QoS 0 is dropped); an MQTT 3.1.1 client, which
            // has no negative acknowledgement, is disconnected.
            tracing::debug!(why = ?refused, "retained publish refused");
            if self.limits.version == ProtocolVersion::V311 {
                return Err(Ending::Violation {
                    reason_code: ReasonCode::QUOTA_EXCEEDED,
                    what: "a retained message past the account's retained quota",
                });
            }
            let reason_code = ReasonCode::QUOTA_EXCEEDED;
            match (qos, packet_id) {
                (QoS::AtLeastOnce, Some(packet_id)) => {
                    self.send(Packet::PubAck(PubAck { packet_id, reason_code, properties: Properties::default() }));
                }
                (QoS::ExactlyOnce, Some(packet_id)) => {
                    self.send(Packet::PubRec(PubRec { packet_id, reason_code, properties: Properties::default() }));
                }
                _ => {}
            }
            return Ok(());
        }
        let message = Arc::new(message);
        self.broker.tap(&self.identity, &self.client_id, &message);
        let published = self.broker.publish_with_backpressure(&self.identity.account, message);
        if !published.congested.is_empty() {
            if self.congestion.is_empty() {
                self.room_deadline = Instant::now() + ROOM_WAIT;
            }
            for session in published.congested {
                if !self.congestion.iter().any(|known| Arc::ptr_eq(known, &session)) {
                    self.congestion.push(session);
                }
            }
        }
        match published.carried {
            Ok(()) => self.acknowledge(qos, packet_id),
            // The other nodes could not be reached (this node's subscribers have it): a QoS 1
            // or 2 message is not acknowledged as delivered. MQTT 5 hears Unspecified error
            // (0x80) and may send it again; MQTT 3.1.1, with no negative acknowledgement, is
            // disconnected so that its client resends the message on a new connection.
            Err(error) => match (qos, packet_id, self.limits.version) {
                (QoS::AtMostOnce, _, _) | (_, None, _) => {}
                (_, Some(_), ProtocolVersion::V311) => {
                    return Err(Ending::Violation {
                        reason_code: ReasonCode::UNSPECIFIED_ERROR,
                        what: "a message the cluster could not carry",
                    });
                }
                (QoS::AtLeastOnce, Some(packet_id), ProtocolVersion::V5) => {
                    tracing::debug!(%error, "publish not carried to the cluster");
                    let reason_code = ReasonCode::UNSPECIFIED_ERROR;
                    self.send(Packet::PubAck(PubAck { packet_id, reason_code, properties: Properties::default() }));
                }
                (QoS::ExactlyOnce, Some(packet_id), ProtocolVersion::V5) => {
                    tracing::debug!(%error, "publish not carried to the cluster");
                    let reason_code = ReasonCode::UNSPECIFIED_ERROR;
                    self.send(Packet::PubRec(PubRec { packet_id, reason_code, properties: Properties::default() }));
                }
            },
        }
        Ok(())
    }

    /// Hands a fleet provisioning request to the API (its answer comes back to this connection
    /// alone) and acknowledges the PUBLISH: never routed, retained or seen by rules.
    fn fleet_request(
        &mut self,
        fleet: Arc<FleetProvisioning>,
        request: Request,
        publish: (QoS, Option<PacketId>, Bytes),
    ) {
        let (qos, packet_id, payload) = publish;
        let caller = Caller {
            broker: self.broker.clone(),
            identity: self.identity.clone(),
            client_id: self.client_id.clone(),
            session: self.session.clone(),
            connection: self.connection,
            fleet: self.fleet_connection.clone(),
        };
        fleet.submit(caller, request, payload);
        self.acknowledge(qos, packet_id);
    }

    /// The PUBACK or PUBREC of an accepted PUBLISH.
    fn acknowledge(&mut self, qos: QoS, packet_id: Option<PacketId>) {
        match (qos, packet_id) {
            (QoS::AtLeastOnce, Some(packet_id)) => self.send(Packet::PubAck(PubAck::new(packet_id))),
            (QoS::ExactlyOnce, Some(packet_id)) => {
                self.with_session(|state| state.incoming_qos2.insert(packet_id));
                self.send(Packet::PubRec(PubRec::new(packet_id)));
            }
            _ => {}
        }
    }

    /// The topic a PUBLISH goes to: its topic name, or the one its MQTT 5 Topic Alias stands for
    /// (a topic name with an alias sets the alias).
    fn resolve_topic(&mut self, topic: Option<TopicName>, properties: &Properties) -> Result<TopicName, Ending> {
        let Some(alias) = properties.topic_alias else {
            return topic.ok_or(Ending::Violation {
                reason_code: ReasonCode::PROTOCOL_ERROR,
                what: "publish without a topic name",
            });
        };
        if alias.get() > self.broker.config.topic_alias_maximum {
            return Err(Ending::Violation {
                reason_code: ReasonCode::TOPIC_ALIAS_INVALID,
                what: "topic alias over the topic alias maximum",
            });
        }
        match topic {
            Some(topic) => {
                self.topic_aliases.insert(alias.get(), topic.clone());
                Ok(topic)
            }
            None => self
                .topic_aliases
                .get(&alias.get())
                .cloned()
                .ok_or(Ending::Violation { reason_code: ReasonCode::PROTOCOL_ERROR, what: "topic alias never set" }),
        }
    }

    fn subscribe(&mut self, subscribe: Subscribe) {
        let version = self.limits.version;
        let Subscribe { packet_id, subscriptions, properties } = subscribe;
        let identifier = properties.subscription_identifiers.first().copied();
        // `None` where the broker decides; a refusal of the authorizer otherwise.
        let mut decided = Vec::with_capacity(subscriptions.len());
        let mut requests = Vec::with_capacity(subscriptions.len());
        for subscription in subscriptions {
            if !self.broker.authorizer.subscribe(&self.identity, &self.client_id, subscription.filter.as_str()) {
                tracing::info!(filter = %subscription.filter, "subscribe not authorized");
                decided.push(Some(refusal(version, ReasonCode::NOT_AUTHORIZED)));
                continue;
            }
            decided.push(None);
            requests.push(SubscribeRequest {
                options: SubscriptionOptions {
                    qos: subscription.qos,
                    no_local: subscription.no_local,
                    retain_as_published: subscription.retain_as_published,
                    identifier,
                },
                filter: subscription.filter,
                retain_handling: subscription.retain_handling,
            });
        }
        let Some(results) = self.broker.subscribe(&self.identity.account, &self.session, self.connection, &requests)
        else {
            return;
        };
        let mut results = results.into_iter().zip(&requests);
        let reason_codes = decided
            .into_iter()
            .map(|code| {
                code.unwrap_or_else(|| match results.next() {
                    Some((Subscribed::QuotaExceeded, _)) => refusal(version, ReasonCode::QUOTA_EXCEEDED),
                    Some((Subscribed::New | Subscribed::Replaced, request)) => ReasonCode::granted(request.options.qos),
                    None => refusal(version, ReasonCode::UNSPECIFIED_ERROR),
                })
            })
            .collect();
        self.send(Packet::SubAck(SubAck { packet_id, reason_codes, properties: Properties::default() }));
    }

    fn unsubscribe(&mut self, unsubscribe: Unsubscribe) {
        let Some(existed) =
            self.broker.unsubscribe(&self.identity.account, &self.session, self.connection, &unsubscribe.filters)
        else {
            return;
        };
        let reason_codes = match self.limits.version {
            ProtocolVersion::V311 => Vec::new(),
            ProtocolVersion::V5 => existed
                .into_iter()
                .map(|existed| if existed { ReasonCode::SUCCESS } else { ReasonCode::NO_SUBSCRIPTION_EXISTED })
                .collect(),
        };
        self.send(Packet::UnsubAck(UnsubAck {
            packet_id: unsubscribe.packet_id,
            reason_codes,
            properties: Properties::default(),
        }));
    }

    /// Takes what the session has for the client while the write buffer has room.
    fn fill(&mut self) {
        let now = Instant::now();
        while self.transport.outbound.len() < TAKE_BELOW {
            let packets = {
                let mut state = self.session.lock();
                if !state.serves(self.connection) {
                    return;
                }
                let packets = state.outgoing(self.limits, now, BATCH, self.broker.counters());
                self.session.relieve(&state, self.broker.queue_limits());
                packets
            };
            if packets.is_empty() {
                return;
            }
            for packet in &packets {
                self.transport.send(packet, self.limits.version);
            }
        }
    }

    fn send(&mut self, packet: Packet) {
        self.transport.send(&packet, self.limits.version);
    }

    /// Runs `change` on the session state if this connection still serves it (`None` once taken
    /// over: the kick is on its way).
    fn with_session<T>(&self, change: impl FnOnce(&mut SessionState) -> T) -> Option<T> {
        let mut state = self.session.lock();
        state.serves(self.connection).then(|| change(&mut state))
    }

    /// Leaves the session, tells the observer and the lifecycle-event subscribers, says why to an
    /// MQTT 5 client, and closes.
    async fn end(self, ending: Ending) {
        let Connected {
            broker,
            mut transport,
            identity,
            membership,
            peer,
            client_id,
            connection,
            session,
            limits,
            session_identifier,
            on_record,
            version_number,
            ..
        } = self;
        let max_expiry = broker.config.max_session_expiry;
        let expiry = ending.session_expiry().map(|seconds| Duration::from_secs(u64::from(seconds)).min(max_expiry));
        broker.detach(
            &identity.account,
            &session,
            connection,
            Departure { publish_will: ending.publishes_will(), expiry },
        );
        let now = OffsetDateTime::now_utc();
        let reason = ending.disconnect_reason();
        broker.observer.disconnected(&identity, &client_id, &session_identifier, now, reason.as_str());
        let lifecycle = Lifecycle {
            client_id: &client_id,
            identity: &identity,
            session_identifier: &session_identifier,
            peer,
            version_number,
        };
        presence::publish_disconnected(&broker, &lifecycle, now, reason);
        match (&ending, on_record) {
            (_, crate::events::OnRecord::Coalesced) => {
                tracing::debug!(reason = reason.as_str(), "device disconnected (not on record): {ending}");
            }
            (Ending::ClientDisconnect { .. } | Ending::ConnectionLost | Ending::TakenOver, _) => {
                tracing::info!(reason = reason.as_str(), "device disconnected: {ending}");
            }
            // The node says once how many it drained: a line per device would be a storm.
            (Ending::ServerShutdown, _) => {
                tracing::debug!(reason = reason.as_str(), "device disconnected by the gateway: {ending}");
            }
            _ => tracing::info!(reason = reason.as_str(), "device disconnected by the gateway: {ending}"),
        }
        if limits.version == ProtocolVersion::V5
            && let Some(reason_code) = ending.reason_code()
        {
            let disconnect = Disconnect { reason_code, properties: Properties::default() };
            transport.send(&Packet::Disconnect(disconnect), ProtocolVersion::V5);
        }
        transport.close().await;
        drop(membership);
    }
}

/// Writes some of what is buffered, or flushes once it is all written.
async fn drain<W: AsyncWrite + Unpin>(writer: &mut W, outbound: &[u8]) -> Event {
    if outbound.is_empty() { Event::Flushed(writer.flush().await) } else { Event::Wrote(writer.write(outbound).await) }
}

/// MQTT 5's "packet identifier not found" (3.1.1 acknowledgements cannot refuse).
fn not_found(version: ProtocolVersion) -> ReasonCode {
    match version {
        ProtocolVersion::V311 => ReasonCode::SUCCESS,
        ProtocolVersion::V5 => ReasonCode::PACKET_IDENTIFIER_NOT_FOUND,
    }
}

/// A SUBACK refusal: MQTT 3.1.1 has only Failure (0x80).
fn refusal(version: ProtocolVersion, reason_code: ReasonCode) -> ReasonCode {
    match version {
        ProtocolVersion::V311 => ReasonCode::UNSPECIFIED_ERROR,
        ProtocolVersion::V5 => reason_code,
    }
}

/// When the device certificate expires, on the session's clock; `None` beyond what the clock can
/// say (the connection then outlives the certificate until the next change in the registry).
fn certificate_deadline(identity: &Identity) -> Option<Instant> {
    let left = identity.not_after - OffsetDateTime::now_utc();
    let left = Duration::try_from(left).unwrap_or(Duration::ZERO);
    Instant::now().checked_add(left)
}
