//! What a peer must not send: each case gives its error and the reason code the gateway sends.

use bytes::BytesMut;
use certfleet_mqtt::{Error, PacketType, ProtocolVersion, ReasonCode, decode_connect};

use crate::{MAX, V5, V311, decode_one, field, frame, hex};

const MALFORMED: ReasonCode = ReasonCode::MALFORMED_PACKET;
const PROTOCOL: ReasonCode = ReasonCode::PROTOCOL_ERROR;

fn check(bytes: &[u8], version: ProtocolVersion, error: Error, reason_code: ReasonCode) {
    assert_eq!(decode_one(bytes, version), Err(error.clone()), "{bytes:02x?}");
    assert_eq!(error.reason_code(), reason_code, "{error}");
}

/// The same case in both versions.
fn check_both(bytes: &[u8], error: Error, reason_code: ReasonCode) {
    check(bytes, V311, error.clone(), reason_code);
    check(bytes, V5, error, reason_code);
}

fn flags(packet_type: PacketType, flags: u8) -> Error {
    Error::InvalidFlags { packet_type, flags }
}

/// `a/b` followed by `rest`.
fn topic_then(rest: &[u8]) -> Vec<u8> {
    [field(b"a/b"), rest.to_vec()].concat()
}

/// A CONNECT body for `level` with `flags`, keep alive 0, then `rest`.
fn connect_body(name: &[u8], level: u8, flags: u8, rest: &[u8]) -> Vec<u8> {
    [field(name), vec![level, flags, 0, 0], rest.to_vec()].concat()
}

#[test]
fn fixed_header() {
    check_both(&hex("00 00"), Error::InvalidPacketType(0), MALFORMED);
    check(&hex("f0 00"), V311, Error::InvalidPacketType(15), MALFORMED);
    check_both(&hex("c1 00"), flags(PacketType::PingReq, 1), MALFORMED);
    check_both(&hex("d8 00"), flags(PacketType::PingResp, 8), MALFORMED);
    check_both(&hex("e2 00"), flags(PacketType::Disconnect, 2), MALFORMED);
    check(&hex("f1 00"), V5, flags(PacketType::Auth, 1), MALFORMED);
    check_both(&hex("21 02 00 00"), flags(PacketType::ConnAck, 1), MALFORMED);
    check_both(&hex("41 02 00 01"), flags(PacketType::PubAck, 1), MALFORMED);
    check_both(&hex("52 02 00 01"), flags(PacketType::PubRec, 2), MALFORMED);
    check_both(&hex("60 02 00 01"), flags(PacketType::PubRel, 0), MALFORMED);
    check_both(&hex("63 02 00 01"), flags(PacketType::PubRel, 3), MALFORMED);
    check_both(&hex("7f 02 00 01"), flags(PacketType::PubComp, 15), MALFORMED);
    check_both(&hex("80 08 00 01 00 03 61 2f 62 01"), flags(PacketType::Subscribe, 0), MALFORMED);
    check_both(&hex("91 03 00 01 00"), flags(PacketType::SubAck, 1), MALFORMED);
    check_both(&hex("a0 07 00 01 00 03 61 2f 62"), flags(PacketType::Unsubscribe, 0), MALFORMED);
    check_both(&hex("b8 02 00 01"), flags(PacketType::UnsubAck, 8), MALFORMED);
    let connect = frame(0x12, &connect_body(b"MQTT", 4, 0x02, &field(b"a")));
    check_both(&connect, flags(PacketType::Connect, 2), MALFORMED);
    check_both(&hex("c0 80 00"), Error::MalformedRemainingLength, MALFORMED);
}

