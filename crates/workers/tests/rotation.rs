//! The rotation runner wired to the audit worker: an on-demand audit finds a certificate that
//! expires (the manual clock moved 340 days on), the runner starts a campaign and publishes
//! `csr_req` to the client ID that used it; a device's `crt_err` then fails the rotation and the
//! alert reaches the account's `mqtt:` notification target.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use certfleet_registry::{
    AccountId, AuditCheckConfiguration, AuditNotificationTarget, ConnectionRecord, RotationState,
};
use certfleet_services::{AuditConfigurationUpdate, DeviceTopic, EXPIRING_CHECK};
use certfleet_testkit::world;
use certfleet_workers::{AuditWorker, Config, NotificationTargets, RotationPublisher, RotationRunner};
use tokio::sync::watch;

#[derive(Default)]
struct Published(Mutex<Vec<(String, String, serde_json::Value)>>);

impl RotationPublisher for Published {
    fn publish(&self, account: &AccountId, topic: &str, payload: bytes::Bytes) -> bool {
        let body = serde_json::from_slice(&payload).unwrap();
        self.0.lock().unwrap().push((account.to_string(), topic.to_owned(), body));
        true
    }
}

impl Published {
    async fn wait_for(&self, topic: &str) -> serde_json::Value {
        for _ in 0..500 {
            if let Some((_, _, body)) = self.0.lock().unwrap().iter().find(|(_, t, _)| t == topic) {
                return body.clone();
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        panic!("nothing published on {topic}: {:?}", self.0.lock().unwrap());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expiring_certificate_found_by_an_audit_gets_a_csr_req() {
    let world = world();
    let caller = world.caller();
    let device = world.services.create_keys_and_certificate(&caller, true).unwrap().certificate;
    let record = ConnectionRecord {
        session_id: "s1".into(),
        account: caller.account.clone(),
        certificate_id: device.id.clone(),
        client_id: "sensor-7".into(),
        connected_at: world.services.now(),
        disconnected_at: None,
        disconnect_reason: None,
        via: certfleet_registry::ConnectionVia::default(),
    };
    certfleet_registry::write(world.services.store(), |tx| tx.insert_connection(&record)).unwrap();
    world
        .services
        .update_account_audit_configuration(
            &caller,
            &AuditConfigurationUpdate {
                role_arn: Some("arn:aws:iam::123456789012:role/audit".into()),
                targets: BTreeMap::from([(
                    "SNS".to_owned(),
                    AuditNotificationTarget {
                        target_arn: Some("mqtt:ops/rotation".into()),
                        role_arn: None,
                        enabled: true,
                    },
                )]),
                checks: BTreeMap::from([(
                    EXPIRING_CHECK.to_owned(),
                    AuditCheckConfiguration { enabled: true, configuration: BTreeMap::new() },
                )]),
            },
        )
        .unwrap();
    world.clock.advance(time::Duration::days(340));

    let published = Arc::new(Published::default());
    let runner = RotationRunner::new(world.services.clone(), published.clone(), Default::default());
    let config = Config { poll_interval: Duration::from_millis(20), ..Config::default() };
    let mut worker = AuditWorker::new(world.services.clone(), config);
    worker.add_listener(runner.clone());
    let (stop, stopped) = watch::channel(false);
    let running = tokio::spawn(worker.run(NotificationTargets::webhooks_only(), stopped.clone()));
    let sweeping = tokio::spawn(runner.clone().run(stopped));

    let task_id = world.services.start_on_demand_audit_task(&caller, &[EXPIRING_CHECK.to_owned()]).unwrap();
    let body = published.wait_for("management/topic/sensor-7/csr_req").await;
    assert_eq!(body, serde_json::json!({}));
    let rotations = world.services.list_rotations(&caller, &Default::default(), None, 10).unwrap();
    assert_eq!(rotations.len(), 1);
    assert_eq!((rotations[0].state, rotations[0].attempts), (RotationState::Requested, 1));
    let campaign = world.services.describe_rotation_campaign(&caller, &rotations[0].campaign_id).unwrap();
    assert_eq!(campaign.campaign.audit_task_id.as_deref(), Some(task_id.as_str()));

    // The device cannot make a key: crt_err from its (old) session; the alert goes to the target.
    let runner_for_error = runner.clone();
    let account = caller.account.clone();
    let principal = device.id.clone();
    tokio::task::spawn_blocking(move || {
        runner_for_error.handle_device_message(
            &account,
            "sensor-7",
            &principal,
            DeviceTopic::CrtErr,
            &serde_json::json!({ "error": "no entropy" }),
        )
    })
    .await
    .unwrap()
    .unwrap();
    let alert = published.wait_for("ops/rotation").await;
    assert_eq!(alert["type"], "certfleet.rotation.failed");
    assert_eq!(alert["clientId"], "sensor-7");
    assert_eq!(alert["error"], "device reported: no entropy");
    let status = world.services.describe_certificate(&caller, &device.id).unwrap().status;
    assert_eq!(status, certfleet_registry::CertificateStatus::Active);

    let _ = stop.send(true);
    tokio::time::timeout(Duration::from_secs(5), running).await.unwrap().unwrap();
    tokio::time::timeout(Duration::from_secs(5), sweeping).await.unwrap().unwrap();
}
