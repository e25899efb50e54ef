//! The one place where refusals become AWS error responses: status, `x-amzn-ErrorType`,
//! `x-amzn-RequestId` and a JSON body with `message` (plus `resourceId`/`resourceArn` for
//! ResourceAlreadyExistsException), exactly as botocore parses them.

use axum::response::{IntoResponse, Response};
use http::{HeaderValue, StatusCode};

/// An AWS-shaped error response.
#[derive(Debug, Clone)]
pub struct ApiError {
    pub code: &'static str,
    pub status: StatusCode,
    pub message: String,
    pub resource_id: Option<String>,
    pub resource_arn: Option<String>,
    /// A detail for the log only (never sent: it could help an attacker).
    pub log_reason: Option<String>,
}

impl ApiError {
    pub fn new(code: &'static str, status: StatusCode, message: impl Into<String>) -> Self {
        ApiError { code, status, message: message.into(), resource_id: None, resource_arn: None, log_reason: None }
    }

    pub fn invalid_request(message: impl Into<String>) -> Self {
        ApiError::new("InvalidRequestException", StatusCode::BAD_REQUEST, message)
    }

    /// Adds a detail that is logged but not sent.
    pub fn with_log_reason(mut self, reason: impl Into<String>) -> Self {
        self.log_reason = Some(reason.into());
        self
    }

    /// What AWS answers for an access key it does not know (deleted, or its account deleted).
    pub fn unrecognized_client() -> Self {
        ApiError::new(
            "UnrecognizedClientException",
            StatusCode::FORBIDDEN,
            "The security token included in the request is invalid.",
        )
    }

    pub fn internal() -> Self {
        ApiError::new("InternalFailureException", StatusCode::INTERNAL_SERVER_ERROR, "internal failure")
    }
}

use certfleet_services::TemplateRefusal;

