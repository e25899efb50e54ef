//! `certfleet tls-check HOST:PORT`: connect to a TLS endpoint, record the chain it presents,
//! verify it against a trust bundle (and the host name), and warn about what will break later:
//! pinned intermediates or leaves, roots the operator plans to move to but the bundle lacks,
//! certificates about to expire.
//!
//! Three steps, each a function: [`Request::from_args`] turns the command line into typed values
//! (every input error is found here, before connecting); [`check`] connects and builds a
//! [`Report`]; [`Report::status`] is the exit status, [`Report::to_json`] and
//! [`Report::to_text`] its two renderings. [`verify`] is the pure chain check `check` uses.

use std::io::{self, Read as _, Write};
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::path::PathBuf;
use std::sync::{Arc, PoisonError};
use std::time::{Duration as StdDuration, Instant};

use certfleet_pki::Certificate;
use rustls::ClientConnection;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use serde_json::{Value, json};
use time::{Duration, OffsetDateTime};

use crate::danger::DangerRecordingVerifier;
use crate::describe::{Description, is_self_signed, rfc3339, same_anchor};
use crate::values::{parse_duration, read_pem_certificates};
use crate::{Error, Output};

/// A chain larger than this is pointed out (devices with small TLS buffers fail on them).
pub const LARGE_CHAIN_BYTES: usize = 16 * 1024;

/// How long to wait after the handshake for a late refusal (TLS 1.3 servers check the client
/// certificate after the client considers the handshake done).
const SETTLE: StdDuration = StdDuration::from_millis(1000);

const EXIT_CODES: &str = "\
Exit codes:
  0  the chain verifies against the bundle, the host name matches, no warning
  1  verification failed: the chain does not verify against the bundle, or the host name does not match
  2  usage or input error (bad HOST:PORT, unreadable or garbage PEM, key not matching the certificate)
  3  connection or handshake failed (unreachable, timeout, TLS alert from the server, no common version)
  4  verified, with warnings (pinned intermediate or leaf, a --next-roots root missing from the bundle,
     a certificate expiring within --warn-days)
When several apply, the first in this order wins: 2, 3, 1, 4.";

/// `certfleet tls-check`: inspect a TLS endpoint's certificate chain against a trust bundle.
#[derive(clap::Args, Debug)]
#[command(after_help = EXIT_CODES)]
pub struct TlsCheckArgs {
    /// The endpoint: HOST:PORT, or [IPv6]:PORT.
    #[arg(value_name = "HOST:PORT")]
    pub target: String,
    /// The server name to send (SNI) and to check the certificate against (default: the host,
    /// when it is a DNS name or an IP address).
    #[arg(long, value_name = "NAME")]
    pub servername: Option<String>,
    /// The trust bundle to verify the chain against: a PEM file of one or more certificates.
    #[arg(long, value_name = "PATH")]
    pub ca_file: PathBuf,
    /// A client certificate chain (PEM) to present, for servers that require mutual TLS.
    #[arg(long, value_name = "PATH", requires = "key")]
    pub cert: Option<PathBuf>,
    /// The private key (PEM: PKCS#8, PKCS#1 or SEC1) of --cert.
    #[arg(long, value_name = "PATH", requires = "cert")]
    pub key: Option<PathBuf>,
    /// Offer only this TLS version (default: 1.2 and 1.3).
    #[arg(long, value_enum, value_name = "VERSION")]
    pub tls_version: Option<TlsVersion>,
    /// An ALPN protocol to offer (repeatable), e.g. x-amzn-mqtt-ca; none by default.
    #[arg(long, value_name = "PROTOCOL")]
    pub alpn: Vec<String>,
    /// Roots the service plans to move to (PEM): warn about each one the bundle lacks.
    #[arg(long, value_name = "PATH")]
    pub next_roots: Option<PathBuf>,
    /// Give up connecting, or waiting for the server, after this long (e.g. 10s, 1m).
    #[arg(long, value_name = "DURATION", default_value = "10s", value_parser = parse_duration)]
    pub timeout: Duration,
    /// Warn about certificates of the chain that expire within this many days.
    #[arg(long, value_name = "DAYS", default_value_t = 30)]
    pub warn_days: i64,
    /// Output format.
    #[arg(long, value_enum, default_value = "text")]
    pub output: Output,
}

/// A TLS protocol version to offer alone.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum TlsVersion {
    /// TLS 1.2 only.
    #[value(name = "1.2")]
    Tls12,
    /// TLS 1.3 only.
    #[value(name = "1.3")]
    Tls13,
}

/// The exit status of `tls-check` (see `--help` and docs/tools.md).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Status {
    /// Verified, host name matches, no warning.
    Ok,
    /// The chain does not verify against the bundle, or the host name does not match.
    VerificationFailed,
    /// A usage or input error: nothing was attempted.
    InputError,
    /// The connection or the handshake failed.
    ConnectionFailed,
    /// Verified, with warnings.
    Warnings,
}

