//! Damaged, foreign and missing files each give a clear error naming the
//! file (and the offset for damage inside it).
#![allow(clippy::unwrap_used)]

mod common;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use common::*;
use raftkv_storage::{FileLogStore, LogStore, NodeIds, RealFs, SimFs, SnapshotMeta, Storage, StorageError};

fn fs() -> Arc<RealFs> {
    Arc::new(RealFs)
}

/// A storage dir with several segments (entries 1..=100) and a snapshot.
fn populated() -> (tempfile::TempDir, Vec<PathBuf>) {
    let d = tempfile::tempdir().unwrap();
    let mut st = Storage::create(fs(), d.path(), IDS, small_opts()).unwrap();
    for lo in (1..=100).step_by(5) {
        st.log.append(&recs(lo, lo + 4, 1, "e")).unwrap();
        st.log.sync().unwrap();
    }
    let mut w = st
        .snapshots
        .begin(SnapshotMeta { index: 10, term: 1, config: bytes::Bytes::from_static(b"cfg") })
        .unwrap();
    w.write(b"snapshot body").unwrap();
    w.finish().unwrap();
    let segs = st.log.segment_paths();
    assert!(segs.len() >= 4, "want several segments, got {}", segs.len());
    (d, segs)
}

fn open(dir: &Path) -> raftkv_storage::Result<(Storage, raftkv_storage::Recovered)> {
    Storage::open(fs(), dir, IDS, small_opts())
}

fn patch(path: &Path, f: impl FnOnce(&mut Vec<u8>)) {
    let mut b = std::fs::read(path).unwrap();
    f(&mut b);
    std::fs::write(path, b).unwrap();
}

fn fix_header_crc(b: &mut [u8]) {
    let crc = crc32c::crc32c(&b[0..60]);
    b[60..64].copy_from_slice(&crc.to_le_bytes());
}

fn assert_names(e: &StorageError, path: &Path) {
    let msg = e.to_string();
    assert!(msg.contains(&path.display().to_string()), "error does not name {}: {msg}", path.display());
}

fn snap_file(dir: &Path) -> PathBuf {
    let snap = dir.join("snap");
    let name = std::fs::read_dir(&snap).unwrap().next().unwrap().unwrap().file_name();
    snap.join(name)
}

#[test]
fn good_store_opens() {
    let (d, _) = populated();
    let (_, r) = open(d.path()).unwrap();
    assert_eq!(r.last_index, 100);
    assert_eq!(r.first_index, 11);
    assert_eq!(r.snapshot.unwrap().index, 10);
}

#[test]
fn empty_or_missing_directory() {
    let d = tempfile::tempdir().unwrap();
    let e = open(d.path()).unwrap_err();
    assert!(matches!(e, StorageError::NotInitialized { .. }), "{e}");
    assert_names(&e, d.path());
    let missing = d.path().join("nope");
    let e = open(&missing).unwrap_err();
    assert!(matches!(e, StorageError::NotInitialized { .. }), "{e}");
    // Log dir present but emptied: still refused (never restart from nothing).
    std::fs::create_dir_all(d.path().join("log")).unwrap();
    std::fs::create_dir_all(d.path().join("snap")).unwrap();
    let e = open(d.path()).unwrap_err();
    assert!(matches!(e, StorageError::NotInitialized { .. }), "{e}");
}

#[test]
fn create_refuses_existing_storage() {
    let (d, _) = populated();
    let e = Storage::create(fs(), d.path(), IDS, small_opts()).unwrap_err();
    assert!(matches!(e, StorageError::AlreadyInitialized { .. }), "{e}");
}

#[test]
fn truncated_sealed_segment() {
    let (d, segs) = populated();
    let len = std::fs::metadata(&segs[1]).unwrap().len();
    patch(&segs[1], |b| b.truncate(len as usize - 10));
    let e = open(d.path()).unwrap_err();
    assert!(matches!(e, StorageError::Corrupt { .. }), "{e}");
    assert_names(&e, &segs[1]);
    assert!(e.to_string().contains("offset"), "{e}");
}

#[test]
fn truncated_last_segment_is_a_torn_tail() {
    let (d, segs) = populated();
    let last = segs.last().unwrap();
    // Cut into the last record (the segment may end in preallocated zeros).
    patch(last, |b| {
        let end = b.iter().rposition(|&x| x != 0).unwrap() + 1;
        b.truncate(end - 3)
    });
    let (st, r) = open(d.path()).unwrap();
    let torn = st.log.torn_tail().unwrap().clone();
    assert_eq!(&torn.path, last);
    // The torn record (entry 100) is gone, everything before it is kept.
    assert_eq!(r.last_index, 99);
    assert_eq!(r.records.last().unwrap(), &rec(99, 1, "e"));
    // The cut is on disk: a second open finds no torn tail.
    drop(st);
    let (st, r) = open(d.path()).unwrap();
    assert!(st.log.torn_tail().is_none());
    assert_eq!(r.last_index, 99);
}

