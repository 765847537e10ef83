//! The lease test: leases under repeated leader kills.
//!
//! While the leader is killed (and restarted) every few seconds:
//! * **kept-alive leases**, each with keys attached, get a keep-alive every second through a
//!   member drawn at random (followers forward to the leader). None of their keys may be
//!   deleted, as long as the client kept the lease alive (no stretch of TTL - 1 s or more
//!   between the sending of acknowledged keep-alives: a lease whose client was cut off that
//!   long is left out of the check, and counted);
//! * **expiring leases** (TTL 2 s, keys attached, never kept alive) are granted one after
//!   another. Every member's watcher must see all of a lease's keys deleted in one revision,
//!   the same revision on every member, and not before the TTL had run from the grant
//!   request; at the end no member holds any of those keys.
//!
//! The watchers (one per member, never moving to another member) resume from their last
//! revision + 1 after their member is killed; their streams are also checked by
//! [`crate::watchcheck::check`].

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use raftkv_api::etcdserverpb::kv_client::KvClient;
use raftkv_api::etcdserverpb::lease_client::LeaseClient;
use raftkv_api::etcdserverpb::{LeaseGrantRequest, LeaseKeepAliveRequest, PutRequest, RangeRequest};

use crate::cluster::{Cluster, ClusterSpec};
use crate::history::{OpRecord, Outcome, Record, Recorder};
use crate::linearizability::Action;
use crate::rng::Rng;
use crate::watchcheck::{self, Control, WatchWhat, WatcherSpec};
use crate::workload::{channel, classify};

#[derive(Clone, Debug)]
pub struct LeaseTestConfig {
    pub seed: u64,
    pub members: usize,
    pub duration: Duration,
    pub binary: PathBuf,
    pub out: PathBuf,
    /// Kept-alive leases.
    pub live: usize,
    pub live_ttl: i64,
    pub expiring_ttl: i64,
}

#[derive(Debug, Default, Clone)]
pub struct LeaseReport {
    pub anomalies: Vec<String>,
    pub leader_kills: usize,
    pub leader_changes: usize,
    pub live_checked: usize,
    /// Kept-alive leases whose client was cut off for TTL - 1 s or more.
    pub live_excused: usize,
    pub expired_checked: usize,
    pub keep_alives: u64,
    pub watch: watchcheck::WatchReport,
}

impl LeaseReport {
    pub fn valid(&self) -> bool {
        self.anomalies.is_empty() && !self.watch.invalid()
    }
}

/// A lease the test granted, and the keys whose puts were acknowledged.
#[derive(Debug, Clone)]
struct Granted {
    id: i64,
    ttl: i64,
    /// When the grant request was sent (ns since the run started).
    sent_ns: u64,
    keys: Vec<String>,
    /// Kept-alive leases: the longest stretch without an acknowledged keep-alive (ns), and
    /// whether a keep-alive was answered with TTL <= 0 (the lease was gone).
    longest_gap_ns: u64,
    lost: bool,
}

