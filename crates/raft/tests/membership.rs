//! Membership changes in the core: learners, single-server changes, joint consensus with
//! auto-leave, the one-change-at-a-time and current-term rules, configurations applied on
//! append and reverted on truncation, removing the leader, and recovery at restart.

mod harness;

use harness::Cluster;
use raftkv_raft::{ConfChange, ConfChangeStep, LogIndex, MessageBody, NodeId, ProposeError, Role};

fn ids(v: &[u64]) -> std::collections::BTreeSet<NodeId> {
    v.iter().map(|i| NodeId(*i)).collect()
}

fn classic_members(n: u64, voters: &[u64]) -> Cluster {
    Cluster::with_members(n, voters, |c| {
        c.pre_vote = false;
        c.check_quorum = false;
    })
}

fn elect(c: &mut Cluster, id: u64) {
    for _ in 0..3 {
        c.campaign(id);
        c.deliver_all();
        if c.raft(id).role() == Role::Leader {
            break;
        }
    }
    assert_eq!(c.raft(id).role(), Role::Leader, "node {id} should have won");
}

fn change(c: &mut Cluster, leader: u64, step: ConfChangeStep) -> Result<(), ProposeError> {
    let r = c.raft_mut(leader).propose_conf_change(&ConfChange::single(step)).map(|_| ());
    c.process(leader);
    r
}

#[test]
fn learner_receives_the_log_never_votes_and_is_promoted() {
    let mut c = classic_members(4, &[1, 2, 3]);
    elect(&mut c, 1);
    c.propose(1, "a").expect("leader");
    c.deliver_all();
    change(&mut c, 1, ConfChangeStep::AddLearner(NodeId(4))).expect("learner added");
    c.deliver_all();
    c.propose(1, "b").expect("leader");
    c.deliver_all();
    assert_eq!(c.raft(1).cluster_config().learners, ids(&[4]));
    assert_eq!(c.applied_data(4), vec!["a", "b"], "the learner received the log");
    // A learner never campaigns.
    for _ in 0..100 {
        c.tick(4);
    }
    assert_eq!(c.raft(4).role(), Role::Follower);
    // With two voters down, the learner does not make a quorum.
    c.crash(2);
    c.crash(3);
    let (_, index) = c.propose(1, "c").expect("leader");
    c.deliver_all();
    assert!(c.raft(1).commit_index() < index, "a learner must not count towards commitment");
    c.restart(2);
    c.restart(3);
    c.tick_all(3);
    change(&mut c, 1, ConfChangeStep::AddVoter(NodeId(4))).expect("promotion");
    c.deliver_all();
    c.tick_all(2);
    for id in 1..=4 {
        assert_eq!(c.raft(id).cluster_config().voters, ids(&[1, 2, 3, 4]), "node {id}");
        assert!(c.raft(id).cluster_config().learners.is_empty());
    }
    assert!(c.violations.is_empty(), "{:?}", c.violations);
}

#[test]
fn one_change_at_a_time_and_only_after_a_commit_of_the_leaders_term() {
    let mut c = classic_members(5, &[1, 2, 3]);
    // Right after its election, before its no-op commits, the leader refuses a change.
    c.drop_where(|m| matches!(m.body, MessageBody::AppendEntriesResponse { .. }));
    elect(&mut c, 1);
    assert_eq!(change(&mut c, 1, ConfChangeStep::AddVoter(NodeId(4))), Err(ProposeError::NoCommitInTerm));
    c.clear_filters();
    c.tick_all(2);
    // Hold acknowledgements so the first change stays uncommitted.
    c.drop_where(|m| matches!(m.body, MessageBody::AppendEntriesResponse { .. }));
    change(&mut c, 1, ConfChangeStep::AddVoter(NodeId(4))).expect("first change");
    assert_eq!(
        change(&mut c, 1, ConfChangeStep::AddVoter(NodeId(5))),
        Err(ProposeError::ConfChangeInProgress),
        "a second change while the first is uncommitted"
    );
    c.clear_filters();
    c.tick_all(3);
    assert_eq!(c.raft(1).pending_conf_index(), None);
    change(&mut c, 1, ConfChangeStep::AddVoter(NodeId(5))).expect("after the first committed");
    c.tick_all(3);
    assert_eq!(c.raft(1).cluster_config().voters, ids(&[1, 2, 3, 4, 5]));
    // Invalid changes are refused with a reason and change nothing.
    assert!(matches!(
        change(&mut c, 1, ConfChangeStep::Remove(NodeId(9))),
        Err(ProposeError::InvalidConfChange(_))
    ));
    assert_eq!(c.raft(1).cluster_config().voters, ids(&[1, 2, 3, 4, 5]));
}

