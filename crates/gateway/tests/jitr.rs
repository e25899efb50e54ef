//! Just-in-time registration at the gateway's identity step: an unknown certificate signed by an
//! auto-registering CA is registered PENDING_ACTIVATION, refused, announced once on
//! `$aws/events/certificates/registered/<caCertificateId>`, and accepted once activated.

use std::sync::{Arc, Mutex};

use certfleet_gateway::EventSink;
use certfleet_gateway::fabric::Message;
use certfleet_gateway::follow::apply;
use certfleet_gateway::identity::{CacheLimits, Refusal, Registry};
use certfleet_gateway::live::LiveSessions;
use certfleet_pki::{Certificate, CertificateId, GeneratedKeyPair, Issuer, KeyAlgorithm};
use certfleet_registry::{AccountId, CertificateMode, CertificateStatus, read};
use certfleet_services::*;
use certfleet_testkit::{START, World, world};
use time::Duration;

/// Keeps what is published.
#[derive(Default)]
struct Events(Mutex<Vec<(AccountId, Message)>>);

impl EventSink for Events {
    fn publish_event(&self, account: &AccountId, message: Message) {
        self.0.lock().unwrap().push((account.clone(), message));
    }
}

impl Events {
    fn take(&self) -> Vec<(AccountId, String, serde_json::Value)> {
        std::mem::take(&mut *self.0.lock().unwrap())
            .into_iter()
            .map(|(account, message)| {
                (account, message.topic.as_str().to_owned(), serde_json::from_slice(&message.payload).unwrap())
            })
            .collect()
    }
}

fn root(name: &str) -> Issuer {
    Issuer::generate_root(name, "test", Duration::days(30), KeyAlgorithm::EcdsaP256, START).unwrap()
}

fn device(ca: &Issuer) -> Certificate {
    let key = GeneratedKeyPair::generate(KeyAlgorithm::EcdsaP256).unwrap();
    ca.issue_for_key(key.public_key(), "device", Duration::days(1), START).unwrap()
}

fn register_ca(world: &World, caller: &Caller, ca: &Issuer, auto: bool) -> CertificateId {
    let request = CaRegistration {
        ca_certificate_pem: ca.certificate().to_pem(),
        mode: Some(CertificateMode::SniOnly),
        set_as_active: true,
        allow_auto_registration: auto,
        ..Default::default()
    };
    world.services.register_ca_certificate(caller, &request).unwrap().1
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap()
}

fn gateway_registry(world: &World) -> (Arc<Registry>, Arc<Events>) {
    let events = Arc::new(Events::default());
    let registry =
        Arc::new(Registry::with_limits(world.services.clone(), CacheLimits::default(), Some(events.clone())));
    (registry, events)
}

#[test]
fn an_unknown_certificate_of_an_auto_registering_ca_is_registered_refused_and_announced() {
    let world = world();
    let alice = world.caller();
    let (registry, events) = gateway_registry(&world);
    let rt = runtime();
    let check = |certificate: &Certificate| {
        rt.block_on(registry.authenticate(&alice.account, true, certificate, START))
            .map(|identity| identity.certificate_id)
    };

    let ca = root("fleet root");
    let ca_id = register_ca(&world, &alice, &ca, true);
    let certificate = device(&ca);
    let start = read(world.services.store(), |tx| tx.last_change_seq()).unwrap();
    assert_eq!(check(&certificate), Err(Refusal::PendingActivation));
    let published = events.take();
    assert_eq!(published.len(), 1);
    let (account, topic, payload) = &published[0];
    assert_eq!(account, &alice.account);
    assert_eq!(topic, &format!("$aws/events/certificates/registered/{ca_id}"));
    let millis = i64::try_from(START.unix_timestamp_nanos() / 1_000_000).unwrap();
    assert_eq!(
        payload,
        &serde_json::json!({
            "certificateId": certificate.id().to_string(),
            "caCertificateId": ca_id.to_string(),
            "timestamp": millis,
            "certificateStatus": "PENDING_ACTIVATION",
            "awsAccountId": alice.account.to_string(),
            "certificateRegistrationTimestamp": millis,
        })
    );

    // Reconnecting while pending: refused, and not announced again.
    assert_eq!(check(&certificate), Err(Refusal::PendingActivation));
    assert!(events.take().is_empty());

    // The operator activates it; the change feed reaches the gateway; the device gets in.
    world.services.update_certificate(&alice, certificate.id(), CertificateStatus::Active).unwrap();
    let live = LiveSessions::default();
    for change in world.services.changes_after(start, 100).unwrap() {
        rt.block_on(apply(&registry, &live, &change));
    }
    assert_eq!(check(&certificate), Ok(certificate.id().clone()));
    assert!(events.take().is_empty());
}

