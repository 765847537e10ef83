//! Error type of the storage crate.

use std::io;
use std::path::PathBuf;

/// Result alias used throughout the crate.
pub type Result<T, E = StorageError> = std::result::Result<T, E>;

/// Every way a storage operation can fail.
///
/// Errors that describe on-disk content (`Corrupt`, `BadMagic`,
/// `UnknownVersion`, `ClusterMismatch`, `NodeMismatch`, `MissingSegment`)
/// always name the file and, where meaningful, the byte offset. They are
/// returned by `open` and mean the node must not start: see the crate docs
/// for the operator's way out.
#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    /// An I/O call failed (not an fsync: see [`StorageError::FsyncFailed`]).
    #[error("I/O error during {op} on {path}: {source}")]
    Io {
        /// The operation that failed (`"write"`, `"open"`, ...).
        op: &'static str,
        /// The file or directory concerned.
        path: PathBuf,
        /// The underlying error.
        source: io::Error,
    },
    /// An fsync/fdatasync failed. This is fatal: the kernel may have dropped
    /// the dirty pages, so retrying could report data durable that is not.
    /// The store is poisoned and the node must stop.
    #[error("fsync failed on {path}: {source} (fatal: the node must stop and restart from disk)")]
    FsyncFailed {
        /// The file or directory whose sync failed.
        path: PathBuf,
        /// The underlying error.
        source: io::Error,
    },
    /// A previous fatal error (failed fsync or failed write) poisoned the
    /// store; every further call fails. Restart the process to recover from
    /// what is on disk.
    #[error("storage is poisoned by an earlier fatal error: {cause}")]
    Poisoned {
        /// Description of the original error.
        cause: String,
    },
    /// Checksum mismatch, impossible length, non-contiguous index or other
    /// damage in data that is not a torn tail.
    #[error("corrupt data in {path} at byte offset {offset}: {reason}")]
    Corrupt {
        /// The damaged file.
        path: PathBuf,
        /// Byte offset of the damaged record or header.
        offset: u64,
        /// What is wrong.
        reason: String,
    },
    /// Recovery found what looks like a torn tail, but reading the file again returned
    /// different bytes: a bad read (or a failing disk), not a torn write. Nothing was cut.
    /// `open` retries a few times before returning this; restarting retries again.
    #[error(
        "{path} read differently on a second read (at or after byte offset {offset}): a bad read, not a torn write; nothing was cut"
    )]
    UnstableRead {
        /// The file.
        path: PathBuf,
        /// Offset of the record that looked torn.
        offset: u64,
    },
    /// The file does not start with the expected magic number.
    #[error("{path} is not a raftkv {what} file (bad magic number at offset 0)")]
    BadMagic {
        /// The file.
        path: PathBuf,
        /// Which kind of file was expected.
        what: &'static str,
    },
    /// The file was written by an unknown format version.
    #[error("{path} has unknown format version {found} (this build supports version {supported})")]
    UnknownVersion {
        /// The file.
        path: PathBuf,
        /// Version found in the header.
        found: u32,
        /// Version this build reads and writes.
        supported: u32,
    },
    /// The file belongs to another cluster.
    #[error("{path} belongs to cluster {found}, but this node is in cluster {expected}")]
    ClusterMismatch {
        /// The file.
        path: PathBuf,
        /// Cluster id this node was opened with.
        expected: u64,
        /// Cluster id in the file header.
        found: u64,
    },
    /// The file belongs to another node.
    #[error("{path} belongs to node {found}, but this is node {expected}")]
    NodeMismatch {
        /// The file.
        path: PathBuf,
        /// Node id this node was opened with.
        expected: u64,
        /// Node id in the file header.
        found: u64,
    },
    /// A segment between the first and the last is missing, or segments do
    /// not chain (the next one does not start where the previous one ends).
    #[error("missing log segment in {dir}: {detail}")]
    MissingSegment {
        /// The log directory.
        dir: PathBuf,
        /// Which segment is missing or which indexes do not chain.
        detail: String,
    },
    /// `open` found no store in the directory (empty or missing). A node
    /// that has ever run must never restart from nothing: use `create` only
    /// when bootstrapping a brand-new member.
    #[error(
        "no raftkv storage in {path}: directory is empty or missing (use create() only for a brand-new member)"
    )]
    NotInitialized {
        /// The directory.
        path: PathBuf,
    },
    /// `create` found an existing store.
    #[error("{path} already contains raftkv storage; refusing to overwrite it")]
    AlreadyInitialized {
        /// The directory.
        path: PathBuf,
    },
    /// Requested entries are below the first retained index.
    #[error("index {index} is compacted (first retained index is {first})")]
    Compacted {
        /// Requested index.
        index: u64,
        /// First index still held.
        first: u64,
    },
    /// Requested entries are above the last index.
    #[error("index {index} is beyond the last index {last}")]
    Unavailable {
        /// Requested index (exclusive upper bound).
        index: u64,
        /// Last index held.
        last: u64,
    },
    /// The caller broke an API precondition (non-contiguous records, gap,
    /// reserved kind, oversize record, ...).
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
}

impl StorageError {
    pub(crate) fn io(op: &'static str, path: impl Into<PathBuf>, source: io::Error) -> Self {
        StorageError::Io { op, path: path.into(), source }
    }

    pub(crate) fn corrupt(path: impl Into<PathBuf>, offset: u64, reason: impl Into<String>) -> Self {
        StorageError::Corrupt { path: path.into(), offset, reason: reason.into() }
    }

    /// True for a failed fsync or a store already poisoned: the node must
    /// stop. (A failed write also poisons the store; the next call then
    /// returns `Poisoned`.)
    pub fn is_fatal(&self) -> bool {
        matches!(self, StorageError::FsyncFailed { .. } | StorageError::Poisoned { .. })
    }
}
