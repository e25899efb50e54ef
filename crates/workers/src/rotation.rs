//! The rotation runner: drives the services' rotation state machine from the outside world.
//!
//! - As an [`AuditListener`], it turns every finished audit whose DEVICE_CERTIFICATE_EXPIRING_CHECK
//!   found certificates into a campaign ([`Services::rotation_from_audit`]) and sends the first
//!   `csr_req`s at once.
//! - A periodic sweep ([`Services::sweep_rotations`]) sends again what timed out, fails what ran
//!   out of attempts, retires what was acknowledged before a crash, and sends the first `csr_req`
//!   of campaigns started through the API.
//! - [`RotationRunner::handle_device_message`] is the seam the rules engine's system rules call
//!   with the devices' `csr_res`, `crt_ack` and `crt_err`.
//!
//! Every message goes out through a [`RotationPublisher`] (QoS 1), and only after the services'
//! transaction committed: a crash in between is repaired by the sweep, which the device side
//! tolerates (it treats repeats idempotently). Failed rotations are reported to the account's
//! audit notification targets (webhooks and `mqtt:` topics, as audit notifications are) and
//! logged.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use certfleet_registry::{AccountId, RotationState};
use certfleet_services::{
    AuditListener, AuditTaskSummary, DeviceMessageOutcome, DeviceTopic, EXPIRING_CHECK, RotationAlert, RotationEffects,
    Services,
};
use serde_json::json;
use tokio::sync::watch;

use crate::notify::{Webhook, WebhookConfig};
use certfleet_egress::Purpose;

/// Publishes a message to a device at QoS 1 in an account's topic space (the gateway's broker
/// implements it in the server).
pub trait RotationPublisher: Send + Sync {
    /// Publishes `payload` (JSON) on `topic` at QoS 1. Returns false when it could not be handed
    /// to the broker (the sweep sends it again later).
    fn publish(&self, account: &AccountId, topic: &str, payload: Bytes) -> bool;
}

/// Settings of the rotation runner.
#[derive(Clone, Debug)]
pub struct RotationRunnerConfig {
    /// How often the deadline sweep runs.
    pub sweep_interval: Duration,
    /// Delivery of failure alerts to webhooks.
    pub webhook: WebhookConfig,
}

impl Default for RotationRunnerConfig {
    fn default() -> Self {
        RotationRunnerConfig { sweep_interval: Duration::from_secs(5), webhook: WebhookConfig::default() }
    }
}

/// Runs rotations: see the module documentation.
pub struct RotationRunner {
    services: Arc<Services>,
    publisher: Arc<dyn RotationPublisher>,
    config: RotationRunnerConfig,
}

impl RotationRunner {
    pub fn new(
        services: Arc<Services>,
        publisher: Arc<dyn RotationPublisher>,
        config: RotationRunnerConfig,
    ) -> Arc<Self> {
        Arc::new(RotationRunner { services, publisher, config })
    }

    /// A device's `csr_res`, `crt_ack` or `crt_err` (blocking: call it from a blocking context):
    /// decided by [`Services::handle_device_message`] in its transaction, then what it asks for
    /// is published, and failures are reported. `principal` is the certificate the publishing
    /// session authenticated with (the rules engine's `principal()`), never one a payload or a
    /// topic names: rotations are bound to it. Returns what was decided (an ignored message was
    /// logged by the services).
    pub fn handle_device_message(
        &self,
        account: &AccountId,
        client_id: &str,
        principal: &certfleet_pki::CertificateId,
        topic: DeviceTopic,
        payload: &serde_json::Value,
    ) -> Result<DeviceMessageOutcome, certfleet_services::Error> {
        let outcome = self.services.handle_device_message(account, client_id, principal, topic, payload)?;
        if let DeviceMessageOutcome::Applied(effects) = &outcome {
            self.apply(effects.clone());
        }
        Ok(outcome)
    }

    /// One sweep at the services' current time (blocking).
    pub fn sweep(&self) -> Result<(), certfleet_services::Error> {
        let effects = self.services.sweep_rotations(self.services.now())?;
        self.apply(effects);
        Ok(())
    }

