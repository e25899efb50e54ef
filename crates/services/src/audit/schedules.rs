//! Scheduled audits: validated definitions, when each is next due, and the claim that turns a
//! due schedule into a task.
//!
//! Runs are due at 00:00 UTC: DAILY every day, WEEKLY on `dayOfWeek`, BIWEEKLY on `dayOfWeek`
//! every other week (counted from the first run), MONTHLY on `dayOfMonth` (a day past the end of
//! a short month, and `LAST`, mean its last day). The next run time is stored in the registry, so
//! schedules survive restarts; a node claims a due run by moving that time forward with a
//! conditional UPDATE in the transaction that creates the task, so two nodes sharing a database
//! never both run it. Runs missed while no node was up are not caught up: the next one is the
//! first due time after now.

use certfleet_registry::{self as registry, AuditFrequency, AuditTask, AuditTaskType, ScheduledAudit};
use time::{Date, Duration, OffsetDateTime, Time, Weekday};

use super::check_enabled;
use super::tasks::create_task;
use crate::{Caller, Error, Services};

/// At most this many scheduled audits per account (AWS: 5).
pub const MAX_SCHEDULED_AUDITS: usize = 5;

/// CreateScheduledAudit's request.
#[derive(Clone, Debug)]
pub struct ScheduledAuditDefinition {
    pub frequency: AuditFrequency,
    pub day_of_month: Option<String>,
    pub day_of_week: Option<String>,
    pub check_names: Vec<String>,
    pub tags: Vec<certfleet_registry::Tag>,
}

/// UpdateScheduledAudit's request: each member given replaces the stored one.
#[derive(Clone, Debug, Default)]
pub struct ScheduledAuditUpdate {
    pub frequency: Option<AuditFrequency>,
    pub day_of_month: Option<String>,
    pub day_of_week: Option<String>,
    pub check_names: Option<Vec<String>>,
}

const WEEKDAYS: [(&str, Weekday); 7] = [
    ("SUN", Weekday::Sunday),
    ("MON", Weekday::Monday),
    ("TUE", Weekday::Tuesday),
    ("WED", Weekday::Wednesday),
    ("THU", Weekday::Thursday),
    ("FRI", Weekday::Friday),
    ("SAT", Weekday::Saturday),
];

fn weekday(text: &str) -> Option<Weekday> {
    WEEKDAYS.iter().find(|(name, _)| *name == text).map(|(_, day)| *day)
}

/// The day of the month a `dayOfMonth` names: `1`..`31`, or `None` for `LAST`.
fn day_of_month(text: &str) -> Result<Option<u8>, Error> {
    if text == "LAST" {
        return Ok(None);
    }
    match text.parse::<u8>() {
        Ok(day @ 1..=31) if !text.starts_with('0') => Ok(Some(day)),
        _ => Err(Error::InvalidRequest(format!("dayOfMonth must be 1 to 31 or LAST, got {text:?}"))),
    }
}

/// Checks that the days given fit the frequency (and only they are given).
fn check_days(
    frequency: AuditFrequency,
    day_of_month_text: Option<&str>,
    day_of_week: Option<&str>,
) -> Result<(), Error> {
    let weekly = matches!(frequency, AuditFrequency::Weekly | AuditFrequency::Biweekly);
    match (weekly, day_of_week) {
        (true, None) => return Err(Error::InvalidRequest(format!("dayOfWeek is required for {}", frequency.as_str()))),
        (true, Some(day)) if weekday(day).is_none() => {
            return Err(Error::InvalidRequest(format!("dayOfWeek must be SUN to SAT, got {day:?}")));
        }
        (false, Some(_)) => {
            return Err(Error::InvalidRequest(format!("dayOfWeek does not apply to {}", frequency.as_str())));
        }
        _ => {}
    }
    match (frequency == AuditFrequency::Monthly, day_of_month_text) {
        (true, None) => Err(Error::InvalidRequest("dayOfMonth is required for MONTHLY".into())),
        (true, Some(day)) => day_of_month(day).map(drop),
        (false, Some(_)) => Err(Error::InvalidRequest(format!("dayOfMonth does not apply to {}", frequency.as_str()))),
        (false, None) => Ok(()),
    }
}

