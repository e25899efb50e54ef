//! The egress policy: every outbound request a tenant can cause goes through [`Egress::post`]
//! (topic rules' http actions and error actions, topic rule destination confirmations, audit
//! webhooks and rotation alerts). See `docs/egress.md`.
//!
//! 1. The URL is parsed once ([`Target::parse`]): `https://` only, `http://` only when the
//!    operator allows it ([`Policy::allow_http`]); no user information.
//! 2. The host is resolved, and every resolved address judged by [`classify`] against the
//!    operator's allow list, then deny list (loopback, private, link-local, CGNAT, unique-local,
//!    multicast, and the IPv6 forms of IPv4 addresses by default). Only an address that passed
//!    is connected to, and it is the address connected to: the name is never resolved again, so
//!    a DNS answer that changes between check and connect gains nothing.
//! 3. Bounded: at most [`Policy::max_in_flight_per_account`] requests of one account at once
//!    (more fail at once), [`Policy::connect_timeout`] for resolution and connection,
//!    [`Policy::response_timeout`] for TLS, request and answer, at most
//!    [`Policy::max_response_bytes`] of the answer read (and discarded). Redirects are not
//!    followed: a 3xx is a non-2xx answer.
//! 4. A failure is logged once here with its typed [`Refusal`] and the detail, counted by reason
//!    ([`render_metrics`]), and reported to the caller as a [`Failure`] whose
//!    [`tenant_message`](Failure::tenant_message) says nothing about the network: refused,
//!    unresolvable, closed, unreachable and slow are all [`UNREACHABLE`].
//!
//! **Architecture Invariant:** decides where certfleet may connect on a tenant's behalf, and
//! nothing else: it knows no rules, destinations or audits (its callers do), and no AWS shapes.

mod address;

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use certfleet_registry::AccountId;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tokio::sync::Semaphore;

pub use address::{Cidr, DEFAULT_DENY, Verdict, canonical, classify, default_deny};

/// What a tenant is told for every failure that would otherwise describe the network.
pub const UNREACHABLE: &str = "the destination could not be reached";

/// A configuration error.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Not a CIDR block (`10.0.0.0/8`, `fc00::/7`, or a bare address).
    #[error("{0:?} is not a CIDR block such as 10.0.0.0/8")]
    Cidr(String),
}

/// The operator's egress policy.
#[derive(Clone, Debug)]
pub struct Policy {
    /// Whether `http://` URLs are allowed at all. Default false: https only.
    pub allow_http: bool,
    /// Addresses never connected to. Default [`DEFAULT_DENY`].
    pub deny: Vec<Cidr>,
    /// Exceptions to `deny` (for a receiver on a private network). Default empty.
    pub allow: Vec<Cidr>,
    /// Resolution and TCP connection, together. Default 3 s.
    pub connect_timeout: Duration,
    /// TLS handshake, request and the whole answer, together. Default 5 s.
    pub response_timeout: Duration,
    /// The most of an answer's body read (and discarded). Default 64 KiB.
    pub max_response_bytes: usize,
    /// Requests of one account in flight at once on this node; more fail at once. Default 32.
    pub max_in_flight_per_account: usize,
}

impl Default for Policy {
    fn default() -> Self {
        Policy {
            allow_http: false,
            deny: default_deny(),
            allow: Vec::new(),
            connect_timeout: Duration::from_secs(3),
            response_timeout: Duration::from_secs(5),
            max_response_bytes: 64 * 1024,
            max_in_flight_per_account: 32,
        }
    }
}

/// Why a request was not delivered (the log's and the metrics' reason).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Refusal {
    /// Not an `https://` (or `http://`) URL with a host, or a request that cannot be built.
    InvalidUrl,
    /// `http://` while the policy allows https only.
    PlainHttp,
    /// Every address the host resolved to is on the deny list.
    DeniedAddress,
    /// The host did not resolve.
    ResolveFailed,
    /// No allowed address accepted the connection.
    ConnectFailed,
    /// The TLS handshake failed (or no roots are configured).
    TlsFailed,
    /// Too slow: connection or answer.
    Timeout,
    /// The HTTP exchange failed.
    Protocol,
    /// The account has [`Policy::max_in_flight_per_account`] requests in flight already.
    Busy,
}

