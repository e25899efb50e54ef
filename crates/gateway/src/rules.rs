//! The rules engine of a gateway node: topic rules run off the publish path.
//!
//! 1. A device's PUBLISH, once authorized, is handed to the broker's [`PublishTap`] on the node
//!    where it arrived (not once per node the fabric delivers to). The [`RulesEngine`]'s tap only
//!    pushes it into a bounded queue, made of one sub-queue per account served in turn (round
//!    robin), so one account's backlog never delays another's messages by more than one message
//!    per account: when the queue or the account's sub-queue is full the message is not run
//!    through the rules and the drop is counted ([`RulesCounters::dropped_queue_full`],
//!    [`OverBudget::QueueFull`]). The broker never waits for the rules.
//! 2. One runner task per node takes messages from the queue and charges them to their account's
//!    budget ([`AccountBudget`]: messages and evaluation steps per second, token buckets); a
//!    message over budget is dropped, counted per account and cause ([`OverBudget`]) and logged
//!    once per cause per [`LOG_INTERVAL`]. It finds the account's enabled rules in the
//!    [`RuleBook`] (loaded from the services on first use, forgotten on every `TopicRule` entry of
//!    the change feed, see `follow`) plus the [`system rules`](RuleBook::add_system_rule), and
//!    evaluates each rule whose `FROM` filter matches (`certfleet-rules`) within
//!    [`RulesConfig::limits`]: no value larger than the message size limit, a step budget, bounded
//!    depth. An evaluation that hits a bound fails every action of the rule (the error action
//!    runs).
//! 3. Actions: `republish` publishes the output into the account's topic space through the broker
//!    as a server-originated message (`publisher: None`), refused past the broker's message size
//!    limit, and feeds it back into the queue, as AWS lets a republished message trigger rules; a
//!    message is fed back at most [`RulesConfig::max_depth`] times, and a device message and all
//!    the messages republished from it at most [`RulesConfig::max_chain_bytes`] (then counted in
//!    [`RulesCounters::loop_capped`] or [`RulesCounters::loop_bytes_capped`] and logged).
//!    `http` POSTs the output on its own task through the node's egress policy
//!    (`certfleet-egress`: https only unless allowed, the deny list checked on the resolved
//!    address, per-account bounds), at most [`HTTP_CONCURRENCY_PER_RULE`] at once per rule, each
//!    bounded by [`RulesConfig::http_timeout`] too, and only when its URL is under an ENABLED
//!    topic rule destination of the account: a slow webhook holds neither the runner nor the
//!    broker.
//! 4. An action that fails (a webhook answering other than 2xx, unreachable, too slow, too busy)
//!    runs the rule's error action with AWS's error payload (`ruleName`, `topic`,
//!    `cloudwatchTraceId`, `clientId`, `base64OriginalPayload`, `failures`). An http failure's
//!    `errorMessage` is the egress's tenant message: one generic text for refused, closed,
//!    unreachable and slow, so the error action does not map the network.
//!
//! System rules are certfleet's own rules (the rotation service's): they match the topics of
//! every account, are invisible to the API, and hand their output to an in-process
//! [`SystemSink`] instead of running actions.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use base64::Engine as _;
use bytes::Bytes;
use certfleet_egress::{Egress, Purpose};
use certfleet_mqtt::{Properties, QoS, TopicName};
use certfleet_pki::CertificateId;
use certfleet_registry::AccountId;
use certfleet_rules::{Context, Limits, NoOutput, Output, ParseError, Rule};
use certfleet_services::{RuleAction, RunnableRule, Services};
use tokio::sync::{Notify, Semaphore};

use crate::broker::now_ms;
pub use crate::broker::{Broker, PublishTap, Published};
use crate::fabric::Message;

/// What a system rule hands its sink for each message it matched.
#[derive(Debug)]
pub struct SystemDelivery<'a> {
    pub account: &'a AccountId,
    /// The system rule's name.
    pub rule: &'a str,
    /// The rule's output (JSON text, or raw bytes for `SELECT *` of a non-JSON payload).
    pub output: &'a [u8],
    pub topic: &'a str,
    pub client_id: &'a str,
    /// The publisher's certificate id.
    pub principal: Option<&'a CertificateId>,
}

