//! The retained messages of one account's topic space: the last retained message of each topic,
//! sent to new subscriptions that match it.

use std::collections::BTreeMap;
use std::sync::Arc;

use certfleet_mqtt::TopicFilter;
use tokio::time::Instant;

use crate::fabric::Message;

/// Retained messages by topic, in topic order (so that a filter's literal prefix is a range),
/// bounded in count and in bytes ([`message_bytes`]); `bytes` is always the sum over `messages`.
pub(crate) struct Retained {
    messages: BTreeMap<String, Arc<Message>>,
    limits: RetainedLimits,
    bytes: usize,
    /// When expired messages were last swept out (see [`Retained::purge_expired`]).
    last_purge: Option<Instant>,
}

/// How often a refusal may sweep expired messages out, at most.
const PURGE_INTERVAL: std::time::Duration = std::time::Duration::from_secs(1);

/// How much one account may retain.
#[derive(Clone, Copy, Debug)]
pub(crate) struct RetainedLimits {
    pub(crate) messages: usize,
    pub(crate) bytes: usize,
}

/// The bytes a message holds in the broker: payload, topic and forwarded properties (the
/// accounting unit of every byte bound; the `Arc` and map overheads are not counted).
pub(crate) fn message_bytes(message: &Message) -> usize {
    let properties = &message.properties;
    let user: usize = properties.user_properties.iter().map(|(key, value)| key.len() + value.len()).sum();
    message.payload.len()
        + message.topic.as_str().len()
        + user
        + properties.content_type.as_ref().map_or(0, String::len)
        + properties.response_topic.as_ref().map_or(0, |topic| topic.as_str().len())
        + properties.correlation_data.as_ref().map_or(0, bytes::Bytes::len)
}

/// What keeping a retained message did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Kept {
    Stored,
    /// An empty payload removed the topic's retained message.
    Deleted,
    /// Keeping it would take the account past its count of retained messages.
    TooMany,
    /// Keeping it would take the account past its bytes of retained messages.
    TooLarge,
}

impl Retained {
    pub(crate) fn new(limits: RetainedLimits) -> Self {
        Retained { messages: BTreeMap::new(), limits, bytes: 0, last_purge: None }
    }

    /// Whether keeping `message` would stay within the bounds (deleting always does; replacing a
    /// topic's message counts only the difference). Checking changes nothing.
    pub(crate) fn admits(&self, message: &Message) -> Result<(), Kept> {
        if message.payload.is_empty() {
            return Ok(());
        }
        let replaced = self.messages.get(message.topic.as_str()).map(|old| message_bytes(old));
        if replaced.is_none() && self.messages.len() >= self.limits.messages {
            return Err(Kept::TooMany);
        }
        let after = self.bytes - replaced.unwrap_or(0) + message_bytes(message);
        if after > self.limits.bytes {
            return Err(Kept::TooLarge);
        }
        Ok(())
    }

    /// Keeps `message` as its topic's retained message if the bounds allow; an empty payload
    /// deletes it instead.
    pub(crate) fn keep(&mut self, message: &Arc<Message>) -> Kept {
        let topic = message.topic.as_str();
        if message.payload.is_empty() {
            self.remove(topic);
            return Kept::Deleted;
        }
        if let Err(refused) = self.admits(message) {
            return refused;
        }
        self.remove(topic);
        self.bytes += message_bytes(message);
        self.messages.insert(topic.to_owned(), message.clone());
        Kept::Stored
    }

    /// Drops the expired messages (otherwise dropped only when a subscription matches them), so
    /// that they do not hold an account's quota; at most once per [`PURGE_INTERVAL`], since it
    /// walks every message. Returns whether it swept.
    pub(crate) fn purge_expired(&mut self, now: Instant) -> bool {
        if self.last_purge.is_some_and(|last| now.saturating_duration_since(last) < PURGE_INTERVAL) {
            return false;
        }
        self.last_purge = Some(now);
        let expired: Vec<String> =
            self.messages.iter().filter(|(_, message)| message.expired(now)).map(|(topic, _)| topic.clone()).collect();
        for topic in expired {
            self.remove(&topic);
        }
        true
    }

    /// Deletes the retained message of `topic`, if any (the cluster's store deleted it).
    pub(crate) fn forget(&mut self, topic: &certfleet_mqtt::TopicName) -> Kept {
        self.remove(topic.as_str());
        Kept::Deleted
    }

    fn remove(&mut self, topic: &str) {
        if let Some(old) = self.messages.remove(topic) {
            self.bytes -= message_bytes(&old);
        }
    }

    /// The unexpired retained messages `filter` matches (a shared subscription's filter without
    /// its `$share/{group}/` prefix); expired ones are dropped on the way.
    pub(crate) fn matching(&mut self, filter: &TopicFilter, now: Instant) -> Vec<Arc<Message>> {
        let text = filter.filter();
        if !filter.has_wildcards() {
            return match self.messages.get(text) {
                Some(message) if message.expired(now) => {
                    self.remove(text);
                    Vec::new()
                }
                Some(message) => vec![message.clone()],
                None => Vec::new(),
            };
        }
        // The levels before the first wildcard are a prefix every match shares.
        let prefix_end = text.find(['+', '#']).unwrap_or(text.len());
        let prefix = &text[..prefix_end];
        let mut expired = Vec::new();
        let mut found = Vec::new();
        for (topic, message) in
            self.messages.range(prefix.to_owned()..).take_while(|(topic, _)| topic.starts_with(prefix))
        {
            if !filter.matches(&message.topic) {
                continue;
            }
            if message.expired(now) {
                expired.push(topic.clone());
            } else {
                found.push(message.clone());
            }
        }
        for topic in expired {
            self.remove(&topic);
        }
        found
    }

