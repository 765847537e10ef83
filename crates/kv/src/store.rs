//! The MVCC store: every key keeps its history of versions; reads can look at
//! any retained revision.

use std::cmp::Ordering;

use crate::index::KeyIndex;
use std::ops::{Bound, Range};

use bytes::Bytes;
use raftkv_api::etcdserverpb::compare::{CompareResult, CompareTarget, TargetUnion};
use raftkv_api::etcdserverpb::range_request::{SortOrder, SortTarget};
use raftkv_api::etcdserverpb::request_op::Request as Op;
use raftkv_api::etcdserverpb::response_op::Response as OpResp;
use raftkv_api::etcdserverpb::{
    CompactionRequest, CompactionResponse, Compare, DeleteRangeRequest, DeleteRangeResponse, PutRequest,
    PutResponse, RangeRequest, RangeResponse, RequestOp, ResponseHeader, ResponseOp, TxnRequest, TxnResponse,
};
use raftkv_api::mvccpb::KeyValue;
use raftkv_api::{Command, Request};

use crate::KvError;
use crate::cold::{ColdPos, ColdStore};
use crate::lease::LeaseTable;
use crate::validate::{is_txn_read_only, validate_delete_range, validate_put, validate_range, validate_txn};
use raftkv_api::etcdserverpb::{LeaseGrantResponse, LeaseRevokeResponse};

/// etcd's default limit on operations per transaction.
pub const DEFAULT_MAX_TXN_OPS: usize = 128;

/// What a put naming a lease that is not in the lease table does.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum LeasePolicy {
    /// Fail with [`KvError::LeaseNotFound`], as etcd does for a lease that
    /// was never granted (or expired).
    #[default]
    Reject,
    /// Accept the put and store lease 0 (the key never expires). Only for
    /// tests and tools that replay writes without their leases.
    Ignore,
}

/// Tunables. Every replica must use the same configuration: it changes
/// which commands fail.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KvConfig {
    /// Maximum compares or operations per transaction branch (etcd's
    /// `--max-txn-ops`, default 128).
    pub max_txn_ops: usize,
    /// Handling of the `lease` field of puts.
    pub lease_policy: LeasePolicy,
}

impl Default for KvConfig {
    fn default() -> Self {
        KvConfig { max_txn_ops: DEFAULT_MAX_TXN_OPS, lease_policy: LeasePolicy::Reject }
    }
}

/// One version of a key. A tombstone (deletion) has `version == 0`.
///
/// The value is not here: the newest version's value is [`KeyHistory::latest`], older
/// ones are in the store's [`ColdStore`] at `pos`. The lease of a version written with
/// one is in the store's [`LeaseTable`], by the version's `(main, sub)`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Rev {
    /// Revision of this write (its mod revision).
    pub main: i64,
    pub create: i64,
    pub version: i64,
    /// Position of this write within its revision's transaction.
    pub sub: u32,
    /// Length of the value.
    pub vlen: u32,
    /// Where the value is in the cold store (meaningless for the newest version).
    pub pos: ColdPos,
}

impl Rev {
    fn is_tombstone(&self) -> bool {
        self.version == 0
    }
}

/// All retained versions of one key, oldest first, ordered by (main, sub).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct KeyHistory {
    pub revs: Vec<Rev>,
    /// The value of the newest version (empty for a tombstone).
    pub latest: Bytes,
}

impl KeyHistory {
    /// Index of the live version at revision `rev`, if the key existed then.
    #[inline]
    fn at(&self, rev: i64) -> Option<usize> {
        let n = self.revs.len();
        let i = match self.revs.last() {
            Some(e) if e.main <= rev => n - 1,
            _ => self.revs.partition_point(|e| e.main <= rev).checked_sub(1)?,
        };
        if self.revs[i].is_tombstone() { None } else { Some(i) }
    }

    /// The newest version, unless it is a tombstone.
    #[inline]
    fn newest_live(&self) -> Option<usize> {
        let i = self.revs.len().checked_sub(1)?;
        if self.revs[i].is_tombstone() { None } else { Some(i) }
    }

    /// Adds a new newest version; the value it supersedes moves to `cold`.
    pub(crate) fn push(&mut self, cold: &mut ColdStore, cold_live: &mut u64, rev: Rev, value: Bytes) {
        if let Some(last) = self.revs.last_mut()
            && last.vlen > 0
        {
            last.pos = cold.append(&self.latest);
            *cold_live += u64::from(last.vlen);
        }
        if self.revs.len() == self.revs.capacity() {
            // Grow by a quarter rather than doubling: histories are many and long-lived,
            // and doubling leaves up to half of each one's records unused (a key written
            // 17 times would hold room for 32).
            self.revs.reserve_exact((self.revs.len() / 4).max(3));
        }
        self.revs.push(rev);
        self.latest = value;
    }

    /// Bytes of this history's values held in the cold store.
    fn cold_bytes(revs: &[Rev]) -> u64 {
        revs.iter().map(|r| u64::from(r.vlen)).sum()
    }
}

