//! The one description of a certificate both tools print: names, serial, validity and days
//! left, key, signature algorithm, thumbprints, CA and self-signed flags; as text and as JSON.

use aws_lc_rs::digest;
use certfleet_pki::{self as pki, Certificate, KeyKind};
use serde_json::{Value, json};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

/// What people look at when they look at a certificate, computed once for a given `now`.
#[derive(Clone, Debug)]
pub struct Description {
    /// The subject, RFC 4514-like ("CN=foo, O=bar").
    pub subject: String,
    /// The issuer, RFC 4514-like.
    pub issuer: String,
    /// The serial number in lowercase hex.
    pub serial: String,
    /// The start of the validity period.
    pub not_before: OffsetDateTime,
    /// The end of the validity period.
    pub not_after: OffsetDateTime,
    /// Whole days from `now` to `not_after`, rounded down; negative once expired.
    pub days_left: i64,
    /// The key type: "rsa", "ec", or another algorithm's name.
    pub key_type: String,
    /// The key size in bits (RSA modulus, EC curve size), when known.
    pub key_bits: Option<u32>,
    /// The key as certfleet names it ("rsa-2048", "ec P-256", "ed25519").
    pub key: String,
    /// The signature algorithm's conventional name ("ecdsa-with-SHA256", "sha1WithRSAEncryption").
    pub signature_algorithm: String,
    /// Lowercase hex SHA-1 of the DER (the "thumbprint" Azure and Windows show).
    pub sha1: String,
    /// Lowercase hex SHA-256 of the DER (the AWS IoT certificate id).
    pub sha256: String,
    /// basicConstraints CA:TRUE.
    pub is_ca: bool,
    /// Subject equals issuer and the certificate's own key verifies its signature (or the
    /// signature uses an algorithm certfleet does not verify, such as SHA-1 in old roots).
    pub self_signed: bool,
    /// The DER length in bytes.
    pub der_len: usize,
}

impl Description {
    /// Describes `certificate` as seen at `now`.
    pub fn of(certificate: &Certificate, now: OffsetDateTime) -> Self {
        let (key_type, key_bits) = match certificate.public_key().kind() {
            KeyKind::Rsa { bits } => ("rsa".to_owned(), Some(*bits)),
            KeyKind::Ec(curve) => (
                "ec".to_owned(),
                Some(match curve {
                    pki::Curve::P256 => 256,
                    pki::Curve::P384 => 384,
                    pki::Curve::P521 => 521,
                }),
            ),
            KeyKind::EcOtherCurve(_) => ("ec".to_owned(), None),
            KeyKind::Other(algorithm) => (algorithm.clone(), None),
        };
        Description {
            subject: certificate.subject_string(),
            issuer: certificate.issuer_string(),
            serial: certificate.serial_hex(),
            not_before: certificate.not_before(),
            not_after: certificate.not_after(),
            days_left: (certificate.not_after() - now).whole_days(),
            key_type,
            key_bits,
            key: certificate.public_key().kind().to_string(),
            signature_algorithm: signature_algorithm_name(certificate),
            sha1: hex::encode(digest::digest(&digest::SHA1_FOR_LEGACY_USE_ONLY, certificate.der())),
            sha256: certificate.id().to_string(),
            is_ca: certificate.is_ca(),
            self_signed: is_self_signed(certificate),
            der_len: certificate.der().len(),
        }
    }

    /// Whether the certificate has expired at `now`.
    pub fn expired_at(&self, now: OffsetDateTime) -> bool {
        self.not_after < now
    }

    /// The JSON object both tools print for a certificate.
    pub fn to_json(&self) -> Value {
        json!({
            "subject": self.subject,
            "issuer": self.issuer,
            "serial": self.serial,
            "notBefore": rfc3339(self.not_before),
            "notAfter": rfc3339(self.not_after),
            "daysLeft": self.days_left,
            "keyType": self.key_type,
            "keyBits": self.key_bits,
            "signatureAlgorithm": self.signature_algorithm,
            "sha1": self.sha1,
            "sha256": self.sha256,
            "isCa": self.is_ca,
            "selfSigned": self.self_signed,
            "derBytes": self.der_len,
        })
    }