/// Where a system rule's output goes, in process. Called on the rules runner task: it must
/// return quickly (hand the delivery to its own queue or task), or it holds up every rule of
/// the node.
pub trait SystemSink: Send + Sync {
    fn deliver(&self, delivery: SystemDelivery<'_>);
}

/// http requests of one rule in flight at once on a node; past it the action fails (and the
/// error action runs).
pub const HTTP_CONCURRENCY_PER_RULE: usize = 16;

/// Settings of the rules engine.
#[derive(Clone, Debug)]
pub struct RulesConfig {
    /// Messages waiting for the runner, all accounts together; more are dropped and counted.
    /// Default 10,000.
    pub queue_capacity: usize,
    /// Bytes (payloads and topics) waiting for the runner, all accounts together; more are
    /// dropped and counted as a full queue. Default 64 MiB.
    pub queue_bytes: usize,
    /// How many times a message republished by rules is fed back into the rules. Default 8.
    pub max_depth: u8,
    /// Bytes a device message and the messages republished from it may feed back into the
    /// rules, all generations together (each fed-back message costs its payload, its topic and
    /// [`CHAIN_COST_PER_MESSAGE`]). Default 1 MiB.
    pub max_chain_bytes: usize,
    /// The bounds of one rule evaluation; `max_value_bytes` should be the broker's message size
    /// limit. Default [`Limits::default`] (128 KiB, 10,000 steps).
    pub limits: Limits,
    /// What one account's rules may spend on this node.
    pub account_budget: AccountBudget,
    /// The longest an http action may take, connection included (the egress policy's own
    /// bounds apply too). Default 3 s.
    pub http_timeout: Duration,
}

impl Default for RulesConfig {
    fn default() -> Self {
        RulesConfig {
            queue_capacity: 10_000,
            queue_bytes: 64 * 1024 * 1024,
            max_depth: 8,
            max_chain_bytes: 1024 * 1024,
            limits: Limits::default(),
            account_budget: AccountBudget::default(),
            http_timeout: Duration::from_secs(3),
        }
    }
}

/// What one account's rules may spend on a node: token buckets holding one second's worth,
/// refilled continuously, and a share of the queue.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AccountBudget {
    /// Messages (a device's, or republished by a rule) run through the account's rules per
    /// second. Default 1,000.
    pub messages_per_second: u32,
    /// Evaluation steps the account's rules may take per second (see [`Limits::max_steps`]); a
    /// message finding the bucket empty is dropped. Default 1,000,000.
    pub steps_per_second: u64,
    /// Messages of one account waiting for the runner; more are dropped. Default 1,000.
    pub queue_capacity: usize,
}

impl Default for AccountBudget {
    fn default() -> Self {
        AccountBudget { messages_per_second: 1_000, steps_per_second: 1_000_000, queue_capacity: 1_000 }
    }
}

/// What a fed-back message costs the chain's byte budget besides its payload and topic, so that
/// empty messages cannot loop for free.
pub const CHAIN_COST_PER_MESSAGE: usize = 64;

/// A cause of drops or caps is logged at most once per interval (with the count so far).
pub const LOG_INTERVAL: Duration = Duration::from_secs(10);

/// Why a message of an account was not run through the rules: the account is over its budget.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum OverBudget {
    /// The account's sub-queue was full.
    QueueFull,
    /// The account's messages per second were spent.
    Messages,
    /// The account's evaluation steps per second were spent.
    Steps,
}

impl OverBudget {
    pub const ALL: [OverBudget; 3] = [OverBudget::QueueFull, OverBudget::Messages, OverBudget::Steps];

    /// The metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            OverBudget::QueueFull => "queue_full",
            OverBudget::Messages => "messages",
            OverBudget::Steps => "steps",
        }
    }
}

/// What is logged at most once per [`LOG_INTERVAL`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
enum LogCause {
    QueueFull,
    OverBudget(OverBudget),
    LoopDepth,
    LoopBytes,
    EvaluationFailed,
    ActionFailed,
}

/// The engine's counters.
#[derive(Debug, Default)]
pub struct RulesCounters {
    /// Messages taken into the queue.
    pub queued: AtomicU64,
    /// Messages not run through the rules because the queue was full.
    pub dropped_queue_full: AtomicU64,
    /// Rule evaluations that produced an output.
    pub matched: AtomicU64,
    pub republished: AtomicU64,
    pub http_succeeded: AtomicU64,
    /// Actions that failed (and ran the error action, if any).
    pub actions_failed: AtomicU64,
    pub error_actions: AtomicU64,
    /// Republished messages not fed back into the rules: the depth cap was reached.
    pub loop_capped: AtomicU64,
    /// Republished messages not fed back: their chain's byte budget was spent.
    pub loop_bytes_capped: AtomicU64,
    /// Rule evaluations that hit a bound (output size, steps, depth): the rule's actions failed.
    pub evaluation_failed: AtomicU64,
    /// Republish actions refused: the output is over the broker's message size limit.
    pub republish_too_large: AtomicU64,
    pub system_deliveries: AtomicU64,
    /// Messages dropped because their account was over budget, by account and cause.
    over_budget: Mutex<HashMap<(AccountId, OverBudget), u64>>,
    /// When each cause was last logged.
    logged: Mutex<HashMap<LogCause, Instant>>,
}

impl RulesCounters {
    /// How many messages of `account` were dropped for `cause`.
    pub fn over_budget(&self, account: &AccountId, cause: OverBudget) -> u64 {
        lock(&self.over_budget).get(&(account.clone(), cause)).copied().unwrap_or(0)
    }

    /// Counts a drop of `account`'s message; returns the count for the account and cause.
    fn count_over_budget(&self, account: &AccountId, cause: OverBudget) -> u64 {
        let mut counts = lock(&self.over_budget);
        let count = counts.entry((account.clone(), cause)).or_insert(0);
        *count += 1;
        *count
    }

    /// Whether `cause` may be logged now (at most once per [`LOG_INTERVAL`]).
    fn may_log(&self, cause: LogCause) -> bool {
        let now = Instant::now();
        let mut logged = lock(&self.logged);
        match logged.get(&cause) {
            Some(last) if now.duration_since(*last) < LOG_INTERVAL => false,
            _ => {
                logged.insert(cause, now);
                true
            }
        }
    }
}

