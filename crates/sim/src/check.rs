//! The invariant checkers. Each is incremental: the simulator feeds it what one node did in
//! one step, and it compares that against global history kept in index-addressed tables.
//!
//! | guarantee | how it is checked |
//! | --- | --- |
//! | Election Safety | `term -> leader`: a second leader for a term is a violation |
//! | Leader Append-Only | a node leading in the same term before and after a step must not hand out entries at or below its last index (the simulator checks, with [`Mirror`]) |
//! | Log Matching | every node's log is mirrored as a hash chain; `(index, term) -> chain hash` must agree across nodes and time |
//! | Leader Completeness | each committed index is recorded with its chain hash; a new leader's log must hold the highest one (or cover it by its snapshot) |
//! | State Machine Safety | `index -> (term, entry hash, state digest)` of applied entries must agree across nodes |
//! | exactly once, in order | per node, applied indices are contiguous; an attempt id is applied at one index only; an acknowledged command is what every node applies at its index; a command its client was told was lost is never applied |

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use raftkv_raft::{Entry, EntryKind, LogIndex, NodeId, Term};

use crate::machine::{KEYS, command_id, key_of};
use crate::rng::chain;

/// A broken guarantee (or a core panic, or a liveness failure).
#[derive(Clone, Debug)]
pub struct Violation {
    pub time_us: u64,
    pub kind: &'static str,
    pub detail: String,
}

impl std::fmt::Display for Violation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} at {}.{:03} ms: {}", self.kind, self.time_us / 1000, self.time_us % 1000, self.detail)
    }
}

/// A hash of one entry's identity and content.
pub fn entry_hash(e: &Entry) -> u64 {
    let mut h = chain(e.term.0, e.index.0);
    h = chain(h, u64::from(e.kind.code()));
    for chunk in e.data.chunks(8) {
        let mut word = [0u8; 8];
        word[..chunk.len()].copy_from_slice(chunk);
        h = chain(h, u64::from_le_bytes(word));
    }
    chain(h, e.data.len() as u64)
}

/// The command id carried by a normal entry (an 8-byte id, or a key-value command's id).
pub fn attempt_of(e: &Entry) -> Option<u64> {
    if e.kind != EntryKind::Normal {
        return None;
    }
    command_id(&e.data)
}

/// One node's log as the simulator has seen it through `Ready.entries` and snapshots: for
/// each index its term and the hash chain over the whole log up to it.
#[derive(Clone, Debug, Default)]
pub struct Mirror {
    /// The compaction point: entries up to here are only represented by this chain hash.
    pub base_index: u64,
    pub base_term: Term,
    pub base_chain: u64,
    /// `(term, chain, entry hash)` for `base_index + 1 + k`.
    entries: VecDeque<(Term, u64, u64)>,
}

impl Mirror {
    pub fn new(base_index: u64, base_term: Term, base_chain: u64) -> Mirror {
        Mirror { base_index, base_term, base_chain, entries: VecDeque::new() }
    }

    pub fn last_index(&self) -> u64 {
        self.base_index + self.entries.len() as u64
    }

    /// `(term, chain)` at `index`, when retained.
    pub fn get(&self, index: u64) -> Option<(Term, u64)> {
        if index == self.base_index {
            return Some((self.base_term, self.base_chain));
        }
        if index < self.base_index {
            return None;
        }
        self.entries.get((index - self.base_index - 1) as usize).map(|(t, c, _)| (*t, *c))
    }

    pub fn entry_hash(&self, index: u64) -> Option<u64> {
        if index <= self.base_index {
            return None;
        }
        self.entries.get((index - self.base_index - 1) as usize).map(|(_, _, h)| *h)
    }

    /// Drops entries from `index` on. Returns false when that reaches into the base.
    pub fn truncate_from(&mut self, index: u64) -> bool {
        if index <= self.base_index {
            return false;
        }
        self.entries.truncate((index - self.base_index - 1) as usize);
        true
    }

