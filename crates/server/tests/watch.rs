//! The Watch service against real members: etcdctl compared with a real etcd 3.4, the
//! `etcd-client` crate on a three-member cluster, bad input and limits over raw gRPC, a
//! stream that is never read, and the JSON gateway's `/v3/watch` stream.

mod common;

use std::fs::File;
use std::io::{BufRead, BufReader, Read, Write};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{Cluster, Opts, Proc, die_with_parent, have};
use raftkv_api::etcdserverpb::watch_client::WatchClient;
use raftkv_api::etcdserverpb::watch_request::RequestUnion;
use raftkv_api::etcdserverpb::{
    CompactionRequest, PutRequest, WatchCancelRequest, WatchCreateRequest, WatchProgressRequest,
    WatchRequest, WatchResponse,
};
use tokio::sync::mpsc;
use tonic::transport::{Channel, Endpoint};

const START: Duration = Duration::from_secs(20);
/// Generous: other builds share the machine.
const WAIT: Duration = Duration::from_secs(30);

/// Runs etcdctl to completion.
fn etcdctl(endpoint: &str, args: &[&str], stdin: &str) -> String {
    let mut cmd = Command::new("etcdctl");
    cmd.env("ETCDCTL_API", "3").arg(format!("--endpoints={endpoint}")).args(args);
    let mut child = die_with_parent(cmd.stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::null()))
        .spawn()
        .expect("spawn etcdctl");
    let _ = child.stdin.take().expect("stdin").write_all(stdin.as_bytes());
    let out = child.wait_with_output().expect("etcdctl");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Runs a long-lived `etcdctl watch ...`, feeding `stdin` (kept open), runs `during` once
