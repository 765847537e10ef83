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
