//! The configuration file (TOML) and its typed, validated form.
//!
//! The file format lives here and nowhere else: durations are strings with a unit (`"365d"`,
//! `"5m"`), addresses are `host:port`, and unknown keys are refused. `certfleet config default`
//! prints [`DEFAULT_CONFIG`], which documents every key.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::{Context, bail};
use serde::Deserialize;

/// The documented defaults, as printed by `certfleet config default`.
pub const DEFAULT_CONFIG: &str = r#"# certfleet configuration. Every key is optional; these are the defaults.

# Where certfleet keeps its state: the SQLite registry, the generated CA certificates,
# the key passphrase (when none is given), credentials and endpoints.json.
data_dir = "certfleet-data"

# The AWS region this deployment answers for (ARNs, endpoints, SigV4 scope).
region = "us-east-1"

# Account endpoints are "<identifier>-ats.iot.<region>.<endpoint_domain>".
endpoint_domain = "certfleet.local"

[node]
# This node's name, unique among the nodes sharing the registry: 1 to 64 ASCII letters, digits,
# '-' and '_', starting with a letter or a digit (`certfleet server --node-id` wins over it).
# Empty: the host name and 8 random hex digits, new at every start. Set it for a name that stays
# the same across restarts.
id = ""
# The NATS server (with JetStream) that joins this node to the others as one hub, e.g.
# "nats://127.0.0.1:4222" (`certfleet server --nats-url` wins over it). Empty: the node runs
# alone. Every node of a cluster shares one PostgreSQL registry too (docs/cluster.md).
nats_url = ""
# Bytes of messages waiting to be sent to NATS; past it a device's PUBLISH is refused (MQTT 5:
# 0x80) rather than queued without bound.
nats_outbound_bytes = 67108864

[api]
# The HTTPS control plane (AWS IoT API). Port 0 picks a free port.
addr = "127.0.0.1:8443"
# Serve plain HTTP instead of HTTPS. Refused unless addr is a loopback address.
insecure_plain_http = false
# Largest request body accepted.
max_body_bytes = 524288
# How far a request's SigV4 time may be from the server clock.
max_clock_skew = "5m"
# At most this many API connections at once, and at most this many from one IP address.
# Together with mqtt.max_connections they must fit the process's open-files limit.
max_connections = 1024
max_connections_per_peer = 256
# Deadlines: the TLS handshake; a request's headers (also the idle keep-alive timeout); a
# request's body; a connection on which no byte moves either way.
handshake_timeout = "10s"
header_timeout = "20s"
body_timeout = "30s"
stall_timeout = "60s"
# At most this many SigV4 signing keys are cached (one per access key and day; only keys whose
# signature was verified; the least recently used are dropped first).
signing_key_cache = 10000

[mqtt]
# The device gateway: MQTT 3.1.1 and 5 over mutual TLS. Port 0 picks a free port.
addr = "127.0.0.1:8883"
# The account that serves connections without SNI (or whose SNI names no endpoint), with
# DEFAULT-mode certificates only. Empty: the oldest account.
default_account = ""
# At most this many device connections at once. Unset: what the open-files limit leaves after
# the API's connections and a reserve of 512 (at most 100000); a value that does not fit
# refuses to start.
# max_connections = 100000
# A TLS handshake, or the CONNECT after it, taking longer is abandoned.
handshake_timeout = "10s"
connect_timeout = "10s"
# How often the registry's change feed is read (revocation reaches live sessions within it).
change_poll_interval = "200ms"
# DANGER, benchmarks only: let every authenticated device do anything, ignoring IoT policies.
danger_authorize_everything = false
# The largest message payload (AWS IoT: 128 KiB). A device publishing more is disconnected; no
# rule builds or republishes more; nothing larger than it (plus 18 KiB for topic and
# properties) is delivered to any subscriber.
max_message_bytes = 131072
# On SIGTERM or SIGINT (docs/operations.md, "Shutdown"): the listener closes, then live sessions
# are ended at most this many per second (MQTT 5 clients get DISCONNECT 0x8B), so the fleet
# reconnects to the other nodes gradually; the whole drain takes at most shutdown_grace (at
# most 1h), after which what is left is closed at once.
shutdown_disconnects_per_second = 1000
shutdown_grace = "30s"

[broker]
# Bounds on what the MQTT broker keeps in memory (docs/operations.md, "Broker"). Bytes are a
# message's payload, topic and properties. Past a bound the message or session is refused or
# dropped, counted in certfleet_broker_* and logged once a minute per cause.
# Retained messages per account: a retained PUBLISH past either bound is refused (MQTT 5:
# PUBACK/PUBREC 0x97 Quota exceeded; MQTT 3.1.1: disconnected). Replacing within the bound and
# deleting always work.
max_retained_messages = 10000
max_retained_bytes = 67108864
# Messages waiting for one session (offline, or behind a slow reader; queued or in flight):
# QoS 1 and 2 messages, and bytes of every QoS (at least the largest packet, 18 KiB over
# mqtt.max_message_bytes). A QoS 1 or 2 message past the bytes first drops queued QoS 0 ones.
max_queued_messages = 1000
max_queued_bytes = 8388608
# Bytes waiting for all the sessions of one account on this node (at least max_queued_bytes).
max_account_queued_bytes = 268435456
# Persistent sessions one account may keep offline on this node; past it the session offline
# longest ends (its will is published).
max_offline_sessions = 10000
# QoS 1 and 2 messages sent to one client unacknowledged (MQTT 5 clients may ask for fewer).
max_inflight_messages = 100
# The longest Session Expiry Interval granted (MQTT 3.1.1 persistent sessions get it), at most 7d.
max_session_expiry = "1h"

[rules]
# Topic rules (docs/rules.md, docs/operations.md). Messages waiting for the rules runner, all
# accounts together.
queue_capacity = 10000
# Bytes (payloads and topics) waiting for the rules runner, all accounts together.
queue_bytes = 67108864
# How many times a republished message is run through the rules again.
max_republish_depth = 8
# Bytes a device message and everything republished from it may feed back into the rules.
max_chain_bytes = 1048576
# Steps one rule evaluation may take (each expression evaluated is one, each KiB built one more).
max_steps = 10000
# How deep a payload's JSON may nest when a rule reads it (at most 128).
max_payload_depth = 64
# Per account on each node: messages run through the rules per second, evaluation steps per
# second (at least max_steps), and messages waiting. Past them messages are dropped and counted.
account_messages_per_second = 1000
account_steps_per_second = 1000000
account_queue_capacity = 1000

[provisioning]
# Fleet provisioning by claim (docs/provisioning.md), per node. How long a certificate ownership
# token is valid; tokens held at once (each holds its certificate, about 1 KiB); requests served
# at once; certificates issued per account per second; how long a pre-provisioning hook has.
token_lifetime = "5m"
max_tokens = 10000
max_in_flight = 16
certificates_per_second = 20
hook_timeout = "5s"

