//! Swarm testing: each seed draws its own cluster size, fault mix and rates, so a sweep of
//! seeds covers quiet networks, lossy ones, crash storms and partitions in many combinations.

use raftkv_raft::CompactionPolicy;

use crate::rng::Rng;

/// Microseconds of virtual time.
pub const MS: u64 = 1_000;
/// One second of virtual time.
pub const SEC: u64 = 1_000_000;
/// The tick interval every node is driven at.
pub const TICK_US: u64 = 10 * MS;

/// A family of fault mixes to draw a seed's parameters from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Profile {
    /// The default swarm: every fault kind on or off at random, rates drawn per seed.
    #[default]
    Mixed,
    /// Frequent leader changes with partial replication: three nodes, slow disks, a crash
    /// every few hundred milliseconds (often in the middle of a persist, any number of nodes
    /// down at once), entries trickling out one or a few per message, no CheckQuorum lease.
    /// Raises the odds of Figure-8-like histories (Raft §5.4.2) and of votes lost in a crash.
    LeaderChurn,
    /// Figure 8 of the Raft paper made likely: leader churn where the crashes mostly hit the
    /// leader shortly after it is elected, one entry per AppendEntries with one in flight,
    /// so a new leader's old-term entries reach a follower before its no-op does and the
    /// leader dies in between. Targets `CommitPreviousTermByCount`.
    Figure8,
    /// Followers left with long uncommitted, conflicting tails: leaders isolated while
    /// clients keep proposing to them, short partitions, heals while the new leader has
    /// committed past the followers' matching prefix. Targets `FollowerCommitToLastIndex`.
    StaleTail,
    /// Slow, crash-prone disks under a leader that crashes often: the window in which a
    /// leader's entry is on a follower's disk but not yet on its own is wide. Targets
    /// `LeaderCountsUnsyncedSelf`.
    UnsyncedLeader,
    /// Read-heavy clients on a cluster whose followers keep falling behind and restarting:
    /// frequent short crashes, lossy links and stale deliveries. Targets read-path bugs
    /// (serving before the read index is applied, a read confirmed by a stale reply).
    Reads,
    /// Leaders isolated while clients keep writing to them (no CheckQuorum), frequent
    /// snapshots with no kept tail and crashes: an old leader's conflicting tail meets an
    /// InstallSnapshot, then a restart.
    SnapshotTail,
    /// Frequent write/fsync errors and crashes: what a member acknowledged must survive them.
    DiskErrors,
    /// Membership changes under the mixed faults: members added (as learners then
    /// promoted, or as voters) with empty disks, removed (the leader too), replaced (one
    /// joint change or a removal then an addition), leadership transfers, two changes
    /// proposed back to back, changes right after an election, while partitioned and with
    /// the leader crashing in the middle of them.
    Membership,
    /// Changes proposed the moment a leader is elected, under leader churn: a leader must
    /// commit an entry of its term before it accepts one. Targets `NoCurrentTermBarrier`.
    MemberBarrier,
    /// Changes proposed in bursts of two or three: the second must be refused while the
    /// first is uncommitted. Targets `TwoChangesInFlight`.
    MemberBurst,
    /// Voters added (and replaced) while another voter is down or cut off: the new
    /// configuration's quorum is needed from the moment the entry is appended. Targets
    /// `ConfigAppliedAtCommit`.
    MemberAdd,
    /// Voters removed while another is down or cut off: the removed voter's copy must not
    /// count. Targets `RemovedMemberCounted`.
    MemberRemove,
    /// Leadership transfers, and stray `TimeoutNow` messages from members that do not lead
    /// (a confused peer): only the leader of the term may make a member campaign at once.
    /// Targets `TimeoutNowFromAnyone`.
    MemberTransfer,
}

