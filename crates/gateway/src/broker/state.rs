//! The state of one MQTT session, which outlives its connections: the messages queued for the
//! client, the QoS 1 and 2 exchanges in flight both ways, the filters it subscribed to, its expiry
//! and the will waiting for its delay.
//!
//! The state sits behind a `std::sync::Mutex` held for a few field updates at a time (never across
//! an `.await`); the connection serving the session pulls what it may send with
//! [`SessionState::outgoing`], and the router wakes it through [`Attached::wake`].

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::num::NonZeroU32;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use certfleet_mqtt::{
    Packet, PacketId, Properties, ProtocolVersion, PubRel, Publish, QoS, ReasonCode, TopicFilter, encoded_len,
};
use tokio::sync::{Notify, oneshot};
use tokio::time::Instant;

use super::Counters;
use super::retained::message_bytes;
use crate::fabric::Message;
use crate::model::Identity;

/// One session, shared by the broker (which routes to it) and the connection serving it.
pub(crate) struct Session {
    pub(crate) client_id: String,
    state: Mutex<SessionState>,
    /// Flow control: publishers whose messages filled this session's queue wait here for room
    /// (see [`Session::relieve`] and `broker::wait_for_room`).
    pub(crate) room: Notify,
    /// A publisher waits on `room`; the connection notifies it once the queue is half empty.
    pub(crate) pressured: AtomicBool,
    /// A publisher waited for room in vain: the client reads too slowly or not at all, so
    /// publishers stop waiting for it (its messages are dropped past the bound) until it catches
    /// up. One stuck subscriber never throttles a topic space.
    pub(crate) stalled: AtomicBool,
}

impl Session {
    pub(crate) fn new(client_id: String, state: SessionState) -> Self {
        Session {
            client_id,
            state: Mutex::new(state),
            room: Notify::new(),
            pressured: AtomicBool::new(false),
            stalled: AtomicBool::new(false),
        }
    }

    pub(crate) fn lock(&self) -> MutexGuard<'_, SessionState> {
        self.state.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Called by the connection after taking messages (with `state` still locked): once the
    /// queue is half empty, the publishers waiting for room go on and a stalled session is
    /// waited for again.
    pub(crate) fn relieve(&self, state: &SessionState, limits: QueueLimits) {
        let pressured = self.pressured.load(Ordering::Relaxed);
        if (pressured || self.stalled.load(Ordering::Relaxed)) && state.drained(limits) {
            self.stalled.store(false, Ordering::Relaxed);
            if self.pressured.swap(false, Ordering::Relaxed) {
                self.room.notify_waiters();
            }
        }
    }
}

/// Why the broker closes a connection from outside its task.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Kick {
    /// Another connection took the client ID (on this node or another).
    TakenOver,
}

/// The connection a session is attached to.
pub(crate) struct Attached {
    /// The connection's number on this node.
    pub(crate) connection: u64,
    /// Closes the connection; `None` once used.
    pub(crate) kick: Option<oneshot::Sender<Kick>>,
    /// The connection's will, published if it ends abnormally.
    pub(crate) will: Option<Will>,
    /// Wakes the connection when something is queued for it (its own, so that a connection being
    /// taken over cannot swallow its successor's wake-up).
    pub(crate) wake: Arc<Notify>,
    /// The revision of the connection's claim of its client ID (its lifecycle `versionNumber`):
    /// a claim from another node yields to it when older.
    pub(crate) claim: u64,
}

/// A will as CONNECT sent it.
#[derive(Clone, Debug)]
pub(crate) struct Will {
    /// The message; its expiry runs from when it is published.
    pub(crate) message: Message,
    pub(crate) expiry_interval: Option<u32>,
    /// MQTT 5 Will Delay Interval.
    pub(crate) delay: Duration,
}

impl Will {
    /// The message to route, published now.
    pub(crate) fn publish(self, now: Instant) -> Arc<Message> {
        let Will { mut message, expiry_interval, .. } = self;
        message.expires_at = expiry_interval.map(|seconds| now + Duration::from_secs(u64::from(seconds)));
        Arc::new(message)
    }
}

