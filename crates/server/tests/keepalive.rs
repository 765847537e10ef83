//! Acceptance: the client port's HTTP/2 keepalive (`--grpc-keepalive-min-time`,
//! `--grpc-keepalive-interval`, `--grpc-keepalive-timeout`) against a real etcd 3.4 with the
//! same flags, through a raw HTTP/2 client that sends exactly the frames it is told to:
//!
//! * pings closer than min-time while a stream is open: GOAWAY(ENHANCE_YOUR_CALM,
//!   `too_many_pings`) after the fourth ping's ACK, then the connection closes;
//! * pings min-time apart with a stream open: never refused; any two pings within 2 hours
//!   without a stream: refused as above (etcd's `PermitWithoutStream: false`);
//! * pings each following a call's response (as grpc-go's BDP pings follow data): never
//!   refused, however fast;
//! * a client silent for the interval is pinged; one that stays silent for the timeout after
//!   that ping is disconnected; one that answers stays connected.
//!
//! Without `etcd` on PATH the comparison says so loudly and only raftkv's answers are checked,
//! unless RAFTKV_REQUIRE_ETCD=1 is set.

mod common;

use std::time::{Duration, Instant};

use common::{Cluster, Opts, start_etcd_elected_with};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
const DATA: u8 = 0x0;
const HEADERS: u8 = 0x1;
const SETTINGS: u8 = 0x4;
const PING: u8 = 0x6;
const GOAWAY: u8 = 0x7;
const ACK: u8 = 0x1;
const END_STREAM: u8 = 0x1;
const END_HEADERS: u8 = 0x4;

const FLAGS: [&str; 6] = [
    "--grpc-keepalive-min-time",
    "200ms",
    "--grpc-keepalive-interval",
    "1s",
    "--grpc-keepalive-timeout",
    "500ms",
];

struct Frame {
    kind: u8,
    flags: u8,
    stream: u32,
    payload: Vec<u8>,
}

/// What a connection saw.
#[derive(Debug, Default, PartialEq)]
struct Seen {
    /// PING ACKs received (for the client's pings).
    acks: usize,
    /// A GOAWAY's (last stream id, error code, debug data).
    goaway: Option<(u32, u32, String)>,
    /// The connection ended (EOF or reset).
    closed: bool,
}

/// A raw HTTP/2 client connection.
struct Client {
    tcp: TcpStream,
    /// Answer the server's PINGs.
    answer_pings: bool,
    /// Server PINGs seen.
    server_pings: usize,
    seen: Seen,
}

fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let mut f = (payload.len() as u32).to_be_bytes()[1..].to_vec();
    f.extend_from_slice(&[kind, flags]);
    f.extend_from_slice(&stream.to_be_bytes());
    f.extend_from_slice(payload);
    f
}

/// A gRPC request's header block: literal fields without indexing (RFC 7541 §6.2.2).
fn grpc_headers(path: &str) -> Vec<u8> {
    let mut block = Vec::new();
    for (name, value) in [
        (":method", "POST"),
        (":scheme", "http"),
        (":path", path),
        (":authority", "127.0.0.1"),
        ("content-type", "application/grpc"),
        ("te", "trailers"),
    ] {
        block.push(0);
        block.push(name.len() as u8);
        block.extend_from_slice(name.as_bytes());
        block.push(value.len() as u8);
        block.extend_from_slice(value.as_bytes());
    }
    block
}

impl Client {
    async fn connect(port: u16) -> Client {
        let tcp = TcpStream::connect(("127.0.0.1", port)).await.expect("connect");
        tcp.set_nodelay(true).expect("nodelay");
        let mut c = Client { tcp, answer_pings: true, server_pings: 0, seen: Seen::default() };
        let mut hello = PREFACE.to_vec();
        hello.extend(frame(SETTINGS, 0, 0, &[]));
        c.send(&hello).await;
        // The server's SETTINGS, acknowledged.
        c.until(Duration::from_secs(5), |f| f.kind == SETTINGS && f.flags & ACK == 0).await;
        c
    }

