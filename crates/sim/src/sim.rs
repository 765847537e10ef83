//! One simulated cluster: nodes (a Raft core, a disk model, a state machine), a network,
//! clients and a fault schedule, all driven by one seed in virtual time.
//!
//! Each node is driven exactly as a real driver must drive the core (see the ordering
//! contract in `raftkv_raft`): after every input, `while has_ready() { ready() }`, sending
//! `messages` at once, queueing `snapshot`/`entries`/`hard_state` as one persist job that
//! completes after a disk latency (jobs complete in order; a job holding only a new commit
//! index needs no sync, completes at once and becomes durable only with the next synced
//! job, as `Ready::must_sync` allows), releasing
//! `messages_after_persist` and calling `persisted` only when the job is durable, and applying
//! `committed_entries` in order. A crash drops the core, its volatile state and every job not
//! yet complete; a restart builds a new core from the durable state alone.

use std::cmp::Ordering;
use std::collections::{BTreeSet, BinaryHeap, VecDeque};
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use raftkv_raft::{
    ClusterConfig, Config, Entry, HardState, InitialState, LogIndex, Message, MessageBody, NodeId,
    PlantedBug, ProposeError, Raft, ReadError, ReadState, Role, SnapshotMeta, Term,
};
use raftkv_transport::codec::{FrameType, SnapshotAck, SnapshotBegin, SnapshotChunk, SnapshotEnd};
use raftkv_transport::{BodyError, BodyReceiver};

use crate::check::{Checker, Mirror, Violation, attempt_of, entry_hash};
use crate::params::{MS, Params, Profile, TICK_US};
use crate::plant::DriverBug;
use crate::rng::{Rng, chain, mix64};
use crate::snapstream::{
    Body, Incoming, MAX_BODY_BYTES, MAX_FRAME_BYTES, Outgoing, Reject, SnapFrame, unframe,
};
use crate::trace::{Trace, TraceEvent};

/// How to run one seed.
#[derive(Clone, Debug, Default)]
pub struct SimOptions {
    pub profile: Profile,
    /// Keep every trace line (slower); the trace hash is computed either way.
    pub trace: bool,
    /// A known bug to plant in every core. Takes effect only when this crate is built with
    /// the `planted-bugs` feature.
    pub planted_bug: Option<PlantedBug>,
    /// A known bug to plant in the simulator's member driver (see [`DriverBug`]). Takes
    /// effect only when this crate is built with the `planted-bugs` feature.
    pub driver_bug: Option<DriverBug>,
}

/// Counters of one run, for the summary line.
#[derive(Clone, Debug, Default)]
pub struct Stats {
    pub events: u64,
    pub messages_delivered: u64,
    pub messages_dropped: u64,
    pub proposals: u64,
    pub acknowledged: u64,
    pub lost: u64,
    pub crashes: u64,
    pub partitions: u64,
    pub elections_won: u64,
    pub snapshots_taken: u64,
    pub snapshots_installed: u64,
    /// Snapshot transfers started, delivered to the receiving core (acknowledged), and
    /// failed (rejected by the receiver, or no progress within the timeout).
    pub snapshots_sent: u64,
    pub snapshots_delivered: u64,
    pub snapshots_failed: u64,
    /// Transfers the receiver rejected for a checksum mismatch (chunk or whole body), for a
    /// gap or truncation, and for a stale term.
    pub snapshots_rejected_crc: u64,
    pub snapshots_rejected_gap: u64,
    pub snapshots_rejected_stale: u64,
    pub chunks_sent: u64,
    pub chunks_lost: u64,
    pub chunks_duplicated: u64,
    pub chunks_reordered: u64,
    pub chunks_corrupted: u64,
    /// The most unconfirmed snapshot bytes any transfer had in flight.
    pub snapshot_bytes_in_flight_max: u64,
    pub max_commit: u64,
    /// Reads served (linearizable, serializable) and reads that failed (no leader, leader
    /// lost, timed out) and were retried.
    pub reads_linearizable: u64,
    pub reads_serializable: u64,
    pub reads_failed: u64,
    /// Wider faults injected: process pauses, write/fsync errors (each stops its member),
    /// torn persist jobs, and unreachable reports given to a core.
    pub pauses: u64,
    pub fsync_errors: u64,
    pub torn_writes: u64,
    pub unreachable_reports: u64,
}

impl Stats {
    /// Adds another run's counters (maxima are combined as maxima).
    pub fn add(&mut self, o: &Stats) {
        self.events += o.events;
        self.messages_delivered += o.messages_delivered;
        self.messages_dropped += o.messages_dropped;
        self.proposals += o.proposals;
        self.acknowledged += o.acknowledged;
        self.lost += o.lost;
        self.crashes += o.crashes;
        self.partitions += o.partitions;
        self.elections_won += o.elections_won;
        self.snapshots_taken += o.snapshots_taken;
        self.snapshots_installed += o.snapshots_installed;
        self.snapshots_sent += o.snapshots_sent;
        self.snapshots_delivered += o.snapshots_delivered;
        self.snapshots_failed += o.snapshots_failed;
        self.snapshots_rejected_crc += o.snapshots_rejected_crc;
        self.snapshots_rejected_gap += o.snapshots_rejected_gap;
        self.snapshots_rejected_stale += o.snapshots_rejected_stale;
        self.chunks_sent += o.chunks_sent;
        self.chunks_lost += o.chunks_lost;
        self.chunks_duplicated += o.chunks_duplicated;
        self.chunks_reordered += o.chunks_reordered;
        self.chunks_corrupted += o.chunks_corrupted;
        self.snapshot_bytes_in_flight_max =
            self.snapshot_bytes_in_flight_max.max(o.snapshot_bytes_in_flight_max);
        self.max_commit = self.max_commit.max(o.max_commit);
        self.reads_linearizable += o.reads_linearizable;
        self.reads_serializable += o.reads_serializable;
        self.reads_failed += o.reads_failed;
        self.pauses += o.pauses;
        self.fsync_errors += o.fsync_errors;
        self.torn_writes += o.torn_writes;
        self.unreachable_reports += o.unreachable_reports;
    }

    /// The read and wider-fault counters as one summary line.
    pub fn fault_summary(&self) -> String {
        format!(
            "reads: {} linearizable, {} serializable, {} failed and retried; faults: {} pauses, {} write/fsync errors, {} torn writes, {} unreachable reports",
            self.reads_linearizable,
            self.reads_serializable,
            self.reads_failed,
            self.pauses,
            self.fsync_errors,
            self.torn_writes,
            self.unreachable_reports,
        )
    }

    /// The snapshot counters as one summary line.
    pub fn snapshot_summary(&self) -> String {
        format!(
            "snapshots: {} taken, {} sent, {} delivered, {} installed, {} failed (rejected: {} checksum, {} gap/truncated, {} stale term); chunks: {} sent, {} lost, {} duplicated, {} reordered, {} corrupted; max {} bytes in flight",
            self.snapshots_taken,
            self.snapshots_sent,
            self.snapshots_delivered,
            self.snapshots_installed,
            self.snapshots_failed,
            self.snapshots_rejected_crc,
            self.snapshots_rejected_gap,
            self.snapshots_rejected_stale,
            self.chunks_sent,
            self.chunks_lost,
            self.chunks_duplicated,
            self.chunks_reordered,
            self.chunks_corrupted,
            self.snapshot_bytes_in_flight_max,
        )
    }
}

/// The result of one seed.
#[derive(Debug)]
pub struct Outcome {
    pub seed: u64,
    pub params: Params,
    pub violation: Option<Violation>,
    /// The panic message, when the violation is a core panic.
    pub panic: Option<String>,
    pub trace_hash: u64,
    pub virtual_us: u64,
    pub stats: Stats,
    /// Every event, when tracing was on.
    pub trace: Vec<String>,
}

/// The state machine: a digest over the applied commands, in order, and a few registers
/// (keys), each holding the last command written to it.
#[derive(Clone, Debug, Default)]
struct StateMachine {
    applied: u64,
    digest: u64,
    commands: u64,
    values: [u64; KEYS],
}

/// Registers in the state machine; each command writes one (see [`key_of`]).
pub(crate) const KEYS: usize = 3;

/// The register a command writes.
pub(crate) fn key_of(attempt: u64) -> usize {
    (mix64(attempt) % KEYS as u64) as usize
}

/// A snapshot as stored on a disk and shipped by InstallSnapshot: the core's metadata plus the
/// state machine at that index and the log's chain hash there (for the Log Matching mirror).
#[derive(Debug)]
struct SnapData {
    meta: SnapshotMeta,
    sm: StateMachine,
    chain: u64,
}

/// What survives a crash.
#[derive(Default)]
struct Durable {
    hard_state: HardState,
    snapshot: Option<Arc<SnapData>>,
    /// Contiguous entries; may start at or before the snapshot (a kept tail).
    log: Vec<Entry>,
    /// Set when a failed write/fsync was treated as success (planted bug): what the failure
    /// really lost, gone at the next crash: the log from this index, and the hard state.
    fsync_lost: Option<(Option<u64>, Option<HardState>)>,
}

impl Durable {
    fn snapshot_index(&self) -> u64 {
        self.snapshot.as_ref().map_or(0, |s| s.meta.index.0)
    }
}

/// One Ready's worth of writes, made durable together (one write + sync), or, when it
/// holds nothing but a new commit index, written without a sync (see `Ready::must_sync`).
struct Job {
    id: u64,
    /// Whether the job ends with a sync; a job without one is durable only once a later
    /// synced job completes, and is lost in a crash before that.
    synced: bool,
    snapshot: Option<Arc<SnapData>>,
    entries: Vec<Entry>,
    hard_state: Option<HardState>,
    after: Vec<Message>,
    target: Option<(LogIndex, Term)>,
    /// The write or fsync of this job fails.
    failed: bool,
}

