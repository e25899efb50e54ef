//! Just-in-time registration through the typed services, on a real SQLite registry: which CAs
//! may register the certificates they signed, what is stored, and that a second attempt (or a
//! concurrent one) registers nothing more.

use certfleet_pki::{Certificate, CertificateId, GeneratedKeyPair, Issuer, KeyAlgorithm};
use certfleet_registry::{CaStatus, CertificateMode, CertificateStatus, ChangeKind, PageRequest, read};
use certfleet_services::*;
use certfleet_testkit::{START, World, world};
use time::Duration;

fn root(name: &str) -> Issuer {
    Issuer::generate_root(name, "test", Duration::days(30), KeyAlgorithm::EcdsaP256, START).unwrap()
}

fn leaf(ca: &Issuer, not_before: time::OffsetDateTime, validity: Duration) -> Certificate {
    let key = GeneratedKeyPair::generate(KeyAlgorithm::EcdsaP256).unwrap();
    ca.issue_for_key(key.public_key(), "device", validity, not_before).unwrap()
}

fn device(ca: &Issuer) -> Certificate {
    leaf(ca, START, Duration::days(1))
}

/// Registers `ca` in `caller`'s account (DEFAULT mode with a verification certificate).
fn register_ca(
    world: &World,
    caller: &Caller,
    ca: &Issuer,
    mode: CertificateMode,
    active: bool,
    auto: bool,
) -> CertificateId {
    let verification_certificate_pem = (mode == CertificateMode::Default).then(|| {
        let code = world.services.get_registration_code(caller).unwrap();
        let key = GeneratedKeyPair::generate(KeyAlgorithm::EcdsaP256).unwrap();
        ca.issue_for_key(key.public_key(), &code, Duration::days(1), START).unwrap().to_pem()
    });
    let request = CaRegistration {
        ca_certificate_pem: ca.certificate().to_pem(),
        verification_certificate_pem,
        mode: Some(mode),
        set_as_active: active,
        allow_auto_registration: auto,
        ..Default::default()
    };
    world.services.register_ca_certificate(caller, &request).unwrap().1
}

/// What auto-registration of `device` in `caller`'s account answers (the device sent SNI): the
/// CA it was registered under, or `None`.
fn check(world: &World, caller: &Caller, device: &Certificate) -> Option<CertificateId> {
    check_sni(world, caller, device, true)
}

fn check_sni(world: &World, caller: &Caller, device: &Certificate, sni: bool) -> Option<CertificateId> {
    world.services.auto_register_certificate(&caller.account, device, sni).unwrap().map(|(_, ca)| ca)
}

#[test]
fn only_an_active_ca_allowing_auto_registration_registers_what_it_signed() {
    let world = world();
    let (alice, bob) = (world.caller(), world.caller());
    let auto = root("auto root");
    let auto_id = register_ca(&world, &alice, &auto, CertificateMode::Default, true, true);
    let manual = root("manual root");
    register_ca(&world, &alice, &manual, CertificateMode::SniOnly, true, false);
    let inactive = root("inactive root");
    register_ca(&world, &alice, &inactive, CertificateMode::SniOnly, false, true);
    let sni_only = root("sni-only root");
    let sni_only_id = register_ca(&world, &alice, &sni_only, CertificateMode::SniOnly, true, true);

    assert_eq!(check(&world, &alice, &device(&auto)), Some(auto_id.clone()));
    assert_eq!(check_sni(&world, &alice, &device(&auto), false), Some(auto_id.clone()), "DEFAULT mode needs no SNI");
    assert_eq!(check_sni(&world, &alice, &device(&sni_only), false), None, "SNI_ONLY needs SNI");
    assert_eq!(check_sni(&world, &alice, &device(&sni_only), true), Some(sni_only_id));
    assert_eq!(check(&world, &alice, &device(&manual)), None, "auto-registration disabled");
    assert_eq!(check(&world, &alice, &device(&inactive)), None, "the CA is INACTIVE");
    assert_eq!(check(&world, &alice, &device(&root("nobody"))), None, "no CA with the issuer's subject");
    assert_eq!(check(&world, &bob, &device(&auto)), None, "the CA is another account's");
    // Same subject as the registered CA, another key: the signature does not verify.
    assert_eq!(check(&world, &alice, &device(&root("auto root"))), None, "forged issuer");
    assert_eq!(check(&world, &alice, &leaf(&auto, START - Duration::days(3), Duration::days(1))), None, "expired");
    assert_eq!(
        check(&world, &alice, &leaf(&auto, START + Duration::days(1), Duration::days(1))),
        None,
        "not yet valid"
    );

    // Enabling auto-registration (or activating the CA) lets the next attempt through.
    let manual_id = manual.certificate().id().clone();
    world
        .services
        .update_ca_certificate(
            &alice,
            &manual_id,
            &CaUpdate { new_auto_registration: Some(true), ..Default::default() },
        )
        .unwrap();
    assert_eq!(check(&world, &alice, &device(&manual)), Some(manual_id));
    let inactive_id = inactive.certificate().id().clone();
    world
        .services
        .update_ca_certificate(
            &alice,
            &inactive_id,
            &CaUpdate { new_status: Some(CaStatus::Active), ..Default::default() },
        )
        .unwrap();
    assert_eq!(check(&world, &alice, &device(&inactive)), Some(inactive_id));
}

