//! A parsed rule and its evaluation against one message.

use std::fmt;

use serde_json::{Map, Value as Json};

use crate::ast::{Expr, Select, SelectItem};
use crate::error::ParseError;
use crate::eval::{Scope, eval};
use crate::value::Value;
use crate::{parser, topic};

/// A rule's SQL statement, parsed and checked once, evaluated per message.
#[derive(Clone, Debug, PartialEq)]
pub struct Rule {
    sql: String,
    select: Select,
    topic_filter: String,
    condition: Option<Expr>,
    /// Whether anything in the statement reads the payload; if not, it is never parsed.
    reads_payload: bool,
}

/// What a message is evaluated with, besides its payload. Nothing here is read from a clock or a
/// random source by the crate itself.
pub struct Context<'a> {
    /// The topic the message was published to (`topic()`, and matched against `FROM`).
    pub topic: &'a str,
    /// The publisher's MQTT client id (`clientid()`).
    pub client_id: &'a str,
    /// The publisher's identity (`principal()`): for a device with an X.509 certificate, the
    /// certificate id; `None` makes `principal()` Undefined.
    pub principal: Option<&'a str>,
    /// When the message was received, in milliseconds since the Unix epoch (`timestamp()`).
    pub timestamp_ms: i64,
    /// 128 random bits per call (`newuuid()`, which sets the version and variant bits). `Sync`
    /// so that a context can live in a task that moves between threads.
    pub new_uuid: &'a (dyn Fn() -> u128 + Sync),
}

impl fmt::Debug for Context<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Context")
            .field("topic", &self.topic)
            .field("client_id", &self.client_id)
            .field("principal", &self.principal)
            .field("timestamp_ms", &self.timestamp_ms)
            .finish_non_exhaustive()
    }
}

/// The result of a rule for a message: what its actions receive.
#[derive(Clone, Debug, PartialEq)]
pub enum Output<'p> {
    /// A JSON value: an object for `SELECT items`, any value for `SELECT VALUE`.
    Json(Json),
    /// Bytes as they are: the payload itself when it is not JSON and the statement is
    /// `SELECT *` (or `SELECT VALUE *`), or nothing when `SELECT VALUE` gives Undefined.
    Raw(&'p [u8]),
}

impl Output<'_> {
    /// The output as a message payload: JSON text, or the raw bytes.
    pub fn to_bytes(&self) -> Vec<u8> {
        match self {
            Output::Json(json) => json.to_string().into_bytes(),
            Output::Raw(bytes) => bytes.to_vec(),
        }
    }
}

/// Why a rule produced nothing for a message.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Skipped {
    /// The message's topic does not match the `FROM` filter.
    TopicMismatch,
    /// `WHERE` is false.
    ConditionFalse,
    /// `WHERE` is Undefined (it reads a member the payload lacks, say) or not a Boolean.
    ConditionUndefined,
}

impl fmt::Display for Skipped {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Skipped::TopicMismatch => "the topic does not match the rule's topic filter",
            Skipped::ConditionFalse => "the WHERE condition is false",
            Skipped::ConditionUndefined => "the WHERE condition is undefined or not a boolean",
        })
    }
}

impl Rule {
    /// Parses and checks a statement: the grammar, the functions and their argument counts, the
    /// topic filter.
    pub fn parse(sql: &str) -> Result<Rule, ParseError> {
        let statement = parser::parse(sql)?;
        let reads_payload = match &statement.select {
            Select::Value(expr) => reads_payload(expr),
            Select::Items(items) => items.iter().any(|item| match item {
                SelectItem::Wildcard => true,
                SelectItem::Field { expr, .. } => reads_payload(expr),
            }),
        } || statement.condition.as_ref().is_some_and(reads_payload);
        Ok(Rule {
            sql: sql.to_owned(),
            select: statement.select,
            topic_filter: statement.topic_filter,
            condition: statement.condition,
            reads_payload,
        })
    }

    /// The statement as written.
    pub fn sql(&self) -> &str {
        &self.sql
    }

    /// The `FROM` topic filter.
    pub fn topic_filter(&self) -> &str {
        &self.topic_filter
    }

    /// The `SELECT` clause.
    pub fn select(&self) -> &Select {
        &self.select
    }

    /// The `WHERE` condition, if any.
    pub fn condition(&self) -> Option<&Expr> {
        self.condition.as_ref()
    }

    /// Whether a message on `topic` is for this rule (MQTT matching of the `FROM` filter).
    pub fn matches_topic(&self, topic: &str) -> bool {
        topic::matches(&self.topic_filter, topic)
    }

    /// Evaluates the rule for one message: checks the topic, reads the payload as JSON (when the
    /// statement reads it at all), evaluates `WHERE` and builds the output.
    pub fn evaluate<'p>(&self, context: &Context<'_>, payload: &'p [u8]) -> Result<Output<'p>, Skipped> {
        if !self.matches_topic(context.topic) {
            return Err(Skipped::TopicMismatch);
        }
        let json = if self.reads_payload { serde_json::from_slice::<Json>(payload).ok() } else { None };
        let scope = Scope { context, raw: payload, payload: json.as_ref() };
        if let Some(condition) = &self.condition {
            match eval(condition, &scope) {
                Value::Bool(true) => {}
                Value::Bool(false) => return Err(Skipped::ConditionFalse),
                _ => return Err(Skipped::ConditionUndefined),
            }
        }
        let items = match &self.select {
            Select::Value(Expr::Payload) if scope.payload.is_none() => return Ok(Output::Raw(payload)),
            Select::Value(expr) => return Ok(eval(expr, &scope).into_json().map_or(Output::Raw(&[]), Output::Json)),
            Select::Items(items) => items,
        };
        if let [SelectItem::Wildcard] = items.as_slice() {
            return Ok(match json {
                Some(json) => Output::Json(json),
                None => Output::Raw(payload),
            });
        }
        let mut object = Map::new();
        for item in items {
            match item {
                SelectItem::Wildcard => {
                    if let Some(Json::Object(members)) = scope.payload {
                        object.extend(members.iter().map(|(key, value)| (key.clone(), value.clone())));
                    }
                }
                SelectItem::Field { expr, name } => {
                    if let Some(value) = eval(expr, &scope).into_json() {
                        object.insert(name.clone(), value);
                    }
                }
            }
        }
        Ok(Output::Json(Json::Object(object)))
    }
}

/// Whether evaluating `expr` may read the payload.
fn reads_payload(expr: &Expr) -> bool {
    match expr {
        Expr::Payload | Expr::Field(_) => true,
        Expr::Literal(_) => false,
        Expr::Member(inner, _) | Expr::Unary(_, inner) | Expr::Cast(inner, _) => reads_payload(inner),
        Expr::Index(left, right) | Expr::Binary(_, left, right) => reads_payload(left) || reads_payload(right),
        Expr::Array(elements) | Expr::Call(_, elements) => elements.iter().any(reads_payload),
        Expr::Object(members) => members.iter().any(|(_, member)| reads_payload(member)),
        Expr::Case { operand, branches, otherwise } => {
            operand.as_deref().is_some_and(reads_payload)
                || branches.iter().any(|(when, then)| reads_payload(when) || reads_payload(then))
                || otherwise.as_deref().is_some_and(reads_payload)
        }
    }
}
