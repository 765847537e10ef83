//! The client port's connections, and a shim that makes `:authority: http://host:port` acceptable.
//!
//! etcd's Go client (etcdctl 3.4 among others) dials single endpoints with the endpoint string
//! as the gRPC target, so HTTP/2 requests on those connections carry the pseudo-header
//! `:authority: http://127.0.0.1:2379` (etcd 3.4's `Status`, `HashKV` and `Defragment`, so
//! `etcdctl endpoint status`, `endpoint hashkv` and `defrag`, also with `--cluster`, which
//! dials the members' client URLs). grpc-go's own server ignores `:authority`, so etcd accepts
//! it; the `h2` crate under hyper rejects it as a malformed authority with
//! RST_STREAM(PROTOCOL_ERROR) before the request reaches us, and has no setting to relax that.
//!
//! [`AuthorityFix`] wraps each accepted TCP stream and rewrites the client-to-server bytes
//! before h2 sees them. A connection that does not start with the HTTP/2 client preface (the
//! JSON gateway's HTTP/1.1) is passed through untouched. Otherwise frames are delimited by their
//! 9-byte headers and passed through as they come, except complete HEADERS frames (END_HEADERS
//! set, at most 16 KiB), whose HPACK header block is walked representation by representation
//! (RFC 7541 §6) looking for a literal `:authority` (static name index 1 or a literal name).
//! A value containing `://` is replaced by the authority part after the scheme, re-emitted as
//! a raw string literal of the same representation kind, and the frame is rebuilt (without its
//! padding). No dynamic table is needed: the entry the server indexes is smaller than the
//! client's, so the server evicts no earlier than the client and every index the client later
//! sends still names the same entry.
//!
//! Cost: once the first header block of a connection carried no schemed authority (the case of
//! every client but etcd's single-endpoint dials), the connection switches to plain passthrough.
//! grpc-go sends the authority once as a literal and then by index, so on a schemed connection
//! later blocks need no change, but they are still scanned (cheaply: bytes stay in the caller's
//! buffer and only frame headers and HEADERS frames are looked at) in case the client re-sends
//! the literal after an eviction. Anything unparseable switches to passthrough, so h2 reports
//! its own error. Bytes held back are bounded by one maximum-size frame (plus, after a rewrite,
//! the rest of the read that carried it); no length from the wire sizes an allocation beyond.
//!
//! Known limits: a header block split over CONTINUATION frames, or one that would exceed 16 KiB
//! after the rewrite, is passed unchanged; a literal whose name refers to a dynamic-table entry
//! named `:authority` is not recognised (grpc-go uses the static index); a connection whose
//! first request had a plain authority is not watched for a schemed one later.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

pub(crate) const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
pub(crate) const FRAME_HEADER_LEN: usize = 9;
/// The largest frame payload we hold back: h2's (and HTTP/2's default) SETTINGS_MAX_FRAME_SIZE.
const MAX_FRAME: usize = 16_384;
pub(crate) const TYPE_HEADERS: u8 = 0x1;
const FLAG_END_HEADERS: u8 = 0x4;
const FLAG_PADDED: u8 = 0x8;
const FLAG_PRIORITY: u8 = 0x20;
const AUTHORITY: &[u8] = b":authority";

/// An IO stream whose incoming HTTP/2 requests get `:authority: scheme://host` rewritten to
/// `host` (see the module documentation). Writes go straight through.
pub struct AuthorityFix<S> {
    inner: S,
    scan: Scanner,
    /// Received bytes not yet decided: the bytes of a read that followed a rewritten frame,
    /// and an incomplete frame header or HEADERS frame (at most one frame) being completed.
    held: Vec<u8>,
    /// Decided bytes to hand out before anything else, from `out_pos`.
    out: Vec<u8>,
    out_pos: usize,
}

impl<S> AuthorityFix<S> {
    #[cfg(test)]
    pub fn new(inner: S) -> Self {
        Self::with_received(inner, &[])
    }

    /// Like [`AuthorityFix::new`] on a stream from which `received` was already read: those
    /// bytes come first, scanned like the rest.
    pub fn with_received(inner: S, received: &[u8]) -> Self {
        AuthorityFix { inner, scan: Scanner::default(), held: received.to_vec(), out: Vec::new(), out_pos: 0 }
    }

