//! `certfleet server`: bootstraps the data directory on first start (root CAs, a first account
//! with its AWS CLI profile), then serves the HTTPS API and the gateway until SIGINT or SIGTERM,
//! which drain the gateway first (docs/operations.md, "Shutdown").

use std::sync::Arc;

use anyhow::Context;
use certfleet_pki::{Issuer, KeyAlgorithm};
use certfleet_registry::{AccountId, IssuerPurpose};
use certfleet_services::{Clock, Services, SystemClock, load_or_create_issuer};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::budget;
use crate::config::Config;
use crate::datadir::{self, Files};

/// Runs the server until a shutdown signal.
pub async fn run(config: Config) -> anyhow::Result<()> {
    let budget = connection_budget(&config)?;
    let node_id = config.node_id.clone().map_or_else(node_id, Ok)?;
    tracing::info!(node = %node_id, "node");
    datadir::create(&config.data_dir)?;
    let files = Files::of(&config.data_dir);
    // endpoints.json means "listening now": a stale one from an earlier run must not mislead.
    match std::fs::remove_file(&files.endpoints) {
        Err(error) if error.kind() != std::io::ErrorKind::NotFound => {
            return Err(error).context("removing the previous endpoints.json");
        }
        _ => {}
    }
    let passphrase = datadir::passphrase(&config)?;
    let key_passphrase = passphrase.clone();
    // Opening PostgreSQL blocks (its synchronous client runs a runtime of its own).
    let store = {
        let config = config.clone();
        tokio::task::spawn_blocking(move || datadir::open_store(&config)).await??
    };
    let clock: Arc<dyn Clock> = Arc::new(SystemClock);
    tracing::info!(backend = store.backend(), data_dir = %config.data_dir.display(), "registry open");
    // In a cluster, every commit of a change-feed entry (a revocation, a policy change, ...) is
    // announced, and the node nudges every node's follower to read the feed at once
    // (docs/cluster.md, "Cluster-wide operations").
    let commits = Arc::new(tokio::sync::Notify::new());
    let store: Arc<dyn certfleet_registry::Store> = match &config.nats_url {
        None => store,
        Some(_) => {
            let commits = commits.clone();
            Arc::new(certfleet_services::feed::Announcing::new(store, Box::new(move || commits.notify_one())))
        }
    };

    let (device_issuer, server_issuer) = {
        let (store, clock, config) = (store.clone(), clock.clone(), config.clone());
        tokio::task::spawn_blocking(move || -> anyhow::Result<(Issuer, Issuer)> {
            let device = load_or_create_issuer(
                &*store,
                &*clock,
                IssuerPurpose::Device,
                "certfleet device root CA",
                config.root_validity,
                &passphrase,
            )?;
            let server = load_or_create_issuer(
                &*store,
                &*clock,
                IssuerPurpose::Server,
                "certfleet server root CA",
                config.root_validity,
                &passphrase,
            )?;
            Ok((device, server))
        })
        .await??
    };
    datadir::write_public(&files.device_root, device_issuer.certificate().to_pem().as_bytes())?;
    datadir::write_public(&files.server_root, server_issuer.certificate().to_pem().as_bytes())?;

    let services = Arc::new(Services::new(
        store,
        clock.clone(),
        certfleet_services::Config {
            partition: "aws".into(),
            region: config.region.clone(),
            endpoint_domain: config.endpoint_domain.clone(),
            device_certificate_validity: config.device_certificate_validity,
            max_cas_per_subject: 10,
            rotation: config.rotation.clone(),
            domain_claims: domain_claims(&config)?,
            max_registrations_per_second: config.registry.jitr_registrations_per_second,
            thing_type_deletion_wait: config.thing_type_deletion_wait,
        },
        Some(device_issuer),
    ));
    services.attach_key_passphrase(key_passphrase);
    first_account(&services, &config, &files).await?;

    let (server_chain, server_key) = server_certificate(&server_issuer, &config, clock.now())?;
    let tls = if config.insecure_plain_http {
        tracing::warn!(addr = %config.api_addr, "serving the API over plain HTTP (loopback only)");
        None
    } else {
        Some(api_tls(server_chain.clone(), server_key.clone_key())?)
    };
    let listener =
        TcpListener::bind(config.api_addr).await.with_context(|| format!("binding the API to {}", config.api_addr))?;
    let api_addr = listener.local_addr()?;
    let mqtt_listener = TcpListener::bind(config.mqtt_addr)
        .await
        .with_context(|| format!("binding the gateway to {}", config.mqtt_addr))?;
    let mqtt_addr = mqtt_listener.local_addr()?;
    // Two stops: the gateway's first (its listener, then its drain), then everything else's (the
    // API, the console, the metrics, the workers), which serve on while the gateway drains.
    let (stop, stopped) = watch::channel(false);
    let (stop_gateway, gateway_stopped) = watch::channel(false);
    // Every outbound request a tenant can cause goes through this one egress (docs/egress.md).
    let egress = Arc::new(certfleet_egress::Egress::new(
        config.egress.clone(),
        trusted_roots(config.egress_ca_bundle.as_deref()),
    ));
    let builtin = builtin_chains(&server_issuer, &config, server_chain, &server_key, clock.now())?;
    let stops = Stops { gateway: gateway_stopped, workers: stopped.clone() };
    let (gateway, node) =
        start_gateway(&services, &config, &node_id, budget, builtin, mqtt_listener, egress.clone(), stops, commits)
            .await?;
    let console = start_console(&services, &config, tls.clone(), node.data_plane(), stopped.clone()).await?;
    // The registry prune: every node tries, one node of the cluster at a time does it.
    let prune_metrics = Arc::new(certfleet_workers::PruneMetrics::default());
    tokio::spawn(certfleet_workers::run_prune(
        services.clone(),
        node_id.to_string(),
        config.registry.prune.clone(),
        prune_metrics.clone(),
        stopped.clone(),
    ));
    let api_metrics = Arc::new(certfleet_api::ListenerMetrics::default());
    let metrics_addr = match config.metrics_addr {
        Some(addr) => {
            let listener =
                TcpListener::bind(addr).await.with_context(|| format!("binding the metrics listener to {addr}"))?;
            let bound = listener.local_addr()?;
            tokio::spawn(serve_metrics(
                listener,
                node.clone(),
                api_metrics.clone(),
                egress.clone(),
                prune_metrics,
                console.as_ref().map(|(console, _)| console.clone()),
                stopped.clone(),
            ));
            tracing::info!(addr = %bound, "metrics listening");
            Some(bound.to_string())
        }
        None => None,
    };
    let scheme = if tls.is_some() { "https" } else { "http" };
    let api_url = format!("{scheme}://{api_addr}");
    let endpoints = serde_json::json!({
        "api": api_url,
        "api_addr": api_addr.to_string(),
        "mqtt_addr": mqtt_addr.to_string(),
        "metrics_addr": metrics_addr,
        "console": console.as_ref().map(|(_, url)| url),
        "region": config.region,
    });
    datadir::write_public(&files.endpoints, format!("{endpoints:#}\n").as_bytes())?;
    tracing::info!(%api_url, "api listening");
    tracing::info!(%mqtt_addr, "gateway listening");
    println!("certfleet is serving the AWS IoT API at {api_url} and MQTT over mutual TLS at {mqtt_addr}");
    println!("try it with the stock AWS CLI:");
    println!(
        "  AWS_SHARED_CREDENTIALS_FILE={} AWS_CONFIG_FILE={} aws iot describe-endpoint --endpoint-type iot:Data-ATS --endpoint-url {api_url}{}",
        files.credentials.display(),
        files.config.display(),
        if tls.is_some() { format!(" --ca-bundle {}", files.server_root.display()) } else { String::new() }
    );

    let api_config = certfleet_api::Config {
        region: config.region.clone(),
        max_clock_skew: config.max_clock_skew,
        max_body_bytes: config.max_body_bytes,
        limits: certfleet_api::Limits { max_connections: budget.api_connections, ..config.api_limits.clone() },
        egress,
    };
    let router = certfleet_api::router(services, api_config.clone(), api_metrics.clone(), Some(node.data_plane()));
    let server = tokio::spawn(certfleet_api::serve(listener, tls, router, api_config.limits, api_metrics, stopped));
    shutdown_signal().await;
    tracing::info!("shutting down: the gateway first");
    let _ = stop_gateway.send(true);
    // The drain is bounded by mqtt.shutdown_grace (and the history's flush); a second signal
    // does not wait for it.
    tokio::select! {
        drained = gateway => {
            if let Err(error) = drained {
                tracing::error!(%error, "the gateway's task failed");
            }
        }
        () = shutdown_signal() => tracing::warn!("second shutdown signal: not waiting for the gateway's drain"),
    }
    tracing::info!("stopping the API");
    let _ = stop.send(true);
    server.await??;
    tracing::info!("stopped");
    Ok(())
}

