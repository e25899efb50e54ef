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
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa, KeyIdMethod,
    KeyPair, KeyUsagePurpose, PublicKeyData, SanType, SerialNumber, SigningKey,
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

impl Drop for Issuer {
    fn drop(&mut self) {
        // rcgen keeps its own copy of the private key; `pkcs8` wipes itself.
        zeroize::Zeroize::zeroize(&mut self.key_pair);
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
        params.key_usages =
            vec![KeyUsagePurpose::DigitalSignature, KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
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

    /// A CRL signed by this CA listing `revoked` (by serial), issued `now`, next update in a day.
    /// certfleet does not publish CRLs; operators and tests make them (the audits read them).
    pub fn issue_crl(&self, revoked: &[&Certificate], now: OffsetDateTime) -> Result<crate::Crl, Error> {
        let der = rustls_pki_types::CertificateDer::from(self.certificate.der());
        let issuer = rcgen::Issuer::from_ca_cert_der(&der, &self.key_pair).map_err(Error::Build)?;
        let params = rcgen::CertificateRevocationListParams {
            this_update: now,
            next_update: now + Duration::days(1),
            crl_number: rcgen::SerialNumber::from(1u64),
            issuing_distribution_point: None,
            revoked_certs: revoked
                .iter()
                .map(|certificate| rcgen::RevokedCertParams {
                    serial_number: rcgen::SerialNumber::from_slice(
                        &hex::decode(certificate.serial_hex()).unwrap_or_default(),
                    ),
                    revocation_time: now,
                    reason_code: None,
                    invalidity_date: None,
                })
                .collect(),
            key_identifier_method: KeyIdMethod::PreSpecified(self.key_id.clone()),
        };
        let crl = params.signed_by(&issuer).map_err(Error::Build)?;
        crate::Crl::from_der(crl.der().to_vec())
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

    /// A device certificate like [`issue_from_csr`](Self::issue_from_csr)'s for `key`, with a
    /// subject and subject alternative names chosen by the caller (`subject_der`, an X.509 Name,
    /// and `subject_alt_names`, both written byte for byte): a rotation issues the old
    /// certificate's whatever the CSR asked for.
    pub fn issue_for_subject(
        &self,
        key: &PublicKey,
        subject_der: &[u8],
        subject_alt_names: Option<&crate::SubjectAltNames>,
        validity: Duration,
        now: OffsetDateTime,
    ) -> Result<Certificate, Error> {
        let mut params = device_params(key, validity, now)?;
        if let Some(names) = subject_alt_names {
            let mut extension = rcgen::CustomExtension::from_oid_content(&[2, 5, 29, 17], names.value_der.clone());
            extension.set_criticality(names.critical);
            params.custom_extensions.push(extension);
        }
        self.sign(&params, Some(subject_der), key)
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
        let subject_alt_names =
            subject_alt_names.iter().map(|text| subject_alt_name(text)).collect::<Result<Vec<_>, _>>()?;
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
    fn sign(
        &self,
        params: &CertificateParams,
        subject_der: Option<&[u8]>,
        key: &PublicKey,
    ) -> Result<Certificate, Error> {
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

#[cfg(test)]
mod tests {
    use aws_lc_rs::signature as aws;
    use x509_parser::certificate::X509Certificate;
    use x509_parser::extensions::GeneralName;
    use x509_parser::prelude::FromDer;

    use super::*;
    use crate::test_support::*;
    use crate::{SignatureAlgorithm, check_ca_certificate, check_issued_by, verify_signature};

    const DEVICE_VALIDITY: Duration = Duration::days(30);

    /// Every promised property of a device certificate issued by `ca` for `csr_pem`.
    fn check_device(ca: &Issuer, csr_pem: &str, algorithm: SignatureAlgorithm) {
        let csr = Csr::from_pem(csr_pem).expect("csr");
        let issued = ca.issue_from_csr(&csr, DEVICE_VALIDITY, NOW).expect("issues");
        check_issued_by(&issued, ca.certificate(), NOW).expect("chains to the issuer");
        assert_eq!(issued.signature_algorithm().expect("accepted"), algorithm);
        assert_eq!((issued.subject_der(), issued.issuer_der()), (csr.subject_der(), ca.certificate().subject_der()));
        assert_eq!(issued.public_key(), csr.public_key());
        assert_eq!((issued.not_before(), issued.not_after()), (NOW, NOW + DEVICE_VALIDITY));
        assert_eq!(issued.subject_key_id(), Some(&csr.public_key().key_identifier()[..]));
        assert_eq!(issued.authority_key_id(), ca.certificate().subject_key_id());
        assert!(issued.authority_key_id().is_some());
        let serial = issued.serial_hex();
        assert!(serial.len() == 32 && matches!(serial.as_bytes()[0], b'4'..=b'7'), "16-byte positive serial {serial}");
        let (_, parsed) = X509Certificate::from_der(issued.der()).expect("parses");
        let eku = parsed.extended_key_usage().expect("one eku").expect("has eku").value;
        assert!(eku.client_auth && !eku.server_auth && !eku.any);
        let basic_constraints = parsed.basic_constraints().expect("one bc").expect("has bc");
        assert!(basic_constraints.critical && !basic_constraints.value.ca);
        let key_usage = parsed.key_usage().expect("one ku").expect("has ku");
        let rsa = matches!(csr.public_key().kind(), KeyKind::Rsa { .. });
        assert!(key_usage.critical && key_usage.value.digital_signature() && !key_usage.value.key_cert_sign());
        assert_eq!(key_usage.value.key_encipherment(), rsa);
    }

    #[test]
    fn issues_for_a_chosen_subject_and_subject_alt_names() {
        let ca = p256_ca();
        let (old, _) = ca
            .issue_server_certificate(
                "old-device",
                &["a.example".into(), "b.example".into()],
                DEVICE_VALIDITY,
                KeyAlgorithm::EcdsaP256,
                NOW,
            )
            .expect("old");
        let csr = Csr::from_pem(&rcgen_csr(&rcgen::PKCS_ECDSA_P256_SHA256, "asked-for")).expect("csr");
        let issued = ca
            .issue_for_subject(csr.public_key(), old.subject_der(), old.subject_alt_names(), DEVICE_VALIDITY, NOW)
            .expect("issues");
        check_issued_by(&issued, ca.certificate(), NOW).expect("chains to the issuer");
        assert_eq!(issued.subject_der(), old.subject_der());
        assert_eq!(issued.subject_common_name().as_deref(), Some("old-device"));
        assert_eq!(issued.dns_names(), ["a.example", "b.example"]);
        assert_eq!(issued.subject_alt_names(), old.subject_alt_names());
        assert_eq!(issued.public_key(), csr.public_key());
        let (_, parsed) = X509Certificate::from_der(issued.der()).expect("parses");
        assert!(parsed.extended_key_usage().expect("one eku").expect("has eku").value.client_auth);
        // Without names: none.
        let bare =
            ca.issue_for_subject(csr.public_key(), old.subject_der(), None, DEVICE_VALIDITY, NOW).expect("issues");
        assert_eq!(bare.subject_alt_names(), None);
    }

    #[test]
    fn p256_ca_issues_for_p256_csr() {
        check_device(p256_ca(), &rcgen_csr(&rcgen::PKCS_ECDSA_P256_SHA256, "thing-1"), SignatureAlgorithm::EcdsaSha256);
    }

    #[test]
    fn p384_ca_issues_for_p256_csr() {
        check_device(p384_ca(), &rcgen_csr(&rcgen::PKCS_ECDSA_P256_SHA256, "thing-1"), SignatureAlgorithm::EcdsaSha384);
    }

    #[test]
    fn rsa_ca_issues_for_rsa_csr() {
        check_device(rsa_ca(), &rcgen_csr(&rcgen::PKCS_RSA_SHA256, "thing-1"), SignatureAlgorithm::RsaPkcs1Sha256);
    }

    #[test]
    fn rsa_ca_issues_for_p521_csr() {
        check_device(
            rsa_ca(),
            &rcgen_csr(&rcgen::PKCS_ECDSA_P521_SHA512, "thing-1"),
            SignatureAlgorithm::RsaPkcs1Sha256,
        );
    }

    #[test]
    fn p521_ca_issues_for_p384_csr() {
        check_device(p521_ca(), &rcgen_csr(&rcgen::PKCS_ECDSA_P384_SHA384, "thing-1"), SignatureAlgorithm::EcdsaSha512);
    }

    #[test]
    fn p256_ca_issues_for_rsa_csr() {
        check_device(p256_ca(), &rcgen_csr(&rcgen::PKCS_RSA_SHA256, "thing-1"), SignatureAlgorithm::EcdsaSha256);
    }

    #[test]
    fn two_issuances_differ() {
        let csr = Csr::from_pem(&rcgen_csr(&rcgen::PKCS_ECDSA_P256_SHA256, "thing-1")).expect("csr");
        let first = p256_ca().issue_from_csr(&csr, DEVICE_VALIDITY, NOW).expect("issues");
        let second = p256_ca().issue_from_csr(&csr, DEVICE_VALIDITY, NOW).expect("issues");
        assert_ne!((first.serial_hex(), first.id()), (second.serial_hex(), second.id()));
    }

    fn check_validity(
        validity: Duration,
        now: OffsetDateTime,
        expected: Result<(OffsetDateTime, OffsetDateTime), &str>,
    ) {
        let key = GeneratedKeyPair::generate(KeyAlgorithm::EcdsaP256).expect("keygen");
        let got = p256_ca()
            .issue_for_key(key.public_key(), "thing-1", validity, now)
            .map(|issued| (issued.not_before(), issued.not_after()));
        assert_eq!(got.map_err(|error| error.to_string()), expected.map_err(str::to_owned));
    }

    #[test]
    fn validity_of_one_second() {
        check_validity(Duration::SECOND, NOW, Ok((NOW, NOW + Duration::SECOND)));
    }

    #[test]
    fn validity_starts_at_the_whole_second() {
        check_validity(Duration::HOUR, NOW + Duration::milliseconds(999), Ok((NOW, NOW + Duration::HOUR)));
    }

    #[test]
    fn validity_past_2049_uses_generalized_time() {
        let until_2100 = datetime_2100() - NOW;
        check_validity(until_2100, NOW, Ok((NOW, datetime_2100())));
    }

    fn datetime_2100() -> OffsetDateTime {
        time::macros::datetime!(2100-01-01 00:00:00 UTC)
    }

    #[test]
    fn validity_zero_refused() {
        check_validity(Duration::ZERO, NOW, Err("invalid validity: the validity period must be positive"));
    }

    #[test]
    fn validity_negative_refused() {
        check_validity(-Duration::DAY, NOW, Err("invalid validity: the validity period must be positive"));
    }

    #[test]
    fn validity_past_9999_refused() {
        check_validity(
            Duration::days(365 * 8000),
            NOW,
            Err("invalid validity: the validity period ends after the year 9999"),
        );
    }

    fn check_for_key(key: &PublicKey, common_name: &str, expected: Result<&str, &str>) {
        let got = p256_ca().issue_for_key(key, common_name, DEVICE_VALIDITY, NOW).map(|issued| {
            check_issued_by(&issued, p256_ca().certificate(), NOW).expect("chains");
            issued.subject_string()
        });
        assert_eq!(got.map_err(|error| error.to_string()), expected.map(str::to_owned).map_err(str::to_owned));
    }

    fn p256_key() -> PublicKey {
        GeneratedKeyPair::generate(KeyAlgorithm::EcdsaP256).expect("keygen").public_key().clone()
    }

    #[test]
    fn for_key_aws_subject() {
        check_for_key(&p256_key(), "AWS IoT Certificate", Ok("CN=AWS IoT Certificate"));
    }

    #[test]
    fn for_key_rsa() {
        let key = rcgen::KeyPair::try_from(rsa_device_pkcs8()).expect("loads").subject_public_key_info();
        check_for_key(
            &PublicKey::from_spki_der(&key).expect("parses"),
            "AWS IoT Certificate",
            Ok("CN=AWS IoT Certificate"),
        );
    }

    #[test]
    fn for_key_weak_key_refused() {
        let weak = PublicKey::from_spki_der(&fake_rsa_spki(1024)).expect("parses");
        check_for_key(
            &weak,
            "AWS IoT Certificate",
            Err("rsa key of 1024 bits is too small: at least 2048 bits are required"),
        );
    }

    #[test]
    fn for_key_empty_common_name_refused() {
        check_for_key(&p256_key(), "", Err("invalid common name: it is empty"));
    }

    #[test]
    fn for_key_long_common_name_refused() {
        check_for_key(&p256_key(), &"x".repeat(65), Err("invalid common name: it is longer than 64 characters"));
    }

    #[test]
    fn for_key_64_character_common_name() {
        let common_name = "é".repeat(64);
        check_for_key(&p256_key(), &common_name, Ok(&format!("CN={common_name}")));
    }

    #[test]
    fn server_certificate() {
        let names = ["iot.example.com", "*.iot.example.com", "127.0.0.1", "::1"].map(str::to_owned);
        let (issued, key) = rsa_ca()
            .issue_server_certificate("iot.example.com", &names, Duration::days(90), KeyAlgorithm::EcdsaP256, NOW)
            .expect("issues");
        check_issued_by(&issued, rsa_ca().certificate(), NOW).expect("chains");
        let key_pair = KeyPair::try_from(&key[..]).expect("pkcs8 loads");
        assert_eq!(key_pair.der_bytes(), issued.public_key().key_bits());
        let (_, parsed) = X509Certificate::from_der(issued.der()).expect("parses");
        let sans = parsed.subject_alternative_name().expect("one san").expect("has san").value;
        let sans: Vec<String> = sans
            .general_names
            .iter()
            .map(|general_name| match general_name {
                GeneralName::DNSName(dns) => format!("dns:{dns}"),
                GeneralName::IPAddress(ip) => format!("ip:{ip:?}"),
                other => format!("other:{other:?}"),
            })
            .collect();
        let expected = [
            "dns:iot.example.com",
            "dns:*.iot.example.com",
            "ip:[127, 0, 0, 1]",
            "ip:[0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1]",
        ];
        assert_eq!(sans, expected);
        let eku = parsed.extended_key_usage().expect("one eku").expect("has eku").value;
        assert!(eku.server_auth && !eku.client_auth);
        let key_usage = parsed.key_usage().expect("one ku").expect("has ku").value;
        assert!(key_usage.digital_signature() && !key_usage.key_encipherment());
    }

    fn check_san(text: &str, expected: Result<SanType, &str>) {
        assert_eq!(subject_alt_name(text).map_err(|error| error.to_string()), expected.map_err(str::to_owned));
    }

    fn dns(text: &str) -> SanType {
        SanType::DnsName(Ia5String::try_from(text).expect("ia5"))
    }

    #[test]
    fn san_dns() {
        check_san("localhost", Ok(dns("localhost")));
    }

    #[test]
    fn san_wildcard() {
        check_san("*.example.com", Ok(dns("*.example.com")));
    }

    #[test]
    fn san_ipv4() {
        check_san("10.0.0.1", Ok(SanType::IpAddress([10, 0, 0, 1].into())));
    }

    #[test]
    fn san_ipv6() {
        check_san("fe80::1", Ok(SanType::IpAddress("fe80::1".parse().expect("ip"))));
    }

    #[test]
    fn san_space_refused() {
        check_san(
            "exa mple.com",
            Err(r#"invalid subject alternative name "exa mple.com": not an ip address nor a dns name"#),
        );
    }

    #[test]
    fn san_empty_label_refused() {
        check_san("a..b", Err(r#"invalid subject alternative name "a..b": not an ip address nor a dns name"#));
    }

    #[test]
    fn san_leading_hyphen_refused() {
        check_san(
            "-a.example",
            Err(r#"invalid subject alternative name "-a.example": not an ip address nor a dns name"#),
        );
    }

    #[test]
    fn san_inner_wildcard_refused() {
        check_san(
            "a.*.example",
            Err(r#"invalid subject alternative name "a.*.example": not an ip address nor a dns name"#),
        );
    }

    #[test]
    fn san_non_ascii_refused() {
        check_san(
            "é.example",
            Err(r#"invalid subject alternative name "é.example": not an ip address nor a dns name"#),
        );
    }

    #[test]
    fn san_empty_refused() {
        check_san("", Err(r#"invalid subject alternative name "": a dns name has 1 to 253 characters"#));
    }

    #[test]
    fn root_extensions() {
        let root = p384_ca().certificate();
        check_ca_certificate(root, NOW).expect("a good ca");
        verify_signature(root, root.public_key()).expect("self-signed");
        assert_eq!(root.subject_key_id(), Some(&root.public_key().key_identifier()[..]));
        let (_, parsed) = X509Certificate::from_der(root.der()).expect("parses");
        let basic_constraints = parsed.basic_constraints().expect("one bc").expect("has bc");
        assert!(basic_constraints.critical && basic_constraints.value.ca);
        let key_usage = parsed.key_usage().expect("one ku").expect("has ku");
        assert!(key_usage.critical);
        assert!(key_usage.value.key_cert_sign() && key_usage.value.crl_sign() && key_usage.value.digital_signature());
        assert!(!key_usage.value.key_encipherment());
    }

    #[test]
    fn root_without_organization() {
        let root = Issuer::generate_root("Solo", "", CA_VALIDITY, KeyAlgorithm::EcdsaP256, NOW).expect("root");
        assert_eq!(root.certificate().subject_string(), "CN=Solo");
    }

    fn check_from_parts(certificate: &Certificate, key: &[u8], expected: Result<(), &str>) {
        let got = Issuer::from_parts(certificate.clone(), key).map(|_| ());
        assert_eq!(got.map_err(|error| error.to_string()), expected.map_err(str::to_owned));
    }

    #[test]
    fn from_parts_own_key() {
        check_from_parts(p256_ca().certificate(), &p256_ca().private_key_pkcs8_der(), Ok(()));
    }

    #[test]
    fn from_parts_other_key_of_same_type() {
        let other = GeneratedKeyPair::generate(KeyAlgorithm::EcdsaP256).expect("keygen");
        check_from_parts(
            p256_ca().certificate(),
            other.pkcs8_der(),
            Err("the private key does not match the certificate's public key"),
        );
    }

    #[test]
    fn from_parts_other_key_type() {
        check_from_parts(
            p256_ca().certificate(),
            &p384_ca().private_key_pkcs8_der(),
            Err("the private key does not match the certificate's public key"),
        );
    }

    #[test]
    fn from_parts_pkcs1_key_refused() {
        let key = GeneratedKeyPair::generate(KeyAlgorithm::Rsa2048).expect("keygen");
        let pkcs1 = crate::pem::pem_decode(&key.private_key_pem(), &["RSA PRIVATE KEY"]).expect("pkcs1");
        check_from_parts(rsa_ca().certificate(), &pkcs1, Err("the private key is not pkcs#8 der"));
    }

    #[test]
    fn from_parts_garbage_refused() {
        check_from_parts(p256_ca().certificate(), b"not a key", Err("the private key is not pkcs#8 der"));
    }

    #[test]
    fn from_parts_pkcs8_shaped_garbage_refused() {
        let fake = der::write_constructed(
            der::SEQUENCE,
            &[
                &der::write(0x02, &[0]),
                &algorithm_identifier(&[1, 2, 3], None),
                &der::write(der::OCTET_STRING, b"junk"),
            ],
        );
        check_from_parts(p256_ca().certificate(), &fake, Err("the private key is malformed or of an unsupported type"));
    }

    #[test]
    fn from_parts_keeps_issuing() {
        let reloaded =
            Issuer::from_parts(rsa_ca().certificate().clone(), &rsa_ca().private_key_pkcs8_der()).expect("pairs");
        let issued = reloaded.issue_for_key(&p256_key(), "thing-1", DEVICE_VALIDITY, NOW).expect("issues");
        check_issued_by(&issued, rsa_ca().certificate(), NOW).expect("chains to the original");
    }

    #[test]
    fn debug_hides_the_key() {
        let debug = format!("{:?}", p256_ca());
        assert!(debug.starts_with("Issuer { certificate: Certificate { id: "), "{debug}");
        assert!(debug.ends_with("key: Ec(P256), .. }"), "{debug}");
    }

    /// A CA whose subject rcgen could not write (two OU attributes) still issues certificates
    /// whose issuer is its subject byte for byte, for CSRs with such subjects too.
    #[test]
    fn names_are_spliced_byte_for_byte() {
        let key_pair = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).expect("keygen");
        let mut params = CertificateParams::default();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.not_before = NOW;
        params.not_after = NOW + CA_VALIDITY;
        let draft = params.self_signed(&key_pair).expect("self-signed");
        let odd_name = encode_name(&[(COMMON_NAME, "Odd CA"), (ORGANIZATIONAL_UNIT, "x"), (ORGANIZATIONAL_UNIT, "y")]);
        let der = rebuild(
            draft.der(),
            |fields| {
                fields[3] = odd_name.clone();
                fields[5] = odd_name.clone();
            },
            &algorithm_identifier(ECDSA_SHA256, None),
            |message| ecdsa_sign(key_pair.serialized_der(), &aws::ECDSA_P256_SHA256_ASN1_SIGNING, message),
        );
        let ca =
            Issuer::from_parts(Certificate::from_der(der).expect("parses"), key_pair.serialized_der()).expect("pairs");
        assert_eq!(ca.certificate().subject_string(), "CN=Odd CA, OU=x, OU=y");

        let device = GeneratedKeyPair::generate(KeyAlgorithm::EcdsaP256).expect("keygen");
        let subject = encode_name(&[(COMMON_NAME, "thing-1"), (ORGANIZATIONAL_UNIT, "a"), (ORGANIZATIONAL_UNIT, "b")]);
        let csr_der =
            build_csr(&subject, device.public_key().spki_der(), &algorithm_identifier(ECDSA_SHA256, None), |info| {
                ecdsa_sign(device.pkcs8_der(), &aws::ECDSA_P256_SHA256_ASN1_SIGNING, info)
            });
        let csr = Csr::from_der(&csr_der).expect("csr");
        let issued = ca.issue_from_csr(&csr, DEVICE_VALIDITY, NOW).expect("issues");
        assert_eq!((issued.issuer_der(), issued.subject_der()), (ca.certificate().subject_der(), &subject[..]));
        check_issued_by(&issued, ca.certificate(), NOW).expect("chains");
    }
}
