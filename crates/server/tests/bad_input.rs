//! Acceptance: bad requests, garbage on the client and peer ports, and bad start-up
//! configurations get clear errors, and a running member keeps serving afterwards.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use common::{Cluster, Opts, get, put, run_to_exit};
use raftkv_api::etcdserverpb::{PutRequest, RangeRequest};
use tonic::Code;

const START: Duration = Duration::from_secs(20);

/// Writes `garbage` to `port` and reads until the peer closes the connection; returns what the
/// server answered. Panics if the connection is still open after 5 s.
fn garbage_to(port: u16, garbage: &[u8]) -> Vec<u8> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).expect("connect");
    s.set_read_timeout(Some(Duration::from_millis(200))).expect("timeout");
    // The server may close while we are still writing: that is fine.
    let _ = s.write_all(garbage);
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut answer = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match s.read(&mut buf) {
            Ok(0) => return answer,
            Ok(n) => answer.extend_from_slice(&buf[..n]),
            Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => {}
            Err(_) => return answer, // reset by the server
        }
        assert!(
            Instant::now() < deadline,
            "port {port} kept a connection open 5 s after garbage; it answered {:?}",
            String::from_utf8_lossy(&answer)
        );
    }
}

fn garbage() -> Vec<u8> {
    let mut g = b"\x16\x03\x01\xff\xffGARBAGE \x00\x01\x02 not a protocol\r\n\r\n".to_vec();
    let mut x: u32 = 0x9e37_79b9;
    for _ in 0..4096 {
        x ^= x << 13;
        x ^= x >> 17;
        x ^= x << 5;
        g.push(x as u8);
    }
    g
}

/// Oversized and invalid requests get etcd's errors; garbage on either port closes that
/// connection; the member keeps serving.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_requests_and_garbage_are_refused_and_the_member_keeps_serving() {
    let mut c = Cluster::start(3, Opts::default());
    let leader = c.wait_leader(START).await;
    let target = (leader + 1) % 3; // a follower; the leader is checked too below
    let port = c.port(target);

    // A put larger than --max-request-bytes (1.5 MiB by default).
    let big = PutRequest { key: "big".into(), value: vec![b'x'; 1_600_000].into(), ..Default::default() };
    let e = common::kv(port).put(big).await.expect_err("a 1.6 MB put must be refused");
    assert_eq!((e.code(), e.message()), (Code::InvalidArgument, "etcdserver: request is too large"));
    // Far beyond the limit: refused by gRPC's message size limit (its code is checked in
    // `message_over_the_grpc_limit_is_resource_exhausted`).
    let huge = PutRequest { key: "huge".into(), value: vec![b'x'; 4 << 20].into(), ..Default::default() };
    let e = common::kv(port).put(huge).await.expect_err("a 4 MiB put must be refused");
    assert_ne!(e.code(), Code::Ok);

    // A range with no key.
    let e = common::kv(port).range(RangeRequest::default()).await.expect_err("empty key");
    assert_eq!((e.code(), e.message()), (Code::InvalidArgument, "etcdserver: key is not provided"));
    // A put with no key.
    let e = common::kv(port).put(PutRequest::default()).await.expect_err("empty key");
    assert_eq!((e.code(), e.message()), (Code::InvalidArgument, "etcdserver: key is not provided"));

    // Garbage bytes on the client port (gRPC/HTTP) and on the peer port (Raft transport) of
    // the follower and of the leader.
    for i in [target, leader] {
        let answer = garbage_to(c.port(i), &garbage());
        eprintln!("client port of {} answered {:?}", c.members[i].name, String::from_utf8_lossy(&answer));
        let answer = garbage_to(c.members[i].peer_port, &garbage());
        eprintln!("peer port of {} answered {:?}", c.members[i].name, String::from_utf8_lossy(&answer));
        // A client that connects and sends nothing useful, then hangs up half-way.
        let mut s = TcpStream::connect(("127.0.0.1", c.members[i].peer_port)).expect("connect");
        let _ = s.write_all(&[0u8; 3]);
        drop(s);
    }

    // Everyone keeps serving: no member exited, the leader is the same, writes go through
    // every member and are read back linearizably.
    c.assert_running();
    assert_eq!(c.wait_leader(START).await, leader, "garbage must not cost the leadership");
    for i in 0..3 {
        let key = format!("after-garbage-{i}");
        put(c.port(i), &key, "ok").await.expect("put after bad input");
        for j in 0..3 {
            assert_eq!(get(c.port(j), &key, false).await.expect("get").as_deref(), Some("ok"));
        }
    }
    let rejected = get(port, "big", false).await.expect("get");
    assert_eq!(rejected, None, "a refused put must not be applied");

    // Restarting a member with another member's data dir fails at start, clearly.
    let victim = (leader + 2) % 3;
    let other = (victim + 1) % 3;
    c.kill9(victim);
    let mut args = c.args(other);
    let pos = args.iter().position(|a| a == "--data-dir").expect("--data-dir") + 1;
    args[pos] = c.members[victim].data_dir.display().to_string();
    // The other member's ports are in use by that member: the check must come before binding.
    let (status, stderr) = run_to_exit(&args, Duration::from_secs(10));
    assert!(!status.success(), "a --name mismatch must fail; stderr:\n{stderr}");
    let expected =
        format!("belongs to member \"{}\", not \"{}\"", c.members[victim].name, c.members[other].name);
    assert!(stderr.contains(&expected), "stderr lacks {expected:?}:\n{stderr}");
    // And the real owner still starts from it.
    c.start_member(victim);
    c.wait_leader(START).await;
    assert_eq!(get(c.port(victim), "after-garbage-0", false).await.expect("get").as_deref(), Some("ok"));
}

