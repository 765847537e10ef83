//! The etcd v3 gRPC services, delegating to [`Api`].

use raftkv_api::etcdserverpb::cluster_server::{Cluster, ClusterServer};
use raftkv_api::etcdserverpb::kv_server::{Kv, KvServer};
use raftkv_api::etcdserverpb::maintenance_server::{Maintenance, MaintenanceServer};
use raftkv_api::etcdserverpb::*;
use tonic::{Request, Response, Status};

use crate::service::Api;

/// gRPC's own framing beyond the request itself (etcd allows the same margin).
const GRPC_OVERHEAD_BYTES: usize = 512 * 1024;

pub struct Grpc(pub Api);

#[tonic::async_trait]
impl Kv for Grpc {
    async fn range(&self, req: Request<RangeRequest>) -> Result<Response<RangeResponse>, Status> {
        self.0.range(req.into_inner()).await.map(Response::new)
    }
    async fn put(&self, req: Request<PutRequest>) -> Result<Response<PutResponse>, Status> {
        self.0.put(req.into_inner()).await.map(Response::new)
    }
    async fn delete_range(
        &self,
        req: Request<DeleteRangeRequest>,
    ) -> Result<Response<DeleteRangeResponse>, Status> {
        self.0.delete_range(req.into_inner()).await.map(Response::new)
    }
    async fn txn(&self, req: Request<TxnRequest>) -> Result<Response<TxnResponse>, Status> {
        self.0.txn(req.into_inner()).await.map(Response::new)
    }
    async fn compact(&self, req: Request<CompactionRequest>) -> Result<Response<CompactionResponse>, Status> {
        self.0.compact(req.into_inner()).await.map(Response::new)
    }
}

#[tonic::async_trait]
impl Maintenance for Grpc {
    async fn status(&self, req: Request<StatusRequest>) -> Result<Response<StatusResponse>, Status> {
        self.0.status(req.into_inner()).await.map(Response::new)
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
    let limit = api.max_request_bytes() + GRPC_OVERHEAD_BYTES;
    tonic::service::Routes::new(KvServer::new(Grpc(api.clone())).max_decoding_message_size(limit))
        .add_service(MaintenanceServer::new(Grpc(api.clone())).max_decoding_message_size(limit))
        .add_service(ClusterServer::new(Grpc(api)).max_decoding_message_size(limit))
}
