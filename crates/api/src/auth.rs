//! SigV4 authentication of every request, before anything else runs, and before its body is
//! read.
//!
//! The request's head is checked first ([`authenticate`]): the `Authorization` header is
//! well-formed, the credential scope names this region, the route's service and the day of
//! `X-Amz-Date`, the request time is within the allowed skew, and the access key exists. A
//! request failing any of these is answered at once, its body unread (and, when one was
//! announced, the connection closed), so a stranger cannot make the server hold a body. Only
//! then is the body read, into a buffer of its declared length (bounded by the limit), hashed as
//! it arrives, and the signature checked at its end.
//!
//! Signing keys are derived once per (access key, day, region, service) and cached, but only
//! once a signature made with them was verified: a made-up or guessed access key ID never enters
//! the cache, and the cache is a [`BoundedMap`] of configured capacity. It follows the
//! registry's change feed ([`follow_feed`]): deleting an access key or an account records an
//! entry, and every API node sharing the registry forgets the keys it names within a poll
//! ([`FEED_POLL_INTERVAL`]). A cache whose follower has not read the feed successfully for
//! [`FEED_STALE_AFTER`] is not trusted (fail closed): every request then looks its key up.
//!
//! Every refusal is counted by [`Cause`] in `/metrics` and logged at most once a second per
//! cause (with how many were not logged), every client-supplied text in it clipped to
//! [`LOG_INPUT_MAX`] bytes.

use std::borrow::Cow;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError, Weak};
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::extract::{Request, State};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use certfleet_cache::{BoundedMap, LogGate};
use certfleet_registry::{AccountId, Change, ChangeKind};
use certfleet_services::feed::Cursor;
use certfleet_services::{Caller, Services};
use certfleet_sigv4::{self as sigv4, PayloadDigest, PayloadHasher, SigningKey, VerifyPolicy};
use http::{HeaderValue, StatusCode};
use http_body_util::BodyExt;
use time::OffsetDateTime;

use crate::AppState;
use crate::error::ApiError;
use crate::listener::ListenerMetrics;

/// How long a derived signing key is kept at most, even while the feed says nothing about it.
pub const KEY_CACHE_TTL: Duration = Duration::from_secs(300);

/// How often the cache reads the change feed.
pub const FEED_POLL_INTERVAL: Duration = Duration::from_millis(200);

/// How old the follower's last successful read of the feed may be for cached keys to be used.
pub const FEED_STALE_AFTER: Duration = Duration::from_millis(800);

/// Entries read from the feed per poll.
const FEED_BATCH: u32 = 1000;

/// The most bytes of any client-supplied text (access key IDs, paths, header values, messages
/// quoting them) a log line carries.
pub const LOG_INPUT_MAX: usize = 128;

/// The most access key IDs remembered as unknown (each a short string; a flood of made-up IDs
/// evicts only its own kind, and each of them is looked up once per generation).
const UNKNOWN_KEYS_CACHED: usize = 4096;

/// The longest access key ID looked up (AWS: 16 to 128 characters, letters and digits).
const MAX_ACCESS_KEY_ID: usize = 128;

/// By access key, date, region and service: the derived key depends on all four.
type CacheKey = (String, String, String, String);

/// Derived signing keys of verified signatures, trusted only while the change feed is followed.
pub struct KeyCache {
    keys: Mutex<BoundedMap<CacheKey, CachedKey>>,
    /// Access key IDs the registry did not hold, and when that was read: a map of their own, so
    /// strangers evict only strangers. Creating a key records a feed entry that drops its ID.
    unknown: Mutex<BoundedMap<String, Instant>>,
    /// Bumped by every invalidation: a lookup that read the registry before one does not cache
    /// what it read (the key may have been deleted since).
    epoch: AtomicU64,
    /// When the last successful read of the feed started; `None` before the first one and after
    /// a failed one.
    feed_read_at: Mutex<Option<Instant>>,
    /// Where the cache's size and evictions are exported.
    metrics: Arc<ListenerMetrics>,
}

#[derive(Clone)]
struct CachedKey {
    account: AccountId,
    key: SigningKey,
    fetched: Instant,
}

impl KeyCache {
    /// An empty cache of at most `capacity` keys, followed by a task on the current tokio
    /// runtime for as long as the cache lives. Without a runtime (or until the first read of the
    /// feed) nothing cached is trusted.
    pub fn following(services: Arc<Services>, capacity: usize, metrics: Arc<ListenerMetrics>) -> Arc<KeyCache> {
        let cache = Arc::new(KeyCache::new(capacity, metrics));
        match tokio::runtime::Handle::try_current() {
            Ok(runtime) => {
                runtime.spawn(follow_feed(Arc::downgrade(&cache), services, FEED_POLL_INTERVAL));
            }
            Err(_) => tracing::warn!("no runtime to follow the change feed: every request looks its access key up"),
        }
        cache
    }

