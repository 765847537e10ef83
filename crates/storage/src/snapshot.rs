//! Snapshot files: written under a temporary name, fsynced, renamed into
//! place; the newest complete snapshot is kept, older ones are removed only
//! after the new one is durable.
//!
//! File `snap-<term:020>-<index:020>.snap` (little endian):
//!
//! ```text
//! header: magic b"RKVSNAP\0" (8), version u32, header_len u32,
//!         cluster_id u64, node_id u64, index u64, term u64,
//!         config_len u32, config [config_len], crc32c u32 (over the header)
//! body:   the caller's bytes
//! trailer (16): body_len u64, body crc32c u32, b"SEND"
//! ```

use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use bytes::Bytes;
use parking_lot::Mutex;

use crate::error::{Result, StorageError};
use crate::fs::{FileSystem, FsFile, read_exact_at};
use crate::record::{SNAPSHOT_FORMAT_VERSION, SNAPSHOT_MAGIC, u32_at, u64_at};
use crate::{NodeIds, SnapshotMeta};

const FIXED_HEADER: usize = 52;
const TRAILER_LEN: usize = 16;
const TRAILER_MAGIC: [u8; 4] = *b"SEND";
const MAX_CONFIG: u32 = 64 << 20;
const CHUNK: usize = 1 << 20;

fn snap_name(term: u64, index: u64, ext: &str) -> String {
    format!("snap-{term:020}-{index:020}.{ext}")
}

/// Parse `snap-<term>-<index>.<ext>` into (term, index, ext).
fn parse_snap_name(name: &str) -> Option<(u64, u64, &str)> {
    let rest = name.strip_prefix("snap-")?;
    let (stem, ext) = rest.split_once('.')?;
    let (t, i) = stem.split_once('-')?;
    Some((t.parse().ok()?, i.parse().ok()?, ext))
}

/// Directory of snapshot files.
#[derive(Debug, Clone)]
pub struct SnapshotStore {
    fs: Arc<dyn FileSystem>,
    dir: PathBuf,
    ids: NodeIds,
    poisoned: Arc<Mutex<Option<String>>>,
}

/// Streams a new snapshot into a temporary file. Nothing is visible until
/// [`SnapshotWriter::finish`] returns `Ok`; dropping the writer leaves a
/// `.tmp` file that the next `open` removes.
pub struct SnapshotWriter {
    store: SnapshotStore,
    meta: SnapshotMeta,
    tmp_path: PathBuf,
    final_path: PathBuf,
    file: Box<dyn FsFile>,
    off: u64,
    body_len: u64,
    crc: u32,
    buf: Vec<u8>,
}

/// Reads the body of a verified snapshot.
pub struct SnapshotReader {
    file: Box<dyn FsFile>,
    path: PathBuf,
    pos: u64,
    end: u64,
    /// The body's checksum from the trailer, and the checksum of what was read so far: the
    /// body was verified when the snapshot was opened, but a disk can return other bytes on
    /// the second read, so the read that reaches the end checks them again.
    body_crc: u32,
    crc: u32,
}

impl SnapshotStore {
    /// Create the snapshot directory (for a brand-new member).
    pub fn create(fs: Arc<dyn FileSystem>, dir: &Path, ids: NodeIds) -> Result<SnapshotStore> {
        fs.create_dir_all(dir).map_err(|e| StorageError::io("create directory", dir, e))?;
        if let Some(parent) = dir.parent().filter(|p| !p.as_os_str().is_empty()) {
            fs.sync_dir(parent)
                .map_err(|e| StorageError::FsyncFailed { path: parent.to_path_buf(), source: e })?;
        }
        Self::open(fs, dir, ids)
    }

    /// Open an existing snapshot directory; removes leftover `.tmp` files.
    pub fn open(fs: Arc<dyn FileSystem>, dir: &Path, ids: NodeIds) -> Result<SnapshotStore> {
        let names = fs.list_dir(dir).map_err(|e| {
            if e.kind() == io::ErrorKind::NotFound {
                StorageError::NotInitialized { path: dir.to_path_buf() }
            } else {
                StorageError::io("list directory", dir, e)
            }
        })?;
        let mut removed = false;
        for name in names {
            if matches!(parse_snap_name(&name), Some((_, _, "tmp"))) {
                let p = dir.join(&name);
                tracing::info!(path = %p.display(), "removing incomplete snapshot");
                fs.remove(&p).map_err(|e| StorageError::io("remove", &p, e))?;
                removed = true;
            }
        }
        if removed {
            fs.sync_dir(dir).map_err(|e| StorageError::FsyncFailed { path: dir.to_path_buf(), source: e })?;
        }
        Ok(SnapshotStore { fs, dir: dir.to_path_buf(), ids, poisoned: Arc::new(Mutex::new(None)) })
    }

