//! The driver: owns the Raft core and turns its inputs and `Ready`s into [`Action`]s.
//!
//! Deterministic: no threads, no clock (every method that needs the time takes `now`, a
//! [`Duration`] since an origin of the caller's choice), no I/O. The tokio shell
//! ([`crate::Node`]) and a simulator both run this very code.

use std::collections::{BTreeMap, VecDeque};
use std::time::Duration;

use bytes::Bytes;
use raftkv_raft::{
    Entry, LogIndex, Message, MessageBody, NodeId, ProposeError, Raft, ReadError, Ready, Role, SnapshotMeta,
    SoftState, Term,
};

use crate::disk::{DiskJob, PersistJob};
use crate::plant::Planted;
use crate::{Inbound, NodeConfig, NodeError, StagedSnapshot};

/// How long queued reads wait for an outstanding read index before asking for their own.
pub const READ_WAIT: Duration = Duration::from_millis(50);

/// A client's read barrier waiting for its read index (in the tokio shell, a oneshot
/// sender).
pub trait ReadWaiter {
    /// The client gave up (e.g. its read index request or the answer was lost): the driver
    /// forgets the read.
    fn abandoned(&self) -> bool {
        false
    }
}

/// What the driver asks its environment to do, in order.
pub enum Action<R> {
    /// Send a message now (it needs nothing durable first).
    Send(Message),
    /// Stream the newest durable snapshot to `msg.to`, then deliver `msg` (whose meta the
    /// shell replaces by the snapshot's). If that is impossible, call
    /// [`Driver::report_snapshot`]`(to, false)`.
    SendSnapshot(Message),
    /// A job for the disk worker ([`crate::DiskWorker`]); jobs must be written in order.
    Disk(DiskJob),
    /// Committed entries for the applier ([`crate::Applier`]), in order, after every
    /// earlier `Apply`.
    Apply(Vec<Entry>),
    /// A read barrier's read index, or why there is none.
    ReadDone(R, Result<u64, NodeError>),
    /// These client requests failed (request ids as passed to [`Driver::propose`]).
    Fail(Vec<u64>, NodeError),
    /// The core's role, term or leader changed (for logs).
    SoftState(SoftState),
}

/// Why the driver cannot go on: the member must stop.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DriverError {
    /// The core installs a snapshot whose data never arrived.
    #[error("the core installs snapshot {index}@{term} but no staged data for it was received")]
    MissingSnapshot {
        /// Its last index.
        index: u64,
        /// Its term.
        term: u64,
    },
}

/// The driver of one member. `R` is a read barrier's reply channel.
pub struct Driver<R> {
    raft: Raft,
    config: NodeConfig,
    /// Read barriers waiting for their read index, by context: one context serves every
    /// read that arrived in the same batch of requests.
    reads: BTreeMap<u64, Vec<R>>,
    /// Reads that arrived while a read index was outstanding: they go together with the
    /// next one (fewer read-index requests under load, as etcd does).
    read_queue: Vec<R>,
    /// When the latest read index was asked for.
    read_sent: Option<Duration>,
    next_read: u64,
    /// Snapshots received from peers, staged until the core installs them (or not).
    staged: BTreeMap<(LogIndex, Term), StagedSnapshot>,
    /// Proposal batches handed to the core (appended here, or forwarded to the leader of
    /// the time), oldest first; failed with `LeaderChanged` when leadership moves.
    in_flight: VecDeque<(Vec<u64>, Duration)>,
    /// Proposals waiting for a leader to be known.
    parked: VecDeque<(u64, Bytes, Duration)>,
    known_leader: Option<NodeId>,
    planted: Planted,
}

impl<R: ReadWaiter> Driver<R> {
    /// A driver for `raft`. `boot` is a value that grows from one start of the process to
    /// the next (the shell uses [`crate::boot_stamp`]): read contexts start there, so a
    /// reply to a read sent before a restart never matches a read sent after it.
    pub fn new(raft: Raft, config: NodeConfig, boot: u64) -> Driver<R> {
        Driver {
            raft,
            config,
            reads: BTreeMap::new(),
            read_queue: Vec::new(),
            read_sent: None,
            next_read: boot.max(1),
            staged: BTreeMap::new(),
            in_flight: VecDeque::new(),
            parked: VecDeque::new(),
            known_leader: None,
            planted: Planted::default(),
        }
    }

    /// Plants a known bug (simulator only; see [`crate::DriverBug`]).
    #[cfg(feature = "planted-bugs")]
    pub fn plant_bug(&mut self, bug: Option<crate::DriverBug>) {
        self.planted.set(bug);
        if self.planted.is(crate::DriverBug::ReadContextRestart) {
            self.next_read = 1;
        }
    }

    /// The core (read-only).
    pub fn raft(&self) -> &Raft {
        &self.raft
    }

