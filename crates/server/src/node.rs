//! The driver: runs the Raft core against a real clock, disk and network, following the
//! core's ordering contract.
//!
//! Three threads of control:
//! - the driver task (tokio) owns the `Raft`: ticks, steps messages, batches proposals and
//!   reads, sends `Ready::messages` at once (the leader replicates while it writes);
//! - the disk thread appends entries and hard state, fsyncs once for everything queued
//!   (group commit across Readies), then releases `messages_after_persist` and reports
//!   `persisted`;
//! - the apply thread applies committed entries to the state machine, completes waiting
//!   client requests, and takes snapshots every `snapshot_count` entries.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::io::{self, Read, Write};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, mpsc as std_mpsc};
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use bytes::Bytes;
use parking_lot::{Mutex, RwLock};
use raftkv_raft::{
    ClusterConfig, Config, Entry, EntryKind, InitialState, LogIndex, Message, MessageBody, NodeId,
    ProposeError, Raft, Ready, Role, SnapshotMeta, Term,
};
use raftkv_storage::{LogStore, SnapshotReader, SnapshotStore, Storage};
use tokio::sync::{mpsc, oneshot, watch};

use crate::codec;

/// The replicated state machine the driver applies committed entries to.
pub trait StateMachine: Send + Sync + 'static {
    /// What a client request's application produces.
    type Output: Send + 'static;
    /// A point in the state's history that a snapshot in progress captures.
    type Pin: Send + 'static;
    /// Applies one committed normal entry. Returns the client request id carried in the
    /// entry (if any) and the outcome, to complete the waiting request.
    fn apply(&mut self, index: u64, data: &[u8]) -> Option<(u64, Self::Output)>;
    /// Marks the current state for a snapshot that [`StateMachine::write_snapshot`] writes
    /// while entries go on being applied. Must be cheap: it runs on the apply path.
    fn pin(&mut self) -> Self::Pin;
    /// Writes the whole state as it was at `pin`. `visit` runs a closure on the live state
    /// under the state's read lock; call it for small pieces of work so applying is never
    /// held up for long.
    fn write_snapshot(pin: &Self::Pin, w: &mut dyn Write, visit: &mut Visit<'_, Self>) -> io::Result<()>;
    /// Ends a [`StateMachine::pin`].
    fn unpin(&mut self, pin: Self::Pin);
    /// The snapshot written at `pin` is durable (files only it replaced may go).
    fn snapshot_durable(_pin: &Self::Pin) {}
    /// A stored snapshot (`len` bytes) as sent to a peer: self-contained. Returns the
    /// reader and its length.
    #[allow(clippy::type_complexity)]
    fn open_snapshot(
        &self,
        r: Box<dyn Read + Send>,
        len: u64,
    ) -> Result<(Box<dyn Read + Send>, u64), String> {
        Ok((r, len))
    }
    /// Replaces the whole state by a stored or received snapshot of `len` bytes.
    fn restore(&mut self, r: &mut dyn Read, len: u64) -> Result<(), String>;
}

/// Runs a closure on the live state machine (under its read lock).
pub type Visit<'a, S> = dyn FnMut(&mut dyn FnMut(&S)) + 'a;

/// The peer network as the driver sees it.
pub trait Network: Send + Sync + 'static {
    /// Sends a message; may drop it (Raft tolerates loss).
    fn send(&self, msg: Message);
    /// Streams a snapshot to `msg.to` on its own connection, then delivers `msg`.
    fn send_snapshot(&self, msg: Message, reader: Box<dyn Read + Send>, len: u64);
}

/// Where peer traffic comes from: polled by the driver itself, so a message goes from the
/// connection's reader to the core without another task in between.
pub trait PeerSource: Send + 'static {
    /// Like `mpsc::Receiver::poll_recv`; `Ready(None)` when the network has shut down.
    fn poll_recv(&mut self, cx: &mut Context<'_>) -> Poll<Option<Inbound>>;
}

/// A snapshot received from a peer and staged on disk, not yet installed.
pub type StagedSnapshot = Box<dyn Read + Send>;

/// What the network delivers to the driver.
pub enum Inbound {
    Message(Message),
    Snapshot {
        message: Message,
        data: StagedSnapshot,
    },
    /// A transfer to `to` ended.
    SnapshotReport {
        to: NodeId,
        ok: bool,
    },
    Unreachable(NodeId),
}

#[derive(Clone, Debug)]
pub struct NodeConfig {
    pub id: NodeId,
    pub voters: Vec<NodeId>,
    pub tick: Duration,
    pub heartbeat_ticks: u32,
    pub election_ticks: u32,
    pub snapshot_count: u64,
    /// Entries kept in the log behind a snapshot, so slightly lagging followers catch up
    /// from the log.
    pub snapshot_keep_entries: u64,
    /// Bound on queued client requests; beyond it clients get "too many requests".
    pub request_queue: usize,
    pub seed: u64,
}

/// Why a request failed.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum NodeError {
    #[error("too many requests")]
    TooManyRequests,
    #[error("no leader")]
    NoLeader,
    #[error("request timed out")]
    Timeout,
    #[error("server stopped")]
    Stopped,
    /// The leader changed while the request was in flight: it may or may not take effect.
    #[error("leader changed")]
    LeaderChanged,
}

