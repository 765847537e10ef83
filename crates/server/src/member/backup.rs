//! Backups in etcd's format, so data moves both ways between raftkv and etcd 3.4.
//!
//! * `Maintenance.Snapshot` (`etcdctl snapshot save`) streams the member's state as an
//!   etcd v3 backend file: a bbolt database ([`crate::member::bolt`]) with etcd's buckets, followed
//!   by the sha256 of the database, as etcd sends it. `etcdctl snapshot status` reads it and
//!   `etcdctl snapshot restore` turns it into an etcd data dir.
//! * `raftkv snapshot restore FILE` builds a new member's data dir from such a file, saved
//!   from raftkv or from etcd 3.4, keeping every key's history, versions and revisions and
//!   rewriting the members, as `etcdctl snapshot restore` does.
//!
//! etcd's layout (release 3.4, `mvcc/kvstore.go`, `etcdserver/api/membership/store.go`):
//!
//! | bucket | key | value |
//! | --- | --- | --- |
//! | `key` | revision: main (8 bytes BE), `_`, sub (8 bytes BE), plus `t` for a deletion | `mvccpb.KeyValue` (a deletion: only the key) |
//! | `meta` | `consistent_index` | applied Raft index, 8 bytes BE |
//! | `meta` | `finishedCompactRev`, `scheduledCompactRev` | a revision key (main, `_`, sub 0) |
//! | `members` | member id in hex | JSON `{"id","peerURLs","name","clientURLs"}` |
//! | `cluster` | `clusterVersion` | `3.4.0` |
//! | `lease` | lease id, 8 bytes BE | `leasepb.Lease`: ID (1), TTL (2), RemainingTTL (3), all int64 |
//! | `auth` | `authEnabled`, `authRevision` | 1 byte (1: enabled); the auth revision, 8 bytes BE |
//! | `authUsers` | user name | `authpb.User`: name (1), bcrypt hash (2), roles (3), options (4: `no_password` 1) |
//! | `authRoles` | role name | `authpb.Role`: name (1), `Permission`s (2: type 1, key 2, range_end 3) |
//! | `alarm`, `members_removed` | | |
//!
//! The `key` bucket is in revision order while raftkv keeps histories per key, so the
//! export spills the versions to an unnamed file and sorts an index of (revision, offset,
//! length): memory holds 24 bytes per version, not the values.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{self, BufWriter, Read, Seek, SeekFrom, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use bytes::Bytes;
use raftkv_api::etcdserverpb::{ResponseHeader, SnapshotResponse};
use raftkv_api::mvccpb::KeyValue;
use raftkv_api::prost::Message;
use raftkv_kv::{
    AuthState, AuthStore, ColdStore, KvConfig, KvImporter, KvStore, LeasePolicy, LeaseRecord, Permission,
    Role, SnapshotPoint, User, Version,
};
use sha2::{Digest, Sha256};
use tonic::Status;

use crate::api::service::Api;
use crate::member::bolt::{BoltError, BoltReader, BoltWriter, BucketRoot};
use crate::member::identity::{ClusterRecord, MemberRecord};
use crate::member::kvsm::MemberAttributes;

/// The etcd cluster version written into a snapshot's `cluster` bucket.
const CLUSTER_VERSION: &[u8] = b"3.4.0";
/// Bytes of the file per `SnapshotResponse` (etcd's send buffer).
const CHUNK: usize = 32 * 1024;
/// Snapshots served at once per member (each spills and writes a copy of the state).
static SNAPSHOT_GATE: tokio::sync::Semaphore = tokio::sync::Semaphore::const_new(2);

/// Why a snapshot could not be written, read or restored.
#[derive(Debug, thiserror::Error)]
pub enum BackupError {
    /// Writing a snapshot (into unnamed files).
    #[error("{0}")]
    Io(#[from] io::Error),
    #[error("cannot read snapshot file {path}: {source}")]
    Read { path: PathBuf, source: io::Error },
    /// The snapshot file's database part is damaged.
    #[error("{path}: {source}")]
    Database { path: PathBuf, source: BoltError },
    #[error(
        "not an etcd snapshot: {0} has no trailing sha256 (not saved by `etcdctl snapshot save`?); use --skip-hash-check to restore a copied database file"
    )]
    NoHash(PathBuf),
    #[error("not an etcd snapshot: {0}: sha256 mismatch (the file is damaged or truncated)")]
    HashMismatch(PathBuf),
    /// The database is sound but does not hold etcd's data as etcd writes it.
    #[error("not an etcd snapshot: {0}")]
    Content(#[from] ContentError),
    #[error(transparent)]
    InitialCluster(#[from] crate::config::ConfigError),
    #[error("member {0:?} is not in --initial-cluster")]
    NotInCluster(String),
    #[error(
        "--initial-advertise-peer-urls {advertised:?} does not match {listed:?} in --initial-cluster for {name:?}"
    )]
    PeerUrlsMismatch { name: String, advertised: Vec<String>, listed: Vec<String> },
    #[error("two members of --initial-cluster share the same peer URLs")]
    SharedPeerUrls,
    #[error("--data-dir {0} names no directory")]
    NoDirName(PathBuf),
    #[error("data dir {0} exists; restore into a new directory")]
    DataDirExists(PathBuf),
    /// A file system step of building the data dir (`what` says which).
    #[error("cannot {what} {path}: {source}")]
    DataDir { what: &'static str, path: PathBuf, source: io::Error },
    #[error("cannot move the restored data dir {from} to {to}: {source}")]
    Rename { from: PathBuf, to: PathBuf, source: io::Error },
    #[error("cannot write the Raft storage in {path}: {source}")]
    Storage { path: PathBuf, source: raftkv_storage::StorageError },
    #[error("cannot write the state snapshot in {path}: {source}")]
    StateSnapshot { path: PathBuf, source: io::Error },
    /// The member's identity record (the error names the file).
    #[error(transparent)]
    Identity(#[from] crate::member::identity::MemberError),
}

/// What is wrong with the etcd data in a snapshot's database.
#[derive(Debug, thiserror::Error)]
pub enum ContentError {
    #[error("no `key` bucket")]
    NoKeyBucket,
    #[error("meta bucket: a compaction revision that is not a revision key")]
    CompactRevision,
    #[error("key bucket: {0:?} is not a revision")]
    NotARevision(Vec<u8>),
    #[error("key bucket: sub revision {0}")]
    SubRevision(i64),
    #[error("key bucket: revision {revision}: {source}")]
    KeyValue { revision: i64, source: raftkv_api::prost::DecodeError },
    #[error("key bucket: revision {revision} holds mod revision {mod_revision}")]
    ModRevision { revision: i64, mod_revision: i64 },
    #[error("lease bucket: {0:?} is not a leasepb.Lease")]
    Lease(Vec<u8>),
    #[error("{bucket} bucket: {key:?} is not an {what}")]
    Auth { bucket: &'static str, key: String, what: &'static str },
    /// The history does not load (versions out of order, a compaction past the end...).
    #[error("{0}")]
    History(#[source] raftkv_kv::KvError),
}

/// etcd's revision key: main and sub revision, big-endian, separated by `_`.
fn rev_key(main: i64, sub: u32, tombstone: bool) -> Vec<u8> {
    let mut k = Vec::with_capacity(18);
    k.extend_from_slice(&main.to_be_bytes());
    k.push(b'_');
    k.extend_from_slice(&i64::from(sub).to_be_bytes());
    if tombstone {
        k.push(b't');
    }
    k
}

fn parse_rev_key(k: &[u8]) -> Option<(i64, i64, bool)> {
    let tombstone = match k.len() {
        17 => false,
        18 if k[17] == b't' => true,
        _ => return None,
    };
    if k[8] != b'_' {
        return None;
    }
    let mut main = [0u8; 8];
    main.copy_from_slice(&k[..8]);
    let mut sub = [0u8; 8];
    sub.copy_from_slice(&k[9..17]);
    Some((i64::from_be_bytes(main), i64::from_be_bytes(sub), tombstone))
}

/// A member as etcd 3.4 stores it in the `members` bucket.
#[derive(serde::Serialize)]
struct EtcdMember<'a> {
    id: u64,
    #[serde(rename = "peerURLs")]
    peer_urls: &'a [String],
    #[serde(skip_serializing_if = "str::is_empty")]
    name: &'a str,
    #[serde(rename = "clientURLs", skip_serializing_if = "<[String]>::is_empty")]
    client_urls: &'a [String],
}

/// What besides the key-value history goes into an exported snapshot.
pub struct ExportMeta<'a> {
    pub members: &'a [MemberRecord],
    pub published: &'a BTreeMap<u64, MemberAttributes>,
    /// The applied Raft index the state corresponds to (etcd's consistent index).
    pub consistent_index: u64,
    /// The `lease` bucket: every lease as (id, TTL, remaining TTL of the last checkpoint).
    pub leases: Vec<LeaseRecord>,
    /// The `auth`, `authUsers` and `authRoles` buckets.
    pub auth: AuthState,
}

