//! raftkv's key-value state machine: a multi-version store with etcd v3
//! semantics (revisions, versions, tombstones, ranges at past revisions,
//! transactions, compaction).
//!
//! It is deterministic: no clock, no threads, only ordered maps. The index and
//! every key's newest value are in memory; the values of superseded versions go
//! to a [`ColdStore`] (an arena in memory, or an unnamed cache file that keeps
//! the history off the heap). The cold store never changes results: applying
//! never reads it, and a failure to read it only fails that read. Writes arrive as
//! replicated [`Command`]s through [`KvStore::apply`]; reads use
//! [`KvStore::range`] and [`KvStore::txn_read_only`] on `&self`.
//!
//! Response headers carry only `revision`; the server fills `cluster_id`,
//! `member_id` and `raft_term`.

mod auth;
mod cold;
mod defrag;
mod error;
mod export;
mod index;
mod lease;
mod snapshot;
mod store;
mod validate;
mod watch;

pub use auth::{AuthError, AuthState, AuthStore, Permission, ROOT, Role, User};
pub use cold::ColdStore;
pub use defrag::{Defrag, DefragError, DefragStats};
pub use error::KvError;
pub use export::{KvImporter, Version};
pub use lease::{AttachedRecord, Lease, LeaseRecord, LeaseTable, MAX_LEASE_TTL};
pub use raftkv_api::{Command, Request};
pub use snapshot::{CrcReader, CrcWriter, SnapshotPoint};
pub use store::{ApplyResult, DEFAULT_MAX_TXN_OPS, KEY_COST, KvConfig, KvStore, LeasePolicy, REV_COST};
pub use validate::{is_txn_read_only, validate_delete_range, validate_put, validate_range, validate_txn};
pub use watch::{HistoryBatch, HistoryLimits, key_in_range};

impl KvStore {
    /// Decodes a log entry ([`Command::encode_to_bytes`]) and applies it;
    /// returns the command id with the result.
    pub fn apply_encoded(&mut self, entry: impl bytes::Buf) -> Result<(u64, ApplyResult), KvError> {
        let cmd = Command::decode_from(entry)?;
        let id = cmd.id;
        self.apply(cmd).map(|r| (id, r))
    }
}
