//! What a stranger can make a gateway write to the registry, from the attacker's side: a flood
//! of handshakes to an account's test endpoint costs at most the account's rate in records (the
//! rest counted in the metrics), leaves another account's records alone, and a device
//! reconnecting in a loop is recorded in the connection history at most its hourly bound.
//!
//! The services' clock is a stopped manual clock, so every handshake of the flood falls in the
//! same one-second window whatever the machine's speed: the bound is exact, not timed.

#[path = "support/chains.rs"]
mod chains;

use std::sync::Arc;
use std::time::Duration;

use certfleet_gateway::events::{ConnectionObserver, OnRecord};
use certfleet_gateway::history::HistoryRecorder;
use certfleet_gateway::{Identity, Node};
use certfleet_pki::CertificateId;
use certfleet_services::*;
use certfleet_testkit::{START, World};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::watch;
use tokio_rustls::TlsConnector;

const PER_SECOND: u32 = 3;

#[derive(Debug)]
struct AnyServer;

impl ServerCertVerifier for AnyServer {
    fn verify_server_cert(
        &self,
        _: &CertificateDer<'_>,
        _: &[CertificateDer<'_>],
        _: &ServerName<'_>,
        _: &[u8],
        _: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
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
        rustls::crypto::aws_lc_rs::default_provider().signature_verification_algorithms.supported_schemes()
    }
}

struct Rig {
    world: World,
    node: Arc<Node>,
    addr: std::net::SocketAddr,
    _stop: watch::Sender<bool>,
}

async fn start(world: World, default_account: &Caller) -> Rig {
    let tls = chains::builtin_chains("bounds root");
    let config = certfleet_gateway::Config {
        region: "us-east-1".into(),
        endpoint_domain: "certfleet.local".into(),
        default_account: default_account.account.clone(),
        max_connections: 64,
        handshake_timeout: Duration::from_secs(10),
        connect_timeout: Duration::from_secs(10),
        change_poll_interval: Duration::from_millis(50),
        caches: Default::default(),
        test_endpoint_records_per_second: PER_SECOND,
    };
    let node = certfleet_gateway::Node::new(
        certfleet_gateway::NodeConfig {
            gateway: config,
            broker: certfleet_gateway::BrokerConfig::default(),
            rules: Default::default(),
            fleet: Default::default(),
            history_sessions_per_certificate_per_hour: 60,
            policies: certfleet_gateway::Policies::Enforce,
            shutdown: Default::default(),
        },
        world.services.clone(),
        certfleet_gateway::LocalFabric::new(),
        tls,
        Arc::new(certfleet_egress::Egress::default()),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop, stopped) = watch::channel(false);
    tokio::spawn(node.clone().run(listener, stopped));
    Rig { world, node, addr, _stop: stop }
}

impl Rig {
    fn test_endpoint(&self, caller: &Caller) -> String {
        let account = self.world.services.lookup_account(&caller.account).unwrap().unwrap();
        format!("{}-test.iot.us-east-1.certfleet.local", account.endpoint_identifier)
    }

    /// A stranger's handshake (no client certificate) and CONNECT to `host`; returns the
    /// CONNACK's return code.
    async fn probe(&self, host: &str, client_id: &str) -> u8 {
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(AnyServer))
            .with_no_client_auth();
        let tcp = TcpStream::connect(self.addr).await.unwrap();
        let mut tls = TlsConnector::from(Arc::new(config))
            .connect(ServerName::try_from(host.to_owned()).unwrap(), tcp)
            .await
            .unwrap();
        let mut body = vec![0, 4, b'M', b'Q', b'T', b'T', 4, 0x02, 0, 60];
        body.extend((client_id.len() as u16).to_be_bytes());
        body.extend(client_id.as_bytes());
        let mut packet = vec![0x10, body.len() as u8];
        packet.extend(body);
        tls.write_all(&packet).await.unwrap();
        let mut connack = [0u8; 4];
        tokio::time::timeout(Duration::from_secs(10), tls.read_exact(&mut connack)).await.unwrap().unwrap();
        assert_eq!(connack[..3], [0x20, 2, 0]);
        connack[3]
    }

