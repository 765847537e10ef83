//! Snapshot format (all integers little-endian):
//!
//! ```text
//! magic   "RAFTKVS\0"                      8 bytes
//! format  u32 = 4
//! body:
//!   revision i64, compact_revision i64
//!   per key (ascending): key_len u32, key, entry_count u32,
//!     per entry (ascending), as varints (LEB128; "z" marks a zigzag-encoded signed
//!     difference) relative to the key's previous entry (or to 0 for its first):
//!       main - prev_main, sub, z(create - prev_create), z(version - prev_version),
//!       value_len, then for the key's last entry: the value;
//!       for the others: z(value_pos - prev_value_pos) (where the value is in the cold
//!       section)
//!   end of keys: u32 = 0xFFFF_FFFF in place of a key_len
//!   cold section: cold_len u64, cold_len bytes
//! crc     u32 = CRC32C of body
//! ```
//!
//! The cold section is the store's [`crate::ColdStore`] as it was when the snapshot was
//! pinned, copied in large sequential blocks: the values of superseded versions are not
//! looked up one by one, and a restore streams them back into its own cold store at the
//! same positions. It may hold values of versions that compaction discarded (garbage the
//! cold store has not reclaimed yet); only the referenced spans are ever read.
//!
//! Formats 1 and 2 are still read; format 3 (fixed-width records with a cold section) was
//! never released and is refused. Format 2 wrote every entry as main i64, sub i64,
//! create i64, version i64, lease i64, value_len u32, value, and had no cold section;
//! format 1 was format 2 with `key_count u64` after the revisions and no end marker. The
//! end marker lets a snapshot be written from a live store ([`KvStore::pin`]): the key
//! count is not known until the end. [`KvStore::digest`] hashes the format 2 body, which
//! does not depend on where values are kept.
//!
//! Restoring validates the checksum and the structure (sorted keys and
//! revisions, revisions within bounds) and never allocates more than the
//! input actually provides, whatever the length fields say.

use std::io::{self, Read, Write};

use bytes::Bytes;

use crate::KvError;
use std::ops::Bound;

use crate::cold::ColdStore;
use crate::index::KeyIndex;
use crate::store::{Key, KeyHistory, KvConfig, KvStore, Rev, retained, value_in};

const MAGIC: &[u8; 8] = b"RAFTKVS\0";
/// Format 1 counted the keys up front; format 2 ends the keys with [`END_OF_KEYS`], so a
/// snapshot can be written while the store changes; format 4 adds the cold section and
/// writes the version records as varint differences. Formats 1, 2 and 4 are read.
const FORMAT: u32 = 4;
const FORMAT_INLINE: u32 = 2;
const FORMAT_COUNTED: u32 = 1;
/// Cold section bytes copied per visit to the store.
const COLD_PER_VISIT: usize = 1 << 20;
/// What [`KvStore::write_body`] writes.
#[derive(Clone, Copy, PartialEq, Eq)]
enum BodyKind {
    /// Format 4 with the cold section.
    Full,
    /// Format 4 up to the end-of-keys marker.
    Keys,
    /// Format 2 (values inline) up to the end-of-keys marker, for the digest.
    Inline,
}

/// In place of a key length: no more keys.
const END_OF_KEYS: u32 = u32::MAX;
/// Largest chunk buffered ahead of data that has actually been read.
const CHUNK: usize = 64 * 1024;

/// A writer that keeps the CRC32C of everything written through it.
pub struct CrcWriter<W> {
    pub inner: W,
    pub crc: u32,
}

impl<W: Write> Write for CrcWriter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.crc = crc32c::crc32c_append(self.crc, &buf[..n]);
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// A reader that keeps the CRC32C of everything read through it.
pub struct CrcReader<R> {
    pub inner: R,
    pub crc: u32,
}

impl<R: Read> Read for CrcReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.crc = crc32c::crc32c_append(self.crc, &buf[..n]);
        Ok(n)
    }
}

fn len_u32(n: usize) -> io::Result<u32> {
    u32::try_from(n).map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "length exceeds u32"))
}

/// A point in a store's history that a snapshot captures: see [`KvStore::pin`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SnapshotPoint {
    rev: i64,
    compacted: i64,
    /// Bytes in the cold store at the pin: every value the snapshot refers to is below.
    cold_len: u64,
    /// Which cold store `cold_len` counts in ([`ColdStore::id`]).
    cold_id: u64,
}

