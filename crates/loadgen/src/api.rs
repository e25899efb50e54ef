//! The control-plane scenarios: keep-alive HTTP/1.1 connections over TLS, each request signed
//! with SigV4 as the AWS SDKs do, latencies recorded per request.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use bytes::Bytes;
use certfleet_client::{Call, Target};

use crate::report::Report;
use crate::{ApiArgs, Scenario};
use certfleet_loadgen::proc_stats;

pub async fn run(args: &ApiArgs, duration: Duration) -> anyhow::Result<Report> {
    let target = Arc::new(match &args.data_dir {
        Some(dir) => Target::from_data_dir(dir, "default", &args.region)?,
        None => Target::new(
            args.url.as_deref().context("give --data-dir or --url")?,
            args.access_key_id.as_deref().context("--access-key-id is required with --url")?,
            args.secret_access_key.as_deref().context("--secret-access-key is required with --url")?,
            args.ca_bundle.as_deref(),
            &args.region,
        )?,
    });
    let calls = Arc::new(prepare(&target, args.scenario).await?);

    let cpu_before = args.server_pid.and_then(proc_stats::cpu_seconds);
    let started = Instant::now();
    let deadline = started + duration;
    let budget = Arc::new(std::sync::atomic::AtomicU64::new(args.requests));
    let mut workers = Vec::new();
    for worker in 0..args.connections {
        let (target, calls, budget) = (target.clone(), calls.clone(), budget.clone());
        workers.push(tokio::spawn(async move { drive(&target, &calls, worker, deadline, &budget).await }));
    }
    let mut latencies_us = Vec::new();
    let mut failures = BTreeMap::new();
    let mut ok = 0;
    let mut reconnects = 0;
    for worker in workers {
        let outcome = worker.await??;
        ok += outcome.ok;
        reconnects += outcome.reconnects;
        latencies_us.extend(outcome.latencies_us);
        for (status, count) in outcome.failures {
            *failures.entry(status).or_insert(0) += count;
        }
    }
    let wall_seconds = started.elapsed().as_secs_f64();
    let cpu_after = args.server_pid.and_then(proc_stats::cpu_seconds);
    latencies_us.sort_unstable();
    Ok(Report {
        label: args.label.clone(),
        scenario: format!("{:?}", args.scenario),
        connections: args.connections,
        ok,
        reconnects,
        failures,
        wall_seconds,
        latencies_us,
        server_cpu_seconds: cpu_before.zip(cpu_after).map(|(before, after)| after - before),
        server_peak_rss_kib: args.server_pid.and_then(proc_stats::peak_rss_kib),
        details: Default::default(),
        notes: Vec::new(),
    })
}

struct WorkerOutcome {
    ok: u64,
    reconnects: u64,
    failures: BTreeMap<u16, u64>,
    latencies_us: Vec<u32>,
}

async fn drive(
    target: &Target,
    calls: &[Call],
    worker: usize,
    deadline: Instant,
    budget: &std::sync::atomic::AtomicU64,
) -> anyhow::Result<WorkerOutcome> {
    let mut connection = target.connect().await?;
    let mut outcome = WorkerOutcome { ok: 0, reconnects: 0, failures: BTreeMap::new(), latencies_us: Vec::new() };
    let mut index = worker;
    while Instant::now() < deadline {
        if budget
            .fetch_update(std::sync::atomic::Ordering::Relaxed, std::sync::atomic::Ordering::Relaxed, |left| {
                left.checked_sub(1)
            })
            .is_err()
        {
            break;
        }
        let call = &calls[index % calls.len()];
        index += 1;
        if connection.is_closed() {
            // Servers without keep-alive (or that close after errors) get a new connection,
            // and the time to make it counts in the request's latency.
            outcome.reconnects += 1;
            connection = target.connect().await?;
        }
        let started = Instant::now();
        let status = match target.send(&mut connection, call).await {
            Ok((status, _)) => status,
            Err(_) if connection.is_closed() => {
                outcome.reconnects += 1;
                connection = target.connect().await?;
                target.send(&mut connection, call).await?.0
            }
            Err(error) => return Err(error),
        };
        let elapsed = started.elapsed().as_micros().min(u128::from(u32::MAX)) as u32;
        if status == 200 {
            outcome.ok += 1;
            outcome.latencies_us.push(elapsed);
        } else {
            *outcome.failures.entry(status).or_insert(0) += 1;
        }
    }
    Ok(outcome)
}

/// The requests of a scenario, after any setup it needs.
async fn prepare(target: &Target, scenario: Scenario) -> anyhow::Result<Vec<Call>> {
    let csrs = (0..256).map(|index| csr_call(index, "?setAsActive=true")).collect::<anyhow::Result<Vec<_>>>()?;
    match scenario {
        Scenario::CreateCertificateFromCsr => Ok(csrs),
        Scenario::DescribeCertificate => {
            let mut connection = target.connect().await?;
            let (status, body) = target.send(&mut connection, &csrs[0]).await?;
            if status != 200 {
                bail!("setup: CreateCertificateFromCsr answered {status}: {}", String::from_utf8_lossy(&body));
            }
            let created: serde_json::Value = serde_json::from_slice(&body)?;
            let id = created["certificateId"].as_str().context("setup: no certificateId")?;
            Ok(vec![Call { method: "GET", path: format!("/certificates/{id}"), body: Bytes::new() }])
        }
    }
}

fn csr_call(index: usize, query: &str) -> anyhow::Result<Call> {
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?;
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new())?;
    params.distinguished_name.push(rcgen::DnType::CommonName, format!("loadgen-device-{index}"));
    let csr = params.serialize_request(&key)?.pem()?;
    let body = serde_json::json!({ "certificateSigningRequest": csr }).to_string();
    Ok(Call { method: "POST", path: format!("/certificates{query}"), body: Bytes::from(body) })
}