#[test]
fn lengths() {
    check_both(&hex("c0 01 00"), Error::TrailingBytes(1), MALFORMED);
    check(&hex("40 03 00 01 00"), V311, Error::TrailingBytes(1), MALFORMED);
    check(&hex("e0 01 00"), V311, Error::TrailingBytes(1), MALFORMED);
    check(&hex("b0 03 00 01 00"), V311, Error::TrailingBytes(1), MALFORMED);
    check(&hex("20 03 00 00 00"), V311, Error::TrailingBytes(1), MALFORMED);
    // Remaining Length shorter than the content.
    check_both(&hex("30 03 00 03 61"), Error::Truncated, MALFORMED);
    check_both(&hex("32 04 00 01 61 00"), Error::Truncated, MALFORMED);
    check_both(&hex("40 01 00"), Error::Truncated, MALFORMED);
    check_both(&hex("20 01 00"), Error::Truncated, MALFORMED);
    check(&hex("82 03 00 01 00"), V311, Error::Truncated, MALFORMED);
    check_both(&hex("10 05 00 04 4d 51 54"), Error::Truncated, MALFORMED);
    // A property length longer than what follows.
    check(&hex("40 04 00 01 00 05"), V5, Error::Truncated, MALFORMED);
    check(&hex("e0 03 00 02 11"), V5, Error::Truncated, MALFORMED);
}

#[test]
fn connect() {
    let client_a = field(b"a");
    let check_connect = |body: Vec<u8>, error: Error, reason_code| {
        check_both(&frame(0x10, &body), error, reason_code);
    };
    check_connect(
        connect_body(b"MQTX", 4, 0x02, &client_a),
        Error::InvalidProtocolName,
        ReasonCode::UNSUPPORTED_PROTOCOL_VERSION,
    );
    check_connect(
        connect_body(b"MQIsdp", 3, 0x02, &client_a),
        Error::UnsupportedProtocolVersion(3),
        ReasonCode::UNSUPPORTED_PROTOCOL_VERSION,
    );
    check_connect(
        connect_body(b"MQTT", 3, 0x02, &client_a),
        Error::UnsupportedProtocolVersion(3),
        ReasonCode::UNSUPPORTED_PROTOCOL_VERSION,
    );
    check_connect(
        connect_body(b"MQTT", 6, 0x02, &client_a),
        Error::UnsupportedProtocolVersion(6),
        ReasonCode::UNSUPPORTED_PROTOCOL_VERSION,
    );
    check_connect(
        connect_body(b"MQTT", 4, 0x03, &client_a),
        Error::Malformed("connect flags reserved bit is set"),
        MALFORMED,
    );
    check_connect(connect_body(b"MQTT", 4, 0x1C, &client_a), Error::InvalidQos(3), MALFORMED);
    check_connect(
        connect_body(b"MQTT", 4, 0x08, &client_a),
        Error::Malformed("will qos or will retain set without the will flag"),
        MALFORMED,
    );
    check_connect(
        connect_body(b"MQTT", 4, 0x20, &client_a),
        Error::Malformed("will qos or will retain set without the will flag"),
        MALFORMED,
    );
    let password_only = [client_a.clone(), field(b"p")].concat();
    check_connect(
        connect_body(b"MQTT", 4, 0x40, &password_only),
        Error::Malformed("password flag set without the user name flag"),
        MALFORMED,
    );
    check_connect(connect_body(b"MQTT", 4, 0x02, &field(b"a\0")), Error::NullCharacter, MALFORMED);
    check_connect(connect_body(b"MQTT", 4, 0x02, &field(b"\xff")), Error::InvalidUtf8, MALFORMED);
    let wildcard_will = [client_a.clone(), field(b"w/#"), field(b"m")].concat();
    check_connect(
        connect_body(b"MQTT", 4, 0x06, &wildcard_will),
        Error::InvalidTopicName("contains a wildcard"),
        ReasonCode::TOPIC_NAME_INVALID,
    );
    let v5 = |properties: &[u8]| {
        let rest = [properties.to_vec(), client_a.clone()].concat();
        frame(0x10, &connect_body(b"MQTT", 5, 0x02, &rest))
    };
    check(&v5(&hex("03 21 00 00")), V5, Error::InvalidPropertyValue(0x21), PROTOCOL);
    check(&v5(&hex("05 27 00 00 00 00")), V5, Error::InvalidPropertyValue(0x27), PROTOCOL);
    check(&v5(&hex("02 17 02")), V5, Error::InvalidPropertyValue(0x17), PROTOCOL);
    check(&v5(&hex("06 21 00 01 21 00 02")), V5, Error::DuplicateProperty(0x21), PROTOCOL);
    check(
        &v5(&hex("03 16 00 00")),
        V5,
        Error::ProtocolError("authentication data without an authentication method"),
        PROTOCOL,
    );
    check(&v5(&hex("03 23 00 01")), V5, Error::PropertyNotAllowed { property: 0x23, packet: "connect" }, MALFORMED);
    check(
        &v5(&hex("05 18 00 00 00 01")),
        V5,
        Error::PropertyNotAllowed { property: 0x18, packet: "connect" },
        MALFORMED,
    );
    // Will Delay Interval belongs to the will properties, Session Expiry Interval does not.
    let will = |properties: &[u8]| {
        let rest = [vec![0], client_a.clone(), properties.to_vec(), field(b"w"), field(b"m")].concat();
        frame(0x10, &connect_body(b"MQTT", 5, 0x06, &rest))
    };
    check(
        &will(&hex("05 11 00 00 00 01")),
        V5,
        Error::PropertyNotAllowed { property: 0x11, packet: "will properties" },
        MALFORMED,
    );
    check(&will(&hex("04 08 00 01 23")), V5, Error::InvalidPropertyValue(0x08), PROTOCOL);
    // A first packet other than CONNECT.
    let mut buf = BytesMut::from(&hex("30")[..]);
    assert_eq!(decode_connect(&mut buf, MAX), Err(Error::ProtocolError("the first packet is not connect")));
}

