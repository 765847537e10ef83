//! The public face of the core: [`Raft`], its inputs (methods) and its output ([`Ready`]).

use std::collections::{BTreeMap, VecDeque};

use bytes::Bytes;

use crate::confchange::{ConfChange, ConfChangeError, ConfChangeStep};
use crate::config::{Config, ConfigError};
use crate::log::RaftLog;
use crate::message::{Message, MessageBody, RejectHint};
use crate::progress::{Progress, ProgressState};
use crate::quorum::VoteResult;
use crate::rng::Rng;
use crate::types::{
    ClusterConfig, Entry, EntryKind, HardState, LogIndex, NodeId, ReadState, Role, SnapshotMeta, SoftState,
    Term,
};

/// The configuration a configuration-change entry results in: the one it carries (its
/// proposer computed it), else its steps applied to `current` (entries of encoding version 1).
fn next_config(data: &[u8], current: &ClusterConfig) -> Result<ClusterConfig, ConfChangeError> {
    match ConfChange::decode_entry(data)? {
        (_, Some(config)) if !config.voters.is_empty() => Ok(config),
        (_, Some(_)) => Err(ConfChangeError::NoVoters),
        (cc, None) => cc.apply(current),
    }
}

/// What a node restarts from: exactly what its storage holds durably.
#[derive(Clone, Debug, Default)]
pub struct InitialState {
    pub hard_state: HardState,
    /// The membership when no snapshot (or a snapshot without it) says otherwise; for a new
    /// cluster, the initial voters.
    pub config: ClusterConfig,
    /// The latest durable snapshot, if any; its config overrides `config`.
    pub snapshot: Option<SnapshotMeta>,
    /// Durable log entries following the snapshot, contiguous. Configuration-change entries
    /// among them are applied, in order, on top of the snapshot's (or `config`): a member
    /// restarting in the middle of a change recovers the configuration in force.
    pub entries: Vec<Entry>,
}

/// Output of the core: what the driver must do, in the order documented on each field and in
/// the crate docs (the ordering contract).
#[derive(Clone, Debug, Default)]
pub struct Ready {
    /// Role, leader or term changed since the last Ready. Informational.
    pub soft_state: Option<SoftState>,
    /// A snapshot received from the leader to install: persist it and restore the state
    /// machine from it BEFORE persisting `entries` and applying `committed_entries`.
    pub snapshot: Option<SnapshotMeta>,
    /// Entries to append to durable storage. If the first index is at or below the storage's
    /// last index, the storage first discards its suffix from that index (a conflict).
    /// Persist BEFORE `hard_state`.
    pub entries: Vec<Entry>,
    /// Term, vote and commit to persist, after `entries`.
    pub hard_state: Option<HardState>,
    /// May be sent right away, before or while persisting this Ready (the leader's
    /// AppendEntries, heartbeats, snapshots, read-index traffic; thesis §10.2.1).
    pub messages: Vec<Message>,
    /// Must be sent only AFTER `snapshot`, `entries` and `hard_state` of this Ready (and of
    /// every earlier Ready) are durable: vote grants, append acknowledgements, vote requests.
    pub messages_after_persist: Vec<Message>,
    /// Committed entries that are durable locally, to apply in order. Each is handed out
    /// exactly once.
    pub committed_entries: Vec<Entry>,
    /// ReadIndex requests that completed: serve each once the applied index reaches `index`.
    pub read_states: Vec<ReadState>,
    /// ReadIndex requests that failed (leadership lost or unknown); retry elsewhere.
    pub failed_reads: Vec<u64>,
}

impl Ready {
    /// What to report with [`Raft::persisted`] once this Ready's `snapshot` and `entries`
    /// are durable; `None` when there is nothing of the log to acknowledge.
    pub fn persist_target(&self) -> Option<(LogIndex, Term)> {
        if let Some(last) = self.entries.last() {
            return Some((last.index, last.term));
        }
        self.snapshot.as_ref().map(|s| (s.index, s.term))
    }

    /// Whether this Ready asks for anything to be made durable.
    pub fn must_persist(&self) -> bool {
        self.snapshot.is_some() || !self.entries.is_empty() || self.hard_state.is_some()
    }

    /// Whether persisting this Ready needs a sync, given the term and vote already durable
    /// (`durable`): a snapshot, entries, or a new term or vote do. A hard state that differs
    /// only in `commit` may be written lazily (with the next sync, or never): the commit
    /// index is not required for safety, and a restarted node recovers it clamped to its
    /// durable log. `messages_after_persist` of such a Ready may leave once every earlier
    /// Ready is durable.
    pub fn must_sync(&self, durable: &HardState) -> bool {
        self.snapshot.is_some()
            || !self.entries.is_empty()
            || self.hard_state.as_ref().is_some_and(|h| h.needs_sync_after(durable))
    }
}

/// A proposal that was not accepted.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ProposeError {
    /// Only the leader accepts proposals; this is who this node believes leads, if anyone.
    NotLeader { leader_hint: Option<NodeId> },
    /// The leader's uncommitted tail is over `uncommitted_bytes_max`: retry later.
    TooManyUncommitted,
    /// Nothing to propose.
    Empty,
    /// A configuration change is appended but not yet committed (or a joint configuration
    /// not yet left): one change at a time.
    ConfChangeInProgress,
    /// This leader has not yet committed an entry of its own term; until it has, it may not
    /// propose a configuration change (the single-server change bug, Ongaro 2015).
    NoCommitInTerm,
    /// The change does not apply to the current configuration.
    InvalidConfChange(ConfChangeError),
    /// A leadership transfer is in progress: proposals wait until it completes or aborts.
    TransferInProgress,
    /// The change promotes a learner whose log is not yet close to the leader's (its match
    /// index is below 90% of the leader's last index, as etcd's `isLearnerReady`).
    LearnerNotReady(NodeId),
}

impl std::fmt::Display for ProposeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ProposeError::NotLeader { leader_hint: Some(id) } => {
                write!(f, "not the leader; the leader is {id}")
            }
            ProposeError::NotLeader { leader_hint: None } => write!(f, "not the leader; no leader known"),
            ProposeError::TooManyUncommitted => write!(f, "too many uncommitted proposals"),
            ProposeError::Empty => write!(f, "empty proposal"),
            ProposeError::ConfChangeInProgress => write!(f, "a configuration change is already in progress"),
            ProposeError::NoCommitInTerm => {
                write!(f, "the leader has not yet committed an entry of its term; retry shortly")
            }
            ProposeError::InvalidConfChange(e) => write!(f, "invalid configuration change: {e}"),
            ProposeError::TransferInProgress => write!(f, "leadership transfer in progress"),
            ProposeError::LearnerNotReady(id) => {
                write!(f, "learner {id} is not yet in sync with the leader; retry once it has caught up")
            }
        }
    }
}

impl std::error::Error for ProposeError {}

/// A ReadIndex request that could not be queued.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ReadError {
    NotLeader {
        leader_hint: Option<NodeId>,
    },
    TooManyPending,
    /// A read with this context is already waiting on this node: contexts must be unique
    /// among the reads in flight (a reply is matched to its read by context and term).
    DuplicateContext {
        context: u64,
    },
}

impl std::fmt::Display for ReadError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ReadError::NotLeader { .. } => write!(f, "no leader known to serve the read"),
            ReadError::TooManyPending => write!(f, "too many pending reads"),
            ReadError::DuplicateContext { context } => {
                write!(f, "a read with context {context} is already pending")
            }
        }
    }
}

impl std::error::Error for ReadError {}

/// A leadership transfer that cannot start.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TransferError {
    /// Only the leader transfers leadership.
    NotLeader { leader_hint: Option<NodeId> },
    /// The target is this node.
    ToSelf,
    /// The target is not a voter of the current configuration.
    NotAVoter(NodeId),
}

impl std::fmt::Display for TransferError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            TransferError::NotLeader { .. } => write!(f, "only the leader can transfer leadership"),
            TransferError::ToSelf => write!(f, "this node already leads"),
            TransferError::NotAVoter(id) => write!(f, "node {id} is not a voter"),
        }
    }
}

impl std::error::Error for TransferError {}

/// A message that the core refuses to process (it is not a protocol outcome: a correct peer
/// never sends it).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StepError {
    WrongRecipient { to: NodeId },
    UnknownSender { from: NodeId },
}

impl std::fmt::Display for StepError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            StepError::WrongRecipient { to } => write!(f, "message addressed to node {to}"),
            StepError::UnknownSender { from } => write!(f, "message from unknown node {from}"),
        }
    }
}

impl std::error::Error for StepError {}

