//! MQTT scenarios over mutual TLS, for certfleet's gateway or any broker with client
//! certificates (Mosquitto in the comparisons), built on the shared codec:
//!
//! - connect storms of full handshakes, and of resumed ones (after a priming handshake per
//!   identity), counting how many handshakes the server really resumed ([`connect`]);
//! - idle connections held open from several loopback source addresses, with the server's
//!   memory per connection ([`fleet`]);
//! - publish throughput and end-to-end latency, 1 to 1, N to 1 (fan-in) and 1 to N (fan-out)
//!   ([`publish`]);
//! - revocation latency: devices connected, a sample of their certificates revoked through the
//!   AWS IoT API, and the time until the server closes each session ([`revocation`]).
//!
//! Every scenario is bounded in count and in time. Identities are made through the control
//! plane (CreateCertificateFromCsr) when a data directory is given, or read from a directory of
//! `N.crt`/`N.key` files, and can be saved there so that the peer broker is measured with the
//! very same certificates.

mod connect;
mod fleet;
mod publish;
mod revocation;

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use bytes::{Bytes, BytesMut};
use certfleet_client::{Call, Target};
use certfleet_loadgen::proc_stats;
use certfleet_mqtt::{self as mqtt, Packet, ProtocolVersion};
use rustls::HandshakeKind;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};
use tokio_rustls::client::TlsStream;

use crate::report::Report;

/// The MQTT scenarios.
#[derive(Clone, Copy, Debug, clap::ValueEnum, PartialEq, Eq)]
pub enum MqttScenario {
    /// Full TLS handshake + CONNECT/CONNACK + DISCONNECT, over and over.
    Connect,
    /// The same with TLS session resumption: one priming handshake per identity, then the storm;
    /// reports how many handshakes the server resumed.
    ConnectResumed,
    /// --connections connections opened (from --source-addresses loopback addresses) and held
    /// idle for --hold seconds; reports the server's RSS per connection.
    Idle,
    /// --connections publishers to one subscriber at QoS 0.
    PublishQos0,
    /// --connections publishers to one subscriber at QoS 1 (64 in flight per publisher).
    PublishQos1,
    /// --connections publishers to one subscriber at --qos (N to 1).
    FanIn,
    /// One publisher to --connections subscribers at --qos (1 to N).
    FanOut,
    /// --connections devices connected, --revoke of their certificates revoked through the API
    /// (UpdateCertificate REVOKED), time until the server closes each session. Needs --data-dir.
    Revocation,
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
    /// Publish scenarios: where the subscribers connect, HOST:PORT, when not where the
    /// publishers do (another node of a cluster: the same trust anchor and server name).
    #[arg(long, value_name = "HOST:PORT")]
    pub subscribe_addr: Option<String>,
    /// Connect storms: a further broker address (repeat it); the workers connect to the broker
    /// address and these in turn (the nodes of a cluster).
    #[arg(long = "also-addr", value_name = "HOST:PORT")]
    pub also_addr: Vec<String>,
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
    /// How many identities (connections use them in turn; revocation uses one per connection).
    #[arg(long, default_value_t = 32)]
    pub devices: usize,
    /// Concurrent connections (connect), publishers (publish, fan-in), subscribers (fan-out),
    /// connections held (idle, revocation).
    #[arg(long, default_value_t = 8)]
    pub connections: usize,
    /// Payload size of published messages, bytes (at least 8).
    #[arg(long, default_value_t = 64)]
    pub payload: usize,
    /// QoS of fan-in and fan-out (0 or 1).
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u8).range(0..=1))]
    pub qos: u8,
    /// Messages per second published in all (0: as fast as possible).
    #[arg(long, default_value_t = 0.0)]
    pub publish_rate: f64,
    /// Time bound in seconds: of the storm or publishing; of opening the connections (idle,
    /// revocation); of waiting for the revoked sessions to close (revocation).
    #[arg(long, default_value_t = 10.0)]
    pub duration: f64,
    /// Stop after this many connects (connect) or messages sent (publish).
    #[arg(long, default_value_t = 1_000_000)]
    pub count: u64,
    /// Idle: how long to hold the connections once open, seconds.
    #[arg(long, default_value_t = 5.0)]
    pub hold: f64,
    /// Idle and revocation: spread connections over this many source addresses 127.0.0.2,
    /// 127.0.0.3, ... (each has its own ephemeral port range); 0 picks one per 20,000
    /// connections.
    #[arg(long, default_value_t = 0)]
    pub source_addresses: usize,
    /// Idle, revocation, fan-out: handshakes in progress at once while opening connections.
    #[arg(long, default_value_t = 64)]
    pub concurrency: usize,
    /// Revocation: how many of the connected devices' certificates to revoke.
    #[arg(long, default_value_t = 100)]
    pub revoke: usize,
    /// The server's process ID, for its CPU time and memory; repeat it for the nodes of a
    /// cluster (CPU time and RSS summed over them, peak RSS the largest).
    #[arg(long)]
    pub server_pid: Vec<u32>,
    #[arg(long, default_value = "")]
    pub label: String,
    #[arg(long)]
    pub json: bool,
}

