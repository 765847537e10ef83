#![allow(dead_code)]

use bytes::Bytes;
use raftkv_api::etcdserverpb::compare::{CompareResult, CompareTarget, TargetUnion};
use raftkv_api::etcdserverpb::request_op::Request as Op;
use raftkv_api::etcdserverpb::*;
use raftkv_kv::{KvError, KvStore};

pub fn b(s: &str) -> Bytes {
    Bytes::copy_from_slice(s.as_bytes())
}

pub fn put(s: &mut KvStore, k: &str, v: &str) -> PutResponse {
    s.put(put_req(k, v)).unwrap_or_else(|e| panic!("put {k}: {e}"))
}

pub fn put_req(k: &str, v: &str) -> PutRequest {
    PutRequest { key: b(k), value: b(v), ..Default::default() }
}

pub fn del(s: &mut KvStore, k: &str, end: &str) -> DeleteRangeResponse {
    s.delete_range(&del_req(k, end)).unwrap_or_else(|e| panic!("del {k}: {e}"))
}

pub fn del_req(k: &str, end: &str) -> DeleteRangeRequest {
    DeleteRangeRequest { key: b(k), range_end: b(end), ..Default::default() }
}

pub fn range_req(k: &str, end: &str) -> RangeRequest {
    RangeRequest { key: b(k), range_end: b(end), ..Default::default() }
}

pub fn get(s: &KvStore, r: RangeRequest) -> RangeResponse {
    s.range(&r).unwrap_or_else(|e| panic!("range: {e}"))
}

pub fn keys(r: &RangeResponse) -> Vec<String> {
    r.kvs.iter().map(|kv| String::from_utf8_lossy(&kv.key).into_owned()).collect()
}

pub fn rev(h: &Option<ResponseHeader>) -> i64 {
    h.as_ref().map_or(-1, |h| h.revision)
}

pub fn op_put(k: &str, v: &str) -> RequestOp {
    RequestOp { request: Some(Op::RequestPut(put_req(k, v))) }
}
pub fn op_del(k: &str, end: &str) -> RequestOp {
    RequestOp { request: Some(Op::RequestDeleteRange(del_req(k, end))) }
}
pub fn op_get(k: &str, end: &str) -> RequestOp {
    RequestOp { request: Some(Op::RequestRange(range_req(k, end))) }
}
pub fn op_txn(t: TxnRequest) -> RequestOp {
    RequestOp { request: Some(Op::RequestTxn(t)) }
}

pub fn cmp(k: &str, target: CompareTarget, result: CompareResult, tu: TargetUnion) -> Compare {
    Compare {
        result: result as i32,
        target: target as i32,
        key: b(k),
        target_union: Some(tu),
        range_end: Bytes::new(),
    }
}

pub fn txn(s: &mut KvStore, t: &TxnRequest) -> Result<TxnResponse, KvError> {
    s.txn(t)
}
