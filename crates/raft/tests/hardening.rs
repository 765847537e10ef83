//! Leadership hand-over, read-index matching, CheckQuorum on a new leader and the recovery
//! checks of `Raft::new`: each scenario pins one rule a review found missing.

mod harness;

use std::cell::RefCell;
use std::rc::Rc;

use bytes::Bytes;
use harness::Cluster;
use raftkv_raft::{
    ClusterConfig, Config, Entry, EntryKind, HardState, InitialState, LogIndex, Message, MessageBody, NodeId,
    Raft, Role, SnapshotMeta, Term,
};

/// Classic Raft (no PreVote, no CheckQuorum) so scenarios can script elections by hand.
fn classic(n: u64) -> Cluster {
    Cluster::with_config(n, |c| {
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

fn timeout_now(from: u64, to: u64, term: Term) -> Message {
    Message { from: NodeId(from), to: NodeId(to), term, body: MessageBody::TimeoutNow }
}

fn others(leader: u64, n: u64) -> Vec<u64> {
    (1..=n).filter(|i| *i != leader).collect()
}

// ----- TimeoutNow -----

/// With PreVote and CheckQuorum on, every follower is inside its leader lease; the target of
/// a TimeoutNow from the leader must still win, because its vote requests carry the transfer
/// flag that overrides the lease for that one campaign.
#[test]
fn timeout_now_from_the_leader_hands_over_despite_the_lease() {
    let mut c = Cluster::new(3);
    let leader = c.elect_any(100).expect("leader");
    c.propose(leader, "x").expect("leader");
    c.tick_all(3);
    let term = c.raft(leader).term();
    let target = others(leader, 3)[0];
    assert_eq!(c.raft(target).last_index(), c.raft(leader).last_index(), "target caught up");
    c.inject(timeout_now(leader, target, term));
    c.deliver_all();
    assert_eq!(c.raft(target).role(), Role::Leader, "the target won the transfer campaign");
    assert_eq!(c.raft(target).term(), term + 1);
    assert_eq!(c.raft(leader).role(), Role::Follower);
    c.propose(target, "y").expect("new leader");
    c.deliver_all();
    for id in 1..=3 {
        assert_eq!(c.applied_data(id), vec!["x", "y"], "node {id}");
    }
    assert!(c.violations.is_empty(), "{:?}", c.violations);
}

#[test]
fn timeout_now_from_a_follower_is_ignored() {
    let mut c = Cluster::new(3);
    let leader = c.elect_any(100).expect("leader");
    c.tick_all(2);
    let term = c.raft(leader).term();
    let [target, other] = others(leader, 3)[..] else { unreachable!() };
    c.inject(timeout_now(other, target, term));
    c.deliver_all();
    assert_eq!(c.raft(target).role(), Role::Follower, "only the leader may hand over leadership");
    assert_eq!(c.raft(target).term(), term);
    assert_eq!(c.raft(leader).role(), Role::Leader);
}

#[test]
fn timeout_now_from_an_older_or_newer_term_is_ignored() {
    let mut c = Cluster::new(3);
    let leader = c.elect_any(100).expect("leader");
    c.tick_all(2);
    let term = c.raft(leader).term();
    let target = others(leader, 3)[0];
    c.inject(timeout_now(leader, target, term - 1));
    c.deliver_all();
    assert_eq!(c.raft(target).role(), Role::Follower);
    assert_eq!(c.raft(target).term(), term);
    // A TimeoutNow of a term the target has not seen: it does not know who leads that term.
    c.inject(timeout_now(leader, target, term + 5));
    assert_ne!(c.raft(target).role(), Role::Candidate, "no campaign from an unknown leader's term");
    assert_eq!(c.raft(target).term(), term + 5);
}

// ----- ReadIndex -----

/// A follower's forwarded read is answered by context AND term: a reply from an older term
/// (here one sent before the follower restarted and reused the context) must not confirm a
/// new read with an older read point.
#[test]
fn read_index_reply_from_an_older_term_does_not_confirm_a_new_read() {
    let mut c = classic(3);
    elect(&mut c, 1);
    c.propose(1, "a").expect("leader");
    c.deliver_all();
    c.tick_all(1);
    // Node 3 forwards read 1 in term T; the reply is held back.
    let held: Rc<RefCell<Vec<Message>>> = Rc::default();
    let sink = held.clone();
    c.drop_where(move |m| {
        let hold = matches!(m.body, MessageBody::ReadIndexResponse { .. }) && m.to.0 == 3;
        if hold {
            sink.borrow_mut().push(m.clone());
        }
        hold
    });
    c.read_index(3, 1);
    c.deliver_all();
    let stale = held.borrow_mut().pop().expect("the leader answered");
    let old_term = stale.term;
    assert!(matches!(stale.body, MessageBody::ReadIndexResponse { context: 1, index: Some(_) }));
    c.clear_filters();
    // Node 3 restarts (its read contexts start again at 1); node 2 leads a new term and
    // commits more.
    c.crash(3);
    c.restart(3);
    elect(&mut c, 2);
    for i in 0..5 {
        c.propose(2, &format!("b{i}")).expect("leader");
    }
    c.deliver_all();
    c.tick_all(1);
    assert!(c.raft(3).term() > old_term);
    let commit = c.raft(2).commit_index();
    // The new read 1 goes out; the stale reply arrives first.
    c.raft_mut(3).read_index(1).expect("forwarded");
    c.inject(stale);
    assert!(
        c.nodes[&3].read_states.is_empty(),
        "a reply from term {old_term} confirmed a read of a later term"
    );
    c.deliver_all();
    let reads = &c.nodes[&3].read_states;
    assert_eq!(reads.len(), 1, "{reads:?}");
    assert_eq!((reads[0].context, reads[0].index), (1, commit), "the read point of the current term");
}

#[test]
fn read_index_reply_to_an_unknown_context_is_ignored() {
    let mut c = Cluster::new(3);
    let leader = c.elect_any(100).expect("leader");
    c.tick_all(2);
    let follower = others(leader, 3)[0];
    let term = c.raft(follower).term();
    c.inject(Message {
        from: NodeId(leader),
        to: NodeId(follower),
        term,
        body: MessageBody::ReadIndexResponse { context: 77, index: Some(LogIndex(1)) },
    });
    assert!(c.nodes[&follower].read_states.is_empty());
    assert!(c.nodes[&follower].failed_reads.is_empty());
}

/// A read forwarded to a member that has moved to a later term is failed explicitly (and
/// the reply's term tells the follower its term is over), not dropped until a timeout.
#[test]
fn read_forwarded_with_an_older_term_gets_an_explicit_failure() {
    let mut c = classic(3);
    elect(&mut c, 1);
    c.propose(1, "a").expect("leader");
    c.deliver_all();
    let old_term = c.raft(3).term();
    // Node 2 leads a new term while node 3 hears nothing of it.
    c.isolate(3);
    elect(&mut c, 2);
    c.heal();
    assert_eq!(c.raft(3).leader(), Some(NodeId(1)), "node 3 still believes node 1 leads");
    assert_eq!(c.raft(3).term(), old_term);
    c.read_index(3, 5);
    c.deliver_all();
    assert_eq!(c.nodes[&3].failed_reads, vec![5], "the read failed explicitly");
    assert!(c.nodes[&3].read_states.is_empty());
    assert!(c.raft(3).term() > old_term, "node 3 learned the new term from the reply");
}

#[test]
fn forwarded_reads_fail_when_the_term_changes() {
    let mut c = classic(3);
    elect(&mut c, 1);
    c.propose(1, "a").expect("leader");
    c.deliver_all();
    c.drop_where(|m| matches!(m.body, MessageBody::ReadIndexRequest { .. }));
    c.read_index(3, 8);
    c.deliver_all();
    assert!(c.nodes[&3].failed_reads.is_empty());
    c.clear_filters();
    elect(&mut c, 2);
    assert_eq!(c.nodes[&3].failed_reads, vec![8]);
    // A late answer from the old term changes nothing.
    c.inject(Message {
        from: NodeId(1),
        to: NodeId(3),
        term: c.raft(1).term() - 1,
        body: MessageBody::ReadIndexResponse { context: 8, index: Some(LogIndex(2)) },
    });
    assert!(c.nodes[&3].read_states.is_empty());
    assert_eq!(c.nodes[&3].failed_reads, vec![8]);
}

#[test]
fn a_duplicate_read_context_is_refused() {
    let mut c = Cluster::new(3);
    let leader = c.elect_any(100).expect("leader");
    c.tick_all(2);
    let follower = others(leader, 3)[0];
    c.drop_where(|m| matches!(m.body, MessageBody::ReadIndexRequest { .. }));
    c.read_index(follower, 3);
    assert_eq!(
        c.raft_mut(follower).read_index(3),
        Err(raftkv_raft::ReadError::DuplicateContext { context: 3 })
    );
}

// ----- CheckQuorum on a new leader -----

/// A new leader counts only itself as recently active (as etcd): cut off right after its
/// election, it steps down after one election timeout, not two.
#[test]
fn new_leader_that_hears_from_no_quorum_steps_down_after_one_election_timeout() {
    let mut c = Cluster::with_config(3, |cfg| {
        cfg.pre_vote = false;
        cfg.check_quorum = true;
    });
    // Node 1 wins, then hears nothing but the votes.
    c.drop_where(|m| m.to.0 == 1 && !matches!(m.body, MessageBody::RequestVoteResponse { .. }));
    c.campaign(1);
    c.deliver_all();
    assert_eq!(c.raft(1).role(), Role::Leader);
    let timeout = Config::new(NodeId(1)).election_timeout_ticks;
    for _ in 0..timeout - 1 {
        c.tick(1);
        c.deliver_all();
    }
    assert_eq!(c.raft(1).role(), Role::Leader, "still within its first election timeout");
    c.tick(1);
    assert_ne!(c.raft(1).role(), Role::Leader, "no quorum heard within one election timeout");
}

#[test]
fn new_leader_that_hears_from_a_quorum_keeps_leading() {
    let mut c = Cluster::with_config(3, |cfg| {
        cfg.pre_vote = false;
        cfg.check_quorum = true;
    });
    c.campaign(1);
    c.deliver_all();
    assert_eq!(c.raft(1).role(), Role::Leader);
    for _ in 0..5 {
        c.tick(1);
        c.deliver_all();
    }
    // From here on only node 2 answers: still a quorum with the leader itself.
    c.isolate(3);
    for _ in 0..40 {
        c.tick(1);
        c.deliver_all();
    }
    assert_eq!(c.raft(1).role(), Role::Leader);
}

// ----- Raft::new recovery checks -----

fn entry(index: u64, term: u64) -> Entry {
    Entry { term: Term(term), index: LogIndex(index), kind: EntryKind::Normal, data: Bytes::new() }
}

fn snapshot(index: u64, term: u64) -> SnapshotMeta {
    SnapshotMeta { index: LogIndex(index), term: Term(term), config: voters() }
}

fn voters() -> ClusterConfig {
    ClusterConfig::new([NodeId(1), NodeId(2), NodeId(3)])
}

fn recover(snapshot: Option<SnapshotMeta>, entries: Vec<Entry>) -> Result<Raft, String> {
    let initial = InitialState {
        hard_state: HardState { term: Term(9), voted_for: None, commit: LogIndex(0) },
        config: voters(),
        snapshot,
        entries,
    };
    Raft::new(Config::new(NodeId(1)), initial).map_err(|e| e.to_string())
}

#[test]
fn recovery_accepts_a_log_that_continues_from_the_snapshot() {
    let raft = recover(Some(snapshot(11, 4)), vec![entry(12, 4), entry(13, 5)]).expect("valid");
    assert_eq!((raft.first_index(), raft.last_index()), (LogIndex(12), LogIndex(13)));
    let raft = recover(None, vec![entry(1, 1), entry(2, 1)]).expect("valid");
    assert_eq!(raft.last_index(), LogIndex(2));
}

/// Issue 14, finding 1: a snapshot 11@4 followed by a conflicting old tail 12..20@3.
#[test]
fn recovery_rejects_a_tail_whose_term_is_below_the_snapshot() {
    let tail = (12..=20).map(|i| entry(i, 3)).collect();
    let err = recover(Some(snapshot(11, 4)), tail).expect_err("must be rejected");
    assert!(err.contains("does not continue from the snapshot"), "{err}");
}

#[test]
fn recovery_rejects_a_gap_after_the_snapshot() {
    let err = recover(Some(snapshot(11, 4)), vec![entry(13, 4)]).expect_err("must be rejected");
    assert!(err.contains("does not continue from the snapshot"), "{err}");
    let err = recover(Some(snapshot(11, 4)), vec![entry(11, 4)]).expect_err("must be rejected");
    assert!(err.contains("does not continue from the snapshot"), "{err}");
    let err = recover(None, vec![entry(2, 1)]).expect_err("must be rejected");
    assert!(err.contains("first log entry has index 2"), "{err}");
}

#[test]
fn recovery_rejects_non_contiguous_indexes_and_decreasing_terms() {
    let err = recover(None, vec![entry(1, 1), entry(3, 1)]).expect_err("gap");
    assert!(err.contains("not contiguous"), "{err}");
    let err = recover(None, vec![entry(1, 2), entry(2, 1)]).expect_err("decreasing");
    assert!(err.contains("non-decreasing"), "{err}");
    let err = recover(None, vec![entry(1, 0)]).expect_err("term 0");
    assert!(err.contains("below"), "{err}");
}
