//! The broker: per account, the sessions by client ID, the subscription tree and the retained
//! messages; the router the fabric delivers to; attaching and detaching connections (takeover,
//! clean start, session expiry, wills and their delay); and the [`Authorizer`] hook.
//!
//! **Topic spaces are per account.** Everything is kept in a [`Space`] per account, so a device
//! of one account can neither see nor name another account's topics, retained messages or client
//! IDs.
//!
//! **Locks.** A space's state sits behind one `std::sync::Mutex`, a session's behind its own, each
//! held for a few map operations and never across an `.await`. When both are needed the space is
//! locked first. Attaching, detaching and the offline timers take both, so they are serialized
//! per account; routing takes the space lock to match and then each session's lock to queue. No
//! lock is held while calling the fabric, the authorizer or the observer.

mod retained;
mod state;
mod subscriptions;
mod tap;

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::Duration;

use certfleet_mqtt::{RetainHandling, TopicFilter, TopicName};
use certfleet_registry::AccountId;
use tokio::sync::{Notify, oneshot};
use tokio::time::Instant;

use crate::events::{ConnectionObserver, EventSink};
use crate::fabric::{
    ClientClaim, Delivery, Fabric, FabricError, Message, NodeId, RoutedMessage, Router, SavedMessage,
    SavedSubscription, SessionSnapshot,
};
use crate::live::LiveSessions;
use crate::model::{ConnectRefusal, Identity};
pub(crate) use retained::Kept;
use retained::{Retained, RetainedLimits};
pub(crate) use state::{
    Attached, DeliveryLimits, Dropped, Kick, QueueLimits, Queued, Received, Session, SessionState, Will,
};
pub(crate) use subscriptions::SubscriptionOptions;
use subscriptions::{Scope, Subscriptions};
pub(crate) use tap::now_ms;
pub use tap::{PublishTap, Published};

/// This node's broker totals over every account (gauges in `/metrics`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct BrokerTotals {
    pub retained_messages: usize,
    pub retained_bytes: usize,
    pub offline_sessions: usize,
    pub queued_bytes: usize,
}

/// Settings of the broker and its MQTT sessions. The defaults are AWS IoT Core's where it has one.
#[derive(Clone, Debug)]
pub struct BrokerConfig {
    /// This node's name among the nodes sharing the fabric.
    pub node: NodeId,
    /// A connection that sends no CONNECT within this time is closed. Default 10 s.
    pub connect_timeout: Duration,
    /// The largest packet accepted, fixed header included; larger ones close the connection (MQTT 5:
    /// DISCONNECT 0x95), and MQTT 5 clients are told in CONNACK. Default 146 KiB, so that a
    /// message at the size limit fits with its topic and properties.
    pub max_packet_size: usize,
    /// The largest payload accepted in a PUBLISH (or a will); larger ones close the connection
    /// (MQTT 5: DISCONNECT 0x95). Default 128 KiB.
    pub message_size_limit: usize,
    /// The longest keep-alive; a client asking for 0 or more gets this (MQTT 5 clients are told
    /// with Server Keep Alive). Default 1200 s.
    pub max_keep_alive: Duration,
    /// The longest session expiry; MQTT 3.1.1 persistent sessions (clean session 0) get this.
    /// Default 1 hour.
    pub max_session_expiry: Duration,
    /// QoS 1 and 2 messages one session may queue, offline or behind a slow connection; more are
    /// dropped and counted. Default 1000.
    pub max_queued_messages: usize,
    /// Bytes (payload, topic and properties) of the messages waiting for one session, queued or
    /// in flight; a QoS 1 or 2 message past it first drops the session's queued QoS 0 messages,
    /// then is dropped and counted. Default 8 MiB.
    pub max_queued_bytes: usize,
    /// Bytes of the messages waiting for all the sessions of one account on this node; more are
    /// dropped and counted. Default 256 MiB.
    pub max_account_queued_bytes: usize,
    /// Persistent sessions one account may keep offline on this node; past it, the one offline
    /// longest ends (its will published) and is counted. Default 10,000.
    pub max_offline_sessions: usize,
    /// QoS 0 messages queued for a connected client that reads slower than they come; more are
    /// dropped and counted. Default 1000.
    pub outbound_capacity: usize,
    /// The server's Receive Maximum: QoS 2 messages a client may have unreleased at once
    /// (exceeding it is DISCONNECT 0x93). Default 100.
    pub receive_maximum: u16,
    /// How many QoS 1 and 2 messages are sent unacknowledged to a client: MQTT 3.1.1 clients get
    /// this many, MQTT 5 clients the lower of this and their Receive Maximum. Default 100.
    pub client_receive_maximum: u16,
    /// Topic aliases an MQTT 5 client may set (Topic Alias Maximum). Default 10.
    pub topic_alias_maximum: u16,
    /// The longest client ID accepted. Default 128 bytes.
    pub max_client_id_len: usize,
    /// Subscriptions one session may hold; more are refused in SUBACK. Default 50.
    pub max_subscriptions: usize,
    /// Retained messages one account may hold; a retained PUBLISH past it is refused (MQTT 5:
    /// 0x97 Quota exceeded) unless it replaces or deletes one. Default 10,000.
    pub max_retained_messages: usize,
    /// Bytes (payload, topic and properties) of the retained messages one account may hold; a
    /// retained PUBLISH past it is refused the same way. Default 64 MiB.
    pub max_retained_bytes: usize,
}

impl Default for BrokerConfig {
    fn default() -> Self {
        BrokerConfig {
            node: NodeId::local(),
            connect_timeout: Duration::from_secs(10),
            max_packet_size: 146 * 1024,
            message_size_limit: 128 * 1024,
            max_keep_alive: Duration::from_secs(1200),
            max_session_expiry: Duration::from_secs(3600),
            max_queued_messages: 1000,
            max_queued_bytes: 8 * 1024 * 1024,
            max_account_queued_bytes: 256 * 1024 * 1024,
            max_offline_sessions: 10_000,
            outbound_capacity: 1000,
            receive_maximum: 100,
            client_receive_maximum: 100,
            topic_alias_maximum: 10,
            max_client_id_len: 128,
            max_subscriptions: 50,
            max_retained_messages: 10_000,
            max_retained_bytes: 64 * 1024 * 1024,
        }
    }
}

/// Decides what an authenticated device may do. The policy engine implements it; [`AllowAll`]
/// lets everything through.
pub trait Authorizer: Send + Sync {
    /// Whether the device may connect with `client_id` (refused: CONNACK Not authorized).
    fn connect(&self, identity: &Identity, client_id: &str) -> bool;

    /// Whether the device may publish to `topic` (and retain there). Also asked for the will, at
    /// CONNECT.
    fn publish(&self, identity: &Identity, client_id: &str, topic: &str, retain: bool) -> bool;

    /// Whether the device may subscribe to `filter` (refused: SUBACK Not authorized).
    fn subscribe(&self, identity: &Identity, client_id: &str, filter: &str) -> bool;

    /// Whether a message published to `topic` may be delivered to the device (refused: skipped).
    fn receive(&self, identity: &Identity, client_id: &str, topic: &str) -> bool;
}