#[test]
fn truncated_segment_header() {
    let (d, segs) = populated();
    patch(&segs[0], |b| b.truncate(30));
    let e = open(d.path()).unwrap_err();
    assert!(matches!(e, StorageError::Corrupt { offset: 0, .. }), "{e}");
    assert_names(&e, &segs[0]);
}

#[test]
fn bit_flip_in_sealed_segment() {
    let (d, segs) = populated();
    patch(&segs[1], |b| b[64 + 20] ^= 0x04);
    let e = open(d.path()).unwrap_err();
    match &e {
        StorageError::Corrupt { path, offset, .. } => {
            assert_eq!(path, &segs[1]);
            assert!(*offset >= 64 && *offset <= 84, "offset {offset}");
        }
        other => panic!("unexpected {other}"),
    }
    assert!(e.to_string().contains("checksum"), "{e}");
}

#[test]
fn bit_flip_in_middle_of_last_segment() {
    let (d, segs) = populated();
    let last = segs.last().unwrap();
    patch(last, |b| b[100] ^= 0x80);
    let e = open(d.path()).unwrap_err();
    assert!(matches!(e, StorageError::Corrupt { .. }), "{e}");
    assert_names(&e, last);
    assert!(e.to_string().contains("not a torn tail"), "{e}");
}

#[test]
fn bit_flip_in_header() {
    let (d, segs) = populated();
    patch(&segs[2], |b| b[45] ^= 1);
    let e = open(d.path()).unwrap_err();
    assert!(matches!(e, StorageError::Corrupt { offset: 0, .. }), "{e}");
    assert_names(&e, &segs[2]);
}

#[test]
fn wrong_magic() {
    let (d, segs) = populated();
    patch(&segs[0], |b| b[0..8].copy_from_slice(b"NOTRAFT!"));
    let e = open(d.path()).unwrap_err();
    assert!(matches!(e, StorageError::BadMagic { .. }), "{e}");
    assert_names(&e, &segs[0]);
}

#[test]
fn wrong_version() {
    let (d, segs) = populated();
    patch(&segs[0], |b| {
        b[8..12].copy_from_slice(&3u32.to_le_bytes());
        fix_header_crc(b);
    });
    let e = open(d.path()).unwrap_err();
    assert!(matches!(e, StorageError::UnknownVersion { found: 3, supported: 2, .. }), "{e}");
    assert_names(&e, &segs[0]);
}

#[test]
fn wrong_cluster_or_node() {
    let (d, segs) = populated();
    let other = NodeIds { cluster_id: 0xBAD, node_id: IDS.node_id };
    let e = Storage::open(fs(), d.path(), other, small_opts()).unwrap_err();
    assert!(matches!(e, StorageError::ClusterMismatch { expected: 0xBAD, found: 0xC1, .. }), "{e}");
    let other = NodeIds { cluster_id: IDS.cluster_id, node_id: 8 };
    let e = Storage::open(fs(), d.path(), other, small_opts()).unwrap_err();
    assert!(matches!(e, StorageError::NodeMismatch { expected: 8, found: 7, .. }), "{e}");
    // A single foreign segment (valid checksum, other cluster) is caught.
    patch(&segs[2], |b| {
        b[16..24].copy_from_slice(&99u64.to_le_bytes());
        fix_header_crc(b);
    });
    let e = open(d.path()).unwrap_err();
    assert!(matches!(e, StorageError::ClusterMismatch { found: 99, .. }), "{e}");
    assert_names(&e, &segs[2]);
}

#[test]
fn missing_segment() {
    let (d, segs) = populated();
    std::fs::remove_file(&segs[2]).unwrap();
    let e = open(d.path()).unwrap_err();
    assert!(matches!(e, StorageError::MissingSegment { .. }), "{e}");
    assert_names(&e, &segs[2]);
}

#[test]
fn segment_that_does_not_chain() {
    // Replace segment 3 by a copy of segment 2 renamed: right name, wrong
    // indexes.
    let (d, segs) = populated();
    let mut b = std::fs::read(&segs[1]).unwrap();
    b[32..40].copy_from_slice(&3u64.to_le_bytes());
    fix_header_crc(&mut b);
    std::fs::write(&segs[2], b).unwrap();
    let e = open(d.path()).unwrap_err();
    assert!(matches!(e, StorageError::MissingSegment { .. }), "{e}");
}

