//! Byte-exact vectors, most from the examples of the MQTT 3.1.1 and 5.0 specs.

use std::num::NonZeroU16;

use bytes::Bytes;
use certfleet_mqtt::{
    Auth, ConnAck, Connect, Disconnect, Packet, Properties, ProtocolVersion, PubAck, PubRel, Publish, QoS, ReasonCode,
    SubAck, Subscribe, UnsubAck, Unsubscribe, Will,
};

use crate::{V5, V311, connect, decode_one, encode_to_vec, filter, hex, pid, publish, subscription, topic};

/// `packet` encodes to exactly `bytes`, and `bytes` decode to `packet`.
fn check(packet: Packet, version: ProtocolVersion, bytes: &str) {
    let bytes = hex(bytes);
    assert_eq!(encode_to_vec(&packet, version), bytes, "{packet:?}");
    assert_eq!(decode_one(&bytes, version), Ok(packet));
}

/// `bytes` (a longer form than the encoder writes) decode to `packet`.
fn check_decode(bytes: &str, version: ProtocolVersion, packet: Packet) {
    assert_eq!(decode_one(&hex(bytes), version), Ok(packet));
}

/// The CONNECT of the specs' examples: flags 0xCE (user name, password, will QoS 1, will, clean
/// start), keep alive 10.
fn spec_connect(version: ProtocolVersion, properties: Properties) -> Packet {
    Packet::Connect(Box::new(Connect {
        protocol_version: version,
        clean_start: true,
        keep_alive: 10,
        client_id: "c".into(),
        will: Some(Will {
            topic: topic("w"),
            payload: Bytes::from_static(b"m"),
            qos: QoS::AtLeastOnce,
            retain: false,
            properties: Properties::default(),
        }),
        username: Some("u".into()),
        password: Some(Bytes::from_static(b"p")),
        properties,
    }))
}

#[test]
fn spec_vectors() {
    let minimal_connect = Connect { client_id: "a".into(), ..connect(V311) };
    check(Packet::Connect(Box::new(minimal_connect)), V311, "10 0d 00 04 4d 51 54 54 04 02 00 3c 00 01 61");
    check(
        spec_connect(V311, Properties::default()),
        V311,
        "10 19 00 04 4d 51 54 54 04 ce 00 0a  00 01 63  00 01 77  00 01 6d  00 01 75  00 01 70",
    );
    let session_expiry = Properties { session_expiry_interval: Some(10), ..Properties::default() };
    check(
        spec_connect(V5, session_expiry),
        V5,
        "10 20 00 04 4d 51 54 54 05 ce 00 0a 05 11 00 00 00 0a  00 01 63  00  00 01 77  00 01 6d  \
         00 01 75  00 01 70",
    );
    check(Packet::ConnAck(ConnAck::default()), V311, "20 02 00 00");
    check(Packet::ConnAck(ConnAck::default()), V5, "20 03 00 00 00");
    let resumed = ConnAck { session_present: true, ..ConnAck::default() };
    check(Packet::ConnAck(resumed), V311, "20 02 01 00");
    let v311_refusals = [
        (ReasonCode::UNSUPPORTED_PROTOCOL_VERSION, "20 02 00 01"),
        (ReasonCode::CLIENT_IDENTIFIER_NOT_VALID, "20 02 00 02"),
        (ReasonCode::SERVER_UNAVAILABLE, "20 02 00 03"),
        (ReasonCode::BAD_USER_NAME_OR_PASSWORD, "20 02 00 04"),
        (ReasonCode::NOT_AUTHORIZED, "20 02 00 05"),
    ];
    for (reason_code, bytes) in v311_refusals {
        let refusal = ConnAck { reason_code, ..ConnAck::default() };
        check(Packet::ConnAck(refusal), V311, bytes);
    }
    check(Packet::PingReq, V311, "c0 00");
    check(Packet::PingResp, V311, "d0 00");
    check(Packet::PingReq, V5, "c0 00");
    check(Packet::PingResp, V5, "d0 00");
    check(Packet::Disconnect(Disconnect::default()), V311, "e0 00");
    check(Packet::Disconnect(Disconnect::default()), V5, "e0 00");
    check(Packet::Auth(Auth::default()), V5, "f0 00");
}

