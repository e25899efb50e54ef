//! The operator console (issue 16): a web UI served by the `certfleet` binary on a listener of
//! its own, over the services and nothing else. An operator signs in with an access key of an
//! account (as the AWS console takes IAM credentials) and sees that account only: every query
//! goes through [`Services`] with the session's account as the [`Caller`].
//!
//! - `session`: the server-side session table (random IDs, per-session CSRF tokens, bounded).
//! - `guard`: the failed sign-in bound and the refusals (counted, logged once a second).
//! - `html` / `svg`: escaped output, bounded form input, the expiry timeline.
//! - `pages`, `fleet_pages`, `audit_pages`: the routes and pages; `listener`: the accept loop (TLS, connection bound,
//!   deadlines).
//!
//! Assets (one stylesheet, one script) are compiled into the binary: nothing is fetched from
//! elsewhere, so the console works on an air-gapped network, and the Content-Security-Policy
//! allows scripts and styles from the console's own origin only.

mod audit_pages;
mod fleet_pages;
mod guard;
#[cfg(test)]
mod handler_tests;
mod html;
mod listener;
mod pages;
mod session;
mod svg;

use std::collections::HashMap;
use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use certfleet_registry::AccountId;
use certfleet_services::{Caller, ExpiringCount, FleetOverview, Services};

pub use guard::{Refusal, SignInLimits};
pub use listener::serve;
pub use session::SessionLimits;

/// The console's settings, built by the binary from `[console]`.
#[derive(Clone, Debug)]
pub struct Config {
    pub sessions: SessionLimits,
    pub sign_in: SignInLimits,
    /// Connections at once on the console's listener.
    pub max_connections: usize,
    /// A TLS handshake taking longer is abandoned.
    pub handshake_timeout: Duration,
    /// A request's headers (and an idle keep-alive connection) must arrive within this.
    pub header_timeout: Duration,
    /// A request (its body, the queries, the answer) taking longer is answered 503.
    pub request_timeout: Duration,
    /// How long an account's overview is reused before it is computed again.
    pub overview_cache: Duration,
    /// How often the expiring-certificate gauges are computed.
    pub gauge_interval: Duration,
    /// Cookies carry `Secure` (the listener serves TLS).
    pub secure_cookies: bool,
    /// Host names requests may name besides IP literals and `localhost` (the server's names);
    /// others are refused (DNS rebinding).
    pub host_names: Vec<String>,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            sessions: SessionLimits::default(),
            sign_in: SignInLimits::default(),
            max_connections: 64,
            handshake_timeout: Duration::from_secs(10),
            header_timeout: Duration::from_secs(10),
            request_timeout: Duration::from_secs(15),
            overview_cache: Duration::from_secs(15),
            gauge_interval: Duration::from_secs(300),
            secure_cookies: true,
            host_names: Vec::new(),
        }
    }
}

/// The most (account, CA) series the expiring gauges export.
const MAX_GAUGE_SERIES: usize = 10_000;
/// The most accounts whose overview is kept at once.
const MAX_CACHED_OVERVIEWS: usize = 1_000;

/// The console of one node: its sessions, bounds, caches and counters.
pub struct Console {
    services: Arc<Services>,
    /// This node's gateway (live sessions, refusals, chain counters), when it runs one.
    data_plane: Option<Arc<dyn certfleet_services::DataPlane>>,
    config: Config,
    sessions: Mutex<session::Sessions>,
    sign_in: Mutex<guard::SignInLimiter>,
    refusals: guard::Refusals,
    overviews: Mutex<HashMap<AccountId, (Instant, Arc<FleetOverview>)>>,
    expiring: Mutex<Option<(time::OffsetDateTime, Vec<ExpiringCount>)>>,
    /// Every account's rotations per state, computed with the expiring gauges.
    rotations: Mutex<Vec<(AccountId, certfleet_services::RotationCounts)>>,
    /// Registry queries that may scan (searches, overviews) in flight per account.
    queries: guard::InFlight<AccountId>,
    counters: Counters,
}

/// Registry queries that may scan, in flight per account at once.
const QUERIES_PER_ACCOUNT: usize = 2;

