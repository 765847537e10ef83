//! The replicated lease table: grant, attach through puts, detach through re-puts and
//! deletes, revoke deleting the keys at one revision, checkpoints, compaction, and the
//! table's export/import for snapshots.
#![allow(clippy::unwrap_used)]

mod common;

use common::*;
use raftkv_api::Command;
use raftkv_api::etcdserverpb::compare::{CompareResult as R, CompareTarget as T, TargetUnion as U};
use raftkv_api::etcdserverpb::*;
use raftkv_api::raftkvpb::{LeaseCheckpoint, LeaseCheckpointRequest};
use raftkv_api::tonic::Code;
use raftkv_kv::*;

fn grant(s: &mut KvStore, id: i64, ttl: i64) -> Result<LeaseGrantResponse, KvError> {
    match s.apply(Command::lease_grant(1, LeaseGrantRequest { id, ttl }))? {
        ApplyResult::LeaseGrant(r) => Ok(r),
        other => panic!("{other:?}"),
    }
}

fn revoke(s: &mut KvStore, id: i64) -> Result<LeaseRevokeResponse, KvError> {
    match s.apply(Command::lease_revoke(1, LeaseRevokeRequest { id }))? {
        ApplyResult::LeaseRevoke(r) => Ok(r),
        other => panic!("{other:?}"),
    }
}

fn lease_of(s: &KvStore, k: &str) -> Option<i64> {
    get(s, range_req(k, "")).kvs.first().map(|kv| kv.lease)
}

fn leased_put(s: &mut KvStore, k: &str, v: &str, lease: i64) -> Result<PutResponse, KvError> {
    s.put(PutRequest { lease, ..put_req(k, v) })
}

#[test]
fn grant_errors_match_etcd() {
    let mut s = KvStore::new();
    let r = grant(&mut s, 5, 60).unwrap();
    assert_eq!((r.id, r.ttl, rev(&r.header)), (5, 60, 1));
    let e = grant(&mut s, 5, 60).unwrap_err();
    assert_eq!((e.message(), e.grpc_code()), ("etcdserver: lease already exists", Code::FailedPrecondition));
    let e = grant(&mut s, 6, MAX_LEASE_TTL + 1).unwrap_err();
    assert_eq!((e.message(), e.grpc_code()), ("etcdserver: too large lease TTL", Code::OutOfRange));
    let e = revoke(&mut s, 77).unwrap_err();
    assert_eq!((e.message(), e.grpc_code()), ("etcdserver: requested lease not found", Code::NotFound));
    let e = leased_put(&mut s, "k", "v", 77).unwrap_err();
    assert_eq!(e, KvError::LeaseNotFound);
    assert_eq!(s.revision(), 1, "failed commands change nothing");
}

#[test]
fn puts_attach_and_detach_and_revoke_deletes_at_one_revision() {
    let mut s = KvStore::new();
    grant(&mut s, 1, 60).unwrap();
    grant(&mut s, 2, 60).unwrap();
    leased_put(&mut s, "a", "1", 1).unwrap(); // rev 2
    leased_put(&mut s, "b", "1", 1).unwrap(); // rev 3
    leased_put(&mut s, "c", "1", 2).unwrap(); // rev 4
    put(&mut s, "d", "1"); // rev 5
    assert_eq!(lease_of(&s, "a"), Some(1));
    assert_eq!(lease_of(&s, "d"), Some(0));
    // ignore_lease keeps the lease; a plain re-put detaches; a put moves it.
    s.put(PutRequest { ignore_lease: true, ..put_req("a", "2") }).unwrap(); // rev 6
    assert_eq!(lease_of(&s, "a"), Some(1));
    put(&mut s, "b", "2"); // rev 7
    assert_eq!(lease_of(&s, "b"), Some(0));
    leased_put(&mut s, "d", "2", 2).unwrap(); // rev 8
    // A past version reports the lease it was written with.
    let old = get(&s, RangeRequest { revision: 3, ..range_req("b", "") });
    assert_eq!(old.kvs[0].lease, 1);
    // prev_kv carries the lease; compare on LEASE sees it.
    let p = s.put(PutRequest { prev_kv: true, lease: 2, ..put_req("a", "3") }).unwrap(); // rev 9
    assert_eq!(p.prev_kv.unwrap().lease, 1);
    let t = TxnRequest {
        compare: vec![cmp("a", T::Lease, R::Equal, U::Lease(2))],
        success: vec![op_get("a", "")],
        ..Default::default()
    };
    assert!(txn(&mut s, &t).unwrap().succeeded);
    let keys1: Vec<_> = s.leases().get(1).unwrap().keys.iter().map(|k| k.to_vec()).collect();
    assert!(keys1.is_empty(), "{keys1:?}");
    let keys2: Vec<_> = s.leases().get(2).unwrap().keys.iter().map(|k| k.to_vec()).collect();
    assert_eq!(keys2, vec![b"a".to_vec(), b"c".to_vec(), b"d".to_vec()]);
    // Deleting a key detaches it.
    del(&mut s, "d", ""); // rev 10
    assert_eq!(s.leases().get(2).unwrap().keys.len(), 2);
    // Revoking lease 2 deletes a and c, both at revision 11.
    let r = revoke(&mut s, 2).unwrap();
    assert_eq!(rev(&r.header), 11);
    assert_eq!(s.revision(), 11);
    assert!(get(&s, range_req("a", "")).kvs.is_empty());
    assert!(get(&s, range_req("c", "")).kvs.is_empty());
    let at10 = get(&s, RangeRequest { revision: 10, ..range_req("a", "z") });
    assert_eq!(keys(&at10), vec!["a", "b", "c"]);
    // Revoking a lease without keys changes no revision.
    let r = revoke(&mut s, 1).unwrap();
    assert_eq!((rev(&r.header), s.revision()), (11, 11));
    assert!(s.leases().is_empty());
    // A put naming the revoked lease now fails.
    assert_eq!(leased_put(&mut s, "x", "1", 2).unwrap_err(), KvError::LeaseNotFound);
    // Txn puts are checked too.
    let t = TxnRequest {
        success: vec![RequestOp {
            request: Some(request_op::Request::RequestPut(PutRequest { lease: 2, ..put_req("x", "1") })),
        }],
        ..Default::default()
    };
    assert_eq!(txn(&mut s, &t).unwrap_err(), KvError::LeaseNotFound);
}