/// A running node's volatile state.
struct Live {
    raft: Raft,
    sm: StateMachine,
    jobs: VecDeque<Job>,
    disk_free_at: u64,
    mirror: Mirror,
    /// Snapshot data received and verified by the snapshot stream, newest last.
    staged: Vec<Arc<SnapData>>,
    /// Snapshot transfers this node sends (at most one per peer) and receives (at most one
    /// per peer), and per peer the highest transfer id seen (older Begins are duplicates).
    outgoing: Vec<Outgoing>,
    incoming: Vec<Incoming>,
    seen_transfers: Vec<u64>,
    /// The newest snapshot this node has (taken or installed), to ship to followers.
    latest_snap: Option<Arc<SnapData>>,
    /// The term this node was last seen leading in, if it leads now.
    leader_term: Option<Term>,
    last_commit: u64,
    /// The newest hard state queued for the disk (its term and vote decide whether the next
    /// one needs a sync).
    queued_hs: HardState,
    /// A hard state written without a sync: durable with the next synced job, lost in a crash.
    lazy_hs: Option<HardState>,
    /// ReadIndex contexts of this incarnation (used only by the planted
    /// `ReadContextRestart`; the driver otherwise numbers contexts across incarnations).
    local_contexts: u64,
}

struct Node {
    id: NodeId,
    /// Incarnation: bumped at each crash so timers of a dead incarnation are ignored.
    inc: u64,
    durable: Durable,
    live: Option<Live>,
    /// The next ReadIndex context; kept across crashes so that a reply to a read of an earlier
    /// incarnation can never confirm a read of this one.
    next_context: u64,
    /// The member is frozen (a process pause) until this time.
    paused_until: u64,
    /// This member's tick interval: `TICK_US` scaled by its clock drift.
    tick_us: u64,
}

struct Pending {
    attempt: u64,
    node: usize,
    inc: u64,
    term: Term,
    index: u64,
    deadline: u64,
    proposed_at: u64,
}

/// A read a client is waiting for.
struct ReadOp {
    node: usize,
    inc: u64,
    key: usize,
    linearizable: bool,
    context: u64,
    /// The read index the leader confirmed, once it did.
    read_index: Option<u64>,
    /// The highest index of a write to `key` acknowledged before the read was sent: a
    /// linearizable read must return that write or a newer one.
    min_index: u64,
    deadline: u64,
}

struct Client {
    target: usize,
    counter: u64,
    pending: Option<Pending>,
    read: Option<ReadOp>,
    /// Wake-ups carry a generation; only the latest one counts.
    generation: u64,
}

enum Event {
    Tick {
        node: usize,
        inc: u64,
    },
    Deliver {
        msg: Message,
        from_inc: u64,
    },
    /// A snapshot stream frame from node `from` (incarnation `from_inc`) to node `to`.
    Snap {
        from: usize,
        to: usize,
        from_inc: u64,
        frame: SnapFrame,
    },
    SnapTimer {
        node: usize,
        inc: u64,
        id: u64,
    },
    LagCrash,
    PersistDone {
        node: usize,
        inc: u64,
        job: u64,
    },
    Crash {
        node: usize,
        inc: u64,
    },
    CrashRandom,
    Restart {
        node: usize,
    },
    ClientWake {
        client: usize,
        generation: u64,
    },
    PartitionStart,
    Heal,
    TakeSnapshot {
        node: usize,
        inc: u64,
    },
    LivenessStart,
    PauseRandom,
}

struct Scheduled {
    time: u64,
    seq: u64,
    event: Event,
}

impl PartialEq for Scheduled {
    fn eq(&self, other: &Self) -> bool {
        (self.time, self.seq) == (other.time, other.seq)
    }
}
impl Eq for Scheduled {}
impl PartialOrd for Scheduled {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Scheduled {
    // Reversed: BinaryHeap is a max-heap and the earliest event must come first.
    fn cmp(&self, other: &Self) -> Ordering {
        (other.time, other.seq).cmp(&(self.time, self.seq))
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Phase {
    Faults,
    Liveness,
}

/// One simulated cluster.
pub struct Sim {
    seed: u64,
    params: Params,
    options: SimOptions,
    rng: Rng,
    now: u64,
    seq: u64,
    queue: BinaryHeap<Scheduled>,
    nodes: Vec<Node>,
    clients: Vec<Client>,
    /// Directed links `(from, to)` that drop every message.
    blocked: BTreeSet<(usize, usize)>,
    checker: Checker,
    trace: Trace,
    phase: Phase,
    heal_at: Option<u64>,
    liveness_ok: Option<u64>,
    next_job: u64,
    next_transfer: u64,
    stats: Stats,
}

fn violation(time_us: u64, kind: &'static str, detail: String) -> Violation {
    Violation { time_us, kind, detail }
}

fn role_name(role: Role) -> &'static str {
    match role {
        Role::Follower => "follower",
        Role::PreCandidate => "pre-candidate",
        Role::Candidate => "candidate",
        Role::Leader => "LEADER",
    }
}

impl Sim {
    pub fn new(seed: u64, options: SimOptions) -> Sim {
        let params = Params::draw(seed, options.profile);
        let mut drift = Rng::new(mix64(seed ^ 0xD81F_7C10_C4A5_0001));
        let nodes = (0..params.nodes)
            .map(|i| {
                // A clock that runs fast or slow by up to `drift_ppm`.
                let ppm = drift.between(0, 2 * params.drift_ppm);
                let tick_us = TICK_US * (1_000_000 - params.drift_ppm + ppm) / 1_000_000;
                Node {
                    id: NodeId(i as u64 + 1),
                    inc: 0,
                    durable: Durable::default(),
                    live: None,
                    next_context: 1,
                    paused_until: 0,
                    tick_us: tick_us.max(1),
                }
            })
            .collect();
        let mut rng = Rng::new(mix64(seed) ^ 0x5851_F42D_4C95_7F2D);
        let clients = (0..params.clients)
            .map(|_| Client {
                target: rng.below(params.nodes as u64) as usize,
                counter: 0,
                pending: None,
                read: None,
                generation: 0,
            })
            .collect();
        Sim {
            seed,
            trace: Trace::new(options.trace),
            params,
            options,
            rng,
            now: 0,
            seq: 0,
            queue: BinaryHeap::new(),
            nodes,
            clients,
            blocked: BTreeSet::new(),
            checker: Checker::default(),
            phase: Phase::Faults,
            heal_at: None,
            liveness_ok: None,
            next_job: 0,
            next_transfer: 0,
            stats: Stats::default(),
        }
    }

    /// Whether the driver bug `b` is planted (only in a `planted-bugs` build).
    fn bug(&self, b: DriverBug) -> bool {
        cfg!(feature = "planted-bugs") && self.options.driver_bug == Some(b)
    }

    /// Runs the seed to the end or to the first violation.
    pub fn run(mut self) -> Outcome {
        let mut panic = None;
        let params = self.params.clone();
        let violation = match self.start() {
            Err(v) => Some(v),
            Ok(()) => self.event_loop(&mut panic),
        };
        Outcome {
            seed: self.seed,
            violation,
            panic,
            trace_hash: self.trace.hash(),
            virtual_us: self.now,
            stats: Stats { events: self.trace.events(), ..self.stats.clone() },
            trace: self.trace.take_lines(),
            params,
        }
    }

    fn start(&mut self) -> Result<(), Violation> {
        for n in 0..self.nodes.len() {
            self.start_node(n)?;
        }
        for c in 0..self.clients.len() {
            let at = self.rng.between(0, 50 * MS);
            self.wake_client(c, at);
        }
        if self.params.crash_mean_us > 0 {
            let at = self.rng.exp(self.params.crash_mean_us);
            self.schedule(at, Event::CrashRandom);
        }
        if self.params.partition_mean_us > 0 {
            let at = self.rng.exp(self.params.partition_mean_us);
            self.schedule(at, Event::PartitionStart);
        }
        if self.params.lag_downtime_us > 0 {
            let at = self.rng.between(300 * MS, 1_500 * MS);
            self.schedule(at, Event::LagCrash);
        }
        if self.params.pause_mean_us > 0 {
            let at = self.rng.exp(self.params.pause_mean_us);
            self.schedule(at, Event::PauseRandom);
        }
        self.schedule(self.params.fault_phase_us, Event::LivenessStart);
        Ok(())
    }

    fn event_loop(&mut self, panic: &mut Option<String>) -> Option<Violation> {
        while let Some(Scheduled { time, event, .. }) = self.queue.pop() {
            self.now = time;
            self.checker.now = time;
            if let Some(heal) = self.heal_at {
                match self.liveness_ok {
                    Some(_) if time >= self.params.min_run_us => return None,
                    None if time > heal + self.params.liveness_deadline_us => {
                        return Some(violation(
                            time,
                            "liveness",
                            format!(
                                "no command proposed after the faults stopped (at {} ms) committed within {} ms",
                                heal / 1000,
                                self.params.liveness_deadline_us / 1000
                            ),
                        ));
                    }
                    _ => {}
                }
            }
            if self.trace.events() > self.params.max_events {
                return Some(violation(
                    time,
                    "event budget",
                    format!(
                        "more than {} events by {} ms: a message storm or livelock",
                        self.params.max_events,
                        time / 1000
                    ),
                ));
            }
            crate::quiet_panics(true);
            let result = catch_unwind(AssertUnwindSafe(|| self.handle(event)));
            crate::quiet_panics(false);
            match result {
                Ok(Ok(())) => {}
                Ok(Err(v)) => return Some(v),
                Err(payload) => {
                    let message = crate::take_panic_message(payload);
                    *panic = Some(message.clone());
                    return Some(violation(time, "core panic", message));
                }
            }
        }
        Some(violation(self.now, "simulator", "event queue ran dry".into()))
    }

    fn schedule(&mut self, at: u64, event: Event) {
        self.seq += 1;
        self.queue.push(Scheduled { time: at, seq: self.seq, event });
    }

    fn record(&mut self, event: TraceEvent) {
        self.trace.record(self.now, event);
    }

    /// The member an event is handled by, when a process pause can hold it back.
    fn event_member(event: &Event) -> Option<usize> {
        match event {
            Event::Tick { node, .. }
            | Event::SnapTimer { node, .. }
            | Event::PersistDone { node, .. }
            | Event::TakeSnapshot { node, .. } => Some(*node),
            Event::Deliver { msg, .. } => Some((msg.to.0 as usize).wrapping_sub(1)),
            Event::Snap { to, .. } => Some(*to),
            _ => None,
        }
    }

