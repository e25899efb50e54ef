//! The gateway's TLS: rustls with a client certificate required, TLS 1.2 and 1.3 only, ALPN
//! `x-amzn-mqtt-ca` (AWS's MQTT-on-443 protocol name) and `mqtt`, and SNI read after the
//! handshake to pick the account.
//!
//! **Where trust is decided.** The handshake proves that the client holds the private key of the
//! certificate it presents (its CertificateVerify signature, checked with the certificate's raw
//! public key) and the verifier below refuses certificates that do not parse or use refused keys,
//! and nothing more: X.509 version 1 certificates (what `openssl x509 -req` without an extension
//! file makes, as AWS's own instructions do), certificates without key identifiers and other
//! well-formed certificates a web PKI verifier refuses complete the handshake. Whether the certificate is
//! *trusted* is not a question of chains to a fixed root here: it is whether the registry of the
//! endpoint's account holds it ACTIVE (and its CA ACTIVE, and the chain verifies). That check,
//! [`crate::identity::Registry::authenticate`], runs right after the handshake and before any
//! MQTT packet is acted on; a refused device gets CONNACK "not authorized" and is closed.

use std::sync::Arc;

use certfleet_pki::{self as pki, Certificate};
use rustls::DistinguishedName;
use rustls::client::danger::HandshakeSignatureValid;
use rustls::crypto::{CryptoProvider, WebPkiSupportedAlgorithms};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, SubjectPublicKeyInfoDer, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{CertificateError, DigitallySignedStruct, SignatureScheme};

/// ALPN protocol names the gateway accepts.
pub const ALPN: [&[u8]; 2] = [b"x-amzn-mqtt-ca", b"mqtt"];

/// Builds the gateway's TLS configuration for a server certificate chain and key.
pub fn server_config(
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
) -> Result<Arc<rustls::ServerConfig>, rustls::Error> {
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let verifier = Arc::new(RegistryDeferredVerifier {
        algorithms: provider.signature_verification_algorithms,
        mode: ClientAuth::Registry,
    });
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])?
        .with_client_cert_verifier(verifier)
        .with_single_cert(chain, key)?;
    config.alpn_protocols = ALPN.iter().map(|protocol| protocol.to_vec()).collect();
    Ok(Arc::new(config))
}

/// Who may present which client certificate on an endpoint.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ClientAuth {
    /// A client certificate is required; the registry decides after the handshake.
    Registry,
    /// Test endpoints: any certificate, or none, completes the handshake.
    Anything,
}

/// The rustls settings of an AWS TLS security policy: protocol versions and cipher suites.
/// rustls offers no CBC, static-RSA or DHE suites, and TLS 1.0/1.1 never, so the legacy policies
/// get their AEAD + ECDHE subset (see docs/endpoints.md).
pub fn security_policy(
    name: &str,
) -> (Vec<&'static rustls::SupportedProtocolVersion>, Vec<rustls::SupportedCipherSuite>) {
    use rustls::crypto::aws_lc_rs::cipher_suite as cs;
    let tls13_all =
        vec![cs::TLS13_AES_128_GCM_SHA256, cs::TLS13_AES_256_GCM_SHA384, cs::TLS13_CHACHA20_POLY1305_SHA256];
    let tls13_aes = vec![cs::TLS13_AES_128_GCM_SHA256, cs::TLS13_AES_256_GCM_SHA384];
    let tls12 = vec![
        cs::TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256,
        cs::TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384,
        cs::TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256,
        cs::TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384,
    ];
    let v13 = &rustls::version::TLS13;
    let v12 = &rustls::version::TLS12;
    match name {
        "IoTSecurityPolicy_TLS13_1_3_2022_10" => (vec![v13], tls13_all),
        "IoTSecurityPolicy_TLS12_1_2_2022_10"
        | "IoTSecurityPolicy_TLS12_1_0_2016_01"
        | "IoTSecurityPolicy_TLS12_1_0_2015_01" => (vec![v12], tls12),
        "IoTSecurityPolicy_TLS13_1_2_2022_01" => (vec![v13, v12], [tls13_aes, tls12].concat()),
        // IoTSecurityPolicy_TLS13_1_2_2022_10, the default.
        _ => (vec![v13, v12], [tls13_all, tls12].concat()),
    }
}

