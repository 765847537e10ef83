//! The tokio side: listener, per-peer writer tasks, inbound readers, snapshot streams.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::{Bytes, BytesMut};
use raftkv_raft::{Message, MessageBody, NodeId};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Semaphore, mpsc, oneshot, watch};
use tokio::task::JoinHandle;
use tokio::time::timeout;
use tracing::{Instrument, debug, debug_span, warn};

use crate::codec::{
    self, DecodeError, EncodeError, FrameType, HANDSHAKE_MAX_FRAME_BYTES, Hello, HelloOk, HelloRefused,
    MAGIC, MemberList, PROTOCOL_VERSION, PeerMember, REQUEST_OVERHEAD, RESPONSE_OVERHEAD, RefusalCode,
    Request, Response, ResponseCode, SnapshotAck, SnapshotBegin, SnapshotChunk, SnapshotEnd, StreamKind,
};
use crate::config::{FaultInjection, TransportConfig};
use crate::frame_io::{FrameError, FrameReader};
use crate::snapshot::{BodyReceiver, SnapshotSink, SnapshotSinkFactory, SnapshotSource, StagedSnapshot};
use crate::stats::{Counters, TransportStats};
use crate::stream::{PeerStream, ReadHalf, WriteHalf};

/// What the transport hands the driver.
#[derive(Debug)]
pub enum Inbound {
    /// A message from a peer, for `raft.step`.
    Message(Message),
    /// A complete, verified snapshot: install `staged`, then step `message` (the
    /// InstallSnapshot) into the core.
    Snapshot { message: Message, staged: StagedSnapshot },
}

/// Feedback the driver passes on to the core.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Report {
    /// Messages to this peer were dropped (queue full or connection down): call
    /// `raft.report_unreachable`. Sent at most once until the peer is reachable again.
    Unreachable(NodeId),
    /// A transfer started by [`TransportHandle::send_snapshot`] ended: call
    /// `raft.report_snapshot(to, ok)`. Exactly one per accepted transfer.
    Snapshot { to: NodeId, ok: bool },
    /// Peer `by` refused this member's connection because it does not know this member
    /// (`removed: false`: not, or not yet, in its configuration) or because this member was
    /// removed from the cluster (`removed: true`). Sent once per refusal seen (repeated
    /// refusals with the same reason are not reported again until a connection succeeds).
    RefusedBy { by: NodeId, removed: bool },
}

/// Why [`Transport::start`] failed.
#[derive(Debug, thiserror::Error)]
pub enum TransportError {
    #[error("cannot listen on {addr}: {source}")]
    Bind { addr: SocketAddr, source: io::Error },
    #[error("invalid configuration: {0}")]
    Config(String),
}

/// Why [`TransportHandle::send`] dropped a message (it is counted in
/// [`TransportStats::messages_dropped`]). Raft tolerates message loss.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum SendError {
    #[error("no peer {0}")]
    UnknownPeer(NodeId),
    #[error("queue to peer {0} is full")]
    QueueFull(NodeId),
    #[error("peer {0} is disconnected")]
    Disconnected(NodeId),
    #[error("InstallSnapshot must go through send_snapshot")]
    SnapshotMessage,
    #[error("the transport is shut down")]
    Shutdown,
}

/// Why [`TransportHandle::send_snapshot`] did not start a transfer (no report follows).
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum SnapshotSendError {
    #[error("no peer {0}")]
    UnknownPeer(NodeId),
    #[error("a snapshot transfer to peer {0} is already running")]
    Busy(NodeId),
    #[error("not an InstallSnapshot message")]
    NotInstallSnapshot,
    #[error("the transport is shut down")]
    Shutdown,
}

/// What a handler's answer to a request resolves to: the answer's bytes, or why it failed
/// (sent back as [`ResponseCode::Failed`] with the text).
pub type RequestFuture = std::pin::Pin<Box<dyn std::future::Future<Output = Result<Bytes, String>> + Send>>;

/// The member's side of the requests and members streams, registered with
/// [`TransportHandle::set_service`]. Until one is registered, requests are answered
/// [`ResponseCode::NotReady`] and members streams are refused.
pub trait PeerService: Send + Sync + 'static {
    /// Answers a request from peer `from` (a known member that passed the handshake). The
    /// bytes are opaque to the transport; the answer must fit `max_request_bytes`.
    fn request(&self, from: NodeId, body: Bytes) -> RequestFuture;
    /// The member list the members stream tells anyone who asks (no handshake identity is
    /// required for it: keep it to ids, names and peer URLs).
    fn members(&self) -> Vec<PeerMember>;
}

/// Why [`TransportHandle::request`] got no answer from the peer's handler.
#[derive(Debug, thiserror::Error)]
pub enum RequestError {
    #[error("no peer {0}")]
    UnknownPeer(NodeId),
    #[error("request of {len} bytes exceeds the limit of {max}")]
    TooLarge { len: usize, max: u32 },
    #[error("too many requests in flight")]
    Busy,
    #[error("the transport is shut down")]
    Shutdown,
    #[error("cannot reach the peer: {0}")]
    Dial(DialError),
    #[error("connection failed: {0}")]
    Io(String),
    #[error("no answer in time")]
    Timeout,
    #[error("malformed answer: {0}")]
    Malformed(String),
    #[error("peer did not handle the request ({code:?}): {reason}")]
    Remote { code: ResponseCode, reason: String },
}

impl RequestError {
    /// Whether the peer's handler certainly never saw the request (so sending it again, to
    /// this or another member, cannot make it happen twice).
    pub fn unhandled(&self) -> bool {
        match self {
            RequestError::UnknownPeer(_)
            | RequestError::TooLarge { .. }
            | RequestError::Busy
            | RequestError::Shutdown
            | RequestError::Dial(_) => true,
            RequestError::Remote { code, .. } => {
                matches!(code, ResponseCode::Overloaded | ResponseCode::NotReady)
            }
            RequestError::Io(_) | RequestError::Timeout | RequestError::Malformed(_) => false,
        }
    }
}

/// What a members stream told: who answered and its member list.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClusterMembers {
    pub cluster_id: u64,
    /// The member that answered.
    pub member_id: NodeId,
    pub members: Vec<PeerMember>,
}

/// Largest member list frame accepted from a members stream.
const MAX_MEMBER_LIST_FRAME: u32 = 1024 * 1024;

/// Entry point.
pub struct Transport;

impl Transport {
    /// Binds `config.listen_addr`, starts the accept loop and one writer task per peer, and
    /// returns the handle. Received messages and snapshots go to `inbound` (a full channel
    /// slows the sending peer's connection down: backpressure); reports go to `reports`
    /// (dropped if that channel is full, except snapshot reports, which wait).
    /// Must be called within a tokio runtime.
    pub async fn start(
        config: TransportConfig,
        inbound: mpsc::Sender<Inbound>,
        reports: mpsc::Sender<Report>,
    ) -> Result<TransportHandle, TransportError> {
        if config.per_peer_queue == 0
            || config.max_inbound_connections == 0
            || config.snapshot_chunk_bytes == 0
        {
            return Err(TransportError::Config(
                "per_peer_queue, max_inbound_connections and snapshot_chunk_bytes must be positive".into(),
            ));
        }
        let chunk_frame = config.snapshot_chunk_bytes as u64 + codec::CHUNK_OVERHEAD as u64 + 1;
        if chunk_frame > u64::from(config.max_frame_bytes)
            || config.max_frame_bytes < HANDSHAKE_MAX_FRAME_BYTES
        {
            return Err(TransportError::Config("max_frame_bytes too small for snapshot_chunk_bytes".into()));
        }
        if config.max_requests_in_flight == 0
            || config.max_requests_served == 0
            || config.max_request_bytes > config.max_frame_bytes
        {
            return Err(TransportError::Config(
                "max_requests_in_flight and max_requests_served must be positive, max_request_bytes at most max_frame_bytes".into(),
            ));
        }
        if config.peers.contains_key(&config.local_id) {
            return Err(TransportError::Config("peers must not include the local id".into()));
        }
        let listener = TcpListener::bind(config.listen_addr)
            .await
            .map_err(|source| TransportError::Bind { addr: config.listen_addr, source })?;
        let local_addr = listener
            .local_addr()
            .map_err(|source| TransportError::Bind { addr: config.listen_addr, source })?;
        let (shutdown_tx, shutdown_rx) = watch::channel(false);
        let shared = Arc::new(Shared {
            cluster_id: config.cluster_id,
            local_id: config.local_id,
            max_frame_bytes: config.max_frame_bytes,
            max_batch_bytes: config.max_batch_bytes,
            connect_timeout: config.connect_timeout,
            handshake_timeout: config.handshake_timeout,
            write_timeout: config.write_timeout,
            backoff_min: config.backoff_min,
            backoff_max: config.backoff_max,
            snapshot_chunk_bytes: config.snapshot_chunk_bytes,
            max_snapshot_bytes: config.max_snapshot_bytes,
            snapshot_io_timeout: config.snapshot_io_timeout,
            sinks: config.snapshot_sinks.clone(),
            faults: config.faults.clone(),
            counters: Counters::default(),
            inbound,
            reports,
            known: RwLock::new(BTreeSet::new()),
            removed: RwLock::new(BTreeSet::new()),
            links: RwLock::new(BTreeMap::new()),
            inbound_conns: Mutex::new(HashMap::new()),
            next_conn: AtomicU64::new(1),
            shutdown: shutdown_rx,
            tls_acceptor: config.tls.as_ref().map(|t| tokio_rustls::TlsAcceptor::from(t.server.clone())),
            tls_connector: config.tls.as_ref().map(|t| tokio_rustls::TlsConnector::from(t.client.clone())),
            tls_warnings: Default::default(),
            max_request_bytes: config.max_request_bytes,
            max_request_timeout: config.max_request_timeout,
            request_idle_timeout: config.request_idle_timeout,
            service: RwLock::new(None),
            serving: Arc::new(Semaphore::new(config.max_requests_served)),
        });
        let permits = Arc::new(Semaphore::new(config.max_inbound_connections));
        let accept = tokio::spawn(
            accept_loop(shared.clone(), listener, permits)
                .instrument(debug_span!("transport", node = %config.local_id, %local_addr)),
        );
        let handle = TransportHandle {
            inner: Arc::new(HandleInner {
                shared,
                peers: RwLock::new(BTreeMap::new()),
                shutdown_tx,
                accept: Mutex::new(Some(accept)),
                local_addr,
                per_peer_queue: config.per_peer_queue,
                per_peer_queue_bytes: config.per_peer_queue_bytes,
                requests: Arc::new(Semaphore::new(config.max_requests_in_flight)),
                next_request: AtomicU64::new(1),
                idle_requests: Mutex::new(HashMap::new()),
                idle_request_connections: config.idle_request_connections,
            }),
        };
        for (id, addr) in config.peers {
            handle.add_peer(id, addr);
        }
        Ok(handle)
    }
}

