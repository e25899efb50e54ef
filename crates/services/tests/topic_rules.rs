//! Topic rules through the typed services on a real SQLite registry: every refusal leaves the
//! registry as it was.

use certfleet_registry::{DestinationStatus, KeyPageRequest, TopicRuleFilter};
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

/// Creates and confirms a destination for `url` in the caller's account; returns its ARN.
fn enabled_destination(world: &World, caller: &Caller, url: &str) -> String {
    let pending = world.services.create_topic_rule_destination(caller, url).unwrap();
    assert_eq!(pending.destination.status, DestinationStatus::InProgress);
    world.services.confirm_topic_rule_destination(caller, &pending.confirmation_token).unwrap();
    pending.destination.arn
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

    enabled_destination(&world, &caller, "https://example.com/");
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
    // An http action runs only under an ENABLED destination, at a path boundary.
    enabled_destination(&world, &caller, "https://example.com");
    for url in
        ["https://example.com.evil.net/x", "https://example.comx/", "http://example.com/", "https://example.org/"]
    {
        let http = RuleAction::Http { url: url.into(), headers: vec![] };
        check_create_refused(
            &world,
            &caller,
            "r",
            payload("SELECT * FROM 'a'", vec![http]),
            "InvalidRequest",
            "destination",
        );
    }
    for url in ["https://example.com", "https://example.com/x?y=1", "https://example.com?q"] {
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

/// Every destination of the caller's account, as (ARN, status).
fn destinations(world: &World, caller: &Caller) -> Vec<(String, DestinationStatus)> {
    let page = KeyPageRequest { limit: 100, after: None };
    let listed = world.services.list_topic_rule_destinations(caller, &page).unwrap();
    listed.items.into_iter().map(|destination| (destination.arn, destination.status)).collect()
}

#[test]
fn destinations_are_confirmed_before_http_actions_run_and_stop_them_when_disabled_or_deleted() {
    let world = world();
    let caller = world.caller();
    let url = "https://hooks.example.com/iot";
    let http = || RuleAction::Http { url: format!("{url}/alerts"), headers: vec![] };
    let pending = world.services.create_topic_rule_destination(&caller, url).unwrap();
    let arn = pending.destination.arn.clone();
    assert!(arn.contains(":ruledestination/http/"), "{arn}");
    assert_eq!(destinations(&world, &caller), [(arn.clone(), DestinationStatus::InProgress)]);

    // Not confirmed: refused, and nothing changes.
    check_create_refused(
        &world,
        &caller,
        "r",
        payload("SELECT * FROM 'a'", vec![http()]),
        "InvalidRequest",
        "destination",
    );
    let error = world.services.update_topic_rule_destination(&caller, &arn, DestinationStatus::Enabled).unwrap_err();
    assert_eq!(error.kind(), "InvalidRequest");
    for wrong in ["", "0000", &pending.confirmation_token[1..]] {
        let error = world.services.confirm_topic_rule_destination(&caller, wrong).unwrap_err();
        assert_eq!(error.kind(), "InvalidRequest", "{wrong}");
    }
    // Another account can neither see nor confirm it.
    let stranger = world.caller();
    assert_eq!(world.services.get_topic_rule_destination(&stranger, &arn).unwrap_err().kind(), "RuleNotFound");
    let error = world.services.confirm_topic_rule_destination(&stranger, &pending.confirmation_token).unwrap_err();
    assert_eq!(error.kind(), "InvalidRequest");
    assert_eq!(destinations(&world, &caller), [(arn.clone(), DestinationStatus::InProgress)]);
    // The same URL twice is refused.
    let error = world.services.create_topic_rule_destination(&caller, url).unwrap_err();
    assert_eq!(error.kind(), "AlreadyExists");

    // Confirmed: the rule is accepted and its action covered.
    world.services.confirm_topic_rule_destination(&caller, &pending.confirmation_token).unwrap();
    assert_eq!(destinations(&world, &caller), [(arn.clone(), DestinationStatus::Enabled)]);
    world.services.create_topic_rule(&caller, "r", &payload("SELECT * FROM 'a'", vec![http()])).unwrap();
    let covers = || {
        let runnable = world.services.runnable_topic_rules(&caller.account).unwrap();
        runnable[0].destination_covers(&format!("{url}/alerts"))
    };
    assert!(covers());
    // A late failure report of the confirmation changes nothing once confirmed.
    world.services.topic_rule_destination_unreachable(&pending, "unreachable").unwrap();
    assert_eq!(destinations(&world, &caller), [(arn.clone(), DestinationStatus::Enabled)]);

    // Disabled: the stored rule's action is no longer covered, and new ones are refused.
    world.services.update_topic_rule_destination(&caller, &arn, DestinationStatus::Disabled).unwrap();
    assert!(!covers());
    check_create_refused(
        &world,
        &caller,
        "r2",
        payload("SELECT * FROM 'a'", vec![http()]),
        "InvalidRequest",
        "destination",
    );
    world.services.update_topic_rule_destination(&caller, &arn, DestinationStatus::Enabled).unwrap();
    assert!(covers());
    let error = world.services.update_topic_rule_destination(&caller, &arn, DestinationStatus::Error).unwrap_err();
    assert_eq!(error.kind(), "InvalidRequest");

    // IN_PROGRESS again: a new token; the old one no longer confirms, and an undeliverable
    // confirmation puts it in ERROR with the (generic) reason.
    let again =
        world.services.update_topic_rule_destination(&caller, &arn, DestinationStatus::InProgress).unwrap().unwrap();
    assert_ne!(again.confirmation_token, pending.confirmation_token);
    assert!(!covers());
    assert!(world.services.confirm_topic_rule_destination(&caller, &pending.confirmation_token).is_err());
    world.services.topic_rule_destination_unreachable(&again, "the destination could not be reached").unwrap();
    let failed = world.services.get_topic_rule_destination(&caller, &arn).unwrap();
    assert_eq!(failed.status, DestinationStatus::Error);
    assert!(failed.status_reason.unwrap().contains("could not be reached"));
    assert!(world.services.confirm_topic_rule_destination(&caller, &again.confirmation_token).is_err());

    // Deleted: gone, and the rule's action is not covered.
    world.services.delete_topic_rule_destination(&caller, &arn).unwrap();
    assert!(destinations(&world, &caller).is_empty());
    assert!(!covers());
    assert_eq!(world.services.delete_topic_rule_destination(&caller, &arn).unwrap_err().kind(), "RuleNotFound");

    for bad in ["ftp://x/", "https://", "https://user@host/", "https://a.example/#frag", "https://a b/"] {
        let error = world.services.create_topic_rule_destination(&caller, bad).unwrap_err();
        assert_eq!(error.kind(), "InvalidRequest", "{bad}");
    }
    assert!(destinations(&world, &caller).is_empty());
}