/// Observable state of the member.
#[derive(Clone, Copy, Debug, Default)]
pub struct Status {
    pub term: u64,
    pub leader: u64,
    pub is_leader: bool,
    pub commit: u64,
    pub applied: u64,
    pub last_index: u64,
    pub snapshot_index: u64,
}

type Waiter<O> = oneshot::Sender<Result<O, NodeError>>;

/// State shared between the driver, the apply thread and request handlers.
pub struct Shared<S: StateMachine> {
    pub id: NodeId,
    pub sm: RwLock<S>,
    applied: watch::Sender<u64>,
    status: Mutex<Status>,
    waiters: Mutex<HashMap<u64, Waiter<S::Output>>>,
    next_request: AtomicU64,
    stopped: AtomicBool,
}

enum Request {
    Propose { id: u64, data: Bytes },
    Read { reply: oneshot::Sender<Result<u64, NodeError>> },
}

/// A cheap handle for request handlers.
pub struct NodeHandle<S: StateMachine> {
    requests: mpsc::Sender<Request>,
    pub shared: Arc<Shared<S>>,
}

impl<S: StateMachine> Clone for NodeHandle<S> {
    fn clone(&self) -> Self {
        NodeHandle { requests: self.requests.clone(), shared: self.shared.clone() }
    }
}

impl<S: StateMachine> NodeHandle<S> {
    /// A request id unique to this member, also across its restarts: the log it re-applies
    /// after a restart holds the ids of its earlier life, and a reused id would complete a
    /// new request with an old entry's result. Layout: the member id's low 16 bits, then a
    /// 48-bit counter that starts at (milliseconds since 2020) * 256 at boot, so it stays
    /// ahead of every id issued before as long as fewer than 256 requests per millisecond
    /// are made on average.
    pub fn next_request_id(&self) -> u64 {
        let n = self.shared.next_request.fetch_add(1, Ordering::Relaxed);
        ((self.shared.id.0 & 0xFFFF) << 48) | (n & 0xFFFF_FFFF_FFFF)
    }

    /// Replicates a command built around request id `id` and waits until this member has
    /// applied it.
    pub async fn propose(&self, id: u64, data: Bytes, timeout: Duration) -> Result<S::Output, NodeError> {
        if self.shared.stopped.load(Ordering::Relaxed) {
            return Err(NodeError::Stopped);
        }
        let (tx, rx) = oneshot::channel();
        self.shared.waiters.lock().insert(id, tx);
        if let Err(e) = self.requests.try_send(Request::Propose { id, data }) {
            self.shared.waiters.lock().remove(&id);
            return Err(match e {
                mpsc::error::TrySendError::Full(_) => NodeError::TooManyRequests,
                mpsc::error::TrySendError::Closed(_) => NodeError::Stopped,
            });
        }
        match tokio::time::timeout(timeout, rx).await {
            Ok(Ok(result)) => result,
            Ok(Err(_)) => Err(NodeError::Stopped),
            Err(_) => {
                self.shared.waiters.lock().remove(&id);
                Err(NodeError::Timeout)
            }
        }
    }

    /// Waits until a linearizable read may be served locally (ReadIndex, then applied).
    pub async fn read_barrier(&self, timeout: Duration) -> Result<(), NodeError> {
        let work = async {
            let (tx, rx) = oneshot::channel();
            self.requests.try_send(Request::Read { reply: tx }).map_err(|e| match e {
                mpsc::error::TrySendError::Full(_) => NodeError::TooManyRequests,
                mpsc::error::TrySendError::Closed(_) => NodeError::Stopped,
            })?;
            let index = rx.await.map_err(|_| NodeError::Stopped)??;
            self.wait_applied(index).await
        };
        tokio::time::timeout(timeout, work).await.map_err(|_| NodeError::Timeout)?
    }

    pub async fn wait_applied(&self, index: u64) -> Result<(), NodeError> {
        let mut rx = self.shared.applied.subscribe();
        rx.wait_for(|a| *a >= index).await.map(|_| ()).map_err(|_| NodeError::Stopped)
    }

    pub fn status(&self) -> Status {
        *self.shared.status.lock()
    }
}

/// See [`NodeHandle::next_request_id`].
fn request_counter_start() -> u64 {
    const EPOCH_2020_MS: u128 = 1_577_836_800_000;
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis());
    (now.saturating_sub(EPOCH_2020_MS) as u64).saturating_mul(256)
}

/// How long queued reads wait for an outstanding read index before asking for their own.
const READ_WAIT: Duration = Duration::from_millis(50);

/// Where a read barrier's read index (or error) goes.
type ReadReply = oneshot::Sender<Result<u64, NodeError>>;

enum Event {
    Persisted(LogIndex, Term),
    Applied(LogIndex),
    SnapshotTaken(LogIndex),
    Fatal(String),
}

struct PersistJob {
    snapshot: Option<(SnapshotMeta, StagedSnapshot)>,
    entries: Vec<Entry>,
    hard_state: Option<raftkv_raft::HardState>,
    after_persist: Vec<Message>,
    target: Option<(LogIndex, Term)>,
}

enum DiskJob {
    Persist(PersistJob),
    Compact(u64),
}

enum ApplyJob {
    Entries(Vec<Entry>),
    Restore(SnapshotMeta),
}