/// A message waiting for the client.
#[derive(Clone, Debug)]
pub(crate) struct Queued {
    pub(crate) message: Arc<Message>,
    /// The QoS it is delivered with: the lower of the message's and the subscription's.
    pub(crate) qos: QoS,
    pub(crate) retain: bool,
    /// The identifiers of the subscriptions it matched.
    pub(crate) identifiers: Vec<NonZeroU32>,
}

/// The bytes ([`message_bytes`]) a message waiting for the client holds against its session's
/// and its account's byte bounds, given back when it is dropped however it leaves (sent and
/// acknowledged, expired, too large, the session ended): the accounting cannot drift.
pub(crate) struct Charge {
    bytes: usize,
    session: Arc<AtomicUsize>,
    account: Arc<AtomicUsize>,
}

impl Drop for Charge {
    fn drop(&mut self) {
        self.session.fetch_sub(self.bytes, Ordering::Relaxed);
        self.account.fetch_sub(self.bytes, Ordering::Relaxed);
    }
}

/// A message waiting for the client, with its charge.
struct Waiting {
    queued: Queued,
    _charge: Charge,
}

/// An outgoing QoS 1 or 2 exchange.
enum Inflight {
    /// PUBLISH sent (or to resend), waiting for PUBACK or PUBREC.
    Publish { queued: Queued, _charge: Charge, sent: bool, dup: bool },
    /// PUBREC received; PUBREL sent (or to resend), waiting for PUBCOMP.
    Release { sent: bool },
}

/// What the client's connection accepts.
#[derive(Clone, Copy, Debug)]
pub(crate) struct DeliveryLimits {
    pub(crate) version: ProtocolVersion,
    /// QoS 1 and 2 messages unacknowledged at once (the client's Receive Maximum).
    pub(crate) receive_maximum: usize,
    /// The client's Maximum Packet Size.
    pub(crate) maximum_packet_size: usize,
}

/// How many messages a session may queue.
#[derive(Clone, Copy, Debug)]
pub(crate) struct QueueLimits {
    /// QoS 1 and 2 messages, online or offline.
    pub(crate) queued: usize,
    /// QoS 0 messages for a connected client that reads slower than they come.
    pub(crate) qos0: usize,
    /// Bytes of the messages waiting for one session (queued and in flight, every QoS).
    pub(crate) bytes: usize,
    /// Bytes of the messages waiting for all the sessions of one account.
    pub(crate) account_bytes: usize,
}

/// Why a message was not queued.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Dropped {
    /// QoS 0 messages are not kept for offline sessions.
    OfflineQos0,
    /// The client reads slower than QoS 0 messages come.
    SlowQos0,
    /// The session holds the maximum of QoS 1 and 2 messages.
    QueueFull,
    /// The session's messages would exceed its byte bound (after dropping its QoS 0 ones).
    SessionBytes,
    /// The account's sessions' messages would exceed its byte bound.
    AccountBytes,
}

/// What a client's PUBREC answered.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Received {
    /// The exchange goes on: PUBREL is queued.
    Release,
    /// The client refused the message: the exchange ends.
    Ended,
    /// No QoS 2 PUBLISH waits with this identifier.
    Unknown,
}

/// The state of one session.
pub(crate) struct SessionState {
    /// Moves on every attach and detach; a timer set for one offline period checks it.
    pub(crate) epoch: u64,
    /// The identity of the last connection, for authorizing deliveries while offline.
    pub(crate) identity: Arc<Identity>,
    pub(crate) attached: Option<Attached>,
    /// The Session Expiry Interval in effect.
    pub(crate) expiry: Duration,
    /// When an offline session ends.
    pub(crate) expires_at: Option<Instant>,
    /// The filters the session subscribed to (the options live in the subscription tree).
    pub(crate) subscriptions: HashMap<String, TopicFilter>,
    /// QoS 1 and 2 PUBLISH identifiers received, not yet released (PUBREL).
    pub(crate) incoming_qos2: HashSet<PacketId>,
    /// A will whose delay runs, with when it is due.
    pub(crate) pending_will: Option<(Will, Instant)>,
    /// Another node took the client ID over: the session ends here without telling the
    /// cluster's store (the other node writes it now).
    pub(crate) moved_away: bool,
    pending_qos0: VecDeque<Waiting>,
    pending: VecDeque<Waiting>,
    inflight: BTreeMap<PacketId, Inflight>,
    next_packet_id: u16,
    /// Bytes of every message waiting (queued or in flight), the sum of their charges.
    bytes: Arc<AtomicUsize>,
    /// The same, for every session of the account.
    account_bytes: Arc<AtomicUsize>,
}

