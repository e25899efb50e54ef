//! Server certificates, domain configurations, endpoint resolution and migration through the
//! typed services, on a real SQLite registry.

use std::collections::HashMap;
use std::sync::{Arc, LazyLock};

use certfleet_pki::{Certificate, Issuer, KeyAlgorithm, pem_encode};
use certfleet_registry::{AccountId, DomainStatus, SqliteStore};
use certfleet_services::*;
use certfleet_testkit::{START, TempDir, outcome};
use time::Duration;
use zeroize::Zeroizing;

const DOMAIN: &str = "iot.example.com";

fn root(name: &str) -> Issuer {
    Issuer::generate_root(name, "test", Duration::days(30), KeyAlgorithm::EcdsaP256, START).unwrap()
}

/// The root in the services' domain-claim trust store: a server certificate it issued proves
/// control of the domains it names.
static TRUSTED: LazyLock<Issuer> = LazyLock::new(|| root("trusted public root"));

/// A server certificate for `names` (leaf PEM, PKCS#8 key PEM).
fn server(ca: &Issuer, names: &[&str], key: KeyAlgorithm) -> (String, String) {
    issued(ca, names, key, START)
}

fn issued(ca: &Issuer, names: &[&str], key: KeyAlgorithm, at: time::OffsetDateTime) -> (String, String) {
    let sans: Vec<String> = names.iter().map(|n| n.to_string()).collect();
    let (certificate, der) = ca.issue_server_certificate(names[0], &sans, Duration::days(10), key, at).unwrap();
    (certificate.to_pem(), pem_encode("PRIVATE KEY", &der))
}

/// Services over a fresh SQLite registry whose domain claims trust [`TRUSTED`], reserve the
/// name `api.certfleet.example`, and allow the accounts made first their suffixes.
struct World {
    services: Arc<Services>,
    clock: Arc<ManualClock>,
    _dir: TempDir,
}

impl World {
    fn caller(&self) -> Caller {
        Caller { account: self.services.create_account().unwrap().id }
    }
}

/// A world with one account per entry of `suffixes`, each allowed those domain suffixes.
fn world_with_claims(suffixes: &[&[&str]]) -> (World, Vec<Caller>) {
    let dir = TempDir::new("endpoints");
    let store = Arc::new(SqliteStore::open(&dir.path().join("registry.db")).unwrap());
    let clock = Arc::new(ManualClock::new(START));
    let bootstrap = Services::new(store.clone(), clock.clone(), Config::default(), None);
    let callers: Vec<Caller> =
        suffixes.iter().map(|_| Caller { account: bootstrap.create_account().unwrap().id }).collect();
    let allowed_suffixes: HashMap<AccountId, Vec<String>> = callers
        .iter()
        .zip(suffixes)
        .map(|(caller, suffixes)| (caller.account.clone(), suffixes.iter().map(|s| s.to_string()).collect()))
        .collect();
    let config = Config {
        domain_claims: DomainClaims {
            allowed_suffixes,
            trust_anchors: vec![TRUSTED.certificate().clone()],
            reserved_names: vec!["api.certfleet.example".into()],
        },
        ..Config::default()
    };
    let services = Arc::new(Services::new(store, clock.clone(), config, None));
    services.attach_key_passphrase(Zeroizing::new(b"test passphrase".to_vec()));
    (World { services, clock, _dir: dir }, callers)
}

fn setup() -> (World, Caller) {
    let (world, _) = world_with_claims(&[]);
    let caller = world.caller();
    (world, caller)
}

fn import(world: &World, caller: &Caller, leaf: &str, key: &str, chain: Option<&str>) -> Result<String, Error> {
    world.services.import_server_certificate(
        caller,
        &ServerCertificateImport {
            certificate_pem: leaf.into(),
            private_key_pem: Zeroizing::new(key.into()),
            chain_pem: chain.map(str::to_owned),
            certificate_arn: None,
        },
    )
}

/// A server certificate from the trusted root: it proves control of the names it holds.
fn import_for(world: &World, caller: &Caller, names: &[&str], key: KeyAlgorithm) -> String {
    import_from(world, caller, &TRUSTED, names, key)
}

fn import_from(world: &World, caller: &Caller, ca: &Issuer, names: &[&str], key: KeyAlgorithm) -> String {
    let (leaf, key) = server(ca, names, key);
    import(world, caller, &leaf, &key, Some(&ca.certificate().to_pem())).unwrap()
}

fn definition(name: &str, domain: &str, arns: &[String]) -> DomainConfigurationDefinition {
    DomainConfigurationDefinition {
        name: name.into(),
        domain_name: Some(domain.into()),
        server_certificate_arns: arns.to_vec(),
        ..Default::default()
    }
}