    fn handle(&mut self, event: Event) -> Result<(), Violation> {
        // A paused member handles nothing: its timers, messages (buffered by the network) and
        // disk completions wait until it runs again, in their order.
        if let Some(n) = Self::event_member(&event)
            && n < self.nodes.len()
            && self.nodes[n].paused_until > self.now
            && self.nodes[n].live.is_some()
        {
            let at = self.nodes[n].paused_until;
            self.schedule(at, event);
            return Ok(());
        }
        match event {
            Event::Tick { node, inc } => {
                if self.nodes[node].inc != inc {
                    return Ok(());
                }
                if let Some(live) = self.nodes[node].live.as_mut() {
                    live.raft.tick();
                    let at = self.now + self.nodes[node].tick_us;
                    self.schedule(at, Event::Tick { node, inc });
                    self.drive(node)?;
                }
                Ok(())
            }
            Event::Deliver { msg, from_inc } => self.deliver(msg, from_inc),
            Event::Snap { from, to, from_inc, frame } => self.snap_frame(from, to, from_inc, frame),
            Event::SnapTimer { node, inc, id } => self.snap_timer(node, inc, id),
            Event::LagCrash => {
                // A follower goes down for long while the others commit and compact.
                let down = self.nodes.iter().filter(|n| n.live.is_none()).count();
                let candidates: Vec<usize> = (0..self.nodes.len())
                    .filter(|i| self.nodes[*i].live.as_ref().is_some_and(|l| l.raft.role() != Role::Leader))
                    .collect();
                if self.phase == Phase::Faults && down < self.params.max_down && !candidates.is_empty() {
                    let n = self.rng.pick(&candidates);
                    self.crash_for(n, self.params.lag_downtime_us);
                }
                Ok(())
            }
            Event::PersistDone { node, inc, job } => self.persist_done(node, inc, job),
            Event::Crash { node, inc } => {
                if self.nodes[node].inc == inc && self.phase == Phase::Faults {
                    self.crash(node);
                }
                Ok(())
            }
            Event::CrashRandom => {
                if self.phase != Phase::Faults {
                    return Ok(());
                }
                let mut node = self.rng.below(self.nodes.len() as u64) as usize;
                if self.rng.chance(self.params.leader_crash_ppm)
                    && let Some(leader) = self.live_leader()
                {
                    node = leader;
                }
                let down = self.nodes.iter().filter(|n| n.live.is_none()).count();
                if down < self.params.max_down && self.nodes[node].live.is_some() {
                    self.crash(node);
                }
                let at = self.now + self.rng.exp(self.params.crash_mean_us);
                self.schedule(at, Event::CrashRandom);
                Ok(())
            }
            Event::Restart { node } => {
                if self.nodes[node].live.is_none() {
                    self.start_node(node)?;
                }
                Ok(())
            }
            Event::ClientWake { client, generation } => {
                if self.clients[client].generation == generation {
                    self.client_wake(client)?;
                }
                Ok(())
            }
            Event::PartitionStart => {
                if self.phase == Phase::Faults {
                    self.partition();
                }
                Ok(())
            }
            Event::Heal => {
                if self.phase == Phase::Faults {
                    self.blocked.clear();
                    self.record(TraceEvent::Heal);
                    let at = self.now + self.rng.exp(self.params.partition_mean_us);
                    self.schedule(at, Event::PartitionStart);
                }
                Ok(())
            }
            Event::TakeSnapshot { node, inc } => self.take_snapshot(node, inc),
            Event::LivenessStart => self.liveness_start(),
            Event::PauseRandom => {
                if self.phase != Phase::Faults {
                    return Ok(());
                }
                let node = self.rng.below(self.nodes.len() as u64) as usize;
                if self.nodes[node].live.is_some() && self.nodes[node].paused_until <= self.now {
                    let d = self.rng.between(self.params.pause_us.0, self.params.pause_us.1);
                    self.nodes[node].paused_until = self.now + d;
                    self.stats.pauses += 1;
                    self.record(TraceEvent::Pause { node: node as u64 + 1, ms: d / MS });
                }
                let at = self.now + self.rng.exp(self.params.pause_mean_us);
                self.schedule(at, Event::PauseRandom);
                Ok(())
            }
        }
    }

    // ----- nodes -----

    /// The live node leading the highest term, if any.
    fn live_leader(&self) -> Option<usize> {
        (0..self.nodes.len())
            .filter_map(|i| {
                let l = self.nodes[i].live.as_ref()?;
                (l.raft.role() == Role::Leader).then_some((l.raft.term(), i))
            })
            .max()
            .map(|(_, i)| i)
    }

    fn raft_config(&self, n: usize) -> Config {
        let node = &self.nodes[n];
        let mut config = Config::new(node.id);
        config.pre_vote = self.params.pre_vote;
        config.check_quorum = self.params.check_quorum;
        config.inflight_messages_max = self.params.inflight_messages_max;
        config.append_bytes_max = self.params.append_bytes_max;
        config.seed = mix64(self.seed ^ mix64(node.id.0 ^ (node.inc << 32)));
        config
    }

    /// Boots node `n` from its durable state only.
    fn start_node(&mut self, n: usize) -> Result<(), Violation> {
        let config = self.raft_config(n);
        let voters = ClusterConfig::new(self.nodes.iter().map(|x| x.id));
        let node = &self.nodes[n];
        let id = node.id;
        let d = &node.durable;
        let snap_index = d.snapshot_index();
        let entries: Vec<Entry> = d.log.iter().filter(|e| e.index.0 > snap_index).cloned().collect();
        let initial = InitialState {
            hard_state: d.hard_state,
            config: voters,
            snapshot: d.snapshot.as_ref().map(|s| s.meta.clone()),
            entries: entries.clone(),
        };
        #[allow(unused_mut)]
        let mut raft = Raft::new(config, initial)
            .map_err(|e| violation(self.now, "restart refused", format!("node {id}: {e}")))?;
        #[cfg(feature = "planted-bugs")]
        raft.plant_bug(self.options.planted_bug);
        let (sm, mut mirror) = match &d.snapshot {
            Some(s) => (s.sm.clone(), Mirror::new(s.meta.index.0, s.meta.term, s.chain)),
            None => (StateMachine::default(), Mirror::default()),
        };
        let latest_snap = d.snapshot.clone();
        for e in &entries {
            let c = mirror.push(e);
            self.checker.log_entry(id, e.index.0, e.term, c)?;
        }
        self.checker.restored(id, sm.applied, sm.digest)?;
        let restart = TraceEvent::Restart {
            node: id.0,
            term: raft.term().0,
            commit: raft.commit_index().0,
            last: raft.last_index().0,
        };
        let inc = node.inc;
        self.nodes[n].live = Some(Live {
            raft,
            sm,
            jobs: VecDeque::new(),
            disk_free_at: self.now,
            last_commit: mirror.base_index,
            mirror,
            staged: Vec::new(),
            outgoing: Vec::new(),
            incoming: Vec::new(),
            seen_transfers: vec![0; self.nodes.len()],
            latest_snap,
            leader_term: None,
            queued_hs: self.nodes[n].durable.hard_state,
            lazy_hs: None,
            local_contexts: 0,
        });
        self.nodes[n].paused_until = 0;
        self.record(restart);
        let at = self.now + self.rng.between(1, TICK_US);
        self.schedule(at, Event::Tick { node: n, inc });
        if self.params.snapshot_mean_us > 0 {
            let at = self.now + self.rng.exp(self.params.snapshot_mean_us);
            self.schedule(at, Event::TakeSnapshot { node: n, inc });
        }
        self.drive(n)
    }

    fn crash(&mut self, n: usize) {
        let downtime = self.rng.between(self.params.downtime_us.0, self.params.downtime_us.1);
        self.crash_for(n, downtime);
    }

    fn crash_for(&mut self, n: usize, downtime: u64) {
        let keep_tail = self.bug(DriverBug::SnapshotKeepsTail);
        let Some(live) = self.nodes[n].live.take() else { return };
        let total = live.jobs.len();
        let kept =
            if self.params.crash_keeps_prefix { self.rng.between(0, total as u64) as usize } else { 0 };
        let mut jobs = live.jobs.into_iter();
        for job in jobs.by_ref().take(kept) {
            // The disk got these writes out before the power went; nobody heard of it.
            let _ = write_durable(&mut self.nodes[n].durable, &job, keep_tail);
        }
        if let Some(job) = jobs.next() {
            self.tear(n, &job);
        }
        if let Some((first, hs)) = self.nodes[n].durable.fsync_lost.take() {
            // What a failed write or fsync lost (the planted bug acknowledged it anyway).
            let d = &mut self.nodes[n].durable;
            if let Some(first) = first {
                d.log.retain(|e| e.index.0 < first);
            }
            if let Some(hs) = hs {
                d.hard_state = hs;
            }
        }
        self.nodes[n].paused_until = 0;
        self.nodes[n].inc += 1;
        self.stats.crashes += 1;
        let id = self.nodes[n].id.0;
        self.record(TraceEvent::Crash { node: id, jobs_kept: kept, jobs_lost: total - kept });
        self.forget_pending(n, u64::MAX, "node crashed");
        self.forget_reads(n, "node crashed");
        self.schedule(self.now + downtime, Event::Restart { node: n });
    }

    /// A crash in the middle of persist job `job`: with the seed's chance, a prefix of its
    /// entries reached the disk but not its hard state (a torn write; the storage's record
    /// checksums drop a torn record, so what survives is whole records).
    fn tear(&mut self, n: usize, job: &Job) {
        if job.snapshot.is_some() || job.entries.len() < 2 || !self.rng.chance(self.params.torn_write_ppm) {
            return;
        }
        let keep = self.rng.between(1, job.entries.len() as u64 - 1) as usize;
        let torn = Job {
            id: job.id,
            synced: false,
            snapshot: None,
            entries: job.entries[..keep].to_vec(),
            hard_state: None,
            after: Vec::new(),
            target: None,
            failed: false,
        };
        if write_durable(&mut self.nodes[n].durable, &torn, false).is_ok() {
            self.stats.torn_writes += 1;
            let id = self.nodes[n].id.0;
            self.record(TraceEvent::Torn { node: id, entries_kept: keep, entries: job.entries.len() });
        }
    }

