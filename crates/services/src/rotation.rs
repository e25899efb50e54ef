//! Certificate rotation, the server side of the agent's protocol (`docs/rotation.md`).
//!
//! A campaign (from an audit's DEVICE_CERTIFICATE_EXPIRING_CHECK findings, or an operator's
//! list) holds one rotation per (expiring certificate, client ID). Each rotation is a persistent
//! state machine: every step is one registry transaction that reads the rotation (locked), checks
//! the message against its state, and writes the next state together with its effects
//! (certificate issued and attached, old certificate retired, new one withdrawn). The messages to
//! publish are returned, never sent from here: the caller publishes them after the commit, and the
//! [`Services::sweep_rotations`] deadline scan publishes again whatever is still pending, which is
//! why a crash between a commit and a publish loses nothing (the device side is idempotent).
//!
//! Duplicates and reordering are decisions, not errors: a message that does not fit the state is
//! ignored and logged with its reason ([`Ignored`]), and the caller gets no message to publish.
//!
//! A rotation is bound to certificates, never to a client ID alone: `csr_res` and `crt_err`
//! count only from a session authenticated with the rotation's old certificate, `crt_ack` only
//! from one authenticated with the certificate it issued. The issued certificate's subject is the
//! old certificate's (the campaign's [`SubjectRule`] says whether a CSR asking for another one is
//! refused), and a device's `crt_err` is decided on its `code` ([`DeviceErrorCode`]), never on
//! its text.

use std::collections::BTreeMap;

use certfleet_pki::{CertificateId, Csr};
use certfleet_registry::{
    self as registry, AccountId, AuditFindingFilter, AuditResourceId, CertificateMode, CertificateStatus,
    DeviceCertificate, KeyPageRequest, Rotation, RotationCampaign, RotationFilter, RotationSource, RotationState,
    SubjectRule, ThingPrincipal, Tx,
};
use time::{Duration, OffsetDateTime};

use crate::ids::uuid_v4;
use crate::policies::certificate_changed;
use crate::{Caller, Error, Services};

/// The audit check whose findings start rotations.
pub const EXPIRING_CHECK: &str = "DEVICE_CERTIFICATE_EXPIRING_CHECK";

/// Settings of the rotation service.
#[derive(Clone, Debug)]
pub struct RotationConfig {
    /// How long to wait for the device's answer to `csr_req` or `crt_req` before sending it again.
    pub response_timeout: Duration,
    /// How many times `csr_req` (and then `crt_req`) is sent before the rotation fails as timed out.
    pub max_attempts: i64,
    /// Accept a CSR for the old certificate's key (not recommended: a rotation should replace
    /// the key too).
    pub danger_allow_key_reuse: bool,
}

impl Default for RotationConfig {
    fn default() -> Self {
        RotationConfig { response_timeout: Duration::minutes(10), max_attempts: 5, danger_allow_key_reuse: false }
    }
}

/// The device messages the service reads (after `management/topic/{clientId}/`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DeviceTopic {
    /// `{"CSR": "<PEM>"}`.
    CsrRes,
    /// `{"certificateId": "<id>"}` (or `{}`), from the new certificate's session.
    CrtAck,
    /// `{"error": "<reason>"}`, from the old certificate's session.
    CrtErr,
}

impl DeviceTopic {
    /// The topic's last level: `csr_res`, `crt_ack` or `crt_err`.
    pub fn parse(suffix: &str) -> Option<Self> {
        match suffix {
            "csr_res" => Some(DeviceTopic::CsrRes),
            "crt_ack" => Some(DeviceTopic::CrtAck),
            "crt_err" => Some(DeviceTopic::CrtErr),
            _ => None,
        }
    }

    /// The topic's last level.
    pub fn as_str(self) -> &'static str {
        match self {
            DeviceTopic::CsrRes => "csr_res",
            DeviceTopic::CrtAck => "crt_ack",
            DeviceTopic::CrtErr => "crt_err",
        }
    }
}

/// The `code` of a device's `crt_err` (`{"error": "<text>", "code": "<code>"}`): what went
/// wrong, machine-readable. The text is for humans and never decides anything. The agent's
/// `ErrorCode` has the same names (`crates/agent/src/rotation.rs`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DeviceErrorCode {
    /// A `crt_req` came while the device had no rotation under way (no key made).
    NoRotationInProgress,
    /// A `crt_req` came while another certificate was installed and pending on the device.
    AnotherCertificatePending,
    /// The `crt_req` payload is not `{"certificatePem": ...}`.
    MalformedRequest,
    /// The offered certificate does not parse.
    CertificateUnparsable,
    /// The `crt_req`'s `certificateId` is not the offered certificate's ID.
    IdMismatch,
    /// The offered certificate is not for the device's new key.
    KeyMismatch,
    /// The offered certificate is expired or not yet valid.
    Expired,
    /// The offered certificate does not chain to the device's trusted CAs.
    ChainInvalid,
    /// The device's new key does not load.
    KeyUnavailable,
    /// The new certificate and key do not load.
    CredentialsUnusable,
    /// The new certificate was refused at CONNECT.
    ConnectRefused,
    /// The new certificate got no answer while the old one connects.
    Unreachable,
}

impl DeviceErrorCode {
    /// Every code.
    pub const ALL: [DeviceErrorCode; 12] = [
        DeviceErrorCode::NoRotationInProgress,
        DeviceErrorCode::AnotherCertificatePending,
        DeviceErrorCode::MalformedRequest,
        DeviceErrorCode::CertificateUnparsable,
        DeviceErrorCode::IdMismatch,
        DeviceErrorCode::KeyMismatch,
        DeviceErrorCode::Expired,
        DeviceErrorCode::ChainInvalid,
        DeviceErrorCode::KeyUnavailable,
        DeviceErrorCode::CredentialsUnusable,
        DeviceErrorCode::ConnectRefused,
        DeviceErrorCode::Unreachable,
    ];

