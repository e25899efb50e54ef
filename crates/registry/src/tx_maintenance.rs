//! The registry's own upkeep: the claim that lets exactly one node of a cluster run a
//! maintenance job at a time, and the bounded prune statements of the tables that grow with
//! traffic (connection history, test endpoint records, the change feed).
//!
//! A claim is one conditional UPDATE on the job's row (migration 11): it moves the lease only
//! when the lease has expired or is the claimer's own, so the number of rows changed says who
//! won, on SQLite and PostgreSQL alike. A prune deletes at most `limit` rows per statement
//! (`DELETE ... WHERE key IN (SELECT key ... LIMIT n)`, which both backends accept), over an
//! index on the time column, so one transaction never holds its locks for long.

use time::OffsetDateTime;

use crate::Error;
use crate::tx::{Tx, millis};

/// A job that one node of a cluster runs at a time.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MaintenanceJob {
    /// Deleting connection history, test endpoint records and change-feed entries past their
    /// retention.
    RegistryPrune,
}

impl MaintenanceJob {
    /// The job's row key in `maintenance_claims`.
    pub fn as_str(self) -> &'static str {
        match self {
            MaintenanceJob::RegistryPrune => "registry_prune",
        }
    }
}

/// A table whose old rows are pruned.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PruneTarget {
    /// `connections`: rows connected, and disconnected (or never closed), before the cutoff.
    ConnectionHistory,
    /// `endpoint_probes`: test endpoint records made before the cutoff.
    EndpointProbes,
    /// `changes`: change-feed entries recorded before the cutoff.
    ChangeFeed,
    /// `provisioning_claims`: claims (CreateProvisioningClaim) that expired before the cutoff.
    /// Their certificates expired with them (a claim is valid as long as its certificate) and
    /// stay, as any expired certificate does.
    ProvisioningClaims,
}

impl PruneTarget {
    /// Every target, in the order the prune runs them.
    pub const ALL: [PruneTarget; 4] = [
        PruneTarget::ConnectionHistory,
        PruneTarget::EndpointProbes,
        PruneTarget::ChangeFeed,
        PruneTarget::ProvisioningClaims,
    ];

    /// The name used in logs and metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            PruneTarget::ConnectionHistory => "connection_history",
            PruneTarget::EndpointProbes => "endpoint_probes",
            PruneTarget::ChangeFeed => "change_feed",
            PruneTarget::ProvisioningClaims => "provisioning_claims",
        }
    }

    fn delete_statement(self) -> &'static str {
        match self {
            PruneTarget::ConnectionHistory => {
                "DELETE FROM connections WHERE session_id IN (SELECT session_id FROM connections \
                 WHERE connected_at < $1 AND COALESCE(disconnected_at, 0) < $1 LIMIT $2)"
            }
            PruneTarget::EndpointProbes => {
                "DELETE FROM endpoint_probes WHERE seq IN (SELECT seq FROM endpoint_probes WHERE at < $1 LIMIT $2)"
            }
            PruneTarget::ChangeFeed => {
                "DELETE FROM changes WHERE seq IN (SELECT seq FROM changes WHERE created_at < $1 LIMIT $2)"
            }
            PruneTarget::ProvisioningClaims => {
                "DELETE FROM provisioning_claims WHERE (account_id, certificate_id) IN \
                 (SELECT account_id, certificate_id FROM provisioning_claims WHERE expires_at < $1 LIMIT $2)"
            }
        }
    }
}

impl Tx<'_> {
    /// Takes (or renews) `job` for `holder` until `lease_until`, if its lease expired before
    /// `now` or is already `holder`'s. Returns whether it did: of two nodes claiming at once,
    /// exactly one gets `true`.
    pub fn claim_maintenance(
        &mut self,
        job: MaintenanceJob,
        holder: &str,
        now: OffsetDateTime,
        lease_until: OffsetDateTime,
    ) -> Result<bool, Error> {
        Ok(self.conn.execute(
            "UPDATE maintenance_claims SET holder = $1, lease_until = $2 \
             WHERE job = $3 AND (lease_until < $4 OR (holder = $1 AND holder <> ''))",
            &[holder.into(), millis(lease_until).into(), job.as_str().into(), millis(now).into()],
        )? == 1)
    }

    /// Ends `holder`'s run of `job`: nobody (`holder` included) claims it again before
    /// `next_due`. Returns false when `holder` no longer held it (its lease was taken over).
    pub fn release_maintenance(
        &mut self,
        job: MaintenanceJob,
        holder: &str,
        next_due: OffsetDateTime,
    ) -> Result<bool, Error> {
        Ok(self.conn.execute(
            "UPDATE maintenance_claims SET holder = '', lease_until = $1 WHERE job = $2 AND holder = $3",
            &[millis(next_due).into(), job.as_str().into(), holder.into()],
        )? == 1)
    }

    /// Deletes at most `limit` rows of `target` older than `before`. Returns how many.
    pub fn prune_batch(&mut self, target: PruneTarget, before: OffsetDateTime, limit: u32) -> Result<u64, Error> {
        self.conn.execute(target.delete_statement(), &[millis(before).into(), i64::from(limit).into()])
    }
}
