//! The space quota, alarms and defragmentation on a real 3-member cluster, with a small
//! `--quota-backend-bytes`: a writer fills the store until the quota refuses it with etcd's
//! error, the NOSPACE alarm is listed on every member, reads and deletes still work, nothing
//! acknowledged is lost, and the documented recovery (compact, defrag every member, disarm)
//! restores writes. Also the request limits on the key-value fast path and on a service
//! tonic serves.

mod common;

use std::time::Duration;

use common::{Cluster, Opts};
use raftkv_api::etcdserverpb::alarm_request::AlarmAction;
use raftkv_api::etcdserverpb::lease_client::LeaseClient;
use raftkv_api::etcdserverpb::request_op::Request as Op;
use raftkv_api::etcdserverpb::{
    AlarmMember, AlarmRequest, AlarmType, CompactionRequest, DefragmentRequest, DeleteRangeRequest,
    LeaseGrantRequest, PutRequest, RangeRequest, RequestOp, StatusRequest, TxnRequest,
};
use raftkv_api::v3lockpb::LockRequest;
use raftkv_api::v3lockpb::lock_client::LockClient;
use tonic::Code;

const START: Duration = Duration::from_secs(30);
const QUOTA: u64 = 300_000;

fn etcdctl(endpoints: &str, args: &[&str]) -> Option<(bool, String)> {
    if !common::have("etcdctl") {
        return None;
    }
    let out = std::process::Command::new("etcdctl")
        .env("ETCDCTL_API", "3")
        .arg(format!("--endpoints={endpoints}"))
        .args(["--dial-timeout=3s", "--command-timeout=20s"])
        .args(args)
        .output()
        .expect("run etcdctl");
    let text = String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    Some((out.status.success(), text))
}

async fn alarms(port: u16) -> Vec<AlarmMember> {
    common::maintenance(port)
        .alarm(AlarmRequest { action: AlarmAction::Get as i32, member_id: 0, alarm: AlarmType::None as i32 })
        .await
        .expect("alarm list")
        .into_inner()
        .alarms
}

