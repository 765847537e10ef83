//! The checkers can fail, at a known rate: each planted bug (in the core or in the member
//! runtime, `raftkv_node::DriverBug`) has a targeted profile and must be caught by a safety checker in at least a
//! minimum number of a fixed range of seeds. The measured rates (over the whole range) are in
//! docs/testing.md; the minimums here are set well below them. The same seeds and profiles
//! with nothing planted must pass. Needs `--features planted-bugs`.
#![cfg(feature = "planted-bugs")]

use raftkv_sim::{DriverBug, Plant, PlantedBug, Profile, SimOptions, replay_command, run_seed};

/// The core's targeted profiles: seed ranges and minimum catches (docs/testing.md has the
/// measured rates).
const FIG8_SEEDS: u64 = 400;
const FIG8_MIN: u64 = 12;
const STALE_SEEDS: u64 = 200;
const STALE_MIN: u64 = 70;
const UNSYNCED_SEEDS: u64 = 300;
const UNSYNCED_MIN: u64 = 150;
/// The rest of the minimums (measured: 148 of 300, 206 of 500, 71 of 1,000, 300 of 300).
const TRUNCATE_MIN: u64 = 74;
const SKIP_MIN: u64 = 100;
const KEEPS_TAIL_MIN: u64 = 40;
const APPLY_EARLY_MIN: u64 = 150;
/// The membership bugs' targeted profiles: seeds `0..MEMBER_SEEDS` each (measured catches in
/// docs/testing.md: 100, 99, 99, 83 and 100 of 100).
const MEMBER_SEEDS: u64 = 100;

/// One planted bug, where to look for it, and how often it must be caught.
struct Target {
    plant: Plant,
    profile: Profile,
    /// Seeds `0..seeds` are the fixed range.
    seeds: u64,
    /// Caught (a safety violation, not a liveness failure) in at least this many of them.
    min_caught: u64,
    /// Members apply commands to the server's key-value state machine (`--kv`).
    kv: bool,
}

fn options(plant: Option<Plant>, profile: Profile, kv: bool) -> SimOptions {
    SimOptions {
        profile,
        kv_store: kv,
        planted_bug: match plant {
            Some(Plant::Core(b)) => Some(b),
            _ => None,
        },
        driver_bug: match plant {
            Some(Plant::Driver(b)) => Some(b),
            _ => None,
        },
        ..SimOptions::default()
    }
}

/// Runs the target's seeds in order until `min_caught` of them reported a safety violation
/// (stopping early keeps the test fast; the full-range rate is measured with
/// `raftkv-sim run --seeds N --profile P --plant B`). Fails if the range ends first.
fn assert_catch_rate(t: &Target) {
    let opts = options(Some(t.plant), t.profile, t.kv);
    let mut caught = Vec::new();
    for seed in 0..t.seeds {
        let o = run_seed(seed, &opts);
        if let Some(v) = o.violation
            && v.kind != "liveness"
            && v.kind != "event budget"
        {
            caught.push((seed, v.to_string()));
            if caught.len() as u64 >= t.min_caught {
                let (first, v) = &caught[0];
                eprintln!(
                    "{} ({}{}): {} caught by seed {seed}; first at seed {first}: {v}\n  replay: {}",
                    t.plant.name(),
                    t.profile.name(),
                    kv_note(t.kv),
                    caught.len(),
                    replay_command(*first, &opts)
                );
                return;
            }
        }
    }
    panic!(
        "{} caught in only {} of {} seeds of the {} profile{} (at least {} required): {:?}",
        t.plant.name(),
        caught.len(),
        t.seeds,
        t.profile.name(),
        kv_note(t.kv),
        t.min_caught,
        caught
    );
}

fn kv_note(kv: bool) -> &'static str {
    if kv { ", key-value state machine" } else { "" }
}

macro_rules! catch_rate_tests {
    (kv: $kv:expr; $($name:ident: $plant:expr, $profile:expr, $seeds:expr, $min:expr;)*) => {
        $(
            #[test]
            fn $name() {
                assert_catch_rate(&Target { plant: $plant, profile: $profile, seeds: $seeds, min_caught: $min, kv: $kv });
            }
        )*
    };
}

