//! The tokio shell: runs the deterministic components against a real clock, disk and
//! network, following the core's ordering contract.
//!
//! Three threads of control:
//! - the driver task (tokio) owns the [`Driver`]: ticks, steps messages, batches proposals
//!   and reads, sends `Ready::messages` at once (the leader replicates while it writes);
//! - the disk thread runs the [`DiskWorker`] over everything queued (group commit across
//!   Readies), then releases `messages_after_persist` and reports `persisted`;
//! - the apply thread runs the [`Applier`], completes waiting client requests, and starts
//!   snapshots (written on a thread of their own) every `snapshot_count` entries.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, mpsc as std_mpsc};
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use bytes::Bytes;
use parking_lot::{Mutex, RwLock};
use raftkv_raft::{
    ConfChange, Entry, LogIndex, Message, MessageBody, NodeId, Role, SnapshotMeta, Term, TransferError,
};
use raftkv_storage::{FileLogStore, SnapshotReader, SnapshotStore, Storage};
use tokio::sync::{mpsc, oneshot, watch};

use crate::apply::{Applier, write_snapshot};
use crate::disk::{DiskJob, DiskWorker};
use crate::driver::{Action, Driver, ReadWaiter};
use crate::{Error, Inbound, Network, NodeConfig, NodeError, PeerSource, StateMachine, Status, codec};

type Waiter<O> = oneshot::Sender<Result<O, NodeError>>;

/// State shared between the driver, the apply thread and request handlers.
pub struct Shared<S: StateMachine> {
    /// This member.
    pub id: raftkv_raft::NodeId,
    /// The state machine: read it (under the read lock) to serve reads.
    pub sm: RwLock<S>,
    applied: watch::Sender<u64>,
    status: Mutex<Status>,
    waiters: Mutex<HashMap<u64, Waiter<S::Output>>>,
    next_request: AtomicU64,
    stopped: AtomicBool,
}

/// Where a read barrier's read index (or error) goes.
type ReadReply = oneshot::Sender<Result<u64, NodeError>>;

impl ReadWaiter for ReadReply {
    fn abandoned(&self) -> bool {
        self.is_closed()
    }
}

enum Request {
    Propose { id: u64, data: Bytes },
    Read { reply: ReadReply },
    ConfChange { id: u64, change: ConfChange },
    Transfer { target: Option<NodeId>, reply: oneshot::Sender<Result<NodeId, TransferError>> },
}

/// A cheap handle for request handlers.
pub struct NodeHandle<S: StateMachine> {
    requests: mpsc::Sender<Request>,
    /// The state shared with the runtime.
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
    /// 48-bit counter that starts at [`crate::boot_stamp`].
    pub fn next_request_id(&self) -> u64 {
        let n = self.shared.next_request.fetch_add(1, Ordering::Relaxed);
        ((self.shared.id.0 & 0xFFFF) << 48) | (n & 0xFFFF_FFFF_FFFF)
    }

    /// Replicates a command built around request id `id` and waits until this member has
    /// applied it.
    pub async fn propose(&self, id: u64, data: Bytes, timeout: Duration) -> Result<S::Output, NodeError> {
        self.submit(id, Request::Propose { id, data }, timeout).await
    }