async fn health(port: u16, query: &str) -> (u16, String) {
    let url = format!("http://127.0.0.1:{port}/health{query}");
    let out = tokio::task::spawn_blocking(move || {
        std::process::Command::new("curl").args(["-s", "-w", "\n%{http_code}", &url]).output()
    })
    .await
    .expect("join")
    .expect("curl");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, code) = text.rsplit_once('\n').expect("status line");
    (code.trim().parse().expect("code"), body.to_string())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quota_alarm_and_recovery() {
    let opts = Opts { extra: vec!["--quota-backend-bytes".into(), QUOTA.to_string()], ..Opts::default() };
    let mut c = Cluster::start(3, opts);
    let leader = c.wait_leader(START).await;
    let port = c.port(leader);
    let mut kv = common::kv(port);
    // Overwrite a few keys: the superseded values fill the history store.
    let value = "x".repeat(2000);
    let mut acked: Vec<(String, i64)> = Vec::new();
    let refused = loop {
        let key = format!("key{}", acked.len() % 10);
        let req = PutRequest { key: key.clone().into(), value: value.clone().into(), ..Default::default() };
        match kv.put(req).await {
            Ok(r) => acked.push((key, r.into_inner().header.expect("header").revision)),
            Err(e) => break e,
        }
        assert!(acked.len() < 1000, "the quota never refused a write");
    };
    assert_eq!(refused.code(), Code::ResourceExhausted, "{refused:?}");
    assert_eq!(refused.message(), "etcdserver: mvcc: database space exceeded");
    assert!(acked.len() > 50, "refused too early: {} writes", acked.len());
    // The alarm reaches every member through the log (each one's Status lists it).
    let leader_id = common::status(port).await.expect("status").header.expect("header").member_id;
    for i in 0..3 {
        let p = c.port(i);
        common::wait_for("the NOSPACE alarm on every member", START, || async move {
            let s = common::status(p).await.ok()?;
            s.errors.iter().any(|e| e.contains("alarm:NOSPACE")).then_some(())
        })
        .await;
        assert_eq!(
            alarms(p).await,
            vec![AlarmMember { member_id: leader_id, alarm: AlarmType::Nospace as i32 }]
        );
        let (code, body) = health(p, "").await;
        assert_eq!((code, body.as_str()), (503, "{\"health\":\"false\"}\n"));
        let (code, body) = health(p, "?exclude=NOSPACE").await;
        assert_eq!((code, body.as_str()), (200, "{\"health\":\"true\"}"));
    }
    if let Some((ok, out)) = etcdctl(&c.endpoints(), &["alarm", "list"]) {
        assert!(ok && out.contains(&format!("memberID:{leader_id} alarm:NOSPACE")), "{out}");
    }
    // Every write is refused on every member, whatever its size; reads and deletes work.
    for i in 0..3 {
        let mut kv = common::kv(c.port(i));
        let e = kv.put(PutRequest { key: "tiny".into(), value: "v".into(), ..Default::default() }).await;
        assert_eq!(e.expect_err("refused").message(), "etcdserver: mvcc: database space exceeded");
        let put_op =
            RequestOp { request: Some(Op::RequestPut(PutRequest { key: "t".into(), ..Default::default() })) };
        let e = kv.txn(TxnRequest { success: vec![put_op], ..Default::default() }).await;
        assert_eq!(e.expect_err("refused").code(), Code::ResourceExhausted);
        let e = LeaseClient::new(common::channel(c.port(i)))
            .lease_grant(LeaseGrantRequest { ttl: 10, id: 0 })
            .await;
        assert_eq!(e.expect_err("refused").code(), Code::ResourceExhausted);
    }
    // Nothing acknowledged is lost: every key holds its last acknowledged write.
    for i in 0..3 {
        let mut kv = common::kv(c.port(i));
        for k in 0..10 {
            let key = format!("key{k}");
            let want = acked.iter().rev().find(|(kk, _)| *kk == key).map(|&(_, r)| r).expect("acked");
            let r = kv.range(RangeRequest { key: key.into(), ..Default::default() }).await.expect("read");
            assert_eq!(r.into_inner().kvs[0].mod_revision, want);
        }
    }
    let deleted = kv
        .delete_range(DeleteRangeRequest { key: "key9".into(), ..Default::default() })
        .await
        .expect("delete under the alarm")
        .into_inner();
    assert_eq!(deleted.deleted, 1);
    // The documented recovery: compact, defragment every member, disarm.
    let rev = deleted.header.expect("header").revision;
    kv.compact(CompactionRequest { revision: rev, physical: true }).await.expect("compact");
    for i in 0..3 {
        let p = c.port(i);
        let before = common::status(p).await.expect("status").db_size;
        match etcdctl(&format!("127.0.0.1:{p}"), &["defrag"]) {
            Some((ok, out)) => {
                assert!(
                    ok && out.contains(&format!("Finished defragmenting etcd member[127.0.0.1:{p}]")),
                    "{out}"
                )
            }
            None => {
                common::maintenance(p).defragment(DefragmentRequest {}).await.expect("defrag");
            }
        }
        let s = common::status(p).await.expect("status");
        assert!(s.db_size < before && (s.db_size as u64) < QUOTA / 2, "{before} -> {}", s.db_size);
        assert_eq!(s.db_size, s.db_size_in_use, "member {i}");
    }
    // Still refused until the alarm is disarmed.
    let e = kv.put(PutRequest { key: "tiny".into(), value: "v".into(), ..Default::default() }).await;
    assert_eq!(e.expect_err("refused").code(), Code::ResourceExhausted);
    match etcdctl(&c.endpoints(), &["alarm", "disarm"]) {
        Some((ok, out)) => assert!(ok && out.contains("alarm:NOSPACE"), "{out}"),
        None => {
            let req = AlarmRequest {
                action: AlarmAction::Deactivate as i32,
                member_id: leader_id,
                alarm: AlarmType::Nospace as i32,
            };
            common::maintenance(port).alarm(req).await.expect("disarm");
        }
    }
    for i in 0..3 {
        let p = c.port(i);
        common::wait_for("writes to resume on every member", START, || async move {
            let req = PutRequest { key: "after".into(), value: "v".into(), ..Default::default() };
            common::kv(p).put(req).await.ok()
        })
        .await;
        assert!(alarms(p).await.is_empty());
        assert_eq!(health(p, "").await.0, 200);
        let s = common::maintenance(p).status(StatusRequest {}).await.expect("status").into_inner();
        assert!(s.errors.is_empty(), "{:?}", s.errors);
    }
}

