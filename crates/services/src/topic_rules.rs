//! Topic rules (CreateTopicRule, GetTopicRule, ListTopicRules, ReplaceTopicRule, DeleteTopicRule,
//! EnableTopicRule, DisableTopicRule): per account, an AWS IoT SQL statement (version
//! 2016-03-23, parsed by `certfleet-rules`) and the actions its output goes to.
//!
//! Only two actions are supported, `republish` and `http`; any other is refused naming it. Every
//! rule is checked whole before anything is stored: a refused request changes nothing. The
//! actions are stored as canonical JSON text (this module's own encoding, not the AWS wire
//! shape) and decoded back by [`Services::runnable_topic_rules`], which the gateway's rules
//! engine loads.
//!
//! An http action (or error action) is accepted only when its URL is under an ENABLED topic rule
//! destination of the account (`destinations.rs`), as AWS requires; the rules engine checks it
//! again before each request ([`RunnableRule::destination_covers`]), so disabling or deleting a
//! destination stops its actions. Where certfleet may connect at all is the egress policy's
//! decision (`certfleet-egress`), not this module's.
//!
//! AWS answers `UnauthorizedException` (401) for a rule the caller does not have: a missing rule
//! is [`Error::RuleNotFound`], which the api crate maps to that.

use std::sync::Arc;

use certfleet_registry::{self as registry, AccountId, KeyPage, KeyPageRequest, TopicRule, TopicRuleFilter};
use serde_json::{Value as Json, json};

use crate::{Caller, Error, Services};

/// The one SQL version certfleet runs; a payload without `awsIotSqlVersion` gets it too (AWS's
/// default would be 2015-10-08, which certfleet does not implement).
pub const SQL_VERSION: &str = "2016-03-23";

/// CreateTopicRule's and ReplaceTopicRule's payload, as the api crate decoded it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TopicRulePayload {
    pub sql: String,
    pub description: Option<String>,
    pub actions: Vec<RuleAction>,
    pub rule_disabled: bool,
    pub aws_iot_sql_version: Option<String>,
    pub error_action: Option<RuleAction>,
}

/// One action of a rule.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RuleAction {
    /// Publishes the output to `topic` in the account's topic space.
    Republish { topic: String, qos: u8, role_arn: String },
    /// POSTs the output to `url`, with `headers`.
    Http { url: String, headers: Vec<(String, String)> },
    /// An AWS action type certfleet does not run (`lambda`, `s3`, ...): always refused.
    Unsupported(String),
}

/// A rule ready to run: its statement parsed, its actions decoded.
#[derive(Clone, Debug)]
pub struct RunnableRule {
    pub name: String,
    pub statement: certfleet_rules::Rule,
    pub actions: Vec<RuleAction>,
    pub error_action: Option<RuleAction>,
    /// The confirmation URLs of the account's ENABLED destinations when the rules were loaded.
    pub destinations: Arc<[String]>,
}

impl RunnableRule {
    /// Whether an http action's `url` is under an ENABLED destination of the account.
    pub fn destination_covers(&self, url: &str) -> bool {
        self.destinations.iter().any(|prefix| crate::destinations::url_under(url, prefix))
    }
}

impl Services {
    /// The ARN of a topic rule.
    pub fn topic_rule_arn(&self, account: &AccountId, name: &str) -> String {
        self.arn(account, &format!("rule/{name}"))
    }

    /// CreateTopicRule.
    pub fn create_topic_rule(&self, caller: &Caller, name: &str, payload: &TopicRulePayload) -> Result<(), Error> {
        check_rule_name(name)?;
        let checked = check_payload(payload)?;
        let now = self.now();
        let record = TopicRule {
            account: caller.account.clone(),
            name: name.to_owned(),
            arn: self.topic_rule_arn(&caller.account, name),
            sql: payload.sql.clone(),
            topic_pattern: checked.topic_pattern,
            description: payload.description.clone(),
            aws_iot_sql_version: SQL_VERSION.into(),
            rule_disabled: payload.rule_disabled,
            actions: checked.actions,
            error_action: checked.error_action,
            created_at: now,
            last_modified: now,
        };
        registry::write(self.store(), |tx| {
            tx.lock_account(&caller.account)?;
            check_destinations(&tx.enabled_destination_urls(&caller.account)?, payload)?;
            if tx.get_topic_rule(&caller.account, name)?.is_some() {
                return Err(Error::AlreadyExists {
                    message: format!("the topic rule {name} already exists"),
                    resource_id: name.to_owned(),
                    resource_arn: Some(record.arn.clone()),
                });
            }
            tx.insert_topic_rule(&record).map_err(Error::from)
        })?;
        tracing::info!(account = %caller.account, rule = name, "topic rule created");
        Ok(())
    }

