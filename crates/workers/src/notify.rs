//! Audit notifications: AWS's message body, and its delivery to the targets of an account's
//! audit configuration.
//!
//! AWS sends the body to an SNS topic (`auditNotificationTargetConfigurations.SNS.targetArn`).
//! certfleet reads the same `targetArn` as where to deliver it (a certfleet extension):
//!
//! - `https://...` (or `http://...` when the operator allows it): a webhook, POSTed the body as
//!   `application/json` through the node's egress policy (`certfleet-egress`: the deny list
//!   checked on the resolved address, the server's certificate verified against the egress's
//!   roots, bounded time and answer), retried with exponential backoff on a failure or a non-2xx
//!   status, a bounded number of times ([`WebhookConfig::attempts`]). A target the policy
//!   refuses outright (`http://` while https only) is not retried.
//! - `mqtt:<topic>`: published (QoS 0) to `<topic>` in the account's own topic space.
//! - anything else (a real SNS ARN): accepted, stored, and logged as not delivered.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use certfleet_egress::{Egress, Failure, Purpose, Refusal};
use certfleet_registry::{AccountId, AuditCheckRunStatus, AuditTaskType};
use certfleet_services::{AuditTaskSummary, Services};
use serde_json::{Value, json};

/// Publishes into an account's MQTT topic space (the gateway's broker implements it).
pub trait MqttPublisher: Send + Sync {
    /// Publishes `payload` on `topic` to `account`'s subscribers. Returns false when the topic
    /// is not a valid topic name.
    fn publish(&self, account: &AccountId, topic: &str, payload: Bytes) -> bool;
}

/// Webhook retries, and where webhooks go out.
#[derive(Clone, Debug)]
pub struct WebhookConfig {
    /// At most this many attempts per delivery. Default 5.
    pub attempts: u32,
    /// The wait after the first failure, doubled after each. Default 500 ms.
    pub initial_backoff: Duration,
    /// The longest one attempt may take (the egress's own bounds apply too). Default 10 s.
    pub timeout: Duration,
    /// The node's egress policy (https only and the default deny list unless configured).
    pub egress: Arc<Egress>,
}

impl Default for WebhookConfig {
    fn default() -> Self {
        WebhookConfig {
            attempts: 5,
            initial_backoff: Duration::from_millis(500),
            timeout: Duration::from_secs(10),
            egress: Arc::new(Egress::default()),
        }
    }
}

/// AWS's audit notification for a finished task (epoch milliseconds, as AWS sends them).
pub fn notification_body(summary: &AuditTaskSummary) -> Value {
    let task = &summary.task;
    let count = |wanted: AuditCheckRunStatus| summary.checks.iter().filter(|run| run.status == wanted).count();
    let details: Vec<Value> = summary
        .checks
        .iter()
        .map(|run| {
            let mut detail = json!({
                "checkName": run.check_name,
                "checkRunStatus": run.status.as_str(),
                "nonCompliantResourcesCount": run.non_compliant_resources,
                "totalResourcesCount": run.total_resources,
            });
            if let Some(code) = &run.error_code {
                detail["errorCode"] = code.clone().into();
            }
            if let Some(message) = &run.message {
                detail["message"] = message.clone().into();
            }
            detail
        })
        .collect();
    let mut body = json!({
        "accountId": task.account.to_string(),
        "taskId": task.id,
        "taskStatus": task.status.as_str(),
        "taskType": task.task_type.as_str(),
        "failedChecksCount": count(AuditCheckRunStatus::Failed),
        "canceledChecksCount": count(AuditCheckRunStatus::Canceled),
        "nonCompliantChecksCount": count(AuditCheckRunStatus::CompletedNonCompliant),
        "compliantChecksCount": count(AuditCheckRunStatus::CompletedCompliant),
        "totalChecksCount": summary.checks.len(),
        "taskStartTime": (task.started_at.unix_timestamp_nanos() / 1_000_000) as i64,
        "auditDetails": details,
    });
    if task.task_type == AuditTaskType::Scheduled
        && let Some(name) = &task.scheduled_audit_name
    {
        body["scheduledAuditName"] = name.clone().into();
        body["customerScheduledAuditName"] = name.clone().into();
    }
    body
}

/// Why a webhook delivery failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The URL is not an http URL certfleet can deliver to.
    #[error("unsupported webhook url {0:?}")]
    Url(String),
    /// The egress did not deliver it (its message says nothing about the network; the egress
    /// logged the detail).
    #[error("webhook not delivered: {0}")]
    Egress(Failure),
    /// Every attempt failed; the last error.
    #[error("webhook delivery gave up after {attempts} attempts: {last}")]
    GaveUp { attempts: u32, last: Box<Error> },
}

