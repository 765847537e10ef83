//! The space quota (`--quota-backend-bytes`), as etcd's.
//!
//! raftkv's "backend size" is [`raftkv_kv::KvStore::size_bytes`]: the bytes of the keys,
//! the newest values and the per-key and per-version records held in memory, plus every
//! byte appended to the history store (the values of superseded versions), including the
//! values compaction discarded until a defragmentation drops them. It is the figure
//! `etcd_mvcc_db_total_size_in_bytes` and Maintenance.Status's `dbSize` report; the part
//! still referenced is `dbSizeInUse`. Like etcd's bbolt file, it grows with writes, does not
//! shrink on compaction alone, and shrinks on defragmentation.
//!
//! A write (Put, a Txn with a put, LeaseGrant) that would take the size to the quota or past
//! it is refused with `etcdserver: mvcc: database space exceeded` and the member raises a
//! NOSPACE alarm through the log; from then on every member refuses those writes when
//! applying them ([`crate::member::alarm`]) until the alarm is cleared (`etcdctl alarm disarm`),
//! whatever the size. Reads, deletes and compactions go on.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use raftkv_api::Request;
use raftkv_api::etcdserverpb::alarm_request::AlarmAction;
use raftkv_api::etcdserverpb::request_op::Request as Op;
use raftkv_api::etcdserverpb::{AlarmRequest, AlarmType, PutRequest, RequestOp};
use raftkv_kv::{KEY_COST, REV_COST};

/// etcd's default quota: 2 GiB.
pub const DEFAULT_QUOTA_BYTES: u64 = 2 << 30;
/// Above this, etcd warns that the quota may exceed what the storage handles well.
pub const LARGE_QUOTA_BYTES: u64 = 8 << 30;
/// What a lease grant counts (etcd's lease overhead).
const LEASE_COST: u64 = 64;

/// The quota in force: `None` when disabled.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct QuotaBytes(pub Option<u64>);

impl QuotaBytes {
    /// From the flag, as etcd reads it: unset or 0 is the default (2 GiB), a negative
    /// value disables the quota.
    pub fn from_flag(flag: Option<i64>) -> QuotaBytes {
        match flag {
            None | Some(0) => QuotaBytes(Some(DEFAULT_QUOTA_BYTES)),
            Some(n) if n < 0 => QuotaBytes(None),
            Some(n) => QuotaBytes(Some(n.unsigned_abs())),
        }
    }

    /// The figure of `etcd_server_quota_backend_bytes` (0 when disabled).
    pub fn gauge(self) -> i64 {
        self.0.map_or(0, |b| i64::try_from(b).unwrap_or(i64::MAX))
    }
}

fn put_cost(p: &PutRequest) -> u64 {
    p.key.len() as u64 + p.value.len() as u64 + KEY_COST + REV_COST
}

fn ops_cost(ops: &[RequestOp]) -> u64 {
    ops.iter()
        .map(|op| match &op.request {
            Some(Op::RequestPut(p)) => put_cost(p),
            Some(Op::RequestTxn(t)) => ops_cost(&t.success) + ops_cost(&t.failure),
            _ => 0,
        })
        .sum()
}

/// What a command can add to the backend size at most (0: it cannot add anything and the
/// quota does not apply).
pub fn cost(request: &Request) -> u64 {
    match request {
        Request::Put(p) => put_cost(p),
        Request::Txn(t) => ops_cost(&t.success) + ops_cost(&t.failure),
        Request::LeaseGrant(_) => LEASE_COST,
        _ => 0,
    }
}

/// A member's quota check.
#[derive(Clone, Debug)]
pub struct Quota {
    pub bytes: QuotaBytes,
    /// A NOSPACE alarm proposal of this member is under way (one at a time).
    raising: Arc<AtomicBool>,
}

impl Quota {
    pub fn new(bytes: QuotaBytes) -> Quota {
        Quota { bytes, raising: Arc::new(AtomicBool::new(false)) }
    }