/// Everything needed to start a member's driver.
pub struct Node<S: StateMachine> {
    pub handle: NodeHandle<S>,
    inbound_tx: mpsc::Sender<Inbound>,
    task: tokio::task::JoinHandle<Result<(), String>>,
    shutdown: watch::Sender<bool>,
}

impl<S: StateMachine> Node<S> {
    /// Recovers from `storage` and starts the driver, the disk thread and the apply thread.
    pub fn start(
        config: NodeConfig,
        storage: Storage,
        recovered: raftkv_storage::Recovered,
        mut sm: S,
        network: Arc<dyn Network>,
        peers: Box<dyn PeerSource>,
    ) -> Result<Node<S>, String> {
        let snapshots = storage.snapshots.clone();
        let snapshots_for_driver = storage.snapshots.clone();
        let snapshot = match &recovered.snapshot {
            Some(meta) => {
                let (found, mut reader) = snapshots
                    .latest()
                    .map_err(|e| e.to_string())?
                    .ok_or("the snapshot recovered at open has disappeared")?;
                if found.index != meta.index {
                    return Err("the snapshot directory changed during start-up".into());
                }
                let len = reader.remaining();
                sm.restore(&mut reader, len)
                    .map_err(|e| format!("cannot restore snapshot {}: {e}", meta.index))?;
                Some(codec::meta_from_storage(meta)?)
            }
            None => None,
        };
        let entries =
            recovered.records.into_iter().map(codec::record_to_entry).collect::<Result<Vec<_>, _>>()?;
        let initial = InitialState {
            hard_state: codec::hard_state_from_storage(&recovered.hard_state),
            config: ClusterConfig::new(config.voters.iter().copied()),
            snapshot: snapshot.clone(),
            entries,
        };
        let mut raft_config = Config::new(config.id);
        raft_config.election_timeout_ticks = config.election_ticks;
        raft_config.heartbeat_interval_ticks = config.heartbeat_ticks;
        raft_config.seed = config.seed;
        raft_config.append_bytes_max = 4 << 20;
        let raft = Raft::new(raft_config, initial).map_err(|e| e.to_string())?;
        let snapshot_index = snapshot.as_ref().map_or(0, |s| s.index.0);
        let cluster = raft.cluster_config().clone();

        let (applied_tx, _) = watch::channel(snapshot_index);
        let shared = Arc::new(Shared {
            id: config.id,
            sm: RwLock::new(sm),
            applied: applied_tx,
            status: Mutex::new(Status { applied: snapshot_index, snapshot_index, ..Status::default() }),
            waiters: Mutex::new(HashMap::new()),
            next_request: AtomicU64::new(request_counter_start()),
            stopped: AtomicBool::new(false),
        });
        let (requests_tx, requests_rx) = mpsc::channel(config.request_queue);
        let (inbound_tx, inbound_rx) = mpsc::channel(4096);
        let (events_tx, events_rx) = mpsc::unbounded_channel();
        let (disk_tx, disk_rx) = std_mpsc::channel();
        let (apply_tx, apply_rx) = std_mpsc::channel();
        let apply_tx = ApplyQueue { tx: apply_tx, pending: Arc::new(AtomicU64::new(0)) };
        let (shutdown, shutdown_rx) = watch::channel(false);

        {
            let events = events_tx.clone();
            let network = network.clone();
            let apply_tx = apply_tx.clone();
            std::thread::Builder::new()
                .name("raftkv-disk".into())
                .spawn(move || disk_loop(storage, disk_rx, events, network, apply_tx))
                .map_err(|e| e.to_string())?;
        }
        let last = snapshot.as_ref().map_or((LogIndex(0), Term(0)), |s| (s.index, s.term));
        let applier = Arc::new(Mutex::new(Applier {
            shared: shared.clone(),
            events: events_tx.clone(),
            snapshots,
            snapshot_count: config.snapshot_count,
            cluster,
            last,
            last_snapshot: last.0,
            snapshotting: None,
            bytes_since: 0,
            last_snapshot_bytes: Arc::new(AtomicU64::new(0)),
        }));
        {
            let (applier, pending) = (applier.clone(), apply_tx.pending.clone());
            std::thread::Builder::new()
                .name("raftkv-apply".into())
                .spawn(move || apply_loop(applier, apply_rx, pending))
                .map_err(|e| e.to_string())?;
        }
        let driver = Driver {
            raft,
            config: config.clone(),
            shared: shared.clone(),
            network,
            requests: requests_rx,
            inbound: inbound_rx,
            peers,
            events: events_rx,
            disk: disk_tx,
            apply: apply_tx,
            applier,
            shutdown: shutdown_rx,
            reads: BTreeMap::new(),
            read_queue: Vec::new(),
            read_sent: None,
            next_read: 1,
            staged: BTreeMap::new(),
            snapshots: snapshots_for_driver,
            in_flight: VecDeque::new(),
            parked: VecDeque::new(),
            known_leader: None,
        };
        let task = tokio::spawn(tracing::Instrument::instrument(driver.run(), tracing::Span::current()));
        Ok(Node { handle: NodeHandle { requests: requests_tx, shared }, inbound_tx, task, shutdown })
    }

    /// Where the network delivers inbound traffic.
    pub fn inbound(&self) -> mpsc::Sender<Inbound> {
        self.inbound_tx.clone()
    }

