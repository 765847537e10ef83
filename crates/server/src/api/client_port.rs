//! The client port: one listener for etcd's gRPC API and the JSON gateway.
//!
//! Every connection gets TCP_NODELAY and the `:authority` shim ([`AuthorityFix`]); its first
//! bytes tell HTTP/2 (the client preface) from HTTP/1.1. HTTP/1.1 connections (the JSON
//! gateway, `curl`) are served by hyper with the axum router. HTTP/2 connections are driven
//! with `h2` directly: the key-value calls (`etcdserverpb.KV`: Range, Put, DeleteRange, Txn,
//! Compact) are decoded and answered here, and so are Watch streams (the session runs in
//! the stream's task and writes its responses to it); every other request (Lease, Lock,
//! Election, Auth, the Maintenance and Cluster services, the gateway over HTTP/2, unknown
//! paths) goes to the same axum router.
//!
//! Serving the hot calls here skips, per request, hyper's stream task and body adapters,
//! axum's routing and tonic's streaming codec: the request is one DATA payload decoded in
//! place, the answer is HEADERS, one DATA frame and the trailers, queued together. What a
//! client sees is the same as from tonic: status codes and messages (including etcd's
//! `grpc: received message larger than max` for requests above the limit), trailers-only
//! error responses, and `Unimplemented` for compressed requests.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use bytes::{BufMut, Bytes, BytesMut};
use http::{HeaderMap, HeaderValue, Request, Response};
use http_body::{Body, Frame};
use http_body_util::BodyExt;
use raftkv_api::etcdserverpb::WatchRequest;
use raftkv_api::prost::Message;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinSet;
use tonic::Status;
use tower::ServiceExt;

use crate::api::auth::{Call, ClientCn};
use crate::api::authority::{AuthorityFix, PREFACE};
use crate::api::service::Api;

/// Streams one HTTP/2 connection may have open at once (hyper's default, which this port
/// used before): a client with more queues them.
const MAX_CONCURRENT_STREAMS: u32 = 200;
/// Flow-control windows, per stream and per connection (hyper's defaults).
const WINDOW: u32 = 1 << 20;
/// The largest header list accepted (hyper's default).
const MAX_HEADER_LIST: u32 = 16 << 10;
/// Response bytes h2 buffers per stream beyond the peer's window (hyper's default).
const MAX_SEND_BUFFER: usize = 400 << 10;

/// The key-value calls served on h2 directly.
#[derive(Clone, Copy)]
enum KvCall {
    Range,
    Put,
    DeleteRange,
    Txn,
    Compact,
}

impl KvCall {
    fn from_path(path: &str) -> Option<KvCall> {
        Some(match path.strip_prefix("/etcdserverpb.KV/")? {
            "Range" => KvCall::Range,
            "Put" => KvCall::Put,
            "DeleteRange" => KvCall::DeleteRange,
            "Txn" => KvCall::Txn,
            "Compact" => KvCall::Compact,
            _ => return None,
        })
    }
}

/// Serves the client port until `stop` turns true, then lets open connections finish
/// (HTTP/2 GOAWAY, HTTP/1.1 after the request in progress) and returns once they have.
/// With `tls`, every connection is a TLS connection (ALPN h2 and http/1.1), served the same
/// way once the handshake is done.
pub async fn serve(
    listener: TcpListener,
    api: Api,
    router: axum::Router,
    tls: Option<tokio_rustls::TlsAcceptor>,
    mut stop: watch::Receiver<bool>,
) {
    let mut connections = JoinSet::new();
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            _ = stop.wait_for(|s| *s) => break,
        };
        while connections.try_join_next().is_some() {}
        match accepted {
            Ok((tcp, _)) => {
                // Without TCP_NODELAY, Nagle holds a response's trailing frame until the
                // client's delayed ACK: a 40 ms floor on every request.
                let _ = tcp.set_nodelay(true);
                let (api, router, stop) = (api.clone(), router.clone(), stop.clone());
                match &tls {
                    None => connections.spawn(plain_connection(tcp, api, router, stop)),
                    Some(tls) => connections.spawn(tls_connection(tcp, tls.clone(), api, router, stop)),
                };
            }
            // The peer gave up before we accepted: nothing to do.
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::ConnectionAborted
                        | io::ErrorKind::ConnectionReset
                        | io::ErrorKind::ConnectionRefused
                ) => {}
            // Out of file descriptors and the like: wait rather than spin.
            Err(e) => {
                tracing::warn!(error = %e, "cannot accept a client connection; retrying in 1 s");
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                    _ = stop.wait_for(|s| *s) => break,
                }
            }
        }
    }
    drop(listener);
    while connections.join_next().await.is_some() {}
}

