//! A persistent session as it is kept in the JetStream KV bucket `certfleet_sessions`, so that
//! another node resumes it when its node is gone ([`SessionSnapshot`]).
//!
//! ```text
//! u8  version (1)
//! u16 certificate ID length, then its bytes (hex)
//! u64 Session Expiry Interval, seconds
//! u64 when the offline session ends, Unix milliseconds (0: online)
//! u16 subscriptions, each: u16 filter length, filter, u8 QoS, u8 flags (1 no local, 2 retain
//!     as published), u32 identifier (0: none)
//! u32 messages, each: u8 QoS, u8 retain, u8 identifiers, u32 each, u32 envelope length, the
//!     message's envelope (expiry as wall-clock time)
//! ```
//!
//! A value is at most [`MAX_SNAPSHOT`] bytes (NATS's payload limit is 1 MiB): the oldest
//! messages that fit are kept, the others are not (counted). Decoding checks every length
//! against what is left, and bounds the counts.

use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::Duration;

use bytes::{Buf, BufMut, Bytes, BytesMut};
use certfleet_mqtt::{QoS, TopicFilter};
use tokio::time::Instant;

use super::envelope::{self, ExpiryForm};
use crate::fabric::{SavedMessage, SavedSubscription, SessionSnapshot};

/// The largest value written.
pub(crate) const MAX_SNAPSHOT: usize = 900 * 1024;
const VERSION: u8 = 1;
/// Bounds of a decoded snapshot (a session holds at most the broker's own bounds, far below).
const MAX_SUBSCRIPTIONS: usize = 10_000;
const MAX_MESSAGES: usize = 100_000;

/// Encodes `snapshot`; returns the bytes and how many of its messages did not fit.
pub(crate) fn encode(snapshot: &SessionSnapshot, now: Instant) -> (Bytes, usize) {
    let mut out = BytesMut::new();
    out.put_u8(VERSION);
    let certificate = snapshot.certificate_id.as_bytes();
    out.put_u16(u16::try_from(certificate.len()).unwrap_or(0));
    out.put_slice(&certificate[..certificate.len().min(usize::from(u16::MAX))]);
    out.put_u64(snapshot.expiry.as_secs());
    out.put_u64(snapshot.expires_at_ms.unwrap_or(0));
    let subscriptions: Vec<&SavedSubscription> = snapshot.subscriptions.iter().take(usize::from(u16::MAX)).collect();
    out.put_u16(u16::try_from(subscriptions.len()).unwrap_or(u16::MAX));
    for subscription in subscriptions {
        let filter = subscription.filter.as_str().as_bytes();
        out.put_u16(u16::try_from(filter.len()).unwrap_or(0));
        out.put_slice(&filter[..filter.len().min(usize::from(u16::MAX))]);
        out.put_u8(subscription.qos as u8);
        out.put_u8(u8::from(subscription.no_local) | (u8::from(subscription.retain_as_published) << 1));
        out.put_u32(subscription.identifier.map_or(0, NonZeroU32::get));
    }
    let count_at = out.len();
    out.put_u32(0);
    let mut written = 0u32;
    let mut left_out = 0;
    for saved in &snapshot.messages {
        let Some(bytes) = envelope::encode(&saved.message, 0, ExpiryForm::WallClock, now) else {
            left_out += 1;
            continue;
        };
        let size = 3 + 4 * saved.identifiers.len() + 4 + bytes.len();
        if out.len() + size > MAX_SNAPSHOT || saved.identifiers.len() > usize::from(u8::MAX) {
            left_out += 1;
            continue;
        }
        out.put_u8(saved.qos as u8);
        out.put_u8(u8::from(saved.retain));
        out.put_u8(u8::try_from(saved.identifiers.len()).unwrap_or(0));
        for identifier in &saved.identifiers {
            out.put_u32(identifier.get());
        }
        out.put_u32(u32::try_from(bytes.len()).unwrap_or(0));
        out.put_slice(&bytes);
        written += 1;
    }
    out[count_at..count_at + 4].copy_from_slice(&written.to_be_bytes());
    (out.freeze(), left_out)
}

/// Why a kept session could not be read.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("a malformed session snapshot")]
pub(crate) struct Malformed;

