//! The audit model (AWS IoT Device Defender audits): an account's audit configuration, audit
//! tasks and the runs of their checks, findings, scheduled audits and the CRLs operators upload.
//!
//! Plain values, like the rest of the model: the registry stores them, services decide what they
//! mean, the api crate spells them on the wire.

use std::collections::BTreeMap;

use certfleet_pki::CertificateId;
use time::OffsetDateTime;

use crate::{AccountId, Error};

/// Defines an enum stored as its AWS name, with `as_str` and `parse`.
macro_rules! stored_enum {
    ($(#[$meta:meta])* $name:ident { $($variant:ident = $text:literal),+ $(,)? }) => {
        $(#[$meta])*
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub enum $name { $($variant),+ }

        impl $name {
            /// The AWS name.
            pub fn as_str(self) -> &'static str {
                match self { $($name::$variant => $text),+ }
            }

            /// The value of an AWS name.
            pub fn parse(text: &str) -> Option<Self> {
                match text { $($text => Some($name::$variant),)+ _ => None }
            }
        }
    };
}

stored_enum!(
    /// Where a task stands.
    AuditTaskStatus { InProgress = "IN_PROGRESS", Completed = "COMPLETED", Failed = "FAILED", Canceled = "CANCELED" }
);

stored_enum!(
    /// Who started a task.
    AuditTaskType { OnDemand = "ON_DEMAND_AUDIT_TASK", Scheduled = "SCHEDULED_AUDIT_TASK" }
);

stored_enum!(
    /// Where one check of a task stands.
    AuditCheckRunStatus {
        InProgress = "IN_PROGRESS",
        WaitingForDataCollection = "WAITING_FOR_DATA_COLLECTION",
        Canceled = "CANCELED",
        CompletedCompliant = "COMPLETED_COMPLIANT",
        CompletedNonCompliant = "COMPLETED_NON_COMPLIANT",
        Failed = "FAILED",
    }
);

stored_enum!(
    /// How bad a finding is (the check's severity).
    AuditSeverity { Critical = "CRITICAL", High = "HIGH", Medium = "MEDIUM", Low = "LOW" }
);

stored_enum!(
    /// How often a scheduled audit runs.
    AuditFrequency { Daily = "DAILY", Weekly = "WEEKLY", Biweekly = "BIWEEKLY", Monthly = "MONTHLY" }
);

/// One check's settings in an account's audit configuration.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct AuditCheckConfiguration {
    pub enabled: bool,
    /// `CERT_EXPIRATION_THRESHOLD_IN_DAYS` and the like, values as given (strings, as AWS has them).
    pub configuration: BTreeMap<String, String>,
}

/// Where audit notifications go (AWS's `AuditNotificationTarget`, keyed by its type, `SNS`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct AuditNotificationTarget {
    pub target_arn: Option<String>,
    pub role_arn: Option<String>,
    pub enabled: bool,
}

/// An account's audit configuration.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AuditConfiguration {
    pub account: AccountId,
    pub role_arn: Option<String>,
    /// By notification type (`SNS`).
    pub targets: BTreeMap<String, AuditNotificationTarget>,
    /// By check name.
    pub checks: BTreeMap<String, AuditCheckConfiguration>,
}

/// One audit task.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AuditTask {
    pub account: AccountId,
    pub id: String,
    pub task_type: AuditTaskType,
    pub status: AuditTaskStatus,
    pub scheduled_audit_name: Option<String>,
    pub started_at: OffsetDateTime,
    pub finished_at: Option<OffsetDateTime>,
    /// A worker runs the task until then; past it (the worker died), another may take it over.
    pub lease_until: Option<OffsetDateTime>,
}

/// One check of a task and its outcome.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AuditCheckRun {
    pub account: AccountId,
    pub task_id: String,
    pub check_name: String,
    pub status: AuditCheckRunStatus,
    pub total_resources: i64,
    pub non_compliant_resources: i64,
    pub suppressed_non_compliant_resources: i64,
    pub error_code: Option<String>,
    pub message: Option<String>,
}

/// What a finding is about (AWS's `ResourceIdentifier`, one member set).
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum AuditResourceId {
    DeviceCertificate(CertificateId),
    CaCertificate(CertificateId),
    ClientId(String),
    PolicyVersion { policy_name: String, version_id: String },
    Account(AccountId),
}

