//! What `encode` refuses: packets a receiver would refuse, and what MQTT 3.1.1 cannot express.
//! A refused packet leaves the output buffer as it was.

use std::num::{NonZeroU16, NonZeroU32};

use bytes::{Bytes, BytesMut};
use certfleet_mqtt::{
    Auth, ConnAck, Connect, Disconnect, Error, MAX_PACKET_SIZE, Packet, Properties, ProtocolVersion, PubAck, PubRel,
    Publish, QoS, ReasonCode, SubAck, Subscribe, Subscription, UnsubAck, Unsubscribe, encode, encoded_len,
};

use crate::{V5, V311, connect, filter, pid, publish, subscription, topic};

fn check(packet: Packet, version: ProtocolVersion, error: Error) {
    let mut out = BytesMut::from(&b"before"[..]);
    assert_eq!(encode(&packet, version, &mut out), Err(error.clone()), "{packet:?}");
    assert_eq!(&out[..], b"before");
    assert_eq!(encoded_len(&packet, version), Err(error));
}

fn with_properties(properties: Properties) -> Publish {
    Publish { properties, ..publish(QoS::AtMostOnce, None, b"") }
}

#[test]
fn refused_in_both_versions() {
    for version in [V311, V5] {
        let no_id = publish(QoS::AtLeastOnce, None, b"");
        check(Packet::Publish(no_id), version, Error::ProtocolError("qos 1 or 2 publish without a packet identifier"));
        let id_at_qos0 = publish(QoS::AtMostOnce, Some(1), b"");
        check(Packet::Publish(id_at_qos0), version, Error::ProtocolError("packet identifier on a qos 0 publish"));
        let dup_at_qos0 = Publish { dup: true, ..publish(QoS::AtMostOnce, None, b"") };
        check(Packet::Publish(dup_at_qos0), version, Error::ProtocolError("dup flag set on a qos 0 publish"));
        let other_version = match version {
            V311 => V5,
            V5 => V311,
        };
        check(Packet::Connect(Box::new(connect(other_version))), version, Error::VersionMismatch);
        let nul_client_id = Connect { client_id: "a\0".into(), ..connect(version) };
        check(Packet::Connect(Box::new(nul_client_id)), version, Error::NullCharacter);
        let long_user = Connect { username: Some("u".repeat(65_536)), ..connect(version) };
        check(Packet::Connect(Box::new(long_user)), version, Error::FieldTooLong(65_536));
        let empty = Subscribe { packet_id: pid(1), subscriptions: Vec::new(), properties: Properties::default() };
        check(Packet::Subscribe(empty), version, Error::ProtocolError("subscribe without a topic filter"));
        let no_local_shared = Subscription { no_local: true, ..subscription("$share/g/a", QoS::AtMostOnce) };
        let subscribe =
            Subscribe { packet_id: pid(1), subscriptions: vec![no_local_shared], properties: Properties::default() };
        check(Packet::Subscribe(subscribe), version, Error::ProtocolError("no local on a shared subscription"));
        let empty = Unsubscribe { packet_id: pid(1), filters: Vec::new(), properties: Properties::default() };
        check(Packet::Unsubscribe(empty), version, Error::ProtocolError("unsubscribe without a topic filter"));
        let empty = SubAck { packet_id: pid(1), reason_codes: Vec::new(), properties: Properties::default() };
        check(Packet::SubAck(empty), version, Error::ProtocolError("suback without a reason code"));
        let present_but_refused =
            ConnAck { session_present: true, reason_code: ReasonCode::NOT_AUTHORIZED, ..ConnAck::default() };
        check(
            Packet::ConnAck(present_but_refused),
            version,
            Error::ProtocolError("session present on a refused connection"),
        );
    }
    let huge = Publish { payload: Bytes::from(vec![0; MAX_PACKET_SIZE]), ..publish(QoS::AtMostOnce, None, b"") };
    check(Packet::Publish(huge), V311, Error::PacketTooLarge { size: MAX_PACKET_SIZE + 5 + 5, max: MAX_PACKET_SIZE });
}

