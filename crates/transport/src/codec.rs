//! The wire encoding of raftkv peer traffic: frames, the handshake, Raft messages and the
//! snapshot stream. Hand-written, versioned, big-endian, strict.
//!
//! Every decoder here treats its input as untrusted: each length and count is checked
//! against the bytes actually remaining (and so against the frame size limit) before
//! anything is allocated, unknown tags and codes are errors, booleans must be 0 or 1, sets
//! must be strictly increasing (so every value has exactly one encoding), and trailing bytes
//! are an error. No decoder panics on any input; the property tests in this module and in
//! `tests/` feed them random, truncated and bit-flipped bytes.
//!
//! See the crate documentation for the layout tables.

use bytes::{BufMut, Bytes, BytesMut};
use raftkv_raft::{
    ClusterConfig, ConfigDecodeError, Entry, EntryKind, LogIndex, Message, MessageBody, NodeId, RejectHint,
    SnapshotMeta, Term,
};

/// Version byte that starts every encoded [`Message`].
pub const MESSAGE_CODEC_VERSION: u8 = 1;

/// Bytes of the frame header: `u32` length (of type byte + payload) and the `u8` type.
pub const FRAME_HEADER_LEN: usize = 5;

/// Default limit on one frame (type byte + payload): 16 MiB of entries plus 1 MiB headroom.
pub const DEFAULT_MAX_FRAME_BYTES: u32 = 17 * 1024 * 1024;

/// Limit on frames before the handshake completes: an unauthenticated connection cannot
/// make the acceptor buffer more than this.
pub const HANDSHAKE_MAX_FRAME_BYTES: u32 = 1024;

/// `"RKVT"`: the first field of every [`Hello`].
pub const MAGIC: u32 = 0x524B_5654;

/// The peer protocol version this build speaks.
pub const PROTOCOL_VERSION: u16 = 1;

/// Longest refusal / ack reason text carried on the wire (longer text is truncated).
pub const MAX_REASON_BYTES: usize = 512;

/// The type byte of a frame.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum FrameType {
    /// Dialer → acceptor, first frame of every connection.
    Hello = 0x01,
    /// Acceptor → dialer: handshake accepted.
    HelloOk = 0x02,
    /// Acceptor → dialer: handshake refused; the acceptor closes next.
    HelloRefused = 0x03,
    /// One encoded [`Message`] (messages stream).
    Message = 0x10,
    /// Snapshot stream: the InstallSnapshot message and the body's total length.
    SnapshotBegin = 0x20,
    /// Snapshot stream: one chunk of the body.
    SnapshotChunk = 0x21,
    /// Snapshot stream: total length and CRC32C of the whole body.
    SnapshotEnd = 0x22,
    /// Snapshot stream, receiver → sender: the transfer was staged (or failed).
    SnapshotAck = 0x23,
    /// Requests stream, dialer → acceptor: one request for the acceptor's handler.
    Request = 0x30,
    /// Requests stream, acceptor → dialer: the answer to one request.
    Response = 0x31,
    /// Members stream, acceptor → dialer: the acceptor's member list, then close.
    Members = 0x32,
}

impl FrameType {
    /// The type for a byte; `None` for an unknown one (untrusted input).
    pub fn from_code(code: u8) -> Option<FrameType> {
        Some(match code {
            0x01 => FrameType::Hello,
            0x02 => FrameType::HelloOk,
            0x03 => FrameType::HelloRefused,
            0x10 => FrameType::Message,
            0x20 => FrameType::SnapshotBegin,
            0x21 => FrameType::SnapshotChunk,
            0x22 => FrameType::SnapshotEnd,
            0x23 => FrameType::SnapshotAck,
            0x30 => FrameType::Request,
            0x31 => FrameType::Response,
            0x32 => FrameType::Members,
            _ => return None,
        })
    }
}