/// Known consensus bugs that can be planted to prove the simulator's checkers catch them.
/// Only with the `planted-bugs` feature.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum PlantedBug {
    /// Commit an earlier term's entry by counting replicas (violates §5.4.2, Figure 8).
    CommitPreviousTermByCount,
    /// Send a vote grant before the vote is durable.
    VoteBeforeDurable,
    /// On AppendEntries, truncate the log after `prev_log_index` even where it matches.
    TruncateMatchingPrefix,
    /// Grant votes without the up-to-date log check (§5.4.1).
    SkipUpToDateCheck,
    /// The classic Figure 2 bug: a follower advances its commit index to
    /// `min(leader_commit, last index)` instead of `min(leader_commit, index of the last new
    /// entry)`, so an uncommitted, conflicting tail past what the message proved can commit.
    /// Planted in both places that apply this rule: the follower's AppendEntries handling,
    /// and the heartbeat's commit, which the leader caps at the follower's match index on
    /// the follower's behalf (a heartbeat carries no consistency check).
    FollowerCommitToLastIndex,
    /// The leader counts its own log up to its last index towards a quorum before the driver
    /// reported it durable ([`Raft::persisted`]): an entry can commit on fewer durable copies
    /// than a majority, and be lost when the leader crashes.
    LeaderCountsUnsyncedSelf,
    /// A leader proposes a configuration change before committing an entry of its term.
    NoCurrentTermBarrier,
    /// A leader accepts a second configuration change while one is uncommitted.
    TwoChangesInFlight,
    /// A configuration takes effect when its entry commits instead of when it is appended.
    ConfigAppliedAtCommit,
    /// The leader keeps counting the voters the latest change removed towards its quorum.
    RemovedMemberCounted,
    /// A member accepts `TimeoutNow` from any member, not only from its term's leader.
    TimeoutNowFromAnyone,
}

/// A ReadIndex request waiting on the leader.
#[derive(Clone, Debug)]
struct PendingRead {
    context: u64,
    /// `None` for a local request, else the follower that forwarded it.
    from: Option<NodeId>,
    index: LogIndex,
    /// The heartbeat round that must be acknowledged by a quorum.
    round: u64,
}

/// A Raft node's consensus state machine. See the crate docs for how to drive it.
#[derive(Debug)]
pub struct Raft {
    config: Config,
    id: NodeId,
    term: Term,
    voted_for: Option<NodeId>,
    role: Role,
    leader: Option<NodeId>,
    log: RaftLog,
    /// The configuration in force: that of the last configuration entry in the log (applied
    /// when appended, not when committed), else `base_config`.
    cluster: ClusterConfig,
    /// The configuration at the log's compaction point (from the snapshot or the initial
    /// state).
    base_config: ClusterConfig,
    /// Configuration entries in the retained log, in order: index, term, resulting config.
    config_entries: Vec<(LogIndex, Term, ClusterConfig)>,
    /// The latest snapshot the application reported (sent to followers that lag behind the
    /// log), or the one restored from.
    snapshot: Option<SnapshotMeta>,
    progress: BTreeMap<NodeId, Progress>,
    votes: BTreeMap<NodeId, bool>,
    election_elapsed: u32,
    heartbeat_elapsed: u32,
    randomized_election_timeout: u32,
    rng: Rng,

    // Leader state.
    pending_broadcast: bool,
    /// The member leadership is being handed to, and the ticks since the transfer began.
    lead_transferee: Option<NodeId>,
    transfer_elapsed: u32,
    uncommitted_bytes: u64,
    /// Reads waiting for a quorum to acknowledge their round, in round order.
    pending_reads: VecDeque<PendingRead>,
    /// Reads waiting for the leader to commit an entry of its own term.
    reads_awaiting_commit: Vec<(u64, Option<NodeId>)>,
    /// The round the next batch of reads joins; `read_round_next - 1` was broadcast.
    read_round_next: u64,

    // Follower state.
    /// Reads this node forwarded to the leader: context -> the term they were asked in. A
    /// `ReadIndexResponse` is accepted only for a context here and from that term; all of
    /// them fail when the term changes.
    forwarded_reads: BTreeMap<u64, Term>,

    // Output buffers.
    messages: Vec<Message>,
    messages_after_persist: Vec<Message>,
    read_states: Vec<ReadState>,
    failed_reads: Vec<u64>,
    pending_snapshot: Option<SnapshotMeta>,
    last_soft_state: SoftState,
    last_hard_state: HardState,

    apply_bytes_max: u64,
    /// A term this node won at once (it is the only voter), before its term and vote were
    /// on disk: until an entry of that term is durable, every message waits for the persist
    /// of its Ready, so that a crash that loses the term leaves no trace of it on any peer
    /// (the node may win the same term again, with other entries).
    unsynced_term: Option<Term>,
    #[cfg(feature = "planted-bugs")]
    planted_bug: Option<PlantedBug>,
}

impl Raft {
    /// Creates a node from its durable state. A new cluster's members all start with an empty
    /// [`InitialState`] whose `config` lists the voters.
    pub fn new(config: Config, initial: InitialState) -> Result<Raft, ConfigError> {
        config.validate()?;
        let cluster = initial.snapshot.as_ref().map_or(initial.config.clone(), |s| s.config.clone());
        if cluster.voters.is_empty() {
            return Err(ConfigError("the cluster configuration has no voters".into()));
        }
        if let Some(first) = initial.entries.first() {
            let expected = initial.snapshot.as_ref().map_or(LogIndex(1), |s| s.index + 1);
            if first.index != expected {
                return Err(ConfigError(format!(
                    "the log does not continue from the snapshot: first log entry has index {} but {} was expected",
                    first.index, expected
                )));
            }
            let floor = initial.snapshot.as_ref().map_or(Term(1), |s| s.term.max(Term(1)));
            if first.term < floor {
                return Err(ConfigError(format!(
                    "the log does not continue from the snapshot: first log entry {} has term {} below {}",
                    first.index, first.term, floor
                )));
            }
        }
        for pair in initial.entries.windows(2) {
            if pair[1].index != pair[0].index + 1 || pair[1].term < pair[0].term {
                return Err(ConfigError(format!(
                    "log entries are not contiguous with non-decreasing terms at index {}",
                    pair[1].index
                )));
            }
        }
        let mut initial = initial;
        let last_term = initial.entries.last().map(|e| e.term).or(initial.snapshot.as_ref().map(|s| s.term));
        if let Some(last_term) = last_term.filter(|t| *t > initial.hard_state.term) {
            // A crash made a Ready's entries durable but not its hard state. The newer term
            // was never acted on (nothing waiting on that Ready left the node), and no vote
            // was granted in it, so adopting it without a vote is safe.
            initial.hard_state.term = last_term;
            initial.hard_state.voted_for = None;
        }
        let base_config = cluster.clone();
        let mut config_entries = Vec::new();
        let mut current = base_config.clone();
        for e in initial.entries.iter().filter(|e| e.kind == EntryKind::ConfigChange) {
            let next = next_config(&e.data, &current).map_err(|err| {
                ConfigError(format!("configuration change at index {} cannot be applied: {err}", e.index))
            })?;
            config_entries.push((e.index, e.term, next.clone()));
            current = next;
        }
        let cluster = current;
        let log = RaftLog::restore(initial.snapshot.as_ref(), initial.entries, initial.hard_state.commit);
        let soft = SoftState { role: Role::Follower, leader: None, term: initial.hard_state.term };
        let mut hard = initial.hard_state;
        hard.commit = log.commit();
        let mut raft = Raft {
            id: config.id,
            term: initial.hard_state.term,
            voted_for: initial.hard_state.voted_for,
            role: Role::Follower,
            leader: None,
            log,
            cluster,
            base_config,
            config_entries,
            snapshot: initial.snapshot,
            progress: BTreeMap::new(),
            votes: BTreeMap::new(),
            election_elapsed: 0,
            heartbeat_elapsed: 0,
            randomized_election_timeout: config.election_timeout_ticks,
            rng: crate::rng::seeded(config.seed),
            pending_broadcast: false,
            lead_transferee: None,
            transfer_elapsed: 0,
            uncommitted_bytes: 0,
            pending_reads: VecDeque::new(),
            reads_awaiting_commit: Vec::new(),
            read_round_next: 1,
            forwarded_reads: BTreeMap::new(),
            messages: Vec::new(),
            messages_after_persist: Vec::new(),
            read_states: Vec::new(),
            failed_reads: Vec::new(),
            pending_snapshot: None,
            last_soft_state: soft,
            last_hard_state: hard,
            apply_bytes_max: 64 << 20,
            unsynced_term: None,
            #[cfg(feature = "planted-bugs")]
            planted_bug: None,
            config,
        };
        raft.reset_election_timeout();
        Ok(raft)
    }

    /// Plants a known bug (test builds of the simulator only).
    #[cfg(feature = "planted-bugs")]
    pub fn plant_bug(&mut self, bug: Option<PlantedBug>) {
        self.planted_bug = bug;
    }

    /// Whether `bug` is planted; always false without the `planted-bugs` feature, so a
    /// shipping build compiles the buggy paths out.
    #[cfg(feature = "planted-bugs")]
    fn bug(&self, bug: PlantedBug) -> bool {
        self.planted_bug == Some(bug)
    }

