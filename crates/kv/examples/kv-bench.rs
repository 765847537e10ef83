//! Rough single-thread throughput of the hot paths and the memory they hold:
//! `cargo run -p raftkv-kv --release --example kv-bench [memory|file]` (where superseded
//! values go; default file, in the system temp dir).

use std::time::Instant;

use bytes::Bytes;
use raftkv_api::etcdserverpb::{PutRequest, RangeRequest};
use raftkv_kv::{ColdStore, KvStore};

/// This process's resident set size in MiB (Linux), 0 elsewhere.
fn rss_mib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let kib = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .unwrap_or(0);
    kib >> 10
}

fn main() {
    const N: usize = 1_000_000;
    let keys: Vec<Bytes> = (0..100_000).map(|i| Bytes::from(format!("key/{i:08}"))).collect();
    let value = vec![b'v'; 256];
    let cold = match std::env::args().nth(1).as_deref() {
        Some("memory") => ColdStore::memory(),
        _ => match ColdStore::temp_file_in(&std::env::temp_dir()) {
            Ok(c) => c,
            Err(e) => {
                eprintln!("cannot create the cold store file: {e}");
                return;
            }
        },
    };
    let mut s = KvStore::with_cold_store(Default::default(), cold);
    let rss0 = rss_mib();
    let t = Instant::now();
    let mut x = 0x9E37_79B9_7F4A_7C15u64;
    for _ in 0..N {
        // Random keys (xorshift), a fresh value buffer per put, as a decoded command has.
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let key = keys[(x % keys.len() as u64) as usize].clone();
        let req = PutRequest { key, value: Bytes::copy_from_slice(&value), ..Default::default() };
        if s.put(req).is_err() {
            return;
        }
    }
    let dt = t.elapsed();
    println!("put:   {:>8.0} ops/s", N as f64 / dt.as_secs_f64());
    let rss = rss_mib();
    println!(
        "memory: {} MiB resident for {N} puts of 256 B over {} keys ({} B per version; cold store {} MiB in memory)",
        rss.saturating_sub(rss0),
        keys.len(),
        (rss.saturating_sub(rss0) << 20) / N as u64,
        s.cold_store().memory_bytes() >> 20,
    );
    let t = Instant::now();
    let mut found = 0;
    for i in 0..N {
        let req = RangeRequest { key: keys[(i * 7) % keys.len()].clone(), ..Default::default() };
        if let Ok(r) = s.range(&req) {
            found += r.kvs.len();
        }
    }
    let dt = t.elapsed();
    println!("get:   {:>8.0} ops/s ({found} found)", N as f64 / dt.as_secs_f64());
    let t = Instant::now();
    let Ok(mut file) = tempfile::tempfile() else {
        eprintln!("cannot create a temporary file for the snapshot");
        return;
    };
    if let Err(e) = s.snapshot(&mut file) {
        eprintln!("snapshot: {e}");
        return;
    }
    let size = file.metadata().map(|m| m.len()).unwrap_or(0);
    println!("snapshot of {} versions: {} MiB in {:?}", s.retained_versions(), size >> 20, t.elapsed());
    let t = Instant::now();
    let restored = match (std::io::Seek::rewind(&mut file), s.cold_store().fresh()) {
        (Ok(()), Ok(cold)) => {
            KvStore::restore_with(&mut std::io::BufReader::new(&mut file), Default::default(), cold)
                .map_err(|e| e.to_string())
        }
        (Err(e), _) | (_, Err(e)) => Err(e.to_string()),
    };
    match restored {
        Ok(r) => println!("restore: {} versions in {:?}", r.retained_versions(), t.elapsed()),
        Err(e) => eprintln!("restore: {e}"),
    }
}
