//! Public keys, the key rules, and key generation.
//!
//! The rules are AWS IoT's for keys in a CSR: RSA of at least 2048 bits, or EC on NIST P-256,
//! P-384 or P-521. Everything else is refused with a reason that names the key.

use std::fmt;

use aws_lc_rs::encoding::{AsDer, Pkcs8V1Der, PublicKeyX509Der};
use aws_lc_rs::rsa::KeySize;
use aws_lc_rs::signature::{
    ECDSA_P256_SHA256_ASN1_SIGNING, ECDSA_P384_SHA384_ASN1_SIGNING, EcdsaKeyPair, KeyPair as _, RsaKeyPair,
};
use x509_parser::prelude::FromDer;
use x509_parser::public_key::PublicKey as ParsedKey;
use x509_parser::x509::SubjectPublicKeyInfo;
use zeroize::Zeroizing;

use crate::{Error, der, pem};

const OID_RSA_ENCRYPTION: &str = "1.2.840.113549.1.1.1";
const OID_EC_PUBLIC_KEY: &str = "1.2.840.10045.2.1";

/// A NIST curve accepted by the key rules.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Curve {
    /// NIST P-256 (secp256r1, prime256v1).
    P256,
    /// NIST P-384 (secp384r1).
    P384,
    /// NIST P-521 (secp521r1).
    P521,
}

impl Curve {
    /// The NIST name: "P-256", "P-384" or "P-521".
    pub fn name(self) -> &'static str {
        match self {
            Curve::P256 => "P-256",
            Curve::P384 => "P-384",
            Curve::P521 => "P-521",
        }
    }
}

/// What a public key is.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum KeyKind {
    /// RSA, with the modulus length in bits.
    Rsa {
        /// The modulus length.
        bits: u32,
    },
    /// EC on an accepted NIST curve.
    Ec(Curve),
    /// EC on another curve: the curve's name (e.g. "secp256k1"), its OID when it has no
    /// well-known name, or "(explicit parameters)".
    EcOtherCurve(String),
    /// Any other algorithm, by name ("ed25519", "ed448", "dsa", "rsassa-pss") or OID.
    Other(String),
}

impl fmt::Display for KeyKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            KeyKind::Rsa { bits } => write!(f, "rsa-{bits}"),
            KeyKind::Ec(curve) => write!(f, "ec {}", curve.name()),
            KeyKind::EcOtherCurve(curve) => write!(f, "ec {curve}"),
            KeyKind::Other(algorithm) => f.write_str(algorithm),
        }
    }
}

/// A public key: its SubjectPublicKeyInfo DER and what kind of key it is.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct PublicKey {
    spki_der: Vec<u8>,
    key_bits: Vec<u8>,
    kind: KeyKind,
}

impl PublicKey {
    /// Parses a SubjectPublicKeyInfo DER.
    pub fn from_spki_der(der: &[u8]) -> Result<Self, Error> {
        let (rest, spki) =
            SubjectPublicKeyInfo::from_der(der).map_err(|error| Error::BadPublicKey { reason: error.to_string() })?;
        if !rest.is_empty() {
            return Err(Error::BadPublicKey { reason: "trailing bytes".to_owned() });
        }
        Self::from_x509(&spki)
    }

    /// Parses a "PUBLIC KEY" PEM block (SubjectPublicKeyInfo).
    pub fn from_pem(text: &str) -> Result<Self, Error> {
        Self::from_spki_der(&pem::pem_decode(text, &["PUBLIC KEY"])?)
    }

