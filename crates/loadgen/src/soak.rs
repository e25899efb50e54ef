//! The soak: an hour (or `--duration`) of mixed legitimate traffic (connect storms, QoS 0 and 1
//! publishes, API calls, certificate rotations) while an attacker rotates through the attacks of
//! the bounded-resources issue, one phase at a time. Every `--sample` seconds it writes a row:
//! the server's RSS and open file descriptors, and what the legitimate clients saw (connects and
//! their p99 latency, messages sent and received, API calls and their p99, rotations completed).
//! Flat lines are the expectation: no attack may grow the server without bound or slow the
//! legitimate clients.
//!
//! Every piece is bounded: the rates are fixed, the attacker's connections are capped per phase
//! and closed at the phase's end, and the whole run stops at `--duration`.

use std::fmt::Write as _;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context;
use bytes::Bytes;
use certfleet_client::{Call, Target};
use certfleet_loadgen::proc_stats;
use certfleet_mqtt::{self as mqtt, Packet, QoS};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio::sync::Mutex;

use crate::mqtt::{Broker, Client, Identity};

#[derive(clap::Args)]
pub struct SoakArgs {
    /// A certfleet data directory (endpoints.json, credentials, server-root.pem).
    #[arg(long)]
    pub data_dir: PathBuf,
    /// The legitimate tenant's profile in the data directory's credentials.
    #[arg(long, default_value = "default")]
    pub profile: String,
    /// The attacking tenant's profile (another account; `certfleet account create`).
    #[arg(long, default_value = "attacker")]
    pub attacker_profile: String,
    /// The server's process ID (RSS, file descriptors).
    #[arg(long)]
    pub server_pid: u32,
    /// Total run time, seconds (at most two hours).
    #[arg(long, default_value_t = 3600.0)]
    pub duration: f64,
    /// Seconds between samples.
    #[arg(long, default_value_t = 10.0)]
    pub sample: f64,
    /// Seconds each attack phase lasts before the attacker moves to the next.
    #[arg(long, default_value_t = 60.0)]
    pub attack_period: f64,
    /// Legitimate connects (full handshake, CONNECT, CONNACK, DISCONNECT) per second.
    #[arg(long, default_value_t = 10.0)]
    pub connect_rate: f64,
    /// Legitimate messages per second (half QoS 0, half QoS 1) to one subscriber.
    #[arg(long, default_value_t = 50.0)]
    pub publish_rate: f64,
    /// Legitimate API calls per second.
    #[arg(long, default_value_t = 10.0)]
    pub api_rate: f64,
    /// Devices that rotate their certificates (through the documented rotation topics).
    #[arg(long, default_value_t = 4)]
    pub rotating_devices: usize,
    /// Seconds between rotation campaigns over the rotating devices.
    #[arg(long, default_value_t = 120.0)]
    pub rotation_interval: f64,
    /// Write the samples here as CSV.
    #[arg(long)]
    pub csv: Option<PathBuf>,
    /// Write the samples here as a Markdown table.
    #[arg(long)]
    pub markdown: Option<PathBuf>,
}

/// The attacks, in the order the attacker rotates through them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Attack {
    /// TLS connections to the API that send a request header one byte every few seconds.
    ApiSlowloris,
    /// TCP connections to the API that never start TLS.
    ApiIdle,
    /// Requests signed with made-up access key IDs, half of them declaring a 1 GiB body.
    ApiForgedKeys,
    /// TLS handshakes to the gateway with made-up SNI names and self-signed client certificates.
    GatewayStrangers,
    /// A device of the attacking tenant publishes large retained messages on fresh topics.
    RetainedFlood,
    /// Persistent sessions of the attacking tenant subscribe, go offline, and are flooded.
    OfflineQueueFill,
    /// A self-republishing rule of the attacking tenant whose output grows each generation.
    RuleBomb,
}

const ATTACKS: [Attack; 7] = [
    Attack::ApiSlowloris,
    Attack::ApiIdle,
    Attack::ApiForgedKeys,
    Attack::GatewayStrangers,
    Attack::RetainedFlood,
    Attack::OfflineQueueFill,
    Attack::RuleBomb,
];

impl Attack {
    fn name(self) -> &'static str {
        match self {
            Attack::ApiSlowloris => "api-slowloris",
            Attack::ApiIdle => "api-idle",
            Attack::ApiForgedKeys => "api-forged-keys",
            Attack::GatewayStrangers => "gateway-strangers",
            Attack::RetainedFlood => "retained-flood",
            Attack::OfflineQueueFill => "offline-queue-fill",
            Attack::RuleBomb => "rule-bomb",
        }
    }
}

/// What the legitimate clients saw in the current sample window (reset at each sample).
#[derive(Default)]
struct Window {
    connect_us: Vec<u32>,
    connect_failures: u64,
    api_us: Vec<u32>,
    api_failures: u64,
}

#[derive(Default)]
struct Counters {
    sent_qos0: AtomicU64,
    sent_qos1: AtomicU64,
    received: AtomicU64,
    publish_failures: AtomicU64,
    rotations: AtomicU64,
    rotation_failures: AtomicU64,
    attack_operations: AtomicU64,
}

struct Shared {
    window: Mutex<Window>,
    counters: Counters,
    stop: AtomicBool,
}

