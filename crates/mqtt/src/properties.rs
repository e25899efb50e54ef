//! MQTT 5 properties (spec 2.2.2): one struct for every packet, decoded and encoded with the
//! spec's rules on which property a packet may carry, how often, and with which values.

use std::num::{NonZeroU16, NonZeroU32};

use bytes::Bytes;

use crate::wire::{
    MAX_VARIABLE_BYTE_INTEGER, Reader, Sink, measure, put_binary, put_str, put_u8, put_u16, put_u32,
    put_variable_byte_integer,
};
use crate::{Error, QoS, TopicName};

/// Property identifiers (spec 2.2.2.2).
pub(crate) mod id {
    pub(crate) const PAYLOAD_FORMAT_INDICATOR: u8 = 0x01;
    pub(crate) const MESSAGE_EXPIRY_INTERVAL: u8 = 0x02;
    pub(crate) const CONTENT_TYPE: u8 = 0x03;
    pub(crate) const RESPONSE_TOPIC: u8 = 0x08;
    pub(crate) const CORRELATION_DATA: u8 = 0x09;
    pub(crate) const SUBSCRIPTION_IDENTIFIER: u8 = 0x0B;
    pub(crate) const SESSION_EXPIRY_INTERVAL: u8 = 0x11;
    pub(crate) const ASSIGNED_CLIENT_IDENTIFIER: u8 = 0x12;
    pub(crate) const SERVER_KEEP_ALIVE: u8 = 0x13;
    pub(crate) const AUTHENTICATION_METHOD: u8 = 0x15;
    pub(crate) const AUTHENTICATION_DATA: u8 = 0x16;
    pub(crate) const REQUEST_PROBLEM_INFORMATION: u8 = 0x17;
    pub(crate) const WILL_DELAY_INTERVAL: u8 = 0x18;
    pub(crate) const REQUEST_RESPONSE_INFORMATION: u8 = 0x19;
    pub(crate) const RESPONSE_INFORMATION: u8 = 0x1A;
    pub(crate) const SERVER_REFERENCE: u8 = 0x1C;
    pub(crate) const REASON_STRING: u8 = 0x1F;
    pub(crate) const RECEIVE_MAXIMUM: u8 = 0x21;
    pub(crate) const TOPIC_ALIAS_MAXIMUM: u8 = 0x22;
    pub(crate) const TOPIC_ALIAS: u8 = 0x23;
    pub(crate) const MAXIMUM_QOS: u8 = 0x24;
    pub(crate) const RETAIN_AVAILABLE: u8 = 0x25;
    pub(crate) const USER_PROPERTY: u8 = 0x26;
    pub(crate) const MAXIMUM_PACKET_SIZE: u8 = 0x27;
    pub(crate) const WILDCARD_SUBSCRIPTION_AVAILABLE: u8 = 0x28;
    pub(crate) const SUBSCRIPTION_IDENTIFIER_AVAILABLE: u8 = 0x29;
    pub(crate) const SHARED_SUBSCRIPTION_AVAILABLE: u8 = 0x2A;
}

use id::*;