type Leases = Arc<Mutex<Vec<Granted>>>;

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Grants a lease through some member, then puts `keys` with it (recorded as operations, so
/// the watch checker knows their values). Returns None if the grant failed.
async fn grant_with_keys(
    endpoints: &[String],
    rng: &mut Rng,
    ttl: i64,
    keys: Vec<String>,
    recorder: &Recorder,
    next_op: &AtomicU64,
) -> Option<Granted> {
    let m = rng.below(endpoints.len());
    let mut lease = LeaseClient::new(channel(&endpoints[m], Duration::from_secs(3)).ok()?);
    let sent_ns = recorder.now();
    let req = LeaseGrantRequest { ttl, id: 0 };
    let id = match tokio::time::timeout(Duration::from_secs(3), lease.lease_grant(req)).await {
        Ok(Ok(r)) => r.into_inner().id,
        _ => return None,
    };
    let mut acked = Vec::new();
    for key in keys {
        let m = rng.below(endpoints.len());
        let Ok(ch) = channel(&endpoints[m], Duration::from_secs(3)) else { continue };
        let value = format!("lease-{id:x}");
        let req = PutRequest {
            key: key.clone().into(),
            value: value.clone().into(),
            lease: id,
            ..Default::default()
        };
        let invoke_ns = recorder.now();
        let r = tokio::time::timeout(Duration::from_secs(3), KvClient::new(ch).put(req)).await;
        let (outcome, revision, error) = match r {
            Ok(Ok(resp)) => (Outcome::Ok, resp.into_inner().header.map(|h| h.revision), None),
            Ok(Err(s)) => (classify(&s), None, Some(s.message().to_string())),
            Err(_) => (Outcome::Unknown, None, Some("client timeout".into())),
        };
        recorder.record(Record::Op(OpRecord {
            id: next_op.fetch_add(1, Ordering::Relaxed),
            worker: 0,
            member: m,
            key: key.clone(),
            kind: "lease-put".into(),
            invoke_ns,
            complete_ns: recorder.now(),
            outcome,
            action: Action::Write { value },
            revision,
            expected_revision: None,
            error,
        }));
        if outcome == Outcome::Ok {
            acked.push(key);
        }
    }
    Some(Granted { id, ttl, sent_ns, keys: acked, longest_gap_ns: 0, lost: false })
}

/// Keeps lease `idx` alive until `stop`, one keep-alive a second, through random members.
async fn keep_alive(
    idx: usize,
    endpoints: Vec<String>,
    seed: u64,
    leases: Leases,
    recorder: Recorder,
    stop: Arc<AtomicBool>,
    count: Arc<AtomicU64>,
) {
    let mut rng = Rng::new(seed ^ 0x1ea5e ^ ((idx as u64) << 20));
    let (id, mut last_ok) = {
        let l = lock(&leases);
        (l[idx].id, l[idx].sent_ns)
    };
    while !stop.load(Ordering::Relaxed) {
        let m = rng.below(endpoints.len());
        let Ok(ch) = channel(&endpoints[m], Duration::from_secs(30)) else { return };
        let (tx, rx) = tokio::sync::mpsc::channel(2);
        let mut client = LeaseClient::new(ch);
        let opened = tokio::time::timeout(
            Duration::from_secs(2),
            client.lease_keep_alive(tokio_stream::wrappers::ReceiverStream::new(rx)),
        )
        .await;
        let Ok(Ok(resp)) = opened else {
            tokio::time::sleep(Duration::from_millis(200)).await;
            continue;
        };
        let mut stream = resp.into_inner();
        // A few keep-alives on this stream, then another member.
        for _ in 0..rng.range(2, 6) {
            if stop.load(Ordering::Relaxed) {
                return;
            }
            let sent = recorder.now();
            if tx.send(LeaseKeepAliveRequest { id }).await.is_err() {
                break;
            }
            match tokio::time::timeout(Duration::from_secs(2), stream.message()).await {
                Ok(Ok(Some(r))) => {
                    count.fetch_add(1, Ordering::Relaxed);
                    let mut l = lock(&leases);
                    let g = &mut l[idx];
                    if r.ttl > 0 {
                        g.longest_gap_ns = g.longest_gap_ns.max(sent.saturating_sub(last_ok));
                        last_ok = sent;
                    } else {
                        g.longest_gap_ns = g.longest_gap_ns.max(sent.saturating_sub(last_ok));
                        g.lost = true;
                        drop(l);
                        recorder.nemesis("lease-lost", format!("keep-alive of lease {id:x}: TTL {}", r.ttl));
                        return;
                    }
                }
                _ => break,
            }
            tokio::time::sleep(Duration::from_millis(1000)).await;
        }
    }
    let mut l = lock(&leases);
    let g = &mut l[idx];
    g.longest_gap_ns = g.longest_gap_ns.max(recorder.now().saturating_sub(last_ok));
}

/// Kills the leader every few seconds and restarts it 1-2 s later.
async fn kill_leaders(
    cluster: Arc<Mutex<Cluster>>,
    leader: Arc<Mutex<Option<usize>>>,
    seed: u64,
    recorder: Recorder,
    stop: Arc<AtomicBool>,
) -> usize {
    let mut rng = Rng::new(seed ^ 0x4111);
    let mut kills = 0;
    tokio::time::sleep(Duration::from_secs(3)).await;
    while !stop.load(Ordering::Relaxed) {
        let l = *lock(&leader);
        if let Some(m) = l {
            let name = {
                let mut c = lock(&cluster);
                c.kill(m);
                c.members[m].name.clone()
            };
            kills += 1;
            recorder.nemesis("kill", format!("{name} (kill -9) [the leader]"));
            tokio::time::sleep(Duration::from_millis(rng.range(1_000, 2_000))).await;
            let r = lock(&cluster).start(m);
            match r {
                Ok(()) => recorder.nemesis("restart", format!("{name} on its data dir")),
                Err(e) => recorder.nemesis("nemesis-error", e),
            }
        }
        tokio::time::sleep(Duration::from_millis(rng.range(2_500, 4_500))).await;
    }
    kills
}

/// Serializable reads of a prefix on every member: the keys each holds.
async fn keys_on_members(endpoints: &[String], prefix: &str) -> Vec<Result<BTreeSet<String>, String>> {
    let mut out = Vec::new();
    for url in endpoints {
        let r = async {
            let mut kv = KvClient::new(channel(url, Duration::from_secs(3))?);
            let mut end = prefix.as_bytes().to_vec();
            if let Some(last) = end.last_mut() {
                *last += 1;
            }
            let req = RangeRequest {
                key: prefix.to_string().into(),
                range_end: end.into(),
                serializable: true,
                keys_only: true,
                ..Default::default()
            };
            let resp = kv.range(req).await.map_err(|s| format!("{url}: {s}"))?.into_inner();
            Ok(resp.kvs.iter().map(|kv| String::from_utf8_lossy(&kv.key).into_owned()).collect())
        }
        .await;
        out.push(r);
    }
    out
}

pub async fn run(cfg: LeaseTestConfig) -> Result<LeaseReport, String> {
    let dir = cfg.out.join(format!("lease-seed{}", cfg.seed));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    let history = dir.join("history.jsonl");
    let recorder =
        Recorder::new(Some(&history)).map_err(|e| format!("cannot create the history file: {e}"))?;
    let (cluster, endpoints) =
        Cluster::launch(ClusterSpec::new(cfg.members, cfg.binary.clone(), dir.clone()))?;
    crate::runner::wait_ready(&endpoints, Duration::from_secs(30)).await?;
    let cluster = Arc::new(Mutex::new(cluster));
    let stop = Arc::new(AtomicBool::new(false));
    let monitor_stop = Arc::new(AtomicBool::new(false));
    let monitor = crate::nemesis::spawn_monitor(endpoints.clone(), recorder.clone(), monitor_stop.clone());
    let ctl = Control::default();
    let specs: Vec<(usize, WatcherSpec)> = (0..cfg.members)
        .map(|m| (m, WatcherSpec { key: "lease/".into(), range_end: "lease0".into() }))
        .collect();
    let watchers = watchcheck::spawn_watchers(specs, &endpoints, cfg.seed, &recorder, &stop, &ctl, false);
    let mut rng = Rng::new(cfg.seed);
    let next_op = AtomicU64::new(1);
    // The kept-alive leases, before the faults start.
    let leases: Leases = Arc::default();
    for i in 0..cfg.live {
        let keys: Vec<String> = (0..3).map(|j| format!("lease/live/{i}/{j}")).collect();
        for _ in 0..20 {
            if let Some(g) =
                grant_with_keys(&endpoints, &mut rng, cfg.live_ttl, keys.clone(), &recorder, &next_op).await
                && g.keys.len() == 3
            {
                lock(&leases).push(g);
                break;
            }
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
    }
    let kept = lock(&leases).len();
    if kept < cfg.live {
        return Err(format!("only {kept} of {} kept-alive leases could be set up", cfg.live));
    }
    let count = Arc::new(AtomicU64::new(0));
    // Keep-alives go on until the final reads are done.
    let keep_stop = Arc::new(AtomicBool::new(false));
    let keepers: Vec<_> = (0..kept)
        .map(|i| {
            tokio::spawn(keep_alive(
                i,
                endpoints.clone(),
                cfg.seed,
                leases.clone(),
                recorder.clone(),
                keep_stop.clone(),
                count.clone(),
            ))
        })
        .collect();
    let nem = tokio::spawn(kill_leaders(
        cluster.clone(),
        monitor.current.clone(),
        cfg.seed,
        recorder.clone(),
        stop.clone(),
    ));
    // Expiring leases, one after another, until the end.
    let started = tokio::time::Instant::now();
    let mut expiring = Vec::new();
    let mut n = 0;
    while started.elapsed() < cfg.duration {
        n += 1;
        let keys = (0..3).map(|j| format!("lease/exp/{n}/{j}")).collect();
        if let Some(g) =
            grant_with_keys(&endpoints, &mut rng, cfg.expiring_ttl, keys, &recorder, &next_op).await
        {
            expiring.push(g);
        }
        tokio::time::sleep(Duration::from_millis(rng.range(300, 1_200))).await;
    }
    stop.store(true, Ordering::Relaxed);
    let kills = nem.await.unwrap_or(0);
    {
        let mut c = lock(&cluster);
        crate::nemesis::heal_all(&mut c, &recorder)?;
    }
    crate::runner::wait_ready(&endpoints, Duration::from_secs(30)).await?;
    // Every expiring lease runs out (a new leader extends each by its TTL again).
    tokio::time::sleep(Duration::from_secs((2 * cfg.expiring_ttl + 3) as u64)).await;
    if let Some(rev) = watchcheck::current_revision(&endpoints, Duration::from_secs(10)).await {
        ctl.final_rev.store(rev, Ordering::Relaxed);
    }
    let all = async {
        for w in watchers {
            let _ = w.await;
        }
    };
    if tokio::time::timeout(Duration::from_secs(20), all).await.is_err() {
        recorder.nemesis("watch-final", "some watchers did not confirm the final revision in 20 s".into());
    }
    ctl.halt.store(true, Ordering::Relaxed);
    let exp_left = keys_on_members(&endpoints, "lease/exp/").await;
    let live_left = keys_on_members(&endpoints, "lease/live/").await;
    keep_stop.store(true, Ordering::Relaxed);
    for k in keepers {
        let _ = k.await;
    }
    monitor_stop.store(true, Ordering::Relaxed);
    recorder.flush();
    lock(&cluster).cleanup();
    let records = recorder.records();
    let live = lock(&leases).clone();
    let mut report = check(&records, &live, &expiring, cfg.members, &exp_left, &live_left);
    report.leader_kills = kills;
    report.keep_alives = count.load(Ordering::Relaxed);
    std::fs::write(dir.join("summary.txt"), summary(&cfg, &report, &records, &history))
        .map_err(|e| format!("cannot write the summary: {e}"))?;
    Ok(report)
}

fn check(
    records: &[Record],
    live: &[Granted],
    expiring: &[Granted],
    members: usize,
    exp_left: &[Result<BTreeSet<String>, String>],
    live_left: &[Result<BTreeSet<String>, String>],
) -> LeaseReport {
    let mut r = LeaseReport { watch: watchcheck::check(records), ..Default::default() };
    r.leader_changes = crate::check::stats(records).leader_changes;
    // Deletions each member's watcher saw: key -> (revision, time received).
    let mut deleted: Vec<BTreeMap<String, (i64, u64)>> = vec![BTreeMap::new(); members];
    for rec in records {
        if let Record::Watch(w) = rec
            && let WatchWhat::Events { events } = &w.what
        {
            for e in events.iter().filter(|e| e.delete) {
                deleted[w.watcher.min(members - 1)].entry(e.key.clone()).or_insert((e.rev, w.t_ns));
            }
        }
    }
    for g in live {
        // A keep-alive acknowledged with TTL T promises the lease lives at least T from
        // when it was sent (a new leader extends it again). With a stretch of more than
        // T - 1 s between the sending of acknowledged keep-alives, the lease may rightly
        // have expired: the test cannot say it was alive throughout.
        if g.longest_gap_ns + 1_000_000_000 > (g.ttl as u64) * 1_000_000_000 {
            r.live_excused += 1;
            continue;
        }
        r.live_checked += 1;
        if g.lost {
            r.anomalies.push(format!("kept-alive lease {:x} was gone (keep-alive answered TTL 0)", g.id));
        }
        for (m, d) in deleted.iter().enumerate() {
            for k in &g.keys {
                if let Some((rev, _)) = d.get(k) {
                    r.anomalies.push(format!(
                        "m{}: key {k} of kept-alive lease {:x} deleted at revision {rev}",
                        m + 1,
                        g.id
                    ));
                }
            }
        }
        for (m, left) in live_left.iter().enumerate() {
            if let Ok(left) = left {
                for k in g.keys.iter().filter(|k| !left.contains(*k)) {
                    r.anomalies.push(format!(
                        "m{}: key {k} of kept-alive lease {:x} is gone at the end",
                        m + 1,
                        g.id
                    ));
                }
            }
        }
    }
    for g in expiring.iter().filter(|g| !g.keys.is_empty()) {
        r.expired_checked += 1;
        let mut revs = BTreeSet::new();
        for (m, d) in deleted.iter().enumerate() {
            for k in &g.keys {
                match d.get(k) {
                    Some((rev, t)) => {
                        revs.insert(*rev);
                        if *t < g.sent_ns + (g.ttl as u64) * 1_000_000_000 {
                            r.anomalies.push(format!(
                                "m{}: key {k} of lease {:x} (TTL {} s) deleted {:.2} s after the grant was requested",
                                m + 1,
                                g.id,
                                g.ttl,
                                (t - g.sent_ns) as f64 / 1e9
                            ));
                        }
                    }
                    None => r.anomalies.push(format!(
                        "m{}: no watch event deleted key {k} of expired lease {:x}",
                        m + 1,
                        g.id
                    )),
                }
            }
        }
        if revs.len() > 1 {
            r.anomalies
                .push(format!("the keys of lease {:x} were deleted at revisions {revs:?}, not one", g.id));
        }
    }
    for (m, left) in exp_left.iter().enumerate() {
        match left {
            Ok(left) => {
                for k in left.iter().filter(|k| expiring.iter().any(|g| g.keys.contains(k))) {
                    r.anomalies.push(format!("m{}: key {k} of an expired lease is still there", m + 1));
                }
            }
            Err(e) => r.anomalies.push(format!("m{}: final read failed: {e}", m + 1)),
        }
    }
    r
}

fn summary(cfg: &LeaseTestConfig, r: &LeaseReport, records: &[Record], history: &std::path::Path) -> String {
    use std::fmt::Write;
    let mut o = String::new();
    let _ = writeln!(
        o,
        "== raftkv-chaos lease test: seed {} duration {:?} members {}",
        cfg.seed, cfg.duration, cfg.members
    );
    for rec in records {
        if let Record::Nemesis { t_ns, event, detail, .. } = rec {
            let _ = writeln!(o, "  [{:>7.3} s] {event} {detail}", *t_ns as f64 / 1e9);
        }
    }
    let _ = writeln!(o, "leader kills: {}, leader changes: {}", r.leader_kills, r.leader_changes);
    let _ = writeln!(
        o,
        "kept-alive leases (TTL {} s): {} checked, {} left out (client cut off >= TTL - 1 s); {} keep-alives answered",
        cfg.live_ttl, r.live_checked, r.live_excused, r.keep_alives
    );
    let _ =
        writeln!(o, "expired leases (TTL {} s) with keys: {} checked", cfg.expiring_ttl, r.expired_checked);
    let w = &r.watch;
    let _ = writeln!(
        o,
        "watchers: {} ({} streams, {} events, {} confirmed the final revision)",
        w.watchers, w.streams, w.events, w.confirmed
    );
    for a in r.anomalies.iter().chain(&w.anomalies) {
        let _ = writeln!(o, "  LEASE ANOMALY: {a}");
    }
    let _ = writeln!(o, "history: {}", history.display());
    let _ = writeln!(o, "verdict: {}", if r.valid() { "VALID" } else { "INVALID" });
    let _ = writeln!(
        o,
        "replay: cargo run --release -p raftkv-chaos -- lease --seed {} --duration {} --members {}",
        cfg.seed,
        cfg.duration.as_secs(),
        cfg.members
    );
    o
}
