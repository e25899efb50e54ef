//! Handlers of the topic rule operations (CreateTopicRule, GetTopicRule, ListTopicRules,
//! ReplaceTopicRule, DeleteTopicRule, EnableTopicRule, DisableTopicRule) and their wire shapes.
//!
//! Create and Replace take the bare `TopicRulePayload` as the whole body. An `Action` on the
//! wire is an object with exactly one member naming its type; `republish` and `http` become
//! [`RuleAction`]s, any other type becomes [`RuleAction::Unsupported`] and the services refuse
//! it by name. Faults are `InternalException`, as AWS's model names them for these operations.
//! An http action's URL must parse and use a scheme the egress policy allows (https, or http
//! when the operator allows it), checked here before the services check its destination.
//!
//! The topic rule destinations (Create, Get, List, Update, Delete, Confirm) are here too: Create
//! and Update to IN_PROGRESS send AWS's confirmation message (`arn`, `confirmationToken`,
//! `enableUrl`, `messageType: "DestinationConfirmation"`) to the confirmation URL through the
//! egress policy, after the answer, on their own task; a confirmation that cannot be delivered
//! leaves the destination in ERROR with the egress's generic message as its `statusReason`.

use std::sync::Arc;

use axum::Extension;
use axum::body::Bytes;
use axum::extract::{Path, RawQuery, State};
use certfleet_egress::{Purpose, Refusal};
use certfleet_registry::{DestinationStatus, KeyPageRequest, TopicRule, TopicRuleDestination, TopicRuleFilter};
use certfleet_services::{
    Caller, PendingConfirmation, RuleAction, TopicRulePayload, decode_actions, decode_error_action, decode_token,
    encode_token,
};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value as Json, json};

use crate::AppState;
use crate::certificates::{Reply, call, empty, json, required};
use crate::error::ApiError;
use crate::wire::{Query, epoch_seconds, json_body};

