//! The device side of the rotation protocol: topics and payloads, the decisions of the state
//! machine as pure functions over the committed [`State`], and the checks a new certificate
//! must pass. No IO here; `agent` performs what these decide, committing each new state.
//!
//! ```text
//!             csr_req: new key, commit          crt_req: checks pass, cert stored, commit
//!   Idle ───────────────────────────▶ Key ─────────────────────────────────▶ Certificate
//!    ▲  ▲                              │ csr_req: same key, CSR re-sent        │ reconnect with it
//!    │  └──── checks fail: crt_err ◀───┘                                       │ (pending tried first)
//!    │  ◀──── refused at CONNECT: back to current, crt_err ◀───────────────────┤
//!    └─────── crt_ack delivered (PUBACK) on the new session: promote ◀─────────┘
//! ```

use certfleet_pki::{Certificate, CertificateId, PublicKey};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, UnixTime};
use serde::Deserialize;

use crate::config::TrustBundle;
use crate::store::{Pending, Slot, State};

/// The rotation topics of a client ID.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Topics {
    /// Server → device: `{}`; make a key and answer with a CSR.
    pub csr_req: String,
    /// Device → server: `{"CSR": "<PEM>"}`.
    pub csr_res: String,
    /// Server → device: `{"certificatePem": "...", "certificateId": "..."}`.
    pub crt_req: String,
    /// Device → server, from the session using the new certificate: `{"certificateId": "..."}`.
    pub crt_ack: String,
    /// Device → server, from the session using the old certificate:
    /// `{"error": "...", "code": "...", "certificateId": "..."}` ([`Report`]).
    pub crt_err: String,
}

impl Topics {
    pub fn for_client(client_id: &str) -> Self {
        let topic = |name: &str| format!("management/topic/{client_id}/{name}");
        Topics {
            csr_req: topic("csr_req"),
            csr_res: topic("csr_res"),
            crt_req: topic("crt_req"),
            crt_ack: topic("crt_ack"),
            crt_err: topic("crt_err"),
        }
    }
}

/// The `code` of a `crt_err`: what went wrong, for the service to decide on (the `error` text
/// is for humans). The service's `DeviceErrorCode` has the same names (`docs/rotation.md`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ErrorCode {
    /// A `crt_req` came while no rotation was under way (no key made).
    NoRotationInProgress,
    /// A `crt_req` came while another certificate was installed and pending.
    AnotherCertificatePending,
    /// The `crt_req` payload is not `{"certificatePem": ...}`.
    MalformedRequest,
    /// The offered certificate does not parse.
    CertificateUnparsable,
    /// `certificateId` is not the offered certificate's ID.
    IdMismatch,
    /// The offered certificate is not for the pending key.
    KeyMismatch,
    /// The offered certificate is expired or not yet valid.
    Expired,
    /// The offered certificate does not chain to the device roots.
    ChainInvalid,
    /// The pending key does not load.
    KeyUnavailable,
    /// The new certificate and key do not load.
    CredentialsUnusable,
    /// The new certificate was refused at CONNECT.
    ConnectRefused,
    /// The new certificate got no answer while the old one connects.
    Unreachable,
}

impl ErrorCode {
    /// Every code.
    pub const ALL: [ErrorCode; 12] = [
        ErrorCode::NoRotationInProgress,
        ErrorCode::AnotherCertificatePending,
        ErrorCode::MalformedRequest,
        ErrorCode::CertificateUnparsable,
        ErrorCode::IdMismatch,
        ErrorCode::KeyMismatch,
        ErrorCode::Expired,
        ErrorCode::ChainInvalid,
        ErrorCode::KeyUnavailable,
        ErrorCode::CredentialsUnusable,
        ErrorCode::ConnectRefused,
        ErrorCode::Unreachable,
    ];

    /// The code as sent (and stored in `state.json`).
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::NoRotationInProgress => "no-rotation-in-progress",
            ErrorCode::AnotherCertificatePending => "another-certificate-pending",
            ErrorCode::MalformedRequest => "malformed-request",
            ErrorCode::CertificateUnparsable => "certificate-unparsable",
            ErrorCode::IdMismatch => "id-mismatch",
            ErrorCode::KeyMismatch => "key-mismatch",
            ErrorCode::Expired => "expired",
            ErrorCode::ChainInvalid => "chain-invalid",
            ErrorCode::KeyUnavailable => "key-unavailable",
            ErrorCode::CredentialsUnusable => "credentials-unusable",
            ErrorCode::ConnectRefused => "connect-refused",
            ErrorCode::Unreachable => "unreachable",
        }
    }

    /// The code of a stored name.
    pub fn parse(text: &str) -> Option<Self> {
        ErrorCode::ALL.into_iter().find(|code| code.as_str() == text)
    }
}