/// The part of a key's history that the state at revision `rev` holds once compacted at
/// `compacted` (-1: never): the versions up to `rev`, minus those older than the one visible
/// at `compacted` (and minus that one too if it is a tombstone). Idempotent: applying it to
/// its own output changes nothing.
pub(crate) fn retained(revs: &[Rev], rev: i64, compacted: i64) -> Range<usize> {
    let end = match revs.last() {
        Some(e) if e.main <= rev => revs.len(),
        _ => revs.partition_point(|e| e.main <= rev),
    };
    let upto = &revs[..end];
    let i = upto.partition_point(|e| e.main <= compacted);
    let from = match i.checked_sub(1) {
        Some(last) if upto[last].is_tombstone() => i,
        Some(last) => last,
        None => 0,
    };
    from..end
}

/// Bytes counted for each key beyond its own bytes (its two index entries, each with
/// room for a 24-byte key inline, and its history's header).
pub const KEY_COST: u64 = 96;
/// Bytes counted for each retained version (its record in the key's history).
pub const REV_COST: u64 = std::mem::size_of::<Rev>() as u64;

/// What a key's history counts in [`KvStore::hot_bytes`].
pub(crate) fn history_cost(key: &[u8], h: &KeyHistory) -> u64 {
    key.len() as u64 + KEY_COST + REV_COST * h.revs.len() as u64 + h.latest.len() as u64
}

/// The result of applying one [`Command`].
#[derive(Clone, Debug, PartialEq)]
pub enum ApplyResult {
    Range(RangeResponse),
    Put(PutResponse),
    DeleteRange(DeleteRangeResponse),
    Txn(TxnResponse),
    Compaction(CompactionResponse),
    LeaseGrant(LeaseGrantResponse),
    LeaseRevoke(LeaseRevokeResponse),
    /// A lease checkpoint was recorded (the store revision is unchanged).
    LeaseCheckpoint {
        revision: i64,
    },
}

impl ApplyResult {
    /// The store revision reported in the response header.
    pub fn revision(&self) -> i64 {
        let h = match self {
            ApplyResult::Range(r) => &r.header,
            ApplyResult::Put(r) => &r.header,
            ApplyResult::DeleteRange(r) => &r.header,
            ApplyResult::Txn(r) => &r.header,
            ApplyResult::Compaction(r) => &r.header,
            ApplyResult::LeaseGrant(r) => &r.header,
            ApplyResult::LeaseRevoke(r) => &r.header,
            ApplyResult::LeaseCheckpoint { revision } => return *revision,
        };
        h.as_ref().map_or(0, |h| h.revision)
    }
}

/// A key as held in the index: up to 24 bytes inline, so that the comparisons of a lookup
/// read the B-tree node itself rather than chase a pointer to every key they compare (and
/// a short key costs no allocation of its own). Same size as a `Bytes` handle.
pub(crate) type Key = smallvec::SmallVec<[u8; 24]>;

/// The replicated key-value state machine with etcd v3 MVCC semantics.
///
/// Deterministic: applying the same commands in the same order gives the same
/// state (and [`KvStore::digest`]) on every replica.
#[derive(Debug)]
pub struct KvStore {
    pub(crate) map: KeyIndex,
    /// Values of superseded versions.
    pub(crate) cold: ColdStore,
    /// Bytes in `cold` that retained versions still refer to.
    pub(crate) cold_live: u64,
    /// Current revision: 1 for an empty store, +1 per write that changed something.
    pub(crate) rev: i64,
    /// Revisions below this were discarded; -1 before the first compaction.
    pub(crate) compacted: i64,
    pub(crate) config: KvConfig,
    /// Snapshots being written from this store (see [`KvStore::pin`]): while any is,
    /// compaction only moves `compacted` and leaves the old versions in place.
    pub(crate) pins: u32,
    /// A compaction is waiting for the last pin to go.
    pub(crate) compaction_deferred: bool,
    /// Events of the applied writes, while capturing is on (see [`KvStore::set_capture`]).
    pub(crate) changes: Option<Vec<raftkv_api::mvccpb::Event>>,
    /// The leases and the keys they hold.
    pub(crate) leases: LeaseTable,
    /// Bytes of the index and the newest values (see [`KvStore::hot_bytes`]).
    pub(crate) hot: u64,
}

impl Default for KvStore {
    fn default() -> Self {
        Self::new()
    }
}

/// The in-progress write transaction: all its writes share revision
/// `begin + 1` with increasing sub-revisions.
pub(crate) struct WriteCtx {
    pub(crate) begin: i64,
    pub(crate) changes: i64,
}

impl WriteCtx {
    /// Revision reads inside the transaction see: including its own writes.
    fn read_rev(&self) -> i64 {
        if self.changes > 0 { self.begin + 1 } else { self.begin }
    }
    fn write_rev(&self) -> i64 {
        self.begin + 1
    }
}

pub(crate) fn header(revision: i64) -> Option<ResponseHeader> {
    Some(ResponseHeader { revision, ..Default::default() })
}

/// `range_end == "\0"` means "every key >= key".
fn is_from_key(end: &[u8]) -> bool {
    end == [0]
}

/// Map bounds for a key range, or `None` when the range is empty.
type KeyBounds<'a> = (Bound<&'a [u8]>, Bound<&'a [u8]>);

