//! Named scenarios from the Raft paper and from known failure modes, each on a small
//! synchronous cluster (see `harness`).

mod harness;

use harness::{Cluster, is_append};
use raftkv_raft::{LogIndex, MessageBody, ProposeError, Role, Term};

/// Classic Raft for scenarios that script elections by hand: no PreVote, no CheckQuorum, one
/// entry per AppendEntries so replication can be cut at an exact index.
fn classic(n: u64) -> Cluster {
    Cluster::with_config(n, |c| {
        c.pre_vote = false;
        c.check_quorum = false;
        c.append_bytes_max = 1;
    })
}

/// Campaigns until `id` wins: a first attempt may only teach it a higher term.
fn elect(cluster: &mut Cluster, id: u64) {
    for _ in 0..3 {
        cluster.campaign(id);
        cluster.deliver_all();
        if cluster.raft(id).role() == Role::Leader {
            break;
        }
    }
    assert_eq!(cluster.raft(id).role(), Role::Leader, "node {id} should have won");
}

#[test]
fn three_nodes_elect_a_leader_and_commit_everywhere() {
    let mut c = Cluster::new(3);
    let leader = c.elect_any(100).expect("a leader within 100 ticks");
    for i in 0..10 {
        c.propose(leader, &format!("v{i}")).expect("leader accepts");
    }
    c.deliver_all();
    for id in 1..=3 {
        assert_eq!(c.applied_data(id), (0..10).map(|i| format!("v{i}")).collect::<Vec<_>>(), "node {id}");
    }
    assert!(c.violations.is_empty(), "{:?}", c.violations);
}

#[test]
fn follower_rejects_proposal_with_leader_hint() {
    let mut c = Cluster::new(3);
    let leader = c.elect_any(100).expect("leader");
    c.tick_all(2);
    let follower = if leader == 1 { 2 } else { 1 };
    assert_eq!(
        c.propose(follower, "x"),
        Err(ProposeError::NotLeader { leader_hint: Some(raftkv_raft::NodeId(leader)) })
    );
}

/// Figure 8 of the Raft paper: an entry of an earlier term stored on a majority can still be
/// overwritten, so a leader must not commit it by counting replicas (§5.4.2). `on_boot` runs
/// on every node (re)started, so a planted bug survives restarts. Returns S1's commit index
/// at step (c) and S5's first leadership term.
fn figure_8(c: &mut Cluster, on_boot: &dyn Fn(&mut Cluster, u64)) -> (u64, u64) {
    for id in 1..=5 {
        on_boot(c, id);
    }
    // S1 leads and its first entry (the no-op) commits everywhere.
    elect(c, 1);
    c.deliver_all();
    // (a) S1 replicates a new entry at index 2 to S2 only.
    c.partition(&[1], &[3, 4, 5]);
    c.propose(1, "from-s1").expect("leader");
    c.deliver_all();
    assert_eq!(c.raft(2).last_index(), LogIndex(2));
    // (b) S1 crashes; S5 wins with S3 and S4 and appends its no-op at index 2, but
    // replicates nothing.
    c.crash(1);
    c.heal();
    c.drop_where(|m| m.from.0 == 5 && is_append(m));
    elect(c, 5);
    let s5_term = c.raft(5).term();
    assert_eq!(c.raft(5).log_term(LogIndex(2)), Some(s5_term));
    // (c) S5 crashes; S1 restarts and wins. It brings S3 and S4 up to index 2 (its old
    // term) but its new no-op at index 3 reaches nobody: index 2 is now on a majority.
    c.crash(5);
    c.heal();
    c.restart(1);
    on_boot(c, 1);
    let probed = std::rc::Rc::new(std::cell::RefCell::new(std::collections::BTreeSet::new()));
    c.drop_where(move |m| match &m.body {
        MessageBody::AppendEntries { prev_log_index, .. } if m.from.0 == 1 => {
            // S2 already has index 2. S3 and S4 get the first probe (which they reject, as
            // they lack index 2) and then only index 2 itself.
            m.to.0 == 2 || (prev_log_index.0 >= 2 && !probed.borrow_mut().insert(m.to.0))
        }
        _ => false,
    });
    elect(c, 1);
    c.deliver_all();
    let old_term = c.raft(2).log_term(LogIndex(2)).expect("entry 2 on S2");
    for id in [1, 3, 4] {
        assert_eq!(c.raft(id).log_term(LogIndex(2)), Some(old_term), "index 2 is on S{id}");
    }
    assert_eq!(c.raft(1).last_index(), LogIndex(3));
    let s1_commit = c.raft(1).commit_index().0;
    // (d) S1 crashes; S5 restarts and wins with S2, S3 and S4 (its last term is newer) and
    // overwrites index 2 everywhere.
    c.crash(1);
    c.heal();
    c.restart(5);
    on_boot(c, 5);
    elect(c, 5);
    c.deliver_all();
    (s1_commit, s5_term.0)
}

