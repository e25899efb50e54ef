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
            Ok::<_, Error>((
                tx.get_account(&alice.id)?,
                tx.account_by_endpoint("alice")?,
                tx.get_access_key("AKIAALICE")?,
            ))
        })
        .unwrap();
        assert_eq!(found.as_ref().and_then(|a| a.registration_code.as_deref()), Some("code"));
        assert_eq!(by_endpoint.map(|a| a.id), Some(alice.id.clone()));
        assert_eq!(by_key, Some(key));

        assert!(write(store, |tx| tx.delete_account(&alice.id)).unwrap());
        let (accounts, key, cert) = read(store, |tx| {
            Ok::<_, Error>((
                tx.list_accounts()?,
                tx.get_access_key("AKIAALICE")?,
                tx.get_certificate(&alice.id, &id('a'))?,
            ))
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
        let page =
            read(store, |tx| tx.list_certificates(&alice.id, &PageRequest { limit: 10, ascending: true, after: None }))
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
        stored.registration_config =
            Some(RegistrationConfig { template_body: Some("{}".into()), role_arn: None, template_name: None });
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
                tx.list_certificates_by_ca(
                    &bob.id,
                    &id('c'),
                    &PageRequest { limit: 10, ascending: true, after: None },
                )?,
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
            Ok::<_, Error>((
                tx.current_issuer(IssuerPurpose::Device)?,
                tx.current_issuer(IssuerPurpose::Server)?,
                tx.tags(arn)?,
            ))
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
            vec![
                (ChangeKind::Certificate, "c1"),
                (ChangeKind::CaCertificate, "ca1"),
                (ChangeKind::Account, "111111111111")
            ]
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
            via: ConnectionVia::default(),
        };
        let data_ats = ConnectionVia::new(Some("iot:Data-ATS"), Some("builtin"), Some("TLSv1.3"));
        // Values past the bounds are clipped (in characters, as the columns' CHECKs count them on
        // both backends), so the longest stored value still fits.
        let long = ConnectionVia::new(Some(&"é".repeat(200)), Some(&"c+".repeat(100)), Some("TLSv1.3-and-more-text"));
        assert_eq!(long.endpoint().map(|e| e.chars().count()), Some(ConnectionVia::MAX_ENDPOINT));
        assert_eq!(long.chain().map(str::len), Some(ConnectionVia::MAX_CHAIN));
        assert_eq!(long.tls_version(), Some("TLSv1.3-and-more"));
        write(store, |tx| {
            tx.insert_connection(&ConnectionRecord { via: data_ats.clone(), ..record("s1", 'a', "sensor-1", 10) })?;
            tx.insert_connection(&ConnectionRecord { via: long.clone(), ..record("s2", 'a', "sensor-2", 20) })?;
            tx.insert_connection(&record("s3", 'b', "other", 30))?;
            tx.close_connection("s1", at(15), "CLIENT_INITIATED_DISCONNECT")
        })
        .unwrap();
        let of_a = read(store, |tx| tx.connections_since(&alice.id, Some(&id('a')), at(0))).unwrap();
        assert_eq!(of_a.iter().map(|c| c.client_id.as_str()).collect::<Vec<_>>(), vec!["sensor-1", "sensor-2"]);
        assert_eq!(of_a[0].disconnected_at, Some(at(15)));
        assert_eq!(of_a[0].disconnect_reason.as_deref(), Some("CLIENT_INITIATED_DISCONNECT"));
        assert_eq!((&of_a[0].via, &of_a[1].via), (&data_ats, &long));
        // A row without them (as every row written before migration 17) reads back unknown.
        let of_b = read(store, |tx| tx.connections_since(&alice.id, Some(&id('b')), at(0))).unwrap();
        assert_eq!(of_b[0].via, ConnectionVia::default());
        assert_eq!((of_b[0].via.endpoint(), of_b[0].via.chain(), of_b[0].via.tls_version()), (None, None, None));
        // Since t=16: s1 ended before, s2 is still open, s3 connected after.
        let recent = read(store, |tx| tx.connections_since(&alice.id, None, at(16))).unwrap();
        assert_eq!(recent.iter().map(|c| c.session_id.as_str()).collect::<Vec<_>>(), vec!["s2", "s3"]);
    });
}

// ---- policies and things ------------------------------------------------------------------------

fn policy_name(text: &str) -> PolicyName {
    PolicyName::parse(text).unwrap()
}

fn thing_name(text: &str) -> ThingName {
    ThingName::parse(text).unwrap()
}

fn policy(account: &Account, name: &str, created: i64) -> Policy {
    Policy {
        account: account.id.clone(),
        name: policy_name(name),
        default_version: 1,
        next_version: 2,
        generation_id: "generation".into(),
        created_at: at(created),
        last_modified: at(created),
    }
}

fn version(account: &Account, name: &str, number: i64) -> PolicyVersion {
    PolicyVersion {
        account: account.id.clone(),
        policy_name: policy_name(name),
        version: number,
        document: format!("document {name} v{number}"),
        created_at: at(number),
    }
}

fn thing(account: &Account, name: &str, type_name: Option<&str>, attributes: &[(&str, &str)]) -> Thing {
    Thing {
        account: account.id.clone(),
        name: thing_name(name),
        id: format!("id-{name}"),
        type_name: type_name.map(thing_name),
        attributes: attributes.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
        version: 1,
        created_at: at(1),
    }
}

fn first_page(limit: u32) -> KeyPageRequest {
    KeyPageRequest { limit, after: None }
}

/// Every key of a key-ordered listing, fetched `limit` at a time.
fn all_keys<T>(
    mut fetch: impl FnMut(&KeyPageRequest) -> KeyPage<T>,
    key: impl Fn(&T) -> String,
    limit: u32,
) -> Vec<String> {
    let mut keys = Vec::new();
    let mut request = first_page(limit);
    loop {
        let page = fetch(&request);
        assert!(page.items.len() <= limit as usize);
        keys.extend(page.items.iter().map(&key));
        match page.next {
            Some(next) => request.after = Some(next),
            None => return keys,
        }
    }
}

#[test]
fn policies_keep_versions_and_page_by_creation() {
    each_backend("policies", |store| {
        let alice = account("111111111111", "alice");
        let bob = account("222222222222", "bob");
        setup(store, &[&alice, &bob]);
        write(store, |tx| {
            // "b" and "c" share a creation time: the name breaks the tie.
            for (name, created) in [("a", 1), ("c", 2), ("b", 2), ("d.e@f+g=h,i-j_k", 3)] {
                tx.insert_policy(&policy(&alice, name, created))?;
                tx.insert_policy_version(&version(&alice, name, 1))?;
            }
            tx.insert_policy(&policy(&bob, "a", 1))?;
            tx.insert_policy_version(&version(&alice, "a", 2))?;
            tx.insert_policy_version(&version(&alice, "a", 3))
        })
        .unwrap();

        for (ascending, expected) in
            [(true, vec!["a", "b", "c", "d.e@f+g=h,i-j_k"]), (false, vec!["d.e@f+g=h,i-j_k", "c", "b", "a"])]
        {
            let mut seen = Vec::new();
            let mut after = None;
            loop {
                let page = read(store, |tx| {
                    tx.list_policies(&alice.id, &PageRequest { limit: 3, ascending, after: after.clone() })
                })
                .unwrap();
                seen.extend(page.items.iter().map(|policy| policy.name.to_string()));
                match page.next {
                    Some(next) => after = Some(next),
                    None => break,
                }
            }
            assert_eq!(seen, expected, "ascending = {ascending}");
        }

        let versions = read(store, |tx| tx.list_policy_versions(&alice.id, &policy_name("a"))).unwrap();
        assert_eq!(versions.iter().map(|v| v.version).collect::<Vec<_>>(), vec![3, 2, 1], "newest first");
        let mut stored = read(store, |tx| tx.get_policy(&alice.id, &policy_name("a"))).unwrap().unwrap();
        stored.default_version = 3;
        stored.next_version = 4;
        stored.generation_id = "second".into();
        stored.last_modified = at(9);
        write(store, |tx| tx.update_policy(&stored)).unwrap();
        assert_eq!(read(store, |tx| tx.get_policy(&alice.id, &policy_name("a"))).unwrap(), Some(stored));
        assert_eq!(
            read(store, |tx| tx.get_policy_version(&alice.id, &policy_name("a"), 2)).unwrap(),
            Some(version(&alice, "a", 2))
        );
        assert!(write(store, |tx| tx.delete_policy_version(&alice.id, &policy_name("a"), 2)).unwrap());
        assert!(!write(store, |tx| tx.delete_policy_version(&alice.id, &policy_name("a"), 2)).unwrap());

        assert!(write(store, |tx| tx.delete_policy(&alice.id, &policy_name("a"))).unwrap());
        let (gone, versions, bobs) = read(store, |tx| {
            Ok::<_, Error>((
                tx.get_policy(&alice.id, &policy_name("a"))?,
                tx.list_policy_versions(&alice.id, &policy_name("a"))?,
                tx.get_policy(&bob.id, &policy_name("a"))?,
            ))
        })
        .unwrap();
        assert!(gone.is_none() && versions.is_empty(), "a policy's versions go with it");
        assert!(bobs.is_some(), "another account's policy of the same name stays");
    });
}

