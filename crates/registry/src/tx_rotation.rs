//! The rotation statements: campaigns, rotations, the lookups a device message needs (the open
//! rotations of a client ID, the rotation of a new certificate) and the deadline scan of the
//! timeout sweep.
//!
//! "At most one open rotation per (account, old certificate, client ID)" is a partial unique
//! index on the `open` column; [`Tx::insert_rotation`] looks first, because a unique violation
//! would abort a PostgreSQL transaction.

use std::collections::BTreeMap;

use certfleet_pki::CertificateId;
use time::OffsetDateTime;

use crate::Error;
use crate::conn::{Row, Value};
use crate::model::AccountId;
use crate::model_rotation::*;
use crate::tx::{Tx, cert_id, from_millis, millis, parse_text};

pub(crate) const CAMPAIGN_COLUMNS: &str = "account_id, id, source, audit_task_id, created_at, subject_rule";
pub(crate) const ROTATION_COLUMNS: &str = "account_id, id, campaign_id, client_id, old_certificate_id, new_certificate_id, \
     csr_key_fingerprint, state, attempts, error, deadline, created_at, updated_at";

impl Tx<'_> {
    // ---- campaigns ------------------------------------------------------------------------

    /// Adds a campaign.
    pub fn insert_rotation_campaign(&mut self, campaign: &RotationCampaign) -> Result<(), Error> {
        self.conn.execute(
            &format!("INSERT INTO rotation_campaigns ({CAMPAIGN_COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6)"),
            &[
                campaign.account.as_str().into(),
                campaign.id.as_str().into(),
                campaign.source.as_str().into(),
                campaign.audit_task_id.as_deref().into(),
                millis(campaign.created_at).into(),
                campaign.subject_rule.as_str().into(),
            ],
        )?;
        Ok(())
    }

    /// A campaign by ID.
    pub fn get_rotation_campaign(&mut self, account: &AccountId, id: &str) -> Result<Option<RotationCampaign>, Error> {
        let rows = self.conn.query(
            &format!("SELECT {CAMPAIGN_COLUMNS} FROM rotation_campaigns WHERE account_id = $1 AND id = $2"),
            &[account.as_str().into(), id.into()],
        )?;
        rows.first().map(campaign_from_row).transpose()
    }

    /// The campaign an audit task started, if any.
    pub fn rotation_campaign_of_task(
        &mut self,
        account: &AccountId,
        task_id: &str,
    ) -> Result<Option<RotationCampaign>, Error> {
        let rows = self.conn.query(
            &format!(
                "SELECT {CAMPAIGN_COLUMNS} FROM rotation_campaigns WHERE account_id = $1 AND audit_task_id = $2 \
                 ORDER BY created_at, id"
            ),
            &[account.as_str().into(), task_id.into()],
        )?;
        rows.first().map(campaign_from_row).transpose()
    }

    /// How many rotations of a campaign are in each state (states without any are absent).
    pub fn rotation_campaign_counts(
        &mut self,
        account: &AccountId,
        campaign_id: &str,
    ) -> Result<BTreeMap<RotationState, i64>, Error> {
        let rows = self.conn.query(
            "SELECT state, COUNT(*) FROM rotations WHERE account_id = $1 AND campaign_id = $2 GROUP BY state",
            &[account.as_str().into(), campaign_id.into()],
        )?;
        rows.iter().map(|row| Ok((parse_text(&row.text(0)?, RotationState::parse)?, row.int(1)?))).collect()
    }

    // ---- rotations ------------------------------------------------------------------------

    /// Adds a rotation. Returns false (and adds nothing) when it is open and another open
    /// rotation of the same account, old certificate and client ID exists.
    pub fn insert_rotation(&mut self, rotation: &Rotation) -> Result<bool, Error> {
        if rotation.state.is_open() {
            let existing = self.conn.query(
                "SELECT 1 FROM rotations WHERE account_id = $1 AND old_certificate_id = $2 AND client_id = $3 \
                 AND open = 1",
                &[
                    rotation.account.as_str().into(),
                    rotation.old_certificate_id.as_str().into(),
                    rotation.client_id.as_str().into(),
                ],
            )?;
            if !existing.is_empty() {
                return Ok(false);
            }
        }
        self.conn.execute(
            &format!(
                "INSERT INTO rotations ({ROTATION_COLUMNS}, open) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14)"
            ),
            &rotation_values(rotation),
        )?;
        Ok(true)
    }

    /// Stores a rotation's new state, attempts, error, deadline and certificate/key.
    pub fn update_rotation(&mut self, rotation: &Rotation) -> Result<(), Error> {
        self.conn.execute(
            "UPDATE rotations SET new_certificate_id = $1, csr_key_fingerprint = $2, state = $3, attempts = $4, \
             error = $5, deadline = $6, updated_at = $7, open = $8 WHERE account_id = $9 AND id = $10",
            &[
                rotation.new_certificate_id.as_ref().map(CertificateId::as_str).into(),
                rotation.csr_key_fingerprint.as_deref().into(),
                rotation.state.as_str().into(),
                rotation.attempts.into(),
                rotation.error.as_deref().into(),
                rotation.deadline.map(millis).into(),
                millis(rotation.updated_at).into(),
                i64::from(rotation.state.is_open()).into(),
                rotation.account.as_str().into(),
                rotation.id.as_str().into(),
            ],
        )?;
        Ok(())
    }

    /// A rotation by ID.
    pub fn get_rotation(&mut self, account: &AccountId, id: &str) -> Result<Option<Rotation>, Error> {
        let sql = format!("SELECT {ROTATION_COLUMNS} FROM rotations WHERE account_id = $1 AND id = $2");
        let rows = self.conn.query(&sql, &[account.as_str().into(), id.into()])?;
        rows.first().map(rotation_from_row).transpose()
    }

    /// A rotation by ID, locked against concurrent writers until the transaction ends (write
    /// transactions only).
    pub fn lock_rotation(&mut self, account: &AccountId, id: &str) -> Result<Option<Rotation>, Error> {
        let sql = format!(
            "SELECT {ROTATION_COLUMNS} FROM rotations WHERE account_id = $1 AND id = $2{}",
            self.conn.for_update()
        );
        let rows = self.conn.query(&sql, &[account.as_str().into(), id.into()])?;
        rows.first().map(rotation_from_row).transpose()
    }

    /// The open rotations of a client ID, oldest first, locked until the transaction ends (write
    /// transactions only).
    pub fn open_rotations_of_client(&mut self, account: &AccountId, client_id: &str) -> Result<Vec<Rotation>, Error> {
        let sql = format!(
            "SELECT {ROTATION_COLUMNS} FROM rotations WHERE account_id = $1 AND client_id = $2 AND open = 1 \
             ORDER BY created_at, id{}",
            self.conn.for_update()
        );
        let rows = self.conn.query(&sql, &[account.as_str().into(), client_id.into()])?;
        rows.iter().map(rotation_from_row).collect()
    }

    /// The latest rotation of a client ID that issued `new_certificate`, in any state, locked
    /// (write transactions only).
    pub fn rotation_of_new_certificate(
        &mut self,
        account: &AccountId,
        client_id: &str,
        new_certificate: &CertificateId,
    ) -> Result<Option<Rotation>, Error> {
        let sql = format!(
            "SELECT {ROTATION_COLUMNS} FROM rotations WHERE account_id = $1 AND client_id = $2 \
             AND new_certificate_id = $3 ORDER BY created_at DESC, id DESC{}",
            self.conn.for_update()
        );
        let rows =
            self.conn.query(&sql, &[account.as_str().into(), client_id.into(), new_certificate.as_str().into()])?;
        rows.first().map(rotation_from_row).transpose()
    }

    /// The account's rotations matching `filter`, by ID, `limit` at most after `after`.
    pub fn list_rotations(
        &mut self,
        account: &AccountId,
        filter: &RotationFilter,
        after: Option<&str>,
        limit: u32,
    ) -> Result<Vec<Rotation>, Error> {
        let mut sql = format!("SELECT {ROTATION_COLUMNS} FROM rotations WHERE account_id = $1");
        let mut params: Vec<Value> = vec![account.as_str().into()];
        let mut add = |sql: &mut String, clause: &str, value: Value| {
            params.push(value);
            sql.push_str(&clause.replace("$?", &format!("${}", params.len())));
        };
        if let Some(campaign) = &filter.campaign_id {
            add(&mut sql, " AND campaign_id = $?", campaign.as_str().into());
        }
        if let Some(state) = filter.state {
            add(&mut sql, " AND state = $?", state.as_str().into());
        }
        if let Some(client) = &filter.client_id {
            add(&mut sql, " AND client_id = $?", client.as_str().into());
        }
        if let Some(after) = after {
            add(&mut sql, " AND id > $?", after.into());
        }
        add(&mut sql, " ORDER BY id LIMIT $?", i64::from(limit).into());
        let rows = self.conn.query(&sql, &params)?;
        rows.iter().map(rotation_from_row).collect()
    }

    /// Open rotations of every account whose deadline is at or before `now`, earliest first,
    /// locked until the transaction ends.
    pub fn due_rotations(&mut self, now: OffsetDateTime, limit: u32) -> Result<Vec<Rotation>, Error> {
        let sql = format!(
            "SELECT {ROTATION_COLUMNS} FROM rotations WHERE open = 1 AND deadline <= $1 ORDER BY deadline, id \
             LIMIT $2{}",
            self.conn.for_update()
        );
        let rows = self.conn.query(&sql, &[millis(now).into(), i64::from(limit).into()])?;
        rows.iter().map(rotation_from_row).collect()
    }
}

