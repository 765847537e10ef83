//! etcd's `v3lock` (Lock, Unlock) and `v3election` (Campaign, Proclaim, Leader, Observe,
//! Resign) services, built as etcd builds them (clientv3's `concurrency` recipes run on
//! the server): a key `<name>/<lease in hex>` put under the caller's lease with a
//! create-revision compare, and ownership when every key of the prefix created before it
//! is gone.
//!
//! Waiting is clientv3's `waitDeletes`: read the newest key created before ours, then
//! wait on a watch of this member (the Watch service's own sessions, checked as the
//! caller) for its deletion, and repeat until none is left. Observe watches the leader
//! key and reports every value it takes, then the next leader once it is deleted.

use std::collections::VecDeque;

use bytes::Bytes;
use raftkv_api::etcdserverpb::compare::{CompareResult, CompareTarget, TargetUnion};
use raftkv_api::etcdserverpb::range_request::{SortOrder, SortTarget};
use raftkv_api::etcdserverpb::request_op::Request as Op;
use raftkv_api::etcdserverpb::response_op::Response as OpResp;
use raftkv_api::etcdserverpb::watch_create_request::FilterType;
use raftkv_api::etcdserverpb::watch_request::RequestUnion;
use raftkv_api::etcdserverpb::{
    Compare, DeleteRangeRequest, LeaseGrantRequest, PutRequest, RangeRequest, RangeResponse, RequestOp,
    ResponseHeader, TxnRequest, TxnResponse, WatchCreateRequest, WatchRequest,
};
use raftkv_api::mvccpb::event::EventType;
use raftkv_api::mvccpb::{Event, KeyValue};
use raftkv_api::v3electionpb::election_server::{Election, ElectionServer};
use raftkv_api::v3electionpb::{
    CampaignRequest, CampaignResponse, LeaderKey, LeaderRequest, LeaderResponse, ProclaimRequest,
    ProclaimResponse, ResignRequest, ResignResponse,
};
use raftkv_api::v3lockpb::lock_server::{Lock, LockServer};
use raftkv_api::v3lockpb::{LockRequest, LockResponse, UnlockRequest, UnlockResponse};
use tokio::sync::mpsc;
use tokio_stream::StreamExt;
use tokio_stream::wrappers::ReceiverStream;
use tonic::Status;

use crate::api::lease::Leases;
use crate::api::service::Api;

/// The TTL of the lease a Lock or Campaign without one gets (clientv3's session default).
const SESSION_TTL: i64 = 60;
/// Observe responses buffered per stream.
const OBSERVE_BUFFER: usize = 16;

/// The Lock and Election services of one member.
#[derive(Clone)]
pub struct Recipes {
    api: Api,
    leases: Leases,
}

/// The end of the range of keys that start with `prefix` (etcd's `GetPrefixRangeEnd`).
fn prefix_end(prefix: &[u8]) -> Bytes {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end.into();
        }
    }
    Bytes::from_static(b"\0")
}

fn create_is(key: &Bytes, rev: i64) -> Compare {
    Compare {
        result: CompareResult::Equal as i32,
        target: CompareTarget::Create as i32,
        key: key.clone(),
        range_end: Bytes::new(),
        target_union: Some(TargetUnion::CreateRevision(rev)),
    }
}

fn op(request: Op) -> RequestOp {
    RequestOp { request: Some(request) }
}

fn get(key: &Bytes) -> RequestOp {
    op(Op::RequestRange(RangeRequest { key: key.clone(), ..Default::default() }))
}

/// The oldest key (by create revision) under `prefix` (clientv3's `WithFirstCreate`).
fn first_created(prefix: &Bytes) -> RangeRequest {
    RangeRequest {
        key: prefix.clone(),
        range_end: prefix_end(prefix),
        sort_order: SortOrder::Ascend as i32,
        sort_target: SortTarget::Create as i32,
        limit: 1,
        ..Default::default()
    }
}