impl SessionState {
    pub(crate) fn new(
        identity: Arc<Identity>,
        attached: Option<Attached>,
        expiry: Duration,
        account_bytes: Arc<AtomicUsize>,
    ) -> Self {
        SessionState {
            epoch: 0,
            identity,
            attached,
            expiry,
            expires_at: None,
            subscriptions: HashMap::new(),
            incoming_qos2: HashSet::new(),
            pending_will: None,
            moved_away: false,
            pending_qos0: VecDeque::new(),
            pending: VecDeque::new(),
            inflight: BTreeMap::new(),
            next_packet_id: 1,
            bytes: Arc::new(AtomicUsize::new(0)),
            account_bytes,
        }
    }

    /// Whether `connection` is the one attached.
    pub(crate) fn serves(&self, connection: u64) -> bool {
        self.attached.as_ref().is_some_and(|attached| attached.connection == connection)
    }

    /// Queues a message for the client. QoS 0 messages are only queued for a connected client, up
    /// to `limits.qos0`; QoS 1 and 2 messages up to `limits.queued` (expired ones make room).
    /// Every message also within the byte bounds of the session and of its account: a QoS 1 or 2
    /// message makes room by dropping the session's queued QoS 0 messages first (counted in
    /// `Ok`: how many were dropped).
    pub(crate) fn enqueue(&mut self, queued: Queued, limits: QueueLimits, now: Instant) -> Result<usize, Dropped> {
        let size = message_bytes(&queued.message);
        if queued.qos == QoS::AtMostOnce {
            if self.attached.is_none() {
                return Err(Dropped::OfflineQos0);
            }
            if self.pending_qos0.len() >= limits.qos0 {
                return Err(Dropped::SlowQos0);
            }
            let charge = self.charge(size, limits)?;
            self.pending_qos0.push_back(Waiting { queued, _charge: charge });
            return Ok(0);
        }
        let over_bytes = |state: &Self| state.bytes.load(Ordering::Relaxed) + size > limits.bytes;
        if self.pending.len() >= limits.queued || over_bytes(self) {
            self.pending.retain(|waiting| !waiting.queued.message.expired(now));
        }
        if self.pending.len() >= limits.queued {
            return Err(Dropped::QueueFull);
        }
        let mut qos0_dropped = 0;
        while over_bytes(self) && self.pending_qos0.pop_front().is_some() {
            qos0_dropped += 1;
        }
        let charge = self.charge(size, limits)?;
        self.pending.push_back(Waiting { queued, _charge: charge });
        Ok(qos0_dropped)
    }

    /// Charges `size` bytes to the session and its account, if both stay within their bounds.
    /// The account's total is shared by sessions locked separately: it is added first and taken
    /// back if over, so concurrent charges never pass the bound together.
    fn charge(&self, size: usize, limits: QueueLimits) -> Result<Charge, Dropped> {
        if self.bytes.load(Ordering::Relaxed) + size > limits.bytes {
            return Err(Dropped::SessionBytes);
        }
        if self.account_bytes.fetch_add(size, Ordering::Relaxed) + size > limits.account_bytes {
            self.account_bytes.fetch_sub(size, Ordering::Relaxed);
            return Err(Dropped::AccountBytes);
        }
        self.bytes.fetch_add(size, Ordering::Relaxed);
        Ok(Charge { bytes: size, session: self.bytes.clone(), account: self.account_bytes.clone() })
    }

    /// Bytes of the messages waiting for the client (queued and in flight).
    pub(crate) fn queued_bytes(&self) -> usize {
        self.bytes.load(Ordering::Relaxed)
    }

