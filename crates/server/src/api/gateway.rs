//! etcd 3.4's JSON gateway, served on the client port next to gRPC.
//!
//! `POST /v3/<service>/<method>` (and the older `/v3beta/...` prefix) with a
//! JSON body in the proto3 JSON mapping, exactly as etcd's grpc-gateway speaks
//! it: the .proto field names on output (`range_end`, `cluster_id`,
//! `peerURLs`), those names or lowerCamelCase on input, `bytes` as base64,
//! 64-bit integers as strings, enums by name. The (de)serialisation itself is
//! generated in `raftkv-api` (feature `json`). Errors are etcd's gateway error
//! body `{"error":"...","message":"...","code":N}` with grpc-gateway's HTTP
//! status for the gRPC code. `GET /health` and `GET /version` answer as etcd
//! 3.4 does.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{MethodRouter, get, post};
use bytes::Bytes;
use http_body_util::{BodyExt, LengthLimitError, Limited};
use raftkv_api::etcdserverpb::{
    CompactionRequest, CompactionResponse, DeleteRangeRequest, DeleteRangeResponse, MemberListRequest,
    MemberListResponse, PutRequest, PutResponse, RangeRequest, RangeResponse, StatusRequest, StatusResponse,
    TxnRequest, TxnResponse,
};
use serde::Serialize;
use serde::de::DeserializeOwned;
use tonic::{Code, Status};

use crate::api::service::{Api, ETCD_VERSION};

/// How long `/health`'s linearizable read may take (etcd uses one second).
const HEALTH_TIMEOUT: Duration = Duration::from_secs(1);

/// Allowance for JSON syntax and field names beyond the base64 payload.
const JSON_OVERHEAD_BYTES: usize = 512 * 1024;

const JSON: &str = "application/json";
const TEXT: &str = "text/plain; charset=utf-8";

/// The etcd v3 operations the gateway serves. [`Api`] implements it; tests
/// use a fake.
pub trait EtcdApi: Clone + Send + Sync + 'static {
    fn range(&self, req: RangeRequest) -> impl Future<Output = Result<RangeResponse, Status>> + Send;
    fn put(&self, req: PutRequest) -> impl Future<Output = Result<PutResponse, Status>> + Send;
    fn delete_range(
        &self,
        req: DeleteRangeRequest,
    ) -> impl Future<Output = Result<DeleteRangeResponse, Status>> + Send;
    fn txn(&self, req: TxnRequest) -> impl Future<Output = Result<TxnResponse, Status>> + Send;
    fn compact(
        &self,
        req: CompactionRequest,
    ) -> impl Future<Output = Result<CompactionResponse, Status>> + Send;
    fn status(&self, req: StatusRequest) -> impl Future<Output = Result<StatusResponse, Status>> + Send;
    fn member_list(
        &self,
        req: MemberListRequest,
    ) -> impl Future<Output = Result<MemberListResponse, Status>> + Send;
    /// The largest request accepted (`--max-request-bytes`), as encoded protobuf.
    fn max_request_bytes(&self) -> usize;
    /// The active alarms' types (etcd's names, e.g. `NOSPACE`), for `/health`.
    fn alarm_names(&self) -> Vec<String> {
        Vec::new()
    }
    /// Whether this member knows a leader, for `/health`.
    fn has_leader(&self) -> bool {
        true
    }
}

impl EtcdApi for Api {
    async fn range(&self, req: RangeRequest) -> Result<RangeResponse, Status> {
        Api::range(self, req).await
    }
    async fn put(&self, req: PutRequest) -> Result<PutResponse, Status> {
        Api::put(self, req).await
    }
    async fn delete_range(&self, req: DeleteRangeRequest) -> Result<DeleteRangeResponse, Status> {
        Api::delete_range(self, req).await
    }
    async fn txn(&self, req: TxnRequest) -> Result<TxnResponse, Status> {
        Api::txn(self, req).await
    }
    async fn compact(&self, req: CompactionRequest) -> Result<CompactionResponse, Status> {
        Api::compact(self, req).await
    }
    async fn status(&self, req: StatusRequest) -> Result<StatusResponse, Status> {
        Api::status(self, req).await
    }
    async fn member_list(&self, req: MemberListRequest) -> Result<MemberListResponse, Status> {
        Api::member_list(self, req).await
    }
    fn max_request_bytes(&self) -> usize {
        Api::max_request_bytes(self)
    }
    fn alarm_names(&self) -> Vec<String> {
        self.active_alarms()
            .iter()
            .map(|a| {
                raftkv_api::etcdserverpb::AlarmType::try_from(a.alarm)
                    .map_or("NONE", |t| t.as_str_name())
                    .to_string()
            })
            .collect()
    }
    fn has_leader(&self) -> bool {
        self.node.status().leader != 0
    }
}

