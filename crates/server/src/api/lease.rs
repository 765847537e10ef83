//! Leases: etcd's `Lease` service over gRPC and the JSON gateway, and the lessor that
//! decides expiry on the leader.
//!
//! The lease table itself is replicated state ([`raftkv_kv::LeaseTable`]): grants, revokes
//! and checkpoints are log entries. Expiry times are not: only the leader keeps them, in
//! its monotonic clock. When a lease's time is up the leader proposes a revoke entry, so
//! every member deletes the lease's keys at the same log position and revision.
//!
//! * Promotion: a member that becomes leader first applies everything committed before
//!   its term (a read barrier), then gives every lease `extend` (the election timeout)
//!   plus its checkpointed remaining TTL, or its full TTL when it has none (etcd's
//!   `Promote`). A lease granted later starts when the leader first sees it.
//! * Keep-alives are served by the leader; a follower forwards each one (and TimeToLive) to
//!   the leader over the peer transport ([`crate::member::forward`]), as etcd forwards to the
//!   leader's peer HTTP endpoint.
//! * Checkpoints (etcd 3.4's `--experimental-enable-lease-checkpoint`, always on here):
//!   every [`CHECKPOINT_INTERVAL`] the leader records the remaining TTL of each lease
//!   whose TTL exceeds the interval, so a new leader does not restart a long lease at
//!   its full TTL. A renewal clears a recorded checkpoint (one entry), as etcd does.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{MethodRouter, post};
use parking_lot::Mutex;
use raftkv_api::Command;
use raftkv_api::etcdserverpb::lease_server::{Lease, LeaseServer};
use raftkv_api::etcdserverpb::{
    LeaseGrantRequest, LeaseGrantResponse, LeaseKeepAliveRequest, LeaseKeepAliveResponse, LeaseLeasesRequest,
    LeaseLeasesResponse, LeaseRevokeRequest, LeaseRevokeResponse, LeaseStatus, LeaseTimeToLiveRequest,
    LeaseTimeToLiveResponse,
};
use raftkv_api::raftkvpb::{LeaseCheckpoint, LeaseCheckpointRequest};
use raftkv_kv::{ApplyResult, MAX_LEASE_TTL};
use serde::Serialize;
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Code, Status};

use crate::api::gateway;
use crate::api::service::Api;
use crate::member::forward::{self, Call, ForwardError};

/// How often the leader looks for expired leases and due checkpoints.
const TICK: Duration = Duration::from_millis(100);
/// Revokes proposed per tick at most (etcd: 1000 a second).
const MAX_REVOKES_PER_TICK: usize = 100;
/// etcd's default lease checkpoint interval.
pub const CHECKPOINT_INTERVAL: Duration = Duration::from_secs(300);
/// Checkpoints per entry at most (etcd's `maxLeaseCheckpointBatchSize`).
const MAX_CHECKPOINT_BATCH: usize = 1000;
/// Keep-alive responses buffered per stream: the stream reads the next request only
/// when the client takes the responses.
const KEEPALIVE_BUFFER: usize = 16;
/// Pause between forwards of a renewal or TimeToLive while the leader changes (etcd's 50 ms).
const FORWARD_RETRY_PAUSE: Duration = Duration::from_millis(50);

#[derive(Clone, Debug)]
pub struct LeaseConfig {
    /// The smallest TTL granted, in seconds (etcd: 1.5 election timeouts, rounded up).
    pub min_ttl: i64,
    /// What a new leader adds to every lease (etcd: the election timeout).
    pub extend: Duration,
    pub checkpoint_interval: Duration,
}

impl LeaseConfig {
    /// etcd's rule: `minTTL = ceil((3 * electionTicks / 2) * heartbeat)` seconds.
    pub fn new(heartbeat_ms: u64, election_ms: u64) -> LeaseConfig {
        let heartbeat_ms = heartbeat_ms.max(1);
        let election_ticks = election_ms / heartbeat_ms;
        let min_ms = (3 * election_ticks / 2) * heartbeat_ms;
        LeaseConfig {
            min_ttl: i64::try_from(min_ms.div_ceil(1000)).unwrap_or(i64::MAX).max(1),
            extend: Duration::from_millis(election_ms),
            checkpoint_interval: CHECKPOINT_INTERVAL,
        }
    }
}

