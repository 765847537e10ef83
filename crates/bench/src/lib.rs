//! `raftkv-bench`: a load generator speaking the etcd v3 gRPC API, so the same command
//! drives raftkv and etcd.
//!
//! `--clients` workers each keep one request in flight, spread round-robin over `--conns`
//! HTTP/2 connections (themselves spread over the endpoints, or all to the leader). Only
//! successful operations completing inside the measured window count; latencies go to an
//! HDR histogram per worker (merged at the end), errors are counted by gRPC code and
//! message. A progress line goes to stderr once a second; the result is a human summary
//! on stdout followed by one JSON line (`--json`: the JSON line only).
//!
//! `https://` endpoints and authentication take etcdctl's flags (`--cacert`, `--cert`,
//! `--key`, `--user`); see [`secure`].

use std::collections::{BTreeMap, HashMap};
use std::io::{IsTerminal, Write};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::{BufMut, Bytes, BytesMut};
use hdrhistogram::Histogram;
use raftkv_api::etcdserverpb::{
    AuthenticateRequest, AuthenticateResponse, Compare, PutRequest, PutResponse, RangeRequest, RangeResponse,
    RequestOp, TxnRequest, TxnResponse, compare, request_op,
};
use raftkv_api::prost::Message;
// Keys are picked uniformly by multiply-shift (`SplitMix64::scaled`).
use raftkv_rng::SplitMix64 as Rng;
use tonic::{Code, Status};

mod flatio;
pub mod secure;

use secure::{Credentials, Session};
pub use secure::{Security, TlsError};

/// Why a benchmark cannot run.
#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    /// A flag out of range.
    #[error("{0}")]
    Usage(&'static str),
    /// An endpoint that is not `http://host:port` (or `https://` with `--cacert`).
    #[error("bad endpoint {url}: {reason}")]
    BadEndpoint {
        /// The endpoint.
        url: String,
        /// What is wrong with it.
        reason: String,
    },
    /// An endpoint that cannot be reached.
    #[error("cannot connect to {url}: {reason}")]
    Connect {
        /// The endpoint.
        url: String,
        /// What failed.
        reason: String,
    },
    /// A TLS flag or one of its files is wrong.
    #[error("TLS: {0}")]
    Tls(#[from] TlsError),
    /// `--user`: the member refused to authenticate the user.
    #[error("cannot authenticate as {user} at {url}: {reason}")]
    Auth {
        /// The endpoint.
        url: String,
        /// The user name.
        user: String,
        /// What the member answered.
        reason: String,
    },
    /// `--target leader` and no member knows a leader.
    #[error("no endpoint reports a leader")]
    NoLeader,
    /// `--target leader` and the leader is not one of the endpoints.
    #[error("the leader {0:x} is not among the endpoints")]
    LeaderNotListed(u64),
    /// A load worker panicked.
    #[error("a worker failed: {0}")]
    Worker(tokio::task::JoinError),
    /// The workers' latency histograms cannot be merged.
    #[error("cannot merge histograms: {0}")]
    Histogram(String),
}

impl BenchError {
    fn bad_endpoint(url: &str, reason: impl std::fmt::Display) -> BenchError {
        BenchError::BadEndpoint { url: url.to_string(), reason: reason.to_string() }
    }

    fn connect(url: &str, reason: impl std::fmt::Display) -> BenchError {
        BenchError::Connect { url: url.to_string(), reason: reason.to_string() }
    }

    fn auth(url: &str, user: &Credentials, status: &Status) -> BenchError {
        BenchError::Auth {
            url: url.to_string(),
            user: user.name.clone(),
            reason: status.message().to_string(),
        }
    }
}

#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Op {
    /// Put one key (a replicated write).
    Put,
    /// Linearizable single-key Range (read barrier through the leader).
    Range,
    /// Serializable single-key Range (served locally by the member).
    RangeSerializable,
    /// Txn: one compare (the key's version > -1, always true) then one put; else a range.
    Txn,
    /// Linearizable single-key Range with probability --read-ratio, Put otherwise.
    Mixed,
}

impl Op {
    fn name(self) -> &'static str {
        match self {
            Op::Put => "put",
            Op::Range => "range",
            Op::RangeSerializable => "range-serializable",
            Op::Txn => "txn",
            Op::Mixed => "mixed",
        }
    }
}

#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Target {
    /// Spread the connections over every endpoint.
    All,
    /// Send everything to the current leader (found with Maintenance.Status).
    Leader,
}

