//! DISCONNECT and AUTH (spec 3.14 and 3.15); PINGREQ and PINGRESP have no body at all.

use crate::properties::{self, Owner};
use crate::wire::{Reader, Sink, put_u8};
use crate::{Error, PacketType, Properties, ProtocolVersion, ReasonCode};

/// DISCONNECT. Empty in MQTT 3.1.1 (where only the client sends it).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Disconnect {
    /// The reason code (MQTT 5); Normal disconnection in MQTT 3.1.1.
    pub reason_code: ReasonCode,
    /// DISCONNECT properties (MQTT 5): session expiry interval, reason string, server reference,
    /// user properties.
    pub properties: Properties,
}

/// AUTH (MQTT 5 only): a step of enhanced authentication.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Auth {
    /// Success, Continue authentication or Re-authenticate.
    pub reason_code: ReasonCode,
    /// AUTH properties: authentication method and data, reason string, user properties.
    pub properties: Properties,
}

/// Decodes the body DISCONNECT and AUTH share in MQTT 5: a reason code and properties, both
/// omissible (remaining length 0: Success and no properties; 1: no properties).
pub(crate) fn decode_reason_and_properties(
    body: &mut Reader,
    packet_type: PacketType,
    owner: Owner,
) -> Result<(ReasonCode, Properties), Error> {
    if body.is_empty() {
        return Ok((ReasonCode::SUCCESS, Properties::default()));
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
    Ok((reason_code, properties))
}

/// Encodes the reason code and properties of DISCONNECT or AUTH in their shortest form.
pub(crate) fn encode_reason_and_properties(
    reason_code: ReasonCode,
    properties: &Properties,
    packet_type: PacketType,
    owner: Owner,
    sink: &mut impl Sink,
) -> Result<(), Error> {
    if !reason_code.allowed_on(packet_type) {
        return Err(Error::InvalidReasonCode { code: reason_code.code(), packet: packet_type.name() });
    }
    if reason_code == ReasonCode::SUCCESS && properties.is_empty() {
        return Ok(());
    }
    put_u8(sink, reason_code.code());
    if !properties.is_empty() {
        properties::encode(properties, owner, sink)?;
    }
    Ok(())
}

pub(crate) fn decode_disconnect(body: &mut Reader, version: ProtocolVersion) -> Result<Disconnect, Error> {
    match version {
        ProtocolVersion::V311 => Ok(Disconnect::default()),
        ProtocolVersion::V5 => {
            let (reason_code, properties) =
                decode_reason_and_properties(body, PacketType::Disconnect, Owner::Disconnect)?;
            Ok(Disconnect { reason_code, properties })
        }
    }
}

/// Encodes DISCONNECT. For 3.1.1, properties are dropped and a reason code other than Normal
/// disconnection is refused.
pub(crate) fn encode_disconnect(
    disconnect: &Disconnect,
    version: ProtocolVersion,
    sink: &mut impl Sink,
) -> Result<(), Error> {
    match version {
        ProtocolVersion::V311 if disconnect.reason_code != ReasonCode::NORMAL_DISCONNECTION => {
            Err(Error::NotInVersion("a disconnect reason code"))
        }
        ProtocolVersion::V311 => Ok(()),
        ProtocolVersion::V5 => encode_reason_and_properties(
            disconnect.reason_code,
            &disconnect.properties,
            PacketType::Disconnect,
            Owner::Disconnect,
            sink,
        ),
    }
}
