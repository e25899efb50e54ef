//! `certfleet-agent`: the device agent's command line. Parses the TOML configuration file and
//! the flags once into the library's typed [`certfleet_agent::Config`], installs the log
//! subscriber, and picks exit codes.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, bail};
use certfleet_agent::store::{Pending, Slot, Store};
use certfleet_agent::{Agent, Backoff, Config, KeyAlgorithm, MqttVersion, TrustBundle};
use clap::{Parser, Subcommand, ValueEnum};
use serde::Deserialize;

#[derive(Parser)]
#[command(
    name = "certfleet-agent",
    version,
    about = "certfleet's device agent: MQTT over mutual TLS and certificate rotation"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Connects and serves the rotation protocol until interrupted.
    Run {
        #[command(flatten)]
        settings: Settings,
        /// Log format.
        #[arg(long, value_enum, default_value = "text")]
        log_format: LogFormat,
    },
    /// Prints which credential is active and the rotation state.
    Status {
        #[command(flatten)]
        settings: Settings,
        #[arg(long, value_enum, default_value = "text")]
        output: Output,
    },
}

#[derive(clap::Args)]
struct Settings {
    /// The configuration file (TOML).
    #[arg(long)]
    config: PathBuf,
    /// Overrides `endpoint` (host:port).
    #[arg(long)]
    endpoint: Option<String>,
    /// Overrides `server_name`.
    #[arg(long)]
    server_name: Option<String>,
    /// Overrides `client_id`.
    #[arg(long)]
    client_id: Option<String>,
    /// Overrides `credentials_dir`.
    #[arg(long)]
    credentials_dir: Option<PathBuf>,
}

#[derive(Clone, Copy, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Clone, Copy, ValueEnum)]
enum Output {
    Text,
    Json,
}

/// The configuration file. Relative paths are relative to the file's directory.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    endpoint: String,
    server_name: Option<String>,
    client_id: String,
    credentials_dir: PathBuf,
    server_trust_bundle: PathBuf,
    device_trust_bundle: PathBuf,
    #[serde(default)]
    key_algorithm: Option<String>,
    #[serde(default)]
    mqtt_version: Option<String>,
    #[serde(default)]
    keep_alive: Option<String>,
    #[serde(default)]
    connect_timeout: Option<String>,
    #[serde(default)]
    alpn: bool,
    #[serde(default)]
    backoff: Option<BackoffFile>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct BackoffFile {
    initial: Option<String>,
    max: Option<String>,
}

/// A duration with a unit: `250ms`, `30s`, `5m`, `1h`.
fn duration(text: &str) -> anyhow::Result<Duration> {
    let text = text.trim();
    let split = text.find(|c: char| !c.is_ascii_digit()).unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let number: u64 = number.parse().with_context(|| format!("{text:?} is not a duration like 30s"))?;
    Ok(match unit.trim() {
        "ms" => Duration::from_millis(number),
        "s" => Duration::from_secs(number),
        "m" => Duration::from_secs(number * 60),
        "h" => Duration::from_secs(number * 3600),
        other => bail!("{text:?}: unknown unit {other:?} (ms, s, m, h)"),
    })
}

fn config(settings: &Settings) -> anyhow::Result<Config> {
    let text =
        std::fs::read_to_string(&settings.config).with_context(|| format!("reading {}", settings.config.display()))?;
    let file: File = toml::from_str(&text).with_context(|| format!("parsing {}", settings.config.display()))?;
    let base = settings.config.parent().unwrap_or(Path::new("."));
    let path = |path: &Path| base.join(path);
    let server_roots = TrustBundle::from_file(&path(&file.server_trust_bundle)).context("server_trust_bundle")?;
    let device_roots = TrustBundle::from_file(&path(&file.device_trust_bundle)).context("device_trust_bundle")?;
    let endpoint = settings.endpoint.clone().unwrap_or(file.endpoint);
    let server_name = settings.server_name.clone().or(file.server_name).unwrap_or_else(|| {
        endpoint.rsplit_once(':').map_or(endpoint.as_str(), |(host, _)| host).trim_matches(['[', ']']).to_owned()
    });
    let credentials_dir = settings.credentials_dir.clone().unwrap_or_else(|| path(&file.credentials_dir));
    let client_id = settings.client_id.clone().unwrap_or(file.client_id);
    let mut config = Config::new(endpoint, server_name, client_id, credentials_dir, server_roots, device_roots);
    if let Some(name) = &file.key_algorithm {
        config.key_algorithm =
            KeyAlgorithm::parse(name).with_context(|| format!("key_algorithm {name:?}: p256, rsa2048 or rsa3072"))?;
    }
    config.mqtt_version = match file.mqtt_version.as_deref() {
        None | Some("5") | Some("5.0") => MqttVersion::V5,
        Some("3.1.1") => MqttVersion::V311,
        Some(other) => bail!("mqtt_version {other:?}: \"5\" or \"3.1.1\""),
    };
    if let Some(text) = &file.keep_alive {
        config.keep_alive = duration(text).context("keep_alive")?;
        if config.keep_alive.is_zero() || config.keep_alive > Duration::from_secs(65535) {
            bail!("keep_alive must be between 1s and 65535s");
        }
    }
    if let Some(text) = &file.connect_timeout {
        config.connect_timeout = duration(text).context("connect_timeout")?;
    }
    config.alpn = file.alpn;
    if let Some(backoff) = &file.backoff {
        let defaults = Backoff::default();
        let initial = backoff.initial.as_deref().map(duration).transpose().context("backoff.initial")?;
        let max = backoff.max.as_deref().map(duration).transpose().context("backoff.max")?;
        config.backoff = Backoff { initial: initial.unwrap_or(defaults.initial), max: max.unwrap_or(defaults.max) };
        if config.backoff.initial.is_zero() || config.backoff.max < config.backoff.initial {
            bail!("backoff: 0 < initial <= max");
        }
    }
    Ok(config)
}