/// Allows everything (until policies are evaluated).
#[derive(Clone, Copy, Debug, Default)]
pub struct AllowAll;

impl Authorizer for AllowAll {
    fn connect(&self, _identity: &Identity, _client_id: &str) -> bool {
        true
    }

    fn publish(&self, _identity: &Identity, _client_id: &str, _topic: &str, _retain: bool) -> bool {
        true
    }

    fn subscribe(&self, _identity: &Identity, _client_id: &str, _filter: &str) -> bool {
        true
    }

    fn receive(&self, _identity: &Identity, _client_id: &str, _topic: &str) -> bool {
        true
    }
}

/// The broker's counters, cheap to bump from any task.
#[derive(Debug, Default)]
pub struct Counters {
    /// Messages routed on this node (from here or from another node).
    pub routed: AtomicU64,
    /// Messages queued for a subscriber.
    pub queued: AtomicU64,
    /// QoS 0 messages for offline sessions (never kept).
    pub dropped_offline_qos0: AtomicU64,
    /// QoS 0 messages for a client that reads too slowly.
    pub dropped_slow_qos0: AtomicU64,
    /// QoS 1 and 2 messages for a session whose queue is full.
    pub dropped_queue_full: AtomicU64,
    /// Messages that expired before they could be sent.
    pub dropped_expired: AtomicU64,
    /// Messages larger than the subscriber's Maximum Packet Size.
    pub dropped_too_large: AtomicU64,
    /// Deliveries the authorizer refused.
    pub dropped_not_authorized: AtomicU64,
    /// Retained messages refused: the account holds the maximum number.
    pub retained_refused_count: AtomicU64,
    /// Retained messages refused: the account holds the maximum bytes.
    pub retained_refused_bytes: AtomicU64,
    /// Messages dropped: the session's queue held its maximum bytes.
    pub dropped_session_bytes: AtomicU64,
    /// Messages dropped: the account's sessions held their maximum bytes.
    pub dropped_account_bytes: AtomicU64,
    /// Queued QoS 0 messages dropped to make room for a QoS 1 or 2 message.
    pub dropped_qos0_for_room: AtomicU64,
    /// Bytes of the messages dropped by any byte bound of a session's queue.
    pub dropped_queue_bytes: AtomicU64,
    /// Offline sessions ended early: the account kept the maximum number offline.
    pub offline_sessions_evicted: AtomicU64,
    /// Connections closed because another took their client ID.
    pub takeovers: AtomicU64,
    /// Wills published.
    pub wills: AtomicU64,
    /// Messages the fabric could not hand to the other nodes (its outbound queue was full).
    pub fabric_refused: AtomicU64,
    /// Sessions ended here because another node took their client ID.
    pub moved_away: AtomicU64,
    /// CONNECTs of authenticated devices refused, one counter per [`ConnectRefusal::ALL`].
    connect_refusals: [AtomicU64; ConnectRefusal::ALL.len()],
}

impl Counters {
    /// Counts a refused CONNECT.
    pub(crate) fn connect_refused(&self, refusal: ConnectRefusal) {
        if let Some(index) = ConnectRefusal::ALL.iter().position(|known| *known == refusal) {
            self.connect_refusals[index].fetch_add(1, Ordering::Relaxed);
        }
    }

    /// How many CONNECTs were refused for each reason so far.
    pub fn connect_refusals(&self) -> Vec<(ConnectRefusal, u64)> {
        ConnectRefusal::ALL
            .iter()
            .zip(&self.connect_refusals)
            .map(|(refusal, count)| (*refusal, count.load(Ordering::Relaxed)))
            .collect()
    }
}

/// One account's topic space.
struct Space {
    state: Mutex<SpaceState>,
    /// Bytes of the messages waiting for the account's sessions (the sum of their charges).
    queued_bytes: Arc<AtomicUsize>,
}

struct SpaceState {
    subscriptions: Subscriptions,
    sessions: HashMap<String, SessionEntry>,
    /// How many entries of `sessions` are offline.
    offline: usize,
    /// The sessions in the order they went offline, with the epoch they went offline in; an entry
    /// whose session came back (or ended) since is stale and skipped. Compacted when stale
    /// entries dominate, so it stays within a small multiple of `offline`.
    offline_order: VecDeque<(Weak<Session>, u64)>,
    retained: Retained,
    /// The lifecycle events' `versionNumber`, per client ID: on one node, counted here; in a
    /// cluster, the highest claim revision this node has heard of.
    versions: HashMap<String, u64>,
}

impl SpaceState {
    /// Adds or replaces a session's entry, keeping `offline` exact.
    fn insert_session(&mut self, client_id: &str, entry: SessionEntry) {
        let online = entry.online;
        if let Some(old) = self.sessions.insert(client_id.to_owned(), entry)
            && !old.online
        {
            self.offline -= 1;
        }
        if !online {
            self.offline += 1;
        }
    }

    /// Removes a session's entry, keeping `offline` exact.
    fn remove_session(&mut self, client_id: &str) {
        if let Some(old) = self.sessions.remove(client_id)
            && !old.online
        {
            self.offline -= 1;
        }
    }

    /// Marks a session's entry offline, keeping `offline` exact.
    fn mark_offline(&mut self, client_id: &str) {
        if let Some(entry) = self.sessions.get_mut(client_id)
            && entry.online
        {
            entry.online = false;
            self.offline += 1;
        }
    }

    /// Whether `session`, offline since `epoch`, is still this space's offline session.
    fn offline_since(&self, session: &Arc<Session>, epoch: u64) -> bool {
        self.sessions.get(&session.client_id).is_some_and(|entry| Arc::ptr_eq(&entry.session, session) && !entry.online)
            && session.lock().epoch == epoch
    }

    /// Ends an offline session (its expiry came, or it was evicted): subscriptions and entry
    /// removed, its pending will returned to be published.
    fn end_offline(&mut self, session: &Arc<Session>, state: &mut SessionState) -> Option<Will> {
        for filter in state.subscriptions.values() {
            self.subscriptions.remove(&session.client_id, filter);
        }
        if self.sessions.get(&session.client_id).is_some_and(|entry| Arc::ptr_eq(&entry.session, session)) {
            self.remove_session(&session.client_id);
        }
        state.pending_will.take().map(|(will, _)| will)
    }
}

/// Why the broker logs a warning; each is logged at most once per [`WARN_INTERVAL`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Warning {
    RetainedCount = 0,
    RetainedBytes,
    SlowQos0,
    QueueFull,
    SessionBytes,
    AccountBytes,
    OfflineEvicted,
}

/// How often one cause of warning is logged at most (the counters count every occurrence).
const WARN_INTERVAL: Duration = Duration::from_secs(60);

/// One warning's gate: when it may be logged next, in milliseconds since the broker started.
#[derive(Debug, Default)]
struct Gate {
    next: AtomicU64,
}

struct SessionEntry {
    session: Arc<Session>,
    online: bool,
}

/// How long a publisher waits for room in a congested session before counting its client as
/// stalled (and dropping its messages past the bound, as without flow control).
pub(crate) const ROOM_WAIT: Duration = Duration::from_secs(2);