/// A TLS record starts with the handshake content type and a 3.x version.
fn looks_like_tls(head: &[u8]) -> bool {
    head.len() >= 2 && head[0] == 0x16 && head[1] == 0x03
}

async fn plain_connection(tcp: TcpStream, api: Api, router: axum::Router, stop: watch::Receiver<bool>) {
    let mut first = [0u8; 2];
    if let Ok(Ok(2)) = tokio::time::timeout(FIRST_BYTES_WAIT, tcp.peek(&mut first)).await
        && looks_like_tls(&first)
    {
        let peer = tcp.peer_addr().map(|a| a.to_string()).unwrap_or_default();
        tracing::warn!(
            client = %peer,
            "closing a client connection that starts a TLS handshake: this port serves http:// (plain text); give the server https:// client URLs and a certificate, or the client http://"
        );
        return;
    }
    connection(tcp, api, router, stop, None).await;
}

/// How long a new connection may stay silent before its first bytes are looked at anyway.
const FIRST_BYTES_WAIT: Duration = Duration::from_secs(10);
/// Bound on a TLS handshake: a client that stalls in it is dropped.
const TLS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

async fn tls_connection(
    tcp: TcpStream,
    tls: tokio_rustls::TlsAcceptor,
    api: Api,
    router: axum::Router,
    stop: watch::Receiver<bool>,
) {
    use tokio::io::AsyncWriteExt;
    let peer = tcp.peer_addr().map(|a| a.to_string()).unwrap_or_default();
    let mut first = [0u8; 2];
    if let Ok(Ok(n)) = tokio::time::timeout(FIRST_BYTES_WAIT, tcp.peek(&mut first)).await
        && n >= 1
        && first[0] != 0x16
    {
        // Plain HTTP (or HTTP/2) on the TLS port: answer as Go's server does, then close.
        tracing::warn!(client = %peer, "closing a plain-text client connection on a TLS port (the client must use https://)");
        let mut tcp = tcp;
        let _ = tcp
            .write_all(b"HTTP/1.0 400 Bad Request\r\n\r\nClient sent an HTTP request to an HTTPS server.\n")
            .await;
        let _ = tcp.shutdown().await;
        return;
    }
    let stream = match tokio::time::timeout(TLS_HANDSHAKE_TIMEOUT, tls.accept(tcp)).await {
        Ok(Ok(stream)) => stream,
        Ok(Err(e)) => {
            tracing::warn!(client = %peer, error = %e, "client TLS handshake failed");
            return;
        }
        Err(_) => {
            tracing::debug!(client = %peer, "client TLS handshake timed out");
            return;
        }
    };
    // With --client-cert-auth, the verified certificate's common name names the user of
    // requests that carry no token (etcd's AuthInfoFromTLS).
    let cn = if api.auth.options.client_cert_auth {
        let (_, session) = stream.get_ref();
        session
            .peer_certificates()
            .and_then(|certs| certs.first())
            .and_then(|cert| crate::api::auth::common_name(cert))
            .map(|cn| ClientCn(cn.into()))
    } else {
        None
    };
    connection(stream, api, router, stop, cn).await;
}

async fn connection<S>(
    mut tcp: S,
    api: Api,
    router: axum::Router,
    stop: watch::Receiver<bool>,
    cn: Option<ClientCn>,
) where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    // Read until the bytes stop matching the HTTP/2 preface or all of it has come.
    let mut head = [0u8; PREFACE.len()];
    let mut n = 0;
    while n < PREFACE.len() {
        match tcp.read(&mut head[n..]).await {
            Ok(0) | Err(_) => break,
            Ok(k) => n += k,
        }
        if head[..n] != PREFACE[..n] {
            break;
        }
    }
    let is_h2 = n == PREFACE.len() && head == *PREFACE;
    let io = AuthorityFix::with_received(tcp, &head[..n]);
    if is_h2 {
        serve_h2(io, api, router, stop, cn).await;
    } else {
        serve_http1(io, router, stop, cn).await;
    }
}

