//! Rough single-thread throughput of the hot paths:
//! `cargo run -p raftkv-kv --release --example kv-bench`.

use std::time::Instant;

use bytes::Bytes;
use raftkv_api::etcdserverpb::{PutRequest, RangeRequest};
use raftkv_kv::KvStore;

fn main() {
    const N: usize = 1_000_000;
    let keys: Vec<Bytes> = (0..100_000).map(|i| Bytes::from(format!("key/{i:08}"))).collect();
    let value = Bytes::from(vec![b'v'; 128]);
    let mut s = KvStore::new();
    let t = Instant::now();
    for i in 0..N {
        let req =
            PutRequest { key: keys[i % keys.len()].clone(), value: value.clone(), ..Default::default() };
        if s.put(req).is_err() {
            return;
        }
    }
    let dt = t.elapsed();
    println!("put:   {:>8.0} ops/s", N as f64 / dt.as_secs_f64());
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
    let mut buf = Vec::new();
    let _ = s.snapshot(&mut buf);
    println!("snapshot of {} versions: {} MiB in {:?}", s.retained_versions(), buf.len() >> 20, t.elapsed());
}
