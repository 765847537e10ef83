//! The crates.io `etcd-client` crate against a three-member raftkv cluster: leases with keys
//! (grant with a chosen id, time to live with keys, keep-alive stream, list, revoke, expiry
//! seen as one delete revision by a watch on every member) and the Lock service (a contended
//! lock waits for unlock, and for the holder's lease to expire). Both modes of the harness
//! (secure: mutual TLS with the crate's TLS options, auth enabled, the crate as root).

mod common;

use std::time::{Duration, Instant};

use common::{Access, Cluster, Mode, Opts, in_both_modes};
use etcd_client::{
    Client, EventType, GetOptions, LeaseGrantOptions, LeaseTimeToLiveOptions, LockOptions, PutOptions,
    WatchOptions, WatchStream,
};

const START: Duration = Duration::from_secs(20);
/// Generous: other builds share the machine.
const WAIT: Duration = Duration::from_secs(30);

/// Three members with a leader in `mode`, and their client URLs.
async fn cluster(mode: Mode) -> (Cluster, Vec<String>) {
    let mut c = Cluster::start(3, Opts::in_mode(mode));
    c.wait_leader(START).await;
    let eps = c.members.iter().map(|m| m.client_url()).collect();
    (c, eps)
}

async fn connect(access: &Access, endpoint: &str) -> Client {
    Client::connect([endpoint], access.etcd_client_options()).await.expect("connect")
}

/// The events of the next watch response that has any (the created response has none), as
/// (is delete, key, mod revision).
async fn next_events(stream: &mut WatchStream) -> Vec<(bool, String, i64)> {
    loop {
        let resp =
            tokio::time::timeout(WAIT, stream.message()).await.expect("in time").expect("ok").expect("open");
        if resp.events().is_empty() {
            continue;
        }
        return resp
            .events()
            .iter()
            .map(|e| {
                let kv = e.kv().expect("kv");
                (
                    matches!(e.event_type(), EventType::Delete),
                    kv.key_str().expect("utf8").to_string(),
                    kv.mod_revision(),
                )
            })
            .collect();
    }
}

