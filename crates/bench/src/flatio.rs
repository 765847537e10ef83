//! An IO stream that tells its writer it has no vectored writes, so HTTP/2 frames coalesce.
//!
//! The `h2` crate copies a DATA frame's payload into its 16 KiB write buffer only when the
//! payload is shorter than its chaining threshold: 256 bytes on an IO with vectored writes,
//! 1,024 bytes without. A longer payload is kept aside to go out by `writev` with the
//! buffer, and until that write happens no further frame can be buffered. A put of a 256-byte
//! value (a 275-byte DATA payload) or a range response carrying one therefore cost one
//! socket write per request, each of which on loopback also runs the receiver's TCP
//! processing. Without vectored writes, payloads up to 1 KiB are copied and a burst of
//! requests or responses leaves in one write; longer payloads still go out unbuffered, by
//! two plain writes instead of one `writev`.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// Passes reads and writes through; reports no vectored writes (see the module docs).
pub struct FlatWrites<S>(pub S);

impl<S: AsyncRead + Unpin> AsyncRead for FlatWrites<S> {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().0).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for FlatWrites<S> {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().0).poll_write(cx, buf)
    }

    fn is_write_vectored(&self) -> bool {
        false
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().0).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().0).poll_shutdown(cx)
    }
}