impl Refusal {
    /// Every reason, for the metrics.
    pub const ALL: [Refusal; 9] = [
        Refusal::InvalidUrl,
        Refusal::PlainHttp,
        Refusal::DeniedAddress,
        Refusal::ResolveFailed,
        Refusal::ConnectFailed,
        Refusal::TlsFailed,
        Refusal::Timeout,
        Refusal::Protocol,
        Refusal::Busy,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Refusal::InvalidUrl => "invalid_url",
            Refusal::PlainHttp => "plain_http",
            Refusal::DeniedAddress => "denied_address",
            Refusal::ResolveFailed => "resolve_failed",
            Refusal::ConnectFailed => "connect_failed",
            Refusal::TlsFailed => "tls_failed",
            Refusal::Timeout => "timeout",
            Refusal::Protocol => "protocol",
            Refusal::Busy => "busy",
        }
    }

    fn index(self) -> usize {
        match self {
            Refusal::InvalidUrl => 0,
            Refusal::PlainHttp => 1,
            Refusal::DeniedAddress => 2,
            Refusal::ResolveFailed => 3,
            Refusal::ConnectFailed => 4,
            Refusal::TlsFailed => 5,
            Refusal::Timeout => 6,
            Refusal::Protocol => 7,
            Refusal::Busy => 8,
        }
    }
}

/// What the caller learns of a failed request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Failure {
    /// Not delivered.
    Refused(Refusal),
    /// Delivered, answered with a status other than 2xx (redirects are not followed).
    Status(u16),
}

impl Failure {
    /// The message a tenant may see: the same [`UNREACHABLE`] for every refusal that would
    /// describe the network (denied, unresolvable, closed, unreachable, slow, TLS).
    pub fn tenant_message(self) -> String {
        match self {
            Failure::Status(status) => format!("the destination answered HTTP {status}"),
            Failure::Refused(Refusal::InvalidUrl) => "the url is not valid".into(),
            Failure::Refused(Refusal::PlainHttp) => "http:// is not allowed: use https://".into(),
            Failure::Refused(Refusal::Busy) => "too many requests of this account in flight".into(),
            Failure::Refused(
                Refusal::DeniedAddress
                | Refusal::ResolveFailed
                | Refusal::ConnectFailed
                | Refusal::TlsFailed
                | Refusal::Timeout
                | Refusal::Protocol,
            ) => UNREACHABLE.into(),
        }
    }
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.tenant_message())
    }
}

/// Who caused a request (logged with it).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Purpose {
    RuleAction,
    RuleErrorAction,
    DestinationConfirmation,
    AuditNotification,
    RotationAlert,
    /// A fleet provisioning template's pre-provisioning hook (its answer is read).
    ProvisioningHook,
}

impl Purpose {
    pub fn as_str(self) -> &'static str {
        match self {
            Purpose::RuleAction => "rule_action",
            Purpose::RuleErrorAction => "rule_error_action",
            Purpose::DestinationConfirmation => "destination_confirmation",
            Purpose::AuditNotification => "audit_notification",
            Purpose::RotationAlert => "rotation_alert",
            Purpose::ProvisioningHook => "provisioning_hook",
        }
    }
}

/// A 2xx answer: its status, and its body when the caller asked to keep it (else empty).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Answer {
    pub status: u16,
    pub body: Bytes,
}

/// What of an answer's body a request keeps.
#[derive(Clone, Copy, Debug)]
enum Keep {
    Nothing,
    /// At most this many bytes (more is a failure).
    Body(usize),
}

/// A parsed request URL.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Target {
    pub secure: bool,
    /// The host as written, without IPv6 brackets.
    pub host: String,
    pub port: u16,
    /// `host[:port]` as written (the Host header).
    pub authority: String,
    /// Path and query, `/` at least.
    pub path: String,
}

