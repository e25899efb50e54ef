//! The networked fabric: several gateway nodes as one hub over NATS (with JetStream), an
//! existing engine, never a home-made cluster protocol.
//!
//! - **Messages** travel on subjects `cf.m.<account>.<levels>` ([`subjects`]). A node subscribes
//!   only to the subjects of the filters its sessions hold (the broker's subscription tree says
//!   when a filter gains its first subscriber and loses its last), so a message goes only to the
//!   nodes with a subscriber. The publisher's node routes its own subscribers itself; copies
//!   NATS echoes back to it are skipped, as are the extra copies a node gets when several of its
//!   filters match one message (a bounded window of recent message numbers).
//! - **Shared subscriptions** (`$share/<group>/<filter>`) are NATS queue subscriptions, one
//!   queue per account, group and filter: each message goes to one node among those with a
//!   member, and that node picks one member. The publisher's node gets its copies through NATS
//!   too, so that the choice is cluster-wide.
//! - **Client IDs** are claimed in the JetStream KV bucket `certfleet_clients`: the revision of
//!   the put orders the claims of a client ID cluster-wide, is the connection's lifecycle
//!   `versionNumber`, and travels in the claim announced on `cf.c.<account>`; a node closes its
//!   connection for that client ID when it hears a newer claim, never an older one, so two
//!   nodes connecting one client ID at once cannot both win nor keep kicking each other.
//! - **Retained messages** live in the JetStream KV bucket `certfleet_retained` (one key per
//!   account and topic): every node watches it and keeps what it says, so a node started later
//!   serves the same retained messages.
//!
//! Everything a node sends goes through one bounded queue ([`ClusterConfig::outbound_bytes`])
//! to one sender task, in order; when it is full (NATS slower than the publishers, or down), a
//! publish fails and the device is told. What arrives is decoded as hostile input
//! ([`envelope`]). NATS reconnects by itself and restores the subscriptions.

mod envelope;
mod ops;
mod sessions;
mod subjects;

pub use ops::{ClusterDataPlane, NUDGE_GAP, OpsConfig, OpsCounters};

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock, Weak};
use std::time::Duration;

use async_nats::jetstream::kv;
use bytes::Bytes;
use certfleet_mqtt::TopicFilter;
use certfleet_registry::AccountId;
use futures_util::StreamExt;
use futures_util::stream::{BoxStream, SelectAll};
use tokio::sync::{Notify, mpsc};
use tokio::time::Instant;

use crate::fabric::{
    ClientClaim, Delivery, Fabric, FabricError, NodeId, Reservation, RoutedMessage, Router, SessionLoad,
    SessionSnapshot,
};
use envelope::ExpiryForm;

/// How a node joins the cluster.
#[derive(Clone, Debug)]
pub struct ClusterConfig {
    /// The NATS server, `nats://host:port` (JetStream enabled).
    pub url: String,
    /// How long the first connection may take before the node refuses to start.
    pub connect_timeout: Duration,
    /// Bytes of messages waiting to be sent to NATS; past it a publish fails. Default 64 MiB.
    pub outbound_bytes: usize,
    /// The largest packet a node accepts from another (the broker's `max_packet_size`).
    pub max_packet_size: usize,
    /// How long the cluster keeps a persistent session nobody wrote since (the longest session
    /// expiry and a margin): the bound of the sessions bucket's age.
    pub session_retention: Duration,
}

impl ClusterConfig {
    pub fn new(url: String, max_packet_size: usize) -> Self {
        ClusterConfig {
            url,
            connect_timeout: Duration::from_secs(10),
            outbound_bytes: 64 * 1024 * 1024,
            max_packet_size,
            session_retention: Duration::from_secs(2 * 3600),
        }
    }
}

/// Why a node could not join the cluster.
#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    #[error("connecting to NATS at {url}: {source}")]
    Connect { url: String, source: async_nats::ConnectError },
    #[error("NATS at {url} did not answer within {seconds} s")]
    Timeout { url: String, seconds: u64 },
    #[error("opening the JetStream KV bucket {bucket} (is JetStream enabled on the NATS server?): {reason}")]
    Bucket { bucket: &'static str, reason: String },
}

const CLIENTS_BUCKET: &str = "certfleet_clients";
const RETAINED_BUCKET: &str = "certfleet_retained";
const SESSIONS_BUCKET: &str = "certfleet_sessions";
/// Message numbers remembered to skip the extra copies of one message (several matching
/// filters on one node each get a copy from NATS).
const DEDUPLICATION_WINDOW: usize = 65_536;

