//! The Python `etcd3` client (PyPI etcd3 0.12.0) against a three-member raftkv cluster: KV and
//! Txn, watch (key, prefix, start revision, prev_kv, cancel, callbacks, on another member),
//! leases (keys, time to live, refresh, revoke, expiry seen by watches on every member) and its
//! `Lock` (contended, released, expiring holder). The script, tests/python/etcd3_client.py,
//! runs against a real etcd 3.4 first when etcd is installed, so its expectations are etcd's.
//!
//! The interpreter: `$RAFTKV_PYTHON`, else `target/py-clients/bin/python` (made by .ci/run
//! from tests/python/requirements.txt), else `python3`. Without the client the test is skipped
//! loudly, or fails under `RAFTKV_REQUIRE_ETCD=1` (CI).
//!
//! Both modes of the harness: in secure mode etcd and raftkv serve mutual TLS with auth
//! enabled, and the script connects with `ca_cert`/`cert_key`/`cert_cert` and as root.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use common::{Access, Cluster, Mode, Opts, in_both_modes, start_etcd_in};

const START: Duration = Duration::from_secs(20);
/// The script's checks take about 15 s; generous for a machine shared with builds.
const SCRIPT_TIMEOUT: Duration = Duration::from_secs(240);

fn script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/python/etcd3_client.py")
}

/// A Python interpreter that can `import etcd3`, if there is one.
fn python() -> Option<PathBuf> {
    let venv = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target/py-clients/bin/python");
    let candidates: Vec<PathBuf> = match std::env::var_os("RAFTKV_PYTHON") {
        Some(p) => vec![PathBuf::from(p)],
        None => vec![venv, PathBuf::from("python3")],
    };
    let found = candidates.into_iter().find(|py| {
        Command::new(py)
            .args(["-c", "import etcd3"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    });
    if found.is_none() {
        let msg = "\n\n!!!!! no Python with the `etcd3` client: SKIPPING the python-etcd3 interop test. \
                   Install it with `python3 -m venv target/py-clients && target/py-clients/bin/pip \
                   install -r crates/server/tests/python/requirements.txt` !!!!!\n";
        assert!(std::env::var("RAFTKV_REQUIRE_ETCD").as_deref() != Ok("1"), "{msg}");
        eprintln!("{msg}");
    }
    found
}

/// Runs the script against `endpoints`; panics with its output unless every check passed.
fn run_script(py: &Path, access: &Access, endpoints: &[String], against: &str, dir: &Path) {
    let mut cmd = Command::new(py);
    cmd.arg(script()).args(endpoints).env("PYTHONUNBUFFERED", "1").envs(access.client_env());
    let out = dir.join(format!("python-{against}.out"));
    common::run_client_checks(cmd, "python etcd3", against, &out, SCRIPT_TIMEOUT, |_| false);
}

async fn python_etcd3_client_kv_watch_lease_lock(mode: Mode) {
    let Some(py) = python() else { return };
    let dir = tempfile::tempdir().expect("temp dir");

    // etcd 3.4 first: the script's expectations are etcd's behaviour.
    if let Some(etcd) = start_etcd_in(dir.path(), mode).await {
        run_script(&py, &etcd.access, &[format!("127.0.0.1:{}", etcd.client)], "etcd 3.4", dir.path());
        drop(etcd);
    }

    let mut c = Cluster::start(3, Opts::in_mode(mode));
    c.wait_leader(START).await;
    // Writes through one member, watches on it and on another.
    let endpoints: Vec<String> =
        c.members[..2].iter().map(|m| format!("127.0.0.1:{}", m.client_port)).collect();
    run_script(&py, &c.access, &endpoints, "raftkv", dir.path());
    c.assert_running();
}
in_both_modes!(python_etcd3_client_kv_watch_lease_lock);