fn check_name(name: &str) -> Result<(), Error> {
    let allowed = |b: u8| b.is_ascii_alphanumeric() || b == b'_' || b == b'-';
    if (1..=128).contains(&name.len()) && name.bytes().all(allowed) {
        Ok(())
    } else {
        Err(Error::InvalidRequest(format!(
            "scheduledAuditName must match [a-zA-Z0-9_-]+ (1 to 128 characters), got {name:?}"
        )))
    }
}

/// The first time strictly after `after` at which a schedule is due.
pub fn next_run_after(audit: &ScheduledAudit, after: OffsetDateTime) -> OffsetDateTime {
    let midnight = |date: Date| date.with_time(Time::MIDNIGHT).assume_utc();
    let tomorrow = after.date().next_day().unwrap_or(after.date());
    match audit.frequency {
        AuditFrequency::Daily => midnight(tomorrow),
        AuditFrequency::Weekly | AuditFrequency::Biweekly => {
            let target = audit.day_of_week.as_deref().and_then(weekday).unwrap_or(Weekday::Sunday);
            let mut date = tomorrow;
            while date.weekday() != target {
                date = date.next_day().unwrap_or(date);
            }
            midnight(date)
        }
        AuditFrequency::Monthly => {
            let wanted = audit.day_of_month.as_deref().and_then(|text| day_of_month(text).ok()).flatten();
            let (mut year, mut month) = (after.year(), after.month());
            loop {
                let last = month.length(year);
                let day = wanted.map_or(last, |day| day.min(last));
                if let Ok(date) = Date::from_calendar_date(year, month, day)
                    && midnight(date) > after
                {
                    return midnight(date);
                }
                if month == time::Month::December {
                    year += 1;
                }
                month = month.next();
            }
        }
    }
}

/// The due time after a run due at `due`, claimed at `now`.
fn following_run(audit: &ScheduledAudit, due: OffsetDateTime, now: OffsetDateTime) -> OffsetDateTime {
    if audit.frequency == AuditFrequency::Biweekly {
        let mut next = due + Duration::weeks(2);
        while next <= now {
            next += Duration::weeks(2);
        }
        next
    } else {
        next_run_after(audit, now.max(due))
    }
}

impl Services {
    /// CreateScheduledAudit. Returns the schedule as stored (with its first due time).
    pub fn create_scheduled_audit(
        &self,
        caller: &Caller,
        name: &str,
        definition: &ScheduledAuditDefinition,
    ) -> Result<ScheduledAudit, Error> {
        check_name(name)?;
        check_days(definition.frequency, definition.day_of_month.as_deref(), definition.day_of_week.as_deref())?;
        let now = self.now();
        let mut audit = ScheduledAudit {
            account: caller.account.clone(),
            name: name.to_owned(),
            frequency: definition.frequency,
            day_of_month: definition.day_of_month.clone(),
            day_of_week: definition.day_of_week.clone(),
            check_names: definition.check_names.clone(),
            next_run_at: now,
            created_at: now,
        };
        audit.next_run_at = next_run_after(&audit, now);
        let arn = self.scheduled_audit_arn(&caller.account, name);
        registry::write(self.store(), |tx| {
            tx.lock_account(&caller.account)?;
            check_enabled(tx.get_audit_configuration(&caller.account)?.as_ref(), &audit.check_names)?;
            if tx.get_scheduled_audit(&caller.account, name)?.is_some() {
                return Err(Error::AlreadyExists {
                    message: format!("the scheduled audit {name} already exists"),
                    resource_id: name.to_owned(),
                    resource_arn: Some(arn.clone()),
                });
            }
            if tx.list_scheduled_audits(&caller.account, None, MAX_SCHEDULED_AUDITS as u32)?.len()
                >= MAX_SCHEDULED_AUDITS
            {
                return Err(Error::LimitExceeded(format!(
                    "an account has at most {MAX_SCHEDULED_AUDITS} scheduled audits"
                )));
            }
            tx.insert_scheduled_audit(&audit)?;
            tx.put_tags(&arn, &definition.tags)?;
            Ok(())
        })?;
        tracing::info!(account = %caller.account, schedule = name, next_run = %audit.next_run_at, "scheduled audit created");
        Ok(audit)
    }