fn key_bounds<'a>(key: &'a [u8], end: &'a [u8]) -> Option<KeyBounds<'a>> {
    if end.is_empty() {
        Some((Bound::Included(key), Bound::Included(key)))
    } else if is_from_key(end) {
        Some((Bound::Included(key), Bound::Unbounded))
    } else if key < end {
        Some((Bound::Included(key), Bound::Excluded(end)))
    } else {
        None
    }
}

impl KvStore {
    /// An empty store (revision 1) with the default configuration.
    pub fn new() -> Self {
        Self::with_config(KvConfig::default())
    }

    /// An empty store (revision 1).
    pub fn with_config(config: KvConfig) -> Self {
        Self::with_cold_store(config, ColdStore::memory())
    }

    /// An empty store (revision 1) that keeps superseded values in `cold` (e.g. a
    /// [`ColdStore::temp_file_in`] to keep the history off the heap).
    pub fn with_cold_store(config: KvConfig, cold: ColdStore) -> Self {
        KvStore {
            map: KeyIndex::new(),
            cold,
            cold_live: 0,
            rev: 1,
            compacted: -1,
            config,
            pins: 0,
            compaction_deferred: false,
            changes: None,
            leases: LeaseTable::default(),
            hot: 0,
        }
    }

    /// Where superseded values are kept.
    pub fn cold_store(&self) -> &ColdStore {
        &self.cold
    }

    /// Bytes of superseded values that retained versions refer to.
    pub fn cold_live_bytes(&self) -> u64 {
        self.cold_live
    }

    pub fn config(&self) -> &KvConfig {
        &self.config
    }

    /// Replaces the configuration (e.g. after [`KvStore::restore`]).
    pub fn set_config(&mut self, config: KvConfig) {
        self.config = config;
    }

    /// The current revision.
    pub fn revision(&self) -> i64 {
        self.rev
    }

    /// The latest compaction revision, or -1 if never compacted.
    pub fn compact_revision(&self) -> i64 {
        self.compacted
    }

    /// Number of keys that currently exist.
    pub fn live_keys(&self) -> usize {
        let rev = self.rev;
        self.map.values().filter(|h| h.at(rev).is_some()).count()
    }

    /// Number of retained versions (including tombstones) of all keys.
    pub fn retained_versions(&self) -> usize {
        self.map.values().map(|h| h.revs.len()).sum()
    }

    /// Bytes the store holds in memory for its index and newest values: every key's bytes
    /// plus [`KEY_COST`], every retained version's [`REV_COST`], every newest value's
    /// bytes. Kept up to date as writes and compactions apply (O(1) to read).
    pub fn hot_bytes(&self) -> u64 {
        self.hot
    }

    /// The store's size as raftkv reports it (its "backend size", the figure of
    /// `etcd_mvcc_db_total_size_in_bytes` and of the space quota): [`KvStore::hot_bytes`]
    /// plus every byte appended to the history store, including the values of versions
    /// compaction discarded until a defragmentation (or a rewrite after a compaction)
    /// drops them. Equal on members that applied the same commands and defragmented alike.
    pub fn size_bytes(&self) -> u64 {
        self.hot + self.cold.appended_bytes()
    }

    /// The part of [`KvStore::size_bytes`] still referenced: [`KvStore::hot_bytes`] plus
    /// the values of retained past versions (etcd's "db size in use").
    pub fn size_in_use_bytes(&self) -> u64 {
        self.hot + self.cold_live
    }

    /// Recomputes [`KvStore::hot_bytes`] from the index (after a restore or an import).
    pub(crate) fn recount(&mut self) {
        self.hot =
            self.map.range((Bound::Unbounded, Bound::Unbounded)).map(|(k, h)| history_cost(k, h)).sum();
    }

    // ------------------------------------------------------------ apply

    /// Applies a replicated command.
    pub fn apply(&mut self, cmd: Command) -> Result<ApplyResult, KvError> {
        match cmd.request {
            Some(req) => self.apply_request(req),
            None => Err(KvError::InvalidCommand("raftkv: no request in command".into())),
        }
    }

    /// Applies the operation of a command.
    pub fn apply_request(&mut self, req: Request) -> Result<ApplyResult, KvError> {
        match req {
            Request::Range(r) => self.range(&r).map(ApplyResult::Range),
            Request::Put(r) => self.put(r).map(ApplyResult::Put),
            Request::DeleteRange(r) => self.delete_range(&r).map(ApplyResult::DeleteRange),
            Request::Txn(r) => self.txn(&r).map(ApplyResult::Txn),
            Request::Compaction(r) => self.compact(&r).map(ApplyResult::Compaction),
            Request::LeaseGrant(r) => self.lease_grant(&r).map(ApplyResult::LeaseGrant),
            Request::LeaseRevoke(r) => self.lease_revoke(&r).map(ApplyResult::LeaseRevoke),
            Request::LeaseCheckpoint(r) => Ok(self.lease_checkpoint(&r)),
            // Alarms are the server's state, applied before the store sees a command.
            Request::Alarm(_) => {
                Err(KvError::InvalidCommand("raftkv: an alarm is not a key-value command".into()))
            }
            // The auth state is the server's (see `AuthStore`), never applied here.
            Request::Auth(_) => {
                Err(KvError::InvalidCommand("an auth command applied to the key-value store".into()))
            }
        }
    }

