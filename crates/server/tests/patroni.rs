//! Patroni (Debian's `patroni` and `postgresql`) on raftkv: a two-node PostgreSQL whose
//! Patroni keeps its state in a three-member raftkv cluster through the `etcd3` DCS, which
//! speaks etcd's JSON gateway (`/v3/lease/grant`, `/v3/lease/keepalive`, `/v3/kv/*` and the
//! streaming `/v3/watch`). A leader is elected, the replica streams, kill -9 of the primary
//! (Patroni and its postmaster) promotes the replica within Patroni's TTL, and the old primary,
//! restarted, rejoins as a replica of the new one.
//!
//! PostgreSQL refuses to run as root: as root the test runs Patroni as the `postgres` system
//! user (made with `useradd` when missing); as another user, as that user. Without Patroni or
//! PostgreSQL the test is skipped loudly, or fails under `RAFTKV_REQUIRE_ETCD=1` (CI).

mod common;

use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{Cluster, Opts, Proc, die_with_parent, free_ports, wait_for};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use raftkv_api::etcdserverpb::RangeRequest;

const START: Duration = Duration::from_secs(20);
/// Patroni's DCS timing (bootstrap.dcs): the leader key's lease TTL, the HA loop's period
/// and the DCS retry budget (loop_wait + 2 * retry_timeout <= ttl, as Patroni advises).
const TTL: u64 = 10;
const LOOP_WAIT: u64 = 2;
const RETRY_TIMEOUT: u64 = 4;
/// initdb, the base backup and the first start of each node on a machine shared with builds.
const BOOTSTRAP: Duration = Duration::from_secs(90);
const SCOPE: &str = "raftkv-patroni";
/// The system user that runs PostgreSQL when the test runs as root.
const PG_USER: &str = "postgres";

/// PostgreSQL's newest installed bin dir (Debian: /usr/lib/postgresql/<major>/bin).
fn pg_bin_dir() -> Option<PathBuf> {
    let mut dirs: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .ok()?
        .filter_map(|e| {
            let e = e.ok()?;
            let major = e.file_name().to_str()?.parse::<u32>().ok()?;
            let bin = e.path().join("bin");
            bin.join("postgres").exists().then_some((major, bin))
        })
        .collect();
    dirs.sort();
    dirs.pop().map(|(_, bin)| bin)
}

