//! Unit tests per operation. Cases marked "etcd 3.4" reproduce behaviour
//! recorded from a real etcd 3.4.23 with `etcdctl -w json`.
#![allow(clippy::unwrap_used)]

mod common;

use bytes::Bytes;
use common::*;
use raftkv_api::etcdserverpb::compare::{CompareResult as R, CompareTarget as T, TargetUnion as U};
use raftkv_api::etcdserverpb::range_request::{SortOrder, SortTarget};
use raftkv_api::etcdserverpb::response_op::Response as OpResp;
use raftkv_api::etcdserverpb::*;
use raftkv_api::tonic::Code;
use raftkv_kv::*;

fn range_resp(r: &ResponseOp) -> &RangeResponse {
    match &r.response {
        Some(OpResp::ResponseRange(rr)) => rr,
        other => panic!("not a range response: {other:?}"),
    }
}

/// put a 1; put b 2; put c 3; put a 11; del b; put b 22 (revision 7).
fn etcd_fixture() -> KvStore {
    let mut s = KvStore::new();
    put(&mut s, "a", "1");
    put(&mut s, "b", "2");
    put(&mut s, "c", "3");
    put(&mut s, "a", "11");
    assert_eq!(del(&mut s, "b", "").deleted, 1);
    put(&mut s, "b", "22");
    assert_eq!(s.revision(), 7);
    s
}

#[test]
fn empty_store_is_revision_1() {
    let s = KvStore::new();
    assert_eq!(s.revision(), 1);
    let r = get(&s, range_req("foo", ""));
    assert_eq!(rev(&r.header), 1);
    assert!(r.kvs.is_empty());
    assert_eq!(r.count, 0);
}

#[test]
fn put_creates_and_updates() {
    let mut s = KvStore::new();
    let r = put(&mut s, "k", "v1");
    assert_eq!(rev(&r.header), 2);
    assert!(r.prev_kv.is_none());
    let r = s.put(PutRequest { prev_kv: true, ..put_req("k", "v2") }).unwrap();
    assert_eq!(rev(&r.header), 3);
    let p = r.prev_kv.unwrap();
    assert_eq!((p.value.as_ref(), p.create_revision, p.mod_revision, p.version), (&b"v1"[..], 2, 2, 1));
    let g = get(&s, range_req("k", ""));
    let kv = &g.kvs[0];
    assert_eq!(
        (kv.value.as_ref(), kv.create_revision, kv.mod_revision, kv.version, kv.lease),
        (&b"v2"[..], 2, 3, 2, 0)
    );
    assert_eq!(g.count, 1);
}

#[test]
fn etcd_fixture_full_range() {
    // etcd 3.4: get "" --from-key at revision 7.
    let s = etcd_fixture();
    let r = get(&s, range_req("\0", "\0"));
    assert_eq!(rev(&r.header), 7);
    assert_eq!(keys(&r), ["a", "b", "c"]);
    let got: Vec<_> = r.kvs.iter().map(|k| (k.create_revision, k.mod_revision, k.version)).collect();
    assert_eq!(got, [(2, 5, 2), (7, 7, 1), (4, 4, 1)]);
    assert_eq!(r.count, 3);
    assert!(!r.more);
}

#[test]
fn delete_writes_tombstone_and_resets_version() {
    let mut s = KvStore::new();
    put(&mut s, "k", "1");
    put(&mut s, "k", "2");
    let d = s.delete_range(&DeleteRangeRequest { prev_kv: true, ..del_req("k", "") }).unwrap();
    assert_eq!((d.deleted, rev(&d.header)), (1, 4));
    assert_eq!(d.prev_kvs[0].value.as_ref(), b"2");
    assert!(get(&s, range_req("k", "")).kvs.is_empty());
    put(&mut s, "k", "3");
    let kv = get(&s, range_req("k", "")).kvs[0].clone();
    assert_eq!((kv.create_revision, kv.mod_revision, kv.version), (5, 5, 1));
    // History is still readable.
    let old = get(&s, RangeRequest { revision: 3, ..range_req("k", "") });
    assert_eq!(old.kvs[0].value.as_ref(), b"2");
    assert_eq!(rev(&old.header), 5);
    assert!(get(&s, RangeRequest { revision: 4, ..range_req("k", "") }).kvs.is_empty());
    assert!(get(&s, RangeRequest { revision: 1, ..range_req("k", "") }).kvs.is_empty());
}

#[test]
fn delete_of_nothing_keeps_revision() {
    // etcd 3.4: `del nothing` returns the unchanged revision, deleted 0.
    let mut s = etcd_fixture();
    let d = del(&mut s, "nothing", "");
    assert_eq!((d.deleted, rev(&d.header)), (0, 7));
    assert_eq!(s.revision(), 7);
}

