//! The audit statements: configuration, tasks and their check runs, findings, scheduled audits,
//! uploaded CRLs, and the keyset scans the checks read certificates and policies with (only the
//! columns a check needs, a bounded page at a time, so an audit over a million certificates is a
//! thousand queries, not a million).
//!
//! Claims (a worker taking a task, a scheduler taking a due schedule) are single conditional
//! UPDATEs: the row changes only if it is still in the state the claimer saw, and the number of
//! rows changed says who won. That holds on SQLite and PostgreSQL alike, across nodes.

use std::collections::BTreeMap;

use certfleet_pki::CertificateId;
use time::OffsetDateTime;

use crate::Error;
use crate::conn::{Row, Value};
use crate::model::{AccountId, Cursor, Page};
use crate::model_audit::*;
use crate::tx::{Tx, cert_id, from_millis, millis, parse_text};

const TASK_COLUMNS: &str =
    "account_id, id, task_type, status, scheduled_audit_name, started_at, finished_at, lease_until";
const RUN_COLUMNS: &str = "account_id, task_id, check_name, status, total_resources, non_compliant_resources, \
     suppressed_resources, error_code, message";
const FINDING_COLUMNS: &str = "account_id, id, task_id, check_name, task_started_at, found_at, severity, \
     resource_type, resource_key, resource_info, related, reason, reason_code, suppressed";
const SCHEDULE_COLUMNS: &str =
    "account_id, name, frequency, day_of_month, day_of_week, check_names, next_run_at, created_at";