    /// The driver loop of node `n` after an input: drain every Ready, obeying the ordering
    /// contract, then run the per-step checks.
    fn drive(&mut self, n: usize) -> Result<(), Violation> {
        let ack_early = self.bug(DriverBug::AckBeforeSync);
        loop {
            let now = self.now;
            let Some(live) = self.nodes[n].live.as_mut() else { return Ok(()) };
            if !live.raft.has_ready() {
                break;
            }
            let id = live.raft.id();
            let leading_same_term =
                live.raft.role() == Role::Leader && live.leader_term == Some(live.raft.term());
            let mut rd = live.raft.ready();
            let read_states = std::mem::take(&mut rd.read_states);
            let failed_reads = std::mem::take(&mut rd.failed_reads);
            let must_persist = rd.must_persist();
            let must_sync = rd.must_sync(&live.queued_hs);
            if let Some(hs) = rd.hard_state {
                live.queued_hs = hs;
            }
            let persist_target = rd.persist_target();
            if let Some(ss) = rd.soft_state {
                if ss.role == Role::Leader {
                    self.stats.elections_won += 1;
                }
                self.record(TraceEvent::Role {
                    node: id.0,
                    role: role_name(ss.role),
                    term: ss.term.0,
                    leader: ss.leader.map_or(0, |l| l.0),
                });
            }
            // 1. Messages that may leave before anything is durable.
            for m in std::mem::take(&mut rd.messages) {
                self.send(n, m)?;
            }
            // 2a. A snapshot from the leader: restore the state machine from it first.
            let mut job_snapshot = None;
            if let Some(meta) = &rd.snapshot {
                let data = self.install_snapshot(n, meta)?;
                job_snapshot = Some(data);
            }
            // 2b. New log entries: mirror them and check Leader Append-Only and Log Matching.
            let Some(live) = self.nodes[n].live.as_mut() else { return Ok(()) };
            if let Some(first) = rd.entries.first() {
                let first_index = first.index.0;
                let last = live.mirror.last_index();
                if leading_same_term && first_index <= last {
                    return Err(violation(
                        now,
                        "leader append-only",
                        format!(
                            "leader {id} of term {} rewrites its log from {first_index} (last index was {last})",
                            live.raft.term()
                        ),
                    ));
                }
                if first_index > last + 1 || (first_index <= last && !live.mirror.truncate_from(first_index))
                {
                    return Err(violation(
                        now,
                        "log continuity",
                        format!(
                            "node {id} hands out entries from {first_index} for a log of {}..={last}",
                            live.mirror.base_index
                        ),
                    ));
                }
                for e in &rd.entries {
                    let c = live.mirror.push(e);
                    self.checker.log_entry(id, e.index.0, e.term, c)?;
                }
            }
            // Commit points: everything up to the commit index is committed, with this prefix.
            let commit = live.raft.commit_index().0;
            if commit > live.last_commit {
                for i in live.last_commit + 1..=commit {
                    if let Some((t, c)) = live.mirror.get(i) {
                        self.checker.committed(id, i, t, c, live.raft.term())?;
                    }
                }
                live.last_commit = commit;
                self.stats.max_commit = self.stats.max_commit.max(commit);
                self.trace.record(now, TraceEvent::Commit { node: id.0, index: commit });
            }
            // 2c. Persist snapshot, entries, hard state as one job; its messages wait for it.
            if must_persist || !live.jobs.is_empty() {
                self.next_job += 1;
                let mut early = Vec::new();
                let after = if ack_early {
                    // Planted: acknowledgements leave before the job is durable.
                    early = rd.messages_after_persist;
                    Vec::new()
                } else {
                    rd.messages_after_persist
                };
                let failed =
                    must_sync && self.phase == Phase::Faults && self.rng.chance(self.params.fsync_error_ppm);
                let job = Job {
                    id: self.next_job,
                    synced: must_sync,
                    target: persist_target,
                    snapshot: job_snapshot,
                    entries: rd.entries,
                    hard_state: rd.hard_state,
                    after,
                    failed,
                };
                // A Ready with nothing to sync only waits for the jobs before it.
                let latency = if must_sync {
                    self.rng.between(self.params.disk_us.0, self.params.disk_us.1)
                } else {
                    0
                };
                let done = live.disk_free_at.max(now) + latency;
                live.disk_free_at = done;
                live.jobs.push_back(job);
                let inc = self.nodes[n].inc;
                let job = self.next_job;
                self.schedule(done, Event::PersistDone { node: n, inc, job });
                if self.phase == Phase::Faults && self.rng.chance(self.params.crash_in_persist_ppm) {
                    let at = self.rng.between(now, done.saturating_sub(1).max(now));
                    self.schedule(at, Event::Crash { node: n, inc });
                }
                for m in early {
                    self.send(n, m)?;
                }
            } else {
                for m in rd.messages_after_persist {
                    self.send(n, m)?;
                }
            }
            // 5. Apply committed entries in order.
            if let Some(last) = rd.committed_entries.last().map(|e| e.index) {
                for e in &rd.committed_entries {
                    self.apply(n, e)?;
                }
                if let Some(live) = self.nodes[n].live.as_mut() {
                    live.raft.applied(last);
                }
            }
            // 6. Confirmed and failed reads; serve those whose index is applied.
            if !read_states.is_empty() || !failed_reads.is_empty() {
                self.reads_confirmed(n, &read_states, &failed_reads);
            }
            self.serve_reads(n)?;
        }
        self.after_step(n)
    }

    /// Checks that need the node's state after a whole step: Election Safety and, for a new
    /// leader, Leader Completeness.
    fn after_step(&mut self, n: usize) -> Result<(), Violation> {
        let Some(live) = self.nodes[n].live.as_mut() else { return Ok(()) };
        if live.raft.role() == Role::Leader {
            let (id, term) = (live.raft.id(), live.raft.term());
            self.checker.leader(term, id)?;
            if live.leader_term != Some(term) {
                self.checker.new_leader(id, term, &live.mirror)?;
                live.leader_term = Some(term);
                let inc = self.nodes[n].inc;
                if self.phase == Phase::Faults && self.rng.chance(self.params.new_leader_crash_ppm) {
                    // Leader churn: this leader dies soon, often mid-replication.
                    let at = self.now + self.rng.between(0, self.params.new_leader_crash_within_us);
                    self.schedule(at, Event::Crash { node: n, inc });
                }
                if self.phase == Phase::Faults && self.rng.chance(self.params.new_leader_cut_ppm) {
                    // Partial replication: the new leader's messages reach only some members
                    // for a while.
                    for o in (0..self.nodes.len()).filter(|o| *o != n) {
                        if self.rng.chance(500_000) {
                            self.blocked.insert((n, o));
                        }
                    }
                    let blocked = self.blocked.iter().map(|(a, b)| (*a as u64 + 1, *b as u64 + 1)).collect();
                    self.record(TraceEvent::Partition { blocked });
                    let at =
                        self.now + self.rng.between(self.params.partition_us.0, self.params.partition_us.1);
                    self.schedule(at, Event::Heal);
                }
            }
        } else {
            if let Some(live) = self.nodes[n].live.as_mut() {
                live.leader_term = None;
            }
        }
        Ok(())
    }

    fn install_snapshot(&mut self, n: usize, meta: &SnapshotMeta) -> Result<Arc<SnapData>, Violation> {
        let now = self.now;
        let Some(live) = self.nodes[n].live.as_mut() else {
            return Err(violation(now, "simulator", "snapshot for a node that is down".into()));
        };
        let id = live.raft.id();
        let Some(data) =
            live.staged.iter().rev().find(|s| s.meta.index == meta.index && s.meta.term == meta.term)
        else {
            return Err(violation(
                now,
                "snapshot",
                format!("node {id} installs snapshot {}@{} that it never received", meta.index, meta.term),
            ));
        };
        let data = data.clone();
        if data.sm.applied != meta.index.0 {
            return Err(violation(now, "simulator", "snapshot data does not match its metadata".into()));
        }
        live.sm = data.sm.clone();
        live.mirror = Mirror::new(meta.index.0, meta.term, data.chain);
        live.latest_snap = Some(data.clone());
        live.raft.applied(meta.index);
        live.last_commit = live.last_commit.max(meta.index.0);
        self.checker.log_entry(id, meta.index.0, meta.term, data.chain)?;
        self.checker.committed(id, meta.index.0, meta.term, data.chain, live.raft.term())?;
        self.checker.restored(id, data.sm.applied, data.sm.digest)?;
        self.stats.snapshots_installed += 1;
        self.record(TraceEvent::SnapshotInstalled { node: id.0, index: meta.index.0, term: meta.term.0 });
        self.forget_pending(n, meta.index.0, "its node installed a snapshot over it");
        Ok(data)
    }

    fn apply(&mut self, n: usize, e: &Entry) -> Result<(), Violation> {
        let now = self.now;
        let Some(live) = self.nodes[n].live.as_mut() else { return Ok(()) };
        let id = live.raft.id();
        let index = e.index.0;
        if index != live.sm.applied + 1 {
            return Err(violation(
                now,
                "exactly once",
                format!("node {id} applies {index} after {}: not in order", live.sm.applied),
            ));
        }
        let in_log = live.mirror.get(index);
        if live.mirror.entry_hash(index) != Some(entry_hash(e)) {
            return Err(violation(
                now,
                "state machine safety",
                format!("node {id} applies {index}@{} which is not the entry its log holds there", e.term),
            ));
        }
        if in_log.is_none() || self.checker.committed_at(index) != in_log {
            return Err(violation(
                now,
                "state machine safety",
                format!("node {id} applies {index}@{} which is not the committed entry there", e.term),
            ));
        }
        if let Some(attempt) = attempt_of(e) {
            live.sm.digest = chain(live.sm.digest, attempt);
            live.sm.commands += 1;
            live.sm.values[key_of(attempt)] = attempt;
        }
        live.sm.applied = index;
        let digest = live.sm.digest;
        let inc = self.nodes[n].inc;
        self.checker.applied(id, e, digest)?;
        // Clients waiting on this node for this index learn their outcome.
        for c in 0..self.clients.len() {
            let resolved = match &self.clients[c].pending {
                Some(p) if p.node == n && p.inc == inc && p.index == index => {
                    Some((p.attempt, p.term == e.term, p.proposed_at, p.term))
                }
                _ => None,
            };
            let Some((attempt, committed, proposed_at, term)) = resolved else { continue };
            self.clients[c].pending = None;
            if committed {
                self.checker.acknowledged(attempt, index)?;
                self.stats.acknowledged += 1;
                self.record(TraceEvent::Ack { client: c as u64, attempt, index, term: term.0 });
                if self.liveness_ok.is_none() && self.heal_at.is_some_and(|h| proposed_at >= h) {
                    self.liveness_ok = Some(self.now);
                }
            } else {
                self.checker.abandoned(attempt)?;
                self.stats.lost += 1;
                self.record(TraceEvent::Lost { client: c as u64, attempt, index });
            }
            let at =
                self.now + self.rng.between(self.params.client_think_us.0, self.params.client_think_us.1);
            self.wake_client(c, at);
        }
        Ok(())
    }

