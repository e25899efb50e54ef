//! One MQTT session over mutual TLS on the shared codec: TCP, the TLS handshake (rustls,
//! aws-lc-rs), CONNECT/CONNACK, SUBSCRIBE/SUBACK, then packets in and out with keep-alive.
//! Typed: [`Session::open`] returns only a connected, subscribed session.

use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use certfleet_mqtt::{self as mqtt, Packet, PacketId, ProtocolVersion, QoS, ReasonCode, TopicFilter, TopicName};
use certfleet_pki::CertificateId;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::Instant;
use tokio_rustls::client::TlsStream;

/// ALPN protocol name of MQTT over TLS on AWS IoT.
pub const ALPN: &[u8] = b"x-amzn-mqtt-ca";

/// A certificate chain and its key, ready for TLS. `Debug` shows the certificate ID only.
pub struct Identity {
    pub chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
    pub certificate_id: CertificateId,
}

impl std::fmt::Debug for Identity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Identity").field("certificate_id", &self.certificate_id).finish_non_exhaustive()
    }
}

impl Identity {
    /// Reads a certificate PEM (leaf first) and a private key PEM (PKCS#8, PKCS#1 or SEC1).
    pub fn from_pem(certificate_pem: &str, key_pem: &str) -> Result<Identity, String> {
        let chain = CertificateDer::pem_slice_iter(certificate_pem.as_bytes())
            .collect::<Result<Vec<_>, _>>()
            .map_err(|error| format!("the certificate pem does not parse: {error}"))?;
        let leaf = chain.first().ok_or("the certificate file holds no certificate")?;
        let certificate_id = CertificateId::of_der(leaf);
        // The error of a key that does not parse says nothing of its content.
        let key = PrivateKeyDer::from_pem_slice(key_pem.as_bytes()).map_err(|_| "the private key does not parse")?;
        Ok(Identity { chain, key, certificate_id })
    }
}

/// Where and how to connect.
#[derive(Clone, Debug)]
pub struct Settings {
    pub endpoint: String,
    pub server_name: ServerName<'static>,
    pub roots: Arc<rustls::RootCertStore>,
    pub alpn: bool,
    pub version: ProtocolVersion,
    pub client_id: String,
    pub keep_alive: Duration,
    pub connect_timeout: Duration,
}

/// Why a connection attempt failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConnectError {
    /// The server answered and refused these credentials: CONNACK with a failure code, or a TLS
    /// alert. Trying again with the same credentials is pointless.
    Refused(String),
    /// No answer on the credentials: network, DNS, timeout, the server's certificate not trusted,
    /// or the connection closed before CONNACK. Retry later.
    Unreachable(String),
}

impl std::fmt::Display for ConnectError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ConnectError::Refused(reason) => write!(f, "refused: {reason}"),
            ConnectError::Unreachable(reason) => write!(f, "unreachable: {reason}"),
        }
    }
}

/// What a session hands up.
#[derive(Debug)]
pub enum Incoming {
    /// A PUBLISH (already acknowledged when QoS 1).
    Message { topic: String, payload: Bytes },
    /// The PUBACK of a publish of ours.
    Delivered(PacketId),
}

/// A connected, subscribed session.
pub struct Session {
    stream: TlsStream<TcpStream>,
    buffer: BytesMut,
    version: ProtocolVersion,
    keep_alive: Duration,
    last_sent: Instant,
    ping_sent: Option<Instant>,
    next_packet_id: u16,
    certificate_id: CertificateId,
}

fn classify_io(error: std::io::Error) -> ConnectError {
    // A TLS alert from the server is its verdict on our certificate; our own verification of its
    // certificate failing, or a reset, says nothing of ours.
    let refused = error
        .get_ref()
        .and_then(|inner| inner.downcast_ref::<rustls::Error>())
        .is_some_and(|tls| matches!(tls, rustls::Error::AlertReceived(_)));
    match refused {
        true => ConnectError::Refused(error.to_string()),
        false => ConnectError::Unreachable(error.to_string()),
    }
}

