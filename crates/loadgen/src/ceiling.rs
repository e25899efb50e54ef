//! The in-process ceiling of mutual-TLS 1.3 handshakes: a rustls client and a rustls server
//! connection pumping bytes into each other in memory (no sockets, no MQTT), with certificates
//! like ours (ECDSA P-256 CA, server and client certificates, X25519 key exchange), full or
//! resumed. It is what a minimal rustls mTLS server could do on one core, the yardstick for the
//! gateway's connect storm; the criterion bench `handshake` and `certfleet-loadgen ceiling` both
//! run [`handshake`].

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use rustls::client::Resumption;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName};
use rustls::server::WebPkiClientVerifier;
use rustls::{ClientConfig, ClientConnection, HandshakeKind, ServerConfig, ServerConnection};

use crate::proc_stats;

/// Full handshakes every time, or resumed ones (after a first full handshake).
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Mode {
    Full,
    Resumed,
}

/// Client and server configurations sharing a fresh test CA.
pub struct Fixture {
    pub client: Arc<ClientConfig>,
    pub server: Arc<ServerConfig>,
    pub name: ServerName<'static>,
}

/// The provider both sides use: aws-lc-rs (as the gateway), key exchange X25519 only.
pub fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    let mut provider = rustls::crypto::aws_lc_rs::default_provider();
    provider.kx_groups = vec![rustls::crypto::aws_lc_rs::kx_group::X25519];
    Arc::new(provider)
}

impl Fixture {
    /// A test CA issuing an ECDSA P-256 server certificate for `localhost` and a client
    /// certificate; the server requires and verifies client certificates (webpki). In
    /// [`Mode::Full`] the client keeps no sessions and the server sends no tickets; in
    /// [`Mode::Resumed`] the server sends stateless tickets (as the gateway does) and the client
    /// keeps them in an in-memory store.
    pub fn new(mode: Mode) -> anyhow::Result<Fixture> {
        let algorithm = &rcgen::PKCS_ECDSA_P256_SHA256;
        let ca_key = rcgen::KeyPair::generate_for(algorithm)?;
        let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new())?;
        ca_params.distinguished_name.push(rcgen::DnType::CommonName, "certfleet-loadgen ceiling CA");
        ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        ca_params.key_usages = vec![rcgen::KeyUsagePurpose::KeyCertSign, rcgen::KeyUsagePurpose::CrlSign];
        let ca = rcgen::CertifiedIssuer::self_signed(ca_params, ca_key)?;
        let issue = |names: Vec<String>, usage: rcgen::ExtendedKeyUsagePurpose| {
            let key = rcgen::KeyPair::generate_for(algorithm)?;
            let mut params = rcgen::CertificateParams::new(names)?;
            params.distinguished_name.push(rcgen::DnType::CommonName, "certfleet-loadgen ceiling");
            params.extended_key_usages = vec![usage];
            let certificate = params.signed_by(&key, &ca)?;
            let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der()));
            anyhow::Ok((vec![certificate.der().clone(), ca.der().clone()], key))
        };
        let (server_chain, server_key) = issue(vec!["localhost".into()], rcgen::ExtendedKeyUsagePurpose::ServerAuth)?;
        let (client_chain, client_key) = issue(Vec::new(), rcgen::ExtendedKeyUsagePurpose::ClientAuth)?;

        let mut roots = rustls::RootCertStore::empty();
        roots.add(CertificateDer::from(ca.der().to_vec()))?;
        let roots = Arc::new(roots);
        let verifier = WebPkiClientVerifier::builder_with_provider(roots.clone(), provider()).build()?;
        let mut server = ServerConfig::builder_with_provider(provider())
            .with_protocol_versions(&[&rustls::version::TLS13])?
            .with_client_cert_verifier(verifier)
            .with_single_cert(server_chain, server_key)?;
        let mut client = ClientConfig::builder_with_provider(provider())
            .with_protocol_versions(&[&rustls::version::TLS13])?
            .with_root_certificates(roots)
            .with_client_auth_cert(client_chain, client_key)?;
        match mode {
            Mode::Full => {
                client.resumption = Resumption::disabled();
                server.send_tls13_tickets = 0;
            }
            Mode::Resumed => {
                client.resumption = Resumption::in_memory_sessions(64);
                server.session_storage = Arc::new(rustls::server::NoServerSessionStorage {});
                server.ticketer = rustls::crypto::aws_lc_rs::Ticketer::new()?;
                server.send_tls13_tickets = 1;
            }
        }
        Ok(Fixture { client: Arc::new(client), server: Arc::new(server), name: ServerName::try_from("localhost")? })
    }
}

/// Time spent in each side's calls during one handshake.
#[derive(Default, Clone, Copy, Debug)]
pub struct Split {
    pub client: Duration,
    pub server: Duration,
}

