//! How MQTT topics, filters and client IDs become NATS subjects and JetStream KV keys.
//!
//! A topic's levels become a subject's tokens one for one, so that NATS's wildcards do what
//! MQTT's do: `+` is `*`, and `#` is `>` (plus the parent level, which MQTT's `#` also
//! matches). A token may not hold `.`, `*`, `>` or white space and may not be empty, while an
//! MQTT level may hold anything but `/`, `+`, `#` and NUL, and may be empty; so each level is
//! escaped: ASCII letters, digits, `-` and `_` stay, every other byte is `=` and two upper-case
//! hex digits, and the empty level is `=` alone. The escaping is injective (a decoded `=` is
//! always followed by two hex digits, except in the empty level's token) and its output is also
//! a valid JetStream KV key token.
//!
//! A subject is bounded ([`MAX_SUBJECT`]): NATS closes a connection whose control line is too
//! long. A topic past the bound is not carried across nodes (the broker says so); a filter past
//! it subscribes to a shorter prefix and `>` (more messages than it needs: the router matches
//! every message against its own subscriptions anyway).

use std::fmt::Write as _;

use certfleet_mqtt::{TopicFilter, TopicName};
use certfleet_registry::AccountId;

/// The longest subject certfleet sends to NATS (its default control line is 4,096 bytes).
pub(crate) const MAX_SUBJECT: usize = 2048;

/// The prefix of application messages: `cf.m.<account>.<levels>`.
const MESSAGES: &str = "cf.m";

/// The subject of client ID claims of an account.
pub(crate) fn claims(account: &AccountId) -> String {
    format!("cf.c.{account}")
}

/// Every account's claims.
pub(crate) const ALL_CLAIMS: &str = "cf.c.*";

/// Escapes one level (or a client ID) into a subject token.
pub(crate) fn token(level: &str, out: &mut String) {
    if level.is_empty() {
        out.push('=');
        return;
    }
    for byte in level.bytes() {
        if byte.is_ascii_alphanumeric() || byte == b'-' || byte == b'_' {
            out.push(char::from(byte));
        } else {
            let _ = write!(out, "={byte:02X}");
        }
    }
}

/// The subject a message on `topic` travels on; `None` past [`MAX_SUBJECT`].
pub(crate) fn message(account: &AccountId, topic: &TopicName) -> Option<String> {
    let mut subject = format!("{MESSAGES}.{account}");
    for level in topic.as_str().split('/') {
        subject.push('.');
        token(level, &mut subject);
        if subject.len() > MAX_SUBJECT {
            return None;
        }
    }
    Some(subject)
}

/// The subjects a node subscribes to for `filter` (a shared subscription's filter without its
/// `$share/{group}/` prefix): one, or two for a filter ending in `#` (the parent level too).
pub(crate) fn filter(account: &AccountId, filter: &TopicFilter) -> Vec<String> {
    let prefix = format!("{MESSAGES}.{account}");
    let mut subject = prefix.clone();
    let mut parent = None;
    for level in filter.filter().split('/') {
        let before = subject.len();
        match level {
            "+" => subject.push_str(".*"),
            "#" => {
                // `a/#` matches `a` too; `#` alone matches every topic.
                if subject.len() > prefix.len() {
                    parent = Some(subject.clone());
                }
                subject.push_str(".>");
            }
            _ => {
                subject.push('.');
                token(level, &mut subject);
            }
        }
        if subject.len() > MAX_SUBJECT - 2 {
            // Too long: a prefix and `>`, which matches every topic the filter does.
            subject.truncate(before);
            subject.push_str(".>");
            return vec![subject];
        }
    }
    parent.into_iter().chain(std::iter::once(subject)).collect()
}

/// The JetStream KV key of a retained message or a client ID: `<account>.<levels>`.
pub(crate) fn retained_key(account: &AccountId, topic: &TopicName) -> Option<String> {
    let subject = message(account, topic)?;
    Some(subject[MESSAGES.len() + 1..].to_owned())
}

/// The account and topic a retained message's key names; `None` for a key certfleet did not
/// write.
pub(crate) fn parse_retained_key(key: &str) -> Option<(AccountId, TopicName)> {
    let (account, levels) = key.split_once('.')?;
    let account = AccountId::parse(account).ok()?;
    let mut topic = Vec::new();
    for level in levels.split('.') {
        topic.push(untoken(level)?);
    }
    let topic = String::from_utf8(topic.join(&b'/')).ok()?;
    Some((account, TopicName::new(topic).ok()?))
}