fn custom_names(world: &World, caller: &Caller) -> Vec<String> {
    world
        .services
        .list_domain_configurations(caller, None, 250)
        .unwrap()
        .0
        .into_iter()
        .map(|c| c.name)
        .filter(|n| !n.contains(':'))
        .collect()
}

fn identifier(world: &World, caller: &Caller) -> String {
    let host = world.services.endpoint_address(caller, None).unwrap();
    host.strip_suffix("-ats.iot.us-east-1.certfleet.local").unwrap().to_owned()
}

#[test]
fn import_checks_the_certificate_key_and_chain() {
    let (world, caller) = setup();
    let ca = root("server root");
    let (leaf, key) = server(&ca, &[DOMAIN], KeyAlgorithm::EcdsaP256);
    let arn = import(&world, &caller, &leaf, &key, Some(&ca.certificate().to_pem())).unwrap();
    assert!(arn.starts_with(&format!("arn:aws:acm:us-east-1:{}:certificate/", caller.account)), "{arn}");
    let described = world.services.describe_server_certificate(&caller, &arn).unwrap();
    assert_eq!(described.record.domain_name, DOMAIN);
    assert_eq!(described.record.key_algorithm, "EC_prime256v1");
    assert!(described.in_use_by.is_empty());
    let (got_leaf, got_chain) = world.services.get_server_certificate(&caller, &arn).unwrap();
    assert_eq!(Certificate::from_pem(&got_leaf).unwrap(), Certificate::from_pem(&leaf).unwrap());
    assert!(got_chain.is_some());

    // The key of another certificate.
    let (_, other_key) = server(&ca, &[DOMAIN], KeyAlgorithm::EcdsaP256);
    assert_eq!(outcome(import(&world, &caller, &leaf, &other_key, None)), "Validation");
    // A CA certificate.
    assert_eq!(outcome(import(&world, &caller, &ca.certificate().to_pem(), &key, None)), "Validation");
    // Expired.
    let (old_leaf, old_key) = issued(&ca, &[DOMAIN], KeyAlgorithm::EcdsaP256, START - Duration::days(20));
    assert_eq!(outcome(import(&world, &caller, &old_leaf, &old_key, None)), "Validation");
    // A chain that does not continue the leaf.
    let stranger = root("stranger");
    assert_eq!(outcome(import(&world, &caller, &leaf, &key, Some(&stranger.certificate().to_pem()))), "Validation");
    assert_eq!(outcome(import(&world, &caller, &leaf, &key, Some("not pem"))), "Validation");
    assert_eq!(outcome(import(&world, &caller, "garbage", &key, None)), "Validation");
    assert_eq!(world.services.list_server_certificates(&caller, None, 100).unwrap().0.len(), 1);

    // Re-import by ARN replaces the certificate under the same ARN.
    let (new_leaf, new_key) = server(&ca, &["other.example.com"], KeyAlgorithm::Rsa2048);
    let reimport = |caller: &Caller, arn: &str| {
        world.services.import_server_certificate(
            caller,
            &ServerCertificateImport {
                certificate_pem: new_leaf.clone(),
                private_key_pem: Zeroizing::new(new_key.clone()),
                chain_pem: None,
                certificate_arn: Some(arn.into()),
            },
        )
    };
    assert_eq!(reimport(&caller, &arn).unwrap(), arn);
    let described = world.services.describe_server_certificate(&caller, &arn).unwrap();
    assert_eq!(described.record.domain_name, "other.example.com");
    assert_eq!(described.record.key_algorithm, "RSA_2048");
    assert_eq!(described.record.chain_pem, None);
    // Another account's ARN is not one of ours.
    let other = world.caller();
    assert_eq!(outcome(reimport(&other, &arn)), "InvalidArn");
    assert_eq!(outcome(world.services.describe_server_certificate(&other, &arn)), "InvalidArn");
    assert_eq!(outcome(world.services.delete_server_certificate(&other, &arn)), "InvalidArn");
    // An unknown ID of ours.
    let unknown = world.services.server_certificate_arn(&caller.account, "0000-1111");
    assert_eq!(outcome(reimport(&caller, &unknown)), "NotFound");
    assert_eq!(world.services.list_server_certificates(&caller, None, 100).unwrap().0.len(), 1);
}

