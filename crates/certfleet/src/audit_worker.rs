//! Starts the audit worker (certfleet-workers) beside the gateway: audit notifications whose
//! target is `mqtt:<topic>` are published through the gateway's broker, into the account's
//! topic space, as the broker publishes its own events (JSON, QoS 1, no retain).

use std::sync::Arc;

use bytes::Bytes;
use certfleet_gateway::EventSink;
use certfleet_gateway::fabric::Message;
use certfleet_mqtt::{PayloadFormat, Properties, QoS, TopicName};
use certfleet_registry::AccountId;
use certfleet_services::Services;
use certfleet_workers::{AuditWorker, MqttPublisher, NotificationTargets};
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

/// Runs the audit worker until `stopped` turns true.
pub fn start(services: Arc<Services>, broker: Arc<dyn EventSink>, stopped: watch::Receiver<bool>) {
    let worker = AuditWorker::new(services, certfleet_workers::Config::default());
    let targets = NotificationTargets::with_mqtt(Arc::new(BrokerPublisher(broker)));
    tokio::spawn(worker.run(targets, stopped));
}
