//! The seed's rules and AWS's status transitions, checked through the typed services on a real
//! SQLite registry, with certificates made at run time and a hand-moved clock.

use certfleet_pki::{Certificate, CertificateId, GeneratedKeyPair, Issuer, KeyAlgorithm};
use certfleet_registry::{CertificateMode, CertificateStatus, PageRequest};
use certfleet_services::*;
use time::Duration;

use certfleet_testkit::{START, World, world};

fn caller(world: &World) -> Caller {
    world.caller()
}

fn root(common_name: &str) -> Issuer {
    Issuer::generate_root(common_name, "test", Duration::days(30), KeyAlgorithm::EcdsaP256, START).unwrap()
}

fn leaf(ca: &Issuer, common_name: &str, validity: Duration) -> Certificate {
    let key = GeneratedKeyPair::generate(KeyAlgorithm::EcdsaP256).unwrap();
    ca.issue_for_key(key.public_key(), common_name, validity, START).unwrap()
}

fn register_default(world: &World, caller: &Caller, ca: &Issuer) -> Result<(String, CertificateId), Error> {
    let code = world.services.get_registration_code(caller).unwrap();
    let verification = leaf(ca, &code, Duration::days(1));
    world.services.register_ca_certificate(
        caller,
        &CaRegistration {
            ca_certificate_pem: ca.certificate().to_pem(),
            verification_certificate_pem: Some(verification.to_pem()),
            set_as_active: true,
            ..CaRegistration::default()
        },
    )
}

fn register_sni_only(world: &World, caller: &Caller, ca: &Issuer) -> Result<(String, CertificateId), Error> {
    world.services.register_ca_certificate(
        caller,
        &CaRegistration {
            ca_certificate_pem: ca.certificate().to_pem(),
            mode: Some(CertificateMode::SniOnly),
            set_as_active: true,
            ..CaRegistration::default()
        },
    )
}

use certfleet_testkit::outcome as kind;

#[test]
fn a_ca_is_default_in_one_account_and_sni_only_in_any_number() {
    let world = world();
    let (alice, bob, carol) = (caller(&world), caller(&world), caller(&world));
    let ca = root("shared root");
    assert_eq!(kind(register_default(&world, &alice, &ca)), "ok");
    assert_eq!(kind(register_default(&world, &bob, &ca)), "AlreadyExists", "DEFAULT in a second account");
    assert_eq!(kind(register_sni_only(&world, &bob, &ca)), "ok");
    assert_eq!(kind(register_sni_only(&world, &carol, &ca)), "ok");
    assert_eq!(kind(register_sni_only(&world, &alice, &ca)), "AlreadyExists", "one mode per account");
    let id = ca.certificate().id();
    assert_eq!(world.services.describe_ca_certificate(&alice, id).unwrap().mode, CertificateMode::Default);
    assert_eq!(world.services.describe_ca_certificate(&bob, id).unwrap().mode, CertificateMode::SniOnly);
}

#[test]
fn verification_certificate_checks() {
    let world = world();
    let alice = caller(&world);
    let ca = root("verified root");
    let other = root("verified root");
    let code = world.services.get_registration_code(&alice).unwrap();
    assert_eq!(world.services.get_registration_code(&alice).unwrap(), code, "the code is stable");
    let check = |verification: Option<Certificate>| {
        kind(world.services.register_ca_certificate(
            &alice,
            &CaRegistration {
                ca_certificate_pem: ca.certificate().to_pem(),
                verification_certificate_pem: verification.map(|certificate| certificate.to_pem()),
                ..CaRegistration::default()
            },
        ))
    };
    assert_eq!(check(None), "InvalidRequest");
    assert_eq!(check(Some(leaf(&ca, "not-the-code", Duration::days(1)))), "RegistrationCodeValidation");
    assert_eq!(check(Some(leaf(&other, &code, Duration::days(1)))), "CertificateValidation", "signed by another key");
    let list = |world: &World| {
        world.services.list_ca_certificates(&alice, &PageRequest { limit: 10, ascending: true, after: None }).unwrap()
    };
    assert!(list(&world).items.is_empty(), "refusals leave nothing behind");
    assert_eq!(check(Some(leaf(&ca, &code, Duration::days(1)))), "ok");
    assert_eq!(list(&world).items.len(), 1);
}

#[test]
fn at_most_ten_cas_share_a_subject() {
    let world = world();
    let alice = caller(&world);
    for index in 0..10 {
        assert_eq!(kind(register_sni_only(&world, &alice, &root("crowded"))), "ok", "CA {index}");
    }
    assert_eq!(kind(register_sni_only(&world, &alice, &root("crowded"))), "LimitExceeded");
}

