//! Certificate rotation through the typed services on a real SQLite registry, with devices
//! simulated by rcgen keys and CSRs: the happy path to retired, duplicates, reordering, refused
//! keys, device errors, the timeout sweep, retries, a crash (services and store dropped and
//! reopened) between every step, and a 10,000-certificate campaign. After each scenario every
//! ACTIVE certificate is the one a device holds, and every device holds an ACTIVE one.

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use certfleet_pki::{CertificateId, Issuer, KeyAlgorithm};
use certfleet_registry::*;
use certfleet_services::*;
use certfleet_testkit::{START, TempDir, outcome};
use serde_json::json;
use time::Duration;

const POLICY: &str =
    r#"{"Version":"2012-10-17","Statement":[{"Effect":"Allow","Action":"iot:Connect","Resource":"*"}]}"#;

/// A registry on disk that can be reopened, with services over it.
struct Fleet {
    path: PathBuf,
    _dir: TempDir,
    issuer_parts: (certfleet_pki::Certificate, Vec<u8>),
    clock: Arc<ManualClock>,
    config: Config,
    services: Arc<Services>,
    caller: Caller,
}

/// A simulated device: its client ID, the key and certificate it uses, the key it is rotating to.
struct Device {
    client_id: String,
    key: rcgen::KeyPair,
    certificate: CertificateId,
    pending: Option<rcgen::KeyPair>,
}

fn fleet(rotation: RotationConfig) -> Fleet {
    let dir = TempDir::new("rotation");
    let path = dir.path().join("registry.db");
    let issuer =
        Issuer::generate_root("test device root", "certfleet", Duration::days(3650), KeyAlgorithm::EcdsaP256, START)
            .unwrap();
    let issuer_parts = (issuer.certificate().clone(), issuer.private_key_pkcs8_der().to_vec());
    let clock = Arc::new(ManualClock::new(START));
    let config = Config { rotation, ..Config::default() };
    let services = open(&path, &issuer_parts, &clock, &config);
    let caller = Caller { account: services.create_account().unwrap().id };
    services.create_policy(&caller, &PolicyName::parse("device").unwrap(), POLICY, &[]).unwrap();
    Fleet { path, _dir: dir, issuer_parts, clock, config, services, caller }
}

fn open(
    path: &std::path::Path,
    issuer: &(certfleet_pki::Certificate, Vec<u8>),
    clock: &Arc<ManualClock>,
    config: &Config,
) -> Arc<Services> {
    let store = Arc::new(SqliteStore::open(path).unwrap());
    let issuer = Issuer::from_parts(issuer.0.clone(), &issuer.1).unwrap();
    Arc::new(Services::new(store, clock.clone(), config.clone(), Some(issuer)))
}

impl Fleet {
    /// Drops the services and the store (a crash) and opens them again.
    fn crash(&mut self) {
        self.services = open(&self.path, &self.issuer_parts, &self.clock, &self.config);
    }

    /// A device with an ACTIVE certificate (policy `device`, thing named after the client ID)
    /// that has connected once.
    fn device(&self, client_id: &str) -> Device {
        let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let certificate = self.services.create_certificate_from_csr(&self.caller, &csr(&key, client_id), true).unwrap();
        let arn = self.services.certificate_arn(&self.caller.account, &certificate.id);
        self.services.attach_policy(&self.caller, &PolicyName::parse("device").unwrap(), &arn).unwrap();
        let thing = ThingName::parse(client_id).unwrap();
        self.services.create_thing(&self.caller, &thing, &ThingDefinition::default()).unwrap();
        self.services.attach_thing_principal(&self.caller, &thing, &arn, ThingPrincipalType::NonExclusive).unwrap();
        self.connected(client_id, &certificate.id);
        Device { client_id: client_id.into(), key, certificate: certificate.id, pending: None }
    }

    fn connected(&self, client_id: &str, certificate: &CertificateId) {
        let record = ConnectionRecord {
            session_id: format!("{client_id}-{certificate}-{}", self.services.now().unix_timestamp_nanos()),
            account: self.caller.account.clone(),
            certificate_id: certificate.clone(),
            client_id: client_id.into(),
            connected_at: self.services.now(),
            disconnected_at: None,
            disconnect_reason: None,
            via: certfleet_registry::ConnectionVia::default(),
        };
        write(self.services.store(), |tx| tx.insert_connection(&record)).unwrap();
    }

    fn send(
        &self,
        device: &Device,
        principal: &CertificateId,
        topic: DeviceTopic,
        payload: serde_json::Value,
    ) -> RotationEffects {
        let effects = self.deliver(&device.client_id, principal, topic, payload).into_effects();
        for message in &effects.publish {
            assert_eq!(message.account, self.caller.account);
        }
        effects
    }

    /// A message on `client_id`'s topic from a session authenticated with `principal`.
    fn deliver(
        &self,
        client_id: &str,
        principal: &CertificateId,
        topic: DeviceTopic,
        payload: serde_json::Value,
    ) -> DeviceMessageOutcome {
        self.services.handle_device_message(&self.caller.account, client_id, principal, topic, &payload).unwrap()
    }