fn range_of(resp: &TxnResponse, i: usize) -> Option<&RangeResponse> {
    match resp.responses.get(i)?.response.as_ref()? {
        OpResp::ResponseRange(r) => Some(r),
        _ => None,
    }
}

fn missing_leader_key() -> Status {
    Status::unknown("\"leader\" field must be provided")
}

/// Deletes `key` when dropped while armed: a Lock or Campaign whose caller went away
/// (or failed) while waiting does not leave its key queued.
struct Withdraw {
    api: Api,
    key: Option<Bytes>,
}

impl Drop for Withdraw {
    fn drop(&mut self) {
        if let Some(key) = self.key.take() {
            let api = self.api.clone();
            tokio::spawn(async move {
                let _ = api.delete_range(DeleteRangeRequest { key, ..Default::default() }).await;
            });
        }
    }
}

impl Recipes {
    pub fn new(api: Api, leases: Leases) -> Recipes {
        Recipes { api, leases }
    }

    async fn session_lease(&self, lease: i64) -> Result<i64, Status> {
        if lease != 0 {
            return Ok(lease);
        }
        Ok(self.leases.grant(LeaseGrantRequest { ttl: SESSION_TTL, id: 0 }).await?.id)
    }

    /// Waits until no key under `prefix` has a create revision at or below `max_create`
    /// (clientv3's `waitDeletes`); the header of the read that saw none.
    async fn wait_deletes(&self, prefix: &Bytes, max_create: i64) -> Result<Option<ResponseHeader>, Status> {
        loop {
            let req = RangeRequest {
                key: prefix.clone(),
                range_end: prefix_end(prefix),
                max_create_revision: max_create,
                sort_order: SortOrder::Descend as i32,
                sort_target: SortTarget::Create as i32,
                limit: 1,
                keys_only: true,
                ..Default::default()
            };
            let r = self.api.range(req).await?;
            let Some(kv) = r.kvs.first() else { return Ok(r.header) };
            let seen = r.header.as_ref().map_or(0, |h| h.revision);
            let mut events =
                KeyEvents::open(&self.api, kv.key.clone(), Bytes::new(), seen + 1, Some(FilterType::Noput));
            // A watch cut short (compaction) reads again: the key may be gone by now.
            while let Some((_, event)) = events.next().await? {
                if event.r#type == EventType::Delete as i32 {
                    break;
                }
            }
        }
    }

    async fn exists(&self, key: &Bytes) -> Result<bool, Status> {
        let r =
            self.api.range(RangeRequest { key: key.clone(), count_only: true, ..Default::default() }).await?;
        Ok(r.count > 0)
    }

    pub async fn lock(&self, req: LockRequest) -> Result<LockResponse, Status> {
        let lease = self.session_lease(req.lease).await?;
        let prefix: Bytes = [&req.name[..], b"/"].concat().into();
        let key: Bytes = [&prefix[..], format!("{lease:x}").as_bytes()].concat().into();
        let put = PutRequest { key: key.clone(), lease, ..Default::default() };
        let owner = op(Op::RequestRange(first_created(&prefix)));
        let txn = TxnRequest {
            compare: vec![create_is(&key, 0)],
            success: vec![op(Op::RequestPut(put)), owner.clone()],
            failure: vec![get(&key), owner],
        };
        let resp = self.api.txn(txn).await?;
        let mut my_rev = resp.header.as_ref().map_or(0, |h| h.revision);
        if !resp.succeeded {
            my_rev = range_of(&resp, 0).and_then(|r| r.kvs.first()).map_or(my_rev, |kv| kv.create_revision);
        }
        let first = range_of(&resp, 1).and_then(|r| r.kvs.first()).map(|kv| kv.create_revision);
        if first.is_none_or(|rev| rev == my_rev) {
            return Ok(LockResponse { header: resp.header, key });
        }
        let mut guard = Withdraw { api: self.api.clone(), key: Some(key.clone()) };
        let mut header = self.wait_deletes(&prefix, my_rev - 1).await?;
        // The lease may have expired while waiting: the key is gone, and so is the lock.
        if !self.exists(&key).await? {
            guard.key = None;
            return Err(Status::unknown("concurrency: session expired"));
        }
        guard.key = None;
        self.api.fill(&mut header);
        Ok(LockResponse { header, key })
    }

    pub async fn unlock(&self, req: UnlockRequest) -> Result<UnlockResponse, Status> {
        let resp = self.api.delete_range(DeleteRangeRequest { key: req.key, ..Default::default() }).await?;
        Ok(UnlockResponse { header: resp.header })
    }

    pub async fn campaign(&self, req: CampaignRequest) -> Result<CampaignResponse, Status> {
        let lease = self.session_lease(req.lease).await?;
        let prefix: Bytes = [&req.name[..], b"/"].concat().into();
        let key: Bytes = [&prefix[..], format!("{lease:x}").as_bytes()].concat().into();
        let put = PutRequest { key: key.clone(), value: req.value.clone(), lease, ..Default::default() };
        let txn = TxnRequest {
            compare: vec![create_is(&key, 0)],
            success: vec![op(Op::RequestPut(put))],
            failure: vec![get(&key)],
        };
        let resp = self.api.txn(txn).await?;
        let mut rev = resp.header.as_ref().map_or(0, |h| h.revision);
        let mut guard = Withdraw { api: self.api.clone(), key: Some(key.clone()) };
        if !resp.succeeded
            && let Some(kv) = range_of(&resp, 0).and_then(|r| r.kvs.first())
        {
            rev = kv.create_revision;
            if kv.value != req.value {
                let leader = LeaderKey { name: req.name.clone(), key: key.clone(), rev, lease };
                self.proclaim(ProclaimRequest { leader: Some(leader), value: req.value.clone() }).await?;
            }
        }
        self.wait_deletes(&prefix, rev - 1).await?;
        guard.key = None;
        let leader = LeaderKey { name: req.name, key, rev, lease };
        Ok(CampaignResponse { header: resp.header, leader: Some(leader) })
    }

    pub async fn proclaim(&self, req: ProclaimRequest) -> Result<ProclaimResponse, Status> {
        let leader = req.leader.ok_or_else(missing_leader_key)?;
        let put = PutRequest {
            key: leader.key.clone(),
            value: req.value,
            ignore_lease: true,
            ..Default::default()
        };
        let txn = TxnRequest {
            compare: vec![create_is(&leader.key, leader.rev)],
            success: vec![op(Op::RequestPut(put))],
            failure: Vec::new(),
        };
        let resp = self.api.txn(txn).await?;
        if !resp.succeeded {
            return Err(Status::unknown("election: not leader"));
        }
        Ok(ProclaimResponse { header: resp.header })
    }

    pub async fn resign(&self, req: ResignRequest) -> Result<ResignResponse, Status> {
        let leader = req.leader.ok_or_else(missing_leader_key)?;
        let del = DeleteRangeRequest { key: leader.key.clone(), ..Default::default() };
        let txn = TxnRequest {
            compare: vec![create_is(&leader.key, leader.rev)],
            success: vec![op(Op::RequestDeleteRange(del))],
            failure: Vec::new(),
        };
        let resp = self.api.txn(txn).await?;
        Ok(ResignResponse { header: resp.header })
    }

    async fn current_leader(
        &self,
        name: &[u8],
    ) -> Result<(Option<ResponseHeader>, Option<KeyValue>), Status> {
        let prefix: Bytes = [name, b"/"].concat().into();
        let mut r = self.api.range(first_created(&prefix)).await?;
        Ok((r.header.take(), r.kvs.into_iter().next()))
    }

    pub async fn leader(&self, req: LeaderRequest) -> Result<LeaderResponse, Status> {
        match self.current_leader(&req.name).await? {
            (header, Some(kv)) => Ok(LeaderResponse { header, kv: Some(kv) }),
            (_, None) => Err(Status::unknown("election: no leader")),
        }
    }

    /// Reports the leader's value now and each value it takes, then each next leader's,
    /// until the client goes (etcd's `Election.Observe`).
    pub fn observe(&self, req: LeaderRequest) -> ReceiverStream<Result<LeaderResponse, Status>> {
        let (tx, rx) = mpsc::channel(OBSERVE_BUFFER);
        let this = self.clone();
        tokio::spawn(crate::api::auth::inherit(async move {
            tokio::select! {
                _ = tx.closed() => {}
                end = this.observe_into(&req.name, &tx) => {
                    if let Err(e) = end {
                        let _ = tx.send(Err(e)).await;
                    }
                }
            }
        }));
        ReceiverStream::new(rx)
    }

    async fn observe_into(
        &self,
        name: &[u8],
        tx: &mpsc::Sender<Result<LeaderResponse, Status>>,
    ) -> Result<(), Status> {
        let prefix: Bytes = [name, b"/"].concat().into();
        let mut last: Option<(Bytes, i64)> = None;
        loop {
            let (header, leader) = self.current_leader(name).await?;
            let seen = header.as_ref().map_or(0, |h| h.revision);
            let Some(kv) = leader else {
                // No leader: wait for a key to appear under the prefix, then read again.
                let mut events = KeyEvents::open(
                    &self.api,
                    prefix.clone(),
                    prefix_end(&prefix),
                    seen + 1,
                    Some(FilterType::Nodelete),
                );
                events.next().await?;
                continue;
            };
            let key = kv.key.clone();
            if last.as_ref() != Some(&(key.clone(), kv.mod_revision)) {
                last = Some((key.clone(), kv.mod_revision));
                if tx.send(Ok(LeaderResponse { header, kv: Some(kv) })).await.is_err() {
                    return Ok(());
                }
            }
            let mut events = KeyEvents::open(&self.api, key.clone(), Bytes::new(), seen + 1, None);
            while let Some((mut header, event)) = events.next().await? {
                if event.r#type == EventType::Delete as i32 {
                    break;
                }
                let Some(kv) = event.kv else { continue };
                last = Some((key.clone(), kv.mod_revision));
                self.api.fill(&mut header);
                if tx.send(Ok(LeaderResponse { header, kv: Some(kv) })).await.is_err() {
                    return Ok(());
                }
            }
        }
    }
}

