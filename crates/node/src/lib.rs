//! The raftkv member runtime: runs the Raft core (`raftkv-raft`) against durable storage
//! (`raftkv-storage`), a peer network and a replicated [`StateMachine`] of your own.
//!
//! # Embedding
//!
//! Implement [`StateMachine`] for your state, open a [`raftkv_storage::Storage`] per member,
//! and start a [`Node`] with a [`Network`] and a [`PeerSource`] (TCP from
//! `raftkv-transport` in the server, or the in-process [`MemNetwork`] for tests and
//! examples). Requests go through the [`NodeHandle`]:
//!
//! ```no_run
//! # use raftkv_node::*;
//! # async fn demo<S: StateMachine>(node: &Node<S>) -> Result<(), NodeError> {
//! let handle = node.handle.clone();
//! let id = handle.next_request_id();
//! // The command must carry `id`, so that `StateMachine::apply` can return it.
//! let mut command = id.to_le_bytes().to_vec();
//! command.extend_from_slice(b"+1");
//! let _outcome = handle.propose(id, command.into(), std::time::Duration::from_secs(5)).await?;
//! handle.read_barrier(std::time::Duration::from_secs(5)).await?; // linearizable read point
//! let _state = handle.shared.sm.read(); // now read the state machine
//! # Ok(()) }
//! ```
//!
//! A complete three-member replicated counter in one process is
//! `examples/counter.rs` (`cargo run --release -p raftkv-node --example counter`).
//!
//! # Components
//!
//! The runtime is three deterministic components (no threads, no clock reads, no tokio;
//! time comes in as a `now: Duration` argument) and a shell that runs them:
//!
//! - [`Driver`] owns the `Raft`: ticks, steps peer traffic, batches proposals and reads
//!   (one read index per batch), tracks in-flight and parked proposals and staged
//!   snapshots, and turns each `Ready` into [`Action`]s: send now, disk job, apply job,
//!   send snapshot, read results, failed requests.
//! - [`DiskWorker`] writes [`DiskJob`]s to any [`raftkv_storage::LogStore`] and the
//!   [`raftkv_storage::SnapshotStore`] (whose files go through a
//!   [`raftkv_storage::FileSystem`]): snapshot install, append, hard state with the lazy
//!   sync rule, compaction, one sync per batch. After it returns, the batch is durable.
//! - [`Applier`] applies committed entries to the state machine, decides when to snapshot
//!   (every `snapshot_count` entries, paced by the log's size against the last
//!   snapshot's) and restores installed snapshots; [`write_snapshot`] writes one.
//! - [`Node`] (feature `tokio`, on by default) is the shell: a driver task that polls the
//!   network itself ([`PeerSource`]), a disk thread with group commit (every job queued
//!   while it writes goes into the next batch, one sync), an apply thread (small batches
//!   are applied inline on the driver when the apply thread is idle), and a snapshot
//!   thread.
//!
//! # Driving the components yourself (simulation)
//!
//! A simulator runs the same code step by step in virtual time:
//!
//! 1. open storage (e.g. `Storage::open` over `SimFs`) and call [`recover`] to restore the
//!    state machine and build the `Raft`;
//! 2. `Driver::new(raft, config, boot)`, `DiskWorker::new(storage.log, storage.snapshots)`,
//!    `Applier::recovered(..)`;
//! 3. feed events: [`Driver::tick`], [`Driver::inbound`], [`Driver::propose`],
//!    [`Driver::read`], then [`Driver::process_ready`] and [`Driver::housekeeping`], each
//!    pushing [`Action`]s into a `Vec`;
//! 4. carry the actions out when the simulation decides: `Send` to the simulated network;
//!    `Disk` jobs to [`DiskWorker::write`] (in order, in batches of any size), then deliver
//!    each job's `after_persist` messages and call [`Driver::persisted`] with its
//!    `target`; `Apply` to [`Applier::apply`] then [`Driver::applied`]; installed
//!    snapshots to [`Applier::restore`]; snapshots due ([`Applier::snapshot_due`]) through
//!    [`Applier::begin_snapshot`], [`write_snapshot`] and [`Driver::snapshot_taken`].
//!
//! A crash is dropping everything but the file system; a restart is step 1 again.