impl Status {
    /// The process exit code.
    pub fn code(self) -> u8 {
        match self {
            Status::Ok => 0,
            Status::VerificationFailed => 1,
            Status::InputError => 2,
            Status::ConnectionFailed => 3,
            Status::Warnings => 4,
        }
    }

    fn name(self) -> &'static str {
        match self {
            Status::Ok => "ok",
            Status::VerificationFailed => "verification failed",
            Status::InputError => "input error",
            Status::ConnectionFailed => "connection failed",
            Status::Warnings => "ok with warnings",
        }
    }
}

/// A checked, typed request: everything read and parsed, nothing connected yet.
#[derive(Debug)]
pub struct Request {
    /// The host to connect to.
    pub host: String,
    /// The port.
    pub port: u16,
    /// The name sent as SNI and checked against the leaf.
    pub server_name: ServerName<'static>,
    /// The trust bundle.
    pub bundle: Vec<Certificate>,
    /// Where the bundle came from, for the report.
    pub bundle_source: String,
    /// The roots the service plans to move to.
    pub next_roots: Vec<Certificate>,
    /// The client certificate chain and key, for mutual TLS.
    pub client_identity: Option<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>)>,
    /// The one version to offer, or both.
    pub version: Option<TlsVersion>,
    /// ALPN protocols to offer.
    pub alpn: Vec<Vec<u8>>,
    /// The connect and read timeout.
    pub timeout: StdDuration,
    /// Certificates expiring within this many days are warned about.
    pub warn_days: i64,
}

impl Request {
    /// Reads the files and parses the values of the command line.
    pub fn from_args(args: &TlsCheckArgs) -> Result<Request, Error> {
        let (host, port) = split_target(&args.target)?;
        let name = args.servername.clone().unwrap_or_else(|| host.clone());
        let server_name = ServerName::try_from(name.clone())
            .map_err(|_| Error::BadArgument { reason: format!("{name:?} is not a valid server name") })?;
        let bundle = read_pem_certificates(&args.ca_file)?;
        let next_roots = match &args.next_roots {
            Some(path) => read_pem_certificates(path)?,
            None => Vec::new(),
        };
        let client_identity = match (&args.cert, &args.key) {
            (Some(cert), Some(key)) => Some(read_identity(cert, key)?),
            (None, None) => None,
            _ => return Err(Error::BadArgument { reason: "--cert and --key go together".to_owned() }),
        };
        let timeout = StdDuration::try_from(args.timeout)
            .ok()
            .filter(|timeout| !timeout.is_zero())
            .ok_or_else(|| Error::BadArgument { reason: "--timeout must be positive".to_owned() })?;
        Ok(Request {
            host,
            port,
            server_name,
            bundle,
            bundle_source: args.ca_file.display().to_string(),
            next_roots,
            client_identity,
            version: args.tls_version,
            alpn: args.alpn.iter().map(|protocol| protocol.as_bytes().to_vec()).collect(),
            timeout,
            warn_days: args.warn_days,
        })
    }
}

/// Splits HOST:PORT (or [IPv6]:PORT).
fn split_target(target: &str) -> Result<(String, u16), Error> {
    let bad = |reason: &str| Error::BadArgument { reason: format!("{target:?} is not HOST:PORT: {reason}") };
    let (host, port) = target.rsplit_once(':').ok_or_else(|| bad("no port"))?;
    let host = match host.strip_prefix('[') {
        Some(bracketed) => bracketed.strip_suffix(']').ok_or_else(|| bad("unbalanced brackets"))?,
        None if host.contains(':') => return Err(bad("write an IPv6 address in brackets, [::1]:8883")),
        None => host,
    };
    if host.is_empty() {
        return Err(bad("no host"));
    }
    let port: u16 = port.parse().map_err(|_| bad("the port is not a number from 1 to 65535"))?;
    if port == 0 {
        return Err(bad("the port is not a number from 1 to 65535"));
    }
    Ok((host.to_owned(), port))
}

fn read_identity(
    cert: &std::path::Path,
    key: &std::path::Path,
) -> Result<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>), Error> {
    let chain: Vec<CertificateDer<'static>> = read_pem_certificates(cert)?
        .iter()
        .map(|certificate| CertificateDer::from(certificate.der().to_vec()))
        .collect();
    let key_der = PrivateKeyDer::from_pem_file(key)
        .map_err(|error| Error::BadKeyFile { path: key.to_owned(), reason: error.to_string() })?;
    let provider = rustls::crypto::aws_lc_rs::default_provider();
    // rustls refuses a key that does not match the certificate when it pairs them: do it now,
    // so that a wrong key is an input error (exit 2), not a handshake failure.
    rustls::sign::CertifiedKey::from_der(chain.clone(), key_der.clone_key(), &provider)
        .map_err(|error| Error::BadKeyFile { path: key.to_owned(), reason: error.to_string() })?;
    Ok((chain, key_der))
}