    #[cfg(not(feature = "planted-bugs"))]
    fn bug(&self, _bug: PlantedBug) -> bool {
        false
    }

    // ----- observation -----

    pub fn id(&self) -> NodeId {
        self.id
    }
    pub fn term(&self) -> Term {
        self.term
    }
    pub fn role(&self) -> Role {
        self.role
    }
    pub fn is_leader(&self) -> bool {
        self.role == Role::Leader
    }
    pub fn leader(&self) -> Option<NodeId> {
        self.leader
    }
    pub fn voted_for(&self) -> Option<NodeId> {
        self.voted_for
    }
    pub fn commit_index(&self) -> LogIndex {
        self.log.commit()
    }
    pub fn applied_index(&self) -> LogIndex {
        self.log.applied()
    }
    pub fn persisted_index(&self) -> LogIndex {
        self.log.persisted()
    }
    pub fn first_index(&self) -> LogIndex {
        self.log.first_index()
    }
    pub fn last_index(&self) -> LogIndex {
        self.log.last_index()
    }
    /// The term of the entry at `index`, if retained (or the compaction point's term).
    pub fn log_term(&self, index: LogIndex) -> Option<Term> {
        self.log.term(index)
    }
    /// The entry at `index`, if retained.
    pub fn log_entry(&self, index: LogIndex) -> Option<&Entry> {
        self.log.entry(index)
    }
    pub fn cluster_config(&self) -> &ClusterConfig {
        &self.cluster
    }
    /// The latest snapshot this node knows of (its own or installed).
    pub fn snapshot_meta(&self) -> Option<&SnapshotMeta> {
        self.snapshot.as_ref()
    }
    /// The leader's view of a follower, for observability.
    pub fn progress(&self, id: NodeId) -> Option<(LogIndex, LogIndex, ProgressState)> {
        self.progress.get(&id).map(|p| (p.match_index, p.next_index, p.state))
    }
    pub fn hard_state(&self) -> HardState {
        HardState { term: self.term, voted_for: self.voted_for, commit: self.log.commit() }
    }
    pub fn soft_state(&self) -> SoftState {
        SoftState { role: self.role, leader: self.leader, term: self.term }
    }

    // ----- inputs -----

    /// Advances logical time by one tick.
    pub fn tick(&mut self) {
        match self.role {
            Role::Leader => self.tick_leader(),
            _ => self.tick_election(),
        }
        self.check_invariants();
    }

    /// Starts an election now (for bootstrapping or tests), as if the timeout had expired.
    pub fn campaign(&mut self) {
        if self.role != Role::Leader && self.may_campaign() {
            self.start_election();
        }
    }

    /// Proposes one command. On the leader it is appended to the log and `(term, index)` is
    /// returned: the proposal committed iff the entry later applied at `index` has `term`.
    pub fn propose(&mut self, data: Bytes) -> Result<(Term, LogIndex), ProposeError> {
        self.propose_batch(std::iter::once(data)).map(|(t, _, last)| (t, last))
    }

    /// Proposes several commands as consecutive entries; returns the term and the first and
    /// last index assigned.
    pub fn propose_batch(
        &mut self,
        data: impl IntoIterator<Item = Bytes>,
    ) -> Result<(Term, LogIndex, LogIndex), ProposeError> {
        if self.role != Role::Leader {
            return Err(ProposeError::NotLeader { leader_hint: self.leader });
        }
        if self.lead_transferee.is_some() {
            return Err(ProposeError::TransferInProgress);
        }
        if self.uncommitted_bytes > self.config.uncommitted_bytes_max {
            return Err(ProposeError::TooManyUncommitted);
        }
        let first = self.log.last_index() + 1;
        for data in data {
            self.append_entry(EntryKind::Normal, data);
        }
        let last = self.log.last_index();
        if last < first {
            return Err(ProposeError::Empty);
        }
        self.pending_broadcast = true;
        Ok((self.term, first, last))
    }

    /// Proposes commands on the leader, or forwards them to the leader this node knows of.
    /// Returns the term and index range when this node leads, `None` when forwarded (the
    /// caller then learns the outcome by applying, for example by a request id in the data).
    pub fn propose_or_forward(
        &mut self,
        data: Vec<Bytes>,
    ) -> Result<Option<(Term, LogIndex, LogIndex)>, ProposeError> {
        if data.is_empty() {
            return Err(ProposeError::Empty);
        }
        match (self.role, self.leader) {
            (Role::Leader, _) => self.propose_batch(data).map(Some),
            (_, Some(leader)) => {
                self.send(leader, MessageBody::Propose { entries: data });
                Ok(None)
            }
            (_, None) => Err(ProposeError::NotLeader { leader_hint: None }),
        }
    }

    /// Proposes a membership change (leader only); returns the `(term, index)` of its entry.
    ///
    /// The new configuration applies as soon as the entry is appended (on every member, when
    /// it appends it), not when it commits, and reverts if the entry is truncated. Refused
    /// while another change is uncommitted or a joint configuration is not yet left
    /// ([`ProposeError::ConfChangeInProgress`]), until this leader has committed an entry of
    /// its own term ([`ProposeError::NoCommitInTerm`]), and when it does not apply to the
    /// current configuration. A change of more than one voter enters joint consensus; the
    /// leader leaves it by itself once the joint entry commits. A leader that removes itself
    /// keeps leading until the change commits, then steps down.
    pub fn propose_conf_change(&mut self, change: &ConfChange) -> Result<(Term, LogIndex), ProposeError> {
        if self.role != Role::Leader {
            return Err(ProposeError::NotLeader { leader_hint: self.leader });
        }
        if self.lead_transferee.is_some() {
            return Err(ProposeError::TransferInProgress);
        }
        let pending = self.config_entries.last().is_some_and(|(i, _, _)| *i > self.log.commit());
        if (pending || (!self.cluster.voters_outgoing.is_empty() && !change.steps.is_empty()))
            && !self.bug(PlantedBug::TwoChangesInFlight)
        {
            return Err(ProposeError::ConfChangeInProgress);
        }
        if self.log.term(self.log.commit()) != Some(self.term) && !self.bug(PlantedBug::NoCurrentTermBarrier)
        {
            return Err(ProposeError::NoCommitInTerm);
        }
        let next = change.apply(&self.cluster).map_err(ProposeError::InvalidConfChange)?;
        let last = self.log.last_index();
        for step in &change.steps {
            if let ConfChangeStep::AddVoter(id) = step
                && self.cluster.learners.contains(id)
            {
                let matched = self.progress.get(id).map_or(LogIndex(0), |p| p.match_index);
                // etcd's readyPercent: the learner holds at least 90% of the leader's log.
                if matched.0.saturating_mul(10) < last.0.saturating_mul(9) {
                    return Err(ProposeError::LearnerNotReady(*id));
                }
            }
        }
        self.append_config(change.encode_with_config(&next), next);
        self.pending_broadcast = true;
        Ok((self.term, self.log.last_index()))
    }

    /// Hands leadership to `target` (thesis §3.10): the leader stops accepting proposals,
    /// brings the target's log up to date, then sends it `TimeoutNow`, and the target wins an
    /// election at once (its vote requests override the voters' leader lease). The transfer
    /// aborts, and the leader accepts proposals again, if it has not completed within one
    /// election timeout. A new request for another target replaces the one in progress.
    pub fn transfer_leader(&mut self, target: NodeId) -> Result<(), TransferError> {
        if self.role != Role::Leader {
            return Err(TransferError::NotLeader { leader_hint: self.leader });
        }
        if target == self.id {
            return Err(TransferError::ToSelf);
        }
        if !self.cluster.voters.contains(&target) {
            return Err(TransferError::NotAVoter(target));
        }
        if self.lead_transferee == Some(target) {
            return Ok(());
        }
        self.lead_transferee = Some(target);
        self.transfer_elapsed = 0;
        if self.progress.get(&target).is_some_and(|p| p.match_index == self.log.last_index()) {
            self.send(target, MessageBody::TimeoutNow);
        } else {
            self.send_append(target, true);
        }
        Ok(())
    }

    /// Leader: the voter (other than itself) whose log matches the most of the leader's, the
    /// natural target of a leadership transfer; ties go to the lowest id.
    pub fn best_transferee(&self) -> Option<NodeId> {
        if self.role != Role::Leader {
            return None;
        }
        self.cluster
            .voters
            .iter()
            .filter(|id| **id != self.id)
            .map(|id| (self.progress.get(id).map_or(LogIndex(0), |p| p.match_index), *id))
            .max_by(|a, b| a.0.cmp(&b.0).then(b.1.cmp(&a.1)))
            .map(|(_, id)| id)
    }

    /// The member a leadership transfer in progress hands over to.
    pub fn lead_transferee(&self) -> Option<NodeId> {
        self.lead_transferee
    }