/// Configuration mistakes fail at start with a clear message and a non-zero exit.
#[test]
fn bad_configurations_fail_at_start() {
    // An unknown flag: clap's message and its usage exit code 2.
    let (status, stderr) =
        run_to_exit(&["server".into(), "--no-such-flag".into(), "1".into()], Duration::from_secs(10));
    assert_eq!(status.code(), Some(2), "stderr:\n{stderr}");
    assert!(stderr.contains("unexpected argument '--no-such-flag'"), "stderr:\n{stderr}");

    // A name that is not in --initial-cluster.
    let dir = tempfile::tempdir().expect("temp dir");
    let ports = common::free_ports(2);
    let peer = format!("http://127.0.0.1:{}", ports[0]);
    let client = format!("http://127.0.0.1:{}", ports[1]);
    let args: Vec<String> = [
        "server",
        "--name",
        "m4",
        "--data-dir",
        &dir.path().join("m4").display().to_string(),
        "--listen-client-urls",
        &client,
        "--advertise-client-urls",
        &client,
        "--listen-peer-urls",
        &peer,
        "--initial-advertise-peer-urls",
        &peer,
        "--initial-cluster",
        &format!("m1={peer}"),
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let (status, stderr) = run_to_exit(&args, Duration::from_secs(10));
    assert!(!status.success());
    assert!(stderr.contains("member name \"m4\" is not in --initial-cluster"), "stderr:\n{stderr}");
    assert!(!dir.path().join("m4").join("member").exists(), "a refused start must not create a member");

    // A malformed --initial-cluster and a too short election timeout.
    let mut bad = args.clone();
    bad[14] = "m4".into();
    let (status, stderr) = run_to_exit(&bad, Duration::from_secs(10));
    assert!(!status.success());
    assert!(stderr.contains("expected name=http://host:port"), "stderr:\n{stderr}");
    let mut bad = args.clone();
    bad[14] = format!("m4={peer}");
    bad.extend(["--heartbeat-interval".into(), "100".into(), "--election-timeout".into(), "200".into()]);
    let (status, stderr) = run_to_exit(&bad, Duration::from_secs(10));
    assert!(!status.success());
    assert!(stderr.contains("at least 5 times --heartbeat-interval"), "stderr:\n{stderr}");
}

/// A message beyond the gRPC receive limit (--max-request-bytes + 512 KiB) is refused as etcd
/// refuses it: etcd 3.4 answers `ResourceExhausted` "grpc: received message larger than max
/// (4194315 vs. 2097152)" to this request.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn message_over_the_grpc_limit_is_resource_exhausted() {
    let mut c = Cluster::start(1, Opts::default());
    c.wait_leader(START).await;
    let huge = PutRequest { key: "huge".into(), value: vec![b'x'; 4 << 20].into(), ..Default::default() };
    let e = common::kv(c.port(0)).put(huge).await.expect_err("a 4 MiB put must be refused");
    assert_eq!(e.code(), Code::ResourceExhausted, "{}", e.message());
    put(c.port(0), "after", "ok").await.expect("the member keeps serving");
}

/// One HTTP/2 request on a fresh connection; returns the HTTP status, the response headers
/// and trailers merged (a trailers-only response has its grpc-status in the headers), and the
/// body.
async fn h2_request(
    port: u16,
    path: &str,
    headers: &[(&str, &str)],
    body: Vec<u8>,
) -> (u16, http::HeaderMap, Vec<u8>) {
    let tcp = tokio::net::TcpStream::connect(("127.0.0.1", port)).await.expect("connect");
    let (send, conn) = h2::client::handshake(tcp).await.expect("h2 handshake");
    tokio::spawn(conn);
    let mut send = send.ready().await.expect("ready");
    let mut req = http::Request::builder().method("POST").uri(format!("http://127.0.0.1:{port}{path}"));
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let (response, mut stream) = send.send_request(req.body(()).expect("request"), false).expect("send");
    stream.send_data(body.into(), true).expect("send body");
    let response = tokio::time::timeout(Duration::from_secs(10), response)
        .await
        .expect("answer in time")
        .expect("response");
    let (parts, mut body) = response.into_parts();
    let mut data = Vec::new();
    while let Some(chunk) = body.data().await {
        let chunk = chunk.expect("body");
        let _ = body.flow_control().release_capacity(chunk.len());
        data.extend_from_slice(&chunk);
    }
    let mut all = parts.headers;
    if let Some(trailers) = body.trailers().await.expect("trailers") {
        all.extend(trailers);
    }
    (parts.status.as_u16(), all, data)
}