impl Target {
    /// Parses an `https://` or `http://` URL with a host and no user information.
    pub fn parse(url: &str) -> Result<Self, Refusal> {
        let uri: http::Uri = url.parse().map_err(|_| Refusal::InvalidUrl)?;
        let secure = match uri.scheme_str() {
            Some("https") => true,
            Some("http") => false,
            _ => return Err(Refusal::InvalidUrl),
        };
        let authority = uri.authority().ok_or(Refusal::InvalidUrl)?;
        if authority.as_str().contains('@') || authority.host().is_empty() {
            return Err(Refusal::InvalidUrl);
        }
        let host = authority.host().trim_start_matches('[').trim_end_matches(']').to_owned();
        Ok(Target {
            secure,
            host,
            port: authority.port_u16().unwrap_or(if secure { 443 } else { 80 }),
            authority: authority.as_str().to_owned(),
            path: uri.path_and_query().map_or_else(|| "/".to_owned(), |path| path.as_str().to_owned()),
        })
    }
}

/// Counters of the egress, by outcome.
#[derive(Debug, Default)]
pub struct Counters {
    /// Requests answered with 2xx.
    pub delivered: AtomicU64,
    /// Requests answered with another status.
    pub non_2xx: AtomicU64,
    refused: [AtomicU64; Refusal::ALL.len()],
}

impl Counters {
    pub fn refused(&self, reason: Refusal) -> u64 {
        self.refused[reason.index()].load(Ordering::Relaxed)
    }
}

/// The egress of this node: the policy, the TLS client configuration and the per-account slots.
pub struct Egress {
    policy: Policy,
    tls: Option<Arc<rustls::ClientConfig>>,
    in_flight: Mutex<HashMap<AccountId, Arc<Semaphore>>>,
    pub counters: Counters,
}

impl std::fmt::Debug for Egress {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Egress").field("policy", &self.policy).field("tls", &self.tls.is_some()).finish()
    }
}

impl Default for Egress {
    /// The default policy, with no trusted roots (every https request fails its handshake).
    fn default() -> Self {
        Egress::new(Policy::default(), None)
    }
}

/// Request headers a tenant may not set: certfleet writes them, or they are hop-by-hop.
const RESERVED_HEADERS: [&str; 7] =
    ["host", "content-length", "transfer-encoding", "connection", "upgrade", "te", "trailer"];

impl Egress {
    /// An egress with `policy`, verifying https servers against `roots` (`None`: every https
    /// request fails as [`Refusal::TlsFailed`]).
    pub fn new(policy: Policy, roots: Option<Arc<rustls::RootCertStore>>) -> Self {
        let tls = roots.and_then(|roots| {
            let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
            rustls::ClientConfig::builder_with_provider(provider)
                .with_safe_default_protocol_versions()
                .ok()
                .map(|builder| Arc::new(builder.with_root_certificates(roots).with_no_client_auth()))
        });
        Egress { policy, tls, in_flight: Mutex::new(HashMap::new()), counters: Counters::default() }
    }

    pub fn policy(&self) -> &Policy {
        &self.policy
    }

    /// The checks that need no network: the URL parses and its scheme is allowed.
    pub fn check_url(&self, url: &str) -> Result<Target, Refusal> {
        let target = Target::parse(url)?;
        if !target.secure && !self.policy.allow_http {
            return Err(Refusal::PlainHttp);
        }
        Ok(target)
    }

    /// POSTs `body` (JSON) to `url` for `account`, under the policy. `Ok` with the status for a
    /// 2xx answer. A failure is logged here (once, with its reason and detail) and counted.
    pub async fn post(
        &self,
        account: &AccountId,
        purpose: Purpose,
        url: &str,
        headers: &[(String, String)],
        body: Bytes,
    ) -> Result<u16, Failure> {
        let whole = self.policy.connect_timeout.saturating_add(self.policy.response_timeout);
        self.post_within(whole, account, purpose, url, headers, body).await
    }

