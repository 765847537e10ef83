//! Sends one large snapshot between two transports over loopback and reports time,
//! throughput and peak memory (`VmHWM`).
//!
//! ```sh
//! cargo run --release -p raftkv-transport --example snapshot_bench -- --size-mib 1024 [--dir DIR] [--keep]
//! ```
//!
//! The body is written to a source file first (not timed), streamed by node 1's transport
//! from that file in CRC32C-checked chunks to node 2, whose sink writes it to a temp file,
//! syncs and renames it into place on `finish`; the driver side then "installs" it by
//! reading the file back and checking its CRC32C against the source's. Files go under
//! `--dir` (default `target-snap-bench`) and are deleted at the end unless `--keep`.

use std::fs::{self, File};
use std::io::{self, BufReader, BufWriter, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use raftkv_raft::{ClusterConfig, LogIndex, Message, MessageBody, NodeId, SnapshotMeta, Term};
use raftkv_transport::{
    Inbound, ReaderSnapshotSource, Report, SnapshotSink, SnapshotSinkFactory, StagedBody, Transport,
    TransportConfig,
};
use tokio::sync::mpsc;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Receiver side: each transfer goes to a temp file, synced and renamed on `finish`, removed
/// when the transfer fails (the sink is dropped unfinished).
struct FileSinks {
    dir: PathBuf,
    next: AtomicU64,
}

struct FileSink {
    tmp: PathBuf,
    dest: PathBuf,
    file: Option<BufWriter<File>>,
    written: u64,
}

impl SnapshotSinkFactory for FileSinks {
    fn create(
        &self,
        from: NodeId,
        meta: &SnapshotMeta,
        _total_len: u64,
    ) -> io::Result<Box<dyn SnapshotSink>> {
        let n = self.next.fetch_add(1, Ordering::Relaxed);
        let name = format!("recv-{from}-{}-{}-{n}", meta.index, meta.term);
        let tmp = self.dir.join(format!("{name}.tmp"));
        let dest = self.dir.join(format!("{name}.snap"));
        let file = BufWriter::with_capacity(1 << 20, File::create(&tmp)?);
        Ok(Box::new(FileSink { tmp, dest, file: Some(file), written: 0 }))
    }
}

impl SnapshotSink for FileSink {
    fn write_chunk(&mut self, offset: u64, data: &[u8]) -> io::Result<()> {
        if offset != self.written {
            return Err(io::Error::new(io::ErrorKind::InvalidInput, "chunk out of place"));
        }
        let Some(file) = self.file.as_mut() else { return Err(io::Error::other("sink finished")) };
        file.write_all(data)?;
        self.written += data.len() as u64;
        Ok(())
    }

    fn finish(mut self: Box<Self>) -> io::Result<StagedBody> {
        let Some(file) = self.file.take() else { return Err(io::Error::other("sink finished")) };
        let file = file.into_inner().map_err(|e| e.into_error())?;
        file.sync_all()?;
        fs::rename(&self.tmp, &self.dest)?;
        Ok(StagedBody::File(self.dest.clone()))
    }
}

impl Drop for FileSink {
    fn drop(&mut self) {
        if self.file.is_some() {
            let _ = fs::remove_file(&self.tmp);
        }
    }
}

fn peak_rss_kib() -> u64 {
    let status = fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

/// Writes `len` bytes of a deterministic, incompressible-looking pattern; returns its CRC32C.
fn write_source(path: &Path, len: u64) -> io::Result<u32> {
    let mut w = BufWriter::with_capacity(1 << 20, File::create(path)?);
    let mut block = vec![0u8; 1 << 20];
    let mut state = 0x9E37_79B9_7F4A_7C15u64;
    let mut crc = 0u32;
    let mut left = len;
    while left > 0 {
        for word in block.chunks_mut(8) {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            word.copy_from_slice(&state.to_le_bytes()[..word.len()]);
        }
        let n = left.min(block.len() as u64) as usize;
        w.write_all(&block[..n])?;
        crc = crc32c::crc32c_append(crc, &block[..n]);
        left -= n as u64;
    }
    w.into_inner().map_err(|e| e.into_error())?.sync_all()?;
    Ok(crc)
}

fn file_crc(path: &Path) -> io::Result<(u64, u32)> {
    let mut r = BufReader::with_capacity(1 << 20, File::open(path)?);
    let mut buf = vec![0u8; 1 << 20];
    let (mut len, mut crc) = (0u64, 0u32);
    loop {
        let n = r.read(&mut buf)?;
        if n == 0 {
            return Ok((len, crc));
        }
        crc = crc32c::crc32c_append(crc, &buf[..n]);
        len += n as u64;
    }
}

struct Args {
    size_mib: u64,
    dir: PathBuf,
    keep: bool,
}

fn parse_args() -> Result<Args, BoxError> {
    let mut args = Args { size_mib: 1024, dir: PathBuf::from("target-snap-bench"), keep: false };
    let mut it = std::env::args().skip(1);
    while let Some(a) = it.next() {
        match a.as_str() {
            "--size-mib" => args.size_mib = it.next().ok_or("--size-mib needs a value")?.parse()?,
            "--dir" => args.dir = PathBuf::from(it.next().ok_or("--dir needs a value")?),
            "--keep" => args.keep = true,
            other => return Err(format!("unknown argument {other:?}").into()),
        }
    }
    Ok(args)
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> Result<(), BoxError> {
    let args = parse_args()?;
    let len = args.size_mib << 20;
    fs::create_dir_all(&args.dir)?;
    let source_path = args.dir.join("source.snap");
    eprintln!("writing a {} MiB source file to {} ...", args.size_mib, source_path.display());
    let source_crc = write_source(&source_path, len)?;
    let rss_before = peak_rss_kib();

    let sinks = Arc::new(FileSinks { dir: args.dir.clone(), next: AtomicU64::new(0) });
    let loopback = "127.0.0.1:0".parse()?;
    let mut c2 = TransportConfig::new(0xB5, NodeId(2), loopback);
    c2.snapshot_sinks = sinks;
    c2.peers.insert(NodeId(1), "127.0.0.1:9".into()); // replies are not needed
    let (in2_tx, mut in2) = mpsc::channel(16);
    let (rep2_tx, _rep2) = mpsc::channel(16);
    let t2 = Transport::start(c2, in2_tx, rep2_tx).await?;
    let mut c1 = TransportConfig::new(0xB5, NodeId(1), loopback);
    c1.peers.insert(NodeId(2), t2.local_addr().to_string());
    let (in1_tx, _in1) = mpsc::channel(16);
    let (rep1_tx, mut rep1) = mpsc::channel(16);
    let t1 = Transport::start(c1, in1_tx, rep1_tx).await?;

    let meta = SnapshotMeta {
        index: LogIndex(1_000_000),
        term: Term(3),
        config: ClusterConfig::new([NodeId(1), NodeId(2)]),
    };
    let msg = Message {
        from: NodeId(1),
        to: NodeId(2),
        term: Term(3),
        body: MessageBody::InstallSnapshot { meta },
    };
    let began = Instant::now();
    let source = ReaderSnapshotSource::new(BufReader::with_capacity(1 << 20, File::open(&source_path)?), len);
    t1.send_snapshot(msg, Box::new(source)).map_err(|e| format!("send_snapshot: {e}"))?;

    let timeout = Duration::from_secs(600);
    let staged = loop {
        match tokio::time::timeout(timeout, in2.recv()).await {
            Ok(Some(Inbound::Snapshot { staged, .. })) => break staged,
            Ok(Some(Inbound::Message(_))) => continue,
            Ok(None) => return Err("receiver closed".into()),
            Err(_) => return Err("timed out waiting for the snapshot".into()),
        }
    };
    let received = began.elapsed();
    let ok = loop {
        match tokio::time::timeout(timeout, rep1.recv()).await {
            Ok(Some(Report::Snapshot { ok, .. })) => break ok,
            Ok(Some(Report::Unreachable(_) | Report::RefusedBy { .. })) => continue,
            Ok(None) | Err(_) => return Err("no snapshot report".into()),
        }
    };
    if !ok {
        return Err("the sender reported the transfer failed".into());
    }
    // Install: read the staged file back and verify it against the source.
    let StagedBody::File(path) = &staged.body else { return Err("expected a file".into()) };
    let path = path.clone();
    let (got_len, got_crc) = tokio::task::spawn_blocking(move || file_crc(&path)).await??;
    let installed = began.elapsed();
    if got_len != len || got_crc != source_crc || staged.crc32c != source_crc {
        return Err(format!(
            "mismatch: {got_len} bytes crc {got_crc:#x}, expected {len} crc {source_crc:#x}"
        )
        .into());
    }
    let mib = len as f64 / (1 << 20) as f64;
    let mb = len as f64 / 1e6;
    println!(
        "snapshot {mib:.0} MiB: sent+staged {:.2} s ({:.0} MB/s), installed (read back + CRC) {:.2} s ({:.0} MB/s); peak RSS {} MiB (before transfer {} MiB); crc32c {source_crc:#010x} ok",
        received.as_secs_f64(),
        mb / received.as_secs_f64(),
        installed.as_secs_f64(),
        mb / installed.as_secs_f64(),
        peak_rss_kib() / 1024,
        rss_before / 1024,
    );
    t1.shutdown().await;
    t2.shutdown().await;
    if !args.keep {
        let _ = fs::remove_dir_all(&args.dir);
    }
    Ok(())
}
