//! Snapshot scenarios on the synchronous harness: catching a follower up by snapshot and
//! then by log, a transfer interrupted by a leader change, stale snapshots, and the §7 rule
//! that a follower keeps a matching log suffix. The harness checks on every step that state
//! machines agree at equal applied index, apply in order, and never move commit or applied
//! backwards.

mod harness;

use harness::Cluster;
use raftkv_raft::{CompactionPolicy, LogIndex, Message, MessageBody, NodeId, SnapshotMeta};

fn others(c: &Cluster, id: u64) -> Vec<u64> {
    c.ids.iter().copied().filter(|x| *x != id).collect()
}

fn is_snapshot(m: &Message) -> bool {
    matches!(m.body, MessageBody::InstallSnapshot { .. })
}

/// Counts the snapshots sent to `to` from now on (until the next `clear_filters`).
fn count_snapshots_to(c: &mut Cluster, to: u64) -> std::rc::Rc<std::cell::Cell<u32>> {
    let snapshots = std::rc::Rc::new(std::cell::Cell::new(0));
    let counted = snapshots.clone();
    c.drop_where(move |m| {
        if m.to == NodeId(to) && is_snapshot(m) {
            counted.set(counted.get() + 1);
        }
        false
    });
    snapshots
}

fn install_message(c: &Cluster, from: u64, to: u64, meta: SnapshotMeta) -> Message {
    Message {
        from: NodeId(from),
        to: NodeId(to),
        term: c.raft(from).term(),
        body: MessageBody::InstallSnapshot { meta },
    }
}

#[test]
fn follower_down_while_leader_compacts_10000_entries_catches_up_by_snapshot_then_log() {
    let mut c = Cluster::new(3);
    let leader = c.elect_any(100).expect("leader");
    let [lagging, peer] = others(&c, leader)[..] else { panic!("three nodes") };
    c.crash(lagging);
    // Silent for an election timeout: the leader keeps no entries for it.
    c.tick_all(20);
    let policy = CompactionPolicy {
        snapshot_every_entries: 1_000,
        snapshot_every_log_bytes: 0,
        keep_entries_behind: 100,
    };
    let mut snapshots = 0;
    for i in 0..10_000 {
        c.propose(leader, &format!("v{i}")).expect("leader accepts");
        if i % 100 == 99 {
            c.deliver_all();
            snapshots += c.maybe_snapshot(leader, &policy).is_some() as u32;
            c.maybe_snapshot(peer, &policy);
        }
    }
    c.deliver_all();
    assert_eq!(snapshots, 10, "the policy snapshots every 1,000 entries");
    let snap = c.raft(leader).snapshot_meta().cloned().expect("leader snapshot");
    assert!(snap.index.0 >= 10_000);
    assert_eq!(c.raft(leader).first_index(), snap.index - 100 + 1, "a tail of 100 entries is kept");

    c.restart(lagging);
    c.tick_all(5);
    assert_eq!(c.nodes[&lagging].snapshots_installed, 1, "caught up by one snapshot");
    assert_eq!(c.nodes[&lagging].disk.snapshot.as_ref().map(|s| s.index), Some(snap.index));
    for i in 0..20 {
        c.propose(leader, &format!("after{i}")).expect("leader");
    }
    c.tick_all(3);
    // Then by log: what follows the snapshot was applied from entries.
    // (Before the snapshot it re-applied only what it held on disk: the first leader's no-op.)
    let log_applied: Vec<LogIndex> = c.nodes[&lagging].applied.iter().map(|e| e.index).collect();
    assert!(log_applied.iter().all(|i| *i <= LogIndex(1) || *i > snap.index), "{log_applied:?}");
    assert_eq!(log_applied.iter().find(|i| **i > snap.index), Some(&(snap.index + 1)));
    assert!(log_applied.len() >= 20);
    assert_eq!(c.applied_data(lagging).last().map(String::as_str), Some("after19"));
    assert_eq!(c.raft(lagging).commit_index(), c.raft(leader).commit_index());
    assert_eq!(c.digest(lagging), c.digest(leader), "equal state machines at equal applied index");
    assert!(c.violations.is_empty(), "{:?}", c.violations);
}

