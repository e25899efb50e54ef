//! `certfleet-loadgen`: bounded load scenarios against an AWS IoT-compatible API and against
//! MQTT brokers with client certificates, reporting rate, latency percentiles, and the server's
//! CPU seconds and peak RSS (read from `/proc`); and the in-process ceiling of rustls mTLS
//! handshakes on one core.
//!
//! Every scenario stops by itself: after `--duration` or a count, whichever comes first.
//! It speaks the AWS wire format with SigV4 like the AWS SDKs, so it measures any server of
//! that API (certfleet, or a peer such as moto) with the same requests, and plain MQTT over
//! mutual TLS, so it measures any broker (certfleet, or Mosquitto) with the same certificates.

mod api;
mod mqtt;
mod report;
mod soak;

use std::path::PathBuf;
use std::time::Duration;

use clap::{Parser, Subcommand, ValueEnum};

#[derive(Parser)]
#[command(name = "certfleet-loadgen", about = "Bounded load scenarios for certfleet and its peers")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Drive the control-plane API over HTTPS (or HTTP) with SigV4-signed requests.
    Api(ApiArgs),
    /// Drive an MQTT broker over mutual TLS (certfleet's gateway, or a peer with the same certificates).
    Mqtt(mqtt::MqttArgs),
    /// The in-process ceiling: rustls mutual-TLS 1.3 handshakes in memory on one thread (ECDSA
    /// P-256, X25519), per core-second and per server-side core-second.
    Ceiling(CeilingArgs),
    /// Seed one account of a registry with device certificates (a share of them expiring) and time
    /// DEVICE_CERTIFICATE_EXPIRING_CHECK over them, run as an on-demand audit task runs.
    Audit(AuditArgs),
    /// An hour (or --duration) of mixed legitimate traffic with an attacker rotating through
    /// the attacks in parallel; samples the server's RSS, file descriptors and the legitimate
    /// clients' latencies every --sample seconds (docs/benchmarks.md, "Soak").
    Soak(soak::SoakArgs),
}

#[derive(clap::Args)]
pub struct AuditArgs {
    /// The registry: `sqlite:<path>` or a `postgres://` URL.
    #[arg(long)]
    pub store: String,
    /// With PostgreSQL, work in this schema (created if missing).
    #[arg(long)]
    pub schema: Option<String>,
    /// With --schema, drop the schema when done.
    #[arg(long, requires = "schema")]
    pub drop_schema: bool,
    /// Device certificates to seed into one new account.
    #[arg(long, default_value_t = 1_000_000)]
    pub certificates: u64,
    /// The share of them expired or expiring within 30 days (the findings expected).
    #[arg(long, default_value_t = 0.01)]
    pub expiring_fraction: f64,
    /// Do not seed when the store's newest account holds certificates: time the check over them again.
    #[arg(long)]
    pub reuse: bool,
    /// Signing threads while seeding (default: one per core).
    #[arg(long)]
    pub threads: Option<usize>,
    /// On PostgreSQL, do not VACUUM (ANALYZE) the certificates after seeding (as a server with
    /// autovacuum off would leave them).
    #[arg(long)]
    pub no_vacuum: bool,
    #[arg(long)]
    pub json: bool,
}

#[derive(clap::Args)]
pub struct CeilingArgs {
    /// How long to run, seconds.
    #[arg(long, default_value_t = 5.0)]
    pub seconds: f64,
    /// Stop after this many handshakes.
    #[arg(long, default_value_t = 10_000_000)]
    pub count: u64,
    /// Full handshakes, or resumed ones (stateless session tickets, as the gateway).
    #[arg(long, value_enum, default_value = "full")]
    pub mode: certfleet_loadgen::ceiling::Mode,
    #[arg(long)]
    pub json: bool,
}

/// The API scenarios.
#[derive(Clone, Copy, Debug, ValueEnum, PartialEq, Eq)]
pub enum Scenario {
    /// DescribeCertificate of one certificate, over and over.
    DescribeCertificate,
    /// CreateCertificateFromCsr with distinct, pre-generated ECDSA P-256 CSRs.
    CreateCertificateFromCsr,
}