/// The fabric's counters, in `/metrics`.
#[derive(Debug, Default)]
pub struct ClusterCounters {
    pub sent: AtomicU64,
    pub received: AtomicU64,
    /// Copies skipped: echoes of this node's own messages, and extra copies of one message.
    pub duplicates: AtomicU64,
    /// Messages refused because the outbound queue was full.
    pub backlog_refused: AtomicU64,
    /// Messages refused because the node was not connected to NATS.
    pub unavailable_refused: AtomicU64,
    /// Topics too long for a NATS subject: not carried across nodes.
    pub subject_too_long: AtomicU64,
    /// Bytes from NATS that were not a message certfleet sent.
    pub malformed: AtomicU64,
    /// Sends or subscriptions NATS refused.
    pub errors: AtomicU64,
    pub claims_sent: AtomicU64,
    pub claims_received: AtomicU64,
    /// Persistent sessions written to (or deleted from) the cluster's store.
    pub sessions_saved: AtomicU64,
    /// Persistent sessions another node kept, resumed here.
    pub sessions_loaded: AtomicU64,
    /// Waiting messages left out of a kept session (past the size of one KV value).
    pub session_messages_left_out: AtomicU64,
}

/// What the sender task sends, in order.
enum Outbound {
    Message { subject: String, payload: Bytes },
    Retain { key: String, value: Option<Bytes> },
    Claim { subject: String, payload: Bytes },
    Session { key: String, value: Option<Bytes> },
}

impl Outbound {
    fn bytes(&self) -> usize {
        match self {
            Outbound::Message { subject, payload } | Outbound::Claim { subject, payload } => {
                subject.len() + payload.len()
            }
            Outbound::Retain { key, value } | Outbound::Session { key, value } => {
                key.len() + value.as_ref().map_or(0, Bytes::len)
            }
        }
    }
}

/// The NATS subscriptions this node wants: one per filter its sessions hold, per account.
#[derive(Default)]
struct Interests {
    wanted: HashSet<(AccountId, TopicFilter)>,
    /// Changed since the receiver last looked.
    dirty: HashSet<(AccountId, TopicFilter)>,
}

/// The fabric of one node in a NATS cluster.
pub struct NatsFabric {
    node: NodeId,
    config: ClusterConfig,
    client: async_nats::Client,
    /// The connection for application messages and plain subscriptions (no echo).
    plain: async_nats::Client,
    /// When a connection of this node last came back after NATS was lost: publishes wait
    /// [`RESUBSCRIBE_SETTLE`] after it, so that the other nodes, reconnecting too, have their
    /// subscriptions back before messages they would miss are acknowledged.
    reconnected: Arc<Reconnected>,
    clients: kv::Store,
    retained: kv::Store,
    sessions: kv::Store,
    outbound: mpsc::UnboundedSender<Outbound>,
    /// Taken by the sender task when the router attaches.
    outbound_rx: Mutex<Option<mpsc::UnboundedReceiver<Outbound>>>,
    /// Bytes in `outbound`: the queue's bound.
    outbound_queued: Arc<AtomicUsize>,
    interests: Arc<Mutex<Interests>>,
    interests_changed: Arc<Notify>,
    sequence: AtomicU64,
    router: OnceLock<Weak<dyn Router>>,
    counters: Arc<ClusterCounters>,
}

impl NatsFabric {
    /// Connects to NATS and opens the cluster's KV buckets (creating them on first use). The
    /// node's tasks start when its broker attaches ([`Fabric::attach`]).
    pub async fn connect(node: NodeId, config: ClusterConfig) -> Result<Arc<Self>, ClusterError> {
        let url = config.url.clone();
        let reconnected = Arc::new(Reconnected::default());
        let client = nats_connect(&node, &config, "", false, reconnected.clone()).await?;
        // Application messages go out and plain subscriptions come in on a connection of their
        // own that NATS never echoes to: the node serves its own subscribers itself, so its
        // messages do not come back to it. Queue groups, claims and JetStream use `client`,
        // which does receive this node's messages (a group's only member may be here).
        let plain = nats_connect(&node, &config, "-messages", true, reconnected.clone()).await?;
        let jetstream = async_nats::jetstream::new(client.clone());
        // A claim matters only against the claims made at about the same time: a day bounds the
        // bucket by the client IDs seen in a day (revisions keep growing across expiries).
        let clients = bucket(&jetstream, CLIENTS_BUCKET, Duration::from_secs(24 * 3600)).await?;
        let retained = bucket(&jetstream, RETAINED_BUCKET, Duration::ZERO).await?;
        let sessions = bucket(&jetstream, SESSIONS_BUCKET, config.session_retention).await?;
        let (outbound, outbound_rx) = mpsc::unbounded_channel();
        tracing::info!(%url, node = %node, "joined the cluster");
        Ok(Arc::new(NatsFabric {
            node,
            config,
            client,
            plain,
            reconnected,
            clients,
            retained,
            sessions,
            outbound,
            outbound_rx: Mutex::new(Some(outbound_rx)),
            outbound_queued: Arc::new(AtomicUsize::new(0)),
            interests: Arc::new(Mutex::new(Interests::default())),
            interests_changed: Arc::new(Notify::new()),
            // A random start: a node restarted under the same name must not repeat numbers its
            // peers remember in their deduplication windows.
            sequence: AtomicU64::new(random_u64()),
            router: OnceLock::new(),
            counters: Arc::new(ClusterCounters::default()),
        }))
    }