/// Why the connection or the handshake failed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Failure {
    /// The host name does not resolve.
    Resolve(String),
    /// No TCP connection (refused, unreachable).
    Connect(String),
    /// The server did not answer in time.
    TimedOut,
    /// The server sent a TLS alert, during the handshake or right after it (a TLS 1.3 server
    /// refusing the client certificate).
    Alert {
        /// The alert's name as in RFC 8446, e.g. "certificate_required".
        alert: String,
        /// Whether the handshake had completed on our side when it came.
        after_handshake: bool,
    },
    /// The server closed the connection without an alert.
    Closed {
        /// Whether the handshake had completed on our side.
        after_handshake: bool,
    },
    /// Any other TLS failure (no common version or cipher suite, a malformed message).
    Tls(String),
}

impl Failure {
    fn kind(&self) -> &'static str {
        match self {
            Failure::Resolve(_) => "resolve",
            Failure::Connect(_) => "connect",
            Failure::TimedOut => "timeout",
            Failure::Alert { .. } => "alert",
            Failure::Closed { .. } => "closed",
            Failure::Tls(_) => "tls",
        }
    }

    fn message(&self) -> String {
        match self {
            Failure::Resolve(reason) => format!("cannot resolve the host: {reason}"),
            Failure::Connect(reason) => format!("cannot connect: {reason}"),
            Failure::TimedOut => "the server did not answer in time".to_owned(),
            Failure::Alert { alert, after_handshake: false } => {
                format!("the server refused the handshake with TLS alert {alert}{}", alert_hint(alert))
            }
            Failure::Alert { alert, after_handshake: true } => {
                format!(
                    "the server refused the connection after the handshake with TLS alert {alert}{}",
                    alert_hint(alert)
                )
            }
            Failure::Closed { after_handshake: false } => {
                "the server closed the connection during the handshake".to_owned()
            }
            Failure::Closed { after_handshake: true } => "the server closed the connection".to_owned(),
            Failure::Tls(reason) => format!("tls handshake failed: {reason}"),
        }
    }
}

fn alert_hint(alert: &str) -> &'static str {
    match alert {
        "certificate_required" => ": the server requires a client certificate (--cert and --key)",
        "bad_certificate" | "unknown_ca" | "certificate_unknown" | "access_denied" => {
            ": the server refused the client certificate"
        }
        "protocol_version" => ": no TLS version in common (see --tls-version)",
        "no_application_protocol" => ": no ALPN protocol in common (see --alpn)",
        "unrecognized_name" => ": the server does not know that server name (see --servername)",
        _ => "",
    }
}

/// What the handshake gave.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Negotiated {
    /// "TLS 1.2" or "TLS 1.3".
    pub tls_version: String,
    /// The cipher suite's IANA-like name, e.g. "TLS13_AES_128_GCM_SHA256".
    pub cipher_suite: String,
    /// The ALPN protocol the server picked.
    pub alpn: Option<String>,
    /// Whether the server closed the connection (without an alert) right after the handshake.
    pub closed_after_handshake: bool,
}

/// The chain check against the bundle.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Verification {
    /// The index in the bundle of the certificate the path ends at, or why no path verifies.
    pub anchor: Result<usize, String>,
    /// Whether the chain also verifies against the self-signed roots of the bundle alone.
    pub trusted_by_roots_only: bool,
    /// Whether the leaf is valid for the server name, or why not.
    pub hostname: Result<(), String>,
}

impl Verification {
    fn passed(&self) -> bool {
        self.anchor.is_ok() && self.hostname.is_ok()
    }
}

/// Something that works today but will break, or is fragile.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Warning {
    /// The bundle holds a CA certificate of the chain that is not a self-signed root.
    PinnedIntermediate {
        /// Its subject.
        subject: String,
        /// Its SHA-256.
        sha256: String,
        /// Whether the chain verifies only through it (not through a root of the bundle).
        only_anchor: bool,
    },
    /// The bundle holds the server's leaf certificate itself.
    PinnedLeaf {
        /// Its subject.
        subject: String,
        /// Its SHA-256.
        sha256: String,
    },
    /// A root of --next-roots is not in the bundle.
    NextRootMissing {
        /// Its subject.
        subject: String,
        /// Its SHA-256.
        sha256: String,
    },
    /// A certificate of the chain expires within --warn-days (or has expired).
    ExpiresSoon {
        /// Its position in the chain (0 is the leaf).
        index: usize,
        /// Its subject.
        subject: String,
        /// Days left; negative once expired.
        days_left: i64,
    },
}

