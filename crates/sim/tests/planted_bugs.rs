//! The checkers can fail: each known bug, planted in every core, is caught by the same
//! checkers as the sweep within a fixed seed budget. Needs `--features planted-bugs`.
#![cfg(feature = "planted-bugs")]

use raftkv_sim::{PlantedBug, Profile, SimOptions, run_seed};

/// Seeds tried per bug; each must be caught well within it.
const BUDGET: u64 = 300;

/// Runs seeds from 0 until one reports a safety violation (a liveness failure alone does not
/// count: the bug must break a guarantee). Returns the seed and the violation.
fn first_catch(bug: PlantedBug, profile: Profile) -> (u64, String) {
    let options = SimOptions { profile, planted_bug: Some(bug), ..SimOptions::default() };
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

#[test]
fn commit_previous_term_by_count_is_caught() {
    let (seed, v) = first_catch(PlantedBug::CommitPreviousTermByCount, Profile::LeaderChurn);
    eprintln!("caught at seed {seed}: {v}");
    assert!(
        v.contains("leader completeness") || v.contains("state machine") || v.contains("committed"),
        "{v}"
    );
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
    for profile in [Profile::Mixed, Profile::LeaderChurn] {
        for seed in 0..50 {
            let o = run_seed(seed, &SimOptions { profile, ..SimOptions::default() });
            assert!(o.violation.is_none(), "seed {seed} {profile:?}: {:?}", o.violation);
        }
    }
}
