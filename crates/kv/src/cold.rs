//! Where the values of superseded versions live.
//!
//! A key's newest version keeps its value on the heap (every current read, compare,
//! `prev_kv` and `ignore_value` needs it). When a write supersedes it, the old value moves
//! here, and the in-memory history keeps only its position and length. Only reads at past
//! revisions, snapshots and compaction read them back.
//!
//! Two backends, the same contract:
//! - [`ColdStore::memory`]: an append-only arena of chunks (no per-value allocation);
//! - [`ColdStore::temp_file_in`]: an unnamed file in a directory (removed by the system
//!   when the process ends, even on a crash), written in large sequential blocks and read
//!   with positioned reads. It is a cache of what the snapshot and the log already hold:
//!   never synced, rebuilt from the snapshot on restart.
//!
//! Appending never fails: when writing the file fails (disk full, I/O error), the values
//! stay in the in-memory tail, writing is retried with the next block, and the error is
//! reported by [`ColdStore::write_error`]. The store's contents never depend on the backend
//! or on such errors, so replicas stay identical whatever happens to their cache files.

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use bytes::Bytes;

/// Largest chunk of the memory arena.
const MAX_CHUNK: usize = 1 << 20;
/// First chunk of the memory arena (small stores stay small).
const MIN_CHUNK: usize = 4 << 10;
/// Values buffered before the file backend writes them out.
const FILE_BLOCK: usize = 256 << 10;
/// The file's newest bytes kept in the page cache: snapshots copy what was appended since
/// the previous one, and recent history is what reads at old revisions mostly ask for.
const CACHE_KEEP: u64 = 64 << 20;
/// Older pages are dropped from the page cache in steps of this size, each call covering
/// the previous steps again: a page still dirty at one call (whose write-back it started)
/// is clean, and dropped, at a later one.
const CACHE_STEP: u64 = 8 << 20;
const CACHE_RETRY: u64 = 4 * CACHE_STEP;

/// The values of superseded versions; see the module documentation.
#[derive(Debug)]
pub struct ColdStore {
    backend: Backend,
    /// Distinct for every store this process creates: positions in one store mean nothing
    /// in another (a rewrite or a restore makes a new store).
    id: u64,
    /// Bytes appended since this store was created.
    appended: u64,
    /// Garbage (values of discarded versions) tolerated before the store is rewritten.
    min_garbage: u64,
}

/// Default for [`ColdStore::set_rewrite_threshold`].
const DEFAULT_MIN_GARBAGE: u64 = 16 << 20;

/// Positions are linear for both backends: the n-th byte ever appended is at position n.
#[derive(Debug)]
enum Backend {
    /// `starts[i]` is the position of `chunks[i][0]`.
    Memory {
        chunks: Vec<Vec<u8>>,
        starts: Vec<u64>,
    },
    File(FileBackend),
}

#[derive(Debug)]
struct FileBackend {
    dir: PathBuf,
    file: File,
    /// Bytes written to the file; the tail starts there.
    written: u64,
    /// Appended, not yet written.
    tail: Vec<u8>,
    /// Tail length that triggers a write.
    block: usize,
    /// The last failed write, until a write succeeds again.
    error: Option<String>,
    /// Pages before this offset were advised out of the page cache.
    uncached: u64,
}

impl FileBackend {
    fn flush_tail(&mut self) {
        match self.file.write_all_at(&self.tail, self.written) {
            Ok(()) => {
                self.written += self.tail.len() as u64;
                self.tail.clear();
                if self.tail.capacity() > 2 * self.block {
                    self.tail.shrink_to(self.block);
                }
                self.error = None;
                self.drop_old_pages();
            }
            // Kept in memory and written with the next block; see the module docs.
            Err(e) => self.error = Some(format!("writing {}: {e}", self.dir.display())),
        }
    }

    /// The history is written once and read rarely: pages well behind the end leave the
    /// page cache, which bounds the cache the file fills and lets the kernel reuse the
    /// same freed pages (see `raftkv_storage::fs::drop_cache` for why that matters).
    fn drop_old_pages(&mut self) {
        let upto = self.written.saturating_sub(CACHE_KEEP) & !(CACHE_STEP - 1);
        if upto >= self.uncached + CACHE_STEP {
            let from = self.uncached.saturating_sub(CACHE_RETRY);
            #[cfg(target_os = "linux")]
            let _ = rustix::fs::fadvise(
                &self.file,
                from,
                std::num::NonZeroU64::new(upto - from),
                rustix::fs::Advice::DontNeed,
            );
            self.uncached = upto;
        }
    }
}

fn next_id() -> u64 {
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
    NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
}

/// Where a value went: pass it back to [`ColdStore::read`] with its length.
pub(crate) type ColdPos = u64;

