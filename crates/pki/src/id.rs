//! Certificate ids: the SHA-256 of a certificate's DER, as AWS IoT names certificates.

use std::fmt;

use aws_lc_rs::digest;

use crate::Error;

/// A certificate id: 64 lowercase hexadecimal characters, the SHA-256 of the certificate DER.
///
/// This is the `certificateId` of the AWS IoT API and the value `openssl x509 -fingerprint
/// -sha256` prints (without colons, in lower case).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct CertificateId(String);

impl CertificateId {
    /// The id of the certificate with this DER encoding.
    pub fn of_der(der: &[u8]) -> Self {
        CertificateId(hex::encode(digest::digest(&digest::SHA256, der)))
    }

    /// Parses an id: exactly 64 hexadecimal characters, in either case, optionally after "0x".
    pub fn parse(text: &str) -> Result<Self, Error> {
        let digits = text.strip_prefix("0x").or_else(|| text.strip_prefix("0X")).unwrap_or(text);
        if digits.len() != 64 {
            return Err(Error::BadCertificateId { reason: "expected 64 hexadecimal characters" });
        }
        if !digits.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(Error::BadCertificateId { reason: "not hexadecimal" });
        }
        Ok(CertificateId(digits.to_ascii_lowercase()))
    }

    /// The id as 64 lowercase hexadecimal characters.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for CertificateId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ABC_SHA256: &str = "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad";

    fn check_parse(text: &str, expected: Result<&str, &str>) {
        let got = CertificateId::parse(text);
        match (got, expected) {
            (Ok(id), Ok(want)) => assert_eq!(id.as_str(), want),
            (Err(error), Err(want)) => assert_eq!(error.to_string(), want),
            (got, want) => panic!("got {got:?}, want {want:?}"),
        }
    }

    #[test]
    fn of_der_is_sha256() {
        let id = CertificateId::of_der(b"abc");
        assert_eq!((id.as_str(), id.to_string().as_str()), (ABC_SHA256, ABC_SHA256));
    }

    #[test]
    fn of_der_of_empty_input() {
        let want = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";
        assert_eq!(CertificateId::of_der(b"").as_str(), want);
    }

    #[test]
    fn parse_lowercase() {
        check_parse(ABC_SHA256, Ok(ABC_SHA256));
    }

    #[test]
    fn parse_uppercase() {
        check_parse(&ABC_SHA256.to_uppercase(), Ok(ABC_SHA256));
    }

    #[test]
    fn parse_0x_prefix() {
        check_parse(&format!("0x{ABC_SHA256}"), Ok(ABC_SHA256));
    }

    #[test]
    fn parse_0x_upper_prefix() {
        check_parse(&format!("0X{}", ABC_SHA256.to_uppercase()), Ok(ABC_SHA256));
    }

    #[test]
    fn parse_too_short() {
        check_parse(&ABC_SHA256[..63], Err("invalid certificate id: expected 64 hexadecimal characters"));
    }

    #[test]
    fn parse_too_long() {
        check_parse(&format!("{ABC_SHA256}0"), Err("invalid certificate id: expected 64 hexadecimal characters"));
    }

    #[test]
    fn parse_empty() {
        check_parse("", Err("invalid certificate id: expected 64 hexadecimal characters"));
    }

    #[test]
    fn parse_non_hex() {
        check_parse(&format!("{}g", &ABC_SHA256[..63]), Err("invalid certificate id: not hexadecimal"));
    }

    #[test]
    fn parse_multibyte_of_right_byte_length() {
        check_parse(&format!("{}é", &ABC_SHA256[..62]), Err("invalid certificate id: not hexadecimal"));
    }

    #[test]
    fn parse_colons() {
        check_parse(&"ba:".repeat(21), Err("invalid certificate id: expected 64 hexadecimal characters"));
    }

    #[test]
    fn parse_double_prefix() {
        check_parse(&format!("0x0x{}", &ABC_SHA256[..62]), Err("invalid certificate id: not hexadecimal"));
    }
}
