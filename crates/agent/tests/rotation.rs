//! The agent against a real gateway in-process (testkit registry, the policy authorizer, TLS on
//! 127.0.0.1:0), with the test playing the rotation service: a second MQTT client publishes
//! `csr_req` and `crt_req` and reads `csr_res`, `crt_ack` and `crt_err`, and certificates are
//! issued from the CSRs with the services API.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use certfleet_agent::connection::{Identity, Incoming, Session, Settings};
use certfleet_agent::store::{CERTIFICATE_FILE, KEY_FILE, Pending, STATE_FILE, Slot, State, Store};
use certfleet_agent::{Agent, Config, Credential, Error, Event, KeyAlgorithm, MqttVersion, Step, TrustBundle};
use certfleet_gateway::{BrokerConfig, LocalFabric};
use certfleet_mqtt::{ProtocolVersion, TopicFilter};
use certfleet_pki::{CertificateId, Csr, Issuer};
use certfleet_registry::{CertificateStatus, PolicyName, ThingName, ThingPrincipalType};
use certfleet_services::Caller;
use certfleet_testkit::{START, TempDir, World};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;

/// The device policy documented in docs/agent.md.
const DEVICE_POLICY: &str = include_str!("../policy/device-policy-strict.json");
const SERVICE_POLICY: &str =
    r#"{"Version":"2012-10-17","Statement":[{"Effect":"Allow","Action":"iot:*","Resource":"*"}]}"#;
const PATIENCE: Duration = Duration::from_secs(30);

/// A gateway, its account, the trust bundles, and the rotation service's MQTT client.
struct Fleet {
    world: World,
    caller: Caller,
    addr: SocketAddr,
    server_roots: TrustBundle,
    server_chain_len: usize,
    device_roots: TrustBundle,
    service: Session,
    _stop: watch::Sender<bool>,
}

fn device_policy() -> PolicyName {
    PolicyName::parse("device-rotation").unwrap()
}

