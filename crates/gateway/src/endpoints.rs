//! Endpoints: which domain configuration a TLS ClientHello names (by SNI), the TLS settings and
//! server chain it is answered with, the per-chain counters, and the drain and guard of a
//! server-root migration.
//!
//! Every handshake starts with the ClientHello alone ([`tokio_rustls::LazyConfigAcceptor`]):
//! the SNI picks an [`Endpoint`] (cached; the change feed clears the cache, so a changed
//! certificate or policy applies to the next handshake and live sessions stay), whose rustls
//! configuration carries the configuration's security policy and its serving chain (an ECDSA
//! and an RSA leaf may serve side by side; [`tls::ChainResolver`] picks by the client's signature
//! algorithms).
//!
//! A migration (or revert) changes the serving chain; sessions on any other chain are then
//! closed at the configuration's drain rate, each after a jittered delay, because devices only
//! see a new chain on a new handshake. The drain report compares the client IDs connected when
//! it started with those connected on the new chain now. The guard reverts the migration when
//! handshakes on the new chain fail too often (counted per node).

use std::collections::{BTreeMap, HashMap, HashSet};

use certfleet_cache::BoundedMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use certfleet_registry::{AccountId, DomainConfiguration, DomainStatus};
use certfleet_services::{ChainStats, DrainReport, EndpointReport, Migration, Purpose, Services};
use rustls::sign::CertifiedKey;

use crate::live::LiveSessions;
use crate::model::Refusal;
use crate::tls;

/// The chains a gateway serves when a configuration names none.
pub struct BuiltinChains {
    /// The server's own certificate (the reserved data endpoints).
    pub default: Arc<CertifiedKey>,
    /// A chain of at least 16 KiB (the large-certificate test endpoint).
    pub large: Arc<CertifiedKey>,
}

/// A resolved endpoint: the configuration a ClientHello named and how to answer it.
pub struct Endpoint {
    pub account: AccountId,
    /// The configuration's name (`iot:Data-ATS`, a custom name, ...).
    pub name: String,
    pub purpose: Purpose,
    pub enabled: bool,
    /// The SNI, when it named this endpoint (`None`: no SNI, or a name that names nothing, so
    /// the default account's `iot:Data-ATS`).
    pub sni: Option<String>,
    /// The serving chain's label (`builtin`, or certificate IDs joined by `+`).
    pub chain: Arc<str>,
    pub tls: Arc<rustls::ServerConfig>,
    /// The migration in progress or last reverted, and whether the next chain is served.
    pub migration: Option<Migration>,
    pub serving_next: bool,
}

#[derive(Default)]
struct Counters {
    completed: AtomicU64,
    failed: Mutex<BTreeMap<String, u64>>,
}

struct Drain {
    migration_id: String,
    to_chain: Arc<str>,
    expected: Vec<String>,
    sessions: usize,
    closed: Arc<AtomicU64>,
    guard_failures: u64,
    guard_tripped: Option<String>,
}

type ConfigKey = (AccountId, String);

/// A configuration's chain: the key of the per-chain counters.
type ChainKey = (AccountId, String, Arc<str>);

/// The endpoints of this node: resolution cache, counters, drains.
pub struct Endpoints {
    services: Arc<Services>,
    live: Arc<LiveSessions>,
    builtin: BuiltinChains,
    default_account: AccountId,
    /// Encrypts this node's TLS session tickets (keys rotated by rustls every 6 hours).
    tickets: Arc<dyn rustls::server::ProducesTickets>,
    /// Endpoints by the SNI names that name a configuration (and `""`: the default one).
    by_sni: Mutex<BoundedMap<String, Arc<Endpoint>>>,
    /// Names that name no configuration, served the default endpoint: kept apart (and
    /// sharing that one endpoint), so that a stranger's stream of made-up names costs one small
    /// entry each, evicts only its own kind, and builds nothing.
    unnamed: Mutex<BoundedMap<String, ()>>,
    /// Held while an endpoint is built (see [`Endpoints::resolve`]).
    building: tokio::sync::Mutex<()>,
    counters: Mutex<HashMap<ChainKey, Arc<Counters>>>,
    drains: Mutex<HashMap<ConfigKey, Drain>>,
}