/// The driver's side of a running transport. Cheap to clone; the transport shuts down when
/// the last clone is dropped or on [`TransportHandle::shutdown`].
#[derive(Clone)]
pub struct TransportHandle {
    inner: Arc<HandleInner>,
}

struct HandleInner {
    shared: Arc<Shared>,
    peers: RwLock<BTreeMap<NodeId, PeerEntry>>,
    shutdown_tx: watch::Sender<bool>,
    accept: Mutex<Option<JoinHandle<()>>>,
    local_addr: SocketAddr,
    per_peer_queue: usize,
    per_peer_queue_bytes: u64,
    /// Permits for outbound requests waiting for answers.
    requests: Arc<Semaphore>,
    next_request: AtomicU64,
    /// Requests connections kept for reuse, per peer, with when each was last used.
    idle_requests: Mutex<HashMap<NodeId, Vec<IdleRequestConn>>>,
    idle_request_connections: usize,
}

/// A requests connection between two exchanges.
struct IdleRequestConn {
    stream: PeerStream,
    reader: FrameReader,
    since: std::time::Instant,
}

impl Drop for HandleInner {
    fn drop(&mut self) {
        let _ = self.shutdown_tx.send(true);
    }
}

struct PeerEntry {
    tx: mpsc::Sender<Message>,
    link: Arc<PeerLink>,
    addr: String,
}

/// State shared between `send` and a peer's writer task.
struct PeerLink {
    id: NodeId,
    state: AtomicU8,
    queued_bytes: AtomicU64,
    unreachable_reported: AtomicBool,
    snapshot_busy: AtomicBool,
    /// Bytes written on this peer's message streams.
    bytes_sent: AtomicU64,
    /// Bytes of messages read from this peer's message streams.
    bytes_received: AtomicU64,
    /// The heartbeat whose response will measure the next round trip (see `observe`).
    rtt_probe: Mutex<Option<RttProbe>>,
    /// The peer connected to us while this link was down: dial it now, not at the end of
    /// the backoff (a peer that was down for long would otherwise wait up to `backoff_max`).
    redial: tokio::sync::Notify,
}

/// A heartbeat sent to a peer: `(term, read round)` identify its response.
#[derive(Clone, Copy)]
struct RttProbe {
    term: u64,
    read_round: u64,
    sent: std::time::Instant,
}

/// A probe without an answer for this long is given up (the heartbeat or its answer was lost).
const RTT_PROBE_GIVE_UP: Duration = Duration::from_secs(10);

impl PeerLink {
    /// A heartbeat is being sent: it becomes the probe unless one is outstanding.
    fn probe_sent(&self, msg: &Message) {
        let MessageBody::Heartbeat { read_round, .. } = msg.body else { return };
        let Ok(mut probe) = self.rtt_probe.lock() else { return };
        let now = std::time::Instant::now();
        if probe.is_none_or(|p| now.duration_since(p.sent) > RTT_PROBE_GIVE_UP) {
            *probe = Some(RttProbe { term: msg.term.0, read_round, sent: now });
        }
    }

    /// A heartbeat response arrived: if it answers the probe, that is one round trip.
    fn probe_answered(&self, msg: &Message) {
        let MessageBody::HeartbeatResponse { read_round } = msg.body else { return };
        let Ok(mut probe) = self.rtt_probe.lock() else { return };
        if let Some(p) = *probe
            && p.term == msg.term.0
            && p.read_round == read_round
        {
            *probe = None;
            crate::observe::rtt_measured(self.id, p.sent.elapsed());
        }
    }
}

const LINK_CONNECTING: u8 = 0;
const LINK_CONNECTED: u8 = 1;
const LINK_DOWN: u8 = 2;

/// An inbound connection's id and its cancel switch (dropping the sender cancels it).
type LiveConn = (u64, oneshot::Sender<()>);

/// Configuration and state every task sees.
struct Shared {
    cluster_id: u64,
    local_id: NodeId,
    max_frame_bytes: u32,
    max_batch_bytes: usize,
    connect_timeout: Duration,
    handshake_timeout: Duration,
    write_timeout: Duration,
    backoff_min: Duration,
    backoff_max: Duration,
    snapshot_chunk_bytes: usize,
    max_snapshot_bytes: u64,
    snapshot_io_timeout: Duration,
    sinks: Arc<dyn SnapshotSinkFactory>,
    faults: FaultInjection,
    counters: Counters,
    inbound: mpsc::Sender<Inbound>,
    reports: mpsc::Sender<Report>,
    known: RwLock<BTreeSet<NodeId>>,
    /// Members removed from the cluster: their connections are refused with
    /// [`RefusalCode::Removed`].
    removed: RwLock<BTreeSet<NodeId>>,
    /// Every peer's outbound link, to wake its writer when the peer connects in.
    links: RwLock<BTreeMap<NodeId, Arc<PeerLink>>>,
    /// The live inbound connection per (peer, stream kind): a newer one replaces (cancels)
    /// the older, so a restarted peer never leaves a half-dead reader behind.
    inbound_conns: Mutex<HashMap<(NodeId, StreamKind), LiveConn>>,
    next_conn: AtomicU64,
    shutdown: watch::Receiver<bool>,
    /// TLS on both sides of every connection, when configured.
    tls_acceptor: Option<tokio_rustls::TlsAcceptor>,
    tls_connector: Option<tokio_rustls::TlsConnector>,
    /// Rate limit of the warnings about TLS handshakes that fail on a certificate, by peer
    /// (dialing: its id; accepting: its IP address).
    tls_warnings: crate::stream::TlsWarnings,
    max_request_bytes: u32,
    max_request_timeout: Duration,
    request_idle_timeout: Duration,
    /// The member's handler of requests and member lists, once registered.
    service: RwLock<Option<Arc<dyn PeerService>>>,
    /// Permits for requests from peers being handled.
    serving: Arc<Semaphore>,
}

impl Shared {
    /// Largest Request or Response frame (type byte and payload) on a requests stream.
    fn request_frame_limit(&self) -> u32 {
        let overhead = REQUEST_OVERHEAD.max(RESPONSE_OVERHEAD) as u32 + 1;
        self.max_request_bytes.saturating_add(overhead)
    }

    fn service(&self) -> Option<Arc<dyn PeerService>> {
        self.service.read().ok().and_then(|s| s.clone())
    }

    fn is_known(&self, id: NodeId) -> bool {
        self.known.read().map(|k| k.contains(&id)).unwrap_or(false)
    }

    fn report_unreachable(&self, link: &PeerLink) {
        if !link.unreachable_reported.swap(true, Ordering::AcqRel)
            && self.reports.try_send(Report::Unreachable(link.id)).is_err()
        {
            // The driver is behind; let a later drop report again.
            link.unreachable_reported.store(false, Ordering::Release);
        }
    }

    fn drop_messages(&self, n: u64) {
        Counters::add(&self.counters.messages_dropped, n);
    }
}

/// Resolves once shutdown is signalled (or the handle is gone).
async fn stopped(mut rx: watch::Receiver<bool>) {
    let _ = rx.wait_for(|s| *s).await;
}

