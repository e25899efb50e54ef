//! Counters of the gateway: refusals per reason, handshakes, connections.

use std::sync::atomic::{AtomicU64, Ordering};

use crate::identity::Refusal;

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

/// The gateway's metrics in the Prometheus text format: connections, handshakes, refusals by
/// reason, and per endpoint and chain the devices connected, handshakes completed and failed by
/// alert, and the last drain.
pub(crate) fn render(gateway: &crate::Gateway, broker: &crate::Broker) -> String {
    use std::fmt::Write;
    let metrics = &gateway.metrics;
    let mut out = String::with_capacity(4096);
    counters(
        &mut out,
        "certfleet_gateway",
        &[
            ("connections_accepted", "TCP connections accepted.", &metrics.connections_accepted),
            (
                "connections_over_limit",
                "TCP connections closed at accept: the gateway was full.",
                &metrics.connections_over_limit,
            ),
            ("handshakes_completed", "TLS handshakes completed.", &metrics.handshakes_completed),
            ("handshakes_failed", "TLS handshakes failed.", &metrics.handshakes_failed),
        ],
    );
    let _ = writeln!(
        out,
        "# HELP certfleet_gateway_sessions Authenticated connections on this node.\n# TYPE certfleet_gateway_sessions gauge\ncertfleet_gateway_sessions {}",
        gateway.live.count()
    );
    let _ = writeln!(
        out,
        "# HELP certfleet_gateway_refusals_total Devices refused, by reason.\n# TYPE certfleet_gateway_refusals_total counter"
    );
    for (reason, count) in metrics.refusals() {
        let _ = writeln!(out, "certfleet_gateway_refusals_total{{reason=\"{reason}\"}} {count}");
    }
    let _ = writeln!(
        out,
        "# HELP certfleet_cache_entries Entries held by a bounded cache.\n# TYPE certfleet_cache_entries gauge"
    );
    let caches: Vec<crate::CacheStats> =
        gateway.registry.cache_stats().into_iter().chain(gateway.endpoints.cache_stats()).collect();
    for cache in &caches {
        let _ = writeln!(out, "certfleet_cache_entries{{cache=\"{}\"}} {}", cache.name, cache.entries);
    }
    let _ = writeln!(
        out,
        "# HELP certfleet_cache_capacity The most entries a cache holds.\n# TYPE certfleet_cache_capacity gauge"
    );
    for cache in &caches {
        let _ = writeln!(out, "certfleet_cache_capacity{{cache=\"{}\"}} {}", cache.name, cache.capacity);
    }
    let _ = writeln!(
        out,
        "# HELP certfleet_cache_evicted_total Entries dropped to stay within a cache's bound.\n# TYPE certfleet_cache_evicted_total counter"
    );
    for cache in &caches {
        let _ = writeln!(out, "certfleet_cache_evicted_total{{cache=\"{}\"}} {}", cache.name, cache.evicted);
    }
    {
        let c = broker.counters();
        counters(
            &mut out,
            "certfleet_broker",
            &[
                ("routed", "Messages routed on this node.", &c.routed),
                ("queued", "Messages queued for a subscriber.", &c.queued),
                (
                    "dropped_slow_qos0",
                    "QoS 0 messages dropped: a stalled subscriber's queue was full.",
                    &c.dropped_slow_qos0,
                ),
                (
                    "dropped_queue_full",
                    "QoS 1 and 2 messages dropped: the session's queue was full (offline, or a stalled subscriber).",
                    &c.dropped_queue_full,
                ),
                ("dropped_offline_qos0", "QoS 0 messages for offline sessions (never kept).", &c.dropped_offline_qos0),
                ("dropped_expired", "Messages that expired before they were sent.", &c.dropped_expired),
                ("dropped_too_large", "Messages over the subscriber's Maximum Packet Size.", &c.dropped_too_large),
                ("dropped_not_authorized", "Deliveries the subscriber's policies refused.", &c.dropped_not_authorized),
                ("takeovers", "Connections closed because another took their client ID.", &c.takeovers),
                (
                    "refused_retain_count",
                    "Retained PUBLISHes refused: the account held the maximum number of retained messages.",
                    &c.retained_refused_count,
                ),
                (
                    "refused_retain_bytes",
                    "Retained PUBLISHes refused: the account held the maximum bytes of retained messages.",
                    &c.retained_refused_bytes,
                ),
                (
                    "dropped_session_bytes",
                    "Messages dropped: the session's queue held its maximum bytes.",
                    &c.dropped_session_bytes,
                ),
                (
                    "dropped_account_bytes",
                    "Messages dropped: the account's session queues held their maximum bytes.",
                    &c.dropped_account_bytes,
                ),
                (
                    "dropped_qos0_for_room",
                    "Queued QoS 0 messages dropped to make room for a QoS 1 or 2 message.",
                    &c.dropped_qos0_for_room,
                ),
                (
                    "dropped_queue_bytes",
                    "Bytes of the messages dropped for a session (queue full, byte bounds, slow reader).",
                    &c.dropped_queue_bytes,
                ),
                (
                    "offline_sessions_evicted",
                    "Offline sessions ended early: the account kept the maximum number offline.",
                    &c.offline_sessions_evicted,
                ),
            ],
        );
        let totals = broker.totals();
        for (name, help, value) in [
            ("retained_messages", "Retained messages kept on this node, every account.", totals.retained_messages),
            ("retained_bytes", "Bytes of the retained messages kept on this node.", totals.retained_bytes),
            ("offline_sessions", "Persistent sessions kept offline on this node.", totals.offline_sessions),
            ("queued_bytes", "Bytes of the messages waiting in session queues on this node.", totals.queued_bytes),
        ] {
            let _ = writeln!(
                out,
                "# HELP certfleet_broker_{name} {help}\n# TYPE certfleet_broker_{name} gauge\ncertfleet_broker_{name} {value}"
            );
        }
        let _ = writeln!(
            out,
            "# HELP certfleet_broker_connect_refusals_total CONNECTs of authenticated devices refused, by reason.\n# TYPE certfleet_broker_connect_refusals_total counter"
        );
        for (reason, count) in c.connect_refusals() {
            let _ = writeln!(out, "certfleet_broker_connect_refusals_total{{reason=\"{reason}\"}} {count}");
        }
    }
    counters(
        &mut out,
        "certfleet_gateway",
        &[
            (
                "test_endpoint_records_written",
                "Test endpoint results written to the registry.",
                &gateway.probes.written,
            ),
            (
                "test_endpoint_records_dropped",
                "Test endpoint results dropped: over the account's rate, or too many waiting.",
                &gateway.probes.dropped,
            ),
        ],
    );
    let _ = writeln!(
        out,
        "# HELP certfleet_jitr_throttled_total Just-in-time registrations refused by the per-account rate.\n\
         # TYPE certfleet_jitr_throttled_total counter\ncertfleet_jitr_throttled_total {}",
        gateway.registry.services().registrations_throttled()
    );
    gateway.endpoints.render_metrics(&mut out);
    crate::rules::render_metrics(&gateway.rules.counters, &mut out);
    out
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