    /// Waits (bounded) until the gateway has decided about `expected` records.
    async fn settled(&self, expected: u64) -> (u64, u64) {
        let probes = &self.node.gateway().probes;
        let counts = || {
            (
                probes.written.load(std::sync::atomic::Ordering::Relaxed),
                probes.dropped.load(std::sync::atomic::Ordering::Relaxed),
            )
        };
        for _ in 0..500 {
            let (written, dropped) = counts();
            if written + dropped >= expected {
                return counts();
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        panic!("the test endpoint records never settled: {:?}", counts());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_handshake_flood_to_a_test_endpoint_writes_at_most_the_accounts_rate() {
    let world = certfleet_testkit::world();
    let (victim, attacked) = (world.caller(), world.caller());
    let rig = start(world, &victim).await;
    let host = rig.test_endpoint(&attacked);

    let flood = 20;
    for index in 0..flood {
        // Every handshake is answered as before: CONNACK "not authorized" (5).
        assert_eq!(rig.probe(&host, &format!("flood-{index}")).await, 5);
    }
    let (written, dropped) = rig.settled(flood).await;
    assert_eq!((written, dropped), (u64::from(PER_SECOND), flood - u64::from(PER_SECOND)));
    let stored = rig.world.services.endpoint_probes(&attacked, None, 1000).unwrap();
    assert_eq!(stored.len(), PER_SECOND as usize);
    let metrics = rig.node.render_metrics();
    assert!(metrics.contains(&format!("certfleet_gateway_test_endpoint_records_dropped_total {}", flood - 3)));
    assert!(metrics.contains("certfleet_gateway_test_endpoint_records_written_total 3"));

    // Another account's test endpoint has a rate of its own, untouched by the flood.
    assert_eq!(rig.probe(&rig.test_endpoint(&victim), "victim-probe").await, 5);
    rig.settled(flood + 1).await;
    let victims = rig.world.services.endpoint_probes(&victim, None, 1000).unwrap();
    assert_eq!(victims.iter().map(|probe| probe.client_id.as_deref()).collect::<Vec<_>>(), [Some("victim-probe")]);

    // The next second of the services' clock, the attacked account is recorded again.
    rig.world.clock.advance(time::Duration::seconds(1));
    assert_eq!(rig.probe(&host, "next-second").await, 5);
    let (written, _) = rig.settled(flood + 2).await;
    assert_eq!(written, u64::from(PER_SECOND) + 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_device_reconnecting_in_a_loop_is_recorded_at_most_its_hourly_bound() {
    let world = certfleet_testkit::world();
    let caller = world.caller();
    let recorder = HistoryRecorder::start(world.services.clone(), 4);
    let identity = |fill: &[u8]| Identity {
        account: caller.account.clone(),
        certificate_id: CertificateId::of_der(fill),
        ca_certificate_id: None,
        not_after: START + time::Duration::days(30),
    };
    let (looping, neighbour) = (identity(b"looping"), identity(b"neighbour"));
    let via = certfleet_registry::ConnectionVia::new(Some("iot:Data-ATS"), Some("builtin"), Some("TLSv1.3"));
    let mut at = START;
    let mut on_record = Vec::new();
    for index in 0..50 {
        let session = format!("loop-{index}");
        // A loop that changes its client ID each time is bounded per certificate all the same.
        on_record.push(recorder.connected(&looping, &format!("client-{index}"), &session, &via, at));
        recorder.disconnected(&looping, &format!("client-{index}"), &session, at, "CLIENT_INITIATED_DISCONNECT");
        at += time::Duration::seconds(1);
    }
    // The sessions past the bound are off the record: not written, and logged at DEBUG only.
    assert_eq!(on_record[..4], [OnRecord::Yes; 4]);
    assert!(on_record[4..].iter().all(|decided| *decided == OnRecord::Coalesced));
    assert_eq!(recorder.connected(&neighbour, "neighbour", "neighbour-1", &via, at), OnRecord::Yes);
    assert_eq!(recorder.coalesced.load(std::sync::atomic::Ordering::Relaxed), 46);

    let history = || world.services.connection_history(&caller.account, None, START).unwrap();
    for _ in 0..500 {
        if history().len() >= 5 && history().iter().filter(|record| record.disconnected_at.is_some()).count() >= 4 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let written = history();
    let of_loop: Vec<_> = written.iter().filter(|record| record.certificate_id == looping.certificate_id).collect();
    assert_eq!(of_loop.len(), 4);
    assert!(of_loop.iter().all(|record| record.disconnected_at.is_some()));
    assert_eq!(written.iter().filter(|record| record.certificate_id == neighbour.certificate_id).count(), 1);
    assert!(written.iter().all(|record| record.via == via), "each record keeps how it came");

    // An hour later the device is recorded again.
    assert_eq!(
        recorder.connected(&looping, "client-again", "loop-again", &via, START + time::Duration::hours(2)),
        OnRecord::Yes
    );
    assert_eq!(recorder.coalesced.load(std::sync::atomic::Ordering::Relaxed), 46);
    let mut text = String::new();
    recorder.render_metrics(&mut text);
    assert!(text.contains("certfleet_connection_history_coalesced_total 46"));
}
