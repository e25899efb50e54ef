//! Refused devices of the last hour per account and reason, on this node: what the operator
//! console's overview shows as "why devices fail to connect". One-minute buckets, at most 60
//! kept per account; the accounts tracked are bounded (past the bound, accounts without a
//! refusal in the last hour are forgotten first, and a new account finding it still full is
//! counted in `/metrics` only).
//!
//! No clock and no lock: time is an argument and the caller holds the lock.

use std::collections::{HashMap, VecDeque};

use certfleet_registry::AccountId;
use time::OffsetDateTime;

use crate::identity::Refusal;

/// Minutes kept per account.
const MINUTES: i64 = 60;

/// The upper bounds (seconds) of the revocation-to-disconnect histogram's buckets.
pub const LATENCY_BOUNDS: [f64; 9] = [0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0];

/// How long live sessions took to be told to close after the registry change that refused
/// them (a revocation, a deactivation, a deleted account) was committed: the change-feed
/// entry's time to the close signal, on this node. Prometheus histogram buckets (cumulative
/// when rendered).
#[derive(Debug, Default)]
pub struct Latencies {
    buckets: [u64; LATENCY_BOUNDS.len()],
    count: u64,
    sum: f64,
}

impl Latencies {
    /// One session closed `seconds` after its change (negative, from clock skew between
    /// nodes, counts as 0).
    pub fn observe(&mut self, seconds: f64) {
        let seconds = seconds.max(0.0);
        if let Some(index) = LATENCY_BOUNDS.iter().position(|bound| seconds <= *bound) {
            self.buckets[index] += 1;
        }
        self.count += 1;
        self.sum += seconds;
    }

    /// `(le, cumulative count)` per bucket, then the count and the sum.
    pub fn snapshot(&self) -> (Vec<(f64, u64)>, u64, f64) {
        let mut running = 0;
        let buckets = LATENCY_BOUNDS
            .iter()
            .zip(self.buckets)
            .map(|(bound, count)| {
                running += count;
                (*bound, running)
            })
            .collect();
        (buckets, self.count, self.sum)
    }
}

/// One minute of an account's refusals.
#[derive(Debug)]
struct Minute {
    at: i64,
    counts: Vec<(Refusal, u64)>,
}

/// The last hour's refusals, per account.
#[derive(Debug)]
pub struct RecentRefusals {
    max_accounts: usize,
    accounts: HashMap<AccountId, VecDeque<Minute>>,
}

impl Default for RecentRefusals {
    fn default() -> Self {
        RecentRefusals::new(10_000)
    }
}

fn minute_of(now: OffsetDateTime) -> i64 {
    now.unix_timestamp().div_euclid(60)
}

impl RecentRefusals {
    /// Tracking at most `max_accounts` accounts.
    pub fn new(max_accounts: usize) -> Self {
        RecentRefusals { max_accounts: max_accounts.max(1), accounts: HashMap::new() }
    }

    /// Counts a device of `account` refused for `reason` at `now`.
    pub fn note(&mut self, account: &AccountId, reason: Refusal, now: OffsetDateTime) {
        let minute = minute_of(now);
        if !self.accounts.contains_key(account) && self.accounts.len() >= self.max_accounts {
            self.accounts.retain(|_, minutes| minutes.back().is_some_and(|last| last.at > minute - MINUTES));
            if self.accounts.len() >= self.max_accounts {
                return;
            }
        }
        let minutes = self.accounts.entry(account.clone()).or_default();
        while minutes.front().is_some_and(|first| first.at <= minute - MINUTES) {
            minutes.pop_front();
        }
        if minutes.back().is_none_or(|last| last.at != minute) {
            minutes.push_back(Minute { at: minute, counts: Vec::new() });
        }
        if let Some(current) = minutes.back_mut() {
            match current.counts.iter_mut().find(|(known, _)| *known == reason) {
                Some((_, count)) => *count += 1,
                None => current.counts.push((reason, 1)),
            }
        }
    }

