//! Certificate revocation lists (RFC 5280 §5): parsed once, signature checked against an
//! issuer's key, and asked whether a certificate (issuer Name and serial) is listed.
//!
//! Used by the audits (revoked certificates still ACTIVE in the registry); certfleet does not
//! fetch CRLs, operators upload them.

use std::collections::HashSet;

use time::OffsetDateTime;
use x509_parser::prelude::FromDer;
use x509_parser::revocation_list::CertificateRevocationList;

use crate::algorithm::{self, SignatureAlgorithm};
use crate::pem::pem_decode;
use crate::{Certificate, Error, PublicKey};

/// A parsed CRL.
#[derive(Clone)]
pub struct Crl {
    der: Vec<u8>,
    to_be_signed: Vec<u8>,
    signature: Vec<u8>,
    signature_algorithm: Result<SignatureAlgorithm, algorithm::Refusal>,
    issuer_der: Vec<u8>,
    issuer_string: String,
    this_update: OffsetDateTime,
    next_update: Option<OffsetDateTime>,
    /// Serials in lower-case hex without leading zero bytes (as [`Certificate::serial_hex`]).
    revoked: HashSet<String>,
}

impl Crl {
    /// Parses a CRL given as PEM (`X509 CRL`) or DER.
    pub fn parse(bytes: &[u8]) -> Result<Self, Error> {
        let der = match std::str::from_utf8(bytes) {
            Ok(text) if text.trim_start().starts_with("-----BEGIN") => pem_decode(text, &["X509 CRL"])?,
            _ => bytes.to_vec(),
        };
        Self::from_der(der)
    }

    /// Parses a DER CRL.
    pub fn from_der(der: Vec<u8>) -> Result<Self, Error> {
        let malformed = |reason: String| Error::BadDer { what: "certificate revocation list", reason };
        let (rest, parsed) = CertificateRevocationList::from_der(&der).map_err(|error| malformed(error.to_string()))?;
        if !rest.is_empty() {
            return Err(malformed("trailing bytes after the list".to_owned()));
        }
        let tbs = &parsed.tbs_cert_list;
        let signature_algorithm = if tbs.signature != parsed.signature_algorithm {
            Err(algorithm::Refusal::Mismatch)
        } else {
            algorithm::resolve(&parsed.signature_algorithm)
        };
        let revoked = tbs.revoked_certificates.iter().map(|entry| serial_hex(entry.raw_serial())).collect();
        Ok(Crl {
            to_be_signed: tbs.as_ref().to_vec(),
            signature: parsed.signature_value.data.to_vec(),
            signature_algorithm,
            issuer_der: tbs.issuer.as_raw().to_vec(),
            issuer_string: tbs.issuer.to_string(),
            this_update: tbs.this_update.to_datetime(),
            next_update: tbs.next_update.map(|time| time.to_datetime()),
            revoked,
            der,
        })
    }

    /// The DER encoding.
    pub fn der(&self) -> &[u8] {
        &self.der
    }

    /// The issuer Name, DER.
    pub fn issuer_der(&self) -> &[u8] {
        &self.issuer_der
    }

    /// The issuer Name, as text.
    pub fn issuer_string(&self) -> String {
        self.issuer_string.clone()
    }

    /// When the list was issued.
    pub fn this_update(&self) -> OffsetDateTime {
        self.this_update
    }

    /// When the next list is due, if said.
    pub fn next_update(&self) -> Option<OffsetDateTime> {
        self.next_update
    }

    /// How many certificates it lists.
    pub fn revoked_count(&self) -> usize {
        self.revoked.len()
    }

    /// Whether `certificate` is listed: same issuer Name (byte for byte) and a listed serial.
    pub fn lists(&self, certificate: &Certificate) -> bool {
        certificate.issuer_der() == self.issuer_der.as_slice() && self.revoked.contains(&certificate.serial_hex())
    }

    /// Checks that the list is signed by `issuer_key` (with an accepted algorithm).
    pub fn verify_signature(&self, issuer_key: &PublicKey) -> Result<(), Error> {
        let algorithm = self.signature_algorithm.clone().map_err(Error::from)?;
        algorithm::verify(algorithm, issuer_key, &self.to_be_signed, &self.signature)
    }
}

impl std::fmt::Debug for Crl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Crl")
            .field("issuer", &self.issuer_string)
            .field("this_update", &self.this_update)
            .field("revoked", &self.revoked.len())
            .finish_non_exhaustive()
    }
}

fn serial_hex(serial: &[u8]) -> String {
    let start = serial.iter().position(|&b| b != 0).unwrap_or(serial.len().saturating_sub(1));
    hex::encode(&serial[start..])
}

#[cfg(test)]
mod tests {
    use time::Duration;
    use time::macros::datetime;

    use crate::{GeneratedKeyPair, Issuer, KeyAlgorithm, pem_encode};

    use super::*;

    #[test]
    fn a_crl_lists_what_its_issuer_revoked_and_verifies_with_its_key() {
        let now = datetime!(2026-06-01 00:00 UTC);
        let ca = Issuer::generate_root("crl root", "test", Duration::days(30), KeyAlgorithm::EcdsaP256, now).unwrap();
        let other = Issuer::generate_root("other", "test", Duration::days(30), KeyAlgorithm::EcdsaP256, now).unwrap();
        let leaf = |issuer: &Issuer| {
            let key = GeneratedKeyPair::generate(KeyAlgorithm::EcdsaP256).unwrap();
            issuer.issue_for_key(key.public_key(), "device", Duration::days(1), now).unwrap()
        };
        let (revoked, kept, foreign) = (leaf(&ca), leaf(&ca), leaf(&other));
        let crl = ca.issue_crl(&[&revoked], now).unwrap();
        let reparsed = Crl::parse(pem_encode("X509 CRL", crl.der()).as_bytes()).unwrap();
        assert_eq!(Crl::parse(crl.der()).unwrap().revoked_count(), 1);
        assert!(reparsed.lists(&revoked));
        assert!(!reparsed.lists(&kept));
        assert!(!reparsed.lists(&foreign));
        assert!(reparsed.verify_signature(ca.certificate().public_key()).is_ok());
        assert!(reparsed.verify_signature(other.certificate().public_key()).is_err());
        assert!(Crl::parse(b"not a crl").is_err());
    }
}
