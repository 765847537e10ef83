//! A watch stream's range watchers, by range, and which of the ranges hold a given key.
//!
//! A stream may hold up to 100,000 watchers, each on a range of its own. Scanning every
//! distinct range for every event made an event cost one comparison per range, on every
//! stream; etcd keeps its range watchers in an interval tree. Here the ranges go into an
//! interval tree (the `intervaltree` crate's, which is immutable), rebuilt when it is next
//! needed once more than √n ranges (at least [`PENDING_MIN`]) were added since it was
//! built, n being the ranges it holds. The ranges added meanwhile are scanned, so an event
//! costs O(log n) comparisons in the tree plus at most √n in the scan, and a stream that
//! adds n ranges while events flow causes about 2√n rebuilds. A range whose last watcher
//! goes stays in the tree until the next rebuild (due once they are half of it), with no
//! watchers: its entry is kept empty, so that a new watcher of the same range finds it
//! there rather than being added twice.

use std::collections::{HashMap, HashSet};

use bytes::Bytes;
use intervaltree::IntervalTree;

/// Ranges added since the tree was built that lookups scan, at least, before it is rebuilt.
const PENDING_MIN: usize = 32;

/// A watch range: `[key, end)`, or every key from `key` when `end` is `"\0"` (etcd's
/// convention; single keys are not ranges here).
pub type Range = (Bytes, Bytes);

/// A point on the key line: a key, or past every key.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Point {
    Key(Bytes),
    End,
}

fn span(range: &Range) -> std::ops::Range<Point> {
    let end = if range.1.as_ref() == [0] { Point::End } else { Point::Key(range.1.clone()) };
    Point::Key(range.0.clone())..end
}

/// See the module docs.
#[derive(Default)]
pub struct Ranges {
    /// The watchers of each range; empty for a range the tree holds whose watchers all went.
    ids: HashMap<Range, Vec<i64>>,
    /// The ranges in `ids` when it was built (None before the first build).
    tree: Option<IntervalTree<Point, ()>>,
    /// Ranges with watchers that the tree does not hold.
    pending: HashSet<Range>,
    /// Entries of `ids` left empty.
    emptied: usize,
    /// Ranges in the tree.
    indexed: usize,
}

impl Ranges {
    /// Watcher `id` watches `range`.
    pub fn add(&mut self, range: Range, id: i64) {
        match self.ids.get_mut(&range) {
            Some(ids) => {
                if ids.is_empty() {
                    self.emptied -= 1;
                }
                ids.push(id);
            }
            None => {
                self.pending.insert(range.clone());
                self.ids.insert(range, vec![id]);
            }
        }
    }

    /// Watcher `id` no longer watches `range`.
    pub fn remove(&mut self, range: &Range, id: i64) {
        let Some(ids) = self.ids.get_mut(range) else { return };
        ids.retain(|&i| i != id);
        if ids.is_empty() {
            if self.pending.remove(range) {
                self.ids.remove(range);
            } else {
                self.emptied += 1;
            }
        }
    }

    /// Whether no range has a watcher.
    pub fn is_empty(&self) -> bool {
        self.ids.len() == self.emptied
    }

    /// The watchers of `range`.
    pub fn watchers(&self, range: &Range) -> &[i64] {
        self.ids.get(range).map_or(&[], Vec::as_slice)
    }

    /// Rebuilds the tree if it is due (call before a series of [`Ranges::holding`]).
    pub fn index(&mut self) {
        let due = self.pending.len() > PENDING_MIN.max(self.indexed.isqrt())
            || self.emptied > PENDING_MIN.max(self.indexed / 2);
        if due {
            self.rebuild();
        }
    }

    fn rebuild(&mut self) {
        self.ids.retain(|_, ids| !ids.is_empty());
        self.emptied = 0;
        self.pending.clear();
        self.indexed = self.ids.len();
        self.tree = Some(self.ids.keys().map(|range| (span(range), ())).collect());
    }

