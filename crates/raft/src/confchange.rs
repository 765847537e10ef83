//! Membership changes: the payload of a [`crate::EntryKind::ConfigChange`] entry, its compact
//! encoding, and how it transforms a [`ClusterConfig`].
//!
//! A change is a list of steps. At most one voter added or removed is a *simple* change,
//! applied directly (single-server change, thesis §4.1). Anything that changes more voters
//! enters a *joint* configuration (C_old,new: `voters` is the new set, `voters_outgoing` the
//! old one; decisions need a majority of both, thesis §4.3); the leader leaves it on its own
//! with an empty change once the joint entry commits (like etcd's ConfChangeV2 auto-leave).

use std::collections::BTreeSet;

use bytes::{BufMut, Bytes, BytesMut};

use crate::types::{ClusterConfig, NodeId};

/// One step of a membership change.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ConfChangeStep {
    /// Add a voter, or promote a learner to voter.
    AddVoter(NodeId),
    /// Add a learner (receives the log and snapshots, never votes or counts).
    AddLearner(NodeId),
    /// Remove a voter or learner.
    Remove(NodeId),
    /// Leaves the configuration as it is: a change of the member's attributes carried in
    /// the context (raftkv: its peer URLs), ordered with the other membership changes.
    Update(NodeId),
}

/// A membership change. An empty change leaves a joint configuration.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct ConfChange {
    pub steps: Vec<ConfChangeStep>,
    /// Opaque to the core, carried in the entry for the application (raftkv: the member's
    /// name and peer URLs, and the request id). At most [`CONF_CHANGE_CONTEXT_MAX`] bytes.
    pub context: Bytes,
}

/// A change that cannot be applied to the configuration it was proposed against, or an
/// entry that does not decode.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ConfChangeError {
    /// The bytes are not an encoded [`ConfChange`].
    Malformed(&'static str),
    /// Node id 0 is reserved.
    ZeroId,
    /// The change adds a voter that already votes.
    AlreadyVoter(NodeId),
    /// The change adds a learner that is already a member (demotion is not supported).
    AlreadyMember(NodeId),
    /// The change removes a node that is not a member.
    NotMember(NodeId),
    /// The change names the same node twice.
    Repeated(NodeId),
    /// The change would leave no voter.
    NoVoters,
    /// An empty change (leave joint) while not joint, or a non-empty change while joint.
    WrongPhase,
    /// More than this many steps (bounds the work of decoding untrusted entries).
    TooManySteps,
}

impl std::fmt::Display for ConfChangeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ConfChangeError::Malformed(what) => write!(f, "malformed configuration change: {what}"),
            ConfChangeError::ZeroId => write!(f, "node id 0 is reserved"),
            ConfChangeError::AlreadyVoter(id) => write!(f, "node {id} is already a voter"),
            ConfChangeError::AlreadyMember(id) => write!(f, "node {id} is already a member"),
            ConfChangeError::NotMember(id) => write!(f, "node {id} is not a member"),
            ConfChangeError::Repeated(id) => write!(f, "node {id} appears twice in one change"),
            ConfChangeError::NoVoters => write!(f, "the change would leave no voter"),
            ConfChangeError::WrongPhase => {
                write!(f, "an empty change leaves a joint configuration; other changes need a non-joint one")
            }
            ConfChangeError::TooManySteps => write!(f, "too many steps in one change"),
        }
    }
}

impl std::error::Error for ConfChangeError {}

/// Most steps one change may hold.
pub const CONF_CHANGE_STEPS_MAX: usize = 64;
/// Largest context a change may carry.
pub const CONF_CHANGE_CONTEXT_MAX: usize = 64 * 1024;
/// Most ids in one set of an embedded configuration.
const CONFIG_SET_MAX: usize = 4096;

const ENCODING_V1: u8 = 1;
const ENCODING_V2: u8 = 2;

impl ConfChange {
    /// A change of one step.
    pub fn single(step: ConfChangeStep) -> ConfChange {
        ConfChange { steps: vec![step], context: Bytes::new() }
    }

    /// The change that leaves a joint configuration.
    pub fn leave_joint() -> ConfChange {
        ConfChange::default()
    }

    /// The same change carrying `context`.
    pub fn with_context(mut self, context: Bytes) -> ConfChange {
        self.context = context;
        self
    }

    /// Compact encoding without the resulting configuration (see
    /// [`ConfChange::encode_with_config`]).
    pub fn encode(&self) -> Bytes {
        self.encode_inner(None)
    }

