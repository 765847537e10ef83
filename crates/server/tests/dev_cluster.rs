//! `raftkv dev`: the local three-member cluster on etcd's ports (2379, 22379, 32379) starts,
//! serves the etcdctl line it prints, stops cleanly on SIGINT and keeps its data.
//! Skipped (loudly) when one of its ports is busy.

mod common;

use std::fs::File;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{EXE, die_with_parent, get, read_log, wait_for};
use nix::sys::signal::{Signal, kill, killpg};
use nix::unistd::Pid;

const CLIENT_PORTS: [u16; 3] = [2379, 22379, 32379];
const PORTS: [u16; 6] = [2379, 2380, 22379, 22380, 32379, 32380];

/// `raftkv dev` in its own process group; the whole group is killed on drop.
struct Dev {
    child: Option<std::process::Child>,
    out: std::path::PathBuf,
    err: std::path::PathBuf,
}

impl Dev {
    fn start(data_dir: &Path, logs: &Path, run: u32) -> Dev {
        let out = logs.join(format!("dev{run}.out"));
        let err = logs.join(format!("dev{run}.err"));
        let mut cmd = Command::new(EXE);
        cmd.arg("dev")
            .arg("--data-dir")
            .arg(data_dir)
            .stdin(Stdio::null())
            .stdout(File::create(&out).expect("out"))
            .stderr(File::create(&err).expect("err"))
            .env("NO_COLOR", "1")
            .process_group(0);
        let child = die_with_parent(&mut cmd).spawn().expect("spawn raftkv dev");
        Dev { child: Some(child), out, err }
    }

    fn pid(&self) -> Pid {
        Pid::from_raw(self.child.as_ref().expect("running").id() as i32)
    }

    /// The member processes: children of `raftkv dev`.
    fn members(&self) -> Vec<Pid> {
        let me = self.pid().as_raw();
        let mut pids = Vec::new();
        for entry in std::fs::read_dir("/proc").expect("/proc").flatten() {
            let Ok(pid) = entry.file_name().to_string_lossy().parse::<i32>() else { continue };
            let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else { continue };
            // pid (comm) state ppid ...
            let after = &stat[stat.rfind(')').map_or(0, |i| i + 1)..];
            let ppid = after.split_whitespace().nth(1).and_then(|p| p.parse::<i32>().ok());
            if ppid == Some(me) {
                pids.push(Pid::from_raw(pid));
            }
        }
        pids
    }

    fn stdout(&self) -> String {
        read_log(&self.out)
    }

    fn logs(&self) -> String {
        format!("--- stdout ---\n{}\n--- stderr ---\n{}", read_log(&self.out), read_log(&self.err))
    }
}

impl Drop for Dev {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = killpg(Pid::from_raw(child.id() as i32), Signal::SIGKILL);
            let _ = child.wait();
        }
        if std::thread::panicking() {
            eprintln!("===== raftkv dev =====\n{}", self.logs());
        }
    }
}

/// Alive and not a zombie.
fn alive(pid: Pid) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => {
            let after = &stat[stat.rfind(')').map_or(0, |i| i + 1)..];
            !after.trim_start().starts_with('Z')
        }
        Err(_) => false,
    }
}

async fn wait_healthy() {
    wait_for("the dev cluster to elect a leader", Duration::from_secs(30), || async {
        let mut leaders = Vec::new();
        for p in CLIENT_PORTS {
            leaders.push(common::status(p).await.ok()?.leader);
        }
        (leaders[0] != 0 && leaders.iter().all(|l| *l == leaders[0])).then_some(())
    })
    .await;
}

