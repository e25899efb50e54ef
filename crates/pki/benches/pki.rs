//! Benchmarks of the hot paths: CSR checks and issuing (rotation, CreateCertificateFromCsr),
//! certificate parsing and ids (every TLS connection and API call).

use std::hint::black_box;

use certfleet_pki::{Certificate, CertificateId, Csr, Issuer, KeyAlgorithm};
use criterion::{Criterion, criterion_group, criterion_main};
use time::macros::datetime;
use time::{Duration, OffsetDateTime};

const NOW: OffsetDateTime = datetime!(2025-06-01 12:00:00 UTC);

fn p256_csr_pem() -> String {
    let key_pair = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).expect("keygen");
    let mut params = rcgen::CertificateParams::default();
    params.distinguished_name = rcgen::DistinguishedName::new();
    params.distinguished_name.push(rcgen::DnType::CommonName, "thing-1");
    params.serialize_request(&key_pair).expect("csr").pem().expect("pem")
}

fn benches(c: &mut Criterion) {
    let csr_pem = p256_csr_pem();
    let ca = Issuer::generate_root("Bench Root", "certfleet", Duration::days(3650), KeyAlgorithm::EcdsaP256, NOW)
        .expect("root");
    let csr = Csr::from_pem(&csr_pem).expect("csr");
    let issued = ca.issue_from_csr(&csr, Duration::days(30), NOW).expect("issues");
    let issued_pem = issued.to_pem();

    c.bench_function("csr_from_pem_p256", |b| b.iter(|| Csr::from_pem(black_box(&csr_pem))));
    c.bench_function("issue_from_csr_p256_ca", |b| {
        b.iter(|| ca.issue_from_csr(black_box(&csr), Duration::days(30), NOW))
    });
    c.bench_function("certificate_from_pem", |b| b.iter(|| Certificate::from_pem(black_box(&issued_pem))));
    c.bench_function("certificate_id_of_der", |b| b.iter(|| CertificateId::of_der(black_box(issued.der()))));
}

criterion_group!(pki, benches);
criterion_main!(pki);
