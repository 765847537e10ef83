//! A backup taken under load restores to one consistent revision: `etcdctl snapshot save`
//! from a 3-member cluster while 256 clients write, then `raftkv snapshot restore` into a
//! new 3-member cluster. Every write acknowledged at or below the snapshot's revision is
//! there with its value and revision, and nothing written after it.
//!
//! Without `etcdctl` on PATH the test says so loudly and passes, unless
//! RAFTKV_REQUIRE_ETCD=1 is set.

mod common;

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use common::{Cluster, EXE, Opts, have};
use raftkv_api::etcdserverpb::{PutRequest, RangeRequest};

const START: Duration = Duration::from_secs(30);
const CLIENTS: usize = 256;

/// Runs a command to completion; panics with its output if it fails.
fn run(cmd: &mut Command, what: &str) -> String {
    cmd.env("ETCDCTL_API", "3").stdin(Stdio::null());
    let out = cmd.output().unwrap_or_else(|e| panic!("{what}: cannot run: {e}"));
    let (stdout, stderr) = (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "{what} failed: {}\nstdout:\n{stdout}\nstderr:\n{stderr}", out.status);
    stdout.into_owned()
}

/// What one client wrote: each acknowledged key with its value and revision, and the keys
/// whose put failed (they may or may not have been applied).
#[derive(Default)]
struct Written {
    acked: Vec<(String, String, i64)>,
    unknown: Vec<String>,
}

/// Every key under `prefix` on `port` with its value and mod revision, read in pages at one
/// revision; and that revision.
async fn keys_under(port: u16, prefix: &str) -> (BTreeMap<String, (String, i64)>, i64) {
    let mut kv = common::kv(port);
    let mut out = BTreeMap::new();
    let end = format!("{}{}", &prefix[..prefix.len() - 1], (prefix.as_bytes()[prefix.len() - 1] + 1) as char);
    let (mut from, mut revision) = (prefix.as_bytes().to_vec(), 0);
    loop {
        let req = RangeRequest {
            key: from.clone().into(),
            range_end: end.clone().into(),
            revision,
            limit: 5000,
            ..Default::default()
        };
        let page = kv.range(req).await.expect("range").into_inner();
        if revision == 0 {
            revision = page.header.as_ref().expect("header").revision;
        }
        for x in &page.kvs {
            let key = String::from_utf8_lossy(&x.key).into_owned();
            out.insert(key, (String::from_utf8_lossy(&x.value).into_owned(), x.mod_revision));
        }
        if let Some(last) = page.kvs.last() {
            from = last.key.to_vec();
            from.push(0);
        }
        if !page.more {
            return (out, revision);
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn snapshot_under_256_writers_restores_one_revision() {
    if !have("etcdctl") {
        return;
    }
    let mut src = Cluster::start(3, Opts::default());
    src.wait_leader(START).await;
    for i in 0..3 {
        let port = src.port(i);
        common::wait_for(&format!("member {i} serving"), START, || async move {
            common::put(port, "probe", "x").await.ok()
        })
        .await;
    }

    // 256 clients, each writing its own keys (a new key a put) on the 3 members.
    let stop = Arc::new(AtomicBool::new(false));
    let mut clients = Vec::new();
    for c in 0..CLIENTS {
        let (port, stop) = (src.port(c % 3), stop.clone());
        clients.push(tokio::spawn(async move {
            let mut kv = common::kv(port);
            let mut w = Written::default();
            let mut n = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let key = format!("load/{c:03}/{n:06}");
                let value = format!("{c} wrote {n}");
                n += 1;
                let req = PutRequest {
                    key: key.clone().into_bytes().into(),
                    value: value.clone().into_bytes().into(),
                    ..Default::default()
                };
                match kv.put(req).await {
                    Ok(r) => w.acked.push((key, value, r.into_inner().header.expect("header").revision)),
                    Err(_) => w.unknown.push(key),
                }
            }
            w
        }));
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    let dir = tempfile::Builder::new().prefix("raftkv-backup-load-").tempdir().expect("temp dir");
    let file = dir.path().join("under-load.db");
    let saving = Instant::now();
    run(
        Command::new("etcdctl")
            .arg(format!("--endpoints=127.0.0.1:{}", src.port(1)))
            .args(["snapshot", "save"])
            .arg(&file),
        "etcdctl snapshot save",
    );
    let saved_in = saving.elapsed();
    tokio::time::sleep(Duration::from_millis(500)).await;
    stop.store(true, Ordering::Relaxed);
    let mut acked = Vec::new();
    let mut unknown = BTreeSet::new();
    for c in clients {
        let w = c.await.expect("client");
        acked.extend(w.acked);
        unknown.extend(w.unknown);
    }
    let status = run(Command::new("etcdctl").args(["snapshot", "status", "-w", "json"]).arg(&file), "status");
    let status: serde_json::Value = serde_json::from_str(status.trim()).expect("status json");
    let revision = status["revision"].as_i64().expect("revision");
    let before = acked.iter().filter(|w| w.2 <= revision).count();
    let after = acked.len() - before;
    eprintln!(
        "{} acknowledged puts ({} failed), snapshot at revision {revision} saved in {saved_in:?}: {before} at or below it, {after} after",
        acked.len(),
        unknown.len()
    );
    assert!(
        before > CLIENTS && after > CLIENTS,
        "the snapshot was not taken under load: {before} before, {after} after"
    );

    // A new 3-member cluster from the file.
    let mut dst = Cluster::new(3, Opts::default());
    for m in &dst.members {
        run(
            Command::new(EXE)
                .args(["snapshot", "restore"])
                .arg(&file)
                .args(["--name", &m.name, "--initial-cluster", &dst.initial_cluster])
                .args(["--initial-cluster-token", &dst.token, "--initial-advertise-peer-urls", &m.peer_url()])
                .arg("--data-dir")
                .arg(&m.data_dir),
            "raftkv snapshot restore",
        );
    }
    for i in 0..3 {
        dst.start_member(i);
    }
    dst.wait_leader(START).await;
    drop(src);
    let acked_before: HashSet<&str> =
        acked.iter().filter(|w| w.2 <= revision).map(|w| w.0.as_str()).collect();
    for i in 0..3 {
        let port = dst.port(i);
        common::wait_for(&format!("restored member {i} serving"), START, || async move {
            common::get(port, "probe", false).await.ok()
        })
        .await;
        let (restored, at) = keys_under(port, "load/").await;
        assert_eq!(at, revision, "member {i}: the restored cluster's revision");
        for (key, value, rev) in acked.iter().filter(|w| w.2 <= revision) {
            assert_eq!(
                restored.get(key),
                Some(&(value.clone(), *rev)),
                "member {i}: {key}, acknowledged at revision {rev} <= {revision}"
            );
        }
        // Nothing else: no write after the snapshot (of the failed puts, only some at or
        // below its revision may have been applied).
        for (key, (_, rev)) in &restored {
            assert!(*rev <= revision, "member {i}: {key} at revision {rev}, after the snapshot's {revision}");
            assert!(
                acked_before.contains(key.as_str()) || unknown.contains(key),
                "member {i}: {key} was never written"
            );
        }
    }
}
