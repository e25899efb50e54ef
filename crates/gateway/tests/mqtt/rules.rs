//! The rules engine on a broker: rules stored through the services (a real SQLite registry),
//! device messages published through real sessions, webhooks served by a local HTTP server.
//! These tests run in real time: the webhooks are real sockets.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use certfleet_egress::{Cidr, Egress, Policy};
use certfleet_gateway::identity::Identity;
use certfleet_gateway::rules::{
    AccountBudget, OverBudget, RuleBook, RulesConfig, RulesEngine, SystemDelivery, SystemSink,
};
use certfleet_mqtt::QoS;
use certfleet_pki::CertificateId;
use certfleet_services::{Caller, RuleAction, TopicRulePayload};
use certfleet_testkit::{World, world};
use serde_json::{Value as Json, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::sync::mpsc;

use crate::harness::*;

struct Rig {
    world: World,
    caller: Caller,
    harness: Harness,
    book: Arc<RuleBook>,
    engine: Arc<RulesEngine>,
}

/// An egress that lets the tests' webhooks on 127.0.0.1 receive (over plain http).
fn local_egress() -> Arc<Egress> {
    let policy = Policy {
        allow_http: true,
        allow: vec![Cidr::parse("127.0.0.1/32").unwrap()],
        response_timeout: Duration::from_secs(10),
        ..Policy::default()
    };
    Arc::new(Egress::new(policy, None))
}

/// A rig whose http actions may reach 127.0.0.1 (the tests' webhooks).
fn rig(config: RulesConfig) -> Rig {
    rig_with(config, local_egress())
}

fn rig_with(config: RulesConfig, egress: Arc<Egress>) -> Rig {
    let world = world();
    let caller = world.caller();
    let book = RuleBook::new(world.services.clone());
    let (engine, runner) = RulesEngine::new(config, book.clone(), egress);
    let harness = Harness::with_tap(engine.clone());
    runner.start(&harness.broker);
    Rig { world, caller, harness, book, engine }
}

impl Rig {
    fn device(&self, certificate: u32) -> Identity {
        Identity { account: self.caller.account.clone(), ..identity(ACCOUNT_A, certificate) }
    }

    fn rule(&self, name: &str, sql: &str, actions: Vec<RuleAction>, error_action: Option<RuleAction>) {
        for action in actions.iter().chain(error_action.as_ref()) {
            if let RuleAction::Http { url, .. } = action {
                self.destination(url);
            }
        }
        let payload = TopicRulePayload { sql: sql.into(), actions, error_action, ..TopicRulePayload::default() };
        self.world.services.create_topic_rule(&self.caller, name, &payload).unwrap();
        // What the change feed's TopicRule entry does on every node.
        self.book.forget(&self.caller.account);
    }
}

impl Rig {
    /// Creates and confirms a destination for `url` (as the API's confirmation flow would).
    fn destination(&self, url: &str) -> String {
        let pending = match self.world.services.create_topic_rule_destination(&self.caller, url) {
            Ok(pending) => pending,
            // Created for another rule of the test already.
            Err(certfleet_services::Error::AlreadyExists { resource_id, .. }) => return resource_id,
            Err(error) => panic!("{error}"),
        };
        self.world.services.confirm_topic_rule_destination(&self.caller, &pending.confirmation_token).unwrap();
        pending.destination.arn
    }
}

fn republish(topic: &str) -> RuleAction {
    RuleAction::Republish { topic: topic.into(), qos: 0, role_arn: "arn:aws:iam::123456789012:role/r".into() }
}

fn http(url: &str) -> RuleAction {
    RuleAction::Http { url: url.into(), headers: vec![("x-token".into(), "t1".into())] }
}

fn json_of(publish: &certfleet_mqtt::Publish) -> Json {
    serde_json::from_slice(&publish.payload).unwrap()
}

/// A webhook on 127.0.0.1: every request's headers and body go to the channel; it answers
/// `status` after `delay`. `answered` turns true once a first answer was sent.
struct Webhook {
    url: String,
    requests: mpsc::UnboundedReceiver<(String, Json)>,
    answered: Arc<AtomicBool>,
}

async fn webhook(status: u16, delay: Duration) -> Webhook {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/hook", listener.local_addr().unwrap());
    let (sender, requests) = mpsc::unbounded_channel();
    let answered = Arc::new(AtomicBool::new(false));
    let done = answered.clone();
    tokio::spawn(async move {
        loop {
            let Ok((mut stream, _)) = listener.accept().await else { return };
            let sender = sender.clone();
            let done = done.clone();
            tokio::spawn(async move {
                let mut buffer = Vec::new();
                let (head, body) = loop {
                    let mut chunk = [0u8; 4096];
                    let read = stream.read(&mut chunk).await.unwrap_or(0);
                    if read == 0 {
                        return;
                    }
                    buffer.extend_from_slice(&chunk[..read]);
                    let text = String::from_utf8_lossy(&buffer).into_owned();
                    if let Some((head, body)) = text.split_once("\r\n\r\n") {
                        let length = head
                            .lines()
                            .find_map(|line| {
                                line.to_ascii_lowercase().strip_prefix("content-length:").map(|n| n.trim().to_owned())
                            })
                            .and_then(|n| n.parse::<usize>().ok())
                            .unwrap_or(0);
                        if body.len() >= length {
                            break (head.to_owned(), body[..length].to_owned());
                        }
                    }
                };
                let _ = sender.send((head, serde_json::from_str(&body).unwrap_or(Json::Null)));
                tokio::time::sleep(delay).await;
                let answer = format!("HTTP/1.1 {status} X\r\ncontent-length: 0\r\nconnection: close\r\n\r\n");
                let _ = stream.write_all(answer.as_bytes()).await;
                done.store(true, Ordering::SeqCst);
            });
        }
    });
    Webhook { url, requests, answered }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn republish_sends_the_sql_output_and_where_filters() {
    let rig = rig(RulesConfig::default());
    rig.rule(
        "hot",
        "SELECT temp, clientid() AS device, topic(2) AS room FROM 'sensors/+' WHERE temp > 30",
        vec![republish("alerts/hot")],
        None,
    );
    let (mut subscriber, _) = rig.harness.connect(&rig.device(1), Options::v311("sub")).await;
    subscriber.subscribe_to("alerts/#", QoS::AtMostOnce).await;
    let (mut publisher, _) = rig.harness.connect(&rig.device(2), Options::v311("dev-2")).await;
    publisher.publish(publish("sensors/kitchen", r#"{"temp": 20}"#, QoS::AtMostOnce, None)).await;
    publisher.publish(publish("other/kitchen", r#"{"temp": 90}"#, QoS::AtMostOnce, None)).await;
    publisher.publish(publish("sensors/attic", r#"{"temp": 41, "x": 1}"#, QoS::AtLeastOnce, Some(1))).await;
    let alert = subscriber.receive().await;
    assert_eq!(topic(&alert), "alerts/hot");
    assert_eq!(json_of(&alert), json!({"temp": 41, "device": "dev-2", "room": "attic"}));
    subscriber.nothing().await;

    // A disabled rule no longer runs once the change feed says so.
    rig.world.services.set_topic_rule_disabled(&rig.caller, "hot", true).unwrap();
    rig.book.forget(&rig.caller.account);
    publisher.publish(publish("sensors/attic", r#"{"temp": 50}"#, QoS::AtMostOnce, None)).await;
    subscriber.nothing().await;
    assert_eq!(rig.engine.counters.republished.load(Ordering::Relaxed), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_posts_the_output_and_failures_run_the_error_action() {
    let rig = rig(RulesConfig::default());
    let mut ok = webhook(200, Duration::ZERO).await;
    let failing = webhook(500, Duration::ZERO).await;
    // A port nobody listens on: bind one, then close it.
    let closed = TcpListener::bind("127.0.0.1:0").await.unwrap().local_addr().unwrap();
    rig.rule("posted", "SELECT *, principal() AS cert FROM 'ok'", vec![http(&ok.url)], Some(republish("errors")));
    rig.rule("refused", "SELECT * FROM 'fails'", vec![http(&failing.url)], Some(republish("errors")));
    rig.rule(
        "unreachable",
        "SELECT * FROM 'nobody'",
        vec![http(&format!("http://{closed}/x"))],
        Some(republish("errors")),
    );
    let (mut subscriber, _) = rig.harness.connect(&rig.device(1), Options::v311("sub")).await;
    subscriber.subscribe_to("errors", QoS::AtMostOnce).await;
    let (mut publisher, _) = rig.harness.connect(&rig.device(7), Options::v311("dev-7")).await;

    publisher.publish(publish("ok", r#"{"a": 1}"#, QoS::AtMostOnce, None)).await;
    let (head, body) = tokio::time::timeout(Duration::from_secs(10), ok.requests.recv()).await.unwrap().unwrap();
    assert!(head.starts_with("POST /hook HTTP/1.1"), "{head}");
    assert!(head.to_ascii_lowercase().contains("x-token: t1"), "{head}");
    let certificate = CertificateId::parse(&format!("{:064x}", 7)).unwrap();
    assert_eq!(body, json!({"a": 1, "cert": certificate.as_str()}));
    subscriber.nothing().await;

    for (topic_name, resource) in [("fails", failing.url.clone()), ("nobody", format!("http://{closed}/x"))] {
        publisher.publish(publish(topic_name, "not json", QoS::AtMostOnce, None)).await;
        let report = json_of(&subscriber.receive().await);
        assert_eq!(report["topic"], topic_name);
        assert_eq!(report["clientId"], "dev-7");
        assert_eq!(report["base64OriginalPayload"], "bm90IGpzb24=");
        assert_eq!(report["failures"][0]["failedAction"], "HttpAction");
        assert_eq!(report["failures"][0]["failedResource"], resource.as_str());
        assert!(report["cloudwatchTraceId"].as_str().is_some_and(|id| id.len() == 36), "{report}");
        let message = report["failures"][0]["errorMessage"].as_str().unwrap().to_owned();
        if topic_name == "fails" {
            assert_eq!(report["ruleName"], "refused");
            assert!(message.contains("500"), "{message}");
        } else {
            assert_eq!(report["ruleName"], "unreachable");
            assert_eq!(message, certfleet_egress::UNREACHABLE);
        }
    }
    assert_eq!(rig.engine.counters.error_actions.load(Ordering::Relaxed), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_webhook_does_not_slow_the_broker() {
    let rig = rig(RulesConfig { http_timeout: Duration::from_secs(10), ..RulesConfig::default() });
    let mut slow = webhook(200, Duration::from_secs(5)).await;
    rig.rule("slow", "SELECT * FROM 'telemetry'", vec![http(&slow.url)], None);
    let (mut subscriber, _) = rig.harness.connect(&rig.device(1), Options::v311("sub")).await;
    subscriber.subscribe_to("telemetry", QoS::AtMostOnce).await;
    let (mut publisher, _) = rig.harness.connect(&rig.device(2), Options::v311("pub")).await;
    let started = std::time::Instant::now();
    for n in 0..100 {
        publisher.publish(publish("telemetry", &format!("{{\"n\": {n}}}"), QoS::AtMostOnce, None)).await;
        assert_eq!(json_of(&subscriber.receive().await), json!({"n": n}));
    }
    // Every message reached its subscriber while the webhook still held its first request.
    assert!(!slow.answered.load(Ordering::SeqCst), "delivery waited for the webhook");
    assert!(started.elapsed() < Duration::from_secs(5));
    let (_, first) = tokio::time::timeout(Duration::from_secs(10), slow.requests.recv()).await.unwrap().unwrap();
    assert!(first["n"].as_u64().is_some_and(|n| n < 100), "{first}");
    // Past the per-rule concurrency, the action fails at once rather than queueing (the runner
    // works through the 100 messages on its own task).
    until(|| rig.engine.counters.actions_failed.load(Ordering::Relaxed) > 0).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn republish_loops_are_capped() {
    let rig = rig(RulesConfig { max_depth: 3, ..RulesConfig::default() });
    rig.rule("echo", "SELECT * FROM 'loop'", vec![republish("loop")], None);
    let (mut subscriber, _) = rig.harness.connect(&rig.device(1), Options::v311("sub")).await;
    subscriber.subscribe_to("loop", QoS::AtMostOnce).await;
    let (mut publisher, _) = rig.harness.connect(&rig.device(2), Options::v311("pub")).await;
    publisher.publish(publish("loop", r#"{"x": 1}"#, QoS::AtMostOnce, None)).await;
    // The device's message, then one republish per depth 0..=3.
    for _ in 0..5 {
        assert_eq!(json_of(&subscriber.receive().await), json!({"x": 1}));
    }
    subscriber.nothing().await;
    assert_eq!(rig.engine.counters.loop_capped.load(Ordering::Relaxed), 1);
    assert_eq!(rig.engine.counters.republished.load(Ordering::Relaxed), 4);
}

#[derive(Default)]
struct Collected(Mutex<Vec<(String, String, String, String)>>, AtomicUsize);

impl SystemSink for Collected {
    fn deliver(&self, delivery: SystemDelivery<'_>) {
        self.1.fetch_add(1, Ordering::SeqCst);
        self.0.lock().unwrap().push((
            delivery.account.to_string(),
            String::from_utf8_lossy(delivery.output).into_owned(),
            delivery.topic.to_owned(),
            delivery.client_id.to_owned(),
        ));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn system_rules_reach_their_sink_for_every_account_and_stay_invisible() {
    let rig = rig(RulesConfig::default());
    let sink = Arc::new(Collected::default());
    rig.book
        .add_system_rule("csr_res", "SELECT clientid() as clientid, * FROM 'management/topic/+/csr_res'", sink.clone())
        .unwrap();
    assert!(rig.book.add_system_rule("bad", "SELECT FROM", sink.clone()).is_err());
    let (mut publisher, _) = rig.harness.connect(&rig.device(2), Options::v311("dev-2")).await;
    publisher.publish(publish("management/topic/dev-2/csr_res", r#"{"CSR": "x"}"#, QoS::AtLeastOnce, Some(1))).await;
    publisher.publish(publish("management/topic/dev-2/other", r#"{"CSR": "y"}"#, QoS::AtLeastOnce, Some(2))).await;
    for _ in 0..100 {
        if sink.1.load(Ordering::SeqCst) > 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    let delivered = sink.0.lock().unwrap().clone();
    assert_eq!(
        delivered,
        [(
            rig.caller.account.to_string(),
            r#"{"CSR":"x","clientid":"dev-2"}"#.to_owned(),
            "management/topic/dev-2/csr_res".to_owned(),
            "dev-2".to_owned()
        )]
    );
    let page = certfleet_registry::KeyPageRequest { limit: 10, after: None };
    let listed = rig
        .world
        .services
        .list_topic_rules(&rig.caller, &certfleet_registry::TopicRuleFilter::default(), &page)
        .unwrap();
    assert!(listed.items.is_empty(), "system rules are not the tenant's");
    assert!(rig.book.remove_system_rule("csr_res"));
}

/// Waits until `done` holds (the runner works on its own task), giving up after 30 s.
async fn until(done: impl Fn() -> bool) {
    for _ in 0..3000 {
        if done() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("the runner did not get through its queue");
}

/// The peak resident memory of this process, in KiB (`VmHWM`).
fn peak_rss_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let line = status.lines().find(|line| line.starts_with("VmHWM:")).unwrap();
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

/// The finding of issue 13: a 60-byte rule republishing `concat(x, x, ...)` to its own topic,
/// and one 13-byte publish, once grew each generation tenfold until the process aborted for
/// every tenant. Now the generation that would pass 128 KiB fails, the error action reports it,
/// the process's memory stays put, and another account's device is served meanwhile.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_self_republishing_concat_rule_cannot_hurt_the_server() {
    let peak_before = peak_rss_kib();
    let rig = rig(RulesConfig::default());
    rig.rule(
        "grow",
        "SELECT concat(x, x, x, x, x, x, x, x, x, x) AS x FROM 'loop'",
        vec![republish("loop")],
        Some(republish("errors")),
    );
    let (mut watcher, _) = rig.harness.connect(&rig.device(1), Options::v311("watcher")).await;
    watcher.subscribe_to("loop", QoS::AtMostOnce).await;
    let (mut errors, _) = rig.harness.connect(&rig.device(2), Options::v311("errors")).await;
    errors.subscribe_to("errors", QoS::AtMostOnce).await;
    let (mut attacker, _) = rig.harness.connect(&rig.device(3), Options::v311("attacker")).await;
    let seed = r#"{"x":"abcde"}"#;
    assert_eq!(seed.len(), 13);
    attacker.publish(publish("loop", seed, QoS::AtMostOnce, None)).await;

    // The device's message, then four generations (5 x 10^n characters), the last under 128 KiB.
    let mut sizes = Vec::new();
    for _ in 0..5 {
        let message = watcher.receive().await;
        assert!(message.payload.len() <= 128 * 1024);
        sizes.push(json_of(&message)["x"].as_str().unwrap().len());
    }
    assert_eq!(sizes, vec![5, 50, 500, 5_000, 50_000]);
    let report = json_of(&errors.receive().await);
    assert_eq!(report["ruleName"], "grow");
    assert_eq!(report["topic"], "loop");
    assert_eq!(report["failures"][0]["failedAction"], "RepublishAction");
    assert_eq!(report["failures"][0]["failedResource"], "loop");
    let message = report["failures"][0]["errorMessage"].as_str().unwrap();
    assert!(message.contains("larger than 131072 bytes"), "{message}");
    watcher.nothing().await;
    errors.nothing().await;
    assert_eq!(rig.engine.counters.evaluation_failed.load(Ordering::Relaxed), 1);
    assert_eq!(rig.engine.counters.error_actions.load(Ordering::Relaxed), 1);
    assert_eq!(rig.engine.counters.republished.load(Ordering::Relaxed), 5);

    // Another account's device connects and round-trips a message.
    let other = identity(ACCOUNT_B, 9);
    let (mut neighbour, _) = rig.harness.connect(&other, Options::v311("neighbour")).await;
    neighbour.subscribe_to("echo", QoS::AtLeastOnce).await;
    neighbour.publish(publish("echo", "still here", QoS::AtLeastOnce, Some(1))).await;
    assert_eq!(text(&neighbour.receive().await), "still here");
    // The bug allocated 1.6 GB; what a bounded evaluation needs is a few copies of 128 KiB.
    let grown_mib = peak_rss_kib().saturating_sub(peak_before) / 1024;
    assert!(grown_mib < 128, "peak memory grew by {grown_mib} MiB");
}

/// Account A floods its rules past its budget; account B's rule still runs, A's drops are
/// counted per account and cause (and shown in /metrics), and none are charged to B.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_account_over_its_budget_does_not_starve_another() {
    let budget = AccountBudget { messages_per_second: 1, ..AccountBudget::default() };
    let rig = rig(RulesConfig { account_budget: budget, ..RulesConfig::default() });
    rig.rule("a", "SELECT * FROM 'flood'", vec![republish("a/out")], None);
    let account_b = rig.world.caller();
    let payload = TopicRulePayload {
        sql: "SELECT *, 'b' AS by FROM 'in'".into(),
        actions: vec![republish("b/out")],
        ..TopicRulePayload::default()
    };
    rig.world.services.create_topic_rule(&account_b, "b", &payload).unwrap();
    rig.book.forget(&account_b.account);
    let device_b = |certificate| Identity { account: account_b.account.clone(), ..identity(ACCOUNT_A, certificate) };

    let (mut a_out, _) = rig.harness.connect(&rig.device(1), Options::v311("a-out")).await;
    a_out.subscribe_to("a/out", QoS::AtMostOnce).await;
    let (mut b_out, _) = rig.harness.connect(&device_b(2), Options::v311("b-out")).await;
    b_out.subscribe_to("b/out", QoS::AtMostOnce).await;
    let (mut flooder, _) = rig.harness.connect(&rig.device(3), Options::v311("flooder")).await;
    for n in 0..40 {
        flooder.publish(publish("flood", &format!(r#"{{"n": {n}}}"#), QoS::AtMostOnce, None)).await;
    }
    let (mut b_device, _) = rig.harness.connect(&device_b(4), Options::v311("b-device")).await;
    b_device.publish(publish("in", r#"{"v": 1}"#, QoS::AtLeastOnce, Some(1))).await;
    assert_eq!(json_of(&b_out.receive().await), json!({"v": 1, "by": "b"}));

    // The flood's first message ran; most of the rest were over A's budget.
    assert_eq!(json_of(&a_out.receive().await), json!({"n": 0}));
    let counters = &rig.engine.counters;
    let dropped_a = || {
        counters.over_budget(&rig.caller.account, OverBudget::Messages)
            + counters.over_budget(&rig.caller.account, OverBudget::QueueFull)
    };
    // Every message of A either ran (matched, besides B's one) or was dropped.
    until(|| dropped_a() + counters.matched.load(Ordering::Relaxed) == 41).await;
    assert!(dropped_a() >= 30, "{} of A's 40 messages dropped", dropped_a());
    for cause in OverBudget::ALL {
        assert_eq!(counters.over_budget(&account_b.account, cause), 0);
    }
    let mut metrics = String::new();
    certfleet_gateway::rules::render_metrics(counters, &mut metrics);
    let line =
        format!("certfleet_rules_dropped_over_budget_total{{account=\"{}\",cause=\"messages\"}} ", rig.caller.account);
    assert!(metrics.contains(&line), "{metrics}");
    assert!(!metrics.contains(&format!("account=\"{}\"", account_b.account)), "{metrics}");
}

/// An account whose rules spend their steps per second has its next messages dropped, counted
/// as `steps`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_account_over_its_step_budget_is_dropped() {
    // One step per second: after the first message's seven, the bucket stays below zero for
    // seven seconds, far longer than the test publishes.
    let budget = AccountBudget { steps_per_second: 1, ..AccountBudget::default() };
    let rig = rig(RulesConfig { account_budget: budget, ..RulesConfig::default() });
    // Seven nodes per evaluation: one message spends the bucket.
    rig.rule("costly", "SELECT VALUE concat(a, a, a, a, a, a) FROM 'costly'", vec![republish("costly/out")], None);
    let (mut out, _) = rig.harness.connect(&rig.device(1), Options::v311("out")).await;
    out.subscribe_to("costly/out", QoS::AtMostOnce).await;
    let (mut publisher, _) = rig.harness.connect(&rig.device(2), Options::v311("pub")).await;
    for _ in 0..20 {
        publisher.publish(publish("costly", r#"{"a": "x"}"#, QoS::AtMostOnce, None)).await;
    }
    assert_eq!(json_of(&out.receive().await), json!("xxxxxx"));
    let counters = &rig.engine.counters;
    let steps = || counters.over_budget(&rig.caller.account, OverBudget::Steps);
    // Every message either ran (matched) or was dropped, once the runner is through them.
    until(|| steps() + counters.matched.load(Ordering::Relaxed) == 20).await;
    assert!(steps() >= 15, "{} of 20 messages dropped", steps());
}

/// A listener on 127.0.0.1 counting the connections it accepts (and answering none).
async fn counting_listener() -> (String, Arc<AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let accepted = Arc::new(AtomicUsize::new(0));
    let count = accepted.clone();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            count.fetch_add(1, Ordering::SeqCst);
            drop(stream);
        }
    });
    (format!("127.0.0.1:{port}"), accepted)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn under_the_default_deny_list_a_tenant_cannot_reach_loopback_nor_tell_open_from_closed() {
    // The operator allows plain http, but keeps the default deny list.
    let egress = Arc::new(Egress::new(Policy { allow_http: true, ..Policy::default() }, None));
    let rig = rig_with(RulesConfig::default(), egress.clone());
    let (open, accepted) = counting_listener().await;
    let closed = TcpListener::bind("127.0.0.1:0").await.unwrap().local_addr().unwrap().to_string();
    let open_port = open.rsplit_once(':').unwrap().1.to_owned();
    let targets = [
        format!("http://{open}/x"),
        format!("http://{closed}/x"),
        format!("http://localhost:{open_port}/x"),
        format!("https://localhost:{open_port}/x"),
        format!("http://[::ffff:127.0.0.1]:{open_port}/x"),
    ];
    for (n, url) in targets.iter().enumerate() {
        rig.rule(
            &format!("probe{n}"),
            &format!("SELECT * FROM 'probe/{n}'"),
            vec![http(url)],
            Some(republish("errors")),
        );
    }
    let (mut subscriber, _) = rig.harness.connect(&rig.device(1), Options::v311("sub")).await;
    subscriber.subscribe_to("errors", QoS::AtMostOnce).await;
    let (mut attacker, _) = rig.harness.connect(&rig.device(2), Options::v311("attacker")).await;
    let mut messages = Vec::new();
    for n in 0..targets.len() {
        attacker.publish(publish(&format!("probe/{n}"), "{}", QoS::AtMostOnce, None)).await;
        let report = json_of(&subscriber.receive().await);
        messages.push(report["failures"][0]["errorMessage"].as_str().unwrap().to_owned());
    }
    // One generic message for open, closed, a name and an IPv4-mapped form; nothing connected.
    assert!(messages.iter().all(|message| message == certfleet_egress::UNREACHABLE), "{messages:?}");
    assert_eq!(accepted.load(Ordering::SeqCst), 0);
    assert_eq!(egress.counters.refused(certfleet_egress::Refusal::DeniedAddress), targets.len() as u64);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_disabled_or_deleted_destination_stops_its_http_actions() {
    let rig = rig(RulesConfig::default());
    let mut hook = webhook(200, Duration::ZERO).await;
    let arn = rig.destination(&hook.url);
    let payload = TopicRulePayload {
        sql: "SELECT * FROM 'd'".into(),
        actions: vec![http(&hook.url)],
        error_action: Some(republish("errors")),
        ..TopicRulePayload::default()
    };
    rig.world.services.create_topic_rule(&rig.caller, "d", &payload).unwrap();
    rig.book.forget(&rig.caller.account);
    let (mut subscriber, _) = rig.harness.connect(&rig.device(1), Options::v311("sub")).await;
    subscriber.subscribe_to("errors", QoS::AtMostOnce).await;
    let (mut publisher, _) = rig.harness.connect(&rig.device(2), Options::v311("pub")).await;
    publisher.publish(publish("d", r#"{"n": 1}"#, QoS::AtMostOnce, None)).await;
    let (_, body) = tokio::time::timeout(Duration::from_secs(10), hook.requests.recv()).await.unwrap().unwrap();
    assert_eq!(body, json!({"n": 1}));

    let disabled = certfleet_registry::DestinationStatus::Disabled;
    rig.world.services.update_topic_rule_destination(&rig.caller, &arn, disabled).unwrap();
    rig.book.forget(&rig.caller.account);
    publisher.publish(publish("d", r#"{"n": 2}"#, QoS::AtMostOnce, None)).await;
    let report = json_of(&subscriber.receive().await);
    assert!(report["failures"][0]["errorMessage"].as_str().unwrap().contains("destination"), "{report}");

    rig.world.services.delete_topic_rule_destination(&rig.caller, &arn).unwrap();
    rig.book.forget(&rig.caller.account);
    publisher.publish(publish("d", r#"{"n": 3}"#, QoS::AtMostOnce, None)).await;
    let report = json_of(&subscriber.receive().await);
    assert!(report["failures"][0]["errorMessage"].as_str().unwrap().contains("destination"), "{report}");
    assert!(hook.requests.try_recv().is_err(), "nothing sent once the destination was disabled");
}
