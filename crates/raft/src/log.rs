//! The in-memory Raft log of one node and its bookkeeping of what is durable and applied.
//!
//! ```text
//!   compacted   |<------------------ entries ------------------>|
//!   ..snapshot_index | first_index ... applied <= applying <= commit,persisted <= last_index
//!                                     handed_out: handed to the driver for persisting
//! ```
//! Invariants (asserted): `applied <= applying <= min(commit, persisted)` for entries handed
//! out, `commit <= last_index`, `persisted <= handed_out <= last_index`, and a committed
//! entry is never truncated.

use std::collections::VecDeque;

use crate::types::{Entry, LogIndex, SnapshotMeta, Term};

#[derive(Clone, Debug)]
pub struct RaftLog {
    /// Index and term of the last entry discarded by compaction (0 for none).
    snapshot_index: LogIndex,
    snapshot_term: Term,
    /// `entries[k].index == snapshot_index + 1 + k`.
    entries: VecDeque<Entry>,
    /// Entries up to here were handed to the driver to persist.
    handed_out: LogIndex,
    /// Entries up to here are durable on this node (acknowledged by the driver).
    persisted: LogIndex,
    commit: LogIndex,
    /// Committed entries up to here were handed to the application.
    applying: LogIndex,
    /// The application reported it applied up to here.
    applied: LogIndex,
}

impl RaftLog {
    /// A log restored from durable state: everything given is already persisted.
    pub fn restore(snapshot: Option<&SnapshotMeta>, entries: Vec<Entry>, commit: LogIndex) -> RaftLog {
        let (snapshot_index, snapshot_term) = snapshot.map_or((LogIndex(0), Term(0)), |s| (s.index, s.term));
        let last = entries.last().map_or(snapshot_index, |e| e.index);
        let commit = commit.max(snapshot_index).min(last);
        RaftLog {
            snapshot_index,
            snapshot_term,
            entries: entries.into(),
            handed_out: last,
            persisted: last,
            commit,
            applying: snapshot_index,
            applied: snapshot_index,
        }
    }

    pub fn first_index(&self) -> LogIndex {
        self.snapshot_index + 1
    }

    pub fn last_index(&self) -> LogIndex {
        self.snapshot_index + self.entries.len() as u64
    }

    pub fn last_term(&self) -> Term {
        self.entries.back().map_or(self.snapshot_term, |e| e.term)
    }

    pub fn commit(&self) -> LogIndex {
        self.commit
    }

    pub fn persisted(&self) -> LogIndex {
        self.persisted
    }

    pub fn applied(&self) -> LogIndex {
        self.applied
    }

    /// The term of the entry at `index`; `None` when it was compacted away or does not exist.
    pub fn term(&self, index: LogIndex) -> Option<Term> {
        if index == self.snapshot_index {
            return Some(self.snapshot_term);
        }
        self.entry(index).map(|e| e.term)
    }

    pub fn entry(&self, index: LogIndex) -> Option<&Entry> {
        if index <= self.snapshot_index {
            return None;
        }
        self.entries.get((index.0 - self.snapshot_index.0 - 1) as usize)
    }

    pub fn matches(&self, index: LogIndex, term: Term) -> bool {
        self.term(index) == Some(term)
    }

    /// §5.4.1: whether a log ending at (`last_term`, `last_index`) is at least as up to date
    /// as this one.
    pub fn is_up_to_date(&self, last_index: LogIndex, last_term: Term) -> bool {
        last_term > self.last_term() || (last_term == self.last_term() && last_index >= self.last_index())
    }

    /// Entries in `[lo, hi]`, at most `bytes_max` payload bytes but at least one.
    pub fn slice(&self, lo: LogIndex, hi: LogIndex, bytes_max: u64) -> Vec<Entry> {
        let mut out = Vec::new();
        let mut bytes = 0;
        let mut index = lo;
        while index <= hi {
            let Some(entry) = self.entry(index) else { break };
            bytes += entry.size_bytes();
            if !out.is_empty() && bytes > bytes_max {
                break;
            }
            out.push(entry.clone());
            index = index + 1;
        }
        out
    }

    /// Iterates over the entries in `(after, upto]`.
    pub fn iter_range(&self, after: LogIndex, upto: LogIndex) -> impl DoubleEndedIterator<Item = &Entry> {
        let skip = after.0.saturating_sub(self.snapshot_index.0) as usize;
        let take = upto.0.saturating_sub(after.0.max(self.snapshot_index.0)) as usize;
        self.entries.iter().skip(skip).take(take)
    }