    /// Whether a command of `cost` bytes fits when the store holds `size` bytes (etcd:
    /// `size + cost < quota`).
    pub fn fits(&self, size: u64, cost: u64) -> bool {
        match self.bytes.0 {
            None => true,
            Some(_) if cost == 0 => true,
            Some(limit) => size.saturating_add(cost) < limit,
        }
    }

    /// Claims the right to propose this member's NOSPACE alarm; `false` if a proposal is
    /// already under way. Release with [`Quota::raised`].
    pub fn start_raising(&self) -> bool {
        !self.raising.swap(true, Ordering::AcqRel)
    }

    pub fn raised(&self) {
        self.raising.store(false, Ordering::Release);
    }
}

impl crate::api::service::Api {
    /// Refuses a command that can add `cost` bytes when it does not fit the quota, and then
    /// raises this member's NOSPACE alarm through the log (once; it stays until disarmed).
    pub(crate) fn check_quota(&self, cost: u64) -> Result<(), tonic::Status> {
        if cost == 0 || self.quota.bytes.0.is_none() {
            return Ok(());
        }
        // Fits by the size after the last applied entry: no need to queue for the lock.
        if self.quota.fits(self.published.size_bytes(), cost) {
            return Ok(());
        }
        let me = self.member_id();
        let (size, raised) = {
            let sm = self.node.shared.sm.read();
            (sm.kv.size_bytes(), sm.alarms.has_for(me, AlarmType::Nospace))
        };
        if self.quota.fits(size, cost) {
            return Ok(());
        }
        if !raised && self.quota.start_raising() {
            let api = self.clone();
            tokio::spawn(async move {
                tracing::warn!(size, quota = ?api.quota.bytes.0, "the store passed --quota-backend-bytes; raising a NOSPACE alarm");
                let req = AlarmRequest {
                    action: AlarmAction::Activate as i32,
                    member_id: me,
                    alarm: AlarmType::Nospace as i32,
                };
                if let Err(e) = api.alarm(req).await {
                    tracing::warn!(error = %e, "cannot raise the NOSPACE alarm; the next refused write retries");
                }
                api.quota.raised();
            });
        }
        Err(crate::member::alarm::no_space())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use raftkv_api::etcdserverpb::{DeleteRangeRequest, LeaseGrantRequest, TxnRequest};

    #[test]
    fn flag_values_and_costs() {
        assert_eq!(QuotaBytes::from_flag(None).0, Some(DEFAULT_QUOTA_BYTES));
        assert_eq!(QuotaBytes::from_flag(Some(0)).0, Some(DEFAULT_QUOTA_BYTES));
        assert_eq!(QuotaBytes::from_flag(Some(-1)).0, None);
        assert_eq!(QuotaBytes::from_flag(Some(1000)).0, Some(1000));
        let put = PutRequest { key: "ab".into(), value: "cde".into(), ..Default::default() };
        assert_eq!(cost(&Request::Put(put.clone())), 5 + KEY_COST + REV_COST);
        let op = RequestOp { request: Some(Op::RequestPut(put)) };
        let inner = TxnRequest { failure: vec![op.clone()], ..Default::default() };
        let txn = TxnRequest {
            success: vec![op, RequestOp { request: Some(Op::RequestTxn(inner)) }],
            ..Default::default()
        };
        assert_eq!(cost(&Request::Txn(txn)), 2 * (5 + KEY_COST + REV_COST));
        assert_eq!(cost(&Request::LeaseGrant(LeaseGrantRequest::default())), LEASE_COST);
        assert_eq!(cost(&Request::DeleteRange(DeleteRangeRequest::default())), 0);
        let q = Quota::new(QuotaBytes(Some(100)));
        assert!(q.fits(10, 89) && !q.fits(10, 90) && q.fits(1000, 0));
        assert!(Quota::new(QuotaBytes(None)).fits(u64::MAX, u64::MAX));
        assert!(q.start_raising() && !q.start_raising());
        q.raised();
        assert!(q.start_raising());
    }
}
