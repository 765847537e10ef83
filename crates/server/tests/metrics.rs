//! `/metrics` on the client port and on `--listen-metrics-urls`, parsed with a Prometheus
//! text-format parser: etcd's names, the WAL fsync histogram growing with writes, gRPC calls
//! counted by method and code, leader changes counted; `/readyz` and `/livez`; the client
//! gRPC byte counters following the messages of both client-port paths exactly, as etcd
//! 3.4's do.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use common::{Cluster, Opts, free_ports, start_etcd_elected};
use prometheus_parse::{Scrape, Value};
use raftkv_api::etcdserverpb::*;
use raftkv_api::prost::Message;

/// `GET path` over HTTP/1.1; returns (status line, body).
fn http_get(port: u16, path: &str) -> Result<(String, String), String> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).map_err(|e| e.to_string())?;
    s.set_read_timeout(Some(Duration::from_secs(10))).map_err(|e| e.to_string())?;
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes())
        .map_err(|e| e.to_string())?;
    let mut out = String::new();
    s.read_to_string(&mut out).map_err(|e| e.to_string())?;
    let (head, body) = out.split_once("\r\n\r\n").ok_or("no header end")?;
    Ok((head.lines().next().unwrap_or("").to_string(), body.to_string()))
}

fn scrape(port: u16) -> Scrape {
    let (status, body) = http_get(port, "/metrics").expect("GET /metrics");
    assert!(status.contains("200"), "{status}");
    // The body is chunked when large: keep only metric lines (chunk sizes are bare hex).
    let lines = body
        .lines()
        .filter(|l| l.starts_with('#') || l.contains(' '))
        .map(|l| Ok(l.to_string()))
        .collect::<Vec<_>>();
    Scrape::parse(lines.into_iter()).expect("Prometheus text format")
}