    /// Whether publishers should wait before adding to this session's queue: a connected
    /// client's queue is three quarters full, in messages or in bytes (a queue configured to
    /// hold nothing never is).
    pub(crate) fn congested(&self, limits: QueueLimits) -> bool {
        let high_water = |bound: usize| (bound - bound / 4).max(1);
        self.attached.is_some()
            && (self.pending.len() >= high_water(limits.queued)
                || self.pending_qos0.len() >= high_water(limits.qos0)
                || self.queued_bytes() >= high_water(limits.bytes))
    }

    /// Whether the queue is back to half (or the client left): waiting publishers may go on.
    pub(crate) fn drained(&self, limits: QueueLimits) -> bool {
        self.attached.is_none()
            || (self.pending.len() <= limits.queued / 2
                && self.pending_qos0.len() <= limits.qos0 / 2
                && self.queued_bytes() <= limits.bytes / 2)
    }

    /// Prepares the packets the client may be sent now, at most `budget` of them: first what a
    /// new connection must resend (unacknowledged PUBLISH with DUP set, PUBREL), then QoS 0
    /// messages, then QoS 1 and 2 messages while fewer than the client's receive maximum are
    /// unacknowledged. Expired messages and messages larger than the client accepts are dropped.
    pub(crate) fn outgoing(
        &mut self,
        limits: DeliveryLimits,
        now: Instant,
        budget: usize,
        counters: &Counters,
    ) -> Vec<Packet> {
        let mut packets = Vec::new();
        // Messages in flight when a persistent session resumes with a smaller Maximum Packet
        // Size are dropped for it too (their packet ids freed).
        let mut too_large = Vec::new();
        for (packet_id, inflight) in self.inflight.iter_mut() {
            if packets.len() >= budget {
                break;
            }
            match inflight {
                Inflight::Publish { queued, sent: sent @ false, dup, .. } => {
                    let packet = Packet::Publish(publish(queued, Some(*packet_id), *dup, limits.version, now));
                    if fits(&packet, limits, counters) {
                        *sent = true;
                        packets.push(packet);
                    } else {
                        too_large.push(*packet_id);
                    }
                }
                Inflight::Release { sent: sent @ false } => {
                    *sent = true;
                    packets.push(Packet::PubRel(PubRel::new(*packet_id)));
                }
                _ => {}
            }
        }
        for packet_id in too_large {
            self.inflight.remove(&packet_id);
        }
        while packets.len() < budget {
            let Some(Waiting { queued, _charge }) = self.pending_qos0.pop_front() else { break };
            if queued.message.expired(now) {
                counters.dropped_expired.fetch_add(1, Ordering::Relaxed);
                continue;
            }
            let packet = Packet::Publish(publish(&queued, None, false, limits.version, now));
            if fits(&packet, limits, counters) {
                packets.push(packet);
            }
        }
        while packets.len() < budget && self.inflight.len() < limits.receive_maximum {
            let Some(waiting) = self.pending.pop_front() else { break };
            if waiting.queued.message.expired(now) {
                counters.dropped_expired.fetch_add(1, Ordering::Relaxed);
                continue;
            }
            let Some(packet_id) = self.allocate_packet_id() else {
                self.pending.push_front(waiting);
                break;
            };
            let Waiting { queued, _charge: charge } = waiting;
            let packet = Packet::Publish(publish(&queued, Some(packet_id), false, limits.version, now));
            if fits(&packet, limits, counters) {
                packets.push(packet);
                self.inflight.insert(packet_id, Inflight::Publish { queued, _charge: charge, sent: true, dup: false });
            }
        }
        packets
    }

    /// A new connection took the session over: everything in flight is sent again, PUBLISH with
    /// DUP set.
    pub(crate) fn resend_inflight(&mut self) {
        for inflight in self.inflight.values_mut() {
            match inflight {
                Inflight::Publish { sent, dup, .. } => {
                    *dup |= *sent;
                    *sent = false;
                }
                Inflight::Release { sent } => *sent = false,
            }
        }
    }

