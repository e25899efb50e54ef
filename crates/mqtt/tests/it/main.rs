//! The codec tested through its public API: one module per feature, data-driven cases, and the
//! sample packets and byte helpers they share.

mod encoding;
mod framing;
mod malformed;
mod random;
mod reasons;
mod roundtrip;
mod topics;
mod vectors;

use std::num::{NonZeroU16, NonZeroU32};

use bytes::{Bytes, BytesMut};
use certfleet_mqtt::{
    Auth, ConnAck, Connect, Disconnect, Error, Packet, PacketId, PayloadFormat, Properties, ProtocolVersion, PubAck,
    PubComp, PubRec, PubRel, Publish, QoS, ReasonCode, RetainHandling, SubAck, Subscribe, Subscription, TopicFilter,
    TopicName, UnsubAck, Unsubscribe, Will, decode, encode,
};

use ProtocolVersion::{V5, V311};

/// The maximum packet size the tests decode with.
const MAX: usize = 1 << 20;

/// Bytes from space-separated hex ("10 0d 00 04").
fn hex(text: &str) -> Vec<u8> {
    text.split_whitespace().map(|byte| u8::from_str_radix(byte, 16).expect("test hex")).collect()
}

/// A frame with a one-byte Remaining Length around `body`.
fn frame(first_byte: u8, body: &[u8]) -> Vec<u8> {
    let mut bytes = vec![first_byte, u8::try_from(body.len()).expect("short test body")];
    assert!(body.len() < 128);
    bytes.extend_from_slice(body);
    bytes
}

/// A length-prefixed string (or binary) field.
fn field(bytes: &[u8]) -> Vec<u8> {
    let mut out = u16::try_from(bytes.len()).expect("short field").to_be_bytes().to_vec();
    out.extend_from_slice(bytes);
    out
}

fn pid(id: u16) -> PacketId {
    PacketId::new(id).expect("non-zero test packet id")
}

fn topic(name: &str) -> TopicName {
    TopicName::new(name).expect("valid test topic")
}

fn filter(text: &str) -> TopicFilter {
    TopicFilter::new(text).expect("valid test filter")
}

fn encode_to_vec(packet: &Packet, version: ProtocolVersion) -> Vec<u8> {
    let mut out = BytesMut::new();
    encode(packet, version, &mut out).expect("test packet encodes");
    out.to_vec()
}

/// Decodes exactly one packet from `bytes`, which must hold exactly one frame.
fn decode_one(bytes: &[u8], version: ProtocolVersion) -> Result<Packet, Error> {
    let mut buf = BytesMut::from(bytes);
    let packet = decode(&mut buf, version, MAX)?.expect("a whole frame");
    assert!(buf.is_empty(), "one frame, wholly consumed");
    Ok(packet)
}

fn connect(version: ProtocolVersion) -> Connect {
    Connect {
        protocol_version: version,
        clean_start: true,
        keep_alive: 60,
        client_id: "thing-1".into(),
        will: None,
        username: None,
        password: None,
        properties: Properties::default(),
    }
}

fn publish(qos: QoS, packet_id: Option<u16>, payload: &'static [u8]) -> Publish {
    Publish {
        dup: false,
        qos,
        retain: false,
        topic: Some(topic("a/b")),
        packet_id: packet_id.map(pid),
        properties: Properties::default(),
        payload: Bytes::from_static(payload),
    }
}

fn subscription(text: &str, qos: QoS) -> Subscription {
    Subscription {
        filter: filter(text),
        qos,
        no_local: false,
        retain_as_published: false,
        retain_handling: RetainHandling::SendAtSubscribe,
    }
}

fn user_properties() -> Properties {
    Properties { user_properties: vec![("k".into(), "v".into()), ("k".into(), "w".into())], ..Properties::default() }
}

fn reason_string(text: &str) -> Properties {
    Properties { reason_string: Some(text.into()), ..user_properties() }
}