/// The events of one key or range from a revision on, through a watch session of this
/// member (the Watch service's code: the same ring, history catch-up and limits), as the
/// caller: the watch is checked against the caller's permissions.
struct KeyEvents {
    out: crate::api::watch::Output,
    pending: VecDeque<(Option<ResponseHeader>, Event)>,
    ended: bool,
}

impl KeyEvents {
    fn open(
        api: &Api,
        key: Bytes,
        range_end: Bytes,
        start_revision: i64,
        filter: Option<FilterType>,
    ) -> KeyEvents {
        let filters = filter.map(|f| vec![f as i32]).unwrap_or_default();
        let create = WatchRequest {
            request_union: Some(RequestUnion::CreateRequest(WatchCreateRequest {
                key,
                range_end,
                start_revision,
                filters,
                ..Default::default()
            })),
        };
        // The request, then an input that stays open: the session ends when `out` is dropped.
        let input = tokio_stream::iter([Ok(create)]).chain(tokio_stream::pending());
        KeyEvents {
            out: crate::api::watch::start(api.clone(), Box::pin(input)),
            pending: VecDeque::new(),
            ended: false,
        }
    }

    /// The next event with its response's header; None once the watch was cancelled
    /// because its start revision was compacted (the caller reads again). A refused watch
    /// (no permission, limits) is an error.
    async fn next(&mut self) -> Result<Option<(Option<ResponseHeader>, Event)>, Status> {
        loop {
            if let Some(e) = self.pending.pop_front() {
                return Ok(Some(e));
            }
            if self.ended {
                return Ok(None);
            }
            let Some(reply) = self.out.recv().await else {
                return Err(Status::unavailable("etcdserver: watch ended"));
            };
            let resp = reply.decode()?;
            if resp.canceled {
                if resp.compact_revision != 0 {
                    self.ended = true;
                    continue;
                }
                return Err(Status::unknown(resp.cancel_reason));
            }
            let header = resp.header;
            self.pending.extend(resp.events.into_iter().map(|e| (header, e)));
        }
    }
}

