//! `bench-watch --put-rate`: the writers keep to the rate they are given (the option exists
//! to compare event latencies at one write rate), and every event still arrives.
//!
//! Runs the release `raftkv` (built by the README's test command before the tests).

use std::time::Duration;

use raftkv_chaos::watchbench::{BenchConfig, run};

/// The `puts/s` and `events missing / out of order` cells of the watch row for `watchers`.
fn watch_row(report: &str, watchers: usize) -> (f64, String) {
    let row = report
        .lines()
        .find(|l| l.starts_with(&format!("| raftkv | {watchers} |")))
        .unwrap_or_else(|| panic!("no raftkv row for {watchers} watchers in:\n{report}"));
    let cells: Vec<&str> = row.split('|').map(str::trim).collect();
    let puts = cells[3].parse().unwrap_or_else(|e| panic!("puts/s {:?}: {e}", cells[3]));
    (puts, cells[9].to_string())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writers_keep_to_the_put_rate() {
    let target = std::env::var("CARGO_TARGET_DIR")
        .unwrap_or_else(|_| format!("{}/../../target", env!("CARGO_MANIFEST_DIR")));
    let target = std::path::PathBuf::from(target);
    let raftkv = target.join("release/raftkv");
    assert!(raftkv.exists(), "build it first: cargo build --release -p raftkv ({})", raftkv.display());
    let out = target.join("bench-watch-test");
    let _ = std::fs::remove_dir_all(&out);
    let cfg = BenchConfig {
        raftkv,
        etcd: None,
        duration: Duration::from_secs(3),
        out,
        idle_watchers: 0,
        leases: 0,
        watchers: vec![1],
        put_rate: Some(2000),
        // The member gets the flag (one it would refuse otherwise) and the report says so.
        worker_threads: Some(1),
        gomaxprocs: None,
        // Ranges held through the point: the watcher still gets every event.
        held_ranges: 2000,
    };
    let report = run(cfg).await.expect("the benchmark runs");
    let (puts, missing) = watch_row(&report, 1);
    // Well below what a member serves at full speed (over 10x this on the 2-CPU machine).
    // The schedule is absolute, so timer rounding does not drift it; the lower bound leaves
    // room for puts still in flight when the writers stop on a busy machine.
    assert!((1400.0..=2100.0).contains(&puts), "{puts} puts/s at a rate of 2000:\n{report}");
    assert_eq!(missing, "0 / 0", "every event delivered, in order:\n{report}");
    assert!(report.contains("raftkv --worker-threads 1,"), "the setting is reported:\n{report}");
    assert!(report.contains("2000 watchers on distinct prefixes held"), "so is this one:\n{report}");
}
