//! The domain model: accounts, their access keys, CA certificates and device certificates.
//!
//! These are plain Rust values. They know nothing of SQL rows or of the AWS wire format: the
//! backends convert rows by hand and the api crate has its own wire structs.

use std::collections::BTreeMap;
use std::fmt;

use certfleet_pki::CertificateId;
use time::OffsetDateTime;

use crate::Error;

/// A 12-digit account ID, the tenant boundary of the registry.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct AccountId(String);

impl AccountId {
    /// Parses a 12-digit account ID.
    pub fn parse(text: &str) -> Result<Self, Error> {
        if text.len() == 12 && text.bytes().all(|b| b.is_ascii_digit()) {
            Ok(AccountId(text.to_owned()))
        } else {
            Err(Error::InvalidValue(format!("account id must be 12 digits, got {text:?}")))
        }
    }

    /// The ID as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for AccountId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// An account: a tenant with its own registry view and access keys.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Account {
    pub id: AccountId,
    /// The per-account part of the data endpoint host name (`<identifier>-ats.iot.<region>.<domain>`).
    pub endpoint_identifier: String,
    /// The CA registration code (GetRegistrationCode), created on first request.
    pub registration_code: Option<String>,
    pub created_at: OffsetDateTime,
}

/// An access key pair used to sign API requests (SigV4) on behalf of an account.
///
/// The secret is needed in clear to verify signatures; it lives only in the registry database,
/// whose file is created with 0600 permissions, and is never logged.
#[derive(Clone, PartialEq, Eq)]
pub struct AccessKey {
    pub access_key_id: String,
    pub secret_access_key: String,
    pub account: AccountId,
    pub created_at: OffsetDateTime,
}

impl fmt::Debug for AccessKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AccessKey")
            .field("access_key_id", &self.access_key_id)
            .field("account", &self.account)
            .finish_non_exhaustive()
    }
}

/// Status of a registered CA certificate.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CaStatus {
    Active,
    Inactive,
}

/// Status of a device certificate.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CertificateStatus {
    Active,
    Inactive,
    Revoked,
    PendingTransfer,
    RegisterInactive,
    PendingActivation,
}

/// How devices must reach the gateway with a certificate: DEFAULT works without SNI,
/// SNI_ONLY requires the endpoint host name in SNI.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CertificateMode {
    Default,
    SniOnly,
}

/// The just-in-time provisioning settings of a CA.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RegistrationConfig {
    pub template_body: Option<String>,
    pub role_arn: Option<String>,
    pub template_name: Option<String>,
}

/// A provisioning template of an account (CreateProvisioningTemplate): a JITP template, which a
/// CA's registrationConfig names, or a FLEET_PROVISIONING one, which devices provision with.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProvisioningTemplate {
    pub account: AccountId,
    pub name: String,
    /// The templateId, a UUID.
    pub id: String,
    pub description: Option<String>,
    /// The default version's body (a copy the writes that change the default version keep;
    /// every version is in [`ProvisioningTemplateVersion`]).
    pub body: String,
    pub enabled: bool,
    /// `JITP` or `FLEET_PROVISIONING`.
    pub template_type: String,
    pub role_arn: String,
    pub default_version: i64,
    /// The ID the next version gets (IDs are never reused).
    pub next_version: i64,
    /// The pre-provisioning hook (FLEET_PROVISIONING only).
    pub pre_provisioning_hook: Option<ProvisioningHook>,
    pub created_at: OffsetDateTime,
    pub last_modified: OffsetDateTime,
}

/// A template's pre-provisioning hook: where the gateway asks whether a device may provision.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProvisioningHook {
    /// An `https://` URL (AWS: a Lambda function's ARN).
    pub target: String,
    pub payload_version: String,
}

/// One version of a provisioning template's body.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProvisioningTemplateVersion {
    pub account: AccountId,
    pub template_name: String,
    pub version_id: i64,
    pub body: String,
    pub created_at: OffsetDateTime,
}

