//! Fleet provisioning by claim: AWS IoT's device provisioning MQTT API, answered by the gateway
//! on its reserved topics (docs/provisioning.md).
//!
//! A device connected with a claim certificate publishes a request and hears the answer on the
//! request topic plus `/accepted` or `/rejected`, through the same connection only (never routed
//! through the broker: a certificate and its private key are for the connection that asked):
//!
//! - `$aws/certificates/create/<format>`: a new key pair and a certificate for it
//!   (CreateKeysAndCertificate);
//! - `$aws/certificates/create-from-csr/<format>`: a certificate for the device's CSR
//!   (CreateCertificateFromCsr);
//! - `$aws/provisioning-templates/<templateName>/provision/<format>`: RegisterThing, the
//!   template applied to the certificate a `certificateOwnershipToken` stands for
//!   ([`tokens`]).
//!
//! `<format>` is `json` or `cbor` (`certfleet-cbor`), for the request and its answer alike. Every other
//! topic under `$aws/certificates/` and `$aws/provisioning-templates/` is the server's: devices
//! may not publish there ([`is_reserved`]), so no device can forge an answer.
//!
//! The requests are served by [`service::FleetProvisioning`], off the connection's task.

pub mod service;
pub(crate) mod tokens;

use certfleet_cbor as cbor;
use serde_json::{Value, json};

pub use service::{FleetConfig, FleetProvisioning};

/// The payload format of a request and its answer.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Format {
    Json,
    Cbor,
}

impl Format {
    fn parse(text: &str) -> Option<Format> {
        match text {
            "json" => Some(Format::Json),
            "cbor" => Some(Format::Cbor),
            _ => None,
        }
    }

    fn as_str(self) -> &'static str {
        match self {
            Format::Json => "json",
            Format::Cbor => "cbor",
        }
    }

    /// Reads a request payload. An empty payload is an empty object (CreateKeysAndCertificate's
    /// request has no fields, and devices send nothing).
    pub fn decode(self, payload: &[u8]) -> Result<Value, Rejection> {
        if payload.is_empty() {
            return Ok(json!({}));
        }
        let value = match self {
            Format::Json => serde_json::from_slice(payload).map_err(|_| Rejection::InvalidPayload)?,
            Format::Cbor => cbor::decode(payload).map_err(|_| Rejection::InvalidPayload)?,
        };
        if value.is_object() { Ok(value) } else { Err(Rejection::InvalidPayload) }
    }

    pub fn encode(self, value: &Value) -> Vec<u8> {
        match self {
            Format::Json => value.to_string().into_bytes(),
            Format::Cbor => cbor::encode(value),
        }
    }
}

/// Which operation a request topic asks for.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Operation {
    CreateKeysAndCertificate,
    CreateCertificateFromCsr,
    /// RegisterThing with the named template (checked as a template name when served).
    RegisterThing {
        template: String,
    },
}

impl Operation {
    /// The name in logs and metrics.
    pub fn as_str(&self) -> &'static str {
        match self {
            Operation::CreateKeysAndCertificate => "create_keys_and_certificate",
            Operation::CreateCertificateFromCsr => "create_certificate_from_csr",
            Operation::RegisterThing { .. } => "register_thing",
        }
    }
}

/// A request topic, parsed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Request {
    pub operation: Operation,
    pub format: Format,
    /// The topic the request came on: the answer goes to it plus `/accepted` or `/rejected`.
    pub topic: String,
}

impl Request {
    /// The request a topic names, if it is one of the three request topics.
    pub fn parse(topic: &str) -> Option<Request> {
        let levels: Vec<&str> = topic.split('/').collect();
        let (operation, format) = match levels.as_slice() {
            ["$aws", "certificates", "create", format] => (Operation::CreateKeysAndCertificate, *format),
            ["$aws", "certificates", "create-from-csr", format] => (Operation::CreateCertificateFromCsr, *format),
            ["$aws", "provisioning-templates", template, "provision", format] if !template.is_empty() => {
                (Operation::RegisterThing { template: (*template).to_owned() }, *format)
            }
            _ => return None,
        };
        Some(Request { operation, format: Format::parse(format)?, topic: topic.to_owned() })
    }