    /// The indented text lines both tools print for a certificate.
    pub fn text_lines(&self) -> Vec<String> {
        let role = match (self.is_ca, self.self_signed) {
            (true, true) => "root CA (self-signed)",
            (true, false) => "intermediate CA",
            (false, true) => "self-signed end entity",
            (false, false) => "end entity",
        };
        vec![
            format!("subject:    {}", self.subject),
            format!("issuer:     {}", self.issuer),
            format!("serial:     {}", self.serial),
            format!(
                "validity:   {} .. {} ({})",
                rfc3339(self.not_before),
                rfc3339(self.not_after),
                if self.days_left < 0 {
                    format!("expired {} days ago", -self.days_left)
                } else {
                    format!("{} days left", self.days_left)
                }
            ),
            format!("key:        {}   signature: {}", self.key, self.signature_algorithm),
            format!("sha1:       {}", self.sha1),
            format!("sha256:     {}", self.sha256),
            format!("kind:       {role}, {} bytes", self.der_len),
        ]
    }
}

/// RFC 3339 text of a time, to the second (certificates carry no fractions).
pub fn rfc3339(at: OffsetDateTime) -> String {
    let at = at.replace_nanosecond(0).unwrap_or(at);
    at.format(&Rfc3339).unwrap_or_else(|_| at.to_string())
}

/// Subject equals issuer and the own key verifies the signature (or cannot: see
/// [`Description::self_signed`]).
pub(crate) fn is_self_signed(certificate: &Certificate) -> bool {
    if !certificate.is_self_issued() {
        return false;
    }
    match certificate.signature_algorithm() {
        Ok(_) => pki::verify_signature(certificate, certificate.public_key()).is_ok(),
        Err(_) => true,
    }
}

/// The name of the signature algorithm, including those pki refuses to verify.
fn signature_algorithm_name(certificate: &Certificate) -> String {
    match certificate.signature_algorithm() {
        Ok(algorithm) => algorithm.name().to_owned(),
        Err(pki::Error::WeakSignatureAlgorithm { algorithm }) => algorithm.to_owned(),
        Err(pki::Error::UnsupportedSignatureAlgorithm { algorithm }) => algorithm,
        Err(pki::Error::DsaUnsupported) => "dsa-with-sha256".to_owned(),
        Err(pki::Error::BadPssParameters { .. }) => "rsassa-pss (unusual parameters)".to_owned(),
        Err(_) => "(inner and outer algorithms differ)".to_owned(),
    }
}

/// Whether two certificates name the same CA key: same subject and same public key. A root
/// re-issued (new serial, new validity) with the same name and key is the same trust anchor.
pub fn same_anchor(a: &Certificate, b: &Certificate) -> bool {
    a.subject_der() == b.subject_der() && a.public_key().spki_der() == b.public_key().spki_der()
}

#[cfg(test)]
mod tests {
    use certfleet_pki::{GeneratedKeyPair, Issuer, KeyAlgorithm};
    use time::Duration;
    use time::macros::datetime;

    use super::*;

    const NOW: OffsetDateTime = datetime!(2026-06-01 12:00 UTC);

    #[test]
    fn roots_and_leaves() {
        let root = Issuer::generate_root("Test Root", "certfleet", Duration::days(3650), KeyAlgorithm::Rsa2048, NOW)
            .expect("root");
        let device = GeneratedKeyPair::generate(KeyAlgorithm::EcdsaP384).expect("keygen");
        let leaf = root.issue_for_key(device.public_key(), "device-1", Duration::days(30), NOW).expect("leaf");
        let check =
            |certificate: &Certificate, at: OffsetDateTime, expected: (&str, Option<u32>, &str, bool, bool, i64)| {
                let description = Description::of(certificate, at);
                let got = (
                    description.key.as_str(),
                    description.key_bits,
                    description.signature_algorithm.as_str(),
                    description.is_ca,
                    description.self_signed,
                    description.days_left,
                );
                assert_eq!(got, expected, "{}", description.subject);
                assert_eq!(description.sha256, certificate.id().as_str());
                assert_eq!(description.sha1.len(), 40);
                assert_eq!(description.der_len, certificate.der().len());
            };
        check(root.certificate(), NOW, ("rsa-2048", Some(2048), "sha256WithRSAEncryption", true, true, 3650));
        check(&leaf, NOW, ("ec P-384", Some(384), "sha256WithRSAEncryption", false, false, 30));
        check(&leaf, NOW + Duration::hours(12), ("ec P-384", Some(384), "sha256WithRSAEncryption", false, false, 29));
        check(&leaf, NOW + Duration::days(31), ("ec P-384", Some(384), "sha256WithRSAEncryption", false, false, -1));
        assert!(same_anchor(root.certificate(), root.certificate()));
        assert!(!same_anchor(root.certificate(), &leaf));
        assert_eq!(rfc3339(NOW + Duration::nanoseconds(5)), "2026-06-01T12:00:00Z");
    }
}
