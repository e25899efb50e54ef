//! The services' error: which rule refused an operation.
//!
//! The variants follow the refusals AWS IoT distinguishes, so the api crate can map each to its
//! AWS error shape in one place; the messages are for the caller and the log.

/// Why an operation was refused or failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The request is malformed or asks for something the API does not allow.
    #[error("{0}")]
    InvalidRequest(String),
    /// The named resource does not exist (in the caller's account).
    #[error("{0}")]
    NotFound(String),
    /// An ARN that does not name a resource of the caller's account and region (ACM's
    /// InvalidArnException).
    #[error("{0}")]
    InvalidArn(String),
    /// An imported certificate, key or chain is unusable (ACM's ValidationException).
    #[error("{0}")]
    Validation(String),
    /// The resource is in use and cannot be deleted (ACM's ResourceInUseException).
    #[error("{0}")]
    InUse(String),
    /// The resource exists already.
    #[error("{message}")]
    AlreadyExists {
        message: String,
        resource_id: String,
        /// Only set when the resource belongs to the caller.
        resource_arn: Option<String>,
    },
    /// The certificate's status does not allow the operation.
    #[error("{0}")]
    CertificateState(String),
    /// A certificate is malformed, expired, not a CA, not signed by its CA, or uses a refused key.
    #[error("{0}")]
    CertificateValidation(String),
    /// The verification certificate does not carry the account's registration code.
    #[error("{0}")]
    RegistrationCodeValidation(String),
    /// Several registered CAs share the issuer's subject; the caller must name one.
    #[error("{0}")]
    CertificateConflict(String),
    /// The resource is still referenced.
    #[error("{0}")]
    DeleteConflict(String),
    /// Policies are still attached to a certificate being transferred.
    #[error("{0}")]
    TransferConflict(String),
    /// The transfer was already accepted, rejected or cancelled.
    #[error("{0}")]
    TransferAlreadyCompleted(String),
    /// A quota would be exceeded.
    #[error("{0}")]
    LimitExceeded(String),
    /// A policy document is not valid; nothing was stored.
    #[error("{0}")]
    MalformedPolicy(String),
    /// A policy has the most versions it may have (5).
    #[error("{0}")]
    VersionsLimitExceeded(String),
    /// A provisioning template cannot be resolved with the parameters given: one it uses has no
    /// value and no default, a value is too long, not a number where the template says Number,
    /// or makes a function fail (an index past a list's end, a mapping without the key).
    #[error("{0}")]
    InvalidParameters(String),
    /// A provisioning template's resources cannot be registered (a policy it names does not
    /// exist, or exists with another document; the certificate is registered already).
    #[error("{0}")]
    ResourceRegistrationFailure(String),
    /// A provisioned resource exists and the template's `OverrideSettings` say FAIL.
    #[error("{0}")]
    ConflictingResourceUpdate(String),
    /// A provisioning template cannot be provisioned with (missing, disabled, not
    /// FLEET_PROVISIONING).
    #[error("{}: {template}", why.as_str())]
    TemplateNotUsable { template: String, why: crate::fleet::TemplateRefusal },
    /// The expected version of a thing is not its current version.
    #[error("{0}")]
    VersionConflict(String),
    /// A rule's SQL statement does not parse (AWS's SqlParseException); the message says what
    /// and where.
    #[error("{0}")]
    SqlParse(String),
    /// The caller has no topic rule of that name. AWS answers UnauthorizedException (401) for
    /// it, not ResourceNotFoundException.
    #[error("{0}")]
    RuleNotFound(String),
    /// The caller's account does not exist (any more): it was deleted, possibly while the
    /// request was in flight. The write did not land.
    #[error("the account {0} does not exist")]
    AccountGone(certfleet_registry::AccountId),
    /// The registry failed.
    #[error("registry failure")]
    Registry(#[source] certfleet_registry::Error),
    /// Something certfleet itself got wrong (a key that cannot be opened, a broken invariant).
    #[error("internal failure: {0}")]
    Internal(String),
}

impl From<certfleet_registry::Error> for Error {
    fn from(error: certfleet_registry::Error) -> Self {
        match error {
            certfleet_registry::Error::AccountNotFound(account) => Error::AccountGone(account),
            other => Error::Registry(other),
        }
    }
}

impl Error {
    /// The refusal's name, for logs and tests (`"CertificateState"`, `"NotFound"`, ...).
    pub fn kind(&self) -> &'static str {
        match self {
            Error::InvalidRequest(_) => "InvalidRequest",
            Error::NotFound(_) => "NotFound",
            Error::InvalidArn(_) => "InvalidArn",
            Error::Validation(_) => "Validation",
            Error::InUse(_) => "InUse",
            Error::AlreadyExists { .. } => "AlreadyExists",
            Error::CertificateState(_) => "CertificateState",
            Error::CertificateValidation(_) => "CertificateValidation",
            Error::RegistrationCodeValidation(_) => "RegistrationCodeValidation",
            Error::CertificateConflict(_) => "CertificateConflict",
            Error::DeleteConflict(_) => "DeleteConflict",
            Error::TransferConflict(_) => "TransferConflict",
            Error::TransferAlreadyCompleted(_) => "TransferAlreadyCompleted",
            Error::LimitExceeded(_) => "LimitExceeded",
            Error::MalformedPolicy(_) => "MalformedPolicy",
            Error::VersionsLimitExceeded(_) => "VersionsLimitExceeded",
            Error::InvalidParameters(_) => "InvalidParameters",
            Error::ResourceRegistrationFailure(_) => "ResourceRegistrationFailure",
            Error::ConflictingResourceUpdate(_) => "ConflictingResourceUpdate",
            Error::TemplateNotUsable { .. } => "TemplateNotUsable",
            Error::VersionConflict(_) => "VersionConflict",
            Error::SqlParse(_) => "SqlParse",
            Error::RuleNotFound(_) => "RuleNotFound",
            Error::AccountGone(_) => "AccountGone",
            Error::Registry(_) => "Registry",
            Error::Internal(_) => "Internal",
        }
    }
}