impl Fleet {
    /// A gateway whose server certificate carries `extra_names` more SANs (a large chain).
    async fn start(extra_names: usize) -> Fleet {
        let world = certfleet_testkit::world();
        // Issue at the real time: the gateway checks validity against the system clock.
        world.clock.advance(time::OffsetDateTime::now_utc() - START);
        let caller = world.caller();
        let services = world.services.clone();
        let now = time::OffsetDateTime::now_utc() - time::Duration::hours(1);
        let server_root = Issuer::generate_root(
            "test server root",
            "certfleet",
            time::Duration::days(30),
            certfleet_pki::KeyAlgorithm::EcdsaP256,
            now,
        )
        .unwrap();
        let mut names = vec!["localhost".to_owned(), "127.0.0.1".to_owned()];
        names.extend((0..extra_names).map(|n| format!("gateway-{n:05}.iot.us-east-1.certfleet.example.com")));
        let (certificate, key) = server_root
            .issue_server_certificate(
                "gateway",
                &names,
                time::Duration::days(30),
                certfleet_pki::KeyAlgorithm::EcdsaP256,
                now,
            )
            .unwrap();
        let chain = vec![CertificateDer::from(certificate.der().to_vec())];
        let server_chain_len = chain.iter().map(|der| der.len()).sum();
        let key = certfleet_gateway::tls::certified_key_der(
            chain,
            &PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.to_vec())),
        )
        .unwrap();
        let tls = certfleet_gateway::endpoints::BuiltinChains { default: key.clone(), large: key };
        let config = certfleet_gateway::Config {
            region: "us-east-1".into(),
            endpoint_domain: "certfleet.local".into(),
            default_account: caller.account.clone(),
            max_connections: 64,
            handshake_timeout: Duration::from_secs(10),
            connect_timeout: Duration::from_secs(10),
            change_poll_interval: Duration::from_millis(50),
            caches: Default::default(),
            test_endpoint_records_per_second: 10,
        };
        let node = certfleet_gateway::Node::new(
            certfleet_gateway::NodeConfig {
                gateway: config,
                broker: BrokerConfig::default(),
                rules: Default::default(),
                fleet: Default::default(),
                history_sessions_per_certificate_per_hour: 60,
                policies: certfleet_gateway::Policies::Enforce,
                shutdown: Default::default(),
            },
            services.clone(),
            LocalFabric::new(),
            tls,
            Arc::new(certfleet_egress::Egress::default()),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (stop, stopped) = watch::channel(false);
        tokio::spawn(node.run(listener, stopped));

        services.create_policy(&caller, &device_policy(), DEVICE_POLICY, &[]).unwrap();
        let service_policy = PolicyName::parse("rotation-service").unwrap();
        services.create_policy(&caller, &service_policy, SERVICE_POLICY, &[]).unwrap();
        let (server_roots, warnings) = TrustBundle::from_pem(server_root.certificate().to_pem().as_bytes()).unwrap();
        assert!(warnings.is_empty());
        let device_root = services.device_issuer().unwrap().certificate().to_pem();
        let (device_roots, _) = TrustBundle::from_pem(device_root.as_bytes()).unwrap();

        // The rotation service's own client.
        let key = certfleet_agent::generate_key(KeyAlgorithm::P256).unwrap();
        let csr = certfleet_agent::build_csr(&key, "rotation-service").unwrap();
        let issued = services.create_certificate_from_csr(&caller, &csr, true).unwrap();
        services
            .attach_policy(&caller, &service_policy, &services.certificate_arn(&caller.account, &issued.id))
            .unwrap();
        let mut roots = rustls::RootCertStore::empty();
        roots.add(CertificateDer::from(server_root.certificate().der().to_vec())).unwrap();
        let settings = Settings {
            endpoint: addr.to_string(),
            server_name: ServerName::try_from("localhost").unwrap(),
            roots: Arc::new(roots),
            alpn: true,
            version: ProtocolVersion::V5,
            client_id: "rotation-service".into(),
            keep_alive: Duration::from_secs(30),
            connect_timeout: Duration::from_secs(10),
        };
        let filters: Vec<TopicFilter> = ["csr_res", "crt_ack", "crt_err"]
            .iter()
            .map(|name| TopicFilter::new(format!("management/topic/+/{name}")).unwrap())
            .collect();
        let identity = Identity::from_pem(&issued.pem, &key.serialize_pem()).unwrap();
        let service = Session::open(&settings, &identity, &filters).await.unwrap();
        Fleet { world, caller, addr, server_roots, server_chain_len, device_roots, service, _stop: stop }
    }

    /// A device with an ACTIVE certificate (with the device policy) in `dir/current`.
    fn provision(&self, dir: &Path, client_id: &str) -> CertificateId {
        let key = certfleet_agent::generate_key(KeyAlgorithm::P256).unwrap();
        let csr = certfleet_agent::build_csr(&key, client_id).unwrap();
        let id = self.issue(&csr);
        let store = Store::open(dir).unwrap();
        store.create_slot(&Slot::bootstrap()).unwrap();
        let pem = self.world.services.describe_certificate(&self.caller, &id).unwrap().pem;
        store.write_certificate(&Slot::bootstrap(), &pem).unwrap();
        store.write_key(&Slot::bootstrap(), &key.serialize_pem()).unwrap();
        id
    }

    /// What the rotation service does with a CSR: an ACTIVE certificate with the device policy,
    /// attached to the device's thing (named as the CSR's common name, the client ID), as the
    /// strict device policy requires.
    fn issue(&self, csr: &str) -> CertificateId {
        let services = &self.world.services;
        let issued = services.create_certificate_from_csr(&self.caller, csr, true).unwrap();
        let arn = services.certificate_arn(&self.caller.account, &issued.id);
        services.attach_policy(&self.caller, &device_policy(), &arn).unwrap();
        let thing = Csr::from_pem(csr).unwrap().subject_common_name().expect("the CSR names its client ID");
        let thing = ThingName::parse(&thing).unwrap();
        match services.create_thing(&self.caller, &thing, &Default::default()) {
            Ok(_) | Err(certfleet_services::Error::AlreadyExists { .. }) => {}
            Err(error) => panic!("creating the thing {thing}: {error}"),
        }
        services.attach_thing_principal(&self.caller, &thing, &arn, ThingPrincipalType::NonExclusive).unwrap();
        issued.id
    }

    fn pem(&self, id: &CertificateId) -> String {
        self.world.services.describe_certificate(&self.caller, id).unwrap().pem
    }

    fn config(&self, dir: &Path, client_id: &str) -> Config {
        let mut config = Config::new(
            self.addr.to_string(),
            "localhost",
            client_id,
            dir,
            self.server_roots.clone(),
            self.device_roots.clone(),
        );
        config.backoff =
            certfleet_agent::Backoff { initial: Duration::from_millis(50), max: Duration::from_millis(400) };
        config.alpn = true;
        config
    }

    async fn publish(&mut self, client_id: &str, name: &str, payload: serde_json::Value) {
        self.service
            .publish(&format!("management/topic/{client_id}/{name}"), payload.to_string().into_bytes())
            .await
            .unwrap();
    }

    /// The next message the service receives on `management/topic/{client_id}/{name}`.
    async fn expect(&mut self, client_id: &str, name: &str) -> serde_json::Value {
        let topic = format!("management/topic/{client_id}/{name}");
        let wait = async {
            loop {
                match self.service.next().await.unwrap() {
                    Incoming::Message { topic: got, payload } if got == topic => {
                        return serde_json::from_slice::<serde_json::Value>(&payload).unwrap();
                    }
                    Incoming::Message { topic: got, payload } => {
                        panic!("expected {topic}, got {got}: {}", String::from_utf8_lossy(&payload))
                    }
                    Incoming::Delivered(_) => {}
                }
            }
        };
        tokio::time::timeout(PATIENCE, wait).await.unwrap_or_else(|_| panic!("nothing on {topic}"))
    }

    /// Asks for a CSR and returns it.
    async fn csr(&mut self, client_id: &str) -> String {
        self.publish(client_id, "csr_req", serde_json::json!({})).await;
        let answer = self.expect(client_id, "csr_res").await;
        answer["CSR"].as_str().expect("a CSR").to_owned()
    }

    async fn send_certificate(&mut self, client_id: &str, id: &CertificateId) {
        let pem = self.pem(id);
        self.publish(client_id, "crt_req", serde_json::json!({ "certificatePem": pem, "certificateId": id.as_str() }))
            .await;
    }
}

