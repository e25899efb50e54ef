//! The AWS IoT wire shapes (restJson1) and their conversion from domain values, by hand.
//!
//! Domain types do not derive `Serialize`; these structs are the only place the AWS member
//! names, capitalisation quirks (`KeyPair.PublicKey`) and timestamp format (epoch seconds as a
//! JSON number, millisecond precision) live.

use std::collections::HashMap;

use certfleet_registry::{
    CaCertificate, CaStatus, CertificateMode, CertificateStatus, DeviceCertificate, RegistrationConfig, Tag,
};
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use crate::error::ApiError;

/// A timestamp as AWS sends it: epoch seconds with millisecond fractions.
pub fn epoch_seconds(time: OffsetDateTime) -> f64 {
    (time.unix_timestamp_nanos() / 1_000_000) as f64 / 1000.0
}

fn opt_epoch(time: Option<OffsetDateTime>) -> Option<f64> {
    time.map(epoch_seconds)
}

// ---- requests ---------------------------------------------------------------------------------

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase")]
pub struct RegisterCaCertificateRequest {
    pub ca_certificate: Option<String>,
    pub verification_certificate: Option<String>,
    pub registration_config: Option<WireRegistrationConfig>,
    pub tags: Option<Vec<WireTag>>,
    pub certificate_mode: Option<String>,
}

#[derive(Deserialize, Serialize, Default, Clone)]
#[serde(rename_all = "camelCase")]
pub struct WireRegistrationConfig {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub template_body: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub role_arn: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub template_name: Option<String>,
}