/// `--max-request-bytes` and `--max-txn-ops` on the key-value fast path and on a service
/// tonic serves (Lock), with etcd's errors.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_limits_on_both_paths() {
    let opts = Opts {
        extra: vec![
            "--max-request-bytes".into(),
            "4096".into(),
            "--max-txn-ops".into(),
            "2".into(),
            "--grpc-keepalive-interval".into(),
            "1s".into(),
            "--grpc-keepalive-timeout".into(),
            "1s".into(),
        ],
        ..Opts::default()
    };
    let mut c = Cluster::start(1, opts);
    c.wait_leader(START).await;
    let mut kv = common::kv(c.port(0));
    let big = "v".repeat(5000);
    let e = kv.put(PutRequest { key: "k".into(), value: big.clone().into(), ..Default::default() }).await;
    let e = e.expect_err("too large");
    assert_eq!((e.code(), e.message()), (Code::InvalidArgument, "etcdserver: request is too large"));
    // Above the limit plus gRPC's overhead: refused before it is read.
    let huge = "v".repeat(600 * 1024);
    let e = kv.put(PutRequest { key: "k".into(), value: huge.clone().into(), ..Default::default() }).await;
    let e = e.expect_err("larger than max");
    assert_eq!(e.code(), Code::ResourceExhausted, "{e:?}");
    assert!(e.message().starts_with("grpc: received message larger than max"), "{e:?}");
    // The Lock service (tonic) proposes through the same check.
    let mut lock = LockClient::new(common::channel(c.port(0)));
    let lease = LeaseClient::new(common::channel(c.port(0)))
        .lease_grant(LeaseGrantRequest { ttl: 30, id: 0 })
        .await
        .expect("grant")
        .into_inner()
        .id;
    let e = lock.lock(LockRequest { name: big.into(), lease }).await.expect_err("too large");
    // Code Unknown, as etcd 3.4's v3lock answers: its in-process client turns the server's
    // error into a plain error and the code is lost (see api/lock.rs).
    assert_eq!((e.code(), e.message()), (Code::Unknown, "etcdserver: request is too large"));
    let e = lock.lock(LockRequest { name: huge.into(), lease }).await.expect_err("larger than max");
    // tonic's own refusal of a message above the same limit.
    assert!(matches!(e.code(), Code::OutOfRange | Code::ResourceExhausted), "{e:?}");
    let put_op = |k: &str| RequestOp {
        request: Some(Op::RequestPut(PutRequest { key: k.to_string().into(), ..Default::default() })),
    };
    let e = kv
        .txn(TxnRequest { success: vec![put_op("a"), put_op("b"), put_op("c")], ..Default::default() })
        .await
        .expect_err("too many ops");
    assert_eq!(
        (e.code(), e.message()),
        (Code::InvalidArgument, "etcdserver: too many operations in txn request")
    );
    kv.txn(TxnRequest { success: vec![put_op("a"), put_op("b")], ..Default::default() })
        .await
        .expect("two ops");
    // Keepalive pings every second: a client that answers them keeps its connection.
    tokio::time::sleep(Duration::from_secs(3)).await;
    kv.put(PutRequest { key: "still".into(), value: "here".into(), ..Default::default() })
        .await
        .expect("put");
}