impl Tx<'_> {
    // ---- configuration --------------------------------------------------------------------

    /// An account's audit configuration, if it has one.
    pub fn get_audit_configuration(&mut self, account: &AccountId) -> Result<Option<AuditConfiguration>, Error> {
        let key = [Value::from(account.as_str())];
        let rows = self.conn.query("SELECT role_arn FROM audit_configurations WHERE account_id = $1", &key)?;
        let Some(row) = rows.first() else { return Ok(None) };
        let role_arn = row.opt_text(0)?;
        let mut targets = BTreeMap::new();
        for row in self.conn.query(
            "SELECT target_type, target_arn, role_arn, enabled FROM audit_notification_targets \
             WHERE account_id = $1 ORDER BY target_type",
            &key,
        )? {
            targets.insert(
                row.text(0)?,
                AuditNotificationTarget {
                    target_arn: row.opt_text(1)?,
                    role_arn: row.opt_text(2)?,
                    enabled: row.int(3)? != 0,
                },
            );
        }
        let mut checks = BTreeMap::new();
        for row in self.conn.query(
            "SELECT check_name, enabled, configuration FROM audit_check_configurations \
             WHERE account_id = $1 ORDER BY check_name",
            &key,
        )? {
            checks.insert(
                row.text(0)?,
                AuditCheckConfiguration { enabled: row.int(1)? != 0, configuration: decode_map(&row.text(2)?)? },
            );
        }
        Ok(Some(AuditConfiguration { account: account.clone(), role_arn, targets, checks }))
    }

    /// Replaces an account's audit configuration.
    pub fn put_audit_configuration(&mut self, config: &AuditConfiguration, now: OffsetDateTime) -> Result<(), Error> {
        self.delete_audit_configuration(&config.account)?;
        let account = config.account.as_str();
        self.conn.execute(
            "INSERT INTO audit_configurations (account_id, role_arn, updated_at) VALUES ($1, $2, $3)",
            &[account.into(), config.role_arn.as_deref().into(), millis(now).into()],
        )?;
        for (kind, target) in &config.targets {
            self.conn.execute(
                "INSERT INTO audit_notification_targets (account_id, target_type, target_arn, role_arn, enabled) \
                 VALUES ($1, $2, $3, $4, $5)",
                &[
                    account.into(),
                    kind.as_str().into(),
                    target.target_arn.as_deref().into(),
                    target.role_arn.as_deref().into(),
                    i64::from(target.enabled).into(),
                ],
            )?;
        }
        for (name, check) in &config.checks {
            self.conn.execute(
                "INSERT INTO audit_check_configurations (account_id, check_name, enabled, configuration) \
                 VALUES ($1, $2, $3, $4)",
                &[
                    account.into(),
                    name.as_str().into(),
                    i64::from(check.enabled).into(),
                    encode_map(&check.configuration).into(),
                ],
            )?;
        }
        Ok(())
    }

    /// Deletes an account's audit configuration. Returns whether it had one.
    pub fn delete_audit_configuration(&mut self, account: &AccountId) -> Result<bool, Error> {
        let key = [Value::from(account.as_str())];
        self.conn.execute("DELETE FROM audit_notification_targets WHERE account_id = $1", &key)?;
        self.conn.execute("DELETE FROM audit_check_configurations WHERE account_id = $1", &key)?;
        Ok(self.conn.execute("DELETE FROM audit_configurations WHERE account_id = $1", &key)? == 1)
    }

    // ---- tasks ----------------------------------------------------------------------------

    /// Adds a task.
    pub fn insert_audit_task(&mut self, task: &AuditTask) -> Result<(), Error> {
        self.conn.execute(
            &format!("INSERT INTO audit_tasks ({TASK_COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8)"),
            &[
                task.account.as_str().into(),
                task.id.as_str().into(),
                task.task_type.as_str().into(),
                task.status.as_str().into(),
                task.scheduled_audit_name.as_deref().into(),
                millis(task.started_at).into(),
                task.finished_at.map(millis).into(),
                task.lease_until.map(millis).into(),
            ],
        )?;
        Ok(())
    }

    /// A task of an account.
    pub fn get_audit_task(&mut self, account: &AccountId, id: &str) -> Result<Option<AuditTask>, Error> {
        let rows = self.conn.query(
            &format!("SELECT {TASK_COLUMNS} FROM audit_tasks WHERE account_id = $1 AND id = $2"),
            &[account.as_str().into(), id.into()],
        )?;
        rows.first().map(task_from_row).transpose()
    }

    /// The account's tasks started in `[start, end]`, oldest first, a page at a time.
    pub fn list_audit_tasks(
        &mut self,
        account: &AccountId,
        filter: &AuditTaskFilter,
        after: Option<&Cursor>,
        limit: u32,
    ) -> Result<Page<AuditTask>, Error> {
        let mut sql = format!(
            "SELECT {TASK_COLUMNS} FROM audit_tasks WHERE account_id = $1 AND started_at >= $2 AND started_at <= $3"
        );
        let mut params: Vec<Value> =
            vec![account.as_str().into(), millis(filter.start).into(), millis(filter.end).into()];
        if let Some(task_type) = filter.task_type {
            params.push(task_type.as_str().into());
            sql.push_str(&format!(" AND task_type = ${}", params.len()));
        }
        if let Some(status) = filter.status {
            params.push(status.as_str().into());
            sql.push_str(&format!(" AND status = ${}", params.len()));
        }
        let rows = self.keyset_page(sql, params, "started_at", after, limit)?;
        let next = next_cursor(&rows, limit, 5, 1)?;
        let items = rows.iter().take(limit as usize).map(task_from_row).collect::<Result<_, _>>()?;
        Ok(Page { items, next })
    }

    /// Tasks still IN_PROGRESS whose lease is free or has expired at `now` (any account).
    pub fn runnable_audit_tasks(&mut self, now: OffsetDateTime, limit: u32) -> Result<Vec<AuditTask>, Error> {
        let rows = self.conn.query(
            &format!(
                "SELECT {TASK_COLUMNS} FROM audit_tasks WHERE status = 'IN_PROGRESS' \
                 AND (lease_until IS NULL OR lease_until < $1) ORDER BY started_at, id LIMIT $2"
            ),
            &[millis(now).into(), i64::from(limit).into()],
        )?;
        rows.iter().map(task_from_row).collect()
    }

    /// Takes (or extends) the lease of an IN_PROGRESS task until `lease_until`, if its lease is
    /// free, expired at `now`, or equal to `held` (the caller's own). Returns whether it did.
    pub fn claim_audit_task(
        &mut self,
        account: &AccountId,
        id: &str,
        now: OffsetDateTime,
        held: Option<OffsetDateTime>,
        lease_until: OffsetDateTime,
    ) -> Result<bool, Error> {
        Ok(self.conn.execute(
            "UPDATE audit_tasks SET lease_until = $1 WHERE account_id = $2 AND id = $3 AND status = 'IN_PROGRESS' \
             AND (lease_until IS NULL OR lease_until < $4 OR lease_until = $5)",
            &[
                millis(lease_until).into(),
                account.as_str().into(),
                id.into(),
                millis(now).into(),
                held.map(millis).unwrap_or(-1).into(),
            ],
        )? == 1)
    }

    /// Moves an IN_PROGRESS task to `status` (finished at `at`). Returns false when it was no
    /// longer in progress (cancelled meanwhile), in which case nothing changed.
    pub fn finish_audit_task(
        &mut self,
        account: &AccountId,
        id: &str,
        status: AuditTaskStatus,
        at: OffsetDateTime,
    ) -> Result<bool, Error> {
        Ok(self.conn.execute(
            "UPDATE audit_tasks SET status = $1, finished_at = $2, lease_until = NULL \
             WHERE account_id = $3 AND id = $4 AND status = 'IN_PROGRESS'",
            &[status.as_str().into(), millis(at).into(), account.as_str().into(), id.into()],
        )? == 1)
    }

    /// Deletes the account's tasks (with their check runs and findings) started before `before`.
    pub fn prune_audit_tasks(&mut self, account: &AccountId, before: OffsetDateTime) -> Result<u64, Error> {
        let params = [Value::from(account.as_str()), millis(before).into()];
        self.conn.execute(
            "DELETE FROM audit_findings WHERE account_id = $1 AND task_id IN \
             (SELECT id FROM audit_tasks WHERE account_id = $1 AND started_at < $2)",
            &params,
        )?;
        self.conn.execute(
            "DELETE FROM audit_check_runs WHERE account_id = $1 AND task_id IN \
             (SELECT id FROM audit_tasks WHERE account_id = $1 AND started_at < $2)",
            &params,
        )?;
        self.conn.execute("DELETE FROM audit_tasks WHERE account_id = $1 AND started_at < $2", &params)
    }

    // ---- check runs -----------------------------------------------------------------------

    /// Adds or replaces the run of one check of a task.
    pub fn put_audit_check_run(&mut self, run: &AuditCheckRun) -> Result<(), Error> {
        self.conn.execute(
            "DELETE FROM audit_check_runs WHERE account_id = $1 AND task_id = $2 AND check_name = $3",
            &[run.account.as_str().into(), run.task_id.as_str().into(), run.check_name.as_str().into()],
        )?;
        self.conn.execute(
            &format!("INSERT INTO audit_check_runs ({RUN_COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)"),
            &[
                run.account.as_str().into(),
                run.task_id.as_str().into(),
                run.check_name.as_str().into(),
                run.status.as_str().into(),
                run.total_resources.into(),
                run.non_compliant_resources.into(),
                run.suppressed_non_compliant_resources.into(),
                run.error_code.as_deref().into(),
                run.message.as_deref().into(),
            ],
        )?;
        Ok(())
    }

    /// The check runs of a task, by check name.
    pub fn audit_check_runs(&mut self, account: &AccountId, task_id: &str) -> Result<Vec<AuditCheckRun>, Error> {
        let rows = self.conn.query(
            &format!(
                "SELECT {RUN_COLUMNS} FROM audit_check_runs WHERE account_id = $1 AND task_id = $2 ORDER BY check_name"
            ),
            &[account.as_str().into(), task_id.into()],
        )?;
        rows.iter()
            .map(|row| {
                Ok(AuditCheckRun {
                    account: AccountId::parse(&row.text(0)?)?,
                    task_id: row.text(1)?,
                    check_name: row.text(2)?,
                    status: parse_text(&row.text(3)?, AuditCheckRunStatus::parse)?,
                    total_resources: row.int(4)?,
                    non_compliant_resources: row.int(5)?,
                    suppressed_non_compliant_resources: row.int(6)?,
                    error_code: row.opt_text(7)?,
                    message: row.opt_text(8)?,
                })
            })
            .collect()
    }

    // ---- findings -------------------------------------------------------------------------

    /// Adds a finding.
    pub fn insert_audit_finding(&mut self, finding: &AuditFinding) -> Result<(), Error> {
        self.insert_audit_findings(std::slice::from_ref(finding))
    }

    /// Adds findings, up to 500 per multi-row INSERT: a check over a million certificates may
    /// find tens of thousands, and one statement (one round trip to PostgreSQL) each would
    /// cost more than finding them.
    pub fn insert_audit_findings(&mut self, findings: &[AuditFinding]) -> Result<(), Error> {
        const ROWS: usize = 500;
        const WIDTH: usize = 14;
        for chunk in findings.chunks(ROWS) {
            let mut values: Vec<Value> = Vec::with_capacity(chunk.len() * WIDTH);
            let mut rows = Vec::with_capacity(chunk.len());
            for finding in chunk {
                let first = values.len() + 1;
                let placeholders: Vec<String> = (first..first + WIDTH).map(|index| format!("${index}")).collect();
                rows.push(format!("({})", placeholders.join(", ")));
                let related: Vec<String> = finding.related.iter().map(encode_resource).collect();
                values.extend([
                    finding.account.as_str().into(),
                    finding.id.as_str().into(),
                    finding.task_id.as_str().into(),
                    finding.check_name.as_str().into(),
                    millis(finding.task_started_at).into(),
                    millis(finding.found_at).into(),
                    finding.severity.as_str().into(),
                    finding.resource.id.resource_type().into(),
                    finding.resource.id.key().into(),
                    encode_map(&finding.resource.additional_info).into(),
                    related.join("\n").into(),
                    finding.reason.as_str().into(),
                    finding.reason_code.as_str().into(),
                    i64::from(finding.suppressed).into(),
                ]);
            }
            self.conn.execute(
                &format!("INSERT INTO audit_findings ({FINDING_COLUMNS}) VALUES {}", rows.join(", ")),
                &values,
            )?;
        }
        Ok(())
    }

    /// A finding of an account.
    pub fn get_audit_finding(&mut self, account: &AccountId, id: &str) -> Result<Option<AuditFinding>, Error> {
        let rows = self.conn.query(
            &format!("SELECT {FINDING_COLUMNS} FROM audit_findings WHERE account_id = $1 AND id = $2"),
            &[account.as_str().into(), id.into()],
        )?;
        rows.first().map(finding_from_row).transpose()
    }

    /// The account's findings matching `filter`, by time found, a page at a time.
    pub fn list_audit_findings(
        &mut self,
        account: &AccountId,
        filter: &AuditFindingFilter,
        after: Option<&Cursor>,
        limit: u32,
    ) -> Result<Page<AuditFinding>, Error> {
        let mut sql = format!("SELECT {FINDING_COLUMNS} FROM audit_findings WHERE account_id = $1");
        let mut params: Vec<Value> = vec![account.as_str().into()];
        let mut add = |sql: &mut String, clause: &str, value: Value| {
            params.push(value);
            sql.push_str(&clause.replace("$?", &format!("${}", params.len())));
        };
        if let Some(task) = &filter.task_id {
            add(&mut sql, " AND task_id = $?", task.as_str().into());
        }
        if let Some(check) = &filter.check_name {
            add(&mut sql, " AND check_name = $?", check.as_str().into());
        }
        if let Some(resource) = &filter.resource {
            add(&mut sql, " AND resource_type = $?", resource.resource_type().into());
            add(&mut sql, " AND resource_key = $?", resource.key().into());
        }
        if let Some(start) = filter.start {
            add(&mut sql, " AND found_at >= $?", millis(start).into());
        }
        if let Some(end) = filter.end {
            add(&mut sql, " AND found_at <= $?", millis(end).into());
        }
        if !filter.include_suppressed {
            sql.push_str(" AND suppressed = 0");
        }
        let rows = self.keyset_page(sql, params, "found_at", after, limit)?;
        let next = next_cursor(&rows, limit, 5, 1)?;
        let items = rows.iter().take(limit as usize).map(finding_from_row).collect::<Result<_, _>>()?;
        Ok(Page { items, next })
    }

    // ---- scheduled audits -----------------------------------------------------------------

    /// Adds a scheduled audit.
    pub fn insert_scheduled_audit(&mut self, audit: &ScheduledAudit) -> Result<(), Error> {
        self.conn.execute(
            &format!("INSERT INTO scheduled_audits ({SCHEDULE_COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8)"),
            &schedule_values(audit),
        )?;
        Ok(())
    }

    /// Rewrites a scheduled audit.
    pub fn update_scheduled_audit(&mut self, audit: &ScheduledAudit) -> Result<(), Error> {
        let mut values = schedule_values(audit);
        let key = values.drain(..2).collect::<Vec<_>>();
        values.truncate(5);
        values.extend(key);
        self.conn.execute(
            "UPDATE scheduled_audits SET frequency = $1, day_of_month = $2, day_of_week = $3, check_names = $4, \
             next_run_at = $5 WHERE account_id = $6 AND name = $7",
            &values,
        )?;
        Ok(())
    }

    /// A scheduled audit of an account.
    pub fn get_scheduled_audit(&mut self, account: &AccountId, name: &str) -> Result<Option<ScheduledAudit>, Error> {
        let rows = self.conn.query(
            &format!("SELECT {SCHEDULE_COLUMNS} FROM scheduled_audits WHERE account_id = $1 AND name = $2"),
            &[account.as_str().into(), name.into()],
        )?;
        rows.first().map(schedule_from_row).transpose()
    }

    /// Deletes a scheduled audit. Returns whether it existed.
    pub fn delete_scheduled_audit(&mut self, account: &AccountId, name: &str) -> Result<bool, Error> {
        Ok(self.conn.execute(
            "DELETE FROM scheduled_audits WHERE account_id = $1 AND name = $2",
            &[account.as_str().into(), name.into()],
        )? == 1)
    }

    /// The account's scheduled audits after `after` (by name), at most `limit`.
    pub fn list_scheduled_audits(
        &mut self,
        account: &AccountId,
        after: Option<&str>,
        limit: u32,
    ) -> Result<Vec<ScheduledAudit>, Error> {
        let rows = self.conn.query(
            &format!(
                "SELECT {SCHEDULE_COLUMNS} FROM scheduled_audits WHERE account_id = $1 AND name > $2 \
                 ORDER BY name LIMIT $3"
            ),
            &[account.as_str().into(), after.unwrap_or("").into(), i64::from(limit).into()],
        )?;
        rows.iter().map(schedule_from_row).collect()
    }

    /// Scheduled audits of every account due at `now`, most overdue first.
    pub fn due_scheduled_audits(&mut self, now: OffsetDateTime, limit: u32) -> Result<Vec<ScheduledAudit>, Error> {
        let rows = self.conn.query(
            &format!(
                "SELECT {SCHEDULE_COLUMNS} FROM scheduled_audits WHERE next_run_at <= $1 \
                 ORDER BY next_run_at, account_id, name LIMIT $2"
            ),
            &[millis(now).into(), i64::from(limit).into()],
        )?;
        rows.iter().map(schedule_from_row).collect()
    }

    /// Moves a schedule's next run from `expected` to `next`; false when another node already
    /// moved it (it claimed this run).
    pub fn advance_scheduled_audit(
        &mut self,
        account: &AccountId,
        name: &str,
        expected: OffsetDateTime,
        next: OffsetDateTime,
    ) -> Result<bool, Error> {
        Ok(self.conn.execute(
            "UPDATE scheduled_audits SET next_run_at = $1 WHERE account_id = $2 AND name = $3 AND next_run_at = $4",
            &[millis(next).into(), account.as_str().into(), name.into(), millis(expected).into()],
        )? == 1)
    }

    /// The account's scheduled audits that include `check_name`.
    pub fn scheduled_audits_with_check(&mut self, account: &AccountId, check_name: &str) -> Result<Vec<String>, Error> {
        let rows = self.conn.query(
            "SELECT name, check_names FROM scheduled_audits WHERE account_id = $1 ORDER BY name",
            &[account.as_str().into()],
        )?;
        let mut names = Vec::new();
        for row in rows {
            if row.text(1)?.split(',').any(|name| name == check_name) {
                names.push(row.text(0)?);
            }
        }
        Ok(names)
    }

    /// Deletes every scheduled audit of an account; returns how many there were.
    pub fn delete_scheduled_audits(&mut self, account: &AccountId) -> Result<u64, Error> {
        self.conn.execute("DELETE FROM scheduled_audits WHERE account_id = $1", &[account.as_str().into()])
    }

    // ---- CRLs -----------------------------------------------------------------------------

    /// Adds or replaces a CRL.
    pub fn put_crl(&mut self, crl: &StoredCrl) -> Result<(), Error> {
        self.delete_crl(&crl.account, &crl.name)?;
        self.conn.execute(
            "INSERT INTO audit_crls (account_id, name, der, issuer_ca_id, uploaded_at) VALUES ($1, $2, $3, $4, $5)",
            &[
                crl.account.as_str().into(),
                crl.name.as_str().into(),
                hex::encode(&crl.der).into(),
                crl.issuer_ca.as_ref().map(CertificateId::as_str).into(),
                millis(crl.uploaded_at).into(),
            ],
        )?;
        Ok(())
    }

    /// Deletes a CRL. Returns whether it existed.
    pub fn delete_crl(&mut self, account: &AccountId, name: &str) -> Result<bool, Error> {
        Ok(self.conn.execute(
            "DELETE FROM audit_crls WHERE account_id = $1 AND name = $2",
            &[account.as_str().into(), name.into()],
        )? == 1)
    }

    /// The account's CRLs, by name.
    pub fn list_crls(&mut self, account: &AccountId) -> Result<Vec<StoredCrl>, Error> {
        let rows = self.conn.query(
            "SELECT account_id, name, der, issuer_ca_id, uploaded_at FROM audit_crls WHERE account_id = $1 ORDER BY name",
            &[account.as_str().into()],
        )?;
        rows.iter()
            .map(|row| {
                Ok(StoredCrl {
                    account: AccountId::parse(&row.text(0)?)?,
                    name: row.text(1)?,
                    der: hex::decode(row.text(2)?).map_err(|error| Error::InvalidValue(format!("crl: {error}")))?,
                    issuer_ca: row.opt_text(3)?.map(|text| cert_id(&text)).transpose()?,
                    uploaded_at: from_millis(row.int(4)?)?,
                })
            })
            .collect()
    }

    // ---- scans for the checks ---------------------------------------------------------------

    /// Up to `limit` of the account's ACTIVE or PENDING_TRANSFER device certificates after
    /// `after` (by ID), without their PEM.
    pub fn scan_active_certificates(
        &mut self,
        account: &AccountId,
        after: Option<&CertificateId>,
        limit: u32,
    ) -> Result<Vec<CertificateValidityRow>, Error> {
        let rows = self.conn.query(
            &active_scan("id, ca_certificate_id, not_before, not_after, created_at"),
            &[account.as_str().into(), after.map_or("", CertificateId::as_str).into(), i64::from(limit).into()],
        )?;
        rows.iter()
            .map(|row| {
                Ok(CertificateValidityRow {
                    id: cert_id(&row.text(0)?)?,
                    ca_certificate_id: row.opt_text(1)?.map(|text| cert_id(&text)).transpose()?,
                    not_before: from_millis(row.int(2)?)?,
                    not_after: from_millis(row.int(3)?)?,
                    created_at: from_millis(row.int(4)?)?,
                })
            })
            .collect()
    }

    /// Up to `limit` of the account's ACTIVE or PENDING_TRANSFER device certificates after
    /// `after` (by ID), as `(id, pem)` for the checks that parse them.
    pub fn scan_active_certificate_pems(
        &mut self,
        account: &AccountId,
        after: Option<&CertificateId>,
        limit: u32,
    ) -> Result<Vec<(CertificateId, String)>, Error> {
        let rows = self.conn.query(
            &active_scan("id, pem"),
            &[account.as_str().into(), after.map_or("", CertificateId::as_str).into(), i64::from(limit).into()],
        )?;
        rows.iter().map(|row| Ok((cert_id(&row.text(0)?)?, row.text(1)?))).collect()
    }

    /// The account's ACTIVE CA certificates as `(id, pem, not_after)`.
    pub fn active_ca_certificates(
        &mut self,
        account: &AccountId,
    ) -> Result<Vec<(CertificateId, String, OffsetDateTime)>, Error> {
        let rows = self.conn.query(
            "SELECT id, pem, not_after FROM ca_certificates WHERE account_id = $1 AND status = 'ACTIVE' ORDER BY id",
            &[account.as_str().into()],
        )?;
        rows.iter().map(|row| Ok((cert_id(&row.text(0)?)?, row.text(1)?, from_millis(row.int(2)?)?))).collect()
    }

    /// Up to `limit` of the account's policies after `after` (by name), with their default version.
    pub fn scan_default_policy_documents(
        &mut self,
        account: &AccountId,
        after: Option<&str>,
        limit: u32,
    ) -> Result<Vec<DefaultPolicyDocument>, Error> {
        let rows = self.conn.query(
            "SELECT p.name, p.default_version, v.document FROM policies p JOIN policy_versions v \
             ON v.account_id = p.account_id AND v.policy_name = p.name AND v.version = p.default_version \
             WHERE p.account_id = $1 AND p.name > $2 ORDER BY p.name LIMIT $3",
            &[account.as_str().into(), after.unwrap_or("").into(), i64::from(limit).into()],
        )?;
        rows.iter()
            .map(|row| {
                Ok(DefaultPolicyDocument { policy_name: row.text(0)?, version: row.int(1)?, document: row.text(2)? })
            })
            .collect()
    }

    // ---- helpers --------------------------------------------------------------------------

    /// Runs `sql` (filters already bound to `params`) for one page ordered by `(time_column, id)`
    /// ascending after `after`, fetching one extra row to know whether another page follows.
    fn keyset_page(
        &mut self,
        mut sql: String,
        mut params: Vec<Value>,
        time_column: &str,
        after: Option<&Cursor>,
        limit: u32,
    ) -> Result<Vec<Row>, Error> {
        if let Some(after) = after {
            let first = params.len() + 1;
            sql.push_str(&format!(
                " AND ({time_column} > ${first} OR ({time_column} = ${first} AND id > ${}))",
                first + 1
            ));
            params.push(after.created_at_ms.into());
            params.push(after.id.as_str().into());
        }
        sql.push_str(&format!(" ORDER BY {time_column}, id LIMIT ${}", params.len() + 1));
        params.push((i64::from(limit.max(1)) + 1).into());
        self.conn.query(&sql, &params)
    }
}