/// The engine's counters in the Prometheus text format.
pub fn render_metrics(counters: &RulesCounters, out: &mut String) {
    crate::metrics::counters(
        out,
        "certfleet_rules",
        &[
            ("queued", "Device messages queued for the rules.", &counters.queued),
            (
                "dropped_queue_full",
                "Messages not run through the rules: the queue was full.",
                &counters.dropped_queue_full,
            ),
            ("matched", "Rule evaluations that produced an output.", &counters.matched),
            ("republished", "Messages republished by rules.", &counters.republished),
            ("http_succeeded", "http actions answered with 2xx.", &counters.http_succeeded),
            ("actions_failed", "Rule actions that failed.", &counters.actions_failed),
            ("error_actions", "Error actions run.", &counters.error_actions),
            ("loop_capped", "Republished messages not fed back: the loop cap was reached.", &counters.loop_capped),
            (
                "loop_bytes_capped",
                "Republished messages not fed back: the chain's byte budget was spent.",
                &counters.loop_bytes_capped,
            ),
            (
                "evaluation_failed",
                "Rule evaluations that hit a bound (output size, steps, depth).",
                &counters.evaluation_failed,
            ),
            (
                "republish_too_large",
                "Republish actions refused: over the message size limit.",
                &counters.republish_too_large,
            ),
            ("system_deliveries", "Outputs handed to system rule sinks.", &counters.system_deliveries),
        ],
    );
    use std::fmt::Write;
    let _ = writeln!(
        out,
        "# HELP certfleet_rules_dropped_over_budget_total Messages not run through the rules: their account was over budget, by account and cause.\n# TYPE certfleet_rules_dropped_over_budget_total counter"
    );
    let mut counts: Vec<_> = lock(&counters.over_budget).iter().map(|(key, count)| (key.clone(), *count)).collect();
    counts.sort_by(|((left, left_cause), _), ((right, right_cause), _)| {
        (left.as_str(), left_cause.as_str()).cmp(&(right.as_str(), right_cause.as_str()))
    });
    for ((account, cause), count) in counts {
        let _ = writeln!(
            out,
            "certfleet_rules_dropped_over_budget_total{{account=\"{account}\",cause=\"{}\"}} {count}",
            cause.as_str()
        );
    }
}

/// A tenant rule as the runner holds it.
struct LoadedRule {
    rule: RunnableRule,
    http_slots: Arc<Semaphore>,
}

struct SystemRule {
    name: String,
    statement: Rule,
    sink: Arc<dyn SystemSink>,
}

type RuleSet = Arc<Vec<Arc<LoadedRule>>>;

/// The rules of this node: per account, its enabled rules compiled (a cache kept true by the
/// change feed), and the system rules.
pub struct RuleBook {
    /// The engine's counters (the metrics listener reads them through the gateway).
    pub counters: Arc<RulesCounters>,
    services: Arc<Services>,
    accounts: Mutex<HashMap<AccountId, RuleSet>>,
    /// Bumped by every [`forget`](Self::forget), so that a load racing a change is not cached.
    generation: AtomicU64,
    system: Mutex<Vec<Arc<SystemRule>>>,
    /// When loading an account's rules last failed: no new attempt for [`LOAD_RETRY`], so a
    /// registry outage is not hammered once per message.
    failed_loads: Mutex<HashMap<AccountId, std::time::Instant>>,
}

/// How long after a failed load an account's messages run no tenant rules before trying again.
const LOAD_RETRY: Duration = Duration::from_secs(1);

impl RuleBook {
    pub fn new(services: Arc<Services>) -> Arc<Self> {
        Arc::new(RuleBook {
            counters: Arc::new(RulesCounters::default()),
            services,
            accounts: Mutex::new(HashMap::new()),
            generation: AtomicU64::new(0),
            system: Mutex::new(Vec::new()),
            failed_loads: Mutex::new(HashMap::new()),
        })
    }

    /// Installs a system rule: `sql` is evaluated for the messages of every account, and its
    /// output handed to `sink`. A name used already replaces that rule.
    pub fn add_system_rule(&self, name: &str, sql: &str, sink: Arc<dyn SystemSink>) -> Result<(), ParseError> {
        let statement = Rule::parse(sql)?;
        let mut system = lock(&self.system);
        system.retain(|rule| rule.name != name);
        system.push(Arc::new(SystemRule { name: name.to_owned(), statement, sink }));
        tracing::info!(rule = name, sql, "system rule installed");
        Ok(())
    }

    /// Removes a system rule. Returns whether it was there.
    pub fn remove_system_rule(&self, name: &str) -> bool {
        let mut system = lock(&self.system);
        let before = system.len();
        system.retain(|rule| rule.name != name);
        system.len() != before
    }

    /// Forgets an account's rules (a `TopicRule` change-feed entry): reloaded on next use.
    pub fn forget(&self, account: &AccountId) {
        self.generation.fetch_add(1, Ordering::SeqCst);
        lock(&self.accounts).remove(account);
    }

    /// Forgets every account's rules.
    pub fn forget_all(&self) {
        self.generation.fetch_add(1, Ordering::SeqCst);
        lock(&self.accounts).clear();
    }