    /// The topic of the answer.
    pub fn answer_topic(&self, accepted: bool) -> String {
        format!("{}/{}", self.topic, if accepted { "accepted" } else { "rejected" })
    }
}

/// Whether devices may not publish to `topic`: everything under the fleet provisioning prefixes
/// but the request topics themselves.
pub fn is_reserved(topic: &str) -> bool {
    (topic.starts_with("$aws/certificates/") || topic.starts_with("$aws/provisioning-templates/"))
        && Request::parse(topic).is_none()
}

/// Why a request was rejected: logged with its detail, counted, and answered on `/rejected` with
/// AWS's error shape (`statusCode`, `errorCode`, `errorMessage`). The message a device hears is
/// short and names no internals.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Rejection {
    /// Not JSON/CBOR, not an object, or a field of the wrong type or size.
    InvalidPayload,
    /// The CSR does not parse, its signature does not verify, or its key is refused.
    InvalidCsr,
    /// The token is missing, unknown to this connection, used already or expired.
    InvalidCertificateOwnershipToken,
    /// A parameter the template needs is missing, or a value is not valid where it is used.
    InvalidParameters,
    /// No template of that name in the account.
    TemplateNotFound,
    /// The template is disabled.
    TemplateDisabled,
    /// The claim certificate may not use this template (a claim made for another one).
    ClaimNotForTemplate,
    /// The pre-provisioning hook said no.
    HookRefused,
    /// The pre-provisioning hook did not answer in time, or not with its documented shape.
    HookFailed,
    /// Too many requests: this connection has one in flight, the account is over its rate, or
    /// the node is at its bound.
    Throttled,
    /// The template could not be applied (a conflict with what exists, say).
    RegistrationFailed,
    /// Something on the server's side failed.
    InternalFailure,
}

impl Rejection {
    pub const ALL: [Rejection; 12] = [
        Rejection::InvalidPayload,
        Rejection::InvalidCsr,
        Rejection::InvalidCertificateOwnershipToken,
        Rejection::InvalidParameters,
        Rejection::TemplateNotFound,
        Rejection::TemplateDisabled,
        Rejection::ClaimNotForTemplate,
        Rejection::HookRefused,
        Rejection::HookFailed,
        Rejection::Throttled,
        Rejection::RegistrationFailed,
        Rejection::InternalFailure,
    ];

