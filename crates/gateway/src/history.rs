//! The connection history kept in the registry: which client IDs used which certificate, and
//! when. Written off the session's path by one background task, so a slow database never slows
//! a CONNECT; if the queue is full, records are dropped and counted rather than blocking.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use certfleet_registry::ConnectionRecord;
use certfleet_services::{ConnectionEvent, Services};
use time::OffsetDateTime;
use tokio::sync::mpsc;

use crate::events::ConnectionObserver;
use crate::identity::Identity;

/// Records connections in the registry through the services.
pub struct HistoryRecorder {
    queue: mpsc::Sender<ConnectionEvent>,
    pub dropped: Arc<AtomicU64>,
}

/// How many history records may wait for the database (about 150 bytes each).
const QUEUE: usize = 50_000;

/// The most records written in one transaction.
const BATCH: usize = 5_000;

/// The shortest time between two writes while records keep coming.
const GATHER: std::time::Duration = std::time::Duration::from_millis(500);

impl HistoryRecorder {
    /// Starts the writer task (on the current runtime). A record that comes while the writer is
    /// idle is written at once; records that keep coming are written together, one transaction
    /// per [`GATHER`], so a storm of connections costs a commit per batch rather than one per
    /// connect and one per disconnect.
    pub fn start(services: Arc<Services>) -> Self {
        let (queue, mut events) = mpsc::channel::<ConnectionEvent>(QUEUE);
        tokio::spawn(async move {
            let mut batch = Vec::with_capacity(BATCH);
            let now = tokio::time::Instant::now();
            let mut last_write = now.checked_sub(GATHER).unwrap_or(now);
            while events.recv_many(&mut batch, BATCH).await > 0 {
                // Written at once when the writer was idle; in a storm, at most one transaction
                // per GATHER, holding what came meanwhile.
                let due = last_write + GATHER;
                if batch.len() < BATCH && tokio::time::Instant::now() < due {
                    tokio::time::sleep_until(due).await;
                    while batch.len() < BATCH
                        && let Ok(event) = events.try_recv()
                    {
                        batch.push(event);
                    }
                }
                let services = services.clone();
                let taken = std::mem::take(&mut batch);
                let written = tokio::task::spawn_blocking(move || write(&services, &taken)).await;
                last_write = tokio::time::Instant::now();
                if let Err(error) = written {
                    tracing::warn!(%error, "writing the connection history failed");
                }
            }
        });
        HistoryRecorder { queue, dropped: Arc::new(AtomicU64::new(0)) }
    }

    fn enqueue(&self, event: ConnectionEvent) {
        if self.queue.try_send(event).is_err() {
            let dropped = self.dropped.fetch_add(1, Ordering::Relaxed) + 1;
            if dropped == 1 || dropped.is_multiple_of(1000) {
                tracing::warn!(dropped, "connection history queue full: records dropped");
            }
        }
    }
}

/// Writes a batch in one transaction; if that fails, record by record, so one bad record does
/// not lose its neighbours.
fn write(services: &Services, batch: &[ConnectionEvent]) {
    if batch.len() > 1 && services.record_connection_events(batch).is_ok() {
        return;
    }
    for event in batch {
        if let Err(error) = services.record_connection_events(std::slice::from_ref(event)) {
            tracing::warn!(%error, "writing the connection history failed");
        }
    }
}

impl ConnectionObserver for HistoryRecorder {
    fn connected(&self, identity: &Identity, client_id: &str, session_identifier: &str, at: OffsetDateTime) {
        self.enqueue(ConnectionEvent::Connected(ConnectionRecord {
            session_id: session_identifier.to_owned(),
            account: identity.account.clone(),
            certificate_id: identity.certificate_id.clone(),
            client_id: client_id.to_owned(),
            connected_at: at,
            disconnected_at: None,
            disconnect_reason: None,
        }));
    }

    fn disconnected(
        &self,
        _identity: &Identity,
        _client_id: &str,
        session_identifier: &str,
        at: OffsetDateTime,
        reason: &str,
    ) {
        self.enqueue(ConnectionEvent::Disconnected {
            session_id: session_identifier.to_owned(),
            at,
            reason: reason.to_owned(),
        });
    }
}