impl ColdStore {
    /// A store that keeps the values in memory (compactly, without a heap block per value).
    pub fn memory() -> ColdStore {
        ColdStore {
            id: next_id(),
            backend: Backend::Memory { chunks: Vec::new(), starts: Vec::new() },
            appended: 0,
            min_garbage: DEFAULT_MIN_GARBAGE,
        }
    }

    /// A store backed by an unnamed temporary file in `dir` (which must exist and be
    /// writable). The file disappears when the store is dropped or the process ends.
    pub fn temp_file_in(dir: &Path) -> io::Result<ColdStore> {
        let file = tempfile::tempfile_in(dir)?;
        Ok(ColdStore {
            id: next_id(),
            backend: Backend::File(FileBackend {
                dir: dir.to_path_buf(),
                file,
                written: 0,
                tail: Vec::new(),
                block: FILE_BLOCK,
                error: None,
                uncached: 0,
            }),
            appended: 0,
            min_garbage: DEFAULT_MIN_GARBAGE,
        })
    }

    /// How much garbage (values of versions discarded by compaction) the store may hold
    /// before [`crate::KvStore::rewrite_due`] asks for a rewrite; it asks only once garbage
    /// also outweighs the live values. Default 16 MiB.
    pub fn set_rewrite_threshold(&mut self, bytes: u64) {
        self.min_garbage = bytes;
    }

    pub(crate) fn rewrite_threshold(&self) -> u64 {
        self.min_garbage
    }

    /// For a file store: bytes buffered before they are written (default 256 KiB).
    pub fn set_write_block(&mut self, bytes: usize) {
        if let Backend::File(f) = &mut self.backend {
            f.block = bytes.max(1);
        }
    }

    /// An empty store of the same kind (same directory for a file store).
    pub fn fresh(&self) -> io::Result<ColdStore> {
        let mut fresh = match &self.backend {
            Backend::Memory { .. } => ColdStore::memory(),
            Backend::File(f) => {
                let mut s = ColdStore::temp_file_in(&f.dir)?;
                s.set_write_block(f.block);
                s
            }
        };
        fresh.min_garbage = self.min_garbage;
        Ok(fresh)
    }

    /// This store's identity within the process (see [`crate::SnapshotPoint::cold_id`]).
    pub fn id(&self) -> u64 {
        self.id
    }

    /// Whether values go to a file.
    pub fn is_file_backed(&self) -> bool {
        matches!(self.backend, Backend::File(_))
    }

    /// Bytes appended so far (including values no longer referenced).
    pub fn appended_bytes(&self) -> u64 {
        self.appended
    }

    /// Bytes held in memory: the arena, or the file store's unwritten tail.
    pub fn memory_bytes(&self) -> u64 {
        match &self.backend {
            Backend::Memory { chunks, .. } => chunks.iter().map(|c| c.capacity() as u64).sum(),
            Backend::File(f) => f.tail.capacity() as u64,
        }
    }

    /// The last error writing the file, while values are held in memory because of it.
    pub fn write_error(&self) -> Option<&str> {
        match &self.backend {
            Backend::Memory { .. } => None,
            Backend::File(f) => f.error.as_deref(),
        }
    }

    /// Stores `value` and returns its position, which is [`ColdStore::appended_bytes`]
    /// before the call. Never fails (see the module docs).
    pub(crate) fn append(&mut self, value: &[u8]) -> ColdPos {
        let pos = self.appended;
        self.appended += value.len() as u64;
        match &mut self.backend {
            Backend::Memory { chunks, starts } => {
                let fits = chunks.last().is_some_and(|c| c.capacity() - c.len() >= value.len());
                if !fits {
                    let last = chunks.last().map_or(0, |c| c.capacity());
                    let cap = (last * 2).clamp(MIN_CHUNK, MAX_CHUNK).max(value.len());
                    chunks.push(Vec::with_capacity(cap));
                    starts.push(pos);
                }
                if let Some(chunk) = chunks.last_mut() {
                    chunk.extend_from_slice(value);
                }
                pos
            }
            Backend::File(f) => {
                if f.tail.capacity() == 0 {
                    f.tail.reserve(f.block);
                }
                f.tail.extend_from_slice(value);
                if f.tail.len() >= f.block {
                    f.flush_tail();
                }
                pos
            }
        }
    }

    /// Reads back `len` bytes stored at `pos`.
    pub(crate) fn read(&self, pos: ColdPos, len: u32) -> io::Result<Bytes> {
        if len == 0 {
            return Ok(Bytes::new());
        }
        let mut buf = vec![0u8; len as usize];
        self.read_into(pos, &mut buf)?;
        Ok(Bytes::from(buf))
    }

