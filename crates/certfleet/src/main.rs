//! The `certfleet` binary: the server and its admin commands. The only place that parses the
//! command line and the configuration file, installs the log subscriber and picks exit codes.

mod audit_worker;
mod budget;
mod config;
mod datadir;
mod rotation_cli;
mod server;

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context;
use certfleet_registry::AccountId;
use certfleet_services::{Services, SystemClock};
use clap::{Parser, Subcommand, ValueEnum};

use crate::config::{Config, Overrides};

#[derive(Parser)]
#[command(name = "certfleet", version, about = "A self-hosted, AWS IoT-compatible device-identity plane")]
struct Cli {
    /// Log format.
    #[arg(long, global = true, value_enum, default_value = "text")]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Clone, Copy, ValueEnum, PartialEq, Eq)]
enum Output {
    Text,
    Json,
}

#[derive(clap::Args)]
struct Common {
    /// A TOML configuration file (see `certfleet config default`).
    #[arg(long, env = "CERTFLEET_CONFIG")]
    config: Option<PathBuf>,
    /// The data directory (overrides the file).
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// A PostgreSQL URL for the registry (overrides the file; default: SQLite in the data directory).
    #[arg(long, env = "CERTFLEET_DATABASE_URL")]
    database_url: Option<String>,
}

#[derive(Subcommand)]
enum Command {
    /// Run the server (HTTPS API), creating the data directory on first start.
    Server {
        #[command(flatten)]
        common: Common,
        /// Where the API listens, HOST:PORT (port 0 picks one; see endpoints.json).
        #[arg(long)]
        api_addr: Option<String>,
        /// Where the MQTT gateway listens, HOST:PORT (port 0 picks one; see endpoints.json).
        #[arg(long)]
        mqtt_addr: Option<String>,
        /// Where Prometheus metrics are served, HOST:PORT (default: off).
        #[arg(long)]
        metrics_addr: Option<String>,
        /// This node's name, unique among the nodes sharing the registry: 1 to 64 ASCII
        /// letters, digits, '-' and '_' (default: `[node] id`, else the host name and a random
        /// suffix).
        #[arg(long)]
        node_id: Option<String>,
        /// The NATS server (JetStream enabled) joining this node to the other nodes as one hub,
        /// nats://HOST:PORT (default: `[node] nats_url`, else the node runs alone).
        #[arg(long)]
        nats_url: Option<String>,
    },
    /// Manage accounts.
    Account {
        #[command(subcommand)]
        command: AccountCommand,
    },
    /// Configuration helpers.
    Config {
        #[command(subcommand)]
        command: ConfigCommand,
    },
    /// Look at a running server's device gateway.
    Gateway {
        #[command(subcommand)]
        command: GatewayCommand,
    },
    /// Server certificates for domain configurations (what `aws acm import-certificate` does,
    /// offline).
    ServerCert {
        #[command(subcommand)]
        command: ServerCertCommand,
    },
    /// Server-root migration of a running server's domain configurations.
    Endpoint {
        #[command(subcommand)]
        command: EndpointCommand,
    },
    /// Certificate rotation on a running server: start, list, show, retry.
    Rotation {
        #[command(subcommand)]
        command: rotation_cli::RotationCommand,
    },
    /// Connect to a TLS endpoint and check the chain it presents against a trust bundle.
    TlsCheck(certfleet_tlstools::TlsCheckArgs),
    /// Find every certificate in files, directories and firmware images, and flag what expires.
    Scan(certfleet_tlstools::ScanArgs),
}

#[derive(Subcommand)]
enum ServerCertCommand {
    /// Import a server certificate, its chain and its private key (sealed at rest).
    Import {
        #[command(flatten)]
        common: Common,
        /// The 12-digit account ID.
        #[arg(long)]
        account: String,
        /// The leaf certificate (PEM).
        #[arg(long)]
        certificate: PathBuf,
        /// Its private key (PEM: PKCS#8, SEC1 or PKCS#1).
        #[arg(long)]
        private_key: PathBuf,
        /// The intermediates (PEM), leaf's issuer first.
        #[arg(long)]
        chain: Option<PathBuf>,
        #[arg(long, value_enum, default_value = "text")]
        output: Output,
    },
    /// List an account's server certificates.
    List {
        #[command(flatten)]
        common: Common,
        /// The 12-digit account ID.
        #[arg(long)]
        account: String,
        #[arg(long, value_enum, default_value = "text")]
        output: Output,
    },
}

#[derive(clap::Args)]
struct Remote {
    /// The running server's data directory (endpoints.json, credentials, server-root.pem).
    #[arg(long)]
    data_dir: PathBuf,
    /// The AWS CLI profile (in DIR/credentials) whose account to act for.
    #[arg(long, default_value = "default")]
    profile: String,
    #[arg(long, default_value = "us-east-1")]
    region: String,
    #[arg(long, value_enum, default_value = "text")]
    output: Output,
}

#[derive(Subcommand)]
enum EndpointCommand {
    /// Serve a configuration's next chain, and drain the sessions on the old one.
    Migrate {
        #[command(flatten)]
        remote: Remote,
        /// The domain configuration (`iot:Data-ATS`, or a custom name).
        name: String,
        /// Stage these server certificates (ACM ARNs) as the next chain first.
        #[arg(long = "next-cert-arn")]
        next_cert_arns: Vec<String>,
        /// Sessions closed per second (per node), each after a jittered delay.
        #[arg(long)]
        drain_per_second: Option<f64>,
        /// Revert by itself when this many handshakes fail on the new chain (per node).
        #[arg(long)]
        guard_max_failures: Option<u64>,
    },
    /// Set the chain a configuration serves now (new handshakes get it at once; live sessions
    /// stay). With no --cert-arn, a reserved configuration goes back to the built-in chain.
    SetChain {
        #[command(flatten)]
        remote: Remote,
        name: String,
        /// Server certificates (ACM ARNs): at most one ECDSA and one RSA.
        #[arg(long = "cert-arn")]
        cert_arns: Vec<String>,
    },
    /// Go back to the current chain (sessions on the next one are drained back).
    Revert {
        #[command(flatten)]
        remote: Remote,
        name: String,
    },
    /// Make the next chain the current one, ending the migration.
    Finish {
        #[command(flatten)]
        remote: Remote,
        name: String,
    },
    /// The chains, per-chain counters and the drain report of this node.
    Status {
        #[command(flatten)]
        remote: Remote,
        name: String,
    },
}

#[derive(Subcommand)]
enum GatewayCommand {
    /// List the devices connected to a running server (asks its API, as the profile's account).
    Sessions {
        /// The running server's data directory (endpoints.json, credentials, server-root.pem).
        #[arg(long)]
        data_dir: PathBuf,
        /// The AWS CLI profile (in DIR/credentials) whose account to list.
        #[arg(long, default_value = "default")]
        profile: String,
        #[arg(long, default_value = "us-east-1")]
        region: String,
        #[arg(long, value_enum, default_value = "text")]
        output: Output,
    },
}

#[derive(Subcommand)]
enum AccountCommand {
    /// Create an account with an access key, and add its profile to DIR/credentials and DIR/config.
    Create {
        #[command(flatten)]
        common: Common,
        /// The AWS CLI profile name to write.
        #[arg(long)]
        profile: String,
        #[arg(long, value_enum, default_value = "text")]
        output: Output,
    },
    /// List accounts.
    List {
        #[command(flatten)]
        common: Common,
        #[arg(long, value_enum, default_value = "text")]
        output: Output,
    },
    /// Delete an account and everything it owns.
    Delete {
        #[command(flatten)]
        common: Common,
        /// The 12-digit account ID.
        account: String,
    },
    /// Manage an account's access keys.
    Keys {
        #[command(subcommand)]
        command: KeysCommand,
    },
}

#[derive(Subcommand)]
enum KeysCommand {
    /// Create an access key for an account and write it as a profile.
    Create {
        #[command(flatten)]
        common: Common,
        /// The 12-digit account ID.
        #[arg(long)]
        account: String,
        /// The AWS CLI profile name to write.
        #[arg(long)]
        profile: String,
        #[arg(long, value_enum, default_value = "text")]
        output: Output,
    },
    /// List an account's access keys (their IDs and creation dates, never their secrets).
    List {
        #[command(flatten)]
        common: Common,
        /// The 12-digit account ID.
        #[arg(long)]
        account: String,
        #[arg(long, value_enum, default_value = "text")]
        output: Output,
    },
    /// Delete an access key: every API node refuses it within a second.
    Delete {
        #[command(flatten)]
        common: Common,
        /// The 12-digit account ID the key belongs to.
        #[arg(long)]
        account: String,
        /// The access key ID (AKIA...).
        access_key_id: String,
        #[arg(long, value_enum, default_value = "text")]
        output: Output,
    },
}

#[derive(Subcommand)]
enum ConfigCommand {
    /// Print the documented default configuration.
    Default,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging(cli.log_format);
    // The tools' exit codes are part of their contract (see their --help and docs/tools.md).
    let (now, mut stdout, mut stderr) = (time::OffsetDateTime::now_utc(), std::io::stdout(), std::io::stderr());
    match &cli.command {
        Command::TlsCheck(args) => {
            return ExitCode::from(certfleet_tlstools::tls_check::run(args, now, &mut stdout, &mut stderr).code());
        }
        Command::Scan(args) => {
            return ExitCode::from(certfleet_tlstools::scan::run(args, now, &mut stdout, &mut stderr).code());
        }
        _ => {}
    }
    match run(cli.command) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("certfleet: {error:#}");
            ExitCode::FAILURE
        }
    }
}