async fn serve_http1<S>(
    io: AuthorityFix<S>,
    router: axum::Router,
    mut stop: watch::Receiver<bool>,
    cn: Option<ClientCn>,
) where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let service = router.map_request(move |mut r: Request<hyper::body::Incoming>| {
        if let Some(cn) = &cn {
            r.extensions_mut().insert(cn.clone());
        }
        r
    });
    let service = hyper_util::service::TowerToHyperService::new(service);
    let conn = hyper::server::conn::http1::Builder::new()
        .serve_connection(hyper_util::rt::TokioIo::new(io), service);
    tokio::pin!(conn);
    tokio::select! {
        _ = conn.as_mut() => return,
        _ = stop.wait_for(|s| *s) => {}
    }
    conn.as_mut().graceful_shutdown();
    let _ = conn.await;
}

async fn serve_h2<S>(
    io: AuthorityFix<S>,
    api: Api,
    router: axum::Router,
    mut stop: watch::Receiver<bool>,
    cn: Option<ClientCn>,
) where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    // Keepalive (crate::api::keepalive): the client's pings policed, the member's pings sent
    // when the client is silent; `activity` tells the pinger of frames from the client.
    let keepalive = api.keepalive();
    let activity = Arc::new(AtomicBool::new(false));
    let io = crate::api::keepalive::Watched::new(io, keepalive, activity.clone());
    let handshake = h2::server::Builder::new()
        .initial_window_size(WINDOW)
        .initial_connection_window_size(WINDOW)
        .max_concurrent_streams(MAX_CONCURRENT_STREAMS)
        .max_header_list_size(MAX_HEADER_LIST)
        .max_send_buffer_size(MAX_SEND_BUFFER)
        .handshake::<_, Bytes>(io);
    let mut conn = match handshake.await {
        Ok(conn) => conn,
        Err(e) => {
            tracing::debug!(error = %e, "HTTP/2 handshake failed");
            return;
        }
    };
    // The member's pings: a connection silent after one is closed.
    let pings = conn.ping_pong();
    let dead = async move {
        match pings {
            Some(pings) => crate::api::keepalive::server_pings(pings, keepalive, activity).await,
            None => std::future::pending().await,
        }
    };
    tokio::pin!(dead);
    let mut stopping = false;
    loop {
        let next = tokio::select! {
            next = conn.accept() => next,
            _ = &mut dead => return,
            _ = stop.wait_for(|s| *s), if !stopping => {
                // GOAWAY: streams already open finish, accept() then returns None.
                conn.graceful_shutdown();
                stopping = true;
                continue;
            }
        };
        match next {
            Some(Ok((mut request, respond))) => {
                let api = api.clone();
                match KvCall::from_path(request.uri().path()) {
                    Some(call) => tokio::spawn(kv_call(call, request, respond, api, cn.clone())),
                    None if request.uri().path() == WATCH_PATH => {
                        tokio::spawn(watch_call(request, respond, api, cn.clone()))
                    }
                    None => {
                        if let Some(cn) = &cn {
                            request.extensions_mut().insert(cn.clone());
                        }
                        let method = crate::metrics::Method::from_path(request.uri().path());
                        tokio::spawn(to_router(request, respond, router.clone(), method, api))
                    }
                };
            }
            Some(Err(e)) => {
                tracing::debug!(error = %e, "HTTP/2 connection error");
                return;
            }
            None => return,
        }
    }
}

/// etcd's Watch method, served here rather than through the router.
const WATCH_PATH: &str = "/etcdserverpb.Watch/Watch";