#[test]
fn configuration_applies_on_append_and_reverts_on_truncation() {
    let mut c = classic_members(4, &[1, 2, 3]);
    elect(&mut c, 1);
    c.tick_all(2);
    // The leader's own write is held back (lost if it crashes); the change reaches node 2
    // only, and its acknowledgement is lost.
    c.nodes.get_mut(&1).expect("node").hold_writes = true;
    c.drop_where(|m| {
        (m.from.0 == 1 && m.to.0 != 2) || matches!(m.body, MessageBody::AppendEntriesResponse { .. })
    });
    let step = ConfChange::single(ConfChangeStep::AddVoter(NodeId(4)));
    let (_, index) = c.raft_mut(1).propose_conf_change(&step).expect("leader");
    c.process(1);
    c.deliver_all();
    assert!(c.raft(2).commit_index() < index);
    assert_eq!(c.raft(2).last_index(), index);
    assert_eq!(c.raft(2).cluster_config().voters, ids(&[1, 2, 3, 4]), "in force once appended");
    // Node 1 crashes and loses the entry; node 3 wins with node 1's vote and overwrites
    // the entry on node 2, whose configuration reverts.
    c.crash(1);
    c.clear_filters();
    c.restart(1);
    assert_eq!(c.raft(1).cluster_config().voters, ids(&[1, 2, 3]));
    elect(&mut c, 3);
    c.tick_all(2);
    assert_ne!(c.raft(2).log_term(index), Some(c.raft(1).term() - 1), "the entry was replaced");
    assert_eq!(c.raft(2).cluster_config().voters, ids(&[1, 2, 3]), "reverted with the truncation");
    assert!(c.violations.is_empty(), "{:?}", c.violations);
}

#[test]
fn joint_consensus_is_entered_and_left_automatically() {
    let mut c = classic_members(5, &[1, 2, 3]);
    elect(&mut c, 1);
    c.tick_all(2);
    let replace = ConfChange {
        steps: vec![
            ConfChangeStep::Remove(NodeId(3)),
            ConfChangeStep::AddVoter(NodeId(4)),
            ConfChangeStep::AddVoter(NodeId(5)),
        ],
        ..ConfChange::default()
    };
    c.drop_where(|m| matches!(m.body, MessageBody::AppendEntriesResponse { .. }));
    c.raft_mut(1).propose_conf_change(&replace).expect("joint change");
    c.process(1);
    let joint = c.raft(1).cluster_config().clone();
    assert_eq!((joint.voters, joint.voters_outgoing), (ids(&[1, 2, 4, 5]), ids(&[1, 2, 3])));
    assert_eq!(
        c.raft_mut(1).propose_conf_change(&ConfChange::single(ConfChangeStep::AddLearner(NodeId(3)))),
        Err(ProposeError::ConfChangeInProgress),
        "no other change while joint"
    );
    c.clear_filters();
    c.tick_all(5);
    for id in [1, 2, 4, 5] {
        let cfg = c.raft(id).cluster_config();
        assert_eq!(cfg.voters, ids(&[1, 2, 4, 5]), "node {id}");
        assert!(cfg.voters_outgoing.is_empty(), "node {id} left the joint configuration");
    }
    assert_eq!(c.raft(1).pending_conf_index(), None);
    c.propose(1, "after").expect("leader");
    c.tick_all(2);
    for id in [1, 2, 4, 5] {
        assert_eq!(c.applied_data(id).last().map(String::as_str), Some("after"), "node {id}");
    }
    assert!(c.violations.is_empty(), "{:?}", c.violations);
}

