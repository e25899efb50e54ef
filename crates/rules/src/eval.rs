//! Evaluation of an expression against one message: the payload (parsed once per message), its
//! raw bytes and the [`Context`], within the [`Limits`] the context carries.
//!
//! Every node evaluated costs a step, and every KiB a node builds one more; a value is never
//! built larger than [`Limits::max_value_bytes`]: its size is computed from its parts first, and
//! an evaluation that would exceed a bound ends with an [`EvalError`] instead.

use std::borrow::Cow;
use std::cell::Cell;

use base64::Engine as _;
use serde_json::Value as Json;

use crate::ast::{BinaryOp, Expr};
use crate::error::EvalError;
use crate::functions::Function;
use crate::rule::{Context, Limits};
use crate::value::{self, Value};

/// What an expression can read, and what its evaluation has spent so far.
pub(crate) struct Scope<'a> {
    pub(crate) context: &'a Context<'a>,
    /// The payload as received.
    pub(crate) raw: &'a [u8],
    /// The payload as JSON; `None` when it is not JSON (or was not parsed: the statement never
    /// reads it).
    pub(crate) payload: Option<&'a Json>,
    pub(crate) steps: Cell<u64>,
    pub(crate) depth: Cell<usize>,
}

impl Scope<'_> {
    fn limits(&self) -> Limits {
        self.context.limits
    }

    /// Spends `steps` of the evaluation's budget.
    fn spend(&self, steps: u64) -> Result<(), EvalError> {
        let spent = self.steps.get().saturating_add(steps);
        self.steps.set(spent);
        if spent > self.limits().max_steps {
            return Err(EvalError::StepBudgetExceeded { budget: self.limits().max_steps });
        }
        Ok(())
    }

    /// Checks that a value of `size` bytes may be built. Called with the would-be size, before
    /// anything is allocated.
    pub(crate) fn check(&self, size: usize) -> Result<(), EvalError> {
        let limit = self.limits().max_value_bytes;
        if size > limit {
            return Err(EvalError::OutputTooLarge { limit });
        }
        Ok(())
    }

    /// [`check`](Self::check), and charges a step per KiB of the value about to be built.
    pub(crate) fn bound(&self, size: usize) -> Result<(), EvalError> {
        self.check(size)?;
        self.spend(u64::try_from(size / 1024).unwrap_or(u64::MAX))
    }
}

/// The size of a value in bytes, as far as the bounds go: its JSON text, counted up to one byte
/// past the limit and never built (a string counts its UTF-8 length and quotes, not escapes; a
/// Decimal 24).
pub(crate) fn size(value: &Value<'_>, limit: usize) -> usize {
    match value {
        Value::Undefined => 0,
        Value::Null | Value::Bool(true) => 4,
        Value::Bool(false) => 5,
        Value::Int(integer) => {
            integer.unsigned_abs().checked_ilog10().map_or(1, |digits| digits as usize + 1) + usize::from(*integer < 0)
        }
        Value::Decimal(_) => 24,
        Value::String(text) => text.len().saturating_add(2),
        Value::Array(array) => json_size(array.as_ref(), limit),
        Value::Object(object) => json_size(object.as_ref(), limit),
    }
}

/// The length of `json`'s compact JSON text, counting stopped one byte past `limit`.
pub(crate) fn json_size<T: serde::Serialize + ?Sized>(json: &T, limit: usize) -> usize {
    let mut counter = Counter { count: 0, limit };
    match serde_json::to_writer(&mut counter, json) {
        Ok(()) => counter.count,
        Err(_) => limit.saturating_add(1),
    }
}

/// A writer that only counts, and fails once past its limit.
struct Counter {
    count: usize,
    limit: usize,
}

