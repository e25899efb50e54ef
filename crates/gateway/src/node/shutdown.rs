//! A node's graceful shutdown: once its listener is closed, every live session is told to end at
//! a bounded rate, so that the fleet reconnects to the other nodes as a stream rather than a
//! storm; what is still open when the grace runs out is closed at once.
//!
//! The drain only signals (a lock and a watch send per session): each session ends on its own
//! task (`session::Ending::ServerShutdown`: DISCONNECT 0x8B to MQTT 5 clients, the will, the
//! lifecycle event, the connection history), and writes to its device under the session's own
//! close deadline. A device that does not read can slow neither the pace nor the end: the node
//! waits for the connections' tasks only until the grace's end, then drops what is left.

use std::num::NonZeroU32;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::task::JoinSet;
use tokio::time::Instant;

use crate::live::{LiveSessions, ShutdownBegun};

/// How a node ends its sessions when it shuts down.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ShutdownConfig {
    /// Sessions told to end per second.
    pub disconnects_per_second: NonZeroU32,
    /// The bound on the whole drain: sessions the rate has not reached by the last part of it
    /// ([`final_window`]) are told at once, and connections still open at its end are dropped.
    pub grace: Duration,
}

impl Default for ShutdownConfig {
    fn default() -> Self {
        ShutdownConfig { disconnects_per_second: NonZeroU32::new(1000).unwrap_or(NonZeroU32::MIN), grace: GRACE }
    }
}

const GRACE: Duration = Duration::from_secs(30);

/// The most of the grace kept for the sessions told last to send their DISCONNECT and TLS
/// close_notify: the session transport's own close deadline.
const FINAL_WINDOW: Duration = Duration::from_secs(2);

/// The part at the end of `grace` kept for the last sessions to close: a quarter of it, at
/// most [`FINAL_WINDOW`].
pub(crate) fn final_window(grace: Duration) -> Duration {
    (grace / 4).min(FINAL_WINDOW)
}

/// The shutdown's counters, in `/metrics` (`certfleet_gateway_shutdown_*`).
#[derive(Default)]
pub(crate) struct ShutdownCounters {
    /// Sessions not told to end yet (a gauge: non-zero only while a drain runs).
    pub(crate) draining: AtomicU64,
    /// Sessions told to end at the configured rate.
    pub(crate) drained: AtomicU64,
    /// Sessions told to end at once, the rate having left no time for them within the grace.
    pub(crate) closed_at_grace: AtomicU64,
    /// Connections without a session (no CONNECT accepted yet) told to close when it began.
    pub(crate) closed_before_connect: AtomicU64,
    /// Connections still open at the end of the grace, dropped.
    pub(crate) aborted: AtomicU64,
}

/// What a drain did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Drained {
    /// Sessions told to end at the configured rate.
    pub paced: u64,
    /// Sessions told to end at once near the grace's end.
    pub closed_at_grace: u64,
    /// Connections authenticated but without a session yet (no CONNECT accepted), told to close
    /// at once when the drain began.
    pub closed_before_connect: u64,
    /// Connections (sessions, or devices in their handshake) still open at the grace's end,
    /// dropped without their DISCONNECT nor, when they had not got to it, their will and
    /// history.
    pub aborted: u64,
    /// From the start of the drain to the end of the last connection (or of the grace).
    pub elapsed: Duration,
}

/// Tells every live session to end, at most `config.disconnects_per_second`, oldest first (and
/// the connections without a session yet at once), then waits for every connection's task
/// (`connections`) until the grace's end and drops the rest.
pub(crate) async fn drain(
    live: &LiveSessions,
    mut connections: JoinSet<()>,
    config: ShutdownConfig,
    counters: &ShutdownCounters,
) -> Drained {
    let started = Instant::now();
    let deadline = started + config.grace;
    let pacing_deadline = deadline - final_window(config.grace);
    let ShutdownBegun { sessions, closed_before_connect } = live.begin_shutdown();
    let closed_before_connect = closed_before_connect as u64;
    counters.closed_before_connect.fetch_add(closed_before_connect, Ordering::Relaxed);
    let rate = f64::from(config.disconnects_per_second.get());
    counters.draining.store(sessions.len() as u64, Ordering::Relaxed);
    let needed = Duration::from_secs_f64(sessions.len() as f64 / rate);
    tracing::info!(
        sessions = sessions.len(),
        closed_before_connect,
        per_second = config.disconnects_per_second.get(),
        grace = ?config.grace,
        "gateway listener closed: draining the sessions"
    );
    if started + needed > pacing_deadline {
        tracing::warn!(
            sessions = sessions.len(),
            needed = ?needed,
            "the shutdown grace is too short for this many sessions at this rate: those left near its end are closed at once"
        );
    }
    let mut paced: u64 = 0;
    let mut closed_at_grace: u64 = 0;
    let mut sessions = sessions.into_iter();
    for session_id in sessions.by_ref() {
        // The n-th session is told at `n / rate`: an average that holds at any rate, whatever
        // the timer's granularity (sessions whose time has come are told without a sleep).
        let due = started + Duration::from_secs_f64(paced as f64 / rate);
        if due >= pacing_deadline {
            closed_at_grace += u64::from(live.close_for_shutdown(session_id));
            counters.draining.fetch_sub(1, Ordering::Relaxed);
            break;
        }
        tokio::time::sleep_until(due).await;
        if live.close_for_shutdown(session_id) {
            paced += 1;
            counters.drained.fetch_add(1, Ordering::Relaxed);
        }
        counters.draining.fetch_sub(1, Ordering::Relaxed);
    }
    for session_id in sessions {
        closed_at_grace += u64::from(live.close_for_shutdown(session_id));
        counters.draining.fetch_sub(1, Ordering::Relaxed);
    }
    counters.closed_at_grace.fetch_add(closed_at_grace, Ordering::Relaxed);
    let all_ended = tokio::time::timeout_at(deadline, async {
        while let Some(ended) = connections.join_next().await {
            if let Err(error) = ended
                && error.is_panic()
            {
                tracing::error!(%error, "a connection's task panicked");
            }
        }
    })
    .await
    .is_ok();
    let elapsed = started.elapsed();
    let aborted = if all_ended { 0 } else { connections.len() as u64 };
    counters.aborted.fetch_add(aborted, Ordering::Relaxed);
    // Dropped: their sockets close with their tasks.
    connections.shutdown().await;
    Drained { paced, closed_at_grace, closed_before_connect, aborted, elapsed }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_final_window_is_a_quarter_of_the_grace_at_most_two_seconds() {
        let check = |grace_ms: u64, expected_ms: u64| {
            assert_eq!(final_window(Duration::from_millis(grace_ms)), Duration::from_millis(expected_ms), "{grace_ms}");
        };
        check(30_000, 2_000);
        check(8_000, 2_000);
        check(4_000, 1_000);
        check(1_000, 250);
    }
}
