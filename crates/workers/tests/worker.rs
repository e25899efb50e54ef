//! The audit worker end to end on a testkit world: a task started through the services is run
//! in the background, its webhook gets AWS's notification body (after two refusals, retried with
//! backoff), and the listener and the completion channel hear of it.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use certfleet_egress::{Cidr, Egress, Policy, Purpose};
use certfleet_registry::{AuditCheckConfiguration, AuditNotificationTarget, AuditTaskStatus};
use certfleet_services::{AuditConfigurationUpdate, AuditListener, AuditTaskSummary};
use certfleet_testkit::world;
use certfleet_workers::notify::WebhookConfig;
use certfleet_workers::{AuditWorker, Config, NotificationTargets, Webhook};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::sync::{mpsc, watch};

/// Webhook settings whose egress lets the tests' receivers on 127.0.0.1 get requests (plain
/// http allowed, 127.0.0.1/32 allow-listed).
fn local() -> WebhookConfig {
    WebhookConfig { egress: local_egress(None), ..WebhookConfig::default() }
}

fn local_egress(roots: Option<Arc<rustls::RootCertStore>>) -> Arc<Egress> {
    let policy = Policy { allow_http: true, allow: vec![Cidr::parse("127.0.0.1/32").unwrap()], ..Policy::default() };
    Arc::new(Egress::new(policy, roots))
}

fn account() -> certfleet_registry::AccountId {
    certfleet_registry::AccountId::parse("123456789012").unwrap()
}

/// An HTTP server on 127.0.0.1:0 answering each POST with the next status of `statuses` (200
/// once they run out) and sending every request body to the returned channel.
async fn receiver(statuses: Vec<u16>) -> (String, mpsc::UnboundedReceiver<(u16, String)>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/hooks/audit", listener.local_addr().unwrap());
    let (sender, bodies) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        let mut statuses = statuses.into_iter();
        loop {
            let (mut stream, _) = listener.accept().await.unwrap();
            let mut request = Vec::new();
            let mut buffer = [0u8; 4096];
            let body = loop {
                let read = stream.read(&mut buffer).await.unwrap();
                if read == 0 {
                    break None;
                }
                request.extend_from_slice(&buffer[..read]);
                let text = String::from_utf8_lossy(&request).to_string();
                if let Some((head, body)) = text.split_once("\r\n\r\n") {
                    let length = head
                        .lines()
                        .find_map(|line| {
                            line.to_ascii_lowercase()
                                .strip_prefix("content-length:")
                                .map(|v| v.trim().parse::<usize>().unwrap())
                        })
                        .unwrap_or(0);
                    if body.len() >= length {
                        break Some(body.to_owned());
                    }
                }
            };
            let Some(body) = body else { continue };
            let status = statuses.next().unwrap_or(200);
            let _ = sender.send((status, body));
            let reply = format!("HTTP/1.1 {status} X\r\ncontent-length: 0\r\nconnection: close\r\n\r\n");
            let _ = stream.write_all(reply.as_bytes()).await;
        }
    });
    (url, bodies)
}

