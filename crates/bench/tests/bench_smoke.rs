//! `raftkv-bench` against a one-member `raftkv server`: the JSON result line parses, some
//! puts succeeded, none failed. The server binary is the release `raftkv` beside
//! `raftkv-bench` (`cargo build --release -p raftkv` first, as scripts/test does).

mod common;

use std::time::{Duration, Instant};

use common::{json, run_bench, start_member};

/// Runs `raftkv-bench` with `args`; returns its JSON line if it exited successfully.
fn bench(endpoint: &str, args: &[&str]) -> Option<serde_json::Value> {
    json(&run_bench(endpoint, args))
}

#[test]
fn bench_puts_against_one_member() {
    let member = start_member::<&str>("http", &[]);
    // Ready once a single put succeeds (listening, leader elected).
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let ready = bench(&member.url, &["--op", "put", "--total", "1", "--timeout", "2"])
            .is_some_and(|j| j["ops"] == 1 && j["error_count"] == 0);
        if ready {
            break;
        }
        assert!(Instant::now() < deadline, "the member did not accept a put within 30 s");
        std::thread::sleep(Duration::from_millis(200));
    }

    let j = bench(&member.url, &["--op", "put", "--duration", "2", "--clients", "4", "--conns", "2"])
        .expect("raftkv-bench succeeds and prints a JSON line");
    assert_eq!(j["op"], "put");
    assert_eq!(j["clients"], 4);
    let ops = j["ops"].as_u64().expect("ops is a number");
    assert!(ops > 0, "no successful puts: {j}");
    assert_eq!(j["error_count"], 0, "errors: {j}");
    assert!(j["errors"].as_object().is_some_and(|e| e.is_empty()), "errors: {j}");
    assert!(j["ops_per_sec"].as_f64().is_some_and(|r| r > 0.0), "{j}");
    for p in ["p50_ms", "p90_ms", "p99_ms", "p999_ms", "max_ms"] {
        assert!(j[p].as_f64().is_some_and(|v| v > 0.0), "{p} missing: {j}");
    }
    assert!(j["p50_ms"].as_f64() <= j["max_ms"].as_f64(), "{j}");
}
