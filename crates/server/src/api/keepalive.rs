//! HTTP/2 keepalive on the client port, as etcd's gRPC server (grpc-go) does it:
//!
//! - Server pings (`--grpc-keepalive-interval`, `--grpc-keepalive-timeout`): when no frame
//!   has come from the client for `interval`, the member sends a PING; when still nothing
//!   (the PING ACK is a frame) has come `timeout` later, it closes the connection.
//! - The client's pings (`--grpc-keepalive-min-time`, grpc-go's enforcement policy with
//!   etcd's `PermitWithoutStream: false`): a client PING that comes less than `min-time`
//!   after the previous one while a stream is open, or less than 2 hours after it while no
//!   stream is open, is a strike; the third strike is answered, after the PING ACKs already
//!   due, with GOAWAY(ENHANCE_YOUR_CALM, debug data `too_many_pings`), and the connection is
//!   closed. A HEADERS or DATA frame sent by the member clears the strikes at the next ping
//!   (so a client's flow-control pings, such as grpc-go's BDP pings that follow received
//!   data, are never strikes).
//!
//! The `h2` server answers PING frames itself and tells its user nothing of them, nor lets
//! it send a GOAWAY with debug data (grpc-go clients back off their keepalive only on
//! `too_many_pings`). So [`Watched`] sits between the connection and `h2`: it follows the
//! frames both ways (frame headers only: payloads pass untouched), keeps the policy's
//! state, and writes the GOAWAY frame itself, at a frame boundary, once the PING ACKs `h2`
//! owes have gone out. Open streams are counted from the frames: a client HEADERS frame
//! opening a stream adds it; the member's frame carrying END_STREAM, or a RST_STREAM either
//! way, removes it (grpc-go's active streams: until the status is sent).

use std::collections::HashSet;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll, ready};
use std::time::{Duration, Instant};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use crate::api::authority::{FRAME_HEADER_LEN, PREFACE, TYPE_HEADERS as HEADERS};
use crate::api::limits::Keepalive;

const DATA: u8 = 0x0;
const RST_STREAM: u8 = 0x3;
const PING: u8 = 0x6;
const GOAWAY: u8 = 0x7;
/// END_STREAM on DATA and HEADERS; ACK on PING.
const FLAG_END_STREAM: u8 = 0x1;
const FLAG_ACK: u8 = 0x1;
const ENHANCE_YOUR_CALM: u32 = 0xb;
const TOO_MANY_PINGS: &[u8] = b"too_many_pings";
/// grpc-go's `maxPingStrikes`: the strike after this many closes the connection.
const MAX_PING_STRIKES: u32 = 2;
/// grpc-go's limit between pings while no stream is open (`defaultPingTimeout`).
const PING_WITHOUT_STREAM: Duration = Duration::from_secs(2 * 3600);
/// grpc-go's `MinTime` when none is configured (etcd passes none for a 0 flag).
const DEFAULT_MIN_TIME: Duration = Duration::from_secs(5 * 60);
/// Open streams tracked at most (h2 refuses streams beyond its concurrency limit, 200, with
/// RST_STREAM, which removes them again).
const MAX_TRACKED_STREAMS: usize = 1024;

/// Follows HTTP/2 frames in a byte stream: the frame header being read and the payload
/// bytes left of the current frame.
#[derive(Default)]
struct Frames {
    head: [u8; FRAME_HEADER_LEN],
    have: usize,
    payload_left: usize,
}

/// A frame header: (type, flags, stream id, payload length).
type Head = (u8, u8, u32, usize);

impl Frames {
    fn at_boundary(&self) -> bool {
        self.have == 0 && self.payload_left == 0
    }

    /// Bytes until the end of the frame `next` (the bytes about to pass) starts or continues.
    fn frame_end(&self, next: &[u8]) -> usize {
        if self.have == 0 && self.payload_left > 0 {
            return self.payload_left;
        }
        let mut head = self.head;
        let take = (FRAME_HEADER_LEN - self.have).min(next.len());
        head[self.have..self.have + take].copy_from_slice(&next[..take]);
        if self.have + take < FRAME_HEADER_LEN {
            return next.len();
        }
        let len = usize::from(head[0]) << 16 | usize::from(head[1]) << 8 | usize::from(head[2]);
        take + len
    }