    /// Stops the driver (pending requests fail with `Stopped`) and waits for it.
    pub async fn stop(self) -> Result<(), String> {
        let _ = self.shutdown.send(true);
        self.task.await.map_err(|e| e.to_string())?
    }

    /// Resolves when the driver ended on its own (a fatal error).
    pub fn is_finished(&self) -> bool {
        self.task.is_finished()
    }
}

struct Driver<S: StateMachine> {
    raft: Raft,
    config: NodeConfig,
    shared: Arc<Shared<S>>,
    network: Arc<dyn Network>,
    requests: mpsc::Receiver<Request>,
    inbound: mpsc::Receiver<Inbound>,
    peers: Box<dyn PeerSource>,
    events: mpsc::UnboundedReceiver<Event>,
    disk: std_mpsc::Sender<DiskJob>,
    apply: ApplyQueue,
    applier: Arc<Mutex<Applier<S>>>,
    shutdown: watch::Receiver<bool>,
    /// Read barriers waiting for their read index, by context: one context serves every
    /// read that arrived in the same batch of requests.
    reads: BTreeMap<u64, Vec<ReadReply>>,
    /// Reads that arrived while a read index was outstanding: they go together with the
    /// next one (fewer read-index requests under load, as etcd does).
    read_queue: Vec<ReadReply>,
    /// When the latest read index was asked for.
    read_sent: Option<Instant>,
    next_read: u64,
    staged: BTreeMap<(LogIndex, Term), StagedSnapshot>,
    snapshots: SnapshotStore,
    /// Proposal batches handed to the core (appended here, or forwarded to the leader of
    /// the time), oldest first; failed with `LeaderChanged` when leadership moves.
    in_flight: VecDeque<(Vec<u64>, Instant)>,
    /// Proposals waiting for a leader to be known.
    parked: VecDeque<(u64, Bytes, Instant)>,
    known_leader: Option<NodeId>,
}

/// A snapshot waits until the log applied since the previous one, times this, reaches the
/// previous snapshot's size: snapshot writing stays within this multiple of the log's.
const SNAPSHOT_PACE: u64 = 4;
/// ...but not beyond this many bytes of log applied since the last snapshot: the log is
/// held in memory until a snapshot covers it, so with a large state the pacing alone would
/// let it grow to a quarter of the state's size.
const LOG_BYTES_MAX: u64 = 128 << 20;
/// Bytes an entry costs in the log besides its data (framing, index, term).
const ENTRY_OVERHEAD: u64 = 32;

/// A number in `[0, 1)` that differs between processes and calls.
fn random_fraction() -> f64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos()),
    );
    (h.finish() >> 11) as f64 / (1u64 << 53) as f64
}

/// Committed batches up to this many entries may be applied on the driver itself.
const INLINE_APPLY_MAX: usize = 8;

/// At most this many client requests are folded into one batch.
const BATCH_MAX: usize = 4096;

impl<S: StateMachine> Driver<S> {
    async fn run(mut self) -> Result<(), String> {
        // Members started together would tick in phase; a random phase keeps two followers
        // that drew the same election timeout from campaigning in the same instant.
        let phase = self.config.tick.mul_f64(random_fraction());
        let mut ticker = tokio::time::interval_at(tokio::time::Instant::now() + phase, self.config.tick);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let result = loop {
            tokio::select! {
                _ = ticker.tick() => {
                    self.raft.tick();
                    // Reads whose clients gave up (e.g. a read index request or its answer
                    // was lost) are forgotten.
                    self.reads.retain(|_, batch| {
                        batch.retain(|r| !r.is_closed());
                        !batch.is_empty()
                    });
                    self.flush_reads();
                }
                Some(inbound) = std::future::poll_fn(|cx| self.peers.poll_recv(cx)) => {
                    self.on_inbound(inbound);
                    let mut cx = Context::from_waker(Waker::noop());
                    while let Poll::Ready(Some(more)) = self.peers.poll_recv(&mut cx) {
                        self.on_inbound(more);
                    }
                }
                Some(inbound) = self.inbound.recv() => {
                    self.on_inbound(inbound);
                    while let Ok(more) = self.inbound.try_recv() {
                        self.on_inbound(more);
                    }
                }
                Some(req) = self.requests.recv() => self.on_requests(req),
                Some(event) = self.events.recv() => {
                    if let Err(e) = self.on_event(event) {
                        break Err(e);
                    }
                    while let Ok(more) = self.events.try_recv() {
                        if let Err(e) = self.on_event(more) {
                            return self.fail(e);
                        }
                    }
                }
                _ = self.shutdown.changed() => break Ok(()),
            }
            self.process_ready();
            self.housekeeping();
        };
        match result {
            Ok(()) => {
                self.stop_waiters();
                Ok(())
            }
            Err(e) => self.fail(e),
        }
    }

    fn fail(&mut self, e: String) -> Result<(), String> {
        tracing::error!(error = %e, "member stopping on a fatal error");
        self.stop_waiters();
        Err(e)
    }

    fn stop_waiters(&mut self) {
        self.shared.stopped.store(true, Ordering::Relaxed);
        for (_, w) in self.shared.waiters.lock().drain() {
            let _ = w.send(Err(NodeError::Stopped));
        }
        let queued = std::mem::take(&mut self.read_queue);
        for r in std::mem::take(&mut self.reads).into_values().flatten().chain(queued) {
            let _ = r.send(Err(NodeError::Stopped));
        }
    }

