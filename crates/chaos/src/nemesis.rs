//! Faults, scheduled from a seed: kill -9 and restart on the same data, SIGSTOP/SIGCONT,
//! partitions (random halves, the leader isolated, a majority ring, one-way loss), heal.
//! With the membership profile these run beside [`crate::membership`]'s changes; faults
//! then hit the hosts that are members when the fault starts.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use raftkv_api::etcdserverpb::StatusRequest;
use raftkv_api::etcdserverpb::maintenance_client::MaintenanceClient;

use crate::cluster::Cluster;
use crate::history::{Record, Recorder};
use crate::rng::Rng;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Profile {
    Partitions,
    KillsPauses,
    Mixed,
    /// Only isolates the leader, for the stale-read demonstration.
    IsolateLeader,
    /// No faults at all (a baseline; reported as suspect).
    None,
    /// Mixed faults while members are added, promoted, removed and replaced.
    Membership,
}

impl std::str::FromStr for Profile {
    type Err = String;
    fn from_str(s: &str) -> Result<Profile, String> {
        Ok(match s {
            "partitions" => Profile::Partitions,
            "kills-pauses" => Profile::KillsPauses,
            "mixed" => Profile::Mixed,
            "isolate-leader" => Profile::IsolateLeader,
            "none" => Profile::None,
            "membership" => Profile::Membership,
            _ => {
                return Err(format!(
                    "unknown profile {s:?}: partitions, kills-pauses, mixed, isolate-leader, none, membership"
                ));
            }
        })
    }
}

impl std::fmt::Display for Profile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Profile::Partitions => "partitions",
            Profile::KillsPauses => "kills-pauses",
            Profile::Mixed => "mixed",
            Profile::IsolateLeader => "isolate-leader",
            Profile::None => "none",
            Profile::Membership => "membership",
        })
    }
}

/// Which member a fault hits: the leader when the fault starts (or a random one if there is
/// none), or a fixed member.
#[derive(Clone, Copy, Debug)]
pub enum Target {
    Leader,
    Member(usize),
}

#[derive(Clone, Debug)]
pub enum Fault {
    Kill(Target),
    Pause(Target),
    /// Random halves (a given split).
    Halves(Vec<Vec<usize>>),
    IsolateLeader,
    /// Members in a ring (the given order): each hears only its neighbours, so each sees a
    /// majority, but a different one.
    Ring(Vec<usize>),
    /// Packets from `from` to each of `to` dropped with probability `p` (the other direction
    /// is untouched).
    OneWay {
        from: Target,
        to: Vec<usize>,
        p: f64,
    },
}

#[derive(Clone, Debug)]
pub struct Planned {
    pub at: Duration,
    pub hold: Duration,
    pub fault: Fault,
}

/// The whole schedule, drawn from the seed before the run starts.
pub fn schedule(profile: Profile, seed: u64, duration: Duration, members: usize) -> Vec<Planned> {
    let mut rng = Rng::new(seed);
    let mut out = Vec::new();
    if profile == Profile::None {
        return out;
    }
    let warmup = 3_000u64;
    let final_quiet = 8_000u64;
    let end = (duration.as_millis() as u64).saturating_sub(final_quiet);
    let mut t = warmup;
    loop {
        let target =
            |rng: &mut Rng| if rng.chance(0.5) { Target::Leader } else { Target::Member(rng.below(members)) };
        let kinds: &[&str] = match profile {
            Profile::Partitions => &["halves", "leader", "ring", "oneway"],
            Profile::KillsPauses => &["kill", "kill", "pause", "pause"],
            Profile::Mixed | Profile::Membership => &["kill", "pause", "halves", "leader", "ring", "oneway"],
            Profile::IsolateLeader => &["leader"],
            Profile::None => &[],
        };
        let kind = kinds[rng.below(kinds.len())];
        let (fault, hold) = match kind {
            "kill" => (Fault::Kill(target(&mut rng)), rng.range(1_000, 4_000)),
            "pause" => (Fault::Pause(target(&mut rng)), rng.range(2_000, 5_000)),
            "halves" => {
                let mut ids: Vec<usize> = (0..members).collect();
                rng.shuffle(&mut ids);
                let b = ids.split_off(members / 2);
                (Fault::Halves(vec![ids, b]), rng.range(3_000, 8_000))
            }
            "leader" => (
                Fault::IsolateLeader,
                if profile == Profile::IsolateLeader {
                    rng.range(5_000, 8_000)
                } else {
                    rng.range(3_000, 8_000)
                },
            ),
            "ring" => {
                let mut ids: Vec<usize> = (0..members).collect();
                rng.shuffle(&mut ids);
                (Fault::Ring(ids), rng.range(3_000, 8_000))
            }
            _ => {
                let from = target(&mut rng);
                let mut to: Vec<usize> = (0..members).filter(|_| rng.chance(0.6)).collect();
                if to.is_empty() {
                    to.push(rng.below(members));
                }
                let p = if rng.chance(0.5) { 1.0 } else { rng.range(50, 95) as f64 / 100.0 };
                (Fault::OneWay { from, to, p }, rng.range(3_000, 8_000))
            }
        };
        if t + hold > end {
            break;
        }
        out.push(Planned { at: Duration::from_millis(t), hold: Duration::from_millis(hold), fault });
        t += hold + rng.range(1_500, 4_000);
    }
    out
}

