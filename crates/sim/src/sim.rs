//! One simulated cluster, driven by one seed in virtual time: members, a network, clients and
//! a fault schedule.
//!
//! Each member is the runtime the server ships (`raftkv-node`): its `Driver` (the core, the
//! batching of proposals and reads, forwarding, the ordering contract), its `DiskWorker`
//! writing the real `FileLogStore` and snapshot files, its `Applier` and `recover`, all on
//! the member's own `SimFs`. The simulator plays the part of the tokio shell: it carries out
//! the driver's actions when its scheduler decides. A disk job completes after a disk latency
//! (jobs of a member complete in order, each written by the `DiskWorker` then); only then do
//! its `after_persist` messages leave and is `persisted` reported. Committed entries are
//! applied when the driver hands them out; a snapshot is written some time after the
//! `Applier` finds one due. A crash drops every component and whatever the file system had
//! not synced (maybe tearing the write in progress); a restart is `Storage::open` and
//! `recover` from the files alone.

use std::cmp::Ordering;
use std::collections::{BTreeMap, BTreeSet, BinaryHeap, VecDeque};
use std::io::Cursor;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use raftkv_node::{
    Action, Applier, DiskJob, DiskWorker, Driver, DriverBug, Inbound, NodeConfig, NodeError, ReadWaiter,
    StateMachine, codec, recover_with, write_snapshot,
};
use raftkv_raft::{
    ClusterConfig, CompactionPolicy, ConfChange, ConfChangeStep, Config, Entry, EntryKind, HardState,
    LogIndex, Message, MessageBody, NodeId, PlantedBug, Role, SnapshotMeta, Term,
};
use raftkv_storage::{
    CrashMode, FileLogStore, LogOptions, LogStore, NodeIds, Recovered, SimFs, SnapshotStore, Storage,
};
use raftkv_transport::codec::{FrameType, SnapshotAck, SnapshotBegin, SnapshotChunk, SnapshotEnd};
use raftkv_transport::{BodyError, BodyReceiver};

