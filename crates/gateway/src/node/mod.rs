//! A gateway node, assembled in one place: [`Node::new`] builds every part bottom-up from the
//! node's configuration, the services, the fabric, the built-in server chains and the egress,
//! each part given what it needs when it is made, so that nothing is attached afterwards.
//!
//! The order breaks what used to be cycles:
//! 1. the rule book, then the rules engine's queue (the broker's tap) and its runner, not yet
//!    started;
//! 2. the live sessions, the connection history and the authorizer;
//! 3. the broker, with the live sessions, the history as its observer and the tap;
//! 4. the rules runner, started with the broker (it republishes through it);
//! 5. the gateway (listener, registry view, endpoints, follower), with the broker as the sink of
//!    just-in-time registration events;
//! 6. the fleet provisioning API, which the node hands to every session it serves.
//!
//! The services do not hold the node: whoever offers the node's view to operators (the API)
//! is given [`Node::data_plane`].
//!
//! [`Node::run`] is also the node's one way out: when its shutdown signal turns true it closes
//! the listener, drains the live sessions at the configured rate within the grace (`shutdown`),
//! flushes the connection history, and only then returns.

mod metrics;
mod shutdown;

use std::sync::Arc;
use std::time::Duration;

use certfleet_egress::Egress;
use certfleet_services::{DataPlane, Services};
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::authz::PolicyAuthorizer;
use crate::broker::{AllowAll, Authorizer, Broker, BrokerConfig};
use crate::endpoints::BuiltinChains;
use crate::fabric::{Fabric, NodeId};
use crate::fleet::{FleetConfig, FleetProvisioning};
use crate::history::{Flushed, HistoryRecorder};
use crate::listener::{Config, Gateway, GatewayParts};
use crate::live::LiveSessions;
use crate::rules::{RuleBook, RulesConfig, RulesEngine};
use shutdown::ShutdownCounters;
pub use shutdown::{Drained, ShutdownConfig};

/// How long a shutting-down node waits for the connection history to reach the registry.
const HISTORY_FLUSH: Duration = Duration::from_secs(5);

/// How the node decides what a device may do.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Policies {
    /// The IoT policies attached to the device's certificate, thing and thing groups.
    Enforce,
    /// Everything is allowed: benchmarks only (`mqtt.danger_authorize_everything`).
    DangerAuthorizeEverything,
}

/// Settings of a gateway node.
#[derive(Clone, Debug)]
pub struct NodeConfig {
    /// The listener, the account without SNI, the caches.
    pub gateway: Config,
    /// The broker's bounds; its `node` is this node's name.
    pub broker: BrokerConfig,
    /// The rules engine's bounds.
    pub rules: RulesConfig,
    /// The fleet provisioning API's bounds.
    pub fleet: FleetConfig,
    /// Sessions per certificate and hour written to the connection history (the rest are
    /// counted as coalesced).
    pub history_sessions_per_certificate_per_hour: u32,
    pub policies: Policies,
    /// How the node ends its sessions when it shuts down.
    pub shutdown: ShutdownConfig,
}

/// What a node's shutdown did: its drain, and whether the connection history was flushed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ShutdownReport {
    pub drained: Drained,
    pub history: Flushed,
}

/// One gateway node: what accepts devices, serves their sessions and runs their rules.
pub struct Node {
    gateway: Arc<Gateway>,
    broker: Arc<Broker>,
    /// Kept alive with the node: its runner ends when it is dropped.
    _rules: Arc<RulesEngine>,
    history: Arc<HistoryRecorder>,
    fleet: Arc<FleetProvisioning>,
    shutdown: ShutdownConfig,
    shutdown_counters: ShutdownCounters,
}