    /// The code as sent.
    pub fn as_str(self) -> &'static str {
        match self {
            DeviceErrorCode::NoRotationInProgress => "no-rotation-in-progress",
            DeviceErrorCode::AnotherCertificatePending => "another-certificate-pending",
            DeviceErrorCode::MalformedRequest => "malformed-request",
            DeviceErrorCode::CertificateUnparsable => "certificate-unparsable",
            DeviceErrorCode::IdMismatch => "id-mismatch",
            DeviceErrorCode::KeyMismatch => "key-mismatch",
            DeviceErrorCode::Expired => "expired",
            DeviceErrorCode::ChainInvalid => "chain-invalid",
            DeviceErrorCode::KeyUnavailable => "key-unavailable",
            DeviceErrorCode::CredentialsUnusable => "credentials-unusable",
            DeviceErrorCode::ConnectRefused => "connect-refused",
            DeviceErrorCode::Unreachable => "unreachable",
        }
    }

    /// The code of a sent name (`None`: unknown).
    pub fn parse(text: &str) -> Option<Self> {
        DeviceErrorCode::ALL.into_iter().find(|code| code.as_str() == text)
    }
}

/// Why a device message changed nothing: logged once with the message, and answered with
/// nothing (the device, or whoever sent it, learns nothing).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Ignored {
    /// `csr_res` or `crt_err`: no open rotation of this client ID replaces the certificate the
    /// publishing session authenticated with.
    NotFromRotatedCertificate,
    /// `crt_ack`: no rotation of this client ID issued the certificate the publishing session
    /// authenticated with.
    NotFromIssuedCertificate,
    /// `csr_res` without a `CSR` string.
    NoCsr,
    /// `csr_res` that does not parse, after a usable CSR was received.
    UnusableCsrAfterUsable,
    /// `csr_res` for another key than the one already received.
    DifferentKey,
    /// The new certificate was acknowledged already.
    AlreadyAcknowledged,
    /// `crt_ack` while no certificate waits for one (reordered, or late).
    NothingToAcknowledge,
    /// `crt_err` naming a certificate this rotation did not issue (an earlier one's report).
    AboutAnotherCertificate,
    /// `crt_err` whose code is about an offered certificate while this rotation offered none
    /// yet (a late answer to an earlier `crt_req`).
    NothingOffered,
    /// The rotation moved on meanwhile (another node, a concurrent duplicate).
    MovedOn,
    /// The issued certificate is no longer stored.
    NewCertificateGone,
}

impl Ignored {
    /// The reason, for logs.
    pub fn as_str(self) -> &'static str {
        match self {
            Ignored::NotFromRotatedCertificate => "not from a session of the certificate being rotated",
            Ignored::NotFromIssuedCertificate => "not from a session of the certificate this rotation issued",
            Ignored::NoCsr => "no CSR member in the payload",
            Ignored::UnusableCsrAfterUsable => "an unusable CSR after a usable one was received",
            Ignored::DifferentKey => "a CSR for a different key than the one already received",
            Ignored::AlreadyAcknowledged => "the new certificate was acknowledged already",
            Ignored::NothingToAcknowledge => "no certificate waits for an acknowledgement (late or reordered)",
            Ignored::AboutAnotherCertificate => "the error is about a certificate this rotation did not issue",
            Ignored::NothingOffered => "the error cannot be about this rotation: no certificate offered yet",
            Ignored::MovedOn => "the rotation moved on meanwhile",
            Ignored::NewCertificateGone => "the new certificate is gone",
        }
    }
}

/// What a device message did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DeviceMessageOutcome {
    /// A step was taken (committed): publish and report what it asks for.
    Applied(RotationEffects),
    /// Nothing changed, for this reason.
    Ignored(Ignored),
}

impl DeviceMessageOutcome {
    /// What to publish and report (nothing when ignored).
    pub fn into_effects(self) -> RotationEffects {
        match self {
            DeviceMessageOutcome::Applied(effects) => effects,
            DeviceMessageOutcome::Ignored(_) => RotationEffects::default(),
        }
    }
}

/// What a `crt_err` does to an open rotation in `state`: `names_another_certificate` when its
/// `certificateId` is not the certificate this rotation issued (or it issued none), `code` as
/// sent (`None`: missing or unknown, from an older agent or another device: handled as a
/// failure, as before codes existed). The table is in `docs/rotation.md`.
fn decide_device_error(
    state: RotationState,
    code: Option<DeviceErrorCode>,
    names_another_certificate: bool,
) -> Result<(), Ignored> {
    if names_another_certificate {
        return Err(Ignored::AboutAnotherCertificate);
    }
    match state {
        // No certificate offered yet: a report about a certificate is about an earlier
        // rotation's. Losing the key, or a report without a (known) code, still fails it.
        RotationState::Requested | RotationState::CsrReceived => match code {
            Some(DeviceErrorCode::KeyUnavailable) | None => Ok(()),
            Some(
                DeviceErrorCode::NoRotationInProgress
                | DeviceErrorCode::AnotherCertificatePending
                | DeviceErrorCode::MalformedRequest
                | DeviceErrorCode::CertificateUnparsable
                | DeviceErrorCode::IdMismatch
                | DeviceErrorCode::KeyMismatch
                | DeviceErrorCode::Expired
                | DeviceErrorCode::ChainInvalid
                | DeviceErrorCode::CredentialsUnusable
                | DeviceErrorCode::ConnectRefused
                | DeviceErrorCode::Unreachable,
            ) => Err(Ignored::NothingOffered),
        },
        // A certificate was offered and the device reports it cannot use it, whatever the code:
        // failing withdraws the new certificate and leaves the old one ACTIVE.
        RotationState::Issued => Ok(()),
        RotationState::Acknowledged => Err(Ignored::AlreadyAcknowledged),
        RotationState::Retired | RotationState::Failed => Err(Ignored::MovedOn),
    }
}

