//! A small synchronous cluster for readable scenario tests: every node persists each Ready
//! at once (unless told to hold writes back), messages sit in one queue until delivered, and
//! links can be cut or filtered per message. Checks State Machine Safety and Election Safety
//! on every step and records violations instead of panicking, so tests can assert on them.
//!
//! Each node also keeps a state machine digest ([`Sm`]); [`Cluster::snapshot`] stores it with a
//! snapshot, InstallSnapshot delivers the sender's stored snapshot data with the message (as
//! the transport does once the body is verified), and installing restores from it. Digests
//! must agree across nodes at equal applied index, applies must be in order, and commit and
//! applied indexes must never move backwards within one incarnation.

#![allow(dead_code)]

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use bytes::Bytes;
use raftkv_raft::{
    ClusterConfig, Config, Entry, EntryKind, HardState, InitialState, LogIndex, Message, MessageBody, NodeId,
    ProposeError, Raft, ReadState, Role, SnapshotMeta, Term,
};

/// What a node keeps on its (simulated) disk.
#[derive(Clone, Debug, Default)]
pub struct Disk {
    pub hard_state: HardState,
    pub entries: Vec<Entry>,
    pub snapshot: Option<SnapshotMeta>,
    /// The state machine saved with `snapshot`.
    pub snapshot_data: Option<SnapData>,
}

/// A snapshot's body: the state machine at `index`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SnapData {
    pub index: u64,
    pub digest: u64,
}

/// The state machine: a digest over the applied entries, in order, and its value at each
/// applied index (so a snapshot can be taken at any applied index).
#[derive(Clone, Debug, Default)]
pub struct Sm {
    pub applied: u64,
    pub digest: u64,
    pub history: BTreeMap<u64, u64>,
}

impl Sm {
    fn restore(data: SnapData) -> Sm {
        Sm { applied: data.index, digest: data.digest, history: BTreeMap::from([(data.index, data.digest)]) }
    }

    fn apply(&mut self, e: &Entry) {
        let mut h = self.digest ^ 0x9E37_79B9_7F4A_7C15;
        for b in e.index.0.to_le_bytes().iter().chain(e.term.0.to_le_bytes().iter()).chain(e.data.iter()) {
            h = (h ^ u64::from(*b)).wrapping_mul(0x0000_0100_0000_01B3);
        }
        self.digest = h;
        self.applied = e.index.0;
        self.history.insert(self.applied, h);
    }
}

pub struct Node {
    pub raft: Raft,
    pub disk: Disk,
    /// Entries applied to this node's state machine, in order.
    pub applied: Vec<Entry>,
    pub read_states: Vec<ReadState>,
    /// Contexts of reads the core reported failed.
    pub failed_reads: Vec<u64>,
    pub sm: Sm,
    /// Snapshot data that arrived with an InstallSnapshot, waiting to be installed.
    pub staged: Option<SnapData>,
    /// How many snapshots this node installed from a leader.
    pub snapshots_installed: u64,
    /// Highest commit and applied index seen in this incarnation.
    high_water: (LogIndex, LogIndex),
    /// While set, Readies are not persisted: they wait in `unsynced` and are lost on crash.
    pub hold_writes: bool,
    unsynced: Vec<raftkv_raft::Ready>,
}

type Filter = Box<dyn Fn(&Message) -> bool>;

pub struct Cluster {
    pub ids: Vec<u64>,
    pub nodes: BTreeMap<u64, Node>,
    pub down: BTreeSet<u64>,
    queue: VecDeque<Message>,
    cut: BTreeSet<(u64, u64)>,
    /// Messages matching any filter are dropped when delivered.
    filters: Vec<Filter>,
    configure: Box<dyn Fn(&mut Config)>,
    /// The configuration every node boots with when its disk says nothing else.
    initial_config: ClusterConfig,
    /// index -> (term, data) of the first entry applied there anywhere.
    applied_everywhere: BTreeMap<u64, (u64, Bytes)>,
    /// index -> state machine digest of the first node that reached it.
    digests: BTreeMap<u64, u64>,
    leaders: BTreeMap<u64, u64>,
    pub violations: Vec<String>,
    pub delivered: u64,
    rng: u64,
    pub loss_percent: u64,
}