    pub(crate) fn from_x509(spki: &SubjectPublicKeyInfo<'_>) -> Result<Self, Error> {
        if spki.subject_public_key.unused_bits != 0 {
            return Err(Error::BadPublicKey { reason: "key bit string has unused bits".to_owned() });
        }
        let algorithm = spki.algorithm.algorithm.to_id_string();
        let kind = match algorithm.as_str() {
            OID_RSA_ENCRYPTION => match spki.parsed() {
                Ok(ParsedKey::RSA(rsa)) => KeyKind::Rsa { bits: modulus_bits(rsa.modulus) },
                _ => {
                    return Err(Error::BadPublicKey { reason: "malformed rsa public key".to_owned() });
                }
            },
            OID_EC_PUBLIC_KEY => {
                let curve = spki.algorithm.parameters.as_ref().and_then(|any| any.as_oid().ok());
                match curve.map(|oid| oid.to_id_string()).as_deref() {
                    Some("1.2.840.10045.3.1.7") => KeyKind::Ec(Curve::P256),
                    Some("1.3.132.0.34") => KeyKind::Ec(Curve::P384),
                    Some("1.3.132.0.35") => KeyKind::Ec(Curve::P521),
                    Some(other) => KeyKind::EcOtherCurve(curve_name(other)),
                    None => KeyKind::EcOtherCurve("(explicit parameters)".to_owned()),
                }
            }
            other => KeyKind::Other(key_algorithm_name(other)),
        };
        Ok(PublicKey { spki_der: spki.raw.to_vec(), key_bits: spki.subject_public_key.data.to_vec(), kind })
    }

    /// What kind of key this is.
    pub fn kind(&self) -> &KeyKind {
        &self.kind
    }

    /// The SubjectPublicKeyInfo DER.
    pub fn spki_der(&self) -> &[u8] {
        &self.spki_der
    }

    /// The "PUBLIC KEY" PEM of the SubjectPublicKeyInfo.
    pub fn to_pem(&self) -> String {
        pem::pem_encode("PUBLIC KEY", &self.spki_der)
    }

    /// The content of the subjectPublicKey BIT STRING: an RSAPublicKey DER or an EC point.
    pub(crate) fn key_bits(&self) -> &[u8] {
        &self.key_bits
    }

    /// The RFC 5280 method 1 key identifier: SHA-1 of the subjectPublicKey bits.
    pub(crate) fn key_identifier(&self) -> Vec<u8> {
        use aws_lc_rs::digest;
        digest::digest(&digest::SHA1_FOR_LEGACY_USE_ONLY, &self.key_bits).as_ref().to_vec()
    }
}

/// The modulus length in bits, ignoring leading zero bytes.
fn modulus_bits(modulus: &[u8]) -> u32 {
    let significant = match modulus.iter().position(|&b| b != 0) {
        Some(start) => &modulus[start..],
        None => return 0,
    };
    let bytes = u32::try_from(significant.len()).unwrap_or(u32::MAX / 8);
    bytes * 8 - significant[0].leading_zeros()
}

fn curve_name(oid: &str) -> String {
    match oid {
        "1.3.132.0.10" => "secp256k1",
        "1.3.132.0.33" => "secp224r1",
        "1.2.840.10045.3.1.1" => "prime192v1",
        "1.3.36.3.3.2.8.1.1.7" => "brainpoolP256r1",
        "1.3.36.3.3.2.8.1.1.11" => "brainpoolP384r1",
        "1.3.36.3.3.2.8.1.1.13" => "brainpoolP512r1",
        "1.2.156.10197.1.301" => "sm2",
        other => other,
    }
    .to_owned()
}

fn key_algorithm_name(oid: &str) -> String {
    match oid {
        "1.3.101.112" => "ed25519",
        "1.3.101.113" => "ed448",
        "1.3.101.110" => "x25519",
        "1.3.101.111" => "x448",
        "1.2.840.10040.4.1" => "dsa",
        "1.2.840.10046.2.1" => "dh",
        "1.2.840.113549.1.1.10" => "rsassa-pss",
        other => other,
    }
    .to_owned()
}

/// Applies the key rules: RSA of 2048 to 8192 bits, or EC on P-256, P-384 or P-521.
///
/// The upper RSA bound is the verifier's: larger keys could not be verified, and cost a lot of
/// CPU to try.
pub fn check_key_rules(key: &PublicKey) -> Result<(), Error> {
    match key.kind() {
        KeyKind::Rsa { bits } if *bits < 2048 => Err(Error::RsaKeyTooSmall { bits: *bits }),
        KeyKind::Rsa { bits } if *bits > 8192 => Err(Error::RsaKeyTooLarge { bits: *bits }),
        KeyKind::Rsa { .. } | KeyKind::Ec(_) => Ok(()),
        KeyKind::EcOtherCurve(curve) => Err(Error::CurveNotAccepted { curve: curve.clone() }),
        KeyKind::Other(algorithm) => Err(Error::KeyTypeNotAccepted { algorithm: algorithm.clone() }),
    }
}

