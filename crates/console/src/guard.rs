//! What the console refuses and how often: the bound on failed sign-ins (per peer IP and for
//! everyone together, over fixed windows), and the refusals' counters and log gate (one line
//! a second per cause, with the count held back).
//!
//! No clock and no lock: time is an argument and the caller holds the lock.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// Why the console refused a request. Each is counted in `/metrics` and logged at most once a
/// second.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refusal {
    /// A sign-in naming an access key the registry does not hold.
    UnknownAccessKey,
    /// A sign-in with the wrong secret for its access key.
    WrongSecret,
    /// A sign-in form that is not one (missing or oversized fields, characters no key has).
    MalformedSignIn,
    /// A sign-in without the token of the sign-in page it came from (login CSRF).
    SignInTokenMismatch,
    /// Too many failed sign-ins from this peer lately.
    ThrottledPeer,
    /// Too many failed sign-ins from everyone lately.
    ThrottledGlobal,
    /// The session table is full.
    SessionsFull,
    /// A state change without the session's CSRF token, or with another one.
    CsrfMismatch,
    /// A request without a live session, or whose session's key is gone.
    NoSession,
    /// A query string or form that is too large, repeats a name or holds an invalid value.
    BadInput,
    /// The listener's connection bound was reached.
    ConnectionsFull,
    /// A request that did not finish within the request timeout.
    TimedOut,
    /// An account already had its share of registry queries running (searches, overviews).
    Busy,
    /// A `Host` header naming neither an IP address, `localhost`, nor one of the server's names
    /// (a DNS-rebinding page's requests name the attacker's host).
    UnknownHost,
}

impl Refusal {
    pub const ALL: [Refusal; 14] = [
        Refusal::UnknownAccessKey,
        Refusal::WrongSecret,
        Refusal::MalformedSignIn,
        Refusal::SignInTokenMismatch,
        Refusal::ThrottledPeer,
        Refusal::ThrottledGlobal,
        Refusal::SessionsFull,
        Refusal::CsrfMismatch,
        Refusal::NoSession,
        Refusal::BadInput,
        Refusal::ConnectionsFull,
        Refusal::TimedOut,
        Refusal::Busy,
        Refusal::UnknownHost,
    ];

    /// The metric label and log reason.
    pub fn as_str(self) -> &'static str {
        match self {
            Refusal::UnknownAccessKey => "unknown_access_key",
            Refusal::WrongSecret => "wrong_secret",
            Refusal::MalformedSignIn => "malformed_sign_in",
            Refusal::SignInTokenMismatch => "sign_in_token_mismatch",
            Refusal::ThrottledPeer => "throttled_peer",
            Refusal::ThrottledGlobal => "throttled_global",
            Refusal::SessionsFull => "sessions_full",
            Refusal::CsrfMismatch => "csrf_mismatch",
            Refusal::NoSession => "no_session",
            Refusal::BadInput => "bad_input",
            Refusal::ConnectionsFull => "connections_full",
            Refusal::TimedOut => "timed_out",
            Refusal::Busy => "busy",
            Refusal::UnknownHost => "unknown_host",
        }
    }

    fn index(self) -> usize {
        Refusal::ALL.iter().position(|refusal| *refusal == self).unwrap_or(0)
    }

    /// Whether it is a failed sign-in (counted against the peer's and everyone's bound).
    pub fn is_failed_sign_in(self) -> bool {
        matches!(
            self,
            Refusal::UnknownAccessKey | Refusal::WrongSecret | Refusal::MalformedSignIn | Refusal::SignInTokenMismatch
        )
    }
}

/// Counters of refusals, and the gate in front of their log lines.
#[derive(Default)]
pub struct Refusals {
    counts: [AtomicU64; Refusal::ALL.len()],
    gate: std::sync::Mutex<certfleet_cache::LogGate<{ Refusal::ALL.len() }>>,
}

impl Refusals {
    /// Counts a refusal and logs it when the gate lets it through. `detail` never holds a
    /// secret: the peer, the path, an access key ID (clipped).
    pub fn refuse(&self, refusal: Refusal, detail: &str) {
        self.counts[refusal.index()].fetch_add(1, Ordering::Relaxed);
        let admitted = match self.gate.lock() {
            Ok(mut gate) => gate.admit(refusal.index(), Instant::now()),
            Err(_) => Some(0),
        };
        if let Some(suppressed) = admitted {
            tracing::info!(reason = refusal.as_str(), detail = %clip(detail), suppressed, "console refused a request");
        }
    }

    /// How many of this kind were refused.
    pub fn count(&self, refusal: Refusal) -> u64 {
        self.counts[refusal.index()].load(Ordering::Relaxed)
    }
}

/// Registry queries in flight per account: at most `limit` at once, so one tenant's operators
/// cannot hold every read connection with searches that scan (a full index pass is about a
/// second per million certificates).
#[derive(Debug)]
pub struct InFlight<K> {
    limit: usize,
    running: std::sync::Mutex<HashMap<K, usize>>,
}