catch_rate_tests! {
    kv: false;
    // Measured over the whole range on the member runtime (docs/testing.md): 15, 142, 300, 46,
    // 148, 206, 198, 18, 200, 324, 71, 300.
    commit_previous_term_by_count: Plant::Core(PlantedBug::CommitPreviousTermByCount), Profile::Figure8, FIG8_SEEDS, FIG8_MIN;
    follower_commit_to_last_index: Plant::Core(PlantedBug::FollowerCommitToLastIndex), Profile::StaleTail, STALE_SEEDS, STALE_MIN;
    leader_counts_unsynced_self: Plant::Core(PlantedBug::LeaderCountsUnsyncedSelf), Profile::UnsyncedLeader, UNSYNCED_SEEDS, UNSYNCED_MIN;
    vote_before_durable: Plant::Core(PlantedBug::VoteBeforeDurable), Profile::LeaderChurn, 500, 24;
    truncate_matching_prefix: Plant::Core(PlantedBug::TruncateMatchingPrefix), Profile::Mixed, 300, TRUNCATE_MIN;
    skip_up_to_date_check: Plant::Core(PlantedBug::SkipUpToDateCheck), Profile::Mixed, 500, SKIP_MIN;
    serve_read_before_applied: Plant::Driver(DriverBug::ServeReadBeforeApplied), Profile::Reads, 200, 100;
    read_context_restart: Plant::Driver(DriverBug::ReadContextRestart), Profile::Reads, 1000, 9;
    ack_before_sync: Plant::Driver(DriverBug::AckBeforeSync), Profile::LeaderChurn, 200, 100;
    ack_despite_fsync_error: Plant::Driver(DriverBug::AckDespiteFsyncError), Profile::DiskErrors, 500, 150;
    snapshot_keeps_tail: Plant::Driver(DriverBug::SnapshotKeepsTail), Profile::SnapshotTail, 1000, KEEPS_TAIL_MIN;
    apply_before_durable: Plant::Driver(DriverBug::ApplyBeforeDurable), Profile::UnsyncedLeader, UNSYNCED_SEEDS, APPLY_EARLY_MIN;
    // Membership changes in the simulator (measured: 100, 99, 99, 83, 100 of 100).
    no_current_term_barrier: Plant::Core(PlantedBug::NoCurrentTermBarrier), Profile::MemberBarrier, MEMBER_SEEDS, 50;
    two_changes_in_flight: Plant::Core(PlantedBug::TwoChangesInFlight), Profile::MemberBurst, MEMBER_SEEDS, 50;
    config_applied_at_commit: Plant::Core(PlantedBug::ConfigAppliedAtCommit), Profile::MemberAdd, MEMBER_SEEDS, 45;
    removed_member_counted: Plant::Core(PlantedBug::RemovedMemberCounted), Profile::MemberRemove, MEMBER_SEEDS, 40;
    timeout_now_from_anyone: Plant::Core(PlantedBug::TimeoutNowFromAnyone), Profile::MemberTransfer, MEMBER_SEEDS, 45;
}

catch_rate_tests! {
    kv: true;
    // On the server's key-value state machine (`--kv`), minimums at about half the catches
    // measured over the range (docs/testing.md). The two rare runtime bugs use the first
    // 150 and 250 seeds of their profile's range (6 and 18 catches there) to keep the test
    // short.
    serve_read_before_applied_kv: Plant::Driver(DriverBug::ServeReadBeforeApplied), Profile::Reads, 200, 98;
    read_context_restart_kv: Plant::Driver(DriverBug::ReadContextRestart), Profile::Reads, 150, 3;
    ack_before_sync_kv: Plant::Driver(DriverBug::AckBeforeSync), Profile::LeaderChurn, 200, 100;
    ack_despite_fsync_error_kv: Plant::Driver(DriverBug::AckDespiteFsyncError), Profile::DiskErrors, 500, 157;
    snapshot_keeps_tail_kv: Plant::Driver(DriverBug::SnapshotKeepsTail), Profile::SnapshotTail, 250, 9;
    apply_before_durable_kv: Plant::Driver(DriverBug::ApplyBeforeDurable), Profile::UnsyncedLeader, UNSYNCED_SEEDS, 150;
    follower_commit_to_last_index_kv: Plant::Core(PlantedBug::FollowerCommitToLastIndex), Profile::StaleTail, STALE_SEEDS, 73;
    leader_counts_unsynced_self_kv: Plant::Core(PlantedBug::LeaderCountsUnsyncedSelf), Profile::UnsyncedLeader, UNSYNCED_SEEDS, 150;
    vote_before_durable_kv: Plant::Core(PlantedBug::VoteBeforeDurable), Profile::LeaderChurn, 500, 24;
    truncate_matching_prefix_kv: Plant::Core(PlantedBug::TruncateMatchingPrefix), Profile::Mixed, 300, 73;
    config_applied_at_commit_kv: Plant::Core(PlantedBug::ConfigAppliedAtCommit), Profile::MemberAdd, MEMBER_SEEDS, 49;
    removed_member_counted_kv: Plant::Core(PlantedBug::RemovedMemberCounted), Profile::MemberRemove, MEMBER_SEEDS, 42;
}

