//! The replicated state machine of a raftkv member: the MVCC key-value store
//! ([`raftkv_kv::KvStore`]) plus the members' published attributes (client URLs), both in
//! every snapshot. [`KvMachine`] implements [`raftkv_node::StateMachine`], so the member
//! runtime (or a simulator driving its components) applies committed entries to it,
//! snapshots it and restores it.
//!
//! It needs no server code and no directory: [`KvMachine::new`] keeps the history in
//! memory and writes self-contained snapshots. A server adds an on-disk history cache
//! ([`KvMachine::with_hooks`] with [`raftkv_kv::ColdStore::temp_file_in`]), incremental
//! snapshots ([`KvMachine::with_segment_dir`], see [`coldseg`]) and [`Hooks`] that feed its
//! watch streams and metrics.
//!
//! ```
//! use raftkv_api::Command;
//! use raftkv_api::etcdserverpb::PutRequest;
//! use raftkv_kv::KvConfig;
//! use raftkv_kvsm::{KvMachine, Output};
//! use raftkv_node::StateMachine;
//!
//! let mut sm = KvMachine::new(KvConfig::default());
//! // A log entry is an encoded `Command`; its id comes back with the outcome.
//! let put = Command::put(7, PutRequest { key: "k".into(), value: "v".into(), ..Default::default() });
//! let (id, out) = sm.apply(1, &put.encode_to_bytes()).expect("a key-value command");
//! assert_eq!(id, 7);
//! assert!(matches!(out, Output::Kv(Ok(_))));
//!
//! // Snapshot (pin, write, unpin) and restore into another machine.
//! let pin = sm.pin();
//! let mut snapshot = Vec::new();
//! KvMachine::write_snapshot(&pin, &mut snapshot, &mut |f| f(&sm)).expect("snapshot");
//! sm.unpin(pin);
//! let mut copy = KvMachine::new(KvConfig::default());
//! copy.restore(&mut snapshot.as_slice(), snapshot.len() as u64).expect("restore");
//! assert_eq!(copy.kv.digest(), sm.kv.digest());
//! ```

pub mod alarm;
pub mod coldseg;
pub mod registry;
pub mod snapshot;

use std::collections::BTreeMap;
use std::io::{self, BufReader, Read, Write};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use raftkv_api::raftkvpb::AuthCommand;
use raftkv_api::raftkvpb::auth_command::Op as AuthOp;
use raftkv_api::{Command, Request};
use raftkv_kv::{ApplyResult, AuthError, AuthStore, ColdStore, KvConfig, KvError, KvStore, SnapshotPoint};
use raftkv_node::{StateMachine, StateMachineError, Visit};
use serde::{Deserialize, Serialize};

use crate::coldseg::{ColdChain, SharedChain};
pub use crate::snapshot::{SnapshotError, write_store_snapshot};
use crate::snapshot::{Trailer, read_full, write_full};

/// What the embedding server does around the state machine (feed watch streams, record
/// metrics). Every method defaults to doing nothing ([`NoHooks`]).
pub trait Hooks: Send + Sync + 'static {
    /// Called after every applied key-value command, under the state machine's write lock.
    fn after_apply(&self, _kv: &mut KvStore) {}
    /// Called after a snapshot replaced the store, under the state machine's write lock.
    fn restored(&self, _kv: &mut KvStore) {}
    /// A snapshot was written, taking `took`.
    fn snapshot_saved(&self, _took: Duration) {}
    /// A snapshot was restored, taking `took`.
    fn snapshot_restored(&self, _took: Duration) {}
    /// An Authenticate command was applied: `user` holds the simple `token`, issued at auth
    /// revision `issued_at`. Every member applies it, so every member can record the token
    /// (simple tokens live outside the replicated state: not in snapshots, not persisted).
    fn token_issued(&self, _user: &str, _token: &str, _issued_at: u64) {}
    /// An applied auth command voided simple tokens: `Some(user)` that user's (deleted, or a
    /// new password), `None` every token (auth disabled).
    fn tokens_voided(&self, _user: Option<&str>) {}
}

/// What a request path checks on every call, readable without the state machine's lock:
/// updated under the write lock after every applied entry and restore, so a value read here
/// is one the state machine passed through (as if read under the read lock at that moment).
/// Client calls read it instead of queueing for the lock behind the applier.
#[derive(Debug, Default)]
pub struct Published {
    /// The auth revision shifted left once, the low bit set while auth is enabled.
    auth: AtomicU64,
    /// [`KvStore::size_bytes`].
    size_bytes: AtomicU64,
}