    fn check(&self) -> Result<()> {
        match &*self.poisoned.lock() {
            Some(c) => Err(StorageError::Poisoned { cause: c.clone() }),
            None => Ok(()),
        }
    }

    fn fatal(&self, e: StorageError) -> StorageError {
        let mut p = self.poisoned.lock();
        if p.is_none() {
            *p = Some(e.to_string());
        }
        e
    }

    /// Start writing the snapshot described by `meta`.
    pub fn begin(&self, meta: SnapshotMeta) -> Result<SnapshotWriter> {
        self.check()?;
        if meta.config.len() > MAX_CONFIG as usize {
            return Err(StorageError::InvalidArgument("snapshot config too large".into()));
        }
        let tmp_path = self.dir.join(snap_name(meta.term, meta.index, "tmp"));
        let final_path = self.dir.join(snap_name(meta.term, meta.index, "snap"));
        // A leftover from an abandoned writer in this process.
        let _ = self.fs.remove(&tmp_path);
        let file = self.fs.create(&tmp_path).map_err(|e| StorageError::io("create", &tmp_path, e))?;
        let mut buf = Vec::with_capacity(CHUNK);
        buf.extend_from_slice(&SNAPSHOT_MAGIC);
        buf.extend_from_slice(&SNAPSHOT_FORMAT_VERSION.to_le_bytes());
        let header_len = (FIXED_HEADER + meta.config.len() + 4) as u32;
        buf.extend_from_slice(&header_len.to_le_bytes());
        buf.extend_from_slice(&self.ids.cluster_id.to_le_bytes());
        buf.extend_from_slice(&self.ids.node_id.to_le_bytes());
        buf.extend_from_slice(&meta.index.to_le_bytes());
        buf.extend_from_slice(&meta.term.to_le_bytes());
        buf.extend_from_slice(&(meta.config.len() as u32).to_le_bytes());
        buf.extend_from_slice(&meta.config);
        let crc = crc32c::crc32c(&buf);
        buf.extend_from_slice(&crc.to_le_bytes());
        Ok(SnapshotWriter {
            store: self.clone(),
            meta,
            tmp_path,
            final_path,
            file,
            off: 0,
            body_len: 0,
            crc: 0,
            buf,
        })
    }

    fn list_complete(&self) -> Result<Vec<(u64, u64, PathBuf)>> {
        let names =
            self.fs.list_dir(&self.dir).map_err(|e| StorageError::io("list directory", &self.dir, e))?;
        let mut v: Vec<(u64, u64, PathBuf)> = names
            .iter()
            .filter_map(|n| match parse_snap_name(n) {
                Some((t, i, "snap")) => Some((i, t, self.dir.join(n))),
                _ => None,
            })
            .collect();
        v.sort();
        Ok(v)
    }

    /// The newest complete snapshot, verified (header, ids, body checksum),
    /// with a reader positioned at the start of its body.
    pub fn latest(&self) -> Result<Option<(SnapshotMeta, SnapshotReader)>> {
        self.check()?;
        let list = self.list_complete()?;
        let Some((index, term, path)) = list.last().cloned() else {
            return Ok(None);
        };
        let file = self.fs.open(&path).map_err(|e| StorageError::io("open", &path, e))?;
        let (meta, start, end, body_crc) = self.verify(file.as_ref(), &path)?;
        if meta.index != index || meta.term != term {
            return Err(StorageError::corrupt(
                &path,
                32,
                format!(
                    "header says index {} term {}, the file name says index {index} term {term}",
                    meta.index, meta.term
                ),
            ));
        }
        Ok(Some((meta, SnapshotReader { file, path, pos: start, end, body_crc, crc: 0 })))
    }

