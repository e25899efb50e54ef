//! Fleets of connections held open: opened with a bounded number of handshakes in flight, from
//! several loopback source addresses (each has its own ephemeral port range, so one machine
//! can open more than 28,000 connections to one port), each kept alive by a task that pings and
//! notices when the server closes it. The idle scenario measures what they cost the server;
//! the revocation scenario watches them close.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use certfleet_loadgen::proc_stats;
use certfleet_mqtt::Packet;
use tokio::io::AsyncReadExt;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinSet;

use super::{Broker, CONNECT_TIMEOUT, Client, MqttArgs, Outcome, micros, source_address, source_address_count};

/// The keep-alive the fleet asks for in CONNECT, and how often it pings (half of it).
const KEEP_ALIVE_SECONDS: u16 = 600;
const PING_EVERY: Duration = Duration::from_secs(KEEP_ALIVE_SECONDS as u64 / 2);

/// Files the tool needs besides one socket per connection.
const SPARE_FILES: u64 = 256;

/// Connections open and watched.
pub(super) struct Fleet {
    pub established: u64,
    pub failed: u64,
    pub latencies_us: Vec<u32>,
    /// How long opening took.
    pub opening_seconds: f64,
    pub source_addresses: usize,
    /// The most frequent reasons connections failed, with their counts.
    pub errors: BTreeMap<String, u64>,
    /// (connection index, when) for each connection the server closed.
    pub closed: mpsc::UnboundedReceiver<(usize, Instant)>,
    stop: watch::Sender<bool>,
    tasks: JoinSet<()>,
}

/// Opens up to `count` connections (connection `i` as identity `i % identities`, client ID
/// `loadgen-fleet-<i>`) until `deadline`, each held by a task until [`Fleet::close`].
pub(super) async fn open(broker: &Arc<Broker>, args: &MqttArgs, count: usize, deadline: Instant) -> Fleet {
    let source_addresses = source_address_count(args.source_addresses, count);
    let permits = Arc::new(tokio::sync::Semaphore::new(args.concurrency));
    let (ready_sender, mut ready) = mpsc::unbounded_channel::<Result<u32, String>>();
    let (closed_sender, closed) = mpsc::unbounded_channel();
    let (stop, stopped) = watch::channel(false);
    let mut tasks = JoinSet::new();
    let started = Instant::now();
    let mut spawned = 0usize;
    for index in 0..count {
        let Ok(Ok(permit)) = tokio::time::timeout_at(deadline.into(), permits.clone().acquire_owned()).await else {
            break;
        };
        let (broker, ready, closed, stopped) =
            (broker.clone(), ready_sender.clone(), closed_sender.clone(), stopped.clone());
        let source = source_address(index, source_addresses);
        tasks.spawn(async move {
            let config = &broker.identities[index % broker.identities.len()].full_handshakes;
            let connecting = Instant::now();
            let client =
                Client::connect(&broker, config, source, &format!("loadgen-fleet-{index}"), KEEP_ALIVE_SECONDS).await;
            drop(permit);
            match client {
                Ok(client) => {
                    let _ = ready.send(Ok(micros(connecting.elapsed())));
                    hold(client, index, stopped, closed).await;
                }
                Err(error) => {
                    let _ = ready.send(Err(format!("{error:#}")));
                }
            }
        });
        spawned += 1;
    }
    drop(ready_sender);
    let (mut established, mut failed, mut latencies_us, mut errors) = (0, 0, Vec::new(), BTreeMap::new());
    let waiting_until = deadline.max(Instant::now()) + CONNECT_TIMEOUT;
    for _ in 0..spawned {
        match tokio::time::timeout_at(waiting_until.into(), ready.recv()).await {
            Ok(Some(Ok(latency))) => {
                established += 1;
                latencies_us.push(latency);
            }
            Ok(Some(Err(error))) => {
                failed += 1;
                *errors.entry(error).or_insert(0) += 1;
            }
            Ok(None) | Err(_) => break,
        }
    }
    failed += spawned as u64 - established - failed;
    Fleet {
        established,
        failed,
        latencies_us,
        opening_seconds: started.elapsed().as_secs_f64(),
        source_addresses,
        errors,
        closed,
        stop,
        tasks,
    }
}

