//! The fault model of `SimFs` the simulator runs members on: a failed fsync drops the
//! unsynced writes (as Linux does after a writeback error), and a disk that returns corrupted
//! data on a read is caught by the log's checksums: opening fails or returns exactly what was
//! written, and nothing durable is destroyed by a repair based on a bad read.
#![allow(clippy::unwrap_used)]

mod common;

use std::path::Path;

use common::*;
use raftkv_storage::{CrashMode, FileSystem, LogOptions, LogStore, SimFs};

#[test]
fn a_failed_sync_drops_the_unsynced_writes_for_good() {
    let fs = SimFs::new();
    fs.create_dir_all_for_test(Path::new("/d"));
    let f = fs.create(Path::new("/d/f")).unwrap();
    fs.sync_dir(Path::new("/d")).unwrap();
    f.write_all_at(b"durable", 0).unwrap();
    f.sync_data().unwrap();
    f.write_all_at(b"DROPPED", 0).unwrap();
    fs.fail_sync(fs.sync_count() + 1);
    assert!(f.sync_data().is_err());
    // A retry "succeeds" but the dropped pages are not written: the data is gone.
    f.sync_data().unwrap();
    assert_eq!(fs.file_bytes(Path::new("/d/f")).unwrap(), b"durable");
    fs.crash(CrashMode::LoseUnsynced);
    assert_eq!(fs.file_bytes(Path::new("/d/f")).unwrap(), b"durable");
}

/// Writes 40 records in synced batches, then opens the log once through reads corrupted at
/// `ppm` (seeded), and once more with honest reads. Returns, per seed, what the first open
/// served (`None`: refused) and what the honest open found.
fn open_through_corrupted_reads(
    seed: u64,
    ppm: u64,
) -> (Option<Vec<raftkv_storage::LogRecord>>, Vec<raftkv_storage::LogRecord>, u64) {
    let fs = SimFs::new();
    let mut s = sim_create(&fs, small_opts());
    for lo in (1..=40).step_by(4) {
        s.append(&recs(lo, lo + 3, 1, "c")).unwrap();
        s.sync().unwrap();
    }
    drop(s);
    fs.corrupt_reads(seed, ppm);
    let served = sim_open(&fs, small_opts()).ok().map(|(_, r)| r.records);
    let corrupted = fs.reads_corrupted();
    fs.corrupt_reads(0, 0);
    let (_, r) = sim_open(&fs, small_opts()).unwrap();
    (served, r.records, corrupted)
}

#[test]
fn corrupted_reads_are_never_served() {
    let all = recs(1, 40, 1, "c");
    let (mut corrupted, mut refused) = (0, 0);
    for seed in 0..300u64 {
        let (served, after, c) = open_through_corrupted_reads(seed, 200_000);
        corrupted += c;
        match served {
            // A bad read is caught by the record checksums: what is served is always a prefix
            // of what was written, never a changed entry.
            Some(records) => assert_eq!(records[..], all[..records.len()], "seed {seed}: wrong entry served"),
            None => refused += 1,
        }
        assert_eq!(after[..], all[..after.len()], "seed {seed}");
    }
    assert!(corrupted > 50, "too few corrupted reads: {corrupted}");
    assert!(refused > 0, "no open refused a corrupted read");
}

/// A corrupted read of the last record of the last segment looks like a torn write; cutting
/// it would drop a synced record the member may have acknowledged (seeds 78 and 238 of this
/// test did before `open` read a tail twice more before cutting it).
#[test]
fn corrupted_reads_never_destroy_durable_entries() {
    let all = recs(1, 40, 1, "c");
    for seed in 0..300u64 {
        let (served, after, _) = open_through_corrupted_reads(seed, 200_000);
        if let Some(records) = served {
            assert_eq!(records, all, "seed {seed}: a synced entry was dropped");
        }
        assert_eq!(after, all, "seed {seed}: a bad read destroyed durable entries");
    }
}