/// Why bytes from a peer could not be decoded. Every variant is a protocol violation: the
/// connection that carried them is closed.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    #[error("truncated input: needed {needed} more bytes for {what}, {remaining} remaining")]
    Truncated { what: &'static str, needed: usize, remaining: usize },
    #[error("unknown message codec version {0}")]
    UnknownVersion(u8),
    #[error("unknown message body tag {0}")]
    UnknownBody(u8),
    #[error("unknown entry kind code {0}")]
    UnknownEntryKind(u8),
    #[error("invalid boolean byte {0}")]
    InvalidBool(u8),
    #[error("invalid option tag {0}")]
    InvalidOption(u8),
    #[error("{what}: count {count} cannot fit in the {remaining} remaining bytes")]
    CountTooLarge { what: &'static str, count: u64, remaining: usize },
    #[error(transparent)]
    Config(#[from] ConfigDecodeError),
    #[error("{0} trailing bytes after the message")]
    TrailingBytes(usize),
    #[error("unknown frame type 0x{0:02x}")]
    UnknownFrameType(u8),
    #[error("unexpected frame type {got:?}, expected {expected}")]
    UnexpectedFrame { got: FrameType, expected: &'static str },
    #[error("frame of {len} bytes exceeds the limit of {max}")]
    FrameTooLarge { len: u64, max: u32 },
    #[error("empty frame (no type byte)")]
    EmptyFrame,
    #[error("invalid stream kind {0}")]
    InvalidStreamKind(u8),
    #[error("invalid refusal code {0}")]
    InvalidRefusalCode(u8),
    #[error("reason text is not UTF-8")]
    InvalidReason,
    #[error("snapshot chunk length field {declared} does not match its {actual} data bytes")]
    ChunkLength { declared: u32, actual: usize },
    #[error("invalid response code {0}")]
    InvalidResponseCode(u8),
    #[error("{0} is not UTF-8")]
    InvalidText(&'static str),
}

/// Why a message could not be encoded.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum EncodeError {
    #[error("encoded {what} of {len} bytes exceeds the frame limit of {max}")]
    TooLarge { what: &'static str, len: u64, max: u32 },
    #[error("{what} has {count} elements, more than a u32 count can carry")]
    TooMany { what: &'static str, count: usize },
}

// ---------------------------------------------------------------------------------------
// Reader over untrusted bytes.

/// A cursor over a frame's payload. Byte strings come out as zero-copy slices of `buf`,
/// except log entry and proposal data, which are copied ([`Reader::owned_bytes`]).
struct Reader {
    buf: Bytes,
    pos: usize,
}

impl Reader {
    fn new(buf: Bytes) -> Reader {
        Reader { buf, pos: 0 }
    }

    fn remaining(&self) -> usize {
        self.buf.len() - self.pos
    }

    fn need(&self, n: usize, what: &'static str) -> Result<(), DecodeError> {
        if self.remaining() < n {
            Err(DecodeError::Truncated { what, needed: n, remaining: self.remaining() })
        } else {
            Ok(())
        }
    }

    fn array<const N: usize>(&mut self, what: &'static str) -> Result<[u8; N], DecodeError> {
        self.need(N, what)?;
        let mut out = [0u8; N];
        out.copy_from_slice(&self.buf[self.pos..self.pos + N]);
        self.pos += N;
        Ok(out)
    }

    fn u8(&mut self, what: &'static str) -> Result<u8, DecodeError> {
        Ok(self.array::<1>(what)?[0])
    }

    fn u16(&mut self, what: &'static str) -> Result<u16, DecodeError> {
        Ok(u16::from_be_bytes(self.array(what)?))
    }

    fn u32(&mut self, what: &'static str) -> Result<u32, DecodeError> {
        Ok(u32::from_be_bytes(self.array(what)?))
    }

    fn u64(&mut self, what: &'static str) -> Result<u64, DecodeError> {
        Ok(u64::from_be_bytes(self.array(what)?))
    }

    fn bool(&mut self, what: &'static str) -> Result<bool, DecodeError> {
        match self.u8(what)? {
            0 => Ok(false),
            1 => Ok(true),
            b => Err(DecodeError::InvalidBool(b)),
        }
    }

    fn opt_u64(&mut self, what: &'static str) -> Result<Option<u64>, DecodeError> {
        match self.u8(what)? {
            0 => Ok(None),
            1 => Ok(Some(self.u64(what)?)),
            b => Err(DecodeError::InvalidOption(b)),
        }
    }

    /// `n` bytes in an allocation of their own. For data that outlives the frame (log
    /// entries stay in memory until a snapshot covers them): a slice would keep the whole
    /// read buffer it came from alive, at least 8 KiB for every small frame.
    fn owned_bytes(&mut self, n: usize, what: &'static str) -> Result<Bytes, DecodeError> {
        self.need(n, what)?;
        let out = Bytes::copy_from_slice(&self.buf[self.pos..self.pos + n]);
        self.pos += n;
        Ok(out)
    }

    /// `n` bytes as a slice of the underlying buffer (no copy).
    fn bytes(&mut self, n: usize, what: &'static str) -> Result<Bytes, DecodeError> {
        self.need(n, what)?;
        let out = self.buf.slice(self.pos..self.pos + n);
        self.pos += n;
        Ok(out)
    }

    /// A `u32` element count, checked so that `count * min_element_bytes` fits in what
    /// remains: a corrupt count fails here instead of allocating.
    fn count(&mut self, what: &'static str, min_element_bytes: usize) -> Result<usize, DecodeError> {
        let count = u64::from(self.u32(what)?);
        let remaining = self.remaining();
        let fits = count.checked_mul(min_element_bytes as u64).is_some_and(|need| need <= remaining as u64);
        if !fits {
            return Err(DecodeError::CountTooLarge { what, count, remaining });
        }
        // `count <= remaining <= usize::MAX` here.
        Ok(count as usize)
    }

    fn finish(self) -> Result<(), DecodeError> {
        match self.remaining() {
            0 => Ok(()),
            n => Err(DecodeError::TrailingBytes(n)),
        }
    }
}

/// Initial capacity for a vector of `count` decoded elements: never more than a few
/// thousand up front, the rest grows only as elements actually decode.
fn capacity(count: usize) -> usize {
    count.min(4096)
}

// ---------------------------------------------------------------------------------------
// Messages.

mod tag {
    pub const REQUEST_VOTE: u8 = 1;
    pub const REQUEST_VOTE_RESPONSE: u8 = 2;
    pub const APPEND_ENTRIES: u8 = 3;
    pub const APPEND_ENTRIES_RESPONSE: u8 = 4;
    pub const HEARTBEAT: u8 = 5;
    pub const HEARTBEAT_RESPONSE: u8 = 6;
    pub const INSTALL_SNAPSHOT: u8 = 7;
    pub const READ_INDEX_REQUEST: u8 = 8;
    pub const READ_INDEX_RESPONSE: u8 = 9;
    pub const PROPOSE: u8 = 10;
    pub const TIMEOUT_NOW: u8 = 11;
}

/// Encoded size of one entry without its data: term, index, kind, data length.
const ENTRY_HEADER_BYTES: usize = 8 + 8 + 1 + 4;

fn count_u32(what: &'static str, count: usize) -> Result<u32, EncodeError> {
    u32::try_from(count).map_err(|_| EncodeError::TooMany { what, count })
}

fn put_opt_u64(buf: &mut BytesMut, v: Option<u64>) {
    match v {
        None => buf.put_u8(0),
        Some(v) => {
            buf.put_u8(1);
            buf.put_u64(v);
        }
    }
}

/// The exact number of bytes [`encode`] appends for `msg`.
pub fn encoded_len(msg: &Message) -> usize {
    let header = 1 + 8 + 8 + 8 + 1;
    let body = match &msg.body {
        MessageBody::RequestVote { .. } => 1 + 8 + 8 + 1,
        MessageBody::RequestVoteResponse { .. } => 2,
        MessageBody::AppendEntries { entries, .. } => {
            8 + 8 + 8 + 4 + entries.iter().map(|e| ENTRY_HEADER_BYTES + e.data.len()).sum::<usize>()
        }
        MessageBody::AppendEntriesResponse { reject, .. } => {
            8 + 1
                + match reject {
                    None => 0,
                    Some(h) => 1 + if h.conflict_term.is_some() { 8 } else { 0 } + 8,
                }
        }
        MessageBody::Heartbeat { .. } => 16,
        MessageBody::HeartbeatResponse { .. } => 8,
        MessageBody::InstallSnapshot { meta } => 8 + 8 + meta.config.encoded_len(),
        MessageBody::ReadIndexRequest { .. } => 8,
        MessageBody::ReadIndexResponse { index, .. } => 8 + 1 + if index.is_some() { 8 } else { 0 },
        MessageBody::Propose { entries } => 4 + entries.iter().map(|e| 4 + e.len()).sum::<usize>(),
        MessageBody::TimeoutNow => 0,
    };
    header + body
}

/// Appends the encoding of `msg` to `buf`.
///
/// Layout: `version u8 = 1 | from u64 | to u64 | term u64 | body tag u8 | body`, all
/// integers big-endian; see the crate documentation for each body.
pub fn encode(msg: &Message, buf: &mut BytesMut) -> Result<(), EncodeError> {
    buf.reserve(encoded_len(msg));
    buf.put_u8(MESSAGE_CODEC_VERSION);
    buf.put_u64(msg.from.get());
    buf.put_u64(msg.to.get());
    buf.put_u64(msg.term.get());
    match &msg.body {
        MessageBody::RequestVote { pre_vote, last_log_index, last_log_term, transfer } => {
            buf.put_u8(tag::REQUEST_VOTE);
            buf.put_u8(u8::from(*pre_vote));
            buf.put_u64(last_log_index.get());
            buf.put_u64(last_log_term.get());
            buf.put_u8(u8::from(*transfer));
        }
        MessageBody::RequestVoteResponse { pre_vote, granted } => {
            buf.put_u8(tag::REQUEST_VOTE_RESPONSE);
            buf.put_u8(u8::from(*pre_vote));
            buf.put_u8(u8::from(*granted));
        }
        MessageBody::AppendEntries { prev_log_index, prev_log_term, entries, leader_commit } => {
            buf.put_u8(tag::APPEND_ENTRIES);
            buf.put_u64(prev_log_index.get());
            buf.put_u64(prev_log_term.get());
            buf.put_u64(leader_commit.get());
            buf.put_u32(count_u32("entries", entries.len())?);
            for e in entries {
                buf.put_u64(e.term.get());
                buf.put_u64(e.index.get());
                buf.put_u8(e.kind.code());
                buf.put_u32(count_u32("entry data", e.data.len())?);
                buf.put_slice(&e.data);
            }
        }
        MessageBody::AppendEntriesResponse { index, reject } => {
            buf.put_u8(tag::APPEND_ENTRIES_RESPONSE);
            buf.put_u64(index.get());
            match reject {
                None => buf.put_u8(0),
                Some(hint) => {
                    buf.put_u8(1);
                    put_opt_u64(buf, hint.conflict_term.map(Term::get));
                    buf.put_u64(hint.conflict_index.get());
                }
            }
        }
        MessageBody::Heartbeat { commit, read_round } => {
            buf.put_u8(tag::HEARTBEAT);
            buf.put_u64(commit.get());
            buf.put_u64(*read_round);
        }
        MessageBody::HeartbeatResponse { read_round } => {
            buf.put_u8(tag::HEARTBEAT_RESPONSE);
            buf.put_u64(*read_round);
        }
        MessageBody::InstallSnapshot { meta } => {
            buf.put_u8(tag::INSTALL_SNAPSHOT);
            buf.put_u64(meta.index.get());
            buf.put_u64(meta.term.get());
            meta.config.encode(buf);
        }
        MessageBody::ReadIndexRequest { context } => {
            buf.put_u8(tag::READ_INDEX_REQUEST);
            buf.put_u64(*context);
        }
        MessageBody::ReadIndexResponse { context, index } => {
            buf.put_u8(tag::READ_INDEX_RESPONSE);
            buf.put_u64(*context);
            put_opt_u64(buf, index.map(LogIndex::get));
        }
        MessageBody::Propose { entries } => {
            buf.put_u8(tag::PROPOSE);
            buf.put_u32(count_u32("proposals", entries.len())?);
            for data in entries {
                buf.put_u32(count_u32("proposal data", data.len())?);
                buf.put_slice(data);
            }
        }
        MessageBody::TimeoutNow => buf.put_u8(tag::TIMEOUT_NOW),
    }
    Ok(())
}

fn get_config(r: &mut Reader) -> Result<ClusterConfig, DecodeError> {
    let mut rest = &r.buf[r.pos..];
    let before = rest.len();
    let config = ClusterConfig::decode(&mut rest)?;
    r.pos += before - rest.len();
    Ok(config)
}

fn decode_from(r: &mut Reader) -> Result<Message, DecodeError> {
    let version = r.u8("version")?;
    if version != MESSAGE_CODEC_VERSION {
        return Err(DecodeError::UnknownVersion(version));
    }
    let from = NodeId(r.u64("from")?);
    let to = NodeId(r.u64("to")?);
    let term = Term(r.u64("term")?);
    let body = match r.u8("body tag")? {
        tag::REQUEST_VOTE => MessageBody::RequestVote {
            pre_vote: r.bool("pre_vote")?,
            last_log_index: LogIndex(r.u64("last_log_index")?),
            last_log_term: Term(r.u64("last_log_term")?),
            transfer: r.bool("transfer")?,
        },
        tag::REQUEST_VOTE_RESPONSE => {
            MessageBody::RequestVoteResponse { pre_vote: r.bool("pre_vote")?, granted: r.bool("granted")? }
        }
        tag::APPEND_ENTRIES => {
            let prev_log_index = LogIndex(r.u64("prev_log_index")?);
            let prev_log_term = Term(r.u64("prev_log_term")?);
            let leader_commit = LogIndex(r.u64("leader_commit")?);
            let n = r.count("entries", ENTRY_HEADER_BYTES)?;
            let mut entries = Vec::with_capacity(capacity(n));
            for _ in 0..n {
                let term = Term(r.u64("entry term")?);
                let index = LogIndex(r.u64("entry index")?);
                let code = r.u8("entry kind")?;
                let kind = EntryKind::from_code(code).ok_or(DecodeError::UnknownEntryKind(code))?;
                let len = r.u32("entry data length")? as usize;
                let data = r.owned_bytes(len, "entry data")?;
                entries.push(Entry { term, index, kind, data });
            }
            MessageBody::AppendEntries { prev_log_index, prev_log_term, entries, leader_commit }
        }
        tag::APPEND_ENTRIES_RESPONSE => {
            let index = LogIndex(r.u64("index")?);
            let reject = match r.u8("reject tag")? {
                0 => None,
                1 => Some(RejectHint {
                    conflict_term: r.opt_u64("conflict_term")?.map(Term),
                    conflict_index: LogIndex(r.u64("conflict_index")?),
                }),
                b => return Err(DecodeError::InvalidOption(b)),
            };
            MessageBody::AppendEntriesResponse { index, reject }
        }
        tag::HEARTBEAT => {
            MessageBody::Heartbeat { commit: LogIndex(r.u64("commit")?), read_round: r.u64("read_round")? }
        }
        tag::HEARTBEAT_RESPONSE => MessageBody::HeartbeatResponse { read_round: r.u64("read_round")? },
        tag::INSTALL_SNAPSHOT => {
            let index = LogIndex(r.u64("snapshot index")?);
            let term = Term(r.u64("snapshot term")?);
            MessageBody::InstallSnapshot { meta: SnapshotMeta { index, term, config: get_config(r)? } }
        }
        tag::READ_INDEX_REQUEST => MessageBody::ReadIndexRequest { context: r.u64("context")? },
        tag::READ_INDEX_RESPONSE => MessageBody::ReadIndexResponse {
            context: r.u64("context")?,
            index: r.opt_u64("read index")?.map(LogIndex),
        },
        tag::PROPOSE => {
            let n = r.count("proposals", 4)?;
            let mut entries = Vec::with_capacity(capacity(n));
            for _ in 0..n {
                let len = r.u32("proposal length")? as usize;
                entries.push(r.owned_bytes(len, "proposal data")?);
            }
            MessageBody::Propose { entries }
        }
        tag::TIMEOUT_NOW => MessageBody::TimeoutNow,
        other => return Err(DecodeError::UnknownBody(other)),
    };
    Ok(Message { from, to, term, body })
}

/// Decodes one message that must span all of `buf`. Entry and proposal payloads are
/// copied out of it (they outlive the frame); other byte strings are slices of it.
pub fn decode(buf: Bytes) -> Result<Message, DecodeError> {
    let mut r = Reader::new(buf);
    let msg = decode_from(&mut r)?;
    r.finish()?;
    Ok(msg)
}

/// Decodes one message that must span all of `buf` (payloads are copied once, together).
pub fn decode_slice(buf: &[u8]) -> Result<Message, DecodeError> {
    decode(Bytes::copy_from_slice(buf))
}

// ---------------------------------------------------------------------------------------
// Frames.

/// Appends a frame of type `ty` whose payload `payload` writes, checking the limit.
pub fn encode_frame<F>(
    ty: FrameType,
    max_frame_bytes: u32,
    buf: &mut BytesMut,
    payload: F,
) -> Result<(), EncodeError>
where
    F: FnOnce(&mut BytesMut) -> Result<(), EncodeError>,
{
    let start = buf.len();
    buf.put_u32(0);
    buf.put_u8(ty as u8);
    let res = payload(buf);
    let len = (buf.len() - start - 4) as u64;
    if let Err(e) = res {
        buf.truncate(start);
        return Err(e);
    }
    if len > u64::from(max_frame_bytes) {
        buf.truncate(start);
        return Err(EncodeError::TooLarge { what: "frame", len, max: max_frame_bytes });
    }
    // len <= max_frame_bytes <= u32::MAX.
    buf[start..start + 4].copy_from_slice(&(len as u32).to_be_bytes());
    Ok(())
}

/// Appends a [`FrameType::Message`] frame carrying `msg`.
pub fn encode_message_frame(
    msg: &Message,
    max_frame_bytes: u32,
    buf: &mut BytesMut,
) -> Result<(), EncodeError> {
    encode_frame(FrameType::Message, max_frame_bytes, buf, |b| encode(msg, b))
}

/// Looks at the start of `buf` for a complete frame header.
///
/// Returns `Ok(None)` when fewer than 4 bytes are buffered, else the total frame size
/// (header included) after checking the declared length against `max_frame_bytes`.
pub fn peek_frame_len(buf: &[u8], max_frame_bytes: u32) -> Result<Option<usize>, DecodeError> {
    let Some(head) = buf.get(..4) else { return Ok(None) };
    let mut len_bytes = [0u8; 4];
    len_bytes.copy_from_slice(head);
    let len = u32::from_be_bytes(len_bytes);
    if len == 0 {
        return Err(DecodeError::EmptyFrame);
    }
    if len > max_frame_bytes {
        return Err(DecodeError::FrameTooLarge { len: u64::from(len), max: max_frame_bytes });
    }
    Ok(Some(4 + len as usize))
}

/// Splits one complete frame off the front of `buf`, if there is one: its type and payload.
pub fn split_frame(
    buf: &mut BytesMut,
    max_frame_bytes: u32,
) -> Result<Option<(FrameType, Bytes)>, DecodeError> {
    let Some(total) = peek_frame_len(buf, max_frame_bytes)? else { return Ok(None) };
    if buf.len() < total {
        return Ok(None);
    }
    let code = buf[4];
    let ty = FrameType::from_code(code).ok_or(DecodeError::UnknownFrameType(code))?;
    let mut frame = buf.split_to(total);
    let _header = frame.split_to(FRAME_HEADER_LEN);
    Ok(Some((ty, frame.freeze())))
}

// ---------------------------------------------------------------------------------------
// Handshake.

/// Which stream a connection carries.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum StreamKind {
    /// Raft messages, batched and pipelined.
    Messages,
    /// One snapshot transfer.
    Snapshot,
    /// Requests and their answers, one at a time, between two members.
    Requests,
    /// The acceptor's member list, for anyone who asks (a member about to join).
    Members,
}

impl StreamKind {
    fn code(self) -> u8 {
        match self {
            StreamKind::Messages => 0,
            StreamKind::Snapshot => 1,
            StreamKind::Requests => 2,
            StreamKind::Members => 3,
        }
    }

    fn from_code(code: u8) -> Result<StreamKind, DecodeError> {
        match code {
            0 => Ok(StreamKind::Messages),
            1 => Ok(StreamKind::Snapshot),
            2 => Ok(StreamKind::Requests),
            3 => Ok(StreamKind::Members),
            b => Err(DecodeError::InvalidStreamKind(b)),
        }
    }
}

/// The dialer's first frame.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Hello {
    pub magic: u32,
    pub protocol_version: u16,
    pub cluster_id: u64,
    pub from: NodeId,
    pub to: NodeId,
    pub stream: StreamKind,
}

impl Hello {
    /// Payload length: magic 4, version 2, cluster 8, from 8, to 8, stream 1.
    pub const LEN: usize = 31;

    pub fn encode(&self, buf: &mut BytesMut) {
        buf.reserve(FRAME_HEADER_LEN + Self::LEN);
        buf.put_u32(1 + Self::LEN as u32);
        buf.put_u8(FrameType::Hello as u8);
        buf.put_u32(self.magic);
        buf.put_u16(self.protocol_version);
        buf.put_u64(self.cluster_id);
        buf.put_u64(self.from.get());
        buf.put_u64(self.to.get());
        buf.put_u8(self.stream.code());
    }

    pub fn decode(payload: Bytes) -> Result<Hello, DecodeError> {
        let mut r = Reader::new(payload);
        let hello = Hello {
            magic: r.u32("magic")?,
            protocol_version: r.u16("protocol version")?,
            cluster_id: r.u64("cluster id")?,
            from: NodeId(r.u64("from")?),
            to: NodeId(r.u64("to")?),
            stream: StreamKind::from_code(r.u8("stream kind")?)?,
        };
        r.finish()?;
        Ok(hello)
    }
}

/// The acceptor's positive answer: its own identity, so the dialer checks it too.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HelloOk {
    pub protocol_version: u16,
    pub cluster_id: u64,
    pub node_id: NodeId,
}

impl HelloOk {
    pub const LEN: usize = 18;

    pub fn encode(&self, buf: &mut BytesMut) {
        buf.put_u32(1 + Self::LEN as u32);
        buf.put_u8(FrameType::HelloOk as u8);
        buf.put_u16(self.protocol_version);
        buf.put_u64(self.cluster_id);
        buf.put_u64(self.node_id.get());
    }

    pub fn decode(payload: Bytes) -> Result<HelloOk, DecodeError> {
        let mut r = Reader::new(payload);
        let ok = HelloOk {
            protocol_version: r.u16("protocol version")?,
            cluster_id: r.u64("cluster id")?,
            node_id: NodeId(r.u64("node id")?),
        };
        r.finish()?;
        Ok(ok)
    }
}

/// Why an acceptor refused a connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum RefusalCode {
    BadMagic = 1,
    UnsupportedVersion = 2,
    ClusterIdMismatch = 3,
    WrongMember = 4,
    UnknownPeer = 5,
    Overloaded = 6,
    /// The dialer was removed from the cluster's configuration: it must not come back.
    Removed = 7,
}

impl RefusalCode {
    fn from_code(code: u8) -> Result<RefusalCode, DecodeError> {
        Ok(match code {
            1 => RefusalCode::BadMagic,
            2 => RefusalCode::UnsupportedVersion,
            3 => RefusalCode::ClusterIdMismatch,
            4 => RefusalCode::WrongMember,
            5 => RefusalCode::UnknownPeer,
            6 => RefusalCode::Overloaded,
            7 => RefusalCode::Removed,
            b => return Err(DecodeError::InvalidRefusalCode(b)),
        })
    }
}

/// The acceptor's negative answer, sent just before it closes the connection.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HelloRefused {
    pub code: RefusalCode,
    /// Human-readable, e.g. "cluster id mismatch (ours 0x1, theirs 0x2)".
    pub reason: String,
}

