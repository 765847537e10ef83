//! Storage benchmarks: durable append rate by batch size (records per
//! fdatasync, as the member's disk worker groups them), sequential append
//! bandwidth and recovery scan rate, on the real file system.
//!
//! ```text
//! cargo run --release -p raftkv-storage --bin storage-bench -- \
//!     [--dir /work/bench-tmp] [--secs 3] [--runs 3] [--batch 1,16,256] \
//!     [--sizes 256,4096] [--only append|seq|recover] [--seq-mib 1024] [--recover-mib 1024]
//! ```
//! Prints the median of `--runs` runs of each figure.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use raftkv_storage::{FileLogStore, LogOptions, LogRecord, LogStore, NodeIds, RealFs, SyncMode};

const IDS: NodeIds = NodeIds { cluster_id: 1, node_id: 1 };

struct Args {
    dir: PathBuf,
    secs: f64,
    runs: usize,
    batch: Vec<usize>,
    sizes: Vec<usize>,
    only: Option<String>,
    seq_mib: u64,
    recover_mib: u64,
    /// `LogOptions::preallocate` for the append runs (bytes; 0: off).
    preallocate: u64,
}

fn parse_args() -> Result<Args, String> {
    let mut a = Args {
        dir: std::env::temp_dir(),
        secs: 3.0,
        runs: 3,
        batch: vec![1, 16, 256],
        sizes: vec![256, 4096],
        only: None,
        seq_mib: 1024,
        recover_mib: 1024,
        preallocate: LogOptions::default().preallocate,
    };
    let mut it = std::env::args().skip(1);
    while let Some(k) = it.next() {
        let v = it.next().ok_or_else(|| format!("missing value for {k}"))?;
        let list = |v: &str| -> Result<Vec<usize>, String> {
            v.split(',').map(|x| x.trim().parse().map_err(|e| format!("{k}: {e}"))).collect()
        };
        match k.as_str() {
            "--dir" => a.dir = PathBuf::from(v),
            "--secs" => a.secs = v.parse().map_err(|e| format!("--secs: {e}"))?,
            "--runs" => a.runs = v.parse().map_err(|e| format!("--runs: {e}"))?,
            "--batch" => a.batch = list(&v)?,
            "--sizes" => a.sizes = list(&v)?,
            "--only" => a.only = Some(v),
            "--seq-mib" => a.seq_mib = v.parse().map_err(|e| format!("--seq-mib: {e}"))?,
            "--recover-mib" => a.recover_mib = v.parse().map_err(|e| format!("--recover-mib: {e}"))?,
            "--preallocate" => a.preallocate = v.parse().map_err(|e| format!("--preallocate: {e}"))?,
            _ => return Err(format!("unknown argument {k}")),
        }
    }
    Ok(a)
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

struct TmpDir(PathBuf);
impl TmpDir {
    fn new(base: &Path, tag: &str) -> TmpDir {
        let p = base.join(format!("storage-bench-{}-{tag}", std::process::id()));
        let _ = std::fs::remove_dir_all(&p);
        TmpDir(p)
    }
}
impl Drop for TmpDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

type BenchResult<T> = Result<T, Box<dyn std::error::Error>>;

/// Appends/s of `size`-byte records written `batch` at a time, one
/// fdatasync per batch (what the member's disk worker does with the jobs
/// queued while it writes). Returns appends/s.
fn bench_append(a: &Args, batch: usize, size: usize) -> BenchResult<f64> {
    let tmp = TmpDir::new(&a.dir, "append");
    let opts = LogOptions { preallocate: a.preallocate, ..LogOptions::default() };
    let mut store = FileLogStore::create(Arc::new(RealFs), &tmp.0, IDS, opts)?;
    let payload = Bytes::from(vec![0xA5u8; size]);
    let start = Instant::now();
    let mut next = 1u64;
    while start.elapsed().as_secs_f64() < a.secs {
        let records: Vec<LogRecord> =
            (next..next + batch as u64).map(|i| LogRecord::new(i, 1, 0, payload.clone())).collect();
        next += batch as u64;
        store.append(&records)?;
        store.sync()?;
    }
    Ok((next - 1) as f64 / start.elapsed().as_secs_f64())
}

/// Sequential large appends: 1 MiB records, 8 per batch, one fsync per
/// batch. Returns MB/s.
fn bench_seq(a: &Args) -> BenchResult<f64> {
    let tmp = TmpDir::new(&a.dir, "seq");
    let mut s = FileLogStore::create(Arc::new(RealFs), &tmp.0, IDS, LogOptions::default())?;
    let rec_size = 1 << 20;
    let payload = Bytes::from(vec![0x5Au8; rec_size]);
    let total = a.seq_mib;
    let per_batch = 8u64;
    let start = Instant::now();
    let mut idx = 1;
    while idx <= total {
        let batch: Vec<LogRecord> = (idx..(idx + per_batch).min(total + 1))
            .map(|i| LogRecord::new(i, 1, 0, payload.clone()))
            .collect();
        idx += batch.len() as u64;
        s.append(&batch)?;
        s.sync()?;
    }
    let el = start.elapsed().as_secs_f64();
    Ok(total as f64 * rec_size as f64 / el / 1e6)
}

/// Recovery scan: write `recover_mib` of 4 KiB records, then time `open`.
/// Returns (MB/s, MB scanned).
fn bench_recover(a: &Args) -> BenchResult<Vec<(f64, f64)>> {
    let tmp = TmpDir::new(&a.dir, "recover");
    let opts = LogOptions { sync: SyncMode::NoSyncUnsafeForBenchmarksOnly, ..LogOptions::default() };
    let mut s = FileLogStore::create(Arc::new(RealFs), &tmp.0, IDS, opts)?;
    let payload = Bytes::from(vec![0x33u8; 4096]);
    let n = a.recover_mib * 256;
    let mut idx = 1;
    while idx <= n {
        let batch: Vec<LogRecord> =
            (idx..(idx + 256).min(n + 1)).map(|i| LogRecord::new(i, 1, 0, payload.clone())).collect();
        idx += batch.len() as u64;
        s.append(&batch)?;
    }
    s.sync()?;
    drop(s);
    let bytes: u64 =
        std::fs::read_dir(&tmp.0)?.map(|e| e.and_then(|e| e.metadata()).map(|m| m.len()).unwrap_or(0)).sum();
    let mut out = Vec::new();
    for _ in 0..a.runs {
        let start = Instant::now();
        let (_, rec) = FileLogStore::open(Arc::new(RealFs), &tmp.0, IDS, LogOptions::default())?;
        let el = start.elapsed().as_secs_f64();
        if rec.last_index != n {
            return Err(format!("recovered {} of {n} records", rec.last_index).into());
        }
        drop(rec);
        out.push((bytes as f64 / el / 1e6, bytes as f64 / 1e6));
    }
    Ok(out)
}

fn main() {
    let a = match parse_args() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("storage-bench: {e}");
            std::process::exit(2);
        }
    };
    if let Err(e) = run(&a) {
        eprintln!("storage-bench: {e}");
        std::process::exit(1);
    }
}