fn have_patroni() -> bool {
    Command::new("patroni")
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// Skips loudly, or fails under `RAFTKV_REQUIRE_ETCD=1`.
fn skip(why: &str) {
    let msg = format!("\n\n!!!!! {why}: SKIPPING the Patroni test !!!!!\n");
    assert!(std::env::var("RAFTKV_REQUIRE_ETCD").as_deref() != Ok("1"), "{msg}");
    eprintln!("{msg}");
}

/// This process's (effective uid, gid): the owner of /proc/self.
fn own_ids() -> (u32, u32) {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata("/proc/self").map_or((u32::MAX, u32::MAX), |m| (m.uid(), m.gid()))
}

/// `id -u NAME` / `id -g NAME`.
fn id_of(flag: &str, name: &str) -> Option<u32> {
    let out = Command::new("id").args([flag, name]).stderr(Stdio::null()).output().ok()?;
    if !out.status.success() {
        return None;
    }
    String::from_utf8_lossy(&out.stdout).trim().parse().ok()
}

/// The (uid, gid) that runs Patroni and PostgreSQL: as root the `postgres` system user
/// (created when missing), else the current user.
fn pg_user() -> Result<(u32, u32), String> {
    let (uid, gid) = own_ids();
    if uid != 0 {
        return Ok((uid, gid));
    }
    if id_of("-u", PG_USER).is_none() {
        let status = Command::new("useradd")
            .args(["--system", "--user-group", "--no-create-home", "--shell", "/usr/sbin/nologin", PG_USER])
            .status()
            .map_err(|e| format!("running useradd: {e}"))?;
        if !status.success() {
            return Err(format!("useradd {PG_USER} failed: {status}"));
        }
    }
    match (id_of("-u", PG_USER), id_of("-g", PG_USER)) {
        (Some(uid), Some(gid)) => Ok((uid, gid)),
        _ => Err(format!("no uid/gid for user {PG_USER}")),
    }
}

/// One Patroni node: its ports, directories and (while running) its process.
struct Node {
    name: String,
    rest_port: u16,
    pg_port: u16,
    dir: PathBuf,
    config: PathBuf,
    log: PathBuf,
    proc: Option<Proc>,
}

impl Node {
    fn data_dir(&self) -> PathBuf {
        self.dir.join("data")
    }

    /// The postmaster's pid, from its pid file.
    fn postmaster(&self) -> Option<Pid> {
        let text = std::fs::read_to_string(self.data_dir().join("postmaster.pid")).ok()?;
        text.lines().next()?.trim().parse::<i32>().ok().map(Pid::from_raw)
    }

    /// kill -9 of Patroni and of its postmaster (the backends exit when they see it gone).
    fn kill9(&mut self) {
        let postmaster = self.postmaster();
        if let Some(mut p) = self.proc.take() {
            p.signal(Signal::SIGKILL);
            let _ = p.wait_exit(Duration::from_secs(10));
        }
        if let Some(pid) = postmaster {
            let _ = kill(pid, Signal::SIGKILL);
        }
    }

    /// Patroni's `GET /patroni` document, if its REST API answers.
    fn status(&self) -> Option<serde_json::Value> {
        let (code, body) = http_get(self.rest_port, "/patroni")?;
        (code == 200 || code == 503).then(|| serde_json::from_str(&body).ok()).flatten()
    }

    fn role(&self) -> Option<String> {
        self.status().and_then(|s| s["role"].as_str().map(str::to_owned))
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        self.kill9();
        if std::thread::panicking() {
            eprintln!(
                "===== patroni {} log =====\n{}",
                self.name,
                tail(&common::read_log(&self.log), 24 * 1024)
            );
        }
    }
}

fn tail(s: &str, max: usize) -> &str {
    let mut start = s.len().saturating_sub(max);
    while !s.is_char_boundary(start) {
        start += 1;
    }
    &s[start..]
}

/// A plain HTTP/1.1 GET to 127.0.0.1; (status code, body).
fn http_get(port: u16, path: &str) -> Option<(u16, String)> {
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    let req = format!("GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n");
    s.write_all(req.as_bytes()).ok()?;
    let mut out = String::new();
    s.read_to_string(&mut out).ok()?;
    let (head, body) = out.split_once("\r\n\r\n")?;
    let code = head.split_whitespace().nth(1)?.parse().ok()?;
    Some((code, body.to_string()))
}

fn is_primary(role: &str) -> bool {
    role == "master" || role == "primary"
}

/// Patroni's configuration of one node.
fn config(node: &Node, etcd_hosts: &str, bin_dir: &Path) -> String {
    let (rest, pg, dir) = (node.rest_port, node.pg_port, node.dir.display());
    format!(
        r#"scope: {SCOPE}
name: {name}
log:
  level: INFO
restapi:
  listen: 127.0.0.1:{rest}
  connect_address: 127.0.0.1:{rest}
etcd3:
  hosts: {etcd_hosts}
watchdog:
  mode: off
bootstrap:
  dcs:
    ttl: {TTL}
    loop_wait: {LOOP_WAIT}
    retry_timeout: {RETRY_TIMEOUT}
    maximum_lag_on_failover: 1073741824
    postgresql:
      use_pg_rewind: true
      parameters:
        wal_log_hints: "on"
        max_wal_senders: 5
        max_replication_slots: 5
        fsync: "off"
        synchronous_commit: "off"
        full_page_writes: "on"
        shared_buffers: 16MB
        max_connections: 20
  initdb:
  - encoding: UTF8
  - locale: C
postgresql:
  listen: 127.0.0.1:{pg}
  connect_address: 127.0.0.1:{pg}
  data_dir: {dir}/data
  bin_dir: {bin}
  pgpass: {dir}/pgpass
  remove_data_directory_on_rewind_failure: true
  remove_data_directory_on_diverged_timelines: true
  authentication:
    superuser:
      username: postgres
      password: postgres-password
    replication:
      username: replicator
      password: replicator-password
  parameters:
    unix_socket_directories: {dir}
  pg_hba:
  - local all all trust
  - host all all 127.0.0.1/32 trust
  - host replication all 127.0.0.1/32 trust
"#,
        name = node.name,
        bin = bin_dir.display(),
    )
}

/// Starts (or restarts) Patroni for `node` as `uid`/`gid`, its output appended to its log.
fn start_patroni(node: &mut Node, uid: u32, gid: u32) {
    let log = OpenOptions::new().create(true).append(true).open(&node.log).expect("patroni log");
    let mut cmd = Command::new("patroni");
    // The PostgreSQL tools fail when they cannot read their working directory (the test's own
    // may be under a root-only home): run in the node's directory.
    cmd.arg(&node.config)
        .current_dir(&node.dir)
        .env("HOME", &node.dir)
        .env("LC_ALL", "C")
        .stdin(Stdio::null())
        .stdout(log.try_clone().expect("dup"))
        .stderr(log);
    if own_ids().0 == 0 {
        cmd.uid(uid).gid(gid);
    }
    let child = die_with_parent(&mut cmd).spawn().expect("spawn patroni");
    node.proc = Some(Proc::new(&format!("patroni {}", node.name), child, None));
}

/// Runs one SQL statement through psql on `port`; its unaligned output, or psql's error.
fn psql(bin_dir: &Path, port: u16, sql: &str) -> Result<String, String> {
    let out = Command::new(bin_dir.join("psql"))
        .args(["-h", "127.0.0.1", "-p", &port.to_string(), "-U", "postgres", "-d", "postgres"])
        .args(["-X", "-A", "-t", "-v", "ON_ERROR_STOP=1", "-c", sql])
        .env("PGCONNECT_TIMEOUT", "5")
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("running psql: {e}"))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).trim().to_string())
    }
}

