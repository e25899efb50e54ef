//! The MQTT 3.1.1 and 5.0 codec: every control packet, MQTT 5 properties and reason codes, topic
//! names and filters. One codec, used by the gateway, the agent and the load tool.
//!
//! Pure: no IO, no async, no clock. Bytes in, packets out, and back.
//!
//! # Reading
//!
//! The caller appends what the network delivers to a [`bytes::BytesMut`] and calls
//! [`decode_connect`] until the connection's CONNECT arrives, then [`decode`] with the
//! [`ProtocolVersion`] it named. Both return `Ok(None)` until a whole frame is buffered; a frame
//! whose declared size is over the caller's maximum is refused ([`Error::PacketTooLarge`]) as soon
//! as its fixed header is in, before its body is buffered. A whole frame is split off the buffer
//! and frozen, and payloads and binary fields are [`bytes::Bytes`] slices of it: no copy.
//! [`check_frame`] does the framing alone.
//!
//! Whatever a peer sends yields a packet or an [`Error`], never a panic (a fuzz target and a
//! stable randomized test hold the decoder to that). [`Error::reason_code`] is the one place that
//! turns an error into the MQTT 5 reason code to send before closing.
//!
//! ```
//! use bytes::BytesMut;
//! use certfleet_mqtt::{Packet, PubAck, QoS, decode, decode_connect, encode};
//!
//! const MAX: usize = 128 * 1024;
//! let mut received = BytesMut::new();
//! // CONNECT (MQTT 3.1.1, client "a"), then half of a QoS 1 PUBLISH to "a/b".
//! received.extend_from_slice(b"\x10\x0d\x00\x04MQTT\x04\x02\x00\x3c\x00\x01a");
//! received.extend_from_slice(b"\x32\x0c\x00\x03a/b");
//!
//! let Some(connect) = decode_connect(&mut received, MAX)? else {
//!     return Ok(()); // not whole yet: read more, call again
//! };
//! let version = connect.protocol_version;
//! assert_eq!(decode(&mut received, version, MAX)?, None); // half a PUBLISH: read more
//!
//! received.extend_from_slice(b"\x00\x0ahello");
//! let mut sent = BytesMut::new();
//! while let Some(packet) = decode(&mut received, version, MAX)? {
//!     if let Packet::Publish(publish) = packet {
//!         assert_eq!((publish.qos, &publish.payload[..]), (QoS::AtLeastOnce, &b"hello"[..]));
//!         if let Some(packet_id) = publish.packet_id {
//!             encode(&Packet::PubAck(PubAck::new(packet_id)), version, &mut sent)?;
//!         }
//!     }
//! }
//! assert_eq!(&sent[..], b"\x40\x02\x00\x0a");
//! # Ok::<(), certfleet_mqtt::Error>(())
//! ```
//!
//! # Writing
//!
//! [`encode`] appends a packet to a `BytesMut` after checking it as a receiver would;
//! [`encoded_len`] gives its size first, for the peer's Maximum Packet Size. For MQTT 3.1.1,
//! MQTT 5 properties are dropped, and what 3.1.1 cannot express is refused with
//! [`Error::NotInVersion`] (see [`encode`]).
//!
//! # Versions
//!
//! Packet structs carry the MQTT 5 fields (properties, reason codes) in both versions: packets
//! decoded from a 3.1.1 connection have them empty or at Success. A v5 PUBLISH may omit its topic
//! name in favour of a Topic Alias: [`Publish::topic`] is then `None`, and the session maps
//! the alias. CONNACK's 3.1.1 return codes are mapped to and from reason codes.
//!
//! **Architecture Invariant:** this crate knows the MQTT wire format and nothing of sessions: which
//! side may send which packet, packet identifiers in flight, topic alias tables, keep alive, client
//! identifier rules and authorization belong to the gateway and the agent. It is the API boundary
//! of the MQTT wire: nothing else parses or writes MQTT bytes.

mod connect;
mod disconnect;
mod error;
mod frame;
mod packet;
mod properties;
mod publish;
mod reason;
mod subscribe;
mod topic;
mod wire;

pub use connect::{ConnAck, Connect, Will};
pub use disconnect::{Auth, Disconnect};
pub use error::Error;
pub use frame::{FrameHeader, MAX_PACKET_SIZE, check_frame, decode, decode_connect, encode, encoded_len};
pub use packet::{Packet, PacketId, PacketType, ProtocolVersion, QoS};
pub use properties::{PayloadFormat, Properties};
pub use publish::{PubAck, PubComp, PubRec, PubRel, Publish};
pub use reason::ReasonCode;
pub use subscribe::{RetainHandling, SubAck, Subscribe, Subscription, UnsubAck, Unsubscribe};
pub use topic::{TopicFilter, TopicName};
