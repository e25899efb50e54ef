//! SigV4 authentication of every request, before anything else runs.
//!
//! The body is read first (bounded by the configured limit), because the signature covers it.
//! Signing keys are derived once per (access key, day) and cached for a short time, so a deleted
//! access key stops working within [`KEY_CACHE_TTL`].

use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::extract::{Request, State};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use certfleet_registry::AccountId;
use certfleet_services::Caller;
use certfleet_sigv4::{self as sigv4, SigningKey, VerifyPolicy};
use http::StatusCode;
use http_body_util::BodyExt;

use crate::AppState;
use crate::error::ApiError;

/// How long a derived signing key is trusted before the access key is looked up again.
pub const KEY_CACHE_TTL: Duration = Duration::from_secs(5);

/// Derived signing keys by (access key ID, scope date).
#[derive(Default)]
pub struct KeyCache {
    /// By access key, date, region and service: the derived key depends on all four.
    keys: RwLock<HashMap<(String, String, String, String), CachedKey>>,
}

#[derive(Clone)]
struct CachedKey {
    account: AccountId,
    key: SigningKey,
    fetched: Instant,
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
    let bytes = match read_body(body, limit, drain_limit).await {
        Ok(Some(bytes)) => bytes,
        Ok(None) => return too_large(limit, &parts),
        Err(error) => {
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
    if let Ok(keys) = state.keys.keys.read()
        && let Some(cached) = keys.get(&cache_key)
        && cached.fetched.elapsed() < KEY_CACHE_TTL
    {
        return Ok(cached.clone());
    }
    let services = state.services.clone();
    let access_key_id = authorization.access_key_id.clone();
    let found = tokio::task::spawn_blocking(move || services.find_access_key(&access_key_id))
        .await
        .map_err(|_| ApiError::internal())?
        .map_err(ApiError::from)?;
    let Some(found) = found else {
        return Err(ApiError::new(
            "UnrecognizedClientException",
            StatusCode::FORBIDDEN,
            "The security token included in the request is invalid.",
        )
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
    if let Ok(mut keys) = state.keys.keys.write() {
        keys.retain(|_, entry| entry.fetched.elapsed() < KEY_CACHE_TTL);
        keys.insert(cache_key, cached.clone());
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
