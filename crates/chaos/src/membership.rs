//! Membership changes as a nemesis, over etcd's Cluster API: add a member (a learner, started
//! with `--initial-cluster-state existing` on an empty data dir, promoted once it has caught
//! up), remove one (the leader too), and replace one (removed, its data dir wiped, and a new
//! voter added on the same host), while the workload runs and the fault nemesis keeps
//! killing, pausing and partitioning. Each change is retried until the cluster confirms it
//! (an answer lost to a fault is settled by the next attempt's "already exists" or "not
//! found"); at the end every member must list the membership these changes intended.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use raftkv_api::etcdserverpb::cluster_client::ClusterClient;
use raftkv_api::etcdserverpb::maintenance_client::MaintenanceClient;
use raftkv_api::etcdserverpb::{
    Member, MemberAddRequest, MemberListRequest, MemberPromoteRequest, MemberRemoveRequest, StatusRequest,
};
use tonic::Code;

use crate::cluster::Cluster;
use crate::history::Recorder;
use crate::rng::Rng;
use crate::workload;

/// How long one change may take (retries included) before the run is failed: longer than
/// any fault the nemesis holds.
const CHANGE_PATIENCE: Duration = Duration::from_secs(40);
/// How long a new learner may take to catch up before it is promoted anyway.
const CATCH_UP_PATIENCE: Duration = Duration::from_secs(15);

/// The membership the changes intend: host index to learner flag.
pub type Intended = BTreeMap<usize, bool>;

#[derive(Debug, Default)]
pub struct MembershipReport {
    pub added: usize,
    pub promoted: usize,
    pub removed: usize,
    pub replaced: usize,
    /// Times for a new learner to reach the leader's applied index of when it was started.
    pub catch_up_ms: Vec<u64>,
    /// Members that exited on their own while they were members (the final heal restarts
    /// them on their data dirs).
    pub self_stopped: usize,
    /// Changes that did not complete, final lists that disagree: each fails the run.
    pub anomalies: Vec<String>,
}

impl MembershipReport {
    pub fn invalid(&self) -> bool {
        !self.anomalies.is_empty()
    }
}

fn lock(c: &Mutex<Cluster>) -> std::sync::MutexGuard<'_, Cluster> {
    c.lock().unwrap_or_else(|e| e.into_inner())
}

/// The client URLs of the hosts that are members now, the leader's first.
fn targets(cluster: &Mutex<Cluster>, leader: Option<usize>) -> Vec<String> {
    let c = lock(cluster);
    let mut order: Vec<usize> = (0..c.members.len()).filter(|&i| c.members[i].active).collect();
    if let Some(l) = leader
        && let Some(pos) = order.iter().position(|&i| i == l)
    {
        order.swap(0, pos);
    }
    order.into_iter().map(|i| c.members[i].client_url()).collect()
}

enum Attempt<T> {
    Done(T),
    /// The change is known to have been applied already (by an earlier attempt whose answer
    /// was lost).
    AlreadyDone,
    Retry(String),
}