/// it has started, and returns its output once `lines` lines came (or after the deadline).
fn etcdctl_watch(endpoint: &str, args: &[&str], stdin: &str, lines: usize, during: impl FnOnce()) -> String {
    let dir = tempfile::tempdir().expect("temp dir");
    let out_path = dir.path().join("out");
    let mut cmd = Command::new("etcdctl");
    cmd.env("ETCDCTL_API", "3")
        .arg(format!("--endpoints={endpoint}"))
        .args(args)
        .stdin(Stdio::piped())
        .stdout(File::create(&out_path).expect("out"))
        .stderr(Stdio::null());
    let mut child = die_with_parent(&mut cmd).spawn().expect("spawn etcdctl");
    let mut input = child.stdin.take().expect("stdin");
    let _ = input.write_all(stdin.as_bytes());
    let _ = input.flush();
    let proc = Proc::new("etcdctl", child, None);
    std::thread::sleep(Duration::from_millis(700));
    during();
    let deadline = Instant::now() + WAIT;
    let mut out = String::new();
    while Instant::now() < deadline {
        out = common::read_log(&out_path);
        if out.lines().count() >= lines {
            // Anything more (there should be nothing) would show in the comparison.
            std::thread::sleep(Duration::from_millis(300));
            out = common::read_log(&out_path);
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    drop(input);
    drop(proc);
    out
}

/// The writes both servers get before the watches (same revisions on both).
const PREP: &[(&[&str], &str)] = &[
    (&["put", "foo", "1"], ""),
    (&["put", "foo/a", "2"], ""),
    (&["put", "foo", "3"], ""),
    (&["del", "foo"], ""),
    (&["txn"], "\nput foo/b 4\nput foo/c 5\ndel foo/a\n\n\n"),
    (&["put", "bar", "6"], ""),
];

/// What each server's etcdctl prints: every case of the comparison, in order.
fn watch_outputs(endpoint: &str) -> Vec<(String, String)> {
    for (args, stdin) in PREP {
        etcdctl(endpoint, args, stdin);
    }
    let cases: &[(&[&str], &str, usize)] = &[
        (&["watch", "foo", "--rev=1"], "", 9),
        (&["watch", "foo", "--prefix", "--rev=2"], "", 21),
        (&["watch", "foo", "--prefix", "--rev=3", "--prev-kv"], "", 24),
        (&["watch", "foo/a", "--rev=1", "--prev-kv"], "", 8),
        (&["watch", "foo", "foo/c", "--rev=4"], "", 12),
        // One watch: etcdctl runs each interactive watch on its own, in no set order.
        (&["watch", "-i"], "watch foo --prefix --rev=5 --prev-kv\n", 16),
        (&["watch", "foo", "--rev=1", "-w", "fields"], "", 1),
    ];
    let mut outs = Vec::new();
    for (args, stdin, lines) in cases {
        let out = etcdctl_watch(endpoint, args, stdin, *lines, || {});
        outs.push((args.join(" "), normalise(&out)));
    }
    // Live: a watcher started before the write.
    let ep = endpoint.to_string();
    let out = etcdctl_watch(endpoint, &["watch", "live", "--prev-kv"], "", 8, move || {
        etcdctl(&ep, &["put", "live", "a"], "");
        etcdctl(&ep, &["put", "live", "b"], "");
    });
    outs.push(("watch live --prev-kv".into(), normalise(&out)));
    outs
}

/// `-w fields` prints ids and terms: keep only the fields both servers share.
fn normalise(out: &str) -> String {
    out.lines()
        .filter(|l| !["\"ClusterID\"", "\"MemberID\"", "\"RaftTerm\""].iter().any(|p| l.starts_with(p)))
        .map(|l| format!("{l}\n"))
        .collect()
}

/// `etcdctl watch` (key, prefix, range, --rev, --prev-kv, interactive, live) prints the
/// same against raftkv as against a real etcd 3.4.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcdctl_watch_matches_real_etcd() {
    if !have("etcdctl") {
        return;
    }
    let mut c = Cluster::start_named(&["default"], Opts::default());
    c.wait_leader(START).await;
    let ours = c.members[0].endpoint();
    let ours = tokio::task::spawn_blocking(move || watch_outputs(&ours)).await.expect("watch outputs");
    // Sanity without etcd: the first case is the key's four events.
    assert_eq!(ours[0].1, "PUT\nfoo\n1\nPUT\nfoo\n3\nDELETE\nfoo\n\n", "{ours:?}");
    let dir = tempfile::tempdir().expect("temp dir");
    let Some((_etcd, port, _)) = common::start_etcd_elected(dir.path()).await else { return };
    let theirs = format!("127.0.0.1:{port}");
    let theirs = tokio::task::spawn_blocking(move || watch_outputs(&theirs)).await.expect("watch outputs");
    let mismatches: Vec<String> = ours
        .iter()
        .zip(&theirs)
        .filter(|(a, b)| a != b)
        .map(|(a, b)| format!("etcdctl {}\n  raftkv: {:?}\n  etcd:   {:?}", a.0, a.1, b.1))
        .collect();
    c.assert_running();
    assert!(mismatches.is_empty(), "watch output differs from etcd 3.4:\n{}", mismatches.join("\n"));
}

fn watch_channel(port: u16) -> Channel {
    Endpoint::from_shared(format!("http://127.0.0.1:{port}"))
        .expect("endpoint")
        .connect_timeout(Duration::from_secs(1))
        .connect_lazy()
}

/// A raw watch stream: requests in, responses out.
struct Stream {
    tx: mpsc::Sender<WatchRequest>,
    rx: tonic::Streaming<WatchResponse>,
}

impl Stream {
    async fn open(port: u16) -> Stream {
        let (tx, rx) = mpsc::channel(1024);
        let resp = WatchClient::new(watch_channel(port))
            .max_decoding_message_size(64 << 20)
            .watch(tokio_stream::wrappers::ReceiverStream::new(rx))
            .await
            .expect("watch");
        Stream { tx, rx: resp.into_inner() }
    }

    async fn send(&self, r: RequestUnion) {
        self.tx.send(WatchRequest { request_union: Some(r) }).await.expect("send");
    }

    async fn create(&self, c: WatchCreateRequest) {
        self.send(RequestUnion::CreateRequest(c)).await;
    }

    async fn next(&mut self) -> WatchResponse {
        tokio::time::timeout(WAIT, self.rx.message())
            .await
            .expect("a watch response in time")
            .expect("stream")
            .expect("stream open")
    }
}

fn create(key: &str, start: i64) -> WatchCreateRequest {
    WatchCreateRequest { key: key.to_string().into(), start_revision: start, ..Default::default() }
}

fn revs(r: &WatchResponse) -> Vec<i64> {
    r.events.iter().map(|e| e.kv.as_ref().map_or(0, |kv| kv.mod_revision)).collect()
}

/// Bad input and limits, answered as etcd 3.4 does (where it answers): duplicate ids,
/// empty ranges, unknown cancel ids, negative, future and compacted start revisions,
/// and a stream asking for more watchers than allowed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_watch_requests_get_etcds_answers() {
    let mut c = Cluster::start(1, Opts::default());
    c.wait_leader(START).await;
    let port = c.port(0);
    for i in 1..=5 {
        common::put(port, "k", &i.to_string()).await.expect("put");
    }
    let mut s = Stream::open(port).await;

    // Client-chosen id, then the same id again.
    s.create(WatchCreateRequest { watch_id: 7, ..create("k", 0) }).await;
    let r = s.next().await;
    assert!(r.created && !r.canceled && r.watch_id == 7, "{r:?}");
    s.create(WatchCreateRequest { watch_id: 7, ..create("k", 0) }).await;
    let r = s.next().await;
    assert_eq!((r.watch_id, r.created, r.canceled), (-1, true, true), "{r:?}");
    assert_eq!(r.cancel_reason, "mvcc: duplicate watch ID provided on the WatchStream");
    // An empty range.
    s.create(WatchCreateRequest { range_end: "a".into(), ..create("k", 0) }).await;
    let r = s.next().await;
    assert_eq!(
        (r.watch_id, r.canceled, r.cancel_reason.as_str()),
        (-1, true, "mvcc: watcher range is empty")
    );
    // Cancelling an unknown id is not answered: the next response is the progress reply.
    s.send(RequestUnion::CancelRequest(WatchCancelRequest { watch_id: 12345 })).await;
    s.send(RequestUnion::ProgressRequest(WatchProgressRequest {})).await;
    let r = s.next().await;
    assert_eq!((r.watch_id, r.header.as_ref().map(|h| h.revision)), (-1, Some(6)), "{r:?}");
    // Server-assigned ids start at 0 and skip the ones in use.
    s.create(create("k", 2)).await;
    let r = s.next().await;
    assert_eq!((r.watch_id, r.created), (0, true));
    let r = s.next().await;
    assert_eq!((r.watch_id, revs(&r)), (0, vec![2, 3, 4, 5, 6]));
    // Negative start revision: created, then cancelled with compact_revision -1 (etcd 3.4).
    s.create(create("k", -3)).await;
    let r = s.next().await;
    assert_eq!((r.watch_id, r.created), (1, true));
    let r = s.next().await;
    assert_eq!((r.watch_id, r.canceled, r.compact_revision), (1, true, -1), "{r:?}");
    // A future start revision: events from there on only.
    s.create(create("k", 9)).await;
    let r = s.next().await;
    assert_eq!((r.watch_id, r.created), (2, true));
    for i in 6..=9 {
        common::put(port, "k", &i.to_string()).await.expect("put");
    }
    // Watchers 7 and 0 see every put; 2 only revision 9 and on.
    let mut seen = std::collections::BTreeMap::<i64, Vec<i64>>::new();
    while seen.values().map(Vec::len).sum::<usize>() < 4 + 4 + 2 {
        let r = s.next().await;
        seen.entry(r.watch_id).or_default().extend(revs(&r));
    }
    assert_eq!(seen.get(&2), Some(&vec![9, 10]), "{seen:?}");
    assert_eq!(seen.get(&7), Some(&vec![7, 8, 9, 10]), "{seen:?}");
    // Cancel: answered, and the id can be used again.
    s.send(RequestUnion::CancelRequest(WatchCancelRequest { watch_id: 7 })).await;
    let r = s.next().await;
    assert_eq!((r.watch_id, r.canceled), (7, true));

    // A compacted start revision: created, then cancelled with the compacted revision.
    common::kv(port).compact(CompactionRequest { revision: 8, physical: false }).await.expect("compact");
    s.create(create("k", 3)).await;
    let r = s.next().await;
    let id = r.watch_id;
    assert!(r.created);
    let r = s.next().await;
    assert_eq!((r.watch_id, r.canceled, r.compact_revision), (id, true, 8), "{r:?}");
    assert_eq!(r.header.as_ref().map(|h| h.revision), Some(0));
    c.assert_running();
}