pub mod apply;
pub mod codec;
pub mod disk;
pub mod driver;
#[cfg(feature = "tokio")]
mod mem_net;
pub mod observe;
mod plant;
#[cfg(feature = "tokio")]
mod runtime;

use std::io::{self, Read, Write};
use std::time::Duration;

pub use raftkv_raft::{ClusterConfig, ConfChange, ConfChangeStep, NodeId, ProposeError, TransferError};
use raftkv_raft::{Config, InitialState, Message, Raft, SnapshotMeta};
use raftkv_storage::{LogOptions, NodeIds, RealFs, SnapshotStore, StorageError};
pub use raftkv_storage::{Recovered, Storage};

pub use apply::{Applier, ApplyError, write_snapshot};
pub use codec::CodecError;
pub use disk::{DiskError, DiskJob, DiskWorker, PersistJob};
pub use driver::{Action, Driver, DriverError, ReadWaiter};
#[cfg(feature = "tokio")]
pub use mem_net::MemNetwork;
pub use plant::DriverBug;
#[cfg(feature = "tokio")]
pub use runtime::{Node, NodeHandle, Shared};

/// The replicated state machine the runtime applies committed entries to.
pub trait StateMachine: Send + Sync + 'static {
    /// What a client request's application produces.
    type Output: Send + 'static;
    /// A point in the state's history that a snapshot in progress captures (for a small
    /// state, simply a copy of it).
    type Pin: Send + 'static;
    /// Applies one committed normal entry. Returns the client request id carried in the
    /// entry (if any) and the outcome, to complete the waiting request.
    fn apply(&mut self, index: u64, data: &[u8]) -> Option<(u64, Self::Output)>;
    /// Applies one committed membership change: `config` is the configuration it results
    /// in, `change.context` what the proposer attached. Returns the request id the context
    /// carries (if any) and the outcome, like [`StateMachine::apply`]. The default ignores it.
    fn apply_conf_change(
        &mut self,
        _index: u64,
        _change: &ConfChange,
        _config: &ClusterConfig,
    ) -> Option<(u64, Self::Output)> {
        None
    }
    /// Marks the current state for a snapshot that [`StateMachine::write_snapshot`] writes
    /// while entries go on being applied. Must be cheap: it runs on the apply path.
    fn pin(&mut self) -> Self::Pin;
    /// Writes the whole state as it was at `pin`. `visit` runs a closure on the live state
    /// under the state's read lock; call it for small pieces of work so applying is never
    /// held up for long.
    fn write_snapshot(pin: &Self::Pin, w: &mut dyn Write, visit: &mut Visit<'_, Self>) -> io::Result<()>;
    /// Ends a [`StateMachine::pin`].
    fn unpin(&mut self, _pin: Self::Pin) {}
    /// The snapshot written at `pin` is durable (files only it replaced may go).
    fn snapshot_durable(_pin: &Self::Pin) {}
    /// A stored snapshot (`len` bytes) as sent to a peer: self-contained. Returns the
    /// reader and its length.
    #[allow(clippy::type_complexity)]
    fn open_snapshot(
        &self,
        r: Box<dyn Read + Send>,
        len: u64,
    ) -> Result<(Box<dyn Read + Send>, u64), StateMachineError> {
        Ok((r, len))
    }
    /// Replaces the whole state by a stored or received snapshot of `len` bytes.
    fn restore(&mut self, r: &mut dyn Read, len: u64) -> Result<(), StateMachineError>;
}

/// Why a [`StateMachine`] refused a snapshot: any error type of the embedder's choice
/// (`String` and `&str` convert with `?` or `.into()`).
pub type StateMachineError = Box<dyn std::error::Error + Send + Sync>;

/// Runs a closure on the live state machine (under its read lock).
pub type Visit<'a, S> = dyn FnMut(&mut dyn FnMut(&S)) + 'a;

/// The peer network as the runtime sees it.
pub trait Network: Send + Sync + 'static {
    /// Sends a message; may drop it (Raft tolerates loss).
    fn send(&self, msg: Message);
    /// Streams a snapshot to `msg.to` on its own connection, then delivers `msg`.
    fn send_snapshot(&self, msg: Message, reader: Box<dyn Read + Send>, len: u64);
}

