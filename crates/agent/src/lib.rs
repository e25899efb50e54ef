//! certfleet's device agent: it keeps a device connected to an AWS IoT-compatible gateway over
//! MQTT with mutual TLS, and carries out certificate rotation (the `management/topic/{clientId}/...`
//! protocol) so that a crash or power cut at any step leaves the device with a working credential.
//!
//! - [`Agent`]: one device; [`Agent::new`] gives it and a receiver of [`Event`]s, and
//!   [`Agent::run`] serves until shutdown. Many agents can run in one process.
//! - [`config`]: the typed settings and trust bundles.
//! - [`store`]: the credentials directory and `state.json`, the one commit point.
//! - [`rotation`]: the protocol's topics and payloads, the state machine's decisions (pure) and
//!   the checks a new certificate must pass.
//! - [`connection`]: one MQTT session over rustls on the shared codec.
//! - [`backoff`]: exponential backoff with full jitter.
//!
//! **Architecture Invariant:** the agent runs on a device: it depends on the codec and pki only,
//! never on the registry, services or gateway. Keys never reach a log or an error message.

#![forbid(unsafe_code)]

mod agent;
pub mod backoff;
pub mod config;
pub mod connection;
mod error;
pub mod rotation;
pub mod store;

pub use agent::{Agent, Event, build_csr, generate_key};
pub use backoff::Backoff;
pub use config::{BundleWarning, Config, KeyAlgorithm, MqttVersion, Step, TrustBundle};
pub use error::Error;
pub use rotation::Credential;