#[test]
fn delete_range_counts() {
    let mut s = KvStore::new();
    for k in ["a", "b", "c", "d"] {
        put(&mut s, k, "x");
    }
    let d = del(&mut s, "b", "d");
    assert_eq!((d.deleted, rev(&d.header)), (2, 6));
    assert_eq!(keys(&get(&s, range_req("a", "\0"))), ["a", "d"]);
    let d = del(&mut s, "\0", "\0");
    assert_eq!((d.deleted, rev(&d.header)), (2, 7));
    assert_eq!(s.live_keys(), 0);
}

#[test]
fn range_kinds() {
    let mut s = KvStore::new();
    for k in ["a", "ab", "abc", "b", "c"] {
        put(&mut s, k, "v");
    }
    assert_eq!(keys(&get(&s, range_req("ab", ""))), ["ab"]);
    assert_eq!(keys(&get(&s, range_req("a", "b"))), ["a", "ab", "abc"]); // prefix "a"
    assert_eq!(keys(&get(&s, range_req("ab", "ac"))), ["ab", "abc"]);
    assert_eq!(keys(&get(&s, range_req("abc", "\0"))), ["abc", "b", "c"]);
    assert_eq!(keys(&get(&s, range_req("\0", "\0"))), ["a", "ab", "abc", "b", "c"]);
    assert!(get(&s, range_req("c", "a")).kvs.is_empty());
    assert!(get(&s, range_req("b", "b")).kvs.is_empty());
    assert_eq!(s.range(&range_req("", "")), Err(KvError::EmptyKey));
}

#[test]
fn limit_count_more() {
    // etcd 3.4: get "" --from-key --limit=2 -> 2 kvs, more, count 3;
    // get a --prefix --limit 1 -> 1 kv, no more, count 1.
    let s = etcd_fixture();
    let r = get(&s, RangeRequest { limit: 2, ..range_req("\0", "\0") });
    assert_eq!(keys(&r), ["a", "b"]);
    assert!(r.more);
    assert_eq!(r.count, 3);
    let r = get(&s, RangeRequest { limit: 1, ..range_req("a", "b") });
    assert_eq!((keys(&r), r.more, r.count), (vec!["a".to_string()], false, 1));
    let r = get(&s, RangeRequest { limit: 3, ..range_req("\0", "\0") });
    assert!(!r.more);
}

#[test]
fn keys_only_and_count_only() {
    let s = etcd_fixture();
    let r = get(&s, RangeRequest { keys_only: true, ..range_req("a", "") });
    assert_eq!(r.kvs[0].value.len(), 0);
    assert_eq!(r.kvs[0].version, 2);
    let r = get(&s, RangeRequest { count_only: true, ..range_req("\0", "\0") });
    assert!(r.kvs.is_empty());
    assert_eq!((r.count, r.more), (3, false));
    let r = get(&s, RangeRequest { count_only: true, limit: 1, ..range_req("\0", "\0") });
    assert_eq!((r.count, r.more, r.kvs.len()), (3, false, 0));
}

fn sorted(s: &KvStore, order: SortOrder, target: SortTarget, k: &str, end: &str) -> Vec<String> {
    keys(&get(s, RangeRequest { sort_order: order as i32, sort_target: target as i32, ..range_req(k, end) }))
}

#[test]
fn sorting_like_etcd() {
    let s = etcd_fixture();
    // etcd 3.4: --sort-by=VERSION (order NONE) sorts ascending: b, c, a.
    assert_eq!(sorted(&s, SortOrder::None, SortTarget::Version, "\0", "\0"), ["b", "c", "a"]);
    // etcd 3.4: --sort-by=MODIFY --order=DESCEND: b, a, c.
    assert_eq!(sorted(&s, SortOrder::Descend, SortTarget::Mod, "\0", "\0"), ["b", "a", "c"]);
    assert_eq!(sorted(&s, SortOrder::Ascend, SortTarget::Create, "\0", "\0"), ["a", "c", "b"]);
    assert_eq!(sorted(&s, SortOrder::Descend, SortTarget::Key, "\0", "\0"), ["c", "b", "a"]);
    assert_eq!(sorted(&s, SortOrder::Ascend, SortTarget::Key, "\0", "\0"), ["a", "b", "c"]);
    assert_eq!(sorted(&s, SortOrder::None, SortTarget::Key, "\0", "\0"), ["a", "b", "c"]);
    // Unknown enum values: no sorting.
    assert_eq!(
        keys(&get(&s, RangeRequest { sort_order: 9, sort_target: 1, ..range_req("\0", "\0") })),
        ["a", "b", "c"]
    );
}

#[test]
fn sort_ties_keep_key_order() {
    // etcd 3.4: s1=x s2=x s3=a; VALUE DESCEND -> s1 s2 s3; VALUE -> s3 s1 s2;
    // KEY DESCEND -> s3 s2 s1.
    let mut s = KvStore::new();
    put(&mut s, "s1", "x");
    put(&mut s, "s2", "x");
    put(&mut s, "s3", "a");
    assert_eq!(sorted(&s, SortOrder::Descend, SortTarget::Value, "s", "t"), ["s1", "s2", "s3"]);
    assert_eq!(sorted(&s, SortOrder::None, SortTarget::Value, "s", "t"), ["s3", "s1", "s2"]);
    assert_eq!(sorted(&s, SortOrder::Descend, SortTarget::Key, "s", "t"), ["s3", "s2", "s1"]);
}