/// What the membership nemesis may do at each of its steps (weights in [`Params`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MemberAction {
    /// Add a fresh member (empty disk) as a learner; it is promoted later.
    AddLearner,
    /// Add a fresh member (empty disk) as a voter at once.
    AddVoter,
    /// Remove a member (a voter, a learner or the leader itself).
    Remove,
    /// Replace a voter by a fresh member in one joint change.
    ReplaceJoint,
    /// Replace a voter: remove it, then add a fresh member.
    ReplaceSequential,
    /// Promote a learner.
    Promote,
    /// Hand leadership to another voter.
    Transfer,
    /// Two or three changes proposed back to back: all but the first must be refused.
    Burst,
    /// A `TimeoutNow` sent by a member that does not lead.
    StrayTimeoutNow,
}

impl MemberAction {
    pub const ALL: [MemberAction; 9] = [
        MemberAction::AddLearner,
        MemberAction::AddVoter,
        MemberAction::Remove,
        MemberAction::ReplaceJoint,
        MemberAction::ReplaceSequential,
        MemberAction::Promote,
        MemberAction::Transfer,
        MemberAction::Burst,
        MemberAction::StrayTimeoutNow,
    ];
}

impl Profile {
    /// Every profile, in command-line order.
    pub const ALL: [Profile; 14] = [
        Profile::Mixed,
        Profile::LeaderChurn,
        Profile::Figure8,
        Profile::StaleTail,
        Profile::UnsyncedLeader,
        Profile::Reads,
        Profile::SnapshotTail,
        Profile::DiskErrors,
        Profile::Membership,
        Profile::MemberBarrier,
        Profile::MemberBurst,
        Profile::MemberAdd,
        Profile::MemberRemove,
        Profile::MemberTransfer,
    ];

    /// The command-line name (`--profile`).
    pub fn name(self) -> &'static str {
        match self {
            Profile::Mixed => "mixed",
            Profile::LeaderChurn => "leader-churn",
            Profile::Figure8 => "figure-8",
            Profile::StaleTail => "stale-tail",
            Profile::UnsyncedLeader => "unsynced-leader",
            Profile::Reads => "reads",
            Profile::SnapshotTail => "snapshot-tail",
            Profile::DiskErrors => "disk-errors",
            Profile::Membership => "membership",
            Profile::MemberBarrier => "member-barrier",
            Profile::MemberBurst => "member-burst",
            Profile::MemberAdd => "member-add",
            Profile::MemberRemove => "member-remove",
            Profile::MemberTransfer => "member-transfer",
        }
    }
}

impl std::str::FromStr for Profile {
    type Err = String;
    fn from_str(s: &str) -> Result<Profile, String> {
        Profile::ALL.into_iter().find(|p| p.name() == s).ok_or_else(|| {
            let names: Vec<&str> = Profile::ALL.iter().map(|p| p.name()).collect();
            format!("unknown profile {s:?} (expected one of {})", names.join(", "))
        })
    }
}

/// Everything a seed decides about its run before it starts.
#[derive(Clone, Debug)]
pub struct Params {
    pub nodes: usize,
    pub clients: usize,
    /// Pause between a client's commands.
    pub client_think_us: (u64, u64),
    /// Give up on an outstanding command (outcome unknown) after this long.
    pub client_timeout_us: u64,

    /// One-way message delay, uniform in this range (reordering comes from the spread).
    pub delay_us: (u64, u64),
    /// Chance that a message is delayed by up to `long_delay_us` more (very stale deliveries).
    pub long_delay_ppm: u64,
    pub long_delay_us: u64,
    pub loss_ppm: u64,
    pub duplicate_ppm: u64,

    /// Latency of one persist job (write + sync); jobs of a node complete in order.
    pub disk_us: (u64, u64),