/// One sample row.
struct Row {
    seconds: u64,
    attack: &'static str,
    rss_mib: f64,
    fds: u64,
    connects: usize,
    connect_failures: u64,
    connect_p99_ms: f64,
    sent: u64,
    received: u64,
    publish_failures: u64,
    api_calls: usize,
    api_failures: u64,
    api_p99_ms: f64,
    rotations: u64,
    rotation_failures: u64,
    attack_operations: u64,
}

const CSV_HEADER: &str = "seconds,attack,rss_mib,fds,connects,connect_failures,connect_p99_ms,sent,received,publish_failures,api_calls,api_failures,api_p99_ms,rotations,rotation_failures,attack_operations";

impl Row {
    fn csv(&self) -> String {
        format!(
            "{},{},{:.1},{},{},{},{:.1},{},{},{},{},{},{:.1},{},{},{}",
            self.seconds,
            self.attack,
            self.rss_mib,
            self.fds,
            self.connects,
            self.connect_failures,
            self.connect_p99_ms,
            self.sent,
            self.received,
            self.publish_failures,
            self.api_calls,
            self.api_failures,
            self.api_p99_ms,
            self.rotations,
            self.rotation_failures,
            self.attack_operations
        )
    }

    fn markdown(&self) -> String {
        format!(
            "| {} | {} | {:.1} | {} | {} | {} | {:.1} | {} | {} | {} | {} | {:.1} | {} | {} |",
            self.seconds,
            self.attack,
            self.rss_mib,
            self.fds,
            self.connects,
            self.connect_failures,
            self.connect_p99_ms,
            self.sent,
            self.received,
            self.api_calls,
            self.api_failures,
            self.api_p99_ms,
            self.rotations,
            self.attack_operations
        )
    }
}

const MARKDOWN_HEADER: &str = "| s | attack | RSS MiB | fds | connects | failed | connect p99 ms | sent | received | API calls | failed | API p99 ms | rotations | attack ops |\n|--:|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|";

fn p99_ms(samples: &mut [u32]) -> f64 {
    samples.sort_unstable();
    crate::report::percentile(samples, 0.99).map_or(0.0, |us| f64::from(us) / 1000.0)
}

fn open_fds(pid: u32) -> u64 {
    std::fs::read_dir(format!("/proc/{pid}/fd")).map_or(0, |dir| dir.count() as u64)
}

/// A small xorshift generator: made-up names and key IDs need variety, not quality.
struct Noise(u64);

impl Noise {
    fn new(seed: u64) -> Noise {
        let time =
            std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(1, |d| d.as_nanos() as u64);
        Noise((seed ^ time) | 1)
    }

    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn word(&mut self, length: usize) -> String {
        (0..length).map(|_| char::from(b'a' + (self.next() % 26) as u8)).collect()
    }
}

/// Waits until `at`, or returns false when the run is stopping.
async fn pace(shared: &Shared, at: Instant) -> bool {
    tokio::time::sleep_until(at.into()).await;
    !shared.stop.load(Ordering::Relaxed)
}