/// Encodes a string of at most [`MAX_REASON_BYTES`] (cut at a char boundary) as `u16 len | bytes`.
fn put_reason(buf: &mut BytesMut, reason: &str) {
    let mut end = reason.len().min(MAX_REASON_BYTES);
    while !reason.is_char_boundary(end) {
        end -= 1;
    }
    buf.put_u16(end as u16);
    buf.put_slice(&reason.as_bytes()[..end]);
}

fn get_reason(r: &mut Reader) -> Result<String, DecodeError> {
    let len = r.u16("reason length")? as usize;
    let bytes = r.bytes(len, "reason")?;
    String::from_utf8(bytes.to_vec()).map_err(|_| DecodeError::InvalidReason)
}

impl HelloRefused {
    pub fn encode(&self, buf: &mut BytesMut) {
        let start = buf.len();
        buf.put_u32(0);
        buf.put_u8(FrameType::HelloRefused as u8);
        buf.put_u8(self.code as u8);
        put_reason(buf, &self.reason);
        let len = (buf.len() - start - 4) as u32;
        buf[start..start + 4].copy_from_slice(&len.to_be_bytes());
    }

    pub fn decode(payload: Bytes) -> Result<HelloRefused, DecodeError> {
        let mut r = Reader::new(payload);
        let code = RefusalCode::from_code(r.u8("refusal code")?)?;
        let reason = get_reason(&mut r)?;
        r.finish()?;
        Ok(HelloRefused { code, reason })
    }
}

