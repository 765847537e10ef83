//! Backups and migration both ways with etcd 3.4, on real processes: `etcdctl snapshot
//! save` from etcd, `raftkv snapshot restore` into a 3-member raftkv cluster, then
//! `etcdctl snapshot save` from raftkv under write load, `etcdctl snapshot status` and
//! `etcdctl snapshot restore` into etcd 3.4. Every comparison is of Range outputs, key by
//! key, with create and mod revisions, versions and values, at the current revision and at
//! a past one.
//!
//! Without `etcd`/`etcdctl` on PATH the test says so loudly and passes, unless
//! RAFTKV_REQUIRE_ETCD=1 is set.

mod common;

use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use common::{Cluster, EXE, Opts, Proc, die_with_parent, free_ports, have, wait_for};
use raftkv_api::etcdserverpb::lease_client::LeaseClient;
use raftkv_api::etcdserverpb::watch_client::WatchClient;
use raftkv_api::etcdserverpb::{
    CompactionRequest, DeleteRangeRequest, LeaseGrantRequest, LeaseRevokeRequest, PutRequest, RangeRequest,
    RangeResponse, RequestOp, TxnRequest, WatchCreateRequest, WatchRequest, request_op, watch_request,
};
use raftkv_api::mvccpb::KeyValue;

const START: Duration = Duration::from_secs(30);

/// Runs a command to completion; panics with its output if it fails.
fn run(cmd: &mut Command, what: &str) -> String {
    cmd.env("ETCDCTL_API", "3").stdin(Stdio::null());
    let out = cmd.output().unwrap_or_else(|e| panic!("{what}: cannot run: {e}"));
    let (stdout, stderr) = (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "{what} failed: {}\nstdout:\n{stdout}\nstderr:\n{stderr}", out.status);
    stdout.into_owned()
}

/// A one-member etcd on `data_dir` (restored or new).
fn start_etcd(data_dir: &Path, name: &str, ports: (u16, u16), log: &Path) -> Proc {
    let (client, peer) = (format!("http://127.0.0.1:{}", ports.0), format!("http://127.0.0.1:{}", ports.1));
    let logf = std::fs::File::create(log).expect("etcd log");
    let mut cmd = Command::new("etcd");
    cmd.arg("--name")
        .arg(name)
        .arg("--data-dir")
        .arg(data_dir)
        .args(["--listen-client-urls", &client, "--advertise-client-urls", &client])
        .args(["--listen-peer-urls", &peer, "--initial-advertise-peer-urls", &peer])
        .args(["--initial-cluster", &format!("{name}={peer}")])
        .stdin(Stdio::null())
        .stdout(logf.try_clone().expect("dup"))
        .stderr(logf);
    Proc::new("etcd", die_with_parent(&mut cmd).spawn().expect("spawn etcd"), Some(log.to_path_buf()))
}

async fn wait_serving(port: u16) {
    wait_for(&format!("a member serving on {port}"), START, || async move {
        let req = RangeRequest { key: "probe".into(), ..Default::default() };
        match common::kv(port).range(req).await {
            Ok(_) => Some(()),
            // With auth enabled: serving, and asking for a user.
            Err(e) if e.message().contains("user name is empty") => Some(()),
            Err(_) => None,
        }
    })
    .await;
}

/// Keys per Range page (a whole keyspace is more than a gRPC message holds).
const PAGE: i64 = 5000;

/// Everything at `revision` (0: now), in key order, read in pages at one revision (the
/// header is the first page's: it holds the current revision).
async fn everything(port: u16, revision: i64) -> RangeResponse {
    let mut kv = common::kv(port);
    let mut all = RangeResponse::default();
    let (mut from, mut revision) = (vec![0u8], revision);
    loop {
        let req = RangeRequest {
            key: from.clone().into(),
            range_end: vec![0].into(),
            revision,
            limit: PAGE,
            ..Default::default()
        };
        let page = kv.range(req).await.expect("range").into_inner();
        if all.header.is_none() {
            all.header = page.header;
            if revision == 0 {
                revision = all.header.as_ref().map_or(0, |h| h.revision);
            }
        }
        if let Some(last) = page.kvs.last() {
            from = last.key.to_vec();
            from.push(0);
        }
        all.kvs.extend(page.kvs);
        if !page.more {
            all.count = all.kvs.len() as i64;
            return all;
        }
    }
}