    fn new(capacity: usize, metrics: Arc<ListenerMetrics>) -> KeyCache {
        KeyCache {
            keys: Mutex::new(BoundedMap::new(capacity)),
            unknown: Mutex::new(BoundedMap::new(UNKNOWN_KEYS_CACHED)),
            epoch: AtomicU64::new(0),
            feed_read_at: Mutex::new(None),
            metrics,
        }
    }

    /// Whether cached keys may be used: the feed was read successfully a moment ago.
    fn trusted(&self) -> bool {
        self.feed_read_at
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .is_some_and(|read_at| read_at.elapsed() < FEED_STALE_AFTER)
    }

    fn mark_feed_read(&self, started: Option<Instant>) {
        *self.feed_read_at.lock().unwrap_or_else(PoisonError::into_inner) = started;
    }

    /// Runs `change` on the map under its lock, then exports its size and evictions.
    fn with_keys<T>(&self, change: impl FnOnce(&mut BoundedMap<CacheKey, CachedKey>) -> T) -> T {
        let mut keys = self.keys.lock().unwrap_or_else(PoisonError::into_inner);
        let answer = change(&mut keys);
        self.metrics.auth.keys_cached.store(keys.len() as u64, Ordering::Relaxed);
        self.metrics.auth.keys_evicted.store(keys.evicted(), Ordering::Relaxed);
        answer
    }

    /// Runs `change` on the unknown IDs under their lock, then exports their size and evictions.
    fn with_unknown<T>(&self, change: impl FnOnce(&mut BoundedMap<String, Instant>) -> T) -> T {
        let mut unknown = self.unknown.lock().unwrap_or_else(PoisonError::into_inner);
        let answer = change(&mut unknown);
        self.metrics.auth.unknown_cached.store(unknown.len() as u64, Ordering::Relaxed);
        self.metrics.auth.unknown_evicted.store(unknown.evicted(), Ordering::Relaxed);
        answer
    }

    /// Whether `id` was found unknown a moment ago (and the feed says nothing created it since).
    fn known_unknown(&self, id: &str) -> bool {
        self.trusted()
            && self.with_unknown(|unknown| match unknown.get(id) {
                Some(read_at) if read_at.elapsed() < KEY_CACHE_TTL => true,
                Some(_) => {
                    unknown.remove(id);
                    false
                }
                None => false,
            })
    }

    /// Remembers that the registry holds no key `id`, unless the cache is not trusted or an
    /// invalidation happened since the lookup (`epoch`, read before it).
    fn remember_unknown(&self, id: &str, epoch: u64) {
        if !self.trusted() {
            return;
        }
        self.with_unknown(|unknown| {
            if self.epoch.load(Ordering::SeqCst) == epoch {
                unknown.insert(id.to_owned(), Instant::now());
            }
        });
    }

    /// The cached key, if trusted and fresh.
    fn get(&self, cache_key: &CacheKey) -> Option<CachedKey> {
        if !self.trusted() {
            return None;
        }
        self.with_keys(|keys| match keys.get(cache_key) {
            Some(cached) if cached.fetched.elapsed() < KEY_CACHE_TTL => Some(cached.clone()),
            Some(_) => {
                keys.remove(cache_key);
                None
            }
            None => None,
        })
    }

    /// Keeps a key whose signature was just verified, unless the cache is not trusted or an
    /// invalidation happened since the lookup that found it (`epoch`, read before it).
    fn remember(&self, cache_key: CacheKey, cached: CachedKey, epoch: u64) {
        if !self.trusted() {
            return;
        }
        self.with_keys(|keys| {
            // Checked under the lock: an invalidation since the lookup forbids caching it.
            if self.epoch.load(Ordering::SeqCst) == epoch {
                keys.insert(cache_key, cached);
            }
        });
    }

    /// Forgets the keys `change` names: an access key deleted, or every key of an account.
    fn apply(&self, change: &Change) {
        let forget = |cached: &CacheKey, entry: &CachedKey| match change.kind {
            ChangeKind::AccessKey => cached.0 == change.entity_id,
            ChangeKind::Account => entry.account == change.account,
            ChangeKind::Certificate
            | ChangeKind::CaCertificate
            | ChangeKind::Policy
            | ChangeKind::Thing
            | ChangeKind::DomainConfiguration
            | ChangeKind::TopicRule
            | ChangeKind::ThingGroup => false,
        };
        if matches!(change.kind, ChangeKind::AccessKey | ChangeKind::Account) {
            // Both locks, the epoch bumped under them: a lookup in flight caches nothing.
            self.with_unknown(|unknown| {
                self.with_keys(|keys| {
                    self.epoch.fetch_add(1, Ordering::SeqCst);
                    keys.retain(|cached, entry| !forget(cached, entry));
                    if change.kind == ChangeKind::AccessKey {
                        unknown.remove(change.entity_id.as_str());
                    }
                });
            });
        }
    }

