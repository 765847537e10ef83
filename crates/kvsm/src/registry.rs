//! The cluster's members as configuration changes leave them: a replicated part of the
//! state machine (applied from configuration-change entries, kept in snapshots), from which
//! the server answers MemberList and the transport learns peer addresses.

use std::collections::{BTreeMap, BTreeSet};

use bytes::Bytes;
use raftkv_node::{ClusterConfig, ConfChange, ConfChangeStep, NodeId};
use serde::{Deserialize, Serialize};

/// A member as the cluster's configuration changes recorded it.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RegisteredMember {
    /// Empty until the member publishes its name (etcd shows an added member unnamed until
    /// it starts).
    pub name: String,
    pub peer_urls: Vec<String>,
    pub is_learner: bool,
    /// Added as a voter, it is a learner in the configuration until it has caught up with
    /// the leader's log; then the leader promotes it. The Cluster API shows it as a voter.
    #[serde(default, skip_serializing_if = "is_false")]
    pub promote: bool,
}

fn is_false(b: &bool) -> bool {
    !*b
}

/// The cluster's members: seeded with the bootstrap members, then changed by every applied
/// configuration change; part of the state machine's snapshots.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Registry {
    pub members: BTreeMap<u64, RegisteredMember>,
    /// Ids removed from the cluster: their peer connections are refused.
    pub removed: BTreeSet<u64>,
    /// Counts changes (not replicated): the watcher acts when it moves.
    #[serde(skip)]
    pub version: u64,
}

/// What a configuration-change entry's context carries.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChangeContext {
    /// The client request the change completes on the member that proposed it.
    pub request_id: u64,
    /// The added or updated member's peer URLs.
    #[serde(default)]
    pub peer_urls: Vec<String>,
    /// An `AddLearner` step that adds a voter: the member is to be promoted once caught up.
    #[serde(default, skip_serializing_if = "is_false")]
    pub voter: bool,
}

impl ChangeContext {
    /// The context's bytes, as a configuration-change entry carries them.
    pub fn encode(&self) -> Bytes {
        // A struct of an integer and strings always serialises.
        Bytes::from(serde_json::to_vec(self).unwrap_or_default())
    }
}

impl Registry {
    /// The members a cluster was bootstrapped with (all voters): `(id, name, peer URLs)`.
    pub fn seed(members: impl IntoIterator<Item = (u64, String, Vec<String>, bool)>) -> Registry {
        let members = members
            .into_iter()
            .map(|(id, name, peer_urls, is_learner)| {
                (id, RegisteredMember { name, peer_urls, is_learner, promote: false })
            })
            .collect();
        Registry { members, removed: BTreeSet::new(), version: 1 }
    }

    /// Applies a committed change whose resulting configuration is `config`; returns the
    /// request id its context carries.
    pub fn apply(&mut self, change: &ConfChange, config: &ClusterConfig) -> Option<u64> {
        let context: Option<ChangeContext> = serde_json::from_slice(&change.context).ok();
        let urls = context.as_ref().map(|c| c.peer_urls.clone()).unwrap_or_default();
        let voter = context.as_ref().is_some_and(|c| c.voter);
        for step in &change.steps {
            match *step {
                ConfChangeStep::AddVoter(id) | ConfChangeStep::AddLearner(id) => {
                    self.removed.remove(&id.0);
                    let m = self.members.entry(id.0).or_default();
                    if !urls.is_empty() {
                        m.peer_urls = urls.clone();
                    }
                    m.promote = voter && matches!(step, ConfChangeStep::AddLearner(_));
                }
                ConfChangeStep::Remove(id) => {
                    self.members.remove(&id.0);
                    self.removed.insert(id.0);
                }
                ConfChangeStep::Update(id) => {
                    if let Some(m) = self.members.get_mut(&id.0)
                        && !urls.is_empty()
                    {
                        m.peer_urls = urls.clone();
                    }
                }
            }
        }
        // Learner or voter as the configuration says; members it names that are unknown
        // here (a registry seeded differently) are added unnamed.
        for id in config.members() {
            self.members.entry(id.0).or_default();
        }
        self.members.retain(|id, _| config.contains(NodeId(*id)));
        for (id, m) in &mut self.members {
            m.is_learner = config.learners.contains(&NodeId(*id));
            m.promote &= m.is_learner;
        }
        self.version += 1;
        context.map(|c| c.request_id)
    }

    /// Whether the member is a voter as the Cluster API shows it: a voter of the
    /// configuration, or a member added as a voter that waits as a learner to catch up.
    pub fn is_voter(&self, id: u64) -> bool {
        self.members.get(&id).is_some_and(|m| !m.is_learner || m.promote)
    }

    /// Members added as voters that are learners until caught up (the leader promotes them).
    pub fn to_promote(&self) -> Vec<u64> {
        self.members.iter().filter(|(_, m)| m.is_learner && m.promote).map(|(id, _)| *id).collect()
    }

    /// The member (other than `except`) already using one of `urls`.
    pub fn url_owner(&self, urls: &[String], except: Option<u64>) -> Option<u64> {
        self.members
            .iter()
            .filter(|(id, _)| Some(**id) != except)
            .find(|(_, m)| m.peer_urls.iter().any(|u| urls.contains(u)))
            .map(|(id, _)| *id)
    }
}
