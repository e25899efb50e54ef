//! The checks behind CA registration and device authentication.
//!
//! Each check returns the first reason to refuse, as a specific [`Error`] the API layer maps to
//! an AWS error shape. They take `now` and read no clock.

use time::OffsetDateTime;

use crate::{Certificate, CertificateRole, Error, check_key_rules, verify_signature};

/// Checks a CA certificate for RegisterCACertificate: basicConstraints CA:TRUE, keyCertSign
/// when keyUsage is present, within its validity period, and a key that passes the key rules.
///
/// The CA's own signature is not checked: it may be an intermediate whose issuer is unknown.
pub fn check_ca_certificate(ca: &Certificate, now: OffsetDateTime) -> Result<(), Error> {
    check_can_sign_certificates(ca)?;
    check_validity(ca, CertificateRole::Ca, now)?;
    check_key_rules(ca.public_key())
}

/// Checks a verification certificate (proof of possession of a CA's key): its subject common
/// name is the registration code, it is issued and signed by the CA, and it is within its
/// validity period.
pub fn check_verification_certificate(
    ca: &Certificate,
    verification: &Certificate,
    registration_code: &str,
    now: OffsetDateTime,
) -> Result<(), Error> {
    let common_name = verification.subject_common_name();
    if common_name.as_deref() != Some(registration_code) {
        return Err(Error::RegistrationCodeMismatch { found: common_name });
    }
    check_signed_by(verification, ca)?;
    check_validity(verification, CertificateRole::Verification, now)
}

/// Checks that a device certificate was issued by a CA: the device's issuer is the CA's subject,
/// its signature verifies with the CA's key, it is within its validity period, and the CA is a
/// CA (CA:TRUE, keyCertSign when keyUsage is present) within its own validity period.
pub fn check_issued_by(device: &Certificate, ca: &Certificate, now: OffsetDateTime) -> Result<(), Error> {
    check_signed_by(device, ca)?;
    check_validity(device, CertificateRole::Device, now)?;
    check_can_sign_certificates(ca)?;
    check_validity(ca, CertificateRole::Ca, now)
}

fn check_can_sign_certificates(ca: &Certificate) -> Result<(), Error> {
    if !ca.is_ca() {
        return Err(Error::NotACa { subject: ca.subject_string() });
    }
    if ca.key_usage_allows_cert_sign() == Some(false) {
        return Err(Error::CaCannotSignCertificates { subject: ca.subject_string() });
    }
    Ok(())
}

/// The names must match and the signature verify. A signature that does not verify, or that
/// the CA's type of key could not have made, is reported as [`Error::NotSignedByIssuer`]; any
/// other refusal (an unsupported algorithm, a CA key the rules refuse) as itself.
fn check_signed_by(certificate: &Certificate, ca: &Certificate) -> Result<(), Error> {
    if certificate.issuer_der() != ca.subject_der() {
        return Err(Error::NotSignedByIssuer {
            ca_subject: ca.subject_string(),
            reason: format!("its issuer is {}", certificate.issuer_string()),
        });
    }
    verify_signature(certificate, ca.public_key()).map_err(|error| match error {
        Error::BadSignature | Error::AlgorithmKeyMismatch { .. } => Error::NotSignedByIssuer {
            ca_subject: ca.subject_string(),
            reason: match error {
                Error::BadSignature => "the signature does not verify with the ca key".to_owned(),
                other => other.to_string(),
            },
        },
        other => other,
    })
}

