//! One run: a fresh cluster, the workload, the nemesis schedule, a final heal and quiet
//! period, then the checks and the report.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use raftkv_api::etcdserverpb::PutRequest;
use raftkv_api::etcdserverpb::kv_client::KvClient;

use crate::check::{self, Report};
use crate::cluster::{Cluster, ClusterSpec};
use crate::history::{Outcome, Record, Recorder};
use crate::linearizability::{Budget, Kept, Verdict};
use crate::membership::{self, MembershipReport};
use crate::nemesis::{self, Profile};
use crate::watchcheck::{self, WatchReport};
use crate::workload::{self, WorkloadConfig};

#[derive(Clone, Debug)]
pub struct RunConfig {
    pub profile: Profile,
    pub seed: u64,
    pub duration: Duration,
    pub members: usize,
    pub binary: PathBuf,
    pub out: PathBuf,
    pub workload: WorkloadConfig,
    pub unsafe_stale_reads: bool,
    pub check_budget: Budget,
    pub quiet: bool,
    /// Run watchers and a compactor beside the workload and check their streams.
    pub watch: bool,
}

/// How a run ended. Exit codes: 0 valid, 1 not linearizable, 2 checker gave up (unknown),
/// 3 suspect (the faults did not bite, or the cluster did not recover).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome2 {
    Valid,
    Invalid,
    Unknown,
    Suspect,
}

impl Outcome2 {
    pub fn exit_code(self) -> u8 {
        match self {
            Outcome2::Valid => 0,
            Outcome2::Invalid => 1,
            Outcome2::Unknown => 2,
            Outcome2::Suspect => 3,
        }
    }
}

pub struct RunResult {
    pub outcome: Outcome2,
    pub report: Report,
    /// The watch checker's report (when the run had watchers).
    pub watch: Option<WatchReport>,
    /// The membership changes and the final membership check (membership profile).
    pub membership: Option<MembershipReport>,
    pub history: PathBuf,
    pub suspect: Vec<String>,
}