    /// UpdateScheduledAudit. Changing the frequency or day moves the next run.
    pub fn update_scheduled_audit(
        &self,
        caller: &Caller,
        name: &str,
        update: &ScheduledAuditUpdate,
    ) -> Result<ScheduledAudit, Error> {
        check_name(name)?;
        let now = self.now();
        let audit = registry::write(self.store(), |tx| {
            tx.lock_account(&caller.account)?;
            let mut audit = find(tx, &caller.account, name)?;
            let timing_changed =
                update.frequency.is_some() || update.day_of_month.is_some() || update.day_of_week.is_some();
            if let Some(frequency) = update.frequency {
                audit.frequency = frequency;
                // Days that no longer apply are dropped rather than refused.
                if !matches!(frequency, AuditFrequency::Weekly | AuditFrequency::Biweekly)
                    && update.day_of_week.is_none()
                {
                    audit.day_of_week = None;
                }
                if frequency != AuditFrequency::Monthly && update.day_of_month.is_none() {
                    audit.day_of_month = None;
                }
            }
            if update.day_of_month.is_some() {
                audit.day_of_month.clone_from(&update.day_of_month);
            }
            if update.day_of_week.is_some() {
                audit.day_of_week.clone_from(&update.day_of_week);
            }
            check_days(audit.frequency, audit.day_of_month.as_deref(), audit.day_of_week.as_deref())?;
            if let Some(names) = &update.check_names {
                check_enabled(tx.get_audit_configuration(&caller.account)?.as_ref(), names)?;
                audit.check_names.clone_from(names);
            }
            if timing_changed {
                audit.next_run_at = next_run_after(&audit, now);
            }
            tx.update_scheduled_audit(&audit)?;
            Ok::<_, Error>(audit)
        })?;
        tracing::info!(account = %caller.account, schedule = name, "scheduled audit updated");
        Ok(audit)
    }

    /// DescribeScheduledAudit.
    pub fn describe_scheduled_audit(&self, caller: &Caller, name: &str) -> Result<ScheduledAudit, Error> {
        check_name(name)?;
        registry::read(self.store(), |tx| find(tx, &caller.account, name))
    }

    /// ListScheduledAudits, by name.
    pub fn list_scheduled_audits(
        &self,
        caller: &Caller,
        after: Option<&str>,
        limit: u32,
    ) -> Result<(Vec<ScheduledAudit>, Option<String>), Error> {
        let mut audits =
            registry::read(self.store(), |tx| tx.list_scheduled_audits(&caller.account, after, limit.max(1) + 1))?;
        let next = if audits.len() > limit.max(1) as usize {
            audits.truncate(limit.max(1) as usize);
            audits.last().map(|audit| audit.name.clone())
        } else {
            None
        };
        Ok((audits, next))
    }

    /// DeleteScheduledAudit.
    pub fn delete_scheduled_audit(&self, caller: &Caller, name: &str) -> Result<(), Error> {
        check_name(name)?;
        let arn = self.scheduled_audit_arn(&caller.account, name);
        registry::write(self.store(), |tx| {
            tx.lock_account(&caller.account)?;
            if !tx.delete_scheduled_audit(&caller.account, name)? {
                return Err(Error::NotFound(format!("the scheduled audit {name} does not exist")));
            }
            tx.delete_tags(&arn)?;
            Ok(())
        })?;
        tracing::info!(account = %caller.account, schedule = name, "scheduled audit deleted");
        Ok(())
    }

