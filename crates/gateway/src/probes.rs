//! The test endpoints' records: what a client presented to an account's test endpoint, kept in
//! the registry for the operator. Anyone can open a TLS connection to a test endpoint, so a
//! record costs a stranger nothing: each account gets at most `per_second` records per second
//! on this node (the rest counted and dropped, logged once per account and second), and the
//! records admitted are written together, one transaction per [`GATHER`], off the handshake's
//! path.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use certfleet_registry::{AccountId, EndpointProbe};
use certfleet_services::Services;
use certfleet_services::rate::{Admission, WindowedRate};

/// How long records gather before they are written in one transaction.
const GATHER: Duration = Duration::from_millis(200);

/// The most records waiting for a write (all accounts together); more are dropped and counted.
const MAX_PENDING: usize = 10_000;

/// The most accounts whose rate is tracked at once.
const MAX_ACCOUNTS: usize = 100_000;

/// Records test endpoint results within each account's rate, in batches.
pub struct ProbeRecorder {
    services: Arc<Services>,
    per_second: u32,
    rate: Mutex<WindowedRate<AccountId>>,
    pending: Mutex<Vec<EndpointProbe>>,
    flushing: AtomicBool,
    /// Records written to the registry.
    pub written: AtomicU64,
    /// Records dropped: over their account's rate, or too many waiting.
    pub dropped: AtomicU64,
}

impl ProbeRecorder {
    /// At most `per_second` records per account per second (each second by the services' clock).
    pub fn new(services: Arc<Services>, per_second: u32) -> Arc<Self> {
        Arc::new(ProbeRecorder {
            services,
            per_second,
            rate: Mutex::new(WindowedRate::new(per_second, time::Duration::seconds(1), MAX_ACCOUNTS)),
            pending: Mutex::new(Vec::new()),
            flushing: AtomicBool::new(false),
            written: AtomicU64::new(0),
            dropped: AtomicU64::new(0),
        })
    }

    /// Queues `probe` for the next batch if its account is within its rate. Must be called on
    /// a Tokio runtime (the batch is written by a task it starts).
    pub fn record(self: &Arc<Self>, probe: EndpointProbe) {
        let now = self.services.now();
        let admission = self.rate.lock().unwrap_or_else(PoisonError::into_inner).admit(&probe.account, now);
        if let Admission::Refused { first_in_window } = admission {
            let dropped = self.dropped.fetch_add(1, Ordering::Relaxed) + 1;
            if first_in_window {
                tracing::warn!(account = %probe.account, per_second = self.per_second, dropped,
                    "test endpoint records over the account's rate: counted and dropped");
            }
            return;
        }
        {
            let mut pending = self.pending.lock().unwrap_or_else(PoisonError::into_inner);
            if pending.len() >= MAX_PENDING {
                let dropped = self.dropped.fetch_add(1, Ordering::Relaxed) + 1;
                if dropped.is_multiple_of(1000) {
                    tracing::warn!(dropped, "test endpoint records waiting for the registry: dropped");
                }
                return;
            }
            pending.push(probe);
        }
        if !self.flushing.swap(true, Ordering::AcqRel) {
            let recorder = self.clone();
            tokio::spawn(async move { recorder.flush().await });
        }
    }

    /// Waits for the batch to gather, then writes it in one transaction.
    async fn flush(self: Arc<Self>) {
        tokio::time::sleep(GATHER).await;
        self.flushing.store(false, Ordering::Release);
        let batch = std::mem::take(&mut *self.pending.lock().unwrap_or_else(PoisonError::into_inner));
        if batch.is_empty() {
            return;
        }
        let recorder = self.clone();
        let written = tokio::task::spawn_blocking(move || {
            let count = batch.len() as u64;
            recorder.services.record_endpoint_probes(&batch).map(|()| count)
        })
        .await;
        match written {
            Ok(Ok(count)) => {
                self.written.fetch_add(count, Ordering::Relaxed);
            }
            Ok(Err(error)) => tracing::warn!(%error, "recording test endpoint results failed"),
            Err(error) => tracing::warn!(%error, "recording test endpoint results panicked"),
        }
    }
}