/// The gateway's routes for a member's [`Api`], to merge with the gRPC router.
pub fn router(api: Api) -> Router {
    router_for(api.clone()).merge(maintenance::router(api.clone())).merge(watch::router(api))
}

/// The gateway's routes over any [`EtcdApi`]. The router has no fallback of
/// its own, so it merges with tonic's.
pub fn router_for<A: EtcdApi>(api: A) -> Router {
    let shared = Arc::new(Shared { body_limit: body_limit(api.max_request_bytes()), api });
    let mut router = Router::new();
    for prefix in ["/v3", "/v3beta"] {
        router = router
            .route(&format!("{prefix}/kv/range"), unary(&shared, |a: A, r| async move { a.range(r).await }))
            .route(&format!("{prefix}/kv/put"), unary(&shared, |a: A, r| async move { a.put(r).await }))
            .route(
                &format!("{prefix}/kv/deleterange"),
                unary(&shared, |a: A, r| async move { a.delete_range(r).await }),
            )
            .route(&format!("{prefix}/kv/txn"), unary(&shared, |a: A, r| async move { a.txn(r).await }))
            .route(
                &format!("{prefix}/kv/compaction"),
                unary(&shared, |a: A, r| async move { a.compact(r).await }),
            )
            .route(
                &format!("{prefix}/maintenance/status"),
                unary(&shared, |a: A, r| async move { a.status(r).await }),
            )
            .route(
                &format!("{prefix}/cluster/member/list"),
                unary(&shared, |a: A, r| async move { a.member_list(r).await }),
            );
    }
    let health_api = shared.api.clone();
    router
        .route(
            "/health",
            get(move |axum::extract::RawQuery(query): axum::extract::RawQuery| {
                let api = health_api.clone();
                async move { health(api, query).await }
            })
            .fallback(get_only),
        )
        .route("/version", get(version).fallback(get_only))
}

/// `/health` alone, for the `--listen-metrics-urls` listeners.
pub fn health_router(api: Api) -> Router {
    Router::new().route(
        "/health",
        get(move |axum::extract::RawQuery(query): axum::extract::RawQuery| {
            let api = api.clone();
            async move { health(api, query).await }
        }),
    )
}

/// JSON carries `bytes` as base64 (4 characters for 3 bytes), plus syntax.
pub(crate) fn body_limit(max_request_bytes: usize) -> usize {
    max_request_bytes.saturating_add(max_request_bytes / 3).saturating_add(JSON_OVERHEAD_BYTES)
}

struct Shared<A> {
    api: A,
    body_limit: usize,
}

/// A `POST` route of a member's [`Api`] with the gateway's JSON handling (for services
/// whose routes live next to their code).
pub(crate) fn unary_for<Req, Resp, F, Fut>(api: &Api, call: F) -> MethodRouter
where
    Req: DeserializeOwned + Default + Send + 'static,
    Resp: Serialize + Send + 'static,
    F: Fn(Api, Req) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = Result<Resp, Status>> + Send + 'static,
{
    let shared = Arc::new(Shared { body_limit: body_limit(api.max_request_bytes()), api: api.clone() });
    unary(&shared, call)
}

fn unary<A, Req, Resp, F, Fut>(shared: &Arc<Shared<A>>, call: F) -> MethodRouter
where
    A: EtcdApi,
    Req: DeserializeOwned + Default + Send + 'static,
    Resp: Serialize + Send + 'static,
    F: Fn(A, Req) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = Result<Resp, Status>> + Send + 'static,
{
    let shared = Arc::clone(shared);
    post(move |body: Body| {
        let shared = Arc::clone(&shared);
        let call = call.clone();
        async move {
            let bytes = match read_body(body, shared.body_limit).await {
                Ok(bytes) => bytes,
                Err(status) => return error_response(&status),
            };
            let req: Req = match decode(&bytes) {
                Ok(req) => req,
                Err(status) => return error_response(&status),
            };
            match call(shared.api.clone(), req).await {
                Ok(resp) => json_response(&resp),
                Err(status) => error_response(&status),
            }
        }
    })
    .fallback(method_not_allowed)
}