/// One query's place; given back when dropped.
pub struct Slot<'a, K: std::hash::Hash + Eq + Clone> {
    owner: &'a InFlight<K>,
    key: K,
}

impl<K: std::hash::Hash + Eq + Clone> InFlight<K> {
    pub fn new(limit: usize) -> Self {
        InFlight { limit: limit.max(1), running: std::sync::Mutex::new(HashMap::new()) }
    }

    /// A place for one more query of `key`, or `None` when it already has `limit` running.
    pub fn enter(&self, key: &K) -> Option<Slot<'_, K>> {
        let mut running = self.running.lock().ok()?;
        let count = running.entry(key.clone()).or_insert(0);
        if *count >= self.limit {
            return None;
        }
        *count += 1;
        Some(Slot { owner: self, key: key.clone() })
    }

    /// Keys with a query running.
    #[cfg(test)]
    pub fn keys(&self) -> usize {
        self.running.lock().map(|running| running.len()).unwrap_or(0)
    }
}

impl<K: std::hash::Hash + Eq + Clone> Drop for Slot<'_, K> {
    fn drop(&mut self) {
        if let Ok(mut running) = self.owner.running.lock()
            && let Some(count) = running.get_mut(&self.key)
        {
            *count -= 1;
            if *count == 0 {
                running.remove(&self.key);
            }
        }
    }
}

/// Whether a request's `Host` header names this console: an IP literal (v4, or v6 in
/// brackets), `localhost`, or one of `names` (compared without case and trailing dot), with
/// any port. A missing header is refused.
pub fn host_allowed(host: Option<&str>, names: &[String]) -> bool {
    let Some(host) = host else { return false };
    let name = match host.strip_prefix('[') {
        Some(rest) => match rest.split_once(']') {
            Some((inside, after)) if after.is_empty() || after.starts_with(':') => {
                return inside.parse::<std::net::Ipv6Addr>().is_ok();
            }
            _ => return false,
        },
        None => host
            .rsplit_once(':')
            .map_or(host, |(name, port)| if port.bytes().all(|b| b.is_ascii_digit()) { name } else { host }),
    };
    let name = name.trim_end_matches('.').to_ascii_lowercase();
    name.parse::<std::net::Ipv4Addr>().is_ok()
        || name == "localhost"
        || names.iter().any(|allowed| allowed.trim_end_matches('.').eq_ignore_ascii_case(&name))
}

/// Client input in a log line, cut to 128 bytes (on a char boundary) with an ellipsis.
pub fn clip(text: &str) -> String {
    if text.len() <= 128 {
        return text.to_owned();
    }
    let mut end = 128;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &text[..end])
}

/// Failed sign-ins in the current window of a peer, or of everyone.
#[derive(Clone, Copy, Debug)]
struct Window {
    start: Instant,
    failures: u32,
}

impl Window {
    fn current(&mut self, now: Instant, length: Duration) -> &mut Self {
        if now.saturating_duration_since(self.start) >= length {
            *self = Window { start: now, failures: 0 };
        }
        self
    }
}

/// The bounds of failed sign-ins.
#[derive(Clone, Copy, Debug)]
pub struct SignInLimits {
    /// Failures from one IP address per window before its sign-ins are refused unchecked.
    pub per_peer: u32,
    /// Failures from everyone per window before every sign-in is refused unchecked.
    pub global: u32,
    pub window: Duration,
    /// Peers remembered at once (past it, new peers count against the global bound only).
    pub max_peers: usize,
}

impl Default for SignInLimits {
    fn default() -> Self {
        SignInLimits { per_peer: 5, global: 100, window: Duration::from_secs(60), max_peers: 10_000 }
    }
}

/// Failed sign-ins, per peer and in total.
#[derive(Debug)]
pub struct SignInLimiter {
    limits: SignInLimits,
    peers: HashMap<IpAddr, Window>,
    global: Option<Window>,
}

impl SignInLimiter {
    pub fn new(limits: SignInLimits) -> Self {
        SignInLimiter { limits, peers: HashMap::new(), global: None }
    }

    /// Whether a sign-in from `peer` may be checked now, or which bound refuses it.
    pub fn check(&mut self, peer: IpAddr, now: Instant) -> Result<(), Refusal> {
        let window = self.limits.window;
        if let Some(global) = &mut self.global
            && global.current(now, window).failures >= self.limits.global
        {
            return Err(Refusal::ThrottledGlobal);
        }
        if let Some(entry) = self.peers.get_mut(&peer)
            && entry.current(now, window).failures >= self.limits.per_peer
        {
            return Err(Refusal::ThrottledPeer);
        }
        Ok(())
    }

