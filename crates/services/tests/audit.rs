//! Audits through the typed services on a real SQLite registry: each check on a small world
//! (the manual clock makes certificates expire), the bad inputs (each refused with its error and
//! leaving nothing behind), cancellation, tenancy, and a scheduled audit surviving a restart.

use std::collections::BTreeMap;
use std::sync::Arc;

use certfleet_pki::{Certificate, CertificateId, GeneratedKeyPair, Issuer, KeyAlgorithm};
use certfleet_registry::*;
use certfleet_services::*;
use certfleet_testkit::{START, TempDir, World, outcome, world};
use time::{Duration, OffsetDateTime};

fn root(name: &str, validity: Duration) -> Issuer {
    Issuer::generate_root(name, "test", validity, KeyAlgorithm::EcdsaP256, START).unwrap()
}

fn leaf(ca: &Issuer, validity: Duration) -> Certificate {
    let key = GeneratedKeyPair::generate(KeyAlgorithm::EcdsaP256).unwrap();
    ca.issue_for_key(key.public_key(), "device", validity, START).unwrap()
}

fn register_ca(world: &World, caller: &Caller, ca: &Issuer) -> CertificateId {
    let code = world.services.get_registration_code(caller).unwrap();
    let key = GeneratedKeyPair::generate(KeyAlgorithm::EcdsaP256).unwrap();
    let verification = ca.issue_for_key(key.public_key(), &code, Duration::days(1), START).unwrap();
    let request = CaRegistration {
        ca_certificate_pem: ca.certificate().to_pem(),
        verification_certificate_pem: Some(verification.to_pem()),
        set_as_active: true,
        ..Default::default()
    };
    world.services.register_ca_certificate(caller, &request).unwrap().1
}

fn register_device(world: &World, caller: &Caller, certificate: &Certificate) -> CertificateId {
    let request = CertificateRegistration {
        certificate_pem: certificate.to_pem(),
        ca_certificate_pem: None,
        status: Some(CertificateStatus::Active),
        set_as_active: false,
    };
    world.services.register_certificate(caller, &request).unwrap().id
}

fn enable(world: &World, caller: &Caller, checks: &[(&str, &[(&str, &str)])]) {
    let update = AuditConfigurationUpdate {
        role_arn: Some("arn:aws:iam::123456789012:role/audit".into()),
        targets: BTreeMap::new(),
        checks: checks
            .iter()
            .map(|(name, settings)| {
                let configuration =
                    settings.iter().map(|(key, value)| ((*key).to_owned(), (*value).to_owned())).collect();
                ((*name).to_owned(), AuditCheckConfiguration { enabled: true, configuration })
            })
            .collect(),
    };
    world.services.update_account_audit_configuration(caller, &update).unwrap();
}

/// Starts and runs an audit of `check`; returns its run and its findings as
/// `(resource type, resource key, reason code)`.
fn audit(world: &World, caller: &Caller, check: &str) -> (AuditCheckRun, Vec<(String, String, String)>) {
    let id = world.services.start_on_demand_audit_task(caller, &[check.to_owned()]).unwrap();
    let (task, _) = world.services.describe_audit_task(caller, &id).unwrap();
    let summary = world.services.run_audit_task(&task, Duration::minutes(5)).unwrap().expect("the task ran");
    assert_eq!(summary.task.status, AuditTaskStatus::Completed);
    let filter = AuditFindingFilter { task_id: Some(id), ..Default::default() };
    let findings = world.services.list_audit_findings(caller, &filter, None, 250).unwrap().items;
    let mut found: Vec<_> = findings
        .iter()
        .map(|finding| {
            assert_eq!(finding.check_name, check);
            (finding.resource.id.resource_type().to_owned(), finding.resource.id.key(), finding.reason_code.clone())
        })
        .collect();
    found.sort();
    (summary.checks.into_iter().next().unwrap(), found)
}

fn device(id: &CertificateId, code: &str) -> (String, String, String) {
    ("DEVICE_CERTIFICATE".into(), id.to_string(), code.into())
}