/// A message for a device, to publish at QoS 1 in `account`'s topic space.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OutgoingMessage {
    pub account: AccountId,
    pub topic: String,
    /// JSON text.
    pub payload: String,
}

/// A rotation that failed and should be brought to the support team's attention.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RotationAlert {
    pub rotation: Rotation,
}

/// What a step decided: messages to publish (after the commit) and failures to report.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RotationEffects {
    pub publish: Vec<OutgoingMessage>,
    pub alerts: Vec<RotationAlert>,
}

impl RotationEffects {
    fn extend(&mut self, other: RotationEffects) {
        self.publish.extend(other.publish);
        self.alerts.extend(other.alerts);
    }
}

/// A campaign and how many of its rotations are in each state.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CampaignSummary {
    pub campaign: RotationCampaign,
    pub counts: BTreeMap<RotationState, i64>,
}

/// The topic of a message to a device.
pub fn device_topic(client_id: &str, suffix: &str) -> String {
    format!("management/topic/{client_id}/{suffix}")
}

fn csr_req(rotation: &Rotation) -> OutgoingMessage {
    OutgoingMessage {
        account: rotation.account.clone(),
        topic: device_topic(&rotation.client_id, "csr_req"),
        payload: "{}".into(),
    }
}

fn crt_req(rotation: &Rotation, certificate: &DeviceCertificate) -> OutgoingMessage {
    OutgoingMessage {
        account: rotation.account.clone(),
        topic: device_topic(&rotation.client_id, "crt_req"),
        payload: serde_json::json!({ "certificatePem": certificate.pem, "certificateId": certificate.id.as_str() })
            .to_string(),
    }
}

/// What an issued certificate is named: the old certificate's subject and subjectAltName.
struct IssuedSubject {
    subject_der: Vec<u8>,
    alt_names: Option<certfleet_pki::SubjectAltNames>,
}

/// What step 1 of a `csr_res` (pinning the key) decided.
enum Pin {
    Ignored(Ignored),
    /// The rotation failed (its effects).
    Failed(RotationEffects),
    /// The key is pinned (now or before): the rotation and the names to issue.
    Pinned {
        rotation: Box<Rotation>,
        subject: Box<IssuedSubject>,
    },
}

impl Services {
    /// Starts a manual campaign: one rotation per certificate and client ID that used it (see
    /// [`Services::rotation_from_audit`] for how client IDs are found), issuing subjects by
    /// `subject_rule`. The first `csr_req` goes out with the next [`Services::sweep_rotations`].
    pub fn start_rotation(
        &self,
        caller: &Caller,
        certificate_ids: &[CertificateId],
        source: RotationSource,
        subject_rule: SubjectRule,
    ) -> Result<CampaignSummary, Error> {
        if certificate_ids.is_empty() {
            return Err(Error::InvalidRequest("give at least one certificate ID".into()));
        }
        let campaign = self.new_campaign(&caller.account, source, None, subject_rule)?;
        registry::write(self.store(), |tx| {
            tx.lock_account(&caller.account)?;
            for id in certificate_ids {
                let certificate = tx
                    .get_certificate(&caller.account, id)?
                    .ok_or_else(|| Error::NotFound(format!("no certificate {id} in this account")))?;
                if certificate.status != CertificateStatus::Active {
                    return Err(Error::CertificateState(format!("certificate {id} is not ACTIVE")));
                }
            }
            tx.insert_rotation_campaign(&campaign)?;
            for id in certificate_ids {
                self.add_rotations(tx, &campaign, id)?;
            }
            Ok(())
        })?;
        tracing::info!(account = %caller.account, campaign = %campaign.id, certificates = certificate_ids.len(), "rotation campaign started");
        self.describe_rotation_campaign(caller, &campaign.id)
    }

    /// Starts (once per task) the campaign of an audit task: its DEVICE_CERTIFICATE_EXPIRING_CHECK
    /// non-compliant certificates, each with the client IDs of its latest connection and of its
    /// open connections. A certificate never seen connected gets a failed rotation ("no client id
    /// known"). Returns `None` when the task found nothing to rotate.
    pub fn rotation_from_audit(&self, account: &AccountId, task_id: &str) -> Result<Option<CampaignSummary>, Error> {
        let caller = Caller { account: account.clone() };
        if let Some(existing) = registry::read(self.store(), |tx| tx.rotation_campaign_of_task(account, task_id))? {
            return self.describe_rotation_campaign(&caller, &existing.id).map(Some);
        }
        let filter = AuditFindingFilter {
            task_id: Some(task_id.to_owned()),
            check_name: Some(EXPIRING_CHECK.to_owned()),
            ..Default::default()
        };
        let mut certificates = Vec::new();
        let mut after = None;
        loop {
            let page = self.list_audit_findings(&caller, &filter, after.as_ref(), 250)?;
            for finding in page.items {
                if let AuditResourceId::DeviceCertificate(id) = finding.resource.id {
                    certificates.push(id);
                }
            }
            match page.next {
                Some(next) => after = Some(next),
                None => break,
            }
        }
        certificates.sort();
        certificates.dedup();
        if certificates.is_empty() {
            return Ok(None);
        }
        let campaign = self.new_campaign(account, RotationSource::Audit, Some(task_id), SubjectRule::KeepOld)?;
        registry::write(self.store(), |tx| {
            tx.lock_account(account)?;
            tx.insert_rotation_campaign(&campaign)?;
            for id in &certificates {
                // Deleted or deactivated since the audit ran: nothing to rotate.
                let current = tx.get_certificate(account, id)?;
                if current.is_some_and(|certificate| certificate.status == CertificateStatus::Active) {
                    self.add_rotations(tx, &campaign, id)?;
                }
            }
            Ok::<_, Error>(())
        })?;
        tracing::info!(%account, campaign = %campaign.id, task = task_id, certificates = certificates.len(), "rotation campaign started from an audit");
        self.describe_rotation_campaign(&caller, &campaign.id).map(Some)
    }

