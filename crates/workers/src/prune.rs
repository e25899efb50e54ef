//! The registry prune worker: on every node, a loop that asks the services to prune the
//! registry every `check_interval`; the services' claim makes exactly one node of the cluster
//! do it per prune interval (see `certfleet_services::PruneSettings`). Between two batches the
//! worker pauses on the blocking pool, so other writers get the database in between.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use certfleet_registry::PruneTarget;
use certfleet_services::{PruneSettings, Services};
use tokio::sync::watch;

/// Settings of the prune worker.
#[derive(Clone, Debug)]
pub struct PruneConfig {
    /// What is kept, how much goes per transaction, how often the cluster prunes.
    pub settings: PruneSettings,
    /// The pause between two batches.
    pub pause: Duration,
    /// How often this node tries to claim the prune.
    pub check_interval: Duration,
}

impl Default for PruneConfig {
    fn default() -> Self {
        PruneConfig {
            settings: PruneSettings::default(),
            pause: Duration::from_millis(100),
            check_interval: Duration::from_secs(60),
        }
    }
}

/// The prune's counters, for `/metrics`.
#[derive(Default)]
pub struct PruneMetrics {
    /// Rows deleted, per target in [`PruneTarget::ALL`]'s order.
    deleted: [AtomicU64; PruneTarget::ALL.len()],
    /// Prune runs this node made (it won the claim).
    pub runs: AtomicU64,
    /// Prune runs that failed with a registry error.
    pub failures: AtomicU64,
}

impl PruneMetrics {
    /// Rows deleted of `target` by this node so far.
    pub fn deleted(&self, target: PruneTarget) -> u64 {
        PruneTarget::ALL
            .iter()
            .position(|known| *known == target)
            .map_or(0, |index| self.deleted[index].load(Ordering::Relaxed))
    }

    /// Appends the counters in the Prometheus text format.
    pub fn render(&self, out: &mut String) {
        use std::fmt::Write;
        let _ = writeln!(
            out,
            "# HELP certfleet_registry_pruned_rows_total Registry rows deleted past their retention by this node.\n\
             # TYPE certfleet_registry_pruned_rows_total counter"
        );
        for target in PruneTarget::ALL {
            let _ = writeln!(
                out,
                "certfleet_registry_pruned_rows_total{{table=\"{}\"}} {}",
                target.as_str(),
                self.deleted(target)
            );
        }
        let _ = writeln!(
            out,
            "# HELP certfleet_registry_prune_runs_total Registry prunes this node ran.\n\
             # TYPE certfleet_registry_prune_runs_total counter\ncertfleet_registry_prune_runs_total {}\n\
             # HELP certfleet_registry_prune_failures_total Registry prunes that failed.\n\
             # TYPE certfleet_registry_prune_failures_total counter\ncertfleet_registry_prune_failures_total {}",
            self.runs.load(Ordering::Relaxed),
            self.failures.load(Ordering::Relaxed)
        );
    }
}

/// Runs the prune loop until `stop` turns true. `node` names this process in the claim.
pub async fn run_prune(
    services: Arc<Services>,
    node: String,
    config: PruneConfig,
    metrics: Arc<PruneMetrics>,
    mut stop: watch::Receiver<bool>,
) {
    tracing::info!(%node, check_s = config.check_interval.as_secs(), "registry prune worker running");
    loop {
        if *stop.borrow() {
            break;
        }
        let services = services.clone();
        let node = node.clone();
        let metrics_here = metrics.clone();
        let (settings, pause) = (config.settings, config.pause);
        let pruned = tokio::task::spawn_blocking(move || {
            services.prune_registry(&node, &settings, &mut || std::thread::sleep(pause))
        })
        .await;
        match pruned {
            Ok(Ok(Ok(report))) => {
                metrics_here.runs.fetch_add(1, Ordering::Relaxed);
                for (target, rows) in report.deleted {
                    if let Some(index) = PruneTarget::ALL.iter().position(|known| *known == target) {
                        metrics_here.deleted[index].fetch_add(rows, Ordering::Relaxed);
                    }
                }
            }
            Ok(Ok(Err(_not_due))) => {}
            Ok(Err(error)) => {
                metrics_here.failures.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(%error, "registry prune failed");
            }
            Err(error) => {
                metrics_here.failures.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(%error, "registry prune panicked");
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(config.check_interval) => {}
            changed = stop.changed() => if changed.is_err() { break },
        }
    }
    tracing::info!("registry prune worker stopped");
}