/// One page of the account's ACTIVE or PENDING_TRANSFER certificates after an ID, by ID, selecting
/// `columns` (binding `$1` account, `$2` after, `$3` limit).
///
/// Written as one ordered range per status, merged, rather than `status IN (...)`: each range is
/// a prefix of the index on (account, status, id), so it is read in order and stops after
/// `limit` rows whatever the planner knows. With the IN list, PostgreSQL without fresh
/// statistics (a table just bulk-loaded, autovacuum off) chose a bitmap scan of every row after
/// the cursor and a sort for each page: a check over a million certificates became quadratic.
fn active_scan(columns: &str) -> String {
    let range = |status: &str| {
        format!(
            "SELECT * FROM (SELECT {columns} FROM certificates WHERE account_id = $1 AND status = '{status}' \
             AND id > $2 ORDER BY id LIMIT $3) AS {}",
            status.to_lowercase()
        )
    };
    format!("{} UNION ALL {} ORDER BY id LIMIT $3", range("ACTIVE"), range("PENDING_TRANSFER"))
}

/// The cursor after the last row of a page when there is one more row than `limit`.
fn next_cursor(rows: &[Row], limit: u32, time_index: usize, id_index: usize) -> Result<Option<Cursor>, Error> {
    let limit = limit.max(1) as usize;
    if rows.len() <= limit {
        return Ok(None);
    }
    let last = &rows[limit - 1];
    Ok(Some(Cursor { created_at_ms: last.int(time_index)?, id: last.text(id_index)? }))
}

