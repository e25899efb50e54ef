//! The agent's typed settings, built once (by the binary from its TOML file and flags, or by a
//! test or load tool directly) and passed down; and the trust bundles they hold.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use rustls::RootCertStore;
use rustls_pki_types::CertificateDer;
use rustls_pki_types::pem::PemObject;

use crate::backoff::Backoff;
use crate::error::Error;

/// Everything one agent needs.
#[derive(Clone, Debug)]
pub struct Config {
    /// The gateway, `host:port`.
    pub endpoint: String,
    /// The TLS server name verified in the gateway's certificate (and sent as SNI unless it is an
    /// IP address). With certfleet, `<id>-ats.iot.<region>.<domain>` names the account.
    pub server_name: String,
    /// The MQTT client ID; also the `{clientId}` of the rotation topics.
    pub client_id: String,
    /// The credentials directory (see [`crate::store`]).
    pub credentials_dir: PathBuf,
    /// Roots that the gateway's certificate must chain to.
    pub server_roots: TrustBundle,
    /// Roots that a new device certificate must chain to before it is installed.
    pub device_roots: TrustBundle,
    /// The kind of key made for each rotation.
    pub key_algorithm: KeyAlgorithm,
    /// The MQTT protocol version.
    pub mqtt_version: MqttVersion,
    /// The MQTT keep-alive; a PINGREQ goes out after this long without sending.
    pub keep_alive: Duration,
    /// How long a TCP connect, TLS handshake and CONNACK may take together.
    pub connect_timeout: Duration,
    /// Delays between connection attempts.
    pub backoff: Backoff,
    /// Offer ALPN `x-amzn-mqtt-ca` (AWS IoT's MQTT-over-443 protocol name).
    pub alpn: bool,
    /// Test knob: stop the agent abruptly (no DISCONNECT, nothing cleaned up, as a power cut
    /// would) right after this step. `None` in production.
    pub crash_after: Option<Step>,
}

impl Config {
    /// Settings with the documented defaults for everything but the essentials.
    pub fn new(
        endpoint: impl Into<String>,
        server_name: impl Into<String>,
        client_id: impl Into<String>,
        credentials_dir: impl Into<PathBuf>,
        server_roots: TrustBundle,
        device_roots: TrustBundle,
    ) -> Self {
        Config {
            endpoint: endpoint.into(),
            server_name: server_name.into(),
            client_id: client_id.into(),
            credentials_dir: credentials_dir.into(),
            server_roots,
            device_roots,
            key_algorithm: KeyAlgorithm::P256,
            mqtt_version: MqttVersion::V5,
            keep_alive: Duration::from_secs(60),
            connect_timeout: Duration::from_secs(10),
            backoff: Backoff::default(),
            alpn: false,
            crash_after: None,
        }
    }
}

/// The steps of a rotation after which [`Config::crash_after`] can stop the agent.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Step {
    /// The new key is on disk and `state.json` names it pending; no CSR sent yet.
    KeyStored,
    /// The CSR was published on `csr_res`.
    CsrSent,
    /// The new certificate passed its checks, is on disk and `state.json` names it pending;
    /// the old session is still open.
    CertificateStored,
    /// The session with the new certificate is up; `crt_ack` not yet published.
    NewSessionConnected,
    /// `crt_ack` was published; its PUBACK not yet received, nothing promoted.
    AckSent,
}

/// The kind of key made for a rotation.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub enum KeyAlgorithm {
    /// ECDSA P-256 (the default: small, fast, accepted everywhere).
    #[default]
    P256,
    /// RSA 2048.
    Rsa2048,
    /// RSA 3072.
    Rsa3072,
}

impl KeyAlgorithm {
    /// The configuration name: `p256`, `rsa2048` or `rsa3072`.
    pub fn name(self) -> &'static str {
        match self {
            KeyAlgorithm::P256 => "p256",
            KeyAlgorithm::Rsa2048 => "rsa2048",
            KeyAlgorithm::Rsa3072 => "rsa3072",
        }
    }

    /// Parses a configuration name.
    pub fn parse(name: &str) -> Option<Self> {
        [KeyAlgorithm::P256, KeyAlgorithm::Rsa2048, KeyAlgorithm::Rsa3072].into_iter().find(|kind| kind.name() == name)
    }
}

/// The MQTT protocol version the agent speaks.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub enum MqttVersion {
    /// MQTT 5.0 (the default).
    #[default]
    V5,
    /// MQTT 3.1.1.
    V311,
}

impl MqttVersion {
    pub(crate) fn protocol(self) -> certfleet_mqtt::ProtocolVersion {
        match self {
            MqttVersion::V5 => certfleet_mqtt::ProtocolVersion::V5,
            MqttVersion::V311 => certfleet_mqtt::ProtocolVersion::V311,
        }
    }
}

/// A set of trusted root certificates read from PEM.
#[derive(Clone, Debug)]
pub struct TrustBundle {
    roots: Arc<RootCertStore>,
    certificates: Vec<CertificateDer<'static>>,
}