impl TransportHandle {
    /// The address actually listened on (useful with port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.inner.local_addr
    }

    /// This member's id.
    pub fn local_id(&self) -> NodeId {
        self.inner.shared.local_id
    }

    /// The counters so far.
    pub fn stats(&self) -> TransportStats {
        self.inner.shared.counters.snapshot()
    }

    /// Queues `msg` for `msg.to` without blocking. If the peer's queue is full or its
    /// connection is down the message is dropped, counted, and the peer is reported
    /// [`Report::Unreachable`]. Messages to one peer are written in the order sent.
    pub fn send(&self, msg: Message) -> Result<(), SendError> {
        let shared = &self.inner.shared;
        if *shared.shutdown.borrow() {
            shared.drop_messages(1);
            return Err(SendError::Shutdown);
        }
        if matches!(msg.body, MessageBody::InstallSnapshot { .. }) {
            shared.drop_messages(1);
            return Err(SendError::SnapshotMessage);
        }
        let to = msg.to;
        let Ok(peers) = self.inner.peers.read() else {
            shared.drop_messages(1);
            return Err(SendError::Shutdown);
        };
        let Some(peer) = peers.get(&to) else {
            shared.drop_messages(1);
            return Err(SendError::UnknownPeer(to));
        };
        let link = &peer.link;
        if link.state.load(Ordering::Acquire) == LINK_DOWN {
            shared.drop_messages(1);
            shared.report_unreachable(link);
            return Err(SendError::Disconnected(to));
        }
        link.probe_sent(&msg);
        let size = msg.size_bytes();
        let queued = link.queued_bytes.fetch_add(size, Ordering::AcqRel);
        if queued > 0 && queued + size > self.inner.per_peer_queue_bytes {
            link.queued_bytes.fetch_sub(size, Ordering::AcqRel);
            shared.drop_messages(1);
            shared.report_unreachable(link);
            return Err(SendError::QueueFull(to));
        }
        match peer.tx.try_send(msg) {
            Ok(()) => Ok(()),
            Err(e) => {
                link.queued_bytes.fetch_sub(size, Ordering::AcqRel);
                shared.drop_messages(1);
                match e {
                    mpsc::error::TrySendError::Full(_) => {
                        shared.report_unreachable(link);
                        Err(SendError::QueueFull(to))
                    }
                    mpsc::error::TrySendError::Closed(_) => Err(SendError::Shutdown),
                }
            }
        }
    }

    /// Starts streaming a snapshot to `msg.to` on its own connection. `msg` must be the
    /// core's InstallSnapshot; `source` yields the body. When this returns `Ok`, exactly
    /// one [`Report::Snapshot`] follows; when it returns `Err`, none does. At most one
    /// transfer per peer runs at a time.
    pub fn send_snapshot(
        &self,
        msg: Message,
        source: Box<dyn SnapshotSource>,
    ) -> Result<(), SnapshotSendError> {
        let shared = &self.inner.shared;
        if *shared.shutdown.borrow() {
            return Err(SnapshotSendError::Shutdown);
        }
        if !matches!(msg.body, MessageBody::InstallSnapshot { .. }) {
            return Err(SnapshotSendError::NotInstallSnapshot);
        }
        let to = msg.to;
        let (link, addr) = {
            let Ok(peers) = self.inner.peers.read() else { return Err(SnapshotSendError::Shutdown) };
            let Some(peer) = peers.get(&to) else { return Err(SnapshotSendError::UnknownPeer(to)) };
            (peer.link.clone(), peer.addr.clone())
        };
        if link.snapshot_busy.swap(true, Ordering::AcqRel) {
            return Err(SnapshotSendError::Busy(to));
        }
        let shared = shared.clone();
        let span = debug_span!("snapshot_send", node = %shared.local_id, peer = %to, %addr);
        tokio::spawn(send_snapshot_task(shared, link, addr, msg, source).instrument(span));
        Ok(())
    }

    /// Adds (or re-addresses) a peer: starts its writer task and accepts its connections.
    pub fn add_peer(&self, id: NodeId, addr: impl Into<String>) {
        let addr = addr.into();
        let shared = &self.inner.shared;
        if id == shared.local_id {
            return;
        }
        let (tx, rx) = mpsc::channel(self.inner.per_peer_queue);
        let link = Arc::new(PeerLink {
            id,
            state: AtomicU8::new(LINK_CONNECTING),
            queued_bytes: AtomicU64::new(0),
            unreachable_reported: AtomicBool::new(false),
            snapshot_busy: AtomicBool::new(false),
            bytes_sent: AtomicU64::new(0),
            bytes_received: AtomicU64::new(0),
            rtt_probe: Mutex::new(None),
            redial: tokio::sync::Notify::new(),
        });
        // Known before the writer starts: its first dial can make the peer dial back at
        // once, and that connection must not be refused as coming from a stranger. A member
        // added again after its removal (a replaced machine) is no longer refused.
        if let Ok(mut removed) = shared.removed.write() {
            removed.remove(&id);
        }
        if let Ok(mut known) = shared.known.write() {
            known.insert(id);
        }
        if let Ok(mut links) = shared.links.write() {
            links.insert(id, link.clone());
        }
        self.drop_idle_requests(id);
        if let Ok(mut peers) = self.inner.peers.write() {
            // Replacing an entry drops its sender, which ends the old writer task.
            peers.insert(id, PeerEntry { tx, link: link.clone(), addr: addr.clone() });
        }
        let span = debug_span!("peer", node = %shared.local_id, peer = %id, %addr);
        tokio::spawn(run_peer(shared.clone(), link, addr, rx).instrument(span));
    }

    /// Removes a peer: its writer stops, its inbound connections close, and its future
    /// connections are refused.
    pub fn remove_peer(&self, id: NodeId) {
        let shared = &self.inner.shared;
        if let Ok(mut links) = shared.links.write() {
            links.remove(&id);
        }
        if let Ok(mut known) = shared.known.write() {
            known.remove(&id);
        }
        if let Ok(mut peers) = self.inner.peers.write() {
            peers.remove(&id);
        }
        if let Ok(mut conns) = shared.inbound_conns.lock() {
            conns.retain(|(peer, _), _| *peer != id);
        }
        self.drop_idle_requests(id);
    }

    /// Removes a peer for good: like [`TransportHandle::remove_peer`], and its connections
    /// are refused with [`RefusalCode::Removed`], which tells it that it was removed.
    pub fn mark_removed(&self, id: NodeId) {
        self.remove_peer(id);
        if let Ok(mut removed) = self.inner.shared.removed.write() {
            removed.insert(id);
        }
    }

    /// Registers the member's handler of requests from peers and of member lists.
    pub fn set_service(&self, service: Arc<dyn PeerService>) {
        if let Ok(mut s) = self.inner.shared.service.write() {
            *s = Some(service);
        }
    }

    /// Sends `body` to peer `to`'s handler on a requests connection (a kept one when there
    /// is one, else a new one with the usual handshake) and waits at most `limit` for the
    /// answer. At most `max_requests_in_flight` requests wait at once; none is queued.
    pub async fn request(&self, to: NodeId, body: Bytes, limit: Duration) -> Result<Bytes, RequestError> {
        let shared = &self.inner.shared;
        if *shared.shutdown.borrow() {
            return Err(RequestError::Shutdown);
        }
        if body.len() > shared.max_request_bytes as usize {
            return Err(RequestError::TooLarge { len: body.len(), max: shared.max_request_bytes });
        }
        let addr = {
            let Ok(peers) = self.inner.peers.read() else { return Err(RequestError::Shutdown) };
            peers.get(&to).map(|p| p.addr.clone()).ok_or(RequestError::UnknownPeer(to))?
        };
        let Ok(_permit) = self.inner.requests.clone().try_acquire_owned() else {
            return Err(RequestError::Busy);
        };
        let id = self.inner.next_request.fetch_add(1, Ordering::Relaxed);
        let timeout_ms = u32::try_from(limit.as_millis()).unwrap_or(u32::MAX);
        let request = Request { id, timeout_ms, body };
        let result = match timeout(limit, self.exchange(to, &addr, &request)).await {
            Ok(r) => r,
            Err(_) => Err(RequestError::Timeout),
        };
        match &result {
            Ok(_) | Err(RequestError::Remote { .. }) => Counters::add(&shared.counters.requests_sent, 1),
            Err(e) => {
                Counters::add(&shared.counters.requests_failed, 1);
                debug!(peer = %to, %addr, error = %e, "request failed");
            }
        }
        result
    }

    /// One request and its answer: on a kept connection first (sent again on a new one if
    /// the peer had closed it before answering), else on a new one.
    async fn exchange(&self, to: NodeId, addr: &str, request: &Request) -> Result<Bytes, RequestError> {
        let shared = &self.inner.shared;
        let limit = shared.request_frame_limit();
        let mut frame = BytesMut::new();
        request
            .encode(limit, &mut frame)
            .map_err(|_| RequestError::TooLarge { len: request.body.len(), max: shared.max_request_bytes })?;
        let mut first_failure = None;
        if let Some(mut conn) = self.take_idle_request(to) {
            match round_trip(shared, &mut conn, &frame, request.id).await {
                Ok(response) => return self.answered(to, conn, response),
                Err((true, e)) => {
                    debug!(peer = %to, error = %e, "kept requests connection was closed; dialing");
                    first_failure = Some(e);
                }
                Err((false, e)) => return Err(e),
            }
        }
        let (stream, reader) = match dial(shared, addr, to, StreamKind::Requests).await {
            Ok(dialed) => dialed,
            // The request went out on the kept connection: unless the peer now refuses this
            // member (which is why it closed that connection unanswered), it may have seen
            // the request before it went away, so this is not a clean "never sent".
            Err(e) => {
                return Err(match first_failure {
                    Some(first) if !matches!(e, DialError::Refused(..)) => {
                        RequestError::Io(format!("{first}; then {e}"))
                    }
                    _ => RequestError::Dial(e),
                });
            }
        };
        let mut conn = IdleRequestConn { stream, reader, since: std::time::Instant::now() };
        match round_trip(shared, &mut conn, &frame, request.id).await {
            Ok(response) => self.answered(to, conn, response),
            Err((_, e)) => Err(e),
        }
    }

    /// Keeps the connection for the next request and turns the response into the result.
    fn answered(
        &self,
        to: NodeId,
        mut conn: IdleRequestConn,
        response: Response,
    ) -> Result<Bytes, RequestError> {
        conn.since = std::time::Instant::now();
        if let Ok(mut idle) = self.inner.idle_requests.lock() {
            let kept = idle.entry(to).or_default();
            if kept.len() < self.inner.idle_request_connections {
                kept.push(conn);
            }
        }
        match response.code {
            ResponseCode::Ok => Ok(response.body),
            code => Err(RequestError::Remote {
                code,
                reason: String::from_utf8_lossy(&response.body).into_owned(),
            }),
        }
    }

    /// A kept requests connection to `to` that the peer will not have closed as idle yet.
    fn take_idle_request(&self, to: NodeId) -> Option<IdleRequestConn> {
        let fresh = self.inner.shared.request_idle_timeout / 2;
        let mut idle = self.inner.idle_requests.lock().ok()?;
        let kept = idle.get_mut(&to)?;
        while let Some(conn) = kept.pop() {
            if conn.since.elapsed() < fresh {
                return Some(conn);
            }
        }
        None
    }

    fn drop_idle_requests(&self, id: NodeId) {
        if let Ok(mut idle) = self.inner.idle_requests.lock() {
            idle.remove(&id);
        }
    }

    /// Whether the outbound messages connection to `id` is up (handshake done).
    pub fn is_connected(&self, id: NodeId) -> bool {
        self.inner
            .peers
            .read()
            .ok()
            .and_then(|p| p.get(&id).map(|e| e.link.state.load(Ordering::Acquire) == LINK_CONNECTED))
            .unwrap_or(false)
    }

    /// The peers and their addresses.
    pub fn peers(&self) -> BTreeMap<NodeId, String> {
        self.inner
            .peers
            .read()
            .map(|p| p.iter().map(|(id, e)| (*id, e.addr.clone())).collect())
            .unwrap_or_default()
    }

    /// Bytes written on each known peer's message stream since start.
    pub fn peer_bytes_sent(&self) -> Vec<(NodeId, u64)> {
        self.inner
            .shared
            .links
            .read()
            .map(|l| l.iter().map(|(id, link)| (*id, link.bytes_sent.load(Ordering::Relaxed))).collect())
            .unwrap_or_default()
    }

    /// Bytes of messages received from each peer on its message streams.
    pub fn peer_bytes_received(&self) -> Vec<(NodeId, u64)> {
        self.inner
            .shared
            .links
            .read()
            .map(|l| l.iter().map(|(id, link)| (*id, link.bytes_received.load(Ordering::Relaxed))).collect())
            .unwrap_or_default()
    }

    /// Stops everything and waits until the listening socket is closed (so the port can be
    /// bound again). Connections close promptly after.
    pub async fn shutdown(&self) {
        let _ = self.inner.shutdown_tx.send(true);
        if let Ok(mut peers) = self.inner.peers.write() {
            peers.clear();
        }
        if let Ok(mut conns) = self.inner.shared.inbound_conns.lock() {
            conns.clear();
        }
        if let Ok(mut idle) = self.inner.idle_requests.lock() {
            idle.clear();
        }
        let accept = self.inner.accept.lock().ok().and_then(|mut a| a.take());
        if let Some(accept) = accept {
            let _ = accept.await;
        }
    }
}

