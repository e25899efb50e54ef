//! The CBOR (RFC 8949) the fleet provisioning API speaks on its `.../cbor` topics (the gateway's
//! `fleet` module), read into and written from the same JSON values its `.../json` topics carry.
//!
//! **Architecture Invariant:** pure: bytes in, a `serde_json::Value` out (and back); no IO, no
//! knowledge of MQTT or provisioning. Its decoder is a fuzz target (`crates/fuzzing`).
//!
//! Only the part of CBOR a JSON document maps to: unsigned and negative integers, text strings,
//! arrays, maps with text keys, `false`, `true`, `null` (and `undefined`, read as `null`),
//! half, single and double floats, and tags (skipped: the tagged value is read). Byte strings
//! are refused (no JSON value holds bytes), as are maps with other keys.
//!
//! A device's payload is hostile: every declared length is checked against the bytes that are
//! left before anything is allocated (a 5-byte header cannot make us reserve gigabytes), nesting
//! is bounded by [`MAX_DEPTH`], the number of items by [`MAX_ITEMS`], and every text string must
//! be UTF-8. A payload is one item with nothing after it.

use serde_json::{Map, Number, Value};

/// The deepest nesting of arrays and maps read.
pub const MAX_DEPTH: usize = 16;
/// The most items (values, keys included) read from one payload.
pub const MAX_ITEMS: usize = 4096;

/// Why a payload is not the CBOR we read.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Error {
    /// The payload ends inside an item.
    Truncated,
    /// Bytes follow the payload's one item.
    TrailingBytes,
    /// A reserved or unsupported additional-information value, or a stray break.
    Malformed,
    /// A byte string (or a map key that is not text): nothing a JSON document holds.
    Unsupported,
    /// A text string that is not UTF-8.
    NotUtf8,
    /// Nested deeper than [`MAX_DEPTH`].
    TooDeep,
    /// More than [`MAX_ITEMS`] items.
    TooManyItems,
    /// A float that is not finite (JSON has no NaN nor infinity).
    NotFinite,
}

impl std::fmt::Display for Error {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter.write_str(match self {
            Error::Truncated => "the CBOR payload ends inside an item",
            Error::TrailingBytes => "bytes follow the CBOR item",
            Error::Malformed => "malformed CBOR",
            Error::Unsupported => "CBOR byte strings and non-text map keys are not supported",
            Error::NotUtf8 => "a CBOR text string is not UTF-8",
            Error::TooDeep => "the CBOR payload is nested too deeply",
            Error::TooManyItems => "the CBOR payload has too many items",
            Error::NotFinite => "a CBOR float is not finite",
        })
    }
}

/// Reads a payload holding exactly one CBOR item.
pub fn decode(bytes: &[u8]) -> Result<Value, Error> {
    let mut reader = Reader { bytes, at: 0, items: 0 };
    let value = reader.item(0)?.ok_or(Error::Malformed)?;
    if reader.at != bytes.len() {
        return Err(Error::TrailingBytes);
    }
    Ok(value)
}

/// Writes a JSON value as CBOR (definite lengths, the shortest integer heads; floats as doubles).
pub fn encode(value: &Value) -> Vec<u8> {
    let mut out = Vec::new();
    write(value, &mut out);
    out
}

struct Reader<'a> {
    bytes: &'a [u8],
    at: usize,
    items: usize,
}

/// The "break" stop code of indefinite-length items.
const BREAK: u8 = 0xff;

