//! The accept loop: a bounded number of connections, each with a TLS handshake under a timeout,
//! then the account from SNI and the identity from the registry, then the MQTT session.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use certfleet_registry::AccountId;
use certfleet_services::Services;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Semaphore, watch};
use tokio::task::JoinSet;
use tokio_rustls::server::TlsStream;

use certfleet_services::Purpose;

use crate::authz::PolicyAuthorizer;
use crate::endpoints::{BuiltinChains, Endpoint, Endpoints, alert_name};
use crate::events::EventSink;
use crate::identity::{CacheLimits, Identity, Refusal, Registry};
use crate::live::{LiveSessions, Membership};
use crate::metrics::{Metrics, Stranger};

/// Settings of the gateway.
#[derive(Clone, Debug)]
pub struct Config {
    /// The region in endpoint names.
    pub region: String,
    /// The domain of endpoint names: `<identifier>-ats.iot.<region>.<endpoint_domain>`.
    pub endpoint_domain: String,
    /// The account serving connections without SNI (DEFAULT-mode certificates only).
    pub default_account: AccountId,
    /// At most this many connections at once; more are closed at accept.
    pub max_connections: usize,
    /// A TLS handshake taking longer is abandoned.
    pub handshake_timeout: Duration,
    /// A client that sends no CONNECT within this time after the handshake is closed.
    pub connect_timeout: Duration,
    /// How often the registry's change feed is read.
    pub change_poll_interval: Duration,
    /// The bounds of the identity and SNI caches.
    pub caches: CacheLimits,
    /// Test endpoint records written per account per second on this node; past it they are
    /// counted and dropped (`crate::probes`).
    pub test_endpoint_records_per_second: u32,
}

/// What the session layer learns of a connection before its first packet.
pub struct Connection {
    pub peer: SocketAddr,
    /// The SNI host name, when it named an account endpoint.
    pub sni: Option<String>,
    pub tls_version: &'static str,
    /// The registry's decision: the device's identity, or why it is refused.
    pub auth: Result<Authenticated, Refusal>,
}

/// An authenticated connection: its identity and its place among the live sessions.
pub struct Authenticated {
    pub identity: Identity,
    pub membership: Membership,
}

/// The gateway: shared by every connection task.
pub struct Gateway {
    pub config: Config,
    pub registry: Arc<Registry>,
    pub live: Arc<LiveSessions>,
    pub metrics: Arc<Metrics>,
    /// The policy engine, loaded for each authenticated device before its session starts and
    /// told of the change feed.
    pub authorizer: Arc<PolicyAuthorizer>,
    /// The domain configurations: SNI routing, TLS settings, chains, migrations.
    pub endpoints: Arc<Endpoints>,
    /// The topic rules this node runs (and where system rules are installed), kept true by the
    /// change feed.
    pub rules: Arc<crate::rules::RuleBook>,
    /// The test endpoints' records, bounded per account and written in batches.
    pub probes: Arc<crate::probes::ProbeRecorder>,
    /// Told when the change feed should be read now (a commit anywhere in the cluster).
    poll_now: Arc<tokio::sync::Notify>,
}

/// What a gateway is built on: the parts of its node made before it.
pub(crate) struct GatewayParts {
    pub(crate) live: Arc<LiveSessions>,
    pub(crate) authorizer: Arc<PolicyAuthorizer>,
    /// Where just-in-time registration events go (the node's broker).
    pub(crate) events: Arc<dyn EventSink>,
    pub(crate) rules: Arc<crate::rules::RuleBook>,
    /// Nudges the follower to read the change feed now.
    pub(crate) poll_now: Arc<tokio::sync::Notify>,
}

impl Gateway {
    pub(crate) fn new(
        config: Config,
        services: Arc<Services>,
        builtin: BuiltinChains,
        parts: GatewayParts,
    ) -> Arc<Self> {
        let GatewayParts { live, authorizer, events, rules, poll_now } = parts;
        let caches = config.caches;
        let endpoints = Endpoints::new(services.clone(), live.clone(), builtin, config.default_account.clone(), caches);
        let probes = crate::probes::ProbeRecorder::new(services.clone(), config.test_endpoint_records_per_second);
        Arc::new(Gateway {
            config,
            probes,
            rules,
            registry: Arc::new(Registry::with_limits(services, caches, Some(events))),
            live,
            metrics: Arc::new(Metrics::default()),
            authorizer,
            endpoints,
            poll_now,
        })
    }

