//! Signature algorithms: from X.509 AlgorithmIdentifiers to aws-lc-rs verification.
//!
//! The mapping is written out here rather than taken from a library so that every accepted
//! algorithm, and every refusal, is visible in one place. RSASSA-PSS is accepted with SHA-256,
//! SHA-384 or SHA-512, MGF1 over the same hash, and a salt as long as the hash (the parameters
//! every mainstream signer writes). DSA is refused: see the crate documentation.

use std::fmt;

use aws_lc_rs::signature::{self, UnparsedPublicKey, VerificationAlgorithm};
use x509_parser::signature_algorithm::RsaSsaPssParams;
use x509_parser::x509::AlgorithmIdentifier;

use crate::{Curve, Error, KeyKind, PublicKey, check_key_rules};

/// A signature algorithm certfleet verifies.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum SignatureAlgorithm {
    /// RSASSA-PKCS1-v1_5 with SHA-256 (sha256WithRSAEncryption).
    RsaPkcs1Sha256,
    /// RSASSA-PKCS1-v1_5 with SHA-384 (sha384WithRSAEncryption).
    RsaPkcs1Sha384,
    /// RSASSA-PKCS1-v1_5 with SHA-512 (sha512WithRSAEncryption).
    RsaPkcs1Sha512,
    /// RSASSA-PSS with SHA-256, MGF1-SHA-256, 32-byte salt.
    RsaPssSha256,
    /// RSASSA-PSS with SHA-384, MGF1-SHA-384, 48-byte salt.
    RsaPssSha384,
    /// RSASSA-PSS with SHA-512, MGF1-SHA-512, 64-byte salt.
    RsaPssSha512,
    /// ECDSA with SHA-256 (ecdsa-with-SHA256), on the curve of the key.
    EcdsaSha256,
    /// ECDSA with SHA-384 (ecdsa-with-SHA384), on the curve of the key.
    EcdsaSha384,
    /// ECDSA with SHA-512 (ecdsa-with-SHA512), on the curve of the key.
    EcdsaSha512,
}

impl SignatureAlgorithm {
    /// The conventional name, e.g. "sha256WithRSAEncryption" or "rsassa-pss-sha256".
    pub fn name(self) -> &'static str {
        match self {
            SignatureAlgorithm::RsaPkcs1Sha256 => "sha256WithRSAEncryption",
            SignatureAlgorithm::RsaPkcs1Sha384 => "sha384WithRSAEncryption",
            SignatureAlgorithm::RsaPkcs1Sha512 => "sha512WithRSAEncryption",
            SignatureAlgorithm::RsaPssSha256 => "rsassa-pss-sha256",
            SignatureAlgorithm::RsaPssSha384 => "rsassa-pss-sha384",
            SignatureAlgorithm::RsaPssSha512 => "rsassa-pss-sha512",
            SignatureAlgorithm::EcdsaSha256 => "ecdsa-with-SHA256",
            SignatureAlgorithm::EcdsaSha384 => "ecdsa-with-SHA384",
            SignatureAlgorithm::EcdsaSha512 => "ecdsa-with-SHA512",
        }
    }
}

