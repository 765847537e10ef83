//! The segmented, checksummed file log store.

use std::collections::VecDeque;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use bytes::Bytes;

use crate::error::{Result, StorageError};
use crate::fs::{FileSystem, FsFile, read_all};
use crate::record::{
    Decoded, FRAME_HEADER_LEN, HeaderError, KIND_HARD_STATE, KIND_RESET, LOG_FORMAT_VERSION,
    LOG_FORMAT_VERSION_1, MAX_USER_KIND, RawRecord, SEGMENT_HEADER_LEN, SegmentHeader, decode_record,
    encode_record, framed_len, intact_record_at, u64_at,
};
use crate::{HardState, LogOptions, LogRecord, LogRecovered, LogStore, NodeIds, SyncMode};

const SEGMENT_SUFFIX: &str = ".seg";
/// The log drops its synced pages from the page cache in steps of this many bytes.
const CACHE_DROP_STEP: u64 = 1 << 20;

/// Where recovery cut a torn tail.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TornTail {
    /// The last segment.
    pub path: PathBuf,
    /// Offset of the first byte removed (the segment now ends here).
    pub offset: u64,
    /// Number of bytes removed.
    pub bytes_cut: u64,
}

#[derive(Debug)]
struct Segment {
    seq: u64,
    path: PathBuf,
    /// Highest entry (or reset) index ever written into this segment.
    max_index: u64,
}

fn segment_path(dir: &Path, seq: u64) -> PathBuf {
    dir.join(format!("{seq:020}{SEGMENT_SUFFIX}"))
}

fn parse_segment_name(name: &str) -> Option<u64> {
    let stem = name.strip_suffix(SEGMENT_SUFFIX)?;
    if stem.len() != 20 || !stem.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    stem.parse().ok()
}

fn encode_hard_state(buf: &mut Vec<u8>, hs: &HardState) {
    let mut d = [0u8; 24];
    d[0..8].copy_from_slice(&hs.term.to_le_bytes());
    d[8..16].copy_from_slice(&hs.voted_for.to_le_bytes());
    d[16..24].copy_from_slice(&hs.commit.to_le_bytes());
    encode_record(buf, KIND_HARD_STATE, 0, 0, &d);
}

/// How many times `open` scans the log when a tail that looks torn reads differently twice.
pub(crate) const OPEN_READ_ATTEMPTS: u32 = 3;

/// Reads `file` twice more and checks both reads return `data`: what recovery is about to cut
/// as a torn tail must be what is on the disk, not a bad read of a synced record.
fn confirm_read(file: &dyn FsFile, data: &[u8], path: &Path, offset: u64) -> Result<()> {
    for _ in 0..2 {
        let again = read_all(file).map_err(|e| StorageError::io("read", path, e))?;
        if again != data {
            return Err(StorageError::UnstableRead { path: path.to_path_buf(), offset });
        }
    }
    Ok(())
}

fn all_zero(b: &[u8]) -> bool {
    b.iter().all(|&x| x == 0)
}

/// Replays records in order into the logical log state.
#[derive(Default)]
struct Replay {
    entries: VecDeque<LogRecord>,
    last: u64,
    hs: HardState,
}

impl Replay {
    fn apply(&mut self, rec: RawRecord, path: &Path, off: usize) -> Result<()> {
        match rec.kind {
            KIND_HARD_STATE => {
                if rec.data.len() != 24 {
                    return Err(StorageError::corrupt(
                        path,
                        off as u64,
                        "hard state record has the wrong size",
                    ));
                }
                self.hs = HardState {
                    term: u64_at(&rec.data, 0),
                    voted_for: u64_at(&rec.data, 8),
                    commit: u64_at(&rec.data, 16),
                };
            }
            KIND_RESET => {
                self.entries.clear();
                self.last = rec.index;
            }
            k if k <= MAX_USER_KIND => {
                if rec.index == 0 || rec.index > self.last.saturating_add(1) {
                    return Err(StorageError::corrupt(
                        path,
                        off as u64,
                        format!("entry index {} does not follow the last index {}", rec.index, self.last),
                    ));
                }
                while self.entries.back().is_some_and(|e| e.index >= rec.index) {
                    self.entries.pop_back();
                }
                self.entries.push_back(LogRecord {
                    index: rec.index,
                    term: rec.term,
                    kind: rec.kind,
                    data: rec.data,
                });
                self.last = rec.index;
            }
            k => {
                return Err(StorageError::corrupt(path, off as u64, format!("unknown record kind {k:#x}")));
            }
        }
        Ok(())
    }
}

