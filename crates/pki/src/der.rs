//! Just enough DER to take signed structures apart and put them back together.
//!
//! x509-parser reads certificates for their meaning; this module only splits a value into its
//! tag-length-value parts, so that the issuer can splice byte-exact names and keys into the
//! to-be-signed part that rcgen builds, and so that key files can be re-wrapped (PKCS#8 to
//! PKCS#1). Only single-byte tags and definite lengths are supported, which is all X.509 uses at
//! the levels this module looks at.

/// Why a value could not be read.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum DerError {
    /// The input ends inside a value.
    Truncated,
    /// A tag in the high-tag-number form.
    HighTag,
    /// An indefinite length (BER, not DER).
    IndefiniteLength,
    /// A length that does not fit in four bytes.
    LengthTooLong,
    /// Bytes after the value where none may be.
    TrailingBytes,
    /// A value has another tag than the one expected.
    UnexpectedTag,
}

impl DerError {
    /// A short lowercase description for error messages.
    pub(crate) fn reason(self) -> &'static str {
        match self {
            DerError::Truncated => "truncated",
            DerError::HighTag => "unsupported high tag number",
            DerError::IndefiniteLength => "indefinite length",
            DerError::LengthTooLong => "length too long",
            DerError::TrailingBytes => "trailing bytes",
            DerError::UnexpectedTag => "unexpected tag",
        }
    }
}

/// The SEQUENCE tag (constructed).
pub(crate) const SEQUENCE: u8 = 0x30;
/// The BIT STRING tag.
pub(crate) const BIT_STRING: u8 = 0x03;
/// The OCTET STRING tag.
pub(crate) const OCTET_STRING: u8 = 0x04;

/// One tag-length-value.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Tlv<'a> {
    /// The tag byte.
    pub(crate) tag: u8,
    /// The value bytes.
    pub(crate) content: &'a [u8],
    /// The whole encoding: tag, length and value.
    pub(crate) raw: &'a [u8],
}

/// Reads one value from the front of `input`; returns it and what follows.
pub(crate) fn read(input: &[u8]) -> Result<(Tlv<'_>, &[u8]), DerError> {
    let (&tag, after_tag) = input.split_first().ok_or(DerError::Truncated)?;
    if tag & 0x1f == 0x1f {
        return Err(DerError::HighTag);
    }
    let (&first, after_first) = after_tag.split_first().ok_or(DerError::Truncated)?;
    let (length, after_length) = match first {
        0x00..=0x7f => (usize::from(first), after_first),
        0x80 => return Err(DerError::IndefiniteLength),
        0x81..=0x84 => {
            let count = usize::from(first & 0x7f);
            let bytes = after_first.get(..count).ok_or(DerError::Truncated)?;
            let length = bytes.iter().fold(0usize, |acc, &b| (acc << 8) | usize::from(b));
            (length, &after_first[count..])
        }
        _ => return Err(DerError::LengthTooLong),
    };
    let content = after_length.get(..length).ok_or(DerError::Truncated)?;
    let header_length = input.len() - after_length.len();
    let raw = &input[..header_length + length];
    Ok((Tlv { tag, content, raw }, &after_length[length..]))
}

/// Reads exactly one value with the given tag: nothing may follow it.
pub(crate) fn read_single(input: &[u8], tag: u8) -> Result<Tlv<'_>, DerError> {
    let (tlv, rest) = read(input)?;
    if tlv.tag != tag {
        return Err(DerError::UnexpectedTag);
    }
    if !rest.is_empty() {
        return Err(DerError::TrailingBytes);
    }
    Ok(tlv)
}

/// Reads every value of a constructed value's content, in order.
pub(crate) fn read_all(mut content: &[u8]) -> Result<Vec<Tlv<'_>>, DerError> {
    let mut values = Vec::new();
    while !content.is_empty() {
        let (tlv, rest) = read(content)?;
        values.push(tlv);
        content = rest;
    }
    Ok(values)
}

/// Encodes one value.
pub(crate) fn write(tag: u8, content: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(content.len() + 6);
    out.push(tag);
    let length = content.len();
    if length < 0x80 {
        out.push(length as u8);
    } else {
        let bytes = length.to_be_bytes();
        let skip = bytes.iter().take_while(|&&b| b == 0).count();
        out.push(0x80 | (bytes.len() - skip) as u8);
        out.extend_from_slice(&bytes[skip..]);
    }
    out.extend_from_slice(content);
    out
}

