//! A cluster of real `raftkv` members, each a separate host: its own network namespace with
//! its own address on a private /24 of the run's own (10.77.S.0/24), joined by a bridge in a
//! hub namespace. The root namespace gets one veth into the hub (10.77.S.254), so clients and
//! the nemesis run here and reach every member by its address. Partitions are `iptables`
//! rules inside the members' namespaces; nothing is added to the root namespace's firewall.
//!
//! Everything created is named `rkc<run id>...` and removed on drop (also after a panic or
//! Ctrl-C); `raftkv-chaos cleanup` removes what a killed runner left behind.

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

pub const CLIENT_PORT: u16 = 2379;
pub const PEER_PORT: u16 = 2380;
pub const PREFIX: &str = "rkc";

#[derive(Clone, Debug)]
pub struct ClusterSpec {
    pub members: usize,
    pub binary: PathBuf,
    pub dir: PathBuf,
    pub heartbeat_ms: u64,
    pub election_ms: u64,
    /// Start members with `RAFTKV_UNSAFE_STALE_READS=1` (reads skip ReadIndex).
    pub unsafe_stale_reads: bool,
    /// Hosts created beside the members but not started: room for members added later.
    pub spares: usize,
    /// The binary is etcd (started without raftkv's `server` subcommand).
    pub etcd: bool,
}

impl ClusterSpec {
    /// The runs' usual timing: 100 ms heartbeats, 1 s election timeout.
    pub fn new(members: usize, binary: PathBuf, dir: PathBuf) -> ClusterSpec {
        ClusterSpec {
            members,
            binary,
            dir,
            heartbeat_ms: 100,
            election_ms: 1000,
            unsafe_stale_reads: false,
            spares: 0,
            etcd: false,
        }
    }
}

pub struct Member {
    pub name: String,
    pub ns: String,
    pub ip: Ipv4Addr,
    pub data_dir: PathBuf,
    pub log: PathBuf,
    child: Option<Child>,
    pub paused: bool,
    /// A member of the cluster (false: a spare host, or a member that was removed). Only
    /// active members are started.
    pub active: bool,
    /// Its removal has been asked for: it may stop on its own (told by a peer that applied
    /// the removal) before the MemberRemove call returns.
    pub removing: bool,
    /// For a member added at run time: the `--initial-cluster` it joins with
    /// (`--initial-cluster-state existing`).
    pub join: Option<String>,
}

impl Member {
    pub fn client_url(&self) -> String {
        format!("http://{}:{CLIENT_PORT}", self.ip)
    }
    pub fn peer_url(&self) -> String {
        format!("http://{}:{PEER_PORT}", self.ip)
    }
    pub fn pid(&self) -> Option<i32> {
        self.child.as_ref().map(|c| c.id() as i32)
    }
    pub fn running(&self) -> bool {
        self.child.is_some()
    }
}

pub struct Cluster {
    pub spec: ClusterSpec,
    pub run_id: String,
    pub subnet: u8,
    pub members: Vec<Member>,
    hub: String,
    root_veth: String,
    namespaces: Vec<String>,
    token: String,
    cleaned: bool,
}

