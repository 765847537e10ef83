//! A hook for metrics: the process may register one function that is told how many read
//! barriers each ReadIndex request serves (the server feeds
//! `raftkv_read_index_batch_size` with it). Unset, nothing is called; it never changes
//! what the driver does.

use std::sync::OnceLock;

static READ_BATCH: OnceLock<fn(usize)> = OnceLock::new();

/// Registers `f`, called with the number of reads batched behind each read index asked
/// for. Only the first registration in a process takes effect.
pub fn set_read_batch_observer(f: fn(usize)) {
    let _ = READ_BATCH.set(f);
}

pub(crate) fn read_batch(n: usize) {
    if let Some(f) = READ_BATCH.get() {
        f(n);
    }
}