    /// Fills `buf` with the bytes stored from `pos` on (any span of appended bytes, also
    /// across values).
    pub(crate) fn read_into(&self, pos: ColdPos, buf: &mut [u8]) -> io::Result<()> {
        let end = pos.checked_add(buf.len() as u64).filter(|&e| e <= self.appended);
        let Some(end) = end else {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("no value at {pos}+{} (store holds {} bytes)", buf.len(), self.appended),
            ));
        };
        match &self.backend {
            Backend::Memory { chunks, starts } => {
                let mut at = pos;
                let mut out = 0usize;
                let mut i = starts.partition_point(|&s| s <= pos).saturating_sub(1);
                while at < end {
                    let (Some(chunk), Some(&start)) = (chunks.get(i), starts.get(i)) else {
                        return Err(io::Error::other("memory store chunks out of step"));
                    };
                    let from = (at - start) as usize;
                    let n = (chunk.len().saturating_sub(from)).min((end - at) as usize);
                    buf[out..out + n].copy_from_slice(&chunk[from..from + n]);
                    out += n;
                    at += n as u64;
                    i += 1;
                }
                Ok(())
            }
            Backend::File(f) => {
                let split = (f.written.clamp(pos, end) - pos) as usize;
                let (in_file, in_tail) = buf.split_at_mut(split);
                if !in_file.is_empty() {
                    f.file.read_exact_at(in_file, pos)?;
                }
                if !in_tail.is_empty() {
                    let from = (pos + split as u64 - f.written) as usize;
                    in_tail.copy_from_slice(&f.tail[from..from + in_tail.len()]);
                }
                Ok(())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn exercise(mut s: ColdStore) {
        let mut stored = Vec::new();
        for i in 0..3000u32 {
            let v: Vec<u8> = (0..(i * 37 % 3000)).map(|j| (i ^ j) as u8).collect();
            let pos = s.append(&v);
            stored.push((pos, v));
        }
        let big = vec![7u8; 3 * MAX_CHUNK];
        let pos = s.append(&big);
        stored.push((pos, big));
        for (pos, v) in &stored {
            assert_eq!(&s.read(*pos, v.len() as u32).expect("read")[..], &v[..]);
        }
        assert!(s.read(u64::MAX - 1, 10).is_err(), "a position never handed out is an error");
        assert!(s.read(s.appended_bytes() - 1, 2).is_err(), "reading past the end is an error");
        // Any span reads back, across values and chunks.
        let all: Vec<u8> = stored.iter().flat_map(|(_, v)| v.iter().copied()).collect();
        for (from, len) in [(0usize, all.len()), (5, 70_000), (all.len() - 3_000_000, 2_999_999)] {
            let mut buf = vec![0u8; len];
            s.read_into(from as u64, &mut buf).expect("span");
            assert_eq!(buf, all[from..from + len]);
        }
        assert_eq!(s.appended_bytes(), stored.iter().map(|(_, v)| v.len() as u64).sum::<u64>());
    }

    #[test]
    fn values_read_back_after_their_pages_left_the_cache() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut s = ColdStore::temp_file_in(dir.path()).expect("cold file");
        let value = |i: u64| -> Vec<u8> { (0..4096u64).map(|j| (i.wrapping_mul(31) ^ j) as u8).collect() };
        let n = (CACHE_KEEP + 4 * CACHE_RETRY) / 4096;
        let positions: Vec<u64> = (0..n).map(|i| s.append(&value(i))).collect();
        let Backend::File(f) = &s.backend else { panic!("file backed") };
        assert!(f.uncached >= 4 * CACHE_STEP, "old pages were advised out ({} bytes)", f.uncached);
        for i in (0..n).step_by(97).chain([0, n - 1]) {
            let pos = positions[i as usize];
            assert_eq!(&s.read(pos, 4096).expect("read")[..], &value(i)[..], "value {i}");
        }
    }

    #[test]
    fn memory_round_trip() {
        exercise(ColdStore::memory());
    }

    #[test]
    fn file_round_trip_and_no_name_left_behind() {
        let dir = tempfile::tempdir().expect("tempdir");
        let s = ColdStore::temp_file_in(dir.path()).expect("cold file");
        assert!(s.is_file_backed());
        exercise(s);
        assert_eq!(std::fs::read_dir(dir.path()).expect("ls").count(), 0, "the cache file has no name");
    }

    #[test]
    fn failed_writes_keep_values_in_memory() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut s = ColdStore::temp_file_in(dir.path()).expect("cold file");
        // A read-only handle: every write fails.
        if let Backend::File(f) = &mut s.backend {
            f.file = File::open(dir.path()).expect("open dir read-only");
        }
        let mut stored = Vec::new();
        for i in 0..(3 * FILE_BLOCK / 1000) {
            let v = vec![i as u8; 1000];
            stored.push((s.append(&v), v));
        }
        assert!(s.write_error().is_some(), "the failure is reported");
        for (pos, v) in &stored {
            assert_eq!(&s.read(*pos, 1000).expect("served from memory")[..], &v[..]);
        }
    }
}
