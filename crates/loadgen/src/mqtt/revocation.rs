//! Revocation latency: devices connected, a sample of their certificates revoked through the
//! AWS IoT API (UpdateCertificate `newStatus=REVOKED`, one after the other over one signed
//! keep-alive connection), and the time from each request until the server closes that device's
//! session. Sessions of devices not revoked must stay open; any that closes is counted.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use bytes::Bytes;
use certfleet_client::{Call, Target};
use certfleet_loadgen::proc_stats;

use super::{Broker, MqttArgs, Outcome, fleet, micros};

/// Which `sample` of `connected` connections to revoke: spread evenly over the fleet.
fn sample(connected: usize, sample: usize) -> Vec<usize> {
    let sample = sample.min(connected);
    (0..sample).map(|index| index * connected / sample).collect()
}

pub(super) async fn run(broker: &Arc<Broker>, args: &MqttArgs, deadline: Instant) -> anyhow::Result<Outcome> {
    let data_dir = args.data_dir.as_deref().context("the revocation scenario needs --data-dir")?;
    let target = Target::from_data_dir(data_dir, "default", "us-east-1")?;
    let mut api = target.connect().await?;
    proc_stats::raise_open_files_limit(args.connections as u64 + 256);
    let mut fleet = fleet::open(broker, args, args.connections, deadline).await;
    let mut notes = fleet.error_notes();
    anyhow::ensure!(
        fleet.established == args.connections as u64,
        "only {} of {} devices connected: {notes:?}",
        fleet.established,
        args.connections
    );

    let cpu_before = super::servers_cpu_seconds(&args.server_pid);
    let started = Instant::now();
    let mut revoked_at = HashMap::new();
    let mut api_latencies_us = Vec::new();
    for index in sample(args.connections, args.revoke) {
        let id = broker.identities[index].certificate_id.as_deref().context("an identity without a certificate ID")?;
        let call = Call { method: "PUT", path: format!("/certificates/{id}?newStatus=REVOKED"), body: Bytes::new() };
        let sent = Instant::now();
        let (status, body) = target.send(&mut api, &call).await?;
        api_latencies_us.push(micros(sent.elapsed()));
        anyhow::ensure!(status == 200, "UpdateCertificate answered {status}: {}", String::from_utf8_lossy(&body));
        revoked_at.insert(index, sent);
    }
    let revoked = revoked_at.len() as u64;

    // Wait for the revoked sessions to close, for --duration from the first revocation.
    let waiting_until = started + Duration::from_secs_f64(args.duration);
    let (mut latencies_us, mut collateral) = (Vec::new(), 0u64);
    while !revoked_at.is_empty() {
        match tokio::time::timeout_at(waiting_until.into(), fleet.closed.recv()).await {
            Ok(Some((index, closed))) => match revoked_at.remove(&index) {
                Some(sent) => latencies_us.push(micros(closed.saturating_duration_since(sent))),
                None => collateral += 1,
            },
            Ok(None) | Err(_) => break,
        }
    }
    let wall_seconds = started.elapsed().as_secs_f64();
    let cpu_after = super::servers_cpu_seconds(&args.server_pid);
    // Sessions of devices not revoked that closed meanwhile.
    while let Ok((index, _)) = fleet.closed.try_recv() {
        collateral += u64::from(!revoked_at.contains_key(&index));
    }
    let not_closed = revoked_at.len() as u64;
    if not_closed > 0 {
        notes.push(format!("{not_closed} of {revoked} revoked devices were still connected after {} s", args.duration));
    }
    if collateral > 0 {
        notes.push(format!("{collateral} sessions of devices not revoked were closed too"));
    }
    api_latencies_us.sort_unstable();
    let outcome = Outcome {
        ok: latencies_us.len() as u64,
        latencies_us,
        failures: not_closed,
        wall_seconds: Some(wall_seconds),
        server_cpu_seconds: cpu_before.zip(cpu_after).map(|(before, after)| after - before),
        details: [
            ("connected", fleet.established.into()),
            ("connecting_seconds", fleet.opening_seconds.into()),
            ("revoked", revoked.into()),
            ("not_closed", not_closed.into()),
            ("collateral_closes", collateral.into()),
            ("api_p50_ms", (f64::from(crate::report::percentile(&api_latencies_us, 0.5).unwrap_or(0)) / 1000.0).into()),
        ]
        .into_iter()
        .collect(),
        notes,
    };
    fleet.close().await;
    Ok(outcome)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn samples_spread_over_the_fleet() {
        let check = |connected: usize, count: usize, expected: &[usize]| {
            assert_eq!(sample(connected, count), expected, "{count} of {connected}");
        };
        check(10, 0, &[]);
        check(10, 1, &[0]);
        check(10, 2, &[0, 5]);
        check(10, 5, &[0, 2, 4, 6, 8]);
        check(10, 10, &[0, 1, 2, 3, 4, 5, 6, 7, 8, 9]);
        check(3, 10, &[0, 1, 2]);
        check(10_000, 4, &[0, 2_500, 5_000, 7_500]);
    }
}
