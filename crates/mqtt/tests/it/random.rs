//! A stable-Rust companion of the fuzz target (`Target::MqttDecode` in `crates/fuzzing`), run in
//! CI: random bytes and mutated valid frames never make the decoder panic, and whatever decodes
//! re-encodes and decodes again to the same packet.

use bytes::BytesMut;
use certfleet_mqtt::{MAX_PACKET_SIZE, Packet, ProtocolVersion, decode, encode};

use crate::{MAX, V5, V311, all_samples, encode_to_vec};

/// xorshift64: a tiny generator with a fixed seed, so every run tries the same inputs.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn below(&mut self, bound: usize) -> usize {
        (self.next() % bound as u64) as usize
    }

    fn byte(&mut self) -> u8 {
        self.next().to_le_bytes()[0]
    }
}

/// Decodes `bytes` as a stream of packets in both versions, until more bytes are needed or an
/// error, and checks each decoded packet survives re-encoding. Returns how many decoded.
fn exercise(bytes: &[u8]) -> usize {
    let mut decoded = 0;
    for version in [V311, V5] {
        let mut buf = BytesMut::from(bytes);
        while let Ok(Some(packet)) = decode(&mut buf, version, MAX) {
            decoded += 1;
            check_reencodes(&packet, version);
        }
    }
    decoded
}

fn check_reencodes(packet: &Packet, version: ProtocolVersion) {
    // A CONNECT is decoded by its own protocol level.
    let version = match packet {
        Packet::Connect(connect) => connect.protocol_version,
        _ => version,
    };
    let mut out = BytesMut::new();
    encode(packet, version, &mut out).unwrap_or_else(|error| panic!("{packet:?}: {error}"));
    let again = decode(&mut out, version, MAX_PACKET_SIZE);
    assert_eq!(again, Ok(Some(packet.clone())));
}

/// A fixed header's first byte for each packet type, with valid flags.
const VALID_FIRST_BYTES: [u8; 17] =
    [0x10, 0x20, 0x30, 0x32, 0x34, 0x40, 0x50, 0x62, 0x70, 0x82, 0x90, 0xa2, 0xb0, 0xc0, 0xd0, 0xe0, 0xf0];

#[test]
fn random_bytes() {
    let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
    let mut decoded = 0;
    for _ in 0..10_000 {
        let len = rng.below(48);
        let mut bytes: Vec<u8> = (0..len).map(|_| rng.byte()).collect();
        // A plausible Remaining Length makes the parsers, not the framing, see most inputs.
        if len >= 2 {
            bytes[1] = u8::try_from(len - 2).expect("short");
            if rng.below(2) == 0 {
                bytes[0] = VALID_FIRST_BYTES[rng.below(VALID_FIRST_BYTES.len())];
            }
        }
        decoded += exercise(&bytes);
    }
    assert!(decoded > 40, "{decoded}");
}

#[test]
fn mutated_frames() {
    let mut rng = Rng(0x2545_F491_4F6C_DD1D);
    let frames: Vec<Vec<u8>> = all_samples().iter().map(|(packet, version)| encode_to_vec(packet, *version)).collect();
    let mut decoded = 0;
    for _ in 0..6000 {
        let mut bytes = frames[rng.below(frames.len())].clone();
        match rng.below(4) {
            // Change one to three bytes anywhere.
            0 => {
                for _ in 0..=rng.below(3) {
                    let at = rng.below(bytes.len());
                    bytes[at] = rng.byte();
                }
            }
            // Change a body byte, keeping the fixed header: the parsers see it whole.
            1 if bytes.len() > 2 => {
                let at = 2 + rng.below(bytes.len() - 2);
                bytes[at] ^= 1 << rng.below(8);
            }
            // Cut the body and fix the Remaining Length (one byte in every sample).
            2 if bytes.len() > 2 && bytes[1] < 0x80 => {
                let len = 2 + rng.below(bytes.len() - 2);
                bytes.truncate(len);
                bytes[1] = u8::try_from(len - 2).expect("short");
            }
            // Append a random frame tail: a second, probably bad, packet.
            _ => {
                let extra = rng.below(8);
                bytes.extend((0..extra).map(|_| rng.byte()));
            }
        }
        decoded += exercise(&bytes);
    }
    assert!(decoded > 1000, "{decoded}");
}
