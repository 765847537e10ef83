//! What the `raftkv-bench` tests share: a one-member `raftkv server` (the release binary
//! beside `raftkv-bench`: `cargo build --release -p raftkv` first) and running the generator.

use std::ffi::OsStr;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};

pub const BENCH: &str = env!("CARGO_BIN_EXE_raftkv-bench");

/// The `raftkv` binary of the same build.
fn server_exe() -> PathBuf {
    let exe = Path::new(BENCH).with_file_name("raftkv");
    assert!(exe.exists(), "{} not found: build it with `cargo build --release -p raftkv`", exe.display());
    exe
}

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).map(|a| a.port()).expect("a free port")
}

/// A running member, killed (and reaped) when dropped.
pub struct Member {
    child: Child,
    _dir: tempfile::TempDir,
    /// Its client URL.
    pub url: String,
}

impl Drop for Member {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A one-member cluster on free ports, its client URLs with `client_scheme` (plain peer
/// port), with `extra` flags.
pub fn start_member<S: AsRef<OsStr>>(client_scheme: &str, extra: &[S]) -> Member {
    let dir = tempfile::tempdir().expect("a temp dir");
    let (client, peer) = (free_port(), free_port());
    let url = format!("{client_scheme}://127.0.0.1:{client}");
    let peer_url = format!("http://127.0.0.1:{peer}");
    let child = Command::new(server_exe())
        .arg("server")
        .args(["--name", "b1"])
        .arg("--data-dir")
        .arg(dir.path().join("b1"))
        .args(["--listen-client-urls", &url, "--advertise-client-urls", &url])
        .args(["--listen-peer-urls", &peer_url, "--initial-advertise-peer-urls", &peer_url])
        .args(["--initial-cluster", &format!("b1={peer_url}")])
        .args(extra)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("raftkv server starts");
    Member { child, _dir: dir, url }
}

/// Runs `raftkv-bench --endpoints endpoint --json --quiet args...`.
pub fn run_bench<S: AsRef<OsStr>>(endpoint: &str, args: &[S]) -> Output {
    Command::new(BENCH)
        .args(["--endpoints", endpoint, "--json", "--quiet"])
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("raftkv-bench runs")
}

/// The JSON line of a run that exited successfully.
pub fn json(out: &Output) -> Option<serde_json::Value> {
    if !out.status.success() {
        return None;
    }
    serde_json::from_str(String::from_utf8_lossy(&out.stdout).lines().last()?).ok()
}
