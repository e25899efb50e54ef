//! The audit scenario, small: 2,000 seeded certificates, 1% of them expired or expiring, must
//! come out of DEVICE_CERTIFICATE_EXPIRING_CHECK as 2,000 scanned and exactly those 20 found,
//! on SQLite always and on PostgreSQL when `CERTFLEET_TEST_POSTGRES_URL` is set (a visible SKIP
//! line otherwise). The seeded rows must look like RegisterCertificate's.

use std::sync::atomic::{AtomicU32, Ordering};

use certfleet_loadgen::audit::{Options, StoreSpec, run};
use certfleet_registry::{
    self as registry, AuditFindingFilter, CertificateMode, CertificateStatus, PageRequest, PostgresStore,
};
use time::{Duration, OffsetDateTime};

fn unique(label: &str) -> String {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    format!("{label}_{}_{}", std::process::id(), NEXT.fetch_add(1, Ordering::Relaxed))
}

fn options(store: StoreSpec, reuse: bool) -> Options {
    Options { store, certificates: 2_000, expiring_fraction: 0.01, reuse, threads: 2, no_vacuum: false }
}

/// Seeds, checks the figures and the stored rows and findings, then times the check again over
/// the same account with `reuse`.
fn seeds_and_checks(store: StoreSpec) {
    let report = run(&options(store.clone(), false)).unwrap();
    assert!(report.seeding.seeded);
    assert_eq!((report.seeding.certificates, report.seeding.expiring), (2_000, 20));
    assert_eq!((report.check.scanned, report.check.findings), (2_000, 20));
    let json = report.to_json();
    assert_eq!(json["certificates_scanned"], 2_000);
    assert_eq!(json["findings"], 20);
    assert!(report.to_table().contains("2000"));

    let opened = store.open().unwrap();
    let account = report.seeding.account.clone();
    let now = OffsetDateTime::now_utc();
    let (certificates, findings) = registry::read(&*opened, |tx| {
        let page = tx.list_certificates(&account, &PageRequest { limit: 250, ascending: true, after: None })?;
        let filter = AuditFindingFilter { task_id: Some(report.check.task_id.clone()), ..Default::default() };
        let findings = tx.list_audit_findings(&account, &filter, None, 100)?;
        Ok::<_, registry::Error>((page.items, findings.items))
    })
    .unwrap();
    assert!(!certificates.is_empty());
    for certificate in &certificates {
        let parsed = certfleet_pki::Certificate::from_pem(&certificate.pem).unwrap();
        assert_eq!(parsed.id(), &certificate.id, "the ID is the SHA-256 of the DER");
        assert_eq!((parsed.not_before(), parsed.not_after()), (certificate.not_before, certificate.not_after));
        assert_eq!(certificate.status, CertificateStatus::Active);
        assert_eq!(certificate.mode, CertificateMode::Default);
        assert!(certificate.ca_certificate_id.is_some());
        assert_eq!(certificate.customer_version, 1);
    }
    assert_eq!(findings.len(), 20);
    let past = findings.iter().filter(|finding| finding.reason_code == "CERTIFICATE_PAST_EXPIRATION").count();
    assert_eq!(past, 10, "half the expiring certificates have expired");
    for finding in &findings {
        let certificate = registry::read(&*opened, |tx| {
            let id = certfleet_pki::CertificateId::parse(&finding.resource.id.key()).unwrap();
            tx.get_certificate(&account, &id)
        })
        .unwrap()
        .expect("a finding names a seeded certificate");
        assert!(certificate.not_after <= now + Duration::days(30));
    }

    let again = run(&options(store, true)).unwrap();
    assert!(!again.seeding.seeded);
    assert_eq!(again.seeding.account, account);
    assert_eq!((again.check.scanned, again.check.findings), (2_000, 20));
}

#[test]
fn seeding_and_the_expiring_check_on_sqlite() {
    let dir = std::env::temp_dir().join(format!("certfleet-loadgen-{}", unique("audit")));
    std::fs::create_dir_all(&dir).unwrap();
    seeds_and_checks(StoreSpec::Sqlite(dir.join("registry.db")));
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn seeding_and_the_expiring_check_on_postgres() {
    let Ok(url) = std::env::var("CERTFLEET_TEST_POSTGRES_URL") else {
        eprintln!("SKIP: the audit scenario on postgres: CERTFLEET_TEST_POSTGRES_URL is not set");
        return;
    };
    let schema = format!("cf_test_{}", unique("loadgen_audit"));
    seeds_and_checks(StoreSpec::Postgres { url: url.clone(), schema: Some(schema.clone()) });
    PostgresStore::open(&url, Some(&schema)).unwrap().drop_schema().unwrap();
}
