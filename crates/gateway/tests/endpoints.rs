//! Custom domains against a real gateway in-process (testkit registry, TLS on 127.0.0.1:0):
//! the ECDSA or the RSA leaf by the client's signature schemes, the TLS policy per domain,
//! DISABLED configurations, and policy changes reaching the next handshake but not live sessions.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use certfleet_gateway::{BrokerConfig, LocalFabric};
use certfleet_pki::{Issuer, KeyAlgorithm, pem_encode};
use certfleet_registry::{DomainStatus, PolicyName};
use certfleet_services::*;
use certfleet_testkit::{START, World};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::watch;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;
use zeroize::Zeroizing;

const DOMAIN: &str = "devices.example.com";
const ALLOW_ALL: &str = r#"{"Version":"2012-10-17","Statement":[{"Effect":"Allow","Action":"iot:*","Resource":"*"}]}"#;

struct Fleet {
    world: World,
    caller: Caller,
    addr: SocketAddr,
    ecdsa_leaf: Vec<u8>,
    rsa_leaf: Vec<u8>,
    device_chain: Vec<CertificateDer<'static>>,
    device_key: Vec<u8>,
    /// A further ECDSA server certificate for the domain (another root), not in any chain.
    next_arn: String,
    next_leaf: Vec<u8>,
    endpoints: Arc<certfleet_gateway::endpoints::Endpoints>,
    _stop: watch::Sender<bool>,
}

async fn start() -> Fleet {
    let now = time::OffsetDateTime::now_utc() - time::Duration::hours(1);
    let server_root =
        Issuer::generate_root("server root", "example", time::Duration::days(30), KeyAlgorithm::EcdsaP256, now)
            .unwrap();
    // The server root proves control of the custom domain (it is in the claims' trust store).
    let world = certfleet_testkit::world_with(certfleet_services::Config {
        domain_claims: certfleet_services::DomainClaims {
            trust_anchors: vec![server_root.certificate().clone()],
            ..Default::default()
        },
        ..Default::default()
    });
    // The gateway checks validity against the system clock.
    world.clock.advance(time::OffsetDateTime::now_utc() - START);
    world.services.attach_key_passphrase(Zeroizing::new(b"gateway test".to_vec()));
    let caller = world.caller();
    let services = world.services.clone();

    // The built-in chains (not served to the custom domain).
    let builtin_root =
        Issuer::generate_root("builtin root", "certfleet", time::Duration::days(30), KeyAlgorithm::EcdsaP256, now)
            .unwrap();
    let (builtin, builtin_key) = builtin_root
        .issue_server_certificate(
            "gateway",
            &["localhost".into()],
            time::Duration::days(30),
            KeyAlgorithm::EcdsaP256,
            now,
        )
        .unwrap();
    let builtin = certfleet_gateway::tls::certified_key_der(
        vec![CertificateDer::from(builtin.der().to_vec())],
        &PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(builtin_key.to_vec())),
    )
    .unwrap();
    let tls = certfleet_gateway::endpoints::BuiltinChains { default: builtin.clone(), large: builtin };

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
    let endpoints = node.gateway().endpoints.clone();
    tokio::spawn(node.run(listener, stopped));

    // Two server certificates for the custom domain: ECDSA and RSA.
    let mut arns = Vec::new();
    let mut leaves = Vec::new();
    let next_root =
        Issuer::generate_root("next root", "example", time::Duration::days(30), KeyAlgorithm::EcdsaP256, now).unwrap();
    for (root, algorithm) in [
        (&server_root, KeyAlgorithm::EcdsaP256),
        (&server_root, KeyAlgorithm::Rsa2048),
        (&next_root, KeyAlgorithm::EcdsaP256),
    ] {
        let (leaf, key) =
            root.issue_server_certificate(DOMAIN, &[DOMAIN.into()], time::Duration::days(30), algorithm, now).unwrap();
        leaves.push(leaf.der().to_vec());
        arns.push(
            services
                .import_server_certificate(
                    &caller,
                    &ServerCertificateImport {
                        certificate_pem: leaf.to_pem(),
                        private_key_pem: Zeroizing::new(pem_encode("PRIVATE KEY", &key)),
                        chain_pem: Some(root.certificate().to_pem()),
                        certificate_arn: None,
                    },
                )
                .unwrap(),
        );
    }
    services
        .create_domain_configuration(
            &caller,
            &DomainConfigurationDefinition {
                name: "devices".into(),
                domain_name: Some(DOMAIN.into()),
                server_certificate_arns: arns[..2].to_vec(),
                ..Default::default()
            },
        )
        .unwrap();

    // A device of the account, allowed everything.
    let created = services.create_keys_and_certificate(&caller, true).unwrap();
    let policy = PolicyName::parse("allow-all").unwrap();
    services.create_policy(&caller, &policy, ALLOW_ALL, &[]).unwrap();
    services
        .attach_policy(&caller, &policy, &services.certificate_arn(&caller.account, &created.certificate.id))
        .unwrap();
    let device_der = certfleet_pki::Certificate::from_pem(&created.certificate.pem).unwrap().der().to_vec();

    Fleet {
        world,
        caller,
        addr,
        ecdsa_leaf: leaves[0].clone(),
        rsa_leaf: leaves[1].clone(),
        device_chain: vec![CertificateDer::from(device_der)],
        device_key: created.key_pair.pkcs8_der().to_vec(),
        next_arn: arns[2].clone(),
        next_leaf: leaves[2].clone(),
        endpoints,
        _stop: stop,
    }
}

