//! Incremental snapshots: the MVCC history's cold section kept in segment files shared by
//! successive snapshots.
//!
//! A snapshot of the state machine is mostly the cold section (the values of superseded
//! versions), and the cold store only appends between rewrites. So a member's own snapshot
//! is written *thin*: the cold bytes added since its previous snapshot go to a new segment
//! file (synced), and the snapshot file lists the segments instead of holding their bytes.
//! A snapshot then costs the keys and newest values plus the new history, not the whole
//! history again. Whenever a thin snapshot is read (to restore, or to send to a follower)
//! it is expanded on the fly into the self-contained layout, byte for byte what a full
//! snapshot holds, so receivers and older readers see no difference.
//!
//! Thin layout (integers little-endian):
//!
//! ```text
//! magic "RAFTKVT\0" | version u32 = 1 | members_len u32 | members (JSON)
//! | segment_count u32 | per segment: name_id u64, start u64, len u64, crc u32
//! | keys (KvStore::write_pinned_keys) | crc u32 (CRC32C of everything after the magic)
//! ```
//!
//! Full layout: see [`crate::snapshot`].
//!
//! Segment files (`cold-<name_id>.seg`, raw bytes) are synced with their directory before
//! the snapshot that lists them is written; a chain starts over (one segment with the
//! whole prefix) whenever the cold store was replaced (rewrite, restore, restart). After a
//! snapshot is durable, segments it does not list are removed.

use std::fs::{self, File};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use parking_lot::Mutex;
use raftkv_kv::{CrcReader, CrcWriter, KvStore, SnapshotPoint};

const THIN_MAGIC: &[u8; 8] = b"RAFTKVT\0";
const THIN_VERSION: u32 = 1;
/// Segments one snapshot may list (a chain grows by one per snapshot until it restarts).
const MAX_SEGMENTS: u32 = 1 << 16;
/// Cold bytes copied per visit to the live store.
const COPY_CHUNK: usize = 1 << 20;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Segment {
    name_id: u64,
    start: u64,
    len: u64,
    crc: u32,
}

/// The segments the next snapshot can reuse; shared by the state machine and its pins.
#[derive(Debug)]
pub struct ColdChain {
    dir: PathBuf,
    cold_id: u64,
    segments: Vec<Segment>,
    next_name: u64,
}

pub type SharedChain = Arc<Mutex<ColdChain>>;

/// Runs a closure on the live store (under its read lock).
pub type StoreVisit<'a> = dyn FnMut(&mut dyn FnMut(&KvStore)) + 'a;

impl ColdChain {
    pub fn new(dir: PathBuf) -> SharedChain {
        // Names only need to differ from those of segments still on disk.
        let next_name = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(1, |d| d.as_nanos() as u64);
        Arc::new(Mutex::new(ColdChain { dir, cold_id: 0, segments: Vec::new(), next_name }))
    }

    fn end(&self) -> u64 {
        self.segments.last().map_or(0, |s| s.start + s.len)
    }
}

fn segment_path(dir: &Path, name_id: u64) -> PathBuf {
    dir.join(format!("cold-{name_id:016x}.seg"))
}

/// Writes a thin snapshot of the store at `point` (and `members`) to `w`, first adding a
/// segment with the cold bytes the chain lacks.
pub fn write_thin(
    chain: &SharedChain,
    point: &SnapshotPoint,
    members: &[u8],
    w: &mut dyn Write,
    visit: &mut StoreVisit<'_>,
) -> io::Result<()> {
    let segments = {
        let mut c = chain.lock();
        if c.cold_id != point.cold_id() || c.end() > point.cold_len() {
            c.cold_id = point.cold_id();
            c.segments.clear();
        }
        let start = c.end();
        if point.cold_len() > start {
            c.next_name += 1;
            let name_id = c.next_name;
            let seg = write_segment(&c.dir, name_id, start, point.cold_len(), visit)?;
            c.segments.push(seg);
        }
        c.segments.clone()
    };
    let mut bw = io::BufWriter::with_capacity(64 << 10, w);
    bw.write_all(THIN_MAGIC)?;
    let mut cw = CrcWriter { inner: &mut bw, crc: 0 };
    cw.write_all(&THIN_VERSION.to_le_bytes())?;
    cw.write_all(&(members.len() as u32).to_le_bytes())?;
    cw.write_all(members)?;
    cw.write_all(&(segments.len() as u32).to_le_bytes())?;
    for s in &segments {
        cw.write_all(&s.name_id.to_le_bytes())?;
        cw.write_all(&s.start.to_le_bytes())?;
        cw.write_all(&s.len.to_le_bytes())?;
        cw.write_all(&s.crc.to_le_bytes())?;
    }
    KvStore::write_pinned_keys(point, &mut cw, |f| visit(f))?;
    let crc = cw.crc;
    bw.write_all(&crc.to_le_bytes())?;
    bw.flush()
}

