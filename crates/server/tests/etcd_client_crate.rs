//! Interop with the crates.io `etcd-client` crate (a third-party etcd v3 client) against a
//! three-member raftkv cluster, in both modes of the harness (secure: mutual TLS with the
//! crate's TLS options, auth enabled, the crate authenticating as root).

mod common;

use std::time::Duration;

use common::{Cluster, Mode, Opts, in_both_modes};
use etcd_client::{
    Client, CompactionOptions, Compare, CompareOp, DeleteOptions, GetOptions, PutOptions, SortOrder,
    SortTarget, Txn, TxnOp, TxnOpResponse,
};

const START: Duration = Duration::from_secs(20);

fn grpc_status(e: etcd_client::Error) -> tonic::Status {
    match e {
        etcd_client::Error::GRpcStatus(s) => s,
        other => panic!("expected a gRPC status, got {other:?}"),
    }
}

async fn etcd_client_crate_put_get_delete_txn_compact(mode: Mode) {
    let mut c = Cluster::start(3, Opts::in_mode(mode));
    c.wait_leader(START).await;
    let endpoints: Vec<String> = c.members.iter().map(|m| m.client_url()).collect();
    let mut client = Client::connect(&endpoints, c.access.etcd_client_options()).await.expect("connect");

    // put / get
    let r1 = client.put("crate/a", "1", None).await.expect("put").header().expect("header").revision();
    client.put("crate/b", "2", None).await.expect("put");
    let prev = client.put("crate/a", "11", Some(PutOptions::new().with_prev_key())).await.expect("put");
    let prev = prev.prev_key().expect("prev kv");
    assert_eq!((prev.key(), prev.value(), prev.mod_revision()), (&b"crate/a"[..], &b"1"[..], r1));

    let got = client.get("crate/a", None).await.expect("get");
    assert_eq!(got.kvs().len(), 1);
    let kv = &got.kvs()[0];
    assert_eq!((kv.value_str().expect("utf8"), kv.version(), kv.create_revision()), ("11", 2, r1));

    let opts = GetOptions::new().with_prefix().with_sort(SortTarget::Key, SortOrder::Descend);
    let got = client.get("crate/", Some(opts)).await.expect("get prefix");
    let keys: Vec<&str> = got.kvs().iter().map(|kv| kv.key_str().expect("utf8")).collect();
    assert_eq!(keys, ["crate/b", "crate/a"]);
    assert_eq!(got.count(), 2);

    // An older revision.
    let old = client.get("crate/a", Some(GetOptions::new().with_revision(r1))).await.expect("get at rev");
    assert_eq!(old.kvs()[0].value(), b"1");

    // txn: success and failure branches.
    let txn = Txn::new()
        .when([Compare::value("crate/a", CompareOp::Equal, "11")])
        .and_then([TxnOp::put("crate/c", "3", None), TxnOp::get("crate/b", None)])
        .or_else([TxnOp::put("crate/never", "x", None)]);
    let resp = client.txn(txn).await.expect("txn");
    assert!(resp.succeeded());
    match &resp.op_responses()[1] {
        TxnOpResponse::Get(g) => assert_eq!(g.kvs()[0].value(), b"2"),
        other => panic!("expected a get response, got {other:?}"),
    }
    let txn = Txn::new()
        .when([Compare::version("crate/a", CompareOp::Greater, 5)])
        .and_then([TxnOp::put("crate/never", "x", None)])
        .or_else([TxnOp::delete("crate/b", Some(DeleteOptions::new().with_prev_key()))]);
    let resp = client.txn(txn).await.expect("txn");
    assert!(!resp.succeeded());
    match &resp.op_responses()[0] {
        TxnOpResponse::Delete(d) => assert_eq!((d.deleted(), d.prev_kvs()[0].value()), (1, &b"2"[..])),
        other => panic!("expected a delete response, got {other:?}"),
    }
    assert!(client.get("crate/never", None).await.expect("get").kvs().is_empty());

    // delete
    let del = client.delete("crate/", Some(DeleteOptions::new().with_prefix())).await.expect("delete");
    assert_eq!(del.deleted(), 2, "crate/a and crate/c remain to delete");
    let rev = del.header().expect("header").revision();

    // compact, then reading below the compacted revision is refused like etcd does.
    client.compact(rev, Some(CompactionOptions::new().with_physical())).await.expect("compact");
    let e = client.get("crate/a", Some(GetOptions::new().with_revision(r1))).await.expect_err("compacted");
    let s = grpc_status(e);
    assert_eq!(
        (s.code(), s.message()),
        (tonic::Code::OutOfRange, "etcdserver: mvcc: required revision has been compacted")
    );
    let e = client.compact(rev - 1, None).await.expect_err("compacting again");
    assert_eq!(grpc_status(e).message(), "etcdserver: mvcc: required revision has been compacted");

    // Maintenance and cluster calls.
    let status = client.status().await.expect("status");
    assert_ne!(status.leader(), 0);
    let members = client.member_list().await.expect("member list");
    assert_eq!(members.members().len(), 3);

    // Each member directly, through its own client: all see the final state.
    for (i, ep) in endpoints.iter().enumerate() {
        let mut one = Client::connect([ep], c.access.etcd_client_options()).await.expect("connect");
        let got =
            one.get("crate/", Some(GetOptions::new().with_prefix().with_keys_only())).await.expect("get");
        let keys: Vec<&str> = got.kvs().iter().map(|kv| kv.key_str().expect("utf8")).collect();
        let expected: Vec<String> = (0..i).map(|j| format!("crate/z{j}")).collect();
        assert_eq!(keys, expected, "through {ep}");
        one.put(format!("crate/z{i}"), "z", None).await.expect("put through each member");
    }
}
// Secure mode: the client on all three endpoints authenticates with one member and sends
// its calls to any: every member accepts the token, as etcd's.
in_both_modes!(etcd_client_crate_put_get_delete_txn_compact);