impl Published {
    /// Whether auth is enabled, and the auth revision.
    pub fn auth(&self) -> (bool, u64) {
        let v = self.auth.load(Ordering::Acquire);
        (v & 1 == 1, v >> 1)
    }

    /// The store's size as [`KvStore::size_bytes`] gave it after the last applied entry.
    pub fn size_bytes(&self) -> u64 {
        self.size_bytes.load(Ordering::Acquire)
    }
}

/// Hooks that do nothing: a state machine on its own (tests, simulation).
#[derive(Clone, Copy, Debug, Default)]
pub struct NoHooks;

impl Hooks for NoHooks {}

/// First byte of an entry that is not a key-value command. A protobuf-encoded command can
/// never start with 0 (field number 0 does not exist).
const INTERNAL_TAG: u8 = 0;

/// What a member publishes about itself through the log when it starts.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemberAttributes {
    pub id: u64,
    pub name: String,
    pub client_urls: Vec<String>,
}

#[derive(Serialize, Deserialize)]
enum Internal {
    Publish { request_id: u64, attributes: MemberAttributes },
}

/// The outcome of applying one client command.
#[derive(Debug)]
pub enum Output {
    Kv(Result<ApplyResult, KvError>),
    /// An auth command's outcome, or a command refused for a stale auth check.
    Auth(Result<(), AuthError>),
    /// An Authenticate command's outcome: the simple token issued (see [`Hooks::token_issued`]).
    Authenticated(Result<String, AuthError>),
    Published,
    /// An Alarm request, or a command an active alarm refused ([`alarm`]).
    Alarm(alarm::AlarmOutcome),
    /// A membership change was applied (the registry holds the outcome).
    Members,
}

/// The replicated key-value state machine (see the crate documentation).
pub struct KvMachine<H: Hooks = NoHooks> {
    /// The key-value store.
    pub kv: KvStore,
    /// The members' published attributes, by member id.
    pub members: BTreeMap<u64, MemberAttributes>,
    /// Users, roles and permissions (the server's auth checks read them).
    pub auth: AuthStore,
    config: KvConfig,
    /// A write error of the history cache file is being reported (logged once).
    cold_error_logged: bool,
    /// Counts restores: a pin taken outside the driver (HashKV) is only valid, and only
    /// released, on the store it was taken on.
    pub generation: u64,
    /// Where snapshots keep the history in shared segments ([`coldseg`]); without
    /// one, every snapshot holds the whole history.
    chain: Option<SharedChain>,
    /// The chain's directory, readable without its lock: the snapshot thread holds the
    /// lock while it reads the store, so taking it under the store's lock could deadlock.
    segment_dir: Option<PathBuf>,
    /// What the embedding server does around applying and snapshots.
    pub hooks: Arc<H>,
    /// The active alarms ([`alarm`]).
    pub alarms: alarm::Alarms,
    /// The cluster's members as configuration changes left them ([`registry`]).
    pub registry: registry::Registry,
    /// What request paths read without the lock ([`Published`]).
    published: Arc<Published>,
}

impl KvMachine<NoHooks> {
    /// A state machine that keeps superseded values in memory and writes self-contained
    /// snapshots.
    pub fn new(config: KvConfig) -> KvMachine {
        Self::with_cold_store(config, ColdStore::memory())
    }

    /// A state machine that keeps superseded values in `cold` (see [`ColdStore`]); a
    /// restored snapshot gets a fresh store of the same kind.
    pub fn with_cold_store(config: KvConfig, cold: ColdStore) -> KvMachine {
        KvMachine::with_hooks(config, cold, Arc::new(NoHooks))
    }
}

impl<H: Hooks> KvMachine<H> {
    /// A state machine that keeps superseded values in `cold` and calls `hooks`.
    pub fn with_hooks(config: KvConfig, cold: ColdStore, hooks: Arc<H>) -> KvMachine<H> {
        let machine = KvMachine {
            kv: KvStore::with_cold_store(config.clone(), cold),
            members: BTreeMap::new(),
            auth: AuthStore::new(),
            config,
            cold_error_logged: false,
            generation: 0,
            chain: None,
            segment_dir: None,
            hooks,
            alarms: Default::default(),
            registry: Default::default(),
            published: Default::default(),
        };
        machine.publish();
        machine
    }

    /// What request paths read without the lock; the same `Arc` for the machine's life
    /// (restores included).
    pub fn published(&self) -> Arc<Published> {
        self.published.clone()
    }

    /// Updates [`Published`] from the state (after every applied entry and restore; call it
    /// after changing the store outside them, as a defragmentation does).
    pub fn publish(&self) {
        let auth = (self.auth.revision() << 1) | u64::from(self.auth.enabled());
        self.published.auth.store(auth, Ordering::Release);
        self.published.size_bytes.store(self.kv.size_bytes(), Ordering::Release);
    }

