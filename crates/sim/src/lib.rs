//! # raftkv-sim: the deterministic simulator that proves the member runtime
//!
//! An in-process cluster of 3, 5 or 7 members, each the runtime the server ships
//! (`raftkv-node`'s `Driver`, `DiskWorker`, `Applier` and `recover` over the storage crate's
//! real log and snapshot files on its own fault-injecting `SimFs`), driven by one `u64` seed
//! in virtual time. The seed picks the cluster size and a fault mix (swarm testing, see
//! [`Params`]): message delay, loss, duplication and reordering; symmetric, asymmetric and
//! leader-isolating partitions that heal; crashes that lose every write not yet synced (or
//! tear the one in progress) and restarts from the files alone; write/fsync errors;
//! snapshots and InstallSnapshot. Clients send commands and reads to members, whose drivers
//! propose, forward or park them. After every step the checkers in [`check`] verify
//! Election Safety, Leader Append-Only, Log Matching, Leader Completeness, State Machine
//! Safety and exactly-once, in-order application of acknowledged commands. A final liveness
//! phase heals everything and requires a fresh command to commit within a deadline.
//!
//! With a membership profile a nemesis also changes the cluster's membership while the
//! faults go on (fresh members with empty disks added as learners or voters, members removed
//! or replaced, learners promoted, leadership transferred), and further checkers require
//! every commit decision to be backed by a quorum of the configuration in force (both, when
//! joint), the one-change-at-a-time rules, removed members to stop and never lead again, and
//! the final membership to be what the applied changes say.
//!
//! Nothing here reads the clock, uses a global random generator or iterates a hash map: the
//! same seed gives the same trace, event for event.
//!
//! ```
//! let outcome = raftkv_sim::run_seed(42, &raftkv_sim::SimOptions::default());
//! assert!(outcome.violation.is_none(), "{:?}", outcome.violation);
//! ```

pub mod check;
pub mod machine;
pub mod params;
pub mod plant;
pub mod rng;
mod sim;
pub mod snapstream;
pub mod trace;

use std::cell::{Cell, RefCell};
use std::sync::Once;

pub use check::Violation;
pub use params::{Params, Profile};
pub use plant::{DriverBug, Plant, parse_plant};
pub use raftkv_raft::PlantedBug;
pub use sim::{Outcome, Sim, SimOptions, Stats};

/// Runs one seed to completion (or to its first violation).
pub fn run_seed(seed: u64, options: &SimOptions) -> Outcome {
    install_panic_hook();
    Sim::new(seed, options.clone()).run()
}

/// Runs seeds `start..start + count` and returns the failing outcomes, in seed order.
/// `threads` workers take seeds from a shared counter; results do not depend on it.
pub fn run_seeds(start: u64, count: u64, threads: usize, options: &SimOptions) -> Vec<Outcome> {
    run_sweep(start, count, threads, options).failures
}

/// The result of a range of seeds.
pub struct Sweep {
    /// The failing outcomes, in seed order.
    pub failures: Vec<Outcome>,
    /// Every run's counters added up.
    pub totals: Stats,
}

/// Like [`run_seeds`], also adding up every run's counters.
pub fn run_sweep(start: u64, count: u64, threads: usize, options: &SimOptions) -> Sweep {
    let next = std::sync::atomic::AtomicU64::new(start);
    let end = start.saturating_add(count);
    let failures = std::sync::Mutex::new(Vec::new());
    let totals = std::sync::Mutex::new(Stats::default());
    std::thread::scope(|s| {
        for _ in 0..threads.max(1) {
            s.spawn(|| {
                loop {
                    let seed = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    if seed >= end {
                        break;
                    }
                    let outcome = run_seed(seed, options);
                    totals.lock().unwrap_or_else(|e| e.into_inner()).add(&outcome.stats);
                    if outcome.violation.is_some() {
                        failures.lock().unwrap_or_else(|e| e.into_inner()).push(outcome);
                    }
                }
            });
        }
    });
    let mut failures = failures.into_inner().unwrap_or_else(|e| e.into_inner());
    failures.sort_by_key(|o| o.seed);
    Sweep { failures, totals: totals.into_inner().unwrap_or_else(|e| e.into_inner()) }
}