/// The spec's name of a property, for error messages.
pub(crate) fn property_name(property: u8) -> &'static str {
    match property {
        PAYLOAD_FORMAT_INDICATOR => "payload format indicator",
        MESSAGE_EXPIRY_INTERVAL => "message expiry interval",
        CONTENT_TYPE => "content type",
        RESPONSE_TOPIC => "response topic",
        CORRELATION_DATA => "correlation data",
        SUBSCRIPTION_IDENTIFIER => "subscription identifier",
        SESSION_EXPIRY_INTERVAL => "session expiry interval",
        ASSIGNED_CLIENT_IDENTIFIER => "assigned client identifier",
        SERVER_KEEP_ALIVE => "server keep alive",
        AUTHENTICATION_METHOD => "authentication method",
        AUTHENTICATION_DATA => "authentication data",
        REQUEST_PROBLEM_INFORMATION => "request problem information",
        WILL_DELAY_INTERVAL => "will delay interval",
        REQUEST_RESPONSE_INFORMATION => "request response information",
        RESPONSE_INFORMATION => "response information",
        SERVER_REFERENCE => "server reference",
        REASON_STRING => "reason string",
        RECEIVE_MAXIMUM => "receive maximum",
        TOPIC_ALIAS_MAXIMUM => "topic alias maximum",
        TOPIC_ALIAS => "topic alias",
        MAXIMUM_QOS => "maximum qos",
        RETAIN_AVAILABLE => "retain available",
        USER_PROPERTY => "user property",
        MAXIMUM_PACKET_SIZE => "maximum packet size",
        WILDCARD_SUBSCRIPTION_AVAILABLE => "wildcard subscription available",
        SUBSCRIPTION_IDENTIFIER_AVAILABLE => "subscription identifier available",
        SHARED_SUBSCRIPTION_AVAILABLE => "shared subscription available",
        _ => "unknown",
    }
}

/// The Payload Format Indicator property.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum PayloadFormat {
    /// 0: unspecified bytes.
    Unspecified = 0,
    /// 1: UTF-8 encoded character data (the receiver may check it, reason Payload format invalid).
    Utf8 = 1,
}

/// The properties of an MQTT 5 packet (or of a will). Absent properties are `None` or empty;
/// packets of an MQTT 3.1.1 connection always have `Properties::default()`.
///
/// Values the spec forbids cannot be built where a type can say so (a receive maximum, topic alias,
/// maximum packet size or subscription identifier of 0); the rest is checked on decode and encode.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Properties {
    /// 0x01, PUBLISH and will.
    pub payload_format_indicator: Option<PayloadFormat>,
    /// 0x02, seconds, PUBLISH and will.
    pub message_expiry_interval: Option<u32>,
    /// 0x03, PUBLISH and will.
    pub content_type: Option<String>,
    /// 0x08, PUBLISH and will.
    pub response_topic: Option<TopicName>,
    /// 0x09, PUBLISH and will.
    pub correlation_data: Option<Bytes>,
    /// 0x0B, PUBLISH (repeatable, one per matching subscription) and SUBSCRIBE (at most one);
    /// 1 to 268,435,455.
    pub subscription_identifiers: Vec<NonZeroU32>,
    /// 0x11, seconds, CONNECT, CONNACK and DISCONNECT.
    pub session_expiry_interval: Option<u32>,
    /// 0x12, CONNACK.
    pub assigned_client_identifier: Option<String>,
    /// 0x13, seconds, CONNACK.
    pub server_keep_alive: Option<u16>,
    /// 0x15, CONNECT, CONNACK and AUTH.
    pub authentication_method: Option<String>,
    /// 0x16, CONNECT, CONNACK and AUTH.
    pub authentication_data: Option<Bytes>,
    /// 0x17, CONNECT.
    pub request_problem_information: Option<bool>,
    /// 0x18, seconds, will.
    pub will_delay_interval: Option<u32>,
    /// 0x19, CONNECT.
    pub request_response_information: Option<bool>,
    /// 0x1A, CONNACK.
    pub response_information: Option<String>,
    /// 0x1C, CONNACK and DISCONNECT.
    pub server_reference: Option<String>,
    /// 0x1F, CONNACK, the four publish acknowledgements, SUBACK, UNSUBACK, DISCONNECT and AUTH.
    pub reason_string: Option<String>,
    /// 0x21, CONNECT and CONNACK.
    pub receive_maximum: Option<NonZeroU16>,
    /// 0x22, CONNECT and CONNACK.
    pub topic_alias_maximum: Option<u16>,
    /// 0x23, PUBLISH.
    pub topic_alias: Option<NonZeroU16>,
    /// 0x24, CONNACK; `AtMostOnce` or `AtLeastOnce` only.
    pub maximum_qos: Option<QoS>,
    /// 0x25, CONNACK.
    pub retain_available: Option<bool>,
    /// 0x26, every packet that has properties, and will; repeatable, order kept.
    pub user_properties: Vec<(String, String)>,
    /// 0x27, bytes, CONNECT and CONNACK.
    pub maximum_packet_size: Option<NonZeroU32>,
    /// 0x28, CONNACK.
    pub wildcard_subscription_available: Option<bool>,
    /// 0x29, CONNACK.
    pub subscription_identifiers_available: Option<bool>,
    /// 0x2A, CONNACK.
    pub shared_subscription_available: Option<bool>,
}

