//! Maintenance on real processes: periodic auto-compaction (`--auto-compaction-mode
//! periodic --auto-compaction-retention 2s`) compacts on every member to a revision at
//! least a retention old, and Maintenance.Hash agrees across members at the same revision.

mod common;

use std::time::{Duration, Instant};

use common::{Cluster, Opts};
use raftkv_api::etcdserverpb::{HashKvRequest, HashRequest, RangeRequest};

const START: Duration = Duration::from_secs(30);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn periodic_auto_compaction_and_hash() {
    let retention = Duration::from_secs(2);
    let opts = Opts {
        extra: vec![
            "--auto-compaction-mode".into(),
            "periodic".into(),
            "--auto-compaction-retention".into(),
            "2s".into(),
        ],
        ..Opts::default()
    };
    // The retention counts from the members' start: the compactor samples revisions from then.
    let began = Instant::now();
    let mut c = Cluster::start(3, opts);
    let leader = c.wait_leader(START).await;
    let port = c.port(leader);
    // Write for a while, remembering when each revision was acknowledged.
    let mut acked: Vec<(Instant, i64)> = Vec::new();
    let mut compacted = None;
    while began.elapsed() < Duration::from_secs(40) {
        let rev = c.put_retry(leader, &format!("k{}", acked.len() % 20), "v", Duration::from_secs(10)).await;
        acked.push((Instant::now(), rev));
        let hk = common::maintenance(port)
            .hash_kv(HashKvRequest { revision: 0 })
            .await
            .expect("hashkv")
            .into_inner();
        if hk.compact_revision > 0 {
            compacted = Some((Instant::now(), hk.compact_revision));
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let (seen_at, rev) = compacted.expect("no auto-compaction within 40 s");
    // The compaction target was sampled at least a retention before we saw it: it is at
    // most the revision of the first write acknowledged after (seen_at - retention).
    let bound = acked.iter().find(|(t, _)| *t + retention >= seen_at).map(|&(_, r)| r).expect("acked");
    assert!(rev <= bound, "compacted to {rev}, above {bound}, the revision of a retention before");
    assert!(began.elapsed() >= retention, "compacted before a retention passed");
    // Every member refuses the compacted revisions (the compaction went through the log).
    for i in 0..3 {
        let p = c.port(i);
        common::wait_for("the compaction on every member", START, || async move {
            let req =
                RangeRequest { key: "k1".into(), revision: 1, serializable: true, ..Default::default() };
            match common::kv(p).range(req).await {
                Err(e) if e.message().contains("compacted") => Some(()),
                _ => None,
            }
        })
        .await;
    }
    // Maintenance.Hash: equal on all members once they are at the same revision.
    common::wait_for("equal hashes at one revision", START, || async {
        let mut seen = Vec::new();
        for i in 0..3 {
            let r = common::maintenance(c.port(i)).hash(HashRequest {}).await.ok()?.into_inner();
            seen.push((r.header?.revision, r.hash));
        }
        seen.iter().all(|s| *s == seen[0]).then_some(())
    })
    .await;
    // And it changes with the state.
    let before = common::maintenance(port).hash(HashRequest {}).await.expect("hash").into_inner().hash;
    c.put_retry(leader, "another", "value", Duration::from_secs(10)).await;
    let after = common::maintenance(port).hash(HashRequest {}).await.expect("hash").into_inner().hash;
    assert_ne!(before, after);
}

/// A member stopped (SIGTERM) while a client reads its snapshot ends the stream with
/// `etcdserver: server stopped` at once, rather than leaving the client with a stream that
/// is cut off when the process exits; the stream never ends as if complete.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_snapshot_stream_ends_with_an_error_when_the_member_stops() {
    use raftkv_api::etcdserverpb::{PutRequest, SnapshotRequest};
    let mut c = Cluster::start(1, Opts::default());
    c.wait_leader(START).await;
    let port = c.port(0);
    let mut kv = common::kv(port);
    for i in 0..64 {
        let req = PutRequest {
            key: format!("big/{i}").into(),
            value: vec![b'v'; 64 << 10].into(),
            ..Default::default()
        };
        kv.put(req).await.expect("put");
    }
    let mut stream =
        common::maintenance(port).snapshot(SnapshotRequest {}).await.expect("snapshot").into_inner();
    let first = stream.message().await.expect("first message").expect("a message");
    assert!(first.remaining_bytes > 1 << 20, "a long snapshot: {} bytes left", first.remaining_bytes);
    let pid = c.members[0].pid().expect("running");
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).expect("SIGTERM");
    let stopped = Instant::now();
    let end = loop {
        match tokio::time::timeout(Duration::from_secs(10), stream.message()).await {
            Err(_) => panic!("the snapshot stream hangs after the member stopped"),
            Ok(Ok(Some(_))) => {}
            Ok(Ok(None)) => panic!("the snapshot stream ended as if complete after the member stopped"),
            Ok(Err(status)) => break status,
        }
    };
    assert_eq!(
        (end.code(), end.message()),
        (tonic::Code::Unavailable, "etcdserver: server stopped"),
        "{end:?}"
    );
    assert!(stopped.elapsed() < Duration::from_secs(2), "ended {:?} after SIGTERM", stopped.elapsed());
}

/// Compaction that leaves the history store mostly garbage has it rewritten in the
/// background (the defragmentation's batched copy), not by the applier: the database
/// shrinks without a Maintenance.Defragment call, the member logs the rewrite, and
/// writes keep being served meanwhile.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compaction_has_the_history_store_rewritten_in_the_background() {
    use raftkv_api::etcdserverpb::{CompactionRequest, PutRequest};
    let mut c = Cluster::start(1, Opts::default());
    c.wait_leader(START).await;
    let port = c.port(0);
    // 48 MiB of superseded values (past the 16 MiB rewrite threshold), over 64 keys.
    let mut writers = Vec::new();
    for w in 0..8u32 {
        writers.push(tokio::spawn(async move {
            let mut kv = common::kv(port);
            let mut rev = 0;
            for i in 0..768u32 {
                let req = PutRequest {
                    key: format!("hist/{}", (w * 768 + i) % 64).into(),
                    value: vec![b'a' + (i % 26) as u8; 8 << 10].into(),
                    ..Default::default()
                };
                rev = kv.put(req).await.expect("put").into_inner().header.expect("header").revision;
            }
            rev
        }));
    }
    let mut newest = 0;
    for w in writers {
        newest = newest.max(w.await.expect("writer"));
    }
    let before = common::status(port).await.expect("status").db_size;
    assert!(before > 40 << 20, "the history holds the superseded values: {before} bytes");
    common::kv(port).compact(CompactionRequest { revision: newest, physical: true }).await.expect("compact");
    // Served while the rewrite runs.
    common::put(port, "after", "compaction").await.expect("put after the compaction");
    let after = common::wait_for("the history store rewritten", START, || async move {
        let s = common::status(port).await.ok()?;
        (s.db_size < 8 << 20).then_some(s.db_size)
    })
    .await;
    assert_eq!(common::get(port, "after", false).await.expect("get").as_deref(), Some("compaction"));
    let log = common::read_log(&c.members[0].log_path);
    assert!(
        log.contains("rewrote the history store after compaction"),
        "{before} -> {after} bytes without the background rewrite:\n{log}"
    );
}
