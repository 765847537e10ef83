//! The gateway's Lock and Election routes, as etcd 3.4's grpc-gateway binds them:
//! `/v3/lock/lock`, `/v3/lock/unlock`, `/v3/election/{campaign,proclaim,leader,resign}` as
//! unary JSON calls, and `/v3/election/observe` as a stream of newline-delimited
//! `{"result":<LeaderResponse>}` objects (an `{"error":{...}}` line ends it), open until the
//! client goes away (also under `/v3beta`).

use axum::Router;
use axum::body::Body;
use axum::response::Response;
use axum::routing::post;
use raftkv_api::v3electionpb::LeaderRequest;

use super::{body_limit, decode, error_response, method_not_allowed, read_body, unary_on};
use crate::api::lock::Recipes;

/// The Lock and Election routes over `recipes`; request bodies up to the gateway's limit for
/// `max_request_bytes`.
pub fn router(recipes: Recipes, max_request_bytes: usize) -> Router {
    let limit = body_limit(max_request_bytes);
    macro_rules! unary {
        ($method:ident) => {
            unary_on(recipes.clone(), limit, |r: Recipes, q| async move {
                r.$method(q).await.map_err(crate::api::lock::as_etcd_client)
            })
        };
    }
    let mut router = Router::new();
    for prefix in ["/v3", "/v3beta"] {
        let observing = recipes.clone();
        let observe = post(move |body: Body| observe(observing.clone(), limit, body));
        router = router
            .route(&format!("{prefix}/lock/lock"), unary!(lock))
            .route(&format!("{prefix}/lock/unlock"), unary!(unlock))
            .route(&format!("{prefix}/election/campaign"), unary!(campaign))
            .route(&format!("{prefix}/election/proclaim"), unary!(proclaim))
            .route(&format!("{prefix}/election/leader"), unary!(leader))
            .route(&format!("{prefix}/election/resign"), unary!(resign))
            .route(&format!("{prefix}/election/observe"), observe.fallback(method_not_allowed));
    }
    router
}

/// `/v3/election/observe`: the body is one `LeaderRequest`; the answer streams the election's
/// leader, then every change of it.
async fn observe(recipes: Recipes, limit: usize, body: Body) -> Response {
    let req: LeaderRequest = match read_body(body, limit).await.and_then(|b| decode(&b)) {
        Ok(req) => req,
        Err(status) => return error_response(&status),
    };
    super::stream_response(recipes.observe(req))
}
