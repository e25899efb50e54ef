//! The audit tables on every backend (SQLite always, PostgreSQL when
//! `CERTFLEET_TEST_POSTGRES_URL` is set): configuration, tasks and their claims, findings and
//! their filters, scheduled audits and their claims, CRLs, the checks' keyset scans, and that
//! nothing of one account is visible from another.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU32, Ordering};

use certfleet_pki::CertificateId;
use certfleet_registry::*;
use time::OffsetDateTime;
use time::macros::datetime;

fn each_backend(name: &str, scenario: impl Fn(&dyn Store)) {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let unique = format!("{}_{}_{}", name, std::process::id(), NEXT.fetch_add(1, Ordering::Relaxed));
    let dir = std::env::temp_dir().join(format!("certfleet-registry-audit-{unique}"));
    std::fs::create_dir_all(&dir).unwrap();
    let sqlite = SqliteStore::open(&dir.join("registry.db")).unwrap();
    scenario(&sqlite);
    drop(sqlite);
    std::fs::remove_dir_all(&dir).unwrap();
    match std::env::var("CERTFLEET_TEST_POSTGRES_URL") {
        Ok(url) => {
            let postgres = PostgresStore::open(&url, Some(&format!("cf_test_{unique}"))).unwrap();
            scenario(&postgres);
            postgres.drop_schema().unwrap();
        }
        Err(_) => eprintln!("SKIP: {name} on postgres: CERTFLEET_TEST_POSTGRES_URL is not set"),
    }
}

fn at(seconds: i64) -> OffsetDateTime {
    datetime!(2026-01-01 00:00 UTC) + time::Duration::seconds(seconds)
}

fn id(fill: char) -> CertificateId {
    CertificateId::parse(&fill.to_string().repeat(64)).unwrap()
}

fn accounts(store: &dyn Store) -> (AccountId, AccountId) {
    let a = AccountId::parse("111111111111").unwrap();
    let b = AccountId::parse("222222222222").unwrap();
    write(store, |tx| {
        for (account, endpoint) in [(&a, "a"), (&b, "b")] {
            tx.insert_account(&Account {
                id: account.clone(),
                endpoint_identifier: endpoint.into(),
                registration_code: None,
                created_at: at(0),
            })?;
        }
        Ok::<_, Error>(())
    })
    .unwrap();
    (a, b)
}

fn task(account: &AccountId, id: &str, started: i64) -> AuditTask {
    AuditTask {
        account: account.clone(),
        id: id.into(),
        task_type: AuditTaskType::OnDemand,
        status: AuditTaskStatus::InProgress,
        scheduled_audit_name: None,
        started_at: at(started),
        finished_at: None,
        lease_until: None,
    }
}

fn finding(
    account: &AccountId,
    id: &str,
    task: &str,
    check: &str,
    resource: AuditResourceId,
    found: i64,
) -> AuditFinding {
    AuditFinding {
        account: account.clone(),
        id: id.into(),
        task_id: task.into(),
        check_name: check.into(),
        task_started_at: at(0),
        found_at: at(found),
        severity: AuditSeverity::Medium,
        resource: AuditResource {
            id: resource,
            additional_info: BTreeMap::from([("NOT_AFTER".into(), "a=b\tc%d".into())]),
        },
        related: vec![AuditResource {
            id: AuditResourceId::ClientId("client\twith=odd%chars".into()),
            additional_info: BTreeMap::from([("CONNECTION_TIME".into(), "1560086374068".into())]),
        }],
        reason: "reason".into(),
        reason_code: "CODE".into(),
        suppressed: false,
    }
}

