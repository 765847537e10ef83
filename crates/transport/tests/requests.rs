//! The requests stream (a request/answer exchange between members, handed to the service a
//! member registers) and the members stream (a member list for a member about to join).
#![allow(clippy::unwrap_used)]

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use raftkv_raft::NodeId;
use raftkv_transport::codec::RefusalCode;
use raftkv_transport::{
    DialError, Inbound, PeerMember, PeerService, Report, RequestError, RequestFuture, ResponseCode,
    Transport, TransportConfig, TransportHandle,
};
use tokio::sync::mpsc;

const CLUSTER: u64 = 0xC1;

/// Answers `from <id>: <body>`; a body `sleep <ms>` first sleeps that long, `big <n>`
/// answers n bytes, `fail` fails.
struct Echo {
    members: Vec<PeerMember>,
}

impl PeerService for Echo {
    fn request(&self, from: NodeId, body: Bytes) -> RequestFuture {
        Box::pin(async move {
            let text = String::from_utf8_lossy(&body).into_owned();
            if let Some(ms) = text.strip_prefix("sleep ") {
                tokio::time::sleep(Duration::from_millis(ms.parse().unwrap_or(0))).await;
            }
            if let Some(n) = text.strip_prefix("big ") {
                return Ok(Bytes::from(vec![b'x'; n.parse().unwrap_or(0)]));
            }
            if text == "fail" {
                return Err("asked to fail".into());
            }
            Ok(Bytes::from(format!("from {}: {text}", from.0)))
        })
    }

    fn members(&self) -> Vec<PeerMember> {
        self.members.clone()
    }
}

struct Node {
    t: TransportHandle,
    _inbound: mpsc::Receiver<Inbound>,
    _reports: mpsc::Receiver<Report>,
}

async fn start(cluster: u64, id: u64, tweak: impl Fn(&mut TransportConfig)) -> Node {
    let mut c = TransportConfig::new(cluster, NodeId(id), "127.0.0.1:0".parse::<SocketAddr>().unwrap());
    c.backoff_min = Duration::from_millis(20);
    c.backoff_max = Duration::from_millis(200);
    tweak(&mut c);
    let (itx, inbound) = mpsc::channel(4096);
    let (rtx, reports) = mpsc::channel(64);
    let t = Transport::start(c, itx, rtx).await.unwrap();
    Node { t, _inbound: inbound, _reports: reports }
}

fn echo() -> Arc<Echo> {
    Arc::new(Echo {
        members: vec![
            PeerMember {
                id: NodeId(1),
                name: "m1".into(),
                peer_urls: vec!["http://127.0.0.1:1".into()],
                is_learner: false,
            },
            PeerMember {
                id: NodeId(2),
                name: String::new(),
                peer_urls: vec!["http://127.0.0.1:2".into()],
                is_learner: true,
            },
        ],
    })
}

/// Two members that know each other; member 1 has the echo service.
async fn pair(tweak: impl Fn(&mut TransportConfig)) -> (Node, Node) {
    let a = start(CLUSTER, 1, &tweak).await;
    let b = start(CLUSTER, 2, &tweak).await;
    a.t.add_peer(NodeId(2), b.t.local_addr().to_string());
    b.t.add_peer(NodeId(1), a.t.local_addr().to_string());
    a.t.set_service(echo());
    (a, b)
}

const SECOND: Duration = Duration::from_secs(1);

