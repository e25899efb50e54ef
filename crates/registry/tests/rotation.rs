//! The rotation tables on every backend (SQLite always, PostgreSQL when
//! `CERTFLEET_TEST_POSTGRES_URL` is set): campaigns and their counts, at most one open rotation
//! per (account, old certificate, client ID), the lookups of device messages, listing filters,
//! the deadline scan, and account deletion.

use std::sync::atomic::{AtomicU32, Ordering};

use certfleet_pki::CertificateId;
use certfleet_registry::*;
use time::OffsetDateTime;
use time::macros::datetime;

fn each_backend(name: &str, scenario: impl Fn(&dyn Store)) {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let unique = format!("{}_{}_{}", name, std::process::id(), NEXT.fetch_add(1, Ordering::Relaxed));
    let dir = std::env::temp_dir().join(format!("certfleet-registry-rotation-{unique}"));
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

fn account(store: &dyn Store, number: &str) -> AccountId {
    let account = AccountId::parse(number).unwrap();
    write(store, |tx| {
        tx.insert_account(&Account {
            id: account.clone(),
            endpoint_identifier: number.into(),
            registration_code: None,
            created_at: at(0),
        })
    })
    .unwrap();
    account
}

fn rotation(account: &AccountId, id: &str, client: &str, old: char, deadline: i64) -> Rotation {
    Rotation {
        account: account.clone(),
        id: id.into(),
        campaign_id: "c1".into(),
        client_id: client.into(),
        old_certificate_id: self::id(old),
        new_certificate_id: None,
        csr_key_fingerprint: None,
        state: RotationState::Requested,
        attempts: 0,
        error: None,
        deadline: Some(at(deadline)),
        created_at: at(deadline),
        updated_at: at(deadline),
    }
}

#[test]
fn campaigns_rotations_and_their_lookups() {
    each_backend("rotations", |store| {
        let a = account(store, "111111111111");
        let b = account(store, "222222222222");
        let campaign = RotationCampaign {
            account: a.clone(),
            id: "c1".into(),
            source: RotationSource::Audit,
            audit_task_id: Some("task-1".into()),
            subject_rule: SubjectRule::RequireCsrMatch,
            created_at: at(0),
        };
        write(store, |tx| {
            tx.insert_rotation_campaign(&campaign)?;
            assert!(tx.insert_rotation(&rotation(&a, "r1", "dev-1", 'a', 10))?);
            assert!(tx.insert_rotation(&rotation(&a, "r2", "dev-2", 'b', 5))?);
            assert!(!tx.insert_rotation(&rotation(&a, "r3", "dev-1", 'a', 20))?, "one open per cert and client");
            assert!(tx.insert_rotation(&rotation(&a, "r4", "dev-1", 'c', 30))?, "another certificate");
            assert!(tx.insert_rotation(&rotation(&b, "r1", "dev-1", 'a', 1))?, "another account");
            Ok::<_, Error>(())
        })
        .unwrap();
        write(store, |tx| {
            assert_eq!(tx.get_rotation_campaign(&a, "c1")?, Some(campaign.clone()));
            assert_eq!(tx.rotation_campaign_of_task(&a, "task-1")?.map(|c| c.id), Some("c1".into()));
            assert_eq!(tx.rotation_campaign_of_task(&b, "task-1")?, None);
            assert_eq!(tx.rotation_campaign_counts(&a, "c1")?.get(&RotationState::Requested), Some(&3));
            let open: Vec<_> = tx.open_rotations_of_client(&a, "dev-1")?.into_iter().map(|r| r.id).collect();
            assert_eq!(open, ["r1", "r4"]);
            let due: Vec<_> =
                tx.due_rotations(at(10), 10)?.into_iter().map(|r| (r.account.to_string(), r.id)).collect();
            assert_eq!(
                due,
                [
                    ("222222222222".to_owned(), "r1".to_owned()),
                    ("111111111111".to_owned(), "r2".to_owned()),
                    ("111111111111".to_owned(), "r1".to_owned())
                ]
            );
            assert_eq!(tx.due_rotations(at(10), 1)?.len(), 1);
            Ok::<_, Error>(())
        })
        .unwrap();

        // Issue, then close: the rotation leaves the open lookups and the sweep, and a new one
        // may open for the same certificate and client.
        write(store, |tx| {
            let mut issued = tx.get_rotation(&a, "r1")?.unwrap();
            issued.state = RotationState::Issued;
            issued.new_certificate_id = Some(id('e'));
            issued.csr_key_fingerprint = Some("ff".into());
            issued.attempts = 2;
            tx.update_rotation(&issued)?;
            assert_eq!(tx.rotation_of_new_certificate(&a, "dev-1", &id('e'))?.map(|r| r.attempts), Some(2));
            assert_eq!(tx.rotation_of_new_certificate(&a, "dev-2", &id('e'))?, None);
            issued.state = RotationState::Failed;
            issued.error = Some("timed out".into());
            issued.deadline = None;
            tx.update_rotation(&issued)?;
            assert_eq!(tx.get_rotation(&a, "r1")?, Some(issued.clone()));
            assert!(tx.insert_rotation(&rotation(&a, "r5", "dev-1", 'a', 40))?);
            Ok::<_, Error>(())
        })
        .unwrap();
        write(store, |tx| {
            let ids = |rows: Vec<Rotation>| rows.into_iter().map(|r| r.id).collect::<Vec<_>>();
            let all = RotationFilter::default();
            assert_eq!(ids(tx.list_rotations(&a, &all, None, 10)?), ["r1", "r2", "r4", "r5"]);
            assert_eq!(ids(tx.list_rotations(&a, &all, Some("r2"), 1)?), ["r4"]);
            let failed = RotationFilter { state: Some(RotationState::Failed), ..Default::default() };
            assert_eq!(ids(tx.list_rotations(&a, &failed, None, 10)?), ["r1"]);
            let by_client = RotationFilter {
                client_id: Some("dev-2".into()),
                campaign_id: Some("c1".into()),
                ..Default::default()
            };
            assert_eq!(ids(tx.list_rotations(&a, &by_client, None, 10)?), ["r2"]);
            assert!(!tx.due_rotations(at(100), 10)?.iter().any(|r| r.id == "r1" && r.account == a));
            let counts = tx.rotation_campaign_counts(&a, "c1")?;
            assert_eq!(
                (counts.get(&RotationState::Failed), counts.get(&RotationState::Requested)),
                (Some(&1), Some(&3))
            );
            Ok::<_, Error>(())
        })
        .unwrap();

        write(store, |tx| tx.delete_account(&a)).unwrap();
        read(store, |tx| {
            assert_eq!(tx.get_rotation_campaign(&a, "c1")?, None);
            assert!(tx.list_rotations(&a, &RotationFilter::default(), None, 10)?.is_empty());
            assert_eq!(tx.list_rotations(&b, &RotationFilter::default(), None, 10)?.len(), 1);
            Ok::<_, Error>(())
        })
        .unwrap();
    });
}