/// Waits until every session of `congested` has room again (its queue half empty, or its client
/// gone), at most until `deadline`; a session still full then is marked stalled.
pub(crate) async fn wait_for_room(congested: &[Arc<Session>], limits: QueueLimits, deadline: Instant) {
    for session in congested {
        loop {
            let notified = session.room.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            session.pressured.store(true, Ordering::Relaxed);
            if !session.lock().congested(limits) {
                break;
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                if !session.stalled.swap(true, Ordering::Relaxed) {
                    tracing::info!(client_id = %session.client_id, "subscriber reads too slowly: publishers stop waiting for it");
                }
                return;
            }
        }
    }
}

/// Whether a session kept by another node may be resumed by a connection: it does not start
/// clean, this node holds no session for the client ID, the same certificate made it, and it has
/// not expired.
fn resumable(
    kept: &SessionSnapshot,
    identity: &Identity,
    clean_start: bool,
    client_id: &str,
    existed_here: bool,
) -> bool {
    let expired = kept.expires_at_ms.is_some_and(|at| {
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
        u128::from(at) <= now.as_millis()
    });
    let same_certificate = kept.certificate_id == identity.certificate_id.as_str();
    if !same_certificate && !clean_start {
        tracing::info!(client_id, "kept session not resumed: another certificate owns it");
    }
    !clean_start && !existed_here && same_certificate && !expired
}

/// How often at most the persistent sessions that changed are written to the cluster's store.
const KEEP_INTERVAL: Duration = Duration::from_millis(20);

/// Client IDs whose version numbers are remembered; past it, the map starts over (version
/// numbers then restart for client IDs not seen since, a rare and harmless reordering hint).
const MAX_VERSIONS: usize = 1_000_000;

impl Space {
    fn lock(&self) -> MutexGuard<'_, SpaceState> {
        self.state.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// What became of a message published on this node.
pub(crate) struct Outcome {
    /// Flow control, as an explicit value: the sessions of this node whose queues the message
    /// found three quarters full; the publisher's connection waits for room in them before it
    /// reads its next packet ([`wait_for_room`]).
    pub(crate) congested: Vec<Arc<Session>>,
    /// Whether the fabric took the message for the other nodes.
    pub(crate) carried: Result<(), FabricError>,
}

/// The broker of one gateway node.
pub struct Broker {
    pub(crate) config: BrokerConfig,
    pub(crate) fabric: Arc<dyn Fabric>,
    pub(crate) observer: Arc<dyn ConnectionObserver>,
    pub(crate) authorizer: Arc<dyn Authorizer>,
    pub(crate) live: Arc<LiveSessions>,
    counters: Counters,
    /// When the broker started: the clock of `gates`.
    started: Instant,
    gates: [Gate; 7],
    spaces: Mutex<HashMap<AccountId, Arc<Space>>>,
    next_connection: AtomicU64,
    this: Weak<Broker>,
    /// Sees the messages devices publish on this node (the rules engine's queue).
    tap: Option<Arc<dyn PublishTap>>,
    /// The persistent sessions to write to the cluster's store (a fabric that
    /// [keeps sessions](Fabric::keeps_sessions)), by account and client ID; bounded by the
    /// sessions of this node.
    to_keep: Mutex<HashMap<(AccountId, String), Keep>>,
    /// Wakes the task that writes `to_keep`.
    keep_now: Arc<Notify>,
}

/// What the cluster's store is told of a session.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Keep {
    /// Its state now: a snapshot if this node holds it, else that it ended.
    Write,
    /// Nothing: another node took it over and writes it now.
    Leave,
}

/// A connection asking for its session, once CONNECT is accepted.
pub(crate) struct Attach<'a> {
    pub(crate) identity: &'a Arc<Identity>,
    pub(crate) client_id: &'a str,
    pub(crate) clean_start: bool,
    /// The Session Expiry Interval granted.
    pub(crate) expiry: Duration,
    pub(crate) will: Option<Will>,
    pub(crate) connection: u64,
    /// The claim's revision in the cluster's order ([`Fabric::reserve_client_id`]); `None` on
    /// one node.
    pub(crate) revision: Option<u64>,
    /// The session another node kept for this client ID ([`Fabric::load_session`]), resumed
    /// when this node holds none and the connection does not start clean.
    pub(crate) kept: Option<SessionSnapshot>,
}

/// The session a connection serves.
pub(crate) struct Attachment {
    pub(crate) session: Arc<Session>,
    pub(crate) session_present: bool,
    /// Fires when the broker closes the connection (takeover).
    pub(crate) kicked: oneshot::Receiver<Kick>,
    /// Notified when something is queued for the connection.
    pub(crate) wake: Arc<Notify>,
    /// The lifecycle events' `versionNumber` of this connection.
    pub(crate) version_number: u64,
}

/// How a connection leaves its session.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Departure {
    pub(crate) publish_will: bool,
    /// A new Session Expiry Interval (MQTT 5 DISCONNECT).
    pub(crate) expiry: Option<Duration>,
}

/// One filter of a SUBSCRIBE, authorized.
pub(crate) struct SubscribeRequest {
    pub(crate) filter: TopicFilter,
    pub(crate) options: SubscriptionOptions,
    pub(crate) retain_handling: RetainHandling,
}

/// What became of one filter of a SUBSCRIBE.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Subscribed {
    New,
    Replaced,
    /// The session holds the maximum number of subscriptions.
    QuotaExceeded,
}

impl Broker {
    /// The broker of a node on `fabric`: it tells `observer` of connections, asks `authorizer`,
    /// keeps `live` (the node's live sessions) and hands each device message to `tap` (the
    /// rules engine), if any.
    pub fn new(
        config: BrokerConfig,
        fabric: Arc<dyn Fabric>,
        observer: Arc<dyn ConnectionObserver>,
        authorizer: Arc<dyn Authorizer>,
        live: Arc<LiveSessions>,
        tap: Option<Arc<dyn PublishTap>>,
    ) -> Arc<Self> {
        let broker = Arc::new_cyclic(|this| Broker {
            config,
            fabric,
            observer,
            authorizer,
            live,
            counters: Counters::default(),
            started: Instant::now(),
            gates: Default::default(),
            spaces: Mutex::new(HashMap::new()),
            next_connection: AtomicU64::new(0),
            this: this.clone(),
            tap,
            to_keep: Mutex::new(HashMap::new()),
            keep_now: Arc::new(Notify::new()),
        });
        let router: Weak<dyn Router> = broker.this.clone();
        broker.fabric.attach(&broker.config.node, router);
        if broker.fabric.keeps_sessions() {
            let (this, keep_now) = (broker.this.clone(), broker.keep_now.clone());
            tokio::spawn(async move {
                loop {
                    keep_now.notified().await;
                    let Some(broker) = this.upgrade() else { return };
                    broker.keep_sessions();
                    drop(broker);
                    // Changes coming meanwhile are written together: a session receiving a
                    // stream of messages while offline is written at most this often.
                    tokio::time::sleep(KEEP_INTERVAL).await;
                }
            });
        }
        broker
    }

    pub fn config(&self) -> &BrokerConfig {
        &self.config
    }