/// A device identity: its certificate chain and key, its certificate ID when it was made
/// through the API, and a client configuration of full handshakes built once.
pub(crate) struct Identity {
    pub(crate) chain: Vec<CertificateDer<'static>>,
    pub(crate) key: PrivateKeyDer<'static>,
    pub(crate) certificate_id: Option<String>,
    pub(crate) full_handshakes: Arc<rustls::ClientConfig>,
}

pub(crate) struct Broker {
    pub(crate) addr: String,
    name: ServerName<'static>,
    pub(crate) roots: Arc<rustls::RootCertStore>,
    pub(crate) identities: Vec<Identity>,
}

/// What a scenario measured, before the common figures are added.
#[derive(Default)]
struct Outcome {
    ok: u64,
    latencies_us: Vec<u32>,
    failures: u64,
    /// The measured phase, when it is not the whole run (idle: the opening of connections).
    wall_seconds: Option<f64>,
    /// The server's CPU seconds in the measured phase, when it is not the whole run.
    server_cpu_seconds: Option<f64>,
    details: BTreeMap<&'static str, serde_json::Value>,
    notes: Vec<String>,
}

/// A duration in microseconds for latency samples (saturating at `u32::MAX`, about 71 minutes).
pub(crate) fn micros(duration: Duration) -> u32 {
    duration.as_micros().min(u128::from(u32::MAX)) as u32
}

/// Connections per source address when `--source-addresses` is 0: well inside Linux's default
/// ephemeral port range (32768-60999, 28,232 ports), which a socket bound before connect uses
/// per source address.
const CONNECTIONS_PER_SOURCE_ADDRESS: usize = 20_000;

/// How many source addresses spread `connections`: `requested`, or one per 20,000 connections.
fn source_address_count(requested: usize, connections: usize) -> usize {
    if requested > 0 { requested.min(253) } else { connections.div_ceil(CONNECTIONS_PER_SOURCE_ADDRESS).clamp(1, 253) }
}

/// The source address of connection `index` of a fleet spread over `count` addresses
/// 127.0.0.2 ..= 127.0.0.(count + 1), in turn (`count` at most 253); `None` when `count` is 0.
fn source_address(index: usize, count: usize) -> Option<IpAddr> {
    let count = count.min(253);
    (count > 0).then(|| IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2 + (index % count) as u8)))
}

/// The broker address a connect storm's `worker` uses: `addr` and the `also` addresses in turn.
fn storm_addr<'a>(worker: usize, addr: &'a str, also: &'a [String]) -> &'a str {
    match worker % (also.len() + 1) {
        0 => addr,
        other => &also[other - 1],
    }
}

/// The servers' CPU seconds so far, summed over `pids`; `None` without one, or when one of
/// them cannot be read (a node gone: a sum without it would mislead).
pub(crate) fn servers_cpu_seconds(pids: &[u32]) -> Option<f64> {
    sum_all(pids.iter().map(|&pid| proc_stats::cpu_seconds(pid)))
}