#[test]
fn removed_leader_leads_until_the_change_commits_then_steps_down() {
    let mut c = classic_members(3, &[1, 2, 3]);
    elect(&mut c, 1);
    c.tick_all(2);
    c.drop_where(|m| matches!(m.body, MessageBody::AppendEntriesResponse { .. }));
    change(&mut c, 1, ConfChangeStep::Remove(NodeId(1))).expect("remove the leader");
    assert_eq!(c.raft(1).role(), Role::Leader, "leads until C_new commits");
    assert_eq!(c.raft(1).cluster_config().voters, ids(&[2, 3]));
    c.clear_filters();
    c.deliver_all();
    c.tick_all(1);
    assert_ne!(c.raft(1).role(), Role::Leader, "stepped down once C_new committed");
    // The remaining members elect a leader; the removed one never campaigns.
    let term = c.raft(1).term();
    for _ in 0..300 {
        c.tick_all(1);
        if c.leader().is_some_and(|l| l != 1) {
            break;
        }
    }
    let leader = c.leader().expect("a new leader");
    assert!(leader == 2 || leader == 3);
    c.isolate(1);
    c.tick_all(100);
    assert_eq!(c.raft(1).role(), Role::Follower);
    assert!(c.raft(1).term() <= c.raft(leader).term());
    let _ = term;
    assert!(c.violations.is_empty(), "{:?}", c.violations);
}

#[test]
fn configuration_is_recovered_from_the_log_at_restart() {
    let mut c = classic_members(4, &[1, 2, 3]);
    elect(&mut c, 1);
    c.tick_all(2);
    change(&mut c, 1, ConfChangeStep::AddLearner(NodeId(4))).expect("learner");
    c.tick_all(2);
    for id in 1..=4 {
        c.crash(id);
        c.restart(id);
        assert_eq!(c.raft(id).cluster_config().learners, ids(&[4]), "node {id} after restart");
    }
    let _ = LogIndex(0);
}

// ----- leadership transfer -----

#[test]
fn transfer_catches_the_target_up_then_hands_over() {
    let mut c = Cluster::new(3);
    let leader = c.elect_any(100).expect("leader");
    c.tick_all(2);
    let target = if leader == 3 { 2 } else { 3 };
    // The target misses some entries first.
    c.isolate(target);
    for i in 0..5 {
        c.propose(leader, &format!("v{i}")).expect("leader");
    }
    c.deliver_all();
    c.heal();
    let term = c.raft(leader).term();
    c.raft_mut(leader).transfer_leader(NodeId(target)).expect("transfer starts");
    assert_eq!(c.propose(leader, "during"), Err(ProposeError::TransferInProgress));
    c.process(leader);
    c.deliver_all();
    assert_eq!(c.raft(target).role(), Role::Leader, "the target took over");
    assert_eq!(c.raft(target).term(), term + 1);
    assert_ne!(c.raft(leader).role(), Role::Leader);
    assert_eq!(c.raft(leader).lead_transferee(), None);
    c.propose(target, "after").expect("new leader");
    c.tick_all(2);
    for id in 1..=3 {
        assert_eq!(c.applied_data(id).last().map(String::as_str), Some("after"), "node {id}");
    }
    assert!(c.violations.is_empty(), "{:?}", c.violations);
}

#[test]
fn transfer_aborts_after_an_election_timeout_and_the_leader_resumes() {
    let mut c = Cluster::new(3);
    let leader = c.elect_any(100).expect("leader");
    c.tick_all(2);
    let target = if leader == 3 { 2 } else { 3 };
    c.drop_where(move |m| m.to.0 == target && matches!(m.body, MessageBody::TimeoutNow));
    c.raft_mut(leader).transfer_leader(NodeId(target)).expect("transfer starts");
    c.process(leader);
    c.deliver_all();
    assert_eq!(c.raft(leader).lead_transferee(), Some(NodeId(target)));
    assert_eq!(c.propose(leader, "x"), Err(ProposeError::TransferInProgress));
    for _ in 0..10 {
        c.tick(leader);
        c.deliver_all();
    }
    assert_eq!(c.raft(leader).role(), Role::Leader);
    assert_eq!(c.raft(leader).lead_transferee(), None, "aborted after one election timeout");
    c.propose(leader, "x").expect("accepting proposals again");
}

