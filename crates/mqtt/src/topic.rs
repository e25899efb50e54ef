//! Topic names and topic filters (spec 4.7, 4.8.2) as validated newtypes, and topic matching.

use std::fmt;

use crate::Error;
use crate::wire::MAX_FIELD_LEN;

/// A topic name a message is published to: non-empty, no wildcard (`+`, `#`), no U+0000, at most
/// 65535 bytes. Levels may be empty (`a//b`, `/a`). A leading `$` marks a server topic (`$SYS/...`,
/// `$aws/...`), which filters starting with a wildcard do not match.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TopicName(String);

impl TopicName {
    /// Validates `name` as a topic name.
    pub fn new(name: impl Into<String>) -> Result<Self, Error> {
        let name = name.into();
        check_common(&name).map_err(Error::InvalidTopicName)?;
        if name.contains(['+', '#']) {
            return Err(Error::InvalidTopicName("contains a wildcard"));
        }
        Ok(TopicName(name))
    }

    /// The name as sent on the wire.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for TopicName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A topic filter a client subscribes to: levels separated by `/`, where `+` stands alone in its
/// level and `#` stands alone in the last level; no U+0000; at most 65535 bytes.
///
/// `$share/{group}/{filter}` is a shared subscription (spec 4.8.2): the group is non-empty and holds
/// no wildcard (and, by construction, no `/`), the filter after it is a valid filter. It is parsed
/// as such in both protocol versions (MQTT 3.1.1 brokers, AWS IoT among them, accept it too).
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TopicFilter {
    text: String,
    /// For a shared subscription, where the group ends (exclusive) and the filter starts.
    share: Option<(usize, usize)>,
}

const SHARE_PREFIX: &str = "$share/";

impl TopicFilter {
    /// Validates `filter` as a topic filter.
    pub fn new(filter: impl Into<String>) -> Result<Self, Error> {
        let text = filter.into();
        check_common(&text).map_err(Error::InvalidTopicFilter)?;
        let share = match text.strip_prefix(SHARE_PREFIX) {
            None => None,
            Some(rest) => {
                let Some((group, _)) = rest.split_once('/') else {
                    return Err(Error::InvalidTopicFilter("shared subscription without a filter"));
                };
                if group.is_empty() {
                    return Err(Error::InvalidTopicFilter("shared subscription with an empty group"));
                }
                if group.contains(['+', '#']) {
                    return Err(Error::InvalidTopicFilter("shared subscription group holds a wildcard"));
                }
                let group_end = SHARE_PREFIX.len() + group.len();
                Some((group_end, group_end + 1))
            }
        };
        let filter_start = share.map_or(0, |(_, start)| start);
        let filter = &text[filter_start..];
        if filter.is_empty() {
            return Err(Error::InvalidTopicFilter("shared subscription with an empty filter"));
        }
        let mut levels = filter.split('/').peekable();
        while let Some(level) = levels.next() {
            if level.contains('#') && (level != "#" || levels.peek().is_some()) {
                return Err(Error::InvalidTopicFilter("'#' must be alone in the last level"));
            }
            if level.contains('+') && level != "+" {
                return Err(Error::InvalidTopicFilter("'+' must be alone in its level"));
            }
        }
        Ok(TopicFilter { text, share })
    }

    /// The filter as sent on the wire, `$share/{group}/` prefix included.
    pub fn as_str(&self) -> &str {
        &self.text
    }

    /// The share name of a shared subscription (`g` in `$share/g/a/+`).
    pub fn share_group(&self) -> Option<&str> {
        self.share.map(|(group_end, _)| &self.text[SHARE_PREFIX.len()..group_end])
    }

    /// The filter matched against topic names: without the `$share/{group}/` prefix.
    pub fn filter(&self) -> &str {
        &self.text[self.share.map_or(0, |(_, start)| start)..]
    }

    /// True if the filter holds `+` or `#`.
    pub fn has_wildcards(&self) -> bool {
        self.filter().contains(['+', '#'])
    }

    /// Whether a message published to `topic` matches this filter (spec 4.7): `+` matches exactly
    /// one level (possibly empty), `#` the parent level and any number of levels below, and a
    /// filter starting with a wildcard does not match a topic starting with `$` (MQTT-4.7.2-1).
    pub fn matches(&self, topic: &TopicName) -> bool {
        let filter = self.filter();
        let topic = topic.as_str();
        if topic.starts_with('$') && filter.starts_with(['+', '#']) {
            return false;
        }
        let mut filter_levels = filter.split('/');
        let mut topic_levels = topic.split('/');
        loop {
            match (filter_levels.next(), topic_levels.next()) {
                (Some("#"), _) => return true,
                (Some("+"), Some(_)) => {}
                (Some(filter_level), Some(topic_level)) if filter_level == topic_level => {}
                (None, None) => return true,
                _ => return false,
            }
        }
    }
}

impl fmt::Display for TopicFilter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

/// The rules topic names and filters share.
fn check_common(text: &str) -> Result<(), &'static str> {
    if text.is_empty() {
        return Err("empty");
    }
    if text.len() > MAX_FIELD_LEN {
        return Err("longer than 65535 bytes");
    }
    if text.contains('\0') {
        return Err("contains the null character u+0000");
    }
    Ok(())
}
