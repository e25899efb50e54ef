//! The message fabric: how an application message reaches every subscriber of its account, on
//! whichever gateway node the subscriber is connected to, and how a client ID claimed on one node
//! closes the connection using it on another.
//!
//! A node's broker never delivers a publish straight to its own subscribers: it hands the message
//! to the fabric, which hands it to the [`Router`] of every node (this one included), and each
//! router matches the message against its own local subscriptions and keeps its own copy of the
//! account's retained messages. [`LocalFabric`] does that in process, for one node or for several
//! brokers in one process (tests); a networked fabric (NATS between gateway nodes) implements the
//! same trait by routing locally and forwarding to the other nodes.
//!
//! **Architecture Invariant:** the session layer talks to other sessions only through this trait:
//! no code in `session` or `broker` assumes that a client ID or a subscriber lives on this node.

use std::fmt;
use std::sync::{Arc, Mutex, Weak};

use bytes::Bytes;
use certfleet_mqtt::{Properties, QoS, TopicName};
use certfleet_registry::AccountId;
use tokio::time::Instant;

/// The name of a gateway node, unique among the nodes sharing a fabric.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct NodeId(String);

impl NodeId {
    pub fn new(name: impl Into<String>) -> Self {
        NodeId(name.into())
    }

    pub fn as_str(&self) -> &str {
        &self.0
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
}

/// What a fabric delivers to: one node's broker.
pub trait Router: Send + Sync {
    /// Delivers `message` to this node's subscribers of its account, and keeps it if retained.
    fn route(&self, message: &RoutedMessage);

    /// `claim.node` took `claim.client_id`: if it is another node, a connection of this node
    /// using that client ID in that account closes (Session taken over).
    fn claimed(&self, claim: &ClientClaim);

    /// Whether a message on `topic` of `account` would reach a subscriber of this node.
    fn has_subscriber(&self, _account: &AccountId, _topic: &str) -> bool {
        true
    }
}

/// The message fabric between the gateway nodes.
pub trait Fabric: Send + Sync {
    /// Adds a node's router; the broker calls it once, when it is built.
    fn attach(&self, router: Weak<dyn Router>);

    /// Routes `message` on every node, this one included.
    fn publish(&self, message: RoutedMessage);

    /// Tells every node that `claim.node` now serves `claim.client_id` in `claim.account`.
    fn claim_client_id(&self, claim: ClientClaim);

    /// Whether a message on `topic` of `account` would reach a subscriber on any node, so that
    /// the broker need not build messages nobody reads (lifecycle events). A fabric that cannot
    /// tell cheaply says yes.
    fn has_subscriber(&self, _account: &AccountId, _topic: &str) -> bool {
        true
    }
}

/// The in-process fabric: every router attached to it is a node, and a publish reaches them all
/// synchronously, in the publisher's task.
pub struct LocalFabric {
    /// Copied on write, so that a publish clones an `Arc` rather than a list.
    routers: Mutex<Arc<[Weak<dyn Router>]>>,
}

impl LocalFabric {
    pub fn new() -> Arc<Self> {
        Arc::new(LocalFabric::default())
    }

    fn routers(&self) -> Arc<[Weak<dyn Router>]> {
        self.routers.lock().unwrap_or_else(std::sync::PoisonError::into_inner).clone()
    }
}

impl Default for LocalFabric {
    fn default() -> Self {
        LocalFabric { routers: Mutex::new(Arc::from(Vec::new())) }
    }
}

impl Fabric for LocalFabric {
    fn attach(&self, router: Weak<dyn Router>) {
        let mut routers = self.routers.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let mut list: Vec<Weak<dyn Router>> =
            routers.iter().filter(|known| known.strong_count() > 0).cloned().collect();
        list.push(router);
        *routers = Arc::from(list);
    }

    fn publish(&self, message: RoutedMessage) {
        for router in self.routers().iter().filter_map(Weak::upgrade) {
            router.route(&message);
        }
    }

    fn claim_client_id(&self, claim: ClientClaim) {
        for router in self.routers().iter().filter_map(Weak::upgrade) {
            router.claimed(&claim);
        }
    }

    fn has_subscriber(&self, account: &AccountId, topic: &str) -> bool {
        self.routers().iter().filter_map(Weak::upgrade).any(|router| router.has_subscriber(account, topic))
    }
}
