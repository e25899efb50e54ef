//! AWS Signature Version 4 (`AWS4-HMAC-SHA256`): signing requests and verifying their signatures.
//!
//! Pure: no IO, no clock. The caller passes the request as it arrived (raw path and query, headers,
//! body) and the current time. A server calls [`parse_request_auth`], looks up the secret for
//! [`Authorization::access_key_id`], derives (or fetches from its cache) a [`SigningKey`] and calls
//! [`verify`]. A client calls [`sign`] and adds the returned headers.
//!
//! **Architecture Invariant:** this crate knows the SigV4 algorithm and nothing of the AWS error
//! wire shapes; the api crate maps [`Error`] to `IncompleteSignatureException`,
//! `InvalidSignatureException`, `MissingAuthenticationTokenException` and so on.

mod authorization;
mod canonical;

use std::fmt;

use aws_lc_rs::hmac;
use time::{Duration, OffsetDateTime};

pub use authorization::{Authorization, parse_authorization, parse_request_auth};
pub use canonical::{PayloadDigest, PayloadHasher, canonical_request};

use authorization::{format_amz_date, format_scope_date};
use canonical::{canonical_request_for_body_hash, canonical_request_with_payload_hash, header_value, hex_sha256};

/// The only signing algorithm supported.
const ALGORITHM: &str = "AWS4-HMAC-SHA256";

/// The last part of every SigV4 credential scope.
const SCOPE_TERMINATOR: &str = "aws4_request";

/// An HTTP request as received (server) or about to be sent (client).
#[derive(Clone, Copy, Debug)]
pub struct Request<'a> {
    /// The method, e.g. `GET`, as sent.
    pub method: &'a str,
    /// The path exactly as on the request line, still percent-encoded (`/attached-policies/arn%3Aaws…`).
    pub raw_path: &'a str,
    /// The query string exactly as sent, without the `?`; `""` if none.
    pub raw_query: &'a str,
    /// Header names in any case; a repeated header appears once per occurrence.
    pub headers: &'a [(&'a str, &'a str)],
    /// The body bytes (empty if none).
    pub body: &'a [u8],
}

/// A SigV4 signing key, derived from a secret for one (date, region, service) scope.
///
/// Deriving takes four HMACs; a server may cache keys per (access key, date, region, service).
#[derive(Clone)]
pub struct SigningKey(hmac::Key);

impl SigningKey {
    /// Derives the key: HMAC-SHA256 chained over `"AWS4" + secret`, `date` (`yyyymmdd`), `region`,
    /// `service` and `aws4_request`.
    #[must_use]
    pub fn derive(secret_access_key: &str, date: &str, region: &str, service: &str) -> Self {
        let secret = hmac::Key::new(hmac::HMAC_SHA256, format!("AWS4{secret_access_key}").as_bytes());
        let mut derived = hmac::sign(&secret, date.as_bytes());
        for scope_part in [region, service, SCOPE_TERMINATOR] {
            derived = hmac::sign(&hmac::Key::new(hmac::HMAC_SHA256, derived.as_ref()), scope_part.as_bytes());
        }
        Self(hmac::Key::new(hmac::HMAC_SHA256, derived.as_ref()))
    }
}

impl fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SigningKey(..)")
    }
}

/// What a verifier accepts.
#[derive(Clone, Copy, Debug)]
pub struct VerifyPolicy<'a> {
    /// The region this endpoint serves; the credential scope must name it.
    pub region: &'a str,
    /// The signing name of the service, e.g. `iot`; the credential scope must name it.
    pub service: &'a str,
    /// How far the request time may be from now, either way. AWS uses 5 minutes.
    pub max_clock_skew: Duration,
}

/// The part of a credential scope that did not match.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ScopeComponent {
    /// The `yyyymmdd` date, which must be the request time's day.
    Date,
    /// The region.
    Region,
    /// The service signing name.
    Service,
    /// The final `aws4_request`.
    Terminator,
}

impl fmt::Display for ScopeComponent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Date => "date",
            Self::Region => "region",
            Self::Service => "service",
            Self::Terminator => "terminator",
        })
    }
}

