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
        let (rest, request) = X509CertificationRequest::from_der(der).map_err(|error| malformed(error.to_string()))?;
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

#[cfg(test)]
mod tests {
    use aws_lc_rs::encoding::{AsDer, PublicKeyX509Der};
    use aws_lc_rs::rand::SystemRandom;
    use aws_lc_rs::signature::{self as aws, EcdsaKeyPair, KeyPair as _, UnparsedPublicKey};
    use rcgen::PublicKeyData;

    use super::*;
    use crate::test_support::*;
    use crate::{Curve, GeneratedKeyPair, KeyAlgorithm, KeyKind, pem_encode};

    fn check(text: &str, expected: Result<(KeyKind, &str), &str>) {
        match (Csr::from_pem(text), expected) {
            (Ok(csr), Ok((kind, subject))) => {
                assert_eq!((csr.public_key().kind(), csr.subject_string().as_str()), (&kind, subject))
            }
            (Err(error), Err(message)) => assert_eq!(error.to_string(), message),
            (got, want) => panic!("got {got:?}, want {want:?}"),
        }
    }

    fn check_der(der: &[u8], expected: Result<(KeyKind, &str), &str>) {
        check(&pem_encode("CERTIFICATE REQUEST", der), expected);
    }

    fn p256_csr_der() -> Vec<u8> {
        pem::pem_decode(&rcgen_csr(&rcgen::PKCS_ECDSA_P256_SHA256, "thing-1"), &["CERTIFICATE REQUEST"]).expect("pem")
    }

    fn thing_1() -> Vec<u8> {
        encode_name(&[(COMMON_NAME, "thing-1")])
    }

    fn rsa_device_spki() -> Vec<u8> {
        rcgen::KeyPair::try_from(rsa_device_pkcs8()).expect("loads").subject_public_key_info()
    }

    #[test]
    fn p256_accepted() {
        check(&rcgen_csr(&rcgen::PKCS_ECDSA_P256_SHA256, "thing-1"), Ok((KeyKind::Ec(Curve::P256), "CN=thing-1")));
    }

    #[test]
    fn p384_accepted() {
        check(&rcgen_csr(&rcgen::PKCS_ECDSA_P384_SHA384, "thing-1"), Ok((KeyKind::Ec(Curve::P384), "CN=thing-1")));
    }

    #[test]
    fn p521_accepted() {
        check(&rcgen_csr(&rcgen::PKCS_ECDSA_P521_SHA512, "thing-1"), Ok((KeyKind::Ec(Curve::P521), "CN=thing-1")));
    }

    #[test]
    fn rsa_2048_accepted() {
        check(&rcgen_csr(&rcgen::PKCS_RSA_SHA256, "thing-1"), Ok((KeyKind::Rsa { bits: 2048 }, "CN=thing-1")));
    }

    #[test]
    fn new_certificate_request_label_accepted() {
        check(&pem_encode("NEW CERTIFICATE REQUEST", &p256_csr_der()), Ok((KeyKind::Ec(Curve::P256), "CN=thing-1")));
    }