    async fn rules_for(&self, account: &AccountId) -> RuleSet {
        if let Some(rules) = lock(&self.accounts).get(account) {
            return rules.clone();
        }
        if lock(&self.failed_loads).get(account).is_some_and(|failed| failed.elapsed() < LOAD_RETRY) {
            return Arc::new(Vec::new());
        }
        let generation = self.generation.load(Ordering::SeqCst);
        let services = self.services.clone();
        let owner = account.clone();
        let loaded = tokio::task::spawn_blocking(move || services.runnable_topic_rules(&owner)).await;
        let rules = match loaded {
            Ok(Ok(rules)) => rules,
            Ok(Err(error)) => {
                tracing::warn!(%account, %error, "cannot load the account's topic rules; retrying in a second");
                lock(&self.failed_loads).insert(account.clone(), std::time::Instant::now());
                return Arc::new(Vec::new());
            }
            Err(_) => return Arc::new(Vec::new()),
        };
        lock(&self.failed_loads).remove(account);
        let set: RuleSet = Arc::new(
            rules
                .into_iter()
                .map(|rule| {
                    Arc::new(LoadedRule { rule, http_slots: Arc::new(Semaphore::new(HTTP_CONCURRENCY_PER_RULE)) })
                })
                .collect(),
        );
        let mut accounts = lock(&self.accounts);
        if self.generation.load(Ordering::SeqCst) == generation {
            accounts.insert(account.clone(), set.clone());
        }
        set
    }

    /// Whether a message on `topic` could fire a system rule or a rule of `account`: the tap's
    /// filter, so that messages no rule reads never enter the queue. An account whose rules are
    /// not loaded yet may (the runner loads them with its first message).
    pub fn may_fire(&self, account: &AccountId, topic: &str) -> bool {
        if lock(&self.system).iter().any(|rule| rule.statement.matches_topic(topic)) {
            return true;
        }
        lock(&self.accounts)
            .get(account)
            .is_none_or(|rules| rules.iter().any(|loaded| loaded.rule.statement.matches_topic(topic)))
    }

    fn system_rules(&self) -> Vec<Arc<SystemRule>> {
        lock(&self.system).clone()
    }
}

/// The engine: the tap's queue and the runner task behind it.
pub struct RulesEngine {
    queue: Arc<Queue>,
    /// [`RulesConfig::max_chain_bytes`], given to each device message.
    chain_bytes: usize,
    book: Arc<RuleBook>,
    pub counters: Arc<RulesCounters>,
}

/// A message waiting for the runner, with its chain's byte budget (shared by a device message
/// and everything republished from it).
struct Item {
    published: Published,
    chain: Arc<AtomicUsize>,
}

impl Item {
    /// What the item holds while it waits: its payload and topic.
    fn size(&self) -> usize {
        self.published.message.payload.len() + self.published.message.topic.as_str().len()
    }
}

/// The runner's queue: one sub-queue per account, served in turn.
struct Queue {
    fair: Mutex<FairQueue>,
    ready: Notify,
}

/// Why a message found no room in the queue.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum NoRoom {
    /// The whole queue is full.
    Full,
    /// The account's sub-queue is full.
    AccountFull,
}

struct FairQueue {
    capacity: usize,
    account_capacity: usize,
    /// The most bytes waiting (`Item::size`), and how many wait now.
    max_bytes: usize,
    bytes: usize,
    len: usize,
    waiting: HashMap<AccountId, VecDeque<Item>>,
    /// The accounts with waiting messages, in the order they are served next.
    turns: VecDeque<AccountId>,
}

impl FairQueue {
    fn push(&mut self, item: Item) -> Result<(), NoRoom> {
        let size = item.size();
        if self.len >= self.capacity || self.bytes.saturating_add(size) > self.max_bytes {
            return Err(NoRoom::Full);
        }
        let account = item.published.account.clone();
        let waiting = self.waiting.entry(account.clone()).or_default();
        if waiting.len() >= self.account_capacity {
            return Err(NoRoom::AccountFull);
        }
        if waiting.is_empty() {
            self.turns.push_back(account);
        }
        waiting.push_back(item);
        self.len += 1;
        self.bytes += size;
        Ok(())
    }

    /// The next message of the account whose turn it is.
    fn pop(&mut self) -> Option<Item> {
        let account = self.turns.pop_front()?;
        let waiting = self.waiting.get_mut(&account)?;
        let item = waiting.pop_front()?;
        self.len -= 1;
        self.bytes -= item.size();
        if waiting.is_empty() {
            self.waiting.remove(&account);
        } else {
            self.turns.push_back(account);
        }
        Some(item)
    }
}

impl Queue {
    /// Queues `item`, counting (and logging, at most once per interval) a refusal.
    fn push(&self, item: Item, counters: &RulesCounters) -> bool {
        let account = item.published.account.clone();
        let pushed = lock(&self.fair).push(item);
        match pushed {
            Ok(()) => {
                self.ready.notify_one();
                true
            }
            Err(NoRoom::Full) => {
                let dropped = counters.dropped_queue_full.fetch_add(1, Ordering::Relaxed) + 1;
                if counters.may_log(LogCause::QueueFull) {
                    tracing::warn!(dropped, "rules queue full: messages are not run through the rules");
                }
                false
            }
            Err(NoRoom::AccountFull) => {
                let dropped = counters.count_over_budget(&account, OverBudget::QueueFull);
                if counters.may_log(LogCause::OverBudget(OverBudget::QueueFull)) {
                    tracing::warn!(%account, dropped, "the account's rules queue is full: its messages are dropped");
                }
                false
            }
        }
    }
}