    /// The device answers a `csr_req`: a CSR for its pending key (made on the first request).
    fn csr_res(&self, device: &mut Device) -> RotationEffects {
        let key =
            device.pending.get_or_insert_with(|| rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap());
        let pem = csr(key, &device.client_id);
        let principal = device.certificate.clone();
        self.send(device, &principal, DeviceTopic::CsrRes, json!({ "clientid": device.client_id, "CSR": pem }))
    }

    /// The device installs the certificate of a `crt_req` and acknowledges from its session.
    fn install_and_ack(&self, device: &mut Device, crt_req: &OutgoingMessage) -> RotationEffects {
        let new_id = certificate_id_of(crt_req);
        device.key = device.pending.take().expect("a pending key");
        device.certificate = new_id.clone();
        self.connected(&device.client_id, &new_id);
        self.send(device, &new_id, DeviceTopic::CrtAck, json!({ "certificateId": new_id.as_str() }))
    }

    fn rotation_of(&self, device: &Device) -> Rotation {
        let filter = RotationFilter { client_id: Some(device.client_id.clone()), ..Default::default() };
        let mut all = self.services.list_rotations(&self.caller, &filter, None, 100).unwrap();
        all.sort_by_key(|rotation| rotation.created_at);
        all.pop().expect("a rotation")
    }

    fn status(&self, id: &CertificateId) -> Option<CertificateStatus> {
        read(self.services.store(), |tx| tx.get_certificate(&self.caller.account, id)).unwrap().map(|c| c.status)
    }

    /// Every ACTIVE certificate is held by a device, and every device holds an ACTIVE one with
    /// the device policy and its thing.
    fn check_invariants(&self, devices: &[&Device]) {
        let mut active = BTreeSet::new();
        let mut page = PageRequest { limit: 250, ascending: true, after: None };
        loop {
            let listed = self.services.list_certificates(&self.caller, &page).unwrap();
            for certificate in &listed.items {
                if certificate.status == CertificateStatus::Active {
                    active.insert(certificate.id.clone());
                }
            }
            match listed.next {
                Some(next) => page.after = Some(next),
                None => break,
            }
        }
        let held: BTreeSet<_> = devices.iter().map(|device| device.certificate.clone()).collect();
        assert_eq!(active, held, "ACTIVE certificates are exactly the ones devices hold");
        for device in devices {
            let (policies, things) = read(self.services.store(), |tx| {
                let policies = tx.certificate_policies(
                    &self.caller.account,
                    &device.certificate,
                    &KeyPageRequest { limit: 10, after: None },
                )?;
                let things = tx.certificate_things(&self.caller.account, &device.certificate)?;
                Ok::<_, certfleet_services::Error>((
                    policies.items.len(),
                    things.iter().map(|t| t.thing_name.to_string()).collect::<Vec<_>>(),
                ))
            })
            .unwrap();
            assert_eq!(policies, 1, "{}: the device policy", device.client_id);
            assert_eq!(things, vec![device.client_id.clone()], "{}: its thing", device.client_id);
        }
    }
}

fn csr(key: &rcgen::KeyPair, common_name: &str) -> String {
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    params.distinguished_name.push(rcgen::DnType::CommonName, common_name);
    params.serialize_request(key).unwrap().pem().unwrap()
}

fn certificate_id_of(message: &OutgoingMessage) -> CertificateId {
    let payload: serde_json::Value = serde_json::from_str(&message.payload).unwrap();
    CertificateId::parse(payload["certificateId"].as_str().unwrap()).unwrap()
}

fn topics(effects: &RotationEffects) -> Vec<String> {
    effects.publish.iter().map(|message| message.topic.clone()).collect()
}

#[test]
fn happy_path_with_duplicates_and_a_wrong_principal() {
    let fleet = fleet(RotationConfig::default());
    let mut device = fleet.device("sensor-1");
    let bystander = fleet.device("sensor-2");
    let old = device.certificate.clone();
    let campaign = fleet
        .services
        .start_rotation(&fleet.caller, std::slice::from_ref(&old), RotationSource::Manual, SubjectRule::KeepOld)
        .unwrap();
    assert_eq!(campaign.counts.get(&RotationState::Requested), Some(&1));

    let sent = fleet.services.sweep_rotations(fleet.services.now()).unwrap();
    assert_eq!(topics(&sent), vec!["management/topic/sensor-1/csr_req"]);
    assert_eq!(sent.publish[0].payload, "{}");

    let issued = fleet.csr_res(&mut device);
    assert_eq!(topics(&issued), vec!["management/topic/sensor-1/crt_req"]);
    let new_id = certificate_id_of(&issued.publish[0]);
    let payload: serde_json::Value = serde_json::from_str(&issued.publish[0].payload).unwrap();
    assert!(payload["certificatePem"].as_str().unwrap().starts_with("-----BEGIN CERTIFICATE-----"));
    assert_eq!(fleet.status(&new_id), Some(CertificateStatus::Active));
    assert_eq!(fleet.rotation_of(&device).state, RotationState::Issued);

    // A duplicated csr_res (same key) gets the same crt_req; no second certificate.
    assert_eq!(fleet.csr_res(&mut device), issued);
    // A CSR for another key while issued is ignored (the first key wins).
    let other_key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let other = fleet.send(&device, &old, DeviceTopic::CsrRes, json!({ "CSR": csr(&other_key, "sensor-1") }));
    assert_eq!(other, RotationEffects::default());
    assert_eq!(fleet.rotation_of(&device).new_certificate_id.as_ref(), Some(&new_id));
    // crt_ack from the old certificate's session is not proof of the new one.
    assert_eq!(fleet.send(&device, &old, DeviceTopic::CrtAck, json!({})), RotationEffects::default());
    assert_eq!(fleet.rotation_of(&device).state, RotationState::Issued);
    assert_eq!(fleet.status(&old), Some(CertificateStatus::Active));

    assert_eq!(fleet.install_and_ack(&mut device, &issued.publish[0]), RotationEffects::default());
    let rotation = fleet.rotation_of(&device);
    assert_eq!((rotation.state, rotation.new_certificate_id.as_ref()), (RotationState::Retired, Some(&new_id)));
    assert_eq!(fleet.status(&old), None, "the old certificate is deleted");
    // A duplicated crt_ack changes nothing.
    assert_eq!(fleet.send(&device, &new_id, DeviceTopic::CrtAck, json!({})), RotationEffects::default());
    fleet.check_invariants(&[&device, &bystander]);

    let summary = fleet.services.describe_rotation_campaign(&fleet.caller, &campaign.campaign.id).unwrap();
    assert_eq!(summary.counts.get(&RotationState::Retired), Some(&1));
    // Nothing is left to send.
    assert!(fleet.services.sweep_rotations(fleet.services.now() + Duration::hours(1)).unwrap().publish.is_empty());
}