/// One Watch stream: the session runs in this task and writes its responses to the stream
/// itself (crate::api::watch::serve_grpc), one hop from the connection like a key-value
/// call. The same checks as the other paths: caller scope (auth), `hasleader`, compressed
/// requests refused, the request size limit, gRPC metrics.
async fn watch_call(
    request: Request<h2::RecvStream>,
    mut respond: h2::server::SendResponse<Bytes>,
    api: Api,
    cn: Option<ClientCn>,
) {
    let method = crate::metrics::Method::from_path(WATCH_PATH);
    let mut handled = method.map(|m| {
        crate::metrics::get().grpc_started(m);
        Handled(m, false)
    });
    let caller = Call::from_headers(request.headers(), cn.as_ref());
    let checked = crate::api::require_leader::check(request.headers(), &api)
        .and_then(|()| check_encoding(request.headers()));
    if let Err(status) = checked {
        if let Some(h) = handled.as_mut() {
            h.done(status.code());
        }
        let _ = send_status(respond, status);
        return;
    }
    let require_leader = crate::api::require_leader::required(request.headers());
    let limit = crate::api::limits::message_limit(api.max_request_bytes());
    let input = Box::pin(Requests::<WatchRequest>::new(request.into_body(), limit));
    let mut response = Response::new(());
    response.headers_mut().insert(http::header::CONTENT_TYPE, HeaderValue::from_static("application/grpc"));
    let Ok(stream) = respond.send_response(response, false) else { return };
    let serve = crate::api::watch::serve_grpc(api.clone(), input, stream, require_leader);
    // Boxed: the session is large, and a spawned task's future is copied whole.
    let ended = Box::pin(crate::api::auth::scoped(&api, caller, serve)).await;
    // A stream the client reset stays counted as Unknown (Handled's drop), as through the router.
    if let (Some(code), Some(h)) = (ended, handled.as_mut()) {
        h.done(code);
    }
}

/// Refuses a compressed request, as tonic does (no compression is served).
fn check_encoding(headers: &HeaderMap) -> Result<(), Status> {
    match headers.get("grpc-encoding") {
        Some(encoding) if encoding != "identity" => {
            let encoding = String::from_utf8_lossy(encoding.as_bytes()).into_owned();
            Err(Status::unimplemented(format!(
                "Content is compressed with `{encoding}` which isn't supported"
            )))
        }
        _ => Ok(()),
    }
}

/// The request messages of a streaming call, decoded as they arrive. A message longer than
/// `limit` is refused from its prefix, before it is buffered; the stream ends after an error.
struct Requests<M> {
    body: h2::RecvStream,
    buf: BytesMut,
    limit: usize,
    done: bool,
    message: std::marker::PhantomData<fn() -> M>,
}

impl<M> Requests<M> {
    fn new(body: h2::RecvStream, limit: usize) -> Requests<M> {
        Requests { body, buf: BytesMut::new(), limit, done: false, message: std::marker::PhantomData }
    }

    /// The next whole message buffered, if any.
    fn next_message(&mut self) -> Result<Option<Bytes>, Status> {
        if self.buf.len() < 5 {
            return Ok(None);
        }
        if self.buf[0] != 0 {
            return Err(Status::internal(
                "protocol error: received message with compressed-flag but no grpc-encoding was specified",
            ));
        }
        let len = u32::from_be_bytes([self.buf[1], self.buf[2], self.buf[3], self.buf[4]]) as usize;
        crate::api::limits::check_message_len(len, self.limit)?;
        if self.buf.len() < 5 + len {
            return Ok(None);
        }
        let mut message = self.buf.split_to(5 + len);
        let _ = message.split_to(5);
        crate::metrics::get().grpc_received_bytes(len as u64);
        Ok(Some(message.freeze()))
    }
}

impl<M: Message + Default> tokio_stream::Stream for Requests<M> {
    type Item = Result<M, Status>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.get_mut();
        loop {
            if this.done {
                return Poll::Ready(None);
            }
            match this.next_message() {
                Ok(Some(message)) => return Poll::Ready(Some(decode(message))),
                Ok(None) => {}
                Err(status) => {
                    this.done = true;
                    return Poll::Ready(Some(Err(status)));
                }
            }
            match ready!(this.body.poll_data(cx)) {
                Some(Ok(chunk)) => {
                    let _ = this.body.flow_control().release_capacity(chunk.len());
                    this.buf.extend_from_slice(&chunk);
                }
                Some(Err(e)) => {
                    this.done = true;
                    return Poll::Ready(Some(Err(Status::cancelled(format!("request stream: {e}")))));
                }
                None => {
                    this.done = true;
                    if !this.buf.is_empty() {
                        return Poll::Ready(Some(Err(Status::internal(
                            "request stream ended inside a message",
                        ))));
                    }
                }
            }
        }
    }
}