#[test]
fn a_certificate_in_use_is_not_deleted() {
    let (world, caller) = setup();
    let arn = import_for(&world, &caller, &[DOMAIN], KeyAlgorithm::EcdsaP256);
    world
        .services
        .create_domain_configuration(&caller, &definition("mine", DOMAIN, std::slice::from_ref(&arn)))
        .unwrap();
    let before = world.services.describe_domain_configuration(&caller, "mine").unwrap();
    assert_eq!(outcome(world.services.delete_server_certificate(&caller, &arn)), "InUse");
    assert!(world.services.describe_server_certificate(&caller, &arn).is_ok());
    assert_eq!(world.services.describe_domain_configuration(&caller, "mine").unwrap(), before);
    let described = world.services.describe_server_certificate(&caller, &arn).unwrap();
    assert_eq!(described.in_use_by.len(), 1);
    assert!(described.in_use_by[0].contains("domainconfiguration/mine/"), "{:?}", described.in_use_by);
    // Staged as next also counts.
    let spare = import_for(&world, &caller, &[DOMAIN], KeyAlgorithm::EcdsaP256);
    world.services.set_next_chain(&caller, "mine", std::slice::from_ref(&spare)).unwrap();
    assert_eq!(outcome(world.services.delete_server_certificate(&caller, &spare)), "InUse");
    world.services.delete_domain_configuration(&caller, "mine").unwrap();
    world.services.delete_server_certificate(&caller, &arn).unwrap();
    world.services.delete_server_certificate(&caller, &spare).unwrap();
    assert_eq!(outcome(world.services.delete_server_certificate(&caller, &arn)), "NotFound");
}

#[test]
fn create_refuses_what_it_cannot_serve() {
    let (world, caller) = setup();
    let ec = import_for(&world, &caller, &[DOMAIN], KeyAlgorithm::EcdsaP256);
    let ec2 = import_for(&world, &caller, &[DOMAIN], KeyAlgorithm::EcdsaP256);
    let rsa = import_for(&world, &caller, &[DOMAIN], KeyAlgorithm::Rsa2048);
    let elsewhere = import_for(&world, &caller, &["elsewhere.example.com"], KeyAlgorithm::EcdsaP256);
    let with = |change: &dyn Fn(&mut DomainConfigurationDefinition)| {
        let mut d = definition("mine", DOMAIN, std::slice::from_ref(&ec));
        change(&mut d);
        world.services.create_domain_configuration(&caller, &d)
    };
    type Change<'a> = Box<dyn Fn(&mut DomainConfigurationDefinition) + 'a>;
    let cases: Vec<(&str, Change<'_>, &str)> = vec![
        ("empty name", Box::new(|d| d.name = String::new()), "InvalidRequest"),
        ("bad name", Box::new(|d| d.name = "has space".into()), "InvalidRequest"),
        ("colon", Box::new(|d| d.name = "my:config".into()), "InvalidRequest"),
        ("long name", Box::new(|d| d.name = "a".repeat(129)), "InvalidRequest"),
        ("reserved", Box::new(|d| d.name = "iot:Data-ATS".into()), "InvalidRequest"),
        ("reserved test", Box::new(|d| d.name = "certfleet:Test".into()), "InvalidRequest"),
        ("no domain", Box::new(|d| d.domain_name = None), "InvalidRequest"),
        ("bad domain", Box::new(|d| d.domain_name = Some("not a domain".into())), "InvalidRequest"),
        ("one label", Box::new(|d| d.domain_name = Some("localhost".into())), "InvalidRequest"),
        (
            "under the endpoint domain",
            Box::new(|d| d.domain_name = Some("x.iot.us-east-1.certfleet.local".into())),
            "InvalidRequest",
        ),
        ("the endpoint domain", Box::new(|d| d.domain_name = Some("certfleet.local".into())), "InvalidRequest"),
        ("policy", Box::new(|d| d.security_policy = Some("IoTSecurityPolicy_Nope".into())), "InvalidRequest"),
        ("service", Box::new(|d| d.service_type = Some("JOBS".into())), "InvalidRequest"),
        ("auth", Box::new(|d| d.authentication_type = Some("CUSTOM_AUTH".into())), "InvalidRequest"),
        ("protocol", Box::new(|d| d.application_protocol = Some("HTTPS".into())), "InvalidRequest"),
        ("authorizer", Box::new(|d| d.has_authorizer_config = true), "InvalidRequest"),
        ("ocsp", Box::new(|d| d.enable_ocsp_check = true), "InvalidRequest"),
        ("no certificate", Box::new(|d| d.server_certificate_arns.clear()), "InvalidRequest"),
        ("other domain", Box::new(|d| d.server_certificate_arns = vec![elsewhere.clone()]), "CertificateValidation"),
        ("two ecdsa", Box::new(|d| d.server_certificate_arns = vec![ec.clone(), ec2.clone()]), "InvalidRequest"),
        (
            "three",
            Box::new(|d| d.server_certificate_arns = vec![ec.clone(), rsa.clone(), ec2.clone()]),
            "InvalidRequest",
        ),
        ("bad arn", Box::new(|d| d.server_certificate_arns = vec!["arn:aws:acm:nope".into()]), "InvalidArn"),
        (
            "unknown arn",
            Box::new(|d| {
                d.server_certificate_arns = vec![world.services.server_certificate_arn(&caller.account, "abc-123")]
            }),
            "NotFound",
        ),
    ];
    for (label, change, expected) in &cases {
        assert_eq!(outcome(with(change.as_ref())), *expected, "{label}");
        assert!(custom_names(&world, &caller).is_empty(), "{label}");
    }
    let created = with(&|d| {
        d.server_certificate_arns = vec![ec.clone(), rsa.clone()];
        d.domain_name = Some("IOT.Example.com.".into());
    })
    .unwrap();
    assert_eq!(created.domain_name, DOMAIN);
    assert_eq!(created.current_chain.len(), 2);
    assert_eq!(created.security_policy, "IoTSecurityPolicy_TLS13_1_2_2022_10");
    assert_eq!(created.domain_type, "CUSTOMER_MANAGED");
    let stored = world.services.describe_domain_configuration(&caller, "mine").unwrap();
    assert_eq!(stored, created);
    // Same name again; same domain under another name.
    assert_eq!(outcome(with(&|_| {})), "AlreadyExists");
    assert_eq!(outcome(with(&|d| d.name = "second".into())), "AlreadyExists");
    // The same domain in another account.
    let other = world.caller();
    let theirs = import_for(&world, &other, &[DOMAIN], KeyAlgorithm::EcdsaP256);
    assert_eq!(
        outcome(world.services.create_domain_configuration(&other, &definition("theirs", DOMAIN, &[theirs]))),
        "AlreadyExists"
    );
    assert!(custom_names(&world, &other).is_empty());
    assert_eq!(custom_names(&world, &caller), ["mine"]);
    assert_eq!(world.services.describe_domain_configuration(&caller, "mine").unwrap(), created);
}

