//! One conformance suite, run against every backend: SQLite always, PostgreSQL when
//! `CERTFLEET_TEST_POSTGRES_URL` is set (a visible SKIP line otherwise).

use std::sync::atomic::{AtomicU32, Ordering};

use certfleet_pki::CertificateId;
use certfleet_registry::*;
use time::OffsetDateTime;
use time::macros::datetime;

/// Runs `scenario` against a fresh store of each backend.
fn each_backend(name: &str, scenario: impl Fn(&dyn Store)) {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let unique = format!("{}_{}_{}", name, std::process::id(), NEXT.fetch_add(1, Ordering::Relaxed));

    let dir = std::env::temp_dir().join(format!("certfleet-registry-{unique}"));
    std::fs::create_dir_all(&dir).unwrap();
    let sqlite = SqliteStore::open(&dir.join("registry.db")).unwrap();
    scenario(&sqlite);
    drop(sqlite);
    std::fs::remove_dir_all(&dir).unwrap();

    match std::env::var("CERTFLEET_TEST_POSTGRES_URL") {
        Ok(url) => {
            let schema = format!("cf_test_{unique}");
            let postgres = PostgresStore::open(&url, Some(&schema)).unwrap();
            scenario(&postgres);
            postgres.drop_schema().unwrap();
        }
        Err(_) => eprintln!("SKIP: {name} on postgres: CERTFLEET_TEST_POSTGRES_URL is not set"),
    }
}

fn at(seconds: i64) -> OffsetDateTime {
    datetime!(2026-01-01 00:00 UTC) + time::Duration::seconds(seconds)
}

fn account(digits: &str, endpoint: &str) -> Account {
    Account {
        id: AccountId::parse(digits).unwrap(),
        endpoint_identifier: endpoint.into(),
        registration_code: None,
        created_at: at(0),
    }
}

fn id(fill: char) -> CertificateId {
    CertificateId::parse(&fill.to_string().repeat(64)).unwrap()
}

fn ca(account: &Account, fill: char, mode: CertificateMode) -> CaCertificate {
    CaCertificate {
        account: account.id.clone(),
        id: id(fill),
        pem: format!("pem {fill}"),
        subject_key: "subject-1".into(),
        status: CaStatus::Active,
        mode,
        auto_registration: false,
        registration_config: None,
        generation_id: "generation".into(),
        customer_version: 1,
        not_before: at(0),
        not_after: at(86_400),
        created_at: at(1),
        last_modified: at(1),
    }
}

fn cert(account: &Account, fill: char, created: i64) -> DeviceCertificate {
    DeviceCertificate {
        account: account.id.clone(),
        id: id(fill),
        pem: format!("pem {fill}"),
        ca_certificate_id: None,
        status: CertificateStatus::Active,
        mode: CertificateMode::SniOnly,
        previous_owner: None,
        generation_id: "generation".into(),
        customer_version: 1,
        not_before: at(0),
        not_after: at(86_400),
        created_at: at(created),
        last_modified: at(created),
        transfer: TransferData::default(),
    }
}

fn setup(store: &dyn Store, accounts: &[&Account]) {
    write(store, |tx| {
        for account in accounts {
            tx.insert_account(account)?;
        }
        Ok::<_, Error>(())
    })
    .unwrap();
}

#[test]
fn accounts_round_trip_and_delete_cascades() {
    each_backend("accounts", |store| {
        let alice = account("111111111111", "alice");
        setup(store, &[&alice]);
        let key = AccessKey {
            access_key_id: "AKIAALICE".into(),
            secret_access_key: "secret".into(),
            account: alice.id.clone(),
            created_at: at(2),
        };
        write(store, |tx| {
            tx.insert_access_key(&key)?;
            tx.insert_certificate(&cert(&alice, 'a', 5))?;
            tx.set_registration_code(&alice.id, Some("code"))
        })
        .unwrap();

        let (found, by_endpoint, by_key) = read(store, |tx| {
            Ok::<_, Error>((tx.get_account(&alice.id)?, tx.account_by_endpoint("alice")?, tx.get_access_key("AKIAALICE")?))
        })
        .unwrap();
        assert_eq!(found.as_ref().and_then(|a| a.registration_code.as_deref()), Some("code"));
        assert_eq!(by_endpoint.map(|a| a.id), Some(alice.id.clone()));
        assert_eq!(by_key, Some(key));

        assert!(write(store, |tx| tx.delete_account(&alice.id)).unwrap());
        let (accounts, key, cert) = read(store, |tx| {
            Ok::<_, Error>((tx.list_accounts()?, tx.get_access_key("AKIAALICE")?, tx.get_certificate(&alice.id, &id('a'))?))
        })
        .unwrap();
        assert!(accounts.is_empty() && key.is_none() && cert.is_none());
    });
}