// ---------------------------------------------------------------------------------------
// Snapshot stream.

/// First frame of a snapshot stream after the handshake.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SnapshotBegin {
    /// Bytes of the snapshot body that follow in chunks.
    pub total_len: u64,
    /// The InstallSnapshot message to hand to the receiving core once the body is staged.
    pub message: Message,
}

impl SnapshotBegin {
    pub fn encode(&self, max_frame_bytes: u32, buf: &mut BytesMut) -> Result<(), EncodeError> {
        encode_frame(FrameType::SnapshotBegin, max_frame_bytes, buf, |b| {
            b.put_u64(self.total_len);
            encode(&self.message, b)
        })
    }

    pub fn decode(payload: Bytes) -> Result<SnapshotBegin, DecodeError> {
        let mut r = Reader::new(payload);
        let total_len = r.u64("total length")?;
        let message = decode_from(&mut r)?;
        r.finish()?;
        Ok(SnapshotBegin { total_len, message })
    }
}

/// Bytes a chunk frame adds around its data: offset 8, len 4, crc 4.
pub const CHUNK_OVERHEAD: usize = 16;

/// One chunk: `offset u64 | len u32 | data | crc32c(data) u32`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SnapshotChunk {
    pub offset: u64,
    pub data: Bytes,
    pub crc32c: u32,
}