/// What stops the gateway node (its listener, then its drain) and what stops the services
/// around it (the rotation service), later.
struct Stops {
    gateway: watch::Receiver<bool>,
    workers: watch::Receiver<bool>,
}

/// The name of a node configured without one: its host name (lowercased, other characters than
/// letters, digits, `-` and `_` made `-`, at most 55 characters) and 8 random hex digits, so that
/// two nodes on one host differ; new at every start.
fn node_id() -> anyhow::Result<certfleet_gateway::NodeId> {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .or_else(|| std::env::var("HOSTNAME").ok())
        .unwrap_or_default();
    let host: String = host
        .trim()
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() || c == '-' || c == '_' { c.to_ascii_lowercase() } else { '-' })
        .take(55)
        .collect();
    let host = host.trim_matches(['-', '_']);
    let host = if host.is_empty() { "node" } else { host };
    let mut random = [0u8; 4];
    aws_lc_rs::rand::fill(&mut random).map_err(|_| anyhow::anyhow!("the system random generator failed"))?;
    let name = format!("{host}-{}", hex::encode(random));
    Ok(certfleet_gateway::NodeId::parse(&name)?)
}

/// The listeners' connection limits, within the open-files limit (raised to its hard limit
/// first). A configured limit that does not fit refuses to start; the gateway's default
/// shrinks to fit, with a warning.
fn connection_budget(config: &Config) -> anyhow::Result<budget::Budget> {
    let api = config.api_limits.max_connections;
    let Some((soft, hard)) = budget::raise_open_files_limit() else {
        tracing::warn!("the open-files limit cannot be read; connection limits are not checked against it");
        return Ok(budget::Budget {
            api_connections: api,
            mqtt_connections: config.mqtt_max_connections.unwrap_or(budget::DEFAULT_MQTT_MAX_CONNECTIONS as usize),
        });
    };
    let split = budget::split(soft, api, config.mqtt_max_connections)?;
    if config.mqtt_max_connections.is_none() && (split.mqtt_connections as u64) < budget::DEFAULT_MQTT_MAX_CONNECTIONS {
        tracing::warn!(
            open_files = soft,
            hard_limit = hard,
            mqtt_max_connections = split.mqtt_connections,
            "the open-files limit leaves room for fewer device connections than the default 100000"
        );
    }
    tracing::info!(
        open_files = soft,
        api_max_connections = split.api_connections,
        mqtt_max_connections = split.mqtt_connections,
        reserved = budget::RESERVED_DESCRIPTORS,
        "connection budget"
    );
    Ok(split)
}