/// One key-value call: decode, run, answer (or answer the error as a trailers-only response).
async fn kv_call(
    call: KvCall,
    request: Request<h2::RecvStream>,
    respond: h2::server::SendResponse<Bytes>,
    api: Api,
    cn: Option<ClientCn>,
) {
    let metrics = crate::metrics::get();
    let method = crate::metrics::Method::kv(call as usize);
    metrics.grpc_started(method);
    // The same caller resolution and checks as every other path (see crate::api::auth).
    let caller = Call::from_headers(request.headers(), cn.as_ref());
    let deadline = request.headers().get("grpc-timeout").map(|v| grpc_timeout(v.as_bytes()));
    // Boxed once: composing the call's future with the caller scope and the deadline by value
    // would hold it twice each (rustc keeps a moved-in future's old slot), and a spawned
    // task's future is copied whole when it is spawned.
    let run = Box::pin(crate::api::auth::scoped(&api, caller, run_kv_call(call, request, &api)));
    let result = match deadline {
        None => run.await,
        Some(Err(status)) => Err(status),
        Some(Ok(limit)) => match tokio::time::timeout(limit, run).await {
            Ok(result) => result,
            Err(_) => Err(Status::deadline_exceeded("context deadline exceeded")),
        },
    };
    metrics.grpc_handled(method, result.as_ref().map_or_else(|s| s.code(), |_| tonic::Code::Ok));
    let _ = match result {
        Ok(payload) => {
            metrics.grpc_sent_bytes(payload.len().saturating_sub(5) as u64);
            send_message(respond, payload)
        }
        Err(status) => send_status(respond, status),
    };
}

async fn run_kv_call(call: KvCall, request: Request<h2::RecvStream>, api: &Api) -> Result<Bytes, Status> {
    crate::api::require_leader::check(request.headers(), api)?;
    check_encoding(request.headers())?;
    let limit = crate::api::limits::message_limit(api.max_request_bytes());
    let message = read_message(request.into_body(), limit).await?;
    crate::metrics::get().grpc_received_bytes(message.len() as u64);
    match call {
        KvCall::Range => encode(api.range(decode(message)?).await?),
        KvCall::Put => encode(api.put(decode(message)?).await?),
        KvCall::DeleteRange => encode(api.delete_range(decode(message)?).await?),
        KvCall::Txn => encode(api.txn(decode(message)?).await?),
        KvCall::Compact => encode(api.compact(decode(message)?).await?),
    }
}

/// A `grpc-timeout` header value (gRPC over HTTP/2: at most 8 digits and a unit).
fn grpc_timeout(value: &[u8]) -> Result<Duration, Status> {
    let bad =
        || Status::internal(format!("malformed grpc-timeout header {:?}", String::from_utf8_lossy(value)));
    let (&unit, digits) = value.split_last().ok_or_else(bad)?;
    if digits.is_empty() || digits.len() > 8 || !digits.iter().all(u8::is_ascii_digit) {
        return Err(bad());
    }
    let n: u64 = std::str::from_utf8(digits).map_err(|_| bad())?.parse().map_err(|_| bad())?;
    Ok(match unit {
        b'H' => Duration::from_secs(n.saturating_mul(3600)),
        b'M' => Duration::from_secs(n.saturating_mul(60)),
        b'S' => Duration::from_secs(n),
        b'm' => Duration::from_millis(n),
        b'u' => Duration::from_micros(n),
        b'n' => Duration::from_nanos(n),
        _ => return Err(bad()),
    })
}

fn decode<M: Message + Default>(message: Bytes) -> Result<M, Status> {
    M::decode(message).map_err(|e| Status::internal(format!("failed to decode Protobuf message: {e}")))
}

/// A response message with gRPC's 5-byte prefix (not compressed, length).
fn encode<M: Message>(message: M) -> Result<Bytes, Status> {
    let len = message.encoded_len();
    let prefix = u32::try_from(len).map_err(|_| Status::resource_exhausted("response larger than 4 GiB"))?;
    let mut buf = BytesMut::with_capacity(5 + len);
    buf.put_u8(0);
    buf.put_u32(prefix);
    message.encode(&mut buf).map_err(|e| Status::internal(format!("failed to encode the response: {e}")))?;
    Ok(buf.freeze())
}

