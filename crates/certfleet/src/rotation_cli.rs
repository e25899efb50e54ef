//! `certfleet rotation start|wait|list|show|retry`: the rotation extension of a running server's
//! API, called with certfleet-client as the profile's account (like `certfleet endpoint`).
//! `start --wait` and `wait` follow a campaign until every rotation is closed, with a progress
//! line on stderr when stderr is a terminal (nothing else is written there meanwhile, so a
//! script reading stdout or a log sees only the result).

use std::io::{IsTerminal, Write};
use std::time::{Duration, Instant};

use certfleet_registry::RotationState;
use clap::Subcommand;
use serde_json::Value;

use crate::{Output, Remote};

/// How often a campaign is asked for its progress while waiting.
const POLL: Duration = Duration::from_secs(1);

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
        /// Wait until every rotation of the campaign is closed (retired or failed), showing its
        /// progress on a terminal; fails when a rotation failed.
        #[arg(long)]
        wait: bool,
        /// How long --wait waits at most (`90s`, `30m`, `2h`).
        #[arg(long, default_value = "1h", value_parser = wait_limit)]
        timeout: Duration,
    },
    /// Wait until every rotation of a campaign is closed (retired or failed), showing its
    /// progress on a terminal; fails when a rotation failed.
    Wait {
        #[command(flatten)]
        remote: Remote,
        /// The campaign ID (from `rotation start`, the console or an audit).
        campaign: String,
        /// How long to wait at most (`90s`, `30m`, `2h`).
        #[arg(long, default_value = "1h", value_parser = wait_limit)]
        timeout: Duration,
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

fn wait_limit(text: &str) -> Result<Duration, String> {
    let limit = crate::config::parse_duration(text, "--timeout").map_err(|error| error.to_string())?;
    Duration::try_from(limit).map_err(|error| error.to_string())
}

pub async fn run(command: RotationCommand) -> anyhow::Result<()> {
    let (remote, method, path, body) = match &command {
        RotationCommand::Start { remote, certificate_ids, subject, .. } => (
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
        RotationCommand::Wait { remote, campaign, .. } => {
            (remote, "GET", format!("/certfleet/rotation-campaigns/{}", encode(campaign)), String::new())
        }
    };
    let target = certfleet_client::Target::from_data_dir(&remote.data_dir, &remote.profile, &remote.region)?;
    let mut connection = target.connect().await?;
    let answer = send(&target, &mut connection, method, path, body).await?;
    let waiting = match &command {
        RotationCommand::Start { wait: true, timeout, .. } | RotationCommand::Wait { timeout, .. } => Some(*timeout),
        _ => None,
    };
    if let Some(timeout) = waiting {
        return wait(&target, &mut connection, answer, timeout, remote.output).await;
    }
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
                RotationCommand::Start { .. } | RotationCommand::Wait { .. } => print_campaign(&answer),
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

/// Follows `campaign` (as the API answered it) until every rotation is closed or `timeout`
/// passes, redrawing one progress line on stderr when it is a terminal; then prints the
/// campaign as `start` does. Fails on the timeout, and when a rotation failed.
async fn wait(
    target: &certfleet_client::Target,
    connection: &mut certfleet_client::Connection,
    mut campaign: Value,
    timeout: Duration,
    output: Output,
) -> anyhow::Result<()> {
    let started = Instant::now();
    let mut terminal = std::io::stderr().is_terminal().then(std::io::stderr);
    let progress = loop {
        let progress = Progress::from_wire(&campaign)?;
        if let Some(stderr) = terminal.as_mut() {
            let _ = write!(stderr, "\r\x1b[2K{}", progress.line(started.elapsed()));
            let _ = stderr.flush();
        }
        if progress.done() || started.elapsed() >= timeout {
            break progress;
        }
        tokio::time::sleep(POLL).await;
        let path = format!("/certfleet/rotation-campaigns/{}", encode(&progress.campaign));
        campaign = send(target, connection, "GET", path, String::new()).await?;
    };
    if let Some(stderr) = terminal.as_mut() {
        let _ = write!(stderr, "\r\x1b[2K");
        let _ = stderr.flush();
    }
    match output {
        Output::Json => println!("{campaign}"),
        Output::Text => print_campaign(&campaign),
    }
    anyhow::ensure!(
        progress.done(),
        "campaign {} is still open after {}s: {} of {} rotations closed",
        progress.campaign,
        timeout.as_secs(),
        progress.closed(),
        progress.total()
    );
    anyhow::ensure!(
        progress.failed() == 0,
        "{} of {} rotations of campaign {} failed (certfleet rotation list --campaign {} --state failed)",
        progress.failed(),
        progress.total(),
        progress.campaign,
        progress.campaign
    );
    Ok(())
}

/// A campaign's rotations per state, as the API reports them.
#[derive(Debug, PartialEq, Eq)]
struct Progress {
    campaign: String,
    counts: Vec<(RotationState, u64)>,
}

impl Progress {
    /// Reads `{"campaignId": ..., "counts": {"<state>": n, ...}}`; a state this binary does not
    /// know is an error rather than a guess at whether it is closed.
    fn from_wire(value: &Value) -> anyhow::Result<Progress> {
        let campaign = value["campaignId"].as_str().ok_or_else(|| anyhow::anyhow!("the answer names no campaign"))?;
        let mut counts = Vec::new();
        for (state, count) in value["counts"].as_object().into_iter().flatten() {
            let state = RotationState::parse(state)
                .ok_or_else(|| anyhow::anyhow!("the server reported an unknown rotation state {state:?}"))?;
            let count = count.as_u64().ok_or_else(|| anyhow::anyhow!("a count that is not a number"))?;
            counts.push((state, count));
        }
        Ok(Progress { campaign: campaign.to_owned(), counts })
    }

    /// The rotations in the states `which` picks (saturating: counts come from the network).
    fn count(&self, which: impl Fn(RotationState) -> bool) -> u64 {
        self.counts.iter().filter(|(state, _)| which(*state)).fold(0, |sum, (_, count)| sum.saturating_add(*count))
    }

    fn total(&self) -> u64 {
        self.count(|_| true)
    }

    fn closed(&self) -> u64 {
        self.count(|state| !state.is_open())
    }

    fn failed(&self) -> u64 {
        self.count(|state| state == RotationState::Failed)
    }

    fn done(&self) -> bool {
        self.closed() == self.total()
    }

    /// `campaign 3f2a9c1d: [########------------] 4/10 closed · retired 3 failed 1 requested 6 · 12s`:
    /// the states with rotations, in protocol order.
    fn line(&self, elapsed: Duration) -> String {
        const WIDTH: u64 = 20;
        let (closed, total) = (self.closed(), self.total());
        let filled = (u128::from(closed) * u128::from(WIDTH)).checked_div(u128::from(total)).unwrap_or(WIDTH.into());
        let filled = usize::try_from(filled).unwrap_or(0).min(WIDTH as usize);
        let states: Vec<String> = RotationState::ALL
            .iter()
            .filter_map(|state| {
                let count = self.count(|s| s == *state);
                (count > 0).then(|| format!("{} {count}", state.as_str()))
            })
            .collect();
        let states = if states.is_empty() { "no rotations".to_owned() } else { states.join(" ") };
        format!(
            "campaign {}: [{}{}] {closed}/{total} closed · {} · {}s",
            self.campaign.chars().take(8).collect::<String>(),
            "#".repeat(filled),
            "-".repeat(WIDTH as usize - filled),
            states,
            elapsed.as_secs()
        )
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    fn progress(counts: &[(&str, u64)]) -> anyhow::Result<Progress> {
        let counts: serde_json::Map<String, Value> =
            counts.iter().map(|(state, count)| ((*state).to_owned(), (*count).into())).collect();
        Progress::from_wire(&serde_json::json!({ "campaignId": "3f2a9c1d-77", "counts": counts }))
    }

    /// `check(counts, line)`: the progress line of a campaign with these counts, 12 s in.
    fn check(counts: &[(&str, u64)], expected: &str) {
        assert_eq!(progress(counts).unwrap().line(Duration::from_secs(12)), expected, "{counts:?}");
    }

    #[test]
    fn the_progress_line_counts_closed_rotations_in_protocol_order() {
        check(
            &[("requested", 6), ("csr_received", 0), ("retired", 3), ("failed", 1)],
            "campaign 3f2a9c1d: [########------------] 4/10 closed · requested 6 retired 3 failed 1 · 12s",
        );
        check(&[("retired", 2)], "campaign 3f2a9c1d: [####################] 2/2 closed · retired 2 · 12s");
        check(
            &[("issued", 1), ("acknowledged", 1)],
            "campaign 3f2a9c1d: [--------------------] 0/2 closed · issued 1 acknowledged 1 · 12s",
        );
        check(&[], "campaign 3f2a9c1d: [####################] 0/0 closed · no rotations · 12s");
        check(
            &[("retired", u64::MAX), ("failed", 1)],
            &format!("campaign 3f2a9c1d: [####################] {0}/{0} closed · retired {0} failed 1 · 12s", u64::MAX),
        );
    }

    #[test]
    fn a_campaign_is_done_when_every_rotation_is_closed() {
        for (counts, done, failed) in [
            (&[("requested", 1), ("retired", 1)][..], false, 0),
            (&[("retired", 4), ("failed", 2)][..], true, 2),
            (&[("retired", 4), ("requested", 0)][..], true, 0),
        ] {
            let progress = progress(counts).unwrap();
            assert_eq!((progress.done(), progress.failed()), (done, failed), "{counts:?}");
        }
        assert!(progress(&[("exploded", 1)]).is_err(), "an unknown state is not guessed at");
        assert!(Progress::from_wire(&serde_json::json!({ "counts": {} })).is_err());
    }

    #[test]
    fn wait_limits_are_durations() {
        assert_eq!(wait_limit("90s"), Ok(Duration::from_secs(90)));
        assert_eq!(wait_limit("2h"), Ok(Duration::from_secs(7200)));
        assert!(wait_limit("0s").is_err() && wait_limit("ten").is_err());
    }
}
