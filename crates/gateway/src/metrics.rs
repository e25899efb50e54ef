//! Counters of the gateway: refusals per reason, handshakes, connections.

use std::sync::atomic::{AtomicU64, Ordering};

use crate::model::Refusal;

/// What anyone can cause before a device is identified: each kind is logged at most once a
/// second (with how many were not), while the counters count every one.
#[derive(Clone, Copy, Debug)]
pub enum Stranger {
    /// The gateway's connection limit was reached.
    Full,
    /// The connection ended before a ClientHello could be read.
    HelloFailed,
    /// The handshake did not finish in time.
    TimedOut,
    /// The SNI name is that of a disabled domain configuration.
    Disabled,
    /// The handshake failed (an unknown or invalid client certificate, a protocol error).
    HandshakeFailed,
}

impl Stranger {
    const COUNT: usize = 5;
}

/// The gateway's counters, cheap to bump from any task.
#[derive(Default)]
pub struct Metrics {
    refusals: [AtomicU64; Refusal::ALL.len()],
    /// One line a second per refusal reason.
    refusal_log: std::sync::Mutex<certfleet_cache::LogGate<{ Refusal::ALL.len() }>>,
    /// One line a second per [`Stranger`] kind.
    stranger_log: std::sync::Mutex<certfleet_cache::LogGate<{ Stranger::COUNT }>>,
    pub handshakes_completed: AtomicU64,
    pub handshakes_failed: AtomicU64,
    pub connections_accepted: AtomicU64,
    pub connections_over_limit: AtomicU64,
}

impl Metrics {
    /// `Some(suppressed)` when a line about `what` is to be logged now.
    pub fn quiet(&self, what: Stranger) -> Option<u64> {
        self.stranger_log
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .admit(what as usize, std::time::Instant::now())
    }

    /// Counts a refusal.
    /// Counts a refused device; `Some(suppressed)` when the refusal is to be logged now (at
    /// most once a second per reason: a stranger's certificates, or a revoked device
    /// reconnecting in a loop, cannot flood the log).
    #[must_use = "log the refusal when it is Some"]
    pub fn refused(&self, reason: Refusal) -> Option<u64> {
        let index = Refusal::ALL.iter().position(|known| *known == reason)?;
        self.refusals[index].fetch_add(1, Ordering::Relaxed);
        self.refusal_log
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .admit(index, std::time::Instant::now())
    }

    /// How many refusals of each reason so far.
    pub fn refusals(&self) -> Vec<(Refusal, u64)> {
        Refusal::ALL
            .iter()
            .zip(&self.refusals)
            .map(|(reason, count)| (*reason, count.load(Ordering::Relaxed)))
            .collect()
    }

    /// The count of one reason.
    pub fn refusal_count(&self, reason: Refusal) -> u64 {
        self.refusals().into_iter().find(|(known, _)| *known == reason).map_or(0, |(_, count)| count)
    }
}

/// Counters in the Prometheus text format, each `<prefix>_<name>_total` with its help text.
pub(crate) fn counters(out: &mut String, prefix: &str, table: &[(&str, &str, &AtomicU64)]) {
    use std::fmt::Write;
    for (name, help, value) in table {
        let name = format!("{prefix}_{name}_total");
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} counter\n{name} {}", load(value));
    }
}

fn load(counter: &AtomicU64) -> u64 {
    counter.load(Ordering::Relaxed)
}