impl std::io::Write for Counter {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.count = self.count.saturating_add(bytes.len());
        if self.count > self.limit {
            return Err(std::io::Error::other("over the limit"));
        }
        Ok(bytes.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

pub(crate) fn eval<'a>(expr: &'a Expr, scope: &Scope<'a>) -> Result<Value<'a>, EvalError> {
    scope.spend(1)?;
    let depth = scope.depth.get() + 1;
    if depth > scope.limits().max_depth {
        return Err(EvalError::TooDeep { limit: scope.limits().max_depth });
    }
    scope.depth.set(depth);
    let value = node(expr, scope);
    scope.depth.set(depth - 1);
    value
}

fn node<'a>(expr: &'a Expr, scope: &Scope<'a>) -> Result<Value<'a>, EvalError> {
    let limit = scope.limits().max_value_bytes;
    Ok(match expr {
        Expr::Literal(json) => Value::from_json(json),
        Expr::Payload => scope.payload.map_or(Value::Undefined, Value::from_json),
        Expr::Field(name) => {
            scope.payload.and_then(|payload| payload.get(name)).map_or(Value::Undefined, Value::from_json)
        }
        Expr::Member(inner, name) => value::member(eval(inner, scope)?, name),
        Expr::Index(inner, index) => value::element(eval(inner, scope)?, eval(index, scope)?),
        Expr::Array(elements) => {
            let mut values = Vec::with_capacity(elements.len());
            let mut total = 1usize;
            for element in elements {
                let value = eval(element, scope)?;
                total = total.saturating_add(size(&value, limit)).saturating_add(1);
                scope.check(total)?;
                values.push(value);
            }
            scope.bound(total)?;
            Value::Array(Cow::Owned(values.into_iter().filter_map(Value::into_json).collect()))
        }
        Expr::Object(members) => {
            let mut values = Vec::with_capacity(members.len());
            let mut total = 1usize;
            for (key, member) in members {
                let value = eval(member, scope)?;
                total = total.saturating_add(key.len()).saturating_add(size(&value, limit)).saturating_add(4);
                scope.check(total)?;
                values.push((key, value));
            }
            scope.bound(total)?;
            Value::Object(Cow::Owned(
                values.into_iter().filter_map(|(key, value)| Some((key.clone(), value.into_json()?))).collect(),
            ))
        }
        Expr::Unary(op, operand) => value::unary(*op, eval(operand, scope)?),
        Expr::Binary(op, left, right) => {
            let (left, right) = (eval(left, scope)?, eval(right, scope)?);
            if let (BinaryOp::Add, Value::String(first), Value::String(second)) = (op, &left, &right) {
                scope.bound(first.len().saturating_add(second.len()))?;
            }
            value::binary(*op, left, right)
        }
        Expr::Call(function, arguments) => apply(*function, arguments, scope)?.unwrap_or(Value::Undefined),
        Expr::Cast(operand, target) => value::cast(eval(operand, scope)?, *target),
        Expr::Case { operand, branches, otherwise } => {
            let subject = match operand {
                Some(operand) => Some(eval(operand, scope)?),
                None => None,
            };
            for (when, then) in branches {
                let candidate = eval(when, scope)?;
                let chosen = match &subject {
                    Some(subject) => value::binary(BinaryOp::Equal, subject.clone(), candidate) == Value::Bool(true),
                    None => candidate == Value::Bool(true),
                };
                if chosen {
                    return eval(then, scope);
                }
            }
            match otherwise {
                Some(otherwise) => eval(otherwise, scope)?,
                None => Value::Undefined,
            }
        }
    })
}

/// A function call; `Ok(None)` stands for Undefined. The argument count was checked when the
/// statement was parsed; a call that does not match it anyway gives Undefined, like a call with
/// arguments of the wrong type.
fn apply<'a>(function: Function, arguments: &'a [Expr], scope: &Scope<'a>) -> Result<Option<Value<'a>>, EvalError> {
    let context = scope.context;
    let text = |argument: &'a Expr| eval(argument, scope).map(Value::into_text);
    Ok(match (function, arguments) {
        (Function::ClientId, []) => Some(Value::String(Cow::Borrowed(context.client_id))),
        (Function::Principal, []) => context.principal.map(|principal| Value::String(Cow::Borrowed(principal))),
        (Function::Timestamp, []) => Some(Value::Int(context.timestamp_ms)),
        (Function::NewUuid, []) => Some(Value::String(Cow::Owned(format_uuid((context.new_uuid)())))),
        (Function::Topic, []) => Some(Value::String(Cow::Borrowed(context.topic))),
        (Function::Topic, [level]) => eval(level, scope)?
            .as_integer()
            .and_then(|level| usize::try_from(level).ok()?.checked_sub(1))
            .and_then(|index| context.topic.split('/').nth(index))
            .map(|level| Value::String(Cow::Borrowed(level))),
        (Function::Get, [container, index]) => Some(value::element(eval(container, scope)?, eval(index, scope)?)),
        (Function::Encode, [subject, scheme]) => {
            let scheme = eval(scheme, scope)?;
            encode(subject, scheme, scope)?
        }
        (Function::Substring, [subject, start, rest @ ..]) => {
            let subject = text(subject)?;
            let start = eval(start, scope)?.as_integer();
            let end = match rest {
                [end] => Some(eval(end, scope)?.as_integer()),
                _ => None,
            };
            match (subject, start, end) {
                (Some(subject), Some(start), None) => substring(subject, start, None),
                (Some(subject), Some(start), Some(Some(end))) => substring(subject, start, Some(end)),
                _ => None,
            }
        }
        (Function::Upper, [subject]) => match text(subject)? {
            Some(subject) => {
                scope.bound(subject.chars().map(|c| c.to_uppercase().map(char::len_utf8).sum::<usize>()).sum())?;
                Some(Value::String(Cow::Owned(subject.to_uppercase())))
            }
            None => None,
        },
        (Function::Lower, [subject]) => match text(subject)? {
            Some(subject) => {
                scope.bound(subject.chars().map(|c| c.to_lowercase().map(char::len_utf8).sum::<usize>()).sum())?;
                Some(Value::String(Cow::Owned(subject.to_lowercase())))
            }
            None => None,
        },
        (Function::Length, [subject]) => {
            text(subject)?.and_then(|subject| i64::try_from(subject.chars().count()).ok()).map(Value::Int)
        }
        (Function::StartsWith, [subject, prefix]) => match (text(subject)?, text(prefix)?) {
            (Some(subject), Some(prefix)) => Some(Value::Bool(subject.starts_with(&*prefix))),
            _ => None,
        },
        (Function::EndsWith, [subject, suffix]) => match (text(subject)?, text(suffix)?) {
            (Some(subject), Some(suffix)) => Some(Value::Bool(subject.ends_with(&*suffix))),
            _ => None,
        },
        (Function::Cardinality, [subject]) => match eval(subject, scope)? {
            Value::Array(array) => i64::try_from(array.len()).ok().map(Value::Int),
            _ => None,
        },
        (Function::IsNull, [subject]) => Some(Value::Bool(eval(subject, scope)? == Value::Null)),
        (Function::IsUndefined, [subject]) => Some(Value::Bool(eval(subject, scope)? == Value::Undefined)),
        (Function::Abs, [subject]) => Some(value::abs(eval(subject, scope)?)),
        (Function::Concat, _) => concat(arguments, scope)?,
        _ => None,
    })
}

/// `encode(subject, 'base64')`: `*` encodes the payload's bytes as received, a string its UTF-8
/// bytes, any other defined value its JSON text.
fn encode<'a>(subject: &'a Expr, scheme: Value<'_>, scope: &Scope<'a>) -> Result<Option<Value<'a>>, EvalError> {
    if scheme != Value::String(Cow::Borrowed("base64")) {
        return Ok(None);
    }
    let engine = &base64::engine::general_purpose::STANDARD;
    let base64_len = |bytes: usize| bytes.div_ceil(3).saturating_mul(4);
    let encoded = if *subject == Expr::Payload {
        scope.bound(base64_len(scope.raw.len()))?;
        engine.encode(scope.raw)
    } else {
        match eval(subject, scope)? {
            Value::String(text) => {
                scope.bound(base64_len(text.len()))?;
                engine.encode(text.as_bytes())
            }
            other => {
                let Some(json) = other.into_json() else { return Ok(None) };
                let limit = scope.limits().max_value_bytes;
                scope.bound(base64_len(json_size(&json, limit)))?;
                engine.encode(json.to_string())
            }
        }
    };
    Ok(Some(Value::String(Cow::Owned(encoded))))
}