    pub fn counters(&self) -> &ClusterCounters {
        &self.counters
    }

    /// Queues `item` for the sender task if the queue has room.
    fn send(&self, item: Outbound) -> Result<(), FabricError> {
        let bytes = item.bytes();
        if self.outbound_queued.fetch_add(bytes, Ordering::Relaxed) + bytes > self.config.outbound_bytes {
            self.outbound_queued.fetch_sub(bytes, Ordering::Relaxed);
            self.counters.backlog_refused.fetch_add(1, Ordering::Relaxed);
            return Err(FabricError::Backlog);
        }
        self.outbound.send(item).map_err(|_| {
            self.outbound_queued.fetch_sub(bytes, Ordering::Relaxed);
            FabricError::Unavailable
        })
    }

    /// The node's cluster state and counters, in the Prometheus text format.
    pub fn render_metrics(&self, out: &mut String) {
        use std::fmt::Write as _;
        let connected = [&self.client, &self.plain]
            .iter()
            .all(|client| matches!(client.connection_state(), async_nats::connection::State::Connected));
        let counters = &self.counters;
        let wanted = self.interests.lock().unwrap_or_else(std::sync::PoisonError::into_inner).wanted.len();
        let _ = writeln!(out, "# HELP certfleet_cluster_connected Whether this node is connected to NATS.");
        let _ = writeln!(out, "# TYPE certfleet_cluster_connected gauge");
        let _ = writeln!(out, "certfleet_cluster_connected {}", u8::from(connected));
        let _ = writeln!(out, "# HELP certfleet_cluster_subscriptions Filters this node subscribes to on NATS.");
        let _ = writeln!(out, "# TYPE certfleet_cluster_subscriptions gauge");
        let _ = writeln!(out, "certfleet_cluster_subscriptions {wanted}");
        let _ = writeln!(out, "# HELP certfleet_cluster_outbound_bytes Bytes waiting to be sent to NATS.");
        let _ = writeln!(out, "# TYPE certfleet_cluster_outbound_bytes gauge");
        let _ = writeln!(out, "certfleet_cluster_outbound_bytes {}", self.outbound_queued.load(Ordering::Relaxed));
        let _ = writeln!(out, "# HELP certfleet_cluster_outbound_bytes_limit The bound of the outbound queue.");
        let _ = writeln!(out, "# TYPE certfleet_cluster_outbound_bytes_limit gauge");
        let _ = writeln!(out, "certfleet_cluster_outbound_bytes_limit {}", self.config.outbound_bytes);
        let _ = writeln!(out, "# HELP certfleet_cluster_messages_total Messages between this node and the cluster.");
        let _ = writeln!(out, "# TYPE certfleet_cluster_messages_total counter");
        for (what, counter) in [
            ("sent", &counters.sent),
            ("received", &counters.received),
            ("duplicate", &counters.duplicates),
            ("refused_backlog", &counters.backlog_refused),
            ("refused_unavailable", &counters.unavailable_refused),
            ("refused_subject_too_long", &counters.subject_too_long),
            ("malformed", &counters.malformed),
            ("error", &counters.errors),
            ("claim_sent", &counters.claims_sent),
            ("claim_received", &counters.claims_received),
            ("session_saved", &counters.sessions_saved),
            ("session_loaded", &counters.sessions_loaded),
            ("session_message_left_out", &counters.session_messages_left_out),
        ] {
            let _ = writeln!(
                out,
                "certfleet_cluster_messages_total{{what=\"{what}\"}} {}",
                counter.load(Ordering::Relaxed)
            );
        }
    }
}