/// A provisioning claim certificate (CreateProvisioningClaim) and the one template it may
/// provision with.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProvisioningClaim {
    pub account: AccountId,
    pub certificate_id: CertificateId,
    pub template_name: String,
    pub expires_at: OffsetDateTime,
    pub created_at: OffsetDateTime,
}

/// A resource tag.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Tag {
    pub key: String,
    pub value: String,
}

/// A CA certificate registered in one account.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CaCertificate {
    pub account: AccountId,
    pub id: CertificateId,
    pub pem: String,
    /// Hex SHA-256 of the subject's DER: device certificates are matched to CAs by it.
    pub subject_key: String,
    pub status: CaStatus,
    pub mode: CertificateMode,
    pub auto_registration: bool,
    pub registration_config: Option<RegistrationConfig>,
    pub generation_id: String,
    pub customer_version: i64,
    pub not_before: OffsetDateTime,
    pub not_after: OffsetDateTime,
    pub created_at: OffsetDateTime,
    pub last_modified: OffsetDateTime,
}

/// The record of a transfer between accounts, kept on the certificate after it ends.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TransferData {
    /// The account the certificate is being offered to, while the transfer is pending.
    pub pending_to: Option<AccountId>,
    pub transfer_message: Option<String>,
    pub reject_reason: Option<String>,
    pub transfer_date: Option<OffsetDateTime>,
    pub accept_date: Option<OffsetDateTime>,
    pub reject_date: Option<OffsetDateTime>,
}

/// A device certificate registered in one account.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DeviceCertificate {
    pub account: AccountId,
    pub id: CertificateId,
    pub pem: String,
    /// The registered CA that signed it, if any (None for CA-less, multi-account registration).
    pub ca_certificate_id: Option<CertificateId>,
    pub status: CertificateStatus,
    pub mode: CertificateMode,
    pub previous_owner: Option<AccountId>,
    pub generation_id: String,
    pub customer_version: i64,
    pub not_before: OffsetDateTime,
    pub not_after: OffsetDateTime,
    pub created_at: OffsetDateTime,
    pub last_modified: OffsetDateTime,
    pub transfer: TransferData,
}

impl DeviceCertificate {
    /// The record of `certificate` newly registered (or issued) in `account` at `now`: its ID,
    /// PEM and validity from the certificate, version 1, no transfer. Every way a certificate
    /// enters the registry builds its row here.
    pub fn registered(
        account: AccountId,
        certificate: &certfleet_pki::Certificate,
        ca_certificate_id: Option<CertificateId>,
        status: CertificateStatus,
        mode: CertificateMode,
        generation_id: String,
        now: OffsetDateTime,
    ) -> Self {
        DeviceCertificate {
            account,
            id: certificate.id().clone(),
            pem: certificate.to_pem(),
            ca_certificate_id,
            status,
            mode,
            previous_owner: None,
            generation_id,
            customer_version: 1,
            not_before: certificate.not_before(),
            not_after: certificate.not_after(),
            created_at: now,
            last_modified: now,
            transfer: TransferData::default(),
        }
    }
}

/// What an issuer (a CA whose key certfleet holds) is used for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IssuerPurpose {
    /// Signs device certificates (CreateCertificateFromCsr, CreateKeysAndCertificate).
    Device,
    /// Signs the API's and the gateway's TLS server certificates.
    Server,
}

/// A CA whose private key certfleet holds, sealed (encrypted) at rest.
#[derive(Clone, PartialEq, Eq)]
pub struct IssuerRecord {
    pub id: CertificateId,
    pub purpose: IssuerPurpose,
    pub certificate_pem: String,
    /// The PKCS#8 private key sealed with `certfleet_pki::sealed`.
    pub sealed_key: Vec<u8>,
    pub created_at: OffsetDateTime,
}

impl fmt::Debug for IssuerRecord {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("IssuerRecord").field("id", &self.id).field("purpose", &self.purpose).finish_non_exhaustive()
    }
}

/// Where a listing starts: created strictly after (ascending) or before (descending) this point.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Cursor {
    pub created_at_ms: i64,
    pub id: String,
}

/// One page of a listing to fetch.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PageRequest {
    pub limit: u32,
    pub ascending: bool,
    pub after: Option<Cursor>,
}