fn task_from_row(row: &Row) -> Result<AuditTask, Error> {
    Ok(AuditTask {
        account: AccountId::parse(&row.text(0)?)?,
        id: row.text(1)?,
        task_type: parse_text(&row.text(2)?, AuditTaskType::parse)?,
        status: parse_text(&row.text(3)?, AuditTaskStatus::parse)?,
        scheduled_audit_name: row.opt_text(4)?,
        started_at: from_millis(row.int(5)?)?,
        finished_at: row.opt_int(6)?.map(from_millis).transpose()?,
        lease_until: row.opt_int(7)?.map(from_millis).transpose()?,
    })
}

fn finding_from_row(row: &Row) -> Result<AuditFinding, Error> {
    let related = row.text(10)?;
    Ok(AuditFinding {
        account: AccountId::parse(&row.text(0)?)?,
        id: row.text(1)?,
        task_id: row.text(2)?,
        check_name: row.text(3)?,
        task_started_at: from_millis(row.int(4)?)?,
        found_at: from_millis(row.int(5)?)?,
        severity: parse_text(&row.text(6)?, AuditSeverity::parse)?,
        resource: AuditResource {
            id: AuditResourceId::from_key(&row.text(7)?, &row.text(8)?)?,
            additional_info: decode_map(&row.text(9)?)?,
        },
        related: related.split('\n').filter(|line| !line.is_empty()).map(decode_resource).collect::<Result<_, _>>()?,
        reason: row.text(11)?,
        reason_code: row.text(12)?,
        suppressed: row.int(13)? != 0,
    })
}