    /// The index of the last configuration entry that is appended but not committed, if any.
    pub fn pending_conf_index(&self) -> Option<LogIndex> {
        self.config_entries.last().map(|(i, _, _)| *i).filter(|i| *i > self.log.commit())
    }

    /// Requests a linearizable read point (thesis §6.4). The result arrives in
    /// [`Ready::read_states`] (or [`Ready::failed_reads`]) with the same `context`.
    ///
    /// On a follower the request is forwarded to the leader of its current term; the answer
    /// is accepted only from that term. Every forwarded read still waiting fails (in
    /// [`Ready::failed_reads`]) when this node's term changes. `context` must be unique among
    /// this node's reads in flight, and should be unique across restarts (a reply to a read
    /// sent before a crash may arrive after it).
    pub fn read_index(&mut self, context: u64) -> Result<(), ReadError> {
        match self.role {
            Role::Leader => self.leader_read(context, None),
            _ => match self.leader {
                Some(leader) => {
                    if self.forwarded_reads.contains_key(&context) {
                        return Err(ReadError::DuplicateContext { context });
                    }
                    if self.forwarded_reads.len() >= self.config.pending_reads_max {
                        return Err(ReadError::TooManyPending);
                    }
                    self.forwarded_reads.insert(context, self.term);
                    self.send(leader, MessageBody::ReadIndexRequest { context });
                    Ok(())
                }
                None => Err(ReadError::NotLeader { leader_hint: None }),
            },
        }
    }

    /// Handles a message from a peer.
    pub fn step(&mut self, m: Message) -> Result<(), StepError> {
        if m.to != self.id {
            return Err(StepError::WrongRecipient { to: m.to });
        }
        let removed_but_counted =
            self.bug(PlantedBug::RemovedMemberCounted) && self.previous_config().contains(m.from);
        // The leader of our term stays the leader until it steps down, also once a change
        // that removes it is in force here: its commit index and `TimeoutNow` still count.
        let our_leader = self.leader == Some(m.from) && m.term == self.term;
        // Thesis §4.1: requests are processed without consulting the configuration. A member
        // that has not yet appended the entry adding a server must still grant it its vote
        // and take its entries as leader: the configuration that entry put in force may be
        // able to elect a leader only with this member's vote. (Disruption by removed
        // members is kept off by PreVote and the CheckQuorum lease, by the leader's
        // heartbeats until their removal commits, and by the transport, which refuses
        // members the applied configuration removed.)
        let request = matches!(
            m.body,
            MessageBody::RequestVote { .. }
                | MessageBody::AppendEntries { .. }
                | MessageBody::Heartbeat { .. }
                | MessageBody::InstallSnapshot { .. }
        );
        // A leader still replicates to the members its uncommitted configuration removed
        // (see `become_leader`), so it takes their answers (they count towards no quorum).
        let replicated_to = self.role == Role::Leader && self.progress.contains_key(&m.from);
        if (!self.cluster.contains(m.from)
            && !removed_but_counted
            && !our_leader
            && !request
            && !replicated_to)
            || m.from == self.id
        {
            return Err(StepError::UnknownSender { from: m.from });
        }
        if self.step_term(&m) {
            self.step_body(m);
        }
        self.config_at_commit_bug();
        self.check_invariants();
        Ok(())
    }

    /// The driver made everything up to `(index, term)` durable (see
    /// [`Ready::persist_target`]).
    pub fn persisted(&mut self, index: LogIndex, term: Term) {
        if self.log.persisted_to(index, term) && self.role == Role::Leader {
            self.maybe_commit();
        }
        self.config_at_commit_bug();
        self.check_invariants();
    }

    /// The application applied every committed entry up to `index`.
    pub fn applied(&mut self, index: LogIndex) {
        self.log.applied_to(index);
        self.check_invariants();
    }

    /// The application took a snapshot of its state machine at `index` (applied). The core
    /// remembers it to catch up lagging followers, and discards log entries up to
    /// `compact_to` (at most `index`; keep a tail so slightly lagging followers are served
    /// from the log).
    pub fn snapshot_taken(&mut self, index: LogIndex, compact_to: LogIndex) -> Result<SnapshotMeta, String> {
        if index > self.log.applied() {
            return Err(format!("snapshot index {index} is beyond applied {}", self.log.applied()));
        }
        let term = self.log.term(index).ok_or_else(|| format!("no entry at snapshot index {index}"))?;
        let meta = SnapshotMeta { index, term, config: self.config_at(index) };
        if self.snapshot.as_ref().is_none_or(|s| s.index < index) {
            self.snapshot = Some(meta.clone());
        }
        let compact_to = self.catch_up_floor(compact_to.min(index));
        self.log.compact(compact_to)?;
        let base = self.config_at(self.log.first_index() - 1);
        self.config_entries.retain(|(i, _, _)| *i >= self.log.first_index());
        self.base_config = base;
        Ok(meta)
    }

    /// Leader: lowers `compact_to` to keep the entries that live followers still need from
    /// the log: those past the match of a follower it streams to, or past the index of a
    /// snapshot in flight, which the follower will need next. Followers silent for an
    /// election timeout, and those probed, hold nothing back. What is kept is bounded by
    /// [`Config::catch_up_bytes_max`] and by the round trips that sending it takes at the
    /// configured flow control ([`Config::catch_up_round_trips_max`]): a follower further
    /// behind than that is cut off and catches up by snapshot, which is then the cheaper way.
    fn catch_up_floor(&self, compact_to: LogIndex) -> LogIndex {
        if self.role != Role::Leader {
            return compact_to;
        }
        let live = self.config.election_timeout_ticks;
        let first_kept = self.log.first_index() - 1;
        let needs = self.progress.values().filter(|p| p.idle_ticks < live).filter_map(|p| match p.state {
            ProgressState::Replicate => Some(p.match_index),
            ProgressState::Snapshot { pending_index } => Some(pending_index),
            ProgressState::Probe => None,
        });
        let Some(lowest) = needs.clone().min() else { return compact_to };
        let lowest = lowest.max(first_kept);
        if lowest >= compact_to {
            return compact_to;
        }
        let budget = self.catch_up_budget_floor(lowest, compact_to);
        // The lowest need within the budget; the followers below it get a snapshot.
        needs
            .map(|n| n.max(first_kept))
            .filter(|&n| n >= budget && n < compact_to)
            .min()
            .unwrap_or(compact_to)
    }

    /// The lowest index `b` in `[lowest, compact_to]` such that keeping the entries in
    /// `(b, compact_to]` stays within the catch-up budget: their bytes, and the round trips
    /// that streaming them takes (AppendEntries packed as [`Log::slice`] packs them, up to
    /// `inflight_messages_max` in flight).
    fn catch_up_budget_floor(&self, lowest: LogIndex, compact_to: LogIndex) -> LogIndex {
        let (bytes_max, per_message) = (self.config.catch_up_bytes_max, self.config.append_bytes_max);
        let messages_max =
            self.config.catch_up_round_trips_max.saturating_mul(self.config.inflight_messages_max as u64);
        let (mut bytes, mut messages, mut in_message) = (0u64, 0u64, 0u64);
        let mut floor = compact_to;
        for entry in self.log.iter_range(lowest, compact_to).rev() {
            let size = entry.size_bytes();
            bytes += size;
            if messages == 0 || in_message + size > per_message {
                messages += 1;
                in_message = size;
            } else {
                in_message += size;
            }
            if bytes > bytes_max || messages > messages_max {
                break;
            }
            floor = entry.index - 1;
        }
        floor
    }

    /// The driver's report on a snapshot transfer to `to` started by an InstallSnapshot.
    pub fn report_snapshot(&mut self, to: NodeId, success: bool) {
        if self.role != Role::Leader {
            return;
        }
        if let Some(pr) = self.progress.get_mut(&to)
            && matches!(pr.state, ProgressState::Snapshot { .. })
        {
            pr.become_probe();
            // After a failure wait for the next heartbeat response before retrying.
            pr.probe_sent = !success;
        }
    }

    /// The transport could not reach `to`: stop streaming optimistically.
    pub fn report_unreachable(&mut self, to: NodeId) {
        if self.role == Role::Leader
            && let Some(pr) = self.progress.get_mut(&to)
            && pr.state == ProgressState::Replicate
        {
            pr.become_probe();
        }
    }

    /// Whether [`Raft::ready`] would return anything.
    pub fn has_ready(&self) -> bool {
        self.pending_broadcast
            || !self.messages.is_empty()
            || !self.messages_after_persist.is_empty()
            || !self.read_states.is_empty()
            || !self.failed_reads.is_empty()
            || self.pending_snapshot.is_some()
            || self.log.has_unpersisted()
            || self.log.has_committed_to_apply()
            || self.soft_state() != self.last_soft_state
            || self.hard_state() != self.last_hard_state
            || self.pending_reads.back().is_some_and(|r| r.round == self.read_round_next)
    }