    /// Follows `data`, calling `on_head` for each frame header completed and `on_end` for
    /// each frame completed (with its header).
    fn feed(&mut self, mut data: &[u8], mut on_head: impl FnMut(Head), mut on_end: impl FnMut(Head)) {
        while !data.is_empty() {
            if self.have == 0 && self.payload_left > 0 {
                let n = self.payload_left.min(data.len());
                self.payload_left -= n;
                data = &data[n..];
                if self.payload_left == 0 {
                    on_end(self.parsed());
                }
                continue;
            }
            let n = (FRAME_HEADER_LEN - self.have).min(data.len());
            self.head[self.have..self.have + n].copy_from_slice(&data[..n]);
            self.have += n;
            data = &data[n..];
            if self.have == FRAME_HEADER_LEN {
                self.have = 0;
                let head = self.parsed();
                self.payload_left = head.3;
                on_head(head);
                if self.payload_left == 0 {
                    on_end(head);
                }
            }
        }
    }

    fn parsed(&self) -> Head {
        let h = &self.head;
        let len = usize::from(h[0]) << 16 | usize::from(h[1]) << 8 | usize::from(h[2]);
        let stream = u32::from_be_bytes([h[5], h[6], h[7], h[8]]) & 0x7fff_ffff;
        (h[3], h[4], stream, len)
    }
}

/// The GOAWAY owed to a client that pinged too often, and how far it has gone out.
enum Calm {
    /// Sent once `acks` PING ACKs in all have been written (and at a frame boundary).
    Due {
        acks: u64,
    },
    /// Queued behind the gathered bytes; they and it are being written out.
    Flushing,
    ShuttingDown,
    Closed,
}

/// The keepalive state of one connection, kept by [`Watched`] as frames pass.
struct Policy {
    min_time: Duration,
    last_ping: Option<Instant>,
    strikes: u32,
    /// A HEADERS or DATA frame was sent since the last client ping.
    reset_strikes: bool,
    open: HashSet<u32>,
    /// The highest stream id the client opened (the GOAWAY's last stream id).
    max_stream: u32,
    pings_read: u64,
    acks_written: u64,
    calm: Option<Calm>,
}

impl Policy {
    fn new(min_time: Duration) -> Policy {
        Policy {
            min_time,
            last_ping: None,
            strikes: 0,
            reset_strikes: false,
            open: HashSet::new(),
            max_stream: 0,
            pings_read: 0,
            acks_written: 0,
            calm: None,
        }
    }

    /// A PING (not an ACK) from the client: grpc-go's `handlePing`.
    fn client_ping(&mut self, now: Instant) {
        self.pings_read += 1;
        let last = self.last_ping.replace(now);
        if std::mem::take(&mut self.reset_strikes) {
            self.strikes = 0;
            return;
        }
        let limit = if self.open.is_empty() { PING_WITHOUT_STREAM } else { self.min_time };
        if last.is_some_and(|last| now.duration_since(last) < limit) {
            self.strikes += 1;
        }
        if self.strikes > MAX_PING_STRIKES && self.calm.is_none() {
            tracing::warn!(
                min_time = ?self.min_time,
                open_streams = self.open.len(),
                "a client pinged too often (--grpc-keepalive-min-time); sending GOAWAY too_many_pings and closing the connection"
            );
            self.calm = Some(Calm::Due { acks: self.pings_read });
        }
    }

    fn read_frame(&mut self, (kind, flags, stream, _): Head) {
        match kind {
            HEADERS if stream > self.max_stream => {
                self.max_stream = stream;
                if self.open.len() < MAX_TRACKED_STREAMS {
                    self.open.insert(stream);
                }
            }
            RST_STREAM => {
                self.open.remove(&stream);
            }
            PING if flags & FLAG_ACK == 0 => self.client_ping(Instant::now()),
            _ => {}
        }
    }

    fn written_frame(&mut self, (kind, flags, stream, _): Head) {
        match kind {
            DATA | HEADERS => {
                self.reset_strikes = true;
                if flags & FLAG_END_STREAM != 0 {
                    self.open.remove(&stream);
                }
            }
            RST_STREAM => {
                self.open.remove(&stream);
            }
            _ => {}
        }
    }

    fn goaway_frame(&self) -> Vec<u8> {
        let len = 8 + TOO_MANY_PINGS.len();
        let mut f = Vec::with_capacity(FRAME_HEADER_LEN + len);
        f.extend_from_slice(&(len as u32).to_be_bytes()[1..]);
        f.extend_from_slice(&[GOAWAY, 0, 0, 0, 0, 0]);
        f.extend_from_slice(&self.max_stream.to_be_bytes());
        f.extend_from_slice(&ENHANCE_YOUR_CALM.to_be_bytes());
        f.extend_from_slice(TOO_MANY_PINGS);
        f
    }
}

