//! The checker catches a real anomaly: members started with the test-only switch
//! `RAFTKV_UNSAFE_STALE_READS=1` serve reads without ReadIndex, and a run that isolates the
//! leader (clients still reading from it) must be reported as not linearizable.
//!
//! Needs root (network namespaces, iptables) and a release `raftkv` built with the test-only
//! feature into its own target dir, so it is ignored in the ordinary test run;
//! `scripts/chaos-ci` runs the same check through the CLI. Here:
//!
//! ```text
//! cargo build --release -p raftkv --features unsafe-stale-reads --target-dir target/unsafe-stale-reads
//! cargo test --release -p raftkv-chaos -- --ignored
//! ```

use std::time::Duration;

use raftkv_chaos::linearizability::Budget;
use raftkv_chaos::nemesis::Profile;
use raftkv_chaos::runner::{self, Outcome2, RunConfig};
use raftkv_chaos::workload::WorkloadConfig;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs root, network namespaces and target/unsafe-stale-reads/release/raftkv; run by scripts/chaos-ci"]
async fn stale_reads_from_an_isolated_leader_are_not_linearizable() {
    let target = std::env::var("CARGO_TARGET_DIR")
        .unwrap_or_else(|_| format!("{}/../../target", env!("CARGO_MANIFEST_DIR")));
    let binary = std::path::PathBuf::from(&target).join("unsafe-stale-reads/release/raftkv");
    assert!(
        binary.exists(),
        "build it first: cargo build --release -p raftkv --features unsafe-stale-reads --target-dir {target}/unsafe-stale-reads ({})",
        binary.display()
    );
    let cfg = RunConfig {
        profile: Profile::IsolateLeader,
        seed: 3,
        duration: Duration::from_secs(30),
        members: 3,
        binary,
        out: std::path::PathBuf::from(&target).join("chaos-test"),
        workload: WorkloadConfig::default(),
        unsafe_stale_reads: true,
        check_budget: Budget::default(),
        quiet: false,
        watch: false,
    };
    let r = runner::run(cfg).await.expect("the run completes");
    assert_eq!(r.outcome, Outcome2::Invalid, "stale reads must be reported as not linearizable");
    let failing = r.report.keys.iter().find(|k| k.verdict.is_invalid()).expect("a failing key");
    assert!(
        !failing.witness.is_empty() && failing.witness.len() <= 10,
        "a small witness: {:?}",
        failing.witness
    );
}