type Row = (String, i64, i64, i64, String, i64);

fn rows(r: &RangeResponse) -> Vec<Row> {
    r.kvs
        .iter()
        .map(|kv: &KeyValue| {
            (
                String::from_utf8_lossy(&kv.key).into_owned(),
                kv.create_revision,
                kv.mod_revision,
                kv.version,
                String::from_utf8_lossy(&kv.value).into_owned(),
                kv.lease,
            )
        })
        .collect()
}

/// Asserts that two Range outputs are equal, naming the first row that differs (they are
/// too long to print whole).
fn same_rows(what: &str, a: &[Row], b: &[Row]) {
    for (x, y) in a.iter().zip(b) {
        assert_eq!(x, y, "{what}");
    }
    assert_eq!(a.len(), b.len(), "{what}: row counts (first extra: {:?})", a.get(b.len()).or(b.get(a.len())));
}

/// Asserts that two servers hold the same keys with the same revisions, versions, values
/// and leases.
async fn assert_same(what: &str, a: u16, b: u16, revisions: &[i64]) {
    for &rev in revisions {
        let (ra, rb) = (everything(a, rev).await, everything(b, rev).await);
        let (xa, xb) = (rows(&ra), rows(&rb));
        assert!(!xa.is_empty(), "{what}: nothing at revision {rev}");
        same_rows(&format!("{what}: at revision {rev}"), &xa, &xb);
        if rev == 0 {
            let (ha, hb) = (ra.header.map(|h| h.revision), rb.header.map(|h| h.revision));
            assert_eq!(ha, hb, "{what}: current revisions");
        }
    }
}

/// Puts per transaction (etcd's default `--max-txn-ops`).
const TXN_OPS: usize = 128;
/// Transactions in flight while writing a history.
const TXN_CLIENTS: usize = 8;

/// Writes a history into etcd: keys with several versions (one round of puts after the
/// other, 128 keys a transaction, so versions share revisions), deletions, re-creations, a
/// compaction at the end of the second round.
async fn write_history(port: u16, keys: usize) -> i64 {
    let mut kv = common::kv(port);
    let mut compact_at = 0;
    for round in 0..3 {
        let batches: Vec<Vec<usize>> =
            (0..keys).collect::<Vec<_>>().chunks(TXN_OPS).map(<[usize]>::to_vec).collect();
        let batches = Arc::new(std::sync::Mutex::new(batches.into_iter()));
        let mut clients = Vec::new();
        for _ in 0..TXN_CLIENTS {
            let batches = batches.clone();
            clients.push(tokio::spawn(async move {
                let mut kv = common::kv(port);
                loop {
                    let Some(batch) = batches.lock().expect("batches").next() else { return };
                    let success = batch
                        .into_iter()
                        .map(|k| RequestOp {
                            request: Some(request_op::Request::RequestPut(PutRequest {
                                key: format!("key/{k:06}").into_bytes().into(),
                                value: format!("value {round} of {k} {}", "x".repeat(k % 40))
                                    .into_bytes()
                                    .into(),
                                ..Default::default()
                            })),
                        })
                        .collect();
                    kv.txn(TxnRequest { success, ..Default::default() }).await.expect("txn");
                }
            }));
        }
        for c in clients {
            c.await.expect("writer");
        }
        if round == 1 {
            compact_at = everything(port, 0).await.header.expect("header").revision;
        }
        if round == 0 {
            let del = DeleteRangeRequest {
                key: "key/000010".into(),
                range_end: "key/000020".into(),
                ..Default::default()
            };
            kv.delete_range(del).await.expect("delete");
        }
    }
    let del =
        DeleteRangeRequest { key: "key/000030".into(), range_end: "key/000035".into(), ..Default::default() };
    kv.delete_range(del).await.expect("delete");
    kv.compact(CompactionRequest { revision: compact_at, physical: true }).await.expect("compact");
    compact_at
}