fn init_logging(format: LogFormat) {
    // rustls logs what any peer sends wrong (an IP address as SNI, as mosquitto clients do, is
    // a WARN per handshake): a stranger must not decide the log's volume, and the gateway logs
    // its own refusals with their reason. RUST_LOG overrides this.
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,rustls=error"));
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

fn load(common: Common, api_addr: Option<String>, mqtt_addr: Option<String>) -> anyhow::Result<Config> {
    load_node(common, api_addr, mqtt_addr, None, None)
}

fn load_node(
    common: Common,
    api_addr: Option<String>,
    mqtt_addr: Option<String>,
    node_id: Option<String>,
    nats_url: Option<String>,
) -> anyhow::Result<Config> {
    Config::load(
        common.config.as_deref(),
        Overrides {
            data_dir: common.data_dir,
            api_addr,
            mqtt_addr,
            metrics_addr: None,
            database_url: common.database_url,
            node_id,
            nats_url,
        },
    )
}

/// The services for an admin command: no CA key is opened, since admin commands issue nothing.
fn admin_services(config: &Config) -> anyhow::Result<Services> {
    let store = datadir::open_store(config)?;
    Ok(Services::new(
        store,
        Arc::new(SystemClock),
        certfleet_services::Config { region: config.region.clone(), ..certfleet_services::Config::default() },
        None,
    ))
}

fn run(command: Command) -> anyhow::Result<()> {
    match command {
        Command::Server { common, api_addr, mqtt_addr, metrics_addr, node_id, nats_url } => {
            let mut config = load_node(common, api_addr, mqtt_addr, node_id, nats_url)?;
            if let Some(addr) = metrics_addr.filter(|addr| !addr.is_empty()) {
                config.metrics_addr =
                    Some(addr.parse().with_context(|| format!("--metrics-addr {addr:?} is not an address"))?);
            }
            let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
            runtime.block_on(server::run(config))
        }
        Command::Config { command: ConfigCommand::Default } => {
            print!("{}", config::DEFAULT_CONFIG);
            Ok(())
        }
        Command::Account { command } => account(command),
        Command::ServerCert { command } => server_cert(command),
        Command::Endpoint { command } => {
            let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
            runtime.block_on(endpoint(command))
        }
        Command::Rotation { command } => {
            let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
            runtime.block_on(rotation_cli::run(command))
        }
        Command::Gateway { command: GatewayCommand::Sessions { data_dir, profile, region, output } } => {
            let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
            runtime.block_on(gateway_sessions(&data_dir, &profile, &region, output))
        }
        // main runs the tools itself, for their exit codes.
        Command::TlsCheck(_) | Command::Scan(_) => Ok(()),
    }
}

async fn gateway_sessions(
    data_dir: &std::path::Path,
    profile: &str,
    region: &str,
    output: Output,
) -> anyhow::Result<()> {
    let target = certfleet_client::Target::from_data_dir(data_dir, profile, region)?;
    let mut connection = target.connect().await?;
    let call = certfleet_client::Call { method: "GET", path: "/certfleet/sessions".into(), body: Default::default() };
    let (status, body) = target.send(&mut connection, &call).await?;
    anyhow::ensure!(status == 200, "the server answered {status}: {}", String::from_utf8_lossy(&body));
    let answer: serde_json::Value = serde_json::from_slice(&body)?;
    match output {
        Output::Json => println!("{answer}"),
        Output::Text => {
            println!(
                "{:<24} {:<64} {:<8} {:<22} {:<20} NODE",
                "CLIENT ID", "CERTIFICATE", "TLS", "PEER", "CONNECTED AT"
            );
            for session in answer["sessions"].as_array().into_iter().flatten() {
                let connected = session["connectedAt"].as_f64().unwrap_or(0.0);
                let since = time::OffsetDateTime::from_unix_timestamp(connected as i64)
                    .ok()
                    .and_then(|at| at.format(&time::format_description::well_known::Rfc3339).ok())
                    .unwrap_or_default();
                println!(
                    "{:<24} {:<64} {:<8} {:<22} {:<20} {}",
                    session["clientId"].as_str().unwrap_or("-"),
                    session["certificateId"].as_str().unwrap_or("-"),
                    session["tlsVersion"].as_str().unwrap_or("-"),
                    session["ipAddress"].as_str().unwrap_or("-"),
                    since,
                    session["node"].as_str().unwrap_or("-")
                );
            }
        }
    }
    Ok(())
}

fn server_cert(command: ServerCertCommand) -> anyhow::Result<()> {
    let read =
        |path: &std::path::Path| std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()));
    match command {
        ServerCertCommand::Import { common, account, certificate, private_key, chain, output } => {
            let config = load(common, None, None)?;
            let services = admin_services(&config)?;
            services.attach_key_passphrase(datadir::passphrase(&config)?);
            let caller = certfleet_services::Caller { account: AccountId::parse(&account)? };
            let import = certfleet_services::ServerCertificateImport {
                certificate_pem: read(&certificate)?,
                private_key_pem: zeroize::Zeroizing::new(read(&private_key)?),
                chain_pem: chain.as_deref().map(read).transpose()?,
                certificate_arn: None,
            };
            let arn = services.import_server_certificate(&caller, &import)?;
            match output {
                Output::Json => println!("{}", serde_json::json!({ "CertificateArn": arn })),
                Output::Text => println!("{arn}"),
            }
            Ok(())
        }
        ServerCertCommand::List { common, account, output } => {
            let config = load(common, None, None)?;
            let services = admin_services(&config)?;
            let caller = certfleet_services::Caller { account: AccountId::parse(&account)? };
            let mut after = None;
            let mut all = Vec::new();
            loop {
                let (items, next) = services.list_server_certificates(&caller, after, 1000)?;
                all.extend(items);
                match next {
                    Some(next) => after = Some(next),
                    None => break,
                }
            }
            let rfc3339 = |at: time::OffsetDateTime| {
                at.format(&time::format_description::well_known::Rfc3339).unwrap_or_default()
            };
            match output {
                Output::Json => {
                    let items: Vec<_> = all
                        .iter()
                        .map(|c| {
                            serde_json::json!({
                                "CertificateArn": c.arn,
                                "DomainName": c.record.domain_name,
                                "KeyAlgorithm": c.record.key_algorithm,
                                "NotAfter": rfc3339(c.record.not_after),
                                "Sha256": c.record.fingerprint,
                                "InUseBy": c.in_use_by,
                            })
                        })
                        .collect();
                    println!("{}", serde_json::json!({ "CertificateSummaryList": items }));
                }
                Output::Text => {
                    println!("{:<90} {:<28} {:<14} {:<21} IN USE BY", "ARN", "DOMAIN", "KEY", "NOT AFTER");
                    for c in &all {
                        println!(
                            "{:<90} {:<28} {:<14} {:<21} {}",
                            c.arn,
                            c.record.domain_name,
                            c.record.key_algorithm,
                            rfc3339(c.record.not_after),
                            c.in_use_by.join(",")
                        );
                    }
                }
            }
            Ok(())
        }
    }
}

