//! One conformance suite, run against the in-memory model and the file
//! store (on the simulated and on the real file system).
#![allow(clippy::unwrap_used)]

mod common;

use std::sync::Arc;

use bytes::Bytes;
use common::*;
use raftkv_storage::{
    CrashMode, FileLogStore, HardState, LogRecord, LogRecovered, LogStore, MemLogStore, RealFs, SimFs,
    StorageError,
};

trait Harness {
    type S: LogStore;
    fn fresh(&mut self) -> Self::S;
    /// Crash (losing unsynced data where the backend can) and reopen.
    fn crash_reopen(&mut self, s: Self::S) -> (Self::S, LogRecovered);
    fn loses_unsynced(&self) -> bool;
}

struct MemH;
impl Harness for MemH {
    type S = MemLogStore;
    fn fresh(&mut self) -> MemLogStore {
        MemLogStore::new()
    }
    fn crash_reopen(&mut self, s: MemLogStore) -> (MemLogStore, LogRecovered) {
        let disk = s.disk();
        drop(s);
        MemLogStore::open(disk)
    }
    fn loses_unsynced(&self) -> bool {
        true
    }
}

struct SimH(SimFs);
impl Harness for SimH {
    type S = FileLogStore;
    fn fresh(&mut self) -> FileLogStore {
        self.0 = SimFs::new();
        sim_create(&self.0, small_opts())
    }
    fn crash_reopen(&mut self, s: FileLogStore) -> (FileLogStore, LogRecovered) {
        drop(s);
        self.0.crash(CrashMode::LoseUnsynced);
        sim_open(&self.0, small_opts()).unwrap()
    }
    fn loses_unsynced(&self) -> bool {
        true
    }
}

struct RealH(Option<tempfile::TempDir>);
impl Harness for RealH {
    type S = FileLogStore;
    fn fresh(&mut self) -> FileLogStore {
        let d = tempfile::tempdir().unwrap();
        let s = FileLogStore::create(Arc::new(RealFs), &d.path().join("log"), IDS, small_opts()).unwrap();
        self.0 = Some(d);
        s
    }
    fn crash_reopen(&mut self, s: FileLogStore) -> (FileLogStore, LogRecovered) {
        drop(s);
        let d = self.0.as_ref().unwrap();
        FileLogStore::open(Arc::new(RealFs), &d.path().join("log"), IDS, small_opts()).unwrap()
    }
    fn loses_unsynced(&self) -> bool {
        false
    }
}

fn check_recovered<S: LogStore>(s: &S, r: &LogRecovered) {
    assert_eq!(r.first_index, s.first_index());
    assert_eq!(r.last_index, s.last_index());
    assert_eq!(r.hard_state, s.hard_state());
    assert_eq!(r.records, s.entries(s.first_index(), s.last_index() + 1).unwrap());
}

fn empty_store<H: Harness>(h: &mut H) {
    let s = h.fresh();
    assert_eq!((s.first_index(), s.last_index()), (1, 0));
    assert_eq!(s.entries(1, 1).unwrap(), vec![]);
    assert_eq!(s.term(0), None);
    assert_eq!(s.term(1), None);
    assert_eq!(s.hard_state(), HardState::default());
    let (s, r) = h.crash_reopen(s);
    check_recovered(&s, &r);
    assert_eq!((r.first_index, r.last_index, r.records.len()), (1, 0, 0));
}

fn append_and_read<H: Harness>(h: &mut H) {
    let mut s = h.fresh();
    s.append(&recs(1, 10, 1, "a")).unwrap();
    s.sync().unwrap();
    assert_eq!(s.last_index(), 10);
    assert_eq!(s.entries(3, 6).unwrap(), recs(3, 5, 1, "a"));
    assert_eq!(s.term(5), Some(1));
    assert_eq!(s.term(11), None);
    let (s, r) = h.crash_reopen(s);
    check_recovered(&s, &r);
    assert_eq!(r.records, recs(1, 10, 1, "a"));
}