#[test]
fn an_account_holds_at_most_ten_custom_configurations() {
    let (world, caller) = setup();
    let arn = import_for(&world, &caller, &["*.example.com"], KeyAlgorithm::EcdsaP256);
    for i in 0..10 {
        let d = definition(&format!("c{i:02}"), &format!("d{i}.example.com"), std::slice::from_ref(&arn));
        world.services.create_domain_configuration(&caller, &d).unwrap();
    }
    let eleventh = definition("c10", "d10.example.com", std::slice::from_ref(&arn));
    assert_eq!(outcome(world.services.create_domain_configuration(&caller, &eleventh)), "LimitExceeded");
    assert_eq!(custom_names(&world, &caller).len(), 10);
    // Changing reserved configurations does not count against it.
    world.services.delete_domain_configuration(&caller, "c00").unwrap();
    let update = DomainConfigurationUpdate { status: Some(DomainStatus::Disabled), ..Default::default() };
    world.services.update_domain_configuration(&caller, "certfleet:Test", &update).unwrap();
    world.services.create_domain_configuration(&caller, &eleventh).unwrap();
    assert_eq!(custom_names(&world, &caller).len(), 10);
}

#[test]
fn reserved_configurations_are_synthesized_listed_and_stored_on_change() {
    let (world, caller) = setup();
    let id = identifier(&world, &caller);
    let ats = world.services.describe_domain_configuration(&caller, "iot:Data-ATS").unwrap();
    assert_eq!(ats.domain_name, format!("{id}-ats.iot.us-east-1.certfleet.local"));
    assert_eq!(ats.domain_type, "ENDPOINT");
    assert_eq!(ats.status, DomainStatus::Enabled);
    assert_eq!(ats.security_policy, "IoTSecurityPolicy_TLS13_1_2_2022_10");
    assert!(ats.current_chain.is_empty());
    assert_eq!(world.services.describe_domain_configuration(&caller, "iot:Jobs").unwrap().service_type, "JOBS");
    assert_eq!(outcome(world.services.describe_domain_configuration(&caller, "nope")), "NotFound");
    assert_eq!(outcome(world.services.describe_domain_configuration(&caller, "bad name")), "InvalidRequest");

    let update = DomainConfigurationUpdate {
        status: Some(DomainStatus::Disabled),
        security_policy: Some("IoTSecurityPolicy_TLS13_1_3_2022_10".into()),
        ..Default::default()
    };
    world.clock.advance(Duration::seconds(5));
    let updated = world.services.update_domain_configuration(&caller, "certfleet:Test", &update).unwrap();
    assert_eq!(updated.status, DomainStatus::Disabled);
    assert_eq!(updated.last_status_change, START + Duration::seconds(5));
    let described = world.services.describe_domain_configuration(&caller, "certfleet:Test").unwrap();
    assert_eq!(described, updated);
    assert_eq!(described.security_policy, "IoTSecurityPolicy_TLS13_1_3_2022_10");
    // Not-served endpoints have nothing to update; bad policies are refused.
    assert_eq!(outcome(world.services.update_domain_configuration(&caller, "iot:Jobs", &update)), "InvalidRequest");
    let bad = DomainConfigurationUpdate { security_policy: Some("nope".into()), ..Default::default() };
    assert_eq!(outcome(world.services.update_domain_configuration(&caller, "iot:Data", &bad)), "InvalidRequest");
    // Reserved configurations cannot be deleted.
    assert_eq!(outcome(world.services.delete_domain_configuration(&caller, "certfleet:Test")), "InvalidRequest");

    let arn = import_for(&world, &caller, &["a.example.com", "z.example.com"], KeyAlgorithm::EcdsaP256);
    for name in ["zz-last", "AA-first"] {
        let domain = if name == "zz-last" { "z.example.com" } else { "a.example.com" };
        world
            .services
            .create_domain_configuration(&caller, &definition(name, domain, std::slice::from_ref(&arn)))
            .unwrap();
    }
    let (all, next) = world.services.list_domain_configurations(&caller, None, 250).unwrap();
    assert_eq!(next, None);
    let names: Vec<_> = all.iter().map(|c| c.name.as_str()).collect();
    let mut sorted = names.clone();
    sorted.sort();
    assert_eq!(names, sorted);
    assert_eq!(names.len(), 8);
    for name in
        ["iot:Data-ATS", "iot:Data", "iot:Jobs", "iot:CredentialProvider", "certfleet:Test", "certfleet:LargeCert"]
    {
        assert!(names.contains(&name), "{name} in {names:?}");
    }
    assert_eq!(all.iter().find(|c| c.name == "certfleet:Test").unwrap().status, DomainStatus::Disabled);
    // Paging with `after`.
    let mut paged = Vec::new();
    let mut after = None;
    loop {
        let (page, next) = world.services.list_domain_configurations(&caller, after.as_deref(), 3).unwrap();
        assert!(page.len() <= 3);
        paged.extend(page.into_iter().map(|c| c.name));
        match next {
            Some(next) => after = Some(next),
            None => break,
        }
    }
    assert_eq!(paged, names);
}

