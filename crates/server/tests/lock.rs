//! etcd's Lock and Election services: a second Lock waits until the first is unlocked,
//! a holder whose lease expires releases the lock, Campaign waits for the leader to
//! resign, Proclaim/Leader/Observe report the value, and etcd's errors.

mod common;

use std::time::Duration;

use common::{Cluster, Opts, channel, wait_for};
use raftkv_api::etcdserverpb::LeaseGrantRequest;
use raftkv_api::etcdserverpb::lease_client::LeaseClient;
use raftkv_api::v3electionpb::election_client::ElectionClient;
use raftkv_api::v3electionpb::{CampaignRequest, LeaderRequest, ProclaimRequest, ResignRequest};
use raftkv_api::v3lockpb::lock_client::LockClient;
use raftkv_api::v3lockpb::{LockRequest, UnlockRequest};

const START: Duration = Duration::from_secs(30);

async fn grant(port: u16, ttl: i64) -> i64 {
    wait_for("a lease grant", START, || async move {
        LeaseClient::new(channel(port))
            .lease_grant(LeaseGrantRequest { id: 0, ttl })
            .await
            .ok()
            .map(|r| r.into_inner().id)
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lock_waits_for_unlock_and_for_lease_expiry() {
    let mut c = Cluster::start(1, Opts::default());
    c.wait_leader(START).await;
    let port = c.port(0);
    let (l1, l2, l3) = (grant(port, 60).await, grant(port, 3).await, grant(port, 60).await);
    let mut lock = LockClient::new(channel(port));
    let k1 =
        lock.lock(LockRequest { name: "mylock".into(), lease: l1 }).await.expect("lock").into_inner().key;
    assert_eq!(k1, format!("mylock/{l1:x}").into_bytes());
    // The second waits.
    let second = tokio::spawn(async move {
        LockClient::new(channel(port)).lock(LockRequest { name: "mylock".into(), lease: l2 }).await
    });
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(!second.is_finished(), "a second Lock must wait for the first");
    lock.unlock(UnlockRequest { key: k1 }).await.expect("unlock");
    let k2 = tokio::time::timeout(Duration::from_secs(10), second)
        .await
        .expect("the second Lock must get the lock once the first is unlocked")
        .expect("task")
        .expect("lock")
        .into_inner()
        .key;
    assert_eq!(k2, format!("mylock/{l2:x}").into_bytes());
    // l2 is never kept alive: when it expires, the third gets the lock.
    let third = tokio::time::timeout(
        Duration::from_secs(30),
        LockClient::new(channel(port)).lock(LockRequest { name: "mylock".into(), lease: l3 }),
    )
    .await
    .expect("the lock of an expired holder must pass on")
    .expect("lock")
    .into_inner();
    assert_eq!(third.key, format!("mylock/{l3:x}").into_bytes());
    // Locking with an unknown lease fails as etcd's put does.
    let e = lock.lock(LockRequest { name: "other".into(), lease: 4242 }).await.expect_err("unknown lease");
    assert_eq!(e.message(), "etcdserver: requested lease not found");
    c.assert_running();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn election_campaign_proclaim_observe_resign() {
    let mut c = Cluster::start(1, Opts::default());
    c.wait_leader(START).await;
    let port = c.port(0);
    let (l1, l2) = (grant(port, 60).await, grant(port, 60).await);
    let mut el = ElectionClient::new(channel(port));
    let e = el.leader(LeaderRequest { name: "el".into() }).await.expect_err("no leader yet");
    assert_eq!(e.message(), "election: no leader");
    let first = el
        .campaign(CampaignRequest { name: "el".into(), lease: l1, value: "a".into() })
        .await
        .expect("campaign")
        .into_inner()
        .leader
        .expect("leader key");
    assert_eq!(first.key, format!("el/{l1:x}").into_bytes());
    let mut observe = el.observe(LeaderRequest { name: "el".into() }).await.expect("observe").into_inner();
    let seen = observe.message().await.expect("observe").expect("a value");
    assert_eq!(seen.kv.expect("kv").value, "a".as_bytes());
    el.proclaim(ProclaimRequest { leader: Some(first.clone()), value: "b".into() }).await.expect("proclaim");
    let seen = observe.message().await.expect("observe").expect("a value");
    assert_eq!(seen.kv.expect("kv").value, "b".as_bytes());
    let now = el.leader(LeaderRequest { name: "el".into() }).await.expect("leader").into_inner();
    assert_eq!(now.kv.expect("kv").value, "b".as_bytes());
    // A second candidate waits until the leader resigns.
    let second = tokio::spawn(async move {
        ElectionClient::new(channel(port))
            .campaign(CampaignRequest { name: "el".into(), lease: l2, value: "c".into() })
            .await
    });
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(!second.is_finished(), "a second candidate must wait");
    el.resign(ResignRequest { leader: Some(first.clone()) }).await.expect("resign");
    let won = tokio::time::timeout(Duration::from_secs(10), second)
        .await
        .expect("the second candidate must win after the resignation")
        .expect("task")
        .expect("campaign")
        .into_inner();
    assert_eq!(won.leader.expect("leader key").key, format!("el/{l2:x}").into_bytes());
    let seen = observe.message().await.expect("observe").expect("a value");
    assert_eq!(seen.kv.expect("kv").value, "c".as_bytes());
    // The old leader can no longer proclaim; a missing leader key is refused.
    let e = el.proclaim(ProclaimRequest { leader: Some(first), value: "x".into() }).await.expect_err("stale");
    assert_eq!(e.message(), "election: not leader");
    let e = el.proclaim(ProclaimRequest { leader: None, value: "x".into() }).await.expect_err("no key");
    assert_eq!(e.message(), "\"leader\" field must be provided");
    c.assert_running();
}

/// Observe reports every value the leader proclaims, in order, not only the newest one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn observe_reports_every_value() {
    let mut c = Cluster::start(1, Opts::default());
    c.wait_leader(START).await;
    let port = c.port(0);
    let l1 = grant(port, 60).await;
    let mut el = ElectionClient::new(channel(port));
    let leader = el
        .campaign(CampaignRequest { name: "obs".into(), lease: l1, value: "v0".into() })
        .await
        .expect("campaign")
        .into_inner()
        .leader
        .expect("leader key");
    let mut observe = el.observe(LeaderRequest { name: "obs".into() }).await.expect("observe").into_inner();
    let values: Vec<String> = (1..=20).map(|i| format!("v{i}")).collect();
    for v in &values {
        el.proclaim(ProclaimRequest { leader: Some(leader.clone()), value: v.clone().into() })
            .await
            .expect("proclaim");
    }
    let mut seen = Vec::new();
    while seen.last() != Some(&"v20".to_string()) {
        let r = tokio::time::timeout(Duration::from_secs(10), observe.message())
            .await
            .expect("observe must keep reporting")
            .expect("observe")
            .expect("a value");
        seen.push(String::from_utf8(r.kv.expect("kv").value.to_vec()).expect("utf-8"));
    }
    let mut expected = vec!["v0".to_string()];
    expected.extend(values);
    assert_eq!(seen, expected, "every proclaimed value, in order");

    c.assert_running();
}
