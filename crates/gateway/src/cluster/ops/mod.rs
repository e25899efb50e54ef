//! Cluster-wide operations: the operator view of every node, and the nudge that makes every
//! node read the change feed at once after a commit.
//!
//! **The view.** [`ClusterDataPlane`] is the [`DataPlane`] a node of a NATS cluster offers the
//! API and the console: its own view (the endpoints'), plus every other node's, asked over NATS
//! at the moment of the call. The asking node publishes one request on
//! `cf.ops.ask.<kind>.<account>` (`sessions`, `refusals`, `endpoint`) with a reply inbox; every
//! node answers with its own view of that account, framed in parts under NATS's payload limit
//! ([`frame`]), and the asker gathers the answers until every node it knows of has answered or
//! the deadline passes ([`OpsConfig::deadline`], 500 ms), whichever comes first. Then it sums
//! them: devices listed with the node serving them, refusals summed by reason, per-chain
//! counters and drains summed, each node's own view of the configuration kept beside (which
//! chain it serves: a node that has not followed a migration is visible), and the nodes that
//! did not answer named.
//!
//! A node knows the others by their hellos on `cf.ops.nodes` (every
//! [`OpsConfig::hello_interval`], and at once to a node it did not know): a node not heard for
//! three intervals is not waited for. A node that knows no other answers from its own view at
//! once.
//!
//! **Hostile read.** What other nodes send is decoded as input: each answer is bounded in parts,
//! bytes ([`OpsConfig::max_answer_bytes`]) and entries ([`OpsConfig::max_entries`]: the devices
//! of one node, the client IDs of one drain, past which the answer says it is truncated), the
//! answers of one request in nodes ([`OpsConfig::max_nodes`]) and bytes
//! ([`OpsConfig::max_gathered_bytes`]); every string is bounded and every certificate ID, node
//! name and refusal reason parsed. A malformed answer is counted and left out; a slow node
//! cannot hold the view past the deadline; nothing is kept once the call returns.
//!
//! **The nudge.** When this process commits a change-feed entry (`commits`, told by the store:
//! `certfleet_services::feed::Announcing`), the node's follower reads the feed at once and the
//! node publishes `cf.ops.changed`; every other node's follower then reads it at once too
//! (`poll_now`). Nudges are coalesced (at most one per [`NUDGE_GAP`]); the follower's timer stays
//! the safety net for a nudge lost (NATS down, a node reconnecting).
//!
//! [`DataPlane`]'s calls are synchronous (the API and the console call them in place): a call
//! waits for the answers on the multi-threaded runtime (`block_in_place`), at most the deadline.
//! On a current-thread runtime it answers from this node's view alone.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use bytes::Bytes;
use certfleet_registry::AccountId;
use certfleet_services::{ConnectedClient, DataPlane, EndpointReport};
use futures_util::StreamExt;
use tokio::sync::Notify;
use tokio::time::Instant;

use super::NatsFabric;
use crate::fabric::NodeId;
use wire::{
    ALL_ASKS, ASK, Answers, Ask, CHANGED, Dropped, NODES, NodeReport, RequestWire, decode_endpoint, decode_refusals,
    decode_request, decode_sessions, encode_endpoint, encode_refusals, encode_sessions, frame, merge_reports, on_chain,
    parse_ask_subject, part_size,
};

mod wire;

/// The bounds and timing of the cluster-wide view.
#[derive(Clone, Debug)]
pub struct OpsConfig {
    /// How long a call waits for the other nodes' answers.
    pub deadline: Duration,
    /// How often a node tells the others it is there; a node not heard for three intervals is
    /// no longer waited for.
    pub hello_interval: Duration,
    /// At most this many other nodes' answers per call (and nodes known).
    pub max_nodes: usize,
    /// At most this many entries in one node's answer: its devices, or the client IDs of one
    /// drain list. Past it the answer is truncated (and counted).
    pub max_entries: usize,
    /// At most this many bytes in one node's answer.
    pub max_answer_bytes: usize,
    /// At most this many bytes of answers held for one call.
    pub max_gathered_bytes: usize,
}

impl Default for OpsConfig {
    fn default() -> Self {
        OpsConfig {
            deadline: Duration::from_millis(500),
            hello_interval: Duration::from_secs(2),
            max_nodes: 64,
            max_entries: 10_000,
            max_answer_bytes: 16 * 1024 * 1024,
            max_gathered_bytes: 64 * 1024 * 1024,
        }
    }
}