#[test]
fn snapshot_interrupted_by_leader_change_completes_from_new_leader() {
    let mut c = Cluster::new(3);
    let old = c.elect_any(100).expect("leader");
    let [lagging, next] = others(&c, old)[..] else { panic!("three nodes") };
    c.crash(lagging);
    // Silent for an election timeout: the leader keeps no entries for it.
    c.tick_all(20);
    for i in 0..200 {
        c.propose(old, &format!("v{i}")).expect("leader");
    }
    c.deliver_all();
    let applied = c.raft(old).applied_index().0;
    let old_meta = c.snapshot(old, applied, applied);
    c.snapshot(next, applied, applied);
    // The old leader's transfer never completes (its stream is cut mid-way).
    c.drop_where(is_snapshot);
    c.restart(lagging);
    c.tick_all(3);
    assert!(c.nodes[&lagging].disk.snapshot.is_none(), "the interrupted snapshot was not installed");
    let old_term = c.raft(old).term();
    c.raft_mut(old).report_snapshot(NodeId(lagging), false);

    // Leader change: the old leader goes down, the other follower takes over.
    c.crash(old);
    c.clear_filters();
    let mut new_leader = None;
    for _ in 0..300 {
        c.tick_all(1);
        if let Some(l) = c.leader().filter(|l| *l != old) {
            new_leader = Some(l);
            break;
        }
    }
    assert_eq!(new_leader, Some(next), "only the up-to-date follower can win");
    c.tick_all(5);
    assert_eq!(c.nodes[&lagging].snapshots_installed, 1);
    assert_eq!(c.nodes[&lagging].disk.snapshot.as_ref().map(|s| s.index.0), Some(applied));
    assert_eq!(c.raft(lagging).leader(), Some(NodeId(next)));

    // The old leader's snapshot, arriving late with its stale term, is ignored.
    let before = (c.raft(lagging).commit_index(), c.raft(lagging).applied_index(), c.raft(lagging).term());
    c.inject(Message {
        from: NodeId(old),
        to: NodeId(lagging),
        term: old_term,
        body: MessageBody::InstallSnapshot { meta: old_meta },
    });
    assert_eq!(
        before,
        (c.raft(lagging).commit_index(), c.raft(lagging).applied_index(), c.raft(lagging).term())
    );
    assert_eq!(c.nodes[&lagging].snapshots_installed, 1);

    c.propose(next, "after").expect("new leader");
    c.tick_all(3);
    assert_eq!(c.applied_data(lagging), vec!["after"]);
    assert_eq!(c.digest(lagging), c.digest(next));
    assert!(c.violations.is_empty(), "{:?}", c.violations);
}

#[test]
fn stale_snapshot_older_than_the_followers_commit_is_ignored() {
    let mut c = Cluster::new(3);
    let leader = c.elect_any(100).expect("leader");
    let follower = others(&c, leader)[0];
    for i in 0..20 {
        c.propose(leader, &format!("v{i}")).expect("leader");
    }
    c.deliver_all();
    let at = c.raft(leader).applied_index().0;
    let meta = c.snapshot(leader, at, at);
    for i in 0..20 {
        c.propose(leader, &format!("w{i}")).expect("leader");
    }
    c.tick_all(2);
    let f = c.raft(follower);
    let before =
        (f.commit_index(), f.applied_index(), f.first_index(), f.last_index(), c.log_terms(follower));
    assert!(before.0 > meta.index);
    c.inject(install_message(&c, leader, follower, meta));
    let f = c.raft(follower);
    assert_eq!(
        before,
        (f.commit_index(), f.applied_index(), f.first_index(), f.last_index(), c.log_terms(follower))
    );
    assert_eq!(c.nodes[&follower].snapshots_installed, 0);
    assert!(c.nodes[&follower].disk.snapshot.is_none());
    assert!(c.violations.is_empty(), "{:?}", c.violations);
}