#[test]
fn reordered_ack_before_issue_is_ignored() {
    let fleet = fleet(RotationConfig::default());
    let mut device = fleet.device("sensor-1");
    fleet
        .services
        .start_rotation(
            &fleet.caller,
            std::slice::from_ref(&device.certificate),
            RotationSource::Manual,
            SubjectRule::KeepOld,
        )
        .unwrap();
    fleet.services.sweep_rotations(fleet.services.now()).unwrap();
    let stranger = CertificateId::parse(&"ab".repeat(32)).unwrap();
    for principal in [device.certificate.clone(), stranger] {
        assert_eq!(fleet.send(&device, &principal, DeviceTopic::CrtAck, json!({})), RotationEffects::default());
    }
    assert_eq!(fleet.rotation_of(&device).state, RotationState::Requested);
    // A message from a client with no rotation is ignored too.
    let other = fleet.device("sensor-9");
    let old = other.certificate.clone();
    assert_eq!(fleet.send(&other, &old, DeviceTopic::CsrRes, json!({ "CSR": "x" })), RotationEffects::default());
    let issued = fleet.csr_res(&mut device);
    fleet.install_and_ack(&mut device, &issued.publish[0]);
    fleet.check_invariants(&[&device, &other]);
}

#[test]
fn refused_keys_fail_and_keep_the_old_certificate() {
    // An Ed25519 key is refused by the key rules (rcgen cannot make RSA-1024 or P-192 keys).
    let fleet = fleet(RotationConfig::default());
    let device = fleet.device("weak");
    let old = device.certificate.clone();
    fleet
        .services
        .start_rotation(&fleet.caller, std::slice::from_ref(&old), RotationSource::Manual, SubjectRule::KeepOld)
        .unwrap();
    fleet.services.sweep_rotations(fleet.services.now()).unwrap();
    let weak = rcgen::KeyPair::generate_for(&rcgen::PKCS_ED25519).unwrap();
    let effects = fleet.send(&device, &old, DeviceTopic::CsrRes, json!({ "CSR": csr(&weak, "weak") }));
    assert!(effects.publish.is_empty());
    assert_eq!(effects.alerts.len(), 1);
    let rotation = fleet.rotation_of(&device);
    assert_eq!(rotation.state, RotationState::Failed);
    assert!(rotation.error.as_deref().unwrap().starts_with("refused CSR"), "{:?}", rotation.error);
    assert_eq!(fleet.status(&old), Some(CertificateStatus::Active));
    fleet.check_invariants(&[&device]);

    // The old key again: refused by default...
    let reused = fleet.device("reuse");
    fleet
        .services
        .start_rotation(
            &fleet.caller,
            std::slice::from_ref(&reused.certificate),
            RotationSource::Manual,
            SubjectRule::KeepOld,
        )
        .unwrap();
    fleet.services.sweep_rotations(fleet.services.now()).unwrap();
    let effects =
        fleet.send(&reused, &reused.certificate, DeviceTopic::CsrRes, json!({ "CSR": csr(&reused.key, "reuse") }));
    assert!(effects.publish.is_empty());
    assert_eq!(fleet.rotation_of(&reused).error.as_deref(), Some("refused CSR: the key is the old certificate's"));
    fleet.check_invariants(&[&device, &reused]);

    // ...accepted when the operator allows it.
    let fleet = self::fleet(RotationConfig { danger_allow_key_reuse: true, ..Default::default() });
    let mut device = fleet.device("reuse");
    fleet
        .services
        .start_rotation(
            &fleet.caller,
            std::slice::from_ref(&device.certificate),
            RotationSource::Manual,
            SubjectRule::KeepOld,
        )
        .unwrap();
    fleet.services.sweep_rotations(fleet.services.now()).unwrap();
    device.pending = Some(rcgen::KeyPair::from_pem(&device.key.serialize_pem()).unwrap());
    let issued = fleet.csr_res(&mut device);
    assert_eq!(topics(&issued), vec!["management/topic/reuse/crt_req"]);
    fleet.install_and_ack(&mut device, &issued.publish[0]);
    fleet.check_invariants(&[&device]);
}

