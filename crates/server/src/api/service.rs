//! The etcd v3 operations, independent of how they arrive (gRPC or the JSON gateway).

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use raftkv_api::Command;
use raftkv_api::etcdserverpb::{
    CompactionRequest, CompactionResponse, DeleteRangeRequest, DeleteRangeResponse, HashKvRequest,
    HashKvResponse, HashResponse, MemberListRequest, MemberListResponse, PutRequest, PutResponse,
    RangeRequest, RangeResponse, ResponseHeader, StatusRequest, StatusResponse, TxnRequest, TxnResponse,
};
use raftkv_kv::{ApplyResult, KvError, KvStore};
use tonic::{Code, Status};

use crate::member::identity::ClusterRecord;
use crate::member::kvsm::{KvMachine, MemberAttributes, Output};
use crate::node::{NodeError, NodeHandle};

/// The etcd server version this API is compatible with, reported by Status and /version.
pub const ETCD_VERSION: &str = "3.4.0";

pub struct ApiConfig {
    pub cluster: ClusterRecord,
    pub client_urls: Vec<String>,
    pub max_request_bytes: usize,
    pub max_txn_ops: usize,
    pub request_timeout: Duration,
    /// The Raft election timeout: how often streams that require a leader look for one.
    pub election_timeout: Duration,
    /// Test-only: serve linearizable reads without ReadIndex (stale reads become possible).
    /// Set by the environment variable `RAFTKV_UNSAFE_STALE_READS=1` in builds with the cargo
    /// feature `unsafe-stale-reads` only, used by the black-box
    /// tests to prove their checker catches stale reads. Never set it in production.
    pub unsafe_stale_reads: bool,
    /// The member's directory, for the temporary files of `Maintenance.Snapshot`.
    pub member_dir: std::path::PathBuf,
    /// `--quota-backend-bytes` ([`crate::member::quota`]).
    pub quota: crate::member::quota::QuotaBytes,
    /// `--grpc-keepalive-*` ([`crate::api::limits`]).
    pub keepalive: crate::api::limits::Keepalive,
    /// The peer transport, told of a member being added before its entry is appended.
    pub peer_transport: Option<raftkv_transport::TransportHandle>,
    /// Auth tokens, password hashing, certificate names.
    pub auth: crate::api::auth::AuthOptions,
}

/// Serves the etcd v3 operations on top of a member's driver. Cloned for every call: one
/// reference count.
#[derive(Clone)]
pub struct Api(Arc<ApiInner>);

impl std::ops::Deref for Api {
    type Target = ApiInner;

    fn deref(&self) -> &ApiInner {
        &self.0
    }
}

/// What an [`Api`] holds.
pub struct ApiInner {
    pub node: NodeHandle<KvMachine>,
    config: Arc<ApiConfig>,
    /// One HashKV at a time per member: each reads the whole state.
    hash_gate: Arc<tokio::sync::Semaphore>,
    pub(crate) quota: crate::member::quota::Quota,
    /// One defragmentation at a time per member.
    pub(crate) defrag_gate: Arc<tokio::sync::Semaphore>,
    /// This member's auth tokens and settings.
    pub(crate) auth: Arc<crate::api::auth::AuthRuntime>,
    /// Turns true when the member stops: long responses (snapshot streams) end with
    /// `etcdserver: server stopped` instead of being cut off.
    stopping: Arc<tokio::sync::watch::Sender<bool>>,
    /// What every call checks (auth on or off, the store's size) without the state
    /// machine's lock.
    pub(crate) published: Arc<raftkv_kvsm::Published>,
}

pub(crate) fn node_status(e: NodeError) -> Status {
    match e {
        NodeError::TooManyRequests => Status::new(Code::ResourceExhausted, "etcdserver: too many requests"),
        NodeError::NoLeader => Status::new(Code::Unavailable, "etcdserver: no leader"),
        NodeError::Timeout => Status::new(Code::Unavailable, "etcdserver: request timed out"),
        NodeError::Stopped => Status::new(Code::Unavailable, "etcdserver: server stopped"),
        NodeError::LeaderChanged => Status::new(Code::Unavailable, "etcdserver: leader changed"),
        NodeError::ConfChange(e) => Status::new(Code::FailedPrecondition, format!("etcdserver: {e}")),
        NodeError::Transfer(e) => Status::new(Code::FailedPrecondition, format!("etcdserver: {e}")),
    }
}