    /// Forgets everything (the feed could not be read: whatever changed must not be served).
    fn forget_all(&self) {
        self.with_unknown(|unknown| {
            self.with_keys(|keys| {
                self.epoch.fetch_add(1, Ordering::SeqCst);
                keys.clear();
                unknown.clear();
            });
        });
    }
}

/// Follows the change feed for `cache` until the cache is dropped.
async fn follow_feed(cache: Weak<KeyCache>, services: Arc<Services>, interval: Duration) {
    let mut cursor: Option<Cursor> = None;
    let mut ticker = tokio::time::interval(interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticker.tick().await;
        let Some(live) = cache.upgrade() else { return };
        let started = Instant::now();
        let services = services.clone();
        let after = cursor.as_ref().map(Cursor::watermark);
        let read = tokio::task::spawn_blocking(move || match after {
            Some(after) => services.changes_after(after, FEED_BATCH).map(Ok),
            None => services.last_change_seq().map(Err),
        })
        .await;
        match read {
            // The first read: where to start. Whatever was cached before may predate a change
            // below it, so the cache starts empty.
            Ok(Ok(Err(last))) => {
                live.forget_all();
                cursor = Some(Cursor::after(last));
                live.mark_feed_read(Some(started));
            }
            Ok(Ok(Ok(batch))) => {
                // A full batch may not be all there is: until the follower has caught up, what
                // is cached may already be revoked.
                let caught_up = batch.len() < FEED_BATCH as usize;
                if let Some(cursor) = cursor.as_mut() {
                    for change in cursor.take(batch, Instant::now()) {
                        live.apply(&change);
                    }
                }
                live.mark_feed_read(caught_up.then_some(started));
            }
            Ok(Err(error)) => {
                if live.trusted() {
                    tracing::warn!(%error, "reading the change feed failed; cached access keys are not trusted until it is read again");
                }
                live.mark_feed_read(None);
                live.forget_all();
            }
            Err(_) => {
                live.mark_feed_read(None);
                live.forget_all();
            }
        }
    }
}

/// Why authentication refused a request: the label of its counter and of its log line.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Cause {
    /// No `Authorization` header.
    MissingAuthentication,
    /// A malformed `Authorization` or date header, or an unsupported algorithm.
    Malformed,
    /// The credential scope names another region, service or day.
    WrongScope,
    /// The request time is outside the allowed skew.
    Expired,
    /// `host` or the date header is not signed, or a signed header is absent.
    UnsignedHeader,
    /// No such access key (or no plausible access key ID).
    UnknownAccessKey,
    /// The access key could not be looked up (the registry failed).
    KeyLookupFailed,
    /// `Content-Length` is not a number.
    BadContentLength,
    /// The body exceeds the limit.
    BodyTooLarge,
    /// The body did not arrive within its deadline.
    BodyTimeout,
    /// The body could not be read.
    BodyUnreadable,
    /// `x-amz-content-sha256` is not the body's hash.
    PayloadHashMismatch,
    /// The signature is not the one the key makes.
    SignatureMismatch,
    /// A query parameter appears twice (refused before authentication: SigV4 does not sign
    /// the order of repeated values).
    RepeatedQueryParameter,
}

impl Cause {
    const COUNT: usize = 14;
    const ALL: [Cause; Cause::COUNT] = [
        Cause::MissingAuthentication,
        Cause::Malformed,
        Cause::WrongScope,
        Cause::Expired,
        Cause::UnsignedHeader,
        Cause::UnknownAccessKey,
        Cause::KeyLookupFailed,
        Cause::BadContentLength,
        Cause::BodyTooLarge,
        Cause::BodyTimeout,
        Cause::BodyUnreadable,
        Cause::PayloadHashMismatch,
        Cause::SignatureMismatch,
        Cause::RepeatedQueryParameter,
    ];

    fn label(self) -> &'static str {
        match self {
            Cause::MissingAuthentication => "missing_authentication",
            Cause::Malformed => "malformed",
            Cause::WrongScope => "wrong_scope",
            Cause::Expired => "expired",
            Cause::UnsignedHeader => "unsigned_header",
            Cause::UnknownAccessKey => "unknown_access_key",
            Cause::KeyLookupFailed => "key_lookup_failed",
            Cause::BadContentLength => "bad_content_length",
            Cause::BodyTooLarge => "body_too_large",
            Cause::BodyTimeout => "body_timeout",
            Cause::BodyUnreadable => "body_unreadable",
            Cause::PayloadHashMismatch => "payload_hash_mismatch",
            Cause::SignatureMismatch => "signature_mismatch",
            Cause::RepeatedQueryParameter => "repeated_query_parameter",
        }
    }

    fn index(self) -> usize {
        match self {
            Cause::MissingAuthentication => 0,
            Cause::Malformed => 1,
            Cause::WrongScope => 2,
            Cause::Expired => 3,
            Cause::UnsignedHeader => 4,
            Cause::UnknownAccessKey => 5,
            Cause::KeyLookupFailed => 6,
            Cause::BadContentLength => 7,
            Cause::BodyTooLarge => 8,
            Cause::BodyTimeout => 9,
            Cause::BodyUnreadable => 10,
            Cause::PayloadHashMismatch => 11,
            Cause::SignatureMismatch => 12,
            Cause::RepeatedQueryParameter => 13,
        }
    }
}