    /// Moves what can be decided from `held` to `out`. Returns how many more bytes the frame at
    /// the front of `held` needs, if it is incomplete.
    fn process_held(&mut self) -> Option<usize> {
        let mut i = 0;
        let mut need = None;
        while i < self.held.len() {
            match self.scan.step(&self.held[i..]) {
                Step::Pass(n) => {
                    self.out.extend_from_slice(&self.held[i..i + n]);
                    i += n;
                }
                Step::Replace(n, frame) => {
                    self.out.extend_from_slice(&frame);
                    i += n;
                }
                Step::Need(n) => {
                    need = Some(n);
                    break;
                }
            }
        }
        self.held.drain(..i);
        need
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for AuthorityFix<S> {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        loop {
            if this.out_pos < this.out.len() {
                let n = (this.out.len() - this.out_pos).min(buf.remaining());
                buf.put_slice(&this.out[this.out_pos..this.out_pos + n]);
                this.out_pos += n;
                if this.out_pos == this.out.len() {
                    this.out.clear();
                    this.out_pos = 0;
                }
                return Poll::Ready(Ok(()));
            }
            if buf.remaining() == 0 {
                return Poll::Ready(Ok(()));
            }
            if !this.held.is_empty() {
                let need = this.process_held();
                if !this.out.is_empty() {
                    continue;
                }
                if let Some(need) = need {
                    // Read only what the held frame lacks, so what follows it can again be
                    // scanned in place in the caller's buffer.
                    let mut more = buf.take(need);
                    ready!(Pin::new(&mut this.inner).poll_read(cx, &mut more))?;
                    if more.filled().is_empty() {
                        // End of stream inside a frame: hand over what there is, unchanged.
                        this.scan.state = State::Passthrough;
                        this.out.append(&mut this.held);
                    } else {
                        this.held.extend_from_slice(more.filled());
                    }
                    continue;
                }
            }
            if this.scan.state == State::Passthrough {
                if this.out.capacity() != 0 || this.held.capacity() != 0 {
                    this.out = Vec::new();
                    this.held = Vec::new();
                }
                return Pin::new(&mut this.inner).poll_read(cx, buf);
            }
            // Scan in place: bytes that pass unchanged stay in the caller's buffer.
            let start = buf.filled().len();
            ready!(Pin::new(&mut this.inner).poll_read(cx, buf))?;
            let end = buf.filled().len();
            if end == start {
                return Poll::Ready(Ok(()));
            }
            let mut i = start;
            while i < end {
                match this.scan.step(&buf.filled()[i..end]) {
                    Step::Pass(n) => i += n,
                    Step::Need(_) => {
                        this.held.extend_from_slice(&buf.filled()[i..end]);
                        break;
                    }
                    Step::Replace(n, frame) => {
                        this.out.extend_from_slice(&frame);
                        this.held.extend_from_slice(&buf.filled()[i + n..end]);
                        break;
                    }
                }
            }
            buf.set_filled(i);
            if i > start {
                return Poll::Ready(Ok(()));
            }
        }
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for AuthorityFix<S> {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write_vectored(cx, bufs)
    }

    /// No: HTTP/2 frames then coalesce into one write per burst (see `crates/bench/src/flatio.rs`).
    fn is_write_vectored(&self) -> bool {
        false
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    /// This many bytes of the client preface seen so far.
    Preface(usize),
    /// Inside HTTP/2 framing, `skip` payload bytes of the current (uninteresting) frame left.
    Frames { skip: usize },
    /// Not HTTP/2, nothing more to rewrite, or something we do not understand.
    Passthrough,
}

/// What to do with the front of the unprocessed input.
#[derive(Debug, PartialEq, Eq)]
enum Step {
    /// Hand this many bytes on unchanged.
    Pass(usize),
    /// The frame at the front is incomplete and needs this many more bytes.
    Need(usize),
    /// Replace this many bytes (one HEADERS frame) by these.
    Replace(usize, Vec<u8>),
}

/// The stream's parsing state, separate from buffering so it can be tested on byte slices.
#[derive(Debug)]
struct Scanner {
    state: State,
    /// Whether a schemed authority was rewritten on this connection.
    rewrote: bool,
}

impl Default for Scanner {
    fn default() -> Self {
        Scanner { state: State::Preface(0), rewrote: false }
    }
}

impl Scanner {
    /// Decides about the front of `input` (not empty). `Need` leaves the state unchanged, so
    /// the same input plus more bytes can be offered again.
    fn step(&mut self, input: &[u8]) -> Step {
        match self.state {
            State::Passthrough => Step::Pass(input.len()),
            State::Preface(seen) => {
                let rest = PREFACE.get(seen..).unwrap_or_default();
                let n = rest.len().min(input.len());
                if input.get(..n) != rest.get(..n) {
                    self.state = State::Passthrough;
                    return Step::Pass(input.len());
                }
                self.state = if seen + n == PREFACE.len() {
                    State::Frames { skip: 0 }
                } else {
                    State::Preface(seen + n)
                };
                Step::Pass(n)
            }
            State::Frames { skip } if skip > 0 => {
                let n = skip.min(input.len());
                self.state = State::Frames { skip: skip - n };
                Step::Pass(n)
            }
            State::Frames { .. } => {
                let Some(header) = input.get(..FRAME_HEADER_LEN) else {
                    return Step::Need(FRAME_HEADER_LEN - input.len());
                };
                let len = usize::from(header[0]) << 16 | usize::from(header[1]) << 8 | usize::from(header[2]);
                let (kind, flags) = (header[3], header[4]);
                if kind != TYPE_HEADERS || flags & FLAG_END_HEADERS == 0 || len > MAX_FRAME {
                    self.state = State::Frames { skip: len };
                    return Step::Pass(FRAME_HEADER_LEN);
                }
                let total = FRAME_HEADER_LEN + len;
                let Some(frame) = input.get(..total) else {
                    return Step::Need(total - input.len());
                };
                match rewrite_headers_frame(frame) {
                    Rewrite::Unchanged => {
                        // No schemed authority: this client is not one that needs us.
                        if !self.rewrote {
                            self.state = State::Passthrough;
                        }
                        Step::Pass(total)
                    }
                    Rewrite::TooLarge => Step::Pass(total),
                    Rewrite::Malformed => {
                        self.state = State::Passthrough;
                        Step::Pass(total)
                    }
                    Rewrite::Frame(new) => {
                        self.rewrote = true;
                        Step::Replace(total, new)
                    }
                }
            }
        }
    }
}

#[derive(Debug, PartialEq, Eq)]
enum Rewrite {
    /// No `:authority` literal with a scheme.
    Unchanged,
    /// Rewritten, but the new frame would exceed the maximum frame size.
    TooLarge,
    /// Not valid HPACK (or an invalid frame): leave it to h2.
    Malformed,
    /// The rewritten frame, header included.
    Frame(Vec<u8>),
}

/// `frame` is one complete HEADERS frame with END_HEADERS, header included.
fn rewrite_headers_frame(frame: &[u8]) -> Rewrite {
    let Some((header, payload)) = frame.split_at_checked(FRAME_HEADER_LEN) else {
        return Rewrite::Malformed;
    };
    let flags = header[4];
    let (mut start, mut end) = (0, payload.len());
    if flags & FLAG_PADDED != 0 {
        let Some(&pad) = payload.first() else { return Rewrite::Malformed };
        start = 1;
        match end.checked_sub(usize::from(pad)) {
            Some(e) if e >= start => end = e,
            _ => return Rewrite::Malformed,
        }
    }
    let priority = if flags & FLAG_PRIORITY != 0 {
        let Some(p) = payload.get(start..start + 5).filter(|_| start + 5 <= end) else {
            return Rewrite::Malformed;
        };
        start += 5;
        p
    } else {
        &[]
    };
    let block = &payload[start..end];
    let new_block = match rewrite_block(block) {
        Ok(Some(b)) => b,
        Ok(None) => return Rewrite::Unchanged,
        Err(Malformed) => return Rewrite::Malformed,
    };
    let len = priority.len() + new_block.len();
    if len > MAX_FRAME {
        return Rewrite::TooLarge;
    }
    let mut out = Vec::with_capacity(FRAME_HEADER_LEN + len);
    out.extend_from_slice(&[
        (len >> 16) as u8,
        (len >> 8) as u8,
        len as u8,
        TYPE_HEADERS,
        flags & !FLAG_PADDED,
    ]);
    out.extend_from_slice(&header[5..9]);
    out.extend_from_slice(priority);
    out.extend_from_slice(&new_block);
    Rewrite::Frame(out)
}

#[derive(Debug, PartialEq, Eq)]
struct Malformed;

/// Walks an HPACK header block; returns the block with every literal `:authority` value that
/// has a scheme replaced by its authority part, or `None` if there is none.
fn rewrite_block(block: &[u8]) -> Result<Option<Vec<u8>>, Malformed> {
    let mut pos = 0;
    let mut out: Option<Vec<u8>> = None;
    let mut copied = 0;
    while let Some(&first) = block.get(pos) {
        if first & 0x80 != 0 {
            // Indexed header field (§6.1).
            read_int(block, &mut pos, 7)?;
            continue;
        }
        if first & 0xe0 == 0x20 {
            // Dynamic table size update (§6.3).
            read_int(block, &mut pos, 5)?;
            continue;
        }
        // Literal: with incremental indexing 01xxxxxx (§6.2.1), without indexing 0000xxxx
        // (§6.2.2), never indexed 0001xxxx (§6.2.3).
        let prefix = if first & 0x40 != 0 { 6 } else { 4 };
        let is_authority = match read_int(block, &mut pos, prefix)? {
            0 => {
                let (huffman, name) = read_string(block, &mut pos)?;
                // ":authority" takes at most 10 bytes, raw or Huffman-coded.
                name.len() <= AUTHORITY.len() && decode_string(huffman, name)? == AUTHORITY
            }
            index => index == 1,
        };
        let value_at = pos;
        let (huffman, value) = read_string(block, &mut pos)?;
        if !is_authority {
            continue;
        }
        let value = decode_string(huffman, value)?;
        if let Some(host) = strip_scheme(&value) {
            let out = out.get_or_insert_with(|| Vec::with_capacity(block.len() + 8));
            out.extend_from_slice(&block[copied..value_at]);
            write_int(out, 0x00, 7, host.len());
            out.extend_from_slice(host);
            copied = pos;
        }
    }
    Ok(out.map(|mut out| {
        out.extend_from_slice(&block[copied..]);
        out
    }))
}

/// `scheme://host:port/path` -> `host:port`; `None` if there is no scheme (or no host).
fn strip_scheme(value: &[u8]) -> Option<&[u8]> {
    let at = value.windows(3).position(|w| w == b"://")?;
    let rest = &value[at + 3..];
    let host = &rest[..rest.iter().position(|&b| matches!(b, b'/' | b'?' | b'#')).unwrap_or(rest.len())];
    (!host.is_empty()).then_some(host)
}

/// Reads a prefix-coded integer (§5.1) whose first byte uses the low `prefix_bits` bits.
fn read_int(block: &[u8], pos: &mut usize, prefix_bits: u8) -> Result<usize, Malformed> {
    let max = (1usize << prefix_bits) - 1;
    let first = *block.get(*pos).ok_or(Malformed)?;
    *pos += 1;
    let mut value = usize::from(first) & max;
    if value < max {
        return Ok(value);
    }
    // Anything above 2^28 cannot describe a header block of at most 16 KiB.
    for shift in [0, 7, 14, 21] {
        let byte = *block.get(*pos).ok_or(Malformed)?;
        *pos += 1;
        value += usize::from(byte & 0x7f) << shift;
        if byte & 0x80 == 0 {
            return Ok(value);
        }
    }
    Err(Malformed)
}

fn write_int(out: &mut Vec<u8>, high_bits: u8, prefix_bits: u8, mut value: usize) {
    let max = (1usize << prefix_bits) - 1;
    if value < max {
        out.push(high_bits | value as u8);
        return;
    }
    out.push(high_bits | max as u8);
    value -= max;
    while value >= 0x80 {
        out.push(0x80 | (value & 0x7f) as u8);
        value >>= 7;
    }
    out.push(value as u8);
}

/// Reads a string literal (§5.2): whether it is Huffman-coded, and its bytes.
fn read_string<'a>(block: &'a [u8], pos: &mut usize) -> Result<(bool, &'a [u8]), Malformed> {
    let huffman = block.get(*pos).ok_or(Malformed)? & 0x80 != 0;
    let len = read_int(block, pos, 7)?;
    let end = pos.checked_add(len).ok_or(Malformed)?;
    let bytes = block.get(*pos..end).ok_or(Malformed)?;
    *pos = end;
    Ok((huffman, bytes))
}

fn decode_string(huffman: bool, bytes: &[u8]) -> Result<std::borrow::Cow<'_, [u8]>, Malformed> {
    if !huffman {
        return Ok(bytes.into());
    }
    let mut out = Vec::with_capacity(bytes.len() * 8 / 5 + 1);
    httlib_huffman::decode(bytes, &mut out, httlib_huffman::DecoderSpeed::FourBits).map_err(|_| Malformed)?;
    Ok(out.into())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use std::time::Duration;

    use proptest::prelude::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;

    /// A reader that returns `data` in chunks of the given sizes (cycled), then end of stream.
    struct Chunked {
        data: Vec<u8>,
        pos: usize,
        sizes: Vec<usize>,
        next: usize,
    }

    impl AsyncRead for Chunked {
        fn poll_read(
            self: Pin<&mut Self>,
            _: &mut Context<'_>,
            buf: &mut ReadBuf<'_>,
        ) -> Poll<io::Result<()>> {
            let this = self.get_mut();
            let size = this.sizes[this.next % this.sizes.len()].max(1);
            this.next += 1;
            let n = size.min(buf.remaining()).min(this.data.len() - this.pos);
            buf.put_slice(&this.data[this.pos..this.pos + n]);
            this.pos += n;
            Poll::Ready(Ok(()))
        }
    }

    /// Everything `AuthorityFix` hands out for `data` read in chunks of `sizes`, with the
    /// caller's buffer `cap` bytes large.
    fn run(data: &[u8], sizes: &[usize], cap: usize) -> Vec<u8> {
        run_after(&[], data, sizes, cap)
    }

    /// Like [`run`], on a stream from which `received` was read before.
    fn run_after(received: &[u8], data: &[u8], sizes: &[usize], cap: usize) -> Vec<u8> {
        let inner = Chunked { data: data.to_vec(), pos: 0, sizes: sizes.to_vec(), next: 0 };
        let mut fix = AuthorityFix::with_received(inner, received);
        let waker = std::task::Waker::noop();
        let mut cx = Context::from_waker(waker);
        let mut out = Vec::new();
        let mut mem = vec![0u8; cap];
        loop {
            let mut buf = ReadBuf::new(&mut mem);
            match Pin::new(&mut fix).poll_read(&mut cx, &mut buf) {
                Poll::Ready(Ok(())) if buf.filled().is_empty() => return out,
                Poll::Ready(Ok(())) => out.extend_from_slice(buf.filled()),
                other => panic!("{other:?}"),
            }
        }
    }

    fn whole(data: &[u8]) -> Vec<u8> {
        run(data, &[usize::MAX], 1 << 16)
    }

    fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
        let len = payload.len();
        let mut f = vec![(len >> 16) as u8, (len >> 8) as u8, len as u8, kind, flags];
        f.extend_from_slice(&stream.to_be_bytes());
        f.extend_from_slice(payload);
        f
    }

