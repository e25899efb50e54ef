//! The connection history kept in the registry: which client IDs used which certificate, and
//! when. Written off the session's path by one background task, so a slow database never slows
//! a CONNECT; if the queue is full, records are dropped and counted rather than blocking.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use certfleet_registry::ConnectionRecord;
use certfleet_services::Services;
use time::OffsetDateTime;
use tokio::sync::mpsc;

use crate::events::ConnectionObserver;
use crate::identity::Identity;

enum Event {
    Connected(ConnectionRecord),
    Disconnected { session_identifier: String, at: OffsetDateTime, reason: String },
}

/// Records connections in the registry through the services.
pub struct HistoryRecorder {
    queue: mpsc::Sender<Event>,
    pub dropped: Arc<AtomicU64>,
}

/// How many history records may wait for the database.
const QUEUE: usize = 10_000;

impl HistoryRecorder {
    /// Starts the writer task (on the current runtime).
    pub fn start(services: Arc<Services>) -> Self {
        let (queue, mut events) = mpsc::channel::<Event>(QUEUE);
        tokio::spawn(async move {
            while let Some(event) = events.recv().await {
                let services = services.clone();
                let written = tokio::task::spawn_blocking(move || match &event {
                    Event::Connected(record) => services.record_connection(record),
                    Event::Disconnected { session_identifier, at, reason } => {
                        services.record_disconnection(session_identifier, *at, reason)
                    }
                })
                .await;
                if let Ok(Err(error)) = written {
                    tracing::warn!(%error, "writing the connection history failed");
                }
            }
        });
        HistoryRecorder { queue, dropped: Arc::new(AtomicU64::new(0)) }
    }

    fn enqueue(&self, event: Event) {
        if self.queue.try_send(event).is_err() {
            let dropped = self.dropped.fetch_add(1, Ordering::Relaxed) + 1;
            if dropped == 1 || dropped.is_multiple_of(1000) {
                tracing::warn!(dropped, "connection history queue full: records dropped");
            }
        }
    }
}

impl ConnectionObserver for HistoryRecorder {
    fn connected(&self, identity: &Identity, client_id: &str, session_identifier: &str, at: OffsetDateTime) {
        self.enqueue(Event::Connected(ConnectionRecord {
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
        self.enqueue(Event::Disconnected {
            session_identifier: session_identifier.to_owned(),
            at,
            reason: reason.to_owned(),
        });
    }
}