    /// Mean time between crashes (0: no crashes), and how long a crashed node stays down.
    pub crash_mean_us: u64,
    pub downtime_us: (u64, u64),
    /// At most this many nodes down at once.
    pub max_down: usize,
    /// Chance, per persist job, of a crash before that job completes.
    pub crash_in_persist_ppm: u64,
    /// On a crash, complete a random prefix of the pending persist jobs first (the disk wrote
    /// some of the unsynced data) instead of losing them all.
    pub crash_keeps_prefix: bool,
    /// Chance that a random crash hits the live leader (of the highest term) instead of a
    /// uniformly drawn node: leader churn.
    pub leader_crash_ppm: u64,
    /// Chance that a newly elected leader is crashed within `new_leader_crash_within_us` of
    /// its election (short-lived leaders, often in the middle of replicating their no-op).
    pub new_leader_crash_ppm: u64,
    pub new_leader_crash_within_us: u64,
    /// Chance that a newly elected leader's links to each other member are cut (one way,
    /// leader to member, each with even odds) until the next heal after `partition_us`:
    /// partial replication of its first entries.
    pub new_leader_cut_ppm: u64,

    /// Mean time between partitions (0: none), and how long one lasts.
    pub partition_mean_us: u64,
    pub partition_us: (u64, u64),
    pub split_partitions: bool,
    pub isolate_leader: bool,
    pub asymmetric_partitions: bool,

    /// Mean time between snapshot checks per node (0: never snapshot); at each check the
    /// node asks `compaction` whether a snapshot is due and what to compact.
    pub snapshot_mean_us: u64,
    pub compaction: CompactionPolicy,
    /// Snapshot stream: body filler bytes (the state machine's bulk), chunk size, and the
    /// flow-control window of unconfirmed bytes per transfer, in chunks.
    pub snapshot_filler_bytes: u32,
    pub snapshot_chunk_bytes: u64,
    pub snapshot_window_chunks: u64,
    /// A transfer with no confirmed progress for this long fails (`report_snapshot(false)`).
    pub snapshot_timeout_us: u64,
    /// Faults on snapshot frames, per frame: loss, duplication, reordering (overtaking later
    /// frames of the same stream) and a flipped bit in a chunk's data.
    pub chunk_loss_ppm: u64,
    pub chunk_duplicate_ppm: u64,
    pub chunk_reorder_ppm: u64,
    pub chunk_corrupt_ppm: u64,
    /// A far-lagging follower (0: none): once, early in the fault phase, a follower goes down
    /// for this long while the others commit and compact, so it must be caught up by snapshot.
    pub lag_downtime_us: u64,

    pub pre_vote: bool,
    pub check_quorum: bool,
    pub inflight_messages_max: usize,
    pub append_bytes_max: u64,

    /// Chance that a client's next operation is a read rather than a write, and that a read
    /// is serializable (served from the receiving member's state) rather than linearizable
    /// (ReadIndex, forwarded to the leader by a follower).
    pub read_ppm: u64,
    pub serializable_ppm: u64,
    /// Chance that a read goes to a random member rather than the believed leader.
    pub read_anywhere_ppm: u64,
    /// Mean time between process pauses (0: none): a member freezes (no ticks, no messages,
    /// no disk completions handled) for `pause_us`, several election timeouts.
    pub pause_mean_us: u64,
    pub pause_us: (u64, u64),
    /// Clock drift: each member's tick interval is `TICK_US` scaled by a factor drawn in
    /// `1 ± drift_ppm / 1e6`.
    pub drift_ppm: u64,
    /// Chance that a message dropped by a partition or a down receiver makes the sender's
    /// transport report the peer unreachable (`Raft::report_unreachable`).
    pub unreachable_ppm: u64,
    /// Chance, per synced persist job in the fault phase, that the write or fsync fails: the
    /// member must stop without acknowledging anything of that job (it restarts later).
    pub fsync_error_ppm: u64,
    /// Chance, on a crash with unsynced jobs lost, that the first lost job is torn: a prefix
    /// of its entries reached the disk, its hard state did not.
    pub torn_write_ppm: u64,
    /// Chance, per read of a member's files while it restarts in the fault phase, that the
    /// read returns a flipped bit (the disk or bus; the stored bytes are intact). Storage
    /// refuses to open on damage it cannot prove torn; the member then retries later.
    pub corrupt_read_ppm: u64,