    pub(crate) fn commit(&mut self, ctx: &WriteCtx) -> i64 {
        if ctx.changes > 0 {
            self.rev = ctx.write_rev();
        }
        self.rev
    }

    /// Puts a key (a write; normally reached through [`KvStore::apply`]).
    pub fn put(&mut self, req: PutRequest) -> Result<PutResponse, KvError> {
        validate_put(&req)?;
        self.check_lease(req.lease)?;
        if (req.ignore_value || req.ignore_lease) && self.visible(&req.key, self.rev).is_none() {
            return Err(KvError::KeyNotFound);
        }
        let mut ctx = WriteCtx { begin: self.rev, changes: 0 };
        let resp = self.do_put(&mut ctx, req);
        self.commit(&ctx);
        Ok(resp)
    }

    /// Deletes a key or range (a write; normally reached through [`KvStore::apply`]).
    pub fn delete_range(&mut self, req: &DeleteRangeRequest) -> Result<DeleteRangeResponse, KvError> {
        validate_delete_range(req)?;
        let mut ctx = WriteCtx { begin: self.rev, changes: 0 };
        let resp = self.do_delete(&mut ctx, req);
        self.commit(&ctx);
        Ok(resp)
    }

    /// Runs a transaction (normally reached through [`KvStore::apply`]).
    pub fn txn(&mut self, req: &TxnRequest) -> Result<TxnResponse, KvError> {
        validate_txn(req, self.config.max_txn_ops)?;
        let begin = self.rev;
        let mut path = Vec::new();
        self.compare_path(req, begin, &mut path)?;
        if !is_txn_read_only(req) {
            self.check_path(req, &path, &mut 0, &|s, op| s.check_put_op(op))?;
        }
        self.check_path(req, &path, &mut 0, &|s, op| s.check_range_op(op))?;
        let mut ctx = WriteCtx { begin, changes: 0 };
        let mut failed = None;
        let mut resp = self.apply_txn(&mut ctx, req, &path, &mut 0, &mut failed);
        let rev = self.commit(&ctx);
        // Reading a past version failed: the writes are applied (alike on every
        // replica); the client gets the error instead of the responses.
        if let Some(e) = failed {
            return Err(e);
        }
        resp.header = header(rev);
        Ok(resp)
    }

    /// Evaluates a transaction without changing the store. Only for
    /// transactions whose operations are all ranges ([`crate::is_txn_read_only`]);
    /// others are rejected with [`KvError::InvalidCommand`].
    pub fn txn_read_only(&self, req: &TxnRequest) -> Result<TxnResponse, KvError> {
        validate_txn(req, self.config.max_txn_ops)?;
        if !is_txn_read_only(req) {
            return Err(KvError::InvalidCommand("raftkv: txn with writes evaluated read-only".into()));
        }
        let mut path = Vec::new();
        self.compare_path(req, self.rev, &mut path)?;
        self.check_path(req, &path, &mut 0, &|s, op| s.check_range_op(op))?;
        let succeeded = path.first().copied().unwrap_or(true);
        let ops = if succeeded { &req.success } else { &req.failure };
        let mut responses = Vec::with_capacity(ops.len());
        for op in ops {
            let response = match &op.request {
                Some(Op::RequestRange(r)) => Some(OpResp::ResponseRange(self.do_range(r, self.rev)?)),
                _ => None,
            };
            responses.push(ResponseOp { response });
        }
        Ok(TxnResponse { header: header(self.rev), succeeded, responses })
    }

    /// Compacts the history: revisions below `req.revision` can no longer be
    /// read; for each key only the version visible at that revision (if live)
    /// and newer versions are kept.
    pub fn compact(&mut self, req: &CompactionRequest) -> Result<CompactionResponse, KvError> {
        let rev = req.revision;
        if rev <= self.compacted {
            return Err(KvError::Compacted);
        }
        if rev > self.rev {
            return Err(KvError::FutureRev);
        }
        self.compacted = rev;
        if self.pins > 0 {
            // A snapshot is reading the versions below `rev`; reads already refuse them.
            self.compaction_deferred = true;
        } else {
            self.discard_compacted();
        }
        Ok(CompactionResponse { header: header(self.rev) })
    }

    /// Drops the versions that compaction at `self.compacted` made unreadable. Their values
    /// stay in the cold store until a defragmentation rewrites it ([`KvStore::rewrite_due`]).
    pub(crate) fn discard_compacted(&mut self) {
        let compacted = self.compacted;
        let mut freed = 0u64;
        let mut hot = 0u64;
        let leases = &mut self.leases;
        self.map.retain(|k, h| {
            let keep = retained(&h.revs, i64::MAX, compacted);
            if keep.start > 0 || keep.end < h.revs.len() {
                if leases.has_attached() {
                    for r in &h.revs[..keep.start] {
                        leases.forget_version(r.main, r.sub);
                    }
                }
                // Every version but the newest has its value in the cold store.
                let cold_end = keep.start.min(h.revs.len().saturating_sub(1));
                freed += KeyHistory::cold_bytes(&h.revs[..cold_end]);
                if keep.is_empty() {
                    return false;
                }
                h.revs.drain(..keep.start);
                if h.revs.capacity() > 2 * h.revs.len() + 4 {
                    h.revs.shrink_to_fit();
                }
            }
            if h.revs.is_empty() {
                return false;
            }
            hot += history_cost(k, h);
            true
        });
        self.hot = hot;
        self.cold_live = self.cold_live.saturating_sub(freed);
    }