#[derive(Deserialize)]
pub struct WireTag {
    #[serde(rename = "Key")]
    pub key: String,
    #[serde(rename = "Value", default)]
    pub value: Option<String>,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase")]
pub struct UpdateCaCertificateRequest {
    pub registration_config: Option<WireRegistrationConfig>,
    pub remove_auto_registration: Option<bool>,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase")]
pub struct CreateCertificateFromCsrRequest {
    pub certificate_signing_request: Option<String>,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase")]
pub struct RegisterCertificateRequest {
    pub certificate_pem: Option<String>,
    pub ca_certificate_pem: Option<String>,
    pub status: Option<String>,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase")]
pub struct TransferCertificateRequest {
    pub transfer_message: Option<String>,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase")]
pub struct RejectCertificateTransferRequest {
    pub reject_reason: Option<String>,
}

// ---- responses --------------------------------------------------------------------------------

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
pub struct CertificateArnAndId {
    pub certificate_arn: String,
    pub certificate_id: String,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
pub struct CreatedCertificate {
    pub certificate_arn: String,
    pub certificate_id: String,
    pub certificate_pem: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub key_pair: Option<KeyPair>,
}

#[derive(Serialize)]
pub struct KeyPair {
    #[serde(rename = "PublicKey")]
    pub public_key: String,
    #[serde(rename = "PrivateKey")]
    pub private_key: String,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Validity {
    pub not_before: f64,
    pub not_after: f64,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
pub struct CaCertificateDescription {
    pub certificate_arn: String,
    pub certificate_id: String,
    pub status: &'static str,
    pub certificate_pem: String,
    pub owned_by: String,
    pub creation_date: f64,
    pub auto_registration_status: &'static str,
    pub last_modified_date: f64,
    pub customer_version: i64,
    pub generation_id: String,
    pub validity: Validity,
    pub certificate_mode: &'static str,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
pub struct DescribeCaCertificateResponse {
    pub certificate_description: CaCertificateDescription,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub registration_config: Option<WireRegistrationConfig>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
pub struct TransferDataWire {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub transfer_message: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reject_reason: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub transfer_date: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub accept_date: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reject_date: Option<f64>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
pub struct CertificateDescription {
    pub certificate_arn: String,
    pub certificate_id: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ca_certificate_id: Option<String>,
    pub status: &'static str,
    pub certificate_pem: String,
    pub owned_by: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub previous_owned_by: Option<String>,
    pub creation_date: f64,
    pub last_modified_date: f64,
    pub customer_version: i64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub transfer_data: Option<TransferDataWire>,
    pub generation_id: String,
    pub validity: Validity,
    pub certificate_mode: &'static str,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
pub struct DescribeCertificateResponse {
    pub certificate_description: CertificateDescription,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
pub struct CaCertificateSummary {
    pub certificate_arn: String,
    pub certificate_id: String,
    pub status: &'static str,
    pub creation_date: f64,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
pub struct CertificateSummary {
    pub certificate_arn: String,
    pub certificate_id: String,
    pub status: &'static str,
    pub certificate_mode: &'static str,
    pub creation_date: f64,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ListResponse<T> {
    pub certificates: Vec<T>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next_marker: Option<String>,
}

// ---- conversions ------------------------------------------------------------------------------

pub fn registration_config_to_wire(config: &RegistrationConfig) -> WireRegistrationConfig {
    WireRegistrationConfig {
        template_body: config.template_body.clone(),
        role_arn: config.role_arn.clone(),
        template_name: config.template_name.clone(),
    }
}

pub fn registration_config_from_wire(config: WireRegistrationConfig) -> Result<RegistrationConfig, ApiError> {
    if let Some(body) = &config.template_body
        && body.len() > 10_240
    {
        return Err(ApiError::invalid_request("registrationConfig.templateBody exceeds 10240 characters"));
    }
    if let Some(role) = &config.role_arn
        && !(20..=2048).contains(&role.len())
    {
        return Err(ApiError::invalid_request("registrationConfig.roleArn must be 20 to 2048 characters"));
    }
    if let Some(name) = &config.template_name
        && (name.is_empty()
            || name.len() > 36
            || !name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-'))
    {
        return Err(ApiError::invalid_request("registrationConfig.templateName must match ^[0-9A-Za-z_-]+$ (1-36)"));
    }
    Ok(RegistrationConfig {
        template_body: config.template_body,
        role_arn: config.role_arn,
        template_name: config.template_name,
    })
}

pub fn tags_from_wire(tags: Option<Vec<WireTag>>) -> Result<Vec<Tag>, ApiError> {
    tags.unwrap_or_default()
        .into_iter()
        .map(|tag| {
            if tag.key.is_empty() || tag.key.chars().count() > 128 {
                return Err(ApiError::invalid_request("a tag key must be 1 to 128 characters"));
            }
            let value = tag.value.unwrap_or_default();
            if value.chars().count() > 256 {
                return Err(ApiError::invalid_request("a tag value must be at most 256 characters"));
            }
            Ok(Tag { key: tag.key, value })
        })
        .collect()
}

pub fn certificate_mode(text: &str) -> Result<CertificateMode, ApiError> {
    CertificateMode::parse(text)
        .ok_or_else(|| ApiError::invalid_request(format!("certificateMode must be DEFAULT or SNI_ONLY, got {text:?}")))
}

pub fn certificate_status(text: &str) -> Result<CertificateStatus, ApiError> {
    CertificateStatus::parse(text)
        .ok_or_else(|| ApiError::invalid_request(format!("unknown certificate status {text:?}")))
}

pub fn ca_status(text: &str) -> Result<CaStatus, ApiError> {
    CaStatus::parse(text)
        .ok_or_else(|| ApiError::invalid_request(format!("CA status must be ACTIVE or INACTIVE, got {text:?}")))
}

pub fn ca_description(ca: &CaCertificate, arn: String) -> DescribeCaCertificateResponse {
    DescribeCaCertificateResponse {
        certificate_description: CaCertificateDescription {
            certificate_arn: arn,
            certificate_id: ca.id.to_string(),
            status: ca.status.as_str(),
            certificate_pem: ca.pem.clone(),
            owned_by: ca.account.to_string(),
            creation_date: epoch_seconds(ca.created_at),
            auto_registration_status: if ca.auto_registration { "ENABLE" } else { "DISABLE" },
            last_modified_date: epoch_seconds(ca.last_modified),
            customer_version: ca.customer_version,
            generation_id: ca.generation_id.clone(),
            validity: Validity { not_before: epoch_seconds(ca.not_before), not_after: epoch_seconds(ca.not_after) },
            certificate_mode: ca.mode.as_str(),
        },
        registration_config: ca.registration_config.as_ref().map(registration_config_to_wire),
    }
}

pub fn certificate_description(cert: &DeviceCertificate, arn: String) -> DescribeCertificateResponse {
    let transfer = &cert.transfer;
    let has_transfer = transfer.transfer_date.is_some() || transfer.pending_to.is_some();
    DescribeCertificateResponse {
        certificate_description: CertificateDescription {
            certificate_arn: arn,
            certificate_id: cert.id.to_string(),
            ca_certificate_id: cert.ca_certificate_id.as_ref().map(ToString::to_string),
            status: cert.status.as_str(),
            certificate_pem: cert.pem.clone(),
            owned_by: cert.account.to_string(),
            previous_owned_by: cert.previous_owner.as_ref().map(ToString::to_string),
            creation_date: epoch_seconds(cert.created_at),
            last_modified_date: epoch_seconds(cert.last_modified),
            customer_version: cert.customer_version,
            transfer_data: has_transfer.then(|| TransferDataWire {
                transfer_message: transfer.transfer_message.clone(),
                reject_reason: transfer.reject_reason.clone(),
                transfer_date: opt_epoch(transfer.transfer_date),
                accept_date: opt_epoch(transfer.accept_date),
                reject_date: opt_epoch(transfer.reject_date),
            }),
            generation_id: cert.generation_id.clone(),
            validity: Validity { not_before: epoch_seconds(cert.not_before), not_after: epoch_seconds(cert.not_after) },
            certificate_mode: cert.mode.as_str(),
        },
    }
}

/// Query parameters, decoded once; typed accessors give AWS errors for bad values.
pub struct Query(HashMap<String, String>);

impl Query {
    /// Decodes a query string. A parameter given twice (after decoding its name) is refused:
    /// no AWS IoT operation takes a list in its query string, and SigV4's canonical query sorts
    /// repeated values, so their order (which one would win) is not signed.
    pub fn parse(raw: Option<&str>) -> Result<Self, ApiError> {
        let mut params = HashMap::new();
        for pair in raw.unwrap_or("").split('&').filter(|pair| !pair.is_empty()) {
            let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
            // botocore percent-encodes everything but unreserved characters, so a bare `+` is a
            // plus sign (as in base64 markers), not a space.
            let decode = |text: &str| {
                percent_encoding::percent_decode_str(text)
                    .decode_utf8()
                    .map(|text| text.into_owned())
                    .map_err(|_| ApiError::invalid_request("the query string is not valid UTF-8"))
            };
            let key = decode(key)?;
            if params.contains_key(&key) {
                return Err(ApiError::invalid_request(format!(
                    "the query parameter {key:?} is given more than once; each is taken once"
                )));
            }
            params.insert(key, decode(value)?);
        }
        Ok(Query(params))
    }

    pub fn text(&self, name: &str) -> Option<&str> {
        self.0.get(name).map(String::as_str)
    }

    pub fn flag(&self, name: &str) -> Result<bool, ApiError> {
        match self.text(name) {
            None => Ok(false),
            Some("true") => Ok(true),
            Some("false") => Ok(false),
            Some(other) => Err(ApiError::invalid_request(format!("{name} must be true or false, got {other:?}"))),
        }
    }

    pub fn int(&self, name: &str, range: std::ops::RangeInclusive<u32>) -> Result<Option<u32>, ApiError> {
        self.text(name)
            .map(|text| {
                text.parse::<u32>().ok().filter(|value| range.contains(value)).ok_or_else(|| {
                    ApiError::invalid_request(format!(
                        "{name} must be an integer from {} to {}, got {text:?}",
                        range.start(),
                        range.end()
                    ))
                })
            })
            .transpose()
    }
}

/// Parses a JSON request body; an absent or empty body is the default value.
pub fn json_body<T: for<'de> Deserialize<'de> + Default>(body: &[u8]) -> Result<T, ApiError> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(T::default());
    }
    serde_json::from_slice(body)
        .map_err(|error| ApiError::invalid_request(format!("the request body is not valid: {error}")))
}

#[cfg(test)]
mod tests {
    use super::Query;

    #[test]
    fn a_query_parameter_is_taken_once() {
        let check = |raw: &str, expected: Option<(&str, Option<&str>)>| {
            let parsed = Query::parse(Some(raw));
            match expected {
                Some((name, value)) => assert_eq!(parsed.ok().as_ref().and_then(|q| q.text(name)), value, "{raw}"),
                None => {
                    let error = parsed.err().unwrap_or_else(|| panic!("{raw} was accepted"));
                    assert_eq!((error.code, error.status.as_u16()), ("InvalidRequestException", 400), "{raw}");
                }
            }
        };
        check("newStatus=REVOKED", Some(("newStatus", Some("REVOKED"))));
        check("newStatus=REVOKED&marker=x", Some(("marker", Some("x"))));
        check("a=1&&b=2", Some(("b", Some("2"))));
        check("newStatus=REVOKED&newStatus=INACTIVE", None);
        check("newStatus=INACTIVE&newStatus=REVOKED", None);
        check("newStatus=REVOKED&new%53tatus=INACTIVE", None);
        check("flag&flag=true", None);
        check("a=1&b=2&a=1", None);
        check("%FF=1", None);
    }
}