fn write_segment(
    dir: &Path,
    name_id: u64,
    start: u64,
    end: u64,
    visit: &mut StoreVisit<'_>,
) -> io::Result<Segment> {
    if !dir.exists() {
        fs::create_dir_all(dir)?;
        if let Some(parent) = dir.parent() {
            File::open(parent)?.sync_all()?;
        }
    }
    let path = segment_path(dir, name_id);
    let mut file = File::create(&path)?;
    let mut buf = vec![0u8; COPY_CHUNK.min(usize::try_from(end - start).unwrap_or(usize::MAX))];
    let mut crc = 0u32;
    let mut at = start;
    while at < end {
        let n = (end - at).min(buf.len() as u64) as usize;
        let mut read = Ok(());
        visit(&mut |store: &KvStore| read = store.read_cold(at, &mut buf[..n]));
        read?;
        file.write_all(&buf[..n])?;
        crc = crc32c::crc32c_append(crc, &buf[..n]);
        at += n as u64;
    }
    file.sync_all()?;
    // Read again only to restore or to send a snapshot.
    raftkv_storage::fs::drop_cache(&file, 0, 0);
    File::open(dir)?.sync_all()?;
    Ok(Segment { name_id, start, len: end - start, crc })
}

/// Removes the segment files the chain does not list (once a snapshot listing the chain
/// is durable, no other snapshot needs them).
pub fn remove_unlisted(chain: &SharedChain) {
    let c = chain.lock();
    let Ok(entries) = fs::read_dir(&c.dir) else { return };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        let Some(id) = name.strip_prefix("cold-").and_then(|n| n.strip_suffix(".seg")) else { continue };
        let listed = u64::from_str_radix(id, 16).is_ok_and(|id| c.segments.iter().any(|s| s.name_id == id));
        if !listed && let Err(e) = fs::remove_file(entry.path()) {
            tracing::warn!(path = %entry.path().display(), error = %e, "cannot remove an old history segment");
        }
    }
}

/// Why a thin snapshot cannot be expanded.
#[derive(Debug, thiserror::Error)]
pub enum ThinError {
    /// The snapshot itself cannot be read.
    #[error("reading the snapshot: {0}")]
    Read(io::Error),
    /// The thin snapshot's header is damaged or of an unknown version.
    #[error("thin snapshot: {0}")]
    Malformed(String),
    /// A listed history segment cannot be opened.
    #[error("history segment {}: {source}", path.display())]
    Segment {
        /// The segment file.
        path: PathBuf,
        /// What failed.
        source: io::Error,
    },
    /// A listed history segment has another length than the snapshot lists.
    #[error("history segment {}: {on_disk} bytes, the snapshot lists {listed}", path.display())]
    SegmentLength {
        /// The segment file.
        path: PathBuf,
        /// Its length on disk.
        on_disk: u64,
        /// The length the snapshot lists.
        listed: u64,
    },
}

fn malformed(msg: impl Into<String>) -> ThinError {
    ThinError::Malformed(msg.into())
}

/// A snapshot in the full layout (see [`open_full`]).
pub enum FullReader<R> {
    /// A full snapshot, passed through.
    Pass(io::Chain<io::Cursor<Vec<u8>>, R>),
    /// A thin snapshot, expanded.
    Thin(Box<Expand<R>>),
}