/// A gateway route for a unary call on any state: decodes the JSON body (at most `limit`
/// bytes), calls `call`, answers with the JSON response or etcd's error body.
pub(crate) fn unary_on<S, Req, Resp, F, Fut>(state: S, limit: usize, call: F) -> MethodRouter
where
    S: Clone + Send + Sync + 'static,
    Req: DeserializeOwned + Default + Send + 'static,
    Resp: Serialize + Send + 'static,
    F: Fn(S, Req) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = Result<Resp, Status>> + Send + 'static,
{
    post(move |body: Body| {
        let state = state.clone();
        let call = call.clone();
        async move {
            let req: Req = match read_body(body, limit).await.and_then(|b| decode(&b)) {
                Ok(req) => req,
                Err(status) => return error_response(&status),
            };
            match call(state, req).await {
                Ok(resp) => json_response(&resp),
                Err(status) => error_response(&status),
            }
        }
    })
    .fallback(method_not_allowed)
}

pub(crate) async fn read_body(body: Body, limit: usize) -> Result<Bytes, Status> {
    match Limited::new(body, limit).collect().await {
        Ok(collected) => Ok(collected.to_bytes()),
        Err(e) if e.is::<LengthLimitError>() => {
            Err(Status::new(Code::InvalidArgument, "etcdserver: request is too large"))
        }
        Err(e) => Err(Status::new(Code::InvalidArgument, format!("cannot read the request body: {e}"))),
    }
}

/// Decodes a request body the way etcd's gateway does: an empty body (or
/// `null`) is the default request, only the first JSON value counts, `null`
/// fields are their defaults and unknown fields are ignored.
pub fn decode<Req: DeserializeOwned + Default>(body: &[u8]) -> Result<Req, Status> {
    let invalid = |e: serde_json::Error| Status::new(Code::InvalidArgument, e.to_string());
    let mut values = serde_json::Deserializer::from_slice(body).into_iter::<serde_json::Value>();
    let mut value = match values.next() {
        None => return Ok(Req::default()),
        Some(v) => v.map_err(invalid)?,
    };
    if value.is_null() {
        return Ok(Req::default());
    }
    strip_nulls(&mut value);
    Req::deserialize(value).map_err(invalid)
}

/// Removes object members whose value is `null` (proto3 JSON: null means default).
fn strip_nulls(value: &mut serde_json::Value) {
    match value {
        serde_json::Value::Object(map) => {
            map.retain(|_, v| !v.is_null());
            map.values_mut().for_each(strip_nulls);
        }
        serde_json::Value::Array(items) => items.iter_mut().for_each(strip_nulls),
        _ => {}
    }
}

fn with_type(status: StatusCode, content_type: &'static str, body: impl Into<Body>) -> Response {
    let mut resp = (status, body.into()).into_response();
    resp.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    resp
}

pub(crate) fn json_response<T: Serialize>(value: &T) -> Response {
    match serde_json::to_vec(value) {
        Ok(body) => with_type(StatusCode::OK, JSON, body),
        Err(e) => error_response(&Status::new(Code::Internal, format!("cannot encode the response: {e}"))),
    }
}

/// grpc-gateway's error body (fields in its order; empty strings omitted).
#[derive(Serialize)]
struct ErrorBody<'a> {
    #[serde(skip_serializing_if = "str::is_empty")]
    error: &'a str,
    #[serde(skip_serializing_if = "str::is_empty")]
    message: &'a str,
    code: i32,
}

