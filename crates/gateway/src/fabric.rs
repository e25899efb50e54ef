//! The message fabric: how an application message reaches every subscriber of its account, on
//! whichever gateway node the subscriber is connected to, and how a client ID claimed on one node
//! closes the connection using it on another.
//!
//! A node's broker never delivers a publish straight to its own subscribers: it hands the message
//! to the fabric, which hands it to the [`Router`] of every node (this one included), and each
//! router matches the message against its own local subscriptions. [`LocalFabric`] does that in
//! process, for one node or for several brokers in one process (tests): each router keeps its
//! own copy of the account's retained messages and serves shared groups. The networked fabric
//! (`crate::cluster`, NATS between gateway nodes) routes on this node in the publisher's task
//! and forwards to the nodes that subscribed to the message's subject; it serves shared groups
//! with NATS queue groups and keeps retained messages in a cluster-wide store.
//!
//! **Architecture Invariant:** the session layer talks to other sessions only through this trait:
//! no code in `session` or `broker` assumes that a client ID or a subscriber lives on this node.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, Weak};

use bytes::Bytes;
use certfleet_mqtt::{Properties, QoS, TopicFilter, TopicName};
use certfleet_registry::AccountId;
use tokio::time::Instant;

/// The name of a gateway node, unique among the nodes sharing a fabric and the registry (the
/// prune claim's holder, and later the owner of client IDs across nodes).
///
/// It comes from the command line or the configuration file, so it is checked as hostile input
/// ([`NodeId::parse`]): 1 to [`NodeId::MAX_LEN`] ASCII letters, digits, `-` and `_`, starting
/// with a letter or a digit. That keeps it a single token wherever it travels: a log field, a
/// database column, a NATS subject token (no `.`, `*`, `>` nor white space).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct NodeId(String);

/// Why a node name was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum InvalidNodeId {
    /// The name is empty.
    #[error("a node id cannot be empty")]
    Empty,
    /// The name is longer than [`NodeId::MAX_LEN`] bytes.
    #[error("a node id is at most {} characters", NodeId::MAX_LEN)]
    TooLong,
    /// The name holds a character other than ASCII letters, digits, `-` and `_`.
    #[error("a node id holds only ASCII letters, digits, '-' and '_'")]
    Character,
    /// The name starts with `-` or `_`.
    #[error("a node id starts with a letter or a digit")]
    Start,
}

impl NodeId {
    /// The longest node name.
    pub const MAX_LEN: usize = 64;

    /// A node name, checked.
    pub fn parse(name: &str) -> Result<Self, InvalidNodeId> {
        let Some(first) = name.bytes().next() else { return Err(InvalidNodeId::Empty) };
        if name.len() > Self::MAX_LEN {
            return Err(InvalidNodeId::TooLong);
        }
        if !name.bytes().all(|byte| byte.is_ascii_alphanumeric() || byte == b'-' || byte == b'_') {
            return Err(InvalidNodeId::Character);
        }
        if !first.is_ascii_alphanumeric() {
            return Err(InvalidNodeId::Start);
        }
        Ok(NodeId(name.to_owned()))
    }

