//! The audit scenario (issue 7): seed one account of a registry with many device certificates,
//! a known share of them expired or expiring, then time DEVICE_CERTIFICATE_EXPIRING_CHECK over
//! them the way an on-demand audit runs.
//!
//! The check is driven through the public services path of an on-demand audit:
//! [`Services::update_account_audit_configuration`] enables the check,
//! [`Services::start_on_demand_audit_task`] creates the task, and [`Services::run_audit_task`]
//! runs it, which is exactly the call the audit worker (`certfleet-workers`) makes for each
//! runnable task. The timed part is that last call: the keyset-paged scan, the findings, and
//! their storage in the registry, all of which an operator waits for.
//!
//! Seeding takes a documented shortcut, since a million RegisterCertificate calls (each its own
//! transaction, with the CA lookup and the change-feed record) would take longer than the thing
//! measured: the certificates are real X.509 certificates, issued in parallel threads by a CA
//! registered in the account through RegisterCACertificate, and their rows are those
//! RegisterCertificate stores (ID = SHA-256 of the DER, PEM, the CA's ID, ACTIVE, DEFAULT mode, a
//! UUID generation ID, version 1, the certificate's validity, created now), written with the
//! registry's multi-row [`Tx::insert_certificates`](certfleet_registry::Tx::insert_certificates).
//! What it leaves out is the change feed, which only tells running gateways to look again.
//! Every certificate of a thread carries that thread's one device key (the expiry check never
//! reads keys; distinct serial numbers make every certificate, and so its ID, distinct).
//!
//! On PostgreSQL, seeding ends with `VACUUM (ANALYZE) certificates`, which is what autovacuum
//! does to a table after a bulk load in any deployment that keeps it on (the default): planner
//! statistics, and the visibility map that lets the scan read its covering index alone. Test
//! servers often run with autovacuum off; `--no-vacuum` times the check without it.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::mpsc::sync_channel;
use std::time::Instant;

use anyhow::Context;
use certfleet_pki::{Certificate, GeneratedKeyPair, Issuer, KeyAlgorithm};
use certfleet_registry::{
    self as registry, AccountId, AuditCheckConfiguration, CertificateMode, CertificateStatus, DeviceCertificate,
    PageRequest, PostgresStore, SqliteStore, Store,
};
use certfleet_services::{AuditConfigurationUpdate, CaRegistration, Caller, Config, Services, SystemClock};
use time::{Duration, OffsetDateTime};

/// The check this scenario times.
pub const CHECK: &str = "DEVICE_CERTIFICATE_EXPIRING_CHECK";

/// Certificates issued per message from a signing thread to the writer.
const ISSUE_BATCH: usize = 1_000;

/// Certificates written per transaction while seeding.
const WRITE_BATCH: usize = 10_000;

/// Where the registry is.
#[derive(Clone, Debug)]
pub enum StoreSpec {
    /// An SQLite file (created if missing).
    Sqlite(PathBuf),
    /// A PostgreSQL URL, and the schema to work in (created if missing) when given.
    Postgres { url: String, schema: Option<String> },
}

impl StoreSpec {
    /// `sqlite:<path>` or `postgres://...` (`postgresql://` too).
    pub fn parse(text: &str, schema: Option<String>) -> anyhow::Result<Self> {
        if let Some(path) = text.strip_prefix("sqlite:") {
            anyhow::ensure!(!path.is_empty(), "sqlite: needs a path");
            anyhow::ensure!(schema.is_none(), "--schema is for postgres only");
            return Ok(StoreSpec::Sqlite(PathBuf::from(path)));
        }
        if text.starts_with("postgres://") || text.starts_with("postgresql://") {
            return Ok(StoreSpec::Postgres { url: text.to_owned(), schema });
        }
        anyhow::bail!("--store must be sqlite:<path> or postgres://...")
    }

    /// Opens the store (applying migrations).
    pub fn open(&self) -> anyhow::Result<Arc<dyn Store>> {
        Ok(match self {
            StoreSpec::Sqlite(path) => Arc::new(SqliteStore::open(path)?),
            StoreSpec::Postgres { url, schema } => Arc::new(PostgresStore::open(url, schema.as_deref())?),
        })
    }
}

