//! Version-by-version access to the MVCC history, to convert a store to and from another
//! store's layout (etcd's bbolt backend, see the server's `backup` module): every retained
//! version of every key, with its revisions and value, out of a pinned state
//! ([`KvStore::export_pinned`]), and a store rebuilt from versions given in revision order
//! ([`KvImporter`]).

use std::io;
use std::ops::Bound;

use bytes::Bytes;

use crate::KvError;
use crate::cold::ColdStore;
use crate::lease::{AttachedRecord, LeaseRecord};
use crate::snapshot::SnapshotPoint;
use crate::store::{Key, KeyHistory, KvConfig, KvStore, Rev, retained, value_in};

/// Keys read per visit to the store (per lock acquisition, for a shared store).
const KEYS_PER_VISIT: usize = 1024;

/// One version of a key. A deletion (tombstone) has `version == 0`, `create == 0`, an
/// empty value and lease 0.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Version {
    pub key: Bytes,
    /// The revision of the write (its mod revision) and its position within it.
    pub main: i64,
    pub sub: u32,
    pub create: i64,
    pub version: i64,
    pub value: Bytes,
    /// The lease the version was written with (0: none).
    pub lease: i64,
}

impl Version {
    pub fn is_tombstone(&self) -> bool {
        self.version == 0
    }
}

impl KvStore {
    /// Calls `f` with every version the state pinned at `point` holds (what a snapshot at
    /// the pin holds), key by key in ascending key order, each key's versions oldest first.
    /// `visit` must call the closure it is given on the pinned store (typically under a
    /// read lock); it is called once per batch of keys and `f` runs outside it.
    pub fn export_pinned(
        point: &SnapshotPoint,
        mut visit: impl FnMut(&mut dyn FnMut(&KvStore)),
        mut f: impl FnMut(Version) -> io::Result<()>,
    ) -> io::Result<()> {
        let (rev, compacted) = (point.revision(), point.compacted());
        let mut cursor: Option<Key> = None;
        let mut batch: Vec<Version> = Vec::new();
        loop {
            let mut done = false;
            let mut failed = None;
            visit(&mut |store: &KvStore| {
                let bounds = match &cursor {
                    Some(k) => (Bound::Excluded(&k[..]), Bound::Unbounded),
                    None => (Bound::Unbounded, Bound::Unbounded),
                };
                let mut keys = store.map.range(bounds);
                for _ in 0..KEYS_PER_VISIT {
                    let Some((k, h)) = keys.next() else {
                        done = true;
                        return;
                    };
                    cursor = Some(k.clone());
                    let key = Bytes::copy_from_slice(k);
                    for i in retained(&h.revs, rev, compacted) {
                        let r = &h.revs[i];
                        let value = match value_in(&store.cold, h, i) {
                            Ok(v) => v,
                            Err(e) => {
                                failed = Some(e);
                                return;
                            }
                        };
                        batch.push(Version {
                            key: key.clone(),
                            main: r.main,
                            sub: r.sub,
                            create: r.create,
                            version: r.version,
                            value,
                            lease: store.leases.lease_of(r.main, r.sub),
                        });
                    }
                }
            });
            if let Some(e) = failed {
                return Err(e);
            }
            for v in batch.drain(..) {
                f(v)?;
            }
            if done {
                return Ok(());
            }
        }
    }
}

/// Rebuilds a store from versions given in ascending revision order (main, then sub), as
/// etcd's backend holds them. Checks what the store relies on and refuses the rest with
/// [`KvError::Corrupt`]: revisions strictly ascending and positive, a key's versions
/// numbered on from its previous one, creation revisions not in the future, values and keys
/// within `u32` lengths.
pub struct KvImporter {
    store: KvStore,
    last: Option<(i64, u32)>,
    versions: u64,
    /// The versions written with a lease.
    attached: Vec<AttachedRecord>,
}

impl KvImporter {
    /// An importer keeping superseded values in `cold` (which should be empty).
    pub fn new(config: KvConfig, cold: ColdStore) -> KvImporter {
        KvImporter {
            store: KvStore::with_cold_store(config, cold),
            last: None,
            versions: 0,
            attached: Vec::new(),
        }
    }

    /// Versions imported so far.
    pub fn versions(&self) -> u64 {
        self.versions
    }

    /// Versions imported so far that hold a lease.
    pub fn leased_versions(&self) -> u64 {
        self.attached.len() as u64
    }