    /// Membership nemesis (0: no membership changes): slots for members added during the
    /// run (each a fresh id with an empty disk), the mean time between nemesis steps, and
    /// the weight of each [`MemberAction`] (in [`MemberAction::ALL`] order).
    pub spare_nodes: usize,
    pub membership_mean_us: u64,
    pub member_weights: [u64; 9],
    /// Chance that a newly elected leader is asked for a change at once (before its no-op
    /// can commit).
    pub change_on_new_leader_ppm: u64,
    /// Chance that the leader crashes within `crash_after_change_us` of accepting a change.
    pub crash_after_change_ppm: u64,
    pub crash_after_change_us: u64,

    /// Length of the fault phase; the liveness phase follows.
    pub fault_phase_us: u64,
    /// The run lasts at least this long in total.
    pub min_run_us: u64,
    /// After healing, a fresh command must commit within this long.
    pub liveness_deadline_us: u64,
    /// A run that needs more events than this is stopped and reported: some pathology (a
    /// message storm) would otherwise stall the sweep.
    pub max_events: u64,
}

impl Params {
    /// Draws a seed's parameters.
    pub fn draw(seed: u64, profile: Profile) -> Params {
        let mut r = Rng::new(seed ^ 0xA076_1D64_78BD_642F);
        let mut p = match profile {
            Profile::Mixed => Params::mixed(&mut r),
            Profile::LeaderChurn => Params::leader_churn(&mut r),
            Profile::Figure8 => Params::figure_8(&mut r),
            Profile::StaleTail => Params::stale_tail(&mut r),
            Profile::UnsyncedLeader => Params::unsynced_leader(&mut r),
            Profile::Reads => Params::reads(&mut r),
            Profile::SnapshotTail => Params::snapshot_tail(&mut r),
            Profile::DiskErrors => Params::disk_errors(&mut r),
            Profile::Membership => Params::membership(&mut r),
            Profile::MemberBarrier => Params::member_barrier(&mut r),
            Profile::MemberBurst => Params::member_burst(&mut r),
            Profile::MemberAdd => Params::member_add(&mut r),
            Profile::MemberRemove => Params::member_remove(&mut r),
            Profile::MemberTransfer => Params::member_transfer(&mut r),
        };
        if profile == Profile::Mixed {
            // Its own stream, so the other draws stay as they were.
            let mut r = Rng::new(seed ^ 0x0BAD_0DD5_EED5_0001);
            p.corrupt_read_ppm = r.pick(&[0, 0, 20_000, 100_000]);
        }
        p
    }