/// The servers' resident set sizes in KiB, summed over `pids` (as [`servers_cpu_seconds`]).
pub(crate) fn servers_rss_kib(pids: &[u32]) -> Option<u64> {
    sum_all(pids.iter().map(|&pid| proc_stats::rss_kib(pid)))
}

/// The largest peak RSS of the servers, KiB.
fn servers_peak_rss_kib(pids: &[u32]) -> Option<u64> {
    pids.iter().map(|&pid| proc_stats::peak_rss_kib(pid)).collect::<Option<Vec<_>>>()?.into_iter().max()
}

/// The sum of `values`; `None` when there are none or one is `None`.
fn sum_all<T: std::iter::Sum<T>>(values: impl IntoIterator<Item = Option<T>>) -> Option<T> {
    let values = values.into_iter().collect::<Option<Vec<T>>>()?;
    (!values.is_empty()).then(|| values.into_iter().sum())
}

pub async fn run(args: &MqttArgs) -> anyhow::Result<Report> {
    anyhow::ensure!(args.payload >= 8, "--payload must be at least 8 bytes (it carries a timestamp)");
    anyhow::ensure!(args.hold >= 0.0 && args.hold <= 3600.0, "--hold must be in [0, 3600] seconds");
    anyhow::ensure!(args.concurrency > 0, "--concurrency must be at least 1");
    let publishing = matches!(
        args.scenario,
        MqttScenario::PublishQos0 | MqttScenario::PublishQos1 | MqttScenario::FanIn | MqttScenario::FanOut
    );
    anyhow::ensure!(
        args.subscribe_addr.is_none() || publishing,
        "--subscribe-addr applies to publish-qos0, publish-qos1, fan-in and fan-out"
    );
    anyhow::ensure!(
        args.also_addr.is_empty() || matches!(args.scenario, MqttScenario::Connect | MqttScenario::ConnectResumed),
        "--also-addr applies to connect and connect-resumed"
    );
    let devices = match args.scenario {
        MqttScenario::Revocation => {
            anyhow::ensure!(
                args.data_dir.is_some(),
                "the revocation scenario needs --data-dir (it revokes through the API)"
            );
            anyhow::ensure!(
                args.revoke > 0 && args.revoke <= args.connections,
                "--revoke must be in [1, --connections]"
            );
            args.devices.max(args.connections)
        }
        _ => args.devices,
    };
    let broker = Arc::new(broker(args, devices).await?);
    let duration = Duration::from_secs_f64(args.duration);
    let cpu_before = servers_cpu_seconds(&args.server_pid);
    let started = Instant::now();
    let deadline = started + duration;
    let qos = if args.qos == 0 { mqtt::QoS::AtMostOnce } else { mqtt::QoS::AtLeastOnce };
    let outcome = match args.scenario {
        MqttScenario::Connect => connect::storm(&broker, args, deadline).await?,
        MqttScenario::ConnectResumed => connect::resumed_storm(&broker, args, duration).await?,
        MqttScenario::Idle => fleet::idle(&broker, args, deadline).await?,
        MqttScenario::PublishQos0 => {
            publish::run(&broker, args, mqtt::QoS::AtMostOnce, args.connections, 1, deadline).await?
        }
        MqttScenario::PublishQos1 => {
            publish::run(&broker, args, mqtt::QoS::AtLeastOnce, args.connections, 1, deadline).await?
        }
        MqttScenario::FanIn => publish::run(&broker, args, qos, args.connections, 1, deadline).await?,
        MqttScenario::FanOut => publish::run(&broker, args, qos, 1, args.connections, deadline).await?,
        MqttScenario::Revocation => revocation::run(&broker, args, deadline).await?,
    };
    let wall_seconds = outcome.wall_seconds.unwrap_or_else(|| started.elapsed().as_secs_f64());
    let cpu_after = servers_cpu_seconds(&args.server_pid);
    let mut latencies_us = outcome.latencies_us;
    latencies_us.sort_unstable();
    Ok(Report {
        label: args.label.clone(),
        scenario: format!("{:?}", args.scenario),
        connections: args.connections,
        ok: outcome.ok,
        reconnects: 0,
        failures: if outcome.failures > 0 {
            [(0u16, outcome.failures)].into_iter().collect()
        } else {
            Default::default()
        },
        wall_seconds,
        latencies_us,
        server_cpu_seconds: outcome
            .server_cpu_seconds
            .or_else(|| cpu_before.zip(cpu_after).map(|(before, after)| after - before)),
        server_peak_rss_kib: servers_peak_rss_kib(&args.server_pid),
        details: outcome.details,
        notes: outcome.notes,
    })
}

