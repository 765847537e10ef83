//! Transport configuration.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use raftkv_raft::NodeId;

use crate::codec::DEFAULT_MAX_FRAME_BYTES;
use crate::snapshot::{MemorySinkFactory, SnapshotSinkFactory};

/// Everything [`crate::Transport::start`] needs. Build with [`TransportConfig::new`] and
/// adjust the public fields.
#[derive(Clone)]
pub struct TransportConfig {
    /// Every connection is refused unless both ends agree on this.
    pub cluster_id: u64,
    /// This member's id.
    pub local_id: NodeId,
    /// Where to accept peer connections (port 0 picks one: see
    /// [`crate::TransportHandle::local_addr`]).
    pub listen_addr: SocketAddr,
    /// The other members and the address each listens on (`host:port`).
    pub peers: BTreeMap<NodeId, String>,
    /// Largest frame (type byte + payload) sent or accepted. The driver must keep one
    /// AppendEntries (its `append_bytes_max` plus per-entry overhead) below this.
    pub max_frame_bytes: u32,
    /// Messages queued per peer before [`crate::TransportHandle::send`] drops.
    pub per_peer_queue: usize,
    /// Approximate bytes ([`raftkv_raft::Message::size_bytes`]) queued per peer before
    /// `send` drops.
    pub per_peer_queue_bytes: u64,
    /// A writer stops adding messages to one batch (one `write`) past this many bytes.
    pub max_batch_bytes: usize,
    /// Bound on a TCP connect.
    pub connect_timeout: Duration,
    /// Bound on the handshake, on both sides: a silent or slow connection is closed.
    pub handshake_timeout: Duration,
    /// Bound on one batch write; a peer that stops reading is disconnected.
    pub write_timeout: Duration,
    /// First reconnect delay; doubles per failed attempt up to `backoff_max` (with jitter).
    pub backoff_min: Duration,
    pub backoff_max: Duration,
    /// Connections accepted at once (handshaking or established); more are closed at once.
    pub max_inbound_connections: usize,
    /// Body bytes per snapshot chunk frame.
    pub snapshot_chunk_bytes: usize,
    /// Largest snapshot body accepted from a peer.
    pub max_snapshot_bytes: u64,
    /// Bound on each read or write of a snapshot stream, and on waiting for its ack.
    pub snapshot_io_timeout: Duration,
    /// Where received snapshot bodies go.
    pub snapshot_sinks: Arc<dyn SnapshotSinkFactory>,
    /// Largest request body sent or accepted on a requests stream, and largest answer.
    pub max_request_bytes: u32,
    /// Requests this member may have waiting for answers at once; more fail at once
    /// ([`crate::RequestError::Busy`]).
    pub max_requests_in_flight: usize,
    /// Requests from peers handled at once; more are answered `Overloaded` unhandled.
    pub max_requests_served: usize,
    /// Longest a handler may take, whatever timeout a request asks for.
    pub max_request_timeout: Duration,
    /// An idle requests connection is closed after this (the dialer stops reusing it at half).
    pub request_idle_timeout: Duration,
    /// Idle requests connections kept per peer for reuse.
    pub idle_request_connections: usize,
    /// TLS on every peer connection (both ends must agree); `None`: plain TCP.
    pub tls: Option<crate::stream::PeerTlsConfig>,
    /// Test hooks; all off by default.
    pub faults: FaultInjection,
}

/// Deliberate faults, for tests only.
#[derive(Clone, Debug, Default)]
pub struct FaultInjection {
    /// Flip one bit in the data of this snapshot chunk (0-based) after its CRC is computed.
    pub corrupt_snapshot_chunk: Option<u64>,
}

impl TransportConfig {
    /// Defaults for everything but the identity and the listen address; peers start
    /// empty, and received snapshots are staged in memory (up to 1 GiB) until
    /// `snapshot_sinks` is replaced.
    pub fn new(cluster_id: u64, local_id: NodeId, listen_addr: SocketAddr) -> TransportConfig {
        TransportConfig {
            cluster_id,
            local_id,
            listen_addr,
            peers: BTreeMap::new(),
            max_frame_bytes: DEFAULT_MAX_FRAME_BYTES,
            per_peer_queue: 4096,
            per_peer_queue_bytes: 64 * 1024 * 1024,
            max_batch_bytes: 1024 * 1024,
            connect_timeout: Duration::from_secs(3),
            handshake_timeout: Duration::from_secs(5),
            write_timeout: Duration::from_secs(10),
            backoff_min: Duration::from_millis(50),
            backoff_max: Duration::from_secs(2),
            max_inbound_connections: 256,
            snapshot_chunk_bytes: 1024 * 1024,
            max_snapshot_bytes: 64 * 1024 * 1024 * 1024,
            snapshot_io_timeout: Duration::from_secs(30),
            snapshot_sinks: Arc::new(MemorySinkFactory::new(1024 * 1024 * 1024)),
            max_request_bytes: 4 * 1024 * 1024,
            max_requests_in_flight: 256,
            max_requests_served: 256,
            max_request_timeout: Duration::from_secs(60),
            request_idle_timeout: Duration::from_secs(30),
            idle_request_connections: 4,
            tls: None,
            faults: FaultInjection::default(),
        }
    }
}

impl std::fmt::Debug for TransportConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TransportConfig")
            .field("cluster_id", &format_args!("{:#x}", self.cluster_id))
            .field("local_id", &self.local_id)
            .field("listen_addr", &self.listen_addr)
            .field("peers", &self.peers)
            .field("max_frame_bytes", &self.max_frame_bytes)
            .field("per_peer_queue", &self.per_peer_queue)
            .finish_non_exhaustive()
    }
}