impl From<certfleet_services::Error> for ApiError {
    fn from(error: certfleet_services::Error) -> Self {
        use certfleet_services::Error as E;
        let message = error.to_string();
        let (code, status) = match &error {
            E::InvalidRequest(_) => ("InvalidRequestException", StatusCode::BAD_REQUEST),
            E::NotFound(_) => ("ResourceNotFoundException", StatusCode::NOT_FOUND),
            E::AlreadyExists { resource_id, resource_arn, .. } => {
                return ApiError {
                    code: "ResourceAlreadyExistsException",
                    status: StatusCode::CONFLICT,
                    message,
                    resource_id: Some(resource_id.clone()),
                    resource_arn: resource_arn.clone(),
                    log_reason: None,
                };
            }
            E::CertificateState(_) => ("CertificateStateException", StatusCode::NOT_ACCEPTABLE),
            E::CertificateValidation(_) => ("CertificateValidationException", StatusCode::BAD_REQUEST),
            E::RegistrationCodeValidation(_) => ("RegistrationCodeValidationException", StatusCode::BAD_REQUEST),
            E::CertificateConflict(_) => ("CertificateConflictException", StatusCode::CONFLICT),
            E::DeleteConflict(_) => ("DeleteConflictException", StatusCode::CONFLICT),
            E::TransferConflict(_) => ("TransferConflictException", StatusCode::CONFLICT),
            E::TransferAlreadyCompleted(_) => ("TransferAlreadyCompletedException", StatusCode::GONE),
            E::LimitExceeded(_) => ("LimitExceededException", StatusCode::GONE),
            E::MalformedPolicy(_) => ("MalformedPolicyException", StatusCode::BAD_REQUEST),
            E::VersionsLimitExceeded(_) => ("VersionsLimitExceededException", StatusCode::CONFLICT),
            E::VersionConflict(_) => ("VersionConflictException", StatusCode::CONFLICT),
            // AWS's RegisterThing answers a template that does not resolve with
            // InvalidRequestException.
            E::InvalidParameters(_) => ("InvalidRequestException", StatusCode::BAD_REQUEST),
            E::ResourceRegistrationFailure(_) => ("ResourceRegistrationFailureException", StatusCode::BAD_REQUEST),
            E::ConflictingResourceUpdate(_) => ("ConflictingResourceUpdateException", StatusCode::CONFLICT),
            E::TemplateNotUsable { why, .. } => match why {
                TemplateRefusal::NotFound => ("ResourceNotFoundException", StatusCode::NOT_FOUND),
                TemplateRefusal::Disabled | TemplateRefusal::NotFleetProvisioning => {
                    ("InvalidRequestException", StatusCode::BAD_REQUEST)
                }
            },
            E::SqlParse(_) => ("SqlParseException", StatusCode::BAD_REQUEST),
            // A deleted account is answered as its unknown access key would be.
            E::AccountGone(_) => {
                return ApiError::unrecognized_client().with_log_reason(message);
            }
            // AWS answers a rule the caller does not have with 401, not 404.
            E::RuleNotFound(_) => ("UnauthorizedException", StatusCode::UNAUTHORIZED),
            // An ACM ARN naming another account's or region's certificate, or an imported
            // certificate the endpoint cannot use, is the caller's mistake: IoT answers
            // InvalidRequestException (ACM's own routes map these in `acm.rs`).
            E::InvalidArn(_) | E::Validation(_) => ("InvalidRequestException", StatusCode::BAD_REQUEST),
            // IoT has no ResourceInUseException; a resource still referenced is a DeleteConflict.
            E::InUse(_) => ("DeleteConflictException", StatusCode::CONFLICT),
            E::Registry(_) | E::Internal(_) => {
                // Internal details go to the log, never to the caller.
                tracing::error!(error = %error, source = ?std::error::Error::source(&error), "internal failure");
                return ApiError::internal();
            }
        };
        ApiError::new(code, status, message)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut body = serde_json::json!({ "message": self.message });
        if let Some(id) = &self.resource_id {
            body["resourceId"] = id.clone().into();
        }
        if let Some(arn) = &self.resource_arn {
            body["resourceArn"] = arn.clone().into();
        }
        let mut response = (self.status, body.to_string()).into_response();
        let headers = response.headers_mut();
        headers.insert(http::header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
        if let Ok(value) = HeaderValue::from_str(&format!("{}:", self.code)) {
            headers.insert("x-amzn-ErrorType", value);
        }
        response.extensions_mut().insert(self);
        response
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use certfleet_services::Error as E;

    /// One of each variant. The exhaustive match makes a new variant fail to compile here until
    /// it has a row in the table below.
    fn every_variant() -> Vec<E> {
        let all = vec![
            E::InvalidRequest("x".into()),
            E::NotFound("x".into()),
            E::InvalidArn("x".into()),
            E::Validation("x".into()),
            E::InUse("x".into()),
            E::AlreadyExists { message: "x".into(), resource_id: "id".into(), resource_arn: None },
            E::CertificateState("x".into()),
            E::CertificateValidation("x".into()),
            E::RegistrationCodeValidation("x".into()),
            E::CertificateConflict("x".into()),
            E::DeleteConflict("x".into()),
            E::TransferConflict("x".into()),
            E::TransferAlreadyCompleted("x".into()),
            E::LimitExceeded("x".into()),
            E::MalformedPolicy("x".into()),
            E::VersionsLimitExceeded("x".into()),
            E::VersionConflict("x".into()),
            E::InvalidParameters("x".into()),
            E::ResourceRegistrationFailure("x".into()),
            E::ConflictingResourceUpdate("x".into()),
            E::TemplateNotUsable { template: "t".into(), why: TemplateRefusal::Disabled },
            E::SqlParse("x".into()),
            E::RuleNotFound("x".into()),
            E::Registry(certfleet_registry::Error::Aborted),
            E::Internal("x".into()),
            E::AccountGone(certfleet_registry::AccountId::parse("123456789012").expect("an account id")),
        ];
        for error in &all {
            match error {
                E::InvalidRequest(_)
                | E::NotFound(_)
                | E::InvalidArn(_)
                | E::Validation(_)
                | E::InUse(_)
                | E::AlreadyExists { .. }
                | E::CertificateState(_)
                | E::CertificateValidation(_)
                | E::RegistrationCodeValidation(_)
                | E::CertificateConflict(_)
                | E::DeleteConflict(_)
                | E::TransferConflict(_)
                | E::TransferAlreadyCompleted(_)
                | E::LimitExceeded(_)
                | E::MalformedPolicy(_)
                | E::VersionsLimitExceeded(_)
                | E::VersionConflict(_)
                | E::InvalidParameters(_)
                | E::ResourceRegistrationFailure(_)
                | E::ConflictingResourceUpdate(_)
                | E::TemplateNotUsable { .. }
                | E::SqlParse(_)
                | E::RuleNotFound(_)
                | E::Registry(_)
                | E::Internal(_)
                | E::AccountGone(_) => {}
            }
        }
        all
    }

    fn expected(kind: &str) -> (&'static str, u16) {
        match kind {
            "InvalidRequest" | "InvalidArn" | "Validation" | "InvalidParameters" => ("InvalidRequestException", 400),
            "ResourceRegistrationFailure" => ("ResourceRegistrationFailureException", 400),
            "ConflictingResourceUpdate" => ("ConflictingResourceUpdateException", 409),
            "TemplateNotUsable" => ("InvalidRequestException", 400),
            "NotFound" => ("ResourceNotFoundException", 404),
            "InUse" | "DeleteConflict" => ("DeleteConflictException", 409),
            "AlreadyExists" => ("ResourceAlreadyExistsException", 409),
            "CertificateState" => ("CertificateStateException", 406),
            "CertificateValidation" => ("CertificateValidationException", 400),
            "RegistrationCodeValidation" => ("RegistrationCodeValidationException", 400),
            "CertificateConflict" => ("CertificateConflictException", 409),
            "TransferConflict" => ("TransferConflictException", 409),
            "TransferAlreadyCompleted" => ("TransferAlreadyCompletedException", 410),
            "LimitExceeded" => ("LimitExceededException", 410),
            "MalformedPolicy" => ("MalformedPolicyException", 400),
            "VersionsLimitExceeded" => ("VersionsLimitExceededException", 409),
            "VersionConflict" => ("VersionConflictException", 409),
            "SqlParse" => ("SqlParseException", 400),
            "RuleNotFound" => ("UnauthorizedException", 401),
            "Registry" | "Internal" => ("InternalFailureException", 500),
            "AccountGone" => ("UnrecognizedClientException", 403),
            other => panic!("no expected mapping for {other}"),
        }
    }

    #[test]
    fn every_services_error_has_its_aws_shape() {
        for error in every_variant() {
            let kind = error.kind();
            let mapped = ApiError::from(error);
            assert_eq!((mapped.code, mapped.status.as_u16()), expected(kind), "{kind}");
        }
    }

    #[test]
    fn only_server_faults_are_500() {
        let faults: Vec<&str> = every_variant()
            .into_iter()
            .filter_map(|error| {
                let kind = error.kind();
                ApiError::from(error).status.is_server_error().then_some(kind)
            })
            .collect();
        assert_eq!(faults, ["Registry", "Internal"]);
    }
}