    fn persist_done(&mut self, n: usize, inc: u64, job_id: u64) -> Result<(), Violation> {
        let keep_tail = self.bug(DriverBug::SnapshotKeepsTail);
        let ignore_disk_errors = self.bug(DriverBug::AckDespiteFsyncError);
        if self.nodes[n].inc != inc {
            return Ok(());
        }
        let node = &mut self.nodes[n];
        let Some(live) = node.live.as_mut() else { return Ok(()) };
        let Some(job) = live.jobs.pop_front() else {
            return Err(violation(self.now, "simulator", "persist completion without a job".into()));
        };
        if job.id != job_id {
            return Err(violation(self.now, "simulator", "persist jobs completed out of order".into()));
        }
        if job.failed {
            self.stats.fsync_errors += 1;
            let id = node.id.0;
            if ignore_disk_errors {
                // Planted: the error is ignored. The kernel dropped the failed pages, so what
                // the job wrote is gone at the next crash, yet everything below acknowledges it.
                let first = job.entries.first().map(|e| e.index.0);
                let hs_before = job.hard_state.map(|_| node.durable.hard_state);
                let lost = match node.durable.fsync_lost.take() {
                    Some((f, h)) => (f.or(first).min(first.or(f)), h.or(hs_before)),
                    None => (first, hs_before),
                };
                node.durable.fsync_lost = Some(lost);
            } else {
                // A member that cannot make its log durable stops (like etcd, which panics on
                // a failed fsync): nothing of this job or a later one is acknowledged, and the
                // failed write may have left a torn prefix. It is restarted later.
                live.jobs.push_front(job);
                self.record(TraceEvent::DiskError { node: id, job: job_id });
                self.crash(n);
                return Ok(());
            }
        }
        let node = &mut self.nodes[n];
        let Some(live) = node.live.as_mut() else { return Ok(()) };
        if job.synced {
            // The sync also makes an earlier unsynced hard state durable, unless this job
            // writes a newer one.
            let lazy = live.lazy_hs.take();
            write_durable(&mut node.durable, &job, keep_tail)
                .map_err(|d| violation(self.now, "durable log", d))?;
            if job.hard_state.is_none()
                && let Some(hs) = lazy
            {
                node.durable.hard_state = hs;
            }
        } else if job.hard_state.is_some() {
            live.lazy_hs = job.hard_state;
        }
        let id = node.id;
        if live.jobs.is_empty() {
            // With nothing queued, the disk holds exactly the member's log: same last entry.
            let d = &node.durable;
            let on_disk = match (d.log.last(), &d.snapshot) {
                (Some(e), Some(s)) if s.meta.index >= e.index => (s.meta.index.0, s.meta.term),
                (Some(e), _) => (e.index.0, e.term),
                (None, Some(s)) => (s.meta.index.0, s.meta.term),
                (None, None) => (0, Term(0)),
            };
            let last = live.mirror.last_index();
            let in_memory = (last, live.mirror.get(last).map_or(Term(0), |(t, _)| t));
            if on_disk != in_memory {
                return Err(violation(
                    self.now,
                    "durable log",
                    format!(
                        "node {id} has every persist job done but its disk ends at {}@{} while its log ends at {}@{}",
                        on_disk.0, on_disk.1, in_memory.0, in_memory.1
                    ),
                ));
            }
        }
        for m in job.after {
            self.send(n, m)?;
        }
        if let Some((index, term)) = job.target {
            if let Some(live) = self.nodes[n].live.as_mut() {
                live.raft.persisted(index, term);
            }
            self.record(TraceEvent::Persisted { node: id.0, index: index.0, term: term.0 });
        }
        self.drive(n)
    }

    fn take_snapshot(&mut self, n: usize, inc: u64) -> Result<(), Violation> {
        if self.nodes[n].inc != inc {
            return Ok(());
        }
        let now = self.now;
        let policy = self.params.compaction;
        let next = now + self.rng.exp(self.params.snapshot_mean_us);
        self.schedule(next, Event::TakeSnapshot { node: n, inc });
        let node = &mut self.nodes[n];
        let Some(live) = node.live.as_mut() else { return Ok(()) };
        let applied = live.sm.applied;
        let current = live.latest_snap.as_ref().map_or(0, |s| s.meta.index.0);
        // Only between persist jobs, so the durable log and the core's log agree.
        if !live.jobs.is_empty() || applied == 0 {
            return Ok(());
        }
        let log_bytes: u64 = (live.raft.first_index().0..=live.raft.last_index().0)
            .filter_map(|i| live.raft.log_entry(LogIndex(i)).map(Entry::size_bytes))
            .sum();
        let Some((_, compact_to)) = policy.plan(LogIndex(applied), LogIndex(current), log_bytes) else {
            return Ok(());
        };
        let compact_to = compact_to.0;
        let Some((_, chain_at)) = live.mirror.get(applied) else {
            return Err(violation(
                now,
                "simulator",
                format!("applied index {applied} not in the mirrored log"),
            ));
        };
        let meta = live
            .raft
            .snapshot_taken(LogIndex(applied), LogIndex(compact_to))
            .map_err(|e| violation(now, "snapshot refused", format!("node {}: {e}", node.id)))?;
        let data = Arc::new(SnapData { meta, sm: live.sm.clone(), chain: chain_at });
        live.latest_snap = Some(data.clone());
        live.mirror.compact_to(compact_to.min(live.raft.first_index().0.saturating_sub(1)));
        node.durable.snapshot = Some(data);
        node.durable.log.retain(|e| e.index.0 > compact_to);
        self.stats.snapshots_taken += 1;
        let id = node.id.0;
        self.record(TraceEvent::SnapshotTaken { node: id, index: applied, compact_to });
        self.drive(n)
    }

    // ----- network -----

    fn send(&mut self, from: usize, m: Message) -> Result<(), Violation> {
        let to = (m.to.0 as usize).wrapping_sub(1);
        if to >= self.nodes.len() {
            return Err(violation(self.now, "simulator", format!("message to unknown node {}", m.to)));
        }
        if let MessageBody::InstallSnapshot { meta } = &m.body {
            let meta = meta.clone();
            return self.start_transfer(from, to, meta, m);
        }
        let from_inc = self.nodes[from].inc;
        if self.rng.chance(self.params.loss_ppm) {
            self.dropped(&m, "lost");
            return Ok(());
        }
        let copies = if self.rng.chance(self.params.duplicate_ppm) { 2 } else { 1 };
        for _ in 0..copies {
            let mut delay = self.rng.between(self.params.delay_us.0, self.params.delay_us.1);
            if self.rng.chance(self.params.long_delay_ppm) {
                delay += self.rng.between(0, self.params.long_delay_us);
            }
            self.schedule(self.now + delay, Event::Deliver { msg: m.clone(), from_inc });
        }
        Ok(())
    }

    fn dropped(&mut self, m: &Message, reason: &'static str) {
        self.stats.messages_dropped += 1;
        self.record(TraceEvent::Drop { from: m.from.0, to: m.to.0, kind: m.body.name(), reason });
    }

    /// A message from `from` could not reach `to`: now and then the sender's transport notices
    /// (a failed connection) and tells its core, as the real transport does.
    fn maybe_unreachable(&mut self, from: usize, from_inc: u64, to: usize) -> Result<(), Violation> {
        if self.nodes[from].inc != from_inc
            || self.nodes[from].paused_until > self.now
            || !self.rng.chance(self.params.unreachable_ppm)
        {
            return Ok(());
        }
        let Some(live) = self.nodes[from].live.as_mut() else { return Ok(()) };
        live.raft.report_unreachable(NodeId(to as u64 + 1));
        self.stats.unreachable_reports += 1;
        self.record(TraceEvent::Unreachable { node: from as u64 + 1, peer: to as u64 + 1 });
        self.drive(from)
    }

    fn deliver(&mut self, m: Message, from_inc: u64) -> Result<(), Violation> {
        let from = m.from.0 as usize - 1;
        let to = m.to.0 as usize - 1;
        if self.blocked.contains(&(from, to)) {
            self.dropped(&m, "partitioned");
            return self.maybe_unreachable(from, from_inc, to);
        }
        if self.nodes[to].live.is_none() {
            self.dropped(&m, "receiver down");
            return self.maybe_unreachable(from, from_inc, to);
        }
        self.stats.messages_delivered += 1;
        self.record(TraceEvent::Deliver { from: m.from.0, to: m.to.0, kind: m.body.name(), term: m.term.0 });
        self.trace.note(self.now, || describe(&m.body));
        self.step(to, m)?;
        self.drive(to)
    }

    fn step(&mut self, to: usize, m: Message) -> Result<(), Violation> {
        let now = self.now;
        if let Some(live) = self.nodes[to].live.as_mut() {
            let (sender, recipient) = (m.from, m.to);
            live.raft.step(m).map_err(|e| {
                violation(now, "simulator", format!("node {recipient} refused a message from {sender}: {e}"))
            })?;
        }
        Ok(())
    }

    // ----- the snapshot stream (see `snapstream`) -----

