//! Leases on a three-member cluster: expiry deletes the keys on every member at one
//! revision, a kept-alive lease loses no key when the leader is killed, keep-alives and
//! TimeToLive through a follower, leases survive a full restart, and bad input.

mod common;

use std::time::Duration;

use common::{Cluster, Opts, channel, http_post, keep_alive_once, wait_for};
use raftkv_api::etcdserverpb::lease_client::LeaseClient;
use raftkv_api::etcdserverpb::{
    LeaseGrantRequest, LeaseLeasesRequest, LeaseRevokeRequest, LeaseTimeToLiveRequest, PutRequest,
    RangeRequest,
};
use tonic::Code;

const START: Duration = Duration::from_secs(30);

fn lease(port: u16) -> LeaseClient<tonic::transport::Channel> {
    LeaseClient::new(channel(port))
}

async fn grant(port: u16, id: i64, ttl: i64) -> i64 {
    wait_for("a lease grant", START, || async move {
        lease(port).lease_grant(LeaseGrantRequest { id, ttl }).await.ok().map(|r| r.into_inner().id)
    })
    .await
}

async fn put_leased(port: u16, key: &str, lease_id: i64) -> i64 {
    let key = key.to_string();
    wait_for("a leased put", START, || {
        let key = key.clone();
        async move {
            let req =
                PutRequest { key: key.into(), value: "v".into(), lease: lease_id, ..Default::default() };
            common::kv(port).put(req).await.ok().and_then(|r| r.into_inner().header).map(|h| h.revision)
        }
    })
    .await
}

/// The key as a serializable read of member `port` sees it at `revision` (0: current):
/// (exists, lease).
async fn local(port: u16, key: &str, revision: i64) -> Option<(bool, i64, i64)> {
    let req =
        RangeRequest { key: key.to_string().into(), serializable: true, revision, ..Default::default() };
    let r = common::kv(port).range(req).await.ok()?.into_inner();
    let rev = r.header.map_or(0, |h| h.revision);
    Some((!r.kvs.is_empty(), r.kvs.first().map_or(0, |kv| kv.lease), rev))
}