/// One handshake in memory, including the tickets the server sends after it; returns its kind
/// and the time each side took.
pub fn handshake(fixture: &Fixture) -> anyhow::Result<(HandshakeKind, Split)> {
    let mut split = Split::default();
    let started = Instant::now();
    let mut client = ClientConnection::new(fixture.client.clone(), fixture.name.clone())?;
    split.client += started.elapsed();
    let started = Instant::now();
    let mut server = ServerConnection::new(fixture.server.clone())?;
    split.server += started.elapsed();
    let mut buffer = Vec::with_capacity(8192);
    loop {
        let started = Instant::now();
        let mut moved = false;
        while client.wants_write() {
            client.write_tls(&mut buffer)?;
        }
        split.client += started.elapsed();
        let started = Instant::now();
        if !buffer.is_empty() {
            moved = true;
            let mut slice = &buffer[..];
            while !slice.is_empty() {
                server.read_tls(&mut slice)?;
                server.process_new_packets()?;
            }
            buffer.clear();
        }
        while server.wants_write() {
            server.write_tls(&mut buffer)?;
        }
        split.server += started.elapsed();
        let started = Instant::now();
        if !buffer.is_empty() {
            moved = true;
            let mut slice = &buffer[..];
            while !slice.is_empty() {
                client.read_tls(&mut slice)?;
                client.process_new_packets()?;
            }
            buffer.clear();
        }
        split.client += started.elapsed();
        if !moved {
            break;
        }
    }
    anyhow::ensure!(!client.is_handshaking() && !server.is_handshaking(), "the in-memory handshake stalled");
    Ok((client.handshake_kind().context("no handshake kind after the handshake")?, split))
}

/// What [`run`] measured.
#[derive(Debug)]
pub struct Ceiling {
    pub mode: Mode,
    pub handshakes: u64,
    pub resumed: u64,
    pub wall_seconds: f64,
    /// CPU seconds of the measuring thread (client and server work together).
    pub cpu_seconds: f64,
    /// The server's share of that CPU time, from the time spent in each side's calls.
    pub server_share: f64,
}

impl Ceiling {
    /// Handshakes per CPU-second, client and server work together (one core doing both).
    pub fn per_core_second(&self) -> f64 {
        self.handshakes as f64 / self.cpu_seconds.max(f64::EPSILON)
    }

    /// Handshakes per CPU-second of the server side alone: the figure to compare with a
    /// server's connect storm per server CPU-second.
    pub fn per_server_core_second(&self) -> f64 {
        self.handshakes as f64 / (self.cpu_seconds * self.server_share).max(f64::EPSILON)
    }

    pub fn to_json(&self) -> serde_json::Value {
        serde_json::json!({
            "scenario": format!("Ceiling{:?}", self.mode),
            "handshakes": self.handshakes,
            "resumed": self.resumed,
            "wall_seconds": self.wall_seconds,
            "cpu_seconds": self.cpu_seconds,
            "server_share": self.server_share,
            "handshakes_per_core_second": self.per_core_second(),
            "handshakes_per_server_core_second": self.per_server_core_second(),
        })
    }

    pub fn to_table(&self) -> String {
        format!(
            "ceiling {:<8} handshakes {:>7} (resumed {:>7})  cpu {:>6.2} s  {:>7.0}/core-s (client+server)  server share {:>4.1} %  {:>7.0}/server-core-s",
            format!("{:?}", self.mode),
            self.handshakes,
            self.resumed,
            self.cpu_seconds,
            self.per_core_second(),
            self.server_share * 100.0,
            self.per_server_core_second(),
        )
    }
}

/// Runs handshakes on this thread for `seconds` (or `count` handshakes, whichever comes first).
pub fn run(mode: Mode, seconds: f64, count: u64) -> anyhow::Result<Ceiling> {
    let fixture = Fixture::new(mode)?;
    if mode == Mode::Resumed {
        // The priming full handshake that gives the client its first tickets.
        handshake(&fixture)?;
    }
    let cpu_before = proc_stats::thread_cpu_seconds().context("reading /proc/thread-self/stat")?;
    let started = Instant::now();
    let deadline = started + Duration::from_secs_f64(seconds);
    let (mut handshakes, mut resumed, mut split) = (0u64, 0u64, Split::default());
    while handshakes < count && Instant::now() < deadline {
        let (kind, took) = handshake(&fixture)?;
        handshakes += 1;
        resumed += u64::from(kind == HandshakeKind::Resumed);
        split.client += took.client;
        split.server += took.server;
    }
    let wall_seconds = started.elapsed().as_secs_f64();
    let cpu_seconds = proc_stats::thread_cpu_seconds().context("reading /proc/thread-self/stat")? - cpu_before;
    let sides = (split.client + split.server).as_secs_f64();
    Ok(Ceiling {
        mode,
        handshakes,
        resumed,
        wall_seconds,
        // Ticks are 10 ms: never divide by a zero reading of a very short run.
        cpu_seconds: cpu_seconds.max(0.01),
        server_share: if sides > 0.0 { split.server.as_secs_f64() / sides } else { 0.5 },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn full_and_resumed_handshakes_complete_in_memory() {
        let full = Fixture::new(Mode::Full).unwrap();
        assert_eq!(handshake(&full).unwrap().0, HandshakeKind::Full);
        assert_eq!(handshake(&full).unwrap().0, HandshakeKind::Full);
        let resumed = Fixture::new(Mode::Resumed).unwrap();
        assert_eq!(handshake(&resumed).unwrap().0, HandshakeKind::Full);
        assert_eq!(handshake(&resumed).unwrap().0, HandshakeKind::Resumed);
        assert_eq!(handshake(&resumed).unwrap().0, HandshakeKind::Resumed);
    }
}
