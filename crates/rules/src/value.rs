//! The values of the language and the operators on them, with AWS IoT's coercions.
//!
//! A [`Value`] borrows from the payload, the statement or the context where it can
//! (`Cow::Borrowed`), so reading a member or comparing a string allocates nothing; only values
//! computed by an operator or a function, and the output, are owned.

use std::borrow::Cow;
use std::cmp::Ordering;

use serde_json::{Map, Number, Value as Json};

use crate::ast::{BinaryOp, CastType, UnaryOp};

/// A value during evaluation: a JSON value, or Undefined (a member that is not there, a function
/// given the wrong types).
#[derive(Clone, Debug, PartialEq)]
pub(crate) enum Value<'a> {
    Undefined,
    Null,
    Bool(bool),
    Int(i64),
    /// Always finite, and never a whole number that fits an Int (see [`Value::decimal`]).
    Decimal(f64),
    String(Cow<'a, str>),
    Array(Cow<'a, [Json]>),
    Object(Cow<'a, Map<String, Json>>),
}

/// A number, once a value has been read as one.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) enum Num {
    Int(i64),
    Decimal(f64),
}

impl Num {
    fn as_f64(self) -> f64 {
        match self {
            Num::Int(integer) => integer as f64,
            Num::Decimal(decimal) => decimal,
        }
    }

    fn into_value(self) -> Value<'static> {
        match self {
            Num::Int(integer) => Value::Int(integer),
            Num::Decimal(decimal) => Value::decimal(decimal),
        }
    }
}

impl<'a> Value<'a> {
    /// A Decimal, following SQL version 2016-03-23: a whole number that fits 64 bits is an Int
    /// (`10.0` is `10`), and a result that is not finite (an overflow) is Undefined.
    pub(crate) fn decimal(decimal: f64) -> Value<'static> {
        if !decimal.is_finite() {
            Value::Undefined
        } else if decimal.fract() == 0.0 && (i64::MIN as f64..i64::MAX as f64).contains(&decimal) {
            Value::Int(decimal as i64)
        } else {
            Value::Decimal(decimal)
        }
    }

    /// A borrowed view of a JSON value.
    pub(crate) fn from_json(json: &'a Json) -> Value<'a> {
        match json {
            Json::Null => Value::Null,
            Json::Bool(boolean) => Value::Bool(*boolean),
            Json::Number(number) => from_number(number),
            Json::String(string) => Value::String(Cow::Borrowed(string)),
            Json::Array(array) => Value::Array(Cow::Borrowed(array.as_slice())),
            Json::Object(object) => Value::Object(Cow::Borrowed(object)),
        }
    }

    /// An owned JSON value.
    pub(crate) fn from_owned(json: Json) -> Value<'static> {
        match json {
            Json::Null => Value::Null,
            Json::Bool(boolean) => Value::Bool(boolean),
            Json::Number(number) => from_number(&number),
            Json::String(string) => Value::String(Cow::Owned(string)),
            Json::Array(array) => Value::Array(Cow::Owned(array)),
            Json::Object(object) => Value::Object(Cow::Owned(object)),
        }
    }

    /// The value as JSON, `None` for Undefined (which JSON cannot hold).
    pub(crate) fn into_json(self) -> Option<Json> {
        Some(match self {
            Value::Undefined => return None,
            Value::Null => Json::Null,
            Value::Bool(boolean) => Json::Bool(boolean),
            Value::Int(integer) => Json::from(integer),
            Value::Decimal(decimal) => Json::Number(Number::from_f64(decimal)?),
            Value::String(string) => Json::String(string.into_owned()),
            Value::Array(array) => Json::Array(array.into_owned()),
            Value::Object(object) => Json::Object(object.into_owned()),
        })
    }

    /// The value as a Boolean: a Boolean, or a string `true` or `false` in any case.
    pub(crate) fn as_bool(&self) -> Option<bool> {
        match self {
            Value::Bool(boolean) => Some(*boolean),
            Value::String(text) if text.eq_ignore_ascii_case("true") => Some(true),
            Value::String(text) if text.eq_ignore_ascii_case("false") => Some(false),
            _ => None,
        }
    }

    /// The value as a number: an Int, a Decimal, or a string that reads as one.
    pub(crate) fn as_number(&self) -> Option<Num> {
        match self {
            Value::Int(integer) => Some(Num::Int(*integer)),
            Value::Decimal(decimal) => Some(Num::Decimal(*decimal)),
            Value::String(text) => parse_number(text),
            _ => None,
        }
    }

    /// The value as an Int, a Decimal's fraction dropped: for indexes and positions.
    pub(crate) fn as_integer(&self) -> Option<i64> {
        match self.as_number()? {
            Num::Int(integer) => Some(integer),
            Num::Decimal(decimal) => Some(decimal.trunc() as i64),
        }
    }

    /// The value as a string: a String, or the text of a number or a Boolean.
    pub(crate) fn into_text(self) -> Option<Cow<'a, str>> {
        match self {
            Value::String(text) => Some(text),
            Value::Int(integer) => Some(Cow::Owned(integer.to_string())),
            Value::Decimal(decimal) => Some(Cow::Owned(decimal.to_string())),
            Value::Bool(boolean) => Some(Cow::Borrowed(if boolean { "true" } else { "false" })),
            _ => None,
        }
    }
}

