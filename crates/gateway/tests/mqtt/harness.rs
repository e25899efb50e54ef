//! A broker served over in-memory streams, and a tiny MQTT client on the shared codec.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use certfleet_gateway::broker::{AllowAll, Authorizer, Broker, BrokerConfig};
use certfleet_gateway::events::{ConnectionObserver, OnRecord};
use certfleet_gateway::fabric::{Fabric, LocalFabric};
use certfleet_gateway::identity::{Identity, Refusal};
use certfleet_gateway::listener::{Authenticated, Connection};
use certfleet_gateway::live::LiveSessions;
use certfleet_gateway::rules::PublishTap;
use certfleet_gateway::serve;
use certfleet_mqtt::{
    ConnAck, Connect, Disconnect, MAX_PACKET_SIZE, Packet, PacketId, Properties, ProtocolVersion, PubAck, PubComp,
    PubRec, PubRel, Publish, QoS, ReasonCode, RetainHandling, SubAck, Subscribe, Subscription, TopicFilter, TopicName,
    Will, decode, encode,
};
use certfleet_pki::CertificateId;
use certfleet_registry::AccountId;
use time::OffsetDateTime;
use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream};

pub const ACCOUNT_A: &str = "111111111111";
pub const ACCOUNT_B: &str = "222222222222";

/// How long a test waits for something that should come (virtual time: tests run paused).
const PATIENCE: Duration = Duration::from_secs(30);

pub fn identity(account: &str, certificate: u32) -> Identity {
    identity_until(account, certificate, OffsetDateTime::now_utc() + time::Duration::days(365))
}

pub fn identity_until(account: &str, certificate: u32, not_after: OffsetDateTime) -> Identity {
    Identity {
        account: AccountId::parse(account).unwrap(),
        certificate_id: CertificateId::parse(&format!("{certificate:064x}")).unwrap(),
        ca_certificate_id: None,
        not_after,
    }
}

/// What the observer was told, in order: ("connected" | reason, client ID).
#[derive(Default)]
pub struct Recorder {
    pub seen: Mutex<Vec<(String, String)>>,
}

impl ConnectionObserver for Recorder {
    fn connected(
        &self,
        _identity: &Identity,
        client_id: &str,
        _session_identifier: &str,
        _via: &certfleet_registry::ConnectionVia,
        _at: OffsetDateTime,
    ) -> OnRecord {
        self.seen.lock().unwrap().push(("connected".into(), client_id.into()));
        OnRecord::Yes
    }

    fn disconnected(
        &self,
        _identity: &Identity,
        client_id: &str,
        _session_identifier: &str,
        _at: OffsetDateTime,
        reason: &str,
    ) {
        self.seen.lock().unwrap().push((reason.into(), client_id.into()));
    }
}

/// Refuses what starts with `deny/`: connecting as, publishing to, subscribing to, receiving from.
pub struct DenyPrefix;

impl Authorizer for DenyPrefix {
    fn connect(&self, _identity: &Identity, client_id: &str) -> bool {
        !client_id.starts_with("deny")
    }

    fn publish(&self, _identity: &Identity, _client_id: &str, topic: &str, _retain: bool) -> bool {
        !topic.starts_with("deny/")
    }

    fn subscribe(&self, _identity: &Identity, _client_id: &str, filter: &str) -> bool {
        !filter.starts_with("deny/")
    }

    fn receive(&self, _identity: &Identity, client_id: &str, topic: &str) -> bool {
        !(topic.starts_with("secret/") && client_id.starts_with("nosy"))
    }
}

/// The policy engine over one policy document, with only the client ID in the context (what the
/// gateway's `PolicyAuthorizer` does per certificate, without a registry).
pub struct PolicyOnly {
    policy: certfleet_policy::Policy,
}

impl PolicyOnly {
    /// `statements` with `~` standing for `arn:aws:iot:us-east-1:111111111111:`.
    pub fn new(statements: &str) -> Self {
        let document = format!(r#"{{"Version":"2012-10-17","Statement":[{}]}}"#, statements.replace('~', ARN));
        PolicyOnly { policy: certfleet_policy::Policy::parse(&document).unwrap() }
    }

    fn allows(&self, client_id: &str, action: certfleet_policy::Action, name: &str) -> bool {
        let context = certfleet_policy::Context { client_id: client_id.into(), ..Default::default() };
        let resource = format!("{ARN}{}/{name}", action.resource_type());
        let request = certfleet_policy::Request { action, resource: &resource, context: &context };
        certfleet_policy::evaluate(std::slice::from_ref(&self.policy), &request).is_allowed()
    }
}

const ARN: &str = "arn:aws:iot:us-east-1:111111111111:";

impl Authorizer for PolicyOnly {
    fn connect(&self, _identity: &Identity, client_id: &str) -> bool {
        self.allows(client_id, certfleet_policy::Action::Connect, client_id)
    }

