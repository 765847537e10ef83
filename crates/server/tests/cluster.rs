//! Acceptance: election, replication, leader failure, catch-up (log and snapshot) and crash
//! recovery of real three-member `raftkv` clusters.

mod common;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{Cluster, Opts, get, put, wait_for};
use raftkv_api::etcdserverpb::RangeRequest;

const START: Duration = Duration::from_secs(20);

/// A leader is elected; a put through a follower succeeds and is readable, linearizably, from
/// every member.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn put_through_follower_is_read_from_every_member() {
    let mut c = Cluster::start(3, Opts::default());
    let leader = c.wait_leader(START).await;
    let follower = (leader + 1) % 3;
    let rev = put(c.port(follower), "greeting", "hello").await.expect("put through a follower");
    assert!(rev > 1, "a put returns the new revision, got {rev}");
    for i in 0..3 {
        let v = get(c.port(i), "greeting", false).await.expect("linearizable get");
        assert_eq!(v.as_deref(), Some("hello"), "linearizable read from {}", c.members[i].name);
    }
    // Every member agrees on the leader and the cluster in Status and MemberList.
    let ids: Vec<u64> = {
        let mut ids = Vec::new();
        for i in 0..3 {
            let s = common::status(c.port(i)).await.expect("status");
            let h = s.header.expect("header");
            ids.push(h.member_id);
            assert!(s.raft_term >= 1);
            assert_eq!(h.revision, rev, "Status revision on {}", c.members[i].name);
        }
        ids
    };
    let mut sorted = ids.clone();
    sorted.dedup();
    assert_eq!(sorted.len(), 3, "distinct member ids: {ids:x?}");
    let list = common::cluster_client(c.port(follower))
        .member_list(raftkv_api::etcdserverpb::MemberListRequest::default())
        .await
        .expect("member list")
        .into_inner();
    let mut names: Vec<String> = list.members.iter().map(|m| m.name.clone()).collect();
    names.sort();
    assert_eq!(names, ["m1", "m2", "m3"]);
}

/// kill -9 of the leader with etcd's default timeouts (heartbeat 100 ms, election 1000 ms): a
/// write through a surviving member succeeds within 3 s of the kill.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_resume_within_3s_after_leader_kill9() {
    let mut c = Cluster::start(3, Opts::etcd_defaults());
    let leader = c.wait_leader(START).await;
    c.put_retry(leader, "before", "1", Duration::from_secs(5)).await;
    // Let the followers see a few heartbeats so their election timers are fresh, as in steady state.
    let survivors: Vec<usize> = (0..3).filter(|&i| i != leader).collect();
    for &i in &survivors {
        let p = c.port(i);
        wait_for("followers see the write", Duration::from_secs(5), || async move {
            (get(p, "before", true).await.ok()?.as_deref() == Some("1")).then_some(())
        })
        .await;
    }

    let killed_at = Instant::now();
    c.kill9(leader);
    let mut attempt = 0u32;
    let elapsed = loop {
        let target = survivors[attempt as usize % 2];
        attempt += 1;
        let try_put = tokio::time::timeout(Duration::from_millis(700), put(c.port(target), "after", "2"));
        if let Ok(Ok(_)) = try_put.await {
            break killed_at.elapsed();
        }
        assert!(killed_at.elapsed() < Duration::from_secs(10), "no write succeeded within 10 s of the kill");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    eprintln!("first successful put {elapsed:?} after kill -9 of the leader ({attempt} attempts)");
    assert!(elapsed < Duration::from_secs(3), "writes resumed only after {elapsed:?} (limit 3 s)");
    let new_leader = c.wait_leader(Duration::from_secs(5)).await;
    assert_ne!(new_leader, leader);
    for &i in &survivors {
        assert_eq!(get(c.port(i), "before", false).await.expect("get").as_deref(), Some("1"));
        assert_eq!(get(c.port(i), "after", false).await.expect("get").as_deref(), Some("2"));
    }
}

/// Number of keys under `prefix` in member `port`'s local (serializable) state.
async fn local_count(port: u16, prefix: &str) -> Option<i64> {
    let mut end = prefix.as_bytes().to_vec();
    *end.last_mut()? += 1;
    let req = RangeRequest {
        key: prefix.to_owned().into(),
        range_end: end.into(),
        serializable: true,
        count_only: true,
        ..Default::default()
    };
    Some(common::kv(port).range(req).await.ok()?.into_inner().count)
}

