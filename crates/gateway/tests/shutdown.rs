//! A gateway node's shutdown, from the devices' side, against a real node in-process (testkit
//! registry, TLS on 127.0.0.1:0): the listener closes first, every session is ended at the
//! configured rate as a server-initiated disconnect (MQTT 5: DISCONNECT 0x8B; both versions: a
//! TLS close_notify; the will published, the lifecycle event saying SERVER_INITIATED_DISCONNECT,
//! the connection history written before `Node::run` returns; persistent sessions kept
//! offline), and devices that do not read, do not send CONNECT or do not finish their handshake
//! cannot hold the node past its grace.
//!
//! Timing is asserted only as generous bounds: a lower bound for the rate, an upper bound far
//! above the grace for "cannot hang".

#[path = "support/chains.rs"]
mod chains;

use std::net::SocketAddr;
use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use certfleet_gateway::history::Flushed;
use certfleet_gateway::{BrokerConfig, LocalFabric, Node, ShutdownConfig, ShutdownReport};
use certfleet_mqtt::{
    Connect, MAX_PACKET_SIZE, Packet, Properties, ProtocolVersion, PubAck, Publish, QoS, ReasonCode, RetainHandling,
    Subscribe, Subscription, TopicFilter, TopicName, Will, decode, encode,
};

use certfleet_registry::PolicyName;
use certfleet_services::Caller;
use certfleet_testkit::{START, World};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;

const ALLOW_ALL: &str = r#"{"Version":"2012-10-17","Statement":[{"Effect":"Allow","Action":"iot:*","Resource":"*"}]}"#;

/// How long a test waits for what must come.
const PATIENCE: Duration = Duration::from_secs(30);

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

/// A node serving one account, a device certificate allowed everything, and the node's run.
struct Rig {
    world: World,
    caller: Caller,
    node: Arc<Node>,
    addr: SocketAddr,
    /// The account's ATS endpoint, sent as SNI.
    host: String,
    tls: Arc<rustls::ClientConfig>,
    stop: watch::Sender<bool>,
    run: JoinHandle<ShutdownReport>,
}

async fn start(shutdown: ShutdownConfig, broker: BrokerConfig, timeouts: Duration) -> Rig {
    let world = certfleet_testkit::world();
    // The gateway checks validity against the system clock.
    world.clock.advance(time::OffsetDateTime::now_utc() - START);
    let caller = world.caller();
    let services = world.services.clone();
    let builtin = chains::builtin_chains("shutdown root");
    let config = certfleet_gateway::Config {
        region: "us-east-1".into(),
        endpoint_domain: "certfleet.local".into(),
        default_account: caller.account.clone(),
        max_connections: 256,
        handshake_timeout: timeouts,
        connect_timeout: timeouts,
        change_poll_interval: Duration::from_millis(50),
        caches: Default::default(),
        test_endpoint_records_per_second: 10,
    };
    let node = Node::new(
        certfleet_gateway::NodeConfig {
            gateway: config,
            broker: BrokerConfig { connect_timeout: timeouts, ..broker },
            rules: Default::default(),
            fleet: Default::default(),
            history_sessions_per_certificate_per_hour: 60,
            policies: certfleet_gateway::Policies::Enforce,
            shutdown,
        },
        services.clone(),
        LocalFabric::new(),
        builtin,
        Arc::new(certfleet_egress::Egress::default()),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop, stopped) = watch::channel(false);
    let run = tokio::spawn(node.clone().run(listener, stopped));

    let created = services.create_keys_and_certificate(&caller, true).unwrap();
    let policy = PolicyName::parse("allow-all").unwrap();
    services.create_policy(&caller, &policy, ALLOW_ALL, &[]).unwrap();
    services
        .attach_policy(&caller, &policy, &services.certificate_arn(&caller.account, &created.certificate.id))
        .unwrap();
    let device = certfleet_pki::Certificate::from_pem(&created.certificate.pem).unwrap().der().to_vec();
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let tls = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AnyServer))
        .with_client_auth_cert(
            vec![CertificateDer::from(device)],
            PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(created.key_pair.pkcs8_der().to_vec())),
        )
        .unwrap();
    let account = services.lookup_account(&caller.account).unwrap().unwrap();
    let host = format!("{}-ats.iot.us-east-1.certfleet.local", account.endpoint_identifier);
    Rig { world, caller, node, addr, host, tls: Arc::new(tls), stop, run }
}

