//! Feeds arbitrary bytes to the MQTT decoder, as a stream of packets in both protocol versions,
//! until it wants more bytes or refuses them. It must never panic, and every packet it accepts
//! must re-encode and decode again to the same packet.
//!
//! `crates/mqtt/tests/it/random.rs` runs the same check on stable Rust in CI.

#![no_main]

use bytes::BytesMut;
use certfleet_mqtt::{MAX_PACKET_SIZE, Packet, ProtocolVersion, decode, encode};
use libfuzzer_sys::fuzz_target;

/// A small maximum, so that the size check is exercised too.
const MAX: usize = 64 * 1024;

fuzz_target!(|data: &[u8]| {
    for version in [ProtocolVersion::V311, ProtocolVersion::V5] {
        let mut buf = BytesMut::from(data);
        while let Ok(Some(packet)) = decode(&mut buf, version, MAX) {
            // A CONNECT is decoded by its own protocol level.
            let version = match &packet {
                Packet::Connect(connect) => connect.protocol_version,
                _ => version,
            };
            let mut out = BytesMut::new();
            encode(&packet, version, &mut out).expect("a decoded packet re-encodes");
            let again = decode(&mut out, version, MAX_PACKET_SIZE);
            assert_eq!(again, Ok(Some(packet)));
            assert!(out.is_empty());
        }
    }
});
