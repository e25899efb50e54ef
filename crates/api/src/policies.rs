//! Handlers of the policy operations: policies and their versions, attachments to certificates
//! (AttachPolicy and the deprecated principal-header forms), and effective policies.

use std::sync::Arc;

use axum::Extension;
use axum::body::Bytes;
use axum::extract::{Path, RawQuery, State};
use certfleet_registry::{KeyPage, KeyPageRequest, PageRequest, Policy, PolicyName, ThingName};
use certfleet_services::{Caller, decode_policy_marker, decode_token, encode_policy_marker, encode_token};
use http::HeaderMap;

use crate::AppState;
use crate::certificates::{Reply, call, empty, json, required};
use crate::error::ApiError;
use crate::wire::{Query, epoch_seconds, json_body, tags_from_wire};
use crate::wire_things::*;

pub(crate) fn policy_name(text: &str) -> Result<PolicyName, ApiError> {
    PolicyName::parse(text).map_err(|error| ApiError::invalid_request(error.to_string()))
}

fn version_id(text: &str) -> Result<i64, ApiError> {
    text.parse::<i64>()
        .ok()
        .filter(|version| *version > 0 && text.bytes().all(|b| b.is_ascii_digit()))
        .ok_or_else(|| ApiError::invalid_request(format!("policyVersionId must match [0-9]+, got {text:?}")))
}

/// A header's value as text; a missing or empty one is an invalid request.
pub(crate) fn header(headers: &HeaderMap, name: &str) -> Result<String, ApiError> {
    headers
        .get(name)
        .and_then(|value| value.to_str().ok())
        .filter(|value| !value.is_empty())
        .map(str::to_owned)
        .ok_or_else(|| ApiError::invalid_request(format!("the header {name} is required")))
}

/// `marker`/`pageSize` of a listing ordered by name or ID.
fn key_page(query: &Query) -> Result<KeyPageRequest, ApiError> {
    Ok(KeyPageRequest {
        limit: query.int("pageSize", 1..=250)?.unwrap_or(25),
        after: query.text("marker").filter(|marker| !marker.is_empty()).map(decode_token).transpose()?,
    })
}

fn policy_list(state: &AppState, caller: &Caller, policies: &[Policy]) -> Vec<PolicySummary> {
    policies
        .iter()
        .map(|policy| PolicySummary {
            policy_name: policy.name.to_string(),
            policy_arn: state.services.policy_arn(&caller.account, &policy.name),
        })
        .collect()
}

// ---- policies ---------------------------------------------------------------------------------

pub async fn create_policy(
    State(state): State<Arc<AppState>>,
    Extension(caller): Extension<Caller>,
    Path(name): Path<String>,
    body: Bytes,
) -> Reply {
    let name = policy_name(&name)?;
    let request: CreatePolicyRequest = json_body(&body)?;
    let document = request.policy_document.unwrap_or_default();
    let tags = tags_from_wire(request.tags)?;
    let account = caller.account.clone();
    let version = call(&state, move |services| services.create_policy(&caller, &name, &document, &tags)).await?;
    json(CreatePolicyResponse {
        policy_name: version.policy_name.to_string(),
        policy_arn: state.services.policy_arn(&account, &version.policy_name),
        policy_document: version.document,
        policy_version_id: version.version.to_string(),
    })
}

pub async fn get_policy(
    State(state): State<Arc<AppState>>,
    Extension(caller): Extension<Caller>,
    Path(name): Path<String>,
) -> Reply {
    let name = policy_name(&name)?;
    let (policy, default) = call(&state, move |services| services.get_policy(&caller, &name)).await?;
    json(policy_response(&policy, &default, state.services.policy_arn(&policy.account, &policy.name)))
}

pub async fn delete_policy(
    State(state): State<Arc<AppState>>,
    Extension(caller): Extension<Caller>,
    Path(name): Path<String>,
) -> Reply {
    let name = policy_name(&name)?;
    call(&state, move |services| services.delete_policy(&caller, &name)).await?;
    empty()
}

pub async fn list_policies(
    State(state): State<Arc<AppState>>,
    Extension(caller): Extension<Caller>,
    RawQuery(query): RawQuery,
) -> Reply {
    let query = Query::parse(query.as_deref())?;
    let page = PageRequest {
        limit: query.int("pageSize", 1..=250)?.unwrap_or(25),
        ascending: query.flag("isAscendingOrder")?,
        after: query.text("marker").filter(|marker| !marker.is_empty()).map(decode_policy_marker).transpose()?,
    };
    let listed_for = caller.clone();
    let page = call(&state, move |services| services.list_policies(&caller, &page)).await?;
    json(ListPoliciesResponse {
        policies: policy_list(&state, &listed_for, &page.items),
        next_marker: page.next.as_ref().map(encode_policy_marker),
    })
}

