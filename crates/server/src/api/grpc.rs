//! The etcd v3 gRPC services other than KV, delegating to [`Api`] through tonic.

use raftkv_api::etcdserverpb::cluster_server::{Cluster, ClusterServer};
use raftkv_api::etcdserverpb::maintenance_server::{Maintenance, MaintenanceServer};
use raftkv_api::etcdserverpb::*;
use tonic::{Request, Response, Status};

use crate::api::service::Api;

pub struct Grpc(pub Api);

#[tonic::async_trait]
impl Maintenance for Grpc {
    async fn status(&self, req: Request<StatusRequest>) -> Result<Response<StatusResponse>, Status> {
        self.0.status(req.into_inner()).await.map(Response::new)
    }
    async fn hash_kv(&self, req: Request<HashKvRequest>) -> Result<Response<HashKvResponse>, Status> {
        self.0.hash_kv(req.into_inner()).await.map(Response::new)
    }
    async fn hash(&self, _req: Request<HashRequest>) -> Result<Response<HashResponse>, Status> {
        self.0.hash().await.map(Response::new)
    }
    async fn alarm(&self, req: Request<AlarmRequest>) -> Result<Response<AlarmResponse>, Status> {
        self.0.alarm(req.into_inner()).await.map(Response::new)
    }
    async fn defragment(
        &self,
        req: Request<DefragmentRequest>,
    ) -> Result<Response<DefragmentResponse>, Status> {
        self.0.defragment(req.into_inner()).await.map(Response::new)
    }
    type SnapshotStream = crate::api::require_leader::UntilLeaderLost<crate::member::backup::SnapshotStream>;
    async fn snapshot(
        &self,
        req: Request<SnapshotRequest>,
    ) -> Result<Response<Self::SnapshotStream>, Status> {
        let required = crate::api::require_leader::required_by(&req);
        let stream = crate::member::backup::snapshot(&self.0, self.0.member_dir()).await?;
        Ok(Response::new(crate::api::require_leader::UntilLeaderLost::new(&self.0, required, stream)))
    }
    async fn move_leader(
        &self,
        req: Request<MoveLeaderRequest>,
    ) -> Result<Response<MoveLeaderResponse>, Status> {
        self.0.move_leader(req.into_inner()).await.map(Response::new)
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
    async fn member_add(
        &self,
        req: Request<MemberAddRequest>,
    ) -> Result<Response<MemberAddResponse>, Status> {
        self.0.member_add(req.into_inner()).await.map(Response::new)
    }
    async fn member_remove(
        &self,
        req: Request<MemberRemoveRequest>,
    ) -> Result<Response<MemberRemoveResponse>, Status> {
        self.0.member_remove(req.into_inner()).await.map(Response::new)
    }
    async fn member_update(
        &self,
        req: Request<MemberUpdateRequest>,
    ) -> Result<Response<MemberUpdateResponse>, Status> {
        self.0.member_update(req.into_inner()).await.map(Response::new)
    }
    async fn member_promote(
        &self,
        req: Request<MemberPromoteRequest>,
    ) -> Result<Response<MemberPromoteResponse>, Status> {
        self.0.member_promote(req.into_inner()).await.map(Response::new)
    }
}

/// The largest message tonic decodes for these services: the same limit as on the
/// key-value path ([`crate::api::limits::message_limit`]).
pub fn decode_limit(api: &Api) -> usize {
    crate::api::limits::message_limit(api.max_request_bytes())
}

/// The gRPC services other than KV (served in [`crate::api::client_port`]) as routes.
pub fn routes(api: Api) -> tonic::service::Routes {
    let limit = decode_limit(&api);
    tonic::service::Routes::new(MaintenanceServer::new(Grpc(api.clone())).max_decoding_message_size(limit))
        .add_service(ClusterServer::new(Grpc(api)).max_decoding_message_size(limit))
}