/// Why a request's signature was not accepted.
#[derive(Clone, Debug, thiserror::Error, PartialEq, Eq)]
pub enum Error {
    /// The request has no `Authorization` header at all.
    #[error("missing authentication token")]
    MissingAuthentication,
    /// The `Authorization` header is not well-formed, or the `X-Amz-Date`/`Date` header is missing,
    /// repeated or unparsable (AWS: `IncompleteSignatureException`).
    #[error("incomplete signature: {0}")]
    Malformed(String),
    /// The `Authorization` header names an algorithm other than `AWS4-HMAC-SHA256`.
    #[error("unsupported signing algorithm {0:?}")]
    UnsupportedAlgorithm(String),
    /// A credential scope part does not match (wrong region, service, day or terminator).
    #[error("credential scope {component} is {found:?}, expected {expected:?}")]
    WrongScope {
        /// Which part of the scope.
        component: ScopeComponent,
        /// What the request said.
        found: String,
        /// What was required.
        expected: String,
    },
    /// The request time is not within `max_clock_skew` of now, in either direction.
    /// [`clock_skew_message`] gives AWS's wording.
    #[error("signature {}", skew_detail(*.request_time, *.now, *.max_clock_skew))]
    SignatureExpired {
        /// The time the request claims it was signed.
        request_time: OffsetDateTime,
        /// The verifier's time.
        now: OffsetDateTime,
        /// The skew that was allowed.
        max_clock_skew: Duration,
    },
    /// A header that must be signed (`host`, `x-amz-date` or `date`) is not in `SignedHeaders`.
    #[error("header {0:?} must be signed")]
    HeaderNotSigned(String),
    /// A header named in `SignedHeaders` is not in the request.
    #[error("signed header {0:?} is missing from the request")]
    MissingSignedHeader(String),
    /// `x-amz-content-sha256` is neither `UNSIGNED-PAYLOAD` nor the SHA-256 of the body.
    #[error("x-amz-content-sha256 does not match the body")]
    PayloadHashMismatch,
    /// The signature is not the one computed from the request and the secret key.
    #[error("the request signature does not match the calculated signature")]
    SignatureMismatch,
}

/// AWS's message for a request outside the clock skew window, e.g. `Signature expired:
/// 20261124T205907Z is now earlier than 20261124T210907Z (20261124T211407Z - 5 min.)` or `Signature not
/// yet current: … is still later than … (… + 5 min.)`.
#[must_use]
pub fn clock_skew_message(request_time: OffsetDateTime, now: OffsetDateTime, max_clock_skew: Duration) -> String {
    format!("Signature {}", skew_detail(request_time, now, max_clock_skew))
}

/// The clock skew message after its first word.
fn skew_detail(request_time: OffsetDateTime, now: OffsetDateTime, max_clock_skew: Duration) -> String {
    let skew = if max_clock_skew.whole_seconds() % 60 == 0 {
        format!("{} min.", max_clock_skew.whole_minutes())
    } else {
        format!("{} sec.", max_clock_skew.whole_seconds())
    };
    let (request, current) = (format_amz_date(request_time), format_amz_date(now));
    if request_time <= now {
        let limit = format_amz_date(now - max_clock_skew);
        format!("expired: {request} is now earlier than {limit} ({current} - {skew})")
    } else {
        let limit = format_amz_date(now + max_clock_skew);
        format!("not yet current: {request} is still later than {limit} ({current} + {skew})")
    }
}

/// Verifies a request's SigV4 signature.
///
/// Checks, in order: everything [`check_head`] checks; the signature recomputed with `key` over
/// `req.body` equals the given one (compared in constant time).
///
/// # Errors
///
/// The first check that fails, as [`Error::WrongScope`], [`Error::SignatureExpired`],
/// [`Error::HeaderNotSigned`], [`Error::MissingSignedHeader`], [`Error::PayloadHashMismatch`] or
/// [`Error::SignatureMismatch`].
pub fn verify(
    req: &Request<'_>,
    auth: &Authorization,
    request_time: OffsetDateTime,
    key: &SigningKey,
    policy: &VerifyPolicy<'_>,
    now: OffsetDateTime,
) -> Result<(), Error> {
    check_head(req, auth, request_time, policy, now)?;
    check_signature(req, auth, request_time, key, hex_sha256(req.body))
}

/// Checks what the request's head alone decides, before its body is read (a server refuses a
/// request failing these without holding its body): the scope's region and service are the
/// policy's and its date is the request time's day; the request time is within
/// `max_clock_skew` of `now`; `host` and the date header (`x-amz-date`, or `date` when there is
/// no `x-amz-date`) are signed; every signed header is present. `req.body` is not read.
///
/// # Errors
///
/// [`Error::WrongScope`], [`Error::SignatureExpired`], [`Error::HeaderNotSigned`] or
/// [`Error::MissingSignedHeader`].
pub fn check_head(
    req: &Request<'_>,
    auth: &Authorization,
    request_time: OffsetDateTime,
    policy: &VerifyPolicy<'_>,
    now: OffsetDateTime,
) -> Result<(), Error> {
    let request_date = format_scope_date(request_time);
    for (component, found, expected) in [
        (ScopeComponent::Region, &auth.region, policy.region),
        (ScopeComponent::Service, &auth.service, policy.service),
        (ScopeComponent::Date, &auth.date, &request_date),
    ] {
        if found != expected {
            return Err(Error::WrongScope { component, found: found.clone(), expected: expected.to_owned() });
        }
    }

    if (now - request_time).abs() > policy.max_clock_skew {
        return Err(Error::SignatureExpired { request_time, now, max_clock_skew: policy.max_clock_skew });
    }

    let date_header = if header_value(req.headers, "x-amz-date").is_some() { "x-amz-date" } else { "date" };
    for required in ["host", date_header] {
        if !auth.signed_headers.iter().any(|signed| signed == required) {
            return Err(Error::HeaderNotSigned(required.to_owned()));
        }
    }
    if let Some(missing) = auth.signed_headers.iter().find(|name| header_value(req.headers, name).is_none()) {
        return Err(Error::MissingSignedHeader(missing.clone()));
    }
    Ok(())
}

