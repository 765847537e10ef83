//! A hook for metrics: the process may register one function that is told how long each
//! fsync of the write-ahead log took (the server feeds `etcd_disk_wal_fsync_duration_seconds`
//! with it). Unset, nothing is called.

use std::sync::OnceLock;
use std::time::Duration;

static FSYNC: OnceLock<fn(Duration)> = OnceLock::new();

/// Registers `f` to be called after every fsync of a log segment, with its duration. Only
/// the first registration in a process takes effect.
pub fn set_fsync_observer(f: fn(Duration)) {
    let _ = FSYNC.set(f);
}

pub(crate) fn fsync_done(took: Duration) {
    if let Some(f) = FSYNC.get() {
        f(took);
    }
}