fn truncate_suffix<H: Harness>(h: &mut H) {
    let mut s = h.fresh();
    s.append(&recs(1, 10, 1, "a")).unwrap();
    s.sync().unwrap();
    s.append(&recs(6, 8, 2, "b")).unwrap();
    s.sync().unwrap();
    let mut want = recs(1, 5, 1, "a");
    want.extend(recs(6, 8, 2, "b"));
    assert_eq!(s.last_index(), 8);
    assert_eq!(s.entries(1, 9).unwrap(), want);
    let (mut s, r) = h.crash_reopen(s);
    assert_eq!(r.records, want);
    s.append(&recs(9, 12, 2, "c")).unwrap();
    s.sync().unwrap();
    want.extend(recs(9, 12, 2, "c"));
    let (s, r) = h.crash_reopen(s);
    check_recovered(&s, &r);
    assert_eq!(r.records, want);
}

fn truncate_across_segments<H: Harness>(h: &mut H) {
    let mut s = h.fresh();
    s.append(&recs(1, 60, 1, "a")).unwrap();
    s.sync().unwrap();
    for i in 61..=80 {
        s.append(&[rec(i, 1, "a")]).unwrap();
        s.sync().unwrap();
    }
    s.append(&recs(10, 12, 3, "z")).unwrap();
    s.sync().unwrap();
    let mut want = recs(1, 9, 1, "a");
    want.extend(recs(10, 12, 3, "z"));
    let (s, r) = h.crash_reopen(s);
    check_recovered(&s, &r);
    assert_eq!(r.records, want);
}

fn unsynced_data<H: Harness>(h: &mut H) {
    let mut s = h.fresh();
    s.append(&recs(1, 5, 1, "a")).unwrap();
    s.save_hard_state(HardState { term: 1, voted_for: 2, commit: 3 }).unwrap();
    s.sync().unwrap();
    s.append(&recs(6, 8, 1, "a")).unwrap();
    s.save_hard_state(HardState { term: 2, voted_for: 0, commit: 5 }).unwrap();
    let loses = h.loses_unsynced();
    let (s, r) = h.crash_reopen(s);
    check_recovered(&s, &r);
    if loses {
        assert_eq!(r.last_index, 5);
        assert_eq!(r.hard_state, HardState { term: 1, voted_for: 2, commit: 3 });
    } else {
        assert!(r.last_index == 5 || r.last_index == 8);
    }
    assert_eq!(r.records[..5], recs(1, 5, 1, "a")[..]);
}

fn hard_state_roundtrip<H: Harness>(h: &mut H) {
    let mut s = h.fresh();
    s.append(&recs(1, 3, 1, "a")).unwrap();
    let hs = HardState { term: 9, voted_for: 4, commit: 3 };
    s.save_hard_state(hs).unwrap();
    assert_eq!(s.hard_state(), hs);
    s.sync().unwrap();
    let (mut s, r) = h.crash_reopen(s);
    assert_eq!(r.hard_state, hs);
    // A commit index beyond the log is clamped on recovery.
    s.save_hard_state(HardState { term: 9, voted_for: 4, commit: 100 }).unwrap();
    s.sync().unwrap();
    let (s, r) = h.crash_reopen(s);
    assert_eq!(r.hard_state, HardState { term: 9, voted_for: 4, commit: 3 });
    check_recovered(&s, &r);
}

/// A commit index clamped on recovery stays clamped: entries appended later at the indexes
/// it once covered are other entries, and must not be recovered as committed.
fn clamped_commit_is_not_resurrected_by_later_appends<H: Harness>(h: &mut H) {
    let mut s = h.fresh();
    s.append(&recs(1, 4, 1, "a")).unwrap();
    s.save_hard_state(HardState { term: 1, voted_for: 0, commit: 2 }).unwrap();
    // The log is cut below the commit index (as only damage or a bug can do).
    s.append(&recs(1, 1, 3, "b")).unwrap();
    s.sync().unwrap();
    let (mut s, r) = h.crash_reopen(s);
    assert_eq!((r.last_index, r.hard_state.commit), (1, 1));
    s.append(&recs(2, 3, 3, "c")).unwrap();
    s.sync().unwrap();
    let (s, r) = h.crash_reopen(s);
    assert_eq!(r.last_index, 3);
    assert_eq!(r.hard_state, HardState { term: 1, voted_for: 0, commit: 1 });
    check_recovered(&s, &r);
}