fn from_number(number: &Number) -> Value<'static> {
    match (number.as_i64(), number.as_f64()) {
        (Some(integer), _) => Value::Int(integer),
        (None, Some(decimal)) => Value::decimal(decimal),
        (None, None) => Value::Undefined,
    }
}

/// A string read as a number, surrounding whitespace allowed; `NaN` and infinities are not
/// numbers.
fn parse_number(text: &str) -> Option<Num> {
    let text = text.trim();
    if let Ok(integer) = text.parse::<i64>() {
        return Some(Num::Int(integer));
    }
    match text.parse::<f64>() {
        Ok(decimal) if decimal.is_finite() => Some(Num::Decimal(decimal)),
        _ => None,
    }
}

/// A member of an object; Undefined for anything else or a missing member.
pub(crate) fn member<'a>(value: Value<'a>, key: &str) -> Value<'a> {
    match value {
        Value::Object(Cow::Borrowed(object)) => object.get(key).map_or(Value::Undefined, Value::from_json),
        Value::Object(Cow::Owned(mut object)) => object.remove(key).map_or(Value::Undefined, Value::from_owned),
        _ => Value::Undefined,
    }
}

/// `value[index]` and `get(value, index)`: an array's element (from 0), an object's member, a
/// string's character; Undefined for anything else or out of range.
pub(crate) fn element<'a>(value: Value<'a>, index: Value<'_>) -> Value<'a> {
    match value {
        Value::Object(_) => match index {
            Value::String(key) => member(value, &key),
            _ => Value::Undefined,
        },
        Value::Array(array) => {
            let Some(position) = index.as_integer().and_then(|position| usize::try_from(position).ok()) else {
                return Value::Undefined;
            };
            match array {
                Cow::Borrowed(array) => array.get(position).map_or(Value::Undefined, Value::from_json),
                Cow::Owned(mut array) if position < array.len() => Value::from_owned(array.swap_remove(position)),
                Cow::Owned(_) => Value::Undefined,
            }
        }
        Value::String(text) => {
            let character = index
                .as_integer()
                .and_then(|position| usize::try_from(position).ok())
                .and_then(|position| text.chars().nth(position));
            character.map_or(Value::Undefined, |character| Value::String(Cow::Owned(character.to_string())))
        }
        _ => Value::Undefined,
    }
}