fn run(args: &[&str]) -> Result<String, String> {
    let out = Command::new(args[0])
        .args(&args[1..])
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("cannot run {}: {e}", args.join(" ")))?;
    if !out.status.success() {
        return Err(format!("`{}` failed: {}", args.join(" "), String::from_utf8_lossy(&out.stderr).trim()));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn ns_run(ns: &str, args: &[&str]) -> Result<String, String> {
    let mut all = vec!["ip", "netns", "exec", ns];
    all.extend_from_slice(args);
    run(&all)
}

/// Picks an unused 10.77.S.0/24.
fn pick_subnet(seed: u64) -> Result<u8, String> {
    let addrs = run(&["ip", "-4", "-o", "addr", "show"])?;
    let routes = run(&["ip", "-4", "route", "show"])?;
    for k in 0..250u64 {
        let s = ((seed + k) % 250 + 1) as u8;
        let pat = format!("10.77.{s}.");
        if !addrs.contains(&pat) && !routes.contains(&pat) {
            return Ok(s);
        }
    }
    Err("no free 10.77.S.0/24 subnet".into())
}

impl Cluster {
    /// Creates the namespaces and links (members are not started yet).
    pub fn create(spec: ClusterSpec) -> Result<Cluster, String> {
        if !(1..=9).contains(&(spec.members + spec.spares)) {
            return Err("between 1 and 9 members (spares included)".into());
        }
        // The process id counts in the low bits too: two runners started in the same
        // millisecond must not pick the same names.
        let salt =
            (std::process::id() as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 48 ^ crate::history::unix_ms();
        let run_id = format!("{:04x}", salt & 0xffff);
        let subnet = pick_subnet(salt)?;
        std::fs::create_dir_all(&spec.dir)
            .map_err(|e| format!("cannot create {}: {e}", spec.dir.display()))?;
        let hub = format!("{PREFIX}{run_id}-hub");
        let mut c = Cluster {
            token: format!("raftkv-chaos-{run_id}"),
            root_veth: format!("{PREFIX}{run_id}r"),
            hub,
            run_id,
            subnet,
            members: Vec::new(),
            namespaces: Vec::new(),
            spec,
            cleaned: false,
        };
        // From here on, Drop undoes whatever was created.
        c.setup_network()?;
        Ok(c)
    }

    fn setup_network(&mut self) -> Result<(), String> {
        let s = self.subnet;
        run(&["ip", "netns", "add", &self.hub])?;
        self.namespaces.push(self.hub.clone());
        ns_run(&self.hub, &["ip", "link", "set", "lo", "up"])?;
        ns_run(&self.hub, &["ip", "link", "add", "br0", "type", "bridge"])?;
        ns_run(&self.hub, &["ip", "link", "set", "br0", "up"])?;
        let hub_end = format!("{PREFIX}{}h", self.run_id);
        run(&[
            "ip",
            "link",
            "add",
            &self.root_veth,
            "type",
            "veth",
            "peer",
            "name",
            &hub_end,
            "netns",
            &self.hub,
        ])?;
        ns_run(&self.hub, &["ip", "link", "set", &hub_end, "master", "br0", "up"])?;
        run(&["ip", "addr", "add", &format!("10.77.{s}.254/24"), "dev", &self.root_veth])?;
        run(&["ip", "link", "set", &self.root_veth, "up"])?;
        for i in 0..self.spec.members + self.spec.spares {
            let name = format!("m{}", i + 1);
            let ns = format!("{PREFIX}{}-{name}", self.run_id);
            run(&["ip", "netns", "add", &ns])?;
            self.namespaces.push(ns.clone());
            let a = format!("{PREFIX}{}{name}a", self.run_id);
            let b = format!("{PREFIX}{}{name}b", self.run_id);
            run(&[
                "ip", "link", "add", &a, "netns", &ns, "type", "veth", "peer", "name", &b, "netns", &self.hub,
            ])?;
            ns_run(&self.hub, &["ip", "link", "set", &b, "master", "br0", "up"])?;
            let ip = Ipv4Addr::new(10, 77, s, (i + 1) as u8);
            ns_run(&ns, &["ip", "link", "set", "lo", "up"])?;
            ns_run(&ns, &["ip", "link", "set", &a, "name", "eth0"])?;
            ns_run(&ns, &["ip", "addr", "add", &format!("{ip}/24"), "dev", "eth0"])?;
            ns_run(&ns, &["ip", "link", "set", "eth0", "up"])?;
            let data_dir = self.spec.dir.join(&name);
            let log = self.spec.dir.join(format!("{name}.log"));
            let active = i < self.spec.members;
            self.members.push(Member {
                name,
                ns,
                ip,
                data_dir,
                log,
                child: None,
                paused: false,
                active,
                removing: false,
                join: None,
            });
        }
        Ok(())
    }

    fn initial_cluster(&self) -> String {
        self.members[..self.spec.members]
            .iter()
            .map(|m| format!("{}={}", m.name, m.peer_url()))
            .collect::<Vec<_>>()
            .join(",")
    }

    /// Starts member `i` on its data dir (nothing if it runs already or is not a member).
    pub fn start(&mut self, i: usize) -> Result<(), String> {
        if self.members[i].child.is_some() || !self.members[i].active {
            return Ok(());
        }
        let m = &self.members[i];
        let (initial, state) = match &m.join {
            Some(j) => (j.clone(), "existing"),
            None => (self.initial_cluster(), "new"),
        };
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&m.log)
            .map_err(|e| format!("cannot open {}: {e}", m.log.display()))?;
        let log2 = log.try_clone().map_err(|e| e.to_string())?;
        let peer = m.peer_url();
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &m.ns]).arg(&self.spec.binary);
        if !self.spec.etcd {
            cmd.arg("server");
        }
        cmd.args(["--name", &m.name])
            .arg("--data-dir")
            .arg(&m.data_dir)
            .args(["--listen-client-urls", &m.client_url(), "--advertise-client-urls", &m.client_url()])
            .args(["--listen-peer-urls", &peer, "--initial-advertise-peer-urls", &peer])
            .args(["--initial-cluster", &initial, "--initial-cluster-token", &self.token])
            .args(["--initial-cluster-state", state])
            .args(["--heartbeat-interval", &self.spec.heartbeat_ms.to_string()])
            .args(["--election-timeout", &self.spec.election_ms.to_string()])
            // Far below the default (100,000), so that snapshots are taken, sent and restored
            // under the faults too.
            .args(["--snapshot-count", "5000"])
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log2);
        if self.spec.unsafe_stale_reads {
            cmd.env("RAFTKV_UNSAFE_STALE_READS", "1");
        }
        let child = cmd.spawn().map_err(|e| format!("cannot start {}: {e}", m.name))?;
        let m = &mut self.members[i];
        m.child = Some(child);
        m.paused = false;
        Ok(())
    }

    /// A member added to the cluster at run time on host `i` (a spare, or a removed
    /// member's): it will start with a wiped data dir and join the given `--initial-cluster`.
    pub fn enlist(&mut self, i: usize, join: String) -> Result<(), String> {
        self.retire(i)?;
        let m = &mut self.members[i];
        m.active = true;
        m.removing = false;
        m.join = Some(join);
        Ok(())
    }

    /// Host `i` stops being a member: its process is killed and its data dir removed.
    pub fn retire(&mut self, i: usize) -> Result<(), String> {
        self.kill(i);
        let m = &mut self.members[i];
        m.active = false;
        m.removing = false;
        m.join = None;
        match std::fs::remove_dir_all(&m.data_dir) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                Err(format!("cannot remove {}: {e}", m.data_dir.display()))
            }
            _ => Ok(()),
        }
    }

    /// SIGTERM (a graceful stop: a leader hands over first) and waits for the exit, up to
    /// `patience` (then kill -9). Returns whether it exited on its own.
    pub fn stop(&mut self, i: usize, patience: Duration) -> bool {
        let m = &mut self.members[i];
        let Some(mut child) = m.child.take() else { return true };
        let _ = kill(Pid::from_raw(child.id() as i32), Signal::SIGTERM);
        let deadline = std::time::Instant::now() + patience;
        let mut graceful = false;
        while std::time::Instant::now() < deadline {
            if let Ok(Some(_)) = child.try_wait() {
                graceful = true;
                break;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        if !graceful {
            let _ = kill(Pid::from_raw(child.id() as i32), Signal::SIGKILL);
            let _ = child.wait();
        }
        m.paused = false;
        graceful
    }

    pub fn start_all(&mut self) -> Result<(), String> {
        (0..self.members.len()).try_for_each(|i| self.start(i))
    }

    /// Creates the cluster and starts every member; returns it with the client URLs.
    pub fn launch(spec: ClusterSpec) -> Result<(Cluster, Vec<String>), String> {
        let mut c = Cluster::create(spec)?;
        c.start_all()?;
        let endpoints = c.members.iter().map(|m| m.client_url()).collect();
        Ok((c, endpoints))
    }

    /// kill -9 (a paused member too), and reap it.
    pub fn kill(&mut self, i: usize) {
        let m = &mut self.members[i];
        if let Some(mut child) = m.child.take() {
            let _ = kill(Pid::from_raw(child.id() as i32), Signal::SIGKILL);
            let _ = child.wait();
        }
        m.paused = false;
    }

    pub fn pause(&mut self, i: usize) {
        if let Some(pid) = self.members[i].pid() {
            let _ = kill(Pid::from_raw(pid), Signal::SIGSTOP);
            self.members[i].paused = true;
        }
    }

    pub fn resume(&mut self, i: usize) {
        if let Some(pid) = self.members[i].pid() {
            let _ = kill(Pid::from_raw(pid), Signal::SIGCONT);
        }
        self.members[i].paused = false;
    }

    /// Members that exited on their own (not killed by us): name and exit status.
    pub fn exited(&mut self) -> Vec<(usize, String)> {
        let mut out = Vec::new();
        for (i, m) in self.members.iter_mut().enumerate() {
            if let Some(c) = m.child.as_mut()
                && let Ok(Some(status)) = c.try_wait()
            {
                out.push((i, status.to_string()));
                m.child = None;
            }
        }
        out
    }

    /// Drops packets from member `from` arriving at member `to` (all of them, or with
    /// probability `p`).
    pub fn drop_from(&self, from: usize, to: usize, p: f64) -> Result<(), String> {
        let src = self.members[from].ip.to_string();
        let mut args = vec!["iptables", "-w", "-A", "INPUT", "-s", &src];
        let prob = format!("{p:.2}");
        if p < 1.0 {
            args.extend_from_slice(&["-m", "statistic", "--mode", "random", "--probability", &prob]);
        }
        args.extend_from_slice(&["-j", "DROP"]);
        ns_run(&self.members[to].ns, &args).map(|_| ())
    }

    /// Cuts every link between the groups (both directions).
    pub fn partition(&self, groups: &[Vec<usize>]) -> Result<(), String> {
        for (gi, a) in groups.iter().enumerate() {
            for (gj, b) in groups.iter().enumerate() {
                if gi != gj {
                    for &x in a {
                        for &y in b {
                            self.drop_from(x, y, 1.0)?;
                        }
                    }
                }
            }
        }
        Ok(())
    }

    /// Removes every rule in every member's namespace.
    pub fn heal(&self) -> Result<(), String> {
        for m in &self.members {
            ns_run(&m.ns, &["iptables", "-w", "-F", "INPUT"])?;
        }
        Ok(())
    }

    /// Stops every member and removes the namespaces and links. Idempotent.
    pub fn cleanup(&mut self) {
        if self.cleaned {
            return;
        }
        self.cleaned = true;
        for i in 0..self.members.len() {
            self.kill(i);
        }
        for ns in self.namespaces.iter().rev() {
            let _ = run(&["ip", "netns", "del", ns]);
        }
        let _ = run(&["ip", "link", "del", &self.root_veth]);
    }

    pub fn dir(&self) -> &Path {
        &self.spec.dir
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        self.cleanup();
    }
}

/// Removes namespaces and links left by runs that were killed before they could clean up,
/// killing the members still running in them. Returns what it removed.
pub fn cleanup_leftovers() -> Vec<String> {
    let mut removed = Vec::new();
    let list = run(&["ip", "netns", "list"]).unwrap_or_default();
    for line in list.lines() {
        let Some(ns) = line.split_whitespace().next() else { continue };
        if !ns.starts_with(PREFIX) {
            continue;
        }
        for pid in run(&["ip", "netns", "pids", ns]).unwrap_or_default().split_whitespace() {
            if let Ok(pid) = pid.parse::<i32>() {
                let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
            }
        }
        std::thread::sleep(Duration::from_millis(100));
        if run(&["ip", "netns", "del", ns]).is_ok() {
            removed.push(format!("netns {ns}"));
        }
    }
    let links = run(&["ip", "-o", "link", "show"]).unwrap_or_default();
    for line in links.lines() {
        let Some(name) = line.split(':').nth(1).map(|n| n.trim().split('@').next().unwrap_or("").to_string())
        else {
            continue;
        };
        if name.starts_with(PREFIX) && run(&["ip", "link", "del", &name]).is_ok() {
            removed.push(format!("link {name}"));
        }
    }
    removed
}
