//! Parsed X.509 certificates.
//!
//! A [`Certificate`] owns its DER and the fields certfleet uses, parsed once into plain values,
//! so it has no lifetime and can be shared across threads and stored in caches.

use std::fmt;

use aws_lc_rs::digest;
use time::OffsetDateTime;
use x509_parser::certificate::X509Certificate;
use x509_parser::extensions::ParsedExtension;
use x509_parser::prelude::FromDer;
use x509_parser::x509::X509Name;

use crate::algorithm::{self, Refusal};
use crate::{CertificateId, Error, PublicKey, SignatureAlgorithm, pem};

/// A certificate's subjectAltName extension as written: its criticality and its value (the DER
/// of the GeneralNames), to carry over to another certificate unchanged.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SubjectAltNames {
    pub critical: bool,
    pub value_der: Vec<u8>,
}

/// A parsed X.509 certificate.
#[derive(Clone)]
pub struct Certificate {
    der: Vec<u8>,
    id: CertificateId,
    to_be_signed: Vec<u8>,
    signature: Vec<u8>,
    signature_algorithm: Result<SignatureAlgorithm, Refusal>,
    subject_der: Vec<u8>,
    issuer_der: Vec<u8>,
    subject_string: String,
    issuer_string: String,
    subject_common_name: Option<String>,
    serial: Vec<u8>,
    not_before: OffsetDateTime,
    not_after: OffsetDateTime,
    is_ca: bool,
    key_usage_cert_sign: Option<bool>,
    subject_key_id: Option<Vec<u8>>,
    authority_key_id: Option<Vec<u8>>,
    public_key: PublicKey,
    dns_names: Vec<String>,
    subject_alt_names: Option<SubjectAltNames>,
}

/// The SubjectPublicKeyInfo (DER) of a certificate, and nothing else checked: what a TLS
/// handshake signature is verified with. Any X.509 version (1, 2 or 3) and any extensions;
/// trailing bytes are refused as [`Certificate::from_der`] refuses them.
pub fn subject_public_key_info(der: &[u8]) -> Result<&[u8], Error> {
    let malformed = |reason: String| Error::BadDer { what: "certificate", reason };
    let (rest, parsed) = X509Certificate::from_der(der).map_err(|error| malformed(error.to_string()))?;
    if !rest.is_empty() {
        return Err(malformed("trailing bytes after the certificate".to_owned()));
    }
    Ok(parsed.tbs_certificate.subject_pki.raw)
}

impl Certificate {
    /// Parses a text holding exactly one "CERTIFICATE" PEM block (and optional whitespace).
    pub fn from_pem(text: &str) -> Result<Self, Error> {
        Self::from_der(pem::pem_decode(text, &["CERTIFICATE"])?)
    }

