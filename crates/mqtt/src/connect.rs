//! CONNECT and CONNACK (MQTT 5 spec 3.1 and 3.2; MQTT 3.1.1 spec 3.1 and 3.2).

use bytes::Bytes;

use crate::properties::{self, Owner};
use crate::wire::{Reader, Sink, put_binary, put_str, put_u8, put_u16};
use crate::{Error, PacketType, Properties, ProtocolVersion, QoS, ReasonCode, TopicName};

/// CONNECT: the first packet of a connection, which fixes its protocol version.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Connect {
    /// The protocol level; decoding reads it from the packet whatever version the caller passed.
    pub protocol_version: ProtocolVersion,
    /// Clean Start (MQTT 5) or Clean Session (MQTT 3.1.1).
    pub clean_start: bool,
    /// Keep Alive, seconds; 0 turns the mechanism off.
    pub keep_alive: u16,
    /// The Client Identifier, possibly empty (the server then assigns one, or refuses).
    pub client_id: String,
    /// The Will Message, if any.
    pub will: Option<Will>,
    /// The User Name, if any.
    pub username: Option<String>,
    /// The Password, if any; MQTT 3.1.1 only allows it together with a user name.
    pub password: Option<Bytes>,
    /// CONNECT properties (MQTT 5).
    pub properties: Properties,
}

/// The Will Message of a CONNECT.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Will {
    /// The Will Topic.
    pub topic: TopicName,
    /// The Will Payload (zero-copy slice of the CONNECT frame when decoded).
    pub payload: Bytes,
    /// The Will QoS.
    pub qos: QoS,
    /// The Will Retain flag.
    pub retain: bool,
    /// Will properties (MQTT 5): will delay interval, payload format indicator, message expiry
    /// interval, content type, response topic, correlation data, user properties.
    pub properties: Properties,
}

/// CONNACK: the server's answer to CONNECT.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ConnAck {
    /// Session Present; must be false when the reason code refuses the connection.
    pub session_present: bool,
    /// The MQTT 5 reason code. In MQTT 3.1.1 the return codes 0-5 map to and from Success,
    /// Unsupported Protocol Version, Client Identifier not valid, Server unavailable, Bad User
    /// Name or Password and Not authorized (see [`ReasonCode::from_v311_connack`]).
    pub reason_code: ReasonCode,
    /// CONNACK properties (MQTT 5).
    pub properties: Properties,
}

const CONNECT_RESERVED: u8 = 0x01;
const CLEAN_START: u8 = 0x02;
const WILL_FLAG: u8 = 0x04;
const WILL_QOS_SHIFT: u8 = 3;
const WILL_RETAIN: u8 = 0x20;
const PASSWORD_FLAG: u8 = 0x40;
const USERNAME_FLAG: u8 = 0x80;

pub(crate) fn decode_connect(body: &mut Reader) -> Result<Connect, Error> {
    let protocol_name = body.binary()?;
    let level = body.u8()?;
    match &protocol_name[..] {
        b"MQTT" => {}
        b"MQIsdp" => return Err(Error::UnsupportedProtocolVersion(level)),
        _ => return Err(Error::InvalidProtocolName),
    }
    let version = match level {
        4 => ProtocolVersion::V311,
        5 => ProtocolVersion::V5,
        other => return Err(Error::UnsupportedProtocolVersion(other)),
    };
    let flags = body.u8()?;
    if flags & CONNECT_RESERVED != 0 {
        return Err(Error::Malformed("connect flags reserved bit is set"));
    }
    let will_flag = flags & WILL_FLAG != 0;
    let will_qos = QoS::try_from((flags >> WILL_QOS_SHIFT) & 0x03)?;
    let will_retain = flags & WILL_RETAIN != 0;
    if !will_flag && (will_qos != QoS::AtMostOnce || will_retain) {
        return Err(Error::Malformed("will qos or will retain set without the will flag"));
    }
    let has_password = flags & PASSWORD_FLAG != 0;
    let has_username = flags & USERNAME_FLAG != 0;
    if version == ProtocolVersion::V311 && has_password && !has_username {
        return Err(Error::Malformed("password flag set without the user name flag"));
    }
    let keep_alive = body.u16()?;
    let properties = match version {
        ProtocolVersion::V5 => properties::decode(body, Owner::Connect)?,
        ProtocolVersion::V311 => Properties::default(),
    };
    if properties.authentication_data.is_some() && properties.authentication_method.is_none() {
        return Err(Error::ProtocolError("authentication data without an authentication method"));
    }
    let client_id = body.string()?;
    let will = match will_flag {
        false => None,
        true => {
            let will_properties = match version {
                ProtocolVersion::V5 => properties::decode(body, Owner::Will)?,
                ProtocolVersion::V311 => Properties::default(),
            };
            Some(Will {
                topic: TopicName::new(body.string()?)?,
                payload: body.binary()?,
                qos: will_qos,
                retain: will_retain,
                properties: will_properties,
            })
        }
    };
    let username = match has_username {
        true => Some(body.string()?),
        false => None,
    };
    let password = match has_password {
        true => Some(body.binary()?),
        false => None,
    };
    Ok(Connect {
        protocol_version: version,
        clean_start: flags & CLEAN_START != 0,
        keep_alive,
        client_id,
        will,
        username,
        password,
        properties,
    })
}

