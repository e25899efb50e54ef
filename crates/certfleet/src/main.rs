//! The `certfleet` binary: the server and its admin commands. The only place that parses the
//! command line and the configuration file, installs the log subscriber and picks exit codes.

mod audit_worker;
mod config;
mod datadir;
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
    #[arg(long)]
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
        /// Where the MQTT gateway listens, HOST:PORT (reserved: the gateway is not built yet).
        #[arg(long)]
        mqtt_addr: Option<String>,
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
}

#[derive(Subcommand)]
enum ConfigCommand {
    /// Print the documented default configuration.
    Default,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging(cli.log_format);
    match run(cli.command) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("certfleet: {error:#}");
            ExitCode::FAILURE
        }
    }
}

fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

fn load(common: Common, api_addr: Option<String>, mqtt_addr: Option<String>) -> anyhow::Result<Config> {
    Config::load(
        common.config.as_deref(),
        Overrides { data_dir: common.data_dir, api_addr, mqtt_addr, database_url: common.database_url },
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
        Command::Server { common, api_addr, mqtt_addr } => {
            let config = load(common, api_addr, mqtt_addr)?;
            let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
            runtime.block_on(server::run(config))
        }
        Command::Config { command: ConfigCommand::Default } => {
            print!("{}", config::DEFAULT_CONFIG);
            Ok(())
        }
        Command::Account { command } => account(command),
        Command::Gateway { command: GatewayCommand::Sessions { data_dir, profile, region, output } } => {
            let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
            runtime.block_on(gateway_sessions(&data_dir, &profile, &region, output))
        }
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
            println!("{:<24} {:<64} {:<8} {:<22} CONNECTED AT", "CLIENT ID", "CERTIFICATE", "TLS", "PEER");
            for session in answer["sessions"].as_array().into_iter().flatten() {
                let connected = session["connectedAt"].as_f64().unwrap_or(0.0);
                let since = time::OffsetDateTime::from_unix_timestamp(connected as i64)
                    .ok()
                    .and_then(|at| at.format(&time::format_description::well_known::Rfc3339).ok())
                    .unwrap_or_default();
                println!(
                    "{:<24} {:<64} {:<8} {:<22} {}",
                    session["clientId"].as_str().unwrap_or("-"),
                    session["certificateId"].as_str().unwrap_or("-"),
                    session["tlsVersion"].as_str().unwrap_or("-"),
                    session["ipAddress"].as_str().unwrap_or("-"),
                    since
                );
            }
        }
    }
    Ok(())
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