impl SnapshotChunk {
    pub fn encode(&self, max_frame_bytes: u32, buf: &mut BytesMut) -> Result<(), EncodeError> {
        encode_frame(FrameType::SnapshotChunk, max_frame_bytes, buf, |b| {
            b.put_u64(self.offset);
            b.put_u32(count_u32("chunk", self.data.len())?);
            b.put_slice(&self.data);
            b.put_u32(self.crc32c);
            Ok(())
        })
    }

    /// Decodes a chunk. The CRC is carried, not checked: the receiver checks it.
    pub fn decode(payload: Bytes) -> Result<SnapshotChunk, DecodeError> {
        let mut r = Reader::new(payload);
        let offset = r.u64("chunk offset")?;
        let declared = r.u32("chunk length")?;
        let actual = r.remaining().saturating_sub(4);
        if declared as usize != actual {
            return Err(DecodeError::ChunkLength { declared, actual });
        }
        let data = r.bytes(actual, "chunk data")?;
        let crc32c = r.u32("chunk crc")?;
        r.finish()?;
        Ok(SnapshotChunk { offset, data, crc32c })
    }
}

/// Last frame from the sender: `total_len u64 | crc32c of the whole body u32`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SnapshotEnd {
    pub total_len: u64,
    pub crc32c: u32,
}