impl Endpoints {
    pub fn new(
        services: Arc<Services>,
        live: Arc<LiveSessions>,
        builtin: BuiltinChains,
        default_account: AccountId,
        limits: crate::identity::CacheLimits,
    ) -> Arc<Self> {
        Arc::new(Endpoints {
            services,
            live,
            builtin,
            default_account,
            tickets: rustls::crypto::aws_lc_rs::Ticketer::new()
                .expect("the system random generator works (aws-lc-rs seeds itself at start)"),
            by_sni: Mutex::new(BoundedMap::new(limits.sni_endpoints)),
            unnamed: Mutex::new(BoundedMap::new(limits.sni_unknown_names)),
            building: tokio::sync::Mutex::new(()),
            counters: Mutex::new(HashMap::new()),
            drains: Mutex::new(HashMap::new()),
        })
    }

    /// The endpoint a ClientHello's SNI names (the default account's `iot:Data-ATS` without SNI
    /// or for a name that names nothing).
    pub async fn resolve(self: &Arc<Self>, sni: Option<&str>) -> Result<Arc<Endpoint>, certfleet_services::Error> {
        let key = sni.unwrap_or("").to_ascii_lowercase();
        if let Some(found) = self.cached(&key) {
            return Ok(found);
        }
        // One build at a time: the connections of a storm that all miss the cache at once wait
        // for the first one's build (unsealing keys, a rustls configuration) instead of each
        // doing it on a blocking thread of its own.
        let _building = self.building.lock().await;
        if let Some(found) = self.cached(&key) {
            return Ok(found);
        }
        let this = self.clone();
        let name = (!key.is_empty()).then(|| key.clone());
        let built = tokio::task::spawn_blocking(move || match this.build(name.as_deref())? {
            Some(endpoint) => Ok((true, endpoint)),
            None => this
                .build(None)?
                .map(|endpoint| (false, endpoint))
                .ok_or_else(|| certfleet_services::Error::Internal("the default endpoint did not resolve".into())),
        })
        .await
        .map_err(|_| certfleet_services::Error::Internal("endpoint resolution panicked".into()))??;
        let (named, endpoint) = built;
        let endpoint = Arc::new(endpoint);
        if named {
            lock(&self.by_sni).insert(key, endpoint.clone());
        } else {
            // The default endpoint, and the made-up name that led to it.
            let mut by_sni = lock(&self.by_sni);
            let shared = match by_sni.get("") {
                Some(existing) => existing.clone(),
                None => {
                    by_sni.insert(String::new(), endpoint.clone());
                    endpoint
                }
            };
            drop(by_sni);
            if !key.is_empty() {
                lock(&self.unnamed).insert(key, ());
            }
            return Ok(shared);
        }
        Ok(endpoint)
    }

    /// The cached endpoint of a (lowercased) SNI name, if known.
    fn cached(&self, key: &str) -> Option<Arc<Endpoint>> {
        if let Some(found) = lock(&self.by_sni).get(key) {
            return Some(found.clone());
        }
        if key.is_empty() || lock(&self.unnamed).get(key).is_none() {
            return None;
        }
        lock(&self.by_sni).get("").cloned()
    }

    /// The sizes and evictions of the SNI caches, for `/metrics`.
    pub fn cache_stats(&self) -> [crate::identity::CacheStats; 2] {
        let named = lock(&self.by_sni);
        let unnamed = lock(&self.unnamed);
        [
            crate::identity::CacheStats {
                name: "sni_endpoints",
                entries: named.len(),
                capacity: named.capacity(),
                evicted: named.evicted(),
            },
            crate::identity::CacheStats {
                name: "sni_unknown_names",
                entries: unnamed.len(),
                capacity: unnamed.capacity(),
                evicted: unnamed.evicted(),
            },
        ]
    }