/// On first start (no account yet) creates an account and writes its `default` profile.
async fn first_account(services: &Arc<Services>, config: &Config, files: &Files) -> anyhow::Result<()> {
    let services = services.clone();
    let created = tokio::task::spawn_blocking(move || -> anyhow::Result<_> {
        if !services.list_accounts()?.is_empty() {
            return Ok(None);
        }
        let account = services.create_account()?;
        let key = services.create_access_key(&account.id)?;
        Ok(Some((account, key)))
    })
    .await??;
    if let Some((account, key)) = created {
        datadir::add_profile(&config.data_dir, "default", &key, &config.region)?;
        tracing::info!(account = %account.id, credentials = %files.credentials.display(), "created the first account");
    }
    Ok(())
}

/// Who may claim which custom domains: the configured suffixes, the trust store's roots (a
/// missing file is warned about and proves nothing), and the server's own names.
fn domain_claims(config: &Config) -> anyhow::Result<certfleet_services::DomainClaims> {
    let trust_anchors = match &config.domain_trust_store {
        None => Vec::new(),
        Some(path) => match std::fs::read_to_string(path) {
            Ok(text) => {
                let (anchors, skipped) = certfleet_services::parse_trust_store(&text);
                tracing::info!(path = %path.display(), roots = anchors.len(), skipped, "domain claim trust store loaded");
                anchors
            }
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => {
                tracing::warn!(path = %path.display(), "no domain claim trust store: only allowed suffixes prove a claim");
                Vec::new()
            }
            Err(error) => return Err(error).with_context(|| format!("reading the trust store {}", path.display())),
        },
    };
    let mut reserved_names = vec!["localhost".to_owned()];
    reserved_names.extend(config.server_names.iter().map(|name| name.trim_end_matches('.').to_ascii_lowercase()));
    Ok(certfleet_services::DomainClaims {
        allowed_suffixes: config.domain_claims.clone().into_iter().collect(),
        trust_anchors,
        reserved_names,
    })
}