#[test]
fn failed_transaction_leaves_no_trace() {
    each_backend("rollback", |store| {
        let alice = account("111111111111", "alice");
        setup(store, &[&alice]);
        let result: Result<(), Error> = write(store, |tx| {
            tx.insert_certificate(&cert(&alice, 'a', 1))?;
            tx.insert_certificate(&cert(&alice, 'a', 2)) // same key: refused
        });
        assert!(matches!(result, Err(Error::Conflict(_))), "{result:?}");
        let page = read(store, |tx| {
            tx.list_certificates(&alice.id, &PageRequest { limit: 10, ascending: true, after: None })
        })
        .unwrap();
        assert!(page.items.is_empty(), "the first insert must have been rolled back");

        // A caller's own error rolls back too, and comes back unchanged.
        #[derive(Debug, PartialEq)]
        enum Refusal {
            BusinessRule,
            Store,
        }
        impl From<Error> for Refusal {
            fn from(_: Error) -> Self {
                Refusal::Store
            }
        }
        let result: Result<(), Refusal> = write(store, |tx| {
            tx.insert_certificate(&cert(&alice, 'b', 1))?;
            Err(Refusal::BusinessRule)
        });
        assert_eq!(result, Err(Refusal::BusinessRule));
        let found = read(store, |tx| tx.get_certificate(&alice.id, &id('b'))).unwrap();
        assert_eq!(found, None);
    });
}

#[test]
fn a_ca_is_held_in_default_mode_by_one_account_only() {
    each_backend("default_holder", |store| {
        let alice = account("111111111111", "alice");
        let bob = account("222222222222", "bob");
        setup(store, &[&alice, &bob]);
        write(store, |tx| tx.insert_ca(&ca(&alice, 'c', CertificateMode::Default))).unwrap();

        let second_default = write(store, |tx| tx.insert_ca(&ca(&bob, 'c', CertificateMode::Default)));
        assert!(matches!(second_default, Err(Error::Conflict(_))), "{second_default:?}");
        write(store, |tx| tx.insert_ca(&ca(&bob, 'c', CertificateMode::SniOnly))).unwrap();

        let (holder, bobs, same_subject) = read(store, |tx| {
            Ok::<_, Error>((
                tx.default_mode_holder(&id('c'))?,
                tx.get_ca(&bob.id, &id('c'))?,
                tx.cas_with_subject(&alice.id, "subject-1")?,
            ))
        })
        .unwrap();
        assert_eq!(holder, Some(alice.id.clone()));
        assert_eq!(bobs.map(|ca| ca.mode), Some(CertificateMode::SniOnly));
        assert_eq!(same_subject.len(), 1);
    });
}

#[test]
fn ca_updates_round_trip_registration_config() {
    each_backend("ca_update", |store| {
        let alice = account("111111111111", "alice");
        setup(store, &[&alice]);
        let mut stored = ca(&alice, 'c', CertificateMode::Default);
        write(store, |tx| tx.insert_ca(&stored)).unwrap();
        stored.status = CaStatus::Inactive;
        stored.auto_registration = true;
        stored.customer_version = 2;
        stored.registration_config = Some(RegistrationConfig {
            template_body: Some("{}".into()),
            role_arn: None,
            template_name: None,
        });
        write(store, |tx| tx.update_ca(&stored)).unwrap();
        assert_eq!(read(store, |tx| tx.get_ca(&alice.id, &id('c'))).unwrap(), Some(stored.clone()));
        assert!(write(store, |tx| tx.delete_ca(&alice.id, &id('c'))).unwrap());
        assert!(!write(store, |tx| tx.delete_ca(&alice.id, &id('c'))).unwrap());
    });
}