#[test]
fn policy_attachments_find_documents_and_targets() {
    each_backend("policy_attachments", |store| {
        let alice = account("111111111111", "alice");
        setup(store, &[&alice]);
        write(store, |tx| {
            for name in ["p1", "p2", "p3"] {
                tx.insert_policy(&policy(&alice, name, 1))?;
                tx.insert_policy_version(&version(&alice, name, 1))?;
            }
            tx.insert_policy_version(&version(&alice, "p2", 2))?;
            let mut p2 = policy(&alice, "p2", 1);
            p2.default_version = 2;
            tx.update_policy(&p2)
        })
        .unwrap();
        // (policy, certificate, newly attached?)
        let attachments =
            [("p2", 'a', true), ("p1", 'a', true), ("p1", 'a', false), ("p1", 'b', true), ("p1", 'c', true)];
        for (name, fill, expected) in attachments {
            let attached =
                write(store, |tx| tx.attach_policy(&alice.id, &policy_name(name), &id(fill), at(5))).unwrap();
            assert_eq!(attached, expected, "{name} -> {fill}");
        }
        let documents = read(store, |tx| tx.certificate_policy_documents(&alice.id, &id('a'))).unwrap();
        assert_eq!(
            documents,
            vec![(policy_name("p1"), "document p1 v1".to_string()), (policy_name("p2"), "document p2 v2".to_string())],
            "the default version's document"
        );
        let policies_of_a = all_keys(
            |page| read(store, |tx| tx.certificate_policies(&alice.id, &id('a'), page)).unwrap(),
            |policy| policy.name.to_string(),
            1,
        );
        assert_eq!(policies_of_a, vec!["p1", "p2"]);
        let targets = all_keys(
            |page| read(store, |tx| tx.policy_targets(&alice.id, &policy_name("p1"), page)).unwrap(),
            |id| id.to_string(),
            2,
        );
        assert_eq!(targets, vec![id('a').to_string(), id('b').to_string(), id('c').to_string()]);
        let counts = read(store, |tx| {
            Ok::<_, Error>((
                tx.count_certificate_policies(&alice.id, &id('a'))?,
                tx.count_policy_targets(&alice.id, &policy_name("p1"))?,
                tx.count_policy_targets(&alice.id, &policy_name("p3"))?,
            ))
        })
        .unwrap();
        assert_eq!(counts, (2, 3, 0));

        assert!(write(store, |tx| tx.detach_policy(&alice.id, &policy_name("p1"), &id('b'))).unwrap());
        assert!(!write(store, |tx| tx.detach_policy(&alice.id, &policy_name("p1"), &id('b'))).unwrap());
        assert_eq!(write(store, |tx| tx.detach_all_policies(&alice.id, &id('a'))).unwrap(), 2);
        assert!(read(store, |tx| tx.certificate_policy_documents(&alice.id, &id('a'))).unwrap().is_empty());
        assert_eq!(read(store, |tx| tx.count_policy_targets(&alice.id, &policy_name("p1"))).unwrap(), 1);
    });
}

#[test]
fn things_keep_attributes_and_filter() {
    each_backend("things", |store| {
        let alice = account("111111111111", "alice");
        let bob = account("222222222222", "bob");
        setup(store, &[&alice, &bob]);
        write(store, |tx| {
            tx.insert_thing(&thing(&alice, "lamp-1", Some("lamp"), &[("room", "kitchen"), ("floor", "1")]))?;
            tx.insert_thing(&thing(&alice, "lamp-2", Some("lamp"), &[("room", "kitchen_2")]))?;
            tx.insert_thing(&thing(&alice, "lamp-3", None, &[("room", "KITCHEN")]))?;
            tx.insert_thing(&thing(&alice, "sensor:1", Some("sensor"), &[("room", "k%tchen"), ("floor", "2")]))?;
            tx.insert_thing(&thing(&alice, "bare", None, &[]))?;
            tx.insert_thing(&thing(&bob, "lamp-1", Some("lamp"), &[("room", "kitchen")]))
        })
        .unwrap();

        let filter = |type_name: Option<&str>, attribute: Option<AttributeFilter>| ThingFilter {
            type_name: type_name.map(thing_name),
            attribute,
        };
        let present = |name: &str| Some(AttributeFilter::Present { name: name.into() });
        let equals = |name: &str, value: &str| Some(AttributeFilter::Equals { name: name.into(), value: value.into() });
        let starts =
            |name: &str, prefix: &str| Some(AttributeFilter::StartsWith { name: name.into(), prefix: prefix.into() });
        let cases = [
            (filter(None, None), "bare lamp-1 lamp-2 lamp-3 sensor:1"),
            (filter(Some("lamp"), None), "lamp-1 lamp-2"),
            (filter(None, present("floor")), "lamp-1 sensor:1"),
            (filter(None, equals("room", "kitchen")), "lamp-1"),
            (filter(None, starts("room", "kitchen")), "lamp-1 lamp-2"),
            (filter(None, starts("room", "kitchen_")), "lamp-2"),
            (filter(None, starts("room", "k%")), "sensor:1"),
            (filter(None, starts("room", "k_tchen")), ""),
            (filter(None, starts("room", "KIT")), "lamp-3"),
            (filter(None, starts("room", "")), "lamp-1 lamp-2 lamp-3 sensor:1"),
            (filter(Some("sensor"), equals("floor", "2")), "sensor:1"),
            (filter(Some("lamp"), equals("floor", "2")), ""),
        ];
        for (filter, expected) in cases {
            for limit in [1, 2, 250] {
                let names = all_keys(
                    |page| read(store, |tx| tx.list_things(&alice.id, &filter, page)).unwrap(),
                    |thing| thing.name.to_string(),
                    limit,
                );
                assert_eq!(names.join(" "), expected, "{filter:?}, {limit} per page");
            }
        }
        let page = read(store, |tx| tx.list_things(&alice.id, &ThingFilter::default(), &first_page(3))).unwrap();
        assert_eq!(
            page.items[1],
            thing(&alice, "lamp-1", Some("lamp"), &[("room", "kitchen"), ("floor", "1")]),
            "listed with attributes"
        );
        assert_eq!(page.items[0].attributes.len(), 0);

        let mut lamp = thing(&alice, "lamp-1", None, &[("colour", "red")]);
        lamp.version = 2;
        write(store, |tx| tx.update_thing(&lamp)).unwrap();
        assert_eq!(read(store, |tx| tx.get_thing(&alice.id, &thing_name("lamp-1"))).unwrap(), Some(lamp));
        assert!(write(store, |tx| tx.delete_thing(&alice.id, &thing_name("lamp-1"))).unwrap());
        assert!(!write(store, |tx| tx.delete_thing(&alice.id, &thing_name("lamp-1"))).unwrap());
        let (gone, bobs) = read(store, |tx| {
            Ok::<_, Error>((
                tx.get_thing(&alice.id, &thing_name("lamp-1"))?,
                tx.get_thing(&bob.id, &thing_name("lamp-1"))?,
            ))
        })
        .unwrap();
        assert!(gone.is_none());
        assert_eq!(bobs.map(|thing| thing.attributes.len()), Some(1), "another account's thing keeps its attributes");
    });
}

#[test]
fn thing_principals_attach_both_ways() {
    each_backend("thing_principals", |store| {
        let alice = account("111111111111", "alice");
        setup(store, &[&alice]);
        let attachment = |thing: &str, fill: char, principal_type| ThingPrincipal {
            account: alice.id.clone(),
            thing_name: thing_name(thing),
            certificate_id: id(fill),
            principal_type,
            attached_at: at(3),
        };
        write(store, |tx| {
            for name in ["t1", "t2", "t3"] {
                tx.insert_thing(&thing(&alice, name, None, &[("k", name)]))?;
            }
            tx.put_thing_principal(&attachment("t1", 'a', ThingPrincipalType::NonExclusive))?;
            tx.put_thing_principal(&attachment("t2", 'a', ThingPrincipalType::NonExclusive))?;
            tx.put_thing_principal(&attachment("t1", 'b', ThingPrincipalType::NonExclusive))?;
            tx.put_thing_principal(&attachment("t3", 'c', ThingPrincipalType::NonExclusive))?;
            // Attaching again changes the type.
            tx.put_thing_principal(&attachment("t3", 'c', ThingPrincipalType::Exclusive))
        })
        .unwrap();

        let of_a = all_keys(
            |page| read(store, |tx| tx.certificate_things_page(&alice.id, &id('a'), None, page)).unwrap(),
            |attachment| attachment.thing_name.to_string(),
            1,
        );
        assert_eq!(of_a, vec!["t1", "t2"]);
        let of_t1 = all_keys(
            |page| read(store, |tx| tx.thing_principals(&alice.id, &thing_name("t1"), None, page)).unwrap(),
            |attachment| attachment.certificate_id.to_string(),
            1,
        );
        assert_eq!(of_t1, vec![id('a').to_string(), id('b').to_string()]);
        assert_eq!(
            read(store, |tx| tx.certificate_things(&alice.id, &id('c'))).unwrap(),
            vec![attachment("t3", 'c', ThingPrincipalType::Exclusive)]
        );
        for (principal_type, expected) in [(ThingPrincipalType::Exclusive, 1), (ThingPrincipalType::NonExclusive, 0)] {
            let of_c = read(store, |tx| {
                tx.certificate_things_page(&alice.id, &id('c'), Some(principal_type), &first_page(10))
            })
            .unwrap();
            let of_t3 = read(store, |tx| {
                tx.thing_principals(&alice.id, &thing_name("t3"), Some(principal_type), &first_page(10))
            })
            .unwrap();
            assert_eq!((of_c.items.len(), of_t3.items.len()), (expected, expected), "{principal_type:?}");
        }
        let described = read(store, |tx| tx.certificate_things_described(&alice.id, &id('a'))).unwrap();
        assert_eq!(
            described
                .iter()
                .map(|(thing, kind)| (thing.name.to_string(), thing.attributes["k"].clone(), *kind))
                .collect::<Vec<_>>(),
            vec![
                ("t1".into(), "t1".into(), ThingPrincipalType::NonExclusive),
                ("t2".into(), "t2".into(), ThingPrincipalType::NonExclusive)
            ]
        );
        assert_eq!(read(store, |tx| tx.count_thing_principals(&alice.id, &thing_name("t1"))).unwrap(), 2);
        assert!(write(store, |tx| tx.delete_thing_principal(&alice.id, &thing_name("t1"), &id('a'))).unwrap());
        assert!(!write(store, |tx| tx.delete_thing_principal(&alice.id, &thing_name("t1"), &id('a'))).unwrap());
        assert_eq!(read(store, |tx| tx.count_thing_principals(&alice.id, &thing_name("t1"))).unwrap(), 1);
    });
}

#[test]
fn an_account_takes_its_policies_and_things_along() {
    each_backend("account_policies_things", |store| {
        let alice = account("111111111111", "alice");
        setup(store, &[&alice]);
        write(store, |tx| {
            tx.insert_policy(&policy(&alice, "p", 1))?;
            tx.insert_policy_version(&version(&alice, "p", 1))?;
            tx.attach_policy(&alice.id, &policy_name("p"), &id('a'), at(1))?;
            tx.insert_thing(&thing(&alice, "t", None, &[("k", "v")]))?;
            tx.put_thing_principal(&ThingPrincipal {
                account: alice.id.clone(),
                thing_name: thing_name("t"),
                certificate_id: id('a'),
                principal_type: ThingPrincipalType::Exclusive,
                attached_at: at(1),
            })?;
            tx.delete_account(&alice.id)
        })
        .unwrap();
        setup(store, &[&alice]);
        let (policy, versions, documents, thing, things) = read(store, |tx| {
            Ok::<_, Error>((
                tx.get_policy(&alice.id, &policy_name("p"))?,
                tx.list_policy_versions(&alice.id, &policy_name("p"))?,
                tx.count_certificate_policies(&alice.id, &id('a'))?,
                tx.get_thing(&alice.id, &thing_name("t"))?,
                tx.certificate_things(&alice.id, &id('a'))?,
            ))
        })
        .unwrap();
        assert!(policy.is_none() && versions.is_empty() && documents == 0 && thing.is_none() && things.is_empty());
    });
}