/// Packets every version can carry, with no MQTT 5 field set.
fn samples_common(version: ProtocolVersion) -> Vec<Packet> {
    let full_connect = Connect {
        clean_start: false,
        keep_alive: 0,
        will: Some(Will {
            topic: topic("last/will"),
            payload: Bytes::from_static(b"gone"),
            qos: QoS::AtLeastOnce,
            retain: true,
            properties: Properties::default(),
        }),
        username: Some("user".into()),
        password: Some(Bytes::from_static(b"secret\0\xff")),
        ..connect(version)
    };
    let anonymous = Connect { client_id: String::new(), ..connect(version) };
    vec![
        Packet::Connect(Box::new(connect(version))),
        Packet::Connect(Box::new(full_connect)),
        Packet::Connect(Box::new(anonymous)),
        Packet::ConnAck(ConnAck::default()),
        Packet::ConnAck(ConnAck { session_present: true, ..ConnAck::default() }),
        Packet::ConnAck(ConnAck { reason_code: ReasonCode::NOT_AUTHORIZED, ..ConnAck::default() }),
        Packet::Publish(publish(QoS::AtMostOnce, None, b"hello")),
        Packet::Publish(publish(QoS::AtLeastOnce, Some(10), b"")),
        Packet::Publish(Publish {
            dup: true,
            retain: true,
            topic: Some(topic("$aws/things/thing-1/shadow/update")),
            ..publish(QoS::ExactlyOnce, Some(65535), b"{\"state\":{}}")
        }),
        Packet::PubAck(PubAck::new(pid(1))),
        Packet::PubRec(PubRec::new(pid(2))),
        Packet::PubRel(PubRel::new(pid(3))),
        Packet::PubComp(PubComp::new(pid(4))),
        Packet::Subscribe(Subscribe {
            packet_id: pid(5),
            subscriptions: vec![
                subscription("a/+/c", QoS::AtMostOnce),
                subscription("#", QoS::AtLeastOnce),
                subscription("$share/group/sensors/#", QoS::ExactlyOnce),
            ],
            properties: Properties::default(),
        }),
        Packet::SubAck(SubAck {
            packet_id: pid(5),
            reason_codes: vec![
                ReasonCode::GRANTED_QOS_0,
                ReasonCode::GRANTED_QOS_1,
                ReasonCode::GRANTED_QOS_2,
                ReasonCode::UNSPECIFIED_ERROR,
            ],
            properties: Properties::default(),
        }),
        Packet::Unsubscribe(Unsubscribe {
            packet_id: pid(6),
            filters: vec![filter("a/b"), filter("+/c")],
            properties: Properties::default(),
        }),
        Packet::PingReq,
        Packet::PingResp,
        Packet::Disconnect(Disconnect::default()),
    ]
}

/// Sample MQTT 3.1.1 packets: every packet type of the version.
fn samples_v311() -> Vec<Packet> {
    let mut samples = samples_common(V311);
    samples.push(Packet::UnsubAck(UnsubAck {
        packet_id: pid(6),
        reason_codes: Vec::new(),
        properties: Properties::default(),
    }));
    samples
}