/// Bytes of the member's frames gathered before a socket write (see [`Watched`]).
const GATHER: usize = 64 << 10;
/// The DATA payload from which `h2` writes a frame on its own and flushes after it (its
/// chaining threshold on an IO without vectored writes, which ours reports).
const CHAINED: usize = 1024;
/// The buffer capacity a connection keeps between bursts (more is freed at the flush that
/// ends a burst, so an idle connection holds at most this much).
const KEEP: usize = 16 << 10;

/// An HTTP/2 server connection's IO, with the keepalive policy applied (see the module).
///
/// It also gathers the member's large DATA frames. `h2` writes a DATA frame of [`CHAINED`]
/// bytes or more on its own (its header, then the payload) and flushes after each, so a
/// watch stream's batch of 16 KiB frames would cost two socket writes per frame, and on
/// loopback each write also runs the receiver's TCP processing. Here writes are copied into
/// one buffer of up to [`GATHER`] bytes, written out when it is full or at a flush. A flush
/// right after such a large frame is deferred: it wakes the connection's task and returns.
/// Every poll of an `h2` connection reads until the socket has nothing more (a read that
/// returns Pending) and then ends with a flush (`Streams::poll_complete`), so a deferred
/// flush is carried out at the latest by the last flush of the next poll, which the wake
/// brings: a batch of large frames leaves in a few writes, and none waits longer than the
/// next poll of the same task, whatever is written meanwhile. Small frames (`h2` copies
/// them into its own buffer, so a burst of responses already leaves in one write) are
/// written at the flush that follows them, as without this.
pub struct Watched<S> {
    inner: S,
    /// Set on every frame from the client (read by the server's pinger).
    activity: Arc<AtomicBool>,
    preface_left: usize,
    reads: Frames,
    writes: Frames,
    policy: Policy,
    /// Accepted bytes not yet written to `inner`, from `out_pos`.
    out: Vec<u8>,
    out_pos: usize,
    /// Bytes were accepted since the last flush.
    wrote: bool,
    /// Reads that returned Pending (one per poll of the connection).
    idle_reads: u64,
    /// `idle_reads` when a flush was deferred, until the gathered bytes are written.
    deferred_at: Option<u64>,
    /// The last frame whose end was written.
    last_written: Option<Head>,
}

impl<S> Watched<S> {
    /// `inner` carries a connection from its first byte (the client preface).
    pub fn new(inner: S, keepalive: Keepalive, activity: Arc<AtomicBool>) -> Self {
        let min_time = if keepalive.min_time.is_zero() { DEFAULT_MIN_TIME } else { keepalive.min_time };
        Watched {
            inner,
            activity,
            preface_left: PREFACE.len(),
            reads: Frames::default(),
            writes: Frames::default(),
            policy: Policy::new(min_time),
            out: Vec::new(),
            out_pos: 0,
            wrote: false,
            idle_reads: 0,
            deferred_at: None,
            last_written: None,
        }
    }

    fn gathered(&self) -> usize {
        self.out.len() - self.out_pos
    }
}

impl<S: AsyncWrite + Unpin> Watched<S> {
    /// Writes the gathered bytes to `inner`.
    fn poll_drain(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while self.out_pos < self.out.len() {
            let n = ready!(Pin::new(&mut self.inner).poll_write(cx, &self.out[self.out_pos..]))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            self.out_pos += n;
        }
        self.out.clear();
        self.out_pos = 0;
        Poll::Ready(Ok(()))
    }