/// Tracks the leader by polling every member's Maintenance.Status.
pub struct LeaderMonitor {
    pub current: Arc<Mutex<Option<usize>>>,
}

pub fn spawn_monitor(endpoints: Vec<String>, recorder: Recorder, stop: Arc<AtomicBool>) -> LeaderMonitor {
    let current = Arc::new(Mutex::new(None));
    let cur = current.clone();
    tokio::spawn(async move {
        let mut clients: Vec<_> = endpoints
            .iter()
            .filter_map(|u| {
                crate::workload::channel(u, Duration::from_millis(400)).ok().map(MaintenanceClient::new)
            })
            .collect();
        let mut ids: BTreeMap<u64, usize> = BTreeMap::new();
        let mut best: (u64, u64) = (0, 0);
        while !stop.load(Ordering::Relaxed) {
            for (i, c) in clients.iter_mut().enumerate() {
                let r = tokio::time::timeout(Duration::from_millis(400), c.status(StatusRequest {})).await;
                let Ok(Ok(resp)) = r else { continue };
                let s = resp.into_inner();
                if let Some(h) = &s.header {
                    ids.insert(h.member_id, i);
                }
                if s.leader != 0
                    && (s.raft_term, s.leader) > best
                    && let Some(&m) = ids.get(&s.leader)
                {
                    best = (s.raft_term, s.leader);
                    recorder.record(Record::Leader { t_ns: recorder.now(), term: s.raft_term, member: m });
                    *cur.lock().unwrap_or_else(|p| p.into_inner()) = Some(m);
                }
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    });
    LeaderMonitor { current }
}

/// What ends a kill (restart) or a pause (SIGCONT).
type Undo = Box<dyn FnOnce(&mut Cluster, &Recorder) -> Result<(), String> + Send>;

/// The host a fault hits: the leader, or the given host; a host that is not a member then
/// stands for the next one that is.
fn resolve(t: Target, leader: Option<usize>, rng: &mut Rng, c: &Cluster) -> usize {
    let n = c.members.len();
    let m = match t {
        Target::Leader => leader.unwrap_or_else(|| rng.below(n)),
        Target::Member(m) => m,
    };
    (0..n).map(|k| (m + k) % n).find(|&i| c.members[i].active).unwrap_or(m)
}

fn names(c: &Cluster, ids: &[usize]) -> String {
    ids.iter().map(|&i| c.members[i].name.clone()).collect::<Vec<_>>().join(",")
}

/// Carries out the plan; returns when it is done (everything healed) or `stop` is set.
pub async fn run(
    plan: Vec<Planned>,
    cluster: Arc<Mutex<Cluster>>,
    leader: Arc<Mutex<Option<usize>>>,
    recorder: Recorder,
    seed: u64,
    stop: Arc<AtomicBool>,
) -> Result<(), String> {
    let mut rng = Rng::new(seed ^ 0xfa17);
    let start = tokio::time::Instant::now();
    for p in plan {
        tokio::time::sleep_until(start + p.at).await;
        if stop.load(Ordering::Relaxed) {
            break;
        }
        let l = *leader.lock().unwrap_or_else(|e| e.into_inner());
        let mut undo: Option<Undo> = None;
        {
            let mut c = cluster.lock().unwrap_or_else(|e| e.into_inner());
            let n = c.members.len();
            match &p.fault {
                Fault::Kill(t) => {
                    let m = resolve(*t, l, &mut rng, &c);
                    c.kill(m);
                    recorder.nemesis("kill", format!("{} (kill -9){}", c.members[m].name, lead_note(*t, l)));
                    undo = Some(Box::new(move |c: &mut Cluster, r: &Recorder| {
                        // A member removed meanwhile stays down; one added there meanwhile runs.
                        if c.members[m].active && !c.members[m].running() {
                            c.start(m)?;
                            r.nemesis("restart", format!("{} on its data dir", c.members[m].name));
                        }
                        Ok(())
                    }));
                }
                Fault::Pause(t) => {
                    let m = resolve(*t, l, &mut rng, &c);
                    c.pause(m);
                    recorder.nemesis(
                        "pause",
                        format!("{} (SIGSTOP for {:?}){}", c.members[m].name, p.hold, lead_note(*t, l)),
                    );
                    undo = Some(Box::new(move |c: &mut Cluster, r: &Recorder| {
                        c.resume(m);
                        r.nemesis("cont", format!("{} (SIGCONT)", c.members[m].name));
                        Ok(())
                    }));
                }
                Fault::Halves(groups) => {
                    c.partition(groups)?;
                    recorder.nemesis(
                        "partition-halves",
                        groups.iter().map(|g| format!("[{}]", names(&c, g))).collect::<Vec<_>>().join(" | "),
                    );
                }
                Fault::IsolateLeader => {
                    let m = resolve(Target::Leader, l, &mut rng, &c);
                    let rest: Vec<usize> = (0..n).filter(|&i| i != m).collect();
                    c.partition(&[vec![m], rest])?;
                    recorder.nemesis(
                        "partition-leader",
                        format!("{} isolated{}", c.members[m].name, lead_note(Target::Leader, l)),
                    );
                }
                Fault::Ring(order) => {
                    // Each member hears its ring neighbours; with 3 members, the next one only
                    // (so a hears b, b hears c, c hears a: each sees a different majority).
                    let k = order.len();
                    // Neighbours in the order +1, -1, +2, -2, ...; each member hears k/2 of them
                    // (itself plus k/2 is a majority).
                    let hears = |pos: usize| -> Vec<usize> {
                        (1..k).flat_map(|d| [order[(pos + d) % k], order[(pos + k - d) % k]]).fold(
                            Vec::new(),
                            |mut v, m| {
                                if v.len() < k / 2 && !v.contains(&m) {
                                    v.push(m);
                                }
                                v
                            },
                        )
                    };
                    let mut desc = Vec::new();
                    for (pos, &me) in order.iter().enumerate() {
                        let h = hears(pos);
                        for other in 0..k {
                            if other != me && !h.contains(&other) {
                                c.drop_from(other, me, 1.0)?;
                            }
                        }
                        desc.push(format!("{} hears {}", c.members[me].name, names(&c, &h)));
                    }
                    recorder.nemesis("partition-ring", desc.join("; "));
                }
                Fault::OneWay { from, to, p: prob } => {
                    let f = resolve(*from, l, &mut rng, &c);
                    let to: Vec<usize> = to.iter().copied().filter(|&t| t != f).collect();
                    for &t in &to {
                        c.drop_from(f, t, *prob)?;
                    }
                    recorder.nemesis(
                        "one-way-loss",
                        format!(
                            "{} -> [{}] loses {:.0}% of packets{}",
                            c.members[f].name,
                            names(&c, &to),
                            prob * 100.0,
                            lead_note(*from, l)
                        ),
                    );
                }
            }
        }
        let hold_until = tokio::time::Instant::now() + p.hold;
        while tokio::time::Instant::now() < hold_until && !stop.load(Ordering::Relaxed) {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let mut c = cluster.lock().unwrap_or_else(|e| e.into_inner());
        match undo {
            Some(u) => u(&mut c, &recorder)?,
            None => {
                c.heal()?;
                recorder.nemesis("heal", "all rules removed".into());
            }
        }
    }
    Ok(())
}

fn lead_note(t: Target, leader: Option<usize>) -> String {
    match (t, leader) {
        (Target::Leader, Some(_)) => " [the leader]".into(),
        (Target::Leader, None) => " [no leader known: random]".into(),
        _ => String::new(),
    }
}

/// Heals everything: rules removed, paused members resumed, dead members restarted.
pub fn heal_all(c: &mut Cluster, recorder: &Recorder) -> Result<(), String> {
    c.heal()?;
    for i in 0..c.members.len() {
        if c.members[i].paused {
            c.resume(i);
        }
        if c.members[i].active && !c.members[i].running() {
            c.start(i)?;
            recorder.nemesis("restart", format!("{} on its data dir", c.members[i].name));
        }
    }
    recorder.nemesis("final-heal", "rules removed, every member running".into());
    Ok(())
}
