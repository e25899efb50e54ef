//! A gate for log lines a peer can cause: at most one line per interval for each cause, with a
//! count of the lines it held back, so that a flood of strangers' handshakes or a tenant's
//! failing rule cannot flood the log (the counters in `/metrics` still count every event).

use std::time::{Duration, Instant};

/// At most one admitted event per `interval` for each of `N` causes (indexed `0..N`).
#[derive(Debug)]
pub struct LogGate<const N: usize> {
    interval: Duration,
    /// Per cause: when an event was last admitted, and how many were held back since.
    slots: [(Option<Instant>, u64); N],
}

impl<const N: usize> LogGate<N> {
    /// A gate admitting one event per `interval` for each cause.
    pub const fn new(interval: Duration) -> Self {
        LogGate { interval, slots: [(None, 0); N] }
    }

    /// One event of `cause` at `now`: `Some(held_back)` when it is to be logged (the first of
    /// its cause, or the first after `interval`), with how many of its cause were held back
    /// since the last admitted one; `None` when it is held back. A cause past `N` is always
    /// admitted (a programming error must not silence a log line).
    pub fn admit(&mut self, cause: usize, now: Instant) -> Option<u64> {
        let Some((last, held_back)) = self.slots.get_mut(cause) else { return Some(0) };
        match last {
            Some(at) if now.saturating_duration_since(*at) < self.interval => {
                *held_back += 1;
                None
            }
            _ => {
                *last = Some(now);
                Some(std::mem::take(held_back))
            }
        }
    }
}

/// One line a second per cause: the interval every gate in certfleet uses.
impl<const N: usize> Default for LogGate<N> {
    fn default() -> Self {
        LogGate::new(Duration::from_secs(1))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_event_per_interval_per_cause_with_the_count_held_back() {
        let start = Instant::now();
        let second = Duration::from_secs(1);
        let mut gate = LogGate::<2>::new(second);
        assert_eq!(gate.admit(0, start), Some(0), "the first is logged");
        assert_eq!(gate.admit(0, start + second / 2), None);
        assert_eq!(gate.admit(0, start + second / 2), None);
        assert_eq!(gate.admit(1, start + second / 2), Some(0), "causes do not hold each other back");
        assert_eq!(gate.admit(0, start + second), Some(2), "after the interval, with the two held back");
        assert_eq!(gate.admit(0, start + second), None);
        assert_eq!(gate.admit(0, start + 3 * second), Some(1), "the count starts again");
        assert_eq!(gate.admit(5, start), Some(0), "an unknown cause is never silenced");
        // A clock that goes backwards (a caller's earlier Instant) holds back, never panics.
        assert_eq!(gate.admit(1, start), None);
    }
}