#[test]
fn refused_in_v5() {
    let wrong_place = Properties { session_expiry_interval: Some(1), ..Properties::default() };
    check(
        Packet::Publish(with_properties(wrong_place)),
        V5,
        Error::PropertyNotAllowed { property: 0x11, packet: "publish" },
    );
    let two_ids =
        Properties { subscription_identifiers: vec![NonZeroU32::MIN, NonZeroU32::MIN], ..Properties::default() };
    let subscribe =
        Subscribe { packet_id: pid(1), subscriptions: vec![subscription("a", QoS::AtMostOnce)], properties: two_ids };
    check(Packet::Subscribe(subscribe), V5, Error::DuplicateProperty(0x0b));
    let too_big_id = Properties { subscription_identifiers: vec![NonZeroU32::MAX], ..Properties::default() };
    check(Packet::Publish(with_properties(too_big_id)), V5, Error::InvalidPropertyValue(0x0b));
    let qos2_maximum = Properties { maximum_qos: Some(QoS::ExactlyOnce), ..Properties::default() };
    check(
        Packet::ConnAck(ConnAck { properties: qos2_maximum, ..ConnAck::default() }),
        V5,
        Error::InvalidPropertyValue(0x24),
    );
    let no_topic = Publish { topic: None, ..publish(QoS::AtMostOnce, None, b"") };
    check(Packet::Publish(no_topic), V5, Error::ProtocolError("empty topic name without a topic alias"));
    let wrong_code = PubAck { reason_code: ReasonCode::PACKET_IDENTIFIER_NOT_FOUND, ..PubAck::new(pid(1)) };
    check(Packet::PubAck(wrong_code), V5, Error::InvalidReasonCode { code: 0x92, packet: "puback" });
    let wrong_code = PubRel { reason_code: ReasonCode::NOT_AUTHORIZED, ..PubRel::new(pid(1)) };
    check(Packet::PubRel(wrong_code), V5, Error::InvalidReasonCode { code: 0x87, packet: "pubrel" });
    check(
        Packet::ConnAck(ConnAck { reason_code: ReasonCode::GRANTED_QOS_1, ..ConnAck::default() }),
        V5,
        Error::InvalidReasonCode { code: 1, packet: "connack" },
    );
    check(
        Packet::Disconnect(Disconnect { reason_code: ReasonCode::BANNED, ..Disconnect::default() }),
        V5,
        Error::InvalidReasonCode { code: 0x8a, packet: "disconnect" },
    );
    check(
        Packet::Auth(Auth { reason_code: ReasonCode::NOT_AUTHORIZED, ..Auth::default() }),
        V5,
        Error::InvalidReasonCode { code: 0x87, packet: "auth" },
    );
    let empty = UnsubAck { packet_id: pid(1), reason_codes: Vec::new(), properties: Properties::default() };
    check(Packet::UnsubAck(empty), V5, Error::ProtocolError("unsuback without a reason code"));
    let user_nul = Properties { user_properties: vec![("k\0".into(), "v".into())], ..Properties::default() };
    check(Packet::Publish(with_properties(user_nul)), V5, Error::NullCharacter);
}

#[test]
fn not_in_v311() {
    let reason = |reason_code| PubAck { reason_code, ..PubAck::new(pid(1)) };
    check(
        Packet::PubAck(reason(ReasonCode::NO_MATCHING_SUBSCRIBERS)),
        V311,
        Error::NotInVersion("a reason code other than success"),
    );
    check(
        Packet::PubAck(reason(ReasonCode::NOT_AUTHORIZED)),
        V311,
        Error::NotInVersion("a reason code other than success"),
    );
    check(Packet::Auth(Auth::default()), V311, Error::NotInVersion("auth"));
    let aliased = Publish {
        topic: None,
        properties: Properties { topic_alias: NonZeroU16::new(1), ..Properties::default() },
        ..publish(QoS::AtMostOnce, None, b"")
    };
    check(Packet::Publish(aliased), V311, Error::NotInVersion("a publish without a topic name (topic alias)"));
    check(
        Packet::ConnAck(ConnAck { reason_code: ReasonCode::BANNED, ..ConnAck::default() }),
        V311,
        Error::NotInVersion("this connack reason code"),
    );
    let suback =
        SubAck { packet_id: pid(1), reason_codes: vec![ReasonCode::NOT_AUTHORIZED], properties: Properties::default() };
    check(Packet::SubAck(suback), V311, Error::NotInVersion("this suback reason code"));
    let unsuback = UnsubAck {
        packet_id: pid(1),
        reason_codes: vec![ReasonCode::NO_SUBSCRIPTION_EXISTED],
        properties: Properties::default(),
    };
    check(Packet::UnsubAck(unsuback), V311, Error::NotInVersion("an unsuback reason code other than success"));
    let disconnect = Disconnect { reason_code: ReasonCode::SERVER_SHUTTING_DOWN, ..Disconnect::default() };
    check(Packet::Disconnect(disconnect), V311, Error::NotInVersion("a disconnect reason code"));
    let no_local = Subscription { no_local: true, ..subscription("a", QoS::AtMostOnce) };
    let subscribe = Subscribe { packet_id: pid(1), subscriptions: vec![no_local], properties: Properties::default() };
    check(Packet::Subscribe(subscribe), V311, Error::NotInVersion("no local, retain as published or retain handling"));
    let password_only = Connect { password: Some(Bytes::from_static(b"p")), ..connect(V311) };
    check(
        Packet::Connect(Box::new(password_only)),
        V311,
        Error::Malformed("password flag set without the user name flag"),
    );
}

#[test]
fn encode_appends() {
    let mut out = BytesMut::from(&b"\xc0\x00"[..]);
    let packet = Packet::Unsubscribe(Unsubscribe {
        packet_id: pid(2),
        filters: vec![filter("a")],
        properties: Properties::default(),
    });
    encode(&packet, V311, &mut out).expect("encodes");
    assert_eq!(&out[..], b"\xc0\x00\xa2\x05\x00\x02\x00\x01a");
    assert_eq!(topic("a").as_str(), "a");
}
