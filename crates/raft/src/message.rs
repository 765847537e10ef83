//! The messages Raft nodes exchange. Plain data: the wire encoding lives in the transport.

use crate::types::{Entry, LogIndex, NodeId, SnapshotMeta, Term};

/// One message from `from` to `to`. Every message carries the sender's term (§5.1), except
/// that a PreVote request carries the term the sender *would* campaign in, and a granted
/// PreVote response echoes that term back (thesis §9.6).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Message {
    pub from: NodeId,
    pub to: NodeId,
    pub term: Term,
    pub body: MessageBody,
}

/// Hint sent with a rejected AppendEntries so the leader can skip a whole term at a time
/// instead of one index per round trip (§5.3, "fast backtracking").
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct RejectHint {
    /// The term of the follower's entry at the leader's `prev_log_index`, or `None` when the
    /// follower's log is shorter than that.
    pub conflict_term: Option<Term>,
    /// With `conflict_term`: the first index the follower holds of that term. Without: the
    /// follower's last index + 1.
    pub conflict_index: LogIndex,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum MessageBody {
    /// RequestVote (§5.2), or a PreVote probe when `pre_vote` is set (thesis §9.6).
    RequestVote {
        pre_vote: bool,
        last_log_index: LogIndex,
        last_log_term: Term,
        /// The candidate campaigns because the leader told it to (`TimeoutNow`, leadership
        /// transfer, thesis §3.10): voters grant it even inside their leader lease, as
        /// etcd-raft's `campaignTransfer`. Never set on a PreVote (a transfer skips PreVote).
        transfer: bool,
    },
    RequestVoteResponse {
        pre_vote: bool,
        granted: bool,
    },
    /// AppendEntries (§5.3). `entries` may be empty (a probe).
    AppendEntries {
        prev_log_index: LogIndex,
        prev_log_term: Term,
        entries: Vec<Entry>,
        leader_commit: LogIndex,
    },
    AppendEntriesResponse {
        /// On success: the index of the last entry the follower now durably holds that
        /// matches the leader (`prev_log_index + entries.len()`). On rejection: the
        /// `prev_log_index` that failed, so the leader can drop stale rejections.
        index: LogIndex,
        /// `None` on success.
        reject: Option<RejectHint>,
    },
    /// A heartbeat: asserts leadership, carries the commit index (capped at what the
    /// follower is known to hold) and the leader's latest ReadIndex round.
    Heartbeat {
        commit: LogIndex,
        read_round: u64,
    },
    HeartbeatResponse {
        read_round: u64,
    },
    /// InstallSnapshot (§7). The core deals in snapshot metadata only; the driver moves the
    /// snapshot's bytes (in chunks, on its own stream) and delivers this message to the
    /// receiving core once the whole snapshot is staged and verified.
    InstallSnapshot {
        meta: SnapshotMeta,
    },
    /// A follower asking the leader for a read index on behalf of its clients. The message's
    /// term is the term the read is asked in: a leader of a later term answers it with a
    /// failure (`index: None`), never with silence.
    ReadIndexRequest {
        context: u64,
    },
    /// The leader's answer; `index` is `None` when the leader could not serve the read
    /// (it lost leadership, or the request carried an older term), and the follower reports
    /// the read as failed. The follower accepts it only for a read it forwarded with that
    /// `context` in the same term as the response's (a reply from an older term, or to a
    /// context it is not waiting on, is ignored).
    ReadIndexResponse {
        context: u64,
        index: Option<LogIndex>,
    },
    /// A follower forwarding client commands to the leader, which appends them if it still
    /// leads and has room; otherwise they are dropped (the client's request times out and is
    /// retried). Clients learn the outcome by applying, not from a reply.
    Propose {
        entries: Vec<bytes::Bytes>,
    },
    /// A leader telling a follower to start an election now (leadership transfer, thesis
    /// §3.10). Accepted only from the leader of the receiver's current term; the receiver
    /// campaigns at once (no PreVote) with `transfer` set on its vote requests.
    TimeoutNow,
}

impl MessageBody {
    /// A short name for logs and traces.
    pub fn name(&self) -> &'static str {
        match self {
            MessageBody::RequestVote { pre_vote: true, .. } => "PreVote",
            MessageBody::RequestVote { .. } => "RequestVote",
            MessageBody::RequestVoteResponse { pre_vote: true, .. } => "PreVoteResponse",
            MessageBody::RequestVoteResponse { .. } => "RequestVoteResponse",
            MessageBody::AppendEntries { .. } => "AppendEntries",
            MessageBody::AppendEntriesResponse { .. } => "AppendEntriesResponse",
            MessageBody::Heartbeat { .. } => "Heartbeat",
            MessageBody::HeartbeatResponse { .. } => "HeartbeatResponse",
            MessageBody::InstallSnapshot { .. } => "InstallSnapshot",
            MessageBody::ReadIndexRequest { .. } => "ReadIndexRequest",
            MessageBody::ReadIndexResponse { .. } => "ReadIndexResponse",
            MessageBody::Propose { .. } => "Propose",
            MessageBody::TimeoutNow => "TimeoutNow",
        }
    }
}

impl Message {
    /// Approximate size in bytes, for flow control and transport batching.
    pub fn size_bytes(&self) -> u64 {
        let base = 48;
        match &self.body {
            MessageBody::AppendEntries { entries, .. } => {
                base + entries.iter().map(Entry::size_bytes).sum::<u64>()
            }
            MessageBody::Propose { entries } => {
                base + entries.iter().map(|e| e.len() as u64 + 8).sum::<u64>()
            }
            _ => base,
        }
    }
}