impl Properties {
    /// True when no property is present.
    pub fn is_empty(&self) -> bool {
        *self == Properties::default()
    }
}

/// What carries a property block: a packet, or the will inside CONNECT.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Owner {
    Connect,
    Will,
    ConnAck,
    Publish,
    PubAck,
    PubRec,
    PubRel,
    PubComp,
    Subscribe,
    SubAck,
    Unsubscribe,
    UnsubAck,
    Disconnect,
    Auth,
}

impl Owner {
    fn name(self) -> &'static str {
        match self {
            Owner::Connect => "connect",
            Owner::Will => "will properties",
            Owner::ConnAck => "connack",
            Owner::Publish => "publish",
            Owner::PubAck => "puback",
            Owner::PubRec => "pubrec",
            Owner::PubRel => "pubrel",
            Owner::PubComp => "pubcomp",
            Owner::Subscribe => "subscribe",
            Owner::SubAck => "suback",
            Owner::Unsubscribe => "unsubscribe",
            Owner::UnsubAck => "unsuback",
            Owner::Disconnect => "disconnect",
            Owner::Auth => "auth",
        }
    }
}

/// Whether `owner` may carry `property` (the table of spec 2.2.2.2); `None` for an identifier the
/// spec does not define.
fn allowed(property: u8, owner: Owner) -> Option<bool> {
    use Owner::*;
    Some(match property {
        PAYLOAD_FORMAT_INDICATOR | MESSAGE_EXPIRY_INTERVAL | CONTENT_TYPE | RESPONSE_TOPIC | CORRELATION_DATA => {
            matches!(owner, Publish | Will)
        }
        SUBSCRIPTION_IDENTIFIER => matches!(owner, Publish | Subscribe),
        SESSION_EXPIRY_INTERVAL => matches!(owner, Connect | ConnAck | Disconnect),
        ASSIGNED_CLIENT_IDENTIFIER
        | SERVER_KEEP_ALIVE
        | RESPONSE_INFORMATION
        | MAXIMUM_QOS
        | RETAIN_AVAILABLE
        | WILDCARD_SUBSCRIPTION_AVAILABLE
        | SUBSCRIPTION_IDENTIFIER_AVAILABLE
        | SHARED_SUBSCRIPTION_AVAILABLE => owner == ConnAck,
        AUTHENTICATION_METHOD | AUTHENTICATION_DATA => matches!(owner, Connect | ConnAck | Auth),
        REQUEST_PROBLEM_INFORMATION | REQUEST_RESPONSE_INFORMATION => owner == Connect,
        WILL_DELAY_INTERVAL => owner == Will,
        SERVER_REFERENCE => matches!(owner, ConnAck | Disconnect),
        REASON_STRING => {
            matches!(owner, ConnAck | PubAck | PubRec | PubRel | PubComp | SubAck | UnsubAck | Disconnect | Auth)
        }
        RECEIVE_MAXIMUM | TOPIC_ALIAS_MAXIMUM | MAXIMUM_PACKET_SIZE => {
            matches!(owner, Connect | ConnAck)
        }
        TOPIC_ALIAS => owner == Publish,
        USER_PROPERTY => true,
        _ => return None,
    })
}

fn check_allowed(property: u8, owner: Owner) -> Result<(), Error> {
    match allowed(property, owner) {
        Some(true) => Ok(()),
        Some(false) => Err(Error::PropertyNotAllowed { property, packet: owner.name() }),
        None => Err(Error::UnknownProperty(property)),
    }
}