/// Watchers still catching up from the history can be cancelled in bulk, and a cancelled
/// id used again at once: the new watcher gets its own key's events, each once, in order,
/// and nothing of the cancelled one's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unsynced_watchers_cancel_and_their_ids_are_reused() {
    let mut c = Cluster::start(1, Opts::default());
    c.wait_leader(START).await;
    let port = c.port(0);
    let mut b_revs = Vec::new();
    for i in 0..20 {
        common::put(port, "a", &i.to_string()).await.expect("put");
        b_revs.push(common::put(port, "b", &i.to_string()).await.expect("put"));
    }
    let mut s = Stream::open(port).await;
    let n = 5_000;
    // Sent in one burst: every watcher starts unsynced (its start revision is past), and
    // some are cancelled before they catch up.
    let tx = s.tx.clone();
    let feeder = tokio::spawn(async move {
        let send = |r| tx.send(WatchRequest { request_union: Some(r) });
        for i in 0..n {
            let c = WatchCreateRequest { watch_id: 10 + i, ..create(if i % 2 == 0 { "a" } else { "b" }, 2) };
            send(RequestUnion::CreateRequest(c)).await.expect("send");
        }
        for i in 0..n {
            send(RequestUnion::CancelRequest(WatchCancelRequest { watch_id: 10 + i })).await.expect("send");
        }
        // Id 10 again, now on "b".
        send(RequestUnion::CreateRequest(WatchCreateRequest { watch_id: 10, ..create("b", 2) }))
            .await
            .expect("send");
    });
    let (mut created, mut canceled, mut events) = (0, 0, Vec::new());
    while created < n + 1 || canceled < n || events.len() < b_revs.len() {
        let r = s.next().await;
        if r.created {
            created += 1;
        } else if r.canceled {
            assert_eq!(r.cancel_reason, "", "{r:?}");
            canceled += 1;
        } else if created == n + 1 && canceled == n {
            // The watchers of the burst may have sent some of their history before their
            // cancellation; after it, only the new watcher 10 speaks.
            assert_eq!(r.watch_id, 10, "{r:?}");
            events.extend(revs(&r));
        }
    }
    feeder.await.expect("feeder");
    assert_eq!(events, b_revs, "the new watcher 10 sees \"b\" from revision 2, each revision once");
    let rev = common::put(port, "b", "live").await.expect("put");
    let r = s.next().await;
    assert_eq!((r.watch_id, revs(&r)), (10, vec![rev]));
    c.assert_running();
}