    pub fn counters(&self) -> &Counters {
        &self.counters
    }

    /// How many sessions (connected or kept offline) an account has on this node.
    pub fn session_count(&self, account: &AccountId) -> usize {
        self.existing_space(account).map_or(0, |space| space.lock().sessions.len())
    }

    /// Whether this node holds a session (connected or offline) for `client_id` in `account`.
    pub(crate) fn holds_session(&self, account: &AccountId, client_id: &str) -> bool {
        self.existing_space(account).is_some_and(|space| space.lock().sessions.contains_key(client_id))
    }

    /// How many retained messages this node keeps for an account.
    pub fn retained_count(&self, account: &AccountId) -> usize {
        self.existing_space(account).map_or(0, |space| space.lock().retained.len())
    }

    /// The bytes of the retained messages this node keeps for an account.
    pub fn retained_bytes(&self, account: &AccountId) -> usize {
        self.existing_space(account).map_or(0, |space| space.lock().retained.bytes())
    }

    /// How many sessions of an account this node keeps offline.
    pub fn offline_session_count(&self, account: &AccountId) -> usize {
        self.existing_space(account).map_or(0, |space| space.lock().offline)
    }

    /// The bytes of the messages waiting for an account's sessions on this node.
    pub fn queued_bytes(&self, account: &AccountId) -> usize {
        self.existing_space(account).map_or(0, |space| space.queued_bytes.load(Ordering::Relaxed))
    }

    /// The bytes of the messages waiting for one session (queued and in flight), if it exists.
    pub fn session_queued_bytes(&self, account: &AccountId, client_id: &str) -> Option<usize> {
        let space = self.existing_space(account)?;
        let session = space.lock().sessions.get(client_id).map(|entry| entry.session.clone())?;
        let bytes = session.lock().queued_bytes();
        Some(bytes)
    }

    /// This node's totals over every account: retained messages, their bytes, offline
    /// sessions, and the bytes waiting in session queues.
    pub fn totals(&self) -> BrokerTotals {
        let spaces: Vec<Arc<Space>> =
            self.spaces.lock().unwrap_or_else(std::sync::PoisonError::into_inner).values().cloned().collect();
        let mut totals = BrokerTotals::default();
        for space in spaces {
            totals.queued_bytes += space.queued_bytes.load(Ordering::Relaxed);
            let state = space.lock();
            totals.retained_messages += state.retained.len();
            totals.retained_bytes += state.retained.bytes();
            totals.offline_sessions += state.offline;
        }
        totals
    }