impl Reader<'_> {
    fn byte(&mut self) -> Result<u8, Error> {
        let byte = *self.bytes.get(self.at).ok_or(Error::Truncated)?;
        self.at += 1;
        Ok(byte)
    }

    fn take(&mut self, length: u64) -> Result<&[u8], Error> {
        let left = (self.bytes.len() - self.at) as u64;
        if length > left {
            return Err(Error::Truncated);
        }
        let start = self.at;
        self.at += length as usize;
        Ok(&self.bytes[start..self.at])
    }

    /// The argument of a head whose additional information is `info`; `None` for the
    /// indefinite length (31).
    fn argument(&mut self, info: u8) -> Result<Option<u64>, Error> {
        let width = match info {
            0..=23 => return Ok(Some(u64::from(info))),
            24 => 1,
            25 => 2,
            26 => 4,
            27 => 8,
            31 => return Ok(None),
            _ => return Err(Error::Malformed),
        };
        let bytes = self.take(width)?;
        Ok(Some(bytes.iter().fold(0u64, |value, byte| (value << 8) | u64::from(*byte))))
    }

    /// Counts an item against [`MAX_ITEMS`].
    fn count(&mut self) -> Result<(), Error> {
        self.items += 1;
        if self.items > MAX_ITEMS { Err(Error::TooManyItems) } else { Ok(()) }
    }

    /// One item; `None` when the next byte is a break (only meaningful inside an
    /// indefinite-length item, refused elsewhere by the caller).
    fn item(&mut self, depth: usize) -> Result<Option<Value>, Error> {
        if depth > MAX_DEPTH {
            return Err(Error::TooDeep);
        }
        let head = self.byte()?;
        if head == BREAK {
            return Ok(None);
        }
        self.count()?;
        let (major, info) = (head >> 5, head & 0x1f);
        let value = match major {
            0 => Value::Number(Number::from(self.argument(info)?.ok_or(Error::Malformed)?)),
            1 => {
                let argument = self.argument(info)?.ok_or(Error::Malformed)?;
                // -1 - argument: representable as i64 only up to i64::MIN.
                let value = i64::try_from(argument).map_err(|_| Error::Unsupported)?;
                Value::Number(Number::from(-1 - value))
            }
            2 => return Err(Error::Unsupported),
            3 => Value::String(self.text(info)?),
            4 => {
                let mut items = Vec::new();
                match self.argument(info)? {
                    Some(length) => {
                        // Each item takes at least one byte: a length past what is left is a lie.
                        if length > (self.bytes.len() - self.at) as u64 {
                            return Err(Error::Truncated);
                        }
                        for _ in 0..length {
                            items.push(self.item(depth + 1)?.ok_or(Error::Malformed)?);
                        }
                    }
                    None => {
                        while let Some(item) = self.item(depth + 1)? {
                            items.push(item);
                        }
                    }
                }
                Value::Array(items)
            }
            5 => {
                let mut map = Map::new();
                match self.argument(info)? {
                    Some(length) => {
                        if length > (self.bytes.len() - self.at) as u64 / 2 {
                            return Err(Error::Truncated);
                        }
                        for _ in 0..length {
                            let key = self.key(depth)?.ok_or(Error::Malformed)?;
                            let value = self.item(depth + 1)?.ok_or(Error::Malformed)?;
                            map.insert(key, value);
                        }
                    }
                    None => {
                        while let Some(key) = self.key(depth)? {
                            let value = self.item(depth + 1)?.ok_or(Error::Malformed)?;
                            map.insert(key, value);
                        }
                    }
                }
                Value::Object(map)
            }
            6 => {
                self.argument(info)?.ok_or(Error::Malformed)?;
                self.item(depth + 1)?.ok_or(Error::Malformed)?
            }
            _ => self.simple(info)?,
        };
        Ok(Some(value))
    }

    /// A map key: a text string, or `None` at the break of an indefinite-length map.
    fn key(&mut self, depth: usize) -> Result<Option<String>, Error> {
        match self.item(depth + 1)? {
            None => Ok(None),
            Some(Value::String(key)) => Ok(Some(key)),
            Some(_) => Err(Error::Unsupported),
        }
    }

    /// A text string's content after its head (definite, or indefinite: definite text chunks
    /// up to a break).
    fn text(&mut self, info: u8) -> Result<String, Error> {
        match self.argument(info)? {
            Some(length) => {
                let bytes = self.take(length)?;
                std::str::from_utf8(bytes).map(str::to_owned).map_err(|_| Error::NotUtf8)
            }
            None => {
                let mut text = String::new();
                loop {
                    let head = self.byte()?;
                    if head == BREAK {
                        return Ok(text);
                    }
                    if head >> 5 != 3 || head & 0x1f == 31 {
                        return Err(Error::Malformed);
                    }
                    self.count()?;
                    let length = self.argument(head & 0x1f)?.ok_or(Error::Malformed)?;
                    let chunk = self.take(length)?;
                    text.push_str(std::str::from_utf8(chunk).map_err(|_| Error::NotUtf8)?);
                }
            }
        }
    }

    /// Major type 7: simple values and floats.
    fn simple(&mut self, info: u8) -> Result<Value, Error> {
        let float = match info {
            20 => return Ok(Value::Bool(false)),
            21 => return Ok(Value::Bool(true)),
            22 | 23 => return Ok(Value::Null),
            25 => {
                let bytes = self.take(2)?;
                half_to_f64(u16::from_be_bytes([bytes[0], bytes[1]]))
            }
            26 => {
                let bytes = self.take(4)?;
                f64::from(f32::from_be_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]))
            }
            27 => {
                let bytes = self.take(8)?;
                let mut array = [0u8; 8];
                array.copy_from_slice(bytes);
                f64::from_be_bytes(array)
            }
            _ => return Err(Error::Malformed),
        };
        Number::from_f64(float).map(Value::Number).ok_or(Error::NotFinite)
    }
}

