//! Handlers and wire shapes of the Device Defender audit operations, and the certfleet
//! extension that uploads CRLs (`/certfleet/crls/{name}`).
//!
//! Timestamps are epoch seconds in JSON bodies and ISO-8601 in ListAuditTasks' query string
//! (as botocore sends them); pagination tokens are opaque base64.

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::Extension;
use axum::body::Bytes;
use axum::extract::{Path, RawQuery, State};
use certfleet_pki::CertificateId;
use certfleet_registry::{
    AccountId, AuditCheckConfiguration, AuditCheckRun, AuditCheckRunStatus, AuditFinding, AuditFindingFilter,
    AuditFrequency, AuditNotificationTarget, AuditResource, AuditResourceId, AuditTaskFilter, AuditTaskStatus,
    AuditTaskType, ScheduledAudit, StoredCrl,
};
use certfleet_services::{
    AuditConfigurationUpdate, Caller, ScheduledAuditDefinition, ScheduledAuditUpdate, decode_policy_marker,
    decode_token, encode_policy_marker, encode_token,
};
use serde::{Deserialize, Serialize};
use serde_json::json as json_value;
use time::OffsetDateTime;

use crate::AppState;
use crate::certificates::{Reply, call, json};
use crate::error::ApiError;
use crate::wire::{Query, epoch_seconds, json_body};

// ---- wire shapes ------------------------------------------------------------------------------

#[derive(Deserialize, Serialize, Default, Clone)]
#[serde(rename_all = "camelCase")]
pub struct WireNotificationTarget {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub target_arn: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub role_arn: Option<String>,
    #[serde(default)]
    pub enabled: bool,
}

