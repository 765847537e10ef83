//! The simulated snapshot stream, on the transport's own wire format (`docs/transport.md`):
//! a transfer is `SnapshotBegin` (total length and the InstallSnapshot message),
//! `SnapshotChunk`s with offsets and a CRC32C each, and `SnapshotEnd` with the total length and
//! the whole body's CRC32C, then the receiver's `SnapshotAck`. Each of these is a frame encoded
//! and decoded by `raftkv_transport::codec`, and the receiver verifies the body with the
//! transport's `BodyReceiver`, so the simulator exercises the real framing and checks. Only
//! what TCP does for the real transport is modelled here: `Credit` (bytes received
//! contiguously: the window that bounds the bytes in flight) and dropping duplicate segments.
//! Every frame crosses the simulated network on its own, so it can be lost, duplicated,
//! reordered, corrupted (any bit of the encoded frame) or cut by a partition.
//!
//! This module holds the frames, the body encoding and the two endpoints' state; the event
//! handling lives in `sim.rs`.

use bytes::{BufMut, Bytes, BytesMut};
use raftkv_raft::{ClusterConfig, LogIndex, Message, NodeId, SnapshotMeta, Term};
use raftkv_transport::BodyReceiver;
use raftkv_transport::codec::{DEFAULT_MAX_FRAME_BYTES, FrameType, split_frame};

/// Largest body a receiver accepts (bounded memory on the receiving side).
pub const MAX_BODY_BYTES: u64 = 1 << 20;

const MAGIC: u32 = 0x524B_5353; // "RKSS"

/// The frame size limit the simulated members use (the transport's default).
pub const MAX_FRAME_BYTES: u32 = DEFAULT_MAX_FRAME_BYTES;

/// One frame of a snapshot transfer. `id` names the transfer (its connection; unique within
/// a run); `wire` is the frame as the transport encodes it.
#[derive(Clone, Debug)]
pub enum SnapFrame {
    Begin {
        id: u64,
        wire: Bytes,
    },
    Chunk {
        id: u64,
        wire: Bytes,
    },
    End {
        id: u64,
        wire: Bytes,
    },
    /// Receiver to sender: the first `next` bytes arrived intact (TCP's window).
    Credit {
        id: u64,
        next: u64,
    },
    /// Receiver to sender: the transfer was delivered to the core (`ok`) or rejected.
    Ack {
        id: u64,
        wire: Bytes,
    },
}

/// The payload of one whole frame of type `want`, as the transport's reader splits it;
/// `None` when the bytes are not exactly one such frame (a damaged stream).
pub fn unframe(wire: &Bytes, want: FrameType) -> Option<Bytes> {
    let mut buf = BytesMut::from(wire.as_ref());
    match split_frame(&mut buf, MAX_FRAME_BYTES) {
        Ok(Some((ty, payload))) if ty == want && buf.is_empty() => Some(payload),
        _ => None,
    }
}

impl SnapFrame {
    pub fn name(&self) -> &'static str {
        match self {
            SnapFrame::Begin { .. } => "SnapshotBegin",
            SnapFrame::Chunk { .. } => "SnapshotChunk",
            SnapFrame::End { .. } => "SnapshotEnd",
            SnapFrame::Credit { .. } => "SnapshotCredit",
            SnapFrame::Ack { .. } => "SnapshotAck",
        }
    }

    pub fn id(&self) -> u64 {
        match self {
            SnapFrame::Begin { id, .. }
            | SnapFrame::Chunk { id, .. }
            | SnapFrame::End { id, .. }
            | SnapFrame::Credit { id, .. }
            | SnapFrame::Ack { id, .. } => *id,
        }
    }

    /// Whether it travels from the snapshot's sender to its receiver.
    pub fn forward(&self) -> bool {
        matches!(self, SnapFrame::Begin { .. } | SnapFrame::Chunk { .. } | SnapFrame::End { .. })
    }
}

/// What a snapshot body holds: the metadata, the state machine and the log's chain hash at
/// the snapshot index, and filler standing in for the state machine's bulk.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Body {
    pub meta: SnapshotMeta,
    pub applied: u64,
    pub digest: u64,
    pub commands: u64,
    /// The state machine's registers.
    pub values: [u64; crate::sim::KEYS],
    pub chain: u64,
    pub filler: u32,
}

fn filler_byte(index: u64, i: u64) -> u8 {
    (crate::rng::mix64(index ^ (i / 8)) >> ((i % 8) * 8)) as u8
}

fn put_set(b: &mut BytesMut, set: &std::collections::BTreeSet<NodeId>) {
    b.put_u32(set.len() as u32);
    for id in set {
        b.put_u64(id.0);
    }
}

impl Body {
    pub fn encode(&self) -> Bytes {
        let mut b = BytesMut::with_capacity(128 + self.filler as usize);
        b.put_u32(MAGIC);
        b.put_u64(self.meta.index.0);
        b.put_u64(self.meta.term.0);
        put_set(&mut b, &self.meta.config.voters);
        put_set(&mut b, &self.meta.config.voters_outgoing);
        put_set(&mut b, &self.meta.config.learners);
        b.put_u64(self.applied);
        b.put_u64(self.digest);
        b.put_u64(self.commands);
        for v in self.values {
            b.put_u64(v);
        }
        b.put_u64(self.chain);
        b.put_u32(self.filler);
        for i in 0..u64::from(self.filler) {
            b.put_u8(filler_byte(self.meta.index.0, i));
        }
        b.freeze()
    }