/// A running agent.
struct Running {
    task: JoinHandle<Result<(), Error>>,
    events: mpsc::UnboundedReceiver<Event>,
    stop: watch::Sender<bool>,
}

fn spawn(config: Config) -> Running {
    let (agent, events) = Agent::new(config).unwrap();
    let (stop, stopped) = watch::channel(false);
    Running { task: tokio::spawn(agent.run(stopped)), events, stop }
}

impl Running {
    /// Waits for an event `wanted` accepts, skipping others.
    async fn until(&mut self, what: &str, wanted: impl Fn(&Event) -> bool) -> Event {
        let mut seen = Vec::new();
        let wait = async {
            while let Some(event) = self.events.recv().await {
                if wanted(&event) {
                    return Some(event);
                }
                seen.push(event);
            }
            None
        };
        match tokio::time::timeout(PATIENCE, wait).await {
            Ok(Some(event)) => event,
            _ => panic!("no {what}; saw {seen:?}"),
        }
    }

    async fn connected(&mut self) -> (CertificateId, Credential) {
        match self.until("connection", |event| matches!(event, Event::Connected { .. })).await {
            Event::Connected { certificate_id, credential } => (certificate_id, credential),
            _ => unreachable!(),
        }
    }

    async fn stop(self) {
        let _ = self.stop.send(true);
        tokio::time::timeout(PATIENCE, self.task).await.expect("the agent stops").unwrap().unwrap();
    }