/// Authentication's counters and the throttle of its refusal log, part of [`ListenerMetrics`].
#[derive(Debug, Default)]
pub(crate) struct AuthMetrics {
    refused: [AtomicU64; Cause::COUNT],
    keys_cached: AtomicU64,
    keys_evicted: AtomicU64,
    unknown_cached: AtomicU64,
    unknown_evicted: AtomicU64,
    /// At most one line a second per cause.
    logged: Mutex<LogGate<{ Cause::COUNT }>>,
}

impl AuthMetrics {
    /// Counts a refusal; `Some(suppressed)` when it is to be logged (at most once a second per
    /// cause), with how many of its cause were not logged since the last line.
    fn refused(&self, cause: Cause, now: Instant) -> Option<u64> {
        self.refused[cause.index()].fetch_add(1, Ordering::Relaxed);
        self.logged.lock().unwrap_or_else(PoisonError::into_inner).admit(cause.index(), now)
    }

    /// Appends the counters in Prometheus text format.
    pub(crate) fn render(&self, out: &mut String) {
        use std::fmt::Write as _;
        let _ = writeln!(
            out,
            "# HELP certfleet_api_auth_refused_total API requests refused by authentication, by cause.\n\
             # TYPE certfleet_api_auth_refused_total counter"
        );
        for cause in Cause::ALL {
            let _ = writeln!(
                out,
                "certfleet_api_auth_refused_total{{cause=\"{}\"}} {}",
                cause.label(),
                self.refused[cause.index()].load(Ordering::Relaxed)
            );
        }
        let _ = writeln!(
            out,
            "# HELP certfleet_api_signing_keys_cached Signing keys of verified signatures held by the API's cache.\n\
             # TYPE certfleet_api_signing_keys_cached gauge\n\
             certfleet_api_signing_keys_cached {}\n\
             # HELP certfleet_api_signing_keys_evicted_total Signing keys dropped to keep the cache within its capacity.\n\
             # TYPE certfleet_api_signing_keys_evicted_total counter\n\
             certfleet_api_signing_keys_evicted_total {}\n\
             # HELP certfleet_api_unknown_access_keys_cached Access key IDs remembered as unknown.\n\
             # TYPE certfleet_api_unknown_access_keys_cached gauge\n\
             certfleet_api_unknown_access_keys_cached {}\n\
             # HELP certfleet_api_unknown_access_keys_evicted_total Unknown access key IDs dropped to stay within capacity.\n\
             # TYPE certfleet_api_unknown_access_keys_evicted_total counter\n\
             certfleet_api_unknown_access_keys_evicted_total {}",
            self.keys_cached.load(Ordering::Relaxed),
            self.keys_evicted.load(Ordering::Relaxed),
            self.unknown_cached.load(Ordering::Relaxed),
            self.unknown_evicted.load(Ordering::Relaxed)
        );
    }
}

/// `text` cut to at most [`LOG_INPUT_MAX`] bytes (on a character boundary) with an ellipsis:
/// how every client-supplied text enters a log line.
pub(crate) fn clip(text: &str) -> Cow<'_, str> {
    if text.len() <= LOG_INPUT_MAX {
        return Cow::Borrowed(text);
    }
    let mut end = LOG_INPUT_MAX;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    Cow::Owned(format!("{}…", &text[..end]))
}

/// Marks a response as a refusal by authentication, already logged (throttled) here: the
/// request log does not log it again.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Refused;

/// A refusal: why, what the client is told, and what the log adds (client input, clipped when
/// logged).
struct Refusal {
    cause: Cause,
    error: Box<ApiError>,
    detail: String,
}

impl Refusal {
    fn new(cause: Cause, error: ApiError) -> Self {
        Refusal { cause, error: Box::new(error), detail: String::new() }
    }

    fn detail(mut self, detail: impl Into<String>) -> Self {
        self.detail = detail.into();
        self
    }
}