    /// The encoding of a configuration-change entry: `version u8 = 2 | count u8 | count x
    /// (kind u8 | id u64 big-endian) | has_config u8 | [voters, voters_outgoing, learners:
    /// each count u16 | ids u64] | context_len u32 | context`, kind 1 add voter, 2 add
    /// learner, 3 remove, 4 update. The resulting configuration makes the entry self-describing: a
    /// member that joined without knowing the configuration the log started from (a new
    /// member catching up from the log) takes it as it is. Version 1 (steps only) still
    /// decodes.
    pub fn encode_with_config(&self, config: &ClusterConfig) -> Bytes {
        self.encode_inner(Some(config))
    }

    fn encode_inner(&self, config: Option<&ClusterConfig>) -> Bytes {
        let mut buf = BytesMut::with_capacity(16 + 9 * self.steps.len() + self.context.len());
        buf.put_u8(ENCODING_V2);
        buf.put_u8(self.steps.len().min(u8::MAX as usize) as u8);
        for step in self.steps.iter().take(u8::MAX as usize) {
            let (kind, id) = match step {
                ConfChangeStep::AddVoter(id) => (1, id),
                ConfChangeStep::AddLearner(id) => (2, id),
                ConfChangeStep::Remove(id) => (3, id),
                ConfChangeStep::Update(id) => (4, id),
            };
            buf.put_u8(kind);
            buf.put_u64(id.0);
        }
        match config {
            Some(c) => {
                buf.put_u8(1);
                for set in [&c.voters, &c.voters_outgoing, &c.learners] {
                    buf.put_u16(set.len().min(u16::MAX as usize) as u16);
                    for id in set.iter().take(u16::MAX as usize) {
                        buf.put_u64(id.0);
                    }
                }
            }
            None => buf.put_u8(0),
        }
        let context = &self.context[..self.context.len().min(u32::MAX as usize)];
        buf.put_u32(context.len() as u32);
        buf.put_slice(context);
        buf.freeze()
    }

    /// Inverse of [`ConfChange::encode`]; untrusted input gets an error, never a panic.
    pub fn decode(data: &[u8]) -> Result<ConfChange, ConfChangeError> {
        ConfChange::decode_entry(data).map(|(cc, _)| cc)
    }

    /// Decodes an entry's change and, when it carries one, the configuration it results in.
    pub fn decode_entry(data: &[u8]) -> Result<(ConfChange, Option<ClusterConfig>), ConfChangeError> {
        let mut r = Reader(data);
        let version = r.u8("empty")?;
        if version != ENCODING_V1 && version != ENCODING_V2 {
            return Err(ConfChangeError::Malformed("unknown version"));
        }
        let count = r.u8("no step count")?;
        if count as usize > CONF_CHANGE_STEPS_MAX {
            return Err(ConfChangeError::TooManySteps);
        }
        let mut steps = Vec::with_capacity(count as usize);
        for _ in 0..count {
            let kind = r.u8("length does not match the step count")?;
            let id = NodeId(r.u64("length does not match the step count")?);
            steps.push(match kind {
                1 => ConfChangeStep::AddVoter(id),
                2 => ConfChangeStep::AddLearner(id),
                3 => ConfChangeStep::Remove(id),
                4 => ConfChangeStep::Update(id),
                _ => return Err(ConfChangeError::Malformed("unknown step kind")),
            });
        }
        if version == ENCODING_V1 {
            if !r.0.is_empty() {
                return Err(ConfChangeError::Malformed("length does not match the step count"));
            }
            return Ok((ConfChange { steps, context: Bytes::new() }, None));
        }
        let config = match r.u8("no configuration flag")? {
            0 => None,
            1 => {
                let mut sets = [BTreeSet::new(), BTreeSet::new(), BTreeSet::new()];
                for set in &mut sets {
                    let n = r.u16("no set size")? as usize;
                    if n > CONFIG_SET_MAX {
                        return Err(ConfChangeError::Malformed("configuration set too large"));
                    }
                    for _ in 0..n {
                        set.insert(NodeId(r.u64("configuration set truncated")?));
                    }
                }
                let [voters, voters_outgoing, learners] = sets;
                Some(ClusterConfig { voters, voters_outgoing, learners })
            }
            _ => return Err(ConfChangeError::Malformed("bad configuration flag")),
        };
        let len = r.u32("no context length")? as usize;
        if len > CONF_CHANGE_CONTEXT_MAX {
            return Err(ConfChangeError::Malformed("context too large"));
        }
        if r.0.len() != len {
            return Err(ConfChangeError::Malformed("length does not match the context length"));
        }
        Ok((ConfChange { steps, context: Bytes::copy_from_slice(r.0) }, config))
    }