    fn new_campaign(
        &self,
        account: &AccountId,
        source: RotationSource,
        audit_task_id: Option<&str>,
        subject_rule: SubjectRule,
    ) -> Result<RotationCampaign, Error> {
        Ok(RotationCampaign {
            account: account.clone(),
            id: uuid_v4()?,
            source,
            audit_task_id: audit_task_id.map(str::to_owned),
            subject_rule,
            created_at: self.now(),
        })
    }

    /// One rotation per client ID of `certificate`, due at once (the sweep sends `csr_req`).
    fn add_rotations(
        &self,
        tx: &mut Tx<'_>,
        campaign: &RotationCampaign,
        certificate: &CertificateId,
    ) -> Result<(), Error> {
        let now = self.now();
        let connections = tx.connections_since(&campaign.account, Some(certificate), OffsetDateTime::UNIX_EPOCH)?;
        let mut client_ids: Vec<String> = connections
            .iter()
            .filter(|connection| connection.disconnected_at.is_none())
            .map(|connection| connection.client_id.clone())
            .collect();
        if let Some(latest) = connections.last() {
            client_ids.push(latest.client_id.clone());
        }
        client_ids.sort();
        client_ids.dedup();
        let base = Rotation {
            account: campaign.account.clone(),
            id: String::new(),
            campaign_id: campaign.id.clone(),
            client_id: String::new(),
            old_certificate_id: certificate.clone(),
            new_certificate_id: None,
            csr_key_fingerprint: None,
            state: RotationState::Requested,
            attempts: 0,
            error: None,
            deadline: Some(now),
            created_at: now,
            updated_at: now,
        };
        if client_ids.is_empty() {
            let rotation = Rotation {
                id: uuid_v4()?,
                state: RotationState::Failed,
                error: Some("no client id known".into()),
                deadline: None,
                ..base
            };
            tx.insert_rotation(&rotation)?;
            tracing::warn!(account = %campaign.account, cert = %certificate, "rotation: no client id known");
            return Ok(());
        }
        for client_id in client_ids {
            let rotation = Rotation { id: uuid_v4()?, client_id, ..base.clone() };
            if !tx.insert_rotation(&rotation)? {
                tracing::info!(account = %campaign.account, cert = %certificate, client_id = rotation.client_id, "rotation already open: not started again");
            }
        }
        Ok(())
    }

    /// A campaign with its counts per state.
    pub fn describe_rotation_campaign(&self, caller: &Caller, id: &str) -> Result<CampaignSummary, Error> {
        registry::read(self.store(), |tx| {
            let campaign = tx
                .get_rotation_campaign(&caller.account, id)?
                .ok_or_else(|| Error::NotFound(format!("no rotation campaign {id}")))?;
            let counts = tx.rotation_campaign_counts(&caller.account, id)?;
            Ok(CampaignSummary { campaign, counts })
        })
    }

    /// The caller's rotations, by ID, at most `limit` after `after`.
    pub fn list_rotations(
        &self,
        caller: &Caller,
        filter: &RotationFilter,
        after: Option<&str>,
        limit: u32,
    ) -> Result<Vec<Rotation>, Error> {
        registry::read(self.store(), |tx| {
            tx.list_rotations(&caller.account, filter, after, limit.clamp(1, 1000)).map_err(Error::from)
        })
    }

    /// One rotation.
    pub fn describe_rotation(&self, caller: &Caller, id: &str) -> Result<Rotation, Error> {
        registry::read(self.store(), |tx| tx.get_rotation(&caller.account, id))?
            .ok_or_else(|| Error::NotFound(format!("no rotation {id}")))
    }

    /// Puts a failed rotation back to `requested` (due at once: the sweep sends `csr_req`),
    /// when its old certificate is still ACTIVE and no other rotation of it is open.
    pub fn retry_rotation(&self, caller: &Caller, id: &str) -> Result<Rotation, Error> {
        let now = self.now();
        let rotation = registry::write(self.store(), |tx| {
            tx.lock_account(&caller.account)?;
            let mut rotation =
                tx.lock_rotation(&caller.account, id)?.ok_or_else(|| Error::NotFound(format!("no rotation {id}")))?;
            if rotation.state != RotationState::Failed {
                return Err(Error::InvalidRequest(format!(
                    "only a failed rotation can be retried (this one is {})",
                    rotation.state.as_str()
                )));
            }
            if rotation.client_id.is_empty() {
                return Err(Error::InvalidRequest("no client id is known for this certificate".into()));
            }
            let old = tx.get_certificate(&caller.account, &rotation.old_certificate_id)?;
            if old.is_none_or(|old| old.status != CertificateStatus::Active) {
                return Err(Error::CertificateState("the old certificate is no longer ACTIVE".into()));
            }
            let others = tx.open_rotations_of_client(&caller.account, &rotation.client_id)?;
            if others.iter().any(|other| other.old_certificate_id == rotation.old_certificate_id) {
                return Err(Error::InvalidRequest("another rotation of this certificate is open".into()));
            }
            rotation.state = RotationState::Requested;
            rotation.new_certificate_id = None;
            rotation.csr_key_fingerprint = None;
            rotation.attempts = 0;
            rotation.error = None;
            rotation.deadline = Some(now);
            rotation.updated_at = now;
            tx.update_rotation(&rotation)?;
            Ok(rotation)
        })?;
        tracing::info!(account = %caller.account, rotation = id, "rotation retried");
        Ok(rotation)
    }