    /// The core asked to send a snapshot: stream the stored snapshot's bytes to `to`. At most
    /// one transfer per peer; a request for the snapshot already streaming keeps that one,
    /// one for another snapshot replaces it.
    fn start_transfer(
        &mut self,
        from: usize,
        to: usize,
        meta: SnapshotMeta,
        m: Message,
    ) -> Result<(), Violation> {
        let node = &self.nodes[from];
        let Some(live) = node.live.as_ref() else { return Ok(()) };
        let found = [live.latest_snap.clone(), node.durable.snapshot.clone()]
            .into_iter()
            .flatten()
            .find(|s| s.meta.index == meta.index && s.meta.term == meta.term);
        let Some(data) = found else {
            return Err(violation(
                self.now,
                "snapshot",
                format!("node {} sends snapshot {}@{} that it does not have", m.from, meta.index, meta.term),
            ));
        };
        if live.outgoing.iter().any(|t| t.to == to && t.meta == meta) {
            return Ok(());
        }
        let body = Body {
            meta: data.meta.clone(),
            applied: data.sm.applied,
            digest: data.sm.digest,
            commands: data.sm.commands,
            values: data.sm.values,
            chain: data.chain,
            filler: self.params.snapshot_filler_bytes,
        }
        .encode();
        self.next_transfer += 1;
        let id = self.next_transfer;
        let crc = crc32c::crc32c(&body);
        let total_len = body.len() as u64;
        let inc = self.nodes[from].inc;
        let Some(live) = self.nodes[from].live.as_mut() else { return Ok(()) };
        live.outgoing.retain(|t| t.to != to);
        live.outgoing.push(Outgoing {
            id,
            to,
            meta,
            msg: m.clone(),
            body,
            crc,
            next: 0,
            acked: 0,
            end_sent: false,
            progress_mark: 0,
            stream_at: self.now,
        });
        self.stats.snapshots_sent += 1;
        let mut wire = BytesMut::new();
        SnapshotBegin { total_len, message: m }
            .encode(MAX_FRAME_BYTES, &mut wire)
            .map_err(|e| violation(self.now, "simulator", format!("encoding SnapshotBegin: {e}")))?;
        self.send_frame(from, to, SnapFrame::Begin { id, wire: wire.freeze() });
        self.pump(from, id)?;
        let at = self.now + self.params.snapshot_timeout_us;
        self.schedule(at, Event::SnapTimer { node: from, inc, id });
        Ok(())
    }

    /// Sends the chunks of transfer `id` the flow-control window allows, then End.
    fn pump(&mut self, n: usize, id: u64) -> Result<(), Violation> {
        let now = self.now;
        let window = self.params.snapshot_window_chunks * self.params.snapshot_chunk_bytes;
        let chunk = self.params.snapshot_chunk_bytes;
        let mut frames = Vec::new();
        let Some(live) = self.nodes[n].live.as_mut() else { return Ok(()) };
        let Some(t) = live.outgoing.iter_mut().find(|t| t.id == id) else { return Ok(()) };
        let total = t.body.len() as u64;
        while t.next < total && t.next - t.acked < window {
            let end = (t.next + chunk).min(total);
            let data = t.body.slice(t.next as usize..end as usize);
            let crc32c = crc32c::crc32c(&data);
            let mut wire = BytesMut::new();
            SnapshotChunk { offset: t.next, data, crc32c }
                .encode(MAX_FRAME_BYTES, &mut wire)
                .map_err(|e| violation(now, "simulator", format!("encoding SnapshotChunk: {e}")))?;
            frames.push(SnapFrame::Chunk { id, wire: wire.freeze() });
            t.next = end;
        }
        if t.next == total && !t.end_sent {
            t.end_sent = true;
            let mut wire = BytesMut::new();
            SnapshotEnd { total_len: total, crc32c: t.crc }.encode(&mut wire);
            frames.push(SnapFrame::End { id, wire: wire.freeze() });
        }
        let in_flight = t.next - t.acked;
        let to = t.to;
        self.stats.snapshot_bytes_in_flight_max = self.stats.snapshot_bytes_in_flight_max.max(in_flight);
        for f in frames {
            self.send_frame(n, to, f);
        }
        Ok(())
    }

    /// Puts one frame on the simulated network, drawing its faults. Frames of one transfer
    /// travel in order (one stream) unless reordered by a fault.
    fn send_frame(&mut self, from: usize, to: usize, frame: SnapFrame) {
        let from_inc = self.nodes[from].inc;
        let faults = self.phase == Phase::Faults;
        let is_chunk = matches!(frame, SnapFrame::Chunk { .. });
        if is_chunk {
            self.stats.chunks_sent += 1;
        }
        let kind = frame.name();
        let (a, b) = (from as u64 + 1, to as u64 + 1);
        if faults && self.rng.chance(self.params.chunk_loss_ppm) {
            if is_chunk {
                self.stats.chunks_lost += 1;
            }
            self.record(TraceEvent::Drop { from: a, to: b, kind, reason: "lost" });
            return;
        }
        let mut frame = frame;
        if faults
            && let SnapFrame::Chunk { wire, .. } = &mut frame
            && self.rng.chance(self.params.chunk_corrupt_ppm)
        {
            // A bit flips in flight, anywhere in the encoded frame (length, offset, data or
            // CRC); now and then the flip happened in the data before the chunk's CRC was
            // computed, so only the whole-body CRC can catch it.
            let chunk = unframe(wire, FrameType::SnapshotChunk).and_then(|p| SnapshotChunk::decode(p).ok());
            let recomputed = match chunk {
                Some(mut c) if !c.data.is_empty() && self.rng.chance(250_000) => {
                    let mut bytes = c.data.to_vec();
                    let bit = self.rng.below(bytes.len() as u64 * 8);
                    bytes[(bit / 8) as usize] ^= 1 << (bit % 8);
                    c.data = Bytes::from(bytes);
                    c.crc32c = crc32c::crc32c(&c.data);
                    let mut w = BytesMut::new();
                    c.encode(MAX_FRAME_BYTES, &mut w).ok().map(|()| w.freeze())
                }
                _ => None,
            };
            *wire = match recomputed {
                Some(w) => w,
                None => {
                    let mut bytes = wire.to_vec();
                    let bit = self.rng.below(bytes.len() as u64 * 8);
                    bytes[(bit / 8) as usize] ^= 1 << (bit % 8);
                    Bytes::from(bytes)
                }
            };
            self.stats.chunks_corrupted += 1;
            self.record(TraceEvent::Drop { from: a, to: b, kind, reason: "bit flipped in flight" });
        }
        let copies = if faults && self.rng.chance(self.params.chunk_duplicate_ppm) { 2 } else { 1 };
        if copies == 2 && is_chunk {
            self.stats.chunks_duplicated += 1;
        }
        for _ in 0..copies {
            let delay = self.rng.between(self.params.delay_us.0, self.params.delay_us.1);
            let mut at = self.now + delay;
            if frame.forward() {
                let reorder = faults && self.rng.chance(self.params.chunk_reorder_ppm);
                let id = frame.id();
                let stream =
                    self.nodes[from].live.as_mut().and_then(|l| l.outgoing.iter_mut().find(|t| t.id == id));
                match stream {
                    Some(t) if reorder => {
                        // Held back: later frames of the stream overtake it.
                        at = at.max(t.stream_at) + self.rng.between(1, 20 * MS);
                        if is_chunk {
                            self.stats.chunks_reordered += 1;
                        }
                    }
                    Some(t) => {
                        at = at.max(t.stream_at);
                        t.stream_at = at;
                    }
                    None => {}
                }
            }
            self.schedule(at, Event::Snap { from, to, from_inc, frame: frame.clone() });
        }
    }

    fn snap_frame(
        &mut self,
        from: usize,
        to: usize,
        _from_inc: u64,
        frame: SnapFrame,
    ) -> Result<(), Violation> {
        let (a, b) = (from as u64 + 1, to as u64 + 1);
        let kind = frame.name();
        if self.blocked.contains(&(from, to)) {
            self.record(TraceEvent::Drop { from: a, to: b, kind, reason: "partitioned" });
            return Ok(());
        }
        if self.nodes[to].live.is_none() {
            self.record(TraceEvent::Drop { from: a, to: b, kind, reason: "receiver down" });
            return Ok(());
        }
        let id = frame.id();
        self.record(TraceEvent::SnapFrame { from: a, to: b, kind, id });
        match frame {
            SnapFrame::Begin { id, wire } => {
                let Some(live) = self.nodes[to].live.as_mut() else { return Ok(()) };
                if live.seen_transfers[from] >= id {
                    return Ok(()); // A duplicate, or older than a transfer already seen.
                }
                live.seen_transfers[from] = id;
                live.incoming.retain(|t| t.from != from);
                let begin =
                    unframe(&wire, FrameType::SnapshotBegin).and_then(|p| SnapshotBegin::decode(p).ok());
                let Some(SnapshotBegin { total_len, message: msg }) = begin else {
                    return self.reject_transfer(to, from, id, Reject::Undecodable);
                };
                if msg.from.0 != from as u64 + 1
                    || msg.to.0 != to as u64 + 1
                    || !matches!(msg.body, MessageBody::InstallSnapshot { .. })
                {
                    return self.reject_transfer(to, from, id, Reject::Undecodable);
                }
                if msg.term < live.raft.term() {
                    return self.reject_transfer(to, from, id, Reject::StaleTerm);
                }
                if total_len > MAX_BODY_BYTES {
                    return self.reject_transfer(to, from, id, Reject::TooLarge);
                }
                live.incoming.push(Incoming {
                    id,
                    from,
                    msg,
                    body: BodyReceiver::new(total_len),
                    buf: Vec::new(),
                });
                Ok(())
            }
            SnapFrame::Chunk { id, wire } => {
                let Some(live) = self.nodes[to].live.as_mut() else { return Ok(()) };
                let Some(t) = live.incoming.iter_mut().find(|t| t.id == id && t.from == from) else {
                    return Ok(()); // Aborted, finished, or lost with a restart: the sender times out.
                };
                let Some(chunk) =
                    unframe(&wire, FrameType::SnapshotChunk).and_then(|p| SnapshotChunk::decode(p).ok())
                else {
                    return self.reject_transfer(to, from, id, Reject::Undecodable);
                };
                if chunk.offset < t.body.offset() {
                    return Ok(()); // A duplicate segment: TCP drops it.
                }
                match t.body.chunk(&chunk) {
                    Ok(()) => {}
                    Err(BodyError::Gap { .. }) => return self.reject_transfer(to, from, id, Reject::Gap),
                    Err(BodyError::ChunkCrc { .. }) => {
                        return self.reject_transfer(to, from, id, Reject::ChunkCrc);
                    }
                    Err(_) => return self.reject_transfer(to, from, id, Reject::Truncated),
                }
                t.buf.extend_from_slice(&chunk.data);
                let next = t.body.offset();
                self.send_frame(to, from, SnapFrame::Credit { id, next });
                Ok(())
            }
            SnapFrame::End { id, wire } => {
                let end = unframe(&wire, FrameType::SnapshotEnd).and_then(|p| SnapshotEnd::decode(p).ok());
                match end {
                    Some(end) => self.finish_transfer(to, from, id, end),
                    None => self.reject_transfer(to, from, id, Reject::Undecodable),
                }
            }
            SnapFrame::Credit { id, next } => {
                let Some(live) = self.nodes[to].live.as_mut() else { return Ok(()) };
                let Some(t) = live.outgoing.iter_mut().find(|t| t.id == id) else { return Ok(()) };
                if next > t.acked && next <= t.next {
                    t.acked = next;
                    self.pump(to, id)?;
                }
                Ok(())
            }
            SnapFrame::Ack { id, wire } => {
                let ok = unframe(&wire, FrameType::SnapshotAck)
                    .and_then(|p| SnapshotAck::decode(p).ok())
                    .is_some_and(|a| a.ok);
                let Some(live) = self.nodes[to].live.as_mut() else { return Ok(()) };
                let Some(pos) = live.outgoing.iter().position(|t| t.id == id) else { return Ok(()) };
                let t = live.outgoing.remove(pos);
                let peer = NodeId(t.to as u64 + 1);
                live.raft.report_snapshot(peer, ok);
                if ok {
                    self.stats.snapshots_delivered += 1;
                } else {
                    self.stats.snapshots_failed += 1;
                }
                self.drive(to)
            }
        }
    }

