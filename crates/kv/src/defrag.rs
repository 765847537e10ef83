//! Defragmentation: the history store rewritten without the values compaction discarded,
//! while reads and writes go on.
//!
//! Compaction drops discarded versions from the index at once, but their values stay in the
//! append-only history store ([`ColdStore`]) until it is rewritten (as bbolt's pages stay in
//! etcd's file until `defrag`). A defragmentation copies the values still referenced into a
//! fresh store in three steps, each taking the store's lock only as long as it must:
//!
//! 1. [`KvStore::defrag_begin`] (write lock, O(1)) pins the store: compaction defers its
//!    discards and the store is not rewritten, so every position handed out stays valid.
//! 2. [`KvStore::defrag_collect`] (read lock, one batch of keys per call) lists the
//!    positions of referenced values; [`KvStore::defrag_copy`] (read lock, one batch of
//!    bytes per call) copies them, in position order, into the fresh store, which only the
//!    [`Defrag`] owns. Writes apply between the calls.
//! 3. [`KvStore::defrag_finish`] (write lock) copies the values appended since step 1,
//!    points every version at its new position, swaps the stores and unpins. This is the
//!    only stall: one pass over the versions in memory, no reads of old values but the
//!    recent ones.

use std::ops::Bound;

use crate::KvStore;
use crate::cold::{ColdPos, ColdStore};
use crate::store::Key;

/// Keys listed per [`KvStore::defrag_collect`] call.
const KEYS_PER_BATCH: usize = 4096;
/// Bytes copied per [`KvStore::defrag_copy`] call.
const BYTES_PER_BATCH: usize = 1 << 20;

/// A defragmentation in progress; see the module documentation.
pub struct Defrag {
    /// The store being rewritten (a restore or a rewrite meanwhile makes the plan void).
    cold_id: u64,
    /// Bytes the history store held at the start: positions below were listed and copied.
    boundary: u64,
    fresh: ColdStore,
    /// `(old position, length)` of the referenced values, then sorted by position.
    listed: Vec<(ColdPos, u32)>,
    /// New position of `listed[i]`, once copied.
    moved: Vec<ColdPos>,
    cursor: Option<Key>,
    listing_done: bool,
    /// Next entry of `listed` to copy.
    copied: usize,
}

/// What a finished defragmentation freed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DefragStats {
    /// [`KvStore::size_bytes`] before and after.
    pub size_before: u64,
    pub size_after: u64,
}

/// Why a defragmentation could not finish.
#[derive(Debug, thiserror::Error)]
pub enum DefragError {
    /// A snapshot or hash is reading the store: try [`KvStore::defrag_finish`] again later.
    #[error("the store is being read by a snapshot; retry")]
    Busy,
    /// The store was replaced (restored from a snapshot) or rewritten meanwhile.
    #[error("the store was replaced during the defragmentation")]
    Replaced,
    /// Reading an old value or creating the fresh store failed; the store is unchanged.
    #[error("defragmentation I/O: {0}")]
    Io(#[from] std::io::Error),
}

impl Defrag {
    /// Whether every referenced value of the start was listed and copied.
    pub fn copied_all(&self) -> bool {
        self.listing_done && self.copied == self.listed.len()
    }
}

impl KvStore {
    /// Starts a defragmentation (step 1): pins the store. End it with
    /// [`KvStore::defrag_finish`] or [`KvStore::defrag_abort`] on the same store.
    pub fn defrag_begin(&mut self) -> std::io::Result<Defrag> {
        let fresh = self.cold.fresh()?;
        self.pins += 1;
        Ok(Defrag {
            cold_id: self.cold.id(),
            boundary: self.cold.appended_bytes(),
            fresh,
            listed: Vec::new(),
            moved: Vec::new(),
            cursor: None,
            listing_done: false,
            copied: 0,
        })
    }

    /// Ends a defragmentation without changing anything (the pin is released).
    pub fn defrag_abort(&mut self, d: Defrag) {
        if d.cold_id == self.cold.id() {
            self.unpin();
        }
    }