/// Encodes CONNECT's variable header and payload. MQTT 5 properties (connect and will) are
/// dropped for 3.1.1.
pub(crate) fn encode_connect(connect: &Connect, version: ProtocolVersion, sink: &mut impl Sink) -> Result<(), Error> {
    if connect.protocol_version != version {
        return Err(Error::VersionMismatch);
    }
    if version == ProtocolVersion::V311 && connect.password.is_some() && connect.username.is_none() {
        return Err(Error::Malformed("password flag set without the user name flag"));
    }
    put_str(sink, "MQTT")?;
    put_u8(sink, version.level());
    let mut flags = 0;
    if connect.clean_start {
        flags |= CLEAN_START;
    }
    if let Some(will) = &connect.will {
        flags |= WILL_FLAG | ((will.qos as u8) << WILL_QOS_SHIFT);
        if will.retain {
            flags |= WILL_RETAIN;
        }
    }
    if connect.password.is_some() {
        flags |= PASSWORD_FLAG;
    }
    if connect.username.is_some() {
        flags |= USERNAME_FLAG;
    }
    put_u8(sink, flags);
    put_u16(sink, connect.keep_alive);
    if version == ProtocolVersion::V5 {
        let properties = &connect.properties;
        if properties.authentication_data.is_some() && properties.authentication_method.is_none() {
            return Err(Error::ProtocolError("authentication data without an authentication method"));
        }
        properties::encode(properties, Owner::Connect, sink)?;
    }
    put_str(sink, &connect.client_id)?;
    if let Some(will) = &connect.will {
        if version == ProtocolVersion::V5 {
            properties::encode(&will.properties, Owner::Will, sink)?;
        }
        put_str(sink, will.topic.as_str())?;
        put_binary(sink, &will.payload)?;
    }
    if let Some(username) = &connect.username {
        put_str(sink, username)?;
    }
    if let Some(password) = &connect.password {
        put_binary(sink, password)?;
    }
    Ok(())
}

const SESSION_PRESENT: u8 = 0x01;

pub(crate) fn decode_connack(body: &mut Reader, version: ProtocolVersion) -> Result<ConnAck, Error> {
    let flags = body.u8()?;
    if flags & !SESSION_PRESENT != 0 {
        return Err(Error::Malformed("connack flags reserved bits are set"));
    }
    let code = body.u8()?;
    let invalid = Error::InvalidReasonCode { code, packet: PacketType::ConnAck.name() };
    let (reason_code, properties) = match version {
        ProtocolVersion::V311 => (ReasonCode::from_v311_connack(code).ok_or(invalid)?, Properties::default()),
        ProtocolVersion::V5 => {
            let reason_code = ReasonCode::new(code);
            if !reason_code.allowed_on(PacketType::ConnAck) {
                return Err(invalid);
            }
            (reason_code, properties::decode(body, Owner::ConnAck)?)
        }
    };
    let session_present = flags & SESSION_PRESENT != 0;
    if session_present && reason_code != ReasonCode::SUCCESS {
        return Err(Error::ProtocolError("session present on a refused connection"));
    }
    Ok(ConnAck { session_present, reason_code, properties })
}

/// Encodes CONNACK. For 3.1.1 the reason code must have a return code (see
/// [`ReasonCode::to_v311_connack`]) and properties are dropped.
pub(crate) fn encode_connack(connack: &ConnAck, version: ProtocolVersion, sink: &mut impl Sink) -> Result<(), Error> {
    let reason_code = connack.reason_code;
    if connack.session_present && reason_code != ReasonCode::SUCCESS {
        return Err(Error::ProtocolError("session present on a refused connection"));
    }
    let invalid = Error::InvalidReasonCode { code: reason_code.code(), packet: PacketType::ConnAck.name() };
    put_u8(sink, u8::from(connack.session_present));
    match version {
        ProtocolVersion::V311 => {
            let return_code = reason_code.to_v311_connack().ok_or(Error::NotInVersion("this connack reason code"))?;
            put_u8(sink, return_code);
        }
        ProtocolVersion::V5 => {
            if !reason_code.allowed_on(PacketType::ConnAck) {
                return Err(invalid);
            }
            put_u8(sink, reason_code.code());
            properties::encode(&connack.properties, Owner::ConnAck, sink)?;
        }
    }
    Ok(())
}