    /// Whether compaction has left enough garbage in the cold store that it should be
    /// rewritten: at least the store's threshold ([`ColdStore::set_rewrite_threshold`]) and
    /// at least as much as the live values. The rewrite is a defragmentation
    /// ([`KvStore::defrag_begin`]), run off the apply path by whoever embeds the store.
    pub fn rewrite_due(&self) -> bool {
        let garbage = self.cold.appended_bytes().saturating_sub(self.cold_live);
        garbage > 0 && garbage >= self.cold.rewrite_threshold() && garbage >= self.cold_live
    }

    /// The value of version `i` of `h` (the newest one is in memory).
    pub(crate) fn value_of(&self, h: &KeyHistory, i: usize) -> std::io::Result<Bytes> {
        value_in(&self.cold, h, i)
    }

    fn to_kv(&self, key: Bytes, h: &KeyHistory, i: usize, keys_only: bool) -> Result<KeyValue, KvError> {
        let mut kv = to_kv(&self.cold, key, h, i, keys_only)?;
        kv.lease = self.leases.lease_of(h.revs[i].main, h.revs[i].sub);
        Ok(kv)
    }

    /// The lease of `h`'s newest version, if it is live (0: none).
    fn newest_lease(&self, h: &KeyHistory) -> i64 {
        match h.newest_live() {
            Some(i) => self.leases.lease_of(h.revs[i].main, h.revs[i].sub),
            None => 0,
        }
    }

    /// The lease `key`'s current version holds (0: none or no such key).
    pub fn lease_of_key(&self, key: &[u8]) -> i64 {
        self.map.get(key).map_or(0, |h| self.newest_lease(h))
    }

    /// The replicated lease table.
    pub fn leases(&self) -> &LeaseTable {
        &self.leases
    }

    // ------------------------------------------------------------ reads

    /// Serves a range read at the current (or the requested past) revision.
    pub fn range(&self, req: &RangeRequest) -> Result<RangeResponse, KvError> {
        validate_range(req)?;
        self.do_range(req, self.rev)
    }

    fn visible(&self, key: &[u8], rev: i64) -> Option<usize> {
        self.map.get(key)?.at(rev)
    }

    fn do_range(&self, req: &RangeRequest, cur: i64) -> Result<RangeResponse, KvError> {
        let mut rev = req.revision;
        if rev > cur {
            return Err(KvError::FutureRev);
        }
        if rev <= 0 {
            rev = cur;
        }
        if rev < self.compacted {
            return Err(KvError::Compacted);
        }
        let filtered = req.min_mod_revision != 0
            || req.max_mod_revision != 0
            || req.min_create_revision != 0
            || req.max_create_revision != 0;
        // Like etcd: sorting or filtering reads everything, then truncates;
        // otherwise read one extra entry to know whether there are more.
        let mut fetch = req.limit;
        if req.sort_order != SortOrder::None as i32 || filtered {
            fetch = 0;
        }
        if fetch > 0 {
            fetch = fetch.saturating_add(1);
        }
        let fetch = if fetch > 0 { usize::try_from(fetch).unwrap_or(usize::MAX) } else { usize::MAX };

        let mut kvs: Vec<KeyValue> = Vec::new();
        let mut count: i64 = 0;
        if let Some(bounds) = key_bounds(&req.key, &req.range_end) {
            if req.range_end.is_empty() {
                // Point read: skip the range iterator.
                if let Some((h, i)) = self.map.get(&req.key[..]).and_then(|h| Some((h, h.at(rev)?))) {
                    count = 1;
                    if !req.count_only {
                        // The request's key is the stored key: no copy.
                        kvs.push(self.to_kv(req.key.clone(), h, i, req.keys_only)?);
                    }
                }
            } else {
                for (k, h) in self.map.range(bounds) {
                    if let Some(i) = h.at(rev) {
                        count += 1;
                        if !req.count_only && kvs.len() < fetch {
                            kvs.push(self.to_kv(Bytes::copy_from_slice(k), h, i, req.keys_only)?);
                        }
                    }
                }
            }
        }

        if filtered {
            kvs.retain(|kv| {
                !(req.max_mod_revision != 0 && kv.mod_revision > req.max_mod_revision
                    || req.min_mod_revision != 0 && kv.mod_revision < req.min_mod_revision
                    || req.max_create_revision != 0 && kv.create_revision > req.max_create_revision
                    || req.min_create_revision != 0 && kv.create_revision < req.min_create_revision)
            });
        }

        sort_kvs(&mut kvs, req.sort_order, req.sort_target);

        let mut more = false;
        if req.limit > 0 {
            let limit = usize::try_from(req.limit).unwrap_or(usize::MAX);
            if kvs.len() > limit {
                kvs.truncate(limit);
                more = true;
            }
        }
        Ok(RangeResponse { header: header(cur), kvs, more, count })
    }