/// The file-backed [`LogStore`]: a directory of segment files.
///
/// Not thread-safe by itself: the member runtime's disk worker (`raftkv-node`)
/// owns it and covers every job queued while it writes with one sync (group commit).
pub struct FileLogStore {
    fs: Arc<dyn FileSystem>,
    dir: PathBuf,
    ids: NodeIds,
    opts: LogOptions,
    segments: Vec<Segment>,
    active: Box<dyn FsFile>,
    /// Bytes written to the active segment (not counting `buf`).
    active_len: u64,
    /// Length of the active segment's file: zeros from `active_len` up to here.
    allocated: u64,
    buf: Vec<u8>,
    entries: VecDeque<LogRecord>,
    last: u64,
    hs: HardState,
    hs_dirty: bool,
    /// Bytes written to the OS since the last fdatasync.
    unsynced: bool,
    /// The active segment's pages before this offset were dropped from the page cache.
    uncached: u64,
    poisoned: Option<String>,
    torn_tail: Option<TornTail>,
}

impl std::fmt::Debug for FileLogStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FileLogStore")
            .field("dir", &self.dir)
            .field("segments", &self.segments)
            .field("last", &self.last)
            .field("hs", &self.hs)
            .field("poisoned", &self.poisoned)
            .finish_non_exhaustive()
    }
}

fn sync_parent(fs: &dyn FileSystem, dir: &Path) -> Result<()> {
    if let Some(parent) = dir.parent().filter(|p| !p.as_os_str().is_empty()) {
        fs.sync_dir(parent)
            .map_err(|e| StorageError::FsyncFailed { path: parent.to_path_buf(), source: e })?;
    }
    Ok(())
}

impl FileLogStore {
    /// Initialise a brand-new log in `dir` (created if missing). Fails with
    /// [`StorageError::AlreadyInitialized`] if `dir` already holds segments.
    /// Durable when it returns.
    pub fn create(
        fs: Arc<dyn FileSystem>,
        dir: &Path,
        ids: NodeIds,
        opts: LogOptions,
    ) -> Result<FileLogStore> {
        fs.create_dir_all(dir).map_err(|e| StorageError::io("create directory", dir, e))?;
        let names = fs.list_dir(dir).map_err(|e| StorageError::io("list directory", dir, e))?;
        if names.iter().any(|n| parse_segment_name(n).is_some()) {
            return Err(StorageError::AlreadyInitialized { path: dir.to_path_buf() });
        }
        sync_parent(fs.as_ref(), dir)?;
        let (file, len, path) = Self::write_new_segment(fs.as_ref(), dir, ids, 1, 1, &HardState::default())?;
        Ok(FileLogStore {
            fs,
            dir: dir.to_path_buf(),
            ids,
            opts,
            segments: vec![Segment { seq: 1, path, max_index: 0 }],
            active: file,
            active_len: len,
            allocated: len,
            buf: Vec::new(),
            entries: VecDeque::new(),
            last: 0,
            hs: HardState::default(),
            hs_dirty: false,
            unsynced: false,
            uncached: 0,
            poisoned: None,
            torn_tail: None,
        })
    }

    /// Create segment `seq`, write its header and the current hard state,
    /// fsync it and its directory.
    fn write_new_segment(
        fs: &dyn FileSystem,
        dir: &Path,
        ids: NodeIds,
        seq: u64,
        first_index: u64,
        hs: &HardState,
    ) -> Result<(Box<dyn FsFile>, u64, PathBuf)> {
        let path = segment_path(dir, seq);
        let file = fs.create(&path).map_err(|e| StorageError::io("create", &path, e))?;
        let header = SegmentHeader {
            version: LOG_FORMAT_VERSION,
            cluster_id: ids.cluster_id,
            node_id: ids.node_id,
            seq,
            first_index,
        };
        let mut buf = header.encode().to_vec();
        encode_hard_state(&mut buf, hs);
        file.write_all_at(&buf, 0).map_err(|e| StorageError::io("write", &path, e))?;
        file.sync_data().map_err(|e| StorageError::FsyncFailed { path: path.clone(), source: e })?;
        fs.sync_dir(dir).map_err(|e| StorageError::FsyncFailed { path: dir.to_path_buf(), source: e })?;
        Ok((file, buf.len() as u64, path))
    }

