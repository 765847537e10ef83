//! etcd's Go client (`go.etcd.io/etcd/clientv3` 3.4, the client Kubernetes and most Go
//! applications embed) against a three-member raftkv cluster: KV and Txn (sorting, limits,
//! revisions, compaction, etcd's errors for too many operations, an empty key, an unknown
//! lease, compacted and future revisions), watches (replay from a revision on two members,
//! prev_kv, filters, created and requested progress notifications, `WithRequireLeader`, a
//! compacted start revision), leases (keys, time to live, keep-alives, revoke, expiry seen by
//! a watch) and the concurrency package (contended `Mutex`, a holder whose session lease
//! expires, `Election` campaign/observe/proclaim/resign, `STM` increments from four
//! goroutines on two members). The program, tests/go/clientv3_check.go, runs against a real
//! etcd 3.4 first when etcd is installed, so its expectations are etcd's.
//!
//! It is built with Debian's Go (`golang-go`) and etcd's Go sources (`golang-etcd-server-dev`,
//! the same 3.4 release as `etcd-server`) in GOPATH mode, offline. Without them the test is
//! skipped loudly, or fails under `RAFTKV_REQUIRE_ETCD=1` (CI installs both).
//!
//! Both modes of the harness: in secure mode etcd and raftkv serve mutual TLS with auth
//! enabled, and the program connects with the client certificate and as root.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use common::{Access, Cluster, Mode, Opts, in_both_modes, start_etcd_in};

const START: Duration = Duration::from_secs(20);
/// The program's checks take about 10 s; generous for a machine shared with builds.
const PROGRAM_TIMEOUT: Duration = Duration::from_secs(240);
/// Debian's GOPATH, where `golang-etcd-server-dev` puts etcd's sources and their dependencies.
const GOPATH: &str = "/usr/share/gocode";

fn source_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/go")
}

/// Builds the program into `dir`; None (with a loud message, or a failure under
/// `RAFTKV_REQUIRE_ETCD=1`) when Go or etcd's Go sources are missing.
fn build(dir: &Path) -> Option<PathBuf> {
    let have_go = Command::new("go").arg("version").stdout(Stdio::null()).status().is_ok_and(|s| s.success());
    let have_sources = Path::new(GOPATH).join("src/go.etcd.io/etcd/clientv3").is_dir();
    if !(have_go && have_sources) {
        let msg = "\n\n!!!!! no Go toolchain or no etcd Go sources: SKIPPING the Go clientv3 interop test. \
                   Install them with `apt-get install golang-go golang-etcd-server-dev` !!!!!\n";
        assert!(std::env::var("RAFTKV_REQUIRE_ETCD").as_deref() != Ok("1"), "{msg}");
        eprintln!("{msg}");
        return None;
    }
    let out = dir.join("clientv3_check");
    let cache = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target/go-cache");
    let built = Command::new("go")
        .args(["build", "-o"])
        .arg(&out)
        .arg(".")
        .current_dir(source_dir())
        .env("GO111MODULE", "off")
        .env("GOPATH", GOPATH)
        .env("GOCACHE", cache)
        .env("GOFLAGS", "")
        .stdin(Stdio::null())
        .output()
        .expect("run go build");
    assert!(
        built.status.success(),
        "go build of tests/go/clientv3_check.go failed:\n{}{}",
        String::from_utf8_lossy(&built.stdout),
        String::from_utf8_lossy(&built.stderr)
    );
    Some(out)
}

/// Runs the program against `endpoints` (the first and another); panics with its output
/// unless every check passed.
fn run(program: &Path, access: &Access, endpoints: &[String], against: &str, dir: &Path) {
    let mut cmd = Command::new(program);
    cmd.args(endpoints).envs(access.client_env());
    let out = dir.join(format!("clientv3-{against}.out"));
    // The client's own warnings (a JSON line per refused call it retried) left out.
    common::run_client_checks(cmd, "Go clientv3", against, &out, PROGRAM_TIMEOUT, |l| {
        l.starts_with("{\"level\":")
    });
}

async fn go_clientv3_kv_watch_lease_concurrency(mode: Mode) {
    let dir = tempfile::tempdir().expect("temp dir");
    let Some(program) = build(dir.path()) else { return };

    // etcd 3.4 first: the program's expectations are etcd's behaviour.
    if let Some(etcd) = start_etcd_in(dir.path(), mode).await {
        let endpoint = format!("127.0.0.1:{}", etcd.client);
        run(&program, &etcd.access, &[endpoint.clone(), endpoint], "etcd 3.4", dir.path());
        drop(etcd);
    }

    let mut c = Cluster::start(3, Opts::in_mode(mode));
    c.wait_leader(START).await;
    // Most calls through one member; watches, a session and STM clients on another.
    let endpoints: Vec<String> =
        c.members[..2].iter().map(|m| format!("127.0.0.1:{}", m.client_port)).collect();
    run(&program, &c.access, &endpoints, "raftkv", dir.path());
    c.assert_running();
}
in_both_modes!(go_clientv3_kv_watch_lease_concurrency);