#[test]
fn device_error_fails_deletes_the_new_certificate_and_retry_starts_over() {
    let fleet = fleet(RotationConfig::default());
    let mut device = fleet.device("sensor-1");
    let old = device.certificate.clone();
    fleet
        .services
        .start_rotation(&fleet.caller, std::slice::from_ref(&old), RotationSource::Manual, SubjectRule::KeepOld)
        .unwrap();
    fleet.services.sweep_rotations(fleet.services.now()).unwrap();
    let issued = fleet.csr_res(&mut device);
    let new_id = certificate_id_of(&issued.publish[0]);
    device.pending = None; // the device threw its new key away
    let effects = fleet.send(&device, &old, DeviceTopic::CrtErr, json!({ "error": "certificate does not chain" }));
    assert_eq!(effects.alerts.len(), 1);
    let rotation = fleet.rotation_of(&device);
    assert_eq!(rotation.state, RotationState::Failed);
    assert_eq!(rotation.error.as_deref(), Some("device reported: certificate does not chain"));
    assert_eq!(fleet.status(&new_id), None, "the new certificate is deleted");
    assert_eq!(fleet.status(&old), Some(CertificateStatus::Active));
    // A duplicated crt_err is ignored.
    assert_eq!(fleet.send(&device, &old, DeviceTopic::CrtErr, json!({ "error": "again" })), RotationEffects::default());
    fleet.check_invariants(&[&device]);

    let retried = fleet.services.retry_rotation(&fleet.caller, &rotation.id).unwrap();
    assert_eq!(retried.state, RotationState::Requested);
    assert_eq!(outcome(fleet.services.retry_rotation(&fleet.caller, &rotation.id)), "InvalidRequest");
    assert_eq!(
        topics(&fleet.services.sweep_rotations(fleet.services.now()).unwrap()),
        vec!["management/topic/sensor-1/csr_req"]
    );
    let issued = fleet.csr_res(&mut device);
    fleet.install_and_ack(&mut device, &issued.publish[0]);
    assert_eq!(fleet.rotation_of(&device).state, RotationState::Retired);
    fleet.check_invariants(&[&device]);
}

#[test]
fn timeouts_resend_then_fail() {
    let timeout = Duration::minutes(10);
    let fleet = fleet(RotationConfig { response_timeout: timeout, max_attempts: 3, ..Default::default() });
    let silent = fleet.device("silent");
    let mut late = fleet.device("late");
    fleet
        .services
        .start_rotation(
            &fleet.caller,
            &[silent.certificate.clone(), late.certificate.clone()],
            RotationSource::Manual,
            SubjectRule::KeepOld,
        )
        .unwrap();
    assert_eq!(fleet.services.sweep_rotations(fleet.services.now()).unwrap().publish.len(), 2);
    // Nothing is due before the deadline.
    assert!(fleet.services.sweep_rotations(fleet.services.now() + Duration::minutes(9)).unwrap().publish.is_empty());
    fleet.clock.advance(timeout);
    let again = fleet.services.sweep_rotations(fleet.services.now()).unwrap();
    assert_eq!(again.publish.len(), 2, "csr_req sent again");
    // `late` answers now; its crt_req then goes unanswered.
    let issued = fleet.csr_res(&mut late);
    let new_id = certificate_id_of(&issued.publish[0]);
    fleet.clock.advance(timeout);
    let third = fleet.services.sweep_rotations(fleet.services.now()).unwrap();
    let mut sent = topics(&third);
    sent.sort();
    assert_eq!(sent, vec!["management/topic/late/crt_req", "management/topic/silent/csr_req"]);
    fleet.clock.advance(timeout);
    let fourth = fleet.services.sweep_rotations(fleet.services.now()).unwrap();
    assert_eq!(fourth.alerts.len(), 1, "silent: 3 attempts, timed out");
    assert_eq!(topics(&fourth), vec!["management/topic/late/crt_req"]);
    assert_eq!(fleet.rotation_of(&silent).error.as_deref(), Some("timed out"));
    fleet.clock.advance(timeout);
    fleet.clock.advance(timeout);
    let last = fleet.services.sweep_rotations(fleet.services.now()).unwrap();
    assert_eq!(last.alerts.len(), 1, "late: timed out in issued");
    assert_eq!(fleet.status(&new_id), None, "the unacknowledged certificate is withdrawn");
    late.pending = None;
    fleet.check_invariants(&[&silent, &late]);
    // The next campaign may open a new rotation for the same certificate.
    let campaign = fleet
        .services
        .start_rotation(
            &fleet.caller,
            std::slice::from_ref(&silent.certificate),
            RotationSource::Manual,
            SubjectRule::KeepOld,
        )
        .unwrap();
    assert_eq!(campaign.counts.get(&RotationState::Requested), Some(&1));
}