/// A failure to report on `crt_err`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Report {
    /// What went wrong. `None` only for a failure committed by an agent from before codes
    /// existed (`state.json` without `unreported_error_code`); sent without a code.
    pub code: Option<ErrorCode>,
    /// For humans.
    pub reason: String,
    /// The certificate the failure is about, when one was offered: the service ignores a report
    /// about a certificate its rotation did not issue.
    pub certificate_id: Option<CertificateId>,
}

impl Report {
    pub fn new(code: ErrorCode, reason: impl Into<String>, certificate_id: Option<CertificateId>) -> Self {
        Report { code: Some(code), reason: reason.into(), certificate_id }
    }

    /// The `crt_err` payload: `{"error": "<text>", "code": "<code>", "certificateId": "<id>"}`
    /// (`code` and `certificateId` when known).
    pub fn payload(&self) -> serde_json::Value {
        let mut payload = serde_json::json!({ "error": self.reason });
        if let Some(code) = self.code {
            payload["code"] = code.as_str().into();
        }
        if let Some(id) = &self.certificate_id {
            payload["certificateId"] = id.as_str().into();
        }
        payload
    }
}

/// Which credentials a connection uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Credential {
    /// The current slot's.
    Current,
    /// The pending slot's (a certificate installed, not yet acknowledged).
    Pending,
}

/// Attempts with an unproven pending certificate that got no answer (see
/// [`ConnectError::Unreachable`](crate::connection::ConnectError)) before the current
/// credentials are tried once, to tell a network outage from a server that silently drops the
/// new certificate (AWS IoT closes the connection of an unknown certificate without a word).
pub const PENDING_ATTEMPTS_BEFORE_PROBE: u32 = 3;

/// The recovery decision: which credentials to try at the next connection, given how many
/// attempts in a row with the pending certificate got no answer.
///
/// The pending certificate comes first once it is stored, since the server may already have
/// deactivated the old one after an ack the device did not live to commit. An unproven one
/// (never accepted) that keeps getting no answer yields to a probe with the current
/// credentials every [`PENDING_ATTEMPTS_BEFORE_PROBE`] attempts; a proven one never does.
pub fn first_choice(state: &State, unanswered_pending_attempts: u32) -> Credential {
    match state.pending {
        Some(Pending::Certificate { proven: false, .. })
            if unanswered_pending_attempts >= PENDING_ATTEMPTS_BEFORE_PROBE =>
        {
            Credential::Current
        }
        Some(Pending::Certificate { .. }) => Credential::Pending,
        Some(Pending::Key { .. }) | None => Credential::Current,
    }
}

/// What to do with a `csr_req`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CsrDecision {
    /// Make a key in this new slot, commit it as pending, send its CSR.
    NewKey { slot: Slot, next: State },
    /// A rotation is under way: send the CSR of its key again (duplicates are idempotent).
    SameKey { slot: Slot },
}

/// Decides a `csr_req`.
pub fn on_csr_request(state: &State) -> CsrDecision {
    match &state.pending {
        Some(pending) => CsrDecision::SameKey { slot: pending.slot().clone() },
        None => {
            let slot = Slot::numbered(state.next_slot);
            let next = State {
                pending: Some(Pending::Key { slot: slot.clone() }),
                next_slot: state.next_slot + 1,
                ..state.clone()
            };
            CsrDecision::NewKey { slot, next }
        }
    }
}

/// What to do with a `crt_req`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CertificateDecision {
    /// Check the certificate against the key in this slot.
    Check { slot: Slot },
    /// The session already uses this certificate: acknowledge again.
    ReAck,
    /// Refuse (report on `crt_err`, state unchanged).
    Refuse(Refusal),
}

/// Why a `crt_req` is refused without looking at the certificate.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Refusal {
    /// No key was made: no `csr_req` came, or the rotation was abandoned.
    NoRotation,
    /// Another certificate is already installed and pending.
    AnotherCertificatePending { pending: CertificateId },
}

impl Refusal {
    /// The `crt_err` code.
    pub fn code(&self) -> ErrorCode {
        match self {
            Refusal::NoRotation => ErrorCode::NoRotationInProgress,
            Refusal::AnotherCertificatePending { .. } => ErrorCode::AnotherCertificatePending,
        }
    }
}

impl std::fmt::Display for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Refusal::NoRotation => f.write_str("no rotation in progress: send csr_req first"),
            Refusal::AnotherCertificatePending { pending } => {
                write!(f, "another certificate ({pending}) is already installed and pending")
            }
        }
    }
}

