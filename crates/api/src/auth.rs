//! SigV4 authentication of every request, before anything else runs.
//!
//! The body is read first (bounded by the configured limit), because the signature covers it.
//! Signing keys are derived once per (access key, day, region, service) and cached. The cache
//! follows the registry's change feed ([`follow_feed`]): deleting an access key or an account
//! records an entry, and every API node sharing the registry forgets the keys it names within a
//! poll ([`FEED_POLL_INTERVAL`]). A cache whose follower has not read the feed successfully for
//! [`FEED_STALE_AFTER`] is not trusted (fail closed): every request then looks its key up.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError, RwLock, Weak};
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::extract::{Request, State};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use certfleet_registry::{AccountId, Change, ChangeKind};
use certfleet_services::feed::Cursor;
use certfleet_services::{Caller, Services};
use certfleet_sigv4::{self as sigv4, SigningKey, VerifyPolicy};
use http::StatusCode;
use http_body_util::BodyExt;

use crate::AppState;
use crate::error::ApiError;

/// How long a derived signing key is kept at most, even while the feed says nothing about it.
pub const KEY_CACHE_TTL: Duration = Duration::from_secs(300);

/// How often the cache reads the change feed.
pub const FEED_POLL_INTERVAL: Duration = Duration::from_millis(200);

/// How old the follower's last successful read of the feed may be for cached keys to be used.
pub const FEED_STALE_AFTER: Duration = Duration::from_millis(800);

/// The most derived keys kept; past it the cache starts over (a valid key signing for many
/// regions or dates must not grow it without bound).
const MAX_CACHED_KEYS: usize = 4096;

/// Entries read from the feed per poll.
const FEED_BATCH: u32 = 1000;

/// Derived signing keys, trusted only while the change feed is followed.
pub struct KeyCache {
    /// By access key, date, region and service: the derived key depends on all four.
    keys: RwLock<HashMap<(String, String, String, String), CachedKey>>,
    /// Bumped by every invalidation: a lookup that read the registry before one does not cache
    /// what it read (the key may have been deleted since).
    epoch: AtomicU64,
    /// When the last successful read of the feed started; `None` before the first one and after
    /// a failed one.
    feed_read_at: Mutex<Option<Instant>>,
}

#[derive(Clone)]
struct CachedKey {
    account: AccountId,
    key: SigningKey,
    fetched: Instant,
}