    /// Publishes the messages and reports the failures of a committed step.
    fn apply(&self, effects: RotationEffects) {
        for message in &effects.publish {
            if self.publisher.publish(&message.account, &message.topic, Bytes::from(message.payload.clone())) {
                tracing::debug!(account = %message.account, topic = message.topic, "rotation message published");
            } else {
                tracing::warn!(account = %message.account, topic = message.topic, "rotation message not published; the sweep retries");
            }
        }
        if effects.alerts.is_empty() {
            return;
        }
        match tokio::runtime::Handle::try_current() {
            Ok(handle) => {
                let services = self.services.clone();
                let publisher = self.publisher.clone();
                let webhook = self.config.webhook.clone();
                handle.spawn(async move {
                    for alert in effects.alerts {
                        deliver_alert(&services, &*publisher, &webhook, &alert).await;
                    }
                });
            }
            Err(_) => tracing::warn!(alerts = effects.alerts.len(), "no runtime: rotation alerts only logged"),
        }
    }

    /// Sweeps every `sweep_interval` until `stop` turns true.
    pub async fn run(self: Arc<Self>, mut stop: watch::Receiver<bool>) {
        tracing::info!(interval_ms = self.config.sweep_interval.as_millis() as u64, "rotation runner running");
        loop {
            if *stop.borrow() {
                break;
            }
            let runner = self.clone();
            match tokio::task::spawn_blocking(move || runner.sweep()).await {
                Ok(Ok(())) => {}
                Ok(Err(error)) => tracing::warn!(%error, "rotation sweep failed"),
                Err(error) => tracing::warn!(%error, "rotation sweep panicked"),
            }
            tokio::select! {
                _ = tokio::time::sleep(self.config.sweep_interval) => {}
                changed = stop.changed() => if changed.is_err() { break },
            }
        }
        tracing::info!("rotation runner stopped");
    }
}

impl AuditListener for RotationRunner {
    fn audit_task_finished(&self, summary: &AuditTaskSummary) {
        let found =
            summary.checks.iter().any(|run| run.check_name == EXPIRING_CHECK && run.non_compliant_resources > 0);
        if !found {
            return;
        }
        let task = &summary.task;
        match self.services.rotation_from_audit(&task.account, &task.id) {
            Ok(Some(campaign)) => {
                tracing::info!(account = %task.account, task = %task.id, campaign = %campaign.campaign.id, "rotation campaign from audit");
                if let Err(error) = self.sweep() {
                    tracing::warn!(%error, "rotation sweep after an audit failed");
                }
            }
            Ok(None) => {}
            Err(error) => {
                tracing::warn!(account = %task.account, task = %task.id, %error, "cannot start rotations from an audit")
            }
        }
    }
}

/// The body of a failure alert.
pub fn alert_body(alert: &RotationAlert) -> serde_json::Value {
    let rotation = &alert.rotation;
    json!({
        "type": "certfleet.rotation.failed",
        "accountId": rotation.account.to_string(),
        "rotationId": rotation.id,
        "campaignId": rotation.campaign_id,
        "clientId": rotation.client_id,
        "oldCertificateId": rotation.old_certificate_id.as_str(),
        "newCertificateId": rotation.new_certificate_id.as_ref().map(|id| id.as_str().to_owned()),
        "state": RotationState::Failed.as_str(),
        "error": rotation.error,
    })
}

/// Reports a failed rotation to the account's audit notification targets.
async fn deliver_alert(
    services: &Arc<Services>,
    publisher: &dyn RotationPublisher,
    webhook: &WebhookConfig,
    alert: &RotationAlert,
) {
    let account = alert.rotation.account.clone();
    let lookup = services.clone();
    let lookup_account = account.clone();
    let targets = match tokio::task::spawn_blocking(move || lookup.audit_notification_targets(&lookup_account)).await {
        Ok(Ok(targets)) => targets,
        _ => Vec::new(),
    };
    let body = alert_body(alert);
    tracing::warn!(%account, rotation = alert.rotation.id, client_id = alert.rotation.client_id, error = alert.rotation.error.as_deref().unwrap_or(""), "rotation alert");
    for target in targets {
        let Some(arn) = target.target_arn.as_deref() else { continue };
        if let Some(topic) = arn.strip_prefix("mqtt:") {
            publisher.publish(&account, topic, Bytes::from(body.to_string()));
        } else if arn.starts_with("http://") || arn.starts_with("https://") {
            match Webhook::parse(arn) {
                Ok(hook) => {
                    if let Err(error) = hook.deliver(&account, Purpose::RotationAlert, &body, webhook).await {
                        tracing::warn!(%account, %error, "rotation alert lost");
                    }
                }
                Err(error) => tracing::warn!(%account, %error, "rotation alert not delivered"),
            }
        }
    }
}
