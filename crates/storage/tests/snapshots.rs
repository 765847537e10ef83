//! Snapshot store tests.
#![allow(clippy::unwrap_used)]

mod common;

use std::io::Read;
use std::path::Path;
use std::sync::Arc;

use bytes::Bytes;
use common::*;
use raftkv_storage::{
    CrashMode, FileSystem, HardState, LogStore, RealFs, SimFs, SnapshotMeta, SnapshotStore, Storage,
    StorageError,
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