#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum KeyOrder {
    /// Uniformly random keys over the key space (seeded).
    Random,
    /// key0, key1, ... (shared counter, wrapping at the key space): loads every key once.
    Sequential,
}

#[derive(clap::Args, Debug, Clone)]
pub struct BenchArgs {
    /// Client endpoints, comma separated (host:port, http://host:port, or https://host:port
    /// with --cacert; a bare host:port is https:// when --cacert is given).
    #[arg(long, default_value = "127.0.0.1:2379", value_delimiter = ',')]
    pub endpoints: Vec<String>,
    /// Concurrent requests in flight (one worker each).
    #[arg(long, default_value_t = 1)]
    pub clients: usize,
    /// gRPC (HTTP/2) connections; the clients are spread over them round-robin.
    #[arg(long, default_value_t = 1)]
    pub conns: usize,
    /// The operation.
    #[arg(long, value_enum, default_value = "put")]
    pub op: Op,
    /// Fraction of reads for --op mixed.
    #[arg(long, default_value_t = 0.9)]
    pub read_ratio: f64,
    /// Value size in bytes for writes.
    #[arg(long, default_value_t = 256)]
    pub value_size: usize,
    /// Number of distinct keys (key{N}, zero-padded).
    #[arg(long, default_value_t = 100_000)]
    pub key_space: u64,
    /// Key choice.
    #[arg(long, value_enum, default_value = "random")]
    pub keys: KeyOrder,
    /// Measured duration in seconds (default 10 unless --total is given).
    #[arg(long, conflicts_with = "total")]
    pub duration: Option<f64>,
    /// Measured operation count (successful or not) instead of a duration.
    #[arg(long)]
    pub total: Option<u64>,
    /// Seconds of load before measuring.
    #[arg(long, default_value_t = 0.0)]
    pub warmup: f64,
    /// Which members receive the load.
    #[arg(long, value_enum, default_value = "all")]
    pub target: Target,
    /// Per-request timeout in seconds.
    #[arg(long, default_value_t = 10.0)]
    pub timeout: f64,
    /// Seed of the key generator (each worker derives its own stream).
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Print only the JSON result line on stdout.
    #[arg(long)]
    pub json: bool,
    /// No progress line on stderr.
    #[arg(long)]
    pub quiet: bool,
    /// TLS: verify the members' certificates with this CA bundle (PEM), as etcdctl's --cacert.
    #[arg(long)]
    pub cacert: Option<PathBuf>,
    /// TLS: client certificate (PEM) for members that check clients (--client-cert-auth).
    #[arg(long, requires = "key")]
    pub cert: Option<PathBuf>,
    /// TLS: the client certificate's private key (PEM).
    #[arg(long, requires = "cert")]
    pub key: Option<PathBuf>,
    /// Authenticate as name:password (once per connection; the token goes in the `token`
    /// metadata, renewed when the members answer "invalid auth token").
    #[arg(long)]
    pub user: Option<String>,
}

/// Every key of the key space in one buffer; a key is a zero-copy slice of it.
struct Keys {
    buf: Bytes,
    width: usize,
}

impl Keys {
    fn new(space: u64) -> Keys {
        let digits = space.saturating_sub(1).max(1).to_string().len();
        let width = 3 + digits;
        let mut buf = Vec::with_capacity(width * space as usize);
        for n in 0..space {
            write!(buf, "key{n:0digits$}").expect("writing to a Vec cannot fail");
        }
        Keys { buf: Bytes::from(buf), width }
    }
    fn get(&self, n: u64) -> Bytes {
        let at = n as usize * self.width;
        self.buf.slice(at..at + self.width)
    }
}

enum Stop {
    /// Measure from `start` to `end`, stop issuing at `end`.
    At { start: Instant, end: Instant },
    /// Measure from `start` until `total` operations were issued in the measured phase.
    Count { start: Instant, total: u64 },
}

struct Plan {
    op: Op,
    read_ratio: f64,
    keys: Keys,
    key_space: u64,
    key_order: KeyOrder,
    value: Bytes,
    stop: Stop,
    seed: u64,
}

impl Plan {
    fn measure_start(&self) -> Instant {
        match self.stop {
            Stop::At { start, .. } | Stop::Count { start, .. } => start,
        }
    }
}

#[derive(Default)]
struct Shared {
    /// Successful operations, warmup included (progress line).
    ok: AtomicU64,
    /// Failed operations, warmup included (progress line).
    errors: AtomicU64,
    /// Measured-phase tickets for --total.
    tickets: AtomicU64,
    /// Next key for --keys sequential.
    next_key: AtomicU64,
    finished: AtomicBool,
}

