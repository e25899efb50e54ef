//! The vocabulary every packet shares: protocol versions, QoS, packet identifiers, packet types,
//! and [`Packet`], the enum of all control packets.

use std::fmt;
use std::num::NonZeroU16;

use crate::{
    Auth, ConnAck, Connect, Disconnect, Error, PubAck, PubComp, PubRec, PubRel, Publish, SubAck, Subscribe, UnsubAck,
    Unsubscribe,
};

/// The protocol version of a connection, fixed by its CONNECT.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ProtocolVersion {
    /// MQTT 3.1.1, protocol level 4.
    V311,
    /// MQTT 5.0, protocol level 5.
    V5,
}

impl ProtocolVersion {
    /// The protocol level byte CONNECT carries.
    pub const fn level(self) -> u8 {
        match self {
            ProtocolVersion::V311 => 4,
            ProtocolVersion::V5 => 5,
        }
    }
}

/// A quality of service level.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum QoS {
    /// QoS 0: at most once.
    AtMostOnce = 0,
    /// QoS 1: at least once.
    AtLeastOnce = 1,
    /// QoS 2: exactly once.
    ExactlyOnce = 2,
}

impl TryFrom<u8> for QoS {
    type Error = Error;

    fn try_from(value: u8) -> Result<Self, Error> {
        match value {
            0 => Ok(QoS::AtMostOnce),
            1 => Ok(QoS::AtLeastOnce),
            2 => Ok(QoS::ExactlyOnce),
            other => Err(Error::InvalidQos(other)),
        }
    }
}

/// A packet identifier: non-zero (spec 2.2.1), so 0 cannot be built, sent or received.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PacketId(NonZeroU16);

impl PacketId {
    /// The identifier `id`, `None` for 0.
    pub const fn new(id: u16) -> Option<Self> {
        match NonZeroU16::new(id) {
            Some(id) => Some(PacketId(id)),
            None => None,
        }
    }

    /// The identifier's value.
    pub const fn get(self) -> u16 {
        self.0.get()
    }
}

impl fmt::Display for PacketId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// The control packet type: the high four bits of the fixed header.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum PacketType {
    /// 1, client to server.
    Connect = 1,
    /// 2, server to client.
    ConnAck = 2,
    /// 3, both ways.
    Publish = 3,
    /// 4, both ways.
    PubAck = 4,
    /// 5, both ways.
    PubRec = 5,
    /// 6, both ways.
    PubRel = 6,
    /// 7, both ways.
    PubComp = 7,
    /// 8, client to server.
    Subscribe = 8,
    /// 9, server to client.
    SubAck = 9,
    /// 10, client to server.
    Unsubscribe = 10,
    /// 11, server to client.
    UnsubAck = 11,
    /// 12, client to server.
    PingReq = 12,
    /// 13, server to client.
    PingResp = 13,
    /// 14, client to server (and, in MQTT 5, server to client).
    Disconnect = 14,
    /// 15, both ways, MQTT 5 only.
    Auth = 15,
}

impl PacketType {
    /// The type with this number; `None` for 0 (reserved) and numbers over 15.
    pub const fn from_u8(value: u8) -> Option<Self> {
        Some(match value {
            1 => PacketType::Connect,
            2 => PacketType::ConnAck,
            3 => PacketType::Publish,
            4 => PacketType::PubAck,
            5 => PacketType::PubRec,
            6 => PacketType::PubRel,
            7 => PacketType::PubComp,
            8 => PacketType::Subscribe,
            9 => PacketType::SubAck,
            10 => PacketType::Unsubscribe,
            11 => PacketType::UnsubAck,
            12 => PacketType::PingReq,
            13 => PacketType::PingResp,
            14 => PacketType::Disconnect,
            15 => PacketType::Auth,
            _ => return None,
        })
    }

    /// The packet's name as the spec writes it, lowercased (for messages).
    pub const fn name(self) -> &'static str {
        match self {
            PacketType::Connect => "connect",
            PacketType::ConnAck => "connack",
            PacketType::Publish => "publish",
            PacketType::PubAck => "puback",
            PacketType::PubRec => "pubrec",
            PacketType::PubRel => "pubrel",
            PacketType::PubComp => "pubcomp",
            PacketType::Subscribe => "subscribe",
            PacketType::SubAck => "suback",
            PacketType::Unsubscribe => "unsubscribe",
            PacketType::UnsubAck => "unsuback",
            PacketType::PingReq => "pingreq",
            PacketType::PingResp => "pingresp",
            PacketType::Disconnect => "disconnect",
            PacketType::Auth => "auth",
        }
    }
}

impl fmt::Display for PacketType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// An MQTT control packet, of either protocol version.
///
/// MQTT 5 fields (properties, reason codes) are part of every struct; packets decoded from an
/// MQTT 3.1.1 connection have them empty or at their success value.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Packet {
    /// CONNECT (boxed: far larger than the other packets and sent once per connection).
    Connect(Box<Connect>),
    /// CONNACK.
    ConnAck(ConnAck),
    /// PUBLISH.
    Publish(Publish),
    /// PUBACK.
    PubAck(PubAck),
    /// PUBREC.
    PubRec(PubRec),
    /// PUBREL.
    PubRel(PubRel),
    /// PUBCOMP.
    PubComp(PubComp),
    /// SUBSCRIBE.
    Subscribe(Subscribe),
    /// SUBACK.
    SubAck(SubAck),
    /// UNSUBSCRIBE.
    Unsubscribe(Unsubscribe),
    /// UNSUBACK.
    UnsubAck(UnsubAck),
    /// PINGREQ.
    PingReq,
    /// PINGRESP.
    PingResp,
    /// DISCONNECT.
    Disconnect(Disconnect),
    /// AUTH (MQTT 5 only).
    Auth(Auth),
}

impl Packet {
    /// The packet's type.
    pub const fn packet_type(&self) -> PacketType {
        match self {
            Packet::Connect(_) => PacketType::Connect,
            Packet::ConnAck(_) => PacketType::ConnAck,
            Packet::Publish(_) => PacketType::Publish,
            Packet::PubAck(_) => PacketType::PubAck,
            Packet::PubRec(_) => PacketType::PubRec,
            Packet::PubRel(_) => PacketType::PubRel,
            Packet::PubComp(_) => PacketType::PubComp,
            Packet::Subscribe(_) => PacketType::Subscribe,
            Packet::SubAck(_) => PacketType::SubAck,
            Packet::Unsubscribe(_) => PacketType::Unsubscribe,
            Packet::UnsubAck(_) => PacketType::UnsubAck,
            Packet::PingReq => PacketType::PingReq,
            Packet::PingResp => PacketType::PingResp,
            Packet::Disconnect(_) => PacketType::Disconnect,
            Packet::Auth(_) => PacketType::Auth,
        }
    }
}
