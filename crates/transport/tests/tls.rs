//! The transport over TLS: mutual authentication, refusals before any frame is read, and the
//! cluster-id check kept under TLS.
#![allow(clippy::unwrap_used)]

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use raftkv_raft::{ClusterConfig, LogIndex, Message, MessageBody, NodeId, SnapshotMeta, Term};
use raftkv_transport::{
    Inbound, MemorySnapshotSource, PeerTlsConfig, Report, Transport, TransportConfig, TransportHandle,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::mpsc;
use tokio_rustls::rustls;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};

const CLUSTER: u64 = 0xC1;

struct Ca {
    cert: rcgen::Certificate,
    key: rcgen::KeyPair,
}

fn new_ca() -> Ca {
    let key = rcgen::KeyPair::generate().unwrap();
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    params.distinguished_name.push(rcgen::DnType::CommonName, "test CA");
    Ca { cert: params.self_signed(&key).unwrap(), key }
}

/// A member certificate for 127.0.0.1 signed by `ca`, usable as server and client.
fn leaf(ca: &Ca) -> (CertificateDer<'static>, PrivateKeyDer<'static>) {
    let key = rcgen::KeyPair::generate().unwrap();
    let mut params = rcgen::CertificateParams::new(vec!["127.0.0.1".to_string()]).unwrap();
    params.extended_key_usages =
        vec![rcgen::ExtendedKeyUsagePurpose::ServerAuth, rcgen::ExtendedKeyUsagePurpose::ClientAuth];
    let cert = params.signed_by(&key, &ca.cert, &ca.key).unwrap();
    (cert.der().clone(), PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der())))
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Mutual TLS: presents a certificate from `own`, trusts `trusted` for peers.
fn tls(own: &Ca, trusted: &Ca, client_auth: bool) -> PeerTlsConfig {
    let (cert, key) = leaf(own);
    let mut roots = rustls::RootCertStore::empty();
    roots.add(trusted.cert.der().clone()).unwrap();
    let roots = Arc::new(roots);
    let server = rustls::ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .unwrap();
    let server = if client_auth {
        let v = rustls::server::WebPkiClientVerifier::builder_with_provider(roots.clone(), provider())
            .build()
            .unwrap();
        server.with_client_cert_verifier(v).with_single_cert(vec![cert.clone()], key.clone_key()).unwrap()
    } else {
        server.with_no_client_auth().with_single_cert(vec![cert.clone()], key.clone_key()).unwrap()
    };
    let client = rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_client_auth_cert(vec![cert], key)
        .unwrap();
    PeerTlsConfig { server: Arc::new(server), client: Arc::new(client) }
}

struct Node {
    t: TransportHandle,
    inbound: mpsc::Receiver<Inbound>,
    reports: mpsc::Receiver<Report>,
}

async fn start(cluster: u64, id: u64, tls: Option<PeerTlsConfig>) -> Node {
    let mut c = TransportConfig::new(cluster, NodeId(id), "127.0.0.1:0".parse::<SocketAddr>().unwrap());
    c.backoff_min = Duration::from_millis(20);
    c.backoff_max = Duration::from_millis(200);
    c.tls = tls;
    let (itx, inbound) = mpsc::channel(4096);
    let (rtx, reports) = mpsc::channel(64);
    let t = Transport::start(c, itx, rtx).await.unwrap();
    Node { t, inbound, reports }
}

fn hb(from: u64, to: u64, commit: u64) -> Message {
    Message {
        from: NodeId(from),
        to: NodeId(to),
        term: Term(1),
        body: MessageBody::Heartbeat { commit: LogIndex(commit), read_round: 0 },
    }
}

