//! The accept loop: a bounded number of connections, each with a TLS handshake under a timeout,
//! then the account from SNI and the identity from the registry, then the MQTT session.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use certfleet_pki::Certificate;
use certfleet_registry::AccountId;
use certfleet_services::Services;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Semaphore, watch};
use tokio_rustls::server::TlsStream;

use crate::authz::PolicyAuthorizer;
use crate::identity::{Identity, Refusal, Registry};
use crate::live::{LiveSessions, Membership};
use crate::metrics::Metrics;
use crate::tls::endpoint_identifier;

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
    /// told of the change feed; `None` when the broker decides without policies (`AllowAll`).
    pub authorizer: Option<Arc<PolicyAuthorizer>>,
    tls: tokio_rustls::TlsAcceptor,
    endpoints: std::sync::Mutex<std::collections::HashMap<String, Option<AccountId>>>,
}

impl Gateway {
    pub fn new(config: Config, services: Arc<Services>, tls: Arc<rustls::ServerConfig>) -> Arc<Self> {
        Self::build(config, services, tls, None)
    }

    /// A gateway enforcing policies: `authorizer` (the broker's too) is loaded for every
    /// authenticated device and follows the change feed.
    pub fn with_authorizer(
        config: Config,
        services: Arc<Services>,
        tls: Arc<rustls::ServerConfig>,
        authorizer: Arc<PolicyAuthorizer>,
    ) -> Arc<Self> {
        Self::build(config, services, tls, Some(authorizer))
    }

    fn build(
        config: Config,
        services: Arc<Services>,
        tls: Arc<rustls::ServerConfig>,
        authorizer: Option<Arc<PolicyAuthorizer>>,
    ) -> Arc<Self> {
        Arc::new(Gateway {
            config,
            registry: Arc::new(Registry::new(services)),
            live: Arc::new(LiveSessions::default()),
            metrics: Arc::new(Metrics::default()),
            authorizer,
            tls: tokio_rustls::TlsAcceptor::from(tls),
            endpoints: std::sync::Mutex::new(std::collections::HashMap::new()),
        })
    }