impl Warning {
    /// A short stable name, for JSON and scripts.
    pub fn kind(&self) -> &'static str {
        match self {
            Warning::PinnedIntermediate { .. } => "pinned-intermediate",
            Warning::PinnedLeaf { .. } => "pinned-leaf",
            Warning::NextRootMissing { .. } => "next-root-missing",
            Warning::ExpiresSoon { .. } => "expires-soon",
        }
    }

    /// The sentence for people.
    pub fn message(&self) -> String {
        match self {
            Warning::PinnedIntermediate { subject, sha256, only_anchor: true } => format!(
                "the bundle trusts this chain only through the intermediate {subject} (sha256 {sha256}): \
                 it breaks when the service renews or replaces the intermediate; trust the root instead"
            ),
            Warning::PinnedIntermediate { subject, sha256, only_anchor: false } => format!(
                "the bundle holds the intermediate {subject} (sha256 {sha256}) of this chain: \
                 pinning intermediates breaks devices that check it; trust roots only"
            ),
            Warning::PinnedLeaf { subject, sha256 } => format!(
                "the bundle holds the server's own certificate {subject} (sha256 {sha256}): \
                 it breaks at the next server certificate renewal; trust the root instead"
            ),
            Warning::NextRootMissing { subject, sha256 } => format!(
                "the bundle lacks the next root {subject} (sha256 {sha256}): \
                 the device will fail once the service moves to it"
            ),
            Warning::ExpiresSoon { index, subject, days_left } if *days_left < 0 => {
                format!("certificate [{index}] {subject} expired {} days ago", -days_left)
            }
            Warning::ExpiresSoon { index, subject, days_left } => {
                format!("certificate [{index}] {subject} expires in {days_left} days")
            }
        }
    }
}

/// Everything `tls-check` found.
#[derive(Debug)]
pub struct Report {
    /// HOST:PORT as given.
    pub target: String,
    /// The server name sent and checked.
    pub server_name: String,
    /// When the check ran.
    pub now: OffsetDateTime,
    /// What the handshake negotiated, or why it failed.
    pub handshake: Result<Negotiated, Failure>,
    /// Whether a client certificate was offered.
    pub client_certificate: bool,
    /// The chain as the server presented it (empty if it presented none).
    pub chain: Vec<Certificate>,
    /// Certificates of the chain that did not parse: (index, reason).
    pub unparsable: Vec<(usize, String)>,
    /// The total DER size of the chain.
    pub chain_bytes: usize,
    /// The bundle's certificates.
    pub bundle: Vec<Certificate>,
    /// Where the bundle came from.
    pub bundle_source: String,
    /// The chain check, when the server presented a chain.
    pub verification: Option<Verification>,
    /// The next roots, each with whether the bundle holds it.
    pub next_roots: Vec<(Certificate, bool)>,
    /// Whether the chain verifies against the next roots (when given, and a chain was seen).
    pub verifies_with_next_roots: Option<bool>,
    /// What will break later.
    pub warnings: Vec<Warning>,
    /// Information that changes no exit code (a large chain).
    pub notes: Vec<String>,
}

/// Connects, records the chain, and checks it. `now` is the time the chain is judged at.
pub fn check(request: &Request, now: OffsetDateTime) -> Report {
    let mut chain_ders = Vec::new();
    let handshake = handshake(request, &mut chain_ders);
    let mut chain = Vec::new();
    let mut unparsable = Vec::new();
    for (index, der) in chain_ders.iter().enumerate() {
        match Certificate::from_der(der.to_vec()) {
            Ok(certificate) => chain.push(certificate),
            Err(error) => unparsable.push((index, error.to_string())),
        }
    }
    let chain_bytes = chain_ders.iter().map(|der| der.len()).sum();
    let unix_now = UnixTime::since_unix_epoch(StdDuration::from_secs(u64::try_from(now.unix_timestamp()).unwrap_or(0)));
    let verification =
        (!chain_ders.is_empty()).then(|| verify(&chain_ders, &request.bundle, &request.server_name, unix_now));
    let next_roots: Vec<(Certificate, bool)> = request
        .next_roots
        .iter()
        .map(|root| (root.clone(), request.bundle.iter().any(|held| same_anchor(held, root))))
        .collect();
    let verifies_with_next_roots = (!chain_ders.is_empty() && !next_roots.is_empty())
        .then(|| verify(&chain_ders, &request.next_roots, &request.server_name, unix_now).anchor.is_ok());
    let mut warnings = Vec::new();
    if let Some(verification) = &verification {
        warnings.extend(pinning_warnings(&chain, &request.bundle, verification, now));
    }
    for (root, held) in &next_roots {
        if !held {
            let description = Description::of(root, now);
            warnings.push(Warning::NextRootMissing { subject: description.subject, sha256: description.sha256 });
        }
    }
    for (index, certificate) in chain.iter().enumerate() {
        let description = Description::of(certificate, now);
        if description.days_left < request.warn_days {
            warnings.push(Warning::ExpiresSoon {
                index,
                subject: description.subject,
                days_left: description.days_left,
            });
        }
    }
    let mut notes = Vec::new();
    if handshake.as_ref().is_ok_and(|negotiated| negotiated.closed_after_handshake) {
        notes.push("the server closed the connection right after the handshake, without an alert".to_owned());
    }
    if chain_bytes > LARGE_CHAIN_BYTES {
        notes.push(format!(
            "the chain is {chain_bytes} bytes, more than {LARGE_CHAIN_BYTES}: devices with small TLS receive buffers fail on it"
        ));
    }
    Report {
        target: format!("{}:{}", request.host, request.port),
        server_name: request.server_name.to_str().into_owned(),
        now,
        handshake,
        client_certificate: request.client_identity.is_some(),
        chain,
        unparsable,
        chain_bytes,
        bundle: request.bundle.clone(),
        bundle_source: request.bundle_source.clone(),
        verification,
        next_roots,
        verifies_with_next_roots,
        warnings,
        notes,
    }
}

