//! The node's metrics in the Prometheus text format (`/metrics`): the gateway's, the broker's
//! and the rules engine's counters, read from the parts of one node.

use crate::broker::Broker;
use crate::listener::Gateway;
use crate::metrics::counters;

use super::shutdown::ShutdownCounters;

/// The gateway's metrics in the Prometheus text format: connections, handshakes, refusals by
/// reason, and per endpoint and chain the devices connected, handshakes completed and failed by
/// alert, and the last drain; the node's shutdown.
pub(super) fn render(gateway: &Gateway, broker: &Broker, shutdown: &ShutdownCounters) -> String {
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
    let (buckets, count, sum) = gateway.live.closed_after_change();
    let _ = writeln!(
        out,
        "# HELP certfleet_revocation_to_disconnect_seconds From a committed registry change that refuses a live session (revoked, deactivated, account deleted) to this node telling the session to close.\n# TYPE certfleet_revocation_to_disconnect_seconds histogram"
    );
    for (bound, cumulative) in buckets {
        let _ = writeln!(out, "certfleet_revocation_to_disconnect_seconds_bucket{{le=\"{bound}\"}} {cumulative}");
    }
    let _ = writeln!(out, "certfleet_revocation_to_disconnect_seconds_bucket{{le=\"+Inf\"}} {count}");
    let _ = writeln!(out, "certfleet_revocation_to_disconnect_seconds_sum {sum:.6}");
    let _ = writeln!(out, "certfleet_revocation_to_disconnect_seconds_count {count}");
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
                ("moved_away", "Sessions ended on this node because another node took their client ID.", &c.moved_away),
                (
                    "refused_fabric",
                    "Messages the fabric could not carry to the other nodes (its outbound queue was full).",
                    &c.fabric_refused,
                ),
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
    counters(
        &mut out,
        "certfleet_gateway_shutdown",
        &[
            (
                "sessions_drained",
                "Sessions told to end at mqtt.shutdown_disconnects_per_second while the node shut down.",
                &shutdown.drained,
            ),
            (
                "sessions_closed_at_grace",
                "Sessions told to end at once near the end of mqtt.shutdown_grace: the rate left no time for them.",
                &shutdown.closed_at_grace,
            ),
            (
                "connections_closed_before_connect",
                "Connections without a session yet (no CONNECT accepted) closed when the node's shutdown began.",
                &shutdown.closed_before_connect,
            ),
            (
                "connections_aborted",
                "Connections still open at the end of mqtt.shutdown_grace, dropped.",
                &shutdown.aborted,
            ),
        ],
    );
    let _ = writeln!(
        out,
        "# HELP certfleet_gateway_shutdown_sessions_draining Sessions the node's shutdown has still to tell to end.
# TYPE certfleet_gateway_shutdown_sessions_draining gauge
certfleet_gateway_shutdown_sessions_draining {}",
        shutdown.draining.load(std::sync::atomic::Ordering::Relaxed)
    );
    out
}
