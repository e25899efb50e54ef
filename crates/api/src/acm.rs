//! The AWS Certificate Manager calls that matter for server certificates: ImportCertificate,
//! DescribeCertificate, ListCertificates, GetCertificate and DeleteCertificate, in ACM's own
//! protocol (awsJson1.1: `POST /` with `X-Amz-Target: CertificateManager.<Operation>`, blobs in
//! base64, timestamps in epoch seconds, errors as `{"__type", "message"}`), signed for the
//! SigV4 service `acm`.

use std::sync::Arc;

use axum::Extension;
use axum::body::Bytes;
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use certfleet_services::{Caller, ServerCertificateDescription, ServerCertificateImport};
use http::{HeaderMap, HeaderValue, StatusCode};
use serde_json::{Value, json};
use zeroize::Zeroizing;

use crate::AppState;
use crate::error::ApiError;
use crate::wire::epoch_seconds;

/// The `X-Amz-Target` prefix of ACM operations.
pub const TARGET_PREFIX: &str = "CertificateManager.";

/// `POST /`: dispatches on `X-Amz-Target`.
pub async fn dispatch(
    State(state): State<Arc<AppState>>,
    Extension(caller): Extension<Caller>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let target = headers.get("x-amz-target").and_then(|value| value.to_str().ok()).unwrap_or("");
    let Some(operation) = target.strip_prefix(TARGET_PREFIX) else {
        return acm_error(ApiError::new(
            "UnknownOperationException",
            StatusCode::BAD_REQUEST,
            format!("no operation for X-Amz-Target {target:?}"),
        ));
    };
    let input: Value = if body.is_empty() {
        json!({})
    } else {
        match serde_json::from_slice(&body) {
            Ok(value @ Value::Object(_)) => value,
            _ => return acm_error(validation("the request body is not a JSON object")),
        }
    };
    let result = match operation {
        "ImportCertificate" => import(&state, caller, &input).await,
        "DescribeCertificate" => describe(&state, caller, &input).await,
        "ListCertificates" => list(&state, caller, &input).await,
        "GetCertificate" => get(&state, caller, &input).await,
        "DeleteCertificate" => delete(&state, caller, &input).await,
        other => Err(ApiError::new(
            "UnknownOperationException",
            StatusCode::BAD_REQUEST,
            format!("certfleet does not implement CertificateManager.{other}"),
        )),
    };
    match result {
        Ok(value) => {
            let mut response = (StatusCode::OK, value.to_string()).into_response();
            response
                .headers_mut()
                .insert(http::header::CONTENT_TYPE, HeaderValue::from_static("application/x-amz-json-1.1"));
            response
        }
        Err(error) => acm_error(error),
    }
}

/// An error in ACM's shape (the code in `__type` and in `x-amzn-ErrorType`).
fn acm_error(error: ApiError) -> Response {
    let mut response =
        (error.status, json!({ "__type": error.code, "message": error.message }).to_string()).into_response();
    let headers = response.headers_mut();
    headers.insert(http::header::CONTENT_TYPE, HeaderValue::from_static("application/x-amz-json-1.1"));
    if let Ok(value) = HeaderValue::from_str(error.code) {
        headers.insert("x-amzn-ErrorType", value);
    }
    response.extensions_mut().insert(error);
    response
}

/// Services errors in ACM's vocabulary.
fn acm(error: certfleet_services::Error) -> ApiError {
    use certfleet_services::Error as E;
    let message = error.to_string();
    match error {
        E::NotFound(_) => ApiError::new("ResourceNotFoundException", StatusCode::BAD_REQUEST, message),
        E::InvalidArn(_) => ApiError::new("InvalidArnException", StatusCode::BAD_REQUEST, message),
        E::InUse(_) => ApiError::new("ResourceInUseException", StatusCode::BAD_REQUEST, message),
        E::Validation(_) | E::InvalidRequest(_) | E::CertificateValidation(_) => validation(message),
        E::LimitExceeded(_) => ApiError::new("LimitExceededException", StatusCode::BAD_REQUEST, message),
        other => ApiError::from(other),
    }
}