impl SnapshotEnd {
    pub const LEN: usize = 12;

    pub fn encode(&self, buf: &mut BytesMut) {
        buf.put_u32(1 + Self::LEN as u32);
        buf.put_u8(FrameType::SnapshotEnd as u8);
        buf.put_u64(self.total_len);
        buf.put_u32(self.crc32c);
    }

    pub fn decode(payload: Bytes) -> Result<SnapshotEnd, DecodeError> {
        let mut r = Reader::new(payload);
        let end = SnapshotEnd { total_len: r.u64("total length")?, crc32c: r.u32("body crc")? };
        r.finish()?;
        Ok(end)
    }
}

/// The receiver's verdict: `ok u8 | u16 len | reason`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SnapshotAck {
    pub ok: bool,
    pub reason: String,
}

impl SnapshotAck {
    pub fn encode(&self, buf: &mut BytesMut) {
        let start = buf.len();
        buf.put_u32(0);
        buf.put_u8(FrameType::SnapshotAck as u8);
        buf.put_u8(u8::from(self.ok));
        put_reason(buf, &self.reason);
        let len = (buf.len() - start - 4) as u32;
        buf[start..start + 4].copy_from_slice(&len.to_be_bytes());
    }

    pub fn decode(payload: Bytes) -> Result<SnapshotAck, DecodeError> {
        let mut r = Reader::new(payload);
        let ok = r.bool("ack")?;
        let reason = get_reason(&mut r)?;
        r.finish()?;
        Ok(SnapshotAck { ok, reason })
    }
}

// ---------------------------------------------------------------------------------------
// Requests stream.

/// Bytes a [`Request`] frame adds around its body: id 8, timeout 4.
pub const REQUEST_OVERHEAD: usize = 12;
/// Bytes a [`Response`] frame adds around its body: id 8, code 1.
pub const RESPONSE_OVERHEAD: usize = 9;

/// One request: `id u64 | timeout_ms u32 | body`. The body is the handler's business.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Request {
    /// Chosen by the dialer; the response carries it back.
    pub id: u64,
    /// How long the dialer waits for the answer: the acceptor gives up on it after this.
    pub timeout_ms: u32,
    pub body: Bytes,
}

impl Request {
    pub fn encode(&self, max_frame_bytes: u32, buf: &mut BytesMut) -> Result<(), EncodeError> {
        encode_frame(FrameType::Request, max_frame_bytes, buf, |b| {
            b.put_u64(self.id);
            b.put_u32(self.timeout_ms);
            b.put_slice(&self.body);
            Ok(())
        })
    }

    pub fn decode(payload: Bytes) -> Result<Request, DecodeError> {
        let mut r = Reader::new(payload);
        let id = r.u64("request id")?;
        let timeout_ms = r.u32("request timeout")?;
        let body = r.bytes(r.remaining(), "request body")?;
        r.finish()?;
        Ok(Request { id, timeout_ms, body })
    }
}

/// How the acceptor dealt with a request.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ResponseCode {
    /// The handler answered: the body is its answer.
    Ok = 0,
    /// The handler failed: the body is the reason (UTF-8).
    Failed = 1,
    /// Too many requests in progress at the acceptor: not handled, try again later.
    Overloaded = 2,
    /// The handler did not answer within the request's timeout.
    TimedOut = 3,
    /// The acceptor has no handler yet (it is starting): not handled.
    NotReady = 4,
}

impl ResponseCode {
    fn from_code(code: u8) -> Result<ResponseCode, DecodeError> {
        Ok(match code {
            0 => ResponseCode::Ok,
            1 => ResponseCode::Failed,
            2 => ResponseCode::Overloaded,
            3 => ResponseCode::TimedOut,
            4 => ResponseCode::NotReady,
            b => return Err(DecodeError::InvalidResponseCode(b)),
        })
    }
}

/// The answer to one request: `id u64 | code u8 | body`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Response {
    pub id: u64,
    pub code: ResponseCode,
    /// The handler's answer (code Ok), else a reason text.
    pub body: Bytes,
}

impl Response {
    pub fn encode(&self, max_frame_bytes: u32, buf: &mut BytesMut) -> Result<(), EncodeError> {
        encode_frame(FrameType::Response, max_frame_bytes, buf, |b| {
            b.put_u64(self.id);
            b.put_u8(self.code as u8);
            b.put_slice(&self.body);
            Ok(())
        })
    }

