//! The registry prune: connection history, test endpoint records and change-feed entries past
//! their retention are deleted by one node of the cluster at a time, in bounded batches.
//!
//! A node runs [`Services::prune_registry`] when its worker ticks; the first step claims the
//! prune's lease row (a conditional UPDATE, so of two nodes exactly one wins). The winner
//! deletes at most `batch_rows` rows per transaction, renewing its lease between batches (and
//! letting the caller pause there, so the prune never holds a long lock nor starves other
//! writers), and when done releases the row until `interval` from now: the whole cluster prunes
//! once per interval, whichever node gets there first. A node that dies mid-prune leaves its
//! lease to expire, and another node takes over.

use certfleet_registry::{self as registry, MaintenanceJob, PruneTarget};
use time::Duration;

use crate::{Error, Services};

/// How long each kind of record is kept.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Retention {
    /// Connection history (read by the audit's connection checks over their last 31 days).
    pub connection_history: Duration,
    /// Test endpoint records (also capped per account, see `endpoints.rs`).
    pub endpoint_probes: Duration,
    /// Change-feed entries: followers read them within seconds; a day is ample slack.
    pub change_feed: Duration,
    /// Provisioning claims, after they expired (their certificates expired with them).
    pub provisioning_claims: Duration,
}

impl Default for Retention {
    fn default() -> Self {
        Retention {
            connection_history: Duration::days(90),
            endpoint_probes: Duration::days(90),
            change_feed: Duration::days(1),
            provisioning_claims: Duration::days(1),
        }
    }
}

impl Retention {
    /// How long `target`'s rows are kept.
    pub fn of(&self, target: PruneTarget) -> Duration {
        match target {
            PruneTarget::ConnectionHistory => self.connection_history,
            PruneTarget::EndpointProbes => self.endpoint_probes,
            PruneTarget::ChangeFeed => self.change_feed,
            PruneTarget::ProvisioningClaims => self.provisioning_claims,
        }
    }
}

/// How the prune runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PruneSettings {
    pub retention: Retention,
    /// At most this many rows deleted per transaction.
    pub batch_rows: u32,
    /// The cluster prunes once per interval.
    pub interval: Duration,
    /// How long a claim lasts without renewal (renewed before each batch): a dead node's prune
    /// is taken over after it.
    pub lease: Duration,
}

impl Default for PruneSettings {
    fn default() -> Self {
        PruneSettings {
            retention: Retention::default(),
            batch_rows: 10_000,
            interval: Duration::hours(1),
            lease: Duration::minutes(5),
        }
    }
}

/// What one prune run did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PruneReport {
    /// Rows deleted, per target, in [`PruneTarget::ALL`]'s order.
    pub deleted: Vec<(PruneTarget, u64)>,
    /// Transactions run.
    pub batches: u64,
    /// Whether the run stopped early because another node took the lease over.
    pub lost_lease: bool,
}

/// Why [`Services::prune_registry`] did not prune.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NotPruned {
    /// Another node holds the lease, or the cluster pruned less than an interval ago.
    NotDue,
}

impl Services {
    /// Prunes the registry if this node (`node`, unique per process) wins the claim; calls
    /// `between_batches` after each batch (the worker pauses there).
    pub fn prune_registry(
        &self,
        node: &str,
        settings: &PruneSettings,
        between_batches: &mut dyn FnMut(),
    ) -> Result<Result<PruneReport, NotPruned>, Error> {
        if node.is_empty() {
            return Err(Error::InvalidRequest("a prune node name must not be empty".into()));
        }
        let job = MaintenanceJob::RegistryPrune;
        let claim = |services: &Services| {
            let now = services.now();
            registry::write(services.store(), |tx| tx.claim_maintenance(job, node, now, now + settings.lease))
        };
        if !claim(self)? {
            return Ok(Err(NotPruned::NotDue));
        }
        let started = self.now();
        let limit = settings.batch_rows.max(1);
        let mut report = PruneReport::default();
        'targets: for target in PruneTarget::ALL {
            let before = started - settings.retention.of(target);
            let mut deleted = 0;
            loop {
                let removed = registry::write(self.store(), |tx| tx.prune_batch(target, before, limit))?;
                report.batches += 1;
                deleted += removed;
                if removed < u64::from(limit) {
                    break;
                }
                between_batches();
                if !claim(self)? {
                    report.lost_lease = true;
                    report.deleted.push((target, deleted));
                    break 'targets;
                }
            }
            report.deleted.push((target, deleted));
        }
        if !report.lost_lease {
            let next_due = started + settings.interval;
            registry::write(self.store(), |tx| tx.release_maintenance(job, node, next_due))?;
        }
        let total: u64 = report.deleted.iter().map(|(_, rows)| rows).sum();
        if total > 0 || report.lost_lease {
            tracing::info!(
                node,
                total,
                batches = report.batches,
                lost_lease = report.lost_lease,
                deleted = ?report.deleted,
                "registry pruned"
            );
        }
        Ok(Ok(report))
    }
}