// ---------------------------------------------------------------------------------------
// Outbound: dialing and the handshake.

#[derive(Debug, thiserror::Error)]
pub enum DialError {
    #[error("connect failed: {0}")]
    Connect(io::Error),
    #[error("connect timed out")]
    ConnectTimeout,
    #[error("handshake timed out")]
    HandshakeTimeout,
    #[error("TLS handshake failed: {0}")]
    Tls(io::Error),
    #[error("handshake failed: {0}")]
    Frame(#[from] FrameError),
    #[error("refused: {1}")]
    Refused(RefusalCode, String),
    #[error(
        "peer answered as cluster {cluster:#x} node {node}, expected cluster {expected_cluster:#x} node {expected_node}"
    )]
    WrongPeer { cluster: u64, node: NodeId, expected_cluster: u64, expected_node: NodeId },
    #[error("handshake failed: peer closed the connection")]
    Closed,
    #[error("handshake failed: unexpected frame {0:?}")]
    Unexpected(FrameType),
}

impl DialError {
    /// The reason, when the dial failed on TLS (a certificate refused on either side).
    fn tls_failure(&self) -> Option<(String, String)> {
        match self {
            DialError::Tls(e) | DialError::Frame(FrameError::Io(e)) => crate::stream::tls_failure(e),
            _ => None,
        }
    }
}

impl From<io::Error> for DialError {
    fn from(e: io::Error) -> DialError {
        DialError::Frame(FrameError::Io(e))
    }
}

impl From<DecodeError> for DialError {
    fn from(e: DecodeError) -> DialError {
        DialError::Frame(FrameError::Decode(e))
    }
}

/// Connects to `addr`, says Hello and waits for the answer.
async fn dial(
    shared: &Shared,
    addr: &str,
    peer: NodeId,
    stream: StreamKind,
) -> Result<(PeerStream, FrameReader), DialError> {
    let hello = Hello {
        magic: MAGIC,
        protocol_version: PROTOCOL_VERSION,
        cluster_id: shared.cluster_id,
        from: shared.local_id,
        to: peer,
        stream,
    };
    let limits = (shared.connect_timeout, shared.handshake_timeout);
    let (tcp, reader, ok) = dial_hello(limits, shared.tls_connector.as_ref(), addr, &hello).await?;
    if ok.cluster_id != shared.cluster_id || ok.node_id != peer {
        return Err(DialError::WrongPeer {
            cluster: ok.cluster_id,
            node: ok.node_id,
            expected_cluster: shared.cluster_id,
            expected_node: peer,
        });
    }
    Ok((tcp, reader))
}

/// Connects (with TLS when a connector is given), sends `hello` and returns the acceptor's
/// `HelloOk`.
async fn dial_hello(
    (connect_timeout, handshake_timeout): (Duration, Duration),
    tls: Option<&tokio_rustls::TlsConnector>,
    addr: &str,
    hello: &Hello,
) -> Result<(PeerStream, FrameReader, HelloOk), DialError> {
    let tcp = match timeout(connect_timeout, TcpStream::connect(addr)).await {
        Err(_) => return Err(DialError::ConnectTimeout),
        Ok(Err(e)) => return Err(DialError::Connect(e)),
        Ok(Ok(tcp)) => tcp,
    };
    tcp.set_nodelay(true)?;
    let mut tcp = match tls {
        None => PeerStream::Plain(tcp),
        Some(connector) => {
            let name = crate::stream::server_name(addr).map_err(DialError::Tls)?;
            match timeout(handshake_timeout, connector.connect(name, tcp)).await {
                Err(_) => return Err(DialError::HandshakeTimeout),
                Ok(Err(e)) => return Err(DialError::Tls(e)),
                Ok(Ok(tls)) => PeerStream::Tls(Box::new(tls.into())),
            }
        }
    };
    let mut reader = FrameReader::new();
    let exchange = async {
        let mut buf = BytesMut::new();
        hello.encode(&mut buf);
        tcp.write_all(&buf).await?;
        match reader.read_frame(&mut tcp, HANDSHAKE_MAX_FRAME_BYTES).await? {
            None => Err(DialError::Closed),
            Some((FrameType::HelloOk, payload)) => Ok(HelloOk::decode(payload)?),
            Some((FrameType::HelloRefused, payload)) => {
                let refused = HelloRefused::decode(payload)?;
                Err(DialError::Refused(refused.code, refused.reason))
            }
            Some((other, _)) => Err(DialError::Unexpected(other)),
        }
    };
    match timeout(handshake_timeout, exchange).await {
        Err(_) => Err(DialError::HandshakeTimeout),
        Ok(Err(e)) => Err(e),
        Ok(Ok(ok)) => Ok((tcp, reader, ok)),
    }
}

/// Asks the member listening at `addr` (`host:port`) which cluster it belongs to, as a
/// member joining a running cluster must: returns its cluster id and node id. A discovery
/// Hello (cluster 0, from node 0) is answered with the acceptor's identity, then closed.
pub async fn discover(
    addr: &str,
    tls: Option<&crate::stream::PeerTlsConfig>,
    limit: Duration,
) -> Result<(u64, NodeId), DialError> {
    let connector = tls.map(|t| tokio_rustls::TlsConnector::from(t.client.clone()));
    let hello = Hello {
        magic: MAGIC,
        protocol_version: PROTOCOL_VERSION,
        cluster_id: 0,
        from: NodeId(0),
        to: NodeId(0),
        stream: StreamKind::Messages,
    };
    let (_, _, ok) = dial_hello((limit, limit), connector.as_ref(), addr, &hello).await?;
    Ok((ok.cluster_id, ok.node_id))
}