#[test]
fn transfer_is_refused_to_self_non_voters_and_by_followers() {
    use raftkv_raft::TransferError;
    let mut c = classic_members(4, &[1, 2, 3]);
    elect(&mut c, 1);
    c.tick_all(2);
    assert_eq!(c.raft_mut(1).transfer_leader(NodeId(1)), Err(TransferError::ToSelf));
    assert_eq!(c.raft_mut(1).transfer_leader(NodeId(4)), Err(TransferError::NotAVoter(NodeId(4))));
    assert!(matches!(c.raft_mut(2).transfer_leader(NodeId(3)), Err(TransferError::NotLeader { .. })));
}

// ----- planted membership bugs -----

/// Ongaro's 2015 single-server change bug: a new leader proposes a change before committing
/// an entry of its term. With the barrier the change is refused; planted without it, two
/// overlapping configurations both commit and State Machine Safety breaks.
fn single_server_2015(c: &mut Cluster, planted: bool) -> Result<(), ProposeError> {
    // C = {1, 2, 3, 4}; node 5 waits to be added.
    elect(c, 1);
    c.tick_all(2);
    // S1 appends C_a = C + {5} but it reaches nobody.
    c.isolate(1);
    change(c, 1, ConfChangeStep::AddVoter(NodeId(5))).expect("C_a");
    // S2 leads a new term with S3 and S4; its no-op and C_b = C - {1} reach only S3.
    c.drop_where(|m| m.from.0 == 2 && m.to.0 == 4 && matches!(m.body, MessageBody::AppendEntries { .. }));
    elect(c, 2);
    let r = change(c, 2, ConfChangeStep::Remove(NodeId(1)));
    if !planted {
        return r;
    }
    r.expect("planted: no barrier");
    c.deliver_all();
    // C_b committed on S2 and S3 (a majority of {2, 3, 4}).
    assert_eq!(c.raft(2).pending_conf_index(), None, "C_b committed");
    // S1 restarts and wins a later term with S4 and S5 (a majority of C_a), then
    // overwrites C_b's slot.
    c.heal();
    c.partition(&[2, 3], &[1, 4, 5]);
    c.crash(1);
    c.restart(1);
    elect(c, 1);
    c.tick_all(3);
    Ok(())
}

#[test]
fn single_server_change_waits_for_a_commit_in_the_leaders_term() {
    let mut c = classic_members(5, &[1, 2, 3, 4]);
    assert_eq!(single_server_2015(&mut c, false), Err(ProposeError::NoCommitInTerm));
}

#[cfg(feature = "planted-bugs")]
#[test]
fn planted_no_current_term_barrier_breaks_safety_in_the_2015_scenario() {
    let mut c = classic_members(5, &[1, 2, 3, 4]);
    for id in 1..=5 {
        c.raft_mut(id).plant_bug(Some(raftkv_raft::PlantedBug::NoCurrentTermBarrier));
    }
    single_server_2015(&mut c, true).expect("scenario runs");
    assert!(
        c.violations.iter().any(|v| v.contains("State Machine Safety") || v.contains("Election Safety")),
        "the checker must catch it: {:?}",
        c.violations
    );
}

#[cfg(feature = "planted-bugs")]
#[test]
fn planted_two_changes_in_flight_are_accepted() {
    let mut c = classic_members(5, &[1, 2, 3]);
    elect(&mut c, 1);
    c.tick_all(2);
    c.raft_mut(1).plant_bug(Some(raftkv_raft::PlantedBug::TwoChangesInFlight));
    c.drop_where(|m| matches!(m.body, MessageBody::AppendEntriesResponse { .. }));
    change(&mut c, 1, ConfChangeStep::AddVoter(NodeId(4))).expect("first");
    change(&mut c, 1, ConfChangeStep::AddVoter(NodeId(5))).expect("planted: second accepted");
    assert_eq!(c.raft(1).cluster_config().voters, ids(&[1, 2, 3, 4, 5]));
}

#[cfg(feature = "planted-bugs")]
#[test]
fn planted_config_applied_at_commit_is_not_in_force_on_append() {
    let mut c = classic_members(4, &[1, 2, 3]);
    elect(&mut c, 1);
    c.tick_all(2);
    for id in 1..=4 {
        c.raft_mut(id).plant_bug(Some(raftkv_raft::PlantedBug::ConfigAppliedAtCommit));
    }
    c.drop_where(|m| matches!(m.body, MessageBody::AppendEntriesResponse { .. }));
    change(&mut c, 1, ConfChangeStep::AddVoter(NodeId(4))).expect("change");
    c.deliver_all();
    assert_eq!(c.raft(1).cluster_config().voters, ids(&[1, 2, 3]), "planted: waits for the commit");
    c.clear_filters();
    c.tick_all(3);
    assert_eq!(c.raft(1).cluster_config().voters, ids(&[1, 2, 3, 4]));
}