/// Protobuf field writers for the auth records.
fn put_bytes(tag: u32, v: &[u8], buf: &mut Vec<u8>) {
    raftkv_api::prost::encoding::bytes::encode(tag, &v.to_vec(), buf);
}

/// etcd's `authpb.User`.
fn encode_user(u: &User) -> Vec<u8> {
    use raftkv_api::prost::encoding::{WireType, encode_key, encode_varint};
    let mut buf = Vec::new();
    put_bytes(1, u.name.as_bytes(), &mut buf);
    if !u.password.is_empty() {
        put_bytes(2, u.password.as_bytes(), &mut buf);
    }
    for r in &u.roles {
        put_bytes(3, r.as_bytes(), &mut buf);
    }
    if u.no_password {
        // options (4): UserAddOptions { no_password (1): true }
        encode_key(4, WireType::LengthDelimited, &mut buf);
        encode_varint(2, &mut buf);
        buf.extend_from_slice(&[0x08, 0x01]);
    }
    buf
}

/// etcd's `authpb.Role`.
fn encode_role(r: &Role) -> Vec<u8> {
    use raftkv_api::prost::encoding::int32;
    let mut buf = Vec::new();
    put_bytes(1, r.name.as_bytes(), &mut buf);
    for p in &r.perms {
        let mut perm = Vec::new();
        if p.perm_type != 0 {
            int32::encode(1, &p.perm_type, &mut perm);
        }
        if !p.key.is_empty() {
            put_bytes(2, &p.key, &mut perm);
        }
        if !p.range_end.is_empty() {
            put_bytes(3, &p.range_end, &mut perm);
        }
        put_bytes(2, &perm, &mut buf);
    }
    buf
}

/// The fields of a protobuf message: (tag, varint value or length-delimited bytes).
fn fields(mut buf: &[u8]) -> Option<Vec<(u32, u64, Vec<u8>)>> {
    use raftkv_api::prost::encoding::{WireType, decode_key, decode_varint};
    let mut out = Vec::new();
    while !buf.is_empty() {
        let (tag, wire) = decode_key(&mut buf).ok()?;
        match wire {
            WireType::Varint => out.push((tag, decode_varint(&mut buf).ok()?, Vec::new())),
            WireType::LengthDelimited => {
                let len = usize::try_from(decode_varint(&mut buf).ok()?).ok()?;
                let bytes = buf.get(..len)?.to_vec();
                buf = &buf[len..];
                out.push((tag, 0, bytes));
            }
            _ => return None,
        }
    }
    Some(out)
}

fn decode_user(v: &[u8]) -> Option<User> {
    let mut u = User {
        name: String::new(),
        password: String::new(),
        roles: Vec::new(),
        no_password: false,
        since: 0,
    };
    for (tag, _, bytes) in fields(v)? {
        match tag {
            1 => u.name = String::from_utf8(bytes).ok()?,
            2 => u.password = String::from_utf8(bytes).ok()?,
            3 => u.roles.push(String::from_utf8(bytes).ok()?),
            4 => u.no_password = fields(&bytes)?.iter().any(|f| f.0 == 1 && f.1 != 0),
            _ => {}
        }
    }
    u.roles.sort();
    u.roles.dedup();
    Some(u)
}

fn decode_role(v: &[u8]) -> Option<Role> {
    let mut r = Role { name: String::new(), perms: Vec::new() };
    for (tag, _, bytes) in fields(v)? {
        match tag {
            1 => r.name = String::from_utf8(bytes).ok()?,
            2 => {
                let mut p = Permission { perm_type: 0, key: Vec::new(), range_end: Vec::new() };
                for (t, n, b) in fields(&bytes)? {
                    match t {
                        1 => p.perm_type = i32::try_from(n).ok()?,
                        2 => p.key = b,
                        3 => p.range_end = b,
                        _ => {}
                    }
                }
                r.perms.push(p);
            }
            _ => {}
        }
    }
    r.perms.sort_by(|a, b| a.key.cmp(&b.key));
    Some(r)
}

