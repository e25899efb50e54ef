//! Authenticate before you buffer, from the attacker's side: a request that fails anything its
//! head decides (unknown access key, wrong scope, stale time) is answered without a byte of its
//! body being read; a wrong signature never enters the signing-key cache; a body is hashed as it
//! streams in and a body that is not the signed one changes nothing.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::Router;
use axum::body::{Body, Bytes, HttpBody};
use certfleet_api::ListenerMetrics;
use certfleet_registry::{self as registry, AccountId, ThingName};
use certfleet_services::{NewAccessKey, Services};
use http::{Request, Response, StatusCode};
use http_body_util::BodyExt;
use hyper::body::{Frame, SizeHint};
use time::OffsetDateTime;
use tower::Service;

/// A body that is announced but never sent, and counts how often the server asked for it.
struct Withheld {
    length: u64,
    polled: Arc<AtomicUsize>,
}

impl HttpBody for Withheld {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        self.polled.fetch_add(1, Ordering::SeqCst);
        Poll::Pending
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::with_exact(self.length)
    }
}

/// A body sent in pieces, without a length (as a chunked upload).
struct Pieces(VecDeque<Bytes>);

impl HttpBody for Pieces {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(mut self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        Poll::Ready(self.0.pop_front().map(|piece| Ok(Frame::data(piece))))
    }
}

/// The signature headers of `method path` with `body`, signed with `secret` at `at` for `region`.
fn signature(
    access_key_id: &str,
    secret: &str,
    region: &str,
    at: OffsetDateTime,
    method: &str,
    path: &str,
    body: &[u8],
) -> Vec<(String, String)> {
    let headers = [("host", "127.0.0.1")];
    let request = certfleet_sigv4::Request { method, raw_path: path, raw_query: "", headers: &headers, body };
    certfleet_sigv4::sign(&request, access_key_id, secret, region, "iot", at)
}

/// A request builder with the signature headers.
fn request_with(method: &str, path: &str, signature: Vec<(String, String)>) -> http::request::Builder {
    let mut builder = Request::builder().method(method).uri(path).header("host", "127.0.0.1");
    for (name, value) in signature {
        builder = builder.header(name, value);
    }
    builder
}

fn signed(services: &Services, key: &NewAccessKey, method: &str, path: &str, body: &[u8]) -> Request<Body> {
    let signature =
        signature(&key.access_key_id, &key.secret_access_key, "us-east-1", services.now(), method, path, body);
    request_with(method, path, signature).body(Body::from(body.to_vec())).unwrap()
}

/// A request whose 400 KiB body is announced and never sent.
fn withheld(method: &str, path: &str, signature: Vec<(String, String)>, polled: &Arc<AtomicUsize>) -> Request<Body> {
    let length = 400 * 1024;
    request_with(method, path, signature)
        .header("content-length", length.to_string())
        .header("content-type", "application/json")
        .body(Body::new(Withheld { length, polled: polled.clone() }))
        .unwrap()
}

/// The response, which must come without the body being sent (else the server would wait for
/// it until the body deadline, 30 s, and this fails first).
async fn answer(node: &Router, request: Request<Body>) -> Response<Body> {
    tokio::time::timeout(Duration::from_secs(10), node.clone().call(request))
        .await
        .expect("the server waited for a body it should not read")
        .unwrap()
}

fn error_type(response: &Response<Body>) -> &str {
    response.headers().get("x-amzn-ErrorType").map(|value| value.to_str().unwrap()).unwrap_or_default()
}

fn thing_exists(services: &Services, account: &AccountId, name: &str) -> bool {
    let name = ThingName::parse(name).unwrap();
    registry::read(services.store(), |tx| tx.get_thing(account, &name)).unwrap().is_some()
}

fn metric(metrics: &ListenerMetrics, name: &str) -> u64 {
    let mut text = String::new();
    metrics.render(&mut text);
    let line = text.lines().find(|line| line.starts_with(&format!("{name} "))).unwrap_or_else(|| panic!("{name}"));
    line.rsplit(' ').next().unwrap().parse().unwrap()
}

struct Node {
    world: certfleet_testkit::World,
    router: Router,
    metrics: Arc<ListenerMetrics>,
    account: AccountId,
    key: NewAccessKey,
}

