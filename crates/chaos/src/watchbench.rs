//! `raftkv-chaos bench-watch`: watch and lease figures for raftkv and etcd in the same run.
//!
//! Each system runs as one member on 127.0.0.1 (free ports, fsync on, a fresh data dir),
//! one after the other, driven by the same client code over the etcd v3 gRPC API:
//! * **watch events**: writers put 256-byte values at full speed (64 concurrent puts over 8
//!   connections) to keys under `wb/` while 1, then 1,000 watchers (over up to 10 streams)
//!   watch the prefix; events delivered per second, and the latency from a put's
//!   acknowledgement to each delivery of its event (p50/p99; an event that arrives before the
//!   acknowledgement counts as 0), and from the put's request to each delivery; with
//!   `--put-rate` the writers keep to that many puts per second in all instead, so that both
//!   systems' latencies can be compared at the same write rate;
//! * **idle watchers**: the member's RSS before and after opening 100,000 watchers (on
//!   distinct keys, 1,000 per stream, 100 streams over 10 connections);
//! * **lease keep-alives**: 10,000 leases granted, then keep-alives as fast as 16 streams take
//!   them, cycling over the leases.
//!
//! Each figure comes with the member's CPU time (user + system, from /proc) per operation;
//! the watch events also with the load generator's (this process: writers and watchers).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use raftkv_api::etcdserverpb::kv_client::KvClient;
use raftkv_api::etcdserverpb::lease_client::LeaseClient;
use raftkv_api::etcdserverpb::watch_request::RequestUnion;
use raftkv_api::etcdserverpb::{
    LeaseGrantRequest, LeaseKeepAliveRequest, PutRequest, WatchCreateRequest, WatchRequest,
};
use tonic::transport::{Channel, Endpoint};

#[derive(Clone, Debug)]
pub struct BenchConfig {
    pub raftkv: PathBuf,
    /// etcd's binary (skipped when None).
    pub etcd: Option<PathBuf>,
    pub duration: Duration,
    pub out: PathBuf,
    pub idle_watchers: usize,
    /// Leases for the keep-alive point (0: no keep-alive point).
    pub leases: usize,
    /// Watchers in each watch point.
    pub watchers: Vec<usize>,
    /// Puts per second in all in the watch points (None: as fast as they are answered).
    pub put_rate: Option<u32>,
    /// raftkv's `--worker-threads` (None: its default, one per CPU).
    pub worker_threads: Option<usize>,
    /// etcd's `GOMAXPROCS` (None: its default, one per CPU).
    pub gomaxprocs: Option<usize>,
    /// Watchers on distinct prefixes that no write touches, held open through the watch
    /// points (1,000 per stream): what each event costs a member that holds many ranges.
    pub held_ranges: usize,
}

/// One single-member server under measurement.
struct Server {
    child: Child,
    url: String,
}

/// User + system CPU time of process `pid` (or of this one: `self`) so far, in seconds.
fn process_cpu(pid: &str) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command name (which is in parentheses): utime is the 14th field.
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks: u64 = [11, 12].iter().filter_map(|&i| f.get(i).and_then(|v| v.parse::<u64>().ok())).sum();
    ticks as f64 / clock_ticks()
}

impl Server {
    fn start(name: &'static str, binary: &Path, dir: &Path, cfg: &BenchConfig) -> Result<Server, String> {
        let _ = std::fs::remove_dir_all(dir);
        std::fs::create_dir_all(dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
        let client = free_port()?;
        let peer = free_port()?;
        let url = format!("http://127.0.0.1:{client}");
        let peer_url = format!("http://127.0.0.1:{peer}");
        let log = std::fs::File::create(dir.join("member.log")).map_err(|e| e.to_string())?;
        let log2 = log.try_clone().map_err(|e| e.to_string())?;
        let mut cmd = Command::new(binary);
        if name == "raftkv" {
            cmd.arg("server");
            if let Some(n) = cfg.worker_threads {
                cmd.arg("--worker-threads").arg(n.to_string());
            }
        } else {
            match cfg.gomaxprocs {
                Some(n) => cmd.env("GOMAXPROCS", n.to_string()),
                None => cmd.env_remove("GOMAXPROCS"),
            };
        }
        cmd.args(["--name", "b", "--data-dir"])
            .arg(dir.join("data"))
            .args(["--listen-client-urls", &url, "--advertise-client-urls", &url])
            .args(["--listen-peer-urls", &peer_url, "--initial-advertise-peer-urls", &peer_url])
            .args(["--initial-cluster", &format!("b={peer_url}")])
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log2);
        let child = cmd.spawn().map_err(|e| format!("cannot start {}: {e}", binary.display()))?;
        Ok(Server { child, url })
    }