/// A request message above the size limit ends the stream with grpc-go's error (as etcd's
/// server answers it), and the member keeps serving watches.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_oversized_watch_request_ends_its_stream_with_resource_exhausted() {
    let mut c = Cluster::start(1, Opts::default());
    c.wait_leader(START).await;
    let port = c.port(0);
    let mut s = Stream::open(port).await;
    s.create(create("k", 0)).await;
    assert!(s.next().await.created);
    // Above --max-request-bytes (1.5 MiB) and the gRPC overhead allowed on top of it.
    s.create(WatchCreateRequest { key: vec![b'x'; 3 << 20].into(), ..Default::default() }).await;
    let status = tokio::time::timeout(WAIT, s.rx.message())
        .await
        .expect("the stream ends in time")
        .expect_err("the stream ends with an error");
    assert_eq!(status.code(), tonic::Code::ResourceExhausted, "{status:?}");
    assert!(status.message().starts_with("grpc: received message larger than max"), "{status:?}");
    // Another stream works.
    let mut s = Stream::open(port).await;
    s.create(create("k", 0)).await;
    assert!(s.next().await.created);
    common::put(port, "k", "v").await.expect("put");
    assert_eq!(revs(&s.next().await), vec![2]);
    c.assert_running();
}

/// One stream cannot hold more than 100,000 watchers; the one over is refused with a clear
/// reason, the others keep working.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watchers_per_stream_are_bounded() {
    let mut c = Cluster::start(1, Opts::default());
    c.wait_leader(START).await;
    let port = c.port(0);
    let pid = c.members[0].pid().expect("pid").as_raw() as u32;
    let mut s = Stream::open(port).await;
    let before = rss_kib(pid);
    let n = 100_000;
    let tx = s.tx.clone();
    let feeder = tokio::spawn(async move {
        for i in 0..=n {
            let c = create(&format!("w{i}"), 0);
            if tx.send(WatchRequest { request_union: Some(RequestUnion::CreateRequest(c)) }).await.is_err() {
                return;
            }
        }
    });
    for i in 0..n {
        let r = s.next().await;
        assert!(r.created && !r.canceled && r.watch_id == i as i64, "{i}: {r:?}");
    }
    let r = s.next().await;
    assert_eq!((r.watch_id, r.created, r.canceled), (-1, true, true), "{r:?}");
    assert!(r.cancel_reason.contains("too many watchers"), "{r:?}");
    feeder.await.expect("feeder");
    // Idle watchers are small: well under 1 KiB each (measured: see docs/architecture.md).
    let grown = rss_kib(pid).saturating_sub(before);
    eprintln!("{n} idle watchers: member RSS +{grown} KiB, {} bytes each", grown * 1024 / n as u64);
    assert!(grown < n as u64, "{n} watchers took {grown} KiB");
    let rev = common::put(port, "w99999", "v").await.expect("put");
    let r = s.next().await;
    assert_eq!((r.watch_id, revs(&r)), (99_999, vec![rev]));
    c.assert_running();
}

fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

/// A client that never reads its stream holds up neither the writes nor memory: the
/// writes go on, the member's memory stays bounded, and when the client does read, every
/// event arrives, in order and exactly once (caught up from the history).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_that_is_never_read_does_not_slow_writes() {
    // Frequent snapshots keep the Raft log's memory out of the measure.
    let mut c = Cluster::start(1, Opts { snapshot_count: Some(2000), ..Opts::default() });
    c.wait_leader(START).await;
    let port = c.port(0);
    let pid = c.members[0].pid().expect("pid").as_raw() as u32;
    let mut s = Stream::open(port).await;
    s.create(WatchCreateRequest { prev_kv: true, range_end: "big0".into(), ..create("big/", 0) }).await;
    s.create(WatchCreateRequest { range_end: "big0".into(), ..create("big/", 0) }).await;
    let r = s.next().await;
    assert!(r.created);
    let r = s.next().await;
    assert!(r.created);
    let before = rss_kib(pid);
    // 16 writers, 12,000 puts of 16 KiB (190 MiB of values, with prev_kv twice that).
    let value = "x".repeat(16 << 10);
    let start = Instant::now();
    let mut writers = Vec::new();
    for w in 0..16 {
        let value = value.clone();
        writers.push(tokio::spawn(async move {
            let mut kv = common::kv(port);
            for i in 0..750 {
                let req = PutRequest {
                    key: format!("big/{w}/{}", i % 50).into(),
                    value: value.clone().into(),
                    ..Default::default()
                };
                kv.put(req).await.expect("put while a stream is not read");
            }
        }));
    }
    for w in writers {
        w.await.expect("writer");
    }
    let took = start.elapsed();
    let after = rss_kib(pid);
    eprintln!("12,000 puts in {took:?}; member RSS {before} KiB -> {after} KiB");
    assert!(took < Duration::from_secs(120), "writes took {took:?}");
    assert!(after < before + 160 * 1024, "RSS grew from {before} KiB to {after} KiB");
    // Now read: both watchers get every revision once, in order.
    let last = common::put(port, "big/end", "e").await.expect("put");
    let mut next = [0i64; 2];
    let first_rev = last - 12_000;
    next[0] = first_rev;
    next[1] = first_rev;
    while next.iter().any(|n| *n <= last) {
        let r = match tokio::time::timeout(WAIT, s.rx.message()).await {
            Ok(r) => r.expect("stream").expect("open"),
            Err(_) => panic!("no watch response in {WAIT:?}; next revisions {next:?}, last {last}"),
        };
        let w = r.watch_id as usize;
        for e in &r.events {
            let kv = e.kv.as_ref().expect("kv");
            assert_eq!(kv.mod_revision, next[w], "watcher {w}: gap or duplicate");
            // Every put but each key's first has a previous version.
            assert_eq!(e.prev_kv.is_some(), w == 0 && kv.version > 1, "watcher {w}: {kv:?}");
            next[w] += 1;
        }
    }
    c.assert_running();
}