    /// Calls `f` once with every range that holds `key` and has watchers.
    pub fn holding(&self, key: &Bytes, mut f: impl FnMut(&Range, &[i64])) {
        if let Some(tree) = &self.tree {
            for element in tree.query_point(Point::Key(key.clone())) {
                let Point::Key(start) = &element.range.start else { continue };
                let end = match &element.range.end {
                    Point::Key(end) => end.clone(),
                    Point::End => Bytes::from_static(&[0]),
                };
                let range = (start.clone(), end);
                if let Some(ids) = self.ids.get(&range)
                    && !ids.is_empty()
                {
                    f(&range, ids);
                }
            }
        }
        for range in &self.pending {
            if raftkv_kv::key_in_range(key, &range.0, &range.1) {
                f(range, self.watchers(range));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use proptest::prelude::*;

    use super::*;

    fn key(k: &[u8]) -> Bytes {
        Bytes::copy_from_slice(k)
    }

    /// The ranges holding `k` with their watchers, by the index.
    fn found(r: &Ranges, k: &[u8]) -> BTreeSet<(Vec<u8>, Vec<u8>, Vec<i64>)> {
        let mut out = BTreeSet::new();
        r.holding(&key(k), |range, ids| {
            let mut ids = ids.to_vec();
            ids.sort();
            assert!(out.insert((range.0.to_vec(), range.1.to_vec(), ids)), "{range:?} reported twice");
        });
        out
    }

    /// The same by scanning a plain model.
    fn expected(
        model: &HashMap<(Vec<u8>, Vec<u8>), BTreeSet<i64>>,
        k: &[u8],
    ) -> BTreeSet<(Vec<u8>, Vec<u8>, Vec<i64>)> {
        model
            .iter()
            .filter(|((s, e), ids)| !ids.is_empty() && raftkv_kv::key_in_range(k, s, e))
            .map(|((s, e), ids)| (s.clone(), e.clone(), ids.iter().copied().collect()))
            .collect()
    }

    #[derive(Debug, Clone)]
    enum Op {
        Add(u8, u8, i64),
        Remove(u8, u8, i64),
        Index,
        Query(u8),
    }

    /// Small keys over a small alphabet, so that ranges overlap, repeat and end at "\0".
    fn bytes_of(n: u8) -> Vec<u8> {
        match n % 8 {
            0 => vec![0],
            i => vec![b'a' + i, b'a' + n / 8 % 4],
        }
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            4 => (1u8..32, any::<u8>(), 0i64..8).prop_map(|(s, e, id)| Op::Add(s, e, id)),
            2 => (1u8..32, any::<u8>(), 0i64..8).prop_map(|(s, e, id)| Op::Remove(s, e, id)),
            1 => Just(Op::Index),
            3 => any::<u8>().prop_map(Op::Query),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]
        /// Whatever the order of adds, removes and rebuilds, a lookup finds exactly the ranges
        /// a scan finds, each once, with their watchers.
        #[test]
        fn lookups_agree_with_a_scan(ops in prop::collection::vec(op(), 1..200)) {
            let mut r = Ranges::default();
            let mut model: HashMap<(Vec<u8>, Vec<u8>), BTreeSet<i64>> = HashMap::new();
            for op in ops {
                match op {
                    Op::Add(s, e, id) => {
                        let (s, e) = (bytes_of(s), bytes_of(e));
                        if model.entry((s.clone(), e.clone())).or_default().insert(id) {
                            r.add((key(&s), key(&e)), id);
                        }
                    }
                    Op::Remove(s, e, id) => {
                        let (s, e) = (bytes_of(s), bytes_of(e));
                        if model.get_mut(&(s.clone(), e.clone())).is_some_and(|ids| ids.remove(&id)) {
                            r.remove(&(key(&s), key(&e)), id);
                        }
                    }
                    // Rebuild whenever asked, to exercise the tree as much as the scan.
                    Op::Index => r.rebuild(),
                    Op::Query(k) => {
                        r.index();
                        let k = bytes_of(k);
                        prop_assert_eq!(found(&r, &k), expected(&model, &k));
                    }
                }
                prop_assert_eq!(r.is_empty(), model.values().all(|ids| ids.is_empty()));
            }
        }
    }

    #[test]
    fn many_ranges_rebuild_rarely_and_are_all_found() {
        let mut r = Ranges::default();
        let n = 20_000;
        let mut builds = 0;
        for i in 0..n {
            r.add((key(format!("p{i:06}/").as_bytes()), key(format!("p{i:06}0").as_bytes())), i);
            let had = r.indexed;
            r.index();
            builds += usize::from(r.indexed != had);
            assert!(r.pending.len() <= PENDING_MIN.max(r.indexed.isqrt()), "{} pending", r.pending.len());
        }
        // About 2√n, plus the first ones at PENDING_MIN.
        assert!(builds <= 2 * (n as usize).isqrt() + PENDING_MIN, "{builds} rebuilds for {n} ranges");
        for i in (0..n).step_by(97) {
            let hits = found(&r, format!("p{i:06}/x").as_bytes());
            assert_eq!(hits.len(), 1);
            assert_eq!(hits.iter().next().map(|h| h.2.clone()), Some(vec![i]));
        }
        assert!(found(&r, b"q").is_empty());
        // Every key from "p" on.
        r.add((key(b"p"), key(&[0])), -1);
        assert_eq!(found(&r, b"zzz").len(), 1);
        assert_eq!(found(&r, b"p000001/a").len(), 2);
    }
}
