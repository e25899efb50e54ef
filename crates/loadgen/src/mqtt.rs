//! MQTT scenarios over mutual TLS, for certfleet's gateway or any broker with client
//! certificates (Mosquitto in the comparisons): a connect storm of full handshakes, and QoS 0
//! and QoS 1 publish throughput from publishers to one subscriber. Built on the shared codec.
//!
//! Identities are made through the control plane (CreateCertificateFromCsr) when a data
//! directory is given, or read from a directory of `N.crt`/`N.key` files, and can be saved there
//! so that the peer broker is measured with the very same certificates.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use bytes::{Bytes, BytesMut};
use certfleet_client::{Call, Target};
use certfleet_mqtt::{self as mqtt, Packet, PacketId, ProtocolVersion, QoS, TopicFilter, TopicName};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;

use crate::proc_stats;
use crate::report::Report;

/// The MQTT scenarios.
#[derive(Clone, Copy, Debug, clap::ValueEnum, PartialEq, Eq)]
pub enum MqttScenario {
    /// Full TLS handshake + CONNECT/CONNACK + DISCONNECT, over and over.
    Connect,
    /// Publishers to one subscriber at QoS 0.
    PublishQos0,
    /// Publishers to one subscriber at QoS 1 (publishers wait for PUBACKs, 64 in flight each).
    PublishQos1,
}

#[derive(clap::Args)]
pub struct MqttArgs {
    #[arg(long, value_enum)]
    pub scenario: MqttScenario,
    /// A certfleet data directory: the gateway address from endpoints.json, identities made
    /// through its API (default profile), trust anchor server-root.pem.
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    /// Broker address HOST:PORT when not using --data-dir.
    #[arg(long)]
    pub addr: Option<String>,
    /// Trust anchor for the broker's certificate when not using --data-dir.
    #[arg(long)]
    pub cafile: Option<PathBuf>,
    /// TLS server name to verify (and send as SNI unless it is an IP address).
    #[arg(long, default_value = "localhost")]
    pub server_name: String,
    /// Read identities (`0.crt`, `0.key`, ...) from this directory instead of making them; with
    /// --data-dir, save the identities made there.
    #[arg(long)]
    pub identities: Option<PathBuf>,
    /// The policy document attached to the identities made through the API (default: allow all).
    #[arg(long)]
    pub policy_file: Option<PathBuf>,
    /// How many identities (connections use them in turn).
    #[arg(long, default_value_t = 32)]
    pub devices: usize,
    /// Concurrent connections (connect) or publishers (publish).
    #[arg(long, default_value_t = 8)]
    pub connections: usize,
    /// Payload size of published messages, bytes (at least 8).
    #[arg(long, default_value_t = 64)]
    pub payload: usize,
    #[arg(long, default_value_t = 10.0)]
    pub duration: f64,
    /// Stop after this many connects (connect) or messages sent (publish).
    #[arg(long, default_value_t = 1_000_000)]
    pub count: u64,
    #[arg(long)]
    pub server_pid: Option<u32>,
    #[arg(long, default_value = "")]
    pub label: String,
    #[arg(long)]
    pub json: bool,
}

struct Identity {
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
}

struct Broker {
    addr: String,
    name: ServerName<'static>,
    roots: Arc<rustls::RootCertStore>,
    identities: Vec<Identity>,
}

pub async fn run(args: &MqttArgs) -> anyhow::Result<Report> {
    anyhow::ensure!(args.payload >= 8, "--payload must be at least 8 bytes (it carries a timestamp)");
    let broker = Arc::new(broker(args).await?);
    let duration = Duration::from_secs_f64(args.duration);
    let cpu_before = args.server_pid.and_then(proc_stats::cpu_seconds);
    let started = Instant::now();
    let (ok, latencies_us, failures) = match args.scenario {
        MqttScenario::Connect => connect_storm(&broker, args, started + duration).await?,
        MqttScenario::PublishQos0 => publish(&broker, args, QoS::AtMostOnce, started + duration).await?,
        MqttScenario::PublishQos1 => publish(&broker, args, QoS::AtLeastOnce, started + duration).await?,
    };
    let wall_seconds = started.elapsed().as_secs_f64();
    let cpu_after = args.server_pid.and_then(proc_stats::cpu_seconds);
    let mut latencies_us = latencies_us;
    latencies_us.sort_unstable();
    Ok(Report {
        label: args.label.clone(),
        scenario: format!("{:?}", args.scenario),
        connections: args.connections,
        ok,
        reconnects: 0,
        failures: if failures > 0 { [(0u16, failures)].into_iter().collect() } else { Default::default() },
        wall_seconds,
        latencies_us,
        server_cpu_seconds: cpu_before.zip(cpu_after).map(|(before, after)| after - before),
        server_peak_rss_kib: args.server_pid.and_then(proc_stats::peak_rss_kib),
    })
}

