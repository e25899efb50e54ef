//! The connection history kept in the registry: which client IDs used which certificate, and
//! when. Written off the session's path by one background task, so a slow database never slows
//! a CONNECT; if the queue is full, records are dropped and counted rather than blocking.
//!
//! A device reconnecting in a loop must not grow the history without bound between two prunes:
//! each certificate gets at most `sessions_per_certificate_per_hour` sessions recorded per hour
//! on this node; the sessions past it (and their disconnections) are counted in `coalesced`
//! and not written. Per certificate rather than per client ID, so a loop that changes its client
//! ID each time is bounded too; the audit's connection checks still see the first sessions of
//! every hour, which is where a second device sharing the certificate shows.
//!
//! A node shutting down awaits [`HistoryRecorder::flush`], so that the disconnections its drain
//! recorded reach the registry before the process exits.

use std::collections::HashSet;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use certfleet_pki::CertificateId;
use certfleet_registry::{ConnectionRecord, ConnectionVia};
use certfleet_services::rate::{Admission, WindowedRate};
use certfleet_services::{ConnectionEvent, Services};
use time::OffsetDateTime;
use tokio::sync::{mpsc, oneshot};

use crate::events::{ConnectionObserver, OnRecord};
use crate::model::Identity;

/// What the writer task is handed: a record, or a flush to answer once every record handed
/// before it is written.
enum Command {
    Record(Box<ConnectionEvent>),
    Flush(oneshot::Sender<()>),
}

/// What became of a [`HistoryRecorder::flush`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[must_use = "a flush that did not finish loses records: say so"]
pub enum Flushed {
    /// Every record handed before the flush was written (or its write failed and was logged).
    Written,
    /// The wait ended first; the writer goes on with what it has.
    TimedOut,
    /// The writer task is gone (its runtime is shutting down): nothing more is written.
    WriterStopped,
}

/// Records connections in the registry through the services.
pub struct HistoryRecorder {
    queue: mpsc::Sender<Command>,
    /// Records dropped because the queue was full.
    pub dropped: Arc<AtomicU64>,
    /// Sessions not recorded: their certificate had its hour's sessions already.
    pub coalesced: Arc<AtomicU64>,
    per_certificate: Mutex<WindowedRate<CertificateId>>,
    /// The live sessions not recorded, so their disconnections are not written either.
    skipped: Mutex<HashSet<String>>,
}