/// How a connection ended, as the device saw it.
#[derive(Debug, PartialEq, Eq)]
enum Closed {
    /// TLS close_notify, then the end of the stream.
    CloseNotify,
    /// The stream ended or failed without close_notify.
    Abruptly,
}

/// A device's connection and what it has read.
struct Device {
    tls: TlsStream<TcpStream>,
    buffer: BytesMut,
    version: ProtocolVersion,
}

impl Rig {
    /// A TLS connection of the device; `receive_buffer` shrinks its socket's receive buffer.
    async fn handshake(&self, receive_buffer: Option<u32>) -> TlsStream<TcpStream> {
        let socket = TcpSocket::new_v4().unwrap();
        if let Some(size) = receive_buffer {
            socket.set_recv_buffer_size(size).unwrap();
        }
        let tcp = socket.connect(self.addr).await.unwrap();
        let connector = TlsConnector::from(self.tls.clone());
        tokio::time::timeout(PATIENCE, connector.connect(ServerName::try_from(self.host.clone()).unwrap(), tcp))
            .await
            .unwrap()
            .unwrap()
    }

    /// A device connected (CONNACK success) with `client_id`.
    async fn connect(&self, version: ProtocolVersion, client_id: &str, persistent: bool, will: bool) -> Device {
        self.connect_with(version, client_id, persistent, will, None).await
    }

    async fn connect_with(
        &self,
        version: ProtocolVersion,
        client_id: &str,
        persistent: bool,
        will: bool,
        receive_buffer: Option<u32>,
    ) -> Device {
        let tls = self.handshake(receive_buffer).await;
        let mut device = Device { tls, buffer: BytesMut::new(), version };
        let mut properties = Properties::default();
        if persistent && version == ProtocolVersion::V5 {
            properties.session_expiry_interval = Some(600);
        }
        let will = will.then(|| Will {
            topic: TopicName::new(format!("wills/{client_id}")).unwrap(),
            payload: Bytes::from(format!("{client_id} is gone")),
            qos: QoS::AtLeastOnce,
            retain: false,
            properties: Properties::default(),
        });
        device
            .send(Packet::Connect(Box::new(Connect {
                protocol_version: version,
                clean_start: !persistent,
                keep_alive: 600,
                client_id: client_id.to_owned(),
                will,
                username: None,
                password: None,
                properties,
            })))
            .await;
        match device.next().await {
            Some(Packet::ConnAck(connack)) => assert_eq!(connack.reason_code, ReasonCode::SUCCESS, "{client_id}"),
            other => panic!("{client_id}: expected CONNACK, got {other:?}"),
        }
        device
    }

    /// Stops the node and waits for its run to end (drained and flushed).
    async fn shut_down(self) -> (ShutdownReport, Duration, Arc<Node>, World, Caller) {
        let began = Instant::now();
        self.stop.send(true).unwrap();
        let report = tokio::time::timeout(PATIENCE, self.run).await.expect("the node shut down in time").unwrap();
        (report, began.elapsed(), self.node, self.world, self.caller)
    }
}

impl Device {
    async fn send(&mut self, packet: Packet) {
        let mut bytes = BytesMut::new();
        encode(&packet, self.version, &mut bytes).unwrap();
        self.tls.write_all(&bytes).await.unwrap();
    }

