//! SUBSCRIBE, SUBACK, UNSUBSCRIBE and UNSUBACK (spec 3.8 to 3.11).

use crate::properties::{self, Owner};
use crate::publish::read_packet_id;
use crate::wire::{Reader, Sink, put_str, put_u8, put_u16};
use crate::{Error, PacketId, PacketType, Properties, ProtocolVersion, QoS, ReasonCode, TopicFilter};

/// SUBSCRIBE: one or more topic filters with their options.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Subscribe {
    /// The Packet Identifier.
    pub packet_id: PacketId,
    /// The subscriptions, at least one, in the order sent.
    pub subscriptions: Vec<Subscription>,
    /// SUBSCRIBE properties (MQTT 5): at most one subscription identifier, user properties.
    pub properties: Properties,
}

/// One topic filter of a SUBSCRIBE with its Subscription Options. In MQTT 3.1.1 only `qos` is sent;
/// the other options keep their defaults (false, false, [`RetainHandling::SendAtSubscribe`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Subscription {
    /// The Topic Filter.
    pub filter: TopicFilter,
    /// The Maximum QoS the subscriber accepts.
    pub qos: QoS,
    /// No Local (MQTT 5): do not send the subscriber its own messages. Not allowed on a shared
    /// subscription.
    pub no_local: bool,
    /// Retain As Published (MQTT 5): keep the RETAIN flag of forwarded messages.
    pub retain_as_published: bool,
    /// Retain Handling (MQTT 5).
    pub retain_handling: RetainHandling,
}

/// When retained messages are sent for a new subscription (MQTT 5 Retain Handling option).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum RetainHandling {
    /// 0: at the time of the subscribe (the only MQTT 3.1.1 behaviour).
    #[default]
    SendAtSubscribe = 0,
    /// 1: at subscribe only if the subscription did not exist.
    SendAtSubscribeIfNew = 1,
    /// 2: never at subscribe.
    DoNotSend = 2,
}

/// SUBACK: one reason code per subscription, in order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SubAck {
    /// The Packet Identifier of the SUBSCRIBE.
    pub packet_id: PacketId,
    /// One code per subscription: Granted QoS 0-2, or a failure. MQTT 3.1.1 has only
    /// 0x00, 0x01, 0x02 and 0x80 (Failure, which is MQTT 5's Unspecified error).
    pub reason_codes: Vec<ReasonCode>,
    /// SUBACK properties (MQTT 5): reason string, user properties.
    pub properties: Properties,
}

/// UNSUBSCRIBE: one or more topic filters.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Unsubscribe {
    /// The Packet Identifier.
    pub packet_id: PacketId,
    /// The topic filters, at least one.
    pub filters: Vec<TopicFilter>,
    /// UNSUBSCRIBE properties (MQTT 5): user properties.
    pub properties: Properties,
}

/// UNSUBACK.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UnsubAck {
    /// The Packet Identifier of the UNSUBSCRIBE.
    pub packet_id: PacketId,
    /// MQTT 5: one code per topic filter, in order. MQTT 3.1.1 UNSUBACK has no payload: empty when
    /// decoded, and only Success codes (dropped) may be encoded.
    pub reason_codes: Vec<ReasonCode>,
    /// UNSUBACK properties (MQTT 5): reason string, user properties.
    pub properties: Properties,
}

const OPTIONS_QOS: u8 = 0x03;
const OPTIONS_NO_LOCAL: u8 = 0x04;
const OPTIONS_RETAIN_AS_PUBLISHED: u8 = 0x08;
const OPTIONS_RETAIN_HANDLING_SHIFT: u8 = 4;
const OPTIONS_V311_RESERVED: u8 = 0xFC;
const OPTIONS_V5_RESERVED: u8 = 0xC0;