    /// Waits for the agent to stop on its own (an injected crash).
    async fn crashed(self) -> Step {
        match tokio::time::timeout(PATIENCE, self.task).await.expect("the agent stops").unwrap() {
            Err(Error::InjectedCrash(step)) => step,
            other => panic!("expected an injected crash, got {other:?}"),
        }
    }
}

fn state(dir: &Path) -> State {
    Store::open(dir).unwrap().load().unwrap()
}

fn current_certificate(dir: &Path) -> CertificateId {
    let store = Store::open(dir).unwrap();
    let pem = store.read_certificate(&store.load().unwrap().current).unwrap();
    CertificateId::of_der(&CertificateDer::pem_slice_iter(pem.as_bytes()).next().unwrap().unwrap())
}

fn csr_key(csr: &str) -> certfleet_pki::PublicKey {
    Csr::from_pem(csr).unwrap().public_key().clone()
}

fn slot_dirs(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .flatten()
        .filter(|entry| entry.path().is_dir())
        .map(|entry| entry.file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rotation_ends_on_the_new_certificate() {
    let mut fleet = Fleet::start(0).await;
    let dir = TempDir::new("agent-happy");
    let old = fleet.provision(dir.path(), "sensor-1");
    let mut agent = spawn(fleet.config(dir.path(), "sensor-1"));
    assert_eq!(agent.connected().await, (old.clone(), Credential::Current));

    let csr = fleet.csr("sensor-1").await;
    let parsed = Csr::from_pem(&csr).unwrap();
    assert_eq!(parsed.subject_common_name().as_deref(), Some("sensor-1"));
    assert!(matches!(parsed.public_key().kind(), certfleet_pki::KeyKind::Ec(certfleet_pki::Curve::P256)));
    let new = fleet.issue(&csr);
    fleet.send_certificate("sensor-1", &new).await;

    let ack = fleet.expect("sensor-1", "crt_ack").await;
    assert_eq!(ack, serde_json::json!({ "certificateId": new.as_str() }));
    agent.until("ack", |event| matches!(event, Event::Acked { certificate_id } if *certificate_id == new)).await;

    let committed = state(dir.path());
    assert_eq!(committed.pending, None);
    assert_eq!(committed.current, Slot::numbered(1));
    assert_eq!(current_certificate(dir.path()), new);
    assert_eq!(slot_dirs(dir.path()), vec!["slot-1".to_owned()], "the old slot is removed");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let slot = dir.path().join("slot-1");
        for file in [slot.join(CERTIFICATE_FILE), slot.join(KEY_FILE), dir.path().join(STATE_FILE)] {
            assert_eq!(std::fs::metadata(&file).unwrap().permissions().mode() & 0o777, 0o600, "{}", file.display());
        }
    }

    // A duplicated crt_req for the installed certificate is acknowledged again.
    fleet.send_certificate("sensor-1", &new).await;
    assert_eq!(fleet.expect("sensor-1", "crt_ack").await["certificateId"], new.as_str());

    // Restarted, the agent uses the new certificate.
    agent.stop().await;
    let mut agent = spawn(fleet.config(dir.path(), "sensor-1"));
    assert_eq!(agent.connected().await, (new, Credential::Current));
    agent.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_certificate_for_another_key_is_refused_and_the_old_one_kept() {
    let mut fleet = Fleet::start(0).await;
    let dir = TempDir::new("agent-wrong-key");
    let old = fleet.provision(dir.path(), "sensor-2");
    let mut agent = spawn(fleet.config(dir.path(), "sensor-2"));
    agent.connected().await;
    fleet.csr("sensor-2").await;
    let other_key = fleet.world.services.create_keys_and_certificate(&fleet.caller, true).unwrap().certificate.id;
    fleet.send_certificate("sensor-2", &other_key).await;

    let error = fleet.expect("sensor-2", "crt_err").await;
    assert_eq!(error["error"], "the certificate is not for the key of the csr", "{error}");
    assert_eq!(error["code"], "key-mismatch", "{error}");
    assert_eq!(error["certificateId"], other_key.as_str(), "{error}");
    agent.until("failure", |event| matches!(event, Event::Failed { .. })).await;
    let committed = state(dir.path());
    assert_eq!(committed.current, Slot::bootstrap());
    assert_eq!(committed.pending, None);
    assert_eq!(slot_dirs(dir.path()), vec!["current".to_owned()]);

    // A crt_req with no rotation under way is refused too.
    fleet.send_certificate("sensor-2", &other_key).await;
    let error = fleet.expect("sensor-2", "crt_err").await;
    assert!(error["error"].as_str().unwrap().contains("no rotation in progress"), "{error}");
    assert_eq!(error["code"], "no-rotation-in-progress", "{error}");
    assert_eq!(error["certificateId"], other_key.as_str(), "{error}");

    // The old credentials still connect.
    agent.stop().await;
    let mut agent = spawn(fleet.config(dir.path(), "sensor-2"));
    assert_eq!(agent.connected().await, (old, Credential::Current));
    agent.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_untrusted_certificate_is_refused() {
    let mut fleet = Fleet::start(0).await;
    let dir = TempDir::new("agent-untrusted");
    fleet.provision(dir.path(), "sensor-3");
    let mut agent = spawn(fleet.config(dir.path(), "sensor-3"));
    agent.connected().await;
    let csr = fleet.csr("sensor-3").await;
    // The right key, signed by a CA the device does not trust.
    let stranger = Issuer::generate_root(
        "stranger",
        "elsewhere",
        time::Duration::days(30),
        certfleet_pki::KeyAlgorithm::EcdsaP256,
        time::OffsetDateTime::now_utc() - time::Duration::hours(1),
    )
    .unwrap();
    let forged = stranger
        .issue_from_csr(&Csr::from_pem(&csr).unwrap(), time::Duration::days(1), time::OffsetDateTime::now_utc())
        .unwrap();
    fleet.publish("sensor-3", "crt_req", serde_json::json!({ "certificatePem": forged.to_pem() })).await;
    let error = fleet.expect("sensor-3", "crt_err").await;
    assert!(error["error"].as_str().unwrap().contains("does not chain to a trusted device ca"), "{error}");
    assert_eq!(error["code"], "chain-invalid", "{error}");
    agent.until("failure", |event| matches!(event, Event::Failed { .. })).await;
    assert_eq!(state(dir.path()).pending, None);
    agent.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn duplicated_csr_requests_get_csrs_for_the_same_key() {
    let mut fleet = Fleet::start(0).await;
    let dir = TempDir::new("agent-duplicate-csr");
    fleet.provision(dir.path(), "sensor-4");
    let mut agent = spawn(fleet.config(dir.path(), "sensor-4"));
    agent.connected().await;
    let first = fleet.csr("sensor-4").await;
    let second = fleet.csr("sensor-4").await;
    assert_eq!(csr_key(&first), csr_key(&second));
    assert_eq!(state(dir.path()).pending, Some(Pending::Key { slot: Slot::numbered(1) }));
    // Only one rotation started.
    agent.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_after_the_key_is_stored_keeps_that_key() {
    let mut fleet = Fleet::start(0).await;
    let dir = TempDir::new("agent-crash-key");
    let old = fleet.provision(dir.path(), "sensor-5");
    let mut config = fleet.config(dir.path(), "sensor-5");
    config.crash_after = Some(Step::KeyStored);
    let mut agent = spawn(config);
    agent.connected().await;
    fleet.publish("sensor-5", "csr_req", serde_json::json!({})).await;
    assert_eq!(agent.crashed().await, Step::KeyStored);

    let mut agent = spawn(fleet.config(dir.path(), "sensor-5"));
    assert_eq!(agent.connected().await, (old, Credential::Current));
    let csr = fleet.csr("sensor-5").await;
    let stored = Store::open(dir.path()).unwrap().read_key(&Slot::numbered(1)).unwrap();
    let stored = rcgen::KeyPair::from_pem(&stored).unwrap();
    assert_eq!(
        csr_key(&csr),
        certfleet_pki::PublicKey::from_spki_der(&rcgen::PublicKeyData::subject_public_key_info(&stored)).unwrap()
    );
    let new = fleet.issue(&csr);
    fleet.send_certificate("sensor-5", &new).await;
    assert_eq!(fleet.expect("sensor-5", "crt_ack").await["certificateId"], new.as_str());
    agent.until("ack", |event| matches!(event, Event::Acked { .. })).await;
    assert_eq!(current_certificate(dir.path()), new);
    agent.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_after_the_certificate_is_stored_recovers_onto_it() {
    let mut fleet = Fleet::start(0).await;
    let dir = TempDir::new("agent-crash-cert");
    fleet.provision(dir.path(), "sensor-6");
    let mut config = fleet.config(dir.path(), "sensor-6");
    config.crash_after = Some(Step::CertificateStored);
    let mut agent = spawn(config);
    agent.connected().await;
    let csr = fleet.csr("sensor-6").await;
    let new = fleet.issue(&csr);
    fleet.send_certificate("sensor-6", &new).await;
    assert_eq!(agent.crashed().await, Step::CertificateStored);
    assert_eq!(
        state(dir.path()).pending,
        Some(Pending::Certificate { slot: Slot::numbered(1), certificate_id: new.clone(), proven: false })
    );

    // Restarted from disk: the pending certificate first, acknowledged, promoted.
    let mut agent = spawn(fleet.config(dir.path(), "sensor-6"));
    assert_eq!(agent.connected().await, (new.clone(), Credential::Pending));
    assert_eq!(fleet.expect("sensor-6", "crt_ack").await["certificateId"], new.as_str());
    agent.until("ack", |event| matches!(event, Event::Acked { .. })).await;
    assert_eq!(current_certificate(dir.path()), new);
    assert_eq!(state(dir.path()).pending, None);
    agent.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_after_the_ack_is_sent_acknowledges_again() {
    let mut fleet = Fleet::start(0).await;
    let dir = TempDir::new("agent-crash-ack");
    fleet.provision(dir.path(), "sensor-7");
    let mut config = fleet.config(dir.path(), "sensor-7");
    config.crash_after = Some(Step::AckSent);
    let mut agent = spawn(config);
    agent.connected().await;
    let csr = fleet.csr("sensor-7").await;
    let new = fleet.issue(&csr);
    fleet.send_certificate("sensor-7", &new).await;
    assert_eq!(agent.crashed().await, Step::AckSent);
    assert!(
        matches!(state(dir.path()).pending, Some(Pending::Certificate { proven: true, .. })),
        "proven before the ack, not promoted before its PUBACK"
    );

    let mut agent = spawn(fleet.config(dir.path(), "sensor-7"));
    assert_eq!(agent.connected().await, (new.clone(), Credential::Pending));
    // The service may see the ack twice (once from before the crash): it must be idempotent.
    assert_eq!(fleet.expect("sensor-7", "crt_ack").await["certificateId"], new.as_str());
    agent.until("ack", |event| matches!(event, Event::Acked { .. })).await;
    assert_eq!(current_certificate(dir.path()), new);
    agent.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pending_certificate_refused_at_restart_falls_back_to_the_old_one() {
    let mut fleet = Fleet::start(0).await;
    let dir = TempDir::new("agent-crash-refused");
    let old = fleet.provision(dir.path(), "sensor-8");
    let mut config = fleet.config(dir.path(), "sensor-8");
    config.crash_after = Some(Step::CertificateStored);
    let mut agent = spawn(config);
    agent.connected().await;
    let csr = fleet.csr("sensor-8").await;
    let new = fleet.issue(&csr);
    fleet.send_certificate("sensor-8", &new).await;
    assert_eq!(agent.crashed().await, Step::CertificateStored);
    // Meanwhile the operator deactivates the new certificate.
    fleet.world.services.update_certificate(&fleet.caller, &new, CertificateStatus::Inactive).unwrap();

    let mut agent = spawn(fleet.config(dir.path(), "sensor-8"));
    agent.until("failure", |event| matches!(event, Event::Failed { .. })).await;
    assert_eq!(agent.connected().await, (old.clone(), Credential::Current));
    let error = fleet.expect("sensor-8", "crt_err").await;
    assert!(error["error"].as_str().unwrap().contains("refused at connect"), "{error}");
    assert_eq!(
        (error["code"].as_str(), error["certificateId"].as_str()),
        (Some("connect-refused"), Some(new.as_str()))
    );
    let committed = state(dir.path());
    assert_eq!((committed.current, committed.pending), (Slot::bootstrap(), None));
    // Once the crt_err is delivered, it is no longer pending a report.
    for _ in 0..100 {
        if state(dir.path()).unreported_error.is_none() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(state(dir.path()).unreported_error, None);
    assert_eq!(slot_dirs(dir.path()), vec!["current".to_owned()]);
    agent.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_large_server_chain_is_accepted_over_mqtt_3_1_1_and_rsa_keys_rotate() {
    let mut fleet = Fleet::start(450).await;
    assert!(fleet.server_chain_len >= 16 * 1024, "the server chain is {} bytes", fleet.server_chain_len);
    let dir = TempDir::new("agent-large-chain");
    let old = fleet.provision(dir.path(), "sensor-9");
    let mut config = fleet.config(dir.path(), "sensor-9");
    config.mqtt_version = MqttVersion::V311;
    config.key_algorithm = KeyAlgorithm::Rsa2048;
    let mut agent = spawn(config);
    assert_eq!(agent.connected().await, (old, Credential::Current));
    let csr = fleet.csr("sensor-9").await;
    assert!(matches!(csr_key(&csr).kind(), certfleet_pki::KeyKind::Rsa { bits: 2048 }));
    let new = fleet.issue(&csr);
    fleet.send_certificate("sensor-9", &new).await;
    assert_eq!(fleet.expect("sensor-9", "crt_ack").await["certificateId"], new.as_str());
    agent.until("ack", |event| matches!(event, Event::Acked { .. })).await;
    agent.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_gateway_is_retried_with_backoff() {
    let fleet = Fleet::start(0).await;
    let dir = TempDir::new("agent-retry");
    fleet.provision(dir.path(), "sensor-10");
    // Nothing listens on this port yet.
    let spare = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let spare_addr = spare.local_addr().unwrap();
    drop(spare);
    let mut config = fleet.config(dir.path(), "sensor-10");
    config.endpoint = spare_addr.to_string();
    let mut agent = spawn(config);
    for _ in 0..3 {
        agent.until("a failed attempt", |event| matches!(event, Event::Disconnected { .. })).await;
    }
    agent.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_session_is_kept_alive_with_pings() {
    let mut fleet = Fleet::start(0).await;
    let dir = TempDir::new("agent-keep-alive");
    fleet.provision(dir.path(), "sensor-11");
    let mut config = fleet.config(dir.path(), "sensor-11");
    config.keep_alive = Duration::from_secs(1);
    let mut agent = spawn(config);
    agent.connected().await;
    // The gateway closes a session silent for 1.5 keep-alives; pings keep this one up.
    tokio::time::sleep(Duration::from_millis(3500)).await;
    fleet.csr("sensor-11").await;
    let _ = agent.stop.send(true);
    let events: Vec<Event> = std::iter::from_fn(|| agent.events.try_recv().ok()).collect();
    assert!(!events.iter().any(|event| matches!(event, Event::Disconnected { .. })), "{events:?}");
    tokio::time::timeout(PATIENCE, agent.task).await.unwrap().unwrap().unwrap();
}