/// Decides a `crt_req` offering `offered`, on a session using `session_certificate`.
pub fn on_certificate_request(
    state: &State,
    session_certificate: &CertificateId,
    offered: &CertificateId,
) -> CertificateDecision {
    if offered == session_certificate {
        return CertificateDecision::ReAck;
    }
    match &state.pending {
        None => CertificateDecision::Refuse(Refusal::NoRotation),
        Some(Pending::Key { slot }) => CertificateDecision::Check { slot: slot.clone() },
        Some(Pending::Certificate { certificate_id, .. }) => {
            CertificateDecision::Refuse(Refusal::AnotherCertificatePending { pending: certificate_id.clone() })
        }
    }
}

/// The state once a checked certificate is stored in the pending slot.
pub fn installed(state: &State, slot: &Slot, certificate_id: &CertificateId) -> State {
    State {
        pending: Some(Pending::Certificate {
            slot: slot.clone(),
            certificate_id: certificate_id.clone(),
            proven: false,
        }),
        ..state.clone()
    }
}

/// The state once a session with the pending certificate was accepted: from here on the
/// server may retire the old certificate (it may see our `crt_ack`), so the pending one is
/// abandoned only when explicitly refused. `None` when there is nothing to change.
pub fn proven(state: &State) -> Option<State> {
    match &state.pending {
        Some(Pending::Certificate { slot, certificate_id, proven: false }) => Some(State {
            pending: Some(Pending::Certificate {
                slot: slot.clone(),
                certificate_id: certificate_id.clone(),
                proven: true,
            }),
            ..state.clone()
        }),
        _ => None,
    }
}

/// Whether a session on the current credentials, opened while a pending certificate is
/// stored (a probe), abandons the pending one: only when it was never proven.
pub fn probe_abandons_pending(state: &State) -> bool {
    matches!(state.pending, Some(Pending::Certificate { proven: false, .. }))
}

/// The state once `crt_ack` was delivered from a session using the pending certificate: it is
/// current. Returns the new state and the slot that can go (the old current).
pub fn promoted(state: &State) -> Option<(State, Slot)> {
    match &state.pending {
        Some(Pending::Certificate { slot, .. }) => Some((
            State { current: slot.clone(), pending: None, unreported_error: None, next_slot: state.next_slot },
            state.current.clone(),
        )),
        _ => None,
    }
}

/// The state once the rotation failed (`report`): back to the current credentials, the
/// failure to be reported on `crt_err`. Returns the new state and the slot that can go.
pub fn abandoned(state: &State, report: Report) -> (State, Option<Slot>) {
    let slot = state.pending.as_ref().map(|pending| pending.slot().clone());
    (State { pending: None, unreported_error: Some(report), ..state.clone() }, slot)
}

/// The `crt_req` payload.
#[derive(Debug, Deserialize)]
pub struct CertificateRequest {
    #[serde(rename = "certificatePem")]
    pub certificate_pem: String,
    #[serde(rename = "certificateId", default)]
    pub certificate_id: Option<String>,
}

/// Why a new certificate is refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum CertificateProblem {
    /// The payload is not `{"certificatePem": "..."}`.
    #[error("the crt_req payload is not {{\"certificatePem\": \"...\"}}: {0}")]
    Malformed(String),
    /// The PEM holds no certificate, or one that does not parse.
    #[error("the certificate does not parse: {0}")]
    Unparsable(String),
    /// `certificateId` does not name the certificate sent.
    #[error("certificateId {claimed} is not the id of the certificate sent ({actual})")]
    IdMismatch { claimed: String, actual: CertificateId },
    /// Its public key is not the pending key's.
    #[error("the certificate is not for the key of the csr")]
    WrongKey,
    /// Not yet valid or expired.
    #[error("the certificate is not valid now: {0}")]
    NotValidNow(String),
    /// It does not chain to a trusted device CA (or is not for client authentication).
    #[error("the certificate does not chain to a trusted device ca: {0}")]
    Untrusted(String),
}

impl CertificateProblem {
    /// The `crt_err` code.
    pub fn code(&self) -> ErrorCode {
        match self {
            CertificateProblem::Malformed(_) => ErrorCode::MalformedRequest,
            CertificateProblem::Unparsable(_) => ErrorCode::CertificateUnparsable,
            CertificateProblem::IdMismatch { .. } => ErrorCode::IdMismatch,
            CertificateProblem::WrongKey => ErrorCode::KeyMismatch,
            CertificateProblem::NotValidNow(_) => ErrorCode::Expired,
            CertificateProblem::Untrusted(_) => ErrorCode::ChainInvalid,
        }
    }
}