fn pinning_warnings(
    chain: &[Certificate],
    bundle: &[Certificate],
    verification: &Verification,
    now: OffsetDateTime,
) -> Vec<Warning> {
    let mut warnings = Vec::new();
    for (index, held) in bundle.iter().enumerate() {
        let description = Description::of(held, now);
        if description.self_signed {
            continue;
        }
        let is_anchor = verification.anchor.as_ref().is_ok_and(|anchor| *anchor == index);
        let in_chain = chain.iter().position(|presented| same_anchor(presented, held));
        if in_chain == Some(0) {
            warnings.push(Warning::PinnedLeaf { subject: description.subject, sha256: description.sha256 });
        } else if is_anchor || in_chain.is_some() {
            warnings.push(Warning::PinnedIntermediate {
                subject: description.subject,
                sha256: description.sha256,
                only_anchor: !verification.trusted_by_roots_only,
            });
        }
    }
    warnings
}

/// Verifies `chain` (leaf first) against `bundle` for a TLS server named `server_name`.
pub fn verify(
    chain: &[CertificateDer<'_>],
    bundle: &[Certificate],
    server_name: &ServerName<'_>,
    now: UnixTime,
) -> Verification {
    let algorithms = rustls::crypto::aws_lc_rs::default_provider().signature_verification_algorithms;
    let bundle_ders: Vec<CertificateDer<'_>> =
        bundle.iter().map(|certificate| CertificateDer::from(certificate.der())).collect();
    let anchors: Vec<(usize, rustls_pki_types::TrustAnchor<'_>)> = bundle_ders
        .iter()
        .enumerate()
        .filter_map(|(index, der)| webpki::anchor_from_trusted_cert(der).ok().map(|anchor| (index, anchor)))
        .collect();
    let Some((leaf, intermediates)) = chain.split_first() else {
        let none = "the server presented no certificate".to_owned();
        return Verification { anchor: Err(none.clone()), trusted_by_roots_only: false, hostname: Err(none) };
    };
    let end_entity = match webpki::EndEntityCert::try_from(leaf) {
        Ok(end_entity) => end_entity,
        Err(error) => {
            let bad = format!("the leaf certificate is malformed: {error}");
            return Verification { anchor: Err(bad.clone()), trusted_by_roots_only: false, hostname: Err(bad) };
        }
    };
    let path_to = |indexes: &[usize]| -> Result<usize, String> {
        let (anchor_indexes, trust_anchors): (Vec<usize>, Vec<rustls_pki_types::TrustAnchor<'_>>) =
            anchors.iter().filter(|(index, _)| indexes.contains(index)).cloned().unzip();
        let path = end_entity
            .verify_for_usage(
                algorithms.all,
                &trust_anchors,
                intermediates,
                now,
                webpki::KeyUsage::server_auth(),
                None,
                None,
            )
            .map_err(|error| chain_error(&error))?;
        let found = path.anchor();
        Ok(anchor_indexes
            .iter()
            .zip(&trust_anchors)
            .find(|(_, anchor)| std::ptr::eq(*anchor, found))
            .map(|(index, _)| *index)
            .unwrap_or(0))
    };
    let all: Vec<usize> = (0..bundle.len()).collect();
    let roots: Vec<usize> = all.iter().copied().filter(|&index| is_self_signed(&bundle[index])).collect();
    let anchor = path_to(&all);
    let trusted_by_roots_only = anchor.is_ok() && path_to(&roots).is_ok();
    let hostname = end_entity
        .verify_is_valid_for_subject_name(server_name)
        .map_err(|error| format!("the certificate is not valid for {}: {error:?}", server_name.to_str()));
    Verification { anchor, trusted_by_roots_only, hostname }
}

fn chain_error(error: &webpki::Error) -> String {
    match error {
        webpki::Error::UnknownIssuer => "no path to a certificate of the bundle (unknown issuer)".to_owned(),
        webpki::Error::InvalidSignatureForPublicKey => {
            "a certificate of the bundle has the issuer's name but not its key: the signature does not verify"
                .to_owned()
        }
        webpki::Error::CertExpired { .. } => "a certificate of the chain has expired".to_owned(),
        webpki::Error::CertNotValidYet { .. } => "a certificate of the chain is not valid yet".to_owned(),
        webpki::Error::RequiredEkuNotFoundContext(_) => {
            "the leaf is not a TLS server certificate (extendedKeyUsage lacks serverAuth)".to_owned()
        }
        other => format!("the chain does not verify: {other:?}"),
    }
}

/// Connects and handshakes, recording the presented chain into `chain`.
fn handshake(request: &Request, chain: &mut Vec<CertificateDer<'static>>) -> Result<Negotiated, Failure> {
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let (verifier, recorded) = DangerRecordingVerifier::new(provider.signature_verification_algorithms);
    let versions: &[&'static rustls::SupportedProtocolVersion] = match request.version {
        Some(TlsVersion::Tls12) => &[&rustls::version::TLS12],
        Some(TlsVersion::Tls13) => &[&rustls::version::TLS13],
        None => &[&rustls::version::TLS13, &rustls::version::TLS12],
    };
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(versions)
        .map_err(|error| Failure::Tls(error.to_string()))?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(verifier));
    let mut config = match &request.client_identity {
        Some((certificates, key)) => builder
            .with_client_auth_cert(certificates.clone(), key.clone_key())
            .map_err(|error| Failure::Tls(error.to_string()))?,
        None => builder.with_no_client_auth(),
    };
    config.alpn_protocols = request.alpn.clone();
    let mut connection = ClientConnection::new(Arc::new(config), request.server_name.clone())
        .map_err(|error| Failure::Tls(error.to_string()))?;
    let mut socket = connect(&request.host, request.port, request.timeout)?;
    let result = drive(&mut connection, &mut socket, request.timeout);
    *chain = std::mem::take(&mut *recorded.lock().unwrap_or_else(PoisonError::into_inner));
    let closed_after_handshake = result?;
    let negotiated = Negotiated {
        tls_version: match connection.protocol_version() {
            Some(rustls::ProtocolVersion::TLSv1_3) => "TLS 1.3".to_owned(),
            Some(rustls::ProtocolVersion::TLSv1_2) => "TLS 1.2".to_owned(),
            other => format!("{other:?}"),
        },
        cipher_suite: connection
            .negotiated_cipher_suite()
            .map(|suite| format!("{:?}", suite.suite()))
            .unwrap_or_default(),
        alpn: connection.alpn_protocol().map(|protocol| String::from_utf8_lossy(protocol).into_owned()),
        closed_after_handshake,
    };
    connection.send_close_notify();
    let _ = connection.write_tls(&mut socket);
    Ok(negotiated)
}

fn connect(host: &str, port: u16, timeout: StdDuration) -> Result<TcpStream, Failure> {
    let addresses: Vec<SocketAddr> =
        (host, port).to_socket_addrs().map_err(|error| Failure::Resolve(error.to_string()))?.collect();
    let mut last = Failure::Resolve("no address".to_owned());
    for address in addresses {
        match TcpStream::connect_timeout(&address, timeout) {
            Ok(socket) => {
                let configured = socket
                    .set_read_timeout(Some(timeout))
                    .and_then(|()| socket.set_write_timeout(Some(timeout)))
                    .and_then(|()| socket.set_nodelay(true));
                configured.map_err(|error| Failure::Connect(error.to_string()))?;
                return Ok(socket);
            }
            Err(error) if is_timeout(&error) => last = Failure::TimedOut,
            Err(error) => last = Failure::Connect(format!("{address}: {error}")),
        }
    }
    Err(last)
}

/// Runs the handshake, then waits briefly for a late alert. A server that closes without an
/// alert (close_notify or EOF, as `openssl s_server` does) has not refused anything: the answer
/// is then `Ok(true)`.
fn drive(connection: &mut ClientConnection, socket: &mut TcpStream, timeout: StdDuration) -> Result<bool, Failure> {
    while connection.is_handshaking() {
        connection.complete_io(socket).map_err(|error| io_failure(&error, false))?;
    }
    while connection.wants_write() {
        connection.write_tls(socket).map_err(|error| io_failure(&error, true))?;
    }
    // A TLS 1.3 server checks the client certificate after our Finished: its refusal arrives
    // as an alert on the first read. An MQTT server says nothing until CONNECT, so a quiet
    // connection after SETTLE is a success.
    let deadline = Instant::now() + SETTLE.min(timeout);
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Ok(false);
        }
        socket.set_read_timeout(Some(left)).map_err(|error| Failure::Connect(error.to_string()))?;
        match connection.read_tls(socket) {
            Ok(0) => return Ok(true),
            Ok(_) => {
                let state = connection.process_new_packets().map_err(|error| tls_failure(&error, true))?;
                if state.peer_has_closed() {
                    return Ok(true);
                }
                // Application data (a server that speaks first) is read and dropped.
                let mut sink = [0u8; 4096];
                while let Ok(read @ 1..) = connection.reader().read(&mut sink) {
                    let _ = read;
                }
            }
            Err(error) if is_timeout(&error) => return Ok(false),
            Err(error) if error.kind() == io::ErrorKind::ConnectionReset => return Ok(true),
            Err(error) => return Err(io_failure(&error, true)),
        }
    }
}

