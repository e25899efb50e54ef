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
            E::SqlParse(_) => ("SqlParseException", StatusCode::BAD_REQUEST),
            // A deleted account is answered as its unknown access key would be.
            E::AccountGone(_) => {
                return ApiError::unrecognized_client().with_log_reason(message);
            }
            // AWS answers a rule the caller does not have with 401, not 404.
            E::RuleNotFound(_) => ("UnauthorizedException", StatusCode::UNAUTHORIZED),
            _ => {
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