/// The DCS leader key, read from raftkv: (Patroni member name, create revision, lease).
async fn dcs_leader_key(port: u16) -> Option<(String, i64, i64)> {
    let key = format!("/service/{SCOPE}/leader");
    let req = RangeRequest { key: key.into_bytes().into(), ..Default::default() };
    let resp = common::kv(port).range(req).await.ok()?.into_inner();
    resp.kvs.first().map(|kv| (String::from_utf8_lossy(&kv.value).into_owned(), kv.create_revision, kv.lease))
}

/// The Patroni member name in the DCS leader key.
async fn dcs_leader(port: u16) -> Option<String> {
    dcs_leader_key(port).await.map(|(name, _, _)| name)
}

/// Waits until `primary` reports `replica` streaming from it.
async fn wait_streaming(primary: &Node, replica: &Node, timeout: Duration) {
    let what = format!("{} to stream from {}", replica.name, primary.name);
    wait_for(&what, timeout, || async {
        let status = primary.status()?;
        let streams = status["replication"].as_array()?;
        streams
            .iter()
            .any(|r| r["application_name"] == replica.name.as_str() && r["state"] == "streaming")
            .then_some(())
    })
    .await;
}

/// Waits until `sql` on `port` answers `want`.
async fn wait_sql(bin_dir: &Path, port: u16, sql: &str, want: &str, timeout: Duration) {
    wait_for(&format!("`{sql}` on port {port} to answer {want:?}"), timeout, || async {
        (psql(bin_dir, port, sql).ok()? == want).then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn patroni_two_node_failover_on_raftkv() {
    let Some(bin_dir) = pg_bin_dir() else {
        return skip("PostgreSQL is not installed (apt-get install postgresql)");
    };
    if !have_patroni() {
        return skip("Patroni is not installed (apt-get install patroni)");
    }
    let (uid, gid) = match pg_user() {
        Ok(ids) => ids,
        Err(e) => return skip(&format!("no non-root user for PostgreSQL: {e}")),
    };

    let mut c = Cluster::start(3, Opts::default());
    c.wait_leader(START).await;
    let etcd_hosts = c.members.iter().map(|m| m.endpoint()).collect::<Vec<_>>().join(",");
    let mut raftkv_port = c.port(0);

    // The nodes' directories belong to the PostgreSQL user (the temp dir is made 0700 by us).
    // Under /tmp rather than $TMPDIR, which may be inside a directory the user cannot enter.
    let top = tempfile::Builder::new().prefix("raftkv-patroni-").tempdir_in("/tmp").expect("temp dir");
    std::os::unix::fs::chown(top.path(), Some(uid), Some(gid)).expect("chown the test dir");
    let ports = free_ports(4);
    let mut nodes: Vec<Node> = (0..2)
        .map(|i| {
            let name = format!("pg{i}");
            let dir = top.path().join(&name);
            std::fs::create_dir(&dir).expect("node dir");
            std::os::unix::fs::chown(&dir, Some(uid), Some(gid)).expect("chown the node dir");
            Node {
                config: dir.join("patroni.yml"),
                log: top.path().join(format!("{name}.log")),
                name,
                rest_port: ports[2 * i],
                pg_port: ports[2 * i + 1],
                dir,
                proc: None,
            }
        })
        .collect();
    for node in &nodes {
        let mut f = File::create(&node.config).expect("config file");
        f.write_all(config(node, &etcd_hosts, &bin_dir).as_bytes()).expect("write config");
    }

    // Both start at once: one wins the leader key and bootstraps, the other clones from it.
    for node in &mut nodes {
        start_patroni(node, uid, gid);
    }
    let began = Instant::now();
    let leader = wait_for("a Patroni leader in raftkv", BOOTSTRAP, || dcs_leader(raftkv_port)).await;
    let p = nodes.iter().position(|n| n.name == leader).expect("the leader is one of the nodes");
    let r = 1 - p;
    wait_for("the leader to run as the primary", BOOTSTRAP, || async {
        nodes[p].role().filter(|role| is_primary(role))
    })
    .await;
    wait_streaming(&nodes[p], &nodes[r], BOOTSTRAP).await;
    eprintln!(
        "{} is the primary, {} streams from it after {:?}",
        nodes[p].name,
        nodes[r].name,
        began.elapsed()
    );

    // A row written on the primary reaches the replica; the replica refuses writes.
    psql(&bin_dir, nodes[p].pg_port, "CREATE TABLE t (id int PRIMARY KEY, v text)").expect("create table");
    psql(&bin_dir, nodes[p].pg_port, "INSERT INTO t VALUES (1, 'before failover')").expect("insert");
    wait_sql(&bin_dir, nodes[r].pg_port, "SELECT v FROM t WHERE id = 1", "before failover", START).await;
    let refused = psql(&bin_dir, nodes[r].pg_port, "INSERT INTO t VALUES (2, 'x')").expect_err("read-only");
    assert!(refused.contains("read-only transaction"), "the replica's answer to a write: {refused}");

    // kill -9 of the raftkv leader under Patroni: the new raftkv leader extends the leases,
    // Patroni moves to another member, and nothing fails over: the leader key is never
    // deleted (same create revision and lease) and the primary stays the primary.
    let before = dcs_leader_key(raftkv_port).await.expect("the leader key");
    let raft_leader = c.wait_leader(START).await;
    c.kill9(raft_leader);
    raftkv_port = c.port((raft_leader + 1) % c.members.len());
    let calm_until = Instant::now() + Duration::from_secs(TTL + LOOP_WAIT);
    while Instant::now() < calm_until {
        if let Some(now) = dcs_leader_key(raftkv_port).await {
            assert_eq!(now, before, "the leader key changed after the raftkv leader was killed");
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    assert_eq!(
        dcs_leader_key(raftkv_port).await.as_ref(),
        Some(&before),
        "the leader key after the raftkv leader change"
    );
    assert!(
        nodes[p].role().is_some_and(|role| is_primary(&role)),
        "{} is no longer the primary",
        nodes[p].name
    );
    c.start_member(raft_leader);
    c.wait_leader(START).await;

    // kill -9 of the primary: the replica takes the leader key once the old leader's lease
    // runs out (at most TTL after its last keep-alive), and promotes itself.
    nodes[p].kill9();
    let killed = Instant::now();
    let new_leader = wait_for("a new Patroni leader", Duration::from_secs(TTL * 3), || async {
        dcs_leader(raftkv_port).await.filter(|l| *l == nodes[r].name)
    })
    .await;
    let took_key = killed.elapsed();
    wait_for("the replica to be promoted", Duration::from_secs(TTL * 3), || async {
        nodes[r].role().filter(|role| is_primary(role))
    })
    .await;
    wait_sql(&bin_dir, nodes[r].pg_port, "SELECT pg_is_in_recovery()", "f", Duration::from_secs(TTL)).await;
    let promoted = killed.elapsed();
    eprintln!("{new_leader} took the leader key {took_key:?} and was promoted {promoted:?} after the kill");
    assert!(
        took_key <= Duration::from_secs(TTL + LOOP_WAIT + 2),
        "the replica took the leader key {took_key:?} after the kill (TTL {TTL} s, loop_wait {LOOP_WAIT} s)"
    );
    psql(&bin_dir, nodes[r].pg_port, "INSERT INTO t VALUES (2, 'after failover')")
        .expect("write on the new primary");

    // The old primary, restarted, rejoins as a replica of the new one and gets its writes.
    start_patroni(&mut nodes[p], uid, gid);
    wait_for("the old primary to rejoin as a replica", BOOTSTRAP, || async {
        nodes[p].role().filter(|role| role == "replica")
    })
    .await;
    wait_streaming(&nodes[r], &nodes[p], BOOTSTRAP).await;
    wait_sql(&bin_dir, nodes[p].pg_port, "SELECT v FROM t WHERE id = 2", "after failover", START).await;
    assert_eq!(dcs_leader(raftkv_port).await.as_deref(), Some(nodes[r].name.as_str()));
    eprintln!("the whole failover round took {:?}", began.elapsed());
    c.assert_running();
}
