//! Audits (AWS IoT Device Defender): an account's audit configuration, on-demand and scheduled
//! audit tasks, the checks they run and the findings they leave.
//!
//! - `mod.rs`: the check catalogue and the configuration operations.
//! - `tasks.rs`: starting, describing, listing and cancelling tasks; findings; and the runner
//!   a worker calls ([`Services::run_audit_task`]), which runs the checks a task still has to
//!   run, each check's findings and outcome written in one transaction.
//! - `schedules.rs`: scheduled audits, when they are next due, and the claim that turns a due
//!   schedule into a task on exactly one node.
//! - `checks.rs`: the checks themselves, reading the registry in keyset-paged batches.
//! - `crls.rs`: the CRLs operators upload (a certfleet extension), read by the revocation checks.
//!
//! Nothing here runs by itself: the workers crate drives the runner and the scheduler and
//! delivers notifications to the [`AuditListener`]s.

mod checks;
mod crls;
mod schedules;
mod tasks;

use std::collections::BTreeMap;

use certfleet_registry::{
    self as registry, AccountId, AuditCheckConfiguration, AuditCheckRun, AuditConfiguration, AuditNotificationTarget,
    AuditSeverity, AuditTask,
};

pub use schedules::{ScheduledAuditDefinition, ScheduledAuditUpdate, next_run_after};

use crate::{Caller, Error, Services};

/// A check certfleet runs: its AWS name, severity and settings (name, default, allowed range).
#[derive(Clone, Copy, Debug)]
pub struct AuditCheck {
    pub name: &'static str,
    pub severity: AuditSeverity,
    pub settings: &'static [(&'static str, i64, std::ops::RangeInclusive<i64>)],
}

/// `CERT_EXPIRATION_THRESHOLD_IN_DAYS`.
pub const CERT_EXPIRATION_THRESHOLD: &str = "CERT_EXPIRATION_THRESHOLD_IN_DAYS";
/// `CERT_AGE_THRESHOLD_IN_DAYS`.
pub const CERT_AGE_THRESHOLD: &str = "CERT_AGE_THRESHOLD_IN_DAYS";

/// Every check certfleet runs (AWS documents six more, about Cognito, role aliases, logging and
/// intermediate CAs, which have no counterpart here: they are refused as unknown).
pub const AUDIT_CHECKS: &[AuditCheck] = &[
    AuditCheck { name: "CA_CERTIFICATE_EXPIRING_CHECK", severity: AuditSeverity::Medium, settings: &[] },
    AuditCheck { name: "CA_CERTIFICATE_KEY_QUALITY_CHECK", severity: AuditSeverity::Critical, settings: &[] },
    AuditCheck { name: "CONFLICTING_CLIENT_IDS_CHECK", severity: AuditSeverity::High, settings: &[] },
    AuditCheck {
        name: "DEVICE_CERTIFICATE_AGE_CHECK",
        severity: AuditSeverity::Low,
        settings: &[(CERT_AGE_THRESHOLD, 365, 30..=3652)],
    },
    AuditCheck {
        name: "DEVICE_CERTIFICATE_EXPIRING_CHECK",
        severity: AuditSeverity::Medium,
        settings: &[(CERT_EXPIRATION_THRESHOLD, 30, 30..=3652)],
    },
    AuditCheck { name: "DEVICE_CERTIFICATE_KEY_QUALITY_CHECK", severity: AuditSeverity::Critical, settings: &[] },
    AuditCheck { name: "DEVICE_CERTIFICATE_SHARED_CHECK", severity: AuditSeverity::Critical, settings: &[] },
    AuditCheck { name: "IOT_POLICY_OVERLY_PERMISSIVE_CHECK", severity: AuditSeverity::Critical, settings: &[] },
    AuditCheck { name: "REVOKED_CA_CERTIFICATE_STILL_ACTIVE_CHECK", severity: AuditSeverity::Critical, settings: &[] },
    AuditCheck {
        name: "REVOKED_DEVICE_CERTIFICATE_STILL_ACTIVE_CHECK",
        severity: AuditSeverity::Medium,
        settings: &[],
    },
];

/// The check of that name.
pub fn audit_check(name: &str) -> Option<&'static AuditCheck> {
    AUDIT_CHECKS.iter().find(|check| check.name == name)
}

/// What UpdateAccountAuditConfiguration asks: each member given replaces what is stored for it.
#[derive(Clone, Debug, Default)]
pub struct AuditConfigurationUpdate {
    pub role_arn: Option<String>,
    /// By notification type (`SNS`).
    pub targets: BTreeMap<String, AuditNotificationTarget>,
    /// By check name.
    pub checks: BTreeMap<String, AuditCheckConfiguration>,
}

/// A finished task, as listeners are told of it.
#[derive(Clone, Debug)]
pub struct AuditTaskSummary {
    pub task: AuditTask,
    pub checks: Vec<AuditCheckRun>,
}

/// Told of every task that ends (completed, failed or cancelled while running). The workers'
/// notification targets are listeners, and so is anything else that wants to act on audits (the
/// rotation service: rotate what DEVICE_CERTIFICATE_EXPIRING_CHECK found).
pub trait AuditListener: Send + Sync {
    /// `summary.task.account`'s task `summary.task.id` ended.
    fn audit_task_finished(&self, summary: &AuditTaskSummary);
}

impl Services {
    /// The ARN of a scheduled audit.
    pub fn scheduled_audit_arn(&self, account: &AccountId, name: &str) -> String {
        self.arn(account, &format!("scheduledaudit/{name}"))
    }