#[test]
fn device_certificates_expiring_with_the_default_and_a_configured_threshold() {
    let world = world();
    let caller = world.caller();
    let ca = root("expiring root", Duration::days(3650));
    register_ca(&world, &caller, &ca);
    let short = register_device(&world, &caller, &leaf(&ca, Duration::days(20)));
    let medium = register_device(&world, &caller, &leaf(&ca, Duration::days(50)));
    let long = register_device(&world, &caller, &leaf(&ca, Duration::days(400)));
    enable(&world, &caller, &[("DEVICE_CERTIFICATE_EXPIRING_CHECK", &[])]);
    let (run, found) = audit(&world, &caller, "DEVICE_CERTIFICATE_EXPIRING_CHECK");
    assert_eq!(found, [device(&short, "CERTIFICATE_APPROACHING_EXPIRATION")]);
    assert_eq!(
        (run.status, run.total_resources, run.non_compliant_resources),
        (AuditCheckRunStatus::CompletedNonCompliant, 3, 1)
    );

    enable(&world, &caller, &[("DEVICE_CERTIFICATE_EXPIRING_CHECK", &[("CERT_EXPIRATION_THRESHOLD_IN_DAYS", "60")])]);
    world.clock.advance(Duration::days(25));
    let (_, mut found) = audit(&world, &caller, "DEVICE_CERTIFICATE_EXPIRING_CHECK");
    let mut expected =
        vec![device(&short, "CERTIFICATE_PAST_EXPIRATION"), device(&medium, "CERTIFICATE_APPROACHING_EXPIRATION")];
    expected.sort();
    found.sort();
    assert_eq!(found, expected);
    let _ = long;
}

#[test]
fn ca_certificates_expiring() {
    let world = world();
    let caller = world.caller();
    let soon = register_ca(&world, &caller, &root("soon", Duration::days(20)));
    register_ca(&world, &caller, &root("later", Duration::days(365)));
    enable(&world, &caller, &[("CA_CERTIFICATE_EXPIRING_CHECK", &[])]);
    let (run, found) = audit(&world, &caller, "CA_CERTIFICATE_EXPIRING_CHECK");
    assert_eq!(
        found,
        [("CA_CERTIFICATE".to_owned(), soon.to_string(), "CERTIFICATE_APPROACHING_EXPIRATION".to_owned())]
    );
    assert_eq!(run.total_resources, 2);
}

#[test]
fn device_certificate_age() {
    let world = world();
    let caller = world.caller();
    let ca = root("age root", Duration::days(3650));
    register_ca(&world, &caller, &ca);
    let old = register_device(&world, &caller, &leaf(&ca, Duration::days(2000)));
    world.clock.advance(Duration::days(100));
    register_device(&world, &caller, &leaf(&ca, Duration::days(2000)));
    world.clock.advance(Duration::days(300));
    enable(&world, &caller, &[("DEVICE_CERTIFICATE_AGE_CHECK", &[])]);
    let (_, found) = audit(&world, &caller, "DEVICE_CERTIFICATE_AGE_CHECK");
    assert_eq!(found, [device(&old, "CERTIFICATE_PAST_AGE_THRESHOLD")]);
    enable(&world, &caller, &[("DEVICE_CERTIFICATE_AGE_CHECK", &[("CERT_AGE_THRESHOLD_IN_DAYS", "500")])]);
    assert_eq!(audit(&world, &caller, "DEVICE_CERTIFICATE_AGE_CHECK").1, []);
}

#[test]
fn key_quality_passes_keys_certfleet_accepts() {
    let world = world();
    let caller = world.caller();
    let ca = root("key root", Duration::days(3650));
    register_ca(&world, &caller, &ca);
    register_device(&world, &caller, &leaf(&ca, Duration::days(100)));
    enable(
        &world,
        &caller,
        &[("DEVICE_CERTIFICATE_KEY_QUALITY_CHECK", &[]), ("CA_CERTIFICATE_KEY_QUALITY_CHECK", &[])],
    );
    let (run, found) = audit(&world, &caller, "DEVICE_CERTIFICATE_KEY_QUALITY_CHECK");
    assert_eq!((run.status, run.total_resources, found.len()), (AuditCheckRunStatus::CompletedCompliant, 1, 0));
    let (run, found) = audit(&world, &caller, "CA_CERTIFICATE_KEY_QUALITY_CHECK");
    assert_eq!((run.status, run.total_resources, found.len()), (AuditCheckRunStatus::CompletedCompliant, 1, 0));
}