/// Accepts any server certificate, and offers only the given signature schemes (which is what
/// rustls puts in the ClientHello's signature_algorithms).
#[derive(Debug)]
struct Schemes(Vec<SignatureScheme>, Option<Vec<u8>>);

impl ServerCertVerifier for Schemes {
    fn verify_server_cert(
        &self,
        leaf: &CertificateDer<'_>,
        _: &[CertificateDer<'_>],
        _: &ServerName<'_>,
        _: &[u8],
        _: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        if self.1.as_deref() == Some(leaf.as_ref()) {
            return Err(rustls::Error::InvalidCertificate(rustls::CertificateError::UnknownIssuer));
        }
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        _: &[u8],
        _: &CertificateDer<'_>,
        _: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Ok(HandshakeSignatureValid::assertion())
    }

    fn verify_tls13_signature(
        &self,
        _: &[u8],
        _: &CertificateDer<'_>,
        _: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Ok(HandshakeSignatureValid::assertion())
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.clone()
    }
}

fn ecdsa_schemes() -> Vec<SignatureScheme> {
    vec![SignatureScheme::ECDSA_NISTP256_SHA256, SignatureScheme::ECDSA_NISTP384_SHA384]
}

fn rsa_schemes() -> Vec<SignatureScheme> {
    vec![
        SignatureScheme::RSA_PSS_SHA256,
        SignatureScheme::RSA_PSS_SHA384,
        SignatureScheme::RSA_PKCS1_SHA256,
        SignatureScheme::RSA_PKCS1_SHA384,
    ]
}

fn all_schemes() -> Vec<SignatureScheme> {
    [ecdsa_schemes(), rsa_schemes()].concat()
}

impl Fleet {
    async fn handshake(
        &self,
        schemes: Vec<SignatureScheme>,
        versions: &[&'static rustls::SupportedProtocolVersion],
    ) -> std::io::Result<TlsStream<TcpStream>> {
        self.handshake_refusing(schemes, versions, None).await
    }

    /// A handshake whose client refuses the server leaf `refused` (unknown_ca).
    async fn handshake_refusing(
        &self,
        schemes: Vec<SignatureScheme>,
        versions: &[&'static rustls::SupportedProtocolVersion],
        refused: Option<Vec<u8>>,
    ) -> std::io::Result<TlsStream<TcpStream>> {
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let config = rustls::ClientConfig::builder_with_provider(provider)
            .with_protocol_versions(versions)
            .unwrap()
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(Schemes(schemes, refused)))
            .with_client_auth_cert(
                self.device_chain.clone(),
                PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(self.device_key.clone())),
            )
            .unwrap();
        let tcp = TcpStream::connect(self.addr).await?;
        let connector = TlsConnector::from(Arc::new(config));
        tokio::time::timeout(
            Duration::from_secs(10),
            connector.connect(ServerName::try_from(DOMAIN.to_owned()).unwrap(), tcp),
        )
        .await
        .map_err(|_| std::io::Error::other("handshake timed out"))?
    }

