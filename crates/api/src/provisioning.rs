//! Handlers of the provisioning template operations (Create/Describe/List/Update/Delete
//! ProvisioningTemplate), their versions (Create/Describe/List/DeleteProvisioningTemplateVersion),
//! RegisterThing and CreateProvisioningClaim, and their wire shapes.
//!
//! A pre-provisioning hook's `targetArn` is an `https://` URL: services check its syntax, and
//! here the egress policy's URL rules (`Egress::check_url`) refuse what the gateway could never
//! POST to.

use std::sync::Arc;

use axum::Extension;
use axum::body::Bytes;
use axum::extract::{Path, RawQuery, State};
use std::collections::BTreeMap;

use certfleet_registry::{KeyPageRequest, ProvisioningHook, ProvisioningTemplate, ProvisioningTemplateVersion};
use certfleet_services::{Caller, HookDefinition, TemplateDefinition, TemplateUpdate, decode_token, encode_token};
use serde::{Deserialize, Serialize};

use crate::AppState;
use crate::certificates::{Reply, call, empty, json, required};
use crate::error::ApiError;
use crate::wire::{KeyPair, Query, epoch_seconds, json_body};

/// CreateProvisioningTemplate's body; `tags` is accepted and ignored (certfleet keeps no tags
/// on templates).
#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase")]
pub struct CreateProvisioningTemplateRequest {
    pub template_name: Option<String>,
    pub description: Option<String>,
    pub template_body: Option<String>,
    pub enabled: Option<bool>,
    pub provisioning_role_arn: Option<String>,
    pub pre_provisioning_hook: Option<HookRequest>,
    #[serde(rename = "type")]
    pub template_type: Option<String>,
}

