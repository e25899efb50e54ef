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