fn connection(
    caller: &Caller,
    session: &str,
    certificate: &CertificateId,
    client: &str,
    from: i64,
    to: Option<i64>,
    reason: Option<&str>,
) -> ConnectionRecord {
    let at = |minutes: i64| START + Duration::minutes(minutes);
    ConnectionRecord {
        session_id: session.into(),
        account: caller.account.clone(),
        certificate_id: certificate.clone(),
        client_id: client.into(),
        connected_at: at(from),
        disconnected_at: to.map(at),
        disconnect_reason: reason.map(str::to_owned),
        via: certfleet_registry::ConnectionVia::default(),
    }
}

#[test]
fn shared_certificates_and_conflicting_client_ids_from_the_connection_history() {
    let world = world();
    let caller = world.caller();
    let ca = root("history root", Duration::days(3650));
    register_ca(&world, &caller, &ca);
    let shared = register_device(&world, &caller, &leaf(&ca, Duration::days(100)));
    let alone = register_device(&world, &caller, &leaf(&ca, Duration::days(100)));
    let thief = register_device(&world, &caller, &leaf(&ca, Duration::days(100)));
    for record in [
        // `shared` is used by two client IDs at once.
        connection(&caller, "s1", &shared, "lamp-1", 0, Some(60), None),
        connection(&caller, "s2", &shared, "lamp-2", 30, Some(90), None),
        // `alone` reconnects with another client ID, never at once.
        connection(&caller, "s3", &alone, "door-1", 0, Some(10), None),
        connection(&caller, "s4", &alone, "door-2", 20, Some(30), None),
        // `meter` is taken over by another certificate.
        connection(&caller, "s5", &alone, "meter", 100, Some(110), Some("DUPLICATE_CLIENTID")),
        connection(&caller, "s6", &thief, "meter", 110, None, None),
    ] {
        world.services.record_connection_events(&[ConnectionEvent::Connected(record)]).unwrap();
    }
    world.clock.advance(Duration::hours(3));
    enable(&world, &caller, &[("DEVICE_CERTIFICATE_SHARED_CHECK", &[]), ("CONFLICTING_CLIENT_IDS_CHECK", &[])]);
    let (run, found) = audit(&world, &caller, "DEVICE_CERTIFICATE_SHARED_CHECK");
    assert_eq!(found, [device(&shared, "CERTIFICATE_SHARED_BY_MULTIPLE_DEVICES")]);
    assert_eq!(run.total_resources, 3);
    let finding = &world
        .services
        .list_audit_findings(
            &caller,
            &AuditFindingFilter {
                start: Some(START),
                end: Some(world.services.now()),
                check_name: Some("DEVICE_CERTIFICATE_SHARED_CHECK".into()),
                ..Default::default()
            },
            None,
            10,
        )
        .unwrap()
        .items[0];
    let related: Vec<_> = finding
        .related
        .iter()
        .map(|resource| (resource.id.key(), resource.additional_info.get("CONNECTION_TIME").cloned()))
        .collect();
    let millis = |minutes: i64| Some(((START + Duration::minutes(minutes)).unix_timestamp() * 1000).to_string());
    assert_eq!(related, [("lamp-1".to_owned(), millis(0)), ("lamp-2".to_owned(), millis(30))]);
    let (_, found) = audit(&world, &caller, "CONFLICTING_CLIENT_IDS_CHECK");
    assert_eq!(
        found,
        [("CLIENT_ID".to_owned(), "meter".to_owned(), "DUPLICATE_CLIENT_ID_ACROSS_CONNECTIONS".to_owned())]
    );
}