fn validation(message: impl Into<String>) -> ApiError {
    ApiError::new("ValidationException", StatusCode::BAD_REQUEST, message)
}

fn text<'a>(input: &'a Value, member: &str) -> Result<Option<&'a str>, ApiError> {
    match input.get(member) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(text)) => Ok(Some(text)),
        Some(_) => Err(validation(format!("{member} must be a string"))),
    }
}

fn required_arn(input: &Value) -> Result<String, ApiError> {
    text(input, "CertificateArn")?
        .filter(|arn| !arn.is_empty())
        .map(str::to_owned)
        .ok_or_else(|| validation("CertificateArn is required"))
}

/// A blob member: base64 on the wire; its bytes must be text (PEM).
fn blob(input: &Value, member: &str) -> Result<Option<Zeroizing<String>>, ApiError> {
    let Some(encoded) = text(input, member)? else { return Ok(None) };
    let bytes =
        Zeroizing::new(STANDARD.decode(encoded).map_err(|_| validation(format!("{member} is not valid base64")))?);
    let text = std::str::from_utf8(&bytes).map_err(|_| validation(format!("{member} is not PEM text")))?;
    Ok(Some(Zeroizing::new(text.to_owned())))
}

async fn import(state: &Arc<AppState>, caller: Caller, input: &Value) -> Result<Value, ApiError> {
    let certificate = blob(input, "Certificate")?.ok_or_else(|| validation("Certificate is required"))?;
    let private_key = blob(input, "PrivateKey")?.ok_or_else(|| validation("PrivateKey is required"))?;
    if certificate.len() > 32 * 1024
        || private_key.len() > 5 * 1024
        || input.get("CertificateChain").is_some_and(|c| c.as_str().is_some_and(|c| c.len() > 3 * 2_097_152 / 2))
    {
        return Err(validation("a member exceeds ACM's size limit"));
    }
    let import = ServerCertificateImport {
        certificate_pem: certificate.to_string(),
        private_key_pem: private_key,
        chain_pem: blob(input, "CertificateChain")?.map(|chain| chain.to_string()),
        certificate_arn: text(input, "CertificateArn")?.map(str::to_owned),
    };
    let services = state.services.clone();
    let arn = tokio::task::spawn_blocking(move || services.import_server_certificate(&caller, &import))
        .await
        .map_err(|_| ApiError::internal())?
        .map_err(acm)?;
    Ok(json!({ "CertificateArn": arn }))
}

async fn describe(state: &Arc<AppState>, caller: Caller, input: &Value) -> Result<Value, ApiError> {
    let arn = required_arn(input)?;
    let services = state.services.clone();
    let now = services.now();
    let found = tokio::task::spawn_blocking(move || services.describe_server_certificate(&caller, &arn))
        .await
        .map_err(|_| ApiError::internal())?
        .map_err(acm)?;
    Ok(json!({ "Certificate": detail(&found, now) }))
}

fn status(found: &ServerCertificateDescription, now: time::OffsetDateTime) -> &'static str {
    if found.record.not_after < now { "EXPIRED" } else { "ISSUED" }
}