    /// Whether applying this to `config` needs a joint configuration: more than one voter
    /// joins or leaves.
    pub fn needs_joint(&self, config: &ClusterConfig) -> bool {
        let changed = self
            .steps
            .iter()
            .filter(|s| match s {
                ConfChangeStep::AddVoter(id) => !config.voters.contains(id),
                ConfChangeStep::Remove(id) => config.voters.contains(id),
                ConfChangeStep::AddLearner(_) | ConfChangeStep::Update(_) => false,
            })
            .count();
        changed > 1
    }

    /// The configuration after this change: simple changes apply directly, larger ones
    /// enter joint consensus, an empty change leaves it.
    pub fn apply(&self, config: &ClusterConfig) -> Result<ClusterConfig, ConfChangeError> {
        if self.steps.len() > CONF_CHANGE_STEPS_MAX {
            return Err(ConfChangeError::TooManySteps);
        }
        let joint = !config.voters_outgoing.is_empty();
        if self.steps.is_empty() {
            if !joint {
                return Err(ConfChangeError::WrongPhase);
            }
            let mut next = config.clone();
            next.voters_outgoing = BTreeSet::new();
            return Ok(next);
        }
        if joint {
            return Err(ConfChangeError::WrongPhase);
        }
        let mut seen = BTreeSet::new();
        let mut next = config.clone();
        for step in &self.steps {
            let id = match step {
                ConfChangeStep::AddVoter(id)
                | ConfChangeStep::AddLearner(id)
                | ConfChangeStep::Remove(id)
                | ConfChangeStep::Update(id) => *id,
            };
            if id == NodeId(0) {
                return Err(ConfChangeError::ZeroId);
            }
            if !seen.insert(id) {
                return Err(ConfChangeError::Repeated(id));
            }
            match step {
                ConfChangeStep::AddVoter(id) => {
                    if next.voters.contains(id) {
                        return Err(ConfChangeError::AlreadyVoter(*id));
                    }
                    next.learners.remove(id);
                    next.voters.insert(*id);
                }
                ConfChangeStep::AddLearner(id) => {
                    if next.contains(*id) {
                        return Err(ConfChangeError::AlreadyMember(*id));
                    }
                    next.learners.insert(*id);
                }
                ConfChangeStep::Remove(id) => {
                    if !next.contains(*id) {
                        return Err(ConfChangeError::NotMember(*id));
                    }
                    next.voters.remove(id);
                    next.learners.remove(id);
                }
                ConfChangeStep::Update(id) => {
                    if !next.contains(*id) {
                        return Err(ConfChangeError::NotMember(*id));
                    }
                }
            }
        }
        if next.voters.is_empty() {
            return Err(ConfChangeError::NoVoters);
        }
        if self.needs_joint(config) {
            next.voters_outgoing = config.voters.clone();
        }
        Ok(next)
    }
}

/// Reads big-endian integers from untrusted bytes.
struct Reader<'a>(&'a [u8]);