/// What the scenario does.
#[derive(Clone, Debug)]
pub struct Options {
    pub store: StoreSpec,
    /// Device certificates to seed.
    pub certificates: u64,
    /// The share of them that have expired or expire within 30 days (half each).
    pub expiring_fraction: f64,
    /// Time the check over the store's newest account as a previous run left it, without seeding,
    /// when it holds device certificates (otherwise seed as usual).
    pub reuse: bool,
    /// Signing threads (at least 1).
    pub threads: usize,
    /// On PostgreSQL, skip the VACUUM (ANALYZE) that follows seeding.
    pub no_vacuum: bool,
}

/// What seeding did.
#[derive(Clone, Debug)]
pub struct Seeding {
    pub account: AccountId,
    /// False when `--reuse` found an account to time instead.
    pub seeded: bool,
    pub certificates: u64,
    /// Certificates made to be found: expired or expiring within 30 days.
    pub expiring: u64,
    pub seconds: f64,
}

/// What one timed check did.
#[derive(Clone, Debug)]
pub struct CheckRun {
    pub task_id: String,
    pub seconds: f64,
    pub scanned: i64,
    pub findings: i64,
    /// The process's peak RSS during the check (the peak is reset after seeding where Linux
    /// allows it; otherwise it is the peak of the whole run).
    pub peak_rss_kib: Option<u64>,
    pub peak_reset: bool,
}

/// The outcome of the scenario.
#[derive(Clone, Debug)]
pub struct AuditReport {
    pub backend: &'static str,
    pub seeding: Seeding,
    pub check: CheckRun,
}

impl AuditReport {
    pub fn certificates_per_second(&self) -> f64 {
        if self.check.seconds > 0.0 { self.check.scanned as f64 / self.check.seconds } else { 0.0 }
    }

    pub fn to_json(&self) -> serde_json::Value {
        serde_json::json!({
            "scenario": "audit",
            "check": CHECK,
            "backend": self.backend,
            "account": self.seeding.account.as_str(),
            "seeded": self.seeding.seeded,
            "seeded_certificates": self.seeding.certificates,
            "expected_findings": self.seeding.seeded.then_some(self.seeding.expiring),
            "seeding_seconds": self.seeding.seconds,
            "task_id": self.check.task_id,
            "check_seconds": self.check.seconds,
            "certificates_scanned": self.check.scanned,
            "findings": self.check.findings,
            "certificates_per_second": self.certificates_per_second(),
            "peak_rss_kib": self.check.peak_rss_kib,
            "peak_rss_is_check_only": self.check.peak_reset,
        })
    }

    pub fn to_table(&self) -> String {
        let mut out = format!(
            "{:<9} {:>10} {:>9} {:>9} {:>10} {:>9} {:>13} {:>10}\n",
            "backend", "seeded", "seed s", "check s", "scanned", "findings", "certs/s", "peak MiB"
        );
        let seeded = if self.seeding.seeded { self.seeding.certificates.to_string() } else { "reused".into() };
        let seed_seconds = if self.seeding.seeded { format!("{:.1}", self.seeding.seconds) } else { "-".into() };
        let rss = self.check.peak_rss_kib.map_or("-".into(), |kib| format!("{:.0}", kib as f64 / 1024.0));
        out.push_str(&format!(
            "{:<9} {:>10} {:>9} {:>9.2} {:>10} {:>9} {:>13.0} {:>10}",
            self.backend,
            seeded,
            seed_seconds,
            self.check.seconds,
            self.check.scanned,
            self.check.findings,
            self.certificates_per_second(),
            rss
        ));
        if self.seeding.seeded && self.seeding.expiring != self.check.findings as u64 {
            out.push_str(&format!("\nnote: {} certificates were seeded to be found", self.seeding.expiring));
        }
        if !self.check.peak_reset {
            out.push_str("\nnote: the peak RSS includes seeding (it could not be reset)");
        }
        out
    }
}