#[derive(Default)]
struct Counters {
    sign_ins: AtomicU64,
    sign_outs: AtomicU64,
    sessions_evicted: AtomicU64,
    status_changes: AtomicU64,
    connections_open: AtomicU64,
    requests: AtomicU64,
    overview_computed: AtomicU64,
    overview_micros: AtomicU64,
    gauge_series_dropped: AtomicU64,
}

impl Console {
    /// A console over `services`.
    pub fn new(
        services: Arc<Services>,
        data_plane: Option<Arc<dyn certfleet_services::DataPlane>>,
        config: Config,
    ) -> Arc<Console> {
        Arc::new(Console {
            data_plane,
            sessions: Mutex::new(session::Sessions::new(config.sessions)),
            sign_in: Mutex::new(guard::SignInLimiter::new(config.sign_in)),
            services,
            config,
            refusals: guard::Refusals::default(),
            overviews: Mutex::new(HashMap::new()),
            expiring: Mutex::new(None),
            rotations: Mutex::new(Vec::new()),
            queries: guard::InFlight::new(QUERIES_PER_ACCOUNT),
            counters: Counters::default(),
        })
    }

    /// The caller's devices connected to the gateway nodes this console reads (this node, or
    /// every node of a cluster; none without a gateway here).
    pub(crate) fn connected_clients(&self, caller: &Caller) -> Vec<certfleet_services::ConnectedClient> {
        self.data_plane.as_ref().map(|plane| plane.connected_clients(&caller.account)).unwrap_or_default()
    }

    /// The caller's devices the gateway nodes refused in the last hour, by reason.
    pub(crate) fn recent_refusals(&self, caller: &Caller) -> Vec<(String, u64)> {
        self.data_plane.as_ref().map(|plane| plane.recent_refusals(&caller.account)).unwrap_or_default()
    }

    /// This node's report on a domain configuration (none without a gateway here).
    pub(crate) fn endpoint_report(
        &self,
        caller: &Caller,
        configuration: &str,
    ) -> Option<certfleet_services::EndpointReport> {
        self.data_plane.as_ref().and_then(|plane| plane.endpoint_report(&caller.account, configuration))
    }