pub async fn run(args: &SoakArgs) -> anyhow::Result<()> {
    anyhow::ensure!(args.duration > 0.0 && args.duration <= 7200.0, "--duration must be in (0, 7200] seconds");
    anyhow::ensure!(args.sample >= 1.0, "--sample must be at least 1 second");
    anyhow::ensure!(args.attack_period >= 5.0, "--attack-period must be at least 5 seconds");
    for rate in [args.connect_rate, args.publish_rate, args.api_rate] {
        anyhow::ensure!(rate > 0.0 && rate <= 1000.0, "rates must be in (0, 1000] per second");
    }
    anyhow::ensure!(args.rotating_devices <= 64, "--rotating-devices must be at most 64");

    let legit = Arc::new(crate::mqtt::broker_for(&args.data_dir, &args.profile, 8 + args.rotating_devices).await?);
    let attacker = Arc::new(crate::mqtt::broker_for(&args.data_dir, &args.attacker_profile, 4).await?);
    let api = Arc::new(Target::from_data_dir(&args.data_dir, &args.profile, "us-east-1")?);
    let attacker_api = Target::from_data_dir(&args.data_dir, &args.attacker_profile, "us-east-1")?;
    let endpoints: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(args.data_dir.join("endpoints.json"))?)?;
    let api_url = endpoints["api"].as_str().context("endpoints.json has no api URL")?.to_owned();
    let api_addr =
        api_url.trim_start_matches("https://").trim_start_matches("http://").trim_end_matches('/').to_owned();
    let api_tls = tls_without_client_auth(&legit.roots);

    // The attacker's rule: republishes a growing concatenation to its own topic.
    let rule = serde_json::json!({
        "sql": "SELECT concat(x, x, x, x, x, x, x, x, x, x) AS x FROM 'bomb/loop'",
        "actions": [{"republish": {"topic": "bomb/loop", "qos": 0, "roleArn": "arn:aws:iam::123456789012:role/soak"}}],
        "ruleDisabled": false,
        "awsIotSqlVersion": "2016-03-23",
    });
    let mut connection = attacker_api.connect().await?;
    let (status, body) = attacker_api
        .send(
            &mut connection,
            &Call { method: "POST", path: "/rules/soak_bomb".into(), body: Bytes::from(rule.to_string()) },
        )
        .await?;
    anyhow::ensure!(
        status == 200 || status == 409,
        "CreateTopicRule answered {status}: {}",
        String::from_utf8_lossy(&body)
    );

    let shared = Arc::new(Shared {
        window: Mutex::new(Window::default()),
        counters: Counters::default(),
        stop: AtomicBool::new(false),
    });
    let started = Instant::now();
    let deadline = started + Duration::from_secs_f64(args.duration);
    let attack_now = Arc::new(std::sync::atomic::AtomicUsize::new(0));

    let mut tasks = vec![
        tokio::spawn(connects(legit.clone(), shared.clone(), args.connect_rate)),
        tokio::spawn(publishes(legit.clone(), shared.clone(), args.publish_rate)),
        tokio::spawn(api_calls(api.clone(), shared.clone(), args.api_rate)),
        tokio::spawn(rotations(
            legit.clone(),
            api.clone(),
            shared.clone(),
            args.rotating_devices,
            Duration::from_secs_f64(args.rotation_interval),
        )),
    ];
    {
        let (shared, attack_now, attacker) = (shared.clone(), attack_now.clone(), attacker.clone());
        let (api_addr, api_url, api_tls, period) =
            (api_addr.clone(), api_url.clone(), api_tls.clone(), Duration::from_secs_f64(args.attack_period));
        let ca = args.data_dir.join("server-root.pem");
        tasks.push(tokio::spawn(async move {
            let mut phase = 0;
            while !shared.stop.load(Ordering::Relaxed) {
                let attack = ATTACKS[phase % ATTACKS.len()];
                attack_now.store(phase % ATTACKS.len(), Ordering::Relaxed);
                let until = Instant::now() + period;
                let context = AttackContext {
                    shared: shared.clone(),
                    until,
                    api_addr: api_addr.clone(),
                    api_url: api_url.clone(),
                    api_tls: api_tls.clone(),
                    ca: ca.clone(),
                    attacker: attacker.clone(),
                };
                if let Err(error) = attack_phase(attack, &context).await {
                    eprintln!("attack {}: {error:#}", attack.name());
                }
                tokio::time::sleep_until(until.into()).await;
                phase += 1;
            }
            anyhow::Ok(())
        }));
    }

    let mut rows = Vec::new();
    let mut csv = String::from(CSV_HEADER);
    csv.push('\n');
    let interval = Duration::from_secs_f64(args.sample);
    let mut next = started + interval;
    let mut received_before = 0;
    let mut sent_before = 0;
    while next <= deadline {
        tokio::time::sleep_until(next.into()).await;
        next += interval;
        let mut window = std::mem::take(&mut *shared.window.lock().await);
        let counters = &shared.counters;
        let sent = counters.sent_qos0.load(Ordering::Relaxed) + counters.sent_qos1.load(Ordering::Relaxed);
        let received = counters.received.load(Ordering::Relaxed);
        let row = Row {
            seconds: started.elapsed().as_secs(),
            attack: ATTACKS[attack_now.load(Ordering::Relaxed)].name(),
            rss_mib: proc_stats::rss_kib(args.server_pid).map_or(0.0, |kib| kib as f64 / 1024.0),
            fds: open_fds(args.server_pid),
            connects: window.connect_us.len(),
            connect_failures: window.connect_failures,
            connect_p99_ms: p99_ms(&mut window.connect_us),
            sent: sent - sent_before,
            received: received - received_before,
            publish_failures: counters.publish_failures.swap(0, Ordering::Relaxed),
            api_calls: window.api_us.len(),
            api_failures: window.api_failures,
            api_p99_ms: p99_ms(&mut window.api_us),
            rotations: counters.rotations.swap(0, Ordering::Relaxed),
            rotation_failures: counters.rotation_failures.swap(0, Ordering::Relaxed),
            attack_operations: counters.attack_operations.swap(0, Ordering::Relaxed),
        };
        (sent_before, received_before) = (sent, received);
        println!("{}", row.csv());
        let _ = writeln!(csv, "{}", row.csv());
        if let Some(path) = &args.csv {
            std::fs::write(path, &csv)?;
        }
        rows.push(row);
        if proc_stats::rss_kib(args.server_pid).is_none() {
            eprintln!("the server (pid {}) is gone", args.server_pid);
            break;
        }
    }
    shared.stop.store(true, Ordering::Relaxed);
    for task in tasks {
        task.abort();
    }
    if let Some(path) = &args.markdown {
        let mut table = String::from(MARKDOWN_HEADER);
        for row in &rows {
            table.push('\n');
            table.push_str(&row.markdown());
        }
        table.push('\n');
        std::fs::write(path, table)?;
    }
    let summary = summarize(&rows);
    eprintln!("{summary}");
    anyhow::ensure!(proc_stats::rss_kib(args.server_pid).is_some(), "the server died during the soak");
    Ok(())
}