    /// Collects everything the driver must do now. Call after any input; then follow the
    /// ordering contract.
    pub fn ready(&mut self) -> Ready {
        if self.role == Role::Leader {
            if self.pending_broadcast {
                self.pending_broadcast = false;
                self.broadcast_append();
            }
            if self.pending_reads.back().is_some_and(|r| r.round == self.read_round_next) {
                self.broadcast_heartbeat_round();
            }
        }
        let mut rd = Ready {
            snapshot: self.pending_snapshot.take(),
            entries: self.log.take_unpersisted(),
            messages: std::mem::take(&mut self.messages),
            messages_after_persist: std::mem::take(&mut self.messages_after_persist),
            committed_entries: self.log.take_committed(self.apply_bytes_max),
            read_states: std::mem::take(&mut self.read_states),
            failed_reads: std::mem::take(&mut self.failed_reads),
            ..Ready::default()
        };
        let soft = self.soft_state();
        if soft != self.last_soft_state {
            self.last_soft_state = soft;
            rd.soft_state = Some(soft);
        }
        let hard = self.hard_state();
        if hard != self.last_hard_state {
            self.last_hard_state = hard;
            rd.hard_state = Some(hard);
        }
        if self.unsynced_term.is_some_and(|t| t == self.term) {
            if self.log.term(self.log.persisted()) == Some(self.term) {
                self.unsynced_term = None;
            } else {
                let mut delayed = std::mem::take(&mut rd.messages);
                delayed.append(&mut rd.messages_after_persist);
                rd.messages_after_persist = delayed;
            }
        }
        if self.bug(PlantedBug::VoteBeforeDurable) {
            let (grants, rest): (Vec<Message>, Vec<Message>) =
                rd.messages_after_persist.into_iter().partition(|m| {
                    matches!(m.body, MessageBody::RequestVoteResponse { pre_vote: false, granted: true })
                });
            rd.messages.extend(grants);
            rd.messages_after_persist = rest;
        }
        rd
    }

    // ----- internals: time -----

    fn reset_election_timeout(&mut self) {
        let t = self.config.election_timeout_ticks as u64;
        self.randomized_election_timeout = self.rng.range(t, 2 * t) as u32;
    }

    fn tick_election(&mut self) {
        self.election_elapsed += 1;
        if self.election_elapsed >= self.randomized_election_timeout && self.may_campaign() {
            self.start_election();
        }
    }

    /// Whether this node may start an election: it votes in the configuration in force, or
    /// that configuration removes it but is not committed yet. Then it may be the only one
    /// left that holds the entry (say the leader that proposed it crashed before the entry
    /// was on its own disk): the remaining voters, whose logs are shorter, cannot win
    /// without its vote, so it campaigns, counting votes in the configuration that removes
    /// it, and once leader commits its removal and steps down.
    fn may_campaign(&self) -> bool {
        self.cluster.is_voter(self.id)
            || (self.pending_conf_index().is_some() && self.previous_config().is_voter(self.id))
    }

    fn tick_leader(&mut self) {
        self.heartbeat_elapsed += 1;
        self.election_elapsed += 1;
        for pr in self.progress.values_mut() {
            pr.idle_ticks = pr.idle_ticks.saturating_add(1);
        }
        if self.lead_transferee.is_some() {
            self.transfer_elapsed += 1;
            if self.transfer_elapsed >= self.config.election_timeout_ticks {
                // The target did not take over in time: resume leading.
                self.lead_transferee = None;
            }
        }
        if self.election_elapsed >= self.config.election_timeout_ticks {
            self.election_elapsed = 0;
            if self.config.check_quorum {
                let id = self.id;
                let progress = &self.progress;
                let active = self
                    .cluster
                    .has_quorum(&|n| n == id || progress.get(&n).is_some_and(|p| p.recent_active));
                for pr in self.progress.values_mut() {
                    pr.recent_active = false;
                }
                if !active {
                    self.become_follower(self.term, None);
                    return;
                }
            }
            // Give up on snapshot transfers that made no progress for a whole timeout.
            for pr in self.progress.values_mut() {
                if let ProgressState::Snapshot { .. } = pr.state {
                    pr.snapshot_ticks += 1;
                    if pr.snapshot_ticks >= 2 {
                        pr.become_probe();
                    }
                }
            }
        }
        if self.heartbeat_elapsed >= self.config.heartbeat_interval_ticks {
            self.heartbeat_elapsed = 0;
            self.broadcast_heartbeat();
        }
    }

    // ----- internals: roles -----

    fn become_follower(&mut self, term: Term, leader: Option<NodeId>) {
        assert!(term >= self.term, "term must never decrease");
        let was_leader = self.role == Role::Leader;
        if term > self.term {
            self.term = term;
            self.voted_for = None;
            self.fail_forwarded_reads();
        }
        self.role = Role::Follower;
        self.leader = leader;
        self.election_elapsed = 0;
        self.votes.clear();
        self.reset_election_timeout();
        if was_leader {
            self.abandon_leadership();
        }
    }

    fn abandon_leadership(&mut self) {
        self.pending_broadcast = false;
        self.lead_transferee = None;
        self.uncommitted_bytes = 0;
        let reads: Vec<(u64, Option<NodeId>)> = self
            .pending_reads
            .drain(..)
            .map(|r| (r.context, r.from))
            .chain(self.reads_awaiting_commit.drain(..))
            .collect();
        for (context, from) in reads {
            match from {
                None => self.failed_reads.push(context),
                Some(f) => self.send(f, MessageBody::ReadIndexResponse { context, index: None }),
            }
        }
    }

    fn start_election(&mut self) {
        if self.config.pre_vote {
            self.become_pre_candidate();
        } else {
            self.become_candidate();
        }
    }

    fn become_pre_candidate(&mut self) {
        // PreVote does not touch term or vote: a refused probe leaves no trace (thesis §9.6).
        self.role = Role::PreCandidate;
        self.leader = None;
        self.election_elapsed = 0;
        self.reset_election_timeout();
        self.votes.clear();
        self.votes.insert(self.id, true);
        if self.cluster.vote_result(&self.votes) == VoteResult::Won {
            self.become_candidate();
            return;
        }
        self.request_votes(true, false);
    }

    /// Fails every read forwarded in an earlier term: its answer can no longer be accepted.
    fn fail_forwarded_reads(&mut self) {
        let term = self.term;
        let stale: Vec<u64> =
            self.forwarded_reads.iter().filter(|(_, asked)| **asked != term).map(|(c, _)| *c).collect();
        for context in stale {
            self.forwarded_reads.remove(&context);
            self.failed_reads.push(context);
        }
    }

    fn become_candidate(&mut self) {
        self.become_candidate_with(false);
    }

    /// Starts a real election; `transfer` when the leader asked for it with `TimeoutNow`.
    fn become_candidate_with(&mut self, transfer: bool) {
        self.term = self.term + 1;
        self.fail_forwarded_reads();
        self.voted_for = Some(self.id);
        self.role = Role::Candidate;
        self.leader = None;
        self.election_elapsed = 0;
        self.reset_election_timeout();
        self.votes.clear();
        self.votes.insert(self.id, true);
        if self.cluster.vote_result(&self.votes) == VoteResult::Won {
            self.unsynced_term = Some(self.term);
            self.become_leader();
            return;
        }
        self.request_votes(false, transfer);
    }

    fn request_votes(&mut self, pre_vote: bool, transfer: bool) {
        let term = if pre_vote { self.term + 1 } else { self.term };
        let body = MessageBody::RequestVote {
            pre_vote,
            last_log_index: self.log.last_index(),
            last_log_term: self.log.last_term(),
            transfer,
        };
        let voters: Vec<NodeId> =
            self.cluster.members().into_iter().filter(|id| self.cluster.is_voter(*id)).collect();
        for to in voters {
            if to != self.id {
                // A real vote request goes out after the candidate's own term and vote are
                // durable; a PreVote changes nothing durable but follows the same path.
                self.messages_after_persist.push(Message { from: self.id, to, term, body: body.clone() });
            }
        }
    }

    fn become_leader(&mut self) {
        assert_eq!(self.role, Role::Candidate, "only a candidate becomes leader");
        self.role = Role::Leader;
        self.leader = Some(self.id);
        self.election_elapsed = 0;
        self.heartbeat_elapsed = 0;
        self.votes.clear();
        let next = self.log.last_index() + 1;
        // Only the leader itself counts as recently active (as etcd): CheckQuorum deposes a
        // leader that hears from no quorum within its first election timeout.
        //
        // While the latest configuration entry is uncommitted, the members it removed are
        // still replicated to (as by the leader that proposed it, `set_cluster`), until it
        // commits: they receive the entry that removes them, and the leader's heartbeats keep
        // them from timing out. Left without them, a removed member would campaign with
        // ever higher terms and, without PreVote, depose every leader before it could
        // commit the removal (thesis §4.2.3).
        let mut members = self.cluster.members();
        if self.pending_conf_index().is_some() {
            members.extend(self.previous_config().members());
        }
        self.progress =
            members.into_iter().filter(|id| *id != self.id).map(|id| (id, Progress::new(next))).collect();
        self.uncommitted_bytes = 0;
        self.pending_reads.clear();
        self.reads_awaiting_commit.clear();
        // §5.4.2 / §8: a no-op of the new term lets the leader commit what earlier terms left.
        self.append_entry(EntryKind::Noop, Bytes::new());
        self.pending_broadcast = true;
        // A single-voter cluster commits as soon as its own write is durable.
    }