    /// The client acknowledged a QoS 1 PUBLISH. Returns whether one was waiting.
    pub(crate) fn acknowledged(&mut self, packet_id: PacketId) -> bool {
        match self.inflight.get(&packet_id) {
            Some(Inflight::Publish { queued, .. }) if queued.qos == QoS::AtLeastOnce => {
                self.inflight.remove(&packet_id);
                true
            }
            _ => false,
        }
    }

    /// The client answered a QoS 2 PUBLISH with PUBREC.
    pub(crate) fn received(&mut self, packet_id: PacketId, reason_code: ReasonCode) -> Received {
        match self.inflight.get_mut(&packet_id) {
            Some(Inflight::Publish { queued, .. }) if queued.qos == QoS::ExactlyOnce => {
                if reason_code.is_error() {
                    self.inflight.remove(&packet_id);
                    return Received::Ended;
                }
                self.inflight.insert(packet_id, Inflight::Release { sent: false });
                Received::Release
            }
            // A PUBREC repeated after a reconnection: the PUBREL is sent again.
            Some(Inflight::Release { sent }) => {
                *sent = false;
                Received::Release
            }
            _ => Received::Unknown,
        }
    }

    /// The client completed a QoS 2 exchange (PUBCOMP). Returns whether one was waiting.
    pub(crate) fn completed(&mut self, packet_id: PacketId) -> bool {
        match self.inflight.get(&packet_id) {
            Some(Inflight::Release { .. }) => {
                self.inflight.remove(&packet_id);
                true
            }
            _ => false,
        }
    }

    /// The connection left: QoS 0 messages are not kept for an offline session.
    pub(crate) fn went_offline(&mut self) {
        self.pending_qos0.clear();
    }

    /// The QoS 1 and 2 messages waiting for the client, oldest first: those sent and not yet
    /// acknowledged, then those not sent (what a session kept for another node holds).
    pub(crate) fn waiting(&self) -> Vec<Queued> {
        let inflight = self.inflight.values().filter_map(|inflight| match inflight {
            Inflight::Publish { queued, .. } => Some(queued.clone()),
            Inflight::Release { .. } => None,
        });
        inflight.chain(self.pending.iter().map(|waiting| waiting.queued.clone())).collect()
    }

    /// How many messages wait: (queued, in flight).
    pub(crate) fn backlog(&self) -> (usize, usize) {
        (self.pending.len() + self.pending_qos0.len(), self.inflight.len())
    }

    fn allocate_packet_id(&mut self) -> Option<PacketId> {
        for _ in 0..u16::MAX {
            let candidate = self.next_packet_id;
            self.next_packet_id = candidate.checked_add(1).unwrap_or(1);
            if let Some(packet_id) = PacketId::new(candidate)
                && !self.inflight.contains_key(&packet_id)
            {
                return Some(packet_id);
            }
        }
        None
    }
}

/// The PUBLISH delivering `queued`.
fn publish(queued: &Queued, packet_id: Option<PacketId>, dup: bool, version: ProtocolVersion, now: Instant) -> Publish {
    let message = &queued.message;
    let properties = match version {
        ProtocolVersion::V311 => Properties::default(),
        ProtocolVersion::V5 => {
            let mut properties = message.properties.clone();
            properties.subscription_identifiers.clone_from(&queued.identifiers);
            properties.message_expiry_interval = message.expires_at.map(|deadline| remaining_seconds(deadline, now));
            properties
        }
    };
    Publish {
        dup: dup && queued.qos != QoS::AtMostOnce,
        qos: queued.qos,
        retain: queued.retain,
        topic: Some(message.topic.clone()),
        packet_id,
        properties,
        payload: message.payload.clone(),
    }
}

/// The expiry interval left, rounded up, at least 1 (a message about to expire is still sent as
/// expiring rather than as everlasting).
fn remaining_seconds(deadline: Instant, now: Instant) -> u32 {
    let left = deadline.saturating_duration_since(now);
    let seconds = left.as_secs() + u64::from(left.subsec_nanos() > 0);
    u32::try_from(seconds.max(1)).unwrap_or(u32::MAX)
}