    /// The receiver `n` rejects transfer `id` from `from`: drops what it assembled (its state
    /// is untouched) and tells the sender.
    fn reject_transfer(&mut self, n: usize, from: usize, id: u64, why: Reject) -> Result<(), Violation> {
        if let Some(live) = self.nodes[n].live.as_mut() {
            live.incoming.retain(|t| t.id != id);
        }
        match why {
            Reject::ChunkCrc | Reject::BodyCrc | Reject::Undecodable => {
                self.stats.snapshots_rejected_crc += 1
            }
            Reject::Gap | Reject::Truncated => self.stats.snapshots_rejected_gap += 1,
            Reject::StaleTerm => self.stats.snapshots_rejected_stale += 1,
            Reject::TooLarge => {}
        }
        self.record(TraceEvent::SnapshotRejected {
            node: n as u64 + 1,
            from: from as u64 + 1,
            id,
            reason: why.reason(),
        });
        let mut wire = BytesMut::new();
        SnapshotAck { ok: false, reason: why.reason().to_string() }.encode(&mut wire);
        self.send_frame(n, from, SnapFrame::Ack { id, wire: wire.freeze() });
        Ok(())
    }

    /// End of transfer `id` at node `n`: check length and whole-body CRC, decode, and only then
    /// hand the InstallSnapshot message to the core.
    fn finish_transfer(&mut self, n: usize, from: usize, id: u64, end: SnapshotEnd) -> Result<(), Violation> {
        let now = self.now;
        let Some(live) = self.nodes[n].live.as_mut() else { return Ok(()) };
        let Some(pos) = live.incoming.iter().position(|t| t.id == id && t.from == from) else {
            return Ok(());
        };
        let t = &live.incoming[pos];
        match t.body.end(&end) {
            Ok(_) => {}
            Err(BodyError::BodyCrc { .. }) => return self.reject_transfer(n, from, id, Reject::BodyCrc),
            Err(_) => return self.reject_transfer(n, from, id, Reject::Truncated),
        }
        let body = match Body::decode(&t.buf) {
            Ok(b) => b,
            Err(_) => return self.reject_transfer(n, from, id, Reject::Undecodable),
        };
        let t = live.incoming.remove(pos);
        let matches = matches!(&t.msg.body, MessageBody::InstallSnapshot { meta } if *meta == body.meta);
        if !matches || body.applied != body.meta.index.0 {
            return Err(violation(
                now,
                "snapshot",
                format!("transfer {id} carries a body that differs from its metadata"),
            ));
        }
        let data = Arc::new(SnapData {
            meta: body.meta,
            sm: StateMachine {
                applied: body.applied,
                digest: body.digest,
                commands: body.commands,
                values: body.values,
            },
            chain: body.chain,
        });
        live.staged.push(data);
        if live.staged.len() > 4 {
            live.staged.remove(0);
        }
        let m = t.msg;
        self.stats.messages_delivered += 1;
        self.record(TraceEvent::Deliver { from: m.from.0, to: m.to.0, kind: m.body.name(), term: m.term.0 });
        self.trace.note(self.now, || describe(&m.body));
        self.step(n, m)?;
        let mut wire = BytesMut::new();
        SnapshotAck { ok: true, reason: String::new() }.encode(&mut wire);
        self.send_frame(n, from, SnapFrame::Ack { id, wire: wire.freeze() });
        self.drive(n)
    }

    /// A transfer that made no confirmed progress for a whole timeout fails.
    fn snap_timer(&mut self, n: usize, inc: u64, id: u64) -> Result<(), Violation> {
        if self.nodes[n].inc != inc {
            return Ok(());
        }
        let Some(live) = self.nodes[n].live.as_mut() else { return Ok(()) };
        let Some(pos) = live.outgoing.iter().position(|t| t.id == id) else { return Ok(()) };
        let t = &mut live.outgoing[pos];
        if t.acked > t.progress_mark {
            t.progress_mark = t.acked;
            let at = self.now + self.params.snapshot_timeout_us;
            self.schedule(at, Event::SnapTimer { node: n, inc, id });
            return Ok(());
        }
        let t = live.outgoing.remove(pos);
        live.raft.report_snapshot(NodeId(t.to as u64 + 1), false);
        self.stats.snapshots_failed += 1;
        self.record(TraceEvent::SnapshotRejected {
            node: t.to as u64 + 1,
            from: n as u64 + 1,
            id,
            reason: "sender timed out",
        });
        self.drive(n)
    }

    fn partition(&mut self) {
        let n = self.nodes.len();
        let mut kinds = Vec::new();
        if self.params.split_partitions {
            kinds.push(0);
        }
        if self.params.isolate_leader {
            kinds.push(1);
        }
        if self.params.asymmetric_partitions {
            kinds.push(2);
        }
        if kinds.is_empty() {
            kinds.push(0);
        }
        self.blocked.clear();
        match self.rng.pick(&kinds) {
            0 => {
                // Two sides of random sizes.
                let side: Vec<bool> = (0..n).map(|_| self.rng.chance(500_000)).collect();
                for a in 0..n {
                    for b in 0..n {
                        if side[a] != side[b] {
                            self.blocked.insert((a, b));
                        }
                    }
                }
            }
            1 => {
                // Isolate the leader of the highest term (or anyone, if there is none).
                let leader = (0..n)
                    .filter_map(|i| {
                        let l = self.nodes[i].live.as_ref()?;
                        (l.raft.role() == Role::Leader).then_some((l.raft.term(), i))
                    })
                    .max()
                    .map(|(_, i)| i);
                let x = leader.unwrap_or_else(|| self.rng.below(n as u64) as usize);
                for o in (0..n).filter(|o| *o != x) {
                    self.blocked.insert((x, o));
                    self.blocked.insert((o, x));
                }
            }
            _ => {
                // One-way faults: a node that cannot send, or cannot receive, or random links.
                let x = self.rng.below(n as u64) as usize;
                match self.rng.below(3) {
                    0 => (0..n).filter(|o| *o != x).for_each(|o| {
                        self.blocked.insert((x, o));
                    }),
                    1 => (0..n).filter(|o| *o != x).for_each(|o| {
                        self.blocked.insert((o, x));
                    }),
                    _ => {
                        for a in 0..n {
                            for b in 0..n {
                                if a != b && self.rng.chance(300_000) {
                                    self.blocked.insert((a, b));
                                }
                            }
                        }
                    }
                }
            }
        }
        self.stats.partitions += 1;
        let blocked = self.blocked.iter().map(|(a, b)| (*a as u64 + 1, *b as u64 + 1)).collect();
        self.record(TraceEvent::Partition { blocked });
        let at = self.now + self.rng.between(self.params.partition_us.0, self.params.partition_us.1);
        self.schedule(at, Event::Heal);
    }

    fn liveness_start(&mut self) -> Result<(), Violation> {
        self.phase = Phase::Liveness;
        self.heal_at = Some(self.now);
        self.blocked.clear();
        self.record(TraceEvent::LivenessPhase);
        let p = &mut self.params;
        p.loss_ppm = 0;
        p.duplicate_ppm = 0;
        p.long_delay_ppm = 0;
        p.crash_in_persist_ppm = 0;
        p.delay_us = (p.delay_us.0.min(5 * MS), p.delay_us.1.min(20 * MS));
        for n in 0..self.nodes.len() {
            if self.nodes[n].live.is_none() {
                self.start_node(n)?;
            }
        }
        Ok(())
    }

    // ----- clients -----

    fn wake_client(&mut self, c: usize, at: u64) {
        self.clients[c].generation += 1;
        let generation = self.clients[c].generation;
        self.schedule(at, Event::ClientWake { client: c, generation });
    }

    /// Clients waiting on node `n` for an index up to `upto` can no longer learn the outcome
    /// there: it is unknown, and they move on to a new command.
    fn forget_pending(&mut self, n: usize, upto: u64, reason: &'static str) {
        for c in 0..self.clients.len() {
            let Some(p) = &self.clients[c].pending else { continue };
            if p.node == n && p.index <= upto {
                let attempt = p.attempt;
                self.clients[c].pending = None;
                self.record(TraceEvent::Unknown { client: c as u64, attempt, reason });
                let at = self.now + self.rng.between(MS, 10 * MS);
                self.wake_client(c, at);
            }
        }
    }