    fn string(out: &mut Vec<u8>, s: &[u8], huffman: bool) {
        if huffman {
            let mut coded = Vec::new();
            httlib_huffman::encode(s, &mut coded).unwrap();
            write_int(out, 0x80, 7, coded.len());
            out.extend_from_slice(&coded);
        } else {
            write_int(out, 0, 7, s.len());
            out.extend_from_slice(s);
        }
    }

    /// A request header block like grpc-go's, `:authority` as a literal with incremental
    /// indexing (static name index 1).
    fn request_block(authority: &str, huffman: bool) -> Vec<u8> {
        let mut b = vec![0x83, 0x86]; // :method POST, :scheme http
        b.push(0x44); // :path, literal with incremental indexing
        string(&mut b, b"/etcdserverpb.KV/Range", huffman);
        b.push(0x41); // :authority
        string(&mut b, authority.as_bytes(), huffman);
        b.push(0x5f); // content-type
        string(&mut b, b"application/grpc", huffman);
        b.push(0x40); // te, literal name
        string(&mut b, b"te", huffman);
        string(&mut b, b"trailers", huffman);
        b
    }

    fn connection(frames: &[Vec<u8>]) -> Vec<u8> {
        let mut c = PREFACE.to_vec();
        c.extend(frame(0x4, 0, 0, &[0, 3, 0, 0, 0, 100])); // SETTINGS
        for f in frames {
            c.extend_from_slice(f);
        }
        c
    }