async fn endpoint(command: EndpointCommand) -> anyhow::Result<()> {
    let (remote, name) = match &command {
        EndpointCommand::Migrate { remote, name, .. }
        | EndpointCommand::SetChain { remote, name, .. }
        | EndpointCommand::Revert { remote, name }
        | EndpointCommand::Finish { remote, name }
        | EndpointCommand::Status { remote, name } => (remote, name),
    };
    let target = certfleet_client::Target::from_data_dir(&remote.data_dir, &remote.profile, &remote.region)?;
    let mut connection = target.connect().await?;
    let label: String = name
        .bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-_.".contains(&b) { (b as char).to_string() } else { format!("%{b:02X}") }
        })
        .collect();
    let base = format!("/certfleet/domain-configurations/{label}");
    let mut calls: Vec<(&'static str, String, serde_json::Value)> = Vec::new();
    match &command {
        EndpointCommand::Migrate { next_cert_arns, drain_per_second, guard_max_failures, .. } => {
            if !next_cert_arns.is_empty() {
                calls.push((
                    "PUT",
                    format!("{base}/next-chain"),
                    serde_json::json!({ "serverCertificateArns": next_cert_arns }),
                ));
            }
            let mut body = serde_json::json!({});
            if let Some(rate) = drain_per_second {
                body["drainPerSecond"] = (*rate).into();
            }
            if let Some(limit) = guard_max_failures {
                body["guardMaxFailures"] = (*limit).into();
            }
            calls.push(("POST", format!("{base}/migrate"), body));
        }
        EndpointCommand::SetChain { cert_arns, .. } => {
            calls.push(("PUT", format!("{base}/chain"), serde_json::json!({ "serverCertificateArns": cert_arns })));
        }
        EndpointCommand::Revert { .. } => calls.push(("POST", format!("{base}/revert"), serde_json::json!({}))),
        EndpointCommand::Finish { .. } => calls.push(("POST", format!("{base}/finish"), serde_json::json!({}))),
        EndpointCommand::Status { .. } => calls.push(("GET", format!("{base}/migration"), serde_json::Value::Null)),
    }
    let mut answer = serde_json::Value::Null;
    for (method, path, body) in calls {
        let body = if body.is_null() { Default::default() } else { body.to_string().into() };
        let call = certfleet_client::Call { method, path, body };
        let (status, reply) = target.send(&mut connection, &call).await?;
        anyhow::ensure!(status == 200, "the server answered {status}: {}", String::from_utf8_lossy(&reply));
        answer = serde_json::from_slice(&reply)?;
    }
    match remote.output {
        Output::Json => println!("{answer}"),
        Output::Text => print_endpoint(&answer),
    }
    Ok(())
}