/// Decodes a snapshot; `max_packet` bounds each message.
pub(crate) fn decode(bytes: &[u8], max_packet: usize, now: Instant) -> Result<SessionSnapshot, Malformed> {
    let mut input = bytes;
    let need = |input: &&[u8], count: usize| if input.remaining() < count { Err(Malformed) } else { Ok(()) };
    need(&input, 1 + 2)?;
    if input.get_u8() != VERSION {
        return Err(Malformed);
    }
    let length = usize::from(input.get_u16());
    need(&input, length)?;
    let certificate_id = std::str::from_utf8(&input[..length]).map_err(|_| Malformed)?.to_owned();
    input.advance(length);
    need(&input, 8 + 8 + 2)?;
    let expiry = Duration::from_secs(input.get_u64());
    let expires_at_ms = Some(input.get_u64()).filter(|at| *at != 0);
    let count = usize::from(input.get_u16());
    if count > MAX_SUBSCRIPTIONS {
        return Err(Malformed);
    }
    let mut subscriptions = Vec::with_capacity(count);
    for _ in 0..count {
        need(&input, 2)?;
        let length = usize::from(input.get_u16());
        need(&input, length + 1 + 1 + 4)?;
        let filter = std::str::from_utf8(&input[..length]).map_err(|_| Malformed)?;
        let filter = TopicFilter::new(filter).map_err(|_| Malformed)?;
        input.advance(length);
        let qos = qos(input.get_u8())?;
        let flags = input.get_u8();
        let identifier = NonZeroU32::new(input.get_u32());
        subscriptions.push(SavedSubscription {
            filter,
            qos,
            no_local: flags & 1 != 0,
            retain_as_published: flags & 2 != 0,
            identifier,
        });
    }
    need(&input, 4)?;
    let count = usize::try_from(input.get_u32()).map_err(|_| Malformed)?;
    if count > MAX_MESSAGES {
        return Err(Malformed);
    }
    let mut messages = Vec::new();
    for _ in 0..count {
        need(&input, 3)?;
        let delivered = qos(input.get_u8())?;
        let retain = input.get_u8() != 0;
        let identifiers = usize::from(input.get_u8());
        need(&input, 4 * identifiers + 4)?;
        let identifiers: Vec<NonZeroU32> = (0..identifiers).filter_map(|_| NonZeroU32::new(input.get_u32())).collect();
        let length = usize::try_from(input.get_u32()).map_err(|_| Malformed)?;
        need(&input, length)?;
        let (message, _) = envelope::decode(&input[..length], max_packet, now).map_err(|_| Malformed)?;
        input.advance(length);
        messages.push(SavedMessage { message: Arc::new(message), qos: delivered, retain, identifiers });
    }
    if input.has_remaining() {
        return Err(Malformed);
    }
    Ok(SessionSnapshot { certificate_id, expiry, expires_at_ms, subscriptions, messages })
}

fn qos(value: u8) -> Result<QoS, Malformed> {
    match value {
        0 => Ok(QoS::AtMostOnce),
        1 => Ok(QoS::AtLeastOnce),
        2 => Ok(QoS::ExactlyOnce),
        _ => Err(Malformed),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fabric::Message;
    use certfleet_mqtt::{Properties, TopicName};

    fn snapshot(messages: usize, size: usize) -> SessionSnapshot {
        SessionSnapshot {
            certificate_id: "ab".repeat(32),
            expiry: Duration::from_secs(3600),
            expires_at_ms: Some(1_800_000_000_000),
            subscriptions: vec![
                SavedSubscription {
                    filter: TopicFilter::new("a/+").unwrap(),
                    qos: QoS::AtLeastOnce,
                    no_local: true,
                    retain_as_published: false,
                    identifier: NonZeroU32::new(7),
                },
                SavedSubscription {
                    filter: TopicFilter::new("$share/g/b/#").unwrap(),
                    qos: QoS::ExactlyOnce,
                    no_local: false,
                    retain_as_published: true,
                    identifier: None,
                },
            ],
            messages: (0..messages)
                .map(|index| SavedMessage {
                    message: Arc::new(Message {
                        topic: TopicName::new(format!("a/{index}")).unwrap(),
                        payload: Bytes::from(vec![b'x'; size]),
                        qos: QoS::AtLeastOnce,
                        retain: false,
                        properties: Properties::default(),
                        expires_at: None,
                        publisher: Some("p".into()),
                    }),
                    qos: QoS::AtLeastOnce,
                    retain: false,
                    identifiers: vec![NonZeroU32::new(7).unwrap()],
                })
                .collect(),
        }
    }

    #[test]
    fn snapshots_round_trip_and_stay_within_a_nats_payload() {
        let now = Instant::now();
        let kept = snapshot(3, 10);
        let (bytes, left_out) = encode(&kept, now);
        assert_eq!(left_out, 0);
        assert_eq!(decode(&bytes, 1 << 20, now).unwrap(), kept);

        // 20 messages of 100 KiB: the oldest that fit are kept.
        let big = snapshot(20, 100 * 1024);
        let (bytes, left_out) = encode(&big, now);
        assert!(bytes.len() <= MAX_SNAPSHOT);
        let decoded = decode(&bytes, 1 << 20, now).unwrap();
        assert_eq!(decoded.messages.len() + left_out, 20);
        assert_eq!(decoded.messages[..], big.messages[..decoded.messages.len()], "oldest first");
    }

    #[test]
    fn hostile_snapshots_are_refused() {
        let now = Instant::now();
        let (bytes, _) = encode(&snapshot(2, 10), now);
        for cut in 0..bytes.len() {
            assert_eq!(decode(&bytes[..cut], 1 << 20, now), Err(Malformed), "cut at {cut}");
        }
        let mut trailing = bytes.to_vec();
        trailing.push(1);
        assert_eq!(decode(&trailing, 1 << 20, now), Err(Malformed));
        let mut wrong = bytes.to_vec();
        wrong[0] = 2;
        assert_eq!(decode(&wrong, 1 << 20, now), Err(Malformed));
    }
}