    // ------------------------------------------------------------ writes

    fn check_lease(&self, lease: i64) -> Result<(), KvError> {
        if lease != 0 && self.config.lease_policy == LeasePolicy::Reject && !self.leases.contains(lease) {
            return Err(KvError::LeaseNotFound);
        }
        Ok(())
    }

    /// Writes see the newest version of each key: every retained version is at or below
    /// the read revision of the write (`ctx.read_rev()`), so what a write depends on is
    /// always in memory and applying never reads the cold store.
    fn do_put(&mut self, ctx: &mut WriteCtx, req: PutRequest) -> PutResponse {
        let rev = ctx.write_rev();
        let sub = sub_u32(ctx.changes);
        ctx.changes += 1;
        let PutRequest { key, value, prev_kv, ignore_value, ignore_lease, lease, .. } = req;
        // The request was decoded without copying, so `value` may be a slice of a large
        // buffer (a log entry batch, a network frame); as a key's newest value it can live
        // for a long time, and must not keep that whole buffer alive.
        let value = Bytes::copy_from_slice(&value);
        // The lease the key held, and the one it holds now (the same with ignore_lease).
        // Without any leased version there is nothing to look up (a put's second index
        // lookup otherwise, on every member).
        let old_lease = if self.leases.has_attached() {
            self.map.get(&key[..]).map_or(0, |h| self.newest_lease(h))
        } else {
            0
        };
        let new_lease = if ignore_lease {
            old_lease
        } else if self.leases.contains(lease) {
            lease
        } else {
            0 // LeasePolicy::Ignore
        };
        if old_lease != 0 && old_lease != new_lease {
            self.leases.detach(old_lease, &key);
        }
        if new_lease != 0 {
            self.leases.attach(new_lease, &key, rev, sub);
        }
        let mut resp = PutResponse { header: header(rev), prev_kv: None };
        let capturing = self.changes.is_some();
        let KvStore { map, cold, cold_live, hot, .. } = self;
        let (r, value, prev) = match map.get_mut(&key[..]) {
            Some(h) => {
                debug_assert_eq!(h.at(ctx.read_rev()), h.newest_live());
                let mut prev = None;
                let (create, version, value) = match h.newest_live() {
                    Some(i) => {
                        let p = h.revs[i];
                        if prev_kv || capturing {
                            prev = Some(KeyValue { lease: old_lease, ..newest_kv(key.clone(), h) });
                        }
                        let value = if ignore_value { h.latest.clone() } else { value };
                        (p.create, p.version + 1, value)
                    }
                    // Unreachable after the checks when ignore_value is set.
                    None => (rev, 1, if ignore_value { Bytes::new() } else { value }),
                };
                let r = Rev { main: rev, sub, create, version, vlen: len_u32(&value), pos: 0 };
                // Cloning a value may allocate (Bytes promotes its buffer): only to capture.
                let captured = if capturing { value.clone() } else { Bytes::new() };
                *hot = (*hot + REV_COST + value.len() as u64).saturating_sub(h.latest.len() as u64);
                h.push(cold, cold_live, r, value);
                (r, captured, prev)
            }
            None => {
                let value = if ignore_value { Bytes::new() } else { value };
                let r = Rev { main: rev, sub, create: rev, version: 1, vlen: len_u32(&value), pos: 0 };
                let captured = if capturing { value.clone() } else { Bytes::new() };
                let h = KeyHistory { revs: vec![r], latest: value };
                *hot += history_cost(&key, &h);
                map.insert(Key::from_slice(&key), h);
                (r, captured, None)
            }
        };
        if capturing {
            self.capture_put(&key, &r, &value, new_lease, prev.clone());
        }
        if prev_kv {
            resp.prev_kv = prev;
        }
        resp
    }

    /// Like [`KvStore::do_put`], reads only the newest versions.
    pub(crate) fn do_delete(&mut self, ctx: &mut WriteCtx, req: &DeleteRangeRequest) -> DeleteRangeResponse {
        let rev = ctx.write_rev();
        let mut deleted = 0i64;
        let mut prev_kvs = Vec::new();
        let KvStore { map, cold, cold_live, changes, leases, hot, .. } = self;
        if let Some(bounds) = key_bounds(&req.key, &req.range_end) {
            map.for_each_in_range_mut(bounds, |k, h| {
                debug_assert_eq!(h.at(ctx.read_rev()), h.newest_live());
                if h.newest_live().is_none() {
                    return;
                }
                let lease = h.revs.last().map_or(0, |r| leases.lease_of(r.main, r.sub));
                if req.prev_kv {
                    prev_kvs.push(KeyValue { lease, ..newest_kv(Bytes::copy_from_slice(k), h) });
                }
                if lease != 0 {
                    leases.detach(lease, k);
                }
                if changes.is_some() {
                    let prev = KeyValue { lease, ..newest_kv(Bytes::copy_from_slice(k), h) };
                    KvStore::capture_delete(changes, k, rev, prev);
                }
                deleted += 1;
                let r = Rev { main: rev, sub: sub_u32(ctx.changes), create: 0, version: 0, vlen: 0, pos: 0 };
                *hot = (*hot + REV_COST).saturating_sub(h.latest.len() as u64);
                h.push(cold, cold_live, r, Bytes::new());
                ctx.changes += 1;
            });
        }
        let revision = if ctx.changes > 0 { rev } else { ctx.begin };
        DeleteRangeResponse { header: header(revision), deleted, prev_kvs }
    }