    /// Open an existing log: scan and verify every segment, cut a torn tail
    /// (with a warning), and return the store and what it holds.
    ///
    /// Before anything is cut the file is read twice more: a tail that reads differently is a
    /// bad read, not a torn write, and cutting it could drop a synced (acknowledged) record.
    /// The whole scan is then retried; after `OPEN_READ_ATTEMPTS` unstable scans `open`
    /// returns [`StorageError::UnstableRead`] and cuts nothing.
    pub fn open(
        fs: Arc<dyn FileSystem>,
        dir: &Path,
        ids: NodeIds,
        opts: LogOptions,
    ) -> Result<(FileLogStore, LogRecovered)> {
        let mut attempt = 1;
        loop {
            match Self::open_once(fs.clone(), dir, ids, opts.clone()) {
                Err(StorageError::UnstableRead { path, offset }) if attempt < OPEN_READ_ATTEMPTS => {
                    tracing::warn!(path = %path.display(), offset, attempt, "log segment read differently twice; scanning again");
                    attempt += 1;
                }
                r => return r,
            }
        }
    }

    fn open_once(
        fs: Arc<dyn FileSystem>,
        dir: &Path,
        ids: NodeIds,
        opts: LogOptions,
    ) -> Result<(FileLogStore, LogRecovered)> {
        let names = match fs.list_dir(dir) {
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                return Err(StorageError::NotInitialized { path: dir.to_path_buf() });
            }
            Err(e) => return Err(StorageError::io("list directory", dir, e)),
        };
        let mut seqs: Vec<u64> = names.iter().filter_map(|n| parse_segment_name(n)).collect();
        seqs.sort_unstable();
        if seqs.is_empty() {
            return Err(StorageError::NotInitialized { path: dir.to_path_buf() });
        }
        for w in seqs.windows(2) {
            if w[1] != w[0] + 1 {
                return Err(StorageError::MissingSegment {
                    dir: dir.to_path_buf(),
                    detail: format!(
                        "{} is missing (found {} and {})",
                        segment_path(dir, w[0] + 1).display(),
                        segment_path(dir, w[0]).display(),
                        segment_path(dir, w[1]).display()
                    ),
                });
            }
        }
        let mut replay = Replay::default();
        let mut segments: Vec<Segment> = Vec::new();
        let mut active: Option<(Box<dyn FsFile>, u64, u64, u32)> = None;
        let mut torn_tail = None;
        let n = seqs.len();
        for (i, &seq) in seqs.iter().enumerate() {
            let is_last = i + 1 == n;
            let path = segment_path(dir, seq);
            let file = fs.open(&path).map_err(|e| StorageError::io("open", &path, e))?;
            let data = Bytes::from(read_all(file.as_ref()).map_err(|e| StorageError::io("read", &path, e))?);
            let header = match SegmentHeader::decode(&data) {
                Ok(h) => h,
                Err(HeaderError::Incomplete)
                    if is_last && i > 0 && all_zero(&data[SEGMENT_HEADER_LEN.min(data.len())..]) =>
                {
                    // Crash while creating the newest segment: nothing in it
                    // was ever acknowledged (the header is synced before any
                    // record is written into it).
                    confirm_read(file.as_ref(), &data, &path, 0)?;
                    tracing::warn!(
                        path = %path.display(),
                        len = data.len(),
                        "removing newest log segment with a torn header (crash during creation)"
                    );
                    fs.remove(&path).map_err(|e| StorageError::io("remove", &path, e))?;
                    fs.sync_dir(dir)
                        .map_err(|e| StorageError::FsyncFailed { path: dir.to_path_buf(), source: e })?;
                    torn_tail =
                        Some(TornTail { path: path.clone(), offset: 0, bytes_cut: data.len() as u64 });
                    break;
                }
                Err(HeaderError::Incomplete) => {
                    return Err(StorageError::corrupt(
                        &path,
                        0,
                        format!("segment header is truncated or zeroed ({} bytes)", data.len()),
                    ));
                }
                Err(HeaderError::BadMagic) => {
                    return Err(StorageError::BadMagic { path, what: "log segment" });
                }
                Err(HeaderError::UnknownVersion(v)) => {
                    return Err(StorageError::UnknownVersion {
                        path,
                        found: v,
                        supported: LOG_FORMAT_VERSION,
                    });
                }
                Err(HeaderError::BadCrc) => {
                    return Err(StorageError::corrupt(&path, 0, "segment header checksum mismatch"));
                }
            };
            if header.cluster_id != ids.cluster_id {
                return Err(StorageError::ClusterMismatch {
                    path,
                    expected: ids.cluster_id,
                    found: header.cluster_id,
                });
            }
            if header.node_id != ids.node_id {
                return Err(StorageError::NodeMismatch {
                    path,
                    expected: ids.node_id,
                    found: header.node_id,
                });
            }
            if header.seq != seq {
                return Err(StorageError::corrupt(
                    &path,
                    32,
                    format!("header says segment {} but the file name says {seq}", header.seq),
                ));
            }
            if header.first_index == 0 {
                return Err(StorageError::corrupt(&path, 40, "segment first index is 0"));
            }
            if i == 0 {
                replay.last = header.first_index - 1;
            } else if header.first_index != replay.last + 1 {
                return Err(StorageError::MissingSegment {
                    dir: dir.to_path_buf(),
                    detail: format!(
                        "{} starts at index {} but the log before it ends at index {}",
                        path.display(),
                        header.first_index,
                        replay.last
                    ),
                });
            }
            let mut max_index = header.first_index - 1;
            let mut off = SEGMENT_HEADER_LEN;
            let mut allocated = 0u64;
            loop {
                let stop = match decode_record(&data, off, opts.max_record_size, header.version) {
                    Decoded::Record { rec, next } => {
                        if rec.kind != KIND_HARD_STATE {
                            max_index = max_index.max(rec.index);
                        }
                        replay.apply(rec, &path, off)?;
                        off = next;
                        continue;
                    }
                    Decoded::End => break,
                    // The preallocated zeros after the last record: the clean end.
                    Decoded::ZeroLen if is_last && all_zero(&data[off..]) => {
                        allocated = data.len() as u64;
                        break;
                    }
                    other => other,
                };
                let v2 = header.version != LOG_FORMAT_VERSION_1;
                // A complete record behind a damaged length field (version 2 records end in a
                // known byte, so it can be found without the length): damage, not a tear.
                let damaged_len = || {
                    v2 && intact_record_at(
                        &data,
                        off,
                        off.saturating_add(FRAME_HEADER_LEN + 1)
                            .saturating_add(opts.max_record_size as usize),
                    )
                };
                let (torn_ok, reason) = match stop {
                    // A write cut by a crash ends the file; a length field damaged on the
                    // disk (or by a bad read) also claims more bytes than are left, but whole
                    // records follow it: cutting there would drop synced records.
                    Decoded::Incomplete => (
                        !whole_record_after(&data, off + 1, opts.max_record_size, header.version)
                            && !damaged_len(),
                        "record runs past the end of the file".to_string(),
                    ),
                    Decoded::ZeroLen => (all_zero(&data[off..]), "zero record length".to_string()),
                    Decoded::BadLen(len) => (
                        all_zero(&data[(off + FRAME_HEADER_LEN).min(data.len())..]),
                        format!("impossible record length {len}"),
                    ),
                    // A torn record is a prefix followed by the segment's zeros, so in version 2
                    // its end byte is zero; a whole record damaged on the disk keeps it.
                    Decoded::BadCrc { end } => (
                        all_zero(&data[end..]) && (!v2 || data[end - 1] == 0) && !damaged_len(),
                        "record checksum mismatch".to_string(),
                    ),
                    Decoded::Record { .. } | Decoded::End => (true, String::new()),
                };
                if !(is_last && torn_ok) {
                    return Err(StorageError::corrupt(
                        &path,
                        off as u64,
                        if is_last {
                            format!("{reason}, followed by further data (not a torn tail)")
                        } else {
                            format!("{reason} in a sealed (non-last) segment")
                        },
                    ));
                }
                confirm_read(file.as_ref(), &data, &path, off as u64)?;
                tracing::warn!(
                    path = %path.display(),
                    offset = off,
                    bytes_cut = data.len() - off,
                    reason = %reason,
                    "cutting torn tail of the last log segment (crash during a write)"
                );
                file.set_len(off as u64).map_err(|e| StorageError::io("truncate", &path, e))?;
                file.sync_data().map_err(|e| StorageError::FsyncFailed { path: path.clone(), source: e })?;
                torn_tail = Some(TornTail {
                    path: path.clone(),
                    offset: off as u64,
                    bytes_cut: (data.len() - off) as u64,
                });
                break;
            }
            segments.push(Segment { seq, path, max_index });
            active = Some((file, off as u64, allocated.max(off as u64), header.version));
        }
        let Some((active, active_len, allocated, active_version)) = active else {
            return Err(StorageError::corrupt(segment_path(dir, seqs[0]), 0, "no usable segment"));
        };
        let mut hs = replay.hs;
        let clamped = hs.commit > replay.last;
        if clamped {
            tracing::warn!(
                commit = hs.commit,
                last_index = replay.last,
                "recovered commit index is beyond the last log index; clamping"
            );
            hs.commit = replay.last;
        }
        let mut store = FileLogStore {
            fs,
            dir: dir.to_path_buf(),
            ids,
            opts,
            segments,
            active,
            active_len,
            allocated,
            buf: Vec::new(),
            entries: replay.entries,
            last: replay.last,
            hs,
            hs_dirty: false,
            unsynced: false,
            uncached: 0,
            poisoned: None,
            torn_tail,
        };
        if active_version == LOG_FORMAT_VERSION_1 {
            // Records are written in the current format only: continue in a new segment.
            store.rollover()?;
        }
        if clamped {
            // The clamp is made durable before anything is appended: otherwise entries
            // appended later up to the old commit index would be recovered as committed
            // although they are other entries than the ones that were.
            store.hs_dirty = true;
            store.sync()?;
        }
        let recovered = LogRecovered {
            hard_state: hs,
            first_index: store.first_index(),
            last_index: store.last,
            records: store.entries.iter().cloned().collect(),
        };
        Ok((store, recovered))
    }

    /// The torn tail cut by `open`, if any.
    pub fn torn_tail(&self) -> Option<&TornTail> {
        self.torn_tail.as_ref()
    }

    /// The log directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Paths of the segment files, oldest first.
    pub fn segment_paths(&self) -> Vec<PathBuf> {
        self.segments.iter().map(|s| s.path.clone()).collect()
    }

    /// True once a fatal error poisoned the store.
    pub fn is_poisoned(&self) -> bool {
        self.poisoned.is_some()
    }

    fn check(&self) -> Result<()> {
        match &self.poisoned {
            Some(cause) => Err(StorageError::Poisoned { cause: cause.clone() }),
            None => Ok(()),
        }
    }

    /// Record a fatal error: every later call fails.
    fn fatal(&mut self, e: StorageError) -> StorageError {
        if self.poisoned.is_none() {
            tracing::error!(error = %e, "log store poisoned");
            self.poisoned = Some(e.to_string());
        }
        e
    }

    fn active_path(&self) -> PathBuf {
        self.segments.last().map(|s| s.path.clone()).unwrap_or_else(|| self.dir.clone())
    }

    /// Write the buffer to the active segment (one write call).
    fn flush(&mut self) -> Result<()> {
        if self.buf.is_empty() {
            return Ok(());
        }
        self.preallocate(self.active_len + self.buf.len() as u64)?;
        if let Err(e) = self.active.write_all_at(&self.buf, self.active_len) {
            let path = self.active_path();
            return Err(self.fatal(StorageError::io("write", path, e)));
        }
        self.active_len += self.buf.len() as u64;
        self.unsynced = true;
        if self.buf.capacity() > 4 * self.opts.write_buffer.max(1 << 20) {
            self.buf = Vec::new();
        } else {
            self.buf.clear();
        }
        Ok(())
    }

    fn sync_active(&mut self) -> Result<()> {
        if !self.unsynced {
            return Ok(());
        }
        let started = std::time::Instant::now();
        if let Err(e) = self.active.sync_data() {
            let path = self.active_path();
            return Err(self.fatal(StorageError::FsyncFailed { path, source: e }));
        }
        crate::observe::fsync_done(started.elapsed());
        self.unsynced = false;
        // The synced records are read again only by recovery: their pages may leave the
        // page cache (whole MiBs, never the page the next append writes into).
        let upto = self.active_len & !(CACHE_DROP_STEP - 1);
        if upto > self.uncached {
            self.active.drop_cache(self.uncached, upto - self.uncached);
            self.uncached = upto;
        }
        Ok(())
    }

    /// Extends the active segment with zeros (see `LogOptions::preallocate`) so that it
    /// holds at least `end` bytes. The new length becomes durable with the next fsync; a
    /// crash before that loses only zeros.
    fn preallocate(&mut self, end: u64) -> Result<()> {
        if self.opts.preallocate == 0 || end <= self.allocated {
            return Ok(());
        }
        let target = end.max((self.allocated + self.opts.preallocate).min(self.opts.segment_size));
        let zeros = vec![0u8; (target - self.allocated).min(1 << 20) as usize];
        let mut at = self.allocated;
        while at < target {
            let n = (target - at).min(zeros.len() as u64) as usize;
            if let Err(e) = self.active.write_all_at(&zeros[..n], at) {
                let path = self.active_path();
                return Err(self.fatal(StorageError::io("write", path, e)));
            }
            at += n as u64;
        }
        self.allocated = target;
        self.unsynced = true;
        Ok(())
    }

    /// Seal the active segment (flush, cut the preallocated zeros, fsync) and start the
    /// next one. Only the last segment may end in zeros.
    fn rollover(&mut self) -> Result<()> {
        self.flush()?;
        if self.allocated > self.active_len {
            if let Err(e) = self.active.set_len(self.active_len) {
                let path = self.active_path();
                return Err(self.fatal(StorageError::io("truncate", path, e)));
            }
            self.allocated = self.active_len;
            self.unsynced = true;
        }
        self.sync_active()?;
        let seq = self.segments.last().map_or(1, |s| s.seq + 1);
        let res =
            Self::write_new_segment(self.fs.as_ref(), &self.dir, self.ids, seq, self.last + 1, &self.hs);
        let (file, len, path) = match res {
            Ok(x) => x,
            Err(e) => return Err(self.fatal(e)),
        };
        self.hs_dirty = false;
        self.active.drop_cache(0, 0);
        self.active = file;
        self.active_len = len;
        self.allocated = len;
        self.uncached = 0;
        self.segments.push(Segment { seq, path, max_index: self.last });
        Ok(())
    }

    /// Removes whole segments, oldest first, whose entries are all `<= up_to`; never the
    /// active one.
    fn remove_segments_up_to(&mut self, up_to: u64) -> Result<()> {
        let mut removed = 0;
        while self.segments.len() - removed > 1 && self.segments[removed].max_index <= up_to {
            let path = self.segments[removed].path.clone();
            if let Err(e) = self.fs.remove(&path) {
                return Err(self.fatal(StorageError::io("remove", path, e)));
            }
            // One directory sync per removal, oldest first: a crash never
            // leaves a hole in the middle of the segment sequence.
            if let Err(e) = self.fs.sync_dir(&self.dir) {
                let dir = self.dir.clone();
                return Err(self.fatal(StorageError::FsyncFailed { path: dir, source: e }));
            }
            removed += 1;
        }
        self.segments.drain(..removed);
        Ok(())
    }

    fn note_index(&mut self, index: u64) {
        if let Some(s) = self.segments.last_mut() {
            s.max_index = s.max_index.max(index);
        }
    }
}

