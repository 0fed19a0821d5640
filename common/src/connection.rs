//! Typed messages over a byte stream.
//!
//! [`split`] turns a stream into a [`MessageReader`] and a [`MessageWriter`],
//! which own the framing buffers. `read` returns `Ok(None)` on a
//! clean close between frames and an error on anything else (a close inside a
//! frame, an oversized frame, a body that is not the expected JSON), so that
//! callers can tell "the peer hung up" from "the peer is broken".

use std::io;

use futures::{SinkExt, StreamExt};
use serde::{de::DeserializeOwned, Serialize};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_util::codec::{FramedRead, FramedWrite, LengthDelimitedCodec};

use crate::codec::{codec, MAX_FRAME_LEN};

/// What can go wrong reading or writing one message.
#[derive(Debug, thiserror::Error)]
pub enum ConnectionError {
    #[error("connection error: {0}")]
    Io(#[source] io::Error),
    #[error("frame larger than the {MAX_FRAME_LEN}-byte limit")]
    FrameTooLarge,
    #[error("malformed message: {0}")]
    Malformed(#[source] serde_json::Error),
}

impl ConnectionError {
    fn from_codec(err: io::Error) -> Self {
        // LengthDelimitedCodec reports an oversized frame as InvalidData
        // carrying its own error type; everything else is plain I/O.
        if err.kind() == io::ErrorKind::InvalidData
            && err
                .get_ref()
                .is_some_and(|e| e.is::<tokio_util::codec::LengthDelimitedCodecError>())
        {
            ConnectionError::FrameTooLarge
        } else {
            ConnectionError::Io(err)
        }
    }

    /// True when the peer broke the protocol (as opposed to the network failing).
    pub fn is_protocol_violation(&self) -> bool {
        matches!(self, Self::FrameTooLarge | Self::Malformed(_))
    }
}

/// Parses one frame's body.
fn decode<T: DeserializeOwned>(
    frame: Option<Result<bytes::BytesMut, io::Error>>,
) -> Result<Option<T>, ConnectionError> {
    match frame {
        None => Ok(None),
        Some(Err(e)) => Err(ConnectionError::from_codec(e)),
        Some(Ok(frame)) => serde_json::from_slice(&frame)
            .map(Some)
            .map_err(ConnectionError::Malformed),
    }
}

/// Serialises one message, refusing one that would exceed the frame cap.
fn encode<T: Serialize>(msg: &T) -> Result<bytes::Bytes, ConnectionError> {
    let body = serde_json::to_vec(msg).map_err(ConnectionError::Malformed)?;
    if body.len() > MAX_FRAME_LEN {
        return Err(ConnectionError::FrameTooLarge);
    }
    Ok(body.into())
}

/// The framing buffers' first size (each grows as a larger message needs):
/// most messages are a few hundred bytes (a ping, a pong, an output line),
/// and tokio-util's default of 8 KiB each is kept for a connection's life,
/// by every idle manager.
const BUFFER: usize = 1024;

/// The reading half of a split connection.
#[derive(Debug)]
pub struct MessageReader<R> {
    inner: FramedRead<R, LengthDelimitedCodec>,
}

impl<R: AsyncRead + Unpin> MessageReader<R> {
    pub fn new(r: R) -> Self {
        Self {
            inner: FramedRead::with_capacity(r, codec(), BUFFER),
        }
    }

    /// Reads one message; `Ok(None)` on a clean close. Cancel-safe: a
    /// partly received frame stays buffered for the next call.
    pub async fn read<T: DeserializeOwned>(&mut self) -> Result<Option<T>, ConnectionError> {
        decode(self.inner.next().await)
    }
}

/// The writing half of a split connection.
#[derive(Debug)]
pub struct MessageWriter<W> {
    inner: FramedWrite<W, LengthDelimitedCodec>,
}

impl<W: AsyncWrite + Unpin> MessageWriter<W> {
    pub fn new(w: W) -> Self {
        Self {
            inner: FramedWrite::with_capacity(w, codec(), BUFFER),
        }
    }

    /// Writes one message and flushes it.
    pub async fn write<T: Serialize>(&mut self, msg: &T) -> Result<(), ConnectionError> {
        self.inner.send(encode(msg)?).await.map_err(ConnectionError::from_codec)
    }

    /// Flushes what is buffered and ends the stream cleanly (over TLS, a
    /// `close_notify`, so that the peer reads everything sent before it and
    /// sees a clean close), waiting at most `timeout` for a peer that does
    /// not read.
    pub async fn close(&mut self, timeout: std::time::Duration) -> Result<(), ConnectionError> {
        match tokio::time::timeout(timeout, <_ as futures::SinkExt<bytes::Bytes>>::close(&mut self.inner)).await {
            Ok(closed) => closed.map_err(ConnectionError::from_codec),
            Err(_) => Err(ConnectionError::Io(std::io::ErrorKind::TimedOut.into())),
        }
    }

    /// The underlying stream, for tests that misbehave on purpose.
    pub fn get_mut(&mut self) -> &mut W {
        self.inner.get_mut()
    }
}

/// Splits a stream into a message reader and a message writer that can be
/// used from different tasks or `select!` arms.
pub fn split<S: AsyncRead + AsyncWrite>(
    stream: S,
) -> (
    MessageReader<tokio::io::ReadHalf<S>>,
    MessageWriter<tokio::io::WriteHalf<S>>,
) {
    let (r, w) = tokio::io::split(stream);
    (MessageReader::new(r), MessageWriter::new(w))
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncWriteExt;

    #[tokio::test]
    async fn round_trip_and_clean_close() {
        let (a, b) = tokio::io::duplex(4096);
        let (_ra, mut wa) = split(a);
        let (mut rb, _wb) = split(b);
        wa.write(&serde_json::json!({"x": 1})).await.unwrap();
        let v: serde_json::Value = rb.read().await.unwrap().unwrap();
        assert_eq!(v["x"], 1);
        drop((_ra, wa));
        assert!(rb.read::<serde_json::Value>().await.unwrap().is_none());
    }

    #[tokio::test]
    async fn oversized_and_garbage_frames_are_protocol_violations() {
        let (mut raw, b) = tokio::io::duplex(64);
        let mut b = MessageReader::new(b);
        raw.write_all(&u32::MAX.to_be_bytes()).await.unwrap();
        let err = b.read::<serde_json::Value>().await.unwrap_err();
        assert!(matches!(err, ConnectionError::FrameTooLarge), "{err:?}");

        let (mut raw, b) = tokio::io::duplex(64);
        let mut b = MessageReader::new(b);
        raw.write_all(&3u32.to_be_bytes()).await.unwrap();
        raw.write_all(b"{{{").await.unwrap();
        let err = b.read::<serde_json::Value>().await.unwrap_err();
        assert!(err.is_protocol_violation(), "{err:?}");
    }

    #[tokio::test]
    async fn close_inside_a_frame_is_an_error_not_a_clean_close() {
        let (mut raw, b) = tokio::io::duplex(64);
        let mut b = MessageReader::new(b);
        raw.write_all(&10u32.to_be_bytes()).await.unwrap();
        raw.write_all(b"{\"a").await.unwrap();
        drop(raw);
        assert!(b.read::<serde_json::Value>().await.is_err());
    }

    #[tokio::test]
    async fn a_message_of_exactly_the_cap_is_sent_and_read() {
        let (a, b) = tokio::io::duplex(MAX_FRAME_LEN + 64);
        let mut w = MessageWriter::new(a);
        let mut r = MessageReader::new(b);
        // A JSON string's body is its text and two quotes.
        let biggest = "x".repeat(MAX_FRAME_LEN - 2);
        w.write(&biggest).await.unwrap();
        assert_eq!(r.read::<String>().await.unwrap(), Some(biggest));
    }

    #[test]
    fn a_failing_network_is_not_a_protocol_violation() {
        // rustls reports a corrupt record as InvalidData too: only the
        // codec's own error means an oversized frame.
        for err in [
            io::Error::new(io::ErrorKind::InvalidData, "corrupt TLS record"),
            io::Error::from(io::ErrorKind::ConnectionReset),
        ] {
            let err = ConnectionError::from_codec(err);
            assert!(matches!(err, ConnectionError::Io(_)), "{err:?}");
            assert!(!err.is_protocol_violation(), "{err:?}");
        }
    }

    #[tokio::test]
    async fn close_ends_the_stream_cleanly_and_gives_up_on_a_peer_that_does_not_read() {
        let (a, b) = tokio::io::duplex(4096);
        let (mut w, mut r) = (MessageWriter::new(a), MessageReader::new(b));
        w.write(&1u8).await.unwrap();
        w.close(std::time::Duration::from_secs(10)).await.unwrap();
        assert_eq!(r.read::<u8>().await.unwrap(), Some(1));
        let end = tokio::time::timeout(std::time::Duration::from_secs(10), r.read::<u8>()).await;
        assert!(
            end.expect("no end of stream after close").unwrap().is_none(),
            "a clean close"
        );

        // A peer that reads nothing: the pipe fills and close must not wait forever.
        let (a, _b) = tokio::io::duplex(16);
        let mut w = MessageWriter::new(a);
        let _ = tokio::time::timeout(std::time::Duration::from_millis(50), w.write(&"x".repeat(100))).await;
        let err = w.close(std::time::Duration::from_millis(50)).await.unwrap_err();
        assert!(
            matches!(&err, ConnectionError::Io(e) if e.kind() == io::ErrorKind::TimedOut),
            "{err:?}"
        );
    }

    #[tokio::test]
    async fn a_message_over_the_cap_is_not_sent() {
        let (a, _b) = tokio::io::duplex(64);
        let mut w = MessageWriter::new(a);
        let big = "x".repeat(MAX_FRAME_LEN + 1);
        assert!(matches!(w.write(&big).await, Err(ConnectionError::FrameTooLarge)));
    }
}