/// A page of results and where the next one starts.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Page<T> {
    pub items: Vec<T>,
    pub next: Option<Cursor>,
}

/// What a change-feed entry is about.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ChangeKind {
    /// A device certificate's status, mode or existence changed.
    Certificate,
    /// A CA certificate's status or existence changed.
    CaCertificate,
    /// An account was created or deleted.
    Account,
    /// A policy got a new default version or was deleted (entity: the policy name).
    Policy,
    /// A thing's type or attributes changed, or it was created or deleted (entity: the thing name).
    Thing,
    /// A domain configuration or a server certificate it serves changed (entity: the
    /// configuration's name, or `*` for every configuration of the account).
    DomainConfiguration,
    /// A topic rule was created, replaced, enabled, disabled or deleted (entity: the rule name).
    TopicRule,
    /// An access key was deleted (entity: the access key ID): API nodes forget its signing keys.
    AccessKey,
    /// What a thing group grants changed: a policy attached to or detached from it, or the
    /// group deleted (entity: the group name). Membership changes are `Thing` entries.
    ThingGroup,
}

/// One entry of the change feed: "entity X of account A changed; reload it". Entries carry no
/// state, so reading one twice, or out of order, is harmless.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Change {
    pub seq: i64,
    pub account: AccountId,
    pub kind: ChangeKind,
    pub entity_id: String,
    pub created_at: OffsetDateTime,
}

/// One MQTT connection of a device, as the gateway recorded it: which client ID used which
/// certificate, when, and how it came (the audit's shared-certificate and conflicting-client-ID
/// checks, rotation and the console's certificate page read it).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConnectionRecord {
    /// Unique per connection (the lifecycle events' sessionIdentifier).
    pub session_id: String,
    pub account: AccountId,
    pub certificate_id: CertificateId,
    pub client_id: String,
    pub connected_at: OffsetDateTime,
    pub disconnected_at: Option<OffsetDateTime>,
    pub disconnect_reason: Option<String>,
    /// The endpoint, server chain and TLS version it came through (unknown for the rows
    /// recorded before migration 17).
    pub via: ConnectionVia,
}

/// How a connection reached the gateway: the endpoint (the domain configuration its SNI named,
/// `iot:Data-ATS` without one), the server chain it was answered with (`builtin`, or server
/// certificate IDs joined by `+`) and the TLS version. Each value is clipped to its column's
/// bound when made, so a stored one always fits; `None` is unknown (shown as `-`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ConnectionVia {
    endpoint: Option<String>,
    chain: Option<String>,
    tls_version: Option<String>,
}

impl ConnectionVia {
    /// The most characters of an endpoint kept (a domain configuration name has at most 128).
    pub const MAX_ENDPOINT: usize = 128;
    /// The most characters of a chain kept (two server certificate IDs and a `+`, with room).
    pub const MAX_CHAIN: usize = 160;
    /// The most characters of a TLS version kept (`TLSv1.3`).
    pub const MAX_TLS_VERSION: usize = 16;

    /// The values, each clipped to its bound (in characters).
    pub fn new(endpoint: Option<&str>, chain: Option<&str>, tls_version: Option<&str>) -> Self {
        let clipped = |text: &str, max: usize| text.chars().take(max).collect::<String>();
        ConnectionVia {
            endpoint: endpoint.map(|text| clipped(text, Self::MAX_ENDPOINT)),
            chain: chain.map(|text| clipped(text, Self::MAX_CHAIN)),
            tls_version: tls_version.map(|text| clipped(text, Self::MAX_TLS_VERSION)),
        }
    }

    pub fn endpoint(&self) -> Option<&str> {
        self.endpoint.as_deref()
    }

    pub fn chain(&self) -> Option<&str> {
        self.chain.as_deref()
    }

    pub fn tls_version(&self) -> Option<&str> {
        self.tls_version.as_deref()
    }
}