fn compact_in_range<H: Harness>(h: &mut H) {
    let mut s = h.fresh();
    s.append(&recs(1, 100, 1, "a")).unwrap();
    s.sync().unwrap();
    s.compact(50).unwrap();
    assert_eq!(s.first_index(), 51);
    assert!(matches!(s.entries(50, 52), Err(StorageError::Compacted { index: 50, first: 51 })));
    assert_eq!(s.entries(51, 53).unwrap(), recs(51, 52, 1, "a"));
    assert!(s.append(&[rec(50, 2, "x")]).is_err());
    s.append(&[rec(101, 1, "a")]).unwrap();
    s.sync().unwrap();
    let (s, r) = h.crash_reopen(s);
    assert!(r.first_index <= 51, "entries above the compaction point were lost");
    assert_eq!(r.last_index, 101);
    assert_eq!(s.entries(51, 102).unwrap(), recs(51, 101, 1, "a"));
}

fn compact_beyond_last<H: Harness>(h: &mut H) {
    let mut s = h.fresh();
    s.append(&recs(1, 10, 1, "a")).unwrap();
    s.sync().unwrap();
    s.compact(20).unwrap();
    assert_eq!((s.first_index(), s.last_index()), (21, 20));
    assert_eq!(s.term(10), None);
    assert!(s.append(&[rec(15, 2, "x")]).is_err());
    // The reset is durable when compact returns.
    let (mut s, r) = h.crash_reopen(s);
    assert_eq!((r.first_index, r.last_index), (21, 20));
    s.append(&recs(21, 23, 2, "b")).unwrap();
    s.sync().unwrap();
    let (s, r) = h.crash_reopen(s);
    check_recovered(&s, &r);
    assert_eq!(r.records, recs(21, 23, 2, "b"));
}

fn invalid_arguments<H: Harness>(h: &mut H) {
    let mut s = h.fresh();
    s.append(&recs(1, 3, 1, "a")).unwrap();
    let bad = |r: raftkv_storage::Result<()>| matches!(r, Err(StorageError::InvalidArgument(_)));
    assert!(bad(s.append(&[rec(5, 1, "gap")])));
    assert!(bad(s.append(&[rec(0, 1, "zero")])));
    assert!(bad(s.append(&[rec(4, 1, "a"), rec(6, 1, "a")])));
    assert!(bad(s.append(&[LogRecord::new(4, 1, 0xF5, Bytes::new())])));
    assert!(bad(s.append(&[LogRecord::new(4, 1, 0, vec![0u8; 65 << 20])])));
    assert!(s.entries(3, 2).is_err());
    assert!(matches!(s.entries(1, 5), Err(StorageError::Unavailable { .. })));
    assert!(s.append(&[]).is_ok());
    assert_eq!(s.last_index(), 3);
    s.sync().unwrap();
    let (s, r) = h.crash_reopen(s);
    check_recovered(&s, &r);
    assert_eq!(r.records, recs(1, 3, 1, "a"));
}

fn many_segments<H: Harness>(h: &mut H) {
    let mut s = h.fresh();
    let mut want = Vec::new();
    for i in 1..=300u64 {
        let r = LogRecord::new(i, 1 + i / 100, (i % 3) as u8, vec![i as u8; (i % 50) as usize]);
        s.append(std::slice::from_ref(&r)).unwrap();
        want.push(r);
        if i % 7 == 0 {
            s.sync().unwrap();
        }
    }
    s.sync().unwrap();
    let (s, r) = h.crash_reopen(s);
    check_recovered(&s, &r);
    assert_eq!(r.records, want);
}

fn reset_discards_the_whole_log<H: Harness>(h: &mut H) {
    let mut s = h.fresh();
    s.append(&recs(1, 40, 3, "a")).unwrap();
    s.sync().unwrap();
    // A snapshot at 11 whose term differs from the log's entry 11: nothing of the log may
    // survive, not even the entries after 11.
    s.reset(11).unwrap();
    assert_eq!((s.first_index(), s.last_index()), (12, 11));
    assert_eq!(s.term(11), None);
    assert_eq!(s.term(12), None);
    assert!(s.append(&[rec(11, 4, "x")]).is_err());
    // Durable when it returns.
    let (mut s, r) = h.crash_reopen(s);
    assert_eq!((r.first_index, r.last_index), (12, 11));
    assert!(r.records.is_empty());
    s.append(&recs(12, 14, 4, "b")).unwrap();
    s.sync().unwrap();
    let (mut s, r) = h.crash_reopen(s);
    check_recovered(&s, &r);
    assert_eq!(r.records, recs(12, 14, 4, "b"));
    // Past the end too.
    s.reset(30).unwrap();
    let (s, r) = h.crash_reopen(s);
    check_recovered(&s, &r);
    assert_eq!((r.first_index, r.last_index), (31, 30));
}