#[test]
fn connack() {
    check_both(&hex("20 02 02 00"), Error::Malformed("connack flags reserved bits are set"), MALFORMED);
    check(&hex("20 02 00 06"), V311, Error::InvalidReasonCode { code: 6, packet: "connack" }, MALFORMED);
    check(&hex("20 03 00 10 00"), V5, Error::InvalidReasonCode { code: 0x10, packet: "connack" }, MALFORMED);
    check(&hex("20 02 01 05"), V311, Error::ProtocolError("session present on a refused connection"), PROTOCOL);
    check(&hex("20 03 01 87 00"), V5, Error::ProtocolError("session present on a refused connection"), PROTOCOL);
    check(&hex("20 05 00 00 02 24 02"), V5, Error::InvalidPropertyValue(0x24), PROTOCOL);
    check(&hex("20 05 00 00 02 25 05"), V5, Error::InvalidPropertyValue(0x25), PROTOCOL);
}

#[test]
fn publish() {
    check_both(&frame(0x36, &topic_then(&hex("00 01"))), Error::InvalidQos(3), MALFORMED);
    check_both(&frame(0x38, &topic_then(&[])), Error::ProtocolError("dup flag set on a qos 0 publish"), PROTOCOL);
    check_both(&frame(0x32, &topic_then(&hex("00 00"))), Error::ZeroPacketId, PROTOCOL);
    check_both(
        &frame(0x30, &field(b"a/+")),
        Error::InvalidTopicName("contains a wildcard"),
        ReasonCode::TOPIC_NAME_INVALID,
    );
    check_both(
        &frame(0x30, &field(b"#")),
        Error::InvalidTopicName("contains a wildcard"),
        ReasonCode::TOPIC_NAME_INVALID,
    );
    check_both(&frame(0x30, &field(b"a\0b")), Error::NullCharacter, MALFORMED);
    check_both(&frame(0x30, &field(b"\xc3\x28")), Error::InvalidUtf8, MALFORMED);
    check_both(&frame(0x30, &field(b"\xed\xa0\x80")), Error::InvalidUtf8, MALFORMED);
    check(&frame(0x30, &field(b"")), V311, Error::InvalidTopicName("empty"), ReasonCode::TOPIC_NAME_INVALID);
    check(
        &frame(0x30, &[field(b""), vec![0]].concat()),
        V5,
        Error::ProtocolError("empty topic name without a topic alias"),
        PROTOCOL,
    );
    let v5 = |properties: &str| frame(0x30, &topic_then(&hex(properties)));
    check(&v5("0a 02 00 00 00 01 02 00 00 00 02"), V5, Error::DuplicateProperty(0x02), PROTOCOL);
    check(&v5("06 23 00 01 23 00 02"), V5, Error::DuplicateProperty(0x23), PROTOCOL);
    check(&v5("05 11 00 00 00 01"), V5, Error::PropertyNotAllowed { property: 0x11, packet: "publish" }, MALFORMED);
    check(&v5("02 05 00"), V5, Error::UnknownProperty(0x05), MALFORMED);
    check(&v5("02 00 00"), V5, Error::UnknownProperty(0x00), MALFORMED);
    check(&v5("03 23 00 00"), V5, Error::InvalidPropertyValue(0x23), ReasonCode::TOPIC_ALIAS_INVALID);
    check(&v5("02 0b 00"), V5, Error::InvalidPropertyValue(0x0b), PROTOCOL);
    check(&v5("02 01 02"), V5, Error::InvalidPropertyValue(0x01), PROTOCOL);
    check(&v5("06 0b 80 80 80 80 01"), V5, Error::MalformedVariableByteInteger, MALFORMED);
    check(&v5("03 0b 80 00"), V5, Error::MalformedVariableByteInteger, MALFORMED);
    check(&v5("04 08 00 01 2b"), V5, Error::InvalidPropertyValue(0x08), PROTOCOL);
    check(&v5("05 26 00 01 00 00"), V5, Error::NullCharacter, MALFORMED);
    check(&v5("80 80 80 80 01"), V5, Error::MalformedVariableByteInteger, MALFORMED);
}

