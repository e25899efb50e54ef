//! Connect storms: workers connecting (TLS handshake, CONNECT/CONNACK, DISCONNECT) over and
//! over, with full handshakes or with TLS session resumption.
//!
//! Resumption keeps one session store per identity, not one for all: rustls keys stored
//! sessions by server name only, so a shared store would resume identity A's session on a
//! connection meant for identity B, and the server would see the wrong device.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use rustls::HandshakeKind;
use rustls::client::{ClientSessionMemoryCache, ClientSessionStore, Tls12ClientSessionValue, Tls13ClientSessionValue};
use rustls::{NamedGroup, pki_types::ServerName};

use super::{Broker, Client, MqttArgs, Outcome, client_config, micros, storm_addr};

/// What one storm did.
#[derive(Default)]
struct Storm {
    ok: u64,
    failed: u64,
    resumed: u64,
    latencies_us: Vec<u32>,
}

/// Full handshakes, every one.
pub(super) async fn storm(broker: &Arc<Broker>, args: &MqttArgs, deadline: Instant) -> anyhow::Result<Outcome> {
    let configs = Arc::new(broker.identities.iter().map(|identity| identity.full_handshakes.clone()).collect());
    let storm = run_storm(broker, configs, args, args.count, deadline).await?;
    Ok(Outcome {
        ok: storm.ok,
        latencies_us: storm.latencies_us,
        failures: storm.failed,
        details: [("resumed", storm.resumed.into())].into_iter().collect(),
        ..Outcome::default()
    })
}

/// A priming full handshake per identity (bounded by `duration` too), then the storm for
/// `duration`, every connection offering to resume its identity's last session.
pub(super) async fn resumed_storm(
    broker: &Arc<Broker>,
    args: &MqttArgs,
    duration: Duration,
) -> anyhow::Result<Outcome> {
    let mut stores = Vec::new();
    let mut configs = Vec::new();
    for identity in &broker.identities {
        let store = Arc::new(CountingStore::new());
        let resumption = rustls::client::Resumption::store(store.clone());
        configs.push(Arc::new(client_config(&broker.roots, &identity.chain, &identity.key, resumption)?));
        stores.push(store);
    }
    let configs = Arc::new(configs);
    let identities = broker.identities.len() as u64;
    let priming = run_storm(broker, configs.clone(), args, identities, Instant::now() + duration).await?;
    let tickets_after_priming: u64 = stores.iter().map(|store| store.tickets.load(Ordering::Relaxed)).sum();

    let cpu_before = super::servers_cpu_seconds(&args.server_pid);
    let started = Instant::now();
    let storm = run_storm(broker, configs, args, args.count, started + duration).await?;
    let wall_seconds = started.elapsed().as_secs_f64();
    let cpu_after = super::servers_cpu_seconds(&args.server_pid);
    let tickets: u64 = stores.iter().map(|store| store.tickets.load(Ordering::Relaxed)).sum();
    let mut notes = Vec::new();
    if priming.failed > 0 {
        notes.push(format!("{} of {identities} priming handshakes failed", priming.failed));
    }
    if tickets_after_priming == 0 {
        notes.push(
            "the server offers no resumption: it sent no session tickets (TLS 1.3 NewSessionTicket) after the priming \
             handshakes, so every handshake of this storm was a full one"
                .into(),
        );
    } else if storm.resumed == 0 {
        notes.push(format!(
            "the server sent {tickets_after_priming} session tickets but resumed none of them: these were full handshakes"
        ));
    } else if storm.resumed < storm.ok {
        notes.push(format!("{} of {} handshakes were full, not resumed", storm.ok - storm.resumed, storm.ok));
    }
    Ok(Outcome {
        ok: storm.ok,
        latencies_us: storm.latencies_us,
        failures: storm.failed,
        wall_seconds: Some(wall_seconds),
        server_cpu_seconds: cpu_before.zip(cpu_after).map(|(before, after)| after - before),
        details: [
            ("resumed", storm.resumed.into()),
            ("full", (storm.ok - storm.resumed).into()),
            ("resumption_offered", (tickets_after_priming > 0).into()),
            ("tickets_received", tickets.into()),
            ("priming_handshakes", priming.ok.into()),
        ]
        .into_iter()
        .collect(),
        notes,
    })
}