    /// The account's refusals of the hour before `now`, by reason, most frequent first.
    pub fn last_hour(&self, account: &AccountId, now: OffsetDateTime) -> Vec<(Refusal, u64)> {
        let minute = minute_of(now);
        let mut totals: Vec<(Refusal, u64)> = Vec::new();
        for bucket in self.accounts.get(account).into_iter().flatten().filter(|m| m.at > minute - MINUTES) {
            for (reason, count) in &bucket.counts {
                match totals.iter_mut().find(|(known, _)| known == reason) {
                    Some((_, total)) => *total += count,
                    None => totals.push((*reason, *count)),
                }
            }
        }
        totals.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.as_str().cmp(b.0.as_str())));
        totals
    }

    /// Accounts tracked.
    pub fn accounts(&self) -> usize {
        self.accounts.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use time::macros::datetime;

    fn account(digits: &str) -> AccountId {
        AccountId::parse(digits).unwrap()
    }

    #[test]
    fn refusals_are_counted_per_account_for_an_hour() {
        let start = datetime!(2026-06-01 12:00 UTC);
        let mut recent = RecentRefusals::default();
        let (a, b) = (account("111111111111"), account("222222222222"));
        recent.note(&a, Refusal::Revoked, start);
        recent.note(&a, Refusal::Revoked, start + time::Duration::seconds(30));
        recent.note(&a, Refusal::Unregistered, start + time::Duration::minutes(10));
        recent.note(&b, Refusal::Inactive, start);
        let at = |minutes| start + time::Duration::minutes(minutes);
        assert_eq!(recent.last_hour(&a, at(20)), vec![(Refusal::Revoked, 2), (Refusal::Unregistered, 1)]);
        assert_eq!(recent.last_hour(&b, at(20)), vec![(Refusal::Inactive, 1)]);
        // An hour later the first minute has left the window; the tenth-minute one has not.
        assert_eq!(recent.last_hour(&a, at(60)), vec![(Refusal::Unregistered, 1)]);
        assert!(recent.last_hour(&a, at(71)).is_empty());
        // Old minutes are dropped as new ones come.
        recent.note(&a, Refusal::Expired, at(200));
        assert_eq!(recent.last_hour(&a, at(200)), vec![(Refusal::Expired, 1)]);
        assert_eq!(recent.accounts.get(&a).map(VecDeque::len), Some(1));
    }

    #[test]
    fn latencies_fill_cumulative_buckets() {
        let mut latencies = Latencies::default();
        for seconds in [0.01, 0.2, 0.2, 3.0, 100.0, -1.0] {
            latencies.observe(seconds);
        }
        let (buckets, count, sum) = latencies.snapshot();
        assert_eq!(count, 6);
        assert!((sum - 103.41).abs() < 1e-9);
        let at = |le: f64| buckets.iter().find(|(bound, _)| *bound == le).map(|(_, n)| *n);
        assert_eq!(at(0.05), Some(2), "0.01 and the skewed -1");
        assert_eq!(at(0.25), Some(4));
        assert_eq!(at(5.0), Some(5));
        assert_eq!(at(30.0), Some(5), "100 s is only in +Inf (the count)");
    }

    #[test]
    fn the_accounts_tracked_are_bounded() {
        let start = datetime!(2026-06-01 12:00 UTC);
        let mut recent = RecentRefusals::new(2);
        recent.note(&account("111111111111"), Refusal::Revoked, start);
        recent.note(&account("222222222222"), Refusal::Revoked, start);
        recent.note(&account("333333333333"), Refusal::Revoked, start);
        assert_eq!(recent.accounts(), 2, "a third account is not tracked while the others are recent");
        assert!(recent.last_hour(&account("333333333333"), start).is_empty());
        let later = start + time::Duration::minutes(61);
        recent.note(&account("333333333333"), Refusal::Revoked, later);
        assert_eq!(recent.accounts(), 1, "accounts quiet for an hour make room");
        assert_eq!(recent.last_hour(&account("333333333333"), later), vec![(Refusal::Revoked, 1)]);
    }
}