impl Cluster {
    pub fn new(n: u64) -> Cluster {
        Cluster::with_config(n, |_| {})
    }

    pub fn with_config(n: u64, configure: impl Fn(&mut Config) + 'static) -> Cluster {
        let voters: Vec<u64> = (1..=n).collect();
        Cluster::with_members(n, &voters, configure)
    }

    /// Nodes `1..=n`, of which only `voters` form the initial configuration (the others wait
    /// to be added).
    pub fn with_members(n: u64, voters: &[u64], configure: impl Fn(&mut Config) + 'static) -> Cluster {
        let ids: Vec<u64> = (1..=n).collect();
        let mut cluster = Cluster {
            ids: ids.clone(),
            nodes: BTreeMap::new(),
            down: BTreeSet::new(),
            queue: VecDeque::new(),
            cut: BTreeSet::new(),
            filters: Vec::new(),
            configure: Box::new(configure),
            initial_config: ClusterConfig::new(voters.iter().map(|i| NodeId(*i))),
            applied_everywhere: BTreeMap::new(),
            digests: BTreeMap::new(),
            leaders: BTreeMap::new(),
            violations: Vec::new(),
            delivered: 0,
            rng: 0x2545_F491_4F6C_DD1D,
            loss_percent: 0,
        };
        for id in ids {
            let node = cluster.boot(id, Disk::default(), Vec::new());
            cluster.nodes.insert(id, node);
        }
        cluster
    }

    fn boot(&self, id: u64, disk: Disk, applied: Vec<Entry>) -> Node {
        let mut config = Config::new(NodeId(id));
        config.seed = id * 7919;
        (self.configure)(&mut config);
        let snap_index = disk.snapshot.as_ref().map_or(LogIndex(0), |s| s.index);
        let initial = InitialState {
            hard_state: disk.hard_state,
            config: self.initial_config.clone(),
            snapshot: disk.snapshot.clone(),
            // The disk may keep a tail of entries behind its snapshot.
            entries: disk.entries.iter().filter(|e| e.index > snap_index).cloned().collect(),
        };
        let raft = Raft::new(config, initial).expect("valid initial state");
        let sm = disk.snapshot_data.map(Sm::restore).unwrap_or_default();
        let high_water = (raft.commit_index(), raft.applied_index());
        Node {
            raft,
            disk,
            applied,
            read_states: Vec::new(),
            failed_reads: Vec::new(),
            sm,
            staged: None,
            snapshots_installed: 0,
            high_water,
            hold_writes: false,
            unsynced: Vec::new(),
        }
    }

    pub fn raft(&self, id: u64) -> &Raft {
        &self.nodes[&id].raft
    }

    pub fn raft_mut(&mut self, id: u64) -> &mut Raft {
        &mut self.nodes.get_mut(&id).expect("node").raft
    }

    pub fn leader(&self) -> Option<u64> {
        let mut best: Option<(Term, u64)> = None;
        for (id, node) in &self.nodes {
            if !self.down.contains(id) && node.raft.role() == Role::Leader {
                let t = node.raft.term();
                if best.is_none_or(|(bt, _)| t > bt) {
                    best = Some((t, *id));
                }
            }
        }
        best.map(|(_, id)| id)
    }

    /// Cuts both directions between every node of `a` and every node of `b`.
    pub fn partition(&mut self, a: &[u64], b: &[u64]) {
        for x in a {
            for y in b {
                self.cut.insert((*x, *y));
                self.cut.insert((*y, *x));
            }
        }
    }

    /// Cuts only `from -> to` (asymmetric).
    pub fn cut_one_way(&mut self, from: u64, to: u64) {
        self.cut.insert((from, to));
    }