    /// Counts a failed sign-in from `peer`.
    pub fn failed(&mut self, peer: IpAddr, now: Instant) {
        let window = self.limits.window;
        let global = self.global.get_or_insert(Window { start: now, failures: 0 }).current(now, window);
        global.failures = global.failures.saturating_add(1);
        if !self.peers.contains_key(&peer) && self.peers.len() >= self.limits.max_peers {
            self.peers.retain(|_, entry| now.saturating_duration_since(entry.start) < window);
            if self.peers.len() >= self.limits.max_peers {
                return;
            }
        }
        let entry = self.peers.entry(peer).or_insert(Window { start: now, failures: 0 }).current(now, window);
        entry.failures = entry.failures.saturating_add(1);
    }

    /// Peers remembered.
    #[cfg(test)]
    pub fn peers(&self) -> usize {
        self.peers.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(text: &str) -> IpAddr {
        text.parse().unwrap()
    }

    #[test]
    fn a_peer_is_refused_after_its_failures_until_the_window_ends() {
        let start = Instant::now();
        let mut limiter = SignInLimiter::new(SignInLimits { per_peer: 3, global: 100, ..SignInLimits::default() });
        for _ in 0..3 {
            assert_eq!(limiter.check(ip("10.0.0.1"), start), Ok(()));
            limiter.failed(ip("10.0.0.1"), start);
        }
        assert_eq!(limiter.check(ip("10.0.0.1"), start), Err(Refusal::ThrottledPeer));
        assert_eq!(limiter.check(ip("10.0.0.2"), start), Ok(()), "another peer is not affected");
        assert_eq!(limiter.check(ip("10.0.0.1"), start + Duration::from_secs(61)), Ok(()), "a new window");
    }

    #[test]
    fn everyone_is_refused_past_the_global_bound() {
        let start = Instant::now();
        let mut limiter = SignInLimiter::new(SignInLimits { per_peer: 100, global: 4, ..SignInLimits::default() });
        for n in 0..4 {
            limiter.failed(ip(&format!("10.0.1.{n}")), start);
        }
        assert_eq!(limiter.check(ip("10.9.9.9"), start), Err(Refusal::ThrottledGlobal));
        assert_eq!(limiter.check(ip("10.9.9.9"), start + Duration::from_secs(60)), Ok(()));
    }

    #[test]
    fn the_peers_remembered_are_bounded() {
        let start = Instant::now();
        let mut limiter =
            SignInLimiter::new(SignInLimits { per_peer: 1, global: 1000, max_peers: 2, ..SignInLimits::default() });
        for n in 0..5 {
            limiter.failed(ip(&format!("10.0.2.{n}")), start);
        }
        assert_eq!(limiter.peers(), 2);
        // Once their windows end, the old peers make room.
        limiter.failed(ip("10.0.3.1"), start + Duration::from_secs(61));
        assert_eq!(limiter.peers(), 1);
    }

    #[test]
    fn queries_in_flight_are_bounded_per_key_and_given_back() {
        let bound = InFlight::new(2);
        let first = bound.enter(&"a").unwrap();
        let second = bound.enter(&"a").unwrap();
        assert!(bound.enter(&"a").is_none(), "a third for the same key waits for a place");
        assert!(bound.enter(&"b").is_some(), "another key has its own places");
        drop(first);
        let third = bound.enter(&"a").unwrap();
        drop((second, third));
        assert_eq!(bound.keys(), 0, "no key is remembered once its queries are done");
    }

    #[test]
    fn hosts_are_ip_literals_localhost_or_the_servers_names() {
        let names = vec!["console.example.com".to_owned()];
        for (host, allowed) in [
            (Some("127.0.0.1:8444"), true),
            (Some("127.0.0.1"), true),
            (Some("[::1]:8444"), true),
            (Some("[::1]"), true),
            (Some("localhost:9000"), true),
            (Some("LOCALHOST."), true),
            (Some("Console.Example.com:443"), true),
            (Some("evil.example"), false),
            (Some("evil.example:8444"), false),
            (Some("127.0.0.1.evil.example"), false),
            (Some("[::1]evil"), false),
            (Some("[not-an-ip]:1"), false),
            (Some(""), false),
            (None, false),
        ] {
            assert_eq!(host_allowed(host, &names), allowed, "{host:?}");
        }
    }

    #[test]
    fn refusals_are_listed_once_each_and_clipped() {
        for (index, refusal) in Refusal::ALL.iter().enumerate() {
            assert_eq!(refusal.index(), index);
        }
        let labels: std::collections::BTreeSet<_> = Refusal::ALL.iter().map(|r| r.as_str()).collect();
        assert_eq!(labels.len(), Refusal::ALL.len());
        assert_eq!(clip(&"é".repeat(100)).len(), 128 + "…".len());
        let refusals = Refusals::default();
        refusals.refuse(Refusal::WrongSecret, "peer");
        refusals.refuse(Refusal::WrongSecret, "peer");
        assert_eq!(refusals.count(Refusal::WrongSecret), 2);
    }
}
