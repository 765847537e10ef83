//! `etcdctl lock` and `etcdctl elect` (etcd 3.4's, which run clientv3's concurrency recipes
//! over KV, Lease and Watch) against raftkv and, side by side, a real etcd 3.4: the same
//! transcript, lease ids aside. A second locker and a second candidate wait until the
//! holder goes (SIGINT: etcdctl releases its session), an observer reports each leader.
//! Both modes of the harness: plain, and mutual TLS with auth (etcdctl as root).

mod common;

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{
    Access, Cluster, Mode, Opts, Proc, die_with_parent, have, in_both_modes, read_log, start_etcd_in,
};
use nix::sys::signal::Signal;

const START: Duration = Duration::from_secs(20);

/// A long-running etcdctl whose stdout goes to a file.
struct Running {
    proc: Proc,
    out: PathBuf,
}

impl Running {
    fn start(access: &Access, endpoint: &str, args: &[&str], dir: &Path, name: &str) -> Running {
        let out = dir.join(format!("{name}.out"));
        let mut cmd = Command::new("etcdctl");
        cmd.env("ETCDCTL_API", "3")
            .arg(format!("--endpoints={endpoint}"))
            .args(access.etcdctl_flags())
            .args(args)
            .stdin(Stdio::null())
            .stdout(File::create(&out).expect("out"))
            .stderr(File::create(dir.join(format!("{name}.err"))).expect("err"));
        let child = die_with_parent(&mut cmd).spawn().expect("spawn etcdctl");
        Running { proc: Proc::new("etcdctl", child, None), out }
    }

    fn output(&self) -> String {
        read_log(&self.out)
    }

    /// Waits until the output has `lines` lines; the output.
    fn wait_lines(&self, lines: usize, what: &str) -> String {
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            let out = self.output();
            if out.lines().count() >= lines {
                return out;
            }
            assert!(Instant::now() < deadline, "{what}: only {out:?}");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// SIGINT (etcdctl closes its session, releasing the lock or leadership), then the exit.
    fn interrupt(mut self) {
        self.proc.signal(Signal::SIGINT);
        self.proc.wait_exit(Duration::from_secs(10)).expect("etcdctl to exit on SIGINT");
    }
}

/// The lease id in `name/<hex>` keys replaced, so transcripts of two servers compare.
fn normalise(text: &str) -> String {
    text.lines()
        .map(|l| match l.split_once('/') {
            Some((name, id)) if !id.is_empty() && id.chars().all(|c| c.is_ascii_hexdigit()) => {
                format!("{name}/<lease>\n")
            }
            _ => format!("{l}\n"),
        })
        .collect()
}

/// The scenario against the server at `port`; its transcript.
fn scenario(access: &Access, port: u16, dir: &Path) -> Vec<(String, String)> {
    let ep = access.etcdctl_endpoint(port);
    let mut t = Vec::new();
    // A lock around a command: the command sees the key.
    let out =
        access.etcdctl(&ep, &["lock", "lk1", "--", "sh", "-c", "echo \"$ETCD_LOCK_KEY\"; echo done"], "");
    assert_eq!(out.code, Some(0), "lock with a command: {}", out.stderr);
    t.push(("lock with a command".to_string(), normalise(&out.stdout)));

    // A holder, and a second locker that waits for it.
    let holder = Running::start(access, &ep, &["lock", "lk2"], dir, "holder");
    t.push(("holder".to_string(), normalise(&holder.wait_lines(1, "the holder's key"))));
    let mut waiter = Running::start(access, &ep, &["lock", "lk2", "echo", "got it"], dir, "waiter");
    std::thread::sleep(Duration::from_millis(1500));
    assert!(
        waiter.proc.wait_exit(Duration::ZERO).is_none(),
        "a second locker must wait: {}",
        waiter.output()
    );
    assert_eq!(waiter.output(), "", "the second locker ran before the holder went");
    holder.interrupt();
    let status = waiter.proc.wait_exit(Duration::from_secs(15)).expect("the waiter gets the lock");
    assert!(status.success());
    t.push(("waiter".to_string(), normalise(&waiter.output())));

    // An election: a leader, an observer, a second candidate waiting its turn.
    let first = Running::start(access, &ep, &["elect", "el", "p1"], dir, "first");
    t.push(("first candidate".to_string(), normalise(&first.wait_lines(2, "the first leader"))));
    let observer = Running::start(access, &ep, &["elect", "-l", "el"], dir, "observer");
    observer.wait_lines(2, "the observer's first leader");
    let second = Running::start(access, &ep, &["elect", "el", "p2"], dir, "second");
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(second.output(), "", "a second candidate must wait");
    first.interrupt();
    t.push(("second candidate".to_string(), normalise(&second.wait_lines(2, "the second leader"))));
    t.push(("observer".to_string(), normalise(&observer.wait_lines(4, "the observer's second leader"))));
    second.interrupt();
    observer.interrupt();
    t
}

async fn etcdctl_lock_and_elect_like_etcd(mode: Mode) {
    if !have("etcdctl") {
        return;
    }
    let mut c = Cluster::start(1, Opts::in_mode(mode));
    c.wait_leader(START).await;
    let dir = tempfile::tempdir().expect("temp dir");
    let port = c.port(0);
    let ours_dir = dir.path().join("raftkv");
    std::fs::create_dir_all(&ours_dir).expect("dir");
    let access = c.access.clone();
    let ours =
        tokio::task::spawn_blocking(move || scenario(&access, port, &ours_dir)).await.expect("scenario");
    assert_eq!(ours[0].1, "lk1/<lease>\ndone\n", "{ours:?}");
    assert_eq!(ours[2].1, "got it\n", "{ours:?}");
    assert_eq!(ours[5].1, "el/<lease>\np1\nel/<lease>\np2\n", "{ours:?}");
    c.assert_running();

    let etcd_dir = dir.path().join("etcd");
    std::fs::create_dir_all(&etcd_dir).expect("dir");
    let Some(etcd) = start_etcd_in(&etcd_dir, mode).await else {
        eprintln!("no etcd to compare with; raftkv's transcript: {ours:?}");
        return;
    };
    let theirs_dir = dir.path().join("etcd-run");
    std::fs::create_dir_all(&theirs_dir).expect("dir");
    let (access, etcd_port) = (etcd.access.clone(), etcd.client);
    let theirs = tokio::task::spawn_blocking(move || scenario(&access, etcd_port, &theirs_dir))
        .await
        .expect("scenario");
    assert_eq!(ours, theirs, "raftkv vs etcd 3.4");
}
in_both_modes!(etcdctl_lock_and_elect_like_etcd);