    /// Step 2, one batch: lists the referenced values of the next keys, or (once every key
    /// was listed) copies the next values into the fresh store. Returns whether there is
    /// more to do. A store other than the one the plan began on does nothing.
    pub fn defrag_step(&self, d: &mut Defrag) -> Result<bool, DefragError> {
        if d.cold_id != self.cold.id() {
            return Err(DefragError::Replaced);
        }
        if !d.listing_done {
            self.defrag_collect(d);
            if d.listing_done {
                d.listed.sort_unstable_by_key(|&(pos, _)| pos);
                d.moved.reserve_exact(d.listed.len());
            }
            return Ok(true);
        }
        self.defrag_copy(d)?;
        Ok(!d.copied_all())
    }

    fn defrag_collect(&self, d: &mut Defrag) {
        let bounds = match &d.cursor {
            Some(k) => (Bound::Excluded(&k[..]), Bound::Unbounded),
            None => (Bound::Unbounded, Bound::Unbounded),
        };
        let mut keys = self.map.range(bounds);
        for _ in 0..KEYS_PER_BATCH {
            let Some((k, h)) = keys.next() else {
                d.listing_done = true;
                return;
            };
            d.cursor = Some(k.clone());
            // Every version but the newest has its value in the history store.
            for r in &h.revs[..h.revs.len().saturating_sub(1)] {
                if r.vlen > 0 && r.pos < d.boundary {
                    d.listed.push((r.pos, r.vlen));
                }
            }
        }
    }

    fn defrag_copy(&self, d: &mut Defrag) -> std::io::Result<()> {
        let mut bytes = 0usize;
        while d.copied < d.listed.len() && bytes < BYTES_PER_BATCH {
            let (pos, len) = d.listed[d.copied];
            let value = self.cold.read(pos, len)?;
            d.moved.push(d.fresh.append(&value));
            d.copied += 1;
            bytes += len as usize;
        }
        Ok(())
    }

    /// Step 3: switches to the fresh store once [`Defrag::copied_all`]. Fails with
    /// [`DefragError::Busy`] (keep the plan, retry) while a snapshot or hash has the store
    /// pinned; any other error ends the defragmentation with the store unchanged.
    pub fn defrag_finish(
        &mut self,
        mut d: Defrag,
    ) -> Result<DefragStats, (Option<Box<Defrag>>, DefragError)> {
        if d.cold_id != self.cold.id() {
            return Err((None, DefragError::Replaced));
        }
        if !d.copied_all() {
            // Finish the copy here (only reached if the caller skipped step 2).
            while !d.copied_all() {
                if let Err(e) = self.defrag_step(&mut d) {
                    self.unpin();
                    return Err((None, e));
                }
            }
        }
        if self.pins > 1 {
            return Err((Some(Box::new(d)), DefragError::Busy));
        }
        let size_before = self.size_bytes();
        // Values appended since the start, then every version's new position.
        let mut recent: Vec<(ColdPos, ColdPos)> = Vec::new();
        let mut failed = None;
        'copy: for h in self.map.values() {
            for r in &h.revs[..h.revs.len().saturating_sub(1)] {
                if r.vlen > 0 && r.pos >= d.boundary {
                    match self.cold.read(r.pos, r.vlen) {
                        Ok(v) => recent.push((r.pos, d.fresh.append(&v))),
                        Err(e) => {
                            failed = Some(e);
                            break 'copy;
                        }
                    }
                }
            }
        }
        if let Some(e) = failed {
            self.unpin();
            return Err((None, DefragError::Io(e)));
        }
        recent.sort_unstable_by_key(|&(old, _)| old);
        let (listed, moved) = (&d.listed, &d.moved);
        for h in self.map.values_mut() {
            let n = h.revs.len().saturating_sub(1);
            for r in &mut h.revs[..n] {
                if r.vlen == 0 {
                    continue;
                }
                let new = if r.pos < d.boundary {
                    listed.binary_search_by_key(&r.pos, |&(pos, _)| pos).ok().and_then(|i| moved.get(i))
                } else {
                    recent.binary_search_by_key(&r.pos, |&(old, _)| old).ok().map(|i| &recent[i].1)
                };
                // Every referenced value was listed while pinned; a miss keeps the old
                // position, which then fails its reads rather than returning other bytes.
                if let Some(&new) = new {
                    r.pos = new;
                }
            }
        }
        self.cold = d.fresh;
        // The pin taken at the start, on the old store: released on the new one, which
        // carries out a compaction deferred meanwhile.
        self.unpin();
        Ok(DefragStats { size_before, size_after: self.size_bytes() })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use raftkv_api::etcdserverpb::{CompactionRequest, PutRequest, RangeRequest};

