//! `etcd-client-bench`: the benchmark's put and range points driven through a third-party
//! client, the `etcd-client` crate (tonic), to confirm the figures `raftkv-bench` (our own
//! generator, unary gRPC on h2 directly) reports. It takes the flags of `raftkv-bench` that
//! those points use and prints the JSON fields `scripts/bench-compare` reads, so that script
//! runs it in place of `raftkv-bench` (`GENERATOR=etcd-client`); the keys' load stays with
//! `raftkv-bench`.
//!
//! Each connection is one `etcd_client::Client` on one endpoint (connections go over the
//! endpoints in order, as `raftkv-bench` spreads them); each client task calls through its
//! connection's `KvClient` in a loop. Only operations completed inside the measured window
//! (after the warmup) count.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use clap::{Parser, ValueEnum};
use etcd_client::{Client, GetOptions};
use hdrhistogram::Histogram;
use raftkv_bench::process_cpu_seconds;
use raftkv_rng::SplitMix64;

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum Op {
    Put,
    Range,
    RangeSerializable,
}

#[derive(Parser, Debug)]
#[command(name = "etcd-client-bench", about = "Put and range load through the etcd-client crate")]
struct Args {
    /// Comma-separated host:port (or http://host:port) client endpoints.
    #[arg(long, default_value = "127.0.0.1:2379")]
    endpoints: String,
    /// Concurrent client tasks.
    #[arg(long, default_value_t = 64)]
    clients: usize,
    /// Connections (one etcd-client Client each), spread over the endpoints in order.
    #[arg(long, default_value_t = 8)]
    conns: usize,
    #[arg(long, value_enum, default_value = "put")]
    op: Op,
    /// Value size in bytes (puts).
    #[arg(long, default_value_t = 256)]
    value_size: usize,
    /// Number of distinct keys (key{N}, zero-padded, as raftkv-bench).
    #[arg(long, default_value_t = 100_000)]
    key_space: u64,
    /// Measured seconds (after the warmup).
    #[arg(long, default_value_t = 10.0)]
    duration: f64,
    /// Seconds run before the measured window.
    #[arg(long, default_value_t = 2.0)]
    warmup: f64,
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Accepted for raftkv-bench compatibility: the output is always one JSON line.
    #[arg(long)]
    json: bool,
    /// Accepted for raftkv-bench compatibility.
    #[arg(long)]
    quiet: bool,
}