    /// The `:authority` values of the literals in the complete HEADERS frames of `conn`
    /// (frames or blocks that do not parse are skipped).
    fn authorities(conn: &[u8]) -> Vec<String> {
        fn block_authorities(block: &[u8], found: &mut Vec<String>) -> Option<()> {
            let mut p = 0;
            while let Some(&first) = block.get(p) {
                if first & 0x80 != 0 {
                    read_int(block, &mut p, 7).ok()?;
                    continue;
                }
                if first & 0xe0 == 0x20 {
                    read_int(block, &mut p, 5).ok()?;
                    continue;
                }
                let index = read_int(block, &mut p, if first & 0x40 != 0 { 6 } else { 4 }).ok()?;
                let is_authority = if index == 0 {
                    let (h, n) = read_string(block, &mut p).ok()?;
                    decode_string(h, n).ok()? == AUTHORITY
                } else {
                    index == 1
                };
                let (h, v) = read_string(block, &mut p).ok()?;
                if is_authority {
                    found.push(String::from_utf8_lossy(&decode_string(h, v).ok()?).into_owned());
                }
            }
            Some(())
        }
        let mut found = Vec::new();
        let mut pos = PREFACE.len();
        while let Some(h) = conn.get(pos..pos + FRAME_HEADER_LEN) {
            let len = usize::from(h[0]) << 16 | usize::from(h[1]) << 8 | usize::from(h[2]);
            let Some(payload) = conn.get(pos + FRAME_HEADER_LEN..pos + FRAME_HEADER_LEN + len) else { break };
            pos += FRAME_HEADER_LEN + len;
            if h[3] != TYPE_HEADERS || h[4] & FLAG_END_HEADERS == 0 {
                continue;
            }
            let mut start = 0;
            let mut end = payload.len();
            if h[4] & FLAG_PADDED != 0 {
                start = 1;
                let Some(e) = payload.first().and_then(|&pad| end.checked_sub(usize::from(pad))) else {
                    continue;
                };
                end = e;
            }
            if h[4] & FLAG_PRIORITY != 0 {
                start += 5;
            }
            if let Some(block) = payload.get(start..end) {
                let mut mine = Vec::new();
                if block_authorities(block, &mut mine).is_some() {
                    found.extend(mine);
                }
            }
        }
        found
    }

