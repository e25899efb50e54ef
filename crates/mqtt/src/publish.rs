//! PUBLISH and its acknowledgements PUBACK, PUBREC, PUBREL, PUBCOMP (spec 3.3 to 3.7).

use bytes::Bytes;

use crate::properties::{self, Owner};
use crate::wire::{Reader, Sink, put_str, put_u8, put_u16};
use crate::{Error, PacketId, PacketType, Properties, ProtocolVersion, QoS, ReasonCode, TopicName};

/// PUBLISH: an application message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Publish {
    /// The DUP flag: a redelivery. Always false at QoS 0.
    pub dup: bool,
    /// The QoS.
    pub qos: QoS,
    /// The RETAIN flag.
    pub retain: bool,
    /// The Topic Name. `None` only in MQTT 5, when the packet sends an empty topic name and the
    /// Topic Alias property stands for it; resolving (and recording) aliases is the session's job.
    pub topic: Option<TopicName>,
    /// The Packet Identifier: present exactly when the QoS is 1 or 2.
    pub packet_id: Option<PacketId>,
    /// PUBLISH properties (MQTT 5).
    pub properties: Properties,
    /// The payload: a zero-copy slice of the frame when decoded.
    pub payload: Bytes,
}

const DUP: u8 = 0x08;
const QOS_SHIFT: u8 = 1;
const RETAIN: u8 = 0x01;

pub(crate) fn read_packet_id(body: &mut Reader) -> Result<PacketId, Error> {
    PacketId::new(body.u16()?).ok_or(Error::ZeroPacketId)
}

pub(crate) fn decode_publish(flags: u8, body: &mut Reader, version: ProtocolVersion) -> Result<Publish, Error> {
    let qos = QoS::try_from((flags >> QOS_SHIFT) & 0x03)?;
    let dup = flags & DUP != 0;
    if dup && qos == QoS::AtMostOnce {
        return Err(Error::ProtocolError("dup flag set on a qos 0 publish"));
    }
    let topic = body.string()?;
    // MQTT 5 may send an empty topic name, standing for the Topic Alias property.
    let topic = match topic.is_empty() && version == ProtocolVersion::V5 {
        true => None,
        false => Some(TopicName::new(topic)?),
    };
    let packet_id = match qos {
        QoS::AtMostOnce => None,
        QoS::AtLeastOnce | QoS::ExactlyOnce => Some(read_packet_id(body)?),
    };
    let properties = match version {
        ProtocolVersion::V5 => properties::decode(body, Owner::Publish)?,
        ProtocolVersion::V311 => Properties::default(),
    };
    if topic.is_none() && properties.topic_alias.is_none() {
        return Err(Error::ProtocolError("empty topic name without a topic alias"));
    }
    Ok(Publish { dup, qos, retain: flags & RETAIN != 0, topic, packet_id, properties, payload: body.rest() })
}

/// The fixed header flags of a PUBLISH.
pub(crate) fn publish_flags(publish: &Publish) -> u8 {
    let mut flags = (publish.qos as u8) << QOS_SHIFT;
    if publish.dup {
        flags |= DUP;
    }
    if publish.retain {
        flags |= RETAIN;
    }
    flags
}

/// Encodes PUBLISH's variable header and payload. For 3.1.1, properties are dropped and a missing
/// topic name (topic alias) is refused.
pub(crate) fn encode_publish(publish: &Publish, version: ProtocolVersion, sink: &mut impl Sink) -> Result<(), Error> {
    if publish.dup && publish.qos == QoS::AtMostOnce {
        return Err(Error::ProtocolError("dup flag set on a qos 0 publish"));
    }
    match (&publish.topic, version) {
        (Some(topic), _) => put_str(sink, topic.as_str())?,
        (None, ProtocolVersion::V311) => {
            return Err(Error::NotInVersion("a publish without a topic name (topic alias)"));
        }
        (None, ProtocolVersion::V5) if publish.properties.topic_alias.is_none() => {
            return Err(Error::ProtocolError("empty topic name without a topic alias"));
        }
        (None, ProtocolVersion::V5) => put_str(sink, "")?,
    }
    match (publish.qos, publish.packet_id) {
        (QoS::AtMostOnce, None) => {}
        (QoS::AtLeastOnce | QoS::ExactlyOnce, Some(packet_id)) => put_u16(sink, packet_id.get()),
        (QoS::AtMostOnce, Some(_)) => {
            return Err(Error::ProtocolError("packet identifier on a qos 0 publish"));
        }
        (QoS::AtLeastOnce | QoS::ExactlyOnce, None) => {
            return Err(Error::ProtocolError("qos 1 or 2 publish without a packet identifier"));
        }
    }
    if version == ProtocolVersion::V5 {
        properties::encode(&publish.properties, Owner::Publish, sink)?;
    }
    sink.put(&publish.payload);
    Ok(())
}