#[test]
fn sort_with_limit() {
    let s = etcd_fixture();
    // With an explicit order, everything is sorted, then truncated.
    let r = get(
        &s,
        RangeRequest {
            limit: 1,
            sort_order: SortOrder::Descend as i32,
            sort_target: SortTarget::Create as i32,
            ..range_req("\0", "\0")
        },
    );
    assert_eq!((keys(&r), r.more, r.count), (vec!["b".to_string()], true, 3));
    // etcd quirk: order NONE with a non-KEY target keeps the limit+1 fetch,
    // so only the first limit+1 keys (by key) are sorted.
    let r =
        get(&s, RangeRequest { limit: 1, sort_target: SortTarget::Create as i32, ..range_req("\0", "\0") });
    // Fetched a(create 2), b(create 7); sorted by create: a, b; truncated: a.
    assert_eq!((keys(&r), r.more), (vec!["a".to_string()], true));
    let r =
        get(&s, RangeRequest { limit: 1, sort_target: SortTarget::Version as i32, ..range_req("\0", "\0") });
    // Fetched a(v2), b(v1) -> b.
    assert_eq!(keys(&r), ["b"]);
}

#[test]
fn revision_filters() {
    let s = etcd_fixture();
    let all = || range_req("\0", "\0");
    assert_eq!(keys(&get(&s, RangeRequest { min_mod_revision: 5, ..all() })), ["a", "b"]);
    assert_eq!(keys(&get(&s, RangeRequest { max_mod_revision: 4, ..all() })), ["c"]);
    assert_eq!(keys(&get(&s, RangeRequest { min_create_revision: 3, ..all() })), ["b", "c"]);
    let r = get(&s, RangeRequest { max_create_revision: 4, limit: 1, ..all() });
    assert_eq!(keys(&r), ["a"]);
    assert!(r.more);
    // count is the number of keys in the range, not after filtering.
    assert_eq!(r.count, 3);
}

#[test]
fn past_revisions_and_errors() {
    let s = etcd_fixture();
    let at = |r: i64| get(&s, RangeRequest { revision: r, ..range_req("\0", "\0") });
    assert_eq!(keys(&at(1)), Vec::<String>::new());
    assert_eq!(keys(&at(4)), ["a", "b", "c"]);
    assert_eq!(keys(&at(6)), ["a", "c"]);
    assert_eq!(at(2).kvs[0].value.as_ref(), b"1");
    assert_eq!(rev(&at(2).header), 7);
    // etcd 3.4: --rev=-5 reads the latest revision.
    assert_eq!(at(-5).kvs[0].value.as_ref(), b"11");
    let e = s.range(&RangeRequest { revision: 8, ..range_req("a", "") }).unwrap_err();
    assert_eq!(e, KvError::FutureRev);
}

#[test]
fn put_flags() {
    let mut s = KvStore::new();
    // etcd 3.4: put --ignore-value nokey -> "etcdserver: key not found";
    // put --ignore-lease nokey v -> same.
    let e = s.put(PutRequest { ignore_value: true, ..put_req("nokey", "") }).unwrap_err();
    assert_eq!(e.message(), "etcdserver: key not found");
    let e = s.put(PutRequest { ignore_lease: true, ..put_req("nokey", "v") }).unwrap_err();
    assert_eq!(e, KvError::KeyNotFound);
    assert_eq!(s.put(PutRequest { ignore_value: true, ..put_req("k", "v") }), Err(KvError::ValueProvided));
    assert_eq!(
        s.put(PutRequest { ignore_lease: true, lease: 5, ..put_req("k", "v") }),
        Err(KvError::LeaseProvided)
    );
    // etcd 3.4: put --lease=1234 a v -> "etcdserver: requested lease not found".
    let e = s.put(PutRequest { lease: 1234, ..put_req("a", "v") }).unwrap_err();
    assert_eq!((e.message(), e.grpc_code()), ("etcdserver: requested lease not found", Code::NotFound));
    // etcd 3.4: put "" v -> "etcdserver: key is not provided".
    assert_eq!(s.put(put_req("", "v")), Err(KvError::EmptyKey));
    assert_eq!(s.revision(), 1);

    put(&mut s, "k", "orig");
    let r = s.put(PutRequest { ignore_value: true, prev_kv: true, ..put_req("k", "") }).unwrap();
    assert_eq!(r.prev_kv.unwrap().value.as_ref(), b"orig");
    let kv = get(&s, range_req("k", "")).kvs[0].clone();
    assert_eq!((kv.value.as_ref(), kv.version), (&b"orig"[..], 2));
    s.put(PutRequest { ignore_lease: true, ..put_req("k", "new") }).unwrap();
    assert_eq!(get(&s, range_req("k", "")).kvs[0].value.as_ref(), b"new");

    let mut s = KvStore::with_config(KvConfig { lease_policy: LeasePolicy::Ignore, ..Default::default() });
    s.put(PutRequest { lease: 1234, ..put_req("a", "v") }).unwrap();
    assert_eq!(get(&s, range_req("a", "")).kvs[0].lease, 0);
}

