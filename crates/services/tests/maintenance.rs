//! The registry prune through the services, on the manual clock: what it deletes and keeps,
//! bounded batches, one node at a time (a second node is refused while the first holds the
//! lease, and takes over when the first stops renewing it), and once per interval.

use std::cell::Cell;

use certfleet_pki::CertificateId;
use certfleet_registry::*;
use certfleet_services::*;
use certfleet_testkit::{World, world};
use time::Duration;

fn connected(world: &World, caller: &Caller, session: &str) {
    let record = ConnectionRecord {
        session_id: session.into(),
        account: caller.account.clone(),
        certificate_id: CertificateId::of_der(b"device"),
        client_id: "sensor".into(),
        connected_at: world.services.now(),
        disconnected_at: None,
        disconnect_reason: None,
        via: certfleet_registry::ConnectionVia::default(),
    };
    let closed = ConnectionEvent::Disconnected {
        session_id: session.into(),
        at: world.services.now() + Duration::seconds(1),
        reason: "CLIENT_INITIATED_DISCONNECT".into(),
    };
    world.services.record_connection_events(&[ConnectionEvent::Connected(record), closed]).unwrap();
}

fn sessions(world: &World, caller: &Caller) -> Vec<String> {
    let since = certfleet_testkit::START - Duration::days(1);
    let history = world.services.connection_history(&caller.account, None, since).unwrap();
    history.into_iter().map(|record| record.session_id).collect()
}

fn settings(batch_rows: u32) -> PruneSettings {
    PruneSettings { batch_rows, ..PruneSettings::default() }
}

#[test]
fn old_history_is_pruned_in_batches_and_recent_history_kept() {
    let world = world();
    let caller = world.caller();
    for index in 0..5 {
        connected(&world, &caller, &format!("old-{index}"));
    }
    world.clock.advance(Duration::days(89));
    connected(&world, &caller, "recent");
    world.clock.advance(Duration::days(2));

    let mut pauses = 0;
    let report = world.services.prune_registry("node-a", &settings(2), &mut || pauses += 1).unwrap().unwrap();
    let history = report.deleted.iter().find(|(target, _)| *target == PruneTarget::ConnectionHistory).unwrap();
    assert_eq!(history.1, 5);
    // 2 + 2 + 1 rows: three transactions, a pause after each full one.
    assert_eq!(pauses, 2);
    assert!(!report.lost_lease);
    assert_eq!(sessions(&world, &caller), ["recent"]);
}

#[test]
fn one_node_prunes_at_a_time_and_once_per_interval() {
    let world = world();
    let caller = world.caller();
    for index in 0..4 {
        connected(&world, &caller, &format!("old-{index}"));
    }
    world.clock.advance(Duration::days(91));

    // While node a prunes, node b's attempt is refused and changes nothing.
    let during = Cell::new(None);
    let report = world
        .services
        .prune_registry("node-a", &settings(2), &mut || {
            let by_b = world.services.prune_registry("node-b", &settings(2), &mut || {}).unwrap();
            during.set(Some(by_b.map(|report| report.batches)));
        })
        .unwrap()
        .unwrap();
    assert_eq!(during.get(), Some(Err(NotPruned::NotDue)));
    assert_eq!(report.deleted[0], (PruneTarget::ConnectionHistory, 4));

    // Done: neither node prunes again within the interval, even with new old rows.
    world.clock.advance(Duration::minutes(59));
    for node in ["node-a", "node-b"] {
        assert_eq!(world.services.prune_registry(node, &settings(2), &mut || {}).unwrap(), Err(NotPruned::NotDue));
    }
    world.clock.advance(Duration::minutes(2));
    assert!(world.services.prune_registry("node-b", &settings(2), &mut || {}).unwrap().is_ok());
    assert_eq!(outcome_of_empty_name(&world), "InvalidRequest");
}