/// etcd's `leasepb.Lease` (`ID = 1`, `TTL = 2`, `RemainingTTL = 3`, all int64), with the
/// zero fields left out as protobuf does.
fn encode_lease(&(id, ttl, remaining): &LeaseRecord) -> Vec<u8> {
    use raftkv_api::prost::encoding::int64;
    let mut buf = Vec::with_capacity(32);
    for (tag, v) in [(1, id), (2, ttl), (3, remaining)] {
        if v != 0 {
            int64::encode(tag, &v, &mut buf);
        }
    }
    buf
}

/// Reads a `leasepb.Lease`, skipping fields it does not know (as protobuf readers do).
fn decode_lease(mut buf: &[u8]) -> Result<LeaseRecord, ContentError> {
    use raftkv_api::prost::encoding::{DecodeContext, decode_key, int64, skip_field};
    let whole = buf.to_vec();
    let bad = |_| ContentError::Lease(whole.clone());
    let (mut id, mut ttl, mut remaining) = (0i64, 0i64, 0i64);
    while !buf.is_empty() {
        let (tag, wire) = decode_key(&mut buf).map_err(bad)?;
        let ctx = DecodeContext::default();
        match tag {
            1 => int64::merge(wire, &mut id, &mut buf, ctx),
            2 => int64::merge(wire, &mut ttl, &mut buf, ctx),
            3 => int64::merge(wire, &mut remaining, &mut buf, ctx),
            _ => skip_field(wire, tag, &mut buf, ctx),
        }
        .map_err(bad)?;
    }
    Ok((id, ttl, remaining))
}

/// Writes the state pinned at `point` as an etcd v3 backend database into `out` (from its
/// start); returns the database's size. `visit` runs a closure on the pinned store, as for
/// [`KvStore::export_pinned`]; `spill_dir` holds the unnamed sort file.
pub fn write_etcd_db(
    point: &SnapshotPoint,
    visit: impl FnMut(&mut dyn FnMut(&KvStore)),
    meta: &ExportMeta<'_>,
    spill_dir: &Path,
    out: &mut File,
) -> Result<u64, BackupError> {
    // 1. Every version, encoded as etcd stores it, into the spill file; an index to sort.
    let spill = tempfile::tempfile_in(spill_dir)?;
    let mut index: Vec<(i64, u32, u64, u32)> = Vec::new();
    {
        let mut w = BufWriter::with_capacity(1 << 20, &spill);
        let mut at = 0u64;
        KvStore::export_pinned(point, visit, |v: Version| {
            let kv = if v.is_tombstone() {
                KeyValue { key: v.key, ..Default::default() }
            } else {
                KeyValue {
                    key: v.key,
                    create_revision: v.create,
                    mod_revision: v.main,
                    version: v.version,
                    value: v.value,
                    lease: v.lease,
                }
            };
            let mut rec = rev_key(v.main, v.sub, v.version == 0);
            kv.encode(&mut rec).map_err(io::Error::other)?;
            let len = u32::try_from(rec.len()).map_err(|_| io::Error::other("a version over 4 GiB"))?;
            w.write_all(&rec)?;
            index.push((v.main, v.sub, at, len));
            at += u64::from(len);
            Ok(())
        })?;
        w.flush()?;
    }
    index.sort_unstable_by_key(|&(main, sub, _, _)| (main, sub));

    // 2. The database, buckets in name order.
    out.set_len(0)?;
    out.seek(SeekFrom::Start(0))?;
    let mut db = BoltWriter::new(BufWriter::with_capacity(1 << 20, &mut *out))?;
    db.begin_bucket(b"alarm")?;
    db.begin_bucket(b"auth")?;
    let auth = &meta.auth;
    if auth.enabled || auth.revision > 1 || !auth.users.is_empty() || !auth.roles.is_empty() {
        db.put(b"authEnabled", &[u8::from(auth.enabled)])?;
        db.put(b"authRevision", &auth.revision.to_be_bytes())?;
    }
    db.begin_bucket(b"authRoles")?;
    let mut roles: Vec<&Role> = auth.roles.iter().collect();
    roles.sort_by(|a, b| a.name.cmp(&b.name));
    for r in roles {
        db.put(r.name.as_bytes(), &encode_role(r))?;
    }
    db.begin_bucket(b"authUsers")?;
    let mut users: Vec<&User> = auth.users.iter().collect();
    users.sort_by(|a, b| a.name.cmp(&b.name));
    for u in users {
        db.put(u.name.as_bytes(), &encode_user(u))?;
    }
    db.begin_bucket(b"cluster")?;
    db.put(b"clusterVersion", CLUSTER_VERSION)?;
    db.begin_bucket(b"key")?;
    let mut rec = Vec::new();
    for (_, _, at, len) in index {
        rec.resize(len as usize, 0);
        spill.read_exact_at(&mut rec, at)?;
        let k = if rec.len() > 17 && rec[17] == b't' { 18 } else { 17 };
        db.put(&rec[..k], &rec[k..])?;
    }
    db.begin_bucket(b"lease")?;
    // etcd keys a lease by its id as 8 big-endian bytes (of the int64: negative ids,
    // which etcd never grants, would sort last).
    let mut leases: Vec<([u8; 8], Vec<u8>)> =
        meta.leases.iter().map(|l| (l.0.to_be_bytes(), encode_lease(l))).collect();
    leases.sort();
    for (id, lease) in &leases {
        db.put(id, lease)?;
    }
    db.begin_bucket(b"members")?;
    let mut members: Vec<(String, Vec<u8>)> = Vec::new();
    for m in meta.members {
        let client_urls = meta.published.get(&m.id).map(|a| a.client_urls.as_slice()).unwrap_or(&[]);
        let json =
            serde_json::to_vec(&EtcdMember { id: m.id, peer_urls: &m.peer_urls, name: &m.name, client_urls })
                .map_err(io::Error::other)?;
        members.push((format!("{:x}", m.id), json));
    }
    members.sort();
    for (k, v) in &members {
        db.put(k.as_bytes(), v)?;
    }
    db.begin_bucket(b"members_removed")?;
    db.begin_bucket(b"meta")?;
    db.put(b"consistent_index", &meta.consistent_index.to_be_bytes())?;
    if point.compacted() >= 0 {
        let compacted = rev_key(point.compacted(), 0, false);
        db.put(b"finishedCompactRev", &compacted)?;
        db.put(b"scheduledCompactRev", &compacted)?;
    }
    let (mut w, size) = db.finish()?;
    w.flush()?;
    drop(w);
    out.set_len(size)?;
    Ok(size)
}

