//! The read models of the operator console (issue 16): the fleet overview, the certificate
//! search, a certificate's rotations, the open campaigns, and the expiring-certificate counts
//! behind the Prometheus gauges. Each is one bounded registry read served by an index
//! (`registry::tx_console`); a caller sees its own account only.

use std::collections::BTreeMap;

use certfleet_pki::CertificateId;
use certfleet_registry::{
    self as registry, AccountId, CertificateRow, CertificateSearch, CertificateStatus, Rotation, RotationState,
    SearchAfter, TIMELINE_WEEKS,
};
use time::OffsetDateTime;

use crate::{Caller, Error, Services};

/// Rotations per state (states without any are absent).
pub type RotationCounts = BTreeMap<RotationState, i64>;

/// The expiry windows the overview and the gauges count, in days.
pub const EXPIRY_WINDOWS_DAYS: [i64; 3] = [7, 30, 90];

/// Weeks on the overview's expiry timeline.
pub const TIMELINE_WEEK_COUNT: usize = TIMELINE_WEEKS as usize;

fn windows() -> [time::Duration; 3] {
    EXPIRY_WINDOWS_DAYS.map(time::Duration::days)
}

/// One account's fleet at a glance.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FleetOverview {
    /// Every certificate of the account.
    pub total: u64,
    /// Per status (statuses without certificates are absent).
    pub by_status: BTreeMap<&'static str, u64>,
    /// ACTIVE certificates expiring within each of [`EXPIRY_WINDOWS_DAYS`] from now.
    pub expiring: [u64; 3],
    /// ACTIVE certificates already expired.
    pub expired_active: u64,
    /// ACTIVE certificates by week of expiry, one series per issuing CA (`None`: no CA of the
    /// account, such as certfleet's own issuer), largest first.
    pub timeline: Vec<TimelineSeries>,
    /// Per issuing CA: its certificates by status, and its ACTIVE ones expiring within each
    /// of [`EXPIRY_WINDOWS_DAYS`].
    pub by_ca: BTreeMap<Option<CertificateId>, CaCounts>,
    pub computed_at: OffsetDateTime,
}

/// The certificates chaining to one CA.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CaCounts {
    pub by_status: BTreeMap<&'static str, u64>,
    pub expiring: [u64; 3],
}

impl CaCounts {
    /// Every certificate of the CA.
    pub fn total(&self) -> u64 {
        self.by_status.values().sum()
    }
}

/// One CA's ACTIVE certificates on the timeline.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TimelineSeries {
    pub ca: Option<CertificateId>,
    /// Already expired.
    pub expired: u64,
    /// Expiring in week `i` from now, for the next [`TIMELINE_WEEK_COUNT`] weeks.
    pub weeks: Vec<u64>,
    /// Expiring later.
    pub later: u64,
}

impl TimelineSeries {
    /// Every certificate of the series.
    pub fn total(&self) -> u64 {
        self.expired + self.later + self.weeks.iter().sum::<u64>()
    }
}

/// ACTIVE certificates of one account and CA expiring within each of [`EXPIRY_WINDOWS_DAYS`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ExpiringCount {
    pub account: AccountId,
    pub ca: Option<CertificateId>,
    pub within: [u64; 3],
}

/// A rotation campaign with a rotation still open, and its rotations per state.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OpenCampaign {
    pub id: String,
    pub counts: BTreeMap<RotationState, i64>,
}

impl OpenCampaign {
    /// Rotations of the campaign, and how many are closed (retired or failed).
    pub fn progress(&self) -> (i64, i64) {
        let total = self.counts.values().sum();
        let closed = self.counts.iter().filter(|(state, _)| !state.is_open()).map(|(_, count)| *count).sum::<i64>();
        (total, closed)
    }
}