    pub fn isolate(&mut self, id: u64) {
        let others: Vec<u64> = self.ids.iter().copied().filter(|x| *x != id).collect();
        self.partition(&[id], &others);
    }

    pub fn heal(&mut self) {
        self.cut.clear();
        self.filters.clear();
    }

    pub fn drop_where(&mut self, filter: impl Fn(&Message) -> bool + 'static) {
        self.filters.push(Box::new(filter));
    }

    pub fn clear_filters(&mut self) {
        self.filters.clear();
    }

    pub fn crash(&mut self, id: u64) {
        self.down.insert(id);
        if let Some(node) = self.nodes.get_mut(&id) {
            node.unsynced.clear();
        }
        self.queue.retain(|m| m.to.0 != id && m.from.0 != id);
    }

    /// Restarts a crashed node from its disk alone; its state machine is rebuilt by
    /// re-applying what the core hands out.
    pub fn restart(&mut self, id: u64) {
        let disk = self.nodes[&id].disk.clone();
        let node = self.boot(id, disk, Vec::new());
        self.nodes.insert(id, node);
        self.down.remove(&id);
    }

    pub fn tick(&mut self, id: u64) {
        if !self.down.contains(&id) {
            self.raft_mut(id).tick();
            self.process(id);
        }
    }

    pub fn tick_all(&mut self, times: usize) {
        for _ in 0..times {
            for id in self.ids.clone() {
                self.tick(id);
            }
            self.deliver_all();
        }
    }

    pub fn campaign(&mut self, id: u64) {
        self.raft_mut(id).campaign();
        self.process(id);
    }

    pub fn propose(&mut self, id: u64, data: &str) -> Result<(Term, LogIndex), ProposeError> {
        let r = self.raft_mut(id).propose(Bytes::copy_from_slice(data.as_bytes()));
        self.process(id);
        r
    }

    pub fn read_index(&mut self, id: u64, context: u64) {
        self.raft_mut(id).read_index(context).expect("read index accepted");
        self.process(id);
    }

    /// Delivers queued messages (and everything they cause) until the network is quiet.
    pub fn deliver_all(&mut self) {
        let mut budget = 1_000_000;
        while let Some(m) = self.queue.pop_front() {
            budget -= 1;
            assert!(budget > 0, "cluster did not quiesce");
            self.deliver(m);
        }
    }

    fn next_random(&mut self) -> u64 {
        self.rng ^= self.rng << 13;
        self.rng ^= self.rng >> 7;
        self.rng ^= self.rng << 17;
        self.rng
    }

    fn deliver(&mut self, m: Message) {
        let (from, to) = (m.from.0, m.to.0);
        if self.down.contains(&to) || self.down.contains(&from) || self.cut.contains(&(from, to)) {
            return;
        }
        if self.filters.iter().any(|f| f(&m)) {
            return;
        }
        if self.loss_percent > 0 && self.next_random() % 100 < self.loss_percent {
            return;
        }
        self.delivered += 1;
        if std::env::var_os("HARNESS_TRACE").is_some() {
            eprintln!("deliver {m:?}");
        }
        if let MessageBody::InstallSnapshot { meta } = &m.body {
            // The driver delivers the message only with the snapshot's verified body.
            let sender = &self.nodes[&from];
            let data = sender.disk.snapshot_data.filter(|d| d.index == meta.index.0).or_else(|| {
                // Taken by a test through the core directly: the state machine had it.
                sender
                    .sm
                    .history
                    .get(&meta.index.0)
                    .map(|digest| SnapData { index: meta.index.0, digest: *digest })
            });
            match data {
                Some(d) => self.nodes.get_mut(&to).expect("node").staged = Some(d),
                None => {
                    self.violations
                        .push(format!("node {from} sent snapshot {} it does not hold", meta.index));
                    return;
                }
            }
        }
        match self.raft_mut(to).step(m) {
            // A member the receiver's configuration does not (or no longer) list: a driver
            // drops such messages.
            Err(raftkv_raft::StepError::UnknownSender { .. }) => return,
            other => other.expect("well-addressed message"),
        }
        self.process(to);
    }

