//! When to snapshot and how much log to keep: a pure policy for the driver.
//!
//! The core never snapshots on its own. The driver asks a [`CompactionPolicy`] after applying
//! entries; when it says so, the application snapshots its state machine at the applied index,
//! then calls [`crate::Raft::snapshot_taken`] with that index and the policy's `compact_to`:
//!
//! ```
//! use raftkv_raft::{CompactionPolicy, LogIndex};
//!
//! let policy = CompactionPolicy { snapshot_every_entries: 100, keep_entries_behind: 20, ..Default::default() };
//! // 150 entries applied since the snapshot at 50; the retained log holds 4 KiB.
//! let plan = policy.plan(LogIndex(200), LogIndex(50), 4096);
//! assert_eq!(plan, Some((LogIndex(200), LogIndex(180))));
//! // raft.snapshot_taken(index, compact_to) once the state machine snapshot at 200 is durable.
//! ```

use crate::types::LogIndex;

/// When to take a snapshot and what to compact. Plain data with pure methods.
///
/// A snapshot is due when either threshold is reached (a threshold of 0 is off). Compaction
/// then keeps `keep_entries_behind` entries before the snapshot index, so a follower lagging
/// by fewer entries is caught up from the log rather than sent a whole snapshot.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct CompactionPolicy {
    /// Snapshot once this many entries were applied since the last snapshot (0: never by
    /// count).
    pub snapshot_every_entries: u64,
    /// Snapshot once the retained log holds this many bytes, as counted by
    /// [`crate::Entry::size_bytes`] (0: never by size).
    pub snapshot_every_log_bytes: u64,
    /// Entries kept in the log behind a new snapshot's index.
    pub keep_entries_behind: u64,
}

impl Default for CompactionPolicy {
    /// Every 10,000 entries or 64 MiB of log, keeping 1,000 entries behind the snapshot.
    fn default() -> CompactionPolicy {
        CompactionPolicy {
            snapshot_every_entries: 10_000,
            snapshot_every_log_bytes: 64 << 20,
            keep_entries_behind: 1_000,
        }
    }
}

impl CompactionPolicy {
    /// A policy that never snapshots.
    pub const NEVER: CompactionPolicy =
        CompactionPolicy { snapshot_every_entries: 0, snapshot_every_log_bytes: 0, keep_entries_behind: 0 };

    /// Whether to snapshot now, given the applied index, the index of the latest snapshot
    /// (0 for none) and the bytes of the retained log.
    pub fn should_snapshot(&self, applied: LogIndex, last_snapshot: LogIndex, log_bytes: u64) -> bool {
        if applied <= last_snapshot {
            return false;
        }
        let by_count =
            self.snapshot_every_entries > 0 && applied.0 - last_snapshot.0 >= self.snapshot_every_entries;
        let by_size = self.snapshot_every_log_bytes > 0 && log_bytes >= self.snapshot_every_log_bytes;
        by_count || by_size
    }

    /// The index to compact the log to after a snapshot at `snapshot_index`: everything up to
    /// it is discarded, keeping `keep_entries_behind` entries before the snapshot index.
    pub fn compact_to(&self, snapshot_index: LogIndex) -> LogIndex {
        LogIndex(snapshot_index.0.saturating_sub(self.keep_entries_behind))
    }

    /// `Some((snapshot_index, compact_to))` when a snapshot is due: snapshot at `applied`.
    pub fn plan(
        &self,
        applied: LogIndex,
        last_snapshot: LogIndex,
        log_bytes: u64,
    ) -> Option<(LogIndex, LogIndex)> {
        self.should_snapshot(applied, last_snapshot, log_bytes).then(|| (applied, self.compact_to(applied)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(entries: u64, bytes: u64, keep: u64) -> CompactionPolicy {
        CompactionPolicy {
            snapshot_every_entries: entries,
            snapshot_every_log_bytes: bytes,
            keep_entries_behind: keep,
        }
    }

    #[test]
    fn snapshots_by_entry_count() {
        let p = policy(100, 0, 0);
        assert!(!p.should_snapshot(LogIndex(99), LogIndex(0), u64::MAX));
        assert!(p.should_snapshot(LogIndex(100), LogIndex(0), 0));
        assert!(!p.should_snapshot(LogIndex(150), LogIndex(100), 0));
        assert!(p.should_snapshot(LogIndex(200), LogIndex(100), 0));
    }

    #[test]
    fn snapshots_by_log_bytes() {
        let p = policy(0, 1000, 0);
        assert!(!p.should_snapshot(LogIndex(5), LogIndex(0), 999));
        assert!(p.should_snapshot(LogIndex(5), LogIndex(0), 1000));
        // Nothing new applied since the last snapshot: nothing to gain.
        assert!(!p.should_snapshot(LogIndex(5), LogIndex(5), 1 << 30));
    }

    #[test]
    fn either_threshold_triggers_and_zero_disables() {
        let p = policy(10, 100, 0);
        assert!(p.should_snapshot(LogIndex(10), LogIndex(0), 0));
        assert!(p.should_snapshot(LogIndex(1), LogIndex(0), 100));
        assert!(!CompactionPolicy::NEVER.should_snapshot(LogIndex(1_000_000), LogIndex(0), u64::MAX));
    }

    #[test]
    fn compaction_keeps_a_tail() {
        let p = policy(10, 0, 30);
        assert_eq!(p.compact_to(LogIndex(100)), LogIndex(70));
        assert_eq!(p.compact_to(LogIndex(20)), LogIndex(0), "never below the start of the log");
        assert_eq!(policy(10, 0, 0).compact_to(LogIndex(100)), LogIndex(100));
        assert_eq!(p.plan(LogIndex(100), LogIndex(50), 0), Some((LogIndex(100), LogIndex(70))));
        assert_eq!(p.plan(LogIndex(55), LogIndex(50), 0), None);
    }

    #[test]
    fn default_keeps_a_tail_for_lagging_followers() {
        let p = CompactionPolicy::default();
        assert!(p.keep_entries_behind > 0);
        assert!(p.keep_entries_behind < p.snapshot_every_entries);
        let (index, compact_to) = p.plan(LogIndex(10_000), LogIndex(0), 0).expect("due");
        assert_eq!(index.0 - compact_to.0, p.keep_entries_behind);
    }
}
