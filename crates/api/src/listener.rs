//! The API's accept loop: what a peer, authenticated or not, can make the server hold before a
//! request reaches the router.
//!
//! Every connection takes a slot of a fixed budget ([`Limits::max_connections`], and at most
//! [`Limits::max_connections_per_peer`] from one IP address); a connection over either is
//! accepted and closed at once, so the kernel's backlog drains and the refusal is counted. Then
//! each phase has a deadline: the TLS handshake, the request headers (which also bounds an idle
//! keep-alive connection, since hyper starts that timer when it waits for the next request), and
//! a connection on which no byte moves either way for [`Limits::stall_timeout`] (a client that
//! stops reading its response). The body's own deadline is applied where it is read
//! (`auth.rs`). Each outcome is counted in [`ListenerMetrics`], which `/metrics` renders.

use std::collections::HashMap;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use axum::Router;
use certfleet_cache::LogGate;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpListener;
use tokio::sync::watch;

/// The bounds of the API listener.
#[derive(Clone, Debug)]
pub struct Limits {
    /// At most this many connections at once (every one holds a file descriptor).
    pub max_connections: usize,
    /// At most this many of them from one IP address.
    pub max_connections_per_peer: usize,
    /// How long a TLS handshake may take.
    pub handshake_timeout: Duration,
    /// How long a client may take to send a request's headers, counted from the moment the
    /// connection waits for them (so it is also the idle keep-alive timeout).
    pub header_timeout: Duration,
    /// How long a request's body may take to arrive in full.
    pub body_timeout: Duration,
    /// A connection on which no byte is read or written for this long is closed.
    pub stall_timeout: Duration,
    /// The largest request head (start line and headers) accepted.
    pub max_header_bytes: usize,
    /// At most this many derived signing keys are cached (only keys of verified signatures).
    pub signing_key_cache: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_connections: 1024,
            max_connections_per_peer: 256,
            handshake_timeout: Duration::from_secs(10),
            header_timeout: Duration::from_secs(20),
            body_timeout: Duration::from_secs(30),
            stall_timeout: Duration::from_secs(60),
            max_header_bytes: 64 * 1024,
            signing_key_cache: 10_000,
        }
    }
}

/// The listener's counters, rendered in Prometheus text by [`ListenerMetrics::render`].
#[derive(Debug, Default)]
pub struct ListenerMetrics {
    open: AtomicU64,
    accepted: AtomicU64,
    refused_full: AtomicU64,
    refused_peer: AtomicU64,
    handshake_timeouts: AtomicU64,
    handshake_failures: AtomicU64,
    stalled: AtomicU64,
    header_timeouts: AtomicU64,
    body_timeouts: AtomicU64,
    /// Authentication's refusals and signing-key cache (`auth.rs`).
    pub(crate) auth: crate::auth::AuthMetrics,
    /// Lines about connections strangers can open and abandon: one a second per kind.
    closed_log: Mutex<LogGate<{ Closed::COUNT }>>,
}

/// Why the listener refused or closed a connection before any request: anyone can cause these, so they are
/// logged at most once a second each (`suppressed` says how many were not).
#[derive(Clone, Copy, Debug)]
enum Closed {
    Full,
    PeerShare,
    HandshakeFailed,
    HandshakeTimedOut,
    HeadersTimedOut,
    Stalled,
}

impl Closed {
    const COUNT: usize = 6;
}

impl ListenerMetrics {
    /// `Some(suppressed)` when a line about `closed` is to be logged now.
    fn quiet(&self, closed: Closed) -> Option<u64> {
        self.closed_log.lock().unwrap_or_else(std::sync::PoisonError::into_inner).admit(closed as usize, Instant::now())
    }

    /// Counts a body that did not arrive in time (called by the authentication middleware).
    pub(crate) fn body_timed_out(&self) {
        self.body_timeouts.fetch_add(1, Ordering::Relaxed);
    }

    /// Appends the counters in Prometheus text format.
    pub fn render(&self, out: &mut String) {
        use std::fmt::Write as _;
        let gauge = |out: &mut String, name: &str, help: &str, value: u64| {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} gauge\n{name} {value}");
        };
        gauge(out, "certfleet_api_connections_open", "API connections open now.", self.open.load(Ordering::Relaxed));
        let _ = writeln!(
            out,
            "# HELP certfleet_api_connections_total API connections by outcome at accept.\n\
             # TYPE certfleet_api_connections_total counter"
        );
        for (outcome, counter) in [
            ("accepted", &self.accepted),
            ("refused_full", &self.refused_full),
            ("refused_per_peer", &self.refused_peer),
        ] {
            let _ = writeln!(
                out,
                "certfleet_api_connections_total{{outcome=\"{outcome}\"}} {}",
                counter.load(Ordering::Relaxed)
            );
        }
        let _ = writeln!(
            out,
            "# HELP certfleet_api_connections_closed_total API connections closed by the server, by reason.\n\
             # TYPE certfleet_api_connections_closed_total counter"
        );
        for (reason, counter) in [
            ("handshake_timeout", &self.handshake_timeouts),
            ("handshake_failed", &self.handshake_failures),
            ("header_timeout", &self.header_timeouts),
            ("body_timeout", &self.body_timeouts),
            ("stalled", &self.stalled),
        ] {
            let _ = writeln!(
                out,
                "certfleet_api_connections_closed_total{{reason=\"{reason}\"}} {}",
                counter.load(Ordering::Relaxed)
            );
        }
        self.auth.render(out);
    }
}