    /// [`post`](Self::post) within `total` as well (the caller's own bound, e.g. a rule
    /// action's 3 s), so that a caller's deadline is logged and counted like the policy's.
    pub async fn post_within(
        &self,
        total: Duration,
        account: &AccountId,
        purpose: Purpose,
        url: &str,
        headers: &[(String, String)],
        body: Bytes,
    ) -> Result<u16, Failure> {
        let answer = self.exchange_within(total, account, purpose, url, headers, body, Keep::Nothing).await?;
        Ok(answer.status)
    }

    /// [`post_within`](Self::post_within), keeping the answer's body: a 2xx answer of at most
    /// `max_body` bytes (and at most the policy's `max_response_bytes`); a longer one is a
    /// failure ([`Refusal::Protocol`]), never truncated. For callers that must read what the
    /// destination decided (a pre-provisioning hook).
    pub async fn post_for_answer(
        &self,
        total: Duration,
        account: &AccountId,
        purpose: Purpose,
        url: &str,
        body: Bytes,
        max_body: usize,
    ) -> Result<Answer, Failure> {
        let keep = Keep::Body(max_body.min(self.policy.max_response_bytes));
        self.exchange_within(total, account, purpose, url, &[], body, keep).await
    }

    #[allow(clippy::too_many_arguments)] // one private body behind the two public forms
    async fn exchange_within(
        &self,
        total: Duration,
        account: &AccountId,
        purpose: Purpose,
        url: &str,
        headers: &[(String, String)],
        body: Bytes,
        keep: Keep,
    ) -> Result<Answer, Failure> {
        let outcome = match self.slot(account) {
            Some(permit) => {
                let outcome = match tokio::time::timeout(total, self.post_checked(url, headers, body, keep)).await {
                    Ok(outcome) => outcome,
                    Err(_) => Err((Failure::Refused(Refusal::Timeout), format!("no answer within {total:?}"))),
                };
                drop(permit);
                outcome
            }
            None => Err((Failure::Refused(Refusal::Busy), String::new())),
        };
        match outcome {
            Ok(answer) => {
                self.counters.delivered.fetch_add(1, Ordering::Relaxed);
                Ok(answer)
            }
            Err((failure, detail)) => {
                match failure {
                    Failure::Refused(reason) => {
                        self.counters.refused[reason.index()].fetch_add(1, Ordering::Relaxed);
                    }
                    Failure::Status(_) => {
                        self.counters.non_2xx.fetch_add(1, Ordering::Relaxed);
                    }
                }
                let reason = match failure {
                    Failure::Refused(reason) => reason.as_str(),
                    Failure::Status(_) => "status",
                };
                // The URL may carry a tenant's secret in its query: log the host only.
                let host = Target::parse(url).map(|target| target.authority).unwrap_or_default();
                tracing::info!(
                    %account, purpose = purpose.as_str(), reason, ?failure, host, detail,
                    "outbound request not delivered"
                );
                Err(failure)
            }
        }
    }

    /// A slot of the account's in-flight bound, or `None` when it is full.
    fn slot(&self, account: &AccountId) -> Option<tokio::sync::OwnedSemaphorePermit> {
        let semaphore = {
            let mut in_flight = self.in_flight.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            if in_flight.len() > 4096 {
                // Forget idle accounts, so the table is bounded by the accounts sending now.
                let max = self.policy.max_in_flight_per_account;
                in_flight.retain(|_, semaphore| semaphore.available_permits() < max);
            }
            in_flight
                .entry(account.clone())
                .or_insert_with(|| Arc::new(Semaphore::new(self.policy.max_in_flight_per_account)))
                .clone()
        };
        semaphore.try_acquire_owned().ok()
    }