    /// GetTopicRule.
    pub fn get_topic_rule(&self, caller: &Caller, name: &str) -> Result<TopicRule, Error> {
        check_rule_name(name)?;
        registry::read(self.store(), |tx| tx.get_topic_rule(&caller.account, name).map_err(Error::from))?
            .ok_or_else(|| missing(name))
    }

    /// ListTopicRules, by name.
    pub fn list_topic_rules(
        &self,
        caller: &Caller,
        filter: &TopicRuleFilter,
        page: &KeyPageRequest,
    ) -> Result<KeyPage<TopicRule>, Error> {
        registry::read(self.store(), |tx| tx.list_topic_rules(&caller.account, filter, page).map_err(Error::from))
    }

    /// ReplaceTopicRule: everything but the name and the creation time.
    pub fn replace_topic_rule(&self, caller: &Caller, name: &str, payload: &TopicRulePayload) -> Result<(), Error> {
        check_rule_name(name)?;
        let checked = check_payload(payload)?;
        let now = self.now();
        registry::write(self.store(), |tx| {
            tx.lock_account(&caller.account)?;
            let existing = tx.get_topic_rule(&caller.account, name)?.ok_or_else(|| missing(name))?;
            check_destinations(&tx.enabled_destination_urls(&caller.account)?, payload)?;
            let replaced = TopicRule {
                sql: payload.sql.clone(),
                topic_pattern: checked.topic_pattern.clone(),
                description: payload.description.clone(),
                aws_iot_sql_version: SQL_VERSION.into(),
                rule_disabled: payload.rule_disabled,
                actions: checked.actions.clone(),
                error_action: checked.error_action.clone(),
                last_modified: now,
                ..existing
            };
            tx.replace_topic_rule(&replaced)?;
            Ok::<_, Error>(())
        })?;
        tracing::info!(account = %caller.account, rule = name, "topic rule replaced");
        Ok(())
    }

    /// DeleteTopicRule.
    pub fn delete_topic_rule(&self, caller: &Caller, name: &str) -> Result<(), Error> {
        check_rule_name(name)?;
        let now = self.now();
        let deleted = registry::write(self.store(), |tx| {
            tx.lock_account(&caller.account)?;
            tx.delete_topic_rule(&caller.account, name, now).map_err(Error::from)
        })?;
        if !deleted {
            return Err(missing(name));
        }
        tracing::info!(account = %caller.account, rule = name, "topic rule deleted");
        Ok(())
    }

    /// EnableTopicRule (`disabled` false) and DisableTopicRule (`disabled` true).
    pub fn set_topic_rule_disabled(&self, caller: &Caller, name: &str, disabled: bool) -> Result<(), Error> {
        check_rule_name(name)?;
        let now = self.now();
        let updated = registry::write(self.store(), |tx| {
            tx.lock_account(&caller.account)?;
            tx.set_topic_rule_disabled(&caller.account, name, disabled, now).map_err(Error::from)
        })?;
        if !updated {
            return Err(missing(name));
        }
        tracing::info!(account = %caller.account, rule = name, disabled, "topic rule switched");
        Ok(())
    }

    /// The enabled rules of an account, parsed and decoded, for the gateway's rules engine. A
    /// stored rule that no longer parses (it cannot happen through this module) is left out and
    /// logged.
    pub fn runnable_topic_rules(&self, account: &AccountId) -> Result<Vec<RunnableRule>, Error> {
        let (stored, destinations) = registry::read(self.store(), |tx| {
            Ok::<_, Error>((tx.enabled_topic_rules(account)?, tx.enabled_destination_urls(account)?))
        })?;
        let destinations: Arc<[String]> = destinations.into();
        let mut runnable = Vec::with_capacity(stored.len());
        for rule in stored {
            match decode(&rule, &destinations) {
                Ok(decoded) => runnable.push(decoded),
                Err(error) => tracing::error!(%account, rule = rule.name, %error, "stored topic rule is unusable"),
            }
        }
        Ok(runnable)
    }
}