/// The most certificates whose hourly sessions are counted at once, and the most unrecorded
/// live sessions remembered (past it, a disconnection may be written for a session never
/// recorded: an UPDATE that matches nothing).
const MAX_TRACKED: usize = 200_000;

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
    ///
    /// At most `sessions_per_certificate_per_hour` sessions of a certificate are recorded per
    /// hour on this node.
    pub fn start(services: Arc<Services>, sessions_per_certificate_per_hour: u32) -> Self {
        let (queue, mut commands) = mpsc::channel::<Command>(QUEUE);
        tokio::spawn(async move {
            let mut received = Vec::with_capacity(BATCH);
            let now = tokio::time::Instant::now();
            let mut last_write = now.checked_sub(GATHER).unwrap_or(now);
            while commands.recv_many(&mut received, BATCH).await > 0 {
                // Written at once when the writer was idle or a flush waits; in a storm, at most
                // one transaction per GATHER, holding what came meanwhile.
                let due = last_write + GATHER;
                let flush_waits = received.iter().any(|command| matches!(command, Command::Flush(_)));
                if !flush_waits && received.len() < BATCH && tokio::time::Instant::now() < due {
                    tokio::time::sleep_until(due).await;
                    while received.len() < BATCH
                        && let Ok(command) = commands.try_recv()
                    {
                        received.push(command);
                    }
                }
                let mut batch = Vec::with_capacity(received.len());
                let mut flushes = Vec::new();
                for command in received.drain(..) {
                    match command {
                        Command::Record(event) => batch.push(*event),
                        Command::Flush(done) => flushes.push(done),
                    }
                }
                if !batch.is_empty() {
                    let services = services.clone();
                    let written = tokio::task::spawn_blocking(move || write(&services, &batch)).await;
                    last_write = tokio::time::Instant::now();
                    if let Err(error) = written {
                        tracing::warn!(%error, "writing the connection history failed");
                    }
                }
                // Commands are handled in order: every record sent before these flushes was in
                // this batch or an earlier one.
                for done in flushes {
                    let _ = done.send(());
                }
            }
        });
        HistoryRecorder {
            queue,
            dropped: Arc::new(AtomicU64::new(0)),
            coalesced: Arc::new(AtomicU64::new(0)),
            per_certificate: Mutex::new(WindowedRate::new(
                sessions_per_certificate_per_hour,
                time::Duration::hours(1),
                MAX_TRACKED,
            )),
            skipped: Mutex::new(HashSet::new()),
        }
    }

    /// Appends the history's counters in the Prometheus text format.
    pub fn render_metrics(&self, out: &mut String) {
        crate::metrics::counters(
            out,
            "certfleet_connection_history",
            &[
                ("dropped", "Connection history records dropped: the write queue was full.", &*self.dropped),
                (
                    "coalesced",
                    "Sessions not recorded: their certificate had its hourly sessions recorded already.",
                    &*self.coalesced,
                ),
            ],
        );
    }

    /// Waits, at most `within`, until every record handed before the call is written. A full
    /// queue is waited for within the same bound.
    pub async fn flush(&self, within: std::time::Duration) -> Flushed {
        let (done, written) = oneshot::channel();
        let flushed = tokio::time::timeout(within, async {
            if self.queue.send(Command::Flush(done)).await.is_err() {
                return Flushed::WriterStopped;
            }
            match written.await {
                Ok(()) => Flushed::Written,
                Err(_) => Flushed::WriterStopped,
            }
        })
        .await;
        flushed.unwrap_or(Flushed::TimedOut)
    }

    fn enqueue(&self, event: ConnectionEvent) {
        if self.queue.try_send(Command::Record(Box::new(event))).is_err() {
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
    fn connected(
        &self,
        identity: &Identity,
        client_id: &str,
        session_identifier: &str,
        via: &ConnectionVia,
        at: OffsetDateTime,
    ) -> OnRecord {
        let admission =
            self.per_certificate.lock().unwrap_or_else(PoisonError::into_inner).admit(&identity.certificate_id, at);
        if let Admission::Refused { first_in_window } = admission {
            let coalesced = self.coalesced.fetch_add(1, Ordering::Relaxed) + 1;
            if first_in_window {
                tracing::info!(cert = %identity.certificate_id, account = %identity.account, coalesced,
                    "a certificate reconnects more than its hourly history allows: further sessions not recorded, logged at DEBUG only");
            }
            let mut skipped = self.skipped.lock().unwrap_or_else(PoisonError::into_inner);
            if skipped.len() < MAX_TRACKED {
                skipped.insert(session_identifier.to_owned());
            }
            return OnRecord::Coalesced;
        }
        self.enqueue(ConnectionEvent::Connected(ConnectionRecord {
            session_id: session_identifier.to_owned(),
            account: identity.account.clone(),
            certificate_id: identity.certificate_id.clone(),
            client_id: client_id.to_owned(),
            connected_at: at,
            disconnected_at: None,
            disconnect_reason: None,
            via: via.clone(),
        }));
        OnRecord::Yes
    }

    fn disconnected(
        &self,
        _identity: &Identity,
        _client_id: &str,
        session_identifier: &str,
        at: OffsetDateTime,
        reason: &str,
    ) {
        if self.skipped.lock().unwrap_or_else(PoisonError::into_inner).remove(session_identifier) {
            return;
        }
        self.enqueue(ConnectionEvent::Disconnected {
            session_id: session_identifier.to_owned(),
            at,
            reason: reason.to_owned(),
        });
    }
}