/// The kinds of key certfleet generates.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum KeyAlgorithm {
    /// ECDSA on P-256.
    EcdsaP256,
    /// ECDSA on P-384.
    EcdsaP384,
    /// RSA, 2048 bits (what AWS IoT's CreateKeysAndCertificate returns).
    Rsa2048,
    /// RSA, 3072 bits.
    Rsa3072,
}

impl KeyAlgorithm {
    /// A short name: "ecdsa-p256", "ecdsa-p384", "rsa-2048" or "rsa-3072".
    pub fn name(self) -> &'static str {
        match self {
            KeyAlgorithm::EcdsaP256 => "ecdsa-p256",
            KeyAlgorithm::EcdsaP384 => "ecdsa-p384",
            KeyAlgorithm::Rsa2048 => "rsa-2048",
            KeyAlgorithm::Rsa3072 => "rsa-3072",
        }
    }
}

/// A freshly generated key pair.
///
/// Its `Debug` shows the algorithm only.
pub struct GeneratedKeyPair {
    algorithm: KeyAlgorithm,
    pkcs8: Zeroizing<Vec<u8>>,
    private_key_pem: Zeroizing<String>,
    public_key: PublicKey,
}

impl fmt::Debug for GeneratedKeyPair {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GeneratedKeyPair").field("algorithm", &self.algorithm).finish_non_exhaustive()
    }
}

impl GeneratedKeyPair {
    /// Generates a key pair with the system random generator.
    pub fn generate(algorithm: KeyAlgorithm) -> Result<Self, Error> {
        let (pkcs8, spki) = match algorithm {
            KeyAlgorithm::EcdsaP256 => generate_ec(&ECDSA_P256_SHA256_ASN1_SIGNING)?,
            KeyAlgorithm::EcdsaP384 => generate_ec(&ECDSA_P384_SHA384_ASN1_SIGNING)?,
            KeyAlgorithm::Rsa2048 => generate_rsa(KeySize::Rsa2048)?,
            KeyAlgorithm::Rsa3072 => generate_rsa(KeySize::Rsa3072)?,
        };
        let private_key_pem = match algorithm {
            KeyAlgorithm::Rsa2048 | KeyAlgorithm::Rsa3072 => {
                pem_encode_secret("RSA PRIVATE KEY", &pkcs1_from_pkcs8(&pkcs8)?)
            }
            KeyAlgorithm::EcdsaP256 | KeyAlgorithm::EcdsaP384 => pem_encode_secret("PRIVATE KEY", &pkcs8),
        };
        Ok(GeneratedKeyPair { algorithm, pkcs8, private_key_pem, public_key: PublicKey::from_spki_der(&spki)? })
    }

    /// The algorithm of the key.
    pub fn algorithm(&self) -> KeyAlgorithm {
        self.algorithm
    }

    /// The public key.
    pub fn public_key(&self) -> &PublicKey {
        &self.public_key
    }

    /// The public key as a "PUBLIC KEY" PEM block (SubjectPublicKeyInfo).
    pub fn public_key_pem(&self) -> String {
        self.public_key.to_pem()
    }

    /// The private key as PKCS#8 DER.
    pub fn pkcs8_der(&self) -> &[u8] {
        &self.pkcs8
    }

    /// The private key as PEM, in the form devices expect.
    ///
    /// RSA keys come as "RSA PRIVATE KEY" (PKCS#1), as AWS IoT's CreateKeysAndCertificate returns
    /// them; EC keys come as "PRIVATE KEY" (PKCS#8), which every TLS stack reads.
    pub fn private_key_pem(&self) -> Zeroizing<String> {
        self.private_key_pem.clone()
    }
}

fn generate_ec(
    algorithm: &'static aws_lc_rs::signature::EcdsaSigningAlgorithm,
) -> Result<(Zeroizing<Vec<u8>>, Vec<u8>), Error> {
    let key_pair = EcdsaKeyPair::generate(algorithm).map_err(|_| Error::KeyGeneration)?;
    let pkcs8 = key_pair.to_pkcs8v1().map_err(|_| Error::KeyGeneration)?;
    let spki: PublicKeyX509Der<'static> = key_pair.public_key().as_der().map_err(|_| Error::KeyGeneration)?;
    Ok((Zeroizing::new(pkcs8.as_ref().to_vec()), spki.as_ref().to_vec()))
}