    /// Queues a request whose outcome comes back through the waiter of `id`, and waits.
    async fn submit(&self, id: u64, request: Request, timeout: Duration) -> Result<S::Output, NodeError> {
        if self.shared.stopped.load(Ordering::Relaxed) {
            return Err(NodeError::Stopped);
        }
        let (tx, rx) = oneshot::channel();
        self.shared.waiters.lock().insert(id, tx);
        if let Err(e) = self.requests.try_send(request) {
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

    /// Proposes a membership change (this member must lead) whose context carries request
    /// id `id`, and waits until this member has applied it: the outcome is what
    /// [`StateMachine::apply_conf_change`] returned for it. A change the core refuses fails
    /// at once with [`NodeError::ConfChange`].
    pub async fn propose_conf_change(
        &self,
        id: u64,
        change: ConfChange,
        timeout: Duration,
    ) -> Result<S::Output, NodeError> {
        self.submit(id, Request::ConfChange { id, change }, timeout).await
    }

    /// Hands leadership to `target` (or to the most up-to-date voter when `None`) and waits
    /// until this member sees it lead. Returns the new leader.
    pub async fn transfer_leader(
        &self,
        target: Option<NodeId>,
        timeout: Duration,
    ) -> Result<NodeId, NodeError> {
        let work = async {
            let (tx, rx) = oneshot::channel();
            self.requests.try_send(Request::Transfer { target, reply: tx }).map_err(|e| match e {
                mpsc::error::TrySendError::Full(_) => NodeError::TooManyRequests,
                mpsc::error::TrySendError::Closed(_) => NodeError::Stopped,
            })?;
            let target = rx.await.map_err(|_| NodeError::Stopped)?.map_err(NodeError::Transfer)?;
            loop {
                let status = self.status();
                if status.leader == target.0 {
                    return Ok(target);
                }
                if self.shared.stopped.load(Ordering::Relaxed) {
                    return Err(NodeError::Stopped);
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        };
        tokio::time::timeout(timeout, work).await.map_err(|_| NodeError::Timeout)?
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

    /// The highest log index applied to the state machine.
    pub fn applied_index(&self) -> u64 {
        *self.shared.applied.borrow()
    }

    /// Waits until this member has applied `index`.
    pub async fn wait_applied(&self, index: u64) -> Result<(), NodeError> {
        if self.applied_index() >= index {
            return Ok(());
        }
        let mut rx = self.shared.applied.subscribe();
        rx.wait_for(|a| *a >= index).await.map(|_| ()).map_err(|_| NodeError::Stopped)
    }

    /// The member's current state.
    pub fn status(&self) -> Status {
        *self.shared.status.lock()
    }
}

enum Event {
    Persisted(LogIndex, Term),
    Applied(LogIndex),
    SnapshotTaken(LogIndex),
    Fatal(Error),
}

enum ApplyJob {
    Entries(Vec<Entry>),
    Restore(SnapshotMeta),
}

/// A running member: the driver task and its threads.
pub struct Node<S: StateMachine> {
    /// Where requests go.
    pub handle: NodeHandle<S>,
    inbound_tx: mpsc::Sender<Inbound>,
    task: tokio::task::JoinHandle<Result<(), Error>>,
    shutdown: watch::Sender<bool>,
}

impl<S: StateMachine> Node<S> {
    /// Recovers from `storage` (as opened with `Storage::open`, or just created with an
    /// empty `Recovered`) and starts the driver task, the disk thread and the apply thread.
    /// Must be called within a tokio runtime.
    pub fn start(
        config: NodeConfig,
        storage: Storage,
        recovered: raftkv_storage::Recovered,
        mut sm: S,
        network: Arc<dyn Network>,
        peers: Box<dyn PeerSource>,
    ) -> Result<Node<S>, Error> {
        let (raft, snapshot) = crate::recover(&config, &storage.snapshots, recovered, &mut sm)?;
        let snapshot_index = snapshot.as_ref().map_or(0, |s| s.index.0);
        // Request ids and read contexts both start here: none is reused after a restart.
        let boot = crate::boot_stamp();
        let applier = Applier::recovered(snapshot.as_ref(), &config);

        let (applied_tx, _) = watch::channel(snapshot_index);
        let shared = Arc::new(Shared {
            id: config.id,
            sm: RwLock::new(sm),
            applied: applied_tx,
            status: Mutex::new(Status { applied: snapshot_index, snapshot_index, ..Status::default() }),
            waiters: Mutex::new(HashMap::new()),
            next_request: AtomicU64::new(boot),
            stopped: AtomicBool::new(false),
        });
        let (requests_tx, requests_rx) = mpsc::channel(config.request_queue);
        let (inbound_tx, inbound_rx) = mpsc::channel(4096);
        let (events_tx, events_rx) = mpsc::unbounded_channel();
        let (disk_tx, disk_rx) = std_mpsc::channel();
        let (apply_tx, apply_rx) = std_mpsc::channel();
        let apply_tx = ApplyQueue { tx: apply_tx, pending: Arc::new(AtomicU64::new(0)) };
        let (shutdown, shutdown_rx) = watch::channel(false);
        let snapshots = storage.snapshots.clone();

        {
            let events = events_tx.clone();
            let network = network.clone();
            let apply_tx = apply_tx.clone();
            let worker = DiskWorker::new(storage.log, storage.snapshots);
            std::thread::Builder::new()
                .name("raftkv-disk".into())
                .spawn(move || disk_loop(worker, disk_rx, events, network, apply_tx))
                .map_err(Error::Thread)?;
        }
        let applier = Arc::new(Mutex::new(ApplyShell {
            shared: shared.clone(),
            events: events_tx.clone(),
            snapshots: snapshots.clone(),
            applier,
            snapshotting: None,
            last_snapshot_bytes: Arc::new(AtomicU64::new(0)),
        }));
        {
            let (applier, pending) = (applier.clone(), apply_tx.pending.clone());
            std::thread::Builder::new()
                .name("raftkv-apply".into())
                .spawn(move || apply_loop(applier, apply_rx, pending))
                .map_err(Error::Thread)?;
        }
        let runner = Runner {
            driver: Driver::new(raft, config.clone(), boot),
            config,
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
            snapshots,
            actions: Vec::new(),
            origin: Instant::now(),
        };
        let task = tokio::spawn(tracing::Instrument::instrument(runner.run(), tracing::Span::current()));
        Ok(Node { handle: NodeHandle { requests: requests_tx, shared }, inbound_tx, task, shutdown })
    }

    /// Where the network delivers inbound traffic (besides the [`PeerSource`]).
    pub fn inbound(&self) -> mpsc::Sender<Inbound> {
        self.inbound_tx.clone()
    }

    /// Stops the driver (pending requests fail with `Stopped`) and waits for it.
    pub async fn stop(self) -> Result<(), Error> {
        let _ = self.shutdown.send(true);
        self.task.await.map_err(|e| Error::Task(e.to_string()))?
    }

    /// Stops like [`Node::stop`], but a leader first hands leadership to the most
    /// up-to-date voter (waiting at most `patience`), so the cluster does not wait an
    /// election timeout for a new leader (etcd does the same on a graceful stop).
    pub async fn stop_gracefully(self, patience: Duration) -> Result<(), Error> {
        if self.handle.status().is_leader {
            match self.handle.transfer_leader(None, patience).await {
                Ok(to) => {
                    tracing::info!(to = format!("{:x}", to.0), "leadership handed over before stopping")
                }
                Err(e) => tracing::info!(error = %e, "stopping without a leadership transfer"),
            }
        }
        self.stop().await
    }

    /// Whether the driver ended on its own (a fatal error).
    pub fn is_finished(&self) -> bool {
        self.task.is_finished()
    }
}

/// The driver task's state: the [`Driver`] and the channels around it.
struct Runner<S: StateMachine> {
    driver: Driver<ReadReply>,
    config: NodeConfig,
    shared: Arc<Shared<S>>,
    network: Arc<dyn Network>,
    requests: mpsc::Receiver<Request>,
    inbound: mpsc::Receiver<Inbound>,
    peers: Box<dyn PeerSource>,
    events: mpsc::UnboundedReceiver<Event>,
    disk: std_mpsc::Sender<DiskJob>,
    apply: ApplyQueue,
    applier: Arc<Mutex<ApplyShell<S>>>,
    shutdown: watch::Receiver<bool>,
    snapshots: SnapshotStore,
    /// The driver's actions, carried out after each input (reused: no allocation).
    actions: Vec<Action<ReadReply>>,
    /// The driver's time is measured from here.
    origin: Instant,
}

/// A number in `[0, 1)` that differs between processes and calls.
fn random_fraction() -> f64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos()),
    );
    (h.finish() >> 11) as f64 / (1u64 << 53) as f64
}

/// Committed batches up to this many entries...
const INLINE_APPLY_MAX: usize = 256;
/// ...and this many bytes of entry data may be applied on the driver itself (a bound on
/// how long the driver stops for it).
const INLINE_APPLY_BYTES: usize = 1 << 20;

/// At most this many client requests are folded into one batch.
const BATCH_MAX: usize = 4096;

impl<S: StateMachine> Runner<S> {
    async fn run(mut self) -> Result<(), Error> {
        // Members started together would tick in phase; a random phase keeps two followers
        // that drew the same election timeout from campaigning in the same instant.
        let phase = self.config.tick.mul_f64(random_fraction());
        let mut ticker = tokio::time::interval_at(tokio::time::Instant::now() + phase, self.config.tick);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let result = loop {
            tokio::select! {
                _ = ticker.tick() => {
                    let now = self.now();
                    self.driver.tick(now, &mut self.actions);
                }
                Some(inbound) = std::future::poll_fn(|cx| self.peers.poll_recv(cx)) => {
                    self.driver.inbound(inbound);
                    let mut cx = Context::from_waker(Waker::noop());
                    while let Poll::Ready(Some(more)) = self.peers.poll_recv(&mut cx) {
                        self.driver.inbound(more);
                    }
                }
                Some(inbound) = self.inbound.recv() => {
                    self.driver.inbound(inbound);
                    while let Ok(more) = self.inbound.try_recv() {
                        self.driver.inbound(more);
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
            let now = self.now();
            if let Err(e) = self.process_ready(now) {
                break Err(e);
            }
            self.housekeeping(now);
        };
        match result {
            Ok(()) => {
                self.stop_waiters();
                Ok(())
            }
            Err(e) => self.fail(e),
        }
    }

    fn now(&self) -> Duration {
        self.origin.elapsed()
    }

    fn fail(&mut self, e: Error) -> Result<(), Error> {
        tracing::error!(error = %e, "member stopping on a fatal error");
        self.stop_waiters();
        Err(e)
    }

    fn stop_waiters(&mut self) {
        self.shared.stopped.store(true, Ordering::Relaxed);
        for (_, w) in self.shared.waiters.lock().drain() {
            let _ = w.send(Err(NodeError::Stopped));
        }
        self.driver.stop(&mut self.actions);
        self.carry_out();
    }

    fn on_requests(&mut self, first: Request) {
        let mut proposals: Vec<(u64, Bytes)> = Vec::new();
        let mut reads: Vec<ReadReply> = Vec::new();
        let mut others = Vec::new();
        let mut handle = |req: Request| match req {
            Request::Propose { id, data } => proposals.push((id, data)),
            Request::Read { reply } => reads.push(reply),
            other => others.push(other),
        };
        handle(first);
        for _ in 0..BATCH_MAX {
            match self.requests.try_recv() {
                Ok(req) => handle(req),
                Err(_) => break,
            }
        }
        let now = self.now();
        if !reads.is_empty() {
            self.driver.read(reads, now, &mut self.actions);
        }
        if !proposals.is_empty() {
            self.driver.propose(proposals, now, &mut self.actions);
        }
        for req in others {
            match req {
                Request::ConfChange { id, change } => {
                    self.driver.propose_conf_change(id, &change, now, &mut self.actions)
                }
                Request::Transfer { target, reply } => {
                    let started = self.driver.transfer_leader(target);
                    if let Ok(to) = &started {
                        tracing::info!(to = format!("{:x}", to.0), "leadership transfer starting");
                    }
                    let _ = reply.send(started);
                }
                Request::Propose { .. } | Request::Read { .. } => {}
            }
        }
    }

    fn on_event(&mut self, event: Event) -> Result<(), Error> {
        match event {
            Event::Persisted(index, term) => self.driver.persisted(index, term),
            Event::Applied(index) => self.driver.applied(index),
            Event::SnapshotTaken(index) => {
                if self.driver.snapshot_taken(index, &mut self.actions) {
                    self.shared.status.lock().snapshot_index = index.0;
                }
            }
            Event::Fatal(e) => return Err(e),
        }
        Ok(())
    }

    fn process_ready(&mut self, now: Duration) -> Result<(), Error> {
        loop {
            self.driver.process_ready(now, &mut self.actions)?;
            self.carry_out();
            // A snapshot that could not be sent was reported to the core.
            if !self.driver.raft().has_ready() {
                break;
            }
        }
        let raft = self.driver.raft();
        let mut status = self.shared.status.lock();
        status.term = raft.term().0;
        status.leader = raft.leader().map_or(0, |l| l.0);
        status.is_leader = raft.role() == Role::Leader;
        status.commit = raft.commit_index().0;
        status.last_index = raft.last_index().0;
        status.is_learner = raft.cluster_config().learners.contains(&raft.id());
        status.lead_transferee = raft.lead_transferee().map_or(0, |t| t.0);
        Ok(())
    }

    fn housekeeping(&mut self, now: Duration) {
        {
            let waiters = self.shared.waiters.lock();
            self.driver.housekeeping(now, |id| waiters.contains_key(&id), &mut self.actions);
        }
        self.carry_out();
    }

    /// Carries out the driver's actions, in order.
    fn carry_out(&mut self) {
        let mut actions = std::mem::take(&mut self.actions);
        for action in actions.drain(..) {
            match action {
                Action::Send(m) => self.network.send(m),
                Action::SendSnapshot(m) => self.send_snapshot(m),
                Action::Disk(job) => {
                    let _ = self.disk.send(job);
                }
                Action::Apply(entries) => self.apply_committed(entries),
                Action::ReadDone(reply, result) => {
                    let _ = reply.send(result);
                }
                Action::Fail(ids, error) => self.fail_requests(ids, error),
                Action::SoftState(ss) => tracing::info!(
                    term = ss.term.0,
                    role = ?ss.role,
                    leader = ss.leader.map_or(0, |l| l.0),
                    "raft state"
                ),
            }
        }
        // Keep the buffer (and its capacity) unless the driver pushed more meanwhile.
        if self.actions.is_empty() {
            self.actions = actions;
        }
    }

    fn fail_requests(&self, ids: Vec<u64>, error: NodeError) {
        let mut waiters = self.shared.waiters.lock();
        for id in ids {
            if let Some(w) = waiters.remove(&id) {
                let _ = w.send(Err(error.clone()));
            }
        }
    }

    /// Hands committed entries to the apply thread, or applies a bounded batch right here
    /// when the apply thread has nothing queued. This saves two thread hand-offs on every
    /// write's path (to the apply thread, and from it to the waiting request), and keeps
    /// the apply thread from competing for the CPUs with the runtime's workers. A larger
    /// batch goes to the apply thread, and so does every batch after it until the thread
    /// has caught up: under heavy load applying runs beside the driver.
    fn apply_committed(&mut self, entries: Vec<Entry>) {
        if entries.len() <= INLINE_APPLY_MAX
            && entries.iter().map(|e| e.data.len()).sum::<usize>() <= INLINE_APPLY_BYTES
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
        match self.latest_snapshot() {
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
                        self.driver.report_snapshot(to, false);
                    }
                }
            }
            None => {
                tracing::warn!(to = to.0, "no snapshot on disk to send");
                self.driver.report_snapshot(to, false);
            }
        }
    }

    fn latest_snapshot(&self) -> Option<(SnapshotMeta, SnapshotReader)> {
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
    mut worker: DiskWorker<FileLogStore>,
    rx: std_mpsc::Receiver<DiskJob>,
    events: mpsc::UnboundedSender<Event>,
    network: Arc<dyn Network>,
    apply: ApplyQueue,
) {
    while let Ok(first) = rx.recv() {
        let mut jobs = vec![first];
        while let Ok(more) = rx.try_recv() {
            jobs.push(more);
            if jobs.len() >= 1024 {
                break;
            }
        }
        if let Err(e) = worker.write(&mut jobs, &mut |meta| apply.send(ApplyJob::Restore(meta))) {
            let _ = events.send(Event::Fatal(e.into()));
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

/// Jobs for the apply thread: queued ones count in `pending`, so the driver knows when it
/// may apply a small batch itself (see [`Runner::apply_committed`]) without reordering.
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

/// The [`Applier`] with the shared state around it: completes requests, publishes the
/// applied index, runs the snapshot thread.
struct ApplyShell<S: StateMachine> {
    shared: Arc<Shared<S>>,
    events: mpsc::UnboundedSender<Event>,
    snapshots: SnapshotStore,
    applier: Applier,
    snapshotting: Option<std::thread::JoinHandle<()>>,
    /// The size of the last snapshot written (by the snapshot thread).
    last_snapshot_bytes: Arc<AtomicU64>,
}

fn apply_loop<S: StateMachine>(
    applier: Arc<Mutex<ApplyShell<S>>>,
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

impl<S: StateMachine> ApplyShell<S> {
    /// Returns false after a fatal error (already reported to the driver).
    fn apply_entries(&mut self, entries: &[Entry]) -> bool {
        let shared = &self.shared;
        let mut done = Vec::new();
        let last = self.applier.apply(&mut *shared.sm.write(), entries, &mut done);
        shared.applied.send_replace(last.0);
        shared.status.lock().applied = last.0;
        {
            let mut waiters = shared.waiters.lock();
            for (id, out) in done {
                if let Some(w) = waiters.remove(&id) {
                    let _ = w.send(Ok(out));
                }
            }
        }
        let _ = self.events.send(Event::Applied(last));
        let idle = self.snapshotting.as_ref().is_none_or(|t| t.is_finished());
        if idle {
            self.applier.snapshot_written(self.last_snapshot_bytes.load(Ordering::Relaxed));
            if self.applier.snapshot_due() {
                return self.start_snapshot();
            }
        }
        true
    }

    /// Pins the state and writes it on another thread: applying goes on.
    fn start_snapshot(&mut self) -> bool {
        if let Some(t) = self.snapshotting.take() {
            let _ = t.join();
        }
        let pin = self.shared.sm.write().pin();
        let meta = self.applier.begin_snapshot();
        let (shared, snapshots, done) = (self.shared.clone(), self.snapshots.clone(), self.events.clone());
        let size = self.last_snapshot_bytes.clone();
        let spawned = std::thread::Builder::new().name("raftkv-snapshot".into()).spawn(move || {
            let started = Instant::now();
            let taken = write_snapshot::<S>(&pin, &snapshots, &meta, &mut |f| f(&shared.sm.read()));
            if taken.is_ok() {
                S::snapshot_durable(&pin);
            }
            shared.sm.write().unpin(pin);
            match taken {
                Ok(bytes) => {
                    let elapsed_ms = started.elapsed().as_millis() as u64;
                    tracing::info!(index = meta.index.0, bytes, elapsed_ms, "snapshot taken");
                    size.store(bytes, Ordering::Relaxed);
                    let _ = done.send(Event::SnapshotTaken(meta.index));
                }
                Err(e) => {
                    let _ = done.send(Event::Fatal(e.into()));
                }
            }
        });
        match spawned {
            Ok(t) => {
                self.snapshotting = Some(t);
                true
            }
            Err(e) => {
                let _ = self.events.send(Event::Fatal(Error::Thread(e)));
                false
            }
        }
    }

    fn restore(&mut self, meta: SnapshotMeta) -> bool {
        // A snapshot being written must land before the installed one is read.
        if let Some(t) = self.snapshotting.take() {
            let _ = t.join();
        }
        let restored = self.applier.restore(&mut *self.shared.sm.write(), &self.snapshots, &meta);
        if let Err(e) = restored {
            let _ = self.events.send(Event::Fatal(e.into()));
            return false;
        }
        tracing::info!(index = meta.index.0, term = meta.term.0, "snapshot installed");
        let shared = &self.shared;
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