    /// Check a snapshot file; returns its meta, the body's byte range and its checksum.
    fn verify(&self, file: &dyn FsFile, path: &Path) -> Result<(SnapshotMeta, u64, u64, u32)> {
        let read_err = |e: io::Error| StorageError::io("read", path, e);
        let len = file.len().map_err(read_err)?;
        if len < (FIXED_HEADER + 4 + TRAILER_LEN) as u64 {
            if len >= 8 {
                let mut m = [0u8; 8];
                read_exact_at(file, &mut m, 0).map_err(read_err)?;
                if m != SNAPSHOT_MAGIC {
                    return Err(StorageError::BadMagic { path: path.to_path_buf(), what: "snapshot" });
                }
            }
            return Err(StorageError::corrupt(path, 0, format!("snapshot truncated to {len} bytes")));
        }
        let mut h = vec![0u8; FIXED_HEADER];
        read_exact_at(file, &mut h, 0).map_err(read_err)?;
        if h[0..8] != SNAPSHOT_MAGIC {
            return Err(StorageError::BadMagic { path: path.to_path_buf(), what: "snapshot" });
        }
        let version = u32_at(&h, 8);
        if version != SNAPSHOT_FORMAT_VERSION {
            return Err(StorageError::UnknownVersion {
                path: path.to_path_buf(),
                found: version,
                supported: SNAPSHOT_FORMAT_VERSION,
            });
        }
        let config_len = u32_at(&h, 48);
        let header_len = FIXED_HEADER as u64 + u64::from(config_len) + 4;
        if config_len > MAX_CONFIG
            || u64::from(u32_at(&h, 12)) != header_len
            || header_len + TRAILER_LEN as u64 > len
        {
            return Err(StorageError::corrupt(path, 12, "snapshot header length is invalid"));
        }
        let mut rest = vec![0u8; config_len as usize + 4];
        read_exact_at(file, &mut rest, FIXED_HEADER as u64).map_err(read_err)?;
        h.extend_from_slice(&rest);
        let hl = h.len();
        if crc32c::crc32c(&h[..hl - 4]) != u32_at(&h, hl - 4) {
            return Err(StorageError::corrupt(path, 0, "snapshot header checksum mismatch"));
        }
        let cluster = u64_at(&h, 16);
        let node = u64_at(&h, 24);
        if cluster != self.ids.cluster_id {
            return Err(StorageError::ClusterMismatch {
                path: path.to_path_buf(),
                expected: self.ids.cluster_id,
                found: cluster,
            });
        }
        if node != self.ids.node_id {
            return Err(StorageError::NodeMismatch {
                path: path.to_path_buf(),
                expected: self.ids.node_id,
                found: node,
            });
        }
        let meta = SnapshotMeta {
            index: u64_at(&h, 32),
            term: u64_at(&h, 40),
            config: Bytes::copy_from_slice(&h[FIXED_HEADER..FIXED_HEADER + config_len as usize]),
        };
        let mut t = [0u8; TRAILER_LEN];
        let trailer_off = len - TRAILER_LEN as u64;
        read_exact_at(file, &mut t, trailer_off).map_err(read_err)?;
        let body_len = u64_at(&t, 0);
        if t[12..16] != TRAILER_MAGIC || body_len != trailer_off - header_len {
            return Err(StorageError::corrupt(
                path,
                trailer_off,
                "snapshot trailer is missing or does not match the file length (truncated?)",
            ));
        }
        let mut crc = 0u32;
        let mut pos = header_len;
        let mut chunk = vec![0u8; CHUNK];
        while pos < trailer_off {
            let n = ((trailer_off - pos) as usize).min(CHUNK);
            read_exact_at(file, &mut chunk[..n], pos).map_err(read_err)?;
            crc = crc32c::crc32c_append(crc, &chunk[..n]);
            pos += n as u64;
        }
        if crc != u32_at(&t, 8) {
            return Err(StorageError::corrupt(path, header_len, "snapshot body checksum mismatch"));
        }
        Ok((meta, header_len, trailer_off, crc))
    }
}

impl SnapshotWriter {
    /// Append bytes to the snapshot body.
    pub fn write(&mut self, data: &[u8]) -> Result<()> {
        self.store.check()?;
        self.crc = crc32c::crc32c_append(self.crc, data);
        self.body_len += data.len() as u64;
        self.buf.extend_from_slice(data);
        if self.buf.len() >= CHUNK {
            self.flush()?;
        }
        Ok(())
    }

