//! The deterministic components on their own: the driver fed events by hand, the disk
//! worker over real files, no threads and no clock.
#![allow(clippy::unwrap_used)]

use std::io::{Cursor, Read};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use raftkv_node::{
    Action, DiskJob, DiskWorker, Driver, DriverError, Inbound, NodeConfig, PersistJob, ReadWaiter,
};
use raftkv_raft::{
    ClusterConfig, Config, Entry, EntryKind, HardState, InitialState, LogIndex, Message, MessageBody, NodeId,
    Raft, SnapshotMeta, Term,
};
use raftkv_storage::{LogOptions, LogStore, NodeIds, RealFs, Storage};

struct Reply(u32);
impl ReadWaiter for Reply {}

const IDS: NodeIds = NodeIds { cluster_id: 1, node_id: 2 };

fn voters() -> [NodeId; 3] {
    [NodeId(1), NodeId(2), NodeId(3)]
}

fn follower() -> Raft {
    let initial = InitialState {
        hard_state: HardState::default(),
        config: ClusterConfig::new(voters()),
        snapshot: None,
        entries: Vec::new(),
    };
    Raft::new(Config::new(NodeId(2)), initial).unwrap()
}

fn config() -> NodeConfig {
    NodeConfig::new(NodeId(2), voters())
}

fn meta(index: u64, term: u64) -> SnapshotMeta {
    SnapshotMeta { index: LogIndex(index), term: Term(term), config: ClusterConfig::new(voters()) }
}

fn from_leader(term: u64, body: MessageBody) -> Message {
    Message { from: NodeId(1), to: NodeId(2), term: Term(term), body }
}

fn staged(index: u64, term: u64, data: &str) -> Inbound {
    Inbound::Snapshot {
        message: from_leader(term, MessageBody::InstallSnapshot { meta: meta(index, term) }),
        data: Box::new(Cursor::new(data.as_bytes().to_vec())),
    }
}

fn entries(lo: u64, hi: u64, term: u64) -> Vec<Entry> {
    (lo..=hi)
        .map(|i| Entry {
            term: Term(term),
            index: LogIndex(i),
            kind: EntryKind::Normal,
            data: Bytes::from("x"),
        })
        .collect()
}

fn persist_jobs<R>(out: &mut Vec<Action<R>>) -> Vec<PersistJob> {
    out.drain(..)
        .filter_map(|a| match a {
            Action::Disk(DiskJob::Persist(job)) => Some(job),
            _ => None,
        })
        .collect()
}

/// Two InstallSnapshots in one batch, the core accepting the first and refusing the
/// second (already covered by the first): the first one's data is what gets installed.
#[test]
fn two_snapshots_in_one_batch_install_the_accepted_ones_data() {
    let mut d: Driver<Reply> = Driver::new(follower(), config(), 1);
    d.inbound(staged(11, 4, "state at 11"));
    d.inbound(staged(9, 4, "state at 9"));
    let mut out = Vec::new();
    d.process_ready(Duration::ZERO, &mut out).unwrap();
    let mut installs: Vec<_> = persist_jobs(&mut out).into_iter().filter_map(|j| j.snapshot).collect();
    assert_eq!(installs.len(), 1);
    let (meta, mut data) = installs.pop().unwrap();
    assert_eq!((meta.index, meta.term), (LogIndex(11), Term(4)));
    let mut bytes = String::new();
    data.read_to_string(&mut bytes).unwrap();
    assert_eq!(bytes, "state at 11");
}

/// A snapshot the core installs without any data having been staged for it stops the
/// member instead of installing an empty snapshot.
#[test]
fn a_snapshot_without_staged_data_is_an_error() {
    let mut d: Driver<Reply> = Driver::new(follower(), config(), 1);
    d.inbound(Inbound::Message(from_leader(4, MessageBody::InstallSnapshot { meta: meta(11, 4) })));
    let mut out = Vec::new();
    let err = d.process_ready(Duration::ZERO, &mut out).err();
    assert_eq!(err, Some(DriverError::MissingSnapshot { index: 11, term: 4 }));
    assert!(persist_jobs(&mut out).iter().all(|j| j.snapshot.is_none()));
}

