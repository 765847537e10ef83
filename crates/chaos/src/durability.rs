//! Durability: under continuous writes, kill -9 every member at once, restart them all, and
//! verify that every acknowledged write is there with its value (or with a later value whose
//! write was in flight and so may have taken effect).

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use raftkv_api::etcdserverpb::kv_client::KvClient;
use raftkv_api::etcdserverpb::{PutRequest, RangeRequest};

use crate::cluster::{Cluster, ClusterSpec};
use crate::history::Outcome;
use crate::rng::Rng;
use crate::workload::{channel, classify};

#[derive(Clone, Debug)]
pub struct DurabilityConfig {
    pub seed: u64,
    pub members: usize,
    pub rounds: usize,
    pub write_for: Duration,
    pub workers: usize,
    pub binary: PathBuf,
    pub out: PathBuf,
}

/// Per key (each written by one worker, in sequence): every attempted value with its
/// outcome, in order.
type Attempts = BTreeMap<String, Vec<(u64, Outcome)>>;

pub async fn run(cfg: DurabilityConfig) -> Result<bool, String> {
    let dir = cfg.out.join(format!("durability-seed{}", cfg.seed));
    let _ = std::fs::remove_dir_all(&dir);
    let (mut cluster, endpoints) =
        Cluster::launch(ClusterSpec::new(cfg.members, cfg.binary.clone(), dir.clone()))?;
    crate::runner::wait_ready(&endpoints, Duration::from_secs(30)).await?;
    let attempts: Arc<Mutex<Attempts>> = Arc::default();
    let mut all_ok = true;
    let mut seq_base = 0u64;
    for round in 1..=cfg.rounds {
        let stop = Arc::new(AtomicBool::new(false));
        let mut tasks = Vec::new();
        for w in 0..cfg.workers {
            let mut clients: Vec<_> = endpoints
                .iter()
                .filter_map(|u| channel(u, Duration::from_secs(3)).ok().map(KvClient::new))
                .collect();
            let (stop, attempts) = (stop.clone(), attempts.clone());
            let mut rng = Rng::new(cfg.seed ^ (round as u64) << 32 ^ w as u64);
            tasks.push(tokio::spawn(async move {
                let mut seq = seq_base;
                while !stop.load(Ordering::Relaxed) {
                    seq += 1;
                    let key = format!("d{w}-{}", rng.below(8));
                    let m = rng.below(clients.len());
                    let req = PutRequest {
                        key: key.clone().into(),
                        value: seq.to_string().into(),
                        ..Default::default()
                    };
                    let outcome =
                        match tokio::time::timeout(Duration::from_secs(3), clients[m].put(req)).await {
                            Ok(Ok(_)) => Outcome::Ok,
                            Ok(Err(s)) => classify(&s),
                            Err(_) => Outcome::Unknown,
                        };
                    attempts
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .entry(key)
                        .or_default()
                        .push((seq, outcome));
                    if outcome != Outcome::Ok {
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                }
            }));
        }
        tokio::time::sleep(cfg.write_for).await;
        // Every member at once, while writes are in flight.
        for i in 0..cluster.members.len() {
            cluster.kill(i);
        }
        let acked_before = count(&attempts, Outcome::Ok);
        eprintln!(
            "durability round {round}: killed every member (kill -9) after {acked_before} acknowledged writes in total"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
        stop.store(true, Ordering::Relaxed);
        for t in tasks {
            let _ = t.await;
        }
        seq_base += 1_000_000;
        cluster.start_all()?;
        crate::runner::wait_ready(&endpoints, Duration::from_secs(30)).await?;
        let snapshot = attempts.lock().unwrap_or_else(|e| e.into_inner()).clone();
        let (checked, lost) = verify(&endpoints, &snapshot).await?;
        eprintln!(
            "durability round {round}: restarted every member; {checked} keys checked, {} problems",
            lost.len()
        );
        for l in &lost {
            eprintln!("  LOST: {l}");
        }
        all_ok &= lost.is_empty() && checked > 0;
    }
    cluster.cleanup();
    let total = count(&attempts, Outcome::Ok);
    eprintln!(
        "durability: {} rounds, {total} acknowledged writes, {} unknown, {} failed: {}",
        cfg.rounds,
        count(&attempts, Outcome::Unknown),
        count(&attempts, Outcome::Fail),
        if all_ok { "every acknowledged write survived" } else { "ACKNOWLEDGED WRITES LOST" }
    );
    Ok(all_ok)
}

fn count(a: &Arc<Mutex<Attempts>>, o: Outcome) -> usize {
    a.lock().unwrap_or_else(|e| e.into_inner()).values().flatten().filter(|(_, x)| *x == o).count()
}

async fn verify(endpoints: &[String], attempts: &Attempts) -> Result<(usize, Vec<String>), String> {
    let mut problems = Vec::new();
    let mut checked = 0;
    let mut clients: Vec<_> =
        endpoints.iter().filter_map(|u| channel(u, Duration::from_secs(3)).ok().map(KvClient::new)).collect();
    for (key, tries) in attempts {
        let Some(last_ok) = tries.iter().rposition(|(_, o)| *o == Outcome::Ok) else { continue };
        checked += 1;
        // Acceptable: the last acknowledged value, or a later one that may have been applied.
        let acceptable: Vec<u64> =
            tries[last_ok..].iter().filter(|(_, o)| *o != Outcome::Fail).map(|(v, _)| *v).collect();
        let mut got = None;
        for attempt in 0..40 {
            let c = &mut clients[attempt % endpoints.len()];
            let req = RangeRequest { key: key.clone().into(), ..Default::default() };
            if let Ok(Ok(r)) = tokio::time::timeout(Duration::from_secs(3), c.range(req)).await {
                got = Some(
                    r.into_inner().kvs.first().map(|kv| String::from_utf8_lossy(&kv.value).into_owned()),
                );
                break;
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
        match got {
            None => return Err(format!("cannot read {key} after the restart")),
            Some(None) => problems.push(format!("{key}: absent, but {} was acknowledged", tries[last_ok].0)),
            Some(Some(v)) => {
                if !v.parse::<u64>().is_ok_and(|n| acceptable.contains(&n)) {
                    problems.push(format!(
                        "{key}: holds {v}, but {} was acknowledged (acceptable: {acceptable:?})",
                        tries[last_ok].0
                    ));
                }
            }
        }
    }
    Ok((checked, problems))
}
