//! Benchmarks of the hot path of every connection: decoding and encoding a QoS 1 PUBLISH with a
//! 100-byte payload, in MQTT 3.1.1 and 5 (the v5 one with a user property and a topic alias).

use std::hint::black_box;
use std::num::NonZeroU16;

use bytes::{Bytes, BytesMut};
use certfleet_mqtt::{Packet, PacketId, Properties, ProtocolVersion, Publish, QoS, TopicName, decode, encode};
use criterion::{BatchSize, Criterion, criterion_group, criterion_main};

const MAX_PACKET_SIZE: usize = 128 * 1024;

fn publish(version: ProtocolVersion) -> Packet {
    let properties = match version {
        ProtocolVersion::V311 => Properties::default(),
        ProtocolVersion::V5 => Properties {
            topic_alias: NonZeroU16::new(1),
            user_properties: vec![("trace".into(), "abc123".into())],
            ..Properties::default()
        },
    };
    Packet::Publish(Publish {
        dup: false,
        qos: QoS::AtLeastOnce,
        retain: false,
        topic: Some(TopicName::new("dt/fleet-1/thing-0042/telemetry").expect("valid topic")),
        packet_id: PacketId::new(42),
        properties,
        payload: Bytes::from(vec![0x5a; 100]),
    })
}

fn benches(c: &mut Criterion) {
    for (name, version) in [("v311", ProtocolVersion::V311), ("v5", ProtocolVersion::V5)] {
        let packet = publish(version);
        let mut frame = BytesMut::new();
        encode(&packet, version, &mut frame).expect("encodes");
        let frame = frame.freeze();

        c.bench_function(&format!("decode publish qos1 100B {name}"), |b| {
            b.iter_batched(
                || BytesMut::from(&frame[..]),
                |mut buf| decode(black_box(&mut buf), version, MAX_PACKET_SIZE),
                BatchSize::SmallInput,
            );
        });
        let mut out = BytesMut::with_capacity(4096);
        c.bench_function(&format!("encode publish qos1 100B {name}"), |b| {
            b.iter(|| {
                out.clear();
                encode(black_box(&packet), version, &mut out).expect("encodes");
            });
        });
    }
}

criterion_group!(codec, benches);
criterion_main!(codec);
