//! What watches need from the store: the changes of each write as it is applied
//! ([`KvStore::set_capture`], [`KvStore::take_changes`]) and the changes of past
//! revisions read back from the MVCC history ([`KvStore::history_events`]).
//!
//! Changes are captured in the write path itself (`do_put`, `do_delete`), so every
//! write that changes a key produces its events whatever command caused it (a put, a
//! delete, a transaction, or a delete made by the store on its own behalf), in the order
//! of their sub-revisions. Capturing never reads the cold store: the previous version of
//! a written key is its newest one, which is in memory.

use std::ops::Bound;

use bytes::Bytes;
use raftkv_api::mvccpb::event::EventType;
use raftkv_api::mvccpb::{Event, KeyValue};

use crate::KvError;
use crate::store::{KeyHistory, KvStore, Rev, value_in};

/// Limits of one [`KvStore::history_events`] batch.
#[derive(Clone, Copy, Debug)]
pub struct HistoryLimits {
    /// Events per batch (a single revision with more events is returned whole).
    pub max_events: usize,
    /// Estimated bytes (keys and values) per batch, with the same exception.
    pub max_bytes: usize,
}

impl Default for HistoryLimits {
    fn default() -> Self {
        HistoryLimits { max_events: 1000, max_bytes: 4 << 20 }
    }
}

/// Events of the revisions `from..=through` (in revision, then sub-revision order).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct HistoryBatch {
    pub events: Vec<Event>,
    /// The last revision this batch covers: the next batch starts at `through + 1`.
    pub through: i64,
}

/// Whether `key` is inside a watch's range, with etcd's conventions: an empty `end` is
/// the single key `start`, `end == "\0"` is every key from `start` on.
pub fn key_in_range(key: &[u8], start: &[u8], end: &[u8]) -> bool {
    if end.is_empty() {
        key == start
    } else if end == [0] {
        key >= start
    } else {
        key >= start && key < end
    }
}

/// Index bounds of a watch range, or `None` when it is empty.
type KeyBounds<'a> = (Bound<&'a [u8]>, Bound<&'a [u8]>);

fn bounds<'a>(start: &'a [u8], end: &'a [u8]) -> Option<KeyBounds<'a>> {
    if end.is_empty() {
        Some((Bound::Included(start), Bound::Included(start)))
    } else if end == [0] {
        Some((Bound::Included(start), Bound::Unbounded))
    } else if start < end {
        Some((Bound::Included(start), Bound::Excluded(end)))
    } else {
        None
    }
}

/// A version found while scanning: enough to order it and to build its event later.
struct Found<'a> {
    main: i64,
    sub: u32,
    key: &'a [u8],
    hist: &'a KeyHistory,
    index: usize,
    size: usize,
}

impl KvStore {
    /// Turns capturing of changes on or off. While on, every applied write appends its
    /// events to a buffer that [`KvStore::take_changes`] empties; turning it off drops
    /// what was not taken.
    pub fn set_capture(&mut self, on: bool) {
        self.changes = if on { Some(self.changes.take().unwrap_or_default()) } else { None };
    }

    /// Whether changes are being captured.
    pub fn capturing(&self) -> bool {
        self.changes.is_some()
    }

    /// The events captured since the last call (empty when capturing is off), each with
    /// the previous version of its key as `prev_kv` when there was a live one.
    pub fn take_changes(&mut self) -> Vec<Event> {
        match &mut self.changes {
            Some(changes) => std::mem::take(changes),
            None => Vec::new(),
        }
    }