    /// Adds the next version.
    pub fn push(&mut self, v: Version) -> Result<(), KvError> {
        let bad = |what: String| Err(KvError::corrupt(what));
        if v.main < 1 {
            return bad(format!("revision {} of key {:?} is not positive", v.main, v.key));
        }
        if self.last.is_some_and(|last| (v.main, v.sub) <= last) {
            return bad(format!("revision {}.{} is not above the previous one", v.main, v.sub));
        }
        if v.key.is_empty() || v.key.len() > u32::MAX as usize || v.value.len() > u32::MAX as usize {
            return bad(format!("a key or value of bad length at revision {}", v.main));
        }
        let KvStore { map, cold, cold_live, .. } = &mut self.store;
        let prev = map.get(&v.key).and_then(|h| h.revs.last().copied());
        if v.is_tombstone() {
            if !v.value.is_empty() || v.create != 0 || v.lease != 0 {
                return bad(format!("deletion of {:?} at revision {} carries data", v.key, v.main));
            }
        } else {
            let consistent = match prev {
                // A live key: the next version of the same generation.
                Some(p) if p.version > 0 => v.version == p.version + 1 && v.create == p.create,
                // Created anew after a deletion.
                Some(_) => v.version == 1 && v.create == v.main,
                // The oldest retained version (older ones may be compacted away).
                None => v.version >= 1 && v.create >= 1 && v.create <= v.main,
            };
            if !consistent || v.version < 0 {
                return bad(format!(
                    "version {} (created at {}) of key {:?} at revision {} does not follow its previous version",
                    v.version, v.create, v.key, v.main
                ));
            }
        }
        let rev = Rev {
            main: v.main,
            sub: v.sub,
            create: v.create,
            version: v.version,
            vlen: v.value.len() as u32,
            pos: 0,
        };
        if map.get(&v.key).is_none() {
            map.insert(Key::from_slice(&v.key), KeyHistory::default());
        }
        if let Some(h) = map.get_mut(&v.key) {
            h.push(cold, cold_live, rev, v.value);
        }
        if v.lease != 0 {
            self.attached.push((v.main, v.sub, v.lease));
        }
        self.last = Some((v.main, v.sub));
        self.versions += 1;
        Ok(())
    }

    /// The store, at the newest revision seen (or `compacted` if higher), compacted at
    /// `compacted` (-1: never): versions the compaction made unreadable are dropped.
    pub fn finish(self, compacted: i64) -> Result<KvStore, KvError> {
        self.finish_with_leases(compacted, &[])
    }