#[test]
fn publish_vectors() {
    let hello = "61 2f 62 68 65 6c 6c 6f";
    check(Packet::Publish(publish(QoS::AtMostOnce, None, b"hello")), V311, &format!("30 0a 00 03 {hello}"));
    let qos1 = Packet::Publish(publish(QoS::AtLeastOnce, Some(10), b"hello"));
    check(qos1.clone(), V311, "32 0c 00 03 61 2f 62 00 0a 68 65 6c 6c 6f");
    check(qos1, V5, "32 0d 00 03 61 2f 62 00 0a 00 68 65 6c 6c 6f");
    let retained_dup = Publish { dup: true, retain: true, ..publish(QoS::ExactlyOnce, Some(1), b"") };
    check(Packet::Publish(retained_dup), V311, "3d 07 00 03 61 2f 62 00 01");
    let aliased = Publish {
        topic: None,
        properties: Properties { topic_alias: NonZeroU16::new(2), ..Properties::default() },
        ..publish(QoS::AtMostOnce, None, b"x")
    };
    check(Packet::Publish(aliased), V5, "30 07 00 00 03 23 00 02 78");
}

#[test]
fn acknowledgement_vectors() {
    check(Packet::PubAck(PubAck::new(pid(10))), V311, "40 02 00 0a");
    check(Packet::PubAck(PubAck::new(pid(10))), V5, "40 02 00 0a");
    let no_subscribers = PubAck { reason_code: ReasonCode::NO_MATCHING_SUBSCRIBERS, ..PubAck::new(pid(10)) };
    check(Packet::PubAck(no_subscribers), V5, "40 03 00 0a 10");
    check(Packet::PubRel(PubRel::new(pid(10))), V311, "62 02 00 0a");
    // The longer forms a sender may use for the same acknowledgement.
    check_decode("40 03 00 0a 00", V5, Packet::PubAck(PubAck::new(pid(10))));
    check_decode("40 04 00 0a 00 00", V5, Packet::PubAck(PubAck::new(pid(10))));
    check_decode("e0 01 00", V5, Packet::Disconnect(Disconnect::default()));
    check_decode("e0 02 00 00", V5, Packet::Disconnect(Disconnect::default()));
    check_decode("f0 02 00 00", V5, Packet::Auth(Auth::default()));
    let taken_over = Disconnect { reason_code: ReasonCode::SESSION_TAKEN_OVER, properties: Properties::default() };
    check(Packet::Disconnect(taken_over), V5, "e0 01 8e");
    let with_expiry = Disconnect {
        reason_code: ReasonCode::NORMAL_DISCONNECTION,
        properties: Properties { session_expiry_interval: Some(60), ..Properties::default() },
    };
    check(Packet::Disconnect(with_expiry), V5, "e0 07 00 05 11 00 00 00 3c");
}

#[test]
fn subscription_vectors() {
    let subscribe = Subscribe {
        packet_id: pid(1),
        subscriptions: vec![subscription("a/b", QoS::AtLeastOnce)],
        properties: Properties::default(),
    };
    check(Packet::Subscribe(subscribe.clone()), V311, "82 08 00 01 00 03 61 2f 62 01");
    check(Packet::Subscribe(subscribe), V5, "82 09 00 01 00 00 03 61 2f 62 01");
    let suback = SubAck {
        packet_id: pid(1),
        reason_codes: vec![ReasonCode::GRANTED_QOS_1, ReasonCode::UNSPECIFIED_ERROR],
        properties: Properties::default(),
    };
    check(Packet::SubAck(suback), V311, "90 04 00 01 01 80");
    let unsubscribe =
        Unsubscribe { packet_id: pid(1), filters: vec![filter("a/b")], properties: Properties::default() };
    check(Packet::Unsubscribe(unsubscribe), V311, "a2 07 00 01 00 03 61 2f 62");
    let v311_unsuback = UnsubAck { packet_id: pid(1), reason_codes: Vec::new(), properties: Properties::default() };
    check(Packet::UnsubAck(v311_unsuback), V311, "b0 02 00 01");
    let v5_unsuback =
        UnsubAck { packet_id: pid(1), reason_codes: vec![ReasonCode::SUCCESS], properties: Properties::default() };
    check(Packet::UnsubAck(v5_unsuback), V5, "b0 04 00 01 00 00");
}
