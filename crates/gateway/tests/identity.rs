//! Every way the registry refuses a device, and the change feed closing live sessions, checked
//! on a real SQLite registry with certificates made at run time.

use std::sync::Arc;

use certfleet_gateway::follow::apply;
use certfleet_gateway::identity::{Refusal, Registry};
use certfleet_gateway::live::{Close, LiveSessions};
use certfleet_pki::{Certificate, GeneratedKeyPair, Issuer, KeyAlgorithm};
use certfleet_registry::{CaStatus, CertificateMode, CertificateStatus, read};
use certfleet_services::*;
use time::{Duration, OffsetDateTime};

const NOW: OffsetDateTime = certfleet_testkit::START;

struct World {
    services: Arc<Services>,
    registry: Registry,
    _world: certfleet_testkit::World,
}

fn world() -> World {
    let world = certfleet_testkit::world();
    World { services: world.services.clone(), registry: Registry::new(world.services.clone()), _world: world }
}

fn caller(world: &World) -> Caller {
    world._world.caller()
}

fn issued(world: &World, caller: &Caller, active: bool) -> Certificate {
    let created = world.services.create_keys_and_certificate(caller, active).unwrap();
    Certificate::from_pem(&created.certificate.pem).unwrap()
}

fn root(name: &str) -> Issuer {
    Issuer::generate_root(name, "test", Duration::days(30), KeyAlgorithm::EcdsaP256, NOW).unwrap()
}

fn leaf(ca: &Issuer, validity: Duration) -> Certificate {
    let key = GeneratedKeyPair::generate(KeyAlgorithm::EcdsaP256).unwrap();
    ca.issue_for_key(key.public_key(), "device", validity, NOW).unwrap()
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().unwrap()
}

#[test]
fn refusals_name_their_reason() {
    let world = world();
    let (alice, bob) = (caller(&world), caller(&world));
    let rt = runtime();
    let check = |account: &Caller, sni: bool, certificate: &Certificate, at: OffsetDateTime| {
        rt.block_on(world.registry.authenticate(&account.account, sni, certificate, at))
            .map(|identity| identity.certificate_id)
    };

    let active = issued(&world, &alice, true);
    assert_eq!(check(&alice, false, &active, NOW), Ok(active.id().clone()));
    assert_eq!(check(&bob, true, &active, NOW), Err(Refusal::WrongAccount));
    assert_eq!(check(&alice, false, &leaf(&root("nobody"), Duration::days(1)), NOW), Err(Refusal::Unregistered));
    assert_eq!(check(&alice, false, &active, NOW + Duration::days(400)), Err(Refusal::Expired));
    assert_eq!(check(&alice, false, &active, NOW - Duration::days(1)), Err(Refusal::NotYetValid));

    let inactive = issued(&world, &alice, false);
    assert_eq!(check(&alice, false, &inactive, NOW), Err(Refusal::Inactive));
    let revoked = issued(&world, &alice, true);
    world.services.update_certificate(&alice, revoked.id(), CertificateStatus::Revoked).unwrap();
    assert_eq!(check(&alice, false, &revoked, NOW), Err(Refusal::Revoked));

    // A certificate registered without a CA (SNI_ONLY) needs SNI.
    let ca = root("sni-only root");
    let mar = leaf(&ca, Duration::days(1));
    world
        .services
        .register_certificate_without_ca(
            &alice,
            &CertificateRegistration {
                certificate_pem: mar.to_pem(),
                status: Some(CertificateStatus::Active),
                ..Default::default()
            },
        )
        .unwrap();
    assert_eq!(check(&alice, false, &mar, NOW), Err(Refusal::SniRequired));
    assert_eq!(check(&alice, true, &mar, NOW), Ok(mar.id().clone()));

    // A CA-signed certificate: its CA must be ACTIVE.
    let registered_ca = root("fleet root");
    let (_, ca_id) = world
        .services
        .register_ca_certificate(
            &alice,
            &CaRegistration {
                ca_certificate_pem: registered_ca.certificate().to_pem(),
                mode: Some(CertificateMode::SniOnly),
                set_as_active: true,
                ..Default::default()
            },
        )
        .unwrap();
    let device = leaf(&registered_ca, Duration::days(1));
    world
        .services
        .register_certificate(
            &alice,
            &CertificateRegistration {
                certificate_pem: device.to_pem(),
                status: Some(CertificateStatus::Active),
                ..Default::default()
            },
        )
        .unwrap();
    assert_eq!(check(&alice, true, &device, NOW), Ok(device.id().clone()));
    world
        .services
        .update_ca_certificate(&alice, &ca_id, &CaUpdate { new_status: Some(CaStatus::Inactive), ..Default::default() })
        .unwrap();
    world.registry.forget_ca(&alice.account, &ca_id);
    assert_eq!(check(&alice, true, &device, NOW), Err(Refusal::CaInactive));
}

#[test]
fn the_change_feed_closes_revoked_sessions_and_refreshes_the_cache() {
    let world = world();
    let alice = caller(&world);
    let rt = runtime();
    let live = Arc::new(LiveSessions::default());
    let certificate = issued(&world, &alice, true);
    let identity = rt.block_on(world.registry.authenticate(&alice.account, false, &certificate, NOW)).unwrap();
    let membership = live.join(identity, None, "TLSv1.3", "127.0.0.1:1".parse().unwrap(), NOW);
    let start = read(world.services.store(), |tx| tx.last_change_seq()).unwrap();

    world.services.update_certificate(&alice, certificate.id(), CertificateStatus::Inactive).unwrap();
    // The cache still says ACTIVE until the feed is applied...
    assert!(rt.block_on(world.registry.authenticate(&alice.account, false, &certificate, NOW)).is_ok());
    let changes = world.services.changes_after(start, 100).unwrap();
    assert_eq!(changes.len(), 1);
    rt.block_on(apply(&world.registry, &live, &changes[0]));
    // ...then the live session is told to close, and new connections are refused.
    assert_eq!(*membership.closed.borrow(), Some(Close::Refused(Refusal::Inactive)));
    assert_eq!(
        rt.block_on(world.registry.authenticate(&alice.account, false, &certificate, NOW)),
        Err(Refusal::Inactive)
    );
    assert_eq!(live.count(), 1);
    drop(membership);
    assert_eq!(live.count(), 0, "a session leaves the table when it ends");
}
