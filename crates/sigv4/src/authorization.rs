//! Parsing the `Authorization` header and the request time (`X-Amz-Date`, else `Date`).
//!
//! Parsing is strict: anything that is not exactly the SigV4 header shape is refused with
//! [`Error::Malformed`] (AWS answers those with `IncompleteSignatureException`).

use time::macros::format_description;
use time::{Date, Month, OffsetDateTime, PrimitiveDateTime, Time};

use crate::{ALGORITHM, Error, Request, SCOPE_TERMINATOR, ScopeComponent};

/// A parsed `Authorization: AWS4-HMAC-SHA256 Credential=…, SignedHeaders=…, Signature=…` header.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Authorization {
    /// The access key id, first part of the credential scope.
    pub access_key_id: String,
    /// The scope date, `yyyymmdd`.
    pub date: String,
    /// The scope region, e.g. `us-east-1`.
    pub region: String,
    /// The scope service, e.g. `iot`.
    pub service: String,
    /// Lowercase header names, sorted, without duplicates.
    pub signed_headers: Vec<String>,
    /// 64 lowercase hex digits.
    pub signature: String,
}

/// Parses an `Authorization` header value.
///
/// # Errors
///
/// [`Error::UnsupportedAlgorithm`] for anything but `AWS4-HMAC-SHA256`, [`Error::WrongScope`] for a
/// scope terminator other than `aws4_request`, and [`Error::Malformed`] for every other problem.
pub fn parse_authorization(header_value: &str) -> Result<Authorization, Error> {
    let header_value = header_value.trim();
    let (algorithm, parameters) = header_value.split_once(' ').unwrap_or((header_value, ""));
    if algorithm != ALGORITHM {
        return Err(Error::UnsupportedAlgorithm(algorithm.to_owned()));
    }

    let mut credential = None;
    let mut signed_headers = None;
    let mut signature = None;
    let parameters = parameters.trim();
    if parameters.is_empty() {
        return Err(missing_parameter("Credential"));
    }
    for parameter in parameters.split(',').map(str::trim) {
        let Some((name, value)) = parameter.split_once('=') else {
            return Err(malformed(format!("authorization parameter {parameter:?} is not name=value")));
        };
        let slot = match name {
            "Credential" => &mut credential,
            "SignedHeaders" => &mut signed_headers,
            "Signature" => &mut signature,
            _ => {
                return Err(malformed(format!("unknown authorization parameter {name:?}")));
            }
        };
        if slot.replace(value).is_some() {
            return Err(malformed(format!("authorization parameter {name:?} appears twice")));
        }
    }
    let credential = credential.ok_or_else(|| missing_parameter("Credential"))?;
    let signed_headers = signed_headers.ok_or_else(|| missing_parameter("SignedHeaders"))?;
    let signature = signature.ok_or_else(|| missing_parameter("Signature"))?;

    let scope: Vec<&str> = credential.split('/').collect();
    let [access_key_id, date, region, service, terminator] = scope[..] else {
        return Err(malformed(format!(
            "credential {credential:?} is not access-key-id/yyyymmdd/region/service/aws4_request"
        )));
    };
    if access_key_id.is_empty() || region.is_empty() || service.is_empty() {
        return Err(malformed(format!("credential {credential:?} has an empty part")));
    }
    if parse_scope_date(date).is_none() {
        return Err(malformed(format!("credential date {date:?} is not a yyyymmdd date")));
    }
    if terminator != SCOPE_TERMINATOR {
        return Err(Error::WrongScope {
            component: ScopeComponent::Terminator,
            found: terminator.to_owned(),
            expected: SCOPE_TERMINATOR.to_owned(),
        });
    }

    let signed_headers: Vec<String> = signed_headers.split(';').map(str::to_owned).collect();
    let well_formed = |name: &String| !name.is_empty() && name.bytes().all(is_lowercase_token_byte);
    if !signed_headers.iter().all(well_formed) {
        return Err(malformed(format!("signed headers {:?} are not lowercase header names", signed_headers.join(";"))));
    }
    if !signed_headers.windows(2).all(|pair| pair[0] < pair[1]) {
        return Err(malformed(format!("signed headers {:?} are not sorted and unique", signed_headers.join(";"))));
    }

    if signature.len() != 64 || !signature.bytes().all(|byte| matches!(byte, b'0'..=b'9' | b'a'..=b'f')) {
        return Err(malformed("signature is not 64 lowercase hex digits".to_owned()));
    }

    Ok(Authorization {
        access_key_id: access_key_id.to_owned(),
        date: date.to_owned(),
        region: region.to_owned(),
        service: service.to_owned(),
        signed_headers,
        signature: signature.to_owned(),
    })
}

