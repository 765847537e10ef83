//! `raftkv-sim`: run, replay and soak the deterministic simulator.

use std::process::ExitCode;
use std::time::{Duration, Instant};

use clap::{Parser, Subcommand};
use raftkv_sim::{Outcome, Plant, Profile, SimOptions, replay_command, run_seed, run_seeds, run_sweep};

#[derive(Parser)]
#[command(name = "raftkv-sim", about = "Deterministic simulator for the raftkv member runtime")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(clap::Args, Clone)]
struct Common {
    /// Fault mix to draw each seed's parameters from: mixed, leader-churn, figure-8,
    /// stale-tail, unsynced-leader, reads, snapshot-tail, disk-errors, membership (membership
    /// changes under the mixed faults), member-barrier, member-burst, member-add,
    /// member-remove or member-transfer.
    #[arg(long, default_value = "mixed")]
    profile: Profile,
    /// Plant a known bug (needs --features planted-bugs). In every core:
    /// commit-previous-term-by-count, vote-before-durable, truncate-matching-prefix,
    /// skip-up-to-date-check, follower-commit-to-last-index, leader-counts-unsynced-self,
    /// no-current-term-barrier, two-changes-in-flight, config-applied-at-commit,
    /// removed-member-counted, timeout-now-from-anyone.
    /// In the member runtime: serve-read-before-applied, read-context-restart, ack-before-sync,
    /// ack-despite-fsync-error, snapshot-keeps-tail, apply-before-durable.
    #[arg(long, value_parser = raftkv_sim::parse_plant)]
    plant: Option<Plant>,
    /// Members apply commands to the server's key-value state machine (raftkv-kvsm's
    /// KvMachine: puts through the MVCC store, reads from it) instead of the registers alone.
    #[arg(long)]
    kv: bool,
}

impl Common {
    fn options(&self, trace: bool) -> SimOptions {
        SimOptions {
            profile: self.profile,
            trace,
            planted_bug: match self.plant {
                Some(Plant::Core(b)) => Some(b),
                _ => None,
            },
            driver_bug: match self.plant {
                Some(Plant::Driver(b)) => Some(b),
                _ => None,
            },
            kv_store: self.kv,
        }
    }
}

#[derive(Subcommand)]
enum Command {
    /// Run a range of seeds; exit 1 if any violates a guarantee.
    Run {
        #[arg(long, default_value_t = 200)]
        seeds: u64,
        #[arg(long, default_value_t = 0)]
        start: u64,
        /// Worker threads (default: all cores).
        #[arg(long)]
        threads: Option<usize>,
        #[command(flatten)]
        common: Common,
    },
    /// Re-run one seed exactly; with --trace, print every event.
    Replay {
        #[arg(long)]
        seed: u64,
        #[arg(long)]
        trace: bool,
        #[command(flatten)]
        common: Common,
    },
    /// Run seeds until interrupted (or --seeds), printing progress every few seconds.
    Soak {
        #[arg(long, default_value_t = 0)]
        start: u64,
        #[arg(long)]
        threads: Option<usize>,
        /// Stop after this many seeds.
        #[arg(long)]
        seeds: Option<u64>,
        #[command(flatten)]
        common: Common,
    },
}

fn threads(n: Option<usize>) -> usize {
    n.unwrap_or_else(|| std::thread::available_parallelism().map_or(2, |n| n.get()))
}

fn report_failure(o: &Outcome, options: &SimOptions) {
    if let Some(v) = &o.violation {
        println!("seed {} VIOLATION {v}", o.seed);
        println!("  replay: {}", replay_command(o.seed, options));
        println!("  trace:  {} --trace", replay_command(o.seed, options));
    }
}

fn check_plant(options: &SimOptions) -> Result<(), ExitCode> {
    if (options.planted_bug.is_some() || options.driver_bug.is_some()) && !cfg!(feature = "planted-bugs") {
        eprintln!("--plant needs a build with --features planted-bugs");
        return Err(ExitCode::from(2));
    }
    Ok(())
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Run { seeds, start, threads: t, common } => {
            let options = common.options(false);
            if let Err(code) = check_plant(&options) {
                return code;
            }
            let began = Instant::now();
            let sweep = run_sweep(start, seeds, threads(t), &options);
            let failures = sweep.failures;
            let secs = began.elapsed().as_secs_f64();
            for o in &failures {
                report_failure(o, &options);
            }
            println!(
                "{seeds} seeds ({start}..{}) in {secs:.1}s ({:.1} seeds/s): {} violation(s)",
                start + seeds,
                seeds as f64 / secs.max(1e-9),
                failures.len()
            );
            println!("{}", sweep.totals.snapshot_summary());
            println!("{}", sweep.totals.fault_summary());
            if sweep.totals.changes_proposed > 0 {
                println!("{}", sweep.totals.membership_summary());
            }
            println!(
                "{} simulated events in {secs:.1}s: {:.0} events/s",
                sweep.totals.events,
                sweep.totals.events as f64 / secs.max(1e-9)
            );
            if failures.is_empty() { ExitCode::SUCCESS } else { ExitCode::FAILURE }
        }
        Command::Replay { seed, trace, common } => {
            let options = common.options(trace);
            if let Err(code) = check_plant(&options) {
                return code;
            }
            let o = run_seed(seed, &options);
            for line in &o.trace {
                println!("{line}");
            }
            println!("seed {seed}: {:?}", o.params);
            println!(
                "seed {seed}: {} events, {:.1} virtual s, trace hash {:016x}, stats {:?}",
                o.stats.events,
                o.virtual_us as f64 / 1e6,
                o.trace_hash,
                o.stats
            );
            match &o.violation {
                Some(v) => {
                    println!("seed {seed} VIOLATION {v}");
                    if let Some(p) = &o.panic {
                        println!("  panic: {p}");
                    }
                    ExitCode::FAILURE
                }
                None => {
                    println!("seed {seed}: ok");
                    ExitCode::SUCCESS
                }
            }
        }
        Command::Soak { start, threads: t, seeds, common } => {
            let options = common.options(false);
            if let Err(code) = check_plant(&options) {
                return code;
            }
            let threads = threads(t);
            let began = Instant::now();
            let mut next = start;
            let mut done = 0u64;
            let mut violations = 0u64;
            let mut last_print = Instant::now();
            // Batches of seeds across all workers; a progress line every few seconds.
            loop {
                let remaining = seeds.map_or(u64::MAX, |s| s.saturating_sub(done));
                if remaining == 0 {
                    break;
                }
                let batch = (threads as u64 * 8).min(remaining);
                let failures = run_seeds(next, batch, threads, &options);
                for o in &failures {
                    report_failure(o, &options);
                }
                violations += failures.len() as u64;
                next += batch;
                done += batch;
                if last_print.elapsed() >= Duration::from_secs(5) {
                    last_print = Instant::now();
                    let secs = began.elapsed().as_secs_f64();
                    println!(
                        "soak: {done} seeds ({start}..{next}), {:.1} seeds/s, {violations} violation(s), {:.0}s",
                        done as f64 / secs,
                        secs
                    );
                }
            }
            let secs = began.elapsed().as_secs_f64();
            println!("soak done: {done} seeds, {:.1} seeds/s, {violations} violation(s)", done as f64 / secs);
            if violations == 0 { ExitCode::SUCCESS } else { ExitCode::FAILURE }
        }
    }
}