#[test]
fn policy_and_thing_names_follow_aws_patterns() {
    let policy_cases = [
        ("a", true),
        ("my-policy_1.v2@x+y=z,w", true),
        ("", false),
        ("a b", false),
        ("a/b", false),
        ("é", false),
        ("a:b", false),
    ];
    for (text, valid) in policy_cases {
        assert_eq!(PolicyName::parse(text).is_ok(), valid, "{text:?}");
    }
    assert!(PolicyName::parse(&"p".repeat(128)).is_ok() && PolicyName::parse(&"p".repeat(129)).is_err());
    let thing_cases = [
        ("lamp", true),
        ("a:b_c-D9", true),
        ("", false),
        ("a.b", false),
        ("a b", false),
        ("a/b", false),
        ("a@b", false),
    ];
    for (text, valid) in thing_cases {
        assert_eq!(ThingName::parse(text).is_ok(), valid, "{text:?}");
    }
    assert!(ThingName::parse(&"t".repeat(128)).is_ok() && ThingName::parse(&"t".repeat(129)).is_err());
}

#[test]
fn the_change_feed_names_policies_and_things() {
    each_backend("changes_policies_things", |store| {
        let alice = account("111111111111", "alice");
        setup(store, &[&alice]);
        let start = read(store, |tx| tx.last_change_seq()).unwrap();
        write(store, |tx| {
            tx.record_change(&alice.id, ChangeKind::Policy, "my-policy", at(1))?;
            tx.record_change(&alice.id, ChangeKind::Thing, "my-thing", at(1))
        })
        .unwrap();
        let seen: Vec<_> =
            read(store, |tx| tx.changes_after(start, 10)).unwrap().into_iter().map(|c| (c.kind, c.entity_id)).collect();
        assert_eq!(
            seen,
            vec![(ChangeKind::Policy, "my-policy".to_string()), (ChangeKind::Thing, "my-thing".to_string())]
        );
    });
}

#[test]
fn provisioning_templates_round_trip_page_and_go_with_their_account() {
    each_backend("provisioning_templates", |store| {
        let alice = account("111111111111", "alice");
        let bob = account("222222222222", "bob");
        setup(store, &[&alice, &bob]);
        let template = |owner: &Account, name: &str, description: Option<&str>| ProvisioningTemplate {
            account: owner.id.clone(),
            name: name.into(),
            id: format!("id-{name}"),
            description: description.map(str::to_owned),
            body: "{\"Resources\": {}}".into(),
            enabled: description.is_some(),
            template_type: "JITP".into(),
            role_arn: "arn:aws:iam::111111111111:role/JITPRole".into(),
            default_version: 1,
            next_version: 2,
            pre_provisioning_hook: None,
            created_at: at(10),
            last_modified: at(20),
        };
        write(store, |tx| {
            for name in ["c", "a", "b"] {
                tx.insert_provisioning_template(&template(&alice, name, (name == "a").then_some("first")))?;
            }
            tx.insert_provisioning_template(&template(&bob, "a", None))
        })
        .unwrap();
        let stored = read(store, |tx| tx.get_provisioning_template(&alice.id, "a")).unwrap();
        assert_eq!(stored, Some(template(&alice, "a", Some("first"))));
        assert_eq!(
            read(store, |tx| tx.get_provisioning_template(&bob.id, "a")).unwrap(),
            Some(template(&bob, "a", None))
        );
        let names = all_keys(
            |page| read(store, |tx| tx.list_provisioning_templates(&alice.id, page)).unwrap(),
            |t| t.name.clone(),
            2,
        );
        assert_eq!(names, ["a", "b", "c"]);
        assert!(write(store, |tx| tx.delete_provisioning_template(&alice.id, "b")).unwrap());
        assert!(!write(store, |tx| tx.delete_provisioning_template(&alice.id, "b")).unwrap());
        write(store, |tx| tx.delete_account(&alice.id).map(drop)).unwrap();
        assert_eq!(read(store, |tx| tx.get_provisioning_template(&alice.id, "a")).unwrap(), None);
        assert!(read(store, |tx| tx.get_provisioning_template(&bob.id, "a")).unwrap().is_some());
    });
}

#[test]
fn provisioning_template_versions_hooks_and_claims() {
    each_backend("provisioning_template_versions", |store| {
        let alice = account("111111111111", "alice");
        let bob = account("222222222222", "bob");
        setup(store, &[&alice, &bob]);
        let mut template = ProvisioningTemplate {
            account: alice.id.clone(),
            name: "fleet".into(),
            id: "id-fleet".into(),
            description: None,
            body: "v1".into(),
            enabled: true,
            template_type: "FLEET_PROVISIONING".into(),
            role_arn: "arn:aws:iam::111111111111:role/Provisioning".into(),
            default_version: 1,
            next_version: 2,
            pre_provisioning_hook: Some(ProvisioningHook {
                target: "https://hooks.example/check".into(),
                payload_version: "2020-04-01".into(),
            }),
            created_at: at(10),
            last_modified: at(10),
        };
        let version = |owner: &Account, id: i64| ProvisioningTemplateVersion {
            account: owner.id.clone(),
            template_name: "fleet".into(),
            version_id: id,
            body: format!("v{id}"),
            created_at: at(10 + id),
        };
        write(store, |tx| {
            tx.insert_provisioning_template(&template)?;
            for id in [1, 2, 3] {
                tx.insert_provisioning_template_version(&version(&alice, id))?;
            }
            tx.insert_provisioning_template_version(&version(&bob, 1))
        })
        .unwrap();
        assert_eq!(read(store, |tx| tx.get_provisioning_template(&alice.id, "fleet")).unwrap(), Some(template.clone()));
        let ids = |owner: &Account| -> Vec<i64> {
            read(store, |tx| tx.provisioning_template_versions(&owner.id, "fleet"))
                .unwrap()
                .iter()
                .map(|version| version.version_id)
                .collect()
        };
        assert_eq!(ids(&alice), [1, 2, 3]);
        assert_eq!(
            read(store, |tx| tx.get_provisioning_template_version(&alice.id, "fleet", 2)).unwrap(),
            Some(version(&alice, 2))
        );
        assert!(write(store, |tx| tx.delete_provisioning_template_version(&alice.id, "fleet", 2)).unwrap());
        assert!(!write(store, |tx| tx.delete_provisioning_template_version(&alice.id, "fleet", 2)).unwrap());
        assert_eq!(ids(&alice), [1, 3]);

        template.default_version = 3;
        template.next_version = 4;
        template.body = "v3".into();
        template.enabled = false;
        template.description = Some("second".into());
        template.pre_provisioning_hook = None;
        template.last_modified = at(30);
        write(store, |tx| tx.update_provisioning_template(&template)).unwrap();
        assert_eq!(read(store, |tx| tx.get_provisioning_template(&alice.id, "fleet")).unwrap(), Some(template.clone()));

        let claim_id = CertificateId::of_der(b"claim");
        let claim = ProvisioningClaim {
            account: alice.id.clone(),
            certificate_id: claim_id.clone(),
            template_name: "fleet".into(),
            expires_at: at(310),
            created_at: at(10),
        };
        write(store, |tx| tx.insert_provisioning_claim(&claim)).unwrap();
        assert_eq!(read(store, |tx| tx.get_provisioning_claim(&alice.id, &claim_id)).unwrap(), Some(claim));
        assert_eq!(read(store, |tx| tx.get_provisioning_claim(&bob.id, &claim_id)).unwrap(), None);

        assert!(write(store, |tx| tx.delete_provisioning_template(&alice.id, "fleet")).unwrap());
        assert!(ids(&alice).is_empty(), "a template's versions go with it");
        assert_eq!(ids(&bob), [1]);
        write(store, |tx| tx.delete_account(&bob.id).map(drop)).unwrap();
        assert!(ids(&bob).is_empty());
        write(store, |tx| tx.delete_account(&alice.id).map(drop)).unwrap();
        assert_eq!(read(store, |tx| tx.get_provisioning_claim(&alice.id, &claim_id)).unwrap(), None);
    });
}

// ---- endpoints: server certificates, domain configurations, test endpoint probes -------------

fn server_cert(owner: &Account, id: &str, domain: &str) -> ServerCertificate {
    ServerCertificate {
        account: owner.id.clone(),
        id: id.into(),
        certificate_pem: format!("leaf {id}"),
        chain_pem: Some(format!("chain {id}")),
        sealed_key: vec![1, 2, 3, id.len() as u8],
        fingerprint: format!("fp-{id}"),
        domain_name: domain.into(),
        key_algorithm: "EC_prime256v1".into(),
        not_before: at(0),
        not_after: at(86_400),
        imported_at: at(5),
    }
}

fn domain_config(owner: &Account, name: &str, domain: &str, current: &[&str], next: &[&str]) -> DomainConfiguration {
    DomainConfiguration {
        account: owner.id.clone(),
        name: name.into(),
        arn_id: format!("arn-{name}"),
        domain_name: domain.into(),
        domain_type: "CUSTOMER_MANAGED".into(),
        service_type: "DATA".into(),
        status: DomainStatus::Enabled,
        security_policy: "IoTSecurityPolicy_TLS13_1_2_2022_10".into(),
        authentication_type: Some("AWS_X509".into()),
        application_protocol: Some("SECURE_MQTT".into()),
        current_chain: current.iter().map(|s| s.to_string()).collect(),
        next_chain: next.iter().map(|s| s.to_string()).collect(),
        serving_next: false,
        migration: None,
        last_status_change: at(10),
        created_at: at(10),
        last_modified: at(10),
    }
}