    /// Leader: appends a configuration entry and puts its configuration in force.
    fn append_config(&mut self, data: Bytes, next: ClusterConfig) {
        self.append_entry(EntryKind::ConfigChange, data);
        let index = self.log.last_index();
        self.config_entries.push((index, self.term, next.clone()));
        self.set_cluster(next);
    }

    /// Planted `ConfigAppliedAtCommit`: the configuration in force is that of the last
    /// committed configuration entry.
    fn config_at_commit_bug(&mut self) {
        if self.bug(PlantedBug::ConfigAppliedAtCommit) {
            let committed = self.config_at(self.log.commit());
            if committed != self.cluster {
                self.cluster = committed;
                self.set_cluster(self.cluster.clone());
            }
        }
    }

    fn set_cluster(&mut self, next: ClusterConfig) {
        let next = if self.bug(PlantedBug::ConfigAppliedAtCommit) {
            self.config_at(self.log.commit())
        } else {
            next
        };
        self.cluster = next;
        if self.role == Role::Leader {
            // New members get a progress now; removed ones keep theirs until the change
            // commits, so they receive the entry that removes them.
            let next_index = self.log.last_index() + 1;
            for id in self.cluster.members() {
                if id != self.id {
                    self.progress.entry(id).or_insert_with(|| Progress::new(next_index));
                }
            }
        }
    }

    /// Follower: after log entries were merged, drops configuration entries that were
    /// truncated (reverting to the one before) and applies newly appended ones.
    fn track_config(&mut self, appended: &[Entry]) {
        let before = self.cluster.clone();
        while let Some((index, term, _)) = self.config_entries.last() {
            if self.log.term(*index) == Some(*term) {
                break;
            }
            self.config_entries.pop();
        }
        let mut current = self.config_entries.last().map_or(self.base_config.clone(), |(_, _, c)| c.clone());
        let last_tracked = self.config_entries.last().map_or(LogIndex(0), |(i, _, _)| *i);
        for e in appended {
            if e.index <= last_tracked || self.log.term(e.index) != Some(e.term) {
                continue;
            }
            // A leader validated the change; one that does not decode or apply changes nothing.
            if let Ok(next) = next_config(&e.data, &current) {
                self.config_entries.push((e.index, e.term, next.clone()));
                current = next;
            }
        }
        if current != before {
            self.set_cluster(current);
        }
    }

    /// The configuration before the latest configuration entry (the base one if none).
    fn previous_config(&self) -> &ClusterConfig {
        match self.config_entries.len() {
            0 | 1 => &self.base_config,
            n => &self.config_entries[n - 2].2,
        }
    }

    /// The configuration in force at `index` (at or after the compaction point).
    fn config_at(&self, index: LogIndex) -> ClusterConfig {
        self.config_entries
            .iter()
            .rev()
            .find(|(i, _, _)| *i <= index)
            .map_or_else(|| self.base_config.clone(), |(_, _, c)| c.clone())
    }

    /// Leader, after its commit index advanced: prunes removed members, leaves a committed
    /// joint configuration, and steps down once a configuration without it commits.
    fn after_config_commit(&mut self) {
        let commit = self.log.commit();
        let Some((index, _, _)) = self.config_entries.last() else { return };
        if *index > commit {
            return;
        }
        let members = self.cluster.members();
        self.progress.retain(|id, _| members.contains(id));
        if !self.cluster.voters_outgoing.is_empty() {
            // Auto-leave (etcd's ConfChangeV2): the joint configuration committed.
            if let Ok(next) = ConfChange::leave_joint().apply(&self.cluster) {
                self.append_config(ConfChange::leave_joint().encode_with_config(&next), next);
                self.pending_broadcast = true;
            }
            return;
        }
        if !self.cluster.is_voter(self.id) {
            // Removed (or demoted): C_new committed without us, so stop leading, handing over
            // to the most up-to-date voter at once when it holds our whole log (as a
            // leadership transfer would) rather than leaving the cluster an election timeout
            // without a leader.
            if let Some(target) = self.best_transferee()
                && self.progress.get(&target).is_some_and(|p| p.match_index == self.log.last_index())
            {
                self.send(target, MessageBody::TimeoutNow);
            }
            self.become_follower(self.term, None);
        }
    }

    fn append_entry(&mut self, kind: EntryKind, data: Bytes) {
        let entry = Entry { term: self.term, index: self.log.last_index() + 1, kind, data };
        self.uncommitted_bytes += entry.size_bytes();
        self.log.append(entry);
    }

    // ----- internals: messages -----

    fn send(&mut self, to: NodeId, body: MessageBody) {
        self.messages.push(Message { from: self.id, to, term: self.term, body });
    }

    fn send_after_persist(&mut self, to: NodeId, term: Term, body: MessageBody) {
        self.messages_after_persist.push(Message { from: self.id, to, term, body });
    }

    /// The term rules common to every message (§5.1, thesis §9.6). Returns whether the body
    /// should be processed further.
    fn step_term(&mut self, m: &Message) -> bool {
        use MessageBody::*;
        if m.term > self.term {
            match &m.body {
                RequestVote { pre_vote, transfer, .. } => {
                    // A campaign the leader asked for (`transfer`) overrides the lease.
                    let in_lease = self.config.check_quorum
                        && !*transfer
                        && self.leader.is_some()
                        && self.election_elapsed < self.config.election_timeout_ticks;
                    if in_lease {
                        // We heard from a live leader recently: a disruptive candidate.
                        return false;
                    }
                    if *pre_vote {
                        return true; // A PreVote never changes our term.
                    }
                    // The term changes, the election timer does not (§5.2: a follower's timer
                    // restarts on hearing from the leader or granting a vote, done where the
                    // vote is granted): a candidate whose log is behind would otherwise keep
                    // an up-to-date voter from ever timing out first, by campaigning again
                    // and again at higher terms.
                    let kept = (self.role != Role::Leader)
                        .then_some((self.election_elapsed, self.randomized_election_timeout));
                    self.become_follower(m.term, None);
                    if let Some((elapsed, timeout)) = kept {
                        self.election_elapsed = elapsed;
                        self.randomized_election_timeout = timeout;
                    }
                }
                RequestVoteResponse { pre_vote: true, granted: true } => {
                    // Echoes the term we would campaign in.
                    return true;
                }
                AppendEntries { .. } | Heartbeat { .. } | InstallSnapshot { .. } => {
                    self.become_follower(m.term, Some(m.from));
                }
                _ => self.become_follower(m.term, None),
            }
            true
        } else if m.term < self.term {
            // A request of an older term is answered with our term (§5.1: "if one server's
            // current term is smaller than the other's, then it updates its current term"),
            // with PreVote and CheckQuorum or without. Our own messages may never reach the
            // sender: our latest configuration may leave it out (an uncommitted entry of an
            // old term that a later leader will overwrite), and then only this answer tells
            // it that its term is over, so that it campaigns above ours and we vote.
            match &m.body {
                AppendEntries { .. } | Heartbeat { .. } => {
                    // A stale leader (say, back from a partition that PreVote kept our term
                    // from reaching) learns our term from this and steps down.
                    self.send(m.from, AppendEntriesResponse { index: LogIndex(0), reject: None });
                }
                RequestVote { pre_vote, last_log_index, last_log_term, .. } => {
                    self.send(m.from, RequestVoteResponse { pre_vote: *pre_vote, granted: false });
                    // A candidate we would have voted for but for its stale term: it learns
                    // our term from this answer and campaigns above it one timeout later.
                    // Restart our own timer as if we had voted (§5.2), so that a member whose
                    // campaigns reach no one (its configuration names only members that are
                    // gone) does not keep raising its term just before each of that
                    // candidate's campaigns, for ever (without PreVote).
                    if !*pre_vote
                        && self.role != Role::Leader
                        && self.log.is_up_to_date(*last_log_index, *last_log_term)
                    {
                        self.election_elapsed = 0;
                    }
                }
                // A read asked in an older term: fail it explicitly (our term in the reply
                // tells the follower its term is over) rather than leave it to time out.
                ReadIndexRequest { context } => {
                    self.send(m.from, ReadIndexResponse { context: *context, index: None });
                }
                // A ReadIndexResponse from an older term answers a read that already failed
                // when our term changed (or one from before a restart): ignored.
                _ => {}
            }
            false
        } else {
            true
        }
    }

