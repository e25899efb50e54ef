//! Table tests of the whole crate through its public API: one `check` per case.
//!
//! Expression cases go through `SELECT VALUE <expr> FROM 'a/b'`, published by `dev-1` on `a/b`;
//! `None` stands for Undefined (the empty output of `SELECT VALUE`).

use std::sync::atomic::{AtomicU64, Ordering};

use serde_json::{Value as Json, json};

use crate::*;

const TIMESTAMP: i64 = 1_700_000_000_123;

/// 128 bits that count up from 1, so each `newuuid()` differs and the tests stay repeatable.
fn counter() -> impl Fn() -> u128 + Sync {
    let next = AtomicU64::new(0);
    move || u128::from(next.fetch_add(1, Ordering::Relaxed) + 1)
}

fn context<'a>(topic: &'a str, new_uuid: &'a (dyn Fn() -> u128 + Sync)) -> Context<'a> {
    Context {
        topic,
        client_id: "dev-1",
        principal: Some("9f1c2c41d62cdc0ba4ed5e4fb5e0ef2cd18b2fa6ad0e1ed1da7d1f80db3cc8c2"),
        timestamp_ms: TIMESTAMP,
        new_uuid,
        limits: Limits::default(),
    }
}

fn parse(sql: &str) -> Rule {
    Rule::parse(sql).unwrap_or_else(|error| panic!("{sql}: {error}"))
}

/// What a rule gives for a message.
#[derive(Debug, PartialEq)]
enum Expect<'e> {
    Json(Json),
    Raw(&'e [u8]),
    Skip(Skipped),
    Fail(EvalError),
}

fn run(sql: &str, topic: &str, payload: &[u8]) -> Result<Vec<u8>, NoOutput> {
    let new_uuid = counter();
    let rule = parse(sql);
    rule.evaluate(&context(topic, &new_uuid), payload).map(|output| output.to_bytes())
}

fn check(sql: &str, topic: &str, payload: &str, expected: Expect<'_>) {
    let new_uuid = counter();
    let rule = parse(sql);
    let found = match rule.evaluate(&context(topic, &new_uuid), payload.as_bytes()) {
        Ok(Output::Json(json)) => Expect::Json(json),
        Ok(Output::Raw(bytes)) => Expect::Raw(bytes),
        Err(NoOutput::Skipped(skipped)) => Expect::Skip(skipped),
        Err(NoOutput::Failed(error)) => Expect::Fail(error),
    };
    assert_eq!(found, expected, "{sql} on {topic} with {payload}");
}

/// `expr` evaluated on `payload`: `Some(json text)`, or `None` for Undefined.
fn check_value(expr: &str, payload: &str, expected: Option<&str>) {
    let sql = format!("SELECT VALUE {expr} FROM 'a/b'");
    let expected = match expected {
        Some(text) => Expect::Json(serde_json::from_str(text).unwrap_or_else(|error| panic!("{text}: {error}"))),
        None => Expect::Raw(b""),
    };
    check(&sql, "a/b", payload, expected);
}

fn check_error(sql: &str, message: &str, column: usize) {
    let error = Rule::parse(sql).err().unwrap_or_else(|| panic!("{sql:?} parsed"));
    let text = error.to_string();
    assert!(text.contains(message), "{sql:?}: {text:?} does not contain {message:?}");
    assert_eq!(error.column(), column, "{sql:?}: {text}");
}

const SEED_SQL: &str = "SELECT clientid() as clientid, * FROM 'management/topic/+/csr_res'";

#[test]
fn seed_rule() {
    let csr = "-----BEGIN CERTIFICATE REQUEST-----\nMIIB...\n-----END CERTIFICATE REQUEST-----\n";
    let payload = json!({ "CSR": csr }).to_string();
    let expected = json!({ "clientid": "dev-1", "CSR": csr });
    check(SEED_SQL, "management/topic/dev-1/csr_res", &payload, Expect::Json(expected));
    check(SEED_SQL, "management/topic/dev-1/csr_req", &payload, Expect::Skip(Skipped::TopicMismatch));
    let rule = parse(SEED_SQL);
    assert_eq!(rule.topic_filter(), "management/topic/+/csr_res");
    assert_eq!(rule.sql(), SEED_SQL);
    let Select::Items(items) = rule.select() else { panic!("not a list: {:?}", rule.select()) };
    assert_eq!(items.len(), 2);
    assert!(
        matches!(&items[0], SelectItem::Field { expr: Expr::Call(Function::ClientId, _), name } if name == "clientid")
    );
    assert_eq!(items[1], SelectItem::Wildcard);
    assert_eq!(rule.condition(), None);
}

// The tables below keep one case per line; rustfmt would spread each over several.