    /// The endpoint of `sni`, or `None` when the name names no configuration (then the caller
    /// serves the default one).
    fn build(&self, sni: Option<&str>) -> Result<Option<Endpoint>, certfleet_services::Error> {
        let config = match sni {
            Some(host) => match self.services.resolve_endpoint(host)? {
                Some(config) => config,
                None => return Ok(None),
            },
            None => self.services.default_endpoint(&self.default_account)?,
        };
        let sni = sni.map(str::to_owned);
        let purpose = certfleet_services::purpose(&config.name);
        let (chain, keys) = self.chain_of(&config, purpose)?;
        let verifier = if purpose == Purpose::Test { tls::ClientAuth::Anything } else { tls::ClientAuth::Registry };
        let tls =
            tls::endpoint_config(&config.security_policy, keys, verifier, self.tickets.clone()).map_err(|error| {
                certfleet_services::Error::Internal(format!("tls settings of {}: {error}", config.name))
            })?;
        Ok(Some(Endpoint {
            account: config.account.clone(),
            name: config.name.clone(),
            purpose,
            enabled: config.status == DomainStatus::Enabled && purpose != Purpose::NotServed,
            sni,
            chain,
            tls,
            migration: config.migration.as_deref().and_then(Migration::parse),
            serving_next: config.serving_next,
        }))
    }

    /// The serving chain's label and keys.
    fn chain_of(
        &self,
        config: &DomainConfiguration,
        purpose: Purpose,
    ) -> Result<(Arc<str>, Vec<Arc<CertifiedKey>>), certfleet_services::Error> {
        let mut serving = self.services.serving_chain(config)?;
        if serving.ids.is_empty() && purpose == Purpose::Test {
            // The test endpoint serves the next chain of the data endpoint, when one is staged.
            let data = self.services.domain_configuration(&config.account, "iot:Data-ATS")?;
            if !data.next_chain.is_empty() {
                serving = self.services.load_chain(&config.account, data.next_chain)?;
            }
        }
        if serving.ids.is_empty() {
            let builtin =
                if purpose == Purpose::LargeCertificate { &self.builtin.large } else { &self.builtin.default };
            return Ok((Arc::from("builtin"), vec![builtin.clone()]));
        }
        let mut keys = Vec::with_capacity(serving.keys.len());
        for (chain, key) in &serving.keys {
            keys.push(Arc::new(tls::certified_key(chain, key).map_err(|error| {
                certfleet_services::Error::Internal(format!("server certificate of {}: {error}", config.name))
            })?));
        }
        Ok((Arc::from(serving.ids.join("+")), keys))
    }

    /// Forgets every resolved endpoint (a configuration, certificate or account changed).
    pub fn forget(&self) {
        lock(&self.by_sni).clear();
        lock(&self.unnamed).clear();
    }

    fn counters(&self, endpoint: &Endpoint) -> Arc<Counters> {
        lock(&self.counters)
            .entry((endpoint.account.clone(), endpoint.name.clone(), endpoint.chain.clone()))
            .or_default()
            .clone()
    }

    /// Counts a completed handshake.
    pub fn handshake_completed(&self, endpoint: &Endpoint) {
        self.counters(endpoint).completed.fetch_add(1, Ordering::Relaxed);
    }

    /// Counts a failed handshake by the alert the client sent, and trips the guard when the
    /// migration's failures pass its threshold.
    pub fn handshake_failed(self: &Arc<Self>, endpoint: &Endpoint, alert: &str) {
        *lock(&self.counters(endpoint).failed).entry(alert.to_owned()).or_default() += 1;
        let Some(migration) = endpoint.migration.as_ref().filter(|_| endpoint.serving_next) else { return };
        let Some(limit) = migration.settings.guard_max_failures else { return };
        let key = (endpoint.account.clone(), endpoint.name.clone());
        let tripped = {
            let mut drains = lock(&self.drains);
            let drain = drains.entry(key.clone()).or_insert_with(|| Drain {
                migration_id: migration.id.clone(),
                to_chain: endpoint.chain.clone(),
                expected: Vec::new(),
                sessions: 0,
                closed: Arc::default(),
                guard_failures: 0,
                guard_tripped: None,
            });
            if drain.migration_id != migration.id || drain.guard_tripped.is_some() {
                return;
            }
            drain.guard_failures += 1;
            if drain.guard_failures < limit {
                return;
            }
            let reason =
                format!("guard: {} handshakes failed on the new chain (last alert {alert})", drain.guard_failures);
            drain.guard_tripped = Some(reason.clone());
            reason
        };
        tracing::warn!(account = %key.0, configuration = %key.1, reason = %tripped, "reverting the migration");
        let services = self.services.clone();
        tokio::task::spawn_blocking(move || {
            if let Err(error) = services.revert_domain_configuration(&key.0, &key.1, &tripped) {
                tracing::error!(account = %key.0, configuration = %key.1, %error, "the guard could not revert the migration");
            }
        });
    }

