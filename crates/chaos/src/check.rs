//! Checking a recorded history: per-key linearizability, revision consistency, and the
//! run's statistics (operations by outcome, faults, leader changes).

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use crate::history::{Outcome, Record};
use crate::linearizability::{self, Action, Budget, Kept, Op, Verdict};

#[derive(Debug, Clone)]
pub struct KeyVerdict {
    pub key: String,
    pub ops: usize,
    pub verdict: Verdict,
    /// When not linearizable: the shrunk failing sub-history.
    pub witness: Vec<(Op, Kept)>,
}

#[derive(Debug, Default, Clone)]
pub struct Stats {
    /// (kind, outcome) -> count
    pub ops: BTreeMap<(String, Outcome), usize>,
    pub faults: BTreeMap<String, usize>,
    pub restarts: usize,
    pub leader_changes: usize,
    /// Acknowledged operations completed after the last heal.
    pub ok_after_heal: usize,
}

impl Stats {
    pub fn count(&self, outcome: Outcome) -> usize {
        self.ops.iter().filter(|((_, o), _)| *o == outcome).map(|(_, n)| n).sum()
    }
}

#[derive(Debug, Clone)]
pub struct Report {
    pub keys: Vec<KeyVerdict>,
    /// Values seen with two revisions, or revisions seen with two values, per key.
    pub revision_anomalies: Vec<String>,
    pub stats: Stats,
}

impl Report {
    pub fn invalid(&self) -> bool {
        !self.revision_anomalies.is_empty() || self.keys.iter().any(|k| k.verdict.is_invalid())
    }
    pub fn unknown(&self) -> bool {
        self.keys.iter().any(|k| matches!(k.verdict, Verdict::Unknown { .. }))
    }
}

pub fn stats(records: &[Record]) -> Stats {
    let mut s = Stats::default();
    let mut last_heal = 0;
    let mut terms = std::collections::BTreeSet::new();
    for r in records {
        match r {
            Record::Op(o) => *s.ops.entry((o.kind.clone(), o.outcome)).or_default() += 1,
            Record::Nemesis { event, t_ns, .. } => {
                if event == "restart" {
                    s.restarts += 1;
                } else if event == "heal" || event == "final-heal" {
                    last_heal = last_heal.max(*t_ns);
                } else if !event.starts_with("cont") {
                    *s.faults.entry(event.clone()).or_default() += 1;
                }
            }
            Record::Leader { term, member, .. } => {
                terms.insert((*term, *member));
            }
            Record::Run { .. } | Record::Watch(_) => {}
        }
    }
    s.leader_changes = terms.len().saturating_sub(1);
    s.ok_after_heal = records
        .iter()
        .filter(|r| matches!(r, Record::Op(o) if o.outcome == Outcome::Ok && o.invoke_ns >= last_heal))
        .count();
    s
}

/// Checks every key's history. `budget` bounds each key's search; `shrink_time` each
/// failing key's shrinking.
pub fn check(records: &[Record], budget: Budget, shrink_time: Duration) -> Report {
    let mut per_key: BTreeMap<String, Vec<Op>> = BTreeMap::new();
    let mut revision_anomalies = Vec::new();
    let mut by_value: HashMap<(String, String), (i64, u64)> = HashMap::new();
    let mut by_revision: HashMap<(String, i64), (String, u64)> = HashMap::new();
    for r in records {
        let Record::Op(o) = r else { continue };
        per_key.entry(o.key.clone()).or_default();
        if o.outcome == Outcome::Fail {
            continue;
        }
        let ret = (o.outcome == Outcome::Ok).then_some(o.complete_ns);
        if o.outcome == Outcome::Ok {
            let written = match &o.action {
                Action::Read { observed } => observed.clone(),
                Action::Write { value } => Some(value.clone()),
                Action::Cas { new, succeeded: Some(true), .. } => Some(new.clone()),
                Action::Cas { .. } => None,
            };
            if let (Some(v), Some(rev)) = (written, o.revision) {
                if let Some((r0, id0)) = by_value.insert((o.key.clone(), v.clone()), (rev, o.id))
                    && r0 != rev
                {
                    revision_anomalies.push(format!(
                        "key {}: value {v} seen at revision {r0} (op {id0}) and {rev} (op {})",
                        o.key, o.id
                    ));
                }
                if let Some((v0, id0)) = by_revision.insert((o.key.clone(), rev), (v.clone(), o.id))
                    && v0 != v
                {
                    revision_anomalies.push(format!(
                        "key {}: revision {rev} holds {v0} (op {id0}) and {v} (op {})",
                        o.key, o.id
                    ));
                }
            }
        }
        per_key.entry(o.key.clone()).or_default().push(Op {
            id: o.id,
            call: o.invoke_ns,
            ret,
            action: o.action.clone(),
        });
    }
    let keys = per_key
        .into_iter()
        .map(|(key, ops)| {
            let verdict = linearizability::check(&ops, budget);
            let witness = if verdict.is_invalid() {
                let per_check = Budget { max_steps: budget.max_steps / 10, max_time: Duration::from_secs(5) };
                linearizability::shrink(&ops, per_check, shrink_time)
            } else {
                Vec::new()
            };
            KeyVerdict { key, ops: ops.len(), verdict, witness }
        })
        .collect();
    Report { keys, revision_anomalies, stats: stats(records) }
}
