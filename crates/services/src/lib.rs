//! Every certfleet operation as a typed Rust call: the one API boundary.
//!
//! The HTTP API, the admin commands and (later) the gateway and workers call these functions;
//! none of them touches the registry directly. Each operation runs in one registry transaction,
//! checks the AWS IoT rules (the seed's CA rules, status transitions, transfers) and returns
//! domain values or an [`Error`] that says which rule refused it. The AWS wire format is not
//! known here: the api crate maps [`Error`] to AWS error shapes.

mod accounts;
mod audit;
mod certificates;
mod clock;
mod destinations;
mod endpoints;
mod error;
pub mod feed;
mod fleet;
mod groups;
mod ids;
mod issuers;
mod jitr;
mod lookups;
mod maintenance;
mod overview;
mod policies;
mod provisioning;
pub mod rate;
mod rotation;
mod templates;
mod thing_types;
mod things;
mod tokens;
mod topic_rules;

use std::sync::Arc;

use certfleet_pki::Issuer;
use certfleet_registry::{AccountId, Store};

pub use accounts::{AccessKeySummary, NewAccessKey};
pub use audit::{
    AUDIT_CHECKS, AuditCheck, AuditConfigurationUpdate, AuditListener, AuditTaskSummary, ScheduledAuditDefinition,
    ScheduledAuditUpdate, audit_check, next_run_after,
};
pub use certificates::{CaRegistration, CaUpdate, CertificateRegistration, CreatedKeysAndCertificate};
pub use clock::{Clock, ManualClock, SystemClock};
pub use destinations::{MAX_DESTINATIONS, PendingConfirmation, url_under};
pub use endpoints::{
    DEFAULT_SECURITY_POLICY, DomainClaims, DomainConfigurationDefinition, DomainConfigurationUpdate, Migration,
    MigrationSettings, Purpose, SECURITY_POLICIES, ServerCertificateDescription, ServerCertificateImport, ServingChain,
    is_reserved, parse_trust_store, purpose,
};
pub use error::Error;
pub use fleet::{
    CLAIM_VALIDITY, FleetTemplate, IssuedCertificate, IssuedKeys, ProvisioningClaimCertificate, ProvisioningOutcome,
    TemplateRefusal,
};
pub use groups::{
    GroupMembership, MAX_GROUP_ATTRIBUTES, MAX_GROUP_DEPTH, MAX_GROUPS_PER_THING, ThingGroupDefinition,
    ThingGroupDescription, ThingGroupUpdate,
};
pub use ids::{Marker, decode_marker, encode_marker};
pub use issuers::load_or_create_issuer;
pub use lookups::ConnectionEvent;
pub use maintenance::{NotPruned, PruneReport, PruneSettings, Retention};
pub use overview::{
    CaCounts, EXPIRY_WINDOWS_DAYS, ExpiringCount, FleetOverview, OpenCampaign, RotationCounts, TIMELINE_WEEK_COUNT,
    TimelineSeries,
};
pub use policies::PrincipalPolicies;
pub use provisioning::{
    CERTIFICATE_ID_PARAMETER, CertificateSource, MAX_PARAMETERS, MAX_VALUE_CHARS, Override, OverrideSettings,
    ProvisionedPolicy, ProvisionedThing, Provisioning, Template, TemplateKind,
};
pub use rotation::{
    CampaignSummary, DeviceErrorCode, DeviceMessageOutcome, DeviceTopic, EXPIRING_CHECK, Ignored, OutgoingMessage,
    RotationAlert, RotationConfig, RotationEffects, device_topic,
};
pub use templates::{
    FLEET_PROVISIONING, HOOK_PAYLOAD_VERSION, HookDefinition, JITP, MAX_TEMPLATE_VERSIONS, TemplateDefinition,
    TemplateUpdate,
};
pub use thing_types::{MAX_DESCRIPTION_CHARS, MAX_SEARCHABLE_ATTRIBUTES, ThingTypeProperties};
pub use things::{AttributePayload, ThingDefinition, ThingUpdate};
pub use tokens::{decode_policy_marker, decode_token, encode_policy_marker, encode_token};
pub use topic_rules::{RuleAction, RunnableRule, SQL_VERSION, TopicRulePayload, decode_actions, decode_error_action};