/// What a restore found in an etcd snapshot.
pub struct Imported {
    pub kv: KvStore,
    /// Users, roles and whether auth is enabled.
    pub auth: AuthState,
    pub versions: u64,
    /// Leases in the `lease` bucket.
    pub leases: usize,
}

/// The database part of a snapshot file: its length, after checking the trailing sha256
/// if there is one (a file whose size is a multiple of 512 plus 32, as etcd checks). A file
/// without one is refused unless `skip_hash_check` (a `member/snap/db` copied by hand).
pub fn check_hash(path: &Path, skip_hash_check: bool) -> Result<u64, BackupError> {
    let read_err = |source| BackupError::Read { path: path.into(), source };
    let mut f = File::open(path).map_err(read_err)?;
    let len = f.metadata().map_err(read_err)?.len();
    if len % 512 != 32 {
        if skip_hash_check {
            return Ok(len);
        }
        return Err(BackupError::NoHash(path.into()));
    }
    let db_len = len - 32;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut left = db_len;
    while left > 0 {
        let n = left.min(buf.len() as u64) as usize;
        f.read_exact(&mut buf[..n]).map_err(read_err)?;
        hasher.update(&buf[..n]);
        left -= n as u64;
    }
    let mut stored = [0u8; 32];
    f.read_exact(&mut stored).map_err(read_err)?;
    if hasher.finalize().as_slice() != stored {
        return Err(BackupError::HashMismatch(path.into()));
    }
    Ok(db_len)
}

fn bucket(buckets: &[(Vec<u8>, BucketRoot)], name: &str) -> Option<BucketRoot> {
    buckets.iter().find(|(n, _)| n == name.as_bytes()).map(|(_, r)| r.clone())
}

fn meta_rev(v: &[u8]) -> Result<i64, ContentError> {
    match parse_rev_key(v) {
        Some((main, _, _)) if main >= 0 => Ok(main),
        _ => Err(ContentError::CompactRevision),
    }
}

/// One version of the `key` bucket.
fn key_version(k: &[u8], v: &[u8]) -> Result<Version, ContentError> {
    let Some((main, sub, tombstone)) = parse_rev_key(k) else {
        return Err(ContentError::NotARevision(k.to_vec()));
    };
    let Ok(sub) = u32::try_from(sub) else { return Err(ContentError::SubRevision(sub)) };
    let kv = KeyValue::decode(v).map_err(|source| ContentError::KeyValue { revision: main, source })?;
    if tombstone {
        let key = kv.key;
        return Ok(Version { key, main, sub, create: 0, version: 0, value: Bytes::new(), lease: 0 });
    }
    if kv.mod_revision != main {
        return Err(ContentError::ModRevision { revision: main, mod_revision: kv.mod_revision });
    }
    Ok(Version {
        key: kv.key,
        main,
        sub,
        create: kv.create_revision,
        version: kv.version,
        value: kv.value,
        lease: kv.lease,
    })
}

/// Reads the first `db_len` bytes of an etcd v3 backend file into a store.
pub fn read_etcd_db(
    path: &Path,
    db_len: u64,
    config: KvConfig,
    cold: ColdStore,
) -> Result<Imported, BackupError> {
    let damaged = |source| BackupError::Database { path: path.into(), source };
    let db = BoltReader::open(path, db_len).map_err(damaged)?;
    let buckets = db.buckets().map_err(damaged)?;
    let Some(keys) = bucket(&buckets, "key") else { return Err(ContentError::NoKeyBucket.into()) };
    // A callback's own error, kept while the walk stops with `BoltError::Stopped`.
    let mut failed: Option<ContentError> = None;
    fn stop(e: ContentError, failed: &mut Option<ContentError>) -> Result<(), BoltError> {
        *failed = Some(e);
        Err(BoltError::Stopped)
    }
    let mut compacted = -1i64;
    if let Some(meta) = bucket(&buckets, "meta") {
        let walked = db.walk(&meta, &mut |k, v, _| {
            if k == b"finishedCompactRev" || k == b"scheduledCompactRev" {
                // A scheduled compaction that did not finish is carried out, as etcd does.
                match meta_rev(v) {
                    Ok(rev) => compacted = compacted.max(rev),
                    Err(e) => return stop(e, &mut failed),
                }
            }
            Ok(())
        });
        if let Some(e) = failed.take() {
            return Err(e.into());
        }
        walked.map_err(damaged)?;
    }
    let mut importer = KvImporter::new(config, cold);
    let walked = db.walk(&keys, &mut |k, v, _| {
        let version = match key_version(k, v) {
            Ok(found) => found,
            Err(e) => return stop(e, &mut failed),
        };
        match importer.push(version) {
            Ok(()) => Ok(()),
            Err(e) => stop(ContentError::History(e), &mut failed),
        }
    });
    if let Some(e) = failed {
        return Err(e.into());
    }
    walked.map_err(damaged)?;
    // Leases as etcd's lessor recovers them: the granted TTL and the remaining TTL of the
    // last checkpoint (0 without checkpoints); they start counting down when the new
    // cluster elects a leader.
    let mut leases: Vec<LeaseRecord> = Vec::new();
    if let Some(lease) = bucket(&buckets, "lease") {
        let walked = db.walk(&lease, &mut |_, v, _| match decode_lease(v) {
            Ok(l) => {
                leases.push(l);
                Ok(())
            }
            Err(e) => stop(e, &mut failed),
        });
        if let Some(e) = failed.take() {
            return Err(e.into());
        }
        walked.map_err(damaged)?;
    }
    leases.sort_unstable();
    let versions = importer.versions();
    let kv = importer.finish_with_leases(compacted, &leases).map_err(ContentError::History)?;
    let mut auth = AuthState { enabled: false, revision: 1, users: Vec::new(), roles: Vec::new() };
    if let Some(b) = bucket(&buckets, "auth") {
        db.walk(&b, &mut |k, v, _| {
            if k == b"authEnabled" {
                auth.enabled = v == [1];
            } else if k == b"authRevision" && v.len() == 8 {
                let mut r = [0u8; 8];
                r.copy_from_slice(v);
                auth.revision = u64::from_be_bytes(r).max(1);
            }
            Ok(())
        })
        .map_err(damaged)?;
    }
    for (name, what) in [("authUsers", "authpb.User"), ("authRoles", "authpb.Role")] {
        let Some(b) = bucket(&buckets, name) else { continue };
        let walked = db.walk(&b, &mut |k, v, _| {
            let ok = if name == "authUsers" {
                decode_user(v).map(|u| auth.users.push(u)).is_some()
            } else {
                decode_role(v).map(|r| auth.roles.push(r)).is_some()
            };
            if ok {
                Ok(())
            } else {
                let key = String::from_utf8_lossy(k).into_owned();
                stop(ContentError::Auth { bucket: name, key, what }, &mut failed)
            }
        });
        if let Some(e) = failed.take() {
            return Err(e.into());
        }
        walked.map_err(damaged)?;
    }
    Ok(Imported { kv, auth, versions, leases: leases.len() })
}