async fn wait_connected(t: &TransportHandle, peer: NodeId) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !t.is_connected(peer) {
        assert!(Instant::now() < deadline, "node {} never connected to {peer}", t.local_id());
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// Keeps `from` sending to `to` until `to` has refused `n` inbound connections.
async fn until_refused(from: &Node, to: &Node, from_id: u64, to_id: u64) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while to.t.stats().refused_inbound == 0 {
        assert!(Instant::now() < deadline, "never refused: {:?}", to.t.stats());
        let _ = from.t.send(hb(from_id, to_id, 1));
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mutual_tls_carries_messages_and_snapshots() {
    let ca = new_ca();
    let mut a = start(CLUSTER, 1, Some(tls(&ca, &ca, true))).await;
    let mut b = start(CLUSTER, 2, Some(tls(&ca, &ca, true))).await;
    a.t.add_peer(NodeId(2), b.t.local_addr().to_string());
    b.t.add_peer(NodeId(1), a.t.local_addr().to_string());
    wait_connected(&a.t, NodeId(2)).await;
    wait_connected(&b.t, NodeId(1)).await;
    for i in 0..2000 {
        a.t.send(hb(1, 2, i)).unwrap();
    }
    for i in 0..2000 {
        let Some(Inbound::Message(m)) =
            tokio::time::timeout(Duration::from_secs(10), b.inbound.recv()).await.unwrap()
        else {
            panic!("expected a message")
        };
        assert_eq!(m, hb(1, 2, i));
    }
    let data = Bytes::from((0..3_000_000u32).map(|i| (i % 251) as u8).collect::<Vec<u8>>());
    let snap = Message {
        from: NodeId(1),
        to: NodeId(2),
        term: Term(4),
        body: MessageBody::InstallSnapshot {
            meta: SnapshotMeta {
                index: LogIndex(10),
                term: Term(4),
                config: ClusterConfig::new([NodeId(1), NodeId(2)]),
            },
        },
    };
    a.t.send_snapshot(snap.clone(), Box::new(MemorySnapshotSource::new(data.clone()))).unwrap();
    loop {
        match tokio::time::timeout(Duration::from_secs(20), b.inbound.recv()).await.unwrap().unwrap() {
            Inbound::Snapshot { message, .. } => {
                assert_eq!(message, snap);
                break;
            }
            Inbound::Message(_) => {}
        }
    }
    loop {
        let r = tokio::time::timeout(Duration::from_secs(20), a.reports.recv()).await.unwrap().unwrap();
        if let Report::Snapshot { ok, .. } = r {
            assert!(ok);
            break;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_with_a_certificate_from_another_ca_is_refused_before_any_message() {
    let ca = new_ca();
    let other = new_ca();
    let mut a = start(CLUSTER, 1, Some(tls(&ca, &ca, true))).await;
    // The intruder trusts a's CA (so it would accept a's certificate) but its own is not.
    let intruder = start(CLUSTER, 2, Some(tls(&other, &ca, true))).await;
    a.t.add_peer(NodeId(2), "127.0.0.1:1".to_string());
    intruder.t.add_peer(NodeId(1), a.t.local_addr().to_string());
    until_refused(&intruder, &a, 2, 1).await;
    assert!(!intruder.t.is_connected(NodeId(1)));
    assert_eq!(a.t.stats().messages_received, 0);
    assert!(a.inbound.try_recv().is_err(), "nothing from an untrusted peer may be delivered");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plain_tcp_and_garbage_on_a_tls_peer_port_are_refused() {
    let ca = new_ca();
    let mut a = start(CLUSTER, 1, Some(tls(&ca, &ca, true))).await;
    let plain = start(CLUSTER, 2, None).await;
    a.t.add_peer(NodeId(2), "127.0.0.1:1".to_string());
    plain.t.add_peer(NodeId(1), a.t.local_addr().to_string());
    until_refused(&plain, &a, 2, 1).await;
    assert!(!plain.t.is_connected(NodeId(1)));
    // Garbage: the connection is closed, the transport keeps serving.
    let mut s = tokio::net::TcpStream::connect(a.t.local_addr()).await.unwrap();
    s.write_all(&[0x16, 0x03, 0x01, 0xff, 0xff, 1, 2, 3, 4, 5, 6, 7, 8]).await.unwrap();
    let mut buf = [0u8; 64];
    let closed = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            match s.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    })
    .await;
    assert!(closed.is_ok(), "garbage connection not closed");
    assert!(a.inbound.try_recv().is_err());
    // A TLS dialer against a plain-text port fails its handshake; nothing is delivered.
    let mut p = start(CLUSTER, 3, None).await;
    let tls_dialer = start(CLUSTER, 4, Some(tls(&ca, &ca, true))).await;
    p.t.add_peer(NodeId(4), "127.0.0.1:1".to_string());
    tls_dialer.t.add_peer(NodeId(3), p.t.local_addr().to_string());
    let deadline = Instant::now() + Duration::from_secs(20);
    while tls_dialer.t.stats().connect_failures < 2 {
        assert!(Instant::now() < deadline);
        let _ = tls_dialer.t.send(hb(4, 3, 1));
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(!tls_dialer.t.is_connected(NodeId(3)));
    assert!(p.inbound.try_recv().is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_trusted_member_of_another_cluster_is_still_refused() {
    let ca = new_ca();
    let mut a = start(CLUSTER, 1, Some(tls(&ca, &ca, true))).await;
    let stranger = start(0xBAD, 2, Some(tls(&ca, &ca, true))).await;
    a.t.add_peer(NodeId(2), "127.0.0.1:1".to_string());
    stranger.t.add_peer(NodeId(1), a.t.local_addr().to_string());
    let deadline = Instant::now() + Duration::from_secs(20);
    while stranger.t.stats().refused_by_peer == 0 {
        assert!(Instant::now() < deadline, "{:?}", stranger.t.stats());
        let _ = stranger.t.send(hb(2, 1, 1));
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(a.inbound.try_recv().is_err());
}

struct Answer;

impl raftkv_transport::PeerService for Answer {
    fn request(&self, from: NodeId, body: Bytes) -> raftkv_transport::RequestFuture {
        Box::pin(async move { Ok(Bytes::from(format!("{}:{}", from.0, String::from_utf8_lossy(&body)))) })
    }
    fn members(&self) -> Vec<raftkv_transport::PeerMember> {
        Vec::new()
    }
}

/// Requests ride the same mutual TLS: a member with a trusted certificate gets answers, one
/// with a certificate from another CA fails the TLS handshake and is never served.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_need_a_trusted_certificate() {
    let ca = new_ca();
    let other = new_ca();
    let a = start(CLUSTER, 1, Some(tls(&ca, &ca, true))).await;
    a.t.set_service(Arc::new(Answer));
    let b = start(CLUSTER, 2, Some(tls(&ca, &ca, true))).await;
    let intruder = start(CLUSTER, 3, Some(tls(&other, &ca, true))).await;
    a.t.add_peer(NodeId(2), b.t.local_addr().to_string());
    a.t.add_peer(NodeId(3), intruder.t.local_addr().to_string());
    b.t.add_peer(NodeId(1), a.t.local_addr().to_string());
    intruder.t.add_peer(NodeId(1), a.t.local_addr().to_string());
    let got = b.t.request(NodeId(1), Bytes::from_static(b"hi"), Duration::from_secs(5)).await.unwrap();
    assert_eq!(&got[..], b"2:hi");
    let refused = intruder.t.request(NodeId(1), Bytes::from_static(b"hi"), Duration::from_secs(5)).await;
    assert!(matches!(refused, Err(raftkv_transport::RequestError::Dial(_))), "{refused:?}");
    assert_eq!(a.t.stats().requests_served, 1);
    // The member list over TLS needs a trusted certificate too.
    let members = raftkv_transport::discover_members(
        &a.t.local_addr().to_string(),
        Some(&tls(&ca, &ca, true)),
        Duration::from_secs(5),
    )
    .await
    .unwrap();
    assert_eq!(members.member_id, NodeId(1));
    assert!(
        raftkv_transport::discover_members(
            &a.t.local_addr().to_string(),
            Some(&tls(&other, &ca, true)),
            Duration::from_secs(5)
        )
        .await
        .is_err()
    );
}