/// An error of the key-value calls a Lock or Election call makes, as etcd 3.4 answers it:
/// its v3lock and v3election servers make those calls through an in-process clientv3, which
/// turns each gRPC status into a plain error, so the caller gets code Unknown with etcd's
/// message (`Unknown etcdserver: permission denied`). Cancellation, deadlines and
/// unavailability (`etcdserver: no leader` under require-leader) keep their codes. The JSON
/// gateway's routes answer the same (etcd's gateway calls its own gRPC server).
pub(crate) fn as_etcd_client(s: Status) -> Status {
    use tonic::Code;
    match s.code() {
        Code::Unknown | Code::Cancelled | Code::DeadlineExceeded | Code::Unavailable => s,
        _ if s.message().starts_with("etcdserver: ") => Status::unknown(s.message()),
        _ => s,
    }
}

#[tonic::async_trait]
impl Lock for Recipes {
    async fn lock(&self, req: tonic::Request<LockRequest>) -> Result<tonic::Response<LockResponse>, Status> {
        Recipes::lock(self, req.into_inner()).await.map(tonic::Response::new).map_err(as_etcd_client)
    }

    async fn unlock(
        &self,
        req: tonic::Request<UnlockRequest>,
    ) -> Result<tonic::Response<UnlockResponse>, Status> {
        Recipes::unlock(self, req.into_inner()).await.map(tonic::Response::new).map_err(as_etcd_client)
    }
}