fn is_timeout(error: &io::Error) -> bool {
    matches!(error.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut)
}

fn io_failure(error: &io::Error, after_handshake: bool) -> Failure {
    if let Some(tls) = error.get_ref().and_then(|inner| inner.downcast_ref::<rustls::Error>()) {
        return tls_failure(tls, after_handshake);
    }
    match error.kind() {
        _ if is_timeout(error) => Failure::TimedOut,
        io::ErrorKind::UnexpectedEof | io::ErrorKind::ConnectionReset | io::ErrorKind::ConnectionAborted => {
            Failure::Closed { after_handshake }
        }
        _ => Failure::Connect(error.to_string()),
    }
}

fn tls_failure(error: &rustls::Error, after_handshake: bool) -> Failure {
    match error {
        rustls::Error::AlertReceived(alert) => Failure::Alert { alert: alert_name(*alert), after_handshake },
        other => Failure::Tls(other.to_string()),
    }
}

/// The RFC 8446 name of an alert: `HandshakeFailure` becomes "handshake_failure".
fn alert_name(alert: rustls::AlertDescription) -> String {
    let debug = format!("{alert:?}");
    let mut name = String::with_capacity(debug.len() + 4);
    let mut previous_lower = false;
    for character in debug.chars() {
        if character.is_ascii_uppercase() && previous_lower {
            name.push('_');
        }
        previous_lower = character.is_ascii_lowercase() || character.is_ascii_digit();
        name.push(character.to_ascii_lowercase());
    }
    name
}