#[test]
fn register_certificate_finds_its_ca() {
    let world = world();
    let alice = caller(&world);
    let (first, second) = (root("twin"), root("twin"));
    register_sni_only(&world, &alice, &first).unwrap();
    let device = leaf(&first, "device", Duration::days(10));
    let register = |ca: Option<&Issuer>, device: &Certificate| {
        world.services.register_certificate(
            &alice,
            &CertificateRegistration {
                certificate_pem: device.to_pem(),
                ca_certificate_pem: ca.map(|ca| ca.certificate().to_pem()),
                status: Some(CertificateStatus::Active),
                set_as_active: false,
            },
        )
    };
    assert_eq!(kind(register(None, &leaf(&root("stranger"), "x", Duration::days(1)))), "CertificateValidation");
    register_sni_only(&world, &alice, &second).unwrap();
    assert_eq!(kind(register(None, &device)), "CertificateConflict", "two CAs share the issuer name");
    assert_eq!(kind(register(Some(&second), &device)), "CertificateValidation", "named CA did not sign it");
    let registered = register(Some(&first), &device).unwrap();
    assert_eq!(registered.ca_certificate_id.as_ref(), Some(first.certificate().id()));
    assert_eq!(registered.mode, CertificateMode::SniOnly, "a certificate takes its CA's mode");
    assert_eq!(kind(register(Some(&first), &device)), "AlreadyExists");

    // A CA that is INACTIVE signs nothing new in; an expired device certificate is refused.
    let third = root("third");
    world
        .services
        .register_ca_certificate(
            &alice,
            &CaRegistration {
                ca_certificate_pem: third.certificate().to_pem(),
                mode: Some(CertificateMode::SniOnly),
                ..CaRegistration::default()
            },
        )
        .unwrap();
    assert_eq!(kind(register(Some(&third), &leaf(&third, "d", Duration::days(1)))), "CertificateState");
    let short = leaf(&first, "short-lived", Duration::hours(1));
    world.clock.advance(Duration::hours(2));
    assert_eq!(kind(register(Some(&first), &short)), "CertificateValidation");
}

#[test]
fn status_transitions_follow_aws() {
    use CertificateStatus::*;
    // (status before, requested status, outcome)
    let cases = [
        (Active, Inactive, "ok"),
        (Inactive, Active, "ok"),
        (Active, Revoked, "ok"),
        (Revoked, Active, "CertificateState"),
        (Revoked, Inactive, "CertificateState"),
        (Revoked, Revoked, "ok"),
        (Active, Active, "ok"),
        (Active, PendingTransfer, "InvalidRequest"),
        (Inactive, PendingActivation, "InvalidRequest"),
    ];
    let world = world();
    let alice = caller(&world);
    for (before, requested, expected) in cases {
        let certificate = world.services.create_keys_and_certificate(&alice, false).unwrap().certificate;
        if before != Inactive {
            world.services.update_certificate(&alice, &certificate.id, before).unwrap();
        }
        let outcome = kind(world.services.update_certificate(&alice, &certificate.id, requested));
        assert_eq!(outcome, expected, "{before:?} -> {requested:?}");
        let now = world.services.describe_certificate(&alice, &certificate.id).unwrap();
        let expected_status = if expected == "ok" { requested } else { before };
        assert_eq!(now.status, expected_status, "{before:?} -> {requested:?}");
    }
}

#[test]
fn deletes_refuse_active_objects() {
    let world = world();
    let alice = caller(&world);
    let certificate = world.services.create_keys_and_certificate(&alice, true).unwrap().certificate;
    assert_eq!(kind(world.services.delete_certificate(&alice, &certificate.id, false)), "CertificateState");
    world.services.update_certificate(&alice, &certificate.id, CertificateStatus::Inactive).unwrap();
    assert_eq!(kind(world.services.delete_certificate(&alice, &certificate.id, false)), "ok");
    assert_eq!(kind(world.services.describe_certificate(&alice, &certificate.id)), "NotFound");

    let ca = root("deletable");
    let (_, id) = register_sni_only(&world, &alice, &ca).unwrap();
    assert_eq!(kind(world.services.delete_ca_certificate(&alice, &id)), "CertificateState");
    world
        .services
        .update_ca_certificate(
            &alice,
            &id,
            &CaUpdate { new_status: Some(certfleet_registry::CaStatus::Inactive), ..CaUpdate::default() },
        )
        .unwrap();
    assert_eq!(world.services.describe_ca_certificate(&alice, &id).unwrap().customer_version, 2);
    assert_eq!(kind(world.services.delete_ca_certificate(&alice, &id)), "ok");
}