/// Holds one connection: pings every [`PING_EVERY`], reports when the server closes it, sends
/// DISCONNECT when told to stop.
async fn hold(
    client: Client,
    index: usize,
    mut stopped: watch::Receiver<bool>,
    closed: mpsc::UnboundedSender<(usize, Instant)>,
) {
    let mut client = Client { buffer: bytes::BytesMut::new(), ..client };
    let mut scratch = [0u8; 256];
    let mut ping = tokio::time::interval_at(tokio::time::Instant::now() + PING_EVERY, PING_EVERY);
    loop {
        tokio::select! {
            read = client.stream.read(&mut scratch) => {
                if !matches!(read, Ok(count) if count > 0) {
                    let _ = closed.send((index, Instant::now()));
                    return;
                }
            }
            _ = ping.tick() => {
                if client.send(&Packet::PingReq).await.is_err() {
                    let _ = closed.send((index, Instant::now()));
                    return;
                }
            }
            _ = stopped.changed() => {
                client.disconnect().await;
                return;
            }
        }
    }
}

impl Fleet {
    /// The most frequent failure reasons, for the report's notes.
    pub fn error_notes(&self) -> Vec<String> {
        let mut errors: Vec<(&String, &u64)> = self.errors.iter().collect();
        errors.sort_by(|a, b| b.1.cmp(a.1));
        errors.into_iter().take(3).map(|(error, count)| format!("{count} connections failed: {error}")).collect()
    }

    /// Disconnects every connection still open (waiting up to 10 s for them).
    pub async fn close(mut self) {
        let _ = self.stop.send(true);
        let _ =
            tokio::time::timeout(Duration::from_secs(10), async { while self.tasks.join_next().await.is_some() {} })
                .await;
        self.tasks.abort_all();
    }
}

/// `--connections` connections opened (bounded by `deadline`), held for `--hold` seconds, then
/// closed: the server's RSS before and after, per connection.
pub(super) async fn idle(broker: &Arc<Broker>, args: &MqttArgs, deadline: Instant) -> anyhow::Result<Outcome> {
    let needed_files = args.connections as u64 + SPARE_FILES;
    let open_files_limit = proc_stats::raise_open_files_limit(needed_files);
    let rss_before = super::servers_rss_kib(&args.server_pid);
    let mut fleet = open(broker, args, args.connections, deadline).await;
    tokio::time::sleep(Duration::from_secs_f64(args.hold)).await;
    let rss_after = super::servers_rss_kib(&args.server_pid);
    let mut closed_by_server = 0u64;
    while fleet.closed.try_recv().is_ok() {
        closed_by_server += 1;
    }
    let mut notes = fleet.error_notes();
    if open_files_limit.is_some_and(|limit| limit < needed_files) {
        notes.push(format!(
            "this tool may open only {} files, {needed_files} needed: raise `ulimit -n` (the hard limit bounds it)",
            open_files_limit.unwrap_or_default()
        ));
    }
    let mut details: BTreeMap<&'static str, serde_json::Value> = [
        ("established", fleet.established.into()),
        ("closed_by_server", closed_by_server.into()),
        ("open_at_end", fleet.established.saturating_sub(closed_by_server).into()),
        ("hold_seconds", args.hold.into()),
        ("source_addresses", fleet.source_addresses.into()),
        ("open_files_limit", open_files_limit.into()),
        ("server_rss_before_kib", rss_before.into()),
        ("server_rss_after_kib", rss_after.into()),
    ]
    .into_iter()
    .collect();
    if let (Some(before), Some(after)) = (rss_before, rss_after)
        && fleet.established > 0
    {
        let per_connection = after.saturating_sub(before) as f64 / fleet.established as f64;
        details.insert("server_rss_per_connection_kib", ((per_connection * 100.0).round() / 100.0).into());
    }
    let outcome = Outcome {
        ok: fleet.established,
        latencies_us: std::mem::take(&mut fleet.latencies_us),
        failures: fleet.failed,
        wall_seconds: Some(fleet.opening_seconds),
        server_cpu_seconds: None,
        details,
        notes,
    };
    fleet.close().await;
    Ok(outcome)
}
