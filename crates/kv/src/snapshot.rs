//! Snapshot format (all integers little-endian):
//!
//! ```text
//! magic   "RAFTKVS\0"                      8 bytes
//! format  u32 = 1
//! body:
//!   revision i64, compact_revision i64, key_count u64
//!   per key (ascending): key_len u32, key, entry_count u32,
//!     per entry (ascending): main i64, sub i64, create i64, version i64,
//!                            lease i64, value_len u32, value
//! crc     u32 = CRC32C of body
//! ```
//!
//! Restoring validates the checksum and the structure (sorted keys and
//! revisions, revisions within bounds) and never allocates more than the
//! input actually provides, whatever the length fields say.

use std::collections::BTreeMap;
use std::io::{self, Read, Write};

use bytes::Bytes;

use crate::KvError;
use crate::store::{Entry, KeyHistory, KvConfig, KvStore};

const MAGIC: &[u8; 8] = b"RAFTKVS\0";
const FORMAT: u32 = 1;
/// Largest chunk buffered ahead of data that has actually been read.
const CHUNK: usize = 64 * 1024;

struct CrcWriter<W> {
    inner: W,
    crc: u32,
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

struct CrcReader<R> {
    inner: R,
    crc: u32,
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

impl KvStore {
    fn write_body(&self, w: &mut impl Write) -> io::Result<()> {
        w.write_all(&self.rev.to_le_bytes())?;
        w.write_all(&self.compacted.to_le_bytes())?;
        w.write_all(&(self.map.len() as u64).to_le_bytes())?;
        for (k, h) in &self.map {
            w.write_all(&len_u32(k.len())?.to_le_bytes())?;
            w.write_all(k)?;
            w.write_all(&len_u32(h.entries.len())?.to_le_bytes())?;
            for e in &h.entries {
                let mut fixed = [0u8; 40];
                for (i, v) in [e.main, e.sub, e.create, e.version, e.lease].into_iter().enumerate() {
                    fixed[i * 8..i * 8 + 8].copy_from_slice(&v.to_le_bytes());
                }
                w.write_all(&fixed)?;
                w.write_all(&len_u32(e.value.len())?.to_le_bytes())?;
                w.write_all(&e.value)?;
            }
        }
        Ok(())
    }

    /// Writes the full MVCC state (every retained version, the current and
    /// compacted revision). The configuration is not included.
    pub fn snapshot(&self, w: &mut impl Write) -> io::Result<()> {
        let mut bw = io::BufWriter::with_capacity(CHUNK, w);
        bw.write_all(MAGIC)?;
        bw.write_all(&FORMAT.to_le_bytes())?;
        let mut cw = CrcWriter { inner: &mut bw, crc: 0 };
        self.write_body(&mut cw)?;
        let crc = cw.crc;
        bw.write_all(&crc.to_le_bytes())?;
        bw.flush()
    }

    /// Rebuilds a store from [`KvStore::snapshot`] output, with the default
    /// configuration (see [`KvStore::set_config`]). Reads exactly the
    /// snapshot's bytes; pass a buffered reader for speed.
    pub fn restore(r: &mut impl Read) -> Result<KvStore, KvError> {
        Self::restore_with_config(r, KvConfig::default())
    }

    /// Like [`KvStore::restore`] with the given configuration.
    pub fn restore_with_config(r: &mut impl Read, config: KvConfig) -> Result<KvStore, KvError> {
        let mut head = [0u8; 12];
        read_exact(r, &mut head)?;
        if &head[..8] != MAGIC {
            return Err(KvError::corrupt("bad magic (not a kv snapshot)"));
        }
        let format = u32::from_le_bytes([head[8], head[9], head[10], head[11]]);
        if format != FORMAT {
            return Err(KvError::corrupt(format!("unsupported format version {format}")));
        }
        let mut cr = CrcReader { inner: r, crc: 0 };
        let parsed = parse_body(&mut cr);
        let body_crc = cr.crc;
        let (rev, compacted, map) = parsed?;
        let mut tail = [0u8; 4];
        read_exact(cr.inner, &mut tail)?;
        let want = u32::from_le_bytes(tail);
        if want != body_crc {
            return Err(KvError::corrupt(format!(
                "checksum mismatch (stored {want:#010x}, computed {body_crc:#010x})"
            )));
        }
        Ok(KvStore { map, rev, compacted, config })
    }

    /// CRC32C of the canonical encoding of the full MVCC state: equal on
    /// replicas that applied the same commands.
    pub fn digest(&self) -> u32 {
        let mut cw = CrcWriter { inner: io::sink(), crc: 0 };
        // Writing to a sink cannot fail; lengths above u32 (impossible for
        // keys and values accepted over gRPC) would end the digest early.
        let _ = self.write_body(&mut cw);
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

fn read_u32(r: &mut impl Read) -> Result<u32, KvError> {
    let mut b = [0u8; 4];
    read_exact(r, &mut b)?;
    Ok(u32::from_le_bytes(b))
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

type Body = (i64, i64, BTreeMap<Bytes, KeyHistory>);

fn parse_body(r: &mut impl Read) -> Result<Body, KvError> {
    let rev = read_i64(r)?;
    let compacted = read_i64(r)?;
    if rev < 1 || compacted < -1 || compacted > rev {
        return Err(KvError::corrupt(format!("invalid revisions {rev}/{compacted}")));
    }
    let mut kb = [0u8; 8];
    read_exact(r, &mut kb)?;
    let keys = u64::from_le_bytes(kb);
    let mut map = BTreeMap::new();
    let mut last_key: Option<Bytes> = None;
    for _ in 0..keys {
        let klen = read_u32(r)?;
        let key = read_bytes(r, klen)?;
        if key.is_empty() || last_key.as_ref().is_some_and(|l| *l >= key) {
            return Err(KvError::corrupt("keys empty or out of order"));
        }
        let n = read_u32(r)?;
        if n == 0 {
            return Err(KvError::corrupt("key without versions"));
        }
        let mut entries: Vec<Entry> = Vec::with_capacity((n as usize).min(16));
        for _ in 0..n {
            let main = read_i64(r)?;
            let sub = read_i64(r)?;
            let create = read_i64(r)?;
            let version = read_i64(r)?;
            let lease = read_i64(r)?;
            let vlen = read_u32(r)?;
            let value = read_bytes(r, vlen)?;
            let ordered = entries.last().is_none_or(|p| (p.main, p.sub) < (main, sub));
            if !ordered || main < 1 || main > rev || sub < 0 || version < 0 || create > main {
                return Err(KvError::corrupt("invalid version record"));
            }
            entries.push(Entry { main, sub, create, version, lease, value });
        }
        last_key = Some(key.clone());
        map.insert(key, KeyHistory { entries });
    }
    Ok((rev, compacted, map))
}
