//! Issuing: a CA certificate with its private key, signing device and server certificates.
//!
//! rcgen writes the to-be-signed part (serial, validity, extensions). The issuer and subject
//! names and the subject key are then spliced in byte for byte (the CA's subject DER, the CSR's
//! subject DER and SubjectPublicKeyInfo), because rcgen can only write names it can model, and
//! a device certificate's issuer must equal its CA's subject exactly for chains to build. The
//! result is signed once, with the CA key, through rcgen's key pair.

use std::fmt;
use std::net::IpAddr;

use rcgen::string::Ia5String;
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyIdMethod, KeyPair, KeyUsagePurpose, PublicKeyData, SanType, SerialNumber, SigningKey,
};
use time::{Duration, OffsetDateTime, UtcOffset};
use zeroize::Zeroizing;

use crate::{Certificate, Csr, Error, GeneratedKeyPair, KeyAlgorithm, KeyKind, PublicKey, check_key_rules, der};

/// The longest common name RFC 5280 allows (ub-common-name).
const MAX_COMMON_NAME: usize = 64;

/// A CA certificate with its private key, able to sign certificates.
///
/// Its `Debug` shows the certificate and the key type, never the key.
pub struct Issuer {
    certificate: Certificate,
    key_pair: KeyPair,
    pkcs8: Zeroizing<Vec<u8>>,
    key_id: Vec<u8>,
}

impl fmt::Debug for Issuer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Issuer")
            .field("certificate", &self.certificate)
            .field("key", self.certificate.public_key().kind())
            .finish_non_exhaustive()
    }
}