#[test]
fn the_certificate_is_stored_pending_activation_under_its_ca_once() {
    let world = world();
    let alice = world.caller();
    let ca = root("fleet root");
    let ca_id = register_ca(&world, &alice, &ca, CertificateMode::SniOnly, true, true);
    let certificate = device(&ca);
    let start = read(world.services.store(), |tx| tx.last_change_seq()).unwrap();

    let (record, signer) =
        world.services.auto_register_certificate(&alice.account, &certificate, true).unwrap().unwrap();
    assert_eq!(signer, ca_id);
    assert_eq!(record.status, CertificateStatus::PendingActivation);
    assert_eq!(record.ca_certificate_id.as_ref(), Some(&ca_id));
    assert_eq!(record.mode, CertificateMode::SniOnly, "the CA's mode");
    assert_eq!(world.services.describe_certificate(&alice, certificate.id()).unwrap(), record);
    let changes = world.services.changes_after(start, 10).unwrap();
    assert_eq!(changes.len(), 1, "one change-feed entry");
    assert_eq!((changes[0].kind, changes[0].entity_id.as_str()), (ChangeKind::Certificate, certificate.id().as_str()));

    // Idempotent: a second attempt (another connection of the same device) registers nothing.
    assert!(world.services.auto_register_certificate(&alice.account, &certificate, true).unwrap().is_none());
    let listed = world
        .services
        .list_certificates_by_ca(&alice, &ca_id, &PageRequest { limit: 250, ascending: true, after: None })
        .unwrap();
    assert_eq!(listed.items, vec![record.clone()]);
    // Nor once activated: activation is the operator's, and JITR never touches a known record.
    world.services.update_certificate(&alice, certificate.id(), CertificateStatus::Active).unwrap();
    assert!(world.services.auto_register_certificate(&alice.account, &certificate, true).unwrap().is_none());
    assert_eq!(
        world.services.describe_certificate(&alice, certificate.id()).unwrap().status,
        CertificateStatus::Active
    );
}

#[test]
fn concurrent_attempts_register_a_certificate_once() {
    let world = world();
    let alice = world.caller();
    let ca = root("fleet root");
    register_ca(&world, &alice, &ca, CertificateMode::SniOnly, true, true);
    let certificate = device(&ca);
    let registered = std::thread::scope(|scope| {
        let attempts: Vec<_> = (0..8)
            .map(|_| {
                scope.spawn(|| {
                    world.services.auto_register_certificate(&alice.account, &certificate, true).unwrap().is_some()
                })
            })
            .collect();
        attempts.into_iter().map(|attempt| attempt.join().unwrap()).filter(|&won| won).count()
    });
    assert_eq!(registered, 1);
}

#[test]
fn registrations_past_the_accounts_rate_are_refused_counted_and_write_nothing() {
    let world = certfleet_testkit::world_with(Config { max_registrations_per_second: 3, ..Config::default() });
    let (alice, bob) = (world.caller(), world.caller());
    let alice_ca = root("alice flood root");
    register_ca(&world, &alice, &alice_ca, CertificateMode::SniOnly, true, true);
    let bob_ca = root("bob root");
    register_ca(&world, &bob, &bob_ca, CertificateMode::SniOnly, true, true);
    let registered = |caller: &Caller| {
        read(world.services.store(), |tx| {
            tx.list_certificates(&caller.account, &PageRequest { limit: 100, ascending: true, after: None })
        })
        .unwrap()
        .items
        .len()
    };
    let feed_before = world.services.last_change_seq().unwrap();

    // The attacker holds alice's auto-registration CA and mints devices in a loop.
    let outcomes: Vec<&str> = (0..5)
        .map(|_| {
            certfleet_testkit::outcome(world.services.auto_register_certificate(
                &alice.account,
                &device(&alice_ca),
                true,
            ))
        })
        .collect();
    assert_eq!(outcomes, ["ok", "ok", "ok", "LimitExceeded", "LimitExceeded"]);
    assert_eq!(registered(&alice), 3);
    assert_eq!(world.services.registrations_throttled(), 2);
    assert_eq!(world.services.last_change_seq().unwrap(), feed_before + 3, "refusals record no change");

    // Another account is not charged for alice's flood.
    assert!(check(&world, &bob, &device(&bob_ca)).is_some());
    // A stranger whose certificate no CA signed costs nothing, not even a slot of the bound.
    assert_eq!(check(&world, &alice, &device(&root("nobody"))), None);
    assert_eq!(world.services.registrations_throttled(), 2);

    // The next second, alice registers again.
    world.clock.advance(Duration::seconds(1));
    assert!(check(&world, &alice, &device(&alice_ca)).is_some());
    assert_eq!(registered(&alice), 4);
}
