//! MQTT 5 reason codes (spec 2.4) and the MQTT 3.1.1 CONNACK return codes they map to.

use std::fmt;

use crate::{PacketType, QoS};

/// An MQTT 5 reason code: one byte, below 0x80 for success, 0x80 and above for failure.
///
/// A newtype rather than an enum because one value has several names depending on the packet
/// (0x00 is Success, Normal disconnection and Granted QoS 0). Any byte can be held; the decoder
/// only lets through the codes the spec allows on the packet at hand.
#[derive(Clone, Copy, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ReasonCode(u8);

impl ReasonCode {
    /// 0x00 Success (CONNACK, PUBACK, PUBREC, PUBREL, PUBCOMP, UNSUBACK, AUTH).
    pub const SUCCESS: Self = Self(0x00);
    /// 0x00 Normal disconnection (DISCONNECT).
    pub const NORMAL_DISCONNECTION: Self = Self(0x00);
    /// 0x00 Granted QoS 0 (SUBACK).
    pub const GRANTED_QOS_0: Self = Self(0x00);
    /// 0x01 Granted QoS 1 (SUBACK).
    pub const GRANTED_QOS_1: Self = Self(0x01);
    /// 0x02 Granted QoS 2 (SUBACK).
    pub const GRANTED_QOS_2: Self = Self(0x02);
    /// 0x04 Disconnect with Will Message (DISCONNECT).
    pub const DISCONNECT_WITH_WILL_MESSAGE: Self = Self(0x04);
    /// 0x10 No matching subscribers (PUBACK, PUBREC).
    pub const NO_MATCHING_SUBSCRIBERS: Self = Self(0x10);
    /// 0x11 No subscription existed (UNSUBACK).
    pub const NO_SUBSCRIPTION_EXISTED: Self = Self(0x11);
    /// 0x18 Continue authentication (AUTH).
    pub const CONTINUE_AUTHENTICATION: Self = Self(0x18);
    /// 0x19 Re-authenticate (AUTH).
    pub const RE_AUTHENTICATE: Self = Self(0x19);
    /// 0x80 Unspecified error.
    pub const UNSPECIFIED_ERROR: Self = Self(0x80);
    /// 0x81 Malformed Packet.
    pub const MALFORMED_PACKET: Self = Self(0x81);
    /// 0x82 Protocol Error.
    pub const PROTOCOL_ERROR: Self = Self(0x82);
    /// 0x83 Implementation specific error.
    pub const IMPLEMENTATION_SPECIFIC_ERROR: Self = Self(0x83);
    /// 0x84 Unsupported Protocol Version.
    pub const UNSUPPORTED_PROTOCOL_VERSION: Self = Self(0x84);
    /// 0x85 Client Identifier not valid.
    pub const CLIENT_IDENTIFIER_NOT_VALID: Self = Self(0x85);
    /// 0x86 Bad User Name or Password.
    pub const BAD_USER_NAME_OR_PASSWORD: Self = Self(0x86);
    /// 0x87 Not authorized.
    pub const NOT_AUTHORIZED: Self = Self(0x87);
    /// 0x88 Server unavailable.
    pub const SERVER_UNAVAILABLE: Self = Self(0x88);
    /// 0x89 Server busy.
    pub const SERVER_BUSY: Self = Self(0x89);
    /// 0x8A Banned.
    pub const BANNED: Self = Self(0x8A);
    /// 0x8B Server shutting down.
    pub const SERVER_SHUTTING_DOWN: Self = Self(0x8B);
    /// 0x8C Bad authentication method.
    pub const BAD_AUTHENTICATION_METHOD: Self = Self(0x8C);
    /// 0x8D Keep Alive timeout.
    pub const KEEP_ALIVE_TIMEOUT: Self = Self(0x8D);
    /// 0x8E Session taken over.
    pub const SESSION_TAKEN_OVER: Self = Self(0x8E);
    /// 0x8F Topic Filter invalid.
    pub const TOPIC_FILTER_INVALID: Self = Self(0x8F);
    /// 0x90 Topic Name invalid.
    pub const TOPIC_NAME_INVALID: Self = Self(0x90);
    /// 0x91 Packet Identifier in use.
    pub const PACKET_IDENTIFIER_IN_USE: Self = Self(0x91);
    /// 0x92 Packet Identifier not found.
    pub const PACKET_IDENTIFIER_NOT_FOUND: Self = Self(0x92);
    /// 0x93 Receive Maximum exceeded.
    pub const RECEIVE_MAXIMUM_EXCEEDED: Self = Self(0x93);
    /// 0x94 Topic Alias invalid.
    pub const TOPIC_ALIAS_INVALID: Self = Self(0x94);
    /// 0x95 Packet too large.
    pub const PACKET_TOO_LARGE: Self = Self(0x95);
    /// 0x96 Message rate too high.
    pub const MESSAGE_RATE_TOO_HIGH: Self = Self(0x96);
    /// 0x97 Quota exceeded.
    pub const QUOTA_EXCEEDED: Self = Self(0x97);
    /// 0x98 Administrative action.
    pub const ADMINISTRATIVE_ACTION: Self = Self(0x98);
    /// 0x99 Payload format invalid.
    pub const PAYLOAD_FORMAT_INVALID: Self = Self(0x99);
    /// 0x9A Retain not supported.
    pub const RETAIN_NOT_SUPPORTED: Self = Self(0x9A);
    /// 0x9B QoS not supported.
    pub const QOS_NOT_SUPPORTED: Self = Self(0x9B);
    /// 0x9C Use another server.
    pub const USE_ANOTHER_SERVER: Self = Self(0x9C);
    /// 0x9D Server moved.
    pub const SERVER_MOVED: Self = Self(0x9D);
    /// 0x9E Shared Subscriptions not supported.
    pub const SHARED_SUBSCRIPTIONS_NOT_SUPPORTED: Self = Self(0x9E);
    /// 0x9F Connection rate exceeded.
    pub const CONNECTION_RATE_EXCEEDED: Self = Self(0x9F);
    /// 0xA0 Maximum connect time.
    pub const MAXIMUM_CONNECT_TIME: Self = Self(0xA0);
    /// 0xA1 Subscription Identifiers not supported.
    pub const SUBSCRIPTION_IDENTIFIERS_NOT_SUPPORTED: Self = Self(0xA1);
    /// 0xA2 Wildcard Subscriptions not supported.
    pub const WILDCARD_SUBSCRIPTIONS_NOT_SUPPORTED: Self = Self(0xA2);

