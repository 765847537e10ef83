//! Harness for the acceptance tests: real `raftkv server` processes on free 127.0.0.1 ports,
//! each with its own temp data dir and stderr log file; gRPC clients from `raftkv-api`.
//!
//! Every child is killed (SIGKILL) and reaped when its [`Cluster`] (or [`Proc`]) is dropped, and
//! also dies with the test thread that spawned it (PR_SET_PDEATHSIG), so nothing outlives a test.
//! When a test panics, the tail of every member's log is printed and the temp dir is kept.
//!
//! Two modes ([`Mode`]): plain (http, no auth), and secure: mutual TLS on the client and peer
//! ports (certificates from a CA made for the cluster) and auth enabled (root user, role root),
//! every client authenticating as root. A cluster's [`Access`] says how to reach it;
//! [`in_both_modes!`] runs a test body once in each mode.

#![allow(dead_code)]

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::net::TcpListener;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use raftkv_api::etcdserverpb::auth_client::AuthClient;
use raftkv_api::etcdserverpb::cluster_client::ClusterClient;
use raftkv_api::etcdserverpb::kv_client::KvClient;
use raftkv_api::etcdserverpb::lease_client::LeaseClient;
use raftkv_api::etcdserverpb::maintenance_client::MaintenanceClient;
use raftkv_api::etcdserverpb::{
    AuthEnableRequest, AuthUserAddRequest, AuthUserGrantRoleRequest, AuthenticateRequest,
    LeaseKeepAliveRequest, PutRequest, RangeRequest, StatusRequest, StatusResponse,
};
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};

pub const EXE: &str = env!("CARGO_BIN_EXE_raftkv");

/// Per-RPC deadline of the test clients.
pub const RPC_TIMEOUT: Duration = Duration::from_secs(5);

/// `n` distinct free ports: all are bound at once (so they differ), then released.
pub fn free_ports(n: usize) -> Vec<u16> {
    let listeners: Vec<TcpListener> =
        (0..n).map(|_| TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0")).collect();
    listeners.iter().map(|l| l.local_addr().expect("local addr").port()).collect()
}

/// Makes `cmd`'s child get SIGKILL if the spawning thread dies (e.g. the test binary aborts).
pub fn die_with_parent(cmd: &mut Command) -> &mut Command {
    // SAFETY: prctl is async-signal-safe; the closure allocates nothing.
    unsafe {
        cmd.pre_exec(|| {
            nix::sys::prctl::set_pdeathsig(Signal::SIGKILL).map_err(std::io::Error::from)?;
            Ok(())
        })
    }
}

/// A lazily connected plain channel to `127.0.0.1:port` (connecting to a dead member fails
/// per RPC, not here).
pub fn channel(port: u16) -> Channel {
    Access::plain().channel(port)
}

pub fn kv(port: u16) -> KvClient<Channel> {
    Access::plain().kv(port)
}

pub fn maintenance(port: u16) -> MaintenanceClient<Channel> {
    MaintenanceClient::new(channel(port))
}

pub fn cluster_client(port: u16) -> ClusterClient<Channel> {
    ClusterClient::new(channel(port))
}

pub async fn status(port: u16) -> Result<StatusResponse, tonic::Status> {
    Access::plain().status(port).await
}

pub async fn put(port: u16, key: &str, value: &str) -> Result<i64, tonic::Status> {
    Access::plain().put(port, key, value).await
}

/// The value of `key` (None if absent); `serializable` reads the member's local state.
pub async fn get(port: u16, key: &str, serializable: bool) -> Result<Option<String>, tonic::Status> {
    Access::plain().get(port, key, serializable).await
}

/// How a test runs its servers and clients.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Mode {
    /// http on both ports, auth disabled.
    #[default]
    Plain,
    /// Mutual TLS on the client and peer ports, auth enabled, clients authenticated as root.
    Secure,
}