#[derive(Deserialize, Serialize, Default, Clone)]
#[serde(rename_all = "camelCase")]
pub struct WireCheckConfiguration {
    #[serde(default)]
    pub enabled: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub configuration: Option<BTreeMap<String, String>>,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase")]
pub struct UpdateAccountAuditConfigurationRequest {
    pub role_arn: Option<String>,
    pub audit_notification_target_configurations: Option<BTreeMap<String, WireNotificationTarget>>,
    pub audit_check_configurations: Option<BTreeMap<String, WireCheckConfiguration>>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct DescribeAccountAuditConfigurationResponse {
    #[serde(skip_serializing_if = "Option::is_none")]
    role_arn: Option<String>,
    audit_notification_target_configurations: BTreeMap<String, WireNotificationTarget>,
    audit_check_configurations: BTreeMap<String, WireCheckConfiguration>,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase")]
pub struct StartOnDemandAuditTaskRequest {
    pub target_check_names: Option<Vec<String>>,
}

#[derive(Serialize, Default)]
#[serde(rename_all = "camelCase")]
struct TaskStatistics {
    total_checks: i64,
    in_progress_checks: i64,
    waiting_for_data_collection_checks: i64,
    compliant_checks: i64,
    non_compliant_checks: i64,
    failed_checks: i64,
    canceled_checks: i64,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct AuditCheckDetails {
    check_run_status: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    check_compliant: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    total_resources_count: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    non_compliant_resources_count: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    suppressed_non_compliant_resources_count: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    error_code: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    message: Option<String>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct DescribeAuditTaskResponse {
    task_status: &'static str,
    task_type: &'static str,
    task_start_time: f64,
    task_statistics: TaskStatistics,
    #[serde(skip_serializing_if = "Option::is_none")]
    scheduled_audit_name: Option<String>,
    audit_details: BTreeMap<String, AuditCheckDetails>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct AuditTaskMetadata {
    task_id: String,
    task_status: &'static str,
    task_type: &'static str,
}

#[derive(Deserialize, Serialize, Default, Clone)]
#[serde(rename_all = "camelCase")]
pub struct WirePolicyVersionIdentifier {
    pub policy_name: Option<String>,
    pub policy_version_id: Option<String>,
}

#[derive(Deserialize, Serialize, Default, Clone)]
#[serde(rename_all = "camelCase")]
pub struct WireResourceIdentifier {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub device_certificate_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ca_certificate_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub client_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub policy_version_identifier: Option<WirePolicyVersionIdentifier>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub account: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cognito_identity_pool_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub iam_role_arn: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub role_alias_arn: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub device_certificate_arn: Option<String>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct WireResource {
    resource_type: &'static str,
    resource_identifier: WireResourceIdentifier,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    additional_info: BTreeMap<String, String>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct WireFinding {
    finding_id: String,
    task_id: String,
    check_name: String,
    task_start_time: f64,
    finding_time: f64,
    severity: &'static str,
    non_compliant_resource: WireResource,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    related_resources: Vec<WireResource>,
    reason_for_non_compliance: String,
    reason_for_non_compliance_code: String,
    is_suppressed: bool,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase")]
pub struct ListAuditFindingsRequest {
    pub task_id: Option<String>,
    pub check_name: Option<String>,
    pub resource_identifier: Option<WireResourceIdentifier>,
    pub max_results: Option<u32>,
    pub next_token: Option<String>,
    pub start_time: Option<f64>,
    pub end_time: Option<f64>,
    pub list_suppressed_findings: Option<bool>,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase")]
pub struct ScheduledAuditRequest {
    pub frequency: Option<String>,
    pub day_of_month: Option<String>,
    pub day_of_week: Option<String>,
    pub target_check_names: Option<Vec<String>>,
    pub tags: Option<Vec<crate::wire::WireTag>>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct ScheduledAuditMetadata {
    scheduled_audit_name: String,
    scheduled_audit_arn: String,
    frequency: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    day_of_month: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    day_of_week: Option<String>,
}

// ---- conversions ------------------------------------------------------------------------------

fn resource_identifier(id: &AuditResourceId) -> WireResourceIdentifier {
    let mut wire = WireResourceIdentifier::default();
    match id {
        AuditResourceId::DeviceCertificate(id) => wire.device_certificate_id = Some(id.to_string()),
        AuditResourceId::CaCertificate(id) => wire.ca_certificate_id = Some(id.to_string()),
        AuditResourceId::ClientId(id) => wire.client_id = Some(id.clone()),
        AuditResourceId::PolicyVersion { policy_name, version_id } => {
            wire.policy_version_identifier = Some(WirePolicyVersionIdentifier {
                policy_name: Some(policy_name.clone()),
                policy_version_id: Some(version_id.clone()),
            });
        }
        AuditResourceId::Account(id) => wire.account = Some(id.to_string()),
    }
    wire
}

fn resource_identifier_from_wire(wire: WireResourceIdentifier) -> Result<AuditResourceId, ApiError> {
    let certificate = |text: &str, member: &str| {
        CertificateId::parse(text)
            .map_err(|_| ApiError::invalid_request(format!("{member} must be 64 hexadecimal characters, got {text:?}")))
    };
    if let Some(id) = wire.device_certificate_id {
        return Ok(AuditResourceId::DeviceCertificate(certificate(&id, "deviceCertificateId")?));
    }
    if let Some(id) = wire.ca_certificate_id {
        return Ok(AuditResourceId::CaCertificate(certificate(&id, "caCertificateId")?));
    }
    if let Some(id) = wire.client_id {
        return Ok(AuditResourceId::ClientId(id));
    }
    if let Some(version) = wire.policy_version_identifier {
        return Ok(AuditResourceId::PolicyVersion {
            policy_name: version.policy_name.unwrap_or_default(),
            version_id: version.policy_version_id.unwrap_or_default(),
        });
    }
    if let Some(account) = wire.account {
        return AccountId::parse(&account)
            .map(AuditResourceId::Account)
            .map_err(|_| ApiError::invalid_request(format!("account must be 12 digits, got {account:?}")));
    }
    Err(ApiError::invalid_request("resourceIdentifier names no resource certfleet audits"))
}

fn wire_resource(resource: &AuditResource) -> WireResource {
    WireResource {
        resource_type: resource.id.resource_type(),
        resource_identifier: resource_identifier(&resource.id),
        additional_info: resource.additional_info.clone(),
    }
}

fn wire_finding(finding: &AuditFinding) -> WireFinding {
    WireFinding {
        finding_id: finding.id.clone(),
        task_id: finding.task_id.clone(),
        check_name: finding.check_name.clone(),
        task_start_time: epoch_seconds(finding.task_started_at),
        finding_time: epoch_seconds(finding.found_at),
        severity: finding.severity.as_str(),
        non_compliant_resource: wire_resource(&finding.resource),
        related_resources: finding.related.iter().map(wire_resource).collect(),
        reason_for_non_compliance: finding.reason.clone(),
        reason_for_non_compliance_code: finding.reason_code.clone(),
        is_suppressed: finding.suppressed,
    }
}

fn check_details(run: &AuditCheckRun) -> AuditCheckDetails {
    let completed =
        matches!(run.status, AuditCheckRunStatus::CompletedCompliant | AuditCheckRunStatus::CompletedNonCompliant);
    AuditCheckDetails {
        check_run_status: run.status.as_str(),
        check_compliant: completed.then_some(run.status == AuditCheckRunStatus::CompletedCompliant),
        total_resources_count: completed.then_some(run.total_resources),
        non_compliant_resources_count: completed.then_some(run.non_compliant_resources),
        suppressed_non_compliant_resources_count: completed.then_some(run.suppressed_non_compliant_resources),
        error_code: run.error_code.clone(),
        message: run.message.clone(),
    }
}

fn statistics(runs: &[AuditCheckRun]) -> TaskStatistics {
    let mut statistics = TaskStatistics { total_checks: runs.len() as i64, ..Default::default() };
    for run in runs {
        let counter = match run.status {
            AuditCheckRunStatus::InProgress => &mut statistics.in_progress_checks,
            AuditCheckRunStatus::WaitingForDataCollection => &mut statistics.waiting_for_data_collection_checks,
            AuditCheckRunStatus::CompletedCompliant => &mut statistics.compliant_checks,
            AuditCheckRunStatus::CompletedNonCompliant => &mut statistics.non_compliant_checks,
            AuditCheckRunStatus::Failed => &mut statistics.failed_checks,
            AuditCheckRunStatus::Canceled => &mut statistics.canceled_checks,
        };
        *counter += 1;
    }
    statistics
}

fn epoch(seconds: f64, member: &str) -> Result<OffsetDateTime, ApiError> {
    OffsetDateTime::from_unix_timestamp_nanos((seconds * 1e9) as i128)
        .map_err(|_| ApiError::invalid_request(format!("{member} is out of range")))
}

/// A query timestamp: ISO-8601 (what botocore sends) or epoch seconds.
fn query_time(query: &Query, member: &str) -> Result<Option<OffsetDateTime>, ApiError> {
    let Some(text) = query.text(member) else { return Ok(None) };
    if let Ok(seconds) = text.parse::<f64>() {
        return epoch(seconds, member).map(Some);
    }
    OffsetDateTime::parse(text, &time::format_description::well_known::Iso8601::DEFAULT)
        .map(Some)
        .map_err(|_| ApiError::invalid_request(format!("{member} must be an ISO-8601 timestamp, got {text:?}")))
}

fn frequency(text: &str) -> Result<AuditFrequency, ApiError> {
    AuditFrequency::parse(text).ok_or_else(|| {
        ApiError::invalid_request(format!("frequency must be DAILY, WEEKLY, BIWEEKLY or MONTHLY, got {text:?}"))
    })
}

fn limit(value: Option<u32>, default: u32) -> Result<u32, ApiError> {
    match value {
        None => Ok(default),
        Some(value @ 1..=250) => Ok(value),
        Some(other) => Err(ApiError::invalid_request(format!("maxResults must be from 1 to 250, got {other}"))),
    }
}

fn non_empty(token: Option<&str>) -> Option<&str> {
    token.filter(|token| !token.is_empty())
}

// ---- configuration ----------------------------------------------------------------------------

pub async fn update_account_audit_configuration(
    State(state): State<Arc<AppState>>,
    Extension(caller): Extension<Caller>,
    body: Bytes,
) -> Reply {
    let request: UpdateAccountAuditConfigurationRequest = json_body(&body)?;
    let update = AuditConfigurationUpdate {
        role_arn: request.role_arn,
        targets: request
            .audit_notification_target_configurations
            .unwrap_or_default()
            .into_iter()
            .map(|(kind, target)| {
                let target = AuditNotificationTarget {
                    target_arn: target.target_arn,
                    role_arn: target.role_arn,
                    enabled: target.enabled,
                };
                (kind, target)
            })
            .collect(),
        checks: request
            .audit_check_configurations
            .unwrap_or_default()
            .into_iter()
            .map(|(name, check)| {
                let check = AuditCheckConfiguration {
                    enabled: check.enabled,
                    configuration: check.configuration.unwrap_or_default(),
                };
                (name, check)
            })
            .collect(),
    };
    call(&state, move |services| services.update_account_audit_configuration(&caller, &update)).await?;
    json(json_value!({}))
}

pub async fn describe_account_audit_configuration(
    State(state): State<Arc<AppState>>,
    Extension(caller): Extension<Caller>,
) -> Reply {
    let config = call(&state, move |services| services.describe_account_audit_configuration(&caller)).await?;
    json(DescribeAccountAuditConfigurationResponse {
        role_arn: config.role_arn,
        audit_notification_target_configurations: config
            .targets
            .into_iter()
            .map(|(kind, target)| {
                let wire = WireNotificationTarget {
                    target_arn: target.target_arn,
                    role_arn: target.role_arn,
                    enabled: target.enabled,
                };
                (kind, wire)
            })
            .collect(),
        audit_check_configurations: config
            .checks
            .into_iter()
            .map(|(name, check)| {
                let configuration = (!check.configuration.is_empty()).then_some(check.configuration);
                (name, WireCheckConfiguration { enabled: check.enabled, configuration })
            })
            .collect(),
    })
}

pub async fn delete_account_audit_configuration(
    State(state): State<Arc<AppState>>,
    Extension(caller): Extension<Caller>,
    RawQuery(query): RawQuery,
) -> Reply {
    let delete_scheduled = Query::parse(query.as_deref())?.flag("deleteScheduledAudits")?;
    call(&state, move |services| services.delete_account_audit_configuration(&caller, delete_scheduled)).await?;
    json(json_value!({}))
}

// ---- tasks ------------------------------------------------------------------------------------

pub async fn start_on_demand_audit_task(
    State(state): State<Arc<AppState>>,
    Extension(caller): Extension<Caller>,
    body: Bytes,
) -> Reply {
    let request: StartOnDemandAuditTaskRequest = json_body(&body)?;
    let names = request.target_check_names.ok_or_else(|| ApiError::invalid_request("targetCheckNames is required"))?;
    let task_id = call(&state, move |services| services.start_on_demand_audit_task(&caller, &names)).await?;
    json(json_value!({ "taskId": task_id }))
}

pub async fn describe_audit_task(
    State(state): State<Arc<AppState>>,
    Extension(caller): Extension<Caller>,
    Path(task_id): Path<String>,
) -> Reply {
    let (task, runs) = call(&state, move |services| services.describe_audit_task(&caller, &task_id)).await?;
    json(DescribeAuditTaskResponse {
        task_status: task.status.as_str(),
        task_type: task.task_type.as_str(),
        task_start_time: epoch_seconds(task.started_at),
        task_statistics: statistics(&runs),
        scheduled_audit_name: task.scheduled_audit_name,
        audit_details: runs.iter().map(|run| (run.check_name.clone(), check_details(run))).collect(),
    })
}

pub async fn list_audit_tasks(
    State(state): State<Arc<AppState>>,
    Extension(caller): Extension<Caller>,
    RawQuery(query): RawQuery,
) -> Reply {
    let query = Query::parse(query.as_deref())?;
    let start = query_time(&query, "startTime")?.ok_or_else(|| ApiError::invalid_request("startTime is required"))?;
    let end = query_time(&query, "endTime")?.ok_or_else(|| ApiError::invalid_request("endTime is required"))?;
    let task_type = query
        .text("taskType")
        .map(|text| {
            AuditTaskType::parse(text)
                .ok_or_else(|| ApiError::invalid_request(format!("taskType is not a task type: {text:?}")))
        })
        .transpose()?;
    let status = query
        .text("taskStatus")
        .map(|text| {
            AuditTaskStatus::parse(text)
                .ok_or_else(|| ApiError::invalid_request(format!("taskStatus is not a task status: {text:?}")))
        })
        .transpose()?;
    let limit = query.int("maxResults", 1..=250)?.unwrap_or(25);
    let after = non_empty(query.text("nextToken")).map(decode_policy_marker).transpose()?;
    let filter = AuditTaskFilter { start, end, task_type, status };
    let page = call(&state, move |services| services.list_audit_tasks(&caller, &filter, after.as_ref(), limit)).await?;
    let tasks: Vec<_> = page
        .items
        .iter()
        .map(|task| AuditTaskMetadata {
            task_id: task.id.clone(),
            task_status: task.status.as_str(),
            task_type: task.task_type.as_str(),
        })
        .collect();
    let mut body = json_value!({ "tasks": tasks });
    if let Some(next) = page.next {
        body["nextToken"] = encode_policy_marker(&next).into();
    }
    json(body)
}

pub async fn cancel_audit_task(
    State(state): State<Arc<AppState>>,
    Extension(caller): Extension<Caller>,
    Path(task_id): Path<String>,
) -> Reply {
    call(&state, move |services| services.cancel_audit_task(&caller, &task_id)).await?;
    json(json_value!({}))
}

// ---- findings ---------------------------------------------------------------------------------

pub async fn list_audit_findings(
    State(state): State<Arc<AppState>>,
    Extension(caller): Extension<Caller>,
    body: Bytes,
) -> Reply {
    let request: ListAuditFindingsRequest = json_body(&body)?;
    let filter = AuditFindingFilter {
        task_id: request.task_id,
        check_name: request.check_name,
        resource: request.resource_identifier.map(resource_identifier_from_wire).transpose()?,
        start: request.start_time.map(|seconds| epoch(seconds, "startTime")).transpose()?,
        end: request.end_time.map(|seconds| epoch(seconds, "endTime")).transpose()?,
        include_suppressed: request.list_suppressed_findings.unwrap_or(false),
    };
    let limit = limit(request.max_results, 25)?;
    let after = non_empty(request.next_token.as_deref()).map(decode_policy_marker).transpose()?;
    let page =
        call(&state, move |services| services.list_audit_findings(&caller, &filter, after.as_ref(), limit)).await?;
    let findings: Vec<_> = page.items.iter().map(wire_finding).collect();
    let mut body = json_value!({ "findings": findings });
    if let Some(next) = page.next {
        body["nextToken"] = encode_policy_marker(&next).into();
    }
    json(body)
}

pub async fn describe_audit_finding(
    State(state): State<Arc<AppState>>,
    Extension(caller): Extension<Caller>,
    Path(finding_id): Path<String>,
) -> Reply {
    let finding = call(&state, move |services| services.describe_audit_finding(&caller, &finding_id)).await?;
    json(json_value!({ "finding": wire_finding(&finding) }))
}

// ---- scheduled audits -------------------------------------------------------------------------

fn scheduled_metadata(state: &AppState, audit: &ScheduledAudit) -> ScheduledAuditMetadata {
    ScheduledAuditMetadata {
        scheduled_audit_name: audit.name.clone(),
        scheduled_audit_arn: state.services.scheduled_audit_arn(&audit.account, &audit.name),
        frequency: audit.frequency.as_str(),
        day_of_month: audit.day_of_month.clone(),
        day_of_week: audit.day_of_week.clone(),
    }
}

pub async fn create_scheduled_audit(
    State(state): State<Arc<AppState>>,
    Extension(caller): Extension<Caller>,
    Path(name): Path<String>,
    body: Bytes,
) -> Reply {
    let request: ScheduledAuditRequest = json_body(&body)?;
    let definition = ScheduledAuditDefinition {
        frequency: frequency(&request.frequency.ok_or_else(|| ApiError::invalid_request("frequency is required"))?)?,
        day_of_month: request.day_of_month,
        day_of_week: request.day_of_week,
        check_names: request
            .target_check_names
            .ok_or_else(|| ApiError::invalid_request("targetCheckNames is required"))?,
        tags: crate::wire::tags_from_wire(request.tags)?,
    };
    let audit = call(&state, move |services| services.create_scheduled_audit(&caller, &name, &definition)).await?;
    json(json_value!({ "scheduledAuditArn": state.services.scheduled_audit_arn(&audit.account, &audit.name) }))
}

pub async fn update_scheduled_audit(
    State(state): State<Arc<AppState>>,
    Extension(caller): Extension<Caller>,
    Path(name): Path<String>,
    body: Bytes,
) -> Reply {
    let request: ScheduledAuditRequest = json_body(&body)?;
    let update = ScheduledAuditUpdate {
        frequency: request.frequency.as_deref().map(frequency).transpose()?,
        day_of_month: request.day_of_month,
        day_of_week: request.day_of_week,
        check_names: request.target_check_names,
    };
    let audit = call(&state, move |services| services.update_scheduled_audit(&caller, &name, &update)).await?;
    json(json_value!({ "scheduledAuditArn": state.services.scheduled_audit_arn(&audit.account, &audit.name) }))
}

pub async fn describe_scheduled_audit(
    State(state): State<Arc<AppState>>,
    Extension(caller): Extension<Caller>,
    Path(name): Path<String>,
) -> Reply {
    let audit = call(&state, move |services| services.describe_scheduled_audit(&caller, &name)).await?;
    let metadata = scheduled_metadata(&state, &audit);
    let mut body = serde_json::to_value(metadata).map_err(|_| ApiError::internal())?;
    body["targetCheckNames"] = audit.check_names.into();
    json(body)
}

pub async fn list_scheduled_audits(
    State(state): State<Arc<AppState>>,
    Extension(caller): Extension<Caller>,
    RawQuery(query): RawQuery,
) -> Reply {
    let query = Query::parse(query.as_deref())?;
    let limit = query.int("maxResults", 1..=250)?.unwrap_or(25);
    let after = non_empty(query.text("nextToken")).map(decode_token).transpose()?;
    let (audits, next) =
        call(&state, move |services| services.list_scheduled_audits(&caller, after.as_deref(), limit)).await?;
    let audits: Vec<_> = audits.iter().map(|audit| scheduled_metadata(&state, audit)).collect();
    let mut body = json_value!({ "scheduledAudits": audits });
    if let Some(next) = next {
        body["nextToken"] = encode_token(&next).into();
    }
    json(body)
}

pub async fn delete_scheduled_audit(
    State(state): State<Arc<AppState>>,
    Extension(caller): Extension<Caller>,
    Path(name): Path<String>,
) -> Reply {
    call(&state, move |services| services.delete_scheduled_audit(&caller, &name)).await?;
    json(json_value!({}))
}

// ---- CRLs (certfleet extension) ---------------------------------------------------------------

fn crl_summary(crl: &StoredCrl) -> serde_json::Value {
    let mut summary = json_value!({
        "crlName": crl.name,
        "uploadedAt": epoch_seconds(crl.uploaded_at),
        "signatureVerified": crl.issuer_ca.is_some(),
    });
    if let Some(ca) = &crl.issuer_ca {
        summary["caCertificateId"] = ca.to_string().into();
    }
    if let Ok(parsed) = certfleet_pki::Crl::from_der(crl.der.clone()) {
        summary["issuer"] = parsed.issuer_string().into();
        summary["revokedCount"] = parsed.revoked_count().into();
        summary["thisUpdate"] = epoch_seconds(parsed.this_update()).into();
    }
    summary
}

pub async fn put_crl(
    State(state): State<Arc<AppState>>,
    Extension(caller): Extension<Caller>,
    Path(name): Path<String>,
    body: Bytes,
) -> Reply {
    let stored = call(&state, move |services| services.put_crl(&caller, &name, &body)).await?;
    json(crl_summary(&stored))
}

pub async fn list_crls(State(state): State<Arc<AppState>>, Extension(caller): Extension<Caller>) -> Reply {
    let crls = call(&state, move |services| services.list_crls(&caller)).await?;
    json(json_value!({ "crls": crls.iter().map(crl_summary).collect::<Vec<_>>() }))
}

pub async fn delete_crl(
    State(state): State<Arc<AppState>>,
    Extension(caller): Extension<Caller>,
    Path(name): Path<String>,
) -> Reply {
    call(&state, move |services| services.delete_crl(&caller, &name)).await?;
    json(json_value!({}))
}