#[test]
fn other_unknown_certificates_stay_unregistered() {
    let world = world();
    let (alice, bob) = (world.caller(), world.caller());
    let (registry, events) = gateway_registry(&world);
    let rt = runtime();
    let check = |account: &AccountId, certificate: &Certificate| {
        rt.block_on(registry.authenticate(account, true, certificate, START)).map(|identity| identity.certificate_id)
    };
    let manual = root("manual root");
    register_ca(&world, &alice, &manual, false);
    let auto = root("auto root");
    register_ca(&world, &alice, &auto, true);

    assert_eq!(check(&alice.account, &device(&manual)), Err(Refusal::Unregistered), "auto-registration disabled");
    assert_eq!(check(&alice.account, &device(&root("auto root"))), Err(Refusal::Unregistered), "forged issuer");
    assert_eq!(check(&alice.account, &device(&root("nobody"))), Err(Refusal::Unregistered), "unknown issuer");
    assert_eq!(check(&bob.account, &device(&auto)), Err(Refusal::Unregistered), "the CA is another account's");
    assert!(events.take().is_empty());
}

#[test]
fn a_hundred_devices_at_once_are_each_registered_and_announced_once() {
    let world = world();
    let alice = world.caller();
    let (registry, events) = gateway_registry(&world);
    let ca = root("fleet root");
    let ca_id = register_ca(&world, &alice, &ca, true);
    let devices: Vec<Certificate> = (0..100).map(|_| device(&ca)).collect();
    let rt = runtime();
    let refusals: Vec<Result<(), Refusal>> = rt.block_on(async {
        // Each device connects twice at once: a retry racing the first attempt.
        let tasks: Vec<_> = devices
            .iter()
            .chain(devices.iter())
            .map(|certificate| {
                let (registry, account, certificate) = (registry.clone(), alice.account.clone(), certificate.clone());
                tokio::spawn(async move { registry.authenticate(&account, true, &certificate, START).await.map(drop) })
            })
            .collect();
        let mut results = Vec::new();
        for task in tasks {
            results.push(task.await.unwrap());
        }
        results
    });
    assert!(refusals.iter().all(Result::is_err), "nobody gets in before activation");
    let published = events.take();
    assert_eq!(published.len(), 100, "one event per certificate");
    let mut announced: Vec<String> =
        published.iter().map(|(_, _, payload)| payload["certificateId"].as_str().unwrap().to_owned()).collect();
    announced.sort();
    announced.dedup();
    assert_eq!(announced.len(), 100);
    let by_ca = world
        .services
        .list_certificates_by_ca(
            &alice,
            &ca_id,
            &certfleet_registry::PageRequest { limit: 250, ascending: true, after: None },
        )
        .unwrap();
    assert_eq!(by_ca.items.len(), 100);
    assert!(by_ca.items.iter().all(|record| record.status == CertificateStatus::PendingActivation));
}

#[test]
fn a_registration_flood_is_refused_past_the_accounts_rate_and_counted() {
    let world = certfleet_testkit::world_with(Config { max_registrations_per_second: 2, ..Config::default() });
    let alice = world.caller();
    let (registry, events) = gateway_registry(&world);
    let ca = root("flooded root");
    register_ca(&world, &alice, &ca, true);
    let rt = runtime();
    let check = |certificate: &Certificate| {
        rt.block_on(registry.authenticate(&alice.account, true, certificate, START))
            .map(|identity| identity.certificate_id)
    };
    // Whoever holds the CA's key mints devices in a loop: two are registered, the rest refused
    // with their own reason, nothing written for them and nothing announced.
    let flood: Vec<Certificate> = (0..5).map(|_| device(&ca)).collect();
    let refusals: Vec<_> = flood.iter().map(|certificate| check(certificate).unwrap_err()).collect();
    assert_eq!(
        refusals,
        [
            Refusal::PendingActivation,
            Refusal::PendingActivation,
            Refusal::RegistrationThrottled,
            Refusal::RegistrationThrottled,
            Refusal::RegistrationThrottled
        ]
    );
    assert_eq!(events.take().len(), 2);
    assert_eq!(world.services.registrations_throttled(), 3);
    for certificate in &flood[2..] {
        assert!(world.services.lookup_certificate(&alice.account, certificate.id()).unwrap().is_none());
    }
    // A refused device retries the next second and is registered.
    world.clock.advance(Duration::seconds(1));
    assert_eq!(check(&flood[2]), Err(Refusal::PendingActivation));
}