/// Settings of the services, built by the binary from its configuration.
#[derive(Clone, Debug)]
pub struct Config {
    /// The AWS partition used in ARNs (`aws`).
    pub partition: String,
    /// The region this deployment answers for, used in ARNs, endpoints and SigV4 scopes.
    pub region: String,
    /// The domain under which account endpoints live: `<id>-ats.iot.<region>.<endpoint_domain>`.
    pub endpoint_domain: String,
    /// Validity of certificates certfleet issues (CreateCertificateFromCsr, CreateKeysAndCertificate).
    pub device_certificate_validity: time::Duration,
    /// At most this many CA certificates with the same subject per account (AWS: 10).
    pub max_cas_per_subject: usize,
    /// Certificate rotation: timeouts, attempts, key reuse.
    pub rotation: RotationConfig,
    /// Who may claim which custom domain names (docs/endpoints.md, "Domain claims").
    pub domain_claims: DomainClaims,
    /// Just-in-time registrations per account per second on this node (AWS has a per-account
    /// registration rate too); past it a device is refused, counted and may retry.
    pub max_registrations_per_second: u32,
    /// How long a thing type must have been deprecated before DeleteThingType (AWS: 5 minutes).
    pub thing_type_deletion_wait: time::Duration,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            partition: "aws".into(),
            region: "us-east-1".into(),
            endpoint_domain: "certfleet.local".into(),
            device_certificate_validity: time::Duration::days(365),
            max_cas_per_subject: 10,
            rotation: RotationConfig::default(),
            domain_claims: DomainClaims::default(),
            max_registrations_per_second: 100,
            thing_type_deletion_wait: time::Duration::minutes(5),
        }
    }
}

/// The authenticated caller of an operation: the API layer builds it after SigV4 succeeds.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Caller {
    pub account: AccountId,
}

/// One connected device, as the operator view shows it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConnectedClient {
    pub client_id: Option<String>,
    pub certificate_id: certfleet_pki::CertificateId,
    pub sni: Option<String>,
    pub tls_version: String,
    pub peer: String,
    pub connected_at: time::OffsetDateTime,
    /// The domain configuration it came through, and the server chain it was served (`builtin`
    /// or the server certificate IDs joined by `+`), when known.
    pub endpoint: Option<String>,
    pub chain: Option<String>,
    /// The gateway node serving it, in a cluster's view (`None`: a node alone, which lists only
    /// its own devices).
    pub node: Option<String>,
}

/// What the data plane (the gateway of this node) tells operators about itself. The services
/// do not hold one (the gateway is built on the services): the API is given the node's. In a
/// cluster, the node's view is the cluster's: every node's devices, counters and drains.
pub trait DataPlane: Send + Sync {
    /// The devices of `account` connected to this node (in a cluster: to every node that
    /// answered), oldest first.
    fn connected_clients(&self, account: &AccountId) -> Vec<ConnectedClient>;

    /// This node's view of a domain configuration: per chain, the devices connected and the
    /// handshakes completed and failed, and the drain of the last migration or revert.
    fn endpoint_report(&self, _account: &AccountId, _configuration: &str) -> Option<EndpointReport> {
        None
    }

    /// The devices of `account` this node refused in the last hour, by reason (the gateway's
    /// `Refusal` names), most frequent first.
    fn recent_refusals(&self, _account: &AccountId) -> Vec<(String, u64)> {
        Vec::new()
    }
}

/// One server chain of a domain configuration, as a gateway node saw it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ChainStats {
    /// `builtin`, or the server certificate IDs joined by `+`.
    pub chain: String,
    /// Whether new handshakes get this chain.
    pub serving: bool,
    pub connected: u64,
    pub handshakes_completed: u64,
    /// Failed handshakes by the alert the client sent (`unknown_ca`, ...) or `other`.
    pub handshakes_failed: std::collections::BTreeMap<String, u64>,
}

