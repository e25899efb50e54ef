//! Certificate signing requests (PKCS#10), checked on the way in.
//!
//! A [`Csr`] exists only if its key passes the key rules and its self-signature verifies, so
//! the issuer never signs a key whose holder has not proven possession.

use std::fmt;

use x509_parser::certification_request::X509CertificationRequest;
use x509_parser::prelude::FromDer;

use crate::certificate::common_name;
use crate::{Error, PublicKey, SignatureAlgorithm, algorithm, check_key_rules, pem};

/// A parsed certification request whose key passed the key rules and whose signature verified.
#[derive(Clone, PartialEq, Eq)]
pub struct Csr {
    der: Vec<u8>,
    subject_der: Vec<u8>,
    subject_string: String,
    subject_common_name: Option<String>,
    public_key: PublicKey,
    signature_algorithm: SignatureAlgorithm,
}

impl Csr {
    /// Parses and checks one "CERTIFICATE REQUEST" (or "NEW CERTIFICATE REQUEST") PEM block.
    pub fn from_pem(text: &str) -> Result<Self, Error> {
        Self::from_der(&pem::pem_decode(text, &["CERTIFICATE REQUEST", "NEW CERTIFICATE REQUEST"])?)
    }

    /// Parses and checks a DER certification request: the key rules first, then the signature.
    pub fn from_der(der: &[u8]) -> Result<Self, Error> {
        let malformed = |reason: String| Error::BadDer { what: "certificate request", reason };
        let (rest, request) =
            X509CertificationRequest::from_der(der).map_err(|error| malformed(error.to_string()))?;
        if !rest.is_empty() {
            return Err(malformed("trailing bytes after the request".to_owned()));
        }
        let info = &request.certification_request_info;
        if info.version.0 != 0 {
            return Err(malformed(format!("version {} is not 1", info.version.0 + 1)));
        }
        let public_key = PublicKey::from_x509(&info.subject_pki)?;
        check_key_rules(&public_key)?;
        let signature_algorithm = algorithm::resolve(&request.signature_algorithm)?;
        algorithm::verify(signature_algorithm, &public_key, info.raw, &request.signature_value.data)?;
        Ok(Csr {
            subject_der: info.subject.as_raw().to_vec(),
            subject_string: info.subject.to_string(),
            subject_common_name: common_name(&info.subject),
            public_key,
            signature_algorithm,
            der: der.to_vec(),
        })
    }

    /// The DER encoding.
    pub fn der(&self) -> &[u8] {
        &self.der
    }

    /// The DER of the subject Name, byte for byte as in the request.
    pub fn subject_der(&self) -> &[u8] {
        &self.subject_der
    }

    /// The subject for people: RFC 4514-like, e.g. "CN=thing-1, O=Acme".
    pub fn subject_string(&self) -> String {
        self.subject_string.clone()
    }

    /// The first common name of the subject, if it is a text string.
    pub fn subject_common_name(&self) -> Option<String> {
        self.subject_common_name.clone()
    }

    /// The requested public key (it passed the key rules).
    pub fn public_key(&self) -> &PublicKey {
        &self.public_key
    }

    /// The algorithm of the request's self-signature.
    pub fn signature_algorithm(&self) -> SignatureAlgorithm {
        self.signature_algorithm
    }
}

impl fmt::Debug for Csr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Csr")
            .field("subject", &self.subject_string)
            .field("key", &self.public_key.kind())
            .field("signature_algorithm", &self.signature_algorithm)
            .finish_non_exhaustive()
    }
}