/// A request whose head passed: the key it names exists and its scope and time are right.
struct Head {
    authorization: sigv4::Authorization,
    request_time: OffsetDateTime,
    service: &'static str,
    key: CachedKey,
    /// Set when the key was looked up (not cached): the invalidation epoch read before the
    /// lookup, so that a verified signature can cache it.
    looked_up_at_epoch: Option<u64>,
}

/// The middleware: authenticates the request's head, then reads the body (bounded, hashed as it
/// arrives), verifies the signature, and hands the request on with its [`Caller`] in the
/// extensions. Every refusal is counted and logged (throttled) with its reason and changes
/// nothing.
pub async fn authenticate(State(state): State<Arc<AppState>>, request: Request, next: Next) -> Response {
    let (mut parts, body) = request.into_parts();
    let limit = state.config.max_body_bytes;
    let drain_limit = limit.saturating_mul(DRAIN_FACTOR);
    // A body is announced by a length above zero or a transfer coding; refusing such a request
    // without reading it closes the connection (its bytes must not be read as the next request).
    let announced = parts.headers.contains_key(http::header::TRANSFER_ENCODING)
        || parts.headers.get(http::header::CONTENT_LENGTH).is_some_and(|value| value.as_bytes() != b"0");
    let declared = match parts.headers.get(http::header::CONTENT_LENGTH) {
        None => None,
        Some(value) => match value.to_str().ok().and_then(|text| text.parse::<usize>().ok()) {
            Some(length) => Some(length),
            None => {
                let refusal =
                    Refusal::new(Cause::BadContentLength, ApiError::invalid_request("Content-Length is not a number"))
                        .detail(String::from_utf8_lossy(value.as_bytes()));
                return refuse(&state, &parts, announced, refusal);
            }
        },
    };
    if let Some(length) = declared
        && length > drain_limit
    {
        // Too large even to drain: answer at once, whoever asks.
        return refuse(&state, &parts, announced, too_large(limit).detail(format!("declared {length} bytes")));
    }

    let headers = match header_list(&parts) {
        Ok(headers) => headers,
        Err(refusal) => return refuse(&state, &parts, announced, refusal),
    };
    let head = match authenticate_head(&state, &parts, &headers).await {
        Ok(head) => head,
        Err(refusal) => return refuse(&state, &parts, announced, refusal),
    };

    let body_timeout = state.config.limits.body_timeout;
    let read = tokio::time::timeout(body_timeout, read_body(body, limit, declared, drain_limit)).await;
    let (bytes, digest) = match read {
        Ok(Ok(Some(read))) => read,
        Ok(Ok(None)) => return refuse(&state, &parts, true, too_large(limit)),
        Err(_) => {
            state.listener_metrics.body_timed_out();
            let error = ApiError::new(
                "RequestTimeoutException",
                StatusCode::REQUEST_TIMEOUT,
                "the request body was not received in time",
            );
            let refusal = Refusal::new(Cause::BodyTimeout, error).detail(format!("timeout {body_timeout:?}"));
            return refuse(&state, &parts, true, refusal);
        }
        Ok(Err(error)) => {
            let refusal =
                Refusal::new(Cause::BodyUnreadable, ApiError::invalid_request("the request body could not be read"))
                    .detail(error.to_string());
            return refuse(&state, &parts, true, refusal);
        }
    };

    let request = sigv4_request(&parts, &headers);
    let policy = VerifyPolicy {
        region: &state.config.region,
        service: head.service,
        max_clock_skew: state.config.max_clock_skew,
    };
    let now = state.services.now();
    if let Err(error) =
        sigv4::verify_streamed(&request, &head.authorization, head.request_time, &head.key.key, &policy, now, digest)
    {
        let refusal = signature_refusal(&error);
        drop(headers);
        return refuse(&state, &parts, false, refusal);
    }
    drop(headers);
    let caller = Caller { account: head.key.account.clone() };
    if let Some(epoch) = head.looked_up_at_epoch {
        let authorization = head.authorization;
        let cache_key = (authorization.access_key_id, authorization.date, authorization.region, authorization.service);
        state.keys.remember(cache_key, head.key, epoch);
    }
    parts.extensions.insert(caller.clone());
    let mut response = next.run(Request::from_parts(parts, Body::from(bytes))).await;
    response.extensions_mut().insert(caller);
    response
}

/// Refuses a request whose query repeats a parameter, before authentication, through the same
/// counted and throttled path as authentication's refusals.
pub(crate) fn refuse_repeated_query_parameter(state: &AppState, request: Request, error: ApiError) -> Response {
    let (parts, _body) = request.into_parts();
    refuse(state, &parts, true, Refusal::new(Cause::RepeatedQueryParameter, error))
}