    /// Drives the owed GOAWAY out (then the connection's end) once it is due. Ready(Ok) when
    /// nothing is to be written now; an error once the connection is closed.
    fn poll_calm(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        loop {
            let next = match self.policy.calm.as_mut() {
                None => return Poll::Ready(Ok(())),
                Some(Calm::Due { acks }) => {
                    if !(self.writes.at_boundary() && self.policy.acks_written >= *acks) {
                        return Poll::Ready(Ok(()));
                    }
                    // After every frame already accepted.
                    let frame = self.policy.goaway_frame();
                    self.out.extend_from_slice(&frame);
                    Calm::Flushing
                }
                Some(Calm::Flushing) => {
                    ready!(self.poll_drain(cx))?;
                    ready!(Pin::new(&mut self.inner).poll_flush(cx))?;
                    Calm::ShuttingDown
                }
                Some(Calm::ShuttingDown) => {
                    // The peer may be gone already: the connection ends either way.
                    let _ = ready!(Pin::new(&mut self.inner).poll_shutdown(cx));
                    Calm::Closed
                }
                Some(Calm::Closed) => {
                    return Poll::Ready(Err(io::Error::new(
                        io::ErrorKind::ConnectionAborted,
                        "GOAWAY too_many_pings sent; connection closed",
                    )));
                }
            };
            self.policy.calm = Some(next);
        }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Watched<S> {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if matches!(this.policy.calm, Some(Calm::Closed)) {
            return Poll::Ready(Ok(()));
        }
        let start = buf.filled().len();
        if Pin::new(&mut this.inner).poll_read(cx, buf)?.is_pending() {
            this.idle_reads += 1;
            return Poll::Pending;
        }
        let mut data = &buf.filled()[start..];
        let skip = this.preface_left.min(data.len());
        this.preface_left -= skip;
        data = &data[skip..];
        if !data.is_empty() {
            let policy = &mut this.policy;
            let activity = &this.activity;
            this.reads.feed(
                data,
                |head| {
                    activity.store(true, Ordering::Relaxed);
                    policy.read_frame(head);
                },
                |_| {},
            );
        }
        Poll::Ready(Ok(()))
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Watched<S> {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        ready!(this.poll_calm(cx))?;
        // While a GOAWAY is owed, accept one frame at a time so that it can follow any.
        let len = match this.policy.calm {
            Some(_) => this.writes.frame_end(buf).min(buf.len()),
            None => buf.len(),
        };
        let buf = &buf[..len];
        if this.gathered() > 0 && this.gathered() + buf.len() > GATHER {
            ready!(this.poll_drain(cx))?;
        }
        let n = if this.gathered() == 0 && buf.len() >= GATHER {
            ready!(Pin::new(&mut this.inner).poll_write(cx, buf))?
        } else {
            this.out.extend_from_slice(buf);
            buf.len()
        };
        this.wrote = true;
        let policy = &mut this.policy;
        let last = &mut this.last_written;
        this.writes.feed(
            &buf[..n],
            |_| {},
            |head| {
                if head.0 == PING && head.1 & FLAG_ACK != 0 {
                    policy.acks_written += 1;
                }
                policy.written_frame(head);
                *last = Some(head);
            },
        );
        Poll::Ready(Ok(n))
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        ready!(this.poll_calm(cx))?;
        let new_writes = std::mem::take(&mut this.wrote);
        let same_poll = this.deferred_at.is_none_or(|at| at == this.idle_reads);
        let after_large = this.writes.at_boundary()
            && matches!(this.last_written, Some((DATA, _, _, len)) if len >= CHAINED);
        if new_writes && after_large && this.gathered() > 0 && same_poll {
            // Deferred to the next poll of this task at the latest (see the type).
            this.deferred_at = Some(this.idle_reads);
            cx.waker().wake_by_ref();
            return Poll::Ready(Ok(()));
        }
        ready!(this.poll_drain(cx))?;
        this.deferred_at = None;
        if this.out.capacity() > KEEP {
            this.out = Vec::new();
        }
        Pin::new(&mut this.inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        ready!(this.poll_drain(cx))?;
        Pin::new(&mut this.inner).poll_shutdown(cx)
    }
}

/// The member's pings on one connection (grpc-go's server keepalive): returns when the
/// connection must be closed, a ping having gone `timeout` without any frame from the
/// client, or when the connection is gone.
pub async fn server_pings(mut pings: h2::PingPong, keepalive: Keepalive, activity: Arc<AtomicBool>) {
    loop {
        tokio::time::sleep(keepalive.interval).await;
        if activity.swap(false, Ordering::Relaxed) {
            continue;
        }
        // A pong left from an earlier ping makes room for a new one; a closed connection ends.
        let gone = std::future::poll_fn(|cx| Poll::Ready(matches!(pings.poll_pong(cx), Poll::Ready(Err(_)))));
        if gone.await {
            return;
        }
        // Fails only while an earlier ping is unanswered: its answer counts as activity too.
        let _ = pings.send_ping(h2::Ping::opaque());
        tokio::time::sleep(keepalive.timeout).await;
        if !activity.swap(false, Ordering::Relaxed) {
            tracing::info!(
                timeout = ?keepalive.timeout,
                "closing a client connection silent after a keepalive ping (--grpc-keepalive-timeout)"
            );
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
        let mut f = (payload.len() as u32).to_be_bytes()[1..].to_vec();
        f.extend_from_slice(&[kind, flags]);
        f.extend_from_slice(&stream.to_be_bytes());
        f.extend_from_slice(payload);
        f
    }

    #[test]
    fn frames_are_followed_across_any_split() {
        let mut stream = frame(HEADERS, 0x4, 1, b"abc");
        stream.extend(frame(PING, 0, 0, &[0; 8]));
        stream.extend(frame(DATA, 1, 1, &[]));
        stream.extend(frame(RST_STREAM, 0, 3, &[0; 4]));
        let expected = vec![(HEADERS, 0x4, 1, 3), (PING, 0, 0, 8), (DATA, 1, 1, 0), (RST_STREAM, 0, 3, 4)];
        for cut in 0..=stream.len() {
            let (mut heads, mut ends) = (Vec::new(), Vec::new());
            let mut f = Frames::default();
            for part in [&stream[..cut], &stream[cut..]] {
                f.feed(part, |h| heads.push(h), |h| ends.push(h));
            }
            assert_eq!((&heads, &ends), (&expected, &expected), "cut at {cut}");
            assert!(f.at_boundary());
        }
        // The end of the frame about to pass, from a boundary and from inside one.
        let mut f = Frames::default();
        assert_eq!(f.frame_end(&stream), 12);
        f.feed(&stream[..4], |_| {}, |_| {});
        assert_eq!(f.frame_end(&stream[4..]), 8);
        f.feed(&stream[4..10], |_| {}, |_| {});
        assert_eq!(f.frame_end(&stream[10..]), 2);
    }

    /// A socket that records each write and has nothing to read.
    #[derive(Default)]
    struct Socket {
        writes: Vec<Vec<u8>>,
        flushes: usize,
        shut: bool,
    }

    impl AsyncRead for Socket {
        fn poll_read(self: Pin<&mut Self>, _: &mut Context<'_>, _: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
            Poll::Pending
        }
    }

    impl AsyncWrite for Socket {
        fn poll_write(self: Pin<&mut Self>, _: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
            self.get_mut().writes.push(buf.to_vec());
            Poll::Ready(Ok(buf.len()))
        }
        fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            self.get_mut().flushes += 1;
            Poll::Ready(Ok(()))
        }
        fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            self.get_mut().shut = true;
            Poll::Ready(Ok(()))
        }
    }

    struct Wakes(std::sync::atomic::AtomicUsize);

    impl std::task::Wake for Wakes {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Ordering::Relaxed);
        }
    }

