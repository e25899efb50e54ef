//! certfleet's tools for operators and device makers (issue 5, the server-root migration):
//!
//! - [`tls_check`], `certfleet tls-check HOST:PORT`: connects to a TLS endpoint, records the
//!   chain it presents, verifies it against a trust bundle and the host name, and warns about
//!   what breaks at the next rotation (pinned intermediates or leaves, a planned root missing
//!   from the bundle, certificates about to expire);
//! - [`scan`], `certfleet scan PATH...`: finds every certificate in files, directories and
//!   firmware images (PEM, and DER embedded in binaries), and flags certificates expiring by a
//!   deadline and trust bundles that lack a required root or pin intermediates.
//!
//! Both describe certificates the same way ([`describe::Description`]). The clap argument
//! structs live here so the binary only embeds them; each tool's `run` returns a status whose
//! `code()` is the documented exit code, and the binary turns it into the process's.
//!
//! # Architecture invariant
//!
//! A tool, not a service: it never sees the registry or the services, only files, sockets and
//! the certificates in them (parsed by certfleet-pki). Time is an argument (`now`). The one
//! verifier that accepts any chain is [`danger`]'s, and it only records.

mod bytes;
mod danger;
pub mod describe;
pub mod scan;
pub mod tls_check;
mod values;

use std::path::PathBuf;

pub use scan::ScanArgs;
pub use tls_check::TlsCheckArgs;
pub use values::{parse_date, parse_duration};

/// Output format of both tools.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Output {
    /// For people.
    Text,
    /// One JSON document on stdout (see docs/tools.md).
    Json,
}

/// An input error: nothing was attempted (exit code 2).
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A PEM file of certificates could not be used.
    #[error("{path}: {reason}", path = path.display())]
    BadPemFile {
        /// The file.
        path: PathBuf,
        /// Why: unreadable, bad base64, no certificate, a certificate that does not parse.
        reason: String,
    },
    /// A private key file could not be used, or does not match the certificate.
    #[error("{path}: {reason}", path = path.display())]
    BadKeyFile {
        /// The file.
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// A command-line value is wrong.
    #[error("{reason}")]
    BadArgument {
        /// What is wrong.
        reason: String,
    },
    /// A path to scan cannot be read.
    #[error("{path}: {source}", path = path.display())]
    Path {
        /// The path.
        path: PathBuf,
        /// The error.
        #[source]
        source: std::io::Error,
    },
}