    /// User + system CPU time so far, in seconds.
    fn cpu(&self) -> f64 {
        process_cpu(&self.child.id().to_string())
    }

    /// Resident set size, in bytes.
    fn rss(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id())).unwrap_or_default();
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
            .map_or(0, |kib| kib * 1024)
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Clock ticks per second (`getconf CLK_TCK`; 100 on Linux).
fn clock_ticks() -> f64 {
    Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8_lossy(&o.stdout).trim().parse::<f64>().ok())
        .filter(|t| *t > 0.0)
        .unwrap_or(100.0)
}

fn free_port() -> Result<u16, String> {
    let l = std::net::TcpListener::bind("127.0.0.1:0").map_err(|e| format!("no free port: {e}"))?;
    l.local_addr().map(|a| a.port()).map_err(|e| e.to_string())
}

fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

/// The figures of one system.
#[derive(Debug, Default, Clone)]
pub struct Figures {
    pub name: String,
    pub watch: Vec<WatchPoint>,
    /// (watchers opened, RSS before, RSS after) in bytes
    pub idle: (usize, u64, u64),
    /// (leases, keep-alives/s, CPU µs per keep-alive)
    pub keepalive: (usize, f64, f64),
    pub load: Vec<String>,
}

/// Plain connections (no HTTP/2 keep-alive pings: etcd answers pings more often than every
/// 5 s with GOAWAY).
fn channels(url: &str, n: usize) -> Result<Vec<Channel>, String> {
    (0..n)
        .map(|_| {
            Ok(Endpoint::from_shared(url.to_string())
                .map_err(|e| format!("bad endpoint {url}: {e}"))?
                .connect_timeout(Duration::from_secs(2))
                .connect_lazy())
        })
        .collect()
}

fn create(key: &str, range_end: &str) -> WatchRequest {
    WatchRequest {
        request_union: Some(RequestUnion::CreateRequest(WatchCreateRequest {
            key: key.to_string().into(),
            range_end: range_end.to_string().into(),
            ..Default::default()
        })),
    }
}

/// What the watchers read of a `WatchResponse`: prost skips the other fields, so the keys and
/// values of the events are never copied (the same for both systems).
#[derive(Clone, PartialEq, prost::Message)]
struct WatchResponseLite {
    #[prost(int64, tag = "2")]
    watch_id: i64,
    #[prost(bool, tag = "3")]
    created: bool,
    #[prost(bool, tag = "4")]
    canceled: bool,
    #[prost(int64, tag = "5")]
    compact_revision: i64,
    #[prost(string, tag = "6")]
    cancel_reason: String,
    #[prost(message, repeated, tag = "11")]
    events: Vec<EventLite>,
}

/// `mvccpb.Event`: only its `kv`.
#[derive(Clone, Copy, PartialEq, prost::Message)]
struct EventLite {
    #[prost(message, optional, tag = "2")]
    kv: Option<KeyValueLite>,
}

/// `mvccpb.KeyValue`: only its `mod_revision`.
#[derive(Clone, Copy, PartialEq, prost::Message)]
struct KeyValueLite {
    #[prost(int64, tag = "3")]
    mod_revision: i64,
}

type WatchStream = tonic::Streaming<WatchResponseLite>;

