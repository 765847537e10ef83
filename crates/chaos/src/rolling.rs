//! Rolling restart under steady load: every member in turn is stopped (SIGTERM, so that a
//! leader hands over first; or kill -9 for comparison), restarted on its data dir and
//! waited for; writers keep putting throughout, and the longest time without a successful
//! write is measured around each restart. Runs raftkv or etcd (the same flags), so both
//! can be measured on the same hosts. Then a new member joins as a learner and the time it
//! takes to catch up (by snapshot: the log was compacted under the preload) is measured.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use raftkv_api::etcdserverpb::PutRequest;
use raftkv_api::etcdserverpb::kv_client::KvClient;

use crate::cluster::{Cluster, ClusterSpec};
use crate::history::Recorder;
use crate::membership::{self, Changer};
use crate::workload;

#[derive(Clone, Debug)]
pub struct RollingConfig {
    pub members: usize,
    pub binary: PathBuf,
    /// The binary is etcd.
    pub etcd: bool,
    pub out: PathBuf,
    /// SIGTERM (graceful) or kill -9.
    pub graceful: bool,
    pub writers: usize,
    /// Keys written before the restarts (with snapshots every 5,000 entries, so that the
    /// member added at the end catches up by snapshot); 0 skips the catch-up measurement.
    pub preload: usize,
    pub rounds: usize,
}

#[derive(Clone, Debug)]
pub struct Restart {
    pub member: String,
    pub was_leader: bool,
    /// It exited within 10 s of SIGTERM (always false for kill -9).
    pub exited_cleanly: bool,
    /// From the signal until it had exited.
    pub stop_ms: u64,
    /// The longest time without a successful write, from the signal until a second after
    /// the member was back.
    pub max_gap_ms: u64,
    /// Failed or timed-out writes in that window.
    pub failed_writes: u64,
}

#[derive(Clone, Debug, Default)]
pub struct RollingReport {
    pub restarts: Vec<Restart>,
    /// The longest gap in 3 s of the same load without restarts.
    pub baseline_gap_ms: u64,
    pub writes: u64,
    /// Time for a member added as a learner to apply the leader's index (ms).
    pub catch_up_ms: Option<u64>,
    pub election_ms: u64,
}

impl RollingReport {
    pub fn leader_max_gap_ms(&self) -> Option<u64> {
        self.restarts.iter().filter(|r| r.was_leader).map(|r| r.max_gap_ms).max()
    }
    pub fn follower_max_gap_ms(&self) -> Option<u64> {
        self.restarts.iter().filter(|r| !r.was_leader).map(|r| r.max_gap_ms).max()
    }

    pub fn render(&self, cfg: &RollingConfig) -> String {
        use std::fmt::Write;
        let mut o = String::new();
        let _ = writeln!(
            o,
            "== rolling restart: {} ({}), {} members, {} writers, {} round(s), election timeout {} ms",
            if cfg.etcd { "etcd" } else { "raftkv" },
            if cfg.graceful { "SIGTERM" } else { "kill -9" },
            cfg.members,
            cfg.writers,
            cfg.rounds,
            self.election_ms
        );
        let _ = writeln!(o, "longest write gap without restarts: {} ms", self.baseline_gap_ms);
        for r in &self.restarts {
            let _ = writeln!(
                o,
                "  {:<3} {:<9} stopped in {:>5} ms{}  longest write gap {:>5} ms  failed writes {}",
                r.member,
                if r.was_leader { "(leader)" } else { "" },
                r.stop_ms,
                if r.exited_cleanly || !cfg.graceful { "" } else { " (killed after 10 s)" },
                r.max_gap_ms,
                r.failed_writes
            );
        }
        let _ = writeln!(
            o,
            "longest gap: leader restarted {} ms, follower restarted {} ms; {} writes",
            self.leader_max_gap_ms().map_or("-".into(), |g| g.to_string()),
            self.follower_max_gap_ms().map_or("-".into(), |g| g.to_string()),
            self.writes
        );
        if let Some(c) = self.catch_up_ms {
            let _ = writeln!(o, "new learner caught up ({} keys preloaded) in {c} ms", cfg.preload);
        }
        o
    }
}

/// Successful write completions, for the gap measurement.
#[derive(Default)]
pub(crate) struct Load {
    pub(crate) done: Mutex<Vec<Instant>>,
    failed: AtomicU64,
    failures: Mutex<Vec<Instant>>,
}

