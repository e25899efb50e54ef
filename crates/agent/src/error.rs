//! The agent's errors. Connection failures are not errors of the agent (it retries them); these
//! are the reasons it stops.

use crate::config::Step;

/// Why the agent stopped, or why reading its settings or its disk failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A trust bundle is unreadable or empty.
    #[error("trust bundle: {reason}")]
    TrustBundle { reason: String },
    /// The credentials directory could not be read or written.
    #[error("{what}")]
    Io {
        what: &'static str,
        #[source]
        source: std::io::Error,
    },
    /// `state.json` or a credential file exists but makes no sense; the agent does not guess.
    #[error("the credentials directory is inconsistent: {reason}")]
    State { reason: String },
    /// The current credentials do not load (missing or unreadable certificate or key).
    #[error("the current credentials do not load: {reason}")]
    Credentials { reason: String },
    /// The settings are unusable (a server name that is not one, a client ID the rotation
    /// topics cannot carry).
    #[error("invalid settings: {reason}")]
    Config { reason: String },
    /// Key generation or CSR building failed.
    #[error("making a key or a csr failed: {reason}")]
    Key { reason: String },
    /// The test knob [`crate::Config::crash_after`] stopped the agent after this step.
    #[error("stopped after {0:?} (injected crash)")]
    InjectedCrash(Step),
}
