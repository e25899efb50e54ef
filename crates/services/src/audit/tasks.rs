//! Audit tasks: started on demand or by a schedule, run by a worker, their findings.

use certfleet_registry::{
    self as registry, AccountId, AuditCheckRun, AuditCheckRunStatus, AuditFinding, AuditFindingFilter, AuditTask,
    AuditTaskFilter, AuditTaskStatus, AuditTaskType, Cursor, Page, Tx,
};
use time::{Duration, OffsetDateTime};

use super::checks::{self, CheckContext};
use super::{AuditTaskSummary, audit_check, check_enabled};
use crate::ids::{random_bytes, uuid_v4};
use crate::{Caller, Error, Services};

/// At most this many tasks of an account in progress at once (LimitExceededException beyond).
pub const MAX_TASKS_IN_PROGRESS: usize = 10;

/// How long AWS keeps audit results (ListAuditTasks refuses an older start).
pub const RETENTION: Duration = Duration::days(90);

impl Services {
    /// StartOnDemandAuditTask: every check must be enabled. Returns the task ID at once; a
    /// worker runs the task.
    pub fn start_on_demand_audit_task(&self, caller: &Caller, check_names: &[String]) -> Result<String, Error> {
        let now = self.now();
        let task = registry::write(self.store(), |tx| {
            tx.lock_account(&caller.account)?;
            let config = tx.get_audit_configuration(&caller.account)?;
            check_enabled(config.as_ref(), check_names)?;
            let running = tx.list_audit_tasks(
                &caller.account,
                &AuditTaskFilter {
                    start: now - RETENTION,
                    end: now,
                    task_type: None,
                    status: Some(AuditTaskStatus::InProgress),
                },
                None,
                MAX_TASKS_IN_PROGRESS as u32,
            )?;
            if running.items.len() >= MAX_TASKS_IN_PROGRESS {
                return Err(Error::LimitExceeded(format!(
                    "at most {MAX_TASKS_IN_PROGRESS} audit tasks may be in progress at once"
                )));
            }
            create_task(tx, &caller.account, AuditTaskType::OnDemand, None, check_names, now)
        })?;
        tracing::info!(account = %caller.account, task = %task.id, checks = ?check_names, "audit task started");
        Ok(task.id)
    }

    /// DescribeAuditTask: the task and the runs of its checks.
    pub fn describe_audit_task(&self, caller: &Caller, id: &str) -> Result<(AuditTask, Vec<AuditCheckRun>), Error> {
        registry::read(self.store(), |tx| {
            let task = find_task(tx, &caller.account, id)?;
            let runs = tx.audit_check_runs(&caller.account, id)?;
            Ok((task, runs))
        })
    }

    /// ListAuditTasks: the tasks started in `[filter.start, filter.end]`, oldest first.
    pub fn list_audit_tasks(
        &self,
        caller: &Caller,
        filter: &AuditTaskFilter,
        after: Option<&Cursor>,
        limit: u32,
    ) -> Result<Page<AuditTask>, Error> {
        if filter.start > filter.end {
            return Err(Error::InvalidRequest("startTime must not be after endTime".into()));
        }
        if filter.start < self.now() - RETENTION {
            return Err(Error::InvalidRequest("startTime must be within the last 90 days".into()));
        }
        registry::read(self.store(), |tx| {
            tx.list_audit_tasks(&caller.account, filter, after, limit).map_err(Error::from)
        })
    }

    /// CancelAuditTask: only a task in progress; checks not yet finished become CANCELED.
    pub fn cancel_audit_task(&self, caller: &Caller, id: &str) -> Result<(), Error> {
        let now = self.now();
        registry::write(self.store(), |tx| {
            tx.lock_account(&caller.account)?;
            let task = find_task(tx, &caller.account, id)?;
            if task.status != AuditTaskStatus::InProgress {
                return Err(Error::InvalidRequest(format!(
                    "the audit task {id} is {} and cannot be canceled",
                    task.status.as_str()
                )));
            }
            tx.finish_audit_task(&caller.account, id, AuditTaskStatus::Canceled, now)?;
            for mut run in tx.audit_check_runs(&caller.account, id)? {
                if matches!(run.status, AuditCheckRunStatus::InProgress | AuditCheckRunStatus::WaitingForDataCollection)
                {
                    run.status = AuditCheckRunStatus::Canceled;
                    tx.put_audit_check_run(&run)?;
                }
            }
            Ok(())
        })?;
        tracing::info!(account = %caller.account, task = id, "audit task canceled");
        Ok(())
    }