/// The drain after a migration or revert, on one gateway node.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DrainReport {
    pub migration_id: String,
    /// The chain sessions are moved to.
    pub to_chain: String,
    /// Sessions on other chains when the drain started, and how many were closed so far.
    pub sessions: usize,
    pub closed: usize,
    /// Client IDs connected when the drain started that have connected again on `to_chain`.
    pub came_back: Vec<String>,
    /// Those that have not (yet).
    pub not_back: Vec<String>,
    /// Set when this node's guard reverted the migration, with its reason.
    pub guard_tripped: Option<String>,
}

/// A node's report on a domain configuration; in a cluster, every node's summed, with each
/// node's own view in `nodes`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct EndpointReport {
    pub chains: Vec<ChainStats>,
    pub drain: Option<DrainReport>,
    /// Each node's view, in a cluster (empty for a node alone).
    pub nodes: Vec<NodeView>,
    /// The cluster's nodes that did not answer in time: their devices and counters are missing
    /// from this report.
    pub missing_nodes: Vec<String>,
}

/// One gateway node's view of a domain configuration, in a cluster-wide report: whether it
/// serves the chain the others serve (a node that has not followed a migration yet is seen
/// here), and its own devices and drain.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct NodeView {
    pub node: String,
    /// The chain its new handshakes get, when it knows (it resolved the configuration since its
    /// last change, or drains onto it).
    pub serving: Option<String>,
    /// Its devices connected through the configuration.
    pub connected: u64,
    /// Its drain: sessions it set out to close, and closed.
    pub drain_sessions: usize,
    pub drain_closed: usize,
    /// Set when this node's guard reverted the migration.
    pub guard_tripped: Option<String>,
}

/// The services: the registry, a clock, the configuration and the device-issuing CA.
pub struct Services {
    store: Arc<dyn Store>,
    clock: Arc<dyn Clock>,
    config: Config,
    device_issuer: Option<Issuer>,
    key_passphrase: std::sync::OnceLock<zeroize::Zeroizing<Vec<u8>>>,
    /// Just-in-time registrations per account in the current second, and those refused.
    registrations: std::sync::Mutex<rate::WindowedRate<AccountId>>,
    registrations_throttled: std::sync::atomic::AtomicU64,
}

/// The most accounts a per-account rate bound tracks at once.
const MAX_RATE_KEYS: usize = 100_000;

impl Services {
    /// Puts the services together. Without a device issuer (admin commands), operations that
    /// issue certificates fail.
    pub fn new(store: Arc<dyn Store>, clock: Arc<dyn Clock>, config: Config, device_issuer: Option<Issuer>) -> Self {
        let registrations =
            rate::WindowedRate::new(config.max_registrations_per_second, time::Duration::seconds(1), MAX_RATE_KEYS);
        Services {
            store,
            clock,
            config,
            registrations: std::sync::Mutex::new(registrations),
            registrations_throttled: std::sync::atomic::AtomicU64::new(0),
            device_issuer,
            key_passphrase: std::sync::OnceLock::new(),
        }
    }

    /// The configuration.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// The registry.
    pub fn store(&self) -> &dyn Store {
        &*self.store
    }

    /// The CA that signs the certificates certfleet issues.
    pub fn device_issuer(&self) -> Result<&Issuer, Error> {
        self.device_issuer.as_ref().ok_or_else(|| Error::Internal("no device issuer is loaded".into()))
    }

    /// The current time of the services' clock.
    pub fn now(&self) -> time::OffsetDateTime {
        self.clock.now()
    }

    /// The ARN of a device certificate.
    pub fn certificate_arn(&self, account: &AccountId, id: &certfleet_pki::CertificateId) -> String {
        self.arn(account, &format!("cert/{id}"))
    }

    /// The ARN of a CA certificate.
    pub fn ca_certificate_arn(&self, account: &AccountId, id: &certfleet_pki::CertificateId) -> String {
        self.arn(account, &format!("cacert/{id}"))
    }

    fn arn(&self, account: &AccountId, resource: &str) -> String {
        format!("arn:{}:iot:{}:{}:{}", self.config.partition, self.config.region, account, resource)
    }
}