#[test]
fn figure_8_leader_does_not_commit_earlier_term_entry_by_counting() {
    let mut c = classic(5);
    let (s1_commit, s5_term) = figure_8(&mut c, &|_, _| {});
    assert_eq!(s1_commit, 1, "S1 must not commit index 2 from an earlier term");
    for id in [2, 3, 4, 5] {
        assert_eq!(c.raft(id).log_term(LogIndex(2)), Some(Term(s5_term)), "node {id} holds S5's entry");
        assert!(c.raft(id).commit_index() >= LogIndex(3));
    }
    assert!(c.violations.is_empty(), "{:?}", c.violations);
}

#[cfg(feature = "planted-bugs")]
#[test]
fn figure_8_with_planted_bug_breaks_state_machine_safety() {
    let mut c = classic(5);
    let (s1_commit, _) = figure_8(&mut c, &|c, id| {
        c.raft_mut(id).plant_bug(Some(raftkv_raft::PlantedBug::CommitPreviousTermByCount))
    });
    assert_eq!(s1_commit, 2, "the bug commits index 2 by counting replicas");
    assert!(
        c.violations.iter().any(|v| v.contains("State Machine Safety")),
        "the checker must catch it: {:?}",
        c.violations
    );
}

#[test]
fn isolated_leader_is_replaced_and_its_uncommitted_entries_discarded() {
    let mut c = Cluster::new(5);
    let old = c.elect_any(200).expect("leader");
    c.propose(old, "committed").expect("leader");
    c.deliver_all();
    let others: Vec<u64> = (1..=5).filter(|i| *i != old).collect();
    c.partition(&[old], &others);
    for i in 0..5 {
        c.propose(old, &format!("lost{i}")).expect("still believes it leads");
    }
    c.deliver_all();
    // The majority elects a new leader and commits; CheckQuorum deposes the old one.
    let mut new = None;
    for _ in 0..300 {
        c.tick_all(1);
        if let Some(l) = others.iter().copied().find(|id| c.raft(*id).role() == Role::Leader) {
            new = Some(l);
            break;
        }
    }
    let new = new.expect("the majority elects a leader");
    c.propose(new, "after").expect("new leader");
    // CheckQuorum deposes it within two election timeouts.
    c.tick_all(25);
    assert_ne!(c.raft(old).role(), Role::Leader, "CheckQuorum made the isolated leader step down");
    c.heal();
    c.tick_all(20);
    for id in 1..=5 {
        assert_eq!(c.applied_data(id), vec!["committed", "after"], "node {id}");
    }
    assert!(c.violations.is_empty(), "{:?}", c.violations);
}

