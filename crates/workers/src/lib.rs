//! certfleet's background workers (an L3 edge, beside the API and the gateway).
//!
//! [`run_prune`] (`prune.rs`) deletes registry rows past their retention (connection history,
//! test endpoint records, the change feed), on one node of the cluster at a time.
//!
//! The [`RotationRunner`] (`rotation.rs`) drives certificate rotations: it listens to audits,
//! sweeps deadlines and publishes to devices through a [`RotationPublisher`].
//!
//! The [`AuditWorker`], which polls the registry for due scheduled audits (turning
//! each into a task on exactly one node) and for audit tasks nobody runs (new ones, or ones whose
//! worker died and whose lease expired), runs them through the services, and tells the
//! [`AuditListener`]s when a task ends. The notification targets of an account's audit
//! configuration are listeners too: webhooks (`notify::Webhook`, POST with bounded retries) and
//! MQTT topics (through an [`MqttPublisher`] the gateway provides).
//!
//! **Architecture Invariant:** decides nothing about audits (services do) and reads the registry
//! only through services. Knows one wire format: the body of AWS's audit notification.

pub mod notify;
pub mod prune;
pub mod rotation;

use std::sync::Arc;
use std::time::Duration;

use certfleet_services::{AuditListener, AuditTaskSummary, Services};
use tokio::sync::{Semaphore, broadcast, watch};

pub use notify::{MqttPublisher, NotificationTargets, Webhook, notification_body};
pub use prune::{PruneConfig, PruneMetrics, run_prune};
pub use rotation::{RotationPublisher, RotationRunner, RotationRunnerConfig};

/// How often audit results older than AWS's 90-day retention are deleted.
const PRUNE_INTERVAL: Duration = Duration::from_secs(3600);

/// Settings of the audit worker.
#[derive(Clone, Debug)]
pub struct Config {
    /// How often the registry is polled for due schedules and runnable tasks.
    pub poll_interval: Duration,
    /// How long a task is leased to this node at a time (renewed before each check).
    pub lease: time::Duration,
    /// At most this many tasks run at once on this node.
    pub max_concurrent_tasks: usize,
    /// Webhook delivery: attempts, first backoff (doubled each time), per-attempt timeout.
    pub webhook: notify::WebhookConfig,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            poll_interval: Duration::from_millis(500),
            lease: time::Duration::minutes(5),
            max_concurrent_tasks: 2,
            webhook: notify::WebhookConfig::default(),
        }
    }
}

/// Runs audits in the background and tells listeners when they end.
pub struct AuditWorker {
    services: Arc<Services>,
    config: Config,
    listeners: Vec<Arc<dyn AuditListener>>,
    finished: broadcast::Sender<Arc<AuditTaskSummary>>,
}

impl AuditWorker {
    /// A worker whose only listener delivers to the accounts' notification targets (webhooks;
    /// MQTT once [`AuditWorker::with_mqtt`] gives a publisher).
    pub fn new(services: Arc<Services>, config: Config) -> Self {
        let (finished, _) = broadcast::channel(64);
        AuditWorker { services, config, listeners: Vec::new(), finished }
    }

    /// Adds a listener, called (on the blocking pool) for every task that ends here.
    pub fn add_listener(&mut self, listener: Arc<dyn AuditListener>) {
        self.listeners.push(listener);
    }

    /// Completion events as a channel (the rotation service's hook): every task that ends on
    /// this node is sent once; a slow receiver loses the oldest (broadcast semantics).
    pub fn subscribe(&self) -> broadcast::Receiver<Arc<AuditTaskSummary>> {
        self.finished.subscribe()
    }

    /// Runs until `stop` turns true. Notification targets are delivered through `targets`.
    pub async fn run(self, targets: NotificationTargets, mut stop: watch::Receiver<bool>) {
        let worker = Arc::new(self);
        let targets = Arc::new(targets);
        let slots = Arc::new(Semaphore::new(worker.config.max_concurrent_tasks.max(1)));
        let mut last_prune: Option<std::time::Instant> = None;
        tracing::info!(poll_ms = worker.config.poll_interval.as_millis() as u64, "audit worker running");
        loop {
            if *stop.borrow() {
                break;
            }
            worker.tick(&targets, &slots).await;
            if last_prune.is_none_or(|at| at.elapsed() >= PRUNE_INTERVAL) {
                last_prune = Some(std::time::Instant::now());
                let services = worker.services.clone();
                if let Ok(Err(error)) = tokio::task::spawn_blocking(move || services.prune_audit_results()).await {
                    tracing::warn!(%error, "cannot prune old audit results");
                }
            }
            tokio::select! {
                _ = tokio::time::sleep(worker.config.poll_interval) => {}
                changed = stop.changed() => if changed.is_err() { break },
            }
        }
        tracing::info!("audit worker stopped");
    }

    /// One round: start due schedules, then take runnable tasks while slots are free.
    async fn tick(self: &Arc<Self>, targets: &Arc<NotificationTargets>, slots: &Arc<Semaphore>) {
        let services = self.services.clone();
        let free = slots.available_permits() as u32;
        let polled = tokio::task::spawn_blocking(move || {
            let started = services.start_due_scheduled_audits(50)?;
            let runnable = if free > 0 { services.runnable_audit_tasks(free)? } else { Vec::new() };
            Ok::<_, certfleet_services::Error>((started, runnable))
        })
        .await;
        let runnable = match polled {
            Ok(Ok((_, runnable))) => runnable,
            Ok(Err(error)) => {
                tracing::warn!(%error, "audit worker cannot poll the registry");
                return;
            }
            Err(error) => {
                tracing::warn!(%error, "audit worker poll panicked");
                return;
            }
        };
        for task in runnable {
            let Ok(permit) = slots.clone().try_acquire_owned() else { break };
            let worker = self.clone();
            let targets = targets.clone();
            tokio::spawn(async move {
                let services = worker.services.clone();
                let lease = worker.config.lease;
                let ran = tokio::task::spawn_blocking(move || services.run_audit_task(&task, lease)).await;
                drop(permit);
                match ran {
                    Ok(Ok(Some(summary))) => worker.finished(summary, &targets).await,
                    Ok(Ok(None)) => {}
                    Ok(Err(error)) => tracing::warn!(%error, "audit task failed to run"),
                    Err(error) => tracing::warn!(%error, "audit task panicked"),
                }
            });
        }
    }

    /// Tells everyone a task ended: the channel, the listeners, the account's targets.
    async fn finished(&self, summary: AuditTaskSummary, targets: &NotificationTargets) {
        let summary = Arc::new(summary);
        let _ = self.finished.send(summary.clone());
        let listeners = self.listeners.clone();
        let for_listeners = summary.clone();
        let _ = tokio::task::spawn_blocking(move || {
            for listener in listeners {
                listener.audit_task_finished(&for_listeners);
            }
        })
        .await;
        targets.deliver(&self.services, &self.config.webhook, &summary).await;
    }
}