#[test]
fn survives_a_crash_between_every_step() {
    let mut fleet = fleet(RotationConfig::default());
    let mut device = fleet.device("sensor-1");
    let old = device.certificate.clone();
    let campaign = fleet
        .services
        .start_rotation(&fleet.caller, std::slice::from_ref(&old), RotationSource::Manual, SubjectRule::KeepOld)
        .unwrap();
    // Crash before the first csr_req went out: the sweep sends it.
    fleet.crash();
    assert_eq!(fleet.services.sweep_rotations(fleet.services.now()).unwrap().publish.len(), 1);
    // Crash after csr_req was sent (and lost): re-sent at the deadline.
    fleet.crash();
    fleet.clock.advance(fleet.config.rotation.response_timeout);
    assert_eq!(
        topics(&fleet.services.sweep_rotations(fleet.services.now()).unwrap()),
        vec!["management/topic/sensor-1/csr_req"]
    );
    // Crash after issuing, before crt_req was published: re-sent at the deadline, same certificate.
    let issued = fleet.csr_res(&mut device);
    fleet.crash();
    assert_eq!(fleet.rotation_of(&device).state, RotationState::Issued);
    fleet.clock.advance(fleet.config.rotation.response_timeout);
    let resent = fleet.services.sweep_rotations(fleet.services.now()).unwrap();
    assert_eq!(resent.publish, issued.publish);
    fleet.crash();
    fleet.install_and_ack(&mut device, &resent.publish[0]);
    fleet.crash();
    assert_eq!(fleet.rotation_of(&device).state, RotationState::Retired);
    assert_eq!(fleet.status(&old), None);
    fleet.check_invariants(&[&device]);
    let summary = fleet.services.describe_rotation_campaign(&fleet.caller, &campaign.campaign.id).unwrap();
    assert_eq!(summary.counts.get(&RotationState::Retired), Some(&1));
}

#[test]
fn an_audit_campaign_rotates_what_expires() {
    let fleet = fleet(RotationConfig::default());
    let device = fleet.device("sensor-1");
    let never = {
        let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        fleet.services.create_certificate_from_csr(&fleet.caller, &csr(&key, "never"), true).unwrap().id
    };
    let update = AuditConfigurationUpdate {
        role_arn: Some("arn:aws:iam::123456789012:role/audit".into()),
        targets: Default::default(),
        checks: [(
            EXPIRING_CHECK.to_owned(),
            AuditCheckConfiguration { enabled: true, configuration: Default::default() },
        )]
        .into(),
    };
    fleet.services.update_account_audit_configuration(&fleet.caller, &update).unwrap();
    fleet.clock.advance(Duration::days(340));
    let task_id = fleet.services.start_on_demand_audit_task(&fleet.caller, &[EXPIRING_CHECK.to_owned()]).unwrap();
    let (task, _) = fleet.services.describe_audit_task(&fleet.caller, &task_id).unwrap();
    fleet.services.run_audit_task(&task, Duration::minutes(5)).unwrap();
    let summary = fleet.services.rotation_from_audit(&fleet.caller.account, &task_id).unwrap().unwrap();
    assert_eq!(summary.campaign.audit_task_id.as_deref(), Some(task_id.as_str()));
    assert_eq!(summary.counts.get(&RotationState::Requested), Some(&1));
    assert_eq!(summary.counts.get(&RotationState::Failed), Some(&1));
    let failed = fleet
        .services
        .list_rotations(
            &fleet.caller,
            &RotationFilter { state: Some(RotationState::Failed), ..Default::default() },
            None,
            10,
        )
        .unwrap();
    assert_eq!((failed[0].old_certificate_id.clone(), failed[0].error.as_deref()), (never, Some("no client id known")));
    // Once per task.
    let again = fleet.services.rotation_from_audit(&fleet.caller.account, &task_id).unwrap().unwrap();
    assert_eq!(again.campaign.id, summary.campaign.id);
    assert_eq!(
        topics(&fleet.services.sweep_rotations(fleet.services.now()).unwrap()),
        vec!["management/topic/sensor-1/csr_req"]
    );
    let _ = device;
}