/// A node whose change-feed follower has read the feed once (so that verified keys are cached).
async fn node(config: certfleet_api::Config) -> Node {
    let world = certfleet_testkit::world();
    let account = world.services.create_account().unwrap().id;
    let key = world.services.create_access_key(&account).unwrap();
    let metrics = Arc::new(ListenerMetrics::default());
    let router = certfleet_api::router(world.services.clone(), config, metrics.clone(), None);
    tokio::time::sleep(Duration::from_millis(300)).await;
    Node { world, router, metrics, account, key }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_failing_its_head_is_answered_without_its_body_being_read() {
    let node = node(certfleet_api::Config::default()).await;
    let services = &node.world.services;
    let now = services.now();
    let secret = &node.key.secret_access_key;
    let id = &node.key.access_key_id;
    let path = "/things/never-created";
    let cases = [
        ("unknown access key", signature("AKIAUNKNOWNUNKNOWN00", secret, "us-east-1", now, "POST", path, b"{}")),
        ("an implausible access key id", signature(&"A".repeat(4096), secret, "us-east-1", now, "POST", path, b"{}")),
        ("another region", signature(id, secret, "eu-west-1", now, "POST", path, b"{}")),
        ("an hour old", signature(id, secret, "us-east-1", now - time::Duration::hours(1), "POST", path, b"{}")),
    ];
    for (case, signature) in cases {
        let polled = Arc::new(AtomicUsize::new(0));
        let response = answer(&node.router, withheld("POST", path, signature, &polled)).await;
        assert_eq!(polled.load(Ordering::SeqCst), 0, "{case}: the body was asked for");
        let status = response.status();
        assert!(status == StatusCode::FORBIDDEN, "{case}: {status}");
        let expected =
            if case.contains("access key") { "UnrecognizedClientException:" } else { "InvalidSignatureException:" };
        assert_eq!(error_type(&response), expected, "{case}");
        assert_eq!(response.headers().get("connection").map(|v| v.as_bytes()), Some(&b"close"[..]), "{case}");
        assert!(!thing_exists(services, &node.account, "never-created"), "{case}");
    }
    // No signature at all, and a declared length far beyond any limit: the same.
    let polled = Arc::new(AtomicUsize::new(0));
    let response = answer(&node.router, withheld("POST", path, Vec::new(), &polled)).await;
    assert_eq!(
        (response.status(), error_type(&response)),
        (StatusCode::FORBIDDEN, "MissingAuthenticationTokenException:")
    );
    assert_eq!(polled.load(Ordering::SeqCst), 0);
    assert_eq!(metric(&node.metrics, "certfleet_api_signing_keys_cached"), 0, "no refused key is cached");
    assert!(!thing_exists(services, &node.account, "never-created"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_signature_never_enters_the_signing_key_cache() {
    let node = node(certfleet_api::Config::default()).await;
    let services = &node.world.services;
    let cached = || metric(&node.metrics, "certfleet_api_signing_keys_cached");
    let forged = NewAccessKey {
        access_key_id: node.key.access_key_id.clone(),
        secret_access_key: "not-the-secret".into(),
        account: node.account.clone(),
    };
    for attempt in 0..50 {
        let response =
            answer(&node.router, signed(services, &forged, "POST", &format!("/things/forged-{attempt}"), b"{}")).await;
        assert_eq!((response.status(), error_type(&response)), (StatusCode::FORBIDDEN, "InvalidSignatureException:"));
    }
    assert_eq!(cached(), 0, "a signature that failed left its key in the cache");
    assert!(!thing_exists(services, &node.account, "forged-0"));
    assert_eq!(metric(&node.metrics, "certfleet_api_auth_refused_total{cause=\"signature_mismatch\"}"), 50);

    // The right secret: verified, so cached (the check above can fail).
    let deadline = std::time::Instant::now() + Duration::from_secs(3);
    while cached() == 0 {
        assert!(std::time::Instant::now() < deadline, "a verified key was never cached");
        let response = answer(&node.router, signed(services, &node.key, "GET", "/things", b"")).await;
        assert_eq!(response.status(), StatusCode::OK);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(cached(), 1);
    // Forgeries with a cached key are refused all the same, and add nothing.
    let response = answer(&node.router, signed(services, &forged, "POST", "/things/forged-late", b"{}")).await;
    assert_eq!(response.status(), StatusCode::FORBIDDEN);
    assert_eq!(cached(), 1);
    assert!(!thing_exists(services, &node.account, "forged-late"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_streamed_in_pieces_is_verified_and_a_swapped_body_changes_nothing() {
    let node = node(certfleet_api::Config { max_body_bytes: 1024, ..Default::default() }).await;
    let services = &node.world.services;
    let body = br#"{"attributePayload":{"attributes":{"color":"blue"}}}"#;
    let pieces = |body: &[u8]| Body::new(Pieces(body.chunks(7).map(Bytes::copy_from_slice).collect()));
    let sign = |path: &str, body: &[u8]| {
        signature(&node.key.access_key_id, &node.key.secret_access_key, "us-east-1", services.now(), "POST", path, body)
    };

    let request = request_with("POST", "/things/streamed", sign("/things/streamed", body)).body(pieces(body)).unwrap();
    let response = answer(&node.router, request).await;
    assert_eq!(response.status(), StatusCode::OK, "{:?}", response.into_body().collect().await.unwrap().to_bytes());
    assert!(thing_exists(services, &node.account, "streamed"));

    // The signature of one body, sent with another.
    let swapped = br#"{"attributePayload":{"attributes":{"color":"red!"}}}"#;
    let request = request_with("POST", "/things/swapped", sign("/things/swapped", body)).body(pieces(swapped)).unwrap();
    let response = answer(&node.router, request).await;
    assert_eq!((response.status(), error_type(&response)), (StatusCode::FORBIDDEN, "InvalidSignatureException:"));
    assert!(!thing_exists(services, &node.account, "swapped"));

    // Signed, but longer than the limit, without a declared length: 413, nothing kept.
    let large = vec![b' '; 4096];
    let request = request_with("POST", "/things/large", sign("/things/large", &large)).body(pieces(&large)).unwrap();
    let response = answer(&node.router, request).await;
    assert_eq!(
        (response.status(), error_type(&response)),
        (StatusCode::PAYLOAD_TOO_LARGE, "RequestEntityTooLargeException:")
    );
    assert!(!thing_exists(services, &node.account, "large"));
}