/// `Maintenance.Snapshot`: pins the member's state (one revision, whatever writes go on),
/// writes it as an etcd backend file on a blocking thread and streams it in 32 KiB
/// messages, the last one carrying the sha256 of the whole file, as etcd does.
/// Administrators only once auth is enabled (as etcd, with its unconverted refusals: see
/// [`Api::require_admin_maintenance`]).
/// The stream ends with `etcdserver: server stopped` when the member stops meanwhile (rather
/// than being cut off with the connection).
pub async fn snapshot(api: &Api, spill_dir: PathBuf) -> Result<SnapshotStream, Status> {
    api.require_admin_maintenance()?;
    let permit = SNAPSHOT_GATE
        .try_acquire()
        .map_err(|_| Status::resource_exhausted("etcdserver: too many snapshots in progress; retry later"))?;
    let node = api.node.clone();
    let (point, generation, published, leases, auth) = {
        let mut sm = node.shared.sm.write();
        (sm.kv.pin(), sm.generation, sm.members.clone(), sm.kv.leases().export().0, sm.auth.export())
    };
    let consistent_index = node.status().applied;
    let header = ResponseHeader {
        cluster_id: api.cluster_id(),
        member_id: api.member_id(),
        revision: point.revision(),
        raft_term: node.status().term,
    };
    let members = api.members().to_vec();
    let shared = node.shared.clone();
    let written = tokio::task::spawn_blocking(move || {
        let mut replaced = false;
        let result = (|| {
            let mut file = tempfile::tempfile_in(&spill_dir)?;
            let meta =
                ExportMeta { members: &members, published: &published, consistent_index, leases, auth };
            let size = write_etcd_db(
                &point,
                |f| {
                    let sm = shared.sm.read();
                    if sm.generation == generation {
                        f(&sm.kv);
                    } else {
                        replaced = true;
                        f(&KvStore::new());
                    }
                },
                &meta,
                &spill_dir,
                &mut file,
            )?;
            Ok::<_, BackupError>((file, size))
        })();
        let mut sm = shared.sm.write();
        if sm.generation == generation {
            sm.kv.unpin();
        }
        drop(sm);
        match result {
            Ok(_) if replaced => {
                Err(Status::unavailable("etcdserver: the state was replaced by a snapshot meanwhile; retry"))
            }
            Ok(r) => Ok(r),
            Err(e) => Err(Status::internal(format!("cannot write the snapshot: {e}"))),
        }
    })
    .await
    .map_err(|e| Status::internal(format!("snapshot task failed: {e}")))??;
    let (file, size) = written;
    tracing::info!(revision = point.revision(), bytes = size, "sending a snapshot");
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    tokio::task::spawn_blocking(move || {
        let _permit = permit;
        let mut hasher = Sha256::new();
        let mut sent = 0u64;
        let mut first = true;
        let mut buf = vec![0u8; CHUNK];
        while sent < size {
            let n = (size - sent).min(CHUNK as u64) as usize;
            if let Err(e) = file.read_exact_at(&mut buf[..n], sent) {
                let _ = tx.blocking_send(Err(Status::internal(format!("reading the snapshot: {e}"))));
                return;
            }
            hasher.update(&buf[..n]);
            sent += n as u64;
            let msg = SnapshotResponse {
                header: if first { Some(header) } else { None },
                remaining_bytes: size - sent,
                blob: Bytes::copy_from_slice(&buf[..n]),
            };
            first = false;
            if tx.blocking_send(Ok(msg)).is_err() {
                return; // The client went away.
            }
        }
        let sum = hasher.finalize();
        let _ = tx.blocking_send(Ok(SnapshotResponse {
            header: None,
            remaining_bytes: 0,
            blob: Bytes::copy_from_slice(sum.as_slice()),
        }));
    });
    Ok(SnapshotStream {
        inner: Some(tokio_stream::wrappers::ReceiverStream::new(rx)),
        stopped: Box::pin(api.stopped()),
    })
}

/// A snapshot's messages, until the member stops.
pub struct SnapshotStream {
    inner: Option<tokio_stream::wrappers::ReceiverStream<Result<SnapshotResponse, Status>>>,
    stopped: std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>>,
}

impl tokio_stream::Stream for SnapshotStream {
    type Item = Result<SnapshotResponse, Status>;