/// Not a timed assertion: prints the wall time of each phase and the slowest single step.
#[test]
fn ten_thousand_certificates_in_one_campaign() {
    let count: usize = std::env::var("CERTFLEET_ROTATION_SCALE").ok().and_then(|v| v.parse().ok()).unwrap_or(10_000);
    let fleet = fleet(RotationConfig::default());
    let setup = Instant::now();
    let policy = PolicyName::parse("device").unwrap();
    let thing_key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let issuer = fleet.services.device_issuer().unwrap();
    let now = fleet.services.now();
    let mut devices = Vec::with_capacity(count);
    // Devices written straight to the registry in one transaction (the setup is not measured).
    write(fleet.services.store(), |tx| {
        for index in 0..count {
            let client_id = format!("d{index:05}");
            let public = certfleet_pki::PublicKey::from_pem(&thing_key.public_key_pem()).unwrap();
            let certificate = issuer.issue_for_key(&public, &client_id, Duration::days(30), now).unwrap();
            tx.insert_certificate(&DeviceCertificate {
                account: fleet.caller.account.clone(),
                id: certificate.id().clone(),
                pem: certificate.to_pem(),
                ca_certificate_id: None,
                status: CertificateStatus::Active,
                mode: CertificateMode::Default,
                previous_owner: None,
                generation_id: "g".into(),
                customer_version: 1,
                not_before: certificate.not_before(),
                not_after: certificate.not_after(),
                created_at: now,
                last_modified: now,
                transfer: TransferData::default(),
            })?;
            tx.attach_policy(&fleet.caller.account, &policy, certificate.id(), now)?;
            tx.insert_connection(&ConnectionRecord {
                session_id: format!("s{index}"),
                account: fleet.caller.account.clone(),
                certificate_id: certificate.id().clone(),
                client_id: client_id.clone(),
                connected_at: now,
                disconnected_at: None,
                disconnect_reason: None,
                via: certfleet_registry::ConnectionVia::default(),
            })?;
            devices.push((client_id, certificate.id().clone()));
        }
        Ok::<_, certfleet_services::Error>(())
    })
    .unwrap();
    eprintln!("setup of {count} devices: {:?}", setup.elapsed());

    let ids: Vec<CertificateId> = devices.iter().map(|(_, id)| id.clone()).collect();
    let mut slowest = (std::time::Duration::ZERO, String::new());
    let mut time_step = |name: &str, started: Instant| {
        let took = started.elapsed();
        if took > slowest.0 {
            slowest = (took, name.to_owned());
        }
    };
    let total = Instant::now();
    let started = Instant::now();
    let campaign =
        fleet.services.start_rotation(&fleet.caller, &ids, RotationSource::Manual, SubjectRule::KeepOld).unwrap();
    eprintln!("start_rotation: {:?}", started.elapsed());
    let started = Instant::now();
    let requests = fleet.services.sweep_rotations(fleet.services.now()).unwrap();
    eprintln!("first sweep ({} csr_req): {:?}", requests.publish.len(), started.elapsed());
    assert_eq!(requests.publish.len(), count);
    // One new key for the whole fleet keeps CSR generation out of the figure: the service checks
    // keys against each device's old key, not across devices.
    let new_key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let phase = Instant::now();
    let mut crt_reqs = Vec::with_capacity(count);
    for (client_id, old) in &devices {
        let pem = csr(&new_key, client_id);
        let started = Instant::now();
        let effects = fleet
            .services
            .handle_device_message(&fleet.caller.account, client_id, old, DeviceTopic::CsrRes, &json!({ "CSR": pem }))
            .unwrap()
            .into_effects();
        time_step("csr_res", started);
        assert_eq!(effects.publish.len(), 1, "{client_id}");
        crt_reqs.push(certificate_id_of(&effects.publish[0]));
    }
    eprintln!("{count} csr_res (issue + attach): {:?}", phase.elapsed());
    let phase = Instant::now();
    for ((client_id, _), new_id) in devices.iter().zip(&crt_reqs) {
        let started = Instant::now();
        fleet
            .services
            .handle_device_message(&fleet.caller.account, client_id, new_id, DeviceTopic::CrtAck, &json!({}))
            .unwrap();
        time_step("crt_ack", started);
    }
    eprintln!("{count} crt_ack (retire): {:?}", phase.elapsed());
    let summary = fleet.services.describe_rotation_campaign(&fleet.caller, &campaign.campaign.id).unwrap();
    assert_eq!(summary.counts.get(&RotationState::Retired), Some(&(count as i64)));
    eprintln!(
        "ROTATION SCALE: {count} certificates rotated in {:?}; slowest single step: {} in {:?}",
        total.elapsed(),
        slowest.1,
        slowest.0
    );
}

/// Every certificate ID of the account, with its status.
fn all_certificates(fleet: &Fleet) -> Vec<(CertificateId, CertificateStatus)> {
    let mut all = Vec::new();
    let mut page = PageRequest { limit: 250, ascending: true, after: None };
    loop {
        let listed = fleet.services.list_certificates(&fleet.caller, &page).unwrap();
        all.extend(listed.items.iter().map(|certificate| (certificate.id.clone(), certificate.status)));
        match listed.next {
            Some(next) => page.after = Some(next),
            None => break,
        }
    }
    all
}

fn start(fleet: &Fleet, device: &Device, rule: SubjectRule) {
    fleet
        .services
        .start_rotation(&fleet.caller, std::slice::from_ref(&device.certificate), RotationSource::Manual, rule)
        .unwrap();
    fleet.services.sweep_rotations(fleet.services.now()).unwrap();
}

