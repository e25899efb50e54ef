//! The one error type of the crate, and the one place that maps an error to the MQTT 5 reason
//! code a server or client sends before closing the connection ([`Error::reason_code`]).
//!
//! Decoding errors describe what the peer sent; encoding errors describe a packet the caller built
//! that the wire (or the connection's protocol version) cannot carry. No variant holds peer bytes.

use crate::properties::property_name;
use crate::{PacketType, ReasonCode};

/// Everything that can go wrong decoding or encoding a packet.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    /// The fixed header's Remaining Length has a fifth continuation byte, or is not minimally
    /// encoded (spec 1.5.5, 2.1.4).
    #[error("malformed remaining length")]
    MalformedRemainingLength,
    /// A Variable Byte Integer inside the packet (a property length, a subscription identifier)
    /// is longer than four bytes, not minimally encoded, or runs past the end of the packet.
    #[error("malformed variable byte integer")]
    MalformedVariableByteInteger,
    /// The packet's total size (fixed header included) is over the maximum: when decoding, the
    /// configured maximum, checked before the packet is buffered; when encoding, what the
    /// Remaining Length (or a property length) can express.
    #[error("packet of {size} bytes exceeds the maximum of {max} bytes")]
    PacketTooLarge {
        /// The size the packet declares (decoding) or would have (encoding).
        size: usize,
        /// The largest size allowed.
        max: usize,
    },
    /// A field runs past the end of the packet: the Remaining Length is shorter than the content.
    #[error("packet truncated: a field runs past the end of the packet")]
    Truncated,
    /// Bytes are left over after the packet's last field.
    #[error("{0} trailing bytes after the packet's last field")]
    TrailingBytes(usize),
    /// The fixed header names a reserved packet type (0, or 15 in MQTT 3.1.1).
    #[error("invalid packet type {0}")]
    InvalidPacketType(u8),
    /// The fixed header's flags are not the ones the packet type requires.
    #[error("invalid flags {flags:#06b} for {packet_type}")]
    InvalidFlags {
        /// The packet type.
        packet_type: PacketType,
        /// The four flag bits as received.
        flags: u8,
    },
    /// A QoS of 3 in a PUBLISH fixed header or in CONNECT's will flags.
    #[error("invalid qos {0}")]
    InvalidQos(u8),
    /// A packet identifier of 0 (spec 2.2.1: packet identifiers are non-zero).
    #[error("packet identifier 0")]
    ZeroPacketId,
    /// A string is not well-formed UTF-8.
    #[error("string is not valid utf-8")]
    InvalidUtf8,
    /// A string contains U+0000 (spec 1.5.4: MQTT-1.5.4-2).
    #[error("string contains the null character u+0000")]
    NullCharacter,
    /// A string or binary field to encode is longer than its two-byte length can express.
    #[error("field of {0} bytes is longer than 65535 bytes")]
    FieldTooLong(usize),
    /// A topic name is empty, holds a wildcard or U+0000, or is longer than 65535 bytes.
    #[error("invalid topic name: {0}")]
    InvalidTopicName(&'static str),
    /// A topic filter is empty, places a wildcard wrongly, or is a malformed shared subscription.
    #[error("invalid topic filter: {0}")]
    InvalidTopicFilter(&'static str),
    /// A property identifier that MQTT 5 does not define.
    #[error("unknown property identifier {0:#04x}")]
    UnknownProperty(u8),
    /// A property that this packet may not carry (spec 2.2.2.2).
    #[error("property {} is not allowed on {packet}", property_name(*.property))]
    PropertyNotAllowed {
        /// The property identifier.
        property: u8,
        /// The packet (or "will properties").
        packet: &'static str,
    },
    /// A single-valued property appears more than once.
    #[error("duplicate property {}", property_name(*.0))]
    DuplicateProperty(u8),
    /// A property's value is out of its range (a receive maximum of 0, a topic alias of 0, a
    /// boolean byte other than 0 or 1, ...).
    #[error("invalid value for property {}", property_name(*.0))]
    InvalidPropertyValue(u8),
    /// A reason code that this packet may not carry (or, in 3.1.1, an unknown return code).
    #[error("reason code {code:#04x} is not valid on {packet}")]
    InvalidReasonCode {
        /// The code as received.
        code: u8,
        /// The packet.
        packet: &'static str,
    },
    /// The protocol name in CONNECT is not "MQTT" (or "MQIsdp", see
    /// [`Error::UnsupportedProtocolVersion`]).
    #[error("invalid protocol name")]
    InvalidProtocolName,
    /// CONNECT asks for a protocol level other than 4 (3.1.1) or 5 (5.0); MQIsdp 3 (3.1) is one.
    #[error("unsupported protocol level {0}")]
    UnsupportedProtocolVersion(u8),
    /// A packet that does not follow the spec's layout (reserved bits set, inconsistent flags).
    #[error("malformed packet: {0}")]
    Malformed(&'static str),
    /// A packet that parses but breaks a rule of the protocol.
    #[error("protocol error: {0}")]
    ProtocolError(&'static str),
    /// A packet to encode carries something MQTT 3.1.1 cannot express (see the crate docs).
    #[error("{0} cannot be sent over mqtt 3.1.1")]
    NotInVersion(&'static str),
    /// A CONNECT to encode names a protocol version other than the one passed to `encode`.
    #[error("connect packet is for another protocol version than the one given")]
    VersionMismatch,
}

impl Error {
    /// The MQTT 5 reason code to send (in CONNACK before a session, in DISCONNECT after) when the
    /// peer sent a packet that fails with this error: Malformed Packet for what cannot be parsed,
    /// Protocol Error for what parses but breaks a rule, and the specific codes the spec names
    /// (Packet too large, Topic Name invalid, Topic Filter invalid, Topic Alias invalid,
    /// Unsupported Protocol Version). Encoding errors map to Unspecified error.
    pub fn reason_code(&self) -> ReasonCode {
        match self {
            Error::MalformedRemainingLength
            | Error::MalformedVariableByteInteger
            | Error::Truncated
            | Error::TrailingBytes(_)
            | Error::InvalidPacketType(_)
            | Error::InvalidFlags { .. }
            | Error::InvalidQos(_)
            | Error::InvalidUtf8
            | Error::NullCharacter
            | Error::UnknownProperty(_)
            | Error::PropertyNotAllowed { .. }
            | Error::InvalidReasonCode { .. }
            | Error::Malformed(_) => ReasonCode::MALFORMED_PACKET,
            Error::InvalidPropertyValue(crate::properties::id::TOPIC_ALIAS) => ReasonCode::TOPIC_ALIAS_INVALID,
            Error::ZeroPacketId
            | Error::DuplicateProperty(_)
            | Error::InvalidPropertyValue(_)
            | Error::ProtocolError(_) => ReasonCode::PROTOCOL_ERROR,
            Error::PacketTooLarge { .. } => ReasonCode::PACKET_TOO_LARGE,
            Error::InvalidTopicName(_) => ReasonCode::TOPIC_NAME_INVALID,
            Error::InvalidTopicFilter(_) => ReasonCode::TOPIC_FILTER_INVALID,
            Error::InvalidProtocolName | Error::UnsupportedProtocolVersion(_) => {
                ReasonCode::UNSUPPORTED_PROTOCOL_VERSION
            }
            Error::FieldTooLong(_) | Error::NotInVersion(_) | Error::VersionMismatch => ReasonCode::UNSPECIFIED_ERROR,
        }
    }
}
