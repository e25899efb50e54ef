//! Framing (the fixed header, spec 2.1) and the entry points: [`check_frame`], [`decode`],
//! [`decode_connect`], [`encode`] and [`encoded_len`].

use bytes::{Buf, BufMut, Bytes, BytesMut};

use crate::connect::{decode_connack, decode_connect as decode_connect_body, encode_connack, encode_connect};
use crate::disconnect::{
    decode_disconnect, decode_reason_and_properties, encode_disconnect, encode_reason_and_properties,
};
use crate::properties::Owner;
use crate::publish::{decode_ack, decode_publish, encode_ack, encode_publish, publish_flags};
use crate::subscribe::{
    decode_suback, decode_subscribe, decode_unsuback, decode_unsubscribe, encode_suback, encode_subscribe,
    encode_unsuback, encode_unsubscribe,
};
use crate::wire::{MAX_VARIABLE_BYTE_INTEGER, Reader, Sink, measure, put_variable_byte_integer};
use crate::{Auth, Connect, Error, Packet, PacketType, ProtocolVersion, PubAck, PubComp, PubRec, PubRel};

/// The largest packet MQTT can frame: one type byte, four length bytes, 268,435,455 body bytes.
pub const MAX_PACKET_SIZE: usize = 1 + 4 + MAX_VARIABLE_BYTE_INTEGER;

/// A fixed header read from the front of a buffer that holds the whole frame.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FrameHeader {
    /// The packet type (high four bits of the first byte).
    pub packet_type: PacketType,
    /// The flags (low four bits of the first byte), not yet checked.
    pub flags: u8,
    /// The fixed header's length: 1 plus the Remaining Length's 1 to 4 bytes.
    pub header_len: usize,
    /// The Remaining Length: the size of the variable header and payload.
    pub remaining_length: usize,
}

impl FrameHeader {
    /// The frame's total size, fixed header included.
    pub const fn frame_len(&self) -> usize {
        self.header_len + self.remaining_length
    }
}

/// Reads the fixed header at the front of `buf`. `Ok(None)` until the whole frame is buffered.
///
/// A frame whose declared total size is over `max_packet_size` is refused with
/// [`Error::PacketTooLarge`] as soon as its Remaining Length is read, before the caller buffers
/// (or allocates for) its body. A Remaining Length with a fifth byte, or not minimally encoded, is
/// [`Error::MalformedRemainingLength`]; packet type 0 is [`Error::InvalidPacketType`].
pub fn check_frame(buf: &[u8], max_packet_size: usize) -> Result<Option<FrameHeader>, Error> {
    let Some(&first) = buf.first() else {
        return Ok(None);
    };
    let packet_type = PacketType::from_u8(first >> 4).ok_or(Error::InvalidPacketType(first >> 4))?;
    let mut remaining_length = 0usize;
    let mut header_len = 1;
    loop {
        if header_len == 5 {
            return Err(Error::MalformedRemainingLength);
        }
        let Some(&byte) = buf.get(header_len) else {
            return Ok(None);
        };
        remaining_length |= usize::from(byte & 0x7F) << (7 * (header_len - 1));
        header_len += 1;
        if byte & 0x80 == 0 {
            if byte == 0 && header_len > 2 {
                return Err(Error::MalformedRemainingLength);
            }
            break;
        }
    }
    let header = FrameHeader { packet_type, flags: first & 0x0F, header_len, remaining_length };
    if header.frame_len() > max_packet_size {
        return Err(Error::PacketTooLarge { size: header.frame_len(), max: max_packet_size });
    }
    if buf.len() < header.frame_len() {
        return Ok(None);
    }
    Ok(Some(header))
}

/// Splits the next whole frame off the front of `buf`, without its fixed header.
fn split_frame(buf: &mut BytesMut, max_packet_size: usize) -> Result<Option<(FrameHeader, Bytes)>, Error> {
    let Some(header) = check_frame(buf, max_packet_size)? else {
        return Ok(None);
    };
    let mut frame = buf.split_to(header.frame_len()).freeze();
    frame.advance(header.header_len);
    Ok(Some((header, frame)))
}