    fn publish(&self, _identity: &Identity, client_id: &str, topic: &str, retain: bool) -> bool {
        self.allows(client_id, certfleet_policy::Action::Publish, topic)
            && (!retain || self.allows(client_id, certfleet_policy::Action::RetainPublish, topic))
    }

    fn subscribe(&self, _identity: &Identity, client_id: &str, filter: &str) -> bool {
        self.allows(client_id, certfleet_policy::Action::Subscribe, filter)
    }

    fn receive(&self, _identity: &Identity, client_id: &str, topic: &str) -> bool {
        self.allows(client_id, certfleet_policy::Action::Receive, topic)
    }
}

pub struct Harness {
    pub broker: Arc<Broker>,
    pub live: Arc<LiveSessions>,
    pub recorder: Arc<Recorder>,
}

impl Harness {
    pub fn new() -> Self {
        Harness::with(BrokerConfig::default(), Arc::new(AllowAll))
    }

    pub fn with_config(config: BrokerConfig) -> Self {
        Harness::with(config, Arc::new(AllowAll))
    }

    pub fn with(config: BrokerConfig, authorizer: Arc<dyn Authorizer>) -> Self {
        Harness::on_fabric(config, authorizer, LocalFabric::new())
    }

    /// A node on a fabric shared with other harnesses.
    pub fn on_fabric(config: BrokerConfig, authorizer: Arc<dyn Authorizer>, fabric: Arc<dyn Fabric>) -> Self {
        Harness::build(config, authorizer, fabric, None)
    }

    /// A broker whose device messages go to `tap` (a rules engine).
    pub fn with_tap(tap: Arc<dyn PublishTap>) -> Self {
        Harness::build(BrokerConfig::default(), Arc::new(AllowAll), LocalFabric::new(), Some(tap))
    }

    fn build(
        config: BrokerConfig,
        authorizer: Arc<dyn Authorizer>,
        fabric: Arc<dyn Fabric>,
        tap: Option<Arc<dyn PublishTap>>,
    ) -> Self {
        let live = Arc::new(LiveSessions::default());
        let recorder = Arc::new(Recorder::default());
        let broker = Broker::new(config, fabric, recorder.clone(), authorizer, live.clone(), tap);
        Harness { broker, live, recorder }
    }

    /// A served connection of `identity` that has sent nothing yet.
    pub fn open(&self, identity: &Identity, version: ProtocolVersion) -> Client {
        let peer: SocketAddr = "192.0.2.7:50000".parse().unwrap();
        let membership = self.live.join(identity.clone(), None, "TLSv1.3", peer, OffsetDateTime::now_utc());
        let auth = Ok(Authenticated { identity: identity.clone(), membership });
        self.open_with(auth, version)
    }

    /// A served connection the registry refused.
    pub fn open_refused(&self, refusal: Refusal, version: ProtocolVersion) -> Client {
        self.open_with(Err(refusal), version)
    }

    fn open_with(&self, auth: Result<Authenticated, Refusal>, version: ProtocolVersion) -> Client {
        let (client_side, server_side) = tokio::io::duplex(256 * 1024);
        let connection =
            Connection { peer: "192.0.2.7:50000".parse().unwrap(), sni: None, tls_version: "TLSv1.3", auth };
        let task = tokio::spawn(serve(self.broker.clone(), server_side, connection));
        Client { stream: client_side, buffer: BytesMut::new(), version, task }
    }

    /// Connects and expects CONNACK success.
    pub async fn connect(&self, identity: &Identity, options: Options) -> (Client, ConnAck) {
        let mut client = self.open(identity, options.version);
        let connack = client.connect(options).await;
        assert_eq!(connack.reason_code, ReasonCode::SUCCESS, "{connack:?}");
        (client, connack)
    }
}

/// A CONNECT's settings.
#[derive(Clone)]
pub struct Options {
    pub version: ProtocolVersion,
    pub client_id: String,
    pub clean_start: bool,
    pub keep_alive: u16,
    pub will: Option<Will>,
    pub properties: Properties,
}

impl Options {
    pub fn v5(client_id: &str) -> Self {
        Options {
            version: ProtocolVersion::V5,
            client_id: client_id.into(),
            clean_start: true,
            keep_alive: 300,
            will: None,
            properties: Properties::default(),
        }
    }

