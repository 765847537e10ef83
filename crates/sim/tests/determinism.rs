//! One seed, run twice, gives the same trace: the simulator and the core are deterministic.

use raftkv_sim::{Profile, SimOptions, run_seed};

#[test]
fn same_seed_gives_identical_trace() {
    for seed in [1u64, 7, 160, 4242] {
        for profile in Profile::ALL {
            let options = SimOptions { profile, ..SimOptions::default() };
            let a = run_seed(seed, &options);
            let b = run_seed(seed, &options);
            assert_eq!(a.trace_hash, b.trace_hash, "seed {seed} {profile:?}: traces differ");
            assert_eq!(a.stats.events, b.stats.events);
            assert!(a.stats.events > 1000, "seed {seed}: suspiciously few events");
        }
    }
}

#[test]
fn tracing_does_not_change_the_run() {
    let quiet = run_seed(3, &SimOptions::default());
    let traced = run_seed(3, &SimOptions { trace: true, ..SimOptions::default() });
    assert_eq!(quiet.trace_hash, traced.trace_hash);
    assert!(traced.trace.len() as u64 >= traced.stats.events);
    assert!(traced.trace.iter().any(|l| l.contains("LEADER")));
}

#[test]
fn different_seeds_give_different_runs() {
    let a = run_seed(10, &SimOptions::default());
    let b = run_seed(11, &SimOptions::default());
    assert_ne!(a.trace_hash, b.trace_hash);
}

#[test]
fn runs_last_at_least_ten_virtual_seconds_and_make_progress() {
    for seed in 0..20 {
        let o = run_seed(seed, &SimOptions::default());
        assert!(o.violation.is_none(), "seed {seed}: {:?}", o.violation);
        assert!(o.virtual_us >= 10_000_000, "seed {seed} ran {} us", o.virtual_us);
        assert!(o.stats.acknowledged > 0, "seed {seed}: no command committed");
    }
}

#[test]
fn the_key_value_state_machine_runs_deterministically_and_commits() {
    let options = SimOptions { kv_store: true, ..SimOptions::default() };
    for seed in [2u64, 9] {
        let a = run_seed(seed, &options);
        let b = run_seed(seed, &options);
        assert!(a.violation.is_none(), "seed {seed}: {:?}", a.violation);
        assert_eq!(a.trace_hash, b.trace_hash, "seed {seed}: traces differ");
        assert!(a.stats.acknowledged > 0 && a.stats.reads_linearizable + a.stats.reads_serializable > 0);
    }
}