/// Finds and parses the `Authorization` header and the request time: `X-Amz-Date`
/// (`20261124T205907Z`) when present, else `Date` (`Tue, 24 Nov 2026 20:59:07 GMT`).
///
/// # Errors
///
/// [`Error::MissingAuthentication`] when there is no `Authorization` header; [`Error::Malformed`] for
/// a repeated header or a missing or unparsable date; the errors of [`parse_authorization`].
pub fn parse_request_auth(req: &Request<'_>) -> Result<(Authorization, OffsetDateTime), Error> {
    let authorization = match single_header(req, "authorization")? {
        Some(value) => parse_authorization(value)?,
        None => return Err(Error::MissingAuthentication),
    };
    let request_time = if let Some(amz_date) = single_header(req, "x-amz-date")? {
        parse_amz_date(amz_date).ok_or_else(|| malformed(format!("x-amz-date {amz_date:?} is not yyyymmddThhmmssZ")))?
    } else if let Some(http_date) = single_header(req, "date")? {
        parse_http_date(http_date).ok_or_else(|| malformed(format!("date {http_date:?} is not an RFC 1123 date")))?
    } else {
        return Err(malformed("the request has neither an x-amz-date nor a date header".to_owned()));
    };
    Ok((authorization, request_time))
}

/// Parses the ISO 8601 basic form SigV4 uses, `yyyymmddThhmmssZ`, and nothing else.
pub(crate) fn parse_amz_date(value: &str) -> Option<OffsetDateTime> {
    let bytes = value.as_bytes();
    if bytes.len() != 16 || bytes[8] != b'T' || bytes[15] != b'Z' {
        return None;
    }
    let date = parse_scope_date(&value[..8])?;
    let hour = digits(&value[9..11])?;
    let minute = digits(&value[11..13])?;
    let second = digits(&value[13..15])?;
    let time = Time::from_hms(hour.try_into().ok()?, minute.try_into().ok()?, second.try_into().ok()?).ok()?;
    Some(PrimitiveDateTime::new(date, time).assume_utc())
}

/// Formats `instant` (in UTC, whole seconds) as `yyyymmddThhmmssZ`.
pub(crate) fn format_amz_date(instant: OffsetDateTime) -> String {
    let utc = instant.to_offset(time::UtcOffset::UTC);
    format!(
        "{:04}{:02}{:02}T{:02}{:02}{:02}Z",
        utc.year(),
        u8::from(utc.month()),
        utc.day(),
        utc.hour(),
        utc.minute(),
        utc.second()
    )
}

/// The `yyyymmdd` day of `instant` in UTC.
pub(crate) fn format_scope_date(instant: OffsetDateTime) -> String {
    let mut amz_date = format_amz_date(instant);
    amz_date.truncate(8);
    amz_date
}

/// Parses `yyyymmdd` into a calendar date.
fn parse_scope_date(value: &str) -> Option<Date> {
    if value.len() != 8 || !value.is_ascii() {
        return None;
    }
    let year = digits(&value[..4])?;
    let month = Month::try_from(u8::try_from(digits(&value[4..6])?).ok()?).ok()?;
    let day = u8::try_from(digits(&value[6..8])?).ok()?;
    Date::from_calendar_date(year.try_into().ok()?, month, day).ok()
}

/// An unsigned decimal made only of ASCII digits (no sign, no spaces).
fn digits(value: &str) -> Option<u32> {
    if value.is_empty() || !value.bytes().all(|byte| byte.is_ascii_digit()) {
        return None;
    }
    value.parse().ok()
}

/// Parses an RFC 1123 `Date` header, `Tue, 24 Nov 2026 20:59:07 GMT`.
fn parse_http_date(value: &str) -> Option<OffsetDateTime> {
    let format =
        format_description!("[weekday repr:short], [day] [month repr:short] [year] [hour]:[minute]:[second] GMT");
    PrimitiveDateTime::parse(value.trim(), format).ok().map(PrimitiveDateTime::assume_utc)
}

/// The value of a header that may appear at most once, `None` when absent.
fn single_header<'a>(req: &Request<'a>, name: &str) -> Result<Option<&'a str>, Error> {
    let mut matching = req.headers.iter().filter(|(header_name, _)| header_name.eq_ignore_ascii_case(name));
    let first = matching.next().map(|(_, value)| *value);
    if matching.next().is_some() {
        return Err(malformed(format!("the {name} header appears more than once")));
    }
    Ok(first)
}

/// A byte allowed in a lowercase HTTP header name (RFC 9110 token, no uppercase).
fn is_lowercase_token_byte(byte: u8) -> bool {
    byte.is_ascii_lowercase() || byte.is_ascii_digit() || b"!#$%&'*+-.^_`|~".contains(&byte)
}

fn malformed(message: String) -> Error {
    Error::Malformed(message)
}

fn missing_parameter(name: &str) -> Error {
    malformed(format!("authorization header requires the {name:?} parameter"))
}