impl Report {
    /// The exit status: handshake failure, then verification failure, then warnings.
    pub fn status(&self) -> Status {
        if self.handshake.is_err() {
            Status::ConnectionFailed
        } else if !self.verification.as_ref().is_some_and(Verification::passed) || !self.unparsable.is_empty() {
            Status::VerificationFailed
        } else if !self.warnings.is_empty() {
            Status::Warnings
        } else {
            Status::Ok
        }
    }

    /// The JSON document `--output json` prints (see docs/tools.md).
    pub fn to_json(&self) -> Value {
        let connection = match &self.handshake {
            Ok(negotiated) => json!({
                "ok": true,
                "tlsVersion": negotiated.tls_version,
                "cipherSuite": negotiated.cipher_suite,
                "alpn": negotiated.alpn,
                "clientCertificateOffered": self.client_certificate,
                "error": null,
            }),
            Err(failure) => json!({
                "ok": false,
                "tlsVersion": null,
                "cipherSuite": null,
                "alpn": null,
                "clientCertificateOffered": self.client_certificate,
                "error": {
                    "kind": failure.kind(),
                    "message": failure.message(),
                    "alert": match failure { Failure::Alert { alert, .. } => Some(alert.as_str()), _ => None },
                },
            }),
        };
        let chain: Vec<Value> = self
            .chain
            .iter()
            .enumerate()
            .map(|(index, certificate)| {
                let mut value = Description::of(certificate, self.now).to_json();
                value["index"] = json!(index);
                value
            })
            .collect();
        let verification = self.verification.as_ref().map(|verification| {
            let anchor = verification.anchor.as_ref().ok().map(|&index| {
                let description = Description::of(&self.bundle[index], self.now);
                json!({"subject": description.subject, "sha256": description.sha256, "selfSigned": description.self_signed})
            });
            json!({
                "bundle": self.bundle_source,
                "bundleCertificates": self.bundle.len(),
                "trusted": verification.anchor.is_ok(),
                "error": verification.anchor.as_ref().err(),
                "anchor": anchor,
                "trustedByRootsOnly": verification.trusted_by_roots_only,
                "hostnameMatches": verification.hostname.is_ok(),
                "hostnameError": verification.hostname.as_ref().err(),
            })
        });
        let next_roots: Vec<Value> = self
            .next_roots
            .iter()
            .map(|(root, held)| {
                let description = Description::of(root, self.now);
                json!({"subject": description.subject, "sha256": description.sha256, "inBundle": held})
            })
            .collect();
        let status = self.status();
        json!({
            "target": self.target,
            "serverName": self.server_name,
            "checkedAt": rfc3339(self.now),
            "connection": connection,
            "chain": chain,
            "chainBytes": self.chain_bytes,
            "unparsable": self.unparsable.iter().map(|(index, reason)| json!({"index": index, "error": reason})).collect::<Vec<_>>(),
            "verification": verification,
            "nextRoots": next_roots,
            "verifiesWithNextRoots": self.verifies_with_next_roots,
            "warnings": self.warnings.iter().map(|warning| json!({"kind": warning.kind(), "message": warning.message()})).collect::<Vec<_>>(),
            "notes": self.notes,
            "result": status.name(),
            "exitCode": status.code(),
        })
    }