    /// The name of a node that runs alone (the broker's tests, the default configuration).
    pub fn local() -> Self {
        NodeId("local".to_owned())
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl std::str::FromStr for NodeId {
    type Err = InvalidNodeId;

    fn from_str(name: &str) -> Result<Self, Self::Err> {
        NodeId::parse(name)
    }
}

impl fmt::Display for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// An application message as the broker routes it: what a subscriber receives, whatever the
/// protocol version of the publisher.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Message {
    pub topic: TopicName,
    pub payload: Bytes,
    /// The QoS it was published with; each subscriber gets at most its subscription's QoS.
    pub qos: QoS,
    pub retain: bool,
    /// The MQTT 5 properties forwarded unchanged: payload format indicator, content type, response
    /// topic, correlation data and user properties. Never a topic alias, a subscription identifier
    /// or a message expiry interval (see `expires_at`).
    pub properties: Properties,
    /// When the message expires (MQTT 5 Message Expiry Interval), on this node's clock. A
    /// networked fabric sends the remaining interval and rebuilds the deadline on arrival.
    pub expires_at: Option<Instant>,
    /// The client ID of the publisher, for the No Local subscription option; `None` for messages
    /// the broker publishes itself (lifecycle events).
    pub publisher: Option<String>,
}

impl Message {
    /// Whether the message has expired at `now`.
    pub fn expired(&self, now: Instant) -> bool {
        self.expires_at.is_some_and(|deadline| deadline <= now)
    }
}

/// A message published in one account's topic space.
#[derive(Clone, Debug)]
pub struct RoutedMessage {
    pub account: AccountId,
    pub message: Arc<Message>,
}

/// A connection took a client ID on a node: any other connection using the same client ID in the
/// same account, on any other node, must close (MQTT's session takeover, as AWS IoT does it).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClientClaim {
    pub account: AccountId,
    pub client_id: String,
    pub node: NodeId,
    /// The claim's place in the cluster-wide order of the claims of this client ID ([`Fabric::
    /// reserve_client_id`]): a connection yields only to a claim with a higher one. 0 on a
    /// fabric without such an order (one node, where the broker orders its own claims).
    pub revision: u64,
}

/// Which of a node's subscribers a routed message goes to.
#[derive(Clone, Copy, Debug)]
pub enum Delivery<'a> {
    /// Every subscriber, plain and one member of each shared group, and the node's retained
    /// store keeps the message if retained: the in-process fabric.
    Everyone,
    /// The plain subscribers only; a networked fabric serves shared groups through its queue
    /// groups and retained messages through its cluster-wide store.
    Plain,
    /// One member of the shared group this filter names (`$share/{group}/{filter}`): the
    /// network picked this node among the group's nodes.
    Shared(&'a TopicFilter),
}

/// Why the fabric could not carry a message or a claim.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum FabricError {
    /// The queue of messages waiting for the network is full (the network is slower than the
    /// publishers, or down): the message reached this node's subscribers only.
    #[error("the fabric's outbound queue is full")]
    Backlog,
    /// The topic is too long to travel between nodes (a NATS subject is bounded).
    #[error("the topic is too long to travel between nodes")]
    TopicTooLong,
    /// The cluster cannot be asked now (NATS unreachable): a client ID cannot be taken safely.
    #[error("the cluster is unavailable")]
    Unavailable,
}

/// A persistent session as the cluster keeps it, so that another node can resume it when its
/// node is gone: who made it, its expiry, its subscriptions and, while it is offline, the QoS 1
/// and 2 messages waiting for it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SessionSnapshot {
    /// The certificate that made the session (only it may resume it), hex.
    pub certificate_id: String,
    /// The Session Expiry Interval.
    pub expiry: std::time::Duration,
    /// When the session ends, in milliseconds since the Unix epoch, if it is offline.
    pub expires_at_ms: Option<u64>,
    pub subscriptions: Vec<SavedSubscription>,
    /// The messages waiting, oldest first (empty while the session is online).
    pub messages: Vec<SavedMessage>,
}

/// A subscription of a [`SessionSnapshot`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SavedSubscription {
    /// The filter as subscribed (`$share/...` included).
    pub filter: TopicFilter,
    pub qos: QoS,
    pub no_local: bool,
    pub retain_as_published: bool,
    pub identifier: Option<std::num::NonZeroU32>,
}

/// A message waiting in a [`SessionSnapshot`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SavedMessage {
    pub message: Arc<Message>,
    /// The QoS it is delivered with.
    pub qos: QoS,
    pub retain: bool,
    pub identifiers: Vec<std::num::NonZeroU32>,
}

/// The answer of [`Fabric::load_session`].
pub type SessionLoad = Pin<Box<dyn Future<Output = Result<Option<SessionSnapshot>, FabricError>> + Send>>;

