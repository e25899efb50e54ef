//! Starts the audit worker (certfleet-workers) beside the gateway: audit notifications whose
//! target is `mqtt:<topic>` are published through the gateway's broker, into the account's
//! topic space, as the broker publishes its own events (JSON, QoS 1, no retain).
//!
//! The rotation runner starts here too: it listens to the audit worker, sweeps rotation
//! deadlines, and publishes `csr_req`/`crt_req` to devices through the same broker publisher.

use std::sync::Arc;

use bytes::Bytes;
use certfleet_gateway::EventSink;
use certfleet_gateway::fabric::Message;
use certfleet_mqtt::{PayloadFormat, Properties, QoS, TopicName};
use certfleet_registry::AccountId;
use certfleet_services::Services;
use certfleet_workers::{AuditWorker, MqttPublisher, NotificationTargets, RotationPublisher, RotationRunner};
use tokio::sync::watch;

/// The broker, as the audit worker's MQTT publisher.
struct BrokerPublisher(Arc<dyn EventSink>);

impl MqttPublisher for BrokerPublisher {
    fn publish(&self, account: &AccountId, topic: &str, payload: Bytes) -> bool {
        let Ok(topic) = TopicName::new(topic) else { return false };
        self.0.publish_event(
            account,
            Message {
                topic,
                payload,
                qos: QoS::AtLeastOnce,
                retain: false,
                properties: Properties {
                    payload_format_indicator: Some(PayloadFormat::Utf8),
                    content_type: Some("application/json".to_owned()),
                    ..Properties::default()
                },
                expires_at: None,
                publisher: None,
            },
        );
        true
    }
}

impl RotationPublisher for BrokerPublisher {
    fn publish(&self, account: &AccountId, topic: &str, payload: Bytes) -> bool {
        MqttPublisher::publish(self, account, topic, payload)
    }
}

/// Runs the audit worker and the rotation runner until `stopped` turns true. Returns the
/// rotation runner: the rules engine's system rules hand it the devices' `csr_res`, `crt_ack`
/// and `crt_err` (`RotationRunner::handle_device_message`, see docs/rotation.md).
pub fn start(
    services: Arc<Services>,
    broker: Arc<dyn EventSink>,
    sweep_interval: std::time::Duration,
    stopped: watch::Receiver<bool>,
) -> Arc<RotationRunner> {
    let publisher = Arc::new(BrokerPublisher(broker));
    let rotation = certfleet_workers::RotationRunnerConfig { sweep_interval, ..Default::default() };
    let runner = RotationRunner::new(services.clone(), publisher.clone(), rotation);
    let mut worker = AuditWorker::new(services, certfleet_workers::Config::default());
    worker.add_listener(runner.clone());
    tokio::spawn(runner.clone().run(stopped.clone()));
    tokio::spawn(worker.run(NotificationTargets::with_mqtt(publisher), stopped));
    runner
}