#[test]
fn follower_keeps_matching_suffix_after_a_snapshot_whose_last_entry_it_has() {
    let mut c = Cluster::new(3);
    let leader = c.elect_any(100).expect("leader");
    let follower = others(&c, leader)[0];
    c.propose(leader, "base").expect("leader");
    c.tick_all(2);
    let commit0 = c.raft(follower).commit_index();
    // The follower gets ten more entries, but never hears that they committed.
    c.drop_where(move |m| {
        m.to == NodeId(follower)
            && match &m.body {
                MessageBody::AppendEntries { leader_commit, .. } => *leader_commit > commit0,
                MessageBody::Heartbeat { .. } => true,
                _ => false,
            }
    });
    for i in 0..10 {
        c.propose(leader, &format!("v{i}")).expect("leader");
    }
    c.deliver_all();
    let last = c.raft(follower).last_index();
    assert_eq!(last, c.raft(leader).last_index());
    assert_eq!(c.raft(follower).commit_index(), commit0);
    let terms = c.log_terms(follower);
    let first = c.raft(follower).first_index();

    // The leader snapshots in the middle of what the follower holds.
    let mid = commit0.0 + 5;
    let meta = c.snapshot(leader, mid, mid);
    c.inject(install_message(&c, leader, follower, meta));
    let f = c.raft(follower);
    assert_eq!(f.commit_index(), LogIndex(mid), "commits up to the snapshot");
    assert_eq!((f.first_index(), f.last_index()), (first, last), "keeps the matching suffix");
    assert_eq!(c.log_terms(follower), terms);
    assert_eq!(c.nodes[&follower].snapshots_installed, 0, "nothing to restore: the log has it");
    assert_eq!(c.digest(follower).0, mid, "applies up to the snapshot from its own log");

    c.clear_filters();
    c.tick_all(3);
    assert_eq!(c.raft(follower).commit_index(), last);
    assert_eq!(c.digest(follower), c.digest(leader));
    assert!(c.violations.is_empty(), "{:?}", c.violations);
}

#[test]
fn applied_and_commit_never_move_backwards_on_stale_install_snapshot() {
    let mut c = Cluster::new(3);
    let leader = c.elect_any(100).expect("leader");
    let follower = others(&c, leader)[0];
    for i in 0..30 {
        c.propose(leader, &format!("v{i}")).expect("leader");
    }
    c.tick_all(2);
    let early = c.snapshot(leader, 10, 10);
    let at = c.raft(leader).applied_index().0;
    let current = c.snapshot(leader, at, at);
    let f = c.raft(follower);
    let before = (f.commit_index(), f.applied_index());
    assert_eq!(before.0, current.index, "the follower committed everything");
    // Older than the commit index, and equal to it: both are stale.
    for meta in [early.clone(), current.clone(), early.clone()] {
        c.inject(install_message(&c, leader, follower, meta));
        let f = c.raft(follower);
        assert_eq!((f.commit_index(), f.applied_index()), before);
    }
    // After a restart the follower recovers its commit index; a stale snapshot still does not
    // move it back, and applying resumes from the log.
    c.crash(follower);
    c.restart(follower);
    let restored_commit = c.raft(follower).commit_index();
    c.inject(install_message(&c, leader, follower, early));
    assert_eq!(c.raft(follower).commit_index(), restored_commit);
    c.tick_all(3);
    assert_eq!(c.raft(follower).applied_index(), c.raft(leader).applied_index());
    assert_eq!(c.digest(follower), c.digest(leader));
    assert_eq!(c.nodes[&follower].snapshots_installed, 0);
    assert!(c.violations.is_empty(), "{:?}", c.violations);
}