    /// Drains every Ready of `id`, persisting synchronously unless writes are held.
    pub fn process(&mut self, id: u64) {
        loop {
            let node = self.nodes.get_mut(&id).expect("node");
            if !node.raft.has_ready() {
                break;
            }
            let rd = node.raft.ready();
            self.queue.extend(rd.messages.iter().cloned());
            if node.hold_writes {
                // Committed entries handed out are durable already; apply them now.
                let committed = rd.committed_entries.clone();
                node.read_states.extend(rd.read_states.iter().copied());
                node.failed_reads.extend(rd.failed_reads.iter().copied());
                let mut rest = rd;
                rest.messages.clear();
                rest.committed_entries.clear();
                rest.read_states.clear();
                rest.failed_reads.clear();
                node.unsynced.push(rest);
                self.apply(id, committed);
                continue;
            }
            self.persist(id, rd);
        }
        self.check_leaders();
    }

    /// Makes held-back writes durable (in order) and releases what waited on them.
    pub fn sync(&mut self, id: u64) {
        let node = self.nodes.get_mut(&id).expect("node");
        node.hold_writes = false;
        let held = std::mem::take(&mut node.unsynced);
        for rd in held {
            self.persist(id, rd);
        }
        self.process(id);
    }

    fn persist(&mut self, id: u64, rd: raftkv_raft::Ready) {
        let node = self.nodes.get_mut(&id).expect("node");
        if let Some(meta) = &rd.snapshot {
            match node.staged.take().filter(|d| d.index == meta.index.0) {
                Some(data) => {
                    node.sm = Sm::restore(data);
                    node.disk.snapshot_data = Some(data);
                    node.snapshots_installed += 1;
                }
                None => self
                    .violations
                    .push(format!("node {id} installs snapshot {} it never received", meta.index)),
            }
            node.disk.snapshot = Some(meta.clone());
            node.disk.entries.clear();
        }
        if let Some(first) = rd.entries.first() {
            node.disk.entries.retain(|e| e.index < first.index);
            node.disk.entries.extend(rd.entries.iter().cloned());
        }
        if let Some(hs) = rd.hard_state {
            node.disk.hard_state = hs;
        }
        self.queue.extend(rd.messages_after_persist.iter().cloned());
        if let Some((index, term)) = rd.persist_target() {
            node.raft.persisted(index, term);
        }
        if let Some(meta) = &rd.snapshot {
            node.raft.applied(meta.index);
        }
        node.read_states.extend(rd.read_states.iter().copied());
        node.failed_reads.extend(rd.failed_reads.iter().copied());
        self.apply(id, rd.committed_entries);
    }

    fn apply(&mut self, id: u64, entries: Vec<Entry>) {
        for entry in entries {
            let index = entry.index.0;
            match self.applied_everywhere.get(&index) {
                Some((term, data)) if *term != entry.term.0 || *data != entry.data => {
                    self.violations.push(format!(
                        "State Machine Safety: node {id} applied term {} at index {index}, another node applied term {term}",
                        entry.term
                    ));
                }
                Some(_) => {}
                None => {
                    self.applied_everywhere.insert(index, (entry.term.0, entry.data.clone()));
                }
            }
            let node = self.nodes.get_mut(&id).expect("node");
            if index != node.sm.applied + 1 {
                self.violations
                    .push(format!("node {id} applied {index} after {}: not in order", node.sm.applied));
            }
            node.sm.apply(&entry);
            let digest = node.sm.digest;
            node.raft.applied(entry.index);
            node.applied.push(entry);
            match self.digests.get(&index) {
                Some(d) if *d != digest => self.violations.push(format!(
                    "node {id} reached a state machine digest at {index} that differs from another node's"
                )),
                Some(_) => {}
                None => {
                    self.digests.insert(index, digest);
                }
            }
        }
    }

