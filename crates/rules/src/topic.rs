//! The `FROM` clause's MQTT topic filter: its validation and matching against topic names.
//!
//! The rules are MQTT's (spec 4.7), as in certfleet-mqtt's `TopicFilter`; this crate keeps its
//! own few lines so that the rules engine does not depend on the codec.

/// Checks `filter` as an MQTT topic filter: not empty, no U+0000, `+` alone in its level, `#`
/// alone in the last level.
pub(crate) fn check_filter(filter: &str) -> Result<(), &'static str> {
    if filter.is_empty() {
        return Err("it is empty");
    }
    if filter.contains('\0') {
        return Err("it contains the null character u+0000");
    }
    let mut levels = filter.split('/').peekable();
    while let Some(level) = levels.next() {
        if level.contains('#') && (level != "#" || levels.peek().is_some()) {
            return Err("'#' must be alone in the last level");
        }
        if level.contains('+') && level != "+" {
            return Err("'+' must be alone in its level");
        }
    }
    Ok(())
}

/// Whether a message published to `topic` matches `filter` (checked by [`check_filter`]): `+`
/// matches exactly one level (possibly empty), `#` the parent level and any number below it, and
/// a filter starting with a wildcard does not match a topic starting with `$`.
pub(crate) fn matches(filter: &str, topic: &str) -> bool {
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