    // ------------------------------------------------------------ txn

    /// Evaluates the compares of `req` and of the nested transactions on the
    /// taken branches, all against revision `rev` (the state before the
    /// transaction), in pre-order.
    fn compare_path(&self, req: &TxnRequest, rev: i64, path: &mut Vec<bool>) -> Result<(), KvError> {
        let mut ok = true;
        for c in &req.compare {
            if !self.eval_compare(c, rev)? {
                ok = false;
                break;
            }
        }
        path.push(ok);
        let ops = if ok { &req.success } else { &req.failure };
        for op in ops {
            if let Some(Op::RequestTxn(t)) = &op.request {
                self.compare_path(t, rev, path)?;
            }
        }
        Ok(())
    }

    fn eval_compare(&self, c: &Compare, rev: i64) -> Result<bool, KvError> {
        let end: &[u8] = &c.range_end;
        let Some(bounds) = key_bounds(&c.key, end) else {
            return Ok(self.compare_missing(c));
        };
        let mut any = false;
        let by_value = c.target == CompareTarget::Value as i32;
        for (_, h) in self.map.range(bounds) {
            if let Some(i) = h.at(rev) {
                any = true;
                let value = if by_value { self.value_of(h, i).map_err(KvError::cold)? } else { Bytes::new() };
                let r = &h.revs[i];
                let lease = self.leases.lease_of(r.main, r.sub);
                if !compare_entry(c, r.create, r.main, r.version, lease, &value) {
                    return Ok(false);
                }
            }
        }
        Ok(any || self.compare_missing(c))
    }

    /// Compare against a key that does not exist: a value compare always
    /// fails; others compare against zero.
    fn compare_missing(&self, c: &Compare) -> bool {
        if c.target == CompareTarget::Value as i32 {
            return false;
        }
        compare_entry(c, 0, 0, 0, 0, &[])
    }

    /// Walks the operations of the taken branches (pre-order, like
    /// `compare_path`) running `check` on each non-txn operation.
    fn check_path(
        &self,
        req: &TxnRequest,
        path: &[bool],
        pos: &mut usize,
        check: &dyn Fn(&Self, &RequestOp) -> Result<(), KvError>,
    ) -> Result<(), KvError> {
        let ok = path.get(*pos).copied().unwrap_or(false);
        *pos += 1;
        let ops = if ok { &req.success } else { &req.failure };
        for op in ops {
            match &op.request {
                Some(Op::RequestTxn(t)) => self.check_path(t, path, pos, check)?,
                _ => check(self, op)?,
            }
        }
        Ok(())
    }

    fn check_put_op(&self, op: &RequestOp) -> Result<(), KvError> {
        let Some(Op::RequestPut(p)) = &op.request else { return Ok(()) };
        if (p.ignore_value || p.ignore_lease) && self.visible(&p.key, self.rev).is_none() {
            return Err(KvError::KeyNotFound);
        }
        self.check_lease(p.lease)
    }

    fn check_range_op(&self, op: &RequestOp) -> Result<(), KvError> {
        let Some(Op::RequestRange(r)) = &op.request else { return Ok(()) };
        if r.revision == 0 {
            Ok(())
        } else if r.revision > self.rev {
            Err(KvError::FutureRev)
        } else if r.revision < self.compacted {
            Err(KvError::Compacted)
        } else {
            Ok(())
        }
    }

    fn apply_txn(
        &mut self,
        ctx: &mut WriteCtx,
        req: &TxnRequest,
        path: &[bool],
        pos: &mut usize,
        failed: &mut Option<KvError>,
    ) -> TxnResponse {
        let succeeded = path.get(*pos).copied().unwrap_or(false);
        *pos += 1;
        let ops = if succeeded { &req.success } else { &req.failure };
        let mut responses = Vec::with_capacity(ops.len());
        for op in ops {
            let response = match &op.request {
                Some(Op::RequestRange(r)) => {
                    // Revisions were checked beforehand; only reading a past version
                    // from the cold store can fail, which changes no state.
                    let rr = self.do_range(r, ctx.read_rev()).unwrap_or_else(|e| {
                        failed.get_or_insert(e);
                        RangeResponse::default()
                    });
                    Some(OpResp::ResponseRange(rr))
                }
                Some(Op::RequestPut(p)) => Some(OpResp::ResponsePut(self.do_put(ctx, p.clone()))),
                Some(Op::RequestDeleteRange(d)) => Some(OpResp::ResponseDeleteRange(self.do_delete(ctx, d))),
                Some(Op::RequestTxn(t)) => {
                    // Like etcd, a nested response header carries no revision.
                    let mut r = self.apply_txn(ctx, t, path, pos, failed);
                    r.header = Some(ResponseHeader::default());
                    Some(OpResp::ResponseTxn(r))
                }
                None => None,
            };
            responses.push(ResponseOp { response });
        }
        TxnResponse { header: None, succeeded, responses }
    }
}