fn rotation_values(rotation: &Rotation) -> [Value; 14] {
    [
        rotation.account.as_str().into(),
        rotation.id.as_str().into(),
        rotation.campaign_id.as_str().into(),
        rotation.client_id.as_str().into(),
        rotation.old_certificate_id.as_str().into(),
        rotation.new_certificate_id.as_ref().map(CertificateId::as_str).into(),
        rotation.csr_key_fingerprint.as_deref().into(),
        rotation.state.as_str().into(),
        rotation.attempts.into(),
        rotation.error.as_deref().into(),
        rotation.deadline.map(millis).into(),
        millis(rotation.created_at).into(),
        millis(rotation.updated_at).into(),
        i64::from(rotation.state.is_open()).into(),
    ]
}

pub(crate) fn campaign_from_row(row: &Row) -> Result<RotationCampaign, Error> {
    Ok(RotationCampaign {
        account: AccountId::parse(&row.text(0)?)?,
        id: row.text(1)?,
        source: parse_text(&row.text(2)?, RotationSource::parse)?,
        audit_task_id: row.opt_text(3)?,
        created_at: from_millis(row.int(4)?)?,
        subject_rule: parse_text(&row.text(5)?, SubjectRule::parse)?,
    })
}

pub(crate) fn rotation_from_row(row: &Row) -> Result<Rotation, Error> {
    Ok(Rotation {
        account: AccountId::parse(&row.text(0)?)?,
        id: row.text(1)?,
        campaign_id: row.text(2)?,
        client_id: row.text(3)?,
        old_certificate_id: cert_id(&row.text(4)?)?,
        new_certificate_id: row.opt_text(5)?.as_deref().map(cert_id).transpose()?,
        csr_key_fingerprint: row.opt_text(6)?,
        state: parse_text(&row.text(7)?, RotationState::parse)?,
        attempts: row.int(8)?,
        error: row.opt_text(9)?,
        deadline: row.opt_int(10)?.map(from_millis).transpose()?,
        created_at: from_millis(row.int(11)?)?,
        updated_at: from_millis(row.int(12)?)?,
    })
}