    pub fn decode(payload: Bytes) -> Result<Response, DecodeError> {
        let mut r = Reader::new(payload);
        let id = r.u64("response id")?;
        let code = ResponseCode::from_code(r.u8("response code")?)?;
        let body = r.bytes(r.remaining(), "response body")?;
        r.finish()?;
        Ok(Response { id, code, body })
    }
}

// ---------------------------------------------------------------------------------------
// Members stream.

/// One member as the members stream describes it: what etcd's peer `/members` endpoint
/// tells anyone (id, name, peer URLs, learner or not), nothing more.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PeerMember {
    pub id: NodeId,
    /// Empty for a member added but not started yet.
    pub name: String,
    pub peer_urls: Vec<String>,
    pub is_learner: bool,
}

/// Longest name or URL carried in a member list (longer ones are an encoding error).
pub const MAX_MEMBER_TEXT_BYTES: usize = 4096;
/// Most peer URLs per member in a member list.
pub const MAX_MEMBER_URLS: usize = 64;

fn put_text(buf: &mut BytesMut, what: &'static str, text: &str) -> Result<(), EncodeError> {
    if text.len() > MAX_MEMBER_TEXT_BYTES {
        return Err(EncodeError::TooLarge {
            what,
            len: text.len() as u64,
            max: MAX_MEMBER_TEXT_BYTES as u32,
        });
    }
    buf.put_u16(text.len() as u16);
    buf.put_slice(text.as_bytes());
    Ok(())
}

fn get_text(r: &mut Reader, what: &'static str) -> Result<String, DecodeError> {
    let len = r.u16(what)? as usize;
    let bytes = r.bytes(len, what)?;
    String::from_utf8(bytes.to_vec()).map_err(|_| DecodeError::InvalidText(what))
}

/// The acceptor's members: `count u32`, then per member `id u64 | name (u16 len, UTF-8) |
/// url_count u16 | urls (u16 len, UTF-8 each)`, then one byte per member in the same order
/// (1: learner, 0: voter). A list without them (from a member that predates them) reads as
/// all voters.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct MemberList {
    pub members: Vec<PeerMember>,
}

impl MemberList {
    pub fn encode(&self, max_frame_bytes: u32, buf: &mut BytesMut) -> Result<(), EncodeError> {
        encode_frame(FrameType::Members, max_frame_bytes, buf, |b| {
            b.put_u32(count_u32("members", self.members.len())?);
            for m in &self.members {
                b.put_u64(m.id.get());
                put_text(b, "member name", &m.name)?;
                if m.peer_urls.len() > MAX_MEMBER_URLS {
                    return Err(EncodeError::TooMany { what: "peer URLs", count: m.peer_urls.len() });
                }
                b.put_u16(m.peer_urls.len() as u16);
                for url in &m.peer_urls {
                    put_text(b, "peer URL", url)?;
                }
            }
            for m in &self.members {
                b.put_u8(u8::from(m.is_learner));
            }
            Ok(())
        })
    }