fn generate_rsa(size: KeySize) -> Result<(Zeroizing<Vec<u8>>, Vec<u8>), Error> {
    let key_pair = RsaKeyPair::generate(size).map_err(|_| Error::KeyGeneration)?;
    let pkcs8: Pkcs8V1Der<'static> = key_pair.as_der().map_err(|_| Error::KeyGeneration)?;
    let spki: PublicKeyX509Der<'static> = key_pair.public_key().as_der().map_err(|_| Error::KeyGeneration)?;
    Ok((Zeroizing::new(pkcs8.as_ref().to_vec()), spki.as_ref().to_vec()))
}

/// The PKCS#1 RSAPrivateKey inside a PKCS#8 PrivateKeyInfo (its privateKey OCTET STRING).
fn pkcs1_from_pkcs8(pkcs8: &[u8]) -> Result<Zeroizing<Vec<u8>>, Error> {
    let malformed =
        |error: der::DerError| Error::BadDer { what: "pkcs#8 private key", reason: error.reason().to_owned() };
    let info = der::read_single(pkcs8, der::SEQUENCE).map_err(malformed)?;
    match der::read_all(info.content).map_err(malformed)?.get(2) {
        Some(private_key) if private_key.tag == der::OCTET_STRING => Ok(Zeroizing::new(private_key.content.to_vec())),
        _ => Err(malformed(der::DerError::UnexpectedTag)),
    }
}

