//! Private keys of server certificates imported by operators (the ACM-compatible import): the
//! three PEM shapes ACM accepts (PKCS#8 `PRIVATE KEY`, SEC1 `EC PRIVATE KEY`, PKCS#1
//! `RSA PRIVATE KEY`), the check that a key belongs to its certificate, and a tagged byte form to
//! seal at rest.

use std::fmt;

use aws_lc_rs::rsa::KeyPair as RsaKeyPair;
use aws_lc_rs::signature::{self, EcdsaKeyPair, KeyPair};
use zeroize::Zeroizing;

use crate::{Certificate, Error, pem};

/// How a private key's DER is encoded.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PrivateKeyFormat {
    Pkcs8,
    Sec1,
    Pkcs1,
}

impl PrivateKeyFormat {
    fn tag(self) -> u8 {
        match self {
            PrivateKeyFormat::Pkcs8 => 1,
            PrivateKeyFormat::Sec1 => 2,
            PrivateKeyFormat::Pkcs1 => 3,
        }
    }

    fn from_tag(tag: u8) -> Option<Self> {
        match tag {
            1 => Some(PrivateKeyFormat::Pkcs8),
            2 => Some(PrivateKeyFormat::Sec1),
            3 => Some(PrivateKeyFormat::Pkcs1),
            _ => None,
        }
    }
}

/// A server's private key, checked to load with aws-lc-rs. Its `Debug` shows the format only.
pub struct ServerKey {
    format: PrivateKeyFormat,
    der: Zeroizing<Vec<u8>>,
    /// The public key's bit string contents (EC point or PKCS#1 RSAPublicKey).
    public_bits: Vec<u8>,
}

impl fmt::Debug for ServerKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ServerKey").field("format", &self.format).finish_non_exhaustive()
    }
}

impl ServerKey {
    /// Parses one PEM private key block.
    pub fn from_pem(text: &str) -> Result<Self, Error> {
        let labels = [
            ("PRIVATE KEY", PrivateKeyFormat::Pkcs8),
            ("EC PRIVATE KEY", PrivateKeyFormat::Sec1),
            ("RSA PRIVATE KEY", PrivateKeyFormat::Pkcs1),
        ];
        let label = text.trim().strip_prefix("-----BEGIN ").and_then(|rest| rest.split_once("-----")).map(|(l, _)| l);
        let Some((label, format)) = labels.iter().find(|(name, _)| Some(*name) == label) else {
            return Err(Error::NotPem { reason: "no PRIVATE KEY, EC PRIVATE KEY or RSA PRIVATE KEY block" });
        };
        let der = Zeroizing::new(pem::pem_decode(text, &[label])?);
        Self::from_der(*format, der)
    }

    /// Loads DER of a known format.
    pub fn from_der(format: PrivateKeyFormat, der: Zeroizing<Vec<u8>>) -> Result<Self, Error> {
        let public_bits = public_bits(format, &der).ok_or(Error::KeyTypeNotAccepted {
            algorithm: "a private key aws-lc-rs cannot load (RSA, or EC on P-256/P-384/P-521)".to_owned(),
        })?;
        Ok(ServerKey { format, der, public_bits })
    }

    /// The DER encoding's format.
    pub fn format(&self) -> PrivateKeyFormat {
        self.format
    }

    /// The key's DER.
    pub fn der(&self) -> &[u8] {
        &self.der
    }

    /// Whether this key belongs to `certificate`.
    pub fn matches(&self, certificate: &Certificate) -> bool {
        certificate.public_key().key_bits() == self.public_bits.as_slice()
    }

    /// A tag byte and the DER: what is sealed at rest.
    pub fn to_bytes(&self) -> Zeroizing<Vec<u8>> {
        let mut out = Zeroizing::new(Vec::with_capacity(self.der.len() + 1));
        out.push(self.format.tag());
        out.extend_from_slice(&self.der);
        out
    }

    /// The inverse of [`ServerKey::to_bytes`].
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, Error> {
        let (tag, der) = bytes.split_first().ok_or(Error::NotPkcs8)?;
        let format = PrivateKeyFormat::from_tag(*tag).ok_or(Error::NotPkcs8)?;
        Self::from_der(format, Zeroizing::new(der.to_vec()))
    }
}

fn public_bits(format: PrivateKeyFormat, der: &[u8]) -> Option<Vec<u8>> {
    let curves = [
        &signature::ECDSA_P256_SHA256_ASN1_SIGNING,
        &signature::ECDSA_P384_SHA384_ASN1_SIGNING,
        &signature::ECDSA_P521_SHA512_ASN1_SIGNING,
    ];
    match format {
        PrivateKeyFormat::Pkcs8 => curves
            .iter()
            .find_map(|alg| EcdsaKeyPair::from_pkcs8(alg, der).ok().map(|k| k.public_key().as_ref().to_vec()))
            .or_else(|| RsaKeyPair::from_pkcs8(der).ok().map(|k| k.public_key().as_ref().to_vec())),
        PrivateKeyFormat::Sec1 => curves.iter().find_map(|alg| {
            EcdsaKeyPair::from_private_key_der(alg, der).ok().map(|k| k.public_key().as_ref().to_vec())
        }),
        PrivateKeyFormat::Pkcs1 => RsaKeyPair::from_der(der).ok().map(|k| k.public_key().as_ref().to_vec()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{GeneratedKeyPair, Issuer, KeyAlgorithm};
    use time::OffsetDateTime;

    fn issued(algorithm: KeyAlgorithm) -> (Certificate, Zeroizing<Vec<u8>>) {
        let now = OffsetDateTime::now_utc();
        let root = Issuer::generate_root("root", "t", time::Duration::days(10), KeyAlgorithm::EcdsaP256, now).unwrap();
        let (certificate, key) = root
            .issue_server_certificate("server", &["example.com".to_owned()], time::Duration::days(5), algorithm, now)
            .unwrap();
        (certificate, key)
    }

    #[test]
    fn pkcs8_keys_match_their_certificates_only() {
        let (ec_cert, ec_key) = issued(KeyAlgorithm::EcdsaP256);
        let (rsa_cert, rsa_key) = issued(KeyAlgorithm::Rsa2048);
        let ec = ServerKey::from_pem(&crate::pem_encode("PRIVATE KEY", &ec_key)).unwrap();
        let rsa = ServerKey::from_pem(&crate::pem_encode("PRIVATE KEY", &rsa_key)).unwrap();
        assert!(ec.matches(&ec_cert) && !ec.matches(&rsa_cert));
        assert!(rsa.matches(&rsa_cert) && !rsa.matches(&ec_cert));
        let back = ServerKey::from_bytes(&ec.to_bytes()).unwrap();
        assert!(back.matches(&ec_cert));
        assert_eq!(back.format(), PrivateKeyFormat::Pkcs8);
    }

    #[test]
    fn garbage_is_refused() {
        assert!(ServerKey::from_pem("hello").is_err());
        assert!(ServerKey::from_pem("-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n").is_err());
        let generated = GeneratedKeyPair::generate(KeyAlgorithm::EcdsaP256).unwrap();
        let pem = generated.private_key_pem();
        assert!(ServerKey::from_pem(&pem.replace("PRIVATE KEY", "RSA PRIVATE KEY")).is_err());
        assert!(ServerKey::from_bytes(&[9, 1, 2]).is_err());
        assert!(ServerKey::from_bytes(&[]).is_err());
    }
}
