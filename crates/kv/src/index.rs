//! The key index: every key's [`KeyHistory`], found by hashing for point lookups and in
//! key order for ranges and snapshots.
//!
//! A put looks its key up once; in a B-tree of 100k keys that was a walk through five or
//! six nodes, each a cache miss or two, and the largest single cost of applying a put. Here
//! the histories live in a slab; a hash table of slot numbers finds a key's slot with about
//! one miss, and a B-tree of keys to slot numbers (small entries) keeps the order. A new
//! key touches both; an existing key, the common case, only the hash table.

use std::collections::BTreeMap;
use std::hash::BuildHasher;
use std::ops::Bound;

use crate::store::{Key, KeyHistory};

/// SipHash with a per-process random key (std's): keys come from clients, so the table must
/// not be open to collision floods.
type Hasher = std::collections::hash_map::RandomState;

#[derive(Debug, Default)]
pub(crate) struct KeyIndex {
    /// Keys in order, to their slot in `slots`.
    ordered: BTreeMap<Key, u32>,
    /// `None` for a free slot (listed in `free`).
    slots: Vec<Option<(Key, KeyHistory)>>,
    free: Vec<u32>,
    /// Slot numbers, hashed by their key.
    table: hashbrown::HashTable<u32>,
    hasher: Hasher,
}