impl LogStore for FileLogStore {
    fn append(&mut self, records: &[LogRecord]) -> Result<()> {
        self.check()?;
        crate::validate_append(records, self.first_index(), self.last, self.opts.max_record_size)?;
        let Some(first) = records.first() else {
            return Ok(());
        };
        let add: u64 = records.iter().map(|r| framed_len(r.data.len()) as u64).sum();
        let written = self.active_len + self.buf.len() as u64;
        if written + add > self.opts.segment_size && written > (SEGMENT_HEADER_LEN + 64) as u64 {
            self.rollover()?;
        }
        while self.entries.back().is_some_and(|e| e.index >= first.index) {
            self.entries.pop_back();
        }
        for r in records {
            encode_record(&mut self.buf, r.kind, r.index, r.term, &r.data);
            self.entries.push_back(r.clone());
        }
        self.last = first.index + records.len() as u64 - 1;
        self.note_index(self.last);
        if self.buf.len() >= self.opts.write_buffer {
            self.flush()?;
        }
        Ok(())
    }

    fn save_hard_state(&mut self, hs: HardState) -> Result<()> {
        self.check()?;
        self.hs = hs;
        self.hs_dirty = true;
        Ok(())
    }

    fn sync(&mut self) -> Result<()> {
        self.check()?;
        if self.hs_dirty {
            // Written after every buffered entry: a recovered hard state
            // never refers to entries that were not recovered.
            encode_hard_state(&mut self.buf, &self.hs);
            self.hs_dirty = false;
        }
        self.flush()?;
        if self.opts.sync == SyncMode::Fsync {
            self.sync_active()?;
        }
        Ok(())
    }