    /// The context the next read index will carry.
    pub fn next_read_context(&self) -> u64 {
        self.next_read
    }

    /// One timer tick.
    pub fn tick(&mut self, now: Duration, out: &mut Vec<Action<R>>) {
        self.raft.tick();
        // Reads whose clients gave up are forgotten.
        self.reads.retain(|_, batch| {
            batch.retain(|r| !r.abandoned());
            !batch.is_empty()
        });
        self.flush_reads(now, out);
    }

    /// Traffic from the network.
    pub fn inbound(&mut self, inbound: Inbound) {
        match inbound {
            Inbound::Message(m) => self.step(m),
            Inbound::Snapshot { message, data } => {
                if let MessageBody::InstallSnapshot { meta } = &message.body {
                    // Kept until the next `Ready`: the core may accept this snapshot and
                    // refuse a later one of the same batch.
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

    /// A transfer to `to` ended (or could not start).
    pub fn report_snapshot(&mut self, to: NodeId, ok: bool) {
        self.raft.report_snapshot(to, ok);
    }

    /// Client proposals `(request id, command)`, all arrived together.
    pub fn propose(&mut self, proposals: Vec<(u64, Bytes)>, now: Duration, out: &mut Vec<Action<R>>) {
        if self.raft.role() != Role::Leader && self.raft.leader().is_none() {
            // Wait (briefly) for an election rather than failing at once.
            let room = self.config.request_queue.saturating_sub(self.parked.len());
            let mut proposals = proposals.into_iter();
            self.parked.extend(proposals.by_ref().take(room).map(|(id, data)| (id, data, now)));
            let over: Vec<u64> = proposals.map(|(id, _)| id).collect();
            if !over.is_empty() {
                out.push(Action::Fail(over, NodeError::TooManyRequests));
            }
            return;
        }
        let (ids, data): (Vec<u64>, Vec<Bytes>) = proposals.into_iter().unzip();
        match self.raft.propose_or_forward(data) {
            Ok(_) => self.in_flight.push_back((ids, now)),
            Err(e) => {
                let error = match e {
                    ProposeError::TooManyUncommitted => NodeError::TooManyRequests,
                    _ => NodeError::NoLeader,
                };
                out.push(Action::Fail(ids, error));
            }
        }
    }

    /// Read barriers, all arrived together: every one of them arrived before the read
    /// index is asked for, so one read index serves them all.
    pub fn read(&mut self, replies: impl IntoIterator<Item = R>, now: Duration, out: &mut Vec<Action<R>>) {
        self.read_queue.extend(replies);
        self.flush_reads(now, out);
    }

    /// Asks for a read index for the queued reads, unless one is outstanding (and was
    /// asked for less than [`READ_WAIT`] ago: a lost request holds nobody back for long).
    fn flush_reads(&mut self, now: Duration, out: &mut Vec<Action<R>>) {
        if self.read_queue.is_empty() {
            return;
        }
        if !self.reads.is_empty() && self.read_sent.is_some_and(|t| now.saturating_sub(t) < READ_WAIT) {
            return;
        }
        self.read_sent = Some(now);
        let replies = std::mem::take(&mut self.read_queue);
        let context = self.next_read;
        self.next_read += 1;
        let error = match self.raft.read_index(context) {
            Ok(()) => {
                self.reads.insert(context, replies);
                return;
            }
            Err(ReadError::TooManyPending) => NodeError::TooManyRequests,
            Err(_) => NodeError::NoLeader,
        };
        out.extend(replies.into_iter().map(|r| Action::ReadDone(r, Err(error.clone()))));
    }

    /// The disk worker made everything up to `(index, term)` durable.
    pub fn persisted(&mut self, index: LogIndex, term: Term) {
        self.raft.persisted(index, term);
    }

    /// The applier applied everything up to `index`.
    pub fn applied(&mut self, index: LogIndex) {
        self.raft.applied(index);
    }

    /// A snapshot up to `index` is durable: the log is compacted behind it (keeping
    /// `snapshot_keep_entries`). Returns whether the core recorded it.
    pub fn snapshot_taken(&mut self, index: LogIndex, out: &mut Vec<Action<R>>) -> bool {
        let compact_to = LogIndex(index.0.saturating_sub(self.config.snapshot_keep_entries));
        match self.raft.snapshot_taken(index, compact_to) {
            Ok(_) => {
                let first = self.raft.first_index();
                if first.0 > 1 {
                    out.push(Action::Disk(DiskJob::Compact(first.0 - 1)));
                }
                true
            }
            Err(e) => {
                tracing::warn!(error = %e, "snapshot not recorded");
                false
            }
        }
    }

    /// Takes every `Ready` of the core and turns it into actions. Call after each batch of
    /// inputs.
    pub fn process_ready(&mut self, now: Duration, out: &mut Vec<Action<R>>) -> Result<(), DriverError> {
        while self.raft.has_ready() {
            let rd = self.raft.ready();
            self.handle_ready(rd, now, out)?;
        }
        // A snapshot the core accepted is in the `Ready` right after the step that
        // delivered it: whatever is still staged was refused (or superseded).
        self.staged.clear();
        Ok(())
    }

    fn handle_ready(
        &mut self,
        rd: Ready,
        now: Duration,
        out: &mut Vec<Action<R>>,
    ) -> Result<(), DriverError> {
        let target = rd.persist_target();
        if let Some(ss) = rd.soft_state {
            out.push(Action::SoftState(ss));
        }
        for m in rd.messages {
            if let MessageBody::InstallSnapshot { .. } = m.body {
                out.push(Action::SendSnapshot(m));
            } else {
                out.push(Action::Send(m));
            }
        }
        for rs in rd.read_states {
            let mut index = rs.index.0;
            if self.planted.is(crate::DriverBug::ServeReadBeforeApplied) {
                index = index.min(self.raft.applied_index().0);
            }
            for reply in self.reads.remove(&rs.context).into_iter().flatten() {
                out.push(Action::ReadDone(reply, Ok(index)));
            }
        }
        for context in rd.failed_reads {
            for reply in self.reads.remove(&context).into_iter().flatten() {
                out.push(Action::ReadDone(reply, Err(NodeError::NoLeader)));
            }
        }
        self.flush_reads(now, out);
        let snapshot = match rd.snapshot {
            Some(meta) => match self.staged.remove(&(meta.index, meta.term)) {
                Some(data) => Some((meta, data)),
                None => return Err(DriverError::MissingSnapshot { index: meta.index.0, term: meta.term.0 }),
            },
            None => None,
        };
        let mut after_persist = rd.messages_after_persist;
        if self.planted.is(crate::DriverBug::AckBeforeSync) {
            out.extend(after_persist.drain(..).map(Action::Send));
        }
        let job =
            PersistJob { snapshot, entries: rd.entries, hard_state: rd.hard_state, after_persist, target };
        if !(job.snapshot.is_none()
            && job.entries.is_empty()
            && job.hard_state.is_none()
            && job.after_persist.is_empty())
        {
            out.push(Action::Disk(DiskJob::Persist(job)));
            if self.planted.is(crate::DriverBug::ApplyBeforeDurable)
                && let Some((index, term)) = target
            {
                self.raft.persisted(index, term);
            }
        }
        if !rd.committed_entries.is_empty() {
            out.push(Action::Apply(rd.committed_entries));
        }
        Ok(())
    }

    /// Called after every batch of inputs: reacts to leadership changes and expires waits.
    /// `waiting(id)` tells whether a client still waits for request `id`.
    pub fn housekeeping(&mut self, now: Duration, waiting: impl Fn(u64) -> bool, out: &mut Vec<Action<R>>) {
        let leader = self.raft.leader();
        if leader != self.known_leader {
            self.known_leader = leader;
            // Whatever was appended or forwarded under the old leader may be lost.
            let in_flight: Vec<u64> = self.in_flight.drain(..).flat_map(|(ids, _)| ids).collect();
            if !in_flight.is_empty() {
                out.push(Action::Fail(in_flight, NodeError::LeaderChanged));
            }
            if leader.is_some() && !self.parked.is_empty() {
                let parked: Vec<(u64, Bytes)> =
                    self.parked.drain(..).map(|(id, data, _)| (id, data)).collect();
                self.propose(parked, now, out);
            }
        }
        let patience = self.config.tick * self.config.election_ticks * 2;
        while self.parked.front().is_some_and(|(_, _, at)| now.saturating_sub(*at) > patience) {
            if let Some((id, _, _)) = self.parked.pop_front() {
                out.push(Action::Fail(vec![id], NodeError::NoLeader));
            }
        }
        // Forget batches that completed (or whose clients gave up long ago).
        while self.in_flight.front().is_some_and(|(ids, at)| {
            now.saturating_sub(*at) > Duration::from_secs(60) || !ids.iter().any(|id| waiting(*id))
        }) {
            self.in_flight.pop_front();
        }
    }

    /// The member stops: every waiting read fails with `Stopped` (proposals are failed by
    /// the shell, which holds their waiters).
    pub fn stop(&mut self, out: &mut Vec<Action<R>>) {
        let queued = std::mem::take(&mut self.read_queue);
        for r in std::mem::take(&mut self.reads).into_values().flatten().chain(queued) {
            out.push(Action::ReadDone(r, Err(NodeError::Stopped)));
        }
    }

    /// The snapshot meta the core last installed or recorded.
    pub fn snapshot_meta(&self) -> Option<&SnapshotMeta> {
        self.raft.snapshot_meta()
    }
}