/// The runner of a [`RulesEngine`] not started yet: made with the engine, before the broker
/// (whose tap the engine is), and started with the broker once it exists.
pub struct RulesRunner {
    config: RulesConfig,
    book: Arc<RuleBook>,
    egress: Arc<Egress>,
    feedback: Weak<Queue>,
    counters: Arc<RulesCounters>,
}

impl RulesEngine {
    /// The engine's queue (the broker's tap: give it to `Broker::new`) and its runner, to start
    /// with that broker. http actions go out through `egress`.
    pub fn new(config: RulesConfig, book: Arc<RuleBook>, egress: Arc<Egress>) -> (Arc<Self>, RulesRunner) {
        let queue = Arc::new(Queue {
            fair: Mutex::new(FairQueue {
                capacity: config.queue_capacity.max(1),
                account_capacity: config.account_budget.queue_capacity.max(1),
                max_bytes: config.queue_bytes,
                bytes: 0,
                len: 0,
                waiting: HashMap::new(),
                turns: VecDeque::new(),
            }),
            ready: Notify::new(),
        });
        let counters = book.counters.clone();
        let engine = Arc::new(RulesEngine {
            queue: queue.clone(),
            chain_bytes: config.max_chain_bytes,
            book: book.clone(),
            counters: counters.clone(),
        });
        let runner = RulesRunner { config, book, egress, feedback: Arc::downgrade(&queue), counters };
        (engine, runner)
    }
}

impl RulesRunner {
    /// Runs the rules (on the current runtime) against the queue, republishing through
    /// `broker`. The runner ends when the engine (the queue's sending side) is dropped.
    pub fn start(self, broker: &Arc<Broker>) {
        let RulesRunner { config, book, egress, feedback, counters } = self;
        let runner = Runner { config, book, egress, broker: Arc::downgrade(broker), feedback, counters };
        tokio::spawn(runner.run());
    }
}

impl Drop for RulesEngine {
    fn drop(&mut self) {
        // Wakes the runner, which then finds the queue gone and ends.
        self.queue.ready.notify_one();
    }
}

impl PublishTap for RulesEngine {
    fn wants(&self, account: &AccountId, topic: &str) -> bool {
        self.book.may_fire(account, topic)
    }

    fn published(&self, published: Published) {
        let item = Item { published, chain: Arc::new(AtomicUsize::new(self.chain_bytes)) };
        if self.queue.push(item, &self.counters) {
            self.counters.queued.fetch_add(1, Ordering::Relaxed);
        }
    }
}

struct Runner {
    config: RulesConfig,
    book: Arc<RuleBook>,
    /// Where http actions go out: the node's egress policy.
    egress: Arc<Egress>,
    broker: Weak<Broker>,
    /// Where messages come from and republished messages go back in; weak, so the runner ends
    /// with the engine.
    feedback: Weak<Queue>,
    counters: Arc<RulesCounters>,
}

/// One action to run, with what its failure report needs.
struct Firing {
    rule: String,
    published: Published,
    chain: Arc<AtomicUsize>,
    output: Bytes,
    error_action: Option<RuleAction>,
    http_slots: Arc<Semaphore>,
    /// The ENABLED destinations' confirmation URLs when the rule was loaded.
    destinations: Arc<[String]>,
}

/// An account's token buckets: what is left of this second's messages and steps.
struct Bucket {
    messages: f64,
    steps: f64,
    refilled: Instant,
}

/// The buckets of the accounts seen lately.
struct Budgets {
    budget: AccountBudget,
    buckets: HashMap<AccountId, Bucket>,
}

/// Past this many buckets, the full ones (idle accounts) are forgotten.
const MAX_IDLE_BUCKETS: usize = 4096;

impl Budgets {
    /// `account`'s bucket, refilled for the time since it was last used.
    fn refilled(&mut self, account: &AccountId, now: Instant) -> &mut Bucket {
        let (messages_rate, steps_rate) =
            (f64::from(self.budget.messages_per_second), self.budget.steps_per_second as f64);
        if self.buckets.len() > MAX_IDLE_BUCKETS && !self.buckets.contains_key(account) {
            self.buckets.retain(|_, bucket| {
                let elapsed = now.duration_since(bucket.refilled).as_secs_f64();
                bucket.messages + elapsed * messages_rate < messages_rate
                    || bucket.steps + elapsed * steps_rate < steps_rate
            });
        }
        let bucket = self.buckets.entry(account.clone()).or_insert(Bucket {
            messages: messages_rate,
            steps: steps_rate,
            refilled: now,
        });
        let elapsed = now.duration_since(bucket.refilled).as_secs_f64();
        bucket.messages = (bucket.messages + elapsed * messages_rate).min(messages_rate);
        bucket.steps = (bucket.steps + elapsed * steps_rate).min(steps_rate);
        bucket.refilled = now;
        bucket
    }
}

impl Runner {
    async fn run(self) {
        let this = Arc::new(self);
        let mut budgets = Budgets { budget: this.config.account_budget, buckets: HashMap::new() };
        loop {
            let Some(queue) = this.feedback.upgrade() else { return };
            let next = lock(&queue.fair).pop();
            match next {
                Some(item) => {
                    drop(queue);
                    this.handle(item, &mut budgets).await;
                }
                None => queue.ready.notified().await,
            }
        }
    }