#[test]
fn follower_with_long_conflicting_log_is_repaired_a_term_at_a_time() {
    let mut c = Cluster::with_config(3, |cfg| {
        cfg.pre_vote = false;
        cfg.check_quorum = false;
    });
    elect(&mut c, 1);
    c.deliver_all();
    // Node 1 accumulates 200 uncommitted entries over several terms while cut off... It
    // cannot gain terms alone, so give it 200 entries in one term.
    c.partition(&[1], &[2, 3]);
    for i in 0..200 {
        c.propose(1, &format!("stale{i}")).expect("leader");
    }
    c.deliver_all();
    // Nodes 2 and 3 move on through three terms, committing a little in each.
    for round in 0..3 {
        let leader = if round % 2 == 0 { 2 } else { 3 };
        for _ in 0..40 {
            if c.raft(leader).role() == Role::Leader {
                break;
            }
            c.campaign(leader);
            c.deliver_all();
        }
        assert_eq!(c.raft(leader).role(), Role::Leader);
        c.propose(leader, &format!("fresh{round}")).expect("leader");
        c.deliver_all();
    }
    let before = c.delivered;
    let leader = c.leader().expect("leader");
    c.heal();
    // Count rejections node 1 sends while being repaired.
    let mut rejections = 0;
    for _ in 0..30 {
        rejections += c.count_queued(|m| {
            m.from.0 == 1 && matches!(m.body, MessageBody::AppendEntriesResponse { reject: Some(_), .. })
        });
        c.tick(leader);
        // Deliver one message at a time so every rejection is seen in the queue.
        c.deliver_all();
        if c.log_terms(1) == c.log_terms(leader) {
            break;
        }
    }
    assert_eq!(c.log_terms(1), c.log_terms(leader), "node 1 converged");
    assert!(
        c.delivered - before < 100,
        "repair took {} messages for 200 conflicting entries",
        c.delivered - before
    );
    assert!(rejections <= 4, "rejections: {rejections}");
    assert_eq!(c.applied_data(1), vec!["fresh0", "fresh1", "fresh2"]);
}

#[test]
fn candidate_with_stale_log_cannot_win() {
    let mut c = classic(3);
    elect(&mut c, 1);
    c.partition(&[3], &[1, 2]);
    c.propose(1, "x").expect("leader");
    c.deliver_all();
    c.heal();
    // Node 3 missed "x": its log is behind; nobody with the entry votes for it.
    c.campaign(3);
    c.deliver_all();
    assert_ne!(c.raft(3).role(), Role::Leader);
    // Node 1 or 2 (which hold "x") wins the next election, and "x" survives.
    elect(&mut c, 2);
    c.propose(2, "y").expect("leader");
    c.deliver_all();
    for id in 1..=3 {
        assert_eq!(c.applied_data(id), vec!["x", "y"], "node {id}");
    }
}

#[test]
fn prevote_blocks_rejoining_node() {
    let mut c = Cluster::new(3);
    let leader = c.elect_any(100).expect("leader");
    let term = c.raft(leader).term();
    let lone = if leader == 3 { 2 } else { 3 };
    c.isolate(lone);
    c.tick_all(200);
    assert_eq!(c.raft(lone).term(), term, "PreVote keeps the isolated node's term");
    c.heal();
    c.tick_all(50);
    assert_eq!(c.leader(), Some(leader), "the healthy leader survives the rejoin");
    assert_eq!(c.raft(leader).term(), term);
}

#[test]
fn without_prevote_rejoining_node_disrupts_the_leader() {
    // The contrast that shows the previous test can fail.
    let mut c = Cluster::with_config(3, |cfg| {
        cfg.pre_vote = false;
        cfg.check_quorum = false;
    });
    let leader = c.elect_any(100).expect("leader");
    let term = c.raft(leader).term();
    let lone = if leader == 3 { 2 } else { 3 };
    c.isolate(lone);
    c.tick_all(200);
    assert!(c.raft(lone).term() > term);
    c.heal();
    c.tick_all(50);
    assert!(c.raft(leader).term() > term, "the leader was deposed by a higher term");
}

#[test]
fn commits_continue_under_20_percent_message_loss() {
    let mut c = Cluster::new(5);
    c.loss_percent = 20;
    let mut committed = 0;
    let mut attempt = 0;
    while committed < 50 && attempt < 2000 {
        attempt += 1;
        let Some(leader) = c.elect_any(200) else { continue };
        let value = format!("v{committed}");
        let Ok((term, index)) = c.propose(leader, &value) else { continue };
        for _ in 0..50 {
            c.tick_all(1);
            let applied = &c.nodes[&leader].applied;
            if let Some(e) = applied.iter().find(|e| e.index == index) {
                if e.term == term {
                    committed += 1;
                }
                break;
            }
        }
    }
    assert_eq!(committed, 50, "50 commands committed under 20% loss");
    c.loss_percent = 0;
    c.tick_all(30);
    let reference = c.applied_data(1);
    for id in 2..=5 {
        assert_eq!(c.applied_data(id), reference, "node {id}");
    }
    assert!(c.violations.is_empty(), "{:?}", c.violations);
}