/// One connection of the node to NATS (`suffix` names it in NATS's monitoring).
async fn nats_connect(
    node: &NodeId,
    config: &ClusterConfig,
    suffix: &str,
    no_echo: bool,
    reconnected: Arc<Reconnected>,
) -> Result<async_nats::Client, ClusterError> {
    let url = config.url.clone();
    let lost = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut options = async_nats::ConnectOptions::new()
        .name(format!("certfleet-{node}{suffix}"))
        .connection_timeout(config.connect_timeout)
        .max_reconnects(None)
        .event_callback(move |event| {
            let (lost, reconnected) = (lost.clone(), reconnected.clone());
            async move {
                match event {
                    async_nats::Event::Disconnected => {
                        lost.store(true, Ordering::Relaxed);
                        tracing::warn!("NATS connection lost; reconnecting");
                    }
                    async_nats::Event::Connected => {
                        if lost.swap(false, Ordering::Relaxed) {
                            reconnected.now();
                        }
                        tracing::info!("NATS connected");
                    }
                    other => tracing::info!(event = %other, "NATS"),
                }
            }
        });
    if no_echo {
        options = options.no_echo();
    }
    tokio::time::timeout(config.connect_timeout, options.connect(url.as_str()))
        .await
        .map_err(|_| ClusterError::Timeout { url: url.clone(), seconds: config.connect_timeout.as_secs() })?
        .map_err(|source| ClusterError::Connect { url, source })
}

/// Opens a KV bucket, creating its stream on first use (history 1: only the latest value
/// counts). The stream is made here with a KV bucket's settings rather than through the
/// client's `create_key_value`, which first reads account fields NATS 2.9 does not send.
/// `max_age` zero: kept until deleted.
async fn bucket(
    jetstream: &async_nats::jetstream::Context,
    name: &'static str,
    max_age: Duration,
) -> Result<kv::Store, ClusterError> {
    use async_nats::jetstream::stream;
    let config = stream::Config {
        name: format!("KV_{name}"),
        subjects: vec![format!("$KV.{name}.>")],
        max_messages_per_subject: 1,
        allow_rollup: true,
        deny_delete: true,
        allow_direct: true,
        discard: stream::DiscardPolicy::New,
        num_replicas: 1,
        max_age,
        ..Default::default()
    };
    jetstream
        .get_or_create_stream(config)
        .await
        .map_err(|error| ClusterError::Bucket { bucket: name, reason: error.to_string() })?;
    jetstream
        .get_key_value(name)
        .await
        .map_err(|error| ClusterError::Bucket { bucket: name, reason: error.to_string() })
}

/// A claim as it travels on `cf.c.<account>`.
#[derive(serde::Serialize, serde::Deserialize)]
struct ClaimWire {
    client_id: String,
    node: String,
    revision: u64,
}

impl Fabric for NatsFabric {
    fn attach(&self, _node: &NodeId, router: Weak<dyn Router>) {
        if self.router.set(router).is_err() {
            tracing::error!("a second broker attached to one NATS fabric: ignored");
            return;
        }
        let Some(outbound) = self.outbound_rx.lock().unwrap_or_else(std::sync::PoisonError::into_inner).take() else {
            return;
        };
        let router = self.router.get().cloned().unwrap_or_else(|| Weak::<NoRouter>::new());
        tokio::spawn(send_loop(
            self.client.clone(),
            self.plain.clone(),
            self.retained.clone(),
            self.sessions.clone(),
            outbound,
            self.outbound_queued.clone(),
            self.counters.clone(),
        ));
        let receiver = Receiver {
            node: self.node.clone(),
            client: self.client.clone(),
            plain: self.plain.clone(),
            router: router.clone(),
            counters: self.counters.clone(),
            max_packet: self.config.max_packet_size + 64,
            recent: HashSet::new(),
            order: VecDeque::new(),
            active: HashMap::new(),
        };
        tokio::spawn(receiver.run(self.interests.clone(), self.interests_changed.clone()));
        tokio::spawn(watch_retained(
            self.retained.clone(),
            router,
            self.counters.clone(),
            self.config.max_packet_size + 64,
        ));
    }