    /// Parses a DER certificate; nothing may follow it.
    pub fn from_der(der: Vec<u8>) -> Result<Self, Error> {
        let malformed = |reason: String| Error::BadDer { what: "certificate", reason };
        let (rest, parsed) = X509Certificate::from_der(&der).map_err(|error| malformed(error.to_string()))?;
        if !rest.is_empty() {
            return Err(malformed("trailing bytes after the certificate".to_owned()));
        }
        let tbs = &parsed.tbs_certificate;
        let signature_algorithm = if tbs.signature != parsed.signature_algorithm {
            Err(Refusal::Mismatch)
        } else {
            algorithm::resolve(&parsed.signature_algorithm)
        };
        let is_ca = tbs
            .basic_constraints()
            .map_err(|error| malformed(format!("basicConstraints: {error}")))?
            .is_some_and(|extension| extension.value.ca);
        let key_usage_cert_sign = tbs
            .key_usage()
            .map_err(|error| malformed(format!("keyUsage: {error}")))?
            .map(|extension| extension.value.key_cert_sign());
        let mut subject_key_id = None;
        let mut authority_key_id = None;
        let mut dns_names = Vec::new();
        let mut subject_alt_names = None;
        for extension in tbs.extensions() {
            match extension.parsed_extension() {
                ParsedExtension::SubjectKeyIdentifier(key_id) => {
                    subject_key_id = Some(key_id.0.to_vec());
                }
                ParsedExtension::AuthorityKeyIdentifier(aki) => {
                    authority_key_id = aki.key_identifier.as_ref().map(|key_id| key_id.0.to_vec());
                }
                ParsedExtension::SubjectAlternativeName(names) => {
                    subject_alt_names =
                        Some(SubjectAltNames { critical: extension.critical, value_der: extension.value.to_vec() });
                    dns_names.extend(names.general_names.iter().filter_map(|name| match name {
                        x509_parser::extensions::GeneralName::DNSName(dns) => Some((*dns).to_owned()),
                        _ => None,
                    }));
                }
                _ => {}
            }
        }
        Ok(Certificate {
            id: CertificateId::of_der(&der),
            to_be_signed: tbs.as_ref().to_vec(),
            signature: parsed.signature_value.data.to_vec(),
            signature_algorithm,
            subject_der: tbs.subject.as_raw().to_vec(),
            issuer_der: tbs.issuer.as_raw().to_vec(),
            subject_string: tbs.subject.to_string(),
            issuer_string: tbs.issuer.to_string(),
            subject_common_name: common_name(&tbs.subject),
            serial: tbs.raw_serial().to_vec(),
            not_before: tbs.validity.not_before.to_datetime(),
            not_after: tbs.validity.not_after.to_datetime(),
            is_ca,
            key_usage_cert_sign,
            subject_key_id,
            authority_key_id,
            public_key: PublicKey::from_x509(&tbs.subject_pki)?,
            dns_names,
            subject_alt_names,
            der,
        })
    }

    /// The subjectAltName extension as written, if present.
    pub fn subject_alt_names(&self) -> Option<&SubjectAltNames> {
        self.subject_alt_names.as_ref()
    }

    /// The DNS names of the subject alternative name extension, in order.
    pub fn dns_names(&self) -> &[String] {
        &self.dns_names
    }

    /// Whether the certificate names `host` (a DNS name): an exact SAN, or a `*.` wildcard SAN
    /// covering one leftmost label; the common name only when there are no DNS SANs.
    pub fn names_host(&self, host: &str) -> bool {
        let host = host.trim_end_matches('.').to_ascii_lowercase();
        let matches = |name: &str| {
            let name = name.to_ascii_lowercase();
            match name.strip_prefix("*.") {
                Some(parent) => host.split_once('.').is_some_and(|(label, rest)| !label.is_empty() && rest == parent),
                None => name == host,
            }
        };
        if self.dns_names.is_empty() {
            self.subject_common_name.as_deref().is_some_and(matches)
        } else {
            self.dns_names.iter().any(|name| matches(name))
        }
    }

    /// The certificate id (SHA-256 of the DER).
    pub fn id(&self) -> &CertificateId {
        &self.id
    }

    /// The DER encoding.
    pub fn der(&self) -> &[u8] {
        &self.der
    }

    /// The canonical PEM: one "CERTIFICATE" block, 64 columns, trailing newline.
    pub fn to_pem(&self) -> String {
        pem::pem_encode("CERTIFICATE", &self.der)
    }

    /// The DER of the subject Name, byte for byte as in the certificate.
    pub fn subject_der(&self) -> &[u8] {
        &self.subject_der
    }

    /// The DER of the issuer Name, byte for byte as in the certificate.
    pub fn issuer_der(&self) -> &[u8] {
        &self.issuer_der
    }

    /// Lowercase hex SHA-256 of the subject Name DER: an index key to match issuers to CAs.
    pub fn subject_fingerprint(&self) -> String {
        hex::encode(digest::digest(&digest::SHA256, &self.subject_der))
    }

