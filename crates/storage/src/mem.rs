//! The in-memory model of the log store.

use std::collections::VecDeque;
use std::sync::Arc;

use parking_lot::Mutex;

use crate::error::Result;
use crate::log::slice_entries;
use crate::{HardState, LogRecord, LogRecovered, LogStore};

#[derive(Debug, Clone, Default)]
struct MemState {
    entries: VecDeque<LogRecord>,
    last: u64,
    hs: HardState,
}

impl MemState {
    fn first(&self) -> u64 {
        self.entries.front().map_or(self.last + 1, |e| e.index)
    }
}

/// The "disk" of a [`MemLogStore`]: the state as of the last `sync`.
/// Reopening a `MemLogStore` on it models a restart after a crash that lost
/// everything unsynced.
#[derive(Debug, Clone, Default)]
pub struct MemDisk(Arc<Mutex<MemState>>);

/// In-memory [`LogStore`]: the reference model of the durability contract.
#[derive(Debug, Default)]
pub struct MemLogStore {
    disk: MemDisk,
    cur: MemState,
    max_record_size: u32,
}

impl MemLogStore {
    /// A new, empty store with its own disk.
    pub fn new() -> Self {
        MemLogStore {
            disk: MemDisk::default(),
            cur: MemState::default(),
            max_record_size: crate::LogOptions::default().max_record_size,
        }
    }

    /// Reopen on `disk`, as after a crash.
    pub fn open(disk: MemDisk) -> (MemLogStore, LogRecovered) {
        let cur = {
            let mut durable = disk.0.lock();
            // As the file store: the clamp is durable at once.
            durable.hs.commit = durable.hs.commit.min(durable.last);
            durable.clone()
        };
        let rec = LogRecovered {
            hard_state: cur.hs,
            first_index: cur.first(),
            last_index: cur.last,
            records: cur.entries.iter().cloned().collect(),
        };
        (MemLogStore { disk, cur, max_record_size: crate::LogOptions::default().max_record_size }, rec)
    }

    /// Handle to this store's disk.
    pub fn disk(&self) -> MemDisk {
        self.disk.clone()
    }
}

impl LogStore for MemLogStore {
    fn append(&mut self, records: &[LogRecord]) -> Result<()> {
        crate::validate_append(records, self.cur.first(), self.cur.last, self.max_record_size)?;
        let Some(first) = records.first() else {
            return Ok(());
        };
        while self.cur.entries.back().is_some_and(|e| e.index >= first.index) {
            self.cur.entries.pop_back();
        }
        self.cur.entries.extend(records.iter().cloned());
        self.cur.last = first.index + records.len() as u64 - 1;
        Ok(())
    }

    fn save_hard_state(&mut self, hs: HardState) -> Result<()> {
        self.cur.hs = hs;
        Ok(())
    }

    fn sync(&mut self) -> Result<()> {
        *self.disk.0.lock() = self.cur.clone();
        Ok(())
    }

    fn compact(&mut self, up_to: u64) -> Result<()> {
        if up_to > self.cur.last {
            self.cur.entries.clear();
            self.cur.last = up_to;
            self.sync()?;
        } else {
            while self.cur.entries.front().is_some_and(|e| e.index <= up_to) {
                self.cur.entries.pop_front();
            }
        }
        Ok(())
    }

    fn reset(&mut self, index: u64) -> Result<()> {
        self.cur.entries.clear();
        self.cur.last = index;
        self.sync()
    }

    fn first_index(&self) -> u64 {
        self.cur.first()
    }

    fn last_index(&self) -> u64 {
        self.cur.last
    }

    fn term(&self, index: u64) -> Option<u64> {
        let first = self.cur.entries.front()?.index;
        if index < first || index > self.cur.last {
            return None;
        }
        self.cur.entries.get((index - first) as usize).map(|e| e.term)
    }

    fn entries(&self, lo: u64, hi: u64) -> Result<Vec<LogRecord>> {
        slice_entries(&self.cur.entries, self.cur.last, lo, hi)
    }

    fn hard_state(&self) -> HardState {
        self.cur.hs
    }
}