    fn publish(&self, _origin: &NodeId, routed: RoutedMessage) -> Result<(), FabricError> {
        // Core NATS keeps nothing for a node that is not connected: a message handed over now
        // would be lost, so the publisher is told instead (and its client sends it again).
        let settling = self.reconnected.within(RESUBSCRIBE_SETTLE);
        if settling || !matches!(self.plain.connection_state(), async_nats::connection::State::Connected) {
            self.counters.unavailable_refused.fetch_add(1, Ordering::Relaxed);
            return Err(FabricError::Unavailable);
        }
        let message = &routed.message;
        let Some(subject) = subjects::message(&routed.account, &message.topic) else {
            self.counters.subject_too_long.fetch_add(1, Ordering::Relaxed);
            return Err(FabricError::TopicTooLong);
        };
        let now = Instant::now();
        let sequence = self.sequence.fetch_add(1, Ordering::Relaxed);
        let Some(payload) = envelope::encode(message, sequence, ExpiryForm::Remaining, now) else {
            return Err(FabricError::TopicTooLong);
        };
        let origin = self.node.as_str();
        let mut framed = Vec::with_capacity(origin.len() + 1 + payload.len());
        framed.push(u8::try_from(origin.len()).unwrap_or(u8::MAX));
        framed.extend_from_slice(origin.as_bytes());
        framed.extend_from_slice(&payload);
        if message.retain {
            // The cluster's store: an empty payload deletes (the key then holds a delete marker).
            let key = subjects::retained_key(&routed.account, &message.topic).ok_or(FabricError::TopicTooLong)?;
            let value = if message.payload.is_empty() {
                None
            } else {
                envelope::encode(message, sequence, ExpiryForm::WallClock, now)
            };
            self.send(Outbound::Retain { key, value })?;
        }
        self.send(Outbound::Message { subject, payload: Bytes::from(framed) })
    }

    fn reserve_client_id(&self, account: &AccountId, client_id: &str) -> Reservation {
        let store = self.clients.clone();
        let key = subjects::client_key(account, client_id);
        let value = Bytes::from(self.node.as_str().to_owned());
        let counters = self.counters.clone();
        Box::pin(async move {
            match store.put(key, value).await {
                Ok(revision) => Ok(Some(revision)),
                Err(error) => {
                    counters.errors.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(%error, "claiming a client ID in the cluster failed");
                    Err(FabricError::Unavailable)
                }
            }
        })
    }

    fn keeps_sessions(&self) -> bool {
        true
    }

    fn save_session(&self, account: &AccountId, client_id: &str, snapshot: Option<SessionSnapshot>) {
        let key = subjects::client_key(account, client_id);
        let value = snapshot.map(|snapshot| {
            let (bytes, left_out) = sessions::encode(&snapshot, Instant::now());
            if left_out > 0 {
                self.counters.session_messages_left_out.fetch_add(left_out as u64, Ordering::Relaxed);
            }
            bytes
        });
        self.counters.sessions_saved.fetch_add(1, Ordering::Relaxed);
        if self.send(Outbound::Session { key, value }).is_err() {
            tracing::warn!(
                client_id,
                "a persistent session could not be kept in the cluster: the outbound queue is full"
            );
        }
    }

    fn load_session(&self, account: &AccountId, client_id: &str) -> SessionLoad {
        let store = self.sessions.clone();
        let key = subjects::client_key(account, client_id);
        let counters = self.counters.clone();
        let max_packet = self.config.max_packet_size + 64;
        Box::pin(async move {
            match store.get(key).await {
                Ok(None) => Ok(None),
                Ok(Some(bytes)) => match sessions::decode(&bytes, max_packet, Instant::now()) {
                    Ok(snapshot) => {
                        counters.sessions_loaded.fetch_add(1, Ordering::Relaxed);
                        Ok(Some(snapshot))
                    }
                    Err(error) => {
                        counters.malformed.fetch_add(1, Ordering::Relaxed);
                        tracing::warn!(%error, "a kept session could not be read; the session starts afresh");
                        Ok(None)
                    }
                },
                Err(error) => {
                    counters.errors.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(%error, "reading a kept session failed");
                    Err(FabricError::Unavailable)
                }
            }
        })
    }

    fn claim_client_id(&self, claim: ClientClaim) {
        let wire = ClaimWire { client_id: claim.client_id, node: claim.node.to_string(), revision: claim.revision };
        let Ok(payload) = serde_json::to_vec(&wire) else { return };
        self.counters.claims_sent.fetch_add(1, Ordering::Relaxed);
        if self
            .send(Outbound::Claim { subject: subjects::claims(&claim.account), payload: Bytes::from(payload) })
            .is_err()
        {
            tracing::warn!(client_id = %wire.client_id, "a client ID claim could not be announced: the outbound queue is full");
        }
    }

