//! Revoked access keys, from the attacker's side: two API nodes (two routers, each with its own
//! signing-key cache and change-feed follower) over one registry. A key, or its account, deleted
//! through one is refused by the other within a second, writes included, and nothing is written.

use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Body;
use certfleet_registry::{self as registry, AccountId, ThingName};
use certfleet_services::{NewAccessKey, Services};
use http::{Request, StatusCode};
use http_body_util::BodyExt;
use tower::Service;

/// How long a revocation may take to reach another node.
const WITHIN: Duration = Duration::from_secs(1);

fn signed(services: &Services, key: &NewAccessKey, method: &str, path: &str, body: &[u8]) -> Request<Body> {
    let headers = [("host", "127.0.0.1")];
    let request = certfleet_sigv4::Request { method, raw_path: path, raw_query: "", headers: &headers, body };
    let signature =
        certfleet_sigv4::sign(&request, &key.access_key_id, &key.secret_access_key, "us-east-1", "iot", services.now());
    let mut builder = Request::builder().method(method).uri(path).header("host", "127.0.0.1");
    for (name, value) in signature {
        builder = builder.header(name, value);
    }
    builder.body(Body::from(body.to_vec())).unwrap()
}

/// The status and `x-amzn-ErrorType` of one request on `node`.
async fn send(node: &Router, request: Request<Body>) -> (StatusCode, String) {
    let response = node.clone().call(request).await.unwrap();
    let status = response.status();
    let error_type =
        response.headers().get("x-amzn-ErrorType").map(|value| value.to_str().unwrap().to_owned()).unwrap_or_default();
    let _ = response.into_body().collect().await;
    (status, error_type)
}

const REFUSED: (StatusCode, &str) = (StatusCode::FORBIDDEN, "UnrecognizedClientException:");

/// Sends `request()` to `node` until it is refused; fails when that takes longer than [`WITHIN`].
async fn refused_within(node: &Router, mut request: impl FnMut() -> Request<Body>) -> Duration {
    let started = Instant::now();
    loop {
        let (status, error_type) = send(node, request()).await;
        if status != StatusCode::OK {
            assert_eq!((status, error_type.as_str()), REFUSED);
            return started.elapsed();
        }
        assert!(started.elapsed() < WITHIN, "still accepted {:?} after the revocation", started.elapsed());
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

fn thing_exists(services: &Services, account: &AccountId, name: &str) -> bool {
    let name = ThingName::parse(name).unwrap();
    registry::read(services.store(), |tx| tx.get_thing(account, &name)).unwrap().is_some()
}

/// Two nodes that have served `key` once each, so that both hold it in their caches.
async fn two_warm_nodes(world: &certfleet_testkit::World, key: &NewAccessKey) -> (Router, Router) {
    let node_a =
        certfleet_api::router(world.services.clone(), certfleet_api::Config::default(), Default::default(), None);
    let node_b =
        certfleet_api::router(world.services.clone(), certfleet_api::Config::default(), Default::default(), None);
    // Let both followers read the feed once, so that the key is served from the caches: the
    // case under test (a node that has not read the feed looks every key up).
    tokio::time::sleep(Duration::from_millis(300)).await;
    for node in [&node_a, &node_b] {
        for _ in 0..2 {
            let (status, _) = send(node, signed(&world.services, key, "GET", "/things", b"")).await;
            assert_eq!(status, StatusCode::OK);
        }
    }
    (node_a, node_b)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deleted_key_is_refused_by_every_node_within_a_second() {
    let world = certfleet_testkit::world();
    let services = &world.services;
    let account = services.create_account().unwrap().id;
    let key = services.create_access_key(&account).unwrap();
    let other = services.create_access_key(&account).unwrap();
    let (node_a, node_b) = two_warm_nodes(&world, &key).await;

    services.delete_access_key(&account, &key.access_key_id).unwrap();
    let took = refused_within(&node_b, || signed(services, &key, "GET", "/things", b"")).await;
    eprintln!("node B refused the deleted key after {took:?}");
    assert_eq!(send(&node_a, signed(services, &key, "GET", "/things", b"")).await, (REFUSED.0, REFUSED.1.into()));
    let write = signed(services, &key, "POST", "/things/after-revocation", b"{}");
    assert_eq!(send(&node_b, write).await, (REFUSED.0, REFUSED.1.into()));
    assert!(!thing_exists(services, &account, "after-revocation"));

    // The account's other key is untouched.
    for node in [&node_a, &node_b] {
        let (status, _) = send(node, signed(services, &other, "GET", "/things", b"")).await;
        assert_eq!(status, StatusCode::OK);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deleted_accounts_key_is_refused_at_once_and_writes_nothing() {
    let world = certfleet_testkit::world();
    let services = &world.services;
    let account = services.create_account().unwrap().id;
    let key = services.create_access_key(&account).unwrap();
    let bystander = services.create_account().unwrap().id;
    let bystander_key = services.create_access_key(&bystander).unwrap();
    let (node_a, node_b) = two_warm_nodes(&world, &key).await;

    services.delete_account(&account).unwrap();
    // A write is refused at once, even by a node that may still hold the key: the write's
    // transaction finds the account gone.
    let write = signed(services, &key, "POST", "/things/orphan", b"{}");
    assert_eq!(send(&node_b, write).await, (REFUSED.0, REFUSED.1.into()));
    assert!(!thing_exists(services, &account, "orphan"));
    refused_within(&node_b, || signed(services, &key, "GET", "/things", b"")).await;
    refused_within(&node_a, || signed(services, &key, "GET", "/things", b"")).await;
    assert!(!thing_exists(services, &account, "orphan"));

    // Another tenant is untouched.
    let write = signed(services, &bystander_key, "POST", "/things/still-here", b"{}");
    assert_eq!(send(&node_b, write).await.0, StatusCode::OK);
    assert!(thing_exists(services, &bystander, "still-here"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_of_another_account_cannot_be_deleted_by_naming_it() {
    let world = certfleet_testkit::world();
    let services = &world.services;
    let alice = services.create_account().unwrap().id;
    let alice_key = services.create_access_key(&alice).unwrap();
    let mallory = services.create_account().unwrap().id;

    let outcome = services.delete_access_key(&mallory, &alice_key.access_key_id);
    assert_eq!(certfleet_testkit::outcome(outcome), "NotFound");
    let listed = services.list_access_keys(&alice).unwrap();
    assert_eq!(
        listed.iter().map(|key| key.access_key_id.as_str()).collect::<Vec<_>>(),
        [alice_key.access_key_id.as_str()]
    );
    assert!(services.list_access_keys(&mallory).unwrap().is_empty());
    let (node, _) = two_warm_nodes(&world, &alice_key).await;
    let (status, _) = send(&node, signed(services, &alice_key, "GET", "/things", b"")).await;
    assert_eq!(status, StatusCode::OK);
}

#[test]
fn creating_a_key_records_it_in_the_change_feed() {
    // What makes every node forget that it found the new key's ID unknown.
    let world = certfleet_testkit::world();
    let services = &world.services;
    let account = services.create_account().unwrap().id;
    let start = services.last_change_seq().unwrap();
    let key = services.create_access_key(&account).unwrap();
    let changes = services.changes_after(start, 10).unwrap();
    assert!(
        changes.iter().any(|change| change.kind == registry::ChangeKind::AccessKey
            && change.entity_id == key.access_key_id
            && change.account == account),
        "{changes:?}"
    );
}