async fn broker(args: &MqttArgs, devices: usize) -> anyhow::Result<Broker> {
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
    let roots = Arc::new(roots);
    let made = match (&args.data_dir, &args.identities) {
        (None, Some(dir)) => load_identities(dir, devices)?,
        (Some(data_dir), save) => {
            let made = make_identities(data_dir, "default", devices, args.policy_file.as_deref()).await?;
            if let Some(dir) = save {
                save_identities(dir, &made)?;
            }
            made
        }
        (None, None) => bail!("give --data-dir or --identities"),
    };
    anyhow::ensure!(!made.is_empty(), "no identities");
    let identities = identities_from(made, &roots)?;
    Ok(Broker { addr, name: ServerName::try_from(args.server_name.clone())?, roots, identities })
}

/// A broker for the account of `profile` in a certfleet data directory: `count` identities made
/// through its API (allow-all policy), the gateway reached by the account's own endpoint name
/// (DescribeEndpoint iot:Data-ATS) as SNI.
pub(crate) async fn broker_for(data_dir: &Path, profile: &str, count: usize) -> anyhow::Result<Broker> {
    let endpoints: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(data_dir.join("endpoints.json")).context("reading endpoints.json")?,
    )?;
    let addr = endpoints["mqtt_addr"].as_str().context("endpoints.json has no mqtt_addr")?.to_owned();
    let mut roots = rustls::RootCertStore::empty();
    for certificate in CertificateDer::pem_file_iter(data_dir.join("server-root.pem"))? {
        roots.add(certificate?)?;
    }
    let roots = Arc::new(roots);
    let target = Target::from_data_dir(data_dir, profile, "us-east-1")?;
    let mut connection = target.connect().await?;
    let call = Call { method: "GET", path: "/endpoint?endpointType=iot%3AData-ATS".into(), body: Bytes::new() };
    let (status, body) = target.send(&mut connection, &call).await?;
    anyhow::ensure!(status == 200, "DescribeEndpoint answered {status}: {}", String::from_utf8_lossy(&body));
    let endpoint: serde_json::Value = serde_json::from_slice(&body)?;
    let name = endpoint["endpointAddress"].as_str().context("no endpointAddress")?.to_owned();
    let identities = identities_from(make_identities(data_dir, profile, count, None).await?, &roots)?;
    Ok(Broker { addr, name: ServerName::try_from(name)?, roots, identities })
}

/// Identities from PEM text, each with a client configuration of full handshakes.
fn identities_from(made: Vec<MadeIdentity>, roots: &Arc<rustls::RootCertStore>) -> anyhow::Result<Vec<Identity>> {
    made.into_iter()
        .map(|made| {
            let chain = CertificateDer::pem_slice_iter(made.cert.as_bytes()).collect::<Result<Vec<_>, _>>()?;
            let key = PrivateKeyDer::from_pem_slice(made.key.as_bytes())?;
            let full_handshakes = Arc::new(client_config(roots, &chain, &key, rustls::client::Resumption::disabled())?);
            Ok(Identity { chain, key, certificate_id: made.certificate_id, full_handshakes })
        })
        .collect()
}

