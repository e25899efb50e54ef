//! The bytes a message travels in between nodes, on a NATS subject or in the retained store:
//! a small header (version, the publishing node's message number, the publisher's client ID,
//! the expiry) and the message itself as an MQTT 5 PUBLISH packet, so that topic, payload, QoS,
//! RETAIN and the forwarded properties are decoded by the same hardened decoder as a device's
//! packets.
//!
//! ```text
//! u8  version (1)
//! u64 the message's number on its node (duplicates of one delivery share it)
//! u8  expiry kind: 0 none, 1 remaining milliseconds, 2 Unix time in milliseconds
//! u64 expiry value
//! u16 publisher client ID length, then its UTF-8 bytes (length 0xFFFF: no publisher)
//! ... the PUBLISH packet (MQTT 5)
//! ```
//!
//! Peers are certfleet nodes, but the bytes are checked as hostile anyway: every length against
//! what is left, the packet against the largest message a node accepts.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::{Buf, BufMut, Bytes, BytesMut};
use certfleet_mqtt::{Packet, PacketId, ProtocolVersion, Publish, QoS};
use tokio::time::Instant;

use crate::fabric::Message;

const VERSION: u8 = 1;
const NO_PUBLISHER: u16 = u16::MAX;

/// How a message's expiry is written.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum ExpiryForm {
    /// As the time left: messages in flight between nodes (no clock is shared).
    Remaining,
    /// As a wall-clock time: retained messages, read back at any later time by any node.
    WallClock,
}

/// Why bytes from another node were not a message.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub(crate) enum Malformed {
    #[error("truncated envelope")]
    Truncated,
    #[error("unknown envelope version")]
    Version,
    #[error("unknown expiry kind")]
    Expiry,
    #[error("publisher client ID is not UTF-8")]
    Publisher,
    #[error("the packet is not a PUBLISH")]
    Packet,
}

/// Encodes `message` with its node's message number `sequence`; `None` when it cannot be
/// encoded as a PUBLISH (it came from a PUBLISH, so only a bug gets there).
pub(crate) fn encode(message: &Message, sequence: u64, form: ExpiryForm, now: Instant) -> Option<Bytes> {
    let mut out = BytesMut::with_capacity(64 + message.topic.as_str().len() + message.payload.len());
    out.put_u8(VERSION);
    out.put_u64(sequence);
    match (message.expires_at, form) {
        (None, _) => {
            out.put_u8(0);
            out.put_u64(0);
        }
        (Some(deadline), ExpiryForm::Remaining) => {
            out.put_u8(1);
            out.put_u64(u64::try_from(deadline.saturating_duration_since(now).as_millis()).unwrap_or(u64::MAX));
        }
        (Some(deadline), ExpiryForm::WallClock) => {
            let left = deadline.saturating_duration_since(now);
            let at = SystemTime::now().checked_add(left).and_then(|at| at.duration_since(UNIX_EPOCH).ok());
            out.put_u8(2);
            out.put_u64(at.map_or(0, |at| u64::try_from(at.as_millis()).unwrap_or(u64::MAX)));
        }
    }
    match &message.publisher {
        Some(publisher) if publisher.len() < usize::from(NO_PUBLISHER) => {
            out.put_u16(u16::try_from(publisher.len()).ok()?);
            out.put_slice(publisher.as_bytes());
        }
        _ => out.put_u16(NO_PUBLISHER),
    }
    let publish = Publish {
        dup: false,
        qos: message.qos,
        retain: message.retain,
        topic: Some(message.topic.clone()),
        packet_id: (message.qos != QoS::AtMostOnce).then(|| PacketId::new(1)).flatten(),
        properties: message.properties.clone(),
        payload: message.payload.clone(),
    };
    certfleet_mqtt::encode(&Packet::Publish(publish), ProtocolVersion::V5, &mut out).ok()?;
    Some(out.freeze())
}