impl<R: Read> Read for FullReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            FullReader::Pass(r) => r.read(buf),
            FullReader::Thin(r) => r.read(buf),
        }
    }
}

/// A snapshot as read from the snapshot store (`len` bytes), in the full layout: thin
/// snapshots are expanded with the segments in `dir` (which are opened here, so removing
/// them later does not disturb this reader), full ones pass through. Returns the reader
/// and its length.
pub fn open_full<R: Read>(mut r: R, len: u64, dir: &Path) -> Result<(FullReader<R>, u64), ThinError> {
    let mut magic = [0u8; 8];
    if len < 8 {
        return Ok((FullReader::Pass(io::Cursor::new(Vec::new()).chain(r)), len));
    }
    r.read_exact(&mut magic).map_err(ThinError::Read)?;
    if &magic != THIN_MAGIC {
        return Ok((FullReader::Pass(io::Cursor::new(magic.to_vec()).chain(r)), len));
    }
    let mut cr = CrcReader { inner: r, crc: 0 };
    let version = read_u32(&mut cr)?;
    if version != THIN_VERSION {
        return Err(malformed(format!("unsupported version {version}")));
    }
    let members_len = read_u32(&mut cr)?;
    if members_len as usize > crate::snapshot::MAX_TRAILER {
        return Err(malformed(format!("members section claims {members_len} bytes")));
    }
    let mut members = vec![0u8; members_len as usize];
    cr.read_exact(&mut members).map_err(|e| malformed(format!("members: {e}")))?;
    let count = read_u32(&mut cr)?;
    if count > MAX_SEGMENTS {
        return Err(malformed(format!("{count} segments listed")));
    }
    let mut segments = Vec::with_capacity(count as usize);
    let mut expected_start = 0u64;
    for _ in 0..count {
        let name_id = read_u64(&mut cr)?;
        let start = read_u64(&mut cr)?;
        let seg_len = read_u64(&mut cr)?;
        let crc = read_u32(&mut cr)?;
        if start != expected_start {
            return Err(malformed(format!("segment at {start}, expected {expected_start}")));
        }
        expected_start = start.checked_add(seg_len).ok_or_else(|| malformed("segment length overflows"))?;
        let path = segment_path(dir, name_id);
        let file = File::open(&path).map_err(|source| ThinError::Segment { path: path.clone(), source })?;
        let on_disk =
            file.metadata().map_err(|source| ThinError::Segment { path: path.clone(), source })?.len();
        if on_disk != seg_len {
            return Err(ThinError::SegmentLength { path, on_disk, listed: seg_len });
        }
        segments.push((Segment { name_id, start, len: seg_len, crc }, file, path));
    }
    let header = 8 + 4 + 4 + u64::from(members_len) + 4 + 28 * u64::from(count);
    let keys_len = len.checked_sub(header + 4).ok_or_else(|| malformed("shorter than its header"))?;
    let cold_len = expected_start;
    let full_len = 12 + keys_len + 8 + cold_len + 4 + 4 + u64::from(members_len);
    let reader = Expand {
        src: cr,
        phase: Phase::Header,
        out: io::Cursor::new(KvStore::snapshot_header().to_vec()),
        keys_left: keys_len,
        full_crc: 0,
        cold_len,
        segments: segments.into_iter().collect(),
        current: None,
        members,
    };
    Ok((FullReader::Thin(Box::new(reader)), full_len))
}

fn read_u32(r: &mut impl Read) -> Result<u32, ThinError> {
    let mut b = [0u8; 4];
    r.read_exact(&mut b).map_err(|e| malformed(e.to_string()))?;
    Ok(u32::from_le_bytes(b))
}

fn read_u64(r: &mut impl Read) -> Result<u64, ThinError> {
    let mut b = [0u8; 8];
    r.read_exact(&mut b).map_err(|e| malformed(e.to_string()))?;
    Ok(u64::from_le_bytes(b))
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Phase {
    /// Emitting the full header from `out`.
    Header,
    /// Copying the keys from the thin snapshot.
    Keys,
    /// Emitting cold_len from `out`, then the segments.
    Cold,
    /// Emitting the full CRC, members length and members from `out`.
    Tail,
    Done,
}

/// Expands a thin snapshot into the full layout while it is read.
pub struct Expand<R> {
    src: CrcReader<R>,
    phase: Phase,
    out: io::Cursor<Vec<u8>>,
    keys_left: u64,
    full_crc: u32,
    cold_len: u64,
    segments: std::collections::VecDeque<(Segment, File, PathBuf)>,
    current: Option<(Segment, File, PathBuf, u64, u32)>,
    members: Vec<u8>,
}

fn bad(msg: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, msg)
}