    /// ListAuditFindings: by task, or by time range (one of the two, as AWS asks).
    pub fn list_audit_findings(
        &self,
        caller: &Caller,
        filter: &AuditFindingFilter,
        after: Option<&Cursor>,
        limit: u32,
    ) -> Result<Page<AuditFinding>, Error> {
        let by_time = filter.start.is_some() || filter.end.is_some();
        match (&filter.task_id, by_time) {
            (Some(_), true) => {
                return Err(Error::InvalidRequest("give either taskId or startTime and endTime, not both".into()));
            }
            (None, false) => return Err(Error::InvalidRequest("give either taskId or startTime and endTime".into())),
            (None, true) if filter.start.is_none() || filter.end.is_none() => {
                return Err(Error::InvalidRequest("startTime and endTime go together".into()));
            }
            _ => {}
        }
        if let Some(name) = &filter.check_name {
            audit_check(name).ok_or_else(|| super::unknown_check(name))?;
        }
        registry::read(self.store(), |tx| {
            if let Some(task) = &filter.task_id {
                find_task(tx, &caller.account, task)?;
            }
            tx.list_audit_findings(&caller.account, filter, after, limit).map_err(Error::from)
        })
    }

    /// DescribeAuditFinding.
    pub fn describe_audit_finding(&self, caller: &Caller, id: &str) -> Result<AuditFinding, Error> {
        registry::read(self.store(), |tx| tx.get_audit_finding(&caller.account, id))?
            .ok_or_else(|| Error::NotFound(format!("the audit finding {id} does not exist")))
    }

    /// Deletes the tasks (with their check runs and findings) of every account started more than
    /// [`RETENTION`] ago. Returns how many tasks went.
    pub fn prune_audit_results(&self) -> Result<u64, Error> {
        let before = self.now() - RETENTION;
        let mut pruned = 0;
        for account in self.list_accounts()? {
            pruned += registry::write(self.store(), |tx| {
                if tx.lock_account_if_present(&account.id)?.is_none() {
                    return Ok(0);
                }
                tx.prune_audit_tasks(&account.id, before)
            })?;
        }
        if pruned > 0 {
            tracing::info!(pruned, "old audit tasks deleted");
        }
        Ok(pruned)
    }

    // ---- the runner -----------------------------------------------------------------------

    /// Tasks a worker may take now (in progress, with no live lease), any account.
    pub fn runnable_audit_tasks(&self, limit: u32) -> Result<Vec<AuditTask>, Error> {
        let now = self.now();
        registry::read(self.store(), |tx| tx.runnable_audit_tasks(now, limit).map_err(Error::from))
    }