fn summarize(rows: &[Row]) -> String {
    let fold = |value: &dyn Fn(&Row) -> f64| {
        rows.iter().map(value).fold((f64::MAX, f64::MIN), |(low, high), v| (low.min(v), high.max(v)))
    };
    let rss = fold(&|row| row.rss_mib);
    let fds = fold(&|row| row.fds as f64);
    let connect = fold(&|row| row.connect_p99_ms);
    let api = fold(&|row| row.api_p99_ms);
    let connects: usize = rows.iter().map(|row| row.connects).sum();
    let failures: u64 = rows.iter().map(|row| row.connect_failures).sum();
    let sent: u64 = rows.iter().map(|row| row.sent).sum();
    let received: u64 = rows.iter().map(|row| row.received).sum();
    let rotations: u64 = rows.iter().map(|row| row.rotations).sum();
    format!(
        "samples {}; RSS {:.1}-{:.1} MiB; fds {:.0}-{:.0}; connect p99 {:.1}-{:.1} ms; API p99 {:.1}-{:.1} ms; \
         connects {connects} ({failures} failed); messages sent {sent}, received {received}; rotations {rotations}",
        rows.len(),
        rss.0,
        rss.1,
        fds.0,
        fds.1,
        connect.0,
        connect.1,
        api.0,
        api.1
    )
}

fn tls_without_client_auth(roots: &Arc<rustls::RootCertStore>) -> Arc<rustls::ClientConfig> {
    Arc::new(
        rustls::ClientConfig::builder_with_provider(certfleet_loadgen::ceiling::provider())
            .with_safe_default_protocol_versions()
            .expect("default versions")
            .with_root_certificates(roots.clone())
            .with_no_client_auth(),
    )
}

/// A PUBLISH packet; `packet_id` is ignored at QoS 0.
fn publish(topic: &str, qos: QoS, packet_id: u16, retain: bool, payload: Bytes) -> anyhow::Result<Packet> {
    Ok(Packet::Publish(mqtt::Publish {
        dup: false,
        qos,
        retain,
        topic: Some(mqtt::TopicName::new(topic)?),
        packet_id: if qos == QoS::AtMostOnce {
            None
        } else {
            Some(mqtt::PacketId::new(packet_id.max(1)).context("packet id")?)
        },
        properties: Default::default(),
        payload,
    }))
}

fn topic_of(publish: &mqtt::Publish) -> &str {
    publish.topic.as_ref().map_or("", mqtt::TopicName::as_str)
}

// ---- legitimate traffic ----

async fn connects(broker: Arc<Broker>, shared: Arc<Shared>, rate: f64) -> anyhow::Result<()> {
    let step = Duration::from_secs_f64(1.0 / rate);
    let mut at = Instant::now();
    let mut index = 0usize;
    while pace(&shared, at).await {
        at += step;
        index += 1;
        let (broker, shared) = (broker.clone(), shared.clone());
        // Each connect in its own task, so that a slow one does not lower the rate.
        tokio::spawn(async move {
            let identity = &broker.identities[index % 8];
            let started = Instant::now();
            match Client::connect(&broker, &identity.full_handshakes, None, &format!("soak-connect-{}", index % 64), 30)
                .await
            {
                Ok(client) => {
                    let elapsed = crate::mqtt::micros(started.elapsed());
                    client.disconnect().await;
                    shared.window.lock().await.connect_us.push(elapsed);
                }
                Err(_) => shared.window.lock().await.connect_failures += 1,
            }
        });
    }
    Ok(())
}

