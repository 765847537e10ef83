//! Reading whole frames from a socket with bounded buffering.

use std::io;

use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt};

use crate::codec::{DecodeError, FrameType, peek_frame_len, split_frame};

/// Why reading a frame failed.
#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    #[error("i/o error: {0}")]
    Io(#[from] io::Error),
    #[error("malformed frame: {0}")]
    Decode(#[from] DecodeError),
    #[error("connection closed in the middle of a frame ({0} bytes buffered)")]
    TruncatedAtEof(usize),
}

/// Most bytes asked of the socket in one read; a large frame is read in several.
const READ_CHUNK: usize = 256 * 1024;

/// Buffers a connection's input and cuts it into frames. Cancel-safe: a dropped
/// `read_frame` future loses nothing, the bytes stay buffered.
#[derive(Debug, Default)]
pub(crate) struct FrameReader {
    buf: BytesMut,
}

impl FrameReader {
    pub(crate) fn new() -> FrameReader {
        FrameReader { buf: BytesMut::with_capacity(8 * 1024) }
    }

    /// The next frame, or `None` on a clean end of stream between frames. The declared
    /// length is checked against `max` before any buffer grows for it, and the buffer grows
    /// only as the peer's bytes actually arrive.
    pub(crate) async fn read_frame<R: AsyncRead + Unpin>(
        &mut self,
        io: &mut R,
        max: u32,
    ) -> Result<Option<(FrameType, Bytes)>, FrameError> {
        loop {
            if let Some(frame) = split_frame(&mut self.buf, max)? {
                return Ok(Some(frame));
            }
            let missing = match peek_frame_len(&self.buf, max)? {
                Some(total) => total - self.buf.len(),
                None => 4 - self.buf.len(),
            };
            self.buf.reserve(missing.clamp(8 * 1024, READ_CHUNK));
            let n = io.read_buf(&mut self.buf).await?;
            if n == 0 {
                return if self.buf.is_empty() {
                    Ok(None)
                } else {
                    Err(FrameError::TruncatedAtEof(self.buf.len()))
                };
            }
        }
    }
}