/// The gateway writes the history in batches: a session opened and closed within one batch is
/// one closed row, a session opened in an earlier batch is closed by the later one.
#[test]
fn connection_history_batches() {
    let world = world();
    let caller = world.caller();
    let ca = root("batch root", Duration::days(3650));
    register_ca(&world, &caller, &ca);
    let device = register_device(&world, &caller, &leaf(&ca, Duration::days(100)));
    let at = |minutes: i64| START + Duration::minutes(minutes);
    let closed = |session: &str, minutes: i64| ConnectionEvent::Disconnected {
        session_id: session.into(),
        at: at(minutes),
        reason: "CLIENT_INITIATED_DISCONNECT".into(),
    };
    let first = [
        ConnectionEvent::Connected(connection(&caller, "b1", &device, "lamp", 0, None, None)),
        ConnectionEvent::Connected(connection(&caller, "b2", &device, "lamp", 2, None, None)),
        closed("b1", 1),
    ];
    world.services.record_connection_events(&first).unwrap();
    world.services.record_connection_events(&[closed("b2", 3)]).unwrap();
    let mut history = world.services.connection_history(&caller.account, Some(&device), START).unwrap();
    history.sort_by(|a, b| a.session_id.cmp(&b.session_id));
    let rows: Vec<_> = history
        .iter()
        .map(|row| (row.session_id.as_str(), row.disconnected_at, row.disconnect_reason.as_deref()))
        .collect();
    assert_eq!(
        rows,
        [
            ("b1", Some(at(1)), Some("CLIENT_INITIATED_DISCONNECT")),
            ("b2", Some(at(3)), Some("CLIENT_INITIATED_DISCONNECT"))
        ]
    );
    // A batch that cannot be written (a session ID used twice) writes nothing.
    let duplicate = [
        ConnectionEvent::Connected(connection(&caller, "b3", &device, "lamp", 4, None, None)),
        ConnectionEvent::Connected(connection(&caller, "b1", &device, "lamp", 5, None, None)),
    ];
    assert!(world.services.record_connection_events(&duplicate).is_err());
    assert_eq!(world.services.connection_history(&caller.account, Some(&device), START).unwrap().len(), 2);
}

#[test]
fn revoked_certificates_still_active_from_uploaded_crls() {
    let world = world();
    let caller = world.caller();
    let ca = root("crl root", Duration::days(3650));
    let ca_id = register_ca(&world, &caller, &ca);
    let revoked_certificate = leaf(&ca, Duration::days(100));
    let revoked = register_device(&world, &caller, &revoked_certificate);
    register_device(&world, &caller, &leaf(&ca, Duration::days(100)));
    // A list signed by another key with the same issuer name is refused.
    let impostor = root("crl root", Duration::days(3650));
    let forged = impostor.issue_crl(&[&revoked_certificate], START).unwrap();
    assert_eq!(outcome(world.services.put_crl(&caller, "root", forged.der())), "InvalidRequest");
    assert_eq!(outcome(world.services.put_crl(&caller, "root", b"garbage")), "InvalidRequest");
    assert!(world.services.list_crls(&caller).unwrap().is_empty());

    let crl = ca.issue_crl(&[&revoked_certificate], START).unwrap();
    let stored =
        world.services.put_crl(&caller, "root", certfleet_pki::pem_encode("X509 CRL", crl.der()).as_bytes()).unwrap();
    assert_eq!(stored.issuer_ca, Some(ca_id));
    enable(
        &world,
        &caller,
        &[("REVOKED_DEVICE_CERTIFICATE_STILL_ACTIVE_CHECK", &[]), ("REVOKED_CA_CERTIFICATE_STILL_ACTIVE_CHECK", &[])],
    );
    let (run, found) = audit(&world, &caller, "REVOKED_DEVICE_CERTIFICATE_STILL_ACTIVE_CHECK");
    assert_eq!(found, [device(&revoked, "CERTIFICATE_REVOKED_BY_ISSUER")]);
    assert_eq!(run.total_resources, 2);
    assert_eq!(audit(&world, &caller, "REVOKED_CA_CERTIFICATE_STILL_ACTIVE_CHECK").1, []);

    // Revoked in the registry too: compliant.
    world.services.update_certificate(&caller, &revoked, CertificateStatus::Revoked).unwrap();
    assert_eq!(audit(&world, &caller, "REVOKED_DEVICE_CERTIFICATE_STILL_ACTIVE_CHECK").1, []);
    world.services.delete_crl(&caller, "root").unwrap();
    assert_eq!(outcome(world.services.delete_crl(&caller, "root")), "NotFound");
}