/// With nothing planted, the targeted profiles pass: seeds 0..500 of each here (to keep the
/// test run short; the whole ranges were run clean with `raftkv-sim run`, see
/// docs/testing.md); the mixed and leader-churn ranges are covered by the sweep tests.
fn assert_clean(profile: Profile, seeds: std::ops::Range<u64>) {
    assert_clean_with(profile, seeds, false);
}

fn assert_clean_with(profile: Profile, seeds: std::ops::Range<u64>, kv: bool) {
    let opts = options(None, profile, kv);
    for seed in seeds {
        let o = run_seed(seed, &opts);
        assert!(
            o.violation.is_none(),
            "seed {seed} {}: {:?}\n  replay: {}",
            profile.name(),
            o.violation,
            replay_command(seed, &opts)
        );
    }
}

#[test]
fn no_planted_bug_reads_seeds_000_249() {
    assert_clean(Profile::Reads, 0..250);
}

#[test]
fn no_planted_bug_reads_seeds_250_499() {
    assert_clean(Profile::Reads, 250..500);
}

#[test]
fn no_planted_bug_snapshot_tail_seeds_000_249() {
    assert_clean(Profile::SnapshotTail, 0..250);
}

#[test]
fn no_planted_bug_snapshot_tail_seeds_250_499() {
    assert_clean(Profile::SnapshotTail, 250..500);
}

#[test]
fn no_planted_bug_disk_errors_seeds_000_499() {
    assert_clean(Profile::DiskErrors, 0..500);
}

/// The membership profiles pass their catch-rate ranges with nothing planted.
#[test]
fn no_planted_bug_member_barrier_and_burst_seeds_000_099() {
    assert_clean(Profile::MemberBarrier, 0..MEMBER_SEEDS);
    assert_clean(Profile::MemberBurst, 0..MEMBER_SEEDS);
}

#[test]
fn no_planted_bug_member_add_and_remove_seeds_000_099() {
    assert_clean(Profile::MemberAdd, 0..MEMBER_SEEDS);
    assert_clean(Profile::MemberRemove, 0..MEMBER_SEEDS);
}

#[test]
fn no_planted_bug_member_transfer_seeds_000_099() {
    assert_clean(Profile::MemberTransfer, 0..MEMBER_SEEDS);
}

/// With nothing planted, the targeted profiles pass on the key-value state machine too:
/// `disk-errors`, `unsynced-leader`, `member-add` and `member-remove` over their whole
/// ranges, the first 50 seeds of `reads` and `snapshot-tail` and 200 of `leader-churn` (to
/// keep the test short: every targeted range, and mixed 0..500, was run clean with
/// `raftkv-sim run --kv`, see docs/testing.md; the sweep runs 250 mixed seeds with `--kv`).
#[test]
fn no_planted_bug_kv_disk_errors_seeds_000_499() {
    // Seed 286 once wrote a job queued behind a failed one (docs/testing.md).
    assert_clean_with(Profile::DiskErrors, 0..500, true);
}

#[test]
fn no_planted_bug_kv_reads_and_snapshot_tail_seeds_000_049() {
    assert_clean_with(Profile::Reads, 0..50, true);
    assert_clean_with(Profile::SnapshotTail, 0..50, true);
}

#[test]
fn no_planted_bug_kv_unsynced_leader_and_leader_churn() {
    assert_clean_with(Profile::UnsyncedLeader, 0..UNSYNCED_SEEDS, true);
    assert_clean_with(Profile::LeaderChurn, 0..200, true);
}

#[test]
fn no_planted_bug_kv_member_add_and_remove_seeds_000_099() {
    assert_clean_with(Profile::MemberAdd, 0..MEMBER_SEEDS, true);
    assert_clean_with(Profile::MemberRemove, 0..MEMBER_SEEDS, true);
}