/// Decodes the actions stored for a rule (the JSON text kept in the registry).
pub fn decode_actions(stored: &str) -> Result<Vec<RuleAction>, Error> {
    let json: Json =
        serde_json::from_str(stored).map_err(|error| Error::Internal(format!("stored actions: {error}")))?;
    let Json::Array(actions) = json else { return Err(Error::Internal("stored actions are not an array".into())) };
    actions.iter().map(decode_action).collect()
}

/// Decodes a stored error action.
pub fn decode_error_action(stored: &str) -> Result<RuleAction, Error> {
    let json: Json =
        serde_json::from_str(stored).map_err(|error| Error::Internal(format!("stored action: {error}")))?;
    decode_action(&json)
}

fn decode(rule: &TopicRule, destinations: &Arc<[String]>) -> Result<RunnableRule, Error> {
    let statement = certfleet_rules::Rule::parse(&rule.sql).map_err(|error| Error::SqlParse(error.to_string()))?;
    Ok(RunnableRule {
        name: rule.name.clone(),
        statement,
        actions: decode_actions(&rule.actions)?,
        error_action: rule.error_action.as_deref().map(decode_error_action).transpose()?,
        destinations: destinations.clone(),
    })
}

fn missing(name: &str) -> Error {
    Error::RuleNotFound(format!("the topic rule {name} does not exist"))
}

/// AWS's rule names: `^[a-zA-Z0-9_]+$`, 1 to 128 characters.
fn check_rule_name(name: &str) -> Result<(), Error> {
    let allowed = |b: u8| b.is_ascii_alphanumeric() || b == b'_';
    if (1..=128).contains(&name.len()) && name.bytes().all(allowed) {
        Ok(())
    } else {
        Err(Error::InvalidRequest(format!("ruleName must match ^[a-zA-Z0-9_]+$ (1 to 128 characters), got {name:?}")))
    }
}

/// A payload checked whole, ready to store.
struct Checked {
    topic_pattern: String,
    actions: String,
    error_action: Option<String>,
}

fn check_payload(payload: &TopicRulePayload) -> Result<Checked, Error> {
    match payload.aws_iot_sql_version.as_deref() {
        None | Some(SQL_VERSION) => {}
        Some(other) => {
            return Err(Error::InvalidRequest(format!(
                "awsIotSqlVersion {other:?} is not supported: certfleet runs {SQL_VERSION} only"
            )));
        }
    }
    if payload.description.as_ref().is_some_and(|description| description.len() > 2028) {
        return Err(Error::InvalidRequest("description is at most 2028 characters".into()));
    }
    let statement = certfleet_rules::Rule::parse(&payload.sql).map_err(|error| Error::SqlParse(error.to_string()))?;
    if payload.actions.is_empty() {
        return Err(Error::InvalidRequest("a topic rule needs at least one action".into()));
    }
    if payload.actions.len() > 10 {
        return Err(Error::InvalidRequest("a topic rule has at most 10 actions".into()));
    }
    let actions: Vec<Json> = payload.actions.iter().map(check_action).collect::<Result<_, _>>()?;
    let error_action = payload.error_action.as_ref().map(check_action).transpose()?;
    Ok(Checked {
        topic_pattern: statement.topic_filter().to_owned(),
        actions: Json::Array(actions).to_string(),
        error_action: error_action.map(|action| action.to_string()),
    })
}

/// Every http action (and error action) of `payload` must be under one of `destinations`, the
/// confirmation URLs of the account's ENABLED destinations.
fn check_destinations(destinations: &[String], payload: &TopicRulePayload) -> Result<(), Error> {
    for action in payload.actions.iter().chain(payload.error_action.as_ref()) {
        match action {
            RuleAction::Http { url, .. } => {
                if !destinations.iter().any(|prefix| crate::destinations::url_under(url, prefix)) {
                    return Err(Error::InvalidRequest(format!(
                        "http url {url:?} is not under an ENABLED topic rule destination: create one \
                         (CreateTopicRuleDestination) and confirm it first"
                    )));
                }
            }
            RuleAction::Republish { .. } | RuleAction::Unsupported(_) => {}
        }
    }
    Ok(())
}

