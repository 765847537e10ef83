//! Snapshot store and group-commit tests.
#![allow(clippy::unwrap_used)]

mod common;

use std::io::Read;
use std::path::Path;
use std::sync::Arc;

use bytes::Bytes;
use common::*;
use raftkv_storage::{
    CrashMode, FileLogStore, FileSystem, GroupCommitLog, HardState, LogStore, MemLogStore, RealFs, SimFs,
    SnapshotMeta, SnapshotStore, Storage, StorageError,
};

fn meta(index: u64, term: u64) -> SnapshotMeta {
    SnapshotMeta { index, term, config: Bytes::from(format!("cfg-{index}")) }
}

fn write_snap(st: &SnapshotStore, index: u64, term: u64, body: &[u8]) -> raftkv_storage::Result<()> {
    let mut w = st.begin(meta(index, term))?;
    for chunk in body.chunks(7) {
        w.write(chunk)?;
    }
    w.finish().map(|_| ())
}

#[test]
fn snapshot_roundtrip_and_old_ones_removed() {
    let d = tempfile::tempdir().unwrap();
    let st = SnapshotStore::create(Arc::new(RealFs), &d.path().join("snap"), IDS).unwrap();
    assert!(st.latest().unwrap().is_none());
    let body: Vec<u8> = (0..3_000_000u32).map(|i| (i % 251) as u8).collect();
    write_snap(&st, 10, 2, &body).unwrap();
    write_snap(&st, 20, 3, b"second").unwrap();
    let (m, mut r) = st.latest().unwrap().unwrap();
    assert_eq!(m, meta(20, 3));
    let mut got = Vec::new();
    r.read_to_end(&mut got).unwrap();
    assert_eq!(got, b"second");
    let files: Vec<_> = std::fs::read_dir(d.path().join("snap")).unwrap().collect();
    assert_eq!(files.len(), 1, "older snapshot not removed");
    // A large body reads back intact.
    write_snap(&st, 30, 3, &body).unwrap();
    let (_, r) = st.latest().unwrap().unwrap();
    assert_eq!(r.read_all().unwrap(), body);
}

#[test]
fn unfinished_snapshot_is_invisible_and_cleaned() {
    let fs = SimFs::new();
    let dir = Path::new("/s");
    let st = SnapshotStore::create(Arc::new(fs.clone()), dir, IDS).unwrap();
    write_snap(&st, 5, 1, b"old").unwrap();
    let mut w = st.begin(meta(9, 2)).unwrap();
    w.write(b"partial").unwrap();
    drop(w);
    assert_eq!(st.latest().unwrap().unwrap().0.index, 5);
    assert_eq!(fs.list_dir(dir).unwrap().len(), 2);
    let st = SnapshotStore::open(Arc::new(fs.clone()), dir, IDS).unwrap();
    assert_eq!(fs.list_dir(dir).unwrap().len(), 1, "tmp file not removed at open");
    assert_eq!(st.latest().unwrap().unwrap().0.index, 5);
    let w = st.begin(meta(11, 2)).unwrap();
    w.abort().unwrap();
    assert_eq!(fs.list_dir(dir).unwrap().len(), 1);
}

/// A member's own snapshot can finish after a newer one received from the leader: the
/// newer one must stay the latest, and the older one leaves nothing behind.
#[test]
fn an_older_snapshot_finishing_late_never_replaces_a_newer_one() {
    let d = tempfile::tempdir().unwrap();
    let st = SnapshotStore::create(Arc::new(RealFs), &d.path().join("snap"), IDS).unwrap();
    let mut own = st.begin(meta(500, 2)).unwrap();
    own.write(b"own, older").unwrap();
    write_snap(&st, 900, 3, b"installed, newer").unwrap();
    own.finish().unwrap();
    let (m, r) = st.latest().unwrap().unwrap();
    assert_eq!(m, meta(900, 3));
    assert_eq!(r.read_all().unwrap(), b"installed, newer");
    let files: Vec<_> = std::fs::read_dir(d.path().join("snap")).unwrap().collect();
    assert_eq!(files.len(), 1, "the older snapshot left a file behind");
    // And the other way round: the newer one finishing last removes the older one.
    write_snap(&st, 1000, 3, b"next").unwrap();
    assert_eq!(st.latest().unwrap().unwrap().0, meta(1000, 3));
}