struct WorkerResult {
    hist: Histogram<u64>,
    ops: u64,
    reads: u64,
    writes: u64,
    errors: HashMap<String, u64>,
    last_done: Option<Instant>,
}

fn new_histogram() -> Histogram<u64> {
    // Microseconds, 1 µs .. 10 min, 3 significant digits.
    Histogram::new_with_bounds(1, 600_000_000, 3).expect("valid histogram bounds")
}

enum Kind {
    Read,
    Write,
}

/// Largest response accepted (the etcd client's default receive limit is far lower).
const MAX_RESPONSE_BYTES: usize = 64 << 20;

/// A unary gRPC client on one HTTP/2 connection (h2), for the load generator only.
///
/// A request's HEADERS and its one DATA frame are queued together, so the connection task
/// writes them in one system call; tonic's streaming request bodies reach the socket in
/// separate writes, and at tens of thousands of requests a second the generator's own CPU
/// (which it shares with the cluster it measures) is what this saves.
#[derive(Clone)]
struct GrpcConn {
    send: h2::client::SendRequest<Bytes>,
    scheme: http::uri::Scheme,
    authority: http::uri::Authority,
    timeout: Duration,
    /// With `--user`: the connection's token.
    session: Option<Arc<Session>>,
}

/// A TCP connection (no Nagle) to the host and port of `url` (`default_port` if it has none).
async fn tcp(
    url: &str,
    authority: &http::uri::Authority,
    default_port: u16,
) -> Result<tokio::net::TcpStream, BenchError> {
    let addr = format!("{}:{}", authority.host(), authority.port_u16().unwrap_or(default_port));
    let tcp = tokio::time::timeout(Duration::from_secs(5), tokio::net::TcpStream::connect(&addr))
        .await
        .map_err(|_| BenchError::connect(url, "timed out"))?
        .map_err(|e| BenchError::connect(url, e))?;
    tcp.set_nodelay(true).map_err(|e| BenchError::connect(url, format!("TCP_NODELAY: {e}")))?;
    Ok(tcp)
}

/// The HTTP/2 handshake on `io`; the connection is driven by a task of its own. With
/// `confirm` (TLS), a PING round trip before returning: over TLS 1.3 a member refusing the
/// client's certificate says so only after the client's side of the handshake is done (and
/// closes the connection, so what the client sees may be a broken pipe rather than the
/// alert), and this turns that into a connection error instead of one error per request.
async fn h2_handshake<T>(
    url: &str,
    io: T,
    confirm: bool,
) -> Result<h2::client::SendRequest<Bytes>, BenchError>
where
    T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (send, mut conn) = h2::client::Builder::new()
        .initial_window_size(1 << 20)
        .initial_connection_window_size(16 << 20)
        .handshake::<_, Bytes>(flatio::FlatWrites(io))
        .await
        .map_err(|e| BenchError::connect(url, e))?;
    let ping = if confirm { conn.ping_pong() } else { None };
    tokio::spawn(async move {
        let _ = conn.await;
    });
    if let Some(mut ping) = ping {
        tokio::time::timeout(Duration::from_secs(5), ping.ping(h2::Ping::opaque()))
            .await
            .map_err(|_| BenchError::connect(url, "no answer to an HTTP/2 PING"))?
            .map_err(|e| {
                let hint = "the member closed the TLS connection: does it want a client certificate \
                            (--cert, --key) signed by a CA it trusts?";
                BenchError::connect(url, format!("{e} ({hint})"))
            })?;
    }
    Ok(send)
}

impl GrpcConn {
    async fn connect(url: &str, timeout: Duration, security: &Security) -> Result<GrpcConn, BenchError> {
        let uri: http::Uri = url.parse().map_err(|e| BenchError::bad_endpoint(url, e))?;
        let scheme = uri.scheme().cloned().ok_or_else(|| BenchError::bad_endpoint(url, "no scheme"))?;
        let authority = uri.authority().cloned().ok_or_else(|| BenchError::bad_endpoint(url, "no host"))?;
        let send = match (scheme.as_str(), security.tls_config()) {
            ("http", None) => h2_handshake(url, tcp(url, &authority, 80).await?, false).await?,
            ("https", Some(config)) => {
                let tls =
                    secure::handshake(config, url, &authority, tcp(url, &authority, 443).await?).await?;
                h2_handshake(url, tls, true).await?
            }
            ("http", Some(_)) => {
                return Err(BenchError::bad_endpoint(url, "--cacert is given: use https://"));
            }
            ("https", None) => {
                return Err(BenchError::bad_endpoint(url, "https:// needs --cacert (the members' CA)"));
            }
            _ => return Err(BenchError::bad_endpoint(url, "not http:// or https://")),
        };
        let mut conn = GrpcConn { send, scheme, authority, timeout, session: None };
        if let Some(user) = security.user() {
            let token = conn.authenticate(user.request()).await;
            let session = token.and_then(|t| Session::new(user.clone(), &t));
            conn.session = Some(Arc::new(session.map_err(|e| BenchError::auth(url, user, &e))?));
        }
        Ok(conn)
    }