    fn mixed(r: &mut Rng) -> Params {
        let nodes = r.pick(&[3, 3, 3, 5, 5, 7]);
        let delay_lo = r.between(100, 3 * MS);
        let delay_hi = delay_lo + r.pick(&[MS, 5 * MS, 15 * MS, 30 * MS]);
        let disk_lo = r.between(50, 2 * MS);
        let disk_hi = disk_lo + r.pick(&[500, 3 * MS, 10 * MS, 25 * MS]);
        let crashes = r.chance(600_000);
        let partitions = r.chance(600_000);
        let snapshots = r.chance(700_000);
        let minority = (nodes - 1) / 2;
        let mut p = Params {
            nodes,
            clients: r.between(1, 4) as usize,
            client_think_us: (0, r.pick(&[MS, 10 * MS, 50 * MS])),
            client_timeout_us: SEC,
            delay_us: (delay_lo, delay_hi),
            long_delay_ppm: r.pick(&[0, 0, 5_000, 30_000]),
            long_delay_us: r.pick(&[50 * MS, 200 * MS, 600 * MS]),
            loss_ppm: r.pick(&[0, 0, 10_000, 50_000, 150_000, 300_000]),
            duplicate_ppm: r.pick(&[0, 0, 20_000, 100_000]),
            disk_us: (disk_lo, disk_hi),
            crash_mean_us: if crashes { r.pick(&[300 * MS, SEC, 3 * SEC]) } else { 0 },
            downtime_us: (10 * MS, r.pick(&[100 * MS, 500 * MS, 2 * SEC])),
            max_down: if r.chance(200_000) { nodes } else { minority.max(1) },
            crash_in_persist_ppm: if crashes { r.pick(&[0, 5_000, 30_000]) } else { 0 },
            crash_keeps_prefix: r.chance(500_000),
            leader_crash_ppm: 0,
            new_leader_crash_ppm: 0,
            new_leader_crash_within_us: 0,
            new_leader_cut_ppm: 0,
            partition_mean_us: if partitions { r.pick(&[200 * MS, SEC, 2 * SEC]) } else { 0 },
            partition_us: (50 * MS, r.pick(&[300 * MS, SEC, 3 * SEC])),
            split_partitions: r.chance(700_000),
            isolate_leader: r.chance(700_000),
            asymmetric_partitions: r.chance(500_000),
            snapshot_mean_us: if snapshots { r.pick(&[50 * MS, 300 * MS, SEC]) } else { 0 },
            compaction: CompactionPolicy::NEVER,
            snapshot_filler_bytes: 0,
            snapshot_chunk_bytes: 0,
            snapshot_window_chunks: 0,
            snapshot_timeout_us: 0,
            chunk_loss_ppm: 0,
            chunk_duplicate_ppm: 0,
            chunk_reorder_ppm: 0,
            chunk_corrupt_ppm: 0,
            lag_downtime_us: 0,
            read_ppm: 0,
            serializable_ppm: 0,
            read_anywhere_ppm: 500_000,
            pause_mean_us: 0,
            pause_us: (0, 0),
            drift_ppm: 0,
            unreachable_ppm: 0,
            fsync_error_ppm: 0,
            torn_write_ppm: 0,
            corrupt_read_ppm: 0,
            spare_nodes: 0,
            membership_mean_us: 0,
            member_weights: [0; 9],
            change_on_new_leader_ppm: 0,
            crash_after_change_ppm: 0,
            crash_after_change_us: 0,
            pre_vote: r.chance(800_000),
            check_quorum: r.chance(800_000),
            // Small appends with a deep pipeline on a reordering network make the leader
            // re-stream its whole window after each out-of-order rejection (O(lag x window)
            // messages): correct but slow, so deep windows go with large appends only.
            inflight_messages_max: 0,
            append_bytes_max: r.pick(&[1, 256, 1 << 20]),
            fault_phase_us: r.between(7 * SEC, 8 * SEC),
            min_run_us: 10 * SEC,
            liveness_deadline_us: 5 * SEC,
            max_events: 2_000_000,
        };
        p.inflight_messages_max =
            if p.append_bytes_max >= 1 << 20 { r.pick(&[1, 4, 16, 256]) } else { r.pick(&[1, 4, 16]) };
        p.draw_snapshots(r);
        p.draw_wider_faults(r);
        p
    }

    /// Reads and the wider fault model: pauses, clock drift, unreachable reports, fsync
    /// errors, torn writes (drawn last, so they do not shift the other draws).
    fn draw_wider_faults(&mut self, r: &mut Rng) {
        self.read_ppm = r.pick(&[0, 200_000, 400_000, 600_000]);
        self.serializable_ppm = r.pick(&[0, 200_000, 400_000]);
        if r.chance(400_000) {
            self.pause_mean_us = r.pick(&[SEC, 2 * SEC]);
            self.pause_us = (200 * MS, r.pick(&[500 * MS, SEC]));
        }
        self.drift_ppm = r.pick(&[0, 20_000, 100_000, 250_000]);
        self.unreachable_ppm = r.pick(&[0, 300_000, 1_000_000]);
        self.fsync_error_ppm = r.pick(&[0, 0, 0, 2_000, 10_000]);
        self.torn_write_ppm = r.pick(&[0, 500_000, 1_000_000]);
    }