    /// Appends the next entry and returns its chain hash.
    pub fn push(&mut self, e: &Entry) -> u64 {
        let prev = self.entries.back().map_or(self.base_chain, |(_, c, _)| *c);
        let h = entry_hash(e);
        let c = chain(prev, h);
        self.entries.push_back((e.term, c, h));
        c
    }

    /// Forgets entries up to `index` (log compaction), keeping `index` as the base.
    pub fn compact_to(&mut self, index: u64) {
        while index > self.base_index {
            let Some((t, c, _)) = self.entries.pop_front() else { break };
            self.base_index += 1;
            self.base_term = t;
            self.base_chain = c;
        }
    }
}

/// What is recorded about an applied index.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Applied {
    term: Term,
    entry: u64,
    digest: u64,
}

/// Global history, shared by every node of one run.
#[derive(Default)]
pub struct Checker {
    leaders: BTreeMap<Term, NodeId>,
    /// Log Matching: `(index, term) -> chain hash`.
    chains: BTreeMap<(u64, u64), u64>,
    /// `committed[i - 1]`: `(term, chain)` of the committed entry at `i`.
    committed: Vec<(Term, u64)>,
    /// `commit_terms[i - 1]`: the lowest current term of a node that reported `i` committed
    /// (at least the term in which it was committed; `u64::MAX` for a placeholder). Leader
    /// Completeness binds leaders of later terms only: a member paused as a candidate may
    /// still win an older term after a newer one committed more.
    commit_terms: Vec<u64>,
    /// `applied[i - 1]`, once some node applied `i` (or restored a snapshot at `i`: then only
    /// the digest is known and `entry` is 0 with term 0 until an apply fills it in).
    applied: Vec<Option<Applied>>,
    /// The index each command attempt was applied at.
    attempt_index: BTreeMap<u64, u64>,
    /// Attempts whose client was told they were lost.
    abandoned: BTreeSet<u64>,
    /// Index -> attempt acknowledged to a client as committed there.
    acked: BTreeMap<u64, u64>,
    /// Per register, the highest index of a write acknowledged so far.
    acked_by_key: [u64; KEYS],
    pub now: u64,
}

impl Checker {
    fn fail(&self, kind: &'static str, detail: String) -> Result<(), Violation> {
        Err(Violation { time_us: self.now, kind, detail })
    }

    /// Election Safety: at most one leader per term.
    pub fn leader(&mut self, term: Term, id: NodeId) -> Result<(), Violation> {
        match self.leaders.get(&term) {
            Some(other) if *other != id => {
                self.fail("election safety", format!("nodes {other} and {id} both lead term {term}"))
            }
            Some(_) => Ok(()),
            None => {
                self.leaders.insert(term, id);
                Ok(())
            }
        }
    }

    /// The leader recorded for `term`, if any.
    pub fn leader_of(&self, term: Term) -> Option<NodeId> {
        self.leaders.get(&term).copied()
    }

    /// Log Matching: a node's log holds `(index, term)` with this chain hash.
    pub fn log_entry(&mut self, node: NodeId, index: u64, term: Term, chain: u64) -> Result<(), Violation> {
        match self.chains.get(&(index, term.0)) {
            Some(c) if *c != chain => self.fail(
                "log matching",
                format!(
                    "node {node} holds {index}@{term} with a log prefix that differs from another node's"
                ),
            ),
            Some(_) => Ok(()),
            None => {
                self.chains.insert((index, term.0), chain);
                Ok(())
            }
        }
    }

    /// The chain hash recorded for `(index, term)`, if any node's log held it.
    pub fn chain_at(&self, index: u64, term: Term) -> Option<u64> {
        self.chains.get(&(index, term.0)).copied()
    }