    /// Auth.Authenticate: a token for `req`'s user.
    async fn authenticate(&mut self, req: AuthenticateRequest) -> Result<String, Status> {
        let timeout = self.timeout;
        let call = self.call_inner::<_, AuthenticateResponse>("/etcdserverpb.Auth/Authenticate", &req, None);
        match tokio::time::timeout(timeout, call).await {
            Ok(r) => r.map(|r| r.token),
            Err(_) => Err(Status::deadline_exceeded("authentication timed out (--timeout)")),
        }
    }

    /// One unary call; errors come back as the gRPC status the server sent, or as
    /// Unavailable / Internal / DeadlineExceeded for transport and framing failures.
    async fn call<Req: Message, Resp: Message + Default>(
        &mut self,
        path: &str,
        req: &Req,
    ) -> Result<Resp, Status> {
        match tokio::time::timeout(self.timeout, self.call_authenticated(path, req)).await {
            Ok(r) => r,
            Err(_) => Err(Status::deadline_exceeded("request timed out (--timeout)")),
        }
    }

    /// With a session: the call with its token, and once more with a new token if the
    /// members no longer accept the old one.
    async fn call_authenticated<Req: Message, Resp: Message + Default>(
        &mut self,
        path: &str,
        req: &Req,
    ) -> Result<Resp, Status> {
        let Some(session) = self.session.clone() else {
            return self.call_inner(path, req, None).await;
        };
        let (generation, token) = session.current();
        match self.call_inner(path, req, Some(token)).await {
            Err(status) if secure::stale_token(&status) => {
                let mut conn = self.clone();
                let token =
                    session.renew(generation, |auth| async move { conn.authenticate(auth).await }).await?;
                self.call_inner(path, req, Some(token)).await
            }
            other => other,
        }
    }

    async fn call_inner<Req: Message, Resp: Message + Default>(
        &mut self,
        path: &str,
        req: &Req,
        token: Option<http::HeaderValue>,
    ) -> Result<Resp, Status> {
        let unavailable = |e: h2::Error| Status::unavailable(format!("connection: {e}"));
        let len = req.encoded_len();
        let mut body = BytesMut::with_capacity(5 + len);
        body.put_u8(0);
        body.put_u32(u32::try_from(len).map_err(|_| Status::invalid_argument("request too large"))?);
        req.encode(&mut body).map_err(|e| Status::internal(format!("encoding: {e}")))?;
        let uri = http::Uri::builder()
            .scheme(self.scheme.clone())
            .authority(self.authority.clone())
            .path_and_query(path)
            .build()
            .map_err(|e| Status::internal(format!("request URI: {e}")))?;
        let mut request = http::Request::builder()
            .method(http::Method::POST)
            .uri(uri)
            .header(http::header::CONTENT_TYPE, "application/grpc")
            .header(http::header::TE, "trailers");
        if let Some(token) = token {
            request = request.header("token", token);
        }
        let request = request.body(()).map_err(|e| Status::internal(format!("request: {e}")))?;
        std::future::poll_fn(|cx| self.send.poll_ready(cx)).await.map_err(unavailable)?;
        let (response, mut stream) = self.send.send_request(request, false).map_err(unavailable)?;
        stream.send_data(body.freeze(), true).map_err(unavailable)?;
        let (parts, mut body) = response.await.map_err(unavailable)?.into_parts();
        if parts.status != http::StatusCode::OK {
            return Err(Status::unknown(format!("HTTP status {}", parts.status)));
        }
        // A trailers-only response carries the status in its headers.
        if let Some(status) = grpc_status(&parts.headers) {
            return Err(status.unwrap_or_else(|| Status::internal("trailers-only response with status 0")));
        }
        let mut buf = BytesMut::new();
        while let Some(chunk) = body.data().await {
            let chunk = chunk.map_err(unavailable)?;
            let _ = body.flow_control().release_capacity(chunk.len());
            if buf.len() + chunk.len() > MAX_RESPONSE_BYTES + 5 {
                return Err(Status::resource_exhausted("response larger than 64 MiB"));
            }
            buf.extend_from_slice(&chunk);
        }
        let trailers = body.trailers().await.map_err(unavailable)?.unwrap_or_default();
        match grpc_status(&trailers) {
            Some(Some(status)) => return Err(status),
            Some(None) => {}
            None => return Err(Status::internal("response without grpc-status")),
        }
        if buf.len() < 5 || buf[0] != 0 {
            return Err(Status::internal("malformed or compressed response message"));
        }
        let n = u32::from_be_bytes([buf[1], buf[2], buf[3], buf[4]]) as usize;
        if buf.len() != 5 + n {
            return Err(Status::internal("response message length does not match its frame"));
        }
        Resp::decode(&buf[5..]).map_err(|e| Status::internal(format!("decoding the response: {e}")))
    }
}