    fn on_inbound(&mut self, inbound: Inbound) {
        match inbound {
            Inbound::Message(m) => self.step(m),
            Inbound::Snapshot { message, data } => {
                if let MessageBody::InstallSnapshot { meta } = &message.body {
                    self.staged.clear(); // only the newest transfer matters
                    self.staged.insert((meta.index, meta.term), data);
                }
                self.step(message);
            }
            Inbound::SnapshotReport { to, ok } => self.raft.report_snapshot(to, ok),
            Inbound::Unreachable(to) => self.raft.report_unreachable(to),
        }
    }

    fn step(&mut self, m: Message) {
        if let Err(e) = self.raft.step(m) {
            tracing::warn!(error = %e, "dropping message");
        }
    }

    fn on_requests(&mut self, first: Request) {
        let mut proposals: Vec<(u64, Bytes)> = Vec::new();
        let mut reads: Vec<ReadReply> = Vec::new();
        let mut handle = |req: Request| match req {
            Request::Propose { id, data } => proposals.push((id, data)),
            Request::Read { reply } => reads.push(reply),
        };
        handle(first);
        for _ in 0..BATCH_MAX {
            match self.requests.try_recv() {
                Ok(req) => handle(req),
                Err(_) => break,
            }
        }
        if !reads.is_empty() {
            // Every one of these reads arrived before the read index is asked for, so
            // one read index serves them all.
            self.start_read(reads);
        }
        if proposals.is_empty() {
            return;
        }
        self.propose(proposals);
    }

    fn propose(&mut self, proposals: Vec<(u64, Bytes)>) {
        if self.raft.role() != Role::Leader && self.raft.leader().is_none() {
            // Wait (briefly) for an election rather than failing at once.
            let now = Instant::now();
            let room = self.config.request_queue.saturating_sub(self.parked.len());
            let mut proposals = proposals.into_iter();
            self.parked.extend(proposals.by_ref().take(room).map(|(id, data)| (id, data, now)));
            self.fail_requests(proposals.map(|(id, _)| id), NodeError::TooManyRequests);
            return;
        }
        let (ids, data): (Vec<u64>, Vec<Bytes>) = proposals.into_iter().unzip();
        match self.raft.propose_or_forward(data) {
            Ok(_) => self.in_flight.push_back((ids, Instant::now())),
            Err(e) => {
                let error = match e {
                    ProposeError::TooManyUncommitted => NodeError::TooManyRequests,
                    _ => NodeError::NoLeader,
                };
                self.fail_requests(ids, error);
            }
        }
    }

    fn fail_requests(&self, ids: impl IntoIterator<Item = u64>, error: NodeError) {
        let mut waiters = self.shared.waiters.lock();
        for id in ids {
            if let Some(w) = waiters.remove(&id) {
                let _ = w.send(Err(error.clone()));
            }
        }
    }

    /// Called after every batch of inputs: reacts to leadership changes and expires waits.
    fn housekeeping(&mut self) {
        let leader = self.raft.leader();
        if leader != self.known_leader {
            self.known_leader = leader;
            // Whatever was appended or forwarded under the old leader may be lost.
            let in_flight: Vec<u64> = self.in_flight.drain(..).flat_map(|(ids, _)| ids).collect();
            self.fail_requests(in_flight, NodeError::LeaderChanged);
            if leader.is_some() && !self.parked.is_empty() {
                let parked: Vec<(u64, Bytes)> =
                    self.parked.drain(..).map(|(id, data, _)| (id, data)).collect();
                self.propose(parked);
            }
        }
        let now = Instant::now();
        let patience = self.config.tick * self.config.election_ticks * 2;
        while self.parked.front().is_some_and(|(_, _, at)| now.duration_since(*at) > patience) {
            if let Some((id, _, _)) = self.parked.pop_front() {
                self.fail_requests([id], NodeError::NoLeader);
            }
        }
        // Forget batches that completed (or whose clients gave up long ago).
        let waiters = self.shared.waiters.lock();
        while self.in_flight.front().is_some_and(|(ids, at)| {
            now.duration_since(*at) > Duration::from_secs(60)
                || !ids.iter().any(|id| waiters.contains_key(id))
        }) {
            self.in_flight.pop_front();
        }
    }

    fn start_read(&mut self, replies: Vec<ReadReply>) {
        self.read_queue.extend(replies);
        self.flush_reads();
    }

    /// Asks for a read index for the queued reads, unless one is outstanding (and was
    /// asked for less than [`READ_WAIT`] ago: a lost request holds nobody back for long).
    fn flush_reads(&mut self) {
        if self.read_queue.is_empty() {
            return;
        }
        if !self.reads.is_empty() && self.read_sent.is_some_and(|t| t.elapsed() < READ_WAIT) {
            return;
        }
        self.read_sent = Some(Instant::now());
        let replies = std::mem::take(&mut self.read_queue);
        let context = self.next_read;
        self.next_read += 1;
        let error = match self.raft.read_index(context) {
            Ok(()) => {
                self.reads.insert(context, replies);
                return;
            }
            Err(raftkv_raft::ReadError::TooManyPending) => NodeError::TooManyRequests,
            Err(_) => NodeError::NoLeader,
        };
        for reply in replies {
            let _ = reply.send(Err(error.clone()));
        }
    }