// ---- versions ---------------------------------------------------------------------------------

pub async fn create_policy_version(
    State(state): State<Arc<AppState>>,
    Extension(caller): Extension<Caller>,
    Path(name): Path<String>,
    RawQuery(query): RawQuery,
    body: Bytes,
) -> Reply {
    let name = policy_name(&name)?;
    let set_as_default = Query::parse(query.as_deref())?.flag("setAsDefault")?;
    let request: CreatePolicyVersionRequest = json_body(&body)?;
    let document = request.policy_document.unwrap_or_default();
    let (policy, version) =
        call(&state, move |services| services.create_policy_version(&caller, &name, &document, set_as_default)).await?;
    json(CreatePolicyVersionResponse {
        policy_arn: state.services.policy_arn(&policy.account, &policy.name),
        policy_document: version.document,
        policy_version_id: version.version.to_string(),
        is_default_version: policy.default_version == version.version,
    })
}

pub async fn list_policy_versions(
    State(state): State<Arc<AppState>>,
    Extension(caller): Extension<Caller>,
    Path(name): Path<String>,
) -> Reply {
    let name = policy_name(&name)?;
    let (policy, versions) = call(&state, move |services| services.list_policy_versions(&caller, &name)).await?;
    json(ListPolicyVersionsResponse {
        policy_versions: versions
            .iter()
            .map(|version| WirePolicyVersion {
                version_id: version.version.to_string(),
                is_default_version: version.version == policy.default_version,
                create_date: epoch_seconds(version.created_at),
            })
            .collect(),
    })
}

pub async fn get_policy_version(
    State(state): State<Arc<AppState>>,
    Extension(caller): Extension<Caller>,
    Path((name, version)): Path<(String, String)>,
) -> Reply {
    let name = policy_name(&name)?;
    let version = version_id(&version)?;
    let (policy, version) = call(&state, move |services| services.get_policy_version(&caller, &name, version)).await?;
    json(policy_version_response(&policy, &version, state.services.policy_arn(&policy.account, &policy.name)))
}

pub async fn set_default_policy_version(
    State(state): State<Arc<AppState>>,
    Extension(caller): Extension<Caller>,
    Path((name, version)): Path<(String, String)>,
) -> Reply {
    let name = policy_name(&name)?;
    let version = version_id(&version)?;
    call(&state, move |services| services.set_default_policy_version(&caller, &name, version)).await?;
    empty()
}

pub async fn delete_policy_version(
    State(state): State<Arc<AppState>>,
    Extension(caller): Extension<Caller>,
    Path((name, version)): Path<(String, String)>,
) -> Reply {
    let name = policy_name(&name)?;
    let version = version_id(&version)?;
    call(&state, move |services| services.delete_policy_version(&caller, &name, version)).await?;
    empty()
}

// ---- attachments ------------------------------------------------------------------------------

pub async fn attach_policy(
    State(state): State<Arc<AppState>>,
    Extension(caller): Extension<Caller>,
    Path(name): Path<String>,
    body: Bytes,
) -> Reply {
    let name = policy_name(&name)?;
    let request: PolicyTargetRequest = json_body(&body)?;
    let target = required(request.target, "target")?;
    call(&state, move |services| services.attach_policy(&caller, &name, &target)).await?;
    empty()
}

pub async fn detach_policy(
    State(state): State<Arc<AppState>>,
    Extension(caller): Extension<Caller>,
    Path(name): Path<String>,
    body: Bytes,
) -> Reply {
    let name = policy_name(&name)?;
    let request: PolicyTargetRequest = json_body(&body)?;
    let target = required(request.target, "target")?;
    call(&state, move |services| services.detach_policy(&caller, &name, &target)).await?;
    empty()
}

/// `POST /attached-policies/{target}`: the target arrives percent-encoded in the path.
pub async fn list_attached_policies(
    State(state): State<Arc<AppState>>,
    Extension(caller): Extension<Caller>,
    Path(target): Path<String>,
    RawQuery(query): RawQuery,
) -> Reply {
    let query = Query::parse(query.as_deref())?;
    // For a thing group, the policies of its ancestors too.
    let recursive = query.flag("recursive")?;
    let page = key_page(&query)?;
    attached_policies(state, caller, target, recursive, page).await
}