fn check_validity(certificate: &Certificate, role: CertificateRole, now: OffsetDateTime) -> Result<(), Error> {
    if now < certificate.not_before() {
        return Err(Error::NotYetValid {
            role,
            subject: certificate.subject_string(),
            not_before: certificate.not_before(),
        });
    }
    if now > certificate.not_after() {
        return Err(Error::Expired { role, subject: certificate.subject_string(), not_after: certificate.not_after() });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use time::Duration;

    use super::*;
    use crate::test_support::*;
    use crate::{GeneratedKeyPair, Issuer, KeyAlgorithm, PublicKey};

    const DEVICE_VALIDITY: Duration = Duration::days(30);

    fn check(got: Result<(), Error>, expected: Result<(), &str>) {
        assert_eq!(got.map_err(|error| error.to_string()), expected.map_err(str::to_owned));
    }

    fn device_key() -> PublicKey {
        GeneratedKeyPair::generate(KeyAlgorithm::EcdsaP256).expect("keygen").public_key().clone()
    }

    fn device(ca: &Issuer, common_name: &str) -> Certificate {
        ca.issue_for_key(&device_key(), common_name, DEVICE_VALIDITY, NOW).expect("issues")
    }

    /// A CA built by rcgen with the given extensions, to reach shapes `generate_root` never makes.
    fn rcgen_ca(
        is_ca: rcgen::IsCa,
        key_usages: Vec<rcgen::KeyUsagePurpose>,
        algorithm: &'static rcgen::SignatureAlgorithm,
    ) -> Certificate {
        let key_pair = rcgen::KeyPair::generate_for(algorithm).expect("keygen");
        let mut params = rcgen::CertificateParams::default();
        params.distinguished_name = rcgen::DistinguishedName::new();
        params.distinguished_name.push(rcgen::DnType::CommonName, "Odd CA");
        params.is_ca = is_ca;
        params.key_usages = key_usages;
        params.not_before = NOW;
        params.not_after = NOW + CA_VALIDITY;
        Certificate::from_der(params.self_signed(&key_pair).expect("self-signed").der().to_vec()).expect("parses")
    }

    fn unconstrained() -> rcgen::IsCa {
        rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained)
    }

    #[test]
    fn ca_good_root() {
        check(check_ca_certificate(p256_ca().certificate(), NOW), Ok(()));
    }

    #[test]
    fn ca_rsa_root() {
        check(check_ca_certificate(rsa_ca().certificate(), NOW), Ok(()));
    }

    #[test]
    fn ca_p521_root_without_key_usage() {
        check(check_ca_certificate(p521_ca().certificate(), NOW), Ok(()));
    }

    #[test]
    fn ca_device_certificate_refused() {
        check(
            check_ca_certificate(&device(p256_ca(), "device-1"), NOW),
            Err("certificate CN=device-1 is not a ca: basicConstraints CA:TRUE is missing"),
        );
    }

    #[test]
    fn ca_without_basic_constraints_refused() {
        let certificate =
            rcgen_ca(rcgen::IsCa::NoCa, vec![rcgen::KeyUsagePurpose::KeyCertSign], &rcgen::PKCS_ECDSA_P256_SHA256);
        check(
            check_ca_certificate(&certificate, NOW),
            Err("certificate CN=Odd CA is not a ca: basicConstraints CA:TRUE is missing"),
        );
    }

    #[test]
    fn ca_key_usage_without_cert_sign_refused() {
        let certificate =
            rcgen_ca(unconstrained(), vec![rcgen::KeyUsagePurpose::DigitalSignature], &rcgen::PKCS_ECDSA_P256_SHA256);
        check(
            check_ca_certificate(&certificate, NOW),
            Err("ca certificate CN=Odd CA may not sign certificates: its keyUsage lacks keyCertSign"),
        );
    }

    #[test]
    fn ca_expired_refused() {
        let after = NOW + CA_VALIDITY + Duration::SECOND;
        check(
            check_ca_certificate(p256_ca().certificate(), after),
            Err("ca certificate CN=Test Root, O=certfleet expired at 2035-05-30T12:00:00Z"),
        );
    }

    #[test]
    fn ca_not_yet_valid_refused() {
        check(
            check_ca_certificate(p256_ca().certificate(), NOW - Duration::DAY),
            Err("ca certificate CN=Test Root, O=certfleet is not valid before 2025-06-01T12:00:00Z"),
        );
    }

    #[test]
    fn ca_ed25519_key_refused() {
        let certificate = rcgen_ca(unconstrained(), vec![rcgen::KeyUsagePurpose::KeyCertSign], &rcgen::PKCS_ED25519);
        check(check_ca_certificate(&certificate, NOW), Err("ed25519 keys are not accepted"));
    }

    const CODE: &str = "2f1a6ad3cdb2ac36b07e58a1a0f4fef3c7fd0e1b1c3b7e1f6b2e0d0a5c9e8f7d";

    #[test]
    fn verification_good() {
        check(check_verification_certificate(p256_ca().certificate(), &device(p256_ca(), CODE), CODE, NOW), Ok(()));
    }

    #[test]
    fn verification_rsa_ca_good() {
        check(check_verification_certificate(rsa_ca().certificate(), &device(rsa_ca(), CODE), CODE, NOW), Ok(()));
    }

    #[test]
    fn verification_wrong_code_refused() {
        let verification = device(p256_ca(), "someone else's code");
        check(
            check_verification_certificate(p256_ca().certificate(), &verification, CODE, NOW),
            Err(
                r#"the verification certificate's common name Some("someone else's code") is not the registration code"#,
            ),
        );
    }

    #[test]
    fn verification_code_is_case_sensitive() {
        let verification = device(p256_ca(), &CODE.to_uppercase());
        let got = check_verification_certificate(p256_ca().certificate(), &verification, CODE, NOW);
        assert!(matches!(got, Err(Error::RegistrationCodeMismatch { .. })), "{got:?}");
    }

    #[test]
    fn verification_signed_by_another_key_refused() {
        let impostor =
            Issuer::generate_root("Test Root", "certfleet", CA_VALIDITY, KeyAlgorithm::EcdsaP256, NOW).expect("root");
        assert_eq!(impostor.certificate().subject_der(), p256_ca().certificate().subject_der());
        check(
            check_verification_certificate(p256_ca().certificate(), &device(&impostor, CODE), CODE, NOW),
            Err(
                "certificate is not signed by the ca CN=Test Root, O=certfleet: the signature does not verify with the ca key",
            ),
        );
    }

    #[test]
    fn verification_signed_by_another_key_type_refused() {
        check(
            check_verification_certificate(p256_ca().certificate(), &device(rsa_ca(), CODE), CODE, NOW),
            Err(
                "certificate is not signed by the ca CN=Test Root, O=certfleet: sha256WithRSAEncryption signatures cannot be verified with an ec P-256 key",
            ),
        );
    }

    #[test]
    fn verification_issued_by_another_name_refused() {
        check(
            check_verification_certificate(p521_ca().certificate(), &device(p256_ca(), CODE), CODE, NOW),
            Err("certificate is not signed by the ca CN=Test P-521 Root: its issuer is CN=Test Root, O=certfleet"),
        );
    }

    #[test]
    fn verification_expired_refused() {
        let after = NOW + DEVICE_VALIDITY + Duration::SECOND;
        check(
            check_verification_certificate(p256_ca().certificate(), &device(p256_ca(), CODE), CODE, after),
            Err(&format!("verification certificate CN={CODE} expired at 2025-07-01T12:00:00Z")),
        );
    }

    #[test]
    fn issued_by_right_ca() {
        check(check_issued_by(&device(p384_ca(), "device-1"), p384_ca().certificate(), NOW), Ok(()));
    }

    #[test]
    fn issued_by_same_name_other_key_refused() {
        let impostor =
            Issuer::generate_root("Test Root", "certfleet", CA_VALIDITY, KeyAlgorithm::EcdsaP384, NOW).expect("root");
        check(
            check_issued_by(&device(&impostor, "device-1"), p384_ca().certificate(), NOW),
            Err(
                "certificate is not signed by the ca CN=Test Root, O=certfleet: the signature does not verify with the ca key",
            ),
        );
    }

    #[test]
    fn issued_by_device_expired_refused() {
        let after = NOW + DEVICE_VALIDITY + Duration::SECOND;
        check(
            check_issued_by(&device(p256_ca(), "device-1"), p256_ca().certificate(), after),
            Err("device certificate CN=device-1 expired at 2025-07-01T12:00:00Z"),
        );
    }

    #[test]
    fn issued_by_device_not_yet_valid_refused() {
        let issued =
            p256_ca().issue_for_key(&device_key(), "device-1", DEVICE_VALIDITY, NOW + Duration::DAY).expect("issues");
        check(
            check_issued_by(&issued, p256_ca().certificate(), NOW),
            Err("device certificate CN=device-1 is not valid before 2025-06-02T12:00:00Z"),
        );
    }

    #[test]
    fn issued_by_expired_ca_refused() {
        let short_lived =
            Issuer::generate_root("Short", "", Duration::DAY, KeyAlgorithm::EcdsaP256, NOW).expect("root");
        let at = NOW + Duration::days(2);
        check(
            check_issued_by(&device(&short_lived, "device-1"), short_lived.certificate(), at),
            Err("ca certificate CN=Short expired at 2025-06-02T12:00:00Z"),
        );
    }

    #[test]
    fn issued_by_a_leaf_refused() {
        let (leaf, leaf_key) = p256_ca()
            .issue_server_certificate("not-a-ca", &[], CA_VALIDITY, KeyAlgorithm::EcdsaP256, NOW)
            .expect("issues");
        let leaf_issuer = Issuer::from_parts(leaf, &leaf_key).expect("pairs");
        check(
            check_issued_by(&device(&leaf_issuer, "device-1"), leaf_issuer.certificate(), NOW),
            Err("certificate CN=not-a-ca is not a ca: basicConstraints CA:TRUE is missing"),
        );
    }

    #[test]
    fn issued_by_dsa_signature_refused() {
        let issued = device(rsa_ca(), "device-1");
        let algorithm = algorithm_identifier(DSA_SHA256, None);
        let der = resign(issued.der(), &algorithm, |_| vec![0x5a; 64]);
        let certificate = Certificate::from_der(der).expect("parses");
        check(
            check_issued_by(&certificate, rsa_ca().certificate(), NOW),
            Err("dsa-with-sha256 signatures are not supported"),
        );
    }
}