    fn interest(&self, account: &AccountId, filter: &TopicFilter, wanted: bool) {
        let mut interests = self.interests.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let key = (account.clone(), filter.clone());
        if wanted {
            interests.wanted.insert(key.clone());
        } else {
            interests.wanted.remove(&key);
        }
        interests.dirty.insert(key);
        drop(interests);
        self.interests_changed.notify_one();
    }

    fn flush(&self, within: Duration) -> std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send + '_>> {
        Box::pin(async move {
            let deadline = Instant::now() + within;
            while self.outbound_queued.load(Ordering::Relaxed) > 0 && Instant::now() < deadline {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            let flushed = async {
                let _ = self.plain.flush().await;
                self.client.flush().await
            };
            if tokio::time::timeout_at(deadline, flushed).await.is_err() {
                tracing::warn!("NATS did not take everything queued before shutdown");
            }
        })
    }

    fn stores_retained(&self) -> bool {
        true
    }

    fn shares_groups(&self) -> bool {
        true
    }

    fn render_metrics(&self, out: &mut String) {
        NatsFabric::render_metrics(self, out);
    }
}

/// A node's name as a dedup key.
fn origin_key(origin: &str) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    origin.hash(&mut hasher);
    hasher.finish()
}

fn random_u64() -> u64 {
    let mut bytes = [0u8; 8];
    // A fixed start only weakens duplicate detection across restarts; never fatal.
    let _ = aws_lc_rs::rand::fill(&mut bytes);
    u64::from_le_bytes(bytes)
}

/// A router that is never there (before the broker attaches).
struct NoRouter;

impl Router for NoRouter {
    fn route(&self, _message: &RoutedMessage, _delivery: Delivery<'_>) {}
    fn claimed(&self, _claim: &ClientClaim) {}
}

/// Sends what the node queued, in order; a failure is counted and logged at most every
/// [`WARN_INTERVAL`].
async fn send_loop(
    client: async_nats::Client,
    plain: async_nats::Client,
    retained: kv::Store,
    sessions: kv::Store,
    mut outbound: mpsc::UnboundedReceiver<Outbound>,
    queued: Arc<AtomicUsize>,
    counters: Arc<ClusterCounters>,
) {
    let mut warned: Option<Instant> = None;
    while let Some(item) = outbound.recv().await {
        let bytes = item.bytes();
        let result = match item {
            Outbound::Message { subject, payload } => {
                plain.publish(subject, payload).await.map_err(|error| error.to_string())
            }
            Outbound::Claim { subject, payload } => {
                client.publish(subject, payload).await.map_err(|error| error.to_string())
            }
            Outbound::Retain { key, value: Some(value) } => {
                retained.put(key, value).await.map(|_| ()).map_err(|error| error.to_string())
            }
            Outbound::Retain { key, value: None } => retained.delete(key).await.map_err(|error| error.to_string()),
            Outbound::Session { key, value: Some(value) } => {
                sessions.put(key, value).await.map(|_| ()).map_err(|error| error.to_string())
            }
            Outbound::Session { key, value: None } => sessions.delete(key).await.map_err(|error| error.to_string()),
        };
        queued.fetch_sub(bytes, Ordering::Relaxed);
        match result {
            Ok(()) => {
                counters.sent.fetch_add(1, Ordering::Relaxed);
            }
            Err(error) => {
                counters.errors.fetch_add(1, Ordering::Relaxed);
                if warned.is_none_or(|at| at.elapsed() >= WARN_INTERVAL) {
                    warned = Some(Instant::now());
                    tracing::warn!(%error, "sending to the cluster failed (logged once a minute)");
                }
            }
        }
    }
}

const WARN_INTERVAL: Duration = Duration::from_secs(60);

/// When a connection of the node last came back after NATS was lost, read on every publish:
/// an atomic, milliseconds after `base` (0: never).
struct Reconnected {
    base: std::time::Instant,
    at_ms: AtomicU64,
}

impl Default for Reconnected {
    fn default() -> Self {
        Reconnected { base: std::time::Instant::now(), at_ms: AtomicU64::new(0) }
    }
}

impl Reconnected {
    fn elapsed_ms(&self) -> u64 {
        u64::try_from(self.base.elapsed().as_millis()).unwrap_or(u64::MAX).max(1)
    }

    fn now(&self) {
        self.at_ms.store(self.elapsed_ms(), Ordering::Relaxed);
    }

