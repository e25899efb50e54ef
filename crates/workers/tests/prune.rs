//! The prune worker over a real registry: it prunes what is past its retention, counts it for
//! `/metrics`, and leaves the recent history alone.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use certfleet_pki::CertificateId;
use certfleet_registry::{ConnectionRecord, PruneTarget};
use certfleet_services::ConnectionEvent;
use certfleet_workers::{PruneConfig, PruneMetrics, run_prune};
use tokio::sync::watch;

#[tokio::test]
async fn the_worker_prunes_old_history_and_counts_it() {
    let world = certfleet_testkit::world();
    let caller = world.caller();
    let record = |session: &str| ConnectionRecord {
        session_id: session.into(),
        account: caller.account.clone(),
        certificate_id: CertificateId::of_der(b"device"),
        client_id: "sensor".into(),
        connected_at: world.services.now(),
        disconnected_at: Some(world.services.now()),
        disconnect_reason: Some("CLIENT_INITIATED_DISCONNECT".into()),
        via: certfleet_registry::ConnectionVia::default(),
    };
    let old: Vec<_> = (0..7).map(|index| ConnectionEvent::Connected(record(&format!("old-{index}")))).collect();
    world.services.record_connection_events(&old).unwrap();
    world.clock.advance(time::Duration::days(91));
    world.services.record_connection_events(&[ConnectionEvent::Connected(record("recent"))]).unwrap();

    let metrics = Arc::new(PruneMetrics::default());
    let mut config =
        PruneConfig { pause: Duration::ZERO, check_interval: Duration::from_secs(3600), ..Default::default() };
    config.settings.batch_rows = 3;
    let (stop, stopped) = watch::channel(false);
    let worker = tokio::spawn(run_prune(world.services.clone(), "node-a".into(), config, metrics.clone(), stopped));
    for _ in 0..500 {
        if metrics.runs.load(Ordering::Relaxed) > 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    stop.send(true).unwrap();
    worker.await.unwrap();

    assert_eq!(metrics.runs.load(Ordering::Relaxed), 1);
    assert_eq!(metrics.deleted(PruneTarget::ConnectionHistory), 7);
    let since = certfleet_testkit::START;
    let kept = world.services.connection_history(&caller.account, None, since).unwrap();
    assert_eq!(kept.iter().map(|record| record.session_id.as_str()).collect::<Vec<_>>(), ["recent"]);
    let mut text = String::new();
    metrics.render(&mut text);
    assert!(text.contains("certfleet_registry_pruned_rows_total{table=\"connection_history\"} 7"), "{text}");
    assert!(text.contains("certfleet_registry_prune_runs_total 1"), "{text}");
}
