//! Test material made at run time (keys, CSRs, certificates), and DER builders for the shapes
//! the public API refuses to make. No key material is committed.

use std::sync::OnceLock;

use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::signature::{self, EcdsaKeyPair, RsaKeyPair};
use time::macros::datetime;
use time::{Duration, OffsetDateTime};

use crate::der::{self, SEQUENCE};
use crate::{Issuer, KeyAlgorithm};

/// The instant every test runs at.
pub(crate) const NOW: OffsetDateTime = datetime!(2025-06-01 12:00:00 UTC);

/// How long test CAs are valid.
pub(crate) const CA_VALIDITY: Duration = Duration::days(3650);

pub(crate) const RSA_ENCRYPTION: &[u64] = &[1, 2, 840, 113549, 1, 1, 1];
pub(crate) const EC_PUBLIC_KEY: &[u64] = &[1, 2, 840, 10045, 2, 1];
pub(crate) const SECP256K1: &[u64] = &[1, 3, 132, 0, 10];
pub(crate) const SHA1_WITH_RSA: &[u64] = &[1, 2, 840, 113549, 1, 1, 5];
pub(crate) const MD5_WITH_RSA: &[u64] = &[1, 2, 840, 113549, 1, 1, 4];
pub(crate) const SHA256_WITH_RSA: &[u64] = &[1, 2, 840, 113549, 1, 1, 11];
pub(crate) const SHA384_WITH_RSA: &[u64] = &[1, 2, 840, 113549, 1, 1, 12];
pub(crate) const SHA512_WITH_RSA: &[u64] = &[1, 2, 840, 113549, 1, 1, 13];
pub(crate) const RSASSA_PSS: &[u64] = &[1, 2, 840, 113549, 1, 1, 10];
pub(crate) const MGF1: &[u64] = &[1, 2, 840, 113549, 1, 1, 8];
pub(crate) const ECDSA_SHA1: &[u64] = &[1, 2, 840, 10045, 4, 1];
pub(crate) const ECDSA_SHA256: &[u64] = &[1, 2, 840, 10045, 4, 3, 2];
pub(crate) const ECDSA_SHA384: &[u64] = &[1, 2, 840, 10045, 4, 3, 3];
pub(crate) const ECDSA_SHA512: &[u64] = &[1, 2, 840, 10045, 4, 3, 4];
pub(crate) const DSA_SHA256: &[u64] = &[2, 16, 840, 1, 101, 3, 4, 3, 2];
pub(crate) const ED25519: &[u64] = &[1, 3, 101, 112];
pub(crate) const SHA1: &[u64] = &[1, 3, 14, 3, 2, 26];
pub(crate) const SHA256: &[u64] = &[2, 16, 840, 1, 101, 3, 4, 2, 1];
pub(crate) const SHA384: &[u64] = &[2, 16, 840, 1, 101, 3, 4, 2, 2];
pub(crate) const SHA512: &[u64] = &[2, 16, 840, 1, 101, 3, 4, 2, 3];
pub(crate) const COMMON_NAME: &[u64] = &[2, 5, 4, 3];
pub(crate) const ORGANIZATIONAL_UNIT: &[u64] = &[2, 5, 4, 11];

/// An OBJECT IDENTIFIER.
pub(crate) fn oid(arcs: &[u64]) -> Vec<u8> {
    let mut content = vec![(arcs[0] * 40 + arcs[1]) as u8];
    for &arc in &arcs[2..] {
        let mut groups = vec![(arc & 0x7f) as u8];
        let mut rest = arc >> 7;
        while rest > 0 {
            groups.push((rest & 0x7f) as u8 | 0x80);
            rest >>= 7;
        }
        content.extend(groups.iter().rev());
    }
    der::write(0x06, &content)
}

/// An AlgorithmIdentifier with optional parameters (already encoded).
pub(crate) fn algorithm_identifier(arcs: &[u64], parameters: Option<&[u8]>) -> Vec<u8> {
    match parameters {
        Some(parameters) => der::write_constructed(SEQUENCE, &[&oid(arcs), parameters]),
        None => der::write_constructed(SEQUENCE, &[&oid(arcs)]),
    }
}

/// NULL.
pub(crate) const NULL: &[u8] = &[0x05, 0x00];

