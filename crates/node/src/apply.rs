//! The applier: applies committed entries to the [`StateMachine`], decides when to take a
//! snapshot (paced by the log written since the last one) and restores installed snapshots.
//!
//! Deterministic: no threads, no clock. The tokio shell runs it on the apply thread (or
//! inline on the driver for small batches) and writes snapshots on a thread of its own; a
//! simulator calls it directly.

use std::io::{self, Write};

use raftkv_raft::{ClusterConfig, ConfChange, Entry, EntryKind, LogIndex, SnapshotMeta, Term};
use raftkv_storage::{SnapshotStore, SnapshotWriter, StorageError};

use crate::{StateMachine, Visit, codec};

/// A snapshot waits until the log applied since the previous one, times this, reaches the
/// previous snapshot's size: snapshot writing stays within this multiple of the log's.
const SNAPSHOT_PACE: u64 = 4;
/// ...but not beyond this many bytes of log applied since the last snapshot: the log is
/// held in memory until a snapshot covers it, so with a large state the pacing alone would
/// let it grow to a quarter of the state's size.
const LOG_BYTES_MAX: u64 = 128 << 20;
/// Bytes an entry costs in the log besides its data (framing, index, term).
const ENTRY_OVERHEAD: u64 = 32;

/// Why applying failed: the member must stop.
#[derive(Debug, thiserror::Error)]
pub enum ApplyError {
    /// The snapshot store failed.
    #[error("snapshot storage: {0}")]
    Storage(#[from] StorageError),
    /// The installed snapshot is not the newest on disk.
    #[error("expected snapshot {expected} on disk, found {found:?}")]
    SnapshotNotFound {
        /// The installed snapshot's index.
        expected: u64,
        /// The newest snapshot on disk, if any.
        found: Option<u64>,
    },
    /// The state machine refused the snapshot.
    #[error("cannot restore snapshot {index}: {source}")]
    Restore {
        /// The snapshot's index.
        index: u64,
        /// The state machine's reason.
        source: crate::StateMachineError,
    },
    /// Writing a snapshot failed.
    #[error("cannot write snapshot: {0}")]
    Write(#[from] io::Error),
}

/// Apply progress and the snapshot policy; see the module docs.
pub struct Applier {
    snapshot_count: u64,
    cluster: ClusterConfig,
    last: (LogIndex, Term),
    last_snapshot: LogIndex,
    /// Log bytes applied since the last snapshot started.
    bytes_since: u64,
    /// The size of the last snapshot written.
    last_snapshot_bytes: u64,
}

impl Applier {
    /// An applier whose state machine holds everything up to `snapshot` (or nothing), in a
    /// cluster of `cluster` (the core's after recovery); a snapshot is taken every
    /// `snapshot_count` entries (paced).
    pub fn new(snapshot: Option<&SnapshotMeta>, cluster: ClusterConfig, snapshot_count: u64) -> Applier {
        let last = snapshot.map_or((LogIndex(0), Term(0)), |s| (s.index, s.term));
        Applier {
            snapshot_count,
            cluster,
            last,
            last_snapshot: last.0,
            bytes_since: 0,
            last_snapshot_bytes: 0,
        }
    }

    /// The applier of a member recovered from its files (see [`crate::recover`]): its state
    /// machine holds everything up to `snapshot`, in the configuration recorded with it (or,
    /// with no snapshot, the initial voters of `config`). Not the core's configuration in
    /// force: that is the log's last configuration entry, which may lie past the commit index
    /// (and be truncated later); the applier reaches it by applying the entries up to it.
    pub fn recovered(snapshot: Option<&SnapshotMeta>, config: &crate::NodeConfig) -> Applier {
        let cluster =
            snapshot.map_or_else(|| ClusterConfig::new(config.voters.iter().copied()), |s| s.config.clone());
        Applier::new(snapshot, cluster, config.snapshot_count)
    }

    /// The last entry applied (or restored).
    pub fn last(&self) -> (LogIndex, Term) {
        self.last
    }

    /// Applies committed entries in order; the outcomes of client requests go to `done`.
    /// Returns the index applied.
    pub fn apply<S: StateMachine>(
        &mut self,
        sm: &mut S,
        entries: &[Entry],
        done: &mut Vec<(u64, S::Output)>,
    ) -> LogIndex {
        for e in entries {
            match e.kind {
                EntryKind::Normal => done.extend(sm.apply(e.index.0, &e.data)),
                EntryKind::ConfigChange => done.extend(self.apply_conf_change(sm, e)),
                EntryKind::Noop => {}
            }
            self.last = (e.index, e.term);
            self.bytes_since += e.data.len() as u64 + ENTRY_OVERHEAD;
        }
        self.last.0
    }

    /// A committed membership change: the configuration it results in becomes the one
    /// snapshots record, and the state machine sees it. The core validated the change when
    /// it was appended; an entry that does not decode (never written by raftkv) changes
    /// nothing.
    fn apply_conf_change<S: StateMachine>(&mut self, sm: &mut S, e: &Entry) -> Option<(u64, S::Output)> {
        let (change, config) = match ConfChange::decode_entry(&e.data) {
            Ok(decoded) => decoded,
            Err(err) => {
                tracing::error!(index = e.index.0, error = %err, "undecodable configuration change ignored");
                return None;
            }
        };
        let config = match config {
            Some(c) => c,
            None => change.apply(&self.cluster).unwrap_or_else(|_| self.cluster.clone()),
        };
        self.cluster = config;
        sm.apply_conf_change(e.index.0, &change, &self.cluster)
    }

    /// The configuration of everything applied so far.
    pub fn cluster(&self) -> &ClusterConfig {
        &self.cluster
    }

    /// Whether a snapshot is due (the caller also checks that none is being written).
    /// Paced: a snapshot rewrites the whole state, so besides `snapshot_count` entries,
    /// wait until the log written since the last one is a fair share of its size; with a
    /// large state, snapshots would otherwise cost many times the log's own writes.
    pub fn snapshot_due(&self) -> bool {
        let paced = self.bytes_since.saturating_mul(SNAPSHOT_PACE) >= self.last_snapshot_bytes;
        let counted = self.last.0.0 >= self.last_snapshot.0 + self.snapshot_count;
        (counted && paced) || self.bytes_since >= LOG_BYTES_MAX
    }

    /// A snapshot of everything applied so far starts (the caller pins the state machine
    /// now and writes it with [`write_snapshot`]). Returns its meta.
    pub fn begin_snapshot(&mut self) -> SnapshotMeta {
        self.last_snapshot = self.last.0;
        self.bytes_since = 0;
        SnapshotMeta { index: self.last.0, term: self.last.1, config: self.cluster.clone() }
    }

    /// A snapshot of `bytes` bytes was written (for the pacing).
    pub fn snapshot_written(&mut self, bytes: u64) {
        self.last_snapshot_bytes = bytes;
    }

    /// Replaces the state machine's state by the installed snapshot `meta`, which must be
    /// the newest one in `snapshots`.
    pub fn restore<S: StateMachine>(
        &mut self,
        sm: &mut S,
        snapshots: &SnapshotStore,
        meta: &SnapshotMeta,
    ) -> Result<(), ApplyError> {
        let found = snapshots.latest()?;
        let (found, mut reader) = match found {
            Some((found, reader)) if found.index == meta.index.0 => (found, reader),
            other => {
                return Err(ApplyError::SnapshotNotFound {
                    expected: meta.index.0,
                    found: other.map(|(m, _)| m.index),
                });
            }
        };
        let len = reader.remaining();
        sm.restore(&mut reader, len).map_err(|source| ApplyError::Restore { index: found.index, source })?;
        self.cluster = meta.config.clone();
        self.last = (meta.index, meta.term);
        self.last_snapshot = meta.index;
        self.bytes_since = 0;
        Ok(())
    }
}

struct SnapshotSink<'a> {
    writer: &'a mut SnapshotWriter,
    bytes: u64,
}

impl Write for SnapshotSink<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.writer.write(buf).map_err(io::Error::other)?;
        self.bytes += buf.len() as u64;
        Ok(buf.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// Writes the state pinned at `pin` as snapshot `meta` (durable on return); returns its
/// size in bytes. `visit` runs a closure on the live state machine (see
/// [`StateMachine::write_snapshot`]).
pub fn write_snapshot<S: StateMachine>(
    pin: &S::Pin,
    snapshots: &SnapshotStore,
    meta: &SnapshotMeta,
    visit: &mut Visit<'_, S>,
) -> Result<u64, ApplyError> {
    let mut writer = snapshots.begin(codec::meta_to_storage(meta))?;
    let mut sink = SnapshotSink { writer: &mut writer, bytes: 0 };
    S::write_snapshot(pin, &mut sink, visit)?;
    let bytes = sink.bytes;
    writer.finish()?;
    Ok(bytes)
}
