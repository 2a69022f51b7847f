//! The request-response codec of the sync protocol: one length-prefixed [`Message`] each way.
//!
//! Length first, checked against [`MESSAGE_BYTES_MAX`] (a request against the far smaller
//! `REQUEST_BYTES_MAX`) before anything is read, and the buffer grows only as bytes arrive, so
//! a peer cannot make us allocate more than one message, nor more than it sent. Bytes that are not a sync message are read
//! as [`Framed::Err`] rather than failing the stream: libp2p drops a failed inbound stream
//! without telling the behaviour, and the driver must see the misbehaviour to act on it.

use std::io;

use libp2p::StreamProtocol;
use libp2p::futures::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tillmesh_protocol::sync::Message;
use tillmesh_protocol::sync::wire::{MESSAGE_BYTES_MAX, REQUEST_BYTES_MAX};

#[derive(Debug, Clone, Default)]
pub struct SyncCodec;

/// What a read reserves before the bytes arrive.
const READ_CHUNK_BYTES: usize = 64 * 1024;

/// A message as read off a stream: the message, or why the bytes are not one.
pub type Framed = Result<Message, String>;

async fn read_message<T: AsyncRead + Unpin + Send>(io: &mut T, max: usize) -> io::Result<Framed> {
    let mut len = [0u8; 4];
    io.read_exact(&mut len).await?;
    let len = u32::from_be_bytes(len) as usize;
    if len > max {
        return Ok(Err(format!(
            "a sync message of {len} bytes, over the limit of {max}"
        )));
    }
    // Grown as the bytes arrive, not made whole from the length: a peer that announces the
    // most it may and then sends little costs us what it sent.
    // It doubles as it fills, but never past the length announced.
    let mut buf: Vec<u8> = Vec::new();
    while buf.len() < len {
        let filled = buf.len();
        if filled == buf.capacity() {
            buf.reserve_exact(filled.max(READ_CHUNK_BYTES).min(len - filled));
        }
        buf.resize(buf.capacity().min(len), 0);
        let n = io.read(&mut buf[filled..]).await?;
        buf.truncate(filled + n);
        if n == 0 {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
    }
    Ok(Message::decode(&buf).map_err(|e| format!("a malformed sync message: {e}")))
}

async fn write_message<T: AsyncWrite + Unpin + Send>(io: &mut T, m: Framed) -> io::Result<()> {
    let m = m.map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
    let bytes = m.encode();
    io.write_all(&(bytes.len() as u32).to_be_bytes()).await?;
    io.write_all(&bytes).await?;
    io.close().await
}

impl libp2p::request_response::Codec for SyncCodec {
    type Protocol = StreamProtocol;
    type Request = Framed;
    type Response = Framed;

    async fn read_request<T: AsyncRead + Unpin + Send>(
        &mut self,
        _: &StreamProtocol,
        io: &mut T,
    ) -> io::Result<Framed> {
        // A request is a pull: far smaller than an answer may be.
        read_message(io, REQUEST_BYTES_MAX).await
    }

    async fn read_response<T: AsyncRead + Unpin + Send>(
        &mut self,
        _: &StreamProtocol,
        io: &mut T,
    ) -> io::Result<Framed> {
        read_message(io, MESSAGE_BYTES_MAX).await
    }

    async fn write_request<T: AsyncWrite + Unpin + Send>(
        &mut self,
        _: &StreamProtocol,
        io: &mut T,
        m: Framed,
    ) -> io::Result<()> {
        write_message(io, m).await
    }

    async fn write_response<T: AsyncWrite + Unpin + Send>(
        &mut self,
        _: &StreamProtocol,
        io: &mut T,
        m: Framed,
    ) -> io::Result<()> {
        write_message(io, m).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use libp2p::futures::io::Cursor;
    use libp2p::request_response::Codec;

    /// A request is a pull: one that says it is an answer's size (11 MB) is refused on its
    /// length, before a buffer is made for it; an answer may be that large.
    #[tokio::test]
    async fn a_request_is_held_to_a_pulls_size() {
        let protocol = StreamProtocol::new("/tillmesh/sync/1/test");
        let len = 11_000_000u32;
        assert!((len as usize) > REQUEST_BYTES_MAX && (len as usize) <= MESSAGE_BYTES_MAX);
        let mut io = Cursor::new(len.to_be_bytes().to_vec());
        let read = SyncCodec.read_request(&protocol, &mut io).await.unwrap();
        assert!(read.unwrap_err().contains("over the limit"));
        // As an answer the same length is allowed: the read then wants the bytes.
        let mut io = Cursor::new(len.to_be_bytes().to_vec());
        let read = SyncCodec.read_response(&protocol, &mut io).await;
        assert!(
            read.is_err(),
            "the stream ends before the 11 MB it announced"
        );
    }
}