#[test]
fn all_nodes_restarted_recover_every_committed_entry() {
    let mut c = Cluster::new(3);
    let leader = c.elect_any(100).expect("leader");
    for i in 0..30 {
        c.propose(leader, &format!("v{i}")).expect("leader");
        if i % 7 == 0 {
            c.deliver_all();
        }
    }
    c.deliver_all();
    c.tick_all(3);
    let expected: Vec<String> = (0..30).map(|i| format!("v{i}")).collect();
    for id in 1..=3 {
        c.crash(id);
    }
    for id in 1..=3 {
        c.restart(id);
    }
    let leader = c.elect_any(200).expect("leader after restart");
    c.propose(leader, "after").expect("leader");
    c.tick_all(5);
    for id in 1..=3 {
        let mut data = c.applied_data(id);
        assert_eq!(data.pop().as_deref(), Some("after"));
        assert_eq!(data, expected, "node {id} re-applied every committed entry in order");
    }
}

#[test]
fn vote_is_not_granted_before_it_is_durable() {
    let mut c = classic(3);
    c.nodes.get_mut(&2).expect("node").hold_writes = true;
    c.nodes.get_mut(&3).expect("node").hold_writes = true;
    c.campaign(1);
    c.deliver_all();
    // Nodes 2 and 3 voted in memory, but their grants wait for the votes to be durable.
    assert_eq!(c.raft(2).voted_for(), Some(raftkv_raft::NodeId(1)));
    assert_eq!(c.raft(1).role(), Role::Candidate, "no durable grant yet");
    c.sync(2);
    c.deliver_all();
    assert_eq!(c.raft(1).role(), Role::Leader);
}

#[test]
fn check_quorum_leader_steps_down_when_cut_off() {
    let mut c = Cluster::new(3);
    let leader = c.elect_any(100).expect("leader");
    c.isolate(leader);
    c.tick_all(25);
    assert_ne!(c.raft(leader).role(), Role::Leader);
}

#[test]
fn read_index_confirms_leadership_with_one_round_for_a_batch() {
    let mut c = Cluster::new(3);
    let leader = c.elect_any(100).expect("leader");
    c.propose(leader, "x").expect("leader");
    c.deliver_all();
    let heartbeats_before = c.delivered;
    for ctx in 1..=10 {
        c.raft_mut(leader).read_index(ctx).expect("read accepted");
    }
    c.process(leader);
    c.deliver_all();
    let reads = &c.nodes[&leader].read_states;
    assert_eq!(reads.len(), 10);
    let commit = c.raft(leader).commit_index();
    assert!(reads.iter().all(|r| r.index == commit));
    // One heartbeat and one response per follower for the whole batch.
    assert_eq!(c.delivered - heartbeats_before, 4);
}

#[test]
fn read_index_from_follower_is_answered_by_the_leader() {
    let mut c = Cluster::new(3);
    let leader = c.elect_any(100).expect("leader");
    c.propose(leader, "x").expect("leader");
    c.deliver_all();
    c.tick_all(1);
    let follower = if leader == 1 { 2 } else { 1 };
    c.read_index(follower, 42);
    c.deliver_all();
    let reads = &c.nodes[&follower].read_states;
    assert_eq!(reads.len(), 1);
    assert_eq!(reads[0].context, 42);
    assert_eq!(reads[0].index, c.raft(leader).commit_index());
}

#[test]
fn read_index_on_partitioned_leader_does_not_complete() {
    let mut c = Cluster::new(3);
    let leader = c.elect_any(100).expect("leader");
    c.propose(leader, "x").expect("leader");
    c.deliver_all();
    c.isolate(leader);
    c.read_index(leader, 7);
    c.deliver_all();
    assert!(c.nodes[&leader].read_states.is_empty(), "a deposed leader must not confirm a read");
}