/// The answer of [`Fabric::reserve_client_id`]: the claim's revision, `None` where the broker
/// orders claims itself (one node).
pub type Reservation = Pin<Box<dyn Future<Output = Result<Option<u64>, FabricError>> + Send>>;

/// What a fabric delivers to: one node's broker.
pub trait Router: Send + Sync {
    /// Delivers `message`, published on another node, to this node's subscribers of its account
    /// that `delivery` names (and keeps it if retained, for [`Delivery::Everyone`]).
    fn route(&self, message: &RoutedMessage, delivery: Delivery<'_>);

    /// `claim.node` took `claim.client_id`: if it is another node, and the claim is newer than
    /// the one of this node's connection, that connection closes (Session taken over) and its
    /// session ends here.
    fn claimed(&self, claim: &ClientClaim);

    /// The cluster's retained store changed: `message` is now retained on `topic` (`None`:
    /// deleted). Only a fabric that [stores retained messages](Fabric::stores_retained) calls it.
    fn retained(&self, _account: &AccountId, _topic: &TopicName, _message: Option<Arc<Message>>) {}

    /// Whether a message on `topic` of `account` would reach a subscriber of this node.
    fn has_subscriber(&self, _account: &AccountId, _topic: &str) -> bool {
        true
    }
}

/// The message fabric between the gateway nodes: it carries what one node's broker publishes
/// and claims to the others. A broker routes its own messages to its own subscribers itself, in
/// the publisher's task (that is where MQTT flow control is decided); the fabric never runs
/// another node's routing in the publisher's task.
pub trait Fabric: Send + Sync {
    /// Adds a node's router; the broker calls it once, when it is built.
    fn attach(&self, node: &NodeId, router: Weak<dyn Router>);

    /// Carries `message`, published on `origin`, to every other node that has a subscriber for
    /// it. Fails when the message could not be handed to the network
    /// ([`FabricError::Backlog`]): the other nodes do not get it.
    fn publish(&self, origin: &NodeId, message: RoutedMessage) -> Result<(), FabricError>;

    /// Orders a connection's claim of a client ID among the cluster's claims of it, before the
    /// session is attached: the revision returned then travels in the [`ClientClaim`].
    fn reserve_client_id(&self, _account: &AccountId, _client_id: &str) -> Reservation {
        Box::pin(std::future::ready(Ok(None)))
    }

    /// Whether the fabric keeps persistent sessions where every node can read them
    /// ([`Fabric::save_session`], [`Fabric::load_session`]).
    fn keeps_sessions(&self) -> bool {
        false
    }

    /// Keeps `snapshot` as the session of `client_id` in `account` (`None`: the session ended).
    /// Must not block; the latest call wins.
    fn save_session(&self, _account: &AccountId, _client_id: &str, _snapshot: Option<SessionSnapshot>) {}

    /// The session of `client_id` in `account` another node kept, if any.
    fn load_session(&self, _account: &AccountId, _client_id: &str) -> SessionLoad {
        Box::pin(std::future::ready(Ok(None)))
    }

    /// Tells every other node that `claim.node` now serves `claim.client_id` in `claim.account`.
    fn claim_client_id(&self, claim: ClientClaim);

    /// The node begins (`wanted`) or stops holding subscribers of `filter` in `account`. Called
    /// with the account's space locked: it must not block. The in-process fabric needs nothing.
    fn interest(&self, _account: &AccountId, _filter: &TopicFilter, _wanted: bool) {}

    /// Whether a message on `topic` of `account` would reach a subscriber on another node, so
    /// that the broker need not build messages nobody reads (lifecycle events). A fabric that
    /// cannot tell cheaply says yes.
    fn has_subscriber(&self, _account: &AccountId, _topic: &str) -> bool {
        true
    }

    /// Whether retained messages are kept by the fabric's cluster-wide store (the routers then
    /// hear of them through [`Router::retained`]) rather than by each router as it routes.
    fn stores_retained(&self) -> bool {
        false
    }