/// `None` without a grpc-status header; `Some(None)` for OK; `Some(Some(status))` otherwise.
fn grpc_status(headers: &http::HeaderMap) -> Option<Option<Status>> {
    let code = headers.get("grpc-status")?;
    let code = code.to_str().ok().and_then(|c| c.parse::<i32>().ok()).unwrap_or(Code::Unknown as i32);
    if code == 0 {
        return Some(None);
    }
    let message = headers.get("grpc-message").map(|m| percent_decode(m.as_bytes())).unwrap_or_default();
    Some(Some(Status::new(Code::from(code), message)))
}

/// grpc-message is percent-encoded (gRPC over HTTP/2, "Responses").
fn percent_decode(s: &[u8]) -> String {
    let mut out = Vec::with_capacity(s.len());
    let mut i = 0;
    while i < s.len() {
        let hex = |b: u8| (b as char).to_digit(16);
        match (s[i], s.get(i + 1).copied().and_then(hex), s.get(i + 2).copied().and_then(hex)) {
            (b'%', Some(h), Some(l)) => {
                out.push((h * 16 + l) as u8);
                i += 3;
            }
            (b, _, _) => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

async fn worker(id: usize, mut kv: GrpcConn, plan: Arc<Plan>, shared: Arc<Shared>) -> WorkerResult {
    let mut rng = Rng::new(plan.seed ^ (id as u64).wrapping_mul(0xA24B_AED4_963E_E407));
    let mut res = WorkerResult {
        hist: new_histogram(),
        ops: 0,
        reads: 0,
        writes: 0,
        errors: HashMap::new(),
        last_done: None,
    };
    let measure_start = plan.measure_start();
    loop {
        let start = Instant::now();
        let in_window = start >= measure_start;
        match plan.stop {
            Stop::At { end, .. } if start >= end => break,
            // Claims a ticket for every measured operation.
            Stop::Count { total, .. }
                if in_window && shared.tickets.fetch_add(1, Ordering::Relaxed) >= total =>
            {
                break;
            }
            _ => {}
        }
        let n = match plan.key_order {
            KeyOrder::Random => rng.scaled(plan.key_space),
            KeyOrder::Sequential => shared.next_key.fetch_add(1, Ordering::Relaxed) % plan.key_space,
        };
        let key = plan.keys.get(n);
        let (kind, outcome) = match plan.op {
            Op::Put => (Kind::Write, put(&mut kv, key, plan.value.clone()).await),
            Op::Range => (Kind::Read, range(&mut kv, key, false).await),
            Op::RangeSerializable => (Kind::Read, range(&mut kv, key, true).await),
            Op::Txn => (Kind::Write, txn(&mut kv, key, plan.value.clone()).await),
            Op::Mixed => {
                if rng.unit() < plan.read_ratio {
                    (Kind::Read, range(&mut kv, key, false).await)
                } else {
                    (Kind::Write, put(&mut kv, key, plan.value.clone()).await)
                }
            }
        };
        let done = Instant::now();
        let counted = match plan.stop {
            Stop::At { start: s, end } => done >= s && done <= end,
            Stop::Count { .. } => in_window,
        };
        match outcome {
            Ok(()) => {
                shared.ok.fetch_add(1, Ordering::Relaxed);
                if counted {
                    let micros = done.duration_since(start).as_micros().max(1) as u64;
                    res.hist.saturating_record(micros);
                    res.ops += 1;
                    match kind {
                        Kind::Read => res.reads += 1,
                        Kind::Write => res.writes += 1,
                    }
                    res.last_done = Some(done);
                }
            }
            Err(status) => {
                shared.errors.fetch_add(1, Ordering::Relaxed);
                if counted {
                    let what = format!("{:?}: {}", status.code(), status.message());
                    *res.errors.entry(what).or_insert(0) += 1;
                    res.last_done = Some(done);
                }
                // Do not spin on a member that fails fast (down, no leader, overloaded).
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
        }
    }
    res
}

async fn put(kv: &mut GrpcConn, key: Bytes, value: Bytes) -> Result<(), Status> {
    let req = PutRequest { key, value, ..Default::default() };
    kv.call::<_, PutResponse>("/etcdserverpb.KV/Put", &req).await.map(drop)
}

async fn range(kv: &mut GrpcConn, key: Bytes, serializable: bool) -> Result<(), Status> {
    let req = RangeRequest { key, serializable, ..Default::default() };
    kv.call::<_, RangeResponse>("/etcdserverpb.KV/Range", &req).await.map(drop)
}

async fn txn(kv: &mut GrpcConn, key: Bytes, value: Bytes) -> Result<(), Status> {
    let req = TxnRequest {
        compare: vec![Compare {
            result: compare::CompareResult::Greater as i32,
            target: compare::CompareTarget::Version as i32,
            key: key.clone(),
            range_end: Bytes::new(),
            target_union: Some(compare::TargetUnion::Version(-1)),
        }],
        success: vec![RequestOp {
            request: Some(request_op::Request::RequestPut(PutRequest {
                key: key.clone(),
                value,
                ..Default::default()
            })),
        }],
        failure: vec![RequestOp {
            request: Some(request_op::Request::RequestRange(RangeRequest { key, ..Default::default() })),
        }],
    };
    kv.call::<_, TxnResponse>("/etcdserverpb.KV/Txn", &req).await.map(drop)
}

fn endpoint_url(ep: &str, tls: bool) -> String {
    match (ep.contains("://"), tls) {
        (true, _) => ep.to_string(),
        (false, false) => format!("http://{ep}"),
        (false, true) => format!("https://{ep}"),
    }
}

/// The endpoint of the current leader, according to the first member that knows one
/// (Maintenance.Status, on tonic's client).
async fn find_leader(urls: &[String], timeout: Duration, security: &Security) -> Result<String, BenchError> {
    let mut ids = Vec::new();
    let mut leader = 0;
    let mut first_error = None;
    for url in urls {
        let status = match secure::channel(security, url, timeout).await {
            Ok(channel) => secure::status(channel, url, security.user()).await,
            Err(e) => Err(e),
        };
        let status = match status {
            Ok(status) => status,
            Err(e) => {
                first_error.get_or_insert(e);
                continue;
            }
        };
        ids.push((status.header.map_or(0, |h| h.member_id), url.clone()));
        if leader == 0 {
            leader = status.leader;
        }
    }
    if leader == 0 {
        // No member answered: why the first one did not.
        return Err(match (ids.is_empty(), first_error) {
            (true, Some(e)) => e,
            _ => BenchError::NoLeader,
        });
    }
    ids.into_iter()
        .find(|(id, _)| *id == leader)
        .map(|(_, url)| url)
        .ok_or(BenchError::LeaderNotListed(leader))
}

/// This process's CPU time (user + system) in seconds, from /proc/self/stat.
pub fn process_cpu_seconds() -> Option<f64> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    // Fields after the parenthesised command name; utime and stime are fields 14 and 15.
    let rest = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let utime: f64 = fields.get(11)?.parse().ok()?;
    let stime: f64 = fields.get(12)?.parse().ok()?;
    Some((utime + stime) / 100.0)
}

fn ms(micros: u64) -> f64 {
    micros as f64 / 1000.0
}

pub async fn run(args: BenchArgs) -> Result<(), BenchError> {
    if args.clients == 0 || args.conns == 0 {
        return Err(BenchError::Usage("--clients and --conns must be at least 1"));
    }
    if args.key_space == 0 {
        return Err(BenchError::Usage("--key-space must be at least 1"));
    }
    if !(0.0..=1.0).contains(&args.read_ratio) {
        return Err(BenchError::Usage("--read-ratio must be within 0..1"));
    }
    if args.endpoints.is_empty() {
        return Err(BenchError::Usage("no --endpoints"));
    }
    let security = Security::new(
        args.cacert.as_deref(),
        args.cert.as_deref(),
        args.key.as_deref(),
        args.user.as_deref(),
    )?;
    let timeout = Duration::from_secs_f64(args.timeout);
    let urls: Vec<String> = args.endpoints.iter().map(|e| endpoint_url(e.trim(), security.tls())).collect();
    let targets = match args.target {
        Target::All => urls.clone(),
        Target::Leader => vec![find_leader(&urls, timeout, &security).await?],
    };
    let mut channels = Vec::with_capacity(args.conns);
    for i in 0..args.conns {
        channels.push(GrpcConn::connect(&targets[i % targets.len()], timeout, &security).await?);
    }
    let sessions: Vec<Arc<Session>> = channels.iter().filter_map(|c| c.session.clone()).collect();

    let mut value = vec![0u8; args.value_size];
    let mut rng = Rng::new(args.seed);
    for b in value.iter_mut() {
        *b = b'a' + rng.scaled(26) as u8;
    }
    let now = Instant::now();
    let now_unix =
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0.0, |d| d.as_secs_f64());
    let start = now + Duration::from_secs_f64(args.warmup);
    let stop = match (args.total, args.duration) {
        (Some(total), _) => Stop::Count { start, total },
        (None, d) => Stop::At { start, end: start + Duration::from_secs_f64(d.unwrap_or(10.0)) },
    };
    let plan = Arc::new(Plan {
        op: args.op,
        read_ratio: args.read_ratio,
        keys: Keys::new(args.key_space),
        key_space: args.key_space,
        key_order: args.keys,
        value: Bytes::from(value),
        stop,
        seed: args.seed,
    });
    let shared = Arc::new(Shared::default());
    let cpu_before = process_cpu_seconds();

    let progress = (!args.quiet).then(|| tokio::spawn(progress(plan.clone(), shared.clone(), now)));
    let mut handles = Vec::with_capacity(args.clients);
    for id in 0..args.clients {
        let kv = channels[id % channels.len()].clone();
        handles.push(tokio::spawn(worker(id, kv, plan.clone(), shared.clone())));
    }
    let mut hist = new_histogram();
    let (mut ops, mut reads, mut writes) = (0u64, 0u64, 0u64);
    let mut errors: BTreeMap<String, u64> = BTreeMap::new();
    let mut last_done: Option<Instant> = None;
    for h in handles {
        let r = h.await.map_err(BenchError::Worker)?;
        hist.add(&r.hist).map_err(|e| BenchError::Histogram(e.to_string()))?;
        ops += r.ops;
        reads += r.reads;
        writes += r.writes;
        for (k, v) in r.errors {
            *errors.entry(k).or_insert(0) += v;
        }
        last_done = last_done.max(r.last_done);
    }
    let finished = Instant::now();
    shared.finished.store(true, Ordering::Relaxed);
    if let Some(p) = progress {
        let _ = p.await;
    }
    let cpu = match (cpu_before, process_cpu_seconds()) {
        (Some(a), Some(b)) => b - a,
        _ => 0.0,
    };
    let window = match plan.stop {
        Stop::At { start, end } => end.duration_since(start),
        Stop::Count { start, .. } => last_done.unwrap_or(finished).saturating_duration_since(start),
    }
    .as_secs_f64();
    let ops_per_sec = if window > 0.0 { ops as f64 / window } else { 0.0 };
    let error_count: u64 = errors.values().sum();
    let client_cpu_pct = 100.0 * cpu / finished.duration_since(now).as_secs_f64().max(1e-9);

    let q = |p: f64| if ops == 0 { 0.0 } else { ms(hist.value_at_quantile(p)) };
    let mut json = serde_json::json!({
        "op": args.op.name(),
        "clients": args.clients,
        "conns": args.conns,
        "target": match args.target { Target::All => "all", Target::Leader => "leader" },
        "endpoints": targets.join(","),
        "value_size": args.value_size,
        "key_space": args.key_space,
        "read_ratio": if args.op == Op::Mixed { Some(args.read_ratio) } else { None },
        "seconds": window,
        "ops": ops,
        "reads": reads,
        "writes": writes,
        "ops_per_sec": ops_per_sec,
        "p50_ms": q(0.50),
        "p90_ms": q(0.90),
        "p99_ms": q(0.99),
        "p999_ms": q(0.999),
        "max_ms": if ops == 0 { 0.0 } else { ms(hist.max()) },
        "mean_ms": if ops == 0 { 0.0 } else { hist.mean() / 1000.0 },
        "error_count": error_count,
        "errors": errors,
        "client_cpu_pct": client_cpu_pct,
        // The measured window on the wall clock (Unix seconds), to match with samples of
        // the members' CPU time taken outside the generator.
        "window_start_unix": now_unix + args.warmup,
        "window_end_unix": now_unix + args.warmup + window,
    });
    // With --user: how often a connection had to authenticate again (token voided or
    // expired), counted from the start, warmup included.
    let reauthentications: Option<u64> = security.user().map(|_| sessions.iter().map(|s| s.renewals()).sum());
    if let (Some(n), Some(fields)) = (reauthentications, json.as_object_mut()) {
        fields.insert("reauthentications".into(), n.into());
    }
    let mut out = std::io::stdout().lock();
    if !args.json {
        let _ = writeln!(
            out,
            "op {} | clients {} over {} conns | target {} ({})",
            args.op.name(),
            args.clients,
            args.conns,
            match args.target {
                Target::All => "all",
                Target::Leader => "leader",
            },
            targets.join(",")
        );
        let _ = writeln!(
            out,
            "ops {ops} in {window:.2} s = {ops_per_sec:.0} ops/s (reads {reads}, writes {writes})"
        );
        let _ = writeln!(
            out,
            "latency ms: p50 {:.3}  p90 {:.3}  p99 {:.3}  p99.9 {:.3}  max {:.3}  mean {:.3}",
            q(0.50),
            q(0.90),
            q(0.99),
            q(0.999),
            if ops == 0 { 0.0 } else { ms(hist.max()) },
            if ops == 0 { 0.0 } else { hist.mean() / 1000.0 },
        );
        if errors.is_empty() {
            let _ = writeln!(out, "errors: none");
        } else {
            let _ = writeln!(out, "errors: {error_count}");
            for (what, n) in &errors {
                let _ = writeln!(out, "  {n:>8}  {what}");
            }
        }
        if let (Some(user), Some(n)) = (security.user(), reauthentications) {
            let _ = writeln!(out, "authenticated as {} (re-authentications: {n})", user.name);
        }
        let _ = writeln!(out, "generator CPU: {client_cpu_pct:.0}% of one core");
    }
    let _ = writeln!(out, "{json}");
    Ok(())
}

async fn progress(plan: Arc<Plan>, shared: Arc<Shared>, began: Instant) {
    let tty = std::io::stderr().is_terminal();
    let mut tick = tokio::time::interval_at(
        tokio::time::Instant::now() + Duration::from_secs(1),
        Duration::from_secs(1),
    );
    let (mut last_ok, mut last_err) = (0, 0);
    let mut printed = false;
    while !shared.finished.load(Ordering::Relaxed) {
        tokio::select! {
            _ = tick.tick() => {}
            _ = tokio::time::sleep(Duration::from_millis(50)) => continue,
        }
        let ok = shared.ok.load(Ordering::Relaxed);
        let err = shared.errors.load(Ordering::Relaxed);
        let phase = if Instant::now() < plan.measure_start() { " (warmup)" } else { "" };
        let line = format!(
            "[{:>4.0}s] {:>8} ops/s  {:>6} errors/s  total {} ok, {} errors{phase}",
            began.elapsed().as_secs_f64(),
            ok - last_ok,
            err - last_err,
            ok,
            err
        );
        if tty {
            eprint!("\r{line}\x1b[K");
        } else {
            eprintln!("{line}");
        }
        printed = true;
        (last_ok, last_err) = (ok, err);
    }
    if tty && printed {
        eprintln!();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grpc_status_from_headers() {
        let mut h = http::HeaderMap::new();
        assert!(grpc_status(&h).is_none(), "no status yet");
        h.insert("grpc-status", http::HeaderValue::from_static("0"));
        assert!(matches!(grpc_status(&h), Some(None)));
        h.insert("grpc-status", http::HeaderValue::from_static("14"));
        h.insert("grpc-message", http::HeaderValue::from_static("etcdserver%3A no leader%"));
        let s = grpc_status(&h).flatten().expect("an error status");
        assert_eq!((s.code(), s.message()), (Code::Unavailable, "etcdserver: no leader%"));
        h.insert("grpc-status", http::HeaderValue::from_static("x"));
        assert_eq!(grpc_status(&h).flatten().map(|s| s.code()), Some(Code::Unknown));
    }
}
