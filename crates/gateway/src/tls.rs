//! The gateway's TLS: rustls with a client certificate required, TLS 1.2 and 1.3 only, ALPN
//! `x-amzn-mqtt-ca` (AWS's MQTT-on-443 protocol name) and `mqtt`, and SNI read after the
//! handshake to pick the account.
//!
//! **Where trust is decided.** The handshake proves that the client holds the private key of the
//! certificate it presents (rustls checks its CertificateVerify signature) and the verifier below
//! refuses certificates that do not parse or use refused keys. Whether the certificate is
//! *trusted* is not a question of chains to a fixed root here: it is whether the registry of the
//! endpoint's account holds it ACTIVE (and its CA ACTIVE, and the chain verifies). That check,
//! [`crate::identity::Registry::authenticate`], runs right after the handshake and before any
//! MQTT packet is acted on; a refused device gets CONNACK "not authorized" and is closed.

use std::sync::Arc;

use certfleet_pki::{self as pki, Certificate};
use rustls::DistinguishedName;
use rustls::client::danger::HandshakeSignatureValid;
use rustls::crypto::{CryptoProvider, WebPkiSupportedAlgorithms};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, UnixTime};
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
    let verifier = Arc::new(RegistryDeferredVerifier { algorithms: provider.signature_verification_algorithms });
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])?
        .with_client_cert_verifier(verifier)
        .with_single_cert(chain, key)?;
    config.alpn_protocols = ALPN.iter().map(|protocol| protocol.to_vec()).collect();
    Ok(Arc::new(config))
}

/// Requires a client certificate, checks that it parses and that its key passes the key rules,
/// and leaves trust to the registry (see the module documentation).
#[derive(Debug)]
struct RegistryDeferredVerifier {
    algorithms: WebPkiSupportedAlgorithms,
}

impl ClientCertVerifier for RegistryDeferredVerifier {
    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &[]
    }

    fn client_auth_mandatory(&self) -> bool {
        true
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        let certificate = Certificate::from_der(end_entity.to_vec())
            .map_err(|_| rustls::Error::InvalidCertificate(CertificateError::BadEncoding))?;
        pki::check_key_rules(certificate.public_key())
            .map_err(|_| rustls::Error::InvalidCertificate(CertificateError::BadEncoding))?;
        Ok(ClientCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms.supported_schemes()
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
}
