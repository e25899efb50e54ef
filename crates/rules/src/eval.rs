//! Evaluation of an expression against one message: the payload (parsed once per message), its
//! raw bytes and the [`Context`].

use std::borrow::Cow;

use base64::Engine as _;
use serde_json::Value as Json;

use crate::ast::{BinaryOp, Expr};
use crate::functions::Function;
use crate::rule::Context;
use crate::value::{self, Value};

/// What an expression can read.
pub(crate) struct Scope<'a> {
    pub(crate) context: &'a Context<'a>,
    /// The payload as received.
    pub(crate) raw: &'a [u8],
    /// The payload as JSON; `None` when it is not JSON (or was not parsed: the statement never
    /// reads it).
    pub(crate) payload: Option<&'a Json>,
}

pub(crate) fn eval<'a>(expr: &'a Expr, scope: &Scope<'a>) -> Value<'a> {
    match expr {
        Expr::Literal(json) => Value::from_json(json),
        Expr::Payload => scope.payload.map_or(Value::Undefined, Value::from_json),
        Expr::Field(name) => {
            scope.payload.and_then(|payload| payload.get(name)).map_or(Value::Undefined, Value::from_json)
        }
        Expr::Member(inner, name) => value::member(eval(inner, scope), name),
        Expr::Index(inner, index) => value::element(eval(inner, scope), eval(index, scope)),
        Expr::Array(elements) => {
            Value::Array(Cow::Owned(elements.iter().filter_map(|element| eval(element, scope).into_json()).collect()))
        }
        Expr::Object(members) => Value::Object(Cow::Owned(
            members.iter().filter_map(|(key, member)| Some((key.clone(), eval(member, scope).into_json()?))).collect(),
        )),
        Expr::Unary(op, operand) => value::unary(*op, eval(operand, scope)),
        Expr::Binary(op, left, right) => value::binary(*op, eval(left, scope), eval(right, scope)),
        Expr::Call(function, arguments) => call(*function, arguments, scope),
        Expr::Cast(operand, target) => value::cast(eval(operand, scope), *target),
        Expr::Case { operand, branches, otherwise } => {
            let subject = operand.as_ref().map(|operand| eval(operand, scope));
            for (when, then) in branches {
                let candidate = eval(when, scope);
                let chosen = match &subject {
                    Some(subject) => value::binary(BinaryOp::Equal, subject.clone(), candidate) == Value::Bool(true),
                    None => candidate == Value::Bool(true),
                };
                if chosen {
                    return eval(then, scope);
                }
            }
            otherwise.as_ref().map_or(Value::Undefined, |otherwise| eval(otherwise, scope))
        }
    }
}

/// A function call. The argument count was checked when the statement was parsed; a call that
/// does not match it anyway gives Undefined, like a call with arguments of the wrong type.
fn call<'a>(function: Function, arguments: &'a [Expr], scope: &Scope<'a>) -> Value<'a> {
    apply(function, arguments, scope).unwrap_or(Value::Undefined)
}

/// [`call`], `None` standing for Undefined.
fn apply<'a>(function: Function, arguments: &'a [Expr], scope: &Scope<'a>) -> Option<Value<'a>> {
    let context = scope.context;
    let text = |argument: &'a Expr| eval(argument, scope).into_text();
    match (function, arguments) {
        (Function::ClientId, []) => Some(Value::String(Cow::Borrowed(context.client_id))),
        (Function::Principal, []) => context.principal.map(|principal| Value::String(Cow::Borrowed(principal))),
        (Function::Timestamp, []) => Some(Value::Int(context.timestamp_ms)),
        (Function::NewUuid, []) => Some(Value::String(Cow::Owned(format_uuid((context.new_uuid)())))),
        (Function::Topic, []) => Some(Value::String(Cow::Borrowed(context.topic))),
        (Function::Topic, [level]) => eval(level, scope)
            .as_integer()
            .and_then(|level| usize::try_from(level).ok()?.checked_sub(1))
            .and_then(|index| context.topic.split('/').nth(index))
            .map(|level| Value::String(Cow::Borrowed(level))),
        (Function::Get, [container, index]) => Some(value::element(eval(container, scope), eval(index, scope))),
        (Function::Encode, [subject, scheme]) => encode(subject, eval(scheme, scope), scope),
        (Function::Substring, [subject, start, rest @ ..]) => {
            let end = match rest {
                [end] => Some(eval(end, scope).as_integer()?),
                _ => None,
            };
            substring(text(subject)?, eval(start, scope).as_integer()?, end)
        }
        (Function::Upper, [subject]) => Some(Value::String(Cow::Owned(text(subject)?.to_uppercase()))),
        (Function::Lower, [subject]) => Some(Value::String(Cow::Owned(text(subject)?.to_lowercase()))),
        (Function::Length, [subject]) => i64::try_from(text(subject)?.chars().count()).ok().map(Value::Int),
        (Function::StartsWith, [subject, prefix]) => Some(Value::Bool(text(subject)?.starts_with(&*text(prefix)?))),
        (Function::EndsWith, [subject, suffix]) => Some(Value::Bool(text(subject)?.ends_with(&*text(suffix)?))),
        (Function::Cardinality, [subject]) => match eval(subject, scope) {
            Value::Array(array) => i64::try_from(array.len()).ok().map(Value::Int),
            _ => None,
        },
        (Function::IsNull, [subject]) => Some(Value::Bool(eval(subject, scope) == Value::Null)),
        (Function::IsUndefined, [subject]) => Some(Value::Bool(eval(subject, scope) == Value::Undefined)),
        (Function::Abs, [subject]) => Some(value::abs(eval(subject, scope))),
        (Function::Concat, _) => concat(arguments.iter().map(|argument| eval(argument, scope)).collect()),
        _ => None,
    }
}

/// `encode(subject, 'base64')`: `*` encodes the payload's bytes as received, a string its UTF-8
/// bytes, any other defined value its JSON text.
fn encode<'a>(subject: &'a Expr, scheme: Value<'_>, scope: &Scope<'a>) -> Option<Value<'a>> {
    if scheme != Value::String(Cow::Borrowed("base64")) {
        return None;
    }
    let engine = &base64::engine::general_purpose::STANDARD;
    let encoded = if *subject == Expr::Payload {
        engine.encode(scope.raw)
    } else {
        match eval(subject, scope) {
            Value::String(text) => engine.encode(text.as_bytes()),
            other => engine.encode(other.into_json()?.to_string()),
        }
    };
    Some(Value::String(Cow::Owned(encoded)))
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
/// concatenated. Undefined (or Null, for text) among them gives Undefined.
fn concat(arguments: Vec<Value<'_>>) -> Option<Value<'static>> {
    if arguments.iter().any(|argument| matches!(argument, Value::Array(_))) {
        let mut joined = Vec::new();
        for argument in arguments {
            match argument {
                Value::Array(array) => joined.extend(array.into_owned()),
                other => joined.push(other.into_json()?),
            }
        }
        return Some(Value::Array(Cow::Owned(joined)));
    }
    let mut joined = String::new();
    for argument in arguments {
        joined.push_str(&argument.into_text()?);
    }
    Some(Value::String(Cow::Owned(joined)))
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