    async fn post_checked(
        &self,
        url: &str,
        headers: &[(String, String)],
        body: Bytes,
        keep: Keep,
    ) -> Result<Answer, (Failure, String)> {
        let refused = |reason: Refusal, detail: String| (Failure::Refused(reason), detail);
        let target = self.check_url(url).map_err(|reason| refused(reason, String::new()))?;
        let mut request = http::Request::post(target.path.as_str())
            .header(http::header::HOST, target.authority.as_str())
            .header(http::header::CONTENT_TYPE, "application/json")
            .header(http::header::USER_AGENT, "certfleet");
        for (key, value) in headers {
            if !RESERVED_HEADERS.iter().any(|reserved| key.eq_ignore_ascii_case(reserved)) {
                request = request.header(key.as_str(), value.as_str());
            }
        }
        let request = request.body(Full::new(body)).map_err(|error| refused(Refusal::InvalidUrl, error.to_string()))?;
        let stream = tokio::time::timeout(self.policy.connect_timeout, self.connect(&target))
            .await
            .map_err(|_| refused(Refusal::Timeout, "connecting".into()))??;
        let answer = tokio::time::timeout(self.policy.response_timeout, self.exchange(&target, stream, request, keep))
            .await
            .map_err(|_| refused(Refusal::Timeout, "waiting for the answer".into()))??;
        if (200..300).contains(&answer.status) {
            Ok(answer)
        } else {
            Err((Failure::Status(answer.status), String::new()))
        }
    }

    /// Resolves the host once, keeps the addresses the policy allows, and connects to the first
    /// that accepts: the checked address is the one connected to.
    async fn connect(&self, target: &Target) -> Result<(TcpStream, SocketAddr), (Failure, String)> {
        let refused = |reason: Refusal, detail: String| (Failure::Refused(reason), detail);
        let resolved: Vec<SocketAddr> = match target.host.parse::<IpAddr>() {
            Ok(address) => vec![SocketAddr::new(address, target.port)],
            Err(_) => tokio::net::lookup_host((target.host.as_str(), target.port))
                .await
                .map_err(|error| refused(Refusal::ResolveFailed, error.to_string()))?
                .take(16)
                .collect(),
        };
        let mut denied = Vec::new();
        let allowed: Vec<SocketAddr> = resolved
            .into_iter()
            .filter(|address| {
                let verdict = classify(address.ip(), &self.policy.allow, &self.policy.deny);
                if let Verdict::Denied(block) = verdict {
                    denied.push(format!("{} in {block}", address.ip()));
                }
                verdict.permits()
            })
            .collect();
        if allowed.is_empty() {
            let reason = if denied.is_empty() { Refusal::ResolveFailed } else { Refusal::DeniedAddress };
            return Err(refused(reason, denied.join(", ")));
        }
        let mut last = String::new();
        for address in allowed {
            match TcpStream::connect(address).await {
                Ok(stream) => return Ok((stream, address)),
                Err(error) => last = format!("{address}: {error}"),
            }
        }
        Err(refused(Refusal::ConnectFailed, last))
    }

    async fn exchange(
        &self,
        target: &Target,
        (stream, address): (TcpStream, SocketAddr),
        request: http::Request<Full<Bytes>>,
        keep: Keep,
    ) -> Result<Answer, (Failure, String)> {
        let refused = |reason: Refusal, detail: String| (Failure::Refused(reason), detail);
        if !target.secure {
            return self.send(stream, request, keep).await;
        }
        let Some(tls) = self.tls.clone() else {
            return Err(refused(Refusal::TlsFailed, "no trusted roots are configured".into()));
        };
        let name = rustls::pki_types::ServerName::try_from(target.host.clone())
            .map_err(|_| refused(Refusal::InvalidUrl, format!("{} is not a server name", target.host)))?;
        let stream = tokio_rustls::TlsConnector::from(tls)
            .connect(name, stream)
            .await
            .map_err(|error| refused(Refusal::TlsFailed, format!("{address}: {error}")))?;
        self.send(stream, request, keep).await
    }