/// Why a certificate in a trust bundle deserves a warning.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum BundleWarning {
    /// A CA that is not self-signed (an intermediate): pinning it breaks when the issuer
    /// re-issues its intermediates; trust the root instead.
    PinnedIntermediate { subject: String },
    /// Not a CA certificate at all (a leaf pinned as trust anchor).
    NotACa { subject: String },
}

impl TrustBundle {
    /// Reads every CERTIFICATE block of a PEM text. Returns the bundle and what deserves a
    /// warning (the caller logs it). Fails when a block does not parse or there is none.
    pub fn from_pem(pem: &[u8]) -> Result<(TrustBundle, Vec<BundleWarning>), Error> {
        let bad = |reason: String| Error::TrustBundle { reason };
        let certificates = CertificateDer::pem_slice_iter(pem)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|error| bad(format!("reading pem: {error}")))?;
        if certificates.is_empty() {
            return Err(bad("no certificate in the bundle".to_owned()));
        }
        let mut roots = RootCertStore::empty();
        let mut warnings = Vec::new();
        for der in &certificates {
            let parsed = certfleet_pki::Certificate::from_der(der.to_vec())
                .map_err(|error| bad(format!("a certificate does not parse: {error}")))?;
            if !parsed.is_ca() {
                warnings.push(BundleWarning::NotACa { subject: parsed.subject_string() });
            } else if !is_self_signed(&parsed) {
                warnings.push(BundleWarning::PinnedIntermediate { subject: parsed.subject_string() });
            }
            roots.add(der.clone()).map_err(|error| bad(format!("a certificate is not a usable anchor: {error}")))?;
        }
        Ok((TrustBundle { roots: Arc::new(roots), certificates }, warnings))
    }

    /// Reads a bundle from a file and logs its warnings.
    pub fn from_file(path: &std::path::Path) -> Result<TrustBundle, Error> {
        let pem = std::fs::read(path).map_err(|source| Error::Io { what: "reading a trust bundle", source })?;
        let (bundle, warnings) = TrustBundle::from_pem(&pem)?;
        for warning in warnings {
            match warning {
                BundleWarning::PinnedIntermediate { subject } => tracing::warn!(
                    bundle = %path.display(),
                    %subject,
                    "the trust bundle holds an intermediate CA (not self-signed): trust the root instead, or rotation breaks when the intermediate is re-issued"
                ),
                BundleWarning::NotACa { subject } => tracing::warn!(
                    bundle = %path.display(),
                    %subject,
                    "the trust bundle holds a certificate that is not a CA"
                ),
            }
        }
        Ok(bundle)
    }

    pub(crate) fn roots(&self) -> Arc<RootCertStore> {
        self.roots.clone()
    }

    /// How many certificates the bundle holds.
    pub fn len(&self) -> usize {
        self.certificates.len()
    }

    /// Whether the bundle is empty (never, once built).
    pub fn is_empty(&self) -> bool {
        self.certificates.is_empty()
    }
}

fn is_self_signed(certificate: &certfleet_pki::Certificate) -> bool {
    certificate.is_self_issued() && certfleet_pki::verify_signature(certificate, certificate.public_key()).is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn certificate(name: &str, ca: bool, issuer: Option<(&rcgen::CertificateParams, &rcgen::KeyPair)>) -> String {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params.distinguished_name.push(rcgen::DnType::CommonName, name);
        if ca {
            params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        }
        match issuer {
            None => params.self_signed(&key).unwrap().pem(),
            Some((issuer_params, issuer_key)) => {
                params.signed_by(&key, &rcgen::Issuer::from_params(issuer_params, issuer_key)).unwrap().pem()
            }
        }
    }

    fn check(pem: &str, expected: Result<Vec<BundleWarning>, ()>) {
        let got = TrustBundle::from_pem(pem.as_bytes()).map(|(_, warnings)| warnings).map_err(|_| ());
        assert_eq!(got, expected, "{pem}");
    }

    #[test]
    fn trust_bundles() {
        let root_key = rcgen::KeyPair::generate().unwrap();
        let mut root_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        root_params.distinguished_name.push(rcgen::DnType::CommonName, "root");
        root_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        let root = root_params.self_signed(&root_key).unwrap().pem();
        let other_root = certificate("other root", true, None);
        let intermediate = certificate("intermediate", true, Some((&root_params, &root_key)));
        let leaf = certificate("leaf", false, None);

        check(&root, Ok(vec![]));
        check(&format!("{root}{other_root}"), Ok(vec![]));
        check(
            &format!("{root}{intermediate}"),
            Ok(vec![BundleWarning::PinnedIntermediate { subject: "CN=intermediate".into() }]),
        );
        check(&leaf, Ok(vec![BundleWarning::NotACa { subject: "CN=leaf".into() }]));
        check("", Err(()));
        check("-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n", Err(()));
    }

    #[test]
    fn key_algorithm_names() {
        for kind in [KeyAlgorithm::P256, KeyAlgorithm::Rsa2048, KeyAlgorithm::Rsa3072] {
            assert_eq!(KeyAlgorithm::parse(kind.name()), Some(kind));
        }
        assert_eq!(KeyAlgorithm::parse("ed25519"), None);
    }
}