#[test]
fn overly_permissive_policies() {
    let world = world();
    let caller = world.caller();
    let open = r#"{"Version":"2012-10-17","Statement":[{"Effect":"Allow","Action":"iot:*","Resource":"*"}]}"#;
    let scoped = r#"{"Version":"2012-10-17","Statement":[{"Effect":"Allow","Action":"iot:Connect","Resource":"arn:aws:iot:us-east-1:123456789012:client/${iot:Connection.Thing.ThingName}"}]}"#;
    world.services.create_policy(&caller, &PolicyName::parse("open").unwrap(), open, &[]).unwrap();
    world.services.create_policy(&caller, &PolicyName::parse("scoped").unwrap(), scoped, &[]).unwrap();
    enable(&world, &caller, &[("IOT_POLICY_OVERLY_PERMISSIVE_CHECK", &[])]);
    let (run, found) = audit(&world, &caller, "IOT_POLICY_OVERLY_PERMISSIVE_CHECK");
    assert_eq!(
        found,
        [("IOT_POLICY".to_owned(), "open\t1".to_owned(), "ALLOWS_BROAD_ACCESS_TO_IOT_DATA_PLANE_ACTIONS".to_owned())]
    );
    assert_eq!(run.total_resources, 2);
}

/// Everything an account's audits left in the registry, to show a refusal changed nothing.
fn audit_state(world: &World, caller: &Caller) -> String {
    let config = world.services.describe_account_audit_configuration(caller).unwrap();
    let tasks = world
        .services
        .list_audit_tasks(
            caller,
            &AuditTaskFilter { start: START, end: world.services.now(), task_type: None, status: None },
            None,
            250,
        )
        .unwrap();
    let schedules = world.services.list_scheduled_audits(caller, None, 250).unwrap();
    format!("{config:?} {tasks:?} {schedules:?}")
}

/// A check's name, whether it is enabled, and its settings.
type CheckSetting<'a> = (&'a str, bool, &'a [(&'a str, &'a str)]);