#[test]
fn listings_page_in_both_orders() {
    each_backend("paging", |store| {
        let alice = account("111111111111", "alice");
        let bob = account("222222222222", "bob");
        setup(store, &[&alice, &bob]);
        write(store, |tx| {
            // 'd' and 'e' share a creation time: the id breaks the tie.
            for (fill, created) in [('a', 1), ('b', 2), ('c', 3), ('d', 4), ('e', 4)] {
                tx.insert_certificate(&cert(&alice, fill, created))?;
            }
            tx.insert_certificate(&cert(&bob, 'f', 1))
        })
        .unwrap();

        for (ascending, expected) in [(true, "abcde"), (false, "edcba")] {
            let mut seen = String::new();
            let mut after = None;
            loop {
                let page = read(store, |tx| {
                    tx.list_certificates(&alice.id, &PageRequest { limit: 2, ascending, after: after.clone() })
                })
                .unwrap();
                seen.extend(page.items.iter().map(|cert| cert.id.as_str().chars().next().unwrap()));
                match page.next {
                    Some(next) => after = Some(next),
                    None => break,
                }
            }
            assert_eq!(seen, expected, "ascending = {ascending}");
        }
    });
}

#[test]
fn certificate_updates_and_transfers() {
    each_backend("transfer", |store| {
        let alice = account("111111111111", "alice");
        let bob = account("222222222222", "bob");
        setup(store, &[&alice, &bob]);
        let mut stored = cert(&alice, 'a', 1);
        stored.ca_certificate_id = Some(id('c'));
        write(store, |tx| tx.insert_certificate(&stored)).unwrap();

        stored.status = CertificateStatus::PendingTransfer;
        stored.transfer.pending_to = Some(bob.id.clone());
        stored.transfer.transfer_message = Some("yours".into());
        stored.transfer.transfer_date = Some(at(10));
        write(store, |tx| tx.update_certificate(&stored)).unwrap();
        let offered = read(store, |tx| tx.certificate_pending_transfer_to(&bob.id, &id('a'))).unwrap();
        assert_eq!(offered, Some(stored.clone()));

        write(store, |tx| {
            tx.change_certificate_owner(&id('a'), &alice.id, &bob.id)?;
            let mut moved = stored.clone();
            moved.account = bob.id.clone();
            moved.previous_owner = Some(alice.id.clone());
            moved.status = CertificateStatus::Inactive;
            moved.transfer.pending_to = None;
            moved.transfer.accept_date = Some(at(20));
            tx.update_certificate(&moved)
        })
        .unwrap();
        let (at_alice, at_bob, by_ca) = read(store, |tx| {
            Ok::<_, Error>((
                tx.get_certificate(&alice.id, &id('a'))?,
                tx.get_certificate(&bob.id, &id('a'))?,
                tx.list_certificates_by_ca(&bob.id, &id('c'), &PageRequest { limit: 10, ascending: true, after: None })?,
            ))
        })
        .unwrap();
        assert_eq!(at_alice, None);
        let at_bob = at_bob.unwrap();
        assert_eq!(at_bob.previous_owner, Some(alice.id.clone()));
        assert_eq!(at_bob.transfer.accept_date, Some(at(20)));
        assert_eq!(at_bob.transfer.transfer_message.as_deref(), Some("yours"));
        assert_eq!(by_ca.items.len(), 1);
    });
}

#[test]
fn issuers_and_tags() {
    each_backend("issuers", |store| {
        let alice = account("111111111111", "alice");
        setup(store, &[&alice]);
        let old = IssuerRecord {
            id: id('1'),
            purpose: IssuerPurpose::Device,
            certificate_pem: "old".into(),
            sealed_key: vec![0, 1, 2, 255],
            created_at: at(1),
        };
        let new = IssuerRecord { id: id('2'), created_at: at(2), certificate_pem: "new".into(), ..old.clone() };
        let arn = "arn:aws:iot:us-east-1:111111111111:cacert/x";
        write(store, |tx| {
            tx.insert_issuer(&old)?;
            tx.insert_issuer(&new)?;
            tx.put_tags(arn, &[Tag { key: "k".into(), value: "v1".into() }])?;
            tx.put_tags(arn, &[Tag { key: "k".into(), value: "v2".into() }])
        })
        .unwrap();
        let (device, server, tags) = read(store, |tx| {
            Ok::<_, Error>((tx.current_issuer(IssuerPurpose::Device)?, tx.current_issuer(IssuerPurpose::Server)?, tx.tags(arn)?))
        })
        .unwrap();
        assert_eq!(device, Some(new));
        assert_eq!(server, None);
        assert_eq!(tags, vec![Tag { key: "k".into(), value: "v2".into() }]);
        write(store, |tx| tx.delete_account(&alice.id)).unwrap();
        assert!(read(store, |tx| tx.tags(arn)).unwrap().is_empty(), "an account's tags go with it");
    });
}