    #[test]
    fn certificate_label_refused() {
        check(
            &pem_encode("CERTIFICATE", &p256_csr_der()),
            Err(r#"pem block is labelled "CERTIFICATE": expected "CERTIFICATE REQUEST or NEW CERTIFICATE REQUEST""#),
        );
    }

    #[test]
    fn ed25519_refused() {
        check(&rcgen_csr(&rcgen::PKCS_ED25519, "thing-1"), Err("ed25519 keys are not accepted"));
    }

    #[test]
    fn rsa_1024_refused() {
        let der =
            build_csr(&thing_1(), &fake_rsa_spki(1024), &algorithm_identifier(SHA256_WITH_RSA, Some(NULL)), |_| {
                vec![0x5a; 128]
            });
        check_der(&der, Err("rsa key of 1024 bits is too small: at least 2048 bits are required"));
    }

    /// The same shape as the RSA-1024 request with a 2048-bit modulus fails on its signature:
    /// the 1024-bit refusal above comes from the key rules, which run first.
    #[test]
    fn rsa_2048_fake_key_reaches_the_signature_check() {
        let der =
            build_csr(&thing_1(), &fake_rsa_spki(2048), &algorithm_identifier(SHA256_WITH_RSA, Some(NULL)), |_| {
                vec![0x5a; 256]
            });
        check_der(&der, Err("the signature does not verify"));
    }

    #[test]
    fn secp256k1_refused_although_correctly_signed() {
        let key_pair = EcdsaKeyPair::generate(&aws::ECDSA_P256K1_SHA256_ASN1_SIGNING).expect("keygen");
        let spki: PublicKeyX509Der<'static> = key_pair.public_key().as_der().expect("spki");
        let mut produced = (Vec::new(), Vec::new());
        let der = build_csr(&thing_1(), spki.as_ref(), &algorithm_identifier(ECDSA_SHA256, None), |info| {
            let signature = key_pair.sign(&SystemRandom::new(), info).expect("signs").as_ref().to_vec();
            produced = (info.to_vec(), signature.clone());
            signature
        });
        let verifier = UnparsedPublicKey::new(&aws::ECDSA_P256K1_SHA256_ASN1, key_pair.public_key().as_ref());
        assert!(verifier.verify(&produced.0, &produced.1).is_ok(), "the test request is genuinely signed");
        check_der(&der, Err("ec key on curve secp256k1 is not accepted: only P-256, P-384 and P-521"));
    }

    #[test]
    fn tampered_signature_refused() {
        let mut der = p256_csr_der();
        let last = der.len() - 1;
        der[last] ^= 1;
        check_der(&der, Err("the signature does not verify"));
    }

    #[test]
    fn tampered_subject_refused() {
        let der = p256_csr_der();
        let at = der.windows(7).position(|window| window == b"thing-1").expect("subject");
        let mut tampered = der.clone();
        tampered[at + 6] = b'2';
        check_der(&tampered, Err("the signature does not verify"));
    }

    #[test]
    fn sha1_signature_refused() {
        let der = build_csr(&thing_1(), &rsa_device_spki(), &algorithm_identifier(SHA1_WITH_RSA, Some(NULL)), |_| {
            vec![0x5a; 256]
        });
        check_der(&der, Err("sha1WithRSAEncryption signatures are not accepted: the hash is broken"));
    }

    #[test]
    fn dsa_signature_refused() {
        let der =
            build_csr(&thing_1(), &rsa_device_spki(), &algorithm_identifier(DSA_SHA256, None), |_| vec![0x5a; 64]);
        check_der(&der, Err("dsa-with-sha256 signatures are not supported"));
    }

    #[test]
    fn rsa_pss_signed_request_accepted() {
        let der = build_csr(&thing_1(), &rsa_device_spki(), &pss_identifier(SHA256, SHA256, 32), |info| {
            rsa_sign(rsa_device_pkcs8(), &aws::RSA_PSS_SHA256, info)
        });
        check_der(&der, Ok((KeyKind::Rsa { bits: 2048 }, "CN=thing-1")));
    }

    #[test]
    fn multi_attribute_subject_accepted() {
        let key = GeneratedKeyPair::generate(KeyAlgorithm::EcdsaP256).expect("keygen");
        let subject = encode_name(&[(COMMON_NAME, "thing-1"), (ORGANIZATIONAL_UNIT, "a"), (ORGANIZATIONAL_UNIT, "b")]);
        let der = build_csr(&subject, key.public_key().spki_der(), &algorithm_identifier(ECDSA_SHA256, None), |info| {
            ecdsa_sign(key.pkcs8_der(), &aws::ECDSA_P256_SHA256_ASN1_SIGNING, info)
        });
        check_der(&der, Ok((KeyKind::Ec(Curve::P256), "CN=thing-1, OU=a, OU=b")));
    }

    #[test]
    fn trailing_bytes_refused() {
        let mut der = p256_csr_der();
        der.push(0);
        let error = Csr::from_der(&der).expect_err("trailing byte");
        assert_eq!(error.to_string(), "malformed certificate request: trailing bytes after the request");
    }

    #[test]
    fn garbage_der_refused() {
        let error = Csr::from_der(b"\x30\x03\x02\x01\x00").expect_err("not a request");
        assert!(error.to_string().starts_with("malformed certificate request: "), "{error}");
    }

    #[test]
    fn debug_shows_subject_and_key_type() {
        let csr = Csr::from_der(&p256_csr_der()).expect("parses");
        assert_eq!(
            format!("{csr:?}"),
            "Csr { subject: \"CN=thing-1\", key: Ec(P256), signature_algorithm: EcdsaSha256, .. }"
        );
    }
}