/// Waits until a put through some member succeeds.
pub async fn wait_ready(endpoints: &[String], within: Duration) -> Result<(), String> {
    let deadline = Instant::now() + within;
    loop {
        for url in endpoints {
            let Ok(ch) = workload::channel(url, Duration::from_secs(2)) else { continue };
            let mut kv = KvClient::new(ch);
            let req = PutRequest { key: "chaos-ready".into(), value: "1".into(), ..Default::default() };
            if let Ok(Ok(_)) = tokio::time::timeout(Duration::from_secs(2), kv.put(req)).await {
                return Ok(());
            }
        }
        if Instant::now() > deadline {
            return Err(format!("the cluster did not accept a write within {within:?}"));
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

pub async fn run(cfg: RunConfig) -> Result<RunResult, String> {
    let dir = cfg.out.join(format!("{}-seed{}", cfg.profile, cfg.seed));
    if dir.exists() {
        std::fs::remove_dir_all(&dir).map_err(|e| format!("cannot clear {}: {e}", dir.display()))?;
    }
    std::fs::create_dir_all(&dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    let history = dir.join("history.jsonl");
    let recorder =
        Recorder::new(Some(&history)).map_err(|e| format!("cannot create the history file: {e}"))?;
    recorder.record(Record::Run {
        seed: cfg.seed,
        profile: cfg.profile.to_string(),
        members: cfg.members,
        started_unix_ms: crate::history::unix_ms(),
        command: std::env::args().collect::<Vec<_>>().join(" "),
    });
    // The membership profile keeps two spare hosts for members added during the run.
    let changes = cfg.profile == Profile::Membership;
    let spares = if changes { 2 } else { 0 };
    let plan = nemesis::schedule(cfg.profile, cfg.seed, cfg.duration, cfg.members + spares);
    let spec = ClusterSpec {
        unsafe_stale_reads: cfg.unsafe_stale_reads,
        spares,
        ..ClusterSpec::new(cfg.members, cfg.binary.clone(), dir.clone())
    };
    let (cluster, endpoints) = Cluster::launch(spec)?;
    if !cfg.quiet {
        eprintln!(
            "run: profile {} seed {} for {:?}: {} members on 10.77.{}.0/24 ({}), {} faults planned, history {}",
            cfg.profile,
            cfg.seed,
            cfg.duration,
            cfg.members,
            cluster.subnet,
            endpoints.join(" "),
            plan.len(),
            history.display()
        );
    }
    wait_ready(&endpoints, Duration::from_secs(30)).await?;
    let cluster = Arc::new(Mutex::new(cluster));
    let stop = Arc::new(AtomicBool::new(false));
    let monitor = nemesis::spawn_monitor(endpoints.clone(), recorder.clone(), stop.clone());
    let workers = tokio::spawn(workload::run(
        cfg.workload.clone(),
        endpoints.clone(),
        cfg.seed,
        recorder.clone(),
        stop.clone(),
    ));
    let watch_ctl = watchcheck::Control::default();
    let watchers = if cfg.watch {
        watchcheck::spawn(
            endpoints.clone(),
            cfg.workload.keys,
            cfg.seed,
            recorder.clone(),
            stop.clone(),
            watch_ctl.clone(),
        )
    } else {
        Vec::new()
    };
    let nem_stop = Arc::new(AtomicBool::new(false));
    let nem = tokio::spawn(nemesis::run(
        plan,
        cluster.clone(),
        monitor.current.clone(),
        recorder.clone(),
        cfg.seed,
        nem_stop.clone(),
    ));
    // Membership changes from 4 s on; none starts in the last 20 s (one may take a while).
    let mut changer = changes.then(|| {
        let ch = membership::Changer::new(cluster.clone(), monitor.current.clone(), recorder.clone());
        tokio::spawn(membership::run(
            ch,
            cfg.seed,
            Duration::from_secs(4),
            cfg.duration.saturating_sub(Duration::from_secs(20)),
            nem_stop.clone(),
        ))
    });
    let mut membership_report = None;
    let mut self_stopped = 0;
    // Progress while the run lasts; members that exit on their own are reported.
    let started = Instant::now();
    let heal_at = cfg.duration.saturating_sub(Duration::from_secs(6));
    let mut healed = false;
    let mut nem = Some(nem);
    while started.elapsed() < cfg.duration {
        tokio::time::sleep(Duration::from_millis(500)).await;
        {
            let mut c = cluster.lock().unwrap_or_else(|e| e.into_inner());
            for (i, status) in c.exited() {
                // (A removed member stopping is expected, also while its removal is under
                // way; the membership changes see to it.)
                if c.members[i].active && !c.members[i].removing {
                    self_stopped += 1;
                }
                recorder.nemesis("member-exited", format!("m{} exited on its own: {status}", i + 1));
            }
        }
        if !healed && started.elapsed() >= heal_at {
            healed = true;
            nem_stop.store(true, Ordering::Relaxed);
            if let Some(n) = nem.take() {
                match n.await {
                    Ok(Err(e)) => recorder.nemesis("nemesis-error", e),
                    Err(e) => recorder.nemesis("nemesis-error", e.to_string()),
                    Ok(Ok(())) => {}
                }
            }
            nemesis::heal_all(&mut cluster.lock().unwrap_or_else(|e| e.into_inner()), &recorder)?;
            // The change under way completes (every change retries until confirmed), then
            // every member must list the intended membership.
            if let Some(task) = changer.take() {
                match task.await {
                    Ok(mut ch) => {
                        ch.verify(Duration::from_secs(20)).await;
                        membership_report = Some(ch.report);
                    }
                    Err(e) => {
                        membership_report = Some(MembershipReport {
                            anomalies: vec![format!("the membership changes failed: {e}")],
                            ..Default::default()
                        })
                    }
                }
            }
        }
    }
    stop.store(true, Ordering::Relaxed);
    if let Some(m) = membership_report.as_mut() {
        m.self_stopped += self_stopped;
    }
    let _ = workers.await;
    if !watchers.is_empty() {
        // Every watcher must confirm the final revision (or is checked up to what it got).
        match watchcheck::current_revision(&endpoints, Duration::from_secs(10)).await {
            Some(rev) => watch_ctl.final_rev.store(rev, Ordering::Relaxed),
            None => recorder.nemesis("watch-final", "no final revision could be read".into()),
        }
        let all = futures_join(watchers);
        if tokio::time::timeout(Duration::from_secs(20), all).await.is_err() {
            recorder
                .nemesis("watch-final", "some watchers did not confirm the final revision in 20 s".into());
        }
        watch_ctl.halt.store(true, Ordering::Relaxed);
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    recorder.flush();
    cluster.lock().unwrap_or_else(|e| e.into_inner()).cleanup();
    let records = recorder.records();
    let t = Instant::now();
    let report = check::check(&records, cfg.check_budget, Duration::from_secs(30));
    let watch = cfg.watch.then(|| watchcheck::check(&records));
    if !cfg.quiet {
        eprintln!("check: {:.1} s", t.elapsed().as_secs_f64());
    }
    let s = &report.stats;
    let mut suspect = Vec::new();
    if cfg.profile != Profile::None {
        if s.count(Outcome::Fail) + s.count(Outcome::Unknown) == 0 {
            suspect.push("no operation failed or was unknown: the faults did not bite".to_string());
        }
        if s.leader_changes == 0 {
            suspect.push("no leader change observed".to_string());
        }
    }
    if s.ok_after_heal == 0 {
        suspect.push("no operation succeeded after the final heal: the cluster did not recover".to_string());
    }
    if let Some(m) = &membership_report
        && m.added + m.removed == 0
    {
        suspect.push("no membership change was made".to_string());
    }
    if let Some(w) = &watch {
        if w.streams <= w.watchers {
            suspect.push("no watcher resumed".to_string());
        }
        if w.confirmed == 0 {
            suspect.push("no watcher confirmed the final revision".to_string());
        }
    }
    let outcome = if report.invalid()
        || watch.as_ref().is_some_and(WatchReport::invalid)
        || membership_report.as_ref().is_some_and(MembershipReport::invalid)
    {
        Outcome2::Invalid
    } else if report.unknown() {
        Outcome2::Unknown
    } else if !suspect.is_empty() {
        Outcome2::Suspect
    } else {
        Outcome2::Valid
    };
    let result = RunResult { outcome, report, watch, membership: membership_report, history, suspect };
    std::fs::write(dir.join("summary.txt"), summary(&cfg, &result, &records))
        .map_err(|e| format!("cannot write the summary: {e}"))?;
    Ok(result)
}

/// The run's report, as printed and saved beside the history.
pub fn summary(cfg: &RunConfig, r: &RunResult, records: &[Record]) -> String {
    use std::fmt::Write;
    let mut o = String::new();
    let s = &r.report.stats;
    let _ = writeln!(
        o,
        "== raftkv-chaos run: profile {} seed {} duration {:?} members {}",
        cfg.profile, cfg.seed, cfg.duration, cfg.members
    );
    let _ = writeln!(o, "faults injected:");
    for rec in records {
        if let Record::Nemesis { t_ns, event, detail, .. } = rec {
            let _ = writeln!(o, "  [{:>7.3} s] {event} {detail}", *t_ns as f64 / 1e9);
        }
    }
    let _ = writeln!(
        o,
        "  totals: {}; members restarted: {}",
        if s.faults.is_empty() {
            "none".to_string()
        } else {
            s.faults.iter().map(|(k, v)| format!("{k} {v}")).collect::<Vec<_>>().join(", ")
        },
        s.restarts
    );
    let _ = writeln!(o, "operations by outcome:");
    let kinds: std::collections::BTreeSet<&String> = s.ops.keys().map(|(k, _)| k).collect();
    for k in kinds {
        let g = |out| s.ops.get(&(k.clone(), out)).copied().unwrap_or(0);
        let _ = writeln!(
            o,
            "  {k:<10} ok {:>6}  fail {:>5}  unknown {:>5}",
            g(Outcome::Ok),
            g(Outcome::Fail),
            g(Outcome::Unknown)
        );
    }
    let _ = writeln!(
        o,
        "  {:<10} ok {:>6}  fail {:>5}  unknown {:>5}   (ok after the final heal: {})",
        "total",
        s.count(Outcome::Ok),
        s.count(Outcome::Fail),
        s.count(Outcome::Unknown),
        s.ok_after_heal
    );
    let _ = writeln!(o, "leader changes: {}", s.leader_changes);
    let _ = writeln!(o, "verdict per key:");
    for k in &r.report.keys {
        let v = match &k.verdict {
            Verdict::Valid => "linearizable".to_string(),
            Verdict::Invalid { stuck } => {
                format!("NOT LINEARIZABLE (stuck at op {})", stuck.map_or("?".into(), |s| s.to_string()))
            }
            Verdict::Unknown { reason } => format!("unknown ({reason})"),
        };
        let _ = writeln!(o, "  {:<4} {:>6} ops  {v}", k.key, k.ops);
        if !k.witness.is_empty() {
            let _ = writeln!(o, "    smallest failing sub-history found ({} ops):", k.witness.len());
            for (op, kept) in &k.witness {
                let note = if *kept == Kept::Relaxed { "   (acknowledged; treated as unknown)" } else { "" };
                let _ = writeln!(o, "      {op}{note}");
            }
        }
    }
    for a in &r.report.revision_anomalies {
        let _ = writeln!(o, "  REVISION ANOMALY: {a}");
    }
    if let Some(w) = &r.watch {
        let _ = writeln!(
            o,
            "watchers: {} ({} streams, {} events, {} cancelled by compaction, {} confirmed the final revision); acknowledged writes checked against covering watchers: {}",
            w.watchers, w.streams, w.events, w.compacted, w.confirmed, w.checked
        );
        for a in &w.anomalies {
            let _ = writeln!(o, "  WATCH ANOMALY: {a}");
        }
    }
    if let Some(m) = &r.membership {
        let _ = writeln!(
            o,
            "membership: {} added, {} promoted, {} removed, {} of them replaced; learner catch-up (ms): {:?}",
            m.added, m.promoted, m.removed, m.replaced, m.catch_up_ms
        );
        if m.self_stopped > 0 {
            let _ = writeln!(
                o,
                "  members that stopped on their own while members: {} (see member-exited above and the member's log)",
                m.self_stopped
            );
        }
        for a in &m.anomalies {
            let _ = writeln!(o, "  MEMBERSHIP ANOMALY: {a}");
        }
    }
    for s in &r.suspect {
        let _ = writeln!(o, "SUSPECT: {s}");
    }
    let _ = writeln!(o, "history: {}", r.history.display());
    let _ = writeln!(
        o,
        "verdict: {}",
        match r.outcome {
            Outcome2::Valid => "VALID",
            Outcome2::Invalid => "INVALID (not linearizable, or a membership anomaly)",
            Outcome2::Unknown => "UNKNOWN (checker budget exhausted)",
            Outcome2::Suspect => "SUSPECT",
        }
    );
    let _ = writeln!(
        o,
        "replay: cargo run --release -p raftkv-chaos -- run --profile {} --seed {} --duration {} --members {}{}   (re-check: raftkv-chaos check {})",
        cfg.profile,
        cfg.seed,
        cfg.duration.as_secs(),
        cfg.members,
        if cfg.unsafe_stale_reads { " --unsafe-stale-reads" } else { "" }.to_string()
            + if cfg.watch { " --watch" } else { "" },
        r.history.display()
    );
    o
}

/// A put through one endpoint and a linearizable get through every endpoint.
pub async fn smoke(endpoints: &[String]) -> Result<(), String> {
    use raftkv_api::etcdserverpb::RangeRequest;
    let value = format!("smoke-{}", crate::history::unix_ms());
    let mut kv = KvClient::new(workload::channel(&endpoints[0], Duration::from_secs(5))?);
    kv.put(PutRequest { key: "chaos-smoke".into(), value: value.clone().into(), ..Default::default() })
        .await
        .map_err(|e| format!("put through {}: {e}", endpoints[0]))?;
    for url in endpoints {
        let mut kv = KvClient::new(workload::channel(url, Duration::from_secs(5))?);
        let r = kv
            .range(RangeRequest { key: "chaos-smoke".into(), ..Default::default() })
            .await
            .map_err(|e| format!("get through {url}: {e}"))?
            .into_inner();
        let got = r.kvs.first().map(|kv| String::from_utf8_lossy(&kv.value).into_owned());
        if got.as_deref() != Some(value.as_str()) {
            return Err(format!("get through {url} returned {got:?}, expected {value}"));
        }
    }
    Ok(())
}

/// Waits for every task.
async fn futures_join(tasks: Vec<tokio::task::JoinHandle<()>>) {
    for t in tasks {
        let _ = t.await;
    }
}
