//! Recovery after a snapshot install that a crash interrupted between the snapshot file
//! (durable) and the reset of the log behind it.
#![allow(clippy::unwrap_used)]

mod common;

use std::sync::Arc;

use bytes::Bytes;
use common::*;
use raftkv_storage::{LogOptions, LogStore, RealFs, SnapshotMeta, Storage};

fn install_without_reset(log_term: u64) -> raftkv_storage::Recovered {
    let d = tempfile::tempdir().unwrap();
    let fs = Arc::new(RealFs);
    let mut st = Storage::create(fs.clone(), d.path(), IDS, LogOptions::default()).unwrap();
    st.log.append(&recs(1, 20, log_term, "a")).unwrap();
    st.log.sync().unwrap();
    let mut w = st.snapshots.begin(SnapshotMeta { index: 11, term: 4, config: Bytes::new() }).unwrap();
    w.write(b"state at 11").unwrap();
    w.finish().unwrap();
    drop(st);
    let (_st, rec) = Storage::open(fs, d.path(), IDS, LogOptions::default()).unwrap();
    rec
}

#[test]
fn a_log_conflicting_with_the_snapshot_is_discarded_at_open() {
    let rec = install_without_reset(3);
    assert_eq!(rec.snapshot.as_ref().map(|m| (m.index, m.term)), Some((11, 4)));
    assert!(rec.records.is_empty(), "the old conflicting tail survived: {:?}", rec.records);
    assert_eq!((rec.first_index, rec.last_index), (12, 11));
    assert_eq!(rec.hard_state.commit, 11);
}

#[test]
fn a_log_continuing_the_snapshot_is_kept_at_open() {
    let rec = install_without_reset(4);
    assert_eq!(rec.records, recs(12, 20, 4, "a"));
    assert_eq!((rec.first_index, rec.last_index), (12, 20));
}
