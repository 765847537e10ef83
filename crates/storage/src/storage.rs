//! A node's whole durable state: log + hard state + snapshots.

use std::io;
use std::path::Path;
use std::sync::Arc;

use crate::error::{Result, StorageError};
use crate::fs::FileSystem;
use crate::log::FileLogStore;
use crate::snapshot::SnapshotStore;
use crate::{HardState, LogOptions, LogRecord, LogStore, NodeIds, SnapshotMeta};

/// Everything found on disk at start-up.
#[derive(Debug, Clone, Default)]
pub struct Recovered {
    /// Latest durable hard state (`commit` clamped to the last log index).
    pub hard_state: HardState,
    /// Meta of the newest complete snapshot, if any.
    pub snapshot: Option<SnapshotMeta>,
    /// First retained log index (after the snapshot, if any).
    pub first_index: u64,
    /// Last log index (>= the snapshot index).
    pub last_index: u64,
    /// Retained log records `first_index..=last_index`.
    pub records: Vec<LogRecord>,
}

/// The storage of one node: `<dir>/log` (segments, hard state) and
/// `<dir>/snap` (snapshots).
#[derive(Debug)]
pub struct Storage {
    /// The log store.
    pub log: FileLogStore,
    /// The snapshot store.
    pub snapshots: SnapshotStore,
}

fn is_empty_dir(fs: &dyn FileSystem, dir: &Path) -> Result<bool> {
    let sub = |name: &str| -> Result<bool> {
        let p = dir.join(name);
        match fs.list_dir(&p) {
            Ok(v) => Ok(v.is_empty()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(true),
            Err(e) => Err(StorageError::io("list directory", p, e)),
        }
    };
    Ok(sub("log")? && sub("snap")?)
}

impl Storage {
    /// Initialise storage for a brand-new member in `dir` (created if
    /// missing). Refuses a directory that already holds storage.
    pub fn create(fs: Arc<dyn FileSystem>, dir: &Path, ids: NodeIds, opts: LogOptions) -> Result<Storage> {
        fs.create_dir_all(dir).map_err(|e| StorageError::io("create directory", dir, e))?;
        if !is_empty_dir(fs.as_ref(), dir)? {
            return Err(StorageError::AlreadyInitialized { path: dir.to_path_buf() });
        }
        let snapshots = SnapshotStore::create(fs.clone(), &dir.join("snap"), ids)?;
        let log = FileLogStore::create(fs, &dir.join("log"), ids, opts)?;
        Ok(Storage { log, snapshots })
    }

    /// Open existing storage, verify it and return what it holds. Fails with
    /// a clear error on any damage that is not a torn tail, on foreign or
    /// unknown-version files, and on an empty or missing directory.
    pub fn open(
        fs: Arc<dyn FileSystem>,
        dir: &Path,
        ids: NodeIds,
        opts: LogOptions,
    ) -> Result<(Storage, Recovered)> {
        if is_empty_dir(fs.as_ref(), dir)? {
            return Err(StorageError::NotInitialized { path: dir.to_path_buf() });
        }
        let snapshots = SnapshotStore::open(fs.clone(), &dir.join("snap"), ids)?;
        let (mut log, rec) = FileLogStore::open(fs, &dir.join("log"), ids, opts)?;
        let snapshot = snapshots.latest()?.map(|(meta, _reader)| meta);
        let mut hard_state = rec.hard_state;
        if let Some(meta) = &snapshot {
            if log.term(meta.index).is_some_and(|term| term != meta.term) {
                // A crash between installing the snapshot (durable) and resetting the log
                // behind it: the log conflicts with the snapshot at its last entry, so
                // nothing after it can be in the leader's log either (Log Matching).
                tracing::warn!(
                    index = meta.index,
                    term = meta.term,
                    last_index = log.last_index(),
                    "the log conflicts with the newest snapshot; discarding it (interrupted install)"
                );
                log.reset(meta.index)?;
            } else if meta.index >= log.first_index() {
                log.compact(meta.index)?;
            }
            // Everything up to the snapshot is committed.
            hard_state.commit = hard_state.commit.max(meta.index);
        }
        let first_index = log.first_index();
        let last_index = log.last_index();
        let records =
            if first_index <= last_index { log.entries(first_index, last_index + 1)? } else { Vec::new() };
        Ok((Storage { log, snapshots }, Recovered { hard_state, snapshot, first_index, last_index, records }))
    }
}