    /// The text `--output text` prints.
    pub fn to_text(&self) -> String {
        let mut out = Vec::new();
        out.push(format!("tls-check {} (server name {})", self.target, self.server_name));
        match &self.handshake {
            Ok(negotiated) => out.push(format!(
                "connection: {}, {}, ALPN {}, client certificate {}",
                negotiated.tls_version,
                negotiated.cipher_suite,
                negotiated.alpn.as_deref().unwrap_or("(none)"),
                if self.client_certificate { "offered" } else { "not offered" }
            )),
            Err(failure) => out.push(format!("connection FAILED: {}", failure.message())),
        }
        if !self.chain.is_empty() || !self.unparsable.is_empty() {
            out.push(format!(
                "chain as presented: {} certificates, {} bytes",
                self.chain.len() + self.unparsable.len(),
                self.chain_bytes
            ));
            for (index, certificate) in self.chain.iter().enumerate() {
                let mut lines = Description::of(certificate, self.now).text_lines().into_iter();
                out.push(format!("  [{index}] {}", lines.next().unwrap_or_default()));
                out.extend(lines.map(|line| format!("      {line}")));
            }
            for (index, reason) in &self.unparsable {
                out.push(format!("  [{index}] does not parse: {reason}"));
            }
        }
        if let Some(verification) = &self.verification {
            out.push(format!("verification against {} ({} certificates):", self.bundle_source, self.bundle.len()));
            match &verification.anchor {
                Ok(index) => {
                    let anchor = Description::of(&self.bundle[*index], self.now);
                    out.push(format!(
                        "  chain: trusted, anchored at {} ({})",
                        anchor.subject,
                        if anchor.self_signed { "self-signed root" } else { "NOT a root" }
                    ));
                }
                Err(reason) => out.push(format!("  chain: NOT trusted: {reason}")),
            }
            match &verification.hostname {
                Ok(()) => out.push(format!("  host name: {} matches", self.server_name)),
                Err(reason) => out.push(format!("  host name: MISMATCH: {reason}")),
            }
        }
        if !self.next_roots.is_empty() {
            out.push("next roots:".to_owned());
            for (root, held) in &self.next_roots {
                let description = Description::of(root, self.now);
                out.push(format!(
                    "  {} {} (sha256 {})",
                    if *held { "in bundle:" } else { "MISSING:  " },
                    description.subject,
                    description.sha256
                ));
            }
            if let Some(verifies) = self.verifies_with_next_roots {
                out.push(format!(
                    "  the presented chain {} against the next roots",
                    if verifies { "already verifies" } else { "does not verify" }
                ));
            }
        }
        for warning in &self.warnings {
            out.push(format!("WARNING {}: {}", warning.kind(), warning.message()));
        }
        for note in &self.notes {
            out.push(format!("note: {note}"));
        }
        let status = self.status();
        out.push(format!("result: {} (exit code {})", status.name(), status.code()));
        let mut text = out.join("\n");
        text.push('\n');
        text
    }
}

/// The whole command: parse, check, print; returns the exit status.
pub fn run(args: &TlsCheckArgs, now: OffsetDateTime, stdout: &mut dyn Write, stderr: &mut dyn Write) -> Status {
    let request = match Request::from_args(args) {
        Ok(request) => request,
        Err(error) => {
            let _ = writeln!(stderr, "certfleet tls-check: {error}");
            return Status::InputError;
        }
    };
    let report = check(&request, now);
    let printed = match args.output {
        Output::Json => writeln!(stdout, "{}", report.to_json()),
        Output::Text => write!(stdout, "{}", report.to_text()),
    };
    if printed.is_err() {
        return Status::InputError;
    }
    report.status()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets() {
        let check = |target: &str, expected: Result<(&str, u16), &str>| {
            let got = split_target(target).map_err(|error| error.to_string());
            assert_eq!(got, expected.map(|(host, port)| (host.to_owned(), port)).map_err(str::to_owned), "{target}");
        };
        check("example.com:8883", Ok(("example.com", 8883)));
        check("127.0.0.1:443", Ok(("127.0.0.1", 443)));
        check("[::1]:8883", Ok(("::1", 8883)));
        check("example.com", Err("\"example.com\" is not HOST:PORT: no port"));
        check(
            "example.com:http",
            Err("\"example.com:http\" is not HOST:PORT: the port is not a number from 1 to 65535"),
        );
        check("example.com:0", Err("\"example.com:0\" is not HOST:PORT: the port is not a number from 1 to 65535"));
        check(":443", Err("\":443\" is not HOST:PORT: no host"));
        check("::1:8883", Err("\"::1:8883\" is not HOST:PORT: write an IPv6 address in brackets, [::1]:8883"));
        check("[::1:8883", Err("\"[::1:8883\" is not HOST:PORT: unbalanced brackets"));
    }

    #[test]
    fn alert_names() {
        let check = |alert: rustls::AlertDescription, expected: &str| assert_eq!(alert_name(alert), expected);
        check(rustls::AlertDescription::HandshakeFailure, "handshake_failure");
        check(rustls::AlertDescription::ProtocolVersion, "protocol_version");
        check(rustls::AlertDescription::CertificateRequired, "certificate_required");
        check(rustls::AlertDescription::UnknownCA, "unknown_ca");
    }
}
