//! The bytes of one connection: a read buffer the codec decodes from, and a write buffer packets
//! are encoded into and written from without blocking the session (a client that does not read
//! stops being read from once the write buffer is full, and is dropped by its keep-alive).

use std::time::Duration;

use bytes::BytesMut;
use certfleet_mqtt::{Packet, ProtocolVersion, encode};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadHalf, WriteHalf};

/// How much room is made in the read buffer before each read while the client sends a lot.
const READ_CHUNK: usize = 8 * 1024;

/// How much room is made while it sends little (a CONNECT, an idle device's PINGREQ): most of a
/// large fleet is idle, and 8 KiB of read buffer per idle connection would be half its memory.
const SMALL_READ: usize = 512;

/// Above this many bytes waiting to be written, no more messages are taken from the session.
pub(crate) const TAKE_BELOW: usize = 64 * 1024;

/// Above this many bytes waiting to be written, the client is not read from.
pub(crate) const READ_BELOW: usize = 512 * 1024;

/// How long the last packets (CONNACK, DISCONNECT) may take to leave when closing.
const CLOSE_GRACE: Duration = Duration::from_secs(2);

pub(crate) struct Transport<S> {
    pub(crate) reader: ReadHalf<S>,
    pub(crate) writer: WriteHalf<S>,
    pub(crate) inbound: BytesMut,
    pub(crate) outbound: BytesMut,
    /// Bytes were written since the last flush.
    pub(crate) unflushed: bool,
    /// The room the next read gets: [`READ_CHUNK`] after a read that filled much of its room,
    /// [`SMALL_READ`] otherwise.
    read_chunk: usize,
}

impl<S: AsyncRead + AsyncWrite> Transport<S> {
    pub(crate) fn new(stream: S) -> Self {
        let (reader, writer) = tokio::io::split(stream);
        Transport {
            reader,
            writer,
            inbound: BytesMut::new(),
            outbound: BytesMut::new(),
            unflushed: false,
            read_chunk: SMALL_READ,
        }
    }

    /// Appends `packet` to what is to be written.
    pub(crate) fn send(&mut self, packet: &Packet, version: ProtocolVersion) {
        if let Err(error) = encode(packet, version, &mut self.outbound) {
            tracing::warn!(%error, packet = %packet.packet_type(), "packet not sent: it cannot be encoded");
        }
    }

    /// Makes room in the read buffer for the next read; a client gone quiet gives back a large
    /// buffer once everything in it is handled.
    pub(crate) fn reserve(&mut self) {
        if self.read_chunk == SMALL_READ && self.inbound.is_empty() && self.inbound.capacity() > 2 * SMALL_READ {
            self.inbound = BytesMut::new();
        }
        self.inbound.reserve(self.read_chunk);
    }

    /// Sizes the next read after one that brought `read` bytes.
    pub(crate) fn read_done(&mut self, read: usize) {
        self.read_chunk = if read >= SMALL_READ / 2 { READ_CHUNK } else { SMALL_READ };
    }

    /// Reads more bytes into the read buffer; `Ok(0)` when the client closed.
    pub(crate) async fn read(&mut self) -> std::io::Result<usize> {
        self.reserve();
        let read = self.reader.read_buf(&mut self.inbound).await?;
        self.read_done(read);
        Ok(read)
    }

    /// Writes what is left, then closes; a client that does not read gets [`CLOSE_GRACE`].
    pub(crate) async fn close(mut self) {
        let Transport { writer, outbound, .. } = &mut self;
        let _ = tokio::time::timeout(CLOSE_GRACE, async {
            writer.write_all_buf(outbound).await?;
            writer.flush().await?;
            writer.shutdown().await
        })
        .await;
    }
}