    /// The next packet; `None` once the stream ended.
    async fn next(&mut self) -> Option<Packet> {
        loop {
            if let Some(packet) = decode(&mut self.buffer, self.version, MAX_PACKET_SIZE).unwrap() {
                return Some(packet);
            }
            self.buffer.reserve(8192);
            match tokio::time::timeout(PATIENCE, self.tls.read_buf(&mut self.buffer)).await {
                Ok(Ok(0)) | Ok(Err(_)) => return None,
                Ok(Ok(_)) => {}
                Err(_) => panic!("nothing from the server in {PATIENCE:?}"),
            }
        }
    }

    async fn subscribe(&mut self, filters: &[&str]) {
        let subscriptions = filters
            .iter()
            .map(|filter| Subscription {
                filter: TopicFilter::new(*filter).unwrap(),
                qos: QoS::AtLeastOnce,
                no_local: false,
                retain_as_published: false,
                retain_handling: RetainHandling::SendAtSubscribe,
            })
            .collect();
        let packet_id = certfleet_mqtt::PacketId::new(1).unwrap();
        self.send(Packet::Subscribe(Subscribe { packet_id, subscriptions, properties: Properties::default() })).await;
        match self.next().await {
            Some(Packet::SubAck(suback)) => {
                assert!(suback.reason_codes.iter().all(|code| code.code() < 0x80), "{suback:?}");
            }
            other => panic!("expected SUBACK, got {other:?}"),
        }
    }

    /// Reads (acknowledging QoS 1 messages) until the server closes: the packets, and how it
    /// closed.
    async fn until_closed(mut self) -> (Vec<Packet>, Closed) {
        let mut packets = Vec::new();
        loop {
            while let Some(packet) = decode(&mut self.buffer, self.version, MAX_PACKET_SIZE).unwrap() {
                if let Packet::Publish(Publish { qos: QoS::AtLeastOnce, packet_id: Some(packet_id), .. }) = &packet {
                    let ack = Packet::PubAck(PubAck::new(*packet_id));
                    let mut bytes = BytesMut::new();
                    encode(&ack, self.version, &mut bytes).unwrap();
                    let _ = self.tls.write_all(&bytes).await;
                }
                packets.push(packet);
            }
            self.buffer.reserve(8192);
            match tokio::time::timeout(PATIENCE, self.tls.read_buf(&mut self.buffer)).await {
                Ok(Ok(0)) => return (packets, Closed::CloseNotify),
                Ok(Err(_)) => return (packets, Closed::Abruptly),
                Ok(Ok(_)) => {}
                Err(_) => panic!("the server did not close in {PATIENCE:?}; got {packets:?}"),
            }
        }
    }
}