    /// A configuration changed: forget cached endpoints and, when its serving chain moved,
    /// drain the sessions on other chains.
    pub async fn changed(self: &Arc<Self>, account: &AccountId, name: &str) {
        self.forget();
        if name == "*" {
            return;
        }
        let this = self.clone();
        let (account, name) = (account.clone(), name.to_owned());
        let config = match tokio::task::spawn_blocking({
            let services = self.services.clone();
            let (account, name) = (account.clone(), name.clone());
            move || services.domain_configuration(&account, &name)
        })
        .await
        {
            Ok(Ok(config)) => config,
            _ => return,
        };
        let Some(migration) = config.migration.as_deref().and_then(Migration::parse) else { return };
        let purpose = certfleet_services::purpose(&config.name);
        let chain = match tokio::task::spawn_blocking({
            let this = this.clone();
            move || this.chain_of(&config, purpose).map(|(label, _)| label)
        })
        .await
        {
            Ok(Ok(chain)) => chain,
            _ => return,
        };
        {
            let drains = lock(&self.drains);
            if drains
                .get(&(account.clone(), name.clone()))
                .is_some_and(|d| d.migration_id == migration.id && d.sessions > 0)
            {
                return;
            }
        }
        let victims: Vec<(u64, Option<String>)> = self
            .live
            .list()
            .into_iter()
            .filter(|s| {
                s.identity.account == account
                    && s.endpoint.as_deref() == Some(name.as_str())
                    && s.chain.as_deref() != Some(&*chain)
            })
            .map(|s| (s.session_id, s.client_id))
            .collect();
        let closed = Arc::new(AtomicU64::new(0));
        {
            let mut drains = lock(&self.drains);
            let previous = drains.remove(&(account.clone(), name.clone()));
            // A revert gets a new migration id; when the guard caused it, the report must still
            // say so (the trip belongs to the migration this revert ends).
            let tripped_before = previous.as_ref().and_then(|d| d.guard_tripped.clone());
            let keep_guard = previous.filter(|d| d.migration_id == migration.id);
            let guard_tripped = match keep_guard.as_ref() {
                Some(kept) => kept.guard_tripped.clone(),
                None if migration.reverted_at.is_some() => tripped_before,
                None => None,
            };
            drains.insert(
                (account.clone(), name.clone()),
                Drain {
                    migration_id: migration.id.clone(),
                    to_chain: chain.clone(),
                    expected: victims.iter().filter_map(|(_, id)| id.clone()).collect(),
                    sessions: victims.len(),
                    closed: closed.clone(),
                    guard_failures: keep_guard.as_ref().map_or(0, |d| d.guard_failures),
                    guard_tripped,
                },
            );
        }
        tracing::info!(%account, configuration = %name, to_chain = %chain, sessions = victims.len(),
            per_second = migration.settings.drain_per_second, "draining sessions onto the serving chain");
        let live = self.live.clone();
        let rate = migration.settings.drain_per_second;
        let drains = self.clone();
        let migration_id = migration.id.clone();
        tokio::spawn(async move {
            let mut victims = victims;
            shuffle(&mut victims);
            let interval = 1.0 / rate;
            for (session_id, _) in victims {
                let jittered = interval * (0.5 + unit_random());
                tokio::time::sleep(Duration::from_secs_f64(jittered)).await;
                let current = lock(&drains.drains)
                    .get(&(account.clone(), name.clone()))
                    .is_some_and(|d| d.migration_id == migration_id);
                if !current {
                    return; // a newer migration or revert took over
                }
                if live.close_session(session_id, Refusal::ServerChainChanged) {
                    closed.fetch_add(1, Ordering::Relaxed);
                }
            }
        });
    }

