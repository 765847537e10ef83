//! The replicated lease table: which leases exist, their granted TTL, the remaining TTL
//! of the last checkpoint, and which keys each lease holds.
//!
//! Like the rest of the store it is deterministic and has no clock: when a lease expires
//! is decided by the leader's lessor (in the server), which then proposes a
//! [`raftkv_api::Request::LeaseRevoke`] through the log. Every member applies that revoke
//! at the same log position and deletes the same keys at the same revision.
//!
//! The lease of every version written with one is kept by the version's revision
//! `(main, sub)` (unique per write), outside the per-version record, so a store without
//! leases pays nothing per version.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::ops::Bound;

use bytes::Bytes;
use raftkv_api::etcdserverpb::{
    DeleteRangeRequest, LeaseGrantRequest, LeaseGrantResponse, LeaseRevokeRequest, LeaseRevokeResponse,
};
use raftkv_api::raftkvpb::LeaseCheckpointRequest;

use crate::KvError;
use crate::store::{ApplyResult, Key, KvStore, WriteCtx, header};

/// etcd's largest lease TTL in seconds (`lease.MaxLeaseTTL`).
pub const MAX_LEASE_TTL: i64 = 9_000_000_000;

/// One lease as replicated: no expiry time (that lives only on the leader).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Lease {
    pub id: i64,
    /// Granted TTL in seconds.
    pub ttl: i64,
    /// Seconds left at the last checkpoint (0: none since the last grant or renewal).
    pub remaining_ttl: i64,
    /// The keys whose newest version is attached to this lease.
    pub keys: BTreeSet<Key>,
}

/// A lease as exported into (and imported from) a snapshot: `(id, ttl, remaining_ttl)`.
pub type LeaseRecord = (i64, i64, i64);
/// A version written with a lease: `(main, sub, lease)`.
pub type AttachedRecord = (i64, u32, i64);

/// The lease table of a [`crate::KvStore`].
#[derive(Clone, Debug, Default)]
pub struct LeaseTable {
    leases: BTreeMap<i64, Lease>,
    /// The lease of each version written with one, by its revision `(main, sub)`.
    attached: HashMap<(i64, u32), i64>,
}

impl LeaseTable {
    pub fn get(&self, id: i64) -> Option<&Lease> {
        self.leases.get(&id)
    }

    pub fn contains(&self, id: i64) -> bool {
        self.leases.contains_key(&id)
    }

    pub fn len(&self) -> usize {
        self.leases.len()
    }

    pub fn is_empty(&self) -> bool {
        self.leases.is_empty()
    }

    /// All leases in ID order.
    pub fn iter(&self) -> impl Iterator<Item = &Lease> {
        self.leases.values()
    }

    /// The lease of the version written at `(main, sub)` (0: none).
    #[inline]
    pub(crate) fn lease_of(&self, main: i64, sub: u32) -> i64 {
        if self.attached.is_empty() {
            return 0;
        }
        self.attached.get(&(main, sub)).copied().unwrap_or(0)
    }

    /// Creates a lease, as etcd's lessor does on apply (the minimum TTL was applied by
    /// the proposer, so every member grants the same TTL whatever its configuration).
    pub(crate) fn grant(&mut self, id: i64, ttl: i64) -> Result<&Lease, KvError> {
        if id == 0 {
            return Err(KvError::LeaseNotFound);
        }
        if ttl > MAX_LEASE_TTL {
            return Err(KvError::LeaseTtlTooLarge);
        }
        if self.leases.contains_key(&id) {
            return Err(KvError::LeaseExists);
        }
        Ok(self.leases.entry(id).or_insert(Lease { id, ttl, remaining_ttl: 0, keys: BTreeSet::new() }))
    }

    /// Removes a lease; its keys are the caller's to delete.
    pub(crate) fn remove(&mut self, id: i64) -> Option<Lease> {
        self.leases.remove(&id)
    }

    /// Records a checkpoint of a lease's remaining TTL (unknown leases are skipped, as
    /// etcd does: the lease may have been revoked meanwhile).
    pub(crate) fn checkpoint(&mut self, id: i64, remaining_ttl: i64) {
        if let Some(l) = self.leases.get_mut(&id) {
            l.remaining_ttl = remaining_ttl.max(0);
        }
    }

    /// The version of `key` written at `(main, sub)` holds `lease` (non-zero, existing).
    pub(crate) fn attach(&mut self, lease: i64, key: &[u8], main: i64, sub: u32) {
        if let Some(l) = self.leases.get_mut(&lease) {
            if !l.keys.contains(key) {
                l.keys.insert(Key::from_slice(key));
            }
            self.attached.insert((main, sub), lease);
        }
    }

    /// `key`'s newest version no longer holds `lease`.
    pub(crate) fn detach(&mut self, lease: i64, key: &[u8]) {
        if let Some(l) = self.leases.get_mut(&lease) {
            l.keys.remove(key);
        }
    }

    /// Forgets the lease of a version that compaction discarded.
    pub(crate) fn forget_version(&mut self, main: i64, sub: u32) {
        if !self.attached.is_empty() {
            self.attached.remove(&(main, sub));
        }
    }