fn schedule_values(audit: &ScheduledAudit) -> Vec<Value> {
    vec![
        audit.account.as_str().into(),
        audit.name.as_str().into(),
        audit.frequency.as_str().into(),
        audit.day_of_month.as_deref().into(),
        audit.day_of_week.as_deref().into(),
        audit.check_names.join(",").into(),
        millis(audit.next_run_at).into(),
        millis(audit.created_at).into(),
    ]
}

fn schedule_from_row(row: &Row) -> Result<ScheduledAudit, Error> {
    Ok(ScheduledAudit {
        account: AccountId::parse(&row.text(0)?)?,
        name: row.text(1)?,
        frequency: parse_text(&row.text(2)?, AuditFrequency::parse)?,
        day_of_month: row.opt_text(3)?,
        day_of_week: row.opt_text(4)?,
        check_names: row.text(5)?.split(',').filter(|name| !name.is_empty()).map(str::to_owned).collect(),
        next_run_at: from_millis(row.int(6)?)?,
        created_at: from_millis(row.int(7)?)?,
    })
}

// A map is stored as `key=value` pairs separated by tabs, each part percent-escaped; a related
// resource as its type, its key and its map, separated by newlines' cousin, the unit separator.

fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for character in text.chars() {
        match character {
            '%' | '\t' | '\n' | '=' | '\u{1f}' => out.push_str(&format!("%{:02X}", character as u32)),
            other => out.push(other),
        }
    }
    out
}