#[test]
fn acknowledgements() {
    check_both(&hex("40 02 00 00"), Error::ZeroPacketId, PROTOCOL);
    check_both(&hex("62 02 00 00"), Error::ZeroPacketId, PROTOCOL);
    check(&hex("40 03 00 01 05"), V5, Error::InvalidReasonCode { code: 5, packet: "puback" }, MALFORMED);
    check(&hex("50 03 00 01 92"), V5, Error::InvalidReasonCode { code: 0x92, packet: "pubrec" }, MALFORMED);
    check(&hex("62 03 00 01 10"), V5, Error::InvalidReasonCode { code: 0x10, packet: "pubrel" }, MALFORMED);
    check(
        &hex("40 06 00 01 00 02 11 00"),
        V5,
        Error::PropertyNotAllowed { property: 0x11, packet: "puback" },
        MALFORMED,
    );
    check(&hex("e0 01 05"), V5, Error::InvalidReasonCode { code: 5, packet: "disconnect" }, MALFORMED);
    check(&hex("e0 03 00 05 11"), V5, Error::Truncated, MALFORMED);
    check(&hex("e0 04 00 02 13 00"), V5, Error::PropertyNotAllowed { property: 0x13, packet: "disconnect" }, MALFORMED);
    check(&hex("f0 01 87"), V5, Error::InvalidReasonCode { code: 0x87, packet: "auth" }, MALFORMED);
    check(&hex("f0 04 00 02 11 00"), V5, Error::PropertyNotAllowed { property: 0x11, packet: "auth" }, MALFORMED);
}