    /// The first index of the term of the entry at `index`, scanning back no further than the
    /// first retained entry.
    pub fn first_index_of_term_at(&self, index: LogIndex) -> LogIndex {
        let Some(term) = self.term(index) else { return index };
        let mut first = index;
        while first > self.first_index() && self.term(first - 1) == Some(term) {
            first = first - 1;
        }
        first
    }

    /// The last index holding an entry of `term`, if this log has any.
    pub fn last_index_of_term(&self, term: Term) -> Option<LogIndex> {
        // Terms are non-decreasing along the log, so scan from the back and stop early.
        for entry in self.entries.iter().rev() {
            if entry.term == term {
                return Some(entry.index);
            }
            if entry.term < term {
                return None;
            }
        }
        (self.snapshot_term == term && self.snapshot_index.0 > 0).then_some(self.snapshot_index)
    }

    /// Appends entries that follow the last one (leader path).
    pub fn append(&mut self, entry: Entry) {
        assert_eq!(entry.index, self.last_index() + 1, "log append must be contiguous");
        assert!(entry.term >= self.last_term(), "terms along the log never decrease");
        self.entries.push_back(entry);
    }

    /// Follower path of AppendEntries once the consistency check passed: skips entries that
    /// already match, truncates from the first conflicting one (never a committed entry),
    /// appends the rest. Returns the index of the last entry the message proved matching.
    pub fn merge(&mut self, entries: Vec<Entry>, truncate_matching_prefix: bool) -> LogIndex {
        let mut last_new = LogIndex(0);
        let mut conflict_found = truncate_matching_prefix;
        for entry in entries {
            last_new = entry.index;
            if entry.index <= self.snapshot_index {
                continue; // Compacted and therefore committed: matches by Log Matching.
            }
            if !conflict_found {
                match self.term(entry.index) {
                    Some(term) if term == entry.term => continue,
                    Some(_) => {
                        conflict_found = true;
                        self.truncate_from(entry.index);
                    }
                    None => conflict_found = true,
                }
            } else if entry.index <= self.last_index() {
                self.truncate_from(entry.index);
            }
            self.append(entry);
        }
        last_new
    }

    fn truncate_from(&mut self, index: LogIndex) {
        assert!(index > self.commit, "attempt to truncate committed entry {index} (commit {})", self.commit);
        let keep = (index.0 - self.snapshot_index.0 - 1) as usize;
        self.entries.truncate(keep);
        let last = self.last_index();
        self.handed_out = self.handed_out.min(last);
        self.persisted = self.persisted.min(last);
    }

    pub fn commit_to(&mut self, index: LogIndex) -> bool {
        if index <= self.commit {
            return false;
        }
        assert!(index <= self.last_index(), "commit {index} beyond last index {}", self.last_index());
        self.commit = index;
        true
    }

    /// Entries not yet handed out for persisting; marks them handed out.
    pub fn take_unpersisted(&mut self) -> Vec<Entry> {
        let out: Vec<Entry> = self.iter_range(self.handed_out, self.last_index()).cloned().collect();
        self.handed_out = self.last_index();
        out
    }

    pub fn has_unpersisted(&self) -> bool {
        self.handed_out < self.last_index()
    }

    /// The driver reports that everything up to `(index, term)` is durable. Ignored when that
    /// entry was since replaced (a stale acknowledgement).
    pub fn persisted_to(&mut self, index: LogIndex, term: Term) -> bool {
        if index > self.persisted && index <= self.handed_out && self.matches(index, term) {
            self.persisted = index;
            return true;
        }
        false
    }

    /// Committed, durable entries not yet handed to the application; marks them handed out.
    pub fn take_committed(&mut self, bytes_max: u64) -> Vec<Entry> {
        let upto = self.commit.min(self.persisted);
        if upto <= self.applying {
            return Vec::new();
        }
        let out = self.slice(self.applying + 1, upto, bytes_max);
        if let Some(last) = out.last() {
            self.applying = last.index;
        }
        out
    }

    pub fn has_committed_to_apply(&self) -> bool {
        self.commit.min(self.persisted) > self.applying
    }

    pub fn applied_to(&mut self, index: LogIndex) {
        assert!(
            index <= self.applying,
            "applied {index} beyond what was handed out for applying ({})",
            self.applying
        );
        if index > self.applied {
            self.applied = index;
        }
    }