    /// Records a put of `key` at `rev`/`r` (newest version `value`), `prev` being the
    /// version it supersedes.
    pub(crate) fn capture_put(
        &mut self,
        key: &[u8],
        r: &Rev,
        value: &Bytes,
        lease: i64,
        prev: Option<KeyValue>,
    ) {
        if let Some(changes) = &mut self.changes {
            // A copy: the request's key may be a slice of a large buffer (a log batch).
            let key = Bytes::copy_from_slice(key);
            let prev = prev.map(|p| KeyValue { key: key.clone(), ..p });
            let kv = KeyValue {
                key,
                create_revision: r.create,
                mod_revision: r.main,
                version: r.version,
                value: value.clone(),
                lease,
            };
            changes.push(Event { r#type: EventType::Put as i32, kv: Some(kv), prev_kv: prev });
        }
    }

    /// Records the deletion of `key` at `rev`, `prev` being the deleted version.
    pub(crate) fn capture_delete(changes: &mut Option<Vec<Event>>, key: &[u8], rev: i64, prev: KeyValue) {
        if let Some(changes) = changes {
            let kv = KeyValue { key: Bytes::copy_from_slice(key), mod_revision: rev, ..Default::default() };
            changes.push(Event { r#type: EventType::Delete as i32, kv: Some(kv), prev_kv: Some(prev) });
        }
    }

    /// The events of the keys in `[start, end)` (etcd's conventions, see [`key_in_range`])
    /// at revisions `from..=to`, read from the MVCC history, each with its key's previous
    /// version as `prev_kv` when that is live and retained. At most `limits` worth of
    /// whole revisions are returned; `through` says how far the batch got.
    ///
    /// Fails with [`KvError::Compacted`] when `from` is below the compacted revision (as
    /// etcd, the events there may be gone), and with [`KvError::ColdRead`] when a past
    /// value cannot be read. `to` is clamped to the current revision.
    pub fn history_events(
        &self,
        start: &[u8],
        end: &[u8],
        from: i64,
        to: i64,
        limits: HistoryLimits,
    ) -> Result<HistoryBatch, KvError> {
        if from < self.compacted {
            return Err(KvError::Compacted);
        }
        let from = from.max(1);
        let mut to = to.min(self.rev);
        if from > to {
            return Ok(HistoryBatch { events: Vec::new(), through: to.max(from - 1) });
        }
        let Some(range) = bounds(start, end) else {
            return Ok(HistoryBatch { events: Vec::new(), through: to });
        };
        let max_events = limits.max_events.max(1);
        let mut found: Vec<Found<'_>> = Vec::new();
        for (key, hist) in self.map.range(range) {
            let first = hist.revs.partition_point(|r| r.main < from);
            for (index, r) in hist.revs.iter().enumerate().skip(first) {
                if r.main > to {
                    break;
                }
                // The value, and the previous one as prev_kv (about as large).
                let size = key.len() + 2 * r.vlen as usize + 64;
                found.push(Found { main: r.main, sub: r.sub, key, hist, index, size });
            }
            // Keep the scan's memory bounded: cut at a revision boundary early.
            if found.len() > 4 * max_events {
                to = cut(&mut found, max_events, limits.max_bytes, to);
            }
        }
        let through = cut(&mut found, max_events, limits.max_bytes, to);
        let mut events = Vec::with_capacity(found.len());
        for f in &found {
            events.push(self.history_event(f)?);
        }
        Ok(HistoryBatch { events, through })
    }

    fn history_event(&self, f: &Found<'_>) -> Result<Event, KvError> {
        let r = f.hist.revs[f.index];
        let key = Bytes::copy_from_slice(f.key);
        let prev = match f.index.checked_sub(1).map(|i| (i, f.hist.revs[i])) {
            Some((i, p)) if p.version != 0 => Some(KeyValue {
                key: key.clone(),
                create_revision: p.create,
                mod_revision: p.main,
                version: p.version,
                value: value_in(&self.cold, f.hist, i).map_err(KvError::cold)?,
                // The lease table keeps each version's lease until compaction discards it
                // (also after the lease is revoked).
                lease: self.leases.lease_of(p.main, p.sub),
            }),
            _ => None,
        };
        if r.version == 0 {
            let kv = KeyValue { key, mod_revision: r.main, ..Default::default() };
            return Ok(Event { r#type: EventType::Delete as i32, kv: Some(kv), prev_kv: prev });
        }
        let kv = KeyValue {
            key,
            create_revision: r.create,
            mod_revision: r.main,
            version: r.version,
            value: value_in(&self.cold, f.hist, f.index).map_err(KvError::cold)?,
            lease: self.leases.lease_of(r.main, r.sub),
        };
        Ok(Event { r#type: EventType::Put as i32, kv: Some(kv), prev_kv: prev })
    }
}

/// Sorts `found` by (revision, sub-revision) and keeps whole revisions within the limits
/// (at least the first revision). Returns the last revision kept, or `to` when all fit.
fn cut(found: &mut Vec<Found<'_>>, max_events: usize, max_bytes: usize, to: i64) -> i64 {
    found.sort_unstable_by_key(|f| (f.main, f.sub));
    let mut bytes = 0usize;
    let mut end = found.len();
    for (i, f) in found.iter().enumerate() {
        bytes += f.size;
        if i >= max_events || bytes > max_bytes {
            end = i;
            break;
        }
    }
    if end == found.len() {
        return to;
    }
    // Back off to the start of the revision that did not fit, unless it is the first.
    let over = found[end].main;
    let first = found[0].main;
    let (keep_to, through) = if over == first {
        (found.partition_point(|f| f.main <= first), first)
    } else {
        (found.partition_point(|f| f.main < over), over - 1)
    };
    found.truncate(keep_to);
    through
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use raftkv_api::etcdserverpb::request_op::Request as Op;
    use raftkv_api::etcdserverpb::{
        CompactionRequest, DeleteRangeRequest, PutRequest, RequestOp, TxnRequest,
    };

    fn put(s: &mut KvStore, k: &str, v: &str) -> i64 {
        let req = PutRequest { key: k.to_string().into(), value: v.to_string().into(), ..Default::default() };
        s.put(req).unwrap().header.unwrap().revision
    }

    fn summary(events: &[Event]) -> Vec<(i32, String, i64, Option<String>)> {
        events
            .iter()
            .map(|e| {
                let kv = e.kv.as_ref().unwrap();
                let prev = e.prev_kv.as_ref().map(|p| String::from_utf8_lossy(&p.value).into_owned());
                (e.r#type, String::from_utf8_lossy(&kv.key).into_owned(), kv.mod_revision, prev)
            })
            .collect()
    }

    /// A replayed version that is no longer the key's newest (overwritten, its lease since
    /// revoked) reports the lease it was written with, as etcd's history does.
    #[test]
    fn history_keeps_the_lease_of_older_versions() {
        let mut s = KvStore::new();
        for id in [1, 2] {
            s.lease_grant(&raftkv_api::etcdserverpb::LeaseGrantRequest { ttl: 60, id }).unwrap();
        }
        for (v, lease) in [("1", 1), ("2", 2)] {
            let req = PutRequest { key: "a".into(), value: v.into(), lease, ..Default::default() };
            s.put(req).unwrap();
        }
        s.lease_revoke(&raftkv_api::etcdserverpb::LeaseRevokeRequest { id: 2 }).unwrap();
        let history = s.history_events(b"a", &[], 1, i64::MAX, HistoryLimits::default()).unwrap();
        let leases: Vec<(i64, Option<i64>)> = history
            .events
            .iter()
            .map(|e| (e.kv.as_ref().map_or(-1, |kv| kv.lease), e.prev_kv.as_ref().map(|p| p.lease)))
            .collect();
        assert_eq!(leases, vec![(1, None), (2, Some(1)), (0, Some(2))]);
    }

    /// The events captured while applying and those read back from the history are the
    /// same, for puts, deletes and a multi-key transaction (in sub-revision order).
    #[test]
    fn captured_and_history_events_agree() {
        let mut s = KvStore::new();
        s.set_capture(true);
        put(&mut s, "a", "1");
        put(&mut s, "b", "2");
        put(&mut s, "a", "3");
        s.delete_range(&DeleteRangeRequest { key: "a".into(), ..Default::default() }).unwrap();
        let txn = TxnRequest {
            success: vec![
                RequestOp {
                    request: Some(Op::RequestPut(PutRequest {
                        key: "c".into(),
                        value: "4".into(),
                        ..Default::default()
                    })),
                },
                RequestOp {
                    request: Some(Op::RequestDeleteRange(DeleteRangeRequest {
                        key: "b".into(),
                        ..Default::default()
                    })),
                },
            ],
            ..Default::default()
        };
        s.txn(&txn).unwrap();
        // A delete of nothing is no change.
        s.delete_range(&DeleteRangeRequest { key: "zz".into(), ..Default::default() }).unwrap();
        let captured = s.take_changes();
        let history = s.history_events(b"\0", &[0], 1, i64::MAX, HistoryLimits::default()).unwrap();
        assert_eq!(history.through, 6);
        assert_eq!(captured, history.events);
        let del = EventType::Delete as i32;
        assert_eq!(
            summary(&captured),
            vec![
                (0, "a".into(), 2, None),
                (0, "b".into(), 3, None),
                (0, "a".into(), 4, Some("1".into())),
                (del, "a".into(), 5, Some("3".into())),
                (0, "c".into(), 6, None),
                (del, "b".into(), 6, Some("2".into())),
            ]
        );
        assert!(s.take_changes().is_empty());
        s.set_capture(false);
        put(&mut s, "a", "5");
        assert!(s.take_changes().is_empty());
        // Key and prefix ranges, and a start revision.
        let only_a = s.history_events(b"a", b"", 3, i64::MAX, HistoryLimits::default()).unwrap();
        assert_eq!(summary(&only_a.events).iter().map(|e| e.2).collect::<Vec<_>>(), [4, 5, 7]);
        let b_to_c = s.history_events(b"b", b"d", 1, 5, HistoryLimits::default()).unwrap();
        assert_eq!((summary(&b_to_c.events).len(), b_to_c.through), (1, 5));
        // Nothing yet at a future revision; an empty range covers the revisions too.
        let future = s.history_events(b"a", b"", 100, i64::MAX, HistoryLimits::default()).unwrap();
        assert!(future.events.is_empty());
        let empty = s.history_events(b"b", b"a", 1, i64::MAX, HistoryLimits::default()).unwrap();
        assert_eq!((empty.events.len(), empty.through), (0, 7));
    }

    /// Batches end at revision boundaries; a revision larger than the limit comes whole.
    #[test]
    fn batches_are_cut_between_revisions() {
        let mut s = KvStore::new();
        for i in 0..10 {
            put(&mut s, &format!("k{i}"), "v");
        }
        // One revision with ten events.
        s.delete_range(&DeleteRangeRequest { key: "k".into(), range_end: "l".into(), ..Default::default() })
            .unwrap();
        let limits = HistoryLimits { max_events: 3, max_bytes: usize::MAX };
        let mut from = 1;
        let mut revs = Vec::new();
        loop {
            let b = s.history_events(b"k", b"l", from, i64::MAX, limits).unwrap();
            if b.events.is_empty() {
                assert_eq!(b.through, s.revision());
                break;
            }
            assert!(
                b.events.len() <= 3 || b.events.iter().all(|e| e.kv.as_ref().unwrap().mod_revision == 12)
            );
            revs.extend(b.events.iter().map(|e| e.kv.as_ref().unwrap().mod_revision));
            from = b.through + 1;
        }
        let mut want: Vec<i64> = (2..=11).collect();
        want.extend([12; 10]);
        assert_eq!(revs, want);
        // Many keys, each written once: the scan cuts early and still returns in order.
        let mut s = KvStore::new();
        for i in 0..100 {
            put(&mut s, &format!("x{:03}", 99 - i), "v");
        }
        let b =
            s.history_events(b"x", b"y", 1, i64::MAX, HistoryLimits { max_events: 5, max_bytes: usize::MAX });
        let b = b.unwrap();
        assert_eq!(
            b.events.iter().map(|e| e.kv.as_ref().unwrap().mod_revision).collect::<Vec<_>>(),
            [2, 3, 4, 5, 6]
        );
        assert_eq!(b.through, 6);
    }

    #[test]
    fn compacted_start_is_refused() {
        let mut s = KvStore::new();
        for i in 0..5 {
            put(&mut s, "k", &i.to_string());
        }
        s.compact(&CompactionRequest { revision: 4, ..Default::default() }).unwrap();
        assert_eq!(
            s.history_events(b"k", b"", 3, i64::MAX, HistoryLimits::default()),
            Err(KvError::Compacted)
        );
        let b = s.history_events(b"k", b"", 4, i64::MAX, HistoryLimits::default()).unwrap();
        assert_eq!(summary(&b.events).iter().map(|e| e.2).collect::<Vec<_>>(), [4, 5, 6]);
    }

    proptest::proptest! {
        /// Over random writes, the captured events are exactly the history's, and reading
        /// the history of any range in small batches gives the captured events of that range,
        /// in order, with no gap or duplicate at the batch seams.
        #[test]
        fn batched_history_equals_capture(
            ops in proptest::collection::vec((0u8..3, 0u8..6, 0u8..4), 1..60),
            max_events in 1usize..5,
            start in 0u8..6,
            width in 0u8..4,
        ) {
            let mut s = KvStore::new();
            s.set_capture(true);
            for (kind, k, n) in ops {
                let key = format!("k{k}");
                match kind {
                    0 => { put(&mut s, &key, &n.to_string()); }
                    1 => {
                        let end = format!("k{}", k + n);
                        s.delete_range(&DeleteRangeRequest { key: key.into(), range_end: end.into(), ..Default::default() }).unwrap();
                    }
                    _ => {
                        let ops = (0..=n).map(|i| RequestOp { request: Some(Op::RequestPut(PutRequest {
                            key: format!("k{}", (k + i) % 6).into(), value: "t".into(), ..Default::default()
                        })) }).collect();
                        s.txn(&TxnRequest { success: ops, ..Default::default() }).unwrap();
                    }
                }
            }
            let captured = s.take_changes();
            let all = s.history_events(b"\0", &[0], 1, i64::MAX, HistoryLimits::default()).unwrap();
            proptest::prop_assert_eq!(&all.events, &captured);
            let (lo, hi) = (format!("k{start}"), if width == 0 { String::new() } else { format!("k{}", start + width) });
            let want: Vec<Event> = captured.iter().filter(|e| {
                key_in_range(&e.kv.as_ref().unwrap().key, lo.as_bytes(), hi.as_bytes())
            }).cloned().collect();
            let mut got = Vec::new();
            let mut from = 1;
            let limits = HistoryLimits { max_events, max_bytes: usize::MAX };
            loop {
                let b = s.history_events(lo.as_bytes(), hi.as_bytes(), from, s.revision(), limits).unwrap();
                proptest::prop_assert!(b.through >= from - 1);
                got.extend(b.events);
                if b.through >= s.revision() { break; }
                from = b.through + 1;
            }
            proptest::prop_assert_eq!(got, want);
        }
    }

    #[test]
    fn ranges_follow_etcd_conventions() {
        assert!(key_in_range(b"a", b"a", b""));
        assert!(!key_in_range(b"ab", b"a", b""));
        assert!(key_in_range(b"zzz", b"a", &[0]));
        assert!(!key_in_range(b"0", b"a", &[0]));
        assert!(key_in_range(b"ab", b"a", b"b"));
        assert!(!key_in_range(b"b", b"a", b"b"));
    }
}
