//! The gateway's `/v3/watch` (and `/v3beta/watch`): etcd's bidirectional Watch stream as
//! grpc-gateway serves it. The request body is a sequence of JSON `WatchRequest` objects
//! (usually one `{"create_request":{...}}`), read as it arrives; the response is a
//! chunked stream of newline-delimited `{"result":<WatchResponse>}` objects, open until
//! the client goes away. As in etcd 3.4, a first object that is not valid JSON is
//! answered with the error body and HTTP 500; a later bad object ends the reading of
//! requests (the watchers already created go on).

use std::convert::Infallible;

use axum::Router;
use axum::body::Body;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use bytes::{Bytes, BytesMut};
use http_body_util::BodyExt;
use raftkv_api::etcdserverpb::WatchRequest;
use tokio::sync::mpsc;
use tokio_stream::StreamExt;
use tonic::{Code, Status};

use super::{body_limit, decode, error_response, method_not_allowed};
use crate::api::service::Api;

/// Requests queued from the body before the session takes them.
const IN_QUEUE: usize = 16;

pub fn router(api: Api) -> Router {
    let mut router = Router::new();
    for prefix in ["/v3", "/v3beta"] {
        let api = api.clone();
        router = router.route(
            &format!("{prefix}/watch"),
            post(move |body: Body| {
                let api = api.clone();
                async move { watch(api, body).await }
            })
            .fallback(method_not_allowed),
        );
    }
    router
}

/// Reads JSON objects off a request body, one at a time.
struct Objects {
    body: Body,
    buf: BytesMut,
    limit: usize,
    done: bool,
}

enum Next {
    Request(WatchRequest),
    End,
    Bad(Status),
}

impl Objects {
    async fn next(&mut self) -> Next {
        loop {
            let text = self.buf.iter().position(|b| !b.is_ascii_whitespace());
            if let Some(start) = text {
                let _ = self.buf.split_to(start);
                let mut values =
                    serde_json::Deserializer::from_slice(&self.buf).into_iter::<serde_json::Value>();
                match values.next() {
                    Some(Ok(_)) => {
                        let used = values.byte_offset();
                        let object = self.buf.split_to(used);
                        return match decode::<WatchRequest>(&object) {
                            Ok(req) => Next::Request(req),
                            Err(status) => Next::Bad(status),
                        };
                    }
                    Some(Err(e)) if !e.is_eof() || self.done => {
                        return Next::Bad(Status::new(Code::Unknown, e.to_string()));
                    }
                    _ => {}
                }
            } else {
                self.buf.clear();
                if self.done {
                    return Next::End;
                }
            }
            if self.done {
                return Next::End;
            }
            if self.buf.len() > self.limit {
                return Next::Bad(Status::new(Code::InvalidArgument, "etcdserver: request is too large"));
            }
            match self.body.frame().await {
                Some(Ok(frame)) => {
                    if let Ok(data) = frame.into_data() {
                        self.buf.extend_from_slice(&data);
                    }
                }
                Some(Err(_)) | None => self.done = true,
            }
        }
    }
}

async fn watch(api: Api, body: Body) -> Response {
    let mut objects =
        Objects { body, buf: BytesMut::new(), limit: body_limit(api.max_request_bytes()), done: false };
    let first = match objects.next().await {
        Next::Request(req) => Some(req),
        Next::End => None,
        // grpc-gateway answers a first request it cannot decode with code 2 and HTTP 500.
        Next::Bad(status) => {
            let mut resp = error_response(&Status::new(Code::Unknown, status.message().to_string()));
            *resp.status_mut() = StatusCode::INTERNAL_SERVER_ERROR;
            return resp;
        }
    };
    let (tx, rx) = mpsc::channel::<Result<WatchRequest, Status>>(IN_QUEUE);
    tokio::spawn(async move {
        if let Some(first) = first {
            if tx.send(Ok(first)).await.is_err() {
                return;
            }
            while let Next::Request(req) = objects.next().await {
                if tx.send(Ok(req)).await.is_err() {
                    return;
                }
            }
        }
        // The body is over: the session goes on sending (as etcd does); keep the input
        // open until the session ends, so it does not take the end for a client error.
        tx.closed().await;
    });
    let out = crate::api::watch::start(api, Box::pin(tokio_stream::wrappers::ReceiverStream::new(rx)));
    let lines = out.map(|item| {
        let line = match item.and_then(|reply| reply.decode()) {
            Ok(resp) => json_line("result", &resp),
            Err(status) => json_line("error", &StreamError::of(&status)),
        };
        Ok::<Bytes, Infallible>(line)
    });
    let mut resp = (StatusCode::OK, Body::from_stream(lines)).into_response();
    resp.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    resp
}

/// grpc-gateway's error object in a stream.
#[derive(serde::Serialize)]
pub(super) struct StreamError {
    grpc_code: i32,
    http_code: u16,
    message: String,
    http_status: String,
}

impl StreamError {
    pub(super) fn of(status: &Status) -> StreamError {
        let http = super::http_status(status.code());
        StreamError {
            grpc_code: status.code() as i32,
            http_code: http.as_u16(),
            message: status.message().to_string(),
            http_status: http.canonical_reason().unwrap_or("").to_string(),
        }
    }
}

/// `{"<field>":<value>}` and a newline.
pub(super) fn json_line<T: serde::Serialize>(field: &str, value: &T) -> Bytes {
    let mut out = Vec::with_capacity(256);
    out.extend_from_slice(b"{\"");
    out.extend_from_slice(field.as_bytes());
    out.extend_from_slice(b"\":");
    if serde_json::to_writer(&mut out, value).is_err() {
        out.extend_from_slice(b"null");
    }
    out.extend_from_slice(b"}\n");
    Bytes::from(out)
}