/// Removing node 3 while node 2 is down: the new configuration {1, 2} needs node 2, so
/// the removal cannot commit on node 3's acknowledgement. Returns whether it committed.
fn remove_with_the_remaining_voter_down(planted: bool) -> bool {
    let mut c = classic_members(3, &[1, 2, 3]);
    elect(&mut c, 1);
    c.tick_all(2);
    if planted {
        #[cfg(feature = "planted-bugs")]
        c.raft_mut(1).plant_bug(Some(raftkv_raft::PlantedBug::RemovedMemberCounted));
    }
    c.crash(2);
    let step = ConfChange::single(ConfChangeStep::Remove(NodeId(3)));
    let (_, index) = c.raft_mut(1).propose_conf_change(&step).expect("leader");
    c.process(1);
    c.deliver_all();
    c.tick(1);
    c.deliver_all();
    assert_eq!(c.raft(3).last_index(), index, "node 3 holds the entry that removes it");
    c.raft(1).commit_index() >= index
}

#[test]
fn a_removed_voter_does_not_count_towards_the_new_quorum() {
    assert!(!remove_with_the_remaining_voter_down(false));
}

#[cfg(feature = "planted-bugs")]
#[test]
fn planted_removed_member_counted_commits_without_the_new_quorum() {
    assert!(remove_with_the_remaining_voter_down(true));
}

#[cfg(feature = "planted-bugs")]
#[test]
fn planted_timeout_now_from_anyone_deposes_the_leader() {
    let mut c = Cluster::new(3);
    let leader = c.elect_any(100).expect("leader");
    c.tick_all(2);
    let others: Vec<u64> = (1..=3).filter(|i| *i != leader).collect();
    let term = c.raft(leader).term();
    for id in 1..=3 {
        c.raft_mut(id).plant_bug(Some(raftkv_raft::PlantedBug::TimeoutNowFromAnyone));
    }
    c.inject(raftkv_raft::Message {
        from: NodeId(others[1]),
        to: NodeId(others[0]),
        term,
        body: MessageBody::TimeoutNow,
    });
    c.deliver_all();
    assert_eq!(c.raft(others[0]).role(), Role::Leader, "planted: a follower's TimeoutNow was obeyed");
}

#[test]
fn a_member_restarting_mid_joint_change_recovers_the_joint_configuration() {
    let mut c = classic_members(5, &[1, 2, 3]);
    elect(&mut c, 1);
    c.tick_all(2);
    c.drop_where(|m| matches!(m.body, MessageBody::AppendEntriesResponse { .. }));
    let replace = ConfChange {
        steps: vec![ConfChangeStep::AddVoter(NodeId(4)), ConfChangeStep::AddVoter(NodeId(5))],
        ..ConfChange::default()
    };
    c.raft_mut(1).propose_conf_change(&replace).expect("joint change");
    c.process(1);
    c.deliver_all();
    c.crash(2);
    c.restart(2);
    let cfg = c.raft(2).cluster_config();
    assert_eq!((cfg.voters.clone(), cfg.voters_outgoing.clone()), (ids(&[1, 2, 3, 4, 5]), ids(&[1, 2, 3])));
    c.clear_filters();
    c.tick_all(5);
    assert!(c.raft(2).cluster_config().voters_outgoing.is_empty(), "left once the joint entry committed");
}

#[test]
fn promoting_a_learner_that_lags_is_refused_until_it_catches_up() {
    let mut c = classic_members(4, &[1, 2, 3]);
    elect(&mut c, 1);
    c.tick_all(2);
    change(&mut c, 1, ConfChangeStep::AddLearner(NodeId(4))).expect("learner added");
    c.deliver_all();
    // The learner is cut off while the log grows.
    c.isolate(4);
    for i in 0..20 {
        c.propose(1, &format!("v{i}")).expect("leader");
        c.deliver_all();
    }
    assert_eq!(
        change(&mut c, 1, ConfChangeStep::AddVoter(NodeId(4))),
        Err(ProposeError::LearnerNotReady(NodeId(4))),
        "a learner far behind is not promoted"
    );
    assert_eq!(c.raft(1).cluster_config().learners, ids(&[4]), "nothing changed");
    assert_eq!(c.raft(1).pending_conf_index(), None);
    c.heal();
    c.tick_all(3);
    change(&mut c, 1, ConfChangeStep::AddVoter(NodeId(4))).expect("promoted once in sync");
    c.tick_all(2);
    assert_eq!(c.raft(4).cluster_config().voters, ids(&[1, 2, 3, 4]));
    assert!(c.violations.is_empty(), "{:?}", c.violations);
}