    /// A device's `csr_res`, `crt_ack` or `crt_err`: the seam the rules engine's system rule
    /// (`SELECT clientid() as clientid, * FROM 'management/topic/+/csr_res'`, and the same for
    /// `crt_ack` and `crt_err`) calls, with the publishing session's client ID and the
    /// certificate that session authenticated with (`principal`; never one named in the payload
    /// or the topic). Returns what to publish (after this call returned, i.e. after the commit)
    /// and failures to report, or why nothing changed (logged here, once).
    pub fn handle_device_message(
        &self,
        account: &AccountId,
        client_id: &str,
        principal: &CertificateId,
        topic: DeviceTopic,
        payload: &serde_json::Value,
    ) -> Result<DeviceMessageOutcome, Error> {
        let outcome = match topic {
            DeviceTopic::CsrRes => self.on_csr(account, client_id, principal, payload)?,
            DeviceTopic::CrtAck => self.on_ack(account, client_id, principal)?,
            DeviceTopic::CrtErr => self.on_error(account, client_id, principal, payload)?,
        };
        if let DeviceMessageOutcome::Ignored(why) = outcome {
            tracing::info!(%account, client_id, cert = %principal, topic = topic.as_str(), why = why.as_str(), "rotation message ignored");
        }
        Ok(outcome)
    }