    #[test]
    fn preface_is_recognised_and_plain_frames_pass() {
        let mut s = Scanner::default();
        assert_eq!(s.step(&PREFACE[..5]), Step::Pass(5));
        assert_eq!(s.state, State::Preface(5));
        assert_eq!(s.step(&PREFACE[5..]), Step::Pass(PREFACE.len() - 5));
        assert_eq!(s.state, State::Frames { skip: 0 });
        let data = frame(0x0, 0x1, 1, b"hello");
        assert_eq!(s.step(&data[..4]), Step::Need(5));
        assert_eq!(s.step(&data), Step::Pass(9));
        assert_eq!(s.step(&data[9..]), Step::Pass(5));
        assert_eq!(s.state, State::Frames { skip: 0 });

        let conn = connection(&[frame(0x0, 0, 1, &[7; 100]), frame(0x8, 0, 0, &[0, 0, 1, 0])]);
        assert_eq!(whole(&conn), conn);
    }

    #[test]
    fn http1_passes_through() {
        let req = b"POST /v3/kv/range HTTP/1.1\r\nHost: http://127.0.0.1:2379\r\n\r\n{\"key\":\"Zm9v\"}";
        let mut s = Scanner::default();
        assert_eq!(s.step(req), Step::Pass(req.len()));
        assert_eq!(s.state, State::Passthrough);
        assert_eq!(whole(req), req);
        assert_eq!(run(req, &[1], 3), req);
        // A prefix of the preface that then differs.
        let almost = b"PRI * HTTP/1.1\r\n\r\n".to_vec();
        assert_eq!(run(&almost, &[1], 64), almost);
    }