    /// Snapshot policy, stream and fault parameters (drawn after the rest, so they do not
    /// shift the other draws).
    fn draw_snapshots(&mut self, r: &mut Rng) {
        self.compaction = CompactionPolicy {
            snapshot_every_entries: r.pick(&[1, 10, 50, 200]),
            snapshot_every_log_bytes: r.pick(&[0, 0, 2_000, 20_000]),
            // Small tails so lagging followers really need snapshots.
            keep_entries_behind: r.pick(&[0, 0, 5, 20, 100]),
        };
        self.snapshot_filler_bytes = r.pick(&[0, 200, 1_000, 4_000]);
        self.snapshot_chunk_bytes = r.pick(&[64, 256, 1_024]);
        self.snapshot_window_chunks = r.pick(&[1, 2, 4, 8]);
        self.snapshot_timeout_us = r.pick(&[100 * MS, 300 * MS]);
        self.chunk_loss_ppm = r.pick(&[0, 5_000, 20_000, 50_000]);
        self.chunk_duplicate_ppm = r.pick(&[0, 20_000, 100_000]);
        self.chunk_reorder_ppm = r.pick(&[0, 0, 10_000, 50_000]);
        self.chunk_corrupt_ppm = r.pick(&[0, 5_000, 20_000]);
        if r.chance(300_000) {
            // A follower lags far behind: snapshots must be on, frequent, with short tails.
            self.lag_downtime_us = r.between(1_500 * MS, 3 * SEC);
            if self.snapshot_mean_us == 0 || self.snapshot_mean_us > 300 * MS {
                self.snapshot_mean_us = r.pick(&[50 * MS, 300 * MS]);
            }
            self.compaction.snapshot_every_entries = self.compaction.snapshot_every_entries.min(50);
            self.compaction.keep_entries_behind = self.compaction.keep_entries_behind.min(20);
        }
    }

    fn reads(r: &mut Rng) -> Params {
        let mut p = Params::mixed(r);
        p.nodes = r.pick(&[3, 5]);
        p.max_down = 1;
        p.clients = r.between(4, 8) as usize;
        p.client_think_us = (0, MS);
        p.read_ppm = 600_000;
        p.serializable_ppm = 0;
        p.read_anywhere_ppm = 900_000;
        p.delay_us = (r.between(100, MS), r.between(2 * MS, 6 * MS));
        p.long_delay_ppm = r.pick(&[100_000, 300_000]);
        p.long_delay_us = r.pick(&[50 * MS, 150 * MS]);
        p.loss_ppm = r.pick(&[0, 50_000, 150_000]);
        p.disk_us = (r.between(MS, 3 * MS), r.between(5 * MS, 30 * MS));
        p.crash_mean_us = r.pick(&[50 * MS, 100 * MS, 200 * MS]);
        p.downtime_us = (MS, r.pick(&[10 * MS, 30 * MS]));
        p.crash_in_persist_ppm = 0;
        p.partition_mean_us = 0;
        p.pause_mean_us = 0;
        p.fsync_error_ppm = 0;
        p
    }

    fn snapshot_tail(r: &mut Rng) -> Params {
        let mut p = Params::mixed(r);
        p.nodes = 3;
        p.max_down = 1;
        // Each client has one write outstanding: many clients make a long uncommitted tail
        // on an isolated leader.
        p.clients = 12;
        p.client_think_us = (0, MS);
        p.read_ppm = 0;
        p.check_quorum = false;
        p.partition_mean_us = r.pick(&[200 * MS, 400 * MS]);
        p.partition_us = (100 * MS, 400 * MS);
        p.split_partitions = false;
        p.isolate_leader = true;
        p.asymmetric_partitions = false;
        p.snapshot_mean_us = r.pick(&[20 * MS, 50 * MS]);
        p.compaction.snapshot_every_entries = r.pick(&[1, 5]);
        p.compaction.snapshot_every_log_bytes = 0;
        p.compaction.keep_entries_behind = 0;
        p.crash_mean_us = r.pick(&[100 * MS, 300 * MS]);
        p.downtime_us = (5 * MS, 50 * MS);
        p.crash_in_persist_ppm = r.pick(&[150_000, 300_000]);
        p.crash_keeps_prefix = true;
        p.pause_mean_us = 0;
        p.fsync_error_ppm = 0;
        p
    }