    fn on_csr(
        &self,
        account: &AccountId,
        client_id: &str,
        principal: &CertificateId,
        payload: &serde_json::Value,
    ) -> Result<DeviceMessageOutcome, Error> {
        let Some(pem) = payload.get("CSR").and_then(serde_json::Value::as_str) else {
            return Ok(DeviceMessageOutcome::Ignored(Ignored::NoCsr));
        };
        let now = self.now();
        let config = &self.config().rotation;
        let csr = Csr::from_pem(pem);
        let fingerprint = csr.as_ref().ok().map(|csr| CertificateId::of_der(csr.public_key().spki_der()).to_string());
        // Step 1: pin the key (requested -> csr_received), or find the rotation already past it.
        let pinned = registry::write(self.store(), |tx| {
            tx.lock_account(account)?;
            let Some(mut rotation) = rotation_of_old_certificate(tx, account, client_id, principal)? else {
                return Ok(Pin::Ignored(Ignored::NotFromRotatedCertificate));
            };
            if rotation.state == RotationState::Acknowledged {
                return Ok(Pin::Ignored(Ignored::AlreadyAcknowledged));
            }
            let csr = match &csr {
                Ok(csr) => csr,
                Err(_) if rotation.csr_key_fingerprint.is_some() => {
                    return Ok(Pin::Ignored(Ignored::UnusableCsrAfterUsable));
                }
                Err(error) => {
                    return Ok(Pin::Failed(self.fail(tx, &mut rotation, format!("refused CSR: {error}"), now)?));
                }
            };
            let Some(old) = tx.get_certificate(account, &rotation.old_certificate_id)? else {
                return Ok(Pin::Failed(self.fail(tx, &mut rotation, "the old certificate is gone".into(), now)?));
            };
            let old = certfleet_pki::Certificate::from_pem(&old.pem)
                .map_err(|error| Error::Internal(format!("a stored certificate does not parse: {error}")))?;
            let subject = Box::new(IssuedSubject {
                subject_der: old.subject_der().to_vec(),
                alt_names: old.subject_alt_names().cloned(),
            });
            let fingerprint = fingerprint.clone().unwrap_or_default();
            if let Some(pinned) = &rotation.csr_key_fingerprint {
                if pinned != &fingerprint {
                    return Ok(Pin::Ignored(Ignored::DifferentKey));
                }
                return Ok(Pin::Pinned { rotation: Box::new(rotation), subject });
            }
            if old.public_key().spki_der() == csr.public_key().spki_der() && !config.danger_allow_key_reuse {
                let error = "refused CSR: the key is the old certificate's".to_owned();
                return Ok(Pin::Failed(self.fail(tx, &mut rotation, error, now)?));
            }
            if csr.subject_der() != subject.subject_der.as_slice() {
                let rule = tx
                    .get_rotation_campaign(account, &rotation.campaign_id)?
                    .map_or(SubjectRule::KeepOld, |campaign| campaign.subject_rule);
                match rule {
                    SubjectRule::KeepOld => {
                        tracing::info!(%account, client_id, rotation = rotation.id, old = %rotation.old_certificate_id, "rotation CSR asks for another subject; the old certificate's is issued");
                    }
                    SubjectRule::RequireCsrMatch => {
                        let error = "refused CSR: csr-subject-mismatch (not the old certificate's subject)".to_owned();
                        return Ok(Pin::Failed(self.fail(tx, &mut rotation, error, now)?));
                    }
                }
            }
            rotation.csr_key_fingerprint = Some(fingerprint);
            rotation.state = RotationState::CsrReceived;
            rotation.updated_at = now;
            tx.update_rotation(&rotation)?;
            Ok::<_, Error>(Pin::Pinned { rotation: Box::new(rotation), subject })
        })?;
        let (rotation, subject) = match pinned {
            Pin::Ignored(why) => return Ok(DeviceMessageOutcome::Ignored(why)),
            Pin::Failed(effects) => return Ok(DeviceMessageOutcome::Applied(effects)),
            Pin::Pinned { rotation, subject } => (*rotation, subject),
        };
        if rotation.state == RotationState::Issued {
            // A duplicate CSR for the same key: send the same certificate again.
            return registry::read(self.store(), |tx| {
                let Some(new_id) = &rotation.new_certificate_id else {
                    return Ok(DeviceMessageOutcome::Ignored(Ignored::NewCertificateGone));
                };
                Ok(match tx.get_certificate(account, new_id)? {
                    Some(certificate) => DeviceMessageOutcome::Applied(RotationEffects {
                        publish: vec![crt_req(&rotation, &certificate)],
                        alerts: Vec::new(),
                    }),
                    None => DeviceMessageOutcome::Ignored(Ignored::NewCertificateGone),
                })
            });
        }
        let Ok(csr) = csr else { return Ok(DeviceMessageOutcome::Ignored(Ignored::UnusableCsrAfterUsable)) };
        // Step 2: issue (outside the transaction: signing is slow) with the old certificate's
        // subject, never the CSR's; then store, attach and move to issued in one transaction.
        let issued = self
            .device_issuer()?
            .issue_for_subject(
                csr.public_key(),
                &subject.subject_der,
                subject.alt_names.as_ref(),
                self.config().device_certificate_validity,
                now,
            )
            .map_err(|error| Error::Internal(format!("issuing: {error}")))?;
        let record = DeviceCertificate::registered(
            account.clone(),
            &issued,
            None,
            CertificateStatus::Active,
            CertificateMode::Default,
            uuid_v4()?,
            now,
        );
        registry::write(self.store(), |tx| {
            tx.lock_account(account)?;
            let Some(mut rotation) = tx.lock_rotation(account, &rotation.id)? else {
                return Ok(DeviceMessageOutcome::Ignored(Ignored::MovedOn));
            };
            match rotation.state {
                RotationState::CsrReceived => {}
                RotationState::Issued => {
                    // Another node or a concurrent duplicate issued first: send its certificate.
                    let Some(new_id) = &rotation.new_certificate_id else {
                        return Ok(DeviceMessageOutcome::Ignored(Ignored::NewCertificateGone));
                    };
                    return Ok(match tx.get_certificate(account, new_id)? {
                        Some(certificate) => DeviceMessageOutcome::Applied(RotationEffects {
                            publish: vec![crt_req(&rotation, &certificate)],
                            alerts: Vec::new(),
                        }),
                        None => DeviceMessageOutcome::Ignored(Ignored::NewCertificateGone),
                    });
                }
                RotationState::Requested
                | RotationState::Acknowledged
                | RotationState::Retired
                | RotationState::Failed => return Ok(DeviceMessageOutcome::Ignored(Ignored::MovedOn)),
            }
            let Some(old) = tx.get_certificate(account, &rotation.old_certificate_id)? else {
                let effects = self.fail(tx, &mut rotation, "the old certificate is gone".into(), now)?;
                return Ok(DeviceMessageOutcome::Applied(effects));
            };
            if tx.get_certificate(account, &record.id)?.is_some() {
                return Ok(DeviceMessageOutcome::Ignored(Ignored::MovedOn));
            }
            tx.insert_certificate(&record)?;
            let mut page = KeyPageRequest { limit: 250, after: None };
            loop {
                let policies = tx.certificate_policies(account, &old.id, &page)?;
                for policy in &policies.items {
                    tx.attach_policy(account, &policy.name, &record.id, now)?;
                }
                match policies.next {
                    Some(next) => page.after = Some(next),
                    None => break,
                }
            }
            for thing in tx.certificate_things(account, &old.id)? {
                tx.put_thing_principal(&ThingPrincipal {
                    certificate_id: record.id.clone(),
                    attached_at: now,
                    ..thing
                })?;
            }
            certificate_changed(tx, account, &record.id, now)?;
            rotation.new_certificate_id = Some(record.id.clone());
            rotation.state = RotationState::Issued;
            rotation.attempts = 1;
            rotation.deadline = Some(now + config.response_timeout);
            rotation.updated_at = now;
            tx.update_rotation(&rotation)?;
            tracing::info!(%account, client_id, rotation = rotation.id, old = %old.id, new = %record.id, "rotation: certificate issued");
            Ok(DeviceMessageOutcome::Applied(RotationEffects {
                publish: vec![crt_req(&rotation, &record)],
                alerts: Vec::new(),
            }))
        })
    }