    /// Lowercase hex SHA-256 of the issuer Name DER: equal to the issuing CA's
    /// [`subject_fingerprint`](Self::subject_fingerprint).
    pub fn issuer_fingerprint(&self) -> String {
        hex::encode(digest::digest(&digest::SHA256, &self.issuer_der))
    }

    /// The subject for people: RFC 4514-like, e.g. "CN=foo, O=bar".
    pub fn subject_string(&self) -> String {
        self.subject_string.clone()
    }

    /// The issuer for people: RFC 4514-like, e.g. "CN=Root CA, O=bar".
    pub fn issuer_string(&self) -> String {
        self.issuer_string.clone()
    }

    /// The first common name of the subject, if it is a text string.
    pub fn subject_common_name(&self) -> Option<String> {
        self.subject_common_name.clone()
    }

    /// The serial number as lowercase hex without colons or leading zero bytes.
    pub fn serial_hex(&self) -> String {
        let start = self.serial.iter().position(|&b| b != 0).unwrap_or(self.serial.len().saturating_sub(1));
        hex::encode(&self.serial[start..])
    }

    /// The serial number as a decimal integer, as AWS IoT writes it in policy variables
    /// (`iot:Certificate.SerialNumber`).
    pub fn serial_decimal(&self) -> String {
        decimal(&self.serial)
    }

    /// The attributes of the subject Name in certificate order: each attribute's OID in dotted
    /// form and its value as text (attributes whose value is not a string are left out).
    pub fn subject_attributes(&self) -> Vec<(String, String)> {
        name_attributes(&self.subject_der)
    }

    /// The attributes of the issuer Name, like [`subject_attributes`](Self::subject_attributes).
    pub fn issuer_attributes(&self) -> Vec<(String, String)> {
        name_attributes(&self.issuer_der)
    }

    /// The start of the validity period.
    pub fn not_before(&self) -> OffsetDateTime {
        self.not_before
    }

    /// The end of the validity period.
    pub fn not_after(&self) -> OffsetDateTime {
        self.not_after
    }

    /// Whether `now` lies within the validity period (both ends included, as in RFC 5280).
    pub fn is_valid_at(&self, now: OffsetDateTime) -> bool {
        self.not_before <= now && now <= self.not_after
    }

    /// Whether basicConstraints says CA:TRUE.
    pub fn is_ca(&self) -> bool {
        self.is_ca
    }

    /// Whether keyUsage allows keyCertSign; `None` when the certificate has no keyUsage.
    pub fn key_usage_allows_cert_sign(&self) -> Option<bool> {
        self.key_usage_cert_sign
    }

    /// The subjectKeyIdentifier, if present.
    pub fn subject_key_id(&self) -> Option<&[u8]> {
        self.subject_key_id.as_deref()
    }

    /// The keyIdentifier of the authorityKeyIdentifier, if present.
    pub fn authority_key_id(&self) -> Option<&[u8]> {
        self.authority_key_id.as_deref()
    }

    /// The subject public key.
    pub fn public_key(&self) -> &PublicKey {
        &self.public_key
    }

    /// The signature algorithm, or why certfleet does not verify it.
    pub fn signature_algorithm(&self) -> Result<SignatureAlgorithm, Error> {
        self.signature_algorithm.clone().map_err(Error::from)
    }

    /// Whether subject and issuer are the same Name (byte for byte).
    pub fn is_self_issued(&self) -> bool {
        self.subject_der == self.issuer_der
    }
}

impl PartialEq for Certificate {
    fn eq(&self, other: &Self) -> bool {
        self.der == other.der
    }
}

impl Eq for Certificate {}

impl fmt::Debug for Certificate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Certificate")
            .field("id", &self.id.as_str())
            .field("subject", &self.subject_string)
            .field("issuer", &self.issuer_string)
            .field("not_before", &self.not_before)
            .field("not_after", &self.not_after)
            .finish_non_exhaustive()
    }
}