/// etcd's gateway answer for a gRPC status: its error body and grpc-gateway's HTTP status.
pub fn error_response(status: &Status) -> Response {
    let body = ErrorBody { error: status.message(), message: status.message(), code: status.code() as i32 };
    let body = serde_json::to_vec(&body).unwrap_or_else(|_| br#"{"code":13}"#.to_vec());
    with_type(http_status(status.code()), JSON, body)
}

/// grpc-gateway's (v1, as in etcd 3.4) HTTP status for a gRPC code.
pub fn http_status(code: Code) -> StatusCode {
    match code {
        Code::Ok => StatusCode::OK,
        Code::Cancelled => StatusCode::REQUEST_TIMEOUT,
        Code::Unknown => StatusCode::INTERNAL_SERVER_ERROR,
        Code::InvalidArgument => StatusCode::BAD_REQUEST,
        Code::DeadlineExceeded => StatusCode::GATEWAY_TIMEOUT,
        Code::NotFound => StatusCode::NOT_FOUND,
        Code::AlreadyExists => StatusCode::CONFLICT,
        Code::PermissionDenied => StatusCode::FORBIDDEN,
        Code::Unauthenticated => StatusCode::UNAUTHORIZED,
        Code::ResourceExhausted => StatusCode::TOO_MANY_REQUESTS,
        Code::FailedPrecondition => StatusCode::BAD_REQUEST,
        Code::Aborted => StatusCode::CONFLICT,
        Code::OutOfRange => StatusCode::BAD_REQUEST,
        Code::Unimplemented => StatusCode::NOT_IMPLEMENTED,
        Code::Internal => StatusCode::INTERNAL_SERVER_ERROR,
        Code::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
        Code::DataLoss => StatusCode::INTERNAL_SERVER_ERROR,
    }
}

/// A server stream as grpc-gateway sends it: one `{"result":<message>}` line a message; an
/// error is sent as an `{"error":{...}}` line and ends the stream.
pub(crate) fn stream_response<S, T>(stream: S) -> Response
where
    S: tokio_stream::Stream<Item = Result<T, Status>> + Send + 'static,
    T: Serialize,
{
    use tokio_stream::StreamExt;
    let mut failed = false;
    let lines = stream
        .map_while(move |item| {
            if failed {
                return None;
            }
            Some(match item {
                Ok(resp) => watch::json_line("result", &resp),
                Err(status) => {
                    failed = true;
                    watch::json_line("error", &watch::StreamError::of(&status))
                }
            })
        })
        .map(Ok::<Bytes, std::convert::Infallible>);
    with_type(StatusCode::OK, JSON, Body::from_stream(lines))
}

/// A server stream refused before its first message: the error line alone, with the code's
/// HTTP status (grpc-gateway's answer).
pub(crate) fn stream_refusal(status: &Status) -> Response {
    with_type(http_status(status.code()), JSON, watch::json_line("error", &watch::StreamError::of(status)))
}

async fn method_not_allowed() -> Response {
    with_type(StatusCode::METHOD_NOT_ALLOWED, TEXT, "Method Not Allowed\n")
}

async fn get_only() -> Response {
    let mut resp = method_not_allowed().await;
    resp.headers_mut().insert(header::ALLOW, HeaderValue::from_static("GET"));
    resp
}

/// etcd 3.4's `/health`: unhealthy with an active alarm (unless its type is named by an
/// `exclude` query parameter, `?exclude=NOSPACE`), without a leader, or when a
/// linearizable read does not succeed within a second. Unhealthy answers are 503 with
/// the JSON and a newline, as Go's `http.Error` writes them. With auth enabled the
/// anonymous probe is refused, which still proves the read went through (etcd's health
/// check is not subject to auth either).
async fn health<A: EtcdApi>(api: A, query: Option<String>) -> Response {
    let excluded: Vec<&str> =
        query.as_deref().unwrap_or("").split('&').filter_map(|kv| kv.strip_prefix("exclude=")).collect();
    let alarmed = api.alarm_names().iter().any(|a| !excluded.contains(&a.as_str()));
    let healthy = !alarmed && api.has_leader() && {
        let probe = RangeRequest {
            key: Bytes::from_static(b"health"),
            limit: 1,
            keys_only: true,
            ..Default::default()
        };
        // The probe runs as the member itself, outside the caller's scope (a spawned task
        // does not inherit it): as etcd 3.4's, /health needs no user and ignores a token.
        let mut probe = tokio::spawn(async move { api.range(probe).await });
        match tokio::time::timeout(HEALTH_TIMEOUT, &mut probe).await {
            Ok(Ok(Ok(_))) => true,
            Ok(_) => false,
            Err(_) => {
                probe.abort();
                false
            }
        }
    };
    let metrics = crate::metrics::get();
    if healthy {
        metrics.health_success.inc();
        with_type(StatusCode::OK, TEXT, r#"{"health":"true"}"#)
    } else {
        metrics.health_failures.inc();
        with_type(StatusCode::SERVICE_UNAVAILABLE, TEXT, "{\"health\":\"false\"}\n")
    }
}

/// etcd's `/version`: the server version and the cluster version (major.minor.0).
async fn version() -> Response {
    #[derive(Serialize)]
    struct Versions {
        etcdserver: &'static str,
        etcdcluster: String,
    }
    json_response(&Versions { etcdserver: ETCD_VERSION, etcdcluster: cluster_version(ETCD_VERSION) })
}

fn cluster_version(server: &str) -> String {
    let mut parts = server.split('.');
    match (parts.next(), parts.next()) {
        (Some(major), Some(minor)) => format!("{major}.{minor}.0"),
        _ => server.to_string(),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests;

mod maintenance;
pub mod recipes;
mod watch;