    /// Counts and logs (at most once per interval) a message dropped for its account's budget.
    fn over_budget(&self, account: &AccountId, cause: OverBudget) {
        let dropped = self.counters.count_over_budget(account, cause);
        if self.counters.may_log(LogCause::OverBudget(cause)) {
            tracing::warn!(%account, dropped, cause = cause.as_str(), "the account's rules are over budget: messages dropped");
        }
    }

    async fn handle(self: &Arc<Self>, item: Item, budgets: &mut Budgets) {
        let Item { published, chain } = item;
        let rules = self.book.rules_for(&published.account).await;
        // System rules (certfleet's own: rotation) are not charged to the account, so a tenant
        // over its budget still has its devices' certificates rotated.
        let system = if published.depth == 0 { self.book.system_rules() } else { Vec::new() };
        let topic = published.message.topic.as_str();
        let principal = published.principal.as_ref().map(CertificateId::as_str);
        let new_uuid = new_uuid;
        let context = Context {
            topic,
            client_id: &published.client_id,
            principal,
            timestamp_ms: published.received_ms,
            new_uuid: &new_uuid,
            limits: self.config.limits,
        };
        let payload = &published.message.payload;
        for system_rule in &system {
            let Ok(output) = system_rule.statement.evaluate(&context, payload) else { continue };
            self.counters.system_deliveries.fetch_add(1, Ordering::Relaxed);
            system_rule.sink.deliver(SystemDelivery {
                account: &published.account,
                rule: &system_rule.name,
                output: &output.to_bytes(),
                topic,
                client_id: &published.client_id,
                principal: published.principal.as_ref(),
            });
        }
        if !rules.is_empty() {
            let bucket = budgets.refilled(&published.account, Instant::now());
            if bucket.messages < 1.0 {
                return self.over_budget(&published.account, OverBudget::Messages);
            }
            if bucket.steps <= 0.0 {
                return self.over_budget(&published.account, OverBudget::Steps);
            }
            bucket.messages -= 1.0;
        }
        for loaded in rules.iter() {
            let (evaluated, steps) = loaded.rule.statement.evaluate_counting_steps(&context, payload);
            if let Some(bucket) = budgets.buckets.get_mut(&published.account) {
                bucket.steps -= steps as f64;
            }
            let (output, failure) = match evaluated {
                Ok(output) => (
                    Bytes::from(match output {
                        Output::Json(json) => json.to_string().into_bytes(),
                        Output::Raw(raw) => raw.to_vec(),
                    }),
                    None,
                ),
                Err(NoOutput::Skipped(_)) => continue,
                Err(NoOutput::Failed(error)) => {
                    let failed = self.counters.evaluation_failed.fetch_add(1, Ordering::Relaxed) + 1;
                    if self.counters.may_log(LogCause::EvaluationFailed) {
                        tracing::warn!(
                            account = %published.account, rule = loaded.rule.name, %error, failed,
                            "rule evaluation hit a bound: its actions fail"
                        );
                    }
                    (Bytes::new(), Some(error))
                }
            };
            if failure.is_none() {
                self.counters.matched.fetch_add(1, Ordering::Relaxed);
            }
            for action in &loaded.rule.actions {
                let firing = Firing {
                    rule: loaded.rule.name.clone(),
                    published: published.clone(),
                    chain: chain.clone(),
                    output: output.clone(),
                    error_action: loaded.rule.error_action.clone(),
                    http_slots: loaded.http_slots.clone(),
                    destinations: loaded.rule.destinations.clone(),
                };
                match failure {
                    None => self.fire(action, firing),
                    Some(error) => {
                        let (name, resource) = action_target(action);
                        self.failed(firing, name, resource, error.to_string());
                    }
                }
            }
        }
    }

    /// Runs one action; a failure runs the error action.
    fn fire(self: &Arc<Self>, action: &RuleAction, firing: Firing) {
        match action {
            RuleAction::Republish { topic, qos, .. } => {
                let chain = firing.chain.clone();
                if let Err(why) = self.republish(&firing.published, topic, *qos, firing.output.clone(), Some(&chain)) {
                    self.failed(firing, "RepublishAction", topic, why);
                }
            }
            RuleAction::Http { url, headers } => {
                if !covered(&firing.destinations, url) {
                    self.failed(firing, "HttpAction", url, NOT_COVERED.into());
                    return;
                }
                let Ok(permit) = firing.http_slots.clone().try_acquire_owned() else {
                    self.failed(firing, "HttpAction", url, "too many requests of this rule in flight".into());
                    return;
                };
                let runner = self.clone();
                let (url, headers) = (url.clone(), headers.clone());
                tokio::spawn(async move {
                    let account = firing.published.account.clone();
                    let sent = runner.post(&account, Purpose::RuleAction, &url, &headers, firing.output.clone()).await;
                    drop(permit);
                    match sent {
                        Ok(()) => {
                            runner.counters.http_succeeded.fetch_add(1, Ordering::Relaxed);
                        }
                        Err(why) => runner.failed(firing, "HttpAction", &url, why),
                    }
                });
            }
            RuleAction::Unsupported(kind) => {
                tracing::warn!(rule = firing.rule, action = kind, "action not supported by this node")
            }
        }
    }