macro_rules! text_enum {
    ($ty:ident { $($variant:ident = $text:literal),* $(,)? }) => {
        impl $ty {
            /// The stored (and AWS) spelling.
            pub fn as_str(self) -> &'static str {
                match self { $($ty::$variant => $text),* }
            }

            /// Parses the stored (and AWS) spelling.
            pub fn parse(text: &str) -> Option<Self> {
                match text { $($text => Some($ty::$variant),)* _ => None }
            }
        }
    };
}

text_enum!(CaStatus { Active = "ACTIVE", Inactive = "INACTIVE" });
text_enum!(CertificateStatus {
    Active = "ACTIVE",
    Inactive = "INACTIVE",
    Revoked = "REVOKED",
    PendingTransfer = "PENDING_TRANSFER",
    RegisterInactive = "REGISTER_INACTIVE",
    PendingActivation = "PENDING_ACTIVATION",
});
text_enum!(CertificateMode { Default = "DEFAULT", SniOnly = "SNI_ONLY" });
text_enum!(IssuerPurpose { Device = "device", Server = "server" });
text_enum!(ChangeKind {
    Certificate = "certificate",
    CaCertificate = "ca_certificate",
    Account = "account",
    Policy = "policy",
    Thing = "thing",
    DomainConfiguration = "domain_configuration",
    TopicRule = "topic_rule",
    AccessKey = "access_key",
    ThingGroup = "thing_group",
});
text_enum!(ThingPrincipalType { Exclusive = "EXCLUSIVE_THING", NonExclusive = "NON_EXCLUSIVE_THING" });

// ---- policies and things ------------------------------------------------------------------------

/// The name of a policy: `[\w+=,.@-]+`, 1 to 128 characters (ASCII word characters).
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PolicyName(String);

impl PolicyName {
    /// Parses a policy name.
    pub fn parse(text: &str) -> Result<Self, Error> {
        let allowed = |b: u8| b.is_ascii_alphanumeric() || b"_+=,.@-".contains(&b);
        if (1..=128).contains(&text.len()) && text.bytes().all(allowed) {
            Ok(PolicyName(text.to_owned()))
        } else {
            Err(Error::InvalidValue(format!(
                "a policy name must match [\\w+=,.@-]+ (1 to 128 characters), got {text:?}"
            )))
        }
    }

    /// The name as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for PolicyName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// The name of a thing (and of a thing type): `[a-zA-Z0-9:_-]+`, 1 to 128 characters.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ThingName(String);

impl ThingName {
    /// Parses a thing name.
    pub fn parse(text: &str) -> Result<Self, Error> {
        let allowed = |b: u8| b.is_ascii_alphanumeric() || b":_-".contains(&b);
        if (1..=128).contains(&text.len()) && text.bytes().all(allowed) {
            Ok(ThingName(text.to_owned()))
        } else {
            Err(Error::InvalidValue(format!(
                "a thing name must match [a-zA-Z0-9:_-]+ (1 to 128 characters), got {text:?}"
            )))
        }
    }

    /// The name as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for ThingName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A policy of an account: a name and up to five immutable versions, one of them the default.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Policy {
    pub account: AccountId,
    pub name: PolicyName,
    pub default_version: i64,
    /// The number the next version gets: version numbers are never reused.
    pub next_version: i64,
    pub generation_id: String,
    pub created_at: OffsetDateTime,
    pub last_modified: OffsetDateTime,
}

/// One version of a policy: its document, as the caller wrote it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PolicyVersion {
    pub account: AccountId,
    pub policy_name: PolicyName,
    pub version: i64,
    pub document: String,
    pub created_at: OffsetDateTime,
}

/// A thing of an account: the registry entry of a device.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Thing {
    pub account: AccountId,
    pub name: ThingName,
    /// The thingId, a UUID.
    pub id: String,
    pub type_name: Option<ThingName>,
    pub attributes: BTreeMap<String, String>,
    /// Starts at 1 and grows by one with every update.
    pub version: i64,
    pub created_at: OffsetDateTime,
}

/// How a principal is attached to a thing.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ThingPrincipalType {
    /// The thing is the only thing the principal is attached to, and stays so.
    Exclusive,
    /// The principal may be attached to other things too.
    NonExclusive,
}