/// Checks one action and gives its stored form.
fn check_action(action: &RuleAction) -> Result<Json, Error> {
    match action {
        RuleAction::Republish { topic, qos, role_arn } => {
            check_republish_topic(topic)?;
            if *qos > 1 {
                return Err(Error::InvalidRequest(format!("republish qos must be 0 or 1, got {qos}")));
            }
            if role_arn.is_empty() {
                return Err(Error::InvalidRequest("republish needs a roleArn".into()));
            }
            Ok(json!({"republish": {"topic": topic, "qos": qos, "roleArn": role_arn}}))
        }
        RuleAction::Http { url, headers } => {
            check_url_syntax(url, "http url")?;
            if headers.len() > 100 {
                return Err(Error::InvalidRequest("an http action has at most 100 headers".into()));
            }
            for (key, _) in headers {
                let token = |b: u8| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b);
                if key.is_empty() || !key.bytes().all(token) {
                    return Err(Error::InvalidRequest(format!("http header name {key:?} is not valid")));
                }
            }
            let headers: Vec<Json> = headers.iter().map(|(key, value)| json!({"key": key, "value": value})).collect();
            Ok(json!({"http": {"url": url, "headers": headers}}))
        }
        RuleAction::Unsupported(kind) => Err(Error::InvalidRequest(format!(
            "the {kind} action is not supported by certfleet (supported: republish, http)"
        ))),
    }
}

/// A republish topic: a topic name (no wildcards), not in `$aws/` except the shadow topics
/// `$aws/things/...`, and no substitution templates (`${...}` is not supported).
fn check_republish_topic(topic: &str) -> Result<(), Error> {
    let refuse = |why: &str| Err(Error::InvalidRequest(format!("republish topic {topic:?} {why}")));
    if topic.is_empty() || topic.len() > 256 {
        return refuse("must be 1 to 256 characters");
    }
    if topic.contains(['+', '#', '\0']) {
        return refuse("must not contain wildcards");
    }
    if topic.contains("${") {
        return refuse("uses a substitution template, which certfleet does not support");
    }
    if topic.starts_with('$') && !topic.starts_with("$aws/things/") {
        return refuse("is reserved (only $aws/things/... may be republished to)");
    }
    Ok(())
}

/// An http URL's syntax: `https://` or `http://`, a host, no user information, at most 2000
/// characters. Whether certfleet may connect there is the egress policy's decision, at send time.
pub(crate) fn check_url_syntax(url: &str, what: &str) -> Result<(), Error> {
    let refuse = |why: &str| Err(Error::InvalidRequest(format!("{what} {url:?} {why}")));
    if url.len() > 2000 {
        return refuse("is longer than 2000 characters");
    }
    let Some(rest) = url.strip_prefix("https://").or_else(|| url.strip_prefix("http://")) else {
        return refuse("must start with https://");
    };
    let authority = rest.split(['/', '?', '#']).next().unwrap_or_default();
    if authority.is_empty() || authority.contains('@') {
        return refuse("must name a host (and no user information)");
    }
    if url.contains('#') || url.bytes().any(|b| b.is_ascii_control() || b == b' ') {
        return refuse("must not contain a fragment, spaces or control characters");
    }
    Ok(())
}

fn decode_action(json: &Json) -> Result<RuleAction, Error> {
    let bad = || Error::Internal(format!("stored action {json} is not understood"));
    if let Some(republish) = json.get("republish") {
        let text = |key: &str| republish.get(key).and_then(Json::as_str).map(str::to_owned).ok_or_else(bad);
        let qos = republish.get("qos").and_then(Json::as_u64).and_then(|qos| u8::try_from(qos).ok()).ok_or_else(bad)?;
        return Ok(RuleAction::Republish { topic: text("topic")?, qos, role_arn: text("roleArn")? });
    }
    if let Some(http) = json.get("http") {
        let url = http.get("url").and_then(Json::as_str).ok_or_else(bad)?.to_owned();
        let headers = http
            .get("headers")
            .and_then(Json::as_array)
            .map(|headers| {
                headers
                    .iter()
                    .map(|header| {
                        let key = header.get("key").and_then(Json::as_str).ok_or_else(bad)?;
                        let value = header.get("value").and_then(Json::as_str).ok_or_else(bad)?;
                        Ok((key.to_owned(), value.to_owned()))
                    })
                    .collect::<Result<Vec<_>, Error>>()
            })
            .transpose()?
            .unwrap_or_default();
        return Ok(RuleAction::Http { url, headers });
    }
    Err(bad())
}