    /// Whether a connection came back less than `window` ago.
    fn within(&self, window: Duration) -> bool {
        let at = self.at_ms.load(Ordering::Relaxed);
        at != 0 && self.elapsed_ms().saturating_sub(at) < u64::try_from(window.as_millis()).unwrap_or(u64::MAX)
    }
}

/// How long publishes are refused after this node's connection to NATS came back.
const RESUBSCRIBE_SETTLE: Duration = Duration::from_millis(500);

/// Which subscription a NATS message arrived on.
#[derive(Clone)]
enum Kind {
    /// A filter's plain subscribers.
    Plain,
    /// A shared group's queue (the filter names the group).
    Shared(Arc<TopicFilter>),
    /// Client ID claims.
    Claims,
}

type Arrivals = SelectAll<BoxStream<'static, (Kind, async_nats::Message)>>;

/// Receives what the cluster sends this node and hands it to the router; keeps the node's NATS
/// subscriptions equal to its interests.
struct Receiver {
    node: NodeId,
    /// Queue groups and claims.
    client: async_nats::Client,
    /// Plain subscriptions (never this node's own messages).
    plain: async_nats::Client,
    router: Weak<dyn Router>,
    counters: Arc<ClusterCounters>,
    max_packet: usize,
    /// Recent (node, message number) pairs routed here, to skip extra copies.
    recent: HashSet<(u64, u64)>,
    order: VecDeque<(u64, u64)>,
    /// The subscriptions made, per interest; dropping the senders ends their streams (and so
    /// unsubscribes).
    active: HashMap<(AccountId, TopicFilter), Vec<tokio::sync::oneshot::Sender<()>>>,
}

impl Receiver {
    async fn run(mut self, interests: Arc<Mutex<Interests>>, changed: Arc<Notify>) {
        let mut arrivals: Arrivals = SelectAll::new();
        match self.client.subscribe(subjects::ALL_CLAIMS).await {
            Ok(claims) => arrivals.push(claims.map(|message| (Kind::Claims, message)).boxed()),
            Err(error) => {
                tracing::error!(%error, "subscribing to client ID claims failed: takeovers across nodes will not work")
            }
        }
        loop {
            if self.router.strong_count() == 0 {
                return;
            }
            tokio::select! {
                () = changed.notified() => self.reconcile(&interests, &mut arrivals).await,
                Some((kind, message)) = arrivals.next(), if !arrivals.is_empty() => self.arrive(kind, message),
            }
        }
    }

    /// Subscribes to the interests that gained their first subscriber, unsubscribes from those
    /// that lost their last.
    async fn reconcile(&mut self, interests: &Mutex<Interests>, arrivals: &mut Arrivals) {
        let changes: Vec<((AccountId, TopicFilter), bool)> = {
            let mut interests = interests.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            let dirty = std::mem::take(&mut interests.dirty);
            dirty
                .into_iter()
                .map(|key| {
                    let wanted = interests.wanted.contains(&key);
                    (key, wanted)
                })
                .collect()
        };
        for (key, wanted) in changes {
            if !wanted {
                self.active.remove(&key);
                continue;
            }
            if self.active.contains_key(&key) {
                continue;
            }
            let (account, filter) = &key;
            let kind = match filter.share_group() {
                Some(_) => Kind::Shared(Arc::new(filter.clone())),
                None => Kind::Plain,
            };
            let mut cancels = Vec::new();
            for subject in subjects::filter(account, filter) {
                let subscribed = match &kind {
                    Kind::Shared(_) => self.client.queue_subscribe(subject, subjects::queue(account, filter)).await,
                    _ => self.plain.subscribe(subject).await,
                };
                match subscribed {
                    Ok(subscriber) => {
                        let (cancel, cancelled) = tokio::sync::oneshot::channel::<()>();
                        let kind = kind.clone();
                        arrivals
                            .push(subscriber.take_until(cancelled).map(move |message| (kind.clone(), message)).boxed());
                        cancels.push(cancel);
                    }
                    Err(error) => {
                        self.counters.errors.fetch_add(1, Ordering::Relaxed);
                        tracing::warn!(%error, filter = filter.as_str(), "subscribing on NATS failed");
                    }
                }
            }
            self.active.insert(key, cancels);
        }
    }

    fn arrive(&mut self, kind: Kind, message: async_nats::Message) {
        let Some(router) = self.router.upgrade() else { return };
        match kind {
            Kind::Claims => self.claim(&*router, &message),
            Kind::Plain | Kind::Shared(_) => {
                self.counters.received.fetch_add(1, Ordering::Relaxed);
                let Some(routed) = self.message(&kind, &message) else { return };
                match &kind {
                    Kind::Shared(filter) => router.route(&routed, Delivery::Shared(filter)),
                    _ => router.route(&routed, Delivery::Plain),
                }
            }
        }
    }