fn unescape(text: &str) -> Result<String, Error> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut index = 0;
    while index < bytes.len() {
        if bytes[index] == b'%' {
            let code = text
                .get(index + 1..index + 3)
                .and_then(|hex| u8::from_str_radix(hex, 16).ok())
                .ok_or_else(|| Error::InvalidValue(format!("bad escape in {text:?}")))?;
            out.push(code);
            index += 3;
        } else {
            out.push(bytes[index]);
            index += 1;
        }
    }
    String::from_utf8(out).map_err(|_| Error::InvalidValue(format!("bad escape in {text:?}")))
}

fn encode_map(map: &BTreeMap<String, String>) -> String {
    map.iter().map(|(key, value)| format!("{}={}", escape(key), escape(value))).collect::<Vec<_>>().join("\t")
}

fn decode_map(text: &str) -> Result<BTreeMap<String, String>, Error> {
    text.split('\t')
        .filter(|pair| !pair.is_empty())
        .map(|pair| {
            let (key, value) =
                pair.split_once('=').ok_or_else(|| Error::InvalidValue(format!("bad stored pair {pair:?}")))?;
            Ok((unescape(key)?, unescape(value)?))
        })
        .collect()
}

fn encode_resource(resource: &AuditResource) -> String {
    format!(
        "{}\u{1f}{}\u{1f}{}",
        resource.id.resource_type(),
        escape(&resource.id.key()),
        encode_map(&resource.additional_info)
    )
}

fn decode_resource(text: &str) -> Result<AuditResource, Error> {
    let mut parts = text.splitn(3, '\u{1f}');
    let (Some(kind), Some(key), Some(info)) = (parts.next(), parts.next(), parts.next()) else {
        return Err(Error::InvalidValue(format!("bad stored resource {text:?}")));
    };
    Ok(AuditResource { id: AuditResourceId::from_key(kind, &unescape(key)?)?, additional_info: decode_map(info)? })
}
