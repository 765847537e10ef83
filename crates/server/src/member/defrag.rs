//! Maintenance.Defragment: rewrites this member's history store without the values that
//! compaction discarded ([`raftkv_kv::Defrag`]), while reads and writes go on. The copy
//! runs off the async workers in batches under the read lock; the switch to the new store
//! is the only step under the write lock, and its duration (the longest stall a client can
//! see) is logged and exported as `raftkv_defrag_stall_seconds`.
//!
//! Like etcd's, it concerns one member (the one the request reaches; `etcdctl defrag
//! --cluster` asks each); nothing goes through the log, and members' sizes differ until
//! each is defragmented.

use std::time::{Duration, Instant};

use raftkv_api::etcdserverpb::{DefragmentRequest, DefragmentResponse};
use std::sync::Arc;

use raftkv_kv::{DefragError, DefragStats};
use raftkv_node::Shared;
use tokio::sync::Notify;
use tonic::Status;

use crate::api::service::Api;
use crate::member::kvsm::KvMachine;

/// How long the switch waits for a snapshot or hash reading the store to finish.
const BUSY_WAIT: Duration = Duration::from_secs(60);
/// How long a failed background rewrite waits before trying again.
const RETRY_AFTER: Duration = Duration::from_secs(10);

fn failed(e: impl std::fmt::Display) -> Status {
    Status::unavailable(format!("etcdserver: defragmentation failed: {e}; retry"))
}

impl Api {
    /// Maintenance.Defragment: administrators only once auth is enabled (as etcd, with its
    /// unconverted refusals: see [`Api::require_admin_maintenance`]).
    pub async fn defragment(&self, _req: DefragmentRequest) -> Result<DefragmentResponse, Status> {
        self.require_admin_maintenance()?;
        let Ok(permit) = self.defrag_gate.clone().try_acquire_owned() else {
            return Err(Status::unavailable(
                "etcdserver: a defragmentation is already running on this member",
            ));
        };
        self.defragment_with(permit, "defragmented the history store").await.map_err(failed)?;
        // No header, as etcd 3.4 answers.
        Ok(DefragmentResponse { header: None })
    }

    /// Runs one defragmentation (the caller holds the member's defragmentation permit) off
    /// the async workers, and reports it as `what`.
    async fn defragment_with(
        &self,
        permit: tokio::sync::OwnedSemaphorePermit,
        what: &'static str,
    ) -> Result<DefragStats, DefragError> {
        let shared = self.node.shared.clone();
        let started = Instant::now();
        let (stats, stall) = tokio::task::spawn_blocking(move || {
            let _permit = permit;
            defragment_store(&shared)
        })
        .await
        .map_err(|e| DefragError::Io(std::io::Error::other(format!("defragmentation task failed: {e}"))))??;
        crate::metrics::get().defrag_stalled(stall);
        tracing::info!(
            size_before = stats.size_before,
            size_after = stats.size_after,
            took_ms = started.elapsed().as_millis() as u64,
            longest_stall_us = stall.as_micros() as u64,
            "{what}"
        );
        Ok(stats)
    }
}

/// Rewrites the history store in the background whenever compaction has left it mostly
/// garbage ([`raftkv_kv::KvStore::rewrite_due`]): the same defragmentation as
/// Maintenance.Defragment, so the applier never copies values itself. `due` is notified by
/// the state machine's hooks after an apply that leaves a rewrite due.
pub async fn rewrite_after_compaction(api: Api, due: Arc<Notify>) {
    loop {
        due.notified().await;
        // Waits behind a running Maintenance.Defragment, which leaves nothing to rewrite.
        let Ok(permit) = api.defrag_gate.clone().acquire_owned().await else { return };
        if !api.node.shared.sm.read().kv.rewrite_due() {
            continue;
        }
        if let Err(e) = api.defragment_with(permit, "rewrote the history store after compaction").await {
            tracing::warn!(error = %e, "could not rewrite the history store after compaction; will retry");
            tokio::time::sleep(RETRY_AFTER).await;
            due.notify_one();
        }
    }
}

/// Runs a whole defragmentation of `shared`'s store: the copy in batches under the read
/// lock, the switch under the write lock. Returns what it freed and how long the switch
/// held the write lock (the longest stall a client can see).
fn defragment_store(shared: &Shared<KvMachine>) -> Result<(DefragStats, Duration), DefragError> {
    let (mut plan, generation) = {
        let mut sm = shared.sm.write();
        let generation = sm.generation;
        (sm.kv.defrag_begin()?, generation)
    };
    loop {
        let sm = shared.sm.read();
        if sm.generation != generation {
            return Err(DefragError::Replaced);
        }
        match sm.kv.defrag_step(&mut plan) {
            Ok(true) => continue,
            Ok(false) => break,
            Err(e) => {
                drop(sm);
                let mut sm = shared.sm.write();
                if sm.generation == generation {
                    sm.kv.defrag_abort(plan);
                }
                return Err(e);
            }
        }
    }
    let deadline = Instant::now() + BUSY_WAIT;
    loop {
        let mut sm = shared.sm.write();
        if sm.generation != generation {
            return Err(DefragError::Replaced);
        }
        let switch = Instant::now();
        match sm.kv.defrag_finish(plan) {
            Ok(stats) => {
                // The store shrank outside an applied entry: the size the quota check reads.
                sm.publish();
                return Ok((stats, switch.elapsed()));
            }
            Err((Some(back), DefragError::Busy)) if Instant::now() < deadline => {
                plan = *back;
                drop(sm);
                std::thread::sleep(Duration::from_millis(20));
            }
            Err((Some(back), e)) => {
                sm.kv.defrag_abort(*back);
                return Err(e);
            }
            Err((None, e)) => return Err(e),
        }
    }
}
