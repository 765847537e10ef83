#![allow(dead_code, clippy::unwrap_used)]

use std::path::{Path, PathBuf};
use std::sync::Arc;

use bytes::Bytes;
use raftkv_storage::{
    FileLogStore, FileSystem, LogOptions, LogRecord, LogRecovered, LogStore, NodeIds, SimFs,
};

pub const IDS: NodeIds = NodeIds { cluster_id: 0xC1, node_id: 7 };

pub fn rec(index: u64, term: u64, tag: &str) -> LogRecord {
    LogRecord::new(index, term, 1, Bytes::from(format!("{tag}-{index}-{term}")))
}

pub fn recs(lo: u64, hi: u64, term: u64, tag: &str) -> Vec<LogRecord> {
    (lo..=hi).map(|i| rec(i, term, tag)).collect()
}

pub fn small_opts() -> LogOptions {
    LogOptions { segment_size: 512, write_buffer: 256, ..LogOptions::default() }
}

pub fn log_dir() -> PathBuf {
    PathBuf::from("/data/log")
}

pub fn sim_create(fs: &SimFs, opts: LogOptions) -> FileLogStore {
    FileLogStore::create(Arc::new(fs.clone()), &log_dir(), IDS, opts).unwrap()
}

pub fn sim_open(fs: &SimFs, opts: LogOptions) -> raftkv_storage::Result<(FileLogStore, LogRecovered)> {
    FileLogStore::open(Arc::new(fs.clone()), &log_dir(), IDS, opts)
}

/// Full logical content of a store: (first, last, entries, hard state).
pub fn dump<S: LogStore>(s: &S) -> (u64, u64, Vec<LogRecord>, raftkv_storage::HardState) {
    let first = s.first_index();
    let last = s.last_index();
    let entries = s.entries(first, last + 1).unwrap();
    (first, last, entries, s.hard_state())
}

pub fn segment_files(fs: &dyn FileSystem, dir: &Path) -> Vec<PathBuf> {
    fs.list_dir(dir).unwrap().into_iter().filter(|n| n.ends_with(".seg")).map(|n| dir.join(n)).collect()
}
