//! The disk worker: writes the driver's persist jobs to a [`LogStore`] and a
//! [`SnapshotStore`], one sync per batch.
//!
//! Deterministic given its storage: no threads, no clock. The tokio shell runs it on a
//! thread of its own and batches whatever jobs queued up while it was writing (group
//! commit across Readies); a simulator can call [`DiskWorker::write`] directly over a
//! `FileLogStore` on `SimFs`.

use std::io::Read;

use raftkv_raft::{Entry, HardState, LogIndex, Message, SnapshotMeta, Term};
use raftkv_storage::{LogStore, SnapshotStore, StorageError};

use crate::plant::Planted;
use crate::{StagedSnapshot, codec};

/// What one `Ready` needs written, and what may happen once it is durable.
pub struct PersistJob {
    /// A snapshot the core installed, with its staged data.
    pub snapshot: Option<(SnapshotMeta, StagedSnapshot)>,
    /// Entries to append (replacing any conflicting suffix).
    pub entries: Vec<Entry>,
    /// A new hard state.
    pub hard_state: Option<HardState>,
    /// Messages that may leave only once this job is durable.
    pub after_persist: Vec<Message>,
    /// What to report to the core with `persisted` once durable.
    pub target: Option<(LogIndex, Term)>,
}

/// A job for the disk worker.
pub enum DiskJob {
    /// Write (and make durable) one `Ready`'s state.
    Persist(PersistJob),
    /// Drop the log up to this index (covered by a durable snapshot).
    Compact(u64),
}

/// Why the disk worker failed: the member must stop.
#[derive(Debug, thiserror::Error)]
pub enum DiskError {
    /// The log or snapshot store failed.
    #[error("storage failure: {0}")]
    Storage(#[from] StorageError),
    /// The staged snapshot could not be read.
    #[error("reading staged snapshot {index}: {source}")]
    Staged {
        /// The snapshot's index.
        index: u64,
        /// The cause.
        source: std::io::Error,
    },
}

/// Writes persist jobs; see the module docs.
pub struct DiskWorker<L> {
    log: L,
    snapshots: SnapshotStore,
    /// The term and vote on disk: only a change of them (or new entries) needs a sync.
    durable: HardState,
    planted: Planted,
}

impl<L: LogStore> DiskWorker<L> {
    /// A worker over an opened log and snapshot store.
    pub fn new(log: L, snapshots: SnapshotStore) -> DiskWorker<L> {
        let durable = codec::hard_state_from_storage(&log.hard_state());
        DiskWorker { log, snapshots, durable, planted: Planted::default() }
    }

    /// Plants a known bug (simulator only; see [`crate::DriverBug`]).
    #[cfg(feature = "planted-bugs")]
    pub fn plant_bug(&mut self, bug: Option<crate::DriverBug>) {
        self.planted.set(bug);
    }

    /// The log store.
    pub fn log(&self) -> &L {
        &self.log
    }

    /// Writes a batch of jobs and syncs once at the end if any of them needs it: entries, or
    /// a new term or vote. A hard state that only moves the commit index is recorded and
    /// reaches the disk with the next sync ([`raftkv_raft::Ready::must_sync`]); the
    /// messages of such a job wait only for the jobs before it, which this batch or an
    /// earlier one synced.
    ///
    /// On `Ok`, every job of the batch is durable: its `after_persist` messages may be sent
    /// and its `target` reported. Each installed snapshot is passed to `installed` as soon
    /// as it is durable, before anything after it is written: the applier must restore it
    /// before applying any later entry.
    pub fn write(
        &mut self,
        jobs: &mut [DiskJob],
        installed: &mut dyn FnMut(SnapshotMeta),
    ) -> Result<(), DiskError> {
        let mut dirty = false;
        let mut newest = None;
        let ignore_errors = self.planted.is(crate::DriverBug::AckDespiteFsyncError);
        for job in jobs.iter_mut() {
            match job {
                DiskJob::Persist(job) => {
                    if let Some((meta, mut data)) = job.snapshot.take() {
                        // Install: the snapshot file first (durable on finish), then reset the
                        // log to start after it, then let the applier restore from it. A
                        // crash in between leaves a log that conflicts with the snapshot at
                        // its index, which `Storage::open` discards.
                        let mut writer = self.snapshots.begin(codec::meta_to_storage(&meta))?;
                        let mut buf = vec![0u8; 1 << 20];
                        loop {
                            let n = data
                                .read(&mut buf)
                                .map_err(|source| DiskError::Staged { index: meta.index.0, source })?;
                            if n == 0 {
                                break;
                            }
                            writer.write(&buf[..n])?;
                        }
                        writer.finish()?;
                        // The core discarded its whole log: so must the disk, also entries
                        // after the snapshot's index (they conflict with it). Durable now.
                        if self.planted.is(crate::DriverBug::SnapshotKeepsTail) {
                            self.log.compact(meta.index.0)?;
                        } else {
                            self.log.reset(meta.index.0)?;
                        }
                        installed(meta);
                    }
                    if !job.entries.is_empty() {
                        let records: Vec<_> = job.entries.iter().map(codec::entry_to_record).collect();
                        ignore_if(self.log.append(&records), ignore_errors)?;
                        dirty = true;
                    }
                    if let Some(hs) = &job.hard_state {
                        ignore_if(self.log.save_hard_state(codec::hard_state_to_storage(hs)), ignore_errors)?;
                        dirty |= hs.needs_sync_after(&self.durable);
                        newest = Some(*hs);
                    }
                }
                DiskJob::Compact(up_to) => self.log.compact(*up_to)?,
            }
        }
        if dirty {
            ignore_if(self.log.sync(), ignore_errors)?;
            if let Some(hs) = newest {
                self.durable = hs;
            }
        }
        Ok(())
    }
}

/// A log write's result, or `Ok` when the planted `AckDespiteFsyncError` ignores failures.
fn ignore_if(result: Result<(), StorageError>, ignore: bool) -> Result<(), StorageError> {
    match result {
        Err(_) if ignore => Ok(()),
        other => other,
    }
}