/// The versions etcd's `key` bucket holds at `revision` after a compaction at `compacted`,
/// counted through etcd's API: each key's newest version at the compaction if it is live,
/// and every write since (deletions included), counted by a watch.
async fn versions_held(port: u16, compacted: i64, revision: i64) -> u64 {
    let at_compaction = RangeRequest {
        key: vec![0].into(),
        range_end: vec![0].into(),
        revision: compacted,
        count_only: true,
        ..Default::default()
    };
    let live = common::kv(port).range(at_compaction).await.expect("count").into_inner().count as u64;
    let create = WatchRequest {
        request_union: Some(watch_request::RequestUnion::CreateRequest(WatchCreateRequest {
            key: vec![0].into(),
            range_end: vec![0].into(),
            start_revision: compacted + 1,
            ..Default::default()
        })),
    };
    let (tx, rx) = tokio::sync::mpsc::channel(1);
    tx.send(create).await.expect("watch request");
    // etcd sends a catching-up watcher's events in responses of any size.
    let mut stream = WatchClient::new(common::channel(port))
        .max_decoding_message_size(1 << 30)
        .watch(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await
        .expect("watch")
        .into_inner();
    let mut events = 0u64;
    loop {
        let resp = tokio::time::timeout(START, stream.message())
            .await
            .expect("watch events in time")
            .expect("watch stream")
            .expect("a watch response");
        events += resp
            .events
            .iter()
            .filter(|e| e.kv.as_ref().is_some_and(|kv| kv.mod_revision <= revision))
            .count() as u64;
        if resp.events.last().and_then(|e| e.kv.as_ref()).is_some_and(|kv| kv.mod_revision >= revision) {
            return live + events;
        }
    }
}

fn snapshot_status(file: &Path) -> serde_json::Value {
    let out = run(
        Command::new("etcdctl").args(["snapshot", "status", "-w", "json"]).arg(file),
        "etcdctl snapshot status",
    );
    serde_json::from_str(out.trim()).expect("status json")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn migration_both_ways_with_etcd() {
    if !have("etcd") || !have("etcdctl") {
        return;
    }
    let keys = 100_000;
    let dir = tempfile::Builder::new().prefix("raftkv-backup-").tempdir().expect("temp dir");
    let d = dir.path();

    // 1. etcd 3.4 with a history -> etcdctl snapshot save.
    let p = free_ports(2);
    let etcd = start_etcd(&d.join("etcd-src"), "src", (p[0], p[1]), &d.join("etcd-src.log"));
    wait_serving(p[0]).await;
    let compacted = write_history(p[0], keys).await;
    let from_etcd = d.join("from-etcd.db");
    run(
        Command::new("etcdctl")
            .arg(format!("--endpoints=127.0.0.1:{}", p[0]))
            .args(["snapshot", "save"])
            .arg(&from_etcd),
        "etcdctl snapshot save (etcd)",
    );

    // 2. raftkv snapshot restore into a new 3-member cluster.
    let mut c = Cluster::new(3, Opts::default());
    for i in 0..3 {
        let m = &c.members[i];
        run(
            Command::new(EXE)
                .args(["snapshot", "restore"])
                .arg(&from_etcd)
                .args(["--name", &m.name, "--initial-cluster", &c.initial_cluster])
                .args(["--initial-cluster-token", &c.token, "--initial-advertise-peer-urls", &m.peer_url()])
                .arg("--data-dir")
                // One given with a trailing slash, as shells complete directories.
                .arg(if i == 2 {
                    format!("{}/", m.data_dir.display())
                } else {
                    m.data_dir.display().to_string()
                }),
            "raftkv snapshot restore",
        );
    }
    // A restore refuses an existing data dir.
    let again = Command::new(EXE)
        .args(["snapshot", "restore"])
        .arg(&from_etcd)
        .args(["--name", "m1", "--initial-cluster", &c.initial_cluster, "--initial-cluster-token", &c.token])
        .args(["--initial-advertise-peer-urls", &c.members[0].peer_url()])
        .arg("--data-dir")
        .arg(&c.members[0].data_dir)
        .output()
        .expect("run");
    assert!(!again.status.success() && String::from_utf8_lossy(&again.stderr).contains("exists"));
    for i in 0..3 {
        c.start_member(i);
    }
    c.wait_leader(START).await;
    let past = everything(p[0], 0).await.header.expect("header").revision - 5;
    for i in 0..3 {
        wait_serving(c.port(i)).await;
        assert_same("etcd -> raftkv", p[0], c.port(i), &[0, past]).await;
    }
    // The compaction came along: older revisions are refused on both.
    let old = RangeRequest { key: "key/000001".into(), revision: 3, ..Default::default() };
    let e = common::kv(c.port(0)).range(old.clone()).await.expect_err("compacted");
    assert!(e.message().contains("compacted"), "{e:?}");
    assert!(common::kv(p[0]).range(old).await.is_err());
    drop(etcd);

    // 3. Under write load, etcdctl snapshot save from raftkv: one revision.
    let stop = Arc::new(AtomicBool::new(false));
    let mut writers = Vec::new();
    for w in 0..8 {
        let (port, stop) = (c.port(w % 3), stop.clone());
        writers.push(tokio::spawn(async move {
            let mut kv = common::kv(port);
            let mut n = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let req = PutRequest {
                    key: format!("load/{w}/{}", n % 50).into_bytes().into(),
                    value: format!("{n}").into_bytes().into(),
                    ..Default::default()
                };
                if kv.put(req).await.is_ok() {
                    n += 1;
                }
            }
            n
        }));
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let from_raftkv = d.join("from-raftkv.db");
    let endpoint = format!("--endpoints=127.0.0.1:{}", c.port(1));
    run(
        Command::new("etcdctl").arg(&endpoint).args(["snapshot", "save"]).arg(&from_raftkv),
        "etcdctl snapshot save (raftkv)",
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    stop.store(true, Ordering::Relaxed);
    let mut written = 0;
    for w in writers {
        written += w.await.expect("writer");
    }
    assert!(written > 50, "the load wrote only {written} keys");

    // etcdctl reads the file; its revision is the one the state was taken at.
    let status = snapshot_status(&from_raftkv);
    let revision = status["revision"].as_i64().expect("revision");
    let total = status["totalKey"].as_u64().expect("totalKey");
    assert!(revision > past + 5 && total > keys as u64, "{status}");
    // raftkv's own status command agrees with etcdctl's.
    let ours = run(
        Command::new(EXE).args(["snapshot", "status", "-w", "json"]).arg(&from_raftkv),
        "raftkv snapshot status",
    );
    let ours: serde_json::Value = serde_json::from_str(ours.trim()).expect("json");
    assert_eq!(ours["hash"], status["hash"]);
    assert_eq!(ours["revision"], status["revision"]);
    assert_eq!(ours["totalKey"], status["totalKey"]);

    // 4. etcdctl snapshot restore -> etcd 3.4 serves the state at that revision exactly.
    let q = free_ports(2);
    run(
        Command::new("etcdctl")
            .args(["snapshot", "restore"])
            .arg(&from_raftkv)
            .args(["--name", "dst", "--initial-cluster", &format!("dst=http://127.0.0.1:{}", q[1])])
            .args(["--initial-advertise-peer-urls", &format!("http://127.0.0.1:{}", q[1])])
            .arg("--data-dir")
            .arg(d.join("etcd-dst")),
        "etcdctl snapshot restore",
    );
    let _etcd2 = start_etcd(&d.join("etcd-dst"), "dst", (q[0], q[1]), &d.join("etcd-dst.log"));
    wait_serving(q[0]).await;
    let on_etcd = everything(q[0], 0).await;
    assert_eq!(on_etcd.header.as_ref().map(|h| h.revision), Some(revision), "etcd's revision after restore");
    let at_snapshot = everything(c.port(0), revision).await;
    same_rows("raftkv at the snapshot's revision vs the restored etcd", &rows(&at_snapshot), &rows(&on_etcd));
    assert_same("raftkv -> etcd (past)", c.port(0), q[0], &[past]).await;
    // `snapshot status` counted every entry of every bucket: the versions, the meta
    // bucket's consistent index and compaction revisions, the cluster version and the 3
    // members.
    let versions = versions_held(q[0], compacted, revision).await;
    assert_eq!(total, versions + 3 + 1 + 3, "snapshot status total keys: {status}");

    // A damaged snapshot is refused by raftkv's restore with a clear error.
    let mut bytes = std::fs::read(&from_raftkv).expect("read");
    let at = bytes.len() / 2;
    bytes[at] ^= 0xff;
    let bad = d.join("bad.db");
    std::fs::write(&bad, &bytes).expect("write");
    let out = Command::new(EXE)
        .args(["snapshot", "restore"])
        .arg(&bad)
        .args(["--name", "x", "--initial-cluster", "x=http://127.0.0.1:1", "--initial-advertise-peer-urls"])
        .arg("http://127.0.0.1:1")
        .arg("--data-dir")
        .arg(d.join("bad-restore"))
        .output()
        .expect("run");
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("sha256"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!d.join("bad-restore").exists());
}

/// `raftkv snapshot restore FILE` for every member of `c` (not started).
fn raftkv_restore(file: &Path, c: &Cluster) {
    for m in &c.members {
        run(
            Command::new(EXE)
                .args(["snapshot", "restore"])
                .arg(file)
                .args(["--name", &m.name, "--initial-cluster", &c.initial_cluster])
                .args(["--initial-cluster-token", &c.token, "--initial-advertise-peer-urls", &m.peer_url()])
                .arg("--data-dir")
                .arg(&m.data_dir),
            "raftkv snapshot restore",
        );
    }
}

/// `etcdctl snapshot restore FILE` into `data_dir` and a one-member etcd 3.4 on it.
async fn etcd_restore(file: &Path, data_dir: &Path, log: &Path) -> (Proc, u16) {
    let q = free_ports(2);
    run(
        Command::new("etcdctl")
            .args(["snapshot", "restore"])
            .arg(file)
            .args(["--name", "dst", "--initial-cluster", &format!("dst=http://127.0.0.1:{}", q[1])])
            .args(["--initial-advertise-peer-urls", &format!("http://127.0.0.1:{}", q[1])])
            .arg("--data-dir")
            .arg(data_dir),
        "etcdctl snapshot restore",
    );
    let etcd = start_etcd(data_dir, "dst", (q[0], q[1]), log);
    wait_serving(q[0]).await;
    (etcd, q[0])
}

/// `etcdctl lease timetolive ID --keys`: the line without its remaining TTL, and that TTL.
fn time_to_live(port: u16, id: i64) -> (String, i64) {
    let out = run(
        Command::new("etcdctl").arg(format!("--endpoints=127.0.0.1:{port}")).args([
            "lease",
            "timetolive",
            &format!("{id:x}"),
            "--keys",
        ]),
        "etcdctl lease timetolive",
    );
    let line = out.trim();
    let (Some(at), Some(end)) = (line.find("remaining("), line.find("s), attached")) else {
        return (line.to_string(), 0); // "lease ... already expired"
    };
    let remaining = line[at + "remaining(".len()..end].parse().expect("remaining TTL");
    // etcd lists a lease's keys in no particular order.
    let keys = line[end..].trim_start_matches("s), attached keys([").trim_end_matches("])");
    let mut keys: Vec<&str> = keys.split(' ').collect();
    keys.sort_unstable();
    (format!("{}keys {keys:?}", &line[..at]), remaining)
}

/// Leases of the lease test: (id, TTL).
const LEASES: [(i64, i64); 3] = [(0x1000, 600), (0x2000, 40), (0x3000, 600)];

/// Writes leases with keys: two keys on one lease, one key moved off a lease, a short
/// lease, a lease without keys, and a revoked lease whose key's history names it.
async fn write_leases(port: u16) {
    let mut lc = LeaseClient::new(common::channel(port));
    for (id, ttl) in LEASES.iter().copied().chain([(0x4000, 600)]) {
        lc.lease_grant(LeaseGrantRequest { id, ttl }).await.expect("grant");
    }
    let mut kv = common::kv(port);
    for (key, lease) in
        [("a/1", 0x1000), ("a/2", 0x1000), ("b/1", 0x2000), ("a/2", 0), ("p/1", 0), ("b/2", 0x2000)]
            .into_iter()
            .chain([("a/1", 0x1000), ("d/1", 0x4000)])
    {
        let req = PutRequest {
            key: key.into(),
            value: format!("{key} on {lease:x}").into(),
            lease,
            ..Default::default()
        };
        kv.put(req).await.expect("put");
    }
    lc.lease_revoke(LeaseRevokeRequest { id: 0x4000 }).await.expect("revoke");
}

/// `from` and `to` hold the same leased keys (with their lease ids, also in the history)
/// and leases, `to`'s restarted with their full TTL.
async fn assert_same_leases(what: &str, from: u16, to: u16) {
    let now = everything(from, 0).await;
    assert_same(what, from, to, &[0, now.header.expect("header").revision - 1]).await;
    let leased = rows(&everything(to, 0).await).iter().filter(|r| r.5 != 0).count();
    assert_eq!(leased, 3, "{what}: keys on a lease");
    for (id, ttl) in LEASES {
        let (a, _) = time_to_live(from, id);
        let (b, left) = time_to_live(to, id);
        assert_eq!(a, b, "{what}: lease {id:x}");
        // Not the TTL left at the save (8 s less): counted from the new leader's start
        // (which adds an election timeout, as etcd does).
        assert!(left > ttl - 6 && left <= ttl + 2, "{what}: lease {id:x} restarted with {left}s of {ttl}s");
    }
    let revoked = time_to_live(to, 0x4000).0;
    assert_eq!(time_to_live(from, 0x4000).0, revoked, "{what}: the revoked lease");
    assert!(revoked.contains("already expired"), "{what}: {revoked}");
}

/// Leases with their keys move etcd 3.4 -> raftkv and raftkv -> etcd 3.4 through
/// `etcdctl snapshot save` and the restore commands, and restart with their full TTL.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leases_move_both_ways_with_etcd() {
    if !have("etcd") || !have("etcdctl") {
        return;
    }
    let dir = tempfile::Builder::new().prefix("raftkv-backup-").tempdir().expect("temp dir");
    let d = dir.path();
    let p = free_ports(2);
    let etcd = start_etcd(&d.join("etcd-src"), "src", (p[0], p[1]), &d.join("etcd-src.log"));
    wait_serving(p[0]).await;
    write_leases(p[0]).await;
    // The short lease runs down before the save; a restore restarts it.
    tokio::time::sleep(Duration::from_secs(8)).await;
    let from_etcd = d.join("from-etcd.db");
    run(
        Command::new("etcdctl")
            .arg(format!("--endpoints=127.0.0.1:{}", p[0]))
            .args(["snapshot", "save"])
            .arg(&from_etcd),
        "etcdctl snapshot save (etcd)",
    );
    let mut c = Cluster::new(3, Opts::default());
    raftkv_restore(&from_etcd, &c);
    for i in 0..3 {
        c.start_member(i);
    }
    c.wait_leader(START).await;
    wait_serving(c.port(0)).await;
    assert_same_leases("etcd -> raftkv", p[0], c.port(0)).await;
    drop(etcd);

    // raftkv -> etcd: a fresh raftkv cluster with the same leases.
    let mut src = Cluster::start(3, Opts::default());
    src.wait_leader(START).await;
    write_leases(src.port(0)).await;
    tokio::time::sleep(Duration::from_secs(8)).await;
    let from_raftkv = d.join("from-raftkv.db");
    run(
        Command::new("etcdctl")
            .arg(format!("--endpoints=127.0.0.1:{}", src.port(1)))
            .args(["snapshot", "save"])
            .arg(&from_raftkv),
        "etcdctl snapshot save (raftkv)",
    );
    let (_etcd2, port) = etcd_restore(&from_raftkv, &d.join("etcd-dst"), &d.join("etcd-dst.log")).await;
    assert_same_leases("raftkv -> etcd", src.port(0), port).await;
}

/// etcdctl against `port`: whether it succeeded, and its output.
fn etcdctl_at(port: u16, args: &[&str]) -> (bool, String) {
    let out = Command::new("etcdctl")
        .env("ETCDCTL_API", "3")
        .arg(format!("--endpoints=127.0.0.1:{port}"))
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("run etcdctl");
    (out.status.success(), String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Users, roles and permissions, then auth enabled, as an operator sets them up.
fn set_up_auth(port: u16) {
    for args in [
        &["user", "add", "root:rootpw"][..],
        &["role", "add", "root"],
        &["user", "grant-role", "root", "root"],
        &["role", "add", "r1"],
        &["role", "grant-permission", "r1", "readwrite", "a/", "--prefix"],
        &["role", "grant-permission", "r1", "read", "b"],
        &["user", "add", "alice:alicepw"],
        &["user", "grant-role", "alice", "r1"],
        &["put", "a/1", "one"],
        &["put", "b", "two"],
        &["auth", "enable"],
    ] {
        let (ok, out) = etcdctl_at(port, args);
        assert!(ok, "etcdctl {args:?}: {out}");
    }
}

/// `from` and `to` answer the same to users, roles and permission checks.
fn assert_same_auth(what: &str, from: u16, to: u16) {
    for args in [
        &["--user", "root:rootpw", "user", "list"][..],
        &["--user", "root:rootpw", "user", "get", "alice"],
        &["--user", "root:rootpw", "role", "list"],
        &["--user", "root:rootpw", "role", "get", "r1"],
        &["--user", "alice:alicepw", "get", "a/1"],
        &["--user", "alice:alicepw", "get", "b"],
        &["--user", "alice:alicepw", "put", "b", "no"],
        &["--user", "alice:wrong", "get", "a/1"],
        &["get", "a/1"],
    ] {
        let (a, b) = (etcdctl_at(from, args), etcdctl_at(to, args));
        assert_eq!(a, b, "{what}: etcdctl {args:?}");
        if args[1] == "root:rootpw" {
            assert!(b.0 && !b.1.is_empty(), "{what}: etcdctl {args:?} as root");
        }
    }
    assert!(etcdctl_at(to, &["--user", "alice:alicepw", "get", "a/1"]).0, "{what}: alice reads a/1");
    assert!(
        !etcdctl_at(to, &["--user", "alice:alicepw", "put", "b", "no"]).0,
        "{what}: alice may not write b"
    );
}

/// Users (with their password hashes), roles, permissions and the enabled flag move
/// etcd 3.4 -> raftkv and raftkv -> etcd 3.4 through snapshots.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auth_moves_both_ways_with_etcd() {
    if !have("etcd") || !have("etcdctl") {
        return;
    }
    let dir = tempfile::Builder::new().prefix("raftkv-backup-").tempdir().expect("temp dir");
    let d = dir.path();
    let p = free_ports(2);
    let _etcd = start_etcd(&d.join("etcd-src"), "src", (p[0], p[1]), &d.join("etcd-src.log"));
    wait_serving(p[0]).await;
    set_up_auth(p[0]);
    let from_etcd = d.join("from-etcd.db");
    let (ok, out) =
        etcdctl_at(p[0], &["--user", "root:rootpw", "snapshot", "save", &from_etcd.display().to_string()]);
    assert!(ok, "snapshot save: {out}");
    let mut c = Cluster::new(3, Opts::default());
    raftkv_restore(&from_etcd, &c);
    for i in 0..3 {
        c.start_member(i);
    }
    c.wait_leader(START).await;
    for i in 0..3 {
        let port = c.port(i);
        wait_for("the restored member answering", START, || async move {
            etcdctl_at(port, &["--user", "root:rootpw", "get", "a/1"]).0.then_some(())
        })
        .await;
        assert_same_auth("etcd -> raftkv", p[0], port);
    }

    // raftkv -> etcd: a raftkv cluster set up the same way.
    let mut src = Cluster::start(3, Opts::default());
    src.wait_leader(START).await;
    set_up_auth(src.port(0));
    let from_raftkv = d.join("from-raftkv.db");
    let (ok, out) = etcdctl_at(
        src.port(1),
        &["--user", "root:rootpw", "snapshot", "save", &from_raftkv.display().to_string()],
    );
    assert!(ok, "snapshot save: {out}");
    let (_etcd2, port) = etcd_restore(&from_raftkv, &d.join("etcd-dst"), &d.join("etcd-dst.log")).await;
    assert_same_auth("raftkv -> etcd", src.port(0), port);
}

/// Recovery from a lost quorum (two of three members gone for good), the way etcd documents
/// it: `etcdctl snapshot save` from the survivor, which answers without a leader, then a new
/// cluster restored from that file. Every write the survivor had applied is there, and the
/// new cluster takes writes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_quorum_is_recovered_from_a_survivors_snapshot() {
    if !have("etcdctl") {
        let msg = "\n\n!!!!! etcdctl not on PATH: SKIPPING the lost-quorum recovery test !!!!!\n";
        assert!(std::env::var("RAFTKV_REQUIRE_ETCD").as_deref() != Ok("1"), "{msg}");
        eprintln!("{msg}");
        return;
    }
    let mut c = Cluster::start(3, Opts::default());
    let leader = c.wait_leader(START).await;
    for i in 0..100 {
        c.put_retry(leader, &format!("k/{i:03}"), &format!("v{i}"), START).await;
    }
    let survivor = (leader + 1) % 3;
    let port = c.port(survivor);
    wait_for("the survivor to apply the last write", START, || async move {
        common::get(port, "k/099", true).await.ok().flatten()
    })
    .await;
    for i in (0..3).filter(|i| *i != survivor) {
        c.kill9(i);
    }
    // No quorum: writes fail, the snapshot is still served.
    let put = tokio::time::timeout(Duration::from_secs(3), common::put(port, "lost", "v")).await;
    assert!(!matches!(put, Ok(Ok(_))), "a write committed without a quorum: {put:?}");
    let d = c.dir().to_path_buf();
    let file = d.join("survivor.db");
    run(
        Command::new("etcdctl")
            .arg(format!("--endpoints=127.0.0.1:{port}"))
            .args(["snapshot", "save"])
            .arg(&file),
        "etcdctl snapshot save from the survivor",
    );

    let mut fresh = Cluster::new(1, Opts::default());
    raftkv_restore(&file, &fresh);
    fresh.start_member(0);
    fresh.wait_leader(START).await;
    let new_port = fresh.port(0);
    wait_serving(new_port).await;
    let all = everything(new_port, 0).await;
    assert_eq!(all.kvs.len(), 100, "keys after the restore");
    for (i, kv) in all.kvs.iter().enumerate() {
        assert_eq!(
            (kv.key.as_ref(), kv.value.as_ref()),
            (format!("k/{i:03}").as_bytes(), format!("v{i}").as_bytes())
        );
    }
    fresh.put_retry(0, "after", "recovery", START).await;
}