/// The context of the follower's forwarded read index, after a heartbeat taught it the
/// leader.
fn forwarded_read_context(d: &mut Driver<Reply>, n: u32) -> u64 {
    let mut out = Vec::new();
    d.inbound(Inbound::Message(from_leader(
        4,
        MessageBody::Heartbeat { commit: LogIndex(0), read_round: 0 },
    )));
    d.process_ready(Duration::ZERO, &mut out).unwrap();
    out.clear();
    d.read([Reply(n)], Duration::ZERO, &mut out);
    d.process_ready(Duration::ZERO, &mut out).unwrap();
    out.iter()
        .find_map(|a| match a {
            Action::Send(Message { body: MessageBody::ReadIndexRequest { context }, .. }) => Some(*context),
            _ => None,
        })
        .expect("the follower forwards its read to the leader")
}

/// A reply to a read sent before a restart must not complete a read sent after it: read
/// contexts start from a value that grows from one boot to the next.
#[test]
fn a_read_reply_from_before_a_restart_completes_no_new_read() {
    let mut before: Driver<Reply> = Driver::new(follower(), config(), raftkv_node::boot_stamp());
    let old = forwarded_read_context(&mut before, 1);
    drop(before);
    std::thread::sleep(Duration::from_millis(5)); // a restart takes longer than this
    let mut after: Driver<Reply> = Driver::new(follower(), config(), raftkv_node::boot_stamp());
    let new = forwarded_read_context(&mut after, 2);
    assert_ne!(old, new, "read contexts restarted");
    // The old leader's late answer to the read sent before the restart.
    let mut out = Vec::new();
    after.inbound(Inbound::Message(from_leader(
        4,
        MessageBody::ReadIndexResponse { context: old, index: Some(LogIndex(0)) },
    )));
    after.process_ready(Duration::ZERO, &mut out).unwrap();
    assert!(
        !out.iter().any(|a| matches!(a, Action::ReadDone(Reply(2), _))),
        "a reply to a read from before the restart completed a new read"
    );
}

/// Installs snapshot 11@4 (with `tail` appended in the same job) over a durable log
/// 1..=20 of term 3, restarts, and returns the recovered last index and `(index, term)`s.
/// Nothing of the old log may survive: the core discards it whole on InstallSnapshot.
fn install_over_conflicting_log(tail: Vec<Entry>) -> (u64, Vec<(u64, u64)>) {
    let dir = tempfile::tempdir().unwrap();
    let fs = Arc::new(RealFs);
    let storage = Storage::create(fs.clone(), dir.path(), IDS, LogOptions::default()).unwrap();
    let mut worker = DiskWorker::new(storage.log, storage.snapshots);
    let hs = |term| Some(HardState { term: Term(term), voted_for: None, commit: LogIndex(0) });
    let job = |snapshot, entries, hard_state| PersistJob {
        snapshot,
        entries,
        hard_state,
        after_persist: Vec::new(),
        target: None,
    };
    let mut installed = Vec::new();
    worker
        .write(&mut [DiskJob::Persist(job(None, entries(1, 20, 3), hs(3)))], &mut |m| installed.push(m))
        .unwrap();
    let data: raftkv_node::StagedSnapshot = Box::new(Cursor::new(b"state at 11".to_vec()));
    let install = job(Some((meta(11, 4), data)), tail.clone(), hs(4));
    worker.write(&mut [DiskJob::Persist(install)], &mut |m| installed.push(m)).unwrap();
    assert_eq!(installed, vec![meta(11, 4)]);
    let log = worker.log();
    let held: Vec<(u64, u64)> =
        (log.first_index()..=log.last_index()).map(|i| (i, log.term(i).unwrap())).collect();
    let expected: Vec<(u64, u64)> = tail.iter().map(|e| (e.index.0, e.term.0)).collect();
    assert_eq!(held, expected, "the log holds more than the core kept after the install");
    drop(worker);

    let (storage, recovered) = Storage::open(fs, dir.path(), IDS, LogOptions::default()).unwrap();
    let snap = recovered.snapshot.as_ref().map(|m| (m.index, m.term));
    assert_eq!(snap, Some((11, 4)));
    let (_, mut reader) = storage.snapshots.latest().unwrap().unwrap();
    let mut bytes = Vec::new();
    reader.read_to_end(&mut bytes).unwrap();
    assert_eq!(bytes, b"state at 11");
    let kept = recovered.records.iter().map(|r| (r.index, r.term)).collect();
    (recovered.last_index, kept)
}

#[test]
fn snapshot_install_leaves_no_conflicting_tail_on_disk() {
    let (last, kept) = install_over_conflicting_log(Vec::new());
    assert_eq!(kept, Vec::new(), "the old conflicting tail survived the install");
    assert_eq!(last, 11);
}

#[test]
fn entries_appended_with_the_install_are_kept() {
    let (last, kept) = install_over_conflicting_log(entries(12, 13, 4));
    assert_eq!(kept, vec![(12, 4), (13, 4)]);
    assert_eq!(last, 13);
}

