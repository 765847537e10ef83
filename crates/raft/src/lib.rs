//! # raftkv-raft: a pure, deterministic Raft core
//!
//! This crate is the consensus algorithm of raftkv and nothing else: no threads, no clock,
//! no files, no sockets, no global randomness, no hash-map iteration. Inputs are method
//! calls on [`Raft`]; outputs are data in a [`Ready`]. The same code runs in the server and in
//! the deterministic simulator, so one seed replays a failure exactly.
//!
//! Implemented: leader election with randomized timeouts in `[T, 2T)` ticks (Raft §5.2),
//! PreVote (thesis §9.6), CheckQuorum and the vote lease (thesis §6.2), log replication with
//! the consistency check and fast backtracking by term (§5.3), per-follower progress with
//! probe / replicate / snapshot states, pipelining bounded by `inflight_messages_max`,
//! batching (proposals made between two [`Raft::ready`] calls travel in one AppendEntries,
//! bounded by `append_bytes_max`), commitment of current-term entries only (§5.4.2) after a
//! no-op on election, ReadIndex with one heartbeat round per batch of reads (thesis §6.4),
//! snapshots and InstallSnapshot (§7), membership changes (thesis chapter 4) and leadership
//! transfer (thesis §3.10).
//!
//! ## Membership changes
//!
//! [`Raft::propose_conf_change`] appends a [`ConfChange`] (encoded compactly in an entry of
//! kind [`EntryKind::ConfigChange`]). A change of at most one voter is applied directly
//! (single-server change); a change of more voters enters joint consensus (C_old,new, where
//! every decision needs a majority of both voter sets) and the leader leaves it by itself,
//! with an empty change, once the joint entry commits (like etcd's ConfChangeV2 auto-leave).
//! The rules that make this safe:
//!
//! - a configuration is in force as soon as its entry is appended to a member's log (not
//!   when it commits), and reverts if the entry is truncated;
//! - one change at a time: a change is refused while another is uncommitted or a joint
//!   configuration is not yet left ([`ProposeError::ConfChangeInProgress`]);
//! - a new leader proposes no change before it has committed an entry of its own term
//!   ([`ProposeError::NoCommitInTerm`]; Ongaro's 2015 single-server change bug);
//! - learners ([`ConfChangeStep::AddLearner`]) receive the log and snapshots but never vote
//!   or count; [`ConfChangeStep::AddVoter`] of a learner promotes it;
//! - a leader that removes itself keeps leading until the change commits, then steps down;
//!   a member that is not a voter never campaigns;
//! - the configuration is recovered at restart from the snapshot's and the log's
//!   configuration entries ([`InitialState`]), and a snapshot records the configuration at
//!   its index.
//!
//! [`Raft::transfer_leader`] hands leadership to a voter: the leader stops accepting
//! proposals ([`ProposeError::TransferInProgress`]), brings the target up to date, sends it
//! `TimeoutNow` (accepted only from the leader of the receiver's term), and the target
//! campaigns at once with a flag that lets voters ignore their leader lease. The transfer
//! aborts after one election timeout.
//!
//! ## Driving the core
//!
//! ```text
//!  loop {
//!      inputs:  raft.tick()                 every tick interval
//!               raft.step(message)          for each message received
//!               raft.propose(data)          for each client command (leader only)
//!               raft.read_index(context)    for each linearizable read
//!      if raft.has_ready() {
//!          let rd = raft.ready();
//!          1. send rd.messages                       (may go before anything is durable)
//!          2. persist rd.snapshot, then rd.entries, then rd.hard_state; sync
//!          3. send rd.messages_after_persist         (only once step 2 is durable)
//!          4. raft.persisted(rd.persist_target())    if it is Some
//!          5. apply rd.committed_entries in order, then raft.applied(last index)
//!          6. serve rd.read_states once applied >= their index; fail rd.failed_reads
//!      }
//!  }
//! ```
//!
//! ## The ordering contract
//!
//! Raft's safety depends on what is durable before which message leaves a node. Field by
//! field of [`Ready`]:
//!
//! - `snapshot`: install (persist and restore the state machine from it) before persisting
//!   `entries` and before applying any `committed_entries` of this Ready; then call
//!   [`Raft::applied`] with its index.
//! - `entries`: append to stable storage before `hard_state` (a recovered commit index must
//!   never point past the recovered log). If the first entry's index is at or below the
//!   storage's last index, discard the storage's suffix from there first: that suffix
//!   conflicts with the leader and was never committed.
//! - `hard_state`: term, vote and commit. Persist after `entries`. A vote is granted only
//!   by a message in `messages_after_persist`, so the vote is durable before the grant leaves.
//!   Only a new term or vote must be synced: a change of `commit` alone may be written with
//!   the next sync or lost in a crash ([`Ready::must_sync`]); the commit index is volatile
//!   state in Raft, and a restarted node recovers it clamped to its durable log.
//! - `messages`: may be sent immediately, even before this Ready is persisted. Only the
//!   leader's AppendEntries, heartbeats and InstallSnapshot, and read-index traffic, go here:
//!   the leader writes its own log in parallel with replicating it (thesis §10.2.1) and counts
//!   itself towards a quorum only after [`Raft::persisted`].
//! - `messages_after_persist`: vote requests, vote grants and refusals, append
//!   acknowledgements. Send only after `snapshot`, `entries` and `hard_state` of this Ready and
//!   of every earlier Ready are durable. When a Ready has nothing to persist
//!   ([`Ready::must_persist`] is false) they may be sent at once.
//! - `committed_entries`: committed and durable locally, each handed out exactly once, in
//!   log order. Apply them in order; report progress with [`Raft::applied`]. Applying may
//!   happen on another thread, after later Readies were taken.
//! - `read_states`: a read with that context may be served once the state machine has
//!   applied `index`.
//!
//! Several Readies may be taken before the previous ones are persisted, provided they are
//! persisted in the order taken and each is acknowledged with [`Raft::persisted`]; an
//! acknowledgement for entries since replaced is ignored.
//!
//! ## Snapshots and log compaction
//!
//! The application snapshots its state machine at an applied index; [`CompactionPolicy`]
//! says when (entries since the last snapshot, retained log bytes) and what to compact (it
//! keeps a tail of entries by default, so slightly lagging followers are served from the log).
//! Then [`Raft::snapshot_taken`]`(index, compact_to)` records the snapshot (index, term and
//! cluster configuration, [`SnapshotMeta`]) and discards log entries up to `compact_to`.
//! A follower whose next index is at or below the leader's first log index gets an
//! `InstallSnapshot { meta }`: the driver streams the snapshot bytes (in checksummed chunks,
//! flow-controlled, see `raftkv-transport`), steps the message into the receiving core only
//! once the whole body is verified, and reports the outcome with [`Raft::report_snapshot`].
//! The follower keeps a matching log suffix that follows the snapshot (§7), ignores a
//! snapshot at or below its commit index, and never moves its applied or commit index back.
//!
//! ## Proposals and their outcome
//!
//! [`Raft::propose`] returns `(term, index)`. The proposal committed if and only if the
//! entry applied at `index` has `term`; if another term's entry is applied there, the
//! proposal was lost to a leader change and may be retried. A node that stops leading
//! ([`Ready::soft_state`]) can no longer tell, until it applies that index.
//!
//! ## Example
//!
//! A single-node cluster driven with an in-memory "disk":
//!
//! ```
//! use bytes::Bytes;
//! use raftkv_raft::{ClusterConfig, Config, InitialState, NodeId, Raft};
//!
//! let config = Config::new(NodeId(1));
//! let initial = InitialState { config: ClusterConfig::new([NodeId(1)]), ..Default::default() };
//! let mut raft = Raft::new(config, initial).unwrap();
//! let mut disk = Vec::new();
//! let mut applied = Vec::new();
//! raft.campaign();
//! let mut proposed = None;
//! for _ in 0..10 {
//!     if raft.is_leader() && proposed.is_none() {
//!         proposed = Some(raft.propose(Bytes::from("x=1")).unwrap());
//!     }
//!     while raft.has_ready() {
//!         let rd = raft.ready();
//!         disk.extend(rd.entries.iter().cloned());           // "persist"
//!         if let Some((index, term)) = rd.persist_target() {
//!             raft.persisted(index, term);
//!         }
//!         for entry in &rd.committed_entries {
//!             applied.push(entry.clone());
//!             raft.applied(entry.index);
//!         }
//!     }
//! }
//! let (term, index) = proposed.unwrap();
//! assert!(applied.iter().any(|e| e.index == index && e.term == term && e.data == "x=1"));
//! ```

mod compaction;
mod confchange;
mod config;
mod log;
mod message;
mod node;
mod progress;
mod quorum;
mod rng;
mod types;

pub use compaction::CompactionPolicy;
pub use confchange::{CONF_CHANGE_STEPS_MAX, ConfChange, ConfChangeError, ConfChangeStep};
pub use config::{Config, ConfigError};
pub use message::{Message, MessageBody, RejectHint};
pub use node::{InitialState, PlantedBug, ProposeError, Raft, ReadError, Ready, StepError, TransferError};
pub use progress::ProgressState;
pub use quorum::VoteResult;
pub use types::{
    ClusterConfig, ConfigDecodeError, Entry, EntryKind, HardState, LogIndex, NodeId, ReadState, Role,
    SnapshotMeta, SoftState, Term,
};