/// The shortest time between two nudges this node sends.
pub const NUDGE_GAP: Duration = Duration::from_millis(20);
/// The shortest time between two hellos this node sends.
const HELLO_GAP: Duration = Duration::from_millis(100);

// ---- the node's side ------------------------------------------------------------------------

/// The view's counters, in `/metrics`.
#[derive(Debug, Default)]
pub struct OpsCounters {
    /// Calls that asked the other nodes.
    pub calls: AtomicU64,
    /// Answers gathered whole and decoded.
    pub answers: AtomicU64,
    /// Known nodes that did not answer a call in time.
    pub missing: AtomicU64,
    /// Parts or answers that were not what a node sends (counted and left out).
    pub malformed: AtomicU64,
    /// Answers left out for the call's bounds (nodes, bytes).
    pub over_budget: AtomicU64,
    /// Answers whose list was cut at its bound.
    pub truncated: AtomicU64,
    /// Calls answered from this node's view alone: no multi-threaded runtime to wait on.
    pub local_only: AtomicU64,
    /// Requests this node answered.
    pub served: AtomicU64,
    pub nudges_sent: AtomicU64,
    pub nudges_received: AtomicU64,
    /// Sends NATS refused.
    pub errors: AtomicU64,
}

/// What the view holds: this node's, the NATS connection, the nodes known.
struct Shared {
    node: NodeId,
    client: async_nats::Client,
    local: Arc<dyn DataPlane>,
    config: OpsConfig,
    /// The other nodes, by when they were last heard.
    peers: Mutex<HashMap<NodeId, Instant>>,
    counters: OpsCounters,
}

/// The answers a call gathered, and the known nodes that did not answer.
#[derive(Default)]
struct Gathered {
    answers: Vec<(NodeId, Vec<u8>)>,
    missing: Vec<NodeId>,
}

impl Shared {
    fn peers(&self) -> std::sync::MutexGuard<'_, HashMap<NodeId, Instant>> {
        self.peers.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The nodes heard within three hello intervals.
    fn alive(&self) -> Vec<NodeId> {
        let silence = self.config.hello_interval * 3;
        let now = Instant::now();
        let mut peers = self.peers();
        peers.retain(|_, heard| now.duration_since(*heard) <= silence);
        peers.keys().cloned().collect()
    }

    /// A hello: `true` when it came from a node not known before.
    fn heard(&self, payload: &[u8]) -> bool {
        let Some(node) = std::str::from_utf8(payload).ok().and_then(|name| NodeId::parse(name).ok()) else {
            self.counters.malformed.fetch_add(1, Ordering::Relaxed);
            return false;
        };
        if node == self.node {
            return false;
        }
        let mut peers = self.peers();
        let known = peers.contains_key(&node);
        if !known && peers.len() >= self.config.max_nodes {
            return false;
        }
        peers.insert(node, Instant::now());
        !known
    }

    /// Asks every other node and gathers their answers until each node known has answered or
    /// the deadline passes.
    async fn collect(&self, ask: Ask, account: &AccountId, configuration: Option<&str>) -> Gathered {
        let expected = self.alive();
        if expected.is_empty() {
            return Gathered::default();
        }
        self.counters.calls.fetch_add(1, Ordering::Relaxed);
        let deadline = Instant::now() + self.config.deadline;
        let request = RequestWire { from: self.node.to_string(), configuration: configuration.map(str::to_owned) };
        let subject = format!("{ASK}.{}.{account}", ask.as_str());
        let inbox = self.client.new_inbox();
        let mut answers = Answers::new(self.node.clone(), &self.config);
        let sent = async {
            let replies = self.client.subscribe(inbox.clone()).await.map_err(|error| error.to_string())?;
            let payload = Bytes::from(serde_json::to_vec(&request).map_err(|error| error.to_string())?);
            self.client.publish_with_reply(subject, inbox, payload).await.map_err(|error| error.to_string())?;
            Ok::<_, String>(replies)
        };
        let mut replies = match tokio::time::timeout_at(deadline, sent).await {
            Ok(Ok(replies)) => replies,
            Ok(Err(error)) => {
                self.counters.errors.fetch_add(1, Ordering::Relaxed);
                tracing::debug!(%error, "asking the cluster failed: this node's view only");
                self.counters.missing.fetch_add(expected.len() as u64, Ordering::Relaxed);
                return Gathered { answers: Vec::new(), missing: expected };
            }
            Err(_) => {
                self.counters.missing.fetch_add(expected.len() as u64, Ordering::Relaxed);
                return Gathered { answers: Vec::new(), missing: expected };
            }
        };
        while !expected.iter().all(|node| answers.answered(node)) {
            let message = match tokio::time::timeout_at(deadline, replies.next()).await {
                Ok(Some(message)) => message,
                Ok(None) | Err(_) => break,
            };
            match answers.take(&message.payload) {
                Ok(_) => {}
                Err(Dropped::Malformed) => {
                    self.counters.malformed.fetch_add(1, Ordering::Relaxed);
                }
                Err(Dropped::TooManyNodes | Dropped::OverBudget) => {
                    self.counters.over_budget.fetch_add(1, Ordering::Relaxed);
                }
            }
        }
        let missing: Vec<NodeId> = expected.into_iter().filter(|node| !answers.answered(node)).collect();
        self.counters.missing.fetch_add(missing.len() as u64, Ordering::Relaxed);
        Gathered { answers: answers.complete, missing }
    }