    fn on_event(&mut self, event: Event) -> Result<(), String> {
        match event {
            Event::Persisted(index, term) => self.raft.persisted(index, term),
            Event::Applied(index) => self.raft.applied(index),
            Event::SnapshotTaken(index) => {
                let compact_to = LogIndex(index.0.saturating_sub(self.config.snapshot_keep_entries));
                match self.raft.snapshot_taken(index, compact_to) {
                    Ok(_) => {
                        let first = self.raft.first_index();
                        if first.0 > 1 {
                            let _ = self.disk.send(DiskJob::Compact(first.0 - 1));
                        }
                        self.shared.status.lock().snapshot_index = index.0;
                    }
                    Err(e) => tracing::warn!(error = %e, "snapshot not recorded"),
                }
            }
            Event::Fatal(e) => return Err(e),
        }
        Ok(())
    }

    fn process_ready(&mut self) {
        while self.raft.has_ready() {
            let rd = self.raft.ready();
            self.handle_ready(rd);
        }
        let mut status = self.shared.status.lock();
        status.term = self.raft.term().0;
        status.leader = self.raft.leader().map_or(0, |l| l.0);
        status.is_leader = self.raft.role() == Role::Leader;
        status.commit = self.raft.commit_index().0;
        status.last_index = self.raft.last_index().0;
    }

    fn handle_ready(&mut self, rd: Ready) {
        let target = rd.persist_target();
        if let Some(ss) = rd.soft_state {
            tracing::info!(term = ss.term.0, role = ?ss.role, leader = ss.leader.map_or(0, |l| l.0), "raft state");
        }
        for m in rd.messages {
            if let MessageBody::InstallSnapshot { .. } = m.body {
                self.send_snapshot(m);
            } else {
                self.network.send(m);
            }
        }
        for rs in rd.read_states {
            for reply in self.reads.remove(&rs.context).into_iter().flatten() {
                let _ = reply.send(Ok(rs.index.0));
            }
        }
        for context in rd.failed_reads {
            for reply in self.reads.remove(&context).into_iter().flatten() {
                let _ = reply.send(Err(NodeError::NoLeader));
            }
        }
        self.flush_reads();
        let snapshot = rd.snapshot.map(|meta| {
            let data = self.staged.remove(&(meta.index, meta.term)).unwrap_or_else(|| Box::new(io::empty()));
            (meta, data)
        });
        let job = PersistJob {
            snapshot,
            entries: rd.entries,
            hard_state: rd.hard_state,
            after_persist: rd.messages_after_persist,
            target,
        };
        if !(job.snapshot.is_none()
            && job.entries.is_empty()
            && job.hard_state.is_none()
            && job.after_persist.is_empty())
        {
            let _ = self.disk.send(DiskJob::Persist(job));
        }
        if !rd.committed_entries.is_empty() {
            self.apply_committed(rd.committed_entries);
        }
    }

    /// Hands committed entries to the apply thread, or applies a small batch right here when
    /// the apply thread has nothing queued: under light load this saves two thread
    /// hand-offs on every write's path (to the apply thread, and from it to the waiting
    /// request); under heavy load batches are large and applying stays off the driver.
    fn apply_committed(&mut self, entries: Vec<Entry>) {
        if entries.len() <= INLINE_APPLY_MAX
            && self.apply.pending.load(Ordering::SeqCst) == 0
            && let Some(mut applier) = self.applier.try_lock()
            // Only this driver and the disk thread (restores) queue jobs; both count them
            // before sending, and the apply thread uncounts a job under this lock.
            && self.apply.pending.load(Ordering::SeqCst) == 0
        {
            applier.apply_entries(&entries);
            return;
        }
        self.apply.send(ApplyJob::Entries(entries));
    }

    fn send_snapshot(&mut self, mut m: Message) {
        let to = m.to;
        let latest = self.shared_snapshots_latest();
        match latest {
            Some((meta, reader)) => {
                // Send the newest durable snapshot, whatever the core last heard of.
                let len = reader.remaining();
                match self.shared.sm.read().open_snapshot(Box::new(reader), len) {
                    Ok((reader, len)) => {
                        m.body = MessageBody::InstallSnapshot { meta };
                        self.network.send_snapshot(m, reader, len);
                    }
                    Err(e) => {
                        tracing::error!(to = to.0, error = %e, "cannot open the latest snapshot");
                        self.raft.report_snapshot(to, false);
                    }
                }
            }
            None => {
                tracing::warn!(to = to.0, "no snapshot on disk to send");
                self.raft.report_snapshot(to, false);
            }
        }
    }

    fn shared_snapshots_latest(&self) -> Option<(SnapshotMeta, SnapshotReader)> {
        match self.snapshots.latest() {
            Ok(Some((meta, reader))) => Some((codec::meta_from_storage(&meta).ok()?, reader)),
            Ok(None) => None,
            Err(e) => {
                tracing::error!(error = %e, "cannot read the latest snapshot");
                None
            }
        }
    }
}