/// Open connections per peer address; an entry exists only while its peer holds a connection,
/// so the map is bounded by [`Limits::max_connections`].
#[derive(Default)]
struct Peers {
    open: Mutex<HashMap<IpAddr, usize>>,
}

impl Peers {
    fn try_take(self: &Arc<Self>, ip: IpAddr, max: usize) -> Option<PeerSlot> {
        let mut open = self.open.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let count = open.entry(ip).or_insert(0);
        if *count >= max {
            if *count == 0 {
                open.remove(&ip);
            }
            return None;
        }
        *count += 1;
        Some(PeerSlot { peers: self.clone(), ip })
    }
}

/// One connection's share of its peer's budget, given back on drop.
struct PeerSlot {
    peers: Arc<Peers>,
    ip: IpAddr,
}

impl Drop for PeerSlot {
    fn drop(&mut self) {
        let mut open = self.peers.open.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(count) = open.get_mut(&self.ip) {
            *count -= 1;
            if *count == 0 {
                open.remove(&self.ip);
            }
        }
    }
}

/// Counts an open connection for as long as it lives.
struct OpenGuard(Arc<ListenerMetrics>);

impl Drop for OpenGuard {
    fn drop(&mut self) {
        self.0.open.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Serves the router on `listener` (over TLS when `tls` is given) until `shutdown` holds
/// `true`, then lets open requests finish for up to 10 s.
pub async fn serve(
    listener: TcpListener,
    tls: Option<Arc<rustls::ServerConfig>>,
    router: Router,
    limits: Limits,
    metrics: Arc<ListenerMetrics>,
    mut shutdown: watch::Receiver<bool>,
) -> io::Result<()> {
    let acceptor = tls.map(tokio_rustls::TlsAcceptor::from);
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    let slots = Arc::new(tokio::sync::Semaphore::new(limits.max_connections));
    let peers = Arc::new(Peers::default());
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(error) => {
                    // Out of file descriptors and the like: back off instead of spinning.
                    tracing::warn!(%error, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = stop_requested(&mut shutdown) => break,
        };
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            metrics.refused_full.fetch_add(1, Ordering::Relaxed);
            if let Some(suppressed) = metrics.quiet(Closed::Full) {
                tracing::warn!(%peer, limit = limits.max_connections, suppressed, "api connection refused: the api connection limit is reached");
            }
            drop(stream);
            continue;
        };
        let Some(peer_slot) = peers.try_take(peer.ip(), limits.max_connections_per_peer) else {
            metrics.refused_peer.fetch_add(1, Ordering::Relaxed);
            if let Some(suppressed) = metrics.quiet(Closed::PeerShare) {
                tracing::warn!(%peer, limit = limits.max_connections_per_peer, suppressed,
                    "api connection refused: one peer holds its whole api connection share");
            }
            drop(stream);
            continue;
        };
        metrics.accepted.fetch_add(1, Ordering::Relaxed);
        metrics.open.fetch_add(1, Ordering::Relaxed);
        let open = OpenGuard(metrics.clone());
        let _ = stream.set_nodelay(true);
        let service = TowerToHyperService::new(router.clone());
        let acceptor = acceptor.clone();
        let watcher = graceful.watcher();
        let limits = limits.clone();
        let metrics = metrics.clone();
        tokio::spawn(async move {
            let _held = (slot, peer_slot, open);
            let activity = Activity::new();
            let mut builder = hyper::server::conn::http1::Builder::new();
            builder
                .timer(TokioTimer::new())
                .header_read_timeout(limits.header_timeout)
                .max_buf_size(limits.max_header_bytes.max(8192));
            let stream = Watched { inner: stream, activity: activity.clone() };
            let served = async {
                match acceptor {
                    Some(acceptor) => {
                        match tokio::time::timeout(limits.handshake_timeout, acceptor.accept(stream)).await {
                            Ok(Ok(tls_stream)) => {
                                let connection = builder.serve_connection(TokioIo::new(tls_stream), service);
                                connection_end(peer, watcher.watch(connection).await, &metrics);
                            }
                            Ok(Err(error)) => {
                                metrics.handshake_failures.fetch_add(1, Ordering::Relaxed);
                                if let Some(suppressed) = metrics.quiet(Closed::HandshakeFailed) {
                                    tracing::info!(%peer, %error, suppressed, "api tls handshake failed");
                                }
                            }
                            Err(_) => {
                                metrics.handshake_timeouts.fetch_add(1, Ordering::Relaxed);
                                if let Some(suppressed) = metrics.quiet(Closed::HandshakeTimedOut) {
                                    tracing::info!(%peer, suppressed, "api tls handshake timed out");
                                }
                            }
                        }
                    }
                    None => {
                        let connection = builder.serve_connection(TokioIo::new(stream), service);
                        connection_end(peer, watcher.watch(connection).await, &metrics);
                    }
                }
            };
            tokio::select! {
                () = served => {}
                () = activity.stalled(limits.stall_timeout) => {
                    metrics.stalled.fetch_add(1, Ordering::Relaxed);
                    if let Some(suppressed) = metrics.quiet(Closed::Stalled) {
                        tracing::info!(%peer, timeout = ?limits.stall_timeout, suppressed, "api connection closed: nothing moved");
                    }
                }
            }
        });
    }
    drop(listener);
    tokio::select! {
        _ = graceful.shutdown() => {}
        _ = tokio::time::sleep(Duration::from_secs(10)) => tracing::warn!("api connections still open after 10 s; closing"),
    }
    Ok(())
}

/// Resolves once `shutdown` holds `true` (or its sender is gone).
async fn stop_requested(shutdown: &mut watch::Receiver<bool>) {
    while !*shutdown.borrow_and_update() {
        if shutdown.changed().await.is_err() {
            return;
        }
    }
}

fn connection_end(peer: SocketAddr, result: Result<(), hyper::Error>, metrics: &ListenerMetrics) {
    if let Err(error) = result {
        if error.is_timeout() {
            metrics.header_timeouts.fetch_add(1, Ordering::Relaxed);
            if let Some(suppressed) = metrics.quiet(Closed::HeadersTimedOut) {
                tracing::info!(%peer, suppressed, "api connection closed: request headers not received in time");
            }
        } else {
            tracing::debug!(%peer, %error, "api connection ended with an error");
        }
    }
}

/// When a byte last moved on a connection, in milliseconds since `epoch`.
#[derive(Clone)]
struct Activity {
    epoch: Instant,
    last_ms: Arc<AtomicU64>,
}

impl Activity {
    fn new() -> Self {
        Activity { epoch: Instant::now(), last_ms: Arc::new(AtomicU64::new(0)) }
    }