[console]
# The operator console (docs/console.md): a web UI on a listener of its own, HTTPS with the
# API's server certificate when the API serves TLS. Empty: off. Keep it on loopback (e.g.
# "127.0.0.1:8444") or a private network: it is an operator's tool, not a tenant-facing page.
addr = ""
# Connections at once; deadlines for the TLS handshake, a request's headers (also the idle
# keep-alive timeout) and a whole request.
max_connections = 64
handshake_timeout = "10s"
header_timeout = "10s"
request_timeout = "15s"
# Sessions at once (all accounts), per account (past it the account's oldest ends), and how
# long one lasts unused and at most.
max_sessions = 1000
max_sessions_per_account = 20
session_idle = "30m"
session_lifetime = "12h"
# Failed sign-ins per minute from one IP address, and from everyone, before sign-ins are
# refused unchecked for the rest of the minute.
sign_in_failures_per_peer = 5
sign_in_failures_total = 100
# How often the certfleet_certificates_expiring gauges are computed (a range scan per account).
expiring_gauges_interval = "5m"

[caches]
# The most entries each cache holds; a full cache drops its least recently used half. Entries
# for strangers (certificates and SNI names the registry does not know) have their own caches,
# so they never evict a fleet's devices. Counted in certfleet_cache_{entries,evicted_total}.
certificates = 200000
unknown_certificates = 50000
cas = 10000
verified_chains = 200000
sni_endpoints = 4096
sni_unknown_names = 65536

[metrics]
# Prometheus text metrics at http://<addr>/metrics (gateway counters, refusals by reason,
# per-endpoint and per-chain handshakes, drains). Operator-only: keep it on loopback or a
# private network; it carries every tenant's counters. Empty: off.
addr = ""

[database]
# Empty: the embedded SQLite registry in data_dir. Otherwise a PostgreSQL URL,
# e.g. "postgres://user@127.0.0.1:5432/certfleet".
url = ""

[pki]
# Validity of the device certificates certfleet issues.
device_certificate_validity = "365d"
# Validity of the root CAs certfleet creates on first start.
root_validity = "3650d"
# Extra names (DNS or IP) for the server certificate, besides localhost, 127.0.0.1 and ::1.
server_names = []

[keys]
# A file whose content is the passphrase that seals CA private keys at rest.
# The environment variable CERTFLEET_KEY_PASSPHRASE wins over it. When neither is given,
# certfleet generates a passphrase into <data_dir>/key-passphrase (0600) and warns.
passphrase_file = ""

[domains]
# Custom domain claims (CreateDomainConfiguration with domainName) need proof of control
# (docs/endpoints.md, "Domain claims"). A validationCertificateArn, or a server certificate of the
# configuration, proves it when it names the domain and chains to this trust store (PEM
# certificates; empty: no certificate proves anything). A missing file is warned about at start.
trust_store = "/etc/ssl/certs/ca-certificates.crt"

# Per account ID, the domain suffixes the operator allows it to claim without a certificate:
# a suffix covers itself and every name under it, e.g.
# [domains.claims]
# "123456789012" = ["fleet.example.com"]

[things]
# How long a thing type must have been deprecated before DeleteThingType accepts it (AWS: 5
# minutes). "0s" lets tests deprecate and delete at once.
thing_type_deletion_wait = "5m"

[registry]
# What peers can make the registry hold (docs/operations.md, "Registry"). Rows past their
# retention are deleted by one node of the cluster at a time, once per prune_interval, at most
# prune_batch_rows per transaction with prune_pause between two transactions.
# Connection history: at least 31d, the window of the audit's connection checks.
connection_history_retention = "90d"
test_endpoint_retention = "90d"
# Change-feed entries: every node follows the feed within seconds (at least 1h).
change_feed_retention = "1d"
# Provisioning claims (CreateProvisioningClaim) are forgotten this long after they expire.
provisioning_claim_retention = "1d"
prune_interval = "1h"
prune_batch_rows = 10000
prune_pause = "100ms"
# Per node: sessions of one certificate recorded in the connection history per hour (a device
# reconnecting in a loop is recorded this often, the rest counted); test endpoint results
# recorded per account per second; just-in-time registrations per account per second (past
# it the device is refused, RegistrationThrottled). Past each bound: counted in /metrics and
# logged once per key and window.
history_sessions_per_certificate_per_hour = 60
test_endpoint_records_per_second = 10
jitr_registrations_per_second = 100

[rotation]
# Certificate rotation (docs/rotation.md): how long to wait for a device's answer to csr_req or
# crt_req before sending it again, how many sends before the rotation fails as timed out, and
# how often deadlines are swept.
response_timeout = "10m"
max_attempts = 5
sweep_interval = "5s"
# DANGER: accept a CSR for the old certificate's key (a rotation should replace the key too).
danger_allow_key_reuse = false