    /// As [`KvImporter::finish`], with the lease table `leases`: the versions pushed with a
    /// lease keep it, and each lease holds the keys whose live newest version names it
    /// (refused with [`KvError::Corrupt`] if such a lease is not in `leases`).
    pub fn finish_with_leases(mut self, compacted: i64, leases: &[LeaseRecord]) -> Result<KvStore, KvError> {
        let newest = self.last.map_or(1, |(main, _)| main);
        if compacted < -1 {
            return Err(KvError::corrupt(format!("compaction revision {compacted}")));
        }
        self.store.rev = newest.max(compacted).max(1);
        self.store.compacted = compacted;
        if compacted > 0 {
            self.store.discard_compacted();
        }
        self.store.recount();
        if !self.attached.is_empty() && compacted > 0 {
            // Versions the compaction dropped keep no lease.
            let mut retained = std::collections::HashSet::new();
            for h in self.store.map.values() {
                for r in &h.revs {
                    retained.insert((r.main, r.sub));
                }
            }
            self.attached.retain(|&(main, sub, _)| retained.contains(&(main, sub)));
        }
        if !leases.is_empty() || !self.attached.is_empty() {
            self.store.import_leases(leases, &self.attached)?;
        }
        Ok(self.store)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use raftkv_api::etcdserverpb::{
        CompactionRequest, DeleteRangeRequest, PutRequest, RangeRequest, TxnRequest, request_op,
    };

    fn put(s: &mut KvStore, k: &str, v: &str) {
        let req = PutRequest { key: k.to_string().into(), value: v.to_string().into(), ..Default::default() };
        s.put(req).expect("put");
    }

    fn all_versions(s: &mut KvStore) -> Vec<Version> {
        let point = s.pin();
        let mut out = Vec::new();
        KvStore::export_pinned(
            &point,
            |f| f(s),
            |v| {
                out.push(v);
                Ok(())
            },
        )
        .expect("export");
        s.unpin();
        out
    }

    fn import(mut versions: Vec<Version>, compacted: i64) -> Result<KvStore, KvError> {
        versions.sort_by_key(|v| (v.main, v.sub));
        let mut imp = KvImporter::new(KvConfig::default(), ColdStore::memory());
        for v in versions {
            imp.push(v)?;
        }
        imp.finish(compacted)
    }

    /// Export then import in revision order gives the same state (same digest, same reads
    /// at past revisions), with deletions, re-creations, transactions and compaction.
    #[test]
    fn export_then_import_is_the_same_store() {
        let mut s = KvStore::new();
        for round in 0..4 {
            for k in 0..20 {
                put(&mut s, &format!("k{k:02}"), &format!("v{round}-{k}"));
            }
        }
        let del = DeleteRangeRequest { key: "k05".into(), range_end: "k08".into(), ..Default::default() };
        s.delete_range(&del).expect("delete");
        put(&mut s, "k06", "again");
        let txn = TxnRequest {
            success: vec![
                raftkv_api::etcdserverpb::RequestOp {
                    request: Some(request_op::Request::RequestPut(PutRequest {
                        key: "t1".into(),
                        value: "a".into(),
                        ..Default::default()
                    })),
                },
                raftkv_api::etcdserverpb::RequestOp {
                    request: Some(request_op::Request::RequestPut(PutRequest {
                        key: "t2".into(),
                        value: "b".into(),
                        ..Default::default()
                    })),
                },
            ],
            ..Default::default()
        };
        s.txn(&txn).expect("txn");
        s.compact(&CompactionRequest { revision: 30, physical: false }).expect("compact");
        put(&mut s, "k01", "latest");
        let versions = all_versions(&mut s);
        assert!(versions.iter().any(|v| v.is_tombstone()));
        assert!(versions.iter().any(|v| v.sub == 1));
        let back = import(versions, s.compact_revision()).expect("import");
        assert_eq!(back.revision(), s.revision());
        assert_eq!(back.compact_revision(), 30);
        assert_eq!(back.digest(), s.digest());
        for rev in [30, 50, 80, 0] {
            let req = RangeRequest {
                key: vec![0].into(),
                range_end: vec![0].into(),
                revision: rev,
                ..Default::default()
            };
            assert_eq!(back.range(&req).expect("range"), s.range(&req).expect("range"), "at {rev}");
        }
    }

    /// A compaction revision above the versions given (etcd's scheduled compaction) drops
    /// what it made unreadable, as a compaction would.
    #[test]
    fn import_applies_the_compaction() {
        let mut s = KvStore::new();
        for i in 0..10 {
            put(&mut s, "a", &format!("{i}"));
        }
        let versions = all_versions(&mut s);
        let back = import(versions, 8).expect("import");
        s.compact(&CompactionRequest { revision: 8, physical: false }).expect("compact");
        assert_eq!(back.digest(), s.digest());
    }

    #[test]
    fn inconsistent_versions_are_refused() {
        let v = |main, create, version| Version {
            key: "k".into(),
            main,
            sub: 0,
            create,
            version,
            value: if version == 0 { Bytes::new() } else { "x".into() },
            lease: 0,
        };
        assert!(import(vec![v(2, 2, 1), v(3, 2, 2)], -1).is_ok());
        // A version skipped, a wrong creation revision, a future creation, a revision twice.
        assert!(import(vec![v(2, 2, 1), v(3, 2, 3)], -1).is_err());
        assert!(import(vec![v(2, 2, 1), v(3, 1, 2)], -1).is_err());
        assert!(import(vec![v(2, 5, 1)], -1).is_err());
        let mut imp = KvImporter::new(KvConfig::default(), ColdStore::memory());
        imp.push(v(2, 2, 1)).expect("first");
        assert!(imp.push(v(2, 2, 2)).is_err());
        // After a deletion the key starts over at version 1.
        assert!(import(vec![v(2, 2, 1), v(3, 0, 0), v(4, 4, 1)], -1).is_ok());
        assert!(import(vec![v(2, 2, 1), v(3, 0, 0), v(4, 2, 2)], -1).is_err());
        assert!(import(vec![v(0, 0, 1)], -1).is_err());
    }

    /// Versions written with a lease keep it through export and import, and the lease
    /// table holds the keys whose newest version names it.
    #[test]
    fn leases_survive_export_and_import() {
        use raftkv_api::etcdserverpb::LeaseGrantRequest;
        let mut s = KvStore::new();
        s.lease_grant(&LeaseGrantRequest { id: 7, ttl: 60 }).expect("grant");
        s.lease_grant(&LeaseGrantRequest { id: 9, ttl: 30 }).expect("grant");
        let leased = |k: &str, lease| PutRequest {
            key: k.to_string().into(),
            value: "v".into(),
            lease,
            ..Default::default()
        };
        s.put(leased("a", 7)).expect("put");
        s.put(leased("b", 7)).expect("put");
        s.put(leased("c", 9)).expect("put");
        put(&mut s, "c", "no lease now");
        s.put(leased("d", 9)).expect("put");
        let versions = all_versions(&mut s);
        assert_eq!(versions.iter().filter(|v| v.lease != 0).count(), 4);
        let (leases, _) = s.leases().export();
        let mut sorted = versions.clone();
        sorted.sort_by_key(|v| (v.main, v.sub));
        let mut imp = KvImporter::new(KvConfig::default(), ColdStore::memory());
        for v in sorted {
            imp.push(v).expect("push");
        }
        assert_eq!(imp.leased_versions(), 4);
        let back = imp.finish_with_leases(-1, &leases).expect("finish");
        assert_eq!(back.leases().export(), s.leases().export());
        let keys = |st: &KvStore, id| st.leases().get(id).map(|l| l.keys.len());
        assert_eq!((keys(&back, 7), keys(&back, 9)), (Some(2), Some(1)));
        let all = RangeRequest { key: vec![0].into(), range_end: vec![0].into(), ..Default::default() };
        assert_eq!(back.range(&all).expect("range"), s.range(&all).expect("range"));
        // A live key naming a lease the table lacks is refused.
        let mut imp = KvImporter::new(KvConfig::default(), ColdStore::memory());
        for v in all_versions(&mut s).into_iter().filter(|v| v.key == "a") {
            imp.push(v).expect("push");
        }
        assert!(imp.finish_with_leases(-1, &[(9, 30, 0)]).is_err());
    }
}
