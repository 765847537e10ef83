//! `raftkv-chaos`: black-box fault testing of real raftkv clusters (see docs/testing.md).

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use clap::{Parser, Subcommand};
use raftkv_chaos::check;
use raftkv_chaos::durability::{self, DurabilityConfig};
use raftkv_chaos::history;
use raftkv_chaos::leasecheck::{self, LeaseTestConfig};
use raftkv_chaos::linearizability::{Budget, Verdict};
use raftkv_chaos::nemesis::Profile;
use raftkv_chaos::runner::{self, Outcome2, RunConfig};
use raftkv_chaos::workload::WorkloadConfig;

#[derive(Parser, Debug)]
#[command(name = "raftkv-chaos", about = "Black-box fault testing of real raftkv clusters")]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(clap::Args, Debug, Clone)]
struct Common {
    /// Number of members (3 or 5 are typical).
    #[arg(long, default_value_t = 3)]
    members: usize,
    /// The raftkv binary (default: `raftkv` beside this binary).
    #[arg(long)]
    raftkv: Option<PathBuf>,
    /// Where runs keep their data dirs, member logs, history and summary.
    #[arg(long, default_value = "target/chaos")]
    out: PathBuf,
}

#[derive(clap::Args, Debug, Clone)]
struct RunArgs {
    #[command(flatten)]
    common: Common,
    /// partitions, kills-pauses, mixed, isolate-leader, none.
    #[arg(long, default_value = "mixed")]
    profile: Profile,
    /// Seed of the fault schedule and the workload's choices (default: from the clock).
    #[arg(long)]
    seed: Option<u64>,
    /// Seconds; the last 6 s are a healed quiet period.
    #[arg(long, default_value_t = 60)]
    duration: u64,
    #[arg(long, default_value_t = 10)]
    workers: usize,
    #[arg(long, default_value_t = 6)]
    keys: usize,
    /// Start members with RAFTKV_UNSAFE_STALE_READS=1 (reads without ReadIndex): the checker
    /// must then report the run as not linearizable.
    #[arg(long)]
    unsafe_stale_reads: bool,
    /// Succeed only if the verdict is invalid (for demonstrating the checker).
    #[arg(long)]
    expect_invalid: bool,
    /// Seconds the checker may spend on one key before reporting unknown.
    #[arg(long, default_value_t = 60)]
    check_seconds: u64,
    /// Also run watchers (resumed across the faults) and a compactor, and check their
    /// streams against the KV history.
    #[arg(long)]
    watch: bool,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// One run: cluster, workload, faults, heal, check, report. Exit 0 only when valid.
    Run(RunArgs),
    /// Runs until stopped (or --runs N), seed after seed, with a progress line; stops at the
    /// first run that is not valid.
    Soak {
        #[command(flatten)]
        run: RunArgs,
        /// Stop after this many runs (default: until Ctrl-C).
        #[arg(long)]
        runs: Option<u64>,
        /// Cycle through partitions, kills-pauses and mixed instead of --profile.
        #[arg(long)]
        cycle_profiles: bool,
    },
    /// Re-checks a history file.
    Check {
        history: PathBuf,
        #[arg(long, default_value_t = 60)]
        check_seconds: u64,
    },
    /// Kill -9 every member at once under continuous writes; every acknowledged write must survive.
    Durability {
        #[command(flatten)]
        common: Common,
        #[arg(long, default_value_t = 1)]
        seed: u64,
        #[arg(long, default_value_t = 3)]
        rounds: usize,
        /// Seconds of writes before each kill.
        #[arg(long, default_value_t = 4)]
        write_for: u64,
        #[arg(long, default_value_t = 8)]
        workers: usize,
    },
    /// Leases under repeated leader kills: kept-alive leases keep their keys, expired ones
    /// lose them on every member at one revision (see docs/testing.md).
    Lease {
        #[command(flatten)]
        common: Common,
        #[arg(long)]
        seed: Option<u64>,
        /// Seconds of leader kills.
        #[arg(long, default_value_t = 30)]
        duration: u64,
        /// Kept-alive leases (three keys each).
        #[arg(long, default_value_t = 4)]
        live: usize,
    },
    /// Watch and lease figures for raftkv and etcd 3.4 (one member each, in turn): event
    /// throughput and latency with 1 and 1,000 watchers, RSS of idle watchers, lease
    /// keep-alives per second, server CPU per operation.
    BenchWatch {
        /// The raftkv binary (default: `raftkv` beside this binary).
        #[arg(long)]
        raftkv: Option<PathBuf>,
        /// etcd's binary; `none` measures raftkv alone.
        #[arg(long, default_value = "etcd")]
        etcd: String,
        /// Seconds per throughput point.
        #[arg(long, default_value_t = 10)]
        duration: u64,
        #[arg(long, default_value_t = 100_000)]
        idle_watchers: usize,
        /// Leases for the keep-alive point (0 skips it).
        #[arg(long, default_value_t = 10_000)]
        leases: usize,
        /// The watch points: watchers of the writers' prefix in each.
        #[arg(long, value_delimiter = ',', default_value = "1,1000")]
        watchers: Vec<usize>,
        /// Puts per second in all in the watch points (default: as fast as answered), to
        /// compare event latency at the same write rate.
        #[arg(long)]
        put_rate: Option<u32>,
        /// raftkv's `--worker-threads` (default: its own default, one per CPU).
        #[arg(long, value_parser = clap::value_parser!(u16).range(1..))]
        worker_threads: Option<u16>,
        /// etcd's `GOMAXPROCS` (default: its own default, one per CPU).
        #[arg(long, value_parser = clap::value_parser!(u16).range(1..))]
        gomaxprocs: Option<u16>,
        /// Watchers on distinct prefixes that no write touches, held open through the watch
        /// points (what each event costs a member that holds many ranges).
        #[arg(long, default_value_t = 0)]
        held_ranges: usize,
        /// Data dirs and member logs.
        #[arg(long, default_value = "target/bench-watch")]
        out: PathBuf,
    },
    /// Rolling restart under steady writes: every member in turn stopped with SIGTERM (a
    /// leader hands over first) and restarted; reports the longest time without a
    /// successful write around each restart, then the catch-up time of a new learner. Fails
    /// when a leader's restart left writes stalled for --max-gap-ms or more (raftkv only).
    RollingRestart {
        #[command(flatten)]
        common: Common,
        /// Run this etcd binary instead of raftkv (e.g. /usr/bin/etcd), for comparison.
        #[arg(long)]
        etcd: Option<PathBuf>,
        /// kill -9 instead of SIGTERM.
        #[arg(long)]
        kill: bool,
        #[arg(long, default_value_t = 8)]
        writers: usize,
        #[arg(long, default_value_t = 1)]
        rounds: usize,
        /// Keys written first (snapshots every 5,000 entries); 0 skips the new learner.
        #[arg(long, default_value_t = 20_000)]
        preload: usize,
        /// The longest acceptable write gap when the leader is restarted (the election
        /// timeout is 1,000 ms).
        #[arg(long, default_value_t = 500)]
        max_gap_ms: u64,
    },
    /// Leadership transfer time under write load: MoveLeader to the next member, again and
    /// again, on 3 members; prints the call time, the time until the target leads and the
    /// longest write gap around each transfer (median, p99, max). Needs root.
    BenchTransfer {
        #[command(flatten)]
        common: Common,
        /// Run this etcd binary instead of raftkv (e.g. /usr/bin/etcd), for comparison.
        #[arg(long)]
        etcd: Option<PathBuf>,
        #[arg(long, default_value_t = 256)]
        writers: usize,
        #[arg(long, default_value_t = 100)]
        transfers: usize,
    },
    /// A put and a get through the given endpoints (for checking a deployed cluster).
    Smoke {
        /// Comma-separated client URLs, e.g. http://127.0.0.1:2379,http://127.0.0.1:22379
        #[arg(long)]
        endpoints: String,
    },
    /// Removes namespaces, links and members left behind by a runner that was killed.
    Cleanup,
}

