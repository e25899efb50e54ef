//! Audit notifications: AWS's message body, and its delivery to the targets of an account's
//! audit configuration.
//!
//! AWS sends the body to an SNS topic (`auditNotificationTargetConfigurations.SNS.targetArn`).
//! certfleet reads the same `targetArn` as where to deliver it (a certfleet extension):
//!
//! - `http://...` or `https://...`: a webhook, POSTed the body as `application/json`, retried
//!   with exponential backoff on a network error or a non-2xx status, a bounded number of times.
//!   An https server's certificate is verified against [`WebhookConfig::ca_bundle`] when set,
//!   the system's bundle otherwise (`SSL_CERT_FILE`, then the usual distribution paths).
//! - `mqtt:<topic>`: published (QoS 0) to `<topic>` in the account's own topic space.
//! - anything else (a real SNS ARN): accepted, stored, and logged as not delivered.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use certfleet_registry::{AccountId, AuditCheckRunStatus, AuditTaskType};
use certfleet_services::{AuditTaskSummary, Services};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, ServerName};
use serde_json::{Value, json};
use tokio::net::TcpStream;

/// Publishes into an account's MQTT topic space (the gateway's broker implements it).
pub trait MqttPublisher: Send + Sync {
    /// Publishes `payload` on `topic` to `account`'s subscribers. Returns false when the topic
    /// is not a valid topic name.
    fn publish(&self, account: &AccountId, topic: &str, payload: Bytes) -> bool;
}

/// Webhook retries.
#[derive(Clone, Debug)]
pub struct WebhookConfig {
    pub attempts: u32,
    pub initial_backoff: Duration,
    pub timeout: Duration,
    /// The roots https webhooks are verified against (PEM); the system's bundle when `None`.
    pub ca_bundle: Option<PathBuf>,
}

impl Default for WebhookConfig {
    fn default() -> Self {
        WebhookConfig {
            attempts: 5,
            initial_backoff: Duration::from_millis(500),
            timeout: Duration::from_secs(10),
            ca_bundle: None,
        }
    }
}

/// Where distributions keep the system's CA bundle.
const SYSTEM_BUNDLES: [&str; 4] = [
    "/etc/ssl/certs/ca-certificates.crt",
    "/etc/pki/tls/certs/ca-bundle.crt",
    "/etc/ssl/cert.pem",
    "/etc/ssl/ca-bundle.pem",
];

/// A TLS client configuration trusting the roots of `bundle` (or of the system's bundle).
fn tls_config(bundle: Option<&PathBuf>) -> Result<Arc<rustls::ClientConfig>, Error> {
    let path = match bundle {
        Some(path) => path.clone(),
        None => std::env::var_os("SSL_CERT_FILE")
            .map(PathBuf::from)
            .or_else(|| SYSTEM_BUNDLES.iter().map(PathBuf::from).find(|path| path.is_file()))
            .ok_or_else(|| Error::Request("no CA bundle to verify https webhooks with".into()))?,
    };
    let mut roots = rustls::RootCertStore::empty();
    let certificates = CertificateDer::pem_file_iter(&path)
        .map_err(|error| Error::Request(format!("reading {}: {error}", path.display())))?;
    for certificate in certificates.flatten() {
        let _ = roots.add(certificate);
    }
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|error| Error::Request(error.to_string()))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(Arc::new(config))
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
    /// The connection or the request failed.
    #[error("webhook request failed: {0}")]
    Request(String),
    /// The receiver answered with a non-2xx status.
    #[error("webhook answered {0}")]
    Status(u16),
    /// Every attempt failed; the last error.
    #[error("webhook delivery gave up after {attempts} attempts: {last}")]
    GaveUp { attempts: u32, last: Box<Error> },
}

/// An HTTP webhook.
#[derive(Clone, Debug)]
pub struct Webhook {
    url: http::Uri,
}

impl Webhook {
    /// A webhook at `url` (`http://host[:port]/path` or `https://...`).
    pub fn parse(url: &str) -> Result<Self, Error> {
        let uri: http::Uri = url.parse().map_err(|_| Error::Url(url.to_owned()))?;
        if !matches!(uri.scheme_str(), Some("http" | "https")) || uri.host().is_none() {
            return Err(Error::Url(url.to_owned()));
        }
        Ok(Webhook { url: uri })
    }

    /// POSTs `body`, retrying with exponential backoff; returns the number of attempts made.
    pub async fn deliver(&self, body: &Value, config: &WebhookConfig) -> Result<u32, Error> {
        let payload = Bytes::from(body.to_string());
        let mut backoff = config.initial_backoff;
        let attempts = config.attempts.max(1);
        let mut attempt = 0;
        loop {
            attempt += 1;
            let outcome = match tokio::time::timeout(config.timeout, self.post(payload.clone(), config)).await {
                Ok(result) => result,
                Err(_) => Err(Error::Request("timed out".into())),
            };
            match outcome {
                Ok(()) => return Ok(attempt),
                Err(error) if attempt >= attempts => {
                    return Err(Error::GaveUp { attempts: attempt, last: Box::new(error) });
                }
                Err(error) => {
                    tracing::info!(url = %self.url, attempt, %error, backoff_ms = backoff.as_millis() as u64, "webhook delivery failed; retrying");
                    tokio::time::sleep(backoff).await;
                    backoff = backoff.saturating_mul(2);
                }
            }
        }
    }

    async fn post(&self, payload: Bytes, config: &WebhookConfig) -> Result<(), Error> {
        let host = self.url.host().unwrap_or_default().trim_start_matches('[').trim_end_matches(']').to_owned();
        let https = self.url.scheme_str() == Some("https");
        let port = self.url.port_u16().unwrap_or(if https { 443 } else { 80 });
        let stream =
            TcpStream::connect((host.as_str(), port)).await.map_err(|error| Error::Request(error.to_string()))?;
        let request = self.request(payload)?;
        let response = if https {
            let connector = tokio_rustls::TlsConnector::from(tls_config(config.ca_bundle.as_ref())?);
            let name = ServerName::try_from(host).map_err(|error| Error::Request(error.to_string()))?;
            let tls = connector.connect(name, stream).await.map_err(|error| Error::Request(error.to_string()))?;
            send(TokioIo::new(tls), request).await?
        } else {
            send(TokioIo::new(stream), request).await?
        };
        if response.is_success() { Ok(()) } else { Err(Error::Status(response.as_u16())) }
    }

    fn request(&self, payload: Bytes) -> Result<http::Request<Full<Bytes>>, Error> {
        let authority = self.url.authority().map(|authority| authority.to_string()).unwrap_or_default();
        let path = self.url.path_and_query().map_or("/", |path| path.as_str());
        http::Request::post(path)
            .header(http::header::HOST, authority)
            .header(http::header::CONTENT_TYPE, "application/json")
            .header(http::header::USER_AGENT, "certfleet-audit")
            .body(Full::new(payload))
            .map_err(|error| Error::Request(error.to_string()))
    }
}

/// Sends one request over a fresh HTTP/1.1 connection and returns the status.
async fn send<T>(io: TokioIo<T>, request: http::Request<Full<Bytes>>) -> Result<http::StatusCode, Error>
where
    T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (mut sender, connection) =
        hyper::client::conn::http1::handshake(io).await.map_err(|error| Error::Request(error.to_string()))?;
    tokio::spawn(connection);
    let response = sender.send_request(request).await.map_err(|error| Error::Request(error.to_string()))?;
    let status = response.status();
    let _ = response.into_body().collect().await;
    Ok(status)
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
                    Ok(hook) => match hook.deliver(&body, webhook).await {
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
