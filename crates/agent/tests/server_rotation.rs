//! The agent against the real rotation service: a gateway in-process (testkit registry, policy
//! authorizer, connection history), the `RotationRunner` publishing through the broker, and a
//! bridge standing in for the rules engine's system rules (not built yet): an MQTT client
//! subscribed to `management/topic/+/{csr_res,crt_ack,crt_err}` that hands each message to
//! `RotationRunner::handle_device_message` with the publishing session's certificate (looked up
//! in the gateway's live sessions, as `principal()` would give it).

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use certfleet_agent::connection::{Identity, Incoming, Session, Settings};
use certfleet_agent::store::{Slot, Store};
use certfleet_agent::{Agent, Config, Credential, Event, KeyAlgorithm, TrustBundle};
use certfleet_gateway::fabric::Message;
use certfleet_gateway::{BrokerConfig, EventSink, LocalFabric};
use certfleet_mqtt::{PayloadFormat, Properties, ProtocolVersion, QoS, TopicFilter, TopicName};
use certfleet_pki::{CertificateId, Issuer};
use certfleet_registry::{
    AccountId, PolicyName, RotationSource, RotationState, SubjectRule, ThingName, ThingPrincipalType,
};
use certfleet_services::DeviceTopic;
use certfleet_testkit::{START, TempDir};
use certfleet_workers::{RotationPublisher, RotationRunner};
use rustls_pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName};
use tokio::sync::watch;

const DEVICE_POLICY: &str = include_str!("../policy/device-policy-strict.json");
const BRIDGE_POLICY: &str =
    r#"{"Version":"2012-10-17","Statement":[{"Effect":"Allow","Action":"iot:*","Resource":"*"}]}"#;
const PATIENCE: Duration = Duration::from_secs(30);

/// The broker as the rotation service's publisher (what `certfleet` wires in the server).
struct BrokerPublisher(Arc<dyn EventSink>);