/// A leader compacting right up to its snapshot keeps the entries a live follower a few
/// entries behind still needs, so that follower catches up from the log instead of by a
/// snapshot (under steady writes such a follower could need a new snapshot as soon as it
/// installed the last, and never ack its clients: snapshot-tail seeds 92 and 792 of the
/// simulator). A follower silent for an election timeout holds nothing back.
#[test]
fn a_live_follower_a_few_entries_behind_is_served_from_the_log_not_a_snapshot() {
    let mut c = Cluster::new(3);
    let leader = c.elect_any(100).expect("leader");
    let [lagging, _] = others(&c, leader)[..] else { panic!("three nodes") };
    for i in 0..5 {
        c.propose(leader, &format!("a{i}")).expect("leader");
    }
    c.deliver_all();
    // The lagging follower misses the next appends but answers the heartbeats.
    c.drop_where(move |m| m.to == NodeId(lagging) && matches!(m.body, MessageBody::AppendEntries { .. }));
    for i in 0..5 {
        c.propose(leader, &format!("b{i}")).expect("leader");
    }
    c.tick_all(2);
    let matched = c.raft(leader).progress(NodeId(lagging)).expect("progress").0;
    let applied = c.raft(leader).applied_index();
    assert!(matched < applied, "the follower lags");
    c.snapshot(leader, applied.0, applied.0);
    assert!(c.raft(leader).first_index() <= matched + 1, "the entries the follower needs were kept");
    c.clear_filters();
    let snapshots = count_snapshots_to(&mut c, lagging);
    c.tick_all(3);
    assert_eq!(snapshots.get(), 0, "the follower was sent a snapshot");
    assert_eq!(c.raft(lagging).last_index(), c.raft(leader).last_index(), "caught up from the log");
    // A follower silent for an election timeout holds nothing back.
    c.isolate(lagging);
    c.heal();
    c.crash(lagging);
    for i in 0..3 {
        c.propose(leader, &format!("c{i}")).expect("leader");
    }
    c.tick_all(25);
    let applied = c.raft(leader).applied_index();
    c.snapshot(leader, applied.0, applied.0);
    assert_eq!(c.raft(leader).first_index(), applied + 1, "a silent follower held back compaction");
    assert!(c.violations.is_empty(), "{:?}", c.violations);
}

/// What the leader keeps for a lagging follower is bounded by the round trips replaying it
/// takes at the flow control (`catch_up_round_trips_max`): with one one-entry AppendEntries in
/// flight, a follower 100 entries behind would need 100 round trips, so compaction cuts it
/// off (it catches up by snapshot), while a follower 3 entries behind keeps its tail.
#[test]
fn a_follower_further_behind_than_the_round_trip_budget_is_sent_a_snapshot() {
    let mut c = Cluster::with_config(5, |config| {
        config.inflight_messages_max = 1;
        config.append_bytes_max = 1;
    });
    let leader = c.elect_any(100).expect("leader");
    let rest = others(&c, leader);
    let (far, near) = (rest[0], rest[1]);
    c.propose(leader, "start").expect("leader");
    c.deliver_all();
    c.tick_all(2);
    // `far` misses 100 appends, `near` the last 3; both answer heartbeats.
    c.drop_where(move |m| m.to == NodeId(far) && matches!(m.body, MessageBody::AppendEntries { .. }));
    for i in 0..100 {
        c.propose(leader, &format!("a{i}")).expect("leader");
        c.tick_all(1);
    }
    c.drop_where(move |m| m.to == NodeId(near) && matches!(m.body, MessageBody::AppendEntries { .. }));
    for i in 0..3 {
        c.propose(leader, &format!("b{i}")).expect("leader");
        c.tick_all(1);
    }
    c.tick_all(2);
    let far_match = c.raft(leader).progress(NodeId(far)).expect("progress").0;
    let near_match = c.raft(leader).progress(NodeId(near)).expect("progress").0;
    let applied = c.raft(leader).applied_index();
    assert!(applied.0 >= far_match.0 + 100, "far lags by 100: match {far_match}, applied {applied}");
    assert!(
        near_match < applied && near_match.0 + 3 >= applied.0,
        "near lags by a few: {near_match}, {applied}"
    );
    c.snapshot(leader, applied.0, applied.0);
    let first = c.raft(leader).first_index();
    assert!(first <= near_match + 1, "the few entries near needs were kept (first index {first})");
    assert!(first > far_match + 1, "the 100 entries far needs were kept (first index {first})");
    c.clear_filters();
    let snapshots = count_snapshots_to(&mut c, far);
    c.tick_all(20);
    assert!(snapshots.get() > 0, "far was not sent a snapshot");
    assert!(c.violations.is_empty(), "{:?}", c.violations);
}