/// [`verify`] for a body that was hashed as it streamed in: `body` is the [`PayloadHasher`]'s
/// digest of it, and `req.body` is not read (pass `&[]`).
///
/// # Errors
///
/// As [`verify`].
pub fn verify_streamed(
    req: &Request<'_>,
    auth: &Authorization,
    request_time: OffsetDateTime,
    key: &SigningKey,
    policy: &VerifyPolicy<'_>,
    now: OffsetDateTime,
    body: PayloadDigest,
) -> Result<(), Error> {
    check_head(req, auth, request_time, policy, now)?;
    check_signature(req, auth, request_time, key, body.0)
}

/// The signature recomputed over the request (with `body_hash` as the body's hex SHA-256)
/// against the given one, in constant time.
fn check_signature(
    req: &Request<'_>,
    auth: &Authorization,
    request_time: OffsetDateTime,
    key: &SigningKey,
    body_hash: String,
) -> Result<(), Error> {
    let canonical = canonical_request_for_body_hash(req, &auth.signed_headers, body_hash)?;
    let scope = format!("{}/{}/{}/{SCOPE_TERMINATOR}", auth.date, auth.region, auth.service);
    let string_to_sign = string_to_sign(&format_amz_date(request_time), &scope, &canonical);
    let claimed = hex::decode(&auth.signature).map_err(|_| Error::SignatureMismatch)?;
    hmac::verify(&key.0, string_to_sign.as_bytes(), &claimed).map_err(|_| Error::SignatureMismatch)
}

/// Signs `req` as a client and returns the headers to add: `x-amz-date` and `authorization`.
///
/// Signs `host`, `x-amz-date` and every header in `req.headers` (the caller must include `host`, as
/// sent, with its port). Headers named `authorization` or `x-amz-date` in `req.headers` are ignored
/// and must be replaced by the returned ones. An `x-amz-content-sha256` header, if given, is used as
/// the payload hash as it is.
#[must_use]
pub fn sign(
    req: &Request<'_>,
    access_key_id: &str,
    secret_access_key: &str,
    region: &str,
    service: &str,
    now: OffsetDateTime,
) -> Vec<(String, String)> {
    let amz_date = format_amz_date(now);
    let date = format_scope_date(now);
    let mut headers: Vec<(&str, &str)> = req
        .headers
        .iter()
        .copied()
        .filter(|(name, _)| !name.eq_ignore_ascii_case("authorization") && !name.eq_ignore_ascii_case("x-amz-date"))
        .collect();
    headers.push(("x-amz-date", &amz_date));
    let mut signed_headers: Vec<String> = headers.iter().map(|(name, _)| name.to_ascii_lowercase()).collect();
    signed_headers.sort_unstable();
    signed_headers.dedup();

    let payload_hash = header_value(&headers, "x-amz-content-sha256").unwrap_or_else(|| hex_sha256(req.body));
    let canonical =
        canonical_request_with_payload_hash(&Request { headers: &headers, ..*req }, &signed_headers, &payload_hash)
            .expect("every signed header is taken from the request's own headers");
    let scope = format!("{date}/{region}/{service}/{SCOPE_TERMINATOR}");
    let string_to_sign = string_to_sign(&amz_date, &scope, &canonical);
    let key = SigningKey::derive(secret_access_key, &date, region, service);
    let signature = hex::encode(hmac::sign(&key.0, string_to_sign.as_bytes()));
    let authorization = format!(
        "{ALGORITHM} Credential={access_key_id}/{scope}, SignedHeaders={}, Signature={signature}",
        signed_headers.join(";")
    );
    vec![("x-amz-date".to_owned(), amz_date), ("authorization".to_owned(), authorization)]
}

/// The string to sign: algorithm, request time, scope and the hex SHA-256 of the canonical request.
fn string_to_sign(amz_date: &str, scope: &str, canonical_request: &str) -> String {
    format!("{ALGORITHM}\n{amz_date}\n{scope}\n{}", hex_sha256(canonical_request.as_bytes()))
}
