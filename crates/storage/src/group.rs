//! Group commit: many threads append, one fdatasync covers them all.

use std::collections::HashMap;
use std::mem;

use bytes::Bytes;
use parking_lot::{Condvar, Mutex};

use crate::error::{Result, StorageError};
use crate::{HardState, LogRecord, LogStore};

/// How many batches a leader writes for others after its own is durable
/// before handing leadership over (bounds the leader's own latency).
const MAX_EXTRA_BATCHES: u32 = 8;

enum Op {
    Append(Vec<LogRecord>),
    HardState(HardState),
}

#[derive(Default)]
struct State {
    queue: Vec<(u64, Op)>,
    /// Sequence number of the next submitted operation.
    next_seq: u64,
    /// A leader is currently writing a batch.
    writing: bool,
    /// Generation of the batch now accepting operations; the batch being
    /// written (if any) is `open_gen - 1`.
    open_gen: u64,
    /// Every batch with a generation `<=` this is durable.
    durable_gen: u64,
    poisoned: Option<String>,
    /// Index the next proposal gets (last index including queued appends + 1).
    next_index: u64,
    /// Operations rejected (non-fatally) by the store.
    failed: HashMap<u64, String>,
    batches: u64,
    ops: u64,
}

/// A thread-safe front end to a [`LogStore`] with group commit.
///
/// Callers enqueue operations and block until they are durable. There is no
/// writer thread: the first waiting caller that finds no write in progress
/// becomes the leader, takes *everything* queued, applies it to the store
/// with one buffered write and calls `sync()` once, then wakes everyone
/// whose operations are now durable (leader/follower hand-off). While it
/// writes, new callers queue up for the next batch, so under load each
/// fdatasync is shared by all the appenders that arrived during the
/// previous one.
///
/// A fatal error (failed write or fsync) poisons the log: the caller whose
/// batch failed and every later caller get [`StorageError::Poisoned`].
pub struct GroupCommitLog<L: LogStore> {
    store: Mutex<L>,
    state: Mutex<State>,
    /// Waiters of batch `g` sleep on `cv[g % 2]`: at most two batches exist
    /// at a time (one being written, one filling), so a finished batch wakes
    /// only its own waiters, not the next batch's.
    cv: [Condvar; 2],
}

impl<L: LogStore> GroupCommitLog<L> {
    /// Wrap a store.
    pub fn new(store: L) -> Self {
        let next_index = store.last_index() + 1;
        GroupCommitLog {
            store: Mutex::new(store),
            state: Mutex::new(State { next_seq: 1, open_gen: 1, next_index, ..State::default() }),
            cv: [Condvar::new(), Condvar::new()],
        }
    }

    /// Append records (explicit indexes, same rules as
    /// [`LogStore::append`], checked against the queued appends) and block
    /// until they are durable.
    pub fn append(&self, records: Vec<LogRecord>) -> Result<()> {
        if records.is_empty() {
            return Ok(());
        }
        let seq = {
            let mut st = self.state.lock();
            Self::check(&st)?;
            let first = records[0].index;
            if first > st.next_index || first == 0 {
                return Err(StorageError::InvalidArgument(format!(
                    "append at index {first} would leave a gap (next index is {})",
                    st.next_index
                )));
            }
            st.next_index = first + records.len() as u64;
            Self::enqueue(&mut st, Op::Append(records))
        };
        self.wait(seq)
    }

    /// Append one entry at the next free index and block until it is
    /// durable; returns its index.
    pub fn propose(&self, term: u64, kind: u8, data: Bytes) -> Result<u64> {
        let (seq, index) = {
            let mut st = self.state.lock();
            Self::check(&st)?;
            let index = st.next_index;
            st.next_index += 1;
            let seq = Self::enqueue(&mut st, Op::Append(vec![LogRecord { index, term, kind, data }]));
            (seq, index)
        };
        self.wait(seq)?;
        Ok(index)
    }