/// Reads a unary request's one message (gRPC length-prefixed), refusing one longer than
/// `limit` before buffering it. A message that arrived in one DATA frame is not copied.
async fn read_message(mut body: h2::RecvStream, limit: usize) -> Result<Bytes, Status> {
    let stream_error = |e: h2::Error| Status::cancelled(format!("request stream: {e}"));
    let mut first: Option<Bytes> = None;
    let mut buf = BytesMut::new();
    let mut want: Option<usize> = None;
    while let Some(chunk) = body.data().await {
        let chunk = chunk.map_err(stream_error)?;
        let _ = body.flow_control().release_capacity(chunk.len());
        if first.is_none() && buf.is_empty() {
            first = Some(chunk);
        } else {
            if let Some(f) = first.take() {
                buf.extend_from_slice(&f);
            }
            buf.extend_from_slice(&chunk);
        }
        let have = first.as_ref().map_or(&buf[..], |f| &f[..]);
        if want.is_none() && have.len() >= 5 {
            if have[0] != 0 {
                return Err(Status::internal(
                    "protocol error: received message with compressed-flag but no grpc-encoding was specified",
                ));
            }
            let len = u32::from_be_bytes([have[1], have[2], have[3], have[4]]) as usize;
            crate::api::limits::check_message_len(len, limit)?;
            want = Some(5 + len);
        }
        if let Some(want) = want
            && have.len() > want
        {
            return Err(Status::internal("unary request with more than one message"));
        }
    }
    let whole = match first {
        Some(f) => f,
        None => buf.freeze(),
    };
    match want {
        Some(want) if whole.len() == want => Ok(whole.slice(5..)),
        Some(_) => Err(Status::internal("request stream ended inside a message")),
        None if whole.is_empty() => Err(Status::internal("Missing request message.")),
        None => Err(Status::internal("request stream ended inside a message prefix")),
    }
}

fn send_message(mut respond: h2::server::SendResponse<Bytes>, payload: Bytes) -> Result<(), h2::Error> {
    let mut response = Response::new(());
    response.headers_mut().insert(http::header::CONTENT_TYPE, HeaderValue::from_static("application/grpc"));
    let mut stream = respond.send_response(response, false)?;
    stream.send_data(payload, false)?;
    let mut trailers = HeaderMap::with_capacity(1);
    trailers.insert("grpc-status", HeaderValue::from_static("0"));
    stream.send_trailers(trailers)
}

fn send_status(mut respond: h2::server::SendResponse<Bytes>, status: Status) -> Result<(), h2::Error> {
    let mut response = Response::new(());
    response.headers_mut().insert(http::header::CONTENT_TYPE, HeaderValue::from_static("application/grpc"));
    if status.add_header(response.headers_mut()).is_err() {
        // The message could not be a header value: send the code alone.
        response.headers_mut().insert("grpc-status", HeaderValue::from(status.code() as i32));
    }
    respond.send_response(response, true).map(|_| ())
}