/// The value of an unlabelled metric.
fn gauge(metrics: &str, name: &str) -> u64 {
    metrics
        .lines()
        .find_map(|line| line.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or_else(|| panic!("no {name} in the metrics"))
}

fn disconnect_reason(packets: &[Packet]) -> Option<ReasonCode> {
    packets.iter().find_map(|packet| match packet {
        Packet::Disconnect(disconnect) => Some(disconnect.reason_code),
        _ => None,
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shutdown_ends_every_session_at_the_rate_as_a_server_initiated_disconnect() {
    let rate = 10;
    let shutdown = ShutdownConfig { disconnects_per_second: NonZeroU32::new(rate).unwrap(), grace: PATIENCE };
    let rig = start(shutdown, BrokerConfig::default(), Duration::from_secs(10)).await;

    // 15 persistent MQTT 5 devices and 14 MQTT 3.1.1 devices, each with a will; then a watcher
    // of the wills and lifecycle events, connected last so it is drained last (oldest first).
    let mut v5 = Vec::new();
    let mut v311 = Vec::new();
    for index in 0..15 {
        v5.push(rig.connect(ProtocolVersion::V5, &format!("five-{index}"), true, true).await);
    }
    for index in 0..14 {
        v311.push(rig.connect(ProtocolVersion::V311, &format!("three-{index}"), false, true).await);
    }
    let mut watcher = rig.connect(ProtocolVersion::V5, "watcher", false, false).await;
    watcher.subscribe(&["wills/#", "$aws/events/presence/disconnected/+"]).await;
    let sessions = 30;
    assert_eq!(rig.node.gateway().live.count(), sessions);

    let addr = rig.addr;
    let watching = tokio::spawn(watcher.until_closed());
    let v5_ends: Vec<_> = v5.into_iter().map(|device| tokio::spawn(device.until_closed())).collect();
    let v311_ends: Vec<_> = v311.into_iter().map(|device| tokio::spawn(device.until_closed())).collect();
    let (report, took, node, world, caller) = rig.shut_down().await;

    // The listener is closed: a new device is refused by the system.
    assert!(TcpStream::connect(addr).await.is_err(), "the listener still accepts");
    // Every session was told at the rate: 30 at 10 a second take at least 2.9 s.
    let drained = report.drained;
    assert_eq!((drained.paced, drained.closed_at_grace, drained.closed_before_connect, drained.aborted), (30, 0, 0, 0));
    assert!(took >= Duration::from_millis(2500), "30 sessions at 10/s ended in {took:?}");
    assert!(report.drained.elapsed >= Duration::from_millis(2500), "{report:?}");
    assert_eq!(report.history, Flushed::Written);

    for end in v5_ends {
        let (packets, closed) = end.await.unwrap();
        assert_eq!(disconnect_reason(&packets), Some(ReasonCode::SERVER_SHUTTING_DOWN), "{packets:?}");
        assert_eq!(closed, Closed::CloseNotify);
    }
    for end in v311_ends {
        let (packets, closed) = end.await.unwrap();
        assert!(packets.is_empty(), "MQTT 3.1.1 has no server DISCONNECT: {packets:?}");
        assert_eq!(closed, Closed::CloseNotify);
    }
    let (packets, closed) = watching.await.unwrap();
    assert_eq!((disconnect_reason(&packets), closed), (Some(ReasonCode::SERVER_SHUTTING_DOWN), Closed::CloseNotify));
    let published: Vec<&Publish> = packets
        .iter()
        .filter_map(|packet| match packet {
            Packet::Publish(publish) => Some(publish),
            _ => None,
        })
        .collect();
    let devices: Vec<String> =
        (0..15).map(|index| format!("five-{index}")).chain((0..14).map(|index| format!("three-{index}"))).collect();
    for client_id in &devices {
        let will = format!("wills/{client_id}");
        assert!(
            published.iter().any(|publish| publish.topic.as_ref().map(TopicName::as_str) == Some(will.as_str())),
            "no will of {client_id}"
        );
        let topic = format!("$aws/events/presence/disconnected/{client_id}");
        let event = published
            .iter()
            .find(|publish| publish.topic.as_ref().map(TopicName::as_str) == Some(topic.as_str()))
            .unwrap_or_else(|| panic!("no disconnected event of {client_id}"));
        let event: serde_json::Value = serde_json::from_slice(&event.payload).unwrap();
        assert_eq!(event["disconnectReason"], "SERVER_INITIATED_DISCONNECT", "{event}");
        assert_eq!(event["clientInitiatedDisconnect"], false, "{event}");
    }

    // Persistent sessions stay, offline, as for any disconnect.
    let metrics = node.render_metrics();
    assert!(metrics.contains("\ncertfleet_broker_offline_sessions 15\n"), "{metrics}");
    assert!(metrics.contains("\ncertfleet_gateway_shutdown_sessions_drained_total 30\n"), "{metrics}");
    assert!(metrics.contains("\ncertfleet_gateway_shutdown_sessions_draining 0\n"), "{metrics}");
    assert!(metrics.contains("\ncertfleet_gateway_shutdown_connections_aborted_total 0\n"), "{metrics}");

    // The history holds every disconnection, written before the node's run returned.
    let history = world.services.connection_history(&caller.account, None, START - time::Duration::days(1)).unwrap();
    assert_eq!(history.len(), sessions);
    for record in &history {
        assert!(record.disconnected_at.is_some(), "{record:?}");
        assert_eq!(record.disconnect_reason.as_deref(), Some("SERVER_INITIATED_DISCONNECT"), "{record:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn devices_that_do_not_read_connect_or_finish_their_handshake_cannot_hold_the_shutdown() {
    // Handshakes and CONNECT wait up to a minute; the grace is one second.
    let shutdown =
        ShutdownConfig { disconnects_per_second: NonZeroU32::new(1000).unwrap(), grace: Duration::from_secs(1) };
    // A small session queue, so that a subscriber that does not read fills it soon.
    let broker = BrokerConfig { max_queued_bytes: 256 * 1024, ..BrokerConfig::default() };
    let rig = start(shutdown, broker, Duration::from_secs(60)).await;

    // A subscriber that never reads, with a small receive buffer.
    let mut stuck = rig.connect_with(ProtocolVersion::V5, "stuck", false, false, Some(4096)).await;
    stuck.subscribe(&["flood/#"]).await;
    let reader = rig.connect(ProtocolVersion::V5, "reader", false, false).await;
    // A device that handshakes and never sends CONNECT, and one that never sends its ClientHello.
    let silent = rig.handshake(None).await;
    let mut no_hello = TcpStream::connect(rig.addr).await.unwrap();

    // Flood the stuck subscriber until its socket is full: until, with nothing published for a
    // while, its session still holds messages it cannot write.
    let mut publisher = rig.connect(ProtocolVersion::V5, "publisher", false, false).await;
    let payload = Bytes::from(vec![b'x'; 64 * 1024]);
    let queued = |node: &Node| gauge(&node.render_metrics(), "certfleet_broker_queued_bytes");
    let flooded = Instant::now();
    loop {
        assert!(flooded.elapsed() < PATIENCE, "the stuck subscriber's socket never filled");
        for _ in 0..16 {
            let publish = Publish {
                dup: false,
                qos: QoS::AtMostOnce,
                retain: false,
                topic: Some(TopicName::new("flood/x").unwrap()),
                packet_id: None,
                properties: Properties::default(),
                payload: payload.clone(),
            };
            publisher.send(Packet::Publish(publish)).await;
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
        let before = queued(&rig.node);
        tokio::time::sleep(Duration::from_millis(300)).await;
        if before > 0 && queued(&rig.node) == before {
            break;
        }
    }
    let publishing = tokio::spawn(publisher.until_closed());
    let reading = tokio::spawn(reader.until_closed());

    let (report, took, node, ..) = rig.shut_down().await;
    assert!(took < Duration::from_secs(10), "a grace of 1 s took {took:?}");
    // The stuck subscriber is the one connection left at the grace's end; the silent one (no
    // session yet) was told to close at once, the one without a hello dropped at once.
    assert_eq!(report.drained.aborted, 1, "{report:?}");
    assert_eq!(report.drained.paced + report.drained.closed_at_grace, 3, "{report:?}");
    assert_eq!(report.drained.closed_before_connect, 1, "{report:?}");
    assert_eq!(report.history, Flushed::Written);
    assert!(node.render_metrics().contains("\ncertfleet_gateway_shutdown_connections_aborted_total 1\n"));

    let (packets, _) = reading.await.unwrap();
    assert_eq!(disconnect_reason(&packets), Some(ReasonCode::SERVER_SHUTTING_DOWN));
    let (packets, _) = publishing.await.unwrap();
    assert_eq!(disconnect_reason(&packets), Some(ReasonCode::SERVER_SHUTTING_DOWN));
    let silent = Device { tls: silent, buffer: BytesMut::new(), version: ProtocolVersion::V5 };
    let (packets, closed) = silent.until_closed().await;
    assert_eq!((packets, closed), (Vec::new(), Closed::CloseNotify), "closed without an answer");
    let mut byte = [0u8; 1];
    let ended = tokio::time::timeout(PATIENCE, no_hello.read(&mut byte)).await.expect("closed");
    assert!(matches!(ended, Ok(0) | Err(_)), "{ended:?}");
    drop(stuck);
}
