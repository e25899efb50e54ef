//! The connections this node serves, by identity: what live revocation and a node's shutdown
//! close, and what the operator view lists.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use certfleet_pki::CertificateId;
use certfleet_registry::AccountId;
use time::OffsetDateTime;
use tokio::sync::watch;

use crate::model::{Identity, Refusal};

/// What the operator sees of one connection.
#[derive(Clone, Debug)]
pub struct SessionInfo {
    pub session_id: u64,
    pub identity: Identity,
    pub client_id: Option<String>,
    pub sni: Option<String>,
    pub tls_version: &'static str,
    pub peer: SocketAddr,
    pub connected_at: OffsetDateTime,
    /// The domain configuration the connection came through, and the server chain it saw.
    pub endpoint: Option<String>,
    pub chain: Option<Arc<str>>,
}

/// Why a live connection is told to close.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Close {
    /// Its identity is no longer accepted (or its endpoint now serves another chain).
    Refused(Refusal),
    /// The node is shutting down: the device is to reconnect elsewhere.
    Shutdown,
}

struct Entry {
    info: SessionInfo,
    close: watch::Sender<Option<Close>>,
}

/// The connections of the table and whether the node is shutting down, under one lock: a
/// connection that joins after the shutdown began is told to close as it joins, so none is
/// missed between the drain's list and its join.
#[derive(Default)]
struct Table {
    sessions: HashMap<u64, Entry>,
    shutting_down: bool,
}

/// Every authenticated connection of this node, and the devices it refused in the last hour.
#[derive(Default)]
pub struct LiveSessions {
    next_id: AtomicU64,
    sessions: Mutex<Table>,
    refused: Mutex<crate::recent::RecentRefusals>,
    closed_after_change: Mutex<crate::recent::Latencies>,
}

/// A connection's membership: tells it when to close, and leaves the table when dropped.
pub struct Membership {
    live: Arc<LiveSessions>,
    pub session_id: u64,
    /// Becomes `Some(why)` when the connection must close (its identity was revoked, the node
    /// shuts down).
    pub closed: watch::Receiver<Option<Close>>,
}

impl Drop for Membership {
    fn drop(&mut self) {
        lock(&self.live.sessions).sessions.remove(&self.session_id);
    }
}

impl LiveSessions {
    /// Adds a connection.
    pub fn join(
        self: &Arc<Self>,
        identity: Identity,
        sni: Option<String>,
        tls_version: &'static str,
        peer: SocketAddr,
        now: OffsetDateTime,
    ) -> Membership {
        self.join_endpoint(identity, sni, tls_version, peer, now, None, None)
    }

    /// Adds a connection that came through a domain configuration and saw a server chain.
    #[allow(clippy::too_many_arguments)]
    pub fn join_endpoint(
        self: &Arc<Self>,
        identity: Identity,
        sni: Option<String>,
        tls_version: &'static str,
        peer: SocketAddr,
        now: OffsetDateTime,
        endpoint: Option<String>,
        chain: Option<Arc<str>>,
    ) -> Membership {
        let session_id = self.next_id.fetch_add(1, Ordering::Relaxed) + 1;
        let mut table = lock(&self.sessions);
        let (close, closed) = watch::channel(table.shutting_down.then_some(Close::Shutdown));
        let info = SessionInfo {
            session_id,
            identity,
            client_id: None,
            sni,
            tls_version,
            peer,
            connected_at: now,
            endpoint,
            chain,
        };
        table.sessions.insert(session_id, Entry { info, close });
        drop(table);
        Membership { live: self.clone(), session_id, closed }
    }

    /// Records the MQTT client ID once CONNECT is accepted.
    pub fn set_client_id(&self, session_id: u64, client_id: &str) {
        if let Some(entry) = lock(&self.sessions).sessions.get_mut(&session_id) {
            entry.info.client_id = Some(client_id.to_owned());
        }
    }

    /// The endpoint, server chain and TLS version a connection came through, as the connection
    /// history records them (unknown once the connection left the table).
    pub fn via(&self, session_id: u64) -> certfleet_registry::ConnectionVia {
        lock(&self.sessions).sessions.get(&session_id).map_or_else(Default::default, |entry| {
            certfleet_registry::ConnectionVia::new(
                entry.info.endpoint.as_deref(),
                entry.info.chain.as_deref(),
                Some(entry.info.tls_version),
            )
        })
    }

    /// The identities of the connections matching `filter`, each once.
    pub fn identities(&self, filter: impl Fn(&Identity) -> bool) -> Vec<Identity> {
        let mut found: Vec<Identity> = Vec::new();
        for entry in lock(&self.sessions).sessions.values() {
            if filter(&entry.info.identity) && !found.contains(&entry.info.identity) {
                found.push(entry.info.identity.clone());
            }
        }
        found
    }

    /// Closes every connection of `identity`, saying why in the log. Returns how many.
    pub fn close_identity(&self, identity: &Identity, reason: Refusal) -> usize {
        let table = lock(&self.sessions);
        let mut closed = 0;
        for entry in table.sessions.values().filter(|entry| &entry.info.identity == identity) {
            tracing::warn!(
                account = %identity.account,
                cert = %identity.certificate_id,
                client_id = entry.info.client_id.as_deref().unwrap_or(""),
                session = entry.info.session_id,
                reason = %reason,
                "closing a live session: its identity is no longer accepted"
            );
            let _ = entry.close.send(Some(Close::Refused(reason)));
            closed += 1;
        }
        closed
    }