    fn watched() -> Watched<Socket> {
        let keepalive =
            Keepalive { interval: Duration::ZERO, timeout: Duration::ZERO, min_time: Duration::ZERO };
        let mut w = Watched::new(Socket::default(), keepalive, Arc::new(AtomicBool::new(false)));
        w.preface_left = 0;
        w
    }

    fn write(w: &mut Watched<Socket>, cx: &mut Context<'_>, bytes: &[u8]) {
        assert!(matches!(Pin::new(w).poll_write(cx, bytes), Poll::Ready(Ok(n)) if n == bytes.len()));
    }

    fn flush(w: &mut Watched<Socket>, cx: &mut Context<'_>) {
        assert!(matches!(Pin::new(w).poll_flush(cx), Poll::Ready(Ok(()))));
    }

    /// A poll of the connection reads until Pending.
    fn next_poll(w: &mut Watched<Socket>, cx: &mut Context<'_>) {
        let mut space = [0u8; 16];
        assert!(Pin::new(w).poll_read(cx, &mut ReadBuf::new(&mut space)).is_pending());
    }

    #[test]
    fn writes_of_one_poll_leave_in_one_socket_write() {
        let wakes = Arc::new(Wakes(0.into()));
        let waker = std::task::Waker::from(wakes.clone());
        let mut cx = Context::from_waker(&waker);
        let mut w = watched();
        let (a, b) = (frame(DATA, 0, 1, &[7; CHAINED]), frame(DATA, 0, 1, &[8; 16384]));
        // h2's pattern: each large frame written and flushed, then a last flush.
        next_poll(&mut w, &mut cx);
        for f in [&a, &b, &a] {
            write(&mut w, &mut cx, &f[..9]);
            write(&mut w, &mut cx, &f[9..]);
            flush(&mut w, &mut cx);
        }
        assert!(w.inner.writes.is_empty());
        assert_eq!(wakes.0.load(Ordering::Relaxed), 3, "each deferred flush wakes the task");
        flush(&mut w, &mut cx);
        assert_eq!(w.inner.writes, vec![[a.clone(), b.clone(), a.clone()].concat()]);
        assert_eq!(w.inner.flushes, 1);
        assert_eq!(w.out.capacity(), 0, "a burst's large buffer is not kept");

        // A flush deferred in one poll is carried out by the next poll's flush even when that
        // poll wrote more.
        next_poll(&mut w, &mut cx);
        write(&mut w, &mut cx, &a);
        flush(&mut w, &mut cx);
        assert_eq!(w.inner.writes.len(), 1);
        next_poll(&mut w, &mut cx);
        write(&mut w, &mut cx, &b);
        flush(&mut w, &mut cx);
        assert_eq!(w.inner.writes.len(), 2);
        assert_eq!(w.inner.writes[1], [a.clone(), b.clone()].concat());

        // Small frames are written at the flush that follows them.
        let small = [frame(HEADERS, 0x4, 3, &[1; 20]), frame(DATA, 0, 3, &[2; 100])].concat();
        write(&mut w, &mut cx, &small);
        flush(&mut w, &mut cx);
        assert_eq!(w.inner.writes[2], small);

        // Bytes beyond the buffer's bound are written before more are taken; a write that
        // fills it alone goes straight through.
        let big = vec![1u8; GATHER];
        write(&mut w, &mut cx, &a);
        write(&mut w, &mut cx, &big);
        assert_eq!(w.inner.writes[3..], [a.clone(), big.clone()]);
        assert_eq!(w.gathered(), 0);
    }