    /// Starts the background work: the subject CN backfill of certificates written before the
    /// console's migration (once, in batches), and the expiring-certificate gauges (every
    /// `gauge_interval`).
    pub fn start_background(self: &Arc<Self>, mut stopped: tokio::sync::watch::Receiver<bool>) {
        let console = self.clone();
        tokio::spawn(async move {
            let mut filled = 0usize;
            loop {
                let services = console.services.clone();
                match tokio::task::spawn_blocking(move || services.fill_subject_names(500)).await {
                    Ok(Ok(0)) => break,
                    Ok(Ok(count)) => filled += count,
                    Ok(Err(error)) => {
                        tracing::warn!(%error, "console: filling subject names failed; search by CN misses older certificates");
                        break;
                    }
                    Err(_) => break,
                }
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_millis(50)) => {}
                    _ = stopped.changed() => return,
                }
            }
            if filled > 0 {
                tracing::info!(certificates = filled, "console: subject names filled for searching");
            }
            loop {
                let services = console.services.clone();
                let started = Instant::now();
                match tokio::task::spawn_blocking(move || services.expiring_certificates()).await {
                    Ok(Ok(mut counts)) => {
                        if counts.len() > MAX_GAUGE_SERIES {
                            console
                                .counters
                                .gauge_series_dropped
                                .store((counts.len() - MAX_GAUGE_SERIES) as u64, Ordering::Relaxed);
                            counts.truncate(MAX_GAUGE_SERIES);
                        }
                        tracing::debug!(series = counts.len(), elapsed = ?started.elapsed(), "expiring gauges computed");
                        if let Ok(mut expiring) = console.expiring.lock() {
                            *expiring = Some((console.services.now(), counts));
                        }
                    }
                    Ok(Err(error)) => tracing::warn!(%error, "console: computing the expiring gauges failed"),
                    Err(_) => {}
                }
                let services = console.services.clone();
                match tokio::task::spawn_blocking(move || services.rotation_counts()).await {
                    Ok(Ok(mut counts)) => {
                        counts.truncate(MAX_GAUGE_SERIES);
                        if let Ok(mut rotations) = console.rotations.lock() {
                            *rotations = counts;
                        }
                    }
                    Ok(Err(error)) => tracing::warn!(%error, "console: computing the rotation gauges failed"),
                    Err(_) => {}
                }
                tokio::select! {
                    _ = tokio::time::sleep(console.config.gauge_interval) => {}
                    _ = stopped.changed() => return,
                }
            }
        });
    }

    /// The account's overview, computed at most once per `overview_cache` per account.
    async fn overview(&self, caller: &Caller) -> Result<Arc<FleetOverview>, certfleet_services::Error> {
        let now = Instant::now();
        if let Ok(cache) = self.overviews.lock()
            && let Some((at, overview)) = cache.get(&caller.account)
            && now.saturating_duration_since(*at) < self.config.overview_cache
        {
            return Ok(overview.clone());
        }
        let Some(_slot) = self.queries.enter(&caller.account) else {
            self.refusals.refuse(Refusal::Busy, &format!("account {} overview", caller.account));
            return Err(certfleet_services::Error::LimitExceeded(
                "this account's queries are busy; try again in a moment".into(),
            ));
        };
        let services = self.services.clone();
        let owner = caller.clone();
        let started = Instant::now();
        let overview = Arc::new(pages::blocking(move || services.fleet_overview(&owner)).await?);
        self.counters.overview_computed.fetch_add(1, Ordering::Relaxed);
        self.counters.overview_micros.fetch_add(started.elapsed().as_micros() as u64, Ordering::Relaxed);
        if let Ok(mut cache) = self.overviews.lock() {
            if cache.len() >= MAX_CACHED_OVERVIEWS {
                cache.clear();
            }
            cache.insert(caller.account.clone(), (now, overview.clone()));
        }
        Ok(overview)
    }

    /// Forgets an account's cached overview (after a change made through the console).
    fn forget_overview(&self, account: &AccountId) {
        if let Ok(mut cache) = self.overviews.lock() {
            cache.remove(account);
        }
    }

    /// Appends the console's metrics, in the Prometheus text format.
    pub fn render_metrics(&self, out: &mut String) {
        let sessions = self.sessions.lock().map(|sessions| sessions.count()).unwrap_or(0);
        let load = |counter: &AtomicU64| counter.load(Ordering::Relaxed);
        let _ = writeln!(out, "# HELP certfleet_console_sessions Console sessions open on this node.");
        let _ = writeln!(out, "# TYPE certfleet_console_sessions gauge");
        let _ = writeln!(out, "certfleet_console_sessions {sessions}");
        let _ = writeln!(out, "# TYPE certfleet_console_sessions_max gauge");
        let _ = writeln!(out, "certfleet_console_sessions_max {}", self.config.sessions.max_sessions);
        let _ = writeln!(out, "# HELP certfleet_console_sign_ins_total Successful console sign-ins.");
        let _ = writeln!(out, "# TYPE certfleet_console_sign_ins_total counter");
        let _ = writeln!(out, "certfleet_console_sign_ins_total {}", load(&self.counters.sign_ins));
        let _ = writeln!(out, "# TYPE certfleet_console_sign_outs_total counter");
        let _ = writeln!(out, "certfleet_console_sign_outs_total {}", load(&self.counters.sign_outs));
        let _ = writeln!(
            out,
            "# HELP certfleet_console_sessions_evicted_total Sessions ended to keep an account within its bound."
        );
        let _ = writeln!(out, "# TYPE certfleet_console_sessions_evicted_total counter");
        let _ = writeln!(out, "certfleet_console_sessions_evicted_total {}", load(&self.counters.sessions_evicted));
        let _ = writeln!(out, "# TYPE certfleet_console_status_changes_total counter");
        let _ = writeln!(out, "certfleet_console_status_changes_total {}", load(&self.counters.status_changes));
        let _ = writeln!(out, "# TYPE certfleet_console_connections_open gauge");
        let _ = writeln!(out, "certfleet_console_connections_open {}", load(&self.counters.connections_open));
        let _ = writeln!(out, "# TYPE certfleet_console_requests_total counter");
        let _ = writeln!(out, "certfleet_console_requests_total {}", load(&self.counters.requests));
        let _ = writeln!(
            out,
            "# HELP certfleet_console_overview_computed_total Overviews computed (not served from the cache), and the time they took."
        );
        let _ = writeln!(out, "# TYPE certfleet_console_overview_computed_total counter");
        let _ = writeln!(out, "certfleet_console_overview_computed_total {}", load(&self.counters.overview_computed));
        let _ = writeln!(out, "# TYPE certfleet_console_overview_seconds_total counter");
        let _ = writeln!(
            out,
            "certfleet_console_overview_seconds_total {:.6}",
            load(&self.counters.overview_micros) as f64 / 1e6
        );
        let _ = writeln!(out, "# HELP certfleet_console_refused_total Console requests refused, by reason.");
        let _ = writeln!(out, "# TYPE certfleet_console_refused_total counter");
        for refusal in Refusal::ALL {
            let _ = writeln!(
                out,
                "certfleet_console_refused_total{{reason=\"{}\"}} {}",
                refusal.as_str(),
                self.refusals.count(refusal)
            );
        }
        let _ = writeln!(
            out,
            "# HELP certfleet_certificates_expiring ACTIVE certificates expiring within a window, per account and issuing CA (none: no registered CA)."
        );
        let _ = writeln!(out, "# TYPE certfleet_certificates_expiring gauge");
        if let Ok(expiring) = self.expiring.lock()
            && let Some((at, counts)) = expiring.as_ref()
        {
            for count in counts {
                let ca = count.ca.as_ref().map_or("none", |id| id.as_str());
                for (days, value) in certfleet_services::EXPIRY_WINDOWS_DAYS.iter().zip(count.within) {
                    let _ = writeln!(
                        out,
                        "certfleet_certificates_expiring{{account=\"{}\",ca=\"{ca}\",within=\"{days}d\"}} {value}",
                        count.account
                    );
                }
            }
            let _ = writeln!(out, "# TYPE certfleet_certificates_expiring_computed_timestamp_seconds gauge");
            let _ = writeln!(out, "certfleet_certificates_expiring_computed_timestamp_seconds {}", at.unix_timestamp());
        }
        let _ = writeln!(
            out,
            "# HELP certfleet_rotations Rotations per account and state (retired and failed are their outcomes), computed with the expiring gauges."
        );
        let _ = writeln!(out, "# TYPE certfleet_rotations gauge");
        if let Ok(rotations) = self.rotations.lock() {
            for (account, states) in rotations.iter() {
                for (state, count) in states {
                    let _ = writeln!(
                        out,
                        "certfleet_rotations{{account=\"{account}\",state=\"{}\"}} {count}",
                        state.as_str()
                    );
                }
            }
        }
        let _ = writeln!(out, "# TYPE certfleet_certificates_expiring_series_dropped gauge");
        let _ = writeln!(
            out,
            "certfleet_certificates_expiring_series_dropped {}",
            load(&self.counters.gauge_series_dropped)
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every certfleet metric the shipped Grafana dashboard queries is one the console exports.
    #[test]
    fn the_dashboard_queries_metrics_the_console_exports() {
        let world = certfleet_testkit::world();
        let console = Console::new(world.services.clone(), None, Config::default());
        let account = world.caller().account;
        *console.rotations.lock().unwrap() =
            vec![(account.clone(), [(certfleet_registry::RotationState::Retired, 4)].into_iter().collect())];
        *console.expiring.lock().unwrap() = Some((
            certfleet_testkit::START,
            vec![ExpiringCount { account: account.clone(), ca: None, within: [1, 2, 3] }],
        ));
        let mut text = String::new();
        console.render_metrics(&mut text);
        assert!(text.contains(&format!(
            "certfleet_certificates_expiring{{account=\"{account}\",ca=\"none\",within=\"30d\"}} 2"
        )));
        let dashboard = include_str!("../../../docs/grafana/certfleet.json");
        let used: std::collections::BTreeSet<&str> = dashboard
            .match_indices("certfleet_")
            .map(|(start, _)| {
                let rest = &dashboard[start..];
                &rest[..rest.find(|c: char| !(c.is_ascii_alphanumeric() || c == '_')).unwrap_or(rest.len())]
            })
            .filter(|name| name.len() > "certfleet_".len())
            .collect();
        assert!(used.len() >= 5, "{used:?}");
        // The gateway exports the revocation histogram (the e2e test checks every name the
        // dashboard uses against a running server's /metrics).
        for name in used.into_iter().filter(|name| !name.starts_with("certfleet_revocation_to_disconnect")) {
            assert!(text.contains(&format!("\n{name}")) || text.starts_with(name), "{name} is not exported");
        }
    }
}
