//! # raftkv-transport: the peer-to-peer transport of raftkv
//!
//! Carries [`raftkv_raft::Message`]s between the members of one cluster over TCP:
//!
//! - **one persistent connection per peer** for messages, written by one writer task that
//!   drains everything queued and writes it as **one batch** (one `write_all` of many
//!   frames, `TCP_NODELAY` on), **pipelined**: it never waits for replies, which travel as
//!   ordinary messages on the peer's own connection back;
//! - **bounded per-peer queues**: [`TransportHandle::send`] never blocks; when a queue is
//!   full or the peer is down, the message is dropped, counted, and the peer reported
//!   [`Report::Unreachable`] (Raft tolerates loss);
//! - **reconnect with exponential backoff** (50 ms doubling to 2 s by default, jittered);
//!   messages are not buffered while a peer is down;
//! - **snapshots on a separate connection**, streamed in CRC-checked chunks from a
//!   [`SnapshotSource`] into a [`SnapshotSink`], so a large transfer never delays appends;
//!   the driver gets [`Inbound::Snapshot`] only once the body is complete and verified,
//!   and the sender gets [`Report::Snapshot`];
//! - **a handshake on every connection**: cluster id, member ids, protocol version; a
//!   member of another cluster is refused with a reason both sides log;
//! - **untrusted input**: every frame is length-checked against a limit before buffering,
//!   every count against the bytes present before allocating; a malformed or oversized
//!   frame closes that connection with a `warn!` naming the peer address and the error,
//!   never a panic; queues, buffers and the number of inbound connections are bounded.
//!
//! ## Using it from the driver
//!
//! ```no_run
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! use raftkv_raft::NodeId;
//! use raftkv_transport::{Inbound, Report, Transport, TransportConfig};
//! use tokio::sync::mpsc;
//!
//! let mut config = TransportConfig::new(0xC1u64, NodeId(1), "127.0.0.1:2380".parse()?);
//! config.peers.insert(NodeId(2), "127.0.0.1:2381".into());
//! let (inbound_tx, mut inbound) = mpsc::channel(1024);
//! let (reports_tx, mut reports) = mpsc::channel(64);
//! let transport = Transport::start(config, inbound_tx, reports_tx).await?;
//! // for m in ready.messages { transport.send(m) } (InstallSnapshot: send_snapshot)
//! // inbound.recv() => Inbound::Message(m) => raft.step(m)
//! //                   Inbound::Snapshot { message, staged } => install staged, raft.step(message)
//! // reports.recv() => Report::Unreachable(id) => raft.report_unreachable(id)
//! //                   Report::Snapshot { to, ok } => raft.report_snapshot(to, ok)
//! # let _ = (&mut inbound, &mut reports, transport); Ok(()) }
//! ```
//!
//! ## Wire format (protocol version 1)
//!
//! All integers are big-endian. Every connection carries **frames**:
//!
//! | field | size | meaning |
//! | --- | --- | --- |
//! | length | u32 | bytes of type + payload; 1 ..= `max_frame_bytes` (default 17 MiB) |
//! | type | u8 | see below |
//! | payload | length − 1 | |
//!
//! Frame types: `0x01` Hello, `0x02` HelloOk, `0x03` HelloRefused, `0x10` Message,
//! `0x20` SnapshotBegin, `0x21` SnapshotChunk, `0x22` SnapshotEnd, `0x23` SnapshotAck,
//! `0x30` Request, `0x31` Response, `0x32` Members.
//! Before the handshake completes a frame may be at most 1 KiB.
//!
//! **Handshake.** The dialer sends Hello: `magic u32 = "RKVT" | protocol_version u16 = 1 |
//! cluster_id u64 | from u64 | to u64 | stream u8 (0 messages, 1 snapshot, 2 requests,
//! 3 members)`. The acceptor
//! checks magic, version, that the cluster id is its own, that `to` is itself and `from` a
//! known peer, and answers HelloOk `protocol_version u16 | cluster_id u64 | node_id u64`
//! (which the dialer checks in turn) or HelloRefused `code u8 | len u16 | reason UTF-8`
//! (1 bad magic, 2 version, 3 cluster id mismatch, 4 wrong member, 5 unknown peer) and
//! closes. The handshake is bounded by `handshake_timeout` on both sides.
//!
//! **Messages stream.** Only the dialer writes after the handshake: Message frames, each
//! payload one encoded message: `version u8 = 1 | from u64 | to u64 | term u64 | tag u8 |
//! body`, where `from`/`to` must match the handshake. Bodies (bool = u8 0/1, option = u8
//! 0/1 then the value, sets = `count u32` then strictly increasing u64 ids):
//!
//! | tag | body | fields |
//! | --- | --- | --- |
//! | 1 | RequestVote | pre_vote bool, last_log_index u64, last_log_term u64, transfer bool |
//! | 2 | RequestVoteResponse | pre_vote bool, granted bool |
//! | 3 | AppendEntries | prev_log_index u64, prev_log_term u64, leader_commit u64, count u32, entries (term u64, index u64, kind u8, len u32, data) |
//! | 4 | AppendEntriesResponse | index u64, reject option of (conflict_term option u64, conflict_index u64) |
//! | 5 | Heartbeat | commit u64, read_round u64 |
//! | 6 | HeartbeatResponse | read_round u64 |
//! | 7 | InstallSnapshot | index u64, term u64, voters set, voters_outgoing set, learners set |
//! | 8 | ReadIndexRequest | context u64 |
//! | 9 | ReadIndexResponse | context u64, index option u64 |
//! | 10 | Propose | count u32, then len u32 + data each |
//! | 11 | TimeoutNow | (none) |
//!
//! InstallSnapshot never travels on the messages stream (the receiver closes the
//! connection if it does); it starts a snapshot stream.
//!
//! **Snapshot stream.** One transfer per connection: the sender sends SnapshotBegin
//! `total_len u64 | encoded InstallSnapshot message`, then SnapshotChunk frames
//! `offset u64 | len u32 | data | crc32c(data) u32` with contiguous offsets, then
//! SnapshotEnd `total_len u64 | crc32c of the whole body u32`. The receiver checks each
//! offset, each chunk CRC, the total and the whole-body CRC, stages the body through its
//! sink, hands [`Inbound::Snapshot`] to the driver, and answers SnapshotAck
//! `ok u8 | len u16 | reason`, then closes. Any failure answers `ok = 0` with the reason.
//!
//! **Requests stream.** After the same handshake, the dialer sends Request frames `id u64 |
//! timeout_ms u32 | body`, one at a time; the acceptor hands each body to the registered
//! [`PeerService`] and answers Response `id u64 | code u8 | body` (0 ok, 1 failed, 2
//! overloaded, 3 timed out, 4 not ready). Bodies are opaque, bounded by `max_request_bytes`.
//!
//! **Members stream.** A Hello with cluster id 0, ids 0 and stream 3 is answered, by anyone,
//! with HelloOk and one Members frame `count u32 | (id u64 | name | url_count u16 | urls)`
//! (strings `len u16 | UTF-8`), then closed: member ids, names and peer URLs only.
//!
//! See `docs/transport.md` for the full tables and bounds.

pub mod codec;
mod config;
mod frame_io;
pub mod observe;
mod snapshot;
mod stats;
mod stream;
mod transport;

pub use codec::{
    DecodeError, EncodeError, PeerMember, ResponseCode, StreamKind, decode, decode_slice, encode,
};
pub use config::{FaultInjection, TransportConfig};
pub use frame_io::FrameError;
pub use snapshot::{
    BodyError, BodyReceiver, MemorySinkFactory, MemorySnapshotSource, ReaderSnapshotSource, SnapshotSink,
    SnapshotSinkFactory, SnapshotSource, StagedBody, StagedSnapshot,
};
pub use stats::TransportStats;
pub use stream::PeerTlsConfig;
pub use transport::{
    ClusterMembers, DialError, Inbound, PeerService, Report, RequestError, RequestFuture, SendError,
    SnapshotSendError, Transport, TransportError, TransportHandle, discover, discover_members,
};