fn print_endpoint(answer: &serde_json::Value) {
    let arns = |list: &serde_json::Value| -> String {
        let items: Vec<&str> =
            list.as_array().into_iter().flatten().filter_map(|c| c["serverCertificateArn"].as_str()).collect();
        if items.is_empty() { "(built-in)".to_owned() } else { items.join(", ") }
    };
    println!(
        "configuration: {} ({})",
        answer["domainConfigurationName"].as_str().unwrap_or("-"),
        answer["domainName"].as_str().unwrap_or("-")
    );
    println!("serving:       {}", answer["certfleet"]["serving"].as_str().unwrap_or("-"));
    println!("current chain: {}", arns(&answer["serverCertificates"]));
    println!("next chain:    {}", arns(&answer["certfleet"]["nextServerCertificates"]));
    if let Some(chains) = answer["chains"].as_array() {
        println!("{:<8} {:<10} {:>10} {:>10}  FAILED BY ALERT  CHAIN", "SERVING", "", "CONNECTED", "COMPLETED");
        for chain in chains {
            println!(
                "{:<8} {:<10} {:>10} {:>10}  {}  {}",
                if chain["serving"].as_bool() == Some(true) { "yes" } else { "" },
                "",
                chain["connected"],
                chain["handshakesCompleted"],
                chain["handshakesFailed"],
                chain["chain"].as_str().unwrap_or("-"),
            );
        }
    }
    if let Some(drain) = answer.get("drain").filter(|d| !d.is_null()) {
        let list = |key: &str| drain[key].as_array().map_or(0, Vec::len);
        println!(
            "drain: {} of {} sessions closed; came back on the new chain: {}; not back: {}",
            drain["closed"],
            drain["sessions"],
            list("cameBack"),
            list("notBack")
        );
        for id in drain["notBack"].as_array().into_iter().flatten() {
            println!("  not back: {}", id.as_str().unwrap_or("-"));
        }
        if let Some(reason) = drain["guardTripped"].as_str() {
            println!("guard: {reason}");
        }
    }
    // In a cluster: each node's own view, and who did not answer.
    for node in answer["nodes"].as_array().into_iter().flatten() {
        println!(
            "node {}: serving {}, {} connected, drain {} of {}{}",
            node["node"].as_str().unwrap_or("-"),
            node["serving"].as_str().unwrap_or("(not resolved yet)"),
            node["connected"],
            node["drainClosed"],
            node["drainSessions"],
            node["guardTripped"].as_str().map(|reason| format!(", guard: {reason}")).unwrap_or_default()
        );
    }
    for node in answer["missingNodes"].as_array().into_iter().flatten() {
        println!("node {}: did not answer in time (not counted above)", node.as_str().unwrap_or("-"));
    }
}

