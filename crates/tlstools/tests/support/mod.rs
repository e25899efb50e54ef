//! Test PKI (rcgen, made at run time) and a TLS server on 127.0.0.1:0 in a thread.

#![allow(dead_code)] // reason: each test file uses part of the support module

use std::io::Read as _;
use std::net::TcpListener;
use std::sync::Arc;

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use time::{Duration, OffsetDateTime};

/// A certificate with its key and parameters (to sign others).
pub struct Made {
    pub params: CertificateParams,
    pub key: KeyPair,
    pub der: CertificateDer<'static>,
}

impl Made {
    pub fn pem(&self) -> String {
        certfleet_pki::pem_encode("CERTIFICATE", &self.der)
    }

    pub fn key_pem(&self) -> String {
        self.key.serialize_pem()
    }

    pub fn private_key(&self) -> PrivateKeyDer<'static> {
        PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(self.key.serialize_der()))
    }

    pub fn sha256(&self) -> String {
        certfleet_pki::CertificateId::of_der(&self.der).to_string()
    }
}

pub enum Kind {
    Ca,
    Server(Vec<String>),
    Client,
}

/// Makes a certificate valid from `not_before` to `not_after`, signed by `issuer` (or itself).
pub fn make(
    common_name: &str,
    kind: Kind,
    issuer: Option<&Made>,
    not_before: OffsetDateTime,
    not_after: OffsetDateTime,
) -> Made {
    let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).expect("keygen");
    let mut params = match &kind {
        Kind::Server(names) => CertificateParams::new(names.clone()).expect("names"),
        Kind::Ca | Kind::Client => CertificateParams::default(),
    };
    let mut name = DistinguishedName::new();
    name.push(DnType::CommonName, common_name);
    params.distinguished_name = name;
    params.not_before = not_before;
    params.not_after = not_after;
    match kind {
        Kind::Ca => {
            params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
            params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        }
        Kind::Server(_) => {
            params.is_ca = IsCa::ExplicitNoCa;
            params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        }
        Kind::Client => {
            params.is_ca = IsCa::ExplicitNoCa;
            params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        }
    }
    let certificate = match issuer {
        Some(issuer) => {
            let signer = Issuer::from_params(&issuer.params, &issuer.key);
            params.signed_by(&key, &signer).expect("signs")
        }
        None => params.self_signed(&key).expect("self-signs"),
    };
    Made { der: certificate.der().clone(), params, key }
}

/// Valid from a year ago for `days` days from now.
pub fn valid_for_days(days: i64) -> (OffsetDateTime, OffsetDateTime) {
    let now = OffsetDateTime::now_utc();
    (now - Duration::days(365), now + Duration::days(days))
}

/// root -> intermediate -> leaf (for `localhost` and 127.0.0.1).
pub struct Chain {
    pub root: Made,
    pub intermediate: Made,
    pub leaf: Made,
}

pub fn chain(leaf_days: i64) -> Chain {
    let (from, to) = valid_for_days(3650);
    let root = make("Test Root", Kind::Ca, None, from, to);
    let intermediate = make("Test Intermediate", Kind::Ca, Some(&root), from, to);
    let (from, leaf_to) = valid_for_days(leaf_days);
    let leaf = make(
        "localhost",
        Kind::Server(vec!["localhost".to_owned(), "127.0.0.1".to_owned()]),
        Some(&intermediate),
        from,
        leaf_to,
    );
    Chain { root, intermediate, leaf }
}

pub struct ServerOptions {
    pub versions: Vec<&'static rustls::SupportedProtocolVersion>,
    /// Require a client certificate issued by this CA.
    pub client_ca: Option<CertificateDer<'static>>,
    pub alpn: Vec<Vec<u8>>,
}

impl Default for ServerOptions {
    fn default() -> Self {
        ServerOptions {
            versions: vec![&rustls::version::TLS13, &rustls::version::TLS12],
            client_ca: None,
            alpn: Vec::new(),
        }
    }
}

/// Serves `chain` with `key` on 127.0.0.1:0 (every connection in a thread); returns the port.
pub fn serve(chain: Vec<CertificateDer<'static>>, key: PrivateKeyDer<'static>, options: ServerOptions) -> u16 {
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&options.versions)
        .expect("versions");
    let builder = match options.client_ca {
        Some(ca) => {
            let mut roots = rustls::RootCertStore::empty();
            roots.add(ca).expect("client ca");
            let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
                .build()
                .expect("client verifier");
            builder.with_client_cert_verifier(verifier)
        }
        None => builder.with_no_client_auth(),
    };
    let mut config = builder.with_single_cert(chain, key).expect("server config");
    config.alpn_protocols = options.alpn;
    let config = Arc::new(config);
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = listener.local_addr().expect("address").port();
    std::thread::spawn(move || {
        for socket in listener.incoming() {
            let Ok(socket) = socket else { continue };
            let config = config.clone();
            std::thread::spawn(move || {
                let Ok(connection) = rustls::ServerConnection::new(config) else { return };
                let mut stream = rustls::StreamOwned::new(connection, socket);
                let mut sink = [0u8; 1024];
                // Reads until the client goes away or the handshake fails (rustls sends the alert).
                while matches!(stream.read(&mut sink), Ok(1..)) {}
            });
        }
    });
    port
}

/// A port nothing listens on.
pub fn closed_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    listener.local_addr().expect("address").port()
}

/// A small deterministic generator (xorshift), for blobs.
pub struct Noise(u64);

impl Noise {
    pub fn new(seed: u64) -> Self {
        Noise(seed | 1)
    }

    pub fn bytes(&mut self, length: usize) -> Vec<u8> {
        (0..length)
            .map(|_| {
                self.0 ^= self.0 << 13;
                self.0 ^= self.0 >> 7;
                self.0 ^= self.0 << 17;
                (self.0 >> 24) as u8
            })
            .collect()
    }
}