    /// Turns every schedule due now (any account) into a task, each claimed in one transaction
    /// with the task's creation: a schedule another node claimed first is skipped. Returns the
    /// tasks created here.
    pub fn start_due_scheduled_audits(&self, limit: u32) -> Result<Vec<AuditTask>, Error> {
        let now = self.now();
        let due = registry::read(self.store(), |tx| tx.due_scheduled_audits(now, limit))?;
        let mut started = Vec::new();
        for audit in due {
            let next = following_run(&audit, audit.next_run_at, now);
            let task = registry::write(self.store(), |tx| {
                if tx.lock_account_if_present(&audit.account)?.is_none() {
                    return Ok(None);
                }
                if !tx.advance_scheduled_audit(&audit.account, &audit.name, audit.next_run_at, next)? {
                    return Ok(None);
                }
                // Checks disabled since (which the configuration refuses while scheduled) fail in the run.
                create_task(tx, &audit.account, AuditTaskType::Scheduled, Some(&audit.name), &audit.check_names, now)
                    .map(Some)
            })?;
            if let Some(task) = task {
                tracing::info!(account = %audit.account, schedule = %audit.name, task = %task.id, next_run = %next, "scheduled audit started");
                started.push(task);
            }
        }
        Ok(started)
    }
}

fn find(tx: &mut registry::Tx<'_>, account: &registry::AccountId, name: &str) -> Result<ScheduledAudit, Error> {
    tx.get_scheduled_audit(account, name)?
        .ok_or_else(|| Error::NotFound(format!("the scheduled audit {name} does not exist")))
}

#[cfg(test)]
mod tests {
    use time::macros::datetime;

    use super::*;

    fn check(
        frequency: AuditFrequency,
        day_of_month: Option<&str>,
        day_of_week: Option<&str>,
        after: OffsetDateTime,
        expected: OffsetDateTime,
    ) {
        let audit = ScheduledAudit {
            account: registry::AccountId::parse("123456789012").unwrap(),
            name: "s".into(),
            frequency,
            day_of_month: day_of_month.map(str::to_owned),
            day_of_week: day_of_week.map(str::to_owned),
            check_names: vec![],
            next_run_at: after,
            created_at: after,
        };
        assert_eq!(
            next_run_after(&audit, after),
            expected,
            "{frequency:?} {day_of_month:?} {day_of_week:?} after {after}"
        );
    }

    #[test]
    fn next_runs() {
        use AuditFrequency::*;
        // 2026-06-01 is a Monday.
        check(Daily, None, None, datetime!(2026-06-01 10:00 UTC), datetime!(2026-06-02 00:00 UTC));
        check(Daily, None, None, datetime!(2026-06-01 00:00 UTC), datetime!(2026-06-02 00:00 UTC));
        check(Weekly, None, Some("MON"), datetime!(2026-06-01 10:00 UTC), datetime!(2026-06-08 00:00 UTC));
        check(Weekly, None, Some("TUE"), datetime!(2026-06-01 10:00 UTC), datetime!(2026-06-02 00:00 UTC));
        check(Biweekly, None, Some("SUN"), datetime!(2026-06-01 10:00 UTC), datetime!(2026-06-07 00:00 UTC));
        check(Monthly, Some("15"), None, datetime!(2026-06-01 10:00 UTC), datetime!(2026-06-15 00:00 UTC));
        check(Monthly, Some("1"), None, datetime!(2026-06-01 10:00 UTC), datetime!(2026-07-01 00:00 UTC));
        check(Monthly, Some("31"), None, datetime!(2026-06-01 10:00 UTC), datetime!(2026-06-30 00:00 UTC));
        check(Monthly, Some("LAST"), None, datetime!(2027-02-01 10:00 UTC), datetime!(2027-02-28 00:00 UTC));
        check(Monthly, Some("5"), None, datetime!(2026-12-20 10:00 UTC), datetime!(2027-01-05 00:00 UTC));
    }

    #[test]
    fn days_must_fit_the_frequency() {
        use AuditFrequency::*;
        let outcome = |frequency, month: Option<&str>, week: Option<&str>| check_days(frequency, month, week).is_ok();
        assert!(outcome(Daily, None, None));
        assert!(!outcome(Daily, None, Some("MON")));
        assert!(!outcome(Weekly, None, None));
        assert!(!outcome(Weekly, None, Some("MONDAY")));
        assert!(outcome(Biweekly, None, Some("SAT")));
        assert!(!outcome(Monthly, None, None));
        assert!(!outcome(Monthly, Some("32"), None));
        assert!(!outcome(Monthly, Some("0"), None));
        assert!(!outcome(Monthly, Some("01"), None));
        assert!(outcome(Monthly, Some("LAST"), None));
        assert!(!outcome(Daily, Some("1"), None));
    }
}