fn account(command: AccountCommand) -> anyhow::Result<()> {
    match command {
        AccountCommand::Create { common, profile, output } => {
            let config = load(common, None, None)?;
            let services = admin_services(&config)?;
            let account = services.create_account()?;
            let key = services.create_access_key(&account.id)?;
            datadir::add_profile(&config.data_dir, &profile, &key, &config.region)?;
            print_key(&account.id, &key.access_key_id, &profile, output);
            Ok(())
        }
        AccountCommand::List { common, output } => {
            let config = load(common, None, None)?;
            let accounts = admin_services(&config)?.list_accounts()?;
            match output {
                Output::Json => {
                    let list: Vec<_> = accounts
                        .iter()
                        .map(|account| serde_json::json!({"accountId": account.id.to_string(), "endpointIdentifier": account.endpoint_identifier}))
                        .collect();
                    println!("{}", serde_json::json!({ "accounts": list }));
                }
                Output::Text => {
                    for account in accounts {
                        println!("{}\t{}", account.id, account.endpoint_identifier);
                    }
                }
            }
            Ok(())
        }
        AccountCommand::Delete { common, account } => {
            let config = load(common, None, None)?;
            let id = AccountId::parse(&account).context("the account ID")?;
            admin_services(&config)?.delete_account(&id)?;
            println!("deleted account {id}");
            Ok(())
        }
        AccountCommand::Keys { command: KeysCommand::Create { common, account, profile, output } } => {
            let config = load(common, None, None)?;
            let id = AccountId::parse(&account).context("the account ID")?;
            let key = admin_services(&config)?.create_access_key(&id)?;
            datadir::add_profile(&config.data_dir, &profile, &key, &config.region)?;
            print_key(&id, &key.access_key_id, &profile, output);
            Ok(())
        }
        AccountCommand::Keys { command: KeysCommand::List { common, account, output } } => {
            let config = load(common, None, None)?;
            let id = AccountId::parse(&account).context("the account ID")?;
            let keys = admin_services(&config)?.list_access_keys(&id)?;
            let created = |key: &certfleet_services::AccessKeySummary| {
                key.created_at.format(&time::format_description::well_known::Rfc3339).unwrap_or_default()
            };
            match output {
                Output::Json => {
                    let list: Vec<_> = keys
                        .iter()
                        .map(|key| serde_json::json!({"accessKeyId": key.access_key_id, "accountId": key.account.to_string(), "createDate": created(key)}))
                        .collect();
                    println!("{}", serde_json::json!({ "accessKeys": list }));
                }
                Output::Text => {
                    for key in &keys {
                        println!("{}\t{}", key.access_key_id, created(key));
                    }
                }
            }
            Ok(())
        }
        AccountCommand::Keys { command: KeysCommand::Delete { common, account, access_key_id, output } } => {
            let config = load(common, None, None)?;
            let id = AccountId::parse(&account).context("the account ID")?;
            admin_services(&config)?.delete_access_key(&id, &access_key_id)?;
            match output {
                Output::Json => println!(
                    "{}",
                    serde_json::json!({"accountId": id.to_string(), "accessKeyId": access_key_id, "deleted": true})
                ),
                Output::Text => println!("deleted access key {access_key_id} of account {id}"),
            }
            Ok(())
        }
    }
}

fn print_key(account: &AccountId, access_key_id: &str, profile: &str, output: Output) {
    match output {
        Output::Json => println!(
            "{}",
            serde_json::json!({"accountId": account.to_string(), "accessKeyId": access_key_id, "profile": profile})
        ),
        Output::Text => println!("account {account}: access key {access_key_id} written as profile {profile}"),
    }
}