    /// Accepts connections until `shutdown` turns true (or its sender is gone), handing each
    /// handshaken stream to `serve`; also follows the change feed until then. Returns once the
    /// listening socket is closed, with the tasks of the connections still open: the caller
    /// drains them ([`crate::node`]).
    ///
    /// From the shutdown on, a connection still in its TLS handshake is dropped, and so is one
    /// the registry refused (it has no session to end); authenticated connections are left to
    /// the drain.
    pub(crate) async fn run<F, Fut>(
        self: Arc<Self>,
        listener: TcpListener,
        serve: F,
        mut shutdown: watch::Receiver<bool>,
    ) -> JoinSet<()>
    where
        F: Fn(TlsStream<TcpStream>, Connection) -> Fut + Send + Sync + 'static,
        Fut: std::future::Future<Output = ()> + Send + 'static,
    {
        let serve = Arc::new(serve);
        let follower = tokio::spawn(crate::follow::follow(
            self.registry.clone(),
            self.live.clone(),
            Some(self.authorizer.clone()),
            self.endpoints.clone(),
            self.rules.clone(),
            self.config.change_poll_interval,
            self.poll_now.clone(),
            shutdown.clone(),
        ));
        let permits = Arc::new(Semaphore::new(self.config.max_connections));
        // Every connection's task, reaped as it ends (so the set holds the open ones only).
        let mut connections = JoinSet::new();
        loop {
            let (stream, peer) = tokio::select! {
                accepted = listener.accept() => match accepted {
                    Ok(accepted) => accepted,
                    Err(error) => {
                        tracing::warn!(%error, "gateway accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                },
                Some(ended) = connections.join_next(), if !connections.is_empty() => {
                    if let Err(error) = ended
                        && error.is_panic()
                    {
                        tracing::error!(%error, "a connection's task panicked");
                    }
                    continue;
                }
                () = stopped(&mut shutdown) => break,
            };
            let Ok(permit) = permits.clone().try_acquire_owned() else {
                self.metrics.connections_over_limit.fetch_add(1, Ordering::Relaxed);
                if let Some(suppressed) = self.metrics.quiet(Stranger::Full) {
                    tracing::warn!(%peer, limit = self.config.max_connections, suppressed, "connection refused: the gateway is full");
                }
                continue;
            };
            self.metrics.connections_accepted.fetch_add(1, Ordering::Relaxed);
            let _ = stream.set_nodelay(true);
            let gateway = self.clone();
            let serve = serve.clone();
            let mut stopping = shutdown.clone();
            // The handshake's state (about 9 KiB) is boxed and freed when it is over; a
            // connection then holds only its session's.
            connections.spawn(async move {
                let handshake = Box::pin(gateway.handshake(stream, peer));
                let handshaken = tokio::select! {
                    handshaken = handshake => handshaken,
                    () = stopped(&mut stopping) => None,
                };
                if let Some((tls, connection)) = handshaken {
                    if connection.auth.is_ok() {
                        serve(tls, connection).await;
                    } else {
                        tokio::select! {
                            () = serve(tls, connection) => {}
                            () = stopped(&mut stopping) => {}
                        }
                    }
                }
                drop(permit);
            });
        }
        follower.abort();
        drop(listener);
        connections
    }

    /// The TLS handshake (its settings picked by the ClientHello's SNI), the account and the
    /// identity of one connection. Test endpoints are answered here and never reach `serve`.
    async fn handshake(&self, stream: TcpStream, peer: SocketAddr) -> Option<(TlsStream<TcpStream>, Connection)> {
        let started = tokio::time::Instant::now() + self.config.handshake_timeout;
        let acceptor = tokio_rustls::LazyConfigAcceptor::new(rustls::server::Acceptor::default(), stream);
        let start = match tokio::time::timeout_at(started, acceptor).await {
            Ok(Ok(start)) => start,
            Ok(Err(error)) => {
                self.metrics.handshakes_failed.fetch_add(1, Ordering::Relaxed);
                if let Some(suppressed) = self.metrics.quiet(Stranger::HelloFailed) {
                    tracing::info!(%peer, %error, suppressed, "gateway tls handshake failed before the client hello");
                }
                return None;
            }
            Err(_) => {
                self.metrics.handshakes_failed.fetch_add(1, Ordering::Relaxed);
                if let Some(suppressed) = self.metrics.quiet(Stranger::TimedOut) {
                    tracing::info!(%peer, suppressed, "gateway tls handshake timed out");
                }
                return None;
            }
        };
        let sni_name = start.client_hello().server_name().map(str::to_owned);
        let endpoint = match self.endpoints.resolve(sni_name.as_deref()).await {
            Ok(endpoint) => endpoint,
            Err(error) => {
                self.metrics.handshakes_failed.fetch_add(1, Ordering::Relaxed);
                tracing::error!(%peer, sni = sni_name.as_deref().unwrap_or(""), %error, "cannot resolve the endpoint");
                return None;
            }
        };
        if !endpoint.enabled {
            self.metrics.handshakes_failed.fetch_add(1, Ordering::Relaxed);
            if let Some(suppressed) = self.metrics.quiet(Stranger::Disabled) {
                tracing::warn!(%peer, account = %endpoint.account, configuration = %endpoint.name, suppressed,
                    sni = sni_name.as_deref().unwrap_or(""), "connection refused: the domain configuration is disabled or not served");
            }
            return None;
        }
        let tls = match tokio::time::timeout_at(started, start.into_stream(endpoint.tls.clone())).await {
            Ok(Ok(tls)) => tls,
            Ok(Err(error)) => {
                self.metrics.handshakes_failed.fetch_add(1, Ordering::Relaxed);
                let alert = alert_name(&error);
                self.endpoints.handshake_failed(&endpoint, &alert);
                if is_missing_certificate(&error) {
                    self.live.note_refusal(&endpoint.account, Refusal::NoClientCert, time::OffsetDateTime::now_utc());
                    if let Some(suppressed) = self.metrics.refused(Refusal::NoClientCert) {
                        tracing::warn!(%peer, reason = %Refusal::NoClientCert, suppressed, "device refused");
                    }
                } else if let Some(suppressed) = self.metrics.quiet(Stranger::HandshakeFailed) {
                    tracing::info!(%peer, %error, alert, configuration = %endpoint.name, chain = %endpoint.chain, suppressed,
                        "gateway tls handshake failed");
                }
                if endpoint.purpose == Purpose::Test {
                    self.record_probe(&endpoint, peer, sni_name.as_deref(), None, None, "handshake_failed", &alert);
                }
                return None;
            }
            Err(_) => {
                self.metrics.handshakes_failed.fetch_add(1, Ordering::Relaxed);
                self.endpoints.handshake_failed(&endpoint, "timeout");
                if let Some(suppressed) = self.metrics.quiet(Stranger::TimedOut) {
                    tracing::info!(%peer, suppressed, "gateway tls handshake timed out");
                }
                return None;
            }
        };
        self.metrics.handshakes_completed.fetch_add(1, Ordering::Relaxed);
        self.endpoints.handshake_completed(&endpoint);
        let (_, session) = tls.get_ref();
        let tls_version = match session.protocol_version() {
            Some(rustls::ProtocolVersion::TLSv1_3) => "TLSv1.3",
            Some(rustls::ProtocolVersion::TLSv1_2) => "TLSv1.2",
            _ => "unknown",
        };
        if endpoint.purpose == Purpose::Test {
            let presented = session.peer_certificates().and_then(|chain| chain.first()).map(|der| der.to_vec());
            self.test_endpoint(tls, &endpoint, peer, sni_name.as_deref(), tls_version, presented).await;
            return None;
        }
        let presented =
            session.peer_certificates().and_then(|chain| chain.first()).map(|der| crate::tls::take_parsed(der));

        let account = endpoint.account.clone();
        let sni = endpoint.sni.clone();
        let now = time::OffsetDateTime::now_utc();
        let auth = match presented {
            None => Err(Refusal::NoClientCert),
            Some(Err(_)) => Err(Refusal::BadCertificate),
            Some(Ok(certificate)) => {
                let mut decided = self.registry.authenticate(&account, sni.is_some(), &certificate, now).await;
                if let Ok(identity) = &decided
                    && let Err(error) = self.authorizer.load(identity, &certificate).await
                {
                    tracing::error!(%peer, cert = %certificate.id(), %account, %error, "loading the device's policies failed");
                    decided = Err(Refusal::RegistryUnavailable);
                }
                if let Err(reason) = decided {
                    self.live.note_refusal(&account, reason, now);
                }
                if let Err(reason) = decided
                    && let Some(suppressed) = self.metrics.refused(reason)
                {
                    tracing::warn!(
                        %peer,
                        cert = %certificate.id(),
                        %account,
                        sni = sni_name.as_deref().unwrap_or(""),
                        reason = %reason,
                        suppressed,
                        "device refused (at most one line a second per reason)"
                    );
                }
                decided
            }
        };
        let auth = auth.map(|identity| {
            let membership = self.live.join_endpoint(
                identity.clone(),
                sni.clone(),
                tls_version,
                peer,
                now,
                Some(endpoint.name.clone()),
                Some(endpoint.chain.clone()),
            );
            Authenticated { identity, membership }
        });
        Some((tls, Connection { peer, sni, tls_version, auth }))
    }

    /// A test endpoint: the handshake completed; read CONNECT, refuse it with a reason, record it.
    async fn test_endpoint(
        &self,
        mut tls: TlsStream<TcpStream>,
        endpoint: &Endpoint,
        peer: SocketAddr,
        sni: Option<&str>,
        tls_version: &'static str,
        presented: Option<Vec<u8>>,
    ) {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let suite = tls.get_ref().1.negotiated_cipher_suite().map(|s| format!("{:?}", s.suite()));
        let client_cert = presented.map(|der| certfleet_pki::CertificateId::of_der(&der).to_string());
        let mut buffer = bytes::BytesMut::with_capacity(1024);
        let deadline = tokio::time::Instant::now() + self.config.connect_timeout;
        let connect = loop {
            match certfleet_mqtt::decode_connect(&mut buffer, 64 * 1024) {
                Ok(Some(connect)) => break Some(connect),
                Ok(None) => {}
                Err(_) => break None,
            }
            match tokio::time::timeout_at(deadline, tls.read_buf(&mut buffer)).await {
                Ok(Ok(n)) if n > 0 => {}
                _ => break None,
            }
        };
        let detail = format!(
            "certfleet test endpoint: TLS handshake succeeded ({tls_version}, {}); this endpoint accepts no MQTT session",
            suite.as_deref().unwrap_or("unknown suite")
        );
        let client_id = connect.as_ref().map(|c| c.client_id.clone());
        if let Some(connect) = connect {
            let mut properties = certfleet_mqtt::Properties::default();
            if connect.protocol_version == certfleet_mqtt::ProtocolVersion::V5 {
                properties.reason_string = Some(detail.clone());
            }
            let connack = certfleet_mqtt::Packet::ConnAck(certfleet_mqtt::ConnAck {
                session_present: false,
                reason_code: certfleet_mqtt::ReasonCode::NOT_AUTHORIZED,
                properties,
            });
            let mut out = bytes::BytesMut::new();
            if certfleet_mqtt::encode(&connack, connect.protocol_version, &mut out).is_ok() {
                let _ = tls.write_all(&out).await;
                let _ = tls.shutdown().await;
            }
        }
        tracing::info!(%peer, configuration = %endpoint.name, client_id = client_id.as_deref().unwrap_or(""),
            tls_version, "test endpoint: handshake completed, connect refused");
        let outcome = if client_id.is_some() { "connect_refused" } else { "no_connect" };
        self.record_probe_full(endpoint, peer, sni, client_id, client_cert, Some(tls_version), suite, outcome, &detail);
    }

    #[allow(clippy::too_many_arguments)]
    fn record_probe(
        &self,
        endpoint: &Endpoint,
        peer: SocketAddr,
        sni: Option<&str>,
        client_id: Option<String>,
        client_cert: Option<String>,
        outcome: &str,
        detail: &str,
    ) {
        self.record_probe_full(endpoint, peer, sni, client_id, client_cert, None, None, outcome, detail);
    }

    #[allow(clippy::too_many_arguments)]
    fn record_probe_full(
        &self,
        endpoint: &Endpoint,
        peer: SocketAddr,
        sni: Option<&str>,
        client_id: Option<String>,
        client_cert: Option<String>,
        tls_version: Option<&str>,
        cipher_suite: Option<String>,
        outcome: &str,
        detail: &str,
    ) {
        let probe = certfleet_registry::EndpointProbe {
            seq: 0,
            account: endpoint.account.clone(),
            configuration: endpoint.name.clone(),
            peer: peer.to_string(),
            server_name: sni.map(str::to_owned),
            client_id,
            client_certificate_id: client_cert,
            tls_version: tls_version.map(str::to_owned),
            cipher_suite,
            outcome: outcome.to_owned(),
            detail: detail.to_owned(),
            at: time::OffsetDateTime::now_utc(),
        };
        self.probes.record(probe);
    }

    /// Forgets the endpoint names cached (an account came or went).
    pub fn forget_endpoints(&self) {
        self.endpoints.forget();
    }
}

/// Resolves when `shutdown` is true, or its sender is gone.
async fn stopped(shutdown: &mut watch::Receiver<bool>) {
    // The guard `wait_for` answers is dropped here, not held by a caller's `select!`.
    let _ = shutdown.wait_for(|stop| *stop).await;
}

fn is_missing_certificate(error: &std::io::Error) -> bool {
    error
        .get_ref()
        .and_then(|inner| inner.downcast_ref::<rustls::Error>())
        .is_some_and(|error| matches!(error, rustls::Error::NoCertificatesPresented))
}