#[test]
fn host_names_resolve_to_their_configuration() {
    let (world, caller) = setup();
    let id = identifier(&world, &caller);
    let arn = import_for(&world, &caller, &[DOMAIN], KeyAlgorithm::EcdsaP256);
    world.services.create_domain_configuration(&caller, &definition("mine", DOMAIN, &[arn])).unwrap();
    let resolve = |host: &str| world.services.resolve_endpoint(host).unwrap().map(|c| (c.account, c.name));
    let ours = |name: &str| Some((caller.account.clone(), name.to_owned()));
    assert_eq!(resolve(&format!("{id}-ats.iot.us-east-1.certfleet.local")), ours("iot:Data-ATS"));
    assert_eq!(resolve(&format!("{id}.iot.us-east-1.certfleet.local")), ours("iot:Data"));
    assert_eq!(resolve(&format!("{id}-test.iot.us-east-1.certfleet.local")), ours("certfleet:Test"));
    assert_eq!(resolve(&format!("{id}-large.iot.us-east-1.certfleet.local")), ours("certfleet:LargeCert"));
    assert_eq!(resolve(&format!("{}-ATS.iot.us-east-1.certfleet.local.", id.to_uppercase())), ours("iot:Data-ATS"));
    assert_eq!(resolve(DOMAIN), ours("mine"));
    assert_eq!(resolve("IOT.example.com."), ours("mine"));
    assert_eq!(resolve("unknown.example.com"), None);
    assert_eq!(resolve("zzzzzzzzzzzzzz-ats.iot.us-east-1.certfleet.local"), None);
    assert_eq!(resolve(&format!("{id}-ats.iot.eu-west-1.certfleet.local")), None);
    assert_eq!(resolve(&format!("{id}-nope.iot.us-east-1.certfleet.local")), None);
    // Another account's endpoint names resolve to it.
    let other = world.caller();
    let other_id = identifier(&world, &other);
    assert_eq!(
        world
            .services
            .resolve_endpoint(&format!("{other_id}-test.iot.us-east-1.certfleet.local"))
            .unwrap()
            .map(|c| c.account),
        Some(other.account.clone())
    );
}