#[test]
fn bad_inputs_are_refused_and_change_nothing() {
    let world = world();
    let caller = world.caller();
    let services = &world.services;
    let names = |list: &[&str]| list.iter().map(|name| (*name).to_owned()).collect::<Vec<_>>();
    let update = |checks: &[CheckSetting<'_>], role: Option<&str>| AuditConfigurationUpdate {
        role_arn: role.map(str::to_owned),
        targets: BTreeMap::new(),
        checks: checks
            .iter()
            .map(|(name, enabled, settings)| {
                let configuration = settings.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect();
                ((*name).to_owned(), AuditCheckConfiguration { enabled: *enabled, configuration })
            })
            .collect(),
    };
    let role = Some("arn:aws:iam::123456789012:role/audit");
    // The first configuration needs a role and an enabled check.
    let before = audit_state(&world, &caller);
    for (request, expected) in [
        (update(&[("CA_CERTIFICATE_EXPIRING_CHECK", true, &[])], None), "InvalidRequest"),
        (update(&[("CA_CERTIFICATE_EXPIRING_CHECK", false, &[])], role), "InvalidRequest"),
        (update(&[("NO_SUCH_CHECK", true, &[])], role), "InvalidRequest"),
        (update(&[("LOGGING_DISABLED_CHECK", true, &[])], role), "InvalidRequest"),
        (
            update(&[("DEVICE_CERTIFICATE_EXPIRING_CHECK", true, &[("CERT_EXPIRATION_THRESHOLD_IN_DAYS", "5")])], role),
            "InvalidRequest",
        ),
        (
            update(&[("DEVICE_CERTIFICATE_EXPIRING_CHECK", true, &[("CERT_EXPIRATION_THRESHOLD_IN_DAYS", "x")])], role),
            "InvalidRequest",
        ),
        (
            update(&[("DEVICE_CERTIFICATE_EXPIRING_CHECK", true, &[("CERT_AGE_THRESHOLD_IN_DAYS", "60")])], role),
            "InvalidRequest",
        ),
    ] {
        assert_eq!(outcome(services.update_account_audit_configuration(&caller, &request)), expected, "{request:?}");
    }
    assert_eq!(audit_state(&world, &caller), before);
    assert_eq!(outcome(services.delete_account_audit_configuration(&caller, false)), "NotFound");

    services
        .update_account_audit_configuration(&caller, &update(&[("CA_CERTIFICATE_EXPIRING_CHECK", true, &[])], role))
        .unwrap();
    let daily = ScheduledAuditDefinition {
        frequency: AuditFrequency::Daily,
        day_of_month: None,
        day_of_week: None,
        check_names: names(&["CA_CERTIFICATE_EXPIRING_CHECK"]),
        tags: vec![],
    };
    services.create_scheduled_audit(&caller, "daily", &daily).unwrap();
    let before = audit_state(&world, &caller);
    let definition = |frequency, month: Option<&str>, week: Option<&str>, checks: &[&str]| ScheduledAuditDefinition {
        frequency,
        day_of_month: month.map(str::to_owned),
        day_of_week: week.map(str::to_owned),
        check_names: names(checks),
        tags: vec![],
    };
    let ca = ["CA_CERTIFICATE_EXPIRING_CHECK"];
    for (name, request, expected) in [
        ("daily", daily.clone(), "AlreadyExists"),
        ("weekly", definition(AuditFrequency::Weekly, None, None, &ca), "InvalidRequest"),
        ("weekly", definition(AuditFrequency::Weekly, None, Some("FUNDAY"), &ca), "InvalidRequest"),
        ("monthly", definition(AuditFrequency::Monthly, None, None, &ca), "InvalidRequest"),
        ("monthly", definition(AuditFrequency::Monthly, Some("32"), None, &ca), "InvalidRequest"),
        (
            "disabled",
            definition(AuditFrequency::Daily, None, None, &["DEVICE_CERTIFICATE_EXPIRING_CHECK"]),
            "InvalidRequest",
        ),
        ("unknown", definition(AuditFrequency::Daily, None, None, &["NO_SUCH_CHECK"]), "InvalidRequest"),
        ("empty", definition(AuditFrequency::Daily, None, None, &[]), "InvalidRequest"),
        ("bad name!", definition(AuditFrequency::Daily, None, None, &ca), "InvalidRequest"),
    ] {
        assert_eq!(outcome(services.create_scheduled_audit(&caller, name, &request)), expected, "{name}");
    }
    for (checks, expected) in [
        (names(&["NO_SUCH_CHECK"]), "InvalidRequest"),
        (names(&["DEVICE_CERTIFICATE_EXPIRING_CHECK"]), "InvalidRequest"),
        (names(&[]), "InvalidRequest"),
        (names(&["CA_CERTIFICATE_EXPIRING_CHECK", "CA_CERTIFICATE_EXPIRING_CHECK"]), "InvalidRequest"),
    ] {
        assert_eq!(outcome(services.start_on_demand_audit_task(&caller, &checks)), expected, "{checks:?}");
    }
    // A check a scheduled audit uses cannot be disabled.
    assert_eq!(
        outcome(services.update_account_audit_configuration(
            &caller,
            &update(&[("CA_CERTIFICATE_EXPIRING_CHECK", false, &[])], None)
        )),
        "InvalidRequest"
    );
    assert_eq!(
        outcome(services.update_scheduled_audit(
            &caller,
            "daily",
            &ScheduledAuditUpdate { frequency: Some(AuditFrequency::Weekly), ..Default::default() }
        )),
        "InvalidRequest"
    );
    assert_eq!(outcome(services.update_scheduled_audit(&caller, "nope", &ScheduledAuditUpdate::default())), "NotFound");
    assert_eq!(outcome(services.delete_account_audit_configuration(&caller, false)), "InvalidRequest");
    for result in [
        services.describe_audit_task(&caller, "0123456789abcdef0123456789abcdef").map(drop),
        services.cancel_audit_task(&caller, "0123456789abcdef0123456789abcdef"),
        services.describe_audit_finding(&caller, "nope").map(drop),
        services.describe_scheduled_audit(&caller, "nope").map(drop),
        services.delete_scheduled_audit(&caller, "nope"),
    ] {
        assert_eq!(outcome(result), "NotFound");
    }
    let by_both =
        AuditFindingFilter { task_id: Some("t".into()), start: Some(START), end: Some(START), ..Default::default() };
    assert_eq!(outcome(services.list_audit_findings(&caller, &by_both, None, 10)), "InvalidRequest");
    assert_eq!(
        outcome(services.list_audit_findings(&caller, &AuditFindingFilter::default(), None, 10)),
        "InvalidRequest"
    );
    assert_eq!(audit_state(&world, &caller), before);

    // Another account sees none of it.
    let stranger = world.caller();
    assert_eq!(outcome(services.describe_scheduled_audit(&stranger, "daily")), "NotFound");
    assert_eq!(outcome(services.start_on_demand_audit_task(&stranger, &names(&ca))), "InvalidRequest");
    services.delete_account_audit_configuration(&caller, true).unwrap();
    assert_eq!(outcome(services.describe_scheduled_audit(&caller, "daily")), "NotFound");
}