    /// UpdateAccountAuditConfiguration. The first call must give a role ARN and enable a check
    /// (as in AWS); a check a scheduled audit uses cannot be disabled; settings are checked
    /// against the catalogue. Nothing is stored when anything is refused.
    pub fn update_account_audit_configuration(
        &self,
        caller: &Caller,
        update: &AuditConfigurationUpdate,
    ) -> Result<(), Error> {
        for kind in update.targets.keys() {
            if kind != "SNS" {
                return Err(Error::InvalidRequest(format!("unknown audit notification type {kind:?} (only SNS)")));
            }
        }
        for (name, check) in &update.checks {
            let known = audit_check(name).ok_or_else(|| unknown_check(name))?;
            for (key, value) in &check.configuration {
                let (_, _, range) =
                    known.settings.iter().find(|(setting, _, _)| setting == key).ok_or_else(|| {
                        Error::InvalidRequest(format!("the check {name} has no configuration {key:?}"))
                    })?;
                if !value.parse::<i64>().is_ok_and(|days| range.contains(&days)) {
                    return Err(Error::InvalidRequest(format!(
                        "{key} of {name} must be a number of days from {} to {}, got {value:?}",
                        range.start(),
                        range.end()
                    )));
                }
            }
        }
        let now = self.now();
        registry::write(self.store(), |tx| {
            tx.lock_account(&caller.account)?;
            let stored = tx.get_audit_configuration(&caller.account)?;
            let first = stored.is_none();
            let mut config = stored.unwrap_or_else(|| AuditConfiguration {
                account: caller.account.clone(),
                role_arn: None,
                targets: BTreeMap::new(),
                checks: BTreeMap::new(),
            });
            if update.role_arn.is_some() {
                config.role_arn.clone_from(&update.role_arn);
            }
            config.targets.extend(update.targets.clone());
            for (name, check) in &update.checks {
                if !check.enabled {
                    let users = tx.scheduled_audits_with_check(&caller.account, name)?;
                    if !users.is_empty() {
                        return Err(Error::InvalidRequest(format!(
                            "the check {name} is used by the scheduled audits {users:?} and cannot be disabled"
                        )));
                    }
                }
                config.checks.insert(name.clone(), check.clone());
            }
            if first && (config.role_arn.is_none() || !config.checks.values().any(|check| check.enabled)) {
                return Err(Error::InvalidRequest(
                    "the first audit configuration must give a roleArn and enable at least one check".into(),
                ));
            }
            tx.put_audit_configuration(&config, now)?;
            Ok(())
        })?;
        tracing::info!(account = %caller.account, "audit configuration updated");
        Ok(())
    }

    /// DescribeAccountAuditConfiguration: every check of the catalogue, disabled unless
    /// configured, with its settings (defaults filled in for enabled checks).
    pub fn describe_account_audit_configuration(&self, caller: &Caller) -> Result<AuditConfiguration, Error> {
        let stored = registry::read(self.store(), |tx| tx.get_audit_configuration(&caller.account))?;
        let mut config = stored.unwrap_or_else(|| AuditConfiguration {
            account: caller.account.clone(),
            role_arn: None,
            targets: BTreeMap::new(),
            checks: BTreeMap::new(),
        });
        for check in AUDIT_CHECKS {
            let entry = config.checks.entry(check.name.to_owned()).or_default();
            if entry.enabled {
                for (key, default, _) in check.settings {
                    entry.configuration.entry((*key).to_owned()).or_insert_with(|| default.to_string());
                }
            }
        }
        Ok(config)
    }

    /// DeleteAccountAuditConfiguration: refused while scheduled audits exist unless
    /// `delete_scheduled_audits`, which deletes them too.
    pub fn delete_account_audit_configuration(
        &self,
        caller: &Caller,
        delete_scheduled_audits: bool,
    ) -> Result<(), Error> {
        registry::write(self.store(), |tx| {
            tx.lock_account(&caller.account)?;
            if tx.get_audit_configuration(&caller.account)?.is_none() {
                return Err(Error::NotFound("the account has no audit configuration".into()));
            }
            if !tx.list_scheduled_audits(&caller.account, None, 1)?.is_empty() {
                if !delete_scheduled_audits {
                    return Err(Error::InvalidRequest(
                        "scheduled audits exist: delete them or pass deleteScheduledAudits".into(),
                    ));
                }
                tx.delete_scheduled_audits(&caller.account)?;
            }
            tx.delete_audit_configuration(&caller.account)?;
            Ok(())
        })?;
        tracing::info!(account = %caller.account, "audit configuration deleted");
        Ok(())
    }

    /// The enabled notification targets of an account (for the workers).
    pub fn audit_notification_targets(&self, account: &AccountId) -> Result<Vec<AuditNotificationTarget>, Error> {
        let config = registry::read(self.store(), |tx| tx.get_audit_configuration(account))?;
        Ok(config
            .map(|config| config.targets.into_values().filter(|target| target.enabled).collect())
            .unwrap_or_default())
    }
}

fn unknown_check(name: &str) -> Error {
    Error::InvalidRequest(format!("unknown audit check {name:?}"))
}

/// Checks that every name is a known check enabled in `config`, without duplicates.
fn check_enabled(config: Option<&AuditConfiguration>, names: &[String]) -> Result<(), Error> {
    if names.is_empty() {
        return Err(Error::InvalidRequest("targetCheckNames must name at least one check".into()));
    }
    for (index, name) in names.iter().enumerate() {
        audit_check(name).ok_or_else(|| unknown_check(name))?;
        if names[..index].contains(name) {
            return Err(Error::InvalidRequest(format!("the check {name} is named twice")));
        }
        if !config.and_then(|config| config.checks.get(name)).is_some_and(|check| check.enabled) {
            return Err(Error::InvalidRequest(format!("the check {name} is not enabled in the audit configuration")));
        }
    }
    Ok(())
}