    fn poll_next(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Self::Item>> {
        use std::task::Poll;
        let this = self.get_mut();
        let Some(inner) = this.inner.as_mut() else { return Poll::Ready(None) };
        if this.stopped.as_mut().poll(cx).is_ready() {
            // Dropping the receiver stops the task reading the file.
            this.inner = None;
            return Poll::Ready(Some(Err(crate::api::service::node_status(crate::node::NodeError::Stopped))));
        }
        let next = std::pin::Pin::new(inner).poll_next(cx);
        if let Poll::Ready(None) = next {
            this.inner = None;
        }
        next
    }
}

/// `raftkv snapshot ...`
#[derive(clap::Args, Debug)]
pub struct SnapshotArgs {
    #[command(subcommand)]
    command: SnapshotCommand,
}

#[derive(clap::Subcommand, Debug)]
enum SnapshotCommand {
    /// Build a new member's data dir from a snapshot file saved with `etcdctl snapshot save`
    /// from raftkv or from etcd 3.4 (etcdutl's flags). Run it for every member of the new
    /// cluster, with the same file and the same --initial-cluster and token.
    Restore(RestoreArgs),
    /// Print a snapshot file's hash, revision, key count and size (as `etcdctl snapshot status`).
    Status(StatusArgs),
}

#[derive(clap::Args, Debug)]
struct RestoreArgs {
    /// The snapshot file.
    file: PathBuf,
    /// This member's name.
    #[arg(long, default_value = "default")]
    name: String,
    /// The new cluster's members: name=peer-url,...
    #[arg(long, default_value = "default=http://localhost:2380")]
    initial_cluster: String,
    /// The new cluster's token.
    #[arg(long, default_value = "etcd-cluster")]
    initial_cluster_token: String,
    /// This member's peer URLs (must match its --initial-cluster entry).
    #[arg(long, default_value = "http://localhost:2380")]
    initial_advertise_peer_urls: String,
    /// The data dir to create (default: <name>.raftkv); it must not exist.
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// Accept a file without the trailing sha256 (a `member/snap/db` copied from etcd).
    #[arg(long)]
    skip_hash_check: bool,
}

#[derive(clap::Args, Debug)]
struct StatusArgs {
    /// The snapshot file.
    file: PathBuf,
    /// Output format: simple or json.
    #[arg(long, short = 'w', default_value = "simple")]
    write_out: String,
}

pub fn run(args: SnapshotArgs) -> Result<(), BackupError> {
    match args.command {
        SnapshotCommand::Restore(a) => restore(a),
        SnapshotCommand::Status(a) => status(a),
    }
}

fn restore(a: RestoreArgs) -> Result<(), BackupError> {
    let initial = crate::config::parse_initial_cluster(&a.initial_cluster)?;
    let token = a.initial_cluster_token.clone();
    let members: Vec<MemberRecord> = initial
        .iter()
        .map(|m| MemberRecord {
            id: crate::config::member_id(m, &token),
            name: m.name.clone(),
            peer_urls: m.peer_urls.clone(),
            is_learner: false,
        })
        .collect();
    let me =
        members.iter().find(|m| m.name == a.name).ok_or_else(|| BackupError::NotInCluster(a.name.clone()))?;
    let mut mine: Vec<String> =
        a.initial_advertise_peer_urls.split(',').map(|s| s.trim().to_string()).collect();
    let mut listed = me.peer_urls.clone();
    mine.sort();
    listed.sort();
    if mine != listed {
        return Err(BackupError::PeerUrlsMismatch { name: a.name, advertised: mine, listed });
    }
    let mut ids: Vec<u64> = members.iter().map(|m| m.id).collect();
    ids.sort_unstable();
    ids.dedup();
    if ids.len() != members.len() {
        return Err(BackupError::SharedPeerUrls);
    }
    let data_dir = a.data_dir.unwrap_or_else(|| PathBuf::from(format!("{}.raftkv", a.name)));
    // Without a trailing `/`, so that the staging directory is a sibling.
    let data_dir: PathBuf = data_dir.components().collect();
    let Some(dir_name) = data_dir.file_name() else {
        return Err(BackupError::NoDirName(data_dir));
    };
    if data_dir.exists() {
        return Err(BackupError::DataDirExists(data_dir));
    }
    let db_len = check_hash(&a.file, a.skip_hash_check)?;
    let record = ClusterRecord {
        format: 1,
        cluster_id: crate::config::cluster_id(&initial, &token),
        member_id: me.id,
        name: a.name.clone(),
        token,
        members: members.clone(),
        joined_existing: false,
    };
    // Build in a sibling directory, renamed into place once complete.
    let mut staging_name = dir_name.to_os_string();
    staging_name.push(".restoring");
    let staging = data_dir.with_file_name(staging_name);
    if staging.exists() {
        std::fs::remove_dir_all(&staging).map_err(|source| BackupError::DataDir {
            what: "remove the unfinished restore",
            path: staging.clone(),
            source,
        })?;
    }
    let result = build_data_dir(&a.file, db_len, &staging, &record);
    if result.is_err() {
        let _ = std::fs::remove_dir_all(&staging);
    }
    let imported = result?;
    std::fs::rename(&staging, &data_dir).map_err(|source| BackupError::Rename {
        from: staging.clone(),
        to: data_dir.clone(),
        source,
    })?;
    if let Some(parent) = data_dir.parent().filter(|p| !p.as_os_str().is_empty()) {
        File::open(parent).and_then(|d| d.sync_all()).map_err(|source| BackupError::DataDir {
            what: "sync the directory",
            path: parent.into(),
            source,
        })?;
    }
    println!(
        "restored snapshot {} into {}: revision {}, compacted at {}, {} versions of {} keys, {} leases; member {} ({:x}) of cluster {:x}",
        a.file.display(),
        data_dir.display(),
        imported.0,
        imported.1,
        imported.2,
        imported.3,
        imported.4,
        a.name,
        record.member_id,
        record.cluster_id
    );
    Ok(())
}

/// Writes the Raft storage (a snapshot at index 1, term 1 holding the state and the new
/// voters) and the identity record; returns (revision, compacted, versions, live keys,
/// leases).
fn build_data_dir(
    file: &Path,
    db_len: u64,
    data_dir: &Path,
    record: &ClusterRecord,
) -> Result<(i64, i64, u64, usize, usize), BackupError> {
    let member_dir = crate::member::identity::member_dir(data_dir);
    let dir_err = |what: &'static str| {
        let path = member_dir.clone();
        move |source| BackupError::DataDir { what, path, source }
    };
    std::fs::create_dir_all(&member_dir).map_err(dir_err("create the directory"))?;
    let cold = ColdStore::temp_file_in(&member_dir).map_err(dir_err("create the history cache file in"))?;
    let config = KvConfig { lease_policy: LeasePolicy::Ignore, ..KvConfig::default() };
    let imported = read_etcd_db(file, db_len, config, cold)?;
    let ids = raftkv_storage::NodeIds { cluster_id: record.cluster_id, node_id: record.member_id };
    let raft_dir = crate::member::identity::raft_dir(data_dir);
    let storage_err = |source| BackupError::Storage { path: raft_dir.clone(), source };
    let storage = raftkv_storage::Storage::create(
        Arc::new(raftkv_storage::RealFs),
        &raft_dir,
        ids,
        raftkv_storage::LogOptions::default(),
    )
    .map_err(storage_err)?;
    let meta = raftkv_raft::SnapshotMeta {
        index: raftkv_raft::LogIndex(1),
        term: raftkv_raft::Term(1),
        config: raftkv_raft::ClusterConfig::new(record.members.iter().map(|m| raftkv_raft::NodeId(m.id))),
    };
    let mut writer =
        storage.snapshots.begin(raftkv_node::codec::meta_to_storage(&meta)).map_err(storage_err)?;
    let mut kv = imported.kv;
    {
        struct Sink<'a>(&'a mut raftkv_storage::SnapshotWriter);
        impl Write for Sink<'_> {
            fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
                self.0.write(buf).map_err(|e| io::Error::other(e.to_string()))?;
                Ok(buf.len())
            }
            fn flush(&mut self) -> io::Result<()> {
                Ok(())
            }
        }
        // The state machine's snapshot; nobody published attributes yet.
        let auth = AuthStore::import(imported.auth);
        raftkv_kvsm::write_store_snapshot(&mut kv, &BTreeMap::new(), Some(&auth), &mut Sink(&mut writer))
            .map_err(|source| BackupError::StateSnapshot { path: raft_dir.clone(), source })?;
    }
    writer.finish().map_err(storage_err)?;
    crate::member::identity::save(data_dir, record)?;
    Ok((kv.revision(), kv.compact_revision(), imported.versions, kv.live_keys(), imported.leases))
}