    /// This node's report on a configuration.
    pub fn report(&self, account: &AccountId, name: &str) -> EndpointReport {
        let sessions = self.live.list();
        let serving =
            lock(&self.by_sni).values().find(|e| &e.account == account && e.name == name).map(|e| e.chain.clone());
        let mut chains: BTreeMap<String, ChainStats> = BTreeMap::new();
        for ((acc, config, chain), counters) in lock(&self.counters).iter() {
            if acc != account || config != name {
                continue;
            }
            let stats = chains.entry(chain.to_string()).or_default();
            stats.handshakes_completed = counters.completed.load(Ordering::Relaxed);
            stats.handshakes_failed = lock(&counters.failed).clone();
        }
        for session in &sessions {
            if &session.identity.account == account && session.endpoint.as_deref() == Some(name) {
                let chain = session.chain.as_deref().unwrap_or("builtin").to_owned();
                chains.entry(chain).or_default().connected += 1;
            }
        }
        let drain = lock(&self.drains).get(&(account.clone(), name.to_owned())).map(|drain| {
            let back: HashSet<&str> = sessions
                .iter()
                .filter(|s| {
                    &s.identity.account == account
                        && s.endpoint.as_deref() == Some(name)
                        && s.chain.as_deref() == Some(&*drain.to_chain)
                })
                .filter_map(|s| s.client_id.as_deref())
                .collect();
            let (mut came_back, mut not_back): (Vec<String>, Vec<String>) =
                drain.expected.iter().cloned().partition(|id| back.contains(id.as_str()));
            came_back.sort();
            not_back.sort();
            DrainReport {
                migration_id: drain.migration_id.clone(),
                to_chain: drain.to_chain.to_string(),
                sessions: drain.sessions,
                closed: drain.closed.load(Ordering::Relaxed) as usize,
                came_back,
                not_back,
                guard_tripped: drain.guard_tripped.clone(),
            }
        });
        let serving = serving.or_else(|| drain.as_ref().map(|d| Arc::from(d.to_chain.as_str())));
        let chains = chains
            .into_iter()
            .map(|(chain, mut stats)| {
                stats.serving = serving.as_deref() == Some(chain.as_str());
                stats.chain = chain;
                stats
            })
            .collect();
        EndpointReport { chains, drain, ..EndpointReport::default() }
    }
}

impl Endpoints {
    /// Appends the per-endpoint metrics in the Prometheus text format.
    pub fn render_metrics(&self, out: &mut String) {
        use std::fmt::Write;
        let label = |text: &str| text.replace('\\', "\\\\").replace('"', "\\\"");
        let _ = writeln!(
            out,
            "# HELP certfleet_endpoint_handshakes_completed_total TLS handshakes completed, by endpoint and server chain.\n# TYPE certfleet_endpoint_handshakes_completed_total counter"
        );
        let counters: Vec<_> = lock(&self.counters).iter().map(|(k, v)| (k.clone(), v.clone())).collect();
        for ((account, name, chain), counters) in &counters {
            let _ = writeln!(
                out,
                "certfleet_endpoint_handshakes_completed_total{{account=\"{account}\",configuration=\"{}\",chain=\"{}\"}} {}",
                label(name),
                label(chain),
                counters.completed.load(Ordering::Relaxed)
            );
        }
        let _ = writeln!(
            out,
            "# HELP certfleet_endpoint_handshakes_failed_total TLS handshakes failed, by endpoint, server chain and the alert the client sent.\n# TYPE certfleet_endpoint_handshakes_failed_total counter"
        );
        for ((account, name, chain), counters) in &counters {
            for (alert, count) in lock(&counters.failed).iter() {
                let _ = writeln!(
                    out,
                    "certfleet_endpoint_handshakes_failed_total{{account=\"{account}\",configuration=\"{}\",chain=\"{}\",alert=\"{}\"}} {count}",
                    label(name),
                    label(chain),
                    label(alert)
                );
            }
        }
        let mut connected: BTreeMap<(String, String, String), u64> = BTreeMap::new();
        for session in self.live.list() {
            if let (Some(name), Some(chain)) = (&session.endpoint, &session.chain) {
                *connected
                    .entry((session.identity.account.to_string(), name.clone(), chain.to_string()))
                    .or_default() += 1;
            }
        }
        let _ = writeln!(
            out,
            "# HELP certfleet_endpoint_connected Devices connected, by endpoint and the server chain they saw.\n# TYPE certfleet_endpoint_connected gauge"
        );
        for ((account, name, chain), count) in connected {
            let _ = writeln!(
                out,
                "certfleet_endpoint_connected{{account=\"{account}\",configuration=\"{}\",chain=\"{}\"}} {count}",
                label(&name),
                label(&chain)
            );
        }
        let _ = writeln!(
            out,
            "# HELP certfleet_endpoint_drain_sessions Sessions the last drain of an endpoint set out to close, and closed.\n# TYPE certfleet_endpoint_drain_sessions gauge"
        );
        for ((account, name), drain) in lock(&self.drains).iter() {
            let closed = drain.closed.load(Ordering::Relaxed);
            let _ = writeln!(
                out,
                "certfleet_endpoint_drain_sessions{{account=\"{account}\",configuration=\"{}\",state=\"total\"}} {}\ncertfleet_endpoint_drain_sessions{{account=\"{account}\",configuration=\"{}\",state=\"closed\"}} {closed}\ncertfleet_endpoint_guard_tripped{{account=\"{account}\",configuration=\"{}\"}} {}",
                label(name),
                drain.sessions,
                label(name),
                label(name),
                u8::from(drain.guard_tripped.is_some())
            );
        }
    }
}