    fn compact(&mut self, up_to: u64) -> Result<()> {
        self.check()?;
        if up_to > self.last {
            encode_record(&mut self.buf, KIND_RESET, up_to, 0, &[]);
            self.entries.clear();
            self.last = up_to;
            self.note_index(up_to);
            self.sync()?;
            if self.opts.sync != SyncMode::Fsync {
                self.sync_active()?;
            }
        } else {
            while self.entries.front().is_some_and(|e| e.index <= up_to) {
                self.entries.pop_front();
            }
        }
        self.remove_segments_up_to(up_to)
    }

    fn reset(&mut self, index: u64) -> Result<()> {
        self.check()?;
        encode_record(&mut self.buf, KIND_RESET, index, 0, &[]);
        self.entries.clear();
        self.last = index;
        self.note_index(index);
        self.sync()?;
        if self.opts.sync != SyncMode::Fsync {
            self.sync_active()?;
        }
        // Everything before the reset marker is dead: only the active segment stays.
        self.remove_segments_up_to(u64::MAX)
    }

    fn first_index(&self) -> u64 {
        self.entries.front().map_or(self.last + 1, |e| e.index)
    }

    fn last_index(&self) -> u64 {
        self.last
    }

    fn term(&self, index: u64) -> Option<u64> {
        let first = self.entries.front()?.index;
        if index < first || index > self.last {
            return None;
        }
        self.entries.get((index - first) as usize).map(|e| e.term)
    }