#[test]
fn lagging_follower_is_caught_up_by_snapshot_then_log() {
    let mut c = Cluster::new(3);
    let leader = c.elect_any(100).expect("leader");
    let lagging = if leader == 3 { 2 } else { 3 };
    c.crash(lagging);
    // Silent for an election timeout: the leader keeps no entries for it.
    c.tick_all(20);
    for i in 0..100 {
        c.propose(leader, &format!("v{i}")).expect("leader");
    }
    c.deliver_all();
    let applied = c.raft(leader).applied_index();
    c.raft_mut(leader).snapshot_taken(applied, applied).expect("snapshot");
    assert_eq!(c.raft(leader).first_index(), applied + 1);
    c.restart(lagging);
    c.tick_all(3);
    assert_eq!(c.nodes[&lagging].disk.snapshot.as_ref().map(|s| s.index), Some(applied));
    c.propose(leader, "after").expect("leader");
    c.tick_all(3);
    assert_eq!(c.raft(lagging).commit_index(), c.raft(leader).commit_index());
    assert_eq!(c.applied_data(lagging), vec!["after"]);
}

#[test]
fn proposals_between_readies_travel_in_one_append() {
    let mut c = Cluster::new(3);
    let leader = c.elect_any(100).expect("leader");
    c.deliver_all();
    for i in 0..100 {
        c.raft_mut(leader).propose(bytes::Bytes::from(format!("v{i}"))).expect("leader");
    }
    c.process(leader);
    let appends = c.count_queued(|m| {
        m.from.0 == leader
            && matches!(&m.body, MessageBody::AppendEntries { entries, .. } if entries.len() == 100)
    });
    assert_eq!(appends, 2, "one append of 100 entries to each follower");
}

#[test]
fn pipelining_is_bounded_by_the_inflight_window() {
    let mut c = Cluster::with_config(3, |cfg| {
        cfg.inflight_messages_max = 4;
        cfg.append_bytes_max = 1;
    });
    let leader = c.elect_any(100).expect("leader");
    c.deliver_all();
    for i in 0..50 {
        c.raft_mut(leader).propose(bytes::Bytes::from(format!("v{i}"))).expect("leader");
    }
    c.process(leader);
    let follower = if leader == 1 { 2 } else { 1 };
    let inflight = c.count_queued(|m| m.from.0 == leader && m.to.0 == follower && is_append(m));
    assert_eq!(inflight, 4, "at most 4 appends in flight to one follower");
    c.deliver_all();
    assert_eq!(c.raft(follower).last_index(), c.raft(leader).last_index());
}

#[test]
fn stale_leader_learns_new_term_and_steps_down() {
    let mut c = Cluster::new(3);
    let old = c.elect_any(100).expect("leader");
    let others: Vec<u64> = (1..=3).filter(|i| *i != old).collect();
    // Cut only the old leader's inbound links: it keeps sending, nobody answers.
    for o in &others {
        c.cut_one_way(*o, old);
    }
    c.tick_all(60);
    let new = c.leader().expect("a leader");
    assert_ne!(new, old);
    c.heal();
    c.tick_all(5);
    assert_ne!(c.raft(old).role(), Role::Leader);
    assert_eq!(c.raft(old).term(), c.raft(new).term());
}

#[test]
fn single_node_cluster_commits_alone() {
    let mut c = Cluster::new(1);
    c.campaign(1);
    assert_eq!(c.raft(1).role(), Role::Leader);
    c.propose(1, "solo").expect("leader");
    assert_eq!(c.applied_data(1), vec!["solo"]);
    c.read_index(1, 9);
    assert_eq!(c.nodes[&1].read_states.len(), 1);
}

#[test]
fn follower_forwards_proposals_to_the_leader() {
    let mut c = Cluster::new(3);
    let leader = c.elect_any(100).expect("leader");
    c.tick_all(2);
    let follower = if leader == 1 { 2 } else { 1 };
    let r = c.raft_mut(follower).propose_or_forward(vec![bytes::Bytes::from("via-follower")]);
    assert_eq!(r, Ok(None), "forwarded, not appended locally");
    c.process(follower);
    c.deliver_all();
    for id in 1..=3 {
        assert_eq!(c.applied_data(id), vec!["via-follower"], "node {id}");
    }
}