/// The TLS configuration of an endpoint: its security policy, its chain (resolved by the
/// client's signature algorithms), its client authentication, and resumption by stateless
/// session tickets (TLS 1.3 tickets, TLS 1.2 RFC 5077 tickets) sealed by the node's `tickets`:
/// the server keeps no per-session memory, which matters with hundreds of thousands of devices.
/// A resumed session still has its client certificate checked against the registry.
pub fn endpoint_config(
    policy: &str,
    keys: Vec<Arc<rustls::sign::CertifiedKey>>,
    client_auth: ClientAuth,
    tickets: Arc<dyn rustls::server::ProducesTickets>,
) -> Result<Arc<rustls::ServerConfig>, rustls::Error> {
    let (versions, suites) = security_policy(policy);
    let provider = Arc::new(CryptoProvider { cipher_suites: suites, ..rustls::crypto::aws_lc_rs::default_provider() });
    let algorithms = provider.signature_verification_algorithms;
    let builder = rustls::ServerConfig::builder_with_provider(provider).with_protocol_versions(&versions)?;
    let builder =
        builder.with_client_cert_verifier(Arc::new(RegistryDeferredVerifier { algorithms, mode: client_auth }));
    let mut config = builder.with_cert_resolver(Arc::new(ChainResolver { keys }));
    config.alpn_protocols = ALPN.iter().map(|protocol| protocol.to_vec()).collect();
    config.session_storage = Arc::new(rustls::server::NoServerSessionStorage {});
    config.ticketer = tickets;
    config.send_tls13_tickets = 1;
    Ok(Arc::new(config))
}

/// A rustls signing key for a server chain.
pub fn certified_key(chain: &[Certificate], key: &pki::ServerKey) -> Result<rustls::sign::CertifiedKey, rustls::Error> {
    let der = match key.format() {
        pki::PrivateKeyFormat::Pkcs8 => PrivateKeyDer::Pkcs8(key.der().to_vec().into()),
        pki::PrivateKeyFormat::Sec1 => PrivateKeyDer::Sec1(key.der().to_vec().into()),
        pki::PrivateKeyFormat::Pkcs1 => PrivateKeyDer::Pkcs1(key.der().to_vec().into()),
    };
    let signing = rustls::crypto::aws_lc_rs::sign::any_supported_type(&der)?;
    let certificates = chain.iter().map(|c| CertificateDer::from(c.der().to_vec())).collect();
    Ok(rustls::sign::CertifiedKey::new(certificates, signing))
}

/// A rustls signing key from a DER chain and a PKCS#8 key (the built-in chains).
pub fn certified_key_der(
    chain: Vec<CertificateDer<'static>>,
    key: &PrivateKeyDer<'_>,
) -> Result<Arc<rustls::sign::CertifiedKey>, rustls::Error> {
    let signing = rustls::crypto::aws_lc_rs::sign::any_supported_type(key)?;
    Ok(Arc::new(rustls::sign::CertifiedKey::new(chain, signing)))
}

/// With [`ClientAuth::Registry`], requires a client certificate, checks that it parses and that
/// its key passes the key rules, and leaves trust to the registry (see the module documentation);
/// with [`ClientAuth::Anything`] (test endpoints), accepts any certificate or none. Either way the
/// handshake signature is checked.
#[derive(Debug)]
struct RegistryDeferredVerifier {
    algorithms: WebPkiSupportedAlgorithms,
    mode: ClientAuth,
}