/// The (OID, text value) pairs of a DER Name; empty if it does not parse.
fn name_attributes(der: &[u8]) -> Vec<(String, String)> {
    let Ok((_, name)) = X509Name::from_der(der) else {
        return Vec::new();
    };
    name.iter_attributes()
        .filter_map(|attribute| {
            let value = attribute.as_str().ok()?.to_owned();
            Some((attribute.attr_type().to_id_string(), value))
        })
        .collect()
}

/// A big-endian unsigned integer in decimal.
fn decimal(bytes: &[u8]) -> String {
    let mut digits: Vec<u8> = vec![0];
    for &byte in bytes {
        let mut carry = u32::from(byte);
        for digit in digits.iter_mut() {
            let value = u32::from(*digit) * 256 + carry;
            *digit = (value % 10) as u8;
            carry = value / 10;
        }
        while carry > 0 {
            digits.push((carry % 10) as u8);
            carry /= 10;
        }
    }
    while digits.len() > 1 && digits.last() == Some(&0) {
        digits.pop();
    }
    digits.iter().rev().map(|digit| char::from(b'0' + digit)).collect()
}

/// The first common name, when it is a string type (UTF8String, PrintableString, IA5String,
/// or BMPString).
pub(crate) fn common_name(name: &X509Name<'_>) -> Option<String> {
    let attribute = name.iter_common_name().next()?;
    if let Ok(text) = attribute.as_str() {
        return Some(text.to_owned());
    }
    let value = attribute.attr_value();
    if value.tag() == x509_parser::der_parser::asn1_rs::Tag::BmpString {
        let units: Vec<u16> = value.data.chunks_exact(2).map(|pair| u16::from_be_bytes([pair[0], pair[1]])).collect();
        return String::from_utf16(&units).ok();
    }
    None
}

/// Checks that `certificate` is signed by `issuer_key`: its signature algorithm is accepted,
/// `issuer_key` passes the key rules and fits the algorithm, and the signature verifies.
pub fn verify_signature(certificate: &Certificate, issuer_key: &PublicKey) -> Result<(), Error> {
    let algorithm = certificate.signature_algorithm()?;
    algorithm::verify(algorithm, issuer_key, &certificate.to_be_signed, &certificate.signature)
}

#[cfg(test)]
mod tests {
    use aws_lc_rs::signature as aws;
    use time::Duration;

    use super::*;
    use crate::test_support::*;
    use crate::{GeneratedKeyPair, Issuer, KeyAlgorithm};

    fn check_from_pem(text: &str, expected: Result<&str, &str>) {
        match (Certificate::from_pem(text), expected) {
            (Ok(certificate), Ok(subject)) => assert_eq!(certificate.subject_string(), subject),
            (Err(error), Err(prefix)) => {
                let message = error.to_string();
                assert!(message.starts_with(prefix), "{message:?} does not start with {prefix:?}");
            }
            (got, want) => panic!("got {got:?}, want {want:?}"),
        }
    }

    #[test]
    fn serial_numbers_in_decimal() {
        let check = |bytes: &[u8], expected: &str| assert_eq!(decimal(bytes), expected);
        check(&[], "0");
        check(&[0], "0");
        check(&[0x01], "1");
        check(&[0x00, 0xff], "255");
        check(&[0x01, 0x00], "256");
        check(&[0x92, 0x12, 0x85, 0xcb, 0xb7, 0xa5, 0xe0, 0x86], "10525622389124227206");
    }

    fn root_pem() -> String {
        p256_ca().certificate().to_pem()
    }

    #[test]
    fn pem_good() {
        check_from_pem(&root_pem(), Ok("CN=Test Root, O=certfleet"));
    }

    #[test]
    fn pem_with_surrounding_whitespace() {
        check_from_pem(&format!("\n\n  {}  \n", root_pem()), Ok("CN=Test Root, O=certfleet"));
    }

    #[test]
    fn pem_garbage() {
        check_from_pem("MIIB garbage", Err("not pem: no -----BEGIN line"));
    }