    /// The name in logs and metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            Rejection::InvalidPayload => "invalid_payload",
            Rejection::InvalidCsr => "invalid_csr",
            Rejection::InvalidCertificateOwnershipToken => "invalid_ownership_token",
            Rejection::InvalidParameters => "invalid_parameters",
            Rejection::TemplateNotFound => "template_not_found",
            Rejection::TemplateDisabled => "template_disabled",
            Rejection::ClaimNotForTemplate => "claim_not_for_template",
            Rejection::HookRefused => "hook_refused",
            Rejection::HookFailed => "hook_failed",
            Rejection::Throttled => "throttled",
            Rejection::RegistrationFailed => "registration_failed",
            Rejection::InternalFailure => "internal_failure",
        }
    }

    /// AWS's `statusCode` and `errorCode`, and the message the device hears.
    pub fn wire(self) -> (u16, &'static str, &'static str) {
        match self {
            Rejection::InvalidPayload => (400, "InvalidPayload", "The request payload is not valid."),
            Rejection::InvalidCsr => (400, "InvalidCSR", "The certificate signing request is not valid."),
            Rejection::InvalidCertificateOwnershipToken => (
                400,
                "InvalidCertificateOwnershipToken",
                "The certificate ownership token is not valid for this connection.",
            ),
            Rejection::InvalidParameters => {
                (400, "InvalidParameters", "The parameters do not satisfy the provisioning template.")
            }
            Rejection::TemplateNotFound => (404, "ResourceNotFound", "The provisioning template does not exist."),
            Rejection::TemplateDisabled => (400, "InvalidRequest", "The provisioning template is disabled."),
            Rejection::ClaimNotForTemplate | Rejection::HookRefused | Rejection::HookFailed => {
                (403, "AccessDenied", "Provisioning was not allowed.")
            }
            Rejection::Throttled => (429, "Throttling", "Too many requests."),
            Rejection::RegistrationFailed => {
                (409, "ConflictingResourceUpdate", "The provisioning template could not be applied.")
            }
            Rejection::InternalFailure => (500, "InternalFailure", "An internal error occurred."),
        }
    }

    /// The `/rejected` payload.
    pub fn payload(self) -> Value {
        let (status, code, message) = self.wire();
        json!({"statusCode": status, "errorCode": code, "errorMessage": message})
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_topics() {
        let check = |topic: &str, expected: Option<(Operation, Format)>| {
            let parsed = Request::parse(topic).map(|request| (request.operation, request.format));
            assert_eq!(parsed, expected, "{topic}");
        };
        check("$aws/certificates/create/json", Some((Operation::CreateKeysAndCertificate, Format::Json)));
        check("$aws/certificates/create/cbor", Some((Operation::CreateKeysAndCertificate, Format::Cbor)));
        check("$aws/certificates/create-from-csr/json", Some((Operation::CreateCertificateFromCsr, Format::Json)));
        check(
            "$aws/provisioning-templates/Fleet_1/provision/cbor",
            Some((Operation::RegisterThing { template: "Fleet_1".into() }, Format::Cbor)),
        );
        for not_a_request in [
            "$aws/certificates/create/xml",
            "$aws/certificates/create/json/accepted",
            "$aws/certificates/create",
            "$aws/provisioning-templates//provision/json",
            "$aws/provisioning-templates/t/provision/json/rejected",
            "$aws/provisioning-templates/t/provision",
            "aws/certificates/create/json",
            "$aws/events/presence/connected/x",
        ] {
            check(not_a_request, None);
        }
    }

    #[test]
    fn answers_are_reserved_requests_are_not() {
        assert!(is_reserved("$aws/certificates/create/json/accepted"));
        assert!(is_reserved("$aws/certificates/create-from-csr/cbor/rejected"));
        assert!(is_reserved("$aws/provisioning-templates/t/provision/json/accepted"));
        assert!(is_reserved("$aws/certificates/anything"));
        assert!(!is_reserved("$aws/certificates/create/json"));
        assert!(!is_reserved("$aws/provisioning-templates/t/provision/json"));
        assert!(!is_reserved("devices/certificates/create/json/accepted"));
        let request = Request::parse("$aws/certificates/create/json").unwrap();
        assert_eq!(request.answer_topic(true), "$aws/certificates/create/json/accepted");
        assert_eq!(request.answer_topic(false), "$aws/certificates/create/json/rejected");
    }

    #[test]
    fn payloads() {
        assert_eq!(Format::Json.decode(b""), Ok(json!({})));
        assert_eq!(Format::Cbor.decode(b""), Ok(json!({})));
        assert_eq!(Format::Json.decode(b"{\"a\":1}"), Ok(json!({"a": 1})));
        assert_eq!(Format::Json.decode(b"[1]"), Err(Rejection::InvalidPayload));
        assert_eq!(Format::Json.decode(b"{"), Err(Rejection::InvalidPayload));
        assert_eq!(Format::Cbor.decode(&[0xa1, 0x61, b'a', 0x01]), Ok(json!({"a": 1})));
        assert_eq!(Format::Cbor.decode(&[0x01]), Err(Rejection::InvalidPayload));
        let rejected = Rejection::InvalidCertificateOwnershipToken.payload();
        assert_eq!(rejected["statusCode"], 400);
        assert_eq!(rejected["errorCode"], "InvalidCertificateOwnershipToken");
        for rejection in Rejection::ALL {
            let (status, code, message) = rejection.wire();
            assert!((400..600).contains(&status) && !code.is_empty() && !message.is_empty());
        }
    }
}