    fn step_body(&mut self, m: Message) {
        use MessageBody::*;
        let from = m.from;
        match m.body {
            RequestVote { pre_vote, last_log_index, last_log_term, .. } => {
                self.handle_request_vote(from, m.term, pre_vote, last_log_index, last_log_term)
            }
            RequestVoteResponse { pre_vote, granted } => self.handle_vote_response(from, pre_vote, granted),
            AppendEntries { prev_log_index, prev_log_term, entries, leader_commit } => {
                self.follow(from);
                self.handle_append(from, prev_log_index, prev_log_term, entries, leader_commit);
            }
            AppendEntriesResponse { index, reject } => self.handle_append_response(from, index, reject),
            Heartbeat { commit, read_round } => {
                self.follow(from);
                let commit = commit.min(self.log.last_index());
                self.log.commit_to(commit);
                self.send(from, HeartbeatResponse { read_round });
            }
            HeartbeatResponse { read_round } => self.handle_heartbeat_response(from, read_round),
            InstallSnapshot { meta } => {
                self.follow(from);
                self.handle_install_snapshot(from, meta);
            }
            ReadIndexRequest { context } => {
                if self.role == Role::Leader {
                    if self.leader_read(context, Some(from)).is_err() {
                        self.send(from, ReadIndexResponse { context, index: None });
                    }
                } else {
                    self.send(from, ReadIndexResponse { context, index: None });
                }
            }
            ReadIndexResponse { context, index } => {
                // Only an answer to a read we forwarded in this very term counts.
                if self.forwarded_reads.get(&context) != Some(&m.term) {
                    return;
                }
                self.forwarded_reads.remove(&context);
                match index {
                    Some(index) => self.read_states.push(ReadState { context, index }),
                    None => self.failed_reads.push(context),
                }
            }
            Propose { entries } => {
                // Dropped when not leading or over the uncommitted limit: the origin retries.
                if self.role == Role::Leader {
                    let _ = self.propose_batch(entries);
                }
            }
            TimeoutNow => {
                // Only the leader of our current term may hand over leadership (a higher-term
                // TimeoutNow made us a follower without a known leader above, so it fails
                // here too).
                let from_leader = (self.leader == Some(from) && m.term == self.term)
                    || self.bug(PlantedBug::TimeoutNowFromAnyone);
                if self.role == Role::Follower && from_leader && self.cluster.is_voter(self.id) {
                    self.become_candidate_with(true);
                }
            }
        }
    }

    /// A message from the leader of our term: recognise it.
    fn follow(&mut self, leader: NodeId) {
        if self.role != Role::Follower {
            // A candidate that hears from the leader of its term steps down (§5.2).
            assert_ne!(self.role, Role::Leader, "two leaders in term {}", self.term);
            self.become_follower(self.term, Some(leader));
        }
        self.leader = Some(leader);
        self.election_elapsed = 0;
    }

    fn handle_request_vote(
        &mut self,
        from: NodeId,
        msg_term: Term,
        pre_vote: bool,
        last_log_index: LogIndex,
        last_log_term: Term,
    ) {
        let can_vote = self.voted_for == Some(from)
            || (self.voted_for.is_none() && self.leader.is_none())
            || (pre_vote && msg_term > self.term);
        let up_to_date =
            self.bug(PlantedBug::SkipUpToDateCheck) || self.log.is_up_to_date(last_log_index, last_log_term);
        if can_vote && up_to_date {
            if !pre_vote {
                self.election_elapsed = 0;
                self.voted_for = Some(from);
            }
            // The grant leaves only once our vote is durable.
            self.send_after_persist(
                from,
                msg_term,
                MessageBody::RequestVoteResponse { pre_vote, granted: true },
            );
        } else {
            self.send_after_persist(
                from,
                self.term,
                MessageBody::RequestVoteResponse { pre_vote, granted: false },
            );
        }
    }

    fn handle_vote_response(&mut self, from: NodeId, pre_vote: bool, granted: bool) {
        let expected = if pre_vote { Role::PreCandidate } else { Role::Candidate };
        if self.role != expected {
            return;
        }
        self.votes.insert(from, granted);
        match self.cluster.vote_result(&self.votes) {
            VoteResult::Won if pre_vote => self.become_candidate(),
            VoteResult::Won => self.become_leader(),
            VoteResult::Lost => self.become_follower(self.term, None),
            VoteResult::Pending => {}
        }
    }

    fn handle_append(
        &mut self,
        from: NodeId,
        prev_log_index: LogIndex,
        prev_log_term: Term,
        entries: Vec<Entry>,
        leader_commit: LogIndex,
    ) {
        let term = self.term;
        if prev_log_index < self.log.commit() {
            // Everything up to our commit index is known to match the leader; skip that part
            // (the message is old or overlaps what we committed).
            let commit = self.log.commit();
            let rest: Vec<Entry> = entries.into_iter().filter(|e| e.index > commit).collect();
            if rest.is_empty() {
                self.send_after_persist(
                    from,
                    term,
                    MessageBody::AppendEntriesResponse { index: commit, reject: None },
                );
                return;
            }
            let prev = commit;
            let prev_term = match self.log.term(prev) {
                Some(t) => t,
                None => return,
            };
            return self.handle_append(from, prev, prev_term, rest, leader_commit);
        }
        if !self.log.matches(prev_log_index, prev_log_term) {
            let hint = match self.log.term(prev_log_index) {
                Some(t) => RejectHint {
                    conflict_term: Some(t),
                    conflict_index: self.log.first_index_of_term_at(prev_log_index),
                },
                None => RejectHint { conflict_term: None, conflict_index: self.log.last_index() + 1 },
            };
            self.send_after_persist(
                from,
                term,
                MessageBody::AppendEntriesResponse { index: prev_log_index, reject: Some(hint) },
            );
            return;
        }
        let count = entries.len() as u64;
        let config_changes: Vec<Entry> =
            entries.iter().filter(|e| e.kind == EntryKind::ConfigChange).cloned().collect();
        self.log.merge(entries, self.bug(PlantedBug::TruncateMatchingPrefix));
        let truncated = self.config_entries.last().is_some_and(|(i, t, _)| self.log.term(*i) != Some(*t));
        if !config_changes.is_empty() || truncated {
            self.track_config(&config_changes);
        }
        let last_new = prev_log_index + count;
        // The commit index we learn is capped at what this message proved matches.
        let proven =
            if self.bug(PlantedBug::FollowerCommitToLastIndex) { self.log.last_index() } else { last_new };
        self.log.commit_to(leader_commit.min(proven));
        self.send_after_persist(
            from,
            term,
            MessageBody::AppendEntriesResponse { index: last_new, reject: None },
        );
    }

    fn handle_install_snapshot(&mut self, from: NodeId, meta: SnapshotMeta) {
        let term = self.term;
        let commit = self.log.commit();
        if meta.index <= commit {
            // Stale: we already have (and committed) everything in it.
            self.send_after_persist(
                from,
                term,
                MessageBody::AppendEntriesResponse { index: commit, reject: None },
            );
            return;
        }
        if self.log.matches(meta.index, meta.term) {
            // §7: our log already holds the snapshot's last entry; keep what follows it.
            self.log.commit_to(meta.index);
        } else {
            self.log.install_snapshot(&meta);
            self.base_config = meta.config.clone();
            self.config_entries.clear();
            self.cluster = meta.config.clone();
            self.snapshot = Some(meta.clone());
            self.pending_snapshot = Some(meta.clone());
        }
        self.send_after_persist(
            from,
            term,
            MessageBody::AppendEntriesResponse { index: meta.index, reject: None },
        );
    }

    // ----- internals: leader -----

    fn broadcast_append(&mut self) {
        let peers: Vec<NodeId> = self.progress.keys().copied().collect();
        for to in peers {
            self.send_append(to, true);
        }
    }

    /// Sends `to` what it lacks, within its flow-control window. With `even_if_empty`, sends
    /// an empty append to carry a newer commit index.
    fn send_append(&mut self, to: NodeId, even_if_empty: bool) {
        // In the replicate state, stream until the window is full or the follower has
        // everything; in the probe state this sends one message.
        let mut even_if_empty = even_if_empty;
        while self.send_one_append(to, even_if_empty) {
            even_if_empty = false;
        }
    }