    #[test]
    fn pem_wrong_label() {
        let text = pem::pem_encode("CERTIFICATE REQUEST", p256_ca().certificate().der());
        check_from_pem(&text, Err(r#"pem block is labelled "CERTIFICATE REQUEST": expected "CERTIFICATE""#));
    }

    #[test]
    fn pem_two_blocks() {
        check_from_pem(
            &format!("{}{}", root_pem(), rsa_ca().certificate().to_pem()),
            Err("expected exactly one pem block, found more"),
        );
    }

    #[test]
    fn pem_text_before() {
        check_from_pem(&format!("subject=CN=Test Root\n{}", root_pem()), Err("not pem: text before the pem block"));
    }

    #[test]
    fn pem_truncated_base64() {
        let pem = root_pem();
        let end = pem.find("\n-----END").expect("end line");
        check_from_pem(&format!("{}{}", &pem[..end - 1], &pem[end..]), Err("pem body is not valid base64"));
    }

    #[test]
    fn pem_truncated_der() {
        let der = p256_ca().certificate().der();
        check_from_pem(&pem::pem_encode("CERTIFICATE", &der[..der.len() - 8]), Err("malformed certificate: "));
    }

    #[test]
    fn pem_der_garbage() {
        check_from_pem(&pem::pem_encode("CERTIFICATE", b"\x30\x03\x02\x01\x01"), Err("malformed certificate: "));
    }

    #[test]
    fn der_with_trailing_bytes() {
        let mut der = p256_ca().certificate().der().to_vec();
        der.push(0);
        let error = Certificate::from_der(der).expect_err("trailing byte");
        assert_eq!(error.to_string(), "malformed certificate: trailing bytes after the certificate");
    }

    #[test]
    fn root_fields() {
        let root = p256_ca().certificate();
        let fields =
            (root.subject_common_name(), root.is_ca(), root.key_usage_allows_cert_sign(), root.is_self_issued());
        assert_eq!(fields, (Some("Test Root".to_owned()), true, Some(true), true));
        assert_eq!((root.not_before(), root.not_after()), (NOW, NOW + CA_VALIDITY));
        assert_eq!((root.issuer_string(), root.issuer_der()), (root.subject_string(), root.subject_der()));
        assert_eq!(root.issuer_fingerprint(), root.subject_fingerprint());
    }

    #[test]
    fn id_is_sha256_of_der() {
        let root = p256_ca().certificate();
        assert_eq!(root.id(), &CertificateId::of_der(root.der()));
    }

    #[test]
    fn pem_round_trips() {
        let root = p256_ca().certificate();
        assert_eq!(&Certificate::from_pem(&root.to_pem()).expect("parses"), root);
    }

    #[test]
    fn serial_hex_is_16_bytes_without_colons() {
        let serial = p256_ca().certificate().serial_hex();
        assert_eq!(serial.len(), 32);
        assert!(serial.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)));
    }

    fn check_valid_at(at: OffsetDateTime, expected: bool) {
        assert_eq!(p256_ca().certificate().is_valid_at(at), expected, "at {at}");
    }

    #[test]
    fn valid_at_not_before() {
        check_valid_at(NOW, true);
    }

    #[test]
    fn not_valid_a_second_before() {
        check_valid_at(NOW - Duration::SECOND, false);
    }

    #[test]
    fn valid_at_not_after() {
        check_valid_at(NOW + CA_VALIDITY, true);
    }

    #[test]
    fn not_valid_a_second_after() {
        check_valid_at(NOW + CA_VALIDITY + Duration::SECOND, false);
    }