/// A SUBSCRIBE of one filter.
pub(crate) fn subscribe_packet(packet_id: u16, filter: &str, qos: mqtt::QoS) -> Packet {
    Packet::Subscribe(mqtt::Subscribe {
        packet_id: mqtt::PacketId::new(packet_id.max(1)).expect("not zero"),
        subscriptions: vec![mqtt::Subscription {
            filter: mqtt::TopicFilter::new(filter).expect("a valid filter"),
            qos,
            no_local: false,
            retain_as_published: false,
            retain_handling: Default::default(),
        }],
        properties: Default::default(),
    })
}

/// The client side of every scenario: aws-lc-rs, TLS 1.3 or 1.2 (the server picks; both
/// brokers here pick 1.3), key exchange X25519 only so that certfleet and Mosquitto do the same
/// work (and the same as the in-process ceiling).
pub(crate) fn client_config(
    roots: &Arc<rustls::RootCertStore>,
    chain: &[CertificateDer<'static>],
    key: &PrivateKeyDer<'static>,
    resumption: rustls::client::Resumption,
) -> anyhow::Result<rustls::ClientConfig> {
    let mut config = rustls::ClientConfig::builder_with_provider(certfleet_loadgen::ceiling::provider())
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots.clone())
        .with_client_auth_cert(chain.to_vec(), key.clone_key())?;
    config.resumption = resumption;
    Ok(config)
}

/// An identity as PEM text, with its certificate ID when the API made it.
struct MadeIdentity {
    cert: String,
    key: String,
    certificate_id: Option<String>,
}

/// The policy attached to every identity the load tool makes, unless --policy-file names
/// another: everything allowed.
const LOADGEN_POLICY_NAME: &str = "certfleet-loadgen-allow-all";
const LOADGEN_POLICY: &str =
    r#"{"Version":"2012-10-17","Statement":[{"Effect":"Allow","Action":"iot:*","Resource":"*"}]}"#;
const CUSTOM_POLICY_NAME: &str = "certfleet-loadgen-custom";

/// API connections used at once to make identities.
const MAKING_CONNECTIONS: usize = 8;

/// Makes identities through the control plane: a P-256 key and CreateCertificateFromCsr each,
/// with a policy attached (the gateway enforces policies: without one a device may not connect),
/// over a few API connections at once.
async fn make_identities(
    data_dir: &Path,
    profile: &str,
    count: usize,
    policy_file: Option<&Path>,
) -> anyhow::Result<Vec<MadeIdentity>> {
    let target = Arc::new(Target::from_data_dir(data_dir, profile, "us-east-1")?);
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
    let mut makers = Vec::new();
    for maker in 0..MAKING_CONNECTIONS.min(count) {
        let target = target.clone();
        makers.push(tokio::spawn(async move {
            let mut connection = target.connect().await?;
            let mut made = Vec::new();
            for index in (maker..count).step_by(MAKING_CONNECTIONS) {
                made.push((index, make_identity(&target, &mut connection, index, policy_name).await?));
            }
            anyhow::Ok(made)
        }));
    }
    let mut made = Vec::with_capacity(count);
    for maker in makers {
        made.extend(maker.await??);
    }
    made.sort_by_key(|(index, _)| *index);
    Ok(made.into_iter().map(|(_, identity)| identity).collect())
}

async fn make_identity(
    target: &Target,
    connection: &mut certfleet_client::Connection,
    index: usize,
    policy_name: &str,
) -> anyhow::Result<MadeIdentity> {
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?;
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new())?;
    params.distinguished_name.push(rcgen::DnType::CommonName, format!("loadgen-mqtt-{index}"));
    let csr = params.serialize_request(&key)?.pem()?;
    let body = serde_json::json!({ "certificateSigningRequest": csr }).to_string();
    let call = Call { method: "POST", path: "/certificates?setAsActive=true".into(), body: Bytes::from(body) };
    let (status, body) = target.send(connection, &call).await?;
    anyhow::ensure!(status == 200, "CreateCertificateFromCsr answered {status}: {}", String::from_utf8_lossy(&body));
    let created: serde_json::Value = serde_json::from_slice(&body)?;
    let cert = created["certificatePem"].as_str().context("no certificatePem")?.to_owned();
    let arn = created["certificateArn"].as_str().context("no certificateArn")?;
    let certificate_id = created["certificateId"].as_str().map(str::to_owned);
    let body = serde_json::json!({ "target": arn }).to_string();
    let call = Call { method: "PUT", path: format!("/target-policies/{policy_name}"), body: Bytes::from(body) };
    let (status, body) = target.send(connection, &call).await?;
    anyhow::ensure!(status == 200, "AttachPolicy answered {status}: {}", String::from_utf8_lossy(&body));
    Ok(MadeIdentity { cert, key: key.serialize_pem(), certificate_id })
}

