//! What a scenario measured, as a table row or JSON.

use std::collections::BTreeMap;

/// The outcome of a run.
pub struct Report {
    pub label: String,
    pub scenario: String,
    pub connections: usize,
    pub ok: u64,
    pub reconnects: u64,
    pub failures: BTreeMap<u16, u64>,
    pub wall_seconds: f64,
    /// Sorted.
    pub latencies_us: Vec<u32>,
    pub server_cpu_seconds: Option<f64>,
    pub server_peak_rss_kib: Option<u64>,
}

impl Report {
    fn percentile_ms(&self, fraction: f64) -> f64 {
        if self.latencies_us.is_empty() {
            return 0.0;
        }
        let index = ((self.latencies_us.len() as f64 - 1.0) * fraction).round() as usize;
        f64::from(self.latencies_us[index]) / 1000.0
    }

    fn rate(&self) -> f64 {
        self.ok as f64 / self.wall_seconds
    }

    fn per_cpu_second(&self) -> Option<f64> {
        self.server_cpu_seconds.filter(|seconds| *seconds > 0.0).map(|seconds| self.ok as f64 / seconds)
    }

    pub fn to_json(&self) -> serde_json::Value {
        serde_json::json!({
            "label": self.label,
            "scenario": self.scenario,
            "connections": self.connections,
            "ok": self.ok,
            "reconnects": self.reconnects,
            "failures": self.failures.iter().map(|(status, count)| (status.to_string(), *count)).collect::<BTreeMap<_, _>>(),
            "wall_seconds": self.wall_seconds,
            "rate_per_second": self.rate(),
            "p50_ms": self.percentile_ms(0.50),
            "p99_ms": self.percentile_ms(0.99),
            "max_ms": self.percentile_ms(1.0),
            "server_cpu_seconds": self.server_cpu_seconds,
            "requests_per_server_cpu_second": self.per_cpu_second(),
            "server_peak_rss_mib": self.server_peak_rss_kib.map(|kib| kib as f64 / 1024.0),
        })
    }

    pub fn to_table(&self) -> String {
        let optional = |value: Option<f64>, digits: usize| value.map_or("-".to_owned(), |v| format!("{v:.digits$}"));
        format!(
            "{:<28} {:<26} conns {:>3}  ok {:>8}  failed {:>5}  {:>9.0}/s  p50 {:>7.2} ms  p99 {:>7.2} ms  server cpu {:>6} s  {:>9}/cpu-s  peak rss {:>7} MiB",
            self.label,
            self.scenario,
            self.connections,
            self.ok,
            self.failures.values().sum::<u64>(),
            self.rate(),
            self.percentile_ms(0.50),
            self.percentile_ms(0.99),
            optional(self.server_cpu_seconds, 2),
            optional(self.per_cpu_second(), 0),
            optional(self.server_peak_rss_kib.map(|kib| kib as f64 / 1024.0), 1),
        )
    }
}