    /// Replaces the whole log by a snapshot received from the leader (§7).
    pub fn install_snapshot(&mut self, meta: &SnapshotMeta) {
        assert!(meta.index > self.commit, "a snapshot must not move commit backwards");
        self.entries.clear();
        self.snapshot_index = meta.index;
        self.snapshot_term = meta.term;
        self.commit = meta.index;
        self.handed_out = meta.index;
        self.persisted = self.persisted.min(meta.index);
        self.applying = meta.index;
    }

    /// Discards entries up to `index`, which must be applied and durable.
    pub fn compact(&mut self, index: LogIndex) -> Result<(), String> {
        if index <= self.snapshot_index {
            return Ok(());
        }
        if index > self.applied || index > self.persisted {
            return Err(format!(
                "cannot compact to {index}: applied {} persisted {}",
                self.applied, self.persisted
            ));
        }
        let Some(term) = self.term(index) else {
            return Err(format!("cannot compact to {index}: no such entry"));
        };
        let drop = (index.0 - self.snapshot_index.0) as usize;
        self.entries.drain(..drop);
        self.snapshot_index = index;
        self.snapshot_term = term;
        Ok(())
    }

    pub fn check_invariants(&self) {
        assert!(self.applied <= self.applying, "applied > applying");
        assert!(self.applying <= self.commit, "applying > commit");
        assert!(self.commit <= self.last_index(), "commit > last index");
        assert!(self.persisted <= self.handed_out, "persisted > handed out");
        assert!(self.handed_out <= self.last_index(), "handed out > last index");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use proptest::prelude::*;

    use crate::types::EntryKind;

    fn entry(index: u64, term: u64) -> Entry {
        Entry { term: Term(term), index: LogIndex(index), kind: EntryKind::Normal, data: Bytes::new() }
    }

    fn log_of(terms: &[u64]) -> RaftLog {
        let entries = terms.iter().enumerate().map(|(i, t)| entry(i as u64 + 1, *t)).collect();
        RaftLog::restore(None, entries, LogIndex(0))
    }

    fn terms(log: &RaftLog) -> Vec<u64> {
        log.entries.iter().map(|e| e.term.0).collect()
    }

    #[test]
    fn merge_skips_matching_prefix_and_truncates_conflict() {
        let mut log = log_of(&[1, 1, 2, 2, 2]);
        log.merge(vec![entry(2, 1), entry(3, 2)], false);
        assert_eq!(terms(&log), vec![1, 1, 2, 2, 2], "a matching prefix must stay");
        log.merge(vec![entry(3, 2), entry(4, 3)], false);
        assert_eq!(terms(&log), vec![1, 1, 2, 3]);
    }

    #[test]
    #[should_panic(expected = "truncate committed")]
    fn truncating_committed_entry_panics() {
        let mut log = log_of(&[1, 1, 2]);
        log.commit_to(LogIndex(3));
        log.merge(vec![entry(3, 3)], false);
    }

    #[test]
    fn persisted_ack_for_replaced_entry_is_ignored() {
        let mut log = log_of(&[1]);
        log.append(entry(2, 1));
        log.append(entry(3, 1));
        assert_eq!(log.take_unpersisted().len(), 2);
        log.merge(vec![entry(3, 2)], false);
        assert!(!log.persisted_to(LogIndex(3), Term(1)));
        assert_eq!(log.take_unpersisted(), vec![entry(3, 2)]);
        assert!(log.persisted_to(LogIndex(3), Term(2)));
    }

    proptest! {
        /// Log splicing against a Vec model: after merging a leader's suffix the log equals
        /// the model's result.
        #[test]
        fn merge_matches_vec_model(
            base in proptest::collection::vec(1u64..4, 0..12),
            start in 1usize..12,
            incoming in proptest::collection::vec(0u64..3, 0..8),
        ) {
            let mut base_sorted = base.clone();
            base_sorted.sort();
            let start = start.min(base_sorted.len() + 1);
            // Incoming terms are non-decreasing and at least the base term just before start.
            let floor = if start >= 2 { base_sorted[start - 2] } else { 1 };
            let mut t = floor;
            let inc: Vec<Entry> = incoming.iter().enumerate().map(|(k, d)| { t += d; entry((start + k) as u64, t) }).collect();
            let mut log = log_of(&base_sorted);
            log.merge(inc.clone(), false);
            // Model.
            let mut model: Vec<u64> = base_sorted.clone();
            for e in &inc {
                let pos = e.index.0 as usize - 1;
                if pos < model.len() {
                    if model[pos] != e.term.0 { model.truncate(pos); model.push(e.term.0); }
                } else {
                    model.push(e.term.0);
                }
            }
            prop_assert_eq!(terms(&log), model);
        }
    }
}