#[test]
fn transfers_accept_reject_cancel() {
    let world = world();
    let (alice, bob) = (caller(&world), caller(&world));
    let issue = || world.services.create_keys_and_certificate(&alice, false).unwrap().certificate.id;

    let accepted = issue();
    world.services.transfer_certificate(&alice, &accepted, &bob.account, Some("yours".into())).unwrap();
    assert_eq!(
        world.services.describe_certificate(&bob, &accepted).unwrap().status,
        CertificateStatus::PendingTransfer
    );
    assert_eq!(
        kind(world.services.update_certificate(&alice, &accepted, CertificateStatus::Active)),
        "CertificateState"
    );
    world.services.accept_certificate_transfer(&bob, &accepted, true).unwrap();
    let moved = world.services.describe_certificate(&bob, &accepted).unwrap();
    assert_eq!((moved.status, moved.previous_owner.as_ref()), (CertificateStatus::Active, Some(&alice.account)));
    assert_eq!(kind(world.services.describe_certificate(&alice, &accepted)), "NotFound");
    assert_eq!(kind(world.services.accept_certificate_transfer(&bob, &accepted, true)), "TransferAlreadyCompleted");

    let rejected = issue();
    world.services.transfer_certificate(&alice, &rejected, &bob.account, None).unwrap();
    world.services.reject_certificate_transfer(&bob, &rejected, Some("no thanks".into())).unwrap();
    let back = world.services.describe_certificate(&alice, &rejected).unwrap();
    assert_eq!((back.status, back.transfer.reject_reason.as_deref()), (CertificateStatus::Inactive, Some("no thanks")));

    let cancelled = issue();
    world.services.transfer_certificate(&alice, &cancelled, &bob.account, None).unwrap();
    world.services.cancel_certificate_transfer(&alice, &cancelled).unwrap();
    assert_eq!(world.services.describe_certificate(&alice, &cancelled).unwrap().status, CertificateStatus::Inactive);
    assert_eq!(kind(world.services.cancel_certificate_transfer(&alice, &cancelled)), "TransferAlreadyCompleted");
    assert_eq!(kind(world.services.accept_certificate_transfer(&bob, &cancelled, false)), "NotFound");

    let active = world.services.create_keys_and_certificate(&alice, true).unwrap().certificate.id;
    assert_eq!(kind(world.services.transfer_certificate(&alice, &active, &bob.account, None)), "CertificateState");
    assert_eq!(kind(world.services.transfer_certificate(&alice, &issue(), &alice.account, None)), "InvalidRequest");
}

#[test]
fn tenants_do_not_see_each_other() {
    let world = world();
    let (alice, bob) = (caller(&world), caller(&world));
    let certificate = world.services.create_keys_and_certificate(&alice, false).unwrap().certificate;
    let (_, ca) = register_sni_only(&world, &alice, &root("private")).unwrap();
    assert_eq!(kind(world.services.describe_certificate(&bob, &certificate.id)), "NotFound");
    assert_eq!(kind(world.services.update_certificate(&bob, &certificate.id, CertificateStatus::Revoked)), "NotFound");
    assert_eq!(kind(world.services.delete_certificate(&bob, &certificate.id, true)), "NotFound");
    assert_eq!(kind(world.services.describe_ca_certificate(&bob, &ca)), "NotFound");
    let page = PageRequest { limit: 250, ascending: true, after: None };
    assert!(world.services.list_certificates(&bob, &page).unwrap().items.is_empty());
    assert!(world.services.list_ca_certificates(&bob, &page).unwrap().items.is_empty());
    assert_eq!(
        world.services.describe_certificate(&alice, &certificate.id).unwrap().status,
        CertificateStatus::Inactive
    );
}

#[test]
fn endpoints_have_the_aws_shapes() {
    let world = world();
    let alice = caller(&world);
    let data = world.services.endpoint_address(&alice, None).unwrap();
    let identifier = data.strip_suffix("-ats.iot.us-east-1.certfleet.local").expect(&data);
    for (kind, expected) in [
        ("iot:Data", format!("{identifier}.iot.us-east-1.certfleet.local")),
        ("iot:Data-ATS", data.clone()),
        ("iot:CredentialProvider", format!("{identifier}.credentials.iot.us-east-1.certfleet.local")),
        ("iot:Jobs", format!("{identifier}.jobs.iot.us-east-1.certfleet.local")),
    ] {
        assert_eq!(world.services.endpoint_address(&alice, Some(kind)).unwrap(), expected);
    }
    assert_eq!(kind(world.services.endpoint_address(&alice, Some("iot:Nope"))), "InvalidRequest");
}

#[test]
fn state_changes_reach_the_change_feed_in_their_transaction() {
    use certfleet_registry::{ChangeKind, read};
    let world = world();
    let alice = caller(&world);
    let feed = |after: i64| read(world.services.store(), |tx| tx.changes_after(after, 100)).unwrap();
    let start = read(world.services.store(), |tx| tx.last_change_seq()).unwrap();

    let certificate = world.services.create_keys_and_certificate(&alice, true).unwrap().certificate;
    world.services.update_certificate(&alice, &certificate.id, CertificateStatus::Revoked).unwrap();
    // A refused update records nothing.
    assert!(world.services.update_certificate(&alice, &certificate.id, CertificateStatus::Active).is_err());
    let (_, ca) = register_sni_only(&world, &alice, &root("fed")).unwrap();
    world
        .services
        .update_ca_certificate(
            &alice,
            &ca,
            &CaUpdate { new_status: Some(certfleet_registry::CaStatus::Inactive), ..CaUpdate::default() },
        )
        .unwrap();

    let seen: Vec<_> = feed(start).into_iter().map(|change| (change.kind, change.entity_id)).collect();
    assert_eq!(
        seen,
        vec![
            (ChangeKind::Certificate, certificate.id.to_string()),
            (ChangeKind::Certificate, certificate.id.to_string()),
            (ChangeKind::CaCertificate, ca.to_string()),
            (ChangeKind::CaCertificate, ca.to_string()),
        ]
    );
}