/// Where peer traffic comes from: polled by the driver task itself, so a message goes from
/// the connection's reader to the core without another task in between.
pub trait PeerSource: Send + 'static {
    /// Like `mpsc::Receiver::poll_recv`; `Ready(None)` when the network has shut down.
    fn poll_recv(&mut self, cx: &mut std::task::Context<'_>) -> std::task::Poll<Option<Inbound>>;
}

/// A snapshot received from a peer and staged (on disk or in memory), not yet installed.
pub type StagedSnapshot = Box<dyn Read + Send>;

/// What the network delivers to the driver.
pub enum Inbound {
    /// A peer message.
    Message(Message),
    /// An `InstallSnapshot` whose data has been received whole.
    Snapshot {
        /// The `InstallSnapshot` message.
        message: Message,
        /// The snapshot's bytes.
        data: StagedSnapshot,
    },
    /// A transfer to `to` ended.
    SnapshotReport {
        /// The receiver.
        to: NodeId,
        /// Whether it was delivered.
        ok: bool,
    },
    /// A peer could not be reached.
    Unreachable(NodeId),
}

/// A member's settings.
#[derive(Clone, Debug)]
pub struct NodeConfig {
    /// This member.
    pub id: NodeId,
    /// The initial voters (used when nothing is recovered).
    pub voters: Vec<NodeId>,
    /// The timer period.
    pub tick: Duration,
    /// Ticks between heartbeats.
    pub heartbeat_ticks: u32,
    /// Ticks of the election timeout.
    pub election_ticks: u32,
    /// Entries applied between snapshots.
    pub snapshot_count: u64,
    /// Entries kept in the log behind a snapshot, so slightly lagging followers catch up
    /// from the log.
    pub snapshot_keep_entries: u64,
    /// Bound on queued client requests; beyond it clients get "too many requests".
    pub request_queue: usize,
    /// Seed of the core's randomness (election timeouts).
    pub seed: u64,
}

impl NodeConfig {
    /// The core's settings for this member (what [`recover`] starts it with).
    pub fn raft_config(&self) -> Config {
        let mut raft_config = Config::new(self.id);
        raft_config.election_timeout_ticks = self.election_ticks;
        raft_config.heartbeat_interval_ticks = self.heartbeat_ticks;
        raft_config.seed = self.seed;
        raft_config.append_bytes_max = 4 << 20;
        raft_config
    }

    /// etcd's defaults (100 ms heartbeat, 1 s election timeout, ticking five times per
    /// heartbeat) for member `id` of `voters`.
    pub fn new(id: NodeId, voters: impl IntoIterator<Item = NodeId>) -> NodeConfig {
        NodeConfig {
            id,
            voters: voters.into_iter().collect(),
            tick: Duration::from_millis(20),
            heartbeat_ticks: 5,
            election_ticks: 50,
            snapshot_count: 10_000,
            snapshot_keep_entries: 5_000,
            request_queue: 16 * 1024,
            seed: id.0,
        }
    }
}

/// Why a request failed.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum NodeError {
    /// The request queue is full.
    #[error("too many requests")]
    TooManyRequests,
    /// No leader is known.
    #[error("no leader")]
    NoLeader,
    /// The request did not complete in time.
    #[error("request timed out")]
    Timeout,
    /// The member stopped.
    #[error("server stopped")]
    Stopped,
    /// The leader changed while the request was in flight: it may or may not take effect.
    #[error("leader changed")]
    LeaderChanged,
    /// The core refused a membership change (nothing changed).
    #[error("{0}")]
    ConfChange(ProposeError),
    /// A leadership transfer could not start.
    #[error("{0}")]
    Transfer(TransferError),
}

/// Observable state of the member.
#[derive(Clone, Copy, Debug, Default)]
pub struct Status {
    /// Current term.
    pub term: u64,
    /// Known leader (0: none).
    pub leader: u64,
    /// Whether this member leads.
    pub is_leader: bool,
    /// Commit index.
    pub commit: u64,
    /// Applied index.
    pub applied: u64,
    /// Last log index.
    pub last_index: u64,
    /// Index of the newest snapshot.
    pub snapshot_index: u64,
    /// Whether this member is a learner in the configuration in force.
    pub is_learner: bool,
    /// A leadership transfer in progress hands over to this member (0: none).
    pub lead_transferee: u64,
}