impl KeyCache {
    /// An empty cache, followed by a task on the current tokio runtime for as long as the cache
    /// lives. Without a runtime (or until the first read of the feed) nothing cached is trusted.
    pub fn following(services: Arc<Services>) -> Arc<KeyCache> {
        let cache = Arc::new(KeyCache {
            keys: RwLock::new(HashMap::new()),
            epoch: AtomicU64::new(0),
            feed_read_at: Mutex::new(None),
        });
        match tokio::runtime::Handle::try_current() {
            Ok(runtime) => {
                runtime.spawn(follow_feed(Arc::downgrade(&cache), services, FEED_POLL_INTERVAL));
            }
            Err(_) => tracing::warn!("no runtime to follow the change feed: every request looks its access key up"),
        }
        cache
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

    /// Forgets the keys `change` names: an access key deleted, or every key of an account.
    fn apply(&self, change: &Change) {
        let forget = |cached: &(String, String, String, String), entry: &CachedKey| match change.kind {
            ChangeKind::AccessKey => cached.0 == change.entity_id,
            ChangeKind::Account => entry.account == change.account,
            ChangeKind::Certificate
            | ChangeKind::CaCertificate
            | ChangeKind::Policy
            | ChangeKind::Thing
            | ChangeKind::DomainConfiguration
            | ChangeKind::TopicRule => false,
        };
        if matches!(change.kind, ChangeKind::AccessKey | ChangeKind::Account) {
            self.epoch.fetch_add(1, Ordering::SeqCst);
            let mut keys = self.keys.write().unwrap_or_else(PoisonError::into_inner);
            keys.retain(|cached, entry| !forget(cached, entry));
        }
    }

    /// Forgets everything (the feed could not be read: whatever changed must not be served).
    fn forget_all(&self) {
        self.epoch.fetch_add(1, Ordering::SeqCst);
        self.keys.write().unwrap_or_else(PoisonError::into_inner).clear();
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

/// The middleware: buffers the body, verifies the signature, and hands the request on with its
/// [`Caller`] in the extensions. Every refusal is logged with its reason and changes nothing.
pub async fn authenticate(State(state): State<Arc<AppState>>, request: Request, next: Next) -> Response {
    let (mut parts, body) = request.into_parts();
    let limit = state.config.max_body_bytes;
    let drain_limit = limit.saturating_mul(DRAIN_FACTOR);
    let declared = parts
        .headers
        .get(http::header::CONTENT_LENGTH)
        .map(|value| value.to_str().ok().and_then(|text| text.parse::<usize>().ok()));
    if let Some(declared) = declared {
        match declared {
            None => return ApiError::invalid_request("Content-Length is not a number").into_response(),
            // Too large even to drain: answer at once (the client may not read it).
            Some(length) if length > drain_limit => return too_large(limit, &parts),
            Some(_) => {}
        }
    }
    let body_timeout = state.config.limits.body_timeout;
    let read = tokio::time::timeout(body_timeout, read_body(body, limit, drain_limit)).await;
    let bytes = match read {
        Ok(Ok(Some(bytes))) => bytes,
        Ok(Ok(None)) => return too_large(limit, &parts),
        Err(_) => {
            state.listener_metrics.body_timed_out();
            tracing::info!(method = %parts.method, path = parts.uri.path(), timeout = ?body_timeout, "request body not received in time");
            let mut response = ApiError::new(
                "RequestTimeoutException",
                StatusCode::REQUEST_TIMEOUT,
                "the request body was not received in time",
            )
            .into_response();
            response.headers_mut().insert(http::header::CONNECTION, http::HeaderValue::from_static("close"));
            return response;
        }
        Ok(Err(error)) => {
            tracing::info!(%error, "request body could not be read");
            return ApiError::invalid_request("the request body could not be read").into_response();
        }
    };

    let caller = match verify(&state, &parts, &bytes).await {
        Ok(caller) => caller,
        Err(error) => {
            tracing::warn!(
                method = %parts.method,
                path = %crate::loggable_path(parts.uri.path()),
                code = error.code,
                message = %error.message,
                reason = error.log_reason.as_deref().unwrap_or(""),
                "request refused by authentication"
            );
            return error.into_response();
        }
    };
    parts.extensions.insert(caller.clone());
    let mut response = next.run(Request::from_parts(parts, Body::from(bytes))).await;
    response.extensions_mut().insert(caller);
    response
}

/// How far past the limit a body is still read (and thrown away) so that the client, which
/// writes its whole body before reading, gets the 413 rather than a broken connection.
const DRAIN_FACTOR: usize = 32;

/// The body, or `None` when it exceeds `limit` (then read on, unkept, up to `drain_limit`).
async fn read_body(mut body: Body, limit: usize, drain_limit: usize) -> Result<Option<bytes::Bytes>, axum::Error> {
    let mut kept = bytes::BytesMut::new();
    let mut seen = 0usize;
    while let Some(frame) = body.frame().await {
        let Ok(data) = frame?.into_data() else { continue };
        seen = seen.saturating_add(data.len());
        if seen <= limit {
            kept.extend_from_slice(&data);
        } else if seen > drain_limit {
            break;
        }
    }
    Ok((seen <= limit).then(|| kept.freeze()))
}

fn too_large(limit: usize, parts: &http::request::Parts) -> Response {
    tracing::warn!(method = %parts.method, path = %crate::loggable_path(parts.uri.path()), limit, "request body too large");
    ApiError::new(
        "RequestEntityTooLargeException",
        StatusCode::PAYLOAD_TOO_LARGE,
        format!("the request body exceeds {limit} bytes"),
    )
    .into_response()
}

async fn verify(state: &Arc<AppState>, parts: &http::request::Parts, body: &[u8]) -> Result<Caller, ApiError> {
    let mut headers = Vec::with_capacity(parts.headers.len());
    for (name, value) in &parts.headers {
        let value = value
            .to_str()
            .map_err(|_| signature_error(&sigv4::Error::Malformed(format!("header {name} is not text"))))?;
        headers.push((name.as_str(), value));
    }
    let request = sigv4::Request {
        method: parts.method.as_str(),
        raw_path: parts.uri.path(),
        raw_query: parts.uri.query().unwrap_or(""),
        headers: &headers,
        body,
    };
    let (authorization, request_time) = sigv4::parse_request_auth(&request).map_err(|error| signature_error(&error))?;
    let cached = cached_key(state, &authorization).await?;
    let config = &state.config;
    // ACM's calls (awsJson1.1 on `POST /`) are signed for the service `acm`, the rest for `iot`.
    let is_acm = parts.uri.path() == "/"
        && parts
            .headers
            .get("x-amz-target")
            .and_then(|v| v.to_str().ok())
            .is_some_and(|t| t.starts_with(crate::acm::TARGET_PREFIX));
    let service = if is_acm { "acm" } else { "iot" };
    let policy = VerifyPolicy { region: &config.region, service, max_clock_skew: config.max_clock_skew };
    let now = state.services.now();
    sigv4::verify(&request, &authorization, request_time, &cached.key, &policy, now)
        .map_err(|error| signature_error(&error))?;
    Ok(Caller { account: cached.account })
}

async fn cached_key(state: &Arc<AppState>, authorization: &sigv4::Authorization) -> Result<CachedKey, ApiError> {
    let cache_key = (
        authorization.access_key_id.clone(),
        authorization.date.clone(),
        authorization.region.clone(),
        authorization.service.clone(),
    );
    let cache = &state.keys;
    let trusted = cache.trusted();
    if trusted
        && let Ok(keys) = cache.keys.read()
        && let Some(cached) = keys.get(&cache_key)
        && cached.fetched.elapsed() < KEY_CACHE_TTL
    {
        return Ok(cached.clone());
    }
    let epoch = cache.epoch.load(Ordering::SeqCst);
    let services = state.services.clone();
    let access_key_id = authorization.access_key_id.clone();
    let found = tokio::task::spawn_blocking(move || services.find_access_key(&access_key_id))
        .await
        .map_err(|_| ApiError::internal())?
        .map_err(ApiError::from)?;
    let Some(found) = found else {
        return Err(ApiError::unrecognized_client()
            .with_log_reason(format!("unknown access key {}", authorization.access_key_id)));
    };
    let cached = CachedKey {
        account: found.account,
        key: SigningKey::derive(
            &found.secret_access_key,
            &authorization.date,
            &authorization.region,
            &authorization.service,
        ),
        fetched: Instant::now(),
    };
    if trusted {
        let mut keys = cache.keys.write().unwrap_or_else(PoisonError::into_inner);
        // Checked under the write lock: an invalidation since the lookup forbids caching it.
        if cache.epoch.load(Ordering::SeqCst) == epoch {
            keys.retain(|_, entry| entry.fetched.elapsed() < KEY_CACHE_TTL);
            if keys.len() >= MAX_CACHED_KEYS {
                keys.clear();
            }
            keys.insert(cache_key, cached.clone());
        }
    }
    Ok(cached)
}

/// The AWS error for a signature problem.
fn signature_error(error: &sigv4::Error) -> ApiError {
    use sigv4::Error as E;
    match error {
        E::MissingAuthentication => {
            ApiError::new("MissingAuthenticationTokenException", StatusCode::FORBIDDEN, "Missing Authentication Token")
        }
        E::Malformed(_) | E::UnsupportedAlgorithm(_) => {
            ApiError::new("IncompleteSignatureException", StatusCode::BAD_REQUEST, error.to_string())
        }
        E::SignatureExpired { request_time, now, max_clock_skew } => ApiError::new(
            "InvalidSignatureException",
            StatusCode::FORBIDDEN,
            sigv4::clock_skew_message(*request_time, *now, *max_clock_skew),
        ),
        E::WrongScope { .. } => ApiError::new("InvalidSignatureException", StatusCode::FORBIDDEN, error.to_string()),
        _ => ApiError::new(
            "InvalidSignatureException",
            StatusCode::FORBIDDEN,
            "The request signature we calculated does not match the signature you provided. \
             Check your AWS Secret Access Key and signing method. Consult the service documentation for details.",
        )
        .with_log_reason(error.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use time::OffsetDateTime;

    fn cache_holding(keys: &[(&str, &str)]) -> KeyCache {
        let cache =
            KeyCache { keys: RwLock::new(HashMap::new()), epoch: AtomicU64::new(0), feed_read_at: Mutex::new(None) };
        for (access_key_id, account) in keys {
            let entry = CachedKey {
                account: AccountId::parse(account).unwrap(),
                key: SigningKey::derive("secret", "20260601", "us-east-1", "iot"),
                fetched: Instant::now(),
            };
            let id = ((*access_key_id).to_owned(), "20260601".into(), "us-east-1".into(), "iot".into());
            cache.keys.write().unwrap().insert(id, entry);
        }
        cache
    }

    fn cached(cache: &KeyCache) -> Vec<String> {
        let mut ids: Vec<String> = cache.keys.read().unwrap().keys().map(|id| id.0.clone()).collect();
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
}