/// Whether `packet` is within the client's Maximum Packet Size; a message that is not is dropped
/// for this client (MQTT 5 3.1.2.11.4) and counted.
fn fits(packet: &Packet, limits: DeliveryLimits, counters: &Counters) -> bool {
    match encoded_len(packet, limits.version) {
        Ok(size) if size <= limits.maximum_packet_size => true,
        Ok(_) => {
            counters.dropped_too_large.fetch_add(1, Ordering::Relaxed);
            false
        }
        Err(error) => {
            tracing::debug!(%error, "a message cannot be encoded for this client; dropped");
            counters.dropped_too_large.fetch_add(1, Ordering::Relaxed);
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use certfleet_mqtt::TopicName;
    use certfleet_pki::CertificateId;
    use certfleet_registry::AccountId;

    fn queued(qos: QoS, size: usize) -> Queued {
        Queued {
            message: Arc::new(Message {
                topic: TopicName::new("t").unwrap(),
                payload: Bytes::from(vec![b'x'; size - 1]),
                qos,
                retain: false,
                properties: Properties::default(),
                expires_at: None,
                publisher: None,
            }),
            qos,
            retain: false,
            identifiers: Vec::new(),
        }
    }

    fn connected_session(account_bytes: Arc<AtomicUsize>) -> SessionState {
        let identity = Arc::new(Identity {
            account: AccountId::parse("111111111111").unwrap(),
            certificate_id: CertificateId::parse(&format!("{:064x}", 1)).unwrap(),
            ca_certificate_id: None,
            not_after: time::OffsetDateTime::now_utc(),
        });
        let (kick, _) = oneshot::channel();
        let attached =
            Attached { connection: 1, kick: Some(kick), will: None, wake: Arc::new(Notify::new()), claim: 1 };
        SessionState::new(identity, Some(attached), Duration::from_secs(60), account_bytes)
    }

    #[test]
    fn qos0_messages_make_room_first_and_every_byte_is_given_back() {
        let now = Instant::now();
        let account = Arc::new(AtomicUsize::new(0));
        let limits = QueueLimits { queued: 100, qos0: 100, bytes: 300, account_bytes: 500 };
        let mut state = connected_session(account.clone());
        for _ in 0..3 {
            assert_eq!(state.enqueue(queued(QoS::AtMostOnce, 100), limits, now), Ok(0));
        }
        assert_eq!(state.enqueue(queued(QoS::AtMostOnce, 100), limits, now), Err(Dropped::SessionBytes));
        // Each QoS 1 message pushes out one QoS 0 message; once none is left, it is dropped.
        for _ in 0..3 {
            assert_eq!(state.enqueue(queued(QoS::AtLeastOnce, 100), limits, now), Ok(1));
        }
        assert_eq!(state.enqueue(queued(QoS::AtLeastOnce, 100), limits, now), Err(Dropped::SessionBytes));
        assert_eq!((state.queued_bytes(), account.load(Ordering::Relaxed)), (300, 300));

        // Another session of the account runs into the account's bound.
        let mut other = connected_session(account.clone());
        assert_eq!(other.enqueue(queued(QoS::AtLeastOnce, 200), limits, now), Ok(0));
        assert_eq!(other.enqueue(queued(QoS::AtLeastOnce, 1), limits, now), Err(Dropped::AccountBytes));
        assert_eq!(other.queued_bytes(), 200);

        // Sent, in flight, acknowledged or ended: the bytes come back exactly.
        let delivery =
            DeliveryLimits { version: ProtocolVersion::V5, receive_maximum: 10, maximum_packet_size: 1 << 20 };
        let packets = state.outgoing(delivery, now, 10, &Counters::default());
        assert_eq!(packets.len(), 3);
        assert_eq!(state.queued_bytes(), 300, "in flight still counts");
        let Packet::Publish(first) = &packets[0] else { panic!("{:?}", packets[0]) };
        assert!(state.acknowledged(first.packet_id.unwrap()));
        assert_eq!(state.queued_bytes(), 200);
        drop(state);
        assert_eq!(account.load(Ordering::Relaxed), 200, "an ended session gives back all it held");
        drop(other);
        assert_eq!(account.load(Ordering::Relaxed), 0);
    }
}
