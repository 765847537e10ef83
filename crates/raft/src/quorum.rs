//! Quorum arithmetic over a (possibly joint) configuration. Kept apart from the roles so
//! joint consensus only changes this file: a joint configuration decides by a majority of
//! each half.

use std::collections::{BTreeMap, BTreeSet};

use crate::types::{ClusterConfig, LogIndex, NodeId};

/// The outcome of counting votes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum VoteResult {
    Won,
    Lost,
    Pending,
}

fn majority_vote(voters: &BTreeSet<NodeId>, votes: &BTreeMap<NodeId, bool>) -> VoteResult {
    if voters.is_empty() {
        // An empty half of a joint config agrees with everything.
        return VoteResult::Won;
    }
    let (mut granted, mut missing) = (0, 0);
    for id in voters {
        match votes.get(id) {
            Some(true) => granted += 1,
            Some(false) => {}
            None => missing += 1,
        }
    }
    let quorum = voters.len() / 2 + 1;
    if granted >= quorum {
        VoteResult::Won
    } else if granted + missing >= quorum {
        VoteResult::Pending
    } else {
        VoteResult::Lost
    }
}

/// Largest index that a majority of `voters` has reached, per `matched`.
fn majority_index(voters: &BTreeSet<NodeId>, matched: &dyn Fn(NodeId) -> LogIndex) -> LogIndex {
    if voters.is_empty() {
        return LogIndex(u64::MAX);
    }
    let mut indexes: Vec<LogIndex> = voters.iter().map(|id| matched(*id)).collect();
    indexes.sort_unstable_by(|a, b| b.cmp(a));
    indexes[voters.len() / 2]
}

impl ClusterConfig {
    /// Counts `votes` (absent = not yet answered) against the configuration.
    pub fn vote_result(&self, votes: &BTreeMap<NodeId, bool>) -> VoteResult {
        let incoming = majority_vote(&self.voters, votes);
        if self.voters_outgoing.is_empty() {
            return incoming;
        }
        let outgoing = majority_vote(&self.voters_outgoing, votes);
        match (incoming, outgoing) {
            (VoteResult::Won, VoteResult::Won) => VoteResult::Won,
            (VoteResult::Lost, _) | (_, VoteResult::Lost) => VoteResult::Lost,
            _ => VoteResult::Pending,
        }
    }

    /// The highest index held by a quorum: what the leader may commit (subject to §5.4.2).
    pub fn committed_index(&self, matched: &dyn Fn(NodeId) -> LogIndex) -> LogIndex {
        let incoming = majority_index(&self.voters, matched);
        if self.voters_outgoing.is_empty() {
            return if incoming.0 == u64::MAX { LogIndex(0) } else { incoming };
        }
        let outgoing = majority_index(&self.voters_outgoing, matched);
        let idx = incoming.min(outgoing);
        if idx.0 == u64::MAX { LogIndex(0) } else { idx }
    }

    /// Whether the members for which `active` is true form a quorum.
    pub fn has_quorum(&self, active: &dyn Fn(NodeId) -> bool) -> bool {
        let votes: BTreeMap<NodeId, bool> =
            self.voters.iter().chain(self.voters_outgoing.iter()).map(|id| (*id, active(*id))).collect();
        self.vote_result(&votes) == VoteResult::Won
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn ids(v: &[u64]) -> BTreeSet<NodeId> {
        v.iter().map(|i| NodeId(*i)).collect()
    }

    /// The naive definition: the largest index `i` such that more than half the voters have
    /// reached at least `i`.
    fn naive_committed(voters: &[u64], matched: &BTreeMap<u64, u64>) -> u64 {
        let mut best = 0;
        for candidate in matched.values().copied().chain([0]) {
            let count = voters.iter().filter(|v| matched[*v] >= candidate).count();
            if count > voters.len() / 2 {
                best = best.max(candidate);
            }
        }
        best
    }

    proptest! {
        #[test]
        fn committed_index_matches_naive(matches in proptest::collection::vec(0u64..20, 1..8)) {
            let voters: Vec<u64> = (1..=matches.len() as u64).collect();
            let matched: BTreeMap<u64, u64> = voters.iter().copied().zip(matches.iter().copied()).collect();
            let config = ClusterConfig::new(voters.iter().map(|i| NodeId(*i)));
            let got = config.committed_index(&|id| LogIndex(matched[&id.0]));
            prop_assert_eq!(got.0, naive_committed(&voters, &matched));
        }

        #[test]
        fn joint_committed_is_min_of_halves(matches in proptest::collection::vec(0u64..20, 2..8), split in 1usize..7) {
            let n = matches.len();
            let split = split.min(n - 1);
            let all: Vec<u64> = (1..=n as u64).collect();
            let matched: BTreeMap<u64, u64> = all.iter().copied().zip(matches.iter().copied()).collect();
            let config = ClusterConfig {
                voters: ids(&all[..split]),
                voters_outgoing: ids(&all[split - 1..]),
                learners: BTreeSet::new(),
            };
            let got = config.committed_index(&|id| LogIndex(matched[&id.0]));
            let a = naive_committed(&all[..split], &matched);
            let b = naive_committed(&all[split - 1..], &matched);
            prop_assert_eq!(got.0, a.min(b));
        }
    }

    #[test]
    fn votes_in_three_node_cluster() {
        let config = ClusterConfig::new([NodeId(1), NodeId(2), NodeId(3)]);
        let mut votes = BTreeMap::new();
        votes.insert(NodeId(1), true);
        assert_eq!(config.vote_result(&votes), VoteResult::Pending);
        votes.insert(NodeId(2), false);
        assert_eq!(config.vote_result(&votes), VoteResult::Pending);
        votes.insert(NodeId(3), false);
        assert_eq!(config.vote_result(&votes), VoteResult::Lost);
        votes.insert(NodeId(3), true);
        assert_eq!(config.vote_result(&votes), VoteResult::Won);
    }
}
