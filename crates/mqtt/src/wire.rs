//! The MQTT data representations (spec 1.5) every packet is built from: a bounds-checked reader
//! over one frozen frame, and a byte sink that either counts or writes.
//!
//! Each packet's encoder is written once, generic over [`Sink`], and run twice: first into a
//! [`Counter`] (which also performs every check, so nothing is written for a packet that fails),
//! then into the output buffer. That is how length prefixes are known before the bytes they count.

use bytes::{Buf, Bytes, BytesMut};

use crate::Error;

/// The largest value a Variable Byte Integer holds (four bytes of seven bits), spec 1.5.5.
pub(crate) const MAX_VARIABLE_BYTE_INTEGER: usize = 268_435_455;

/// The longest UTF-8 string or binary data field: its length is a two-byte integer.
pub(crate) const MAX_FIELD_LEN: usize = u16::MAX as usize;

/// Reads fields front to back from a frame body. Every read checks the bytes are there; running
/// past the end is [`Error::Truncated`]. Binary fields are zero-copy slices of the frame.
pub(crate) struct Reader {
    bytes: Bytes,
}

impl Reader {
    pub(crate) fn new(bytes: Bytes) -> Self {
        Reader { bytes }
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.bytes.is_empty()
    }

    /// The next `len` bytes as a slice of the frame.
    pub(crate) fn take(&mut self, len: usize) -> Result<Bytes, Error> {
        if len > self.bytes.len() {
            return Err(Error::Truncated);
        }
        Ok(self.bytes.split_to(len))
    }

    pub(crate) fn u8(&mut self) -> Result<u8, Error> {
        let byte = *self.bytes.first().ok_or(Error::Truncated)?;
        self.bytes.advance(1);
        Ok(byte)
    }

    pub(crate) fn u16(&mut self) -> Result<u16, Error> {
        let bytes = self.take(2)?;
        Ok(u16::from_be_bytes([bytes[0], bytes[1]]))
    }

    pub(crate) fn u32(&mut self) -> Result<u32, Error> {
        let bytes = self.take(4)?;
        Ok(u32::from_be_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]))
    }

    /// A Variable Byte Integer (spec 1.5.5): at most four bytes, minimally encoded.
    pub(crate) fn variable_byte_integer(&mut self) -> Result<u32, Error> {
        let mut value: u32 = 0;
        for index in 0..4 {
            let byte = self.u8()?;
            value |= u32::from(byte & 0x7F) << (7 * index);
            if byte & 0x80 == 0 {
                if byte == 0 && index > 0 {
                    return Err(Error::MalformedVariableByteInteger);
                }
                return Ok(value);
            }
        }
        Err(Error::MalformedVariableByteInteger)
    }

    /// Binary Data (spec 1.5.6): a two-byte length and that many bytes.
    pub(crate) fn binary(&mut self) -> Result<Bytes, Error> {
        let len = self.u16()?;
        self.take(usize::from(len))
    }

    /// A UTF-8 Encoded String (spec 1.5.4): well-formed UTF-8 without U+0000.
    pub(crate) fn string(&mut self) -> Result<String, Error> {
        let raw = self.binary()?;
        let text = std::str::from_utf8(&raw).map_err(|_| Error::InvalidUtf8)?;
        if text.contains('\0') {
            return Err(Error::NullCharacter);
        }
        Ok(text.to_owned())
    }

    /// Splits off the next `len` bytes as a reader of their own (a property block).
    pub(crate) fn sub_reader(&mut self, len: usize) -> Result<Reader, Error> {
        Ok(Reader::new(self.take(len)?))
    }

    /// Everything left, as a slice of the frame (a PUBLISH payload).
    pub(crate) fn rest(&mut self) -> Bytes {
        std::mem::take(&mut self.bytes)
    }

    /// Refuses bytes left over after the last field.
    pub(crate) fn finish(self) -> Result<(), Error> {
        match self.bytes.len() {
            0 => Ok(()),
            extra => Err(Error::TrailingBytes(extra)),
        }
    }
}

/// Where an encoder puts its bytes.
pub(crate) trait Sink {
    fn put(&mut self, bytes: &[u8]);
}

impl Sink for BytesMut {
    fn put(&mut self, bytes: &[u8]) {
        self.extend_from_slice(bytes);
    }
}

/// A sink that only counts, to learn a length before writing.
#[derive(Default)]
pub(crate) struct Counter(pub(crate) usize);

impl Sink for Counter {
    fn put(&mut self, bytes: &[u8]) {
        self.0 += bytes.len();
    }
}

/// The number of bytes `write` puts into a sink; `write` is run once, into a [`Counter`].
pub(crate) fn measure(write: impl FnOnce(&mut Counter) -> Result<(), Error>) -> Result<usize, Error> {
    let mut counter = Counter::default();
    write(&mut counter)?;
    Ok(counter.0)
}

pub(crate) fn put_u8(sink: &mut impl Sink, value: u8) {
    sink.put(&[value]);
}

pub(crate) fn put_u16(sink: &mut impl Sink, value: u16) {
    sink.put(&value.to_be_bytes());
}

pub(crate) fn put_u32(sink: &mut impl Sink, value: u32) {
    sink.put(&value.to_be_bytes());
}

/// Writes a Variable Byte Integer; a value over [`MAX_VARIABLE_BYTE_INTEGER`] cannot be encoded.
pub(crate) fn put_variable_byte_integer(sink: &mut impl Sink, value: usize) -> Result<(), Error> {
    if value > MAX_VARIABLE_BYTE_INTEGER {
        return Err(Error::PacketTooLarge { size: value, max: MAX_VARIABLE_BYTE_INTEGER });
    }
    let mut value = value;
    loop {
        // Both casts are exact: the value is masked to seven bits.
        let mut byte = (value & 0x7F) as u8;
        value >>= 7;
        if value > 0 {
            byte |= 0x80;
        }
        put_u8(sink, byte);
        if value == 0 {
            return Ok(());
        }
    }
}

/// Writes Binary Data: a two-byte length, then the bytes.
pub(crate) fn put_binary(sink: &mut impl Sink, bytes: &[u8]) -> Result<(), Error> {
    let len = u16::try_from(bytes.len()).map_err(|_| Error::FieldTooLong(bytes.len()))?;
    put_u16(sink, len);
    sink.put(bytes);
    Ok(())
}

/// Writes a UTF-8 Encoded String, refusing U+0000 as a receiver would.
pub(crate) fn put_str(sink: &mut impl Sink, text: &str) -> Result<(), Error> {
    if text.contains('\0') {
        return Err(Error::NullCharacter);
    }
    put_binary(sink, text.as_bytes())
}