    fn disk_errors(r: &mut Rng) -> Params {
        let mut p = Params::leader_churn(r);
        p.fsync_error_ppm = r.pick(&[20_000, 50_000]);
        p.pause_mean_us = 0;
        p
    }

    fn leader_churn(r: &mut Rng) -> Params {
        let mut p = Params::mixed(r);
        p.nodes = 3;
        p.max_down = p.nodes;
        p.clients = r.between(2, 4) as usize;
        p.client_think_us = (0, MS);
        p.delay_us = (r.between(100, MS), r.between(2 * MS, 10 * MS));
        p.disk_us = (r.between(MS, 5 * MS), r.between(10 * MS, 40 * MS));
        p.crash_mean_us = r.pick(&[100 * MS, 200 * MS, 400 * MS]);
        p.downtime_us = (5 * MS, r.pick(&[50 * MS, 200 * MS]));
        p.crash_in_persist_ppm = r.pick(&[150_000, 300_000]);
        p.crash_keeps_prefix = r.chance(500_000);
        // Partitions mostly stop elections here; crashes do the churning.
        p.partition_mean_us = 0;
        p.check_quorum = false;
        // Entries trickle to followers one or a few at a time, so a new leader's quorum often
        // holds an old term's entry before it holds the leader's no-op.
        p.append_bytes_max = r.pick(&[1, 256]);
        p.inflight_messages_max = r.pick(&[1, 4]);
        p
    }

    fn figure_8(r: &mut Rng) -> Params {
        let mut p = Params::leader_churn(r);
        p.leader_crash_ppm = r.pick(&[600_000, 800_000]);
        p.new_leader_crash_ppm = 1_000_000;
        p.new_leader_crash_within_us = 100 * MS;
        // Fast disks and a slower network: a leader's own entries are durable before its
        // messages land, so a leader that dies early leaves them on its disk alone.
        p.disk_us = (1_250, 5 * MS);
        p.delay_us = (300, 3 * MS);
        p.crash_mean_us = r.pick(&[80 * MS, 120 * MS, 200 * MS]);
        p.downtime_us = (5 * MS, r.pick(&[30 * MS, 100 * MS]));
        p.append_bytes_max = 1;
        p.inflight_messages_max = 1;
        p.loss_ppm = r.pick(&[0, 20_000]);
        p.snapshot_mean_us = 0;
        p.lag_downtime_us = 0;
        // Many clients with commands outstanding: short-lived leaders leave long, divergent
        // uncommitted tails of their terms for the next leaders to replicate.
        p.clients = r.between(6, 10) as usize;
        // Every client command a write, no pauses or fsync errors: the wider faults of the
        // mixed draw only dilute the histories this profile is after.
        p.read_ppm = 0;
        p.pause_mean_us = 0;
        p.fsync_error_ppm = 0;
        p
    }

    fn stale_tail(r: &mut Rng) -> Params {
        let mut p = Params::mixed(r);
        p.nodes = r.pick(&[3, 5]);
        p.clients = r.between(2, 4) as usize;
        p.client_think_us = (0, MS);
        p.partition_mean_us = r.pick(&[150 * MS, 300 * MS]);
        p.partition_us = (50 * MS, r.pick(&[300 * MS, 600 * MS]));
        p.isolate_leader = true;
        p.split_partitions = r.chance(500_000);
        p.asymmetric_partitions = false;
        p.crash_mean_us = r.pick(&[0, SEC]);
        p.crash_in_persist_ppm = 0;
        p.max_down = 1;
        p.append_bytes_max = r.pick(&[1, 256]);
        p.inflight_messages_max = r.pick(&[1, 4]);
        p.snapshot_mean_us = 0;
        p.lag_downtime_us = 0;
        p
    }

