//! Crash-point tests: for every write and fsync of a scripted workload,
//! crash there, recover, and check that every entry and hard state reported
//! durable is present and unchanged, and that the recovered log is exactly
//! the durable log plus a prefix of the records written after it (so
//! nothing after a torn record is applied).
#![allow(clippy::unwrap_used)]

mod common;

use std::collections::BTreeMap;

use common::*;
use raftkv_storage::{CrashMode, HardState, LogRecord, LogRecovered, LogStore, SimFs, StorageError};

#[derive(Clone, Debug)]
enum Step {
    Append(Vec<LogRecord>),
    Hs(HardState),
    Sync,
    Compact(u64),
}

#[derive(Clone, Debug)]
enum Item {
    Entry(LogRecord),
    Reset(u64),
}

#[derive(Clone, Debug, Default)]
struct Model {
    entries: BTreeMap<u64, LogRecord>,
    last: u64,
}

impl Model {
    fn apply(&mut self, item: &Item) {
        match item {
            Item::Entry(r) => {
                self.entries.split_off(&r.index);
                self.entries.insert(r.index, r.clone());
                self.last = r.index;
            }
            Item::Reset(i) => {
                self.entries.clear();
                self.last = *i;
            }
        }
    }
}

#[derive(Debug, Default)]
struct Oracle {
    durable: Model,
    durable_hs: HardState,
    pending: Vec<Item>,
    /// Hard states saved since the last sync, with the number of pending
    /// items appended before each was saved.
    pending_hs: Vec<(HardState, usize)>,
    compact_attempted: u64,
}

impl Oracle {
    fn current(&self) -> Model {
        let mut m = self.durable.clone();
        for it in &self.pending {
            m.apply(it);
        }
        m
    }
    fn synced(&mut self) {
        self.durable = self.current();
        self.pending.clear();
        if let Some((h, _)) = self.pending_hs.last() {
            self.durable_hs = *h;
        }
        self.pending_hs.clear();
    }
}

fn workload() -> Vec<Step> {
    let mut v = Vec::new();
    for b in 0..12u64 {
        v.push(Step::Append(recs(b * 5 + 1, b * 5 + 5, 1, "w")));
        if b % 2 == 0 {
            v.push(Step::Hs(HardState { term: b + 1, voted_for: b % 3 + 1, commit: b * 5 }));
        }
        v.push(Step::Sync);
    }
    // Conflicting suffix within the last segment, then across segments.
    v.push(Step::Append(recs(48, 52, 5, "t")));
    v.push(Step::Sync);
    v.push(Step::Append(recs(20, 22, 6, "u")));
    v.push(Step::Hs(HardState { term: 6, voted_for: 2, commit: 19 }));
    v.push(Step::Sync);
    for b in 0..8u64 {
        v.push(Step::Append(recs(23 + b * 5, 27 + b * 5, 6, "x")));
        if b % 3 == 2 {
            v.push(Step::Sync);
        }
    }
    v.push(Step::Sync);
    v.push(Step::Compact(40));
    v.push(Step::Append(recs(63, 70, 7, "y")));
    v.push(Step::Hs(HardState { term: 7, voted_for: 0, commit: 60 }));
    v.push(Step::Sync);
    v.push(Step::Compact(100));
    v.push(Step::Append(recs(101, 110, 8, "z")));
    v.push(Step::Hs(HardState { term: 8, voted_for: 3, commit: 105 }));
    v.push(Step::Sync);
    v
}