pub(crate) fn decode_subscribe(body: &mut Reader, version: ProtocolVersion) -> Result<Subscribe, Error> {
    let packet_id = read_packet_id(body)?;
    let properties = match version {
        ProtocolVersion::V5 => properties::decode(body, Owner::Subscribe)?,
        ProtocolVersion::V311 => Properties::default(),
    };
    let mut subscriptions = Vec::new();
    while !body.is_empty() {
        let filter = TopicFilter::new(body.string()?)?;
        let options = body.u8()?;
        let reserved = match version {
            ProtocolVersion::V311 => OPTIONS_V311_RESERVED,
            ProtocolVersion::V5 => OPTIONS_V5_RESERVED,
        };
        if options & reserved != 0 {
            return Err(Error::Malformed("subscription options reserved bits are set"));
        }
        let qos =
            QoS::try_from(options & OPTIONS_QOS).map_err(|_| Error::ProtocolError("subscription maximum qos 3"))?;
        let retain_handling = match options >> OPTIONS_RETAIN_HANDLING_SHIFT {
            0 => RetainHandling::SendAtSubscribe,
            1 => RetainHandling::SendAtSubscribeIfNew,
            2 => RetainHandling::DoNotSend,
            _ => return Err(Error::ProtocolError("retain handling 3")),
        };
        let no_local = options & OPTIONS_NO_LOCAL != 0;
        if no_local && filter.share_group().is_some() {
            return Err(Error::ProtocolError("no local on a shared subscription"));
        }
        subscriptions.push(Subscription {
            filter,
            qos,
            no_local,
            retain_as_published: options & OPTIONS_RETAIN_AS_PUBLISHED != 0,
            retain_handling,
        });
    }
    if subscriptions.is_empty() {
        return Err(Error::ProtocolError("subscribe without a topic filter"));
    }
    Ok(Subscribe { packet_id, subscriptions, properties })
}

/// Encodes SUBSCRIBE. For 3.1.1, properties are dropped and options other than the QoS must keep
/// their defaults.
pub(crate) fn encode_subscribe(
    subscribe: &Subscribe,
    version: ProtocolVersion,
    sink: &mut impl Sink,
) -> Result<(), Error> {
    if subscribe.subscriptions.is_empty() {
        return Err(Error::ProtocolError("subscribe without a topic filter"));
    }
    put_u16(sink, subscribe.packet_id.get());
    if version == ProtocolVersion::V5 {
        properties::encode(&subscribe.properties, Owner::Subscribe, sink)?;
    }
    for subscription in &subscribe.subscriptions {
        if subscription.no_local && subscription.filter.share_group().is_some() {
            return Err(Error::ProtocolError("no local on a shared subscription"));
        }
        let mut options = subscription.qos as u8;
        if subscription.no_local {
            options |= OPTIONS_NO_LOCAL;
        }
        if subscription.retain_as_published {
            options |= OPTIONS_RETAIN_AS_PUBLISHED;
        }
        options |= (subscription.retain_handling as u8) << OPTIONS_RETAIN_HANDLING_SHIFT;
        if version == ProtocolVersion::V311 && options & OPTIONS_V311_RESERVED != 0 {
            return Err(Error::NotInVersion("no local, retain as published or retain handling"));
        }
        put_str(sink, subscription.filter.as_str())?;
        put_u8(sink, options);
    }
    Ok(())
}

/// Whether MQTT 3.1.1 has this SUBACK return code.
fn v311_suback_code(code: ReasonCode) -> bool {
    matches!(code.code(), 0x00 | 0x01 | 0x02 | 0x80)
}

pub(crate) fn decode_suback(body: &mut Reader, version: ProtocolVersion) -> Result<SubAck, Error> {
    let packet_id = read_packet_id(body)?;
    let properties = match version {
        ProtocolVersion::V5 => properties::decode(body, Owner::SubAck)?,
        ProtocolVersion::V311 => Properties::default(),
    };
    let mut reason_codes = Vec::new();
    while !body.is_empty() {
        let code = body.u8()?;
        let reason_code = ReasonCode::new(code);
        let valid = match version {
            ProtocolVersion::V311 => v311_suback_code(reason_code),
            ProtocolVersion::V5 => reason_code.allowed_on(PacketType::SubAck),
        };
        if !valid {
            return Err(Error::InvalidReasonCode { code, packet: PacketType::SubAck.name() });
        }
        reason_codes.push(reason_code);
    }
    if reason_codes.is_empty() {
        return Err(Error::ProtocolError("suback without a reason code"));
    }
    Ok(SubAck { packet_id, reason_codes, properties })
}