#[test]
fn another_certificate_cannot_take_over_a_rotation() {
    let fleet = fleet(RotationConfig::default());
    let mut victim = fleet.device("victim");
    let attacker = fleet.device("attacker");
    let victim_old = victim.certificate.clone();
    start(&fleet, &victim, SubjectRule::KeepOld);
    let before = fleet.rotation_of(&victim);
    let certificates = all_certificates(&fleet);

    // The attacker's session (its own certificate) uses the victim's client ID and topics.
    let attacker_key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let attacks = [
        (DeviceTopic::CsrRes, json!({ "CSR": csr(&attacker_key, "victim") }), Ignored::NotFromRotatedCertificate),
        (
            DeviceTopic::CrtErr,
            json!({ "error": "x", "code": "chain-invalid", "certificateId": victim_old.as_str() }),
            Ignored::NotFromRotatedCertificate,
        ),
        (DeviceTopic::CrtErr, json!({ "error": "x" }), Ignored::NotFromRotatedCertificate),
        (DeviceTopic::CrtAck, json!({ "certificateId": victim_old.as_str() }), Ignored::NotFromIssuedCertificate),
    ];
    for (topic, payload, why) in &attacks {
        let outcome = fleet.deliver("victim", &attacker.certificate, *topic, payload.clone());
        assert_eq!(outcome, DeviceMessageOutcome::Ignored(*why), "{topic:?} {payload}");
        assert_eq!(fleet.rotation_of(&victim), before, "{topic:?}: the rotation is unchanged");
        assert_eq!(all_certificates(&fleet), certificates, "{topic:?}: nothing issued, nothing retired");
    }

    // The victim's own rotation goes on; once issued, the attacker still cannot ack nor fail it,
    // and the victim's old certificate cannot ack it either (only the issued one's session can).
    let issued = fleet.csr_res(&mut victim);
    let new_id = certificate_id_of(&issued.publish[0]);
    let during = fleet.rotation_of(&victim);
    let certificates = all_certificates(&fleet);
    let late = [
        (
            &attacker.certificate,
            DeviceTopic::CrtAck,
            json!({ "certificateId": new_id.as_str() }),
            Ignored::NotFromIssuedCertificate,
        ),
        (
            &attacker.certificate,
            DeviceTopic::CrtErr,
            json!({ "error": "x", "code": "key-mismatch", "certificateId": new_id.as_str() }),
            Ignored::NotFromRotatedCertificate,
        ),
        (
            &attacker.certificate,
            DeviceTopic::CsrRes,
            json!({ "CSR": csr(&attacker_key, "victim") }),
            Ignored::NotFromRotatedCertificate,
        ),
        (
            &victim_old,
            DeviceTopic::CrtAck,
            json!({ "certificateId": new_id.as_str() }),
            Ignored::NotFromIssuedCertificate,
        ),
    ];
    for (principal, topic, payload, why) in &late {
        let outcome = fleet.deliver("victim", principal, *topic, payload.clone());
        assert_eq!(outcome, DeviceMessageOutcome::Ignored(*why), "{topic:?} {payload}");
        assert_eq!(fleet.rotation_of(&victim), during, "{topic:?}: the rotation is unchanged");
        assert_eq!(all_certificates(&fleet), certificates, "{topic:?}: nothing issued, nothing retired");
    }
    assert_eq!(fleet.status(&victim_old), Some(CertificateStatus::Active));

    // The issued certificate on another client ID's topic is not the rotation's either.
    let outcome = fleet.deliver("attacker", &new_id, DeviceTopic::CrtAck, json!({}));
    assert_eq!(outcome, DeviceMessageOutcome::Ignored(Ignored::NotFromIssuedCertificate));

    fleet.install_and_ack(&mut victim, &issued.publish[0]);
    assert_eq!(fleet.rotation_of(&victim).state, RotationState::Retired);
    fleet.check_invariants(&[&victim, &attacker]);
}

#[test]
fn the_issued_subject_is_the_old_certificates() {
    let fleet = fleet(RotationConfig::default());
    let subject_of = |id: &CertificateId| {
        let stored = read(fleet.services.store(), |tx| tx.get_certificate(&fleet.caller.account, id)).unwrap().unwrap();
        let parsed = certfleet_pki::Certificate::from_pem(&stored.pem).unwrap();
        (parsed.subject_der().to_vec(), parsed.subject_common_name())
    };

    // keep-old: a CSR asking for CN=another-device gets the old certificate's subject.
    let mut device = fleet.device("sensor-1");
    let old_subject = subject_of(&device.certificate);
    start(&fleet, &device, SubjectRule::KeepOld);
    let key = device.pending.insert(rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap());
    let pem = csr(key, "another-device");
    let principal = device.certificate.clone();
    let issued = fleet.send(&device, &principal, DeviceTopic::CsrRes, json!({ "CSR": pem }));
    let new_id = certificate_id_of(&issued.publish[0]);
    assert_eq!(subject_of(&new_id), old_subject);
    assert_eq!(subject_of(&new_id).1.as_deref(), Some("sensor-1"));
    fleet.install_and_ack(&mut device, &issued.publish[0]);
    fleet.check_invariants(&[&device]);

    // require-csr-match: the same CSR is refused, nothing is issued, the old certificate stays.
    let mut strict = fleet.device("sensor-2");
    let strict_old = strict.certificate.clone();
    start(&fleet, &strict, SubjectRule::RequireCsrMatch);
    let certificates = all_certificates(&fleet);
    let refused_key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let effects =
        fleet.send(&strict, &strict_old, DeviceTopic::CsrRes, json!({ "CSR": csr(&refused_key, "another-device") }));
    assert!(effects.publish.is_empty());
    assert_eq!(effects.alerts.len(), 1);
    let rotation = fleet.rotation_of(&strict);
    assert_eq!(rotation.state, RotationState::Failed);
    assert!(rotation.error.as_deref().unwrap().contains("csr-subject-mismatch"), "{:?}", rotation.error);
    assert_eq!(all_certificates(&fleet), certificates, "nothing issued");
    assert_eq!(fleet.status(&strict_old), Some(CertificateStatus::Active));
    // Retried (same campaign, same rule), a CSR with the old subject goes through.
    fleet.services.retry_rotation(&fleet.caller, &rotation.id).unwrap();
    fleet.services.sweep_rotations(fleet.services.now()).unwrap();
    let issued = fleet.csr_res(&mut strict);
    let strict_new = certificate_id_of(&issued.publish[0]);
    assert_eq!(subject_of(&strict_new).1.as_deref(), Some("sensor-2"));
    fleet.install_and_ack(&mut strict, &issued.publish[0]);
    fleet.check_invariants(&[&device, &strict]);

    // No certificate of the account carries the subject a CSR asked for.
    for (id, _) in all_certificates(&fleet) {
        assert_ne!(subject_of(&id).1.as_deref(), Some("another-device"));
    }
}