#[test]
fn a_removed_leader_hands_over_without_waiting_for_an_election_timeout() {
    let mut c = classic_members(3, &[1, 2, 3]);
    elect(&mut c, 1);
    c.tick_all(2);
    let term = c.raft(1).term();
    change(&mut c, 1, ConfChangeStep::Remove(NodeId(1))).expect("remove the leader");
    c.deliver_all();
    // Two ticks are far below the election timeout (10 ticks): only a handover explains a
    // new leader this soon.
    c.tick_all(2);
    let leader = c.leader().expect("a new leader at once");
    assert!(leader == 2 || leader == 3, "leader {leader}");
    assert_eq!(c.raft(leader).term(), term + 1, "one election, started by TimeoutNow");
    // The followers learned the removal's commit from the removed leader itself.
    let removal = c.raft(leader).commit_index();
    assert!(removal >= c.raft(1).commit_index());
    assert_eq!(c.raft(leader).cluster_config().voters, ids(&[2, 3]));
    // The removed member never campaigns again.
    c.isolate(1);
    c.tick_all(100);
    assert_eq!(c.raft(1).role(), Role::Follower);
    assert!(c.violations.is_empty(), "{:?}", c.violations);
}

#[test]
fn best_transferee_is_the_most_caught_up_voter() {
    let mut c = classic_members(4, &[1, 2, 3]);
    elect(&mut c, 1);
    c.tick_all(2);
    change(&mut c, 1, ConfChangeStep::AddLearner(NodeId(4))).expect("learner");
    c.deliver_all();
    c.isolate(2);
    c.propose(1, "x").expect("leader");
    c.deliver_all();
    assert_eq!(
        c.raft(1).best_transferee(),
        Some(NodeId(3)),
        "3 holds more of the log than 2; 4 is a learner"
    );
    assert_eq!(c.raft(2).best_transferee(), None, "only a leader picks");
}

/// Thesis §4.1: a server grants its vote to (and accepts entries from) a candidate or
/// leader its latest configuration does not list. Here node 2 restarts without the entry
/// that added node 4, and the only configuration that can still elect a leader is {2, 4}
/// (node 1 appended its own removal, so it does not campaign, and its log is ahead of
/// node 2's, so it refuses node 2): node 4 needs node 2's vote.
#[test]
fn a_voter_unknown_to_a_lagging_member_still_gets_its_vote() {
    let mut c = Cluster::with_members(4, &[1, 2, 3], |c| {
        c.pre_vote = true;
        c.check_quorum = true;
    });
    elect(&mut c, 1);
    c.tick_all(2);
    change(&mut c, 1, ConfChangeStep::Remove(NodeId(3))).expect("remove 3");
    c.deliver_all();
    c.tick_all(2);
    c.deliver_all();
    assert_eq!(c.raft(2).cluster_config().voters, ids(&[1, 2]));
    assert_eq!(c.raft(1).pending_conf_index(), None, "the removal of 3 committed");
    c.crash(2);
    c.crash(3);
    change(&mut c, 1, ConfChangeStep::AddVoter(NodeId(4))).expect("add 4");
    for _ in 0..5 {
        c.deliver_all();
        c.tick_all(1);
    }
    assert_eq!(c.raft(1).pending_conf_index(), None, "the addition of 4 committed on 1 and 4");
    change(&mut c, 1, ConfChangeStep::Remove(NodeId(1))).expect("remove 1");
    c.deliver_all();
    assert_eq!(c.raft(4).cluster_config().voters, ids(&[2, 4]));
    for _ in 0..100 {
        c.tick_all(1);
        c.deliver_all();
    }
    assert_ne!(c.raft(1).role(), Role::Leader, "without a quorum of {{2, 4}} node 1 stepped down");
    c.restart(2);
    assert_eq!(c.raft(2).cluster_config().voters, ids(&[1, 2]), "node 2 never heard of node 4");
    let mut leader = None;
    for _ in 0..300 {
        c.tick_all(1);
        c.deliver_all();
        leader = [2, 4].into_iter().find(|id| c.raft(*id).role() == Role::Leader);
        if leader.is_some() {
            break;
        }
    }
    assert!(leader.is_some(), "no leader: node 2 refuses the vote request of node 4, which it does not know");
    assert!(c.violations.is_empty(), "{:?}", c.violations);
}