#[test]
fn checkpoints_record_remaining_ttl_and_skip_unknown_leases() {
    let mut s = KvStore::new();
    grant(&mut s, 1, 600).unwrap();
    let cp = LeaseCheckpointRequest {
        checkpoints: vec![
            LeaseCheckpoint { id: 1, remaining_ttl: 300 },
            LeaseCheckpoint { id: 9, remaining_ttl: 5 },
        ],
    };
    let r = s.apply(Command::lease_checkpoint(1, cp)).unwrap();
    assert_eq!(r.revision(), 1);
    assert_eq!(s.leases().get(1).map(|l| l.remaining_ttl), Some(300));
    assert!(s.leases().get(9).is_none());
}

#[test]
fn export_import_round_trip_and_compaction_forgets_versions() {
    let mut s = KvStore::new();
    grant(&mut s, 1, 60).unwrap();
    grant(&mut s, 2, 90).unwrap();
    leased_put(&mut s, "a", "1", 1).unwrap(); // rev 2
    leased_put(&mut s, "a", "2", 2).unwrap(); // rev 3
    leased_put(&mut s, "b", "1", 2).unwrap(); // rev 4
    let (leases, attached) = s.leases().export();
    assert_eq!(leases, vec![(1, 60, 0), (2, 90, 0)]);
    assert_eq!(attached, vec![(2, 0, 1), (3, 0, 2), (4, 0, 2)]);

    let mut buf = Vec::new();
    s.snapshot(&mut buf).unwrap();
    let mut t = KvStore::restore(&mut buf.as_slice()).unwrap();
    t.import_leases(&leases, &attached).unwrap();
    assert_eq!(lease_of(&t, "a"), Some(2));
    assert_eq!(t.leases().get(2).unwrap().keys.len(), 2);
    assert_eq!(t.leases().get(1).unwrap().keys.len(), 0);
    assert_eq!(get(&t, RangeRequest { revision: 2, ..range_req("a", "") }).kvs[0].lease, 1);
    // A lease table that names a missing lease is refused.
    let mut u = KvStore::restore(&mut buf.as_slice()).unwrap();
    assert!(u.import_leases(&leases[..1], &attached).is_err());
    assert!(u.import_leases(&[(0, 5, 0)], &[]).is_err());

    // Compaction drops the lease records of the versions it discards.
    s.compact(&CompactionRequest { revision: 4, physical: false }).unwrap();
    assert_eq!(s.leases().export().1, vec![(3, 0, 2), (4, 0, 2)]);
}

#[test]
fn a_snapshot_after_a_revoke_restores_with_the_history_leases() {
    let mut s = KvStore::new();
    grant(&mut s, 1, 60).unwrap();
    leased_put(&mut s, "a", "1", 1).unwrap(); // rev 2
    revoke(&mut s, 1).unwrap(); // rev 3 deletes "a"
    let (leases, attached) = s.leases().export();
    let mut buf = Vec::new();
    s.snapshot(&mut buf).unwrap();
    let mut t = KvStore::restore(&mut buf.as_slice()).unwrap();
    t.import_leases(&leases, &attached).unwrap();
    // The old version still reports the lease it was written with, as etcd's history does.
    assert_eq!(get(&s, RangeRequest { revision: 2, ..range_req("a", "") }).kvs[0].lease, 1);
    assert_eq!(get(&t, RangeRequest { revision: 2, ..range_req("a", "") }).kvs[0].lease, 1);
}