/// RSASSA-PSS-params with explicit hash, MGF1 hash and salt length.
pub(crate) fn pss_identifier(hash: &[u64], mgf_hash: &[u64], salt_length: u8) -> Vec<u8> {
    let hash = der::write(0xa0, &algorithm_identifier(hash, Some(NULL)));
    let mask = der::write(0xa1, &algorithm_identifier(MGF1, Some(&algorithm_identifier(mgf_hash, Some(NULL)))));
    let salt = der::write(0xa2, &der::write(0x02, &[salt_length]));
    algorithm_identifier(RSASSA_PSS, Some(&der::write_constructed(SEQUENCE, &[&hash, &mask, &salt])))
}

/// A SubjectPublicKeyInfo with the given algorithm, optional curve parameter and key bits.
pub(crate) fn spki_with_algorithm(algorithm: &[u64], curve: Option<&[u64]>, key_bits: &[u8]) -> Vec<u8> {
    let identifier = match curve {
        Some(curve) => algorithm_identifier(algorithm, Some(&oid(curve))),
        None => algorithm_identifier(algorithm, Some(NULL)),
    };
    der::write_constructed(SEQUENCE, &[&identifier, &der::write_bit_string(key_bits)])
}

/// An RSA SubjectPublicKeyInfo whose modulus has exactly `bits` bits (not a real key: no
/// private key exists for it; the key rules look at its size only).
pub(crate) fn fake_rsa_spki(bits: u32) -> Vec<u8> {
    let bytes = bits.div_ceil(8) as usize;
    let mut modulus = vec![0xa5; bytes];
    let top_bits = bits - (bytes as u32 - 1) * 8;
    modulus[0] = 0xff >> (8 - top_bits);
    modulus[bytes - 1] |= 1;
    if modulus[0] & 0x80 != 0 {
        modulus.insert(0, 0);
    }
    let rsa_public_key =
        der::write_constructed(SEQUENCE, &[&der::write(0x02, &modulus), &der::write(0x02, &[1, 0, 1])]);
    spki_with_algorithm(RSA_ENCRYPTION, None, &rsa_public_key)
}

/// A Name with one UTF8String attribute per RDN, in order.
pub(crate) fn encode_name(attributes: &[(&[u64], &str)]) -> Vec<u8> {
    let rdns: Vec<Vec<u8>> = attributes
        .iter()
        .map(|(arcs, value)| {
            let attribute = der::write_constructed(SEQUENCE, &[&oid(arcs), &der::write(0x0c, value.as_bytes())]);
            der::write(0x31, &attribute)
        })
        .collect();
    let parts: Vec<&[u8]> = rdns.iter().map(Vec::as_slice).collect();
    der::write_constructed(SEQUENCE, &parts)
}

/// A PKCS#10 request assembled by hand and signed by `sign` over the request info.
pub(crate) fn build_csr(subject: &[u8], spki: &[u8], algorithm: &[u8], sign: impl FnOnce(&[u8]) -> Vec<u8>) -> Vec<u8> {
    let info = der::write_constructed(SEQUENCE, &[&der::write(0x02, &[0]), subject, spki, &der::write(0xa0, &[])]);
    let signature = sign(&info);
    der::join_signed(&info, algorithm, &signature)
}

/// Rebuilds a certificate: `edit` changes the raw TBSCertificate fields ([0] version, serial,
/// signature, issuer, validity, subject, spki, [3] extensions), `algorithm` goes into the outer
/// AlgorithmIdentifier, and `sign` signs the new TBSCertificate.
pub(crate) fn rebuild(
    certificate: &[u8],
    edit: impl FnOnce(&mut Vec<Vec<u8>>),
    algorithm: &[u8],
    sign: impl FnOnce(&[u8]) -> Vec<u8>,
) -> Vec<u8> {
    let signed = der::split_signed(certificate).expect("a certificate");
    let mut fields: Vec<Vec<u8>> = der::read_all(signed.to_be_signed.content)
        .expect("tbs fields")
        .iter()
        .map(|field| field.raw.to_vec())
        .collect();
    edit(&mut fields);
    let parts: Vec<&[u8]> = fields.iter().map(Vec::as_slice).collect();
    let to_be_signed = der::write_constructed(SEQUENCE, &parts);
    let signature = sign(&to_be_signed);
    der::join_signed(&to_be_signed, algorithm, &signature)
}