/// Answers a refusal: counted, logged at most once a second per cause (client input clipped),
/// marked [`Refused`], and with `Connection: close` when the body was not read in full.
fn refuse(state: &AppState, parts: &http::request::Parts, close: bool, refusal: Refusal) -> Response {
    let Refusal { cause, error, detail } = refusal;
    if let Some(suppressed) = state.listener_metrics.auth.refused(cause, Instant::now()) {
        tracing::warn!(
            cause = cause.label(),
            method = %clip(parts.method.as_str()),
            path = %clip(&crate::loggable_path(parts.uri.path())),
            code = error.code,
            message = %clip(&error.message),
            detail = %clip(&detail),
            suppressed,
            "request refused by authentication (at most one line a second per cause; `suppressed` were not logged)"
        );
    }
    let mut response = (*error).into_response();
    response.extensions_mut().insert(Refused);
    if close {
        response.headers_mut().insert(http::header::CONNECTION, HeaderValue::from_static("close"));
    }
    response
}

/// How far past the limit a body is still read (and thrown away), for a client whose head
/// authenticated, so that a client which writes its whole body before reading gets the 413
/// rather than a broken connection. A stranger's body is never read.
const DRAIN_FACTOR: usize = 32;

/// The body and its digest, or `None` when it exceeds `limit` (then read on, unkept, up to
/// `drain_limit`). The buffer is allocated once for a declared length within the limit; a
/// body without one grows, up to the limit.
async fn read_body(
    mut body: Body,
    limit: usize,
    declared: Option<usize>,
    drain_limit: usize,
) -> Result<Option<(bytes::Bytes, PayloadDigest)>, axum::Error> {
    let mut kept = bytes::BytesMut::with_capacity(declared.unwrap_or(0).min(limit));
    let mut hasher = PayloadHasher::new();
    let mut seen = 0usize;
    while let Some(frame) = body.frame().await {
        let Ok(data) = frame?.into_data() else { continue };
        seen = seen.saturating_add(data.len());
        if seen <= limit {
            hasher.update(&data);
            kept.extend_from_slice(&data);
        } else if seen > drain_limit {
            break;
        }
    }
    Ok((seen <= limit).then(|| (kept.freeze(), hasher.finish())))
}

fn too_large(limit: usize) -> Refusal {
    Refusal::new(
        Cause::BodyTooLarge,
        ApiError::new(
            "RequestEntityTooLargeException",
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("the request body exceeds {limit} bytes"),
        ),
    )
}

/// The headers as text, as SigV4 reads them.
fn header_list(parts: &http::request::Parts) -> Result<Vec<(&str, &str)>, Refusal> {
    let mut headers = Vec::with_capacity(parts.headers.len());
    for (name, value) in &parts.headers {
        let value = value
            .to_str()
            .map_err(|_| signature_refusal(&sigv4::Error::Malformed(format!("header {name} is not text"))))?;
        headers.push((name.as_str(), value));
    }
    Ok(headers)
}

/// The request as SigV4 sees it, without its body (which is hashed as it streams in).
fn sigv4_request<'a>(parts: &'a http::request::Parts, headers: &'a [(&'a str, &'a str)]) -> sigv4::Request<'a> {
    sigv4::Request {
        method: parts.method.as_str(),
        raw_path: parts.uri.path(),
        raw_query: parts.uri.query().unwrap_or(""),
        headers,
        body: &[],
    }
}

/// Everything the head alone decides: the `Authorization` header, the scope, the time, the
/// signed headers, and that the access key exists (from the cache, else the registry).
async fn authenticate_head(
    state: &Arc<AppState>,
    parts: &http::request::Parts,
    headers: &[(&str, &str)],
) -> Result<Head, Refusal> {
    let request = sigv4_request(parts, headers);
    let (authorization, request_time) =
        sigv4::parse_request_auth(&request).map_err(|error| signature_refusal(&error))?;
    // ACM's calls (awsJson1.1 on `POST /`) are signed for the service `acm`, the rest for `iot`.
    let is_acm = parts.uri.path() == "/"
        && parts
            .headers
            .get("x-amz-target")
            .and_then(|v| v.to_str().ok())
            .is_some_and(|t| t.starts_with(crate::acm::TARGET_PREFIX));
    let service = if is_acm { "acm" } else { "iot" };
    let config = &state.config;
    let policy = VerifyPolicy { region: &config.region, service, max_clock_skew: config.max_clock_skew };
    sigv4::check_head(&request, &authorization, request_time, &policy, state.services.now())
        .map_err(|error| signature_refusal(&error))?;

    let id = &authorization.access_key_id;
    if id.len() > MAX_ACCESS_KEY_ID || !id.bytes().all(|byte| byte.is_ascii_alphanumeric()) {
        return Err(unknown_access_key(id));
    }
    let cache_key =
        (id.clone(), authorization.date.clone(), authorization.region.clone(), authorization.service.clone());
    if let Some(key) = state.keys.get(&cache_key) {
        return Ok(Head { authorization, request_time, service, key, looked_up_at_epoch: None });
    }
    if state.keys.known_unknown(id) {
        return Err(unknown_access_key(id));
    }
    let epoch = state.keys.epoch.load(Ordering::SeqCst);
    let services = state.services.clone();
    let lookup = id.clone();
    let found = match tokio::task::spawn_blocking(move || services.find_access_key(&lookup)).await {
        Ok(Ok(found)) => found,
        Ok(Err(error)) => {
            let detail = error.to_string();
            return Err(Refusal::new(Cause::KeyLookupFailed, ApiError::from(error)).detail(detail));
        }
        Err(_) => return Err(Refusal::new(Cause::KeyLookupFailed, ApiError::internal())),
    };
    let Some(found) = found else {
        state.keys.remember_unknown(id, epoch);
        return Err(unknown_access_key(id));
    };
    let key = CachedKey {
        account: found.account,
        key: SigningKey::derive(
            &found.secret_access_key,
            &authorization.date,
            &authorization.region,
            &authorization.service,
        ),
        fetched: Instant::now(),
    };
    Ok(Head { authorization, request_time, service, key, looked_up_at_epoch: Some(epoch) })
}