#[test]
fn txn_sees_own_writes() {
    // etcd 3.4: txn version("zz") = "0" then {put x 1; get x; put y 2; get ""
    // --from-key} at revision 9 -> all sub-headers at revision 10, the range
    // sees x and y at create revision 10.
    let mut s = etcd_fixture();
    put(&mut s, "q", "1");
    put(&mut s, "q", "2");
    assert_eq!(s.revision(), 9);
    let t = TxnRequest {
        compare: vec![cmp("zz", T::Version, R::Equal, U::Version(0))],
        success: vec![op_put("x", "1"), op_get("x", ""), op_put("y", "2"), op_get("\0", "\0")],
        failure: vec![],
    };
    let r = txn(&mut s, &t).unwrap();
    assert!(r.succeeded);
    assert_eq!(rev(&r.header), 10);
    for op in &r.responses {
        let h = match &op.response {
            Some(OpResp::ResponsePut(p)) => &p.header,
            Some(OpResp::ResponseRange(p)) => &p.header,
            _ => panic!(),
        };
        assert_eq!(rev(h), 10);
    }
    let x = range_resp(&r.responses[1]);
    assert_eq!((x.kvs[0].create_revision, x.kvs[0].version), (10, 1));
    let all = range_resp(&r.responses[3]);
    assert_eq!(keys(all), ["a", "b", "c", "q", "x", "y"]);
    assert_eq!(all.count, 6);
}

#[test]
fn txn_reads_before_writes_see_old_state() {
    let mut s = KvStore::new();
    put(&mut s, "a", "old");
    let t = TxnRequest {
        compare: vec![],
        success: vec![op_get("a", ""), op_put("a", "new"), op_get("a", "")],
        failure: vec![],
    };
    let r = txn(&mut s, &t).unwrap();
    assert_eq!(range_resp(&r.responses[0]).kvs[0].value.as_ref(), b"old");
    assert_eq!(rev(&range_resp(&r.responses[0]).header), 2);
    assert_eq!(range_resp(&r.responses[2]).kvs[0].value.as_ref(), b"new");
    assert_eq!(rev(&range_resp(&r.responses[2]).header), 3);
}

#[test]
fn txn_duplicate_keys() {
    // etcd 3.4: {put x 1; put x 2}, {del x; put x 2}, {put x 3; del x} are
    // all "etcdserver: duplicate key given in txn request".
    let mut s = etcd_fixture();
    for ops in [
        vec![op_put("x", "1"), op_put("x", "2")],
        vec![op_del("x", ""), op_put("x", "2")],
        vec![op_put("x", "3"), op_del("x", "")],
        vec![op_del("a", "z"), op_put("x", "3")],
        vec![op_put("x", "1"), op_txn(TxnRequest { success: vec![op_put("x", "2")], ..Default::default() })],
        vec![op_txn(TxnRequest { failure: vec![op_del("x", "")], ..Default::default() }), op_put("x", "1")],
    ] {
        let e = txn(&mut s, &TxnRequest { success: ops, ..Default::default() }).unwrap_err();
        assert_eq!(e.message(), "etcdserver: duplicate key given in txn request");
        assert_eq!(e.grpc_code(), Code::InvalidArgument);
    }
    // The same key in the two branches of a nested txn is fine.
    let nested =
        TxnRequest { success: vec![op_put("x", "1")], failure: vec![op_put("x", "2")], ..Default::default() };
    txn(&mut s, &TxnRequest { success: vec![op_txn(nested)], ..Default::default() }).unwrap();
    // The same key in the outer success and failure branches is fine too.
    txn(
        &mut s,
        &TxnRequest {
            success: vec![op_put("y", "1")],
            failure: vec![op_put("y", "2")],
            ..Default::default()
        },
    )
    .unwrap();
    assert_eq!(s.revision(), 9);
}

#[test]
fn txn_double_delete() {
    // etcd 3.4: {del x; del x; get x} at revision 10 with x present ->
    // deleted 1, then deleted 0, all headers at revision 11.
    let mut s = KvStore::new();
    put(&mut s, "x", "1");
    let r = txn(
        &mut s,
        &TxnRequest {
            success: vec![op_del("x", ""), op_del("x", ""), op_get("x", "")],
            ..Default::default()
        },
    )
    .unwrap();
    assert_eq!(rev(&r.header), 3);
    let d: Vec<_> = r.responses[..2]
        .iter()
        .map(|o| match &o.response {
            Some(OpResp::ResponseDeleteRange(d)) => (d.deleted, rev(&d.header)),
            _ => panic!(),
        })
        .collect();
    assert_eq!(d, [(1, 3), (0, 3)]);
    assert!(range_resp(&r.responses[2]).kvs.is_empty());
    // A txn that changes nothing does not create a revision.
    let r = txn(
        &mut s,
        &TxnRequest { success: vec![op_del("nothing", ""), op_get("x", "")], ..Default::default() },
    )
    .unwrap();
    assert_eq!(rev(&r.header), 3);
    assert_eq!(s.revision(), 3);
}