/// The JSON gateway's `/v3/watch`: a chunked stream of `{"result":...}` lines, past events
/// from the start revision, then live ones.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gateway_watch_streams_json_lines() {
    let mut c = Cluster::start(1, Opts::default());
    c.wait_leader(START).await;
    let port = c.port(0);
    common::put(port, "g", "1").await.expect("put");
    let body = r#"{"create_request":{"key":"Zw==","start_revision":"2","prev_kv":true}}"#;
    let lines = tokio::task::spawn_blocking(move || {
        let mut tcp = std::net::TcpStream::connect(("127.0.0.1", port)).expect("connect");
        tcp.set_read_timeout(Some(WAIT)).expect("timeout");
        write!(
            tcp,
            "POST /v3/watch HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{}",
            body.len(),
            body
        )
        .expect("request");
        let mut r = BufReader::new(tcp);
        let mut head = String::new();
        loop {
            let mut line = String::new();
            r.read_line(&mut line).expect("head");
            if line == "\r\n" {
                break;
            }
            head.push_str(&line);
        }
        assert!(head.starts_with("HTTP/1.1 200"), "{head}");
        assert!(head.to_ascii_lowercase().contains("transfer-encoding: chunked"), "{head}");
        assert!(head.to_ascii_lowercase().contains("content-type: application/json"), "{head}");
        // Chunks: size line, data, CRLF. Collect three JSON lines.
        let mut text = String::new();
        while text.lines().count() < 3 {
            let mut size = String::new();
            r.read_line(&mut size).expect("chunk size");
            let n = usize::from_str_radix(size.trim(), 16).expect("hex size");
            let mut data = vec![0; n + 2];
            r.read_exact(&mut data).expect("chunk");
            text.push_str(&String::from_utf8_lossy(&data[..n]));
            if text.lines().count() == 2 {
                let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("rt");
                rt.block_on(common::put(port, "g", "2")).expect("put");
            }
        }
        text
    })
    .await
    .expect("gateway watch");
    let lines: Vec<serde_json::Value> =
        lines.lines().map(|l| serde_json::from_str(l).expect("one JSON object per line")).collect();
    assert_eq!(lines[0]["result"]["created"], true, "{lines:?}");
    assert_eq!(lines[0]["result"]["header"]["revision"], "2", "{lines:?}");
    let past = &lines[1]["result"]["events"][0];
    assert_eq!((past["kv"]["key"].as_str(), past["kv"]["value"].as_str()), (Some("Zw=="), Some("MQ==")));
    assert_eq!(past["kv"]["mod_revision"], "2");
    assert!(past.get("type").is_none(), "PUT is the default and omitted: {past}");
    let live = &lines[2]["result"]["events"][0];
    assert_eq!(live["kv"]["value"], "Mg==");
    assert_eq!(live["prev_kv"]["value"], "MQ==");
    assert_eq!(lines[2]["result"]["header"]["revision"], "3");
    c.assert_running();
}

/// The `etcd-client` crate on a three-member cluster: a prefix watch from a start revision
/// on every member sees the same events, past and live; progress requests and cancels.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcd_client_crate_watch_on_every_member() {
    use etcd_client::{Client, EventType, WatchOptions};
    let mut c = Cluster::start(3, Opts::default());
    c.wait_leader(START).await;
    let eps: Vec<String> = c.members.iter().map(|m| m.client_url()).collect();
    let mut writer = Client::connect([eps[0].clone()], None).await.expect("connect");
    let first = writer.put("app/a", "1", None).await.expect("put").header().expect("h").revision();
    writer.put("other", "x", None).await.expect("put");
    writer.put("app/b", "2", None).await.expect("put");
    writer.delete("app/a", None).await.expect("delete");
    let mut streams = Vec::new();
    for ep in &eps {
        let mut client = Client::connect([ep.clone()], None).await.expect("connect");
        let opts = WatchOptions::new().with_prefix().with_start_revision(first).with_prev_key();
        let stream = client.watch("app/", Some(opts)).await.expect("watch");
        streams.push((client, stream));
    }
    writer.put("app/c", "3", None).await.expect("put");
    let mut sequences = Vec::new();
    for (_, stream) in &mut streams {
        let mut seq = Vec::new();
        while seq.len() < 4 {
            let r = tokio::time::timeout(WAIT, stream.message())
                .await
                .expect("in time")
                .expect("ok")
                .expect("open");
            for e in r.events() {
                let kv = e.kv().expect("kv");
                let prev = e.prev_kv().map(|p| p.value_str().expect("utf8").to_string());
                let kind = matches!(e.event_type(), EventType::Delete);
                seq.push((kind, kv.key_str().expect("utf8").to_string(), kv.mod_revision(), prev));
            }
        }
        sequences.push(seq);
    }
    let want = vec![
        (false, "app/a".to_string(), first, None),
        (false, "app/b".to_string(), first + 2, None),
        (true, "app/a".to_string(), first + 3, Some("1".to_string())),
        (false, "app/c".to_string(), first + 4, None),
    ];
    for seq in &sequences {
        assert_eq!(seq, &want);
    }
    // Progress request: a response without events at the current revision.
    let (_, stream) = &mut streams[1];
    stream.request_progress().await.expect("progress");
    let r = tokio::time::timeout(WAIT, stream.message()).await.expect("in time").expect("ok").expect("open");
    assert!(r.events().is_empty());
    assert_eq!(r.header().expect("header").revision(), first + 4);
    stream.cancel(0).await.expect("cancel");
    let r = tokio::time::timeout(WAIT, stream.message()).await.expect("in time").expect("ok").expect("open");
    assert!(r.canceled());
    c.assert_running();
}

