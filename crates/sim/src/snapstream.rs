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
//! The body is the sender's stored snapshot file's body (as `raftkv-node` sends it); the
//! receiver hands it, verified, to its driver as `Inbound::Snapshot`. This module holds the
//! frames and the two endpoints' state; the event handling lives in `sim.rs`.

use bytes::{Bytes, BytesMut};
use raftkv_raft::{Message, SnapshotMeta};
use raftkv_transport::BodyReceiver;
use raftkv_transport::codec::{DEFAULT_MAX_FRAME_BYTES, FrameType, split_frame};

/// Largest body a receiver accepts (bounded memory on the receiving side).
pub const MAX_BODY_BYTES: u64 = 1 << 20;

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