    fn on_ack(
        &self,
        account: &AccountId,
        client_id: &str,
        principal: &CertificateId,
    ) -> Result<DeviceMessageOutcome, Error> {
        let now = self.now();
        let acknowledged = registry::write(self.store(), |tx| {
            tx.lock_account(account)?;
            // Bound to the issued certificate: only its own session can acknowledge it.
            let Some(mut rotation) = tx.rotation_of_new_certificate(account, client_id, principal)? else {
                return Ok(Err(Ignored::NotFromIssuedCertificate));
            };
            match rotation.state {
                RotationState::Issued => {}
                RotationState::Acknowledged => return Ok(Ok(rotation)),
                RotationState::Requested
                | RotationState::CsrReceived
                | RotationState::Retired
                | RotationState::Failed => return Ok(Err(Ignored::NothingToAcknowledge)),
            }
            rotation.state = RotationState::Acknowledged;
            rotation.attempts = 0;
            rotation.deadline = Some(now + self.config().rotation.response_timeout);
            rotation.updated_at = now;
            tx.update_rotation(&rotation)?;
            Ok::<_, Error>(Ok(rotation))
        })?;
        let rotation = match acknowledged {
            Err(why) => return Ok(DeviceMessageOutcome::Ignored(why)),
            Ok(rotation) => rotation,
        };
        self.retire(&rotation.account, &rotation.id)?;
        Ok(DeviceMessageOutcome::Applied(RotationEffects::default()))
    }

    /// acknowledged -> retired: the old certificate INACTIVE, detached and deleted, in one
    /// transaction.
    fn retire(&self, account: &AccountId, id: &str) -> Result<(), Error> {
        let now = self.now();
        let arn_of = |old: &CertificateId| self.certificate_arn(account, old);
        registry::write(self.store(), |tx| {
            tx.lock_account(account)?;
            let Some(mut rotation) = tx.lock_rotation(account, id)? else { return Ok(()) };
            if rotation.state != RotationState::Acknowledged {
                return Ok(());
            }
            let arn = arn_of(&rotation.old_certificate_id);
            retire_in(tx, &mut rotation, &arn, now)
        })?;
        tracing::info!(%account, rotation = id, "rotation: old certificate retired");
        Ok(())
    }

    fn on_error(
        &self,
        account: &AccountId,
        client_id: &str,
        principal: &CertificateId,
        payload: &serde_json::Value,
    ) -> Result<DeviceMessageOutcome, Error> {
        let sent_code = payload.get("code").and_then(serde_json::Value::as_str);
        let code = sent_code.and_then(DeviceErrorCode::parse);
        if sent_code.is_some() && code.is_none() {
            tracing::info!(%account, client_id, "rotation: crt_err with an unknown code (treated as no code)");
        }
        let named = payload.get("certificateId").and_then(serde_json::Value::as_str);
        let reason = payload.get("error").and_then(serde_json::Value::as_str).unwrap_or("(no reason given)");
        // Kept for humans in the rotation's error; bounded, as every stored text.
        let reason: String = reason.chars().take(512).collect();
        let now = self.now();
        registry::write(self.store(), |tx| {
            tx.lock_account(account)?;
            // Bound to the old certificate: only its own session can report for the rotation.
            let Some(mut rotation) = rotation_of_old_certificate(tx, account, client_id, principal)? else {
                return Ok(DeviceMessageOutcome::Ignored(Ignored::NotFromRotatedCertificate));
            };
            let names_another_certificate = named.is_some_and(|named| {
                rotation.new_certificate_id.as_ref().is_none_or(|new| !new.as_str().eq_ignore_ascii_case(named))
            });
            if let Err(why) = decide_device_error(rotation.state, code, names_another_certificate) {
                return Ok(DeviceMessageOutcome::Ignored(why));
            }
            let error = match code {
                Some(code) => format!("device reported {}: {reason}", code.as_str()),
                None => format!("device reported: {reason}"),
            };
            Ok(DeviceMessageOutcome::Applied(self.fail(tx, &mut rotation, error, now)?))
        })
    }

    /// Fails an open rotation: the new certificate (if issued) is set INACTIVE, detached and
    /// deleted; the old one is not touched.
    fn fail(
        &self,
        tx: &mut Tx<'_>,
        rotation: &mut Rotation,
        error: String,
        now: OffsetDateTime,
    ) -> Result<RotationEffects, Error> {
        if let Some(new_id) = &rotation.new_certificate_id {
            withdraw(tx, &rotation.account, new_id, &self.certificate_arn(&rotation.account, new_id), now)?;
        }
        rotation.state = RotationState::Failed;
        rotation.error = Some(error);
        rotation.deadline = None;
        rotation.updated_at = now;
        tx.update_rotation(rotation)?;
        tracing::warn!(account = %rotation.account, rotation = rotation.id, client_id = rotation.client_id, old = %rotation.old_certificate_id, error = rotation.error.as_deref().unwrap_or(""), "rotation failed; the old certificate stays ACTIVE");
        Ok(RotationEffects { publish: Vec::new(), alerts: vec![RotationAlert { rotation: rotation.clone() }] })
    }