    pub(crate) fn len(&self) -> usize {
        self.messages.len()
    }

    /// The bytes held ([`message_bytes`] summed).
    pub(crate) fn bytes(&self) -> usize {
        self.bytes
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use certfleet_mqtt::{Properties, QoS, TopicName};
    use std::time::Duration;

    fn message(topic: &str, payload: &str, expires_at: Option<Instant>) -> Arc<Message> {
        Arc::new(Message {
            topic: TopicName::new(topic).unwrap(),
            payload: Bytes::from(payload.to_owned()),
            qos: QoS::AtMostOnce,
            retain: true,
            properties: Properties::default(),
            expires_at,
            publisher: None,
        })
    }

    fn topics(found: Vec<Arc<Message>>) -> Vec<String> {
        found.iter().map(|message| message.topic.to_string()).collect()
    }

    #[test]
    fn keep_match_delete_expire() {
        let now = Instant::now();
        let mut retained = Retained::new(RetainedLimits { messages: 4, bytes: 1 << 20 });
        for topic in ["a/b", "a/c", "a/b/c", "$SYS/x"] {
            assert_eq!(retained.keep(&message(topic, "x", None)), Kept::Stored);
        }
        assert_eq!(retained.keep(&message("b", "x", None)), Kept::TooMany);
        assert_eq!(retained.keep(&message("a/b", "y", None)), Kept::Stored, "replacing is not growing");
        let check = |retained: &mut Retained, filter: &str, expected: &[&str]| {
            assert_eq!(topics(retained.matching(&TopicFilter::new(filter).unwrap(), now)), expected, "{filter}");
        };
        check(&mut retained, "a/+", &["a/b", "a/c"]);
        check(&mut retained, "a/#", &["a/b", "a/b/c", "a/c"]);
        check(&mut retained, "#", &["a/b", "a/b/c", "a/c"]);
        check(&mut retained, "$SYS/#", &["$SYS/x"]);
        check(&mut retained, "a/b", &["a/b"]);
        check(&mut retained, "$share/g/a/c", &["a/c"]);
        assert_eq!(retained.keep(&message("a/b", "", None)), Kept::Deleted);
        check(&mut retained, "a/+", &["a/c"]);
        assert_eq!(retained.keep(&message("$SYS/x", "", None)), Kept::Deleted);
        assert_eq!(retained.keep(&message("a/d", "x", Some(now + Duration::from_secs(1)))), Kept::Stored);
        assert_eq!(retained.keep(&message("a/e", "x", Some(now))), Kept::Stored);
        check(&mut retained, "a/+", &["a/c", "a/d"]);
        check(&mut retained, "a/e", &[]);
        assert_eq!(retained.len(), 3, "the expired message is gone");
        assert_eq!(retained.bytes(), "a/cx".len() + "a/b/cx".len() + "a/dx".len());
    }

    #[test]
    fn the_byte_bound_counts_replacements_and_deletions_exactly() {
        // Topic "t/N" (3 bytes) + payload: 10 bytes each.
        let payload = "x".repeat(7);
        let mut retained = Retained::new(RetainedLimits { messages: 100, bytes: 30 });
        for topic in ["t/1", "t/2", "t/3"] {
            assert_eq!(retained.keep(&message(topic, &payload, None)), Kept::Stored);
        }
        assert_eq!(retained.bytes(), 30);
        assert_eq!(retained.keep(&message("t/4", &payload, None)), Kept::TooLarge);
        assert_eq!(retained.keep(&message("t/1", &"y".repeat(8), None)), Kept::TooLarge, "a larger replacement");
        assert_eq!(retained.keep(&message("t/1", "yy", None)), Kept::Stored, "a smaller replacement");
        assert_eq!(retained.bytes(), 25);
        assert_eq!(retained.keep(&message("t/1", &payload, None)), Kept::Stored, "the same size again");
        assert_eq!(retained.keep(&message("t/2", "", None)), Kept::Deleted);
        assert_eq!(retained.keep(&message("t/9", "", None)), Kept::Deleted, "deleting nothing");
        assert_eq!(retained.bytes(), 20);
        assert_eq!(retained.keep(&message("t/4", &payload, None)), Kept::Stored);
        assert_eq!(retained.len(), 3);
        assert_eq!(retained.bytes(), 30);

        // Expired messages give their room back when a refusal sweeps them out.
        let now = Instant::now();
        assert_eq!(retained.keep(&message("t/1", &payload, Some(now))), Kept::Stored);
        assert_eq!(retained.keep(&message("t/5", &payload, None)), Kept::TooLarge);
        assert!(retained.purge_expired(now));
        assert_eq!(retained.bytes(), 20);
        assert_eq!(retained.keep(&message("t/5", &payload, None)), Kept::Stored);
        assert!(!retained.purge_expired(now), "not twice within the interval");
    }
}