impl Session {
    /// Connects with `identity` and subscribes to `filters` at QoS 1, all within the connect
    /// timeout.
    pub async fn open(
        settings: &Settings,
        identity: &Identity,
        filters: &[TopicFilter],
    ) -> Result<Session, ConnectError> {
        match tokio::time::timeout(settings.connect_timeout, Session::open_now(settings, identity, filters)).await {
            Ok(result) => result,
            Err(_) => Err(ConnectError::Unreachable("timed out".to_owned())),
        }
    }

    async fn open_now(
        settings: &Settings,
        identity: &Identity,
        filters: &[TopicFilter],
    ) -> Result<Session, ConnectError> {
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let mut tls = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .and_then(|builder| {
                builder
                    .with_root_certificates(settings.roots.clone())
                    .with_client_auth_cert(identity.chain.clone(), identity.key.clone_key())
            })
            .map_err(|error| ConnectError::Refused(format!("the credentials are not usable for tls: {error}")))?;
        if settings.alpn {
            tls.alpn_protocols = vec![ALPN.to_vec()];
        }
        let tcp = TcpStream::connect(&settings.endpoint).await.map_err(classify_io)?;
        let _ = tcp.set_nodelay(true);
        let stream = tokio_rustls::TlsConnector::from(Arc::new(tls))
            .connect(settings.server_name.clone(), tcp)
            .await
            .map_err(classify_io)?;
        let mut session = Session {
            stream,
            buffer: BytesMut::with_capacity(8 * 1024),
            version: settings.version,
            keep_alive: settings.keep_alive,
            last_sent: Instant::now(),
            ping_sent: None,
            next_packet_id: 0,
            certificate_id: identity.certificate_id.clone(),
        };
        let connect = mqtt::Connect {
            protocol_version: settings.version,
            clean_start: true,
            keep_alive: u16::try_from(settings.keep_alive.as_secs()).unwrap_or(u16::MAX),
            client_id: settings.client_id.clone(),
            will: None,
            username: None,
            password: None,
            properties: Default::default(),
        };
        session.send(&Packet::Connect(Box::new(connect))).await.map_err(ConnectError::Unreachable)?;
        match session.read_packet().await? {
            Packet::ConnAck(ack) if ack.reason_code == ReasonCode::SUCCESS => {
                // MQTT 5: a server keep-alive replaces ours.
                if let Some(seconds) = ack.properties.server_keep_alive.filter(|seconds| *seconds > 0) {
                    session.keep_alive = Duration::from_secs(u64::from(seconds));
                }
            }
            Packet::ConnAck(ack) => return Err(ConnectError::Refused(format!("connack {:?}", ack.reason_code))),
            other => return Err(ConnectError::Unreachable(format!("expected connack, got {}", other.packet_type()))),
        }
        if !filters.is_empty() {
            let packet_id = session.packet_id();
            let subscribe = mqtt::Subscribe {
                packet_id,
                subscriptions: filters
                    .iter()
                    .map(|filter| mqtt::Subscription {
                        filter: filter.clone(),
                        qos: QoS::AtLeastOnce,
                        no_local: false,
                        retain_as_published: false,
                        retain_handling: Default::default(),
                    })
                    .collect(),
                properties: Default::default(),
            };
            session.send(&Packet::Subscribe(subscribe)).await.map_err(ConnectError::Unreachable)?;
            match session.read_packet().await? {
                Packet::SubAck(ack) if ack.packet_id == packet_id => {
                    if let Some(code) = ack.reason_codes.iter().find(|code| code.code() >= 0x80) {
                        return Err(ConnectError::Refused(format!("subscription refused: {code:?}")));
                    }
                }
                other => {
                    return Err(ConnectError::Unreachable(format!("expected suback, got {}", other.packet_type())));
                }
            }
        }
        Ok(session)
    }

    /// The ID of the certificate this session authenticated with.
    pub fn certificate_id(&self) -> &CertificateId {
        &self.certificate_id
    }

    fn packet_id(&mut self) -> PacketId {
        self.next_packet_id = self.next_packet_id.checked_add(1).unwrap_or(1);
        PacketId::new(self.next_packet_id).unwrap_or(PacketId::new(1).expect("1 is not 0"))
    }

