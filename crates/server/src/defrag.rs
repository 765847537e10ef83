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
use raftkv_kv::DefragError;
use tonic::Status;

use crate::service::Api;

/// How long the switch waits for a snapshot or hash reading the store to finish.
const BUSY_WAIT: Duration = Duration::from_secs(60);

fn failed(e: impl std::fmt::Display) -> Status {
    Status::unavailable(format!("etcdserver: defragmentation failed: {e}; retry"))
}

impl Api {
    /// Maintenance.Defragment: administrators only once auth is enabled (as etcd, with its
    /// unconverted refusals: see [`Api::require_admin_maintenance`]).
    pub async fn defragment(&self, _req: DefragmentRequest) -> Result<DefragmentResponse, Status> {
        self.require_admin_maintenance()?;
        let Ok(_permit) = self.defrag_gate.clone().try_acquire_owned() else {
            return Err(Status::unavailable(
                "etcdserver: a defragmentation is already running on this member",
            ));
        };
        let shared = self.node.shared.clone();
        let started = Instant::now();
        let (stats, stall) = tokio::task::spawn_blocking(move || {
            let (mut plan, generation) = {
                let mut sm = shared.sm.write();
                let generation = sm.generation;
                (sm.kv.defrag_begin().map_err(failed)?, generation)
            };
            loop {
                let sm = shared.sm.read();
                if sm.generation != generation {
                    return Err(failed(DefragError::Replaced));
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
                        return Err(failed(e));
                    }
                }
            }
            let deadline = Instant::now() + BUSY_WAIT;
            loop {
                let mut sm = shared.sm.write();
                if sm.generation != generation {
                    return Err(failed(DefragError::Replaced));
                }
                let switch = Instant::now();
                match sm.kv.defrag_finish(plan) {
                    Ok(stats) => return Ok((stats, switch.elapsed())),
                    Err((Some(back), DefragError::Busy)) if Instant::now() < deadline => {
                        plan = *back;
                        drop(sm);
                        std::thread::sleep(Duration::from_millis(20));
                    }
                    Err((Some(back), e)) => {
                        sm.kv.defrag_abort(*back);
                        return Err(failed(e));
                    }
                    Err((None, e)) => return Err(failed(e)),
                }
            }
        })
        .await
        .map_err(|e| Status::internal(format!("defragmentation task failed: {e}")))??;
        crate::metrics::get().defrag_stalled(stall);
        tracing::info!(
            size_before = stats.size_before,
            size_after = stats.size_after,
            took_ms = started.elapsed().as_millis() as u64,
            longest_stall_us = stall.as_micros() as u64,
            "defragmented the history store"
        );
        // No header, as etcd 3.4 answers.
        Ok(DefragmentResponse { header: None })
    }
}
