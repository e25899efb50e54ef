//! Counters of the gateway: refusals per reason, handshakes, connections.

use std::sync::atomic::{AtomicU64, Ordering};

use crate::identity::Refusal;

/// The gateway's counters, cheap to bump from any task.
#[derive(Default)]
pub struct Metrics {
    refusals: [AtomicU64; Refusal::ALL.len()],
    pub handshakes_completed: AtomicU64,
    pub handshakes_failed: AtomicU64,
    pub connections_accepted: AtomicU64,
    pub connections_over_limit: AtomicU64,
}

impl Metrics {
    /// Counts a refusal.
    pub fn refused(&self, reason: Refusal) {
        if let Some(index) = Refusal::ALL.iter().position(|known| *known == reason) {
            self.refusals[index].fetch_add(1, Ordering::Relaxed);
        }
    }

    /// How many refusals of each reason so far.
    pub fn refusals(&self) -> Vec<(Refusal, u64)> {
        Refusal::ALL
            .iter()
            .zip(&self.refusals)
            .map(|(reason, count)| (*reason, count.load(Ordering::Relaxed)))
            .collect()
    }

    /// The count of one reason.
    pub fn refusal_count(&self, reason: Refusal) -> u64 {
        self.refusals().into_iter().find(|(known, _)| *known == reason).map_or(0, |(_, count)| count)
    }
}