    /// One request over a fresh HTTP/1.1 connection; at most `max_response_bytes` of the answer
    /// are read (kept when the caller asked for the body, else discarded), then the connection
    /// is dropped.
    async fn send<S>(
        &self,
        stream: S,
        request: http::Request<Full<Bytes>>,
        keep: Keep,
    ) -> Result<Answer, (Failure, String)>
    where
        S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    {
        let protocol = |error: hyper::Error| (Failure::Refused(Refusal::Protocol), error.to_string());
        let (mut sender, connection) =
            hyper::client::conn::http1::handshake(TokioIo::new(stream)).await.map_err(protocol)?;
        let driver = tokio::spawn(connection);
        let outcome = async {
            let response = sender.send_request(request).await.map_err(protocol)?;
            let status = response.status().as_u16();
            let mut body = response.into_body();
            let mut read = 0usize;
            let mut kept = Vec::new();
            while read <= self.policy.max_response_bytes {
                match body.frame().await {
                    Some(Ok(frame)) => {
                        let data = frame.data_ref().map_or(&[][..], |data| &data[..]);
                        read += data.len();
                        if let Keep::Body(limit) = keep {
                            if read > limit {
                                return Err((
                                    Failure::Refused(Refusal::Protocol),
                                    format!("an answer longer than {limit} bytes"),
                                ));
                            }
                            kept.extend_from_slice(data);
                        }
                    }
                    Some(Err(error)) if matches!(keep, Keep::Body(_)) => {
                        return Err((Failure::Refused(Refusal::Protocol), error.to_string()));
                    }
                    Some(Err(_)) | None => break,
                }
            }
            Ok(Answer { status, body: Bytes::from(kept) })
        }
        .await;
        // Whatever is left of the answer is not read: the connection ends here.
        driver.abort();
        outcome
    }
}

