//! The runtime's deterministic components driven step by step in virtual time, as a
//! simulator drives them: three members, each with the real `FileLogStore` and snapshot
//! files on its own `SimFs`, a network that delays and reorders messages, disk batches and
//! applies at arbitrary points, a member crashing (losing what it had not synced) and
//! restarting from its files, catching up by snapshot, clients reading through ReadIndex
//! (forwarded by followers). Checks that every member ends with the same state, holding
//! every acknowledged command, and that every linearizable read returns a count at least
//! as large as the number of commands acknowledged before the read was sent, and no larger
//! than the number proposed.
#![allow(clippy::unwrap_used)]

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::io::{self, Cursor, Read, Write};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use raftkv_node::{
    Action, Applier, DiskJob, DiskWorker, Driver, Inbound, NodeConfig, ReadWaiter, StateMachine, Visit,
    codec, recover, write_snapshot,
};
use raftkv_raft::{LogIndex, MessageBody, NodeId, SnapshotMeta};
use raftkv_storage::{
    CrashMode, FileLogStore, LogOptions, NodeIds, Recovered, SimFs, SnapshotStore, Storage,
};

#[derive(Default)]
struct Counter {
    value: u64,
}

impl StateMachine for Counter {
    type Output = u64;
    type Pin = u64;
    fn apply(&mut self, _index: u64, data: &[u8]) -> Option<(u64, u64)> {
        let id = u64::from_le_bytes(data.get(..8)?.try_into().ok()?);
        self.value += 1;
        Some((id, self.value))
    }
    fn pin(&mut self) -> u64 {
        self.value
    }
    fn write_snapshot(pin: &u64, w: &mut dyn Write, _visit: &mut Visit<'_, Self>) -> io::Result<()> {
        w.write_all(&pin.to_le_bytes())
    }
    fn restore(&mut self, r: &mut dyn Read, _len: u64) -> Result<(), raftkv_node::StateMachineError> {
        let mut b = [0u8; 8];
        r.read_exact(&mut b).map_err(|e| e.to_string())?;
        self.value = u64::from_le_bytes(b);
        Ok(())
    }
}

/// A read: its id.
struct Token(u64);
impl ReadWaiter for Token {}

/// A read sent: acknowledged commands when it was sent.
struct ReadSent {
    acknowledged_before: u64,
}

/// The harness's only randomness, from one seed.
use raftkv_rng::SplitMix64 as Rng;

enum ApplyItem {
    Entries(Vec<raftkv_raft::Entry>),
    Restore(SnapshotMeta),
}

/// One running member: the three components and the queues between them.
struct Running {
    driver: Driver<Token>,
    disk: DiskWorker<FileLogStore>,
    applier: Applier,
    sm: Counter,
    snapshots: SnapshotStore,
    disk_queue: Vec<DiskJob>,
    apply_queue: VecDeque<ApplyItem>,
}

struct Member {
    id: NodeId,
    fs: SimFs,
    running: Option<Running>,
}

const MEMBERS: [NodeId; 3] = [NodeId(1), NodeId(2), NodeId(3)];

fn config(id: NodeId) -> NodeConfig {
    let mut c = NodeConfig::new(id, MEMBERS);
    c.snapshot_count = 25;
    c.snapshot_keep_entries = 5;
    c
}

fn opts() -> LogOptions {
    LogOptions { preallocate: 0, segment_size: 64 << 10, ..LogOptions::default() }
}

fn ids(id: NodeId) -> NodeIds {
    NodeIds { cluster_id: 7, node_id: id.0 }
}

fn start(id: NodeId, fs: &SimFs, fresh: bool, now: Duration) -> Running {
    let dir = Path::new("/member");
    let (storage, recovered) = if fresh {
        let s = Storage::create(Arc::new(fs.clone()), dir, ids(id), opts()).unwrap();
        (s, Recovered { first_index: 1, ..Recovered::default() })
    } else {
        Storage::open(Arc::new(fs.clone()), dir, ids(id), opts()).unwrap()
    };
    let mut sm = Counter::default();
    let config = config(id);
    let (raft, snapshot) = recover(&config, &storage.snapshots, recovered, &mut sm).unwrap();
    let applier = Applier::recovered(snapshot.as_ref(), &config);
    // Virtual boot stamp: grows from one start to the next, as the real one does.
    let boot = (now.as_millis() as u64 + 1) * 256;
    Running {
        driver: Driver::new(raft, config, boot),
        snapshots: storage.snapshots.clone(),
        disk: DiskWorker::new(storage.log, storage.snapshots),
        applier,
        sm,
        disk_queue: Vec::new(),
        apply_queue: VecDeque::new(),
    }
}