/// Opens a stream with `reqs` create requests and waits for their `created` responses.
/// Returns the stream and its request sender (which must live as long as the stream).
async fn open_watchers(
    ch: Channel,
    reqs: Vec<WatchRequest>,
) -> Result<(WatchStream, tokio::sync::mpsc::Sender<WatchRequest>), String> {
    let n = reqs.len();
    let (tx, rx) = tokio::sync::mpsc::channel(64);
    // The requests go out before the response headers are awaited: etcd sends its headers
    // with the first response.
    let sender = tx.clone();
    tokio::spawn(async move {
        for r in reqs {
            if sender.send(r).await.is_err() {
                return;
            }
        }
    });
    // The generated client's call, with a codec that decodes the lighter response.
    let mut client = tonic::client::Grpc::new(ch).max_decoding_message_size(64 << 20);
    client.ready().await.map_err(|e| format!("watch: not ready: {e}"))?;
    let codec = tonic_prost::ProstCodec::<WatchRequest, WatchResponseLite>::default();
    let path = tonic::codegen::http::uri::PathAndQuery::from_static("/etcdserverpb.Watch/Watch");
    let resp = client
        .streaming(tonic::Request::new(tokio_stream::wrappers::ReceiverStream::new(rx)), path, codec)
        .await
        .map_err(|e| format!("watch: {e}"))?;
    let mut stream = resp.into_inner();
    let mut created = 0;
    while created < n {
        match tokio::time::timeout(Duration::from_secs(60), stream.message()).await {
            Ok(Ok(Some(r))) if r.created && !r.canceled => created += 1,
            Ok(Ok(Some(r))) if r.canceled => return Err(format!("watch refused: {}", r.cancel_reason)),
            Ok(Ok(Some(_))) => {}
            other => return Err(format!("watch stream ended while creating watchers: {other:?}")),
        }
    }
    Ok((stream, tx))
}

const SLOTS: usize = 1 << 22;

/// One watch throughput point.
#[derive(Debug, Clone, Default)]
pub struct WatchPoint {
    pub watchers: usize,
    pub puts_per_s: f64,
    pub events_per_s: f64,
    /// From the put's acknowledgement to the delivery (0 when the event came first), ms.
    pub ack_p50: f64,
    pub ack_p99: f64,
    /// From the put's request to the delivery, ms.
    pub send_p50: f64,
    pub send_p99: f64,
    pub cpu_us_per_event: f64,
    /// The load generator's (this process's: writers and watchers) CPU per event, µs.
    pub generator_cpu_us_per_event: f64,
    pub missing: u64,
    /// Events at or below the revision their watcher got before (out of order or repeated).
    pub disordered: u64,
}

/// Per revision - base_rev: when its put was sent and acknowledged (ns since the point's
/// start; 0 until the acknowledgement).
struct Times {
    sent: Vec<AtomicU64>,
    acked: Vec<AtomicU64>,
}

impl Times {
    fn new() -> Times {
        Times {
            sent: (0..SLOTS).map(|_| AtomicU64::new(0)).collect(),
            acked: (0..SLOTS).map(|_| AtomicU64::new(0)).collect(),
        }
    }

    /// (sent, acknowledged) of slot `i`, if it is acknowledged.
    fn get(&self, i: usize) -> Option<(u64, u64)> {
        let acked = self.acked.get(i)?.load(Ordering::Acquire);
        let sent = self.sent.get(i)?.load(Ordering::Relaxed);
        (acked != 0).then_some((sent, acked))
    }

    fn set(&self, i: usize, sent: u64, acked: u64) {
        if let (Some(s), Some(a)) = (self.sent.get(i), self.acked.get(i)) {
            s.store(sent, Ordering::Relaxed);
            a.store(acked, Ordering::Release);
        }
    }
}

/// What one watch stream's reader saw.
struct Seen {
    /// Latency from the acknowledgement and from the request, µs.
    from_ack: Histogram<u64>,
    from_send: Histogram<u64>,
    /// (slot, received) of events that came before their put's acknowledgement was known:
    /// measured at the end.
    early: Vec<(u32, u64)>,
    /// Events at or below their watcher's previous revision.
    disordered: u64,
}

impl Seen {
    fn new() -> Result<Seen, String> {
        Ok(Seen {
            from_ack: Histogram::new(3).map_err(|e| e.to_string())?,
            from_send: Histogram::new(3).map_err(|e| e.to_string())?,
            early: Vec::with_capacity(1 << 16),
            disordered: 0,
        })
    }

    fn record(&mut self, at: u64, (sent, acked): (u64, u64)) {
        let _ = self.from_ack.record(at.saturating_sub(acked) / 1000);
        let _ = self.from_send.record(at.saturating_sub(sent) / 1000);
    }
}

