//! The gateway's Cluster and Maintenance routes beyond the read-only ones of
//! [`super::router_for`], as etcd 3.4's grpc-gateway binds them (also under `/v3beta`):
//! `/v3/cluster/member/{add,remove,update,promote}`, `/v3/maintenance/alarm`,
//! `/v3/maintenance/defragment`, `/v3/maintenance/hash` (Maintenance.Hash: etcd binds HashKV
//! to the same path and serves Hash there), `/v3/maintenance/transfer-leadership`
//! (MoveLeader) as unary JSON calls, and `/v3/maintenance/snapshot` as a stream of
//! newline-delimited `{"result":<SnapshotResponse>}` objects. Each calls the same [`Api`]
//! method as gRPC, so the permission checks and errors are the same.

use axum::Router;
use axum::body::Body;
use axum::response::Response;
use axum::routing::post;
use raftkv_api::etcdserverpb::{HashRequest, SnapshotRequest};

use super::{body_limit, decode, error_response, method_not_allowed, read_body, unary_for};
use crate::api::service::Api;

pub fn router(api: Api) -> Router {
    let mut router = Router::new();
    for prefix in ["/v3", "/v3beta"] {
        let p = |path: &str| format!("{prefix}/{path}");
        let snapshotting = api.clone();
        let snapshot = post(move |body: Body| snapshot(snapshotting.clone(), body));
        router = router
            .route(
                &p("cluster/member/add"),
                unary_for(&api, |a: Api, r| async move { a.member_add(r).await }),
            )
            .route(
                &p("cluster/member/remove"),
                unary_for(&api, |a: Api, r| async move { a.member_remove(r).await }),
            )
            .route(
                &p("cluster/member/update"),
                unary_for(&api, |a: Api, r| async move { a.member_update(r).await }),
            )
            .route(
                &p("cluster/member/promote"),
                unary_for(&api, |a: Api, r| async move { a.member_promote(r).await }),
            )
            .route(&p("maintenance/alarm"), unary_for(&api, |a: Api, r| async move { a.alarm(r).await }))
            .route(
                &p("maintenance/defragment"),
                unary_for(&api, |a: Api, r| async move { a.defragment(r).await }),
            )
            .route(
                &p("maintenance/hash"),
                unary_for(&api, |a: Api, _: HashRequest| async move { a.hash().await }),
            )
            .route(
                &p("maintenance/transfer-leadership"),
                unary_for(&api, |a: Api, r| async move { a.move_leader(r).await }),
            )
            .route(&p("maintenance/snapshot"), snapshot.fallback(method_not_allowed));
    }
    router
}

/// `/v3/maintenance/snapshot`: the member's snapshot as the gRPC stream sends it, one JSON
/// line a message; a refusal before the first message is the error line alone with the
/// code's HTTP status (as grpc-gateway answers), a failure later ends the stream with it.
async fn snapshot(api: Api, body: Body) -> Response {
    let limit = body_limit(api.max_request_bytes());
    if let Err(status) = read_body(body, limit).await.and_then(|b| decode::<SnapshotRequest>(&b)) {
        return error_response(&status);
    }
    match crate::member::backup::snapshot(&api, api.member_dir()).await {
        Ok(stream) => super::stream_response(stream),
        Err(status) => super::stream_refusal(&status),
    }
}