    /// A node's commit index covers `index`, whose entry it holds as `(term, chain)`.
    pub fn committed(
        &mut self,
        node: NodeId,
        index: u64,
        term: Term,
        chain: u64,
        node_term: Term,
    ) -> Result<(), Violation> {
        let i = (index - 1) as usize;
        if self.commit_terms.len() <= i {
            self.commit_terms.resize(i + 1, u64::MAX);
        }
        self.commit_terms[i] = self.commit_terms[i].min(node_term.0);
        match self.committed.get(i) {
            Some((t, c)) if t.0 != 0 => {
                if (*t, *c) != (term, chain) {
                    return self.fail(
                        "committed entry changed",
                        format!(
                            "node {node} commits {index}@{term} but {index}@{t} (or another prefix) was committed before"
                        ),
                    );
                }
            }
            Some(_) => self.committed[i] = (term, chain),
            None => {
                // Normally commit points arrive contiguously; a gap (a node that learned a
                // commit through a snapshot) is filled with placeholders.
                self.committed.resize(i, (Term(0), 0));
                self.committed.push((term, chain));
            }
        }
        Ok(())
    }

    /// The highest committed index, with its `(term, chain)`.
    pub fn last_committed(&self) -> Option<(u64, Term, u64)> {
        self.committed.last().map(|(t, c)| (self.committed.len() as u64, *t, *c))
    }

    pub fn committed_at(&self, index: u64) -> Option<(Term, u64)> {
        if index == 0 {
            return None;
        }
        self.committed.get((index - 1) as usize).copied().filter(|(t, _)| t.0 != 0)
    }

    /// Leader Completeness: a node that just became leader of `term` holds every committed
    /// entry. `mirror` is its log.
    pub fn new_leader(&self, node: NodeId, term: Term, mirror: &Mirror) -> Result<(), Violation> {
        // The highest index committed in a term before this leader's.
        let Some(i) = self.commit_terms.iter().rposition(|t| *t < term.0) else { return Ok(()) };
        let Some((cterm, cchain)) = self.committed.get(i).copied().filter(|(t, _)| t.0 != 0) else {
            return Ok(());
        };
        let index = i as u64 + 1;
        if index < mirror.base_index {
            // Covered by its snapshot; the snapshot's own prefix is checked at the base.
            return match self.committed_at(mirror.base_index) {
                Some((t, c)) if (t, c) != (mirror.base_term, mirror.base_chain) => self.fail(
                    "leader completeness",
                    format!("leader {node} of term {term} has a snapshot at {} that differs from the committed log", mirror.base_index),
                ),
                _ => Ok(()),
            };
        }
        match mirror.get(index) {
            Some((t, c)) if (t, c) == (cterm, cchain) => Ok(()),
            Some((t, _)) => self.fail(
                "leader completeness",
                format!(
                    "leader {node} of term {term} holds {index}@{t} but {index}@{cterm} (and its prefix) was committed"
                ),
            ),
            None => self.fail(
                "leader completeness",
                format!(
                    "leader {node} of term {term} has last index {} but entry {index}@{cterm} was committed",
                    mirror.last_index()
                ),
            ),
        }
    }

    /// State Machine Safety and exactly-once: `node` applied `e`, reaching `digest`.
    pub fn applied(&mut self, node: NodeId, e: &Entry, digest: u64) -> Result<(), Violation> {
        let index = e.index.0;
        let i = (index - 1) as usize;
        let record = Applied { term: e.term, entry: entry_hash(e), digest };
        if self.applied.len() <= i {
            self.applied.resize(i + 1, None);
        }
        match self.applied[i] {
            Some(a) if a.entry == 0 => {
                if a.digest != digest {
                    return self.fail(
                        "state machine safety",
                        format!("node {node} applied {index} reaching a digest that differs from a snapshot at {index}"),
                    );
                }
                self.applied[i] = Some(record);
            }
            Some(a) if a != record => {
                let what = if (a.term, a.entry) != (record.term, record.entry) {
                    format!(
                        "node {node} applied {index}@{} but {index}@{} was applied elsewhere",
                        e.term, a.term
                    )
                } else {
                    format!(
                        "node {node} applied {index} reaching a state digest that differs from another node's"
                    )
                };
                return self.fail("state machine safety", what);
            }
            Some(_) => {}
            None => self.applied[i] = Some(record),
        }
        if let Some(attempt) = attempt_of(e) {
            if let Some(at) = self.attempt_index.get(&attempt) {
                if *at != index {
                    return self.fail(
                        "exactly once",
                        format!("command {attempt:#x} applied at {index} on node {node} and at {at} before"),
                    );
                }
            } else {
                self.attempt_index.insert(attempt, index);
            }
            if self.abandoned.contains(&attempt) {
                return self.fail(
                    "exactly once",
                    format!(
                        "command {attempt:#x}, reported lost to its client, applied at {index} on node {node}"
                    ),
                );
            }
        }
        if let Some(acked) = self.acked.get(&index)
            && attempt_of(e) != Some(*acked)
        {
            return self.fail(
                "acknowledged command lost",
                format!("command {acked:#x} was acknowledged at {index} but node {node} applied another entry there"),
            );
        }
        Ok(())
    }