/// An HTTP webhook.
#[derive(Clone, Debug)]
pub struct Webhook {
    url: String,
}

impl Webhook {
    /// A webhook at `url` (`https://host[:port]/path`, or `http://...`).
    pub fn parse(url: &str) -> Result<Self, Error> {
        certfleet_egress::Target::parse(url).map_err(|_| Error::Url(url.to_owned()))?;
        Ok(Webhook { url: url.to_owned() })
    }

    /// POSTs `body` for `account` through the egress, retrying with exponential backoff;
    /// returns the number of attempts made. A refusal of the policy itself (a plain `http://`
    /// target while https only, an invalid URL) is not retried.
    pub async fn deliver(
        &self,
        account: &AccountId,
        purpose: Purpose,
        body: &Value,
        config: &WebhookConfig,
    ) -> Result<u32, Error> {
        let payload = Bytes::from(body.to_string());
        let mut backoff = config.initial_backoff;
        let attempts = config.attempts.max(1);
        let mut attempt = 0;
        loop {
            attempt += 1;
            let sent =
                config.egress.post_within(config.timeout, account, purpose, &self.url, &[], payload.clone()).await;
            let outcome = sent.map(drop);
            match outcome {
                Ok(()) => return Ok(attempt),
                Err(failure @ Failure::Refused(Refusal::PlainHttp | Refusal::InvalidUrl)) => {
                    return Err(Error::Egress(failure));
                }
                Err(failure) if attempt >= attempts => {
                    return Err(Error::GaveUp { attempts: attempt, last: Box::new(Error::Egress(failure)) });
                }
                Err(failure) => {
                    tracing::info!(%account, attempt, %failure, backoff_ms = backoff.as_millis() as u64, "webhook delivery failed; retrying");
                    tokio::time::sleep(backoff).await;
                    backoff = backoff.saturating_mul(2);
                }
            }
        }
    }
}

/// Delivers finished tasks to the targets of their account's audit configuration.
#[derive(Clone, Default)]
pub struct NotificationTargets {
    mqtt: Option<Arc<dyn MqttPublisher>>,
}

impl NotificationTargets {
    /// Webhooks only (`mqtt:` targets are logged as undeliverable).
    pub fn webhooks_only() -> Self {
        NotificationTargets { mqtt: None }
    }

    /// Webhooks and MQTT topics through `publisher`.
    pub fn with_mqtt(publisher: Arc<dyn MqttPublisher>) -> Self {
        NotificationTargets { mqtt: Some(publisher) }
    }

    /// Delivers `summary` to every enabled target of its account; failures are logged.
    pub async fn deliver(&self, services: &Arc<Services>, webhook: &WebhookConfig, summary: &AuditTaskSummary) {
        let account = summary.task.account.clone();
        let lookup = services.clone();
        let targets = match tokio::task::spawn_blocking(move || lookup.audit_notification_targets(&account)).await {
            Ok(Ok(targets)) => targets,
            Ok(Err(error)) => {
                tracing::warn!(%error, "cannot read the audit notification targets");
                return;
            }
            Err(_) => return,
        };
        let body = notification_body(summary);
        let account = &summary.task.account;
        for target in targets {
            let Some(arn) = target.target_arn.as_deref() else { continue };
            if let Some(topic) = arn.strip_prefix("mqtt:") {
                match &self.mqtt {
                    Some(publisher) if publisher.publish(account, topic, Bytes::from(body.to_string())) => {
                        tracing::info!(%account, task = %summary.task.id, topic, "audit notification published");
                    }
                    Some(_) => tracing::warn!(%account, topic, "audit notification topic is not a valid topic name"),
                    None => tracing::warn!(%account, topic, "no MQTT publisher: audit notification not delivered"),
                }
            } else if arn.starts_with("http://") || arn.starts_with("https://") {
                match Webhook::parse(arn) {
                    Ok(hook) => match hook.deliver(account, Purpose::AuditNotification, &body, webhook).await {
                        Ok(attempts) => {
                            tracing::info!(%account, task = %summary.task.id, attempts, "audit notification delivered")
                        }
                        Err(error) => {
                            tracing::warn!(%account, task = %summary.task.id, %error, "audit notification lost")
                        }
                    },
                    Err(error) => tracing::warn!(%account, %error, "audit notification not delivered"),
                }
            } else {
                tracing::info!(%account, target = arn, "audit notification target is not deliverable by certfleet (SNS)");
            }
        }
    }
}