/// Decodes the next packet of a connection speaking `version` from the front of `buf`.
///
/// `Ok(None)` until a whole frame is buffered (then `buf` is untouched: read more and call again).
/// Otherwise the frame is split off `buf` and parsed; the packet's payloads and binary fields
/// are slices of it (no copy). On an error the connection cannot continue: the caller sends the
/// [`Error::reason_code`] (MQTT 5) and closes. CONNECT is decoded by its own protocol level,
/// whatever `version` says; refusing a second CONNECT is the session's job.
pub fn decode(buf: &mut BytesMut, version: ProtocolVersion, max_packet_size: usize) -> Result<Option<Packet>, Error> {
    let Some((header, body)) = split_frame(buf, max_packet_size)? else {
        return Ok(None);
    };
    decode_body(&header, body, version).map(Some)
}

/// Decodes the first packet of a connection, which must be CONNECT (anything else is a
/// [`Error::ProtocolError`]); the returned [`Connect::protocol_version`] is the `version` to
/// pass to [`decode`] and [`encode`] from then on. `Ok(None)` until the whole frame is buffered.
pub fn decode_connect(buf: &mut BytesMut, max_packet_size: usize) -> Result<Option<Connect>, Error> {
    // Refused from its first byte: no need to buffer a frame that will not be accepted.
    if buf.first().is_some_and(|first| first >> 4 != PacketType::Connect as u8) {
        return Err(Error::ProtocolError("the first packet is not connect"));
    }
    let Some((header, body)) = split_frame(buf, max_packet_size)? else {
        return Ok(None);
    };
    match decode_body(&header, body, ProtocolVersion::V5)? {
        Packet::Connect(connect) => Ok(Some(*connect)),
        _ => Err(Error::ProtocolError("the first packet is not connect")),
    }
}

/// Checks the fixed header flags of every packet but PUBLISH (whose flags carry its options).
fn check_flags(header: &FrameHeader) -> Result<(), Error> {
    let expected = match header.packet_type {
        PacketType::Publish => return Ok(()),
        PacketType::PubRel | PacketType::Subscribe | PacketType::Unsubscribe => 0b0010,
        _ => 0,
    };
    if header.flags != expected {
        return Err(Error::InvalidFlags { packet_type: header.packet_type, flags: header.flags });
    }
    Ok(())
}

fn decode_body(header: &FrameHeader, body: Bytes, version: ProtocolVersion) -> Result<Packet, Error> {
    check_flags(header)?;
    let mut reader = Reader::new(body);
    let body = &mut reader;
    let packet_type = header.packet_type;
    let packet = match packet_type {
        PacketType::Connect => Packet::Connect(Box::new(decode_connect_body(body)?)),
        PacketType::ConnAck => Packet::ConnAck(decode_connack(body, version)?),
        PacketType::Publish => Packet::Publish(decode_publish(header.flags, body, version)?),
        PacketType::PubAck => {
            let (packet_id, reason_code, properties) = decode_ack(body, version, packet_type, Owner::PubAck)?;
            Packet::PubAck(PubAck { packet_id, reason_code, properties })
        }
        PacketType::PubRec => {
            let (packet_id, reason_code, properties) = decode_ack(body, version, packet_type, Owner::PubRec)?;
            Packet::PubRec(PubRec { packet_id, reason_code, properties })
        }
        PacketType::PubRel => {
            let (packet_id, reason_code, properties) = decode_ack(body, version, packet_type, Owner::PubRel)?;
            Packet::PubRel(PubRel { packet_id, reason_code, properties })
        }
        PacketType::PubComp => {
            let (packet_id, reason_code, properties) = decode_ack(body, version, packet_type, Owner::PubComp)?;
            Packet::PubComp(PubComp { packet_id, reason_code, properties })
        }
        PacketType::Subscribe => Packet::Subscribe(decode_subscribe(body, version)?),
        PacketType::SubAck => Packet::SubAck(decode_suback(body, version)?),
        PacketType::Unsubscribe => Packet::Unsubscribe(decode_unsubscribe(body, version)?),
        PacketType::UnsubAck => Packet::UnsubAck(decode_unsuback(body, version)?),
        PacketType::PingReq => Packet::PingReq,
        PacketType::PingResp => Packet::PingResp,
        PacketType::Disconnect => Packet::Disconnect(decode_disconnect(body, version)?),
        PacketType::Auth => match version {
            ProtocolVersion::V311 => return Err(Error::InvalidPacketType(packet_type as u8)),
            ProtocolVersion::V5 => {
                let (reason_code, properties) = decode_reason_and_properties(body, packet_type, Owner::Auth)?;
                Packet::Auth(Auth { reason_code, properties })
            }
        },
    };
    reader.finish()?;
    Ok(packet)
}