/// The egress counters in the Prometheus text format: deliveries, non-2xx answers, and refusals
/// by reason (`certfleet_egress_refused_total{reason="denied_address"}`).
pub fn render_metrics(counters: &Counters, out: &mut String) {
    use std::fmt::Write;
    let _ = writeln!(
        out,
        "# HELP certfleet_egress_delivered_total Outbound requests answered with 2xx.\n# TYPE certfleet_egress_delivered_total counter\ncertfleet_egress_delivered_total {}",
        counters.delivered.load(Ordering::Relaxed)
    );
    let _ = writeln!(
        out,
        "# HELP certfleet_egress_non_2xx_total Outbound requests answered with another status.\n# TYPE certfleet_egress_non_2xx_total counter\ncertfleet_egress_non_2xx_total {}",
        counters.non_2xx.load(Ordering::Relaxed)
    );
    let _ = writeln!(
        out,
        "# HELP certfleet_egress_refused_total Outbound requests not delivered, by reason.\n# TYPE certfleet_egress_refused_total counter"
    );
    for reason in Refusal::ALL {
        let _ = writeln!(
            out,
            "certfleet_egress_refused_total{{reason=\"{}\"}} {}",
            reason.as_str(),
            counters.refused(reason)
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets() {
        let target = Target::parse("https://example.com:8443/a/b?c=d").unwrap();
        assert_eq!(
            (target.secure, target.host.as_str(), target.port, target.path.as_str()),
            (true, "example.com", 8443, "/a/b?c=d")
        );
        let target = Target::parse("http://[::1]/").unwrap();
        assert_eq!((target.secure, target.host.as_str(), target.port), (false, "::1", 80));
        for bad in ["ftp://example.com/", "https://", "https://user@example.com/", "example.com", "https:///x", ""] {
            assert_eq!(Target::parse(bad), Err(Refusal::InvalidUrl), "{bad}");
        }
    }

    #[test]
    fn tenant_messages_do_not_describe_the_network() {
        for reason in [
            Refusal::DeniedAddress,
            Refusal::ResolveFailed,
            Refusal::ConnectFailed,
            Refusal::TlsFailed,
            Refusal::Timeout,
            Refusal::Protocol,
        ] {
            assert_eq!(Failure::Refused(reason).tenant_message(), UNREACHABLE, "{reason:?}");
        }
    }

    fn account() -> AccountId {
        AccountId::parse("123456789012").unwrap()
    }

    /// A listener on 127.0.0.1 that counts the connections it accepts.
    async fn counting_listener() -> (u16, Arc<AtomicU64>) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let accepted = Arc::new(AtomicU64::new(0));
        let count = accepted.clone();
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                count.fetch_add(1, Ordering::SeqCst);
                drop(stream);
            }
        });
        (port, accepted)
    }

    #[tokio::test]
    async fn loopback_is_never_connected_to_under_the_default_policy() {
        let (port, accepted) = counting_listener().await;
        let egress = Egress::new(Policy { allow_http: true, ..Policy::default() }, None);
        for url in [
            format!("http://127.0.0.1:{port}/x"),
            format!("http://localhost:{port}/x"),
            format!("http://[::ffff:127.0.0.1]:{port}/x"),
            format!("http://127.1.2.3:{port}/x"),
            format!("http://0.0.0.0:{port}/x"),
        ] {
            let failure = egress.post(&account(), Purpose::RuleAction, &url, &[], Bytes::new()).await.unwrap_err();
            assert!(
                matches!(failure, Failure::Refused(Refusal::DeniedAddress | Refusal::ResolveFailed)),
                "{url}: {failure:?}"
            );
            assert_eq!(failure.tenant_message(), UNREACHABLE);
        }
        let failure = Egress::default()
            .post(&account(), Purpose::RuleAction, &format!("http://127.0.0.1:{port}/"), &[], Bytes::new())
            .await
            .unwrap_err();
        assert_eq!(failure, Failure::Refused(Refusal::PlainHttp));
        assert_eq!(accepted.load(Ordering::SeqCst), 0);
        assert_eq!(egress.counters.refused(Refusal::DeniedAddress), 5);
        let mut text = String::new();
        render_metrics(&egress.counters, &mut text);
        assert!(text.contains("certfleet_egress_refused_total{reason=\"denied_address\"} 5"), "{text}");
    }

    #[tokio::test]
    async fn an_allow_listed_receiver_gets_the_request_and_the_busy_bound_holds() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        tokio::spawn(async move {
            while let Ok((mut stream, _)) = listener.accept().await {
                use tokio::io::{AsyncReadExt, AsyncWriteExt};
                let mut buffer = vec![0u8; 4096];
                let _ = stream.read(&mut buffer).await;
                // An answer with a body larger than the bound, and a redirect status.
                let body = vec![b'x'; 200_000];
                let head = format!(
                    "HTTP/1.1 302 Found\r\nlocation: http://127.0.0.1:1/\r\ncontent-length: {}\r\n\r\n",
                    body.len()
                );
                let _ = stream.write_all(head.as_bytes()).await;
                let _ = stream.write_all(&body).await;
            }
        });
        let policy = Policy {
            allow_http: true,
            allow: vec![Cidr::parse("127.0.0.1/32").unwrap()],
            max_in_flight_per_account: 0,
            ..Policy::default()
        };
        let busy = Egress::new(policy.clone(), None);
        let url = format!("http://127.0.0.1:{port}/hook");
        assert_eq!(
            busy.post(&account(), Purpose::RuleAction, &url, &[], Bytes::new()).await,
            Err(Failure::Refused(Refusal::Busy))
        );
        let egress = Egress::new(Policy { max_in_flight_per_account: 1, ..policy }, None);
        assert_eq!(
            egress.post(&account(), Purpose::RuleAction, &url, &[], Bytes::new()).await,
            Err(Failure::Status(302))
        );
        assert_eq!(egress.counters.non_2xx.load(Ordering::Relaxed), 1);
    }

    #[tokio::test]
    async fn a_caller_deadline_is_a_counted_timeout() {
        // A receiver that accepts and never answers.
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        tokio::spawn(async move {
            let mut held = Vec::new();
            while let Ok((stream, _)) = listener.accept().await {
                held.push(stream);
            }
        });
        let policy =
            Policy { allow_http: true, allow: vec![Cidr::parse("127.0.0.1/32").unwrap()], ..Policy::default() };
        let egress = Egress::new(policy, None);
        let url = format!("http://127.0.0.1:{port}/");
        let failure = egress
            .post_within(Duration::from_millis(50), &account(), Purpose::RuleAction, &url, &[], Bytes::new())
            .await
            .unwrap_err();
        assert_eq!(failure, Failure::Refused(Refusal::Timeout));
        assert_eq!(failure.tenant_message(), UNREACHABLE);
        assert_eq!(egress.counters.refused(Refusal::Timeout), 1);
    }
}