    /// Whether shared subscriptions are served by the fabric, one member cluster-wide (it
    /// routes [`Delivery::Shared`], the publisher's node included), rather than by each router.
    fn shares_groups(&self) -> bool {
        false
    }

    /// Waits (at most `within`) until what this node queued for the other nodes is sent: the
    /// node is about to stop.
    fn flush(&self, _within: std::time::Duration) -> Pin<Box<dyn Future<Output = ()> + Send + '_>> {
        Box::pin(std::future::ready(()))
    }

    /// The fabric's own metrics, in the Prometheus text format (none for the in-process one).
    fn render_metrics(&self, _out: &mut String) {}
}

/// The in-process fabric: every router attached to it is a node, and a publish reaches the
/// others synchronously (one node alone, or several brokers in one process in tests).
pub struct LocalFabric {
    /// Copied on write, so that a publish clones an `Arc` rather than a list.
    routers: Mutex<Arc<[Attached]>>,
}

/// A node's router, with the node's name.
type Attached = (NodeId, Weak<dyn Router>);

impl LocalFabric {
    pub fn new() -> Arc<Self> {
        Arc::new(LocalFabric::default())
    }

    /// The routers of the nodes other than `origin`.
    fn others(&self, origin: &NodeId) -> Vec<Arc<dyn Router>> {
        let routers = self.routers.lock().unwrap_or_else(std::sync::PoisonError::into_inner).clone();
        routers.iter().filter(|(node, _)| node != origin).filter_map(|(_, router)| router.upgrade()).collect()
    }
}

impl Default for LocalFabric {
    fn default() -> Self {
        LocalFabric { routers: Mutex::new(Arc::from(Vec::new())) }
    }
}

impl Fabric for LocalFabric {
    fn attach(&self, node: &NodeId, router: Weak<dyn Router>) {
        let mut routers = self.routers.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let mut list: Vec<Attached> = routers.iter().filter(|(_, known)| known.strong_count() > 0).cloned().collect();
        list.push((node.clone(), router));
        *routers = Arc::from(list);
    }

    fn publish(&self, origin: &NodeId, message: RoutedMessage) -> Result<(), FabricError> {
        for router in self.others(origin) {
            router.route(&message, Delivery::Everyone);
        }
        Ok(())
    }

    fn claim_client_id(&self, claim: ClientClaim) {
        for router in self.others(&claim.node) {
            router.claimed(&claim);
        }
    }

    fn has_subscriber(&self, account: &AccountId, topic: &str) -> bool {
        // Called by a node that checked itself already; every other node is asked.
        let routers = self.routers.lock().unwrap_or_else(std::sync::PoisonError::into_inner).clone();
        routers.iter().filter_map(|(_, router)| router.upgrade()).any(|router| router.has_subscriber(account, topic))
    }
}

#[cfg(test)]
mod tests {
    use super::{InvalidNodeId, NodeId};

    fn check(name: &str, expected: Result<(), InvalidNodeId>) {
        assert_eq!(NodeId::parse(name).map(|id| assert_eq!(id.as_str(), name)), expected, "{name:?}");
    }

    #[test]
    fn node_ids_are_single_tokens() {
        check("local", Ok(()));
        check("gw-1", Ok(()));
        check("Node_07", Ok(()));
        check("9", Ok(()));
        check(&"a".repeat(64), Ok(()));
        check("", Err(InvalidNodeId::Empty));
        check(&"a".repeat(65), Err(InvalidNodeId::TooLong));
        check("gw.1", Err(InvalidNodeId::Character));
        check("gw*", Err(InvalidNodeId::Character));
        check("gw>", Err(InvalidNodeId::Character));
        check("gw 1", Err(InvalidNodeId::Character));
        check("gw/1", Err(InvalidNodeId::Character));
        check("gw\u{0}", Err(InvalidNodeId::Character));
        check("nœud", Err(InvalidNodeId::Character));
        check("-gw", Err(InvalidNodeId::Start));
        check("_gw", Err(InvalidNodeId::Start));
    }
}
