//! Leadership transfer time under write load: a 3-member cluster (raftkv or etcd, the same
//! flags and hosts), writers putting as fast as they are answered, and Maintenance.MoveLeader
//! sent to the leader again and again, each time naming the next member. Measured per
//! transfer: the MoveLeader call (both servers answer once the target leads) and the time
//! until the target reports itself leader, and the longest time without a successful write
//! from the request until 200 ms after it.

use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use raftkv_api::etcdserverpb::MoveLeaderRequest;
use raftkv_api::etcdserverpb::maintenance_client::MaintenanceClient;

use crate::cluster::{Cluster, ClusterSpec};
use crate::membership;
use crate::rolling::{Load, leader, lock, start_load};
use crate::workload;

#[derive(Clone, Debug)]
pub struct TransferConfig {
    pub binary: PathBuf,
    /// The binary is etcd.
    pub etcd: bool,
    pub out: PathBuf,
    pub writers: usize,
    pub transfers: usize,
}

#[derive(Clone, Debug, Default)]
pub struct TransferReport {
    /// MoveLeader call durations (ms), one per transfer.
    pub call_ms: Vec<f64>,
    /// From the request until the target reported itself leader (ms).
    pub leading_ms: Vec<f64>,
    /// The longest write gap around each transfer (ms).
    pub gap_ms: Vec<f64>,
    /// The longest write gap over 3 s of the same load without transfers (ms).
    pub baseline_gap_ms: f64,
    /// MoveLeader calls that failed (each retried with the next transfer).
    pub failed: usize,
    pub writes: u64,
    pub election_ms: u64,
}

/// The `p`-th percentile (0-100) of `v`, nearest rank.
fn percentile(v: &[f64], p: f64) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    let rank = ((p / 100.0) * s.len() as f64).ceil() as usize;
    s[rank.clamp(1, s.len()) - 1]
}

impl TransferReport {
    pub fn render(&self, cfg: &TransferConfig) -> String {
        use std::fmt::Write;
        let mut o = String::new();
        let _ = writeln!(
            o,
            "== leadership transfer: {}, 3 members, {} writers, {} transfers ({} failed), election timeout {} ms",
            if cfg.etcd { "etcd" } else { "raftkv" },
            cfg.writers,
            self.call_ms.len(),
            self.failed,
            self.election_ms
        );
        let row = |name: &str, v: &[f64]| {
            format!(
                "{name:<28} p50 {:>7.1}  p99 {:>7.1}  max {:>7.1} ms\n",
                percentile(v, 50.0),
                percentile(v, 99.0),
                percentile(v, 100.0)
            )
        };
        o.push_str(&row("MoveLeader call", &self.call_ms));
        o.push_str(&row("until the target leads", &self.leading_ms));
        o.push_str(&row("longest write gap", &self.gap_ms));
        let _ = writeln!(
            o,
            "longest write gap without transfers: {:.1} ms; {} writes",
            self.baseline_gap_ms, self.writes
        );
        o
    }
}

/// The member id each member reports in its Status header, by host index.
async fn member_ids(cluster: &Arc<Mutex<Cluster>>) -> Result<Vec<u64>, String> {
    let urls: Vec<String> = lock(cluster).members.iter().map(|m| m.client_url()).collect();
    let mut ids = Vec::new();
    for url in urls {
        let s = membership::status(&url).await.ok_or_else(|| format!("no status from {url}"))?;
        ids.push(s.header.map_or(0, |h| h.member_id));
    }
    Ok(ids)
}

pub async fn run(cfg: TransferConfig) -> Result<TransferReport, String> {
    let kind = if cfg.etcd { "etcd" } else { "raftkv" };
    let dir = cfg.out.join(format!("transfer-{kind}"));
    if dir.exists() {
        std::fs::remove_dir_all(&dir).map_err(|e| format!("cannot clear {}: {e}", dir.display()))?;
    }
    let spec = ClusterSpec { etcd: cfg.etcd, ..ClusterSpec::new(3, cfg.binary.clone(), dir.clone()) };
    let election_ms = spec.election_ms;
    let (cluster, _) = Cluster::launch(spec)?;
    let endpoints: Vec<String> = cluster.members.iter().map(|m| m.client_url()).collect();
    let cluster = Arc::new(Mutex::new(cluster));
    crate::runner::wait_ready(&endpoints, Duration::from_secs(30)).await?;
    let ids = member_ids(&cluster).await?;
    let (load, stop, tasks, baseline) = start_load(&endpoints, cfg.writers).await;
    let mut report = TransferReport {
        baseline_gap_ms: baseline.as_secs_f64() * 1000.0,
        election_ms,
        ..Default::default()
    };
    let result = transfers(&cfg, &cluster, &endpoints, &ids, &load, &mut report).await;
    stop.store(true, Ordering::Relaxed);
    for t in tasks {
        let _ = t.await;
    }
    result?;
    report.writes = load.done.lock().unwrap_or_else(|e| e.into_inner()).len() as u64;
    lock(&cluster).cleanup();
    Ok(report)
}

async fn transfers(
    cfg: &TransferConfig,
    cluster: &Arc<Mutex<Cluster>>,
    endpoints: &[String],
    ids: &[u64],
    load: &Arc<Load>,
    report: &mut TransferReport,
) -> Result<(), String> {
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    let mut attempts = 0;
    while report.call_ms.len() < cfg.transfers {
        attempts += 1;
        if attempts > cfg.transfers * 2 + 10 {
            return Err(format!("only {} of {} transfers succeeded", report.call_ms.len(), cfg.transfers));
        }
        let Some(from) = leader(cluster).await else {
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        };
        let to = (from + 1) % endpoints.len();
        let mut client =
            MaintenanceClient::new(workload::channel(&endpoints[from], Duration::from_secs(10))?);
        let started = Instant::now();
        let call = client.move_leader(MoveLeaderRequest { target_id: ids[to] }).await;
        let call_ms = ms(started.elapsed());
        if call.is_err() {
            report.failed += 1;
            tokio::time::sleep(Duration::from_millis(300)).await;
            continue;
        }
        let leading = loop {
            if let Some(s) = membership::status(&endpoints[to]).await
                && s.leader == ids[to]
            {
                break started.elapsed();
            }
            if started.elapsed() > Duration::from_secs(10) {
                return Err(format!("{} did not lead 10 s after MoveLeader answered", endpoints[to]));
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        };
        tokio::time::sleep(Duration::from_millis(200)).await;
        report.call_ms.push(call_ms);
        report.leading_ms.push(ms(leading));
        report.gap_ms.push(ms(load.max_gap(started, Instant::now())));
        // Let the load settle on the new leader before the next transfer.
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::percentile;

    #[test]
    fn percentiles_are_nearest_rank() {
        let v: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(percentile(&v, 50.0), 50.0);
        assert_eq!(percentile(&v, 99.0), 99.0);
        assert_eq!(percentile(&v, 100.0), 100.0);
        assert_eq!(percentile(&[3.0, 1.0, 2.0], 50.0), 2.0);
        assert!(percentile(&[], 50.0).is_nan());
    }
}