    /// Publishes at QoS 1; [`Incoming::Delivered`] with the returned ID tells of its PUBACK.
    pub async fn publish(&mut self, topic: &str, payload: Vec<u8>) -> Result<PacketId, String> {
        let topic = TopicName::new(topic.to_owned()).map_err(|error| error.to_string())?;
        let packet_id = self.packet_id();
        let publish = mqtt::Publish {
            dup: false,
            qos: QoS::AtLeastOnce,
            retain: false,
            topic: Some(topic),
            packet_id: Some(packet_id),
            properties: Default::default(),
            payload: Bytes::from(payload),
        };
        self.send(&Packet::Publish(publish)).await?;
        Ok(packet_id)
    }

    /// The next message or delivery; answers PINGRESPs and QoS acknowledgements itself and sends
    /// PINGREQs to keep the session alive. An error means the session is over.
    pub async fn next(&mut self) -> Result<Incoming, String> {
        loop {
            if let Some(packet) = self.decode()? {
                if let Some(incoming) = self.handle(packet).await? {
                    return Ok(incoming);
                }
                continue;
            }
            let ping_due = self.last_sent + self.keep_alive;
            let answer_due = self.ping_sent.map(|sent| sent + self.keep_alive);
            let wake = answer_due.map_or(ping_due, |due| due.min(ping_due));
            tokio::select! {
                read = self.stream.read_buf(&mut self.buffer) => match read {
                    Ok(0) => return Err("the server closed the connection".to_owned()),
                    Ok(_) => {}
                    Err(error) => return Err(error.to_string()),
                },
                _ = tokio::time::sleep_until(wake) => {
                    if answer_due.is_some_and(|due| Instant::now() >= due) {
                        return Err("no PINGRESP within the keep-alive".to_owned());
                    }
                    if self.ping_sent.is_none() {
                        self.send(&Packet::PingReq).await?;
                        self.ping_sent = Some(Instant::now());
                    }
                }
            }
        }
    }

    async fn handle(&mut self, packet: Packet) -> Result<Option<Incoming>, String> {
        match packet {
            Packet::Publish(publish) => {
                match (publish.qos, publish.packet_id) {
                    (QoS::AtLeastOnce, Some(id)) => self.send(&Packet::PubAck(mqtt::PubAck::new(id))).await?,
                    (QoS::ExactlyOnce, Some(id)) => self.send(&Packet::PubRec(mqtt::PubRec::new(id))).await?,
                    _ => {}
                }
                let topic = publish.topic.map(|topic| topic.as_str().to_owned()).unwrap_or_default();
                Ok(Some(Incoming::Message { topic, payload: publish.payload }))
            }
            Packet::PubRel(release) => {
                self.send(&Packet::PubComp(mqtt::PubComp::new(release.packet_id))).await?;
                Ok(None)
            }
            Packet::PubAck(ack) => Ok(Some(Incoming::Delivered(ack.packet_id))),
            Packet::PingResp => {
                self.ping_sent = None;
                Ok(None)
            }
            Packet::Disconnect(disconnect) => Err(format!("the server disconnected: {:?}", disconnect.reason_code)),
            other => Err(format!("unexpected {} from the server", other.packet_type())),
        }
    }

    fn decode(&mut self) -> Result<Option<Packet>, String> {
        mqtt::decode(&mut self.buffer, self.version, mqtt::MAX_PACKET_SIZE).map_err(|error| error.to_string())
    }

    /// The next packet while connecting (a TLS 1.3 server reports a refused client
    /// certificate with an alert after the handshake, so it shows here).
    async fn read_packet(&mut self) -> Result<Packet, ConnectError> {
        loop {
            if let Some(packet) = self.decode().map_err(ConnectError::Unreachable)? {
                return Ok(packet);
            }
            match self.stream.read_buf(&mut self.buffer).await {
                Ok(0) => return Err(ConnectError::Unreachable("the server closed the connection".to_owned())),
                Ok(_) => {}
                Err(error) => return Err(classify_io(error)),
            }
        }
    }

    async fn send(&mut self, packet: &Packet) -> Result<(), String> {
        let mut out = BytesMut::new();
        mqtt::encode(packet, self.version, &mut out).map_err(|error| error.to_string())?;
        self.stream.write_all(&out).await.map_err(|error| error.to_string())?;
        self.last_sent = Instant::now();
        Ok(())
    }

    /// Sends DISCONNECT and closes.
    pub async fn close(mut self) {
        let _ = self.send(&Packet::Disconnect(Default::default())).await;
        let _ = self.stream.shutdown().await;
    }
}