#[test]
fn txn_compare_missing_key_value() {
    // etcd 3.4: value("nokey") = "" and value("nokey") != "a" both take the
    // failure branch.
    let mut s = KvStore::new();
    for c in [
        cmp("nokey", T::Value, R::Equal, U::Value(Bytes::new())),
        cmp("nokey", T::Value, R::NotEqual, U::Value(b("a"))),
    ] {
        let r = txn(
            &mut s,
            &TxnRequest {
                compare: vec![c],
                success: vec![op_put("q", "1")],
                failure: vec![op_put("q", "2")],
            },
        )
        .unwrap();
        assert!(!r.succeeded);
    }
    assert_eq!(get(&s, range_req("q", "")).kvs[0].value.as_ref(), b"2");
    // Other targets compare a missing key as zero.
    for c in [
        cmp("nokey", T::Version, R::Equal, U::Version(0)),
        cmp("nokey", T::Create, R::Less, U::CreateRevision(1)),
        cmp("nokey", T::Mod, R::Equal, U::ModRevision(0)),
        cmp("nokey", T::Lease, R::Equal, U::Lease(0)),
    ] {
        assert!(txn(&mut s, &TxnRequest { compare: vec![c], ..Default::default() }).unwrap().succeeded);
    }
}

#[test]
fn txn_compare_results_and_targets() {
    let mut s = KvStore::new();
    put(&mut s, "a", "m"); // rev 2
    put(&mut s, "a", "n"); // rev 3, version 2
    let check = |s: &mut KvStore, c: Compare| {
        txn(s, &TxnRequest { compare: vec![c], ..Default::default() }).unwrap().succeeded
    };
    assert!(check(&mut s, cmp("a", T::Value, R::Equal, U::Value(b("n")))));
    assert!(check(&mut s, cmp("a", T::Value, R::Greater, U::Value(b("m")))));
    assert!(check(&mut s, cmp("a", T::Value, R::Less, U::Value(b("o")))));
    assert!(check(&mut s, cmp("a", T::Value, R::NotEqual, U::Value(b("m")))));
    assert!(check(&mut s, cmp("a", T::Version, R::Equal, U::Version(2))));
    assert!(check(&mut s, cmp("a", T::Create, R::Equal, U::CreateRevision(2))));
    assert!(check(&mut s, cmp("a", T::Mod, R::Greater, U::ModRevision(2))));
    assert!(!check(&mut s, cmp("a", T::Mod, R::Less, U::ModRevision(3))));
    assert!(check(&mut s, cmp("a", T::Lease, R::Equal, U::Lease(0))));
    // A union of another kind compares against zero.
    assert!(check(&mut s, cmp("a", T::Version, R::Greater, U::ModRevision(100))));
}

#[test]
fn txn_compare_over_range() {
    let mut s = KvStore::new();
    put(&mut s, "k1", "v");
    put(&mut s, "k2", "v");
    put(&mut s, "k3", "w");
    let mut c = cmp("k", T::Value, R::Equal, U::Value(b("v")));
    c.range_end = b("l");
    assert!(!txn(&mut s, &TxnRequest { compare: vec![c.clone()], ..Default::default() }).unwrap().succeeded);
    c.range_end = b("k3");
    assert!(txn(&mut s, &TxnRequest { compare: vec![c.clone()], ..Default::default() }).unwrap().succeeded);
    let mut c = cmp("k", T::Create, R::Greater, U::CreateRevision(0));
    c.range_end = b("\0");
    assert!(txn(&mut s, &TxnRequest { compare: vec![c], ..Default::default() }).unwrap().succeeded);
}

#[test]
fn nested_txn() {
    let mut s = KvStore::new();
    put(&mut s, "a", "1"); // rev 2
    // The nested compare sees the state before the txn (a = 1) even though
    // the outer txn wrote a = 2 first.
    let inner = TxnRequest {
        compare: vec![cmp("a", T::Value, R::Equal, U::Value(b("1")))],
        success: vec![op_put("b", "inner-ok"), op_get("a", "")],
        failure: vec![op_put("b", "inner-fail")],
    };
    let outer = TxnRequest { success: vec![op_put("a", "2"), op_txn(inner)], ..Default::default() };
    let r = txn(&mut s, &outer).unwrap();
    assert_eq!(rev(&r.header), 3);
    let Some(OpResp::ResponseTxn(n)) = &r.responses[1].response else { panic!() };
    assert!(n.succeeded);
    // Like etcd, the nested header has no revision.
    assert_eq!(rev(&n.header), 0);
    assert_eq!(range_resp(&n.responses[1]).kvs[0].value.as_ref(), b"2");
    assert_eq!(get(&s, range_req("b", "")).kvs[0].value.as_ref(), b"inner-ok");
    let b_kv = &get(&s, range_req("b", "")).kvs[0];
    assert_eq!(b_kv.mod_revision, 3);
}