fn probe(owner: &Account, client_id: Option<&str>, at_seconds: i64) -> EndpointProbe {
    EndpointProbe {
        seq: 0,
        account: owner.id.clone(),
        configuration: "certfleet:Test".into(),
        peer: "127.0.0.1:1234".into(),
        server_name: Some("alice-test.iot.us-east-1.certfleet.local".into()),
        client_id: client_id.map(str::to_owned),
        client_certificate_id: Some("c".repeat(64)),
        tls_version: Some("TLSv1_3".into()),
        cipher_suite: Some("TLS13_AES_128_GCM_SHA256".into()),
        outcome: "connect_refused".into(),
        detail: format!("probe at {at_seconds}"),
        at: at(at_seconds),
    }
}

#[test]
fn server_certificates_put_replace_page_and_delete() {
    each_backend("server_certificates", |store| {
        let alice = account("111111111111", "alice");
        let bob = account("222222222222", "bob");
        setup(store, &[&alice, &bob]);
        write(store, |tx| {
            for id in ["c-3", "c-1", "c-2", "c-5", "c-4"] {
                tx.put_server_certificate(&server_cert(&alice, id, "a.example.com"))?;
            }
            tx.put_server_certificate(&server_cert(&bob, "c-1", "b.example.com"))
        })
        .unwrap();
        assert_eq!(
            read(store, |tx| tx.get_server_certificate(&alice.id, "c-1")).unwrap(),
            Some(server_cert(&alice, "c-1", "a.example.com"))
        );
        assert_eq!(
            read(store, |tx| tx.get_server_certificate(&bob.id, "c-1")).unwrap(),
            Some(server_cert(&bob, "c-1", "b.example.com"))
        );
        // Re-import replaces every field under the same ID.
        let mut replaced = server_cert(&alice, "c-1", "new.example.com");
        replaced.certificate_pem = "leaf again".into();
        replaced.chain_pem = None;
        replaced.sealed_key = vec![9; 40];
        replaced.fingerprint = "fp-new".into();
        replaced.key_algorithm = "RSA_2048".into();
        replaced.not_before = at(100);
        replaced.not_after = at(200);
        replaced.imported_at = at(150);
        write(store, |tx| tx.put_server_certificate(&replaced)).unwrap();
        assert_eq!(read(store, |tx| tx.get_server_certificate(&alice.id, "c-1")).unwrap(), Some(replaced));
        let ids = all_keys(
            |page| read(store, |tx| tx.list_server_certificates(&alice.id, page)).unwrap(),
            |c| c.id.clone(),
            2,
        );
        assert_eq!(ids, ["c-1", "c-2", "c-3", "c-4", "c-5"]);
        let bob_ids = all_keys(
            |page| read(store, |tx| tx.list_server_certificates(&bob.id, page)).unwrap(),
            |c| c.id.clone(),
            10,
        );
        assert_eq!(bob_ids, ["c-1"]);
        assert!(write(store, |tx| tx.delete_server_certificate(&alice.id, "c-1")).unwrap());
        assert!(!write(store, |tx| tx.delete_server_certificate(&alice.id, "c-1")).unwrap());
        assert_eq!(read(store, |tx| tx.get_server_certificate(&alice.id, "c-1")).unwrap(), None);
        assert!(read(store, |tx| tx.get_server_certificate(&bob.id, "c-1")).unwrap().is_some());
    });
}

#[test]
fn server_certificate_users_cover_both_chains_of_one_account() {
    each_backend("server_certificate_users", |store| {
        let alice = account("111111111111", "alice");
        let bob = account("222222222222", "bob");
        setup(store, &[&alice, &bob]);
        write(store, |tx| {
            tx.insert_domain_configuration(&domain_config(&alice, "zeta", "z.example.com", &["ec-1", "rsa-1"], &[]))?;
            tx.insert_domain_configuration(&domain_config(&alice, "alpha", "a.example.com", &["ec-2"], &["ec-1"]))?;
            tx.insert_domain_configuration(&domain_config(&alice, "other", "o.example.com", &["ec-10"], &["ec-11"]))?;
            tx.insert_domain_configuration(&domain_config(&bob, "bobs", "b.example.com", &["ec-1"], &[]))
        })
        .unwrap();
        let users = |owner: &Account, id: &str| read(store, |tx| tx.server_certificate_users(&owner.id, id)).unwrap();
        assert_eq!(users(&alice, "ec-1"), ["alpha", "zeta"]);
        assert_eq!(users(&alice, "rsa-1"), ["zeta"]);
        assert_eq!(users(&alice, "ec-2"), ["alpha"]);
        assert_eq!(users(&alice, "ec-11"), ["other"]);
        assert!(users(&alice, "ec").is_empty());
        assert!(users(&alice, "missing").is_empty());
        assert_eq!(users(&bob, "ec-1"), ["bobs"]);
        assert!(users(&bob, "rsa-1").is_empty());
    });
}

#[test]
fn domain_configurations_insert_update_route_and_page() {
    each_backend("domain_configurations", |store| {
        let alice = account("111111111111", "alice");
        let bob = account("222222222222", "bob");
        setup(store, &[&alice, &bob]);
        write(store, |tx| {
            for name in ["c", "a", "e", "b", "d"] {
                tx.insert_domain_configuration(&domain_config(
                    &alice,
                    name,
                    &format!("{name}.example.com"),
                    &["x"],
                    &[],
                ))?;
            }
            Ok::<_, Error>(())
        })
        .unwrap();
        // The domain name is unique across accounts.
        let taken = write(store, |tx| {
            tx.insert_domain_configuration(&domain_config(&bob, "mine", "a.example.com", &["y"], &[]))
        });
        assert!(matches!(taken, Err(Error::Conflict(_))), "{taken:?}");
        let same_name = write(store, |tx| {
            tx.insert_domain_configuration(&domain_config(&alice, "a", "fresh.example.com", &["y"], &[]))
        });
        assert!(same_name.is_err(), "{same_name:?}");
        assert_eq!(read(store, |tx| tx.get_domain_configuration(&bob.id, "mine")).unwrap(), None);
        assert_eq!(read(store, |tx| tx.domain_configuration_by_domain("fresh.example.com")).unwrap(), None);
        // The same name in another account is fine.
        write(store, |tx| tx.insert_domain_configuration(&domain_config(&bob, "a", "bob.example.com", &["y"], &[])))
            .unwrap();

        let original = domain_config(&alice, "a", "a.example.com", &["x"], &[]);
        assert_eq!(read(store, |tx| tx.get_domain_configuration(&alice.id, "a")).unwrap(), Some(original.clone()));
        assert_eq!(
            read(store, |tx| tx.domain_configuration_by_domain("a.example.com")).unwrap(),
            Some(original.clone())
        );

        // An update changes every mutable field and none of the immutable ones.
        let mut changed = original.clone();
        changed.domain_type = "ENDPOINT".into();
        changed.service_type = "JOBS".into();
        changed.status = DomainStatus::Disabled;
        changed.security_policy = "IoTSecurityPolicy_TLS13_1_3_2022_10".into();
        changed.authentication_type = None;
        changed.application_protocol = Some("MQTT_WSS".into());
        changed.current_chain = vec!["p".into(), "q".into()];
        changed.next_chain = vec!["r".into()];
        changed.serving_next = true;
        changed.migration = Some("{\"phase\":\"draining\"}".into());
        changed.last_status_change = at(500);
        changed.last_modified = at(600);
        let mut attempted = changed.clone();
        attempted.arn_id = "other-arn".into();
        attempted.domain_name = "hijack.example.com".into();
        attempted.created_at = at(999);
        write(store, |tx| tx.update_domain_configuration(&attempted)).unwrap();
        assert_eq!(read(store, |tx| tx.get_domain_configuration(&alice.id, "a")).unwrap(), Some(changed.clone()));
        assert_eq!(read(store, |tx| tx.domain_configuration_by_domain("hijack.example.com")).unwrap(), None);
        assert_eq!(
            read(store, |tx| tx.domain_configuration_by_domain("a.example.com")).unwrap(),
            Some(changed.clone())
        );
        // Bob's configuration of the same name is untouched.
        assert_eq!(
            read(store, |tx| tx.get_domain_configuration(&bob.id, "a")).unwrap(),
            Some(domain_config(&bob, "a", "bob.example.com", &["y"], &[]))
        );
        // Updating one that is not stored fails.
        let missing = write(store, |tx| {
            tx.update_domain_configuration(&domain_config(&alice, "nope", "nope.example.com", &[], &[]))
        });
        assert!(missing.is_err(), "{missing:?}");

        let names = all_keys(
            |page| read(store, |tx| tx.list_domain_configurations(&alice.id, page)).unwrap(),
            |c| c.name.clone(),
            2,
        );
        assert_eq!(names, ["a", "b", "c", "d", "e"]);
        assert!(write(store, |tx| tx.delete_domain_configuration(&alice.id, "a")).unwrap());
        assert!(!write(store, |tx| tx.delete_domain_configuration(&alice.id, "a")).unwrap());
        assert_eq!(read(store, |tx| tx.domain_configuration_by_domain("a.example.com")).unwrap(), None);
        // The domain name is free again, for anyone.
        write(store, |tx| tx.insert_domain_configuration(&domain_config(&bob, "now-bobs", "a.example.com", &[], &[])))
            .unwrap();
        assert_eq!(
            read(store, |tx| tx.domain_configuration_by_domain("a.example.com")).unwrap().map(|c| c.account),
            Some(bob.id.clone())
        );
    });
}

#[test]
fn endpoint_probes_keep_the_newest_per_account() {
    each_backend("endpoint_probes", |store| {
        let alice = account("111111111111", "alice");
        let bob = account("222222222222", "bob");
        setup(store, &[&alice, &bob]);
        // Alice's probes interleave with many of Bob's: retention is per account.
        write(store, |tx| {
            for i in 0..6 {
                let client = if i % 2 == 0 { "even" } else { "odd" };
                tx.insert_endpoint_probe(&probe(&alice, Some(client), i), 4)?;
                for j in 0..5 {
                    tx.insert_endpoint_probe(&probe(&bob, None, 100 + i * 10 + j), 100)?;
                }
            }
            Ok::<_, Error>(())
        })
        .unwrap();
        let all = read(store, |tx| tx.endpoint_probes(&alice.id, None, at(0), 100)).unwrap();
        let details: Vec<_> = all.iter().map(|p| p.detail.clone()).collect();
        assert_eq!(details, ["probe at 5", "probe at 4", "probe at 3", "probe at 2"]);
        assert!(all.windows(2).all(|w| w[0].seq > w[1].seq));
        let mut expected = probe(&alice, Some("odd"), 5);
        expected.seq = all[0].seq;
        assert_eq!(all[0], expected);

        let odd = read(store, |tx| tx.endpoint_probes(&alice.id, Some("odd"), at(0), 100)).unwrap();
        assert_eq!(odd.iter().map(|p| p.at).collect::<Vec<_>>(), [at(5), at(3)]);
        let limited = read(store, |tx| tx.endpoint_probes(&alice.id, None, at(0), 1)).unwrap();
        assert_eq!(limited.len(), 1);
        assert_eq!(limited[0].at, at(5));
        let recent = read(store, |tx| tx.endpoint_probes(&alice.id, None, at(4), 100)).unwrap();
        assert_eq!(recent.iter().map(|p| p.at).collect::<Vec<_>>(), [at(5), at(4)]);
        assert_eq!(read(store, |tx| tx.endpoint_probes(&bob.id, None, at(0), 1000)).unwrap().len(), 30);
        assert!(read(store, |tx| tx.endpoint_probes(&bob.id, Some("odd"), at(0), 100)).unwrap().is_empty());
    });
}

