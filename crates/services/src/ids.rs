//! Generated identifiers (account IDs, endpoint identifiers, access keys, generation IDs,
//! registration codes) and the opaque pagination markers.

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use certfleet_registry::Cursor;

use crate::Error;

/// Random bytes from the system's generator.
pub(crate) fn random_bytes<const N: usize>() -> Result<[u8; N], Error> {
    let mut bytes = [0u8; N];
    aws_lc_rs::rand::fill(&mut bytes).map_err(|_| Error::Internal("the system random generator failed".into()))?;
    Ok(bytes)
}

/// `length` characters drawn uniformly from `alphabet` (which must be at most 256 long).
pub(crate) fn random_string(alphabet: &[u8], length: usize) -> Result<String, Error> {
    // Rejection sampling keeps the draw uniform.
    let limit = 256 - 256 % alphabet.len();
    let mut out = String::with_capacity(length);
    while out.len() < length {
        for byte in random_bytes::<32>()? {
            if (byte as usize) < limit && out.len() < length {
                out.push(alphabet[byte as usize % alphabet.len()] as char);
            }
        }
    }
    Ok(out)
}

/// A UUID version 4, as AWS uses for generation IDs.
pub(crate) fn uuid_v4() -> Result<String, Error> {
    let mut bytes = random_bytes::<16>()?;
    bytes[6] = (bytes[6] & 0x0f) | 0x40;
    bytes[8] = (bytes[8] & 0x3f) | 0x80;
    let hex = hex::encode(bytes);
    Ok(format!("{}-{}-{}-{}-{}", &hex[..8], &hex[8..12], &hex[12..16], &hex[16..20], &hex[20..]))
}

/// A new 64-hex-digit registration code.
pub(crate) fn registration_code() -> Result<String, Error> {
    Ok(hex::encode(random_bytes::<32>()?))
}

/// A pagination marker as sent to clients: base64 (the AWS marker pattern) of an opaque cursor.
pub type Marker = String;

/// Encodes a cursor as a marker.
pub fn encode_marker(cursor: &Cursor) -> Marker {
    STANDARD.encode(format!("{}:{}", cursor.created_at_ms, cursor.id))
}

/// Decodes a marker; anything we did not produce is an invalid request.
pub fn decode_marker(marker: &str) -> Result<Cursor, Error> {
    let invalid = || Error::InvalidRequest(format!("invalid marker {marker:?}"));
    let bytes = STANDARD.decode(marker).map_err(|_| invalid())?;
    let text = String::from_utf8(bytes).map_err(|_| invalid())?;
    let (created, id) = text.split_once(':').ok_or_else(invalid)?;
    let created_at_ms = created.parse().map_err(|_| invalid())?;
    if id.is_empty() || !id.bytes().all(|b| b.is_ascii_alphanumeric()) {
        return Err(invalid());
    }
    Ok(Cursor { created_at_ms, id: id.to_owned() })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn markers_round_trip_and_foreign_markers_are_refused() {
        let cursor = Cursor { created_at_ms: 1_700_000_000_123, id: "ab".repeat(32) };
        let marker = encode_marker(&cursor);
        assert!(marker.bytes().all(|b| b.is_ascii_alphanumeric() || b"+/=".contains(&b)));
        assert_eq!(decode_marker(&marker).unwrap(), cursor);
        for bad in ["", "!!!", "bm90LWEtY3Vyc29y", "MTIzOg==", "eDpmb28="] {
            assert!(matches!(decode_marker(bad), Err(Error::InvalidRequest(_))), "{bad:?}");
        }
    }

    #[test]
    fn generated_ids_have_their_shapes() {
        let uuid = uuid_v4().unwrap();
        assert_eq!(uuid.len(), 36);
        assert_eq!(&uuid[14..15], "4");
        let code = registration_code().unwrap();
        assert_eq!(code.len(), 64);
        assert!(code.bytes().all(|b| b.is_ascii_hexdigit()));
        let digits = random_string(b"0123456789", 12).unwrap();
        assert!(digits.len() == 12 && digits.bytes().all(|b| b.is_ascii_digit()));
    }
}