#[test]
fn txn_too_many_ops() {
    // etcd 3.4: 129 puts -> "etcdserver: too many operations in txn request";
    // 128 gets succeed.
    let mut s = KvStore::new();
    let puts: Vec<_> = (0..129).map(|i| op_put(&format!("k{i}"), "v")).collect();
    let e = txn(&mut s, &TxnRequest { success: puts, ..Default::default() }).unwrap_err();
    assert_eq!(
        (e.message(), e.grpc_code()),
        ("etcdserver: too many operations in txn request", Code::InvalidArgument)
    );
    let gets: Vec<_> = (0..128).map(|i| op_get(&format!("k{i}"), "")).collect();
    txn(&mut s, &TxnRequest { success: gets, ..Default::default() }).unwrap();
    // Nested txns get the remaining budget.
    let mut s = KvStore::with_config(KvConfig { max_txn_ops: 4, ..Default::default() });
    let inner =
        TxnRequest { success: (0..2).map(|i| op_put(&format!("n{i}"), "v")).collect(), ..Default::default() };
    let outer =
        TxnRequest { success: vec![op_put("a", "1"), op_put("b", "1"), op_txn(inner)], ..Default::default() };
    assert_eq!(txn(&mut s, &outer), Err(KvError::TooManyOps));
}

#[test]
fn txn_validation_errors() {
    let mut s = KvStore::new();
    let e = txn(
        &mut s,
        &TxnRequest { compare: vec![cmp("", T::Version, R::Equal, U::Version(0))], ..Default::default() },
    );
    assert_eq!(e, Err(KvError::EmptyKey));
    let e = txn(&mut s, &TxnRequest { success: vec![RequestOp { request: None }], ..Default::default() });
    assert_eq!(e, Err(KvError::KeyNotFound));
    // Checks of the taken branch: ignore_value on a missing key, a range at a
    // future revision. Nothing is written.
    let e = txn(
        &mut s,
        &TxnRequest {
            success: vec![
                op_put("ok", "v"),
                RequestOp {
                    request: Some(request_op::Request::RequestPut(PutRequest {
                        ignore_value: true,
                        ..put_req("missing", "")
                    })),
                },
            ],
            ..Default::default()
        },
    );
    assert_eq!(e, Err(KvError::KeyNotFound));
    let mut g = range_req("a", "");
    g.revision = 5;
    let e = txn(
        &mut s,
        &TxnRequest {
            success: vec![
                op_put("ok", "v"),
                RequestOp { request: Some(request_op::Request::RequestRange(g.clone())) },
            ],
            ..Default::default()
        },
    );
    assert_eq!(e, Err(KvError::FutureRev));
    // Not checked on the branch that is not taken.
    txn(
        &mut s,
        &TxnRequest {
            failure: vec![RequestOp { request: Some(request_op::Request::RequestRange(g)) }],
            ..Default::default()
        },
    )
    .unwrap();
    assert_eq!(s.revision(), 1);
    assert_eq!(s.live_keys(), 0);
}

#[test]
fn txn_read_only_matches_txn() {
    let mut s = etcd_fixture();
    let t = TxnRequest {
        compare: vec![cmp("a", T::Version, R::Equal, U::Version(2))],
        success: vec![op_get("\0", "\0"), op_get("a", "")],
        failure: vec![op_get("b", "")],
    };
    assert!(is_txn_read_only(&t));
    let ro = s.txn_read_only(&t).unwrap();
    let rw = s.txn(&t).unwrap();
    assert_eq!(ro, rw);
    assert_eq!(s.revision(), 7);
    let w = TxnRequest { failure: vec![op_put("z", "1")], ..Default::default() };
    assert!(!is_txn_read_only(&w));
    assert!(s.txn_read_only(&w).is_err());
}