#[tonic::async_trait]
impl Election for Recipes {
    async fn campaign(
        &self,
        req: tonic::Request<CampaignRequest>,
    ) -> Result<tonic::Response<CampaignResponse>, Status> {
        Recipes::campaign(self, req.into_inner()).await.map(tonic::Response::new).map_err(as_etcd_client)
    }

    async fn proclaim(
        &self,
        req: tonic::Request<ProclaimRequest>,
    ) -> Result<tonic::Response<ProclaimResponse>, Status> {
        Recipes::proclaim(self, req.into_inner()).await.map(tonic::Response::new).map_err(as_etcd_client)
    }

    async fn leader(
        &self,
        req: tonic::Request<LeaderRequest>,
    ) -> Result<tonic::Response<LeaderResponse>, Status> {
        Recipes::leader(self, req.into_inner()).await.map(tonic::Response::new).map_err(as_etcd_client)
    }

    type ObserveStream =
        crate::api::require_leader::UntilLeaderLost<ReceiverStream<Result<LeaderResponse, Status>>>;

    async fn observe(
        &self,
        req: tonic::Request<LeaderRequest>,
    ) -> Result<tonic::Response<Self::ObserveStream>, Status> {
        let required = crate::api::require_leader::required_by(&req);
        let stream = Recipes::observe(self, req.into_inner());
        Ok(tonic::Response::new(crate::api::require_leader::UntilLeaderLost::new(
            &self.api, required, stream,
        )))
    }

    async fn resign(
        &self,
        req: tonic::Request<ResignRequest>,
    ) -> Result<tonic::Response<ResignResponse>, Status> {
        Recipes::resign(self, req.into_inner()).await.map(tonic::Response::new).map_err(as_etcd_client)
    }
}

/// Adds the Lock and Election gRPC services to `routes`.
pub fn add_services(
    routes: tonic::service::Routes,
    recipes: Recipes,
    limit: usize,
) -> tonic::service::Routes {
    routes
        .add_service(LockServer::new(recipes.clone()).max_decoding_message_size(limit))
        .add_service(ElectionServer::new(recipes).max_decoding_message_size(limit))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefix_end_like_etcd() {
        assert_eq!(prefix_end(b"a/"), Bytes::from_static(b"a0"));
        assert_eq!(prefix_end(b"a\xff"), Bytes::from_static(b"b"));
        assert_eq!(prefix_end(b"\xff\xff"), Bytes::from_static(b"\0"));
    }
}