impl Issuer {
    /// Generates a self-signed root CA: basicConstraints CA:TRUE and keyUsage keyCertSign,
    /// cRLSign, digitalSignature (both critical), a subjectKeyIdentifier, a random serial, valid
    /// from `now` (to the second) for `validity`. An empty `organization` is left out.
    pub fn generate_root(
        common_name: &str,
        organization: &str,
        validity: Duration,
        key: KeyAlgorithm,
        now: OffsetDateTime,
    ) -> Result<Self, Error> {
        let generated = GeneratedKeyPair::generate(key)?;
        let key_pair = load_key_pair(generated.pkcs8_der())?;
        let key_id = generated.public_key().key_identifier();
        let mut params = base_params(validity, now)?;
        params.distinguished_name = name(common_name, organization)?;
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
        ];
        params.key_identifier_method = KeyIdMethod::PreSpecified(key_id.clone());
        let built = params.self_signed(&key_pair).map_err(Error::Build)?;
        Ok(Issuer {
            certificate: Certificate::from_der(built.der().to_vec())?,
            key_pair,
            pkcs8: Zeroizing::new(generated.pkcs8_der().to_vec()),
            key_id,
        })
    }

    /// Pairs a CA certificate with its PKCS#8 private key, checking that they belong together
    /// and that the key passes the key rules.
    ///
    /// This does not check that the certificate is a CA: see [`check_ca_certificate`](crate::check_ca_certificate).
    pub fn from_parts(certificate: Certificate, private_key_pkcs8_der: &[u8]) -> Result<Self, Error> {
        check_key_rules(certificate.public_key())?;
        if !is_pkcs8(private_key_pkcs8_der) {
            return Err(Error::NotPkcs8);
        }
        let key_pair = load_key_pair(private_key_pkcs8_der)?;
        if key_pair.der_bytes() != certificate.public_key().key_bits() {
            return Err(Error::KeyMismatch);
        }
        let key_id = match certificate.subject_key_id() {
            Some(key_id) => key_id.to_vec(),
            None => certificate.public_key().key_identifier(),
        };
        Ok(Issuer { certificate, key_pair, pkcs8: Zeroizing::new(private_key_pkcs8_der.to_vec()), key_id })
    }

    /// The CA certificate.
    pub fn certificate(&self) -> &Certificate {
        &self.certificate
    }

    /// The CA private key as PKCS#8 DER.
    pub fn private_key_pkcs8_der(&self) -> Zeroizing<Vec<u8>> {
        self.pkcs8.clone()
    }

    /// A device certificate for a checked CSR: the CSR's subject (byte for byte) and key, a
    /// random serial, valid from `now` (to the second) for `validity`, issuer = this CA's
    /// subject, subjectKeyIdentifier (SHA-1 of the key, RFC 5280 method 1) and
    /// authorityKeyIdentifier (this CA's), keyUsage digitalSignature (and keyEncipherment for
    /// RSA keys, critical), extendedKeyUsage clientAuth, basicConstraints CA:FALSE.
    ///
    /// Extensions requested in the CSR are ignored. The signature is ECDSA-SHA256 for a P-256
    /// CA key, ECDSA-SHA384 for P-384, ECDSA-SHA512 for P-521 and RSA-PKCS1-SHA256 for RSA.
    pub fn issue_from_csr(&self, csr: &Csr, validity: Duration, now: OffsetDateTime) -> Result<Certificate, Error> {
        let params = device_params(csr.public_key(), validity, now)?;
        self.sign(&params, Some(csr.subject_der()), csr.public_key())
    }

    /// A device certificate like [`issue_from_csr`](Self::issue_from_csr)'s for a bare public
    /// key, with subject "CN=`common_name`" (AWS IoT uses "AWS IoT Certificate").
    pub fn issue_for_key(
        &self,
        key: &PublicKey,
        common_name: &str,
        validity: Duration,
        now: OffsetDateTime,
    ) -> Result<Certificate, Error> {
        let mut params = device_params(key, validity, now)?;
        params.distinguished_name = name(common_name, "")?;
        self.sign(&params, None, key)
    }

    /// A TLS server certificate with a new key: subject "CN=`common_name`", the given subject
    /// alternative names (IP addresses where they parse as one, DNS names otherwise),
    /// extendedKeyUsage serverAuth, keyUsage digitalSignature, basicConstraints CA:FALSE, key
    /// identifiers as for device certificates. Returns the certificate and the PKCS#8 key.
    pub fn issue_server_certificate(
        &self,
        common_name: &str,
        subject_alt_names: &[String],
        validity: Duration,
        key: KeyAlgorithm,
        now: OffsetDateTime,
    ) -> Result<(Certificate, Zeroizing<Vec<u8>>), Error> {
        let subject_alt_names = subject_alt_names
            .iter()
            .map(|text| subject_alt_name(text))
            .collect::<Result<Vec<_>, _>>()?;
        let generated = GeneratedKeyPair::generate(key)?;
        let mut params = base_params(validity, now)?;
        params.distinguished_name = name(common_name, "")?;
        params.subject_alt_names = subject_alt_names;
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        params.use_authority_key_identifier_extension = true;
        params.key_identifier_method = KeyIdMethod::PreSpecified(generated.public_key().key_identifier());
        let certificate = self.sign(&params, None, generated.public_key())?;
        Ok((certificate, Zeroizing::new(generated.pkcs8_der().to_vec())))
    }

    /// Builds the certificate with rcgen, splices in the exact names and key, and signs it.
    fn sign(&self, params: &CertificateParams, subject_der: Option<&[u8]>, key: &PublicKey) -> Result<Certificate, Error> {
        let mut issuer_params = CertificateParams::default();
        issuer_params.key_identifier_method = KeyIdMethod::PreSpecified(self.key_id.clone());
        let issuer = rcgen::Issuer::new(issuer_params, Unsigned(&self.key_pair));
        // The subject key written by rcgen is a placeholder: the real one is spliced in below.
        let draft = params.signed_by(&Unsigned(&self.key_pair), &issuer).map_err(Error::Build)?;
        let internal = |error: der::DerError| Error::BadDer {
            what: "certificate built by rcgen",
            reason: error.reason().to_owned(),
        };
        let signed = der::split_signed(draft.der()).map_err(internal)?;
        let fields = der::read_all(signed.to_be_signed.content).map_err(internal)?;
        // TBSCertificate: [0] version, serial, signature, issuer, validity, subject, spki, [3] extensions.
        let mut parts: Vec<&[u8]> = fields.iter().map(|field| field.raw).collect();
        if parts.len() != 8 || fields[0].tag != 0xa0 {
            return Err(internal(der::DerError::UnexpectedTag));
        }
        parts[3] = self.certificate.subject_der();
        if let Some(subject_der) = subject_der {
            parts[5] = subject_der;
        }
        parts[6] = key.spki_der();
        let to_be_signed = der::write_constructed(der::SEQUENCE, &parts);
        let signature = self.key_pair.sign(&to_be_signed).map_err(Error::Build)?;
        Certificate::from_der(der::join_signed(&to_be_signed, signed.algorithm.raw, &signature))
    }
}

/// Lends rcgen the CA key's algorithm and public key but signs nothing: rcgen's draft is only
/// taken apart, and the final to-be-signed bytes are signed by [`Issuer::sign`].
struct Unsigned<'a>(&'a KeyPair);

impl PublicKeyData for Unsigned<'_> {
    fn der_bytes(&self) -> &[u8] {
        self.0.der_bytes()
    }

    fn algorithm(&self) -> &'static rcgen::SignatureAlgorithm {
        self.0.algorithm()
    }
}

impl SigningKey for Unsigned<'_> {
    fn sign(&self, _message: &[u8]) -> Result<Vec<u8>, rcgen::Error> {
        Ok(Vec::new())
    }
}

