//! Handlers of the topic rule operations (CreateTopicRule, GetTopicRule, ListTopicRules,
//! ReplaceTopicRule, DeleteTopicRule, EnableTopicRule, DisableTopicRule) and their wire shapes.
//!
//! Create and Replace take the bare `TopicRulePayload` as the whole body. An `Action` on the
//! wire is an object with exactly one member naming its type; `republish` and `http` become
//! [`RuleAction`]s, any other type becomes [`RuleAction::Unsupported`] and the services refuse
//! it by name. Faults are `InternalException`, as AWS's model names them for these operations.

use std::sync::Arc;

use axum::Extension;
use axum::body::Bytes;
use axum::extract::{Path, RawQuery, State};
use certfleet_registry::{KeyPageRequest, TopicRule, TopicRuleFilter};
use certfleet_services::{
    Caller, RuleAction, TopicRulePayload, decode_actions, decode_error_action, decode_token, encode_token,
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