/// Writes one Request frame and reads its Response on `conn`. The error's flag tells that
/// the peer closed the connection before answering anything (the request may be sent again
/// on a new connection: the acceptor reads a request only when it will answer it).
async fn round_trip(
    shared: &Shared,
    conn: &mut IdleRequestConn,
    frame: &[u8],
    id: u64,
) -> Result<Response, (bool, RequestError)> {
    if let Err(e) = conn.stream.write_all(frame).await {
        return Err((true, RequestError::Io(e.to_string())));
    }
    let (ty, payload) = match conn.reader.read_frame(&mut conn.stream, shared.request_frame_limit()).await {
        Ok(Some(f)) => f,
        Ok(None) => return Err((true, RequestError::Io("peer closed the connection".into()))),
        Err(FrameError::Io(e)) => return Err((true, RequestError::Io(e.to_string()))),
        Err(e) => return Err((false, RequestError::Malformed(e.to_string()))),
    };
    if ty != FrameType::Response {
        return Err((false, RequestError::Malformed(format!("unexpected frame {ty:?}"))));
    }
    let response = Response::decode(payload).map_err(|e| (false, RequestError::Malformed(e.to_string())))?;
    if response.id != id {
        return Err((
            false,
            RequestError::Malformed(format!("answer to request {} for request {id}", response.id)),
        ));
    }
    Ok(response)
}

/// Asks the member listening at `addr` (`host:port`) for its cluster's members, as a member
/// joining a running cluster must to learn its own id and its peers' (etcd asks a peer's
/// `/members`). No cluster or member id is needed: the members stream tells anyone who
/// passes TLS (when configured) the member ids, names and peer URLs.
pub async fn discover_members(
    addr: &str,
    tls: Option<&crate::stream::PeerTlsConfig>,
    limit: Duration,
) -> Result<ClusterMembers, DialError> {
    let connector = tls.map(|t| tokio_rustls::TlsConnector::from(t.client.clone()));
    let hello = Hello {
        magic: MAGIC,
        protocol_version: PROTOCOL_VERSION,
        cluster_id: 0,
        from: NodeId(0),
        to: NodeId(0),
        stream: StreamKind::Members,
    };
    let started = std::time::Instant::now();
    let (mut stream, mut reader, ok) = dial_hello((limit, limit), connector.as_ref(), addr, &hello).await?;
    let left = limit.saturating_sub(started.elapsed());
    let list = match timeout(left, reader.read_frame(&mut stream, MAX_MEMBER_LIST_FRAME)).await {
        Err(_) => return Err(DialError::HandshakeTimeout),
        Ok(Err(e)) => return Err(e.into()),
        Ok(Ok(None)) => return Err(DialError::Closed),
        Ok(Ok(Some((FrameType::Members, payload)))) => MemberList::decode(payload)?,
        Ok(Ok(Some((other, _)))) => return Err(DialError::Unexpected(other)),
    };
    Ok(ClusterMembers { cluster_id: ok.cluster_id, member_id: ok.node_id, members: list.members })
}

/// Exponential backoff with jitter in `[d/2, d]`.
struct Backoff {
    min: Duration,
    max: Duration,
    current: Duration,
    rng: u64,
}

impl Backoff {
    fn new(min: Duration, max: Duration, seed: u64) -> Backoff {
        Backoff { min, max, current: min, rng: seed | 1 }
    }

    fn reset(&mut self) {
        self.current = self.min;
    }

    fn next_delay(&mut self) -> Duration {
        // xorshift64*
        self.rng ^= self.rng >> 12;
        self.rng ^= self.rng << 25;
        self.rng ^= self.rng >> 27;
        let r = self.rng.wrapping_mul(0x2545_F491_4F6C_DD1D);
        let d = self.current;
        self.current = (self.current * 2).min(self.max);
        let half = d / 2;
        let nanos = half.as_nanos() as u64;
        let jitter = if nanos == 0 { 0 } else { r % (nanos + 1) };
        half + Duration::from_nanos(jitter)
    }
}

fn seed(a: NodeId, b: NodeId) -> u64 {
    let now = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_nanos() as u64).unwrap_or(0);
    now ^ a.get().wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ b.get().rotate_left(32)
}

/// How a connected writer loop ended.
enum WriterEnd {
    /// Shutdown or peer removed: stop the task.
    Stop,
    /// The connection broke: reconnect.
    Broken(String),
}

/// One peer's outbound messages connection, for the life of the transport.
async fn run_peer(shared: Arc<Shared>, link: Arc<PeerLink>, addr: String, mut rx: mpsc::Receiver<Message>) {
    let mut backoff = Backoff::new(shared.backoff_min, shared.backoff_max, seed(shared.local_id, link.id));
    let mut ever_connected = false;
    let mut last_failure: Option<String> = None;
    loop {
        link.state.store(LINK_CONNECTING, Ordering::Release);
        let dialed = tokio::select! {
            d = dial(&shared, &addr, link.id, StreamKind::Messages) => d,
            _ = stopped(shared.shutdown.clone()) => return,
        };
        match dialed {
            Ok((tcp, _reader)) => {
                Counters::add(&shared.counters.connects, 1);
                if ever_connected {
                    Counters::add(&shared.counters.reconnects, 1);
                }
                ever_connected = true;
                last_failure = None;
                backoff.reset();
                link.state.store(LINK_CONNECTED, Ordering::Release);
                link.unreachable_reported.store(false, Ordering::Release);
                shared.tls_warnings.clear(&format!("peer {}", link.id));
                debug!("connected");
                match write_loop(&shared, &link, tcp, &mut rx).await {
                    WriterEnd::Stop => return,
                    WriterEnd::Broken(why) => debug!(reason = %why, "disconnected"),
                }
            }
            Err(e) => {
                Counters::add(&shared.counters.connect_failures, 1);
                let text = e.to_string();
                match &e {
                    DialError::Refused(code, reason) => {
                        Counters::add(&shared.counters.refused_by_peer, 1);
                        if last_failure.as_deref() != Some(&text) {
                            warn!("peer {} at {addr} refused: {reason}", link.id);
                            if matches!(code, RefusalCode::UnknownPeer | RefusalCode::Removed) {
                                let removed = *code == RefusalCode::Removed;
                                let _ = shared.reports.try_send(Report::RefusedBy { by: link.id, removed });
                            }
                        }
                    }
                    DialError::WrongPeer { .. } if last_failure.as_deref() != Some(&text) => {
                        warn!("peer {} at {addr}: {e}", link.id);
                    }
                    _ => match e.tls_failure() {
                        // A certificate problem does not fix itself: say so, once a minute.
                        Some((why, detailed)) => {
                            if shared.tls_warnings.due(&format!("peer {}", link.id), &why) {
                                warn!("peer {} at {addr}: TLS handshake failed: {detailed}", link.id);
                            }
                        }
                        None => debug!(error = %e, "connect failed"),
                    },
                }
                last_failure = Some(text);
            }
        }
        // Down: drop what is queued, refuse new messages until the next attempt.
        link.state.store(LINK_DOWN, Ordering::Release);
        let mut dropped = 0;
        while let Ok(m) = rx.try_recv() {
            link.queued_bytes.fetch_sub(m.size_bytes(), Ordering::AcqRel);
            dropped += 1;
        }
        shared.drop_messages(dropped);
        shared.report_unreachable(&link);
        let delay = backoff.next_delay();
        tokio::select! {
            _ = tokio::time::sleep(delay) => {}
            _ = link.redial.notified() => {
                debug!("the peer connected to us: dialing it now");
                backoff.reset();
            }
            _ = stopped(shared.shutdown.clone()) => return,
        }
        if rx.is_closed() {
            return;
        }
    }
}

/// Drains the queue into batches, one `write_all` per batch, until the connection breaks.
async fn write_loop(
    shared: &Shared,
    link: &PeerLink,
    tcp: PeerStream,
    rx: &mut mpsc::Receiver<Message>,
) -> WriterEnd {
    let (mut rd, mut wr): (ReadHalf, WriteHalf) = tcp.into_split();
    let mut buf = BytesMut::with_capacity(64 * 1024);
    let mut probe = [0u8; 64];
    let mut shutdown = shared.shutdown.clone();
    loop {
        let first = tokio::select! {
            m = rx.recv() => match m {
                Some(m) => m,
                None => return WriterEnd::Stop,
            },
            // The acceptor sends nothing after HelloOk: any read result means the peer
            // closed (or misbehaves), so reconnect at once instead of at the next write.
            r = rd.read(&mut probe) => {
                return WriterEnd::Broken(match r {
                    Ok(0) => "peer closed the connection".into(),
                    Ok(_) => "unexpected data from peer".into(),
                    Err(e) => format!("read error: {e}"),
                });
            }
            _ = shutdown.wait_for(|s| *s) => return WriterEnd::Stop,
        };
        buf.clear();
        let mut batch = 0u64;
        let mut next = Some(first);
        while let Some(msg) = next.take() {
            link.queued_bytes.fetch_sub(msg.size_bytes(), Ordering::AcqRel);
            match codec::encode_message_frame(&msg, shared.max_frame_bytes, &mut buf) {
                Ok(()) => batch += 1,
                Err(e) => {
                    warn!(error = %e, message = msg.body.name(), "dropping a message too large to send");
                    shared.drop_messages(1);
                }
            }
            if buf.len() < shared.max_batch_bytes {
                next = rx.try_recv().ok();
            }
        }
        if batch == 0 {
            continue;
        }
        match timeout(shared.write_timeout, wr.write_all(&buf)).await {
            Ok(Ok(())) => {
                Counters::add(&shared.counters.messages_sent, batch);
                Counters::add(&shared.counters.bytes_sent, buf.len() as u64);
                link.bytes_sent.fetch_add(buf.len() as u64, Ordering::Relaxed);
                Counters::add(&shared.counters.batches_sent, 1);
                link.unreachable_reported.store(false, Ordering::Release);
            }
            Ok(Err(e)) => {
                shared.drop_messages(batch);
                return WriterEnd::Broken(format!("write error: {e}"));
            }
            Err(_) => {
                shared.drop_messages(batch);
                return WriterEnd::Broken("write timed out".into());
            }
        }
        if buf.capacity() > 4 * shared.max_batch_bytes.max(64 * 1024) {
            // Do not keep a huge buffer around after one large batch.
            buf = BytesMut::with_capacity(64 * 1024);
        }
    }
}