    /// A device certificate from `ca`, re-signed with the CA key as `algorithm` by `sign`, then
    /// verified with the CA's public key.
    fn check_signature(
        ca: &Issuer,
        algorithm: Vec<u8>,
        sign: impl FnOnce(&[u8], &[u8]) -> Vec<u8>,
        expected: Result<SignatureAlgorithm, &str>,
    ) {
        let device = GeneratedKeyPair::generate(KeyAlgorithm::EcdsaP256).expect("keygen");
        let issued = ca.issue_for_key(device.public_key(), "device-1", Duration::days(30), NOW).expect("issues");
        let ca_key = ca.private_key_pkcs8_der();
        let der = resign(issued.der(), &algorithm, |message| sign(&ca_key, message));
        let certificate = Certificate::from_der(der).expect("re-signed certificate parses");
        let got = certificate
            .signature_algorithm()
            .and_then(|algorithm| verify_signature(&certificate, ca.certificate().public_key()).map(|()| algorithm));
        assert_eq!(got.map_err(|error| error.to_string()), expected.map_err(str::to_owned));
    }

    fn rsa(padding: &'static dyn aws::RsaEncoding) -> impl FnOnce(&[u8], &[u8]) -> Vec<u8> {
        move |key, message| rsa_sign(key, padding, message)
    }

    fn ecdsa(algorithm: &'static aws::EcdsaSigningAlgorithm) -> impl FnOnce(&[u8], &[u8]) -> Vec<u8> {
        move |key, message| ecdsa_sign(key, algorithm, message)
    }

    fn garbage(_key: &[u8], _message: &[u8]) -> Vec<u8> {
        vec![0x5a; 64]
    }

    #[test]
    fn rsa_pkcs1_sha256() {
        check_signature(
            rsa_ca(),
            algorithm_identifier(SHA256_WITH_RSA, Some(NULL)),
            rsa(&aws::RSA_PKCS1_SHA256),
            Ok(SignatureAlgorithm::RsaPkcs1Sha256),
        );
    }

    #[test]
    fn rsa_pkcs1_sha256_without_null_parameters() {
        check_signature(
            rsa_ca(),
            algorithm_identifier(SHA256_WITH_RSA, None),
            rsa(&aws::RSA_PKCS1_SHA256),
            Ok(SignatureAlgorithm::RsaPkcs1Sha256),
        );
    }

    #[test]
    fn rsa_pkcs1_sha384() {
        check_signature(
            rsa_ca(),
            algorithm_identifier(SHA384_WITH_RSA, Some(NULL)),
            rsa(&aws::RSA_PKCS1_SHA384),
            Ok(SignatureAlgorithm::RsaPkcs1Sha384),
        );
    }

    #[test]
    fn rsa_pkcs1_sha512() {
        check_signature(
            rsa_ca(),
            algorithm_identifier(SHA512_WITH_RSA, Some(NULL)),
            rsa(&aws::RSA_PKCS1_SHA512),
            Ok(SignatureAlgorithm::RsaPkcs1Sha512),
        );
    }

    #[test]
    fn rsa_pss_sha256() {
        check_signature(
            rsa_ca(),
            pss_identifier(SHA256, SHA256, 32),
            rsa(&aws::RSA_PSS_SHA256),
            Ok(SignatureAlgorithm::RsaPssSha256),
        );
    }

    #[test]
    fn rsa_pss_sha384() {
        check_signature(
            rsa_ca(),
            pss_identifier(SHA384, SHA384, 48),
            rsa(&aws::RSA_PSS_SHA384),
            Ok(SignatureAlgorithm::RsaPssSha384),
        );
    }

    #[test]
    fn rsa_pss_sha512() {
        check_signature(
            rsa_ca(),
            pss_identifier(SHA512, SHA512, 64),
            rsa(&aws::RSA_PSS_SHA512),
            Ok(SignatureAlgorithm::RsaPssSha512),
        );
    }

    #[test]
    fn ecdsa_p256_sha256() {
        check_signature(
            p256_ca(),
            algorithm_identifier(ECDSA_SHA256, None),
            ecdsa(&aws::ECDSA_P256_SHA256_ASN1_SIGNING),
            Ok(SignatureAlgorithm::EcdsaSha256),
        );
    }