impl RotationPublisher for BrokerPublisher {
    fn publish(&self, account: &AccountId, topic: &str, payload: Bytes) -> bool {
        let Ok(topic) = TopicName::new(topic) else { return false };
        self.0.publish_event(
            account,
            Message {
                topic,
                payload,
                qos: QoS::AtLeastOnce,
                retain: false,
                properties: Properties {
                    payload_format_indicator: Some(PayloadFormat::Utf8),
                    content_type: Some("application/json".to_owned()),
                    ..Properties::default()
                },
                expires_at: None,
                publisher: None,
            },
        );
        true
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_agent_rotates_through_the_rotation_service() {
    let world = certfleet_testkit::world();
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
    let names = vec!["localhost".to_owned(), "127.0.0.1".to_owned()];
    let (certificate, key) = server_root
        .issue_server_certificate(
            "gateway",
            &names,
            time::Duration::days(30),
            certfleet_pki::KeyAlgorithm::EcdsaP256,
            now,
        )
        .unwrap();
    let key = certfleet_gateway::tls::certified_key_der(
        vec![CertificateDer::from(certificate.der().to_vec())],
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
    let (_stop, stopped) = watch::channel(false);
    tokio::spawn(node.clone().run(listener, stopped.clone()));
    let broker = node.broker().clone();
    let runner = RotationRunner::new(services.clone(), Arc::new(BrokerPublisher(broker)), Default::default());

    let device_policy = PolicyName::parse("device-rotation").unwrap();
    services.create_policy(&caller, &device_policy, DEVICE_POLICY, &[]).unwrap();
    let bridge_policy = PolicyName::parse("rules-bridge").unwrap();
    services.create_policy(&caller, &bridge_policy, BRIDGE_POLICY, &[]).unwrap();
    let (server_roots, _) = TrustBundle::from_pem(server_root.certificate().to_pem().as_bytes()).unwrap();
    let device_root = services.device_issuer().unwrap().certificate().to_pem();
    let (device_roots, _) = TrustBundle::from_pem(device_root.as_bytes()).unwrap();

    // The device: an ACTIVE certificate with the device policy, provisioned in its store.
    let dir = TempDir::new("agent-server-rotation");
    let device_key = certfleet_agent::generate_key(KeyAlgorithm::P256).unwrap();
    let old = services
        .create_certificate_from_csr(&caller, &certfleet_agent::build_csr(&device_key, "sensor-1").unwrap(), true)
        .unwrap();
    let old_arn = services.certificate_arn(&caller.account, &old.id);
    services.attach_policy(&caller, &device_policy, &old_arn).unwrap();
    // The strict device policy: the client ID is the name of the thing attached to the certificate.
    let thing = ThingName::parse("sensor-1").unwrap();
    services.create_thing(&caller, &thing, &Default::default()).unwrap();
    services.attach_thing_principal(&caller, &thing, &old_arn, ThingPrincipalType::NonExclusive).unwrap();
    let store = Store::open(dir.path()).unwrap();
    store.create_slot(&Slot::bootstrap()).unwrap();
    store.write_certificate(&Slot::bootstrap(), &old.pem).unwrap();
    store.write_key(&Slot::bootstrap(), &device_key.serialize_pem()).unwrap();

    // The bridge (the future system rules).
    let bridge_key = certfleet_agent::generate_key(KeyAlgorithm::P256).unwrap();
    let bridge = services
        .create_certificate_from_csr(&caller, &certfleet_agent::build_csr(&bridge_key, "rules-bridge").unwrap(), true)
        .unwrap();
    services.attach_policy(&caller, &bridge_policy, &services.certificate_arn(&caller.account, &bridge.id)).unwrap();
    let mut roots = rustls::RootCertStore::empty();
    roots.add(CertificateDer::from(server_root.certificate().der().to_vec())).unwrap();
    let settings = Settings {
        endpoint: addr.to_string(),
        server_name: ServerName::try_from("localhost").unwrap(),
        roots: Arc::new(roots),
        alpn: true,
        version: ProtocolVersion::V5,
        client_id: "rules-bridge".into(),
        keep_alive: Duration::from_secs(30),
        connect_timeout: Duration::from_secs(10),
    };
    let filters: Vec<TopicFilter> = ["csr_res", "crt_ack", "crt_err"]
        .iter()
        .map(|name| TopicFilter::new(format!("management/topic/+/{name}")).unwrap())
        .collect();
    let identity = Identity::from_pem(&bridge.pem, &bridge_key.serialize_pem()).unwrap();
    let mut session = Session::open(&settings, &identity, &filters).await.unwrap();
    let bridge_runner = runner.clone();
    let bridge_plane = node.data_plane();
    let bridge_caller = caller.clone();
    tokio::spawn(async move {
        while let Ok(incoming) = session.next().await {
            let Incoming::Message { topic, payload } = incoming else { continue };
            let levels: Vec<&str> = topic.split('/').collect();
            let (Some(client_id), Some(topic)) = (levels.get(2), levels.get(3).and_then(|t| DeviceTopic::parse(t)))
            else {
                continue;
            };
            let client_id = client_id.to_string();
            let principal: Option<CertificateId> = bridge_plane
                .connected_clients(&bridge_caller.account)
                .into_iter()
                .rev()
                .find(|client| client.client_id.as_deref() == Some(client_id.as_str()))
                .map(|client| client.certificate_id);
            let Some(principal) = principal else { continue };
            let mut value: serde_json::Value = serde_json::from_slice(&payload).unwrap();
            value["clientid"] = client_id.clone().into();
            let runner = bridge_runner.clone();
            let account = bridge_caller.account.clone();
            tokio::task::spawn_blocking(move || {
                runner.handle_device_message(&account, &client_id, &principal, topic, &value)
            })
            .await
            .unwrap()
            .unwrap();
        }
    });

    // The agent connects; its session lands in the connection history.
    let mut agent_config =
        Config::new(addr.to_string(), "localhost", "sensor-1", dir.path(), server_roots, device_roots);
    agent_config.backoff =
        certfleet_agent::Backoff { initial: Duration::from_millis(50), max: Duration::from_millis(400) };
    agent_config.alpn = true;
    let (agent, mut events) = Agent::new(agent_config).unwrap();
    let (stop_agent, agent_stopped) = watch::channel(false);
    let agent_task = tokio::spawn(agent.run(agent_stopped));
    let mut until = async |what: &str, wanted: &dyn Fn(&Event) -> bool| {
        let wait = async {
            while let Some(event) = events.recv().await {
                if wanted(&event) {
                    return Some(event);
                }
            }
            None
        };
        tokio::time::timeout(PATIENCE, wait).await.ok().flatten().unwrap_or_else(|| panic!("no {what}"))
    };
    until("connection", &|event| matches!(event, Event::Connected { credential: Credential::Current, .. })).await;
    let history_has_it = async {
        loop {
            let seen = certfleet_registry::read(services.store(), |tx| {
                tx.connections_since(&caller.account, Some(&old.id), time::OffsetDateTime::UNIX_EPOCH)
            })
            .unwrap();
            if !seen.is_empty() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    };
    tokio::time::timeout(PATIENCE, history_has_it).await.unwrap();

    // The operator starts a campaign; the sweep sends csr_req.
    let campaign = services
        .start_rotation(&caller, std::slice::from_ref(&old.id), RotationSource::Manual, SubjectRule::KeepOld)
        .unwrap();
    let sweeper = runner.clone();
    tokio::task::spawn_blocking(move || sweeper.sweep()).await.unwrap().unwrap();

    let acked = until("ack", &|event| matches!(event, Event::Acked { .. })).await;
    let Event::Acked { certificate_id: new } = acked else { unreachable!() };
    let retired = async {
        loop {
            let summary = services.describe_rotation_campaign(&caller, &campaign.campaign.id).unwrap();
            if summary.counts.get(&RotationState::Retired) == Some(&1) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    };
    tokio::time::timeout(PATIENCE, retired).await.expect("the rotation is retired");
    assert_eq!(outcome(services.describe_certificate(&caller, &old.id)), "NotFound", "the old certificate is deleted");
    let new_certificate = services.describe_certificate(&caller, &new).unwrap();
    assert_eq!(new_certificate.status, certfleet_registry::CertificateStatus::Active);
    let rotation = &services.list_rotations(&caller, &Default::default(), None, 10).unwrap()[0];
    assert_eq!(rotation.new_certificate_id.as_ref(), Some(&new));
    let _ = stop_agent.send(true);
    tokio::time::timeout(PATIENCE, agent_task).await.unwrap().unwrap().unwrap();
}

fn outcome<T>(result: Result<T, certfleet_services::Error>) -> &'static str {
    certfleet_testkit::outcome(result)
}

/// The agent's `crt_err` codes are the service's, name for name: a code the agent sends is
/// never "unknown" to the service (which would decide as for an old agent).
#[test]
fn the_agents_error_codes_are_the_services() {
    use certfleet_agent::rotation::ErrorCode;
    use certfleet_services::DeviceErrorCode;
    let agent: Vec<&str> = ErrorCode::ALL.iter().map(|code| code.as_str()).collect();
    let service: Vec<&str> = DeviceErrorCode::ALL.iter().map(|code| code.as_str()).collect();
    assert_eq!(agent, service);
}