[egress]
# Every outbound request a tenant can cause (topic rule http actions, topic rule destination
# confirmations, audit webhooks and rotation alerts) goes through this policy (docs/egress.md).
# Allow http:// URLs at all (https only when false).
allow_http = false
# Never connect to these addresses (CIDR blocks), checked on every resolved address, IPv6
# forms of IPv4 addresses included. Setting this key replaces the whole list.
deny = [
    "0.0.0.0/8", "127.0.0.0/8", "10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "100.64.0.0/10",
    "169.254.0.0/16", "192.0.0.0/24", "198.18.0.0/15", "224.0.0.0/4", "240.0.0.0/4",
    "::/128", "::1/128", "fe80::/10", "fc00::/7", "fec0::/10", "ff00::/8",
    "2002::/16", "2001::/32", "64:ff9b:1::/48", "100::/64",
]
# Exceptions to deny (a receiver on your own network), e.g. ["10.1.2.3/32"].
allow = []
# Resolution and connection together; then TLS, request and answer together.
connect_timeout = "3s"
response_timeout = "5s"
# At most this much of an answer is read (and discarded).
max_response_bytes = 65536
# Requests of one account in flight at once on a node; more fail at once.
max_in_flight_per_account = 32
# The roots https servers are verified against (PEM). Empty: SSL_CERT_FILE, else
# /etc/ssl/certs/ca-certificates.crt.
ca_bundle = ""
"#;

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
struct FileConfig {
    data_dir: Option<PathBuf>,
    region: Option<String>,
    endpoint_domain: Option<String>,
    api: ApiFile,
    mqtt: MqttFile,
    database: DatabaseFile,
    pki: PkiFile,
    keys: KeysFile,
    metrics: MetricsFile,
    rotation: RotationFile,
    caches: CachesFile,
    domains: DomainsFile,
    rules: RulesFile,
    egress: EgressFile,
    broker: BrokerFile,
    registry: RegistryFile,
    provisioning: ProvisioningFile,
    things: ThingsFile,
    console: ConsoleFile,
    node: NodeFile,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
struct ConsoleFile {
    addr: Option<String>,
    max_connections: Option<usize>,
    handshake_timeout: Option<String>,
    header_timeout: Option<String>,
    request_timeout: Option<String>,
    max_sessions: Option<usize>,
    max_sessions_per_account: Option<usize>,
    session_idle: Option<String>,
    session_lifetime: Option<String>,
    sign_in_failures_per_peer: Option<u32>,
    sign_in_failures_total: Option<u32>,
    expiring_gauges_interval: Option<String>,
}

/// The `[console]` section: its address (none: off) and settings, each bound at least 1.
/// `secure_cookies` is decided by the server (TLS or not).
fn console_config(file: &ConsoleFile) -> anyhow::Result<Option<(SocketAddr, certfleet_console::Config)>> {
    let Some(addr) = file.addr.as_deref().filter(|addr| !addr.is_empty()) else { return Ok(None) };
    let addr = parse_addr(addr, "console.addr")?;
    let defaults = certfleet_console::Config::default();
    let duration = |value: &Option<String>, key: &str, default: std::time::Duration| -> anyhow::Result<_> {
        let Some(value) = value else { return Ok(default) };
        let parsed = std::time::Duration::try_from(parse_duration(value, key)?).unwrap_or_default();
        if parsed.is_zero() {
            bail!("{key} must be longer than zero");
        }
        Ok(parsed)
    };
    let config = certfleet_console::Config {
        sessions: certfleet_console::SessionLimits {
            max_sessions: file.max_sessions.unwrap_or(defaults.sessions.max_sessions),
            max_per_account: file.max_sessions_per_account.unwrap_or(defaults.sessions.max_per_account),
            idle: duration(&file.session_idle, "console.session_idle", defaults.sessions.idle)?,
            lifetime: duration(&file.session_lifetime, "console.session_lifetime", defaults.sessions.lifetime)?,
        },
        sign_in: certfleet_console::SignInLimits {
            per_peer: file.sign_in_failures_per_peer.unwrap_or(defaults.sign_in.per_peer),
            global: file.sign_in_failures_total.unwrap_or(defaults.sign_in.global),
            ..defaults.sign_in
        },
        max_connections: file.max_connections.unwrap_or(defaults.max_connections),
        handshake_timeout: duration(&file.handshake_timeout, "console.handshake_timeout", defaults.handshake_timeout)?,
        header_timeout: duration(&file.header_timeout, "console.header_timeout", defaults.header_timeout)?,
        request_timeout: duration(&file.request_timeout, "console.request_timeout", defaults.request_timeout)?,
        gauge_interval: duration(
            &file.expiring_gauges_interval,
            "console.expiring_gauges_interval",
            defaults.gauge_interval,
        )?,
        ..defaults
    };
    for (key, value) in [
        ("console.max_connections", config.max_connections),
        ("console.max_sessions", config.sessions.max_sessions),
        ("console.max_sessions_per_account", config.sessions.max_per_account),
        ("console.sign_in_failures_per_peer", config.sign_in.per_peer as usize),
        ("console.sign_in_failures_total", config.sign_in.global as usize),
    ] {
        if value == 0 {
            bail!("{key} must be at least 1");
        }
    }
    Ok(Some((addr, config)))
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
struct NodeFile {
    id: Option<String>,
    nats_url: Option<String>,
    nats_outbound_bytes: Option<usize>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
struct ProvisioningFile {
    token_lifetime: Option<String>,
    max_tokens: Option<usize>,
    max_in_flight: Option<usize>,
    certificates_per_second: Option<u32>,
    hook_timeout: Option<String>,
}

/// The fleet provisioning API's bounds from `[provisioning]` (docs/provisioning.md).
fn fleet_config(file: &ProvisioningFile) -> anyhow::Result<certfleet_gateway::fleet::FleetConfig> {
    let defaults = certfleet_gateway::fleet::FleetConfig::default();
    let duration = |text: &Option<String>, default: std::time::Duration, key: &str| -> anyhow::Result<_> {
        match text {
            None => Ok(default),
            Some(text) => std::time::Duration::try_from(parse_duration(text, key)?)
                .map_err(|_| anyhow::anyhow!("{key} must be positive")),
        }
    };
    let config = certfleet_gateway::fleet::FleetConfig {
        token_lifetime: duration(&file.token_lifetime, defaults.token_lifetime, "provisioning.token_lifetime")?,
        max_tokens: file.max_tokens.unwrap_or(defaults.max_tokens),
        max_in_flight: file.max_in_flight.unwrap_or(defaults.max_in_flight),
        certificates_per_second: file.certificates_per_second.unwrap_or(defaults.certificates_per_second),
        hook_timeout: duration(&file.hook_timeout, defaults.hook_timeout, "provisioning.hook_timeout")?,
    };
    if config.token_lifetime.is_zero() || config.token_lifetime > std::time::Duration::from_secs(3600) {
        bail!("provisioning.token_lifetime must be between 1s and 1h");
    }
    if config.hook_timeout.is_zero() || config.hook_timeout > std::time::Duration::from_secs(30) {
        bail!("provisioning.hook_timeout must be between 1ms and 30s");
    }
    if config.max_in_flight == 0 {
        bail!("provisioning.max_in_flight must be at least 1");
    }
    Ok(config)
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
struct ThingsFile {
    thing_type_deletion_wait: Option<String>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
struct BrokerFile {
    max_retained_messages: Option<usize>,
    max_retained_bytes: Option<usize>,
    max_queued_messages: Option<usize>,
    max_queued_bytes: Option<usize>,
    max_account_queued_bytes: Option<usize>,
    max_offline_sessions: Option<usize>,
    max_inflight_messages: Option<u16>,
    max_session_expiry: Option<String>,
}

/// The broker's bounds from `[broker]` (docs/operations.md, "Broker"), copied into the
/// gateway's `BrokerConfig` by the server.
#[derive(Clone, Copy, Debug)]
pub struct BrokerBounds {
    pub max_retained_messages: usize,
    pub max_retained_bytes: usize,
    pub max_queued_messages: usize,
    pub max_queued_bytes: usize,
    pub max_account_queued_bytes: usize,
    pub max_offline_sessions: usize,
    pub max_inflight_messages: u16,
    pub max_session_expiry: std::time::Duration,
}

/// The broker's bounds from the file, each with its default; `max_packet_size` is the largest
/// packet accepted, which one session's queue must be able to hold.
fn broker_bounds(file: &BrokerFile, max_packet_size: usize) -> anyhow::Result<BrokerBounds> {
    let defaults = certfleet_gateway::BrokerConfig::default();
    let expiry = parse_duration(file.max_session_expiry.as_deref().unwrap_or("1h"), "broker.max_session_expiry")?;
    if expiry > time::Duration::days(7) {
        bail!("broker.max_session_expiry must be at most 7d");
    }
    let bounds = BrokerBounds {
        max_retained_messages: file.max_retained_messages.unwrap_or(defaults.max_retained_messages),
        max_retained_bytes: file.max_retained_bytes.unwrap_or(defaults.max_retained_bytes),
        max_queued_messages: file.max_queued_messages.unwrap_or(defaults.max_queued_messages),
        max_queued_bytes: file.max_queued_bytes.unwrap_or(defaults.max_queued_bytes),
        max_account_queued_bytes: file.max_account_queued_bytes.unwrap_or(defaults.max_account_queued_bytes),
        max_offline_sessions: file.max_offline_sessions.unwrap_or(defaults.max_offline_sessions),
        max_inflight_messages: file.max_inflight_messages.unwrap_or(defaults.client_receive_maximum),
        max_session_expiry: std::time::Duration::try_from(expiry).unwrap_or(defaults.max_session_expiry),
    };
    if bounds.max_queued_bytes < max_packet_size {
        bail!("broker.max_queued_bytes must be at least {max_packet_size} (mqtt.max_message_bytes + 18 KiB)");
    }
    if bounds.max_account_queued_bytes < bounds.max_queued_bytes {
        bail!("broker.max_account_queued_bytes must be at least broker.max_queued_bytes");
    }
    if bounds.max_inflight_messages == 0 {
        bail!("broker.max_inflight_messages must be at least 1");
    }
    Ok(bounds)
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
struct RegistryFile {
    connection_history_retention: Option<String>,
    test_endpoint_retention: Option<String>,
    change_feed_retention: Option<String>,
    provisioning_claim_retention: Option<String>,
    prune_interval: Option<String>,
    prune_batch_rows: Option<u32>,
    prune_pause: Option<String>,
    history_sessions_per_certificate_per_hour: Option<u32>,
    test_endpoint_records_per_second: Option<u32>,
    jitr_registrations_per_second: Option<u32>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
struct CachesFile {
    certificates: Option<usize>,
    unknown_certificates: Option<usize>,
    cas: Option<usize>,
    verified_chains: Option<usize>,
    sni_endpoints: Option<usize>,
    sni_unknown_names: Option<usize>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
struct DomainsFile {
    trust_store: Option<PathBuf>,
    claims: Option<BTreeMap<String, Vec<String>>>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
struct RulesFile {
    queue_capacity: Option<usize>,
    queue_bytes: Option<usize>,
    max_republish_depth: Option<u8>,
    max_chain_bytes: Option<usize>,
    max_steps: Option<u64>,
    max_payload_depth: Option<usize>,
    account_messages_per_second: Option<u32>,
    account_steps_per_second: Option<u64>,
    account_queue_capacity: Option<usize>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
struct EgressFile {
    allow_http: Option<bool>,
    deny: Option<Vec<String>>,
    allow: Option<Vec<String>>,
    connect_timeout: Option<String>,
    response_timeout: Option<String>,
    max_response_bytes: Option<usize>,
    max_in_flight_per_account: Option<usize>,
    ca_bundle: Option<String>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
struct RotationFile {
    response_timeout: Option<String>,
    max_attempts: Option<u32>,
    sweep_interval: Option<String>,
    danger_allow_key_reuse: Option<bool>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
struct MetricsFile {
    addr: Option<String>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
struct ApiFile {
    addr: Option<String>,
    insecure_plain_http: Option<bool>,
    max_body_bytes: Option<usize>,
    max_clock_skew: Option<String>,
    max_connections: Option<usize>,
    max_connections_per_peer: Option<usize>,
    handshake_timeout: Option<String>,
    header_timeout: Option<String>,
    body_timeout: Option<String>,
    stall_timeout: Option<String>,
    signing_key_cache: Option<usize>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
struct MqttFile {
    addr: Option<String>,
    default_account: Option<String>,
    max_connections: Option<usize>,
    handshake_timeout: Option<String>,
    connect_timeout: Option<String>,
    change_poll_interval: Option<String>,
    danger_authorize_everything: Option<bool>,
    max_message_bytes: Option<usize>,
    shutdown_disconnects_per_second: Option<u32>,
    shutdown_grace: Option<String>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
struct DatabaseFile {
    url: Option<String>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
struct PkiFile {
    device_certificate_validity: Option<String>,
    root_validity: Option<String>,
    server_names: Option<Vec<String>>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
struct KeysFile {
    passphrase_file: Option<String>,
}

/// The validated configuration of a server or an admin command.
#[derive(Clone, Debug)]
pub struct Config {
    /// This node's name (`--node-id`, `[node] id`); `None`: chosen at start (see
    /// `server::node_id`).
    pub node_id: Option<certfleet_gateway::NodeId>,
    /// The NATS server joining this node to a cluster (`--nats-url`, `[node] nats_url`); `None`:
    /// the node runs alone.
    pub nats_url: Option<String>,
    /// The bound of the bytes waiting to be sent to NATS (`[node] nats_outbound_bytes`).
    pub nats_outbound_bytes: usize,
    pub data_dir: PathBuf,
    pub region: String,
    pub endpoint_domain: String,
    pub api_addr: SocketAddr,
    /// Where Prometheus metrics are served (none: off).
    pub metrics_addr: Option<SocketAddr>,
    pub insecure_plain_http: bool,
    pub max_body_bytes: usize,
    pub max_clock_skew: time::Duration,
    /// The API listener's connection budget and deadlines (before the open-files split).
    pub api_limits: certfleet_api::Limits,
    pub mqtt_addr: SocketAddr,
    pub mqtt_default_account: Option<String>,
    /// Configured, or `None` for what the open-files limit leaves (see `budget`).
    pub mqtt_max_connections: Option<usize>,
    pub mqtt_handshake_timeout: time::Duration,
    pub mqtt_connect_timeout: time::Duration,
    pub mqtt_change_poll_interval: time::Duration,
    pub mqtt_danger_authorize_everything: bool,
    /// The bounds of the gateway's identity and SNI caches.
    pub caches: certfleet_gateway::CacheLimits,
    /// The largest message payload: the broker's limit and the rules' value bound.
    pub mqtt_max_message_bytes: usize,
    /// How the gateway ends its sessions on SIGTERM (`mqtt.shutdown_*`).
    pub mqtt_shutdown: certfleet_gateway::ShutdownConfig,
    /// The broker's bounds: retained messages, session queues, offline sessions, in flight.
    pub broker: BrokerBounds,
    /// The rules engine's bounds (`tls_roots` is filled in by the server).
    pub rules: certfleet_gateway::rules::RulesConfig,
    pub database_url: Option<String>,
    pub device_certificate_validity: time::Duration,
    pub root_validity: time::Duration,
    pub server_names: Vec<String>,
    pub passphrase_file: Option<PathBuf>,
    pub rotation: certfleet_services::RotationConfig,
    pub rotation_sweep_interval: time::Duration,
    /// The egress policy of outbound requests tenants cause.
    pub egress: certfleet_egress::Policy,
    /// The roots the egress verifies https servers against (none: `SSL_CERT_FILE` or the system's).
    pub egress_ca_bundle: Option<PathBuf>,
    /// The PEM file of roots that domain-claim certificates must chain to (none: no roots).
    pub domain_trust_store: Option<PathBuf>,
    /// Per account, the domain suffixes it may claim (lowercase, no trailing dot).
    pub domain_claims: BTreeMap<certfleet_registry::AccountId, Vec<String>>,
    /// The bounds on registry growth (`[registry]`).
    pub registry: RegistryBounds,
    /// The fleet provisioning API's bounds (`[provisioning]`).
    pub fleet: certfleet_gateway::fleet::FleetConfig,
    /// How long a thing type must have been deprecated before it may be deleted (`[things]`).
    pub thing_type_deletion_wait: time::Duration,
    /// The operator console's address and settings (`[console]`; none: off).
    pub console: Option<(SocketAddr, certfleet_console::Config)>,
}

/// The `[registry]` section, validated: retention and the prune, and the per-node write rates
/// a peer can drive.
#[derive(Clone, Debug)]
pub struct RegistryBounds {
    pub prune: certfleet_workers::PruneConfig,
    pub history_sessions_per_certificate_per_hour: u32,
    pub test_endpoint_records_per_second: u32,
    pub jitr_registrations_per_second: u32,
}

/// The `[registry]` section with its defaults; every rate and batch at least 1.
fn registry_bounds(file: &RegistryFile) -> anyhow::Result<RegistryBounds> {
    let duration =
        |value: &Option<String>, key: &str, default: &str| parse_duration(value.as_deref().unwrap_or(default), key);
    let change_feed = duration(&file.change_feed_retention, "registry.change_feed_retention", "1d")?;
    if change_feed < time::Duration::hours(1) {
        bail!("registry.change_feed_retention must be at least 1h (every node follows the feed)");
    }
    let history = duration(&file.connection_history_retention, "registry.connection_history_retention", "90d")?;
    if history < time::Duration::days(31) {
        bail!(
            "registry.connection_history_retention must be at least 31d (the audit's connection checks read 31 days)"
        );
    }
    let settings = certfleet_services::PruneSettings {
        retention: certfleet_services::Retention {
            connection_history: history,
            endpoint_probes: duration(&file.test_endpoint_retention, "registry.test_endpoint_retention", "90d")?,
            change_feed,
            provisioning_claims: duration(
                &file.provisioning_claim_retention,
                "registry.provisioning_claim_retention",
                "1d",
            )?,
        },
        batch_rows: file.prune_batch_rows.unwrap_or(10_000),
        interval: duration(&file.prune_interval, "registry.prune_interval", "1h")?,
        ..certfleet_services::PruneSettings::default()
    };
    let bounds = RegistryBounds {
        prune: certfleet_workers::PruneConfig {
            settings,
            pause: std::time::Duration::try_from(duration(&file.prune_pause, "registry.prune_pause", "100ms")?)
                .unwrap_or_default(),
            ..certfleet_workers::PruneConfig::default()
        },
        history_sessions_per_certificate_per_hour: file.history_sessions_per_certificate_per_hour.unwrap_or(60),
        test_endpoint_records_per_second: file.test_endpoint_records_per_second.unwrap_or(10),
        jitr_registrations_per_second: file.jitr_registrations_per_second.unwrap_or(100),
    };
    for (key, value) in [
        ("registry.prune_batch_rows", bounds.prune.settings.batch_rows),
        ("registry.history_sessions_per_certificate_per_hour", bounds.history_sessions_per_certificate_per_hour),
        ("registry.test_endpoint_records_per_second", bounds.test_endpoint_records_per_second),
        ("registry.jitr_registrations_per_second", bounds.jitr_registrations_per_second),
    ] {
        if value == 0 {
            bail!("{key} must be at least 1");
        }
    }
    Ok(bounds)
}

/// The gateway's cache bounds from the file, each with its default (at least 2 entries).
fn cache_limits(file: &CachesFile) -> certfleet_gateway::CacheLimits {
    let defaults = certfleet_gateway::CacheLimits::default();
    let pick = |value: Option<usize>, default: usize| value.unwrap_or(default).max(2);
    certfleet_gateway::CacheLimits {
        certificates: pick(file.certificates, defaults.certificates),
        unknown_certificates: pick(file.unknown_certificates, defaults.unknown_certificates),
        cas: pick(file.cas, defaults.cas),
        verified_chains: pick(file.verified_chains, defaults.verified_chains),
        sni_endpoints: pick(file.sni_endpoints, defaults.sni_endpoints),
        sni_unknown_names: pick(file.sni_unknown_names, defaults.sni_unknown_names),
    }
}

/// The API listener's bounds from the file, each with its safe default.
fn api_limits(file: &ApiFile) -> anyhow::Result<certfleet_api::Limits> {
    let defaults = certfleet_api::Limits::default();
    let deadline = |value: &Option<String>, name: &str, default: std::time::Duration| -> anyhow::Result<_> {
        let Some(value) = value else { return Ok(default) };
        let parsed = std::time::Duration::try_from(parse_duration(value, name)?).unwrap_or_default();
        if parsed.is_zero() {
            bail!("{name} must be longer than zero");
        }
        Ok(parsed)
    };
    let max_connections_per_peer = file.max_connections_per_peer.unwrap_or(defaults.max_connections_per_peer);
    if max_connections_per_peer == 0 {
        bail!("api.max_connections_per_peer must be at least 1");
    }
    let signing_key_cache = file.signing_key_cache.unwrap_or(defaults.signing_key_cache);
    if signing_key_cache < 2 {
        bail!("api.signing_key_cache must be at least 2");
    }
    Ok(certfleet_api::Limits {
        max_connections: file.max_connections.unwrap_or(defaults.max_connections),
        signing_key_cache,
        max_connections_per_peer,
        handshake_timeout: deadline(&file.handshake_timeout, "api.handshake_timeout", defaults.handshake_timeout)?,
        header_timeout: deadline(&file.header_timeout, "api.header_timeout", defaults.header_timeout)?,
        body_timeout: deadline(&file.body_timeout, "api.body_timeout", defaults.body_timeout)?,
        stall_timeout: deadline(&file.stall_timeout, "api.stall_timeout", defaults.stall_timeout)?,
        ..defaults
    })
}

/// Values given on the command line, which win over the file.
#[derive(Default)]
pub struct Overrides {
    pub data_dir: Option<PathBuf>,
    pub api_addr: Option<String>,
    pub mqtt_addr: Option<String>,
    pub metrics_addr: Option<String>,
    pub database_url: Option<String>,
    pub node_id: Option<String>,
    pub nats_url: Option<String>,
}

impl Config {
    /// Reads the file (if any), applies the overrides and validates everything once.
    pub fn load(path: Option<&std::path::Path>, overrides: Overrides) -> anyhow::Result<Self> {
        let file: FileConfig = match path {
            Some(path) => {
                let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
                toml::from_str(&text).with_context(|| format!("in {}", path.display()))?
            }
            None => FileConfig::default(),
        };
        let api_limits = api_limits(&file.api)?;
        let api_addr =
            parse_addr(overrides.api_addr.or(file.api.addr).as_deref().unwrap_or("127.0.0.1:8443"), "api.addr")?;
        let insecure_plain_http = file.api.insecure_plain_http.unwrap_or(false);
        if insecure_plain_http && !api_addr.ip().is_loopback() {
            bail!("api.insecure_plain_http is only allowed on a loopback address, not {api_addr}");
        }
        let region = file.region.unwrap_or_else(|| "us-east-1".into());
        if region.is_empty() || !region.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-') {
            bail!("region {region:?} is not a region name");
        }
        let database_url = overrides.database_url.or(file.database.url).filter(|url| !url.is_empty());
        let mut domain_claims = BTreeMap::new();
        for (account, suffixes) in file.domains.claims.unwrap_or_default() {
            let id = certfleet_registry::AccountId::parse(&account)
                .with_context(|| format!("domains.claims: {account:?} is not an account ID"))?;
            let suffixes = suffixes
                .iter()
                .map(|suffix| parse_domain_suffix(suffix))
                .collect::<anyhow::Result<Vec<_>>>()
                .with_context(|| format!("domains.claims.{account}"))?;
            domain_claims.insert(id, suffixes);
        }
        let max_message_bytes = file.mqtt.max_message_bytes.unwrap_or(128 * 1024);
        if !(1024..=certfleet_mqtt::MAX_PACKET_SIZE / 2).contains(&max_message_bytes) {
            bail!("mqtt.max_message_bytes must be between 1024 and {}", certfleet_mqtt::MAX_PACKET_SIZE / 2);
        }
        let mqtt_shutdown = shutdown_config(&file.mqtt)?;
        let rules = rules_config(&file.rules, max_message_bytes)?;
        let egress = egress_policy(&file.egress)?;
        let broker = broker_bounds(&file.broker, max_message_bytes + 18 * 1024)?;
        let registry = registry_bounds(&file.registry)?;
        let fleet = fleet_config(&file.provisioning)?;
        let console = console_config(&file.console)?;
        if let Some((addr, _)) = &console
            && insecure_plain_http
            && !addr.ip().is_loopback()
        {
            bail!("console.addr must be a loopback address while the API serves plain HTTP, not {addr}");
        }
        let node_id = overrides
            .node_id
            .or(file.node.id)
            .filter(|id| !id.is_empty())
            .map(|id| {
                // The refused value is echoed clipped: it may be anything.
                let shown: String = id.chars().take(72).collect();
                certfleet_gateway::NodeId::parse(&id).with_context(|| format!("node id {shown:?}"))
            })
            .transpose()?;
        let nats_url = overrides.nats_url.or(file.node.nats_url).filter(|url| !url.is_empty());
        if let Some(url) = &nats_url {
            let shown: String = url.chars().take(200).collect();
            let valid = url
                .strip_prefix("nats://")
                .or_else(|| url.strip_prefix("tls://"))
                .is_some_and(|rest| !rest.is_empty() && rest.len() <= 1024 && !rest.contains(char::is_whitespace));
            if !valid {
                bail!("node.nats_url {shown:?} is not a nats://HOST:PORT or tls://HOST:PORT URL");
            }
        }
        let nats_outbound_bytes = file.node.nats_outbound_bytes.unwrap_or(64 * 1024 * 1024);
        if !(1024 * 1024..=16 * 1024 * 1024 * 1024).contains(&nats_outbound_bytes) {
            bail!("node.nats_outbound_bytes must be between 1 MiB and 16 GiB");
        }
        Ok(Config {
            node_id,
            nats_url,
            nats_outbound_bytes,
            data_dir: overrides.data_dir.or(file.data_dir).unwrap_or_else(|| PathBuf::from("certfleet-data")),
            region,
            endpoint_domain: file.endpoint_domain.unwrap_or_else(|| "certfleet.local".into()),
            api_addr,
            metrics_addr: overrides
                .metrics_addr
                .or(file.metrics.addr)
                .filter(|addr| !addr.is_empty())
                .map(|addr| parse_addr(&addr, "metrics.addr"))
                .transpose()?,
            insecure_plain_http,
            max_body_bytes: file.api.max_body_bytes.unwrap_or(512 * 1024),
            max_clock_skew: parse_duration(file.api.max_clock_skew.as_deref().unwrap_or("5m"), "api.max_clock_skew")?,
            api_limits,
            caches: cache_limits(&file.caches),
            mqtt_addr: parse_addr(
                overrides.mqtt_addr.or(file.mqtt.addr).as_deref().unwrap_or("127.0.0.1:8883"),
                "mqtt.addr",
            )?,
            mqtt_default_account: file.mqtt.default_account.filter(|account| !account.is_empty()),
            mqtt_max_connections: file.mqtt.max_connections,
            mqtt_handshake_timeout: parse_duration(
                file.mqtt.handshake_timeout.as_deref().unwrap_or("10s"),
                "mqtt.handshake_timeout",
            )?,
            mqtt_connect_timeout: parse_duration(
                file.mqtt.connect_timeout.as_deref().unwrap_or("10s"),
                "mqtt.connect_timeout",
            )?,
            mqtt_change_poll_interval: parse_duration(
                file.mqtt.change_poll_interval.as_deref().unwrap_or("200ms"),
                "mqtt.change_poll_interval",
            )?,
            mqtt_danger_authorize_everything: file.mqtt.danger_authorize_everything.unwrap_or(false),
            mqtt_max_message_bytes: max_message_bytes,
            mqtt_shutdown,
            broker,
            rules,
            database_url,
            device_certificate_validity: parse_duration(
                file.pki.device_certificate_validity.as_deref().unwrap_or("365d"),
                "pki.device_certificate_validity",
            )?,
            root_validity: parse_duration(file.pki.root_validity.as_deref().unwrap_or("3650d"), "pki.root_validity")?,
            server_names: file.pki.server_names.unwrap_or_default(),
            passphrase_file: file.keys.passphrase_file.filter(|path| !path.is_empty()).map(PathBuf::from),
            rotation: certfleet_services::RotationConfig {
                response_timeout: parse_duration(
                    file.rotation.response_timeout.as_deref().unwrap_or("10m"),
                    "rotation.response_timeout",
                )?,
                max_attempts: match file.rotation.max_attempts.unwrap_or(5) {
                    0 => bail!("rotation.max_attempts must be at least 1"),
                    attempts => i64::from(attempts),
                },
                danger_allow_key_reuse: file.rotation.danger_allow_key_reuse.unwrap_or(false),
            },
            rotation_sweep_interval: parse_duration(
                file.rotation.sweep_interval.as_deref().unwrap_or("5s"),
                "rotation.sweep_interval",
            )?,
            domain_trust_store: Some(
                file.domains.trust_store.unwrap_or_else(|| PathBuf::from("/etc/ssl/certs/ca-certificates.crt")),
            )
            .filter(|path| !path.as_os_str().is_empty()),
            domain_claims,
            egress,
            egress_ca_bundle: file.egress.ca_bundle.filter(|path| !path.is_empty()).map(PathBuf::from),
            registry,
            fleet,
            // Zero is allowed here: no wait at all (tests).
            thing_type_deletion_wait: match file.things.thing_type_deletion_wait.as_deref().unwrap_or("5m") {
                "0" | "0s" => time::Duration::ZERO,
                text => parse_duration(text, "things.thing_type_deletion_wait")?,
            },
            console,
        })
    }
}

/// A domain suffix an account may claim: lowercase, no trailing dot, at least two labels of
/// letters, digits and hyphens (a bare top-level domain would hand out every name under it).
fn parse_domain_suffix(text: &str) -> anyhow::Result<String> {
    let suffix = text.trim_end_matches('.').to_ascii_lowercase();
    let labels_valid = suffix.split('.').all(|label| {
        !label.is_empty()
            && label.len() <= 63
            && !label.starts_with('-')
            && !label.ends_with('-')
            && label.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
    });
    if !labels_valid || !suffix.contains('.') || suffix.len() > 253 {
        bail!("{text:?} is not a domain suffix of at least two labels, like \"fleet.example.com\"");
    }
    Ok(suffix)
}

/// The gateway's shutdown from `mqtt.shutdown_disconnects_per_second` (at least 1) and
/// `mqtt.shutdown_grace` (at most 1h).
fn shutdown_config(file: &MqttFile) -> anyhow::Result<certfleet_gateway::ShutdownConfig> {
    let defaults = certfleet_gateway::ShutdownConfig::default();
    let disconnects_per_second = match file.shutdown_disconnects_per_second {
        None => defaults.disconnects_per_second,
        Some(rate) => {
            std::num::NonZeroU32::new(rate).context("mqtt.shutdown_disconnects_per_second must be at least 1")?
        }
    };
    let grace = match &file.shutdown_grace {
        None => defaults.grace,
        Some(text) => {
            let grace = parse_duration(text, "mqtt.shutdown_grace")?;
            if grace > time::Duration::hours(1) {
                bail!("mqtt.shutdown_grace must be at most 1h");
            }
            std::time::Duration::try_from(grace).unwrap_or_default()
        }
    };
    Ok(certfleet_gateway::ShutdownConfig { disconnects_per_second, grace })
}

/// The rules engine's settings from the `[rules]` section, its value bound the message size.
fn rules_config(file: &RulesFile, max_message_bytes: usize) -> anyhow::Result<certfleet_gateway::rules::RulesConfig> {
    use certfleet_gateway::rules::{AccountBudget, RulesConfig};
    let defaults = RulesConfig::default();
    let limits = certfleet_rules::Limits {
        max_value_bytes: max_message_bytes,
        max_steps: file.max_steps.unwrap_or(defaults.limits.max_steps),
        max_payload_depth: file.max_payload_depth.unwrap_or(defaults.limits.max_payload_depth),
        ..defaults.limits
    };
    let account_budget = AccountBudget {
        messages_per_second: file.account_messages_per_second.unwrap_or(defaults.account_budget.messages_per_second),
        steps_per_second: file.account_steps_per_second.unwrap_or(defaults.account_budget.steps_per_second),
        queue_capacity: file.account_queue_capacity.unwrap_or(defaults.account_budget.queue_capacity),
    };
    let config = RulesConfig {
        queue_capacity: file.queue_capacity.unwrap_or(defaults.queue_capacity),
        queue_bytes: file.queue_bytes.unwrap_or(defaults.queue_bytes),
        max_depth: file.max_republish_depth.unwrap_or(defaults.max_depth),
        max_chain_bytes: file.max_chain_bytes.unwrap_or(defaults.max_chain_bytes),
        limits,
        account_budget,
        ..defaults
    };
    for (key, value) in [
        ("rules.queue_capacity", config.queue_capacity as u64),
        ("rules.max_steps", limits.max_steps),
        ("rules.max_payload_depth", limits.max_payload_depth as u64),
        ("rules.account_messages_per_second", u64::from(account_budget.messages_per_second)),
        ("rules.account_queue_capacity", account_budget.queue_capacity as u64),
    ] {
        if value == 0 {
            bail!("{key} must be at least 1");
        }
    }
    if limits.max_payload_depth > 128 {
        bail!("rules.max_payload_depth must be at most 128");
    }
    if config.queue_bytes < 2 * max_message_bytes {
        bail!("rules.queue_bytes must be at least twice mqtt.max_message_bytes ({})", 2 * max_message_bytes);
    }
    if account_budget.steps_per_second < limits.max_steps {
        bail!("rules.account_steps_per_second must be at least rules.max_steps ({})", limits.max_steps);
    }
    Ok(config)
}

/// The `[egress]` section as the egress's typed policy.
fn egress_policy(file: &EgressFile) -> anyhow::Result<certfleet_egress::Policy> {
    let blocks = |texts: &[String], key: &str| -> anyhow::Result<Vec<certfleet_egress::Cidr>> {
        texts.iter().map(|text| certfleet_egress::Cidr::parse(text).with_context(|| format!("egress.{key}"))).collect()
    };
    let to_std = |duration: time::Duration| std::time::Duration::try_from(duration).unwrap_or_default();
    let defaults = certfleet_egress::Policy::default();
    Ok(certfleet_egress::Policy {
        allow_http: file.allow_http.unwrap_or(false),
        deny: match &file.deny {
            Some(deny) => blocks(deny, "deny")?,
            None => defaults.deny,
        },
        allow: blocks(file.allow.as_deref().unwrap_or_default(), "allow")?,
        connect_timeout: to_std(parse_duration(
            file.connect_timeout.as_deref().unwrap_or("3s"),
            "egress.connect_timeout",
        )?),
        response_timeout: to_std(parse_duration(
            file.response_timeout.as_deref().unwrap_or("5s"),
            "egress.response_timeout",
        )?),
        max_response_bytes: file.max_response_bytes.unwrap_or(defaults.max_response_bytes),
        max_in_flight_per_account: match file.max_in_flight_per_account.unwrap_or(32) {
            0 => bail!("egress.max_in_flight_per_account must be at least 1"),
            bound => bound,
        },
    })
}

fn parse_addr(text: &str, key: &str) -> anyhow::Result<SocketAddr> {
    text.parse().with_context(|| format!("{key}: {text:?} is not an address like 127.0.0.1:8443"))
}

/// Parses `"200ms"`, `"90s"`, `"5m"`, `"12h"` or `"365d"`.
pub fn parse_duration(text: &str, key: &str) -> anyhow::Result<time::Duration> {
    let split = text.find(|c: char| !c.is_ascii_digit()).unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let number: i64 =
        number.parse().with_context(|| format!("{key}: {text:?} needs a number and a unit (ms, s, m, h, d)"))?;
    let duration = match unit {
        "ms" => time::Duration::milliseconds(number),
        "s" => time::Duration::seconds(number),
        "m" => time::Duration::minutes(number),
        "h" => time::Duration::hours(number),
        "d" => time::Duration::days(number),
        _ => bail!("{key}: {text:?} needs a unit: ms, s, m, h or d"),
    };
    if duration <= time::Duration::ZERO {
        bail!("{key}: {text:?} must be positive");
    }
    Ok(duration)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_documented_defaults_parse_and_are_the_defaults() {
        let file: FileConfig = toml::from_str(DEFAULT_CONFIG).unwrap();
        assert_eq!(file.api.addr.as_deref(), Some("127.0.0.1:8443"));
        let dir = std::env::temp_dir().join(format!("certfleet-config-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("config.toml");
        std::fs::write(&path, DEFAULT_CONFIG).unwrap();
        let from_file = Config::load(Some(&path), Overrides::default()).unwrap();
        let built_in = Config::load(None, Overrides::default()).unwrap();
        assert_eq!(format!("{from_file:?}"), format!("{built_in:?}"));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn the_console_is_off_by_default_and_its_bounds_are_checked() {
        assert!(Config::load(None, Overrides::default()).unwrap().console.is_none());
        let dir = std::env::temp_dir().join(format!("certfleet-config-console-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("config.toml");
        let load = |text: &str| {
            std::fs::write(&path, text).unwrap();
            Config::load(Some(&path), Overrides::default())
        };
        let config = load("[console]\naddr = \"127.0.0.1:0\"\nmax_sessions = 3\nsession_idle = \"5m\"").unwrap();
        let (addr, console) = config.console.unwrap();
        assert_eq!(addr.to_string(), "127.0.0.1:0");
        assert_eq!(console.sessions.max_sessions, 3);
        assert_eq!(console.sessions.idle, std::time::Duration::from_secs(300));
        assert_eq!(console.sign_in.per_peer, 5);
        for bad in [
            "[console]\naddr = \"localhost\"",
            "[console]\naddr = \"127.0.0.1:0\"\nmax_sessions = 0",
            "[console]\naddr = \"127.0.0.1:0\"\nsign_in_failures_per_peer = 0",
            "[console]\naddr = \"127.0.0.1:0\"\nrequest_timeout = \"0s\"",
            "[console]\ncolour = 1",
            "[api]\ninsecure_plain_http = true\n[console]\naddr = \"0.0.0.0:8444\"",
        ] {
            assert!(load(bad).is_err(), "{bad}");
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn the_gateway_shutdown_settings_have_defaults_and_are_read() {
        let defaults = Config::load(None, Overrides::default()).unwrap().mqtt_shutdown;
        assert_eq!((defaults.disconnects_per_second.get(), defaults.grace), (1000, std::time::Duration::from_secs(30)));
        let dir = std::env::temp_dir().join(format!("certfleet-config-shutdown-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("config.toml");
        std::fs::write(&path, "[mqtt]\nshutdown_disconnects_per_second = 10\nshutdown_grace = \"1500ms\"").unwrap();
        let read = Config::load(Some(&path), Overrides::default()).unwrap().mqtt_shutdown;
        assert_eq!((read.disconnects_per_second.get(), read.grace), (10, std::time::Duration::from_millis(1500)));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn node_ids_are_checked_once() {
        let load = |id: &str| {
            Config::load(None, Overrides { node_id: Some(id.to_owned()), ..Overrides::default() })
                .map(|config| config.node_id.map(|id| id.to_string()))
                .map_err(|error| format!("{error:#}"))
        };
        assert_eq!(load("gw-1"), Ok(Some("gw-1".to_owned())));
        assert_eq!(load(""), Ok(None));
        for bad in ["gw.1", "gw 1", "-gw", "nœud", &"a".repeat(65)] {
            assert!(load(bad).unwrap_err().starts_with("node id"), "{bad:?}");
        }
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("250ms", "k").unwrap(), time::Duration::milliseconds(250));
        for (text, expected) in [("90s", Some(90)), ("5m", Some(300)), ("2h", Some(7200)), ("1d", Some(86_400))] {
            assert_eq!(parse_duration(text, "k").ok().map(|d| d.whole_seconds()), expected, "{text}");
        }
        for bad in ["", "5", "m", "5w", "-5m", "0s", "5 m"] {
            assert!(parse_duration(bad, "k").is_err(), "{bad:?}");
        }
    }

    #[test]
    fn domain_claims_are_checked_once() {
        let dir = std::env::temp_dir().join(format!("certfleet-config-domains-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("config.toml");
        let load = |text: &str| {
            std::fs::write(&path, text).unwrap();
            Config::load(Some(&path), Overrides::default())
        };
        let config =
            load("[domains]\ntrust_store = \"\"\n[domains.claims]\n\"123456789012\" = [\"Fleet.Example.com.\"]")
                .unwrap();
        assert_eq!(config.domain_trust_store, None);
        let id = certfleet_registry::AccountId::parse("123456789012").unwrap();
        assert_eq!(config.domain_claims.get(&id), Some(&vec!["fleet.example.com".to_owned()]));
        for bad in [
            "[domains.claims]\n\"12345\" = [\"fleet.example.com\"]",
            "[domains.claims]\n\"123456789012\" = [\"com\"]",
            "[domains.claims]\n\"123456789012\" = [\"*.example.com\"]",
            "[domains.claims]\n\"123456789012\" = [\"\"]",
            "[domains]\nsuffixes = []",
        ] {
            assert!(load(bad).is_err(), "{bad}");
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn unknown_keys_and_unsafe_plain_http_are_refused() {
        let dir = std::env::temp_dir().join(format!("certfleet-config-bad-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("config.toml");
        for bad in [
            "colour = \"red\"",
            "[api]\naddr = \"0.0.0.0:8443\"\ninsecure_plain_http = true",
            "[mqtt]\nmax_message_bytes = 10",
            "[mqtt]\nshutdown_disconnects_per_second = 0",
            "[mqtt]\nshutdown_disconnects_per_second = -1",
            "[mqtt]\nshutdown_grace = \"0s\"",
            "[mqtt]\nshutdown_grace = \"30\"",
            "[mqtt]\nshutdown_grace = \"2h\"",
            "[rules]\nmax_steps = 0",
            "[rules]\nmax_payload_depth = 1000",
            "[rules]\nmax_steps = 100\naccount_steps_per_second = 99",
            "[rules]\ncolour = 1",
            "[broker]\nmax_queued_bytes = 1024",
            "[broker]\nmax_queued_bytes = 8388608\nmax_account_queued_bytes = 1048576",
            "[broker]\nmax_inflight_messages = 0",
            "[broker]\nmax_session_expiry = \"8d\"",
            "[broker]\ncolour = 1",
            "[registry]\nprune_batch_rows = 0",
            "[registry]\ntest_endpoint_records_per_second = 0",
            "[registry]\njitr_registrations_per_second = 0",
            "[registry]\nhistory_sessions_per_certificate_per_hour = 0",
            "[registry]\nchange_feed_retention = \"10m\"",
            "[registry]\nconnection_history_retention = \"0d\"",
            "[registry]\nconnection_history_retention = \"30d\"",
            "[registry]\ncolour = 1",
            "[provisioning]\nmax_in_flight = 0",
            "[provisioning]\ntoken_lifetime = \"2h\"",
            "[provisioning]\nhook_timeout = \"1m\"",
            "[provisioning]\ncolour = 1",
        ] {
            std::fs::write(&path, bad).unwrap();
            assert!(Config::load(Some(&path), Overrides::default()).is_err(), "{bad}");
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