fn disk_loop(
    mut storage: Storage,
    rx: std_mpsc::Receiver<DiskJob>,
    events: mpsc::UnboundedSender<Event>,
    network: Arc<dyn Network>,
    apply: ApplyQueue,
) {
    // The term and vote on disk: only a change of them (or new entries) needs a sync.
    let mut durable = codec::hard_state_from_storage(&storage.log.hard_state());
    while let Ok(first) = rx.recv() {
        let mut jobs = vec![first];
        while let Ok(more) = rx.try_recv() {
            jobs.push(more);
            if jobs.len() >= 1024 {
                break;
            }
        }
        if let Err(e) = write_jobs(&mut storage, &mut jobs, &apply, &mut durable) {
            let _ = events.send(Event::Fatal(format!("storage failure, the member must stop: {e}")));
            return;
        }
        for job in jobs {
            if let DiskJob::Persist(job) = job {
                for m in job.after_persist {
                    network.send(m);
                }
                if let Some((index, term)) = job.target {
                    let _ = events.send(Event::Persisted(index, term));
                }
            }
        }
    }
}

/// Writes a batch of jobs and syncs once at the end if any of them needs it: entries, or a
/// new term or vote (`durable` holds the synced ones). A hard state that only moves the
/// commit index is recorded and reaches the disk with the next sync
/// ([`raftkv_raft::Ready::must_sync`]); the messages of such a job wait only for the jobs
/// before it, which this batch or an earlier one synced.
fn write_jobs(
    storage: &mut Storage,
    jobs: &mut [DiskJob],
    apply: &ApplyQueue,
    durable: &mut raftkv_raft::HardState,
) -> Result<(), String> {
    let mut dirty = false;
    let mut newest = None;
    for job in jobs.iter_mut() {
        match job {
            DiskJob::Persist(job) => {
                if let Some((meta, mut data)) = job.snapshot.take() {
                    // Install: the snapshot file first (durable on finish), then reset the log
                    // to start after it, then let the apply thread restore from it.
                    let mut writer =
                        storage.snapshots.begin(codec::meta_to_storage(&meta)).map_err(|e| e.to_string())?;
                    let mut buf = vec![0u8; 1 << 20];
                    loop {
                        let n = data.read(&mut buf).map_err(|e| format!("reading staged snapshot: {e}"))?;
                        if n == 0 {
                            break;
                        }
                        writer.write(&buf[..n]).map_err(|e| e.to_string())?;
                    }
                    writer.finish().map_err(|e| e.to_string())?;
                    storage.log.compact(meta.index.0).map_err(|e| e.to_string())?;
                    apply.send(ApplyJob::Restore(meta));
                }
                if !job.entries.is_empty() {
                    let records: Vec<_> = job.entries.iter().map(codec::entry_to_record).collect();
                    storage.log.append(&records).map_err(|e| e.to_string())?;
                    dirty = true;
                }
                if let Some(hs) = &job.hard_state {
                    storage
                        .log
                        .save_hard_state(codec::hard_state_to_storage(hs))
                        .map_err(|e| e.to_string())?;
                    dirty |= hs.needs_sync_after(durable);
                    newest = Some(*hs);
                }
            }
            DiskJob::Compact(up_to) => {
                storage.log.compact(*up_to).map_err(|e| e.to_string())?;
            }
        }
    }
    if dirty {
        storage.log.sync().map_err(|e| e.to_string())?;
        if let Some(hs) = newest {
            *durable = hs;
        }
    }
    Ok(())
}

struct SnapshotSink<'a> {
    writer: &'a mut raftkv_storage::SnapshotWriter,
    bytes: u64,
}