/// A snapshot is verified when it is opened, and read again when it is restored or sent: a
/// disk that returns other bytes on that second read must not hand them out as the body.
#[test]
fn a_bad_read_of_a_verified_snapshot_body_is_an_error() {
    use std::io::Read;

    use raftkv_storage::{NodeIds, SnapshotMeta, SnapshotStore};
    use std::sync::Arc;

    let fs = SimFs::new();
    let ids = NodeIds { cluster_id: 1, node_id: 1 };
    let store = SnapshotStore::create(Arc::new(fs.clone()), Path::new("/snap"), ids).unwrap();
    let body: Vec<u8> = (0..5000u32).map(|i| (i % 251) as u8).collect();
    let mut w = store.begin(SnapshotMeta { index: 9, term: 2, config: Default::default() }).unwrap();
    w.write(&body).unwrap();
    w.finish().unwrap();

    // Honest reads: the body comes back whole, through both ways of reading it.
    let (_, mut r) = store.latest().unwrap().unwrap();
    let mut got = Vec::new();
    r.read_to_end(&mut got).unwrap();
    assert_eq!(got, body);
    let (_, r) = store.latest().unwrap().unwrap();
    assert_eq!(r.read_all().unwrap(), body);

    // Verified when opened, then every read flips a bit.
    let (_, mut r) = store.latest().unwrap().unwrap();
    let (_, r2) = store.latest().unwrap().unwrap();
    fs.corrupt_reads(7, 1_000_000);
    let mut got = Vec::new();
    let err = r.read_to_end(&mut got).unwrap_err();
    assert_eq!(err.kind(), std::io::ErrorKind::InvalidData, "{err}");
    assert!(r2.read_all().is_err(), "a corrupted body was served");
    assert!(fs.reads_corrupted() >= 2);
}

/// A record length damaged so that it runs past the end of the last segment looks like a
/// write cut by a crash, but whole records follow it: the log refuses to open (a bad read
/// is retried by restarting) instead of cutting the synced records after it.
#[test]
fn a_damaged_length_with_records_after_it_is_not_cut_as_torn() {
    let fs = SimFs::new();
    // No preallocated zeros: the damaged length runs past the end of the file.
    let opts = raftkv_storage::LogOptions { preallocate: 0, ..small_opts() };
    let mut s = sim_create(&fs, opts.clone());
    for lo in (1..=20).step_by(4) {
        s.append(&recs(lo, lo + 3, 1, "c")).unwrap();
        s.sync().unwrap();
    }
    drop(s);
    let segs = segment_files(&fs, &log_dir());
    let last = segs.last().unwrap().clone();
    let before = fs.file_bytes(&last).unwrap();
    // The first record after the 64-byte segment header: +65,536 to its length.
    assert!(fs.flip_bit(&last, 64 + 2, 0));
    let opened = sim_open(&fs, opts.clone());
    assert!(opened.is_err(), "a damaged length was cut as a torn tail");
    assert!(fs.flip_bit(&last, 64 + 2, 0));
    assert_eq!(fs.file_bytes(&last).unwrap(), before, "refusing to open changed the file");
    let (_, r) = sim_open(&fs, opts.clone()).unwrap();
    assert_eq!(r.records, recs(1, 20, 1, "c"));
}

/// The file offsets of the records of a version 2 segment, from the length fields.
fn record_offsets(bytes: &[u8]) -> Vec<(usize, usize)> {
    let mut out = Vec::new();
    let mut off = raftkv_storage::record::SEGMENT_HEADER_LEN;
    while off + 8 <= bytes.len() {
        let len = u32::from_le_bytes(bytes[off..off + 4].try_into().unwrap()) as usize;
        if len == 0 {
            break;
        }
        let end = off + 8 + len + 1;
        out.push((off, end));
        off = end;
    }
    out
}

/// A synced last record damaged on the disk (every bit of it flipped in turn, the hard state
/// record that ends a sync among them) is never cut as a torn tail: the log refuses to open,
/// or opens with every record and the hard state it had. Cutting a synced hard state record
/// would bring back an older vote; cutting a synced entry loses what the member acknowledged.
#[test]
fn a_damaged_last_record_on_disk_is_never_cut() {
    use raftkv_storage::HardState;
    let fs = SimFs::new();
    let opts = LogOptions { segment_size: 1 << 20, ..small_opts() };
    let mut s = sim_create(&fs, opts.clone());
    s.append(&recs(1, 6, 2, "c")).unwrap();
    s.sync().unwrap();
    let hs = HardState { term: 3, voted_for: 2, commit: 5 };
    s.save_hard_state(hs).unwrap();
    s.sync().unwrap();
    drop(s);
    let last = segment_files(&fs, &log_dir()).into_iter().max().unwrap();
    let before = fs.file_bytes(&last).unwrap();
    let records = record_offsets(&before);
    let (off, end) = *records.last().unwrap();
    let (mut refused, mut tried) = (0, 0);
    for byte in off..end {
        for bit in 0..8u8 {
            assert!(fs.flip_bit(&last, byte as u64, bit));
            tried += 1;
            match sim_open(&fs, opts.clone()) {
                Ok((s, r)) => {
                    assert_eq!(r.records, recs(1, 6, 2, "c"), "byte {byte} bit {bit}: a record was cut");
                    assert_eq!(r.hard_state, hs, "byte {byte} bit {bit}: the hard state was cut");
                    drop(s);
                }
                Err(_) => refused += 1,
            }
            assert!(fs.flip_bit(&last, byte as u64, bit));
            assert_eq!(fs.file_bytes(&last).unwrap(), before, "byte {byte} bit {bit}: the file changed");
        }
    }
    assert!(refused * 10 >= tried * 9, "only {refused} of {tried} damaged records refused");
}