impl SnapshotPoint {
    /// Bytes of the cold section at the pin (see [`KvStore::write_pinned_keys`]).
    pub fn cold_len(&self) -> u64 {
        self.cold_len
    }

    /// The cold store the pin counts in: a prefix of its bytes copied for an earlier
    /// snapshot with the same id is still the same prefix (the store only appends).
    pub fn cold_id(&self) -> u64 {
        self.cold_id
    }

    /// The store revision the snapshot holds.
    pub fn revision(&self) -> i64 {
        self.rev
    }

    /// The compaction revision at the pin (-1: never compacted).
    pub fn compacted(&self) -> i64 {
        self.compacted
    }
}

/// Runs a closure on the store (under the caller's lock).
type StoreVisit<'a> = dyn FnMut(&mut dyn FnMut(&KvStore)) + 'a;

/// Keys serialised per visit to the store (per lock acquisition, for a shared store).
const KEYS_PER_VISIT: usize = 1024;

/// What precedes a key's versions in every format since 2.
fn put_key(out: &mut Vec<u8>, key: &[u8], versions: usize) -> io::Result<()> {
    out.extend_from_slice(&len_u32(key.len())?.to_le_bytes());
    out.extend_from_slice(key);
    out.extend_from_slice(&len_u32(versions)?.to_le_bytes());
    Ok(())
}

/// A key's versions in format 2 (every value inline): for the digest.
fn put_entries_inline(
    out: &mut Vec<u8>,
    key: &[u8],
    h: &KeyHistory,
    range: std::ops::Range<usize>,
    cold: &ColdStore,
) -> io::Result<()> {
    put_key(out, key, range.len())?;
    for i in range {
        let e = &h.revs[i];
        // Leases are not stored: lease 0.
        for v in [e.main, i64::from(e.sub), e.create, e.version, 0] {
            out.extend_from_slice(&v.to_le_bytes());
        }
        let value = value_in(cold, h, i)?;
        out.extend_from_slice(&len_u32(value.len())?.to_le_bytes());
        out.extend_from_slice(&value);
    }
    Ok(())
}