    fn touch(&self) {
        let now = self.epoch.elapsed().as_millis() as u64;
        self.last_ms.store(now, Ordering::Relaxed);
    }

    /// Resolves once nothing has moved for `timeout`.
    async fn stalled(&self, timeout: Duration) {
        loop {
            let last = Duration::from_millis(self.last_ms.load(Ordering::Relaxed));
            let idle = self.epoch.elapsed().saturating_sub(last);
            if idle >= timeout {
                return;
            }
            tokio::time::sleep(timeout - idle).await;
        }
    }
}

/// A stream that records when bytes move through it.
struct Watched<S> {
    inner: S,
    activity: Activity,
}

impl<S: AsyncRead + Unpin> AsyncRead for Watched<S> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.inner).poll_read(cx, buf);
        if matches!(polled, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            self.activity.touch();
        }
        polled
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Watched<S> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, data: &[u8]) -> Poll<io::Result<usize>> {
        let polled = Pin::new(&mut self.inner).poll_write(cx, data);
        if matches!(polled, Poll::Ready(Ok(written)) if written > 0) {
            self.activity.touch();
        }
        polled
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let polled = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        if matches!(polled, Poll::Ready(Ok(written)) if written > 0) {
            self.activity.touch();
        }
        polled
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_peer_gets_at_most_its_share_and_gives_it_back() {
        let peers = Arc::new(Peers::default());
        let ip: IpAddr = "192.0.2.1".parse().unwrap();
        let other: IpAddr = "192.0.2.2".parse().unwrap();
        let first = peers.try_take(ip, 2).expect("first");
        let second = peers.try_take(ip, 2).expect("second");
        assert!(peers.try_take(ip, 2).is_none());
        assert!(peers.try_take(other, 2).is_some(), "another peer is not affected");
        drop(first);
        assert!(peers.try_take(ip, 2).is_some());
        drop(second);
        assert!(peers.open.lock().unwrap().is_empty(), "no entry outlives its connections");
    }

    #[test]
    fn a_refused_peer_leaves_no_entry() {
        let peers = Arc::new(Peers::default());
        let ip: IpAddr = "192.0.2.9".parse().unwrap();
        assert!(peers.try_take(ip, 0).is_none());
        assert!(peers.open.lock().unwrap().is_empty());
    }

    #[test]
    fn render_names_every_outcome() {
        let metrics = ListenerMetrics::default();
        metrics.refused_full.fetch_add(3, Ordering::Relaxed);
        let mut text = String::new();
        metrics.render(&mut text);
        assert!(text.contains("certfleet_api_connections_total{outcome=\"refused_full\"} 3"), "{text}");
        for reason in ["handshake_timeout", "header_timeout", "body_timeout", "stalled"] {
            assert!(text.contains(&format!("reason=\"{reason}\"")), "{reason}");
        }
    }
}