async fn broker(args: &MqttArgs) -> anyhow::Result<Broker> {
    let (addr, cafile) = match &args.data_dir {
        Some(dir) => {
            let endpoints: serde_json::Value = serde_json::from_str(
                &std::fs::read_to_string(dir.join("endpoints.json")).context("reading endpoints.json")?,
            )?;
            let addr = endpoints["mqtt_addr"].as_str().context("endpoints.json has no mqtt_addr")?.to_owned();
            (addr, dir.join("server-root.pem"))
        }
        None => (
            args.addr.clone().context("give --data-dir or --addr")?,
            args.cafile.clone().context("--cafile is required with --addr")?,
        ),
    };
    let mut roots = rustls::RootCertStore::empty();
    for certificate in
        CertificateDer::pem_file_iter(&cafile).with_context(|| format!("reading {}", cafile.display()))?
    {
        roots.add(certificate?)?;
    }
    let identities = match (&args.data_dir, &args.identities) {
        (None, Some(dir)) => load_identities(dir, args.devices)?,
        (Some(data_dir), save) => {
            let made = make_identities(data_dir, args.devices, args.policy_file.as_deref()).await?;
            if let Some(dir) = save {
                save_identities(dir, &made)?;
            }
            made.into_iter().map(|(cert, key)| identity_from_pem(&cert, &key)).collect::<anyhow::Result<_>>()?
        }
        (None, None) => bail!("give --data-dir or --identities"),
    };
    anyhow::ensure!(!identities.is_empty(), "no identities");
    Ok(Broker { addr, name: ServerName::try_from(args.server_name.clone())?, roots: Arc::new(roots), identities })
}

/// The policy attached to every identity the load tool makes, unless --policy-file names
/// another: everything allowed.
const LOADGEN_POLICY_NAME: &str = "certfleet-loadgen-allow-all";
const LOADGEN_POLICY: &str =
    r#"{"Version":"2012-10-17","Statement":[{"Effect":"Allow","Action":"iot:*","Resource":"*"}]}"#;
const CUSTOM_POLICY_NAME: &str = "certfleet-loadgen-custom";

/// Makes identities through the control plane: a P-256 key and CreateCertificateFromCsr each,
/// with a policy attached (the gateway enforces policies: without one a device may not connect).
async fn make_identities(
    data_dir: &Path,
    count: usize,
    policy_file: Option<&Path>,
) -> anyhow::Result<Vec<(String, String)>> {
    let target = Target::from_data_dir(data_dir, "default", "us-east-1")?;
    let mut connection = target.connect().await?;
    let (policy_name, document) = match policy_file {
        Some(path) => {
            (CUSTOM_POLICY_NAME, std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?)
        }
        None => (LOADGEN_POLICY_NAME, LOADGEN_POLICY.to_owned()),
    };
    let policy = serde_json::json!({ "policyDocument": document }).to_string();
    let call = Call { method: "POST", path: format!("/policies/{policy_name}"), body: Bytes::from(policy) };
    let (status, body) = target.send(&mut connection, &call).await?;
    anyhow::ensure!(
        status == 200 || status == 409,
        "CreatePolicy answered {status}: {}",
        String::from_utf8_lossy(&body)
    );
    let mut made = Vec::with_capacity(count);
    for index in 0..count {
        let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?;
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new())?;
        params.distinguished_name.push(rcgen::DnType::CommonName, format!("loadgen-mqtt-{index}"));
        let csr = params.serialize_request(&key)?.pem()?;
        let body = serde_json::json!({ "certificateSigningRequest": csr }).to_string();
        let call = Call { method: "POST", path: "/certificates?setAsActive=true".into(), body: Bytes::from(body) };
        let (status, body) = target.send(&mut connection, &call).await?;
        anyhow::ensure!(
            status == 200,
            "CreateCertificateFromCsr answered {status}: {}",
            String::from_utf8_lossy(&body)
        );
        let created: serde_json::Value = serde_json::from_slice(&body)?;
        let pem = created["certificatePem"].as_str().context("no certificatePem")?.to_owned();
        let arn = created["certificateArn"].as_str().context("no certificateArn")?;
        let body = serde_json::json!({ "target": arn }).to_string();
        let call = Call { method: "PUT", path: format!("/target-policies/{policy_name}"), body: Bytes::from(body) };
        let (status, body) = target.send(&mut connection, &call).await?;
        anyhow::ensure!(status == 200, "AttachPolicy answered {status}: {}", String::from_utf8_lossy(&body));
        made.push((pem, key.serialize_pem()));
    }
    Ok(made)
}