    fn unsynced_leader(r: &mut Rng) -> Params {
        let mut p = Params::leader_churn(r);
        p.leader_crash_ppm = r.pick(&[500_000, 800_000]);
        p.delay_us = (r.between(100, 500), r.between(MS, 3 * MS));
        p.disk_us = (r.between(5 * MS, 10 * MS), r.between(20 * MS, 60 * MS));
        p.crash_in_persist_ppm = r.pick(&[300_000, 500_000]);
        p.crash_keeps_prefix = false;
        p
    }

    fn membership(r: &mut Rng) -> Params {
        let mut p = Params::mixed(r);
        p.nodes = r.pick(&[3, 3, 5]);
        p.max_down = 1;
        p.spare_nodes = 6;
        p.membership_mean_us = r.pick(&[150 * MS, 300 * MS, 600 * MS]);
        //                add-learner, add-voter, remove, replace-joint, replace-seq, promote,
        //                transfer, burst, stray TimeoutNow
        p.member_weights = [3, 2, 4, 2, 1, 3, 2, 2, 1];
        p.change_on_new_leader_ppm = r.pick(&[0, 100_000, 300_000]);
        p.crash_after_change_ppm = r.pick(&[0, 50_000, 200_000]);
        p.crash_after_change_us = 30 * MS;
        // Far-lagging followers are the nemesis's new members here.
        p.lag_downtime_us = 0;
        p
    }

    fn member_barrier(r: &mut Rng) -> Params {
        let mut p = Params::leader_churn(r);
        p.nodes = 3;
        p.max_down = 1;
        p.spare_nodes = 6;
        p.membership_mean_us = r.pick(&[200 * MS, 400 * MS]);
        p.member_weights = [0, 3, 3, 1, 0, 0, 2, 0, 0];
        p.change_on_new_leader_ppm = 1_000_000;
        p.crash_after_change_ppm = r.pick(&[100_000, 300_000]);
        p.crash_after_change_us = 20 * MS;
        p.pause_mean_us = 0;
        p.fsync_error_ppm = 0;
        p.lag_downtime_us = 0;
        p
    }

    fn member_burst(r: &mut Rng) -> Params {
        let mut p = Params::membership(r);
        p.nodes = 3;
        p.membership_mean_us = r.pick(&[100 * MS, 200 * MS]);
        p.member_weights = [1, 1, 1, 0, 0, 1, 0, 6, 0];
        p.crash_after_change_ppm = r.pick(&[0, 100_000]);
        p
    }

    fn member_add(r: &mut Rng) -> Params {
        let mut p = Params::membership(r);
        p.nodes = 3;
        p.max_down = 1;
        p.crash_mean_us = r.pick(&[150 * MS, 300 * MS]);
        p.downtime_us = (50 * MS, r.pick(&[200 * MS, 500 * MS]));
        p.membership_mean_us = r.pick(&[100 * MS, 200 * MS]);
        p.member_weights = [0, 4, 2, 2, 1, 0, 0, 0, 0];
        p.check_quorum = false;
        p
    }

    fn member_remove(r: &mut Rng) -> Params {
        let mut p = Params::member_add(r);
        p.member_weights = [0, 3, 4, 0, 2, 0, 0, 0, 0];
        p
    }

    fn member_transfer(r: &mut Rng) -> Params {
        let mut p = Params::membership(r);
        p.membership_mean_us = r.pick(&[100 * MS, 200 * MS]);
        p.member_weights = [1, 1, 1, 0, 0, 1, 4, 0, 4];
        p
    }
}
