//! PEM: strict decoding of exactly one block, and canonical encoding.
//!
//! Decoding accepts surrounding whitespace and any line length or line ending inside the body,
//! and nothing else: text before or after the block, a second block, RFC 1421 headers (as in
//! encrypted keys) and bad base64 are refused with distinct errors.

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use zeroize::Zeroizing;

use crate::Error;

/// Encodes DER as PEM with the given label: 64-column base64 lines and a trailing newline.
pub fn pem_encode(label: &str, der: &[u8]) -> String {
    // Private keys pass through here: the base64 text is kept in a zeroized buffer, and the
    // output is sized exactly so that it is never reallocated (which would leave a copy behind).
    let body = Zeroizing::new(STANDARD.encode(der));
    let capacity = "-----BEGIN -----\n-----END -----\n".len() + 2 * label.len() + body.len() + body.len().div_ceil(64);
    let mut out = String::with_capacity(capacity);
    out.push_str("-----BEGIN ");
    out.push_str(label);
    out.push_str("-----\n");
    for line in body.as_bytes().chunks(64) {
        // Base64 output is ASCII, so every chunk is valid UTF-8.
        out.push_str(std::str::from_utf8(line).unwrap_or_default());
        out.push('\n');
    }
    out.push_str("-----END ");
    out.push_str(label);
    out.push_str("-----\n");
    out
}

/// Decodes the single PEM block of `text`, whose label must be one of `labels`.
pub(crate) fn pem_decode(text: &str, labels: &[&str]) -> Result<Vec<u8>, Error> {
    const BEGIN: &str = "-----BEGIN ";
    const DASHES: &str = "-----";
    let text = text.trim();
    let Some(after_begin) = text.strip_prefix(BEGIN) else {
        return Err(Error::NotPem {
            reason: if text.contains(BEGIN) { "text before the pem block" } else { "no -----BEGIN line" },
        });
    };
    let Some((label, after_label)) = after_begin.split_once(DASHES) else {
        return Err(Error::NotPem { reason: "unterminated -----BEGIN line" });
    };
    if label.contains(['\n', '\r']) {
        return Err(Error::NotPem { reason: "unterminated -----BEGIN line" });
    }
    let end = format!("-----END {label}-----");
    let Some((body, after_end)) = after_label.split_once(end.as_str()) else {
        return Err(Error::NotPem { reason: "no matching -----END line" });
    };
    if !after_end.is_empty() {
        return Err(if after_end.contains(BEGIN) {
            Error::MultiplePemBlocks
        } else {
            Error::NotPem { reason: "text after the pem block" }
        });
    }
    if body.contains(BEGIN) {
        return Err(Error::MultiplePemBlocks);
    }
    if !labels.contains(&label) {
        return Err(Error::WrongPemLabel { expected: labels.join(" or "), found: label.to_owned() });
    }
    if body.contains(':') {
        return Err(Error::NotPem { reason: "pem headers (as in encrypted pem) are not supported" });
    }
    let compact: String = body.chars().filter(|c| !c.is_ascii_whitespace()).collect();
    if compact.is_empty() {
        return Err(Error::NotPem { reason: "empty pem block" });
    }
    STANDARD.decode(compact).map_err(Error::BadBase64)
}

#[cfg(test)]
mod tests {
    use super::*;

    const BODY: &str = "AQIDBAUGBwgJ";

    fn check(text: &str, expected: Result<&[u8], &str>) {
        let got = pem_decode(text, &["THING", "NEW THING"]);
        match (got, expected) {
            (Ok(der), Ok(want)) => assert_eq!(der, want),
            (Err(error), Err(want)) => assert_eq!(error.to_string(), want),
            (got, want) => panic!("got {got:?}, want {want:?}"),
        }
    }

    fn block(label: &str, body: &str) -> String {
        format!("-----BEGIN {label}-----\n{body}\n-----END {label}-----\n")
    }

    #[test]
    fn good() {
        check(&block("THING", BODY), Ok(&[1, 2, 3, 4, 5, 6, 7, 8, 9]));
    }

    #[test]
    fn second_accepted_label() {
        check(&block("NEW THING", BODY), Ok(&[1, 2, 3, 4, 5, 6, 7, 8, 9]));
    }

    #[test]
    fn surrounding_whitespace_and_crlf() {
        let text = format!("\r\n  {}\r\n\n", block("THING", "AQID\r\nBAUG\r\nBwgJ").replace('\n', "\r\n"));
        check(&text, Ok(&[1, 2, 3, 4, 5, 6, 7, 8, 9]));
    }

    #[test]
    fn garbage() {
        check("hello world", Err("not pem: no -----BEGIN line"));
    }

    #[test]
    fn empty() {
        check("", Err("not pem: no -----BEGIN line"));
    }

    #[test]
    fn text_before() {
        check(&format!("Certificate:\n{}", block("THING", BODY)), Err("not pem: text before the pem block"));
    }

    #[test]
    fn text_after() {
        check(&format!("{}trailer\n", block("THING", BODY)), Err("not pem: text after the pem block"));
    }

    #[test]
    fn two_blocks() {
        check(
            &format!("{}{}", block("THING", BODY), block("THING", BODY)),
            Err("expected exactly one pem block, found more"),
        );
    }

    #[test]
    fn wrong_label() {
        check(
            &block("PRIVATE KEY", BODY),
            Err(r#"pem block is labelled "PRIVATE KEY": expected "THING or NEW THING""#),
        );
    }

    #[test]
    fn missing_end() {
        check(&format!("-----BEGIN THING-----\n{BODY}\n"), Err("not pem: no matching -----END line"));
    }

    #[test]
    fn mismatched_end_label() {
        check(
            &format!("-----BEGIN THING-----\n{BODY}\n-----END OTHER-----\n"),
            Err("not pem: no matching -----END line"),
        );
    }

    #[test]
    fn unterminated_begin() {
        check("-----BEGIN THING\nAQID\n", Err("not pem: unterminated -----BEGIN line"));
    }

    #[test]
    fn truncated_base64() {
        check(&block("THING", &BODY[..BODY.len() - 1]), Err("pem body is not valid base64"));
    }

    #[test]
    fn bad_base64_character() {
        check(&block("THING", "AQID*AUG"), Err("pem body is not valid base64"));
    }

    #[test]
    fn empty_body() {
        check(&block("THING", ""), Err("not pem: empty pem block"));
    }

    #[test]
    fn encrypted_headers() {
        check(
            &block("THING", &format!("Proc-Type: 4,ENCRYPTED\n\n{BODY}")),
            Err("not pem: pem headers (as in encrypted pem) are not supported"),
        );
    }

    #[test]
    fn encode_wraps_at_64_columns_and_round_trips() {
        let der: Vec<u8> = (0..=255).collect();
        let pem = pem_encode("THING", &der);
        assert!(pem.ends_with("-----END THING-----\n"));
        assert!(pem.lines().all(|line| line.len() <= 64));
        assert_eq!(pem.lines().nth(1).map(str::len), Some(64));
        assert_eq!(pem.len(), pem.capacity());
        check(&pem, Ok(&der));
    }
}