fn save_identities(dir: &Path, identities: &[(String, String)]) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir)?;
    for (index, (cert, key)) in identities.iter().enumerate() {
        std::fs::write(dir.join(format!("{index}.crt")), cert)?;
        let key_path = dir.join(format!("{index}.key"));
        std::fs::write(&key_path, key)?;
        #[cfg(unix)]
        std::fs::set_permissions(&key_path, std::os::unix::fs::PermissionsExt::from_mode(0o600))?;
    }
    Ok(())
}

fn load_identities(dir: &Path, count: usize) -> anyhow::Result<Vec<Identity>> {
    (0..count)
        .map(|index| {
            let cert = std::fs::read_to_string(dir.join(format!("{index}.crt")))?;
            let key = std::fs::read_to_string(dir.join(format!("{index}.key")))?;
            identity_from_pem(&cert, &key)
        })
        .collect()
}

fn identity_from_pem(cert: &str, key: &str) -> anyhow::Result<Identity> {
    let chain = CertificateDer::pem_slice_iter(cert.as_bytes()).collect::<Result<Vec<_>, _>>()?;
    let key = PrivateKeyDer::from_pem_slice(key.as_bytes())?;
    Ok(Identity { chain, key })
}

/// One MQTT connection over TLS with its read buffer.
struct Client {
    stream: TlsStream<TcpStream>,
    buffer: BytesMut,
}

impl Client {
    async fn connect(broker: &Broker, identity: &Identity, client_id: &str) -> anyhow::Result<Client> {
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let mut config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()?
            .with_root_certificates(broker.roots.clone())
            .with_client_auth_cert(identity.chain.clone(), identity.key.clone_key())?;
        // Every connection is a full handshake: no session resumption.
        config.resumption = rustls::client::Resumption::disabled();
        let tcp = TcpStream::connect(&broker.addr).await?;
        tcp.set_nodelay(true)?;
        let stream = tokio_rustls::TlsConnector::from(Arc::new(config)).connect(broker.name.clone(), tcp).await?;
        let mut client = Client { stream, buffer: BytesMut::with_capacity(4096) };
        let connect = mqtt::Connect {
            protocol_version: ProtocolVersion::V311,
            clean_start: true,
            keep_alive: 60,
            client_id: client_id.to_owned(),
            will: None,
            username: None,
            password: None,
            properties: Default::default(),
        };
        client.send(&Packet::Connect(Box::new(connect))).await?;
        match client.receive().await? {
            Packet::ConnAck(ack) if ack.reason_code == mqtt::ReasonCode::SUCCESS => Ok(client),
            Packet::ConnAck(ack) => bail!("CONNACK refused: {:?}", ack.reason_code),
            other => bail!("expected CONNACK, got {other:?}"),
        }
    }

    async fn send(&mut self, packet: &Packet) -> anyhow::Result<()> {
        let mut out = BytesMut::new();
        mqtt::encode(packet, ProtocolVersion::V311, &mut out)?;
        self.stream.write_all(&out).await?;
        Ok(())
    }

    async fn receive(&mut self) -> anyhow::Result<Packet> {
        loop {
            if let Some(packet) = mqtt::decode(&mut self.buffer, ProtocolVersion::V311, mqtt::MAX_PACKET_SIZE)? {
                return Ok(packet);
            }
            if self.stream.read_buf(&mut self.buffer).await? == 0 {
                bail!("the broker closed the connection");
            }
        }
    }
}