/// Runs the scenario: seeds (unless reusing), then times the check once.
pub fn run(options: &Options) -> anyhow::Result<AuditReport> {
    anyhow::ensure!(options.certificates > 0, "--certificates must be at least 1");
    anyhow::ensure!((0.0..=1.0).contains(&options.expiring_fraction), "--expiring-fraction must be in [0, 1]");
    let store = options.store.open()?;
    let backend = store.backend();
    let now = OffsetDateTime::now_utc();
    let issuer = Issuer::generate_root(
        "certfleet-loadgen audit",
        "certfleet",
        Duration::days(3650),
        KeyAlgorithm::EcdsaP256,
        now,
    )?;
    let services = Services::new(store, Arc::new(SystemClock), Config::default(), None);
    let reused = if options.reuse { newest_account(&services)? } else { None };
    let seeding = match reused {
        Some(account) => Seeding { account, seeded: false, certificates: 0, expiring: 0, seconds: 0.0 },
        None => {
            let expiring = (options.certificates as f64 * options.expiring_fraction).round() as u64;
            let mut seeding = seed(&services, &issuer, options.certificates, expiring, options.threads)?;
            if !options.no_vacuum {
                let started = Instant::now();
                vacuum(&options.store)?;
                seeding.seconds += started.elapsed().as_secs_f64();
            }
            seeding
        }
    };
    let check = run_check(&services, &seeding.account)?;
    Ok(AuditReport { backend, seeding, check })
}

/// `VACUUM (ANALYZE) certificates` on PostgreSQL, as autovacuum would after a bulk load; nothing
/// on SQLite, which keeps no statistics unless asked and needs no visibility map.
fn vacuum(store: &StoreSpec) -> anyhow::Result<()> {
    let StoreSpec::Postgres { url, schema } = store else { return Ok(()) };
    let mut client = postgres::Client::connect(url, postgres::NoTls)?;
    if let Some(schema) = schema {
        // Checked by PostgresStore::open: letters, digits and underscores only.
        client.batch_execute(&format!("SET search_path TO {schema}"))?;
    }
    client.batch_execute("VACUUM (ANALYZE) certificates")?;
    Ok(())
}

/// The most recently created account of the store, if it holds device certificates.
fn newest_account(services: &Services) -> anyhow::Result<Option<AccountId>> {
    let Some(account) = services.list_accounts()?.into_iter().max_by_key(|account| account.created_at) else {
        return Ok(None);
    };
    let first = PageRequest { limit: 1, ascending: true, after: None };
    let page = registry::read(services.store(), |tx| tx.list_certificates(&account.id, &first))?;
    Ok((!page.items.is_empty()).then_some(account.id))
}

/// Creates an account, registers `issuer` in it, and seeds `certificates` device certificates
/// issued by it, `expiring` of which have expired (half) or expire in 10 days (the other half);
/// the rest are valid for a year.
pub fn seed(
    services: &Services,
    issuer: &Issuer,
    certificates: u64,
    expiring: u64,
    threads: usize,
) -> anyhow::Result<Seeding> {
    let started = Instant::now();
    let account = services.create_account()?.id;
    let caller = Caller { account: account.clone() };
    let now = services.now();
    let code = services.get_registration_code(&caller)?;
    let verification_key = GeneratedKeyPair::generate(KeyAlgorithm::EcdsaP256)?;
    let verification = issuer.issue_for_key(verification_key.public_key(), &code, Duration::days(1), now)?;
    let registration = CaRegistration {
        ca_certificate_pem: issuer.certificate().to_pem(),
        verification_certificate_pem: Some(verification.to_pem()),
        set_as_active: true,
        ..Default::default()
    };
    let (_, ca_id) = services.register_ca_certificate(&caller, &registration)?;

    let threads = threads.max(1) as u64;
    let (sender, receiver) = sync_channel::<anyhow::Result<Vec<DeviceCertificate>>>(4 * threads as usize);
    std::thread::scope(|scope| -> anyhow::Result<()> {
        for thread in 0..threads {
            let sender = sender.clone();
            let (account, ca_id) = (account.clone(), ca_id.clone());
            scope.spawn(move || {
                let issue = || -> anyhow::Result<()> {
                    let key = GeneratedKeyPair::generate(KeyAlgorithm::EcdsaP256)?;
                    let mut batch = Vec::with_capacity(ISSUE_BATCH);
                    for index in (thread..certificates).step_by(threads as usize) {
                        // Half the expiring ones expired ten days ago, half expire in ten days.
                        let (issued, validity) = match index {
                            index if index < expiring && index % 2 == 0 => {
                                (now - Duration::days(400), Duration::days(390))
                            }
                            index if index < expiring => (now, Duration::days(10)),
                            _ => (now, Duration::days(365)),
                        };
                        let certificate =
                            issuer.issue_for_key(key.public_key(), &format!("device-{index}"), validity, issued)?;
                        batch.push(row(&account, &ca_id, &certificate, now));
                        if batch.len() == ISSUE_BATCH {
                            if sender.send(Ok(std::mem::take(&mut batch))).is_err() {
                                return Ok(());
                            }
                            batch.reserve(ISSUE_BATCH);
                        }
                    }
                    if !batch.is_empty() {
                        let _ = sender.send(Ok(batch));
                    }
                    Ok(())
                };
                if let Err(error) = issue() {
                    let _ = sender.send(Err(error));
                }
            });
        }
        drop(sender);
        // Owned here, so that returning early (a write failed) drops it and the signing threads,
        // which the scope waits for, stop at their next send instead of blocking on a full channel.
        let receiver = receiver;
        let mut pending: Vec<DeviceCertificate> = Vec::with_capacity(WRITE_BATCH + ISSUE_BATCH);
        for batch in receiver.iter() {
            pending.extend(batch?);
            if pending.len() >= WRITE_BATCH {
                registry::write(services.store(), |tx| tx.insert_certificates(&pending))?;
                pending.clear();
            }
        }
        if !pending.is_empty() {
            registry::write(services.store(), |tx| tx.insert_certificates(&pending))?;
        }
        Ok(())
    })?;
    Ok(Seeding { account, seeded: true, certificates, expiring, seconds: started.elapsed().as_secs_f64() })
}