/// Stores a single-valued property, refusing a second occurrence.
fn set<T>(slot: &mut Option<T>, property: u8, value: T) -> Result<(), Error> {
    if slot.is_some() {
        return Err(Error::DuplicateProperty(property));
    }
    *slot = Some(value);
    Ok(())
}

/// A byte that must be 0 or 1.
fn read_bool(reader: &mut Reader, property: u8) -> Result<bool, Error> {
    match reader.u8()? {
        0 => Ok(false),
        1 => Ok(true),
        _ => Err(Error::InvalidPropertyValue(property)),
    }
}

/// Reads a property block: its Variable Byte Integer length, then the properties it covers.
pub(crate) fn decode(reader: &mut Reader, owner: Owner) -> Result<Properties, Error> {
    let len = reader.variable_byte_integer()?;
    let mut block = reader.sub_reader(len as usize)?;
    let mut properties = Properties::default();
    let p = &mut properties;
    while !block.is_empty() {
        let property = block.u8()?;
        check_allowed(property, owner)?;
        match property {
            PAYLOAD_FORMAT_INDICATOR => {
                let format = match block.u8()? {
                    0 => PayloadFormat::Unspecified,
                    1 => PayloadFormat::Utf8,
                    _ => return Err(Error::InvalidPropertyValue(property)),
                };
                set(&mut p.payload_format_indicator, property, format)?;
            }
            MESSAGE_EXPIRY_INTERVAL => set(&mut p.message_expiry_interval, property, block.u32()?)?,
            CONTENT_TYPE => set(&mut p.content_type, property, block.string()?)?,
            RESPONSE_TOPIC => {
                let topic = TopicName::new(block.string()?).map_err(|_| Error::InvalidPropertyValue(property))?;
                set(&mut p.response_topic, property, topic)?;
            }
            CORRELATION_DATA => set(&mut p.correlation_data, property, block.binary()?)?,
            SUBSCRIPTION_IDENTIFIER => {
                let value =
                    NonZeroU32::new(block.variable_byte_integer()?).ok_or(Error::InvalidPropertyValue(property))?;
                if owner == Owner::Subscribe && !p.subscription_identifiers.is_empty() {
                    return Err(Error::DuplicateProperty(property));
                }
                p.subscription_identifiers.push(value);
            }
            SESSION_EXPIRY_INTERVAL => set(&mut p.session_expiry_interval, property, block.u32()?)?,
            ASSIGNED_CLIENT_IDENTIFIER => {
                set(&mut p.assigned_client_identifier, property, block.string()?)?;
            }
            SERVER_KEEP_ALIVE => set(&mut p.server_keep_alive, property, block.u16()?)?,
            AUTHENTICATION_METHOD => set(&mut p.authentication_method, property, block.string()?)?,
            AUTHENTICATION_DATA => set(&mut p.authentication_data, property, block.binary()?)?,
            REQUEST_PROBLEM_INFORMATION => {
                let value = read_bool(&mut block, property)?;
                set(&mut p.request_problem_information, property, value)?;
            }
            WILL_DELAY_INTERVAL => set(&mut p.will_delay_interval, property, block.u32()?)?,
            REQUEST_RESPONSE_INFORMATION => {
                let value = read_bool(&mut block, property)?;
                set(&mut p.request_response_information, property, value)?;
            }
            RESPONSE_INFORMATION => set(&mut p.response_information, property, block.string()?)?,
            SERVER_REFERENCE => set(&mut p.server_reference, property, block.string()?)?,
            REASON_STRING => set(&mut p.reason_string, property, block.string()?)?,
            RECEIVE_MAXIMUM => {
                let value = NonZeroU16::new(block.u16()?).ok_or(Error::InvalidPropertyValue(property))?;
                set(&mut p.receive_maximum, property, value)?;
            }
            TOPIC_ALIAS_MAXIMUM => set(&mut p.topic_alias_maximum, property, block.u16()?)?,
            TOPIC_ALIAS => {
                let value = NonZeroU16::new(block.u16()?).ok_or(Error::InvalidPropertyValue(property))?;
                set(&mut p.topic_alias, property, value)?;
            }
            MAXIMUM_QOS => {
                let value = match block.u8()? {
                    0 => QoS::AtMostOnce,
                    1 => QoS::AtLeastOnce,
                    _ => return Err(Error::InvalidPropertyValue(property)),
                };
                set(&mut p.maximum_qos, property, value)?;
            }
            RETAIN_AVAILABLE => {
                let value = read_bool(&mut block, property)?;
                set(&mut p.retain_available, property, value)?;
            }
            USER_PROPERTY => {
                let key = block.string()?;
                let value = block.string()?;
                p.user_properties.push((key, value));
            }
            MAXIMUM_PACKET_SIZE => {
                let value = NonZeroU32::new(block.u32()?).ok_or(Error::InvalidPropertyValue(property))?;
                set(&mut p.maximum_packet_size, property, value)?;
            }
            WILDCARD_SUBSCRIPTION_AVAILABLE => {
                let value = read_bool(&mut block, property)?;
                set(&mut p.wildcard_subscription_available, property, value)?;
            }
            SUBSCRIPTION_IDENTIFIER_AVAILABLE => {
                let value = read_bool(&mut block, property)?;
                set(&mut p.subscription_identifiers_available, property, value)?;
            }
            SHARED_SUBSCRIPTION_AVAILABLE => {
                let value = read_bool(&mut block, property)?;
                set(&mut p.shared_subscription_available, property, value)?;
            }
            // check_allowed has refused every identifier not listed above.
            _ => return Err(Error::UnknownProperty(property)),
        }
    }
    Ok(properties)
}