/// Progress notifications every `--experimental-watch-progress-notify-interval`, counted over
/// `secs` on the member at `port`: (notifications to the watcher that asked for them, their
/// header revisions, responses to the watcher that did not ask).
async fn progress_notifications(port: u16, secs: f64) -> (usize, Vec<i64>, usize) {
    let rev = common::put(port, "other", "1").await.expect("put");
    // The creates go out before the response headers are awaited: etcd sends its headers
    // with its first response.
    let (tx, rx) = mpsc::channel(4);
    for c in [
        WatchCreateRequest { watch_id: 1, progress_notify: true, ..create("p", 0) },
        WatchCreateRequest { watch_id: 2, ..create("p", 0) },
    ] {
        tx.send(WatchRequest { request_union: Some(RequestUnion::CreateRequest(c)) }).await.expect("queued");
    }
    let mut client = WatchClient::new(watch_channel(port));
    let open = client.watch(tokio_stream::wrappers::ReceiverStream::new(rx));
    let resp = tokio::time::timeout(WAIT, open).await.expect("watch opens in time").expect("watch");
    let mut s = Stream { tx, rx: resp.into_inner() };
    for id in [1, 2] {
        let r = s.next().await;
        assert!(r.created && r.watch_id == id, "{r:?}");
    }
    let (mut asked, mut revisions, mut other) = (0, Vec::new(), 0);
    let deadline = tokio::time::Instant::now() + Duration::from_secs_f64(secs);
    while let Ok(m) = tokio::time::timeout_at(deadline, s.rx.message()).await {
        let r = m.expect("stream").expect("stream open");
        assert!(r.events.is_empty() && !r.canceled, "{r:?}");
        if r.watch_id == 1 {
            asked += 1;
            revisions.push(r.header.map_or(0, |h| h.revision));
        } else {
            other += 1;
        }
    }
    assert!(revisions.iter().all(|&r| r == rev), "revisions {revisions:?}, expected {rev}");
    (asked, revisions, other)
}

/// `--experimental-watch-progress-notify-interval` as etcd 3.4's: a `progress_notify` watcher
/// that got nothing hears the current revision every interval, other watchers nothing; the
/// same counts from a real etcd with the same flag.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_progress_notify_interval_is_configurable() {
    let flag = ["--experimental-watch-progress-notify-interval".to_string(), "1s".to_string()];
    let mut c = Cluster::start(1, Opts { extra: flag.to_vec(), ..Opts::default() });
    c.wait_leader(START).await;
    let (asked, revisions, other) = progress_notifications(c.port(0), 3.5).await;
    // Ticks at about 1, 2 and 3 s; a loaded machine may delay one past the window.
    assert!((2..=4).contains(&asked), "{asked} notifications in 3.5 s: {revisions:?}");
    assert_eq!(other, 0, "the watcher without progress_notify heard nothing");
    c.assert_running();
    if have("etcd") {
        let dir = tempfile::tempdir().expect("temp dir");
        let (_etcd, port, _) = common::start_etcd_elected_with(dir.path(), &flag).await.expect("etcd starts");
        let (asked, revisions, other) = progress_notifications(port, 3.5).await;
        assert!((2..=4).contains(&asked), "etcd: {asked} notifications in 3.5 s: {revisions:?}");
        assert_eq!(other, 0, "etcd: the watcher without progress_notify heard nothing");
    }
}