/// Reads one stream's events until `done`: O(1) and no allocation per event (but for the
/// rare early ones), the latencies recorded as they come.
async fn read_events(
    mut stream: WatchStream,
    mut done: tokio::sync::watch::Receiver<bool>,
    delivered: Arc<AtomicU64>,
    times: Arc<Times>,
    start: Instant,
    base_rev: i64,
) -> Result<Seen, String> {
    let mut seen = Seen::new()?;
    // The last revision each watcher got.
    let mut last: HashMap<i64, i64> = HashMap::new();
    loop {
        let m = tokio::select! {
            biased;
            m = stream.message() => m,
            _ = done.wait_for(|d| *d) => break,
        };
        let Ok(Some(r)) = m else { break };
        if r.events.is_empty() {
            continue;
        }
        let now = start.elapsed().as_nanos() as u64;
        let prev = last.entry(r.watch_id).or_insert(0);
        for e in &r.events {
            let rev = e.kv.map_or(0, |kv| kv.mod_revision);
            if rev <= *prev {
                seen.disordered += 1;
            }
            *prev = rev;
            let Ok(slot) = u32::try_from(rev - base_rev) else { continue };
            match times.get(slot as usize) {
                Some(t) => seen.record(now, t),
                None if (slot as usize) < SLOTS => seen.early.push((slot, now)),
                None => {}
            }
        }
        delivered.fetch_add(r.events.len() as u64, Ordering::Relaxed);
    }
    Ok(seen)
}