fn outcome_of_empty_name(world: &World) -> &'static str {
    certfleet_testkit::outcome(world.services.prune_registry("", &settings(2), &mut || {}))
}

#[test]
fn a_dead_nodes_prune_is_taken_over_after_its_lease() {
    let world = world();
    let caller = world.caller();
    for index in 0..6 {
        connected(&world, &caller, &format!("old-{index}"));
    }
    world.clock.advance(Duration::days(91));

    // Node a stalls past its lease after its first batch; node b takes the prune over, and
    // node a, seeing its lease gone, stops without releasing b's claim.
    let took_over = Cell::new(None);
    let report = world
        .services
        .prune_registry("node-a", &settings(2), &mut || {
            if took_over.get().is_none() {
                world.clock.advance(Duration::minutes(6));
                let by_b = world.services.prune_registry("node-b", &settings(2), &mut || {}).unwrap();
                took_over.set(Some(by_b.map(|report| report.deleted[0].1)));
            }
        })
        .unwrap()
        .unwrap();
    assert!(report.lost_lease);
    assert_eq!(report.deleted, [(PruneTarget::ConnectionHistory, 2)]);
    assert_eq!(took_over.get(), Some(Ok(4)));
    assert!(sessions(&world, &caller).is_empty());
    // b released the job until its interval: a cannot start again at once.
    assert_eq!(world.services.prune_registry("node-a", &settings(2), &mut || {}).unwrap(), Err(NotPruned::NotDue));
}

#[test]
fn test_endpoint_records_and_change_feed_entries_are_pruned_too() {
    let world = world();
    let caller = world.caller();
    let probe = |at| EndpointProbe {
        seq: 0,
        account: caller.account.clone(),
        configuration: "iot:Test".into(),
        peer: "192.0.2.1:1234".into(),
        server_name: None,
        client_id: None,
        client_certificate_id: None,
        tls_version: None,
        cipher_suite: None,
        outcome: "handshake_failed".into(),
        detail: "unknown_ca".into(),
        at,
    };
    world.services.record_endpoint_probe(&probe(world.services.now())).unwrap();
    // A provisioning claim: forgotten a day after it expired (5 minutes after it was made).
    let template = TemplateDefinition {
        name: "fleet".into(),
        body: r#"{"Parameters": {"AWS::IoT::Certificate::Id": {"Type": "String"}}, "Resources": {"certificate": {"Type": "AWS::IoT::Certificate", "Properties": {"CertificateId": {"Ref": "AWS::IoT::Certificate::Id"}}}}}"#.into(),
        enabled: true,
        role_arn: "arn:aws:iam::123456789012:role/provisioning".into(),
        ..Default::default()
    };
    world.services.create_provisioning_template(&caller, &template).unwrap();
    let claim = world.services.create_provisioning_claim(&caller, "fleet").unwrap();
    let claim_id = claim.certificate.id.clone();
    assert!(world.services.provisioning_claim(&caller.account, &claim_id).unwrap().is_some());
    let feed_before = world.services.last_change_seq().unwrap();
    assert!(feed_before > 0, "creating the account recorded a change");
    world.clock.advance(Duration::days(91));
    world.services.record_endpoint_probe(&probe(world.services.now())).unwrap();
    let report = world.services.prune_registry("node-a", &settings(100), &mut || {}).unwrap().unwrap();
    assert_eq!(
        report.deleted,
        [
            (PruneTarget::ConnectionHistory, 0),
            (PruneTarget::EndpointProbes, 1),
            (PruneTarget::ChangeFeed, feed_before as u64),
            (PruneTarget::ProvisioningClaims, 1),
        ]
    );
    assert!(world.services.provisioning_claim(&caller.account, &claim_id).unwrap().is_none());
    assert_eq!(world.services.endpoint_probes(&caller, None, 10).unwrap().len(), 1);
    assert!(world.services.changes_after(0, 10).unwrap().is_empty());
}