    /// The reason code with this byte value (whether or not MQTT 5 defines it).
    pub const fn new(code: u8) -> Self {
        Self(code)
    }

    /// The byte value.
    pub const fn code(self) -> u8 {
        self.0
    }

    /// True for failures (0x80 and above).
    pub const fn is_error(self) -> bool {
        self.0 >= 0x80
    }

    /// The SUBACK code granting `qos`.
    pub const fn granted(qos: QoS) -> Self {
        Self(qos as u8)
    }

    /// The reason code an MQTT 3.1.1 CONNACK return code stands for: 0 Connection Accepted,
    /// 1 unacceptable protocol version, 2 identifier rejected, 3 server unavailable, 4 bad user
    /// name or password, 5 not authorized. `None` for the reserved codes 6-255.
    pub const fn from_v311_connack(return_code: u8) -> Option<Self> {
        match return_code {
            0 => Some(Self::SUCCESS),
            1 => Some(Self::UNSUPPORTED_PROTOCOL_VERSION),
            2 => Some(Self::CLIENT_IDENTIFIER_NOT_VALID),
            3 => Some(Self::SERVER_UNAVAILABLE),
            4 => Some(Self::BAD_USER_NAME_OR_PASSWORD),
            5 => Some(Self::NOT_AUTHORIZED),
            _ => None,
        }
    }

    /// The MQTT 3.1.1 CONNACK return code for this reason code, the inverse of
    /// [`ReasonCode::from_v311_connack`]; `None` for the reason codes 3.1.1 has no return code for.
    pub const fn to_v311_connack(self) -> Option<u8> {
        match self {
            Self::SUCCESS => Some(0),
            Self::UNSUPPORTED_PROTOCOL_VERSION => Some(1),
            Self::CLIENT_IDENTIFIER_NOT_VALID => Some(2),
            Self::SERVER_UNAVAILABLE => Some(3),
            Self::BAD_USER_NAME_OR_PASSWORD => Some(4),
            Self::NOT_AUTHORIZED => Some(5),
            _ => None,
        }
    }

