//! Errors of the key-value state machine, mapped 1:1 to the gRPC status that
//! etcd v3 clients expect (same code, same message text).

use raftkv_api::tonic::{Code, Status};

/// A failed key-value request.
///
/// The client-visible variants carry etcd's exact error text (clients match on
/// it) and gRPC code; see [`KvError::message`] and [`KvError::grpc_code`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KvError {
    /// A request or compare without a key.
    EmptyKey,
    /// `ignore_value`/`ignore_lease` on a key that does not exist, or an empty
    /// operation in a transaction.
    KeyNotFound,
    /// `ignore_value` together with a non-empty value.
    ValueProvided,
    /// `ignore_lease` together with a non-zero lease.
    LeaseProvided,
    /// A transaction with more operations than the configured maximum.
    TooManyOps,
    /// A transaction writing the same key twice.
    DuplicateKey,
    /// The requested revision was discarded by a compaction.
    Compacted,
    /// The requested revision is beyond the current revision.
    FutureRev,
    /// A put naming a lease that does not exist.
    LeaseNotFound,
    /// A grant of a lease ID that exists.
    LeaseExists,
    /// A grant with a TTL above [`crate::MAX_LEASE_TTL`].
    LeaseTtlTooLarge,
    /// A log entry that is not a valid command (this node's own data).
    InvalidCommand(String),
    /// A snapshot that fails its checksum or structural checks, or could not be read.
    CorruptSnapshot(String),
    /// Reading a past version's value from the cold store failed (an I/O error on this
    /// member's cache file). Only the read fails; the state is intact.
    ColdRead(String),
}

impl KvError {
    /// The error text, identical to etcd's for the client-visible errors.
    pub fn message(&self) -> &str {
        match self {
            KvError::EmptyKey => "etcdserver: key is not provided",
            KvError::KeyNotFound => "etcdserver: key not found",
            KvError::ValueProvided => "etcdserver: value is provided",
            KvError::LeaseProvided => "etcdserver: lease is provided",
            KvError::TooManyOps => "etcdserver: too many operations in txn request",
            KvError::DuplicateKey => "etcdserver: duplicate key given in txn request",
            KvError::Compacted => "etcdserver: mvcc: required revision has been compacted",
            KvError::FutureRev => "etcdserver: mvcc: required revision is a future revision",
            KvError::LeaseNotFound => "etcdserver: requested lease not found",
            KvError::LeaseExists => "etcdserver: lease already exists",
            KvError::LeaseTtlTooLarge => "etcdserver: too large lease TTL",
            KvError::InvalidCommand(m) | KvError::CorruptSnapshot(m) | KvError::ColdRead(m) => m,
        }
    }

    /// The gRPC status code etcd uses for this error.
    pub fn grpc_code(&self) -> Code {
        match self {
            KvError::EmptyKey
            | KvError::KeyNotFound
            | KvError::ValueProvided
            | KvError::LeaseProvided
            | KvError::TooManyOps
            | KvError::DuplicateKey => Code::InvalidArgument,
            KvError::Compacted | KvError::FutureRev => Code::OutOfRange,
            KvError::LeaseNotFound => Code::NotFound,
            KvError::LeaseExists => Code::FailedPrecondition,
            KvError::LeaseTtlTooLarge => Code::OutOfRange,
            KvError::InvalidCommand(_) | KvError::ColdRead(_) => Code::Internal,
            KvError::CorruptSnapshot(_) => Code::DataLoss,
        }
    }

    pub(crate) fn cold(e: std::io::Error) -> Self {
        KvError::ColdRead(format!("raftkv: reading a past version: {e}"))
    }

    pub(crate) fn corrupt(what: impl std::fmt::Display) -> Self {
        KvError::CorruptSnapshot(format!("raftkv: corrupt kv snapshot: {what}"))
    }
}

impl std::fmt::Display for KvError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.message())
    }
}

impl std::error::Error for KvError {}

impl From<KvError> for Status {
    fn from(e: KvError) -> Status {
        Status::new(e.grpc_code(), e.message())
    }
}

impl From<raftkv_api::CommandDecodeError> for KvError {
    fn from(e: raftkv_api::CommandDecodeError) -> Self {
        KvError::InvalidCommand(format!("raftkv: {e}"))
    }
}