#[test]
#[rustfmt::skip]
fn select_clause() {
    let payload = r#"{"color": "red", "temperature": 50, "nested": {"a": {"b": [10, {"c": "deep"}]}}, "list": [1, 2, 3]}"#;
    let cases: &[(&str, Json)] = &[
        ("SELECT * FROM 'a/b'", serde_json::from_str(payload).unwrap_or_default()),
        ("SELECT color FROM 'a/b'", json!({"color": "red"})),
        ("SELECT color AS my_color FROM 'a/b'", json!({"my_color": "red"})),
        ("select color as c, temperature as t from 'a/b'", json!({"c": "red", "t": 50})),
        ("SELECT *, 15 AS speed FROM 'a/b'", json!({"color": "red", "temperature": 50, "nested": {"a": {"b": [10, {"c": "deep"}]}}, "list": [1, 2, 3], "speed": 15})),
        ("SELECT nested.a.b[1].c FROM 'a/b'", json!({"c": "deep"})),
        ("SELECT nested.a.b[0] AS first FROM 'a/b'", json!({"first": 10})),
        ("SELECT list[2] FROM 'a/b'", json!({"list": 3})),
        ("SELECT temperature + 1 FROM 'a/b'", json!({"_1": 51})),
        ("SELECT color, upper(color) FROM 'a/b'", json!({"color": "red", "upper": "RED"})),
        ("SELECT missing, color FROM 'a/b'", json!({"color": "red"})),
        ("SELECT nested.x.y AS gone, missing[0] AS gone2 FROM 'a/b'", json!({})),
        ("SELECT null AS n, missing AS m FROM 'a/b'", json!({"n": null})),
        ("SELECT *, 'blue' AS color FROM 'a/b'", json!({"color": "blue", "temperature": 50, "nested": {"a": {"b": [10, {"c": "deep"}]}}, "list": [1, 2, 3]})),
        ("SELECT {'latitude': get(list, 0), 'longitude': list[1], 'gone': missing} AS position FROM 'a/b'", json!({"position": {"latitude": 1, "longitude": 2}})),
        ("SELECT [color, missing, temperature] AS pair FROM 'a/b'", json!({"pair": ["red", 50]})),
        ("SELECT value FROM 'a/b'", json!({})),
        ("SELECT temperature FROM 'a/b';", json!({"temperature": 50})),
        ("  SELECT\n\tcolor\nFROM\n'a/b'  ", json!({"color": "red"})),
    ];
    for (sql, expected) in cases {
        check(sql, "a/b", payload, Expect::Json(expected.clone()));
    }
}