#[test]
fn configuration_round_trips_per_account() {
    each_backend("audit_configuration", |store| {
        let (a, b) = accounts(store);
        let config = AuditConfiguration {
            account: a.clone(),
            role_arn: Some("arn:aws:iam::111111111111:role/audit".into()),
            targets: BTreeMap::from([(
                "SNS".into(),
                AuditNotificationTarget {
                    target_arn: Some("http://127.0.0.1:1/hook".into()),
                    role_arn: None,
                    enabled: true,
                },
            )]),
            checks: BTreeMap::from([(
                "DEVICE_CERTIFICATE_EXPIRING_CHECK".into(),
                AuditCheckConfiguration {
                    enabled: true,
                    configuration: BTreeMap::from([("CERT_EXPIRATION_THRESHOLD_IN_DAYS".into(), "60".into())]),
                },
            )]),
        };
        write(store, |tx| tx.put_audit_configuration(&config, at(1))).unwrap();
        let (mine, theirs) =
            read(store, |tx| Ok::<_, Error>((tx.get_audit_configuration(&a)?, tx.get_audit_configuration(&b)?)))
                .unwrap();
        assert_eq!(mine, Some(config.clone()));
        assert_eq!(theirs, None);
        assert!(write(store, |tx| tx.delete_audit_configuration(&a)).unwrap());
        assert_eq!(read(store, |tx| tx.get_audit_configuration(&a)).unwrap(), None);
    });
}

#[test]
fn tasks_are_claimed_once_and_finish_once() {
    each_backend("audit_tasks", |store| {
        let (a, b) = accounts(store);
        write(store, |tx| {
            tx.insert_audit_task(&task(&a, "t1", 10))?;
            tx.insert_audit_task(&task(&a, "t2", 20))?;
            tx.insert_audit_task(&task(&b, "t3", 15))
        })
        .unwrap();
        let runnable = read(store, |tx| tx.runnable_audit_tasks(at(30), 10)).unwrap();
        assert_eq!(runnable.iter().map(|task| task.id.as_str()).collect::<Vec<_>>(), ["t1", "t3", "t2"]);
        // The first claim wins; a second claimer loses until the lease expires.
        assert!(write(store, |tx| tx.claim_audit_task(&a, "t1", at(30), None, at(90))).unwrap());
        assert!(!write(store, |tx| tx.claim_audit_task(&a, "t1", at(31), None, at(91))).unwrap());
        assert!(write(store, |tx| tx.claim_audit_task(&a, "t1", at(40), Some(at(90)), at(100))).unwrap());
        assert!(write(store, |tx| tx.claim_audit_task(&a, "t1", at(101), None, at(160))).unwrap());
        // The other account's task is not visible under this account.
        assert!(!write(store, |tx| tx.claim_audit_task(&a, "t3", at(30), None, at(90))).unwrap());
        assert_eq!(read(store, |tx| tx.get_audit_task(&a, "t3")).unwrap(), None);
        assert!(write(store, |tx| tx.finish_audit_task(&a, "t1", AuditTaskStatus::Canceled, at(50))).unwrap());
        assert!(!write(store, |tx| tx.finish_audit_task(&a, "t1", AuditTaskStatus::Completed, at(51))).unwrap());
        let t1 = read(store, |tx| tx.get_audit_task(&a, "t1")).unwrap().unwrap();
        assert_eq!((t1.status, t1.finished_at, t1.lease_until), (AuditTaskStatus::Canceled, Some(at(50)), None));

        let filter = AuditTaskFilter { start: at(0), end: at(100), task_type: None, status: None };
        let first = read(store, |tx| tx.list_audit_tasks(&a, &filter, None, 1)).unwrap();
        assert_eq!(first.items.iter().map(|task| task.id.as_str()).collect::<Vec<_>>(), ["t1"]);
        let second = read(store, |tx| tx.list_audit_tasks(&a, &filter, first.next.as_ref(), 1)).unwrap();
        assert_eq!(second.items.iter().map(|task| task.id.as_str()).collect::<Vec<_>>(), ["t2"]);
        assert_eq!(second.next, None);
        let canceled = AuditTaskFilter { status: Some(AuditTaskStatus::Canceled), ..filter };
        assert_eq!(read(store, |tx| tx.list_audit_tasks(&a, &canceled, None, 10)).unwrap().items.len(), 1);

        let run = AuditCheckRun {
            account: a.clone(),
            task_id: "t2".into(),
            check_name: "CA_CERTIFICATE_EXPIRING_CHECK".into(),
            status: AuditCheckRunStatus::CompletedNonCompliant,
            total_resources: 3,
            non_compliant_resources: 1,
            suppressed_non_compliant_resources: 0,
            error_code: None,
            message: None,
        };
        write(store, |tx| tx.put_audit_check_run(&run)).unwrap();
        write(store, |tx| tx.put_audit_check_run(&run)).unwrap();
        assert_eq!(read(store, |tx| tx.audit_check_runs(&a, "t2")).unwrap(), vec![run.clone()]);
        assert_eq!(read(store, |tx| tx.audit_check_runs(&b, "t2")).unwrap(), vec![]);
    });
}