async fn etcd_client_crate_leases_with_keys_and_expiry(mode: Mode) {
    let (mut c, eps) = cluster(mode).await;
    let access = c.access.clone();
    let mut client = connect(&access, &eps[0]).await;

    // A client-chosen id; keys attached to it; time to live with keys through another member.
    let id = 0x7a11_0001;
    let granted = client.lease_grant(60, Some(LeaseGrantOptions::new().with_id(id))).await.expect("grant");
    assert_eq!((granted.id(), granted.ttl()), (id, 60));
    let leased = || Some(PutOptions::new().with_lease(id));
    client.put("lease/a", "1", leased()).await.expect("put with lease");
    client.put("lease/b", "2", leased()).await.expect("put with lease");
    let got = client.get("lease/a", None).await.expect("get");
    assert_eq!(got.kvs()[0].lease(), id, "the key's lease id");
    let mut other = connect(&access, &eps[1]).await;
    let info =
        other.lease_time_to_live(id, Some(LeaseTimeToLiveOptions::new().with_keys())).await.expect("ttl");
    let mut keys: Vec<&[u8]> = info.keys().iter().map(Vec::as_slice).collect();
    keys.sort();
    assert_eq!(keys, [&b"lease/a"[..], &b"lease/b"[..]]);
    assert_eq!(info.granted_ttl(), 60);
    assert!((55..=60).contains(&info.ttl()), "remaining TTL {}", info.ttl());
    assert!(other.leases().await.expect("leases").leases().iter().any(|l| l.id() == id));

    // An unknown lease on put is refused as etcd does.
    let e =
        client.put("lease/x", "x", Some(PutOptions::new().with_lease(0x1234))).await.expect_err("no lease");
    match e {
        etcd_client::Error::GRpcStatus(s) => {
            assert_eq!(
                (s.code(), s.message()),
                (tonic::Code::NotFound, "etcdserver: requested lease not found")
            )
        }
        other => panic!("expected a gRPC status, got {other:?}"),
    }

    // Revoke deletes both keys at one revision.
    let mut watch = client.watch("lease/", Some(WatchOptions::new().with_prefix())).await.expect("watch");
    // The crate returns once the stream is open, before the member has read the create
    // request: wait for the created response, or the revoke could come first.
    let created =
        tokio::time::timeout(WAIT, watch.message()).await.expect("in time").expect("ok").expect("open");
    assert!(created.created(), "the first response tells the watch was created");
    let revoked = client.lease_revoke(id).await.expect("revoke").header().expect("header").revision();
    let mut events = next_events(&mut watch).await;
    events.sort();
    assert_eq!(events, [(true, "lease/a".into(), revoked), (true, "lease/b".into(), revoked)]);
    let gone = client.lease_time_to_live(id, None).await.expect("ttl of a revoked lease");
    assert_eq!(gone.ttl(), -1);

    // Expiry: a short lease's key goes on every member at one revision, seen by a watch on
    // each, while a lease kept alive through the keep-alive stream keeps its key.
    let short = client.lease_grant(2, None).await.expect("grant").id();
    let kept = client.lease_grant(2, None).await.expect("grant").id();
    client.put("exp/short", "1", Some(PutOptions::new().with_lease(short))).await.expect("put");
    let put = client.put("exp/kept", "1", Some(PutOptions::new().with_lease(kept))).await.expect("put");
    // From the revision after the puts: the short lease may expire before a watch is created
    // on a loaded machine, and its delete must still be seen.
    let after = put.header().expect("header").revision() + 1;
    let mut watches = Vec::new();
    for ep in &eps {
        let mut cl = connect(&access, ep).await;
        let w =
            cl.watch("exp/short", Some(WatchOptions::new().with_start_revision(after))).await.expect("watch");
        watches.push((cl, w));
    }
    let (mut keeper, mut answers) = client.lease_keep_alive(kept).await.expect("keep-alive stream");
    let began = Instant::now();
    while began.elapsed() < Duration::from_millis(4500) {
        keeper.keep_alive().await.expect("keep alive");
        let resp = tokio::time::timeout(WAIT, answers.message()).await.expect("in time").expect("ok");
        assert_eq!(resp.expect("an answer").ttl(), 2);
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let mut revisions = Vec::new();
    for (_, w) in &mut watches {
        let events = next_events(w).await;
        assert_eq!(events.len(), 1);
        assert!(events[0].0 && events[0].1 == "exp/short", "expiry event {events:?}");
        revisions.push(events[0].2);
    }
    assert!(revisions.windows(2).all(|w| w[0] == w[1]), "one revision on every member: {revisions:?}");
    for ep in &eps {
        let mut cl = connect(&access, ep).await;
        let local =
            cl.get("exp/", Some(GetOptions::new().with_prefix().with_serializable())).await.expect("get");
        let keys: Vec<&str> = local.kvs().iter().map(|kv| kv.key_str().expect("utf8")).collect();
        assert_eq!(keys, ["exp/kept"], "on {ep}");
    }
    assert_eq!(client.lease_time_to_live(short, None).await.expect("ttl").ttl(), -1);
    // A keep-alive of the expired lease answers TTL 0, which the crate reports as not found.
    match client.lease_keep_alive(short).await {
        Err(etcd_client::Error::LeaseKeepAliveError(msg)) => assert_eq!(msg, "lease not found"),
        Err(e) => panic!("expected the crate's lease-not-found error, got {e:?}"),
        Ok(_) => panic!("a keep-alive stream for an expired lease"),
    }
    c.assert_running();
}
in_both_modes!(etcd_client_crate_leases_with_keys_and_expiry);

async fn etcd_client_crate_lock_waits_for_unlock_and_expiry(mode: Mode) {
    let (mut c, eps) = cluster(mode).await;
    let access = c.access.clone();
    let mut first = connect(&access, &eps[0]).await;
    let mut second = connect(&access, &eps[1]).await;

    let lease1 = first.lease_grant(60, None).await.expect("grant").id();
    let held = first.lock("crate-lock", Some(LockOptions::new().with_lease(lease1))).await.expect("lock");
    let key1 = held.key().to_vec();
    assert!(key1.starts_with(b"crate-lock/"), "lock key {:?}", String::from_utf8_lossy(&key1));
    let got = first.get(key1.clone(), None).await.expect("get");
    assert_eq!(got.kvs()[0].lease(), lease1, "the lock key is on the holder's lease");

    // A second locker waits while the first holds it, and gets it once it is unlocked.
    let lease2 = second.lease_grant(60, None).await.expect("grant").id();
    let waiter = tokio::spawn(async move {
        let r = second.lock("crate-lock", Some(LockOptions::new().with_lease(lease2))).await;
        (Instant::now(), r.map(|r| r.key().to_vec()), second)
    });
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert!(!waiter.is_finished(), "the second lock did not wait for the first");
    let unlocked_at = Instant::now();
    first.unlock(key1.clone()).await.expect("unlock");
    let (acquired_at, key2, mut second) =
        tokio::time::timeout(WAIT, waiter).await.expect("in time").expect("task");
    let key2 = key2.expect("lock after unlock");
    assert!(acquired_at >= unlocked_at);
    assert_ne!(key2, key1);

    // A holder whose lease expires (never kept alive) loses the lock to the next waiter.
    second.unlock(key2).await.expect("unlock");
    let short = first.lease_grant(2, None).await.expect("grant").id();
    first.lock("crate-lock", Some(LockOptions::new().with_lease(short))).await.expect("lock");
    let lease3 = second.lease_grant(60, None).await.expect("grant").id();
    let began = Instant::now();
    let third =
        tokio::time::timeout(WAIT, second.lock("crate-lock", Some(LockOptions::new().with_lease(lease3))))
            .await
            .expect("the lock after the holder's lease expired")
            .expect("lock");
    assert!(began.elapsed() >= Duration::from_millis(1000), "acquired before the holder's lease expired");
    assert!(third.key().starts_with(b"crate-lock/"));
    c.assert_running();
}
in_both_modes!(etcd_client_crate_lock_waits_for_unlock_and_expiry);