/// The row RegisterCertificate would store for `certificate` registered ACTIVE at `now` under
/// the CA `ca_id` (whose mode is DEFAULT).
fn row(
    account: &AccountId,
    ca_id: &certfleet_pki::CertificateId,
    certificate: &Certificate,
    now: OffsetDateTime,
) -> DeviceCertificate {
    DeviceCertificate::registered(
        account.clone(),
        certificate,
        Some(ca_id.clone()),
        CertificateStatus::Active,
        CertificateMode::Default,
        generation_id(certificate),
        now,
    )
}

/// A UUID version 4 in form, taken from the certificate's ID (itself a hash, so as good as random
/// here and free of a system call per certificate).
fn generation_id(certificate: &Certificate) -> String {
    let hex = certificate.id().as_str();
    format!("{}-{}-4{}-a{}-{}", &hex[..8], &hex[8..12], &hex[13..16], &hex[17..20], &hex[20..32])
}

/// Enables the check in `account`'s audit configuration, starts an on-demand audit of it and runs
/// the task as the audit worker does, timing the run.
pub fn run_check(services: &Services, account: &AccountId) -> anyhow::Result<CheckRun> {
    let caller = Caller { account: account.clone() };
    let update = AuditConfigurationUpdate {
        role_arn: Some(format!("arn:aws:iam::{account}:role/certfleet-loadgen-audit")),
        targets: BTreeMap::new(),
        checks: BTreeMap::from([(
            CHECK.to_owned(),
            AuditCheckConfiguration { enabled: true, configuration: BTreeMap::new() },
        )]),
    };
    services.update_account_audit_configuration(&caller, &update)?;
    let task_id = services.start_on_demand_audit_task(&caller, &[CHECK.to_owned()])?;
    let (task, _) = services.describe_audit_task(&caller, &task_id)?;
    // Writing 5 to clear_refs resets the peak RSS (VmHWM) to the current RSS, so the figure is
    // the check's, not the seeding's.
    let peak_reset = std::fs::write("/proc/self/clear_refs", "5").is_ok();
    let started = Instant::now();
    let summary = services.run_audit_task(&task, Duration::minutes(30))?.context("another worker took the task")?;
    let seconds = started.elapsed().as_secs_f64();
    let peak_rss_kib = crate::proc_stats::peak_rss_kib(std::process::id());
    let run = summary.checks.iter().find(|run| run.check_name == CHECK).context("the task has no run of the check")?;
    anyhow::ensure!(
        run.error_code.is_none(),
        "the check failed: {} {}",
        run.error_code.as_deref().unwrap_or(""),
        run.message.as_deref().unwrap_or("")
    );
    Ok(CheckRun {
        task_id,
        seconds,
        scanned: run.total_resources,
        findings: run.non_compliant_resources,
        peak_rss_kib,
        peak_reset,
    })
}
