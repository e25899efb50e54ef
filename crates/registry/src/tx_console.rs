//! The operator console's read models: bounded aggregate and keyset queries over one account's
//! certificates and rotations (migration 16), each served by an index so a page view costs an
//! index range scan, never a scan of other accounts' rows.
//!
//! - [`Tx::fleet_groups`]: one pass over the account's entries of `certificates_audit_scan`
//!   (a covering index: account, status, id, not_after, ..., ca), grouped by status, CA and
//!   week of expiry: the overview's counts and timeline in one statement.
//! - [`Tx::expiring_groups`]: a range scan of `certificates_by_expiry` (account, not_after,
//!   status, ca, id) over the certificates expiring soon only: the gauges.
//! - [`Tx::search_certificates`]: keyset pages in one of three orders, each an index's order
//!   (`id`: the primary key, or `certificates_audit_scan` with a status; `subject_cn`:
//!   `certificates_by_cn`; `not_after`: `certificates_by_expiry`).

use std::collections::BTreeMap;

use certfleet_pki::CertificateId;
use time::OffsetDateTime;

use crate::Error;
use crate::conn::Value;
use crate::model::{AccountId, CertificateStatus};
use crate::model_rotation::{Rotation, RotationCampaign, RotationState};
use crate::tx::{Tx, cert_id, from_millis, millis, parse_text};
use crate::tx_rotation::{CAMPAIGN_COLUMNS, ROTATION_COLUMNS, campaign_from_row, rotation_from_row};

/// Milliseconds in a week: the timeline's bucket.
const WEEK_MS: i64 = 7 * 24 * 3600 * 1000;
/// Weeks the timeline covers; later expiries fall in bucket `TIMELINE_WEEKS`.
pub const TIMELINE_WEEKS: i64 = 52;
/// The longest subject common name kept for searching (longer ones are cut, on a char boundary).
const MAX_CN_CHARS: usize = 256;

/// Certificates of one status and CA whose expiry falls in one week.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FleetGroup {
    pub status: CertificateStatus,
    pub ca: Option<CertificateId>,
    /// `-1`: already expired; `0..TIMELINE_WEEKS`: weeks from now; `TIMELINE_WEEKS`: later.
    pub week: i64,
    /// Of these, how many expire within each of the windows asked for (from now).
    pub expiring: [u64; 3],
    pub count: u64,
}

/// ACTIVE certificates of one account and CA expiring within each window.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ExpiryGroup {
    pub ca: Option<CertificateId>,
    pub within: [u64; 3],
}

/// Which CA a search keeps.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CaFilter {
    /// Certificates registered without a CA of the account (issued by certfleet, or MAR).
    None,
    /// Certificates signed by this registered CA.
    Ca(CertificateId),
}

/// A certificate search: every given filter must hold. The order follows from the filters:
/// by expiry when `expiring_before` is given, else by common name when `cn_prefix` is, else
/// by ID.
#[derive(Clone, Debug, Default)]
pub struct CertificateSearch {
    /// Lowercase hex, at most 64 characters.
    pub id_prefix: Option<String>,
    /// Compared byte for byte (case-sensitive).
    pub cn_prefix: Option<String>,
    /// Certificates attached to a thing whose name starts with this (case-sensitive).
    pub thing_prefix: Option<String>,
    pub status: Option<CertificateStatus>,
    pub ca: Option<CaFilter>,
    pub expiring_before: Option<OffsetDateTime>,
    pub after: Option<SearchAfter>,
    pub limit: u32,
}

/// The order of a search's pages.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CertificateOrder {
    Id,
    CommonName,
    Expiry,
}

impl CertificateSearch {
    /// The order this search's pages come in.
    pub fn order(&self) -> CertificateOrder {
        if self.expiring_before.is_some() {
            CertificateOrder::Expiry
        } else if self.cn_prefix.is_some() {
            CertificateOrder::CommonName
        } else {
            CertificateOrder::Id
        }
    }
}

/// Where the next page starts: the last row's sort key and ID.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SearchAfter {
    Id(String),
    CommonName(String, String),
    Expiry(i64, String),
}

/// One row of a certificate search.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CertificateRow {
    pub id: CertificateId,
    /// `None` until the backfill reaches a row written before migration 16; empty: no CN.
    pub subject_cn: Option<String>,
    pub status: CertificateStatus,
    pub ca: Option<CertificateId>,
    pub not_after: OffsetDateTime,
}