#[test]
fn unwritable_directory() {
    // A path below a regular file cannot be created.
    let d = tempfile::tempdir().unwrap();
    let file = d.path().join("file");
    std::fs::write(&file, b"x").unwrap();
    let e = Storage::create(fs(), &file.join("data"), IDS, small_opts()).unwrap_err();
    assert!(matches!(e, StorageError::Io { .. }), "{e}");
    assert_names(&e, &file.join("data"));

    // A read-only directory (simulated: this test may run as root, which
    // ignores permission bits).
    let sim = SimFs::new();
    let dir = Path::new("/ro");
    sim.create_dir_all_for_test(dir);
    sim.set_read_only(dir, true);
    let e = FileLogStore::create(Arc::new(sim.clone()), dir, IDS, small_opts()).unwrap_err();
    assert!(
        matches!(&e, StorageError::Io { source, .. } if source.kind() == std::io::ErrorKind::PermissionDenied),
        "{e}"
    );
    assert_names(&e, dir);

    // And with real permissions when not running as root.
    let ro = d.path().join("ro");
    std::fs::create_dir(&ro).unwrap();
    let mut perm = std::fs::metadata(&ro).unwrap().permissions();
    std::os::unix::fs::PermissionsExt::set_mode(&mut perm, 0o500);
    std::fs::set_permissions(&ro, perm).unwrap();
    let probe = std::fs::write(ro.join("probe"), b"x");
    if probe.is_err() {
        let e = Storage::create(fs(), &ro, IDS, small_opts()).unwrap_err();
        assert!(matches!(e, StorageError::Io { .. }), "{e}");
    }
}

#[test]
fn damaged_snapshots() {
    type Damage = Box<dyn Fn(&mut Vec<u8>)>;
    let cases: Vec<(&str, Damage)> = vec![
        ("truncated", Box::new(|b: &mut Vec<u8>| b.truncate(b.len() - 5))),
        (
            "body bit flip",
            Box::new(|b: &mut Vec<u8>| {
                let i = b.len() - 20;
                b[i] ^= 1
            }),
        ),
        ("header bit flip", Box::new(|b: &mut Vec<u8>| b[33] ^= 1)),
        ("bad magic", Box::new(|b: &mut Vec<u8>| b[0] = b'X')),
        ("bad version", Box::new(|b: &mut Vec<u8>| b[8] = 9)),
    ];
    for (name, f) in cases {
        let (d, _) = populated();
        let snap = snap_file(d.path());
        patch(&snap, |b| f(b));
        let e = open(d.path()).unwrap_err();
        assert_names(&e, &snap);
        match name {
            "bad magic" => assert!(matches!(e, StorageError::BadMagic { .. }), "{name}: {e}"),
            "bad version" => assert!(matches!(e, StorageError::UnknownVersion { .. }), "{name}: {e}"),
            _ => assert!(matches!(e, StorageError::Corrupt { .. }), "{name}: {e}"),
        }
    }
}

#[test]
fn snapshot_of_another_cluster() {
    let (d, _) = populated();
    let snap = snap_file(d.path());
    // Write a valid snapshot for another cluster, and put it in place.
    let other = tempfile::tempdir().unwrap();
    let ids = NodeIds { cluster_id: 5, node_id: IDS.node_id };
    let st = Storage::create(fs(), other.path(), ids, small_opts()).unwrap();
    let mut w = st.snapshots.begin(SnapshotMeta { index: 10, term: 1, config: bytes::Bytes::new() }).unwrap();
    w.write(b"foreign").unwrap();
    w.finish().unwrap();
    std::fs::copy(snap_file(other.path()), &snap).unwrap();
    let e = open(d.path()).unwrap_err();
    assert!(matches!(e, StorageError::ClusterMismatch { found: 5, .. }), "{e}");
}

#[test]
fn preallocated_zeros_end_only_the_last_segment_and_are_a_clean_end() {
    let (d, segs) = populated();
    let last = segs.last().unwrap();
    // Sealed segments were cut to their records; the active one ends in zeros.
    for s in &segs[..segs.len() - 1] {
        let b = std::fs::read(s).unwrap();
        assert_ne!(b.last(), Some(&0), "sealed segment {} ends in zeros", s.display());
    }
    let b = std::fs::read(last).unwrap();
    assert_eq!(b.last(), Some(&0), "the active segment is preallocated");
    let (mut st, r) = open(d.path()).unwrap();
    assert!(st.log.torn_tail().is_none(), "preallocated zeros are not a torn tail");
    assert_eq!(r.last_index, 100);
    // Appending goes on over the zeros, and survives a reopen.
    st.log.append(&recs(101, 103, 2, "f")).unwrap();
    st.log.sync().unwrap();
    drop(st);
    let (st, r) = open(d.path()).unwrap();
    assert!(st.log.torn_tail().is_none());
    assert_eq!(r.last_index, 103);
    assert_eq!(r.records.last().unwrap(), &rec(103, 2, "f"));
}

#[test]
fn data_after_preallocated_zeros_is_corruption_not_a_tail() {
    let (d, segs) = populated();
    let last = segs.last().unwrap();
    patch(last, |b| {
        let n = b.len();
        b[n - 1] = 0x5a;
    });
    let e = open(d.path()).unwrap_err();
    assert!(matches!(e, StorageError::Corrupt { .. }), "{e}");
    assert_names(&e, last);
}