/// The value of `name` with all of `labels`; a histogram's count.
fn value(s: &Scrape, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    s.samples
        .iter()
        .find(|x| x.metric == name && labels.iter().all(|(k, v)| x.labels.get(k) == Some(*v)))
        .map(|x| match &x.value {
            Value::Counter(v) | Value::Gauge(v) | Value::Untyped(v) => *v,
            Value::Histogram(b) => b.iter().map(|b| b.count).fold(0.0, f64::max),
            Value::Summary(_) => f64::NAN,
        })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_follow_writes_and_leader_changes() {
    let mport = free_ports(1)[0];
    let mut c = Cluster::new(3, Opts::default());
    for i in 0..3 {
        let mut args = c.args(i);
        if i == 0 {
            args.extend(["--listen-metrics-urls".into(), format!("http://127.0.0.1:{mport}")]);
        }
        let child = c.spawn_raw(i, &args);
        c.members[i].child = Some(child);
    }
    let leader = c.wait_leader(Duration::from_secs(30)).await;
    let port = c.port(leader);
    c.put_retry(leader, "warm", "up", Duration::from_secs(20)).await;

    let before = scrape(port);
    for name in [
        "etcd_server_has_leader",
        "etcd_server_leader_changes_seen_total",
        "etcd_server_proposals_committed_total",
        "etcd_server_proposals_applied_total",
        "etcd_server_proposals_pending",
        "etcd_server_proposals_failed_total",
        "etcd_disk_wal_fsync_duration_seconds",
        "etcd_disk_backend_commit_duration_seconds",
        "etcd_network_peer_sent_bytes_total",
        "etcd_mvcc_db_total_size_in_bytes",
        "etcd_debugging_mvcc_keys_total",
        "grpc_server_handled_total",
        "grpc_server_started_total",
        "raftkv_server_apply_lag_entries",
    ] {
        assert!(before.samples.iter().any(|s| s.metric == name), "{name} missing");
    }
    assert_eq!(value(&before, "etcd_server_has_leader", &[]), Some(1.0));
    assert!(value(&before, "etcd_server_leader_changes_seen_total", &[]) >= Some(1.0));
    let fsyncs = value(&before, "etcd_disk_wal_fsync_duration_seconds", &[]).expect("fsync histogram");
    let put_ok = [("grpc_method", "Put"), ("grpc_code", "OK")];
    let puts = value(&before, "grpc_server_handled_total", &put_ok).expect("Put OK");
    for i in 0..20 {
        common::put(port, &format!("k{i}"), "v").await.expect("put");
    }
    // Through the router path (not the key-value fast path): Status.
    common::status(port).await.expect("status");
    let after = scrape(port);
    let fsyncs2 = value(&after, "etcd_disk_wal_fsync_duration_seconds", &[]).expect("fsync histogram");
    assert!(fsyncs2 >= fsyncs + 1.0, "fsync count {fsyncs} -> {fsyncs2} after 20 puts");
    assert_eq!(value(&after, "grpc_server_handled_total", &put_ok), Some(puts + 20.0));
    assert!(
        value(&after, "grpc_server_handled_total", &[("grpc_method", "Status"), ("grpc_code", "OK")])
            >= Some(1.0)
    );
    assert!(value(&after, "etcd_debugging_mvcc_keys_total", &[]) >= Some(21.0));
    assert!(
        value(&after, "etcd_server_proposals_applied_total", &[])
            > value(&before, "etcd_server_proposals_applied_total", &[])
    );

    // Peer traffic both ways, round trips measured from the leader's heartbeats, and the
    // process metrics of etcd's dashboards.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let s = scrape(port);
        let count = |name: &str| s.samples.iter().filter(|x| x.metric == name).count();
        let rtts = s
            .samples
            .iter()
            .filter(|x| x.metric == "etcd_network_peer_round_trip_time_seconds")
            .map(|x| match &x.value {
                Value::Histogram(b) => b.iter().map(|b| b.count).fold(0.0, f64::max),
                _ => 0.0,
            })
            .collect::<Vec<_>>();
        let received = s
            .samples
            .iter()
            .filter(|x| x.metric == "etcd_network_peer_received_bytes_total")
            .filter_map(|x| match x.value {
                Value::Gauge(v) | Value::Counter(v) | Value::Untyped(v) => Some(v),
                _ => None,
            })
            .collect::<Vec<_>>();
        for name in [
            "process_cpu_seconds_total",
            "process_resident_memory_bytes",
            "process_open_fds",
            "etcd_debugging_mvcc_db_total_size_in_bytes",
        ] {
            assert!(count(name) > 0, "{name} missing");
        }
        if rtts.len() == 2
            && rtts.iter().all(|&n| n >= 1.0)
            && received.len() == 2
            && received.iter().all(|&b| b > 0.0)
        {
            break;
        }
        assert!(Instant::now() < deadline, "peer round trips {rtts:?}, bytes received {received:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    // The metrics listener serves the same, with the health checks.
    let m = scrape(mport);
    assert!(value(&m, "etcd_server_has_leader", &[]).is_some());
    for path in ["/health", "/readyz", "/livez"] {
        let (status, body) = http_get(mport, path).expect(path);
        assert!(status.contains("200"), "{path}: {status} {body}");
    }

    // Kill the leader: a survivor sees a new one and counts the change.
    let survivor = (0..3).find(|&i| i != leader).expect("survivor");
    let changes =
        value(&scrape(c.port(survivor)), "etcd_server_leader_changes_seen_total", &[]).expect("changes");
    c.kill9(leader);
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let s = scrape(c.port(survivor));
        let now = value(&s, "etcd_server_leader_changes_seen_total", &[]).expect("changes");
        if now > changes && value(&s, "etcd_server_has_leader", &[]) == Some(1.0) {
            break;
        }
        assert!(Instant::now() < deadline, "leader change not counted: {changes} -> {now}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

const SENT: &str = "etcd_network_client_grpc_sent_bytes_total";
const RECEIVED: &str = "etcd_network_client_grpc_received_bytes_total";

/// Adds a message's encoded length to a running total, returning the message.
fn counted<M: Message>(total: &mut u64, m: M) -> M {
    *total += m.encoded_len() as u64;
    m
}

/// gRPC traffic on both client-port paths (key-value calls: the direct path; Status,
/// MemberList, LeaseGrant and a Watch stream: the router's): (request bytes, response bytes)
/// as etcd's codec counts them, the encoded messages.
async fn grpc_traffic(port: u16) -> (u64, u64) {
    let (mut req, mut resp) = (0u64, 0u64);
    let mut kv = common::kv(port);
    let put = |k: &str, v: &str| PutRequest {
        key: k.to_string().into(),
        value: v.to_string().into(),
        ..Default::default()
    };
    for i in 0..5 {
        let r = kv.put(counted(&mut req, put(&format!("bytes/{i}"), &"v".repeat(100 * i)))).await;
        counted(&mut resp, r.expect("put").into_inner());
    }
    let range = RangeRequest { key: "bytes/".into(), range_end: "bytes0".into(), ..Default::default() };
    let r = kv.range(counted(&mut req, range)).await.expect("range").into_inner();
    assert_eq!(r.kvs.len(), 5);
    counted(&mut resp, r);
    let txn = TxnRequest {
        success: vec![RequestOp { request: Some(request_op::Request::RequestPut(put("bytes/t", "x"))) }],
        ..Default::default()
    };
    counted(&mut resp, kv.txn(counted(&mut req, txn)).await.expect("txn").into_inner());
    // A refused call counts its request, not a response.
    let bad = PutRequest { lease: 999, ..put("bytes/x", "x") };
    assert!(kv.put(counted(&mut req, bad)).await.is_err());

    let mut m = common::maintenance(port);
    counted(&mut resp, m.status(counted(&mut req, StatusRequest {})).await.expect("status").into_inner());
    let mut c = common::cluster_client(port);
    let list = c.member_list(counted(&mut req, MemberListRequest::default())).await;
    counted(&mut resp, list.expect("member list").into_inner());
    let mut lease = lease_client::LeaseClient::new(common::channel(port));
    let grant = LeaseGrantRequest { ttl: 60, id: 0 };
    counted(&mut resp, lease.lease_grant(counted(&mut req, grant)).await.expect("grant").into_inner());

    // A watch stream: the create request, its confirmation and one event.
    let create = WatchRequest {
        request_union: Some(watch_request::RequestUnion::CreateRequest(WatchCreateRequest {
            key: "bytes/w".into(),
            ..Default::default()
        })),
    };
    let (tx, rx) = tokio::sync::mpsc::channel(1);
    tx.send(counted(&mut req, create)).await.expect("queue the create request");
    let mut w = watch_client::WatchClient::new(common::channel(port));
    let mut stream =
        w.watch(tokio_stream::wrappers::ReceiverStream::new(rx)).await.expect("watch").into_inner();
    let created = next_watch_response(&mut stream).await;
    assert!(created.created);
    counted(&mut resp, created);
    counted(&mut resp, kv.put(counted(&mut req, put("bytes/w", "1"))).await.expect("put").into_inner());
    let event = next_watch_response(&mut stream).await;
    assert_eq!(event.events.len(), 1);
    counted(&mut resp, event);
    drop(tx);
    (req, resp)
}

async fn next_watch_response(s: &mut tonic::Streaming<WatchResponse>) -> WatchResponse {
    tokio::time::timeout(Duration::from_secs(10), s.message())
        .await
        .expect("a watch response in time")
        .expect("watch stream")
        .expect("a watch response")
}

/// The byte counters of `port` move by exactly the traffic of [`grpc_traffic`].
async fn check_grpc_bytes(port: u16, who: &str) {
    let before = scrape(port);
    let counter = |s: &Scrape, name: &str| value(s, name, &[]).unwrap_or_else(|| panic!("{who}: {name}"));
    assert!(
        before.samples.iter().any(|x| x.metric == SENT && matches!(x.value, Value::Counter(_))),
        "{who}: {SENT} is a counter"
    );
    let (sent0, received0) = (counter(&before, SENT), counter(&before, RECEIVED));
    let (req, resp) = grpc_traffic(port).await;
    assert!(req > 0 && resp > 0);
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let after = scrape(port);
        let sent = counter(&after, SENT) - sent0;
        let received = counter(&after, RECEIVED) - received0;
        if (sent, received) == (resp as f64, req as f64) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{who}: sent {sent} bytes (responses: {resp}), received {received} (requests: {req})"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// `etcd_network_client_grpc_{sent,received}_bytes_total` count the encoded messages of
/// both client-port paths, exactly, as etcd 3.4's do (run against a real etcd too).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_grpc_bytes_count_the_messages_of_both_paths() {
    let mut c = Cluster::start(1, Opts::default());
    c.wait_leader(Duration::from_secs(30)).await;
    check_grpc_bytes(c.port(0), "raftkv").await;
    c.assert_running();
    let dir = tempfile::tempdir().expect("temp dir");
    if let Some((_etcd, port, _)) = start_etcd_elected(dir.path()).await {
        check_grpc_bytes(port, "etcd 3.4").await;
    }
}

/// The panels of etcd's Grafana dashboard that work unchanged on raftkv, with the series their
/// PromQL expressions select: (panel, metric name, label values the expression filters on).
/// From etcd v3.4.45's `Documentation/op-guide/grafana.json` (etcd 3.4's dashboard); the
/// table in docs/operations.md lists every panel of that file.
const GRAFANA_PANELS: &[(&str, &str, &[&str])] = &[
    ("Up", "etcd_server_has_leader", &[]),
    ("RPC Rate", "grpc_server_started_total", &[r#"grpc_type="unary""#]),
    ("RPC Rate", "grpc_server_handled_total", &[r#"grpc_type="unary""#]),
    (
        "Active Streams",
        "grpc_server_started_total",
        &[r#"grpc_service="etcdserverpb.Watch""#, r#"grpc_type="bidi_stream""#],
    ),
    (
        "Active Streams",
        "grpc_server_handled_total",
        &[r#"grpc_service="etcdserverpb.Watch""#, r#"grpc_type="bidi_stream""#],
    ),
    (
        "Active Streams",
        "grpc_server_started_total",
        &[r#"grpc_service="etcdserverpb.Lease""#, r#"grpc_type="bidi_stream""#],
    ),
    (
        "Active Streams",
        "grpc_server_handled_total",
        &[r#"grpc_service="etcdserverpb.Lease""#, r#"grpc_type="bidi_stream""#],
    ),
    ("DB Size", "etcd_mvcc_db_total_size_in_bytes", &[]),
    ("Disk Sync Duration", "etcd_disk_wal_fsync_duration_seconds_bucket", &["le="]),
    ("Disk Sync Duration", "etcd_disk_backend_commit_duration_seconds_bucket", &["le="]),
    ("Memory", "process_resident_memory_bytes", &[]),
    ("Client Traffic In", "etcd_network_client_grpc_received_bytes_total", &[]),
    ("Client Traffic Out", "etcd_network_client_grpc_sent_bytes_total", &[]),
    ("Peer Traffic In", "etcd_network_peer_received_bytes_total", &[]),
    ("Peer Traffic Out", "etcd_network_peer_sent_bytes_total", &[]),
    ("Raft Proposals", "etcd_server_proposals_failed_total", &[]),
    ("Raft Proposals", "etcd_server_proposals_pending", &[]),
    ("Raft Proposals", "etcd_server_proposals_committed_total", &[]),
    ("Raft Proposals", "etcd_server_proposals_applied_total", &[]),
    ("Total Leader Elections Per Day", "etcd_server_leader_changes_seen_total", &[]),
];

/// Every series the working panels of etcd 3.4's Grafana dashboard select is in `/metrics`
/// (two members, so that the peer traffic series exist).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grafana_dashboard_series_are_exposed() {
    let mut c = Cluster::start(2, Opts::default());
    let leader = c.wait_leader(Duration::from_secs(20)).await;
    c.put_retry(leader, "k", "v", Duration::from_secs(10)).await;
    for i in 0..2 {
        let (status, body) = http_get(c.port(i), "/metrics").expect("GET /metrics");
        assert!(status.contains("200"), "{status}");
        let missing: Vec<String> = GRAFANA_PANELS
            .iter()
            .filter(|(_, name, labels)| {
                !body.lines().any(|l| {
                    (l.starts_with(&format!("{name}{{")) || l.starts_with(&format!("{name} ")))
                        && labels.iter().all(|want| l.contains(want))
                })
            })
            .map(|(panel, name, labels)| format!("{panel}: {name} {labels:?}"))
            .collect();
        assert!(
            missing.is_empty(),
            "{}: series missing from /metrics:\n{}",
            c.members[i].name,
            missing.join("\n")
        );
    }
    c.assert_running();
}