async fn connect_storm(
    broker: &Arc<Broker>,
    args: &MqttArgs,
    deadline: Instant,
) -> anyhow::Result<(u64, Vec<u32>, u64)> {
    let budget = Arc::new(AtomicU64::new(args.count));
    let mut workers = Vec::new();
    for worker in 0..args.connections {
        let (broker, budget) = (broker.clone(), budget.clone());
        workers.push(tokio::spawn(async move {
            let (mut ok, mut failed, mut latencies) = (0u64, 0u64, Vec::new());
            let mut attempt = 0usize;
            while Instant::now() < deadline
                && budget.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |left| left.checked_sub(1)).is_ok()
            {
                let identity = &broker.identities[(worker + attempt * 7) % broker.identities.len()];
                attempt += 1;
                let started = Instant::now();
                match Client::connect(&broker, identity, &format!("loadgen-{worker}-{attempt}")).await {
                    Ok(mut client) => {
                        latencies.push(started.elapsed().as_micros().min(u128::from(u32::MAX)) as u32);
                        ok += 1;
                        let _ = client.send(&Packet::Disconnect(Default::default())).await;
                        let _ = client.stream.shutdown().await;
                    }
                    Err(_) => failed += 1,
                }
            }
            (ok, latencies, failed)
        }));
    }
    let (mut ok, mut latencies, mut failed) = (0, Vec::new(), 0);
    for worker in workers {
        let (worker_ok, worker_latencies, worker_failed) = worker.await?;
        ok += worker_ok;
        latencies.extend(worker_latencies);
        failed += worker_failed;
    }
    Ok((ok, latencies, failed))
}

/// Publishers send on `loadgen/<n>`; one subscriber on `loadgen/#` receives. Messages carry the
/// send time, so the subscriber measures end-to-end latency. Counts what the subscriber got.
async fn publish(
    broker: &Arc<Broker>,
    args: &MqttArgs,
    qos: QoS,
    deadline: Instant,
) -> anyhow::Result<(u64, Vec<u32>, u64)> {
    let epoch = Instant::now();
    let mut subscriber = Client::connect(broker, &broker.identities[0], "loadgen-subscriber").await?;
    let subscribe = mqtt::Subscribe {
        packet_id: PacketId::new(1).context("packet id")?,
        subscriptions: vec![mqtt::Subscription {
            filter: TopicFilter::new("loadgen/#")?,
            qos,
            no_local: false,
            retain_as_published: false,
            retain_handling: Default::default(),
        }],
        properties: Default::default(),
    };
    subscriber.send(&Packet::Subscribe(subscribe)).await?;
    match subscriber.receive().await? {
        Packet::SubAck(_) => {}
        other => bail!("expected SUBACK, got {other:?}"),
    }
    let stop = Arc::new(AtomicBool::new(false));
    let sent = Arc::new(AtomicU64::new(0));
    let budget = Arc::new(AtomicU64::new(args.count));

    let receiver = {
        let stop = stop.clone();
        tokio::spawn(async move {
            let (mut received, mut latencies) = (0u64, Vec::new());
            let Client { stream, mut buffer } = subscriber;
            let (mut reader, mut writer) = tokio::io::split(stream);
            let mut acks = BytesMut::new();
            'reading: loop {
                // Take every whole packet buffered, acknowledge them in one write, then read more.
                loop {
                    match mqtt::decode(&mut buffer, ProtocolVersion::V311, mqtt::MAX_PACKET_SIZE) {
                        Ok(Some(Packet::Publish(publish))) => {
                            if let Some(sent_at) = publish.payload.get(..8) {
                                let sent_nanos = u64::from_be_bytes(sent_at.try_into().unwrap_or([0; 8]));
                                let now = epoch.elapsed().as_nanos() as u64;
                                latencies.push((now.saturating_sub(sent_nanos) / 1000).min(u64::from(u32::MAX)) as u32);
                            }
                            received += 1;
                            if let Some(id) = publish.packet_id
                                && mqtt::encode(
                                    &Packet::PubAck(mqtt::PubAck::new(id)),
                                    ProtocolVersion::V311,
                                    &mut acks,
                                )
                                .is_err()
                            {
                                break 'reading;
                            }
                        }
                        Ok(Some(_)) => {}
                        Ok(None) => break,
                        Err(_) => break 'reading,
                    }
                }
                if !acks.is_empty() {
                    if writer.write_all(&acks).await.is_err() {
                        break;
                    }
                    acks.clear();
                }
                let read = tokio::select! {
                    read = reader.read_buf(&mut buffer) => read,
                    _ = tokio::time::sleep(Duration::from_millis(500)) => {
                        if stop.load(Ordering::Relaxed) { break } else { continue }
                    }
                };
                if !matches!(read, Ok(count) if count > 0) {
                    break;
                }
            }
            (received, latencies)
        })
    };

    let mut publishers = Vec::new();
    for index in 0..args.connections {
        let identity = &broker.identities[(index + 1) % broker.identities.len()];
        let client = Client::connect(broker, identity, &format!("loadgen-publisher-{index}")).await?;
        let (sent, budget, payload_size) = (sent.clone(), budget.clone(), args.payload);
        publishers.push(tokio::spawn(async move {
            publisher(client, index, qos, payload_size, deadline, epoch, &sent, &budget).await
        }));
    }
    let mut failed = 0;
    for publisher in publishers {
        if publisher.await.map_or(true, |result| result.is_err()) {
            failed += 1;
        }
    }
    // Give the broker a moment to deliver what is in flight, then stop counting.
    tokio::time::sleep(Duration::from_millis(300)).await;
    stop.store(true, Ordering::Relaxed);
    let (received, latencies) = receiver.await?;
    let lost = sent.load(Ordering::Relaxed).saturating_sub(received);
    if lost > 0 {
        eprintln!("{lost} of {} messages sent were not received", sent.load(Ordering::Relaxed));
    }
    Ok((received, latencies, failed))
}