    pub fn v311(client_id: &str) -> Self {
        Options { version: ProtocolVersion::V311, ..Options::v5(client_id) }
    }

    /// Keeps the session: clean start 0, and for MQTT 5 a session expiry of `seconds`.
    pub fn persistent(mut self, seconds: u32) -> Self {
        self.clean_start = false;
        if self.version == ProtocolVersion::V5 {
            self.properties.session_expiry_interval = Some(seconds);
        }
        self
    }

    pub fn will(mut self, topic: &str, payload: &str) -> Self {
        self.will = Some(Will {
            topic: TopicName::new(topic).unwrap(),
            payload: Bytes::from(payload.to_owned()),
            qos: QoS::AtLeastOnce,
            retain: false,
            properties: Properties::default(),
        });
        self
    }

    pub fn will_delay(mut self, seconds: u32) -> Self {
        if let Some(will) = &mut self.will {
            will.properties.will_delay_interval = Some(seconds);
        }
        self
    }
}

pub fn id(value: u16) -> PacketId {
    PacketId::new(value).unwrap()
}

pub fn publish(topic: &str, payload: &str, qos: QoS, packet_id: Option<u16>) -> Publish {
    Publish {
        dup: false,
        qos,
        retain: false,
        topic: Some(TopicName::new(topic).unwrap()),
        packet_id: packet_id.map(id),
        properties: Properties::default(),
        payload: Bytes::from(payload.to_owned()),
    }
}

pub fn subscription(filter: &str, qos: QoS) -> Subscription {
    Subscription {
        filter: TopicFilter::new(filter).unwrap(),
        qos,
        no_local: false,
        retain_as_published: false,
        retain_handling: RetainHandling::SendAtSubscribe,
    }
}

pub struct Client {
    stream: DuplexStream,
    buffer: BytesMut,
    pub version: ProtocolVersion,
    pub task: tokio::task::JoinHandle<()>,
}

impl Client {
    /// Sends CONNECT and reads the answer.
    pub async fn connect(&mut self, options: Options) -> ConnAck {
        self.connect_again(options).await;
        match self.recv().await {
            Packet::ConnAck(connack) => connack,
            other => panic!("expected connack, got {other:?}"),
        }
    }

    /// Sends CONNECT (with the AWS SDK's metrics string as user name, as the SDKs do).
    pub async fn connect_again(&mut self, options: Options) {
        let connect = Connect {
            protocol_version: options.version,
            clean_start: options.clean_start,
            keep_alive: options.keep_alive,
            client_id: options.client_id,
            will: options.will,
            username: Some("?SDK=Rust&Version=1".into()),
            password: Some(Bytes::from_static(b"ignored")),
            properties: options.properties,
        };
        self.send(Packet::Connect(Box::new(connect))).await;
    }

    pub async fn send(&mut self, packet: Packet) {
        let mut bytes = BytesMut::new();
        encode(&packet, self.version, &mut bytes).unwrap();
        self.send_raw(&bytes).await;
    }

    /// Writes bytes; a server that closed meanwhile is not an error here.
    pub async fn send_raw(&mut self, bytes: &[u8]) {
        let _ = self.stream.write_all(bytes).await;
    }

    /// The next packet, or `None` if the server closed the connection or nothing came in `wait`.
    pub async fn next(&mut self, wait: Duration) -> Option<Packet> {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            if let Some(packet) = decode(&mut self.buffer, self.version, MAX_PACKET_SIZE).unwrap() {
                return Some(packet);
            }
            self.buffer.reserve(8192);
            match tokio::time::timeout_at(deadline, self.stream.read_buf(&mut self.buffer)).await {
                Ok(Ok(0)) | Ok(Err(_)) | Err(_) => return None,
                Ok(Ok(_)) => {}
            }
        }
    }

    pub async fn recv(&mut self) -> Packet {
        self.next(PATIENCE).await.expect("a packet from the server")
    }

    /// Expects no packet within a second.
    pub async fn nothing(&mut self) {
        if let Some(packet) = self.next(Duration::from_secs(1)).await {
            panic!("expected nothing, got {packet:?}");
        }
    }