#[test]
fn compaction() {
    // etcd 3.4 (fixture at revision 7): compact 1 ok; compact 0 -> compacted;
    // compact 100 -> future; compact 3 ok; get a --rev=2 -> compacted;
    // --rev=3 ok; --rev=99 -> future; compact 3 again -> compacted.
    let mut s = etcd_fixture();
    let c = |s: &mut KvStore, r: i64| s.compact(&CompactionRequest { revision: r, physical: false });
    assert_eq!(rev(&c(&mut s, 1).unwrap().header), 7);
    assert_eq!(c(&mut s, 0), Err(KvError::Compacted));
    assert_eq!(c(&mut s, 100), Err(KvError::FutureRev));
    c(&mut s, 3).unwrap();
    let at = |s: &KvStore, r: i64| s.range(&RangeRequest { revision: r, ..range_req("a", "") });
    let e = at(&s, 2).unwrap_err();
    assert_eq!(
        (e.message(), e.grpc_code()),
        ("etcdserver: mvcc: required revision has been compacted", Code::OutOfRange)
    );
    let kv = at(&s, 3).unwrap().kvs[0].clone();
    assert_eq!((kv.create_revision, kv.mod_revision, kv.version), (2, 2, 1));
    let e = at(&s, 99).unwrap_err();
    assert_eq!(
        (e.message(), e.grpc_code()),
        ("etcdserver: mvcc: required revision is a future revision", Code::OutOfRange)
    );
    assert_eq!(c(&mut s, 3), Err(KvError::Compacted));
    assert_eq!(s.compact_revision(), 3);
}

#[test]
fn compaction_discards_history() {
    let mut s = KvStore::new();
    for i in 0..100 {
        put(&mut s, "hot", &i.to_string());
    }
    put(&mut s, "gone", "x");
    del(&mut s, "gone", "");
    assert_eq!(s.retained_versions(), 102);
    let now = s.revision();
    s.compact(&CompactionRequest { revision: now, physical: true }).unwrap();
    // Only the latest live version of each key survives.
    assert_eq!(s.retained_versions(), 1);
    let r = get(&s, range_req("\0", "\0"));
    assert_eq!(keys(&r), ["hot"]);
    assert_eq!(r.kvs[0].version, 100);
    // Reads at the compaction revision still work.
    assert_eq!(keys(&get(&s, RangeRequest { revision: now, ..range_req("\0", "\0") })), ["hot"]);
    // A tombstone newer than the compaction revision is kept.
    put(&mut s, "k", "1");
    let before = s.revision();
    del(&mut s, "k", "");
    s.compact(&CompactionRequest { revision: before, physical: true }).unwrap();
    assert_eq!(keys(&get(&s, RangeRequest { revision: before, ..range_req("k", "") })), ["k"]);
    assert!(get(&s, range_req("k", "")).kvs.is_empty());
}

#[test]
fn compact_fresh_store() {
    let mut s = KvStore::new();
    assert_eq!(s.compact_revision(), -1);
    // etcd 3.4 on a fresh store: compact 0 ok; compact 0 -> compacted;
    // compact 1 ok.
    s.compact(&CompactionRequest { revision: 0, physical: false }).unwrap();
    assert_eq!(s.compact(&CompactionRequest { revision: 0, physical: false }), Err(KvError::Compacted));
    s.compact(&CompactionRequest { revision: 1, physical: false }).unwrap();
    assert_eq!(s.compact(&CompactionRequest { revision: 1, physical: false }), Err(KvError::Compacted));
}

#[test]
fn commands_roundtrip_and_apply() {
    let mut s = KvStore::new();
    let cmd = Command::put(42, put_req("k", "v"));
    let (id, res) = s.apply_encoded(cmd.encode_to_bytes()).unwrap();
    assert_eq!(id, 42);
    assert!(matches!(res, ApplyResult::Put(_)));
    assert_eq!(res.revision(), 2);
    let (_, res) = s.apply_encoded(Command::range(1, range_req("k", "")).encode_to_bytes()).unwrap();
    let ApplyResult::Range(r) = res else { panic!() };
    assert_eq!(r.kvs[0].value.as_ref(), b"v");
    let (_, res) = s.apply_encoded(Command::delete_range(2, del_req("k", "")).encode_to_bytes()).unwrap();
    assert_eq!(res.revision(), 3);
    let (_, res) = s
        .apply_encoded(
            Command::txn(3, TxnRequest { success: vec![op_put("t", "1")], ..Default::default() })
                .encode_to_bytes(),
        )
        .unwrap();
    assert_eq!(res.revision(), 4);
    let (_, res) = s
        .apply_encoded(
            Command::compaction(4, CompactionRequest { revision: 4, physical: false }).encode_to_bytes(),
        )
        .unwrap();
    assert!(matches!(res, ApplyResult::Compaction(_)));
    let e = s.apply_encoded(&b"\x0a\xff"[..]).unwrap_err();
    assert_eq!(e.grpc_code(), Code::Internal);
    assert!(s.apply(Command { id: 1, request: None, auth_revision: 0 }).is_err());
    assert_eq!(s.revision(), 4);
}

