//! Durable storage for raftkv: the Raft log, the hard state and snapshots.
//!
//! Raft's safety rests on what each server has on disk: a vote granted
//! twice or an acknowledged entry lost breaks every guarantee. This crate
//! keeps that state with checksums everywhere, fsyncs by default, and
//! refuses to start on anything it cannot prove intact (other than a torn
//! tail, see below). It does not depend on the Raft core: it has its own
//! plain types ([`LogRecord`], [`HardState`], [`SnapshotMeta`]).
//!
//! # Pieces
//!
//! * [`FileLogStore`]: segmented, checksummed log + hard state, implementing
//!   [`LogStore`]. [`MemLogStore`] is the in-memory model; both pass one
//!   conformance suite (`tests/conformance.rs`).
//! * [`SnapshotStore`]: snapshot files written to a temporary name, fsynced,
//!   renamed into place; older ones removed only after that.
//! * [`Storage`]: `<dir>/log` + `<dir>/snap`; [`Storage::open`] returns
//!   everything recovered ([`Recovered`]).
//! * [`FileSystem`]: every byte goes through this small trait; [`RealFs`]
//!   uses `std::fs`, [`SimFs`] is in memory and injects crashes, torn and
//!   lost writes, bit flips and failed fsyncs.
//!
//! # On-disk format (version 1, little endian)
//!
//! `<dir>/log/<seq:020>.seg`: a 64-byte header (magic `RKVLOG\0\0`,
//! format version, cluster id, node id, segment sequence number, the index
//! the next entry had when the segment was opened, CRC32C of the header),
//! then records back to back:
//!
//! ```text
//! [len u32][crc32c u32 over len+body][kind u8][index u64][term u64][data]
//! ```
//!
//! `kind <= 0xEF` are the caller's entries; `0xFF` is a hard-state record
//! (term, voted_for, commit), `0xFE` a reset marker written when the log is
//! reset or compacted past its end (snapshot install). The log is a pure append-only
//! stream: an entry whose index is `<=` the last index replaces that suffix
//! (truncation of a conflicting suffix is thus written, and made durable,
//! together with the entries that replace it; no byte of synced data is
//! ever overwritten). The latest hard-state record wins; every new segment
//! starts with the current hard state, so removing old segments never loses
//! it. `len` is bounded by [`LogOptions::max_record_size`], so a corrupt
//! length never causes a huge allocation.
//!
//! `<dir>/snap/snap-<term:020>-<index:020>.snap`: header (magic
//! `RKVSNAP\0`, version, cluster id, node id, index, term, config, CRC32C),
//! body, trailer (body length, CRC32C of the body, `SEND`). See
//! [`record`] and `docs/storage.md`.
//!
//! # Durability contract
//!
//! * [`LogStore::append`] and [`LogStore::save_hard_state`] only buffer;
//!   nothing is durable until [`LogStore::sync`] returns `Ok`, which makes
//!   everything before it durable with one `write` and one `fdatasync`. In
//!   the written stream, entries come before the hard state saved with
//!   them, so a recovered commit index never refers to an entry that was
//!   not recovered (recovery also clamps it, with a warning).
//! * [`LogStore::compact`] past the last index and [`LogStore::reset`]
//!   (snapshot install) are durable when they return; compaction within the log removes whole
//!   segments only (each removal followed by a directory fsync), and only
//!   after the caller's snapshot is durable ([`SnapshotWriter::finish`]).
//! * A new segment is created as: fsync of the previous one, create, write
//!   header and hard state, fsync, fsync of the directory; only then are
//!   entries written into it. So only the last segment can ever have an unsynced
//!   tail.
//! * [`SyncMode::NoSyncUnsafeForBenchmarksOnly`] skips the fdatasync in
//!   `sync()`. It exists for benchmarks only and voids the contract.
//! * A failed fsync is fatal: the store is poisoned ([`StorageError::Poisoned`]
//!   from every later call) and never retries, because the kernel may have
//!   dropped the dirty pages. A failed write poisons it too. The process must
//!   stop and restart from disk.
//!
//! # Recovery
//!
//! `open` reads every segment in full and checks every checksum.
//!
//! * A torn record at the end of the **last** segment (incomplete, or a bad
//!   checksum / impossible length with only zeros or nothing after it) is a
//!   crash in the middle of a write: it is cut off (`set_len` + fsync) with a
//!   `tracing` warning and reported by [`FileLogStore::torn_tail`]. A newest
//!   segment whose header is incomplete (crash while creating it) is removed
//!   the same way.
//! * Anything else stops the node with an error naming the file and byte
//!   offset: a bad checksum followed by more data, any damage in a sealed
//!   segment, a missing segment or one that does not chain, a file from
//!   another cluster or node, a bad magic number, an unknown version, an
//!   empty or missing directory ([`StorageError::NotInitialized`]: a member
//!   that has run must never silently restart from nothing).
//! * Limitation: damage to the very last record of the log is
//!   indistinguishable from a torn write and is cut. Raft tolerates this on
//!   one member only if the entry is also held by a quorum, which is why
//!   every member keeps fsync on.
//!
//! # The operator's way out
//!
//! When a node refuses to start with one of these errors, **never edit or
//! delete individual files**. Stop the member, move its whole data
//! directory aside (keep it for investigation), remove the member from the
//! cluster and add it back as a new member with an empty directory
//! (created with [`Storage::create`]): it catches up from the leader by
//! snapshot and log replication. Do this for one member at a time, and only
//! while the rest of the cluster has a quorum. A wrong cluster or node id
//! usually means a misconfigured path: fix the configuration instead.
#![deny(missing_docs)]