fn binary(c: &Common) -> Result<PathBuf, String> {
    let p = match &c.raftkv {
        Some(p) => p.clone(),
        None => std::env::current_exe().map_err(|e| e.to_string())?.with_file_name("raftkv"),
    };
    if !p.exists() {
        return Err(format!(
            "{} not found: build it with `cargo build --release -p raftkv` or pass --raftkv",
            p.display()
        ));
    }
    std::fs::canonicalize(&p).map_err(|e| e.to_string())
}

fn run_config(a: &RunArgs, seed: u64, quiet: bool) -> Result<RunConfig, String> {
    Ok(RunConfig {
        profile: a.profile,
        seed,
        duration: Duration::from_secs(a.duration.max(15)),
        members: a.common.members,
        binary: binary(&a.common)?,
        out: std::path::absolute(&a.common.out).map_err(|e| e.to_string())?,
        workload: WorkloadConfig { workers: a.workers, keys: a.keys, ..Default::default() },
        unsafe_stale_reads: a.unsafe_stale_reads,
        check_budget: Budget { max_steps: 50_000_000, max_time: Duration::from_secs(a.check_seconds) },
        quiet,
        watch: a.watch,
    })
}

fn seed_now() -> u64 {
    history::unix_ms() % 1_000_000
}

async fn main_async(cli: Cli) -> Result<ExitCode, String> {
    match cli.command {
        Cmd::Run(a) => {
            let cfg = run_config(&a, a.seed.unwrap_or_else(seed_now), false)?;
            let r = runner::run(cfg.clone()).await?;
            let summary =
                std::fs::read_to_string(r.history.with_file_name("summary.txt")).unwrap_or_default();
            print!("{summary}");
            if a.expect_invalid {
                return Ok(if r.outcome == Outcome2::Invalid {
                    println!("expected: not linearizable, and it was");
                    ExitCode::SUCCESS
                } else {
                    println!("expected the checker to report not linearizable, but it did not");
                    ExitCode::FAILURE
                });
            }
            Ok(ExitCode::from(r.outcome.exit_code()))
        }
        Cmd::Soak { run, runs, cycle_profiles } => {
            let start_seed = run.seed.unwrap_or_else(seed_now);
            let started = Instant::now();
            let mut done = 0u64;
            let profiles = [Profile::Partitions, Profile::KillsPauses, Profile::Mixed];
            let (mut ops, mut unknown, mut changes) = (0usize, 0usize, 0usize);
            loop {
                if runs.is_some_and(|n| done >= n) {
                    break;
                }
                let mut a = run.clone();
                if cycle_profiles {
                    a.profile = profiles[(done % 3) as usize];
                }
                let seed = start_seed + done;
                let cfg = run_config(&a, seed, true)?;
                let r = runner::run(cfg).await?;
                done += 1;
                let s = &r.report.stats;
                ops += s.ops.values().sum::<usize>();
                unknown += s.count(raftkv_chaos::history::Outcome::Unknown);
                changes += s.leader_changes;
                println!(
                    "soak: {done} runs in {:.0} s | last: {} seed {seed} {:?} | {ops} ops ({unknown} unknown), {changes} leader changes",
                    started.elapsed().as_secs_f64(),
                    a.profile,
                    r.outcome
                );
                if r.outcome != Outcome2::Valid {
                    print!(
                        "{}",
                        std::fs::read_to_string(r.history.with_file_name("summary.txt")).unwrap_or_default()
                    );
                    return Ok(ExitCode::from(r.outcome.exit_code()));
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Check { history: path, check_seconds } => {
            let records = history::load(&path)?;
            let budget = Budget { max_steps: 50_000_000, max_time: Duration::from_secs(check_seconds) };
            let report = check::check(&records, budget, Duration::from_secs(30));
            for k in &report.keys {
                println!("{:<4} {:>6} ops  {:?}", k.key, k.ops, k.verdict);
                for (op, kept) in &k.witness {
                    println!("      {op} {kept:?}");
                }
            }
            for a in &report.revision_anomalies {
                println!("REVISION ANOMALY: {a}");
            }
            let watch = raftkv_chaos::watchcheck::check(&records);
            if watch.watchers > 0 {
                println!(
                    "watchers: {} ({} streams, {} events, {} confirmed the final revision)",
                    watch.watchers, watch.streams, watch.events, watch.confirmed
                );
            }
            for a in &watch.anomalies {
                println!("WATCH ANOMALY: {a}");
            }
            Ok(if report.invalid() || watch.invalid() {
                ExitCode::from(1)
            } else if report.keys.iter().any(|k| matches!(k.verdict, Verdict::Unknown { .. })) {
                ExitCode::from(2)
            } else {
                ExitCode::SUCCESS
            })
        }
        Cmd::Durability { common, seed, rounds, write_for, workers } => {
            let ok = durability::run(DurabilityConfig {
                seed,
                members: common.members,
                rounds,
                write_for: Duration::from_secs(write_for),
                workers,
                binary: binary(&common)?,
                out: std::path::absolute(&common.out).map_err(|e| e.to_string())?,
            })
            .await?;
            Ok(if ok { ExitCode::SUCCESS } else { ExitCode::FAILURE })
        }
        Cmd::Lease { common, seed, duration, live } => {
            let cfg = LeaseTestConfig {
                seed: seed.unwrap_or_else(seed_now),
                members: common.members,
                duration: Duration::from_secs(duration.max(5)),
                binary: binary(&common)?,
                out: std::path::absolute(&common.out).map_err(|e| e.to_string())?,
                live,
                live_ttl: 6,
                expiring_ttl: 2,
            };
            let r = leasecheck::run(cfg.clone()).await?;
            let dir = cfg.out.join(format!("lease-seed{}", cfg.seed));
            print!("{}", std::fs::read_to_string(dir.join("summary.txt")).unwrap_or_default());
            let bit = r.leader_changes > 0 && r.expired_checked > 0 && r.live_checked > 0;
            Ok(if !r.valid() {
                ExitCode::from(1)
            } else if !bit {
                println!("SUSPECT: no leader change, or nothing was checked");
                ExitCode::from(3)
            } else {
                ExitCode::SUCCESS
            })
        }
        Cmd::BenchWatch {
            raftkv,
            etcd,
            duration,
            idle_watchers,
            leases,
            watchers,
            put_rate,
            worker_threads,
            gomaxprocs,
            held_ranges,
            out,
        } => {
            let common = Common { members: 1, raftkv, out: out.clone() };
            let cfg = raftkv_chaos::watchbench::BenchConfig {
                raftkv: binary(&common)?,
                etcd: (etcd != "none").then(|| PathBuf::from(etcd)),
                duration: Duration::from_secs(duration.max(1)),
                out: std::path::absolute(&out).map_err(|e| e.to_string())?,
                idle_watchers,
                leases,
                watchers,
                put_rate: put_rate.filter(|r| *r > 0),
                worker_threads: worker_threads.map(usize::from),
                gomaxprocs: gomaxprocs.map(usize::from),
                held_ranges,
            };
            print!("{}", raftkv_chaos::watchbench::run(cfg).await?);
            Ok(ExitCode::SUCCESS)
        }
        Cmd::RollingRestart { common, etcd, kill, writers, rounds, preload, max_gap_ms } => {
            let binary = match &etcd {
                Some(e) => std::fs::canonicalize(e).map_err(|err| format!("{}: {err}", e.display()))?,
                None => binary(&common)?,
            };
            let cfg = raftkv_chaos::rolling::RollingConfig {
                members: common.members,
                binary,
                etcd: etcd.is_some(),
                out: std::path::absolute(&common.out).map_err(|e| e.to_string())?,
                graceful: !kill,
                writers: writers.max(1),
                preload,
                rounds: rounds.max(1),
            };
            let r = raftkv_chaos::rolling::run(cfg.clone()).await?;
            print!("{}", r.render(&cfg));
            match r.leader_max_gap_ms() {
                Some(g) if etcd.is_none() && !kill && g >= max_gap_ms => {
                    println!(
                        "FAIL: writes stalled {g} ms when the leader was restarted (limit {max_gap_ms} ms)"
                    );
                    Ok(ExitCode::FAILURE)
                }
                None if etcd.is_none() => {
                    println!("SUSPECT: the leader was never restarted");
                    Ok(ExitCode::from(3))
                }
                _ => Ok(ExitCode::SUCCESS),
            }
        }
        Cmd::BenchTransfer { common, etcd, writers, transfers } => {
            let binary = match &etcd {
                Some(e) => std::fs::canonicalize(e).map_err(|err| format!("{}: {err}", e.display()))?,
                None => binary(&common)?,
            };
            let cfg = raftkv_chaos::transferbench::TransferConfig {
                binary,
                etcd: etcd.is_some(),
                out: std::path::absolute(&common.out).map_err(|e| e.to_string())?,
                writers: writers.max(1),
                transfers: transfers.max(1),
            };
            let r = raftkv_chaos::transferbench::run(cfg.clone()).await?;
            print!("{}", r.render(&cfg));
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Smoke { endpoints } => {
            let eps: Vec<String> = endpoints.split(',').map(|s| s.trim().to_string()).collect();
            runner::wait_ready(&eps, Duration::from_secs(60)).await?;
            raftkv_chaos::runner::smoke(&eps).await?;
            println!("smoke: put and get through {} agree", eps.join(","));
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Cleanup => {
            for r in raftkv_chaos::cluster::cleanup_leftovers() {
                println!("removed {r}");
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let rt = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("raftkv-chaos: {e}");
            return ExitCode::from(4);
        }
    };
    // Ctrl-C or SIGTERM drops the run, whose cluster then stops its members and removes its
    // namespaces.
    let result = rt.block_on(async {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .map_err(|e| e.to_string())?;
        tokio::select! {
            r = main_async(cli) => r,
            _ = tokio::signal::ctrl_c() => Err("interrupted; cleaned up".to_string()),
            _ = term.recv() => Err("terminated; cleaned up".to_string()),
        }
    });
    rt.shutdown_timeout(Duration::from_secs(2));
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("raftkv-chaos: {e}");
            ExitCode::from(4)
        }
    }
}
