//! Group commit: many threads append, one fdatasync covers them all.

use std::collections::HashMap;
use std::mem;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::thread::JoinHandle;

use bytes::Bytes;
use parking_lot::Mutex;

use crate::error::{Result, StorageError};
use crate::futex;
use crate::{HardState, LogRecord, LogStore};

/// Number of futex words waiters are spread over (by batch generation).
const WORDS: usize = 8;
/// How many sleepers each woken waiter wakes (see `Shared::wait`).
const WAKE_FANOUT: u32 = 4;

enum Op {
    /// One entry (`propose`): kept inline, no allocation per call.
    One(LogRecord),
    Many(Vec<LogRecord>),
    HardState(HardState),
}

/// Queued operations, each with its sequence number.
type Batch = Vec<(u64, Op)>;

struct State {
    /// Operations of the open batch (generation `open_gen`).
    queue: Batch,
    /// An empty buffer with capacity, swapped in for `queue` by an inline
    /// leader so that taking a batch never allocates.
    spare: Batch,
    /// Sequence number of the next submitted operation.
    next_seq: u64,
    /// The write token: someone (an appender or the writer thread) is
    /// writing a batch and will take the next one when it is done.
    writing: bool,
    /// The writer thread holds the write token.
    writer_has_token: bool,
    /// The writer thread exists (spawning it may fail: the inline leader
    /// then keeps writing until the queue is empty).
    have_writer: bool,
    shutdown: bool,
    /// Generation of the batch now accepting operations; the batch being
    /// written (if any) is `open_gen - 1`.
    open_gen: u64,
    poisoned: Option<String>,
    /// Index the next proposal gets (last index including queued appends + 1).
    next_index: u64,
    /// Operations rejected (non-fatally) by the store, not yet reported.
    failed: HashMap<u64, String>,
}

struct Shared<L> {
    store: Mutex<L>,
    state: Mutex<State>,
    /// Every batch with a generation `<=` this is finished (written and
    /// synced; rejected operations are in `State::failed`).
    done_gen: AtomicU64,
    /// Futex words. Waiters of batch `g` sleep on `done_word[g % WORDS]`,
    /// which changes when `g` is done. Only two batches exist at a time (one
    /// being written, one filling), so a finished batch wakes its own
    /// waiters, not the next batch's (more than two words: a wake-up chain
    /// still running when its word is reused only causes spurious wake-ups).
    done_word: [AtomicU32; WORDS],
    /// Mirror of `State::poisoned.is_some()` for waiters.
    poisoned: AtomicBool,
    /// `State::failed.len()`, so that waiters only lock to look there when
    /// something failed.
    pending_failures: AtomicU64,
    /// Futex word the idle writer thread sleeps on.
    writer_word: AtomicU32,
    batches: AtomicU64,
    ops: AtomicU64,
}

/// A thread-safe front end to a [`LogStore`] with group commit.
///
/// Callers enqueue operations and block until they are durable.
///
/// * A caller that finds the log idle writes its own operation at once (one
///   buffered write, one `sync()`), with no thread hop, so a lone appender
///   pays exactly one fdatasync per call.
/// * Operations submitted while a batch is being written queue up (a short
///   critical section, no allocation for `propose`). When the inline writer
///   finishes and finds work queued, it hands the write token to a dedicated
///   writer thread and returns; the writer thread then drains the queue batch
///   after batch, each with one write and one fdatasync, so under load every
///   fdatasync covers all the operations that arrived during the previous one,
///   and no caller is held up writing for others.
/// * Waiters sleep on a futex word of their batch and never take a lock to
///   learn that they are done. When a batch is durable the writer publishes
///   it, wakes one of its waiters and starts the next batch at once; each
///   waiter woken wakes a few more (a wake-up tree), so waking hundreds of
///   threads is spread over the waiters and the CPUs instead of being done
///   by the writer, at a few microseconds of kernel time each.
///
/// A fatal error (failed write or fsync) poisons the log: the callers of the
/// failed batch and every later caller get [`StorageError::Poisoned`];
/// nothing is retried.
pub struct GroupCommitLog<L: LogStore + 'static> {
    shared: Arc<Shared<L>>,
    writer: WriterThread<L>,
}