#[test]
fn subscriptions() {
    let subscribe = |version, filter: &[u8], options: u8| {
        let properties = match version {
            V311 => vec![],
            V5 => vec![0],
        };
        frame(0x82, &[hex("00 01"), properties, field(filter), vec![options]].concat())
    };
    let check_subscribe = |filter: &[u8], options, error: Error, reason_code| {
        for version in [V311, V5] {
            check(&subscribe(version, filter, options), version, error.clone(), reason_code);
        }
    };
    check(&hex("82 02 00 01"), V311, Error::ProtocolError("subscribe without a topic filter"), PROTOCOL);
    check(&hex("82 03 00 01 00"), V5, Error::ProtocolError("subscribe without a topic filter"), PROTOCOL);
    check(&hex("82 06 00 00 00 01 61 00"), V311, Error::ZeroPacketId, PROTOCOL);
    let invalid_filters: [(&[u8], &str); 9] = [
        (b"a/#/b", "'#' must be alone in the last level"),
        (b"a#", "'#' must be alone in the last level"),
        (b"#a", "'#' must be alone in the last level"),
        (b"a+", "'+' must be alone in its level"),
        (b"a/+b/c", "'+' must be alone in its level"),
        (b"$share//x", "shared subscription with an empty group"),
        (b"$share/g", "shared subscription without a filter"),
        (b"$share/g/", "shared subscription with an empty filter"),
        (b"$share/g+/x", "shared subscription group holds a wildcard"),
    ];
    for (filter, reason) in invalid_filters {
        check_subscribe(filter, 0, Error::InvalidTopicFilter(reason), ReasonCode::TOPIC_FILTER_INVALID);
    }
    check_subscribe(b"", 0, Error::InvalidTopicFilter("empty"), ReasonCode::TOPIC_FILTER_INVALID);
    check_subscribe(b"a", 0x03, Error::ProtocolError("subscription maximum qos 3"), PROTOCOL);
    check(
        &subscribe(V311, b"a", 0x04),
        V311,
        Error::Malformed("subscription options reserved bits are set"),
        MALFORMED,
    );
    check(&subscribe(V5, b"a", 0x40), V5, Error::Malformed("subscription options reserved bits are set"), MALFORMED);
    check(&subscribe(V5, b"a", 0x30), V5, Error::ProtocolError("retain handling 3"), PROTOCOL);
    check(&subscribe(V5, b"$share/g/a", 0x04), V5, Error::ProtocolError("no local on a shared subscription"), PROTOCOL);
    let two_identifiers = frame(0x82, &[hex("00 01 04 0b 01 0b 02"), field(b"a"), vec![0]].concat());
    check(&two_identifiers, V5, Error::DuplicateProperty(0x0b), PROTOCOL);
    let zero_identifier = frame(0x82, &[hex("00 01 02 0b 00"), field(b"a"), vec![0]].concat());
    check(&zero_identifier, V5, Error::InvalidPropertyValue(0x0b), PROTOCOL);
    check(&hex("90 02 00 01"), V311, Error::ProtocolError("suback without a reason code"), PROTOCOL);
    check(&hex("90 03 00 01 87"), V311, Error::InvalidReasonCode { code: 0x87, packet: "suback" }, MALFORMED);
    check(&hex("90 04 00 01 00 03"), V5, Error::InvalidReasonCode { code: 3, packet: "suback" }, MALFORMED);
    check(&hex("a2 02 00 01"), V311, Error::ProtocolError("unsubscribe without a topic filter"), PROTOCOL);
    let unsubscribe = frame(0xa2, &[hex("00 01"), field(b"a/#/b")].concat());
    check(
        &unsubscribe,
        V311,
        Error::InvalidTopicFilter("'#' must be alone in the last level"),
        ReasonCode::TOPIC_FILTER_INVALID,
    );
    check(&hex("b0 03 00 01 00"), V5, Error::ProtocolError("unsuback without a reason code"), PROTOCOL);
    check(&hex("b0 04 00 01 00 02"), V5, Error::InvalidReasonCode { code: 2, packet: "unsuback" }, MALFORMED);
}
