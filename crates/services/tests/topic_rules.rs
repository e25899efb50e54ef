//! Topic rules through the typed services on a real SQLite registry: every refusal leaves the
//! registry as it was.

use certfleet_registry::{KeyPageRequest, TopicRuleFilter};
use certfleet_services::*;
use certfleet_testkit::{World, world};

fn republish(topic: &str) -> RuleAction {
    RuleAction::Republish { topic: topic.into(), qos: 0, role_arn: "arn:aws:iam::123456789012:role/r".into() }
}

fn payload(sql: &str, actions: Vec<RuleAction>) -> TopicRulePayload {
    TopicRulePayload { sql: sql.into(), actions, ..TopicRulePayload::default() }
}

fn good() -> TopicRulePayload {
    payload("SELECT temp FROM 'sensors/+/data' WHERE temp > 30", vec![republish("alerts/hot")])
}

/// Every rule of the caller's account, as (name, sql, disabled).
fn rules(world: &World, caller: &Caller) -> Vec<(String, String, bool)> {
    let page = KeyPageRequest { limit: 100, after: None };
    let listed = world.services.list_topic_rules(caller, &TopicRuleFilter::default(), &page).unwrap();
    listed.items.into_iter().map(|rule| (rule.name, rule.sql, rule.rule_disabled)).collect()
}

/// Creating `name` with `payload` is refused with `kind`, its message containing `says`, and
/// nothing changes.
fn check_create_refused(world: &World, caller: &Caller, name: &str, payload: TopicRulePayload, kind: &str, says: &str) {
    let before = rules(world, caller);
    let error = world.services.create_topic_rule(caller, name, &payload).unwrap_err();
    assert_eq!(error.kind(), kind, "{error}");
    assert!(error.to_string().contains(says), "{error:?} should say {says:?}");
    assert_eq!(rules(world, caller), before);
}

#[test]
fn create_get_list_replace_switch_delete() {
    let world = world();
    let caller = world.caller();
    world.services.create_topic_rule(&caller, "hot", &good()).unwrap();
    let stored = world.services.get_topic_rule(&caller, "hot").unwrap();
    assert_eq!(stored.topic_pattern, "sensors/+/data");
    assert_eq!(stored.aws_iot_sql_version, SQL_VERSION);
    assert_eq!(decode_actions(&stored.actions).unwrap(), vec![republish("alerts/hot")]);
    assert!(stored.arn.ends_with(":rule/hot"), "{}", stored.arn);

    let mut replaced = payload(
        "SELECT * FROM 'other'",
        vec![RuleAction::Http { url: "https://example.com/hook".into(), headers: vec![("x-a".into(), "1".into())] }],
    );
    replaced.error_action = Some(republish("errors"));
    world.services.replace_topic_rule(&caller, "hot", &replaced).unwrap();
    let runnable = world.services.runnable_topic_rules(&caller.account).unwrap();
    assert_eq!(runnable.len(), 1);
    assert_eq!(runnable[0].statement.topic_filter(), "other");
    assert_eq!(runnable[0].actions, replaced.actions);
    assert_eq!(runnable[0].error_action, Some(republish("errors")));

    world.services.set_topic_rule_disabled(&caller, "hot", true).unwrap();
    assert_eq!(rules(&world, &caller), [("hot".to_owned(), "SELECT * FROM 'other'".to_owned(), true)]);
    assert!(world.services.runnable_topic_rules(&caller.account).unwrap().is_empty(), "disabled rules do not run");
    world.services.set_topic_rule_disabled(&caller, "hot", false).unwrap();
    assert_eq!(world.services.runnable_topic_rules(&caller.account).unwrap().len(), 1);
    world.services.delete_topic_rule(&caller, "hot").unwrap();
    assert!(rules(&world, &caller).is_empty());
}