    fn flush(&mut self) -> Result<()> {
        if self.buf.is_empty() {
            return Ok(());
        }
        if let Err(e) = self.file.write_all_at(&self.buf, self.off) {
            return Err(self.store.fatal(StorageError::io("write", &self.tmp_path, e)));
        }
        self.off += self.buf.len() as u64;
        self.buf.clear();
        Ok(())
    }

    /// Make the snapshot durable and current: fsync the file, rename it
    /// into place, fsync the directory, then remove older snapshots (lower index).
    ///
    /// Two writers may race (a member's own snapshot and one received from the leader):
    /// the higher index always wins. If a complete snapshot with a higher index already
    /// exists, this one is discarded instead (`finish` still returns `Ok`; `latest` stays
    /// the newer one), and a newer snapshot that lands meanwhile is never removed here.
    pub fn finish(mut self) -> Result<SnapshotMeta> {
        self.store.check()?;
        self.buf.extend_from_slice(&self.body_len.to_le_bytes());
        self.buf.extend_from_slice(&self.crc.to_le_bytes());
        self.buf.extend_from_slice(&TRAILER_MAGIC);
        self.flush()?;
        let store = self.store.clone();
        let fs = store.fs.as_ref();
        let own = self.meta.index;
        if store.list_complete()?.iter().any(|(index, _, _)| *index > own) {
            if let Err(e) = fs.remove(&self.tmp_path) {
                return Err(store.fatal(StorageError::io("remove", &self.tmp_path, e)));
            }
            return Ok(self.meta);
        }
        if let Err(e) = self.file.sync_data() {
            return Err(store.fatal(StorageError::FsyncFailed { path: self.tmp_path.clone(), source: e }));
        }
        // Read again only to restore or to send it: it need not stay in the page cache.
        self.file.drop_cache(0, 0);
        if let Err(e) = fs.rename(&self.tmp_path, &self.final_path) {
            return Err(store.fatal(StorageError::io("rename", &self.tmp_path, e)));
        }
        if let Err(e) = fs.sync_dir(&store.dir) {
            return Err(store.fatal(StorageError::FsyncFailed { path: store.dir.clone(), source: e }));
        }
        // The new snapshot is durable: older ones may go.
        let mut removed = false;
        for (index, _, path) in store.list_complete()? {
            if index <= own && path != self.final_path {
                if let Err(e) = fs.remove(&path) {
                    return Err(store.fatal(StorageError::io("remove", &path, e)));
                }
                removed = true;
            }
        }
        if removed && let Err(e) = fs.sync_dir(&store.dir) {
            return Err(store.fatal(StorageError::FsyncFailed { path: store.dir.clone(), source: e }));
        }
        Ok(self.meta)
    }

    /// Abandon the snapshot and remove its temporary file.
    pub fn abort(self) -> Result<()> {
        self.store.fs.remove(&self.tmp_path).map_err(|e| StorageError::io("remove", &self.tmp_path, e))
    }
}

impl SnapshotReader {
    /// Bytes of body left to read.
    pub fn remaining(&self) -> u64 {
        self.end - self.pos
    }

    /// Read the rest of the body into memory.
    pub fn read_all(mut self) -> Result<Vec<u8>> {
        let mut v = vec![0u8; self.remaining() as usize];
        read_exact_at(self.file.as_ref(), &mut v, self.pos)
            .map_err(|e| StorageError::io("read", &self.path, e))?;
        let start = self.pos;
        self.advance(&v).map_err(|e| StorageError::corrupt(&self.path, start, e.to_string()))?;
        Ok(v)
    }

    /// Counts `got` as read; at the end of the body, checks what was read against the
    /// body's checksum.
    fn advance(&mut self, got: &[u8]) -> io::Result<()> {
        self.crc = crc32c::crc32c_append(self.crc, got);
        self.pos += got.len() as u64;
        if self.pos == self.end && self.crc != self.body_crc {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!(
                    "{}: snapshot body read back differs from its checksum (a bad read)",
                    self.path.display()
                ),
            ));
        }
        Ok(())
    }
}

impl io::Read for SnapshotReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = (buf.len() as u64).min(self.end - self.pos) as usize;
        if n == 0 {
            return Ok(0);
        }
        let got = self.file.read_at(&mut buf[..n], self.pos)?;
        self.advance(&buf[..got])?;
        Ok(got)
    }
}