/// Runs the async test body `fn NAME(mode: Mode)` as two tests, `NAME::plain` and
/// `NAME::secure`. With `ignore_secure = "why"` the secure one is `#[ignore]`d with that
/// reason (run it with `--run-ignored only`).
#[allow(unused_macros)]
macro_rules! in_both_modes {
    ($name:ident, ignore_secure = $why:literal) => {
        mod $name {
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn plain() {
                super::$name($crate::common::Mode::Plain).await
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            #[ignore = $why]
            async fn secure() {
                super::$name($crate::common::Mode::Secure).await
            }
        }
    };
    ($name:ident) => {
        mod $name {
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn plain() {
                super::$name($crate::common::Mode::Plain).await
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn secure() {
                super::$name($crate::common::Mode::Secure).await
            }
        }
    };
}
#[allow(unused_imports)]
pub(crate) use in_both_modes;

/// The user every client authenticates as in secure mode.
pub const ROOT_USER: &str = "root";
pub const ROOT_PASSWORD: &str = "rootpw";

/// A certificate authority made for a test.
pub struct Ca {
    pub cert: rcgen::Certificate,
    pub key: rcgen::KeyPair,
}

impl Ca {
    pub fn new(name: &str) -> Ca {
        let key = rcgen::KeyPair::generate().expect("key");
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).expect("params");
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params.distinguished_name.push(rcgen::DnType::CommonName, name);
        Ca { cert: params.self_signed(&key).expect("self-signed"), key }
    }

    /// Writes `<dir>/<name>.pem` and `<dir>/<name>-key.pem`, signed by this CA, for 127.0.0.1
    /// and localhost, usable as server and client certificate. Returns (cert, key) paths.
    pub fn issue(&self, dir: &Path, name: &str) -> (PathBuf, PathBuf) {
        self.issue_valid(dir, name, None)
    }

    /// As [`Ca::issue`], valid from 30 days ago until `days` days from now (negative: expired).
    pub fn issue_expiring(&self, dir: &Path, name: &str, days: i64) -> (PathBuf, PathBuf) {
        self.issue_valid(dir, name, Some(days))
    }

    fn issue_valid(&self, dir: &Path, name: &str, days: Option<i64>) -> (PathBuf, PathBuf) {
        let key = rcgen::KeyPair::generate().expect("key");
        let mut params =
            rcgen::CertificateParams::new(vec!["127.0.0.1".to_string(), "localhost".to_string()])
                .expect("params");
        params.distinguished_name.push(rcgen::DnType::CommonName, name);
        params.extended_key_usages =
            vec![rcgen::ExtendedKeyUsagePurpose::ServerAuth, rcgen::ExtendedKeyUsagePurpose::ClientAuth];
        if let Some(days) = days {
            let now =
                std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).expect("clock").as_secs();
            let at = |secs: i64| rcgen::date_time_ymd(1970, 1, 1) + Duration::from_secs(secs as u64);
            params.not_before = at(now as i64 - 30 * 86_400);
            params.not_after = at(now as i64 + days * 86_400);
        }
        let cert = params.signed_by(&key, &self.cert, &self.key).expect("sign");
        let (c, k) = (dir.join(format!("{name}.pem")), dir.join(format!("{name}-key.pem")));
        std::fs::write(&c, cert.pem()).expect("write cert");
        std::fs::write(&k, key.serialize_pem()).expect("write key");
        (c, k)
    }

    /// Writes the CA certificate to `path`; returns it.
    pub fn write(&self, path: &Path) -> PathBuf {
        std::fs::write(path, self.cert.pem()).expect("write CA");
        path.to_path_buf()
    }
}

/// The certificates of a secure-mode server set: one CA, the servers' certificate (used on
/// both ports) and the clients'.
#[derive(Debug)]
pub struct Pki {
    pub ca: PathBuf,
    pub server_cert: PathBuf,
    pub server_key: PathBuf,
    pub client_cert: PathBuf,
    pub client_key: PathBuf,
}

impl Pki {
    /// Makes a CA and its certificates in `dir` (created).
    pub fn new(dir: &Path) -> Pki {
        std::fs::create_dir_all(dir).expect("pki dir");
        let ca = Ca::new("raftkv test CA");
        let (server_cert, server_key) = ca.issue(dir, "server");
        let (client_cert, client_key) = ca.issue(dir, "client");
        Pki { ca: ca.write(&dir.join("ca.pem")), server_cert, server_key, client_cert, client_key }
    }

    fn read(path: &Path) -> Vec<u8> {
        std::fs::read(path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()))
    }
}

/// How a client reaches a server set: plain, or (secure mode) TLS with the set's client
/// certificate and, once auth is enabled, root's token.
#[derive(Clone, Debug, Default)]
pub struct Access {
    pub pki: Option<Arc<Pki>>,
    pub token: Option<String>,
}

impl Access {
    pub fn plain() -> Access {
        Access::default()
    }

    /// Plain, or (secure) with certificates made in `dir`; auth is enabled later
    /// ([`Access::enable_auth`]).
    pub fn new(mode: Mode, dir: &Path) -> Access {
        match mode {
            Mode::Plain => Access::plain(),
            Mode::Secure => Access { pki: Some(Arc::new(Pki::new(dir))), token: None },
        }
    }

    pub fn mode(&self) -> Mode {
        if self.pki.is_some() { Mode::Secure } else { Mode::Plain }
    }