/// The gateway's lease paths, as Patroni uses them: grant, keep-alive (one
/// `{"result":...}` line per request), TimeToLive with keys through the `/v3/kv/lease`
/// alias, revoke.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_gateway_lease_paths() {
    let mut c = Cluster::start(1, Opts::default());
    c.wait_leader(START).await;
    let port = c.port(0);
    let v: serde_json::Value =
        serde_json::from_str(&http_post(port, "/v3/lease/grant", r#"{"TTL":30,"ID":99}"#)).expect("json");
    assert_eq!((v["ID"].as_str(), v["TTL"].as_str()), (Some("99"), Some("30")), "{v}");
    let ka = http_post(port, "/v3/lease/keepalive", r#"{"ID":99}{"ID":5}"#);
    let lines: Vec<serde_json::Value> =
        ka.lines().map(|l| serde_json::from_str(l).expect("json line")).collect();
    assert_eq!(lines.len(), 2, "{ka}");
    assert_eq!(lines[0]["result"]["TTL"].as_str(), Some("30"), "{ka}");
    assert!(
        lines[1]["result"]["ID"].as_str() == Some("5") && lines[1]["result"].get("TTL").is_none(),
        "{ka}"
    );
    http_post(port, "/v3/kv/put", r#"{"key":"Zm9v","value":"YmFy","lease":"99"}"#);
    let v: serde_json::Value =
        serde_json::from_str(&http_post(port, "/v3/kv/lease/timetolive", r#"{"ID":99,"keys":true}"#))
            .expect("json");
    assert_eq!((v["grantedTTL"].as_str(), v["keys"][0].as_str()), (Some("30"), Some("Zm9v")), "{v}");
    let v: serde_json::Value =
        serde_json::from_str(&http_post(port, "/v3/lease/revoke", r#"{"ID":99}"#)).expect("json");
    assert!(v["header"]["revision"].as_str().is_some(), "{v}");
    let v: serde_json::Value =
        serde_json::from_str(&http_post(port, "/v3/lease/revoke", r#"{"ID":99}"#)).expect("json");
    assert_eq!(v["error"].as_str(), Some("etcdserver: requested lease not found"), "{v}");
    c.assert_running();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expiry_keep_alive_across_leader_kill_and_restart() {
    let mut c = Cluster::start(3, Opts::default());
    let leader = c.wait_leader(START).await;
    let follower = (leader + 1) % 3;
    let fport = c.port(follower);

    // Bad input: TTL too large, revoke and put with unknown leases, keep-alive and
    // TimeToLive of an unknown lease.
    let e = lease(fport)
        .lease_grant(LeaseGrantRequest { id: 0, ttl: 9_000_000_001 })
        .await
        .expect_err("must fail");
    assert_eq!((e.code(), e.message()), (Code::OutOfRange, "etcdserver: too large lease TTL"));
    let e = lease(fport).lease_revoke(LeaseRevokeRequest { id: 4242 }).await.expect_err("must fail");
    assert_eq!((e.code(), e.message()), (Code::NotFound, "etcdserver: requested lease not found"));
    let req = PutRequest { key: "x".into(), value: "v".into(), lease: 4242, ..Default::default() };
    let e = common::kv(fport).put(req).await.expect_err("must fail");
    assert_eq!((e.code(), e.message()), (Code::NotFound, "etcdserver: requested lease not found"));
    assert_eq!(keep_alive_once(fport, 4242).await.expect("keep-alive"), 0);
    let ttl = lease(fport).lease_time_to_live(LeaseTimeToLiveRequest { id: 4242, keys: false }).await;
    assert_eq!(ttl.expect("timetolive").into_inner().ttl, -1);
    // A client-chosen ID, then the same ID again.
    assert_eq!(grant(fport, 77, 600).await, 77);
    let e = lease(fport).lease_grant(LeaseGrantRequest { id: 77, ttl: 5 }).await.expect_err("must fail");
    assert_eq!((e.code(), e.message()), (Code::FailedPrecondition, "etcdserver: lease already exists"));
    put_leased(fport, "long", 77).await;

    // Lease A expires; lease B is kept alive through a follower.
    let a = grant(fport, 0, 3).await;
    let b = grant(fport, 0, 3).await;
    assert!(a > 0 && b > 0 && a != b);
    put_leased(fport, "a1", a).await;
    put_leased(fport, "a2", a).await;
    let last = put_leased(fport, "b1", b).await;
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let keeper = {
        let stop = stop.clone();
        let ports: Vec<u16> = (0..3).map(|i| c.port(i)).filter(|&p| p != c.port(leader)).collect();
        tokio::spawn(async move {
            let mut n = 0usize;
            let mut ok = 0usize;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                // Alternate between the two members that are not the first leader.
                if keep_alive_once(ports[n % 2], b).await.is_ok_and(|ttl| ttl > 0) {
                    ok += 1;
                }
                n += 1;
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
            ok
        })
    };
    // Every member deletes a1 and a2 at revision last + 1.
    for i in 0..3 {
        let port = c.port(i);
        wait_for("lease A's keys to go", Duration::from_secs(30), || async move {
            let (a1, _, rev) = local(port, "a1", 0).await?;
            let (a2, _, _) = local(port, "a2", 0).await?;
            (!a1 && !a2).then_some(rev)
        })
        .await;
        for key in ["a1", "a2"] {
            assert_eq!(
                local(port, key, last).await.map(|x| x.0),
                Some(true),
                "{key} at {last} on member {i}"
            );
            assert_eq!(
                local(port, key, last + 1).await.map(|x| x.0),
                Some(false),
                "{key} at {} on member {i}",
                last + 1
            );
        }
    }
    let ttl = lease(fport).lease_time_to_live(LeaseTimeToLiveRequest { id: a, keys: false }).await;
    assert_eq!(ttl.expect("timetolive").into_inner().ttl, -1, "an expired lease is gone");
    assert_eq!(keep_alive_once(fport, a).await.expect("keep-alive"), 0);

    // Kill the leader; B is kept alive meanwhile, through the others.
    c.kill9(leader);
    let new_leader = c.wait_leader(START).await;
    assert_ne!(new_leader, leader);
    tokio::time::sleep(Duration::from_secs(8)).await;
    for i in c.running() {
        let (exists, l, _) = local(c.port(i), "b1", 0).await.expect("read");
        assert!(exists && l == b, "b1 of the kept-alive lease must survive the leader change (member {i})");
    }
    let ttl = lease(fport).lease_time_to_live(LeaseTimeToLiveRequest { id: b, keys: true }).await;
    let ttl = ttl.expect("timetolive").into_inner();
    assert!(ttl.ttl > 0 && ttl.granted_ttl == 3, "{ttl:?}");
    assert_eq!(ttl.keys, vec![bytes::Bytes::from_static(b"b1")]);
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    assert!(keeper.await.expect("keeper") > 5, "keep-alives through followers must succeed");
    // Without keep-alives B expires too.
    for i in c.running() {
        let port = c.port(i);
        wait_for("lease B's key to go", Duration::from_secs(30), || async move {
            let (b1, _, _) = local(port, "b1", 0).await?;
            (!b1).then_some(())
        })
        .await;
    }

    // The long lease survives a restart of every member.
    c.start_member(leader);
    c.wait_leader(START).await;
    for i in 0..3 {
        c.stop(i, Duration::from_secs(20));
    }
    for i in 0..3 {
        c.start_member(i);
    }
    c.wait_leader(START).await;
    for i in 0..3 {
        let port = c.port(i);
        let ids = wait_for("the lease list", START, || async move {
            lease(port).lease_leases(LeaseLeasesRequest {}).await.ok().map(|r| r.into_inner().leases)
        })
        .await;
        assert_eq!(ids.iter().map(|l| l.id).collect::<Vec<_>>(), vec![77], "member {i}");
        assert_eq!(local(port, "long", 0).await.map(|x| (x.0, x.1)), Some((true, 77)), "member {i}");
    }
    // Revoking through a follower deletes the key.
    let r = lease(fport).lease_revoke(LeaseRevokeRequest { id: 77 }).await.expect("revoke");
    assert!(r.into_inner().header.is_some());
    assert_eq!(local(fport, "long", 0).await.map(|x| x.0), Some(false));
    c.assert_running();
}