impl Node {
    /// Builds a node (on the current Tokio runtime: the rules runner, the history writer and the
    /// probe recorder start their tasks). It accepts nothing until [`Node::run`].
    pub fn new(
        config: NodeConfig,
        services: Arc<Services>,
        fabric: Arc<dyn Fabric>,
        builtin: BuiltinChains,
        egress: Arc<Egress>,
    ) -> Arc<Self> {
        let NodeConfig { gateway, broker, rules, fleet, history_sessions_per_certificate_per_hour, policies, shutdown } =
            config;
        let book = RuleBook::new(services.clone());
        let (engine, runner) = RulesEngine::new(rules, book.clone(), egress.clone());
        let live = Arc::new(LiveSessions::default());
        let history = Arc::new(HistoryRecorder::start(services.clone(), history_sessions_per_certificate_per_hour));
        // The listener loads every device's policies either way (a device whose policies cannot
        // be read is refused); only the broker's decisions differ.
        let authorizer = PolicyAuthorizer::new(services.clone(), &gateway.region);
        let broker_authorizer: Arc<dyn Authorizer> = match policies {
            Policies::Enforce => authorizer.clone(),
            Policies::DangerAuthorizeEverything => Arc::new(AllowAll),
        };
        let broker =
            Broker::new(broker, fabric, history.clone(), broker_authorizer, live.clone(), Some(engine.clone()));
        runner.start(&broker);
        let parts = GatewayParts { live, authorizer, events: broker.clone(), rules: book };
        let gateway = Gateway::new(gateway, services.clone(), builtin, parts);
        let fleet = FleetProvisioning::new(fleet, services, egress);
        Arc::new(Node {
            gateway,
            broker,
            _rules: engine,
            history,
            fleet,
            shutdown,
            shutdown_counters: ShutdownCounters::default(),
        })
    }

    /// This node's name.
    pub fn id(&self) -> &NodeId {
        &self.broker.config().node
    }

    /// Accepts connections on `listener`, serving each device's session (with the fleet
    /// provisioning API) and following the registry's change feed, until `shutdown` turns true
    /// (or its sender is dropped). Then shuts the node down and returns when it is done:
    /// 1. the listener is closed (new connections are refused by the system; handshakes in
    ///    progress and refused devices are dropped);
    /// 2. every live session is told to end, at most `ShutdownConfig::disconnects_per_second`,
    ///    each as a server-initiated disconnect (MQTT 5: DISCONNECT 0x8B; its will published,
    ///    its lifecycle event and history record written, a persistent session kept offline);
    /// 3. within `ShutdownConfig::grace` in all: then what is left is closed at once;
    /// 4. the connection history is flushed to the registry (at most 5 s more).
    pub async fn run(self: Arc<Self>, listener: TcpListener, shutdown: watch::Receiver<bool>) -> ShutdownReport {
        let node = self.clone();
        let connections = self
            .gateway
            .clone()
            .run(
                listener,
                move |tls, connection| {
                    crate::session::serve_with_fleet(node.broker.clone(), Some(node.fleet.clone()), tls, connection)
                },
                shutdown,
            )
            .await;
        let drained = shutdown::drain(&self.gateway.live, connections, self.shutdown, &self.shutdown_counters).await;
        let history = self.history.flush(HISTORY_FLUSH).await;
        // The sessions that went offline in the drain reach the cluster's store (another node
        // resumes them), as does everything else queued for the other nodes.
        self.broker.keep_sessions();
        self.broker.fabric.flush(HISTORY_FLUSH).await;
        let Drained { paced, closed_at_grace, closed_before_connect, aborted, elapsed } = drained;
        tracing::info!(
            sessions = paced + closed_at_grace,
            closed_at_grace,
            closed_before_connect,
            aborted,
            seconds = elapsed.as_secs_f64(),
            history = ?history,
            "gateway drained"
        );
        if history != Flushed::Written {
            tracing::warn!(history = ?history, "the connection history was not all written before shutdown");
        }
        ShutdownReport { drained, history }
    }

    /// The broker: for server-originated messages (the rotation and audit services).
    pub fn broker(&self) -> &Arc<Broker> {
        &self.broker
    }

    /// The listener's parts: the registry view, the live sessions, the endpoints, the probes.
    pub fn gateway(&self) -> &Arc<Gateway> {
        &self.gateway
    }

    /// The topic rules this node runs, where certfleet's own system rules are added.
    pub fn rules(&self) -> &Arc<RuleBook> {
        &self.gateway.rules
    }

    /// This node's view for operators: its connected devices, its endpoints' chains and drains.
    pub fn data_plane(&self) -> Arc<dyn DataPlane> {
        self.gateway.endpoints.clone()
    }

    /// The node's metrics in the Prometheus text format: gateway, broker, rules, connection
    /// history and fleet provisioning.
    pub fn render_metrics(&self) -> String {
        let mut out = metrics::render(&self.gateway, &self.broker, &self.shutdown_counters);
        self.history.render_metrics(&mut out);
        self.fleet.render_metrics(&mut out);
        self.broker.fabric.render_metrics(&mut out);
        out
    }
}
