//! Delays between connection attempts: exponential with full jitter (a uniformly random delay
//! between zero and `min(max, initial * 2^attempt)`), so a fleet that lost its gateway at once
//! does not come back at once.

use std::time::Duration;

/// Backoff settings.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Backoff {
    /// The ceiling of the first delay.
    pub initial: Duration,
    /// The largest ceiling.
    pub max: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff { initial: Duration::from_secs(1), max: Duration::from_secs(60) }
    }
}

impl Backoff {
    /// The ceiling before the `attempt`-th retry (0 for the first): `min(max, initial * 2^attempt)`.
    pub fn ceiling(&self, attempt: u32) -> Duration {
        let factor = 1u32.checked_shl(attempt.min(31)).unwrap_or(u32::MAX);
        self.initial.checked_mul(factor).map_or(self.max, |ceiling| ceiling.min(self.max))
    }

    /// The delay before the `attempt`-th retry, for a random `unit` in `[0, 1)`.
    pub fn delay(&self, attempt: u32, unit: f64) -> Duration {
        self.ceiling(attempt).mul_f64(unit.clamp(0.0, 1.0))
    }
}

/// A uniformly random number in `[0, 1)` from the system's secure random generator (through
/// rustls's provider, so no other dependency); 0.5 should the generator fail.
pub fn random_unit() -> f64 {
    let mut bytes = [0u8; 8];
    match rustls::crypto::aws_lc_rs::default_provider().secure_random.fill(&mut bytes) {
        Ok(()) => (u64::from_le_bytes(bytes) >> 11) as f64 / (1u64 << 53) as f64,
        Err(_) => 0.5,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(attempt: u32, unit: f64, expected_millis: u64) {
        let backoff = Backoff::default();
        assert_eq!(
            backoff.delay(attempt, unit),
            Duration::from_millis(expected_millis),
            "attempt {attempt} unit {unit}"
        );
    }

    #[test]
    fn the_ceiling_doubles_up_to_the_maximum() {
        check(0, 1.0, 1_000);
        check(1, 1.0, 2_000);
        check(2, 1.0, 4_000);
        check(5, 1.0, 32_000);
        check(6, 1.0, 60_000);
        check(7, 1.0, 60_000);
        check(40, 1.0, 60_000);
        check(u32::MAX, 1.0, 60_000);
    }

    #[test]
    fn the_delay_is_a_fraction_of_the_ceiling() {
        check(0, 0.0, 0);
        check(3, 0.5, 4_000);
        check(10, 0.25, 15_000);
        check(2, -3.0, 0);
        check(2, 7.0, 4_000);
    }

    #[test]
    fn delays_are_jittered() {
        let backoff = Backoff::default();
        let delays: Vec<Duration> = (0..32).map(|_| backoff.delay(6, random_unit())).collect();
        assert!(delays.iter().all(|delay| *delay <= Duration::from_secs(60)));
        let distinct: std::collections::HashSet<_> = delays.iter().collect();
        assert!(distinct.len() > 16, "{delays:?}");
    }

    #[test]
    fn random_units_are_in_range() {
        for _ in 0..1000 {
            let unit = random_unit();
            assert!((0.0..1.0).contains(&unit), "{unit}");
        }
    }
}
