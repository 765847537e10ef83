//! Property tests: random workloads on the in-memory model and the file
//! store (on `SimFs`) must agree, including across crashes; random bytes
//! and random corruptions never make recovery panic.
#![allow(clippy::unwrap_used)]

mod common;

use std::sync::Arc;

use bytes::Bytes;
use common::*;
use proptest::prelude::*;
use raftkv_storage::{
    CrashMode, FileSystem, HardState, LogRecord, LogStore, MemLogStore, SimFs, SnapshotStore,
};

#[derive(Debug, Clone)]
enum Op {
    /// Append `n` records starting `back` entries before the end.
    Append {
        back: u64,
        n: u64,
        size: usize,
    },
    Hs {
        term: u64,
        vote: u64,
    },
    Sync,
    Compact {
        back: u64,
        beyond: bool,
    },
    CrashReopen,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        5 => (0u64..4, 1u64..6, 0usize..80).prop_map(|(back, n, size)| Op::Append { back, n, size }),
        2 => (0u64..5, 0u64..4).prop_map(|(term, vote)| Op::Hs { term, vote }),
        3 => Just(Op::Sync),
        1 => (0u64..10, any::<bool>()).prop_map(|(back, beyond)| Op::Compact { back, beyond }),
        1 => Just(Op::CrashReopen),
    ]
}