impl ClientCertVerifier for RegistryDeferredVerifier {
    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &[]
    }

    fn client_auth_mandatory(&self) -> bool {
        self.mode == ClientAuth::Registry
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        if self.mode == ClientAuth::Anything {
            return Ok(ClientCertVerified::assertion());
        }
        let certificate = Certificate::from_der(end_entity.to_vec())
            .map_err(|_| rustls::Error::InvalidCertificate(CertificateError::BadEncoding))?;
        pki::check_key_rules(certificate.public_key())
            .map_err(|_| rustls::Error::InvalidCertificate(CertificateError::BadEncoding))?;
        hand_over(certificate);
        Ok(ClientCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_with_raw_key(message, cert, dss, &self.algorithms, false)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_with_raw_key(message, cert, dss, &self.algorithms, true)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}

/// Verifies a handshake signature with the certificate's SubjectPublicKeyInfo, whatever its X.509
/// version (rustls's own functions parse the certificate with webpki, which refuses version 1).
/// TLS 1.3: rustls's raw-key check (the scheme must be one TLS 1.3 allows). TLS 1.2: as rustls's
/// `verify_tls12_signature`, every algorithm the scheme maps to is tried on the key.
fn verify_with_raw_key(
    message: &[u8],
    cert: &CertificateDer<'_>,
    dss: &DigitallySignedStruct,
    algorithms: &WebPkiSupportedAlgorithms,
    tls13: bool,
) -> Result<HandshakeSignatureValid, rustls::Error> {
    let spki = pki::subject_public_key_info(cert.as_ref())
        .map_err(|_| rustls::Error::InvalidCertificate(CertificateError::BadEncoding))?;
    let spki = SubjectPublicKeyInfoDer::from(spki);
    if tls13 {
        return rustls::crypto::verify_tls13_signature_with_raw_key(message, &spki, dss, algorithms);
    }
    let key = webpki::RawPublicKeyEntity::try_from(&spki)
        .map_err(|_| rustls::Error::InvalidCertificate(CertificateError::BadEncoding))?;
    let candidates = algorithms
        .mapping
        .iter()
        .find(|(scheme, _)| *scheme == dss.scheme)
        .map(|(_, candidates)| *candidates)
        .ok_or(rustls::PeerMisbehaved::SignedHandshakeWithUnadvertisedSigScheme)?;
    for algorithm in candidates {
        match key.verify_signature(*algorithm, message, dss.signature()) {
            Ok(()) => return Ok(HandshakeSignatureValid::assertion()),
            // This algorithm of the scheme is for another kind of key: try the next.
            Err(webpki::Error::UnsupportedSignatureAlgorithmForPublicKeyContext(_)) => {}
            Err(_) => return Err(rustls::Error::InvalidCertificate(CertificateError::BadSignature)),
        }
    }
    Err(rustls::Error::InvalidCertificate(CertificateError::BadSignature))
}

/// Client certificates the verifier parsed, waiting for the listener to take them once their
/// handshake completes, so that a connection parses its certificate once. Keyed by the DER;
/// entries of handshakes that failed after verification are dropped when the map is full.
static PARSED: std::sync::Mutex<Option<std::collections::HashMap<Vec<u8>, Certificate>>> = std::sync::Mutex::new(None);

/// Most parsed certificates waiting at once (about the handshakes in flight).
const MAX_PARSED: usize = 4096;

fn hand_over(certificate: Certificate) {
    let mut parsed = PARSED.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    let parsed = parsed.get_or_insert_with(std::collections::HashMap::new);
    if parsed.len() >= MAX_PARSED {
        parsed.clear();
    }
    parsed.insert(certificate.der().to_vec(), certificate);
}

/// The client certificate of a completed handshake: the verifier's parse if it is still there,
/// else parsed now.
pub(crate) fn take_parsed(der: &[u8]) -> Result<Certificate, pki::Error> {
    let taken =
        PARSED.lock().unwrap_or_else(std::sync::PoisonError::into_inner).as_mut().and_then(|parsed| parsed.remove(der));
    match taken {
        Some(certificate) => Ok(certificate),
        None => Certificate::from_der(der.to_vec()),
    }
}

/// The provider the gateway uses (for the load tool and tests to match).
pub fn provider() -> CryptoProvider {
    rustls::crypto::aws_lc_rs::default_provider()
}

/// Which account an SNI host name names: `<identifier>-ats.iot.<region>.<domain>` (and the legacy
/// `<identifier>.iot.<region>.<domain>`) give the account's endpoint identifier; anything else
/// (no SNI, an IP literal, `localhost`, a foreign name) names no endpoint.
pub fn endpoint_identifier<'a>(sni: &'a str, region: &str, domain: &str) -> Option<&'a str> {
    let host = sni.strip_suffix(domain)?.strip_suffix('.')?.strip_suffix(region)?.strip_suffix(".iot.")?;
    let identifier = host.strip_suffix("-ats").unwrap_or(host);
    (!identifier.is_empty() && identifier.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit()))
        .then_some(identifier)
}