fn text(b: Bytes) -> String {
    String::from_utf8_lossy(&b).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_are_answered_by_the_service_and_connections_reused() {
    let (a, b) = pair(|_| {}).await;
    for i in 0..50 {
        let got = b.t.request(NodeId(1), Bytes::from(format!("q{i}")), SECOND).await.unwrap();
        assert_eq!(text(got), format!("from 2: q{i}"));
    }
    // Concurrent requests each get their own answer.
    let mut tasks = Vec::new();
    for i in 0..20 {
        let t = b.t.clone();
        tasks.push(tokio::spawn(
            async move { t.request(NodeId(1), Bytes::from(format!("c{i}")), SECOND).await },
        ));
    }
    for (i, task) in tasks.into_iter().enumerate() {
        assert_eq!(text(task.await.unwrap().unwrap()), format!("from 2: c{i}"));
    }
    let (sa, sb) = (a.t.stats(), b.t.stats());
    assert_eq!((sb.requests_sent, sb.requests_failed), (70, 0));
    assert_eq!(sa.requests_served, 70);
    // The handler's failure comes back with its reason.
    match b.t.request(NodeId(1), Bytes::from_static(b"fail"), SECOND).await {
        Err(RequestError::Remote { code: ResponseCode::Failed, reason }) => {
            assert_eq!(reason, "asked to fail")
        }
        other => panic!("{other:?}"),
    }
    // Nothing leaked into the Raft side.
    assert_eq!(sa.messages_received, 0);
}

/// Waits (at most 10 s) until `done` holds, failing early if `task` ends first.
async fn wait_until<T>(task: &tokio::task::JoinHandle<T>, done: impl Fn() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !done() {
        assert!(!task.is_finished(), "the request ended before it was served");
        assert!(Instant::now() < deadline, "the request was not served within 10 s");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sizes_deadlines_and_requests_in_flight_are_bounded() {
    let (a, b) = pair(|c| {
        c.max_request_bytes = 1024;
        c.max_requests_served = 1;
        c.max_requests_in_flight = 2;
    })
    .await;
    let big = Bytes::from(vec![b'y'; 1025]);
    assert!(matches!(
        b.t.request(NodeId(1), big, SECOND).await,
        Err(RequestError::TooLarge { len: 1025, max: 1024 })
    ));
    match b.t.request(NodeId(1), Bytes::from_static(b"big 2000"), SECOND).await {
        Err(RequestError::Remote { code: ResponseCode::Failed, reason }) => {
            assert!(reason.contains("exceeds the limit"), "{reason}")
        }
        other => panic!("{other:?}"),
    }
    // The acceptor gives up on a handler after the request's own timeout ...
    let started = Instant::now();
    match b.t.request(NodeId(1), Bytes::from_static(b"sleep 5000"), Duration::from_millis(300)).await {
        Err(RequestError::Remote { code: ResponseCode::TimedOut, .. }) | Err(RequestError::Timeout) => {}
        other => panic!("{other:?}"),
    }
    assert!(started.elapsed() < Duration::from_secs(2));
    // The sender's own timeout can fire before the acceptor's (which starts later), so the
    // timed-out handler may still hold the one slot for a moment: wait until a quick request
    // is served again before the concurrency check.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match b.t.request(NodeId(1), Bytes::from_static(b"probe"), SECOND).await {
            Ok(got) => {
                assert_eq!(text(got), "from 2: probe");
                break;
            }
            Err(e) => assert!(Instant::now() < deadline, "the acceptor never served again: {e:?}"),
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // ... and handles one at a time here: a second concurrent request is answered Overloaded.
    let served = a.t.stats().requests_served;
    let t = b.t.clone();
    let slow =
        tokio::spawn(
            async move { t.request(NodeId(1), Bytes::from_static(b"sleep 1000"), SECOND * 5).await },
        );
    wait_until(&slow, || a.t.stats().requests_served > served).await;
    let refused = b.t.request(NodeId(1), Bytes::from_static(b"quick"), SECOND).await;
    assert!(
        matches!(&refused, Err(e @ RequestError::Remote { code: ResponseCode::Overloaded, .. }) if e.unhandled()),
        "{refused:?}"
    );
    assert_eq!(text(slow.await.unwrap().unwrap()), "from 2: sleep 1000");
    assert!(a.t.stats().requests_refused >= 1);

    // The sender waits for at most two answers at once (the acceptor here serves many).
    let (a, b) = pair(|c| c.max_requests_in_flight = 2).await;
    let mut slow = Vec::new();
    for _ in 0..2 {
        let t = b.t.clone();
        slow.push(tokio::spawn(async move {
            t.request(NodeId(1), Bytes::from_static(b"sleep 1000"), SECOND * 5).await
        }));
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    while a.t.stats().requests_served < 2 {
        assert!(Instant::now() < deadline, "the two slow requests were not both served");
        assert!(slow.iter().all(|s| !s.is_finished()), "a slow request ended early");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert!(matches!(
        b.t.request(NodeId(1), Bytes::from_static(b"x"), SECOND).await,
        Err(RequestError::Busy)
    ));
    for s in slow {
        assert_eq!(text(s.await.unwrap().unwrap()), "from 2: sleep 1000");
    }
    assert!(matches!(
        b.t.request(NodeId(9), Bytes::from_static(b"x"), SECOND).await,
        Err(RequestError::UnknownPeer(_))
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_without_a_service_answers_not_ready() {
    let (a, b) = pair(|_| {}).await;
    match a.t.request(NodeId(2), Bytes::from_static(b"x"), SECOND).await {
        Err(e @ RequestError::Remote { code: ResponseCode::NotReady, .. }) => assert!(e.unhandled()),
        other => panic!("{other:?}"),
    }
    assert_eq!(b.t.stats().requests_refused, 1);
}

/// The handshake's checks apply: a member of another cluster, an unknown member and a
/// removed member (also on a connection it opened before its removal) are not served.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn strangers_and_removed_members_are_refused() {
    let (a, b) = pair(|_| {}).await;
    let addr = a.t.local_addr().to_string();
    let other = start(0xBAD, 2, |_| {}).await;
    other.t.add_peer(NodeId(1), addr.clone());
    match other.t.request(NodeId(1), Bytes::from_static(b"x"), SECOND).await {
        Err(e @ RequestError::Dial(DialError::Refused(RefusalCode::ClusterIdMismatch, _))) => {
            assert!(e.unhandled())
        }
        r => panic!("{r:?}"),
    }
    let unknown = start(CLUSTER, 3, |_| {}).await;
    unknown.t.add_peer(NodeId(1), addr.clone());
    assert!(matches!(
        unknown.t.request(NodeId(1), Bytes::from_static(b"x"), SECOND).await,
        Err(RequestError::Dial(DialError::Refused(RefusalCode::UnknownPeer, _)))
    ));

    // A kept connection first, then the removal.
    assert_eq!(
        text(b.t.request(NodeId(1), Bytes::from_static(b"before"), SECOND).await.unwrap()),
        "from 2: before"
    );
    a.t.mark_removed(NodeId(2));
    match b.t.request(NodeId(1), Bytes::from_static(b"after"), SECOND).await {
        Err(RequestError::Dial(DialError::Refused(RefusalCode::Removed, reason))) => {
            assert!(reason.contains("removed"), "{reason}")
        }
        r => panic!("{r:?}"),
    }
    assert_eq!(a.t.stats().requests_served, 1);
}

/// Anyone may ask for the member list (no cluster or member id needed), and learns ids,
/// names and peer URLs; a member still starting refuses until its service is registered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_members_stream_tells_the_member_list() {
    let (a, b) = pair(|_| {}).await;
    let found =
        raftkv_transport::discover_members(&a.t.local_addr().to_string(), None, SECOND * 5).await.unwrap();
    assert_eq!((found.cluster_id, found.member_id), (CLUSTER, NodeId(1)));
    assert_eq!(found.members, echo().members);
    assert_eq!(a.t.stats().member_lists_sent, 1);
    match raftkv_transport::discover_members(&b.t.local_addr().to_string(), None, SECOND * 5).await {
        Err(DialError::Refused(RefusalCode::Overloaded, reason)) => {
            assert!(reason.contains("starting"), "{reason}")
        }
        r => panic!("{r:?}"),
    }
    // Nothing else comes out of a members stream: no request is served on it.
    assert_eq!(a.t.stats().requests_served, 0);
}