/// Encodes a constructed value whose content is the given encodings, in order.
pub(crate) fn write_constructed(tag: u8, parts: &[&[u8]]) -> Vec<u8> {
    write(tag, &parts.concat())
}

/// Encodes a BIT STRING with no unused bits.
pub(crate) fn write_bit_string(bits: &[u8]) -> Vec<u8> {
    let mut content = Vec::with_capacity(bits.len() + 1);
    content.push(0);
    content.extend_from_slice(bits);
    write(BIT_STRING, &content)
}

/// The three parts of a signed structure (certificate or certification request).
pub(crate) struct Signed<'a> {
    /// The signed part, with its tag and length.
    pub(crate) to_be_signed: Tlv<'a>,
    /// The signature AlgorithmIdentifier, with its tag and length.
    pub(crate) algorithm: Tlv<'a>,
}

/// Splits `SEQUENCE { toBeSigned, AlgorithmIdentifier, BIT STRING }`.
pub(crate) fn split_signed(der: &[u8]) -> Result<Signed<'_>, DerError> {
    let outer = read_single(der, SEQUENCE)?;
    match read_all(outer.content)?.as_slice() {
        [to_be_signed, algorithm, signature]
            if to_be_signed.tag == SEQUENCE && algorithm.tag == SEQUENCE && signature.tag == BIT_STRING =>
        {
            Ok(Signed { to_be_signed: *to_be_signed, algorithm: *algorithm })
        }
        _ => Err(DerError::UnexpectedTag),
    }
}

/// Assembles a signed structure from its signed part, algorithm and signature bytes.
pub(crate) fn join_signed(to_be_signed: &[u8], algorithm: &[u8], signature: &[u8]) -> Vec<u8> {
    write_constructed(SEQUENCE, &[to_be_signed, algorithm, &write_bit_string(signature)])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check_read(input: &[u8], expected: Result<(u8, &[u8], usize), DerError>) {
        let got = read(input).map(|(tlv, rest)| (tlv.tag, tlv.content, rest.len()));
        assert_eq!(got, expected);
    }

    #[test]
    fn read_short_length() {
        check_read(&[0x04, 0x02, 0xaa, 0xbb, 0xcc], Ok((0x04, &[0xaa, 0xbb], 1)));
    }

    #[test]
    fn read_long_length() {
        let mut input = vec![0x04, 0x81, 0x80];
        input.extend_from_slice(&[7; 0x80]);
        check_read(&input, Ok((0x04, &[7; 0x80], 0)));
    }

    #[test]
    fn read_truncated_value() {
        check_read(&[0x04, 0x03, 0xaa], Err(DerError::Truncated));
    }

    #[test]
    fn read_truncated_length() {
        check_read(&[0x04, 0x82, 0x01], Err(DerError::Truncated));
    }

    #[test]
    fn read_empty() {
        check_read(&[], Err(DerError::Truncated));
    }

    #[test]
    fn read_indefinite_length() {
        check_read(&[0x30, 0x80, 0x00, 0x00], Err(DerError::IndefiniteLength));
    }

    #[test]
    fn read_high_tag() {
        check_read(&[0x1f, 0x81, 0x01, 0x00], Err(DerError::HighTag));
    }

    #[test]
    fn read_length_too_long() {
        check_read(&[0x04, 0x85, 1, 1, 1, 1, 1], Err(DerError::LengthTooLong));
    }

    #[test]
    fn write_round_trips_every_length_form() {
        for length in [0usize, 1, 0x7f, 0x80, 0xff, 0x100, 0x1_0000] {
            let content = vec![0x5a; length];
            let encoded = write(OCTET_STRING, &content);
            let (tlv, rest) = read(&encoded).expect("own encoding reads back");
            assert_eq!((tlv.content.len(), rest.len(), tlv.raw.len()), (length, 0, encoded.len()));
        }
    }

    #[test]
    fn split_and_join_signed() {
        let tbs = write_constructed(SEQUENCE, &[&write(0x02, &[1])]);
        let algorithm = write_constructed(SEQUENCE, &[&write(0x06, &[0x2a, 0x03])]);
        let der = join_signed(&tbs, &algorithm, &[9, 9, 9]);
        let signed = split_signed(&der).expect("well formed");
        assert_eq!((signed.to_be_signed.raw, signed.algorithm.raw), (&tbs[..], &algorithm[..]));
    }
}