/// A fresh server certificate from the server root, for the API and the gateway: SANs
/// localhost, 127.0.0.1, ::1, every account endpoint (`*.iot.<region>.<domain>`) and the
/// configured names.
fn server_certificate(
    server_issuer: &Issuer,
    config: &Config,
    now: time::OffsetDateTime,
) -> anyhow::Result<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>)> {
    let mut names = vec!["localhost".to_owned(), "127.0.0.1".to_owned(), "::1".to_owned()];
    names.push(format!("*.iot.{}.{}", config.region, config.endpoint_domain));
    names.extend(config.server_names.iter().cloned());
    let (certificate, key) = server_issuer
        .issue_server_certificate("certfleet", &names, time::Duration::days(365), KeyAlgorithm::EcdsaP256, now)
        .context("issuing the server certificate")?;
    Ok((
        vec![CertificateDer::from(certificate.der().to_vec())],
        PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.to_vec())),
    ))
}

/// The gateway's built-in chains: the server certificate, and a chain of at least 16 KiB for
/// the large-certificate test endpoint (a leaf padded with subject alternative names, the
/// growth the seed warns devices about: OCSP URLs, more names, longer chains).
fn builtin_chains(
    server_issuer: &Issuer,
    config: &Config,
    server_chain: Vec<CertificateDer<'static>>,
    server_key: &PrivateKeyDer<'static>,
    now: time::OffsetDateTime,
) -> anyhow::Result<certfleet_gateway::endpoints::BuiltinChains> {
    let default = certfleet_gateway::tls::certified_key_der(server_chain, server_key)?;
    let mut names = vec!["localhost".to_owned(), "127.0.0.1".to_owned()];
    names.push(format!("*.iot.{}.{}", config.region, config.endpoint_domain));
    names.extend(config.server_names.iter().cloned());
    let mut filler = 0;
    while names.iter().map(|n| n.len() + 4).sum::<usize>() < 17 * 1024 {
        names.push(format!("large-certificate-padding-{filler:05}.{}", config.endpoint_domain));
        filler += 1;
    }
    let (certificate, key) = server_issuer
        .issue_server_certificate(
            "certfleet large certificate test",
            &names,
            time::Duration::days(365),
            KeyAlgorithm::EcdsaP256,
            now,
        )
        .context("issuing the large test certificate")?;
    let chain = vec![
        CertificateDer::from(certificate.der().to_vec()),
        CertificateDer::from(server_issuer.certificate().der().to_vec()),
    ];
    let large = certfleet_gateway::tls::certified_key_der(
        chain,
        &PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.to_vec())),
    )?;
    tracing::debug!(bytes = certificate.der().len(), "large test certificate ready");
    Ok(certfleet_gateway::endpoints::BuiltinChains { default, large })
}