    /// Sends one append (or a snapshot) to `to`; returns whether another may follow now.
    fn send_one_append(&mut self, to: NodeId, even_if_empty: bool) -> bool {
        let Some(pr) = self.progress.get(&to) else { return false };
        if pr.is_paused(self.config.inflight_messages_max) {
            return false;
        }
        let prev = pr.next_index - 1;
        let Some(prev_term) = self.log.term(prev) else {
            self.send_snapshot(to);
            return false;
        };
        let last = self.log.last_index();
        let entries = if pr.next_index <= last {
            self.log.slice(pr.next_index, last, self.config.append_bytes_max)
        } else {
            Vec::new()
        };
        if entries.is_empty() && !even_if_empty && pr.state == ProgressState::Replicate {
            return false;
        }
        let last_sent = entries.last().map(|e| e.index);
        let more = pr.state == ProgressState::Replicate && last_sent.is_some_and(|l| l < last);
        let leader_commit = self.log.commit();
        if let Some(pr) = self.progress.get_mut(&to) {
            pr.sent(last_sent);
        }
        self.send(
            to,
            MessageBody::AppendEntries {
                prev_log_index: prev,
                prev_log_term: prev_term,
                entries,
                leader_commit,
            },
        );
        more
    }

    fn send_snapshot(&mut self, to: NodeId) {
        let Some(meta) = self.snapshot.clone() else {
            // Compacted without a snapshot cannot happen: compaction requires one.
            return;
        };
        if let Some(pr) = self.progress.get_mut(&to) {
            pr.become_snapshot(meta.index);
        }
        self.send(to, MessageBody::InstallSnapshot { meta });
    }

    fn broadcast_heartbeat(&mut self) {
        let round = self.read_round_next - 1;
        self.send_heartbeats(round);
    }

    fn broadcast_heartbeat_round(&mut self) {
        let round = self.read_round_next;
        self.read_round_next += 1;
        self.send_heartbeats(round);
        self.release_reads();
    }

    fn send_heartbeats(&mut self, read_round: u64) {
        let peers: Vec<(NodeId, LogIndex)> =
            self.progress.iter().map(|(id, p)| (*id, p.match_index)).collect();
        let commit = self.log.commit();
        // The planted Figure 2 bug also lifts this cap: a heartbeat carries no consistency
        // check, so the leader applies the follower's commit rule on its behalf here.
        let uncapped = self.bug(PlantedBug::FollowerCommitToLastIndex);
        for (to, matched) in peers {
            // Never tell a follower to commit beyond what it is known to hold.
            let commit = if uncapped { commit } else { commit.min(matched) };
            self.send(to, MessageBody::Heartbeat { commit, read_round });
        }
    }

    fn handle_append_response(&mut self, from: NodeId, index: LogIndex, reject: Option<RejectHint>) {
        if self.role != Role::Leader {
            return;
        }
        let last_index = self.log.last_index();
        let Some(pr) = self.progress.get_mut(&from) else { return };
        pr.recent_active = true;
        pr.idle_ticks = 0;
        match reject {
            Some(hint) => {
                // Stale rejection: we already know it matches further, or it answers a probe
                // we no longer wait on.
                if index <= pr.match_index || (pr.state == ProgressState::Probe && index + 1 != pr.next_index)
                {
                    return;
                }
                let next = match hint.conflict_term {
                    // We hold entries of the follower's conflicting term: resume right after
                    // our last one of it. Otherwise skip the follower's whole term.
                    Some(term) => {
                        self.log.last_index_of_term(term).map_or(hint.conflict_index, |ours| ours + 1)
                    }
                    None => hint.conflict_index,
                };
                let Some(pr) = self.progress.get_mut(&from) else { return };
                pr.become_probe();
                // Always move back at least one index, never below what is known to match.
                pr.next_index = next.min(index).min(last_index + 1).max(pr.match_index + 1);
                self.send_append(from, false);
            }
            None => {
                let advanced = pr.maybe_update(index);
                match pr.state {
                    ProgressState::Probe if advanced || pr.match_index + 1 == pr.next_index => {
                        pr.become_replicate()
                    }
                    ProgressState::Snapshot { pending_index } if pr.match_index >= pending_index => {
                        pr.become_probe();
                        pr.become_replicate();
                    }
                    _ => {}
                }
                let caught_up = self.progress.get(&from).is_some_and(|p| p.match_index == last_index);
                if self.lead_transferee == Some(from) && caught_up && self.role == Role::Leader {
                    self.send(from, MessageBody::TimeoutNow);
                }
                if advanced && self.maybe_commit() {
                    return; // Everyone, `from` included, gets an append at the next ready().
                }
                self.send_append(from, false);
            }
        }
    }

    fn handle_heartbeat_response(&mut self, from: NodeId, read_round: u64) {
        if self.role != Role::Leader {
            return;
        }
        let last = self.log.last_index();
        let Some(pr) = self.progress.get_mut(&from) else { return };
        pr.recent_active = true;
        pr.idle_ticks = 0;
        pr.read_round_acked = pr.read_round_acked.max(read_round);
        match pr.state {
            ProgressState::Probe => pr.probe_sent = false,
            // The window may be full of messages the follower never got (it restarted, or
            // they were lost): free one slot so an append goes out and either makes progress
            // or is rejected, which sends the follower back to probing.
            ProgressState::Replicate if pr.inflight.len() >= self.config.inflight_messages_max => {
                pr.inflight.pop_front();
            }
            _ => {}
        }
        if pr.match_index < last || pr.state == ProgressState::Probe {
            self.send_append(from, true);
        }
        self.release_reads();
    }

    /// Advances the commit index to what a quorum durably holds, counting only entries of the
    /// current term (§5.4.2). Returns whether it advanced (and then tells the followers).
    fn maybe_commit(&mut self) -> bool {
        let id = self.id;
        let own = if self.bug(PlantedBug::LeaderCountsUnsyncedSelf) {
            self.log.last_index()
        } else {
            self.log.persisted()
        };
        let progress = &self.progress;
        let mut quorum_config = std::borrow::Cow::Borrowed(&self.cluster);
        if self.bug(PlantedBug::RemovedMemberCounted) {
            quorum_config.to_mut().voters.extend(self.previous_config().voters.iter().copied());
        }
        let index = quorum_config.committed_index(&|n| {
            if n == id { own } else { progress.get(&n).map_or(LogIndex(0), |p| p.match_index) }
        });
        if index <= self.log.commit() {
            return false;
        }
        let term_ok = self.log.term(index) == Some(self.term);
        if !term_ok && !self.bug(PlantedBug::CommitPreviousTermByCount) {
            return false;
        }
        let old = self.log.commit();
        let released: u64 = self.log.iter_range(old, index).map(Entry::size_bytes).sum();
        self.uncommitted_bytes = self.uncommitted_bytes.saturating_sub(released);
        self.log.commit_to(index);
        if !self.reads_awaiting_commit.is_empty() && self.log.term(index) == Some(self.term) {
            for (context, from) in std::mem::take(&mut self.reads_awaiting_commit) {
                let _ = self.leader_read(context, from);
            }
        }
        // Tell the followers at the next ready(), so many acknowledgements handled in one
        // batch cost one broadcast.
        self.pending_broadcast = true;
        self.after_config_commit();
        true
    }

    fn leader_read(&mut self, context: u64, from: Option<NodeId>) -> Result<(), ReadError> {
        if self.pending_reads.len() + self.reads_awaiting_commit.len() >= self.config.pending_reads_max {
            return Err(ReadError::TooManyPending);
        }
        if self.log.term(self.log.commit()) != Some(self.term) {
            // Thesis §6.4 step 1: until an entry of its term commits, the leader does not know
            // the latest commit index.
            self.reads_awaiting_commit.push((context, from));
            return Ok(());
        }
        let index = self.log.commit();
        if self.cluster.voters.len() == 1 && self.cluster.voters_outgoing.is_empty() {
            self.deliver_read(context, from, index);
            return Ok(());
        }
        self.pending_reads.push_back(PendingRead { context, from, index, round: self.read_round_next });
        Ok(())
    }

    fn deliver_read(&mut self, context: u64, from: Option<NodeId>, index: LogIndex) {
        match from {
            None => self.read_states.push(ReadState { context, index }),
            Some(f) => self.send(f, MessageBody::ReadIndexResponse { context, index: Some(index) }),
        }
    }

    /// Releases the reads whose round a quorum acknowledged (one round serves a whole batch).
    fn release_reads(&mut self) {
        while let Some(read) = self.pending_reads.front() {
            if read.round >= self.read_round_next {
                break; // Not broadcast yet.
            }
            let round = read.round;
            let id = self.id;
            let progress = &self.progress;
            let confirmed = self
                .cluster
                .has_quorum(&|n| n == id || progress.get(&n).is_some_and(|p| p.read_round_acked >= round));
            if !confirmed {
                break;
            }
            if let Some(read) = self.pending_reads.pop_front() {
                self.deliver_read(read.context, read.from, read.index);
            }
        }
    }

    fn check_invariants(&self) {
        self.log.check_invariants();
        assert!(self.log.last_term() <= self.term, "log holds a term above the current term");
        if self.role == Role::Leader {
            assert_eq!(self.leader, Some(self.id), "a leader knows itself as leader");
            assert_eq!(self.voted_for, Some(self.id), "a leader voted for itself");
        }
    }
}