    #[test]
    fn ecdsa_p384_sha384() {
        check_signature(
            p384_ca(),
            algorithm_identifier(ECDSA_SHA384, None),
            ecdsa(&aws::ECDSA_P384_SHA384_ASN1_SIGNING),
            Ok(SignatureAlgorithm::EcdsaSha384),
        );
    }

    #[test]
    fn ecdsa_p521_sha512() {
        check_signature(
            p521_ca(),
            algorithm_identifier(ECDSA_SHA512, None),
            ecdsa(&aws::ECDSA_P521_SHA512_ASN1_SIGNING),
            Ok(SignatureAlgorithm::EcdsaSha512),
        );
    }

    #[test]
    fn ecdsa_p521_sha256() {
        check_signature(
            p521_ca(),
            algorithm_identifier(ECDSA_SHA256, None),
            ecdsa(&aws::ECDSA_P521_SHA256_ASN1_SIGNING),
            Ok(SignatureAlgorithm::EcdsaSha256),
        );
    }

    #[test]
    fn dsa_with_sha256_refused() {
        check_signature(
            rsa_ca(),
            algorithm_identifier(DSA_SHA256, None),
            garbage,
            Err("dsa-with-sha256 signatures are not supported"),
        );
    }

    #[test]
    fn sha1_with_rsa_refused() {
        check_signature(
            rsa_ca(),
            algorithm_identifier(SHA1_WITH_RSA, Some(NULL)),
            garbage,
            Err("sha1WithRSAEncryption signatures are not accepted: the hash is broken"),
        );
    }

    #[test]
    fn md5_with_rsa_refused() {
        check_signature(
            rsa_ca(),
            algorithm_identifier(MD5_WITH_RSA, Some(NULL)),
            garbage,
            Err("md5WithRSAEncryption signatures are not accepted: the hash is broken"),
        );
    }

    #[test]
    fn ecdsa_sha1_refused() {
        check_signature(
            p256_ca(),
            algorithm_identifier(ECDSA_SHA1, None),
            garbage,
            Err("ecdsa-with-SHA1 signatures are not accepted: the hash is broken"),
        );
    }

    #[test]
    fn pss_without_parameters_means_sha1() {
        check_signature(
            rsa_ca(),
            algorithm_identifier(RSASSA_PSS, None),
            garbage,
            Err("rsassa-pss-sha1 signatures are not accepted: the hash is broken"),
        );
    }

    #[test]
    fn pss_sha1_refused() {
        check_signature(
            rsa_ca(),
            pss_identifier(SHA1, SHA1, 20),
            garbage,
            Err("rsassa-pss-sha1 signatures are not accepted: the hash is broken"),
        );
    }

    #[test]
    fn pss_short_salt_refused() {
        check_signature(
            rsa_ca(),
            pss_identifier(SHA256, SHA256, 20),
            garbage,
            Err("rsassa-pss parameters are not accepted: salt length 20 differs from the hash length 32"),
        );
    }

    #[test]
    fn pss_mgf1_with_other_hash_refused() {
        check_signature(
            rsa_ca(),
            pss_identifier(SHA256, SHA1, 32),
            garbage,
            Err("rsassa-pss parameters are not accepted: mgf1 hash differs from the signature hash"),
        );
    }

    #[test]
    fn pss_malformed_parameters_refused() {
        check_signature(
            rsa_ca(),
            algorithm_identifier(RSASSA_PSS, Some(NULL)),
            garbage,
            Err("rsassa-pss parameters are not accepted: malformed parameters"),
        );
    }

    #[test]
    fn ed25519_signature_refused() {
        check_signature(
            p256_ca(),
            algorithm_identifier(ED25519, None),
            garbage,
            Err("signature algorithm ed25519 is not supported"),
        );
    }