/// `--connections` workers connecting over and over, identities (and their `configs`) taken
/// in turn, each worker to its broker address (`--also-addr`: the addresses in turn), until
/// `count` connects were attempted or `deadline` passed.
async fn run_storm(
    broker: &Arc<Broker>,
    configs: Arc<Vec<Arc<rustls::ClientConfig>>>,
    args: &MqttArgs,
    count: u64,
    deadline: Instant,
) -> anyhow::Result<Storm> {
    let budget = Arc::new(AtomicU64::new(count));
    let next_identity = Arc::new(AtomicUsize::new(0));
    let mut tasks = Vec::new();
    for worker in 0..args.connections {
        let (broker, configs, budget, next_identity) =
            (broker.clone(), configs.clone(), budget.clone(), next_identity.clone());
        let addr = storm_addr(worker, &broker.addr, &args.also_addr).to_owned();
        tasks.push(tokio::spawn(async move {
            let mut storm = Storm::default();
            let mut attempt = 0usize;
            while Instant::now() < deadline
                && budget.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |left| left.checked_sub(1)).is_ok()
            {
                let config = &configs[next_identity.fetch_add(1, Ordering::Relaxed) % configs.len()];
                attempt += 1;
                let started = Instant::now();
                match Client::connect_at(&broker, &addr, config, &format!("loadgen-{worker}-{attempt}"), 60).await {
                    Ok(client) => {
                        storm.latencies_us.push(micros(started.elapsed()));
                        storm.ok += 1;
                        storm.resumed += u64::from(client.handshake == Some(HandshakeKind::Resumed));
                        client.disconnect().await;
                    }
                    Err(_) => storm.failed += 1,
                }
            }
            storm
        }));
    }
    let mut total = Storm::default();
    for task in tasks {
        let storm = task.await?;
        total.ok += storm.ok;
        total.failed += storm.failed;
        total.resumed += storm.resumed;
        total.latencies_us.extend(storm.latencies_us);
    }
    Ok(total)
}

/// rustls's in-memory session store, counting the tickets (TLS 1.3) and sessions (TLS 1.2)
/// the server gave, which tells "offers no resumption" from "refused to resume".
#[derive(Debug)]
struct CountingStore {
    inner: ClientSessionMemoryCache,
    tickets: AtomicU64,
}

impl CountingStore {
    fn new() -> CountingStore {
        CountingStore { inner: ClientSessionMemoryCache::new(16), tickets: AtomicU64::new(0) }
    }
}

impl ClientSessionStore for CountingStore {
    fn set_kx_hint(&self, server_name: ServerName<'static>, group: NamedGroup) {
        self.inner.set_kx_hint(server_name, group);
    }

    fn kx_hint(&self, server_name: &ServerName<'_>) -> Option<NamedGroup> {
        self.inner.kx_hint(server_name)
    }

    fn set_tls12_session(&self, server_name: ServerName<'static>, value: Tls12ClientSessionValue) {
        self.tickets.fetch_add(1, Ordering::Relaxed);
        self.inner.set_tls12_session(server_name, value);
    }

    fn tls12_session(&self, server_name: &ServerName<'_>) -> Option<Tls12ClientSessionValue> {
        self.inner.tls12_session(server_name)
    }

    fn remove_tls12_session(&self, server_name: &ServerName<'static>) {
        self.inner.remove_tls12_session(server_name);
    }

    fn insert_tls13_ticket(&self, server_name: ServerName<'static>, value: Tls13ClientSessionValue) {
        self.tickets.fetch_add(1, Ordering::Relaxed);
        self.inner.insert_tls13_ticket(server_name, value);
    }

    fn take_tls13_ticket(&self, server_name: &ServerName<'static>) -> Option<Tls13ClientSessionValue> {
        self.inner.take_tls13_ticket(server_name)
    }
}