fn kv_status(e: KvError) -> Status {
    Status::new(e.grpc_code(), e.message().to_string())
}

impl Api {
    pub fn new(node: NodeHandle<KvMachine>, config: ApiConfig) -> Api {
        let quota = crate::member::quota::Quota::new(config.quota);
        // One token table: the state machine's hooks record and void tokens as auth commands
        // are applied, the checks here look them up.
        let (tokens, published) = {
            let sm = node.shared.sm.read();
            (sm.hooks.tokens.clone(), sm.published())
        };
        let auth = Arc::new(crate::api::auth::AuthRuntime::new(config.auth.clone(), tokens));
        Api(Arc::new(ApiInner {
            node,
            config: Arc::new(config),
            hash_gate: Arc::new(tokio::sync::Semaphore::new(1)),
            quota,
            defrag_gate: Arc::new(tokio::sync::Semaphore::new(1)),
            auth,
            published,
            stopping: Arc::new(tokio::sync::watch::channel(false).0),
        }))
    }

    /// Tells the long responses in progress that the member is stopping.
    pub fn begin_stop(&self) {
        self.stopping.send_replace(true);
    }

    /// Resolves once the member is stopping.
    pub fn stopped(&self) -> impl std::future::Future<Output = ()> + Send + 'static {
        let mut rx = self.stopping.subscribe();
        async move {
            let _ = rx.wait_for(|s| *s).await;
        }
    }

    pub fn cluster_id(&self) -> u64 {
        self.config.cluster.cluster_id
    }

    pub fn member_id(&self) -> u64 {
        self.config.cluster.member_id
    }

    /// The cluster's members as bootstrapped.
    pub fn members(&self) -> &[crate::member::identity::MemberRecord] {
        &self.config.cluster.members
    }

    /// The cluster's `--initial-cluster-token` (member ids derive from it).
    pub fn cluster_token(&self) -> &str {
        &self.config.cluster.token
    }

    /// The peer transport, if this member runs one.
    pub fn peer_transport(&self) -> Option<&raftkv_transport::TransportHandle> {
        self.config.peer_transport.as_ref()
    }

    /// Where temporary files of this member go.
    pub fn member_dir(&self) -> std::path::PathBuf {
        self.config.member_dir.clone()
    }

    /// The largest request body accepted, for transport-level limits.
    pub fn max_request_bytes(&self) -> usize {
        self.config.max_request_bytes
    }

    pub(crate) fn header(&self, revision: i64) -> ResponseHeader {
        ResponseHeader {
            cluster_id: self.config.cluster.cluster_id,
            member_id: self.config.cluster.member_id,
            revision,
            raft_term: self.node.status().term,
        }
    }

    pub(crate) fn fill(&self, header: &mut Option<ResponseHeader>) {
        let revision = header.as_ref().map_or(0, |h| h.revision);
        *header = Some(self.header(revision));
    }

    /// The keepalive of the client port's HTTP/2 connections.
    pub fn keepalive(&self) -> crate::api::limits::Keepalive {
        self.config.keepalive
    }

    /// The Raft election timeout.
    pub fn election_timeout(&self) -> Duration {
        self.config.election_timeout
    }

    /// The request timeout for proposals and read barriers.
    pub fn request_timeout(&self) -> Duration {
        self.config.request_timeout
    }

    pub(crate) async fn propose(&self, command: impl FnOnce(u64) -> Command) -> Result<ApplyResult, Status> {
        match self.propose_command(command).await? {
            Output::Kv(result) => result.map_err(kv_status),
            Output::Alarm(outcome) => Err(crate::member::alarm::refusal(&outcome)
                .unwrap_or_else(|| Status::internal("unexpected result for a key-value request"))),
            Output::Auth(result) => Err(result.err().map_or_else(
                || Status::internal("unexpected result for a key-value request"),
                |e| Status::new(e.grpc_code(), e.message()),
            )),
            Output::Published | Output::Members | Output::Authenticated(_) => {
                Err(Status::internal("unexpected result for a key-value request"))
            }
        }
    }

    /// Proposes a command (refused first if it is too large or does not fit the quota) and
    /// waits for its result.
    pub(crate) async fn propose_command(
        &self,
        command: impl FnOnce(u64) -> Command,
    ) -> Result<Output, Status> {
        let id = self.node.next_request_id();
        let mut command = command(id);
        // Stamped with the auth revision the caller was checked against (see crate::api::auth).
        command.auth_revision = crate::api::auth::checked_at();
        if let Some(request) = &command.request {
            self.check_quota(crate::member::quota::cost(request))?;
        }
        let data: Bytes = command.encode_to_bytes();
        crate::api::limits::check_request_len(data.len(), self.config.max_request_bytes)?;
        let metrics = crate::metrics::get();
        metrics.proposals_pending.inc();
        let proposed = self.node.propose(id, data, self.config.request_timeout).await;
        metrics.proposals_pending.dec();
        if proposed.is_err() {
            metrics.proposals_failed.inc();
        }
        proposed.map_err(node_status)
    }

    /// Publishes this member's client URLs through the log (retried until it succeeds).
    pub async fn publish(&self, name: String) {
        let attributes = MemberAttributes {
            id: self.config.cluster.member_id,
            name,
            client_urls: self.config.client_urls.clone(),
        };
        loop {
            let id = self.node.next_request_id();
            let data = Bytes::from(KvMachine::encode_publish(id, attributes.clone()));
            match self.node.propose(id, data, self.config.request_timeout).await {
                Ok(_) => {
                    tracing::info!("published this member's client URLs");
                    return;
                }
                Err(NodeError::Stopped) => return,
                Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
            }
        }
    }

    pub async fn range(&self, req: RangeRequest) -> Result<RangeResponse, Status> {
        raftkv_kv::validate_range(&req).map_err(kv_status)?;
        if !req.serializable && !self.config.unsafe_stale_reads {
            self.node.read_barrier(self.config.request_timeout).await.map_err(node_status)?;
        }
        let mut resp = self
            .read_authorized(
                |sm, user| crate::api::auth::check_range(sm, user, &req),
                |sm| sm.kv.range(&req),
            )?
            .map_err(kv_status)?;
        self.fill(&mut resp.header);
        Ok(resp)
    }

    pub async fn put(&self, req: PutRequest) -> Result<PutResponse, Status> {
        raftkv_kv::validate_put(&req).map_err(kv_status)?;
        self.authorize(|sm, user| crate::api::auth::check_put(sm, user, &req))?;
        match self.propose(|id| Command::put(id, req)).await? {
            ApplyResult::Put(mut resp) => {
                self.fill(&mut resp.header);
                Ok(resp)
            }
            _ => Err(Status::internal("unexpected result for Put")),
        }
    }

    pub async fn delete_range(&self, req: DeleteRangeRequest) -> Result<DeleteRangeResponse, Status> {
        raftkv_kv::validate_delete_range(&req).map_err(kv_status)?;
        self.authorize(|sm, user| crate::api::auth::check_delete_range(sm, user, &req))?;
        match self.propose(|id| Command::delete_range(id, req)).await? {
            ApplyResult::DeleteRange(mut resp) => {
                self.fill(&mut resp.header);
                Ok(resp)
            }
            _ => Err(Status::internal("unexpected result for DeleteRange")),
        }
    }

    pub async fn txn(&self, req: TxnRequest) -> Result<TxnResponse, Status> {
        raftkv_kv::validate_txn(&req, self.config.max_txn_ops).map_err(kv_status)?;
        if raftkv_kv::is_txn_read_only(&req) {
            if !self.config.unsafe_stale_reads {
                self.node.read_barrier(self.config.request_timeout).await.map_err(node_status)?;
            }
            let mut resp = self
                .read_authorized(
                    |sm, user| crate::api::auth::check_txn(sm, user, &req),
                    |sm| sm.kv.txn_read_only(&req),
                )?
                .map_err(kv_status)?;
            self.fill(&mut resp.header);
            return Ok(resp);
        }
        self.authorize(|sm, user| crate::api::auth::check_txn(sm, user, &req))?;
        match self.propose(|id| Command::txn(id, req)).await? {
            ApplyResult::Txn(mut resp) => {
                self.fill(&mut resp.header);
                Ok(resp)
            }
            _ => Err(Status::internal("unexpected result for Txn")),
        }
    }

    pub async fn compact(&self, req: CompactionRequest) -> Result<CompactionResponse, Status> {
        // etcd 3.4 checks no permission for Compact, but a token given must be valid.
        self.authorize_any_revision(|_, _| Ok(()))?;
        match self.propose(|id| Command::compaction(id, req)).await? {
            ApplyResult::Compaction(mut resp) => {
                self.fill(&mut resp.header);
                Ok(resp)
            }
            _ => Err(Status::internal("unexpected result for Compact")),
        }
    }

    /// Maintenance.Status: no caller check, as etcd 3.4 (not even of a token given), so
    /// `etcdctl endpoint status` and health probes work without credentials.
    pub async fn status(&self, _req: StatusRequest) -> Result<StatusResponse, Status> {
        let s = self.node.status();
        let (revision, db_size, db_size_in_use, errors, is_learner) = {
            let sm = self.node.shared.sm.read();
            // The backend size as defined in crate::member::quota.
            (
                sm.kv.revision(),
                sm.kv.size_bytes() as i64,
                sm.kv.size_in_use_bytes() as i64,
                sm.alarms.status_errors(),
                // As etcd, the applied membership's word: a joining learner is one before the
                // leader's log reaches it (the registry is seeded from the cluster's own list).
                sm.registry.members.get(&self.member_id()).is_some_and(|m| m.is_learner),
            )
        };
        Ok(StatusResponse {
            header: Some(self.header(revision)),
            version: ETCD_VERSION.to_string(),
            db_size,
            leader: s.leader,
            raft_index: s.commit,
            raft_term: s.term,
            raft_applied_index: s.applied,
            errors,
            db_size_in_use,
            is_learner,
        })
    }

    /// Maintenance.Hash: [`Api::hash_kv`] at the current revision.
    pub async fn hash(&self) -> Result<HashResponse, Status> {
        let r = self.hash_kv(HashKvRequest { revision: 0 }).await?;
        Ok(HashResponse { header: r.header, hash: r.hash })
    }

    /// A checksum of this member's MVCC state at a revision (0: its current one), computed
    /// off the async workers over a pinned state, in batches under the read lock.
    pub async fn hash_kv(&self, req: HashKvRequest) -> Result<HashKvResponse, Status> {
        self.require_admin_maintenance()?;
        let permit =
            match tokio::time::timeout(self.config.request_timeout, self.hash_gate.clone().acquire_owned())
                .await
            {
                Ok(Ok(permit)) => permit,
                _ => return Err(Status::unavailable("etcdserver: too many concurrent hash requests; retry")),
            };
        let (point, generation, current, compacted) = {
            let mut sm = self.node.shared.sm.write();
            let point = sm.kv.pin_at(req.revision).map_err(kv_status)?;
            (point, sm.generation, sm.kv.revision(), sm.kv.compact_revision())
        };
        let shared = self.node.shared.clone();
        let hashed = tokio::task::spawn_blocking(move || {
            let _permit = permit;
            let mut replaced = false;
            let hash = KvStore::digest_pinned(&point, |f| {
                let sm = shared.sm.read();
                if sm.generation == generation {
                    f(&sm.kv);
                } else {
                    // Restored from a snapshot meanwhile: finish on an empty store, fail below.
                    replaced = true;
                    f(&KvStore::new());
                }
            });
            let mut sm = shared.sm.write();
            if sm.generation == generation {
                sm.kv.unpin();
            }
            match hash {
                Ok(_) if replaced => Err(Status::unavailable(
                    "etcdserver: the state was replaced by a snapshot during the hash; retry",
                )),
                Ok(hash) => Ok(hash),
                Err(e) => Err(Status::internal(format!("cannot read the history: {e}"))),
            }
        })
        .await
        .map_err(|e| Status::internal(format!("hash task failed: {e}")))??;
        Ok(HashKvResponse { header: Some(self.header(current)), hash: hashed, compact_revision: compacted })
    }

    /// Cluster.MemberList: no caller check, as etcd 3.4 (not even of a token given).
    pub async fn member_list(&self, _req: MemberListRequest) -> Result<MemberListResponse, Status> {
        // etcd's MemberList header carries no revision.
        Ok(MemberListResponse { header: Some(self.header(0)), members: self.member_protos() })
    }
}