    #[test]
    fn unknown_signature_algorithm_refused_by_oid() {
        check_signature(
            p256_ca(),
            algorithm_identifier(&[1, 2, 3, 4], None),
            garbage,
            Err("signature algorithm 1.2.3.4 is not supported"),
        );
    }

    #[test]
    fn pss_signature_labelled_pkcs1_fails() {
        check_signature(
            rsa_ca(),
            algorithm_identifier(SHA256_WITH_RSA, Some(NULL)),
            rsa(&aws::RSA_PSS_SHA256),
            Err("the signature does not verify"),
        );
    }

    #[test]
    fn ecdsa_hash_mislabelled_fails() {
        check_signature(
            p384_ca(),
            algorithm_identifier(ECDSA_SHA256, None),
            ecdsa(&aws::ECDSA_P384_SHA384_ASN1_SIGNING),
            Err("the signature does not verify"),
        );
    }

    #[test]
    fn rsa_signature_for_an_ec_ca_key() {
        check_signature(
            p256_ca(),
            algorithm_identifier(SHA256_WITH_RSA, Some(NULL)),
            garbage,
            Err("sha256WithRSAEncryption signatures cannot be verified with an ec P-256 key"),
        );
    }

    fn issued_by_p256() -> Certificate {
        let device = GeneratedKeyPair::generate(KeyAlgorithm::EcdsaP256).expect("keygen");
        p256_ca().issue_for_key(device.public_key(), "device-1", Duration::days(30), NOW).expect("issues")
    }

    #[test]
    fn tampered_signature_fails() {
        let mut der = issued_by_p256().der().to_vec();
        let last = der.len() - 1;
        der[last] ^= 1;
        let certificate = Certificate::from_der(der).expect("still parses");
        let error = verify_signature(&certificate, p256_ca().certificate().public_key()).expect_err("tampered");
        assert_eq!(error.to_string(), "the signature does not verify");
    }

    #[test]
    fn tampered_validity_fails() {
        let issued = issued_by_p256();
        let at = issued.der().windows(2).position(|pair| pair == [0x17, 0x0d]).expect("a UTCTime");
        let mut der = issued.der().to_vec();
        der[at + 3] = if der[at + 3] == b'9' { b'8' } else { b'9' };
        let certificate = Certificate::from_der(der).expect("still parses");
        let error = verify_signature(&certificate, p256_ca().certificate().public_key()).expect_err("tampered");
        assert_eq!(error.to_string(), "the signature does not verify");
    }

    #[test]
    fn issuer_key_under_the_key_rules() {
        let weak_key = PublicKey::from_spki_der(&fake_rsa_spki(1024)).expect("parses");
        let error = verify_signature(rsa_ca().certificate(), &weak_key).expect_err("weak key");
        assert_eq!(error.to_string(), "rsa key of 1024 bits is too small: at least 2048 bits are required");
    }

    #[test]
    fn inner_and_outer_algorithms_differ() {
        let issued = issued_by_p256();
        let inner = algorithm_identifier(ECDSA_SHA384, None);
        let outer = algorithm_identifier(ECDSA_SHA256, None);
        let ca_key = p256_ca().private_key_pkcs8_der();
        let der = rebuild(
            issued.der(),
            |fields| fields[2] = inner,
            &outer,
            |message| ecdsa_sign(&ca_key, &aws::ECDSA_P256_SHA256_ASN1_SIGNING, message),
        );
        let certificate = Certificate::from_der(der).expect("parses");
        let error = verify_signature(&certificate, p256_ca().certificate().public_key()).expect_err("mismatch");
        assert_eq!(error.to_string(), "the signature algorithm of the signed part differs from the outer one");
    }

    #[test]
    fn debug_is_short() {
        let root = p256_ca().certificate();
        let debug = format!("{root:?}");
        assert!(
            debug.starts_with(&format!(
                "Certificate {{ id: {:?}, subject: \"CN=Test Root, O=certfleet\"",
                root.id().as_str()
            )),
            "{debug}"
        );
    }
}
