//! Stateless request checks, in the same order and with the same errors as
//! etcd's gRPC layer. The server may call them before proposing a request
//! (to fail fast); [`crate::KvStore`] runs them again when applying, so a
//! command that bypassed them is still rejected deterministically.

use std::collections::BTreeSet;

use raftkv_api::etcdserverpb::request_op::Request as Op;
use raftkv_api::etcdserverpb::{DeleteRangeRequest, PutRequest, RangeRequest, RequestOp, TxnRequest};

use crate::KvError;

/// Checks a range request: the key must be non-empty.
pub fn validate_range(r: &RangeRequest) -> Result<(), KvError> {
    if r.key.is_empty() {
        return Err(KvError::EmptyKey);
    }
    Ok(())
}

/// Checks a put request: non-empty key; no value with `ignore_value`; no lease
/// with `ignore_lease`.
pub fn validate_put(r: &PutRequest) -> Result<(), KvError> {
    if r.key.is_empty() {
        return Err(KvError::EmptyKey);
    }
    if r.ignore_value && !r.value.is_empty() {
        return Err(KvError::ValueProvided);
    }
    if r.ignore_lease && r.lease != 0 {
        return Err(KvError::LeaseProvided);
    }
    Ok(())
}

/// Checks a delete-range request: the key must be non-empty.
pub fn validate_delete_range(r: &DeleteRangeRequest) -> Result<(), KvError> {
    if r.key.is_empty() {
        return Err(KvError::EmptyKey);
    }
    Ok(())
}

/// Checks a transaction: operation count (at most `max_txn_ops` compares or
/// operations per branch; nested transactions get the remaining budget),
/// non-empty keys, no empty operations, and no key written twice (a put and
/// another put, or a put and a delete covering the key, anywhere in the same
/// branch including nested transactions).
pub fn validate_txn(r: &TxnRequest, max_txn_ops: usize) -> Result<(), KvError> {
    let max = i64::try_from(max_txn_ops).unwrap_or(i64::MAX);
    check_txn(r, max)?;
    check_intervals(&r.success)?;
    check_intervals(&r.failure)?;
    Ok(())
}

fn check_txn(r: &TxnRequest, max_ops: i64) -> Result<(), KvError> {
    let opc = r.compare.len().max(r.success.len()).max(r.failure.len());
    let opc = i64::try_from(opc).unwrap_or(i64::MAX);
    if opc > max_ops {
        return Err(KvError::TooManyOps);
    }
    if r.compare.iter().any(|c| c.key.is_empty()) {
        return Err(KvError::EmptyKey);
    }
    for op in r.success.iter().chain(r.failure.iter()) {
        check_op(op, max_ops - opc)?;
    }
    Ok(())
}

fn check_op(op: &RequestOp, max_ops: i64) -> Result<(), KvError> {
    match &op.request {
        Some(Op::RequestRange(r)) => validate_range(r),
        Some(Op::RequestPut(r)) => validate_put(r),
        Some(Op::RequestDeleteRange(r)) => validate_delete_range(r),
        Some(Op::RequestTxn(r)) => check_txn(r, max_ops),
        // An empty operation is reported as etcd does.
        None => Err(KvError::KeyNotFound),
    }
}

/// A deleted interval as the duplicate check sees it: a single key when
/// `range_end` is empty, else `[key, range_end)` with an empty end meaning
/// unbounded. As in etcd 3.4, the "from key" marker `\0` is taken literally
/// here, so a from-key delete never conflicts with a put.
#[derive(Clone, Copy)]
struct Interval<'a> {
    key: &'a [u8],
    end: &'a [u8],
    point: bool,
}

impl Interval<'_> {
    fn contains(&self, k: &[u8]) -> bool {
        if self.point {
            return self.key == k;
        }
        self.key <= k && k < self.end
    }
}

fn intersects(dels: &[Interval<'_>], k: &[u8]) -> bool {
    dels.iter().any(|d| d.contains(k))
}

type PutsDels<'a> = (BTreeSet<&'a [u8]>, Vec<Interval<'a>>);

fn check_intervals(reqs: &[RequestOp]) -> Result<PutsDels<'_>, KvError> {
    let mut dels: Vec<Interval<'_>> = Vec::new();
    for req in reqs {
        if let Some(Op::RequestDeleteRange(d)) = &req.request {
            dels.push(Interval { key: &d.key, end: &d.range_end, point: d.range_end.is_empty() });
        }
    }
    let mut puts: BTreeSet<&[u8]> = BTreeSet::new();
    for req in reqs {
        let Some(Op::RequestTxn(t)) = &req.request else { continue };
        let (puts_then, dels_then) = check_intervals(&t.success)?;
        let (puts_else, dels_else) = check_intervals(&t.failure)?;
        for k in &puts_then {
            if puts.contains(k) || intersects(&dels, k) {
                return Err(KvError::DuplicateKey);
            }
            puts.insert(k);
        }
        for k in &puts_else {
            // The two branches are exclusive: the same key in both is fine.
            if (puts.contains(k) && !puts_then.contains(k)) || intersects(&dels, k) {
                return Err(KvError::DuplicateKey);
            }
            puts.insert(k);
        }
        dels.extend(dels_then);
        dels.extend(dels_else);
    }
    for req in reqs {
        let Some(Op::RequestPut(p)) = &req.request else { continue };
        let k: &[u8] = &p.key;
        if puts.contains(k) || intersects(&dels, k) {
            return Err(KvError::DuplicateKey);
        }
        puts.insert(k);
    }
    Ok((puts, dels))
}

/// True when every operation of both branches is a range (etcd's rule for
/// serving a transaction without going through the log). A nested
/// transaction makes it not read-only.
pub fn is_txn_read_only(r: &TxnRequest) -> bool {
    r.success.iter().chain(r.failure.iter()).all(|op| matches!(op.request, Some(Op::RequestRange(_))))
}