/// The API's TLS settings: TLS 1.2 and 1.3 only.
fn api_tls(
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
) -> anyhow::Result<Arc<rustls::ServerConfig>> {
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut tls = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])?
        .with_no_client_auth()
        .with_single_cert(chain, key)?;
    tls.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(tls))
}

/// Builds this node's gateway (`certfleet_gateway::Node`: broker, rules, registry view, fleet
/// provisioning, connection history), starts the rotation service and its system rules (until
/// `stops.workers`), and serves devices on `listener` until `stops.gateway`; the task returned
/// ends when the node has drained its sessions and flushed its history. In a cluster,
/// `commits` is told by the registry of each change-feed entry this process commits.
#[allow(clippy::too_many_arguments)]
async fn start_gateway(
    services: &Arc<Services>,
    config: &Config,
    node_id: &certfleet_gateway::NodeId,
    budget: budget::Budget,
    builtin: certfleet_gateway::endpoints::BuiltinChains,
    listener: TcpListener,
    egress: Arc<certfleet_egress::Egress>,
    stops: Stops,
    commits: Arc<tokio::sync::Notify>,
) -> anyhow::Result<(tokio::task::JoinHandle<certfleet_gateway::ShutdownReport>, Arc<certfleet_gateway::Node>)> {
    let Stops { gateway: gateway_stopped, workers: stopped } = stops;
    let default_account = match &config.mqtt_default_account {
        Some(id) => AccountId::parse(id).context("mqtt.default_account")?,
        None => {
            let lookup = services.clone();
            tokio::task::spawn_blocking(move || lookup.list_accounts())
                .await??
                .into_iter()
                .next()
                .map(|account| account.id)
                .context("there is no account to serve connections without SNI")?
        }
    };
    let to_std = |duration: time::Duration| std::time::Duration::try_from(duration).unwrap_or_default();
    let gateway = certfleet_gateway::Config {
        region: config.region.clone(),
        endpoint_domain: config.endpoint_domain.clone(),
        default_account: default_account.clone(),
        max_connections: budget.mqtt_connections,
        handshake_timeout: to_std(config.mqtt_handshake_timeout),
        connect_timeout: to_std(config.mqtt_connect_timeout),
        change_poll_interval: to_std(config.mqtt_change_poll_interval),
        caches: config.caches,
        test_endpoint_records_per_second: config.registry.test_endpoint_records_per_second,
    };
    let broker = certfleet_gateway::BrokerConfig {
        node: node_id.clone(),
        connect_timeout: to_std(config.mqtt_connect_timeout),
        // The default packet limit leaves 18 KiB for the topic and properties past the message.
        max_packet_size: config.mqtt_max_message_bytes + 18 * 1024,
        message_size_limit: config.mqtt_max_message_bytes,
        max_session_expiry: config.broker.max_session_expiry,
        max_queued_messages: config.broker.max_queued_messages,
        max_queued_bytes: config.broker.max_queued_bytes,
        max_account_queued_bytes: config.broker.max_account_queued_bytes,
        max_offline_sessions: config.broker.max_offline_sessions,
        client_receive_maximum: config.broker.max_inflight_messages,
        max_retained_messages: config.broker.max_retained_messages,
        max_retained_bytes: config.broker.max_retained_bytes,
        ..certfleet_gateway::BrokerConfig::default()
    };
    let policies = if config.mqtt_danger_authorize_everything {
        tracing::warn!("mqtt.danger_authorize_everything is set: IoT policies are NOT enforced (benchmarks only)");
        certfleet_gateway::Policies::DangerAuthorizeEverything
    } else {
        certfleet_gateway::Policies::Enforce
    };
    let node_config = certfleet_gateway::NodeConfig {
        gateway,
        broker,
        // Topic rules run off the publish path, on this node's own queue (docs/rules.md).
        rules: config.rules.clone(),
        // Fleet provisioning by claim answers its reserved topics (docs/provisioning.md).
        fleet: config.fleet.clone(),
        history_sessions_per_certificate_per_hour: config.registry.history_sessions_per_certificate_per_hour,
        policies,
        shutdown: config.mqtt_shutdown,
    };
    // Alone, the in-process fabric; in a cluster, NATS carries messages, claims and retained
    // messages between the nodes, and the operator view and change nudges (docs/cluster.md).
    let network = match &config.nats_url {
        None => certfleet_gateway::Network::Local(certfleet_gateway::LocalFabric::new()),
        Some(url) => {
            let mut cluster =
                certfleet_gateway::cluster::ClusterConfig::new(url.clone(), node_config.broker.max_packet_size);
            cluster.outbound_bytes = config.nats_outbound_bytes;
            certfleet_gateway::Network::Cluster {
                fabric: certfleet_gateway::cluster::NatsFabric::connect(node_id.clone(), cluster).await?,
                commits,
                operations: certfleet_gateway::cluster::OpsConfig::default(),
            }
        }
    };
    let node = certfleet_gateway::Node::new(node_config, services.clone(), network, builtin, egress.clone());
    let rotation = crate::audit_worker::start(
        services.clone(),
        node.broker().clone(),
        to_std(config.rotation_sweep_interval),
        egress,
        stopped.clone(),
    );
    // The rotation service hears devices through system rules (the seed's rule, and the same
    // for the acknowledgement and the error): docs/rotation.md.
    let sink = crate::audit_worker::RotationSink::start(rotation, stopped.clone());
    for (name, topic) in
        [("rotation_csr_res", "csr_res"), ("rotation_crt_ack", "crt_ack"), ("rotation_crt_err", "crt_err")]
    {
        node.rules()
            .add_system_rule(
                name,
                &format!("SELECT clientid() as clientid, * FROM 'management/topic/+/{topic}'"),
                sink.clone(),
            )
            .map_err(|error| anyhow::anyhow!("system rule {name}: {error}"))?;
    }
    tracing::info!(%default_account, node = %node.id(), "gateway ready");
    let task = tokio::spawn(node.clone().run(listener, gateway_stopped));
    Ok((task, node))
}