    fn client_wake(&mut self, c: usize) -> Result<(), Violation> {
        if let Some(r) = &self.clients[c].read {
            if self.now < r.deadline {
                let at = r.deadline;
                self.wake_client(c, at);
                return Ok(());
            }
            let node = r.node as u64 + 1;
            self.clients[c].read = None;
            self.stats.reads_failed += 1;
            self.record(TraceEvent::ReadFailed { client: c as u64, node, reason: "timed out" });
        }
        if let Some(p) = &self.clients[c].pending {
            if self.now >= p.deadline {
                let attempt = p.attempt;
                self.clients[c].pending = None;
                self.record(TraceEvent::Unknown { client: c as u64, attempt, reason: "timed out" });
            } else {
                let at = p.deadline;
                self.wake_client(c, at);
                return Ok(());
            }
        }
        let n = self.nodes.len() as u64;
        let mut target = self.clients[c].target;
        if self.nodes[target].live.is_none() {
            target = self.rng.below(n) as usize;
            self.clients[c].target = target;
        }
        if self.nodes[target].live.is_some() && self.nodes[target].paused_until > self.now {
            // The member is frozen: the request waits in its socket.
            let at = self.nodes[target].paused_until;
            self.wake_client(c, at);
            return Ok(());
        }
        if self.rng.chance(self.params.read_ppm) {
            // Many reads go to a random member, so followers forward them to the leader.
            let member = if self.rng.chance(self.params.read_anywhere_ppm) {
                self.rng.below(n) as usize
            } else {
                target
            };
            if self.nodes[member].live.is_some() && self.nodes[member].paused_until <= self.now {
                return self.client_read(c, member);
            }
        }
        let inc = self.nodes[target].inc;
        let Some(live) = self.nodes[target].live.as_mut() else {
            let at = self.now + self.rng.between(MS, 20 * MS);
            self.wake_client(c, at);
            return Ok(());
        };
        let attempt = ((c as u64 + 1) << 48) | (self.clients[c].counter + 1);
        let result = live.raft.propose(Bytes::copy_from_slice(&attempt.to_le_bytes()));
        let node = live.raft.id().0;
        let outcome = match &result {
            Ok((term, index)) => format!("accepted at {index}@{term}"),
            Err(e) => e.to_string(),
        };
        self.record(TraceEvent::Propose { client: c as u64, node, attempt, outcome });
        match result {
            Ok((term, index)) => {
                self.stats.proposals += 1;
                let client = &mut self.clients[c];
                client.counter += 1;
                let deadline = self.now + self.params.client_timeout_us;
                client.pending = Some(Pending {
                    attempt,
                    node: target,
                    inc,
                    term,
                    index: index.0,
                    deadline,
                    proposed_at: self.now,
                });
                self.wake_client(c, deadline);
                self.drive(target)
            }
            Err(ProposeError::NotLeader { leader_hint }) => {
                self.clients[c].target = match leader_hint {
                    Some(l) if l.0 >= 1 && l.0 <= n => l.0 as usize - 1,
                    _ => self.rng.below(n) as usize,
                };
                let at = self.now + self.rng.between(MS, 10 * MS);
                self.wake_client(c, at);
                Ok(())
            }
            Err(_) => {
                let at = self.now + self.rng.between(10 * MS, 50 * MS);
                self.wake_client(c, at);
                Ok(())
            }
        }
    }
}

impl Sim {
    // ----- reads -----

    /// Client `c` reads a random register on member `target`: serializable (from the member's
    /// state machine at once) or linearizable (ReadIndex; a follower forwards it to the leader).
    fn client_read(&mut self, c: usize, target: usize) -> Result<(), Violation> {
        let key = self.rng.below(KEYS as u64) as usize;
        let linearizable = !self.rng.chance(self.params.serializable_ppm);
        let min_index = self.checker.acked_index(key);
        let restart_contexts = self.bug(DriverBug::ReadContextRestart);
        let think = self.rng.between(self.params.client_think_us.0, self.params.client_think_us.1);
        let node = &mut self.nodes[target];
        let inc = node.inc;
        let Some(live) = node.live.as_mut() else { return Ok(()) };
        let id = live.raft.id();
        if !linearizable {
            let (value, applied) = (live.sm.values[key], live.sm.applied);
            self.checker.read(id, key, value, min_index, false)?;
            self.stats.reads_serializable += 1;
            self.record(TraceEvent::ReadServed {
                client: c as u64,
                node: id.0,
                key,
                value,
                linearizable: false,
                read_index: 0,
                applied,
            });
            self.wake_client(c, self.now + think);
            return Ok(());
        }
        // Contexts are unique across the member's incarnations (the planted bug restarts them).
        let context = if restart_contexts {
            live.local_contexts += 1;
            live.local_contexts
        } else {
            node.next_context += 1;
            node.next_context - 1
        };
        let Some(live) = node.live.as_mut() else { return Ok(()) };
        match live.raft.read_index(context) {
            Ok(()) => {
                let deadline = self.now + self.params.client_timeout_us;
                self.clients[c].read = Some(ReadOp {
                    node: target,
                    inc,
                    key,
                    linearizable,
                    context,
                    read_index: None,
                    min_index,
                    deadline,
                });
                self.record(TraceEvent::ReadSent { client: c as u64, node: id.0, key, context, min_index });
                self.wake_client(c, deadline);
                self.drive(target)
            }
            Err(e) => {
                self.stats.reads_failed += 1;
                let reason = match e {
                    ReadError::NotLeader { .. } => "no leader known",
                    ReadError::TooManyPending => "too many pending reads",
                    ReadError::DuplicateContext { .. } => "read context already pending",
                };
                self.record(TraceEvent::ReadFailed { client: c as u64, node: id.0, reason });
                self.clients[c].target = self.rng.below(self.nodes.len() as u64) as usize;
                let at = self.now + self.rng.between(MS, 20 * MS);
                self.wake_client(c, at);
                Ok(())
            }
        }
    }

    /// A Ready of member `n` confirmed the read indices `confirmed` and failed `failed`.
    fn reads_confirmed(&mut self, n: usize, confirmed: &[ReadState], failed: &[u64]) {
        let inc = self.nodes[n].inc;
        for rs in confirmed {
            for client in &mut self.clients {
                if let Some(r) = &mut client.read
                    && r.node == n
                    && r.inc == inc
                    && r.context == rs.context
                    && r.read_index.is_none()
                {
                    r.read_index = Some(rs.index.0);
                }
            }
        }
        for context in failed {
            for c in 0..self.clients.len() {
                let hit = self.clients[c]
                    .read
                    .as_ref()
                    .is_some_and(|r| r.node == n && r.inc == inc && r.context == *context);
                if hit {
                    self.clients[c].read = None;
                    self.stats.reads_failed += 1;
                    self.record(TraceEvent::ReadFailed {
                        client: c as u64,
                        node: n as u64 + 1,
                        reason: "read index failed (no leader, or leadership lost)",
                    });
                    self.clients[c].target = self.rng.below(self.nodes.len() as u64) as usize;
                    let at = self.now + self.rng.between(MS, 20 * MS);
                    self.wake_client(c, at);
                }
            }
        }
    }

    /// Serves the confirmed linearizable reads on member `n` whose read index it has applied.
    fn serve_reads(&mut self, n: usize) -> Result<(), Violation> {
        let early = self.bug(DriverBug::ServeReadBeforeApplied);
        let inc = self.nodes[n].inc;
        let Some(live) = self.nodes[n].live.as_ref() else { return Ok(()) };
        let (id, applied) = (live.raft.id(), live.sm.applied);
        for c in 0..self.clients.len() {
            let Some(r) = &self.clients[c].read else { continue };
            let Some(read_index) = r.read_index else { continue };
            if r.node != n || r.inc != inc || !r.linearizable || (applied < read_index && !early) {
                continue;
            }
            let Some(live) = self.nodes[n].live.as_ref() else { return Ok(()) };
            let (key, min_index) = (r.key, r.min_index);
            let value = live.sm.values[key];
            self.checker.read(id, key, value, min_index, true)?;
            self.clients[c].read = None;
            self.stats.reads_linearizable += 1;
            self.record(TraceEvent::ReadServed {
                client: c as u64,
                node: id.0,
                key,
                value,
                linearizable: true,
                read_index,
                applied,
            });
            let at =
                self.now + self.rng.between(self.params.client_think_us.0, self.params.client_think_us.1);
            self.wake_client(c, at);
        }
        Ok(())
    }

    /// Reads waiting on member `n` can no longer be answered there; their clients retry.
    fn forget_reads(&mut self, n: usize, reason: &'static str) {
        for c in 0..self.clients.len() {
            if self.clients[c].read.as_ref().is_some_and(|r| r.node == n) {
                self.clients[c].read = None;
                self.stats.reads_failed += 1;
                self.record(TraceEvent::ReadFailed { client: c as u64, node: n as u64 + 1, reason });
                let at = self.now + self.rng.between(MS, 10 * MS);
                self.wake_client(c, at);
            }
        }
    }
}

/// Makes a persist job durable: snapshot, then entries (discarding a conflicting suffix
/// first), then hard state.
fn write_durable(d: &mut Durable, job: &Job, keep_tail: bool) -> Result<(), String> {
    if let Some(s) = &job.snapshot {
        d.snapshot = Some(s.clone());
        if keep_tail {
            // Planted: compact up to the snapshot, keeping a tail that may conflict with it.
            d.log.retain(|e| e.index > s.meta.index);
        } else {
            d.log.clear();
        }
    }
    if let Some(first) = job.entries.first() {
        let first_index = first.index.0;
        if first_index <= d.snapshot_index() {
            return Err(format!(
                "entries from {first_index} would overwrite the durable snapshot at {}",
                d.snapshot_index()
            ));
        }
        match d.log.first().map(|e| e.index.0) {
            Some(start) if first_index >= start => {
                let keep = (first_index - start) as usize;
                if keep > d.log.len() {
                    return Err(format!(
                        "entries from {first_index} leave a gap after {}",
                        start + d.log.len() as u64 - 1
                    ));
                }
                d.log.truncate(keep);
            }
            Some(_) => d.log.clear(),
            None => {}
        }
        if d.log.is_empty() && first_index != d.snapshot_index() + 1 {
            // The kept tail may have been compacted away entirely; the entries must then
            // follow the snapshot.
            return Err(format!(
                "entries from {first_index} leave a gap after the durable snapshot at {}",
                d.snapshot_index()
            ));
        }
        d.log.extend(job.entries.iter().cloned());
    }
    if let Some(hs) = job.hard_state {
        d.hard_state = hs;
    }
    Ok(())
}

/// A message body in a trace line: the fields, with entries shortened to `index@term`.
fn describe(body: &MessageBody) -> String {
    match body {
        MessageBody::AppendEntries { prev_log_index, prev_log_term, entries, leader_commit } => {
            let list = match (entries.first(), entries.last()) {
                (Some(f), Some(l)) if entries.len() > 1 => {
                    format!("{}@{}..{}@{} ({} entries)", f.index, f.term, l.index, l.term, entries.len())
                }
                (Some(f), _) => format!("{}@{}", f.index, f.term),
                _ => "none".into(),
            };
            format!("prev={prev_log_index}@{prev_log_term} entries={list} commit={leader_commit}")
        }
        other => format!("{other:?}"),
    }
}