impl Services {
    /// The caller's fleet: counts by status, ACTIVE certificates expiring soon and the expiry
    /// timeline, from one pass over the account's entries of a covering index.
    pub fn fleet_overview(&self, caller: &Caller) -> Result<FleetOverview, Error> {
        let now = self.now();
        let groups = registry::read(self.store(), |tx| tx.fleet_groups(&caller.account, now, windows()))?;
        let mut overview = FleetOverview {
            total: 0,
            by_status: BTreeMap::new(),
            expiring: [0; 3],
            expired_active: 0,
            timeline: Vec::new(),
            by_ca: BTreeMap::new(),
            computed_at: now,
        };
        let mut series: BTreeMap<Option<CertificateId>, TimelineSeries> = BTreeMap::new();
        for group in groups {
            overview.total += group.count;
            *overview.by_status.entry(group.status.as_str()).or_default() += group.count;
            let of_ca = overview.by_ca.entry(group.ca.clone()).or_default();
            *of_ca.by_status.entry(group.status.as_str()).or_default() += group.count;
            if group.status != CertificateStatus::Active {
                continue;
            }
            for (total, count) in overview.expiring.iter_mut().zip(group.expiring) {
                *total += count;
            }
            for (total, count) in of_ca.expiring.iter_mut().zip(group.expiring) {
                *total += count;
            }
            let line = series.entry(group.ca.clone()).or_insert_with(|| TimelineSeries {
                ca: group.ca.clone(),
                expired: 0,
                weeks: vec![0; TIMELINE_WEEK_COUNT],
                later: 0,
            });
            match usize::try_from(group.week) {
                Err(_) => {
                    line.expired += group.count;
                    overview.expired_active += group.count;
                }
                Ok(week) if week < TIMELINE_WEEK_COUNT => line.weeks[week] += group.count,
                Ok(_) => line.later += group.count,
            }
        }
        overview.timeline = series.into_values().collect();
        overview.timeline.sort_by(|a, b| b.total().cmp(&a.total()).then_with(|| a.ca.cmp(&b.ca)));
        Ok(overview)
    }

    /// One page of the caller's certificates matching `search`.
    pub fn search_certificates(
        &self,
        caller: &Caller,
        search: &CertificateSearch,
    ) -> Result<(Vec<CertificateRow>, Option<SearchAfter>), Error> {
        registry::read(self.store(), |tx| tx.search_certificates(&caller.account, search).map_err(Error::from))
    }

    /// ACTIVE certificates expiring soon, per account and CA, for every account: a range scan
    /// per account over what expires within the longest window.
    pub fn expiring_certificates(&self) -> Result<Vec<ExpiringCount>, Error> {
        let now = self.now();
        let accounts = self.list_accounts()?;
        let mut counts = Vec::new();
        for account in accounts {
            let groups = registry::read(self.store(), |tx| tx.expiring_groups(&account.id, now, windows()))?;
            counts.extend(groups.into_iter().map(|group| ExpiringCount {
                account: account.id.clone(),
                ca: group.ca,
                within: group.within,
            }));
        }
        Ok(counts)
    }

    /// Every account's rotations per state (accounts without rotations are absent): the
    /// rotation outcome gauges.
    pub fn rotation_counts(&self) -> Result<Vec<(AccountId, RotationCounts)>, Error> {
        let accounts = self.list_accounts()?;
        let mut counts = Vec::new();
        for account in accounts {
            let states = registry::read(self.store(), |tx| tx.rotation_state_counts(&account.id))?;
            if !states.is_empty() {
                counts.push((account.id, states));
            }
        }
        Ok(counts)
    }

    /// The rotations from or to one of the caller's certificates, newest first.
    pub fn certificate_rotations(
        &self,
        caller: &Caller,
        certificate: &CertificateId,
        limit: u32,
    ) -> Result<Vec<Rotation>, Error> {
        registry::read(self.store(), |tx| {
            tx.rotations_of_certificate(&caller.account, certificate, limit.clamp(1, 100)).map_err(Error::from)
        })
    }

    /// Up to `limit` of the caller's campaigns with a rotation still open.
    pub fn open_rotation_campaigns(&self, caller: &Caller, limit: u32) -> Result<Vec<OpenCampaign>, Error> {
        let campaigns =
            registry::read(self.store(), |tx| tx.open_campaign_counts(&caller.account, limit.clamp(1, 100)))?;
        Ok(campaigns.into_iter().map(|(id, counts)| OpenCampaign { id, counts }).collect())
    }

    /// The caller's newest `limit` rotation campaigns, with their rotations per state.
    pub fn rotation_campaigns(&self, caller: &Caller, limit: u32) -> Result<Vec<crate::CampaignSummary>, Error> {
        registry::read(self.store(), |tx| {
            let campaigns = tx.newest_rotation_campaigns(&caller.account, limit.clamp(1, 100))?;
            let mut summaries = Vec::with_capacity(campaigns.len());
            for campaign in campaigns {
                let counts = tx.rotation_campaign_counts(&caller.account, &campaign.id)?;
                summaries.push(crate::CampaignSummary { campaign, counts });
            }
            Ok::<_, Error>(summaries)
        })
    }

    /// Fills the subject CN of up to `batch` certificates written before the console's
    /// migration; answers how many it filled (0: none left).
    pub fn fill_subject_names(&self, batch: u32) -> Result<usize, Error> {
        registry::write(self.store(), |tx| {
            let missing = tx.certificates_without_subject_cn(batch)?;
            for (account, id, pem) in &missing {
                tx.fill_subject_cn(account, id, pem)?;
            }
            Ok::<_, Error>(missing.len())
        })
    }
}