    /// Runs `task` to its end if this caller wins its lease (held for `lease` at a time and
    /// renewed before each check, so a worker that dies leaves it to another after `lease`).
    /// Returns the summary of the finished task, or `None` when another worker has it or it
    /// was no longer in progress.
    pub fn run_audit_task(&self, task: &AuditTask, lease: Duration) -> Result<Option<AuditTaskSummary>, Error> {
        let account = &task.account;
        let mut held = None;
        let renew = |held: &mut Option<OffsetDateTime>| -> Result<bool, Error> {
            let now = self.now();
            let until = now + lease;
            // A deleted account's task is lost like a canceled one.
            let won = registry::write(self.store(), |tx| {
                Ok::<_, Error>(
                    tx.lock_account_if_present(account)?.is_some()
                        && tx.claim_audit_task(account, &task.id, now, *held, until)?,
                )
            })?;
            if won {
                *held = Some(until);
            }
            Ok(won)
        };
        if !renew(&mut held)? {
            return Ok(None);
        }
        tracing::info!(account = %account, task = %task.id, "audit task running");
        let (config, runs) = registry::read(self.store(), |tx| {
            Ok::<_, Error>((tx.get_audit_configuration(account)?, tx.audit_check_runs(account, &task.id)?))
        })?;
        for mut run in runs {
            if run.status != AuditCheckRunStatus::InProgress {
                continue;
            }
            if !renew(&mut held)? {
                tracing::info!(account = %account, task = %task.id, "audit task canceled or taken over");
                return self.summary_if_finished(task);
            }
            let settings = config.as_ref().and_then(|config| config.checks.get(&run.check_name));
            let Some(check) = audit_check(&run.check_name).filter(|_| settings.is_some_and(|check| check.enabled))
            else {
                run.status = AuditCheckRunStatus::Failed;
                run.error_code = Some("AUDIT_CHECK_DISABLED".into());
                run.message = Some("the check is not enabled in the audit configuration".into());
                registry::write(self.store(), |tx| {
                    tx.lock_account(account)?;
                    tx.put_audit_check_run(&run).map_err(Error::from)
                })?;
                continue;
            };
            let context = CheckContext {
                account: account.clone(),
                now: self.now(),
                settings: settings.map(|check| check.configuration.clone()).unwrap_or_default(),
                check,
            };
            let started = std::time::Instant::now();
            match checks::run(self, &context) {
                Ok(outcome) => {
                    let found_at = self.now();
                    let findings = outcome
                        .findings
                        .into_iter()
                        .map(|finding| {
                            Ok(AuditFinding {
                                account: account.clone(),
                                id: uuid_v4()?,
                                task_id: task.id.clone(),
                                check_name: check.name.to_owned(),
                                task_started_at: task.started_at,
                                found_at,
                                severity: check.severity,
                                resource: finding.resource,
                                related: finding.related,
                                reason: finding.reason,
                                reason_code: finding.reason_code.to_owned(),
                                suppressed: false,
                            })
                        })
                        .collect::<Result<Vec<_>, Error>>()?;
                    run.total_resources = outcome.total;
                    run.non_compliant_resources = findings.len() as i64;
                    run.status = if findings.is_empty() {
                        AuditCheckRunStatus::CompletedCompliant
                    } else {
                        AuditCheckRunStatus::CompletedNonCompliant
                    };
                    let written = registry::write(self.store(), |tx| {
                        tx.lock_account(account)?;
                        let current = find_task(tx, account, &task.id)?;
                        if current.status != AuditTaskStatus::InProgress {
                            return Ok(false);
                        }
                        tx.insert_audit_findings(&findings)?;
                        tx.put_audit_check_run(&run)?;
                        Ok::<_, Error>(true)
                    })?;
                    if !written {
                        return self.summary_if_finished(task);
                    }
                    tracing::info!(
                        account = %account, task = %task.id, check = check.name, total = outcome.total,
                        non_compliant = findings.len(), elapsed_ms = started.elapsed().as_millis() as u64, "audit check done"
                    );
                }
                Err(error) => {
                    tracing::warn!(account = %account, task = %task.id, check = check.name, %error, "audit check failed");
                    run.status = AuditCheckRunStatus::Failed;
                    run.error_code = Some("INTERNAL_ERROR".into());
                    run.message = Some("the check failed; see the server log".into());
                    registry::write(self.store(), |tx| {
                        tx.lock_account(account)?;
                        tx.put_audit_check_run(&run).map_err(Error::from)
                    })?;
                }
            }
        }
        let now = self.now();
        let finished = registry::write(self.store(), |tx| {
            tx.lock_account(account)?;
            tx.finish_audit_task(account, &task.id, AuditTaskStatus::Completed, now).map_err(Error::from)
        })?;
        if finished {
            tracing::info!(account = %account, task = %task.id, "audit task completed");
        }
        self.summary_if_finished(task)
    }

    /// The summary of a task that has ended.
    fn summary_if_finished(&self, task: &AuditTask) -> Result<Option<AuditTaskSummary>, Error> {
        let (task, checks) = registry::read(self.store(), |tx| {
            let task = find_task(tx, &task.account, &task.id)?;
            let runs = tx.audit_check_runs(&task.account, &task.id)?;
            Ok::<_, Error>((task, runs))
        })?;
        Ok((task.status != AuditTaskStatus::InProgress).then_some(AuditTaskSummary { task, checks }))
    }
}

/// Inserts a task in progress with one run per check, also in progress.
pub(super) fn create_task(
    tx: &mut Tx<'_>,
    account: &AccountId,
    task_type: AuditTaskType,
    scheduled_audit_name: Option<&str>,
    check_names: &[String],
    now: OffsetDateTime,
) -> Result<AuditTask, Error> {
    let task = AuditTask {
        account: account.clone(),
        id: hex::encode(random_bytes::<16>()?),
        task_type,
        status: AuditTaskStatus::InProgress,
        scheduled_audit_name: scheduled_audit_name.map(str::to_owned),
        started_at: now,
        finished_at: None,
        lease_until: None,
    };
    tx.insert_audit_task(&task)?;
    for name in check_names {
        tx.put_audit_check_run(&AuditCheckRun {
            account: account.clone(),
            task_id: task.id.clone(),
            check_name: name.clone(),
            status: AuditCheckRunStatus::InProgress,
            total_resources: 0,
            non_compliant_resources: 0,
            suppressed_non_compliant_resources: 0,
            error_code: None,
            message: None,
        })?;
    }
    Ok(task)
}

fn find_task(tx: &mut Tx<'_>, account: &AccountId, id: &str) -> Result<AuditTask, Error> {
    tx.get_audit_task(account, id)?.ok_or_else(|| Error::NotFound(format!("the audit task {id} does not exist")))
}