#[test]
fn a_canceled_task_stops_and_other_accounts_cannot_see_it() {
    let world = world();
    let caller = world.caller();
    enable(&world, &caller, &[("CA_CERTIFICATE_EXPIRING_CHECK", &[])]);
    let id = world.services.start_on_demand_audit_task(&caller, &["CA_CERTIFICATE_EXPIRING_CHECK".into()]).unwrap();
    let stranger = world.caller();
    assert_eq!(outcome(world.services.describe_audit_task(&stranger, &id)), "NotFound");
    assert_eq!(outcome(world.services.cancel_audit_task(&stranger, &id)), "NotFound");
    world.services.cancel_audit_task(&caller, &id).unwrap();
    assert_eq!(outcome(world.services.cancel_audit_task(&caller, &id)), "InvalidRequest");
    let (task, runs) = world.services.describe_audit_task(&caller, &id).unwrap();
    assert_eq!(task.status, AuditTaskStatus::Canceled);
    assert_eq!(runs[0].status, AuditCheckRunStatus::Canceled);
    assert!(world.services.runnable_audit_tasks(10).unwrap().is_empty());
    assert!(world.services.run_audit_task(&task, Duration::minutes(1)).unwrap().is_none());
}

#[test]
fn a_task_is_run_by_one_worker_and_taken_over_when_its_lease_expires() {
    let world = world();
    let caller = world.caller();
    enable(&world, &caller, &[("CA_CERTIFICATE_EXPIRING_CHECK", &[])]);
    let id = world.services.start_on_demand_audit_task(&caller, &["CA_CERTIFICATE_EXPIRING_CHECK".into()]).unwrap();
    let task = world.services.runnable_audit_tasks(10).unwrap().remove(0);
    assert_eq!(task.id, id);
    // Another worker holds the lease.
    registry_claim(&world, &task);
    assert!(world.services.run_audit_task(&task, Duration::minutes(1)).unwrap().is_none());
    assert!(world.services.runnable_audit_tasks(10).unwrap().is_empty());
    world.clock.advance(Duration::minutes(6));
    let summary = world.services.run_audit_task(&task, Duration::minutes(1)).unwrap().unwrap();
    assert_eq!(summary.task.status, AuditTaskStatus::Completed);
    assert_eq!(summary.checks[0].status, AuditCheckRunStatus::CompletedCompliant);
}