/// A state machine that records the membership changes it is shown.
#[derive(Default)]
struct Changes(Vec<(u64, ClusterConfig, Bytes)>);

impl raftkv_node::StateMachine for Changes {
    type Output = ();
    type Pin = ();
    fn apply(&mut self, _index: u64, _data: &[u8]) -> Option<(u64, ())> {
        None
    }
    fn apply_conf_change(
        &mut self,
        index: u64,
        change: &raftkv_raft::ConfChange,
        config: &ClusterConfig,
    ) -> Option<(u64, ())> {
        self.0.push((index, config.clone(), change.context.clone()));
        Some((index, ()))
    }
    fn pin(&mut self) {}
    fn write_snapshot(
        _pin: &(),
        _w: &mut dyn std::io::Write,
        _visit: &mut raftkv_node::Visit<'_, Self>,
    ) -> std::io::Result<()> {
        Ok(())
    }
    fn restore(&mut self, _r: &mut dyn Read, _len: u64) -> Result<(), raftkv_node::StateMachineError> {
        Ok(())
    }
}

/// A committed configuration change reaches the state machine with its context, and the
/// snapshots taken after it record the configuration it results in (not the one the member
/// started with).
#[test]
fn applied_configuration_changes_reach_the_state_machine_and_the_snapshot_meta() {
    use raftkv_raft::{ConfChange, ConfChangeStep};
    let start = ClusterConfig::new(voters());
    let mut applier = raftkv_node::Applier::new(None, start.clone(), 1);
    let change = ConfChange::single(ConfChangeStep::AddLearner(NodeId(4))).with_context(Bytes::from("m4"));
    let mut next = start.clone();
    next.learners.insert(NodeId(4));
    let e = Entry {
        term: Term(1),
        index: LogIndex(2),
        kind: EntryKind::ConfigChange,
        data: change.encode_with_config(&next),
    };
    let mut sm = Changes::default();
    let mut done = Vec::new();
    applier.apply(&mut sm, &[entries(1, 1, 1).remove(0), e], &mut done);
    assert_eq!(done.len(), 1, "the change completes its request");
    assert_eq!(sm.0, vec![(2, next.clone(), Bytes::from("m4"))]);
    assert_eq!(applier.begin_snapshot().config, next);
}

/// A member restarts with a configuration entry past its commit index (appended, not yet
/// committed: it may still be truncated). Its applier starts from the configuration at its
/// snapshot (here: the initial voters), not the core's configuration in force, so a
/// snapshot taken before the entry is applied records the configuration at its own index.
#[test]
fn a_restarted_member_snapshots_the_configuration_at_the_snapshot_index() {
    use raftkv_raft::{ConfChange, ConfChangeStep};
    let dir = tempfile::tempdir().unwrap();
    let fs = Arc::new(RealFs);
    let storage = Storage::create(fs.clone(), dir.path(), IDS, LogOptions::default()).unwrap();
    let mut worker = DiskWorker::new(storage.log, storage.snapshots);
    let start = ClusterConfig::new(voters());
    let mut next = start.clone();
    next.learners.insert(NodeId(4));
    let mut log = entries(1, 2, 1);
    log.push(Entry {
        term: Term(1),
        index: LogIndex(3),
        kind: EntryKind::ConfigChange,
        data: ConfChange::single(ConfChangeStep::AddLearner(NodeId(4))).encode_with_config(&next),
    });
    let job = PersistJob {
        snapshot: None,
        entries: log.clone(),
        hard_state: Some(HardState { term: Term(1), voted_for: None, commit: LogIndex(2) }),
        after_persist: Vec::new(),
        target: None,
    };
    worker.write(&mut [DiskJob::Persist(job)], &mut |_| {}).unwrap();
    drop(worker);

    let (storage, recovered) = Storage::open(fs, dir.path(), IDS, LogOptions::default()).unwrap();
    let mut sm = Changes::default();
    let (raft, snapshot) = raftkv_node::recover(&config(), &storage.snapshots, recovered, &mut sm).unwrap();
    assert_eq!(raft.cluster_config(), &next, "the core puts the appended entry in force");
    assert_eq!(raft.commit_index(), LogIndex(2));
    let mut applier = raftkv_node::Applier::recovered(snapshot.as_ref(), &config());
    applier.apply(&mut sm, &log[..2], &mut Vec::new());
    let meta = applier.begin_snapshot();
    assert_eq!(meta.index, LogIndex(2));
    assert_eq!(meta.config, start, "a snapshot at 2 records the configuration in force at 2");
}