    /// The spec's name for the code (for 0x00 "success"), `None` if MQTT 5 does not define it.
    pub const fn name(self) -> Option<&'static str> {
        Some(match self.0 {
            0x00 => "success",
            0x01 => "granted qos 1",
            0x02 => "granted qos 2",
            0x04 => "disconnect with will message",
            0x10 => "no matching subscribers",
            0x11 => "no subscription existed",
            0x18 => "continue authentication",
            0x19 => "re-authenticate",
            0x80 => "unspecified error",
            0x81 => "malformed packet",
            0x82 => "protocol error",
            0x83 => "implementation specific error",
            0x84 => "unsupported protocol version",
            0x85 => "client identifier not valid",
            0x86 => "bad user name or password",
            0x87 => "not authorized",
            0x88 => "server unavailable",
            0x89 => "server busy",
            0x8A => "banned",
            0x8B => "server shutting down",
            0x8C => "bad authentication method",
            0x8D => "keep alive timeout",
            0x8E => "session taken over",
            0x8F => "topic filter invalid",
            0x90 => "topic name invalid",
            0x91 => "packet identifier in use",
            0x92 => "packet identifier not found",
            0x93 => "receive maximum exceeded",
            0x94 => "topic alias invalid",
            0x95 => "packet too large",
            0x96 => "message rate too high",
            0x97 => "quota exceeded",
            0x98 => "administrative action",
            0x99 => "payload format invalid",
            0x9A => "retain not supported",
            0x9B => "qos not supported",
            0x9C => "use another server",
            0x9D => "server moved",
            0x9E => "shared subscriptions not supported",
            0x9F => "connection rate exceeded",
            0xA0 => "maximum connect time",
            0xA1 => "subscription identifiers not supported",
            0xA2 => "wildcard subscriptions not supported",
            _ => return None,
        })
    }

    /// Whether MQTT 5 allows this code on a packet of this type (the tables of spec 3.2.2.2,
    /// 3.4.2.1, 3.5.2.1, 3.6.2.1, 3.7.2.1, 3.9.3, 3.11.3, 3.14.2.1, 3.15.2.1).
    pub(crate) fn allowed_on(self, packet_type: PacketType) -> bool {
        match packet_type {
            PacketType::ConnAck => matches!(
                self.0,
                0x00 | 0x80..=0x8A | 0x8C | 0x90 | 0x95 | 0x97 | 0x99..=0x9D | 0x9F
            ),
            PacketType::PubAck | PacketType::PubRec => {
                matches!(self.0, 0x00 | 0x10 | 0x80 | 0x83 | 0x87 | 0x90 | 0x91 | 0x97 | 0x99)
            }
            PacketType::PubRel | PacketType::PubComp => matches!(self.0, 0x00 | 0x92),
            PacketType::SubAck => {
                matches!(self.0, 0x00..=0x02 | 0x80 | 0x83 | 0x87 | 0x8F | 0x91 | 0x97 | 0x9E | 0xA1 | 0xA2)
            }
            PacketType::UnsubAck => {
                matches!(self.0, 0x00 | 0x11 | 0x80 | 0x83 | 0x87 | 0x8F | 0x91)
            }
            PacketType::Disconnect => matches!(
                self.0,
                0x00 | 0x04 | 0x80..=0x83 | 0x87 | 0x89 | 0x8B | 0x8D..=0x90 | 0x93..=0xA2
            ),
            PacketType::Auth => matches!(self.0, 0x00 | 0x18 | 0x19),
            _ => false,
        }
    }
}

impl fmt::Debug for ReasonCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ReasonCode({:#04x} {})", self.0, self.name().unwrap_or("unknown"))
    }
}

impl fmt::Display for ReasonCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({:#04x})", self.name().unwrap_or("unknown reason code"), self.0)
    }
}