    /// Snapshots keep the history in segment files in `dir`, shared by successive
    /// snapshots (incremental snapshots, see [`coldseg`]). Without it every snapshot
    /// holds the whole history.
    pub fn with_segment_dir(mut self, dir: PathBuf) -> KvMachine<H> {
        self.chain = Some(ColdChain::new(dir.clone()));
        self.segment_dir = Some(dir);
        self
    }

    /// Logs when writing the history cache file starts or stops failing (the values are
    /// kept in memory meanwhile; nothing is lost).
    fn report_cold_store(&mut self) {
        match (self.kv.cold_store().write_error(), self.cold_error_logged) {
            (Some(e), false) => {
                tracing::warn!(error = %e, "cannot write the history cache file; keeping past versions in memory");
                self.cold_error_logged = true;
            }
            (None, true) => {
                tracing::info!("history cache file writable again");
                self.cold_error_logged = false;
            }
            _ => {}
        }
    }

    /// Applies an auth command at log index `index`, telling the hooks which simple tokens it
    /// issued or voided.
    fn apply_auth(&mut self, index: u64, cmd: &AuthCommand) -> Output {
        match &cmd.op {
            Some(AuthOp::Authenticate(req)) => {
                let issued = self.auth.authenticate(req).map(|issued_at| {
                    let token = format!("{}.{index}", req.simple_token_prefix);
                    self.hooks.token_issued(&req.name, &token, issued_at);
                    token
                });
                Output::Authenticated(issued)
            }
            op => {
                let out = self.auth.apply(cmd);
                if out.is_ok() {
                    match op {
                        Some(AuthOp::Disable(_)) => self.hooks.tokens_voided(None),
                        Some(AuthOp::UserDelete(r)) => self.hooks.tokens_voided(Some(&r.name)),
                        Some(AuthOp::UserChangePassword(r)) => self.hooks.tokens_voided(Some(&r.name)),
                        _ => {}
                    }
                }
                Output::Auth(out)
            }
        }
    }

    /// [`StateMachine::apply`] before [`KvMachine::publish`].
    fn apply_entry(&mut self, index: u64, data: &[u8]) -> Option<(u64, Output)> {
        if data.first() == Some(&INTERNAL_TAG) {
            return match serde_json::from_slice::<Internal>(&data[1..]) {
                Ok(Internal::Publish { request_id, attributes }) => {
                    self.members.insert(attributes.id, attributes);
                    Some((request_id, Output::Published))
                }
                Err(e) => {
                    tracing::warn!(index, error = %e, "skipping an undecodable internal entry");
                    None
                }
            };
        }
        match Command::decode_from(data) {
            Ok(cmd) => {
                let id = cmd.id;
                if let Some(outcome) = self.alarms.intercept(&cmd) {
                    return Some((id, Output::Alarm(outcome)));
                }
                if let Some(Request::Auth(auth)) = &cmd.request {
                    return Some((id, self.apply_auth(index, auth)));
                }
                if let Some(out) = self.auth.apply_command(&cmd) {
                    return Some((id, Output::Auth(out)));
                }
                let out = self.kv.apply(cmd);
                self.hooks.after_apply(&mut self.kv);
                self.report_cold_store();
                Some((id, Output::Kv(out)))
            }
            Err(e) => {
                // Every replica skips it alike, so replicas stay equal.
                tracing::warn!(index, error = %e, "skipping an undecodable command");
                None
            }
        }
    }

    /// Encodes a publish entry (a member announcing its attributes through the log).
    pub fn encode_publish(request_id: u64, attributes: MemberAttributes) -> Vec<u8> {
        let mut out = vec![INTERNAL_TAG];
        // Serialising a plain struct of strings and integers cannot fail.
        out.extend(serde_json::to_vec(&Internal::Publish { request_id, attributes }).unwrap_or_default());
        out
    }
}

/// A snapshot in progress: the store's pinned point, the members and lease table at the
/// pin, and the segment chain (if snapshots are thin).
pub struct KvPin<H> {
    point: SnapshotPoint,
    trailer: Trailer,
    chain: Option<SharedChain>,
    hooks: Arc<H>,
}

impl<H: Hooks> StateMachine for KvMachine<H> {
    type Output = Output;

    fn apply(&mut self, index: u64, data: &[u8]) -> Option<(u64, Output)> {
        let out = self.apply_entry(index, data);
        self.publish();
        out
    }