macro_rules! suite {
    ($modname:ident, $mk:expr) => {
        mod $modname {
            use super::*;
            #[test]
            fn empty_store() {
                super::empty_store(&mut $mk);
            }
            #[test]
            fn append_and_read() {
                super::append_and_read(&mut $mk);
            }
            #[test]
            fn truncate_suffix() {
                super::truncate_suffix(&mut $mk);
            }
            #[test]
            fn truncate_across_segments() {
                super::truncate_across_segments(&mut $mk);
            }
            #[test]
            fn unsynced_data() {
                super::unsynced_data(&mut $mk);
            }
            #[test]
            fn hard_state_roundtrip() {
                super::hard_state_roundtrip(&mut $mk);
            }
            #[test]
            fn clamped_commit_is_not_resurrected_by_later_appends() {
                super::clamped_commit_is_not_resurrected_by_later_appends(&mut $mk);
            }
            #[test]
            fn compact_in_range() {
                super::compact_in_range(&mut $mk);
            }
            #[test]
            fn compact_beyond_last() {
                super::compact_beyond_last(&mut $mk);
            }
            #[test]
            fn reset_discards_the_whole_log() {
                super::reset_discards_the_whole_log(&mut $mk);
            }
            #[test]
            fn invalid_arguments() {
                super::invalid_arguments(&mut $mk);
            }
            #[test]
            fn many_segments() {
                super::many_segments(&mut $mk);
            }
        }
    };
}

suite!(mem, MemH);
suite!(file_simfs, SimH(SimFs::new()));
suite!(file_realfs, RealH(None));

#[test]
fn file_store_uses_several_segments_and_removes_them() {
    let fs = SimFs::new();
    let mut s = sim_create(&fs, small_opts());
    // A batch is never split across segments: append in small batches.
    for lo in (1..=200).step_by(10) {
        s.append(&recs(lo, lo + 9, 1, "a")).unwrap();
    }
    s.sync().unwrap();
    let n = s.segment_paths().len();
    assert!(n > 5, "expected rollover into several segments, got {n}");
    s.compact(150).unwrap();
    let m = s.segment_paths().len();
    assert!(m < n && m >= 1, "compaction removed no segment ({n} -> {m})");
    assert_eq!(segment_files(&fs, &log_dir()).len(), m);
    let (_, r) = sim_open(&fs, small_opts()).unwrap();
    assert!(r.first_index <= 151 && r.first_index > 1);
    assert_eq!(r.last_index, 200);
}

/// The real store drops synced log pages from the page cache (a hint that must never change
/// what is read back): several MiB of records, synced as they go, recover intact, and so do
/// the records appended after a drop, in the page that was kept.
#[test]
fn records_recover_after_their_pages_left_the_cache() {
    let d = tempfile::tempdir().unwrap();
    let path = d.path().join("log");
    let opts = raftkv_storage::LogOptions::default();
    let mut s = FileLogStore::create(Arc::new(RealFs), &path, IDS, opts.clone()).unwrap();
    let mut want = Vec::new();
    for i in 1..=3000u64 {
        let r = LogRecord::new(i, 1, 0, vec![(i % 251) as u8; 1000 + (i % 7) as usize]);
        s.append(std::slice::from_ref(&r)).unwrap();
        want.push(r);
        if i % 5 == 0 {
            s.sync().unwrap();
        }
    }
    s.sync().unwrap();
    drop(s);
    let (s, r) = FileLogStore::open(Arc::new(RealFs), &path, IDS, opts).unwrap();
    check_recovered(&s, &r);
    assert_eq!(r.records, want);
}