struct Cluster {
    members: Vec<Member>,
    rng: Rng,
    now: Duration,
    /// (delivery time, sequence, to, what)
    net: BTreeMap<(Duration, u64), (NodeId, Inbound)>,
    seq: u64,
    acknowledged: BTreeSet<u64>,
    proposed: u64,
    reads: BTreeMap<u64, ReadSent>,
    /// Reads whose read index arrived, waiting for their member to apply it:
    /// (member, read id, read index).
    read_waits: Vec<(usize, u64, u64)>,
    reads_served: u64,
}

impl Cluster {
    fn send(&mut self, to: NodeId, inbound: Inbound) {
        if matches!(inbound, Inbound::Message(_)) && self.rng.below(100) == 0 {
            return; // lost
        }
        let delay = Duration::from_millis(1 + self.rng.below(8));
        self.seq += 1;
        self.net.insert((self.now + delay, self.seq), (to, inbound));
    }

    /// Carries out one member's actions.
    fn carry_out(&mut self, i: usize, actions: Vec<Action<Token>>) {
        for action in actions {
            match action {
                Action::Send(m) => self.send(m.to, Inbound::Message(m)),
                Action::SendSnapshot(mut m) => {
                    let r = self.members[i].running.as_mut().unwrap();
                    let (meta, reader) = r.snapshots.latest().unwrap().expect("a snapshot to send");
                    let data = reader.read_all().unwrap();
                    m.body = MessageBody::InstallSnapshot { meta: codec::meta_from_storage(&meta).unwrap() };
                    let (to, from) = (m.to, m.from);
                    self.send(to, Inbound::Snapshot { message: m, data: Box::new(Cursor::new(data)) });
                    self.send(from, Inbound::SnapshotReport { to, ok: true });
                }
                Action::Disk(job) => self.members[i].running.as_mut().unwrap().disk_queue.push(job),
                Action::Apply(entries) => self.members[i]
                    .running
                    .as_mut()
                    .unwrap()
                    .apply_queue
                    .push_back(ApplyItem::Entries(entries)),
                Action::ReadDone(Token(rid), Ok(index)) => self.read_waits.push((i, rid, index)),
                Action::ReadDone(Token(rid), Err(_)) => {
                    self.reads.remove(&rid);
                }
                Action::Fail(..) | Action::SoftState(_) => {}
            }
        }
    }

    /// One virtual millisecond of member `i`.
    fn step_member(&mut self, i: usize, tick: bool) {
        let now = self.now;
        let flush = self.rng.below(3) == 0;
        let apply = self.rng.below(2) == 0;
        let Some(r) = self.members[i].running.as_mut() else { return };
        let mut out = Vec::new();
        if tick {
            r.driver.tick(now, &mut out);
        }
        r.driver.process_ready(now, &mut out).unwrap();
        r.driver.housekeeping(now, |_| true, &mut out);
        if flush && !r.disk_queue.is_empty() {
            let mut jobs = std::mem::take(&mut r.disk_queue);
            let mut installed = Vec::new();
            r.disk.write(&mut jobs, &mut |meta| installed.push(meta)).unwrap();
            r.apply_queue.extend(installed.into_iter().map(ApplyItem::Restore));
            for job in jobs {
                if let DiskJob::Persist(job) = job {
                    out.extend(job.after_persist.into_iter().map(Action::Send));
                    if let Some((index, term)) = job.target {
                        r.driver.persisted(index, term);
                    }
                }
            }
        }
        let mut done = Vec::new();
        while apply && let Some(item) = r.apply_queue.pop_front() {
            match item {
                ApplyItem::Entries(entries) => {
                    let last = r.applier.apply(&mut r.sm, &entries, &mut done);
                    r.driver.applied(last);
                    if r.applier.snapshot_due() {
                        let pin = r.sm.pin();
                        let meta = r.applier.begin_snapshot();
                        let sm = &r.sm;
                        let bytes =
                            write_snapshot::<Counter>(&pin, &r.snapshots, &meta, &mut |f| f(sm)).unwrap();
                        r.applier.snapshot_written(bytes);
                        r.driver.snapshot_taken(meta.index, &mut out);
                    }
                }
                ApplyItem::Restore(meta) => {
                    r.applier.restore(&mut r.sm, &r.snapshots, &meta).unwrap();
                    r.driver.applied(meta.index);
                }
            }
        }
        // A command is acknowledged when the member that proposed it applied it (ids carry
        // the proposer in their high bits).
        let id = self.members[i].id;
        self.acknowledged.extend(done.into_iter().map(|(rid, _)| rid).filter(|rid| rid >> 48 == id.0));
        self.carry_out(i, out);
        self.serve_reads(i);
    }