impl Write for SnapshotSink<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.writer.write(buf).map_err(io::Error::other)?;
        self.bytes += buf.len() as u64;
        Ok(buf.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// Jobs for the apply thread: queued ones count in `pending`, so the driver knows when it
/// may apply a small batch itself (see [`Driver::handle_ready`]) without reordering.
#[derive(Clone)]
struct ApplyQueue {
    tx: std_mpsc::Sender<ApplyJob>,
    pending: Arc<AtomicU64>,
}

impl ApplyQueue {
    fn send(&self, job: ApplyJob) {
        self.pending.fetch_add(1, Ordering::SeqCst);
        if self.tx.send(job).is_err() {
            self.pending.fetch_sub(1, Ordering::SeqCst);
        }
    }
}

/// Applies committed entries and restores snapshots; decides when to snapshot.
struct Applier<S: StateMachine> {
    shared: Arc<Shared<S>>,
    events: mpsc::UnboundedSender<Event>,
    snapshots: SnapshotStore,
    snapshot_count: u64,
    cluster: ClusterConfig,
    last: (LogIndex, Term),
    last_snapshot: LogIndex,
    snapshotting: Option<std::thread::JoinHandle<()>>,
    /// Log bytes applied since the last snapshot started, and the size of the last one.
    bytes_since: u64,
    last_snapshot_bytes: Arc<AtomicU64>,
}

fn apply_loop<S: StateMachine>(
    applier: Arc<Mutex<Applier<S>>>,
    rx: std_mpsc::Receiver<ApplyJob>,
    pending: Arc<AtomicU64>,
) {
    while let Ok(job) = rx.recv() {
        let mut a = applier.lock();
        let ok = match job {
            ApplyJob::Entries(entries) => a.apply_entries(&entries),
            ApplyJob::Restore(meta) => a.restore(meta),
        };
        // Still under the lock: the driver sees 0 only once this job is done.
        pending.fetch_sub(1, Ordering::SeqCst);
        if !ok {
            return;
        }
    }
}

impl<S: StateMachine> Applier<S> {
    /// Returns false after a fatal error (already reported to the driver).
    fn apply_entries(&mut self, entries: &[Entry]) -> bool {
        let shared = &self.shared;
        let mut done = Vec::new();
        {
            let mut sm = shared.sm.write();
            for e in entries {
                if e.kind == EntryKind::Normal
                    && let Some(result) = sm.apply(e.index.0, &e.data)
                {
                    done.push(result);
                }
                self.last = (e.index, e.term);
                self.bytes_since += e.data.len() as u64 + ENTRY_OVERHEAD;
            }
        }
        let last = self.last;
        shared.applied.send_replace(last.0.0);
        shared.status.lock().applied = last.0.0;
        {
            let mut waiters = shared.waiters.lock();
            for (id, out) in done {
                if let Some(w) = waiters.remove(&id) {
                    let _ = w.send(Ok(out));
                }
            }
        }
        let _ = self.events.send(Event::Applied(last.0));
        let idle = self.snapshotting.as_ref().is_none_or(|t| t.is_finished());
        // Paced: a snapshot rewrites the whole state, so besides `snapshot_count` entries,
        // wait until the log written since the last one is a fair share of its size; with
        // a large state, snapshots would otherwise cost many times the log's own writes.
        let paced = self.bytes_since.saturating_mul(SNAPSHOT_PACE)
            >= self.last_snapshot_bytes.load(Ordering::Relaxed);
        let counted = last.0.0 >= self.last_snapshot.0 + self.snapshot_count;
        if idle && ((counted && paced) || self.bytes_since >= LOG_BYTES_MAX) {
            return self.start_snapshot();
        }
        true
    }

    /// Pins the state and writes it on another thread: applying goes on.
    fn start_snapshot(&mut self) -> bool {
        if let Some(t) = self.snapshotting.take() {
            let _ = t.join();
        }
        let last = self.last;
        let pin = self.shared.sm.write().pin();
        self.last_snapshot = last.0;
        self.bytes_since = 0;
        let (shared, snapshots, cluster, done) =
            (self.shared.clone(), self.snapshots.clone(), self.cluster.clone(), self.events.clone());
        let size = self.last_snapshot_bytes.clone();
        let spawned = std::thread::Builder::new().name("raftkv-snapshot".into()).spawn(move || {
            let taken = take_snapshot(&shared, &pin, &snapshots, last, &cluster);
            if taken.is_ok() {
                S::snapshot_durable(&pin);
            }
            shared.sm.write().unpin(pin);
            match taken {
                Ok(bytes) => {
                    size.store(bytes, Ordering::Relaxed);
                    let _ = done.send(Event::SnapshotTaken(last.0));
                }
                Err(e) => {
                    let _ = done.send(Event::Fatal(format!("cannot write snapshot: {e}")));
                }
            }
        });
        match spawned {
            Ok(t) => {
                self.snapshotting = Some(t);
                true
            }
            Err(e) => {
                let _ = self.events.send(Event::Fatal(format!("cannot start the snapshot thread: {e}")));
                false
            }
        }
    }

    fn restore(&mut self, meta: SnapshotMeta) -> bool {
        let shared = &self.shared;
        // A snapshot being written must land before the installed one is read.
        if let Some(t) = self.snapshotting.take() {
            let _ = t.join();
        }
        let restored = self.snapshots.latest().map_err(|e| e.to_string()).and_then(|found| {
            let (found, mut reader) = found.ok_or("installed snapshot not found")?;
            if found.index != meta.index.0 {
                return Err(format!("expected snapshot {} on disk, found {}", meta.index, found.index));
            }
            let len = reader.remaining();
            shared.sm.write().restore(&mut reader, len)
        });
        if let Err(e) = restored {
            let _ = self.events.send(Event::Fatal(format!("cannot restore snapshot {}: {e}", meta.index)));
            return false;
        }
        self.cluster = meta.config.clone();
        self.last = (meta.index, meta.term);
        self.last_snapshot = meta.index;
        self.bytes_since = 0;
        shared.applied.send_replace(meta.index.0);
        {
            let mut status = shared.status.lock();
            status.applied = meta.index.0;
            status.snapshot_index = meta.index.0;
        }
        let _ = self.events.send(Event::Applied(meta.index));
        true
    }
}

fn take_snapshot<S: StateMachine>(
    shared: &Shared<S>,
    pin: &S::Pin,
    snapshots: &SnapshotStore,
    last: (LogIndex, Term),
    cluster: &ClusterConfig,
) -> Result<u64, String> {
    let started = Instant::now();
    let meta = SnapshotMeta { index: last.0, term: last.1, config: cluster.clone() };
    let mut writer = snapshots.begin(codec::meta_to_storage(&meta)).map_err(|e| e.to_string())?;
    let mut sink = SnapshotSink { writer: &mut writer, bytes: 0 };
    S::write_snapshot(pin, &mut sink, &mut |f| f(&shared.sm.read())).map_err(|e| e.to_string())?;
    let bytes = sink.bytes;
    writer.finish().map_err(|e| e.to_string())?;
    let elapsed_ms = started.elapsed().as_millis() as u64;
    tracing::info!(index = last.0.0, bytes, elapsed_ms, "snapshot taken");
    Ok(bytes)
}