    /// Save a hard state and block until it is durable (it joins the
    /// current batch and is written after the batch's entries).
    pub fn save_hard_state(&self, hs: HardState) -> Result<()> {
        let seq = {
            let mut st = self.state.lock();
            Self::check(&st)?;
            Self::enqueue(&mut st, Op::HardState(hs))
        };
        self.wait(seq)
    }

    /// Run `f` on the store (reads, compaction, ...) while no batch is being
    /// written. Appends through `f` must not race with `append`/`propose`.
    pub fn with_store<R>(&self, f: impl FnOnce(&mut L) -> R) -> R {
        let (r, next) = {
            let mut store = self.store.lock();
            let r = f(&mut store);
            (r, store.last_index() + 1)
        };
        let mut st = self.state.lock();
        if st.queue.is_empty() && !st.writing {
            st.next_index = next;
        }
        r
    }

    /// (number of batches written, number of operations in them).
    pub fn stats(&self) -> (u64, u64) {
        let st = self.state.lock();
        (st.batches, st.ops)
    }

    /// Unwrap the store.
    pub fn into_inner(self) -> L {
        self.store.into_inner()
    }

    fn check(st: &State) -> Result<()> {
        match &st.poisoned {
            Some(c) => Err(StorageError::Poisoned { cause: c.clone() }),
            None => Ok(()),
        }
    }

    fn enqueue(st: &mut State, op: Op) -> (u64, u64) {
        let seq = st.next_seq;
        st.next_seq += 1;
        st.queue.push((seq, op));
        (seq, st.open_gen)
    }

    fn wait(&self, (seq, generation): (u64, u64)) -> Result<()> {
        let mut st = self.state.lock();
        // Batches this caller wrote as leader after its own became durable.
        let mut extra_batches = 0;
        loop {
            if let Some(msg) = st.failed.remove(&seq) {
                return Err(StorageError::InvalidArgument(msg));
            }
            let done = st.durable_gen >= generation;
            if done && (extra_batches >= MAX_EXTRA_BATCHES || st.writing || st.queue.is_empty()) {
                return Ok(());
            }
            Self::check(&st)?;
            if !st.writing && !st.queue.is_empty() {
                if done {
                    // Keep leading while work is queued: handing over to a
                    // sleeping thread would put a wake-up on the critical
                    // path of every batch.
                    extra_batches += 1;
                }
                st.writing = true;
                let batch = mem::take(&mut st.queue);
                let batch_gen = st.open_gen;
                st.open_gen += 1;
                drop(st);
                let n = batch.len() as u64;
                let (res, failures) = self.write_batch(batch);
                st = self.state.lock();
                st.writing = false;
                match res {
                    Ok(()) => {
                        st.durable_gen = batch_gen;
                        st.failed.extend(failures);
                        st.batches += 1;
                        st.ops += n;
                        self.cv[(batch_gen % 2) as usize].notify_all();
                        if !st.queue.is_empty()
                            && (extra_batches >= MAX_EXTRA_BATCHES || batch_gen < generation)
                        {
                            // This caller will not lead the next batch: hand
                            // it to one of its waiters.
                            self.cv[(st.open_gen % 2) as usize].notify_one();
                        }
                    }
                    Err(e) => {
                        if st.poisoned.is_none() {
                            st.poisoned = Some(e.to_string());
                        }
                        self.cv[0].notify_all();
                        self.cv[1].notify_all();
                    }
                }
                continue;
            }
            self.cv[(generation % 2) as usize].wait(&mut st);
        }
    }

    fn write_batch(&self, batch: Vec<(u64, Op)>) -> (Result<()>, Vec<(u64, String)>) {
        let mut store = self.store.lock();
        let mut failures = Vec::new();
        for (seq, op) in batch {
            let r = match op {
                Op::Append(records) => store.append(&records),
                Op::HardState(hs) => store.save_hard_state(hs),
            };
            match r {
                Ok(()) => {}
                Err(e) if e.is_fatal() || matches!(e, StorageError::Io { .. }) => {
                    return (Err(e), failures);
                }
                Err(e) => failures.push((seq, e.to_string())),
            }
        }
        (store.sync(), failures)
    }
}