#[test]
fn topic_rules_round_trip_filter_page_and_feed_changes() {
    each_backend("topic_rules", |store| {
        let alice = account("111111111111", "alice");
        let bob = account("222222222222", "bob");
        setup(store, &[&alice, &bob]);
        let rule = |owner: &Account, name: &str, topic: &str, disabled: bool| TopicRule {
            account: owner.id.clone(),
            name: name.into(),
            arn: format!("arn:aws:iot:us-east-1:{}:rule/{name}", owner.id),
            sql: format!("SELECT * FROM '{topic}'"),
            topic_pattern: topic.into(),
            description: disabled.then(|| "off".to_owned()),
            aws_iot_sql_version: "2016-03-23".into(),
            rule_disabled: disabled,
            actions: r#"[{"republish":{"topic":"out","qos":0}}]"#.into(),
            error_action: (!disabled).then(|| r#"{"republish":{"topic":"errors","qos":1}}"#.to_owned()),
            created_at: at(10),
            last_modified: at(10),
        };
        let start = read(store, |tx| tx.last_change_seq()).unwrap();
        write(store, |tx| {
            tx.insert_topic_rule(&rule(&alice, "c", "a/+", false))?;
            tx.insert_topic_rule(&rule(&alice, "a", "a/+", true))?;
            tx.insert_topic_rule(&rule(&alice, "b", "b/#", false))?;
            tx.insert_topic_rule(&rule(&bob, "a", "x", false))
        })
        .unwrap();
        let duplicate = write(store, |tx| tx.insert_topic_rule(&rule(&alice, "a", "z", false)));
        assert!(matches!(duplicate, Err(Error::Conflict(_))), "{duplicate:?}");
        assert_eq!(read(store, |tx| tx.get_topic_rule(&alice.id, "a")).unwrap(), Some(rule(&alice, "a", "a/+", true)));
        assert_eq!(read(store, |tx| tx.get_topic_rule(&bob.id, "c")).unwrap(), None);

        let names = |filter: TopicRuleFilter, limit| {
            all_keys(
                |page| read(store, |tx| tx.list_topic_rules(&alice.id, &filter, page)).unwrap(),
                |r| r.name.clone(),
                limit,
            )
        };
        assert_eq!(names(TopicRuleFilter::default(), 2), ["a", "b", "c"]);
        assert_eq!(names(TopicRuleFilter { topic_pattern: Some("a/+".into()), rule_disabled: None }, 1), ["a", "c"]);
        assert_eq!(names(TopicRuleFilter { topic_pattern: None, rule_disabled: Some(false) }, 1), ["b", "c"]);
        assert_eq!(names(TopicRuleFilter { topic_pattern: Some("a/+".into()), rule_disabled: Some(true) }, 5), ["a"]);
        let enabled = read(store, |tx| tx.enabled_topic_rules(&alice.id)).unwrap();
        assert_eq!(enabled.iter().map(|r| r.name.as_str()).collect::<Vec<_>>(), ["b", "c"]);

        let mut replaced = rule(&alice, "b", "b/new", true);
        replaced.last_modified = at(20);
        assert!(write(store, |tx| tx.replace_topic_rule(&replaced)).unwrap());
        assert_eq!(read(store, |tx| tx.get_topic_rule(&alice.id, "b")).unwrap(), Some(replaced.clone()));
        assert!(!write(store, |tx| tx.replace_topic_rule(&rule(&alice, "zz", "q", false))).unwrap());
        assert!(write(store, |tx| tx.set_topic_rule_disabled(&alice.id, "b", false, at(30))).unwrap());
        let enabled_again = read(store, |tx| tx.get_topic_rule(&alice.id, "b")).unwrap().unwrap();
        assert!(!enabled_again.rule_disabled);
        assert_eq!(enabled_again.last_modified, at(30));
        assert!(!write(store, |tx| tx.set_topic_rule_disabled(&alice.id, "zz", false, at(30))).unwrap());
        assert!(write(store, |tx| tx.delete_topic_rule(&alice.id, "b", at(40))).unwrap());
        assert!(!write(store, |tx| tx.delete_topic_rule(&alice.id, "b", at(40))).unwrap());

        let changes = read(store, |tx| tx.changes_after(start, 100)).unwrap();
        let feed: Vec<(String, ChangeKind, String)> =
            changes.iter().map(|c| (c.account.to_string(), c.kind, c.entity_id.clone())).collect();
        let entry = |owner: &Account, name: &str| (owner.id.to_string(), ChangeKind::TopicRule, name.to_owned());
        assert_eq!(
            feed,
            [
                entry(&alice, "c"),
                entry(&alice, "a"),
                entry(&alice, "b"),
                entry(&bob, "a"),
                entry(&alice, "b"),
                entry(&alice, "b"),
                entry(&alice, "b"),
            ],
            "one entry per committed change, none for the refused ones"
        );

        write(store, |tx| tx.delete_account(&alice.id).map(drop)).unwrap();
        assert_eq!(read(store, |tx| tx.get_topic_rule(&alice.id, "a")).unwrap(), None);
        assert!(read(store, |tx| tx.get_topic_rule(&bob.id, "a")).unwrap().is_some());
    });
}

/// Many threads reading at once share a bounded set of SQLite read connections: every read
/// completes, none fails for want of a connection, and the writer is never blocked by them.
#[test]
fn concurrent_reads_share_a_bounded_reader_pool() {
    let dir = std::env::temp_dir().join(format!("certfleet-registry-readers-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let store = SqliteStore::open(&dir.join("registry.db")).unwrap();
    let alice = account("222222222222", "alice");
    setup(&store, &[&alice]);
    std::thread::scope(|scope| {
        let readers: Vec<_> = (0..32)
            .map(|_| {
                scope.spawn(|| {
                    for _ in 0..20 {
                        assert_eq!(read(&store, |tx| tx.list_accounts()).unwrap(), vec![alice.clone()]);
                    }
                })
            })
            .collect();
        for reader in readers {
            reader.join().unwrap();
        }
    });
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn access_keys_are_listed_and_deleted_within_their_account() {
    each_backend("access_keys", |store| {
        let alice = account("111111111111", "alice");
        let mallory = account("666666666666", "mallory");
        setup(store, &[&alice, &mallory]);
        let key = |owner: &Account, id: &str, created: i64| AccessKey {
            access_key_id: id.into(),
            secret_access_key: format!("secret of {id}"),
            account: owner.id.clone(),
            created_at: at(created),
        };
        write(store, |tx| {
            tx.insert_access_key(&key(&alice, "AKIAALICE2", 3))?;
            tx.insert_access_key(&key(&alice, "AKIAALICE1", 2))?;
            tx.insert_access_key(&key(&mallory, "AKIAMALLORY", 2))
        })
        .unwrap();
        let ids = |owner: &Account| -> Vec<String> {
            let keys = read(store, |tx| tx.list_access_keys(&owner.id)).unwrap();
            keys.into_iter().map(|key| key.access_key_id).collect()
        };
        assert_eq!(ids(&alice), ["AKIAALICE1", "AKIAALICE2"]);

        // Mallory names Alice's key as hers: nothing is deleted.
        assert!(!write(store, |tx| tx.delete_access_key(&mallory.id, "AKIAALICE1")).unwrap());
        assert_eq!(ids(&alice), ["AKIAALICE1", "AKIAALICE2"]);
        assert!(write(store, |tx| tx.delete_access_key(&alice.id, "AKIAALICE1")).unwrap());
        assert!(!write(store, |tx| tx.delete_access_key(&alice.id, "AKIAALICE1")).unwrap());
        assert_eq!(ids(&alice), ["AKIAALICE2"]);
        assert_eq!(ids(&mallory), ["AKIAMALLORY"]);
        assert_eq!(read(store, |tx| tx.get_access_key("AKIAALICE1")).unwrap(), None);
    });
}

#[test]
fn locking_a_deleted_account_fails_and_deleting_it_twice_finds_nothing() {
    each_backend("lock_gone", |store| {
        let alice = account("111111111111", "alice");
        setup(store, &[&alice]);
        assert_eq!(write(store, |tx| tx.lock_account(&alice.id)).unwrap(), alice);
        assert!(write(store, |tx| tx.delete_account(&alice.id)).unwrap());
        let outcome = write(store, |tx| {
            tx.lock_account(&alice.id)?;
            tx.insert_thing(&thing(&alice, "orphan", None, &[]))
        });
        assert!(matches!(&outcome, Err(Error::AccountNotFound(gone)) if gone == &alice.id), "{outcome:?}");
        assert_eq!(write(store, |tx| tx.lock_account_if_present(&alice.id)).unwrap(), None);
        assert!(!write(store, |tx| tx.delete_account(&alice.id)).unwrap());
        assert_eq!(read(store, |tx| tx.get_thing(&alice.id, &thing_name("orphan"))).unwrap(), None);
    });
}

/// The deletion commits while a write for the account waits on it: the write's lock finds the
/// account gone, and it lands nothing (things have no foreign key: only the lock protects them).
#[test]
fn a_write_waiting_on_an_account_deletion_lands_nothing() {
    each_backend("deletion_then_write", |store| {
        let alice = &account("111111111111", "alice");
        setup(store, &[alice]);
        let (deleted, deleted_seen) = std::sync::mpsc::channel();
        let (go, go_seen) = std::sync::mpsc::channel::<()>();
        std::thread::scope(|scope| {
            let deleter = scope.spawn(move || {
                write(store, |tx| {
                    let existed = tx.delete_account(&alice.id)?;
                    // Hold the deletion open until the writer has started.
                    deleted.send(()).unwrap();
                    go_seen.recv().unwrap();
                    Ok::<_, Error>(existed)
                })
            });
            deleted_seen.recv().unwrap();
            let writer = scope.spawn(move || {
                write(store, |tx| {
                    tx.lock_account(&alice.id)?;
                    tx.insert_thing(&thing(alice, "orphan", None, &[]))
                })
            });
            go.send(()).unwrap();
            assert!(deleter.join().unwrap().unwrap());
            let outcome = writer.join().unwrap();
            assert!(matches!(&outcome, Err(Error::AccountNotFound(gone)) if gone == &alice.id), "{outcome:?}");
        });
        assert_eq!(read(store, |tx| tx.get_thing(&alice.id, &thing_name("orphan"))).unwrap(), None);
    });
}

/// A write holds the account when its deletion starts: the deletion waits for it and takes its
/// rows along. (On PostgreSQL the deletion's transaction is under way before the write inserts;
/// SQLite's single writer cannot start it before the write commits.)
#[test]
fn an_account_deleted_while_a_write_holds_it_takes_the_write_along() {
    each_backend("write_then_deletion", |store| {
        let alice = &account("111111111111", "alice");
        setup(store, &[alice]);
        let (locked, locked_seen) = std::sync::mpsc::channel();
        let (deleting, deleting_seen) = std::sync::mpsc::channel();
        let (go, go_seen) = std::sync::mpsc::channel::<()>();
        std::thread::scope(|scope| {
            let writer = scope.spawn(move || {
                write(store, |tx| {
                    tx.lock_account(&alice.id)?;
                    locked.send(()).unwrap();
                    go_seen.recv().unwrap();
                    tx.insert_thing(&thing(alice, "late", None, &[]))
                })
            });
            locked_seen.recv().unwrap();
            let deleter = scope.spawn(move || {
                write(store, |tx| {
                    let _ = deleting.send(());
                    tx.delete_account(&alice.id)
                })
            });
            if store.backend() == "postgres" {
                deleting_seen.recv().unwrap();
                // Give the deletion's first statement a moment to reach the server; the outcome
                // must not depend on it, it only makes the old bug (children deleted before the
                // account row was locked) show.
                std::thread::sleep(std::time::Duration::from_millis(100));
            }
            go.send(()).unwrap();
            writer.join().unwrap().unwrap();
            assert!(deleter.join().unwrap().unwrap());
        });
        let (accounts, left) =
            read(store, |tx| Ok::<_, Error>((tx.list_accounts()?, tx.get_thing(&alice.id, &thing_name("late"))?)))
                .unwrap();
        assert!(accounts.is_empty());
        assert_eq!(left, None);
    });
}

#[test]
fn topic_rule_destinations_round_trip_by_token_and_url_page_and_feed_changes() {
    each_backend("topic_rule_destinations", |store| {
        let alice = account("111111111111", "alice");
        let bob = account("222222222222", "bob");
        setup(store, &[&alice, &bob]);
        let destination = |owner: &Account, n: u32, status: DestinationStatus| TopicRuleDestination {
            account: owner.id.clone(),
            arn: format!("arn:aws:iot:us-east-1:{}:ruledestination/http/{n:04}", owner.id),
            confirmation_url: format!("https://hooks.example.com/{n}"),
            status,
            status_reason: None,
            token_sha256: format!("{n:064x}"),
            confirmed: status == DestinationStatus::Enabled,
            created_at: at(10),
            last_updated_at: at(10),
        };
        let start = read(store, |tx| tx.last_change_seq()).unwrap();
        write(store, |tx| {
            tx.insert_topic_rule_destination(&destination(&alice, 1, DestinationStatus::InProgress))?;
            tx.insert_topic_rule_destination(&destination(&alice, 2, DestinationStatus::Enabled))?;
            tx.insert_topic_rule_destination(&destination(&alice, 3, DestinationStatus::Enabled))?;
            tx.insert_topic_rule_destination(&destination(&bob, 4, DestinationStatus::Enabled))
        })
        .unwrap();
        let first = destination(&alice, 1, DestinationStatus::InProgress);
        assert_eq!(
            read(store, |tx| tx.get_topic_rule_destination(&alice.id, &first.arn)).unwrap(),
            Some(first.clone())
        );
        assert_eq!(read(store, |tx| tx.get_topic_rule_destination(&bob.id, &first.arn)).unwrap(), None);
        let by_token = read(store, |tx| tx.topic_rule_destination_by_token(&alice.id, &first.token_sha256)).unwrap();
        assert_eq!(by_token, Some(first.clone()));
        assert_eq!(read(store, |tx| tx.topic_rule_destination_by_token(&bob.id, &first.token_sha256)).unwrap(), None);
        let by_url =
            read(store, |tx| tx.topic_rule_destination_by_url(&alice.id, "https://hooks.example.com/2")).unwrap();
        assert_eq!(by_url.map(|d| d.status), Some(DestinationStatus::Enabled));
        assert_eq!(read(store, |tx| tx.count_topic_rule_destinations(&alice.id)).unwrap(), 3);
        let arns = all_keys(
            |page| read(store, |tx| tx.list_topic_rule_destinations(&alice.id, page)).unwrap(),
            |d| d.arn.clone(),
            2,
        );
        assert_eq!(arns.len(), 3);
        assert_eq!(
            read(store, |tx| tx.enabled_destination_urls(&alice.id)).unwrap(),
            ["https://hooks.example.com/2", "https://hooks.example.com/3"]
        );

        let confirmed = TopicRuleDestination {
            status: DestinationStatus::Enabled,
            status_reason: Some("why".into()),
            confirmed: true,
            last_updated_at: at(20),
            ..first.clone()
        };
        assert!(write(store, |tx| tx.update_topic_rule_destination(&confirmed)).unwrap());
        assert_eq!(read(store, |tx| tx.get_topic_rule_destination(&alice.id, &first.arn)).unwrap(), Some(confirmed));
        assert_eq!(read(store, |tx| tx.enabled_destination_urls(&alice.id)).unwrap().len(), 3);
        assert!(
            !write(store, |tx| tx.update_topic_rule_destination(&destination(&alice, 9, DestinationStatus::Error)))
                .unwrap()
        );
        assert!(write(store, |tx| tx.delete_topic_rule_destination(&alice.id, &first.arn, at(30))).unwrap());
        assert!(!write(store, |tx| tx.delete_topic_rule_destination(&alice.id, &first.arn, at(30))).unwrap());
        assert_eq!(read(store, |tx| tx.count_topic_rule_destinations(&alice.id)).unwrap(), 2);

        let changes = read(store, |tx| tx.changes_after(start, 100)).unwrap();
        let feed: Vec<(String, ChangeKind, String)> =
            changes.iter().map(|c| (c.account.to_string(), c.kind, c.entity_id.clone())).collect();
        let entry = |owner: &Account, n: u32| {
            (
                owner.id.to_string(),
                ChangeKind::TopicRule,
                format!("arn:aws:iot:us-east-1:{}:ruledestination/http/{n:04}", owner.id),
            )
        };
        assert_eq!(
            feed,
            [entry(&alice, 1), entry(&alice, 2), entry(&alice, 3), entry(&bob, 4), entry(&alice, 1), entry(&alice, 1)]
        );
    });
}

#[test]
fn maintenance_claim_one_node_at_a_time() {
    each_backend("maintenance_claim", |store| {
        let job = MaintenanceJob::RegistryPrune;
        // Two nodes claim at once: exactly one wins.
        let first = write(store, |tx| tx.claim_maintenance(job, "node-a", at(100), at(160))).unwrap();
        let second = write(store, |tx| tx.claim_maintenance(job, "node-b", at(100), at(160))).unwrap();
        assert_eq!((first, second), (true, false));
        // The holder renews; the other still cannot take it while the lease runs.
        assert!(write(store, |tx| tx.claim_maintenance(job, "node-a", at(150), at(210))).unwrap());
        assert!(!write(store, |tx| tx.claim_maintenance(job, "node-b", at(200), at(260))).unwrap());
        // A holder that died: its lease expires and another node takes over; the dead one's
        // release then changes nothing.
        assert!(write(store, |tx| tx.claim_maintenance(job, "node-b", at(211), at(270))).unwrap());
        assert!(!write(store, |tx| tx.release_maintenance(job, "node-a", at(1000))).unwrap());
        assert!(!write(store, |tx| tx.claim_maintenance(job, "node-a", at(212), at(270))).unwrap());
        // Released until a due time: nobody, not even the last holder, claims before it.
        assert!(write(store, |tx| tx.release_maintenance(job, "node-b", at(1000))).unwrap());
        assert!(!write(store, |tx| tx.claim_maintenance(job, "node-b", at(999), at(1060))).unwrap());
        assert!(!write(store, |tx| tx.claim_maintenance(job, "", at(999), at(1060))).unwrap());
        assert!(write(store, |tx| tx.claim_maintenance(job, "node-a", at(1001), at(1060))).unwrap());
    });
}

#[test]
fn prune_batches_delete_old_rows_only_and_at_most_the_limit() {
    each_backend("prune_batches", |store| {
        let alice = account("111111111111", "alice");
        setup(store, &[&alice]);
        let connection = |session: &str, connected: i64, disconnected: Option<i64>| ConnectionRecord {
            session_id: session.into(),
            account: alice.id.clone(),
            certificate_id: id('a'),
            client_id: "sensor".into(),
            connected_at: at(connected),
            disconnected_at: disconnected.map(at),
            disconnect_reason: disconnected.map(|_| "CLIENT_INITIATED_DISCONNECT".to_owned()),
            via: ConnectionVia::default(),
        };
        write(store, |tx| {
            for index in 0..5 {
                tx.insert_connection(&connection(&format!("old-{index}"), index, Some(index + 1)))?;
            }
            // Never closed (its node died) and long ago: pruned too.
            tx.insert_connection(&connection("orphan", 6, None))?;
            // Connected before the cutoff but ended after it: kept.
            tx.insert_connection(&connection("straddles", 8, Some(60)))?;
            tx.insert_connection(&connection("new", 70, None))?;
            for seconds in [1, 2, 3, 80] {
                tx.insert_endpoint_probe(&probe(&alice, None, seconds), 100)?;
            }
            for seconds in [1, 2, 90] {
                tx.record_change(&alice.id, ChangeKind::Certificate, "c", at(seconds))?;
            }
            for (fill, expires) in [('b', 20), ('c', 30), ('d', 100)] {
                tx.insert_provisioning_claim(&ProvisioningClaim {
                    account: alice.id.clone(),
                    certificate_id: id(fill),
                    template_name: "fleet".into(),
                    expires_at: at(expires),
                    created_at: at(0),
                })?;
            }
            Ok::<_, Error>(())
        })
        .unwrap();
        let before = at(50);
        let batch = |target| write(store, |tx| tx.prune_batch(target, before, 4)).unwrap();
        assert_eq!(batch(PruneTarget::ConnectionHistory), 4);
        assert_eq!(batch(PruneTarget::ConnectionHistory), 2);
        assert_eq!(batch(PruneTarget::ConnectionHistory), 0);
        let kept = read(store, |tx| tx.connections_since(&alice.id, None, at(0))).unwrap();
        let sessions: Vec<_> = kept.iter().map(|record| record.session_id.as_str()).collect();
        assert_eq!(sessions, ["straddles", "new"]);

        assert_eq!(batch(PruneTarget::EndpointProbes), 3);
        assert_eq!(batch(PruneTarget::EndpointProbes), 0);
        let probes = read(store, |tx| tx.endpoint_probes(&alice.id, None, at(0), 10)).unwrap();
        assert_eq!(probes.iter().map(|probe| probe.at).collect::<Vec<_>>(), [at(80)]);

        let start = read(store, |tx| tx.last_change_seq()).unwrap() - 3;
        assert_eq!(batch(PruneTarget::ChangeFeed), 2);
        let changes = read(store, |tx| tx.changes_after(start, 10)).unwrap();
        assert_eq!(changes.iter().map(|change| change.created_at).collect::<Vec<_>>(), [at(90)]);

        assert_eq!(batch(PruneTarget::ProvisioningClaims), 2);
        assert_eq!(batch(PruneTarget::ProvisioningClaims), 0);
        let claims: Vec<bool> = ['b', 'c', 'd']
            .iter()
            .map(|fill| read(store, |tx| tx.get_provisioning_claim(&alice.id, &id(*fill))).unwrap().is_some())
            .collect();
        assert_eq!(claims, [false, false, true]);
    });
}

fn group_name(text: &str) -> ThingGroupName {
    ThingGroupName::parse(text).unwrap()
}

fn thing_group(owner: &Account, name: &str, parent: Option<&str>) -> ThingGroup {
    ThingGroup {
        account: owner.id.clone(),
        name: group_name(name),
        id: format!("id-{name}"),
        parent: parent.map(group_name),
        description: Some(format!("the {name}")),
        attributes: [("k".to_string(), name.to_string())].into_iter().collect(),
        version: 1,
        created_at: at(2),
    }
}

#[test]
fn thing_types_groups_members_and_group_policies() {
    each_backend("thing_groups", |store| {
        let (alice, bob) = (account("111111111111", "alice"), account("222222222222", "bob"));
        setup(store, &[&alice, &bob]);
        let sensor = ThingType {
            account: alice.id.clone(),
            name: thing_name("sensor"),
            id: "type-id".into(),
            description: Some("a sensor".into()),
            searchable_attributes: vec!["a".into(), "b".into()],
            deprecated_at: None,
            created_at: at(1),
        };
        write(store, |tx| {
            tx.insert_thing_type(&sensor)?;
            for (name, parent) in [("root", None), ("mid", Some("root")), ("leaf", Some("mid")), ("other", None)] {
                tx.insert_thing_group(&thing_group(&alice, name, parent))?;
            }
            tx.insert_thing_group(&thing_group(&bob, "root", None))?;
            tx.insert_thing(&thing(&alice, "t1", Some("sensor"), &[]))?;
            tx.insert_thing(&thing(&alice, "t2", None, &[]))?;
            for (index, name) in ["on-root", "on-mid", "on-other", "own"].into_iter().enumerate() {
                tx.insert_policy(&policy(&alice, name, index as i64))?;
                tx.insert_policy_version(&version(&alice, name, 1))?;
            }
            tx.put_thing_principal(&ThingPrincipal {
                account: alice.id.clone(),
                thing_name: thing_name("t1"),
                certificate_id: id('a'),
                principal_type: ThingPrincipalType::NonExclusive,
                attached_at: at(3),
            })?;
            tx.attach_policy(&alice.id, &policy_name("own"), &id('a'), at(3))?;
            tx.attach_group_policy(&alice.id, &policy_name("on-root"), &group_name("root"), at(3))?;
            tx.attach_group_policy(&alice.id, &policy_name("on-mid"), &group_name("mid"), at(3))?;
            tx.attach_group_policy(&alice.id, &policy_name("on-other"), &group_name("other"), at(3))?;
            assert!(tx.add_thing_to_group(&alice.id, &group_name("leaf"), &thing_name("t1"), at(4))?);
            assert!(!tx.add_thing_to_group(&alice.id, &group_name("leaf"), &thing_name("t1"), at(4))?);
            tx.add_thing_to_group(&alice.id, &group_name("root"), &thing_name("t2"), at(4))
        })
        .unwrap();

        // Types: round trip, deprecation, things counted.
        let mut stored = read(store, |tx| tx.get_thing_type(&alice.id, &thing_name("sensor"))).unwrap().unwrap();
        assert_eq!(stored, sensor);
        stored.deprecated_at = Some(at(9));
        write(store, |tx| tx.update_thing_type(&stored)).unwrap();
        assert_eq!(read(store, |tx| tx.get_thing_type(&alice.id, &thing_name("sensor"))).unwrap().unwrap(), stored);
        assert_eq!(read(store, |tx| tx.count_things_of_type(&alice.id, &thing_name("sensor"))).unwrap(), 1);
        assert!(read(store, |tx| tx.get_thing_type(&bob.id, &thing_name("sensor"))).unwrap().is_none());

        // Groups: attributes, ancestors, listings; bob's group of the same name stays apart.
        let leaf = read(store, |tx| tx.get_thing_group(&alice.id, &group_name("leaf"))).unwrap().unwrap();
        assert_eq!(leaf, thing_group(&alice, "leaf", Some("mid")));
        let ancestors = read(store, |tx| tx.thing_group_ancestors(&alice.id, &group_name("leaf"), 7)).unwrap();
        assert_eq!(ancestors, vec![group_name("mid"), group_name("root")]);
        let list = |filter: ThingGroupFilter| {
            read(store, |tx| tx.list_thing_groups(&alice.id, &filter, &first_page(10))).unwrap().items
        };
        assert_eq!(list(ThingGroupFilter::default()), vec![group_name("other"), group_name("root")]);
        let every = ThingGroupFilter { recursive: true, ..ThingGroupFilter::default() };
        assert_eq!(list(every.clone()).len(), 4);
        let under_root = ThingGroupFilter { parent: Some(group_name("root")), recursive: true, name_prefix: None };
        assert_eq!(list(under_root), vec![group_name("leaf"), group_name("mid")]);
        let prefixed = ThingGroupFilter { name_prefix: Some("m_".into()), ..every.clone() };
        assert!(list(prefixed).is_empty(), "_ is no wildcard");
        let prefixed = ThingGroupFilter { name_prefix: Some("mi".into()), ..every };
        assert_eq!(list(prefixed), vec![group_name("mid")]);
        let recursive =
            read(store, |tx| tx.things_in_group(&alice.id, &group_name("root"), true, &first_page(10))).unwrap();
        assert_eq!(recursive.items, vec![thing_name("t1"), thing_name("t2")]);
        let direct =
            read(store, |tx| tx.things_in_group(&alice.id, &group_name("root"), false, &first_page(10))).unwrap();
        assert_eq!(direct.items, vec![thing_name("t2")]);
        assert_eq!(read(store, |tx| tx.count_child_groups(&alice.id, &group_name("root"))).unwrap(), 1);

        // What applies to certificate a: its own policy and those of leaf's ancestors.
        let documents = read(store, |tx| tx.certificate_policy_documents(&alice.id, &id('a'))).unwrap();
        let names: Vec<_> = documents.iter().map(|(name, _)| name.to_string()).collect();
        assert_eq!(names, ["on-mid", "on-root", "own"]);
        let groups = read(store, |tx| tx.certificate_groups(&alice.id, &id('a'))).unwrap();
        assert_eq!(groups, vec![group_name("leaf"), group_name("mid"), group_name("root")]);
        assert!(read(store, |tx| tx.certificate_policy_documents(&bob.id, &id('a'))).unwrap().is_empty());
        let targets =
            read(store, |tx| tx.policy_targets_all(&alice.id, &policy_name("on-root"), &first_page(1))).unwrap();
        assert_eq!(targets.items, vec![PolicyTarget::ThingGroup(group_name("root"))]);
        let inherited =
            read(store, |tx| tx.group_policies(&alice.id, &[group_name("mid"), group_name("root")], &first_page(10)))
                .unwrap();
        assert_eq!(inherited.items.iter().map(|p| p.name.to_string()).collect::<Vec<_>>(), ["on-mid", "on-root"]);

        // Deleting a group takes its members and policies along; the account takes everything.
        write(store, |tx| tx.delete_thing_group(&alice.id, &group_name("other")).map(drop)).unwrap();
        assert_eq!(read(store, |tx| tx.count_policy_group_targets(&alice.id, &policy_name("on-other"))).unwrap(), 0);
        write(store, |tx| tx.delete_account(&alice.id).map(drop)).unwrap();
        assert!(read(store, |tx| tx.get_thing_group(&alice.id, &group_name("root"))).unwrap().is_none());
        assert!(read(store, |tx| tx.get_thing_group(&bob.id, &group_name("root"))).unwrap().is_some());
    });
}

#[test]
fn console_read_models_group_count_and_page() {
    each_backend("console_read_models", |store| {
        let a = account("111111111111", "console-a");
        let b = account("222222222222", "console-b");
        setup(store, &[&a, &b]);
        let now = at(0);
        let day = 86_400;
        // (fill, days to expiry, status, CA)
        let specs: [(char, i64, CertificateStatus, Option<char>); 7] = [
            ('1', -3, CertificateStatus::Active, None),
            ('2', 3, CertificateStatus::Active, None),
            ('3', 20, CertificateStatus::Active, Some('c')),
            ('4', 20, CertificateStatus::Revoked, Some('c')),
            ('5', 60, CertificateStatus::Active, Some('c')),
            ('6', 200, CertificateStatus::Inactive, None),
            ('7', 800, CertificateStatus::Active, None),
        ];
        write(store, |tx| {
            tx.insert_ca(&ca(&a, 'c', CertificateMode::Default))?;
            for (fill, days, status, ca_fill) in specs {
                let mut certificate = cert(&a, fill, 1);
                certificate.not_after = at(days * day);
                certificate.status = status;
                certificate.ca_certificate_id = ca_fill.map(id);
                tx.insert_certificate(&certificate)?;
            }
            // Another account's certificate never shows.
            let mut other = cert(&b, '2', 1);
            other.not_after = at(3 * day);
            tx.insert_certificate(&other)
        })
        .unwrap();
        let windows = [time::Duration::days(7), time::Duration::days(30), time::Duration::days(90)];
        let groups = read(store, |tx| tx.fleet_groups(&a.id, now, windows)).unwrap();
        assert_eq!(groups.iter().map(|g| g.count).sum::<u64>(), 7);
        let has = |status: CertificateStatus, ca_fill: Option<char>, week: i64| {
            groups.iter().any(|g| g.status == status && g.ca == ca_fill.map(id) && g.week == week && g.count == 1)
        };
        assert!(has(CertificateStatus::Active, None, -1));
        assert!(has(CertificateStatus::Active, None, 0));
        assert!(has(CertificateStatus::Active, Some('c'), 2));
        assert!(has(CertificateStatus::Revoked, Some('c'), 2));
        assert!(has(CertificateStatus::Inactive, None, 28));
        assert!(has(CertificateStatus::Active, None, TIMELINE_WEEKS));
        let expiring: Vec<u64> = (0..3).map(|w| groups.iter().map(|g| g.expiring[w]).sum()).collect();
        assert_eq!(expiring, vec![1, 3, 4]); // 3 days; + two at 20 days; + 60 days (any status here)

        let soon = read(store, |tx| tx.expiring_groups(&a.id, now, windows)).unwrap();
        let total = |w: usize| soon.iter().map(|g| g.within[w]).sum::<u64>();
        assert_eq!((total(0), total(1), total(2)), (1, 2, 3)); // ACTIVE only: '2'; '3'; '5'
        let of_ca = soon.iter().find(|g| g.ca == Some(id('c'))).unwrap();
        assert_eq!(of_ca.within, [0, 1, 2]);

        let search = |search: CertificateSearch| read(store, |tx| tx.search_certificates(&a.id, &search)).unwrap();
        let ids =
            |rows: &[CertificateRow]| rows.iter().map(|r| r.id.as_str().chars().next().unwrap()).collect::<String>();
        let (rows, next) = search(CertificateSearch { limit: 3, ..Default::default() });
        assert_eq!(ids(&rows), "123");
        let (rows, next) = search(CertificateSearch { limit: 3, after: next, ..Default::default() });
        assert_eq!(ids(&rows), "456");
        let (rows, next) = search(CertificateSearch { limit: 3, after: next, ..Default::default() });
        assert_eq!((ids(&rows).as_str(), next), ("7", None));
        let (rows, _) = search(CertificateSearch { id_prefix: Some("55".into()), limit: 10, ..Default::default() });
        assert_eq!(ids(&rows), "5");
        let (rows, _) = search(CertificateSearch {
            status: Some(CertificateStatus::Active),
            ca: Some(CaFilter::Ca(id('c'))),
            limit: 10,
            ..Default::default()
        });
        assert_eq!(ids(&rows), "35");
        let (rows, _) = search(CertificateSearch { ca: Some(CaFilter::None), limit: 10, ..Default::default() });
        assert_eq!(ids(&rows), "1267");
        // By expiry: soonest first, paged by (not_after, id).
        let before = Some(at(100 * day));
        let (rows, next) = search(CertificateSearch { expiring_before: before, limit: 2, ..Default::default() });
        assert_eq!(ids(&rows), "12");
        let (rows, next) =
            search(CertificateSearch { expiring_before: before, limit: 2, after: next, ..Default::default() });
        assert_eq!(ids(&rows), "34");
        let (rows, next) =
            search(CertificateSearch { expiring_before: before, limit: 2, after: next, ..Default::default() });
        assert_eq!((ids(&rows).as_str(), next), ("5", None));
        // One a page: '3' and '4' expire at the same time, and the (not_after, id) marker still
        // goes through every certificate once.
        let mut walked = String::new();
        let mut after = None;
        loop {
            let (rows, next) = search(CertificateSearch {
                expiring_before: before,
                limit: 1,
                after: after.clone(),
                ..Default::default()
            });
            walked.push_str(&ids(&rows));
            match next {
                Some(next) => after = Some(next),
                None => break,
            }
        }
        assert_eq!(walked, "12345");
        // The same through ties of the CN order (every CN is empty here).
        let mut walked = String::new();
        let mut after = None;
        loop {
            let (rows, next) = search(CertificateSearch {
                cn_prefix: Some(String::new()),
                limit: 2,
                after: after.clone(),
                ..Default::default()
            });
            walked.push_str(&ids(&rows));
            match next {
                Some(next) => after = Some(next),
                None => break,
            }
        }
        assert_eq!(walked, "1234567");
        // The PEMs here do not parse: their CN is empty, not unknown.
        let (rows, _) = search(CertificateSearch { cn_prefix: Some(String::new()), limit: 10, ..Default::default() });
        assert_eq!(rows.len(), 7);
        assert!(rows.iter().all(|row| row.subject_cn.as_deref() == Some("")));
        assert!(read(store, |tx| tx.certificates_without_subject_cn(10)).unwrap().is_empty());
        // By thing: the things' primary key; another account's thing of the same name does not count.
        write(store, |tx| {
            for (owner, name, fill) in
                [(&a, "pump-1", '3'), (&a, "pump-2", '5'), (&a, "valve-1", '6'), (&b, "pump-1", '2')]
            {
                tx.insert_thing(&thing(owner, name, None, &[]))?;
                tx.put_thing_principal(&ThingPrincipal {
                    account: owner.id.clone(),
                    thing_name: thing_name(name),
                    certificate_id: id(fill),
                    principal_type: ThingPrincipalType::NonExclusive,
                    attached_at: at(1),
                })?;
            }
            Ok::<_, Error>(())
        })
        .unwrap();
        let (rows, _) =
            search(CertificateSearch { thing_prefix: Some("pump-".into()), limit: 10, ..Default::default() });
        assert_eq!(ids(&rows), "35");
        let (rows, _) = search(CertificateSearch {
            thing_prefix: Some("pump-".into()),
            status: Some(CertificateStatus::Revoked),
            limit: 10,
            ..Default::default()
        });
        assert_eq!(ids(&rows), "");
        // A marker of another order is refused.
        let wrong = CertificateSearch {
            after: Some(SearchAfter::Id("1".into())),
            cn_prefix: Some("x".into()),
            limit: 1,
            ..Default::default()
        };
        assert!(read(store, |tx| tx.search_certificates(&a.id, &wrong)).is_err());
        assert!(read(store, |tx| tx.open_campaign_counts(&a.id, 10)).unwrap().is_empty());
    });
}

#[test]
fn console_rotation_read_models_list_campaigns_and_a_certificates_rotations() {
    each_backend("console_rotation_read_models", |store| {
        let a = account("333333333333", "console-rot-a");
        let b = account("444444444444", "console-rot-b");
        setup(store, &[&a, &b]);
        let campaign = |owner: &Account, name: &str, created: i64| RotationCampaign {
            account: owner.id.clone(),
            id: name.into(),
            source: RotationSource::Manual,
            audit_task_id: None,
            subject_rule: SubjectRule::KeepOld,
            created_at: at(created),
        };
        let rotation =
            |owner: &Account, name: &str, campaign: &str, old: char, new: Option<char>, state: RotationState| {
                Rotation {
                    account: owner.id.clone(),
                    id: name.into(),
                    campaign_id: campaign.into(),
                    client_id: format!("client-{name}"),
                    old_certificate_id: id(old),
                    new_certificate_id: new.map(id),
                    csr_key_fingerprint: None,
                    state,
                    attempts: 1,
                    error: None,
                    deadline: state.is_open().then(|| at(100)),
                    created_at: at(10),
                    updated_at: at(10),
                }
            };
        write(store, |tx| {
            tx.insert_rotation_campaign(&campaign(&a, "c-old", 1))?;
            tx.insert_rotation_campaign(&campaign(&a, "c-new", 2))?;
            tx.insert_rotation_campaign(&campaign(&b, "c-b", 3))?;
            tx.insert_rotation(&rotation(&a, "r1", "c-old", '1', Some('9'), RotationState::Retired))?;
            tx.insert_rotation(&rotation(&a, "r2", "c-new", '9', None, RotationState::Requested))?;
            tx.insert_rotation(&rotation(&a, "r3", "c-new", '2', None, RotationState::Failed))?;
            tx.insert_rotation(&rotation(&b, "r4", "c-b", '9', None, RotationState::Requested))?;
            Ok::<_, Error>(())
        })
        .unwrap();
        let newest = read(store, |tx| tx.newest_rotation_campaigns(&a.id, 10)).unwrap();
        assert_eq!(newest.iter().map(|c| c.id.as_str()).collect::<Vec<_>>(), ["c-new", "c-old"]);
        assert_eq!(read(store, |tx| tx.newest_rotation_campaigns(&a.id, 1)).unwrap().len(), 1);
        let open = read(store, |tx| tx.open_campaign_counts(&a.id, 10)).unwrap();
        assert_eq!(open.len(), 1, "only c-new has a rotation open: {open:?}");
        assert_eq!(open["c-new"].get(&RotationState::Requested), Some(&1));
        assert_eq!(open["c-new"].get(&RotationState::Failed), Some(&1));
        // Certificate 9 was issued by r1 and is rotated by r2; account b's r4 does not show.
        let of_nine = read(store, |tx| tx.rotations_of_certificate(&a.id, &id('9'), 10)).unwrap();
        let mut names: Vec<_> = of_nine.iter().map(|r| r.id.as_str()).collect();
        names.sort();
        assert_eq!(names, ["r1", "r2"]);
        assert!(read(store, |tx| tx.rotations_of_certificate(&a.id, &id('5'), 10)).unwrap().is_empty());
        let states = read(store, |tx| tx.rotation_state_counts(&a.id)).unwrap();
        assert_eq!(
            states.into_iter().collect::<Vec<_>>(),
            vec![(RotationState::Requested, 1), (RotationState::Retired, 1), (RotationState::Failed, 1)]
        );
    });
}