/// Serves the configuration's chain: the ECDSA leaf to clients that accept ECDSA signatures, the
/// RSA leaf to the others (AWS's ATS endpoints do the same).
#[derive(Debug)]
pub struct ChainResolver {
    pub keys: Vec<Arc<rustls::sign::CertifiedKey>>,
}

impl rustls::server::ResolvesServerCert for ChainResolver {
    fn resolve(&self, hello: rustls::server::ClientHello<'_>) -> Option<Arc<rustls::sign::CertifiedKey>> {
        let schemes = hello.signature_schemes();
        self.keys.iter().find(|key| key.key.choose_scheme(schemes).is_some()).or_else(|| self.keys.first()).cloned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoint_names() {
        let check = |sni: &str, expected: Option<&str>| {
            assert_eq!(endpoint_identifier(sni, "us-east-1", "certfleet.local"), expected, "{sni}");
        };
        check("abc123-ats.iot.us-east-1.certfleet.local", Some("abc123"));
        check("abc123.iot.us-east-1.certfleet.local", Some("abc123"));
        check("abc123-ats.iot.eu-west-1.certfleet.local", None);
        check("abc123-ats.iot.us-east-1.example.com", None);
        check("-ats.iot.us-east-1.certfleet.local", None);
        check("a.b-ats.iot.us-east-1.certfleet.local", None);
        check("localhost", None);
        check("iot.us-east-1.certfleet.local", None);
        check("ABC-ats.iot.us-east-1.certfleet.local", None);
    }

    /// A client certificate and the key the client signs the handshake with (the same one, or
    /// another to play a client that does not hold the certificate's key).
    #[derive(Debug)]
    struct Present(Arc<rustls::sign::CertifiedKey>);

    impl rustls::client::ResolvesClientCert for Present {
        fn resolve(&self, _: &[&[u8]], _: &[SignatureScheme]) -> Option<Arc<rustls::sign::CertifiedKey>> {
            Some(self.0.clone())
        }

        fn has_certs(&self) -> bool {
            true
        }
    }

    fn key(algorithm: &'static rcgen::SignatureAlgorithm) -> rcgen::KeyPair {
        rcgen::KeyPair::generate_for(algorithm).unwrap()
    }

    fn signing(key: &rcgen::KeyPair) -> Arc<dyn rustls::sign::SigningKey> {
        let der = PrivateKeyDer::Pkcs8(key.serialize_der().into());
        rustls::crypto::aws_lc_rs::sign::any_supported_type(&der).unwrap()
    }

    /// A handshake in memory between the gateway's TLS configuration and a client presenting
    /// `certificate` and signing with `signer`, over `version`: the server's error, if any.
    fn handshake(
        certificate: CertificateDer<'static>,
        signer: &rcgen::KeyPair,
        version: &'static rustls::SupportedProtocolVersion,
    ) -> Result<(), rustls::Error> {
        let server_key = key(&rcgen::PKCS_ECDSA_P256_SHA256);
        let server_certificate =
            rcgen::CertificateParams::new(vec!["localhost".to_owned()]).unwrap().self_signed(&server_key).unwrap();
        let server = server_config(
            vec![server_certificate.der().clone()],
            PrivateKeyDer::Pkcs8(server_key.serialize_der().into()),
        )
        .unwrap();
        let mut roots = rustls::RootCertStore::empty();
        roots.add(server_certificate.der().clone()).unwrap();
        let present = Present(Arc::new(rustls::sign::CertifiedKey::new(vec![certificate], signing(signer))));
        let client =
            rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::aws_lc_rs::default_provider()))
                .with_protocol_versions(&[version])
                .unwrap()
                .with_root_certificates(roots)
                .with_client_cert_resolver(Arc::new(present));
        let mut client = rustls::ClientConnection::new(Arc::new(client), "localhost".try_into().unwrap()).unwrap();
        let mut server = rustls::ServerConnection::new(server).unwrap();
        for _ in 0..16 {
            let mut flight = Vec::new();
            client.write_tls(&mut flight).unwrap();
            server.read_tls(&mut flight.as_slice()).unwrap();
            server.process_new_packets()?;
            let mut flight = Vec::new();
            server.write_tls(&mut flight).unwrap();
            client.read_tls(&mut flight.as_slice()).unwrap();
            client.process_new_packets().expect("the client accepts the gateway");
            if !client.is_handshaking() && !server.is_handshaking() {
                return Ok(());
            }
        }
        panic!("the handshake made no progress");
    }

    #[test]
    fn the_handshake_proves_possession_of_the_certificates_key_and_nothing_more() {
        let versions = [&rustls::version::TLS13, &rustls::version::TLS12];
        for algorithm in [&rcgen::PKCS_ECDSA_P256_SHA256, &rcgen::PKCS_ECDSA_P384_SHA384, &rcgen::PKCS_RSA_SHA256] {
            let device = key(algorithm);
            // Self-signed, from nobody the gateway knows: trust is the registry's question.
            let certificate =
                rcgen::CertificateParams::new(Vec::<String>::new()).unwrap().self_signed(&device).unwrap();
            let other = key(algorithm);
            for version in versions {
                let case = format!("{algorithm:?} over {:?}", version.version);
                assert_eq!(handshake(certificate.der().clone(), &device, version), Ok(()), "{case}");
                // A client that has the certificate but not its key cannot complete the handshake.
                let refused = handshake(certificate.der().clone(), &other, version);
                assert_eq!(refused, Err(rustls::Error::InvalidCertificate(CertificateError::BadSignature)), "{case}");
            }
        }
        // X.509 version 1, as `openssl x509 -req` without an extension file makes it (AWS's
        // documented command): webpki refuses it, the gateway checks the signature with its key.
        let directory = std::env::temp_dir().join(format!("certfleet-tls-v1-{}", std::process::id()));
        std::fs::create_dir_all(&directory).unwrap();
        let openssl = |args: &[&str]| {
            let status = std::process::Command::new("openssl")
                .args(args)
                .current_dir(&directory)
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null())
                .status()
                .unwrap();
            assert!(status.success(), "openssl {args:?}");
        };
        openssl(&["ecparam", "-name", "prime256v1", "-genkey", "-noout", "-out", "sec1.key"]);
        openssl(&["pkcs8", "-topk8", "-nocrypt", "-in", "sec1.key", "-out", "device.key"]);
        openssl(&["req", "-new", "-key", "device.key", "-subj", "/CN=v1-device", "-out", "device.csr"]);
        openssl(&[
            "x509",
            "-req",
            "-in",
            "device.csr",
            "-signkey",
            "device.key",
            "-days",
            "2",
            "-outform",
            "DER",
            "-out",
            "device.der",
        ]);
        let text = std::process::Command::new("openssl")
            .args(["x509", "-inform", "DER", "-in", "device.der", "-noout", "-text"])
            .current_dir(&directory)
            .output()
            .unwrap();
        assert!(
            String::from_utf8_lossy(&text.stdout).contains("Version: 1 (0x0)"),
            "openssl made a version 1 certificate"
        );
        let der = std::fs::read(directory.join("device.der")).unwrap();
        let device = rcgen::KeyPair::from_pem(&std::fs::read_to_string(directory.join("device.key")).unwrap()).unwrap();
        std::fs::remove_dir_all(&directory).unwrap();
        let parsed = Certificate::from_der(der.clone()).unwrap();
        assert!(parsed.subject_key_id().is_none());
        for version in versions {
            assert_eq!(
                handshake(CertificateDer::from(der.clone()), &device, version),
                Ok(()),
                "v1 over {:?}",
                version.version
            );
            let refused = handshake(CertificateDer::from(der.clone()), &key(&rcgen::PKCS_ECDSA_P256_SHA256), version);
            assert_eq!(refused, Err(rustls::Error::InvalidCertificate(CertificateError::BadSignature)));
        }

        // Bytes that are not a certificate are refused before any signature is looked at.
        let device = key(&rcgen::PKCS_ECDSA_P256_SHA256);
        let refused =
            handshake(CertificateDer::from(vec![0x30, 0x03, 0x02, 0x01, 0x01]), &device, &rustls::version::TLS13);
        assert_eq!(refused, Err(rustls::Error::InvalidCertificate(CertificateError::BadEncoding)));
    }
}