    /// Whether any version holds a lease.
    pub(crate) fn has_attached(&self) -> bool {
        !self.attached.is_empty()
    }

    /// The table for a snapshot: leases in ID order, attached versions in revision order.
    pub fn export(&self) -> (Vec<LeaseRecord>, Vec<AttachedRecord>) {
        let leases = self.leases.values().map(|l| (l.id, l.ttl, l.remaining_ttl)).collect();
        let mut attached: Vec<AttachedRecord> =
            self.attached.iter().map(|(&(main, sub), &lease)| (main, sub, lease)).collect();
        attached.sort_unstable();
        (leases, attached)
    }
}

impl KvStore {
    /// Applies a grant (normally reached through [`KvStore::apply`]).
    pub fn lease_grant(&mut self, req: &LeaseGrantRequest) -> Result<LeaseGrantResponse, KvError> {
        let ttl = self.leases.grant(req.id, req.ttl)?.ttl;
        Ok(LeaseGrantResponse { header: header(self.rev), id: req.id, ttl, error: String::new() })
    }

    /// Applies a revoke: deletes the lease's keys (in key order, all at one new revision,
    /// through the ordinary delete path) and removes the lease. A lease without keys
    /// changes no revision.
    pub fn lease_revoke(&mut self, req: &LeaseRevokeRequest) -> Result<LeaseRevokeResponse, KvError> {
        let lease = self.leases.remove(req.id).ok_or(KvError::LeaseNotFound)?;
        let mut ctx = WriteCtx { begin: self.rev, changes: 0 };
        for key in &lease.keys {
            let del = DeleteRangeRequest { key: Bytes::copy_from_slice(key), ..Default::default() };
            self.do_delete(&mut ctx, &del);
        }
        let rev = self.commit(&ctx);
        Ok(LeaseRevokeResponse { header: header(rev) })
    }

    /// Applies a checkpoint of remaining TTLs.
    pub fn lease_checkpoint(&mut self, req: &LeaseCheckpointRequest) -> ApplyResult {
        for c in &req.checkpoints {
            self.leases.checkpoint(c.id, c.remaining_ttl);
        }
        ApplyResult::LeaseCheckpoint { revision: self.rev }
    }

    /// Installs a lease table exported with [`LeaseTable::export`] from a snapshot of
    /// this store's state, and rebuilds each lease's keys from the newest versions.
    pub fn import_leases(
        &mut self,
        leases: &[LeaseRecord],
        attached: &[AttachedRecord],
    ) -> Result<(), KvError> {
        let mut table = LeaseTable::default();
        for &(id, ttl, remaining) in leases {
            table.grant(id, ttl).map_err(|e| KvError::corrupt(format!("lease {id}: {e}")))?;
            table.checkpoint(id, remaining);
        }
        // Older versions may name a lease revoked since (their history keeps it, as etcd's
        // does); only a key's live newest version must hold an existing lease.
        for &(main, sub, lease) in attached {
            if main < 1 || main > self.rev {
                return Err(KvError::corrupt(format!("a leased version at revision {main} of {}", self.rev)));
            }
            table.attached.insert((main, sub), lease);
        }
        for (key, h) in self.map.range((Bound::Unbounded, Bound::Unbounded)) {
            if let Some(r) = h.revs.last().filter(|r| r.version != 0) {
                let lease = table.lease_of(r.main, r.sub);
                if lease == 0 {
                    continue;
                }
                let Some(l) = table.leases.get_mut(&lease) else {
                    return Err(KvError::corrupt(format!("a key holds lease {lease}, which does not exist")));
                };
                l.keys.insert(Key::from_slice(key));
            }
        }
        self.leases = table;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grant_rules_and_attach() {
        let mut t = LeaseTable::default();
        assert_eq!(t.grant(0, 5).err(), Some(KvError::LeaseNotFound));
        assert_eq!(t.grant(1, MAX_LEASE_TTL + 1).err(), Some(KvError::LeaseTtlTooLarge));
        assert!(t.grant(1, MAX_LEASE_TTL).is_ok());
        assert_eq!(t.grant(1, 5).err(), Some(KvError::LeaseExists));
        t.attach(1, b"k", 2, 0);
        t.attach(7, b"x", 3, 0); // unknown lease: nothing recorded
        assert_eq!(t.lease_of(2, 0), 1);
        assert_eq!(t.lease_of(3, 0), 0);
        assert_eq!(t.get(1).map(|l| l.keys.len()), Some(1));
        t.checkpoint(1, 30);
        t.checkpoint(9, 30);
        assert_eq!(t.get(1).map(|l| l.remaining_ttl), Some(30));
        t.detach(1, b"k");
        assert_eq!(t.get(1).map(|l| l.keys.len()), Some(0));
        assert_eq!(t.export(), (vec![(1, MAX_LEASE_TTL, 30)], vec![(2, 0, 1)]));
        t.forget_version(2, 0);
        assert!(!t.has_attached());
    }
}