/// etcd's `snapshot status` numbers: a CRC32C over bucket names, keys and values, the
/// newest revision in the `key` bucket, the count of keys over all buckets, and the size.
fn status(a: StatusArgs) -> Result<(), BackupError> {
    let len = std::fs::metadata(&a.file)
        .map_err(|source| BackupError::Read { path: a.file.clone(), source })?
        .len();
    let db_len = if len % 512 == 32 { check_hash(&a.file, false)? } else { len };
    let damaged = |source| BackupError::Database { path: a.file.clone(), source };
    let db = BoltReader::open(&a.file, db_len).map_err(damaged)?;
    let mut crc = 0u32;
    let (mut revision, mut total) = (0i64, 0u64);
    for (name, root) in db.buckets().map_err(damaged)? {
        crc = crc32c::crc32c_append(crc, &name);
        let is_key = name == b"key";
        db.walk(&root, &mut |k, v, _| {
            crc = crc32c::crc32c_append(crc, k);
            crc = crc32c::crc32c_append(crc, v);
            if is_key && let Some((main, _, _)) = parse_rev_key(k) {
                revision = main;
            }
            total += 1;
            Ok(())
        })
        .map_err(damaged)?;
    }
    if a.write_out == "json" {
        println!(
            "{}",
            serde_json::json!({"hash": crc, "revision": revision, "totalKey": total, "totalSize": db.size()})
        );
    } else {
        println!("hash: {crc:x}, revision: {revision}, total keys: {total}, total size: {}", db.size());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use raftkv_api::etcdserverpb::{
        CompactionRequest, DeleteRangeRequest, LeaseGrantRequest, PutRequest, RangeRequest,
    };
    use raftkv_api::raftkvpb::{LeaseCheckpoint, LeaseCheckpointRequest};

    /// raftkv -> etcd backend file -> raftkv gives the same store, and the file's buckets
    /// are etcd's.
    #[test]
    fn etcd_db_round_trip() {
        let dir = tempfile::tempdir().expect("test setup");
        let mut s = KvStore::new();
        s.lease_grant(&LeaseGrantRequest { id: 0x77, ttl: 60 }).expect("grant");
        s.lease_grant(&LeaseGrantRequest { id: 0x78, ttl: 9 }).expect("grant");
        s.lease_checkpoint(&LeaseCheckpointRequest {
            checkpoints: vec![LeaseCheckpoint { id: 0x78, remaining_ttl: 4 }],
        });
        for round in 0..5 {
            for k in 0..300 {
                let req = PutRequest {
                    key: format!("key/{k:04}").into_bytes().into(),
                    value: format!("value {round} {}", "x".repeat(k % 50)).into_bytes().into(),
                    lease: [0, 0x77, 0x78][(k + round) % 3],
                    ..Default::default()
                };
                s.put(req).expect("put");
            }
        }
        let del =
            DeleteRangeRequest { key: "key/0100".into(), range_end: "key/0200".into(), ..Default::default() };
        s.delete_range(&del).expect("delete");
        s.compact(&CompactionRequest { revision: 700, physical: false }).expect("compact");
        let point = s.pin();
        let members = vec![MemberRecord {
            id: 0xabc,
            name: "m1".into(),
            peer_urls: vec!["http://127.0.0.1:2380".into()],
            is_learner: false,
        }];
        let meta = ExportMeta {
            members: &members,
            published: &BTreeMap::new(),
            consistent_index: 42,
            leases: s.leases().export().0,
            auth: AuthState {
                enabled: true,
                revision: 9,
                users: vec![
                    User {
                        name: "root".into(),
                        password: "$2b$04$hash".into(),
                        roles: vec!["root".into()],
                        no_password: false,
                        since: 0,
                    },
                    User {
                        name: "svc".into(),
                        password: String::new(),
                        roles: vec![],
                        no_password: true,
                        since: 0,
                    },
                ],
                roles: vec![
                    Role { name: "root".into(), perms: vec![] },
                    Role {
                        name: "r".into(),
                        perms: vec![
                            Permission { perm_type: 0, key: b"a".to_vec(), range_end: vec![] },
                            Permission { perm_type: 2, key: b"b/".to_vec(), range_end: b"b0".to_vec() },
                        ],
                    },
                ],
            },
        };
        let path = dir.path().join("db");
        let mut file = File::options()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&path)
            .expect("test setup");
        let size = write_etcd_db(&point, |f| f(&s), &meta, dir.path(), &mut file).expect("export");
        s.unpin();
        assert_eq!(size % crate::member::bolt::PAGE_SIZE as u64, 0);
        let back = read_etcd_db(&path, size, KvConfig::default(), ColdStore::memory()).expect("import");
        assert_eq!(back.kv.revision(), s.revision());
        assert_eq!(back.kv.compact_revision(), 700);
        assert_eq!(back.kv.digest(), s.digest());
        assert_eq!(back.leases, 2);
        let mut want = meta.auth.clone();
        want.roles.sort_by(|a, b| a.name.cmp(&b.name));
        assert_eq!(back.auth, want);
        assert_eq!(back.kv.leases().export().0, vec![(0x77, 60, 0), (0x78, 9, 4)]);
        for id in [0x77, 0x78] {
            assert_eq!(back.kv.leases().get(id).map(|l| &l.keys), s.leases().get(id).map(|l| &l.keys));
        }
        assert_eq!(decode_lease(&encode_lease(&(0x78, 9, 4))).expect("decode"), (0x78, 9, 4));
        assert!(decode_lease(&[0x08]).is_err());
        let all = RangeRequest {
            key: vec![0].into(),
            range_end: vec![0].into(),
            revision: 800,
            ..Default::default()
        };
        assert_eq!(back.kv.range(&all).expect("range"), s.range(&all).expect("range"));
        let names: Vec<Vec<u8>> = BoltReader::open(&path, size)
            .expect("open")
            .buckets()
            .expect("buckets")
            .into_iter()
            .map(|b| b.0)
            .collect();
        for want in ["alarm", "auth", "cluster", "key", "lease", "members", "members_removed", "meta"] {
            assert!(names.contains(&want.as_bytes().to_vec()), "bucket {want} missing");
        }
        // A file without the trailing hash is refused unless asked; a wrong hash always.
        assert!(check_hash(&path, false).is_err());
        assert_eq!(check_hash(&path, true).expect("skip"), size);
        let mut bytes = std::fs::read(&path).expect("test setup");
        bytes.extend_from_slice(&Sha256::digest(&bytes));
        std::fs::write(&path, &bytes).expect("test setup");
        assert_eq!(check_hash(&path, false).expect("hash"), size);
        bytes[100] ^= 1;
        std::fs::write(&path, &bytes).expect("test setup");
        assert!(check_hash(&path, false).is_err());
    }

    /// A bad snapshot file is refused with what is wrong with it, naming the file.
    #[test]
    fn bad_snapshot_files_say_what_is_wrong() {
        let dir = tempfile::tempdir().expect("test setup");
        let path = dir.path().join("snap.db");
        // A database written from `buckets`, followed by its sha256 as etcd saves it.
        type Bucket<'a> = (&'a str, Vec<(Vec<u8>, Vec<u8>)>);
        let save = |buckets: &[Bucket<'_>]| {
            let file = File::create(&path).expect("test setup");
            let mut db = BoltWriter::new(BufWriter::new(file)).expect("test setup");
            for (name, kvs) in buckets {
                db.begin_bucket(name.as_bytes()).expect("test setup");
                for (k, v) in kvs {
                    db.put(k, v).expect("test setup");
                }
            }
            let (w, size) = db.finish().expect("test setup");
            drop(w);
            let mut bytes = std::fs::read(&path).expect("test setup");
            bytes.truncate(size as usize);
            bytes.extend_from_slice(&Sha256::digest(&bytes));
            std::fs::write(&path, &bytes).expect("test setup");
        };
        let restore = || {
            let db_len = check_hash(&path, false)?;
            read_etcd_db(&path, db_len, KvConfig::default(), ColdStore::memory()).map(|_| ())
        };
        let shown = path.display().to_string();

        let missing = dir.path().join("missing.db");
        let e = check_hash(&missing, false).expect_err("missing");
        assert!(matches!(&e, BackupError::Read { path, .. } if *path == missing), "{e:?}");
        assert!(e.to_string().starts_with(&format!("cannot read snapshot file {}: ", missing.display())));

        std::fs::write(&path, vec![0u8; 1000]).expect("test setup");
        let e = check_hash(&path, false).expect_err("no hash");
        assert!(matches!(e, BackupError::NoHash(_)), "{e:?}");
        assert!(e.to_string().contains(&format!("{shown} has no trailing sha256")), "{e}");

        let mut bytes = vec![0u8; 1024];
        bytes.extend_from_slice(&Sha256::digest(&bytes));
        bytes[7] = 1;
        std::fs::write(&path, &bytes).expect("test setup");
        let e = check_hash(&path, false).expect_err("damaged");
        assert!(matches!(e, BackupError::HashMismatch(_)), "{e:?}");
        assert!(e.to_string().contains("sha256 mismatch"), "{e}");

        // Sound hash, no database.
        bytes[7] = 0;
        bytes.truncate(1024);
        bytes.extend_from_slice(&Sha256::digest(&bytes));
        std::fs::write(&path, &bytes).expect("test setup");
        let e = restore().expect_err("not bbolt");
        assert!(matches!(e, BackupError::Database { source: BoltError::Meta(_), .. }), "{e:?}");
        assert_eq!(e.to_string(), format!("{shown}: not a valid bbolt database: no meta page"));

        // A database without etcd's data, or with a damaged version.
        save(&[("meta", vec![])]);
        let e = restore().expect_err("no key bucket");
        assert!(matches!(e, BackupError::Content(ContentError::NoKeyBucket)), "{e:?}");
        assert_eq!(e.to_string(), "not an etcd snapshot: no `key` bucket");
        save(&[("key", vec![(b"foo".to_vec(), b"bar".to_vec())])]);
        let e = restore().expect_err("bad revision");
        assert!(matches!(e, BackupError::Content(ContentError::NotARevision(_))), "{e:?}");
        let mut kv = Vec::new();
        KeyValue { key: b"k".to_vec().into(), mod_revision: 3, ..Default::default() }
            .encode(&mut kv)
            .expect("encode");
        save(&[("key", vec![(rev_key(2, 0, false), kv)])]);
        let e = restore().expect_err("mod revision");
        assert!(matches!(
            e,
            BackupError::Content(ContentError::ModRevision { revision: 2, mod_revision: 3 })
        ));
        assert_eq!(e.to_string(), "not an etcd snapshot: key bucket: revision 2 holds mod revision 3");
        save(&[("key", vec![]), ("meta", vec![(b"finishedCompactRev".to_vec(), b"junk".to_vec())])]);
        let e = restore().expect_err("compact revision");
        assert!(matches!(e, BackupError::Content(ContentError::CompactRevision)), "{e:?}");
    }
}
