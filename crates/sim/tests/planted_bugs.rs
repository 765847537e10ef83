//! The checkers can fail: each known bug, planted in every core, is caught by the same
//! checkers as the sweep, either within a fixed seed budget or (for the bugs with a targeted
//! profile) at a minimum catch rate over a fixed seed range. Needs `--features planted-bugs`.
//!
//! The rates are measured with the same command the tests mirror, for example
//! `cargo run --release -p raftkv-sim --features planted-bugs -- run --seeds 1000 \
//!  --profile figure-8 --plant commit-previous-term-by-count` (each violation printed is one
//! seed caught); docs/testing.md lists the figures.
#![cfg(feature = "planted-bugs")]

use raftkv_sim::{PlantedBug, Profile, SimOptions, run_seed};

/// Seeds tried per bug; each must be caught well within it.
const BUDGET: u64 = 300;

/// Seed ranges and minimum catches of the rate tests (docs/testing.md has the rates measured
/// over 1,000 seeds). The runs are deterministic, so each minimum is close to what the range
/// gives today: a change that makes a profile lose its grip on its bug fails the test.
const FIGURE_8_SEEDS: u64 = 400;
const FIGURE_8_MIN: u64 = 24;
const STALE_TAIL_SEEDS: u64 = 200;
const STALE_TAIL_MIN: u64 = 150;
const UNSYNCED_SEEDS: u64 = 300;
const UNSYNCED_MIN: u64 = 36;

/// Runs seeds from 0 until one reports a safety violation (a liveness failure alone does not
/// count: the bug must break a guarantee). Returns the seed and the violation.
fn first_catch(bug: PlantedBug, profile: Profile) -> (u64, String) {
    let options = SimOptions { profile, trace: false, planted_bug: Some(bug) };
    for seed in 0..BUDGET {
        let o = run_seed(seed, &options);
        if let Some(v) = o.violation
            && v.kind != "liveness"
        {
            return (seed, v.to_string());
        }
    }
    panic!("{bug:?} was not caught in {BUDGET} seeds of the {profile:?} profile");
}

/// Runs seeds `0..seeds` and counts those caught by a safety violation (not liveness).
fn catches(bug: PlantedBug, profile: Profile, seeds: u64) -> u64 {
    let options = SimOptions { profile, trace: false, planted_bug: Some(bug) };
    (0..seeds)
        .filter(|seed| run_seed(*seed, &options).violation.is_some_and(|v| v.kind != "liveness"))
        .count() as u64
}

fn assert_rate(bug: PlantedBug, profile: Profile, seeds: u64, min_caught: u64) {
    let caught = catches(bug, profile, seeds);
    eprintln!("{bug:?} caught in {caught} of {seeds} seeds of the {profile:?} profile");
    assert!(
        caught >= min_caught,
        "{bug:?} caught in only {caught} of {seeds} seeds of {profile:?} (at least {min_caught} expected)"
    );
}

/// Figure 8 (§5.4.2): committing an earlier term's entry by counting replicas.
#[test]
fn commit_previous_term_by_count_is_caught_at_its_rate() {
    assert_rate(PlantedBug::CommitPreviousTermByCount, Profile::Figure8, FIGURE_8_SEEDS, FIGURE_8_MIN);
}

/// The classic Figure 2 bug: a follower commits up to min(leaderCommit, lastIndex).
#[test]
fn follower_commit_to_last_index_is_caught_at_its_rate() {
    assert_rate(PlantedBug::FollowerCommitToLastIndex, Profile::StaleTail, STALE_TAIL_SEEDS, STALE_TAIL_MIN);
}

/// A leader counting its own entries towards a quorum before they are durable.
#[test]
fn leader_counts_unsynced_self_is_caught_at_its_rate() {
    assert_rate(PlantedBug::LeaderCountsUnsyncedSelf, Profile::UnsyncedLeader, UNSYNCED_SEEDS, UNSYNCED_MIN);
}

#[test]
fn vote_before_durable_is_caught() {
    let (seed, v) = first_catch(PlantedBug::VoteBeforeDurable, Profile::LeaderChurn);
    eprintln!("caught at seed {seed}: {v}");
}

#[test]
fn truncate_matching_prefix_is_caught() {
    let (seed, v) = first_catch(PlantedBug::TruncateMatchingPrefix, Profile::Mixed);
    eprintln!("caught at seed {seed}: {v}");
}

#[test]
fn skip_up_to_date_check_is_caught() {
    let (seed, v) = first_catch(PlantedBug::SkipUpToDateCheck, Profile::Mixed);
    eprintln!("caught at seed {seed}: {v}");
}

#[test]
fn no_planted_bug_means_no_violation_in_the_same_seeds() {
    // The same seeds and profiles with the switch off pass: what the tests above catch is the
    // planted bug, not noise.
    for profile in Profile::ALL {
        for seed in 0..50 {
            let o = run_seed(seed, &SimOptions { profile, ..SimOptions::default() });
            assert!(o.violation.is_none(), "seed {seed} {profile:?}: {:?}", o.violation);
        }
    }
}