    fn apply_conf_change(
        &mut self,
        _index: u64,
        change: &raftkv_node::ConfChange,
        config: &raftkv_node::ClusterConfig,
    ) -> Option<(u64, Output)> {
        self.registry.apply(change, config).map(|id| (id, Output::Members))
    }

    type Pin = KvPin<H>;

    fn pin(&mut self) -> Self::Pin {
        let trailer =
            Trailer::of(&self.kv, &self.members, &self.alarms, Some(&self.registry), Some(&self.auth));
        KvPin { point: self.kv.pin(), trailer, chain: self.chain.clone(), hooks: self.hooks.clone() }
    }

    fn write_snapshot(pin: &Self::Pin, w: &mut dyn Write, visit: &mut Visit<'_, Self>) -> io::Result<()> {
        let started = Instant::now();
        let written = Self::write_snapshot_timed(pin, w, visit);
        if written.is_ok() {
            pin.hooks.snapshot_saved(started.elapsed());
        }
        written
    }

    fn snapshot_durable(pin: &Self::Pin) {
        if let Some(chain) = &pin.chain {
            coldseg::remove_unlisted(chain);
        }
    }

    fn open_snapshot(
        &self,
        r: Box<dyn Read + Send>,
        len: u64,
    ) -> Result<(Box<dyn Read + Send>, u64), StateMachineError> {
        match &self.segment_dir {
            Some(dir) => {
                let (full, len) = coldseg::open_full(r, len, dir)?;
                Ok((Box::new(full), len))
            }
            None => Ok((r, len)),
        }
    }

    fn unpin(&mut self, _pin: Self::Pin) {
        self.kv.unpin();
    }

    fn restore(&mut self, r: &mut dyn Read, len: u64) -> Result<(), StateMachineError> {
        let started = Instant::now();
        self.restore_timed(r, len)?;
        self.publish();
        self.hooks.snapshot_restored(started.elapsed());
        Ok(())
    }
}

impl<H: Hooks> KvMachine<H> {
    /// [`StateMachine::write_snapshot`] without its timing.
    fn write_snapshot_timed(
        pin: &KvPin<H>,
        w: &mut dyn Write,
        visit: &mut Visit<'_, Self>,
    ) -> io::Result<()> {
        let trailer = pin.trailer.encode()?;
        if let Some(chain) = &pin.chain {
            return coldseg::write_thin(chain, &pin.point, &trailer, w, &mut |f| {
                visit(&mut |m: &Self| f(&m.kv))
            });
        }
        write_full(&pin.point, &trailer, w, |f| visit(&mut |m: &Self| f(&m.kv)))
    }