async fn attached_policies(
    state: Arc<AppState>,
    caller: Caller,
    target: String,
    recursive: bool,
    page: KeyPageRequest,
) -> Reply {
    let listed_for = caller.clone();
    let page =
        call(&state, move |services| services.list_attached_policies(&caller, &target, recursive, &page)).await?;
    json(ListPoliciesResponse {
        policies: policy_list(&state, &listed_for, &page.items),
        next_marker: page.next.as_deref().map(encode_token),
    })
}

pub async fn list_targets_for_policy(
    State(state): State<Arc<AppState>>,
    Extension(caller): Extension<Caller>,
    Path(name): Path<String>,
    RawQuery(query): RawQuery,
) -> Reply {
    let name = policy_name(&name)?;
    let page = key_page(&Query::parse(query.as_deref())?)?;
    let (targets, next_marker) = targets(&state, caller, name, page).await?;
    json(ListTargetsResponse { targets, next_marker })
}

/// The ARNs of the certificates and thing groups a policy is attached to, and the marker of the
/// next page.
async fn targets(
    state: &Arc<AppState>,
    caller: Caller,
    name: PolicyName,
    page: KeyPageRequest,
) -> Result<(Vec<String>, Option<String>), ApiError> {
    let account = caller.account.clone();
    let page: KeyPage<_> = call(state, move |services| services.list_targets_for_policy(&caller, &name, &page)).await?;
    let arns = page.items.iter().map(|target| state.services.policy_target_arn(&account, target)).collect();
    Ok((arns, page.next.as_deref().map(encode_token)))
}

pub async fn get_effective_policies(
    State(state): State<Arc<AppState>>,
    Extension(caller): Extension<Caller>,
    RawQuery(query): RawQuery,
    body: Bytes,
) -> Reply {
    let query = Query::parse(query.as_deref())?;
    let thing = query
        .text("thingName")
        .map(|name| ThingName::parse(name).map_err(|error| ApiError::invalid_request(error.to_string())))
        .transpose()?;
    let request: GetEffectivePoliciesRequest = json_body(&body)?;
    if request.cognito_identity_pool_id.is_some() {
        return Err(ApiError::invalid_request("Amazon Cognito identity pools are not supported"));
    }
    let principal = request.principal.filter(|principal| !principal.is_empty());
    let account = caller.account.clone();
    let policies =
        call(&state, move |services| services.effective_policies(&caller, principal.as_deref(), thing.as_ref()))
            .await?;
    json(GetEffectivePoliciesResponse {
        effective_policies: policies
            .into_iter()
            .map(|(name, document)| EffectivePolicy {
                policy_arn: state.services.policy_arn(&account, &name),
                policy_name: name.to_string(),
                policy_document: document,
            })
            .collect(),
    })
}

// ---- the deprecated principal-header forms ----------------------------------------------------

pub async fn attach_principal_policy(
    State(state): State<Arc<AppState>>,
    Extension(caller): Extension<Caller>,
    Path(name): Path<String>,
    headers: HeaderMap,
) -> Reply {
    let name = policy_name(&name)?;
    let principal = header(&headers, "x-amzn-iot-principal")?;
    call(&state, move |services| services.attach_policy(&caller, &name, &principal)).await?;
    empty()
}

pub async fn detach_principal_policy(
    State(state): State<Arc<AppState>>,
    Extension(caller): Extension<Caller>,
    Path(name): Path<String>,
    headers: HeaderMap,
) -> Reply {
    let name = policy_name(&name)?;
    let principal = header(&headers, "x-amzn-iot-principal")?;
    call(&state, move |services| services.detach_policy(&caller, &name, &principal)).await?;
    empty()
}

pub async fn list_principal_policies(
    State(state): State<Arc<AppState>>,
    Extension(caller): Extension<Caller>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
) -> Reply {
    let principal = header(&headers, "x-amzn-iot-principal")?;
    let query = Query::parse(query.as_deref())?;
    query.flag("isAscendingOrder")?;
    let page = key_page(&query)?;
    attached_policies(state, caller, principal, false, page).await
}

pub async fn list_policy_principals(
    State(state): State<Arc<AppState>>,
    Extension(caller): Extension<Caller>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
) -> Reply {
    let name = policy_name(&header(&headers, "x-amzn-iot-policy")?)?;
    let query = Query::parse(query.as_deref())?;
    query.flag("isAscendingOrder")?;
    let page = key_page(&query)?;
    let (principals, next_marker) = targets(&state, caller, name, page).await?;
    json(ListPolicyPrincipalsResponse { principals, next_marker })
}