/// The roots the egress verifies https servers against: `egress.ca_bundle` when set, else the
/// PEM bundle named by `SSL_CERT_FILE`, else the system's
/// (`/etc/ssl/certs/ca-certificates.crt`); `None` (https requests fail) when none loads.
fn trusted_roots(bundle: Option<&std::path::Path>) -> Option<Arc<rustls::RootCertStore>> {
    use rustls::pki_types::CertificateDer;
    use rustls::pki_types::pem::PemObject;
    let path = bundle.map(std::path::Path::to_path_buf).unwrap_or_else(|| {
        std::env::var_os("SSL_CERT_FILE")
            .map(std::path::PathBuf::from)
            .unwrap_or_else(|| "/etc/ssl/certs/ca-certificates.crt".into())
    });
    let mut roots = rustls::RootCertStore::empty();
    match CertificateDer::pem_file_iter(&path) {
        Ok(certificates) => {
            roots.add_parsable_certificates(certificates.flatten());
        }
        Err(error) => {
            tracing::warn!(path = %path.display(), %error, "no trusted roots: outbound https requests will fail")
        }
    }
    (!roots.is_empty()).then(|| Arc::new(roots))
}

/// Serves `GET /metrics` (Prometheus text) over plain HTTP/1.1, one request per connection.
async fn serve_metrics(
    listener: TcpListener,
    node: Arc<certfleet_gateway::Node>,
    api: Arc<certfleet_api::ListenerMetrics>,
    egress: Arc<certfleet_egress::Egress>,
    prune: Arc<certfleet_workers::PruneMetrics>,
    console: Option<Arc<certfleet_console::Console>>,
    mut stopped: watch::Receiver<bool>,
) {
    // Operator-only, but still bounded: a few scrapes at once.
    let slots = Arc::new(tokio::sync::Semaphore::new(16));
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    loop {
        let (mut stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(error) => {
                    tracing::warn!(%error, "metrics accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = stopped.changed() => return,
        };
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            drop(stream);
            continue;
        };
        let (node, api, egress, prune, console) =
            (node.clone(), api.clone(), egress.clone(), prune.clone(), console.clone());
        tokio::spawn(async move {
            let _slot = slot;
            let mut request = Vec::with_capacity(1024);
            let read = tokio::time::timeout(std::time::Duration::from_secs(5), async {
                let mut buffer = [0u8; 1024];
                while !request.windows(4).any(|w| w == b"\r\n\r\n") && request.len() < 8192 {
                    match stream.read(&mut buffer).await {
                        Ok(0) | Err(_) => return false,
                        Ok(n) => request.extend_from_slice(&buffer[..n]),
                    }
                }
                true
            })
            .await;
            if !matches!(read, Ok(true)) {
                return;
            }
            let (status, body) = if request.starts_with(b"GET /metrics ") || request.starts_with(b"GET /metrics?") {
                let mut text = node.render_metrics();
                api.render(&mut text);
                certfleet_egress::render_metrics(&egress.counters, &mut text);
                prune.render(&mut text);
                if let Some(console) = &console {
                    console.render_metrics(&mut text);
                }
                ("200 OK", text)
            } else {
                tracing::info!(%peer, "metrics: unknown request");
                ("404 Not Found", "only GET /metrics is served here\n".to_owned())
            };
            let head = format!(
                "HTTP/1.1 {status}\r\ncontent-type: text/plain; version=0.0.4\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
                body.len()
            );
            let _ = stream.write_all(head.as_bytes()).await;
            let _ = stream.write_all(body.as_bytes()).await;
            let _ = stream.shutdown().await;
        });
    }
}

async fn shutdown_signal() {
    let interrupt = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut terminate = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(signal) => signal,
            Err(error) => {
                tracing::warn!(%error, "cannot listen for SIGTERM");
                let _ = interrupt.await;
                return;
            }
        };
        tokio::select! {
            _ = interrupt => {}
            _ = terminate.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = interrupt.await;
}

/// Starts the operator console when `[console] addr` is set (docs/console.md): its own
/// listener, over TLS with the API's server certificate when the API serves TLS, reading this
/// node's data plane (live sessions, refusals, chain counters). Answers the console (for
/// `/metrics`) and its URL.
async fn start_console(
    services: &Arc<Services>,
    config: &Config,
    tls: Option<Arc<rustls::ServerConfig>>,
    data_plane: Arc<dyn certfleet_services::DataPlane>,
    stopped: watch::Receiver<bool>,
) -> anyhow::Result<Option<(Arc<certfleet_console::Console>, String)>> {
    let Some((addr, settings)) = &config.console else { return Ok(None) };
    let listener = TcpListener::bind(addr).await.with_context(|| format!("binding the console to {addr}"))?;
    let bound = listener.local_addr()?;
    let settings = certfleet_console::Config {
        secure_cookies: tls.is_some(),
        host_names: config.server_names.clone(),
        ..settings.clone()
    };
    let url = format!("{}://{bound}/", if tls.is_some() { "https" } else { "http" });
    let console = certfleet_console::Console::new(services.clone(), Some(data_plane), settings);
    console.start_background(stopped.clone());
    tokio::spawn(certfleet_console::serve(listener, tls, console.clone(), stopped));
    tracing::info!(%url, "console listening");
    println!("the operator console is at {url} (sign in with an access key)");
    Ok(Some((console, url)))
}
