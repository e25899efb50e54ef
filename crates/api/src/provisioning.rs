//! Handlers of the provisioning template operations (CreateProvisioningTemplate,
//! DescribeProvisioningTemplate, ListProvisioningTemplates, DeleteProvisioningTemplate) and
//! their wire shapes.

use std::sync::Arc;

use axum::Extension;
use axum::body::Bytes;
use axum::extract::{Path, RawQuery, State};
use certfleet_registry::{KeyPageRequest, ProvisioningTemplate};
use certfleet_services::{Caller, TemplateDefinition, decode_token, encode_token};
use serde::{Deserialize, Serialize};

use crate::AppState;
use crate::certificates::{Reply, call, empty, json, required};
use crate::error::ApiError;
use crate::wire::{Query, epoch_seconds, json_body};

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
    pub pre_provisioning_hook: Option<serde_json::Value>,
    #[serde(rename = "type")]
    pub template_type: Option<String>,
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
    if request.pre_provisioning_hook.is_some() {
        return Err(ApiError::invalid_request(
            "preProvisioningHook is not supported (it applies to fleet provisioning)",
        ));
    }
    let definition = TemplateDefinition {
        name: required(request.template_name, "templateName")?,
        description: request.description,
        body: required(request.template_body, "templateBody")?,
        enabled: request.enabled.unwrap_or(false),
        role_arn: required(request.provisioning_role_arn, "provisioningRoleArn")?,
        template_type: request.template_type,
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