#[test]
fn reopening_applies_no_migration_twice() {
    let dir = std::env::temp_dir().join(format!("certfleet-registry-reopen-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("registry.db");
    let alice = account("111111111111", "alice");
    setup(&SqliteStore::open(&path).unwrap(), &[&alice]);
    let reopened = SqliteStore::open(&path).unwrap();
    assert_eq!(read(&reopened, |tx| tx.list_accounts()).unwrap(), vec![alice]);
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "the registry file must be private to its owner");
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn the_change_feed_keeps_committed_changes_in_order() {
    each_backend("changes", |store| {
        let alice = account("111111111111", "alice");
        setup(store, &[&alice]);
        let start = read(store, |tx| tx.last_change_seq()).unwrap();
        write(store, |tx| {
            tx.record_change(&alice.id, ChangeKind::Certificate, "c1", at(1))?;
            tx.record_change(&alice.id, ChangeKind::CaCertificate, "ca1", at(2))
        })
        .unwrap();
        // A rolled-back transaction leaves no change behind.
        let _: Result<(), Error> = write(store, |tx| {
            tx.record_change(&alice.id, ChangeKind::Certificate, "ghost", at(3))?;
            Err(Error::Aborted)
        });
        write(store, |tx| tx.record_change(&alice.id, ChangeKind::Account, "111111111111", at(4))).unwrap();

        let changes = read(store, |tx| tx.changes_after(start, 10)).unwrap();
        let seen: Vec<_> = changes.iter().map(|change| (change.kind, change.entity_id.as_str())).collect();
        assert_eq!(
            seen,
            vec![(ChangeKind::Certificate, "c1"), (ChangeKind::CaCertificate, "ca1"), (ChangeKind::Account, "111111111111")]
        );
        assert!(changes.windows(2).all(|pair| pair[0].seq < pair[1].seq));
        assert_eq!(read(store, |tx| tx.last_change_seq()).unwrap(), changes[2].seq);
        assert_eq!(read(store, |tx| tx.changes_after(changes[0].seq, 1)).unwrap()[0].entity_id, "ca1");

        assert_eq!(write(store, |tx| tx.prune_changes(at(3))).unwrap(), 2);
        assert_eq!(read(store, |tx| tx.changes_after(start, 10)).unwrap().len(), 1);
    });
}

#[test]
fn connection_history_records_who_used_which_certificate() {
    each_backend("connections", |store| {
        let alice = account("111111111111", "alice");
        setup(store, &[&alice]);
        let record = |session: &str, fill: char, client: &str, connected: i64| ConnectionRecord {
            session_id: session.into(),
            account: alice.id.clone(),
            certificate_id: id(fill),
            client_id: client.into(),
            connected_at: at(connected),
            disconnected_at: None,
            disconnect_reason: None,
        };
        write(store, |tx| {
            tx.insert_connection(&record("s1", 'a', "sensor-1", 10))?;
            tx.insert_connection(&record("s2", 'a', "sensor-2", 20))?;
            tx.insert_connection(&record("s3", 'b', "other", 30))?;
            tx.close_connection("s1", at(15), "CLIENT_INITIATED_DISCONNECT")
        })
        .unwrap();
        let of_a = read(store, |tx| tx.connections_since(&alice.id, Some(&id('a')), at(0))).unwrap();
        assert_eq!(of_a.iter().map(|c| c.client_id.as_str()).collect::<Vec<_>>(), vec!["sensor-1", "sensor-2"]);
        assert_eq!(of_a[0].disconnected_at, Some(at(15)));
        assert_eq!(of_a[0].disconnect_reason.as_deref(), Some("CLIENT_INITIATED_DISCONNECT"));
        // Since t=16: s1 ended before, s2 is still open, s3 connected after.
        let recent = read(store, |tx| tx.connections_since(&alice.id, None, at(16))).unwrap();
        assert_eq!(recent.iter().map(|c| c.session_id.as_str()).collect::<Vec<_>>(), vec!["s2", "s3"]);
    });
}
