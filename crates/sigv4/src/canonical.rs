//! The SigV4 canonical request: path, query, headers and payload hash in the exact form both sides hash.
//!
//! The rules follow what botocore sends for non-S3 services, which is what the AWS CLI and SDKs sign:
//! the path is normalised (dot segments and empty segments removed) and then URI-encoded once more,
//! even though it arrived percent-encoded already (`%3A` becomes `%253A`).

use aws_lc_rs::digest;
use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, percent_decode_str, percent_encode};

use crate::{Error, Request};

/// `x-amz-content-sha256` value that tells the verifier the body is not covered by the signature.
const UNSIGNED_PAYLOAD: &str = "UNSIGNED-PAYLOAD";

/// Everything but the SigV4 unreserved characters `A-Z a-z 0-9 - _ . ~` is percent-encoded.
const ENCODE_QUERY: &AsciiSet = &NON_ALPHANUMERIC.remove(b'-').remove(b'_').remove(b'.').remove(b'~');

/// As [`ENCODE_QUERY`], but `/` separates path segments and stays as it is.
const ENCODE_PATH: &AsciiSet = &ENCODE_QUERY.remove(b'/');

/// Builds the canonical request for `req`, covering the headers named in `signed_headers`.
///
/// `signed_headers` are lowercase names in the order they appear in the `SignedHeaders` list (sorted
/// for a well-formed request). The hashed payload is the `x-amz-content-sha256` header when present
/// (which must then match the body unless it is `UNSIGNED-PAYLOAD`), else the SHA-256 of the body.
///
/// # Errors
///
/// [`Error::MissingSignedHeader`] when a signed header is absent from the request, and
/// [`Error::PayloadHashMismatch`] when `x-amz-content-sha256` does not match the body.
pub fn canonical_request(req: &Request<'_>, signed_headers: &[String]) -> Result<String, Error> {
    canonical_request_for_body_hash(req, signed_headers, hex_sha256(req.body))
}

/// As [`canonical_request`], with the body's lowercase hex SHA-256 computed by the caller (while
/// the body streamed in); `req.body` is not read.
pub(crate) fn canonical_request_for_body_hash(
    req: &Request<'_>,
    signed_headers: &[String],
    body_hash: String,
) -> Result<String, Error> {
    let payload_hash = match header_value(req.headers, "x-amz-content-sha256") {
        None => body_hash,
        Some(claimed) if claimed == UNSIGNED_PAYLOAD || claimed.eq_ignore_ascii_case(&body_hash) => claimed,
        Some(_) => return Err(Error::PayloadHashMismatch),
    };
    canonical_request_with_payload_hash(req, signed_headers, &payload_hash)
}

/// The canonical request with the hashed payload already decided by the caller.
pub(crate) fn canonical_request_with_payload_hash(
    req: &Request<'_>,
    signed_headers: &[String],
    payload_hash: &str,
) -> Result<String, Error> {
    let mut canonical = String::with_capacity(256 + req.raw_path.len() + req.raw_query.len());
    canonical.push_str(req.method);
    canonical.push('\n');
    canonical.push_str(&canonical_uri(req.raw_path));
    canonical.push('\n');
    canonical.push_str(&canonical_query(req.raw_query));
    canonical.push('\n');
    for name in signed_headers {
        let value = header_value(req.headers, name).ok_or_else(|| Error::MissingSignedHeader(name.clone()))?;
        canonical.push_str(name);
        canonical.push(':');
        canonical.push_str(&value);
        canonical.push('\n');
    }
    canonical.push('\n');
    canonical.push_str(&signed_headers.join(";"));
    canonical.push('\n');
    canonical.push_str(payload_hash);
    Ok(canonical)
}

/// The SHA-256 of a body fed in pieces as it arrives, for [`crate::verify_streamed`].
pub struct PayloadHasher(digest::Context);

impl PayloadHasher {
    /// A hasher that has seen nothing yet.
    #[must_use]
    pub fn new() -> Self {
        PayloadHasher(digest::Context::new(&digest::SHA256))
    }

    /// Feeds the next piece of the body.
    pub fn update(&mut self, piece: &[u8]) {
        self.0.update(piece);
    }

    /// The digest of everything fed.
    #[must_use]
    pub fn finish(self) -> PayloadDigest {
        PayloadDigest(hex::encode(self.0.finish()))
    }
}

impl Default for PayloadHasher {
    fn default() -> Self {
        Self::new()
    }
}

impl std::fmt::Debug for PayloadHasher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("PayloadHasher(..)")
    }
}

/// The lowercase hex SHA-256 of a whole body, from [`PayloadHasher::finish`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PayloadDigest(pub(crate) String);

/// Lowercase hex SHA-256 of `data`.
pub(crate) fn hex_sha256(data: &[u8]) -> String {
    hex::encode(digest::digest(&digest::SHA256, data))
}

/// The canonical value of header `name` (any case): every occurrence trimmed, inner whitespace runs
/// collapsed to one space, occurrences joined with `,`. `None` when the header is absent.
pub(crate) fn header_value(headers: &[(&str, &str)], name: &str) -> Option<String> {
    let mut joined: Option<String> = None;
    for (_, value) in headers.iter().filter(|(header_name, _)| header_name.eq_ignore_ascii_case(name)) {
        let trimmed = value.split_whitespace().collect::<Vec<_>>().join(" ");
        match &mut joined {
            None => joined = Some(trimmed),
            Some(so_far) => {
                so_far.push(',');
                so_far.push_str(&trimmed);
            }
        }
    }
    joined
}

/// The raw path with dot segments and empty segments removed (as botocore does before signing), then
/// URI-encoded once more with `/` kept. An empty path is `/`.
fn canonical_uri(raw_path: &str) -> String {
    if raw_path.is_empty() {
        return "/".to_owned();
    }
    let mut segments: Vec<&str> = Vec::new();
    for segment in raw_path.split('/') {
        match segment {
            "" | "." => {}
            ".." => {
                segments.pop();
            }
            _ => segments.push(segment),
        }
    }
    let leading = if raw_path.starts_with('/') { "/" } else { "" };
    let trailing = if raw_path.ends_with('/') && !segments.is_empty() { "/" } else { "" };
    let normalized = format!("{leading}{}{trailing}", segments.join("/"));
    percent_encode(normalized.as_bytes(), ENCODE_PATH).to_string()
}

/// The raw query split on `&`, each key and value percent-decoded and re-encoded with the SigV4
/// rules, sorted by key then value. A parameter without `=` has an empty value; empty pieces (`a=1&&b=2`,
/// a trailing `&`) are skipped. `+` is not a space here: only `%XX` is decoded.
fn canonical_query(raw_query: &str) -> String {
    let mut pairs: Vec<(String, String)> = raw_query
        .split('&')
        .filter(|piece| !piece.is_empty())
        .map(|piece| {
            let (key, value) = piece.split_once('=').unwrap_or((piece, ""));
            (reencode(key), reencode(value))
        })
        .collect();
    pairs.sort_unstable();
    let mut canonical = String::with_capacity(raw_query.len() + 16);
    for (index, (key, value)) in pairs.iter().enumerate() {
        if index > 0 {
            canonical.push('&');
        }
        canonical.push_str(key);
        canonical.push('=');
        canonical.push_str(value);
    }
    canonical
}

/// Percent-decodes `component` (bytes, not necessarily UTF-8) and encodes it again with the SigV4 rules.
fn reencode(component: &str) -> String {
    let decoded: Vec<u8> = percent_decode_str(component).collect();
    percent_encode(&decoded, ENCODE_QUERY).to_string()
}