impl fmt::Display for SignatureAlgorithm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Why a signature algorithm is refused; kept inside parsed objects, which must stay `Clone`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Refusal {
    Dsa,
    Weak(&'static str),
    Unsupported(String),
    BadPss(String),
    Mismatch,
}

impl From<Refusal> for Error {
    fn from(refusal: Refusal) -> Self {
        match refusal {
            Refusal::Dsa => Error::DsaUnsupported,
            Refusal::Weak(algorithm) => Error::WeakSignatureAlgorithm { algorithm },
            Refusal::Unsupported(algorithm) => Error::UnsupportedSignatureAlgorithm { algorithm },
            Refusal::BadPss(reason) => Error::BadPssParameters { reason },
            Refusal::Mismatch => Error::SignatureAlgorithmMismatch,
        }
    }
}

const SHA256: &str = "2.16.840.1.101.3.4.2.1";
const SHA384: &str = "2.16.840.1.101.3.4.2.2";
const SHA512: &str = "2.16.840.1.101.3.4.2.3";
const MGF1: &str = "1.2.840.113549.1.1.8";

/// Maps an X.509 signature AlgorithmIdentifier to an accepted algorithm or a refusal.
pub(crate) fn resolve(identifier: &AlgorithmIdentifier<'_>) -> Result<SignatureAlgorithm, Refusal> {
    let oid = identifier.algorithm.to_id_string();
    match oid.as_str() {
        "1.2.840.113549.1.1.11" => Ok(SignatureAlgorithm::RsaPkcs1Sha256),
        "1.2.840.113549.1.1.12" => Ok(SignatureAlgorithm::RsaPkcs1Sha384),
        "1.2.840.113549.1.1.13" => Ok(SignatureAlgorithm::RsaPkcs1Sha512),
        "1.2.840.113549.1.1.10" => resolve_pss(identifier),
        "1.2.840.10045.4.3.2" => Ok(SignatureAlgorithm::EcdsaSha256),
        "1.2.840.10045.4.3.3" => Ok(SignatureAlgorithm::EcdsaSha384),
        "1.2.840.10045.4.3.4" => Ok(SignatureAlgorithm::EcdsaSha512),
        "2.16.840.1.101.3.4.3.2" => Err(Refusal::Dsa),
        "1.2.840.113549.1.1.5" | "1.3.14.3.2.29" => Err(Refusal::Weak("sha1WithRSAEncryption")),
        "1.2.840.113549.1.1.4" => Err(Refusal::Weak("md5WithRSAEncryption")),
        "1.2.840.113549.1.1.2" => Err(Refusal::Weak("md2WithRSAEncryption")),
        "1.2.840.10045.4.1" => Err(Refusal::Weak("ecdsa-with-SHA1")),
        "1.2.840.10040.4.3" => Err(Refusal::Weak("dsa-with-sha1")),
        "1.2.840.113549.1.1.14" => Err(Refusal::Unsupported("sha224WithRSAEncryption".into())),
        "1.2.840.10045.4.3.1" => Err(Refusal::Unsupported("ecdsa-with-SHA224".into())),
        "2.16.840.1.101.3.4.3.1" => Err(Refusal::Unsupported("dsa-with-sha224".into())),
        "1.3.101.112" => Err(Refusal::Unsupported("ed25519".into())),
        "1.3.101.113" => Err(Refusal::Unsupported("ed448".into())),
        _ => Err(Refusal::Unsupported(oid)),
    }
}

fn resolve_pss(identifier: &AlgorithmIdentifier<'_>) -> Result<SignatureAlgorithm, Refusal> {
    let bad = |reason: &str| Refusal::BadPss(reason.to_owned());
    // Absent parameters mean SHA-1 everywhere (RFC 4055).
    let Some(parameters) = identifier.parameters.as_ref() else {
        return Err(Refusal::Weak("rsassa-pss-sha1"));
    };
    let parameters = RsaSsaPssParams::try_from(parameters).map_err(|_| bad("malformed parameters"))?;
    let (algorithm, hash_length) = match parameters.hash_algorithm_oid().to_id_string().as_str() {
        SHA256 => (SignatureAlgorithm::RsaPssSha256, 32),
        SHA384 => (SignatureAlgorithm::RsaPssSha384, 48),
        SHA512 => (SignatureAlgorithm::RsaPssSha512, 64),
        "1.3.14.3.2.26" => return Err(Refusal::Weak("rsassa-pss-sha1")),
        other => {
            return Err(Refusal::BadPss(format!("hash {other} is not sha-256, sha-384 or sha-512")));
        }
    };
    let mask = parameters.mask_gen_algorithm().map_err(|_| bad("malformed mask generation"))?;
    if mask.mgf.to_id_string() != MGF1 {
        return Err(Refusal::BadPss(format!("mask generation {} is not mgf1", mask.mgf.to_id_string())));
    }
    if mask.hash != *parameters.hash_algorithm_oid() {
        return Err(bad("mgf1 hash differs from the signature hash"));
    }
    if parameters.salt_length() != hash_length {
        return Err(Refusal::BadPss(format!(
            "salt length {} differs from the hash length {hash_length}",
            parameters.salt_length()
        )));
    }
    if parameters.trailer_field() != 1 {
        return Err(bad("trailer field is not 1"));
    }
    Ok(algorithm)
}

/// Verifies `signature` over `message` with `key`, after applying the key rules to `key`.
pub(crate) fn verify(
    algorithm: SignatureAlgorithm,
    key: &PublicKey,
    message: &[u8],
    signature: &[u8],
) -> Result<(), Error> {
    check_key_rules(key)?;
    let verification = verification_algorithm(algorithm, key.kind())
        .ok_or_else(|| Error::AlgorithmKeyMismatch { algorithm, key: describe(key.kind()) })?;
    UnparsedPublicKey::new(verification, key.key_bits()).verify(message, signature).map_err(|_| Error::BadSignature)
}

/// "an rsa-2048", "an ec P-256", "a dsa": the key for an error message.
fn describe(kind: &KeyKind) -> String {
    let text = kind.to_string();
    let article = if text.starts_with(['a', 'e', 'i', 'o', 'u', 'r']) { "an" } else { "a" };
    format!("{article} {text}")
}

fn verification_algorithm(algorithm: SignatureAlgorithm, kind: &KeyKind) -> Option<&'static dyn VerificationAlgorithm> {
    use SignatureAlgorithm as S;
    Some(match (algorithm, kind) {
        (S::RsaPkcs1Sha256, KeyKind::Rsa { .. }) => &signature::RSA_PKCS1_2048_8192_SHA256,
        (S::RsaPkcs1Sha384, KeyKind::Rsa { .. }) => &signature::RSA_PKCS1_2048_8192_SHA384,
        (S::RsaPkcs1Sha512, KeyKind::Rsa { .. }) => &signature::RSA_PKCS1_2048_8192_SHA512,
        // aws-lc-rs' PSS verifiers expect a salt as long as the hash, which resolve() requires.
        (S::RsaPssSha256, KeyKind::Rsa { .. }) => &signature::RSA_PSS_2048_8192_SHA256,
        (S::RsaPssSha384, KeyKind::Rsa { .. }) => &signature::RSA_PSS_2048_8192_SHA384,
        (S::RsaPssSha512, KeyKind::Rsa { .. }) => &signature::RSA_PSS_2048_8192_SHA512,
        (S::EcdsaSha256, KeyKind::Ec(Curve::P256)) => &signature::ECDSA_P256_SHA256_ASN1,
        (S::EcdsaSha384, KeyKind::Ec(Curve::P256)) => &signature::ECDSA_P256_SHA384_ASN1,
        (S::EcdsaSha512, KeyKind::Ec(Curve::P256)) => &signature::ECDSA_P256_SHA512_ASN1,
        (S::EcdsaSha256, KeyKind::Ec(Curve::P384)) => &signature::ECDSA_P384_SHA256_ASN1,
        (S::EcdsaSha384, KeyKind::Ec(Curve::P384)) => &signature::ECDSA_P384_SHA384_ASN1,
        (S::EcdsaSha512, KeyKind::Ec(Curve::P384)) => &signature::ECDSA_P384_SHA512_ASN1,
        (S::EcdsaSha256, KeyKind::Ec(Curve::P521)) => &signature::ECDSA_P521_SHA256_ASN1,
        (S::EcdsaSha384, KeyKind::Ec(Curve::P521)) => &signature::ECDSA_P521_SHA384_ASN1,
        (S::EcdsaSha512, KeyKind::Ec(Curve::P521)) => &signature::ECDSA_P521_SHA512_ASN1,
        _ => return None,
    })
}