fn save_identities(dir: &Path, identities: &[MadeIdentity]) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir)?;
    for (index, identity) in identities.iter().enumerate() {
        std::fs::write(dir.join(format!("{index}.crt")), &identity.cert)?;
        let key_path = dir.join(format!("{index}.key"));
        std::fs::write(&key_path, &identity.key)?;
        #[cfg(unix)]
        std::fs::set_permissions(&key_path, std::os::unix::fs::PermissionsExt::from_mode(0o600))?;
    }
    Ok(())
}

fn load_identities(dir: &Path, count: usize) -> anyhow::Result<Vec<MadeIdentity>> {
    (0..count)
        .map(|index| {
            let cert = std::fs::read_to_string(dir.join(format!("{index}.crt")))?;
            let key = std::fs::read_to_string(dir.join(format!("{index}.key")))?;
            Ok(MadeIdentity { cert, key, certificate_id: None })
        })
        .collect()
}

/// How long a TLS handshake plus CONNECT/CONNACK may take before it counts as failed.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// One MQTT connection over TLS with its read buffer.
pub(crate) struct Client {
    stream: TlsStream<TcpStream>,
    buffer: BytesMut,
    /// Full or resumed handshake.
    handshake: Option<HandshakeKind>,
}

impl Client {
    /// Connects from `source` (an address to bind before connecting) or from the default
    /// address, over TLS with `config`, and sends CONNECT with `keep_alive` seconds.
    pub(crate) async fn connect(
        broker: &Broker,
        config: &Arc<rustls::ClientConfig>,
        source: Option<IpAddr>,
        client_id: &str,
        keep_alive: u16,
    ) -> anyhow::Result<Client> {
        tokio::time::timeout(
            CONNECT_TIMEOUT,
            Client::connect_unbounded(broker, &broker.addr, config, source, client_id, keep_alive, true),
        )
        .await
        .context("connect timed out")?
    }

    /// The same, to another address of the broker (another node of a cluster) than its own.
    pub(crate) async fn connect_at(
        broker: &Broker,
        addr: &str,
        config: &Arc<rustls::ClientConfig>,
        client_id: &str,
        keep_alive: u16,
    ) -> anyhow::Result<Client> {
        tokio::time::timeout(
            CONNECT_TIMEOUT,
            Client::connect_unbounded(broker, addr, config, None, client_id, keep_alive, true),
        )
        .await
        .context("connect timed out")?
    }

    /// A connection that keeps its session (clean session 0) when it goes.
    pub(crate) async fn connect_persistent(
        broker: &Broker,
        config: &Arc<rustls::ClientConfig>,
        client_id: &str,
    ) -> anyhow::Result<Client> {
        tokio::time::timeout(
            CONNECT_TIMEOUT,
            Client::connect_unbounded(broker, &broker.addr, config, None, client_id, 30, false),
        )
        .await
        .context("connect timed out")?
    }