/// AWS's `ProvisioningHook`.
#[derive(Deserialize, Serialize, Default)]
#[serde(rename_all = "camelCase")]
pub struct HookRequest {
    pub target_arn: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub payload_version: Option<String>,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase")]
pub struct UpdateProvisioningTemplateRequest {
    pub description: Option<String>,
    pub enabled: Option<bool>,
    pub default_version_id: Option<i64>,
    pub provisioning_role_arn: Option<String>,
    pub pre_provisioning_hook: Option<HookRequest>,
    pub remove_pre_provisioning_hook: Option<bool>,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase")]
pub struct CreateVersionRequest {
    pub template_body: Option<String>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
pub struct CreateVersionResponse {
    pub template_arn: String,
    pub template_name: String,
    pub version_id: i64,
    pub is_default_version: bool,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
pub struct DescribeVersionResponse {
    pub version_id: i64,
    pub creation_date: f64,
    pub template_body: String,
    pub is_default_version: bool,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
pub struct VersionSummary {
    pub version_id: i64,
    pub creation_date: f64,
    pub is_default_version: bool,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ListVersionsResponse {
    pub versions: Vec<VersionSummary>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next_token: Option<String>,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase")]
pub struct RegisterThingRequest {
    pub template_body: Option<String>,
    pub parameters: Option<BTreeMap<String, String>>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
pub struct RegisterThingResponse {
    pub certificate_pem: String,
    pub resource_arns: BTreeMap<String, String>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
pub struct CreateProvisioningClaimResponse {
    pub certificate_id: String,
    pub certificate_pem: String,
    pub key_pair: KeyPair,
    pub expiration: f64,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
pub struct CreateProvisioningTemplateResponse {
    pub template_arn: String,
    pub template_name: String,
    pub default_version_id: i64,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
pub struct DescribeProvisioningTemplateResponse {
    pub template_arn: String,
    pub template_name: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    pub creation_date: f64,
    pub last_modified_date: f64,
    pub default_version_id: i64,
    pub template_body: String,
    pub enabled: bool,
    pub provisioning_role_arn: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pre_provisioning_hook: Option<HookRequest>,
    #[serde(rename = "type")]
    pub template_type: String,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ProvisioningTemplateSummary {
    pub template_arn: String,
    pub template_name: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    pub creation_date: f64,
    pub last_modified_date: f64,
    pub enabled: bool,
    #[serde(rename = "type")]
    pub template_type: String,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ListProvisioningTemplatesResponse {
    pub templates: Vec<ProvisioningTemplateSummary>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next_token: Option<String>,
}

pub async fn create_provisioning_template(
    State(state): State<Arc<AppState>>,
    Extension(caller): Extension<Caller>,
    body: Bytes,
) -> Reply {
    let request: CreateProvisioningTemplateRequest = json_body(&body)?;
    let pre_provisioning_hook = request.pre_provisioning_hook.map(|hook| hook_definition(&state, hook)).transpose()?;
    let definition = TemplateDefinition {
        name: required(request.template_name, "templateName")?,
        description: request.description,
        body: required(request.template_body, "templateBody")?,
        enabled: request.enabled.unwrap_or(false),
        role_arn: required(request.provisioning_role_arn, "provisioningRoleArn")?,
        template_type: request.template_type,
        pre_provisioning_hook,
    };
    let account = caller.account.clone();
    let template = call(&state, move |services| services.create_provisioning_template(&caller, &definition)).await?;
    json(CreateProvisioningTemplateResponse {
        template_arn: state.services.provisioning_template_arn(&account, &template.name),
        template_name: template.name,
        default_version_id: template.default_version,
    })
}

pub async fn describe_provisioning_template(
    State(state): State<Arc<AppState>>,
    Extension(caller): Extension<Caller>,
    Path(name): Path<String>,
) -> Reply {
    let template = call(&state, move |services| services.describe_provisioning_template(&caller, &name)).await?;
    json(DescribeProvisioningTemplateResponse {
        template_arn: state.services.provisioning_template_arn(&template.account, &template.name),
        creation_date: epoch_seconds(template.created_at),
        last_modified_date: epoch_seconds(template.last_modified),
        default_version_id: template.default_version,
        enabled: template.enabled,
        template_name: template.name,
        description: template.description,
        template_body: template.body,
        provisioning_role_arn: template.role_arn,
        pre_provisioning_hook: template.pre_provisioning_hook.as_ref().map(hook_shape),
        template_type: template.template_type,
    })
}

pub async fn list_provisioning_templates(
    State(state): State<Arc<AppState>>,
    Extension(caller): Extension<Caller>,
    RawQuery(query): RawQuery,
) -> Reply {
    let query = Query::parse(query.as_deref())?;
    let page = KeyPageRequest {
        limit: query.int("maxResults", 1..=250)?.unwrap_or(25),
        after: query.text("nextToken").filter(|token| !token.is_empty()).map(decode_token).transpose()?,
    };
    let page = call(&state, move |services| services.list_provisioning_templates(&caller, &page)).await?;
    json(ListProvisioningTemplatesResponse {
        templates: page.items.iter().map(|template| summary(&state, template)).collect(),
        next_token: page.next.as_deref().map(encode_token),
    })
}

pub async fn delete_provisioning_template(
    State(state): State<Arc<AppState>>,
    Extension(caller): Extension<Caller>,
    Path(name): Path<String>,
) -> Reply {
    call(&state, move |services| services.delete_provisioning_template(&caller, &name)).await?;
    empty()
}

fn summary(state: &AppState, template: &ProvisioningTemplate) -> ProvisioningTemplateSummary {
    ProvisioningTemplateSummary {
        template_arn: state.services.provisioning_template_arn(&template.account, &template.name),
        template_name: template.name.clone(),
        description: template.description.clone(),
        creation_date: epoch_seconds(template.created_at),
        last_modified_date: epoch_seconds(template.last_modified),
        enabled: template.enabled,
        template_type: template.template_type.clone(),
    }
}

pub async fn update_provisioning_template(
    State(state): State<Arc<AppState>>,
    Extension(caller): Extension<Caller>,
    Path(name): Path<String>,
    body: Bytes,
) -> Reply {
    let request: UpdateProvisioningTemplateRequest = json_body(&body)?;
    let update = TemplateUpdate {
        description: request.description,
        enabled: request.enabled,
        default_version: request.default_version_id,
        role_arn: request.provisioning_role_arn,
        pre_provisioning_hook: request.pre_provisioning_hook.map(|hook| hook_definition(&state, hook)).transpose()?,
        remove_pre_provisioning_hook: request.remove_pre_provisioning_hook.unwrap_or(false),
    };
    call(&state, move |services| services.update_provisioning_template(&caller, &name, &update)).await?;
    empty()
}

pub async fn create_provisioning_template_version(
    State(state): State<Arc<AppState>>,
    Extension(caller): Extension<Caller>,
    Path(name): Path<String>,
    RawQuery(query): RawQuery,
    body: Bytes,
) -> Reply {
    let set_as_default = Query::parse(query.as_deref())?.flag("setAsDefault")?;
    let request: CreateVersionRequest = json_body(&body)?;
    let template_body = required(request.template_body, "templateBody")?;
    let account = caller.account.clone();
    let (version, is_default) = call(&state, move |services| {
        services.create_provisioning_template_version(&caller, &name, &template_body, set_as_default)
    })
    .await?;
    json(CreateVersionResponse {
        template_arn: state.services.provisioning_template_arn(&account, &version.template_name),
        template_name: version.template_name,
        version_id: version.version_id,
        is_default_version: is_default,
    })
}

pub async fn describe_provisioning_template_version(
    State(state): State<Arc<AppState>>,
    Extension(caller): Extension<Caller>,
    Path((name, version_id)): Path<(String, String)>,
) -> Reply {
    let version_id = parse_version_id(&version_id)?;
    let (version, is_default) =
        call(&state, move |services| services.describe_provisioning_template_version(&caller, &name, version_id))
            .await?;
    json(DescribeVersionResponse {
        version_id: version.version_id,
        creation_date: epoch_seconds(version.created_at),
        template_body: version.body,
        is_default_version: is_default,
    })
}

pub async fn list_provisioning_template_versions(
    State(state): State<Arc<AppState>>,
    Extension(caller): Extension<Caller>,
    Path(name): Path<String>,
    RawQuery(query): RawQuery,
) -> Reply {
    let query = Query::parse(query.as_deref())?;
    let page = KeyPageRequest {
        limit: query.int("maxResults", 1..=250)?.unwrap_or(25),
        after: query.text("nextToken").filter(|token| !token.is_empty()).map(decode_token).transpose()?,
    };
    let page =
        call(&state, move |services| services.list_provisioning_template_versions(&caller, &name, &page)).await?;
    json(ListVersionsResponse {
        versions: page.items.iter().map(|(version, is_default)| version_summary(version, *is_default)).collect(),
        next_token: page.next.as_deref().map(encode_token),
    })
}

pub async fn delete_provisioning_template_version(
    State(state): State<Arc<AppState>>,
    Extension(caller): Extension<Caller>,
    Path((name, version_id)): Path<(String, String)>,
) -> Reply {
    let version_id = parse_version_id(&version_id)?;
    call(&state, move |services| services.delete_provisioning_template_version(&caller, &name, version_id)).await?;
    empty()
}

/// RegisterThing (`POST /things`).
pub async fn register_thing(
    State(state): State<Arc<AppState>>,
    Extension(caller): Extension<Caller>,
    body: Bytes,
) -> Reply {
    let request: RegisterThingRequest = json_body(&body)?;
    let template_body = required(request.template_body, "templateBody")?;
    let parameters = request.parameters.unwrap_or_default();
    let outcome = call(&state, move |services| services.register_thing(&caller, &template_body, &parameters)).await?;
    json(RegisterThingResponse { certificate_pem: outcome.certificate_pem, resource_arns: outcome.resource_arns })
}

/// CreateProvisioningClaim.
pub async fn create_provisioning_claim(
    State(state): State<Arc<AppState>>,
    Extension(caller): Extension<Caller>,
    Path(name): Path<String>,
) -> Reply {
    let claim = call(&state, move |services| services.create_provisioning_claim(&caller, &name)).await?;
    json(CreateProvisioningClaimResponse {
        certificate_id: claim.certificate.id.to_string(),
        certificate_pem: claim.certificate.pem.clone(),
        key_pair: KeyPair {
            public_key: claim.key_pair.public_key_pem(),
            private_key: claim.key_pair.private_key_pem().to_string(),
        },
        expiration: epoch_seconds(claim.expiration),
    })
}

/// A hook as requested: `targetArn` required, and a URL the egress policy could POST to.
fn hook_definition(state: &AppState, hook: HookRequest) -> Result<HookDefinition, ApiError> {
    let target = required(hook.target_arn, "preProvisioningHook.targetArn")?;
    if let Err(refusal) = state.config.egress.check_url(&target) {
        return Err(ApiError::invalid_request(format!(
            "preProvisioningHook targetArn {target:?} is not an https:// URL this server can call"
        ))
        .with_log_reason(format!("{refusal:?}")));
    }
    Ok(HookDefinition { target, payload_version: hook.payload_version })
}

fn hook_shape(hook: &ProvisioningHook) -> HookRequest {
    HookRequest { target_arn: Some(hook.target.clone()), payload_version: Some(hook.payload_version.clone()) }
}

fn parse_version_id(text: &str) -> Result<i64, ApiError> {
    text.parse::<i64>()
        .ok()
        .filter(|id| *id > 0)
        .ok_or_else(|| ApiError::invalid_request(format!("versionId must be a positive integer, got {text:?}")))
}

fn version_summary(version: &ProvisioningTemplateVersion, is_default: bool) -> VersionSummary {
    VersionSummary {
        version_id: version.version_id,
        creation_date: epoch_seconds(version.created_at),
        is_default_version: is_default,
    }
}