    /// The message a NATS message carries, unless it is malformed or a copy to skip.
    fn message(&mut self, kind: &Kind, message: &async_nats::Message) -> Option<RoutedMessage> {
        let account = message.subject.split('.').nth(2).and_then(|account| AccountId::parse(account).ok());
        let framed = &message.payload[..];
        let origin = framed.first().map(|len| usize::from(*len)).and_then(|len| {
            let origin = std::str::from_utf8(framed.get(1..1 + len)?).ok()?;
            Some((origin, &framed[1 + len..]))
        });
        let now = Instant::now();
        let (Some(account), Some((origin, bytes))) = (account, origin) else {
            self.counters.malformed.fetch_add(1, Ordering::Relaxed);
            return None;
        };
        let plain = matches!(kind, Kind::Plain);
        // This node routed its own message to its plain subscribers already.
        if plain && origin == self.node.as_str() {
            self.counters.duplicates.fetch_add(1, Ordering::Relaxed);
            return None;
        }
        let (decoded, sequence) = match envelope::decode(bytes, self.max_packet, now) {
            Ok(decoded) => decoded,
            Err(error) => {
                self.counters.malformed.fetch_add(1, Ordering::Relaxed);
                tracing::debug!(%error, "a malformed message from the cluster was dropped");
                return None;
            }
        };
        if plain {
            // The origin's name hashed (no allocation per message); numbers start at random.
            let id = (origin_key(origin), sequence);
            if !self.recent.insert(id) {
                self.counters.duplicates.fetch_add(1, Ordering::Relaxed);
                return None;
            }
            self.order.push_back(id);
            if self.order.len() > DEDUPLICATION_WINDOW
                && let Some(old) = self.order.pop_front()
            {
                self.recent.remove(&old);
            }
        }
        Some(RoutedMessage { account, message: Arc::new(decoded) })
    }

    fn claim(&self, router: &dyn Router, message: &async_nats::Message) {
        self.counters.claims_received.fetch_add(1, Ordering::Relaxed);
        let account = message.subject.split('.').nth(2).and_then(|account| AccountId::parse(account).ok());
        let wire: Option<ClaimWire> =
            (message.payload.len() <= 4096).then(|| serde_json::from_slice(&message.payload).ok()).flatten();
        let (Some(account), Some(wire)) = (account, wire) else {
            self.counters.malformed.fetch_add(1, Ordering::Relaxed);
            return;
        };
        let Ok(node) = NodeId::parse(&wire.node) else {
            self.counters.malformed.fetch_add(1, Ordering::Relaxed);
            return;
        };
        if node == self.node {
            return;
        }
        router.claimed(&ClientClaim { account, client_id: wire.client_id, node, revision: wire.revision });
    }
}

/// Keeps the router's retained messages equal to the cluster's store: all of it first, then
/// every change; the watch is made again if it ends (NATS restarted).
async fn watch_retained(store: kv::Store, router: Weak<dyn Router>, counters: Arc<ClusterCounters>, max_packet: usize) {
    loop {
        if router.strong_count() == 0 {
            return;
        }
        match store.watch_with_history(">").await {
            Ok(mut watch) => {
                while let Some(entry) = watch.next().await {
                    let Some(router) = router.upgrade() else { return };
                    match entry {
                        Ok(entry) => apply_retained(&*router, &entry, &counters, max_packet),
                        Err(error) => {
                            tracing::warn!(%error, "watching the cluster's retained messages failed; watching again");
                            break;
                        }
                    }
                }
            }
            Err(error) => tracing::warn!(%error, "watching the cluster's retained messages failed; trying again"),
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

fn apply_retained(router: &dyn Router, entry: &kv::Entry, counters: &ClusterCounters, max_packet: usize) {
    let Some((account, topic)) = subjects::parse_retained_key(&entry.key) else {
        counters.malformed.fetch_add(1, Ordering::Relaxed);
        return;
    };
    match entry.operation {
        kv::Operation::Put => match envelope::decode(&entry.value, max_packet, Instant::now()) {
            Ok((message, _)) if message.topic == topic => router.retained(&account, &topic, Some(Arc::new(message))),
            _ => {
                counters.malformed.fetch_add(1, Ordering::Relaxed);
            }
        },
        kv::Operation::Delete | kv::Operation::Purge => router.retained(&account, &topic, None),
    }
}