impl AuditResourceId {
    /// AWS's `resourceType`.
    pub fn resource_type(&self) -> &'static str {
        match self {
            AuditResourceId::DeviceCertificate(_) => "DEVICE_CERTIFICATE",
            AuditResourceId::CaCertificate(_) => "CA_CERTIFICATE",
            AuditResourceId::ClientId(_) => "CLIENT_ID",
            AuditResourceId::PolicyVersion { .. } => "IOT_POLICY",
            AuditResourceId::Account(_) => "ACCOUNT_SETTINGS",
        }
    }

    /// The identifier as one text (a policy version is `name` TAB `version`), for storage and filters.
    pub fn key(&self) -> String {
        match self {
            AuditResourceId::DeviceCertificate(id) | AuditResourceId::CaCertificate(id) => id.to_string(),
            AuditResourceId::ClientId(id) => id.clone(),
            AuditResourceId::PolicyVersion { policy_name, version_id } => format!("{policy_name}\t{version_id}"),
            AuditResourceId::Account(id) => id.to_string(),
        }
    }

    /// The identifier of a stored `(resource type, key)`.
    pub fn from_key(resource_type: &str, key: &str) -> Result<Self, Error> {
        let cert = |text: &str| {
            CertificateId::parse(text).map_err(|error| Error::InvalidValue(format!("certificate id {text:?}: {error}")))
        };
        Ok(match resource_type {
            "DEVICE_CERTIFICATE" => AuditResourceId::DeviceCertificate(cert(key)?),
            "CA_CERTIFICATE" => AuditResourceId::CaCertificate(cert(key)?),
            "CLIENT_ID" => AuditResourceId::ClientId(key.to_owned()),
            "IOT_POLICY" => {
                let (policy_name, version_id) =
                    key.split_once('\t').ok_or_else(|| Error::InvalidValue(format!("policy version key {key:?}")))?;
                AuditResourceId::PolicyVersion { policy_name: policy_name.into(), version_id: version_id.into() }
            }
            "ACCOUNT_SETTINGS" => AuditResourceId::Account(AccountId::parse(key)?),
            other => return Err(Error::InvalidValue(format!("unknown audit resource type {other:?}"))),
        })
    }
}

/// A resource of a finding, with AWS's `additionalInfo`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AuditResource {
    pub id: AuditResourceId,
    pub additional_info: BTreeMap<String, String>,
}

/// One non-compliant resource found by a check of a task.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AuditFinding {
    pub account: AccountId,
    pub id: String,
    pub task_id: String,
    pub check_name: String,
    pub task_started_at: OffsetDateTime,
    pub found_at: OffsetDateTime,
    pub severity: AuditSeverity,
    pub resource: AuditResource,
    pub related: Vec<AuditResource>,
    pub reason: String,
    pub reason_code: String,
    pub suppressed: bool,
}

/// Which findings a listing returns.
#[derive(Clone, Debug, Default)]
pub struct AuditFindingFilter {
    pub task_id: Option<String>,
    pub check_name: Option<String>,
    pub resource: Option<AuditResourceId>,
    /// Found at or after.
    pub start: Option<OffsetDateTime>,
    /// Found at or before.
    pub end: Option<OffsetDateTime>,
    pub include_suppressed: bool,
}

/// Which tasks a listing returns.
#[derive(Clone, Debug)]
pub struct AuditTaskFilter {
    pub start: OffsetDateTime,
    pub end: OffsetDateTime,
    pub task_type: Option<AuditTaskType>,
    pub status: Option<AuditTaskStatus>,
}

/// A scheduled audit, with the next time it is due.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ScheduledAudit {
    pub account: AccountId,
    pub name: String,
    pub frequency: AuditFrequency,
    /// `1`..`31` or `LAST` (MONTHLY).
    pub day_of_month: Option<String>,
    /// `SUN`..`SAT` (WEEKLY, BIWEEKLY).
    pub day_of_week: Option<String>,
    pub check_names: Vec<String>,
    pub next_run_at: OffsetDateTime,
    pub created_at: OffsetDateTime,
}

/// A certificate revocation list an operator uploaded (a certfleet extension).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoredCrl {
    pub account: AccountId,
    pub name: String,
    pub der: Vec<u8>,
    /// The registered CA whose key verified the CRL's signature, if one did.
    pub issuer_ca: Option<CertificateId>,
    pub uploaded_at: OffsetDateTime,
}

/// What the certificate checks read of a certificate (no PEM): a keyset scan returns these.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CertificateValidityRow {
    pub id: CertificateId,
    pub ca_certificate_id: Option<CertificateId>,
    pub not_before: OffsetDateTime,
    pub not_after: OffsetDateTime,
    pub created_at: OffsetDateTime,
}

/// A policy's default version, as the policy checks read it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DefaultPolicyDocument {
    pub policy_name: String,
    pub version: i64,
    pub document: String,
}
