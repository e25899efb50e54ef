//! The console's accept loop: at most `max_connections` connections at once (the rest are
//! accepted and closed at once, counted and logged once a second), the TLS handshake under a
//! deadline, HTTP/1.1 with a deadline on each request's headers (which also closes an idle
//! keep-alive connection), and a graceful end on shutdown.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::Console;
use crate::guard::Refusal;
use crate::pages::{Peer, router};

/// Serves the console on `listener` (over TLS when `tls` is given) until `stopped` turns true.
pub async fn serve(
    listener: TcpListener,
    tls: Option<Arc<rustls::ServerConfig>>,
    console: Arc<Console>,
    mut stopped: watch::Receiver<bool>,
) {
    let slots = Arc::new(tokio::sync::Semaphore::new(console.config.max_connections.max(1)));
    let acceptor = tls.map(tokio_rustls::TlsAcceptor::from);
    let routes = router(console.clone());
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(error) => {
                    tracing::warn!(%error, "console: accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = stopped.changed() => break,
        };
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            console.refusals.refuse(Refusal::ConnectionsFull, &format!("peer {}", peer.ip()));
            drop(stream);
            continue;
        };
        let service = TowerToHyperService::new(routes.clone().layer(axum::Extension(Peer(peer))));
        let mut builder = hyper::server::conn::http1::Builder::new();
        builder.timer(TokioTimer::new()).header_read_timeout(console.config.header_timeout).max_buf_size(64 * 1024);
        let console = console.clone();
        let acceptor = acceptor.clone();
        let watcher = graceful.watcher();
        tokio::spawn(async move {
            let _slot = slot;
            console.counters.connections_open.fetch_add(1, Ordering::Relaxed);
            match acceptor {
                Some(acceptor) => {
                    match tokio::time::timeout(console.config.handshake_timeout, acceptor.accept(stream)).await {
                        Ok(Ok(tls_stream)) => {
                            let connection = builder.serve_connection(TokioIo::new(tls_stream), service);
                            let _ = watcher.watch(connection).await;
                        }
                        Ok(Err(error)) => tracing::debug!(%peer, %error, "console: TLS handshake failed"),
                        Err(_) => tracing::debug!(%peer, "console: TLS handshake timed out"),
                    }
                }
                None => {
                    let connection = builder.serve_connection(TokioIo::new(stream), service);
                    let _ = watcher.watch(connection).await;
                }
            }
            console.counters.connections_open.fetch_sub(1, Ordering::Relaxed);
        });
    }
    drop(listener);
    let _ = tokio::time::timeout(Duration::from_secs(5), graceful.shutdown()).await;
}