/// Writes a property block (length, then properties), refusing what `decode` would refuse.
pub(crate) fn encode(properties: &Properties, owner: Owner, sink: &mut impl Sink) -> Result<(), Error> {
    let len = measure(|counter| encode_entries(properties, owner, counter))?;
    put_variable_byte_integer(sink, len)?;
    encode_entries(properties, owner, sink)
}

/// Writes the identifier of a property after checking `owner` may carry it.
fn put_id(sink: &mut impl Sink, property: u8, owner: Owner) -> Result<(), Error> {
    check_allowed(property, owner)?;
    put_u8(sink, property);
    Ok(())
}

fn encode_entries(p: &Properties, owner: Owner, sink: &mut impl Sink) -> Result<(), Error> {
    if let Some(format) = p.payload_format_indicator {
        put_id(sink, PAYLOAD_FORMAT_INDICATOR, owner)?;
        put_u8(sink, format as u8);
    }
    if let Some(seconds) = p.message_expiry_interval {
        put_id(sink, MESSAGE_EXPIRY_INTERVAL, owner)?;
        put_u32(sink, seconds);
    }
    if let Some(content_type) = &p.content_type {
        put_id(sink, CONTENT_TYPE, owner)?;
        put_str(sink, content_type)?;
    }
    if let Some(topic) = &p.response_topic {
        put_id(sink, RESPONSE_TOPIC, owner)?;
        put_str(sink, topic.as_str())?;
    }
    if let Some(data) = &p.correlation_data {
        put_id(sink, CORRELATION_DATA, owner)?;
        put_binary(sink, data)?;
    }
    if owner == Owner::Subscribe && p.subscription_identifiers.len() > 1 {
        return Err(Error::DuplicateProperty(SUBSCRIPTION_IDENTIFIER));
    }
    for identifier in &p.subscription_identifiers {
        put_id(sink, SUBSCRIPTION_IDENTIFIER, owner)?;
        let value = identifier.get() as usize;
        if value > MAX_VARIABLE_BYTE_INTEGER {
            return Err(Error::InvalidPropertyValue(SUBSCRIPTION_IDENTIFIER));
        }
        put_variable_byte_integer(sink, value)?;
    }
    if let Some(seconds) = p.session_expiry_interval {
        put_id(sink, SESSION_EXPIRY_INTERVAL, owner)?;
        put_u32(sink, seconds);
    }
    if let Some(client_id) = &p.assigned_client_identifier {
        put_id(sink, ASSIGNED_CLIENT_IDENTIFIER, owner)?;
        put_str(sink, client_id)?;
    }
    if let Some(seconds) = p.server_keep_alive {
        put_id(sink, SERVER_KEEP_ALIVE, owner)?;
        put_u16(sink, seconds);
    }
    if let Some(method) = &p.authentication_method {
        put_id(sink, AUTHENTICATION_METHOD, owner)?;
        put_str(sink, method)?;
    }
    if let Some(data) = &p.authentication_data {
        put_id(sink, AUTHENTICATION_DATA, owner)?;
        put_binary(sink, data)?;
    }
    if let Some(flag) = p.request_problem_information {
        put_id(sink, REQUEST_PROBLEM_INFORMATION, owner)?;
        put_u8(sink, u8::from(flag));
    }
    if let Some(seconds) = p.will_delay_interval {
        put_id(sink, WILL_DELAY_INTERVAL, owner)?;
        put_u32(sink, seconds);
    }
    if let Some(flag) = p.request_response_information {
        put_id(sink, REQUEST_RESPONSE_INFORMATION, owner)?;
        put_u8(sink, u8::from(flag));
    }
    if let Some(information) = &p.response_information {
        put_id(sink, RESPONSE_INFORMATION, owner)?;
        put_str(sink, information)?;
    }
    if let Some(reference) = &p.server_reference {
        put_id(sink, SERVER_REFERENCE, owner)?;
        put_str(sink, reference)?;
    }
    if let Some(reason) = &p.reason_string {
        put_id(sink, REASON_STRING, owner)?;
        put_str(sink, reason)?;
    }
    if let Some(maximum) = p.receive_maximum {
        put_id(sink, RECEIVE_MAXIMUM, owner)?;
        put_u16(sink, maximum.get());
    }
    if let Some(maximum) = p.topic_alias_maximum {
        put_id(sink, TOPIC_ALIAS_MAXIMUM, owner)?;
        put_u16(sink, maximum);
    }
    if let Some(alias) = p.topic_alias {
        put_id(sink, TOPIC_ALIAS, owner)?;
        put_u16(sink, alias.get());
    }
    if let Some(qos) = p.maximum_qos {
        put_id(sink, MAXIMUM_QOS, owner)?;
        if qos == QoS::ExactlyOnce {
            return Err(Error::InvalidPropertyValue(MAXIMUM_QOS));
        }
        put_u8(sink, qos as u8);
    }
    if let Some(flag) = p.retain_available {
        put_id(sink, RETAIN_AVAILABLE, owner)?;
        put_u8(sink, u8::from(flag));
    }
    for (key, value) in &p.user_properties {
        put_id(sink, USER_PROPERTY, owner)?;
        put_str(sink, key)?;
        put_str(sink, value)?;
    }
    if let Some(size) = p.maximum_packet_size {
        put_id(sink, MAXIMUM_PACKET_SIZE, owner)?;
        put_u32(sink, size.get());
    }
    if let Some(flag) = p.wildcard_subscription_available {
        put_id(sink, WILDCARD_SUBSCRIPTION_AVAILABLE, owner)?;
        put_u8(sink, u8::from(flag));
    }
    if let Some(flag) = p.subscription_identifiers_available {
        put_id(sink, SUBSCRIPTION_IDENTIFIER_AVAILABLE, owner)?;
        put_u8(sink, u8::from(flag));
    }
    if let Some(flag) = p.shared_subscription_available {
        put_id(sink, SHARED_SUBSCRIPTION_AVAILABLE, owner)?;
        put_u8(sink, u8::from(flag));
    }
    Ok(())
}
