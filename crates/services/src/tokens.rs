//! The opaque pagination tokens of the policy and thing listings: `nextToken` of the listings
//! ordered by a name or an ID, and the `marker` of ListPolicies (ordered by creation, then
//! name). Both are base64, the alphabet AWS's marker pattern asks for.

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use certfleet_registry::Cursor;

use crate::Error;

/// The token of a listing that continues after `key`.
pub fn encode_token(key: &str) -> String {
    STANDARD.encode(key)
}

/// The key a token continues after; anything we did not produce is an invalid request.
pub fn decode_token(token: &str) -> Result<String, Error> {
    STANDARD
        .decode(token)
        .ok()
        .and_then(|bytes| String::from_utf8(bytes).ok())
        .filter(|key| !key.is_empty())
        .ok_or_else(|| Error::InvalidRequest(format!("invalid pagination token {token:?}")))
}

/// The marker of a ListPolicies page that continues after `cursor` (whose ID is a policy name).
pub fn encode_policy_marker(cursor: &Cursor) -> String {
    STANDARD.encode(format!("{}:{}", cursor.created_at_ms, cursor.id))
}

/// The cursor of a ListPolicies marker.
pub fn decode_policy_marker(marker: &str) -> Result<Cursor, Error> {
    let invalid = || Error::InvalidRequest(format!("invalid marker {marker:?}"));
    let text = decode_token(marker).map_err(|_| invalid())?;
    let (created, name) = text.split_once(':').ok_or_else(invalid)?;
    let created_at_ms = created.parse().map_err(|_| invalid())?;
    if name.is_empty() {
        return Err(invalid());
    }
    Ok(Cursor { created_at_ms, id: name.to_owned() })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_round_trip_and_foreign_tokens_are_refused() {
        for key in ["lamp-1", "a:b_c", "0123abcdef"] {
            assert_eq!(decode_token(&encode_token(key)).unwrap(), key);
        }
        let cursor = Cursor { created_at_ms: 1_700_000_000_123, id: "my.policy@x+y=z,w-1".into() };
        assert_eq!(decode_policy_marker(&encode_policy_marker(&cursor)).unwrap(), cursor);
        for bad in ["", "!!!", "/w==", "bm8tY29sb24=", "eDpmb28="] {
            assert!(matches!(decode_policy_marker(bad), Err(Error::InvalidRequest(_))), "{bad:?}");
        }
        for bad in ["", "!!!", "/w=="] {
            assert!(matches!(decode_token(bad), Err(Error::InvalidRequest(_))), "{bad:?}");
        }
    }
}