/// Any other request over HTTP/2: through the axum router, its response body piped back.
async fn to_router(
    request: Request<h2::RecvStream>,
    mut respond: h2::server::SendResponse<Bytes>,
    router: axum::Router,
    method: Option<crate::metrics::Method>,
    api: Api,
) {
    // gRPC calls are counted as on the key-value path: started, then handled with the code
    // of the response headers (trailers-only) or trailers; a stream cut short is Unknown.
    let mut counted = method.map(|m| {
        crate::metrics::get().grpc_started(m);
        Handled(m, false)
    });
    if is_grpc(request.headers())
        && let Err(status) = crate::api::require_leader::check(request.headers(), &api)
    {
        if let Some(c) = counted.as_mut() {
            c.done(status.code());
        }
        let _ = send_status(respond, status);
        return;
    }
    // gRPC messages are counted in both directions (etcd_network_client_grpc_*_bytes_total).
    let grpc = is_grpc(request.headers());
    let (parts, body) = request.into_parts();
    let received = grpc.then(MessageBytes::default);
    let body = H2Body { recv: body, data_done: false, received };
    let request = Request::from_parts(parts, axum::body::Body::new(body));
    let mut sent = grpc.then(MessageBytes::default);
    let response = match router.oneshot(request).await {
        Ok(response) => response,
        Err(never) => match never {},
    };
    let (parts, mut body) = response.into_parts();
    if let Some(c) = counted.as_mut()
        && let Some(code) = grpc_code(&parts.headers)
    {
        c.done(code);
    }
    let end = body.is_end_stream();
    let Ok(mut stream) = respond.send_response(Response::from_parts(parts, ()), end) else { return };
    if end {
        return;
    }
    loop {
        // A long-lived response (a watch stream) ends when the client resets its stream.
        let frame = tokio::select! {
            frame = body.frame() => frame,
            _ = std::future::poll_fn(|cx| stream.poll_reset(cx)) => return,
        };
        let Some(frame) = frame else { break };
        let frame = match frame {
            Ok(frame) => frame,
            Err(e) => {
                tracing::debug!(error = %e, "response body failed");
                stream.send_reset(h2::Reason::INTERNAL_ERROR);
                return;
            }
        };
        let frame = match frame.into_data() {
            Ok(data) => {
                if let Some(sent) = sent.as_mut() {
                    let bytes = sent.feed(&data);
                    if bytes > 0 {
                        crate::metrics::get().grpc_sent_bytes(bytes);
                    }
                }
                if send_when_window(&mut stream, data).await.is_err() {
                    return;
                }
                continue;
            }
            Err(frame) => frame,
        };
        if let Ok(trailers) = frame.into_trailers() {
            if let Some(c) = counted.as_mut() {
                c.done(grpc_code(&trailers).unwrap_or(tonic::Code::Unknown));
            }
            let _ = stream.send_trailers(trailers);
            return;
        }
    }
    let _ = stream.send_data(Bytes::new(), true);
}

/// Sends `data` as the peer's flow-control window allows, so that a client that does not
/// read (a watch stream's) holds the response body back instead of growing h2's buffer.
pub(crate) async fn send_when_window(
    stream: &mut h2::SendStream<Bytes>,
    mut data: Bytes,
) -> Result<(), h2::Error> {
    while !data.is_empty() {
        stream.reserve_capacity(data.len());
        // poll_capacity only reports an increase: capacity left over from an earlier
        // reservation is used directly.
        let granted = match stream.capacity() {
            0 => match std::future::poll_fn(|cx| stream.poll_capacity(cx)).await {
                Some(granted) => granted?,
                None => return Err(h2::Error::from(h2::Reason::CANCEL)),
            },
            granted => granted,
        };
        if granted == 0 {
            continue;
        }
        let chunk = data.split_to(granted.min(data.len()));
        stream.send_data(chunk, false)?;
    }
    Ok(())
}

/// A gRPC call through the router, counted as handled exactly once (on drop at the latest).
struct Handled(crate::metrics::Method, bool);

impl Handled {
    fn done(&mut self, code: tonic::Code) {
        if !self.1 {
            self.1 = true;
            crate::metrics::get().grpc_handled(self.0, code);
        }
    }
}

impl Drop for Handled {
    fn drop(&mut self) {
        self.done(tonic::Code::Unknown);
    }
}

/// Whether a request is a gRPC call (rather than the JSON gateway over HTTP/2).
fn is_grpc(headers: &HeaderMap) -> bool {
    headers.get(http::header::CONTENT_TYPE).is_some_and(|v| v.as_bytes().starts_with(b"application/grpc"))
}

fn grpc_code(headers: &HeaderMap) -> Option<tonic::Code> {
    let code = headers.get("grpc-status")?.to_str().ok()?.parse::<i32>().ok()?;
    Some(tonic::Code::from_i32(code))
}

/// An HTTP/2 request body as an `http_body::Body`, giving flow-control credit back as it is
/// read (and, for a gRPC call, counting the messages received).
struct H2Body {
    recv: h2::RecvStream,
    data_done: bool,
    received: Option<MessageBytes>,
}

