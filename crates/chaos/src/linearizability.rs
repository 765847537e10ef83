//! A linearizability checker for histories of single registers (one key each).
//!
//! The algorithm is Wing & Gong's search as improved by Lowe: a depth-first search for a
//! linearization that, at each step, may only pick an operation invoked before the earliest
//! return among the operations not yet linearized, memoising every (linearized set, model
//! state) pair it has explored so that no configuration is searched twice. Histories are
//! checked per key (linearizability is compositional), each under a step and time budget: a
//! search that exhausts it reports [`Verdict::Unknown`] instead of running on.
//!
//! The register model: the state is the value held, or absent. Every write (put or
//! compare-and-set) writes a value unique in the history, so a value identifies the write that
//! produced it, and also the revision the key was modified at. A compare-and-set on
//! `mod_revision == r` is therefore recorded with the value the client saw at revision `r`
//! (`expected`), and compares like a compare-and-set on that value; that values and revisions
//! correspond one-to-one is checked separately by the caller (see `crate::check`).
//!
//! Operations that failed (definitely did not take effect) are left out. Unknown operations
//! (a timeout, a dropped connection) have no return: they may take effect at any point after
//! their invocation, or never. Unknown reads tell nothing and are left out too.

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

/// What a register operation did, as the client saw it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "f", rename_all = "kebab-case")]
pub enum Action {
    /// A linearizable read that returned `observed` (`None`: the key was absent).
    Read { observed: Option<String> },
    /// An unconditional write.
    Write { value: String },
    /// Write `new` if the register holds `expected` (`None`: if the key is absent).
    /// `succeeded` is the comparison's outcome for an acknowledged operation, `None` when the
    /// outcome is unknown.
    Cas { expected: Option<String>, new: String, succeeded: Option<bool> },
}

/// One operation of a register history. `ret` is `None` for an operation whose outcome is
/// unknown (it may take effect at any point after `call`, or never).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Op {
    pub id: u64,
    pub call: u64,
    pub ret: Option<u64>,
    pub action: Action,
}

impl Op {
    pub fn read(id: u64, call: u64, ret: u64, observed: Option<&str>) -> Op {
        Op { id, call, ret: Some(ret), action: Action::Read { observed: observed.map(str::to_string) } }
    }
    pub fn write(id: u64, call: u64, ret: Option<u64>, value: &str) -> Op {
        Op { id, call, ret, action: Action::Write { value: value.to_string() } }
    }
    pub fn cas(
        id: u64,
        call: u64,
        ret: Option<u64>,
        expected: Option<&str>,
        new: &str,
        ok: Option<bool>,
    ) -> Op {
        Op {
            id,
            call,
            ret,
            action: Action::Cas {
                expected: expected.map(str::to_string),
                new: new.to_string(),
                succeeded: if ret.is_some() { ok } else { None },
            },
        }
    }
    fn is_unknown(&self) -> bool {
        self.ret.is_none()
    }
}

impl std::fmt::Display for Op {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let v = |o: &Option<String>| o.clone().unwrap_or_else(|| "<absent>".into());
        let what = match &self.action {
            Action::Read { observed } => format!("read -> {}", v(observed)),
            Action::Write { value } => format!("write {value}"),
            Action::Cas { expected, new, succeeded } => format!(
                "cas {} -> {new}{}",
                v(expected),
                match succeeded {
                    Some(true) => " (succeeded)",
                    Some(false) => " (compare failed)",
                    None => "",
                }
            ),
        };
        let ret = self.ret.map_or("unknown".to_string(), |r| format!("{:.3}", r as f64 / 1e9));
        write!(f, "op {:>6} [{:.3} s .. {}] {what}", self.id, self.call as f64 / 1e9, ret)
    }
}

/// The search's limits. A search that takes more steps or time reports `Unknown`.
#[derive(Clone, Copy, Debug)]
pub struct Budget {
    pub max_steps: u64,
    pub max_time: Duration,
}