/// The command that replays one seed exactly.
pub fn replay_command(seed: u64, options: &SimOptions) -> String {
    let mut cmd = String::from("cargo run --release -p raftkv-sim");
    if options.planted_bug.is_some() || options.driver_bug.is_some() {
        cmd.push_str(" --features planted-bugs");
    }
    cmd.push_str(&format!(" -- replay --seed {seed}"));
    if options.profile != Profile::Mixed {
        cmd.push_str(&format!(" --profile {}", options.profile.name()));
    }
    if let Some(bug) = options.planted_bug {
        cmd.push_str(&format!(" --plant {}", bug_name(bug)));
    }
    if let Some(bug) = options.driver_bug {
        cmd.push_str(&format!(" --plant {}", bug.name()));
    }
    if options.kv_store {
        cmd.push_str(" --kv");
    }
    cmd
}

/// The command-line name of a planted bug.
pub fn bug_name(bug: PlantedBug) -> &'static str {
    match bug {
        PlantedBug::CommitPreviousTermByCount => "commit-previous-term-by-count",
        PlantedBug::VoteBeforeDurable => "vote-before-durable",
        PlantedBug::TruncateMatchingPrefix => "truncate-matching-prefix",
        PlantedBug::SkipUpToDateCheck => "skip-up-to-date-check",
        PlantedBug::FollowerCommitToLastIndex => "follower-commit-to-last-index",
        PlantedBug::LeaderCountsUnsyncedSelf => "leader-counts-unsynced-self",
        PlantedBug::NoCurrentTermBarrier => "no-current-term-barrier",
        PlantedBug::TwoChangesInFlight => "two-changes-in-flight",
        PlantedBug::ConfigAppliedAtCommit => "config-applied-at-commit",
        PlantedBug::RemovedMemberCounted => "removed-member-counted",
        PlantedBug::TimeoutNowFromAnyone => "timeout-now-from-anyone",
    }
}

/// Parses a planted bug's command-line name.
pub fn parse_bug(name: &str) -> Result<PlantedBug, String> {
    [
        PlantedBug::CommitPreviousTermByCount,
        PlantedBug::VoteBeforeDurable,
        PlantedBug::TruncateMatchingPrefix,
        PlantedBug::SkipUpToDateCheck,
        PlantedBug::FollowerCommitToLastIndex,
        PlantedBug::LeaderCountsUnsyncedSelf,
        PlantedBug::NoCurrentTermBarrier,
        PlantedBug::TwoChangesInFlight,
        PlantedBug::ConfigAppliedAtCommit,
        PlantedBug::RemovedMemberCounted,
        PlantedBug::TimeoutNowFromAnyone,
    ]
    .into_iter()
    .find(|b| bug_name(*b) == name)
    .ok_or_else(|| format!("unknown planted bug {name:?}"))
}

thread_local! {
    static QUIET: Cell<bool> = const { Cell::new(false) };
    static LAST_PANIC: RefCell<Option<String>> = const { RefCell::new(None) };
}

/// A panic inside a simulation step is a finding, not noise: the hook keeps its message (with
/// its location) for the report instead of printing it. Panics elsewhere print as usual.
fn install_panic_hook() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        let default = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            if QUIET.with(Cell::get) {
                let location = info.location().map(|l| format!(" at {l}")).unwrap_or_default();
                let payload = info
                    .payload()
                    .downcast_ref::<&str>()
                    .map(|s| s.to_string())
                    .or_else(|| info.payload().downcast_ref::<String>().cloned())
                    .unwrap_or_else(|| "panic".to_string());
                LAST_PANIC.with(|p| *p.borrow_mut() = Some(format!("{payload}{location}")));
            } else {
                default(info);
            }
        }));
    });
}

pub(crate) fn quiet_panics(on: bool) {
    QUIET.with(|q| q.set(on));
}

pub(crate) fn take_panic_message(payload: Box<dyn std::any::Any + Send>) -> String {
    LAST_PANIC.with(|p| p.borrow_mut().take()).unwrap_or_else(|| {
        payload
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| payload.downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "panic".to_string())
    })
}