/// Sends `sig` (to the dev process, or to its whole group like a terminal's Ctrl-C) and checks
/// that `raftkv dev` and its three members exit cleanly within 10 s.
fn interrupt(dev: &mut Dev, group: bool) {
    let members = dev.members();
    assert_eq!(members.len(), 3, "raftkv dev runs three members: {members:?}");
    let started = Instant::now();
    if group {
        killpg(dev.pid(), Signal::SIGINT).expect("SIGINT to the group");
    } else {
        kill(dev.pid(), Signal::SIGINT).expect("SIGINT");
    }
    let mut child = dev.child.take().expect("running");
    let status = common::wait_exit(&mut child, Duration::from_secs(10));
    let Some(status) = status else {
        dev.child = Some(child);
        panic!("raftkv dev did not exit within 10 s of SIGINT\n{}", dev.logs());
    };
    assert!(status.success(), "raftkv dev exited with {status}\n{}", dev.logs());
    let deadline = started + Duration::from_secs(10);
    while members.iter().any(|&p| alive(p)) {
        assert!(Instant::now() < deadline, "members still running 10 s after SIGINT\n{}", dev.logs());
        std::thread::sleep(Duration::from_millis(20));
    }
    eprintln!("raftkv dev and its members stopped {:?} after SIGINT", started.elapsed());
    let err = read_log(&dev.err);
    assert!(!err.contains("did not stop within"), "{}", dev.logs());
    assert!(!err.contains("ERROR"), "errors while stopping:\n{}", dev.logs());
    assert_eq!(err.matches("shutting down").count(), 3, "each member logs its shutdown\n{}", dev.logs());
    for port in PORTS {
        assert!(std::net::TcpListener::bind(("127.0.0.1", port)).is_ok(), "port {port} still in use");
    }
}

fn etcdctl_available() -> bool {
    Command::new("etcdctl").arg("version").stdout(Stdio::null()).status().is_ok_and(|s| s.success())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dev_cluster_serves_stops_on_sigint_and_keeps_data() {
    if let Some(busy) = PORTS.iter().find(|&&p| std::net::TcpListener::bind(("127.0.0.1", p)).is_err()) {
        eprintln!("\n\n!!!!! port {busy} is busy: SKIPPING the `raftkv dev` smoke test !!!!!\n");
        return;
    }
    let tmp = tempfile::tempdir().expect("temp dir");
    let data = tmp.path().join("dev-data");

    let mut dev = Dev::start(&data, tmp.path(), 1);
    wait_healthy().await;
    let out = wait_for("the etcdctl hint", Duration::from_secs(10), || {
        let out = dev.stdout();
        async move { out.contains("press Ctrl-C").then_some(out) }
    })
    .await;
    assert!(out.contains("starting"), "{out}");
    let put_line =
        out.lines().map(str::trim).find(|l| l.contains("etcdctl") && l.ends_with("put hello world"));
    let put_line = put_line.unwrap_or_else(|| panic!("no etcdctl put line in:\n{out}"));
    let get_line = out.lines().map(str::trim).find(|l| l.contains("etcdctl") && l.ends_with("get hello"));
    let get_line = get_line.unwrap_or_else(|| panic!("no etcdctl get line in:\n{out}"));
    if etcdctl_available() {
        for (line, expected) in [(put_line, "OK\n"), (get_line, "hello\nworld\n")] {
            let o = Command::new("sh").arg("-c").arg(line).output().expect("sh");
            let stdout = String::from_utf8_lossy(&o.stdout);
            assert!(o.status.success(), "{line}: {}", String::from_utf8_lossy(&o.stderr));
            assert_eq!(stdout, expected, "{line}");
        }
    } else {
        eprintln!("\n!!!!! etcdctl is not on PATH: writing through gRPC instead of the printed line !!!!!\n");
        common::put(2379, "hello", "world").await.expect("put");
    }
    interrupt(&mut dev, false);
    drop(dev);

    // Again on the same data: it resumes and still has the key, through every member.
    let mut dev = Dev::start(&data, tmp.path(), 2);
    wait_healthy().await;
    let out = wait_for("the banner", Duration::from_secs(10), || {
        let out = dev.stdout();
        async move { out.contains("press Ctrl-C").then_some(out) }
    })
    .await;
    assert!(out.contains("resuming"), "{out}");
    for p in CLIENT_PORTS {
        assert_eq!(get(p, "hello", false).await.expect("get").as_deref(), Some("world"), "through port {p}");
    }
    interrupt(&mut dev, true);
}