    /// Answers another node's request with this node's view.
    async fn answer(&self, message: async_nats::Message) {
        let request = parse_ask_subject(&message.subject).zip(decode_request(&message.payload));
        let (Some(reply), Some(((ask, account), request))) = (message.reply, request) else {
            self.counters.malformed.fetch_add(1, Ordering::Relaxed);
            return;
        };
        if request.from == self.node.as_str() {
            return;
        }
        let config = &self.config;
        let body = match ask {
            Ask::Sessions => {
                encode_sessions(self.local.connected_clients(&account), config.max_entries, config.max_answer_bytes)
            }
            Ask::Refusals => encode_refusals(self.local.recent_refusals(&account)),
            Ask::Endpoint => {
                let Some(configuration) = request.configuration else {
                    self.counters.malformed.fetch_add(1, Ordering::Relaxed);
                    return;
                };
                let report = self.local.endpoint_report(&account, &configuration).unwrap_or_default();
                let ids = on_chain(&*self.local, &account, &configuration, &report, config.max_entries);
                encode_endpoint(report, ids, config.max_entries, config.max_answer_bytes)
            }
        };
        let size = part_size(self.client.server_info().max_payload);
        let chunks: Vec<&[u8]> = body.chunks(size).collect();
        let Ok(parts) = u16::try_from(chunks.len()) else { return };
        for (part, chunk) in (0..parts).zip(chunks) {
            if self.client.publish(reply.clone(), frame(&self.node, part, parts, chunk)).await.is_err() {
                self.counters.errors.fetch_add(1, Ordering::Relaxed);
                return;
            }
        }
        self.counters.served.fetch_add(1, Ordering::Relaxed);
    }
}

/// The cluster's view, as the [`DataPlane`] of one node (see the module documentation).
pub struct ClusterDataPlane {
    shared: Arc<Shared>,
}

impl ClusterDataPlane {
    /// The view of the node `fabric` connects, over `local` (the node's own view). Starts the
    /// node's side: answering the others, hellos, and the nudges (`commits` told by this
    /// process's store; `poll_now` tells the node's follower). It ends when the view is dropped.
    pub(crate) fn start(
        fabric: &NatsFabric,
        local: Arc<dyn DataPlane>,
        poll_now: Arc<Notify>,
        commits: Arc<Notify>,
        config: OpsConfig,
    ) -> Arc<Self> {
        let shared = Arc::new(Shared {
            node: fabric.node.clone(),
            client: fabric.client.clone(),
            local,
            config,
            peers: Mutex::new(HashMap::new()),
            counters: OpsCounters::default(),
        });
        tokio::spawn(serve(Arc::downgrade(&shared), poll_now, commits));
        Arc::new(ClusterDataPlane { shared })
    }

    pub fn counters(&self) -> &OpsCounters {
        &self.shared.counters
    }

    /// The other nodes this node knows of now.
    pub fn peers(&self) -> Vec<String> {
        let mut peers: Vec<String> = self.shared.alive().iter().map(ToString::to_string).collect();
        peers.sort();
        peers
    }

    /// Asks the other nodes, waiting at most the deadline (see the module documentation).
    fn gather(&self, ask: Ask, account: &AccountId, configuration: Option<&str>) -> Gathered {
        let local_only = || {
            self.shared.counters.local_only.fetch_add(1, Ordering::Relaxed);
            Gathered { answers: Vec::new(), missing: self.shared.alive() }
        };
        let Ok(handle) = tokio::runtime::Handle::try_current() else { return local_only() };
        if matches!(handle.runtime_flavor(), tokio::runtime::RuntimeFlavor::CurrentThread) {
            return local_only();
        }
        tokio::task::block_in_place(|| handle.block_on(self.shared.collect(ask, account, configuration)))
    }