/// The gRPC messages of one direction of a call, followed through their 5-byte prefixes
/// (compressed flag, big-endian length) across DATA frames, for the byte counters: etcd
/// counts each message's encoded length (its codec's), not the prefix.
#[derive(Default)]
struct MessageBytes {
    prefix: [u8; 5],
    /// Prefix bytes of the next message seen so far.
    have: usize,
    /// The current message's length, and how much of it is still to come.
    len: u64,
    remaining: u64,
}

impl MessageBytes {
    /// Follows `data`; returns the length of the messages that it completed.
    fn feed(&mut self, mut data: &[u8]) -> u64 {
        let mut completed = 0;
        while !data.is_empty() {
            if self.remaining > 0 {
                let n = self.remaining.min(data.len() as u64);
                self.remaining -= n;
                data = &data[n as usize..];
                if self.remaining == 0 {
                    completed += self.len;
                }
                continue;
            }
            let n = (5 - self.have).min(data.len());
            self.prefix[self.have..self.have + n].copy_from_slice(&data[..n]);
            self.have += n;
            data = &data[n..];
            if self.have == 5 {
                self.have = 0;
                let [_, a, b, c, d] = self.prefix;
                self.len = u64::from(u32::from_be_bytes([a, b, c, d]));
                self.remaining = self.len;
            }
        }
        completed
    }
}

impl Body for H2Body {
    type Data = Bytes;
    type Error = h2::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, h2::Error>>> {
        let this = self.get_mut();
        if !this.data_done {
            match ready!(this.recv.poll_data(cx)) {
                Some(Ok(data)) => {
                    let _ = this.recv.flow_control().release_capacity(data.len());
                    if let Some(received) = this.received.as_mut() {
                        let bytes = received.feed(&data);
                        if bytes > 0 {
                            crate::metrics::get().grpc_received_bytes(bytes);
                        }
                    }
                    return Poll::Ready(Some(Ok(Frame::data(data))));
                }
                Some(Err(e)) => return Poll::Ready(Some(Err(e))),
                None => this.data_done = true,
            }
        }
        match ready!(this.recv.poll_trailers(cx)) {
            Ok(Some(trailers)) => Poll::Ready(Some(Ok(Frame::trailers(trailers)))),
            Ok(None) => Poll::Ready(None),
            Err(e) => Poll::Ready(Some(Err(e))),
        }
    }

    fn is_end_stream(&self) -> bool {
        self.recv.is_end_stream()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn message_bytes_follow_prefixes_across_frames() {
        let message = |len: usize| {
            let mut m = vec![0u8];
            m.extend_from_slice(&(len as u32).to_be_bytes());
            m.extend(std::iter::repeat_n(7u8, len));
            m
        };
        let mut stream = message(10);
        stream.extend(message(0));
        stream.extend(message(300));
        stream.extend(message(3));
        // Whole, then in every split of two pieces, then byte by byte.
        assert_eq!(MessageBytes::default().feed(&stream), 313);
        for cut in 0..stream.len() {
            let mut m = MessageBytes::default();
            assert_eq!(m.feed(&stream[..cut]) + m.feed(&stream[cut..]), 313, "cut at {cut}");
        }
        let mut m = MessageBytes::default();
        let by_byte: Vec<u64> = stream.iter().map(|b| m.feed(std::slice::from_ref(b))).collect();
        assert_eq!(by_byte.iter().sum::<u64>(), 313);
        // A message counts when its last byte arrives.
        assert_eq!(by_byte[14], 10);
        assert_eq!(by_byte[..14].iter().sum::<u64>(), 0);
        // An incomplete message is not counted.
        assert_eq!(MessageBytes::default().feed(&message(50)[..40]), 0);
    }

    #[test]
    fn grpc_timeout_values() {
        assert_eq!(grpc_timeout(b"5S").ok(), Some(Duration::from_secs(5)));
        assert_eq!(grpc_timeout(b"250m").ok(), Some(Duration::from_millis(250)));
        assert_eq!(grpc_timeout(b"1H").ok(), Some(Duration::from_secs(3600)));
        assert_eq!(grpc_timeout(b"99999999n").ok(), Some(Duration::from_nanos(99_999_999)));
        for bad in [&b""[..], b"S", b"5", b"123456789S", b"5x", b"-5S", b"5 S"] {
            assert!(grpc_timeout(bad).is_err(), "{bad:?}");
        }
    }
}