    /// [`StateMachine::restore`] without its timing.
    fn restore_timed(&mut self, r: &mut dyn Read, len: u64) -> Result<(), SnapshotError> {
        // A thin snapshot (this member's own) is expanded with its segments.
        let mut r = match &self.segment_dir {
            Some(dir) => BufReader::new(coldseg::open_full(r, len, dir)?.0),
            None => BufReader::new(coldseg::FullReader::Pass(io::Cursor::new(Vec::new()).chain(r))),
        };
        let cold = self.kv.cold_store().fresh().map_err(SnapshotError::ColdStore)?;
        let (kv, state) = read_full(&mut r, self.config.clone(), cold)?;
        let members = state.members;
        self.alarms = state.alarms;
        if let Some(registry) = state.registry {
            // `version` is not replicated: it moves so that the server acts on the change.
            let version = self.registry.version + 1;
            self.registry = registry::Registry { version, ..registry };
        }
        self.auth = state.auth;
        self.kv = kv;
        self.hooks.restored(&mut self.kv);
        self.members = members;
        self.generation += 1;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use raftkv_api::etcdserverpb::PutRequest;

    #[test]
    fn snapshot_round_trip_with_members_and_garbage_is_rejected() {
        let mut m = KvMachine::new(KvConfig::default());
        let put = Command::put(7, PutRequest { key: "k".into(), value: "v".into(), ..Default::default() });
        let out = m.apply(1, &put.encode_to_bytes());
        assert!(matches!(out, Some((7, Output::Kv(Ok(_))))));
        let attrs =
            MemberAttributes { id: 5, name: "m5".into(), client_urls: vec!["http://127.0.0.1:1".into()] };
        assert!(matches!(
            m.apply(2, &KvMachine::<NoHooks>::encode_publish(9, attrs.clone())),
            Some((9, Output::Published))
        ));
        assert!(m.apply(3, b"\x00garbage").is_none());
        assert!(m.apply(4, b"\xffgarbage").is_none());
        let mut buf = Vec::new();
        let pin = m.pin();
        // A write after the pin is not in the snapshot.
        let later =
            Command::put(8, PutRequest { key: "later".into(), value: "v".into(), ..Default::default() });
        let digest_at_pin = m.kv.digest();
        assert!(matches!(m.apply(5, &later.encode_to_bytes()), Some((8, Output::Kv(Ok(_))))));
        KvMachine::write_snapshot(&pin, &mut buf, &mut |f| f(&m)).expect("snapshot");
        m.unpin(pin);
        let mut other = KvMachine::new(KvConfig::default());
        other.restore(&mut buf.as_slice(), buf.len() as u64).expect("restore");
        assert_eq!(other.kv.digest(), digest_at_pin);
        assert_ne!(other.kv.digest(), m.kv.digest());
        assert_eq!(other.members.get(&5), Some(&attrs));
        let mut bad = buf.clone();
        bad[10] ^= 1;
        assert!(KvMachine::new(KvConfig::default()).restore(&mut bad.as_slice(), bad.len() as u64).is_err());
    }

    /// Leases and the keys they hold survive a snapshot, thin or full.
    #[test]
    fn leases_survive_snapshots() {
        use raftkv_api::etcdserverpb::{LeaseGrantRequest, RangeRequest};
        let dir = tempfile::tempdir().expect("test setup");
        let seg_dir = dir.path().join("history");
        let cold = ColdStore::temp_file_in(dir.path()).expect("test setup");
        let mut m = KvMachine::with_cold_store(KvConfig::default(), cold).with_segment_dir(seg_dir.clone());
        let grant = Command::lease_grant(1, LeaseGrantRequest { id: 42, ttl: 30 });
        assert!(matches!(m.apply(1, &grant.encode_to_bytes()), Some((1, Output::Kv(Ok(_))))));
        let req = PutRequest { key: "k".into(), value: "v".into(), lease: 42, ..Default::default() };
        assert!(matches!(m.apply(2, &Command::put(2, req).encode_to_bytes()), Some((2, Output::Kv(Ok(_))))));
        put(&mut m, 3, "plain", "v");
        let thin = snapshot(&mut m);
        // The same state in a machine without history segments writes a full snapshot.
        let mut plain = KvMachine::new(KvConfig::default());
        for (i, e) in [
            (1, grant.encode_to_bytes()),
            (
                2,
                Command::put(
                    2,
                    PutRequest { key: "k".into(), value: "v".into(), lease: 42, ..Default::default() },
                )
                .encode_to_bytes(),
            ),
        ] {
            assert!(plain.apply(i, &e).is_some());
        }
        put(&mut plain, 3, "plain", "v");
        let full = snapshot(&mut plain);
        for (bytes, with_dir) in [(&thin, true), (&full, false)] {
            let cold = ColdStore::temp_file_in(dir.path()).expect("test setup");
            let mut r = KvMachine::with_cold_store(KvConfig::default(), cold);
            if with_dir {
                r = r.with_segment_dir(seg_dir.clone());
            }
            r.restore(&mut bytes.as_slice(), bytes.len() as u64).expect("restore");
            let l = r.kv.leases().get(42).expect("lease restored");
            assert_eq!((l.ttl, l.keys.len()), (30, 1));
            let got = r.kv.range(&RangeRequest { key: "k".into(), ..Default::default() }).expect("range");
            assert_eq!(got.kvs[0].lease, 42);
            assert_eq!(r.kv.digest(), m.kv.digest());
        }
    }

    fn put(m: &mut KvMachine, index: u64, key: &str, value: &str) {
        let req =
            PutRequest { key: key.to_string().into(), value: value.to_string().into(), ..Default::default() };
        let cmd = Command::put(index, req);
        assert!(matches!(m.apply(index, &cmd.encode_to_bytes()), Some((_, Output::Kv(Ok(_))))));
    }

    fn snapshot(m: &mut KvMachine) -> Vec<u8> {
        let pin = m.pin();
        let mut buf = Vec::new();
        KvMachine::write_snapshot(&pin, &mut buf, &mut |f| f(m)).expect("snapshot");
        KvMachine::snapshot_durable(&pin);
        m.unpin(pin);
        buf
    }

    fn segments(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
        let mut v: Vec<_> =
            std::fs::read_dir(dir).expect("test setup").map(|e| e.expect("test setup").path()).collect();
        v.sort();
        v
    }

    /// Thin snapshots share history segments: the second one writes only the history added
    /// since the first, both expand to exactly the full snapshot of the same state, and a
    /// damaged or missing segment is an error, never a different state.
    #[test]
    fn thin_snapshots_expand_to_the_full_snapshot_and_detect_damage() {
        let dir = tempfile::tempdir().expect("test setup");
        let seg_dir = dir.path().join("history");
        let cold = ColdStore::temp_file_in(dir.path()).expect("test setup");
        let mut m = KvMachine::with_cold_store(KvConfig::default(), cold).with_segment_dir(seg_dir.clone());
        let mut index = 0;
        for round in 0..3 {
            for k in 0..50 {
                index += 1;
                put(
                    &mut m,
                    index,
                    &format!("key{k}"),
                    &format!("value {round} of key {k} {}", "x".repeat(100)),
                );
            }
        }
        let thin1 = snapshot(&mut m);
        assert_eq!(segments(&seg_dir).len(), 1);
        let seg1_len = std::fs::metadata(&segments(&seg_dir)[0]).expect("test setup").len();
        for k in 0..50 {
            index += 1;
            put(&mut m, index, &format!("key{k}"), &format!("value 3 of key {k} {}", "y".repeat(100)));
        }
        let thin2 = snapshot(&mut m);
        let segs = segments(&seg_dir);
        assert_eq!(segs.len(), 2, "the second snapshot adds one segment");
        let seg2_len = std::fs::metadata(&segs[1]).expect("test setup").len();
        assert!(seg2_len < seg1_len, "only the new history: {seg2_len} vs {seg1_len}");
        // The full snapshot of the same state, written the classic way.
        let mut full = Vec::new();
        let pin = m.pin();
        let trailer = pin.trailer.encode().expect("test setup");
        write_full(&pin.point, &trailer, &mut full, |f| f(&m.kv)).expect("test setup");
        m.unpin(pin);
        assert!(full_of(&thin2, &seg_dir) == full, "the expanded thin snapshot differs from the full one");
        // Restoring from the thin snapshot (as after a restart) gives the same state.
        let cold = ColdStore::temp_file_in(dir.path()).expect("test setup");
        let mut restored =
            KvMachine::with_cold_store(KvConfig::default(), cold).with_segment_dir(seg_dir.clone());
        restored.restore(&mut thin2.as_slice(), thin2.len() as u64).expect("restore thin");
        assert_eq!(restored.kv.digest(), m.kv.digest());
        // thin1 is not durable-latest any more, but its segment is still listed by thin2.
        assert!(full_of(&thin1, &seg_dir).len() < full.len());
        // A flipped bit in a segment, or a missing segment, fails the restore.
        let mut bytes = std::fs::read(&segs[0]).expect("test setup");
        bytes[5] ^= 1;
        std::fs::write(&segs[0], &bytes).expect("test setup");
        let cold = ColdStore::temp_file_in(dir.path()).expect("test setup");
        let mut broken =
            KvMachine::with_cold_store(KvConfig::default(), cold).with_segment_dir(seg_dir.clone());
        let err = broken.restore(&mut thin2.as_slice(), thin2.len() as u64).expect_err("must fail");
        assert!(err.to_string().contains("corrupt"), "{err}");
        std::fs::remove_file(&segs[1]).expect("test setup");
        let err = broken.restore(&mut thin2.as_slice(), thin2.len() as u64).expect_err("must fail");
        assert!(err.to_string().contains("history segment"), "{err}");
        // A flipped bit in the thin snapshot itself fails too.
        let mut bad = thin2.clone();
        let at = bad.len() - 10;
        bad[at] ^= 1;
        assert!(broken.restore(&mut bad.as_slice(), bad.len() as u64).is_err());
    }

    /// After a restore (a new cold store), the next snapshot starts a new chain, and once
    /// it is durable the old chain's segments are removed.
    #[test]
    fn a_new_cold_store_starts_a_new_chain_and_old_segments_go() {
        let dir = tempfile::tempdir().expect("test setup");
        let seg_dir = dir.path().join("history");
        let cold = ColdStore::temp_file_in(dir.path()).expect("test setup");
        let mut m = KvMachine::with_cold_store(KvConfig::default(), cold).with_segment_dir(seg_dir.clone());
        for i in 1..=40 {
            put(&mut m, i, &format!("k{}", i % 7), "some value");
        }
        let thin = snapshot(&mut m);
        let old = segments(&seg_dir);
        assert_eq!(old.len(), 1);
        m.restore(&mut thin.as_slice(), thin.len() as u64).expect("restore");
        put(&mut m, 41, "k1", "newer");
        let thin2 = snapshot(&mut m);
        let new = segments(&seg_dir);
        assert_eq!(new.len(), 1);
        assert_ne!(new, old, "a new chain after the restore");
        let cold = ColdStore::temp_file_in(dir.path()).expect("test setup");
        let mut again =
            KvMachine::with_cold_store(KvConfig::default(), cold).with_segment_dir(seg_dir.clone());
        again.restore(&mut thin2.as_slice(), thin2.len() as u64).expect("restore");
        assert_eq!(again.kv.digest(), m.kv.digest());
    }

    fn full_of(thin: &[u8], dir: &std::path::Path) -> Vec<u8> {
        let (mut r, len) = coldseg::open_full(thin, thin.len() as u64, dir).expect("open");
        let mut out = Vec::new();
        r.read_to_end(&mut out).expect("expand");
        assert_eq!(out.len() as u64, len);
        out
    }

    use raftkv_api::etcdserverpb::{AuthEnableRequest, AuthUserGrantRoleRequest};
    use raftkv_api::raftkvpb::auth_command::Op as AuthOp;
    use raftkv_api::raftkvpb::{AuthCommand, AuthUserAdd};

    fn apply_auth(m: &mut KvMachine, index: u64, op: AuthOp) -> Result<(), AuthError> {
        let cmd = Command::auth(index, AuthCommand { op: Some(op) });
        match m.apply(index, &cmd.encode_to_bytes()) {
            Some((_, Output::Auth(result))) => result,
            other => panic!("unexpected output {other:?}"),
        }
    }

    /// What request paths read without the lock follows every applied entry and restore.
    #[test]
    fn published_follows_applied_entries_and_restores() {
        let mut m = KvMachine::new(KvConfig::default());
        let published = m.published();
        assert_eq!(published.auth(), (false, m.auth.revision()));
        let put = Command::put(1, PutRequest { key: "k".into(), value: "v".into(), ..Default::default() });
        assert!(m.apply(1, &put.encode_to_bytes()).is_some());
        assert_eq!(published.size_bytes(), m.kv.size_bytes());
        assert!(published.size_bytes() > 0);
        let user = AuthOp::UserAdd(AuthUserAdd {
            name: "root".into(),
            hashed_password: "h".into(),
            no_password: false,
        });
        apply_auth(&mut m, 2, user).expect("add");
        let grant =
            AuthOp::UserGrantRole(AuthUserGrantRoleRequest { user: "root".into(), role: "root".into() });
        apply_auth(&mut m, 3, grant).expect("grant");
        apply_auth(&mut m, 4, AuthOp::Enable(AuthEnableRequest {})).expect("enable");
        assert_eq!(published.auth(), (true, m.auth.revision()));
        // A restore of a state without auth: the same handle reads the restored state.
        let mut fresh = KvMachine::new(KvConfig::default());
        let pin = fresh.pin();
        let mut buf = Vec::new();
        KvMachine::write_snapshot(&pin, &mut buf, &mut |f| f(&fresh)).expect("snapshot");
        fresh.unpin(pin);
        m.restore(&mut buf.as_slice(), buf.len() as u64).expect("restore");
        assert_eq!(published.auth(), (false, m.auth.revision()));
        assert_eq!(published.size_bytes(), m.kv.size_bytes());
    }

    /// The auth state is applied through the log, refuses stale permission checks, and
    /// survives a snapshot; a snapshot without it (older, or with no auth use) restores as
    /// auth disabled with no users.
    #[test]
    fn auth_state_through_the_state_machine_and_snapshots() {
        let mut m = KvMachine::new(KvConfig::default());
        let user = |name: &str| {
            AuthOp::UserAdd(AuthUserAdd {
                name: name.into(),
                hashed_password: "h".into(),
                no_password: false,
            })
        };
        apply_auth(&mut m, 1, user("root")).expect("add");
        let grant =
            AuthOp::UserGrantRole(AuthUserGrantRoleRequest { user: "root".into(), role: "root".into() });
        apply_auth(&mut m, 2, grant).expect("grant");
        apply_auth(&mut m, 3, AuthOp::Enable(AuthEnableRequest {})).expect("enable");
        // A published member too: the members map must read back beside the auth state.
        let attrs = MemberAttributes { id: 7, name: "m7".into(), client_urls: vec![] };
        assert!(m.apply(10, &KvMachine::<NoHooks>::encode_publish(1, attrs.clone())).is_some());
        assert_eq!(apply_auth(&mut m, 4, user("root")), Err(AuthError::UserAlreadyExist));
        // A put checked against an older auth revision is refused; a current one applies.
        let mut put =
            Command::put(5, PutRequest { key: "k".into(), value: "v".into(), ..Default::default() });
        put.auth_revision = m.auth.revision() - 1;
        assert!(matches!(
            m.apply(5, &put.encode_to_bytes()),
            Some((5, Output::Auth(Err(AuthError::AuthOldRevision))))
        ));
        put.auth_revision = m.auth.revision();
        assert!(matches!(m.apply(6, &put.encode_to_bytes()), Some((5, Output::Kv(Ok(_))))));
        let pin = m.pin();
        let mut buf = Vec::new();
        KvMachine::write_snapshot(&pin, &mut buf, &mut |f| f(&m)).expect("snapshot");
        m.unpin(pin);
        let mut other = KvMachine::new(KvConfig::default());
        other.restore(&mut buf.as_slice(), buf.len() as u64).expect("restore");
        assert_eq!(other.auth.export(), m.auth.export());
        assert_eq!(other.members.get(&7), Some(&attrs));
        assert!(other.auth.enabled());
        // A snapshot of a machine that never used auth: restoring it turns auth off.
        let fresh = KvMachine::new(KvConfig::default());
        let mut fresh = fresh;
        let pin = fresh.pin();
        let mut plain = Vec::new();
        KvMachine::write_snapshot(&pin, &mut plain, &mut |f| f(&fresh)).expect("snapshot");
        fresh.unpin(pin);
        other.restore(&mut plain.as_slice(), plain.len() as u64).expect("restore");
        assert!(!other.auth.enabled());
        assert!(other.auth.user_names().is_empty());
    }

    /// Hooks that record the simple tokens they are told about.
    #[derive(Default)]
    struct TokenLog(std::sync::Mutex<Vec<String>>);

    impl Hooks for TokenLog {
        fn token_issued(&self, user: &str, token: &str, issued_at: u64) {
            self.0.lock().expect("test lock").push(format!("{user} {token} {issued_at}"));
        }
        fn tokens_voided(&self, user: Option<&str>) {
            self.0.lock().expect("test lock").push(format!("void {}", user.unwrap_or("*")));
        }
    }

    /// Authenticate through the log: the token is `<prefix>.<index>`, handed to the hooks
    /// with the auth revision; a password change, a delete and disabling auth void tokens.
    #[test]
    fn authenticate_issues_tokens_through_the_hooks() {
        use raftkv_api::etcdserverpb::{AuthDisableRequest, AuthUserDeleteRequest};
        use raftkv_api::raftkvpb::{AuthAuthenticate, AuthUserChangePassword};
        let hooks = Arc::new(TokenLog::default());
        let mut m = KvMachine::with_hooks(KvConfig::default(), ColdStore::memory(), hooks.clone());
        let apply = |m: &mut KvMachine<TokenLog>, index: u64, op: AuthOp| {
            let cmd = Command::auth(index, AuthCommand { op: Some(op) });
            m.apply(index, &cmd.encode_to_bytes()).map(|(_, out)| out)
        };
        let user = |name: &str| {
            AuthOp::UserAdd(AuthUserAdd {
                name: name.into(),
                hashed_password: "h".into(),
                no_password: false,
            })
        };
        let authenticate = |name: &str, checked_revision: u64| {
            AuthOp::Authenticate(AuthAuthenticate {
                name: name.into(),
                checked_revision,
                simple_token_prefix: "abc".into(),
            })
        };
        apply(&mut m, 1, user("root"));
        apply(
            &mut m,
            2,
            AuthOp::UserGrantRole(AuthUserGrantRoleRequest { user: "root".into(), role: "root".into() }),
        );
        apply(&mut m, 3, AuthOp::Enable(AuthEnableRequest {}));
        let rev = m.auth.revision();
        match apply(&mut m, 4, authenticate("root", rev)) {
            Some(Output::Authenticated(Ok(token))) => assert_eq!(token, "abc.4"),
            other => panic!("unexpected {other:?}"),
        }
        assert_eq!(m.auth.revision(), rev, "issuing a token changes no auth state");
        assert!(matches!(
            apply(&mut m, 5, authenticate("ghost", rev)),
            Some(Output::Authenticated(Err(AuthError::AuthFailed)))
        ));
        apply(&mut m, 6, user("u"));
        apply(
            &mut m,
            7,
            AuthOp::UserChangePassword(AuthUserChangePassword {
                name: "u".into(),
                hashed_password: "h2".into(),
            }),
        );
        apply(&mut m, 8, AuthOp::UserDelete(AuthUserDeleteRequest { name: "u".into() }));
        // A failed command voids nothing.
        apply(&mut m, 9, AuthOp::UserDelete(AuthUserDeleteRequest { name: "u".into() }));
        apply(&mut m, 10, AuthOp::Disable(AuthDisableRequest {}));
        let log = hooks.0.lock().expect("test lock").clone();
        assert_eq!(log, [format!("root abc.4 {rev}"), "void u".into(), "void u".into(), "void *".into()]);
    }
}