impl KeyIndex {
    pub(crate) fn new() -> KeyIndex {
        KeyIndex::default()
    }

    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.ordered.len()
    }

    fn slot_of(&self, key: &[u8]) -> Option<u32> {
        let hash = self.hasher.hash_one(key);
        let slots = &self.slots;
        self.table
            .find(hash, |&i| {
                slots.get(i as usize).and_then(Option::as_ref).is_some_and(|(k, _)| &k[..] == key)
            })
            .copied()
    }

    pub(crate) fn get(&self, key: &[u8]) -> Option<&KeyHistory> {
        let i = self.slot_of(key)?;
        self.slots.get(i as usize)?.as_ref().map(|(_, h)| h)
    }

    pub(crate) fn get_mut(&mut self, key: &[u8]) -> Option<&mut KeyHistory> {
        let i = self.slot_of(key)?;
        self.slots.get_mut(i as usize)?.as_mut().map(|(_, h)| h)
    }

    /// Adds a key that is not in the index (replaces its history if it is).
    pub(crate) fn insert(&mut self, key: Key, h: KeyHistory) {
        if let Some(old) = self.get_mut(&key) {
            *old = h;
            return;
        }
        let i = match self.free.pop() {
            Some(i) => i,
            None => {
                if self.slots.len() == self.slots.capacity() {
                    // Grow by a quarter: at a million keys doubling would hold ~90 MB idle.
                    self.slots.reserve_exact((self.slots.len() / 4).max(16));
                }
                self.slots.push(None);
                u32::try_from(self.slots.len() - 1).unwrap_or(u32::MAX)
            }
        };
        let hash = self.hasher.hash_one(&key[..]);
        self.ordered.insert(key.clone(), i);
        // The slot is filled first: growing the table rehashes every slot by its key.
        if let Some(s) = self.slots.get_mut(i as usize) {
            *s = Some((key, h));
        }
        let (slots, hasher) = (&self.slots, &self.hasher);
        self.table.insert_unique(hash, i, |&j| match slots.get(j as usize).and_then(Option::as_ref) {
            Some((k, _)) => hasher.hash_one(&k[..]),
            None => 0,
        });
    }

    /// Keys within `bounds`, in order, with their histories.
    pub(crate) fn range<'a>(
        &'a self,
        bounds: (Bound<&[u8]>, Bound<&[u8]>),
    ) -> impl Iterator<Item = (&'a Key, &'a KeyHistory)> + 'a {
        let slots = &self.slots;
        self.ordered
            .range::<[u8], _>(bounds)
            .filter_map(move |(k, &i)| slots.get(i as usize)?.as_ref().map(|(_, h)| (k, h)))
    }

    /// Calls `f` on the keys within `bounds`, in order, with their histories.
    pub(crate) fn for_each_in_range_mut(
        &mut self,
        bounds: (Bound<&[u8]>, Bound<&[u8]>),
        mut f: impl FnMut(&Key, &mut KeyHistory),
    ) {
        let KeyIndex { ordered, slots, .. } = self;
        for (k, &i) in ordered.range::<[u8], _>(bounds) {
            if let Some(Some((_, h))) = slots.get_mut(i as usize) {
                f(k, h);
            }
        }
    }

    /// Every history, in slot order (the same order on every call while the index is
    /// not changed).
    pub(crate) fn values(&self) -> impl Iterator<Item = &KeyHistory> {
        self.slots.iter().filter_map(|s| s.as_ref().map(|(_, h)| h))
    }

    /// As [`KeyIndex::values`].
    pub(crate) fn values_mut(&mut self) -> impl Iterator<Item = &mut KeyHistory> {
        self.slots.iter_mut().filter_map(|s| s.as_mut().map(|(_, h)| h))
    }

    /// Keeps the keys for which `keep` returns true.
    pub(crate) fn retain(&mut self, mut keep: impl FnMut(&Key, &mut KeyHistory) -> bool) {
        for i in 0..self.slots.len() {
            let drop = match self.slots.get_mut(i) {
                Some(Some((k, h))) => !keep(k, h),
                _ => false,
            };
            if !drop {
                continue;
            }
            let Some(Some((key, _))) = self.slots.get_mut(i).map(Option::take) else { continue };
            let hash = self.hasher.hash_one(&key[..]);
            let slot = i as u32;
            if let Ok(entry) = self.table.find_entry(hash, |&j| j == slot) {
                entry.remove();
            }
            self.ordered.remove(&key);
            self.free.push(slot);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    fn hist(n: i64) -> KeyHistory {
        KeyHistory {
            revs: vec![crate::store::Rev { main: n, sub: 0, create: n, version: 1, vlen: 0, pos: 0 }],
            latest: Bytes::new(),
        }
    }

    /// Against a plain BTreeMap, through inserts, updates, removals and reuse of slots.
    #[test]
    fn behaves_like_an_ordered_map() {
        let mut idx = KeyIndex::new();
        let mut model: BTreeMap<Vec<u8>, i64> = BTreeMap::new();
        let mut x = 7u64;
        for step in 0..20_000i64 {
            x = x.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            let key = format!("k{:04}", (x >> 33) % 3000).into_bytes();
            match (x >> 20) % 10 {
                0 => {
                    let cut = (x >> 40) % 3000;
                    idx.retain(|k, _| k[..] > format!("k{cut:04}").into_bytes()[..] || k.len() % 2 == 0);
                    model.retain(|k, _| k[..] > format!("k{cut:04}").into_bytes()[..] || k.len() % 2 == 0);
                }
                1..=4 => {
                    if let Some(h) = idx.get_mut(&key) {
                        h.revs[0].main = step;
                    }
                    if let Some(v) = model.get_mut(&key) {
                        *v = step;
                    }
                }
                _ => {
                    idx.insert(Key::from_slice(&key), hist(step));
                    model.insert(key.clone(), step);
                }
            }
            assert_eq!(idx.get(&key).map(|h| h.revs[0].main), model.get(&key).copied(), "step {step}");
        }
        assert_eq!(idx.len(), model.len());
        let got: Vec<(Vec<u8>, i64)> = idx
            .range((Bound::Unbounded, Bound::Unbounded))
            .map(|(k, h)| (k.to_vec(), h.revs[0].main))
            .collect();
        let want: Vec<(Vec<u8>, i64)> = model.iter().map(|(k, v)| (k.clone(), *v)).collect();
        assert_eq!(got, want);
        let lo = b"k1000".as_slice();
        let hi = b"k2000".as_slice();
        let got: Vec<Vec<u8>> =
            idx.range((Bound::Included(lo), Bound::Excluded(hi))).map(|(k, _)| k.to_vec()).collect();
        let want: Vec<Vec<u8>> = model.range(lo.to_vec()..hi.to_vec()).map(|(k, _)| k.clone()).collect();
        assert_eq!(got, want);
        let mut seen = 0;
        idx.for_each_in_range_mut((Bound::Included(lo), Bound::Excluded(hi)), |_, h| {
            h.revs[0].main = -1;
            seen += 1;
        });
        assert_eq!(seen, want.len());
        assert_eq!(idx.values().filter(|h| h.revs[0].main == -1).count(), want.len());
        assert_eq!(idx.values_mut().count(), model.len());
    }
}