    /// Decodes an untrusted body; every length is checked against the bytes present.
    pub fn decode(data: &[u8]) -> Result<Body, String> {
        let mut r = Reader { data, pos: 0 };
        if r.u32()? != MAGIC {
            return Err("bad magic".into());
        }
        let index = LogIndex(r.u64()?);
        let term = Term(r.u64()?);
        let config = ClusterConfig { voters: r.set()?, voters_outgoing: r.set()?, learners: r.set()? };
        let body = Body {
            meta: SnapshotMeta { index, term, config },
            applied: r.u64()?,
            digest: r.u64()?,
            commands: r.u64()?,
            values: {
                let mut values = [0; crate::sim::KEYS];
                for v in &mut values {
                    *v = r.u64()?;
                }
                values
            },
            chain: r.u64()?,
            filler: r.u32()?,
        };
        let rest = &data[r.pos..];
        if rest.len() as u64 != u64::from(body.filler) {
            return Err(format!("filler of {} bytes, {} present", body.filler, rest.len()));
        }
        if rest.iter().enumerate().any(|(i, b)| *b != filler_byte(index.0, i as u64)) {
            return Err("filler content differs".into());
        }
        Ok(body)
    }
}

struct Reader<'a> {
    data: &'a [u8],
    pos: usize,
}

impl Reader<'_> {
    fn take(&mut self, n: usize) -> Result<&[u8], String> {
        let end = self.pos.checked_add(n).filter(|e| *e <= self.data.len()).ok_or("body truncated")?;
        let s = &self.data[self.pos..end];
        self.pos = end;
        Ok(s)
    }
    fn u32(&mut self) -> Result<u32, String> {
        let mut w = [0u8; 4];
        w.copy_from_slice(self.take(4)?);
        Ok(u32::from_be_bytes(w))
    }
    fn u64(&mut self) -> Result<u64, String> {
        let mut w = [0u8; 8];
        w.copy_from_slice(self.take(8)?);
        Ok(u64::from_be_bytes(w))
    }
    fn set(&mut self) -> Result<std::collections::BTreeSet<NodeId>, String> {
        let n = self.u32()? as usize;
        if n.saturating_mul(8) > self.data.len() - self.pos {
            return Err("set count exceeds the body".into());
        }
        (0..n).map(|_| self.u64().map(NodeId)).collect()
    }
}

/// The sender's side of one transfer.
#[derive(Debug)]
pub struct Outgoing {
    pub id: u64,
    pub to: usize,
    pub meta: SnapshotMeta,
    pub msg: Message,
    pub body: Bytes,
    pub crc: u32,
    /// The next byte to send.
    pub next: u64,
    /// Bytes the receiver confirmed (flow control: `next - acked <= window`).
    pub acked: u64,
    pub end_sent: bool,
    /// `acked` at the last timer check: no progress for a whole timeout fails the transfer.
    pub progress_mark: u64,
    /// Delivery time of the last in-order frame: frames of one stream arrive in order unless
    /// a reordering fault hits.
    pub stream_at: u64,
}

/// The receiver's side of one transfer: at most one per sending peer.
#[derive(Debug)]
pub struct Incoming {
    pub id: u64,
    pub from: usize,
    pub msg: Message,
    /// The transport's checks of the body received so far.
    pub body: BodyReceiver,
    pub buf: Vec<u8>,
}

/// Why a receiver rejected a transfer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reject {
    StaleTerm,
    TooLarge,
    Gap,
    ChunkCrc,
    Truncated,
    BodyCrc,
    Undecodable,
}

impl Reject {
    pub fn reason(self) -> &'static str {
        match self {
            Reject::StaleTerm => "stale term",
            Reject::TooLarge => "body too large",
            Reject::Gap => "gap in chunk offsets",
            Reject::ChunkCrc => "chunk checksum mismatch",
            Reject::Truncated => "truncated body",
            Reject::BodyCrc => "body checksum mismatch",
            Reject::Undecodable => "undecodable body",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn body() -> Body {
        Body {
            meta: SnapshotMeta {
                index: LogIndex(42),
                term: Term(3),
                config: ClusterConfig::new([NodeId(1), NodeId(2), NodeId(3)]),
            },
            applied: 42,
            digest: 7,
            commands: 30,
            values: [7, 0, 9],
            chain: 99,
            filler: 300,
        }
    }

    #[test]
    fn body_round_trips() {
        let b = body();
        assert_eq!(Body::decode(&b.encode()), Ok(b));
    }

    #[test]
    fn truncated_or_flipped_body_is_rejected() {
        let bytes = body().encode();
        for cut in [0, 3, 20, bytes.len() - 1] {
            assert!(Body::decode(&bytes[..cut]).is_err(), "cut at {cut}");
        }
        let mut flipped = bytes.to_vec();
        let last = flipped.len() - 1;
        flipped[last] ^= 1;
        assert!(Body::decode(&flipped).is_err());
        assert_ne!(crc32c::crc32c(&flipped), crc32c::crc32c(&bytes));
    }
}
