//! Framing: nothing is parsed before a frame is whole, sizes are refused from the fixed header,
//! frames are split off one at a time, payloads are slices of the received bytes.

use bytes::{Bytes, BytesMut};
use certfleet_mqtt::{Error, FrameHeader, Packet, PacketType, QoS, check_frame, decode, decode_connect};

use crate::{MAX, V5, V311, all_samples, connect, encode_to_vec, hex, publish};

#[test]
fn every_prefix_of_a_frame_is_incomplete() {
    for (packet, version) in all_samples() {
        let bytes = encode_to_vec(&packet, version);
        for len in 0..bytes.len() {
            let mut buf = BytesMut::from(&bytes[..len]);
            assert_eq!(decode(&mut buf, version, MAX), Ok(None), "{packet:?} cut at {len}");
            assert_eq!(buf.len(), len, "an incomplete frame stays buffered");
        }
        let mut buf = BytesMut::from(&bytes[..]);
        assert_eq!(decode(&mut buf, version, MAX), Ok(Some(packet)));
        assert!(buf.is_empty());
    }
}

#[test]
fn frames_decode_one_after_another() {
    let first = Packet::Publish(publish(QoS::AtLeastOnce, Some(1), b"one"));
    let second = Packet::PingReq;
    for version in [V311, V5] {
        let mut buf = BytesMut::new();
        buf.extend_from_slice(&encode_to_vec(&first, version));
        buf.extend_from_slice(&encode_to_vec(&second, version));
        buf.extend_from_slice(&encode_to_vec(&first, version)[..3]);
        assert_eq!(decode(&mut buf, version, MAX), Ok(Some(first.clone())));
        assert_eq!(decode(&mut buf, version, MAX), Ok(Some(second.clone())));
        assert_eq!(decode(&mut buf, version, MAX), Ok(None));
        assert_eq!(buf.len(), 3);
    }
}

#[test]
fn payloads_are_slices_of_the_frame() {
    let packet = Packet::Publish(publish(QoS::AtMostOnce, None, &[7; 300]));
    let mut buf = BytesMut::from(&encode_to_vec(&packet, V5)[..]);
    let received = buf.as_ptr_range();
    let Ok(Some(Packet::Publish(decoded))) = decode(&mut buf, V5, MAX) else {
        panic!("a publish");
    };
    let payload = decoded.payload.as_ptr_range();
    assert!(received.start <= payload.start && payload.end <= received.end);
    assert_eq!(decoded.payload, Bytes::from_static(&[7; 300]));
}

fn check(bytes: &str, max: usize, expected: Result<Option<FrameHeader>, Error>) {
    assert_eq!(check_frame(&hex(bytes), max), expected, "{bytes}");
}

fn header(packet_type: PacketType, flags: u8, header_len: usize, remaining_length: usize) -> FrameHeader {
    FrameHeader { packet_type, flags, header_len, remaining_length }
}

#[test]
fn frame_headers() {
    check("", MAX, Ok(None));
    check("30", MAX, Ok(None));
    check("30 80", MAX, Ok(None));
    check("30 02 00", MAX, Ok(None));
    check("c0 00", MAX, Ok(Some(header(PacketType::PingReq, 0, 2, 0))));
    check("3b 01 00", MAX, Ok(Some(header(PacketType::Publish, 0xb, 2, 1))));
    check("f0 00", MAX, Ok(Some(header(PacketType::Auth, 0, 2, 0))));
    check("00 00", MAX, Err(Error::InvalidPacketType(0)));
    check("00", MAX, Err(Error::InvalidPacketType(0)));
    // Remaining Length: at most four bytes, minimally encoded.
    check("30 80 80 80 80", MAX, Err(Error::MalformedRemainingLength));
    check("30 ff ff ff ff 01", MAX, Err(Error::MalformedRemainingLength));
    check("30 80 00", MAX, Err(Error::MalformedRemainingLength));
    check("30 80 80 00", MAX, Err(Error::MalformedRemainingLength));
    check("30 ff ff ff 7f", usize::MAX, Ok(None));
    // Refused from the fixed header alone, whatever follows.
    check("30 ff ff ff 7f", MAX, Err(Error::PacketTooLarge { size: 5 + 268_435_455, max: MAX }));
    check("30 ff ff 7f", 1024, Err(Error::PacketTooLarge { size: 4 + 2_097_151, max: 1024 }));
    check("30 80 08", 1024, Err(Error::PacketTooLarge { size: 3 + 1024, max: 1024 }));
    check("30 fd 07", 1024, Ok(None));
    check("30 fe 07", 1024, Err(Error::PacketTooLarge { size: 1025, max: 1024 }));
    check("c0 00", 1, Err(Error::PacketTooLarge { size: 2, max: 1 }));
    check("c0 00", 2, Ok(Some(header(PacketType::PingReq, 0, 2, 0))));
}

#[test]
fn too_large_is_refused_before_buffering() {
    let mut buf = BytesMut::from(&hex("30 ff ff 7f")[..]);
    let refused = decode(&mut buf, V311, 1024);
    assert_eq!(refused, Err(Error::PacketTooLarge { size: 2_097_155, max: 1024 }));
    assert_eq!(refused.map_err(|error| error.reason_code()), Err(certfleet_mqtt::ReasonCode::PACKET_TOO_LARGE));
    let mut buf = BytesMut::from(&hex("10 ff 7f")[..]);
    assert_eq!(decode_connect(&mut buf, 1024), Err(Error::PacketTooLarge { size: 16_386, max: 1024 }));
}

#[test]
fn a_connection_starts_with_connect() {
    for version in [V311, V5] {
        let connect = connect(version);
        let mut buf = BytesMut::from(&encode_to_vec(&Packet::Connect(Box::new(connect.clone())), version)[..]);
        buf.extend_from_slice(&hex("c0 00"));
        let decoded = decode_connect(&mut buf, MAX).expect("valid").expect("whole");
        assert_eq!(decoded, connect);
        assert_eq!(decode(&mut buf, decoded.protocol_version, MAX), Ok(Some(Packet::PingReq)));
    }
    let mut buf = BytesMut::from(&hex("10")[..]);
    assert_eq!(decode_connect(&mut buf, MAX), Ok(None));
    let mut buf = BytesMut::from(&hex("c0 00")[..]);
    assert_eq!(decode_connect(&mut buf, MAX), Err(Error::ProtocolError("the first packet is not connect")));
}