fn detail(found: &ServerCertificateDescription, now: time::OffsetDateTime) -> Value {
    let certificate = &found.certificate;
    json!({
        "CertificateArn": found.arn,
        "DomainName": found.record.domain_name,
        "SubjectAlternativeNames": certificate.dns_names(),
        "Serial": certificate.serial_hex(),
        "Subject": certificate.subject_string(),
        "Issuer": certificate.issuer_string(),
        "ImportedAt": epoch_seconds(found.record.imported_at),
        "CreatedAt": epoch_seconds(found.record.imported_at),
        "Status": status(found, now),
        "NotBefore": epoch_seconds(found.record.not_before),
        "NotAfter": epoch_seconds(found.record.not_after),
        "KeyAlgorithm": found.record.key_algorithm,
        "SignatureAlgorithm": certificate.signature_algorithm().map(|a| a.name().to_owned()).unwrap_or_default(),
        "InUseBy": found.in_use_by,
        "Type": "IMPORTED",
        "RenewalEligibility": "INELIGIBLE",
        "CertificateKeyPairOrigin": "CUSTOMER_PROVIDED",
    })
}

async fn list(state: &Arc<AppState>, caller: Caller, input: &Value) -> Result<Value, ApiError> {
    let max_items = match input.get("MaxItems") {
        None | Some(Value::Null) => 1000,
        Some(value) => value
            .as_u64()
            .filter(|n| (1..=1000).contains(n))
            .ok_or_else(|| validation("MaxItems must be between 1 and 1000"))? as u32,
    };
    let after = match text(input, "NextToken")? {
        None | Some("") => None,
        Some(token) => Some(certfleet_services::decode_token(token).map_err(|_| {
            ApiError::new("InvalidArgsException", StatusCode::BAD_REQUEST, "the NextToken is not one certfleet issued")
        })?),
    };
    let statuses: Vec<String> = match input.get("CertificateStatuses") {
        Some(Value::Array(items)) => items.iter().filter_map(|s| s.as_str().map(str::to_owned)).collect(),
        _ => Vec::new(),
    };
    let services = state.services.clone();
    let now = services.now();
    let (items, next) =
        tokio::task::spawn_blocking(move || services.list_server_certificates(&caller, after, max_items))
            .await
            .map_err(|_| ApiError::internal())?
            .map_err(acm)?;
    let summaries: Vec<Value> = items
        .iter()
        .filter(|found| statuses.is_empty() || statuses.iter().any(|s| s == status(found, now)))
        .map(|found| {
            json!({
                "CertificateArn": found.arn,
                "DomainName": found.record.domain_name,
                "SubjectAlternativeNameSummaries": found.certificate.dns_names(),
                "HasAdditionalSubjectAlternativeNames": false,
                "Status": status(found, now),
                "Type": "IMPORTED",
                "KeyAlgorithm": found.record.key_algorithm,
                "InUse": !found.in_use_by.is_empty(),
                "RenewalEligibility": "INELIGIBLE",
                "NotBefore": epoch_seconds(found.record.not_before),
                "NotAfter": epoch_seconds(found.record.not_after),
                "ImportedAt": epoch_seconds(found.record.imported_at),
                "CertificateKeyPairOrigin": "CUSTOMER_PROVIDED",
            })
        })
        .collect();
    let mut out = json!({ "CertificateSummaryList": summaries });
    if let Some(next) = next {
        out["NextToken"] = certfleet_services::encode_token(&next).into();
    }
    Ok(out)
}

async fn get(state: &Arc<AppState>, caller: Caller, input: &Value) -> Result<Value, ApiError> {
    let arn = required_arn(input)?;
    let services = state.services.clone();
    let (certificate, chain) = tokio::task::spawn_blocking(move || services.get_server_certificate(&caller, &arn))
        .await
        .map_err(|_| ApiError::internal())?
        .map_err(acm)?;
    let mut out = json!({ "Certificate": certificate });
    if let Some(chain) = chain {
        out["CertificateChain"] = chain.into();
    }
    Ok(out)
}

async fn delete(state: &Arc<AppState>, caller: Caller, input: &Value) -> Result<Value, ApiError> {
    let arn = required_arn(input)?;
    let services = state.services.clone();
    tokio::task::spawn_blocking(move || services.delete_server_certificate(&caller, &arn))
        .await
        .map_err(|_| ApiError::internal())?
        .map_err(acm)?;
    Ok(json!({}))
}
