//! `raftkv-bench` against a one-member `raftkv server`: the JSON result line parses, some
//! puts succeeded, none failed. The server binary is the release `raftkv` beside
//! `raftkv-bench` (`cargo build --release -p raftkv` first, as scripts/test does).

use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const BENCH: &str = env!("CARGO_BIN_EXE_raftkv-bench");

/// The `raftkv` binary of the same build.
fn server_exe() -> std::path::PathBuf {
    let exe = std::path::Path::new(BENCH).with_file_name("raftkv");
    assert!(exe.exists(), "{} not found: build it with `cargo build --release -p raftkv`", exe.display());
    exe
}

/// A running member, killed (and reaped) when dropped.
struct Member {
    child: Child,
    _dir: tempfile::TempDir,
    client: String,
}

impl Drop for Member {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).map(|a| a.port()).expect("a free port")
}

fn start_member() -> Member {
    let dir = tempfile::tempdir().expect("a temp dir");
    let (client, peer) = (free_port(), free_port());
    let client_url = format!("http://127.0.0.1:{client}");
    let peer_url = format!("http://127.0.0.1:{peer}");
    let child = Command::new(server_exe())
        .arg("server")
        .args(["--name", "b1"])
        .arg("--data-dir")
        .arg(dir.path().join("b1"))
        .args(["--listen-client-urls", &client_url, "--advertise-client-urls", &client_url])
        .args(["--listen-peer-urls", &peer_url, "--initial-advertise-peer-urls", &peer_url])
        .args(["--initial-cluster", &format!("b1={peer_url}")])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("raftkv server starts");
    Member { child, _dir: dir, client: format!("127.0.0.1:{client}") }
}

/// Runs `raftkv-bench` with `args`; returns its JSON line if it exited successfully.
fn bench(endpoint: &str, args: &[&str]) -> Option<serde_json::Value> {
    let out = Command::new(BENCH)
        .args(["--endpoints", endpoint, "--json", "--quiet"])
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("raftkv-bench runs");
    if !out.status.success() {
        return None;
    }
    let stdout = String::from_utf8_lossy(&out.stdout);
    serde_json::from_str(stdout.lines().last()?).ok()
}

#[test]
fn bench_puts_against_one_member() {
    let member = start_member();
    // Ready once a single put succeeds (listening, leader elected).
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let ready = bench(&member.client, &["--op", "put", "--total", "1", "--timeout", "2"])
            .is_some_and(|j| j["ops"] == 1 && j["error_count"] == 0);
        if ready {
            break;
        }
        assert!(Instant::now() < deadline, "the member did not accept a put within 30 s");
        std::thread::sleep(Duration::from_millis(200));
    }

    let j = bench(&member.client, &["--op", "put", "--duration", "2", "--clients", "4", "--conns", "2"])
        .expect("raftkv-bench succeeds and prints a JSON line");
    assert_eq!(j["op"], "put");
    assert_eq!(j["clients"], 4);
    let ops = j["ops"].as_u64().expect("ops is a number");
    assert!(ops > 0, "no successful puts: {j}");
    assert_eq!(j["error_count"], 0, "errors: {j}");
    assert!(j["errors"].as_object().is_some_and(|e| e.is_empty()), "errors: {j}");
    assert!(j["ops_per_sec"].as_f64().is_some_and(|r| r > 0.0), "{j}");
    for p in ["p50_ms", "p90_ms", "p99_ms", "p999_ms", "max_ms"] {
        assert!(j[p].as_f64().is_some_and(|v| v > 0.0), "{p} missing: {j}");
    }
    assert!(j["p50_ms"].as_f64() <= j["max_ms"].as_f64(), "{j}");
}