    /// Closes one connection, saying why in the log. Returns whether it was live.
    pub fn close_session(&self, session_id: u64, reason: Refusal) -> bool {
        let table = lock(&self.sessions);
        let Some(entry) = table.sessions.get(&session_id) else { return false };
        tracing::info!(
            account = %entry.info.identity.account,
            cert = %entry.info.identity.certificate_id,
            client_id = entry.info.client_id.as_deref().unwrap_or(""),
            session = session_id,
            reason = %reason,
            "closing a live session"
        );
        let _ = entry.close.send(Some(Close::Refused(reason)));
        true
    }

    /// The node begins to shut down: from now on a connection joins already told to close, and
    /// so is every connection whose CONNECT has not been accepted yet (it holds no session: no
    /// will, no history, nothing to pace). Returns the sessions, oldest first, which the caller
    /// tells one by one ([`LiveSessions::close_for_shutdown`]).
    pub fn begin_shutdown(&self) -> ShutdownBegun {
        let mut table = lock(&self.sessions);
        table.shutting_down = true;
        let mut sessions: Vec<(OffsetDateTime, u64)> = Vec::with_capacity(table.sessions.len());
        let mut closed_before_connect = 0;
        for entry in table.sessions.values() {
            if entry.info.client_id.is_some() {
                sessions.push((entry.info.connected_at, entry.info.session_id));
            } else if entry.close.send_if_modified(tell_shutdown) {
                closed_before_connect += 1;
            }
        }
        drop(table);
        sessions.sort_unstable();
        ShutdownBegun {
            sessions: sessions.into_iter().map(|(_, session_id)| session_id).collect(),
            closed_before_connect,
        }
    }

    /// Tells one connection that the node shuts down. Returns whether it was live and not told
    /// to close already (a connection told once is not counted twice).
    pub fn close_for_shutdown(&self, session_id: u64) -> bool {
        let table = lock(&self.sessions);
        let Some(entry) = table.sessions.get(&session_id) else { return false };
        entry.close.send_if_modified(tell_shutdown)
    }

    /// A snapshot of every connection, oldest first.
    pub fn list(&self) -> Vec<SessionInfo> {
        let mut sessions: Vec<SessionInfo> =
            lock(&self.sessions).sessions.values().map(|entry| entry.info.clone()).collect();
        sessions.sort_by_key(|info| (info.connected_at, info.session_id));
        sessions
    }

    /// How many connections are live.
    pub fn count(&self) -> usize {
        lock(&self.sessions).sessions.len()
    }

    /// Records that `sessions` live sessions were told to close `seconds` after the registry
    /// change that refused them was committed.
    pub fn note_closed_after_change(&self, sessions: usize, seconds: f64) {
        let mut latencies = lock(&self.closed_after_change);
        for _ in 0..sessions {
            latencies.observe(seconds);
        }
    }

    /// The revocation-to-disconnect histogram: cumulative buckets, count, sum.
    pub fn closed_after_change(&self) -> (Vec<(f64, u64)>, u64, f64) {
        lock(&self.closed_after_change).snapshot()
    }

    /// Counts a device of `account` refused for `reason` (the operator view of the last hour).
    pub fn note_refusal(&self, account: &AccountId, reason: Refusal, now: OffsetDateTime) {
        lock(&self.refused).note(account, reason, now);
    }
}

/// Tells a connection not told to close yet that the node shuts down; whether it was told now.
fn tell_shutdown(close: &mut Option<Close>) -> bool {
    match close {
        Some(_) => false,
        None => {
            *close = Some(Close::Shutdown);
            true
        }
    }
}

/// What [`LiveSessions::begin_shutdown`] found.
#[derive(Debug, PartialEq, Eq)]
pub struct ShutdownBegun {
    /// The sessions (CONNECT accepted), oldest first, still to be told.
    pub sessions: Vec<u64>,
    /// Connections without a session yet, told at once.
    pub closed_before_connect: usize,
}

/// Whether an identity belongs to `account` and (when given) uses this certificate or CA.
pub fn uses(
    identity: &Identity,
    account: &AccountId,
    certificate: Option<&CertificateId>,
    ca: Option<&CertificateId>,
) -> bool {
    &identity.account == account
        && certificate.is_none_or(|id| &identity.certificate_id == id)
        && ca.is_none_or(|id| identity.ca_certificate_id.as_ref() == Some(id))
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl certfleet_services::DataPlane for LiveSessions {
    fn connected_clients(&self, account: &AccountId) -> Vec<certfleet_services::ConnectedClient> {
        self.list()
            .into_iter()
            .filter(|info| &info.identity.account == account)
            .map(|info| certfleet_services::ConnectedClient {
                client_id: info.client_id,
                certificate_id: info.identity.certificate_id,
                sni: info.sni,
                tls_version: info.tls_version.to_owned(),
                peer: info.peer.to_string(),
                connected_at: info.connected_at,
                endpoint: info.endpoint,
                chain: info.chain.map(|chain| chain.to_string()),
                node: None,
            })
            .collect()
    }

    fn recent_refusals(&self, account: &AccountId) -> Vec<(String, u64)> {
        lock(&self.refused)
            .last_hour(account, OffsetDateTime::now_utc())
            .into_iter()
            .map(|(reason, count)| (reason.as_str().to_owned(), count))
            .collect()
    }
}