fn grpc_frame(flag: u8, message: &[u8]) -> Vec<u8> {
    let mut f = vec![flag];
    f.extend_from_slice(&(message.len() as u32).to_be_bytes());
    f.extend_from_slice(message);
    f
}

/// Malformed gRPC requests get the gRPC error tonic (and grpc-go) would give, on a trailers-only
/// response, and the member keeps serving; the JSON gateway also answers over HTTP/2.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_grpc_requests_get_grpc_errors() {
    use raftkv_api::prost::Message;
    let mut c = Cluster::start(1, Opts::default());
    c.wait_leader(START).await;
    let port = c.port(0);
    let grpc = [("content-type", "application/grpc"), ("te", "trailers")];
    let put_req = PutRequest { key: "k".into(), value: "v".into(), ..Default::default() }.encode_to_vec();
    let status_of = |h: &http::HeaderMap| {
        let code = h.get("grpc-status").and_then(|v| v.to_str().ok()).and_then(|v| v.parse::<i32>().ok());
        let message = h.get("grpc-message").and_then(|v| v.to_str().ok()).unwrap_or("").replace("%20", " ");
        (code, message)
    };
    type Case<'a> = (&'a str, Vec<(&'a str, &'a str)>, Vec<u8>, Code, &'a str);
    let cases: Vec<Case> = vec![
        (
            "/etcdserverpb.KV/Put",
            vec![("grpc-encoding", "gzip")],
            grpc_frame(1, &put_req),
            Code::Unimplemented,
            "gzip",
        ),
        ("/etcdserverpb.KV/Put", vec![], grpc_frame(1, &put_req), Code::Internal, "compressed-flag"),
        ("/etcdserverpb.KV/Put", vec![], Vec::new(), Code::Internal, "Missing request message"),
        (
            "/etcdserverpb.KV/Put",
            vec![],
            grpc_frame(0, &put_req)[..7].to_vec(),
            Code::Internal,
            "ended inside",
        ),
        (
            "/etcdserverpb.KV/Put",
            vec![],
            [grpc_frame(0, &put_req), grpc_frame(0, &put_req)].concat(),
            Code::Internal,
            "more than one",
        ),
        ("/etcdserverpb.KV/Range", vec![], grpc_frame(0, b"\xff\xff\xff"), Code::Internal, "decode"),
        ("/etcdserverpb.KV/Nope", vec![], grpc_frame(0, &put_req), Code::Unimplemented, ""),
        ("/etcdserverpb.Nope/Call", vec![], grpc_frame(0, b""), Code::Unimplemented, ""),
    ];
    for (path, extra, body, code, wording) in cases {
        let headers: Vec<(&str, &str)> = grpc.iter().copied().chain(extra.iter().copied()).collect();
        let (http_status, h, _) = h2_request(port, path, &headers, body).await;
        let (got, message) = status_of(&h);
        assert_eq!(http_status, 200, "{path}");
        assert_eq!(got, Some(code as i32), "{path} {extra:?}: {message}");
        assert!(message.contains(wording), "{path} {extra:?}: {message:?} lacks {wording:?}");
    }
    assert_eq!(get(port, "k", false).await.expect("get"), None, "no malformed put may be applied");

    // A well-formed put on the same raw path, then the JSON gateway over HTTP/2.
    let (_, h, data) = h2_request(port, "/etcdserverpb.KV/Put", &grpc, grpc_frame(0, &put_req)).await;
    assert_eq!(status_of(&h).0, Some(0), "{h:?}");
    assert!(data.len() >= 5 && data[0] == 0, "a length-prefixed PutResponse: {data:?}");
    let (http_status, _, data) = h2_request(
        port,
        "/v3/kv/range",
        &[("content-type", "application/json")],
        br#"{"key":"aw=="}"#.to_vec(),
    )
    .await;
    let json = String::from_utf8_lossy(&data);
    assert_eq!(http_status, 200, "{json}");
    assert!(json.contains(r#""value":"dg==""#), "the gateway reads the put back: {json}");
    put(port, "after", "ok").await.expect("the member keeps serving");
}