/// Re-signs a certificate with another algorithm (written in both places).
pub(crate) fn resign(certificate: &[u8], algorithm: &[u8], sign: impl FnOnce(&[u8]) -> Vec<u8>) -> Vec<u8> {
    rebuild(certificate, |fields| fields[2] = algorithm.to_vec(), algorithm, sign)
}

/// Signs with an RSA PKCS#8 key and the given padding.
pub(crate) fn rsa_sign(pkcs8: &[u8], padding: &'static dyn signature::RsaEncoding, message: &[u8]) -> Vec<u8> {
    let key_pair = RsaKeyPair::from_pkcs8(pkcs8).expect("an rsa key");
    let mut signature = vec![0; key_pair.public_modulus_len()];
    key_pair.sign(padding, &SystemRandom::new(), message, &mut signature).expect("signs");
    signature
}

/// Signs with an EC PKCS#8 key.
pub(crate) fn ecdsa_sign(
    pkcs8: &[u8],
    algorithm: &'static signature::EcdsaSigningAlgorithm,
    message: &[u8],
) -> Vec<u8> {
    let key_pair = EcdsaKeyPair::from_pkcs8(algorithm, pkcs8).expect("an ec key");
    key_pair.sign(&SystemRandom::new(), message).expect("signs").as_ref().to_vec()
}

/// A CSR made by rcgen for a new key of the given algorithm, with subject CN=`common_name`.
pub(crate) fn rcgen_csr(algorithm: &'static rcgen::SignatureAlgorithm, common_name: &str) -> String {
    let key_pair = match algorithm {
        algorithm if *algorithm == rcgen::PKCS_RSA_SHA256 => {
            rcgen::KeyPair::try_from(rsa_device_pkcs8()).expect("loads")
        }
        algorithm => rcgen::KeyPair::generate_for(algorithm).expect("keygen"),
    };
    let mut params = rcgen::CertificateParams::default();
    params.distinguished_name = rcgen::DistinguishedName::new();
    params.distinguished_name.push(rcgen::DnType::CommonName, common_name);
    params.serialize_request(&key_pair).expect("csr").pem().expect("pem")
}

/// One RSA-2048 device key (PKCS#8) shared by all tests: RSA key generation is slow.
pub(crate) fn rsa_device_pkcs8() -> &'static [u8] {
    static KEY: OnceLock<Vec<u8>> = OnceLock::new();
    KEY.get_or_init(|| crate::GeneratedKeyPair::generate(KeyAlgorithm::Rsa2048).expect("keygen").pkcs8_der().to_vec())
}

fn root(key: KeyAlgorithm) -> Issuer {
    Issuer::generate_root("Test Root", "certfleet", CA_VALIDITY, key, NOW).expect("root")
}

/// A P-256 root CA "CN=Test Root, O=certfleet", valid from [`NOW`] for [`CA_VALIDITY`].
pub(crate) fn p256_ca() -> &'static Issuer {
    static CA: OnceLock<Issuer> = OnceLock::new();
    CA.get_or_init(|| root(KeyAlgorithm::EcdsaP256))
}

/// A P-384 root CA like [`p256_ca`].
pub(crate) fn p384_ca() -> &'static Issuer {
    static CA: OnceLock<Issuer> = OnceLock::new();
    CA.get_or_init(|| root(KeyAlgorithm::EcdsaP384))
}

/// An RSA-2048 root CA like [`p256_ca`].
pub(crate) fn rsa_ca() -> &'static Issuer {
    static CA: OnceLock<Issuer> = OnceLock::new();
    CA.get_or_init(|| root(KeyAlgorithm::Rsa2048))
}

/// A P-521 root CA made by rcgen and loaded with [`Issuer::from_parts`].
pub(crate) fn p521_ca() -> &'static Issuer {
    static CA: OnceLock<Issuer> = OnceLock::new();
    CA.get_or_init(|| {
        let key_pair = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P521_SHA512).expect("keygen");
        let mut params = rcgen::CertificateParams::default();
        params.distinguished_name = rcgen::DistinguishedName::new();
        params.distinguished_name.push(rcgen::DnType::CommonName, "Test P-521 Root");
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params.not_before = NOW;
        params.not_after = NOW + CA_VALIDITY;
        let built = params.self_signed(&key_pair).expect("self-signed");
        let certificate = crate::Certificate::from_der(built.der().to_vec()).expect("parses");
        Issuer::from_parts(certificate, key_pair.serialized_der()).expect("pairs")
    })
}