// ---------------------------------------------------------------------------------------
// Inbound: accept loop, handshake, message reader.

async fn accept_loop(shared: Arc<Shared>, listener: TcpListener, permits: Arc<Semaphore>) {
    let mut shutdown = shared.shutdown.clone();
    loop {
        let accepted = tokio::select! {
            a = listener.accept() => a,
            _ = shutdown.wait_for(|s| *s) => return,
        };
        let (tcp, addr) = match accepted {
            Ok(a) => a,
            Err(e) => {
                // Typically out of file descriptors: wait a little instead of spinning.
                warn!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let Ok(permit) = permits.clone().try_acquire_owned() else {
            Counters::add(&shared.counters.inbound_over_limit, 1);
            warn!(peer_addr = %addr, "closing connection: too many inbound connections");
            drop(tcp);
            continue;
        };
        let shared = shared.clone();
        let span = debug_span!("inbound", node = %shared.local_id, peer_addr = %addr);
        tokio::spawn(
            async move {
                serve_inbound(&shared, tcp, addr).await;
                drop(permit);
            }
            .instrument(span),
        );
    }
}

/// Why an inbound connection was closed.
#[derive(Debug, thiserror::Error)]
enum InboundError {
    #[error("{0}")]
    Frame(#[from] FrameError),
    #[error("handshake timed out")]
    HandshakeTimeout,
    #[error("TLS handshake failed: {0}")]
    Tls(io::Error),
    #[error("timed out")]
    Timeout,
    #[error("expected {expected}, got frame {got:?}")]
    Unexpected { expected: &'static str, got: FrameType },
    #[error("message claims from {from} to {to} on a connection from {peer} to {local}")]
    WrongIds { from: NodeId, to: NodeId, peer: NodeId, local: NodeId },
    #[error("InstallSnapshot on the messages stream")]
    SnapshotOnMessageStream,
    #[error("snapshot: {0}")]
    Snapshot(String),
    #[error("request: {0}")]
    Request(String),
    #[error("i/o error: {0}")]
    Io(#[from] io::Error),
}

impl From<DecodeError> for InboundError {
    fn from(e: DecodeError) -> InboundError {
        InboundError::Frame(FrameError::Decode(e))
    }
}

impl InboundError {
    /// Whether the peer sent something it should not have (as opposed to I/O trouble).
    fn is_protocol_violation(&self) -> bool {
        !matches!(
            self,
            InboundError::Frame(FrameError::Io(_))
                | InboundError::Io(_)
                | InboundError::Timeout
                | InboundError::HandshakeTimeout
                | InboundError::Snapshot(_)
                | InboundError::Request(_)
        )
    }
}

fn check_hello(shared: &Shared, hello: &Hello) -> Result<(), HelloRefused> {
    let refuse = |code, reason: String| Err(HelloRefused { code, reason });
    if hello.magic != MAGIC {
        return refuse(RefusalCode::BadMagic, format!("bad magic {:#010x}", hello.magic));
    }
    if hello.protocol_version != PROTOCOL_VERSION {
        return refuse(
            RefusalCode::UnsupportedVersion,
            format!(
                "unsupported protocol version {} (acceptor speaks {})",
                hello.protocol_version, PROTOCOL_VERSION
            ),
        );
    }
    if hello.cluster_id != shared.cluster_id {
        return refuse(
            RefusalCode::ClusterIdMismatch,
            format!(
                "cluster id mismatch (acceptor {:#x}, dialer {:#x}): member of another cluster",
                shared.cluster_id, hello.cluster_id
            ),
        );
    }
    if hello.to != shared.local_id {
        return refuse(
            RefusalCode::WrongMember,
            format!("wrong member: dialed node {}, this is node {}", hello.to, shared.local_id),
        );
    }
    if shared.removed.read().is_ok_and(|r| r.contains(&hello.from)) {
        return refuse(
            RefusalCode::Removed,
            format!("node {} was removed from the cluster (refused by node {})", hello.from, shared.local_id),
        );
    }
    if !shared.is_known(hello.from) {
        return refuse(
            RefusalCode::UnknownPeer,
            format!("node {} is not a known peer of node {}", hello.from, shared.local_id),
        );
    }
    Ok(())
}

/// Registers a connection as the live one for (peer, kind), cancelling the previous one.
fn register_conn(shared: &Shared, peer: NodeId, kind: StreamKind) -> (u64, oneshot::Receiver<()>) {
    let id = shared.next_conn.fetch_add(1, Ordering::Relaxed);
    let (tx, rx) = oneshot::channel();
    if let Ok(mut conns) = shared.inbound_conns.lock() {
        // Dropping the old sender cancels the old connection.
        conns.insert((peer, kind), (id, tx));
    }
    (id, rx)
}

fn unregister_conn(shared: &Shared, peer: NodeId, kind: StreamKind, id: u64) {
    if let Ok(mut conns) = shared.inbound_conns.lock()
        && conns.get(&(peer, kind)).is_some_and(|(live, _)| *live == id)
    {
        conns.remove(&(peer, kind));
    }
}

async fn serve_inbound(shared: &Arc<Shared>, tcp: TcpStream, addr: SocketAddr) {
    let mut shutdown = shared.shutdown.clone();
    tokio::select! {
        r = serve_inbound_inner(shared, tcp, addr) => {
            if let Err(e) = r {
                if let InboundError::Tls(io) = &e {
                    Counters::add(&shared.counters.refused_inbound, 1);
                    let (why, detailed) =
                        crate::stream::tls_failure(io).unwrap_or_else(|| (e.to_string(), e.to_string()));
                    if shared.tls_warnings.due(&addr.ip().to_string(), &why) {
                        warn!(peer_addr = %addr, "refusing peer connection: TLS handshake failed: {detailed}");
                    }
                } else if e.is_protocol_violation() {
                    Counters::add(&shared.counters.malformed_closed, 1);
                    warn!(peer_addr = %addr, error = %e, "closing connection: malformed input from peer");
                } else {
                    debug!(peer_addr = %addr, error = %e, "inbound connection closed");
                }
            }
        }
        _ = shutdown.wait_for(|s| *s) => {}
    }
}

async fn serve_inbound_inner(
    shared: &Arc<Shared>,
    tcp: TcpStream,
    addr: SocketAddr,
) -> Result<(), InboundError> {
    tcp.set_nodelay(true)?;
    let tcp = match &shared.tls_acceptor {
        None => PeerStream::Plain(tcp),
        // With client authentication, a peer without a certificate from the trusted CA
        // fails here, before any frame is read.
        Some(acceptor) => match timeout(shared.handshake_timeout, acceptor.accept(tcp)).await {
            Err(_) => return Err(InboundError::HandshakeTimeout),
            Ok(Err(e)) => return Err(InboundError::Tls(e)),
            Ok(Ok(tls)) => PeerStream::Tls(Box::new(tls.into())),
        },
    };
    let (mut rd, mut wr) = tcp.into_split();
    let mut reader = FrameReader::new();
    let hello = match timeout(shared.handshake_timeout, reader.read_frame(&mut rd, HANDSHAKE_MAX_FRAME_BYTES))
        .await
    {
        Err(_) => return Err(InboundError::HandshakeTimeout),
        Ok(Err(e)) => return Err(e.into()),
        Ok(Ok(None)) => return Ok(()),
        Ok(Ok(Some((FrameType::Hello, payload)))) => Hello::decode(payload)?,
        Ok(Ok(Some((got, _)))) => return Err(InboundError::Unexpected { expected: "Hello", got }),
    };
    if hello.magic == MAGIC
        && hello.protocol_version == PROTOCOL_VERSION
        && hello.stream == StreamKind::Members
    {
        return answer_members(shared, &mut wr, addr).await;
    }
    let mut buf = BytesMut::new();
    if hello.magic == MAGIC && hello.cluster_id == 0 && hello.from == NodeId(0) {
        // Discovery by a member about to join (see [`discover`]): who we are, nothing more.
        debug!(peer_addr = %addr, "answering a discovery hello");
        HelloOk {
            protocol_version: PROTOCOL_VERSION,
            cluster_id: shared.cluster_id,
            node_id: shared.local_id,
        }
        .encode(&mut buf);
        let _ = timeout(shared.handshake_timeout, wr.write_all(&buf)).await;
        let _ = wr.shutdown().await;
        return Ok(());
    }
    if let Err(refused) = check_hello(shared, &hello) {
        Counters::add(&shared.counters.refused_inbound, 1);
        warn!(peer_addr = %addr, peer = %hello.from, "refusing connection: {}", refused.reason);
        refused.encode(&mut buf);
        let _ = timeout(shared.handshake_timeout, wr.write_all(&buf)).await;
        let _ = wr.shutdown().await;
        return Ok(());
    }
    HelloOk { protocol_version: PROTOCOL_VERSION, cluster_id: shared.cluster_id, node_id: shared.local_id }
        .encode(&mut buf);
    match timeout(shared.handshake_timeout, wr.write_all(&buf)).await {
        Err(_) => return Err(InboundError::HandshakeTimeout),
        Ok(r) => r?,
    }
    let peer = hello.from;
    debug!(peer = %peer, stream = ?hello.stream, "accepted");
    if hello.stream == StreamKind::Requests {
        // Several per peer may be open at once (one per request in progress).
        return serve_requests(shared, &mut rd, &mut wr, reader, peer).await;
    }
    let (conn_id, cancel) = register_conn(shared, peer, hello.stream);
    // The peer is up: if our link to it is down (or about to be), dial now instead of after
    // the backoff. A permit stored while the link is up costs at most one early redial.
    if let Ok(links) = shared.links.read()
        && let Some(link) = links.get(&peer)
    {
        link.redial.notify_one();
    }
    let result = tokio::select! {
        r = async {
            match hello.stream {
                StreamKind::Messages => read_messages(shared, &mut rd, reader, peer).await,
                StreamKind::Snapshot => receive_snapshot(shared, &mut rd, &mut wr, reader, peer, addr).await,
                StreamKind::Requests | StreamKind::Members => Ok(()),
            }
        } => r,
        _ = cancel => {
            debug!(peer = %peer, "replaced by a newer connection from the same peer");
            Ok(())
        }
    };
    unregister_conn(shared, peer, hello.stream, conn_id);
    result
}

/// The members stream: HelloOk, the member list, close.
async fn answer_members(shared: &Shared, wr: &mut WriteHalf, addr: SocketAddr) -> Result<(), InboundError> {
    let mut buf = BytesMut::new();
    match shared.service() {
        None => {
            HelloRefused {
                code: RefusalCode::Overloaded,
                reason: "the member is starting: no member list yet".into(),
            }
            .encode(&mut buf);
        }
        Some(service) => {
            HelloOk {
                protocol_version: PROTOCOL_VERSION,
                cluster_id: shared.cluster_id,
                node_id: shared.local_id,
            }
            .encode(&mut buf);
            let list = MemberList { members: service.members() };
            if let Err(e) = list.encode(MAX_MEMBER_LIST_FRAME, &mut buf) {
                warn!(peer_addr = %addr, error = %e, "cannot send the member list");
                return Ok(());
            }
            Counters::add(&shared.counters.member_lists_sent, 1);
            debug!(peer_addr = %addr, members = list.members.len(), "member list sent");
        }
    }
    let _ = timeout(shared.handshake_timeout, wr.write_all(&buf)).await;
    let _ = wr.shutdown().await;
    Ok(())
}

/// A requests stream: each Request is handed to the service and answered in turn, until the
/// dialer closes, the connection is idle for `request_idle_timeout`, or the peer is no
/// longer a member.
async fn serve_requests(
    shared: &Shared,
    rd: &mut ReadHalf,
    wr: &mut WriteHalf,
    mut reader: FrameReader,
    peer: NodeId,
) -> Result<(), InboundError> {
    let limit = shared.request_frame_limit();
    let mut buf = BytesMut::new();
    loop {
        let (ty, payload) = match timeout(shared.request_idle_timeout, reader.read_frame(rd, limit)).await {
            Err(_) => return Ok(()),
            Ok(Err(e)) => return Err(e.into()),
            Ok(Ok(None)) => return Ok(()),
            Ok(Ok(Some(f))) => f,
        };
        if ty != FrameType::Request {
            return Err(InboundError::Unexpected { expected: "Request", got: ty });
        }
        let request = Request::decode(payload)?;
        if !shared.is_known(peer) {
            // Removed since the handshake: its requests are not handled any more.
            debug!(peer = %peer, "closing a requests connection of a member no longer known");
            return Ok(());
        }
        let response = handle_request(shared, peer, request).await;
        buf.clear();
        if let Err(e) = response.encode(limit, &mut buf) {
            return Err(InboundError::Request(format!("cannot encode a response: {e}")));
        }
        match timeout(shared.write_timeout, wr.write_all(&buf)).await {
            Err(_) => return Err(InboundError::Timeout),
            Ok(r) => r?,
        }
    }
}

/// Runs one request through the service, within its timeout and the bound on requests
/// handled at once.
async fn handle_request(shared: &Shared, peer: NodeId, request: Request) -> Response {
    let id = request.id;
    let refuse = |code, reason: &str| {
        Counters::add(&shared.counters.requests_refused, 1);
        Response { id, code, body: Bytes::copy_from_slice(reason.as_bytes()) }
    };
    let Some(service) = shared.service() else {
        return refuse(ResponseCode::NotReady, "the member is starting");
    };
    let Ok(_permit) = shared.serving.clone().try_acquire_owned() else {
        return refuse(ResponseCode::Overloaded, "too many requests in progress");
    };
    Counters::add(&shared.counters.requests_served, 1);
    let limit = Duration::from_millis(u64::from(request.timeout_ms)).min(shared.max_request_timeout);
    let (code, body) = match timeout(limit, service.request(peer, request.body)).await {
        Err(_) => (ResponseCode::TimedOut, Bytes::from_static(b"the handler did not answer in time")),
        Ok(Err(reason)) => (ResponseCode::Failed, Bytes::from(reason.into_bytes())),
        Ok(Ok(answer)) if answer.len() > shared.max_request_bytes as usize => (
            ResponseCode::Failed,
            Bytes::from(format!(
                "answer of {} bytes exceeds the limit of {}",
                answer.len(),
                shared.max_request_bytes
            )),
        ),
        Ok(Ok(answer)) => (ResponseCode::Ok, answer),
    };
    Response { id, code, body }
}

async fn read_messages(
    shared: &Shared,
    rd: &mut ReadHalf,
    mut reader: FrameReader,
    peer: NodeId,
) -> Result<(), InboundError> {
    // A member not (or no longer) in the configuration has no link: nothing is counted for it.
    let link = shared.links.read().ok().and_then(|l| l.get(&peer).cloned());
    loop {
        let Some((ty, payload)) = reader.read_frame(rd, shared.max_frame_bytes).await? else {
            debug!(peer = %peer, "peer closed the connection");
            return Ok(());
        };
        if ty != FrameType::Message {
            return Err(InboundError::Unexpected { expected: "Message", got: ty });
        }
        let len = payload.len() as u64 + codec::FRAME_HEADER_LEN as u64;
        let msg = codec::decode(payload)?;
        if msg.from != peer || msg.to != shared.local_id {
            return Err(InboundError::WrongIds { from: msg.from, to: msg.to, peer, local: shared.local_id });
        }
        if matches!(msg.body, MessageBody::InstallSnapshot { .. }) {
            return Err(InboundError::SnapshotOnMessageStream);
        }
        // Counted before it is handed over, so whoever receives it sees it counted.
        Counters::add(&shared.counters.messages_received, 1);
        Counters::add(&shared.counters.bytes_received, len);
        if let Some(link) = &link {
            link.bytes_received.fetch_add(len, Ordering::Relaxed);
            link.probe_answered(&msg);
        }
        // Awaiting here is the backpressure: a slow driver slows this TCP connection.
        if shared.inbound.send(Inbound::Message(msg)).await.is_err() {
            return Ok(());
        }
    }
}

// ---------------------------------------------------------------------------------------
// Snapshot stream, receiving side.

async fn read_snapshot_frame(
    shared: &Shared,
    rd: &mut ReadHalf,
    reader: &mut FrameReader,
) -> Result<(FrameType, Bytes), InboundError> {
    match timeout(shared.snapshot_io_timeout, reader.read_frame(rd, shared.max_frame_bytes)).await {
        Err(_) => Err(InboundError::Timeout),
        Ok(Err(e)) => Err(e.into()),
        Ok(Ok(None)) => Err(InboundError::Frame(FrameError::TruncatedAtEof(0))),
        Ok(Ok(Some(f))) => Ok(f),
    }
}

/// Runs a blocking sink call on the blocking pool, handing the sink back.
async fn with_sink<T: Send + 'static>(
    sink: Box<dyn SnapshotSink>,
    f: impl FnOnce(&mut dyn SnapshotSink) -> io::Result<T> + Send + 'static,
) -> (Option<Box<dyn SnapshotSink>>, io::Result<T>) {
    let joined = tokio::task::spawn_blocking(move || {
        let mut sink = sink;
        let r = f(sink.as_mut());
        (sink, r)
    })
    .await;
    match joined {
        Ok((sink, r)) => (Some(sink), r),
        Err(e) => (None, Err(io::Error::other(format!("snapshot sink task failed: {e}")))),
    }
}

async fn receive_snapshot(
    shared: &Shared,
    rd: &mut ReadHalf,
    wr: &mut WriteHalf,
    mut reader: FrameReader,
    peer: NodeId,
    addr: SocketAddr,
) -> Result<(), InboundError> {
    let result = receive_snapshot_body(shared, rd, &mut reader, peer).await;
    let ack = match &result {
        Ok(_) => SnapshotAck { ok: true, reason: String::new() },
        Err(e) => {
            Counters::add(&shared.counters.snapshots_rejected, 1);
            warn!(peer_addr = %addr, peer = %peer, error = %e, "rejecting snapshot transfer");
            SnapshotAck { ok: false, reason: e.to_string() }
        }
    };
    if let Ok(Some((message, staged))) = result {
        // Staged and verified: hand it over, then acknowledge.
        if shared.inbound.send(Inbound::Snapshot { message, staged }).await.is_err() {
            return Ok(());
        }
        Counters::add(&shared.counters.snapshots_received, 1);
    }
    let mut buf = BytesMut::new();
    ack.encode(&mut buf);
    let _ = timeout(shared.snapshot_io_timeout, wr.write_all(&buf)).await;
    let _ = wr.shutdown().await;
    Ok(())
}

async fn receive_snapshot_body(
    shared: &Shared,
    rd: &mut ReadHalf,
    reader: &mut FrameReader,
    peer: NodeId,
) -> Result<Option<(Message, StagedSnapshot)>, InboundError> {
    let (ty, payload) = read_snapshot_frame(shared, rd, reader).await?;
    if ty != FrameType::SnapshotBegin {
        return Err(InboundError::Unexpected { expected: "SnapshotBegin", got: ty });
    }
    let begin = SnapshotBegin::decode(payload)?;
    let MessageBody::InstallSnapshot { meta } = &begin.message.body else {
        return Err(InboundError::Snapshot("SnapshotBegin does not carry an InstallSnapshot".into()));
    };
    if begin.message.from != peer || begin.message.to != shared.local_id {
        return Err(InboundError::WrongIds {
            from: begin.message.from,
            to: begin.message.to,
            peer,
            local: shared.local_id,
        });
    }
    let total = begin.total_len;
    if total > shared.max_snapshot_bytes {
        return Err(InboundError::Snapshot(format!(
            "snapshot of {total} bytes exceeds the limit of {}",
            shared.max_snapshot_bytes
        )));
    }
    let sinks = shared.sinks.clone();
    let meta = meta.clone();
    let created = tokio::task::spawn_blocking(move || sinks.create(peer, &meta, total)).await;
    let mut sink = match created {
        Ok(Ok(sink)) => sink,
        Ok(Err(e)) => return Err(InboundError::Snapshot(format!("cannot create sink: {e}"))),
        Err(e) => return Err(InboundError::Snapshot(format!("sink factory failed: {e}"))),
    };
    let mut body = BodyReceiver::new(total);
    loop {
        let (ty, payload) = read_snapshot_frame(shared, rd, reader).await?;
        match ty {
            FrameType::SnapshotChunk => {
                let chunk = SnapshotChunk::decode(payload)?;
                body.chunk(&chunk).map_err(|e| InboundError::Snapshot(e.to_string()))?;
                let data = chunk.data;
                let at = chunk.offset;
                let (back, r) = with_sink(sink, move |s| s.write_chunk(at, &data)).await;
                r.map_err(|e| InboundError::Snapshot(format!("sink write failed: {e}")))?;
                let Some(back) = back else {
                    return Err(InboundError::Snapshot("sink lost".into()));
                };
                sink = back;
            }
            FrameType::SnapshotEnd => {
                let end = SnapshotEnd::decode(payload)?;
                let crc = body.end(&end).map_err(|e| InboundError::Snapshot(e.to_string()))?;
                let finished = tokio::task::spawn_blocking(move || sink.finish()).await;
                let body = match finished {
                    Ok(Ok(body)) => body,
                    Ok(Err(e)) => return Err(InboundError::Snapshot(format!("staging failed: {e}"))),
                    Err(e) => return Err(InboundError::Snapshot(format!("staging task failed: {e}"))),
                };
                debug!(peer = %peer, bytes = total, "snapshot staged");
                return Ok(Some((begin.message, StagedSnapshot { len: total, crc32c: crc, body })));
            }
            got => return Err(InboundError::Unexpected { expected: "SnapshotChunk or SnapshotEnd", got }),
        }
    }
}

// ---------------------------------------------------------------------------------------
// Snapshot stream, sending side.

#[derive(Debug, thiserror::Error)]
enum SnapshotSendFailure {
    #[error("{0}")]
    Dial(#[from] DialError),
    #[error("reading the snapshot source: {0}")]
    Source(io::Error),
    #[error("i/o error: {0}")]
    Io(#[from] io::Error),
    #[error("timed out")]
    Timeout,
    #[error("{0}")]
    Encode(#[from] EncodeError),
    #[error("receiver rejected the snapshot: {0}")]
    Rejected(String),
    #[error("no acknowledgement: {0}")]
    NoAck(String),
}

async fn send_snapshot_task(
    shared: Arc<Shared>,
    link: Arc<PeerLink>,
    addr: String,
    msg: Message,
    source: Box<dyn SnapshotSource>,
) {
    let to = msg.to;
    let result = tokio::select! {
        r = transfer_snapshot(&shared, &addr, msg, source) => r,
        _ = stopped(shared.shutdown.clone()) => {
            link.snapshot_busy.store(false, Ordering::Release);
            return;
        }
    };
    let ok = match result {
        Ok(bytes) => {
            Counters::add(&shared.counters.snapshots_sent, 1);
            debug!(bytes, "snapshot delivered");
            true
        }
        Err(e) => {
            Counters::add(&shared.counters.snapshots_failed, 1);
            warn!("snapshot to peer {to} at {addr} failed: {e}");
            false
        }
    };
    link.snapshot_busy.store(false, Ordering::Release);
    tokio::select! {
        _ = shared.reports.send(Report::Snapshot { to, ok }) => {}
        _ = stopped(shared.shutdown.clone()) => {}
    }
}

async fn write_with_timeout(
    shared: &Shared,
    wr: &mut WriteHalf,
    buf: &[u8],
) -> Result<(), SnapshotSendFailure> {
    match timeout(shared.snapshot_io_timeout, wr.write_all(buf)).await {
        Err(_) => Err(SnapshotSendFailure::Timeout),
        Ok(r) => Ok(r?),
    }
}

/// Streams one snapshot; returns its length once the receiver acknowledged it.
async fn transfer_snapshot(
    shared: &Shared,
    addr: &str,
    msg: Message,
    mut source: Box<dyn SnapshotSource>,
) -> Result<u64, SnapshotSendFailure> {
    let total = source.total_len();
    let (tcp, mut reader) = dial(shared, addr, msg.to, StreamKind::Snapshot).await?;
    let (mut rd, mut wr) = tcp.into_split();
    let mut buf = BytesMut::new();
    SnapshotBegin { total_len: total, message: msg }.encode(shared.max_frame_bytes, &mut buf)?;
    write_with_timeout(shared, &mut wr, &buf).await?;

    // The source is read on a blocking thread, at most two chunks ahead of the socket.
    let (chunk_tx, mut chunk_rx) = mpsc::channel::<io::Result<Bytes>>(2);
    let chunk_size = shared.snapshot_chunk_bytes as u64;
    let producer = tokio::task::spawn_blocking(move || {
        let mut remaining = total;
        while remaining > 0 {
            // chunk_size fits usize; so does min(remaining, chunk_size).
            let n = remaining.min(chunk_size) as usize;
            let mut data = vec![0u8; n];
            let r = source.read_chunk(&mut data).map(|()| Bytes::from(data));
            let failed = r.is_err();
            if chunk_tx.blocking_send(r).is_err() || failed {
                return;
            }
            remaining -= n as u64;
        }
    });

    let mut offset = 0u64;
    let mut crc = 0u32;
    let mut index = 0u64;
    while offset < total {
        let data = match chunk_rx.recv().await {
            Some(Ok(data)) => data,
            Some(Err(e)) => return Err(SnapshotSendFailure::Source(e)),
            None => {
                return Err(SnapshotSendFailure::Source(io::Error::other("snapshot reader stopped early")));
            }
        };
        let chunk_crc = crc32c::crc32c(&data);
        crc = crc32c::crc32c_append(crc, &data);
        let len = data.len() as u64;
        let data = if shared.faults.corrupt_snapshot_chunk == Some(index) {
            let mut bad = data.to_vec();
            if let Some(b) = bad.first_mut() {
                *b ^= 0x01;
            }
            Bytes::from(bad)
        } else {
            data
        };
        buf.clear();
        SnapshotChunk { offset, data, crc32c: chunk_crc }.encode(shared.max_frame_bytes, &mut buf)?;
        write_with_timeout(shared, &mut wr, &buf).await?;
        offset += len;
        index += 1;
    }
    let _ = producer.await;
    buf.clear();
    SnapshotEnd { total_len: total, crc32c: crc }.encode(&mut buf);
    write_with_timeout(shared, &mut wr, &buf).await?;

    let ack = match timeout(shared.snapshot_io_timeout, reader.read_frame(&mut rd, HANDSHAKE_MAX_FRAME_BYTES))
        .await
    {
        Err(_) => return Err(SnapshotSendFailure::NoAck("timed out".into())),
        Ok(Err(e)) => return Err(SnapshotSendFailure::NoAck(e.to_string())),
        Ok(Ok(None)) => return Err(SnapshotSendFailure::NoAck("connection closed".into())),
        Ok(Ok(Some((FrameType::SnapshotAck, payload)))) => {
            SnapshotAck::decode(payload).map_err(|e| SnapshotSendFailure::NoAck(e.to_string()))?
        }
        Ok(Ok(Some((other, _)))) => {
            return Err(SnapshotSendFailure::NoAck(format!("unexpected frame {other:?}")));
        }
    };
    if ack.ok { Ok(total) } else { Err(SnapshotSendFailure::Rejected(ack.reason)) }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_with_jitter_and_caps() {
        let mut b = Backoff::new(Duration::from_millis(50), Duration::from_secs(2), 42);
        let mut prev_cap = Duration::from_millis(50);
        for _ in 0..10 {
            let d = b.next_delay();
            assert!(d >= prev_cap / 2 && d <= prev_cap, "{d:?} vs {prev_cap:?}");
            prev_cap = (prev_cap * 2).min(Duration::from_secs(2));
        }
        b.reset();
        assert!(b.next_delay() <= Duration::from_millis(50));
    }
}
