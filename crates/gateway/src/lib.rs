//! certfleet's device gateway: MQTT 3.1.1 and 5 over mutual TLS, each device authenticated by
//! its X.509 certificate against the registry of the account its SNI names.
//!
//! A connection goes through four steps, one module each:
//! 1. `listener`: accept (bounded by a semaphore), TLS handshake with a timeout (`tls`);
//! 2. the account: the SNI host name names an account endpoint (`tls::endpoint_identifier`);
//!    no SNI, an IP literal or an unknown name means the default account, DEFAULT-mode only;
//! 3. the identity: the certificate against that account's registry (`identity`), cached and
//!    kept true by the change feed (`follow`), which also closes live sessions (`live`);
//! 4. the policies attached to the certificate, loaded before the session starts (`authz`) and
//!    kept true by the change feed;
//! 5. the MQTT session (`session`), which refuses an unauthenticated device with CONNACK
//!    "not authorized" and otherwise serves it, asking the authorizer at every action.
//!
//! **Architecture Invariant:** the gateway reads the registry only through `certfleet-services`,
//! never per packet; nothing here assumes a single node (the change feed and the registry are
//! shared, the cache is per node).

pub mod authz;
pub mod broker;
pub mod cluster;
pub mod endpoints;
pub mod events;
pub mod fabric;
pub mod fleet;
pub mod follow;
pub mod history;
pub mod identity;
pub mod listener;
pub mod live;
pub mod metrics;
mod model;
pub mod node;
pub mod probes;
pub mod recent;
pub mod rules;
pub mod session;
pub mod tls;

pub use authz::PolicyAuthorizer;
pub use broker::{AllowAll, Authorizer, Broker, BrokerConfig};
pub use events::{ConnectionObserver, DisconnectReason, EventSink, IgnoreConnections};
pub use fabric::{Fabric, LocalFabric, NodeId};
pub use identity::{CacheLimits, CacheStats, Identity, Refusal};
pub use listener::{Config, Gateway};
pub use live::SessionInfo;
pub use node::{Drained, Network, Node, NodeConfig, Policies, ShutdownConfig, ShutdownReport};
pub use session::{ConnectRefusal, serve};