    fn put(s: &mut KvStore, k: &str, v: &str) {
        s.put(PutRequest { key: k.to_string().into(), value: v.to_string().into(), ..Default::default() })
            .expect("put");
    }

    fn all_at(s: &KvStore, rev: i64) -> Vec<(Vec<u8>, Vec<u8>, i64)> {
        let r = s
            .range(&RangeRequest {
                key: vec![0].into(),
                range_end: vec![0].into(),
                revision: rev,
                ..Default::default()
            })
            .expect("range");
        r.kvs.into_iter().map(|kv| (kv.key.to_vec(), kv.value.to_vec(), kv.mod_revision)).collect()
    }

    /// Interleaves writes and compactions with the steps: every retained version reads back
    /// the same, the size shrinks to what is referenced, and the hot-byte count stays exact.
    #[test]
    fn defrag_frees_discarded_values_and_keeps_every_retained_one() {
        let dir = tempfile::tempdir().expect("test setup");
        let mut cold = ColdStore::temp_file_in(dir.path()).expect("test setup");
        cold.set_rewrite_threshold(u64::MAX);
        cold.set_write_block(1000);
        let mut s = KvStore::with_cold_store(Default::default(), cold);
        for round in 0..20 {
            for k in 0..300 {
                put(&mut s, &format!("k{k:04}"), &format!("{round}-{}", "v".repeat(50 + k % 40)));
            }
        }
        let mid = s.revision();
        s.compact(&CompactionRequest { revision: mid - 600, ..Default::default() }).expect("compact");
        let before = s.size_bytes();
        let mut d = s.defrag_begin().expect("begin");
        let mut steps = 0;
        while s.defrag_step(&mut d).expect("step") {
            steps += 1;
            // Writes and a compaction between the steps (the compaction is deferred).
            put(&mut s, &format!("k{:04}", steps % 300), "during");
            if steps == 1 {
                s.compact(&CompactionRequest { revision: mid - 300, ..Default::default() }).expect("compact");
            }
        }
        let readable = s.compact_revision();
        let expect: Vec<_> = (readable..=s.revision()).map(|r| all_at(&s, r)).collect();
        let stats = s.defrag_finish(d).map_err(|e| e.1).expect("finish");
        assert_eq!(stats.size_before, before.max(stats.size_before));
        assert!(stats.size_after < before / 2, "{} vs {before}", stats.size_after);
        let got: Vec<_> = (readable..=s.revision()).map(|r| all_at(&s, r)).collect();
        assert!(got == expect, "retained versions changed");
        // The compaction deferred during the first one left garbage; a second one frees it.
        let d = s.defrag_begin().expect("begin");
        s.defrag_finish(d).map_err(|e| e.1).expect("finish");
        assert_eq!(s.size_bytes(), s.size_in_use_bytes(), "nothing unreferenced is left");
        let got: Vec<_> = (readable..=s.revision()).map(|r| all_at(&s, r)).collect();
        assert!(got == expect, "retained versions changed");
        let hot = s.hot_bytes();
        s.recount();
        assert_eq!(hot, s.hot_bytes(), "hot bytes tracked incrementally");
    }

    /// A pinned snapshot makes the switch wait; a restore voids the plan.
    #[test]
    fn busy_while_pinned_and_void_after_replacement() {
        let mut s = KvStore::new();
        for i in 0..50 {
            put(&mut s, "k", &format!("v{i}"));
        }
        let mut d = s.defrag_begin().expect("begin");
        while s.defrag_step(&mut d).expect("step") {}
        let _point = s.pin();
        let (d, e) = s.defrag_finish(d).expect_err("pinned");
        assert!(matches!(e, DefragError::Busy));
        s.unpin();
        let d = d.expect("plan kept");
        s.defrag_finish(*d).map_err(|e| e.1).expect("finish after the snapshot");
        let d = s.defrag_begin().expect("begin");
        let mut other = KvStore::new();
        assert!(matches!(other.defrag_finish(d), Err((None, DefragError::Replaced))));
    }
}
