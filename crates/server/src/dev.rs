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
    /// The client and peer ports of m1, m2 and m3 on 127.0.0.1, as CLIENT:PEER pairs
    /// (another set lets a second dev cluster run beside the first, e.g. in tests).
    #[arg(long, value_delimiter = ',', value_parser = parse_port_pair, num_args = 1,
          default_value = "2379:2380,22379:22380,32379:32380")]
    pub ports: Vec<(u16, u16)>,
}

/// The members' names.
pub const NAMES: [&str; 3] = ["m1", "m2", "m3"];

/// `CLIENT:PEER`, two ports.
fn parse_port_pair(s: &str) -> Result<(u16, u16), String> {
    let bad = || format!("expected CLIENT:PEER (two ports), got {s:?}");
    let (client, peer) = s.split_once(':').ok_or_else(bad)?;
    Ok((client.trim().parse().map_err(|_| bad())?, peer.trim().parse().map_err(|_| bad())?))
}

/// (name, client port, peer port) of each member.
fn members(args: &DevArgs) -> Vec<(&'static str, u16, u16)> {
    NAMES.iter().zip(&args.ports).map(|(n, (c, p))| (*n, *c, *p)).collect()
}

pub fn endpoints(args: &DevArgs) -> String {
    members(args).iter().map(|(_, c, _)| format!("127.0.0.1:{c}")).collect::<Vec<_>>().join(",")
}

fn initial_cluster(args: &DevArgs) -> String {
    members(args).iter().map(|(n, _, p)| format!("{n}=http://127.0.0.1:{p}")).collect::<Vec<_>>().join(",")
}

/// The three members share this machine: each gets a third of its cores (at least one).
/// Measured on 2 cores, one worker each instead of two served 12% more puts per CPU second
/// at 256 clients, fewer threads contending for the same cores and fewer wake-ups across
/// them.
fn member_worker_threads() -> usize {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    (cores / NAMES.len()).max(1)
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
        .arg(initial_cluster(args))
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

/// Why the local cluster could not start, or ended.
#[derive(Debug, thiserror::Error)]
pub enum DevError {
    #[error("cannot find the raftkv binary: {0}")]
    CurrentExe(#[source] std::io::Error),
    #[error("cannot create the data directory {path}: {source}")]
    DataDir { path: PathBuf, source: std::io::Error },
    #[error("cannot listen on 127.0.0.1:{port}: {source} (is another raftkv or etcd running?)")]
    Port { port: u16, source: std::io::Error },
    #[error("cannot start {member}: {source}")]
    Spawn { member: &'static str, source: std::io::Error },
    #[error("cannot install a signal handler: {0}")]
    Signal(#[source] std::io::Error),
    #[error("every member exited")]
    AllExited,
    #[error("--ports takes three CLIENT:PEER pairs (m1, m2, m3), got {0}")]
    Ports(usize),
}

fn terminate(child: &Child) {
    if let Some(pid) = child.id() {
        let _ =
            nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), nix::sys::signal::Signal::SIGTERM);
    }
}

/// Fails on the first of `ports` that cannot be listened on at 127.0.0.1.
fn check_ports(ports: impl IntoIterator<Item = u16>) -> Result<(), DevError> {
    for port in ports {
        std::net::TcpListener::bind(("127.0.0.1", port)).map_err(|source| DevError::Port { port, source })?;
    }
    Ok(())
}

/// Runs the cluster until Ctrl-C (or SIGTERM), then stops every member gracefully.
pub async fn run(args: DevArgs) -> Result<(), DevError> {
    if args.ports.len() != NAMES.len() {
        return Err(DevError::Ports(args.ports.len()));
    }
    let exe = std::env::current_exe().map_err(DevError::CurrentExe)?;
    std::fs::create_dir_all(&args.data_dir)
        .map_err(|source| DevError::DataDir { path: args.data_dir.clone(), source })?;
    check_ports(members(&args).into_iter().flat_map(|(_, client, peer)| [client, peer]))?;
    let resumed = args.data_dir.join("m1").join("member").exists();
    let mut children = Vec::new();
    for (name, client, peer) in members(&args) {
        let child = spawn_member(&exe, &args, name, client, peer)
            .map_err(|source| DevError::Spawn { member: name, source })?;
        children.push((name, child));
    }
    println!(
        "raftkv dev: 3 members {} (data in {})",
        if resumed { "resuming" } else { "starting" },
        args.data_dir.display()
    );
    for (name, client, peer) in members(&args) {
        println!("  {name}: client http://127.0.0.1:{client}  peer http://127.0.0.1:{peer}");
    }
    println!("try:\n  ETCDCTL_API=3 etcdctl --endpoints={} put hello world", endpoints(&args));
    println!("  ETCDCTL_API=3 etcdctl --endpoints={} get hello", endpoints(&args));
    println!("press Ctrl-C to stop");

    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .map_err(DevError::Signal)?;
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
        _ = watch => Err(DevError::AllExited),
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

#[cfg(test)]
mod tests {
    use super::*;

    /// `--ports` takes CLIENT:PEER pairs.
    #[test]
    fn port_pairs_parse() {
        assert_eq!(parse_port_pair("2379:2380"), Ok((2379, 2380)));
        assert!(parse_port_pair("2379").is_err());
        assert!(parse_port_pair("2379:x").is_err());
    }

    /// A busy port stops `raftkv dev` before any member starts, naming the port and the cause.
    #[test]
    fn a_busy_port_is_named() {
        let held = std::net::TcpListener::bind(("127.0.0.1", 0)).expect("bind");
        let busy = held.local_addr().expect("addr").port();
        let free = {
            let l = std::net::TcpListener::bind(("127.0.0.1", 0)).expect("bind");
            l.local_addr().expect("addr").port()
        };
        assert!(check_ports([free]).is_ok());
        let e = check_ports([free, busy]).expect_err("busy port");
        let DevError::Port { port, source } = &e else { panic!("expected a port error, got {e:?}") };
        assert_eq!(*port, busy);
        assert_eq!(source.kind(), std::io::ErrorKind::AddrInUse);
        let text = e.to_string();
        assert!(text.starts_with(&format!("cannot listen on 127.0.0.1:{busy}: ")), "{text}");
        assert!(text.ends_with("(is another raftkv or etcd running?)"), "{text}");
    }
}