    /// Snapshots node `id`'s state machine at `index` (applied) and compacts its log to
    /// `compact_to`, as a driver does; returns the snapshot's metadata.
    pub fn snapshot(&mut self, id: u64, index: u64, compact_to: u64) -> SnapshotMeta {
        let node = self.nodes.get_mut(&id).expect("node");
        let digest = *node.sm.history.get(&index).expect("snapshot at an applied index");
        let meta = node.raft.snapshot_taken(LogIndex(index), LogIndex(compact_to)).expect("snapshot taken");
        if node.disk.snapshot.as_ref().is_none_or(|s| s.index < meta.index) {
            node.disk.snapshot = Some(meta.clone());
            node.disk.snapshot_data = Some(SnapData { index, digest });
        }
        let first = node.raft.first_index();
        node.disk.entries.retain(|e| e.index >= first);
        meta
    }

    /// Asks `policy` whether node `id` is due a snapshot and takes it if so.
    pub fn maybe_snapshot(
        &mut self,
        id: u64,
        policy: &raftkv_raft::CompactionPolicy,
    ) -> Option<SnapshotMeta> {
        let raft = self.raft(id);
        let last = raft.snapshot_meta().map_or(LogIndex(0), |s| s.index);
        let bytes: u64 = (raft.first_index().0..=raft.last_index().0)
            .filter_map(|i| raft.log_entry(LogIndex(i)).map(Entry::size_bytes))
            .sum();
        let (index, compact_to) = policy.plan(raft.applied_index(), last, bytes)?;
        Some(self.snapshot(id, index.0, compact_to.0))
    }

    /// Delivers one message now (through the same path as queued ones).
    pub fn inject(&mut self, m: Message) {
        self.deliver(m);
    }

    /// The state machine digest of node `id` at its applied index.
    pub fn digest(&self, id: u64) -> (u64, u64) {
        let sm = &self.nodes[&id].sm;
        (sm.applied, sm.digest)
    }

    fn check_leaders(&mut self) {
        for (id, node) in self.nodes.iter_mut() {
            let (commit, applied) = (node.raft.commit_index(), node.raft.applied_index());
            if commit < node.high_water.0 || applied < node.high_water.1 {
                self.violations.push(format!(
                    "node {id} moved back: commit {commit} applied {applied} after {} {}",
                    node.high_water.0, node.high_water.1
                ));
            }
            node.high_water = (commit.max(node.high_water.0), applied.max(node.high_water.1));
        }
        for (id, node) in &self.nodes {
            if node.raft.role() == Role::Leader {
                let term = node.raft.term().0;
                match self.leaders.get(&term) {
                    Some(other) if other != id => self
                        .violations
                        .push(format!("Election Safety: nodes {other} and {id} both led term {term}")),
                    _ => {
                        self.leaders.insert(term, *id);
                    }
                }
            }
        }
    }

    /// Ticks everyone until some node leads; returns it.
    pub fn elect_any(&mut self, max_ticks: usize) -> Option<u64> {
        for _ in 0..max_ticks {
            if let Some(l) = self.leader() {
                return Some(l);
            }
            self.tick_all(1);
        }
        self.leader()
    }

    /// The terms of a node's retained log, from its first index.
    pub fn log_terms(&self, id: u64) -> Vec<u64> {
        let raft = self.raft(id);
        (raft.first_index().0..=raft.last_index().0)
            .map(|i| raft.log_term(LogIndex(i)).map_or(0, |t| t.0))
            .collect()
    }

    /// The data of the normal entries a node applied, as strings.
    pub fn applied_data(&self, id: u64) -> Vec<String> {
        self.nodes[&id]
            .applied
            .iter()
            .filter(|e| e.kind == EntryKind::Normal)
            .map(|e| String::from_utf8_lossy(&e.data).into_owned())
            .collect()
    }

    pub fn count_queued(&self, pred: impl Fn(&Message) -> bool) -> usize {
        self.queue.iter().filter(|m| pred(m)).count()
    }
}

pub fn is_append(m: &Message) -> bool {
    matches!(m.body, MessageBody::AppendEntries { .. })
}