/// Run the workload until it completes or a call fails; returns what was
/// reported durable and the first error.
fn run(store: &mut impl LogStore, steps: &[Step]) -> (Oracle, Option<StorageError>) {
    let mut o = Oracle::default();
    for step in steps {
        let r = match step {
            Step::Append(rs) => {
                o.pending.extend(rs.iter().cloned().map(Item::Entry));
                store.append(rs)
            }
            Step::Hs(h) => {
                o.pending_hs.push((*h, o.pending.len()));
                store.save_hard_state(*h)
            }
            Step::Sync => store.sync().map(|()| o.synced()),
            Step::Compact(i) => {
                o.compact_attempted = o.compact_attempted.max(*i);
                let reset = *i > o.current().last;
                if reset {
                    o.pending.push(Item::Reset(*i));
                }
                store.compact(*i).map(|()| {
                    if reset {
                        o.synced();
                    }
                })
            }
        };
        if let Err(e) = r {
            return (o, Some(e));
        }
    }
    (o, None)
}

fn matches_state(rec: &LogRecovered, m: &Model, compacted: u64) -> bool {
    if rec.last_index != m.last {
        return false;
    }
    for r in &rec.records {
        if m.entries.get(&r.index) != Some(r) {
            return false;
        }
    }
    let have: BTreeMap<u64, &LogRecord> = rec.records.iter().map(|r| (r.index, r)).collect();
    m.entries.range(compacted + 1..).all(|(i, r)| have.get(i) == Some(&r))
}

fn check(rec: &LogRecovered, o: &Oracle, ctx: &str) {
    let mut state = o.durable.clone();
    let mut ok = matches_state(rec, &state, o.compact_attempted);
    let mut prefix = 0;
    for it in &o.pending {
        if ok {
            break;
        }
        state.apply(it);
        prefix += 1;
        ok = matches_state(rec, &state, o.compact_attempted);
    }
    assert!(
        ok,
        "{ctx}: recovered log (first {}, last {}, {} records) is not the durable log plus a prefix of later writes (durable last {})",
        rec.first_index,
        rec.last_index,
        rec.records.len(),
        o.durable.last
    );
    let clamp = |h: HardState| HardState { commit: h.commit.min(rec.last_index), ..h };
    let allowed: Vec<HardState> =
        std::iter::once(o.durable_hs).chain(o.pending_hs.iter().map(|(h, _)| *h)).map(clamp).collect();
    assert!(
        allowed.contains(&rec.hard_state),
        "{ctx}: recovered hard state {:?} is neither the durable one {:?} nor a later one",
        rec.hard_state,
        o.durable_hs
    );
    assert!(rec.hard_state.commit <= rec.last_index);
    // Entries are written before the hard state: a newer hard state implies
    // every entry appended before it was saved.
    if rec.hard_state != clamp(o.durable_hs)
        && let Some((_, pos)) = o.pending_hs.iter().find(|(h, _)| clamp(*h) == rec.hard_state)
    {
        assert!(
            prefix >= *pos,
            "{ctx}: hard state {:?} recovered without the {} entries written before it (only {prefix})",
            rec.hard_state,
            pos
        );
    }
}

/// After recovery the store must accept appends and reopen cleanly.
fn check_usable(fs: &SimFs, rec: &LogRecovered, mut store: impl LogStore, ctx: &str) {
    let next = rec.last_index + 1;
    store.append(&[rec_at(next)]).unwrap();
    store.sync().unwrap();
    drop(store);
    fs.crash(CrashMode::LoseUnsynced);
    let (_, again) = sim_open(fs, small_opts()).unwrap_or_else(|e| panic!("{ctx}: reopen: {e}"));
    assert_eq!(again.last_index, next, "{ctx}");
    assert_eq!(again.records.last(), Some(&rec_at(next)), "{ctx}");
    assert_eq!(
        again.records[..again.records.len() - 1],
        rec.records[rec.records.len() - (again.records.len() - 1)..]
    );
}

fn rec_at(i: u64) -> LogRecord {
    rec(i, 99, "after-recovery")
}

fn total_ops(steps: &[Step]) -> u64 {
    let fs = SimFs::new();
    let mut s = sim_create(&fs, small_opts());
    let base = fs.op_count();
    let (_, err) = run(&mut s, steps);
    assert!(err.is_none());
    fs.op_count() - base
}

