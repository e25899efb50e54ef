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
    egress: Arc<certfleet_egress::Egress>,
    stopped: watch::Receiver<bool>,
) -> Arc<RotationRunner> {
    let publisher = Arc::new(BrokerPublisher(broker));
    // Webhooks (audit notifications, rotation alerts) go out through the node's egress policy.
    let webhook = certfleet_workers::notify::WebhookConfig { egress, ..Default::default() };
    let rotation = certfleet_workers::RotationRunnerConfig { sweep_interval, webhook: webhook.clone() };
    let runner = RotationRunner::new(services.clone(), publisher.clone(), rotation);
    let mut worker = AuditWorker::new(services, certfleet_workers::Config { webhook, ..Default::default() });
    worker.add_listener(runner.clone());
    tokio::spawn(runner.clone().run(stopped.clone()));
    tokio::spawn(worker.run(NotificationTargets::with_mqtt(publisher), stopped));
    runner
}

/// What a system rule hands the rotation service: one device message.
struct DeviceMessage {
    account: certfleet_registry::AccountId,
    client_id: String,
    principal: certfleet_pki::CertificateId,
    topic: certfleet_services::DeviceTopic,
    output: Vec<u8>,
}

/// The sink of the rotation system rules: queues device messages (never blocking the rules
/// runner) for a task that hands them to the rotation service on the blocking pool. A full queue
/// drops the message with a warning; the rotation's sweep asks the device again.
pub struct RotationSink {
    queue: tokio::sync::mpsc::Sender<DeviceMessage>,
}

impl RotationSink {
    pub fn start(runner: Arc<RotationRunner>, mut stopped: watch::Receiver<bool>) -> Arc<Self> {
        let (queue, mut received) = tokio::sync::mpsc::channel::<DeviceMessage>(10_000);
        tokio::spawn(async move {
            loop {
                let message = tokio::select! {
                    message = received.recv() => match message { Some(message) => message, None => return },
                    _ = stopped.changed() => return,
                };
                let runner = runner.clone();
                let handled = tokio::task::spawn_blocking(move || {
                    let payload: serde_json::Value = match serde_json::from_slice(&message.output) {
                        Ok(value) => value,
                        Err(_) => {
                            tracing::warn!(account = %message.account, client_id = message.client_id, "rotation: the device message is not JSON");
                            return;
                        }
                    };
                    if let Err(error) = runner.handle_device_message(
                        &message.account,
                        &message.client_id,
                        &message.principal,
                        message.topic,
                        &payload,
                    ) {
                        tracing::warn!(account = %message.account, client_id = message.client_id, %error, "rotation: device message refused");
                    }
                })
                .await;
                if handled.is_err() {
                    tracing::error!("rotation: handling a device message panicked");
                }
            }
        });
        Arc::new(RotationSink { queue })
    }
}

/// Why the sink drops a system rule's delivery before the rotation service sees it.
#[derive(Clone, Copy, Debug)]
enum Dropped {
    /// The topic's client ID is not the publishing session's: a device speaks for itself only.
    AnotherClientsTopic,
    /// The topic is not `management/topic/{clientId}/{csr_res|crt_ack|crt_err}`.
    NotARotationTopic,
    /// The publisher has no authenticated certificate (not a device session).
    NoCertificate,
}

impl certfleet_gateway::rules::SystemSink for RotationSink {
    fn deliver(&self, delivery: certfleet_gateway::rules::SystemDelivery<'_>) {
        // management/topic/{clientId}/{csr_res|crt_ack|crt_err}. The certificate handed on is the
        // one the publishing session authenticated with (the broker's `principal()`), never one
        // the payload or the topic names: the services bind rotations to it.
        let mut levels = delivery.topic.split('/');
        let parsed =
            match (levels.nth(2), levels.next().and_then(certfleet_services::DeviceTopic::parse), levels.next()) {
                (Some(topic_client), Some(topic), None) if topic_client == delivery.client_id => {
                    match delivery.principal {
                        Some(principal) => Ok((topic, principal)),
                        None => Err(Dropped::NoCertificate),
                    }
                }
                (Some(_), Some(_), None) => Err(Dropped::AnotherClientsTopic),
                _ => Err(Dropped::NotARotationTopic),
            };
        let (topic, principal) = match parsed {
            Ok(parsed) => parsed,
            Err(why) => {
                tracing::warn!(account = %delivery.account, client_id = delivery.client_id, topic = delivery.topic, ?why,
                    "rotation: device message dropped");
                return;
            }
        };
        let message = DeviceMessage {
            account: delivery.account.clone(),
            client_id: delivery.client_id.to_owned(),
            principal: principal.clone(),
            topic,
            output: delivery.output.to_vec(),
        };
        if self.queue.try_send(message).is_err() {
            tracing::warn!(account = %delivery.account, client_id = delivery.client_id,
                "rotation: queue full, device message dropped (the sweep will ask again)");
        }
    }
}