/// Owns the writer thread; stops and joins it when dropped.
struct WriterThread<L: LogStore + 'static> {
    shared: Arc<Shared<L>>,
    handle: Option<JoinHandle<()>>,
}

impl<L: LogStore + 'static> Drop for WriterThread<L> {
    fn drop(&mut self) {
        let Some(handle) = self.handle.take() else {
            return;
        };
        self.shared.state.lock().shutdown = true;
        self.shared.writer_word.fetch_add(1, Ordering::Release);
        futex::wake(&self.shared.writer_word, 1);
        if handle.join().is_err() {
            tracing::error!("group commit writer thread panicked");
        }
    }
}

impl<L: LogStore + 'static> GroupCommitLog<L> {
    /// Wrap a store. Starts the writer thread (if that fails, callers write
    /// the queued batches themselves).
    pub fn new(store: L) -> Self {
        let next_index = store.last_index() + 1;
        let shared = Arc::new(Shared {
            store: Mutex::new(store),
            state: Mutex::new(State {
                queue: Vec::new(),
                spare: Vec::new(),
                next_seq: 1,
                writing: false,
                writer_has_token: false,
                have_writer: false,
                shutdown: false,
                open_gen: 1,
                poisoned: None,
                next_index,
                failed: HashMap::new(),
            }),
            done_gen: AtomicU64::new(0),
            done_word: Default::default(),
            poisoned: AtomicBool::new(false),
            pending_failures: AtomicU64::new(0),
            writer_word: AtomicU32::new(0),
            batches: AtomicU64::new(0),
            ops: AtomicU64::new(0),
        });
        let s = shared.clone();
        let handle = match std::thread::Builder::new()
            .name("raftkv-wal-writer".into())
            .spawn(move || s.writer_thread())
        {
            Ok(h) => {
                shared.state.lock().have_writer = true;
                Some(h)
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot start the group commit writer thread; callers will write");
                None
            }
        };
        GroupCommitLog { writer: WriterThread { shared: shared.clone(), handle }, shared }
    }

    /// Append records (explicit indexes, same rules as
    /// [`LogStore::append`], checked against the queued appends) and block
    /// until they are durable.
    pub fn append(&self, records: Vec<LogRecord>) -> Result<()> {
        if records.is_empty() {
            return Ok(());
        }
        self.shared.submit(|st| {
            let first = records[0].index;
            if first > st.next_index || first == 0 {
                return Err(StorageError::InvalidArgument(format!(
                    "append at index {first} would leave a gap (next index is {})",
                    st.next_index
                )));
            }
            st.next_index = first + records.len() as u64;
            Ok((Op::Many(records), ()))
        })
    }

    /// Append one entry at the next free index and block until it is
    /// durable; returns its index.
    pub fn propose(&self, term: u64, kind: u8, data: Bytes) -> Result<u64> {
        if kind > crate::record::MAX_USER_KIND {
            // Checked here so that the rejected entry does not leave a gap
            // in the indexes handed out.
            return Err(StorageError::InvalidArgument(format!(
                "record kind {kind:#x} is reserved (max {:#x})",
                crate::record::MAX_USER_KIND
            )));
        }
        self.shared.submit(|st| {
            let index = st.next_index;
            st.next_index += 1;
            Ok((Op::One(LogRecord { index, term, kind, data }), index))
        })
    }

    /// Save a hard state and block until it is durable (it joins the
    /// current batch and is written after the batch's entries).
    pub fn save_hard_state(&self, hs: HardState) -> Result<()> {
        self.shared.submit(|_| Ok((Op::HardState(hs), ())))
    }

    /// Run `f` on the store (reads, compaction, ...) while no batch is being
    /// written. Appends through `f` must not race with `append`/`propose`.
    pub fn with_store<R>(&self, f: impl FnOnce(&mut L) -> R) -> R {
        let (r, next) = {
            let mut store = self.shared.store.lock();
            let r = f(&mut store);
            (r, store.last_index() + 1)
        };
        let mut st = self.shared.state.lock();
        if st.queue.is_empty() && !st.writing {
            st.next_index = next;
        }
        r
    }

    /// (number of batches written, number of operations in them).
    pub fn stats(&self) -> (u64, u64) {
        (self.shared.batches.load(Ordering::Relaxed), self.shared.ops.load(Ordering::Relaxed))
    }

    /// Stop the writer thread and unwrap the store.
    pub fn into_inner(self) -> L {
        let GroupCommitLog { shared, writer } = self;
        drop(writer); // joins the writer thread, which drops its reference
        let Some(shared) = Arc::into_inner(shared) else {
            unreachable!("the writer thread was joined; no other reference exists")
        };
        shared.store.into_inner()
    }
}

