//! The one error type of the crate.
//!
//! Every refusal carries enough detail for the API layer to pick an AWS error shape and for an
//! operator to understand the reason from the message alone. No variant ever holds key material.

use std::fmt;

use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use crate::SignatureAlgorithm;

/// Which certificate of a check a validity error is about.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum CertificateRole {
    /// A CA certificate (being registered, or the issuer of a device certificate).
    Ca,
    /// The verification certificate proving possession of a CA's key.
    Verification,
    /// A device (end-entity) certificate.
    Device,
}

impl fmt::Display for CertificateRole {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            CertificateRole::Ca => "ca certificate",
            CertificateRole::Verification => "verification certificate",
            CertificateRole::Device => "device certificate",
        })
    }
}

/// Everything that can go wrong in this crate.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The text is not a single well-formed PEM block.
    #[error("not pem: {reason}")]
    NotPem {
        /// What is wrong with the text.
        reason: &'static str,
    },
    /// The PEM block has another label than the one expected.
    #[error("pem block is labelled {found:?}: expected {expected:?}")]
    WrongPemLabel {
        /// The label (or labels, joined by " or ") that would have been accepted.
        expected: String,
        /// The label found.
        found: String,
    },
    /// The text holds more than one PEM block where exactly one is expected.
    #[error("expected exactly one pem block, found more")]
    MultiplePemBlocks,
    /// The body of the PEM block is not valid base64.
    #[error("pem body is not valid base64")]
    BadBase64(#[source] base64::DecodeError),
    /// The DER encoding of a structure is malformed.
    #[error("malformed {what}: {reason}")]
    BadDer {
        /// The structure that failed to parse ("certificate", "certificate request", ...).
        what: &'static str,
        /// What the parser said.
        reason: String,
    },
    /// A certificate id is not 64 hexadecimal characters.
    #[error("invalid certificate id: {reason}")]
    BadCertificateId {
        /// What is wrong with it.
        reason: &'static str,
    },
    /// A public key could not be parsed.
    #[error("malformed public key: {reason}")]
    BadPublicKey {
        /// What is wrong with it.
        reason: String,
    },
    /// An RSA key is shorter than 2048 bits.
    #[error("rsa key of {bits} bits is too small: at least 2048 bits are required")]
    RsaKeyTooSmall {
        /// The modulus length of the key.
        bits: u32,
    },
    /// An RSA key is longer than 8192 bits (the most the verifier accepts).
    #[error("rsa key of {bits} bits is too large: at most 8192 bits are accepted")]
    RsaKeyTooLarge {
        /// The modulus length of the key.
        bits: u32,
    },
    /// An EC key is on a curve other than P-256, P-384 or P-521.
    #[error("ec key on curve {curve} is not accepted: only P-256, P-384 and P-521")]
    CurveNotAccepted {
        /// The curve name (or its OID when it has no well-known name).
        curve: String,
    },
    /// A key that is neither RSA nor EC (Ed25519, DSA, ...).
    #[error("{algorithm} keys are not accepted")]
    KeyTypeNotAccepted {
        /// The key algorithm, e.g. "ed25519" or "dsa".
        algorithm: String,
    },
    /// The object is signed with DSA-with-SHA256, which certfleet does not verify.
    ///
    /// AWS IoT accepts it; certfleet deliberately does not (see the crate documentation).
    #[error("dsa-with-sha256 signatures are not supported")]
    DsaUnsupported,
    /// The signature uses a broken hash (SHA-1, MD5, MD2).
    #[error("{algorithm} signatures are not accepted: the hash is broken")]
    WeakSignatureAlgorithm {
        /// The signature algorithm, e.g. "sha1WithRSAEncryption".
        algorithm: &'static str,
    },
    /// The signature algorithm is none of those certfleet verifies.
    #[error("signature algorithm {algorithm} is not supported")]
    UnsupportedSignatureAlgorithm {
        /// The algorithm's name, or its OID when it has no well-known name.
        algorithm: String,
    },
    /// RSASSA-PSS parameters other than SHA-256/384/512, MGF1 with the same hash and a salt as
    /// long as the hash.
    #[error("rsassa-pss parameters are not accepted: {reason}")]
    BadPssParameters {
        /// Which parameter is refused.
        reason: String,
    },
    /// The signature algorithm inside the signed part differs from the outer one.
    #[error("the signature algorithm of the signed part differs from the outer one")]
    SignatureAlgorithmMismatch,
    /// The signature algorithm does not fit the type of the verifying key.
    #[error("{algorithm} signatures cannot be verified with {key} key")]
    AlgorithmKeyMismatch {
        /// The signature algorithm.
        algorithm: SignatureAlgorithm,
        /// A description of the key, e.g. "an rsa-2048".
        key: String,
    },
    /// The signature does not verify.
    #[error("the signature does not verify")]
    BadSignature,
    /// A CA certificate lacks basicConstraints CA:TRUE.
    #[error("certificate {subject} is not a ca: basicConstraints CA:TRUE is missing")]
    NotACa {
        /// The subject of the certificate.
        subject: String,
    },
    /// A CA certificate has a keyUsage extension without keyCertSign.
    #[error("ca certificate {subject} may not sign certificates: its keyUsage lacks keyCertSign")]
    CaCannotSignCertificates {
        /// The subject of the certificate.
        subject: String,
    },
    /// The certificate's notAfter is in the past.
    #[error("{role} {subject} expired at {}", rfc3339(.not_after))]
    Expired {
        /// Which certificate of the check.
        role: CertificateRole,
        /// Its subject.
        subject: String,
        /// Its notAfter.
        not_after: OffsetDateTime,
    },
    /// The certificate's notBefore is in the future.
    #[error("{role} {subject} is not valid before {}", rfc3339(.not_before))]
    NotYetValid {
        /// Which certificate of the check.
        role: CertificateRole,
        /// Its subject.
        subject: String,
        /// Its notBefore.
        not_before: OffsetDateTime,
    },
    /// The verification certificate's common name is not the registration code.
    #[error("the verification certificate's common name {found:?} is not the registration code")]
    RegistrationCodeMismatch {
        /// The common name found, if any.
        found: Option<String>,
    },
    /// A certificate was not signed by the given CA.
    #[error("certificate is not signed by the ca {ca_subject}: {reason}")]
    NotSignedByIssuer {
        /// The CA's subject.
        ca_subject: String,
        /// Why: the names differ, or the signature does not verify with the CA key.
        reason: String,
    },
    /// A private key does not belong to the certificate it is paired with.
    #[error("the private key does not match the certificate's public key")]
    KeyMismatch,
    /// A private key is not PKCS#8 DER (a PKCS#1 or SEC1 key, or not a key at all).
    #[error("the private key is not pkcs#8 der")]
    NotPkcs8,
    /// A PKCS#8 private key could not be loaded (malformed, or an unsupported algorithm).
    #[error("the private key is malformed or of an unsupported type")]
    PrivateKeyRejected(#[source] rcgen::Error),
    /// Generating a key pair failed.
    #[error("key generation failed")]
    KeyGeneration,
    /// The system random generator failed.
    #[error("the system random generator failed")]
    Random,
    /// A requested validity period cannot be used.
    #[error("invalid validity: {reason}")]
    BadValidity {
        /// What is wrong with it.
        reason: &'static str,
    },
    /// A subject alternative name is neither an IP address nor a plausible DNS name.
    #[error("invalid subject alternative name {name:?}: {reason}")]
    BadSubjectAltName {
        /// The name as given.
        name: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// A common name cannot be encoded.
    #[error("invalid common name: {reason}")]
    BadCommonName {
        /// What is wrong with it.
        reason: &'static str,
    },
    /// Building or signing a certificate failed.
    #[error("building the certificate failed")]
    Build(#[source] rcgen::Error),
    /// A sealed blob cannot be opened: wrong passphrase or tampered data.
    #[error("sealed data cannot be opened: wrong passphrase or tampered data")]
    SealOpenFailed,
    /// A sealed blob has a malformed or unacceptable header.
    #[error("malformed sealed data: {reason}")]
    BadSealedBlob {
        /// What is wrong with it.
        reason: String,
    },
    /// Sealing failed inside the cipher.
    #[error("sealing failed")]
    SealFailed,
}

/// RFC 3339 for messages; falls back to `time`'s own format for dates RFC 3339 cannot express.
fn rfc3339(at: &OffsetDateTime) -> String {
    at.format(&Rfc3339).unwrap_or_else(|_| at.to_string())
}