    /// A handshake and an MQTT 3.1.1 CONNECT; returns the stream after a successful CONNACK.
    async fn connect(&self, client_id: &str) -> TlsStream<TcpStream> {
        let mut tls = self.handshake(all_schemes(), &[&rustls::version::TLS13, &rustls::version::TLS12]).await.unwrap();
        let mut body = vec![0, 4, b'M', b'Q', b'T', b'T', 4, 0x02, 0, 60];
        body.extend((client_id.len() as u16).to_be_bytes());
        body.extend(client_id.as_bytes());
        let mut packet = vec![0x10, body.len() as u8];
        packet.extend(body);
        tls.write_all(&packet).await.unwrap();
        let mut connack = [0u8; 4];
        tokio::time::timeout(Duration::from_secs(10), tls.read_exact(&mut connack)).await.unwrap().unwrap();
        assert_eq!(connack, [0x20, 2, 0, 0], "CONNACK accepted");
        tls
    }

    fn update(&self, update: DomainConfigurationUpdate) {
        self.world.services.update_domain_configuration(&self.caller, "devices", &update).unwrap();
    }
}

fn served_leaf(tls: &TlsStream<TcpStream>) -> Vec<u8> {
    tls.get_ref().1.peer_certificates().unwrap()[0].to_vec()
}

async fn ping(tls: &mut TlsStream<TcpStream>) {
    tls.write_all(&[0xC0, 0]).await.unwrap();
    let mut pong = [0u8; 2];
    tokio::time::timeout(Duration::from_secs(10), tls.read_exact(&mut pong)).await.unwrap().unwrap();
    assert_eq!(pong, [0xD0, 0], "PINGRESP");
}

/// Retries `attempt` until it returns true: changes reach the gateway through its change feed.
async fn eventually(what: &str, mut attempt: impl AsyncFnMut() -> bool) {
    for _ in 0..100 {
        if attempt().await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("timed out waiting for {what}");
}

const BOTH: [&rustls::SupportedProtocolVersion; 2] = [&rustls::version::TLS13, &rustls::version::TLS12];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_leaf_follows_the_clients_signature_schemes() {
    let fleet = start().await;
    for versions in [&BOTH[..], &[&rustls::version::TLS13], &[&rustls::version::TLS12]] {
        let ecdsa = fleet.handshake(ecdsa_schemes(), versions).await.unwrap();
        assert_eq!(served_leaf(&ecdsa), fleet.ecdsa_leaf, "{versions:?}");
        let rsa = fleet.handshake(rsa_schemes(), versions).await.unwrap();
        assert_eq!(served_leaf(&rsa), fleet.rsa_leaf, "{versions:?}");
        let both = fleet.handshake(all_schemes(), versions).await.unwrap();
        assert_eq!(served_leaf(&both), fleet.ecdsa_leaf, "{versions:?}");
    }
    // And a device gets through to MQTT.
    let mut session = fleet.connect("scheme-device").await;
    ping(&mut session).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_history_records_the_endpoint_chain_and_tls_version_of_each_connection() {
    let fleet = start().await;
    let mut session = fleet.connect("history-device").await;
    ping(&mut session).await;
    let services = &fleet.world.services;
    let chain = services.describe_domain_configuration(&fleet.caller, "devices").unwrap().current_chain.join("+");
    let since = time::OffsetDateTime::now_utc() - time::Duration::hours(1);
    eventually("the session in the history", async || {
        !services.connection_history(&fleet.caller.account, None, since).unwrap().is_empty()
    })
    .await;
    let history = services.connection_history(&fleet.caller.account, None, since).unwrap();
    let record = history.iter().find(|record| record.client_id == "history-device").expect("recorded");
    assert_eq!(
        (record.via.endpoint(), record.via.chain(), record.via.tls_version()),
        (Some("devices"), Some(chain.as_str()), Some("TLSv1.3"))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_policy_applies_to_the_next_handshake_and_live_sessions_stay() {
    let fleet = start().await;
    assert!(fleet.handshake(all_schemes(), &[&rustls::version::TLS12]).await.is_ok());
    let mut live = fleet.connect("long-lived").await;
    assert_eq!(live.get_ref().1.protocol_version(), Some(rustls::ProtocolVersion::TLSv1_3));

    fleet.update(DomainConfigurationUpdate {
        security_policy: Some("IoTSecurityPolicy_TLS13_1_3_2022_10".into()),
        ..Default::default()
    });
    eventually("the TLS 1.3-only policy", async || {
        fleet.handshake(all_schemes(), &[&rustls::version::TLS12]).await.is_err()
    })
    .await;
    // TLS 1.3 clients still get in, and the session from before is untouched.
    let tls13 = fleet.handshake(all_schemes(), &[&rustls::version::TLS13]).await.unwrap();
    assert_eq!(served_leaf(&tls13), fleet.ecdsa_leaf);
    ping(&mut live).await;

    // A TLS 1.2-only policy refuses TLS 1.3-only clients.
    fleet.update(DomainConfigurationUpdate {
        security_policy: Some("IoTSecurityPolicy_TLS12_1_2_2022_10".into()),
        ..Default::default()
    });
    eventually("the TLS 1.2-only policy", async || {
        fleet.handshake(all_schemes(), &[&rustls::version::TLS13]).await.is_err()
    })
    .await;
    let tls12 = fleet.handshake(rsa_schemes(), &[&rustls::version::TLS12]).await.unwrap();
    assert_eq!(served_leaf(&tls12), fleet.rsa_leaf);
    ping(&mut live).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_disabled_configuration_refuses_handshakes() {
    let fleet = start().await;
    fleet.update(DomainConfigurationUpdate { status: Some(DomainStatus::Disabled), ..Default::default() });
    eventually("the configuration to be disabled", async || fleet.handshake(all_schemes(), &BOTH).await.is_err()).await;
    // Still refused a little later (not a one-off).
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(fleet.handshake(ecdsa_schemes(), &BOTH).await.is_err());

    fleet.update(DomainConfigurationUpdate { status: Some(DomainStatus::Enabled), ..Default::default() });
    eventually("the configuration to be enabled again", async || fleet.handshake(all_schemes(), &BOTH).await.is_ok())
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_guard_reverts_and_its_report_survives_the_revert() {
    let fleet = start().await;
    let services = &fleet.world.services;
    services.set_next_chain(&fleet.caller, "devices", std::slice::from_ref(&fleet.next_arn)).unwrap();
    let settings = MigrationSettings { drain_per_second: 100.0, guard_max_failures: Some(3) };
    services.migrate_domain_configuration(&fleet.caller, "devices", settings).unwrap();
    eventually("the next chain to be served", async || {
        matches!(fleet.handshake(ecdsa_schemes(), &BOTH).await, Ok(tls) if served_leaf(&tls) == fleet.next_leaf)
    })
    .await;
    // Clients that do not trust the next chain fail their handshakes until the guard reverts.
    eventually("the guard to revert", async || {
        let _ = fleet.handshake_refusing(ecdsa_schemes(), &BOTH, Some(fleet.next_leaf.clone())).await;
        !services.describe_domain_configuration(&fleet.caller, "devices").unwrap().serving_next
    })
    .await;
    let config = services.describe_domain_configuration(&fleet.caller, "devices").unwrap();
    let migration = Migration::parse(config.migration.as_deref().unwrap()).unwrap();
    assert!(migration.revert_reason.as_deref().unwrap().starts_with("guard: 3 handshakes failed"), "{migration:?}");
    // The gateway follows the revert (the current chain again) and still reports the trip.
    eventually("the current chain to be served again", async || {
        matches!(fleet.handshake(ecdsa_schemes(), &BOTH).await, Ok(tls) if served_leaf(&tls) == fleet.ecdsa_leaf)
    })
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let report = fleet.endpoints.report(&fleet.caller.account, "devices");
    let drain = report.drain.expect("a drain report");
    assert_eq!(drain.migration_id, migration.id, "the report follows the revert");
    assert!(drain.guard_tripped.as_deref().is_some_and(|r| r.starts_with("guard: 3 handshakes failed")), "{drain:?}");

    // A new migration starts with a clean guard.
    services.migrate_domain_configuration(&fleet.caller, "devices", MigrationSettings::default()).unwrap();
    eventually("the new migration to reach the gateway", async || {
        fleet.endpoints.report(&fleet.caller.account, "devices").drain.is_some_and(|d| d.migration_id != migration.id)
    })
    .await;
    assert_eq!(fleet.endpoints.report(&fleet.caller.account, "devices").drain.unwrap().guard_tripped, None);
}