    /// Serves the reads of member `i` whose read index it has applied, and checks them.
    fn serve_reads(&mut self, i: usize) {
        let Some(r) = self.members[i].running.as_ref() else { return };
        let (applied, value) = (r.applier.last().0.0, r.sm.value);
        let (ready, waiting): (Vec<_>, Vec<_>) =
            self.read_waits.drain(..).partition(|&(m, _, index)| m == i && applied >= index);
        self.read_waits = waiting;
        for (_, rid, _) in ready {
            let Some(sent) = self.reads.remove(&rid) else { continue };
            assert!(
                value >= sent.acknowledged_before,
                "stale read {rid} on member {}: {value} < {} acknowledged before it was sent",
                i + 1,
                sent.acknowledged_before
            );
            assert!(
                value <= self.proposed,
                "read {rid} saw {value}, more than the {} proposed",
                self.proposed
            );
            self.reads_served += 1;
        }
    }

    fn read(&mut self, rid: u64) {
        let i = self.rng.below(3) as usize;
        let now = self.now;
        let Some(r) = self.members[i].running.as_mut() else { return };
        self.reads.insert(rid, ReadSent { acknowledged_before: self.acknowledged.len() as u64 });
        let mut out = Vec::new();
        r.driver.read([Token(rid)], now, &mut out);
        self.carry_out(i, out);
    }

    fn deliver_due(&mut self) {
        while let Some(entry) = self.net.first_entry() {
            if entry.key().0 > self.now {
                break;
            }
            let (to, inbound) = entry.remove();
            let member = self.members.iter_mut().position(|m| m.id == to);
            if let Some(r) = member.and_then(|i| self.members[i].running.as_mut()) {
                r.driver.inbound(inbound);
            }
        }
    }

    fn propose(&mut self, n: u64) {
        let i = self.rng.below(3) as usize;
        let now = self.now;
        let id = self.members[i].id;
        let Some(r) = self.members[i].running.as_mut() else { return };
        let rid = (id.0 << 48) | n;
        let mut out = Vec::new();
        r.driver.propose(vec![(rid, rid.to_le_bytes().to_vec().into())], now, &mut out);
        self.carry_out(i, out);
    }

    fn crash(&mut self, i: usize) {
        self.members[i].running = None;
        self.members[i].fs.crash(CrashMode::LoseUnsynced);
        let to = self.members[i].id;
        self.net.retain(|_, (dest, _)| *dest != to);
        self.read_waits.retain(|&(m, _, _)| m != i);
    }
}

fn run(seed: u64) {
    let now = Duration::ZERO;
    let members = MEMBERS
        .iter()
        .map(|&id| {
            let fs = SimFs::new();
            let running = Some(start(id, &fs, true, now));
            Member { id, fs, running }
        })
        .collect();
    let mut c = Cluster {
        members,
        rng: Rng::new(seed),
        now,
        net: BTreeMap::new(),
        seq: 0,
        acknowledged: BTreeSet::new(),
        proposed: 0,
        reads: BTreeMap::new(),
        read_waits: Vec::new(),
        reads_served: 0,
    };
    let mut proposed = 0;
    for ms in 0..12_000u64 {
        c.now = Duration::from_millis(ms);
        c.deliver_due();
        if ms < 9_000 && ms.is_multiple_of(7) {
            proposed += 1;
            c.proposed = proposed;
            c.propose(proposed);
        }
        if ms < 9_000 && ms.is_multiple_of(5) {
            c.read(ms);
        }
        if ms == 3_000 {
            c.crash(2);
        }
        if ms == 6_000 {
            let fs = c.members[2].fs.clone();
            c.members[2].running = Some(start(NodeId(3), &fs, false, c.now));
        }
        for i in 0..3 {
            // Each member ticks every 20 ms, at its own phase.
            c.step_member(i, (ms + i as u64 * 7).is_multiple_of(20));
        }
    }
    let states: Vec<(u64, LogIndex)> = c
        .members
        .iter()
        .map(|m| {
            let r = m.running.as_ref().unwrap();
            (r.sm.value, r.applier.last().0)
        })
        .collect();
    assert!(states.iter().all(|s| *s == states[0]), "seed {seed}: members diverge: {states:?}");
    assert!(
        states[0].0 >= c.acknowledged.len() as u64 && c.acknowledged.len() > 100,
        "seed {seed}: {} acknowledged, state {:?}",
        c.acknowledged.len(),
        states[0]
    );
    assert!(c.reads_served > 500, "seed {seed}: only {} reads served", c.reads_served);
    let restarted = c.members[2].running.as_ref().unwrap();
    assert!(
        restarted.driver.raft().snapshot_meta().is_some(),
        "seed {seed}: the restarted member never saw a snapshot"
    );
}

#[test]
fn three_members_converge_in_virtual_time_across_a_crash() {
    for seed in 1..=20 {
        run(seed);
    }
}