    /// Accepts connections until `shutdown` turns true, handing each authenticated stream to
    /// `serve`. Also follows the change feed.
    pub async fn run<F, Fut>(self: Arc<Self>, listener: TcpListener, serve: F, mut shutdown: watch::Receiver<bool>)
    where
        F: Fn(TlsStream<TcpStream>, Connection) -> Fut + Send + Sync + 'static,
        Fut: std::future::Future<Output = ()> + Send + 'static,
    {
        let serve = Arc::new(serve);
        let follower = tokio::spawn(crate::follow::follow(
            self.registry.clone(),
            self.live.clone(),
            self.authorizer.clone(),
            self.config.change_poll_interval,
            shutdown.clone(),
        ));
        let permits = Arc::new(Semaphore::new(self.config.max_connections));
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
                _ = shutdown.changed() => break,
            };
            let Ok(permit) = permits.clone().try_acquire_owned() else {
                self.metrics.connections_over_limit.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(%peer, limit = self.config.max_connections, "connection refused: the gateway is full");
                continue;
            };
            self.metrics.connections_accepted.fetch_add(1, Ordering::Relaxed);
            let _ = stream.set_nodelay(true);
            let gateway = self.clone();
            let serve = serve.clone();
            tokio::spawn(async move {
                if let Some((tls, connection)) = gateway.handshake(stream, peer).await {
                    serve(tls, connection).await;
                }
                drop(permit);
            });
        }
        follower.abort();
    }

    /// The TLS handshake, the account and the identity of one connection.
    async fn handshake(&self, stream: TcpStream, peer: SocketAddr) -> Option<(TlsStream<TcpStream>, Connection)> {
        let tls = match tokio::time::timeout(self.config.handshake_timeout, self.tls.accept(stream)).await {
            Ok(Ok(tls)) => tls,
            Ok(Err(error)) => {
                self.metrics.handshakes_failed.fetch_add(1, Ordering::Relaxed);
                if is_missing_certificate(&error) {
                    self.metrics.refused(Refusal::NoClientCert);
                    tracing::warn!(%peer, reason = %Refusal::NoClientCert, "device refused");
                } else {
                    tracing::info!(%peer, %error, "gateway tls handshake failed");
                }
                return None;
            }
            Err(_) => {
                self.metrics.handshakes_failed.fetch_add(1, Ordering::Relaxed);
                tracing::info!(%peer, "gateway tls handshake timed out");
                return None;
            }
        };
        self.metrics.handshakes_completed.fetch_add(1, Ordering::Relaxed);
        let (_, session) = tls.get_ref();
        let tls_version = match session.protocol_version() {
            Some(rustls::ProtocolVersion::TLSv1_3) => "TLSv1.3",
            Some(rustls::ProtocolVersion::TLSv1_2) => "TLSv1.2",
            _ => "unknown",
        };
        let sni_name = session.server_name().map(str::to_owned);
        let presented = session.peer_certificates().and_then(|chain| chain.first()).map(|der| der.to_vec());

        let (account, sni) = self.account_for(sni_name.as_deref()).await;
        let now = time::OffsetDateTime::now_utc();
        let auth = match presented.map(Certificate::from_der) {
            None => Err(Refusal::NoClientCert),
            Some(Err(_)) => Err(Refusal::BadCertificate),
            Some(Ok(certificate)) => {
                let mut decided = self.registry.authenticate(&account, sni.is_some(), &certificate, now).await;
                if let (Ok(identity), Some(authorizer)) = (&decided, &self.authorizer)
                    && let Err(error) = authorizer.load(identity, &certificate).await
                {
                    tracing::error!(%peer, cert = %certificate.id(), %account, %error, "loading the device's policies failed");
                    decided = Err(Refusal::RegistryUnavailable);
                }
                if let Err(reason) = decided {
                    self.metrics.refused(reason);
                    tracing::warn!(
                        %peer,
                        cert = %certificate.id(),
                        %account,
                        sni = sni_name.as_deref().unwrap_or(""),
                        reason = %reason,
                        "device refused"
                    );
                }
                decided
            }
        };
        let auth = auth.map(|identity| {
            let membership = self.live.join(identity.clone(), sni.clone(), tls_version, peer, now);
            Authenticated { identity, membership }
        });
        Some((tls, Connection { peer, sni, tls_version, auth }))
    }

    /// The account an SNI names, or the default account (then `None` for the SNI).
    async fn account_for(&self, sni: Option<&str>) -> (AccountId, Option<String>) {
        let default = (self.config.default_account.clone(), None);
        let Some(name) = sni else { return default };
        let Some(identifier) = endpoint_identifier(name, &self.config.region, &self.config.endpoint_domain) else {
            return default;
        };
        let cached = self.endpoints.lock().unwrap_or_else(std::sync::PoisonError::into_inner).get(identifier).cloned();
        let account = match cached {
            Some(account) => account,
            None => {
                let services = self.registry.services().clone();
                let lookup = identifier.to_owned();
                let found = tokio::task::spawn_blocking(move || services.account_by_endpoint(&lookup))
                    .await
                    .ok()
                    .and_then(Result::ok)
                    .flatten()
                    .map(|account| account.id);
                // Only names that exist are kept: a new account's endpoint must work at once.
                if let Some(account) = &found {
                    self.endpoints
                        .lock()
                        .unwrap_or_else(std::sync::PoisonError::into_inner)
                        .insert(identifier.to_owned(), Some(account.clone()));
                }
                found
            }
        };
        match account {
            Some(account) => (account, Some(name.to_owned())),
            None => default,
        }
    }

    /// Forgets the endpoint names cached (an account came or went).
    pub fn forget_endpoints(&self) {
        self.endpoints.lock().unwrap_or_else(std::sync::PoisonError::into_inner).clear();
    }
}

fn is_missing_certificate(error: &std::io::Error) -> bool {
    error
        .get_ref()
        .and_then(|inner| inner.downcast_ref::<rustls::Error>())
        .is_some_and(|error| matches!(error, rustls::Error::NoCertificatesPresented))
}