#[test]
fn device_errors_are_decided_on_their_code() {
    let fleet = fleet(RotationConfig::default());
    let mut device = fleet.device("sensor-1");
    let old = device.certificate.clone();
    start(&fleet, &device, SubjectRule::KeepOld);
    let stranger = CertificateId::parse(&"cd".repeat(32)).unwrap();

    // A late answer to an earlier crt_req (the agent has no rotation under way): ignored, in
    // requested as in csr_received, whatever its text says.
    let late = json!({
        "error": "no rotation in progress: send csr_req first",
        "code": "no-rotation-in-progress",
        "certificateId": stranger.as_str(),
    });
    let requested = fleet.rotation_of(&device);
    for payload in [late.clone(), json!({ "error": "anything", "code": "no-rotation-in-progress" })] {
        let outcome = fleet.deliver("sensor-1", &old, DeviceTopic::CrtErr, payload);
        assert!(matches!(outcome, DeviceMessageOutcome::Ignored(_)), "{outcome:?}");
        assert_eq!(fleet.rotation_of(&device), requested);
    }

    // Issued: a report about another certificate is ignored, whatever its code.
    let issued = fleet.csr_res(&mut device);
    let new_id = certificate_id_of(&issued.publish[0]);
    let during = fleet.rotation_of(&device);
    for code in ["no-rotation-in-progress", "key-mismatch", "chain-invalid"] {
        let payload = json!({ "error": "x", "code": code, "certificateId": stranger.as_str() });
        let outcome = fleet.deliver("sensor-1", &old, DeviceTopic::CrtErr, payload);
        assert_eq!(outcome, DeviceMessageOutcome::Ignored(Ignored::AboutAnotherCertificate), "{code}");
        assert_eq!(fleet.rotation_of(&device), during);
    }
    assert_eq!(fleet.status(&new_id), Some(CertificateStatus::Active));

    // About the issued certificate: the rotation fails on the code, the text kept for humans.
    let payload = json!({ "error": "does not chain", "code": "chain-invalid", "certificateId": new_id.as_str() });
    let effects = fleet.send(&device, &old, DeviceTopic::CrtErr, payload);
    assert_eq!(effects.alerts.len(), 1);
    let rotation = fleet.rotation_of(&device);
    assert_eq!(rotation.state, RotationState::Failed);
    assert_eq!(rotation.error.as_deref(), Some("device reported chain-invalid: does not chain"));
    assert_eq!(fleet.status(&new_id), None, "the new certificate is withdrawn");
    assert_eq!(fleet.status(&old), Some(CertificateStatus::Active));
    device.pending = None;
    fleet.check_invariants(&[&device]);
}

#[test]
fn the_issued_subject_alt_names_are_the_old_certificates() {
    let fleet = fleet(RotationConfig::default());
    // A certificate of the device's own CA, with subject alternative names, registered without CA.
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let mut params = rcgen::CertificateParams::new(vec!["san-device.example".to_owned()]).unwrap();
    params.distinguished_name.push(rcgen::DnType::CommonName, "san-device");
    let pem = params.self_signed(&key).unwrap().pem();
    let registration = CertificateRegistration {
        certificate_pem: pem,
        ca_certificate_pem: None,
        status: Some(CertificateStatus::Active),
        set_as_active: false,
    };
    let old = fleet.services.register_certificate_without_ca(&fleet.caller, &registration).unwrap();
    fleet.connected("san-device", &old.id);
    let mut device = Device { client_id: "san-device".into(), key, certificate: old.id.clone(), pending: None };
    start(&fleet, &device, SubjectRule::KeepOld);
    let issued = fleet.csr_res(&mut device);
    let new_id = certificate_id_of(&issued.publish[0]);
    let parsed = |id: &CertificateId| {
        let stored = read(fleet.services.store(), |tx| tx.get_certificate(&fleet.caller.account, id)).unwrap().unwrap();
        certfleet_pki::Certificate::from_pem(&stored.pem).unwrap()
    };
    let (old, new) = (parsed(&old.id), parsed(&new_id));
    assert_eq!(new.dns_names(), ["san-device.example"]);
    assert_eq!(new.subject_alt_names(), old.subject_alt_names());
    assert_eq!(new.subject_der(), old.subject_der());
}