/// The name of a TLS alert as the operator reads it (`unknown_ca`, `bad_certificate`, ...).
pub fn alert_name(error: &std::io::Error) -> String {
    let Some(error) = error.get_ref().and_then(|inner| inner.downcast_ref::<rustls::Error>()) else {
        return match error.kind() {
            std::io::ErrorKind::UnexpectedEof => "closed_without_alert".into(),
            _ => "connection_error".into(),
        };
    };
    match error {
        rustls::Error::AlertReceived(alert) => {
            use rustls::AlertDescription as A;
            match alert {
                A::UnknownCA => "unknown_ca".into(),
                A::BadCertificate => "bad_certificate".into(),
                A::CertificateExpired => "certificate_expired".into(),
                A::CertificateUnknown => "certificate_unknown".into(),
                A::UnsupportedCertificate => "unsupported_certificate".into(),
                A::CertificateRevoked => "certificate_revoked".into(),
                A::HandshakeFailure => "handshake_failure".into(),
                A::ProtocolVersion => "protocol_version".into(),
                A::DecryptError => "decrypt_error".into(),
                A::AccessDenied => "access_denied".into(),
                A::InternalError => "internal_error".into(),
                A::DecodeError => "decode_error".into(),
                A::IllegalParameter => "illegal_parameter".into(),
                other => format!("{other:?}").to_ascii_lowercase(),
            }
        }
        rustls::Error::NoCertificatesPresented => "no_client_certificate".into(),
        rustls::Error::PeerIncompatible(_) => "incompatible_client".into(),
        rustls::Error::InvalidCertificate(_) => "bad_client_certificate".into(),
        _ => "tls_error".into(),
    }
}

fn unit_random() -> f64 {
    let mut bytes = [0u8; 8];
    let _ = aws_lc_rs::rand::fill(&mut bytes);
    (u64::from_le_bytes(bytes) >> 11) as f64 / (1u64 << 53) as f64
}

fn shuffle<T>(items: &mut [T]) {
    for i in (1..items.len()).rev() {
        let j = (unit_random() * (i + 1) as f64) as usize;
        items.swap(i, j.min(i));
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl certfleet_services::DataPlane for Endpoints {
    fn connected_clients(&self, account: &AccountId) -> Vec<certfleet_services::ConnectedClient> {
        certfleet_services::DataPlane::connected_clients(&*self.live, account)
    }

    fn endpoint_report(&self, account: &AccountId, configuration: &str) -> Option<EndpointReport> {
        Some(self.report(account, configuration))
    }

    fn recent_refusals(&self, account: &AccountId) -> Vec<(String, u64)> {
        certfleet_services::DataPlane::recent_refusals(&*self.live, account)
    }
}