fn load_key_pair(pkcs8: &[u8]) -> Result<KeyPair, Error> {
    KeyPair::try_from(pkcs8).map_err(Error::PrivateKeyRejected)
}

/// Whether the DER has the shape of a PKCS#8 PrivateKeyInfo (not PKCS#1 or SEC1).
fn is_pkcs8(key: &[u8]) -> bool {
    let Ok(info) = der::read_single(key, der::SEQUENCE) else {
        return false;
    };
    matches!(
        der::read_all(info.content).as_deref(),
        Ok([version, algorithm, private_key, ..])
            if version.tag == 0x02 && algorithm.tag == der::SEQUENCE && private_key.tag == der::OCTET_STRING
    )
}

/// Parameters shared by everything this crate issues: a fresh serial and the validity window.
fn base_params(validity: Duration, now: OffsetDateTime) -> Result<CertificateParams, Error> {
    let (not_before, not_after) = validity_window(validity, now)?;
    let mut params = CertificateParams::default();
    params.distinguished_name = DistinguishedName::new();
    params.serial_number = Some(random_serial()?);
    params.not_before = not_before;
    params.not_after = not_after;
    Ok(params)
}

fn device_params(key: &PublicKey, validity: Duration, now: OffsetDateTime) -> Result<CertificateParams, Error> {
    check_key_rules(key)?;
    let mut params = base_params(validity, now)?;
    params.is_ca = IsCa::ExplicitNoCa;
    params.key_usages = match key.kind() {
        KeyKind::Rsa { .. } => vec![KeyUsagePurpose::DigitalSignature, KeyUsagePurpose::KeyEncipherment],
        _ => vec![KeyUsagePurpose::DigitalSignature],
    };
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    params.use_authority_key_identifier_extension = true;
    params.key_identifier_method = KeyIdMethod::PreSpecified(key.key_identifier());
    Ok(params)
}

/// From `now` truncated to the second, for `validity` (X.509 times have whole seconds).
fn validity_window(validity: Duration, now: OffsetDateTime) -> Result<(OffsetDateTime, OffsetDateTime), Error> {
    if validity <= Duration::ZERO {
        return Err(Error::BadValidity { reason: "the validity period must be positive" });
    }
    let not_before = now.to_offset(UtcOffset::UTC) - Duration::nanoseconds(i64::from(now.nanosecond()));
    let not_after = not_before
        .checked_add(validity)
        .filter(|end| end.year() <= 9999)
        .ok_or(Error::BadValidity { reason: "the validity period ends after the year 9999" })?;
    let not_after = not_after - Duration::nanoseconds(i64::from(not_after.nanosecond()));
    Ok((not_before, not_after))
}

/// A positive 16-byte serial with 126 random bits: the top bit is clear so the INTEGER is
/// positive, and the next one set so it always takes exactly 16 bytes.
fn random_serial() -> Result<SerialNumber, Error> {
    let mut bytes = [0u8; 16];
    aws_lc_rs::rand::fill(&mut bytes).map_err(|_| Error::Random)?;
    bytes[0] = (bytes[0] & 0x7f) | 0x40;
    Ok(SerialNumber::from_slice(&bytes))
}

fn name(common_name: &str, organization: &str) -> Result<DistinguishedName, Error> {
    if common_name.is_empty() {
        return Err(Error::BadCommonName { reason: "it is empty" });
    }
    if common_name.chars().count() > MAX_COMMON_NAME {
        return Err(Error::BadCommonName { reason: "it is longer than 64 characters" });
    }
    let mut name = DistinguishedName::new();
    name.push(DnType::CommonName, common_name);
    if !organization.is_empty() {
        name.push(DnType::OrganizationName, organization);
    }
    Ok(name)
}

fn subject_alt_name(text: &str) -> Result<SanType, Error> {
    let bad = |reason| Error::BadSubjectAltName { name: text.to_owned(), reason };
    if let Ok(address) = text.parse::<IpAddr>() {
        return Ok(SanType::IpAddress(address));
    }
    if text.is_empty() || text.len() > 253 {
        return Err(bad("a dns name has 1 to 253 characters"));
    }
    let wildcard_free = text.strip_prefix("*.").unwrap_or(text);
    let labels_ok = wildcard_free.split('.').all(|label| {
        !label.is_empty()
            && label.len() <= 63
            && !label.starts_with('-')
            && !label.ends_with('-')
            && label.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    });
    if !labels_ok {
        return Err(bad("not an ip address nor a dns name"));
    }
    Ia5String::try_from(text).map(SanType::DnsName).map_err(|_| bad("not an ip address nor a dns name"))
}