    pub fn scheme(&self) -> &'static str {
        if self.pki.is_some() { "https" } else { "http" }
    }

    pub fn url(&self, port: u16) -> String {
        format!("{}://127.0.0.1:{port}", self.scheme())
    }

    /// The endpoint etcdctl is given: `127.0.0.1:port`, or the https URL in secure mode
    /// (etcdctl 3.4 dials a scheme-less endpoint in plain text).
    pub fn etcdctl_endpoint(&self, port: u16) -> String {
        match self.pki {
            Some(_) => self.url(port),
            None => format!("127.0.0.1:{port}"),
        }
    }

    /// The TLS flags of a server (raftkv or etcd) on both ports, with client certificates
    /// required; none in plain mode.
    pub fn server_flags(&self) -> Vec<String> {
        let Some(p) = &self.pki else { return Vec::new() };
        let s = |p: &Path| p.display().to_string();
        [
            ("--cert-file", s(&p.server_cert)),
            ("--key-file", s(&p.server_key)),
            ("--trusted-ca-file", s(&p.ca)),
            ("--peer-cert-file", s(&p.server_cert)),
            ("--peer-key-file", s(&p.server_key)),
            ("--peer-trusted-ca-file", s(&p.ca)),
        ]
        .into_iter()
        .flat_map(|(f, v)| [f.to_string(), v])
        .chain(["--client-cert-auth".into(), "--peer-client-cert-auth".into()])
        .collect()
    }

    /// etcdctl's flags: `--cacert --cert --key`, and `--user` once auth is enabled.
    pub fn etcdctl_flags(&self) -> Vec<String> {
        let Some(p) = &self.pki else { return Vec::new() };
        let mut flags = vec![
            format!("--cacert={}", p.ca.display()),
            format!("--cert={}", p.client_cert.display()),
            format!("--key={}", p.client_key.display()),
        ];
        if self.token.is_some() {
            flags.push(format!("--user={ROOT_USER}:{ROOT_PASSWORD}"));
        }
        flags
    }

    /// The etcd-client crate's options: TLS with the client certificate and the root user.
    pub fn etcd_client_options(&self) -> Option<etcd_client::ConnectOptions> {
        let p = self.pki.as_ref()?;
        let tls = etcd_client::TlsOptions::new()
            .ca_certificate(etcd_client::Certificate::from_pem(Pki::read(&p.ca)))
            .identity(etcd_client::Identity::from_pem(Pki::read(&p.client_cert), Pki::read(&p.client_key)));
        let opts = etcd_client::ConnectOptions::new().with_tls(tls);
        Some(match self.token {
            Some(_) => opts.with_user(ROOT_USER, ROOT_PASSWORD),
            None => opts,
        })
    }

    /// The environment of the client test programs (tests/python/etcd3_client.py,
    /// tests/go/clientv3_check.go): the certificates and the user.
    pub fn client_env(&self) -> Vec<(&'static str, String)> {
        let Some(p) = &self.pki else { return Vec::new() };
        let mut env = vec![
            ("ETCD3_CA_CERT", p.ca.display().to_string()),
            ("ETCD3_CERT_CERT", p.client_cert.display().to_string()),
            ("ETCD3_CERT_KEY", p.client_key.display().to_string()),
        ];
        if self.token.is_some() {
            env.push(("ETCD3_USER", ROOT_USER.into()));
            env.push(("ETCD3_PASSWORD", ROOT_PASSWORD.into()));
        }
        env
    }

    /// A lazily connected channel to `127.0.0.1:port` (connecting to a dead member fails per
    /// RPC, not here), over TLS in secure mode.
    pub fn channel(&self, port: u16) -> Channel {
        let mut endpoint = Endpoint::from_shared(self.url(port))
            .expect("endpoint")
            .connect_timeout(Duration::from_secs(1))
            .timeout(RPC_TIMEOUT);
        if let Some(p) = &self.pki {
            let tls = ClientTlsConfig::new()
                .ca_certificate(Certificate::from_pem(Pki::read(&p.ca)))
                .identity(Identity::from_pem(Pki::read(&p.client_cert), Pki::read(&p.client_key)))
                .domain_name("127.0.0.1");
            endpoint = endpoint.tls_config(tls).expect("TLS config");
        }
        endpoint.connect_lazy()
    }

    /// `msg` with the token, if any.
    pub fn request<T>(&self, msg: T) -> tonic::Request<T> {
        let mut r = tonic::Request::new(msg);
        if let Some(token) = &self.token {
            r.metadata_mut().insert("token", token.parse().expect("token is ASCII"));
        }
        r
    }

    pub fn kv(&self, port: u16) -> KvClient<Channel> {
        KvClient::new(self.channel(port))
            .max_decoding_message_size(64 << 20)
            .max_encoding_message_size(64 << 20)
    }

    pub fn cluster_client(&self, port: u16) -> ClusterClient<Channel> {
        ClusterClient::new(self.channel(port))
    }

    pub async fn status(&self, port: u16) -> Result<StatusResponse, tonic::Status> {
        let mut m = MaintenanceClient::new(self.channel(port));
        m.status(self.request(StatusRequest {})).await.map(|r| r.into_inner())
    }

    pub async fn put(&self, port: u16, key: &str, value: &str) -> Result<i64, tonic::Status> {
        let req =
            PutRequest { key: key.to_owned().into(), value: value.to_owned().into(), ..Default::default() };
        let resp = self.kv(port).put(self.request(req)).await?.into_inner();
        Ok(resp.header.map_or(0, |h| h.revision))
    }

    /// The value of `key` (None if absent); `serializable` reads the member's local state.
    pub async fn get(
        &self,
        port: u16,
        key: &str,
        serializable: bool,
    ) -> Result<Option<String>, tonic::Status> {
        let req = RangeRequest { key: key.to_owned().into(), serializable, ..Default::default() };
        let resp = self.kv(port).range(self.request(req)).await?.into_inner();
        Ok(resp.kvs.first().map(|kv| String::from_utf8_lossy(&kv.value).into_owned()))
    }

    /// In secure mode, through the server at `port`: the root user with the root role, auth
    /// enabled, and root's token kept for the requests that follow. Nothing in plain mode.
    pub async fn enable_auth(&mut self, port: u16) -> Result<(), tonic::Status> {
        if self.pki.is_none() || self.token.is_some() {
            return Ok(());
        }
        let mut a = AuthClient::new(self.channel(port));
        let user =
            AuthUserAddRequest { name: ROOT_USER.into(), password: ROOT_PASSWORD.into(), options: None };
        a.user_add(user).await?;
        a.user_grant_role(AuthUserGrantRoleRequest { user: ROOT_USER.into(), role: "root".into() }).await?;
        a.auth_enable(AuthEnableRequest {}).await?;
        let req = AuthenticateRequest { name: ROOT_USER.into(), password: ROOT_PASSWORD.into() };
        self.token = Some(a.authenticate(req).await?.into_inner().token);
        Ok(())
    }

    /// Runs `etcdctl --endpoints=<endpoints> <flags> <args>` (etcd 3.4's) with `stdin`.
    pub fn etcdctl(&self, endpoints: &str, args: &[&str], stdin: &str) -> Out {
        run_etcdctl(endpoints, &self.etcdctl_flags(), args, stdin)
    }

    /// One keep-alive through member `port`; the TTL answered.
    pub async fn keep_alive_once(&self, port: u16, id: i64) -> Result<i64, tonic::Status> {
        let mut stream = LeaseClient::new(self.channel(port))
            .lease_keep_alive(self.request(tokio_stream::once(LeaseKeepAliveRequest { id })))
            .await?
            .into_inner();
        match stream.message().await? {
            Some(r) => Ok(r.ttl),
            None => Err(tonic::Status::unavailable("stream closed")),
        }
    }
}