impl Reader<'_> {
    fn take<const N: usize>(&mut self, what: &'static str) -> Result<[u8; N], ConfChangeError> {
        if self.0.len() < N {
            return Err(ConfChangeError::Malformed(what));
        }
        let (head, tail) = self.0.split_at(N);
        self.0 = tail;
        let mut out = [0u8; N];
        out.copy_from_slice(head);
        Ok(out)
    }
    fn u8(&mut self, what: &'static str) -> Result<u8, ConfChangeError> {
        self.take::<1>(what).map(|b| b[0])
    }
    fn u16(&mut self, what: &'static str) -> Result<u16, ConfChangeError> {
        self.take::<2>(what).map(u16::from_be_bytes)
    }
    fn u32(&mut self, what: &'static str) -> Result<u32, ConfChangeError> {
        self.take::<4>(what).map(u32::from_be_bytes)
    }
    fn u64(&mut self, what: &'static str) -> Result<u64, ConfChangeError> {
        self.take::<8>(what).map(u64::from_be_bytes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn ids(v: &[u64]) -> BTreeSet<NodeId> {
        v.iter().map(|i| NodeId(*i)).collect()
    }

    #[test]
    fn single_voter_change_is_simple_and_two_are_joint() {
        let c = ClusterConfig::new([NodeId(1), NodeId(2), NodeId(3)]);
        let add = ConfChange::single(ConfChangeStep::AddVoter(NodeId(4))).apply(&c).expect("valid");
        assert_eq!(add.voters, ids(&[1, 2, 3, 4]));
        assert!(add.voters_outgoing.is_empty());
        let replace = ConfChange {
            steps: vec![ConfChangeStep::Remove(NodeId(3)), ConfChangeStep::AddVoter(NodeId(4))],
            ..ConfChange::default()
        };
        let joint = replace.apply(&c).expect("valid");
        assert_eq!((joint.voters.clone(), joint.voters_outgoing.clone()), (ids(&[1, 2, 4]), ids(&[1, 2, 3])));
        let left = ConfChange::leave_joint().apply(&joint).expect("valid");
        assert_eq!((left.voters, left.voters_outgoing), (ids(&[1, 2, 4]), ids(&[])));
    }

    #[test]
    fn invalid_changes_are_refused() {
        let c = ClusterConfig::new([NodeId(1)]);
        let err = |s: ConfChangeStep| ConfChange::single(s).apply(&c).err();
        assert_eq!(err(ConfChangeStep::AddVoter(NodeId(1))), Some(ConfChangeError::AlreadyVoter(NodeId(1))));
        assert_eq!(err(ConfChangeStep::Remove(NodeId(2))), Some(ConfChangeError::NotMember(NodeId(2))));
        assert_eq!(err(ConfChangeStep::Remove(NodeId(1))), Some(ConfChangeError::NoVoters));
        assert_eq!(err(ConfChangeStep::AddLearner(NodeId(0))), Some(ConfChangeError::ZeroId));
        assert_eq!(ConfChange::leave_joint().apply(&c).err(), Some(ConfChangeError::WrongPhase));
    }

    #[test]
    fn decoding_garbage_is_an_error() {
        assert!(ConfChange::decode(&[]).is_err());
        assert!(ConfChange::decode(&[9, 0]).is_err());
        assert!(ConfChange::decode(&[1, 1, 1, 0]).is_err());
        assert!(ConfChange::decode(&[1, 1, 7, 0, 0, 0, 0, 0, 0, 0, 1]).is_err());
        assert!(ConfChange::decode(&[1, 200]).is_err());
        // Version 1 (steps only) still decodes; version 2 bounds its sets and context.
        assert_eq!(
            ConfChange::decode(&[1, 1, 3, 0, 0, 0, 0, 0, 0, 0, 7]),
            Ok(ConfChange::single(ConfChangeStep::Remove(NodeId(7))))
        );
        assert!(ConfChange::decode(&[2, 0, 1, 0xff, 0xff]).is_err());
        assert!(ConfChange::decode(&[2, 0, 0, 0xff, 0xff, 0xff, 0xff]).is_err());
        assert!(ConfChange::decode(&[2, 0, 0, 0, 0, 0, 1]).is_err());
    }

    proptest! {
        #[test]
        fn encoding_round_trips(
            steps in proptest::collection::vec((0u8..4, any::<u64>()), 0..10),
            context in proptest::collection::vec(any::<u8>(), 0..40),
            voters in proptest::collection::btree_set(any::<u64>(), 1..5),
            learners in proptest::collection::btree_set(any::<u64>(), 0..3),
        ) {
            let cc = ConfChange {
                context: Bytes::from(context),
                steps: steps
                    .into_iter()
                    .map(|(k, id)| match k {
                        0 => ConfChangeStep::AddVoter(NodeId(id)),
                        1 => ConfChangeStep::AddLearner(NodeId(id)),
                        2 => ConfChangeStep::Update(NodeId(id)),
                        _ => ConfChangeStep::Remove(NodeId(id)),
                    })
                    .collect(),
            };
            prop_assert_eq!(ConfChange::decode(&cc.encode()), Ok(cc.clone()));
            let config = ClusterConfig {
                voters: voters.into_iter().map(NodeId).collect(),
                voters_outgoing: BTreeSet::new(),
                learners: learners.into_iter().map(NodeId).collect(),
            };
            prop_assert_eq!(ConfChange::decode_entry(&cc.encode_with_config(&config)), Ok((cc, Some(config))));
        }

        #[test]
        fn decode_never_panics(data in proptest::collection::vec(any::<u8>(), 0..40)) {
            let _ = ConfChange::decode(&data);
        }
    }
}