    /// A node restored its state machine from a snapshot at `index` with `digest`.
    pub fn restored(&mut self, node: NodeId, index: u64, digest: u64) -> Result<(), Violation> {
        if index == 0 {
            return Ok(());
        }
        let i = (index - 1) as usize;
        if self.applied.len() <= i {
            self.applied.resize(i + 1, None);
        }
        match self.applied[i] {
            Some(a) if a.digest != digest => self.fail(
                "state machine safety",
                format!(
                    "node {node} restored a snapshot at {index} whose state differs from what was applied"
                ),
            ),
            Some(_) => Ok(()),
            None => {
                self.applied[i] = Some(Applied { term: Term(0), entry: 0, digest });
                Ok(())
            }
        }
    }

    /// A client was told its command committed at `index`.
    pub fn acknowledged(&mut self, attempt: u64, index: u64) -> Result<(), Violation> {
        if let Some(at) = self.attempt_index.get(&attempt)
            && *at != index
        {
            return self.fail(
                "acknowledged command lost",
                format!("command {attempt:#x} acknowledged at {index} but applied at {at}"),
            );
        }
        self.acked.insert(index, attempt);
        let k = key_of(attempt);
        self.acked_by_key[k] = self.acked_by_key[k].max(index);
        Ok(())
    }

    /// The highest index of a write to register `key` acknowledged so far: a linearizable
    /// read sent now must return it or a newer write.
    pub fn acked_index(&self, key: usize) -> u64 {
        self.acked_by_key[key]
    }

    /// A read of register `key` on `node` returned `value` (a command id, 0 for never
    /// written). Every read must return a value written to that register; a linearizable one
    /// must return the write at `min_index` (the newest acknowledged before it was sent) or a
    /// newer one.
    pub fn read(
        &self,
        node: NodeId,
        key: usize,
        value: u64,
        min_index: u64,
        linearizable: bool,
    ) -> Result<(), Violation> {
        let index = if value == 0 {
            0
        } else {
            match self.attempt_index.get(&value) {
                Some(i) if key_of(value) == key => *i,
                _ => {
                    return self.fail(
                        "read of a value never written",
                        format!("node {node} read {value:#x} from key {key}, which no command wrote there"),
                    );
                }
            }
        };
        if linearizable && index < min_index {
            return self.fail(
                "stale read",
                format!(
                    "node {node} served a linearizable read of key {key} with the write at {index}, but the write at {min_index} was acknowledged before the read was sent"
                ),
            );
        }
        Ok(())
    }

    /// A client was told its command was lost (another entry committed at its index).
    pub fn abandoned(&mut self, attempt: u64) -> Result<(), Violation> {
        if let Some(at) = self.attempt_index.get(&attempt) {
            return self.fail(
                "exactly once",
                format!("command {attempt:#x} reported lost to its client but applied at {at}"),
            );
        }
        self.abandoned.insert(attempt);
        Ok(())
    }
}

/// The log index of `e` as a plain number (helper for the tables above).
pub fn idx(i: LogIndex) -> u64 {
    i.0
}