/// A certificate that passed [`check_certificate`]: its chain as sent (leaf first) and ID.
#[derive(Clone, Debug)]
pub struct CheckedCertificate {
    pub chain: Vec<CertificateDer<'static>>,
    pub certificate_id: CertificateId,
    pub pem: String,
}

/// Parses a `crt_req` payload.
pub fn parse_certificate_request(payload: &[u8]) -> Result<CertificateRequest, CertificateProblem> {
    serde_json::from_slice(payload).map_err(|error| CertificateProblem::Malformed(error.to_string()))
}

/// Checks a new certificate: it parses, `certificateId` (when given) is its ID, its key is the
/// pending key (`key_spki`), it chains to `roots` (intermediates may follow the leaf in the
/// PEM) with the clientAuth purpose, and it is valid at `now`.
pub fn check_certificate(
    request: &CertificateRequest,
    key_spki: &[u8],
    roots: &TrustBundle,
    now: UnixTime,
) -> Result<CheckedCertificate, CertificateProblem> {
    let chain = CertificateDer::pem_slice_iter(request.certificate_pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|error| CertificateProblem::Unparsable(error.to_string()))?;
    let Some(leaf) = chain.first() else {
        return Err(CertificateProblem::Unparsable("no certificate in certificatePem".to_owned()));
    };
    let parsed =
        Certificate::from_der(leaf.to_vec()).map_err(|error| CertificateProblem::Unparsable(error.to_string()))?;
    if let Some(claimed) = &request.certificate_id
        && !claimed.eq_ignore_ascii_case(parsed.id().as_str())
    {
        return Err(CertificateProblem::IdMismatch { claimed: claimed.clone(), actual: parsed.id().clone() });
    }
    let key = PublicKey::from_spki_der(key_spki).map_err(|_| CertificateProblem::WrongKey)?;
    if parsed.public_key() != &key {
        return Err(CertificateProblem::WrongKey);
    }
    let provider = std::sync::Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(roots.roots(), provider)
        .build()
        .map_err(|error| CertificateProblem::Untrusted(error.to_string()))?;
    verifier.verify_client_cert(leaf, &chain[1..], now).map_err(|error| match error {
        rustls::Error::InvalidCertificate(
            reason @ (rustls::CertificateError::Expired
            | rustls::CertificateError::ExpiredContext { .. }
            | rustls::CertificateError::NotValidYet
            | rustls::CertificateError::NotValidYetContext { .. }),
        ) => CertificateProblem::NotValidNow(format!("{reason:?}")),
        other => CertificateProblem::Untrusted(other.to_string()),
    })?;
    Ok(CheckedCertificate {
        certificate_id: parsed.id().clone(),
        pem: request.certificate_pem.clone(),
        chain: chain.into_iter().map(CertificateDer::into_owned).collect(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(n: u8) -> CertificateId {
        CertificateId::parse(&format!("{n:064x}")).unwrap()
    }

    fn idle() -> State {
        State::provisioned()
    }

    fn with_key() -> State {
        State { pending: Some(Pending::Key { slot: Slot::numbered(1) }), next_slot: 2, ..idle() }
    }

    fn with_certificate() -> State {
        installed(&with_key(), &Slot::numbered(1), &id(2))
    }

    fn connected() -> State {
        proven(&with_certificate()).unwrap()
    }

    fn refused() -> Report {
        Report::new(ErrorCode::ConnectRefused, "refused", Some(id(2)))
    }

    #[test]
    fn recovery_decision_table() {
        // (state on disk, unanswered attempts with the pending certificate, credentials tried)
        let table = [
            (idle(), 0, Credential::Current),
            (idle(), 5, Credential::Current),
            (with_key(), 0, Credential::Current),
            (with_certificate(), 0, Credential::Pending),
            (with_certificate(), 2, Credential::Pending),
            (with_certificate(), 3, Credential::Current),
            (connected(), 0, Credential::Pending),
            (connected(), 3, Credential::Pending),
            (connected(), 100, Credential::Pending),
            (abandoned(&with_certificate(), refused()).0, 0, Credential::Current),
            (promoted(&with_certificate()).unwrap().0, 0, Credential::Current),
        ];
        for (state, unanswered, expected) in table {
            assert_eq!(first_choice(&state, unanswered), expected, "{state:?} after {unanswered}");
        }
    }

    #[test]
    fn probes() {
        assert!(probe_abandons_pending(&with_certificate()));
        assert!(!probe_abandons_pending(&connected()));
        assert!(!probe_abandons_pending(&with_key()));
        assert!(!probe_abandons_pending(&idle()));
        assert_eq!(proven(&connected()), None);
        assert_eq!(proven(&with_key()), None);
        assert_eq!(proven(&idle()), None);
    }

    #[test]
    fn csr_requests() {
        assert_eq!(on_csr_request(&idle()), CsrDecision::NewKey { slot: Slot::numbered(1), next: with_key() });
        assert_eq!(on_csr_request(&with_key()), CsrDecision::SameKey { slot: Slot::numbered(1) });
        assert_eq!(on_csr_request(&with_certificate()), CsrDecision::SameKey { slot: Slot::numbered(1) });
        // Slots are never reused: a rotation after a promotion takes the next number.
        let (after, _) = promoted(&with_certificate()).unwrap();
        assert!(matches!(on_csr_request(&after), CsrDecision::NewKey { slot, .. } if slot == Slot::numbered(2)));
    }

    #[test]
    fn certificate_requests() {
        let session = id(1);
        let check = |state: &State, offered: u8, expected: CertificateDecision| {
            assert_eq!(on_certificate_request(state, &session, &id(offered)), expected, "{state:?} offered {offered}");
        };
        check(&idle(), 7, CertificateDecision::Refuse(Refusal::NoRotation));
        check(&idle(), 1, CertificateDecision::ReAck);
        check(&with_key(), 7, CertificateDecision::Check { slot: Slot::numbered(1) });
        check(
            &with_certificate(),
            7,
            CertificateDecision::Refuse(Refusal::AnotherCertificatePending { pending: id(2) }),
        );
        // The new session (using certificate 2) gets crt_req 2 again: acknowledged again.
        assert_eq!(on_certificate_request(&with_certificate(), &id(2), &id(2)), CertificateDecision::ReAck);
    }

    #[test]
    fn transitions() {
        assert_eq!(promoted(&connected()).unwrap().0.current, Slot::numbered(1));
        let (promoted_state, old) = promoted(&with_certificate()).unwrap();
        assert_eq!(promoted_state.current, Slot::numbered(1));
        assert_eq!(promoted_state.pending, None);
        assert_eq!(old, Slot::bootstrap());
        assert_eq!(promoted(&with_key()), None);
        assert_eq!(promoted(&idle()), None);

        let (failed, gone) = abandoned(&with_certificate(), refused());
        assert_eq!(failed.current, Slot::bootstrap());
        assert_eq!(failed.pending, None);
        assert_eq!(failed.unreported_error, Some(refused()));
        assert_eq!(gone, Some(Slot::numbered(1)));
        assert_eq!(failed.next_slot, 2);
    }

    #[test]
    fn error_codes_and_reports() {
        for code in ErrorCode::ALL {
            assert_eq!(ErrorCode::parse(code.as_str()), Some(code));
        }
        assert_eq!(ErrorCode::parse("no rotation in progress"), None);
        assert_eq!(Refusal::NoRotation.code(), ErrorCode::NoRotationInProgress);
        assert_eq!(Refusal::AnotherCertificatePending { pending: id(2) }.code(), ErrorCode::AnotherCertificatePending);
        assert_eq!(CertificateProblem::WrongKey.code(), ErrorCode::KeyMismatch);
        assert_eq!(CertificateProblem::Untrusted("x".into()).code(), ErrorCode::ChainInvalid);
        assert_eq!(CertificateProblem::NotValidNow("x".into()).code(), ErrorCode::Expired);
        // The seed's text stays for humans; the code and the certificate go beside it.
        let report = Report::new(ErrorCode::NoRotationInProgress, Refusal::NoRotation.to_string(), Some(id(7)));
        assert_eq!(
            report.payload(),
            serde_json::json!({
                "error": "no rotation in progress: send csr_req first",
                "code": "no-rotation-in-progress",
                "certificateId": id(7).as_str(),
            })
        );
        let legacy = Report { code: None, reason: "old".into(), certificate_id: None };
        assert_eq!(legacy.payload(), serde_json::json!({ "error": "old" }));
    }

    #[test]
    fn topics() {
        let topics = Topics::for_client("dev-1");
        assert_eq!(topics.csr_req, "management/topic/dev-1/csr_req");
        assert_eq!(topics.csr_res, "management/topic/dev-1/csr_res");
        assert_eq!(topics.crt_req, "management/topic/dev-1/crt_req");
        assert_eq!(topics.crt_ack, "management/topic/dev-1/crt_ack");
        assert_eq!(topics.crt_err, "management/topic/dev-1/crt_err");
    }
}