use crate::check::{Checker, Mirror, Violation, entry_hash};
use crate::machine::{KEYS, MAX_BODY_BYTES, SimMachine};
use crate::params::{MS, MemberAction, Params, Profile, SEC as SECOND, TICK_US};
use crate::rng::{Rng, mix64};
use crate::snapstream::{Incoming, MAX_FRAME_BYTES, Outgoing, Reject, SnapFrame, unframe};
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
    /// A known bug to plant in every member's runtime (see [`DriverBug`]). Takes effect
    /// only when this crate is built with the `planted-bugs` feature.
    pub driver_bug: Option<DriverBug>,
    /// Members apply commands to the server's key-value state machine
    /// (`raftkv_kvsm::KvMachine`) instead of the registers alone.
    pub kv_store: bool,
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
    /// Restarts refused by storage because a read returned a flipped bit (retried later).
    pub corrupt_reads_refused: u64,
    /// Membership: changes proposed to a leader and accepted by it, fresh members started,
    /// members stopped for good after their removal, leadership transfers asked for, and
    /// stray `TimeoutNow` messages sent.
    pub changes_proposed: u64,
    pub changes_accepted: u64,
    pub members_added: u64,
    pub members_stopped: u64,
    pub transfers: u64,
    pub stray_timeout_nows: u64,
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
        self.corrupt_reads_refused += o.corrupt_reads_refused;
        self.changes_proposed += o.changes_proposed;
        self.changes_accepted += o.changes_accepted;
        self.members_added += o.members_added;
        self.members_stopped += o.members_stopped;
        self.transfers += o.transfers;
        self.stray_timeout_nows += o.stray_timeout_nows;
    }

    /// The membership counters as one summary line.
    pub fn membership_summary(&self) -> String {
        format!(
            "membership: {} changes proposed, {} accepted; {} members added, {} stopped after removal; {} transfers, {} stray TimeoutNow",
            self.changes_proposed,
            self.changes_accepted,
            self.members_added,
            self.members_stopped,
            self.transfers,
            self.stray_timeout_nows,
        )
    }

    /// The read and wider-fault counters as one summary line.
    pub fn fault_summary(&self) -> String {
        format!(
            "reads: {} linearizable, {} serializable, {} failed and retried; faults: {} pauses, {} write/fsync errors, {} torn writes, {} unreachable reports, {} restarts refused on a corrupt read",
            self.reads_linearizable,
            self.reads_serializable,
            self.reads_failed,
            self.pauses,
            self.fsync_errors,
            self.torn_writes,
            self.unreachable_reports,
            self.corrupt_reads_refused,
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

/// Where each member keeps its files on its own file system.
const MEMBER_DIR: &str = "/member";
const CLUSTER_ID: u64 = 0x0053_494D;

/// A linearizable read waiting in a member's driver: the client and its read's serial.
pub struct ReadToken {
    client: usize,
    serial: u64,
}

impl ReadWaiter for ReadToken {}

/// A disk job handed out by a member's driver, waiting for its completion event.
struct QueuedJob {
    id: u64,
    job: DiskJob,
    /// The job's write or fsync fails (an injected fault).
    failed: bool,
    /// Entries `(index, term, chain)` of a leader whose term was not yet on its disk: the
    /// Log Matching table learns them once the job is durable (until then no peer can have
    /// seen them, and a crash may let the leader win the same term again with others).
    deferred: Vec<(u64, Term, u64)>,
}

/// A running member: the runtime's components and what the shell keeps around them.
struct Live {
    driver: Driver<ReadToken>,
    disk: DiskWorker<FileLogStore>,
    applier: Applier,
    sm: SimMachine,
    snapshots: SnapshotStore,
    /// Disk jobs handed out and not yet written, in order.
    jobs: VecDeque<QueuedJob>,
    disk_free_at: u64,
    /// The newest hard state handed to the disk (its term and vote decide whether the next
    /// one needs a sync).
    queued_hs: HardState,
    /// A snapshot due and being written: the state pinned for it and its meta.
    snapshotting: Option<(<SimMachine as StateMachine>::Pin, SnapshotMeta)>,
    mirror: Mirror,
    /// Snapshot transfers this node sends (at most one per peer) and receives (at most one
    /// per peer), and per peer the highest transfer id seen (older Begins are duplicates).
    outgoing: Vec<Outgoing>,
    incoming: Vec<Incoming>,
    seen_transfers: Vec<u64>,
    /// The term this node was last seen leading in, if it leads now.
    leader_term: Option<Term>,
    last_commit: u64,
    /// The configuration entries of the member's log (index, resulting configuration) and
    /// the configuration at its base: the configuration in force is the last one, as the
    /// simulator reads it from the log (independently of the core).
    configs: Vec<(u64, ClusterConfig)>,
    base_config: ClusterConfig,
    /// The member applied (or restored) a configuration without itself: it stops for good
    /// after this step.
    removed: bool,
    /// The peers whose transport refused this member as removed (they applied its removal).
    refused_by: BTreeSet<usize>,
}

/// Where a member slot stands in the cluster's membership.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Slot {
    /// Never started: a fresh id the nemesis may add.
    Spare,
    /// Started at least once; restarted after a crash.
    Member,
    /// Removed from the cluster and stopped for good.
    Removed,
}

struct Node {
    id: NodeId,
    /// Incarnation: bumped at each crash so timers of a dead incarnation are ignored.
    inc: u64,
    /// The member's disk: survives crashes (minus what was not synced).
    fs: SimFs,
    /// Whether its storage was created (the first start creates it, later ones open it).
    created: bool,
    live: Option<Live>,
    /// The member is frozen (a process pause) until this time.
    paused_until: u64,
    /// This member's tick interval: `TICK_US` scaled by its clock drift.
    tick_us: u64,
    slot: Slot,
    /// The voters a member added during the run was started with (as an operator lists
    /// the cluster's members for a joining member); empty for the initial members.
    join_voters: Vec<NodeId>,
    /// The member's log as its disk holds it (completed persist jobs; what recovery
    /// finds): the quorum checker counts a copy only when it is durable.
    durable: Mirror,
}

/// A command a client waits for: it completes when the member it was sent to applies it.
struct Pending {
    attempt: u64,
    node: usize,
    inc: u64,
    deadline: u64,
    proposed_at: u64,
}

/// A read a client is waiting for.
struct ReadOp {
    node: usize,
    inc: u64,
    key: usize,
    serial: u64,
    /// The read index the driver confirmed, once it did.
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
    /// A step of the membership nemesis: periodic, or at once on a new leader.
    Membership {
        periodic: bool,
        leader: Option<(usize, u64)>,
    },
    /// The second half of a sequential replacement: a fresh voter is added.
    MemberAdd,
    /// The operator checks that a member it started joined the cluster.
    JoinCheck {
        node: usize,
    },
    /// The snapshot a member started writing is written.
    SnapshotWritten {
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
    /// Time past `liveness_deadline_us` the liveness check allows for replaying the log to
    /// the voters a quorum needs, when snapshots are off (see `replay_allowance_us`).
    replay_allowance_us: u64,
    liveness_ok: Option<u64>,
    next_job: u64,
    next_transfer: u64,
    next_read: u64,
    stats: Stats,
    /// Every applied configuration entry (first application): index -> configuration.
    config_log: BTreeMap<u64, ClusterConfig>,
    /// Member slots removed by an applied change: the index of the change and the highest
    /// term any live member had when it was first applied (no later term may be led by it).
    removed_at: BTreeMap<usize, (u64, u64)>,
    next_change: u64,
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

/// Virtual time as the runtime's components take it.
fn at(us: u64) -> Duration {
    Duration::from_micros(us)
}

fn log_options() -> LogOptions {
    // Small segments: rollover and whole-segment compaction happen within a run.
    LogOptions { segment_size: 16 << 10, preallocate: 0, ..LogOptions::default() }
}

impl Sim {
    pub fn new(seed: u64, options: SimOptions) -> Sim {
        let params = Params::draw(seed, options.profile);
        let mut drift = Rng::new(mix64(seed ^ 0xD81F_7C10_C4A5_0001));
        let nodes = (0..params.nodes + params.spare_nodes)
            .map(|i| {
                // A clock that runs fast or slow by up to `drift_ppm`.
                let ppm = drift.between(0, 2 * params.drift_ppm);
                let tick_us = TICK_US * (1_000_000 - params.drift_ppm + ppm) / 1_000_000;
                Node {
                    id: NodeId(i as u64 + 1),
                    inc: 0,
                    fs: SimFs::new(),
                    created: false,
                    live: None,
                    paused_until: 0,
                    tick_us: tick_us.max(1),
                    slot: Slot::Spare,
                    join_voters: Vec::new(),
                    durable: Mirror::default(),
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
            replay_allowance_us: 0,
            liveness_ok: None,
            next_job: 0,
            next_transfer: 0,
            next_read: 0,
            stats: Stats::default(),
            config_log: BTreeMap::new(),
            removed_at: BTreeMap::new(),
            next_change: 0,
        }
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
        for n in 0..self.params.nodes {
            self.nodes[n].slot = Slot::Member;
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
        if self.params.membership_mean_us > 0 {
            let at = self.rng.exp(self.params.membership_mean_us);
            self.schedule(at, Event::Membership { periodic: true, leader: None });
        }
        Ok(())
    }

    fn event_loop(&mut self, panic: &mut Option<String>) -> Option<Violation> {
        while let Some(Scheduled { time, event, .. }) = self.queue.pop() {
            self.now = time;
            self.checker.now = time;
            if let Some(heal) = self.heal_at {
                match self.liveness_ok {
                    Some(_) if time >= self.params.min_run_us => return self.final_membership().err(),
                    None if time > heal + self.params.liveness_deadline_us + self.replay_allowance_us => {
                        return Some(violation(
                            time,
                            "liveness",
                            format!(
                                "no command proposed after the faults stopped (at {} ms) committed within {} ms{}",
                                heal / 1000,
                                self.params.liveness_deadline_us / 1000,
                                if self.replay_allowance_us > 0 {
                                    format!(
                                        " (+{} ms to replay the log to a quorum)",
                                        self.replay_allowance_us / 1000
                                    )
                                } else {
                                    String::new()
                                }
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
            | Event::SnapshotWritten { node, .. } => Some(*node),
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
                if self.nodes[node].live.is_some() {
                    let at = self.now + self.nodes[node].tick_us;
                    self.schedule(at, Event::Tick { node, inc });
                    self.input(node, |d, now, out| d.tick(now, out))?;
                }
                Ok(())
            }
            Event::Deliver { msg, from_inc } => self.deliver(msg, from_inc),
            Event::Snap { from, to, from_inc, frame } => self.snap_frame(from, to, from_inc, frame),
            Event::SnapTimer { node, inc, id } => self.snap_timer(node, inc, id),
            Event::LagCrash => {
                // A follower goes down for long while the others commit and compact.
                let down = self.down_count();
                let candidates: Vec<usize> = (0..self.nodes.len())
                    .filter(|i| {
                        self.nodes[*i].live.as_ref().is_some_and(|l| l.driver.raft().role() != Role::Leader)
                    })
                    .collect();
                if self.phase == Phase::Faults && down < self.params.max_down && !candidates.is_empty() {
                    let n = self.rng.pick(&candidates);
                    self.crash_for(n, self.params.lag_downtime_us, true);
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
                let mut node = self.pick_member();
                if self.rng.chance(self.params.leader_crash_ppm)
                    && let Some(leader) = self.live_leader()
                {
                    node = leader;
                }
                let down = self.down_count();
                if down < self.params.max_down && self.nodes[node].live.is_some() {
                    self.crash(node);
                }
                let at = self.now + self.rng.exp(self.params.crash_mean_us);
                self.schedule(at, Event::CrashRandom);
                Ok(())
            }
            Event::Restart { node } => {
                if self.nodes[node].live.is_none() && self.nodes[node].slot == Slot::Member {
                    if self.removed_at.contains_key(&node) {
                        // Removed while it was down: the operator does not start it again.
                        self.nodes[node].slot = Slot::Removed;
                        let what = "removed while down: not restarted".to_string();
                        self.record(TraceEvent::Member { node: node as u64 + 1, what });
                    } else {
                        self.start_node(node)?;
                    }
                }
                Ok(())
            }
            Event::Membership { periodic, leader } => {
                if self.phase != Phase::Faults {
                    return Ok(());
                }
                self.nemesis_step(leader)?;
                if periodic {
                    let at = self.now + self.rng.exp(self.params.membership_mean_us);
                    self.schedule(at, Event::Membership { periodic: true, leader: None });
                }
                Ok(())
            }
            Event::JoinCheck { node } => self.join_check(node),
            Event::MemberAdd => {
                if self.phase == Phase::Faults
                    && let Some(l) = self.change_leader(None)
                {
                    self.add_member(l, true)?;
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
            Event::SnapshotWritten { node, inc } => self.snapshot_written(node, inc),
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

    // ----- members -----

    /// The live node leading the highest term, if any.
    fn live_leader(&self) -> Option<usize> {
        (0..self.nodes.len())
            .filter_map(|i| {
                let r = self.nodes[i].live.as_ref()?.driver.raft();
                (r.role() == Role::Leader).then_some((r.term(), i))
            })
            .max()
            .map(|(_, i)| i)
    }

    /// The core's settings of node `n` for this run.
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

    /// The runtime's settings of node `n`: the run's snapshot policy (the `Applier` takes a
    /// snapshot every `snapshot_every_entries`, paced by the log against the snapshot's size).
    fn node_config(&self, n: usize, raft: &Config) -> NodeConfig {
        let voters: Vec<NodeId> = if n < self.params.nodes {
            self.nodes[..self.params.nodes].iter().map(|x| x.id).collect()
        } else {
            self.nodes[n].join_voters.clone()
        };
        let mut c = NodeConfig::new(self.nodes[n].id, voters);
        c.tick = at(TICK_US);
        c.election_ticks = raft.election_timeout_ticks;
        c.heartbeat_ticks = raft.heartbeat_interval_ticks;
        c.seed = raft.seed;
        let CompactionPolicy { snapshot_every_entries, keep_entries_behind, .. } = self.params.compaction;
        c.snapshot_count =
            if self.params.snapshot_mean_us == 0 { u64::MAX } else { snapshot_every_entries.max(1) };
        c.snapshot_keep_entries = keep_entries_behind;
        c.request_queue = 1024;
        c
    }

    /// Boots node `n`: creates its storage the first time, later opens what its disk holds
    /// and recovers from it alone.
    fn start_node(&mut self, n: usize) -> Result<(), Violation> {
        let now = self.now;
        let raft_config = self.raft_config(n);
        let config = self.node_config(n, &raft_config);
        let corrupt =
            self.phase == Phase::Faults && self.nodes[n].created && self.params.corrupt_read_ppm > 0;
        let corrupted_before = self.nodes[n].fs.reads_corrupted();
        if corrupt {
            let seed = self.rng.next_u64();
            self.nodes[n].fs.corrupt_reads(seed, self.params.corrupt_read_ppm);
        }
        let started = self.open_and_recover(n, raft_config, config);
        let node = &self.nodes[n];
        node.fs.corrupt_reads(0, 0);
        match started {
            Ok(live) => self.started(n, *live),
            Err(v) if node.fs.reads_corrupted() > corrupted_before => {
                // Storage refused damage it could not prove torn: the operator (here the
                // simulator) restarts the member later; the next reads may be right.
                self.stats.corrupt_reads_refused += 1;
                let id = node.id.0;
                self.record(TraceEvent::RestartRefused { node: id, reason: v.detail });
                let at = now + self.rng.between(MS, 20 * MS);
                self.schedule(at, Event::Restart { node: n });
                Ok(())
            }
            Err(v) => Err(v),
        }
    }

    /// Opens node `n`'s storage (creating it the first time) and recovers the runtime's
    /// components from it.
    fn open_and_recover(
        &mut self,
        n: usize,
        raft_config: Config,
        config: NodeConfig,
    ) -> Result<Box<Live>, Violation> {
        let now = self.now;
        let node = &mut self.nodes[n];
        let id = node.id;
        let fs: Arc<SimFs> = Arc::new(node.fs.clone());
        let ids = NodeIds { cluster_id: CLUSTER_ID, node_id: id.0 };
        let dir = Path::new(MEMBER_DIR);
        let opened = if node.created {
            Storage::open(fs, dir, ids, log_options())
        } else {
            Storage::create(fs, dir, ids, log_options())
                .map(|s| (s, Recovered { first_index: 1, ..Recovered::default() }))
        };
        let (storage, recovered) =
            opened.map_err(|e| violation(now, "restart refused", format!("node {id}: storage: {e}")))?;
        node.created = true;
        let mut sm = SimMachine::new(self.options.kv_store, self.params.snapshot_filler_bytes);
        let (raft, snapshot) = recover_with(&config, raft_config, &storage.snapshots, recovered, &mut sm)
            .map_err(|e| violation(now, "restart refused", format!("node {id}: {e}")))?;
        #[cfg(feature = "planted-bugs")]
        let raft = {
            let mut raft = raft;
            raft.plant_bug(self.options.planted_bug);
            raft
        };
        let applier = Applier::recovered(snapshot.as_ref(), &config);
        // Read contexts start from a stamp that grows from one start to the next, as the
        // server's boot stamp does.
        let initial_config = ClusterConfig::new(config.voters.iter().copied());
        #[allow(unused_mut)]
        let mut driver = Driver::new(raft, config, (now + 1) * 256);
        #[allow(unused_mut)]
        let mut disk = DiskWorker::new(storage.log, storage.snapshots.clone());
        #[cfg(feature = "planted-bugs")]
        {
            driver.plant_bug(self.options.driver_bug);
            disk.plant_bug(self.options.driver_bug);
        }
        // Mirror the recovered log for the checkers.
        let mut mirror = Mirror::default();
        if let Some(s) = &snapshot {
            if sm.regs.applied != s.index.0 {
                return Err(violation(
                    now,
                    "snapshot",
                    format!(
                        "node {id} restored a snapshot holding {} as snapshot {}",
                        sm.regs.applied, s.index
                    ),
                ));
            }
            let chain = self.chain_at(id, s.index.0, s.term)?;
            mirror = Mirror::new(s.index.0, s.term, chain);
        }
        let raft = driver.raft();
        let base_config = snapshot.as_ref().map_or(initial_config, |s| s.config.clone());
        let mut configs: Vec<(u64, ClusterConfig)> = Vec::new();
        for i in raft.first_index().0..=raft.last_index().0 {
            if i <= mirror.base_index {
                continue;
            }
            let Some(e) = raft.log_entry(LogIndex(i)) else {
                return Err(violation(now, "simulator", format!("node {id} recovered no entry {i}")));
            };
            let c = mirror.push(e);
            self.checker.log_entry(id, i, e.term, c)?;
            track_config(&mut configs, &base_config, e);
        }
        self.nodes[n].durable = mirror.clone();
        self.checker.restored(id, sm.regs.applied, sm.digest())?;
        let restart = TraceEvent::Restart {
            node: id.0,
            term: raft.term().0,
            commit: raft.commit_index().0,
            last: raft.last_index().0,
        };
        let queued_hs = codec::hard_state_from_storage(&disk.log().hard_state());
        let members = self.nodes.len();
        self.record(restart);
        Ok(Box::new(Live {
            driver,
            disk,
            applier,
            sm,
            snapshots: storage.snapshots,
            jobs: VecDeque::new(),
            disk_free_at: now,
            queued_hs,
            snapshotting: None,
            last_commit: mirror.base_index,
            mirror,
            outgoing: Vec::new(),
            incoming: Vec::new(),
            seen_transfers: vec![0; members],
            leader_term: None,
            configs,
            base_config,
            removed: false,
            refused_by: BTreeSet::new(),
        }))
    }

    /// Node `n` runs `live`.
    fn started(&mut self, n: usize, live: Live) -> Result<(), Violation> {
        let inc = self.nodes[n].inc;
        self.nodes[n].live = Some(live);
        self.nodes[n].paused_until = 0;
        let at = self.now + self.rng.between(1, TICK_US);
        self.schedule(at, Event::Tick { node: n, inc });
        self.drive(n)
    }

    /// The chain hash the checkers recorded for `(index, term)`: a snapshot's base.
    fn chain_at(&self, id: NodeId, index: u64, term: Term) -> Result<u64, Violation> {
        self.checker.chain_at(index, term).ok_or_else(|| {
            violation(
                self.now,
                "snapshot",
                format!("node {id} holds a snapshot at {index}@{term}, an entry no member's log ever held"),
            )
        })
    }

    fn crash(&mut self, n: usize) {
        let downtime = self.rng.between(self.params.downtime_us.0, self.params.downtime_us.1);
        self.crash_for(n, downtime, true);
    }

    /// Node `n` stops on a failed disk job. Its disk worker wrote nothing after the failure
    /// (the server's disk thread returns at the error), so none of the jobs queued behind
    /// it reaches the disk, not even in part.
    fn stop_on_disk_error(&mut self, n: usize) {
        let downtime = self.rng.between(self.params.downtime_us.0, self.params.downtime_us.1);
        self.crash_for(n, downtime, false);
    }

    /// Node `n` loses power: with the seed's chances (when `pending_may_land`), the disk got
    /// a prefix of the pending jobs out first (nobody heard of it), and the next one is cut
    /// in the middle of its write (the file system keeps a random prefix of what it wrote,
    /// the last record possibly torn). Whatever was not synced is lost.
    fn crash_for(&mut self, n: usize, downtime: u64, pending_may_land: bool) {
        let Some(mut live) = self.nodes[n].live.take() else { return };
        let total = live.jobs.len();
        let kept = if pending_may_land && self.params.crash_keeps_prefix {
            self.rng.between(0, total as u64) as usize
        } else {
            0
        };
        let fs = self.nodes[n].fs.clone();
        let mut written = 0;
        for mut job in live.jobs.drain(..kept) {
            let mut installed = Vec::new();
            if live.disk.write(std::slice::from_mut(&mut job.job), &mut |m| installed.push(m)).is_err() {
                break;
            }
            apply_durable(&mut self.nodes[n].durable, &installed, &job.job, &self.checker);
            written += 1;
        }
        let mut mode = CrashMode::LoseUnsynced;
        if pending_may_land
            && written == kept
            && let Some(mut job) = live.jobs.pop_front()
            && self.rng.chance(self.params.torn_write_ppm)
        {
            // The power goes before the job's sync: its writes are in flight.
            fs.crash_before_op(fs.op_count() + 2);
            let _ = live.disk.write(std::slice::from_mut(&mut job.job), &mut |_| {});
            if fs.has_crashed() {
                mode = CrashMode::Torn { seed: self.rng.next_u64() };
                self.stats.torn_writes += 1;
                let id = self.nodes[n].id.0;
                self.record(TraceEvent::Torn { node: id, job: job.id });
            }
        }
        drop(live);
        fs.crash(mode);
        self.nodes[n].paused_until = 0;
        self.nodes[n].inc += 1;
        self.stats.crashes += 1;
        let id = self.nodes[n].id.0;
        self.record(TraceEvent::Crash { node: id, jobs_kept: written, jobs_lost: total - written });
        self.forget_pending(n, "node crashed");
        self.forget_reads(n, "node crashed");
        self.schedule(self.now + downtime, Event::Restart { node: n });
    }

    /// An input to node `n`'s driver, then the driver loop.
    fn input(
        &mut self,
        n: usize,
        f: impl FnOnce(&mut Driver<ReadToken>, Duration, &mut Vec<Action<ReadToken>>),
    ) -> Result<(), Violation> {
        let now = at(self.now);
        let Some(live) = self.nodes[n].live.as_mut() else { return Ok(()) };
        let mut out = Vec::new();
        f(&mut live.driver, now, &mut out);
        self.carry_out(n, out)?;
        self.drive(n)
    }

    /// The driver loop of node `n` after an input, as the server's shell runs it: take every
    /// Ready, then housekeeping, carrying out the actions; then the per-step checks.
    fn drive(&mut self, n: usize) -> Result<(), Violation> {
        loop {
            let now = at(self.now);
            let Some(live) = self.nodes[n].live.as_mut() else { return Ok(()) };
            let mut out = Vec::new();
            live.driver.process_ready(now, &mut out).map_err(|e| {
                violation(self.now, "driver", format!("node {}: {e}", live.driver.raft().id()))
            })?;
            let waiting: Vec<u64> = self
                .clients
                .iter()
                .filter_map(|c| c.pending.as_ref().filter(|p| p.node == n).map(|p| p.attempt))
                .collect();
            live.driver.housekeeping(now, |id| waiting.contains(&id), &mut out);
            let more = !out.is_empty();
            self.carry_out(n, out)?;
            self.commit_points(n)?;
            self.serve_reads(n)?;
            let Some(live) = self.nodes[n].live.as_ref() else { return Ok(()) };
            if !more || !live.driver.raft().has_ready() {
                break;
            }
        }
        self.after_step(n)?;
        if self.nodes[n].live.as_ref().is_some_and(|l| l.removed) {
            self.stop_for_good(n, "applied its own removal: stops for good");
        }
        Ok(())
    }

    /// Commit points: everything up to the commit index is committed, with this prefix.
    fn commit_points(&mut self, n: usize) -> Result<(), Violation> {
        let Some(live) = self.nodes[n].live.as_mut() else { return Ok(()) };
        let raft = live.driver.raft();
        let (id, term) = (raft.id(), raft.term());
        // Up to what the checkers have seen of its log so far (the driver's actions of one
        // step are carried out in order; the core's commit index is already the newest).
        let commit = raft.commit_index().0.min(live.mirror.last_index());
        if commit > live.last_commit {
            if raft.role() == Role::Leader
                && let Some((t, c)) = live.mirror.get(commit)
            {
                // The leader's decision: a quorum of the configuration in force in its log
                // (of both, when joint) must hold the entry durably.
                let config = config_in_force(live).clone();
                self.check_commit_quorum(id, term, commit, t, c, &config)?;
            }
            let Some(live) = self.nodes[n].live.as_mut() else { return Ok(()) };
            for i in live.last_commit + 1..=commit {
                if let Some((t, c)) = live.mirror.get(i) {
                    self.checker.committed(id, i, t, c, term)?;
                }
            }
            live.last_commit = commit;
            self.stats.max_commit = self.stats.max_commit.max(commit);
            self.trace.record(self.now, TraceEvent::Commit { node: id.0, index: commit });
        }
        Ok(())
    }

    /// Carries out node `n`'s driver actions, in order.
    fn carry_out(&mut self, n: usize, actions: Vec<Action<ReadToken>>) -> Result<(), Violation> {
        for action in actions {
            match action {
                Action::Send(m) => self.send(n, m)?,
                Action::SendSnapshot(m) => self.start_transfer(n, m)?,
                Action::Disk(job) => self.queue_job(n, job)?,
                Action::Apply(entries) => self.apply_entries(n, &entries)?,
                Action::ReadDone(token, result) => self.read_done(n, token, result),
                Action::Fail(ids, error) => self.requests_failed(n, &ids, &error)?,
                Action::SoftState(ss) => {
                    if ss.role == Role::Leader {
                        self.stats.elections_won += 1;
                    }
                    self.record(TraceEvent::Role {
                        node: n as u64 + 1,
                        role: role_name(ss.role),
                        term: ss.term.0,
                        leader: ss.leader.map_or(0, |l| l.0),
                    });
                }
            }
        }
        Ok(())
    }

    /// A disk job from node `n`'s driver: mirror its log changes for the checkers and queue
    /// it; it completes after the disk's latency (a job that needs no sync only waits for
    /// the ones before it).
    fn queue_job(&mut self, n: usize, job: DiskJob) -> Result<(), Violation> {
        let now = self.now;
        let Some(live) = self.nodes[n].live.as_mut() else { return Ok(()) };
        let raft = live.driver.raft();
        let id = raft.id();
        let leading_same_term = raft.role() == Role::Leader && live.leader_term == Some(raft.term());
        let term_on_disk = codec::hard_state_from_storage(&live.disk.log().hard_state()).term;
        let defer = raft.role() == Role::Leader && term_on_disk < raft.term();
        let mut deferred = Vec::new();
        let must_sync = match &job {
            DiskJob::Persist(p) => {
                if let Some((meta, _)) = &p.snapshot {
                    // Installing a snapshot: the log restarts after it.
                    let chain = self.checker.chain_at(meta.index.0, meta.term).ok_or_else(|| {
                        violation(
                            now,
                            "snapshot",
                            format!(
                                "node {id} installs snapshot {}@{}, an entry no log held",
                                meta.index, meta.term
                            ),
                        )
                    })?;
                    live.mirror = Mirror::new(meta.index.0, meta.term, chain);
                    live.configs.clear();
                    live.base_config = meta.config.clone();
                    live.last_commit = live.last_commit.max(meta.index.0);
                    self.checker.committed(id, meta.index.0, meta.term, chain, raft.term())?;
                }
                if let Some(first) = p.entries.first() {
                    let first_index = first.index.0;
                    let last = live.mirror.last_index();
                    if leading_same_term && first_index <= last {
                        return Err(violation(
                            now,
                            "leader append-only",
                            format!(
                                "leader {id} of term {} rewrites its log from {first_index} (last index was {last})",
                                raft.term()
                            ),
                        ));
                    }
                    if first_index > last + 1
                        || (first_index <= last && !live.mirror.truncate_from(first_index))
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
                    live.configs.retain(|(i, _)| *i < first_index);
                    for e in &p.entries {
                        let c = live.mirror.push(e);
                        if defer {
                            deferred.push((e.index.0, e.term, c));
                        } else {
                            self.checker.log_entry(id, e.index.0, e.term, c)?;
                        }
                        track_config(&mut live.configs, &live.base_config, e);
                    }
                }
                let new_hs = p.hard_state.is_some_and(|hs| hs.needs_sync_after(&live.queued_hs));
                if let Some(hs) = p.hard_state {
                    live.queued_hs = hs;
                }
                p.snapshot.is_some() || !p.entries.is_empty() || new_hs
            }
            DiskJob::Compact(_) => false,
        };
        self.next_job += 1;
        let failed = must_sync && self.phase == Phase::Faults && self.rng.chance(self.params.fsync_error_ppm);
        let latency =
            if must_sync { self.rng.between(self.params.disk_us.0, self.params.disk_us.1) } else { 0 };
        let Some(live) = self.nodes[n].live.as_mut() else { return Ok(()) };
        let done = live.disk_free_at.max(now) + latency;
        live.disk_free_at = done;
        live.jobs.push_back(QueuedJob { id: self.next_job, job, failed, deferred });
        let inc = self.nodes[n].inc;
        let job = self.next_job;
        self.schedule(done, Event::PersistDone { node: n, inc, job });
        if self.phase == Phase::Faults && self.rng.chance(self.params.crash_in_persist_ppm) {
            let at = self.rng.between(now, done.saturating_sub(1).max(now));
            self.schedule(at, Event::Crash { node: n, inc });
        }
        Ok(())
    }

    /// The disk of node `n` completes job `job_id`: the `DiskWorker` writes it (syncing once
    /// if it needs it); then its messages leave and the core hears it is durable.
    fn persist_done(&mut self, n: usize, inc: u64, job_id: u64) -> Result<(), Violation> {
        let now = self.now;
        if self.nodes[n].inc != inc {
            return Ok(());
        }
        let fs = self.nodes[n].fs.clone();
        let Some(live) = self.nodes[n].live.as_mut() else { return Ok(()) };
        let Some(mut job) = live.jobs.pop_front() else {
            return Err(violation(now, "simulator", "persist completion without a job".into()));
        };
        if job.id != job_id {
            return Err(violation(now, "simulator", "persist jobs completed out of order".into()));
        }
        if matches!(&job.job, DiskJob::Persist(p) if p.snapshot.is_some()) && live.snapshotting.is_some() {
            // A snapshot being written lands before an installed one is read (as the
            // server's apply thread waits for its snapshot thread).
            self.finish_snapshot(n)?;
        }
        let Some(live) = self.nodes[n].live.as_mut() else { return Ok(()) };
        if job.failed {
            // Alternately the write or the fsync fails (both poison the log store).
            if job.id % 2 == 0 {
                fs.fail_write(fs.write_count() + 1);
            } else {
                fs.fail_sync(fs.sync_count() + 1);
            }
        }
        let mut installed = Vec::new();
        let written = live.disk.write(std::slice::from_mut(&mut job.job), &mut |meta| installed.push(meta));
        fs.fail_sync(0);
        fs.fail_write(0);
        let id = self.nodes[n].id;
        if job.failed {
            self.stats.fsync_errors += 1;
        }
        if let Err(e) = written {
            if !job.failed {
                return Err(violation(now, "storage", format!("node {id}: disk job {job_id} failed: {e}")));
            }
            // A member that cannot make its log durable stops (etcd panics on a failed
            // fsync): nothing of this job or a later one is acknowledged. It restarts later.
            self.record(TraceEvent::DiskError { node: id.0, job: job_id });
            self.stop_on_disk_error(n);
            return Ok(());
        }
        apply_durable(&mut self.nodes[n].durable, &installed, &job.job, &self.checker);
        for (index, term, chain) in std::mem::take(&mut job.deferred) {
            self.checker.log_entry(id, index, term, chain)?;
        }
        for meta in installed {
            self.restore(n, &meta)?;
        }
        let Some(live) = self.nodes[n].live.as_mut() else { return Ok(()) };
        if live.jobs.is_empty() {
            // With nothing queued, the log store holds exactly the member's log.
            let log = live.disk.log();
            let on_disk = (log.last_index(), log.term(log.last_index()));
            let last = live.mirror.last_index();
            let in_memory = (last, live.mirror.get(last).map(|(t, _)| t.0));
            if on_disk.0 != in_memory.0 || on_disk.1.is_some_and(|t| Some(t) != in_memory.1) {
                return Err(violation(
                    now,
                    "durable log",
                    format!(
                        "node {id} has every persist job done but its log store ends at {}@{:?} while its log ends at {}@{:?}",
                        on_disk.0, on_disk.1, in_memory.0, in_memory.1
                    ),
                ));
            }
        }
        if let DiskJob::Persist(p) = job.job {
            for m in p.after_persist {
                self.send(n, m)?;
            }
            if let Some((index, term)) = p.target {
                if let Some(live) = self.nodes[n].live.as_mut() {
                    live.driver.persisted(index, term);
                }
                self.record(TraceEvent::Persisted { node: id.0, index: index.0, term: term.0 });
            }
        }
        self.drive(n)
    }

    /// Node `n`'s disk installed snapshot `meta`: the `Applier` restores the state machine
    /// from the stored file.
    fn restore(&mut self, n: usize, meta: &SnapshotMeta) -> Result<(), Violation> {
        let now = self.now;
        let Some(live) = self.nodes[n].live.as_mut() else { return Ok(()) };
        let id = live.driver.raft().id();
        live.applier
            .restore(&mut live.sm, &live.snapshots, meta)
            .map_err(|e| violation(now, "snapshot", format!("node {id} cannot restore: {e}")))?;
        if live.sm.regs.applied != meta.index.0 {
            return Err(violation(
                now,
                "snapshot",
                format!(
                    "node {id} restored snapshot {} holding the state at {}",
                    meta.index, live.sm.regs.applied
                ),
            ));
        }
        live.driver.applied(meta.index);
        if !meta.config.contains(id) && self.removed_at.contains_key(&n) {
            // Caught up by a snapshot taken after its own removal.
            live.removed = true;
        }
        self.checker.restored(id, live.sm.regs.applied, live.sm.digest())?;
        self.stats.snapshots_installed += 1;
        self.record(TraceEvent::SnapshotInstalled { node: id.0, index: meta.index.0, term: meta.term.0 });
        self.forget_pending(n, "its node installed a snapshot");
        Ok(())
    }

    /// Applies committed entries on node `n`, one at a time so the checkers see each, and
    /// completes the commands its clients wait for.
    fn apply_entries(&mut self, n: usize, entries: &[Entry]) -> Result<(), Violation> {
        let now = self.now;
        self.commit_points(n)?;
        let inc = self.nodes[n].inc;
        for e in entries {
            let Some(live) = self.nodes[n].live.as_mut() else { return Ok(()) };
            let id = live.driver.raft().id();
            let index = e.index.0;
            if index != live.applier.last().0.0 + 1 {
                return Err(violation(
                    now,
                    "exactly once",
                    format!("node {id} applies {index} after {}: not in order", live.applier.last().0),
                ));
            }
            let in_log = live.mirror.get(index);
            if live.mirror.entry_hash(index) != Some(entry_hash(e)) {
                return Err(violation(
                    now,
                    "state machine safety",
                    format!(
                        "node {id} applies {index}@{} which is not the entry its log holds there",
                        e.term
                    ),
                ));
            }
            if in_log.is_none() || self.checker.committed_at(index) != in_log {
                return Err(violation(
                    now,
                    "state machine safety",
                    format!("node {id} applies {index}@{} which is not the committed entry there", e.term),
                ));
            }
            let mut done = Vec::new();
            let before = (e.kind == EntryKind::ConfigChange).then(|| live.applier.cluster().clone());
            let mut change = None;
            live.applier.apply(&mut live.sm, std::slice::from_ref(e), &mut done);
            live.sm.regs.applied = index;
            let digest = live.sm.digest();
            if let Some(before) = before {
                let after = live.applier.cluster().clone();
                if before.contains(id) && !after.contains(id) {
                    live.removed = true;
                }
                change = Some((before, after));
            }
            self.checker.applied(id, e, digest)?;
            if let Some((before, after)) = change {
                self.config_applied(index, &before, after);
            }
            // Clients waiting on this node for this command learn it committed.
            for (attempt, index) in done {
                let Some(c) = self.clients.iter().position(|c| {
                    c.pending.as_ref().is_some_and(|p| p.attempt == attempt && p.node == n && p.inc == inc)
                }) else {
                    continue;
                };
                let Some(p) = self.clients[c].pending.take() else { continue };
                self.checker.acknowledged(attempt, index)?;
                self.stats.acknowledged += 1;
                self.record(TraceEvent::Ack { client: c as u64, attempt, index, term: e.term.0 });
                if self.liveness_ok.is_none() && self.heal_at.is_some_and(|h| p.proposed_at >= h) {
                    self.liveness_ok = Some(self.now);
                }
                let at =
                    self.now + self.rng.between(self.params.client_think_us.0, self.params.client_think_us.1);
                self.wake_client(c, at);
            }
        }
        let Some(live) = self.nodes[n].live.as_mut() else { return Ok(()) };
        if let Some(last) = entries.last() {
            live.driver.applied(last.index);
        }
        if live.snapshotting.is_none() && live.applier.snapshot_due() {
            // Pin the state; the snapshot is written in the background (the server's snapshot
            // thread) while applying goes on.
            let pin = live.sm.pin();
            let meta = live.applier.begin_snapshot();
            live.snapshotting = Some((pin, meta));
            let at = now + self.rng.between(self.params.disk_us.0, self.params.disk_us.1);
            self.schedule(at, Event::SnapshotWritten { node: n, inc });
        }
        self.serve_reads(n)
    }

    fn snapshot_written(&mut self, n: usize, inc: u64) -> Result<(), Violation> {
        if self.nodes[n].inc != inc || self.nodes[n].live.as_ref().is_none_or(|l| l.snapshotting.is_none()) {
            return Ok(());
        }
        self.finish_snapshot(n)?;
        self.drive(n)
    }

    /// Writes node `n`'s pinned snapshot (durable on return) and tells the driver, which
    /// compacts the log behind it.
    fn finish_snapshot(&mut self, n: usize) -> Result<(), Violation> {
        let now = self.now;
        let Some(live) = self.nodes[n].live.as_mut() else { return Ok(()) };
        let Some((pin, meta)) = live.snapshotting.take() else { return Ok(()) };
        let id = live.driver.raft().id();
        let sm = &live.sm;
        let written = write_snapshot::<SimMachine>(&pin, &live.snapshots, &meta, &mut |f| f(sm));
        if written.is_ok() {
            SimMachine::snapshot_durable(&pin);
        }
        live.sm.unpin(pin);
        let bytes = written
            .map_err(|e| violation(now, "storage", format!("node {id} cannot write a snapshot: {e}")))?;
        live.applier.snapshot_written(bytes);
        let mut out = Vec::new();
        if live.driver.snapshot_taken(meta.index, &mut out) {
            let compact_to = live.driver.raft().first_index().0.saturating_sub(1);
            live.mirror.compact_to(compact_to.min(live.mirror.last_index()));
            self.stats.snapshots_taken += 1;
            self.record(TraceEvent::SnapshotTaken { node: id.0, index: meta.index.0, compact_to });
        }
        self.carry_out(n, out)
    }

    /// Checks that need the node's state after a whole step: Election Safety and, for a new
    /// leader, Leader Completeness.
    fn after_step(&mut self, n: usize) -> Result<(), Violation> {
        let Some(live) = self.nodes[n].live.as_mut() else { return Ok(()) };
        let raft = live.driver.raft();
        if raft.role() == Role::Leader {
            let (id, term) = (raft.id(), raft.term());
            self.checker.leader(term, id)?;
            // A member whose removal committed may still lead once, in the configuration
            // that removes it (to commit it where it alone holds it), but never again in a
            // configuration it votes in.
            if let Some(&(index, max_term)) = self.removed_at.get(&n)
                && term.0 > max_term
                && config_in_force(live).is_voter(id)
            {
                return Err(violation(
                    self.now,
                    "removed member leads",
                    format!(
                        "node {id} leads term {term} as a voter, but its removal was applied at {index} when no member had a term above {max_term}"
                    ),
                ));
            }
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
                if self.phase == Phase::Faults && self.rng.chance(self.params.change_on_new_leader_ppm) {
                    // A change asked of the new leader before its no-op can have committed.
                    let at = self.now + self.rng.between(1, MS);
                    self.schedule(at, Event::Membership { periodic: false, leader: Some((n, inc)) });
                }
            }
        } else {
            live.leader_term = None;
        }
        Ok(())
    }

    // ----- network -----

    fn send(&mut self, from: usize, m: Message) -> Result<(), Violation> {
        let to = (m.to.0 as usize).wrapping_sub(1);
        if to >= self.nodes.len() {
            return Err(violation(self.now, "simulator", format!("message to unknown node {}", m.to)));
        }
        let from_inc = self.nodes[from].inc;
        if self.rng.chance(self.params.loss_ppm) {
            self.dropped(&m, "lost");
            return Ok(());
        }
        // A forwarded proposal travels on a TCP connection like everything else; it is
        // never duplicated, or its command would be appended twice (the runtime does not
        // deduplicate; the server's commands are idempotent by request id at a higher level).
        let duplicate =
            !matches!(m.body, MessageBody::Propose { .. }) && self.rng.chance(self.params.duplicate_ppm);
        let copies = if duplicate { 2 } else { 1 };
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
        if self.nodes[from].live.is_none() {
            return Ok(());
        }
        self.stats.unreachable_reports += 1;
        self.record(TraceEvent::Unreachable { node: from as u64 + 1, peer: to as u64 + 1 });
        self.input(from, |d, _, _| d.inbound(Inbound::Unreachable(NodeId(to as u64 + 1))))
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
        if let Some(&(index, _)) = self.removed_at.get(&from)
            && self.nodes[to].live.as_ref().is_some_and(|l| l.applier.last().0.0 >= index)
        {
            // The receiver knows the sender was removed: its transport refuses it. As the
            // server's member (`membership::watch`), the removed member stops once the
            // leader it knows, or a majority of the other voters of its applied
            // configuration, refused it; a member that never applied anything is exempt.
            self.dropped(&m, "sender removed");
            let joiner = from >= self.params.nodes;
            let stop = self.nodes[from].live.as_mut().is_some_and(|live| {
                live.refused_by.insert(to);
                // Voters only: the removed member never talks to learners.
                let config = live.applier.cluster();
                let others: Vec<NodeId> = config
                    .voters
                    .union(&config.voters_outgoing)
                    .copied()
                    .filter(|id| *id != m.from)
                    .collect();
                let refusing =
                    others.iter().filter(|id| live.refused_by.contains(&(id.0 as usize - 1))).count();
                let by_leader = live.driver.raft().leader() == Some(m.to);
                let never_applied = joiner && live.applier.last().0.0 == 0;
                !never_applied && (by_leader || (!others.is_empty() && refusing > others.len() / 2))
            });
            if stop {
                self.stop_for_good(
                    from,
                    "refused by its leader or a majority of its peers as removed: stops for good",
                );
            }
            return Ok(());
        }
        self.stats.messages_delivered += 1;
        self.record(TraceEvent::Deliver { from: m.from.0, to: m.to.0, kind: m.body.name(), term: m.term.0 });
        self.trace.note(self.now, || describe(&m.body));
        let timeout_now = matches!(m.body, MessageBody::TimeoutNow).then(|| {
            let before = self.nodes[to].live.as_ref().map_or(Term(0), |l| l.driver.raft().term());
            (m.from, m.term, before)
        });
        self.input(to, |d, _, _| d.inbound(Inbound::Message(m)))?;
        if let Some((sender, term, before)) = timeout_now {
            self.check_timeout_now(to, sender, term, before)?;
        }
        Ok(())
    }

    // ----- the snapshot stream (see `snapstream`) -----

    /// The driver asked to send a snapshot: stream the newest stored snapshot's body to `to`
    /// (as the server's shell does, whatever the core last heard of). At most one transfer
    /// per peer; a request for the snapshot already streaming keeps that one, one for
    /// another snapshot replaces it.
    fn start_transfer(&mut self, from: usize, mut m: Message) -> Result<(), Violation> {
        let now = self.now;
        let to = (m.to.0 as usize).wrapping_sub(1);
        if to >= self.nodes.len() {
            return Err(violation(now, "simulator", format!("snapshot to unknown node {}", m.to)));
        }
        let Some(live) = self.nodes[from].live.as_mut() else { return Ok(()) };
        let id = live.driver.raft().id();
        let stored = live.snapshots.latest().and_then(|found| match found {
            Some((meta, reader)) => Ok(Some((meta, reader.read_all()?))),
            None => Ok(None),
        });
        let (meta, body) = match stored {
            Ok(Some((meta, body))) => {
                let meta = codec::meta_from_storage(&meta).map_err(|e| {
                    violation(now, "snapshot", format!("node {id}: stored snapshot meta: {e}"))
                })?;
                (meta, Bytes::from(body))
            }
            Ok(None) => {
                return Err(violation(
                    now,
                    "snapshot",
                    format!("node {id} sends a snapshot but has none stored"),
                ));
            }
            Err(e) => {
                return Err(violation(now, "storage", format!("node {id} cannot read its snapshot: {e}")));
            }
        };
        if live.outgoing.iter().any(|t| t.to == to && t.meta == meta) {
            return Ok(());
        }
        m.body = MessageBody::InstallSnapshot { meta: meta.clone() };
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
                if msg.term < live.driver.raft().term() {
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
                if ok {
                    self.stats.snapshots_delivered += 1;
                } else {
                    self.stats.snapshots_failed += 1;
                }
                self.input(to, |d, _, _| d.inbound(Inbound::SnapshotReport { to: peer, ok }))
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

    /// End of transfer `id` at node `n`: check length and whole-body CRC, and only then hand
    /// the InstallSnapshot message with the body to the driver (which stages it until the
    /// core accepts or refuses it).
    fn finish_transfer(&mut self, n: usize, from: usize, id: u64, end: SnapshotEnd) -> Result<(), Violation> {
        let Some(live) = self.nodes[n].live.as_mut() else { return Ok(()) };
        let Some(pos) = live.incoming.iter().position(|t| t.id == id && t.from == from) else {
            return Ok(());
        };
        match live.incoming[pos].body.end(&end) {
            Ok(_) => {}
            Err(BodyError::BodyCrc { .. }) => return self.reject_transfer(n, from, id, Reject::BodyCrc),
            Err(_) => return self.reject_transfer(n, from, id, Reject::Truncated),
        }
        let t = live.incoming.remove(pos);
        let m = t.msg;
        self.stats.messages_delivered += 1;
        self.record(TraceEvent::Deliver { from: m.from.0, to: m.to.0, kind: m.body.name(), term: m.term.0 });
        self.trace.note(self.now, || describe(&m.body));
        let data = Box::new(Cursor::new(t.buf));
        self.input(n, |d, _, _| d.inbound(Inbound::Snapshot { message: m, data }))?;
        let mut wire = BytesMut::new();
        SnapshotAck { ok: true, reason: String::new() }.encode(&mut wire);
        self.send_frame(n, from, SnapFrame::Ack { id, wire: wire.freeze() });
        Ok(())
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
        self.stats.snapshots_failed += 1;
        self.record(TraceEvent::SnapshotRejected {
            node: t.to as u64 + 1,
            from: n as u64 + 1,
            id,
            reason: "sender timed out",
        });
        let peer = NodeId(t.to as u64 + 1);
        self.input(n, |d, _, _| d.inbound(Inbound::SnapshotReport { to: peer, ok: false }))
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
                        (l.driver.raft().role() == Role::Leader).then_some((l.driver.raft().term(), i))
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
            if self.nodes[n].slot != Slot::Member {
                continue;
            }
            if self.removed_at.contains_key(&n) {
                // The operator stops what the cluster removed (a removed learner that missed
                // its removal would otherwise idle on).
                self.stop_for_good(n, "removed: stopped before the liveness phase");
                continue;
            }
            if self.nodes[n].live.is_none() {
                self.start_node(n)?;
            }
        }
        self.replay_allowance_us = self.replay_allowance_us();
        if self.replay_allowance_us > 0 {
            let ms = self.replay_allowance_us / 1000;
            self.record(TraceEvent::Member {
                node: 0,
                what: format!("liveness: {ms} ms allowed to replay the log"),
            });
        }
        Ok(())
    }

    /// With snapshots off, a voter that lags (a new member on an empty disk) catches up only
    /// by replaying the log, at most `inflight_messages_max` AppendEntries (of at least one
    /// entry each) per round trip. When a quorum of the configuration in force needs such a
    /// voter, commits cannot resume before it has the log, however correct the members are:
    /// the liveness deadline then allows, beyond its fixed part, the round trips (two message
    /// delays and a disk write each, at their liveness-phase maxima) that the lag of the
    /// quorum's slowest needed voter takes. Zero when snapshots are on (a voter that far
    /// behind is sent one) or a quorum is caught up.
    fn replay_allowance_us(&self) -> u64 {
        if self.params.snapshot_mean_us != 0 {
            return 0;
        }
        let logs: BTreeMap<NodeId, u64> = self
            .nodes
            .iter()
            .filter_map(|node| Some((node.id, node.live.as_ref()?.driver.raft().last_index().0)))
            .collect();
        let Some(head) = logs.values().max().copied() else { return 0 };
        let Some(longest) = self
            .nodes
            .iter()
            .filter_map(|node| node.live.as_ref())
            .max_by_key(|l| l.driver.raft().last_index())
        else {
            return 0;
        };
        let config = config_in_force(longest);
        let quorum_lag = |voters: &BTreeSet<NodeId>| -> u64 {
            let mut lags: Vec<u64> =
                voters.iter().map(|v| head - logs.get(v).copied().unwrap_or(0)).collect();
            lags.sort_unstable();
            lags.get(voters.len() / 2).copied().unwrap_or(0)
        };
        let lag = quorum_lag(&config.voters).max(quorum_lag(&config.voters_outgoing));
        let round_trips = lag.div_ceil(self.params.inflight_messages_max.max(1) as u64);
        round_trips * (2 * self.params.delay_us.1 + self.params.disk_us.1)
    }

    // ----- clients -----

    fn wake_client(&mut self, c: usize, at: u64) {
        self.clients[c].generation += 1;
        let generation = self.clients[c].generation;
        self.schedule(at, Event::ClientWake { client: c, generation });
    }

    /// Clients waiting on node `n` can no longer learn the outcome there: it is unknown, and
    /// they move on to a new command.
    fn forget_pending(&mut self, n: usize, reason: &'static str) {
        for c in 0..self.clients.len() {
            let Some(p) = &self.clients[c].pending else { continue };
            if p.node == n {
                let attempt = p.attempt;
                self.clients[c].pending = None;
                self.record(TraceEvent::Unknown { client: c as u64, attempt, reason });
                let at = self.now + self.rng.between(MS, 10 * MS);
                self.wake_client(c, at);
            }
        }
    }

    /// Node `n`'s driver failed these commands. `LeaderChanged` (and a stop) leaves the
    /// outcome unknown; `NoLeader` and `TooManyRequests` mean the command was never handed
    /// to a core, so it must never be applied.
    fn requests_failed(&mut self, n: usize, ids: &[u64], error: &NodeError) -> Result<(), Violation> {
        for &attempt in ids {
            let Some(c) = self
                .clients
                .iter()
                .position(|c| c.pending.as_ref().is_some_and(|p| p.attempt == attempt && p.node == n))
            else {
                continue;
            };
            self.clients[c].pending = None;
            let retry = match error {
                NodeError::NoLeader | NodeError::TooManyRequests => {
                    self.checker.abandoned(attempt)?;
                    self.stats.lost += 1;
                    self.record(TraceEvent::Lost { client: c as u64, attempt, index: 0 });
                    self.clients[c].target = self.pick_member();
                    self.rng.between(10 * MS, 50 * MS)
                }
                _ => {
                    self.record(TraceEvent::Unknown { client: c as u64, attempt, reason: "leader changed" });
                    self.rng.between(MS, 10 * MS)
                }
            };
            self.wake_client(c, self.now + retry);
        }
        Ok(())
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
            if self.params.spare_nodes > 0 {
                // As for a command: try another member (this one may never have joined).
                self.clients[c].target = self.pick_member();
            }
        }
        if let Some(p) = &self.clients[c].pending {
            if self.now >= p.deadline {
                let attempt = p.attempt;
                self.clients[c].pending = None;
                self.record(TraceEvent::Unknown { client: c as u64, attempt, reason: "timed out" });
                if self.params.spare_nodes > 0 {
                    // With members joining and leaving, a client that gets no answer tries
                    // another member (a member whose addition never committed idles on).
                    self.clients[c].target = self.pick_member();
                }
            } else {
                let at = p.deadline;
                self.wake_client(c, at);
                return Ok(());
            }
        }
        let mut target = self.clients[c].target;
        if self.nodes[target].live.is_none() {
            target = self.pick_member();
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
            let member =
                if self.rng.chance(self.params.read_anywhere_ppm) { self.pick_member() } else { target };
            if self.nodes[member].live.is_some() && self.nodes[member].paused_until <= self.now {
                return self.client_read(c, member);
            }
        }
        let inc = self.nodes[target].inc;
        let Some(live) = self.nodes[target].live.as_ref() else {
            let at = self.now + self.rng.between(MS, 20 * MS);
            self.wake_client(c, at);
            return Ok(());
        };
        // The member proposes the command if it leads, forwards it to the leader it knows,
        // or parks it until a leader is known; the client learns the outcome when this member
        // applies it.
        let raft = live.driver.raft();
        let outcome = match (raft.role(), raft.leader()) {
            (Role::Leader, _) => "proposed".to_string(),
            (_, Some(l)) => format!("forwarded to n{l}"),
            (_, None) => "parked (no leader known)".to_string(),
        };
        let node = raft.id().0;
        let attempt = ((c as u64 + 1) << 48) | (self.clients[c].counter + 1);
        self.record(TraceEvent::Propose { client: c as u64, node, attempt, outcome });
        self.stats.proposals += 1;
        let client = &mut self.clients[c];
        client.counter += 1;
        let deadline = self.now + self.params.client_timeout_us;
        client.pending = Some(Pending { attempt, node: target, inc, deadline, proposed_at: self.now });
        self.wake_client(c, deadline);
        let data = SimMachine::command(self.options.kv_store, attempt);
        self.input(target, |d, now, out| d.propose(vec![(attempt, data)], now, out))
    }
}

impl Sim {
    // ----- reads -----

    /// Client `c` reads a random register on member `target`: serializable (from the member's
    /// state machine at once) or linearizable (a read barrier through the member's driver:
    /// ReadIndex, forwarded to the leader by a follower, served once applied).
    fn client_read(&mut self, c: usize, target: usize) -> Result<(), Violation> {
        let key = self.rng.below(KEYS as u64) as usize;
        let linearizable = !self.rng.chance(self.params.serializable_ppm);
        let min_index = self.checker.acked_index(key);
        let think = self.rng.between(self.params.client_think_us.0, self.params.client_think_us.1);
        let inc = self.nodes[target].inc;
        let Some(live) = self.nodes[target].live.as_ref() else { return Ok(()) };
        let id = live.driver.raft().id();
        if !linearizable {
            let value =
                live.sm.read(key).map_err(|e| violation(self.now, "read", format!("node {id}: {e}")))?;
            let applied = live.sm.regs.applied;
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
        let context = live.driver.next_read_context();
        self.next_read += 1;
        let serial = self.next_read;
        let deadline = self.now + self.params.client_timeout_us;
        self.clients[c].read =
            Some(ReadOp { node: target, inc, key, serial, read_index: None, min_index, deadline });
        self.record(TraceEvent::ReadSent { client: c as u64, node: id.0, key, context, min_index });
        self.wake_client(c, deadline);
        self.input(target, |d, now, out| d.read([ReadToken { client: c, serial }], now, out))
    }

    /// Node `n`'s driver answered a read barrier: its read index, or why there is none.
    fn read_done(&mut self, n: usize, token: ReadToken, result: Result<u64, NodeError>) {
        let inc = self.nodes[n].inc;
        let c = token.client;
        let Some(r) = self.clients.get_mut(c).and_then(|cl| cl.read.as_mut()) else { return };
        if r.serial != token.serial || r.node != n || r.inc != inc {
            return; // The client gave up on this read.
        }
        match result {
            Ok(index) => r.read_index = Some(index),
            Err(e) => {
                self.clients[c].read = None;
                self.stats.reads_failed += 1;
                let reason = match e {
                    NodeError::NoLeader => "no leader (or leadership lost)",
                    NodeError::TooManyRequests => "too many pending reads",
                    _ => "read failed",
                };
                self.record(TraceEvent::ReadFailed { client: c as u64, node: n as u64 + 1, reason });
                self.clients[c].target = self.pick_member();
                let at = self.now + self.rng.between(MS, 20 * MS);
                self.wake_client(c, at);
            }
        }
    }

    /// Serves the confirmed linearizable reads on member `n` whose read index it has applied
    /// (as the server's read barrier waits for the applied index).
    fn serve_reads(&mut self, n: usize) -> Result<(), Violation> {
        let inc = self.nodes[n].inc;
        let Some(live) = self.nodes[n].live.as_ref() else { return Ok(()) };
        let (id, applied) = (live.driver.raft().id(), live.sm.regs.applied);
        for c in 0..self.clients.len() {
            let Some(r) = &self.clients[c].read else { continue };
            let Some(read_index) = r.read_index else { continue };
            if r.node != n || r.inc != inc || applied < read_index {
                continue;
            }
            let Some(live) = self.nodes[n].live.as_ref() else { return Ok(()) };
            let (key, min_index) = (r.key, r.min_index);
            let value =
                live.sm.read(key).map_err(|e| violation(self.now, "read", format!("node {id}: {e}")))?;
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

impl Sim {
    // ----- membership -----

    /// Member slots that are down (crashed, waiting to restart).
    fn down_count(&self) -> usize {
        self.nodes.iter().filter(|n| n.slot == Slot::Member && n.live.is_none()).count()
    }

    /// A random member (running, if any runs) for a client's target or a crash. Without a
    /// membership nemesis every slot is a member, drawn as it always was.
    fn pick_member(&mut self) -> usize {
        if self.params.spare_nodes == 0 {
            return self.rng.below(self.nodes.len() as u64) as usize;
        }
        let members: Vec<usize> =
            (0..self.nodes.len()).filter(|i| self.nodes[*i].slot == Slot::Member).collect();
        let running: Vec<usize> = members.iter().copied().filter(|i| self.nodes[*i].live.is_some()).collect();
        match (running.is_empty(), members.is_empty()) {
            (false, _) => self.rng.pick(&running),
            (true, false) => self.rng.pick(&members),
            (true, true) => 0,
        }
    }

    /// Node `n` leaves the cluster for good: its process stops and is never restarted.
    fn stop_for_good(&mut self, n: usize, why: &str) {
        if self.nodes[n].live.take().is_some() {
            self.stats.members_stopped += 1;
        }
        self.nodes[n].slot = Slot::Removed;
        self.nodes[n].inc += 1;
        self.nodes[n].paused_until = 0;
        self.record(TraceEvent::Member { node: n as u64 + 1, what: why.to_string() });
        self.forget_pending(n, "its member was removed");
        self.forget_reads(n, "its member was removed");
    }

    /// The member a change is asked of: the given new leader (if it still runs and leads)
    /// or the live leader of the highest term, unless it is paused.
    fn change_leader(&self, forced: Option<(usize, u64)>) -> Option<usize> {
        let n = match forced {
            Some((n, inc)) if self.nodes[n].inc == inc => n,
            Some(_) => return None,
            None => self.live_leader()?,
        };
        let live = self.nodes[n].live.as_ref()?;
        (live.driver.raft().role() == Role::Leader && self.nodes[n].paused_until <= self.now).then_some(n)
    }

    fn spare(&self) -> Option<usize> {
        self.nodes.iter().position(|n| n.slot == Slot::Spare)
    }

    /// Starts the fresh member `slot` (empty disk) that a change added, with the voters it
    /// was told about.
    fn join(&mut self, slot: usize, voters: Vec<NodeId>) -> Result<(), Violation> {
        self.nodes[slot].slot = Slot::Member;
        self.nodes[slot].join_voters = voters;
        self.stats.members_added += 1;
        self.record(TraceEvent::Member { node: slot as u64 + 1, what: "starts with an empty disk".into() });
        let at = self.now + SECOND;
        self.schedule(at, Event::JoinCheck { node: slot });
        self.start_node(slot)
    }

    /// A member started for an addition whose entry no member's log holds any more (the
    /// leader lost it before it spread) never joins: the operator stops it, as the server's
    /// member stops when the cluster does not know it. While some member is down, or some
    /// log still holds the addition, it waits.
    fn join_check(&mut self, n: usize) -> Result<(), Violation> {
        if self.nodes[n].slot != Slot::Member || self.nodes[n].live.is_none() {
            return Ok(());
        }
        let id = self.nodes[n].id;
        let applied = self.config_log.values().any(|c| c.contains(id));
        let in_a_log = self.nodes.iter().enumerate().any(|(i, node)| {
            i != n
                && node.live.as_ref().is_some_and(|l| {
                    l.base_config.contains(id) || l.configs.iter().any(|(_, c)| c.contains(id))
                })
        });
        if applied {
            return Ok(());
        }
        if in_a_log || self.down_count() > 0 {
            let at = self.now + SECOND;
            self.schedule(at, Event::JoinCheck { node: n });
            return Ok(());
        }
        self.stop_for_good(n, "its addition was lost before it committed: stopped");
        Ok(())
    }

    /// Asks leader `l` for `change`; returns whether its core accepted it. A leader must
    /// refuse a change while another is uncommitted in its log (or it is joint), and before
    /// it has committed an entry of its own term.
    fn propose_change(&mut self, l: usize, change: ConfChange) -> Result<bool, Violation> {
        let now = self.now;
        self.next_change += 1;
        let request = (1 << 63) | self.next_change;
        let Some(live) = self.nodes[l].live.as_mut() else { return Ok(false) };
        let raft = live.driver.raft();
        let (id, term, commit) = (raft.id(), raft.term(), raft.commit_index());
        let leading = raft.role() == Role::Leader;
        let pending = live.configs.last().filter(|(i, _)| *i > commit.0).map(|(i, _)| *i);
        let joint = !config_in_force(live).voters_outgoing.is_empty();
        let barrier = raft.log_term(commit) == Some(term);
        let mut out = Vec::new();
        live.driver.propose_conf_change(request, &change, at(now), &mut out);
        let refused = out.iter().find_map(|a| match a {
            Action::Fail(ids, e) if ids.contains(&request) => Some(e.to_string()),
            _ => None,
        });
        self.stats.changes_proposed += 1;
        let what = match &refused {
            None => format!("accepts {:?} (term {term}, commit {commit})", change.steps),
            Some(e) => format!("refuses {:?}: {e}", change.steps),
        };
        self.record(TraceEvent::Member { node: id.0, what });
        if refused.is_none() && leading {
            self.stats.changes_accepted += 1;
            let broken = if let Some(p) = pending {
                Some(format!("the change at {p} is not committed (commit index {commit})"))
            } else if joint && !change.steps.is_empty() {
                Some("its configuration is joint".to_string())
            } else if !barrier {
                Some(format!("it has not committed an entry of its term {term} (commit index {commit})"))
            } else {
                None
            };
            if let Some(why) = broken {
                return Err(violation(
                    now,
                    "membership change",
                    format!("leader {id} accepted the change {:?} although {why}", change.steps),
                ));
            }
        }
        self.carry_out(l, out)?;
        self.drive(l)?;
        if refused.is_none() && self.rng.chance(self.params.crash_after_change_ppm) {
            // The leader dies in the middle of the change.
            let inc = self.nodes[l].inc;
            let at = self.now + self.rng.between(0, self.params.crash_after_change_us);
            self.schedule(at, Event::Crash { node: l, inc });
        }
        Ok(refused.is_none())
    }

    /// Adds a fresh member through leader `l`, as a voter or a learner.
    fn add_member(&mut self, l: usize, voter: bool) -> Result<(), Violation> {
        let Some(slot) = self.spare() else { return Ok(()) };
        let Some(live) = self.nodes[l].live.as_ref() else { return Ok(()) };
        let voters: Vec<NodeId> = config_in_force(live).voters.iter().copied().collect();
        let id = self.nodes[slot].id;
        let step = if voter { ConfChangeStep::AddVoter(id) } else { ConfChangeStep::AddLearner(id) };
        if self.propose_change(l, ConfChange::single(step))? {
            self.join(slot, voters)?;
        }
        Ok(())
    }

    /// Draws the nemesis's next action by the profile's weights (changes only: no transfer
    /// or stray message).
    fn pick_action(&mut self, changes_only: bool) -> Option<MemberAction> {
        let weights: Vec<u64> = MemberAction::ALL
            .iter()
            .zip(self.params.member_weights)
            .map(|(a, w)| {
                let other = matches!(a, MemberAction::Transfer | MemberAction::StrayTimeoutNow);
                if changes_only && other { 0 } else { w }
            })
            .collect();
        let total: u64 = weights.iter().sum();
        if total == 0 {
            return None;
        }
        let mut r = self.rng.below(total);
        for (a, w) in MemberAction::ALL.iter().zip(weights) {
            if r < w {
                return Some(*a);
            }
            r -= w;
        }
        None
    }

    /// One step of the membership nemesis, asked of the leader (or of the given new one).
    fn nemesis_step(&mut self, forced: Option<(usize, u64)>) -> Result<(), Violation> {
        let Some(mut action) = self.pick_action(forced.is_some()) else { return Ok(()) };
        if action == MemberAction::StrayTimeoutNow {
            return self.stray_timeout_now();
        }
        let Some(l) = self.change_leader(forced) else { return Ok(()) };
        let Some(live) = self.nodes[l].live.as_ref() else { return Ok(()) };
        let config = config_in_force(live).clone();
        let leader_id = self.nodes[l].id;
        let voters: Vec<NodeId> = config.voters.iter().copied().collect();
        let members: Vec<NodeId> = config.members().into_iter().collect();
        // Keep the cluster between two voters and seven members, except for bursts: a
        // burst's removal is not held to the floor, so it can leave a single voter (which
        // tests changes of a one-voter cluster).
        let shrinking = matches!(
            action,
            MemberAction::Remove | MemberAction::ReplaceSequential | MemberAction::ReplaceJoint
        );
        if shrinking && voters.len() <= 2 && action != MemberAction::ReplaceJoint {
            action = MemberAction::AddVoter;
        }
        let growing = matches!(action, MemberAction::AddLearner | MemberAction::AddVoter);
        if growing && (members.len() >= 7 || self.spare().is_none()) {
            action = if voters.len() > 2 { MemberAction::Remove } else { MemberAction::Transfer };
        }
        match action {
            MemberAction::AddLearner => self.add_member(l, false),
            MemberAction::AddVoter => self.add_member(l, true),
            MemberAction::Remove => {
                // The leader itself a quarter of the time.
                let target = if config.is_voter(leader_id) && self.rng.chance(250_000) {
                    leader_id
                } else {
                    self.rng.pick(&members)
                };
                self.propose_change(l, ConfChange::single(ConfChangeStep::Remove(target))).map(|_| ())
            }
            MemberAction::ReplaceSequential => {
                let target = self.rng.pick(&voters);
                if self.propose_change(l, ConfChange::single(ConfChangeStep::Remove(target)))? {
                    let at = self.now + self.rng.between(50 * MS, 300 * MS);
                    self.schedule(at, Event::MemberAdd);
                }
                Ok(())
            }
            MemberAction::ReplaceJoint => {
                let Some(slot) = self.spare() else { return Ok(()) };
                let target = self.rng.pick(&voters);
                let fresh = self.nodes[slot].id;
                let change = ConfChange {
                    steps: vec![ConfChangeStep::Remove(target), ConfChangeStep::AddVoter(fresh)],
                    ..ConfChange::default()
                };
                if self.propose_change(l, change)? {
                    self.join(slot, voters)?;
                }
                Ok(())
            }
            MemberAction::Promote => {
                let learners: Vec<NodeId> = config.learners.iter().copied().collect();
                if learners.is_empty() {
                    return self.add_member(l, false);
                }
                let target = self.rng.pick(&learners);
                self.propose_change(l, ConfChange::single(ConfChangeStep::AddVoter(target))).map(|_| ())
            }
            MemberAction::Transfer => {
                let others: Vec<NodeId> = voters.iter().copied().filter(|v| *v != leader_id).collect();
                let target = if others.is_empty() || self.rng.chance(300_000) {
                    None
                } else {
                    Some(self.rng.pick(&others))
                };
                let mut result = None;
                self.input(l, |d, _, _| result = Some(d.transfer_leader(target)))?;
                self.stats.transfers += 1;
                let what = match result {
                    Some(Ok(to)) => format!("hands leadership to n{to}"),
                    Some(Err(e)) => format!("refuses a leadership transfer to {target:?}: {e}"),
                    None => "no transfer".into(),
                };
                self.record(TraceEvent::Member { node: leader_id.0, what });
                Ok(())
            }
            MemberAction::Burst => {
                // Two or three changes back to back; the checks in `propose_change` require
                // every one after an accepted one to be refused until it commits.
                let count = self.rng.between(2, 3);
                for _ in 0..count {
                    if self.change_leader(Some((l, self.nodes[l].inc))).is_none() {
                        break;
                    }
                    match self.rng.below(3) {
                        0 => self.add_member(l, false)?,
                        1 => {
                            let target = self.rng.pick(&members);
                            if target != leader_id {
                                self.propose_change(l, ConfChange::single(ConfChangeStep::Remove(target)))?;
                            }
                        }
                        _ => self.add_member(l, true)?,
                    }
                }
                Ok(())
            }
            MemberAction::StrayTimeoutNow => Ok(()),
        }
    }

    /// A member that does not lead sends `TimeoutNow` to another voter (a confused peer):
    /// only the leader of the term may make a member campaign at once.
    fn stray_timeout_now(&mut self) -> Result<(), Violation> {
        let running: Vec<usize> = (0..self.nodes.len())
            .filter(|i| self.nodes[*i].live.is_some() && self.nodes[*i].paused_until <= self.now)
            .collect();
        let senders: Vec<usize> = running
            .iter()
            .copied()
            .filter(|i| self.nodes[*i].live.as_ref().is_some_and(|l| l.driver.raft().role() != Role::Leader))
            .collect();
        if senders.is_empty() {
            return Ok(());
        }
        let x = self.rng.pick(&senders);
        let receivers: Vec<usize> = running.iter().copied().filter(|i| *i != x).collect();
        if receivers.is_empty() {
            return Ok(());
        }
        let y = self.rng.pick(&receivers);
        let Some(live) = self.nodes[x].live.as_ref() else { return Ok(()) };
        let term = live.driver.raft().term();
        let (from, to) = (self.nodes[x].id, self.nodes[y].id);
        self.stats.stray_timeout_nows += 1;
        self.record(TraceEvent::Member { node: from.0, what: format!("sends a stray TimeoutNow to n{to}") });
        self.send(x, Message { from, to, term, body: MessageBody::TimeoutNow })
    }

    /// After a `TimeoutNow` from `sender` of `term` reached node `n` (at term `before`): a
    /// member campaigns at once only on the word of the leader of that term.
    fn check_timeout_now(
        &mut self,
        n: usize,
        sender: NodeId,
        term: Term,
        before: Term,
    ) -> Result<(), Violation> {
        let Some(live) = self.nodes[n].live.as_ref() else { return Ok(()) };
        let r = live.driver.raft();
        let campaigned =
            matches!(r.role(), Role::Candidate | Role::Leader) && r.term().0 == before.0.max(term.0) + 1;
        if campaigned && self.checker.leader_of(term) != Some(sender) {
            return Err(violation(
                self.now,
                "disruption",
                format!(
                    "node {} campaigned at once (term {}) on a TimeoutNow from node {sender}, which does not lead term {term}",
                    r.id(),
                    r.term()
                ),
            ));
        }
        Ok(())
    }

    /// Whether member `v`'s disk holds `index@term` with this log prefix (or a snapshot
    /// past it).
    fn holds(&self, v: NodeId, index: u64, term: Term, chain: u64) -> bool {
        let Some(node) = (v.0 as usize).checked_sub(1).and_then(|i| self.nodes.get(i)) else { return false };
        let d = &node.durable;
        (d.base_index > 0 && index <= d.base_index) || d.get(index) == Some((term, chain))
    }

    /// A leader's commit decision: a majority of the voters of its configuration in force
    /// (of both voter sets, when joint) hold the entry durably.
    fn check_commit_quorum(
        &self,
        id: NodeId,
        term: Term,
        index: u64,
        entry_term: Term,
        chain: u64,
        config: &ClusterConfig,
    ) -> Result<(), Violation> {
        for set in [&config.voters, &config.voters_outgoing] {
            if set.is_empty() {
                continue;
            }
            let holders: Vec<u64> =
                set.iter().filter(|v| self.holds(**v, index, entry_term, chain)).map(|v| v.0).collect();
            if holders.len() * 2 <= set.len() {
                let all: Vec<u64> = set.iter().map(|v| v.0).collect();
                return Err(violation(
                    self.now,
                    "commit without quorum",
                    format!(
                        "leader {id} of term {term} commits {index}@{entry_term}, but only {holders:?} of the voters {all:?} of its configuration hold it on disk"
                    ),
                ));
            }
        }
        Ok(())
    }

    /// A member applied the configuration entry at `index` (from `before` to `after`): the
    /// first application records it, and the members it removed.
    fn config_applied(&mut self, index: u64, before: &ClusterConfig, after: ClusterConfig) {
        if self.config_log.contains_key(&index) {
            return;
        }
        let max_term = self
            .nodes
            .iter()
            .filter_map(|n| n.live.as_ref().map(|l| l.driver.raft().term().0))
            .max()
            .unwrap_or(0);
        for m in before.members() {
            if !after.contains(m) && m.0 >= 1 && (m.0 as usize) <= self.nodes.len() {
                self.removed_at.entry(m.0 as usize - 1).or_insert((index, max_term));
            }
        }
        self.config_log.insert(index, after);
    }

    /// At the end of a run: the membership is what the applied changes say. Every member of
    /// the last applied configuration runs, every member that applied it holds it, and no
    /// member the changes removed still runs as a voter.
    fn final_membership(&self) -> Result<(), Violation> {
        let initial = ClusterConfig::new(self.nodes[..self.params.nodes].iter().map(|n| n.id));
        let (index, config) = self.config_log.last_key_value().map_or((0, &initial), |(i, c)| (*i, c));
        let fail = |detail: String| Err(violation(self.now, "final membership", detail));
        for node in &self.nodes {
            let id = node.id;
            let member = config.contains(id);
            let ever = initial.contains(id) || self.config_log.values().any(|c| c.contains(id));
            match &node.live {
                None if member => {
                    return fail(format!(
                        "node {id} is in the configuration applied at {index} ({config:?}) but does not run"
                    ));
                }
                Some(live) if !member && ever && config_in_force(live).is_voter(id) => {
                    return fail(format!(
                        "node {id} still runs as a voter, but the configuration applied at {index} ({config:?}) removed it"
                    ));
                }
                Some(live) if live.applier.last().0.0 >= index && live.applier.cluster() != config => {
                    return fail(format!(
                        "node {id} applied up to {} and holds the configuration {:?}, not {config:?} applied at {index}",
                        live.applier.last().0,
                        live.applier.cluster()
                    ));
                }
                _ => {}
            }
            if member && node.slot != Slot::Member {
                return fail(format!("node {id} is in the final configuration but was stopped for good"));
            }
        }
        Ok(())
    }
}

/// The configuration a member's log puts in force (its last configuration entry's, else
/// its base's).
fn config_in_force(live: &Live) -> &ClusterConfig {
    live.configs.last().map_or(&live.base_config, |(_, c)| c)
}

/// Follows a log's configuration entries: `e` was appended after `configs` (whose base is
/// `base`); a configuration entry's resulting configuration is pushed.
fn track_config(configs: &mut Vec<(u64, ClusterConfig)>, base: &ClusterConfig, e: &Entry) {
    if e.kind != EntryKind::ConfigChange {
        return;
    }
    let prev = configs.last().map_or(base, |(_, c)| c);
    let next = match ConfChange::decode_entry(&e.data) {
        Ok((_, Some(config))) => config,
        Ok((change, None)) => match change.apply(prev) {
            Ok(config) => config,
            Err(_) => return,
        },
        Err(_) => return,
    };
    configs.push((e.index.0, next));
}

/// A completed persist job as it lands in a member's durable log (`installed`: the
/// snapshot it installed, which the disk worker takes out of the job).
fn apply_durable(durable: &mut Mirror, installed: &[SnapshotMeta], job: &DiskJob, checker: &Checker) {
    let DiskJob::Persist(p) = job else { return };
    for meta in installed {
        if let Some(chain) = checker.chain_at(meta.index.0, meta.term) {
            *durable = Mirror::new(meta.index.0, meta.term, chain);
        }
    }
    if let Some(first) = p.entries.first() {
        let first = first.index.0;
        if first > durable.last_index() + 1
            || (first <= durable.last_index() && !durable.truncate_from(first))
        {
            return;
        }
        for e in &p.entries {
            durable.push(e);
        }
    }
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
