//! The rotation model: campaigns (one audit's or one operator's set of certificates to rotate)
//! and rotations (one device's certificate replaced by a new one, step by step).
//!
//! Plain values, like the rest of the model: services drive the state machine, the registry
//! stores where each rotation stands so that it survives a restart at any step.

use certfleet_pki::CertificateId;
use time::OffsetDateTime;

use crate::AccountId;

/// Defines an enum stored as lowercase text, with `as_str` and `parse`.
macro_rules! stored_enum {
    ($(#[$meta:meta])* $name:ident { $($variant:ident = $text:literal),+ $(,)? }) => {
        $(#[$meta])*
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub enum $name { $($variant),+ }

        impl $name {
            /// The stored (and displayed) name.
            pub fn as_str(self) -> &'static str {
                match self { $($name::$variant => $text),+ }
            }

            /// The value of a stored name.
            pub fn parse(text: &str) -> Option<Self> {
                match text { $($text => Some($name::$variant),)+ _ => None }
            }
        }
    };
}

stored_enum!(
    /// What started a campaign.
    RotationSource { Audit = "audit", Manual = "manual" }
);

stored_enum!(
    /// Which subject the certificates a campaign issues carry (`docs/rotation.md`). Either way
    /// it is the old certificate's subject, byte for byte: a device never chooses it.
    ///
    /// - `keep-old`: a CSR asking for another subject is still answered (the subject it asked
    ///   for is ignored, logged at info once).
    /// - `require-csr-match`: a CSR whose subject is not the old certificate's, byte for byte,
    ///   is refused and the rotation fails (`refused CSR: csr-subject-mismatch`).
    SubjectRule { KeepOld = "keep-old", RequireCsrMatch = "require-csr-match" }
);

stored_enum!(
    /// Where a rotation stands. `Retired` and `Failed` are closed; the others are open.
    RotationState {
        Requested = "requested",
        CsrReceived = "csr_received",
        Issued = "issued",
        Acknowledged = "acknowledged",
        Retired = "retired",
        Failed = "failed",
    }
);

impl RotationState {
    /// Every state, in protocol order.
    pub const ALL: [RotationState; 6] = [
        RotationState::Requested,
        RotationState::CsrReceived,
        RotationState::Issued,
        RotationState::Acknowledged,
        RotationState::Retired,
        RotationState::Failed,
    ];

    /// Whether the rotation still waits for something (a device message or a retirement).
    pub fn is_open(self) -> bool {
        !matches!(self, RotationState::Retired | RotationState::Failed)
    }
}

/// A set of rotations started together.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RotationCampaign {
    pub account: AccountId,
    pub id: String,
    pub source: RotationSource,
    /// The audit task whose findings started it (source `audit`).
    pub audit_task_id: Option<String>,
    /// Which subject its certificates carry.
    pub subject_rule: SubjectRule,
    pub created_at: OffsetDateTime,
}

/// One device's rotation from `old_certificate_id` to a new certificate.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rotation {
    pub account: AccountId,
    pub id: String,
    pub campaign_id: String,
    /// The MQTT client ID the messages go to (empty when none is known).
    pub client_id: String,
    pub old_certificate_id: CertificateId,
    /// Set once issued (and kept after a failure, for the record).
    pub new_certificate_id: Option<CertificateId>,
    /// SHA-256 (hex) of the SubjectPublicKeyInfo of the first accepted CSR: later CSRs of this
    /// rotation must carry the same key.
    pub csr_key_fingerprint: Option<String>,
    pub state: RotationState,
    /// Messages sent for the current step (`csr_req` or `crt_req`).
    pub attempts: i64,
    pub error: Option<String>,
    /// When the current step times out (open rotations only).
    pub deadline: Option<OffsetDateTime>,
    pub created_at: OffsetDateTime,
    pub updated_at: OffsetDateTime,
}

/// Which rotations a listing returns.
#[derive(Clone, Debug, Default)]
pub struct RotationFilter {
    pub campaign_id: Option<String>,
    pub state: Option<RotationState>,
    pub client_id: Option<String>,
}
