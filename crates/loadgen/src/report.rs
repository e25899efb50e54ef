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
    /// Figures particular to the scenario (resumed handshakes, RSS per connection, messages
    /// lost, ...), under `details` in JSON and after the row in the table.
    pub details: BTreeMap<&'static str, serde_json::Value>,
    /// Things the reader must know to read the figures (e.g. the server offered no resumption).
    pub notes: Vec<String>,
}

/// The value at `fraction` (0.0 to 1.0) of sorted samples, by rounding the rank
/// `(len - 1) * fraction` to the nearest sample; `None` without samples.
pub fn percentile(sorted: &[u32], fraction: f64) -> Option<u32> {
    let last = sorted.len().checked_sub(1)?;
    let index = ((last as f64) * fraction.clamp(0.0, 1.0)).round() as usize;
    sorted.get(index.min(last)).copied()
}

impl Report {
    fn percentile_ms(&self, fraction: f64) -> f64 {
        percentile(&self.latencies_us, fraction).map_or(0.0, |us| f64::from(us) / 1000.0)
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
            "details": self.details,
            "notes": self.notes,
        })
    }

    pub fn to_table(&self) -> String {
        let optional = |value: Option<f64>, digits: usize| value.map_or("-".to_owned(), |v| format!("{v:.digits$}"));
        let mut table = format!(
            "{:<28} {:<26} conns {:>5}  ok {:>8}  failed {:>5}  {:>9.0}/s  p50 {:>7.2} ms  p99 {:>7.2} ms  server cpu {:>6} s  {:>9}/cpu-s  peak rss {:>7} MiB",
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
        );
        if !self.details.is_empty() {
            let details: Vec<String> = self.details.iter().map(|(key, value)| format!("{key}={value}")).collect();
            table.push_str(&format!("\n    {}", details.join("  ")));
        }
        for note in &self.notes {
            table.push_str(&format!("\n    note: {note}"));
        }
        table
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles() {
        let check = |samples: &[u32], fraction: f64, expected: Option<u32>| {
            assert_eq!(percentile(samples, fraction), expected, "{samples:?} at {fraction}");
        };
        check(&[], 0.5, None);
        check(&[7], 0.0, Some(7));
        check(&[7], 0.99, Some(7));
        check(&[1, 2, 3], 0.5, Some(2));
        check(&[1, 2, 3, 4], 0.5, Some(3));
        let hundred: Vec<u32> = (1..=100).collect();
        check(&hundred, 0.5, Some(51));
        check(&hundred, 0.99, Some(99));
        check(&hundred, 1.0, Some(100));
        check(&hundred, 1.5, Some(100));
        check(&hundred, -1.0, Some(1));
    }

    #[test]
    fn json_carries_the_fields_compare_sh_reads() {
        let report = Report {
            label: "certfleet".into(),
            scenario: "IdleConnections".into(),
            connections: 4,
            ok: 4,
            reconnects: 0,
            failures: [(0, 1)].into_iter().collect(),
            wall_seconds: 2.0,
            latencies_us: vec![1000, 2000, 3000, 4000],
            server_cpu_seconds: Some(0.5),
            server_peak_rss_kib: Some(2048),
            details: [("rss_per_connection_kib", serde_json::json!(12.5))].into_iter().collect(),
            notes: vec!["a note".into()],
        };
        let json = report.to_json();
        let check = |key: &str, expected: serde_json::Value| assert_eq!(json[key], expected, "{key}");
        check("label", "certfleet".into());
        check("scenario", "IdleConnections".into());
        check("ok", 4.into());
        check("failures", serde_json::json!({"0": 1}));
        check("rate_per_second", 2.0.into());
        check("p50_ms", 3.0.into());
        check("p99_ms", 4.0.into());
        check("max_ms", 4.0.into());
        check("server_cpu_seconds", 0.5.into());
        check("requests_per_server_cpu_second", 8.0.into());
        check("server_peak_rss_mib", 2.0.into());
        check("details", serde_json::json!({"rss_per_connection_kib": 12.5}));
        check("notes", serde_json::json!(["a note"]));
        let table = report.to_table();
        assert!(table.contains("rss_per_connection_kib=12.5") && table.contains("note: a note"), "{table}");
    }
}