fn status(settings: &Settings, output: Output) -> anyhow::Result<()> {
    let config = config(settings)?;
    let store = Store::open(&config.credentials_dir)?;
    let state = store.load()?;
    let certificate_id = |slot: &Slot| {
        store.read_certificate(slot).ok().and_then(|pem| {
            use rustls_pki_types::pem::PemObject as _;
            let first = rustls_pki_types::CertificateDer::pem_slice_iter(pem.as_bytes()).next()?.ok()?;
            Some(certfleet_pki::CertificateId::of_der(&first).to_string())
        })
    };
    let current_id = certificate_id(&state.current);
    let (phase, pending_slot, pending_id) = match &state.pending {
        None => ("idle", None, None),
        Some(Pending::Key { slot }) => ("key-generated", Some(slot.as_str().to_owned()), None),
        Some(Pending::Certificate { slot, certificate_id, proven }) => (
            if *proven { "certificate-connected" } else { "certificate-installed" },
            Some(slot.as_str().to_owned()),
            Some(certificate_id.to_string()),
        ),
    };
    let next_connection = match certfleet_agent::rotation::first_choice(&state, 0) {
        certfleet_agent::Credential::Current => "current",
        certfleet_agent::Credential::Pending => "pending",
    };
    match output {
        Output::Json => println!(
            "{}",
            serde_json::json!({
                "clientId": config.client_id,
                "credentialsDir": config.credentials_dir.display().to_string(),
                "current": { "slot": state.current.as_str(), "certificateId": current_id },
                "rotation": phase,
                "pending": pending_slot.as_ref().map(|slot| serde_json::json!({ "slot": slot, "certificateId": pending_id })),
                "nextConnectionUses": next_connection,
                "unreportedError": state.unreported_error.as_ref().map(|report| report.payload()),
            })
        ),
        Output::Text => {
            println!("client id:            {}", config.client_id);
            println!("credentials:          {}", config.credentials_dir.display());
            println!(
                "current:              {} ({})",
                state.current.as_str(),
                current_id.as_deref().unwrap_or("no readable certificate")
            );
            println!("rotation:             {phase}");
            if let Some(slot) = &pending_slot {
                println!("pending:              {slot} ({})", pending_id.as_deref().unwrap_or("no certificate yet"));
            }
            println!("next connection uses: {next_connection}");
            if let Some(report) = &state.unreported_error {
                let code = report.code.map_or("no code", |code| code.as_str());
                println!("unreported error:     {} ({code})", report.reason);
            }
        }
    }
    Ok(())
}

async fn run(settings: &Settings) -> anyhow::Result<()> {
    let config = config(settings)?;
    let (agent, _events) = Agent::new(config)?;
    let (stop, stopped) = tokio::sync::watch::channel(false);
    tokio::spawn(async move {
        shutdown_signal().await;
        tracing::info!("stopping");
        let _ = stop.send(true);
        // Keep the sender alive: a dropped sender also reads as "stop".
        std::future::pending::<()>().await;
    });
    agent.run(stopped).await?;
    Ok(())
}

async fn shutdown_signal() {
    #[cfg(unix)]
    {
        let mut terminate = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(signal) => signal,
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
                return;
            }
        };
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = terminate.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = tokio::signal::ctrl_c().await;
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let result = match &cli.command {
        Command::Status { settings, output } => status(settings, *output),
        Command::Run { settings, log_format } => {
            let filter = tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
            match log_format {
                LogFormat::Text => tracing_subscriber::fmt().with_env_filter(filter).init(),
                LogFormat::Json => tracing_subscriber::fmt().json().with_env_filter(filter).init(),
            }
            tokio::runtime::Builder::new_multi_thread()
                .worker_threads(1)
                .enable_all()
                .build()
                .context("starting the runtime")
                .and_then(|runtime| runtime.block_on(run(settings)))
        }
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {error:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(text: &str, expected: Option<Duration>) {
        assert_eq!(duration(text).ok(), expected, "{text}");
    }

    #[test]
    fn durations() {
        check("250ms", Some(Duration::from_millis(250)));
        check("30s", Some(Duration::from_secs(30)));
        check("5m", Some(Duration::from_secs(300)));
        check("1h", Some(Duration::from_secs(3600)));
        check("30", None);
        check("s", None);
        check("3d", None);
    }
}