/// The `subject_cn` value stored for a certificate PEM: its subject CN (cut to 256 chars), or
/// empty when it has none or does not parse.
pub(crate) fn subject_cn_value(pem: &str) -> Value {
    Value::Text(subject_cn_of(pem))
}

/// A certificate PEM's subject CN as stored for searching.
pub fn subject_cn_of(pem: &str) -> String {
    certfleet_pki::Certificate::from_pem(pem)
        .ok()
        .and_then(|certificate| certificate.subject_common_name())
        .map(|cn| cn.chars().take(MAX_CN_CHARS).collect())
        .unwrap_or_default()
}

impl Tx<'_> {
    /// The account's certificates grouped by status, CA and week of expiry (from `now`), with
    /// how many of each group expire within each of `windows` from `now`.
    pub fn fleet_groups(
        &mut self,
        account: &AccountId,
        now: OffsetDateTime,
        windows: [time::Duration; 3],
    ) -> Result<Vec<FleetGroup>, Error> {
        let now_ms = millis(now);
        let horizon = now_ms + TIMELINE_WEEKS * WEEK_MS;
        let ends: Vec<i64> = windows.iter().map(|window| millis(now + *window)).collect();
        let rows = self.conn.query(
            &format!(
                "SELECT status, ca_certificate_id, \
                 CASE WHEN not_after < $1 THEN -1 WHEN not_after >= $2 THEN {TIMELINE_WEEKS} \
                 ELSE (not_after - $3) / {WEEK_MS} END AS week, \
                 SUM(CASE WHEN not_after >= $4 AND not_after < $5 THEN 1 ELSE 0 END), \
                 SUM(CASE WHEN not_after >= $6 AND not_after < $7 THEN 1 ELSE 0 END), \
                 SUM(CASE WHEN not_after >= $8 AND not_after < $9 THEN 1 ELSE 0 END), \
                 COUNT(*) FROM certificates WHERE account_id = $10 \
                 GROUP BY status, ca_certificate_id, week"
            ),
            &[
                now_ms.into(),
                horizon.into(),
                now_ms.into(),
                now_ms.into(),
                ends[0].into(),
                now_ms.into(),
                ends[1].into(),
                now_ms.into(),
                ends[2].into(),
                account.as_str().into(),
            ],
        )?;
        rows.iter()
            .map(|row| {
                let count = |index| row.int(index).map(|value| value.max(0) as u64);
                Ok(FleetGroup {
                    status: parse_text(&row.text(0)?, CertificateStatus::parse)?,
                    ca: row.opt_text(1)?.as_deref().map(cert_id).transpose()?,
                    week: row.int(2)?,
                    expiring: [count(3)?, count(4)?, count(5)?],
                    count: count(6)?,
                })
            })
            .collect()
    }

    /// The account's ACTIVE certificates expiring within each of `windows` from `now` (the
    /// longest last), by CA: a range scan over what expires within the longest window only.
    pub fn expiring_groups(
        &mut self,
        account: &AccountId,
        now: OffsetDateTime,
        windows: [time::Duration; 3],
    ) -> Result<Vec<ExpiryGroup>, Error> {
        let ends: Vec<i64> = windows.iter().map(|window| millis(now + *window)).collect();
        let rows = self.conn.query(
            "SELECT ca_certificate_id, SUM(CASE WHEN not_after < $1 THEN 1 ELSE 0 END), \
             SUM(CASE WHEN not_after < $2 THEN 1 ELSE 0 END), COUNT(*) FROM certificates \
             WHERE account_id = $3 AND not_after >= $4 AND not_after < $5 AND status = 'ACTIVE' \
             GROUP BY ca_certificate_id",
            &[ends[0].into(), ends[1].into(), account.as_str().into(), millis(now).into(), ends[2].into()],
        )?;
        rows.iter()
            .map(|row| {
                let count = |index| row.int(index).map(|value| value.max(0) as u64);
                Ok(ExpiryGroup {
                    ca: row.opt_text(0)?.as_deref().map(cert_id).transpose()?,
                    within: [count(1)?, count(2)?, count(3)?],
                })
            })
            .collect()
    }

    /// One page of the account's certificates matching `search` (at most `search.limit`, at
    /// least 1), and where the next page starts when there is one.
    pub fn search_certificates(
        &mut self,
        account: &AccountId,
        search: &CertificateSearch,
    ) -> Result<(Vec<CertificateRow>, Option<SearchAfter>), Error> {
        let mut sql = "SELECT id, subject_cn, status, ca_certificate_id, not_after FROM certificates \
                       WHERE account_id = $1"
            .to_owned();
        let mut params: Vec<Value> = vec![account.as_str().into()];
        let mut add = |sql: &mut String, clause: &str, values: Vec<Value>| {
            let mut clause = clause.to_owned();
            for value in values {
                params.push(value);
                clause = clause.replacen("$?", &format!("${}", params.len()), 1);
            }
            sql.push_str(&clause);
        };
        if let Some(prefix) = &search.id_prefix {
            // IDs are lowercase hex: every ID starting with the prefix sorts before prefix + "g".
            add(&mut sql, " AND id >= $? AND id < $?", vec![prefix.as_str().into(), format!("{prefix}g").into()]);
        }
        if let Some(prefix) = &search.cn_prefix {
            // The range serves the index; the substr check keeps the answer exact under any
            // collation the range might be compared with.
            let chars = prefix.chars().count();
            add(
                &mut sql,
                &format!(" AND subject_cn >= $? AND subject_cn < $? AND substr(subject_cn, 1, {chars}) = $?"),
                vec![prefix.as_str().into(), format!("{prefix}\u{10FFFF}").into(), prefix.as_str().into()],
            );
        }
        if let Some(prefix) = &search.thing_prefix {
            // The things' primary key (account, thing name, certificate) serves the range.
            let chars = prefix.chars().count();
            add(
                &mut sql,
                &format!(
                    " AND id IN (SELECT certificate_id FROM thing_principals WHERE account_id = $? \
                     AND thing_name >= $? AND thing_name < $? AND substr(thing_name, 1, {chars}) = $?)"
                ),
                vec![
                    account.as_str().into(),
                    prefix.as_str().into(),
                    format!("{prefix}\u{10FFFF}").into(),
                    prefix.as_str().into(),
                ],
            );
        }
        if let Some(status) = search.status {
            add(&mut sql, " AND status = $?", vec![status.as_str().into()]);
        }
        match &search.ca {
            None => {}
            Some(CaFilter::None) => sql.push_str(" AND ca_certificate_id IS NULL"),
            Some(CaFilter::Ca(ca)) => add(&mut sql, " AND ca_certificate_id = $?", vec![ca.as_str().into()]),
        }
        if let Some(before) = search.expiring_before {
            add(&mut sql, " AND not_after < $?", vec![millis(before).into()]);
        }
        let order = search.order();
        // Row values, not `a > x OR (a = x AND id > y)`: PostgreSQL turns a row comparison into
        // an index condition (the OR form filtered from the range's start: 0.3 s a page at a
        // million), and SQLite seeks on its first column.
        match (&search.after, order) {
            (None, _) => {}
            (Some(SearchAfter::Id(id)), CertificateOrder::Id) => {
                add(&mut sql, " AND id > $?", vec![id.as_str().into()])
            }
            (Some(SearchAfter::CommonName(cn, id)), CertificateOrder::CommonName) => {
                add(&mut sql, " AND (subject_cn, id) > ($?, $?)", vec![cn.as_str().into(), id.as_str().into()])
            }
            (Some(SearchAfter::Expiry(at, id)), CertificateOrder::Expiry) => {
                add(&mut sql, " AND (not_after, id) > ($?, $?)", vec![(*at).into(), id.as_str().into()])
            }
            (Some(_), _) => return Err(Error::InvalidValue("a page marker of another order".into())),
        }
        let limit = i64::from(search.limit.clamp(1, 1000));
        let order_by = match order {
            CertificateOrder::Id => " ORDER BY id",
            CertificateOrder::CommonName => " ORDER BY subject_cn, id",
            CertificateOrder::Expiry => " ORDER BY not_after, id",
        };
        add(&mut sql, &format!("{order_by} LIMIT $?"), vec![(limit + 1).into()]);
        let rows = self.conn.query(&sql, &params)?;
        let mut found = rows
            .iter()
            .map(|row| {
                Ok(CertificateRow {
                    id: cert_id(&row.text(0)?)?,
                    subject_cn: row.opt_text(1)?,
                    status: parse_text(&row.text(2)?, CertificateStatus::parse)?,
                    ca: row.opt_text(3)?.as_deref().map(cert_id).transpose()?,
                    not_after: from_millis(row.int(4)?)?,
                })
            })
            .collect::<Result<Vec<_>, Error>>()?;
        let next = if found.len() as i64 > limit {
            found.truncate(limit as usize);
            found.last().map(|last| match order {
                CertificateOrder::Id => SearchAfter::Id(last.id.as_str().to_owned()),
                CertificateOrder::CommonName => {
                    SearchAfter::CommonName(last.subject_cn.clone().unwrap_or_default(), last.id.as_str().to_owned())
                }
                CertificateOrder::Expiry => SearchAfter::Expiry(millis(last.not_after), last.id.as_str().to_owned()),
            })
        } else {
            None
        };
        Ok((found, next))
    }

    /// Up to `limit` certificates (of any account) whose `subject_cn` was never filled (written
    /// before migration 16): account, ID and PEM.
    pub fn certificates_without_subject_cn(
        &mut self,
        limit: u32,
    ) -> Result<Vec<(AccountId, CertificateId, String)>, Error> {
        let rows = self.conn.query(
            "SELECT account_id, id, pem FROM certificates WHERE subject_cn IS NULL LIMIT $1",
            &[i64::from(limit).into()],
        )?;
        rows.iter().map(|row| Ok((AccountId::parse(&row.text(0)?)?, cert_id(&row.text(1)?)?, row.text(2)?))).collect()
    }

    /// Fills a certificate's `subject_cn` from its PEM.
    pub fn fill_subject_cn(&mut self, account: &AccountId, id: &CertificateId, pem: &str) -> Result<(), Error> {
        self.conn.execute(
            "UPDATE certificates SET subject_cn = $1 WHERE account_id = $2 AND id = $3",
            &[subject_cn_value(pem), account.as_str().into(), id.as_str().into()],
        )?;
        Ok(())
    }

    /// The rotations from or to a certificate, newest first, at most `limit`.
    pub fn rotations_of_certificate(
        &mut self,
        account: &AccountId,
        certificate: &CertificateId,
        limit: u32,
    ) -> Result<Vec<Rotation>, Error> {
        let rows = self.conn.query(
            &format!(
                "SELECT {ROTATION_COLUMNS} FROM rotations WHERE account_id = $1 \
                 AND (old_certificate_id = $2 OR new_certificate_id = $3) ORDER BY created_at DESC, id LIMIT $4"
            ),
            &[
                account.as_str().into(),
                certificate.as_str().into(),
                certificate.as_str().into(),
                i64::from(limit).into(),
            ],
        )?;
        rows.iter().map(rotation_from_row).collect()
    }

    /// Up to `limit` campaigns of the account with a rotation still open, with their
    /// rotations' counts per state.
    pub fn open_campaign_counts(
        &mut self,
        account: &AccountId,
        limit: u32,
    ) -> Result<BTreeMap<String, BTreeMap<RotationState, i64>>, Error> {
        let rows = self.conn.query(
            "SELECT campaign_id, state, COUNT(*) FROM rotations WHERE account_id = $1 AND campaign_id IN \
             (SELECT DISTINCT campaign_id FROM rotations WHERE account_id = $2 AND open = 1 \
             ORDER BY campaign_id LIMIT $3) GROUP BY campaign_id, state",
            &[account.as_str().into(), account.as_str().into(), i64::from(limit).into()],
        )?;
        let mut campaigns: BTreeMap<String, BTreeMap<RotationState, i64>> = BTreeMap::new();
        for row in &rows {
            let state = parse_text(&row.text(1)?, RotationState::parse)?;
            campaigns.entry(row.text(0)?).or_default().insert(state, row.int(2)?);
        }
        Ok(campaigns)
    }

    /// The account's rotations per state (states without any are absent).
    pub fn rotation_state_counts(&mut self, account: &AccountId) -> Result<BTreeMap<RotationState, i64>, Error> {
        let rows = self.conn.query(
            "SELECT state, COUNT(*) FROM rotations WHERE account_id = $1 GROUP BY state",
            &[account.as_str().into()],
        )?;
        rows.iter().map(|row| Ok((parse_text(&row.text(0)?, RotationState::parse)?, row.int(1)?))).collect()
    }

    /// The account's newest `limit` rotation campaigns, newest first.
    pub fn newest_rotation_campaigns(
        &mut self,
        account: &AccountId,
        limit: u32,
    ) -> Result<Vec<RotationCampaign>, Error> {
        let rows = self.conn.query(
            &format!(
                "SELECT {CAMPAIGN_COLUMNS} FROM rotation_campaigns WHERE account_id = $1 \
                 ORDER BY created_at DESC, id DESC LIMIT $2"
            ),
            &[account.as_str().into(), i64::from(limit).into()],
        )?;
        rows.iter().map(campaign_from_row).collect()
    }
}