impl<L: LogStore + 'static> Shared<L> {
    fn poisoned_error(st: &State) -> Result<()> {
        match &st.poisoned {
            Some(c) => Err(StorageError::Poisoned { cause: c.clone() }),
            None => Ok(()),
        }
    }

    /// Queue the operation built by `make` and block until it is durable.
    fn submit<T>(&self, make: impl FnOnce(&mut State) -> Result<(Op, T)>) -> Result<T> {
        let mut st = self.state.lock();
        Self::poisoned_error(&st)?;
        let (op, out) = make(&mut st)?;
        let seq = st.next_seq;
        st.next_seq += 1;
        st.queue.push((seq, op));
        let generation = st.open_gen;
        if st.writing {
            drop(st);
            self.wait(seq, generation)?;
            return Ok(out);
        }
        // Nobody is writing: write this batch ourselves, without a thread hop.
        st.writing = true;
        let mut batch = mem::take(&mut st.spare);
        mem::swap(&mut batch, &mut st.queue);
        st.open_gen += 1;
        drop(st);
        self.lead(batch, generation)?;
        self.result_of(seq)?;
        Ok(out)
    }

    /// Write `batch` (generation `generation`) as the inline leader, then
    /// hand any operations queued meanwhile to the writer thread (or, if
    /// there is none, keep writing until the queue is empty).
    fn lead(&self, mut batch: Batch, mut generation: u64) -> Result<()> {
        // A batch of one operation is the leader's own: nobody to wake.
        let mut wake = batch.len() > 1;
        loop {
            if let Err(e) = self.write_batch(&mut batch, generation, wake) {
                return Err(self.poison(e));
            }
            let mut st = self.state.lock();
            if st.spare.capacity() < batch.capacity() {
                st.spare = mem::take(&mut batch);
            }
            if st.queue.is_empty() || st.poisoned.is_some() {
                st.writing = false;
                return Ok(());
            }
            if st.have_writer {
                st.writer_has_token = true;
                drop(st);
                self.writer_word.fetch_add(1, Ordering::Release);
                futex::wake(&self.writer_word, 1);
                return Ok(());
            }
            mem::swap(&mut batch, &mut st.queue);
            generation = st.open_gen;
            st.open_gen += 1;
            wake = true;
        }
    }

    fn writer_thread(&self) {
        let mut batch: Batch = Vec::new();
        loop {
            // Sleep until handed the write token (or shut down).
            loop {
                let v = self.writer_word.load(Ordering::Acquire);
                {
                    let st = self.state.lock();
                    if st.writer_has_token {
                        break;
                    }
                    if st.shutdown {
                        return;
                    }
                }
                futex::wait(&self.writer_word, v);
            }
            // Write batches until the queue is empty.
            loop {
                let generation = {
                    let mut st = self.state.lock();
                    if st.queue.is_empty() || st.poisoned.is_some() {
                        st.writing = false;
                        st.writer_has_token = false;
                        break;
                    }
                    mem::swap(&mut batch, &mut st.queue);
                    st.open_gen += 1;
                    st.open_gen - 1
                };
                if let Err(e) = self.write_batch(&mut batch, generation, true) {
                    self.poison(e);
                }
            }
        }
    }

    /// Apply `batch` to the store, sync once, publish it as done and wake
    /// its waiters. Returns the fatal error if the write or sync failed.
    /// `batch` is left empty (its capacity is kept).
    fn write_batch(
        &self,
        batch: &mut Batch,
        generation: u64,
        wake: bool,
    ) -> std::result::Result<(), StorageError> {
        let n = batch.len() as u64;
        let mut failures: Vec<(u64, String)> = Vec::new();
        let res = {
            let mut store = self.store.lock();
            let mut res = Ok(());
            for (seq, op) in batch.drain(..) {
                let r = match &op {
                    Op::One(rec) => store.append(std::slice::from_ref(rec)),
                    Op::Many(records) => store.append(records),
                    Op::HardState(hs) => store.save_hard_state(*hs),
                };
                match r {
                    Ok(()) => {}
                    Err(e) if e.is_fatal() || matches!(e, StorageError::Io { .. }) => {
                        res = Err(e);
                        break;
                    }
                    Err(e) => failures.push((seq, e.to_string())),
                }
            }
            res.and_then(|()| store.sync())
        };
        batch.clear();
        res?;
        if !failures.is_empty() {
            let mut st = self.state.lock();
            self.pending_failures.fetch_add(failures.len() as u64, Ordering::Relaxed);
            st.failed.extend(failures);
        }
        self.batches.fetch_add(1, Ordering::Relaxed);
        self.ops.fetch_add(n, Ordering::Relaxed);
        self.done_gen.store(generation, Ordering::Release);
        let k = (generation % WORDS as u64) as usize;
        let word = &self.done_word[k];
        word.fetch_add(1, Ordering::Release);
        if wake {
            // Start the wake-up chain (see `wait`): the writer wakes one
            // waiter and goes on with the next batch at once.
            futex::wake(word, 1);
        }
        Ok(())
    }

    /// Record a fatal error: no batch is ever written again, every waiter
    /// and later caller gets [`StorageError::Poisoned`].
    fn poison(&self, e: StorageError) -> StorageError {
        let cause = {
            let mut st = self.state.lock();
            st.writing = false;
            st.writer_has_token = false;
            st.poisoned.get_or_insert_with(|| e.to_string()).clone()
        };
        tracing::error!(error = %e, "group commit log poisoned");
        self.poisoned.store(true, Ordering::Release);
        for word in &self.done_word {
            word.fetch_add(1, Ordering::Release);
            futex::wake_all(word);
        }
        StorageError::Poisoned { cause }
    }

    /// Block until batch `generation` (holding operation `seq`) is done.
    ///
    /// Wake-up chain: a waiter that slept and finds its batch done wakes
    /// [`WAKE_FANOUT`] more sleepers of the same word before returning. Waking
    /// a thread costs a few microseconds in the kernel, so a batch of a few
    /// hundred waiters is woken in parallel by the waiters themselves, in
    /// short system calls, instead of in one long one (which, with a
    /// non-preemptible kernel, also keeps a CPU from the writer). Nothing is
    /// lost: futex wake-ups are FIFO among threads of equal priority, so while
    /// a sleeper of batch `g` remains on the word, every wake-up on it removes
    /// a sleeper of `g` (sleepers of a later batch on the same word queued
    /// after them), and each one woken continues the chain. (With real-time
    /// callers a higher-priority sleeper of a later batch could take a slot;
    /// a sleeper of `g` left behind is then woken by the chain of the next
    /// batch on the same word, which exists since that sleeper does.)
    fn wait(&self, seq: u64, generation: u64) -> Result<()> {
        let word = &self.done_word[(generation % WORDS as u64) as usize];
        let mut slept = false;
        loop {
            let v = word.load(Ordering::Acquire);
            if self.done_gen.load(Ordering::Acquire) >= generation {
                if slept {
                    futex::wake(word, WAKE_FANOUT);
                }
                return self.result_of(seq);
            }
            if self.poisoned.load(Ordering::Acquire) {
                let cause = self.state.lock().poisoned.clone().unwrap_or_default();
                return Err(StorageError::Poisoned { cause });
            }
            futex::wait(word, v);
            slept = true;
        }
    }

    /// The outcome of a finished operation: `Ok` unless the store rejected it.
    fn result_of(&self, seq: u64) -> Result<()> {
        if self.pending_failures.load(Ordering::Acquire) == 0 {
            return Ok(());
        }
        let mut st = self.state.lock();
        match st.failed.remove(&seq) {
            Some(msg) => {
                self.pending_failures.fetch_sub(1, Ordering::Relaxed);
                Err(StorageError::InvalidArgument(msg))
            }
            None => Ok(()),
        }
    }
}