    /// The timeout sweep: every open rotation past its deadline gets its pending message again
    /// (`csr_req` in requested and csr_received, `crt_req` in issued) until `max_attempts`,
    /// then fails as timed out; an acknowledged one is retired. Returns what to publish.
    pub fn sweep_rotations(&self, now: OffsetDateTime) -> Result<RotationEffects, Error> {
        let config = self.config().rotation.clone();
        let mut effects = RotationEffects::default();
        loop {
            let batch = registry::write(self.store(), |tx| {
                let due = tx.due_rotations(now, 200)?;
                // Lock the accounts in ID order (as every multi-account write does); the rotations
                // of an account deleted meanwhile are gone with it.
                let mut accounts: Vec<AccountId> = due.iter().map(|rotation| rotation.account.clone()).collect();
                accounts.sort();
                accounts.dedup();
                let mut present = std::collections::HashSet::new();
                for account in accounts {
                    if tx.lock_account_if_present(&account)?.is_some() {
                        present.insert(account);
                    }
                }
                let mut effects = RotationEffects::default();
                let live: Vec<Rotation> =
                    due.iter().filter(|rotation| present.contains(&rotation.account)).cloned().collect();
                for mut rotation in live.iter().cloned() {
                    let arn = self.certificate_arn(&rotation.account, &rotation.old_certificate_id);
                    if rotation.state == RotationState::Acknowledged {
                        retire_in(tx, &mut rotation, &arn, now)?;
                        continue;
                    }
                    if rotation.attempts >= config.max_attempts {
                        effects.extend(self.fail(tx, &mut rotation, "timed out".into(), now)?);
                        continue;
                    }
                    let message = match rotation.state {
                        RotationState::Issued => {
                            let certificate = match &rotation.new_certificate_id {
                                Some(id) => tx.get_certificate(&rotation.account, id)?,
                                None => None,
                            };
                            match certificate {
                                Some(certificate) => crt_req(&rotation, &certificate),
                                None => {
                                    effects.extend(self.fail(
                                        tx,
                                        &mut rotation,
                                        "the new certificate is gone".into(),
                                        now,
                                    )?);
                                    continue;
                                }
                            }
                        }
                        _ => csr_req(&rotation),
                    };
                    rotation.attempts += 1;
                    rotation.deadline = Some(now + config.response_timeout);
                    rotation.updated_at = now;
                    tx.update_rotation(&rotation)?;
                    effects.publish.push(message);
                }
                // A full page of live rotations means there may be more; a row of a deleted account
                // (left by an older version) must not keep the loop going.
                Ok::<_, Error>((if due.len() == live.len() { due.len() } else { 0 }, effects))
            })?;
            effects.extend(batch.1);
            if batch.0 < 200 {
                break;
            }
        }
        Ok(effects)
    }
}

/// The open rotation of `client_id` that replaces `old` (the certificate the publishing
/// session authenticated with), locked; at most one (a unique index). There is no fallback: a
/// message from any other certificate's session is about no rotation.
fn rotation_of_old_certificate(
    tx: &mut Tx<'_>,
    account: &AccountId,
    client_id: &str,
    old: &CertificateId,
) -> Result<Option<Rotation>, Error> {
    let open = tx.open_rotations_of_client(account, client_id)?;
    Ok(open.into_iter().find(|rotation| &rotation.old_certificate_id == old))
}

/// Retires the old certificate of an acknowledged rotation and closes it.
fn retire_in(tx: &mut Tx<'_>, rotation: &mut Rotation, old_arn: &str, now: OffsetDateTime) -> Result<(), Error> {
    withdraw(tx, &rotation.account, &rotation.old_certificate_id, old_arn, now)?;
    rotation.state = RotationState::Retired;
    rotation.deadline = None;
    rotation.updated_at = now;
    tx.update_rotation(rotation)?;
    Ok(())
}

/// A certificate set INACTIVE, detached from its policies and things, and deleted (if it still
/// exists).
fn withdraw(
    tx: &mut Tx<'_>,
    account: &AccountId,
    id: &CertificateId,
    arn: &str,
    now: OffsetDateTime,
) -> Result<(), Error> {
    let Some(mut certificate) = tx.get_certificate(account, id)? else { return Ok(()) };
    if certificate.status == CertificateStatus::Active {
        certificate.status = CertificateStatus::Inactive;
        certificate.customer_version += 1;
        certificate.generation_id = uuid_v4()?;
        certificate.last_modified = now;
        tx.update_certificate(&certificate)?;
    }
    tx.detach_all_policies(account, id)?;
    for thing in tx.certificate_things(account, id)? {
        tx.delete_thing_principal(account, &thing.thing_name, id)?;
    }
    tx.delete_certificate(account, id)?;
    tx.delete_tags(arn)?;
    certificate_changed(tx, account, id, now)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn device_error_decisions() {
        use DeviceErrorCode::*;
        use RotationState::*;
        let check =
            |state: RotationState, code: Option<DeviceErrorCode>, another: bool, expected: Result<(), Ignored>| {
                assert_eq!(decide_device_error(state, code, another), expected, "{state:?} {code:?} another={another}");
            };
        // (state, code, names another certificate, decision)
        check(Requested, Some(NoRotationInProgress), false, Err(Ignored::NothingOffered));
        check(CsrReceived, Some(NoRotationInProgress), false, Err(Ignored::NothingOffered));
        check(Issued, Some(NoRotationInProgress), false, Ok(()));
        check(Issued, Some(NoRotationInProgress), true, Err(Ignored::AboutAnotherCertificate));
        check(Requested, Some(ChainInvalid), false, Err(Ignored::NothingOffered));
        check(Issued, Some(ChainInvalid), false, Ok(()));
        check(Issued, Some(KeyMismatch), true, Err(Ignored::AboutAnotherCertificate));
        check(Requested, Some(KeyUnavailable), false, Ok(()));
        check(CsrReceived, Some(KeyUnavailable), false, Ok(()));
        check(Requested, None, false, Ok(()));
        check(CsrReceived, None, false, Ok(()));
        check(Issued, None, false, Ok(()));
        check(Issued, None, true, Err(Ignored::AboutAnotherCertificate));
        check(Acknowledged, Some(ChainInvalid), false, Err(Ignored::AlreadyAcknowledged));
        check(Acknowledged, None, false, Err(Ignored::AlreadyAcknowledged));
        check(Retired, None, false, Err(Ignored::MovedOn));
        check(Failed, None, false, Err(Ignored::MovedOn));
        for code in DeviceErrorCode::ALL {
            assert_eq!(DeviceErrorCode::parse(code.as_str()), Some(code));
        }
        assert_eq!(DeviceErrorCode::parse("no rotation in progress"), None);
    }
}
