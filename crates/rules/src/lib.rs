//! The AWS IoT rules SQL, version 2016-03-23: a statement is parsed and checked once
//! ([`Rule::parse`]), then evaluated for every message published to a topic its `FROM` filter
//! matches ([`Rule::evaluate`]).
//!
//! # Architecture invariant
//!
//! This crate is pure: no IO, no async, no clock, no randomness, no logging. Everything a
//! statement can ask about the world (the topic, the client id, the principal, the time, fresh
//! UUID bits) comes in through a [`Context`]. It never sees a socket, a session or a database
//! row. It is not an API boundary: every [`ParseError`] maps to AWS IoT's `SqlParseException`.
//! Evaluation walks the tree built at parse time; the payload is parsed at most once per message
//! (not at all when the statement never reads it), and values borrow from it.
//!
//! ```
//! use certfleet_rules::{Context, Limits, Output, Rule};
//!
//! let rule = Rule::parse("SELECT clientid() AS clientid, * FROM 'management/topic/+/csr_res'")?;
//! let new_uuid = || 0;
//! let context = Context {
//!     topic: "management/topic/dev-1/csr_res",
//!     client_id: "dev-1",
//!     principal: None,
//!     timestamp_ms: 1_700_000_000_000,
//!     new_uuid: &new_uuid,
//!     limits: Limits::default(),
//! };
//! let output = rule.evaluate(&context, br#"{"CSR": "..."}"#);
//! assert_eq!(output, Ok(Output::Json(serde_json::json!({"clientid": "dev-1", "CSR": "..."}))));
//! # Ok::<(), certfleet_rules::ParseError>(())
//! ```
//!
//! # The language accepted
//!
//! - `SELECT items FROM 'filter' [WHERE condition]`, an optional `;` at the end. Keywords and
//!   function names are case-insensitive; payload member names are case-sensitive.
//! - Items: `*` (the payload object's members), or `expr [AS name]`. Without `AS` the member is
//!   named after the path's last name (`a.b[0]` gives `b`), the function (`clientid()` gives
//!   `clientid`), or else `_N` for the N-th item.
//! - `SELECT VALUE expr`: the output is the value itself (a string, a number, an array...). `VALUE`
//!   is the keyword only when an expression follows it: `SELECT value FROM ...` and
//!   `SELECT value[0] ...` read a payload member named `value`; write `SELECT VALUE ([1, 2])`
//!   for an array literal.
//! - `FROM`: an MQTT topic filter in single quotes, checked as one (`+` alone in its level, `#`
//!   alone in the last level), matched the MQTT way (a filter starting with a wildcard does not
//!   match a `$` topic).
//! - Expressions: names (`temperature`), paths (`a.b.c`, `a[0]`, `a.b[1].c`, also on any value:
//!   `get(x, 0).y`), `*` as a value (the whole payload: `get(*, 'odd-name')`,
//!   `encode(*, 'base64')`), literals (integers, decimals with fraction or exponent, strings in
//!   single quotes with `''` for a quote, `true`, `false`, `null`, arrays `[a, b]` and objects
//!   `{'key': value}`), `+ - * / %`, unary `-`, `= <> != < <= > >=`, `AND OR NOT`, parentheses,
//!   `CASE [x] WHEN v THEN r ... [ELSE e] END` and `cast(x AS Int|Decimal|Boolean|String)`.
//!   Precedence, loosest first: `OR`, `AND`, `NOT`, comparisons, `+ -`, `* / %`, unary `-`,
//!   paths.
//! - Functions ([`Function`]): `clientid()`, `topic()`, `topic(n)` (levels from 1),
//!   `timestamp()`, `principal()`, `newuuid()`, `get(x, i)`, `encode(x, 'base64')`,
//!   `substring(s, start[, end])`, `upper`, `lower`, `concat(a, b, ...)`, `startswith`,
//!   `endswith`, `length`, `cardinality`, `isNull`, `isUndefined`, `abs`. An unknown function, a
//!   wrong number of arguments and an encoding other than `'base64'` are refused at parse time,
//!   as AWS refuses them when the rule is created.
//! - Expressions nest at most 100 deep (operator chains count), so no statement can exhaust the
//!   stack.
//!
//! # Bounds
//!
//! Evaluation runs within the [`Limits`] the [`Context`] carries, whatever the statement and the
//! payload: no value is built larger than [`Limits::max_value_bytes`] (its size is computed from
//! its parts first: `concat`, `+` of strings, `encode`, `upper`/`lower`, array and object
//! literals, the `SELECT` list, the output), evaluation takes at most [`Limits::max_steps`] (one
//! per expression evaluated, one more per KiB built) and recurses at most [`Limits::max_depth`],
//! and a payload nesting deeper than [`Limits::max_payload_depth`] is refused before it is
//! parsed. Past a bound, [`Rule::evaluate`] gives [`NoOutput::Failed`] with the [`EvalError`].
//!
//! # Evaluation
//!
//! Values are AWS's: Int, Decimal, Boolean, String, Array, Object, Null, and Undefined (a member
//! that is not there, a function given the wrong types). Undefined is not Null: an output member
//! whose value is Undefined is left out, and `SELECT VALUE` of Undefined gives an empty payload.
//!
//! - Numbers: as in SQL version 2016-03-23, a whole number is an Int (`10.0` is `10`, so `7 / 2.0`
//!   is integer division, 3). Ints are 64-bit; a result that overflows becomes a Decimal.
//! - `+` concatenates two strings; otherwise `+ - * / %` take numbers, a string that reads as a
//!   number counting as one (`'5' + 1` is 6); anything else, or a zero divisor, gives Undefined.
//! - `< <= > >=` convert both sides to numbers (strings that read as numbers count); otherwise
//!   Undefined.
//! - `=` compares numbers by value, strings, Booleans, arrays and objects by content, and Null
//!   equals Null; values of different types are not equal (`7 = '7'` is false). `<>` is its
//!   negation. Either side Undefined gives Undefined.
//! - `AND`, `OR`, `NOT` take Booleans or the strings `true`/`false` in any case; anything else
//!   gives Undefined (no short-circuit: `false AND missing` is Undefined).
//! - `WHERE` passes only when it is the Boolean true: false and Undefined (or a non-Boolean)
//!   skip the message, and [`Skipped`] says which.
//! - The payload is read as JSON. When it is not JSON (binary, empty, truncated), names and paths
//!   are Undefined, `SELECT *` and `SELECT VALUE *` give the bytes as received
//!   ([`Output::Raw`]), `encode(*, 'base64')` encodes them, and in `SELECT *, other items` the `*`
//!   adds nothing.
//! - Output objects have their members in name order (serde_json's map); a later item replaces
//!   an earlier member of the same name (`SELECT *, 'x' AS color` overrides the payload's).
//!
//! # Simplifications
//!
//! Where certfleet departs from AWS IoT, knowingly:
//!
//! - Decimals are 64-bit floats, not 34-digit decimals; Ints are 64-bit, not 34 digits.
//! - Strings in double quotes and backtick identifiers are refused with a message pointing to
//!   single quotes and `get(*, 'name')`; aliases are plain identifiers (no `AS a.b`).
//! - Not implemented (refused as unknown): the other functions (math, hashing, `aws_lambda`,
//!   `get_thing_shadow`, `decode`, `parse_time`, ...), `accountid()`, `SET` variables,
//!   `IN`, nested `SELECT`, and the `FROM`-less Basic Ingest form.
//! - Argument counts are checked at parse time (AWS returns Undefined at run time); the types of
//!   arguments are checked at run time, giving Undefined, as AWS does.
//! - Conversions follow AWS's tables where documented (strings to numbers and Booleans);
//!   `cast(x AS Int)` truncates a Decimal toward zero, and arrays and objects cast to Undefined.

mod ast;
mod error;
mod eval;
mod functions;
mod lexer;
mod parser;
mod rule;
mod topic;
mod value;

#[cfg(test)]
mod tests;

pub use ast::{BinaryOp, CastType, Expr, Select, SelectItem, UnaryOp};
pub use error::{EvalError, ParseError, Reason};
pub use functions::Function;
pub use rule::{Context, Limits, NoOutput, Output, Rule, Skipped};