    async fn connect_unbounded(
        broker: &Broker,
        addr: &str,
        config: &Arc<rustls::ClientConfig>,
        source: Option<IpAddr>,
        client_id: &str,
        keep_alive: u16,
        clean_start: bool,
    ) -> anyhow::Result<Client> {
        let tcp = match source {
            None => TcpStream::connect(addr).await?,
            Some(source) => {
                let to: SocketAddr = tokio::net::lookup_host(addr).await?.next().context("no broker address")?;
                let socket = TcpSocket::new_v4()?;
                socket.bind(SocketAddr::new(source, 0)).with_context(|| format!("binding {source}"))?;
                socket.connect(to).await?
            }
        };
        tcp.set_nodelay(true)?;
        let stream = tokio_rustls::TlsConnector::from(config.clone()).connect(broker.name.clone(), tcp).await?;
        let handshake = stream.get_ref().1.handshake_kind();
        let mut client = Client { stream, buffer: BytesMut::with_capacity(4096), handshake };
        let connect = mqtt::Connect {
            protocol_version: ProtocolVersion::V311,
            clean_start,
            keep_alive,
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

    pub(crate) async fn send(&mut self, packet: &Packet) -> anyhow::Result<()> {
        let mut out = BytesMut::new();
        mqtt::encode(packet, ProtocolVersion::V311, &mut out)?;
        self.stream.write_all(&out).await?;
        Ok(())
    }

    pub(crate) async fn receive(&mut self) -> anyhow::Result<Packet> {
        loop {
            if let Some(packet) = mqtt::decode(&mut self.buffer, ProtocolVersion::V311, mqtt::MAX_PACKET_SIZE)? {
                return Ok(packet);
            }
            if self.stream.read_buf(&mut self.buffer).await? == 0 {
                bail!("the broker closed the connection");
            }
        }
    }

    /// Sends DISCONNECT and closes TLS, ignoring errors (the broker may be gone).
    pub(crate) async fn disconnect(mut self) {
        let _ = self.send(&Packet::Disconnect(Default::default())).await;
        let _ = self.stream.shutdown().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn source_addresses_spread_connections_in_turn() {
        let check = |index: usize, count: usize, expected: Option<&str>| {
            assert_eq!(source_address(index, count), expected.map(|text| text.parse().unwrap()), "{index} of {count}");
        };
        check(0, 0, None);
        check(5, 0, None);
        check(0, 1, Some("127.0.0.2"));
        check(7, 1, Some("127.0.0.2"));
        check(0, 3, Some("127.0.0.2"));
        check(1, 3, Some("127.0.0.3"));
        check(2, 3, Some("127.0.0.4"));
        check(3, 3, Some("127.0.0.2"));
        check(252, 253, Some("127.0.0.254"));
        check(252, 1000, Some("127.0.0.254"));
    }

    #[test]
    fn storm_workers_take_the_addresses_in_turn() {
        let also = ["b:2".to_owned(), "c:3".to_owned()];
        let check = |worker: usize, also: &[String], expected: &str| {
            assert_eq!(storm_addr(worker, "a:1", also), expected, "worker {worker} of {also:?}");
        };
        check(0, &[], "a:1");
        check(7, &[], "a:1");
        check(0, &also, "a:1");
        check(1, &also, "b:2");
        check(2, &also, "c:3");
        check(3, &also, "a:1");
        check(5, &also, "c:3");
    }

    #[test]
    fn figures_of_several_servers_are_summed_only_when_all_are_known() {
        let check = |values: &[Option<u64>], expected: Option<u64>| {
            assert_eq!(sum_all(values.iter().copied()), expected, "{values:?}");
        };
        check(&[], None);
        check(&[Some(3)], Some(3));
        check(&[Some(3), Some(4), Some(5)], Some(12));
        check(&[Some(3), None, Some(5)], None);
        check(&[None], None);
        assert_eq!(servers_cpu_seconds(&[]), None);
        assert!(servers_cpu_seconds(&[std::process::id()]).is_some());
        assert!(servers_rss_kib(&[std::process::id(), std::process::id()]).is_some());
        assert_eq!(servers_peak_rss_kib(&[std::process::id(), u32::MAX]), None);
    }

    #[test]
    fn source_address_counts() {
        let check = |requested: usize, connections: usize, expected: usize| {
            assert_eq!(source_address_count(requested, connections), expected, "{requested} for {connections}");
        };
        check(0, 0, 1);
        check(0, 50, 1);
        check(0, 20_000, 1);
        check(0, 20_001, 2);
        check(0, 50_000, 3);
        check(4, 50, 4);
        check(1000, 50, 253);
    }
}