/// Sample MQTT 5 packets: every packet type, with and without properties and reason codes.
fn samples_v5() -> Vec<Packet> {
    let mut samples = samples_common(V5);
    let connect_properties = Properties {
        session_expiry_interval: Some(3600),
        receive_maximum: NonZeroU16::new(20),
        maximum_packet_size: NonZeroU32::new(131_072),
        topic_alias_maximum: Some(8),
        request_response_information: Some(true),
        request_problem_information: Some(false),
        authentication_method: Some("SCRAM-SHA-1".into()),
        authentication_data: Some(Bytes::from_static(b"\x00\x01")),
        ..user_properties()
    };
    let will_properties = Properties {
        will_delay_interval: Some(30),
        payload_format_indicator: Some(PayloadFormat::Utf8),
        message_expiry_interval: Some(120),
        content_type: Some("text/plain".into()),
        response_topic: Some(topic("replies/1")),
        correlation_data: Some(Bytes::from_static(b"42")),
        ..user_properties()
    };
    samples.push(Packet::Connect(Box::new(Connect {
        will: Some(Will {
            topic: topic("will"),
            payload: Bytes::new(),
            qos: QoS::ExactlyOnce,
            retain: false,
            properties: will_properties,
        }),
        password: Some(Bytes::from_static(b"no user name is fine in v5")),
        properties: connect_properties,
        ..connect(V5)
    })));
    samples.push(Packet::ConnAck(ConnAck {
        session_present: true,
        reason_code: ReasonCode::SUCCESS,
        properties: Properties {
            session_expiry_interval: Some(0),
            receive_maximum: NonZeroU16::new(100),
            maximum_qos: Some(QoS::AtLeastOnce),
            retain_available: Some(false),
            maximum_packet_size: NonZeroU32::new(128 * 1024),
            assigned_client_identifier: Some("auto-1".into()),
            topic_alias_maximum: Some(0),
            reason_string: Some("welcome".into()),
            wildcard_subscription_available: Some(true),
            subscription_identifiers_available: Some(true),
            shared_subscription_available: Some(true),
            server_keep_alive: Some(30),
            response_information: Some("replies/".into()),
            server_reference: Some("other.example".into()),
            authentication_method: Some("SCRAM-SHA-1".into()),
            authentication_data: Some(Bytes::from_static(b"data")),
            ..user_properties()
        },
    }));
    samples.push(Packet::ConnAck(ConnAck { reason_code: ReasonCode::BANNED, ..ConnAck::default() }));
    samples.push(Packet::Publish(Publish {
        properties: Properties {
            payload_format_indicator: Some(PayloadFormat::Unspecified),
            message_expiry_interval: Some(5),
            topic_alias: NonZeroU16::new(3),
            response_topic: Some(topic("reply/here")),
            correlation_data: Some(Bytes::from_static(b"corr")),
            subscription_identifiers: vec![
                NonZeroU32::new(1).expect("non-zero"),
                NonZeroU32::new(268_435_455).expect("non-zero"),
            ],
            content_type: Some("application/json".into()),
            ..user_properties()
        },
        ..publish(QoS::AtLeastOnce, Some(7), b"{}")
    }));
    samples.push(Packet::Publish(Publish {
        topic: None,
        properties: Properties { topic_alias: NonZeroU16::new(3), ..Properties::default() },
        ..publish(QoS::AtMostOnce, None, b"aliased")
    }));
    samples.push(Packet::PubAck(PubAck { reason_code: ReasonCode::NO_MATCHING_SUBSCRIBERS, ..PubAck::new(pid(1)) }));
    samples.push(Packet::PubAck(PubAck {
        reason_code: ReasonCode::NOT_AUTHORIZED,
        properties: reason_string("policy denies publish"),
        ..PubAck::new(pid(1))
    }));
    samples.push(Packet::PubAck(PubAck { properties: user_properties(), ..PubAck::new(pid(1)) }));
    samples.push(Packet::PubRec(PubRec {
        reason_code: ReasonCode::QUOTA_EXCEEDED,
        properties: reason_string("quota"),
        ..PubRec::new(pid(2))
    }));
    samples
        .push(Packet::PubRel(PubRel { reason_code: ReasonCode::PACKET_IDENTIFIER_NOT_FOUND, ..PubRel::new(pid(3)) }));
    samples.push(Packet::PubComp(PubComp { properties: reason_string("done"), ..PubComp::new(pid(4)) }));
    samples.push(Packet::Subscribe(Subscribe {
        packet_id: pid(9),
        subscriptions: vec![
            Subscription {
                no_local: true,
                retain_as_published: true,
                retain_handling: RetainHandling::DoNotSend,
                ..subscription("a/b", QoS::AtLeastOnce)
            },
            Subscription {
                retain_handling: RetainHandling::SendAtSubscribeIfNew,
                ..subscription("$share/g/a/#", QoS::AtMostOnce)
            },
        ],
        properties: Properties {
            subscription_identifiers: vec![NonZeroU32::new(128).expect("non-zero")],
            ..user_properties()
        },
    }));
    samples.push(Packet::SubAck(SubAck {
        packet_id: pid(9),
        reason_codes: vec![
            ReasonCode::GRANTED_QOS_1,
            ReasonCode::NOT_AUTHORIZED,
            ReasonCode::SHARED_SUBSCRIPTIONS_NOT_SUPPORTED,
            ReasonCode::WILDCARD_SUBSCRIPTIONS_NOT_SUPPORTED,
        ],
        properties: reason_string("partly"),
    }));
    samples.push(Packet::Unsubscribe(Unsubscribe {
        packet_id: pid(10),
        filters: vec![filter("$share/g/a/#")],
        properties: user_properties(),
    }));
    samples.push(Packet::UnsubAck(UnsubAck {
        packet_id: pid(10),
        reason_codes: vec![ReasonCode::SUCCESS, ReasonCode::NO_SUBSCRIPTION_EXISTED],
        properties: Properties::default(),
    }));
    samples.push(Packet::UnsubAck(UnsubAck {
        packet_id: pid(11),
        reason_codes: vec![ReasonCode::NOT_AUTHORIZED],
        properties: reason_string("no"),
    }));
    samples.push(Packet::Disconnect(Disconnect {
        reason_code: ReasonCode::SESSION_TAKEN_OVER,
        properties: Properties::default(),
    }));
    samples.push(Packet::Disconnect(Disconnect {
        reason_code: ReasonCode::NORMAL_DISCONNECTION,
        properties: Properties {
            session_expiry_interval: Some(0),
            server_reference: Some("elsewhere".into()),
            ..reason_string("bye")
        },
    }));
    samples.push(Packet::Auth(Auth::default()));
    samples.push(Packet::Auth(Auth {
        reason_code: ReasonCode::CONTINUE_AUTHENTICATION,
        properties: Properties {
            authentication_method: Some("SCRAM-SHA-1".into()),
            authentication_data: Some(Bytes::from_static(b"challenge")),
            ..reason_string("more")
        },
    }));
    samples
}

/// Every sample with its version.
fn all_samples() -> Vec<(Packet, ProtocolVersion)> {
    let v311 = samples_v311().into_iter().map(|packet| (packet, V311));
    let v5 = samples_v5().into_iter().map(|packet| (packet, V5));
    v311.chain(v5).collect()
}