/// Kills a follower, writes `writes` keys while it is down, restarts it and waits until its
/// serializable reads show all of them. Returns the cluster for further checks.
async fn restart_catches_up(opts: Opts, writes: usize) -> Cluster {
    let mut c = Cluster::start(3, opts);
    let leader = c.wait_leader(START).await;
    c.put_retry(leader, "k/0000", "v0", Duration::from_secs(5)).await;
    let down = (leader + 1) % 3;
    c.kill9(down);
    // Concurrent writers (through the leader) so that many writes go quickly.
    let port = c.port(leader);
    let writers = 8;
    let mut tasks = Vec::new();
    for w in 0..writers {
        tasks.push(tokio::spawn(async move {
            for n in (w..writes).step_by(writers) {
                let key = format!("k/{:04}", n + 1);
                let mut tries = 0;
                while let Err(e) = put(port, &key, &format!("v{}", n + 1)).await {
                    tries += 1;
                    assert!(tries < 50, "put {key} failed: {e:?}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        }));
    }
    for t in tasks {
        t.await.expect("writer");
    }
    let expected = writes as i64 + 1;
    // A live follower applies every write (a serializable read may lag the leader's ack briefly).
    let up = c.port((down + 1) % 3);
    wait_for("the live follower to apply every write", Duration::from_secs(10), || async move {
        (local_count(up, "k/").await? == expected).then_some(())
    })
    .await;

    c.start_member(down);
    let p = c.port(down);
    wait_for(
        &format!("{} to catch up to {expected} keys", c.members[down].name),
        Duration::from_secs(30),
        || async move { (local_count(p, "k/").await? == expected).then_some(()) },
    )
    .await;
    let last = format!("k/{writes:04}");
    assert_eq!(get(p, &last, true).await.expect("get").as_deref(), Some(format!("v{writes}").as_str()));
    assert_eq!(get(p, "k/0000", true).await.expect("get").as_deref(), Some("v0"));
    c
}

/// A member killed while the others take writes catches up from the log when restarted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restarted_member_catches_up_from_the_log() {
    let mut c = restart_catches_up(Opts::default(), 50).await;
    // It is a full member again: it can serve a linearizable read of a new write.
    let leader = c.wait_leader(START).await;
    c.put_retry(leader, "k/after", "x", Duration::from_secs(5)).await;
    for i in 0..3 {
        assert_eq!(get(c.port(i), "k/after", false).await.expect("get").as_deref(), Some("x"));
    }
}

/// With --snapshot-count 100 and 400 writes while a member is down, the leader has compacted
/// the entries the member misses: it must be caught up by a snapshot (InstallSnapshot).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restarted_member_catches_up_by_snapshot() {
    let opts = Opts { snapshot_count: Some(100), ..Opts::default() };
    let mut c = restart_catches_up(opts, 400).await;
    let leader = c.wait_leader(START).await;
    c.put_retry(leader, "k/after", "x", Duration::from_secs(5)).await;
    for i in 0..3 {
        assert_eq!(get(c.port(i), "k/after", false).await.expect("get").as_deref(), Some("x"));
    }
    // The restarted member's log ended far below the leader's latest snapshot, beyond the
    // entries kept after a snapshot (snapshot-count / 2): only a snapshot could catch it up.
    let down =
        (0..3).find(|&i| common::read_log(&c.members[i].log_path).matches("starting member").count() == 2);
    let down = down.expect("one member was restarted");
    let down_log = common::read_log(&c.members[down].log_path);
    let restart_line =
        down_log.lines().filter(|l| l.contains("starting member")).nth(1).expect("restart line");
    let last_index = field(restart_line, "last_index=").expect("last_index in the start line");
    let leader_log = common::read_log(&c.members[leader].log_path);
    let snap =
        leader_log.lines().filter(|l| l.contains("snapshot taken")).filter_map(|l| field(l, "index=")).max();
    let snap = snap.expect("the leader took a snapshot with --snapshot-count 100");
    assert!(
        last_index + 50 < snap,
        "restarted member's log ended at {last_index}, leader snapshot at {snap}: not a snapshot catch-up"
    );
}

/// The number after `name` in a log line.
fn field(line: &str, name: &str) -> Option<u64> {
    let at = line.find(name)? + name.len();
    let digits: String = line[at..].chars().take_while(char::is_ascii_digit).collect();
    digits.parse().ok()
}

/// All members killed (-9) at once during a stream of acknowledged writes; after a restart
/// every acknowledged write is present with its value.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_writes_survive_kill9_of_all_members() {
    let mut c = Cluster::start(3, Opts::default());
    c.wait_leader(START).await;
    let acked: Arc<Mutex<BTreeMap<String, String>>> = Arc::default();
    let stop = Arc::new(AtomicBool::new(false));
    // Writers through every member (followers forward to the leader); every write is to a new
    // key, so an acknowledged write must be found with exactly its value.
    let mut tasks = Vec::new();
    for w in 0..6usize {
        let port = c.port(w % 3);
        let (acked, stop) = (acked.clone(), stop.clone());
        tasks.push(tokio::spawn(async move {
            let mut n = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let (key, value) = (format!("w{w}/{n:06}"), format!("value-{w}-{n}"));
                if let Ok(Ok(_)) = tokio::time::timeout(Duration::from_secs(2), put(port, &key, &value)).await
                {
                    acked.lock().expect("lock").insert(key, value);
                }
                n += 1;
            }
        }));
    }
    wait_for("150 acknowledged writes", Duration::from_secs(20), || {
        let acked = acked.clone();
        async move { (acked.lock().expect("lock").len() >= 150).then_some(()) }
    })
    .await;
    c.kill9_all(&[0, 1, 2]);
    stop.store(true, Ordering::Relaxed);
    for t in tasks {
        t.await.expect("writer");
    }
    let acked = acked.lock().expect("lock").clone();
    eprintln!("{} acknowledged writes before the crash", acked.len());

    for i in 0..3 {
        c.start_member(i);
    }
    let leader = c.wait_leader(START).await;
    // One linearizable range per writer prefix, through the leader and a follower.
    for reader in [leader, (leader + 1) % 3] {
        let mut found = BTreeMap::new();
        for w in 0..6 {
            let req = RangeRequest {
                key: format!("w{w}/").into_bytes().into(),
                range_end: format!("w{w}0").into_bytes().into(),
                ..Default::default()
            };
            let resp = common::kv(c.port(reader)).range(req).await.expect("range after restart").into_inner();
            for kv in resp.kvs {
                found.insert(
                    String::from_utf8_lossy(&kv.key).into_owned(),
                    String::from_utf8_lossy(&kv.value).into_owned(),
                );
            }
        }
        let lost: Vec<_> = acked.iter().filter(|(k, v)| found.get(*k) != Some(v)).collect();
        assert!(
            lost.is_empty(),
            "{} of {} acknowledged writes lost or wrong on {}: {:?}",
            lost.len(),
            acked.len(),
            c.members[reader].name,
            &lost[..lost.len().min(10)]
        );
    }
}

/// A paused leader (SIGSTOP, like a long GC pause) is replaced; when it resumes (SIGCONT) it
/// follows the new leader, catches up, and no write is lost or split.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn paused_leader_is_replaced_and_rejoins_as_follower() {
    let mut c = Cluster::start(3, Opts::default());
    let old = c.wait_leader(START).await;
    c.put_retry(old, "p/before", "1", Duration::from_secs(5)).await;
    c.sigstop(old);
    let survivors: Vec<usize> = (0..3).filter(|&i| i != old).collect();
    let (a, b) = (c.port(survivors[0]), c.port(survivors[1]));
    // The survivors elect a new leader among themselves and take writes.
    let new_leader_id = wait_for("a new leader among the survivors", START, || async move {
        let (sa, sb) = (common::status(a).await.ok()?, common::status(b).await.ok()?);
        let ids = [sa.header?.member_id, sb.header?.member_id];
        (sa.leader != 0 && sa.leader == sb.leader && ids.contains(&sa.leader)).then_some(sa.leader)
    })
    .await;
    c.put_retry(survivors[0], "p/during", "2", Duration::from_secs(10)).await;
    // A linearizable read sent to the paused former leader waits in its socket and is the
    // first thing it sees when it resumes, while it still believes it leads: it must not
    // answer from its stale state (without the write), only with the write or an error.
    let p = c.port(old);
    let read = tokio::spawn(async move { get(p, "p/during", false).await });
    tokio::time::sleep(Duration::from_millis(300)).await;
    c.sigcont(old);
    match read.await.expect("read task") {
        Ok(v) => {
            assert_eq!(v.as_deref(), Some("2"), "stale linearizable read from the resumed former leader")
        }
        Err(e) => eprintln!("read on the resumed former leader refused: {e:?}"),
    }
    // The old leader learns the new term, follows, and serves the write it missed.
    wait_for("the old leader to follow the new one", START, || async move {
        let s = common::status(p).await.ok()?;
        (s.leader == new_leader_id).then_some(())
    })
    .await;
    assert_eq!(get(p, "p/during", false).await.expect("linearizable get").as_deref(), Some("2"));
    // Writes through the old leader go to the new one.
    let rev = put(p, "p/after", "3").await.expect("put through the former leader");
    for i in 0..3 {
        let port = c.port(i);
        for (k, v) in [("p/before", "1"), ("p/during", "2"), ("p/after", "3")] {
            assert_eq!(
                get(port, k, false).await.expect("get").as_deref(),
                Some(v),
                "{k} on {}",
                c.members[i].name
            );
        }
        let s = common::status(port).await.expect("status");
        assert!(s.header.expect("header").revision >= rev);
    }
}