/// A record cut anywhere by a crash while it was written (a prefix reached the preallocated
/// segment) is still recognised as torn and cut, with every record before it kept.
#[test]
fn a_record_torn_at_any_byte_is_cut() {
    let fs = SimFs::new();
    let opts = LogOptions { segment_size: 1 << 20, ..small_opts() };
    let mut s = sim_create(&fs, opts.clone());
    s.append(&recs(1, 5, 1, "c")).unwrap();
    s.sync().unwrap();
    s.append(&recs(6, 6, 1, "c")).unwrap();
    s.sync().unwrap();
    drop(s);
    let last = segment_files(&fs, &log_dir()).into_iter().max().unwrap();
    let whole = fs.file_bytes(&last).unwrap();
    let records = record_offsets(&whole);
    // The record of entry 6 (the hard state is written only when it changes).
    let (off, end) = *records.last().unwrap();
    for cut in off..end {
        let mut torn = whole.clone();
        torn[cut..end].iter_mut().for_each(|b| *b = 0);
        assert!(fs.set_file_bytes(&last, torn));
        let (s, r) = sim_open(&fs, opts.clone()).unwrap_or_else(|e| panic!("cut at {cut}: {e}"));
        assert_eq!(r.records, recs(1, 5, 1, "c"), "cut at {cut}");
        drop(s);
    }
}

/// Segments of the first format (records without an end byte) are still read; appends go
/// to a new segment of the current format, and the whole log reopens.
#[test]
fn a_version_1_segment_is_read_and_continued_in_the_current_format() {
    use raftkv_storage::record::{LOG_FORMAT_VERSION, LOG_FORMAT_VERSION_1, SegmentHeader};
    let fs = SimFs::new();
    let dir = log_dir();
    fs.create_dir_all_for_test(&dir);
    let header = SegmentHeader {
        version: LOG_FORMAT_VERSION_1,
        cluster_id: IDS.cluster_id,
        node_id: IDS.node_id,
        seq: 1,
        first_index: 1,
    };
    let mut bytes = header.encode().to_vec();
    for r in recs(1, 4, 1, "c") {
        // Version 1 framing: len, crc32c(len ++ body), body.
        let mut body = vec![r.kind];
        body.extend_from_slice(&r.index.to_le_bytes());
        body.extend_from_slice(&r.term.to_le_bytes());
        body.extend_from_slice(&r.data);
        let len = (body.len() as u32).to_le_bytes();
        let crc = crc32c::crc32c_append(crc32c::crc32c(&len), &body);
        bytes.extend_from_slice(&len);
        bytes.extend_from_slice(&crc.to_le_bytes());
        bytes.extend_from_slice(&body);
    }
    let path = dir.join(format!("{:020}.seg", 1));
    drop(fs.create(&path).unwrap());
    fs.sync_dir(&dir).unwrap();
    assert!(fs.set_file_bytes(&path, bytes));
    let (mut s, r) = sim_open(&fs, small_opts()).unwrap();
    assert_eq!(r.records, recs(1, 4, 1, "c"));
    s.append(&recs(5, 8, 1, "c")).unwrap();
    s.sync().unwrap();
    drop(s);
    let segs = {
        let mut v = segment_files(&fs, &dir);
        v.sort();
        v
    };
    assert!(segs.len() >= 2, "appends went into the version 1 segment");
    let newest = fs.file_bytes(segs.last().unwrap()).unwrap();
    assert_eq!(SegmentHeader::decode(&newest).unwrap().version, LOG_FORMAT_VERSION);
    let (_, r) = sim_open(&fs, small_opts()).unwrap();
    assert_eq!(r.records, recs(1, 8, 1, "c"));
}
