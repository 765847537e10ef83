//! End-to-end tests of the transport over 127.0.0.1 with ephemeral ports.
#![allow(clippy::unwrap_used)]

use std::io::{self, Read};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use bytes::{BufMut, Bytes, BytesMut};
use raftkv_raft::{
    ClusterConfig, Entry, EntryKind, LogIndex, Message, MessageBody, NodeId, SnapshotMeta, Term,
};
use raftkv_transport::codec::{self, Hello, HelloOk, MAGIC, PROTOCOL_VERSION};
use raftkv_transport::{
    Inbound, MemorySnapshotSource, ReaderSnapshotSource, Report, StagedBody, StreamKind, Transport,
    TransportConfig, TransportHandle,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::mpsc;

const CLUSTER: u64 = 0xC1;

// ---- log capture: one global subscriber writing into a buffer tests can search.

#[derive(Clone)]
struct LogBuf(Arc<Mutex<Vec<u8>>>);

impl io::Write for LogBuf {
    fn write(&mut self, b: &[u8]) -> io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(b);
        Ok(b.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

fn logs() -> &'static LogBuf {
    static LOGS: OnceLock<LogBuf> = OnceLock::new();
    LOGS.get_or_init(|| {
        let buf = LogBuf(Arc::new(Mutex::new(Vec::new())));
        let writer = buf.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_max_level(tracing::Level::WARN)
            .with_ansi(false)
            .with_writer(move || writer.clone())
            .finish();
        let _ = tracing::subscriber::set_global_default(subscriber);
        buf
    })
}

fn logged(needle: &str) -> bool {
    String::from_utf8_lossy(&logs().0.lock().unwrap()).contains(needle)
}

// ---- helpers

struct Node {
    t: TransportHandle,
    inbound: mpsc::Receiver<Inbound>,
    reports: mpsc::Receiver<Report>,
}

fn config(cluster: u64, id: u64, addr: SocketAddr) -> TransportConfig {
    let mut c = TransportConfig::new(cluster, NodeId(id), addr);
    c.per_peer_queue = 50_000;
    c.backoff_min = Duration::from_millis(20);
    c.backoff_max = Duration::from_millis(200);
    c
}

async fn start(config: TransportConfig) -> Node {
    logs();
    let (itx, inbound) = mpsc::channel(4096);
    let (rtx, reports) = mpsc::channel(64);
    let t = Transport::start(config, itx, rtx).await.unwrap();
    Node { t, inbound, reports }
}

fn any_addr() -> SocketAddr {
    "127.0.0.1:0".parse().unwrap()
}

/// Starts `n` transports (ids 1..=n) that know each other, and waits until all connect.
async fn cluster(n: u64, tweak: impl Fn(&mut TransportConfig)) -> Vec<Node> {
    let mut nodes = Vec::new();
    for id in 1..=n {
        let mut c = config(CLUSTER, id, any_addr());
        tweak(&mut c);
        nodes.push(start(c).await);
    }
    let addrs: Vec<_> = nodes.iter().map(|n| n.t.local_addr()).collect();
    for (i, node) in nodes.iter().enumerate() {
        for (j, addr) in addrs.iter().enumerate() {
            if i != j {
                node.t.add_peer(NodeId(j as u64 + 1), addr.to_string());
            }
        }
    }
    for (i, node) in nodes.iter().enumerate() {
        for j in 0..n as usize {
            if i != j {
                wait_connected(&node.t, NodeId(j as u64 + 1)).await;
            }
        }
    }
    nodes
}

async fn wait_connected(t: &TransportHandle, peer: NodeId) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !t.is_connected(peer) {
        assert!(Instant::now() < deadline, "node {} never connected to {peer}", t.local_id());
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

fn hb(from: u64, to: u64, seq: u64) -> Message {
    Message {
        from: NodeId(from),
        to: NodeId(to),
        term: Term(1),
        body: MessageBody::Heartbeat { commit: LogIndex(seq), read_round: seq },
    }
}

fn append(from: u64, to: u64, seq: u64, payload: usize) -> Message {
    Message {
        from: NodeId(from),
        to: NodeId(to),
        term: Term(3),
        body: MessageBody::AppendEntries {
            prev_log_index: LogIndex(seq),
            prev_log_term: Term(3),
            entries: vec![Entry {
                term: Term(3),
                index: LogIndex(seq + 1),
                kind: EntryKind::Normal,
                data: Bytes::from(vec![(seq % 251) as u8; payload]),
            }],
            leader_commit: LogIndex(seq),
        },
    }
}

fn seq_of(m: &Message) -> u64 {
    match &m.body {
        MessageBody::Heartbeat { read_round, .. } => *read_round,
        MessageBody::AppendEntries { prev_log_index, .. } => prev_log_index.get(),
        other => panic!("unexpected {other:?}"),
    }
}

async fn recv_message(node: &mut Node) -> Message {
    match tokio::time::timeout(Duration::from_secs(10), node.inbound.recv()).await {
        Ok(Some(Inbound::Message(m))) => m,
        other => panic!("expected a message, got {other:?}"),
    }
}

/// The next snapshot report (unreachable reports from cluster setup races are skipped).
async fn snapshot_report(node: &mut Node) -> Report {
    loop {
        let r = tokio::time::timeout(Duration::from_secs(10), node.reports.recv()).await.unwrap().unwrap();
        if matches!(r, Report::Snapshot { .. }) {
            return r;
        }
    }
}

fn snapshot_msg(from: u64, to: u64) -> Message {
    Message {
        from: NodeId(from),
        to: NodeId(to),
        term: Term(4),
        body: MessageBody::InstallSnapshot {
            meta: SnapshotMeta {
                index: LogIndex(1000),
                term: Term(4),
                config: ClusterConfig::new([NodeId(1), NodeId(2)]),
            },
        },
    }
}

fn body(len: usize) -> Bytes {
    let mut x = 0x1234_5678u32;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            x as u8
        })
        .collect::<Vec<u8>>()
        .into()
}

// ---- tests

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_transports_exchange_thousands_in_order_and_batch() {
    let mut nodes = cluster(2, |_| {}).await;
    let n = 20_000u64;
    for i in 0..n {
        nodes[0].t.send(hb(1, 2, i)).unwrap();
        nodes[1].t.send(append(2, 1, i, 32)).unwrap();
    }
    let (a, b) = nodes.split_at_mut(1);
    for i in 0..n {
        let m = recv_message(&mut b[0]).await;
        assert_eq!((m.from, m.to, seq_of(&m)), (NodeId(1), NodeId(2), i));
        let m = recv_message(&mut a[0]).await;
        assert_eq!((m.from, seq_of(&m)), (NodeId(2), i));
        let MessageBody::AppendEntries { entries, .. } = &m.body else { panic!() };
        assert_eq!(entries[0].data, Bytes::from(vec![(i % 251) as u8; 32]));
    }
    let s = nodes[0].t.stats();
    assert_eq!(s.messages_sent, n);
    assert_eq!(s.messages_dropped, 0);
    assert_eq!(s.messages_received, n);
    // Without batching every message is a write of its own. How many a write carries depends
    // on how far the senders run ahead of the writer task, which a busy machine changes
    // (under ten per write with other tests beside it), so the bound asks for a clear margin
    // over one, not a ratio that depends on scheduling.
    assert!(
        s.batches_sent * 4 < s.messages_sent,
        "batching: {} messages in {} writes",
        s.messages_sent,
        s.batches_sent
    );
    eprintln!("two transports: {} messages in {} batch writes", s.messages_sent, s.batches_sent);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_transports_all_to_all() {
    let mut nodes = cluster(3, |_| {}).await;
    let n = 3000u64;
    for i in 0..n {
        for from in 1..=3u64 {
            for to in 1..=3u64 {
                if from != to {
                    nodes[from as usize - 1].t.send(hb(from, to, i)).unwrap();
                }
            }
        }
    }
    for node in nodes.iter_mut() {
        let me = node.t.local_id().get();
        let mut next = [0u64; 4];
        for _ in 0..2 * n {
            let m = recv_message(node).await;
            assert_eq!(m.to.get(), me);
            let from = m.from.get() as usize;
            assert_eq!(seq_of(&m), next[from], "order from {from} at {me}");
            next[from] += 1;
        }
    }
    for node in &nodes {
        assert_eq!(node.t.stats().messages_dropped, 0);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reconnects_after_peer_restart() {
    let mut nodes = cluster(2, |_| {}).await;
    nodes[0].t.send(hb(1, 2, 0)).unwrap();
    assert_eq!(seq_of(&recv_message(&mut nodes[1]).await), 0);

    // Restart node 2 on the same port.
    let b = nodes.pop().unwrap();
    let addr = b.t.local_addr();
    b.t.shutdown().await;
    drop(b);
    let mut b2 = start(config(CLUSTER, 2, addr)).await;
    b2.t.add_peer(NodeId(1), nodes[0].t.local_addr().to_string());

    // Keep sending: messages while the link is down are dropped, then new ones arrive.
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut seq = 1;
    let got = loop {
        assert!(Instant::now() < deadline, "never reconnected: {:?}", nodes[0].t.stats());
        let _ = nodes[0].t.send(hb(1, 2, seq));
        seq += 1;
        if let Ok(Some(Inbound::Message(m))) =
            tokio::time::timeout(Duration::from_millis(20), b2.inbound.recv()).await
        {
            break m;
        }
    };
    assert_eq!(got.from, NodeId(1));
    let s = nodes[0].t.stats();
    assert!(s.reconnects >= 1, "{s:?}");
    // After reconnecting, delivery is reliable and ordered again.
    wait_connected(&nodes[0].t, NodeId(2)).await;
    let first = seq_of(&got);
    for i in 0..100 {
        nodes[0].t.send(hb(1, 2, 1_000_000 + i)).unwrap();
    }
    let mut expect = 1_000_000;
    while expect < 1_000_100 {
        let s = seq_of(&recv_message(&mut b2).await);
        if s >= 1_000_000 {
            assert_eq!(s, expect);
            expect += 1;
        } else {
            assert!(s > first);
        }
    }
    // Node 1 learned node 2 was unreachable while it was down.
    let mut unreachable = false;
    while let Ok(r) = nodes[0].reports.try_recv() {
        unreachable |= r == Report::Unreachable(NodeId(2));
    }
    assert!(unreachable);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn member_of_another_cluster_is_refused() {
    let mut a = start(config(CLUSTER, 1, any_addr())).await;
    let stranger = start(config(0xBAD0_C105, 7, any_addr())).await;
    a.t.add_peer(NodeId(7), stranger.t.local_addr().to_string());
    stranger.t.add_peer(NodeId(1), a.t.local_addr().to_string());
    let deadline = Instant::now() + Duration::from_secs(10);
    while stranger.t.stats().refused_by_peer == 0 || a.t.stats().refused_inbound == 0 {
        assert!(Instant::now() < deadline);
        let _ = stranger.t.send(hb(7, 1, 1));
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // Both sides say why, naming both cluster ids.
    assert!(logged("refused: cluster id mismatch (acceptor 0xc1, dialer 0xbad0c105)"));
    assert!(logged("refusing connection: cluster id mismatch (acceptor 0xc1, dialer 0xbad0c105)"));
    assert!(!stranger.t.is_connected(NodeId(1)));
    assert!(a.inbound.try_recv().is_err(), "nothing from another cluster may be delivered");
    assert_eq!(a.t.stats().messages_received, 0);
}

/// A raw client that performs the handshake as `from`.
async fn raw_client(addr: SocketAddr, cluster: u64, from: u64, to: u64) -> (TcpStream, Option<Bytes>) {
    let mut s = TcpStream::connect(addr).await.unwrap();
    let mut buf = BytesMut::new();
    Hello {
        magic: MAGIC,
        protocol_version: PROTOCOL_VERSION,
        cluster_id: cluster,
        from: NodeId(from),
        to: NodeId(to),
        stream: StreamKind::Messages,
    }
    .encode(&mut buf);
    s.write_all(&buf).await.unwrap();
    let mut head = [0u8; 5];
    s.read_exact(&mut head).await.unwrap();
    let len = u32::from_be_bytes([head[0], head[1], head[2], head[3]]) as usize;
    let mut payload = vec![0u8; len - 1];
    s.read_exact(&mut payload).await.unwrap();
    if head[4] == codec::FrameType::HelloOk as u8 {
        let ok = HelloOk::decode(Bytes::from(payload)).unwrap();
        assert_eq!(ok.node_id, NodeId(to));
        (s, None)
    } else {
        (s, Some(Bytes::from(payload)))
    }
}

/// Whether the server closes `s` within a few seconds (reads EOF or a reset).
async fn closed_by_server(s: &mut TcpStream) -> bool {
    let mut b = [0u8; 256];
    loop {
        match tokio::time::timeout(Duration::from_secs(5), s.read(&mut b)).await {
            Err(_) => return false,
            Ok(Ok(0)) | Ok(Err(_)) => return true,
            Ok(Ok(_)) => continue,
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_input_closes_only_that_connection() {
    let mut nodes = cluster(2, |c| c.max_frame_bytes = 4 * 1024 * 1024).await;
    let addr = nodes[0].t.local_addr();
    nodes[0].t.add_peer(NodeId(3), "127.0.0.1:1".to_string());
    let before = nodes[0].t.stats().malformed_closed;

    // 1. Garbage before any handshake.
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").await.unwrap();
    assert!(closed_by_server(&mut s).await);

    // 2. An oversized frame length after a valid handshake.
    let (mut s, refused) = raw_client(addr, CLUSTER, 3, 1).await;
    assert!(refused.is_none());
    s.write_all(&[0x7f, 0xff, 0xff, 0xff, 0x10]).await.unwrap();
    assert!(closed_by_server(&mut s).await);

    // 3. A well-framed but undecodable message.
    let (mut s, _) = raw_client(addr, CLUSTER, 3, 1).await;
    let mut f = BytesMut::new();
    f.put_u32(6);
    f.put_u8(0x10);
    f.put_slice(&[1, 0xff, 0xff, 0xff, 0xff]);
    s.write_all(&f).await.unwrap();
    assert!(closed_by_server(&mut s).await);

    // 4. A valid message that lies about its sender.
    let (mut s, _) = raw_client(addr, CLUSTER, 3, 1).await;
    let mut f = BytesMut::new();
    codec::encode_message_frame(&hb(2, 1, 5), 1 << 20, &mut f).unwrap();
    s.write_all(&f).await.unwrap();
    assert!(closed_by_server(&mut s).await);

    // 5. Unknown frame type.
    let (mut s, _) = raw_client(addr, CLUSTER, 3, 1).await;
    s.write_all(&[0, 0, 0, 1, 0x99]).await.unwrap();
    assert!(closed_by_server(&mut s).await);

    // 6. Unknown peer and wrong member are refused with a reason.
    let (_s, refused) = raw_client(addr, CLUSTER, 9, 1).await;
    assert!(codec::HelloRefused::decode(refused.unwrap()).unwrap().reason.contains("not a known peer"));
    let (_s, refused) = raw_client(addr, CLUSTER, 3, 5).await;
    assert!(codec::HelloRefused::decode(refused.unwrap()).unwrap().reason.contains("wrong member"));

    let after = nodes[0].t.stats().malformed_closed;
    assert!(after >= before + 5, "{after} vs {before}");
    assert!(logged("closing connection: malformed input from peer"));
    assert!(logged("exceeds the limit of 4194304"));

    // The good peer was never disturbed.
    for i in 0..1000 {
        nodes[1].t.send(hb(2, 1, i)).unwrap();
    }
    for i in 0..1000 {
        assert_eq!(seq_of(&recv_message(&mut nodes[0]).await), i);
    }
    assert!(nodes[1].t.is_connected(NodeId(1)));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn handshake_timeout_closes_silent_connection() {
    let a = start({
        let mut c = config(CLUSTER, 1, any_addr());
        c.handshake_timeout = Duration::from_millis(200);
        c
    })
    .await;
    let mut s = TcpStream::connect(a.t.local_addr()).await.unwrap();
    let t0 = Instant::now();
    assert!(closed_by_server(&mut s).await);
    assert!(t0.elapsed() < Duration::from_secs(3));
}

/// A reader that sleeps a little per read, so a transfer takes a while.
struct SlowReader {
    data: Bytes,
    pos: usize,
}

impl Read for SlowReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        std::thread::sleep(Duration::from_millis(10));
        let n = buf.len().min(self.data.len() - self.pos);
        buf[..n].copy_from_slice(&self.data[self.pos..self.pos + n]);
        self.pos += n;
        Ok(n)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn snapshot_streams_while_appends_keep_flowing() {
    let mut nodes = cluster(2, |c| c.snapshot_chunk_bytes = 256 * 1024).await;
    let data = body(6 * 1024 * 1024 + 12345);
    let source = ReaderSnapshotSource::new(SlowReader { data: data.clone(), pos: 0 }, data.len() as u64);
    nodes[0].t.send_snapshot(snapshot_msg(1, 2), Box::new(source)).unwrap();
    // A second transfer to the same peer is refused while the first runs.
    assert!(
        nodes[0]
            .t
            .send_snapshot(snapshot_msg(1, 2), Box::new(MemorySnapshotSource::new(data.clone())))
            .is_err()
    );

    let sender = nodes[0].t.clone();
    let pump = tokio::spawn(async move {
        let mut i = 0;
        while i < 100_000 {
            if sender.send(append(1, 2, i, 64)).is_ok() {
                i += 1;
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    });
    let mut appends_before_snapshot = 0;
    let staged = loop {
        match tokio::time::timeout(Duration::from_secs(30), nodes[1].inbound.recv()).await.unwrap().unwrap() {
            Inbound::Message(m) => {
                assert_eq!(seq_of(&m), appends_before_snapshot);
                appends_before_snapshot += 1;
            }
            Inbound::Snapshot { message, staged } => {
                assert_eq!(message, snapshot_msg(1, 2));
                break staged;
            }
        }
    };
    pump.abort();
    assert_eq!(staged.len, data.len() as u64);
    assert_eq!(staged.crc32c, crc32c::crc32c(&data));
    assert_eq!(staged.body, StagedBody::Memory(data));
    let report = snapshot_report(&mut nodes[0]).await;
    assert_eq!(report, Report::Snapshot { to: NodeId(2), ok: true });
    eprintln!("appends delivered during the snapshot transfer: {appends_before_snapshot}");
    assert!(appends_before_snapshot >= 10, "appends blocked behind the snapshot: {appends_before_snapshot}");
    assert_eq!(nodes[0].t.stats().snapshots_sent, 1);
    assert_eq!(nodes[1].t.stats().snapshots_received, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn corrupted_snapshot_chunk_is_rejected() {
    let mut nodes = cluster(2, |c| {
        c.snapshot_chunk_bytes = 64 * 1024;
        c.faults.corrupt_snapshot_chunk = Some(3);
    })
    .await;
    let data = body(1024 * 1024);
    nodes[0].t.send_snapshot(snapshot_msg(1, 2), Box::new(MemorySnapshotSource::new(data))).unwrap();
    let report = snapshot_report(&mut nodes[0]).await;
    assert_eq!(report, Report::Snapshot { to: NodeId(2), ok: false });
    assert_eq!(nodes[1].t.stats().snapshots_rejected, 1);
    assert_eq!(nodes[1].t.stats().snapshots_received, 0);
    assert!(logged("CRC mismatch in chunk at offset 196608"));
    // Nothing reached the driver, and messages still flow.
    nodes[0].t.send(hb(1, 2, 0)).unwrap();
    assert_eq!(seq_of(&recv_message(&mut nodes[1]).await), 0);
    // A clean retry succeeds.
    assert!(
        nodes[0].t.send_snapshot(snapshot_msg(1, 2), Box::new(MemorySnapshotSource::new(body(1000)))).is_ok()
    );
    let report = snapshot_report(&mut nodes[0]).await;
    // The fault hook corrupts chunk 3 only; a 1000-byte body has one chunk.
    assert_eq!(report, Report::Snapshot { to: NodeId(2), ok: true });
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unreachable_peer_drops_and_reports() {
    let mut a = start(config(CLUSTER, 1, any_addr())).await;
    // Reserve a port with nothing listening on it.
    let dead = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
    a.t.add_peer(NodeId(2), dead.to_string());
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let _ = a.t.send(hb(1, 2, 0));
        if let Ok(r) = a.reports.try_recv() {
            assert_eq!(r, Report::Unreachable(NodeId(2)));
            break;
        }
        assert!(Instant::now() < deadline);
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert!(a.t.stats().messages_dropped > 0);
    assert!(a.t.stats().connect_failures > 0);
    // Sends never block and the queue never grows without bound.
    for i in 0..100_000 {
        let _ = a.t.send(hb(1, 2, i));
    }
    assert!(a.t.send(hb(1, 9, 0)).is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn throughput_two_transports() {
    let mut nodes = cluster(2, |c| c.per_peer_queue = 100_000).await;
    let n = 200_000u64;
    let t0 = Instant::now();
    let sender = nodes[0].t.clone();
    let pump = tokio::spawn(async move {
        let mut i = 0;
        while i < n {
            match sender.send(append(1, 2, i, 100)) {
                Ok(()) => i += 1,
                Err(_) => tokio::task::yield_now().await,
            }
        }
    });
    let mut got = 0;
    while got < n {
        let m = recv_message(&mut nodes[1]).await;
        assert_eq!(seq_of(&m), got);
        got += 1;
    }
    pump.await.unwrap();
    let secs = t0.elapsed().as_secs_f64();
    let s = nodes[0].t.stats();
    eprintln!(
        "throughput: {n} AppendEntries (1 entry of 100 B) in {secs:.2} s = {:.0} msgs/s, {:.1} MB/s, {} batches",
        n as f64 / secs,
        s.bytes_sent as f64 / secs / 1e6,
        s.batches_sent
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_that_connects_in_is_dialed_without_waiting_for_the_backoff() {
    // Node 1's backoff towards node 2 is long (30 s after the first failed dial).
    let mut c1 = config(CLUSTER, 1, any_addr());
    c1.backoff_min = Duration::from_secs(30);
    c1.backoff_max = Duration::from_secs(30);
    let mut a = start(c1).await;
    let reserved = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr2 = reserved.local_addr().unwrap();
    drop(reserved);
    a.t.add_peer(NodeId(2), addr2.to_string());
    // Wait until node 1 has failed to dial node 2 and sleeps in its backoff.
    let deadline = Instant::now() + Duration::from_secs(10);
    while a.t.stats().connect_failures == 0 {
        let _ = a.t.send(hb(1, 2, 0));
        assert!(Instant::now() < deadline, "node 1 never tried to dial");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    // Node 2 comes up and talks to node 1 first.
    let mut b = start(config(CLUSTER, 2, addr2)).await;
    b.t.add_peer(NodeId(1), a.t.local_addr().to_string());
    b.t.send(hb(2, 1, 7)).unwrap();
    assert_eq!(seq_of(&recv_message(&mut a).await), 7);
    // Node 1 reaches node 2 long before its 30 s backoff ends.
    let started = Instant::now();
    let got = tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            let _ = a.t.send(hb(1, 2, 9));
            if let Ok(Some(Inbound::Message(m))) =
                tokio::time::timeout(Duration::from_millis(50), b.inbound.recv()).await
            {
                return m;
            }
        }
    })
    .await
    .expect("node 1 redials node 2 once node 2 has connected in");
    assert_eq!(seq_of(&got), 9);
    assert!(started.elapsed() < Duration::from_secs(5));
}

/// Peers learned and forgotten at runtime: a member added later connects; a member marked
/// removed is refused, and learns from the refusal that it was removed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn peers_are_added_at_runtime_and_a_removed_member_is_told() {
    let mut nodes = cluster(2, |_| {}).await;
    let mut third = start(config(CLUSTER, 3, any_addr())).await;
    // A stranger is refused as unknown, and told so.
    third.t.add_peer(NodeId(1), nodes[0].t.local_addr().to_string());
    let deadline = Instant::now() + Duration::from_secs(10);
    let report = loop {
        assert!(Instant::now() < deadline, "no refusal reported");
        let _ = third.t.send(hb(3, 1, 1));
        if let Ok(Some(r)) = tokio::time::timeout(Duration::from_millis(50), third.reports.recv()).await
            && matches!(r, Report::RefusedBy { .. })
        {
            break r;
        }
    };
    assert_eq!(report, Report::RefusedBy { by: NodeId(1), removed: false });
    // Once added, it connects and its messages arrive.
    nodes[0].t.add_peer(NodeId(3), third.t.local_addr().to_string());
    wait_connected(&nodes[0].t, NodeId(3)).await;
    let got = loop {
        let _ = third.t.send(hb(3, 1, 2));
        if let Ok(Some(Inbound::Message(m))) =
            tokio::time::timeout(Duration::from_millis(50), nodes[0].inbound.recv()).await
            && m.from == NodeId(3)
        {
            break m;
        }
    };
    assert_eq!(got.to, NodeId(1));
    // Removed: its connections are refused with the reason, and it is told.
    nodes[0].t.mark_removed(NodeId(3));
    assert!(!nodes[0].t.peers().contains_key(&NodeId(3)));
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        assert!(Instant::now() < deadline, "the removed member was never told");
        let _ = third.t.send(hb(3, 1, 3));
        if let Ok(Some(Report::RefusedBy { by, removed: true })) =
            tokio::time::timeout(Duration::from_millis(50), third.reports.recv()).await
        {
            assert_eq!(by, NodeId(1));
            break;
        }
    }
    assert!(logged("node 3 was removed from the cluster"));
}

/// A member about to join asks a peer which cluster it belongs to.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn discovery_tells_the_cluster_id_and_node_id() {
    let nodes = cluster(1, |_| {}).await;
    let addr = nodes[0].t.local_addr().to_string();
    let found = raftkv_transport::discover(&addr, None, Duration::from_secs(5)).await.unwrap();
    assert_eq!(found, (CLUSTER, NodeId(1)));
    assert_eq!(nodes[0].t.stats().messages_received, 0);
}