/// The JetStream KV key of a client ID's claim.
pub(crate) fn client_key(account: &AccountId, client_id: &str) -> String {
    let mut key = format!("{account}.");
    token(client_id, &mut key);
    key
}

/// A name for a shared group's NATS queue: unique per account, group and filter, one token.
pub(crate) fn queue(account: &AccountId, shared: &TopicFilter) -> String {
    let digest =
        aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, format!("{account}/{}", shared.as_str()).as_bytes());
    let mut name = String::from("q");
    for byte in &digest.as_ref()[..16] {
        let _ = write!(name, "{byte:02x}");
    }
    name
}

/// Undoes [`token`].
fn untoken(token: &str) -> Option<Vec<u8>> {
    if token == "=" {
        return Some(Vec::new());
    }
    let bytes = token.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut index = 0;
    while index < bytes.len() {
        let byte = bytes[index];
        if byte == b'=' {
            let hex = token.get(index + 1..index + 3)?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            index += 3;
        } else if byte.is_ascii_alphanumeric() || byte == b'-' || byte == b'_' {
            out.push(byte);
            index += 1;
        } else {
            return None;
        }
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn account() -> AccountId {
        AccountId::parse("123456789012").unwrap()
    }

    fn subject(topic: &str) -> String {
        message(&account(), &TopicName::new(topic).unwrap()).unwrap()
    }

    fn filters(text: &str) -> Vec<String> {
        filter(&account(), &TopicFilter::new(text).unwrap())
    }

    #[test]
    fn topics_keep_their_levels_and_nothing_nats_forbids() {
        assert_eq!(subject("a/b"), "cf.m.123456789012.a.b");
        assert_eq!(subject("a//b"), "cf.m.123456789012.a.=.b");
        assert_eq!(subject("/"), "cf.m.123456789012.=.=");
        assert_eq!(subject("a.b/*/>/ x"), "cf.m.123456789012.a=2Eb.=2A.=3E.=20x");
        assert_eq!(subject("$aws/things/t-1_x/shadow"), "cf.m.123456789012.=24aws.things.t-1_x.shadow");
        assert_eq!(subject("é/=41"), "cf.m.123456789012.=C3=A9.=3D41");
        // Distinct topics, distinct subjects (the escape char escapes itself).
        assert_ne!(subject("=41"), subject("A"));
        let long = "x".repeat(MAX_SUBJECT);
        assert_eq!(message(&account(), &TopicName::new(long).unwrap()), None);
    }

    #[test]
    fn filters_become_nats_wildcards() {
        assert_eq!(filters("a/+/c"), ["cf.m.123456789012.a.*.c"]);
        assert_eq!(filters("a/#"), ["cf.m.123456789012.a", "cf.m.123456789012.a.>"]);
        assert_eq!(filters("#"), ["cf.m.123456789012.>"]);
        assert_eq!(filters("+"), ["cf.m.123456789012.*"]);
        assert_eq!(filters("$share/g/a/+"), ["cf.m.123456789012.a.*"]);
        let long = format!("{}/+/x", "y".repeat(MAX_SUBJECT));
        let truncated = filters(&long);
        assert_eq!(truncated, ["cf.m.123456789012.>"], "a prefix that fits, then >");
    }

    #[test]
    fn retained_keys_round_trip() {
        for topic in ["a/b", "a//b", "/", "$aws/x.y/*", "é/=41/ "] {
            let name = TopicName::new(topic).unwrap();
            let key = retained_key(&account(), &name).unwrap();
            assert!(key.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_=.".contains(&b)), "{key}");
            assert_eq!(parse_retained_key(&key), Some((account(), name)), "{topic}");
        }
        assert_eq!(parse_retained_key("nope.a"), None);
        assert_eq!(parse_retained_key("123456789012.=Z1"), None);
        assert_eq!(parse_retained_key("123456789012.a*b"), None);
        assert_eq!(client_key(&account(), "dev/1.x"), "123456789012.dev=2F1=2Ex");
        assert_ne!(
            queue(&account(), &TopicFilter::new("$share/g/a").unwrap()),
            queue(&account(), &TopicFilter::new("$share/h/a").unwrap())
        );
    }
}