#[allow(clippy::too_many_arguments)]
async fn publisher(
    client: Client,
    index: usize,
    qos: QoS,
    payload_size: usize,
    deadline: Instant,
    epoch: Instant,
    sent: &AtomicU64,
    budget: &AtomicU64,
) -> anyhow::Result<()> {
    let topic = TopicName::new(format!("loadgen/{index}"))?;
    let Client { stream, buffer } = client;
    let (mut reader, mut writer) = tokio::io::split(stream);
    // QoS 1: at most 64 unacknowledged messages per publisher.
    let window = Arc::new(tokio::sync::Semaphore::new(64));
    let acks = {
        let window = window.clone();
        tokio::spawn(async move {
            let mut buffer = buffer;
            loop {
                match mqtt::decode(&mut buffer, ProtocolVersion::V311, mqtt::MAX_PACKET_SIZE) {
                    Ok(Some(Packet::PubAck(_))) => window.add_permits(1),
                    Ok(Some(_)) => {}
                    Ok(None) => match reader.read_buf(&mut buffer).await {
                        Ok(0) | Err(_) => return,
                        Ok(_) => {}
                    },
                    Err(_) => return,
                }
            }
        })
    };
    let mut next_id: u16 = 0;
    let mut out = BytesMut::with_capacity(64 * 1024);
    while Instant::now() < deadline
        && budget.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |left| left.checked_sub(1)).is_ok()
    {
        let packet_id = if qos == QoS::AtMostOnce {
            None
        } else {
            window.acquire().await?.forget();
            next_id = next_id.checked_add(1).unwrap_or(1);
            PacketId::new(next_id)
        };
        let mut payload = vec![0u8; payload_size];
        payload[..8].copy_from_slice(&(epoch.elapsed().as_nanos() as u64).to_be_bytes());
        let publish = mqtt::Publish {
            dup: false,
            qos,
            retain: false,
            topic: Some(topic.clone()),
            packet_id,
            properties: Default::default(),
            payload: Bytes::from(payload),
        };
        mqtt::encode(&Packet::Publish(publish), ProtocolVersion::V311, &mut out)?;
        // Batch small QoS 0 writes; QoS 1 is paced by its window anyway.
        if out.len() > 32 * 1024 || qos != QoS::AtMostOnce {
            writer.write_all(&out).await?;
            out.clear();
        }
        sent.fetch_add(1, Ordering::Relaxed);
    }
    writer.write_all(&out).await?;
    if qos != QoS::AtMostOnce {
        // Wait (briefly) for the outstanding acknowledgements.
        let _ = tokio::time::timeout(Duration::from_secs(2), window.acquire_many(64)).await;
    }
    let mut disconnect = BytesMut::new();
    mqtt::encode(&Packet::Disconnect(Default::default()), ProtocolVersion::V311, &mut disconnect)?;
    writer.write_all(&disconnect).await?;
    acks.abort();
    Ok(())
}