#[derive(clap::Args)]
pub struct ApiArgs {
    /// The scenario to run.
    #[arg(long, value_enum)]
    pub scenario: Scenario,
    /// A certfleet data directory: takes the API URL from endpoints.json, the keys from the
    /// `default` profile of `credentials` and the trust anchor from server-root.pem.
    #[arg(long, conflicts_with_all = ["url", "access_key_id"])]
    pub data_dir: Option<PathBuf>,
    /// The API URL (`https://host:port` or `http://host:port`) when not using --data-dir.
    #[arg(long, requires = "access_key_id")]
    pub url: Option<String>,
    #[arg(long, requires = "secret_access_key")]
    pub access_key_id: Option<String>,
    #[arg(long)]
    pub secret_access_key: Option<String>,
    /// PEM trust anchors for https when not using --data-dir.
    #[arg(long)]
    pub ca_bundle: Option<PathBuf>,
    #[arg(long, default_value = "us-east-1")]
    pub region: String,
    /// Concurrent keep-alive connections.
    #[arg(long, default_value_t = 16)]
    pub connections: usize,
    /// Stop after this long (seconds).
    #[arg(long, default_value_t = 10.0)]
    pub duration: f64,
    /// Stop after this many requests in all.
    #[arg(long, default_value_t = 200_000)]
    pub requests: u64,
    /// The server's process ID, for its CPU time and peak RSS.
    #[arg(long)]
    pub server_pid: Option<u32>,
    /// A label for the report (e.g. "certfleet sqlite").
    #[arg(long, default_value = "")]
    pub label: String,
    /// Print the report as JSON instead of a table.
    #[arg(long)]
    pub json: bool,
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    if let Command::Ceiling(args) = &cli.command {
        anyhow::ensure!(args.seconds > 0.0 && args.seconds <= 600.0, "--seconds must be in (0, 600]");
        let ceiling = certfleet_loadgen::ceiling::run(args.mode, args.seconds, args.count)?;
        if args.json {
            println!("{}", ceiling.to_json());
        } else {
            println!("{}", ceiling.to_table());
        }
        return Ok(());
    }
    if let Command::Audit(args) = &cli.command {
        return audit(args);
    }
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    match cli.command {
        Command::Api(args) => {
            anyhow::ensure!(args.connections > 0, "--connections must be at least 1");
            anyhow::ensure!(args.duration > 0.0 && args.duration <= 600.0, "--duration must be in (0, 600] seconds");
            let report = runtime.block_on(api::run(&args, Duration::from_secs_f64(args.duration)))?;
            print(&report, args.json);
            Ok(())
        }
        Command::Mqtt(args) => {
            anyhow::ensure!(args.connections > 0, "--connections must be at least 1");
            anyhow::ensure!(args.duration > 0.0 && args.duration <= 600.0, "--duration must be in (0, 600] seconds");
            let report = runtime.block_on(mqtt::run(&args))?;
            print(&report, args.json);
            Ok(())
        }
        Command::Soak(args) => runtime.block_on(soak::run(&args)),
        Command::Ceiling(_) | Command::Audit(_) => Ok(()),
    }
}

fn audit(args: &AuditArgs) -> anyhow::Result<()> {
    use certfleet_loadgen::audit;
    let store = audit::StoreSpec::parse(&args.store, args.schema.clone())?;
    let threads = args.threads.unwrap_or_else(|| std::thread::available_parallelism().map_or(1, usize::from));
    let options = audit::Options {
        store: store.clone(),
        certificates: args.certificates,
        expiring_fraction: args.expiring_fraction,
        reuse: args.reuse,
        threads,
        no_vacuum: args.no_vacuum,
    };
    let report = audit::run(&options);
    if args.drop_schema
        && let audit::StoreSpec::Postgres { url, schema } = &store
    {
        certfleet_registry::PostgresStore::open(url, schema.as_deref())?.drop_schema()?;
    }
    let report = report?;
    if args.json {
        println!("{}", report.to_json());
    } else {
        println!("{}", report.to_table());
    }
    Ok(())
}

fn print(report: &report::Report, json: bool) {
    if json {
        println!("{}", report.to_json());
    } else {
        println!("{}", report.to_table());
    }
}
