//! The longest stall a defragmentation causes, raftkv vs etcd 3.4 on the same data: a
//! one-member cluster of each gets the same keys, each overwritten several times, then a
//! compaction that keeps the last two versions of every key (so the defragmentation has
//! history to copy); a probe writes and reads one key after the other for a second before
//! (the baseline) and while `Maintenance.Defragment` runs, and the slowest probe during it
//! is the stall.
//!
//! A measurement, not a check (ignored by default):
//! `DEFRAG_KEYS=100000 cargo test --release -p raftkv --test defrag_stall -- --ignored --nocapture`

mod common;

use std::time::{Duration, Instant};

use common::{Cluster, Opts, free_ports, have};
use raftkv_api::etcdserverpb::{CompactionRequest, DefragmentRequest, PutRequest, RangeRequest};

const START: Duration = Duration::from_secs(30);

async fn load(port: u16, keys: usize, versions: usize, value: usize) -> i64 {
    let value: bytes::Bytes = "v".repeat(value).into();
    let mut tasks = Vec::new();
    let writers = 32;
    for w in 0..writers {
        let value = value.clone();
        tasks.push(tokio::spawn(async move {
            let mut kv = common::kv(port);
            let mut rev = 0;
            for round in 0..versions {
                for k in (w..keys).step_by(writers) {
                    let req = PutRequest {
                        key: format!("key/{k:08}").into(),
                        value: value.clone(),
                        ..Default::default()
                    };
                    let r = kv.put(req).await.unwrap_or_else(|e| panic!("load round {round}: {e}"));
                    rev = rev.max(r.into_inner().header.map_or(0, |h| h.revision));
                }
            }
            rev
        }));
    }
    let mut rev = 0;
    for t in tasks {
        rev = rev.max(t.await.expect("writer"));
    }
    rev
}

/// Runs the probe for a second, then while the defragmentation runs: (defrag time, slowest
/// probe before, slowest probe during, probes during).
async fn measure(port: u16) -> (Duration, Duration, Duration, usize) {
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let probe = {
        let stop = stop.clone();
        tokio::spawn(async move {
            let mut kv = common::kv(port);
            let (mut worst, mut n) = (Duration::ZERO, 0usize);
            let mut baseline = Duration::ZERO;
            let began = Instant::now();
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                if baseline.is_zero() && began.elapsed() >= Duration::from_secs(1) {
                    baseline = worst.max(Duration::from_nanos(1));
                    worst = Duration::ZERO;
                    n = 0;
                }
                let t = Instant::now();
                let req = PutRequest { key: "probe".into(), value: "p".into(), ..Default::default() };
                kv.put(req).await.expect("probe put");
                kv.range(RangeRequest { key: "key/00000001".into(), ..Default::default() })
                    .await
                    .expect("probe read");
                worst = worst.max(t.elapsed());
                n += 1;
            }
            (baseline, worst, n)
        })
    };
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let t = Instant::now();
    common::maintenance(port).defragment(DefragmentRequest {}).await.expect("defragment");
    let took = t.elapsed();
    tokio::time::sleep(Duration::from_millis(100)).await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let (baseline, worst, n) = probe.await.expect("probe");
    (took, baseline, worst, n)
}

async fn run(name: &str, port: u16, keys: usize) {
    let rev = load(port, keys, 4, 256).await;
    let keep_from = rev - keys as i64;
    common::kv(port)
        .compact(CompactionRequest { revision: keep_from, physical: true })
        .await
        .expect("compact");
    let before = common::status(port).await.expect("status").db_size;
    let (took, baseline, worst, n) = measure(port).await;
    let after = common::status(port).await.expect("status").db_size;
    println!(
        "{name}: {keys} keys x 4 versions of 256 B, compacted to keep 2; db size {before} -> {after}; \
         defrag took {took:?}; slowest probe (put + get) in the second before {baseline:?}, \
         during the defrag {worst:?} ({n} probes)"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore]
async fn defrag_stall_raftkv_vs_etcd() {
    let keys: usize = std::env::var("DEFRAG_KEYS").ok().and_then(|v| v.parse().ok()).unwrap_or(50_000);
    {
        let mut c = Cluster::start(1, Opts::etcd_defaults());
        c.wait_leader(START).await;
        run("raftkv", c.port(0), keys).await;
    }
    if !have("etcd") {
        println!("etcd not installed: no comparison");
        return;
    }
    let dir = tempfile::tempdir().expect("temp dir");
    let ports = free_ports(2);
    let (client, peer) = (format!("http://127.0.0.1:{}", ports[0]), format!("http://127.0.0.1:{}", ports[1]));
    let mut cmd = std::process::Command::new("etcd");
    cmd.arg("--data-dir")
        .arg(dir.path().join("etcd-data"))
        .args(["--listen-client-urls", &client, "--advertise-client-urls", &client])
        .args(["--listen-peer-urls", &peer, "--initial-advertise-peer-urls", &peer])
        .args(["--initial-cluster", &format!("default={peer}")])
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null());
    let child = common::die_with_parent(&mut cmd).spawn().expect("spawn etcd");
    let _etcd = common::Proc::new("etcd", child, None);
    let port = ports[0];
    common::wait_for("etcd to serve", START, || async move { common::put(port, "up", "1").await.ok() }).await;
    run("etcd 3.4", port, keys).await;
}