    /// Whether a warning of this cause may be logged now (at most once per [`WARN_INTERVAL`]).
    fn warn_now(&self, warning: Warning) -> bool {
        // One gate per variant; a variant without one is simply not rate-limited.
        let Some(gate) = self.gates.get(warning as usize) else { return true };
        let now = u64::try_from(self.started.elapsed().as_millis()).unwrap_or(u64::MAX);
        let next = gate.next.load(Ordering::Relaxed);
        let interval = u64::try_from(WARN_INTERVAL.as_millis()).unwrap_or(u64::MAX);
        now >= next
            && gate
                .next
                .compare_exchange(next, now.saturating_add(interval), Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
    }

    /// Whether `account` may retain `message` now: `Err` with why not (the account's count or
    /// bytes of retained messages would pass the bound), counted and logged. Replacing a
    /// message within the bounds and deleting one (empty payload) are always admitted. Asked on
    /// the node the PUBLISH arrived at, before routing; every node's store checks again.
    pub(crate) fn admit_retained(&self, account: &AccountId, message: &Message) -> Result<(), Kept> {
        let space = self.space(account);
        let mut state = space.lock();
        let mut admitted = state.retained.admits(message);
        if admitted.is_err() && state.retained.purge_expired(Instant::now()) {
            admitted = state.retained.admits(message);
        }
        drop(state);
        if let Err(refused) = admitted {
            self.retained_refused(account, refused);
        }
        admitted
    }

    fn retained_refused(&self, account: &AccountId, refused: Kept) {
        let (counter, warning, limit) = match refused {
            Kept::TooMany => {
                (&self.counters.retained_refused_count, Warning::RetainedCount, self.config.max_retained_messages)
            }
            Kept::TooLarge => {
                (&self.counters.retained_refused_bytes, Warning::RetainedBytes, self.config.max_retained_bytes)
            }
            Kept::Stored | Kept::Deleted => return,
        };
        let refused_so_far = counter.fetch_add(1, Ordering::Relaxed) + 1;
        if self.warn_now(warning) {
            tracing::warn!(%account, why = ?refused, limit, refused_so_far, "retained message refused: the account holds the maximum");
        }
    }

    pub(crate) fn connection_number(&self) -> u64 {
        self.next_connection.fetch_add(1, Ordering::Relaxed) + 1
    }

    pub(crate) fn queue_limits(&self) -> QueueLimits {
        QueueLimits {
            queued: self.config.max_queued_messages,
            qos0: self.config.outbound_capacity,
            bytes: self.config.max_queued_bytes,
            account_bytes: self.config.max_account_queued_bytes,
        }
    }

    /// Hands a device's message to the tap, if any: called once, on the node where the PUBLISH
    /// arrived, never per fabric delivery.
    pub(crate) fn tap(&self, identity: &Identity, client_id: &str, message: &Arc<Message>) {
        if let Some(tap) = &self.tap
            && tap.wants(&identity.account, message.topic.as_str())
        {
            tap.published(Published {
                account: identity.account.clone(),
                client_id: client_id.to_owned(),
                principal: Some(identity.certificate_id.clone()),
                message: message.clone(),
                received_ms: tap::now_ms(),
                depth: 0,
            });
        }
    }

    /// Whether anyone, on any node, subscribes to a filter matching `topic` in `account`: the
    /// lifecycle events are built only when someone will read them.
    pub(crate) fn has_subscriber(&self, account: &AccountId, topic: &str) -> bool {
        Router::has_subscriber(self, account, topic) || self.fabric.has_subscriber(account, topic)
    }

    /// Publishes a server-originated message in `account`'s topic space, on every node (no flow
    /// control: the server's own messages are few). A message the fabric could not hand to the
    /// network reached this node's subscribers only; it is counted.
    pub(crate) fn publish(&self, account: &AccountId, message: Arc<Message>) {
        if let Err(error) = self.publish_with_backpressure(account, message).carried {
            tracing::debug!(%account, %error, "a server message reached this node only");
        }
    }

    /// Publishes a device's message, and returns the sessions on this node whose queues it
    /// found three quarters full: the publisher's connection waits for room in them
    /// ([`wait_for_room`]) before it reads its next packet. That is MQTT's flow control carried
    /// across the broker: a subscriber that reads slower than publishers write slows them down
    /// (TCP pushes back to the devices) instead of the broker accepting messages only to drop
    /// them. This node's subscribers get the message in the caller's task; the fabric carries
    /// it to the other nodes, or says it could not (counted).
    pub(crate) fn publish_with_backpressure(&self, account: &AccountId, message: Arc<Message>) -> Outcome {
        let routed = RoutedMessage { account: account.clone(), message };
        let delivery = if self.fabric.shares_groups() { Delivery::Plain } else { Delivery::Everyone };
        let congested = self.route_here(&routed, delivery);
        let carried = self.fabric.publish(&self.config.node, routed);
        if carried.is_err() {
            self.counters.fabric_refused.fetch_add(1, Ordering::Relaxed);
        }
        Outcome { congested, carried }
    }

    fn publish_wills(&self, account: &AccountId, wills: Vec<Arc<Message>>) {
        for will in wills {
            self.counters.wills.fetch_add(1, Ordering::Relaxed);
            self.publish(account, will);
        }
    }

    /// Marks a session to be written to the cluster's store (nothing without such a store).
    fn keep(&self, account: &AccountId, client_id: &str, keep: Keep) {
        if !self.fabric.keeps_sessions() {
            return;
        }
        self.to_keep
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .insert((account.clone(), client_id.to_owned()), keep);
        self.keep_now.notify_one();
    }

    /// Writes the marked sessions to the cluster's store now: a persistent session's
    /// subscriptions and, while it is offline, the messages waiting for it; a session that
    /// ended, deleted. Also called when the node shuts down, after its sessions left.
    pub(crate) fn keep_sessions(&self) {
        let marked = std::mem::take(&mut *self.to_keep.lock().unwrap_or_else(std::sync::PoisonError::into_inner));
        for ((account, client_id), keep) in marked {
            if keep == Keep::Leave {
                continue;
            }
            let snapshot = self.snapshot(&account, &client_id);
            self.fabric.save_session(&account, &client_id, snapshot);
        }
    }

    /// The snapshot of a persistent session this node holds; `None` if it holds none (or one
    /// that ends with its connection).
    fn snapshot(&self, account: &AccountId, client_id: &str) -> Option<SessionSnapshot> {
        let space = self.existing_space(account)?;
        let space_state = space.lock();
        let session = space_state.sessions.get(client_id)?.session.clone();
        let state = session.lock();
        if state.expiry.is_zero() {
            return None;
        }
        let subscriptions = state
            .subscriptions
            .values()
            .filter_map(|filter| {
                let options = space_state.subscriptions.options(client_id, filter)?;
                Some(SavedSubscription {
                    filter: filter.clone(),
                    qos: options.qos,
                    no_local: options.no_local,
                    retain_as_published: options.retain_as_published,
                    identifier: options.identifier,
                })
            })
            .collect();
        let offline = state.attached.is_none();
        let now = Instant::now();
        let expires_at_ms = state.expires_at.filter(|_| offline).map(|deadline| {
            let left = deadline.saturating_duration_since(now);
            let at = std::time::SystemTime::now() + left;
            at.duration_since(std::time::UNIX_EPOCH).map_or(0, |at| u64::try_from(at.as_millis()).unwrap_or(u64::MAX))
        });
        let messages = if offline {
            state
                .waiting()
                .into_iter()
                .map(|queued| SavedMessage {
                    message: queued.message,
                    qos: queued.qos,
                    retain: queued.retain,
                    identifiers: queued.identifiers,
                })
                .collect()
        } else {
            Vec::new()
        };
        Some(SessionSnapshot {
            certificate_id: state.identity.certificate_id.to_string(),
            expiry: state.expiry,
            expires_at_ms,
            subscriptions,
            messages,
        })
    }

    fn space(&self, account: &AccountId) -> Arc<Space> {
        let mut spaces = self.spaces.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(space) = spaces.get(account) {
            return space.clone();
        }
        let interest = {
            let fabric = self.fabric.clone();
            let account = account.clone();
            Arc::new(move |filter: &TopicFilter, wanted: bool| fabric.interest(&account, filter, wanted))
        };
        let space = Arc::new(Space {
            state: Mutex::new(SpaceState {
                subscriptions: Subscriptions::with_interest(interest),
                sessions: HashMap::new(),
                offline: 0,
                offline_order: VecDeque::new(),
                retained: Retained::new(RetainedLimits {
                    messages: self.config.max_retained_messages,
                    bytes: self.config.max_retained_bytes,
                }),
                versions: HashMap::new(),
            }),
            queued_bytes: Arc::new(AtomicUsize::new(0)),
        });
        spaces.insert(account.clone(), space.clone());
        space
    }

    fn existing_space(&self, account: &AccountId) -> Option<Arc<Space>> {
        self.spaces.lock().unwrap_or_else(std::sync::PoisonError::into_inner).get(account).cloned()
    }

    /// Gives a connection its session: a new one, or the existing one resumed (unless clean
    /// start, expired, or made by another certificate). A connection already attached is closed (Session taken over), and wills
    /// are settled the way MQTT 5 3.1.3.2.2 says: the old connection's will is published unless the
    /// new connection resumes the session and the will had a delay; a will whose delay runs is
    /// cancelled by the resumption, or published if the session ends.
    pub(crate) fn attach(&self, mut request: Attach<'_>) -> Attachment {
        let kept = request.kept.take();
        let now = Instant::now();
        let account = &request.identity.account;
        let client_id = request.client_id;
        let (kick, kicked) = oneshot::channel();
        let wake = Arc::new(Notify::new());
        let mut attached = Some(Attached {
            connection: request.connection,
            kick: Some(kick),
            will: request.will,
            wake: wake.clone(),
            claim: 0,
        });
        let mut wills = Vec::new();
        let space = self.space(account);
        let (session, session_present, version_number) = {
            let mut guard = space.lock();
            let space_state = &mut *guard;
            if space_state.versions.len() >= MAX_VERSIONS && !space_state.versions.contains_key(client_id) {
                space_state.versions.clear();
            }
            let version = space_state.versions.entry(client_id.to_owned()).or_insert(0);
            // In a cluster the claim's revision orders it; a newer claim heard already (another
            // node took the client ID while this one asked) wins: this connection is taken over
            // as soon as it is attached.
            let (version_number, outdated) = match request.revision {
                Some(revision) => {
                    let outdated = *version > revision;
                    *version = (*version).max(revision);
                    (revision, outdated)
                }
                None => {
                    *version += 1;
                    (*version, false)
                }
            };
            if let Some(attached) = attached.as_mut() {
                attached.claim = version_number;
                if outdated && let Some(kick) = attached.kick.take() {
                    self.counters.takeovers.fetch_add(1, Ordering::Relaxed);
                    let _ = kick.send(Kick::TakenOver);
                }
            }

            let existing = space_state.sessions.get(client_id).map(|entry| entry.session.clone());
            let existed_here = existing.is_some();
            let mut resumed = None;
            if let Some(session) = existing {
                let mut state = session.lock();
                state.epoch += 1;
                // A session is resumed by the certificate that made it only: its queue and
                // subscriptions were authorized for that certificate's policies, not another's.
                let other_certificate = state.identity.certificate_id != request.identity.certificate_id;
                if other_certificate && !request.clean_start {
                    tracing::info!(client_id, "session not resumed: another certificate owns it; started afresh");
                }
                let fresh = request.clean_start || other_certificate;
                if let Some(mut old) = state.attached.take() {
                    self.counters.takeovers.fetch_add(1, Ordering::Relaxed);
                    if let Some(kick) = old.kick.take() {
                        let _ = kick.send(Kick::TakenOver);
                    }
                    if let Some(will) = old.will.take()
                        && (fresh || will.delay.is_zero())
                    {
                        wills.push(will.publish(now));
                    }
                }
                let expired = state.expires_at.is_some_and(|deadline| deadline <= now);
                if let Some((will, _)) = state.pending_will.take()
                    && (fresh || expired)
                {
                    wills.push(will.publish(now));
                }
                if fresh || expired {
                    for filter in state.subscriptions.values() {
                        space_state.subscriptions.remove(client_id, filter);
                    }
                } else {
                    state.attached = attached.take();
                    state.identity = request.identity.clone();
                    state.expiry = request.expiry;
                    state.expires_at = None;
                    state.resend_inflight();
                    drop(state);
                    resumed = Some(session);
                }
            }
            let mut session_present = resumed.is_some();
            let session = match resumed {
                Some(session) => session,
                None => {
                    let mut state = SessionState::new(
                        request.identity.clone(),
                        attached.take(),
                        request.expiry,
                        space.queued_bytes.clone(),
                    );
                    let resumable = |kept: &SessionSnapshot| {
                        resumable(kept, request.identity, request.clean_start, client_id, existed_here)
                    };
                    if let Some(kept) = kept.filter(resumable) {
                        self.resume_kept(space_state, client_id, &mut state, kept, now);
                        session_present = true;
                    }
                    Arc::new(Session::new(client_id.to_owned(), state))
                }
            };
            space_state.insert_session(client_id, SessionEntry { session: session.clone(), online: true });
            (session, session_present, version_number)
        };
        self.publish_wills(account, wills);
        // The cluster's copy follows: this node's session now (or none, for a clean one).
        self.keep(account, client_id, Keep::Write);
        self.fabric.claim_client_id(ClientClaim {
            account: account.clone(),
            client_id: client_id.to_owned(),
            node: self.config.node.clone(),
            revision: request.revision.unwrap_or(0),
        });
        Attachment { session, session_present, kicked, wake, version_number }
    }

    /// Rebuilds a session another node kept: its subscriptions (within this node's bound) and
    /// the messages that waited for it (within the queue's bounds).
    fn resume_kept(
        &self,
        space_state: &mut SpaceState,
        client_id: &str,
        state: &mut SessionState,
        kept: SessionSnapshot,
        now: Instant,
    ) {
        for subscription in kept.subscriptions.into_iter().take(self.config.max_subscriptions) {
            let options = SubscriptionOptions {
                qos: subscription.qos,
                no_local: subscription.no_local,
                retain_as_published: subscription.retain_as_published,
                identifier: subscription.identifier,
            };
            space_state.subscriptions.insert(client_id, &subscription.filter, options);
            state.subscriptions.insert(subscription.filter.as_str().to_owned(), subscription.filter);
        }
        let limits = self.queue_limits();
        let mut dropped = 0usize;
        let total = kept.messages.len();
        for saved in kept.messages {
            let queued =
                Queued { message: saved.message, qos: saved.qos, retain: saved.retain, identifiers: saved.identifiers };
            if state.enqueue(queued, limits, now).is_err() {
                dropped += 1;
            }
        }
        tracing::info!(client_id, messages = total, dropped, "resumed a session another node kept");
    }

    /// A connection leaves its session (if it still serves it: a connection taken over does not).
    /// A session with expiry 0 ends now; another is kept offline until it expires, its will
    /// published now or after its delay.
    pub(crate) fn detach(&self, account: &AccountId, session: &Arc<Session>, connection: u64, departure: Departure) {
        let now = Instant::now();
        let mut wills = Vec::new();
        let mut timer = None;
        let space = self.space(account);
        {
            let mut guard = space.lock();
            let space_state = &mut *guard;
            let mut state = session.lock();
            if !state.serves(connection) {
                return;
            }
            let Some(attached) = state.attached.take() else { return };
            state.epoch += 1;
            state.went_offline();
            // Publishers waiting for this client to read go on: it is gone.
            session.room.notify_waiters();
            if let Some(expiry) = departure.expiry {
                state.expiry = expiry;
            }
            let will = attached.will.filter(|_| departure.publish_will);
            let current =
                space_state.sessions.get(&session.client_id).is_some_and(|entry| Arc::ptr_eq(&entry.session, session));
            if state.expiry.is_zero() {
                for filter in state.subscriptions.values() {
                    space_state.subscriptions.remove(&session.client_id, filter);
                }
                if current {
                    space_state.remove_session(&session.client_id);
                }
                wills.extend(will.map(|will| will.publish(now)));
            } else {
                if current {
                    space_state.mark_offline(&session.client_id);
                    space_state.offline_order.push_back((Arc::downgrade(session), state.epoch));
                }
                let expires_at = now + state.expiry;
                state.expires_at = Some(expires_at);
                match will {
                    Some(will) if !will.delay.is_zero() => {
                        let due = now + will.delay.min(state.expiry);
                        state.pending_will = Some((will, due));
                    }
                    Some(will) => wills.push(will.publish(now)),
                    None => {}
                }
                timer = Some((state.epoch, state.pending_will.as_ref().map(|(_, due)| *due), expires_at));
            }
            let keep = if state.moved_away { Keep::Leave } else { Keep::Write };
            drop(state);
            self.keep(account, &session.client_id, keep);
            self.evict_offline(account, space_state, &mut wills, now);
        }
        self.publish_wills(account, wills);
        if let Some((epoch, will_due, expires_at)) = timer {
            self.spawn_offline_timer(account.clone(), Arc::downgrade(session), epoch, will_due, expires_at);
        }
    }

    /// Publishes the delayed will and then ends the session, each when due, unless a connection
    /// attached in between (the epoch moved).
    fn spawn_offline_timer(
        &self,
        account: AccountId,
        session: Weak<Session>,
        epoch: u64,
        will_due: Option<Instant>,
        expires_at: Instant,
    ) {
        let broker = self.this.clone();
        tokio::spawn(async move {
            if let Some(due) = will_due {
                tokio::time::sleep_until(due).await;
                let (Some(broker), Some(session)) = (broker.upgrade(), session.upgrade()) else { return };
                let will = {
                    let mut state = session.lock();
                    if state.epoch != epoch {
                        return;
                    }
                    state.pending_will.take()
                };
                if let Some((will, _)) = will {
                    broker.publish_wills(&account, vec![will.publish(Instant::now())]);
                }
            }
            tokio::time::sleep_until(expires_at).await;
            let (Some(broker), Some(session)) = (broker.upgrade(), session.upgrade()) else { return };
            broker.expire(&account, &session, epoch);
        });
    }

    /// Ends the sessions offline longest while the account keeps more offline than
    /// `max_offline_sessions` (no session lock may be held: each is locked here). Their pending
    /// wills go to `wills`.
    fn evict_offline(
        &self,
        account: &AccountId,
        space_state: &mut SpaceState,
        wills: &mut Vec<Arc<Message>>,
        now: Instant,
    ) {
        let limit = self.config.max_offline_sessions;
        while space_state.offline > limit {
            let Some((session, epoch)) = space_state.offline_order.pop_front() else { break };
            let Some(session) = session.upgrade() else { continue };
            if !space_state.offline_since(&session, epoch) {
                continue;
            }
            let mut state = session.lock();
            // The epoch moves so that the session's offline timer finds it ended already.
            state.epoch += 1;
            wills.extend(space_state.end_offline(&session, &mut state).map(|will| will.publish(now)));
            drop(state);
            self.keep(account, &session.client_id, Keep::Write);
            let evicted = self.counters.offline_sessions_evicted.fetch_add(1, Ordering::Relaxed) + 1;
            if self.warn_now(Warning::OfflineEvicted) {
                tracing::warn!(%account, client_id = %session.client_id, limit, evicted_so_far = evicted, "offline session ended early: the account keeps the maximum offline");
            }
        }
        // Stale entries (sessions that came back or ended) are dropped once they dominate.
        if space_state.offline_order.len() > 2 * space_state.offline + 64 {
            let order = std::mem::take(&mut space_state.offline_order);
            space_state.offline_order = order
                .into_iter()
                .filter(|(session, epoch)| {
                    session.upgrade().is_some_and(|session| space_state.offline_since(&session, *epoch))
                })
                .collect();
        }
    }

    /// Ends an offline session whose expiry has come.
    fn expire(&self, account: &AccountId, session: &Arc<Session>, epoch: u64) {
        let mut wills = Vec::new();
        let space = self.space(account);
        {
            let mut guard = space.lock();
            let space_state = &mut *guard;
            let mut state = session.lock();
            if state.epoch != epoch || state.attached.is_some() {
                return;
            }
            if let Some(will) = space_state.end_offline(session, &mut state) {
                wills.push(will.publish(Instant::now()));
            }
            let (queued, inflight) = state.backlog();
            tracing::debug!(%account, client_id = %session.client_id, queued, inflight, "session expired");
        }
        self.keep(account, &session.client_id, Keep::Write);
        self.publish_wills(account, wills);
    }

    /// Adds subscriptions for the session `connection` serves, and queues the retained messages
    /// they ask for. `None` if the connection no longer serves the session.
    pub(crate) fn subscribe(
        &self,
        account: &AccountId,
        session: &Arc<Session>,
        connection: u64,
        requests: &[SubscribeRequest],
    ) -> Option<Vec<Subscribed>> {
        let now = Instant::now();
        let mut retained = Vec::new();
        let mut results = Vec::with_capacity(requests.len());
        let space = self.space(account);
        {
            let mut guard = space.lock();
            let space_state = &mut *guard;
            let mut state = session.lock();
            if !state.serves(connection) {
                return None;
            }
            for request in requests {
                let filter = &request.filter;
                let known = state.subscriptions.contains_key(filter.as_str());
                if !known && state.subscriptions.len() >= self.config.max_subscriptions {
                    results.push(Subscribed::QuotaExceeded);
                    continue;
                }
                let existed = space_state.subscriptions.insert(&session.client_id, filter, request.options);
                state.subscriptions.insert(filter.as_str().to_owned(), filter.clone());
                results.push(if existed { Subscribed::Replaced } else { Subscribed::New });
                let send_retained = filter.share_group().is_none()
                    && match request.retain_handling {
                        RetainHandling::SendAtSubscribe => true,
                        RetainHandling::SendAtSubscribeIfNew => !existed,
                        RetainHandling::DoNotSend => false,
                    };
                if send_retained {
                    for message in space_state.retained.matching(filter, now) {
                        retained.push((message, request.options));
                    }
                }
            }
        }
        self.keep(account, &session.client_id, Keep::Write);
        for (message, options) in retained {
            let queued = Queued {
                qos: message.qos.min(options.qos),
                retain: true,
                identifiers: options.identifier.into_iter().collect(),
                message,
            };
            self.deliver(session, queued, now);
        }
        Some(results)
    }

    /// Removes subscriptions of the session `connection` serves; tells for each filter whether it
    /// existed. `None` if the connection no longer serves the session.
    pub(crate) fn unsubscribe(
        &self,
        account: &AccountId,
        session: &Arc<Session>,
        connection: u64,
        filters: &[TopicFilter],
    ) -> Option<Vec<bool>> {
        let space = self.space(account);
        let mut guard = space.lock();
        let space_state = &mut *guard;
        let mut state = session.lock();
        if !state.serves(connection) {
            return None;
        }
        let existed = filters
            .iter()
            .map(|filter| {
                state.subscriptions.remove(filter.as_str());
                space_state.subscriptions.remove(&session.client_id, filter)
            })
            .collect();
        drop(state);
        drop(guard);
        self.keep(account, &session.client_id, Keep::Write);
        Some(existed)
    }

    /// Answers one connection: queues `message` for `session` alone, through the subscriptions
    /// it holds that match the topic (none: the answer is dropped, as AWS drops an answer nobody
    /// subscribed to), and only while `connection` still serves the session. Never routed: no
    /// other client, node or rule sees it (the fleet provisioning API's answers carry private
    /// keys). Returns whether it was queued.
    pub(crate) fn reply(
        &self,
        account: &AccountId,
        session: &Arc<Session>,
        connection: u64,
        message: Arc<Message>,
    ) -> bool {
        let queued = {
            let space = self.space(account);
            let mut guard = space.lock();
            if !session.lock().serves(connection) {
                return false;
            }
            let client_id = session.client_id.as_str();
            let targets =
                guard.subscriptions.matches(&message.topic, Scope::Everyone, |candidate| candidate == client_id);
            let mut queued: Option<Queued> = None;
            for target in targets.into_iter().filter(|target| target.client_id == client_id) {
                let options = target.options;
                let entry = queued.get_or_insert_with(|| Queued {
                    message: message.clone(),
                    qos: options.qos.min(message.qos),
                    retain: false,
                    identifiers: Vec::new(),
                });
                entry.qos = entry.qos.max(options.qos.min(message.qos));
                entry.identifiers.extend(options.identifier);
            }
            queued
        };
        match queued {
            Some(queued) => {
                self.deliver(session, queued, Instant::now());
                true
            }
            None => false,
        }
    }

    /// Queues a message for a session if its owner may receive it, and wakes its connection.
    /// Returns whether the session is connected and its queue getting full, to be reported to
    /// the publisher (see [`Broker::publish_with_backpressure`]), unless its client has stalled.
    fn deliver(&self, session: &Arc<Session>, queued: Queued, now: Instant) -> bool {
        let identity = session.lock().identity.clone();
        if !self.authorizer.receive(&identity, &session.client_id, queued.message.topic.as_str()) {
            self.counters.dropped_not_authorized.fetch_add(1, Ordering::Relaxed);
            return false;
        }
        let limits = self.queue_limits();
        let queued_message = queued.message.clone();
        let (result, wake, congested) = {
            let mut state = session.lock();
            let result = state.enqueue(queued, limits, now);
            (result, state.attached.as_ref().map(|attached| attached.wake.clone()), state.congested(limits))
        };
        let congested = congested && !session.stalled.load(Ordering::Relaxed);
        let why = match result {
            Ok(qos0_dropped) => {
                self.counters.queued.fetch_add(1, Ordering::Relaxed);
                if wake.is_none() {
                    // Waiting for an offline session: the cluster's copy follows.
                    self.keep(&identity.account, &session.client_id, Keep::Write);
                }
                if qos0_dropped > 0 {
                    self.counters.dropped_qos0_for_room.fetch_add(qos0_dropped as u64, Ordering::Relaxed);
                }
                if let Some(wake) = wake {
                    wake.notify_one();
                }
                return congested;
            }
            Err(why) => why,
        };
        let (dropped, warning) = match why {
            Dropped::OfflineQos0 => (&self.counters.dropped_offline_qos0, None),
            Dropped::SlowQos0 => (&self.counters.dropped_slow_qos0, Some(Warning::SlowQos0)),
            Dropped::QueueFull => (&self.counters.dropped_queue_full, Some(Warning::QueueFull)),
            Dropped::SessionBytes => (&self.counters.dropped_session_bytes, Some(Warning::SessionBytes)),
            Dropped::AccountBytes => (&self.counters.dropped_account_bytes, Some(Warning::AccountBytes)),
        };
        let count = dropped.fetch_add(1, Ordering::Relaxed) + 1;
        if why != Dropped::OfflineQos0 {
            self.counters
                .dropped_queue_bytes
                .fetch_add(retained::message_bytes(&queued_message) as u64, Ordering::Relaxed);
        }
        // Logged once per cause and interval, not once per message.
        if let Some(warning) = warning
            && self.warn_now(warning)
        {
            tracing::warn!(
                account = %identity.account,
                client_id = %session.client_id,
                why = ?why,
                dropped_so_far = count,
                "message dropped for a subscriber"
            );
        }
        congested
    }
}

/// The broker publishes the gateway's session-less events (just-in-time registrations).
impl EventSink for Broker {
    fn publish_event(&self, account: &AccountId, message: Message) {
        self.publish(account, Arc::new(message));
    }
}

impl Broker {
    /// Delivers `routed` to this node's subscribers `delivery` names (keeping it if retained,
    /// for [`Delivery::Everyone`]); returns the connected sessions it found congested.
    fn route_here(&self, routed: &RoutedMessage, delivery: Delivery<'_>) -> Vec<Arc<Session>> {
        self.counters.routed.fetch_add(1, Ordering::Relaxed);
        let now = Instant::now();
        let message = &routed.message;
        let scope = match delivery {
            Delivery::Everyone => Scope::Everyone,
            Delivery::Plain => Scope::Plain,
            Delivery::Shared(filter) => Scope::Shared(filter),
        };
        // A message for nobody here creates no space (a networked fabric may over-deliver).
        let space = match delivery {
            Delivery::Everyone => self.space(&routed.account),
            Delivery::Plain | Delivery::Shared(_) => match self.existing_space(&routed.account) {
                Some(space) => space,
                None => return Vec::new(),
            },
        };
        let deliveries: Vec<(Arc<Session>, Queued)> = {
            let mut guard = space.lock();
            let space_state = &mut *guard;
            if message.retain && matches!(delivery, Delivery::Everyone) {
                // Refused at the publisher's node already, unless another publisher got there
                // first or this node holds more than the publisher's.
                let mut kept = space_state.retained.keep(message);
                if matches!(kept, Kept::TooMany | Kept::TooLarge) && space_state.retained.purge_expired(now) {
                    kept = space_state.retained.keep(message);
                }
                self.retained_refused(&routed.account, kept);
            }
            let sessions = &space_state.sessions;
            let targets = space_state
                .subscriptions
                .matches(&message.topic, scope, |client_id| sessions.get(client_id).is_some_and(|entry| entry.online));
            // One copy per client: the highest QoS of its matching subscriptions, all their
            // identifiers (MQTT 5 3.3.4).
            let mut by_client: HashMap<String, Queued> = HashMap::new();
            for target in targets {
                let options = target.options;
                if options.no_local && message.publisher.as_deref() == Some(target.client_id.as_str()) {
                    continue;
                }
                let queued = by_client.entry(target.client_id).or_insert_with(|| Queued {
                    message: message.clone(),
                    qos: options.qos.min(message.qos),
                    retain: false,
                    identifiers: Vec::new(),
                });
                queued.qos = queued.qos.max(options.qos.min(message.qos));
                queued.retain |= options.retain_as_published && message.retain;
                queued.identifiers.extend(options.identifier);
            }
            by_client
                .into_iter()
                .filter_map(|(client_id, queued)| sessions.get(&client_id).map(|entry| (entry.session.clone(), queued)))
                .collect()
        };
        let mut congested = Vec::new();
        for (session, queued) in deliveries {
            if self.deliver(&session, queued, now) {
                congested.push(session);
            }
        }
        congested
    }
}

impl Router for Broker {
    fn route(&self, routed: &RoutedMessage, delivery: Delivery<'_>) {
        self.route_here(routed, delivery);
    }