    async fn send(&mut self, bytes: &[u8]) {
        // A closed connection shows in what is read next.
        let _ = self.tcp.write_all(bytes).await;
    }

    async fn read_frame(&mut self, within: Duration) -> Option<Frame> {
        let read = async {
            let mut head = [0u8; 9];
            self.tcp.read_exact(&mut head).await.ok()?;
            let len = usize::from(head[0]) << 16 | usize::from(head[1]) << 8 | usize::from(head[2]);
            let mut payload = vec![0u8; len];
            self.tcp.read_exact(&mut payload).await.ok()?;
            let stream = u32::from_be_bytes([head[5], head[6], head[7], head[8]]) & 0x7fff_ffff;
            Some(Frame { kind: head[3], flags: head[4], stream, payload })
        };
        match tokio::time::timeout(within, read).await {
            Ok(Some(f)) => Some(f),
            Ok(None) => {
                self.seen.closed = true;
                None
            }
            Err(_) => None,
        }
    }

    /// Reads frames (answering as a client does) until one matches `want`, the connection
    /// ends, or `within` passes; whether one matched.
    async fn until(&mut self, within: Duration, mut want: impl FnMut(&Frame) -> bool) -> bool {
        let deadline = Instant::now() + within;
        while !self.seen.closed {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break;
            }
            let Some(f) = self.read_frame(left).await else { continue };
            match (f.kind, f.flags & ACK != 0) {
                (SETTINGS, false) => self.send(&frame(SETTINGS, ACK, 0, &[])).await,
                (PING, false) => {
                    self.server_pings += 1;
                    if self.answer_pings {
                        self.send(&frame(PING, ACK, 0, &f.payload)).await;
                    }
                }
                (PING, true) => self.seen.acks += 1,
                (GOAWAY, _) if f.payload.len() >= 8 => {
                    let last = u32::from_be_bytes([f.payload[0], f.payload[1], f.payload[2], f.payload[3]]);
                    let code = u32::from_be_bytes([f.payload[4], f.payload[5], f.payload[6], f.payload[7]]);
                    let debug = String::from_utf8_lossy(&f.payload[8..]).into_owned();
                    self.seen.goaway = Some((last & 0x7fff_ffff, code, debug));
                }
                _ => {}
            }
            if want(&f) {
                return true;
            }
        }
        false
    }

    /// Sends a PING and waits for its ACK (or the connection's end).
    async fn ping(&mut self, n: u8) {
        self.send(&frame(PING, 0, 0, &[n; 8])).await;
        self.until(Duration::from_secs(5), |f| f.kind == PING && f.flags & ACK != 0).await;
    }

    /// Opens a Watch stream (no request sent on it: it stays open).
    async fn open_watch(&mut self, stream: u32) {
        self.send(&frame(HEADERS, END_HEADERS, stream, &grpc_headers("/etcdserverpb.Watch/Watch"))).await;
    }

    /// A unary Range call, waiting for its trailers.
    async fn range(&mut self, stream: u32) -> bool {
        let mut bytes = frame(HEADERS, END_HEADERS, stream, &grpc_headers("/etcdserverpb.KV/Range"));
        // RangeRequest { key: "a" }, gRPC-framed.
        bytes.extend(frame(DATA, END_STREAM, stream, &[0, 0, 0, 0, 3, 0x0a, 1, b'a']));
        self.send(&bytes).await;
        self.until(Duration::from_secs(5), |f| {
            f.stream == stream && f.kind == HEADERS && f.flags & END_STREAM != 0
        })
        .await
    }

    /// Reads on for `within`, to see a GOAWAY or the end that would follow.
    async fn settle(&mut self, within: Duration) {
        self.until(within, |_| false).await;
    }
}

