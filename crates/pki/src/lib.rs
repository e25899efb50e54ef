//! certfleet's public-key infrastructure: X.509 certificates, CSRs, key rules, issuing,
//! chain checks and encryption of keys at rest.
//!
//! # Architecture invariant
//!
//! This crate is pure: no IO, no async, no clock (every check takes `now`), no logging. It
//! never sees a database row or a wire format; it knows certificates, keys and signatures.
//! Randomness (keys, serials, salts) comes from aws-lc-rs' system generator.
//!
//! # Libraries
//!
//! x509-parser parses; rcgen builds certificates; aws-lc-rs generates keys, verifies and signs.
//! The signature algorithm of every certificate and CSR is mapped to an aws-lc-rs verifier here
//! ([`SignatureAlgorithm`]), including the RSASSA-PSS parameters, so what is accepted is visible
//! in one place.
//!
//! # Rules
//!
//! - Keys ([`check_key_rules`]): RSA of 2048 to 8192 bits, or EC on P-256, P-384 or P-521.
//!   Anything else is refused with a reason naming the key (size, curve or algorithm).
//! - Signatures: RSA PKCS#1 v1.5 and RSASSA-PSS with SHA-256/384/512, ECDSA with
//!   SHA-256/384/512. SHA-1, MD5 and MD2 based signatures are refused, naming the algorithm.
//!
//! # Deviation from AWS IoT: DSA
//!
//! AWS IoT accepts DSA_WITH_SHA256 signatures. certfleet refuses them with
//! [`Error::DsaUnsupported`]: aws-lc-rs (like ring, rustls and webpki) does not verify DSA, and
//! carrying a second crypto library for an algorithm deprecated by FIPS 186-5 is not worth it.
//!
//! # Secrets
//!
//! Private keys leave this crate as [`zeroize::Zeroizing`] buffers and are never printed: the
//! `Debug` of [`Issuer`] and [`GeneratedKeyPair`] shows the key type only. [`sealed`] encrypts
//! them at rest.

mod algorithm;
mod certificate;
mod checks;
mod crl;
mod csr;
mod der;
mod error;
mod id;
mod issuer;
mod key;
mod pem;
pub mod sealed;
mod server_key;

#[cfg(test)]
mod test_support;

pub use algorithm::SignatureAlgorithm;
pub use certificate::{Certificate, SubjectAltNames, subject_public_key_info, verify_signature};
pub use checks::{check_ca_certificate, check_issued_by, check_verification_certificate};
pub use crl::Crl;
pub use csr::Csr;
pub use error::{CertificateRole, Error};
pub use id::CertificateId;
pub use issuer::Issuer;
pub use key::{Curve, GeneratedKeyPair, KeyAlgorithm, KeyKind, PublicKey, check_key_rules};
pub use pem::pem_encode;
pub use server_key::{PrivateKeyFormat, ServerKey};

#[cfg(test)]
mod tests {
    use super::*;

    fn assert_send_sync<T: Send + Sync + 'static>() {}

    #[test]
    fn public_types_are_send_and_sync() {
        assert_send_sync::<Certificate>();
        assert_send_sync::<Csr>();
        assert_send_sync::<Issuer>();
        assert_send_sync::<GeneratedKeyPair>();
        assert_send_sync::<PublicKey>();
        assert_send_sync::<Error>();
    }
}