    fn retained(&self, account: &AccountId, topic: &TopicName, message: Option<Arc<Message>>) {
        let space = self.space(account);
        let mut state = space.lock();
        let kept = match message {
            Some(message) => state.retained.keep(&message),
            None => state.retained.forget(topic),
        };
        drop(state);
        self.retained_refused(account, kept);
    }

    fn has_subscriber(&self, account: &AccountId, topic: &str) -> bool {
        self.existing_space(account).is_some_and(|space| space.lock().subscriptions.any_subscriber(topic))
    }

    fn claimed(&self, claim: &ClientClaim) {
        if claim.node == self.config.node {
            return;
        }
        let Some(space) = self.existing_space(&claim.account) else { return };
        let mut wills = Vec::new();
        {
            let mut guard = space.lock();
            let space_state = &mut *guard;
            if claim.revision > 0 {
                let version = space_state.versions.entry(claim.client_id.clone()).or_insert(0);
                *version = (*version).max(claim.revision);
            }
            let Some(session) = space_state.sessions.get(&claim.client_id).map(|entry| entry.session.clone()) else {
                return;
            };
            let mut guard = session.lock();
            let state = &mut *guard;
            match state.attached.as_mut() {
                // A claim older than this connection's (heard late): this connection keeps it.
                Some(attached) if claim.revision != 0 && attached.claim > claim.revision => return,
                Some(attached) => {
                    // The session moved to the other node: it ends here when its connection
                    // leaves (expiry 0), its will published as for any takeover.
                    if let Some(kick) = attached.kick.take() {
                        self.counters.takeovers.fetch_add(1, Ordering::Relaxed);
                        let _ = kick.send(Kick::TakenOver);
                    }
                    state.expiry = Duration::ZERO;
                    state.moved_away = true;
                }
                None => {
                    // Kept offline here, now served by the other node: it ends here.
                    state.epoch += 1;
                    state.moved_away = true;
                    wills.extend(space_state.end_offline(&session, state).map(|will| will.publish(Instant::now())));
                }
            }
            self.counters.moved_away.fetch_add(1, Ordering::Relaxed);
        }
        self.keep(&claim.account, &claim.client_id, Keep::Leave);
        self.publish_wills(&claim.account, wills);
    }
}