async fn publishes(broker: Arc<Broker>, shared: Arc<Shared>, rate: f64) -> anyhow::Result<()> {
    let subscriber = {
        let (broker, shared) = (broker.clone(), shared.clone());
        tokio::spawn(async move {
            while !shared.stop.load(Ordering::Relaxed) {
                if let Err(error) = subscribe_and_count(&broker, &shared).await {
                    eprintln!("subscriber: {error:#}");
                    shared.counters.publish_failures.fetch_add(1, Ordering::Relaxed);
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
            }
        })
    };
    tokio::time::sleep(Duration::from_secs(1)).await;
    let qos0 = tokio::spawn(publisher(broker.clone(), shared.clone(), rate / 2.0, QoS::AtMostOnce, 1));
    let qos1 = tokio::spawn(publisher(broker, shared, rate / 2.0, QoS::AtLeastOnce, 2));
    let _ = tokio::join!(subscriber, qos0, qos1);
    Ok(())
}

async fn subscribe_and_count(broker: &Broker, shared: &Shared) -> anyhow::Result<()> {
    let mut client =
        Client::connect(broker, &broker.identities[0].full_handshakes, None, "soak-subscriber", 30).await?;
    client.send(&crate::mqtt::subscribe_packet(1, "soak/#", QoS::AtLeastOnce)).await?;
    loop {
        let packet = tokio::time::timeout(Duration::from_secs(20), client.receive()).await??;
        match packet {
            Packet::Publish(publish) => {
                shared.counters.received.fetch_add(1, Ordering::Relaxed);
                if let Some(id) = publish.packet_id {
                    client
                        .send(&Packet::PubAck(mqtt::PubAck {
                            packet_id: id,
                            reason_code: mqtt::ReasonCode::SUCCESS,
                            properties: Default::default(),
                        }))
                        .await?;
                }
            }
            Packet::SubAck(_) | Packet::PingResp => {}
            other => anyhow::bail!("subscriber got {other:?}"),
        }
        if shared.stop.load(Ordering::Relaxed) {
            return Ok(());
        }
    }
}

async fn publisher(broker: Arc<Broker>, shared: Arc<Shared>, rate: f64, qos: QoS, which: usize) {
    let step = Duration::from_secs_f64(1.0 / rate);
    let mut at = Instant::now();
    let payload = Bytes::from(vec![b'm'; 256]);
    let mut packet_id = 0u16;
    'connect: while !shared.stop.load(Ordering::Relaxed) {
        let mut client = match Client::connect(
            &broker,
            &broker.identities[which].full_handshakes,
            None,
            &format!("soak-publisher-{which}"),
            30,
        )
        .await
        {
            Ok(client) => client,
            Err(_) => {
                shared.counters.publish_failures.fetch_add(1, Ordering::Relaxed);
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
        };
        while pace(&shared, at).await {
            at += step;
            packet_id = packet_id.wrapping_add(1).max(1);
            let result = async {
                let id = if qos == QoS::AtMostOnce { 0 } else { packet_id };
                client.send(&publish(&format!("soak/{which}"), qos, id, false, payload.clone())?).await?;
                if qos == QoS::AtLeastOnce {
                    match tokio::time::timeout(Duration::from_secs(10), client.receive()).await?? {
                        Packet::PubAck(_) => {}
                        other => anyhow::bail!("expected PUBACK, got {other:?}"),
                    }
                }
                anyhow::Ok(())
            }
            .await;
            match result {
                Ok(()) => {
                    let counter =
                        if qos == QoS::AtMostOnce { &shared.counters.sent_qos0 } else { &shared.counters.sent_qos1 };
                    counter.fetch_add(1, Ordering::Relaxed);
                }
                Err(_) => {
                    shared.counters.publish_failures.fetch_add(1, Ordering::Relaxed);
                    continue 'connect;
                }
            }
        }
        client.disconnect().await;
    }
}

async fn api_calls(api: Arc<Target>, shared: Arc<Shared>, rate: f64) -> anyhow::Result<()> {
    let step = Duration::from_secs_f64(1.0 / rate);
    let calls = [
        Call { method: "GET", path: "/policies".into(), body: Bytes::new() },
        Call { method: "GET", path: "/things?maxResults=10".into(), body: Bytes::new() },
        Call { method: "GET", path: "/certificates?pageSize=10".into(), body: Bytes::new() },
    ];
    let mut connection = None;
    let mut at = Instant::now();
    let mut index = 0;
    while pace(&shared, at).await {
        at += step;
        index += 1;
        let started = Instant::now();
        let result = async {
            if connection.as_ref().is_none_or(certfleet_client::Connection::is_closed) {
                connection = Some(api.connect().await?);
            }
            let connection = connection.as_mut().expect("just made");
            api.send(connection, &calls[index % calls.len()]).await
        }
        .await;
        let elapsed = crate::mqtt::micros(started.elapsed());
        let mut window = shared.window.lock().await;
        match result {
            Ok((200, _)) => window.api_us.push(elapsed),
            Ok(_) => window.api_failures += 1,
            Err(_) => {
                window.api_failures += 1;
                connection = None;
            }
        }
    }
    Ok(())
}

/// A device that rotates: its current identity, replaced when a rotation completes.
struct Rotating {
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
    certificate_id: String,
}

async fn rotations(
    broker: Arc<Broker>,
    api: Arc<Target>,
    shared: Arc<Shared>,
    devices: usize,
    interval: Duration,
) -> anyhow::Result<()> {
    let mut current = Vec::new();
    for index in 0..devices {
        let identity: &Identity = &broker.identities[8 + index];
        current.push(Arc::new(Mutex::new(Rotating {
            chain: identity.chain.clone(),
            key: identity.key.clone_key(),
            certificate_id: identity.certificate_id.clone().context("identities made through the API have IDs")?,
        })));
    }
    for (index, device) in current.iter().enumerate() {
        let (broker, shared, device) = (broker.clone(), shared.clone(), device.clone());
        tokio::spawn(async move {
            while !shared.stop.load(Ordering::Relaxed) {
                if let Err(error) = rotating_device(&broker, &shared, &device, index).await {
                    eprintln!("rotating device {index}: {error:#}");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
            }
        });
    }
    // The devices connect first: a rotation needs the client ID the certificate last used.
    let mut at = Instant::now() + Duration::from_secs(5);
    let mut connection = None;
    while pace(&shared, at).await {
        at += interval;
        let mut ids = Vec::new();
        for device in &current {
            ids.push(device.lock().await.certificate_id.clone());
        }
        let body = serde_json::json!({ "certificateIds": ids, "subject": "keep-old" }).to_string();
        let call = Call { method: "POST", path: "/certfleet/rotations".into(), body: Bytes::from(body) };
        let result = async {
            if connection.as_ref().is_none_or(certfleet_client::Connection::is_closed) {
                connection = Some(api.connect().await?);
            }
            api.send(connection.as_mut().expect("just made"), &call).await
        }
        .await;
        match result {
            Ok((200, _)) => {}
            Ok((status, body)) => {
                eprintln!("starting a rotation: {status} {}", String::from_utf8_lossy(&body));
                shared.counters.rotation_failures.fetch_add(1, Ordering::Relaxed);
            }
            Err(error) => {
                eprintln!("starting a rotation: {error:#}");
                shared.counters.rotation_failures.fetch_add(1, Ordering::Relaxed);
                connection = None;
            }
        }
    }
    Ok(())
}

/// One connection of a rotating device: answers `csr_req` with a new key's CSR, and `crt_req` by
/// reconnecting with the issued certificate and acknowledging from it.
async fn rotating_device(
    broker: &Broker,
    shared: &Shared,
    device: &Mutex<Rotating>,
    index: usize,
) -> anyhow::Result<()> {
    let client_id = format!("soak-rotating-{index}");
    let config = {
        let device = device.lock().await;
        Arc::new(crate::mqtt::client_config(
            &broker.roots,
            &device.chain,
            &device.key,
            rustls::client::Resumption::disabled(),
        )?)
    };
    let mut client = Client::connect(broker, &config, None, &client_id, 30).await?;
    client
        .send(&crate::mqtt::subscribe_packet(1, &format!("management/topic/{client_id}/+"), QoS::AtLeastOnce))
        .await?;
    let mut pending_key: Option<rcgen::KeyPair> = None;
    let mut packet_id = 1u16;
    loop {
        let packet = match tokio::time::timeout(Duration::from_secs(15), client.receive()).await {
            Err(_) => {
                client.send(&Packet::PingReq).await?;
                continue;
            }
            Ok(packet) => packet?,
        };
        let Packet::Publish(incoming) = packet else { continue };
        if let Some(id) = incoming.packet_id {
            client
                .send(&Packet::PubAck(mqtt::PubAck {
                    packet_id: id,
                    reason_code: mqtt::ReasonCode::SUCCESS,
                    properties: Default::default(),
                }))
                .await?;
        }
        if topic_of(&incoming).ends_with("/csr_req") {
            let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?;
            let mut params = rcgen::CertificateParams::new(Vec::<String>::new())?;
            params.distinguished_name.push(rcgen::DnType::CommonName, client_id.clone());
            let csr = params.serialize_request(&key)?.pem()?;
            pending_key = Some(key);
            packet_id = packet_id.wrapping_add(1).max(1);
            let payload = serde_json::json!({ "CSR": csr }).to_string();
            client
                .send(&publish(
                    &format!("management/topic/{client_id}/csr_res"),
                    QoS::AtLeastOnce,
                    packet_id,
                    false,
                    Bytes::from(payload),
                )?)
                .await?;
        } else if topic_of(&incoming).ends_with("/crt_req") {
            let Some(key) = pending_key.take() else { continue };
            let body: serde_json::Value = serde_json::from_slice(&incoming.payload)?;
            let pem = body["certificatePem"].as_str().context("crt_req without certificatePem")?;
            let id = body["certificateId"].as_str().context("crt_req without certificateId")?.to_owned();
            let chain = CertificateDer::pem_slice_iter(pem.as_bytes()).collect::<Result<Vec<_>, _>>()?;
            let key = PrivateKeyDer::from_pem_slice(key.serialize_pem().as_bytes())?;
            let config = Arc::new(crate::mqtt::client_config(
                &broker.roots,
                &chain,
                &key,
                rustls::client::Resumption::disabled(),
            )?);
            client.disconnect().await;
            let mut renewed = Client::connect(broker, &config, None, &client_id, 30).await?;
            let ack = serde_json::json!({ "certificateId": id }).to_string();
            renewed
                .send(&publish(
                    &format!("management/topic/{client_id}/crt_ack"),
                    QoS::AtLeastOnce,
                    1,
                    false,
                    Bytes::from(ack),
                )?)
                .await?;
            match tokio::time::timeout(Duration::from_secs(10), renewed.receive()).await?? {
                Packet::PubAck(_) => {}
                other => anyhow::bail!("expected PUBACK of crt_ack, got {other:?}"),
            }
            {
                let mut device = device.lock().await;
                *device = Rotating { chain, key, certificate_id: id };
            }
            shared.counters.rotations.fetch_add(1, Ordering::Relaxed);
            renewed.disconnect().await;
            return Ok(());
        }
        if shared.stop.load(Ordering::Relaxed) {
            return Ok(());
        }
    }
}

// ---- the attacker ----

struct AttackContext {
    shared: Arc<Shared>,
    until: Instant,
    api_addr: String,
    api_url: String,
    api_tls: Arc<rustls::ClientConfig>,
    ca: PathBuf,
    attacker: Arc<Broker>,
}

impl AttackContext {
    fn going(&self) -> bool {
        Instant::now() < self.until && !self.shared.stop.load(Ordering::Relaxed)
    }

    fn count(&self) {
        self.shared.counters.attack_operations.fetch_add(1, Ordering::Relaxed);
    }
}

/// Connections the attacker holds at once in the connection attacks.
const ATTACK_CONNECTIONS: usize = 200;

async fn attack_phase(attack: Attack, context: &AttackContext) -> anyhow::Result<()> {
    match attack {
        Attack::ApiSlowloris => hold_connections(context, true).await,
        Attack::ApiIdle => hold_connections(context, false).await,
        Attack::ApiForgedKeys => forged_keys(context).await,
        Attack::GatewayStrangers => strangers(context).await,
        Attack::RetainedFlood => retained_flood(context).await,
        Attack::OfflineQueueFill => queue_fill(context).await,
        Attack::RuleBomb => rule_bomb(context).await,
    }
}

/// Keeps `ATTACK_CONNECTIONS` connections to the API open, reopening those the server closes:
/// with `slow`, TLS connections sending a request header a byte every 2 s; else TCP connections
/// sending nothing.
async fn hold_connections(context: &AttackContext, slow: bool) -> anyhow::Result<()> {
    let mut holders = tokio::task::JoinSet::new();
    for _ in 0..ATTACK_CONNECTIONS {
        let (addr, tls, until, shared) =
            (context.api_addr.clone(), context.api_tls.clone(), context.until, context.shared.clone());
        holders.spawn(async move {
            while Instant::now() < until && !shared.stop.load(Ordering::Relaxed) {
                shared.counters.attack_operations.fetch_add(1, Ordering::Relaxed);
                let _ = tokio::time::timeout_at(until.into(), hold_one(&addr, &tls, slow)).await;
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        });
    }
    while holders.join_next().await.is_some() {}
    Ok(())
}

async fn hold_one(addr: &str, tls: &Arc<rustls::ClientConfig>, slow: bool) -> anyhow::Result<()> {
    let tcp = TcpStream::connect(addr).await?;
    if !slow {
        // Wait until the server closes it (its TLS handshake timeout).
        let mut buffer = [0u8; 16];
        tcp.readable().await?;
        let _ = tcp.try_read(&mut buffer);
        return Ok(());
    }
    let mut stream =
        tokio_rustls::TlsConnector::from(tls.clone()).connect(ServerName::try_from("localhost")?, tcp).await?;
    for byte in b"POST /things/x HTTP/1.1\r\nHost: localhost\r\nX-Slow: ".iter().chain(std::iter::repeat(&b'a')) {
        stream.write_all(&[*byte]).await?;
        stream.flush().await?;
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
    Ok(())
}

async fn forged_keys(context: &AttackContext) -> anyhow::Result<()> {
    let mut noise = Noise::new(1);
    let mut at = Instant::now();
    while context.going() {
        at += Duration::from_millis(10);
        tokio::time::sleep_until(at.into()).await;
        let key = format!("AKIA{}", noise.word(16).to_uppercase());
        let huge = noise.next().is_multiple_of(2);
        let (api_url, ca, addr, tls) =
            (context.api_url.clone(), context.ca.clone(), context.api_addr.clone(), context.api_tls.clone());
        context.count();
        tokio::spawn(async move {
            if huge {
                let _ = tokio::time::timeout(Duration::from_secs(5), declared_huge_body(&addr, &tls, &key)).await;
            } else if let Ok(target) = Target::new(&api_url, &key, "secret", Some(&ca), "us-east-1")
                && let Ok(mut connection) = target.connect().await
            {
                let call = Call { method: "GET", path: "/things".into(), body: Bytes::new() };
                let _ = tokio::time::timeout(Duration::from_secs(5), target.send(&mut connection, &call)).await;
            }
        });
    }
    Ok(())
}

async fn declared_huge_body(addr: &str, tls: &Arc<rustls::ClientConfig>, key: &str) -> anyhow::Result<()> {
    let tcp = TcpStream::connect(addr).await?;
    let mut stream =
        tokio_rustls::TlsConnector::from(tls.clone()).connect(ServerName::try_from("localhost")?, tcp).await?;
    let request = format!(
        "POST /things/x HTTP/1.1\r\nHost: localhost\r\nContent-Length: 1073741824\r\nX-Amz-Date: 20261207T000000Z\r\n\
         Authorization: AWS4-HMAC-SHA256 Credential={key}/20261207/us-east-1/iot/aws4_request, \
         SignedHeaders=host;x-amz-date, Signature={}\r\n\r\n",
        "0".repeat(64)
    );
    stream.write_all(request.as_bytes()).await?;
    let mut buffer = vec![0u8; 4096];
    let _ = tokio::io::AsyncReadExt::read(&mut stream, &mut buffer).await?;
    Ok(())
}

/// A stranger's TLS client: it accepts whatever server certificate it is shown (its made-up SNI
/// name matches none), so that its handshakes reach the gateway's client-certificate checks.
/// Only the load tool's attacker uses it.
fn stranger_config(
    certificate: Option<(CertificateDer<'static>, PrivateKeyDer<'static>)>,
) -> anyhow::Result<Arc<rustls::ClientConfig>> {
    let builder = rustls::ClientConfig::builder_with_provider(certfleet_loadgen::ceiling::provider())
        .with_safe_default_protocol_versions()?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(DangerAcceptAnyServer));
    Ok(Arc::new(match certificate {
        Some((certificate, key)) => builder.with_client_auth_cert(vec![certificate], key)?,
        None => builder.with_no_client_auth(),
    }))
}

/// Accepts any server certificate (and checks no handshake signature): the attacker's client.
#[derive(Debug)]
struct DangerAcceptAnyServer;

impl rustls::client::danger::ServerCertVerifier for DangerAcceptAnyServer {
    fn verify_server_cert(
        &self,
        _: &CertificateDer<'_>,
        _: &[CertificateDer<'_>],
        _: &ServerName<'_>,
        _: &[u8],
        _: rustls_pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        _: &[u8],
        _: &CertificateDer<'_>,
        _: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        Ok(rustls::client::danger::HandshakeSignatureValid::assertion())
    }

    fn verify_tls13_signature(
        &self,
        _: &[u8],
        _: &CertificateDer<'_>,
        _: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        Ok(rustls::client::danger::HandshakeSignatureValid::assertion())
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        certfleet_loadgen::ceiling::provider().signature_verification_algorithms.supported_schemes()
    }
}

/// Handshakes to the gateway with made-up SNI names, half with a self-signed client certificate
/// (a fresh one every 8 handshakes), half with none.
async fn strangers(context: &AttackContext) -> anyhow::Result<()> {
    let mut noise = Noise::new(2);
    let mut at = Instant::now();
    let mut config: Option<Arc<rustls::ClientConfig>> = None;
    let mut index = 0u64;
    while context.going() {
        at += Duration::from_millis(10);
        tokio::time::sleep_until(at.into()).await;
        index += 1;
        let with_certificate = index.is_multiple_of(2);
        if with_certificate && (config.is_none() || index.is_multiple_of(16)) {
            let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?;
            let certificate = rcgen::CertificateParams::new(vec![noise.word(12)])?.self_signed(&key)?;
            let key = PrivateKeyDer::from_pem_slice(key.serialize_pem().as_bytes())?;
            config = Some(stranger_config(Some((certificate.der().clone(), key)))?);
        }
        let tls = if with_certificate { config.clone().expect("made above") } else { stranger_config(None)? };
        let name = ServerName::try_from(format!("{}.example", noise.word(20)))?;
        let addr = context.attacker.addr.clone();
        context.count();
        tokio::spawn(async move {
            let _ = tokio::time::timeout(Duration::from_secs(5), async {
                let tcp = TcpStream::connect(&addr).await?;
                let mut stream = tokio_rustls::TlsConnector::from(tls).connect(name, tcp).await?;
                // A CONNECT, in case the handshake was accepted (it is not: nobody's certificate).
                stream.write_all(b"\x10\x0c\x00\x04MQTT\x04\x02\x00\x1e\x00\x00").await?;
                let mut buffer = [0u8; 16];
                let _ = tokio::io::AsyncReadExt::read(&mut stream, &mut buffer).await?;
                anyhow::Ok(())
            })
            .await;
        });
    }
    Ok(())
}

/// Retained 60 KiB messages on fresh topics, QoS 1, as fast as the broker acknowledges.
async fn retained_flood(context: &AttackContext) -> anyhow::Result<()> {
    flood(context, 0, "attacker-retain", true, Duration::from_millis(5), |sent| format!("flood/{sent}")).await
}

/// Eight persistent sessions subscribe to `fill/#` and go offline; another device of the tenant
/// publishes 60 KiB QoS 1 messages to them until the phase ends.
async fn queue_fill(context: &AttackContext) -> anyhow::Result<()> {
    let broker = &context.attacker;
    for session in 0..8 {
        let identity = &broker.identities[1 + session % 2];
        let mut client =
            Client::connect_persistent(broker, &identity.full_handshakes, &format!("attacker-offline-{session}"))
                .await?;
        client.send(&crate::mqtt::subscribe_packet(1, "fill/#", QoS::AtLeastOnce)).await?;
        let _ = tokio::time::timeout(Duration::from_secs(5), client.receive()).await;
        client.disconnect().await;
    }
    flood(context, 3, "attacker-filler", false, Duration::from_millis(10), |_| "fill/x".to_owned()).await
}

/// 60 KiB QoS 1 messages from the attacker's identity `identity` on `topic(n)`, one per PUBACK
/// and `pause`, reconnecting whenever the broker closes the connection (MQTT 3.1.1 has no
/// negative PUBACK: past a bound the broker disconnects), until the phase ends.
async fn flood(
    context: &AttackContext,
    identity: usize,
    client_id: &str,
    retain: bool,
    pause: Duration,
    topic: impl Fn(u64) -> String,
) -> anyhow::Result<()> {
    let broker = &context.attacker;
    let payload = Bytes::from(vec![b'f'; 60 * 1024]);
    let mut sent = 0u64;
    while context.going() {
        let Ok(mut client) =
            Client::connect(broker, &broker.identities[identity].full_handshakes, None, client_id, 30).await
        else {
            tokio::time::sleep(Duration::from_secs(1)).await;
            continue;
        };
        while context.going() {
            sent += 1;
            context.count();
            let packet = publish(&topic(sent), QoS::AtLeastOnce, (sent % 60_000 + 1) as u16, retain, payload.clone())?;
            if client.send(&packet).await.is_err()
                || tokio::time::timeout(Duration::from_secs(5), client.receive()).await.is_err()
            {
                break;
            }
            tokio::time::sleep(pause).await;
        }
    }
    Ok(())
}

/// Publishes the seed of the self-republishing rule, 20 times a second.
async fn rule_bomb(context: &AttackContext) -> anyhow::Result<()> {
    let broker = &context.attacker;
    while context.going() {
        let Ok(mut client) =
            Client::connect(broker, &broker.identities[0].full_handshakes, None, "attacker-bomb", 30).await
        else {
            tokio::time::sleep(Duration::from_secs(1)).await;
            continue;
        };
        while context.going() {
            context.count();
            let seed =
                publish("bomb/loop", QoS::AtMostOnce, 0, false, Bytes::from_static(br#"{"x": "0123456789abc"}"#))?;
            if client.send(&seed).await.is_err() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    Ok(())
}
