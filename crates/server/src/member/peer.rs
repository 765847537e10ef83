//! Glue between the driver and the peer transport: sending, snapshot streams staged in files
//! in the data dir, and inbound traffic.

use std::fs::File;
use std::io::{self, BufReader, Read, Write};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll, ready};

use raftkv_raft::{Message, NodeId, SnapshotMeta};
use raftkv_transport::{
    Inbound as TransportInbound, ReaderSnapshotSource, Report, SnapshotSink, SnapshotSinkFactory, StagedBody,
    TransportHandle,
};
use tokio::sync::mpsc;

use crate::node::{Inbound, Network, PeerSource};

/// Sends through the transport; failures to start a snapshot transfer go back to the driver.
pub struct PeerNetwork {
    pub transport: TransportHandle,
    pub driver: OnceLock<mpsc::Sender<Inbound>>,
}

impl Network for PeerNetwork {
    fn send(&self, msg: Message) {
        // Raft tolerates loss; the transport counts drops and reports unreachable peers.
        let _ = self.transport.send(msg);
    }

    fn send_snapshot(&self, msg: Message, reader: Box<dyn Read + Send>, len: u64) {
        let to = msg.to;
        let source = Box::new(ReaderSnapshotSource::new(BufReader::with_capacity(1 << 20, reader), len));
        if let Err(e) = self.transport.send_snapshot(msg, source) {
            tracing::debug!(to = to.0, error = %e, "snapshot transfer not started");
            if let Some(driver) = self.driver.get() {
                let _ = driver.try_send(Inbound::SnapshotReport { to, ok: false });
            }
        }
    }
}

/// Stages incoming snapshots as files in `dir` (removed when a transfer fails).
pub struct FileSinkFactory {
    pub dir: PathBuf,
    next: AtomicU64,
}

impl FileSinkFactory {
    pub fn new(dir: PathBuf) -> io::Result<FileSinkFactory> {
        std::fs::create_dir_all(&dir)?;
        // Leftovers of transfers interrupted by a crash.
        for entry in std::fs::read_dir(&dir)? {
            let _ = std::fs::remove_file(entry?.path());
        }
        Ok(FileSinkFactory { dir, next: AtomicU64::new(1) })
    }
}

struct FileSink {
    path: PathBuf,
    file: Option<File>,
}

impl SnapshotSinkFactory for FileSinkFactory {
    fn create(
        &self,
        from: NodeId,
        meta: &SnapshotMeta,
        _total_len: u64,
    ) -> io::Result<Box<dyn SnapshotSink>> {
        let n = self.next.fetch_add(1, Ordering::Relaxed);
        let path = self.dir.join(format!("recv-{}-{}-{}-{n}.tmp", from.0, meta.term.0, meta.index.0));
        let file = File::create(&path)?;
        Ok(Box::new(FileSink { path, file: Some(file) }))
    }
}

impl SnapshotSink for FileSink {
    fn write_chunk(&mut self, _offset: u64, data: &[u8]) -> io::Result<()> {
        match &mut self.file {
            Some(f) => f.write_all(data),
            None => Err(io::Error::other("sink already finished")),
        }
    }

    fn finish(mut self: Box<Self>) -> io::Result<StagedBody> {
        if let Some(f) = self.file.take() {
            f.sync_all()?;
        }
        Ok(StagedBody::File(std::mem::take(&mut self.path)))
    }
}

impl Drop for FileSink {
    fn drop(&mut self) {
        if self.file.is_some() && !self.path.as_os_str().is_empty() {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

/// A staged snapshot file, removed once read.
struct StagedFile {
    path: PathBuf,
    file: BufReader<File>,
}

impl io::Read for StagedFile {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.file.read(buf)
    }
}

impl Drop for StagedFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// Transport traffic and reports as the driver sees them (polled by the driver itself).
pub struct TransportSource {
    pub inbound: mpsc::Receiver<TransportInbound>,
    pub reports: mpsc::Receiver<Report>,
    /// Where refusals by peers go (`(peer, removed)`, see [`Report::RefusedBy`]): the
    /// membership watcher decides whether this member must stop.
    pub refusals: mpsc::Sender<(NodeId, bool)>,
}

impl PeerSource for TransportSource {
    fn poll_recv(&mut self, cx: &mut Context<'_>) -> Poll<Option<Inbound>> {
        while let Poll::Ready(Some(r)) = self.reports.poll_recv(cx) {
            return Poll::Ready(Some(match r {
                Report::Unreachable(id) => Inbound::Unreachable(id),
                Report::Snapshot { to, ok } => Inbound::SnapshotReport { to, ok },
                Report::RefusedBy { by, removed } => {
                    // Not for the driver; a full queue already holds the news.
                    let _ = self.refusals.try_send((by, removed));
                    continue;
                }
            }));
        }
        loop {
            return match ready!(self.inbound.poll_recv(cx)) {
                None => Poll::Ready(None),
                Some(TransportInbound::Message(m)) => Poll::Ready(Some(Inbound::Message(m))),
                Some(TransportInbound::Snapshot { message, staged }) => {
                    let data: crate::node::StagedSnapshot = match staged.body {
                        StagedBody::Memory(bytes) => Box::new(io::Cursor::new(bytes)),
                        StagedBody::File(path) => match File::open(&path) {
                            Ok(f) => {
                                Box::new(StagedFile { path, file: BufReader::with_capacity(1 << 20, f) })
                            }
                            Err(e) => {
                                tracing::warn!(path = %path.display(), error = %e, "staged snapshot vanished");
                                continue;
                            }
                        },
                    };
                    Poll::Ready(Some(Inbound::Snapshot { message, data }))
                }
            };
        }
    }
}

pub fn network(transport: TransportHandle) -> Arc<PeerNetwork> {
    Arc::new(PeerNetwork { transport, driver: OnceLock::new() })
}