fn compare(m: &MemLogStore, f: &impl LogStore, after_crash: bool) -> Result<(), TestCaseError> {
    prop_assert_eq!(m.last_index(), f.last_index());
    prop_assert_eq!(m.hard_state(), f.hard_state());
    if !after_crash {
        // (After a crash the first index is checked by the caller: segments
        // below a compaction point may be gone, partial ones kept.)
        prop_assert_eq!(m.first_index(), f.first_index());
    }
    let lo = m.first_index().max(f.first_index());
    let hi = m.last_index() + 1;
    prop_assert_eq!(m.entries(lo, hi).unwrap(), f.entries(lo, hi).unwrap());
    let from = if after_crash { lo } else { lo.saturating_sub(1) };
    for i in from..=hi {
        prop_assert_eq!(m.term(i), f.term(i));
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn file_store_matches_model(ops in prop::collection::vec(op(), 1..60)) {
        let fs = SimFs::new();
        let mut f = sim_create(&fs, small_opts());
        let mut m = MemLogStore::new();
        let mut term = 1u64;
        let mut commit_hint = 0u64;
        let mut compacted = 0u64;
        for (step, op) in ops.iter().enumerate() {
            match op {
                Op::Append { back, n, size } => {
                    let first = m.last_index().saturating_sub(*back).max(m.first_index()).max(1);
                    term += u64::from(*back > 0);
                    let rs: Vec<LogRecord> = (first..first + n)
                        .map(|i| LogRecord::new(i, term, (i % 3) as u8, Bytes::from(vec![step as u8; *size])))
                        .collect();
                    // Starting a new segment seals (fsyncs) the previous
                    // one: everything before this append became durable.
                    let segs = f.segment_paths().len();
                    let b = f.append(&rs);
                    if f.segment_paths().len() > segs {
                        m.sync().unwrap();
                    }
                    let a = m.append(&rs);
                    prop_assert_eq!(a.is_ok(), b.is_ok());
                }
                Op::Hs { term: t, vote } => {
                    commit_hint = commit_hint.max(m.last_index() / 2);
                    let hs = HardState { term: term + t, voted_for: *vote, commit: commit_hint.min(m.last_index()) };
                    m.save_hard_state(hs).unwrap();
                    f.save_hard_state(hs).unwrap();
                }
                Op::Sync => {
                    m.sync().unwrap();
                    f.sync().unwrap();
                }
                Op::Compact { back, beyond } => {
                    let up_to = if *beyond { m.last_index() + back } else { m.last_index().saturating_sub(*back) };
                    compacted = compacted.max(up_to);
                    m.compact(up_to).unwrap();
                    f.compact(up_to).unwrap();
                }
                Op::CrashReopen => {
                    let disk = m.disk();
                    drop(m);
                    let (m2, rm) = MemLogStore::open(disk);
                    drop(f);
                    fs.crash(CrashMode::LoseUnsynced);
                    let (f2, rf) = sim_open(&fs, small_opts()).unwrap();
                    f = f2;
                    // Exactly the model's durable state, except that whole
                    // segments below a compaction point may be gone.
                    prop_assert_eq!(rm.last_index, rf.last_index);
                    prop_assert_eq!(rm.hard_state, rf.hard_state);
                    prop_assert!(rf.first_index <= rm.first_index.max(compacted + 1));
                    compare(&m2, &f, true)?;
                    // Continue with a model rebuilt from what the file store
                    // recovered, so both accept the same appends.
                    m = MemLogStore::new();
                    if rf.first_index > 1 {
                        m.compact(rf.first_index - 1).unwrap();
                    }
                    m.append(&rf.records).unwrap();
                    m.save_hard_state(rf.hard_state).unwrap();
                    m.sync().unwrap();
                }
            }
            compare(&m, &f, false)?;
        }
    }

    #[test]
    fn random_segment_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..600), keep_header in any::<bool>()) {
        let fs = SimFs::new();
        let mut s = sim_create(&fs, small_opts());
        s.append(&recs(1, 3, 1, "a")).unwrap();
        s.sync().unwrap();
        drop(s);
        let path = segment_files(&fs, &log_dir())[0].clone();
        let mut content = if keep_header { fs.file_bytes(&path).unwrap()[..64].to_vec() } else { Vec::new() };
        content.extend_from_slice(&bytes);
        fs.set_file_bytes(&path, content);
        let _ = sim_open(&fs, small_opts());
    }

    #[test]
    fn random_corruptions_never_panic_and_never_lose_silently(
        flips in prop::collection::vec((any::<prop::sample::Index>(), 0u8..8), 1..4),
        cut in any::<Option<prop::sample::Index>>(),
    ) {
        let fs = SimFs::new();
        let mut s = sim_create(&fs, small_opts());
        for lo in (1..=40).step_by(4) {
            s.append(&recs(lo, lo + 3, 1, "c")).unwrap();
            s.sync().unwrap();
        }
        drop(s);
        let segs = segment_files(&fs, &log_dir());
        for (idx, bit) in &flips {
            let seg = &segs[idx.index(segs.len())];
            let len = fs.file_bytes(seg).unwrap().len();
            fs.flip_bit(seg, idx.index(len) as u64, *bit);
        }
        if let Some(c) = cut {
            let seg = &segs[c.index(segs.len())];
            let mut b = fs.file_bytes(seg).unwrap();
            b.truncate(c.index(b.len() + 1));
            fs.set_file_bytes(seg, b);
        }
        if let Ok((_, r)) = sim_open(&fs, small_opts()) {
            // Whatever is returned is an unchanged prefix of what was written
            // (only the tail of the last segment may be cut).
            for r in &r.records {
                prop_assert_eq!(r, &rec(r.index, 1, "c"));
            }
            prop_assert_eq!(r.records.first().map(|r| r.index), Some(1));
            prop_assert_eq!(r.records.len() as u64, r.last_index);
        }
    }

    #[test]
    fn random_snapshot_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..300), prefix in any::<bool>()) {
        let fs = SimFs::new();
        let dir = std::path::Path::new("/snap");
        let st = SnapshotStore::create(Arc::new(fs.clone()), dir, IDS).unwrap();
        let mut w = st.begin(raftkv_storage::SnapshotMeta { index: 5, term: 2, config: Bytes::from_static(b"c") }).unwrap();
        w.write(b"hello snapshot").unwrap();
        w.finish().unwrap();
        let path = dir.join(fs.list_dir(dir).unwrap()[0].clone());
        let mut content = if prefix { fs.file_bytes(&path).unwrap()[..40].to_vec() } else { Vec::new() };
        content.extend_from_slice(&bytes);
        fs.set_file_bytes(&path, content);
        let st = SnapshotStore::open(Arc::new(fs.clone()), dir, IDS).unwrap();
        prop_assert!(st.latest().is_err());
    }
}
