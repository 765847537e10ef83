//! Vocabulary types of the core: identifiers, log entries, durable state.

use std::collections::BTreeSet;
use std::fmt;

use bytes::Bytes;

macro_rules! newtype_u64 {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
        pub struct $name(pub u64);

        impl $name {
            /// The raw number.
            pub const fn get(self) -> u64 {
                self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{}", self.0)
            }
        }

        impl std::ops::Add<u64> for $name {
            type Output = $name;
            fn add(self, rhs: u64) -> $name {
                $name(self.0 + rhs)
            }
        }

        impl std::ops::Sub<u64> for $name {
            type Output = $name;
            fn sub(self, rhs: u64) -> $name {
                $name(self.0 - rhs)
            }
        }

        impl From<u64> for $name {
            fn from(v: u64) -> $name {
                $name(v)
            }
        }
    };
}

newtype_u64!(
    /// A member's identity within one cluster. `NodeId(0)` is reserved for "nobody".
    NodeId
);
newtype_u64!(
    /// A Raft term (§5.1). Terms only grow on every node.
    Term
);
newtype_u64!(
    /// A position in the replicated log. The first real entry has index 1; index 0 is the
    /// empty log's sentinel with term 0.
    LogIndex
);

impl LogIndex {
    /// `self - 1`, saturating at zero.
    pub fn prev(self) -> LogIndex {
        LogIndex(self.0.saturating_sub(1))
    }
}

/// What an entry carries.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum EntryKind {
    /// An application command.
    Normal,
    /// The empty entry a new leader appends to commit entries of earlier terms (§5.4.2, §8).
    Noop,
    /// A membership change: `data` holds an encoded [`ClusterConfig`] chosen by the application.
    /// Reserved for the membership-change work; the core does not yet act on it.
    ConfigChange,
}

impl EntryKind {
    /// Stable one-byte code, for storage and wire formats.
    pub fn code(self) -> u8 {
        match self {
            EntryKind::Normal => 0,
            EntryKind::Noop => 1,
            EntryKind::ConfigChange => 2,
        }
    }

    /// Inverse of [`EntryKind::code`]; `None` for an unknown code (untrusted input).
    pub fn from_code(code: u8) -> Option<EntryKind> {
        match code {
            0 => Some(EntryKind::Normal),
            1 => Some(EntryKind::Noop),
            2 => Some(EntryKind::ConfigChange),
            _ => None,
        }
    }
}

/// One log entry. `(index, term)` identifies it across the cluster (Log Matching, §5.3).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Entry {
    pub term: Term,
    pub index: LogIndex,
    pub kind: EntryKind,
    /// Opaque to the core. `Bytes` so the same payload is shared, not copied, by every
    /// message that carries it.
    pub data: Bytes,
}

impl Entry {
    /// Bytes this entry counts for in flow control (payload plus a fixed header estimate).
    pub fn size_bytes(&self) -> u64 {
        self.data.len() as u64 + 24
    }
}

/// The state that must be on stable storage before the node answers RPCs (Figure 2 of the
/// Raft paper, plus the commit index as an optimisation for restart).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct HardState {
    pub term: Term,
    /// The candidate this node voted for in `term`, if any. At most one per term (§5.2).
    pub voted_for: Option<NodeId>,
    /// A commit index known to this node. Persisting it is not required for safety; it only
    /// lets a restarted node apply sooner. Never greater than the last durable log index.
    pub commit: LogIndex,
}

impl HardState {
    /// Whether making this hard state durable needs a sync when `durable` is what storage
    /// already holds: only a new term or vote does (see [`crate::Ready::must_sync`]).
    pub fn needs_sync_after(&self, durable: &HardState) -> bool {
        self.term != durable.term || self.voted_for != durable.voted_for
    }
}

/// Who votes and who only receives the log. Shaped for joint consensus (§6 of the thesis):
/// while `voters_outgoing` is non-empty, decisions need a majority of both sets.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct ClusterConfig {
    pub voters: BTreeSet<NodeId>,
    /// The old voter set during a joint-consensus transition; empty otherwise.
    pub voters_outgoing: BTreeSet<NodeId>,
    /// Members that receive the log but do not vote or count for commitment.
    pub learners: BTreeSet<NodeId>,
}

impl ClusterConfig {
    /// A plain configuration of voters.
    pub fn new(voters: impl IntoIterator<Item = NodeId>) -> ClusterConfig {
        ClusterConfig {
            voters: voters.into_iter().collect(),
            voters_outgoing: BTreeSet::new(),
            learners: BTreeSet::new(),
        }
    }

    /// Every member that should receive the log, voters and learners, in id order.
    pub fn members(&self) -> BTreeSet<NodeId> {
        self.voters.iter().chain(self.voters_outgoing.iter()).chain(self.learners.iter()).copied().collect()
    }

    /// Whether `id` receives the log (voter of either half, or learner); no allocation, unlike
    /// [`ClusterConfig::members`], since it runs for every message received.
    pub fn contains(&self, id: NodeId) -> bool {
        self.is_voter(id) || self.learners.contains(&id)
    }

    /// Whether `id` votes in either half of the (possibly joint) configuration.
    pub fn is_voter(&self, id: NodeId) -> bool {
        self.voters.contains(&id) || self.voters_outgoing.contains(&id)
    }
}

/// Describes a snapshot of the application's state machine: everything up to and including
/// `index` (whose entry had `term`) is in it, and `config` is the membership at that point.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct SnapshotMeta {
    pub index: LogIndex,
    pub term: Term,
    pub config: ClusterConfig,
}

/// A node's role (§5.1), plus the PreVote phase (thesis §9.6).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Role {
    Follower,
    PreCandidate,
    Candidate,
    Leader,
}

/// Volatile state the application may want to observe: role and known leader.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct SoftState {
    pub role: Role,
    pub leader: Option<NodeId>,
    pub term: Term,
}

/// The result of a ReadIndex request (thesis §6.4): once this node has applied `index`, a
/// read of its state machine reflects every write committed before the request was made.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ReadState {
    /// The caller's identifier for the request, returned unchanged.
    pub context: u64,
    pub index: LogIndex,
}