    /// The bytes etcdctl 3.4 sent for `--endpoints=http://127.0.0.1:47391 endpoint status`
    /// (after our SETTINGS), as captured: the authority is Huffman-coded.
    const ETCDCTL_STATUS: &str = "\
        505249202a20485454502f322e300d0a0d0a534d0d0a0d0a000000040000000000000000040100000000000077010400\
        0000018386459760a924882d9dcb6571afa066a925a87510ac6e48d36a3f41909d29aee30c044eae05c0b86e34eb2f87\
        5f8b1d75d0620d263d4c4d65647a8b9acac8b4c7602bb2caecff40027465864d833505b11f40899acac8b24d494f6a7f\
        8613efb8fb42b7408d25062d495875996ee5b1063d5f03332e340000050001000000010000000000";

    fn unhex(s: &str) -> Vec<u8> {
        let s: String = s.chars().filter(|c| !c.is_whitespace()).collect();
        (0..s.len()).step_by(2).map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap()).collect()
    }

    #[test]
    fn rewrites_etcdctl_huffman_authority() {
        let conn = unhex(ETCDCTL_STATUS);
        assert_eq!(authorities(&conn), ["http://127.0.0.1:47391"]);
        let out = whole(&conn);
        assert_eq!(authorities(&out), ["127.0.0.1:47391"]);
        // Same representation (literal with incremental indexing, name index 1), raw value.
        let raw = [&[0x41, 15][..], b"127.0.0.1:47391"].concat();
        assert!(out.windows(raw.len()).any(|w| w == raw));
        // The HEADERS frame is the only difference; the DATA frame after it is intact.
        assert!(out.ends_with(&conn[conn.len() - 14..]));
        assert_eq!(out.len(), conn.len() - 16 + 15);
        for sizes in [&[1][..], &[2, 3, 7], &[50, 1, 1000]] {
            assert_eq!(run(&conn, sizes, 1 << 16), out, "{sizes:?}");
            assert_eq!(run(&conn, &[usize::MAX], sizes[0]), out, "{sizes:?}");
        }
    }

    #[test]
    fn rewrites_raw_and_huffman_authorities() {
        for huffman in [false, true] {
            let first = frame(0x1, 0x4, 1, &request_block("http://127.0.0.1:2379", huffman));
            // A later request refers to the indexed authority (62): nothing to change there.
            let second = frame(0x1, 0x5, 3, &[0x83, 0x86, 0xbe]);
            let conn = connection(&[first, frame(0x0, 0x1, 1, &[0, 0, 0, 0, 0]), second.clone()]);
            let out = whole(&conn);
            assert_eq!(authorities(&out), ["127.0.0.1:2379"], "huffman {huffman}");
            assert!(out.ends_with(&second));
            assert_eq!(run(&conn, &[1], 1), out);
            // Bytes read before (the client port reads the preface to tell HTTP/2 apart).
            for split in [1, PREFACE.len(), PREFACE.len() + 5, PREFACE.len() + 20] {
                assert_eq!(run_after(&conn[..split], &conn[split..], &[7], 5), out, "split {split}");
            }
            // Schemes other than http, a path, and a value that needs no change.
            for (from, to) in
                [("https://h:1/x", "h:1"), ("unix://sock", "sock"), ("h:1", "h:1"), ("http://", "http://")]
            {
                let conn = connection(&[frame(0x1, 0x4, 1, &request_block(from, huffman))]);
                assert_eq!(authorities(&whole(&conn)), [to]);
            }
        }
    }

    #[test]
    fn literal_name_and_other_representations() {
        for huffman in [false, true] {
            // Without indexing (0000) and never indexed (0001), literal name ":authority",
            // after a table size update; another header with a scheme is left alone.
            let mut b = vec![0x3f, 0xe1, 0x1f, 0x82]; // size update 4096, :method GET
            for kind in [0x00, 0x10] {
                b.push(kind);
                string(&mut b, b":authority", huffman);
                string(&mut b, b"http://a:1", huffman);
            }
            b.push(0x40);
            string(&mut b, b"x-url", huffman);
            string(&mut b, b"http://b:2", huffman);
            let conn = connection(&[frame(0x1, 0x4, 1, &b)]);
            let out = whole(&conn);
            assert_eq!(authorities(&out), ["a:1", "a:1"]);
            let mut expect_tail = Vec::new();
            string(&mut expect_tail, b"http://b:2", huffman);
            assert!(out.ends_with(&expect_tail));
        }
    }

    #[test]
    fn padded_and_priority_frames() {
        let block = request_block("http://127.0.0.1:2379", true);
        for flags in [0x4 | FLAG_PADDED, 0x4 | FLAG_PRIORITY, 0x4 | FLAG_PADDED | FLAG_PRIORITY | 0x1] {
            let mut payload = Vec::new();
            if flags & FLAG_PADDED != 0 {
                payload.push(7);
            }
            if flags & FLAG_PRIORITY != 0 {
                payload.extend_from_slice(&[0x80, 0, 0, 0, 15]);
            }
            payload.extend_from_slice(&block);
            if flags & FLAG_PADDED != 0 {
                payload.extend_from_slice(&[0; 7]);
            }
            let conn = connection(&[frame(0x1, flags, 1, &payload), frame(0x0, 0x1, 1, b"x")]);
            let out = whole(&conn);
            assert_eq!(authorities(&out), ["127.0.0.1:2379"]);
            let at = PREFACE.len() + 15;
            assert_eq!(out[at + 4], flags & !FLAG_PADDED, "flags");
            assert_eq!(&out[at + 5..at + 9], &[0, 0, 0, 1], "stream id");
            if flags & FLAG_PRIORITY != 0 {
                assert_eq!(&out[at + 9..at + 14], &[0x80, 0, 0, 0, 15]);
            }
            assert!(out.ends_with(&frame(0x0, 0x1, 1, b"x")));
            assert_eq!(run(&conn, &[1], 1), out);
            assert_eq!(run(&conn, &[3, 100], 17), out);
        }
    }

    #[test]
    fn switches_to_passthrough_after_a_clean_first_request() {
        let clean = frame(0x1, 0x4, 1, &request_block("127.0.0.1:2379", true));
        let schemed = frame(0x1, 0x4, 3, &request_block("http://127.0.0.1:2379", true));
        let conn = connection(&[clean, schemed]);
        assert_eq!(whole(&conn), conn);

        // After a rewrite, scanning goes on: a new literal is rewritten too.
        let a = frame(0x1, 0x4, 1, &request_block("http://127.0.0.1:2379", false));
        let b = frame(0x1, 0x4, 3, &request_block("http://127.0.0.1:2380", false));
        let out = whole(&connection(&[a, b]));
        assert_eq!(authorities(&out), ["127.0.0.1:2379", "127.0.0.1:2380"]);
    }

    #[test]
    fn left_alone_continuation_oversized_and_malformed() {
        let block = request_block("http://127.0.0.1:2379", false);
        // Header block split over CONTINUATION.
        let (a, b) = block.split_at(10);
        let conn = connection(&[frame(0x1, 0x0, 1, a), frame(0x9, 0x4, 1, b)]);
        assert_eq!(whole(&conn), conn);
        // A rewrite that would not fit in 16 KiB (a Huffman value that grows when raw).
        let mut big = vec![0x41];
        let mut value = "http://".to_string();
        value.push_str(&"1".repeat(16_400));
        string(&mut big, value.as_bytes(), true);
        let conn = connection(&[frame(0x1, 0x4, 1, &big)]);
        assert!(conn.len() - PREFACE.len() < MAX_FRAME + 40);
        assert!(whole(&conn) == conn, "oversized rewrite must pass unchanged");
        // Frames beyond the maximum size are not held back.
        let conn = connection(&[frame(0x1, 0x4, 1, &vec![0x82; MAX_FRAME + 1])]);
        assert!(whole(&conn) == conn, "oversized frame must pass unchanged");
        // Bad padding, truncated HPACK, bad Huffman: passthrough.
        for payload in [
            vec![200, 0x82],
            vec![0x41, 0x0a, b'h'],
            vec![0x41, 0x84, 0xff, 0xff, 0xff, 0xff],
            vec![0x3f, 0xff, 0xff, 0xff, 0xff, 0xff],
        ] {
            let flags = if payload[0] == 200 { 0x4 | FLAG_PADDED } else { 0x4 };
            let conn = connection(&[frame(0x1, flags, 1, &payload), frame(0x1, 0x4, 3, &block)]);
            assert_eq!(whole(&conn), conn, "{payload:?}");
        }
        // End of stream in the middle of a HEADERS frame.
        let conn = connection(&[frame(0x1, 0x4, 1, &block)]);
        let cut = &conn[..conn.len() - 3];
        assert_eq!(whole(cut), cut);
        assert_eq!(run(cut, &[1], 1), cut);
    }

    #[test]
    fn integers_round_trip() {
        for prefix in [4, 5, 6, 7] {
            for v in [0, 1, 14, 15, 16, 30, 31, 62, 63, 64, 126, 127, 128, 255, 1337, 16_384, 1 << 27] {
                let mut b = Vec::new();
                write_int(&mut b, 0, prefix, v);
                let mut pos = 0;
                assert_eq!(read_int(&b, &mut pos, prefix), Ok(v));
                assert_eq!(pos, b.len());
            }
        }
        // RFC 7541 C.1.2: 1337 with a 5-bit prefix.
        let mut b = Vec::new();
        write_int(&mut b, 0, 5, 1337);
        assert_eq!(b, [31, 154, 10]);
    }

    /// Through the real h2 server: the first request carries the schemed authority as a
    /// literal with incremental indexing, the second refers to it by dynamic index 62.
    #[tokio::test]
    async fn h2_server_accepts_rewritten_requests() {
        async fn serve(wrap: bool) -> Vec<String> {
            let (mut client, server) = tokio::io::duplex(1 << 16);
            let mut bytes = PREFACE.to_vec();
            bytes.extend(frame(0x4, 0, 0, &[]));
            let mut first = vec![0x82, 0x86, 0x84, 0x41];
            string(&mut first, b"http://127.0.0.1:2379", true);
            bytes.extend(frame(0x1, 0x5, 1, &first));
            bytes.extend(frame(0x1, 0x5, 3, &[0x82, 0x86, 0x84, 0xbe]));
            client.write_all(&bytes).await.unwrap();
            let task = tokio::spawn(async move {
                let mut seen = Vec::new();
                let mut conn = if wrap {
                    h2::server::handshake(Box::new(AuthorityFix::new(server)) as Box<dyn Io>).await.unwrap()
                } else {
                    h2::server::handshake(Box::new(server) as Box<dyn Io>).await.unwrap()
                };
                while let Some(Ok((req, _respond))) = conn.accept().await {
                    seen.push(req.uri().to_string());
                    if seen.len() == 2 {
                        break;
                    }
                }
                seen
            });
            let seen = tokio::time::timeout(Duration::from_millis(500), task).await;
            drop(client);
            match seen {
                Ok(seen) => seen.unwrap(),
                Err(_) => Vec::new(),
            }
        }
        trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
        impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

        assert_eq!(serve(true).await, ["http://127.0.0.1:2379/", "http://127.0.0.1:2379/"]);
        // Control: without the shim h2 refuses both requests.
        assert_eq!(serve(false).await, Vec::<String>::new());
    }

    #[tokio::test]
    async fn writes_pass_through() {
        let (a, mut b) = tokio::io::duplex(64);
        let mut fix = AuthorityFix::new(a);
        fix.write_all(b"hello").await.unwrap();
        fix.flush().await.unwrap();
        let mut got = [0; 5];
        b.read_exact(&mut got).await.unwrap();
        assert_eq!(&got, b"hello");
    }

    fn arb_string() -> impl Strategy<Value = Vec<u8>> {
        prop_oneof![
            Just(b"http://127.0.0.1:2379".to_vec()),
            Just(b"127.0.0.1:2379".to_vec()),
            Just(b":authority".to_vec()),
            Just(b"https://h/p".to_vec()),
            proptest::collection::vec(any::<u8>(), 0..20),
        ]
    }

    /// A random but well-formed header block.
    fn arb_block() -> impl Strategy<Value = Vec<u8>> {
        let rep = prop_oneof![
            (1usize..70).prop_map(|i| (0u8, i, Vec::new(), Vec::new(), false)),
            (0usize..4, arb_string(), arb_string(), any::<bool>(), 1usize..3)
                .prop_map(|(kind, name, value, h, index)| (kind as u8 + 1, index, name, value, h)),
            (0usize..5000).prop_map(|s| (9u8, s, Vec::new(), Vec::new(), false)),
        ];
        proptest::collection::vec(rep, 0..8).prop_map(|reps| {
            let mut b = Vec::new();
            for (kind, index, name, value, h) in reps {
                match kind {
                    0 => write_int(&mut b, 0x80, 7, index),
                    9 => write_int(&mut b, 0x20, 5, index),
                    _ => {
                        let (high, prefix) =
                            [(0x40, 6), (0x00, 4), (0x10, 4), (0x40, 6)][usize::from(kind - 1)];
                        // Kind 4: literal name; otherwise name index 1 or 2.
                        if kind == 4 {
                            write_int(&mut b, high, prefix, 0);
                            string(&mut b, &name, h);
                        } else {
                            write_int(&mut b, high, prefix, index);
                        }
                        string(&mut b, &value, h);
                    }
                }
            }
            b
        })
    }

    fn arb_frame() -> impl Strategy<Value = Vec<u8>> {
        prop_oneof![
            (any::<u8>(), any::<u8>(), proptest::collection::vec(any::<u8>(), 0..40))
                .prop_map(|(kind, flags, p)| frame(kind, flags, 1, &p)),
            (arb_block(), any::<bool>(), 0u8..4, any::<bool>()).prop_map(|(block, prio, pad, end_stream)| {
                let mut flags = 0x4 | u8::from(end_stream);
                let mut p = Vec::new();
                if pad > 0 {
                    flags |= FLAG_PADDED;
                    p.push(pad);
                }
                if prio {
                    flags |= FLAG_PRIORITY;
                    p.extend_from_slice(&[0, 0, 0, 0, 1]);
                }
                p.extend_from_slice(&block);
                p.extend(std::iter::repeat_n(0, usize::from(pad)));
                frame(TYPE_HEADERS, flags, 1, &p)
            }),
        ]
    }

    proptest! {
        #[test]
        fn garbage_never_panics_and_chunking_does_not_matter(
            preface in any::<bool>(),
            data in proptest::collection::vec(any::<u8>(), 0..600),
            sizes in proptest::collection::vec(1usize..40, 1..8),
            cap in 1usize..100,
        ) {
            let input = if preface { [PREFACE, &data].concat() } else { data.clone() };
            let out = whole(&input);
            prop_assert_eq!(run(&input, &sizes, cap), out.clone());
            if !preface && !data.starts_with(&PREFACE[..1]) {
                prop_assert_eq!(out, input);
            }
        }

        #[test]
        fn frames_are_rewritten_consistently(
            frames in proptest::collection::vec(arb_frame(), 0..6),
            sizes in proptest::collection::vec(1usize..64, 1..8),
            cap in 1usize..200,
        ) {
            let conn = connection(&frames);
            let out = whole(&conn);
            prop_assert_eq!(run(&conn, &sizes, cap), out.clone());
            // Idempotent: what we hand out has nothing left to rewrite.
            prop_assert_eq!(whole(&out), out.clone());
            if out != conn {
                for a in authorities(&out).iter().take(1) {
                    prop_assert!(!a.contains("://"), "{a}");
                }
            }
        }
    }
}
