//! `certfleet rotation start|list|show|retry`: the rotation extension of a running server's API,
//! called with certfleet-client as the profile's account (like `certfleet endpoint`).

use clap::Subcommand;
use serde_json::Value;

use crate::{Output, Remote};

#[derive(Subcommand)]
pub enum RotationCommand {
    /// Rotate these certificates (a manual campaign): csr_req goes to the client IDs that used each.
    Start {
        #[command(flatten)]
        remote: Remote,
        /// Certificate IDs (64 hex digits).
        #[arg(required = true)]
        certificate_ids: Vec<String>,
        /// The subject rule: the issued certificates carry the old certificate's subject;
        /// `require-csr-match` also refuses a CSR asking for another one (docs/rotation.md).
        #[arg(long, value_enum, default_value_t = SubjectArg::KeepOld)]
        subject: SubjectArg,
    },
    /// List rotations, or show a campaign's counts per state with --campaign alone.
    List {
        #[command(flatten)]
        remote: Remote,
        #[arg(long)]
        campaign: Option<String>,
        /// requested, csr_received, issued, acknowledged, retired or failed.
        #[arg(long)]
        state: Option<String>,
    },
    /// One rotation.
    Show {
        #[command(flatten)]
        remote: Remote,
        id: String,
    },
    /// Put a failed rotation back to requested (csr_req is sent again).
    Retry {
        #[command(flatten)]
        remote: Remote,
        id: String,
    },
}

/// `--subject` of `rotation start`: the campaign's subject rule.
#[derive(Clone, Copy, Debug, clap::ValueEnum)]
pub enum SubjectArg {
    KeepOld,
    RequireCsrMatch,
}

impl SubjectArg {
    fn rule(self) -> certfleet_registry::SubjectRule {
        match self {
            SubjectArg::KeepOld => certfleet_registry::SubjectRule::KeepOld,
            SubjectArg::RequireCsrMatch => certfleet_registry::SubjectRule::RequireCsrMatch,
        }
    }
}

pub async fn run(command: RotationCommand) -> anyhow::Result<()> {
    let (remote, method, path, body) = match &command {
        RotationCommand::Start { remote, certificate_ids, subject } => (
            remote,
            "POST",
            "/certfleet/rotations".to_owned(),
            serde_json::json!({ "certificateIds": certificate_ids, "subject": subject.rule().as_str() }).to_string(),
        ),
        RotationCommand::List { remote, campaign, state } => {
            let mut query = Vec::new();
            if let Some(campaign) = campaign {
                query.push(format!("campaignId={}", encode(campaign)));
            }
            if let Some(state) = state {
                query.push(format!("state={}", encode(state)));
            }
            let path = if query.is_empty() {
                "/certfleet/rotations".to_owned()
            } else {
                format!("/certfleet/rotations?{}", query.join("&"))
            };
            (remote, "GET", path, String::new())
        }
        RotationCommand::Show { remote, id } => {
            (remote, "GET", format!("/certfleet/rotations/{}", encode(id)), String::new())
        }
        RotationCommand::Retry { remote, id } => {
            (remote, "POST", format!("/certfleet/rotations/{}/retry", encode(id)), "{}".to_owned())
        }
    };
    let target = certfleet_client::Target::from_data_dir(&remote.data_dir, &remote.profile, &remote.region)?;
    let mut connection = target.connect().await?;
    let answer = send(&target, &mut connection, method, path, body).await?;
    let campaign = match &command {
        RotationCommand::List { campaign: Some(id), .. } => {
            let path = format!("/certfleet/rotation-campaigns/{}", encode(id));
            Some(send(&target, &mut connection, "GET", path, String::new()).await?)
        }
        _ => None,
    };
    match remote.output {
        Output::Json => match campaign {
            Some(campaign) => {
                println!("{}", serde_json::json!({ "campaign": campaign, "rotations": answer["rotations"] }))
            }
            None => println!("{answer}"),
        },
        Output::Text => {
            if let Some(campaign) = &campaign {
                print_campaign(campaign);
            }
            match &command {
                RotationCommand::Start { .. } => print_campaign(&answer),
                RotationCommand::List { .. } => {
                    println!(
                        "{:<36}  {:<14} {:>3}  {:<20} {:<16}  ERROR",
                        "ROTATION", "STATE", "TRY", "CLIENT ID", "OLD CERTIFICATE"
                    );
                    for rotation in answer["rotations"].as_array().into_iter().flatten() {
                        print_row(rotation);
                    }
                }
                RotationCommand::Show { .. } | RotationCommand::Retry { .. } => {
                    for (key, value) in answer.as_object().into_iter().flatten() {
                        println!("{key:<18} {}", text(value));
                    }
                }
            }
        }
    }
    Ok(())
}

async fn send(
    target: &certfleet_client::Target,
    connection: &mut certfleet_client::Connection,
    method: &'static str,
    path: String,
    body: String,
) -> anyhow::Result<Value> {
    let call = certfleet_client::Call { method, path, body: body.into() };
    let (status, reply) = target.send(connection, &call).await?;
    anyhow::ensure!(status == 200, "the server answered {status}: {}", String::from_utf8_lossy(&reply));
    Ok(serde_json::from_slice(&reply)?)
}

fn print_campaign(campaign: &Value) {
    println!(
        "campaign {} ({}, subject {}, {} rotations)",
        campaign["campaignId"].as_str().unwrap_or("-"),
        campaign["source"].as_str().unwrap_or("-"),
        campaign["subject"].as_str().unwrap_or("-"),
        campaign["total"]
    );
    for (state, count) in campaign["counts"].as_object().into_iter().flatten() {
        println!("  {state:<14} {count}");
    }
}

fn print_row(rotation: &Value) {
    let old = rotation["oldCertificateId"].as_str().unwrap_or("-");
    println!(
        "{:<36}  {:<14} {:>3}  {:<20} {:<16}  {}",
        rotation["rotationId"].as_str().unwrap_or("-"),
        rotation["state"].as_str().unwrap_or("-"),
        rotation["attempts"],
        rotation["clientId"].as_str().unwrap_or("-"),
        &old[..old.len().min(16)],
        rotation["error"].as_str().unwrap_or(""),
    );
}

fn text(value: &Value) -> String {
    match value {
        Value::String(text) => text.clone(),
        Value::Null => "-".into(),
        other => other.to_string(),
    }
}

fn encode(text: &str) -> String {
    text.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-_.".contains(&b) { (b as char).to_string() } else { format!("%{b:02X}") }
        })
        .collect()
}