fn registry_claim(world: &World, task: &AuditTask) {
    let now = world.services.now();
    assert!(
        write(world.services.store(), |tx| tx.claim_audit_task(
            &task.account,
            &task.id,
            now,
            None,
            now + Duration::minutes(5)
        ))
        .unwrap()
    );
}

fn services_at(dir: &TempDir, now: OffsetDateTime) -> (Arc<Services>, Arc<ManualClock>) {
    let store = Arc::new(SqliteStore::open(&dir.path().join("registry.db")).unwrap());
    let clock = Arc::new(ManualClock::new(now));
    (Arc::new(Services::new(store, clock.clone(), Config::default(), None)), clock)
}

#[test]
fn a_scheduled_audit_survives_a_restart_and_runs_once() {
    let dir = TempDir::new("audit-restart");
    let (services, _) = services_at(&dir, START + Duration::hours(10));
    let caller = Caller { account: services.create_account().unwrap().id };
    services
        .update_account_audit_configuration(
            &caller,
            &AuditConfigurationUpdate {
                role_arn: Some("arn:aws:iam::123456789012:role/audit".into()),
                targets: BTreeMap::new(),
                checks: BTreeMap::from([(
                    "CA_CERTIFICATE_EXPIRING_CHECK".to_owned(),
                    AuditCheckConfiguration { enabled: true, configuration: BTreeMap::new() },
                )]),
            },
        )
        .unwrap();
    let created = services
        .create_scheduled_audit(
            &caller,
            "weekly",
            &ScheduledAuditDefinition {
                frequency: AuditFrequency::Weekly,
                day_of_month: None,
                day_of_week: Some("WED".into()),
                check_names: vec!["CA_CERTIFICATE_EXPIRING_CHECK".into()],
                tags: vec![],
            },
        )
        .unwrap();
    // 2026-06-01 is a Monday: the first run is Wednesday 00:00 UTC.
    assert_eq!(created.next_run_at, START + Duration::days(2));
    assert!(services.start_due_scheduled_audits(10).unwrap().is_empty());
    drop(services);

    // Restarted after the due time: two nodes over the same database; one of them runs it.
    let (first, _) = services_at(&dir, START + Duration::days(2) + Duration::hours(1));
    let (second, _) = services_at(&dir, START + Duration::days(2) + Duration::hours(1));
    let started = first.start_due_scheduled_audits(10).unwrap();
    assert_eq!(started.len(), 1);
    assert!(second.start_due_scheduled_audits(10).unwrap().is_empty());
    let task = &started[0];
    assert_eq!((task.task_type, task.scheduled_audit_name.as_deref()), (AuditTaskType::Scheduled, Some("weekly")));
    assert_eq!(first.describe_scheduled_audit(&caller, "weekly").unwrap().next_run_at, START + Duration::days(9));
    let summary = second.run_audit_task(task, Duration::minutes(5)).unwrap().unwrap();
    assert_eq!(summary.task.status, AuditTaskStatus::Completed);
}

#[test]
fn results_older_than_ninety_days_are_pruned() {
    let world = world();
    let caller = world.caller();
    enable(&world, &caller, &[("CA_CERTIFICATE_EXPIRING_CHECK", &[])]);
    let old = world.services.start_on_demand_audit_task(&caller, &["CA_CERTIFICATE_EXPIRING_CHECK".into()]).unwrap();
    world.clock.advance(Duration::days(60));
    let recent = world.services.start_on_demand_audit_task(&caller, &["CA_CERTIFICATE_EXPIRING_CHECK".into()]).unwrap();
    world.clock.advance(Duration::days(31));
    assert_eq!(world.services.prune_audit_results().unwrap(), 1);
    assert_eq!(outcome(world.services.describe_audit_task(&caller, &old)), "NotFound");
    assert_eq!(outcome(world.services.describe_audit_task(&caller, &recent)), "ok");
}