#[test]
fn crash_at_every_write_and_fsync() {
    let steps = workload();
    let n = total_ops(&steps);
    assert!(n > 100, "workload too small: {n} operations");
    let modes = |k: u64| {
        [
            CrashMode::LoseUnsynced,
            CrashMode::KeepUnsynced,
            CrashMode::Torn { seed: k },
            CrashMode::Torn { seed: k * 7919 + 1 },
            CrashMode::Torn { seed: k * 104_729 + 3 },
        ]
    };
    let mut torn_seen = 0;
    for k in 1..=n + 1 {
        for mode in modes(k) {
            let fs = SimFs::new();
            let mut s = sim_create(&fs, small_opts());
            fs.crash_before_op(fs.op_count() + k);
            let (o, err) = run(&mut s, &steps);
            assert_eq!(err.is_some(), k <= n, "crash point {k}");
            drop(s);
            fs.crash(mode);
            let ctx = format!("crash before op {k}/{n}, {mode:?}");
            let (store, rec) =
                sim_open(&fs, small_opts()).unwrap_or_else(|e| panic!("{ctx}: open failed: {e}"));
            if store.torn_tail().is_some() {
                torn_seen += 1;
            }
            check(&rec, &o, &ctx);
            check_usable(&fs, &rec, store, &ctx);
        }
    }
    assert!(torn_seen > 0, "no crash point produced a torn tail: the test would prove nothing");
}

#[test]
fn failed_fsync_is_fatal_and_not_retried() {
    let steps = workload();
    let fs = SimFs::new();
    let mut s = sim_create(&fs, small_opts());
    let base = fs.sync_count();
    let _ = run(&mut s, &steps);
    let syncs = fs.sync_count() - base;
    for j in 1..=syncs {
        let fs = SimFs::new();
        let mut s = sim_create(&fs, small_opts());
        fs.fail_sync(fs.sync_count() + j);
        let (o, err) = run(&mut s, &steps);
        let err = err.unwrap_or_else(|| panic!("sync {j}: failure not reported"));
        assert!(matches!(err, StorageError::FsyncFailed { .. }), "sync {j}: {err}");
        assert!(err.is_fatal());
        // Poisoned: no further call succeeds, and nothing is retried.
        let before = fs.sync_count();
        assert!(matches!(s.sync(), Err(StorageError::Poisoned { .. })));
        assert!(matches!(s.append(&[rec(1, 1, "p")]), Err(StorageError::Poisoned { .. })));
        assert!(matches!(s.save_hard_state(HardState::default()), Err(StorageError::Poisoned { .. })));
        assert!(matches!(s.compact(1), Err(StorageError::Poisoned { .. })));
        assert!(s.entries(s.first_index(), s.first_index()).is_err());
        assert_eq!(fs.sync_count(), before, "sync {j}: a failed fsync was retried");
        drop(s);
        // The restarted node recovers what was durable.
        fs.crash(CrashMode::LoseUnsynced);
        let (_, rec) = sim_open(&fs, small_opts()).unwrap();
        check(&rec, &o, &format!("failed sync {j}"));
    }
}

#[test]
fn failed_write_poisons_the_store() {
    let steps = workload();
    let fs = SimFs::new();
    let mut s = sim_create(&fs, small_opts());
    let base = fs.write_count();
    let _ = run(&mut s, &steps);
    let writes = fs.write_count() - base;
    assert!(writes > 10);
    for j in 1..=writes {
        let fs = SimFs::new();
        let mut s = sim_create(&fs, small_opts());
        fs.fail_write(fs.write_count() + j);
        let (o, err) = run(&mut s, &steps);
        assert!(matches!(err, Some(StorageError::Io { .. })), "write {j}: {err:?}");
        assert!(matches!(s.sync(), Err(StorageError::Poisoned { .. })));
        drop(s);
        fs.crash(CrashMode::LoseUnsynced);
        let (_, rec) = sim_open(&fs, small_opts()).unwrap();
        check(&rec, &o, &format!("failed write {j}"));
    }
}
