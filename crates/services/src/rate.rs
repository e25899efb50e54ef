//! A per-key rate bound over fixed windows: at most `limit` events per key in each window (a
//! window starts at the key's first event after the previous one ended). Used wherever a peer
//! could make a node write to the registry at will: just-in-time registrations per account, test
//! endpoint records per account, connection history per certificate.
//!
//! No clock and no lock: time is an argument and the caller holds the lock. The number of keys
//! is bounded: when full, keys whose window ended are forgotten, and a new key finding it still
//! full is refused (a flood of new keys costs nothing but refusals).

use std::collections::HashMap;
use std::hash::Hash;

use time::{Duration, OffsetDateTime};

/// Whether an event may go ahead.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Admission {
    /// Within the key's bound.
    Admitted,
    /// Over it. `first_in_window` is set for the key's first refusal in this window, so a
    /// caller logs once per key and window, not once per event.
    Refused { first_in_window: bool },
}

/// At most `limit` events per key per `window`.
#[derive(Debug)]
pub struct WindowedRate<K> {
    limit: u32,
    window: Duration,
    max_keys: usize,
    entries: HashMap<K, (OffsetDateTime, u32)>,
}

impl<K: Hash + Eq + Clone> WindowedRate<K> {
    /// A bound of `limit` events per key per `window`, tracking at most `max_keys` keys.
    pub fn new(limit: u32, window: Duration, max_keys: usize) -> Self {
        WindowedRate { limit, window, max_keys: max_keys.max(1), entries: HashMap::new() }
    }

    /// Counts an event of `key` at `now`, saying whether it is within the bound.
    pub fn admit(&mut self, key: &K, now: OffsetDateTime) -> Admission {
        let window = self.window;
        if !self.entries.contains_key(key) && self.entries.len() >= self.max_keys {
            self.entries.retain(|_, (start, _)| now - *start < window && now >= *start);
            if self.entries.len() >= self.max_keys {
                return Admission::Refused { first_in_window: false };
            }
        }
        let (start, count) = self.entries.entry(key.clone()).or_insert((now, 0));
        if now - *start >= window || now < *start {
            *start = now;
            *count = 0;
        }
        *count = count.saturating_add(1);
        if *count <= self.limit {
            Admission::Admitted
        } else {
            Admission::Refused { first_in_window: *count == self.limit.saturating_add(1) }
        }
    }

    /// How many keys are tracked.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether no key is tracked.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const T0: OffsetDateTime = time::macros::datetime!(2026-01-01 00:00 UTC);

    fn at(millis: i64) -> OffsetDateTime {
        T0 + Duration::milliseconds(millis)
    }

    #[test]
    fn at_most_limit_per_key_per_window() {
        let mut rate = WindowedRate::new(2, Duration::seconds(1), 10);
        let refused_first = Admission::Refused { first_in_window: true };
        let refused_again = Admission::Refused { first_in_window: false };
        for (key, millis, expected) in [
            ("a", 0, Admission::Admitted),
            ("a", 100, Admission::Admitted),
            ("a", 200, refused_first),
            ("a", 900, refused_again),
            // Another key has its own bound.
            ("b", 950, Admission::Admitted),
            // A new window.
            ("a", 1000, Admission::Admitted),
            ("a", 1001, Admission::Admitted),
            ("a", 1002, refused_first),
            // A clock stepping back starts a new window rather than refusing forever.
            ("b", 10, Admission::Admitted),
        ] {
            assert_eq!(rate.admit(&key, at(millis)), expected, "{key} at {millis}");
        }
    }

    #[test]
    fn keys_are_bounded_and_old_ones_forgotten() {
        let mut rate = WindowedRate::new(5, Duration::seconds(1), 2);
        assert_eq!(rate.admit(&1, at(0)), Admission::Admitted);
        assert_eq!(rate.admit(&2, at(0)), Admission::Admitted);
        // Full of live windows: a new key is refused, the known ones still admitted.
        assert_eq!(rate.admit(&3, at(500)), Admission::Refused { first_in_window: false });
        assert_eq!(rate.admit(&1, at(600)), Admission::Admitted);
        assert_eq!(rate.len(), 2);
        // Both windows ended: they are forgotten, and key 3 is tracked.
        assert_eq!(rate.admit(&3, at(1100)), Admission::Admitted);
        assert_eq!(rate.len(), 1);
    }
}
