//! Where snapshot bodies come from (sender side) and go to (receiver side).
//!
//! Both sides are trait objects so the server can back them with files in its data
//! directory; [`MemorySnapshotSource`] and [`MemorySinkFactory`] are in-memory versions for
//! tests and small deployments. All methods are called on tokio's blocking thread pool,
//! so implementations may do ordinary blocking file I/O.

use std::io::{self, Read};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use raftkv_raft::{NodeId, SnapshotMeta};

/// The body of a snapshot to send, read sequentially in chunks.
pub trait SnapshotSource: Send + 'static {
    /// Total bytes of the body. The transfer fails if the source yields fewer.
    fn total_len(&self) -> u64;

    /// Fills all of `buf` with the next bytes of the body (like [`Read::read_exact`]).
    fn read_chunk(&mut self, buf: &mut [u8]) -> io::Result<()>;
}

/// A body held in memory.
#[derive(Clone, Debug)]
pub struct MemorySnapshotSource {
    data: Bytes,
    pos: usize,
}

impl MemorySnapshotSource {
    pub fn new(data: impl Into<Bytes>) -> MemorySnapshotSource {
        MemorySnapshotSource { data: data.into(), pos: 0 }
    }
}

impl SnapshotSource for MemorySnapshotSource {
    fn total_len(&self) -> u64 {
        self.data.len() as u64
    }

    fn read_chunk(&mut self, buf: &mut [u8]) -> io::Result<()> {
        let end = self.pos.checked_add(buf.len()).filter(|&e| e <= self.data.len());
        let Some(end) = end else {
            return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "snapshot source exhausted"));
        };
        buf.copy_from_slice(&self.data[self.pos..end]);
        self.pos = end;
        Ok(())
    }
}

/// Any [`Read`] (for example an open snapshot file) with a known length.
pub struct ReaderSnapshotSource<R> {
    reader: R,
    len: u64,
}

impl<R: Read + Send + 'static> ReaderSnapshotSource<R> {
    pub fn new(reader: R, len: u64) -> ReaderSnapshotSource<R> {
        ReaderSnapshotSource { reader, len }
    }
}

impl<R: Read + Send + 'static> SnapshotSource for ReaderSnapshotSource<R> {
    fn total_len(&self) -> u64 {
        self.len
    }

    fn read_chunk(&mut self, buf: &mut [u8]) -> io::Result<()> {
        self.reader.read_exact(buf)
    }
}

/// Where a verified snapshot body was staged by its [`SnapshotSink`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StagedBody {
    /// Held in memory ([`MemorySinkFactory`]).
    Memory(Bytes),
    /// Written to this file (a server sink in its data directory).
    File(PathBuf),
}

/// A received snapshot body: complete, every chunk's CRC and the whole body's CRC checked.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StagedSnapshot {
    /// Length of the body in bytes.
    pub len: u64,
    /// CRC32C of the whole body, as verified.
    pub crc32c: u32,
    pub body: StagedBody,
}

/// Makes a [`SnapshotSink`] for each incoming transfer.
pub trait SnapshotSinkFactory: Send + Sync + 'static {
    /// A peer starts sending a body of `total_len` bytes for the snapshot `meta`.
    fn create(&self, from: NodeId, meta: &SnapshotMeta, total_len: u64) -> io::Result<Box<dyn SnapshotSink>>;
}

/// Receives one snapshot body. Chunks arrive in order and contiguous, each already checked
/// against its CRC. Dropping a sink without [`SnapshotSink::finish`] means the transfer
/// failed: the implementation should discard what it wrote (e.g. delete its temp file).
pub trait SnapshotSink: Send {
    /// Writes `data`, which starts at byte `offset` of the body.
    fn write_chunk(&mut self, offset: u64, data: &[u8]) -> io::Result<()>;

    /// The whole body arrived and its CRC matched: make it durable and say where it is.
    fn finish(self: Box<Self>) -> io::Result<StagedBody>;
}

/// Stages bodies in memory, refusing any larger than `max_bytes`.
#[derive(Clone, Debug)]
pub struct MemorySinkFactory {
    max_bytes: u64,
    created: Arc<Mutex<u64>>,
}

impl MemorySinkFactory {
    pub fn new(max_bytes: u64) -> MemorySinkFactory {
        MemorySinkFactory { max_bytes, created: Arc::new(Mutex::new(0)) }
    }

    /// How many sinks this factory (and its clones) created.
    pub fn created(&self) -> u64 {
        self.created.lock().map(|g| *g).unwrap_or(0)
    }
}

impl SnapshotSinkFactory for MemorySinkFactory {
    fn create(
        &self,
        _from: NodeId,
        _meta: &SnapshotMeta,
        total_len: u64,
    ) -> io::Result<Box<dyn SnapshotSink>> {
        if total_len > self.max_bytes {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("snapshot of {total_len} bytes exceeds the in-memory limit of {}", self.max_bytes),
            ));
        }
        if let Ok(mut g) = self.created.lock() {
            *g += 1;
        }
        // The length is verified before this point, but allocate only as data arrives.
        Ok(Box::new(MemorySink { data: Vec::new(), max: total_len }))
    }
}

struct MemorySink {
    data: Vec<u8>,
    max: u64,
}