#[test]
fn findings_filter_and_page() {
    each_backend("audit_findings", |store| {
        let (a, b) = accounts(store);
        let device = AuditResourceId::DeviceCertificate(id('d'));
        let policy = AuditResourceId::PolicyVersion { policy_name: "p".into(), version_id: "2".into() };
        let findings = [
            finding(&a, "f1", "t1", "DEVICE_CERTIFICATE_EXPIRING_CHECK", device.clone(), 10),
            finding(&a, "f2", "t1", "IOT_POLICY_OVERLY_PERMISSIVE_CHECK", policy.clone(), 11),
            finding(&a, "f3", "t2", "DEVICE_CERTIFICATE_EXPIRING_CHECK", device.clone(), 20),
            finding(&b, "f4", "t1", "DEVICE_CERTIFICATE_EXPIRING_CHECK", device.clone(), 10),
        ];
        write(store, |tx| findings.iter().try_for_each(|finding| tx.insert_audit_finding(finding))).unwrap();
        assert_eq!(read(store, |tx| tx.get_audit_finding(&a, "f2")).unwrap(), Some(findings[1].clone()));
        assert_eq!(read(store, |tx| tx.get_audit_finding(&a, "f4")).unwrap(), None);
        let ids = |filter: AuditFindingFilter| {
            read(store, |tx| tx.list_audit_findings(&a, &filter, None, 10))
                .unwrap()
                .items
                .into_iter()
                .map(|finding| finding.id)
                .collect::<Vec<_>>()
        };
        assert_eq!(ids(AuditFindingFilter::default()), ["f1", "f2", "f3"]);
        assert_eq!(ids(AuditFindingFilter { task_id: Some("t1".into()), ..Default::default() }), ["f1", "f2"]);
        assert_eq!(ids(AuditFindingFilter { resource: Some(device), ..Default::default() }), ["f1", "f3"]);
        assert_eq!(ids(AuditFindingFilter { resource: Some(policy), ..Default::default() }), ["f2"]);
        assert_eq!(
            ids(AuditFindingFilter {
                check_name: Some("DEVICE_CERTIFICATE_EXPIRING_CHECK".into()),
                start: Some(at(15)),
                ..Default::default()
            }),
            ["f3"]
        );
        assert_eq!(ids(AuditFindingFilter { end: Some(at(10)), ..Default::default() }), ["f1"]);
        let first = read(store, |tx| tx.list_audit_findings(&a, &AuditFindingFilter::default(), None, 2)).unwrap();
        let rest = read(store, |tx| tx.list_audit_findings(&a, &AuditFindingFilter::default(), first.next.as_ref(), 2))
            .unwrap();
        assert_eq!((first.items.len(), rest.items.len(), rest.next), (2, 1, None));
        assert_eq!(rest.items[0].id, "f3");
    });
}