/// `substring(text, start[, end])`: characters `start..end` (from 0, `end` exclusive, both
/// clamped to the text; an `end` before `start` gives the empty string).
fn substring(text: Cow<'_, str>, start: i64, end: Option<i64>) -> Option<Value<'_>> {
    let length = text.chars().count();
    let clamp = |position: i64| usize::try_from(position.max(0)).map_or(length, |position| position.min(length));
    let start = clamp(start);
    let end = end.map_or(length, clamp).max(start);
    let byte = |position: usize| text.char_indices().nth(position).map_or(text.len(), |(byte, _)| byte);
    let (from, to) = (byte(start), byte(end));
    Some(Value::String(match text {
        Cow::Borrowed(text) => Cow::Borrowed(&text[from..to]),
        Cow::Owned(text) => Cow::Owned(text[from..to].to_owned()),
    }))
}

/// `concat(...)`: with an array among the arguments, one array of their elements (a non-array
/// argument is one element); otherwise the arguments' text (strings, numbers, Booleans)
/// concatenated. Undefined (or Null, for text) among them gives Undefined. The result's size is
/// summed as the arguments are evaluated, and checked before it is built.
fn concat<'a>(arguments: &'a [Expr], scope: &Scope<'a>) -> Result<Option<Value<'a>>, EvalError> {
    let limit = scope.limits().max_value_bytes;
    let mut values = Vec::with_capacity(arguments.len());
    let mut total = 0usize;
    for argument in arguments {
        let value = eval(argument, scope)?;
        let grows = match &value {
            Value::String(text) => text.len(),
            other => size(other, limit),
        };
        total = total.saturating_add(grows);
        scope.check(total)?;
        values.push(value);
    }
    scope.bound(total)?;
    if values.iter().any(|value| matches!(value, Value::Array(_))) {
        let mut joined = Vec::new();
        for value in values {
            match value {
                Value::Array(array) => joined.extend(array.into_owned()),
                other => match other.into_json() {
                    Some(json) => joined.push(json),
                    None => return Ok(None),
                },
            }
        }
        return Ok(Some(Value::Array(Cow::Owned(joined))));
    }
    let mut joined = String::new();
    for value in values {
        let Some(text) = value.into_text() else { return Ok(None) };
        joined.push_str(&text);
    }
    Ok(Some(Value::String(Cow::Owned(joined))))
}

const HEX_DIGITS: &[u8; 16] = b"0123456789abcdef";

/// 128 bits from the context's source as a version 4 UUID (`xxxxxxxx-xxxx-4xxx-yxxx-xxxxxxxxxxxx`).
fn format_uuid(bits: u128) -> String {
    let mut bytes = bits.to_be_bytes();
    bytes[6] = (bytes[6] & 0x0f) | 0x40;
    bytes[8] = (bytes[8] & 0x3f) | 0x80;
    let mut hex = String::with_capacity(32);
    for byte in bytes {
        hex.push(char::from(HEX_DIGITS[usize::from(byte >> 4)]));
        hex.push(char::from(HEX_DIGITS[usize::from(byte & 0x0f)]));
    }
    format!("{}-{}-{}-{}-{}", &hex[..8], &hex[8..12], &hex[12..16], &hex[16..20], &hex[20..])
}