/// Encodes SUBACK. For 3.1.1, properties are dropped and only 3.1.1's return codes are accepted.
pub(crate) fn encode_suback(suback: &SubAck, version: ProtocolVersion, sink: &mut impl Sink) -> Result<(), Error> {
    if suback.reason_codes.is_empty() {
        return Err(Error::ProtocolError("suback without a reason code"));
    }
    put_u16(sink, suback.packet_id.get());
    if version == ProtocolVersion::V5 {
        properties::encode(&suback.properties, Owner::SubAck, sink)?;
    }
    for &reason_code in &suback.reason_codes {
        match version {
            ProtocolVersion::V311 if !v311_suback_code(reason_code) => {
                return Err(Error::NotInVersion("this suback reason code"));
            }
            ProtocolVersion::V5 if !reason_code.allowed_on(PacketType::SubAck) => {
                return Err(Error::InvalidReasonCode { code: reason_code.code(), packet: PacketType::SubAck.name() });
            }
            _ => put_u8(sink, reason_code.code()),
        }
    }
    Ok(())
}

pub(crate) fn decode_unsubscribe(body: &mut Reader, version: ProtocolVersion) -> Result<Unsubscribe, Error> {
    let packet_id = read_packet_id(body)?;
    let properties = match version {
        ProtocolVersion::V5 => properties::decode(body, Owner::Unsubscribe)?,
        ProtocolVersion::V311 => Properties::default(),
    };
    let mut filters = Vec::new();
    while !body.is_empty() {
        filters.push(TopicFilter::new(body.string()?)?);
    }
    if filters.is_empty() {
        return Err(Error::ProtocolError("unsubscribe without a topic filter"));
    }
    Ok(Unsubscribe { packet_id, filters, properties })
}

/// Encodes UNSUBSCRIBE; for 3.1.1, properties are dropped.
pub(crate) fn encode_unsubscribe(
    unsubscribe: &Unsubscribe,
    version: ProtocolVersion,
    sink: &mut impl Sink,
) -> Result<(), Error> {
    if unsubscribe.filters.is_empty() {
        return Err(Error::ProtocolError("unsubscribe without a topic filter"));
    }
    put_u16(sink, unsubscribe.packet_id.get());
    if version == ProtocolVersion::V5 {
        properties::encode(&unsubscribe.properties, Owner::Unsubscribe, sink)?;
    }
    for filter in &unsubscribe.filters {
        put_str(sink, filter.as_str())?;
    }
    Ok(())
}

pub(crate) fn decode_unsuback(body: &mut Reader, version: ProtocolVersion) -> Result<UnsubAck, Error> {
    let packet_id = read_packet_id(body)?;
    if version == ProtocolVersion::V311 {
        return Ok(UnsubAck { packet_id, reason_codes: Vec::new(), properties: Properties::default() });
    }
    let properties = properties::decode(body, Owner::UnsubAck)?;
    let mut reason_codes = Vec::new();
    while !body.is_empty() {
        let code = body.u8()?;
        let reason_code = ReasonCode::new(code);
        if !reason_code.allowed_on(PacketType::UnsubAck) {
            return Err(Error::InvalidReasonCode { code, packet: PacketType::UnsubAck.name() });
        }
        reason_codes.push(reason_code);
    }
    if reason_codes.is_empty() {
        return Err(Error::ProtocolError("unsuback without a reason code"));
    }
    Ok(UnsubAck { packet_id, reason_codes, properties })
}

/// Encodes UNSUBACK. For 3.1.1 the reason codes, all Success, and the properties are dropped.
pub(crate) fn encode_unsuback(
    unsuback: &UnsubAck,
    version: ProtocolVersion,
    sink: &mut impl Sink,
) -> Result<(), Error> {
    put_u16(sink, unsuback.packet_id.get());
    match version {
        ProtocolVersion::V311 => {
            if unsuback.reason_codes.iter().any(|code| *code != ReasonCode::SUCCESS) {
                return Err(Error::NotInVersion("an unsuback reason code other than success"));
            }
        }
        ProtocolVersion::V5 => {
            if unsuback.reason_codes.is_empty() {
                return Err(Error::ProtocolError("unsuback without a reason code"));
            }
            properties::encode(&unsuback.properties, Owner::UnsubAck, sink)?;
            for reason_code in &unsuback.reason_codes {
                if !reason_code.allowed_on(PacketType::UnsubAck) {
                    return Err(Error::InvalidReasonCode {
                        code: reason_code.code(),
                        packet: PacketType::UnsubAck.name(),
                    });
                }
                put_u8(sink, reason_code.code());
            }
        }
    }
    Ok(())
}