/// Every scenario against the member or etcd at `port`: one line per scenario.
async fn scenarios(port: u16) -> Vec<String> {
    let mut out = Vec::new();
    let too_many_pings = |last: u32| Some((last, 0xb, "too_many_pings".to_string()));

    // Pings 1 ms apart while a stream is open.
    let mut c = Client::connect(port).await;
    c.open_watch(1).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    for n in 0..6 {
        c.ping(n).await;
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    c.settle(Duration::from_millis(500)).await;
    out.push(format!("fast pings, stream open: {:?}", c.seen));
    assert_eq!(c.seen, Seen { acks: 4, goaway: too_many_pings(1), closed: true }, "port {port}");

    // Pings 300 ms apart (min-time 200 ms) while a stream is open.
    let mut c = Client::connect(port).await;
    c.open_watch(1).await;
    for n in 0..6 {
        tokio::time::sleep(Duration::from_millis(300)).await;
        c.ping(n).await;
    }
    c.settle(Duration::from_millis(300)).await;
    out.push(format!("pings min-time apart, stream open: {:?}", c.seen));
    assert_eq!(c.seen, Seen { acks: 6, goaway: None, closed: false }, "port {port}");

    // The same pings without a stream.
    let mut c = Client::connect(port).await;
    for n in 0..6 {
        tokio::time::sleep(Duration::from_millis(300)).await;
        c.ping(n).await;
    }
    c.settle(Duration::from_millis(300)).await;
    out.push(format!("pings min-time apart, no stream: {:?}", c.seen));
    assert_eq!(c.seen, Seen { acks: 4, goaway: too_many_pings(0), closed: true }, "port {port}");

    // Fast pings, each after a call's response (the member sent HEADERS and DATA).
    let mut c = Client::connect(port).await;
    for n in 0..6u8 {
        assert!(c.range(1 + 2 * u32::from(n)).await, "range {n} on port {port}");
        c.ping(n).await;
    }
    c.settle(Duration::from_millis(300)).await;
    out.push(format!("fast pings after responses: {:?}", c.seen));
    assert_eq!(c.seen, Seen { acks: 6, goaway: None, closed: false }, "port {port}");

    // Silent, not answering the server's ping: pinged after the interval (1 s), closed
    // the timeout (500 ms) after that.
    let mut c = Client::connect(port).await;
    c.answer_pings = false;
    let start = Instant::now();
    c.until(Duration::from_secs(10), |_| false).await;
    let took = start.elapsed();
    out.push(format!(
        "silent client: pinged {} time(s), closed: {}, no goaway: {}",
        c.server_pings,
        c.seen.closed,
        c.seen.goaway.is_none()
    ));
    assert!(c.seen.closed && c.server_pings == 1, "port {port}: {:?} after {took:?}", c.seen);
    assert!(took >= Duration::from_millis(1400) && took < Duration::from_secs(8), "closed after {took:?}");

    // Silent but answering: stays connected.
    let mut c = Client::connect(port).await;
    c.settle(Duration::from_millis(3500)).await;
    let alive = c.range(1).await;
    out.push(format!("answering client: pinged: {}, still served: {alive}", c.server_pings > 0));
    assert!(alive && c.server_pings > 0 && !c.seen.closed, "port {port}: {:?}", c.seen);
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keepalive_flags_work_as_etcds() {
    let opts = Opts { extra: FLAGS.iter().map(|s| s.to_string()).collect(), ..Opts::default() };
    let mut c = Cluster::start(1, opts);
    c.wait_leader(Duration::from_secs(20)).await;
    let ours = scenarios(c.port(0)).await;
    c.assert_running();
    let dir = tempfile::tempdir().expect("temp dir");
    let extra: Vec<String> = FLAGS.iter().map(|s| s.to_string()).collect();
    if let Some((_etcd, port, _)) = start_etcd_elected_with(dir.path(), &extra).await {
        let theirs = scenarios(port).await;
        assert_eq!(ours, theirs, "raftkv and etcd 3.4 differ");
    }
}