/// PEM for secrets: the base64 text lives in zeroized buffers only.
fn pem_encode_secret(label: &str, der: &[u8]) -> Zeroizing<String> {
    Zeroizing::new(pem::pem_encode(label, der))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_support::{EC_PUBLIC_KEY, SECP256K1, fake_rsa_spki, spki_with_algorithm};

    fn check(spki: &[u8], kind: KeyKind, rules: Result<(), &str>) {
        let key = PublicKey::from_spki_der(spki).expect("test spki parses");
        assert_eq!(key.kind(), &kind);
        assert_eq!(check_key_rules(&key).map_err(|error| error.to_string()), rules.map_err(str::to_owned));
    }

    fn generated(algorithm: KeyAlgorithm) -> Vec<u8> {
        GeneratedKeyPair::generate(algorithm).expect("keygen").public_key().spki_der().to_vec()
    }

    fn rcgen_spki(algorithm: &'static rcgen::SignatureAlgorithm) -> Vec<u8> {
        use rcgen::PublicKeyData;
        rcgen::KeyPair::generate_for(algorithm).expect("keygen").subject_public_key_info()
    }

    #[test]
    fn rsa_2048_accepted() {
        check(&generated(KeyAlgorithm::Rsa2048), KeyKind::Rsa { bits: 2048 }, Ok(()));
    }

    #[test]
    fn rsa_3072_accepted() {
        check(&generated(KeyAlgorithm::Rsa3072), KeyKind::Rsa { bits: 3072 }, Ok(()));
    }

    #[test]
    fn rsa_1024_refused() {
        check(
            &fake_rsa_spki(1024),
            KeyKind::Rsa { bits: 1024 },
            Err("rsa key of 1024 bits is too small: at least 2048 bits are required"),
        );
    }

    #[test]
    fn rsa_2047_refused() {
        check(
            &fake_rsa_spki(2047),
            KeyKind::Rsa { bits: 2047 },
            Err("rsa key of 2047 bits is too small: at least 2048 bits are required"),
        );
    }

    #[test]
    fn rsa_16384_refused() {
        check(
            &fake_rsa_spki(16384),
            KeyKind::Rsa { bits: 16384 },
            Err("rsa key of 16384 bits is too large: at most 8192 bits are accepted"),
        );
    }

    #[test]
    fn p256_accepted() {
        check(&generated(KeyAlgorithm::EcdsaP256), KeyKind::Ec(Curve::P256), Ok(()));
    }

    #[test]
    fn p384_accepted() {
        check(&generated(KeyAlgorithm::EcdsaP384), KeyKind::Ec(Curve::P384), Ok(()));
    }

    #[test]
    fn p521_accepted() {
        check(&rcgen_spki(&rcgen::PKCS_ECDSA_P521_SHA512), KeyKind::Ec(Curve::P521), Ok(()));
    }

    #[test]
    fn secp256k1_refused() {
        let spki = spki_with_algorithm(EC_PUBLIC_KEY, Some(SECP256K1), &[4; 65]);
        check(
            &spki,
            KeyKind::EcOtherCurve("secp256k1".into()),
            Err("ec key on curve secp256k1 is not accepted: only P-256, P-384 and P-521"),
        );
    }

    #[test]
    fn unnamed_curve_refused_by_oid() {
        let spki = spki_with_algorithm(EC_PUBLIC_KEY, Some(&[1, 2, 3, 4]), &[4; 65]);
        check(
            &spki,
            KeyKind::EcOtherCurve("1.2.3.4".into()),
            Err("ec key on curve 1.2.3.4 is not accepted: only P-256, P-384 and P-521"),
        );
    }

    #[test]
    fn ed25519_refused() {
        check(
            &rcgen_spki(&rcgen::PKCS_ED25519),
            KeyKind::Other("ed25519".into()),
            Err("ed25519 keys are not accepted"),
        );
    }

    #[test]
    fn dsa_refused() {
        let spki = spki_with_algorithm(&[1, 2, 840, 10040, 4, 1], None, &[2, 1, 5]);
        check(&spki, KeyKind::Other("dsa".into()), Err("dsa keys are not accepted"));
    }

    #[test]
    fn unknown_algorithm_refused_by_oid() {
        let spki = spki_with_algorithm(&[1, 2, 3], None, &[1, 2, 3]);
        check(&spki, KeyKind::Other("1.2.3".into()), Err("1.2.3 keys are not accepted"));
    }

    #[test]
    fn malformed_rsa_key_is_an_error() {
        let spki = spki_with_algorithm(crate::test_support::RSA_ENCRYPTION, None, &[1, 2, 3]);
        let error = PublicKey::from_spki_der(&spki).expect_err("not an RSAPublicKey");
        assert_eq!(error.to_string(), "malformed public key: malformed rsa public key");
    }

    #[test]
    fn public_key_pem_round_trips() {
        let key_pair = GeneratedKeyPair::generate(KeyAlgorithm::EcdsaP256).expect("keygen");
        let parsed = PublicKey::from_pem(&key_pair.public_key_pem()).expect("parses");
        assert_eq!(&parsed, key_pair.public_key());
    }

    #[test]
    fn rsa_private_key_pem_is_pkcs1_and_loads() {
        let key_pair = GeneratedKeyPair::generate(KeyAlgorithm::Rsa2048).expect("keygen");
        let pem = key_pair.private_key_pem();
        assert!(pem.starts_with("-----BEGIN RSA PRIVATE KEY-----\n"));
        let pkcs1 = pem::pem_decode(&pem, &["RSA PRIVATE KEY"]).expect("decodes");
        let loaded = RsaKeyPair::from_der(&pkcs1).expect("aws-lc reads PKCS#1");
        assert_eq!(loaded.public_key().as_ref(), key_pair.public_key().key_bits());
    }

    #[test]
    fn ec_private_key_pem_is_pkcs8_and_loads() {
        let key_pair = GeneratedKeyPair::generate(KeyAlgorithm::EcdsaP384).expect("keygen");
        let pem = key_pair.private_key_pem();
        let pkcs8 = pem::pem_decode(&pem, &["PRIVATE KEY"]).expect("decodes");
        let loaded = EcdsaKeyPair::from_pkcs8(&ECDSA_P384_SHA384_ASN1_SIGNING, &pkcs8).expect("aws-lc reads PKCS#8");
        assert_eq!(loaded.public_key().as_ref(), key_pair.public_key().key_bits());
    }

    #[test]
    fn debug_shows_only_the_algorithm() {
        let key_pair = GeneratedKeyPair::generate(KeyAlgorithm::EcdsaP256).expect("keygen");
        assert_eq!(format!("{key_pair:?}"), "GeneratedKeyPair { algorithm: EcdsaP256, .. }");
    }

    #[test]
    fn modulus_bits_ignores_leading_zeros() {
        assert_eq!((modulus_bits(&[0, 0x80, 0]), modulus_bits(&[0x01, 0]), modulus_bits(&[0, 0])), (16, 9, 0));
    }
}
