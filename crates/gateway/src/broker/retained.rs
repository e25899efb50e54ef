//! The retained messages of one account's topic space: the last retained message of each topic,
//! sent to new subscriptions that match it.

use std::collections::BTreeMap;
use std::sync::Arc;

use certfleet_mqtt::TopicFilter;
use tokio::time::Instant;

use crate::fabric::Message;

/// Retained messages by topic, in topic order (so that a filter's literal prefix is a range).
pub(crate) struct Retained {
    messages: BTreeMap<String, Arc<Message>>,
    limit: usize,
}

/// What keeping a retained message did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Kept {
    Stored,
    /// An empty payload removed the topic's retained message.
    Deleted,
    /// The account holds the maximum number of retained messages already.
    Full,
}

impl Retained {
    pub(crate) fn new(limit: usize) -> Self {
        Retained { messages: BTreeMap::new(), limit }
    }

    /// Keeps `message` as its topic's retained message; an empty payload deletes it instead.
    pub(crate) fn keep(&mut self, message: &Arc<Message>) -> Kept {
        let topic = message.topic.as_str();
        if message.payload.is_empty() {
            self.messages.remove(topic);
            return Kept::Deleted;
        }
        if self.messages.len() >= self.limit && !self.messages.contains_key(topic) {
            return Kept::Full;
        }
        self.messages.insert(topic.to_owned(), message.clone());
        Kept::Stored
    }

    /// The unexpired retained messages `filter` matches (a shared subscription's filter without
    /// its `$share/{group}/` prefix); expired ones are dropped on the way.
    pub(crate) fn matching(&mut self, filter: &TopicFilter, now: Instant) -> Vec<Arc<Message>> {
        let text = filter.filter();
        if !filter.has_wildcards() {
            return match self.messages.get(text) {
                Some(message) if message.expired(now) => {
                    self.messages.remove(text);
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
            self.messages.remove(&topic);
        }
        found
    }

    pub(crate) fn len(&self) -> usize {
        self.messages.len()
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
        let mut retained = Retained::new(4);
        for topic in ["a/b", "a/c", "a/b/c", "$SYS/x"] {
            assert_eq!(retained.keep(&message(topic, "x", None)), Kept::Stored);
        }
        assert_eq!(retained.keep(&message("b", "x", None)), Kept::Full);
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
    }
}