#[test]
fn restart_with_entries_durable_but_hard_state_not_adopts_the_log_term() {
    use raftkv_raft::{ClusterConfig, Config, Entry, EntryKind, HardState, InitialState, NodeId, Raft};
    let entries = vec![
        Entry { term: Term(1), index: LogIndex(1), kind: EntryKind::Noop, data: bytes::Bytes::new() },
        Entry { term: Term(3), index: LogIndex(2), kind: EntryKind::Noop, data: bytes::Bytes::new() },
    ];
    let initial = InitialState {
        hard_state: HardState { term: Term(2), voted_for: Some(NodeId(2)), commit: LogIndex(1) },
        config: ClusterConfig::new([NodeId(1), NodeId(2), NodeId(3)]),
        snapshot: None,
        entries,
    };
    let raft = Raft::new(Config::new(NodeId(1)), initial).expect("recoverable");
    assert_eq!(raft.term(), Term(3));
    assert_eq!(raft.voted_for(), None);
}

/// A leader's Readies after a commit carry a hard state that differs only in `commit`: no
/// sync is needed for it. Entries and a new term or vote do need one.
#[test]
fn only_entries_and_new_terms_or_votes_need_a_sync() {
    use raftkv_raft::{Entry, EntryKind, HardState, NodeId, Ready};
    let durable = HardState { term: Term(3), voted_for: Some(NodeId(1)), commit: LogIndex(10) };
    let commit_only =
        Ready { hard_state: Some(HardState { commit: LogIndex(12), ..durable }), ..Ready::default() };
    assert!(commit_only.must_persist());
    assert!(!commit_only.must_sync(&durable));
    let new_term = Ready { hard_state: Some(HardState { term: Term(4), ..durable }), ..Ready::default() };
    assert!(new_term.must_sync(&durable));
    let new_vote = Ready {
        hard_state: Some(HardState { term: Term(4), voted_for: Some(NodeId(2)), commit: LogIndex(10) }),
        ..Ready::default()
    };
    assert!(new_vote.must_sync(&durable));
    let vote_only = Ready { hard_state: Some(HardState { voted_for: None, ..durable }), ..Ready::default() };
    assert!(vote_only.must_sync(&durable));
    let entries = Ready {
        entries: vec![Entry {
            term: Term(3),
            index: LogIndex(11),
            kind: EntryKind::Normal,
            data: bytes::Bytes::from_static(b"x"),
        }],
        ..commit_only.clone()
    };
    assert!(entries.must_sync(&durable));
    assert!(!Ready::default().must_sync(&durable));
}

/// A voter whose log is newer refuses a stale candidate's vote requests without restarting
/// its own election timer (§5.2: the timer restarts on hearing from the leader or granting a
/// vote), so a stale candidate whose clock runs faster, campaigning at ever higher terms
/// (PreVote off), cannot keep it from campaigning and winning.
#[test]
fn a_stale_candidate_with_a_fast_clock_cannot_keep_an_up_to_date_voter_from_winning() {
    let mut c = Cluster::with_config(3, |cfg| {
        cfg.pre_vote = false;
        cfg.check_quorum = false;
    });
    elect(&mut c, 1);
    c.deliver_all();
    c.isolate(3);
    for i in 0..5 {
        c.propose(1, &format!("v{i}")).expect("leader");
    }
    c.deliver_all();
    assert!(c.raft(2).last_index() > c.raft(3).last_index(), "node 3 is behind");
    c.crash(1);
    c.heal();
    // Node 3's clock runs twice as fast as node 2's.
    let mut stale_campaigns = 0;
    for _ in 0..2_000 {
        for _ in 0..2 {
            c.tick(3);
            stale_campaigns +=
                usize::from(c.raft(3).role() == Role::Candidate && c.count_queued(|_| true) > 0);
            c.deliver_all();
        }
        c.tick(2);
        c.deliver_all();
        if c.raft(2).role() == Role::Leader {
            break;
        }
    }
    assert!(stale_campaigns > 0, "node 3 never campaigned");
    assert_eq!(c.raft(2).role(), Role::Leader, "node 3's campaigns kept node 2 from ever campaigning");
    assert!(c.violations.is_empty(), "{:?}", c.violations);
}