/// PUBACK: the answer to a QoS 1 PUBLISH.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PubAck {
    /// The Packet Identifier of the PUBLISH.
    pub packet_id: PacketId,
    /// The reason code (MQTT 5); always Success in MQTT 3.1.1.
    pub reason_code: ReasonCode,
    /// PUBACK properties (MQTT 5): reason string, user properties.
    pub properties: Properties,
}

/// PUBREC: the first answer to a QoS 2 PUBLISH.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PubRec {
    /// The Packet Identifier of the PUBLISH.
    pub packet_id: PacketId,
    /// The reason code (MQTT 5); always Success in MQTT 3.1.1.
    pub reason_code: ReasonCode,
    /// PUBREC properties (MQTT 5): reason string, user properties.
    pub properties: Properties,
}

/// PUBREL: the answer to PUBREC.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PubRel {
    /// The Packet Identifier of the PUBLISH.
    pub packet_id: PacketId,
    /// The reason code (MQTT 5); always Success in MQTT 3.1.1.
    pub reason_code: ReasonCode,
    /// PUBREL properties (MQTT 5): reason string, user properties.
    pub properties: Properties,
}

/// PUBCOMP: the answer to PUBREL, ending a QoS 2 exchange.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PubComp {
    /// The Packet Identifier of the PUBLISH.
    pub packet_id: PacketId,
    /// The reason code (MQTT 5); always Success in MQTT 3.1.1.
    pub reason_code: ReasonCode,
    /// PUBCOMP properties (MQTT 5): reason string, user properties.
    pub properties: Properties,
}

impl PubAck {
    /// A successful PUBACK without properties.
    pub fn new(packet_id: PacketId) -> Self {
        PubAck { packet_id, reason_code: ReasonCode::SUCCESS, properties: Properties::default() }
    }
}

impl PubRec {
    /// A successful PUBREC without properties.
    pub fn new(packet_id: PacketId) -> Self {
        PubRec { packet_id, reason_code: ReasonCode::SUCCESS, properties: Properties::default() }
    }
}

impl PubRel {
    /// A successful PUBREL without properties.
    pub fn new(packet_id: PacketId) -> Self {
        PubRel { packet_id, reason_code: ReasonCode::SUCCESS, properties: Properties::default() }
    }
}

impl PubComp {
    /// A successful PUBCOMP without properties.
    pub fn new(packet_id: PacketId) -> Self {
        PubComp { packet_id, reason_code: ReasonCode::SUCCESS, properties: Properties::default() }
    }
}

/// Decodes the body the four acknowledgements share: a packet identifier, then in MQTT 5 a reason
/// code and properties, both omissible (remaining length 2: Success and no properties; 3: no
/// properties).
pub(crate) fn decode_ack(
    body: &mut Reader,
    version: ProtocolVersion,
    packet_type: PacketType,
    owner: Owner,
) -> Result<(PacketId, ReasonCode, Properties), Error> {
    let packet_id = read_packet_id(body)?;
    if version == ProtocolVersion::V311 || body.is_empty() {
        return Ok((packet_id, ReasonCode::SUCCESS, Properties::default()));
    }
    let code = body.u8()?;
    let reason_code = ReasonCode::new(code);
    if !reason_code.allowed_on(packet_type) {
        return Err(Error::InvalidReasonCode { code, packet: packet_type.name() });
    }
    let properties = match body.is_empty() {
        true => Properties::default(),
        false => properties::decode(body, owner)?,
    };
    Ok((packet_id, reason_code, properties))
}

/// Encodes an acknowledgement in its shortest form. For 3.1.1, properties are dropped and a
/// reason code other than Success is refused (3.1.1 acknowledgements cannot refuse).
pub(crate) fn encode_ack(
    (packet_id, reason_code, properties): (PacketId, ReasonCode, &Properties),
    version: ProtocolVersion,
    packet_type: PacketType,
    owner: Owner,
    sink: &mut impl Sink,
) -> Result<(), Error> {
    put_u16(sink, packet_id.get());
    match version {
        ProtocolVersion::V311 if reason_code != ReasonCode::SUCCESS => {
            Err(Error::NotInVersion("a reason code other than success"))
        }
        ProtocolVersion::V311 => Ok(()),
        ProtocolVersion::V5 if !reason_code.allowed_on(packet_type) => {
            Err(Error::InvalidReasonCode { code: reason_code.code(), packet: packet_type.name() })
        }
        ProtocolVersion::V5 => {
            if reason_code == ReasonCode::SUCCESS && properties.is_empty() {
                return Ok(());
            }
            put_u8(sink, reason_code.code());
            if !properties.is_empty() {
                properties::encode(properties, owner, sink)?;
            }
            Ok(())
        }
    }
}