/// Decodes an envelope: the message (its expiry on this node's clock) and its node's message
/// number. `max_packet` bounds the PUBLISH packet.
pub(crate) fn decode(bytes: &[u8], max_packet: usize, now: Instant) -> Result<(Message, u64), Malformed> {
    let mut input = bytes;
    if input.remaining() < 1 + 8 + 1 + 8 + 2 {
        return Err(Malformed::Truncated);
    }
    if input.get_u8() != VERSION {
        return Err(Malformed::Version);
    }
    let sequence = input.get_u64();
    let kind = input.get_u8();
    let value = input.get_u64();
    let expires_at = match kind {
        0 => None,
        1 => Some(now.checked_add(Duration::from_millis(value)).unwrap_or(now + Duration::from_secs(u32::MAX.into()))),
        2 => {
            let at = UNIX_EPOCH + Duration::from_millis(value);
            let left = at.duration_since(SystemTime::now()).unwrap_or(Duration::ZERO);
            Some(now.checked_add(left).unwrap_or(now + Duration::from_secs(u32::MAX.into())))
        }
        _ => return Err(Malformed::Expiry),
    };
    let length = input.get_u16();
    let publisher = if length == NO_PUBLISHER {
        None
    } else {
        let length = usize::from(length);
        if input.remaining() < length {
            return Err(Malformed::Truncated);
        }
        let publisher = std::str::from_utf8(&input[..length]).map_err(|_| Malformed::Publisher)?.to_owned();
        input.advance(length);
        Some(publisher)
    };
    let mut packet = BytesMut::from(input);
    let publish = match certfleet_mqtt::decode(&mut packet, ProtocolVersion::V5, max_packet) {
        Ok(Some(Packet::Publish(publish))) if packet.is_empty() => publish,
        _ => return Err(Malformed::Packet),
    };
    let Some(topic) = publish.topic else { return Err(Malformed::Packet) };
    let mut properties = publish.properties;
    // Only what a subscriber receives: never a topic alias nor subscription identifiers.
    properties.topic_alias = None;
    properties.subscription_identifiers.clear();
    properties.message_expiry_interval = None;
    let message = Message {
        topic,
        payload: publish.payload,
        qos: publish.qos,
        retain: publish.retain,
        properties,
        expires_at,
        publisher,
    };
    Ok((message, sequence))
}

#[cfg(test)]
mod tests {
    use super::*;
    use certfleet_mqtt::{Properties, TopicName};

    fn message(expires_in: Option<u64>, now: Instant) -> Message {
        Message {
            topic: TopicName::new("a/b").unwrap(),
            payload: Bytes::from_static(b"hello"),
            qos: QoS::AtLeastOnce,
            retain: true,
            properties: Properties {
                content_type: Some("text/plain".into()),
                user_properties: vec![("k".into(), "v".into())],
                ..Properties::default()
            },
            expires_at: expires_in.map(|seconds| now + Duration::from_secs(seconds)),
            publisher: Some("dev-1".into()),
        }
    }

    #[tokio::test(start_paused = true)]
    async fn messages_round_trip_with_their_expiry_as_time_left() {
        let now = Instant::now();
        for form in [ExpiryForm::Remaining, ExpiryForm::WallClock] {
            for expiry in [None, Some(30)] {
                let sent = message(expiry, now);
                let bytes = encode(&sent, 7, form, now).unwrap();
                let later = now + Duration::from_secs(10);
                let (received, sequence) = decode(&bytes, 1 << 20, later).unwrap();
                assert_eq!(sequence, 7);
                assert_eq!(
                    (&received.topic, &received.payload, received.qos, received.retain),
                    (&sent.topic, &sent.payload, sent.qos, sent.retain)
                );
                assert_eq!(received.properties, sent.properties);
                assert_eq!(received.publisher, sent.publisher);
                match (expiry, form) {
                    (None, _) => assert_eq!(received.expires_at, None),
                    // The time left travels: it starts again on arrival.
                    (Some(_), ExpiryForm::Remaining) => {
                        assert_eq!(received.expires_at, Some(later + Duration::from_secs(30)))
                    }
                    (Some(_), ExpiryForm::WallClock) => {
                        let left = received.expires_at.unwrap().saturating_duration_since(later);
                        assert!(left <= Duration::from_secs(31) && left >= Duration::from_secs(28), "{left:?}");
                    }
                }
            }
        }
    }

    #[test]
    fn hostile_bytes_are_refused() {
        let now = Instant::now();
        let bytes = encode(&message(None, now), 1, ExpiryForm::Remaining, now).unwrap();
        for cut in 0..bytes.len() {
            assert!(decode(&bytes[..cut], 1 << 20, now).is_err(), "truncated at {cut}");
        }
        let mut wrong = bytes.to_vec();
        wrong[0] = 9;
        assert_eq!(decode(&wrong, 1 << 20, now).unwrap_err(), Malformed::Version);
        let mut wrong = bytes.to_vec();
        wrong[9] = 7;
        assert_eq!(decode(&wrong, 1 << 20, now).unwrap_err(), Malformed::Expiry);
        let mut trailing = bytes.to_vec();
        trailing.push(0);
        assert_eq!(decode(&trailing, 1 << 20, now).unwrap_err(), Malformed::Packet);
        assert_eq!(decode(&bytes, 8, now).unwrap_err(), Malformed::Packet, "past the packet bound");
    }
}