impl<R: Read> Expand<R> {
    fn drain_out(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.out.read(buf)
    }

    fn out_empty(&self) -> bool {
        self.out.position() as usize >= self.out.get_ref().len()
    }

    fn next_phase(&mut self) -> io::Result<()> {
        match self.phase {
            Phase::Header => self.phase = Phase::Keys,
            Phase::Keys => {
                // The thin CRC covers everything up to here; check it before going on.
                let computed = self.src.crc;
                let mut b = [0u8; 4];
                self.src.inner.read_exact(&mut b)?;
                let stored = u32::from_le_bytes(b);
                if stored != computed {
                    return Err(bad(format!(
                        "thin snapshot checksum mismatch (stored {stored:#010x}, computed {computed:#010x})"
                    )));
                }
                let len = self.cold_len.to_le_bytes();
                self.full_crc = crc32c::crc32c_append(self.full_crc, &len);
                self.out = io::Cursor::new(len.to_vec());
                self.phase = Phase::Cold;
            }
            Phase::Cold => {
                let mut tail = Vec::with_capacity(8 + self.members.len());
                tail.extend_from_slice(&self.full_crc.to_le_bytes());
                tail.extend_from_slice(&(self.members.len() as u32).to_le_bytes());
                tail.extend_from_slice(&self.members);
                self.out = io::Cursor::new(tail);
                self.phase = Phase::Tail;
            }
            Phase::Tail | Phase::Done => self.phase = Phase::Done,
        }
        Ok(())
    }
}

impl<R: Read> Read for Expand<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if buf.is_empty() {
            return Ok(0);
        }
        loop {
            match self.phase {
                Phase::Done => return Ok(0),
                Phase::Header | Phase::Tail => {
                    if !self.out_empty() {
                        return self.drain_out(buf);
                    }
                    self.next_phase()?;
                }
                Phase::Keys => {
                    if self.keys_left == 0 {
                        self.next_phase()?;
                        continue;
                    }
                    let want = buf.len().min(usize::try_from(self.keys_left).unwrap_or(usize::MAX));
                    let n = self.src.read(&mut buf[..want])?;
                    if n == 0 {
                        return Err(bad("thin snapshot ends inside its keys".into()));
                    }
                    self.keys_left -= n as u64;
                    self.full_crc = crc32c::crc32c_append(self.full_crc, &buf[..n]);
                    return Ok(n);
                }
                Phase::Cold => {
                    if !self.out_empty() {
                        return self.drain_out(buf);
                    }
                    if self.current.is_none() {
                        match self.segments.pop_front() {
                            Some((seg, file, path)) => self.current = Some((seg, file, path, 0, 0)),
                            None => {
                                self.next_phase()?;
                                continue;
                            }
                        }
                    }
                    let Some((seg, file, path, done, crc)) = self.current.as_mut() else { continue };
                    if *done == seg.len {
                        if *crc != seg.crc {
                            return Err(bad(format!(
                                "history segment {} is corrupt (checksum {:#010x}, listed {:#010x})",
                                path.display(),
                                crc,
                                seg.crc
                            )));
                        }
                        self.current = None;
                        continue;
                    }
                    let want = buf.len().min(usize::try_from(seg.len - *done).unwrap_or(usize::MAX));
                    let n = file.read(&mut buf[..want])?;
                    if n == 0 {
                        return Err(bad(format!("history segment {} ends early", path.display())));
                    }
                    *done += n as u64;
                    *crc = crc32c::crc32c_append(*crc, &buf[..n]);
                    self.full_crc = crc32c::crc32c_append(self.full_crc, &buf[..n]);
                    return Ok(n);
                }
            }
        }
    }
}
