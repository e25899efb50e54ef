//! Topic names, topic filters and matching (spec 4.7, 4.8.2), mostly the spec's own examples.

use certfleet_mqtt::{Error, TopicFilter, TopicName};

use crate::{filter, topic};

fn check_match(filter_text: &str, topic_name: &str, expected: bool) {
    assert_eq!(filter(filter_text).matches(&topic(topic_name)), expected, "{filter_text} vs {topic_name}");
}

#[test]
fn matching() {
    check_match("sport/tennis/player1/#", "sport/tennis/player1", true);
    check_match("sport/tennis/player1/#", "sport/tennis/player1/ranking", true);
    check_match("sport/tennis/player1/#", "sport/tennis/player1/score/wimbledon", true);
    check_match("sport/tennis/+", "sport/tennis/player1", true);
    check_match("sport/tennis/+", "sport/tennis/player1/ranking", false);
    check_match("sport/tennis/+", "sport/tennis", false);
    check_match("sport/#", "sport", true);
    check_match("sport/+", "sport", false);
    check_match("sport/+", "sport/", true);
    check_match("+/+", "/finance", true);
    check_match("/+", "/finance", true);
    check_match("+", "/finance", false);
    check_match("+", "finance", true);
    check_match("#", "/finance", true);
    check_match("#", "a/b/c", true);
    check_match("+/tennis/#", "sport/tennis/player1", true);
    check_match("a/b", "a/b", true);
    check_match("a/b", "a/b/", false);
    check_match("a/b", "a", false);
    check_match("a//b", "a//b", true);
    check_match("a/+/b", "a//b", true);
    check_match("A/b", "a/b", false);
    // Topics starting with $ are not matched by filters starting with a wildcard.
    check_match("#", "$SYS/x", false);
    check_match("+/monitor/Clients", "$SYS/monitor/Clients", false);
    check_match("+/monitor", "$SYS/monitor", false);
    check_match("$SYS/#", "$SYS/x", true);
    check_match("$SYS/monitor/+", "$SYS/monitor/Clients", true);
    check_match("$aws/things/+/shadow/update", "$aws/things/t1/shadow/update", true);
    check_match("a/$x", "a/$x", true);
    check_match("a/+", "a/$x", true);
    // A shared subscription matches by its filter.
    check_match("$share/g/sport/#", "sport/tennis", true);
    check_match("$share/g/sport/#", "other", false);
    check_match("$share/g/#", "$SYS/x", false);
}

#[test]
fn filters() {
    let valid = [
        "#",
        "+",
        "+/+",
        "/",
        "//",
        "a/#",
        "a/+/b",
        "+/#",
        "$SYS/#",
        "$share",
        "$sharex/a",
        "$share/g/#",
        "$share/g/a/+",
        "$share/group-1/$SYS/x",
        "a b/c",
        "\u{1F600}",
    ];
    for text in valid {
        assert_eq!(TopicFilter::new(text).map(|filter| filter.as_str().to_owned()), Ok(text.to_owned()));
    }
    let invalid = [
        ("", "empty"),
        ("a/#/b", "'#' must be alone in the last level"),
        ("#/", "'#' must be alone in the last level"),
        ("a#", "'#' must be alone in the last level"),
        ("#a", "'#' must be alone in the last level"),
        ("a+", "'+' must be alone in its level"),
        ("+a/b", "'+' must be alone in its level"),
        ("a/++", "'+' must be alone in its level"),
        ("a\0", "contains the null character u+0000"),
        ("$share//x", "shared subscription with an empty group"),
        ("$share/g", "shared subscription without a filter"),
        ("$share/", "shared subscription without a filter"),
        ("$share/g/", "shared subscription with an empty filter"),
        ("$share/+/x", "shared subscription group holds a wildcard"),
        ("$share/g#/x", "shared subscription group holds a wildcard"),
        ("$share/g/a#", "'#' must be alone in the last level"),
    ];
    for (text, reason) in invalid {
        assert_eq!(TopicFilter::new(text), Err(Error::InvalidTopicFilter(reason)), "{text:?}");
    }
    let too_long = "a".repeat(65_536);
    assert_eq!(TopicFilter::new(too_long), Err(Error::InvalidTopicFilter("longer than 65535 bytes")));
    assert!(TopicFilter::new("a".repeat(65_535)).is_ok());
}

#[test]
fn shared_subscriptions() {
    let check = |text: &str, group: Option<&str>, inner: &str, wildcards: bool| {
        let parsed = filter(text);
        assert_eq!(
            (parsed.share_group(), parsed.filter(), parsed.has_wildcards()),
            (group, inner, wildcards),
            "{text}"
        );
        assert_eq!(parsed.to_string(), text);
    };
    check("$share/g/a/+", Some("g"), "a/+", true);
    check("$share/consumers/sensors/temp", Some("consumers"), "sensors/temp", false);
    check("$share/g/#", Some("g"), "#", true);
    check("a/+", None, "a/+", true);
    check("$share", None, "$share", false);
    check("$sharex/a", None, "$sharex/a", false);
}

#[test]
fn names() {
    for text in ["a", "/", "a/b", "a//b", "$SYS/x", "$share/g/a", "a b", "\u{e9}t\u{e9}"] {
        assert_eq!(TopicName::new(text).map(|name| name.to_string()), Ok(text.to_owned()));
    }
    let invalid = [
        ("", "empty"),
        ("a/+", "contains a wildcard"),
        ("a/#", "contains a wildcard"),
        ("a+b", "contains a wildcard"),
        ("a\0b", "contains the null character u+0000"),
    ];
    for (text, reason) in invalid {
        assert_eq!(TopicName::new(text), Err(Error::InvalidTopicName(reason)), "{text:?}");
    }
    assert_eq!(TopicName::new("a".repeat(65_536)), Err(Error::InvalidTopicName("longer than 65535 bytes")));
    assert_eq!(topic("x/y").as_str(), "x/y");
}