    pub fn decode(payload: Bytes) -> Result<MemberList, DecodeError> {
        let mut r = Reader::new(payload);
        // A member takes at least 12 bytes: id, an empty name, no URLs.
        let count = r.count("members", 12)?;
        let mut members = Vec::with_capacity(capacity(count));
        for _ in 0..count {
            let id = NodeId(r.u64("member id")?);
            let name = get_text(&mut r, "member name")?;
            let urls = r.u16("peer URL count")? as usize;
            if urls > MAX_MEMBER_URLS || urls * 2 > r.remaining() {
                return Err(DecodeError::CountTooLarge {
                    what: "peer URLs",
                    count: urls as u64,
                    remaining: r.remaining(),
                });
            }
            let mut peer_urls = Vec::with_capacity(urls);
            for _ in 0..urls {
                peer_urls.push(get_text(&mut r, "peer URL")?);
            }
            members.push(PeerMember { id, name, peer_urls, is_learner: false });
        }
        if r.remaining() > 0 {
            for m in &mut members {
                m.is_learner = r.bool("member learner flag")?;
            }
        }
        r.finish()?;
        Ok(MemberList { members })
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn sample() -> Message {
        Message {
            from: NodeId(1),
            to: NodeId(2),
            term: Term(7),
            body: MessageBody::AppendEntries {
                prev_log_index: LogIndex(10),
                prev_log_term: Term(6),
                entries: vec![
                    Entry { term: Term(7), index: LogIndex(11), kind: EntryKind::Noop, data: Bytes::new() },
                    Entry {
                        term: Term(7),
                        index: LogIndex(12),
                        kind: EntryKind::Normal,
                        data: Bytes::from("x=1"),
                    },
                ],
                leader_commit: LogIndex(10),
            },
        }
    }

    #[test]
    fn round_trip_and_exact_length() {
        let msg = sample();
        let mut buf = BytesMut::new();
        encode(&msg, &mut buf).unwrap();
        assert_eq!(buf.len(), encoded_len(&msg));
        assert_eq!(decode(buf.freeze()).unwrap(), msg);
    }

    /// Entries outlive their frame in the Raft log: their data must not pin the frame's
    /// buffer (a slice would keep all of it alive).
    #[test]
    fn entry_data_does_not_point_into_the_frame() {
        let mut buf = BytesMut::new();
        encode(&sample(), &mut buf).unwrap();
        let frozen = buf.freeze();
        let range = frozen.as_ptr() as usize..frozen.as_ptr() as usize + frozen.len();
        let MessageBody::AppendEntries { entries, .. } = decode(frozen.clone()).unwrap().body else {
            panic!()
        };
        assert!(!entries.is_empty());
        for e in &entries {
            assert!(!range.contains(&(e.data.as_ptr() as usize)), "entry {} points into the frame", e.index);
        }
    }

    #[test]
    fn huge_count_fails_without_allocating() {
        let mut buf = BytesMut::new();
        buf.put_u8(1);
        buf.put_u64(1);
        buf.put_u64(2);
        buf.put_u64(3);
        buf.put_u8(tag::APPEND_ENTRIES);
        buf.put_u64(0);
        buf.put_u64(0);
        buf.put_u64(0);
        buf.put_u32(u32::MAX);
        assert!(matches!(decode(buf.freeze()), Err(DecodeError::CountTooLarge { .. })));
    }

    #[test]
    fn frame_limits() {
        let mut buf = BytesMut::new();
        buf.put_u32(100);
        assert_eq!(split_frame(&mut buf, 99), Err(DecodeError::FrameTooLarge { len: 100, max: 99 }));
        let mut buf = BytesMut::from(&[0u8, 0, 0, 0][..]);
        assert_eq!(split_frame(&mut buf, 99), Err(DecodeError::EmptyFrame));
        let mut buf = BytesMut::new();
        encode_message_frame(&sample(), 1 << 20, &mut buf).unwrap();
        assert!(encode_message_frame(&sample(), 20, &mut buf).is_err());
        let (ty, payload) = split_frame(&mut buf, 1 << 20).unwrap().unwrap();
        assert_eq!(ty, FrameType::Message);
        assert_eq!(decode(payload).unwrap(), sample());
        assert!(buf.is_empty());
    }

    #[test]
    fn unsorted_set_rejected() {
        let mut buf = BytesMut::new();
        buf.put_u8(1);
        buf.put_u64(1);
        buf.put_u64(2);
        buf.put_u64(3);
        buf.put_u8(tag::INSTALL_SNAPSHOT);
        buf.put_u64(5);
        buf.put_u64(2);
        buf.put_u32(2);
        buf.put_u64(3);
        buf.put_u64(3);
        buf.put_u32(0);
        buf.put_u32(0);
        assert_eq!(decode(buf.freeze()), Err(DecodeError::Config(ConfigDecodeError::UnsortedSet)));
    }

    #[test]
    fn handshake_round_trips() {
        let hello = Hello {
            magic: MAGIC,
            protocol_version: PROTOCOL_VERSION,
            cluster_id: 0xabc,
            from: NodeId(1),
            to: NodeId(2),
            stream: StreamKind::Snapshot,
        };
        let mut buf = BytesMut::new();
        hello.encode(&mut buf);
        let refused = HelloRefused { code: RefusalCode::ClusterIdMismatch, reason: "é".repeat(400) };
        refused.encode(&mut buf);
        let (ty, p) = split_frame(&mut buf, HANDSHAKE_MAX_FRAME_BYTES).unwrap().unwrap();
        assert_eq!(ty, FrameType::Hello);
        assert_eq!(Hello::decode(p).unwrap(), hello);
        let (ty, p) = split_frame(&mut buf, HANDSHAKE_MAX_FRAME_BYTES).unwrap().unwrap();
        assert_eq!(ty, FrameType::HelloRefused);
        let got = HelloRefused::decode(p).unwrap();
        assert_eq!(got.code, RefusalCode::ClusterIdMismatch);
        assert_eq!(got.reason.len(), MAX_REASON_BYTES);
    }

    #[test]
    fn request_response_and_member_list_round_trip() {
        let mut buf = BytesMut::new();
        let req = Request { id: 9, timeout_ms: 1500, body: Bytes::from_static(b"ask") };
        req.encode(1 << 20, &mut buf).unwrap();
        let resp = Response { id: 9, code: ResponseCode::Overloaded, body: Bytes::new() };
        resp.encode(1 << 20, &mut buf).unwrap();
        let list = MemberList {
            members: vec![
                PeerMember {
                    id: NodeId(7),
                    name: "m1".into(),
                    peer_urls: vec!["https://a:2380".into()],
                    is_learner: false,
                },
                PeerMember { id: NodeId(8), name: String::new(), peer_urls: vec![], is_learner: true },
            ],
        };
        list.encode(1 << 20, &mut buf).unwrap();
        let (ty, p) = split_frame(&mut buf, 1 << 20).unwrap().unwrap();
        assert_eq!((ty, Request::decode(p).unwrap()), (FrameType::Request, req.clone()));
        let (ty, p) = split_frame(&mut buf, 1 << 20).unwrap().unwrap();
        assert_eq!((ty, Response::decode(p).unwrap()), (FrameType::Response, resp));
        let (ty, p) = split_frame(&mut buf, 1 << 20).unwrap().unwrap();
        assert_eq!((ty, MemberList::decode(p).unwrap()), (FrameType::Members, list));
        // Too large for the limit: nothing is appended.
        assert!(req.encode(10, &mut buf).is_err());
        assert!(buf.is_empty());
    }

    #[test]
    fn member_list_counts_are_checked_before_allocating() {
        let mut buf = BytesMut::new();
        buf.put_u32(u32::MAX);
        assert!(matches!(MemberList::decode(buf.freeze()), Err(DecodeError::CountTooLarge { .. })));
        let mut buf = BytesMut::new();
        buf.put_u32(1);
        buf.put_u64(1);
        buf.put_u16(0);
        buf.put_u16(u16::MAX);
        assert!(matches!(MemberList::decode(buf.freeze()), Err(DecodeError::CountTooLarge { .. })));
        let mut buf = BytesMut::new();
        buf.put_u64(1);
        buf.put_u8(9);
        assert_eq!(Response::decode(buf.freeze()), Err(DecodeError::InvalidResponseCode(9)));
    }

    #[test]
    fn member_list_learner_flags_are_optional_as_a_whole_and_strict() {
        let one = |flags: &[u8]| {
            let mut buf = BytesMut::new();
            buf.put_u32(2);
            for id in [1u64, 2] {
                buf.put_u64(id);
                buf.put_u16(0);
                buf.put_u16(0);
            }
            buf.put_slice(flags);
            MemberList::decode(buf.freeze())
        };
        let learners = |l: MemberList| l.members.iter().map(|m| m.is_learner).collect::<Vec<_>>();
        assert_eq!(learners(one(&[]).unwrap()), [false, false]);
        assert_eq!(learners(one(&[0, 1]).unwrap()), [false, true]);
        assert_eq!(one(&[0, 2]), Err(DecodeError::InvalidBool(2)));
        assert!(matches!(one(&[1]), Err(DecodeError::Truncated { .. })));
        assert_eq!(one(&[0, 1, 0]), Err(DecodeError::TrailingBytes(1)));
    }
}
