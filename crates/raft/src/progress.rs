//! The leader's view of one follower (etcd's `Progress`): how far it matches, what to send
//! next, and how much is in flight.

use std::collections::VecDeque;

use crate::types::LogIndex;

/// How the leader currently replicates to a follower.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ProgressState {
    /// The leader does not know where the follower's log matches: it sends one
    /// AppendEntries at a time and waits for the answer (or the next heartbeat).
    Probe,
    /// The follower is known to match up to `match_index`: entries are streamed optimistically,
    /// up to `inflight_messages_max` messages in flight.
    Replicate,
    /// The follower needs a snapshot at `pending_index`; appends wait until it is installed.
    Snapshot { pending_index: LogIndex },
}

#[derive(Clone, Debug)]
pub struct Progress {
    /// Highest index known to be durably replicated on the follower (Figure 2, `matchIndex`).
    pub match_index: LogIndex,
    /// Next index to send (Figure 2, `nextIndex`). Invariant: `match_index < next_index`.
    pub next_index: LogIndex,
    pub state: ProgressState,
    /// In the probe state, whether a probe is outstanding (no more are sent until it is
    /// answered or a heartbeat interval passes).
    pub probe_sent: bool,
    /// Last index of each AppendEntries in flight, oldest first (the replicate window).
    pub inflight: VecDeque<LogIndex>,
    /// Heard from since the last CheckQuorum round.
    pub recent_active: bool,
    /// Leader ticks since the follower last answered.
    pub idle_ticks: u32,
    /// Ticks spent in the snapshot state, to give up on a lost transfer.
    pub snapshot_ticks: u32,
    /// Highest ReadIndex round this follower has acknowledged.
    pub read_round_acked: u64,
}

impl Progress {
    pub fn new(next_index: LogIndex) -> Progress {
        Progress {
            match_index: LogIndex(0),
            next_index,
            state: ProgressState::Probe,
            probe_sent: false,
            inflight: VecDeque::new(),
            recent_active: false,
            idle_ticks: 0,
            snapshot_ticks: 0,
            read_round_acked: 0,
        }
    }

    pub fn become_probe(&mut self) {
        if let ProgressState::Snapshot { pending_index } = self.state {
            // The snapshot may or may not have landed; resume just after the larger of it and
            // what is known to match, and let the consistency check find out.
            self.next_index = (self.match_index + 1).max(pending_index + 1);
        } else {
            self.next_index = self.match_index + 1;
        }
        self.state = ProgressState::Probe;
        self.probe_sent = false;
        self.inflight.clear();
    }

    pub fn become_replicate(&mut self) {
        self.state = ProgressState::Replicate;
        self.next_index = self.match_index + 1;
        self.probe_sent = false;
        self.inflight.clear();
    }

    pub fn become_snapshot(&mut self, pending_index: LogIndex) {
        self.state = ProgressState::Snapshot { pending_index };
        self.snapshot_ticks = 0;
        self.probe_sent = false;
        self.inflight.clear();
    }

    /// Records a successful append up to `index`. Returns whether anything advanced.
    pub fn maybe_update(&mut self, index: LogIndex) -> bool {
        let updated = index > self.match_index;
        if updated {
            self.match_index = index;
            self.probe_sent = false;
        }
        if self.next_index < index + 1 {
            self.next_index = index + 1;
        }
        while self.inflight.front().is_some_and(|last| *last <= index) {
            self.inflight.pop_front();
        }
        updated
    }

    /// Whether no more appends may be sent now.
    pub fn is_paused(&self, inflight_messages_max: usize) -> bool {
        match self.state {
            ProgressState::Probe => self.probe_sent,
            ProgressState::Replicate => self.inflight.len() >= inflight_messages_max,
            ProgressState::Snapshot { .. } => true,
        }
    }

    /// Records that an append ending at `last_index` was sent.
    pub fn sent(&mut self, last_index: Option<LogIndex>) {
        match self.state {
            ProgressState::Replicate => {
                if let Some(last) = last_index {
                    self.next_index = last + 1;
                    self.inflight.push_back(last);
                }
            }
            ProgressState::Probe => self.probe_sent = true,
            ProgressState::Snapshot { .. } => {}
        }
    }
}