/// The value of version `i` of `h`, whose older values are in `cold`.
pub(crate) fn value_in(cold: &ColdStore, h: &KeyHistory, i: usize) -> std::io::Result<Bytes> {
    if i + 1 == h.revs.len() {
        return Ok(h.latest.clone());
    }
    let r = h.revs.get(i).ok_or_else(|| std::io::Error::other("no such version"))?;
    cold.read(r.pos, r.vlen)
}

/// The newest version of `h` as a KeyValue (its value is in memory).
fn newest_kv(key: Bytes, h: &KeyHistory) -> KeyValue {
    let r = h.revs.last().copied().unwrap_or(Rev { main: 0, create: 0, version: 0, sub: 0, vlen: 0, pos: 0 });
    KeyValue {
        key,
        create_revision: r.create,
        mod_revision: r.main,
        version: r.version,
        value: h.latest.clone(),
        lease: 0,
    }
}

fn sub_u32(changes: i64) -> u32 {
    // A transaction cannot change 2^32 keys: it would not fit in memory.
    u32::try_from(changes).unwrap_or(u32::MAX)
}

fn len_u32(value: &[u8]) -> u32 {
    // Values are bounded by the request size limit, far below 4 GiB (see validate_put).
    u32::try_from(value.len()).unwrap_or(u32::MAX)
}

fn to_kv(
    cold: &ColdStore,
    key: Bytes,
    h: &KeyHistory,
    i: usize,
    keys_only: bool,
) -> Result<KeyValue, KvError> {
    let r = h.revs[i];
    let value = if keys_only { Bytes::new() } else { value_in(cold, h, i).map_err(KvError::cold)? };
    Ok(KeyValue { key, create_revision: r.create, mod_revision: r.main, version: r.version, value, lease: 0 })
}

fn compare_entry(c: &Compare, create: i64, modr: i64, version: i64, lease: i64, value: &[u8]) -> bool {
    let tu = c.target_union.as_ref();
    let ord = match CompareTarget::try_from(c.target) {
        Ok(CompareTarget::Value) => {
            let want: &[u8] = match tu {
                Some(TargetUnion::Value(v)) => v,
                _ => &[],
            };
            value.cmp(want)
        }
        Ok(CompareTarget::Create) => create.cmp(&match tu {
            Some(TargetUnion::CreateRevision(v)) => *v,
            _ => 0,
        }),
        Ok(CompareTarget::Mod) => modr.cmp(&match tu {
            Some(TargetUnion::ModRevision(v)) => *v,
            _ => 0,
        }),
        Ok(CompareTarget::Version) => version.cmp(&match tu {
            Some(TargetUnion::Version(v)) => *v,
            _ => 0,
        }),
        Ok(CompareTarget::Lease) => lease.cmp(&match tu {
            Some(TargetUnion::Lease(v)) => *v,
            _ => 0,
        }),
        Err(_) => Ordering::Equal,
    };
    match CompareResult::try_from(c.result) {
        Ok(CompareResult::Equal) => ord == Ordering::Equal,
        Ok(CompareResult::NotEqual) => ord != Ordering::Equal,
        Ok(CompareResult::Greater) => ord == Ordering::Greater,
        Ok(CompareResult::Less) => ord == Ordering::Less,
        Err(_) => true,
    }
}

/// Sorts like etcd: results are in key order already; with order NONE and a
/// target other than KEY the order is ascending. Sorting is stable, so ties
/// stay in key order (for either direction).
fn sort_kvs(kvs: &mut [KeyValue], order: i32, target: i32) {
    // Unknown enum values: no sorting.
    let Ok(target) = SortTarget::try_from(target) else { return };
    let Ok(mut order) = SortOrder::try_from(order) else { return };
    if target != SortTarget::Key && order == SortOrder::None {
        order = SortOrder::Ascend;
    }
    let cmp: fn(&KeyValue, &KeyValue) -> Ordering = match target {
        SortTarget::Key => |a, b| a.key.cmp(&b.key),
        SortTarget::Version => |a, b| a.version.cmp(&b.version),
        SortTarget::Create => |a, b| a.create_revision.cmp(&b.create_revision),
        SortTarget::Mod => |a, b| a.mod_revision.cmp(&b.mod_revision),
        SortTarget::Value => |a, b| a.value.cmp(&b.value),
    };
    match order {
        SortOrder::None => {}
        SortOrder::Ascend => {
            if target != SortTarget::Key {
                kvs.sort_by(cmp);
            }
        }
        SortOrder::Descend => {
            if target == SortTarget::Key {
                kvs.reverse();
            } else {
                kvs.sort_by(|a, b| cmp(b, a));
            }
        }
    }
}