    #[test]
    fn an_owed_goaway_follows_the_gathered_frames() {
        let waker = std::task::Waker::noop();
        let mut cx = Context::from_waker(waker);
        let mut w = watched();
        let ack = frame(PING, FLAG_ACK, 0, &[0; 8]);
        write(&mut w, &mut cx, &ack);
        w.policy.calm = Some(Calm::Due { acks: 1 });
        assert!(matches!(Pin::new(&mut w).poll_flush(&mut cx), Poll::Ready(Err(_))));
        let sent: Vec<u8> = w.inner.writes.concat();
        assert_eq!(sent[..ack.len()], ack[..]);
        assert_eq!(sent[ack.len()..], w.policy.goaway_frame()[..]);
        assert!(w.inner.shut);
    }

    #[test]
    fn strikes_follow_grpc_go() {
        let t0 = Instant::now();
        let at = |ms: u64| t0 + Duration::from_millis(ms);
        // An open stream: pings closer than min_time strike; the third strike is due a GOAWAY
        // after the fourth ping's ACK.
        let mut p = Policy::new(Duration::from_millis(100));
        p.read_frame((HEADERS, 0x4, 1, 10));
        for (i, ms) in [0, 10, 20].into_iter().enumerate() {
            p.client_ping(at(ms));
            assert_eq!((p.strikes, p.calm.is_none()), (i as u32, true));
        }
        p.client_ping(at(30));
        assert!(matches!(p.calm, Some(Calm::Due { acks: 4 })));
        // Pings min_time apart never strike.
        let mut p = Policy::new(Duration::from_millis(100));
        p.read_frame((HEADERS, 0x4, 1, 10));
        for ms in [0, 100, 200, 300, 400, 500] {
            p.client_ping(at(ms));
        }
        assert_eq!((p.strikes, p.calm.is_none()), (0, true));
        // Without an open stream, any two pings within 2 hours strike.
        let mut p = Policy::new(Duration::from_millis(100));
        p.read_frame((HEADERS, 0x5, 1, 10));
        p.written_frame((HEADERS, FLAG_END_STREAM, 1, 10));
        p.reset_strikes = false;
        for s in [0, 1000, 2000, 3000] {
            p.client_ping(at(s));
        }
        assert!(p.calm.is_some());
        // Data sent by the member clears the strikes at the next ping.
        let mut p = Policy::new(Duration::from_millis(100));
        p.read_frame((HEADERS, 0x4, 1, 10));
        for ms in 0..10 {
            p.written_frame((DATA, 0, 1, 100));
            p.client_ping(at(ms));
        }
        assert_eq!((p.strikes, p.calm.is_none()), (0, true));
        // A reset stream is no longer open.
        p.read_frame((RST_STREAM, 0, 1, 4));
        assert!(p.open.is_empty());
        assert_eq!(p.goaway_frame()[..9], [0, 0, 22, GOAWAY, 0, 0, 0, 0, 0]);
        assert_eq!(p.goaway_frame()[9..13], 1u32.to_be_bytes());
    }
}