/// A certificate attached to a thing.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ThingPrincipal {
    pub account: AccountId,
    pub thing_name: ThingName,
    pub certificate_id: CertificateId,
    pub principal_type: ThingPrincipalType,
    pub attached_at: OffsetDateTime,
}

/// Which things a listing returns.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ThingFilter {
    pub type_name: Option<ThingName>,
    pub attribute: Option<AttributeFilter>,
}

/// A condition on one attribute of a thing.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum AttributeFilter {
    /// The thing has the attribute.
    Present { name: String },
    /// The attribute has exactly this value.
    Equals { name: String, value: String },
    /// The attribute's value starts with this prefix.
    StartsWith { name: String, prefix: String },
}

/// One page of a listing ordered by a text key (a name or an ID), ascending.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KeyPageRequest {
    pub limit: u32,
    /// The page starts strictly after this key.
    pub after: Option<String>,
}

/// A page of a listing ordered by a text key, and the key after which the next one starts.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KeyPage<T> {
    pub items: Vec<T>,
    pub next: Option<String>,
}

/// A server certificate imported through the ACM-compatible API: a leaf, its chain and its
/// private key, sealed like the CA keys.
#[derive(Clone, PartialEq, Eq)]
pub struct ServerCertificate {
    pub account: AccountId,
    /// The identifier in the ARN (`arn:aws:acm:<region>:<account>:certificate/<id>`).
    pub id: String,
    pub certificate_pem: String,
    /// The intermediates (PEM), leaf first order excluded.
    pub chain_pem: Option<String>,
    /// The PKCS#8 private key sealed with `certfleet_pki::sealed`.
    pub sealed_key: Vec<u8>,
    /// SHA-256 of the leaf's DER, hex.
    pub fingerprint: String,
    /// The leaf's first DNS name (or common name).
    pub domain_name: String,
    /// ACM's spelling: `EC_prime256v1`, `RSA_2048`, ...
    pub key_algorithm: String,
    pub not_before: OffsetDateTime,
    pub not_after: OffsetDateTime,
    pub imported_at: OffsetDateTime,
}

impl fmt::Debug for ServerCertificate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ServerCertificate")
            .field("account", &self.account)
            .field("id", &self.id)
            .field("fingerprint", &self.fingerprint)
            .finish_non_exhaustive()
    }
}

/// Whether a domain configuration accepts connections.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DomainStatus {
    Enabled,
    Disabled,
}

text_enum!(DomainStatus { Enabled = "ENABLED", Disabled = "DISABLED" });

/// A domain configuration: a domain name routed by SNI to an account, with its server chains
/// and TLS policy. `current_chain` and `next_chain` list server certificate IDs (an ECDSA and an
/// RSA leaf may serve side by side); `serving_next` says which one handshakes get.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DomainConfiguration {
    pub account: AccountId,
    pub name: String,
    /// The random suffix of the ARN (empty for reserved configurations).
    pub arn_id: String,
    pub domain_name: String,
    /// `ENDPOINT`, `AWS_MANAGED` or `CUSTOMER_MANAGED`.
    pub domain_type: String,
    pub service_type: String,
    pub status: DomainStatus,
    pub security_policy: String,
    pub authentication_type: Option<String>,
    pub application_protocol: Option<String>,
    pub current_chain: Vec<String>,
    pub next_chain: Vec<String>,
    pub serving_next: bool,
    /// The migration in progress, as the services wrote it (opaque here).
    pub migration: Option<String>,
    pub last_status_change: OffsetDateTime,
    pub created_at: OffsetDateTime,
    pub last_modified: OffsetDateTime,
}

/// What a test endpoint saw of one client: the TLS handshake and the CONNECT it refused.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EndpointProbe {
    pub seq: i64,
    pub account: AccountId,
    pub configuration: String,
    pub peer: String,
    pub server_name: Option<String>,
    pub client_id: Option<String>,
    pub client_certificate_id: Option<String>,
    pub tls_version: Option<String>,
    pub cipher_suite: Option<String>,
    /// `handshake_failed`, `connect_refused`, `no_connect`.
    pub outcome: String,
    pub detail: String,
    pub at: OffsetDateTime,
}