    /// Publishes `payload` to `topic` in the publisher's account and, with the chain's byte
    /// budget given and below the depth cap, feeds it back into the rules.
    fn republish(
        &self,
        from: &Published,
        topic: &str,
        qos: u8,
        payload: Bytes,
        chain: Option<&Arc<AtomicUsize>>,
    ) -> Result<(), String> {
        if topic.starts_with('$') && !topic.starts_with("$aws/things/") {
            return Err(format!("republishing to the reserved topic {topic} is not allowed"));
        }
        let topic = TopicName::new(topic).map_err(|error| format!("invalid republish topic {topic}: {error}"))?;
        let Some(broker) = self.broker.upgrade() else { return Err("the broker is gone".into()) };
        let limit = broker.config().message_size_limit;
        if payload.len() > limit {
            self.counters.republish_too_large.fetch_add(1, Ordering::Relaxed);
            return Err(format!(
                "the payload of {} bytes is larger than the message size limit of {limit} bytes",
                payload.len()
            ));
        }
        let message = Arc::new(Message {
            topic,
            payload,
            qos: if qos == 0 { QoS::AtMostOnce } else { QoS::AtLeastOnce },
            retain: false,
            properties: Properties::default(),
            expires_at: None,
            publisher: None,
        });
        broker.publish(&from.account, message.clone());
        self.counters.republished.fetch_add(1, Ordering::Relaxed);
        let Some(chain) = chain else { return Ok(()) };
        let depth = from.depth.saturating_add(1);
        if depth > self.config.max_depth {
            let capped = self.counters.loop_capped.fetch_add(1, Ordering::Relaxed) + 1;
            if self.counters.may_log(LogCause::LoopDepth) {
                tracing::warn!(
                    account = %from.account, topic = %message.topic, depth, capped,
                    "republished message not run through the rules again: the loop cap is reached"
                );
            }
            return Ok(());
        }
        let cost = message.payload.len() + message.topic.as_str().len() + CHAIN_COST_PER_MESSAGE;
        if chain.fetch_update(Ordering::SeqCst, Ordering::SeqCst, |left| left.checked_sub(cost)).is_err() {
            let capped = self.counters.loop_bytes_capped.fetch_add(1, Ordering::Relaxed) + 1;
            if self.counters.may_log(LogCause::LoopBytes) {
                tracing::warn!(
                    account = %from.account, topic = %message.topic, depth, capped,
                    "republished message not run through the rules again: the chain's byte budget is spent"
                );
            }
            return Ok(());
        }
        if !self.book.may_fire(&from.account, message.topic.as_str()) {
            return Ok(());
        }
        if let Some(queue) = self.feedback.upgrade() {
            let again = Published { message, depth, received_ms: now_ms(), ..from.clone() };
            queue.push(Item { published: again, chain: chain.clone() }, &self.counters);
        }
        Ok(())
    }

    /// Counts a failed action and runs the rule's error action with AWS's error payload.
    fn failed(self: &Arc<Self>, firing: Firing, failed_action: &str, failed_resource: &str, why: String) {
        let failed = self.counters.actions_failed.fetch_add(1, Ordering::Relaxed) + 1;
        // A tenant's rule can fail on every message: one line a second, the counter counts all.
        if self.counters.may_log(LogCause::ActionFailed) {
            tracing::info!(
                account = %firing.published.account, rule = firing.rule, action = failed_action, error = %why, failed,
                "rule action failed (at most one line a second; `failed` counts them all)"
            );
        }
        let Some(error_action) = &firing.error_action else { return };
        self.counters.error_actions.fetch_add(1, Ordering::Relaxed);
        let report = serde_json::json!({
            "ruleName": firing.rule,
            "topic": firing.published.message.topic.as_str(),
            "cloudwatchTraceId": uuid_text(new_uuid()),
            "clientId": firing.published.client_id,
            "base64OriginalPayload": base64::engine::general_purpose::STANDARD.encode(&firing.published.message.payload),
            "failures": [{"failedAction": failed_action, "failedResource": failed_resource, "errorMessage": why}],
        });
        let report = Bytes::from(report.to_string().into_bytes());
        match error_action {
            RuleAction::Republish { topic, qos, .. } => {
                // An error report is not run through the rules again.
                if let Err(why) = self.republish(&firing.published, topic, *qos, report, None) {
                    tracing::warn!(rule = firing.rule, error = %why, "error action failed");
                }
            }
            RuleAction::Http { url, headers } => {
                if !covered(&firing.destinations, url) {
                    tracing::warn!(rule = firing.rule, "error action not sent: {NOT_COVERED}");
                    return;
                }
                let Ok(permit) = firing.http_slots.clone().try_acquire_owned() else {
                    tracing::warn!(rule = firing.rule, "error action not sent: too many requests in flight");
                    return;
                };
                let runner = self.clone();
                let (url, headers, rule) = (url.clone(), headers.clone(), firing.rule.clone());
                let account = firing.published.account.clone();
                tokio::spawn(async move {
                    // A failure was logged by the egress with its reason.
                    if runner.post(&account, Purpose::RuleErrorAction, &url, &headers, report).await.is_err() {
                        tracing::info!(rule, "error action failed");
                    }
                    drop(permit);
                });
            }
            RuleAction::Unsupported(kind) => {
                tracing::warn!(rule = firing.rule, action = kind, "error action not supported by this node")
            }
        }
    }
}