fn unknown_access_key(id: &str) -> Refusal {
    Refusal::new(Cause::UnknownAccessKey, ApiError::unrecognized_client()).detail(format!("access key {id}"))
}

/// The refusal for a signature problem, with AWS's error for it.
fn signature_refusal(error: &sigv4::Error) -> Refusal {
    use sigv4::Error as E;
    let mismatch = || {
        ApiError::new(
            "InvalidSignatureException",
            StatusCode::FORBIDDEN,
            "The request signature we calculated does not match the signature you provided. \
             Check your AWS Secret Access Key and signing method. Consult the service documentation for details.",
        )
    };
    let (cause, api_error) = match error {
        E::MissingAuthentication => (
            Cause::MissingAuthentication,
            ApiError::new("MissingAuthenticationTokenException", StatusCode::FORBIDDEN, "Missing Authentication Token"),
        ),
        E::Malformed(_) | E::UnsupportedAlgorithm(_) => (
            Cause::Malformed,
            ApiError::new("IncompleteSignatureException", StatusCode::BAD_REQUEST, error.to_string()),
        ),
        E::SignatureExpired { request_time, now, max_clock_skew } => (
            Cause::Expired,
            ApiError::new(
                "InvalidSignatureException",
                StatusCode::FORBIDDEN,
                sigv4::clock_skew_message(*request_time, *now, *max_clock_skew),
            ),
        ),
        E::WrongScope { .. } => {
            (Cause::WrongScope, ApiError::new("InvalidSignatureException", StatusCode::FORBIDDEN, error.to_string()))
        }
        E::HeaderNotSigned(_) | E::MissingSignedHeader(_) => (Cause::UnsignedHeader, mismatch()),
        E::PayloadHashMismatch => (Cause::PayloadHashMismatch, mismatch()),
        E::SignatureMismatch => (Cause::SignatureMismatch, mismatch()),
    };
    Refusal::new(cause, api_error).detail(error.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use time::OffsetDateTime;

    fn cache_holding(keys: &[(&str, &str)]) -> KeyCache {
        let cache = KeyCache::new(100, Arc::default());
        for (access_key_id, account) in keys {
            let entry = CachedKey {
                account: AccountId::parse(account).unwrap(),
                key: SigningKey::derive("secret", "20260601", "us-east-1", "iot"),
                fetched: Instant::now(),
            };
            let id = ((*access_key_id).to_owned(), "20260601".into(), "us-east-1".into(), "iot".into());
            cache.keys.lock().unwrap().insert(id, entry);
        }
        cache
    }

    fn cached(cache: &KeyCache) -> Vec<String> {
        let mut ids = Vec::new();
        cache.keys.lock().unwrap().retain(|id, _| {
            ids.push(id.0.clone());
            true
        });
        ids.sort();
        ids
    }

    fn change(kind: ChangeKind, account: &str, entity: &str) -> Change {
        Change {
            seq: 1,
            account: AccountId::parse(account).unwrap(),
            kind,
            entity_id: entity.into(),
            created_at: OffsetDateTime::UNIX_EPOCH,
        }
    }

    #[test]
    fn the_cache_is_trusted_only_after_a_recent_read_of_the_feed() {
        let cache = cache_holding(&[]);
        assert!(!cache.trusted(), "never read: nothing cached is trusted");
        cache.mark_feed_read(Some(Instant::now()));
        assert!(cache.trusted());
        cache.mark_feed_read(None);
        assert!(!cache.trusted(), "a failed read: nothing cached is trusted");
        cache.mark_feed_read(Instant::now().checked_sub(FEED_STALE_AFTER));
        assert!(!cache.trusted(), "a follower that stopped reading: nothing cached is trusted");
    }

    #[test]
    fn feed_entries_forget_the_keys_they_name() {
        let cache =
            cache_holding(&[("AKIAA1", "111111111111"), ("AKIAA2", "111111111111"), ("AKIAB1", "222222222222")]);
        let epoch = cache.epoch.load(Ordering::SeqCst);
        cache.apply(&change(ChangeKind::Certificate, "111111111111", "AKIAA1"));
        assert_eq!(cached(&cache), ["AKIAA1", "AKIAA2", "AKIAB1"], "other entries name no key");
        assert_eq!(cache.epoch.load(Ordering::SeqCst), epoch);
        cache.apply(&change(ChangeKind::AccessKey, "111111111111", "AKIAA1"));
        assert_eq!(cached(&cache), ["AKIAA2", "AKIAB1"]);
        cache.apply(&change(ChangeKind::Account, "111111111111", "111111111111"));
        assert_eq!(cached(&cache), ["AKIAB1"]);
        assert!(cache.epoch.load(Ordering::SeqCst) > epoch, "a lookup in flight must not cache what it read");
        cache.forget_all();
        assert!(cached(&cache).is_empty());
    }

    #[test]
    fn a_created_key_is_no_longer_remembered_as_unknown() {
        let cache = cache_holding(&[]);
        cache.mark_feed_read(Some(Instant::now()));
        let epoch = cache.epoch.load(Ordering::SeqCst);
        cache.remember_unknown("AKIASTRANGER0000", epoch);
        cache.remember_unknown("AKIASTRANGER0001", epoch);
        assert!(cache.known_unknown("AKIASTRANGER0000"));
        // Another kind of entry, or a key of another ID: still unknown.
        cache.apply(&change(ChangeKind::Certificate, "111111111111", "AKIASTRANGER0000"));
        cache.apply(&change(ChangeKind::AccessKey, "111111111111", "AKIASTRANGER0001"));
        assert!(cache.known_unknown("AKIASTRANGER0000"));
        assert!(!cache.known_unknown("AKIASTRANGER0001"), "created: must be looked up again");
        // A lookup that started before an invalidation does not remember its answer.
        cache.remember_unknown("AKIASTRANGER0002", epoch);
        assert!(!cache.known_unknown("AKIASTRANGER0002"));
        // Not trusted: nothing remembered is used.
        cache.mark_feed_read(None);
        assert!(!cache.known_unknown("AKIASTRANGER0000"));
    }

    #[test]
    fn client_input_is_clipped_in_logs() {
        assert_eq!(clip("AKIAEXAMPLE"), "AKIAEXAMPLE");
        let exact = "a".repeat(LOG_INPUT_MAX);
        assert_eq!(clip(&exact), exact.as_str());
        let long = "A".repeat(64 * 1024);
        let clipped = clip(&long);
        assert_eq!(clipped, format!("{}…", "A".repeat(LOG_INPUT_MAX)));
        assert!(clipped.len() <= LOG_INPUT_MAX + '…'.len_utf8());
        // Never cut inside a character.
        let multibyte = "é".repeat(LOG_INPUT_MAX);
        let clipped = clip(&multibyte);
        assert!(clipped.ends_with('…') && clipped.len() <= LOG_INPUT_MAX + '…'.len_utf8(), "{clipped}");
        assert!(clipped.trim_end_matches('…').chars().all(|c| c == 'é'));
    }

    #[test]
    fn refusals_are_logged_at_most_once_a_second_per_cause_and_all_counted() {
        let metrics = AuthMetrics::default();
        let start = Instant::now();
        assert_eq!(metrics.refused(Cause::UnknownAccessKey, start), Some(0));
        for _ in 0..999 {
            assert_eq!(metrics.refused(Cause::UnknownAccessKey, start + Duration::from_millis(500)), None);
        }
        // Another cause has its own line.
        assert_eq!(metrics.refused(Cause::SignatureMismatch, start + Duration::from_millis(500)), Some(0));
        assert_eq!(metrics.refused(Cause::UnknownAccessKey, start + Duration::from_secs(1)), Some(999));
        assert_eq!(metrics.refused(Cause::UnknownAccessKey, start + Duration::from_millis(1500)), None);
        let mut text = String::new();
        metrics.render(&mut text);
        assert!(text.contains("certfleet_api_auth_refused_total{cause=\"unknown_access_key\"} 1002"), "{text}");
        assert!(text.contains("certfleet_api_auth_refused_total{cause=\"signature_mismatch\"} 1"), "{text}");
    }

    #[test]
    fn causes_are_listed_once_each_with_their_own_index() {
        for (position, cause) in Cause::ALL.iter().enumerate() {
            assert_eq!(cause.index(), position, "{cause:?}");
        }
    }
}
