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
    /// A membership change: `data` holds an encoded [`crate::ConfChange`]; it
    /// takes effect on every member when appended to its log, not when committed.
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

    /// Bytes of [`ClusterConfig::encode`]'s output.
    pub fn encoded_len(&self) -> usize {
        12 + 8 * (self.voters.len() + self.voters_outgoing.len() + self.learners.len())
    }

    /// The one encoding of a configuration, in peer messages (InstallSnapshot) and snapshot
    /// files alike: the voters, the outgoing voters and the learners, each as a count (u32
    /// big-endian) then the ids in ascending order (u64 big-endian).
    pub fn encode(&self, buf: &mut impl bytes::BufMut) {
        for set in [&self.voters, &self.voters_outgoing, &self.learners] {
            // A set of 2^32 ids would take 32 GiB: the count always fits.
            buf.put_u32(u32::try_from(set.len()).unwrap_or(u32::MAX));
            for id in set {
                buf.put_u64(id.0);
            }
        }
    }

    /// Reads [`ClusterConfig::encode`]'s output from the front of `buf`, advancing it.
    /// Untrusted input gets an error, never a panic or an allocation beyond its size.
    pub fn decode(buf: &mut &[u8]) -> Result<ClusterConfig, ConfigDecodeError> {
        fn set(buf: &mut &[u8]) -> Result<BTreeSet<NodeId>, ConfigDecodeError> {
            let (count, rest) = buf.split_first_chunk::<4>().ok_or(ConfigDecodeError::Truncated)?;
            let count = u64::from(u32::from_be_bytes(*count));
            if count * 8 > rest.len() as u64 {
                return Err(ConfigDecodeError::CountTooLarge { count, remaining: rest.len() });
            }
            let (ids, rest) = rest.split_at(count as usize * 8);
            let mut out = BTreeSet::new();
            let mut last: Option<u64> = None;
            for chunk in ids.chunks_exact(8) {
                let mut id = [0u8; 8];
                id.copy_from_slice(chunk);
                let id = u64::from_be_bytes(id);
                if last.is_some_and(|l| l >= id) {
                    return Err(ConfigDecodeError::UnsortedSet);
                }
                last = Some(id);
                out.insert(NodeId(id));
            }
            *buf = rest;
            Ok(out)
        }
        Ok(ClusterConfig { voters: set(buf)?, voters_outgoing: set(buf)?, learners: set(buf)? })
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

/// Why an encoded [`ClusterConfig`] cannot be decoded.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ConfigDecodeError {
    /// The input ends inside a set's count.
    Truncated,
    /// A set claims more ids than the input holds.
    CountTooLarge {
        /// The claimed count.
        count: u64,
        /// Bytes left after the count.
        remaining: usize,
    },
    /// A set's ids are not strictly increasing.
    UnsortedSet,
}

impl std::fmt::Display for ConfigDecodeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ConfigDecodeError::Truncated => write!(f, "cluster config truncated"),
            ConfigDecodeError::CountTooLarge { count, remaining } => {
                write!(f, "cluster config: a set claims {count} ids in {remaining} bytes")
            }
            ConfigDecodeError::UnsortedSet => {
                write!(f, "cluster config: node id set is not strictly increasing")
            }
        }
    }
}

impl std::error::Error for ConfigDecodeError {}