/// A follower that appended the entry removing it, while the leader that proposed it crashed
/// before that entry was durable on its own disk: the removed follower holds the longest log,
/// so the remaining voter cannot win without it, and the follower must still campaign (its
/// removal is not committed) in the configuration that removes it, commit the removal, and
/// step down.
#[test]
fn a_member_whose_removal_is_uncommitted_still_campaigns() {
    let mut c = Cluster::with_members(2, &[1, 2], |c| {
        c.pre_vote = true;
        c.check_quorum = true;
    });
    elect(&mut c, 1);
    c.tick_all(2);
    c.deliver_all();
    c.nodes.get_mut(&1).expect("node").hold_writes = true;
    change(&mut c, 1, ConfChangeStep::Remove(NodeId(2))).expect("remove 2");
    c.deliver_all();
    assert_eq!(c.raft(2).cluster_config().voters, ids(&[1]), "node 2 appended its removal");
    c.crash(1);
    c.restart(1);
    assert_eq!(c.raft(1).cluster_config().voters, ids(&[1, 2]), "node 1 lost the entry");
    let mut removed = false;
    for _ in 0..500 {
        c.tick_all(1);
        c.deliver_all();
        if c.raft(1).cluster_config().voters == ids(&[1]) && c.raft(1).pending_conf_index().is_none() {
            removed = true;
            break;
        }
    }
    assert!(removed, "the removal of node 2 never committed: no leader could be elected");
    assert!(c.violations.is_empty(), "{:?}", c.violations);
}

/// A single voter wins its election at once, before its new term is on disk. If its first
/// messages of that term left before the term was durable, a crash could make it reuse the
/// term with other entries: a learner holding the first incarnation's entry at the same
/// index and term would keep it (the terms match) and apply another command than the leader.
#[test]
fn a_single_voter_sends_nothing_of_a_new_term_before_the_term_is_durable() {
    let mut c = Cluster::with_members(2, &[1], |_| {});
    c.campaign(1);
    c.deliver_all();
    assert_eq!(c.raft(1).role(), Role::Leader);
    change(&mut c, 1, ConfChangeStep::AddLearner(NodeId(2))).expect("add learner 2");
    for _ in 0..5 {
        c.tick_all(1);
        c.deliver_all();
    }
    c.crash(1);
    c.restart(1);
    c.nodes.get_mut(&1).expect("node").hold_writes = true;
    c.campaign(1);
    assert_eq!(c.raft(1).role(), Role::Leader);
    let term = c.raft(1).term();
    c.propose(1, "first").expect("leader");
    c.deliver_all();
    c.crash(1);
    c.restart(1);
    c.campaign(1);
    assert_eq!(c.raft(1).term(), term, "the lost term is used again");
    c.propose(1, "second").expect("leader");
    for _ in 0..10 {
        c.tick_all(1);
        c.deliver_all();
    }
    assert_eq!(c.applied_data(2).last().map(String::as_str), Some("second"));
    assert!(c.violations.is_empty(), "{:?}", c.violations);
}