impl Default for Budget {
    fn default() -> Budget {
        Budget { max_steps: 20_000_000, max_time: Duration::from_secs(60) }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Verdict {
    Valid,
    /// No linearization exists. `stuck` is an acknowledged operation that could not be
    /// linearized at the deepest point the search reached.
    Invalid {
        stuck: Option<u64>,
    },
    /// The budget ran out before the search finished.
    Unknown {
        reason: String,
    },
}

impl Verdict {
    pub fn is_invalid(&self) -> bool {
        matches!(self, Verdict::Invalid { .. })
    }
}

#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
enum Step {
    Read(Option<u32>),
    Write(u32),
    Cas { expected: Option<u32>, new: u32, succeeded: Option<bool> },
}

/// A history in the search's form: values interned, ops sorted by invocation.
struct Prepared {
    call: Vec<u64>,
    ret: Vec<Option<u64>>,
    step: Vec<Step>,
    ids: Vec<u64>,
    /// Indices of acknowledged ops, by return time.
    by_ret: Vec<usize>,
    /// For an unknown op: the earlier unknown ops with the same effect.
    twins: Vec<Vec<usize>>,
}

fn prepare(history: &[Op]) -> Prepared {
    let mut ops: Vec<&Op> =
        history.iter().filter(|o| !(o.is_unknown() && matches!(o.action, Action::Read { .. }))).collect();
    ops.sort_by_key(|o| (o.call, o.id));
    // Values no read returns and no compare-and-set expects are indistinguishable: they all
    // become one value (0), which shrinks the state space without changing the verdict.
    let observed: HashSet<&String> = ops
        .iter()
        .filter_map(|o| match &o.action {
            Action::Read { observed } => observed.as_ref(),
            Action::Cas { expected, .. } => expected.as_ref(),
            Action::Write { .. } => None,
        })
        .collect();
    let mut interned: HashMap<String, u32> = HashMap::new();
    let mut intern = |s: &Option<String>| -> Option<u32> {
        s.as_ref().map(|s| {
            if !observed.contains(s) {
                return 0;
            }
            let n = interned.len() as u32 + 1;
            *interned.entry(s.clone()).or_insert(n)
        })
    };
    let mut p =
        Prepared { call: vec![], ret: vec![], step: vec![], ids: vec![], by_ret: vec![], twins: vec![] };
    for o in &ops {
        let step = match &o.action {
            Action::Read { observed } => Step::Read(intern(observed)),
            Action::Write { value } => Step::Write(intern(&Some(value.clone())).unwrap_or(0)),
            Action::Cas { expected, new, succeeded } => Step::Cas {
                expected: intern(expected),
                new: intern(&Some(new.clone())).unwrap_or(0),
                succeeded: if o.is_unknown() { None } else { *succeeded },
            },
        };
        p.call.push(o.call);
        p.ret.push(o.ret);
        p.step.push(step);
        p.ids.push(o.id);
    }
    let mut by_ret: Vec<usize> = (0..ops.len()).filter(|&i| p.ret[i].is_some()).collect();
    by_ret.sort_by_key(|&i| p.ret[i]);
    p.by_ret = by_ret;
    // Unknown ops with the same effect, earlier ones first.
    let mut groups: HashMap<Step, Vec<usize>> = HashMap::new();
    for i in 0..p.step.len() {
        if p.ret[i].is_none() {
            groups.entry(p.step[i]).or_default().push(i);
        }
    }
    p.twins = vec![Vec::new(); p.step.len()];
    for g in groups.into_values() {
        for (k, &i) in g.iter().enumerate() {
            p.twins[i] = g[..k].to_vec();
        }
    }
    p
}

/// Applies one op to the register; `None` when the op's result is impossible in `state`.
fn apply(state: Option<u32>, step: Step) -> Option<Option<u32>> {
    match step {
        Step::Read(observed) => (observed == state).then_some(state),
        Step::Write(v) => Some(Some(v)),
        Step::Cas { expected, new, succeeded } => {
            let matches = state == expected;
            match succeeded {
                Some(true) => matches.then_some(Some(new)),
                Some(false) => (!matches).then_some(state),
                None => Some(if matches { Some(new) } else { state }),
            }
        }
    }
}

struct Bits(Vec<u64>);

impl Bits {
    fn new(n: usize) -> Bits {
        Bits(vec![0; n.div_ceil(64)])
    }
    fn get(&self, i: usize) -> bool {
        self.0[i / 64] & (1 << (i % 64)) != 0
    }
    fn set(&mut self, i: usize) {
        self.0[i / 64] |= 1 << (i % 64);
    }
    fn clear(&mut self, i: usize) {
        self.0[i / 64] &= !(1 << (i % 64));
    }
}

/// Checks one register's history (all ops on one key; the register starts absent).
pub fn check(history: &[Op], budget: Budget) -> Verdict {
    let p = prepare(history);
    let n = p.step.len();
    let started = Instant::now();
    let mut lin = Bits::new(n);
    let mut memo: HashSet<(Vec<u64>, Option<u32>)> = HashSet::new();
    let mut state: Option<u32> = None;
    let mut stack: Vec<(usize, Option<u32>)> = Vec::new();
    let mut remaining_ok = p.by_ret.len();
    let mut pos = 0usize;
    let mut steps = 0u64;
    let mut deepest = 0usize;
    let mut stuck = None;
    loop {
        if remaining_ok == 0 {
            return Verdict::Valid;
        }
        steps += 1;
        if steps > budget.max_steps {
            return Verdict::Unknown {
                reason: format!("search step budget ({}) exhausted", budget.max_steps),
            };
        }
        if steps.is_multiple_of(4096) && started.elapsed() > budget.max_time {
            return Verdict::Unknown {
                reason: format!("search time budget ({:?}) exhausted after {steps} steps", budget.max_time),
            };
        }
        // The earliest return among acknowledged ops not yet linearized bounds what may go next.
        let Some(&first_open) = p.by_ret.iter().find(|&&i| !lin.get(i)) else {
            return Verdict::Valid;
        };
        let min_ret = p.ret[first_open].unwrap_or(u64::MAX);
        let mut found = None;
        let mut i = pos;
        while i < n && p.call[i] <= min_ret {
            // An unknown op that would not change the state is as good as never taking
            // effect; of unknown ops with the same effect, all callable, only the earliest
            // still open needs trying (the others are interchangeable with it).
            let skip = p.ret[i].is_none() && p.twins[i].iter().any(|&j| !lin.get(j));
            if !lin.get(i)
                && !skip
                && let Some(next) = apply(state, p.step[i])
                && (p.ret[i].is_some() || next != state)
            {
                lin.set(i);
                if memo.insert((lin.0.clone(), next)) {
                    found = Some((i, next));
                    break;
                }
                lin.clear(i);
            }
            i += 1;
        }
        match found {
            Some((i, next)) => {
                stack.push((i, state));
                state = next;
                if p.ret[i].is_some() {
                    remaining_ok -= 1;
                }
                pos = 0;
                if stack.len() > deepest {
                    deepest = stack.len();
                    stuck = None;
                }
            }
            None => {
                if stack.len() >= deepest && stuck.is_none() {
                    stuck = Some(p.ids[first_open]);
                }
                let Some((j, prev)) = stack.pop() else {
                    return Verdict::Invalid { stuck };
                };
                lin.clear(j);
                state = prev;
                if p.ret[j].is_some() {
                    remaining_ok += 1;
                }
                pos = j + 1;
            }
        }
    }
}

/// How an op appears in a shrunk failing history.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Kept {
    /// As recorded.
    AsRecorded,
    /// Acknowledged, but treated as unknown (which only allows more linearizations).
    Relaxed,
}

/// Shrinks a non-linearizable history to a small one that is still not linearizable, in ways
/// that keep it a witness: a history obtained by (a) removing reads and failed compare-and-sets,
/// (b) turning acknowledged writes into unknown ones, and (c) removing unknown writes nobody
/// observed (when no failed compare-and-set remains) is linearizable whenever the original is,
/// so if the shrunk history is not, neither is the original. Bounded by `total` time; each
/// candidate is checked with `per_check`.
pub fn shrink(history: &[Op], per_check: Budget, total: Duration) -> Vec<(Op, Kept)> {
    let started = Instant::now();
    let mut cur: Vec<(Op, Kept)> = history.iter().cloned().map(|o| (o, Kept::AsRecorded)).collect();
    cur.sort_by_key(|(o, _)| (o.call, o.id));
    let invalid = |h: &[(Op, Kept)]| {
        let ops: Vec<Op> = h.iter().map(|(o, _)| o.clone()).collect();
        check(&ops, per_check).is_invalid()
    };
    let out_of_time = || started.elapsed() > total;

    // Phases, each in chunks of halving size: (a) remove observers; (b) remove writes whose
    // value nobody observes (a relaxation followed by a removal of an unobserved unknown
    // write), while no failed compare-and-set remains; (c) relax acknowledged writes.
    for phase in 0..3 {
        let mut chunk = cur.len().max(1);
        loop {
            let observed = observed_values(&cur);
            let no_failed_cas =
                !cur.iter().any(|(o, _)| matches!(o.action, Action::Cas { succeeded: Some(false), .. }));
            let eligible = |(o, k): &(Op, Kept)| match phase {
                0 => {
                    o.ret.is_some()
                        && matches!(
                            o.action,
                            Action::Read { .. } | Action::Cas { succeeded: Some(false), .. }
                        )
                }
                1 => no_failed_cas && written(o).is_some_and(|v| !observed.contains(v)),
                _ => *k == Kept::AsRecorded && o.ret.is_some() && written(o).is_some(),
            };
            let idx: Vec<usize> = (0..cur.len()).filter(|&i| eligible(&cur[i])).collect();
            let mut start = 0;
            let mut changed = false;
            while start < idx.len() && !out_of_time() {
                let set: HashSet<usize> =
                    idx[start..(start + chunk).min(idx.len())].iter().copied().collect();
                let candidate: Vec<(Op, Kept)> = cur
                    .iter()
                    .enumerate()
                    .filter_map(|(i, (o, k))| {
                        if !set.contains(&i) {
                            return Some((o.clone(), k.clone()));
                        }
                        if phase < 2 {
                            return None;
                        }
                        let mut o = o.clone();
                        o.ret = None;
                        if let Action::Cas { succeeded, .. } = &mut o.action {
                            *succeeded = None;
                        }
                        Some((o, Kept::Relaxed))
                    })
                    .collect();
                if invalid(&candidate) {
                    cur = candidate;
                    changed = true;
                    break;
                }
                start += chunk;
            }
            if out_of_time() {
                break;
            }
            if !changed {
                if chunk == 1 {
                    break;
                }
                chunk = chunk.div_ceil(2);
            }
        }
    }
    // Finally, unknown (or relaxed) writes nobody observes, one at a time.
    let mut i = 0;
    while i < cur.len() && !out_of_time() {
        let observed = observed_values(&cur);
        let no_failed_cas =
            !cur.iter().any(|(o, _)| matches!(o.action, Action::Cas { succeeded: Some(false), .. }));
        let o = &cur[i].0;
        if no_failed_cas && o.ret.is_none() && written(o).is_some_and(|v| !observed.contains(v)) {
            let mut candidate = cur.clone();
            candidate.remove(i);
            if invalid(&candidate) {
                cur = candidate;
                continue;
            }
        }
        i += 1;
    }
    cur
}

fn written(o: &Op) -> Option<&String> {
    match &o.action {
        Action::Write { value } => Some(value),
        Action::Cas { new, succeeded, .. } if *succeeded != Some(false) => Some(new),
        _ => None,
    }
}

fn observed_values(h: &[(Op, Kept)]) -> HashSet<String> {
    h.iter()
        .filter_map(|(o, _)| match &o.action {
            Action::Read { observed } => observed.clone(),
            Action::Cas { expected, .. } => expected.clone(),
            Action::Write { .. } => None,
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn b() -> Budget {
        Budget { max_steps: 1_000_000, max_time: Duration::from_secs(10) }
    }
    fn valid(h: &[Op]) {
        assert_eq!(check(h, b()), Verdict::Valid, "{h:#?}");
    }
    fn invalid(h: &[Op]) {
        let v = check(h, b());
        assert!(v.is_invalid(), "expected invalid, got {v:?}: {h:#?}");
        let shrunk = shrink(h, b(), Duration::from_secs(10));
        let ops: Vec<Op> = shrunk.iter().map(|(o, _)| o.clone()).collect();
        assert!(check(&ops, b()).is_invalid(), "the shrunk history must still fail");
        assert!(shrunk.len() <= h.len());
    }

    #[test]
    fn empty_and_sequential_histories_are_valid() {
        valid(&[]);
        valid(&[
            Op::read(1, 0, 1, None),
            Op::write(2, 2, Some(3), "a"),
            Op::read(3, 4, 5, Some("a")),
            Op::cas(4, 6, Some(7), Some("a"), "b", Some(true)),
            Op::cas(5, 8, Some(9), Some("a"), "c", Some(false)),
            Op::read(6, 10, 11, Some("b")),
        ]);
    }

    #[test]
    fn concurrent_ops_may_take_effect_in_either_order() {
        // Two overlapping writes; reads after both see the one linearized last.
        valid(&[
            Op::write(1, 0, Some(10), "a"),
            Op::write(2, 1, Some(9), "b"),
            Op::read(3, 11, 12, Some("a")),
        ]);
        valid(&[
            Op::write(1, 0, Some(10), "a"),
            Op::write(2, 1, Some(9), "b"),
            Op::read(3, 11, 12, Some("b")),
        ]);
        // A read overlapping a write may see either the old or the new value.
        valid(&[Op::write(1, 0, Some(10), "a"), Op::read(2, 1, 2, None), Op::read(3, 3, 4, Some("a"))]);
    }

    #[test]
    fn stale_read_is_caught() {
        // "b" is acknowledged before the read starts, yet the read returns "a".
        let h = [Op::write(1, 0, Some(1), "a"), Op::write(2, 2, Some(3), "b"), Op::read(3, 4, 5, Some("a"))];
        invalid(&h);
        let shrunk = shrink(&h, b(), Duration::from_secs(5));
        assert_eq!(shrunk.len(), 3, "every op is needed: {shrunk:?}");
    }

    #[test]
    fn non_monotonic_reads_are_caught() {
        invalid(&[
            Op::write(1, 0, Some(1), "a"),
            Op::write(2, 2, Some(20), "b"),
            Op::read(3, 3, 4, Some("b")),
            Op::read(4, 5, 6, Some("a")),
        ]);
    }

    #[test]
    fn lost_acknowledged_write_is_caught() {
        // The write of "b" was acknowledged, but later reads never see it, and nothing overwrote it.
        invalid(&[
            Op::write(1, 0, Some(1), "a"),
            Op::write(2, 2, Some(3), "b"),
            Op::read(3, 10, 11, Some("a")),
            Op::read(4, 12, 13, Some("a")),
        ]);
        // The first write of the key is lost altogether.
        invalid(&[Op::write(1, 0, Some(1), "a"), Op::read(2, 5, 6, None)]);
    }

    #[test]
    fn cas_anomalies_are_caught() {
        // Two compare-and-sets from the same value both succeed, sequentially.
        invalid(&[
            Op::write(1, 0, Some(1), "a"),
            Op::cas(2, 2, Some(3), Some("a"), "b", Some(true)),
            Op::cas(3, 4, Some(5), Some("a"), "c", Some(true)),
        ]);
        // A compare-and-set reports a failed compare although the value matched.
        invalid(&[
            Op::write(1, 0, Some(1), "a"),
            Op::cas(2, 2, Some(3), Some("a"), "b", Some(false)),
            Op::read(3, 4, 5, Some("a")),
        ]);
        // A successful compare-and-set whose new value is never seen.
        invalid(&[
            Op::write(1, 0, Some(1), "a"),
            Op::cas(2, 2, Some(3), Some("a"), "b", Some(true)),
            Op::read(3, 4, 5, Some("a")),
        ]);
        // Concurrent compare-and-sets from the same value: only one may succeed.
        invalid(&[
            Op::write(1, 0, Some(1), "a"),
            Op::cas(2, 2, Some(10), Some("a"), "b", Some(true)),
            Op::cas(3, 3, Some(11), Some("a"), "c", Some(true)),
        ]);
        valid(&[
            Op::write(1, 0, Some(1), "a"),
            Op::cas(2, 2, Some(10), Some("a"), "b", Some(true)),
            Op::cas(3, 3, Some(11), Some("a"), "c", Some(false)),
            Op::read(4, 12, 13, Some("b")),
        ]);
    }

    #[test]
    fn unknown_ops_may_take_effect_later_or_never() {
        // Never: the unknown write is not seen.
        valid(&[Op::write(1, 0, Some(1), "a"), Op::write(2, 2, None, "b"), Op::read(3, 10, 11, Some("a"))]);
        // Much later: seen after a read that did not see it.
        valid(&[
            Op::write(1, 0, Some(1), "a"),
            Op::write(2, 2, None, "b"),
            Op::read(3, 10, 11, Some("a")),
            Op::read(4, 100, 101, Some("b")),
        ]);
        // But not before it was invoked.
        invalid(&[Op::read(1, 0, 1, Some("b")), Op::write(2, 2, None, "b")]);
        // And once seen, it stays seen.
        invalid(&[
            Op::write(1, 0, Some(1), "a"),
            Op::write(2, 2, None, "b"),
            Op::read(3, 10, 11, Some("b")),
            Op::read(4, 12, 13, Some("a")),
        ]);
        // An unknown compare-and-set takes effect only if its compare holds where it lands.
        valid(&[
            Op::write(1, 0, Some(1), "a"),
            Op::cas(2, 2, None, Some("a"), "b", None),
            Op::read(3, 5, 6, Some("b")),
        ]);
        invalid(&[
            Op::write(1, 0, Some(1), "x"),
            Op::cas(2, 2, None, Some("a"), "b", None),
            Op::read(3, 5, 6, Some("b")),
        ]);
    }

    #[test]
    fn a_budget_that_runs_out_reports_unknown() {
        // Many concurrent unknown writes and a read of a value nobody wrote: exhaustive and large.
        // Every value is read by some concurrent read, so no two writes are interchangeable.
        let mut h: Vec<Op> = (0..30).map(|i| Op::write(i, i, None, &format!("v{i}"))).collect();
        h.extend((0..30).map(|i| Op::read(100 + i, 100 + i, 1000, Some(&format!("v{i}")))));
        h.push(Op::read(200, 2000, 2001, Some("nobody")));
        let v = check(&h, Budget { max_steps: 10_000, max_time: Duration::from_secs(10) });
        assert!(matches!(v, Verdict::Unknown { .. }), "{v:?}");
    }

    #[test]
    fn shrinking_finds_the_core_of_a_long_history() {
        let mut h = Vec::new();
        let mut t = 0;
        for i in 0..200u64 {
            h.push(Op::write(i * 2, t, Some(t + 5), &format!("v{i}")));
            h.push(Op::read(i * 2 + 1, t + 6, t + 8, Some(&format!("v{i}"))));
            t += 10;
        }
        // A stale read at the end.
        h.push(Op::read(10_000, t, t + 1, Some("v150")));
        invalid(&h);
        let shrunk = shrink(&h, b(), Duration::from_secs(20));
        assert!(
            shrunk.len() <= 4,
            "{}",
            shrunk.iter().map(|(o, _)| o.to_string()).collect::<Vec<_>>().join("\n")
        );
    }

    #[test]
    fn many_concurrent_writers_and_readers_check_quickly() {
        // 8 workers, overlapping ops, all consistent with the order of invocation.
        let mut h = Vec::new();
        let mut id = 0;
        let mut last: Option<String> = None;
        for round in 0..150u64 {
            let base = round * 100;
            for w in 0..8u64 {
                id += 1;
                if w % 2 == 0 {
                    let v = format!("r{round}w{w}");
                    h.push(Op::write(id, base + w, Some(base + 50 + w), &v));
                    last = Some(v);
                } else if w == 7 {
                    h.push(Op::read(id, base + 60, base + 70, last.as_deref()));
                } else {
                    h.push(Op::write(id, base + w, None, &format!("u{round}w{w}")));
                }
            }
        }
        let started = Instant::now();
        let v = check(&h, Budget::default());
        assert_eq!(v, Verdict::Valid);
        assert!(started.elapsed() < Duration::from_secs(20), "{:?}", started.elapsed());
    }
}