/// The AWS name of an action and the resource it acts on, for the error action's report.
fn action_target(action: &RuleAction) -> (&'static str, &str) {
    match action {
        RuleAction::Republish { topic, .. } => ("RepublishAction", topic),
        RuleAction::Http { url, .. } => ("HttpAction", url),
        RuleAction::Unsupported(kind) => ("UnsupportedAction", kind),
    }
}

/// Why an http action whose destination is gone or disabled is not sent.
const NOT_COVERED: &str = "no ENABLED topic rule destination covers this url";

fn covered(destinations: &[String], url: &str) -> bool {
    destinations.iter().any(|prefix| certfleet_services::url_under(url, prefix))
}

impl Runner {
    /// POSTs `body` (JSON) to `url` through the egress, within [`RulesConfig::http_timeout`].
    /// The error is the tenant's message (the egress logged the detail).
    async fn post(
        &self,
        account: &AccountId,
        purpose: Purpose,
        url: &str,
        headers: &[(String, String)],
        body: Bytes,
    ) -> Result<(), String> {
        let egress = &self.egress;
        match egress.post_within(self.config.http_timeout, account, purpose, url, headers, body).await {
            Ok(_) => Ok(()),
            Err(failure) => Err(failure.tenant_message()),
        }
    }
}

fn new_uuid() -> u128 {
    let mut bytes = [0u8; 16];
    // A failing system random source leaves zeros: ids are then not unique, nothing worse.
    let _ = aws_lc_rs::rand::fill(&mut bytes);
    u128::from_be_bytes(bytes)
}

fn uuid_text(bits: u128) -> String {
    let hex = format!("{bits:032x}");
    format!("{}-{}-{}-{}-{}", &hex[..8], &hex[8..12], &hex[12..16], &hex[16..20], &hex[20..])
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn item(account: &str, n: u8) -> Item {
        let message = Arc::new(Message {
            topic: TopicName::new("t").unwrap(),
            payload: Bytes::from(vec![n]),
            qos: QoS::AtMostOnce,
            retain: false,
            properties: Properties::default(),
            expires_at: None,
            publisher: None,
        });
        let published = Published {
            account: AccountId::parse(account).unwrap(),
            client_id: "c".into(),
            principal: None,
            message,
            received_ms: 0,
            depth: 0,
        };
        Item { published, chain: Arc::new(AtomicUsize::new(0)) }
    }

    fn order(queue: &mut FairQueue) -> Vec<(String, u8)> {
        std::iter::from_fn(|| queue.pop())
            .map(|item| (item.published.account.to_string(), item.published.message.payload[0]))
            .collect()
    }

    /// A backlog of one account delays another's message by one message, not by the backlog;
    /// an account's sub-queue and the whole queue are bounded.
    #[test]
    fn the_queue_serves_accounts_in_turn_within_their_bounds() {
        let (a, b, c) = ("111111111111", "222222222222", "333333333333");
        let mut queue = FairQueue {
            capacity: 6,
            account_capacity: 4,
            max_bytes: usize::MAX,
            bytes: 0,
            len: 0,
            waiting: HashMap::new(),
            turns: VecDeque::new(),
        };
        for n in 0..4 {
            assert_eq!(queue.push(item(a, n)), Ok(()));
        }
        assert_eq!(queue.push(item(a, 4)), Err(NoRoom::AccountFull));
        assert_eq!(queue.push(item(b, 0)), Ok(()));
        assert_eq!(queue.push(item(b, 1)), Ok(()));
        assert_eq!(queue.push(item(c, 0)), Err(NoRoom::Full));
        let served = order(&mut queue);
        let expected = [(a, 0), (b, 0), (a, 1), (b, 1), (a, 2), (a, 3)];
        assert_eq!(served, expected.map(|(account, n)| (account.to_owned(), n)).to_vec());
        assert_eq!((queue.len, queue.bytes, queue.waiting.len(), queue.turns.len()), (0, 0, 0, 0));
        assert_eq!(queue.push(item(c, 0)), Ok(()));
    }

    /// The queue is bounded in bytes too: items of 2 bytes (topic "t", one payload byte)
    /// against 5 bytes: two fit, the third is refused as a full queue, and popping gives the
    /// room back exactly.
    #[test]
    fn the_queue_is_bounded_in_bytes() {
        let a = "111111111111";
        let mut queue = FairQueue {
            capacity: 100,
            account_capacity: 100,
            max_bytes: 5,
            bytes: 0,
            len: 0,
            waiting: HashMap::new(),
            turns: VecDeque::new(),
        };
        assert_eq!(queue.push(item(a, 0)), Ok(()));
        assert_eq!(queue.push(item(a, 1)), Ok(()));
        assert_eq!(queue.push(item(a, 2)), Err(NoRoom::Full));
        assert_eq!(queue.bytes, 4);
        assert!(queue.pop().is_some());
        assert_eq!(queue.bytes, 2);
        assert_eq!(queue.push(item(a, 3)), Ok(()));
        assert!(queue.pop().is_some() && queue.pop().is_some() && queue.pop().is_none());
        assert_eq!((queue.len, queue.bytes), (0, 0));
    }
}
