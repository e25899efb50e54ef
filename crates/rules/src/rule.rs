//! A parsed rule and its evaluation against one message.

use std::cell::Cell;
use std::fmt;

use serde_json::{Map, Value as Json};

use crate::ast::{Expr, Select, SelectItem};
use crate::error::{EvalError, ParseError};
use crate::eval::{Scope, eval, json_size, size};
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
    /// The bounds of the evaluation.
    pub limits: Limits,
}

/// The bounds of one evaluation: whatever a statement and a payload ask, evaluating them builds
/// no value larger than `max_value_bytes`, takes at most `max_steps`, and recurses at most
/// `max_depth` (statement) and `max_payload_depth` (payload JSON) levels. Past a bound the
/// evaluation ends with an [`EvalError`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// The largest value built during an evaluation, the output included, in bytes (a string's
    /// UTF-8 length, an array's or object's JSON text). Default 128 KiB, AWS IoT's message
    /// size limit: no rule can produce a message a device could not have sent.
    pub max_value_bytes: usize,
    /// Steps one evaluation may take: each node of the statement evaluated costs one, and each
    /// KiB a node builds one more. Default 10,000.
    pub max_steps: u64,
    /// How deep evaluation may recurse. Default 128 (the parser already refuses statements
    /// nesting deeper than 100).
    pub max_depth: usize,
    /// How deep the payload's JSON may nest (arrays and objects) when the statement reads it;
    /// deeper is [`EvalError::PayloadTooDeep`]. Default 64; values above 128 act as 128 (the
    /// JSON reader's own bound, past which the payload reads as not JSON).
    pub max_payload_depth: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits { max_value_bytes: 128 * 1024, max_steps: 10_000, max_depth: 128, max_payload_depth: 64 }
    }
}

impl fmt::Debug for Context<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Context")
            .field("topic", &self.topic)
            .field("client_id", &self.client_id)
            .field("principal", &self.principal)
            .field("timestamp_ms", &self.timestamp_ms)
            .field("limits", &self.limits)
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

/// Why a rule gave its actions nothing for a message: it did not apply, or its evaluation failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NoOutput {
    /// The rule does not apply to the message: nothing to report.
    Skipped(Skipped),
    /// The evaluation hit a bound: the caller reports it (AWS runs the error action).
    Failed(EvalError),
}

impl From<Skipped> for NoOutput {
    fn from(skipped: Skipped) -> Self {
        NoOutput::Skipped(skipped)
    }
}

impl From<EvalError> for NoOutput {
    fn from(error: EvalError) -> Self {
        NoOutput::Failed(error)
    }
}

impl fmt::Display for NoOutput {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            NoOutput::Skipped(skipped) => skipped.fmt(f),
            NoOutput::Failed(error) => error.fmt(f),
        }
    }
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
    /// statement reads it at all), evaluates `WHERE` and builds the output, within the context's
    /// [`Limits`].
    pub fn evaluate<'p>(&self, context: &Context<'_>, payload: &'p [u8]) -> Result<Output<'p>, NoOutput> {
        self.evaluate_counting_steps(context, payload).0
    }

    /// [`evaluate`](Self::evaluate), and the steps it took (for a caller that budgets them).
    pub fn evaluate_counting_steps<'p>(
        &self,
        context: &Context<'_>,
        payload: &'p [u8],
    ) -> (Result<Output<'p>, NoOutput>, u64) {
        if !self.matches_topic(context.topic) {
            return (Err(Skipped::TopicMismatch.into()), 0);
        }
        let limits = context.limits;
        let json = if self.reads_payload {
            if nests_deeper(payload, limits.max_payload_depth) {
                return (Err(EvalError::PayloadTooDeep { limit: limits.max_payload_depth }.into()), 0);
            }
            serde_json::from_slice::<Json>(payload).ok()
        } else {
            None
        };
        let (evaluated, steps) = {
            let scope =
                Scope { context, raw: payload, payload: json.as_ref(), steps: Cell::new(0), depth: Cell::new(0) };
            (self.evaluate_in(&scope, payload), scope.steps.get())
        };
        let output = match evaluated {
            Ok(Some(output)) => output,
            // `SELECT *` alone: the payload as it was read, or as it was received.
            Ok(None) => json.map_or(Output::Raw(payload), Output::Json),
            Err(error) => return (Err(error), steps),
        };
        let size = match &output {
            Output::Json(json) => json_size(json, limits.max_value_bytes),
            Output::Raw(bytes) => bytes.len(),
        };
        if size > limits.max_value_bytes {
            return (Err(EvalError::OutputTooLarge { limit: limits.max_value_bytes }.into()), steps);
        }
        (Ok(output), steps)
    }

    /// `WHERE` and `SELECT`; `None` for `SELECT *` alone, which is the payload itself.
    fn evaluate_in<'p>(&self, scope: &Scope<'_>, payload: &'p [u8]) -> Result<Option<Output<'p>>, NoOutput> {
        if let Some(condition) = &self.condition {
            match eval(condition, scope)? {
                Value::Bool(true) => {}
                Value::Bool(false) => return Err(Skipped::ConditionFalse.into()),
                _ => return Err(Skipped::ConditionUndefined.into()),
            }
        }
        Ok(Some(match &self.select {
            Select::Value(Expr::Payload) if scope.payload.is_none() => Output::Raw(payload),
            Select::Value(expr) => eval(expr, scope)?.into_json().map_or(Output::Raw(&[]), Output::Json),
            Select::Items(items) => match items.as_slice() {
                [SelectItem::Wildcard] => return Ok(None),
                items => Output::Json(Json::Object(self.object(items, scope)?)),
            },
        }))
    }

    /// The output object of `SELECT items`, its size summed as the items are evaluated.
    fn object(&self, items: &[SelectItem], scope: &Scope<'_>) -> Result<Map<String, Json>, EvalError> {
        let limit = scope.context.limits.max_value_bytes;
        let mut object = Map::new();
        let mut total = 1usize;
        for item in items {
            match item {
                SelectItem::Wildcard => {
                    if let Some(Json::Object(members)) = scope.payload {
                        total = total.saturating_add(json_size(members, limit));
                        scope.check(total)?;
                        object.extend(members.iter().map(|(key, value)| (key.clone(), value.clone())));
                    }
                }
                SelectItem::Field { expr, name } => {
                    let value = eval(expr, scope)?;
                    total = total.saturating_add(name.len()).saturating_add(size(&value, limit)).saturating_add(4);
                    scope.check(total)?;
                    if let Some(value) = value.into_json() {
                        object.insert(name.clone(), value);
                    }
                }
            }
        }
        scope.bound(total)?;
        Ok(object)
    }
}

/// Whether `payload`, if it is JSON (its first non-blank byte opens an array or an object), nests
/// arrays and objects deeper than `max`: a scan of the bytes, before the JSON reader recurses.
fn nests_deeper(payload: &[u8], max: usize) -> bool {
    let Some(first) = payload.iter().find(|byte| !byte.is_ascii_whitespace()) else { return false };
    if !matches!(first, b'[' | b'{') {
        return false;
    }
    let (mut depth, mut in_string, mut escaped) = (0usize, false, false);
    for byte in payload {
        if in_string {
            match (escaped, byte) {
                (true, _) => escaped = false,
                (false, b'\\') => escaped = true,
                (false, b'"') => in_string = false,
                (false, _) => {}
            }
            continue;
        }
        match byte {
            b'"' => in_string = true,
            b'[' | b'{' => {
                depth += 1;
                if depth > max {
                    return true;
                }
            }
            b']' | b'}' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    false
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