/// Polls `f` until it returns `Some`, or panics with `what` after `timeout`.
pub async fn wait_for<T, F, Fut>(what: &str, timeout: Duration, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out after {timeout:?} waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Reads the whole of a log file (lossily).
pub fn read_log(path: &Path) -> String {
    let mut s = Vec::new();
    if let Ok(mut f) = File::open(path) {
        let _ = f.read_to_end(&mut s);
    }
    String::from_utf8_lossy(&s).into_owned()
}

fn log_tail(path: &Path, max_bytes: u64) -> String {
    let Ok(mut f) = File::open(path) else { return String::from("(no log)") };
    let len = f.metadata().map(|m| m.len()).unwrap_or(0);
    if len > max_bytes {
        let _ = f.seek(SeekFrom::Start(len - max_bytes));
    }
    let mut s = Vec::new();
    let _ = f.read_to_end(&mut s);
    String::from_utf8_lossy(&s).into_owned()
}

/// Waits up to `timeout` for `child` to exit.
pub fn wait_exit(child: &mut Child, timeout: Duration) -> Option<ExitStatus> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Ok(Some(status)) = child.try_wait() {
            return Some(status);
        }
        if Instant::now() >= deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Options of a cluster's members.
#[derive(Clone, Debug)]
pub struct Opts {
    pub heartbeat_ms: u64,
    pub election_ms: u64,
    pub snapshot_count: Option<u64>,
    pub extra: Vec<String>,
    pub mode: Mode,
}

impl Default for Opts {
    /// Faster than etcd's defaults (100/1000 ms) so that tests elect quickly; tests that are
    /// about the defaults set them explicitly.
    fn default() -> Opts {
        Opts {
            heartbeat_ms: 50,
            election_ms: 500,
            snapshot_count: None,
            extra: Vec::new(),
            mode: Mode::Plain,
        }
    }
}

impl Opts {
    pub fn etcd_defaults() -> Opts {
        Opts { heartbeat_ms: 100, election_ms: 1000, ..Opts::default() }
    }

    /// The defaults in `mode`.
    pub fn in_mode(mode: Mode) -> Opts {
        Opts { mode, ..Opts::default() }
    }
}

/// One member: its ports, data dir, log file and (while running) its process.
pub struct Member {
    pub name: String,
    pub client_port: u16,
    pub peer_port: u16,
    pub data_dir: PathBuf,
    pub log_path: PathBuf,
    pub child: Option<Child>,
    /// The cluster's access (for the URLs' scheme).
    pub access: Access,
}

impl Member {
    pub fn client_url(&self) -> String {
        self.access.url(self.client_port)
    }
    pub fn peer_url(&self) -> String {
        self.access.url(self.peer_port)
    }
    /// The member's etcdctl endpoint (`127.0.0.1:port`, or its https URL in secure mode).
    pub fn endpoint(&self) -> String {
        self.access.etcdctl_endpoint(self.client_port)
    }
    pub fn pid(&self) -> Option<Pid> {
        self.child.as_ref().map(|c| Pid::from_raw(c.id() as i32))
    }
    pub fn is_running(&self) -> bool {
        self.child.is_some()
    }
}

/// A set of `raftkv server` processes sharing one `--initial-cluster`.
pub struct Cluster {
    dir: Option<tempfile::TempDir>,
    pub members: Vec<Member>,
    pub initial_cluster: String,
    pub token: String,
    pub opts: Opts,
    /// How clients reach the members; in secure mode it has root's token once
    /// [`Cluster::wait_leader`] has enabled auth.
    pub access: Access,
}

impl Cluster {
    /// Starts `n` members named m1..mn.
    pub fn start(n: usize, opts: Opts) -> Cluster {
        let mut c = Cluster::new(n, opts);
        for i in 0..n {
            c.start_member(i);
        }
        c
    }

    /// Starts members with the given names.
    pub fn start_named(names: &[&str], opts: Opts) -> Cluster {
        let mut c = Cluster::new_named(names, opts);
        for i in 0..names.len() {
            c.start_member(i);
        }
        c
    }

    /// Prepares `n` members named m1..mn (ports, dirs) without starting them.
    pub fn new(n: usize, opts: Opts) -> Cluster {
        let names: Vec<String> = (1..=n).map(|i| format!("m{i}")).collect();
        Cluster::new_named(&names.iter().map(String::as_str).collect::<Vec<_>>(), opts)
    }

    /// Prepares members with the given names without starting them.
    pub fn new_named(names: &[&str], opts: Opts) -> Cluster {
        let n = names.len();
        let dir = tempfile::Builder::new().prefix("raftkv-it-").tempdir().expect("temp dir");
        let ports = free_ports(2 * n);
        let access = Access::new(opts.mode, &dir.path().join("pki"));
        let members: Vec<Member> = (0..n)
            .map(|i| {
                let name = names[i].to_string();
                Member {
                    data_dir: dir.path().join(&name),
                    log_path: dir.path().join(format!("{name}.log")),
                    name,
                    client_port: ports[2 * i],
                    peer_port: ports[2 * i + 1],
                    child: None,
                    access: access.clone(),
                }
            })
            .collect();
        let initial_cluster =
            members.iter().map(|m| format!("{}={}", m.name, m.peer_url())).collect::<Vec<_>>().join(",");
        let token = format!("it-{}", dir.path().file_name().and_then(|n| n.to_str()).unwrap_or("x"));
        Cluster { dir: Some(dir), members, initial_cluster, token, opts, access }
    }

    pub fn dir(&self) -> &Path {
        self.dir.as_ref().expect("temp dir").path()
    }

    /// The `raftkv server` arguments of member `i`.
    pub fn args(&self, i: usize) -> Vec<String> {
        let m = &self.members[i];
        let mut args: Vec<String> = vec![
            "server".into(),
            "--name".into(),
            m.name.clone(),
            "--data-dir".into(),
            m.data_dir.display().to_string(),
            "--listen-client-urls".into(),
            m.client_url(),
            "--advertise-client-urls".into(),
            m.client_url(),
            "--listen-peer-urls".into(),
            m.peer_url(),
            "--initial-advertise-peer-urls".into(),
            m.peer_url(),
            "--initial-cluster".into(),
            self.initial_cluster.clone(),
            "--initial-cluster-token".into(),
            self.token.clone(),
            "--initial-cluster-state".into(),
            "new".into(),
            "--heartbeat-interval".into(),
            self.opts.heartbeat_ms.to_string(),
            "--election-timeout".into(),
            self.opts.election_ms.to_string(),
        ];
        if let Some(n) = self.opts.snapshot_count {
            args.extend(["--snapshot-count".into(), n.to_string()]);
        }
        args.extend(self.access.server_flags());
        args.extend(self.opts.extra.iter().cloned());
        args
    }

    /// Spawns `raftkv` with `args`, stdout and stderr appended to member `i`'s log.
    pub fn spawn_raw(&self, i: usize, args: &[String]) -> Child {
        self.spawn_env(i, args, &[])
    }

    /// As [`Cluster::spawn_raw`], with `env` added to the child's environment.
    pub fn spawn_env(&self, i: usize, args: &[String], env: &[(&str, &str)]) -> Child {
        let m = &self.members[i];
        let log = OpenOptions::new().create(true).append(true).open(&m.log_path).expect("open log");
        let mut cmd = Command::new(EXE);
        cmd.args(args)
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("dup log"))
            .stderr(log)
            .env("NO_COLOR", "1")
            .envs(env.iter().copied());
        die_with_parent(&mut cmd).spawn().expect("spawn raftkv")
    }

    /// Starts (or restarts) member `i` with its usual arguments.
    pub fn start_member(&mut self, i: usize) {
        assert!(self.members[i].child.is_none(), "{} is already running", self.members[i].name);
        let child = self.spawn_raw(i, &self.args(i));
        self.members[i].child = Some(child);
    }

    /// kill -9 of member `i`, reaped.
    pub fn kill9(&mut self, i: usize) {
        if let Some(mut child) = self.members[i].child.take() {
            let _ = kill(Pid::from_raw(child.id() as i32), Signal::SIGKILL);
            let _ = child.wait();
        }
    }

    /// kill -9 of several members, signalled back to back before any is reaped.
    pub fn kill9_all(&mut self, which: &[usize]) {
        for &i in which {
            if let Some(pid) = self.members[i].pid() {
                let _ = kill(pid, Signal::SIGKILL);
            }
        }
        for &i in which {
            if let Some(mut child) = self.members[i].child.take() {
                let _ = child.wait();
            }
        }
    }

    /// SIGTERM to member `i`; returns its exit status (panics if it does not exit in `timeout`).
    pub fn stop(&mut self, i: usize, timeout: Duration) -> ExitStatus {
        let mut child = self.members[i].child.take().expect("member is running");
        let _ = kill(Pid::from_raw(child.id() as i32), Signal::SIGTERM);
        match wait_exit(&mut child, timeout) {
            Some(status) => status,
            None => {
                let _ = child.kill();
                let _ = child.wait();
                panic!("{} did not exit within {timeout:?} of SIGTERM", self.members[i].name);
            }
        }
    }

    pub fn sigstop(&self, i: usize) {
        kill(self.members[i].pid().expect("running"), Signal::SIGSTOP).expect("SIGSTOP");
    }

    pub fn sigcont(&self, i: usize) {
        kill(self.members[i].pid().expect("running"), Signal::SIGCONT).expect("SIGCONT");
    }

    /// Panics if a running member has exited on its own.
    pub fn assert_running(&mut self) {
        for m in &mut self.members {
            if let Some(child) = m.child.as_mut()
                && let Ok(Some(status)) = child.try_wait()
            {
                panic!("{} exited unexpectedly: {status}", m.name);
            }
        }
    }

    pub fn running(&self) -> Vec<usize> {
        (0..self.members.len()).filter(|&i| self.members[i].is_running()).collect()
    }

    pub fn port(&self, i: usize) -> u16 {
        self.members[i].client_port
    }

    pub fn endpoints(&self) -> String {
        self.members.iter().map(Member::endpoint).collect::<Vec<_>>().join(",")
    }

    /// Waits until every running member reports the same leader, itself running; returns the
    /// leader's index. In secure mode the first call also enables auth through the leader
    /// (root user, root role) and keeps root's token in the cluster's access.
    pub async fn wait_leader(&mut self, timeout: Duration) -> usize {
        let deadline = Instant::now() + timeout;
        loop {
            self.assert_running();
            let last = match self.leader_now().await {
                Ok(i) => {
                    let mut access = self.access.clone();
                    access.enable_auth(self.port(i)).await.unwrap_or_else(|e| panic!("enabling auth: {e:?}"));
                    for m in &mut self.members {
                        m.access = access.clone();
                    }
                    self.access = access;
                    return i;
                }
                Err(e) => e,
            };
            assert!(Instant::now() < deadline, "no agreed leader after {timeout:?}: {last}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    async fn leader_now(&self) -> Result<usize, String> {
        let mut ids = Vec::new();
        let mut leaders = Vec::new();
        for i in self.running() {
            let s = self
                .access
                .status(self.port(i))
                .await
                .map_err(|e| format!("{}: {}", self.members[i].name, e.message()))?;
            ids.push((s.header.as_ref().map_or(0, |h| h.member_id), i));
            leaders.push(s.leader);
        }
        let first = *leaders.first().ok_or("no member running")?;
        if first == 0 || leaders.iter().any(|&l| l != first) {
            return Err(format!("leaders reported: {leaders:x?}"));
        }
        ids.iter()
            .find(|(id, _)| *id == first)
            .map(|&(_, i)| i)
            .ok_or_else(|| format!("leader {first:x} is not a running member"))
    }

    /// Index of the member whose id is `id` (as reported in response headers).
    pub async fn index_of(&self, id: u64) -> Option<usize> {
        for i in self.running() {
            if let Ok(s) = self.access.status(self.port(i)).await
                && s.header.is_some_and(|h| h.member_id == id)
            {
                return Some(i);
            }
        }
        None
    }

    /// Puts through member `i`, retrying transient errors (no leader yet) until `timeout`.
    pub async fn put_retry(&self, i: usize, key: &str, value: &str, timeout: Duration) -> i64 {
        let port = self.port(i);
        let mut last = None;
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            match self.access.put(port, key, value).await {
                Ok(rev) => return rev,
                Err(e) => last = Some(e),
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("put {key} through {} failed for {timeout:?}: {last:?}", self.members[i].name);
    }

    /// Prints the tail of every member's log.
    pub fn dump_logs(&self) {
        for m in &self.members {
            eprintln!("===== {} log ({}) =====", m.name, m.log_path.display());
            eprintln!("{}", log_tail(&m.log_path, 48 * 1024));
        }
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let all: Vec<usize> = (0..self.members.len()).collect();
        for &i in &all {
            if let Some(pid) = self.members[i].pid() {
                let _ = kill(pid, Signal::SIGCONT);
            }
        }
        self.kill9_all(&all);
        if std::thread::panicking() {
            self.dump_logs();
            if let Some(dir) = self.dir.take() {
                eprintln!("===== test data kept in {} =====", dir.keep().display());
            }
        }
    }
}

/// A child process (not a cluster member) that is killed and reaped on drop.
pub struct Proc {
    pub child: Option<Child>,
    pub name: String,
    pub log_path: Option<PathBuf>,
}

impl Proc {
    pub fn new(name: &str, child: Child, log_path: Option<PathBuf>) -> Proc {
        Proc { child: Some(child), name: name.into(), log_path }
    }
    pub fn pid(&self) -> Pid {
        Pid::from_raw(self.child.as_ref().expect("running").id() as i32)
    }
    pub fn signal(&self, sig: Signal) {
        kill(self.pid(), sig).expect("signal");
    }
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let status = wait_exit(self.child.as_mut().expect("running"), timeout);
        if status.is_some() {
            self.child = None;
        }
        status
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = kill(Pid::from_raw(child.id() as i32), Signal::SIGKILL);
            let _ = child.wait();
        }
        if std::thread::panicking()
            && let Some(path) = &self.log_path
        {
            eprintln!("===== {} log ({}) =====\n{}", self.name, path.display(), log_tail(path, 48 * 1024));
        }
    }
}

/// Runs a client test program (tests/python, tests/go) with its output in `out_path`, prints
/// the output (without the lines `skip` picks) and panics unless the program exited
/// successfully within `limit` with a summary line "N passed, 0 failed" (N > 0).
pub fn run_client_checks(
    mut cmd: Command,
    what: &str,
    against: &str,
    out_path: &Path,
    limit: Duration,
    skip: impl Fn(&str) -> bool,
) {
    let out = std::fs::File::create(out_path).expect("output file");
    cmd.stdin(Stdio::null()).stdout(out.try_clone().expect("dup")).stderr(out);
    let child = die_with_parent(&mut cmd).spawn().unwrap_or_else(|e| panic!("spawn {what}: {e}"));
    let mut proc = Proc::new(what, child, None);
    let status = proc.wait_exit(limit);
    let output: String = read_log(out_path).lines().filter(|l| !skip(l)).map(|l| format!("{l}\n")).collect();
    eprintln!("===== {what} against {against} =====\n{output}");
    match status {
        Some(s) if s.success() => {}
        Some(s) => panic!("the {what} checks failed against {against} ({s})"),
        None => panic!("the {what} checks did not finish within {limit:?} against {against}"),
    }
    assert!(
        output.lines().any(|l| l.ends_with(" passed, 0 failed") && !l.starts_with("0 passed")),
        "no summary line from the {what} checks against {against}"
    );
}

/// Runs `raftkv` with `args` to completion (it is expected to exit by itself, e.g. on a
/// configuration error); returns (exit status, stderr).
pub fn run_to_exit(args: &[String], timeout: Duration) -> (ExitStatus, String) {
    let dir = tempfile::tempdir().expect("temp dir");
    let err_path = dir.path().join("stderr");
    let err = File::create(&err_path).expect("stderr file");
    let mut cmd = Command::new(EXE);
    cmd.args(args).stdin(Stdio::null()).stdout(Stdio::null()).stderr(err).env("NO_COLOR", "1");
    let mut proc = Proc::new("raftkv", die_with_parent(&mut cmd).spawn().expect("spawn raftkv"), None);
    let status = proc.wait_exit(timeout);
    let stderr = read_log(&err_path);
    let status = status
        .unwrap_or_else(|| panic!("raftkv {args:?} still running after {timeout:?}; stderr:\n{stderr}"));
    (status, stderr)
}

/// Whether `tool` (`etcd` or `etcdctl`) is on PATH. Without it an interop check is skipped
/// with a loud message, unless `RAFTKV_REQUIRE_ETCD=1` (CI), where a missing tool fails.
pub fn have(tool: &str) -> bool {
    let ok = Command::new(tool)
        .arg(if tool == "etcd" { "--version" } else { "version" })
        .env("ETCDCTL_API", "3")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !ok {
        let msg = format!(
            "\n\n!!!!! `{tool}` is not on PATH: SKIPPING this interop check. Install it with \
             `apt-get install -y etcd-client etcd-server` !!!!!\n"
        );
        assert!(std::env::var("RAFTKV_REQUIRE_ETCD").as_deref() != Ok("1"), "{msg}");
        eprintln!("{msg}");
    }
    ok
}

#[derive(Debug, Clone, PartialEq)]
pub struct Out {
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
}

/// Runs `etcdctl --endpoints=<endpoints> <args>` (etcd 3.4's) with `stdin`, in plain text.
pub fn etcdctl(endpoints: &str, args: &[&str], stdin: &str) -> Out {
    run_etcdctl(endpoints, &[], args, stdin)
}

fn run_etcdctl(endpoints: &str, flags: &[String], args: &[&str], stdin: &str) -> Out {
    let dir = tempfile::tempdir().expect("temp dir");
    let (out_path, err_path) = (dir.path().join("out"), dir.path().join("err"));
    let mut cmd = Command::new("etcdctl");
    cmd.env("ETCDCTL_API", "3")
        .arg(format!("--endpoints={endpoints}"))
        .args(["--dial-timeout=3s", "--command-timeout=5s"])
        .args(flags)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(File::create(&out_path).expect("out"))
        .stderr(File::create(&err_path).expect("err"));
    let mut child = die_with_parent(&mut cmd).spawn().expect("spawn etcdctl");
    let mut input = child.stdin.take().expect("stdin");
    let _ = input.write_all(stdin.as_bytes());
    drop(input);
    let mut proc = Proc::new("etcdctl", child, None);
    let status = proc.wait_exit(Duration::from_secs(20)).unwrap_or_else(|| panic!("etcdctl {args:?} hung"));
    Out {
        code: status.code(),
        stdout: read_log(&out_path),
        stderr: read_log(&err_path)
            .lines()
            .filter(|l| !l.starts_with("{\"level\":"))
            .map(|l| format!("{l}\n"))
            .collect(),
    }
}

/// Starts a one-member real etcd with its data and log in `dir`; (process, client port,
/// peer port), or None when the binary is absent.
pub fn start_etcd(dir: &std::path::Path) -> Option<(Proc, u16, u16)> {
    start_etcd_with(dir, &[])
}

/// [`start_etcd`] with extra flags.
pub fn start_etcd_with(dir: &std::path::Path, extra: &[String]) -> Option<(Proc, u16, u16)> {
    spawn_etcd(dir, &Access::plain(), extra)
}

/// A one-member real etcd 3.4 and how to reach it.
pub struct Etcd {
    pub proc: Proc,
    pub client: u16,
    pub peer: u16,
    pub access: Access,
}

/// A one-member real etcd in `mode` (secure: certificates made in `dir`, the same TLS flags
/// as raftkv's members, auth enabled with root as for a [`Cluster`]), once it has elected
/// itself; None when the binary is absent.
pub async fn start_etcd_in(dir: &Path, mode: Mode) -> Option<Etcd> {
    let mut access = Access::new(mode, &dir.join("pki"));
    let (proc, client, peer) = spawn_etcd(dir, &access, &[])?;
    let probe = access.clone();
    wait_for("etcd to elect itself", Duration::from_secs(20), || {
        let probe = probe.clone();
        async move { probe.status(client).await.ok().filter(|s| s.leader != 0) }
    })
    .await;
    access.enable_auth(client).await.unwrap_or_else(|e| panic!("enabling auth on etcd: {e:?}"));
    Some(Etcd { proc, client, peer, access })
}

fn spawn_etcd(dir: &Path, access: &Access, extra: &[String]) -> Option<(Proc, u16, u16)> {
    if !have("etcd") {
        return None;
    }
    let ports = free_ports(2);
    let (client, peer) = (access.url(ports[0]), access.url(ports[1]));
    let log_path = dir.join("etcd.log");
    let log = File::create(&log_path).expect("etcd log");
    let mut cmd = Command::new("etcd");
    cmd.arg("--data-dir")
        .arg(dir.join("etcd-data"))
        .args(["--listen-client-urls", &client, "--advertise-client-urls", &client])
        .args(["--listen-peer-urls", &peer, "--initial-advertise-peer-urls", &peer])
        .args(["--initial-cluster", &format!("default={peer}")])
        .args(access.server_flags())
        .args(extra)
        .stdin(Stdio::null())
        .stdout(log.try_clone().expect("dup"))
        .stderr(log);
    if cfg!(target_arch = "aarch64") {
        cmd.env("ETCD_UNSUPPORTED_ARCH", "arm64");
    }
    let child = die_with_parent(&mut cmd).spawn().expect("spawn etcd");
    Some((Proc::new("etcd", child, Some(log_path)), ports[0], ports[1]))
}

/// A JSON gateway POST over HTTP/1.1; the response body.
pub fn http_post(port: u16, path: &str, body: &str) -> String {
    http_post_with(port, path, body, &[])
}

/// [`start_etcd`], then waits until etcd has elected itself.
pub async fn start_etcd_elected(dir: &Path) -> Option<(Proc, u16, u16)> {
    start_etcd_elected_with(dir, &[]).await
}

/// [`start_etcd_elected`] with extra flags.
pub async fn start_etcd_elected_with(dir: &Path, extra: &[String]) -> Option<(Proc, u16, u16)> {
    let (proc, client, peer) = start_etcd_with(dir, extra)?;
    wait_for("etcd to elect itself", Duration::from_secs(20), || async move {
        status(client).await.ok().filter(|s| s.leader != 0)
    })
    .await;
    Some((proc, client, peer))
}

/// A JSON gateway POST over HTTP/1.1 with extra `headers`; the response body.
pub fn http_post_with(port: u16, path: &str, body: &str, headers: &[(&str, &str)]) -> String {
    http_post_status(port, path, body, headers).1
}

/// A JSON gateway POST over HTTP/1.1 with extra `headers`; the HTTP status and the body.
pub fn http_post_status(port: u16, path: &str, body: &str, headers: &[(&str, &str)]) -> (u16, String) {
    http_request(port, "POST", path, body, headers)
}

/// An HTTP/1.1 request with a JSON body (empty: none) and extra `headers`; the HTTP status
/// and the body.
pub fn http_request(
    port: u16,
    method: &str,
    path: &str,
    body: &str,
    headers: &[(&str, &str)],
) -> (u16, String) {
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(20))).expect("timeout");
    let extra: String = headers.iter().map(|(k, v)| format!("{k}: {v}\r\n")).collect();
    let req = format!(
        "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n{extra}Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    s.write_all(req.as_bytes()).expect("write");
    let mut out = Vec::new();
    s.read_to_end(&mut out).expect("read");
    let out = String::from_utf8_lossy(&out).into_owned();
    let status = out.split_whitespace().nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
    (status, out.split_once("\r\n\r\n").map(|(_, b)| b.to_string()).unwrap_or_default())
}

/// A JSON value's shape: objects with their fields, every scalar replaced by its type.
pub fn json_shape(v: &serde_json::Value) -> serde_json::Value {
    use serde_json::Value;
    match v {
        Value::Object(m) => Value::Object(m.iter().map(|(k, v)| (k.clone(), json_shape(v))).collect()),
        Value::Array(a) => Value::Array(a.iter().map(json_shape).collect()),
        Value::String(_) => Value::from("string"),
        Value::Number(_) => Value::from("number"),
        Value::Bool(_) => Value::from("bool"),
        Value::Null => Value::Null,
    }
}

/// One keep-alive through member `port`; the TTL answered.
pub async fn keep_alive_once(port: u16, id: i64) -> Result<i64, tonic::Status> {
    Access::plain().keep_alive_once(port, id).await
}