/// Writers at full speed with `watchers` watchers on their prefix.
async fn watch_point(
    s: &Server,
    watchers: usize,
    duration: Duration,
    put_rate: Option<u32>,
) -> Result<WatchPoint, String> {
    let streams = watchers.clamp(1, 10);
    let base_rev = crate::watchcheck::current_revision(std::slice::from_ref(&s.url), Duration::from_secs(10))
        .await
        .ok_or("no revision")?;
    let start = Instant::now();
    let times = Arc::new(Times::new());
    let mut readers = Vec::new();
    let (done_tx, done) = tokio::sync::watch::channel(false);
    let delivered = Arc::new(AtomicU64::new(0));
    for (i, ch) in channels(&s.url, streams)?.into_iter().enumerate() {
        let per = watchers / streams + usize::from(i < watchers % streams);
        let (stream, tx) = open_watchers(ch, (0..per).map(|_| create("wb/", "wb0")).collect()).await?;
        let read = read_events(stream, done.clone(), delivered.clone(), times.clone(), start, base_rev);
        readers.push(tokio::spawn(async move {
            let _tx = tx;
            read.await
        }));
    }
    let cpu0 = s.cpu();
    let own_cpu0 = process_cpu("self");
    let t0 = Instant::now();
    let stop = Arc::new(AtomicBool::new(false));
    let puts = Arc::new(AtomicU64::new(0));
    let mut writers = Vec::new();
    let value = prost::bytes::Bytes::from(vec![b'v'; 256]);
    // With a put rate, each of the 64 writers sends on its own schedule (a 64th of the rate,
    // staggered), skipping none: a put answered late is followed at once by the next due.
    let period = put_rate.map(|r| Duration::from_secs_f64(64.0 / f64::from(r)));
    let sched0 = tokio::time::Instant::now();
    for (c, ch) in channels(&s.url, 8)?.into_iter().enumerate() {
        for w in 0..8 {
            let (mut kv, stop, puts, times, value) =
                (KvClient::new(ch.clone()), stop.clone(), puts.clone(), times.clone(), value.clone());
            let keys: Vec<prost::bytes::Bytes> = (0..100).map(|k| format!("wb/{c}-{w}-{k}").into()).collect();
            let offset = period.map(|p| p.mul_f64((c * 8 + w) as f64 / 64.0));
            writers.push(tokio::spawn(async move {
                let mut n = 0usize;
                while !stop.load(Ordering::Relaxed) {
                    if let (Some(period), Some(offset)) = (period, offset) {
                        tokio::time::sleep_until(sched0 + offset + period.mul_f64(n as f64)).await;
                    }
                    n += 1;
                    let req = PutRequest {
                        key: keys[n % keys.len()].clone(),
                        value: value.clone(),
                        ..Default::default()
                    };
                    let t_sent = start.elapsed().as_nanos() as u64;
                    let Ok(r) = kv.put(req).await else { continue };
                    let t_ack = start.elapsed().as_nanos() as u64;
                    let rev = r.into_inner().header.map_or(0, |h| h.revision);
                    if let Ok(i) = usize::try_from(rev - base_rev) {
                        times.set(i, t_sent, t_ack);
                    }
                    puts.fetch_add(1, Ordering::Relaxed);
                }
            }));
        }
    }
    tokio::time::sleep(duration).await;
    stop.store(true, Ordering::Relaxed);
    for w in writers {
        let _ = w.await;
    }
    let written = puts.load(Ordering::Relaxed);
    let want = written * watchers as u64;
    // Let the watchers drain (at most 30 s).
    let drain = Instant::now();
    while delivered.load(Ordering::Relaxed) < want && drain.elapsed() < Duration::from_secs(30) {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let elapsed = t0.elapsed().as_secs_f64();
    let cpu = s.cpu() - cpu0;
    let own_cpu = process_cpu("self") - own_cpu0;
    let _ = done_tx.send(true);
    let mut from_ack = Histogram::<u64>::new(3).map_err(|e| e.to_string())?;
    let mut from_send = Histogram::<u64>::new(3).map_err(|e| e.to_string())?;
    let mut disordered = 0;
    for r in readers {
        let mut seen = r.await.map_err(|e| format!("watch reader: {e}"))??;
        // Every acknowledgement is known by now.
        for (slot, at) in std::mem::take(&mut seen.early) {
            if let Some(t) = times.get(slot as usize) {
                seen.record(at, t);
            }
        }
        from_ack.add(&seen.from_ack).map_err(|e| e.to_string())?;
        from_send.add(&seen.from_send).map_err(|e| e.to_string())?;
        disordered += seen.disordered;
    }
    let got = delivered.load(Ordering::Relaxed);
    let ms = |h: &Histogram<u64>, q: f64| h.value_at_quantile(q) as f64 / 1000.0;
    Ok(WatchPoint {
        watchers,
        puts_per_s: written as f64 / duration.as_secs_f64(),
        events_per_s: got as f64 / elapsed,
        ack_p50: ms(&from_ack, 0.5),
        ack_p99: ms(&from_ack, 0.99),
        send_p50: ms(&from_send, 0.5),
        send_p99: ms(&from_send, 0.99),
        cpu_us_per_event: if got > 0 { cpu * 1e6 / got as f64 } else { 0.0 },
        generator_cpu_us_per_event: if got > 0 { own_cpu * 1e6 / got as f64 } else { 0.0 },
        missing: want.saturating_sub(got),
        disordered,
    })
}

/// Opens `n` watchers on distinct prefixes under `held/` (1,000 per stream, over 10
/// connections); they last as long as the returned streams.
async fn held_ranges(
    s: &Server,
    n: usize,
) -> Result<Vec<(WatchStream, tokio::sync::mpsc::Sender<WatchRequest>)>, String> {
    let per_stream = 1000;
    let chans = channels(&s.url, 10)?;
    let mut held = Vec::new();
    for i in 0..n.div_ceil(per_stream) {
        let lo = i * per_stream;
        let reqs = (lo..(lo + per_stream).min(n))
            .map(|k| create(&format!("held/{k:06}/"), &format!("held/{k:06}0")))
            .collect();
        held.push(open_watchers(chans[i % chans.len()].clone(), reqs).await?);
    }
    Ok(held)
}

async fn idle_point(s: &Server, n: usize) -> Result<(usize, u64, u64), String> {
    tokio::time::sleep(Duration::from_secs(1)).await;
    let before = s.rss();
    let per_stream = 1000;
    let streams = n.div_ceil(per_stream);
    let chans = channels(&s.url, 10)?;
    let mut held = Vec::new();
    for i in 0..streams {
        let lo = i * per_stream;
        let hi = (lo + per_stream).min(n);
        let reqs = (lo..hi).map(|k| create(&format!("idle/{k:06}"), "")).collect();
        held.push(open_watchers(chans[i % chans.len()].clone(), reqs).await?);
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    let after = s.rss();
    drop(held);
    Ok((n, before, after))
}

async fn keepalive_point(s: &Server, leases: usize, duration: Duration) -> Result<(usize, f64, f64), String> {
    let chans = channels(&s.url, 8)?;
    let mut ids = Vec::with_capacity(leases);
    let mut grants = Vec::new();
    for (i, ch) in chans.iter().enumerate() {
        let (mut c, count) = (LeaseClient::new(ch.clone()), leases / 8 + usize::from(i < leases % 8));
        grants.push(tokio::spawn(async move {
            let mut out = Vec::new();
            for _ in 0..count {
                if let Ok(r) = c.lease_grant(LeaseGrantRequest { ttl: 600, id: 0 }).await {
                    out.push(r.into_inner().id);
                }
            }
            out
        }));
    }
    for g in grants {
        ids.extend(g.await.unwrap_or_default());
    }
    if ids.len() < leases {
        return Err(format!("only {} of {leases} leases granted", ids.len()));
    }
    let ids = Arc::new(ids);
    let stop = Arc::new(AtomicBool::new(false));
    let answered = Arc::new(AtomicU64::new(0));
    let streams = 16;
    let mut tasks = Vec::new();
    let cpu0 = s.cpu();
    let t0 = Instant::now();
    for k in 0..streams {
        let mut c = LeaseClient::new(chans[k % chans.len()].clone());
        let (ids, stop, answered) = (ids.clone(), stop.clone(), answered.clone());
        tasks.push(tokio::spawn(async move {
            let (tx, rx) = tokio::sync::mpsc::channel(64);
            let stop2 = stop.clone();
            // Sending starts before the response headers are awaited (etcd sends them with
            // the first response).
            let sender = tokio::spawn(async move {
                let mut i = k;
                while !stop2.load(Ordering::Relaxed) {
                    if tx.send(LeaseKeepAliveRequest { id: ids[i % ids.len()] }).await.is_err() {
                        return;
                    }
                    i += streams;
                }
            });
            let Ok(resp) = c.lease_keep_alive(tokio_stream::wrappers::ReceiverStream::new(rx)).await else {
                sender.abort();
                return;
            };
            let mut stream = resp.into_inner();
            while !stop.load(Ordering::Relaxed) {
                match tokio::time::timeout(Duration::from_millis(200), stream.message()).await {
                    Ok(Ok(Some(_))) => {
                        answered.fetch_add(1, Ordering::Relaxed);
                    }
                    Ok(_) => break,
                    Err(_) => {}
                }
            }
            sender.abort();
        }));
    }
    tokio::time::sleep(duration).await;
    let n = answered.load(Ordering::Relaxed);
    let elapsed = t0.elapsed().as_secs_f64();
    let cpu = s.cpu() - cpu0;
    stop.store(true, Ordering::Relaxed);
    for t in tasks {
        let _ = t.await;
    }
    Ok((leases, n as f64 / elapsed, if n > 0 { cpu * 1e6 / n as f64 } else { 0.0 }))
}

async fn measure(name: &'static str, binary: &Path, cfg: &BenchConfig) -> Result<Figures, String> {
    let s = Server::start(name, binary, &cfg.out.join(name), cfg)?;
    crate::runner::wait_ready(std::slice::from_ref(&s.url), Duration::from_secs(30)).await?;
    let mut f = Figures { name: name.to_string(), ..Default::default() };
    eprintln!("bench-watch: {name} ({})", binary.display());
    // Idle watchers first, on a member that has not served any yet.
    f.load.push(load_average());
    f.idle = idle_point(&s, cfg.idle_watchers).await?;
    eprintln!("  idle: {:?}", f.idle);
    let held = held_ranges(&s, cfg.held_ranges).await?;
    for &watchers in &cfg.watchers {
        f.load.push(load_average());
        let p = watch_point(&s, watchers, cfg.duration, cfg.put_rate).await?;
        eprintln!("  {watchers} watchers: {p:?}");
        f.watch.push(p);
    }
    drop(held);
    if cfg.leases > 0 {
        f.load.push(load_average());
        f.keepalive = keepalive_point(&s, cfg.leases, cfg.duration).await?;
        eprintln!("  keep-alives: {:?}", f.keepalive);
    }
    f.load.push(load_average());
    Ok(f)
}

pub async fn run(cfg: BenchConfig) -> Result<String, String> {
    let mut all = vec![measure("raftkv", &cfg.raftkv, &cfg).await?];
    if let Some(etcd) = &cfg.etcd {
        all.push(measure("etcd", etcd, &cfg).await?);
    }
    Ok(report(&cfg, &all))
}

fn report(cfg: &BenchConfig, all: &[Figures]) -> String {
    use std::fmt::Write;
    let mut o = String::new();
    let _ = writeln!(
        o,
        "bench-watch: one member each, {} s per point{}, raftkv {}, etcd {}; load average (1, 5, 15 min) at each point:",
        cfg.duration.as_secs(),
        match cfg.held_ranges {
            0 => String::new(),
            n => format!(", {n} watchers on distinct prefixes held through the watch points"),
        },
        cfg.worker_threads
            .map_or("with its default worker threads".to_string(), |n| format!("--worker-threads {n}")),
        cfg.gomaxprocs.map_or("with its default GOMAXPROCS".to_string(), |n| format!("GOMAXPROCS={n}")),
    );
    for f in all {
        let _ = writeln!(o, "  {}: {}", f.name, f.load.join(" | "));
    }
    let _ = writeln!(o);
    let _ = writeln!(
        o,
        "| system | watchers | puts/s | events delivered/s | ack→delivery p50 / p99 ms | request→delivery p50 / p99 ms | server CPU µs / event | generator CPU µs / event | events missing / out of order |"
    );
    let _ = writeln!(o, "| --- | --- | --- | --- | --- | --- | --- | --- | --- |");
    for f in all {
        for p in &f.watch {
            let _ = writeln!(
                o,
                "| {} | {} | {:.0} | {:.0} | {:.2} / {:.2} | {:.2} / {:.2} | {:.2} | {:.2} | {} / {} |",
                f.name,
                p.watchers,
                p.puts_per_s,
                p.events_per_s,
                p.ack_p50,
                p.ack_p99,
                p.send_p50,
                p.send_p99,
                p.cpu_us_per_event,
                p.generator_cpu_us_per_event,
                p.missing,
                p.disordered
            );
        }
    }
    if cfg.idle_watchers > 0 {
        let _ = writeln!(o);
        let _ =
            writeln!(o, "| system | idle watchers | RSS before MiB | RSS after MiB | bytes per watcher |");
        let _ = writeln!(o, "| --- | --- | --- | --- | --- |");
    }
    for f in all.iter().filter(|f| f.idle.0 > 0) {
        let (n, before, after) = f.idle;
        let _ = writeln!(
            o,
            "| {} | {n} | {:.1} | {:.1} | {:.0} |",
            f.name,
            before as f64 / 1048576.0,
            after as f64 / 1048576.0,
            after.saturating_sub(before) as f64 / n.max(1) as f64
        );
    }
    if cfg.leases > 0 {
        let _ = writeln!(o);
        let _ = writeln!(o, "| system | leases | keep-alives/s | server CPU µs / keep-alive |");
        let _ = writeln!(o, "| --- | --- | --- | --- |");
    }
    for f in all.iter().filter(|f| f.keepalive.0 > 0) {
        let (n, rate, cpu) = f.keepalive;
        let _ = writeln!(o, "| {} | {n} | {rate:.0} | {cpu:.2} |", f.name);
    }
    o
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use prost::Message;
    use raftkv_api::etcdserverpb::{ResponseHeader, WatchResponse};
    use raftkv_api::mvccpb::{Event, KeyValue};

    #[test]
    fn the_light_response_keeps_what_the_watchers_read() {
        let kv = |rev: i64| KeyValue {
            key: format!("wb/{rev}").into(),
            value: vec![b'v'; 256].into(),
            create_revision: 2,
            mod_revision: rev,
            version: 3,
            lease: 0,
        };
        let full = WatchResponse {
            header: Some(ResponseHeader { cluster_id: 1, member_id: 2, revision: 12, raft_term: 3 }),
            watch_id: 7,
            created: false,
            canceled: true,
            compact_revision: 4,
            cancel_reason: "why".into(),
            fragment: true,
            events: vec![
                Event { r#type: 0, kv: Some(kv(10)), prev_kv: Some(kv(9)) },
                Event { r#type: 1, kv: Some(kv(12)), prev_kv: None },
            ],
        };
        let lite = WatchResponseLite::decode(full.encode_to_vec().as_slice()).unwrap();
        assert_eq!((lite.watch_id, lite.created, lite.canceled), (7, false, true));
        assert_eq!((lite.compact_revision, lite.cancel_reason.as_str()), (4, "why"));
        let revs: Vec<i64> = lite.events.iter().map(|e| e.kv.map_or(0, |kv| kv.mod_revision)).collect();
        assert_eq!(revs, [10, 12]);
    }
}