fn run(a: &Args) -> BenchResult<()> {
    let want = |w: &str| a.only.as_deref().is_none_or(|o| o == w);
    println!("# storage-bench: dir {}, {} runs, median shown, fsync on", a.dir.display(), a.runs);
    if want("append") {
        println!("{:>8} {:>8} {:>14} {:>10}", "size_B", "batch", "appends/s", "MB/s");
        for &size in &a.sizes {
            for &batch in &a.batch {
                let mut rates = Vec::new();
                for _ in 0..a.runs {
                    rates.push(bench_append(a, batch, size)?);
                }
                let r = median(rates);
                println!("{size:>8} {batch:>8} {r:>14.0} {:>10.2}", r * size as f64 / 1e6);
            }
        }
    }
    if want("seq") {
        let mut v = Vec::new();
        for _ in 0..a.runs {
            v.push(bench_seq(a)?);
        }
        println!("sequential 1 MiB appends, 8 MiB per fsync, {} MiB: {:.0} MB/s", a.seq_mib, median(v));
    }
    if want("recover") {
        let v = bench_recover(a)?;
        let mb = v.first().map_or(0.0, |x| x.1);
        println!(
            "recovery scan of {mb:.0} MB (4 KiB records, warm page cache): {:.0} MB/s",
            median(v.into_iter().map(|x| x.0).collect())
        );
    }
    Ok(())
}