#[test]
fn error_mapping() {
    let table = [
        (KvError::EmptyKey, Code::InvalidArgument, "etcdserver: key is not provided"),
        (KvError::KeyNotFound, Code::InvalidArgument, "etcdserver: key not found"),
        (KvError::ValueProvided, Code::InvalidArgument, "etcdserver: value is provided"),
        (KvError::LeaseProvided, Code::InvalidArgument, "etcdserver: lease is provided"),
        (KvError::TooManyOps, Code::InvalidArgument, "etcdserver: too many operations in txn request"),
        (KvError::DuplicateKey, Code::InvalidArgument, "etcdserver: duplicate key given in txn request"),
        (KvError::Compacted, Code::OutOfRange, "etcdserver: mvcc: required revision has been compacted"),
        (KvError::FutureRev, Code::OutOfRange, "etcdserver: mvcc: required revision is a future revision"),
        (KvError::LeaseNotFound, Code::NotFound, "etcdserver: requested lease not found"),
    ];
    for (e, code, msg) in table {
        assert_eq!((e.grpc_code(), e.message()), (code, msg));
        let st: raftkv_api::tonic::Status = e.clone().into();
        assert_eq!((st.code(), st.message()), (code, msg));
        assert_eq!(e.to_string(), msg);
    }
}

#[test]
fn validation_fns_match_store() {
    assert_eq!(validate_put(&put_req("", "v")), Err(KvError::EmptyKey));
    assert_eq!(validate_delete_range(&del_req("", "")), Err(KvError::EmptyKey));
    assert_eq!(validate_range(&range_req("", "")), Err(KvError::EmptyKey));
    let t = TxnRequest { success: vec![op_put("x", "1"), op_put("x", "2")], ..Default::default() };
    assert_eq!(validate_txn(&t, DEFAULT_MAX_TXN_OPS), Err(KvError::DuplicateKey));
    // From-key deletes are not interval-checked (as in etcd 3.4): the put and
    // the delete both apply, in order.
    let mut s = KvStore::new();
    let t = TxnRequest { success: vec![op_put("x", "1"), op_del("a", "\0")], ..Default::default() };
    s.txn(&t).unwrap();
    assert!(get(&s, range_req("x", "")).kvs.is_empty());
    assert_eq!(s.revision(), 2);
}

/// Keys on both sides of the index's inline size (24 bytes) order, read, delete and survive
/// a snapshot alike.
#[test]
fn short_and_long_keys_order_and_round_trip() {
    let mut s = KvStore::new();
    let keys: Vec<String> = [1, 23, 24, 25, 100]
        .iter()
        .flat_map(|&n| [format!("k{}", "x".repeat(n)), format!("k{}y", "x".repeat(n))])
        .collect();
    for (i, k) in keys.iter().enumerate() {
        put(&mut s, k, &i.to_string());
    }
    put(&mut s, &keys[5], "again");
    let mut sorted = keys.clone();
    sorted.sort();
    let all = get(&s, range_req("k", "l"));
    let got: Vec<String> = all.kvs.iter().map(|kv| String::from_utf8_lossy(&kv.key).into_owned()).collect();
    assert_eq!(got, sorted);
    let one = get(&s, range_req(&keys[5], ""));
    assert_eq!((one.kvs[0].key.as_ref(), one.kvs[0].value.as_ref()), (keys[5].as_bytes(), &b"again"[..]));
    let mut buf = Vec::new();
    s.snapshot(&mut buf).unwrap();
    let mut r = KvStore::restore(&mut &buf[..]).unwrap();
    assert_eq!(r.digest(), s.digest());
    assert_eq!(get(&r, range_req("k", "l")).kvs, all.kvs);
    assert_eq!(del(&mut r, &keys[8], "").deleted, 1);
    assert_eq!(get(&r, range_req("k", "l")).count, keys.len() as i64 - 1);
}

/// The digest of the state at a past revision equals the digest of a store that stopped
/// there; compacted and future revisions are refused.
#[test]
fn digest_at_a_revision_matches_the_store_as_it_was() {
    let ops: Vec<(&str, &str)> = vec![("a", "1"), ("b", "2"), ("a", "3"), ("c", "4"), ("b", "5"), ("a", "6")];
    let mut full = KvStore::new();
    for (k, v) in &ops {
        put(&mut full, k, v);
    }
    del(&mut full, "c", "");
    for upto in 0..=ops.len() {
        let mut prefix = KvStore::new();
        for (k, v) in &ops[..upto] {
            put(&mut prefix, k, v);
        }
        let at = prefix.revision();
        let point = full.pin_at(at).unwrap();
        let past = KvStore::digest_pinned(&point, |f| f(&full)).unwrap();
        full.unpin();
        assert_eq!(past, prefix.digest(), "revision {at}");
        let now = prefix.pin_at(0).unwrap();
        assert_eq!(KvStore::digest_pinned(&now, |f| f(&prefix)).unwrap(), prefix.digest());
    }
    assert_ne!(full.digest(), {
        let p = full.pin_at(full.revision() - 1).unwrap();
        let d = KvStore::digest_pinned(&p, |f| f(&full)).unwrap();
        full.unpin();
        d
    });
    assert_eq!(full.pin_at(full.revision() + 1).unwrap_err(), KvError::FutureRev);
    full.compact(&CompactionRequest { revision: 4, physical: false }).unwrap();
    assert_eq!(full.pin_at(3).unwrap_err(), KvError::Compacted);
    assert!(full.pin_at(4).is_ok());
}