/// The leader's view of lease expiry (empty on followers).
#[derive(Default)]
struct Lessor {
    /// The term in which this member became the primary lessor (0: it is not).
    term: u64,
    expiry: HashMap<i64, Instant>,
    /// Revokes proposed and not yet applied, with when they were proposed.
    revoking: HashMap<i64, Instant>,
    next_checkpoint: HashMap<i64, Instant>,
}

impl Lessor {
    fn demote(&mut self) {
        if self.term != 0 || !self.expiry.is_empty() {
            *self = Lessor::default();
        }
    }
}

/// The Lease service of one member.
#[derive(Clone)]
pub struct Leases {
    api: Api,
    config: Arc<LeaseConfig>,
    lessor: Arc<Mutex<Lessor>>,
}

fn secs(n: i64) -> Duration {
    Duration::from_secs(u64::try_from(n).unwrap_or(0))
}

impl Leases {
    /// The service, with its lessor loop running.
    pub fn start(api: Api, config: LeaseConfig) -> Leases {
        let leases =
            Leases { api, config: Arc::new(config), lessor: Arc::new(Mutex::new(Lessor::default())) };
        tokio::spawn(leases.clone().run());
        leases
    }

    async fn run(self) {
        let mut tick = tokio::time::interval(TICK);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            let status = self.api.node.status();
            if !status.is_leader {
                self.lessor.lock().demote();
                continue;
            }
            if self.lessor.lock().term != status.term {
                // Apply everything committed before this term, then take over.
                if self.api.node.read_barrier(self.api.request_timeout()).await.is_err() {
                    continue;
                }
                let now = self.api.node.status();
                if !now.is_leader || now.term != status.term {
                    continue;
                }
                self.promote(status.term);
            }
            let (revokes, checkpoints) = self.due();
            for id in revokes {
                let this = self.clone();
                tokio::spawn(async move {
                    let result =
                        this.api.propose(|rid| Command::lease_revoke(rid, LeaseRevokeRequest { id })).await;
                    match result {
                        Ok(_) => tracing::debug!(lease = id, "revoked an expired lease"),
                        Err(e) if e.code() == Code::NotFound => {}
                        Err(e) => {
                            tracing::info!(lease = id, error = %e, "cannot revoke an expired lease yet")
                        }
                    }
                });
            }
            if !checkpoints.is_empty() {
                let this = self.clone();
                tokio::spawn(async move {
                    let req = LeaseCheckpointRequest { checkpoints };
                    if let Err(e) = this.api.propose(|rid| Command::lease_checkpoint(rid, req)).await {
                        tracing::info!(error = %e, "cannot record lease checkpoints");
                    }
                });
            }
        }
    }

    /// Becomes the primary lessor for `term`: every lease gets `extend` plus its
    /// checkpointed remaining TTL (or its TTL).
    fn promote(&self, term: u64) {
        let now = Instant::now();
        let sm = self.api.node.shared.sm.read();
        let mut l = self.lessor.lock();
        *l = Lessor { term, ..Lessor::default() };
        for lease in sm.kv.leases().iter() {
            let left = if lease.remaining_ttl > 0 { lease.remaining_ttl } else { lease.ttl };
            l.expiry.insert(lease.id, now + self.config.extend + secs(left));
        }
        tracing::info!(term, leases = l.expiry.len(), "this member now decides lease expiry");
    }

    /// Syncs the expiry map with the table; returns the leases to revoke and the
    /// checkpoints to record.
    fn due(&self) -> (Vec<i64>, Vec<LeaseCheckpoint>) {
        let now = Instant::now();
        let retry = self.api.request_timeout();
        let interval = self.config.checkpoint_interval;
        let sm = self.api.node.shared.sm.read();
        let table = sm.kv.leases();
        let mut l = self.lessor.lock();
        let Lessor { expiry, revoking, next_checkpoint, .. } = &mut *l;
        if expiry.len() != table.len() || expiry.keys().any(|id| !table.contains(*id)) {
            expiry.retain(|id, _| table.contains(*id));
            revoking.retain(|id, _| table.contains(*id));
            next_checkpoint.retain(|id, _| table.contains(*id));
        }
        let mut revokes = Vec::new();
        let mut checkpoints = Vec::new();
        for lease in table.iter() {
            let at = *expiry.entry(lease.id).or_insert_with(|| now + secs(lease.ttl));
            if at <= now {
                if revokes.len() < MAX_REVOKES_PER_TICK
                    && revoking.get(&lease.id).is_none_or(|t| now.duration_since(*t) > retry)
                {
                    revoking.insert(lease.id, now);
                    revokes.push(lease.id);
                }
                continue;
            }
            if secs(lease.ttl) > interval && checkpoints.len() < MAX_CHECKPOINT_BATCH {
                let next = *next_checkpoint.entry(lease.id).or_insert(now + interval);
                if next <= now {
                    let left = (at - now).as_millis().div_ceil(1000);
                    checkpoints.push(LeaseCheckpoint {
                        id: lease.id,
                        remaining_ttl: i64::try_from(left).unwrap_or(0),
                    });
                    next_checkpoint.insert(lease.id, now + interval);
                }
            }
        }
        (revokes, checkpoints)
    }

    /// Waits until this member is the leader and has taken over lease expiry; `Ok(None)`
    /// when another member leads (its id).
    async fn primary(&self) -> Result<Option<u64>, Status> {
        let deadline = Instant::now() + self.api.request_timeout();
        loop {
            let s = self.api.node.status();
            if s.is_leader && self.lessor.lock().term == s.term {
                return Ok(None);
            }
            if !s.is_leader && s.leader != 0 {
                return Ok(Some(s.leader));
            }
            if Instant::now() >= deadline {
                return Err(Status::unavailable("etcdserver: no leader"));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Sends `req` as `call` to the leader, or answers None when this member is the leader.
    /// `forwarded`: the call came from a follower, which must not be sent on again. As etcd's
    /// followers do for renewals and TimeToLive, a failed forward (the leader just died, or
    /// is no longer the leader) is retried, against whichever member is the leader by then,
    /// until the request timeout: a leader change delays a keep-alive rather than failing it
    /// (which clients such as Patroni take for a lost lease).
    async fn on_leader<Req, Resp>(
        &self,
        forwarded: bool,
        call: Call,
        req: &Req,
    ) -> Result<Option<Resp>, Status>
    where
        Req: raftkv_api::prost::Message,
        Resp: raftkv_api::prost::Message + Default,
    {
        let deadline = Instant::now() + self.api.request_timeout();
        loop {
            let Some(leader) = self.primary().await? else { return Ok(None) };
            if forwarded {
                return Err(forward::not_leader_here());
            }
            let left = deadline.saturating_duration_since(Instant::now());
            let err = match forward::send(&self.api, leader, call, req, left).await {
                Ok(answer) => return Ok(Some(answer)),
                Err(ForwardError::Answer(status))
                    if !matches!(status.code(), Code::Unavailable | Code::Unknown | Code::Cancelled) =>
                {
                    return Err(status);
                }
                Err(e) => e.into_status(),
            };
            if Instant::now() + FORWARD_RETRY_PAUSE >= deadline {
                return Err(err);
            }
            tokio::time::sleep(FORWARD_RETRY_PAUSE).await;
        }
    }

    /// Lease of this member's table after a read barrier, for calls that must see the
    /// newest grants.
    async fn barrier(&self) -> Result<(), Status> {
        self.api
            .node
            .read_barrier(self.api.request_timeout())
            .await
            .map_err(|e| Status::unavailable(format!("etcdserver: {e}")))
    }

    pub async fn grant(&self, mut req: LeaseGrantRequest) -> Result<LeaseGrantResponse, Status> {
        if req.ttl > MAX_LEASE_TTL {
            return Err(Status::new(Code::OutOfRange, "etcdserver: too large lease TTL"));
        }
        while req.id == 0 {
            // Only positive IDs, as etcd.
            req.id = (self.api.node.next_request_id() & (i64::MAX as u64)) as i64;
        }
        req.ttl = req.ttl.max(self.config.min_ttl);
        self.api.require_user()?;
        match self.api.propose(|id| Command::lease_grant(id, req)).await? {
            ApplyResult::LeaseGrant(mut resp) => {
                self.api.fill(&mut resp.header);
                let s = self.api.node.status();
                let mut l = self.lessor.lock();
                if s.is_leader && l.term == s.term {
                    l.expiry.insert(resp.id, Instant::now() + secs(resp.ttl));
                }
                Ok(resp)
            }
            _ => Err(Status::internal("unexpected result for LeaseGrant")),
        }
    }

    pub async fn revoke(&self, req: LeaseRevokeRequest) -> Result<LeaseRevokeResponse, Status> {
        self.api.require_user()?;
        self.api.authorize(|sm, user| crate::api::auth::check_lease_keys(sm, user, req.id, true))?;
        match self.api.propose(|id| Command::lease_revoke(id, req)).await? {
            ApplyResult::LeaseRevoke(mut resp) => {
                self.api.fill(&mut resp.header);
                Ok(resp)
            }
            _ => Err(Status::internal("unexpected result for LeaseRevoke")),
        }
    }

    /// Renews a lease on the leader (forwarding when this member is not the leader;
    /// `forwarded`: a follower forwarded it here). An unknown or expired lease answers TTL 0,
    /// as etcd does.
    pub async fn renew(&self, id: i64, forwarded: bool) -> Result<LeaseKeepAliveResponse, Status> {
        let upstream: Option<LeaseKeepAliveResponse> =
            self.on_leader(forwarded, Call::LeaseKeepAlive, &LeaseKeepAliveRequest { id }).await?;
        if let Some(mut resp) = upstream {
            self.api.fill(&mut resp.header);
            return Ok(resp);
        }
        let mut resp = LeaseKeepAliveResponse { header: None, id, ttl: 0 };
        let revision = self.api.node.shared.sm.read().kv.revision();
        resp.header = Some(self.api.header(revision));
        let lookup = |this: &Leases| {
            let sm = this.api.node.shared.sm.read();
            sm.kv.leases().get(id).map(|l| (l.ttl, l.remaining_ttl))
        };
        let found = match lookup(self) {
            Some(found) => Some(found),
            None => {
                // Granted through another member and not applied here yet?
                self.barrier().await?;
                lookup(self)
            }
        };
        let Some((ttl, remaining)) = found else { return Ok(resp) };
        let now = Instant::now();
        {
            let mut l = self.lessor.lock();
            if l.expiry.get(&id).is_some_and(|at| *at <= now) {
                // Expired: its revoke is on its way.
                return Ok(resp);
            }
            l.expiry.insert(id, now + secs(ttl));
            l.next_checkpoint.remove(&id);
        }
        if remaining > 0 {
            let req = LeaseCheckpointRequest { checkpoints: vec![LeaseCheckpoint { id, remaining_ttl: 0 }] };
            self.api.propose(|rid| Command::lease_checkpoint(rid, req)).await?;
        }
        resp.ttl = ttl;
        Ok(resp)
    }

    pub async fn time_to_live(
        &self,
        req: LeaseTimeToLiveRequest,
        forwarded: bool,
    ) -> Result<LeaseTimeToLiveResponse, Status> {
        // Checked where the client's token lives (a forwarded call was checked by the
        // follower that received it).
        if !forwarded {
            self.api.require_user()?;
            if req.keys {
                self.api.authorize(|sm, user| crate::api::auth::check_lease_keys(sm, user, req.id, false))?;
            }
        }
        let upstream: Option<LeaseTimeToLiveResponse> =
            self.on_leader(forwarded, Call::LeaseTimeToLive, &req).await?;
        if let Some(mut resp) = upstream {
            self.api.fill(&mut resp.header);
            return Ok(resp);
        }
        self.barrier().await?;
        let now = Instant::now();
        let sm = self.api.node.shared.sm.read();
        let header = Some(self.api.header(sm.kv.revision()));
        let Some(lease) = sm.kv.leases().get(req.id) else {
            return Ok(LeaseTimeToLiveResponse {
                header,
                id: req.id,
                ttl: -1,
                granted_ttl: 0,
                keys: Vec::new(),
            });
        };
        let left = match self.lessor.lock().expiry.get(&req.id) {
            Some(at) => i64::try_from(at.saturating_duration_since(now).as_secs()).unwrap_or(i64::MAX),
            None => lease.ttl,
        };
        let keys = if req.keys {
            lease.keys.iter().map(|k| bytes::Bytes::copy_from_slice(k)).collect()
        } else {
            Vec::new()
        };
        Ok(LeaseTimeToLiveResponse { header, id: req.id, ttl: left, granted_ttl: lease.ttl, keys })
    }

    pub async fn leases(&self, _req: LeaseLeasesRequest) -> Result<LeaseLeasesResponse, Status> {
        self.barrier().await?;
        self.api.authorize(crate::api::auth::check_all_leases)?;
        let sm = self.api.node.shared.sm.read();
        let leases = sm.kv.leases().iter().map(|l| LeaseStatus { id: l.id }).collect();
        Ok(LeaseLeasesResponse { header: Some(self.api.header(sm.kv.revision())), leases })
    }
}

// ------------------------------------------------------------------ gRPC

#[tonic::async_trait]
impl Lease for Leases {
    async fn lease_grant(
        &self,
        req: tonic::Request<LeaseGrantRequest>,
    ) -> Result<tonic::Response<LeaseGrantResponse>, Status> {
        self.grant(req.into_inner()).await.map(tonic::Response::new)
    }

    async fn lease_revoke(
        &self,
        req: tonic::Request<LeaseRevokeRequest>,
    ) -> Result<tonic::Response<LeaseRevokeResponse>, Status> {
        self.revoke(req.into_inner()).await.map(tonic::Response::new)
    }

    type LeaseKeepAliveStream =
        crate::api::require_leader::UntilLeaderLost<ReceiverStream<Result<LeaseKeepAliveResponse, Status>>>;

    async fn lease_keep_alive(
        &self,
        req: tonic::Request<tonic::Streaming<LeaseKeepAliveRequest>>,
    ) -> Result<tonic::Response<Self::LeaseKeepAliveStream>, Status> {
        let required = crate::api::require_leader::required_by(&req);
        let mut inbound = req.into_inner();
        let (tx, rx) = mpsc::channel(KEEPALIVE_BUFFER);
        let this = self.clone();
        tokio::spawn(async move {
            while let Ok(Some(msg)) = inbound.message().await {
                let resp = this.renew(msg.id, false).await;
                let failed = resp.is_err();
                if tx.send(resp).await.is_err() || failed {
                    break;
                }
            }
        });
        let stream = ReceiverStream::new(rx);
        Ok(tonic::Response::new(crate::api::require_leader::UntilLeaderLost::new(
            &self.api, required, stream,
        )))
    }

    async fn lease_time_to_live(
        &self,
        req: tonic::Request<LeaseTimeToLiveRequest>,
    ) -> Result<tonic::Response<LeaseTimeToLiveResponse>, Status> {
        self.time_to_live(req.into_inner(), false).await.map(tonic::Response::new)
    }

    async fn lease_leases(
        &self,
        req: tonic::Request<LeaseLeasesRequest>,
    ) -> Result<tonic::Response<LeaseLeasesResponse>, Status> {
        self.leases(req.into_inner()).await.map(tonic::Response::new)
    }
}

/// The Lease gRPC service, for [`crate::api::grpc::routes`].
pub fn service(leases: Leases, limit: usize) -> LeaseServer<Leases> {
    LeaseServer::new(leases).max_decoding_message_size(limit)
}

// ------------------------------------------------------------------ JSON gateway

fn unary<Req, Resp, F, Fut>(leases: &Leases, call: F) -> MethodRouter
where
    Req: serde::de::DeserializeOwned + Default + Send + 'static,
    Resp: Serialize + Send + 'static,
    F: Fn(Leases, Req) -> Fut + Clone + Send + Sync + 'static,
    Fut: std::future::Future<Output = Result<Resp, Status>> + Send + 'static,
{
    let limit = gateway::body_limit(leases.api.max_request_bytes());
    gateway::unary_on(leases.clone(), limit, call)
}

/// grpc-gateway's error object inside a stream.
#[derive(Serialize)]
struct StreamError {
    grpc_code: i32,
    http_code: u16,
    message: String,
    http_status: String,
}

/// `/v3/lease/keepalive`: every JSON object of the body is one keep-alive; the answer
/// is one `{"result":{...}}` line per request (grpc-gateway's streaming form), or an
/// `{"error":{...}}` line where one fails.
async fn keepalive_gateway(leases: Leases, body: Body) -> Response {
    let limit = gateway::body_limit(leases.api.max_request_bytes());
    let bytes = match gateway::read_body(body, limit).await {
        Ok(b) => b,
        Err(status) => return gateway::error_response(&status),
    };
    let mut out = Vec::new();
    for value in serde_json::Deserializer::from_slice(&bytes).into_iter::<serde_json::Value>() {
        let req: Result<LeaseKeepAliveRequest, Status> = value
            .map_err(|e| Status::invalid_argument(e.to_string()))
            .and_then(|v| gateway::decode(&serde_json::to_vec(&v).unwrap_or_default()));
        let line = match req {
            Ok(req) => match leases.renew(req.id, false).await {
                // Field order as etcd's gateway prints it (header first).
                Ok(resp) => serde_json::to_vec(&resp).map(|r| [&b"{\"result\":"[..], &r, b"}"].concat()),
                Err(status) => serde_json::to_vec(&stream_error(&status)),
            },
            Err(status) => serde_json::to_vec(&stream_error(&status)),
        };
        let failed = !matches!(&line, Ok(l) if l.starts_with(b"{\"result\""));
        out.extend(line.unwrap_or_default());
        out.push(b'\n');
        if failed {
            break;
        }
    }
    let mut resp = (StatusCode::OK, out).into_response();
    resp.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    resp
}

fn stream_error(status: &Status) -> serde_json::Value {
    let http = gateway::http_status(status.code());
    serde_json::json!({ "error": StreamError {
        grpc_code: status.code() as i32,
        http_code: http.as_u16(),
        message: status.message().to_string(),
        http_status: http.canonical_reason().unwrap_or("").to_string(),
    }})
}

/// The gateway's lease routes, as etcd 3.4 binds them (with the `/v3/kv/lease/...`
/// aliases and the `/v3beta` prefix).
pub fn gateway_router(leases: Leases) -> Router {
    let mut router = Router::new();
    for prefix in ["/v3", "/v3beta"] {
        let ka = leases.clone();
        router = router
            .route(
                &format!("{prefix}/lease/grant"),
                unary(&leases, |l: Leases, r| async move { l.grant(r).await }),
            )
            .route(
                &format!("{prefix}/lease/keepalive"),
                post(move |body: Body| keepalive_gateway(ka.clone(), body)),
            );
        for base in ["lease", "kv/lease"] {
            router = router
                .route(
                    &format!("{prefix}/{base}/revoke"),
                    unary(&leases, |l: Leases, r| async move { l.revoke(r).await }),
                )
                .route(
                    &format!("{prefix}/{base}/timetolive"),
                    unary(&leases, |l: Leases, r| async move { l.time_to_live(r, false).await }),
                )
                .route(
                    &format!("{prefix}/{base}/leases"),
                    unary(&leases, |l: Leases, r| async move { l.leases(r).await }),
                );
        }
    }
    router
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn min_ttl_follows_etcd() {
        // etcd defaults: heartbeat 100 ms, election 1000 ms -> 15 ticks * 100 ms -> 2 s.
        assert_eq!(LeaseConfig::new(100, 1000).min_ttl, 2);
        assert_eq!(LeaseConfig::new(100, 3000).min_ttl, 5);
        assert_eq!(LeaseConfig::new(50, 200).min_ttl, 1);
        assert_eq!(LeaseConfig::new(0, 0).min_ttl, 1);
    }
}