    /// Reads until the server closes; returns what came before (a DISCONNECT, say).
    pub async fn closed(&mut self) -> Vec<Packet> {
        let mut packets = Vec::new();
        let deadline = tokio::time::Instant::now() + PATIENCE;
        loop {
            while let Some(packet) = decode(&mut self.buffer, self.version, MAX_PACKET_SIZE).unwrap() {
                packets.push(packet);
            }
            self.buffer.reserve(8192);
            match tokio::time::timeout_at(deadline, self.stream.read_buf(&mut self.buffer)).await {
                Ok(Ok(0)) | Ok(Err(_)) => return packets,
                Ok(Ok(_)) => {}
                Err(_) => panic!("the server did not close the connection; got {packets:?}"),
            }
        }
    }

    /// Reads until closed and returns the DISCONNECT reason code, if one came.
    pub async fn disconnected(&mut self) -> Option<ReasonCode> {
        self.closed().await.into_iter().find_map(|packet| match packet {
            Packet::Disconnect(disconnect) => Some(disconnect.reason_code),
            _ => None,
        })
    }

    pub async fn subscribe(&mut self, packet_id: u16, subscriptions: Vec<Subscription>) -> SubAck {
        self.subscribe_with(packet_id, subscriptions, Properties::default()).await
    }

    pub async fn subscribe_with(
        &mut self,
        packet_id: u16,
        subscriptions: Vec<Subscription>,
        properties: Properties,
    ) -> SubAck {
        self.send(Packet::Subscribe(Subscribe { packet_id: id(packet_id), subscriptions, properties })).await;
        match self.recv().await {
            Packet::SubAck(suback) => suback,
            other => panic!("expected suback, got {other:?}"),
        }
    }

    /// Subscribes to one filter and expects it granted.
    pub async fn subscribe_to(&mut self, filter: &str, qos: QoS) {
        let suback = self.subscribe(1, vec![subscription(filter, qos)]).await;
        assert_eq!(suback.reason_codes, vec![ReasonCode::granted(qos)], "{filter}");
    }

    /// Publishes, completing the QoS 1 or 2 exchange.
    pub async fn publish(&mut self, publish: Publish) {
        let qos = publish.qos;
        let packet_id = publish.packet_id;
        self.send(Packet::Publish(publish)).await;
        match (qos, packet_id) {
            (QoS::AtMostOnce, _) => {}
            (QoS::AtLeastOnce, Some(packet_id)) => {
                assert_eq!(self.recv().await, Packet::PubAck(PubAck::new(packet_id)));
            }
            (QoS::ExactlyOnce, Some(packet_id)) => {
                assert_eq!(self.recv().await, Packet::PubRec(PubRec::new(packet_id)));
                self.send(Packet::PubRel(PubRel::new(packet_id))).await;
                assert_eq!(self.recv().await, Packet::PubComp(PubComp::new(packet_id)));
            }
            _ => panic!("qos 1 and 2 need a packet id"),
        }
    }

    /// The next packet, which must be a PUBLISH.
    pub async fn message(&mut self) -> Publish {
        match self.recv().await {
            Packet::Publish(publish) => publish,
            other => panic!("expected publish, got {other:?}"),
        }
    }

    /// The next PUBLISH, acknowledged as its QoS asks.
    pub async fn receive(&mut self) -> Publish {
        let publish = self.message().await;
        match (publish.qos, publish.packet_id) {
            (QoS::AtLeastOnce, Some(packet_id)) => self.send(Packet::PubAck(PubAck::new(packet_id))).await,
            (QoS::ExactlyOnce, Some(packet_id)) => {
                self.send(Packet::PubRec(PubRec::new(packet_id))).await;
                assert_eq!(self.recv().await, Packet::PubRel(PubRel::new(packet_id)));
                self.send(Packet::PubComp(PubComp::new(packet_id))).await;
            }
            _ => {}
        }
        publish
    }

    pub async fn disconnect(mut self) {
        self.send(Packet::Disconnect(Disconnect::default())).await;
        self.closed().await;
        let _ = self.task.await;
    }

    /// Drops the connection without DISCONNECT and waits for the server to notice.
    pub async fn drop_connection(self) {
        let Client { stream, task, .. } = self;
        drop(stream);
        let _ = task.await;
    }
}

/// The payload as text.
pub fn text(publish: &Publish) -> String {
    String::from_utf8(publish.payload.to_vec()).unwrap()
}

/// The topic name a PUBLISH carries.
pub fn topic(publish: &Publish) -> &str {
    publish.topic.as_ref().map_or("", |topic| topic.as_str())
}