/// Sends one change to each member in turn until one confirms it, retrying for
/// [`CHANGE_PATIENCE`]; `settled` says which refusals mean an earlier attempt took effect.
async fn change<T, F, Fut>(
    cluster: &Mutex<Cluster>,
    leader: &Mutex<Option<usize>>,
    what: &str,
    settled: fn(&tonic::Status) -> bool,
    mut send: F,
) -> Result<Option<T>, String>
where
    F: FnMut(ClusterClient<tonic::transport::Channel>) -> Fut,
    Fut: std::future::Future<Output = Result<T, tonic::Status>>,
{
    let deadline = Instant::now() + CHANGE_PATIENCE;
    let mut last = String::new();
    while Instant::now() < deadline {
        let l = *leader.lock().unwrap_or_else(|e| e.into_inner());
        for url in targets(cluster, l) {
            let Ok(ch) = workload::channel(&url, Duration::from_secs(5)) else { continue };
            let r = match tokio::time::timeout(Duration::from_secs(6), send(ClusterClient::new(ch))).await {
                Ok(Ok(v)) => Attempt::Done(v),
                Ok(Err(s)) if settled(&s) => Attempt::AlreadyDone,
                Ok(Err(s)) => Attempt::Retry(format!("{url}: {:?} {}", s.code(), s.message())),
                Err(_) => Attempt::Retry(format!("{url}: no answer in 6 s")),
            };
            match r {
                Attempt::Done(v) => return Ok(Some(v)),
                Attempt::AlreadyDone => return Ok(None),
                Attempt::Retry(e) => last = e,
            }
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    Err(format!("{what} not confirmed within {CHANGE_PATIENCE:?}; last error: {last}"))
}

/// The member list as one member sees it.
async fn list(url: &str) -> Result<Vec<Member>, String> {
    let ch = workload::channel(url, Duration::from_secs(3))?;
    let r = tokio::time::timeout(
        Duration::from_secs(4),
        ClusterClient::new(ch).member_list(MemberListRequest {}),
    )
    .await
    .map_err(|_| format!("{url}: no answer"))?
    .map_err(|e| format!("{url}: {}", e.message()))?;
    Ok(r.into_inner().members)
}

/// The id of the member with this peer URL: from the first member that lists it (one that
/// lags may not list it yet); None when every member that answers does not.
async fn id_of(cluster: &Mutex<Cluster>, peer: &str) -> Result<Option<u64>, String> {
    let deadline = Instant::now() + CHANGE_PATIENCE;
    while Instant::now() < deadline {
        let mut answered = false;
        for url in targets(cluster, None) {
            if let Ok(ms) = list(&url).await {
                answered = true;
                if let Some(m) = ms.iter().find(|m| m.peer_ur_ls.iter().any(|u| u == peer)) {
                    return Ok(Some(m.id));
                }
            }
        }
        if answered {
            return Ok(None);
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    Err(format!("no member answered a member list within {CHANGE_PATIENCE:?}"))
}

/// One member's Maintenance.Status (None when it does not answer in 2 s).
pub async fn status(url: &str) -> Option<raftkv_api::etcdserverpb::StatusResponse> {
    let ch = workload::channel(url, Duration::from_secs(2)).ok()?;
    let r = tokio::time::timeout(Duration::from_secs(2), MaintenanceClient::new(ch).status(StatusRequest {}))
        .await;
    r.ok()?.ok().map(|r| r.into_inner())
}

/// The highest applied index any member reports (the leader's, unless it is cut off).
async fn applied_index(cluster: &Mutex<Cluster>) -> u64 {
    let mut best = 0;
    for url in targets(cluster, None) {
        if let Some(s) = status(&url).await {
            best = best.max(s.raft_applied_index);
        }
    }
    best
}

/// Waits until host `i` has applied `index`; returns the time it took.
pub async fn catch_up(url: &str, index: u64, patience: Duration) -> Option<Duration> {
    let started = Instant::now();
    while started.elapsed() < patience {
        if let Some(s) = status(url).await
            && s.raft_applied_index >= index
        {
            return Some(started.elapsed());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    None
}

/// `--initial-cluster` for a member joining on host `joining`: every intended member.
fn join_string(c: &Cluster, intended: &Intended, joining: usize) -> String {
    intended
        .keys()
        .chain(std::iter::once(&joining))
        .collect::<std::collections::BTreeSet<_>>()
        .into_iter()
        .map(|&i| format!("{}={}", c.members[i].name, c.members[i].peer_url()))
        .collect::<Vec<_>>()
        .join(",")
}

pub struct Changer {
    pub cluster: Arc<Mutex<Cluster>>,
    pub leader: Arc<Mutex<Option<usize>>>,
    pub recorder: Recorder,
    pub intended: Intended,
    pub report: MembershipReport,
    /// Ids of members removed so far: a member that lags may still list one of them on the
    /// peer URL a new member is added on.
    removed: std::collections::BTreeSet<u64>,
}

impl Changer {
    pub fn new(
        cluster: Arc<Mutex<Cluster>>,
        leader: Arc<Mutex<Option<usize>>>,
        recorder: Recorder,
    ) -> Changer {
        let intended = {
            let c = lock(&cluster);
            (0..c.members.len()).filter(|&i| c.members[i].active).map(|i| (i, false)).collect()
        };
        Changer {
            cluster,
            leader,
            recorder,
            intended,
            report: MembershipReport::default(),
            removed: Default::default(),
        }
    }

    fn name(&self, i: usize) -> String {
        lock(&self.cluster).members[i].name.clone()
    }

    /// Adds a member on host `i` (learner or voter), starts it and, for a learner, waits
    /// until it has caught up and promotes it.
    pub async fn add(&mut self, i: usize, learner: bool) -> Result<(), String> {
        let (peer, url, name) = {
            let c = lock(&self.cluster);
            (c.members[i].peer_url(), c.members[i].client_url(), c.members[i].name.clone())
        };
        let req = MemberAddRequest { peer_ur_ls: vec![peer.clone()], is_learner: learner };
        let what = format!("member add {name} ({peer}{})", if learner { ", learner" } else { "" });
        let target = applied_index(&self.cluster).await;
        // An attempt whose answer was lost may have added the member: a retry is then refused
        // as a duplicate, or (for a voter that is not started yet) by etcd's strict
        // reconfiguration checks. Either way the member list tells.
        change(
            &self.cluster,
            &self.leader,
            &what,
            |s| s.code() == Code::FailedPrecondition && s.message().contains("Peer URLs already exists"),
            |mut c| {
                let req = req.clone();
                let peer = peer.clone();
                let removed = self.removed.clone();
                async move {
                    match c.member_add(req).await {
                        Ok(r) => Ok(r),
                        // (etcd's "not enough started members" / "unhealthy cluster" for a
                        // voter added but not started yet): done if the member list (applied,
                        // so committed) has it under an id not removed before.
                        Err(s) => match c.member_list(MemberListRequest {}).await {
                            Ok(l)
                                if l.get_ref()
                                    .members
                                    .iter()
                                    .any(|m| m.peer_ur_ls.contains(&peer) && !removed.contains(&m.id)) =>
                            {
                                Err(tonic::Status::failed_precondition("Peer URLs already exists"))
                            }
                            _ => Err(s),
                        },
                    }
                }
            },
        )
        .await?;
        self.intended.insert(i, learner);
        {
            let mut c = lock(&self.cluster);
            let join = join_string(&c, &self.intended, i);
            c.enlist(i, join)?;
            c.start(i)?;
        }
        self.recorder.nemesis(
            "member-add",
            format!("{name} added as a {} on an empty data dir", if learner { "learner" } else { "voter" }),
        );
        self.report.added += 1;
        if !learner {
            return Ok(());
        }
        match catch_up(&url, target, CATCH_UP_PATIENCE).await {
            Some(took) => {
                self.report.catch_up_ms.push(took.as_millis() as u64);
                self.recorder.nemesis(
                    "member-caught-up",
                    format!("{name} applied index {target} {} ms after it started", took.as_millis()),
                );
            }
            None => self.recorder.nemesis(
                "member-caught-up",
                format!(
                    "{name} had not applied index {target} after {CATCH_UP_PATIENCE:?}; promoting anyway"
                ),
            ),
        }
        self.promote(i).await
    }

    async fn promote(&mut self, i: usize) -> Result<(), String> {
        let (peer, name) = {
            let c = lock(&self.cluster);
            (c.members[i].peer_url(), c.members[i].name.clone())
        };
        let Some(id) = id_of(&self.cluster, &peer).await? else {
            return Err(format!("{name} ({peer}) is not in the member list to be promoted"));
        };
        change(
            &self.cluster,
            &self.leader,
            &format!("member promote {name}"),
            // Refused because it is a voter already (not because it is still behind: etcd
            // says "... which is in sync with leader" then, and that is retried).
            |s| {
                s.code() == Code::FailedPrecondition
                    && s.message().contains("can only promote a learner member")
                    && !s.message().contains("in sync")
            },
            |mut c| async move { c.member_promote(MemberPromoteRequest { id }).await },
        )
        .await?;
        self.intended.insert(i, false);
        self.recorder.nemesis("member-promote", format!("{name} promoted to voter"));
        self.report.promoted += 1;
        Ok(())
    }

    /// Removes the member on host `i`, then stops it and wipes its data dir.
    pub async fn remove(&mut self, i: usize) -> Result<(), String> {
        let (peer, name) = {
            let c = lock(&self.cluster);
            (c.members[i].peer_url(), c.members[i].name.clone())
        };
        let was_leader = *self.leader.lock().unwrap_or_else(|e| e.into_inner()) == Some(i);
        match id_of(&self.cluster, &peer).await? {
            Some(id) => {
                // From here it may stop on its own: a peer that applied the removal tells it.
                lock(&self.cluster).members[i].removing = true;
                let removed = change(
                    &self.cluster,
                    &self.leader,
                    &format!("member remove {name}"),
                    |s| s.code() == Code::NotFound,
                    |mut c| async move { c.member_remove(MemberRemoveRequest { id }).await },
                )
                .await;
                if removed.is_err() {
                    lock(&self.cluster).members[i].removing = false;
                }
                removed?;
                self.removed.insert(id);
            }
            None => {
                return Err(format!("{name} ({peer}) is not in the member list to be removed"));
            }
        }
        self.intended.remove(&i);
        // A removed member stops on its own once it learns of its removal; give it a moment.
        let deadline = Instant::now() + Duration::from_secs(3);
        let stopped = loop {
            let running = {
                let cluster = self.cluster.clone();
                let mut c = lock(&cluster);
                self.reap(&mut c, Some(i));
                c.members[i].running()
            };
            if !running || Instant::now() > deadline {
                break !running;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        };
        lock(&self.cluster).retire(i)?;
        self.recorder.nemesis(
            "member-remove",
            format!(
                "{name} removed{}; {}; data dir wiped",
                if was_leader { " [the leader]" } else { "" },
                if stopped { "it was no longer running" } else { "still running: stopped with kill -9" }
            ),
        );
        self.report.removed += 1;
        Ok(())
    }

    /// Removes the member on host `i` and adds a new voter there, on an empty data dir.
    pub async fn replace(&mut self, i: usize) -> Result<(), String> {
        self.remove(i).await?;
        self.add(i, false).await?;
        self.report.replaced += 1;
        Ok(())
    }

    /// Checks that every member lists the intended membership (same peer URLs, same
    /// learner flags) and that no removed host still runs; retried for `patience`, as the
    /// last change may still be on its way to a member that was down.
    pub async fn verify(&mut self, patience: Duration) {
        let deadline = Instant::now() + patience;
        loop {
            let problems = self.disagreements().await;
            if problems.is_empty() {
                let names: Vec<String> = self
                    .intended
                    .iter()
                    .map(|(&i, &l)| format!("{}{}", self.name(i), if l { " (learner)" } else { "" }))
                    .collect();
                self.recorder.nemesis("membership-final", format!("every member lists {}", names.join(", ")));
                return;
            }
            if Instant::now() > deadline {
                for p in &problems {
                    self.recorder.nemesis("membership-final", format!("DISAGREES: {p}"));
                }
                self.report.anomalies.extend(problems);
                return;
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }

    /// Reaps members that exited on their own and records them (all but `expected`, a member
    /// just removed).
    fn reap(&mut self, c: &mut Cluster, expected: Option<usize>) {
        for (i, status) in c.exited() {
            if Some(i) != expected {
                self.report.self_stopped += usize::from(c.members[i].active && !c.members[i].removing);
                self.recorder
                    .nemesis("member-exited", format!("{} exited on its own: {status}", c.members[i].name));
            }
        }
    }

    async fn disagreements(&mut self) -> Vec<String> {
        // Each host: name, client URL, a member, running.
        type Host = (String, String, bool, bool);
        let (want, hosts): (BTreeMap<String, bool>, Vec<Host>) = {
            let cluster = self.cluster.clone();
            let mut c = lock(&cluster);
            self.reap(&mut c, None);
            let want = self.intended.iter().map(|(&i, &l)| (c.members[i].peer_url(), l)).collect();
            let hosts =
                c.members.iter().map(|m| (m.name.clone(), m.client_url(), m.active, m.running())).collect();
            (want, hosts)
        };
        let mut problems = Vec::new();
        for (name, url, active, running) in hosts {
            if !active {
                if running {
                    problems.push(format!("{name} was removed but still runs"));
                }
                continue;
            }
            if !running {
                problems.push(format!("{name} is a member but stopped on its own (see {name}.log)"));
                continue;
            }
            match list(&url).await {
                Ok(ms) => {
                    let got: BTreeMap<String, bool> = ms
                        .iter()
                        .flat_map(|m| m.peer_ur_ls.iter().map(move |u| (u.clone(), m.is_learner)))
                        .collect();
                    if got != want {
                        problems.push(format!("{name} lists {got:?}, intended {want:?}"));
                    }
                }
                Err(e) => problems.push(format!("{name} did not answer the member list: {e}")),
            }
        }
        problems
    }
}

/// Runs changes one after another, from `start` until `until` (no change starts later),
/// then returns the changer for the final check. A change that cannot be completed ends
/// the changes and is reported as an anomaly.
pub async fn run(
    mut ch: Changer,
    seed: u64,
    start: Duration,
    until: Duration,
    stop: Arc<AtomicBool>,
) -> Changer {
    let mut rng = Rng::new(seed ^ 0x3e3b);
    let began = Instant::now();
    let (hosts, min_voters) = {
        let c = lock(&ch.cluster);
        (c.members.len(), c.spec.members)
    };
    let max_voters = hosts.min(min_voters + 2);
    tokio::time::sleep(start).await;
    while began.elapsed() < until && !stop.load(Ordering::Relaxed) {
        let voters: Vec<usize> = ch.intended.keys().copied().collect();
        let spares: Vec<usize> = (0..hosts).filter(|i| !ch.intended.contains_key(i)).collect();
        let mut kinds = Vec::new();
        if voters.len() < max_voters && !spares.is_empty() {
            kinds.push("add");
        }
        if voters.len() > min_voters {
            kinds.push("remove");
        }
        kinds.push("replace");
        let kind = kinds[rng.below(kinds.len())];
        let leader = *ch.leader.lock().unwrap_or_else(|e| e.into_inner());
        let victim = match leader {
            Some(l) if rng.chance(0.4) && voters.contains(&l) => l,
            _ => voters[rng.below(voters.len())],
        };
        let r = match kind {
            "add" => ch.add(spares[rng.below(spares.len())], true).await,
            "remove" => ch.remove(victim).await,
            _ => ch.replace(victim).await,
        };
        if let Err(e) = r {
            ch.recorder.nemesis("membership-error", e.clone());
            ch.report.anomalies.push(e);
            break;
        }
        tokio::time::sleep(Duration::from_millis(rng.range(1_000, 3_000))).await;
    }
    ch
}