/// An IEEE 754 half-precision float, widened.
fn half_to_f64(half: u16) -> f64 {
    let exponent = i32::from((half >> 10) & 0x1f);
    let mantissa = f64::from(half & 0x3ff);
    let magnitude = match exponent {
        0 => mantissa * 2f64.powi(-24),
        31 => {
            if mantissa == 0.0 {
                f64::INFINITY
            } else {
                f64::NAN
            }
        }
        _ => (mantissa + 1024.0) * 2f64.powi(exponent - 25),
    };
    if half & 0x8000 != 0 { -magnitude } else { magnitude }
}

fn head(major: u8, argument: u64, out: &mut Vec<u8>) {
    let major = major << 5;
    if argument < 24 {
        out.push(major | argument as u8);
    } else if let Ok(byte) = u8::try_from(argument) {
        out.extend_from_slice(&[major | 24, byte]);
    } else if let Ok(short) = u16::try_from(argument) {
        out.push(major | 25);
        out.extend_from_slice(&short.to_be_bytes());
    } else if let Ok(word) = u32::try_from(argument) {
        out.push(major | 26);
        out.extend_from_slice(&word.to_be_bytes());
    } else {
        out.push(major | 27);
        out.extend_from_slice(&argument.to_be_bytes());
    }
}

fn write(value: &Value, out: &mut Vec<u8>) {
    match value {
        Value::Null => out.push(0xf6),
        Value::Bool(false) => out.push(0xf4),
        Value::Bool(true) => out.push(0xf5),
        Value::Number(number) => {
            if let Some(unsigned) = number.as_u64() {
                head(0, unsigned, out);
            } else if let Some(signed) = number.as_i64() {
                // Negative: -1 - n.
                head(1, (-1 - signed) as u64, out);
            } else {
                out.push(0xfb);
                out.extend_from_slice(&number.as_f64().unwrap_or_default().to_be_bytes());
            }
        }
        Value::String(text) => {
            head(3, text.len() as u64, out);
            out.extend_from_slice(text.as_bytes());
        }
        Value::Array(items) => {
            head(4, items.len() as u64, out);
            for item in items {
                write(item, out);
            }
        }
        Value::Object(map) => {
            head(5, map.len() as u64, out);
            for (key, item) in map {
                head(3, key.len() as u64, out);
                out.extend_from_slice(key.as_bytes());
                write(item, out);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn hex(text: &str) -> Vec<u8> {
        (0..text.len()).step_by(2).map(|at| u8::from_str_radix(&text[at..at + 2], 16).unwrap()).collect()
    }

    /// RFC 8949 Appendix A's examples that map to JSON, decoded.
    #[test]
    fn rfc_examples() {
        let check = |encoded: &str, expected: Value| assert_eq!(decode(&hex(encoded)), Ok(expected), "{encoded}");
        check("00", json!(0));
        check("17", json!(23));
        check("1818", json!(24));
        check("1903e8", json!(1000));
        check("1bffffffffffffffff", json!(u64::MAX));
        check("20", json!(-1));
        check("3903e7", json!(-1000));
        check("f90000", json!(0.0));
        check("f93c00", json!(1.0));
        check("f97bff", json!(65504.0));
        check("fa47c35000", json!(100000.0));
        check("fb3ff199999999999a", json!(1.1));
        check("f4", json!(false));
        check("f5", json!(true));
        check("f6", Value::Null);
        check("f7", Value::Null);
        check("60", json!(""));
        check("6449455446", json!("IETF"));
        check("62c3bc", json!("\u{fc}"));
        check("80", json!([]));
        check("83010203", json!([1, 2, 3]));
        check("8301820203820405", json!([1, [2, 3], [4, 5]]));
        check("a0", json!({}));
        check("a26161016162820203", json!({"a": 1, "b": [2, 3]}));
        check("7f657374726561646d696e67ff", json!("streaming"));
        check("9fff", json!([]));
        check("9f018202039f0405ffff", json!([1, [2, 3], [4, 5]]));
        check("bf61610161629f0203ffff", json!({"a": 1, "b": [2, 3]}));
        check("c074323031332d30332d32315432303a30343a30305a", json!("2013-03-21T20:04:00Z"));
    }

    #[test]
    fn hostile_payloads_are_refused_before_allocating() {
        let check = |encoded: &str, expected: Error| assert_eq!(decode(&hex(encoded)), Err(expected), "{encoded}");
        check("", Error::Truncated);
        check("7a7fffffff", Error::Truncated); // a 2 GiB text string in 5 bytes
        check("9b00000000ffffffff", Error::Truncated); // a 4-billion-item array
        check("bb00000000ffffffff", Error::Truncated); // a 4-billion-pair map
        check("4161", Error::Unsupported); // a byte string
        check("a10101", Error::Unsupported); // an integer map key
        check("62c328", Error::NotUtf8);
        check("0000", Error::TrailingBytes);
        check("ff", Error::Malformed);
        check("1c", Error::Malformed);
        check("f97e00", Error::NotFinite);
        check("f97c00", Error::NotFinite);
        check("3bffffffffffffffff", Error::Unsupported);
        check("7f61", Error::Truncated);
        check("7f01ff", Error::Malformed); // an integer chunk inside indefinite text
        check("8201", Error::Truncated);
        check(&"81".repeat(MAX_DEPTH + 2), Error::TooDeep);
        check(&"9f".repeat(MAX_DEPTH + 2), Error::TooDeep);
        let many = format!("9f{}ff", "00".repeat(MAX_ITEMS + 1));
        check(&many, Error::TooManyItems);
    }

    #[test]
    fn what_is_written_reads_back() {
        for value in [
            json!({"certificateOwnershipToken": "x".repeat(300), "parameters": {"SerialNumber": "1", "n": 24}}),
            json!({"statusCode": 400, "errorCode": "InvalidParameters", "errorMessage": ""}),
            json!([-1, -24, -25, -256, -65537, i64::MIN, u64::MAX, 1.5, true, false, null]),
            json!({"deviceConfiguration": {}, "thingName": "t"}),
        ] {
            assert_eq!(decode(&encode(&value)), Ok(value.clone()), "{value}");
        }
        assert_eq!(encode(&json!(500)), hex("1901f4"));
        assert_eq!(encode(&json!({"a": "b"})), hex("a161616162"));
    }

    /// Random bytes never panic and never allocate past the input (the bounds above), in many
    /// seeded rounds.
    #[test]
    fn arbitrary_bytes_do_not_panic() {
        let mut state = 0x2545_f491_4f6c_dd1du64;
        let mut next = move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        let seeds = [hex("a26161016162820203"), hex("bf61610161629f0203ffff"), hex("7f657374726561646d696e67ff")];
        for round in 0..20_000 {
            let mut bytes = seeds[round % seeds.len()].clone();
            for _ in 0..(next() % 4 + 1) {
                let at = (next() as usize) % bytes.len();
                bytes[at] = next() as u8;
            }
            if next() % 3 == 0 {
                bytes.truncate((next() as usize) % bytes.len());
            }
            let _ = decode(&bytes);
        }
    }
}