/// A new leader whose log holds an uncommitted entry removing a member still replicates to
/// that member until the entry commits. Without PreVote and CheckQuorum, a removed member
/// left without heartbeats campaigns with ever higher terms and deposes every leader while
/// the leader waits for a lagging voter to commit the removal (membership seeds 101491,
/// 105955 and 113362 of the simulator: no leader lasted long enough to commit).
#[test]
fn a_member_removed_by_an_uncommitted_entry_still_hears_from_a_new_leader() {
    let mut c = classic_members(3, &[1, 2, 3]);
    elect(&mut c, 1);
    c.tick_all(2);
    // Node 1 removes itself; only node 2 gets the entry, and nobody acknowledges it.
    c.drop_where(|m| m.to == NodeId(3) && matches!(m.body, MessageBody::AppendEntries { .. }));
    c.drop_where(|m| matches!(m.body, MessageBody::AppendEntriesResponse { .. }));
    change(&mut c, 1, ConfChangeStep::Remove(NodeId(1))).expect("remove the leader");
    c.deliver_all();
    assert_eq!(c.raft(2).cluster_config().voters, ids(&[2, 3]));
    c.crash(1);
    c.clear_filters();
    // Node 3 lags: node 2 cannot commit the removal for now.
    c.drop_where(|m| m.from == NodeId(3) && matches!(m.body, MessageBody::AppendEntriesResponse { .. }));
    elect(&mut c, 2);
    assert!(c.raft(2).pending_conf_index().is_some(), "the removal of node 1 is not committed");
    c.restart(1);
    assert_eq!(c.raft(1).cluster_config().voters, ids(&[2, 3]), "node 1 holds its removal");
    let term = c.raft(2).term();
    for _ in 0..100 {
        c.tick_all(1);
        assert_eq!(c.raft(2).role(), Role::Leader, "node 2 was deposed");
        assert_eq!(c.raft(2).term(), term, "node 2 was deposed");
        assert_eq!(c.raft(1).role(), Role::Follower, "node 1 campaigned: it heard from no leader");
    }
    c.clear_filters();
    c.tick_all(3);
    assert_eq!(c.raft(2).pending_conf_index(), None, "the removal of node 1 committed");
    assert_eq!(c.raft(2).role(), Role::Leader);
    assert!(c.violations.is_empty(), "{:?}", c.violations);
}

/// Node 1's log ends with an uncommitted entry of an old term removing node 2 (written while
/// it led alone behind a partition); it campaigns with ever higher terms in its
/// configuration {1, 3}, whose other voter is down, so it never sends node 2 anything. Node
/// 2, with the newer log, needs node 1's vote in {1, 2, 3}. Only an answer to node 2's
/// requests (a vote request, or an append when node 2 still leads) can tell node 2 that its
/// term is over: without it node 2's lower-term requests are ignored for ever (membership
/// seeds 108655, 118191 and 118372 of the simulator).
fn a_voter_that_never_contacts_the_candidate(node_2_leads: bool) {
    let mut c = classic_members(3, &[1, 2, 3]);
    elect(&mut c, 1);
    c.tick_all(2);
    c.isolate(1);
    change(&mut c, 1, ConfChangeStep::Remove(NodeId(2))).expect("remove 2");
    assert_eq!(c.raft(1).cluster_config().voters, ids(&[1, 3]));
    elect(&mut c, 2);
    c.tick_all(2);
    c.crash(1);
    c.restart(1);
    assert_eq!(c.raft(1).cluster_config().voters, ids(&[1, 3]), "node 1 holds its uncommitted entry");
    for _ in 0..300 {
        c.tick(1);
        c.deliver_all();
    }
    assert!(c.raft(1).term() > c.raft(2).term(), "node 1 campaigned behind the partition");
    c.crash(3);
    if !node_2_leads {
        c.crash(2);
        c.restart(2);
    }
    c.heal();
    let term = c.raft(1).term();
    // A leader of a term above node 1's that committed an entry of its term.
    let led = |c: &Cluster| {
        c.leader().filter(|l| {
            let r = c.raft(*l);
            r.term() > term && r.log_term(r.commit_index()) == Some(r.term())
        })
    };
    for _ in 0..600 {
        c.tick_all(1);
        if led(&c).is_some() {
            break;
        }
    }
    assert_eq!(led(&c), Some(2), "no leader committed: node 2 never learned node 1's term");
    assert_eq!(c.raft(1).cluster_config().voters, ids(&[1, 2, 3]), "node 1's entry was overwritten");
    assert!(c.violations.is_empty(), "{:?}", c.violations);
}

#[test]
fn a_candidate_learns_the_term_of_a_voter_that_never_contacts_it() {
    a_voter_that_never_contacts_the_candidate(false);
}

#[test]
fn a_leader_learns_the_term_of_a_voter_that_never_contacts_it() {
    a_voter_that_never_contacts_the_candidate(true);
}