/// Why a member cannot start or had to stop.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Storage failed.
    #[error("storage: {0}")]
    Storage(#[from] raftkv_storage::StorageError),
    /// A stored record cannot be decoded.
    #[error("stored data: {0}")]
    Codec(#[from] CodecError),
    /// The snapshot recovered at open is gone or another.
    #[error("the snapshot directory changed during start-up")]
    SnapshotChanged,
    /// The state machine refused the stored snapshot.
    #[error("cannot restore snapshot {index}: {source}")]
    Restore {
        /// The snapshot's index.
        index: u64,
        /// The state machine's reason.
        source: StateMachineError,
    },
    /// The core refused the recovered state.
    #[error("cannot start the Raft core: {0}")]
    Core(String),
    /// A thread could not be started.
    #[error("cannot start a thread: {0}")]
    Thread(io::Error),
    /// The disk worker failed.
    #[error(transparent)]
    Disk(#[from] DiskError),
    /// The applier failed.
    #[error(transparent)]
    Apply(#[from] ApplyError),
    /// The driver failed.
    #[error(transparent)]
    Driver(#[from] DriverError),
    /// The driver task panicked or was cancelled.
    #[error("the driver task ended abnormally: {0}")]
    Task(String),
}

/// Restores `sm` from the snapshot recovered at open (if any) and builds the core from the
/// recovered state. Returns the core and the snapshot it starts from.
pub fn recover<S: StateMachine>(
    config: &NodeConfig,
    snapshots: &SnapshotStore,
    recovered: Recovered,
    sm: &mut S,
) -> Result<(Raft, Option<SnapshotMeta>), Error> {
    recover_with(config, config.raft_config(), snapshots, recovered, sm)
}

/// Like [`recover`], with the core's settings given whole (a simulator varies PreVote,
/// CheckQuorum, pipelining and batching per run).
pub fn recover_with<S: StateMachine>(
    config: &NodeConfig,
    raft_config: Config,
    snapshots: &SnapshotStore,
    recovered: Recovered,
    sm: &mut S,
) -> Result<(Raft, Option<SnapshotMeta>), Error> {
    let snapshot = match &recovered.snapshot {
        Some(meta) => {
            let (found, mut reader) = snapshots.latest()?.ok_or(Error::SnapshotChanged)?;
            if found.index != meta.index {
                return Err(Error::SnapshotChanged);
            }
            let len = reader.remaining();
            sm.restore(&mut reader, len).map_err(|source| Error::Restore { index: meta.index, source })?;
            Some(codec::meta_from_storage(meta)?)
        }
        None => None,
    };
    let entries = recovered.records.into_iter().map(codec::record_to_entry).collect::<Result<Vec<_>, _>>()?;
    let initial = InitialState {
        hard_state: codec::hard_state_from_storage(&recovered.hard_state),
        config: ClusterConfig::new(config.voters.iter().copied()),
        snapshot: snapshot.clone(),
        entries,
    };
    let raft = Raft::new(raft_config, initial).map_err(|e| Error::Core(e.to_string()))?;
    Ok((raft, snapshot))
}

/// A number that grows from one start of the process to the next: milliseconds since
/// 2020 times 256. Request ids and read contexts start from it, so none is reused after a
/// restart as long as fewer than 256 are issued per millisecond on average.
pub fn boot_stamp() -> u64 {
    const EPOCH_2020_MS: u128 = 1_577_836_800_000;
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis());
    (now.saturating_sub(EPOCH_2020_MS) as u64).saturating_mul(256)
}

/// Opens the storage of member `id` of cluster `cluster_id` in `dir` (real files, fsync on),
/// creating it if `dir` holds none yet; returns it with what it holds, for [`Node::start`].
pub fn open_storage(
    dir: &std::path::Path,
    cluster_id: u64,
    id: NodeId,
) -> Result<(Storage, Recovered), StorageError> {
    let fs = std::sync::Arc::new(RealFs);
    let ids = NodeIds { cluster_id, node_id: id.0 };
    match Storage::open(fs.clone(), dir, ids, LogOptions::default()) {
        Err(StorageError::NotInitialized { .. }) => {
            let storage = Storage::create(fs, dir, ids, LogOptions::default())?;
            Ok((storage, Recovered { first_index: 1, ..Recovered::default() }))
        }
        opened => opened,
    }
}