#[test]
fn migration_moves_from_current_to_next() {
    let (world, caller) = setup();
    let first = import_for(&world, &caller, &[DOMAIN], KeyAlgorithm::EcdsaP256);
    let second = import_for(&world, &caller, &[DOMAIN], KeyAlgorithm::EcdsaP256);
    let created = world
        .services
        .create_domain_configuration(&caller, &definition("mine", DOMAIN, std::slice::from_ref(&first)))
        .unwrap();
    let settings = MigrationSettings { drain_per_second: 10.0, guard_max_failures: Some(3) };
    assert_eq!(
        outcome(world.services.migrate_domain_configuration(&caller, "mine", settings.clone())),
        "InvalidRequest"
    );
    assert_eq!(
        outcome(world.services.revert_domain_configuration(&caller.account, "mine", "operator")),
        "InvalidRequest"
    );
    assert_eq!(outcome(world.services.finish_migration(&caller, "mine")), "InvalidRequest");
    let bad = MigrationSettings { drain_per_second: 0.0, guard_max_failures: None };
    world.services.set_next_chain(&caller, "mine", std::slice::from_ref(&second)).unwrap();
    assert_eq!(outcome(world.services.migrate_domain_configuration(&caller, "mine", bad)), "InvalidRequest");

    world.clock.advance(Duration::seconds(7));
    let migrating = world.services.migrate_domain_configuration(&caller, "mine", settings.clone()).unwrap();
    assert!(migrating.serving_next);
    assert_eq!(migrating.current_chain, created.current_chain);
    let migration = Migration::parse(migrating.migration.as_deref().unwrap()).unwrap();
    assert_eq!(migration.settings, settings);
    assert_eq!(migration.started_at, START + Duration::seconds(7));
    assert_eq!(migration.reverted_at, None);
    assert_eq!(
        outcome(world.services.migrate_domain_configuration(&caller, "mine", settings.clone())),
        "InvalidRequest"
    );
    // The served next chain cannot be cleared.
    assert_eq!(outcome(world.services.set_next_chain(&caller, "mine", &[])), "InvalidRequest");
    let chain = world.services.serving_chain(&migrating).unwrap();
    assert_eq!(chain.ids, migrating.next_chain);
    assert_eq!(chain.keys.len(), 1);

    // Revert: back to current, with the reason, and a new migration id.
    world.clock.advance(Duration::seconds(3));
    let reverted = world.services.revert_domain_configuration(&caller.account, "mine", "guard: 3 failures").unwrap();
    assert!(!reverted.serving_next);
    let after_revert = Migration::parse(reverted.migration.as_deref().unwrap()).unwrap();
    assert_ne!(after_revert.id, migration.id);
    assert_eq!(after_revert.reverted_at, Some(START + Duration::seconds(10)));
    assert_eq!(after_revert.revert_reason.as_deref(), Some("guard: 3 failures"));
    assert_eq!(after_revert.started_at, migration.started_at);
    assert_eq!(world.services.serving_chain(&reverted).unwrap().ids, created.current_chain);

    // Migrate again and finish: next becomes current.
    world.services.migrate_domain_configuration(&caller, "mine", settings).unwrap();
    let finished = world.services.finish_migration(&caller, "mine").unwrap();
    assert!(!finished.serving_next);
    assert!(finished.next_chain.is_empty());
    assert_eq!(finished.migration, None);
    assert_eq!(finished.current_chain, migrating.next_chain);
    assert_eq!(world.services.describe_domain_configuration(&caller, "mine").unwrap(), finished);
    // The old certificate is free now.
    world.services.delete_server_certificate(&caller, &first).unwrap();
    assert_eq!(outcome(world.services.delete_server_certificate(&caller, &second)), "InUse");
}