    fn note_missing(&self, what: Ask, account: &AccountId, missing: &[NodeId]) {
        if !missing.is_empty() {
            let missing: Vec<&str> = missing.iter().map(NodeId::as_str).collect();
            tracing::debug!(%account, view = what.as_str(), ?missing, "nodes did not answer in time");
        }
    }

    fn decoded(&self) {
        self.shared.counters.answers.fetch_add(1, Ordering::Relaxed);
    }

    fn malformed(&self, node: &NodeId, what: Ask) {
        self.shared.counters.malformed.fetch_add(1, Ordering::Relaxed);
        tracing::debug!(node = %node, view = what.as_str(), "a node's answer was malformed: left out");
    }

    /// The view's state and counters, in the Prometheus text format.
    pub fn render_metrics(&self, out: &mut String) {
        use std::fmt::Write as _;
        let counters = &self.shared.counters;
        let _ = writeln!(out, "# HELP certfleet_cluster_ops_peers Other nodes this node knows (heard recently).");
        let _ = writeln!(out, "# TYPE certfleet_cluster_ops_peers gauge");
        let _ = writeln!(out, "certfleet_cluster_ops_peers {}", self.shared.alive().len());
        let _ = writeln!(
            out,
            "# HELP certfleet_cluster_ops_total The cluster-wide operator view and change nudges, by what happened."
        );
        let _ = writeln!(out, "# TYPE certfleet_cluster_ops_total counter");
        for (what, counter) in [
            ("call", &counters.calls),
            ("answer", &counters.answers),
            ("missing", &counters.missing),
            ("malformed", &counters.malformed),
            ("over_budget", &counters.over_budget),
            ("truncated", &counters.truncated),
            ("local_only", &counters.local_only),
            ("served", &counters.served),
            ("nudge_sent", &counters.nudges_sent),
            ("nudge_received", &counters.nudges_received),
            ("error", &counters.errors),
        ] {
            let _ = writeln!(out, "certfleet_cluster_ops_total{{what=\"{what}\"}} {}", counter.load(Ordering::Relaxed));
        }
    }
}

impl DataPlane for ClusterDataPlane {
    fn connected_clients(&self, account: &AccountId) -> Vec<ConnectedClient> {
        let me = self.shared.node.to_string();
        let mut clients: Vec<ConnectedClient> = self
            .shared
            .local
            .connected_clients(account)
            .into_iter()
            .map(|client| ConnectedClient { node: Some(me.clone()), ..client })
            .collect();
        let gathered = self.gather(Ask::Sessions, account, None);
        for (node, bytes) in gathered.answers {
            match decode_sessions(&bytes, &node, self.shared.config.max_entries) {
                Ok((listed, truncated, skipped)) => {
                    self.decoded();
                    if truncated {
                        self.shared.counters.truncated.fetch_add(1, Ordering::Relaxed);
                        tracing::debug!(node = %node, %account, "a node's device list was cut at its bound");
                    }
                    self.shared.counters.malformed.fetch_add(skipped as u64, Ordering::Relaxed);
                    clients.extend(listed);
                }
                Err(_) => self.malformed(&node, Ask::Sessions),
            }
        }
        self.note_missing(Ask::Sessions, account, &gathered.missing);
        clients.sort_by(|a, b| (a.connected_at, &a.node).cmp(&(b.connected_at, &b.node)));
        clients
    }

    fn endpoint_report(&self, account: &AccountId, configuration: &str) -> Option<EndpointReport> {
        let config = &self.shared.config;
        let local = self.shared.local.endpoint_report(account, configuration).unwrap_or_default();
        let ids = on_chain(&*self.shared.local, account, configuration, &local, config.max_entries);
        let mut parts = vec![NodeReport { node: self.shared.node.to_string(), report: local, on_chain: ids }];
        let gathered = self.gather(Ask::Endpoint, account, Some(configuration));
        for (node, bytes) in gathered.answers {
            match decode_endpoint(&bytes, &node, config.max_entries) {
                Ok((part, truncated)) => {
                    self.decoded();
                    if truncated {
                        self.shared.counters.truncated.fetch_add(1, Ordering::Relaxed);
                    }
                    parts.push(part);
                }
                Err(_) => self.malformed(&node, Ask::Endpoint),
            }
        }
        self.note_missing(Ask::Endpoint, account, &gathered.missing);
        Some(merge_reports(parts, gathered.missing.iter().map(ToString::to_string).collect()))
    }