#[test]
fn snapshot_crash_at_every_operation() {
    let dir = Path::new("/s");
    let count = {
        let fs = SimFs::new();
        let st = SnapshotStore::create(Arc::new(fs.clone()), dir, IDS).unwrap();
        write_snap(&st, 5, 1, b"old").unwrap();
        let base = fs.op_count();
        write_snap(&st, 9, 2, &[7u8; 3000]).unwrap();
        fs.op_count() - base
    };
    for k in 1..=count + 1 {
        for mode in [CrashMode::LoseUnsynced, CrashMode::KeepUnsynced, CrashMode::Torn { seed: k }] {
            let fs = SimFs::new();
            let st = SnapshotStore::create(Arc::new(fs.clone()), dir, IDS).unwrap();
            write_snap(&st, 5, 1, b"old").unwrap();
            fs.crash_before_op(fs.op_count() + k);
            let finished = write_snap(&st, 9, 2, &[7u8; 3000]).is_ok();
            fs.crash(mode);
            let st = SnapshotStore::open(Arc::new(fs.clone()), dir, IDS).unwrap();
            let (m, r) = st
                .latest()
                .unwrap_or_else(|e| panic!("op {k} {mode:?}: {e}"))
                .unwrap_or_else(|| panic!("op {k} {mode:?}: no snapshot at all"));
            let body = r.read_all().unwrap();
            if finished {
                assert_eq!(m.index, 9, "op {k}: finished snapshot lost");
            }
            match m.index {
                5 => assert_eq!(body, b"old"),
                9 => assert_eq!(body, vec![7u8; 3000]),
                i => panic!("unexpected snapshot {i}"),
            }
        }
    }
}

#[test]
fn snapshot_fsync_failure_poisons() {
    let fs = SimFs::new();
    let st = SnapshotStore::create(Arc::new(fs.clone()), Path::new("/s"), IDS).unwrap();
    fs.fail_sync(fs.sync_count() + 1);
    let e = write_snap(&st, 5, 1, b"x").unwrap_err();
    assert!(matches!(e, StorageError::FsyncFailed { .. }), "{e}");
    assert!(matches!(st.begin(meta(6, 1)), Err(StorageError::Poisoned { .. })));
    assert!(matches!(st.latest(), Err(StorageError::Poisoned { .. })));
}

#[test]
fn storage_open_applies_snapshot() {
    let fs = SimFs::new();
    let dir = Path::new("/node");
    let mut s = Storage::create(Arc::new(fs.clone()), dir, IDS, small_opts()).unwrap();
    s.log.append(&recs(1, 30, 1, "a")).unwrap();
    s.log.save_hard_state(HardState { term: 1, voted_for: 1, commit: 30 }).unwrap();
    s.log.sync().unwrap();
    write_snap(&s.snapshots, 20, 1, b"state@20").unwrap();
    drop(s);
    let (s, r) = Storage::open(Arc::new(fs.clone()), dir, IDS, small_opts()).unwrap();
    assert_eq!(r.snapshot.as_ref().unwrap().index, 20);
    assert_eq!((r.first_index, r.last_index), (21, 30));
    assert_eq!(r.records, recs(21, 30, 1, "a"));
    // Installing a snapshot past the log end: the log restarts after it.
    write_snap(&s.snapshots, 50, 4, b"state@50").unwrap();
    drop(s);
    fs.crash(CrashMode::LoseUnsynced);
    let (mut s, r) = Storage::open(Arc::new(fs.clone()), dir, IDS, small_opts()).unwrap();
    assert_eq!((r.first_index, r.last_index), (51, 50));
    assert!(r.hard_state.commit >= 50);
    s.log.append(&recs(51, 52, 4, "b")).unwrap();
    s.log.sync().unwrap();
    drop(s);
    fs.crash(CrashMode::LoseUnsynced);
    let (_, r) = Storage::open(Arc::new(fs), dir, IDS, small_opts()).unwrap();
    assert_eq!(r.records, recs(51, 52, 4, "b"));
}

