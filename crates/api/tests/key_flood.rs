//! A flood of made-up access key IDs (the finding: an access key ID alone filled the signing-key
//! cache, +648 MiB) against a cache of capacity 100: nothing of it is cached, memory hardly
//! moves, and many real keys stay within the capacity, the least recently used dropped. Alone in
//! its own test binary, so that the memory it measures is its own.

use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use certfleet_api::ListenerMetrics;
use certfleet_services::{NewAccessKey, Services};
use http::{Request, StatusCode};
use http_body_util::BodyExt;
use tower::Service;

fn signed(services: &Services, access_key_id: &str, secret: &str, path: &str) -> Request<Body> {
    let headers = [("host", "127.0.0.1")];
    let request =
        certfleet_sigv4::Request { method: "GET", raw_path: path, raw_query: "", headers: &headers, body: b"" };
    let signature = certfleet_sigv4::sign(&request, access_key_id, secret, "us-east-1", "iot", services.now());
    let mut builder = Request::builder().method("GET").uri(path).header("host", "127.0.0.1");
    for (name, value) in signature {
        builder = builder.header(name, value);
    }
    builder.body(Body::empty()).unwrap()
}

fn metric(metrics: &ListenerMetrics, name: &str) -> u64 {
    let mut text = String::new();
    metrics.render(&mut text);
    let line = text.lines().find(|line| line.starts_with(&format!("{name} "))).unwrap_or_else(|| panic!("{name}"));
    line.rsplit(' ').next().unwrap().parse().unwrap()
}

/// Resident memory of this process, in bytes.
fn resident_bytes() -> u64 {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap();
    let pages: u64 = statm.split_whitespace().nth(1).unwrap().parse().unwrap();
    pages * 4096
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_made_up_key_ids_fill_nothing_and_real_keys_stay_within_the_capacity() {
    let world = certfleet_testkit::world();
    let services = &world.services;
    let account = services.create_account().unwrap().id;
    let metrics = Arc::new(ListenerMetrics::default());
    let config = certfleet_api::Config {
        limits: certfleet_api::Limits { signing_key_cache: 100, ..Default::default() },
        ..Default::default()
    };
    let node = certfleet_api::router(services.clone(), config, metrics.clone(), None);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let cached = || metric(&metrics, "certfleet_api_signing_keys_cached");

    // Warm up (the allocator, the registry's connections), then measure the flood.
    for index in 0..200 {
        let request = signed(services, &format!("AKIAWARMUP{index:010}"), "secret", "/things");
        let _ = node.clone().call(request).await.unwrap().into_body().collect().await;
    }
    let before = resident_bytes();
    for index in 0..10_000 {
        let request = signed(services, &format!("AKIAFLOOD{index:011}"), "secret", "/things");
        let response = node.clone().call(request).await.unwrap();
        assert_eq!(response.status(), StatusCode::FORBIDDEN);
        let _ = response.into_body().collect().await;
        assert_eq!(cached(), 0, "made-up key {index} was cached");
    }
    let grown = resident_bytes().saturating_sub(before);
    eprintln!("resident memory grew by {} KiB over 10,000 made-up key IDs", grown / 1024);
    assert!(grown < 16 * 1024 * 1024, "resident memory grew by {grown} bytes");
    assert_eq!(metric(&metrics, "certfleet_api_auth_refused_total{cause=\"unknown_access_key\"}"), 10_200);
    // Remembered as unknown in a bounded map of their own.
    assert!(metric(&metrics, "certfleet_api_unknown_access_keys_cached") <= 4096);
    assert!(metric(&metrics, "certfleet_api_unknown_access_keys_evicted_total") > 0);

    // 250 real keys, each verified: the cache holds at most 100 of them, the rest evicted.
    let keys: Vec<NewAccessKey> = (0..250).map(|_| services.create_access_key(&account).unwrap()).collect();
    for key in &keys {
        let response = node.clone().call(signed(services, &key.access_key_id, &key.secret_access_key, "/things")).await;
        assert_eq!(response.unwrap().status(), StatusCode::OK);
        assert!(cached() <= 100, "{} keys cached", cached());
    }
    assert!(cached() >= 50, "a full cache drops its least recently used half, not everything: {}", cached());
    assert!(metric(&metrics, "certfleet_api_signing_keys_evicted_total") > 0);
}