#[test]
fn bad_requests_change_nothing() {
    let world = world();
    let caller = world.caller();
    world.services.create_topic_rule(&caller, "kept", &good()).unwrap();
    let long = "a".repeat(129);
    check_create_refused(&world, &caller, "bad-name", good(), "InvalidRequest", "ruleName");
    check_create_refused(&world, &caller, "", good(), "InvalidRequest", "ruleName");
    check_create_refused(&world, &caller, &long, good(), "InvalidRequest", "ruleName");
    check_create_refused(&world, &caller, "kept", good(), "AlreadyExists", "already exists");
    check_create_refused(&world, &caller, "r", payload("SELEC * FROM 'a'", vec![republish("b")]), "SqlParse", "line 1");
    check_create_refused(&world, &caller, "r", payload("SELECT * FROM 'a/#/b'", vec![republish("b")]), "SqlParse", "");
    check_create_refused(
        &world,
        &caller,
        "r",
        payload("SELECT * FROM 'a'", vec![]),
        "InvalidRequest",
        "at least one action",
    );
    let lambda = RuleAction::Unsupported("lambda".into());
    check_create_refused(
        &world,
        &caller,
        "r",
        payload("SELECT * FROM 'a'", vec![lambda.clone()]),
        "InvalidRequest",
        "lambda",
    );
    let mut with_bad_error_action = good();
    with_bad_error_action.error_action = Some(lambda);
    check_create_refused(&world, &caller, "r", with_bad_error_action, "InvalidRequest", "lambda");
    let mut old_version = good();
    old_version.aws_iot_sql_version = Some("2015-10-08".into());
    check_create_refused(&world, &caller, "r", old_version, "InvalidRequest", "2015-10-08");
    for topic in ["a/+", "$aws/events/x", "", "x/${topic()}"] {
        check_create_refused(
            &world,
            &caller,
            "r",
            payload("SELECT * FROM 'a'", vec![republish(topic)]),
            "InvalidRequest",
            "topic",
        );
    }
    let qos2 = RuleAction::Republish { topic: "b".into(), qos: 2, role_arn: "arn".into() };
    check_create_refused(&world, &caller, "r", payload("SELECT * FROM 'a'", vec![qos2]), "InvalidRequest", "qos");
    for url in ["http://example.com/x", "ftp://x", "https://", "https://user@host/", "http://10.0.0.1/"] {
        let http = RuleAction::Http { url: url.into(), headers: vec![] };
        check_create_refused(&world, &caller, "r", payload("SELECT * FROM 'a'", vec![http]), "InvalidRequest", "url");
    }
    for url in ["http://127.0.0.1:8080/x", "http://localhost/x", "http://[::1]:9/", "https://example.com"] {
        let http = RuleAction::Http { url: url.into(), headers: vec![] };
        world.services.create_topic_rule(&caller, "ok", &payload("SELECT * FROM 'a'", vec![http])).unwrap();
        world.services.delete_topic_rule(&caller, "ok").unwrap();
    }
    // The shadow topics may be republished to, as in AWS.
    let shadow = payload("SELECT * FROM 'a'", vec![republish("$aws/things/t1/shadow/update")]);
    world.services.create_topic_rule(&caller, "shadow", &shadow).unwrap();
    world.services.delete_topic_rule(&caller, "shadow").unwrap();

    // Replacing with a bad payload keeps the rule as it was.
    let before = rules(&world, &caller);
    let error = world.services.replace_topic_rule(&caller, "kept", &payload("SELECT FROM", vec![])).unwrap_err();
    assert_eq!(error.kind(), "SqlParse");
    assert_eq!(rules(&world, &caller), before);
}

#[test]
fn missing_rules_are_rule_not_found_and_accounts_are_apart() {
    let world = world();
    let caller = world.caller();
    let missing = |error: Error| assert_eq!(error.kind(), "RuleNotFound", "{error}");
    missing(world.services.get_topic_rule(&caller, "nope").unwrap_err());
    missing(world.services.delete_topic_rule(&caller, "nope").unwrap_err());
    missing(world.services.set_topic_rule_disabled(&caller, "nope", true).unwrap_err());
    missing(world.services.replace_topic_rule(&caller, "nope", &good()).unwrap_err());
    world.services.create_topic_rule(&caller, "mine", &good()).unwrap();
    let other = world.services.create_account().unwrap();
    let stranger = Caller { account: other.id };
    missing(world.services.get_topic_rule(&stranger, "mine").unwrap_err());
    missing(world.services.delete_topic_rule(&stranger, "mine").unwrap_err());
    assert_eq!(rules(&world, &caller).len(), 1);
}