/// Appends `packet`, encoded for a connection speaking `version`, to `out`.
///
/// Everything is checked before a byte is written, so on an error `out` is unchanged. The
/// encoder refuses what a receiver would refuse (a QoS 1 PUBLISH without a packet identifier,
/// a reason code not allowed on the packet, a property not allowed on it, U+0000 in a string, ...).
///
/// For MQTT 3.1.1, MQTT 5 properties are dropped (forwarding a v5 PUBLISH to a 3.1.1 subscriber
/// just works), while what 3.1.1 cannot mean is refused with [`Error::NotInVersion`]: a reason
/// code other than Success on an acknowledgement or DISCONNECT, a CONNACK reason code without a
/// 3.1.1 return code, a SUBACK code other than 0x00-0x02 and 0x80, a PUBLISH without a topic name,
/// MQTT 5 subscription options, and AUTH. A CONNECT must name `version` as its protocol version.
pub fn encode(packet: &Packet, version: ProtocolVersion, out: &mut BytesMut) -> Result<(), Error> {
    let remaining_length = measure(|counter| encode_body(packet, version, counter))?;
    if remaining_length > MAX_VARIABLE_BYTE_INTEGER {
        return Err(Error::PacketTooLarge { size: 1 + 4 + remaining_length, max: MAX_PACKET_SIZE });
    }
    out.reserve(1 + 4 + remaining_length);
    out.put_u8(first_byte(packet));
    put_variable_byte_integer(out, remaining_length)?;
    encode_body(packet, version, out)
}

/// The size [`encode`] would give `packet`, fixed header included: what to compare with the peer's
/// Maximum Packet Size before sending.
pub fn encoded_len(packet: &Packet, version: ProtocolVersion) -> Result<usize, Error> {
    let remaining_length = measure(|counter| encode_body(packet, version, counter))?;
    let length_len = measure(|counter| put_variable_byte_integer(counter, remaining_length))
        .map_err(|_| Error::PacketTooLarge { size: 1 + 4 + remaining_length, max: MAX_PACKET_SIZE })?;
    Ok(1 + length_len + remaining_length)
}

fn first_byte(packet: &Packet) -> u8 {
    let packet_type = packet.packet_type();
    let flags = match packet {
        Packet::Publish(publish) => publish_flags(publish),
        Packet::PubRel(_) | Packet::Subscribe(_) | Packet::Unsubscribe(_) => 0b0010,
        _ => 0,
    };
    ((packet_type as u8) << 4) | flags
}

fn encode_body(packet: &Packet, version: ProtocolVersion, sink: &mut impl Sink) -> Result<(), Error> {
    let packet_type = packet.packet_type();
    match packet {
        Packet::Connect(connect) => encode_connect(connect, version, sink),
        Packet::ConnAck(connack) => encode_connack(connack, version, sink),
        Packet::Publish(publish) => encode_publish(publish, version, sink),
        Packet::PubAck(ack) => {
            encode_ack((ack.packet_id, ack.reason_code, &ack.properties), version, packet_type, Owner::PubAck, sink)
        }
        Packet::PubRec(ack) => {
            encode_ack((ack.packet_id, ack.reason_code, &ack.properties), version, packet_type, Owner::PubRec, sink)
        }
        Packet::PubRel(ack) => {
            encode_ack((ack.packet_id, ack.reason_code, &ack.properties), version, packet_type, Owner::PubRel, sink)
        }
        Packet::PubComp(ack) => {
            encode_ack((ack.packet_id, ack.reason_code, &ack.properties), version, packet_type, Owner::PubComp, sink)
        }
        Packet::Subscribe(subscribe) => encode_subscribe(subscribe, version, sink),
        Packet::SubAck(suback) => encode_suback(suback, version, sink),
        Packet::Unsubscribe(unsubscribe) => encode_unsubscribe(unsubscribe, version, sink),
        Packet::UnsubAck(unsuback) => encode_unsuback(unsuback, version, sink),
        Packet::PingReq | Packet::PingResp => Ok(()),
        Packet::Disconnect(disconnect) => encode_disconnect(disconnect, version, sink),
        Packet::Auth(auth) => match version {
            ProtocolVersion::V311 => Err(Error::NotInVersion("auth")),
            ProtocolVersion::V5 => {
                encode_reason_and_properties(auth.reason_code, &auth.properties, packet_type, Owner::Auth, sink)
            }
        },
    }
}