#[test]
fn group_commit_many_threads_real_fs() {
    let d = tempfile::tempdir().unwrap();
    let store =
        FileLogStore::create(Arc::new(RealFs), &d.path().join("log"), IDS, Default::default()).unwrap();
    let g = Arc::new(GroupCommitLog::new(store));
    let threads = 32;
    let per = 20;
    let handles: Vec<_> = (0..threads)
        .map(|t| {
            let g = g.clone();
            std::thread::spawn(move || {
                let mut idx = Vec::new();
                for i in 0..per {
                    idx.push(g.propose(1, 0, Bytes::from(format!("{t}/{i}"))).unwrap());
                }
                idx
            })
        })
        .collect();
    let mut all: Vec<u64> = handles.into_iter().flat_map(|h| h.join().unwrap()).collect();
    all.sort_unstable();
    assert_eq!(all, (1..=(threads * per) as u64).collect::<Vec<_>>());
    let (batches, ops) = g.stats();
    assert_eq!(ops, (threads * per) as u64);
    assert!(batches < ops / 2, "no group commit: {batches} batches for {ops} appends");
    g.save_hard_state(HardState { term: 1, voted_for: 3, commit: 5 }).unwrap();
    drop(g);
    let (_, r) =
        FileLogStore::open(Arc::new(RealFs), &d.path().join("log"), IDS, Default::default()).unwrap();
    assert_eq!(r.last_index, (threads * per) as u64);
    assert_eq!(r.hard_state, HardState { term: 1, voted_for: 3, commit: 5 });
    let mut payloads: Vec<String> =
        r.records.iter().map(|r| String::from_utf8(r.data.to_vec()).unwrap()).collect();
    payloads.sort();
    payloads.dedup();
    assert_eq!(payloads.len(), threads * per);
}

#[test]
fn group_commit_fsync_failure_fails_everyone_and_is_not_retried() {
    let fs = SimFs::new();
    let store = sim_create(&fs, Default::default());
    let g = Arc::new(GroupCommitLog::new(store));
    g.propose(1, 0, Bytes::from_static(b"ok")).unwrap();
    fs.fail_sync(fs.sync_count() + 1);
    let handles: Vec<_> = (0..8)
        .map(|_| {
            let g = g.clone();
            std::thread::spawn(move || g.propose(1, 0, Bytes::from_static(b"doomed")))
        })
        .collect();
    let results: Vec<_> = handles.into_iter().map(|h| h.join().unwrap()).collect();
    assert!(results.iter().all(|r| r.is_err()), "{results:?}");
    let syncs = fs.sync_count();
    let e = g.propose(1, 0, Bytes::from_static(b"later")).unwrap_err();
    assert!(matches!(e, StorageError::Poisoned { .. }), "{e}");
    assert!(g.save_hard_state(HardState::default()).is_err());
    assert_eq!(fs.sync_count(), syncs, "fsync retried after a failure");
    drop(g);
    fs.crash(CrashMode::LoseUnsynced);
    let (_, r) = sim_open(&fs, Default::default()).unwrap();
    assert_eq!(r.records.first().map(|r| r.data.clone()), Some(Bytes::from_static(b"ok")));
}

#[test]
fn group_commit_explicit_append_and_rejections() {
    let g = GroupCommitLog::new(MemLogStore::new());
    g.append(recs(1, 5, 1, "a")).unwrap();
    assert!(matches!(g.append(recs(9, 9, 1, "gap")), Err(StorageError::InvalidArgument(_))));
    let bad = vec![raftkv_storage::LogRecord::new(6, 1, 0xFF, Bytes::new())];
    assert!(matches!(g.append(bad), Err(StorageError::InvalidArgument(_))));
    // Truncating append, then proposals continue after it.
    g.append(recs(4, 4, 2, "t")).unwrap();
    assert_eq!(g.propose(2, 0, Bytes::from_static(b"p")).unwrap(), 5);
    let (first, last) = g.with_store(|s| (s.first_index(), s.last_index()));
    assert_eq!((first, last), (1, 5));
}