impl SnapshotSink for MemorySink {
    fn write_chunk(&mut self, offset: u64, data: &[u8]) -> io::Result<()> {
        if offset != self.data.len() as u64 || offset + data.len() as u64 > self.max {
            return Err(io::Error::new(io::ErrorKind::InvalidInput, "chunk out of place"));
        }
        self.data.extend_from_slice(data);
        Ok(())
    }

    fn finish(self: Box<Self>) -> io::Result<StagedBody> {
        Ok(StagedBody::Memory(Bytes::from(self.data)))
    }
}

/// Why a snapshot stream's body was refused by [`BodyReceiver`].
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum BodyError {
    #[error("chunk at offset {got} where {expected} was expected")]
    Gap { expected: u64, got: u64 },
    #[error("chunk of {len} bytes at {offset} does not fit a body of {total}")]
    DoesNotFit { len: u64, offset: u64, total: u64 },
    #[error("CRC mismatch in chunk at offset {offset}: computed {computed:#010x}, sent {sent:#010x}")]
    ChunkCrc { offset: u64, computed: u32, sent: u32 },
    #[error("transfer ended at {offset} of {total} bytes (trailer says {trailer})")]
    Truncated { offset: u64, total: u64, trailer: u64 },
    #[error("whole-body CRC mismatch: computed {computed:#010x}, sent {sent:#010x}")]
    BodyCrc { computed: u32, sent: u32 },
}

/// The receiving side of one snapshot stream without the I/O: checks each chunk (in order,
/// fits the announced length, its own CRC32C) and the trailer (length and the whole body's
/// CRC32C). The transport runs it on its socket; the simulator runs it on its simulated
/// network, so both verify a body with the same code.
#[derive(Clone, Debug)]
pub struct BodyReceiver {
    total: u64,
    offset: u64,
    crc: u32,
}

impl BodyReceiver {
    /// A stream whose `SnapshotBegin` announced `total_len` body bytes.
    pub fn new(total_len: u64) -> BodyReceiver {
        BodyReceiver { total: total_len, offset: 0, crc: 0 }
    }

    /// The announced body length.
    pub fn total_len(&self) -> u64 {
        self.total
    }

    /// Bytes received and verified so far (the offset the next chunk must have).
    pub fn offset(&self) -> u64 {
        self.offset
    }

    /// Checks the next chunk. On `Ok` its data is the body at `chunk.offset`, to be staged.
    pub fn chunk(&mut self, chunk: &crate::codec::SnapshotChunk) -> Result<(), BodyError> {
        let len = chunk.data.len() as u64;
        if chunk.offset != self.offset {
            return Err(BodyError::Gap { expected: self.offset, got: chunk.offset });
        }
        if len == 0 || self.offset + len > self.total {
            return Err(BodyError::DoesNotFit { len, offset: self.offset, total: self.total });
        }
        let computed = crc32c::crc32c(&chunk.data);
        if computed != chunk.crc32c {
            return Err(BodyError::ChunkCrc { offset: self.offset, computed, sent: chunk.crc32c });
        }
        self.crc = crc32c::crc32c_append(self.crc, &chunk.data);
        self.offset += len;
        Ok(())
    }

    /// Checks the trailer: the whole body arrived and its CRC32C matches. Returns that CRC.
    pub fn end(&self, end: &crate::codec::SnapshotEnd) -> Result<u32, BodyError> {
        if end.total_len != self.total || self.offset != self.total {
            return Err(BodyError::Truncated {
                offset: self.offset,
                total: self.total,
                trailer: end.total_len,
            });
        }
        if end.crc32c != self.crc {
            return Err(BodyError::BodyCrc { computed: self.crc, sent: end.crc32c });
        }
        Ok(self.crc)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod body_receiver_tests {
    use bytes::Bytes;

    use super::*;
    use crate::codec::{SnapshotChunk, SnapshotEnd};

    fn chunk(offset: u64, data: &'static [u8]) -> SnapshotChunk {
        SnapshotChunk { offset, data: Bytes::from_static(data), crc32c: crc32c::crc32c(data) }
    }

    #[test]
    fn accepts_a_whole_body_and_refuses_each_kind_of_damage() {
        let body_crc = crc32c::crc32c(b"hello world");
        let mut r = BodyReceiver::new(11);
        r.chunk(&chunk(0, b"hello ")).unwrap();
        r.chunk(&chunk(6, b"world")).unwrap();
        assert_eq!(r.end(&SnapshotEnd { total_len: 11, crc32c: body_crc }), Ok(body_crc));

        let mut r = BodyReceiver::new(11);
        assert!(matches!(r.chunk(&chunk(6, b"world")), Err(BodyError::Gap { expected: 0, got: 6 })));
        assert!(matches!(r.chunk(&chunk(0, b"hello world!")), Err(BodyError::DoesNotFit { .. })));
        let mut bad = chunk(0, b"hello ");
        bad.crc32c ^= 1;
        assert!(matches!(r.chunk(&bad), Err(BodyError::ChunkCrc { .. })));
        r.chunk(&chunk(0, b"hello ")).unwrap();
        assert!(matches!(
            r.end(&SnapshotEnd { total_len: 11, crc32c: body_crc }),
            Err(BodyError::Truncated { .. })
        ));
        r.chunk(&chunk(6, b"World")).unwrap();
        assert!(matches!(
            r.end(&SnapshotEnd { total_len: 11, crc32c: body_crc }),
            Err(BodyError::BodyCrc { .. })
        ));
    }
}