pub mod error;
pub mod fs;
mod log;
mod mem;
pub mod observe;
pub mod record;
mod simfs;
mod snapshot;
mod storage;

use bytes::Bytes;

pub use error::{Result, StorageError};
pub use fs::{FileSystem, FsFile, RealFs};
pub use log::{FileLogStore, TornTail};
pub use mem::{MemDisk, MemLogStore};
#[doc(inline)]
pub use record::MAX_USER_KIND;
pub use simfs::{CrashMode, SimFs};
pub use snapshot::{SnapshotReader, SnapshotStore, SnapshotWriter};
pub use storage::{Recovered, Storage};

/// One log entry as stored. `kind` is opaque to the store (the Raft core
/// uses it for Normal / Noop / Config) but must be at most
/// [`record::MAX_USER_KIND`]; larger values are reserved for internal records.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogRecord {
    /// Raft log index (>= 1).
    pub index: u64,
    /// Term of the entry.
    pub term: u64,
    /// Caller-defined entry kind (<= `MAX_USER_KIND`).
    pub kind: u8,
    /// Payload.
    pub data: Bytes,
}

impl LogRecord {
    /// Convenience constructor.
    pub fn new(index: u64, term: u64, kind: u8, data: impl Into<Bytes>) -> Self {
        LogRecord { index, term, kind, data: data.into() }
    }
}

/// Raft's persistent per-server state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct HardState {
    /// Current term.
    pub term: u64,
    /// Candidate voted for in `term`; 0 = none.
    pub voted_for: u64,
    /// Highest index known committed.
    pub commit: u64,
}

/// Metadata of a snapshot.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct SnapshotMeta {
    /// Last log index covered by the snapshot.
    pub index: u64,
    /// Term of that entry.
    pub term: u64,
    /// Opaque cluster configuration at `index` (encoded by the caller).
    pub config: Bytes,
}

/// Identity written into every file header and checked on open.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NodeIds {
    /// Cluster id.
    pub cluster_id: u64,
    /// Node (member) id.
    pub node_id: u64,
}

/// Whether appends are fsynced.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SyncMode {
    /// `sync()` calls `fdatasync` (the default; required for Raft safety).
    #[default]
    Fsync,
    /// `sync()` only writes to the OS; nothing is durable across a power
    /// cut. **For benchmarks only**: a node running like this may lose
    /// acknowledged entries and votes and break Raft's guarantees.
    /// Rollover, truncation at open and snapshots still fsync.
    NoSyncUnsafeForBenchmarksOnly,
}

/// Tuning of the file log store.
#[derive(Debug, Clone)]
pub struct LogOptions {
    /// A new segment is started once the current one would exceed this
    /// many bytes (default 64 MiB).
    pub segment_size: u64,
    /// Largest record payload accepted (default 64 MiB). Recovery rejects
    /// any length field above it, so a corrupt length never causes a huge
    /// allocation.
    pub max_record_size: u32,
    /// Fsync policy (default [`SyncMode::Fsync`]).
    pub sync: SyncMode,
    /// `append` writes its buffer to the OS once it holds this many bytes,
    /// instead of waiting for `sync` (default 4 MiB).
    pub write_buffer: usize,
    /// The active segment is extended with zeros this many bytes ahead of the write
    /// position (default 4 MiB; 0: off), so most fsyncs follow writes that do not change
    /// the file's size and need no file-system journal commit. A sealed segment is cut to
    /// its records; an all-zero tail of the last segment is its clean end.
    pub preallocate: u64,
}