#[test]
fn group_commit_reserved_kind_is_rejected_without_a_gap() {
    let g = GroupCommitLog::new(MemLogStore::new());
    assert_eq!(g.propose(1, 0, Bytes::from_static(b"a")).unwrap(), 1);
    let e = g.propose(1, 0xFF, Bytes::from_static(b"bad")).unwrap_err();
    assert!(matches!(e, StorageError::InvalidArgument(_)), "{e}");
    assert_eq!(g.propose(1, 0, Bytes::from_static(b"b")).unwrap(), 2);
}

/// Many concurrent appenders and hard-state savers on the simulated file
/// system (small segments, so batches cross rollovers); a crash that loses
/// everything unsynced must keep every acknowledged entry and hard state.
#[test]
fn group_commit_acknowledged_means_durable_under_load() {
    let fs = SimFs::new();
    let g = Arc::new(GroupCommitLog::new(sim_create(&fs, small_opts())));
    let handles: Vec<_> = (0..24u64)
        .map(|t| {
            let g = g.clone();
            std::thread::spawn(move || {
                let mut acked = Vec::new();
                for i in 0..40u64 {
                    if t % 6 == 0 && i % 5 == 0 {
                        g.save_hard_state(HardState { term: 1, voted_for: t, commit: 0 }).unwrap();
                    }
                    let idx = g.propose(1, 0, Bytes::from(format!("{t}/{i}"))).unwrap();
                    acked.push((idx, format!("{t}/{i}")));
                }
                acked
            })
        })
        .collect();
    let acked: Vec<(u64, String)> = handles.into_iter().flat_map(|h| h.join().unwrap()).collect();
    let (batches, ops) = g.stats();
    assert!(ops >= acked.len() as u64 && batches >= 1);
    let store = Arc::into_inner(g).unwrap().into_inner();
    assert_eq!(store.last_index(), acked.len() as u64);
    drop(store);
    fs.crash(CrashMode::LoseUnsynced);
    let (_, r) = sim_open(&fs, small_opts()).unwrap();
    assert_eq!(r.last_index, acked.len() as u64);
    for (idx, payload) in &acked {
        let rec = &r.records[(*idx - r.first_index) as usize];
        assert_eq!(rec.index, *idx);
        assert_eq!(rec.data, Bytes::from(payload.clone()), "entry {idx}");
    }
    assert_eq!(r.hard_state.term, 1);
    assert_eq!(r.hard_state.voted_for % 6, 0);
}

/// A failed fsync while the writer thread is draining a busy queue: every
/// appender gets an error (nobody hangs), fsync is never retried, and every
/// entry acknowledged before the failure survives a crash.
#[test]
fn group_commit_fsync_failure_under_load_fails_everyone_once() {
    let fs = SimFs::new();
    let g = Arc::new(GroupCommitLog::new(sim_create(&fs, Default::default())));
    fs.fail_sync(fs.sync_count() + 40);
    let handles: Vec<_> = (0..32u64)
        .map(|t| {
            let g = g.clone();
            std::thread::spawn(move || {
                let mut acked = Vec::new();
                for i in 0.. {
                    match g.propose(1, 0, Bytes::from(format!("{t}/{i}"))) {
                        Ok(idx) => acked.push(idx),
                        Err(e) => return (acked, e),
                    }
                }
                unreachable!()
            })
        })
        .collect();
    let mut acked = Vec::new();
    for h in handles {
        let (a, e) = h.join().unwrap();
        assert!(matches!(e, StorageError::Poisoned { .. }), "{e}");
        acked.extend(a);
    }
    let syncs = fs.sync_count();
    assert!(matches!(g.propose(1, 0, Bytes::new()), Err(StorageError::Poisoned { .. })));
    assert!(matches!(g.save_hard_state(HardState::default()), Err(StorageError::Poisoned { .. })));
    assert_eq!(fs.sync_count(), syncs, "fsync retried after a failure");
    drop(g);
    fs.crash(CrashMode::LoseUnsynced);
    let (_, r) = sim_open(&fs, Default::default()).unwrap();
    for idx in acked {
        assert!(idx <= r.last_index, "acknowledged entry {idx} lost (last {})", r.last_index);
    }
}