pub(crate) fn unary(op: UnaryOp, operand: Value<'_>) -> Value<'static> {
    match op {
        UnaryOp::Not => operand.as_bool().map_or(Value::Undefined, |boolean| Value::Bool(!boolean)),
        UnaryOp::Negate => match operand.as_number() {
            Some(Num::Int(integer)) => integer.checked_neg().map_or(Value::Decimal(-(integer as f64)), Value::Int),
            Some(Num::Decimal(decimal)) => Value::decimal(-decimal),
            None => Value::Undefined,
        },
    }
}

/// `abs(x)`: the absolute value of a number (strings that read as numbers count).
pub(crate) fn abs(operand: Value<'_>) -> Value<'static> {
    match operand.as_number() {
        Some(Num::Int(integer)) => integer.checked_abs().map_or(Value::Decimal((integer as f64).abs()), Value::Int),
        Some(Num::Decimal(decimal)) => Value::decimal(decimal.abs()),
        None => Value::Undefined,
    }
}

pub(crate) fn binary<'a>(op: BinaryOp, left: Value<'a>, right: Value<'a>) -> Value<'a> {
    match op {
        BinaryOp::And | BinaryOp::Or => match (left.as_bool(), right.as_bool()) {
            (Some(left), Some(right)) => Value::Bool(if op == BinaryOp::And { left && right } else { left || right }),
            _ => Value::Undefined,
        },
        BinaryOp::Equal | BinaryOp::NotEqual => {
            if left == Value::Undefined || right == Value::Undefined {
                return Value::Undefined;
            }
            Value::Bool(equal(&left, &right) == (op == BinaryOp::Equal))
        }
        BinaryOp::Less | BinaryOp::LessEqual | BinaryOp::Greater | BinaryOp::GreaterEqual => {
            let ordering = match (left.as_number(), right.as_number()) {
                (Some(Num::Int(left)), Some(Num::Int(right))) => left.cmp(&right),
                (Some(left), Some(right)) => match left.as_f64().partial_cmp(&right.as_f64()) {
                    Some(ordering) => ordering,
                    None => return Value::Undefined,
                },
                _ => return Value::Undefined,
            };
            Value::Bool(match op {
                BinaryOp::Less => ordering == Ordering::Less,
                BinaryOp::LessEqual => ordering != Ordering::Greater,
                BinaryOp::Greater => ordering == Ordering::Greater,
                _ => ordering != Ordering::Less,
            })
        }
        BinaryOp::Add => match (left, right) {
            (Value::String(left), Value::String(right)) => Value::String(Cow::Owned(left.into_owned() + &right)),
            (left, right) => arithmetic(op, &left, &right),
        },
        BinaryOp::Subtract | BinaryOp::Multiply | BinaryOp::Divide | BinaryOp::Remainder => {
            arithmetic(op, &left, &right)
        }
    }
}

/// `+ - * / %` on two numbers (strings that read as numbers count). Two Ints give an Int
/// (division truncates) unless the result overflows; a zero divisor gives Undefined.
fn arithmetic(op: BinaryOp, left: &Value<'_>, right: &Value<'_>) -> Value<'static> {
    let (Some(left), Some(right)) = (left.as_number(), right.as_number()) else {
        return Value::Undefined;
    };
    if let (Num::Int(left), Num::Int(right)) = (left, right) {
        let exact = match op {
            BinaryOp::Add => left.checked_add(right),
            BinaryOp::Subtract => left.checked_sub(right),
            BinaryOp::Multiply => left.checked_mul(right),
            BinaryOp::Divide if right == 0 => return Value::Undefined,
            BinaryOp::Divide => left.checked_div(right),
            BinaryOp::Remainder if right == 0 => return Value::Undefined,
            _ => left.checked_rem(right),
        };
        if let Some(exact) = exact {
            return Value::Int(exact);
        }
    }
    let (left, right) = (left.as_f64(), right.as_f64());
    match op {
        BinaryOp::Add => Value::decimal(left + right),
        BinaryOp::Subtract => Value::decimal(left - right),
        BinaryOp::Multiply => Value::decimal(left * right),
        _ if right == 0.0 => Value::Undefined,
        BinaryOp::Divide => Value::decimal(left / right),
        _ => Value::decimal(left % right),
    }
}

/// `=` on two defined values: numbers by value (`1 = 1.0`), strings, Booleans, arrays and
/// objects by content, Null equals Null; values of different types are not equal.
fn equal(left: &Value<'_>, right: &Value<'_>) -> bool {
    match (left, right) {
        (Value::Int(left), Value::Int(right)) => left == right,
        (Value::Int(_) | Value::Decimal(_), Value::Int(_) | Value::Decimal(_)) => {
            left.as_number().map(Num::as_f64) == right.as_number().map(Num::as_f64)
        }
        _ => left == right,
    }
}

/// `cast(value AS type)`.
pub(crate) fn cast(value: Value<'_>, target: CastType) -> Value<'_> {
    match target {
        CastType::Int => match value {
            Value::Bool(boolean) => Value::Int(i64::from(boolean)),
            _ => value.as_number().map_or(Value::Undefined, |number| match number {
                Num::Int(integer) => Value::Int(integer),
                Num::Decimal(decimal) => Value::decimal(decimal.trunc()),
            }),
        },
        CastType::Decimal => match value {
            Value::Bool(boolean) => Value::Int(i64::from(boolean)),
            _ => value.as_number().map_or(Value::Undefined, Num::into_value),
        },
        CastType::Boolean => match value {
            Value::Int(integer) => Value::Bool(integer != 0),
            Value::Decimal(decimal) => Value::Bool(decimal != 0.0),
            _ => value.as_bool().map_or(Value::Undefined, Value::Bool),
        },
        CastType::String => value.into_text().map_or(Value::Undefined, Value::String),
    }
}