/// The `TopicRulePayload` (the whole body of Create and Replace).
#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase")]
pub struct WireTopicRulePayload {
    pub sql: Option<String>,
    pub description: Option<String>,
    pub actions: Option<Vec<Map<String, Json>>>,
    pub rule_disabled: Option<bool>,
    pub aws_iot_sql_version: Option<String>,
    pub error_action: Option<Map<String, Json>>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
pub struct WireTopicRule {
    pub rule_name: String,
    pub sql: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    pub created_at: f64,
    pub actions: Vec<Json>,
    pub rule_disabled: bool,
    pub aws_iot_sql_version: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error_action: Option<Json>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
pub struct GetTopicRuleResponse {
    pub rule_arn: String,
    pub rule: WireTopicRule,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
pub struct TopicRuleListItem {
    pub rule_arn: String,
    pub rule_name: String,
    pub topic_pattern: String,
    pub created_at: f64,
    pub rule_disabled: bool,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ListTopicRulesResponse {
    pub rules: Vec<TopicRuleListItem>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next_token: Option<String>,
}

pub async fn create_topic_rule(
    State(state): State<Arc<AppState>>,
    Extension(caller): Extension<Caller>,
    Path(name): Path<String>,
    body: Bytes,
) -> Reply {
    let payload = payload_from_wire(json_body(&body)?)?;
    check_http_urls(&state, &payload)?;
    call(&state, move |services| services.create_topic_rule(&caller, &name, &payload))
        .await
        .map_err(internal_exception)?;
    empty()
}

pub async fn replace_topic_rule(
    State(state): State<Arc<AppState>>,
    Extension(caller): Extension<Caller>,
    Path(name): Path<String>,
    body: Bytes,
) -> Reply {
    let payload = payload_from_wire(json_body(&body)?)?;
    check_http_urls(&state, &payload)?;
    call(&state, move |services| services.replace_topic_rule(&caller, &name, &payload))
        .await
        .map_err(internal_exception)?;
    empty()
}

pub async fn get_topic_rule(
    State(state): State<Arc<AppState>>,
    Extension(caller): Extension<Caller>,
    Path(name): Path<String>,
) -> Reply {
    let rule =
        call(&state, move |services| services.get_topic_rule(&caller, &name)).await.map_err(internal_exception)?;
    let actions = decode_actions(&rule.actions)
        .map_err(ApiError::from)
        .map_err(internal_exception)?
        .iter()
        .map(action_to_wire)
        .collect();
    let error_action = rule
        .error_action
        .as_deref()
        .map(decode_error_action)
        .transpose()
        .map_err(ApiError::from)
        .map_err(internal_exception)?
        .as_ref()
        .map(action_to_wire);
    json(GetTopicRuleResponse {
        rule_arn: rule.arn,
        rule: WireTopicRule {
            rule_name: rule.name,
            sql: rule.sql,
            description: rule.description,
            created_at: epoch_seconds(rule.created_at),
            actions,
            rule_disabled: rule.rule_disabled,
            aws_iot_sql_version: rule.aws_iot_sql_version,
            error_action,
        },
    })
}

pub async fn list_topic_rules(
    State(state): State<Arc<AppState>>,
    Extension(caller): Extension<Caller>,
    RawQuery(query): RawQuery,
) -> Reply {
    let query = Query::parse(query.as_deref())?;
    let page = KeyPageRequest {
        limit: query.int("maxResults", 1..=10000)?.unwrap_or(1000),
        after: query.text("nextToken").filter(|token| !token.is_empty()).map(decode_token).transpose()?,
    };
    let filter = TopicRuleFilter {
        topic_pattern: query.text("topic").filter(|topic| !topic.is_empty()).map(str::to_owned),
        rule_disabled: query.text("ruleDisabled").map(|_| query.flag("ruleDisabled")).transpose()?,
    };
    let page = call(&state, move |services| services.list_topic_rules(&caller, &filter, &page))
        .await
        .map_err(internal_exception)?;
    json(ListTopicRulesResponse {
        rules: page.items.iter().map(list_item).collect(),
        next_token: page.next.as_deref().map(encode_token),
    })
}

pub async fn delete_topic_rule(
    State(state): State<Arc<AppState>>,
    Extension(caller): Extension<Caller>,
    Path(name): Path<String>,
) -> Reply {
    call(&state, move |services| services.delete_topic_rule(&caller, &name)).await.map_err(internal_exception)?;
    empty()
}

pub async fn enable_topic_rule(
    State(state): State<Arc<AppState>>,
    Extension(caller): Extension<Caller>,
    Path(name): Path<String>,
) -> Reply {
    call(&state, move |services| services.set_topic_rule_disabled(&caller, &name, false))
        .await
        .map_err(internal_exception)?;
    empty()
}

pub async fn disable_topic_rule(
    State(state): State<Arc<AppState>>,
    Extension(caller): Extension<Caller>,
    Path(name): Path<String>,
) -> Reply {
    call(&state, move |services| services.set_topic_rule_disabled(&caller, &name, true))
        .await
        .map_err(internal_exception)?;
    empty()
}

/// The topic rule operations name their fault `InternalException`, not the
/// `InternalFailureException` of the other operations.
fn internal_exception(error: ApiError) -> ApiError {
    if error.code == "InternalFailureException" { ApiError { code: "InternalException", ..error } } else { error }
}

fn list_item(rule: &TopicRule) -> TopicRuleListItem {
    TopicRuleListItem {
        rule_arn: rule.arn.clone(),
        rule_name: rule.name.clone(),
        topic_pattern: rule.topic_pattern.clone(),
        created_at: epoch_seconds(rule.created_at),
        rule_disabled: rule.rule_disabled,
    }
}

fn payload_from_wire(wire: WireTopicRulePayload) -> Result<TopicRulePayload, ApiError> {
    Ok(TopicRulePayload {
        sql: required(wire.sql, "sql")?,
        description: wire.description,
        actions: wire.actions.unwrap_or_default().iter().map(action_from_wire).collect::<Result<_, _>>()?,
        rule_disabled: wire.rule_disabled.unwrap_or(false),
        aws_iot_sql_version: wire.aws_iot_sql_version,
        error_action: wire.error_action.as_ref().map(action_from_wire).transpose()?,
    })
}

/// One wire `Action`: exactly one member, its type.
fn action_from_wire(action: &Map<String, Json>) -> Result<RuleAction, ApiError> {
    let mut members = action.iter();
    let (Some((kind, body)), None) = (members.next(), members.next()) else {
        return Err(ApiError::invalid_request("an action must have exactly one action type"));
    };
    let text = |key: &str| body.get(key).and_then(Json::as_str).map(str::to_owned);
    match kind.as_str() {
        "republish" => {
            if body.get("headers").is_some_and(|headers| !headers.is_null()) {
                return Err(ApiError::invalid_request("republish headers (MQTT 5 properties) are not supported"));
            }
            let qos = match body.get("qos") {
                None | Some(Json::Null) => 0,
                Some(qos) => qos
                    .as_u64()
                    .and_then(|qos| u8::try_from(qos).ok())
                    .ok_or_else(|| ApiError::invalid_request("republish qos must be 0 or 1"))?,
            };
            Ok(RuleAction::Republish {
                topic: required(text("topic"), "republish topic")?,
                qos,
                role_arn: required(text("roleArn"), "republish roleArn")?,
            })
        }
        "http" => {
            for unsupported in ["auth", "batchConfig"] {
                if body.get(unsupported).is_some_and(|member| !member.is_null()) {
                    return Err(ApiError::invalid_request(format!("http {unsupported} is not supported")));
                }
            }
            if body.get("enableBatching").and_then(Json::as_bool) == Some(true) {
                return Err(ApiError::invalid_request("http enableBatching is not supported"));
            }
            let headers = match body.get("headers") {
                None | Some(Json::Null) => Vec::new(),
                Some(Json::Array(headers)) => headers
                    .iter()
                    .map(|header| {
                        let member = |key: &str| header.get(key).and_then(Json::as_str).map(str::to_owned);
                        match (member("key"), member("value")) {
                            (Some(key), Some(value)) => Ok((key, value)),
                            _ => Err(ApiError::invalid_request("http headers are {key, value} objects")),
                        }
                    })
                    .collect::<Result<_, _>>()?,
                Some(_) => return Err(ApiError::invalid_request("http headers must be a list")),
            };
            Ok(RuleAction::Http { url: required(text("url"), "http url")?, headers })
        }
        other => Ok(RuleAction::Unsupported(other.to_owned())),
    }
}

fn action_to_wire(action: &RuleAction) -> Json {
    match action {
        RuleAction::Republish { topic, qos, role_arn } => {
            json!({"republish": {"topic": topic, "qos": qos, "roleArn": role_arn}})
        }
        RuleAction::Http { url, headers } => {
            let headers: Vec<Json> = headers.iter().map(|(key, value)| json!({"key": key, "value": value})).collect();
            json!({"http": {"url": url, "headers": headers}})
        }
        RuleAction::Unsupported(kind) => json!({ kind.as_str(): {} }),
    }
}

/// Every http URL of `payload` parses and uses a scheme the egress policy allows.
fn check_http_urls(state: &AppState, payload: &TopicRulePayload) -> Result<(), ApiError> {
    for action in payload.actions.iter().chain(payload.error_action.as_ref()) {
        match action {
            RuleAction::Http { url, .. } => check_url(state, url, "http url")?,
            RuleAction::Republish { .. } | RuleAction::Unsupported(_) => {}
        }
    }
    Ok(())
}

fn check_url(state: &AppState, url: &str, member: &str) -> Result<(), ApiError> {
    match state.config.egress.check_url(url) {
        Ok(_) => Ok(()),
        Err(Refusal::PlainHttp) => Err(ApiError::invalid_request(format!(
            "{member} {url:?} uses http://, which this server does not allow: use https://"
        ))),
        Err(_) => Err(ApiError::invalid_request(format!("{member} {url:?} is not a valid https url"))),
    }
}

// ---- topic rule destinations ----------------------------------------------------------------------

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase")]
pub struct CreateDestinationRequest {
    pub destination_configuration: Option<Map<String, Json>>,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase")]
pub struct UpdateDestinationRequest {
    pub arn: Option<String>,
    pub status: Option<String>,
}

fn destination_to_wire(destination: &TopicRuleDestination) -> Json {
    let mut wire = json!({
        "arn": destination.arn,
        "status": destination.status.as_str(),
        "createdAt": epoch_seconds(destination.created_at),
        "lastUpdatedAt": epoch_seconds(destination.last_updated_at),
        "httpUrlProperties": {"confirmationUrl": destination.confirmation_url},
    });
    if let Some(reason) = &destination.status_reason {
        wire["statusReason"] = reason.clone().into();
    }
    wire
}

fn destination_summary(destination: &TopicRuleDestination) -> Json {
    let mut wire = destination_to_wire(destination);
    if let Some(properties) = wire.as_object_mut().and_then(|wire| wire.remove("httpUrlProperties")) {
        wire["httpUrlSummary"] = properties;
    }
    wire
}

pub async fn create_topic_rule_destination(
    State(state): State<Arc<AppState>>,
    Extension(caller): Extension<Caller>,
    headers: http::HeaderMap,
    body: Bytes,
) -> Reply {
    let request: CreateDestinationRequest = json_body(&body)?;
    let configuration = request
        .destination_configuration
        .ok_or_else(|| ApiError::invalid_request("destinationConfiguration is required"))?;
    if configuration.get("vpcConfiguration").is_some_and(|vpc| !vpc.is_null()) {
        return Err(ApiError::invalid_request("vpcConfiguration is not supported: certfleet has no VPC"));
    }
    let url = configuration
        .get("httpUrlConfiguration")
        .and_then(|http| http.get("confirmationUrl"))
        .and_then(Json::as_str)
        .filter(|url| !url.is_empty())
        .ok_or_else(|| ApiError::invalid_request("httpUrlConfiguration.confirmationUrl is required"))?
        .to_owned();
    check_url(&state, &url, "confirmationUrl")?;
    let pending = call(&state, move |services| services.create_topic_rule_destination(&caller, &url))
        .await
        .map_err(internal_exception)?;
    let wire = destination_to_wire(&pending.destination);
    send_confirmation(state, &headers, pending);
    json(json!({ "topicRuleDestination": wire }))
}

pub async fn get_topic_rule_destination(
    State(state): State<Arc<AppState>>,
    Extension(caller): Extension<Caller>,
    Path(arn): Path<String>,
) -> Reply {
    let destination = call(&state, move |services| services.get_topic_rule_destination(&caller, &arn))
        .await
        .map_err(internal_exception)?;
    json(json!({ "topicRuleDestination": destination_to_wire(&destination) }))
}

pub async fn list_topic_rule_destinations(
    State(state): State<Arc<AppState>>,
    Extension(caller): Extension<Caller>,
    RawQuery(query): RawQuery,
) -> Reply {
    let query = Query::parse(query.as_deref())?;
    let page = KeyPageRequest {
        limit: query.int("maxResults", 1..=1000)?.unwrap_or(1000),
        after: query.text("nextToken").filter(|token| !token.is_empty()).map(decode_token).transpose()?,
    };
    let page = call(&state, move |services| services.list_topic_rule_destinations(&caller, &page))
        .await
        .map_err(internal_exception)?;
    let mut answer = json!({ "destinationSummaries": page.items.iter().map(destination_summary).collect::<Vec<_>>() });
    if let Some(next) = page.next.as_deref() {
        answer["nextToken"] = encode_token(next).into();
    }
    json(answer)
}

pub async fn update_topic_rule_destination(
    State(state): State<Arc<AppState>>,
    Extension(caller): Extension<Caller>,
    headers: http::HeaderMap,
    body: Bytes,
) -> Reply {
    let request: UpdateDestinationRequest = json_body(&body)?;
    let arn = required(request.arn, "arn")?;
    let status_text = required(request.status, "status")?;
    let status = DestinationStatus::parse(&status_text).ok_or_else(|| {
        ApiError::invalid_request(format!(
            "status must be ENABLED, DISABLED, IN_PROGRESS or ERROR, got {status_text:?}"
        ))
    })?;
    let pending = call(&state, move |services| services.update_topic_rule_destination(&caller, &arn, status))
        .await
        .map_err(internal_exception)?;
    if let Some(pending) = pending {
        send_confirmation(state, &headers, pending);
    }
    empty()
}

pub async fn delete_topic_rule_destination(
    State(state): State<Arc<AppState>>,
    Extension(caller): Extension<Caller>,
    Path(arn): Path<String>,
) -> Reply {
    call(&state, move |services| services.delete_topic_rule_destination(&caller, &arn))
        .await
        .map_err(internal_exception)?;
    empty()
}

pub async fn confirm_topic_rule_destination(
    State(state): State<Arc<AppState>>,
    Extension(caller): Extension<Caller>,
    Path(token): Path<String>,
) -> Reply {
    call(&state, move |services| services.confirm_topic_rule_destination(&caller, &token).map(drop))
        .await
        .map_err(internal_exception)?;
    empty()
}

/// Sends AWS's confirmation message for `pending` through the egress, on its own task; a
/// failure puts the destination in ERROR with the egress's tenant message.
fn send_confirmation(state: Arc<AppState>, headers: &http::HeaderMap, pending: PendingConfirmation) {
    let host = headers.get(http::header::HOST).and_then(|host| host.to_str().ok()).unwrap_or("localhost");
    let message = json!({
        "arn": pending.destination.arn,
        "confirmationToken": pending.confirmation_token,
        "enableUrl": format!("https://{host}/confirmdestination/{}", pending.confirmation_token),
        "messageType": "DestinationConfirmation",
    });
    tokio::spawn(async move {
        let destination = &pending.destination;
        let sent = state
            .config
            .egress
            .post(
                &destination.account,
                Purpose::DestinationConfirmation,
                &destination.confirmation_url,
                &[],
                Bytes::from(message.to_string()),
            )
            .await;
        match sent {
            Ok(_) => {
                tracing::info!(account = %destination.account, arn = destination.arn, "destination confirmation sent")
            }
            Err(failure) => {
                let reason = failure.tenant_message();
                let services = state.services.clone();
                let recorded =
                    tokio::task::spawn_blocking(move || services.topic_rule_destination_unreachable(&pending, &reason))
                        .await;
                if let Ok(Err(error)) = recorded {
                    tracing::warn!(%error, "cannot record a destination's failed confirmation");
                }
            }
        }
    });
}
