//! The etcd v3 gRPC services, delegating to [`Api`].

use raftkv_api::etcdserverpb::cluster_server::{Cluster, ClusterServer};
use raftkv_api::etcdserverpb::kv_server::{Kv, KvServer};
use raftkv_api::etcdserverpb::maintenance_server::{Maintenance, MaintenanceServer};
use raftkv_api::etcdserverpb::*;
use raftkv_api::prost;
use tonic::{Request, Response, Status};

use crate::service::Api;

/// gRPC's own framing beyond the request itself (etcd allows the same margin).
const GRPC_OVERHEAD_BYTES: usize = 512 * 1024;

pub struct Grpc(pub Api);

/// etcd's answer to a request above the gRPC receive limit. tonic decodes up to
/// `DECODE_SLACK` times the limit (a bounded allocation) so the limit itself can be enforced
/// here with etcd's code and wording.
const DECODE_SLACK: usize = 4;

impl Grpc {
    fn check_size<M: prost::Message>(&self, req: &Request<M>) -> Result<(), Status> {
        let limit = self.0.max_request_bytes() + GRPC_OVERHEAD_BYTES;
        let len = req.get_ref().encoded_len();
        if len > limit {
            return Err(Status::resource_exhausted(format!(
                "grpc: received message larger than max ({len} vs. {limit})"
            )));
        }
        Ok(())
    }
}

#[tonic::async_trait]
impl Kv for Grpc {
    async fn range(&self, req: Request<RangeRequest>) -> Result<Response<RangeResponse>, Status> {
        self.check_size(&req)?;
        self.0.range(req.into_inner()).await.map(Response::new)
    }
    async fn put(&self, req: Request<PutRequest>) -> Result<Response<PutResponse>, Status> {
        self.check_size(&req)?;
        self.0.put(req.into_inner()).await.map(Response::new)
    }
    async fn delete_range(
        &self,
        req: Request<DeleteRangeRequest>,
    ) -> Result<Response<DeleteRangeResponse>, Status> {
        self.check_size(&req)?;
        self.0.delete_range(req.into_inner()).await.map(Response::new)
    }
    async fn txn(&self, req: Request<TxnRequest>) -> Result<Response<TxnResponse>, Status> {
        self.check_size(&req)?;
        self.0.txn(req.into_inner()).await.map(Response::new)
    }
    async fn compact(&self, req: Request<CompactionRequest>) -> Result<Response<CompactionResponse>, Status> {
        self.check_size(&req)?;
        self.0.compact(req.into_inner()).await.map(Response::new)
    }
}

#[tonic::async_trait]
impl Maintenance for Grpc {
    async fn status(&self, req: Request<StatusRequest>) -> Result<Response<StatusResponse>, Status> {
        self.0.status(req.into_inner()).await.map(Response::new)
    }
    async fn hash_kv(&self, req: Request<HashKvRequest>) -> Result<Response<HashKvResponse>, Status> {
        self.0.hash_kv(req.into_inner()).await.map(Response::new)
    }
}

#[tonic::async_trait]
impl Cluster for Grpc {
    async fn member_list(
        &self,
        req: Request<MemberListRequest>,
    ) -> Result<Response<MemberListResponse>, Status> {
        self.0.member_list(req.into_inner()).await.map(Response::new)
    }
}

/// The gRPC services as routes, with etcd's request size limit.
pub fn routes(api: Api) -> tonic::service::Routes {
    let limit = (api.max_request_bytes() + GRPC_OVERHEAD_BYTES) * DECODE_SLACK;
    tonic::service::Routes::new(KvServer::new(Grpc(api.clone())).max_decoding_message_size(limit))
        .add_service(MaintenanceServer::new(Grpc(api.clone())).max_decoding_message_size(limit))
        .add_service(ClusterServer::new(Grpc(api)).max_decoding_message_size(limit))
}