#[derive(Debug, thiserror::Error)]
enum BenchError {
    #[error("--clients, --conns and --key-space must be at least 1, --duration more than 0")]
    Shape,
    #[error("no endpoint given")]
    NoEndpoint,
    #[error("cannot connect to {0}: {1}")]
    Connect(String, etcd_client::Error),
    #[error("a client task failed: {0}")]
    Task(#[from] tokio::task::JoinError),
    #[error("histogram: {0}")]
    Histogram(String),
}

/// Distinct error messages a client task keeps.
const MAX_ERROR_KINDS: usize = 16;

struct TaskResult {
    hist: Histogram<u64>,
    ops: u64,
    errors: BTreeMap<String, u64>,
}

/// Latencies in µs, 1 µs to 1 hour, 3 significant digits (a longer one counts as 1 hour).
fn histogram() -> Result<Histogram<u64>, BenchError> {
    Histogram::new_with_bounds(1, 3_600_000_000, 3).map_err(|e| BenchError::Histogram(e.to_string()))
}

fn key(n: u64, digits: usize) -> Vec<u8> {
    format!("key{n:0digits$}").into_bytes()
}

async fn run_task(
    mut kv: etcd_client::KvClient,
    op: Op,
    mut rng: SplitMix64,
    value: Vec<u8>,
    key_space: u64,
    start: Instant,
    end: Instant,
) -> Result<TaskResult, BenchError> {
    let digits = key_space.saturating_sub(1).max(1).to_string().len();
    let mut hist = histogram()?;
    let mut ops = 0;
    let mut errors = BTreeMap::new();
    loop {
        let t0 = Instant::now();
        if t0 >= end {
            break;
        }
        let k = key(rng.below(key_space), digits);
        let result = match op {
            Op::Put => kv.put(k, value.clone(), None).await.map(|_| ()),
            Op::Range => kv.get(k, None).await.map(|_| ()),
            Op::RangeSerializable => kv.get(k, Some(GetOptions::new().with_serializable())).await.map(|_| ()),
        };
        let t1 = Instant::now();
        if t0 < start || t1 > end {
            continue;
        }
        match result {
            Ok(()) => {
                ops += 1;
                let micros = u64::try_from(t1.duration_since(t0).as_micros()).unwrap_or(u64::MAX);
                hist.saturating_record(micros.max(1));
            }
            Err(e) => {
                // At most MAX_ERROR_KINDS distinct messages are kept; the rest count together.
                let text = e.to_string();
                let key = if errors.len() < MAX_ERROR_KINDS || errors.contains_key(&text) {
                    text
                } else {
                    "other".into()
                };
                *errors.entry(key).or_insert(0) += 1;
            }
        }
    }
    Ok(TaskResult { hist, ops, errors })
}

#[tokio::main]
async fn main() {
    let args = Args::parse();
    match run(args).await {
        Ok(json) => println!("{json}"),
        Err(e) => {
            eprintln!("etcd-client-bench: {e}");
            std::process::exit(1);
        }
    }
}

async fn run(args: Args) -> Result<serde_json::Value, BenchError> {
    if args.clients == 0
        || args.conns == 0
        || args.key_space == 0
        || args.duration.is_nan()
        || args.duration <= 0.0
    {
        return Err(BenchError::Shape);
    }
    let endpoints: Vec<String> = args
        .endpoints
        .split(',')
        .map(str::trim)
        .filter(|e| !e.is_empty())
        .map(|e| if e.contains("://") { e.to_string() } else { format!("http://{e}") })
        .collect();
    if endpoints.is_empty() {
        return Err(BenchError::NoEndpoint);
    }
    let conns = args.conns.min(args.clients);
    let mut clients = Vec::with_capacity(conns);
    for i in 0..conns {
        let ep = &endpoints[i % endpoints.len()];
        let client =
            Client::connect([ep.as_str()], None).await.map_err(|e| BenchError::Connect(ep.clone(), e))?;
        clients.push(client.kv_client());
    }
    let mut rng = SplitMix64::new(args.seed);
    let value: Vec<u8> = (0..args.value_size).map(|_| b'a' + rng.below(26) as u8).collect();
    let now = Instant::now();
    let now_unix =
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0.0, |d| d.as_secs_f64());
    let cpu0 = process_cpu_seconds();
    let start = now + Duration::from_secs_f64(args.warmup);
    let end = start + Duration::from_secs_f64(args.duration);
    let mut tasks = Vec::with_capacity(args.clients);
    for i in 0..args.clients {
        let kv = clients[i % conns].clone();
        let rng = SplitMix64::new(args.seed.wrapping_mul(0x9e37_79b9_7f4a_7c15).wrapping_add(i as u64 + 1));
        tasks.push(tokio::spawn(run_task(kv, args.op, rng, value.clone(), args.key_space, start, end)));
    }
    let mut hist = histogram()?;
    let mut ops = 0;
    let mut errors: BTreeMap<String, u64> = BTreeMap::new();
    for task in tasks {
        let r = task.await??;
        hist.add(&r.hist).map_err(|e| BenchError::Histogram(e.to_string()))?;
        ops += r.ops;
        for (e, n) in r.errors {
            *errors.entry(e).or_insert(0) += n;
        }
    }
    let finished = Instant::now();
    let cpu = match (cpu0, process_cpu_seconds()) {
        (Some(a), Some(b)) => b - a,
        _ => 0.0,
    };
    let window = args.duration;
    let ms = |micros: u64| micros as f64 / 1000.0;
    let q = |p: f64| if ops == 0 { 0.0 } else { ms(hist.value_at_quantile(p)) };
    let error_count: u64 = errors.values().sum();
    Ok(serde_json::json!({
        "generator": "etcd-client",
        "op": match args.op { Op::Put => "put", Op::Range => "range", Op::RangeSerializable => "range-serializable" },
        "clients": args.clients,
        "conns": conns,
        "endpoints": endpoints.join(","),
        "value_size": args.value_size,
        "key_space": args.key_space,
        "seconds": window,
        "ops": ops,
        "ops_per_sec": ops as f64 / window,
        "p50_ms": q(0.50),
        "p90_ms": q(0.90),
        "p99_ms": q(0.99),
        "p999_ms": q(0.999),
        "max_ms": if ops == 0 { 0.0 } else { ms(hist.max()) },
        "error_count": error_count,
        "errors": errors,
        "client_cpu_pct": 100.0 * cpu / finished.duration_since(now).as_secs_f64().max(1e-9),
        "window_start_unix": now_unix + args.warmup,
        "window_end_unix": now_unix + args.warmup + window,
    }))
}