fn put_varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push(v as u8 | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

fn zigzag(v: i64) -> u64 {
    ((v << 1) ^ (v >> 63)) as u64
}

fn unzigzag(v: u64) -> i64 {
    (v >> 1) as i64 ^ -((v & 1) as i64)
}

/// A key's versions in format 4: varint differences, the last one's value inline, the
/// others' positions.
fn put_entries(
    out: &mut Vec<u8>,
    key: &[u8],
    h: &KeyHistory,
    range: std::ops::Range<usize>,
    cold: &ColdStore,
) -> io::Result<()> {
    put_key(out, key, range.len())?;
    let last = range.end - 1;
    let (mut main, mut create, mut version, mut pos) = (0i64, 0i64, 0i64, 0i64);
    for i in range {
        let e = &h.revs[i];
        // Versions ascend: the main revision never decreases.
        put_varint(out, e.main.wrapping_sub(main) as u64);
        put_varint(out, u64::from(e.sub));
        put_varint(out, zigzag(e.create.wrapping_sub(create)));
        put_varint(out, zigzag(e.version.wrapping_sub(version)));
        put_varint(out, u64::from(e.vlen));
        (main, create, version) = (e.main, e.create, e.version);
        if i == last {
            // The newest version at the pin: in memory then, maybe in the cold store now.
            out.extend_from_slice(&value_in(cold, h, i)?);
        } else {
            // Superseded before the pin: in the cold store below the pinned length.
            put_varint(out, zigzag((e.pos as i64).wrapping_sub(pos)));
            pos = e.pos as i64;
        }
    }
    Ok(())
}

impl KvStore {
    /// Captures the current state for a snapshot that is written while writes go on
    /// ([`KvStore::write_pinned`]). Cheap: nothing is copied. Every write after this adds
    /// versions above the pinned revision, which the snapshot skips; compactions only move
    /// the compacted revision until [`KvStore::unpin`] (reads refuse compacted revisions
    /// either way), so the versions the snapshot needs stay in place.
    pub fn pin(&mut self) -> SnapshotPoint {
        self.pins += 1;
        self.point()
    }

    fn point(&self) -> SnapshotPoint {
        SnapshotPoint {
            rev: self.rev,
            compacted: self.compacted,
            cold_len: self.cold.appended_bytes(),
            cold_id: self.cold.id(),
        }
    }

    /// Ends a [`KvStore::pin`]; the last one carries out a deferred compaction.
    pub fn unpin(&mut self) {
        self.pins = self.pins.saturating_sub(1);
        if self.pins == 0 && self.compaction_deferred {
            self.compaction_deferred = false;
            self.discard_compacted();
        }
    }

    /// Writes the state as it was at `point` in the snapshot format. `visit` must call the
    /// closure it is given on the pinned store (typically under a read lock); it is called
    /// once per batch of keys, so a writer holds the lock only briefly, and the output is
    /// written outside it.
    pub fn write_pinned(
        point: &SnapshotPoint,
        w: &mut impl Write,
        mut visit: impl FnMut(&mut dyn FnMut(&KvStore)),
    ) -> io::Result<()> {
        let mut bw = io::BufWriter::with_capacity(CHUNK, w);
        bw.write_all(MAGIC)?;
        bw.write_all(&FORMAT.to_le_bytes())?;
        let mut cw = CrcWriter { inner: &mut bw, crc: 0 };
        Self::write_body(point, &mut cw, &mut visit, BodyKind::Full)?;
        let crc = cw.crc;
        bw.write_all(&crc.to_le_bytes())?;
        bw.flush()
    }

    /// The 12 bytes that start a snapshot in the current format (magic and format).
    pub fn snapshot_header() -> [u8; 12] {
        let mut h = [0u8; 12];
        h[..8].copy_from_slice(MAGIC);
        h[8..].copy_from_slice(&FORMAT.to_le_bytes());
        h
    }

    /// The keys part of a snapshot body at `point`: everything [`KvStore::write_pinned`]
    /// writes after [`KvStore::snapshot_header`] up to the end-of-keys marker, without the
    /// cold section. A snapshot is the header, these bytes, the cold section length (u64
    /// LE) and the cold store's first `point.cold_len()` bytes, then the CRC32C (u32 LE) of
    /// everything after the header; the cold bytes can come from copies made earlier
    /// ([`KvStore::read_cold`]), since the store only appends to them.
    pub fn write_pinned_keys(
        point: &SnapshotPoint,
        w: &mut impl Write,
        mut visit: impl FnMut(&mut dyn FnMut(&KvStore)),
    ) -> io::Result<()> {
        Self::write_body(point, w, &mut visit, BodyKind::Keys)
    }

    /// Copies cold store bytes from `at` into `buf`.
    pub fn read_cold(&self, at: u64, buf: &mut [u8]) -> io::Result<()> {
        self.cold.read_into(at, buf)
    }

    /// The identity of the current cold store ([`SnapshotPoint::cold_id`]).
    pub fn cold_id(&self) -> u64 {
        self.cold.id()
    }

    /// The body in format 4, or in format 2 with `BodyKind::Inline` (for the digest).
    fn write_body(
        point: &SnapshotPoint,
        w: &mut impl Write,
        visit: &mut StoreVisit<'_>,
        body: BodyKind,
    ) -> io::Result<()> {
        let inline = body == BodyKind::Inline;
        w.write_all(&point.rev.to_le_bytes())?;
        w.write_all(&point.compacted.to_le_bytes())?;
        let mut cursor: Option<Key> = None;
        let mut out = Vec::with_capacity(CHUNK);
        loop {
            let mut done = false;
            let mut failed = None;
            visit(&mut |store: &KvStore| {
                let bounds = match &cursor {
                    Some(k) => (Bound::Excluded(&k[..]), Bound::Unbounded),
                    None => (Bound::Unbounded, Bound::Unbounded),
                };
                let mut keys = store.map.range(bounds);
                for _ in 0..KEYS_PER_VISIT {
                    let Some((k, h)) = keys.next() else {
                        done = true;
                        return;
                    };
                    cursor = Some(k.clone());
                    let range = retained(&h.revs, point.rev, point.compacted);
                    let put = if inline { put_entries_inline } else { put_entries };
                    if !range.is_empty()
                        && let Err(e) = put(&mut out, k, h, range, &store.cold)
                    {
                        failed = Some(e);
                        return;
                    }
                }
            });
            if let Some(e) = failed {
                return Err(e);
            }
            w.write_all(&out)?;
            out.clear();
            if done {
                break;
            }
        }
        w.write_all(&END_OF_KEYS.to_le_bytes())?;
        if body != BodyKind::Full {
            return Ok(());
        }
        // The cold section: append-only while pinned, so the pinned prefix stays as it was.
        w.write_all(&point.cold_len.to_le_bytes())?;
        let mut buf = vec![0u8; COLD_PER_VISIT.min(usize::try_from(point.cold_len).unwrap_or(usize::MAX))];
        let mut at = 0u64;
        while at < point.cold_len {
            let n = (point.cold_len - at).min(buf.len() as u64) as usize;
            let mut read = Ok(());
            visit(&mut |store: &KvStore| read = store.cold.read_into(at, &mut buf[..n]));
            read?;
            w.write_all(&buf[..n])?;
            at += n as u64;
        }
        Ok(())
    }

    /// Writes the full MVCC state (every retained version, the current and
    /// compacted revision). The configuration is not included.
    pub fn snapshot(&self, w: &mut impl Write) -> io::Result<()> {
        Self::write_pinned(&self.point(), w, |f| f(self))
    }

    /// Rebuilds a store from [`KvStore::snapshot`] output, with the default
    /// configuration (see [`KvStore::set_config`]). Reads exactly the
    /// snapshot's bytes; pass a buffered reader for speed.
    pub fn restore(r: &mut impl Read) -> Result<KvStore, KvError> {
        Self::restore_with_config(r, KvConfig::default())
    }

    /// Like [`KvStore::restore`] with the given configuration.
    pub fn restore_with_config(r: &mut impl Read, config: KvConfig) -> Result<KvStore, KvError> {
        Self::restore_with(r, config, ColdStore::memory())
    }

    /// Like [`KvStore::restore`] with the given configuration, keeping superseded values
    /// in `cold` (which should be empty).
    pub fn restore_with(
        r: &mut impl Read,
        config: KvConfig,
        mut cold: ColdStore,
    ) -> Result<KvStore, KvError> {
        let mut head = [0u8; 12];
        read_exact(r, &mut head)?;
        if &head[..8] != MAGIC {
            return Err(KvError::corrupt("bad magic (not a kv snapshot)"));
        }
        let format = u32::from_le_bytes([head[8], head[9], head[10], head[11]]);
        if ![FORMAT, FORMAT_INLINE, FORMAT_COUNTED].contains(&format) {
            return Err(KvError::corrupt(format!("unsupported format version {format}")));
        }
        let mut cr = CrcReader { inner: r, crc: 0 };
        let parsed = parse_body(&mut cr, format, &mut cold);
        let body_crc = cr.crc;
        let (rev, compacted, map, cold_live) = parsed?;
        let mut tail = [0u8; 4];
        read_exact(cr.inner, &mut tail)?;
        let want = u32::from_le_bytes(tail);
        if want != body_crc {
            return Err(KvError::corrupt(format!(
                "checksum mismatch (stored {want:#010x}, computed {body_crc:#010x})"
            )));
        }
        Ok(KvStore {
            map,
            cold,
            cold_live,
            rev,
            compacted,
            config,
            pins: 0,
            compaction_deferred: false,
            changes: None,
            leases: Default::default(),
        })
    }

    /// Pins the state for [`KvStore::digest_pinned`] at `revision` (0: the current one), as
    /// [`KvStore::pin`] does; end with [`KvStore::unpin`]. Fails, pinning nothing, for a
    /// compacted or a future revision.
    pub fn pin_at(&mut self, revision: i64) -> Result<SnapshotPoint, KvError> {
        let rev = if revision <= 0 { self.rev } else { revision };
        if rev > self.rev {
            return Err(KvError::FutureRev);
        }
        if rev < self.compacted {
            return Err(KvError::Compacted);
        }
        self.pins += 1;
        Ok(SnapshotPoint { rev, ..self.point() })
    }

    /// [`KvStore::digest`] of the state as it was at `point`'s revision, visiting the store
    /// in batches as [`KvStore::write_pinned`] does: replicas at the same revision agree.
    pub fn digest_pinned(
        point: &SnapshotPoint,
        mut visit: impl FnMut(&mut dyn FnMut(&KvStore)),
    ) -> io::Result<u32> {
        let mut cw = CrcWriter { inner: io::sink(), crc: 0 };
        Self::write_body(point, &mut cw, &mut visit, BodyKind::Inline)?;
        Ok(cw.crc)
    }

    /// CRC32C of the canonical encoding of the full MVCC state: equal on
    /// replicas that applied the same commands.
    pub fn digest(&self) -> u32 {
        let mut cw = CrcWriter { inner: io::sink(), crc: 0 };
        // Writing to a sink cannot fail; lengths above u32 (impossible for keys and values
        // accepted over gRPC) or a failed read of the cold store end the digest early.
        let _ = Self::write_body(&self.point(), &mut cw, &mut |f| f(self), BodyKind::Inline);
        cw.crc
    }
}

fn read_exact(r: &mut impl Read, buf: &mut [u8]) -> Result<(), KvError> {
    r.read_exact(buf).map_err(|e| {
        if e.kind() == io::ErrorKind::UnexpectedEof {
            KvError::corrupt("truncated")
        } else {
            KvError::corrupt(format!("read error: {e}"))
        }
    })
}

fn read_i64(r: &mut impl Read) -> Result<i64, KvError> {
    let mut b = [0u8; 8];
    read_exact(r, &mut b)?;
    Ok(i64::from_le_bytes(b))
}

fn read_u64(r: &mut impl Read) -> Result<u64, KvError> {
    let mut b = [0u8; 8];
    read_exact(r, &mut b)?;
    Ok(u64::from_le_bytes(b))
}

fn read_u32(r: &mut impl Read) -> Result<u32, KvError> {
    let mut b = [0u8; 4];
    read_exact(r, &mut b)?;
    Ok(u32::from_le_bytes(b))
}

/// An unsigned LEB128 varint of at most 10 bytes.
fn read_varint(r: &mut impl Read) -> Result<u64, KvError> {
    let mut v = 0u64;
    for i in 0..10 {
        let mut b = [0u8; 1];
        read_exact(r, &mut b)?;
        let bits = u64::from(b[0] & 0x7f);
        if i == 9 && b[0] > 1 {
            break;
        }
        v |= bits << (7 * i);
        if b[0] & 0x80 == 0 {
            return Ok(v);
        }
    }
    Err(KvError::corrupt("varint too long"))
}

/// `prev + delta` for a zigzag-encoded difference read from `r`.
fn read_delta(r: &mut impl Read, prev: i64) -> Result<i64, KvError> {
    prev.checked_add(unzigzag(read_varint(r)?)).ok_or_else(|| KvError::corrupt("value out of range"))
}

/// Reads `len` bytes, growing the buffer only as data arrives.
fn read_bytes(r: &mut impl Read, len: u32) -> Result<Bytes, KvError> {
    let len = len as usize;
    let mut v = Vec::with_capacity(len.min(CHUNK));
    while v.len() < len {
        let start = v.len();
        let step = (len - start).min(CHUNK);
        v.resize(start + step, 0);
        read_exact(r, &mut v[start..])?;
    }
    Ok(Bytes::from(v))
}

/// Revision, compacted revision, keys, bytes in the cold store.
fn vlen_checked(value: &[u8]) -> Result<u32, KvError> {
    u32::try_from(value.len()).map_err(|_| KvError::corrupt("value too long"))
}

type Body = (i64, i64, KeyIndex, u64);

fn parse_body(r: &mut impl Read, format: u32, cold: &mut ColdStore) -> Result<Body, KvError> {
    let counted = format == FORMAT_COUNTED;
    let with_cold = format == FORMAT;
    // Positions in the cold section become positions in `cold` (empty, normally).
    let base = cold.appended_bytes();
    let mut cold_end = 0u64;
    let rev = read_i64(r)?;
    let compacted = read_i64(r)?;
    if rev < 1 || compacted < -1 || compacted > rev {
        return Err(KvError::corrupt(format!("invalid revisions {rev}/{compacted}")));
    }
    let keys = if counted {
        let mut kb = [0u8; 8];
        read_exact(r, &mut kb)?;
        u64::from_le_bytes(kb)
    } else {
        u64::MAX
    };
    let mut map = KeyIndex::new();
    let mut cold_live = 0u64;
    let mut last_key: Option<Key> = None;
    for _ in 0..keys {
        let klen = read_u32(r)?;
        if !counted && klen == END_OF_KEYS {
            break;
        }
        let key = Key::from_slice(&read_bytes(r, klen)?);
        if key.is_empty() || last_key.as_ref().is_some_and(|l| *l >= key) {
            return Err(KvError::corrupt("keys empty or out of order"));
        }
        let n = read_u32(r)?;
        if n == 0 {
            return Err(KvError::corrupt("key without versions"));
        }
        let mut h = KeyHistory { revs: Vec::with_capacity((n as usize).min(16)), latest: Bytes::new() };
        let mut prev_pos = 0i64;
        for j in 0..n {
            if with_cold {
                let (main, create, version) =
                    h.revs.last().map_or((0, 0, 0), |p| (p.main, p.create, p.version));
                let main = i64::try_from(read_varint(r)?)
                    .ok()
                    .and_then(|d| main.checked_add(d))
                    .ok_or_else(|| KvError::corrupt("revision out of range"))?;
                let sub =
                    u32::try_from(read_varint(r)?).map_err(|_| KvError::corrupt("invalid sub-revision"))?;
                let create = read_delta(r, create)?;
                let version = read_delta(r, version)?;
                let vlen = u32::try_from(read_varint(r)?).map_err(|_| KvError::corrupt("value too long"))?;
                let ordered = h.revs.last().is_none_or(|p| (p.main, p.sub) < (main, sub));
                if !ordered || main < 1 || main > rev || version < 0 || create > main {
                    return Err(KvError::corrupt("invalid version record"));
                }
                if j + 1 == n {
                    h.latest = read_bytes(r, vlen)?;
                    h.revs.push(Rev { main, sub, create, version, vlen, pos: 0 });
                } else {
                    prev_pos = read_delta(r, prev_pos)?;
                    let pos = u64::try_from(prev_pos).map_err(|_| KvError::corrupt("value position"))?;
                    let end =
                        pos.checked_add(u64::from(vlen)).ok_or_else(|| KvError::corrupt("value position"))?;
                    cold_end = cold_end.max(end);
                    cold_live += u64::from(vlen);
                    h.revs.push(Rev { main, sub, create, version, vlen, pos: base + pos });
                }
                continue;
            }
            let main = read_i64(r)?;
            let sub = read_i64(r)?;
            let create = read_i64(r)?;
            let version = read_i64(r)?;
            let lease = read_i64(r)?;
            let vlen = read_u32(r)?;
            let value = read_bytes(r, vlen)?;
            let ordered = h.revs.last().is_none_or(|p| (p.main, i64::from(p.sub)) < (main, sub));
            if !ordered || main < 1 || main > rev || version < 0 || create > main {
                return Err(KvError::corrupt("invalid version record"));
            }
            let Ok(sub) = u32::try_from(sub) else {
                return Err(KvError::corrupt("invalid sub-revision"));
            };
            if lease != 0 {
                return Err(KvError::corrupt("a version with a lease (leases are not supported)"));
            }
            let r = Rev { main, sub, create, version, vlen: vlen_checked(&value)?, pos: 0 };
            h.push(cold, &mut cold_live, r, value);
        }
        h.revs.shrink_to_fit();
        last_key = Some(key.clone());
        map.insert(key, h);
    }
    if with_cold {
        let len = read_u64(r)?;
        if cold_end > len {
            return Err(KvError::corrupt(format!(
                "a value at {cold_end} is past the cold section ({len} bytes)"
            )));
        }
        // Streamed into the store as it arrives: nothing is allocated ahead of the input.
        let mut buf = vec![0u8; CHUNK];
        let mut left = len;
        while left > 0 {
            let n = left.min(CHUNK as u64) as usize;
            read_exact(r, &mut buf[..n])?;
            cold.append(&buf[..n]);
            left -= n as u64;
        }
    }
    Ok((rev, compacted, map, cold_live))
}