    fn recent_refusals(&self, account: &AccountId) -> Vec<(String, u64)> {
        let mut totals: BTreeMap<String, u64> = self.shared.local.recent_refusals(account).into_iter().collect();
        let gathered = self.gather(Ask::Refusals, account, None);
        for (node, bytes) in gathered.answers {
            match decode_refusals(&bytes) {
                Ok(refusals) => {
                    self.decoded();
                    for (reason, count) in refusals {
                        let total = totals.entry(reason.to_owned()).or_default();
                        *total = total.saturating_add(count);
                    }
                }
                Err(_) => self.malformed(&node, Ask::Refusals),
            }
        }
        self.note_missing(Ask::Refusals, account, &gathered.missing);
        let mut refusals: Vec<(String, u64)> = totals.into_iter().collect();
        refusals.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
        refusals
    }
}

/// The node's side, until the view is dropped: answers the other nodes' requests, says hello,
/// keeps the nodes known, and carries the nudges both ways.
async fn serve(shared: Weak<Shared>, poll_now: Arc<Notify>, commits: Arc<Notify>) {
    let Some((client, node, hello_interval)) =
        shared.upgrade().map(|shared| (shared.client.clone(), shared.node.clone(), shared.config.hello_interval))
    else {
        return;
    };
    let subscribed = async {
        Ok::<_, async_nats::SubscribeError>((
            client.subscribe(ALL_ASKS).await?,
            client.subscribe(CHANGED).await?,
            client.subscribe(NODES).await?,
        ))
    };
    let (mut asks, mut nudges, mut hellos) = match subscribed.await {
        Ok(subscriptions) => subscriptions,
        Err(error) => {
            tracing::error!(%error, "subscribing to the cluster's operations failed: this node's view is its own");
            return;
        }
    };
    let name = Bytes::from(node.as_str().to_owned());
    let count_error = |sent: Result<(), async_nats::PublishError>| {
        if sent.is_err()
            && let Some(shared) = shared.upgrade()
        {
            shared.counters.errors.fetch_add(1, Ordering::Relaxed);
        }
    };
    // Hellos to a node just heard of, and nudges, wait for their gap on a timer of the loop
    // (never in it: the loop answers requests meanwhile).
    let mut hello_at: Option<Instant> = None;
    let mut nudge_at: Option<Instant> = None;
    let mut last_hello = Instant::now();
    let mut last_nudge: Option<Instant> = None;
    let mut ticker = tokio::time::interval(hello_interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let hello_soon = sleep_until_some(hello_at);
        let nudge_soon = sleep_until_some(nudge_at);
        tokio::select! {
            _ = ticker.tick() => {
                if shared.strong_count() == 0 {
                    return;
                }
                count_error(client.publish(NODES, name.clone()).await);
                last_hello = Instant::now();
                hello_at = None;
            }
            () = hello_soon => {
                count_error(client.publish(NODES, name.clone()).await);
                last_hello = Instant::now();
                hello_at = None;
            }
            () = commits.notified() => {
                poll_now.notify_one();
                let earliest = last_nudge.map_or_else(Instant::now, |last| last + NUDGE_GAP);
                nudge_at.get_or_insert(earliest.max(Instant::now()));
            }
            () = nudge_soon => {
                count_error(client.publish(CHANGED, name.clone()).await);
                last_nudge = Some(Instant::now());
                nudge_at = None;
                if let Some(shared) = shared.upgrade() {
                    shared.counters.nudges_sent.fetch_add(1, Ordering::Relaxed);
                }
            }
            Some(message) = nudges.next() => {
                if message.payload != name {
                    poll_now.notify_one();
                    if let Some(shared) = shared.upgrade() {
                        shared.counters.nudges_received.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
            Some(message) = hellos.next() => {
                let Some(shared) = shared.upgrade() else { return };
                if shared.heard(&message.payload) {
                    hello_at.get_or_insert((last_hello + HELLO_GAP).max(Instant::now()));
                }
            }
            Some(message) = asks.next() => {
                let Some(shared) = shared.upgrade() else { return };
                shared.answer(message).await;
            }
        }
    }
}

/// Sleeps until `at`; never ends without one.
async fn sleep_until_some(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}