    fn entries(&self, lo: u64, hi: u64) -> Result<Vec<LogRecord>> {
        self.check()?;
        slice_entries(&self.entries, self.last, lo, hi)
    }

    fn hard_state(&self) -> HardState {
        self.hs
    }
}

/// `entries[lo..hi]` with range checks, shared with the in-memory store.
pub(crate) fn slice_entries(
    entries: &VecDeque<LogRecord>,
    last: u64,
    lo: u64,
    hi: u64,
) -> Result<Vec<LogRecord>> {
    let first = entries.front().map_or(last + 1, |e| e.index);
    if lo > hi {
        return Err(StorageError::InvalidArgument(format!("entries({lo}, {hi}): lo > hi")));
    }
    if lo < first {
        return Err(StorageError::Compacted { index: lo, first });
    }
    if hi > last + 1 {
        return Err(StorageError::Unavailable { index: hi, last });
    }
    let a = (lo - first) as usize;
    let b = (hi - first) as usize;
    Ok(entries.range(a..b).cloned().collect())
}

/// Whether a whole record (its checksum matching) starts anywhere in `data` from `from` on.
fn whole_record_after(data: &Bytes, from: usize, max_record_size: u32, version: u32) -> bool {
    (from..data.len())
        .any(|off| matches!(decode_record(data, off, max_record_size, version), Decoded::Record { .. }))
}