#[test]
fn migration_state_round_trips_through_its_stored_form() {
    let (world, caller) = setup();
    let first = import_for(&world, &caller, &[DOMAIN], KeyAlgorithm::EcdsaP256);
    world
        .services
        .create_domain_configuration(&caller, &definition("mine", DOMAIN, std::slice::from_ref(&first)))
        .unwrap();
    world.services.set_next_chain(&caller, "mine", &[first]).unwrap();
    for guard in [None, Some(5)] {
        let settings = MigrationSettings { drain_per_second: 2.5, guard_max_failures: guard };
        let config = world.services.migrate_domain_configuration(&caller, "mine", settings.clone()).unwrap();
        let text = config.migration.clone().unwrap();
        let parsed = Migration::parse(&text).unwrap();
        assert_eq!(parsed.settings, settings);
        assert_eq!(parsed.started_at, START);
        assert_eq!(parsed.revert_reason, None);
        world.services.revert_domain_configuration(&caller.account, "mine", "again").unwrap();
    }
    assert_eq!(Migration::parse("not json"), None);
    assert_eq!(Migration::parse("{}"), None);
    assert_eq!(Migration::parse(r#"{"id":"x","drainPerSecond":1.0}"#), None);
    let minimal = Migration::parse(r#"{"id":"x","drainPerSecond":1.5,"startedAt":1000}"#).unwrap();
    assert_eq!(minimal.id, "x");
    assert_eq!(minimal.settings.guard_max_failures, None);
    assert_eq!(minimal.reverted_at, None);
}

#[test]
fn endpoint_addresses_name_each_reserved_type() {
    let (world, caller) = setup();
    let id = identifier(&world, &caller);
    let address = |t: Option<&str>| world.services.endpoint_address(&caller, t);
    assert_eq!(address(None).unwrap(), format!("{id}-ats.iot.us-east-1.certfleet.local"));
    assert_eq!(address(Some("iot:Data-ATS")).unwrap(), format!("{id}-ats.iot.us-east-1.certfleet.local"));
    assert_eq!(address(Some("iot:Data")).unwrap(), format!("{id}.iot.us-east-1.certfleet.local"));
    assert_eq!(address(Some("iot:Jobs")).unwrap(), format!("{id}.jobs.iot.us-east-1.certfleet.local"));
    assert_eq!(
        address(Some("iot:CredentialProvider")).unwrap(),
        format!("{id}.credentials.iot.us-east-1.certfleet.local")
    );
    assert_eq!(address(Some("certfleet:Test")).unwrap(), format!("{id}-test.iot.us-east-1.certfleet.local"));
    assert_eq!(address(Some("certfleet:LargeCert")).unwrap(), format!("{id}-large.iot.us-east-1.certfleet.local"));
    assert_eq!(outcome(address(Some("iot:Nope"))), "InvalidRequest");
    assert_eq!(outcome(address(Some("mine"))), "InvalidRequest");
}

#[test]
fn a_claim_needs_proof_of_control() {
    let (world, callers) = world_with_claims(&[&["fleet.example.com"], &[]]);
    let (allowed, caller) = (&callers[0], &callers[1]);
    let private = root("private root");
    let validation = |names: &[&str], ca: &Issuer| import_from(&world, caller, ca, names, KeyAlgorithm::EcdsaP256);
    let naming_it = validation(&[DOMAIN], &TRUSTED);
    let wildcard = validation(&["*.example.com"], &TRUSTED);
    let naming_other = validation(&["other.example.com"], &TRUSTED);
    let untrusted_naming_it = validation(&[DOMAIN], &private);
    let too_wide = validation(&["*.com"], &TRUSTED);
    let (expired_leaf, expired_key) =
        issued(&TRUSTED, &[DOMAIN], KeyAlgorithm::EcdsaP256, START - Duration::days(9) - Duration::hours(23));
    let expiring = import(&world, caller, &expired_leaf, &expired_key, None).unwrap();
    world.clock.advance(Duration::hours(2));
    // Each claim serves a certificate of the private root naming the domain (so only the proof
    // can be missing).
    let claim = |domain: &str, validation: Option<&String>| {
        let untrusted = import_from(&world, caller, &private, &[domain], KeyAlgorithm::EcdsaP256);
        let mut d = definition("claim", domain, &[untrusted]);
        d.validation_certificate_arn = validation.cloned();
        world.services.create_domain_configuration(caller, &d)
    };
    let elsewhere = world_with_claims(&[]).0.caller();
    let foreign = world.services.server_certificate_arn(&elsewhere.account, "abc-123");
    let cases: Vec<(&str, &str, Option<&String>, &str)> = vec![
        ("no proof", DOMAIN, None, "CertificateValidation"),
        ("names another domain", DOMAIN, Some(&naming_other), "CertificateValidation"),
        ("does not chain", DOMAIN, Some(&untrusted_naming_it), "CertificateValidation"),
        ("a wildcard covers one label only", "a.iot.example.com", Some(&wildcard), "CertificateValidation"),
        ("a wildcard under a single label", "example.com", Some(&too_wide), "CertificateValidation"),
        ("expired", DOMAIN, Some(&expiring), "CertificateValidation"),
        ("another account's certificate", DOMAIN, Some(&foreign), "InvalidArn"),
        ("a server name", "api.certfleet.example", Some(&naming_it), "InvalidRequest"),
    ];
    for (label, domain, validation, expected) in cases {
        assert_eq!(outcome(claim(domain, validation)), expected, "{label}");
        assert!(custom_names(&world, caller).is_empty(), "{label}");
        assert_eq!(world.services.resolve_endpoint(domain).unwrap(), None, "{label}");
    }

    // A validation certificate naming the domain (exactly, or by a wildcard) proves it.
    let created = claim(DOMAIN, Some(&naming_it)).unwrap();
    assert_eq!(world.services.resolve_endpoint(DOMAIN).unwrap(), Some(created));
    world.services.delete_domain_configuration(caller, "claim").unwrap();
    claim(DOMAIN, Some(&wildcard)).unwrap();
    world.services.delete_domain_configuration(caller, "claim").unwrap();
    // So does a server certificate chaining to the trust store, with no validation certificate.
    let trusted_server = import_for(&world, caller, &[DOMAIN], KeyAlgorithm::EcdsaP256);
    world.services.create_domain_configuration(caller, &definition("claim", DOMAIN, &[trusted_server])).unwrap();
    world.services.delete_domain_configuration(caller, "claim").unwrap();

    // Under an allowed suffix, any server certificate naming the domain will do.
    let private_for = |domain: &str| import_from(&world, allowed, &private, &[domain], KeyAlgorithm::EcdsaP256);
    for (domain, expected) in [
        ("fleet.example.com", "ok"),
        ("devices.fleet.example.com", "ok"),
        ("a.b.fleet.example.com", "ok"),
        ("evilfleet.example.com", "CertificateValidation"),
        ("example.com", "CertificateValidation"),
    ] {
        let d = definition(&format!("c-{}", domain.replace('.', "-")), domain, &[private_for(domain)]);
        assert_eq!(outcome(world.services.create_domain_configuration(allowed, &d)), expected, "{domain}");
    }
    // A validation certificate given under an allowed suffix must still prove the claim.
    let domain = "named.fleet.example.com";
    let mut d = definition("named", domain, &[private_for(domain)]);
    d.validation_certificate_arn = Some(import_from(&world, allowed, &private, &[domain], KeyAlgorithm::EcdsaP256));
    assert_eq!(outcome(world.services.create_domain_configuration(allowed, &d)), "CertificateValidation");
    d.validation_certificate_arn = Some(world.services.server_certificate_arn(&allowed.account, "abc-123"));
    assert_eq!(outcome(world.services.create_domain_configuration(allowed, &d)), "NotFound");
    assert_eq!(world.services.resolve_endpoint(domain).unwrap(), None);
    // The other account is not allowed the suffix.
    let d = definition(
        "theirs",
        "x.fleet.example.com",
        &[import_from(&world, caller, &private, &["x.fleet.example.com"], KeyAlgorithm::EcdsaP256)],
    );
    assert_eq!(outcome(world.services.create_domain_configuration(caller, &d)), "CertificateValidation");
}

#[test]
fn another_account_cannot_take_change_or_delete_a_claimed_domain() {
    let (world, callers) = world_with_claims(&[&[], &["example.com"], &[]]);
    let (owner, proven, stranger) = (&callers[0], &callers[1], &callers[2]);
    let ours = import_for(&world, owner, &[DOMAIN], KeyAlgorithm::EcdsaP256);
    let created = world.services.create_domain_configuration(owner, &definition("devices", DOMAIN, &[ours])).unwrap();
    let served = |world: &World| {
        let config = world.services.resolve_endpoint(DOMAIN).unwrap().unwrap();
        (config.account.clone(), world.services.serving_chain(&config).unwrap().ids)
    };
    let before = served(&world);
    assert_eq!(before.0, owner.account);

    // An account with no proof is refused as unproven: it does not learn the domain is held.
    let private = root("private root");
    let stranger_cert = import_from(&world, stranger, &private, &[DOMAIN], KeyAlgorithm::EcdsaP256);
    let attempt =
        world.services.create_domain_configuration(stranger, &definition("devices", DOMAIN, &[stranger_cert]));
    assert_eq!(outcome(attempt), "CertificateValidation");
    // An account that proves control too (allowed suffix, trusted certificate) is told the name
    // is taken, without the owner.
    for caller in [proven, stranger] {
        let theirs = import_for(&world, caller, &[DOMAIN], KeyAlgorithm::EcdsaP256);
        let error =
            world.services.create_domain_configuration(caller, &definition("takeover", DOMAIN, &[theirs])).unwrap_err();
        assert_eq!(error.kind(), "AlreadyExists");
        assert!(!error.to_string().contains(owner.account.as_str()), "{error}");
        assert!(custom_names(&world, caller).is_empty());
    }
    // Changing or deleting it by name works on the caller's own configurations only.
    let disable = DomainConfigurationUpdate { status: Some(DomainStatus::Disabled), ..Default::default() };
    for caller in [proven, stranger] {
        assert_eq!(outcome(world.services.update_domain_configuration(caller, "devices", &disable)), "NotFound");
        assert_eq!(outcome(world.services.delete_domain_configuration(caller, "devices")), "NotFound");
        assert_eq!(outcome(world.services.describe_domain_configuration(caller, "devices")), "NotFound");
    }
    assert_eq!(world.services.describe_domain_configuration(owner, "devices").unwrap(), created);
    assert_eq!(served(&world), before);

    // Once the owner lets it go, an unproven account still cannot take it.
    world.services.delete_domain_configuration(owner, "devices").unwrap();
    let stranger_cert = import_from(&world, stranger, &private, &[DOMAIN], KeyAlgorithm::EcdsaP256);
    let attempt =
        world.services.create_domain_configuration(stranger, &definition("devices", DOMAIN, &[stranger_cert]));
    assert_eq!(outcome(attempt), "CertificateValidation");
    assert_eq!(world.services.resolve_endpoint(DOMAIN).unwrap(), None);
}