#[test]
fn scheduled_audits_are_claimed_by_one_node() {
    each_backend("scheduled_audits", |store| {
        let (a, b) = accounts(store);
        let daily = ScheduledAudit {
            account: a.clone(),
            name: "daily".into(),
            frequency: AuditFrequency::Daily,
            day_of_month: None,
            day_of_week: None,
            check_names: vec!["CA_CERTIFICATE_EXPIRING_CHECK".into(), "DEVICE_CERTIFICATE_EXPIRING_CHECK".into()],
            next_run_at: at(100),
            created_at: at(0),
        };
        let weekly = ScheduledAudit {
            name: "weekly".into(),
            frequency: AuditFrequency::Weekly,
            day_of_week: Some("MON".into()),
            check_names: vec!["CA_CERTIFICATE_EXPIRING_CHECK".into()],
            next_run_at: at(500),
            ..daily.clone()
        };
        write(store, |tx| {
            tx.insert_scheduled_audit(&daily)?;
            tx.insert_scheduled_audit(&weekly)
        })
        .unwrap();
        assert_eq!(read(store, |tx| tx.get_scheduled_audit(&a, "daily")).unwrap(), Some(daily.clone()));
        assert_eq!(read(store, |tx| tx.get_scheduled_audit(&b, "daily")).unwrap(), None);
        assert_eq!(
            read(store, |tx| tx.list_scheduled_audits(&a, None, 10)).unwrap(),
            vec![daily.clone(), weekly.clone()]
        );
        assert_eq!(read(store, |tx| tx.list_scheduled_audits(&a, Some("daily"), 10)).unwrap(), vec![weekly.clone()]);
        assert_eq!(read(store, |tx| tx.due_scheduled_audits(at(200), 10)).unwrap(), vec![daily.clone()]);
        assert!(write(store, |tx| tx.advance_scheduled_audit(&a, "daily", at(100), at(86_500))).unwrap());
        assert!(!write(store, |tx| tx.advance_scheduled_audit(&a, "daily", at(100), at(86_500))).unwrap());
        assert_eq!(read(store, |tx| tx.due_scheduled_audits(at(200), 10)).unwrap(), vec![]);
        assert_eq!(
            read(store, |tx| tx.scheduled_audits_with_check(&a, "DEVICE_CERTIFICATE_EXPIRING_CHECK")).unwrap(),
            ["daily"]
        );
        let changed =
            ScheduledAudit { frequency: AuditFrequency::Monthly, day_of_month: Some("LAST".into()), ..weekly };
        write(store, |tx| tx.update_scheduled_audit(&changed)).unwrap();
        assert_eq!(read(store, |tx| tx.get_scheduled_audit(&a, "weekly")).unwrap(), Some(changed));
        assert!(write(store, |tx| tx.delete_scheduled_audit(&a, "weekly")).unwrap());
        assert!(!write(store, |tx| tx.delete_scheduled_audit(&b, "daily")).unwrap());
        assert_eq!(write(store, |tx| tx.delete_scheduled_audits(&a)).unwrap(), 1);
    });
}

#[test]
fn crls_and_scans() {
    each_backend("audit_scans", |store| {
        let (a, b) = accounts(store);
        let crl = StoredCrl {
            account: a.clone(),
            name: "root".into(),
            der: vec![0x30, 0x00],
            issuer_ca: Some(id('c')),
            uploaded_at: at(3),
        };
        write(store, |tx| {
            tx.put_crl(&crl)?;
            tx.put_crl(&crl)
        })
        .unwrap();
        assert_eq!(read(store, |tx| tx.list_crls(&a)).unwrap(), vec![crl.clone()]);
        assert_eq!(read(store, |tx| tx.list_crls(&b)).unwrap(), vec![]);
        assert!(write(store, |tx| tx.delete_crl(&a, "root")).unwrap());

        write(store, |tx| {
            for (fill, status) in [
                ('1', CertificateStatus::Active),
                ('2', CertificateStatus::Revoked),
                ('3', CertificateStatus::PendingTransfer),
                ('4', CertificateStatus::Active),
            ] {
                tx.insert_certificate(&DeviceCertificate {
                    account: a.clone(),
                    id: id(fill),
                    pem: format!("pem {fill}"),
                    ca_certificate_id: None,
                    status,
                    mode: CertificateMode::SniOnly,
                    previous_owner: None,
                    generation_id: "g".into(),
                    customer_version: 1,
                    not_before: at(0),
                    not_after: at(86_400),
                    created_at: at(1),
                    last_modified: at(1),
                    transfer: TransferData::default(),
                })?;
            }
            Ok::<_, Error>(())
        })
        .unwrap();
        let page = read(store, |tx| tx.scan_active_certificates(&a, None, 2)).unwrap();
        assert_eq!(page.iter().map(|row| row.id.clone()).collect::<Vec<_>>(), [id('1'), id('3')]);
        let rest = read(store, |tx| tx.scan_active_certificates(&a, Some(&id('3')), 2)).unwrap();
        assert_eq!(rest.iter().map(|row| row.id.clone()).collect::<Vec<_>>(), [id('4')]);
        assert_eq!(rest[0].not_after, at(86_400));
        let pems = read(store, |tx| tx.scan_active_certificate_pems(&a, None, 10)).unwrap();
        assert_eq!(pems.len(), 3);
        assert_eq!(read(store, |tx| tx.scan_active_certificates(&b, None, 10)).unwrap(), vec![]);
    });
}