impl Default for LogOptions {
    fn default() -> Self {
        LogOptions {
            segment_size: 64 << 20,
            max_record_size: 64 << 20,
            sync: SyncMode::Fsync,
            write_buffer: 4 << 20,
            preallocate: 4 << 20,
        }
    }
}

/// What a log store recovered on open.
#[derive(Debug, Clone, Default)]
pub struct LogRecovered {
    /// Latest hard state found (default if none was ever saved); `commit`
    /// clamped to `last_index`.
    pub hard_state: HardState,
    /// First retained index (`last_index + 1` if the log is empty).
    pub first_index: u64,
    /// Last index.
    pub last_index: u64,
    /// The retained records, `first_index..=last_index`.
    pub records: Vec<LogRecord>,
}

/// The Raft log + hard state store. Implemented by [`FileLogStore`] and by
/// the in-memory model [`MemLogStore`]; both pass the same conformance
/// suite.
///
/// Durability contract: `append`, `save_hard_state` and `compact` (when
/// `up_to <= last_index`) change the in-memory view at once but are only
/// durable after a later `sync()` returns `Ok`. `sync()` makes everything
/// before it durable, entries before hard state. After any fatal error
/// (failed write or fsync) every call returns an error.
pub trait LogStore: Send {
    /// Append contiguous records. If `records[0].index <= last_index()`,
    /// the conflicting suffix from that index on is replaced (the
    /// truncation is durable together with the new records at the next
    /// `sync`). Requires `first_index() <= records[0].index <= last_index()+1`.
    fn append(&mut self, records: &[LogRecord]) -> Result<()>;
    /// Record the hard state; durable at the next `sync`.
    fn save_hard_state(&mut self, hs: HardState) -> Result<()>;
    /// Make every earlier call durable.
    fn sync(&mut self) -> Result<()>;
    /// Discard entries `<= up_to` (covered by a durable snapshot) and
    /// remove whole segments below. If `up_to > last_index()` the log
    /// becomes empty with `last_index() == up_to`; this reset is durable when
    /// `compact` returns.
    fn compact(&mut self, up_to: u64) -> Result<()>;
    /// Discard the whole log, whatever its last index, and continue after `index`: the
    /// log becomes empty with `last_index() == index` (installing a snapshot whose last
    /// entry the log does not hold, or holds with another term: nothing of the old log
    /// may survive a restart). Durable when it returns, together with everything before.
    fn reset(&mut self, index: u64) -> Result<()>;
    /// First retained index (`last_index() + 1` when empty).
    fn first_index(&self) -> u64;
    /// Last index (0 for a new log).
    fn last_index(&self) -> u64;
    /// Term of entry `index`, if retained.
    fn term(&self, index: u64) -> Option<u64>;
    /// Entries `lo..hi` (half open).
    fn entries(&self, lo: u64, hi: u64) -> Result<Vec<LogRecord>>;
    /// The latest hard state passed to `save_hard_state` (or recovered).
    fn hard_state(&self) -> HardState;
}

/// Check an `append` call's preconditions.
pub(crate) fn validate_append(
    records: &[LogRecord],
    first_index: u64,
    last_index: u64,
    max_record_size: u32,
) -> Result<()> {
    let Some(first) = records.first() else {
        return Ok(());
    };
    if first.index == 0 {
        return Err(StorageError::InvalidArgument("index 0 is not a valid log index".into()));
    }
    if first.index > last_index.saturating_add(1) {
        return Err(StorageError::InvalidArgument(format!(
            "append at index {} would leave a gap after last index {last_index}",
            first.index
        )));
    }
    if first.index < first_index {
        return Err(StorageError::InvalidArgument(format!(
            "append at index {} is below the first retained index {first_index}",
            first.index
        )));
    }
    for (i, r) in records.iter().enumerate() {
        if r.index != first.index + i as u64 {
            return Err(StorageError::InvalidArgument(format!(
                "records are not contiguous: expected index {}, got {}",
                first.index + i as u64,
                r.index
            )));
        }
        if r.kind > record::MAX_USER_KIND {
            return Err(StorageError::InvalidArgument(format!(
                "record kind {:#x} is reserved (max {:#x})",
                r.kind,
                record::MAX_USER_KIND
            )));
        }
        if r.data.len() + record::BODY_FIXED_LEN > max_record_size as usize {
            return Err(StorageError::InvalidArgument(format!(
                "record {} is {} bytes, above the maximum {max_record_size}",
                r.index,
                r.data.len()
            )));
        }
    }
    Ok(())
}