#[test]
#[rustfmt::skip]
fn select_value() {
    check("SELECT VALUE color FROM 'a/b'", "a/b", r#"{"color": "red"}"#, Expect::Json(json!("red")));
    check("select value nested FROM 'a/b'", "a/b", r#"{"nested": [1]}"#, Expect::Json(json!([1])));
    check("SELECT VALUE missing FROM 'a/b'", "a/b", r#"{"color": "red"}"#, Expect::Raw(b""));
    check("SELECT VALUE * FROM 'a/b'", "a/b", "not json", Expect::Raw(b"not json"));
    check("SELECT VALUE {'t': timestamp()} FROM 'a/b'", "a/b", "", Expect::Json(json!({"t": TIMESTAMP})));
    // A payload member named `value` is read when no expression follows the word.
    check("SELECT value FROM 'a/b'", "a/b", r#"{"value": 7}"#, Expect::Json(json!({"value": 7})));
    check("SELECT value, value AS v FROM 'a/b'", "a/b", r#"{"value": 7}"#, Expect::Json(json!({"value": 7, "v": 7})));
}

#[test]
#[rustfmt::skip]
fn from_clause() {
    let cases: &[(&str, &str, bool)] = &[
        ("a/b", "a/b", true),
        ("a/b", "a/c", false),
        ("a/b", "a/b/c", false),
        ("a/+", "a/b", true),
        ("a/+", "a/b/c", false),
        ("a/+/c", "a//c", true),
        ("a/#", "a", true),
        ("a/#", "a/b/c/d", true),
        ("#", "anything/at/all", true),
        ("#", "$aws/things/t/shadow/update", false),
        ("+/things/#", "$aws/things/t", false),
        ("$aws/things/+/shadow/update", "$aws/things/t1/shadow/update", true),
        ("A/b", "a/b", false),
    ];
    for (filter, topic, matches) in cases {
        let sql = format!("SELECT * FROM '{filter}'");
        let expected = if *matches { Expect::Json(json!({"x": 1})) } else { Expect::Skip(Skipped::TopicMismatch) };
        check(&sql, topic, r#"{"x": 1}"#, expected);
        assert_eq!(parse(&sql).matches_topic(topic), *matches, "{filter} {topic}");
    }
}

#[test]
#[rustfmt::skip]
fn where_clause() {
    let payload = r#"{"temperature": 60, "device_type": "thermostat", "flag": "TRUE", "status": null}"#;
    let cases: &[(&str, Option<Skipped>)] = &[
        ("temperature > 50", None),
        ("temperature > 70", Some(Skipped::ConditionFalse)),
        ("temperature >= 60 AND device_type = 'thermostat'", None),
        ("temperature > 70 OR device_type = 'thermostat'", None),
        ("NOT (temperature > 70)", None),
        ("NOT temperature > 70", None),
        ("missing > 5", Some(Skipped::ConditionUndefined)),
        ("missing = 5", Some(Skipped::ConditionUndefined)),
        ("temperature", Some(Skipped::ConditionUndefined)),
        ("flag", Some(Skipped::ConditionUndefined)),
        ("flag AND true", None),
        ("isNull(status)", None),
        ("isUndefined(missing)", None),
        ("status = null", None),
        ("timestamp() % 2 = 1", None),
        ("topic(2) = 'b'", None),
        ("clientid() <> 'dev-2'", None),
        ("clientid() != 'dev-1'", Some(Skipped::ConditionFalse)),
        ("startswith(topic(), 'a/')", None),
    ];
    for (condition, skipped) in cases {
        let sql = format!("SELECT temperature FROM 'a/#' WHERE {condition}");
        let expected = match skipped {
            None => Expect::Json(json!({"temperature": 60})),
            Some(skipped) => Expect::Skip(*skipped),
        };
        check(&sql, "a/b", payload, expected);
    }
    assert!(parse("SELECT * FROM 'a' WHERE x = 1").condition().is_some());
}

#[test]
#[rustfmt::skip]
fn literals_and_operators() {
    let payload = r#"{"i": 7, "d": 2.5, "s": "5", "word": "abc", "t": true, "whole": 10.0, "big": 9223372036854775807}"#;
    let cases: &[(&str, Option<&str>)] = &[
        ("42", Some("42")),
        ("-42", Some("-42")),
        ("1.5", Some("1.5")),
        ("10.0", Some("10")),
        ("1e3", Some("1000")),
        ("'it''s'", Some(r#""it's""#)),
        ("''", Some(r#""""#)),
        ("true", Some("true")),
        ("FALSE", Some("false")),
        ("null", Some("null")),
        ("([])", Some("[]")),
        ("{}", Some("{}")),
        ("{'a': {'b': [1, 'x', null]}}", Some(r#"{"a": {"b": [1, "x", null]}}"#)),
        ("{a: 1}", Some(r#"{"a": 1}"#)),
        ("i + 1", Some("8")),
        ("i - 10", Some("-3")),
        ("i * d", Some("17.5")),
        ("i / 2", Some("3")),
        ("i / 2.0", Some("3")),
        ("i / 2.5", Some("2.8")),
        ("d * 2", Some("5")),
        ("i % 4", Some("3")),
        ("d % 1", Some("0.5")),
        ("i / 0", None),
        ("i % 0", None),
        ("1 + 2 * 3", Some("7")),
        ("(1 + 2) * 3", Some("9")),
        ("10 - 2 - 3", Some("5")),
        ("-(i)", Some("-7")),
        ("- -i", Some("7")),
        ("big + 1", Some("9223372036854775808.0")),
        ("whole", Some("10")),
        ("s + 1", Some("6")),
        ("s * 2", Some("10")),
        ("'a' + 'b'", Some(r#""ab""#)),
        ("word + s", Some(r#""abc5""#)),
        ("word + 1", None),
        ("word - 1", None),
        ("t + 1", None),
        ("missing + 1", None),
        ("i = 7", Some("true")),
        ("i = 7.0", Some("true")),
        ("d = 2.5", Some("true")),
        ("i = '7'", Some("false")),
        ("word = 'abc'", Some("true")),
        ("word = 'ABC'", Some("false")),
        ("([1, 2] = [1, 2])", Some("true")),
        ("{'a': 1} = {'a': 1}", Some("true")),
        ("null = null", Some("true")),
        ("null = 0", Some("false")),
        ("t = true", Some("true")),
        ("i <> 7", Some("false")),
        ("i != 8", Some("true")),
        ("i <> 'x'", Some("true")),
        ("missing = missing", None),
        ("missing <> 1", None),
        ("i < 8", Some("true")),
        ("i <= 7", Some("true")),
        ("i > 7", Some("false")),
        ("i >= 7.5", Some("false")),
        ("s > 4", Some("true")),
        ("s < '10'", Some("true")),
        ("word > 1", None),
        ("t > 0", None),
        ("true AND false", Some("false")),
        ("true OR false", Some("true")),
        ("'TRUE' AND 'true'", Some("true")),
        ("true AND 1", None),
        ("false AND missing", None),
        ("NOT false", Some("true")),
        ("NOT 'False'", Some("true")),
        ("NOT 0", None),
        ("NOT NOT true", Some("true")),
        ("true AND NOT false OR false", Some("true")),
        ("CASE i WHEN 1 THEN 'one' WHEN 7 THEN 'seven' ELSE 'many' END", Some(r#""seven""#)),
        ("CASE i WHEN 1 THEN 'one' ELSE 'many' END", Some(r#""many""#)),
        ("CASE i WHEN 1 THEN 'one' END", None),
        ("CASE WHEN i > 5 THEN 'big' WHEN i > 0 THEN 'small' END", Some(r#""big""#)),
        ("case when missing then 1 else 2 end", Some("2")),
        ("([i, d][1])", Some("2.5")),
        ("{'k': word}.k", Some(r#""abc""#)),
        ("{'k': word}['k']", Some(r#""abc""#)),
        ("word[1]", Some(r#""b""#)),
        ("i.x", None),
        ("i[0]", None),
    ];
    for (expr, expected) in cases {
        check_value(expr, payload, *expected);
    }
}

#[test]
#[rustfmt::skip]
fn functions() {
    let payload = r#"{"s": "Hello, World", "n": -3.5, "i": -4, "list": [1, "two", {"three": 3}], "obj": {"k": "v"}, "empty": "", "nothing": null, "num": "12"}"#;
    let cases: &[(&str, Option<&str>)] = &[
        ("clientid()", Some(r#""dev-1""#)),
        ("CLIENTID()", Some(r#""dev-1""#)),
        ("topic()", Some(r#""a/b""#)),
        ("topic(1)", Some(r#""a""#)),
        ("topic(2)", Some(r#""b""#)),
        ("topic(3)", None),
        ("topic(0)", None),
        ("topic(-1)", None),
        ("topic('1')", Some(r#""a""#)),
        ("timestamp()", Some("1700000000123")),
        ("principal()", Some(r#""9f1c2c41d62cdc0ba4ed5e4fb5e0ef2cd18b2fa6ad0e1ed1da7d1f80db3cc8c2""#)),
        ("newuuid()", Some(r#""00000000-0000-4000-8000-000000000001""#)),
        ("get(list, 1)", Some(r#""two""#)),
        ("get(list, 2).three", Some("3")),
        ("get(list, 3)", None),
        ("get(list, -1)", None),
        ("get(obj, 'k')", Some(r#""v""#)),
        ("get(obj, 'x')", None),
        ("get(*, 'obj')", Some(r#"{"k": "v"}"#)),
        ("get(s, 0)", Some(r#""H""#)),
        ("get(n, 0)", None),
        ("encode('hello', 'base64')", Some(r#""aGVsbG8=""#)),
        ("encode(obj, 'base64')", Some(r#""eyJrIjoidiJ9""#)),
        ("encode(missing, 'base64')", None),
        ("encode(s, missing)", None),
        ("substring('012345', 0)", Some(r#""012345""#)),
        ("substring('012345', 2)", Some(r#""2345""#)),
        ("substring('012345', 2.745)", Some(r#""2345""#)),
        ("substring(123, 2)", Some(r#""3""#)),
        ("substring('012345', -1)", Some(r#""012345""#)),
        ("substring('012345', 100)", Some(r#""""#)),
        ("substring('012345', 2, 4)", Some(r#""23""#)),
        ("substring('012345', 2, 100)", Some(r#""2345""#)),
        ("substring('012345', 4, 2)", Some(r#""""#)),
        ("substring('héllo', 1, 3)", Some(r#""él""#)),
        ("substring(s, 'x')", None),
        ("substring(list, 1)", None),
        ("upper(s)", Some(r#""HELLO, WORLD""#)),
        ("lower(s)", Some(r#""hello, world""#)),
        ("upper(true)", Some(r#""TRUE""#)),
        ("lower(list)", None),
        ("concat('a', 'b', 'c')", Some(r#""abc""#)),
        ("concat(s, 1)", Some(r#""Hello, World1""#)),
        ("concat([1], [2, 3])", Some("[1, 2, 3]")),
        ("concat(list, 4)", Some(r#"[1, "two", {"three": 3}, 4]"#)),
        ("concat('a', missing)", None),
        ("startswith(s, 'Hello')", Some("true")),
        ("startswith(s, 'World')", Some("false")),
        ("endswith(s, 'World')", Some("true")),
        ("endswith(missing, 'x')", None),
        ("length(s)", Some("12")),
        ("length('héllo')", Some("5")),
        ("length(empty)", Some("0")),
        ("length(list)", None),
        ("cardinality(list)", Some("3")),
        ("cardinality(s)", None),
        ("isNull(nothing)", Some("true")),
        ("isNull(missing)", Some("false")),
        ("isUndefined(missing)", Some("true")),
        ("isUndefined(nothing)", Some("false")),
        ("abs(n)", Some("3.5")),
        ("abs(i)", Some("4")),
        ("abs('-5.123')", Some("5.123")),
        ("abs(s)", None),
        ("cast(n AS Int)", Some("-3")),
        ("cast('12' AS int)", Some("12")),
        ("cast(true AS Int)", Some("1")),
        ("cast(num AS Decimal)", Some("12")),
        ("cast('1.25' AS Decimal)", Some("1.25")),
        ("cast(0 AS Boolean)", Some("false")),
        ("cast(2.5 AS Bool)", Some("true")),
        ("cast('TRUE' AS Boolean)", Some("true")),
        ("cast(i AS String)", Some(r#""-4""#)),
        ("cast(n AS String)", Some(r#""-3.5""#)),
        ("cast(list AS String)", None),
        ("cast(s AS Int)", None),
    ];
    for (expr, expected) in cases {
        check_value(expr, payload, *expected);
    }
}

#[test]
fn newuuid_is_fresh_per_call_and_shaped_like_a_uuid() {
    let new_uuid = || u128::MAX;
    let rule = parse("SELECT newuuid() AS a, newuuid() AS b FROM 'a/b'");
    let Ok(Output::Json(output)) = rule.evaluate(&context("a/b", &new_uuid), b"") else { panic!("no output") };
    assert_eq!(output["a"], json!("ffffffff-ffff-4fff-bfff-ffffffffffff"));
    let counting = counter();
    let Ok(Output::Json(output)) = rule.evaluate(&context("a/b", &counting), b"") else { panic!("no output") };
    assert_ne!(output["a"], output["b"]);
}

#[test]
#[rustfmt::skip]
fn binary_and_garbage_payloads() {
    type Case<'c> = (&'c str, &'c [u8], Result<&'c [u8], NoOutput>);
    let cases: &[Case<'_>] = &[
        ("SELECT * FROM 'a/b'", b"\x00\x01\xff binary", Ok(b"\x00\x01\xff binary")),
        ("SELECT * FROM 'a/b'", b"", Ok(b"")),
        ("SELECT * FROM 'a/b'", b"{\"truncated\": ", Ok(b"{\"truncated\": ")),
        ("SELECT * FROM 'a/b'", b"[1,2]", Ok(b"[1,2]")),
        ("SELECT *, 1 AS one FROM 'a/b'", b"\xff\xfe", Ok(br#"{"one":1}"#)),
        ("SELECT *, 1 AS one FROM 'a/b'", b"[1,2]", Ok(br#"{"one":1}"#)),
        ("SELECT encode(*, 'base64') AS data, timestamp() AS ts FROM 'a/b'", b"\x00\x01\x02", Ok(br#"{"data":"AAEC","ts":1700000000123}"#)),
        ("SELECT encode(*, 'base64') AS data FROM 'a/b'", b"{\"a\": 1}", Ok(br#"{"data":"eyJhIjogMX0="}"#)),
        ("SELECT a.b FROM 'a/b'", b"\xc3\x28 not utf-8", Ok(b"{}")),
        ("SELECT * FROM 'a/b' WHERE device_type = 'thermostat'", b"\x00binary", Err(NoOutput::Skipped(Skipped::ConditionUndefined))),
        ("SELECT * FROM 'a/b' WHERE timestamp() % 2 = 1", b"\x00binary", Ok(b"\x00binary")),
        ("SELECT get(*, 0) AS first FROM 'a/b'", b"[\"x\"]", Ok(br#"{"first":"x"}"#)),
        ("SELECT VALUE * FROM 'a/b'", b"\"text\"", Ok(br#""text""#)),
    ];
    for (sql, payload, expected) in cases {
        assert_eq!(run(sql, "a/b", payload).as_deref(), expected.map(<[u8]>::to_vec).as_deref(), "{sql} on {payload:?}");
    }
}

#[test]
#[rustfmt::skip]
fn malformed_statements() {
    let cases: &[(&str, &str, usize)] = &[
        ("", "the sql statement is empty", 1),
        ("   \n ", "the sql statement is empty", 1),
        ("SELECT 'abc FROM 'a/b'", "unterminated string", 22),
        ("SELECT * FROM 'a/b", "unterminated string", 15),
        ("SELECT nosuch(x) FROM 'a/b'", "unknown function nosuch()", 8),
        ("SELECT * FROM 'a/b' WHERE md5(x) = 1", "unknown function md5()", 27),
        ("SELECT color", "expected ',' or FROM, found the end of the statement", 13),
        ("SELECT color 'a/b'", "expected ',' or FROM, found a string", 14),
        ("SELECT VALUE color", "expected FROM, found the end of the statement", 19),
        ("SELECT * FROM a/b", "expected a topic filter in single quotes, found 'a'", 15),
        ("SELECT * FROM ''", "invalid topic filter '' in FROM: it is empty", 15),
        ("SELECT * FROM 'a/#/b'", "'#' must be alone in the last level", 15),
        ("SELECT * FROM 'a/b#'", "'#' must be alone in the last level", 15),
        ("SELECT * FROM 'a/b+/c'", "'+' must be alone in its level", 15),
        ("SELECT * FROM 'a/b' garbage", "unexpected 'garbage' after the end of the statement", 21),
        ("SELECT * FROM 'a/b' WHERE x = 1 )", "unexpected ')' after the end of the statement", 33),
        ("SELECT * FROM 'a/b';;", "unexpected ';' after the end of the statement", 21),
        ("SELECT FROM 'a/b'", "expected an expression, found 'FROM'", 8),
        ("FROM 'a/b' SELECT *", "expected SELECT, found 'FROM'", 1),
        ("SELECT * FROM 'a/b' WHERE", "expected an expression, found the end of the statement", 26),
        ("SELECT (1 + 2 FROM 'a/b'", "expected ')', found 'FROM'", 15),
        ("SELECT a. FROM 'a/b'", "expected a member name after '.', found 'FROM'", 11),
        ("SELECT a[0 FROM 'a/b'", "expected ']', found 'FROM'", 12),
        ("SELECT a AS FROM 'a/b'", "expected a name after AS, found 'FROM'", 13),
        ("SELECT a AS 'b' FROM 'a/b'", "expected a name after AS, found a string", 13),
        ("SELECT \"a\" FROM 'a/b'", "\" is not supported: write strings in single quotes", 8),
        ("SELECT `a` FROM 'a/b'", "` is not supported", 8),
        ("SELECT a # b FROM 'a/b'", "unexpected character '#'", 10),
        ("SELECT a, FROM 'a/b'", "expected an expression, found 'FROM'", 11),
        ("SELECT topic(1, 2) FROM 'a/b'", "function topic() takes 0 or 1 argument(s), not 2", 8),
        ("SELECT clientid(1) FROM 'a/b'", "function clientid() takes 0 argument(s), not 1", 8),
        ("SELECT get(a) FROM 'a/b'", "function get() takes 2 argument(s), not 1", 8),
        ("SELECT concat('a') FROM 'a/b'", "function concat() takes at least 2 argument(s), not 1", 8),
        ("SELECT encode(*, 'hex') FROM 'a/b'", "function encode(): the only encoding scheme is 'base64'", 8),
        ("SELECT cast(a AS Float) FROM 'a/b'", "unknown type Float in cast", 18),
        ("SELECT cast(a, 'Int') FROM 'a/b'", "expected AS, found ','", 14),
        ("SELECT CASE WHEN a THEN 1 FROM 'a/b'", "expected WHEN, ELSE or END, found 'FROM'", 27),
        ("SELECT CASE a END FROM 'a/b'", "expected WHEN, found 'END'", 15),
        ("SELECT {'a' 1} FROM 'a/b'", "expected ':', found the number 1", 13),
        ("SELECT [1, 2 FROM 'a/b'", "expected ',' or ']', found 'FROM'", 14),
        ("SELECT 1e FROM 'a/b'", "expected ',' or FROM, found 'e'", 9),
        ("SELECT *\nFROM 'a/b'\nWHERE ~x", "unexpected character '~'", 7),
        ("SELECT 1 + + 2 FROM 'a/b'", "expected an expression, found '+'", 12),
        ("SELECT where(x) FROM 'a/b'", "expected an expression, found 'where'", 8),
        ("SELECT a.from FROM 'a/b'", "expected a member name after '.', found 'from'", 10),
        ("SELECT 1e400 FROM 'a/b'", "invalid number 1e400", 8),
    ];
    for (sql, message, column) in cases {
        check_error(sql, message, *column);
    }
    let error = Rule::parse("SELECT *\nFROM 'a/b'\nWHERE ~x").err();
    assert_eq!(error.as_ref().map(|error| (error.line(), error.offset())), Some((3, 26)));
    assert!(matches!(error.map(|error| error.reason().clone()), Some(Reason::UnexpectedCharacter('~'))));
}

#[test]
fn rules_can_be_shared_between_threads() {
    fn shared<T: Send + Sync>() {}
    shared::<Rule>();
    shared::<Context<'_>>();
    shared::<ParseError>();
}

#[test]
fn deep_nesting_is_refused_not_a_stack_overflow() {
    let deep_parens = format!("SELECT {}1{} FROM 'a/b'", "(".repeat(5000), ")".repeat(5000));
    let long_chain = format!("SELECT 1{} FROM 'a/b'", " + 1".repeat(50_000));
    let many_nots = format!("SELECT * FROM 'a/b' WHERE {} true", "NOT ".repeat(5000));
    let long_path = format!("SELECT a{} FROM 'a/b'", ".b".repeat(5000));
    for sql in [&deep_parens, &long_chain, &many_nots, &long_path] {
        let error = Rule::parse(sql).err().map(|error| error.reason().clone());
        assert_eq!(error, Some(Reason::TooDeep(100)), "{}", &sql[..40]);
    }
    let fine = format!("SELECT 1{} AS n FROM 'a/b'", " + 1".repeat(90));
    assert_eq!(run(&fine, "a/b", b"").as_deref(), Ok(&br#"{"n":91}"#[..]));
}

/// xorshift64: a repeatable stream of pseudo-random numbers without a dependency.
struct XorShift(u64);

impl XorShift {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn below(&mut self, bound: usize) -> usize {
        usize::try_from(self.next() % u64::try_from(bound).unwrap_or(u64::MAX)).unwrap_or(0)
    }
}

const FRAGMENTS: &[&str] = &[
    "SELECT",
    "VALUE",
    "*",
    "FROM",
    "'a/+'",
    "'#'",
    "WHERE",
    "(",
    ")",
    "[",
    "]",
    "{",
    "}",
    ",",
    ".",
    ":",
    "a",
    "b",
    "x",
    "0",
    "1",
    "-1",
    "2.5",
    "1e400",
    "'s'",
    "''",
    "+",
    "-",
    "*",
    "/",
    "%",
    "=",
    "<>",
    "<",
    ">=",
    "AND",
    "OR",
    "NOT",
    "AS",
    "true",
    "null",
    "CASE",
    "WHEN",
    "THEN",
    "ELSE",
    "END",
    "topic",
    "get",
    "encode",
    "'base64'",
    "substring",
    "cast",
    "Int",
    "String",
    "concat",
    "abs",
    "clientid",
    "newuuid",
    "length",
    "upper",
    "'",
    ";",
    "é",
];

const PAYLOADS: &[&[u8]] = &[
    b"",
    b"\xff\x00garbage",
    b"{\"a\": {\"b\": [1, 2.5, \"x\"]}, \"x\": \"1\", \"b\": true}",
    b"[1, [2, [3]]]",
    b"\"just a string\"",
    b"-0.0",
    b"{\"a\": 9223372036854775807, \"b\": -9223372036854775808, \"x\": 1e308}",
];

#[test]
fn random_input_never_panics() {
    let mut random = XorShift(0x9e37_79b9_7f4a_7c15);
    let new_uuid = || 7;
    let mut parsed = 0;
    for round in 0..40_000 {
        let sql = if round % 2 == 0 {
            let length = random.below(64);
            let bytes: Vec<u8> = (0..length).map(|_| random.next().to_le_bytes()[0]).collect();
            String::from_utf8_lossy(&bytes).into_owned()
        } else {
            let mut sql = String::from("SELECT ");
            for _ in 0..random.below(24) {
                sql.push_str(FRAGMENTS[random.below(FRAGMENTS.len())]);
                sql.push(' ');
            }
            if random.below(2) == 0 {
                sql.push_str(" FROM 'a/+'");
            }
            sql
        };
        let Ok(rule) = Rule::parse(&sql) else { continue };
        parsed += 1;
        for payload in PAYLOADS {
            let _ = rule.evaluate(&context("a/b", &new_uuid), payload).map(|output| output.to_bytes());
        }
    }
    assert!(parsed > 100, "only {parsed} random statements parsed: the generator is too weak");
}

/// `SELECT VALUE expr` on `payload` within `limits`: the output's JSON text, or the error.
fn check_limited(expr: &str, payload: &str, limits: Limits, expected: Result<&str, EvalError>) {
    let sql = format!("SELECT VALUE ({expr}) FROM 'a/b'");
    let new_uuid = counter();
    let rule = parse(&sql);
    let context = Context { limits, ..context("a/b", &new_uuid) };
    let found = match rule.evaluate(&context, payload.as_bytes()) {
        Ok(output) => Ok(String::from_utf8(output.to_bytes()).unwrap()),
        Err(NoOutput::Failed(error)) => Err(error),
        Err(NoOutput::Skipped(skipped)) => panic!("{sql}: skipped ({skipped})"),
    };
    assert_eq!(found.as_deref().map_err(|error| *error), expected, "{sql} on {payload} within {limits:?}");
}

fn bytes(max_value_bytes: usize) -> Limits {
    Limits { max_value_bytes, ..Limits::default() }
}

#[test]
#[rustfmt::skip]
fn every_growing_function_is_bounded_at_the_limit() {
    let over = |limit| Err(EvalError::OutputTooLarge { limit });
    let cases: &[(&str, &str, usize, Result<&str, EvalError>)] = &[
        // concat of strings: the output "abcdefgh" is 10 bytes of JSON text.
        ("concat('abcd', 'efgh')", "{}", 10, Ok(r#""abcdefgh""#)),
        ("concat('abcd', 'efgh')", "{}", 9, over(9)),
        ("concat('abcd', 'efgh')", "{}", 7, over(7)),
        ("concat(s, s, s)", r#"{"s": "xyz"}"#, 11, Ok(r#""xyzxyzxyz""#)),
        ("concat(s, s, s)", r#"{"s": "xyz"}"#, 10, over(10)),
        // concat of arrays.
        ("concat(a, a)", r#"{"a": [1, 2]}"#, 10, Ok("[1,2,1,2]")),
        ("concat(a, a)", r#"{"a": [1, 2]}"#, 8, over(8)),
        ("concat(a, 3)", r#"{"a": [1, 2]}"#, 7, Ok("[1,2,3]")),
        ("concat(a, 3)", r#"{"a": [1, 2]}"#, 5, over(5)),
        // + on strings.
        ("'abcd' + 'efgh'", "{}", 10, Ok(r#""abcdefgh""#)),
        ("'abcd' + 'efgh'", "{}", 9, over(9)),
        ("'abcd' + 'efgh'", "{}", 7, over(7)),
        // encode: a string, the raw payload, a JSON value.
        ("encode('abc', 'base64')", "{}", 6, Ok(r#""YWJj""#)),
        ("encode('abc', 'base64')", "{}", 5, over(5)),
        ("encode('abc', 'base64')", "{}", 3, over(3)),
        ("encode(*, 'base64')", r#"{"a":1}"#, 14, Ok(r#""eyJhIjoxfQ==""#)),
        ("encode(*, 'base64')", r#"{"a":1}"#, 13, over(13)),
        ("encode(a, 'base64')", r#"{"a": [1]}"#, 6, Ok(r#""WzFd""#)),
        ("encode(a, 'base64')", r#"{"a": [1]}"#, 3, over(3)),
        // upper and lower can grow a string's bytes (ß -> SS, İ -> i̇).
        ("upper('ßß')", "{}", 6, Ok(r#""SSSS""#)),
        ("upper('ßß')", "{}", 5, over(5)),
        ("upper('ßß')", "{}", 3, over(3)),
        ("lower('İ')", "{}", 5, Ok("\"i\u{307}\"")),
        ("lower('İ')", "{}", 2, over(2)),
        // array and object literals.
        ("[1, 'ab', s]", r#"{"s": "xyz"}"#, 14, Ok(r#"[1,"ab","xyz"]"#)),
        ("[1, 'ab', s]", r#"{"s": "xyz"}"#, 13, over(13)),
        ("[1, 'ab', s]", r#"{"s": "xyz"}"#, 8, over(8)),
        ("{'k': s, 'n': 12}", r#"{"s": "xyz"}"#, 18, Ok(r#"{"k":"xyz","n":12}"#)),
        ("{'k': s, 'n': 12}", r#"{"s": "xyz"}"#, 17, over(17)),
        ("{'k': s, 'n': 12}", r#"{"s": "xyz"}"#, 9, over(9)),
        // Values read from the payload, and the output itself.
        ("*", r#"{"s": "xyz"}"#, 12, Ok(r#"{"s":"xyz"}"#)),
        ("s", r#"{"s": "xyz"}"#, 5, Ok(r#""xyz""#)),
        ("s", r#"{"s": "xyz"}"#, 4, over(4)),
        ("newuuid()", "{}", 38, Ok(r#""00000000-0000-4000-8000-000000000001""#)),
        ("newuuid()", "{}", 37, over(37)),
        // Shrinking functions never fail below the bound of their input.
        ("substring(s, 1)", r#"{"s": "xyz"}"#, 4, Ok(r#""yz""#)),
        ("length(s)", r#"{"s": "xyz"}"#, 1, Ok("3")),
    ];
    for (expr, payload, limit, expected) in cases {
        check_limited(expr, payload, bytes(*limit), *expected);
    }
}

#[test]
fn select_items_and_raw_outputs_are_bounded() {
    let limited = |limit| Context { limits: bytes(limit), ..context("a/b", &|| 0) };
    let run_limited = |sql: &str, limit: usize, payload: &[u8]| {
        parse(sql).evaluate(&limited(limit), payload).map(|output| output.to_bytes())
    };
    let over = |limit| Err(NoOutput::Failed(EvalError::OutputTooLarge { limit }));
    // {"a":"xyz","s":"xyz"}: 21 bytes.
    let sql = "SELECT s, s AS a FROM 'a/b'";
    assert_eq!(run_limited(sql, 21, br#"{"s": "xyz"}"#), Ok(br#"{"a":"xyz","s":"xyz"}"#.to_vec()));
    assert_eq!(run_limited(sql, 20, br#"{"s": "xyz"}"#), over(20));
    assert_eq!(run_limited("SELECT *, 1 AS b FROM 'a/b'", 8, br#"{"s": "xyz"}"#), over(8));
    // A binary payload passed through as is.
    assert_eq!(run_limited("SELECT * FROM 'a/b'", 4, b"\x00\x01\x02\x03"), Ok(b"\x00\x01\x02\x03".to_vec()));
    assert_eq!(run_limited("SELECT * FROM 'a/b'", 3, b"\x00\x01\x02\x03"), over(3));
    // A bound hit in WHERE fails the evaluation too.
    assert_eq!(run_limited("SELECT 1 AS x FROM 'a/b' WHERE concat(s, s) = 'x'", 5, br#"{"s": "xyz"}"#), over(5));
}

#[test]
fn the_self_republishing_concat_rule_fails_at_the_default_bound() {
    // What a rule republishing concat(x, x, ...) to its own topic reaches within a few
    // generations: each generation is refused once it would pass 128 KiB.
    let rule = parse("SELECT concat(x, x, x, x, x, x, x, x, x, x) AS x FROM 'loop'");
    let new_uuid = counter();
    let mut payload = br#"{"x": "0123456789abc"}"#.to_vec();
    let mut generations = 0;
    loop {
        match rule.evaluate(&context("loop", &new_uuid), &payload) {
            Ok(output) => {
                payload = output.to_bytes();
                assert!(payload.len() <= 128 * 1024);
                generations += 1;
            }
            Err(error) => {
                assert_eq!(error, NoOutput::Failed(EvalError::OutputTooLarge { limit: 128 * 1024 }));
                break;
            }
        }
    }
    assert_eq!(generations, 4);
    // Many arguments each at the bound are refused as soon as the sum passes it, not once built.
    let wide = format!("SELECT VALUE concat({}) FROM 'a/b'", vec!["x"; 10_000].join(", "));
    let big = format!(r#"{{"x": "{}"}}"#, "y".repeat(100 * 1024));
    assert_eq!(
        parse(&wide).evaluate(&context("a/b", &new_uuid), big.as_bytes()),
        Err(NoOutput::Failed(EvalError::OutputTooLarge { limit: 128 * 1024 }))
    );
}

#[test]
fn deep_payloads_and_deep_evaluation_are_refused() {
    let payload_too_deep = |limit| Err(NoOutput::Failed(EvalError::PayloadTooDeep { limit }));
    let nested = |depth: usize| format!("{}1{}", "[".repeat(depth), "]".repeat(depth));
    assert_eq!(run("SELECT * FROM 'a/b'", "a/b", nested(64).as_bytes()), Ok(nested(64).into_bytes()));
    assert_eq!(run("SELECT * FROM 'a/b'", "a/b", nested(65).as_bytes()), payload_too_deep(64));
    // Far past the JSON reader's own recursion: refused by the scan, no stack overflow.
    assert_eq!(run("SELECT * FROM 'a/b'", "a/b", "{\"a\":".repeat(1_000_000).as_bytes()), payload_too_deep(64));
    assert_eq!(run("SELECT a FROM 'a/b'", "a/b", "[".repeat(1_000_000).as_bytes()), payload_too_deep(64));
    // Brackets inside strings do not nest; a statement that never reads the payload never scans it.
    let in_string = format!(r#"{{"a": "{}\"{}"}}"#, "[".repeat(100), "{".repeat(100));
    assert!(run("SELECT a FROM 'a/b'", "a/b", in_string.as_bytes()).is_ok());
    assert_eq!(run("SELECT 1 AS one FROM 'a/b'", "a/b", nested(1000).as_bytes()), Ok(br#"{"one":1}"#.to_vec()));
    // Evaluation depth: five negations and a literal are six levels.
    let depth = |max_depth| Limits { max_depth, ..Limits::default() };
    check_limited("-(-(-(-(-1))))", "{}", depth(6), Ok("-1"));
    check_limited("-(-(-(-(-1))))", "{}", depth(5), Err(EvalError::TooDeep { limit: 5 }));
}

#[test]
fn the_step_budget_counts_every_node() {
    // 50 ones and 49 additions: 99 nodes.
    let sum = vec!["1"; 50].join(" + ");
    let steps = |max_steps| Limits { max_steps, ..Limits::default() };
    check_limited(&sum, "{}", steps(99), Ok("50"));
    check_limited(&sum, "{}", steps(98), Err(EvalError::StepBudgetExceeded { budget: 98 }));
    // Each KiB built costs a step more: 8 KiB of concat is 8 steps past its 3 nodes.
    let big = format!(r#"{{"x": "{}"}}"#, "y".repeat(4 * 1024));
    check_limited("length(concat(x, x))", &big, steps(12), Ok("8192"));
    check_limited("length(concat(x, x))", &big, steps(11), Err(EvalError::StepBudgetExceeded { budget: 11 }));
}