impl Load {
    /// The longest time in [from, to] without a completed write.
    pub(crate) fn max_gap(&self, from: Instant, to: Instant) -> Duration {
        let done = self.done.lock().unwrap_or_else(|e| e.into_inner());
        let mut points: Vec<Instant> = done.iter().copied().filter(|t| *t >= from && *t <= to).collect();
        points.push(from);
        points.push(to);
        points.sort();
        points.windows(2).map(|w| w[1] - w[0]).max().unwrap_or_default()
    }
    pub(crate) fn failed_in(&self, from: Instant, to: Instant) -> u64 {
        let f = self.failures.lock().unwrap_or_else(|e| e.into_inner());
        f.iter().filter(|t| **t >= from && **t <= to).count() as u64
    }
}

/// One writer: puts to its own key through one member, moving to the next member after an
/// error (as a client with several endpoints does).
async fn writer(id: usize, endpoints: Vec<String>, load: Arc<Load>, stop: Arc<AtomicBool>) {
    let mut at = id % endpoints.len();
    let mut seq = 0u64;
    let mut client = None;
    while !stop.load(Ordering::Relaxed) {
        let kv = match &mut client {
            Some(c) => c,
            None => match workload::channel(&endpoints[at], Duration::from_secs(2)) {
                Ok(ch) => client.insert(KvClient::new(ch)),
                Err(_) => return,
            },
        };
        seq += 1;
        let req = PutRequest {
            key: format!("rolling-{id}").into(),
            value: seq.to_string().into(),
            ..Default::default()
        };
        match tokio::time::timeout(Duration::from_secs(2), kv.put(req)).await {
            Ok(Ok(_)) => load.done.lock().unwrap_or_else(|e| e.into_inner()).push(Instant::now()),
            _ => {
                load.failed.fetch_add(1, Ordering::Relaxed);
                load.failures.lock().unwrap_or_else(|e| e.into_inner()).push(Instant::now());
                at = (at + 1) % endpoints.len();
                client = None;
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
    }
}

/// Starts `writers` writers over `endpoints`, lets them run a second, then measures the
/// longest write gap over 3 s of that load alone: (load, stop flag, writer tasks, gap).
pub(crate) async fn start_load(
    endpoints: &[String],
    writers: usize,
) -> (Arc<Load>, Arc<AtomicBool>, Vec<tokio::task::JoinHandle<()>>, Duration) {
    let load = Arc::new(Load::default());
    let stop = Arc::new(AtomicBool::new(false));
    let tasks: Vec<_> = (0..writers)
        .map(|w| tokio::spawn(writer(w, endpoints.to_vec(), load.clone(), stop.clone())))
        .collect();
    tokio::time::sleep(Duration::from_secs(1)).await;
    let t = Instant::now();
    tokio::time::sleep(Duration::from_secs(3)).await;
    let baseline = load.max_gap(t, Instant::now());
    (load, stop, tasks, baseline)
}

/// The leader, by asking every member (its index among the hosts).
pub(crate) async fn leader(c: &Arc<Mutex<Cluster>>) -> Option<usize> {
    let urls: Vec<String> = lock(c).members.iter().filter(|m| m.running()).map(|m| m.client_url()).collect();
    let mut ids = std::collections::BTreeMap::new();
    let mut lead = None;
    for url in &urls {
        if let Some(s) = membership::status(url).await {
            if let Some(h) = &s.header {
                ids.insert(h.member_id, url.clone());
            }
            if s.leader != 0 {
                lead = Some(s.leader);
            }
        }
    }
    let url = ids.get(&lead?)?;
    lock(c).members.iter().position(|m| &m.client_url() == url)
}

pub(crate) fn lock(c: &Mutex<Cluster>) -> std::sync::MutexGuard<'_, Cluster> {
    c.lock().unwrap_or_else(|e| e.into_inner())
}

async fn preload(endpoints: &[String], keys: usize) -> Result<(), String> {
    let next = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    for w in 0..16 {
        let url = endpoints[w % endpoints.len()].clone();
        let next = next.clone();
        tasks.push(tokio::spawn(async move {
            let mut kv = KvClient::new(workload::channel(&url, Duration::from_secs(5))?);
            loop {
                let k = next.fetch_add(1, Ordering::Relaxed) as usize;
                if k >= keys {
                    return Ok::<(), String>(());
                }
                let req = PutRequest {
                    key: format!("preload-{k:07}").into(),
                    value: vec![b'x'; 256].into(),
                    ..Default::default()
                };
                kv.put(req).await.map_err(|e| format!("preload put through {url}: {}", e.message()))?;
            }
        }));
    }
    for t in tasks {
        t.await.map_err(|e| e.to_string())??;
    }
    Ok(())
}

pub async fn run(cfg: RollingConfig) -> Result<RollingReport, String> {
    let kind = if cfg.etcd { "etcd" } else { "raftkv" };
    let dir = cfg.out.join(format!("rolling-{kind}-{}", if cfg.graceful { "term" } else { "kill" }));
    if dir.exists() {
        std::fs::remove_dir_all(&dir).map_err(|e| format!("cannot clear {}: {e}", dir.display()))?;
    }
    let spec = ClusterSpec {
        etcd: cfg.etcd,
        spares: usize::from(cfg.preload > 0),
        ..ClusterSpec::new(cfg.members, cfg.binary.clone(), dir.clone())
    };
    let election_ms = spec.election_ms;
    let (cluster, _) = Cluster::launch(spec)?;
    let endpoints: Vec<String> = cluster.members[..cfg.members].iter().map(|m| m.client_url()).collect();
    let cluster = Arc::new(Mutex::new(cluster));
    crate::runner::wait_ready(&endpoints, Duration::from_secs(30)).await?;
    if cfg.preload > 0 {
        preload(&endpoints, cfg.preload).await?;
    }
    let (load, stop, tasks, baseline) = start_load(&endpoints, cfg.writers).await;
    let mut report =
        RollingReport { baseline_gap_ms: baseline.as_millis() as u64, election_ms, ..Default::default() };
    let result = restarts(&cfg, &cluster, &load, &mut report).await;
    stop.store(true, Ordering::Relaxed);
    for t in tasks {
        let _ = t.await;
    }
    result?;
    report.writes = load.done.lock().unwrap_or_else(|e| e.into_inner()).len() as u64;
    if cfg.preload > 0 {
        let recorder = Recorder::new(None).map_err(|e| e.to_string())?;
        let leader = Arc::new(Mutex::new(leader(&cluster).await));
        let mut ch = Changer::new(cluster.clone(), leader, recorder);
        ch.add(cfg.members, true).await?;
        report.catch_up_ms = ch.report.catch_up_ms.first().copied();
    }
    lock(&cluster).cleanup();
    Ok(report)
}

async fn restarts(
    cfg: &RollingConfig,
    cluster: &Arc<Mutex<Cluster>>,
    load: &Arc<Load>,
    report: &mut RollingReport,
) -> Result<(), String> {
    for _ in 0..cfg.rounds {
        for i in 0..cfg.members {
            let was_leader = leader(cluster).await == Some(i);
            let from = Instant::now();
            let (exited_cleanly, name) = tokio::task::block_in_place(|| {
                let mut c = lock(cluster);
                let ok = if cfg.graceful {
                    c.stop(i, Duration::from_secs(10))
                } else {
                    c.kill(i);
                    false
                };
                (ok, c.members[i].name.clone())
            });
            let stop_ms = from.elapsed().as_millis() as u64;
            lock(cluster).start(i)?;
            let url = lock(cluster).members[i].client_url();
            // Back: it answers and has applied what the others had when it started.
            let mut target = 0;
            let others: Vec<String> =
                (0..cfg.members).filter(|&m| m != i).map(|m| lock(cluster).members[m].client_url()).collect();
            for other in others {
                if let Some(s) = membership::status(&other).await {
                    target = target.max(s.raft_applied_index);
                }
            }
            if membership::catch_up(&url, target, Duration::from_secs(30)).await.is_none() {
                return Err(format!("{name} did not catch up within 30 s of its restart"));
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
            let to = Instant::now();
            report.restarts.push(Restart {
                member: name,
                was_leader,
                exited_cleanly,
                stop_ms,
                max_gap_ms: load.max_gap(from, to).as_millis() as u64,
                failed_writes: load.failed_in(from, to),
            });
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn max_gap_counts_the_window_edges_and_ignores_writes_outside() {
        let load = Load::default();
        let t0 = Instant::now();
        let at = |ms| t0 + Duration::from_millis(ms);
        load.done.lock().unwrap_or_else(|e| e.into_inner()).extend([
            at(50),
            at(120),
            at(400),
            at(460),
            at(2_000),
        ]);
        // From 100: 100 -> 120 -> 400 (280) -> 460 -> 1000 (540): the window's end counts.
        assert_eq!(load.max_gap(at(100), at(1_000)), Duration::from_millis(540));
        // A window with no write at all is one gap.
        assert_eq!(load.max_gap(at(500), at(900)), Duration::from_millis(400));
        assert_eq!(load.max_gap(at(110), at(470)), Duration::from_millis(280));
    }
}
