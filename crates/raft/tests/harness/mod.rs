//! A small synchronous cluster for readable scenario tests: every node persists each Ready
//! at once (unless told to hold writes back), messages sit in one queue until delivered, and
//! links can be cut or filtered per message. Checks State Machine Safety and Election Safety
//! on every step and records violations instead of panicking, so tests can assert on them.

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
}

pub struct Node {
    pub raft: Raft,
    pub disk: Disk,
    /// Entries applied to this node's state machine, in order.
    pub applied: Vec<Entry>,
    pub read_states: Vec<ReadState>,
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
    /// index -> (term, data) of the first entry applied there anywhere.
    applied_everywhere: BTreeMap<u64, (u64, Bytes)>,
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
        let ids: Vec<u64> = (1..=n).collect();
        let mut cluster = Cluster {
            ids: ids.clone(),
            nodes: BTreeMap::new(),
            down: BTreeSet::new(),
            queue: VecDeque::new(),
            cut: BTreeSet::new(),
            filters: Vec::new(),
            configure: Box::new(configure),
            applied_everywhere: BTreeMap::new(),
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
        let initial = InitialState {
            hard_state: disk.hard_state,
            config: ClusterConfig::new(self.ids.iter().map(|i| NodeId(*i))),
            snapshot: disk.snapshot.clone(),
            entries: disk.entries.clone(),
        };
        let raft = Raft::new(config, initial).expect("valid initial state");
        Node { raft, disk, applied, read_states: Vec::new(), hold_writes: false, unsynced: Vec::new() }
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
        self.raft_mut(to).step(m).expect("well-addressed message");
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
                let mut rest = rd;
                rest.messages.clear();
                rest.committed_entries.clear();
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
            node.raft.applied(entry.index);
            node.applied.push(entry);
        }
    }

    fn check_leaders(&mut self) {
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