#[tokio::test]
async fn a_webhook_is_retried_with_backoff_until_it_accepts() {
    let (url, mut bodies) = receiver(vec![500, 500]).await;
    let hook = Webhook::parse(&url).unwrap();
    let config = WebhookConfig {
        attempts: 4,
        initial_backoff: Duration::from_millis(20),
        timeout: Duration::from_secs(5),
        ..local()
    };
    let started = std::time::Instant::now();
    let attempts = hook
        .deliver(&account(), Purpose::AuditNotification, &serde_json::json!({"taskId": "t1"}), &config)
        .await
        .unwrap();
    assert_eq!(attempts, 3);
    assert!(started.elapsed() >= Duration::from_millis(60), "backoff 20 ms then 40 ms");
    for expected in [500, 500, 200] {
        let (status, body) = bodies.recv().await.unwrap();
        assert_eq!((status, body.as_str()), (expected, r#"{"taskId":"t1"}"#));
    }

    // Bounded: a receiver that always fails is given up on.
    let (url, _bodies) = receiver(vec![500; 10]).await;
    let config = WebhookConfig {
        attempts: 2,
        initial_backoff: Duration::from_millis(1),
        timeout: Duration::from_secs(5),
        ..local()
    };
    let error = Webhook::parse(&url)
        .unwrap()
        .deliver(&account(), Purpose::AuditNotification, &serde_json::json!({}), &config)
        .await
        .unwrap_err();
    assert!(error.to_string().contains("after 2 attempts"), "{error}");
    assert!(Webhook::parse("ftp://example.com/x").is_err());
}

struct Recorder(Mutex<Vec<String>>);

impl AuditListener for Recorder {
    fn audit_task_finished(&self, summary: &AuditTaskSummary) {
        self.0.lock().unwrap().push(summary.task.id.clone());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_worker_runs_tasks_and_notifies_the_webhook_and_listeners() {
    let world = world();
    let caller = world.caller();
    let (url, mut bodies) = receiver(vec![500, 500]).await;
    world
        .services
        .update_account_audit_configuration(
            &caller,
            &AuditConfigurationUpdate {
                role_arn: Some("arn:aws:iam::123456789012:role/audit".into()),
                targets: BTreeMap::from([(
                    "SNS".to_owned(),
                    AuditNotificationTarget { target_arn: Some(url), role_arn: None, enabled: true },
                )]),
                checks: BTreeMap::from([(
                    "CA_CERTIFICATE_EXPIRING_CHECK".to_owned(),
                    AuditCheckConfiguration { enabled: true, configuration: BTreeMap::new() },
                )]),
            },
        )
        .unwrap();
    let config = Config {
        poll_interval: Duration::from_millis(20),
        webhook: WebhookConfig {
            attempts: 5,
            initial_backoff: Duration::from_millis(10),
            timeout: Duration::from_secs(5),
            ..local()
        },
        ..Config::default()
    };
    let recorder = Arc::new(Recorder(Mutex::new(Vec::new())));
    let mut worker = AuditWorker::new(world.services.clone(), config);
    worker.add_listener(recorder.clone());
    let mut completions = worker.subscribe();
    let (stop, stopped) = watch::channel(false);
    let running = tokio::spawn(worker.run(NotificationTargets::webhooks_only(), stopped));

    let task_id =
        world.services.start_on_demand_audit_task(&caller, &["CA_CERTIFICATE_EXPIRING_CHECK".into()]).unwrap();
    let summary = tokio::time::timeout(Duration::from_secs(10), completions.recv()).await.unwrap().unwrap();
    assert_eq!((summary.task.id.as_str(), summary.task.status), (task_id.as_str(), AuditTaskStatus::Completed));
    let mut delivered = None;
    for _ in 0..3 {
        let (status, body) = tokio::time::timeout(Duration::from_secs(10), bodies.recv()).await.unwrap().unwrap();
        delivered = Some((status, body));
    }
    let (status, body) = delivered.unwrap();
    assert_eq!(status, 200);
    let body: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(body["accountId"], caller.account.to_string());
    assert_eq!(body["taskId"], task_id);
    assert_eq!(body["taskStatus"], "COMPLETED");
    assert_eq!(body["taskType"], "ON_DEMAND_AUDIT_TASK");
    assert_eq!(body["compliantChecksCount"], 1);
    assert_eq!(body["totalChecksCount"], 1);
    assert_eq!(body["auditDetails"][0]["checkName"], "CA_CERTIFICATE_EXPIRING_CHECK");
    assert_eq!(body["auditDetails"][0]["checkRunStatus"], "COMPLETED_COMPLIANT");
    assert!(body["taskStartTime"].is_i64());
    assert_eq!(recorder.0.lock().unwrap().as_slice(), [task_id]);

    let _ = stop.send(true);
    tokio::time::timeout(Duration::from_secs(5), running).await.unwrap().unwrap();
}

struct Topics(Mutex<Vec<(String, String, serde_json::Value)>>);

impl certfleet_workers::MqttPublisher for Topics {
    fn publish(&self, account: &certfleet_registry::AccountId, topic: &str, payload: bytes::Bytes) -> bool {
        let body = serde_json::from_slice(&payload).unwrap();
        self.0.lock().unwrap().push((account.to_string(), topic.to_owned(), body));
        true
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_mqtt_target_gets_the_notification_and_an_sns_arn_is_not_delivered() {
    let world = world();
    let caller = world.caller();
    world
        .services
        .update_account_audit_configuration(
            &caller,
            &AuditConfigurationUpdate {
                role_arn: Some("arn:aws:iam::123456789012:role/audit".into()),
                targets: BTreeMap::from([(
                    "SNS".to_owned(),
                    AuditNotificationTarget {
                        target_arn: Some("mqtt:ops/audits".into()),
                        role_arn: None,
                        enabled: true,
                    },
                )]),
                checks: BTreeMap::from([(
                    "CA_CERTIFICATE_EXPIRING_CHECK".to_owned(),
                    AuditCheckConfiguration { enabled: true, configuration: BTreeMap::new() },
                )]),
            },
        )
        .unwrap();
    let task_id =
        world.services.start_on_demand_audit_task(&caller, &["CA_CERTIFICATE_EXPIRING_CHECK".into()]).unwrap();
    let task = world.services.runnable_audit_tasks(1).unwrap().remove(0);
    let summary = world.services.run_audit_task(&task, time::Duration::minutes(1)).unwrap().unwrap();
    let topics = Arc::new(Topics(Mutex::new(Vec::new())));
    let targets = NotificationTargets::with_mqtt(topics.clone());
    targets.deliver(&world.services, &local(), &summary).await;
    {
        let published = topics.0.lock().unwrap();
        assert_eq!(published.len(), 1);
        let (account, topic, body) = &published[0];
        assert_eq!((account.as_str(), topic.as_str()), (caller.account.to_string().as_str(), "ops/audits"));
        assert_eq!(body["taskId"], task_id);
    }

    // A real SNS topic is stored but not delivered anywhere.
    world
        .services
        .update_account_audit_configuration(
            &caller,
            &AuditConfigurationUpdate {
                targets: BTreeMap::from([(
                    "SNS".to_owned(),
                    AuditNotificationTarget {
                        target_arn: Some("arn:aws:sns:us-east-1:123456789012:audits".into()),
                        role_arn: None,
                        enabled: true,
                    },
                )]),
                ..Default::default()
            },
        )
        .unwrap();
    targets.deliver(&world.services, &local(), &summary).await;
    assert_eq!(topics.0.lock().unwrap().len(), 1);
}

#[tokio::test]
async fn an_https_webhook_is_verified_against_the_configured_roots() {
    use certfleet_pki::{Issuer, KeyAlgorithm};
    use rustls_pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};

    let now = time::OffsetDateTime::now_utc();
    let root =
        Issuer::generate_root("webhook root", "test", time::Duration::days(1), KeyAlgorithm::EcdsaP256, now).unwrap();
    let (certificate, key) = root
        .issue_server_certificate(
            "webhook",
            &["127.0.0.1".to_owned()],
            time::Duration::days(1),
            KeyAlgorithm::EcdsaP256,
            now,
        )
        .unwrap();
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let server = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(
            vec![CertificateDer::from(certificate.der().to_vec())],
            PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.to_vec())),
        )
        .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(server));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("https://{}/hook", listener.local_addr().unwrap());
    let (sender, mut bodies) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        loop {
            let (stream, _) = listener.accept().await.unwrap();
            let Ok(mut tls) = acceptor.accept(stream).await else { continue };
            let mut request = Vec::new();
            let mut buffer = [0u8; 4096];
            while !String::from_utf8_lossy(&request).contains("}") {
                let read = tls.read(&mut buffer).await.unwrap();
                if read == 0 {
                    break;
                }
                request.extend_from_slice(&buffer[..read]);
            }
            let text = String::from_utf8_lossy(&request).to_string();
            let _ = sender.send(text.split_once("\r\n\r\n").map(|(_, body)| body.to_owned()).unwrap_or_default());
            let _ = tls.write_all(b"HTTP/1.1 204 No Content\r\nconnection: close\r\n\r\n").await;
            let _ = tls.shutdown().await;
        }
    });

    let dir = certfleet_testkit::TempDir::new("webhook-roots");
    let bundle = dir.path().join("roots.pem");
    std::fs::write(&bundle, root.certificate().to_pem()).unwrap();
    let roots = |path: &std::path::Path| {
        use rustls_pki_types::pem::PemObject;
        let mut roots = rustls::RootCertStore::empty();
        roots.add_parsable_certificates(CertificateDer::pem_file_iter(path).unwrap().flatten());
        Some(Arc::new(roots))
    };
    let trusted = WebhookConfig { attempts: 1, egress: local_egress(roots(&bundle)), ..WebhookConfig::default() };
    let hook = Webhook::parse(&url).unwrap();
    assert_eq!(
        hook.deliver(&account(), Purpose::AuditNotification, &serde_json::json!({"taskId": "t2"}), &trusted)
            .await
            .unwrap(),
        1
    );
    assert_eq!(bodies.recv().await.unwrap(), r#"{"taskId":"t2"}"#);

    // Against other roots the server is not trusted and nothing is sent.
    let other =
        Issuer::generate_root("other root", "test", time::Duration::days(1), KeyAlgorithm::EcdsaP256, now).unwrap();
    let other_bundle = dir.path().join("other.pem");
    std::fs::write(&other_bundle, other.certificate().to_pem()).unwrap();
    let untrusted =
        WebhookConfig { attempts: 1, egress: local_egress(roots(&other_bundle)), ..WebhookConfig::default() };
    assert!(hook.deliver(&account(), Purpose::AuditNotification, &serde_json::json!({}), &untrusted).await.is_err());
    assert!(bodies.try_recv().is_err());
}

#[tokio::test]
async fn under_the_default_policy_a_webhook_never_reaches_loopback_and_is_not_retried_for_plain_http() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let accepted = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let count = accepted.clone();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            count.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            drop(stream);
        }
    });
    let config = WebhookConfig { initial_backoff: Duration::from_millis(1), ..WebhookConfig::default() };
    let body = serde_json::json!({"taskId": "t"});
    // https only: a plain http target fails at once, without retries.
    let hook = Webhook::parse(&format!("http://127.0.0.1:{port}/x")).unwrap();
    let error = hook.deliver(&account(), Purpose::AuditNotification, &body, &config).await.unwrap_err();
    assert!(matches!(error, certfleet_workers::notify::Error::Egress(_)), "{error}");
    // https to loopback, by address or by name: denied on the resolved address, retried a
    // bounded number of times, with the generic message.
    for url in [format!("https://127.0.0.1:{port}/x"), format!("https://localhost:{port}/x")] {
        let error = Webhook::parse(&url)
            .unwrap()
            .deliver(&account(), Purpose::AuditNotification, &body, &config)
            .await
            .unwrap_err();
        assert!(error.to_string().contains("after 5 attempts"), "{error}");
        assert!(error.to_string().contains(certfleet_egress::UNREACHABLE), "{error}");
    }
    assert_eq!(accepted.load(std::sync::atomic::Ordering::SeqCst), 0);
    assert_eq!(config.egress.counters.refused(certfleet_egress::Refusal::DeniedAddress), 10);
}
