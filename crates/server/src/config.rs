//! Member configuration: etcd's flag names and meanings, from the command line and/or a
//! TOML or YAML file (same keys as the flags, e.g. `data-dir`, `initial-cluster`).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::Deserialize;

/// Raft ticks per heartbeat interval (see [`ServerConfig::tick_ms`]).
const TICKS_PER_HEARTBEAT: u64 = 5;

/// `raftkv server` flags. Every flag is optional here so that a config file can supply it;
/// defaults are applied by [`ServerConfig::resolve`].
#[derive(clap::Args, Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct ServerArgs {
    /// Human-readable name for this member; must appear in --initial-cluster.
    #[arg(long, env = "ETCD_NAME")]
    pub name: Option<String>,
    /// Path to the data directory (default: ./<name>.raftkv).
    #[arg(long, env = "ETCD_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
    /// Comma-separated URLs to listen on for client traffic (gRPC and the JSON gateway).
    #[arg(long, env = "ETCD_LISTEN_CLIENT_URLS")]
    pub listen_client_urls: Option<String>,
    /// Comma-separated client URLs to advertise to the rest of the cluster and to clients.
    #[arg(long, env = "ETCD_ADVERTISE_CLIENT_URLS")]
    pub advertise_client_urls: Option<String>,
    /// Comma-separated URLs to listen on for peer (Raft) traffic.
    #[arg(long, env = "ETCD_LISTEN_PEER_URLS")]
    pub listen_peer_urls: Option<String>,
    /// This member's peer URLs to advertise to the rest of the cluster.
    #[arg(long, env = "ETCD_INITIAL_ADVERTISE_PEER_URLS")]
    pub initial_advertise_peer_urls: Option<String>,
    /// Initial cluster configuration for bootstrapping: name=http://host:port,...
    /// Ignored when the data directory already holds a member.
    #[arg(long, env = "ETCD_INITIAL_CLUSTER")]
    pub initial_cluster: Option<String>,
    /// Initial cluster state: `new` (bootstrap) or `existing` (join a running cluster).
    #[arg(long, env = "ETCD_INITIAL_CLUSTER_STATE")]
    pub initial_cluster_state: Option<String>,
    /// Initial cluster token: distinguishes clusters bootstrapped from the same member list.
    #[arg(long, env = "ETCD_INITIAL_CLUSTER_TOKEN")]
    pub initial_cluster_token: Option<String>,
    /// Time (in milliseconds) of a heartbeat interval.
    #[arg(long, env = "ETCD_HEARTBEAT_INTERVAL")]
    pub heartbeat_interval: Option<u64>,
    /// Time (in milliseconds) for an election to timeout.
    #[arg(long, env = "ETCD_ELECTION_TIMEOUT")]
    pub election_timeout: Option<u64>,
    /// Number of applied entries between snapshots of the key-value state (default 100000, as etcd).
    /// When the state is large, a snapshot also waits until the log written since the
    /// previous one reaches a quarter of that snapshot's size.
    #[arg(long, env = "ETCD_SNAPSHOT_COUNT")]
    pub snapshot_count: Option<u64>,
    /// Maximum number of operations permitted in a transaction.
    #[arg(long, env = "ETCD_MAX_TXN_OPS")]
    pub max_txn_ops: Option<usize>,
    /// Maximum client request size in bytes the server will accept.
    #[arg(long, env = "ETCD_MAX_REQUEST_BYTES")]
    pub max_request_bytes: Option<usize>,
    /// Raise a NOSPACE alarm and refuse writes when the store's size reaches this many
    /// bytes (0: the default, 2 GiB; negative: no quota). See docs/operations.md.
    #[arg(long, allow_negative_numbers = true, env = "ETCD_QUOTA_BACKEND_BYTES")]
    pub quota_backend_bytes: Option<i64>,
    /// Minimum interval a client should wait before pinging the server (Go duration,
    /// default 5s; 0s: 5m). A client pinging more often is sent GOAWAY too_many_pings.
    #[arg(long, env = "ETCD_GRPC_KEEPALIVE_MIN_TIME")]
    pub grpc_keepalive_min_time: Option<String>,
    /// How long a client connection may be silent before the server pings it (default 2h;
    /// 0s: the defaults of both this and the timeout, as etcd).
    #[arg(long, env = "ETCD_GRPC_KEEPALIVE_INTERVAL")]
    pub grpc_keepalive_interval: Option<String>,
    /// How long a connection may stay silent after the server's ping before it is closed
    /// (default 20s; 0s: the defaults of both, as etcd).
    #[arg(long, env = "ETCD_GRPC_KEEPALIVE_TIMEOUT")]
    pub grpc_keepalive_timeout: Option<String>,
    /// How often a running member checks its certificate files for expiry (Go duration,
    /// default 1h): a warning within 30 days of expiry, an error once expired.
    #[arg(long)]
    pub cert_check_interval: Option<String>,
    /// How often a watcher created with `progress_notify` that got nothing since the last
    /// notification is told the current revision (Go duration, default 10m; 0 or negative:
    /// the default, as etcd).
    #[arg(long, allow_hyphen_values = true, env = "ETCD_EXPERIMENTAL_WATCH_PROGRESS_NOTIFY_INTERVAL")]
    pub experimental_watch_progress_notify_interval: Option<String>,
    /// Auth tokens: `simple` (etcd's default) or
    /// `jwt,sign-method=<RS256|...|ES256|...|HS256|...>,priv-key=<path>,pub-key=<path>,ttl=<duration>`
    /// (etcd's options; see docs/operations.md).
    #[arg(long, env = "ETCD_AUTH_TOKEN")]
    pub auth_token: Option<String>,
    /// Seconds a simple auth token stays valid after its last use (default 300, as etcd; JWT
    /// tokens take their `ttl` option instead).
    #[arg(long, env = "ETCD_AUTH_TOKEN_TTL")]
    pub auth_token_ttl: Option<u64>,
    /// bcrypt cost of stored password hashes, 4 to 31 (default 10, as etcd).
    #[arg(long, env = "ETCD_BCRYPT_COST")]
    pub bcrypt_cost: Option<u32>,
    /// Auto-compaction mode: `periodic` (the retention is a duration) or `revision` (the
    /// retention is a number of revisions), as etcd.
    #[arg(long, env = "ETCD_AUTO_COMPACTION_MODE")]
    pub auto_compaction_mode: Option<String>,
    /// Auto-compaction retention: in periodic mode a duration (`1h`, `30m`; a bare number
    /// is hours), in revision mode the revisions to keep. 0 (default) disables it.
    #[arg(long, env = "ETCD_AUTO_COMPACTION_RETENTION")]
    pub auto_compaction_retention: Option<String>,
    /// Log format: `text` (human-readable, default) or `json`.
    #[arg(long)]
    pub log_format: Option<String>,
    /// Log level: error, warn, info (default), debug, trace.
    #[arg(long, env = "ETCD_LOG_LEVEL")]
    pub log_level: Option<String>,
    /// Threads that serve clients and peers and run the Raft driver (default: the number of
    /// CPUs). Members sharing a machine do better with a share of its cores each; `raftkv
    /// dev` gives each of its three a third (at least one).
    #[arg(long)]
    pub worker_threads: Option<usize>,
    /// Skip fsync of the log. Loses acknowledged writes on power failure: benchmarks only.
    #[arg(long, env = "ETCD_UNSAFE_NO_FSYNC", num_args = 0..=1, require_equals = true,
          default_missing_value = "true", default_value_t = false, action = clap::ArgAction::Set)]
    #[serde(default)]
    pub unsafe_no_fsync: bool,
    /// Client TLS certificate file (PEM); with https:// client URLs. Re-read when it changes.
    #[arg(long, env = "ETCD_CERT_FILE")]
    pub cert_file: Option<PathBuf>,
    /// Client TLS key file (PEM).
    #[arg(long, env = "ETCD_KEY_FILE")]
    pub key_file: Option<PathBuf>,
    /// CA certificates (PEM) that clients' certificates must chain to.
    #[arg(long, env = "ETCD_TRUSTED_CA_FILE")]
    pub trusted_ca_file: Option<PathBuf>,
    /// Require clients to present a certificate signed by --trusted-ca-file.
    #[arg(long, num_args = 0..=1, require_equals = true, default_missing_value = "true", env = "ETCD_CLIENT_CERT_AUTH")]
    pub client_cert_auth: Option<bool>,
    /// Client TLS with a generated self-signed certificate (testing).
    #[arg(long, num_args = 0..=1, require_equals = true, default_missing_value = "true", env = "ETCD_AUTO_TLS")]
    pub auto_tls: Option<bool>,
    /// Peer TLS certificate file (PEM); with https:// peer URLs. Re-read when it changes.
    #[arg(long, env = "ETCD_PEER_CERT_FILE")]
    pub peer_cert_file: Option<PathBuf>,
    /// Peer TLS key file (PEM).
    #[arg(long, env = "ETCD_PEER_KEY_FILE")]
    pub peer_key_file: Option<PathBuf>,
    /// CA certificates (PEM) that the other members' certificates must chain to.
    #[arg(long, env = "ETCD_PEER_TRUSTED_CA_FILE")]
    pub peer_trusted_ca_file: Option<PathBuf>,
    /// Refuse peers without a certificate signed by --peer-trusted-ca-file.
    #[arg(long, num_args = 0..=1, require_equals = true, default_missing_value = "true", env = "ETCD_PEER_CLIENT_CERT_AUTH")]
    pub peer_client_cert_auth: Option<bool>,
    /// Peer TLS with generated self-signed certificates (testing; peers are not verified).
    #[arg(long, num_args = 0..=1, require_equals = true, default_missing_value = "true", env = "ETCD_PEER_AUTO_TLS")]
    pub peer_auto_tls: Option<bool>,
    /// Comma-separated TLS 1.2 cipher suites (Go's names, as etcd); TLS 1.3 suites always on.
    #[arg(long, env = "ETCD_CIPHER_SUITES")]
    pub cipher_suites: Option<String>,
    /// Comma-separated http:// URLs serving /metrics and the health checks only.
    #[arg(long, env = "ETCD_LISTEN_METRICS_URLS")]
    pub listen_metrics_urls: Option<String>,
    // etcd 3.4 flags that raftkv takes for compatibility: checked by crate::etcd_flags.
    /// etcd's logger (`zap` or `capnslog`): raftkv has its own (--log-format, --log-level).
    #[arg(long, env = "ETCD_LOGGER", hide = true)]
    #[serde(default, deserialize_with = "crate::etcd_flags::scalar")]
    pub logger: Option<String>,
    /// etcd's log outputs: `default` or `stderr` only (raftkv logs to stderr).
    #[arg(long, env = "ETCD_LOG_OUTPUTS", hide = true)]
    #[serde(default, deserialize_with = "crate::etcd_flags::scalar")]
    pub log_outputs: Option<String>,
    /// etcd's per-package log levels: not supported (use --log-level).
    #[arg(long, env = "ETCD_LOG_PACKAGE_LEVELS", hide = true)]
    #[serde(default, deserialize_with = "crate::etcd_flags::scalar")]
    pub log_package_levels: Option<String>,
    /// etcd's debug logging: `true` is --log-level debug.
    #[arg(long, env = "ETCD_DEBUG", hide = true, num_args = 0..=1, require_equals = true, default_missing_value = "true")]
    #[serde(default, deserialize_with = "crate::etcd_flags::scalar")]
    pub debug: Option<String>,
    /// etcd's v2 API: `false` only (raftkv serves the v3 API).
    #[arg(long, env = "ETCD_ENABLE_V2", hide = true, num_args = 0..=1, require_equals = true, default_missing_value = "true")]
    #[serde(default, deserialize_with = "crate::etcd_flags::scalar")]
    pub enable_v2: Option<String>,
    /// etcd's v2-on-v3 emulation: not supported.
    #[arg(long, env = "ETCD_EXPERIMENTAL_ENABLE_V2V3", hide = true)]
    #[serde(default, deserialize_with = "crate::etcd_flags::scalar")]
    pub experimental_enable_v2v3: Option<String>,
    /// etcd's pprof endpoints: `false` only.
    #[arg(long, env = "ETCD_ENABLE_PPROF", hide = true, num_args = 0..=1, require_equals = true, default_missing_value = "true")]
    #[serde(default, deserialize_with = "crate::etcd_flags::scalar")]
    pub enable_pprof: Option<String>,
    /// etcd's metrics level: `basic` only.
    #[arg(long, env = "ETCD_METRICS", hide = true)]
    #[serde(default, deserialize_with = "crate::etcd_flags::scalar")]
    pub metrics: Option<String>,
    /// etcd's strict reconfiguration check: always on (`true`).
    #[arg(long, env = "ETCD_STRICT_RECONFIG_CHECK", hide = true, num_args = 0..=1, require_equals = true, default_missing_value = "true")]
    #[serde(default, deserialize_with = "crate::etcd_flags::scalar")]
    pub strict_reconfig_check: Option<String>,
    /// etcd's pre-vote: raftkv always pre-votes (no effect).
    #[arg(long, env = "ETCD_PRE_VOTE", hide = true, num_args = 0..=1, require_equals = true, default_missing_value = "true")]
    #[serde(default, deserialize_with = "crate::etcd_flags::scalar")]
    pub pre_vote: Option<String>,
    /// No effect in raftkv (etcd compatibility).
    #[arg(long, env = "ETCD_INITIAL_ELECTION_TICK_ADVANCE", hide = true, num_args = 0..=1, require_equals = true, default_missing_value = "true")]
    #[serde(default, deserialize_with = "crate::etcd_flags::scalar")]
    pub initial_election_tick_advance: Option<String>,
    /// raftkv always checkpoints leases (no effect).
    #[arg(long, env = "ETCD_EXPERIMENTAL_ENABLE_LEASE_CHECKPOINT", hide = true, num_args = 0..=1, require_equals = true, default_missing_value = "true")]
    #[serde(default, deserialize_with = "crate::etcd_flags::scalar")]
    pub experimental_enable_lease_checkpoint: Option<String>,
    /// etcd's startup corruption check: not supported (`false` only).
    #[arg(long, env = "ETCD_EXPERIMENTAL_INITIAL_CORRUPT_CHECK", hide = true, num_args = 0..=1, require_equals = true, default_missing_value = "true")]
    #[serde(default, deserialize_with = "crate::etcd_flags::scalar")]
    pub experimental_initial_corrupt_check: Option<String>,
    /// etcd's periodic corruption check: not supported (`0s` only).
    #[arg(long, env = "ETCD_EXPERIMENTAL_CORRUPT_CHECK_TIME", hide = true)]
    #[serde(default, deserialize_with = "crate::etcd_flags::scalar")]
    pub experimental_corrupt_check_time: Option<String>,
    /// raftkv checks a peer's certificate chain, not its SANs: `true` only.
    #[arg(long, env = "ETCD_EXPERIMENTAL_PEER_SKIP_CLIENT_SAN_VERIFICATION", hide = true, num_args = 0..=1, require_equals = true, default_missing_value = "true")]
    #[serde(default, deserialize_with = "crate::etcd_flags::scalar")]
    pub experimental_peer_skip_client_san_verification: Option<String>,
    /// No effect in raftkv (etcd's snapshot file retention).
    #[arg(long, env = "ETCD_MAX_SNAPSHOTS", hide = true)]
    #[serde(default, deserialize_with = "crate::etcd_flags::scalar")]
    pub max_snapshots: Option<String>,
    /// No effect in raftkv (etcd's WAL file retention).
    #[arg(long, env = "ETCD_MAX_WALS", hide = true)]
    #[serde(default, deserialize_with = "crate::etcd_flags::scalar")]
    pub max_wals: Option<String>,
    /// No effect in raftkv (etcd's bbolt commit interval).
    #[arg(long, env = "ETCD_BACKEND_BATCH_INTERVAL", hide = true)]
    #[serde(default, deserialize_with = "crate::etcd_flags::scalar")]
    pub backend_batch_interval: Option<String>,
    /// No effect in raftkv (etcd's bbolt batch size).
    #[arg(long, env = "ETCD_BACKEND_BATCH_LIMIT", hide = true)]
    #[serde(default, deserialize_with = "crate::etcd_flags::scalar")]
    pub backend_batch_limit: Option<String>,
    /// No effect in raftkv (`array` or `map`).
    #[arg(long, env = "ETCD_EXPERIMENTAL_BACKEND_BBOLT_FREELIST_TYPE", hide = true)]
    #[serde(default, deserialize_with = "crate::etcd_flags::scalar")]
    pub experimental_backend_bbolt_freelist_type: Option<String>,
    /// No effect in raftkv (etcd's compaction batch size).
    #[arg(long, env = "ETCD_EXPERIMENTAL_COMPACTION_BATCH_LIMIT", hide = true)]
    #[serde(default, deserialize_with = "crate::etcd_flags::scalar")]
    pub experimental_compaction_batch_limit: Option<String>,
    /// No effect in raftkv (etcd's slow-apply warning).
    #[arg(long, env = "ETCD_EXPERIMENTAL_WARNING_APPLY_DURATION", hide = true)]
    #[serde(default, deserialize_with = "crate::etcd_flags::scalar")]
    pub experimental_warning_apply_duration: Option<String>,
    /// No effect in raftkv (its own per-connection stream limit applies).
    #[arg(long, env = "ETCD_MAX_CONCURRENT_STREAMS", hide = true)]
    #[serde(default, deserialize_with = "crate::etcd_flags::scalar")]
    pub max_concurrent_streams: Option<String>,
    /// etcd's separate WAL directory: not supported (the log is in --data-dir).
    #[arg(long, env = "ETCD_WAL_DIR", hide = true)]
    #[serde(default, deserialize_with = "crate::etcd_flags::scalar")]
    pub wal_dir: Option<String>,
    /// etcd's CORS origins: not supported (empty only).
    #[arg(long, env = "ETCD_CORS", hide = true)]
    #[serde(default, deserialize_with = "crate::etcd_flags::scalar")]
    pub cors: Option<String>,
    /// etcd's allowed Host headers: `*` (all) only.
    #[arg(long, env = "ETCD_HOST_WHITELIST", hide = true)]
    #[serde(default, deserialize_with = "crate::etcd_flags::scalar")]
    pub host_whitelist: Option<String>,
    /// Certificate revocation lists: not supported (empty only).
    #[arg(long, env = "ETCD_CLIENT_CRL_FILE", hide = true)]
    #[serde(default, deserialize_with = "crate::etcd_flags::scalar")]
    pub client_crl_file: Option<String>,
    /// Certificate revocation lists: not supported (empty only).
    #[arg(long, env = "ETCD_PEER_CRL_FILE", hide = true)]
    #[serde(default, deserialize_with = "crate::etcd_flags::scalar")]
    pub peer_crl_file: Option<String>,
    /// Not supported (empty only).
    #[arg(long, env = "ETCD_CLIENT_CERT_ALLOWED_HOSTNAME", hide = true)]
    #[serde(default, deserialize_with = "crate::etcd_flags::scalar")]
    pub client_cert_allowed_hostname: Option<String>,
    /// Not supported (empty only).
    #[arg(long, env = "ETCD_PEER_CERT_ALLOWED_CN", hide = true)]
    #[serde(default, deserialize_with = "crate::etcd_flags::scalar")]
    pub peer_cert_allowed_cn: Option<String>,
    /// Not supported (empty only).
    #[arg(long, env = "ETCD_PEER_CERT_ALLOWED_HOSTNAME", hide = true)]
    #[serde(default, deserialize_with = "crate::etcd_flags::scalar")]
    pub peer_cert_allowed_hostname: Option<String>,
    /// etcd's discovery service: not supported (use --initial-cluster).
    #[arg(long, env = "ETCD_DISCOVERY", hide = true)]
    #[serde(default, deserialize_with = "crate::etcd_flags::scalar")]
    pub discovery: Option<String>,
    /// DNS discovery: not supported (use --initial-cluster).
    #[arg(long, env = "ETCD_DISCOVERY_SRV", hide = true)]
    #[serde(default, deserialize_with = "crate::etcd_flags::scalar")]
    pub discovery_srv: Option<String>,
    /// DNS discovery: not supported.
    #[arg(long, env = "ETCD_DISCOVERY_SRV_NAME", hide = true)]
    #[serde(default, deserialize_with = "crate::etcd_flags::scalar")]
    pub discovery_srv_name: Option<String>,
    /// Discovery: not supported.
    #[arg(long, env = "ETCD_DISCOVERY_PROXY", hide = true)]
    #[serde(default, deserialize_with = "crate::etcd_flags::scalar")]
    pub discovery_proxy: Option<String>,
    /// No effect in raftkv (`exit` or `proxy`, for discovery).
    #[arg(long, env = "ETCD_DISCOVERY_FALLBACK", hide = true)]
    #[serde(default, deserialize_with = "crate::etcd_flags::scalar")]
    pub discovery_fallback: Option<String>,
    /// Not supported (`false` only): see docs/operations.md, Recovering from a lost quorum.
    #[arg(long, env = "ETCD_FORCE_NEW_CLUSTER", hide = true, num_args = 0..=1, require_equals = true, default_missing_value = "true")]
    #[serde(default, deserialize_with = "crate::etcd_flags::scalar")]
    pub force_new_cluster: Option<String>,
    /// etcd's v2 proxy: `off` only.
    #[arg(long, env = "ETCD_PROXY", hide = true)]
    #[serde(default, deserialize_with = "crate::etcd_flags::scalar")]
    pub proxy: Option<String>,
    /// No effect in raftkv (v2 proxy).
    #[arg(long, env = "ETCD_PROXY_FAILURE_WAIT", hide = true)]
    #[serde(default, deserialize_with = "crate::etcd_flags::scalar")]
    pub proxy_failure_wait: Option<String>,
    /// No effect in raftkv (v2 proxy).
    #[arg(long, env = "ETCD_PROXY_REFRESH_INTERVAL", hide = true)]
    #[serde(default, deserialize_with = "crate::etcd_flags::scalar")]
    pub proxy_refresh_interval: Option<String>,
    /// No effect in raftkv (v2 proxy).
    #[arg(long, env = "ETCD_PROXY_DIAL_TIMEOUT", hide = true)]
    #[serde(default, deserialize_with = "crate::etcd_flags::scalar")]
    pub proxy_dial_timeout: Option<String>,
    /// No effect in raftkv (v2 proxy).
    #[arg(long, env = "ETCD_PROXY_WRITE_TIMEOUT", hide = true)]
    #[serde(default, deserialize_with = "crate::etcd_flags::scalar")]
    pub proxy_write_timeout: Option<String>,
    /// No effect in raftkv (v2 proxy).
    #[arg(long, env = "ETCD_PROXY_READ_TIMEOUT", hide = true)]
    #[serde(default, deserialize_with = "crate::etcd_flags::scalar")]
    pub proxy_read_timeout: Option<String>,
    /// Path to a TOML (.toml) or YAML (.yaml/.yml) file with these settings. Flags given on
    /// the command line override the file.
    #[arg(long, env = "ETCD_CONFIG_FILE")]
    #[serde(skip)]
    pub config_file: Option<PathBuf>,
}

/// A member of the initial cluster.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InitialMember {
    pub name: String,
    pub peer_urls: Vec<String>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ClusterState {
    New,
    Existing,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LogFormat {
    Text,
    Json,
}

/// A complete, validated configuration.
#[derive(Clone, Debug)]
pub struct ServerConfig {
    pub name: String,
    pub data_dir: PathBuf,
    pub listen_client: Vec<SocketAddr>,
    pub advertise_client_urls: Vec<String>,
    pub listen_peer: Vec<SocketAddr>,
    pub advertise_peer_urls: Vec<String>,
    pub initial_cluster: Vec<InitialMember>,
    pub initial_cluster_state: ClusterState,
    pub initial_cluster_token: String,
    pub heartbeat_interval_ms: u64,
    pub election_timeout_ms: u64,
    pub snapshot_count: u64,
    pub max_txn_ops: usize,
    pub max_request_bytes: usize,
    pub quota_backend_bytes: crate::member::quota::QuotaBytes,
    pub keepalive: crate::api::limits::Keepalive,
    /// How often a running member checks its certificate files for expiry.
    pub cert_check_interval: std::time::Duration,
    /// The watch progress notification interval.
    pub watch_progress_interval: std::time::Duration,
    /// Tokens, password hashing and certificate names (see [`crate::api::auth`]).
    pub auth: crate::api::auth::AuthOptions,
    pub auto_compaction: crate::member::autocompact::AutoCompaction,
    pub log_format: LogFormat,
    pub log_level: String,
    /// Runtime worker threads.
    pub worker_threads: usize,
    pub unsafe_no_fsync: bool,
    /// Whether --initial-cluster-token was given (a restarted member then checks it).
    pub initial_cluster_token_explicit: bool,
    /// Client port TLS flags, and whether the client URLs are https://.
    pub client_tls: crate::tls::TlsFlags,
    pub client_uses_tls: bool,
    /// Peer port TLS flags, and whether the peer URLs are https://.
    pub peer_tls: crate::tls::TlsFlags,
    pub peer_uses_tls: bool,
    pub cipher_suites: Vec<String>,
    /// Where to serve /metrics and the health checks besides the client port.
    pub listen_metrics: Vec<SocketAddr>,
    /// etcd flags given that have no effect in raftkv (logged at startup).
    pub etcd_flags_without_effect: Vec<String>,
}

/// The auth settings from `--auth-token`, `--auth-token-ttl` and `--bcrypt-cost`.
fn auth_options(
    token: &Option<String>,
    ttl: Option<u64>,
    cost: Option<u32>,
    client_cert_auth: bool,
) -> Result<crate::api::auth::AuthOptions, ConfigError> {
    let jwt = match token {
        Some(spec) => crate::api::jwt::parse_auth_token(spec)?,
        None => None,
    };
    let bcrypt_cost = cost.unwrap_or(crate::api::auth::DEFAULT_BCRYPT_COST);
    if !(4..=31).contains(&bcrypt_cost) {
        return Err(ConfigError::OutOfRange {
            flag: "--bcrypt-cost",
            value: bcrypt_cost.into(),
            allowed: "4 to 31",
        });
    }
    let ttl = ttl.unwrap_or(crate::api::auth::DEFAULT_TOKEN_TTL);
    if ttl == 0 {
        return Err(ConfigError::OutOfRange {
            flag: "--auth-token-ttl",
            value: 0,
            allowed: "at least 1 second",
        });
    }
    Ok(crate::api::auth::AuthOptions {
        token_ttl: std::time::Duration::from_secs(ttl),
        bcrypt_cost,
        client_cert_auth,
        jwt,
    })
}

/// A configuration problem, explained for the operator: the flag (or config file) at fault
/// and what is wrong with it.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error(transparent)]
    EtcdFlag(#[from] crate::etcd_flags::EtcdFlagError),
    #[error("cannot read config file {path}: {source}")]
    ReadFile { path: PathBuf, source: std::io::Error },
    #[error("invalid TOML in {path}: {source}")]
    Toml { path: PathBuf, source: toml::de::Error },
    #[error("invalid YAML in {path}: {source}")]
    Yaml { path: PathBuf, source: serde_yaml::Error },
    #[error("config file {path} must end in .toml, .yaml or .yml")]
    FileKind { path: PathBuf },
    /// A flag with a value it does not take (`expected` lists what it takes).
    #[error("invalid {flag} {value:?}: expected {expected}")]
    BadValue { flag: &'static str, value: String, expected: &'static str },
    /// A number outside what the flag allows.
    #[error("invalid {flag} {value}: expected {allowed}")]
    OutOfRange { flag: &'static str, value: u64, allowed: &'static str },
    /// A URL given to `flag` that cannot be listened on or dialed.
    #[error("{flag}: {source}")]
    Url { flag: &'static str, source: UrlError },
    #[error("invalid --initial-cluster entry {0:?}: expected name=http://host:port")]
    ClusterEntry(String),
    #[error("invalid --initial-cluster entry {0:?}: empty member name")]
    ClusterEntryName(String),
    #[error("--initial-cluster is empty")]
    EmptyCluster,
    #[error(
        "member name {name:?} is not in --initial-cluster ({cluster}); add {name}=<peer url> or fix --name"
    )]
    NotInCluster { name: String, cluster: String },
    #[error(
        "--initial-cluster has {name}={listed} but --initial-advertise-peer-urls is {advertised}: they must match"
    )]
    PeerUrlsMismatch { name: String, listed: String, advertised: String },
    #[error(
        "--election-timeout ({election_ms} ms) should be at least 5 times --heartbeat-interval ({heartbeat_ms} ms)"
    )]
    ElectionTimeoutTooShort { election_ms: u64, heartbeat_ms: u64 },
    #[error("--listen-metrics-urls {0}: only http:// is served for metrics")]
    HttpsMetrics(String),
    /// TLS flags that do not fit together or with the URLs' schemes.
    #[error(transparent)]
    Tls(#[from] crate::tls::TlsError),
    #[error(transparent)]
    AuthToken(#[from] crate::api::jwt::AuthTokenError),
    #[error(transparent)]
    Keepalive(#[from] crate::api::limits::KeepaliveError),
    #[error(transparent)]
    AutoCompaction(#[from] crate::member::autocompact::AutoCompactionError),
}

/// A URL that is not `http://IP:port` (or `https://`, or a bare `IP:port`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UrlError {
    #[error("unsupported URL {0:?}: expected http://host:port")]
    Unsupported(String),
    #[error("invalid URL {url:?}: expected http://IP:port (for example http://127.0.0.1:2379)")]
    Invalid { url: String, source: std::net::AddrParseError },
}

impl ServerArgs {
    /// The etcd compatibility flags given: (flag name, value).
    pub fn etcd_flags(&self) -> Vec<(&'static str, &str)> {
        [
            ("logger", self.logger.as_deref()),
            ("log-outputs", self.log_outputs.as_deref()),
            ("log-package-levels", self.log_package_levels.as_deref()),
            ("debug", self.debug.as_deref()),
            ("enable-v2", self.enable_v2.as_deref()),
            ("experimental-enable-v2v3", self.experimental_enable_v2v3.as_deref()),
            ("enable-pprof", self.enable_pprof.as_deref()),
            ("metrics", self.metrics.as_deref()),
            ("strict-reconfig-check", self.strict_reconfig_check.as_deref()),
            ("pre-vote", self.pre_vote.as_deref()),
            ("initial-election-tick-advance", self.initial_election_tick_advance.as_deref()),
            ("experimental-enable-lease-checkpoint", self.experimental_enable_lease_checkpoint.as_deref()),
            ("experimental-initial-corrupt-check", self.experimental_initial_corrupt_check.as_deref()),
            ("experimental-corrupt-check-time", self.experimental_corrupt_check_time.as_deref()),
            (
                "experimental-peer-skip-client-san-verification",
                self.experimental_peer_skip_client_san_verification.as_deref(),
            ),
            ("max-snapshots", self.max_snapshots.as_deref()),
            ("max-wals", self.max_wals.as_deref()),
            ("backend-batch-interval", self.backend_batch_interval.as_deref()),
            ("backend-batch-limit", self.backend_batch_limit.as_deref()),
            (
                "experimental-backend-bbolt-freelist-type",
                self.experimental_backend_bbolt_freelist_type.as_deref(),
            ),
            ("experimental-compaction-batch-limit", self.experimental_compaction_batch_limit.as_deref()),
            ("experimental-warning-apply-duration", self.experimental_warning_apply_duration.as_deref()),
            ("max-concurrent-streams", self.max_concurrent_streams.as_deref()),
            ("wal-dir", self.wal_dir.as_deref()),
            ("cors", self.cors.as_deref()),
            ("host-whitelist", self.host_whitelist.as_deref()),
            ("client-crl-file", self.client_crl_file.as_deref()),
            ("peer-crl-file", self.peer_crl_file.as_deref()),
            ("client-cert-allowed-hostname", self.client_cert_allowed_hostname.as_deref()),
            ("peer-cert-allowed-cn", self.peer_cert_allowed_cn.as_deref()),
            ("peer-cert-allowed-hostname", self.peer_cert_allowed_hostname.as_deref()),
            ("discovery", self.discovery.as_deref()),
            ("discovery-srv", self.discovery_srv.as_deref()),
            ("discovery-srv-name", self.discovery_srv_name.as_deref()),
            ("discovery-proxy", self.discovery_proxy.as_deref()),
            ("discovery-fallback", self.discovery_fallback.as_deref()),
            ("force-new-cluster", self.force_new_cluster.as_deref()),
            ("proxy", self.proxy.as_deref()),
            ("proxy-failure-wait", self.proxy_failure_wait.as_deref()),
            ("proxy-refresh-interval", self.proxy_refresh_interval.as_deref()),
            ("proxy-dial-timeout", self.proxy_dial_timeout.as_deref()),
            ("proxy-write-timeout", self.proxy_write_timeout.as_deref()),
            ("proxy-read-timeout", self.proxy_read_timeout.as_deref()),
        ]
        .into_iter()
        .filter_map(|(flag, value)| value.map(|v| (flag, v)))
        .collect()
    }
    /// Reads `path` as TOML or YAML according to its extension.
    pub fn from_file(path: &Path) -> Result<ServerArgs, ConfigError> {
        let text = std::fs::read_to_string(path)
            .map_err(|source| ConfigError::ReadFile { path: path.into(), source })?;
        let ext = path.extension().and_then(|e| e.to_str()).unwrap_or("").to_ascii_lowercase();
        match ext.as_str() {
            "toml" => toml::from_str(&text).map_err(|source| ConfigError::Toml { path: path.into(), source }),
            "yaml" | "yml" => {
                serde_yaml::from_str(&text).map_err(|source| ConfigError::Yaml { path: path.into(), source })
            }
            _ => Err(ConfigError::FileKind { path: path.into() }),
        }
    }

    /// Fields set here win over `base`.
    pub fn over(self, base: ServerArgs) -> ServerArgs {
        ServerArgs {
            name: self.name.or(base.name),
            data_dir: self.data_dir.or(base.data_dir),
            listen_client_urls: self.listen_client_urls.or(base.listen_client_urls),
            advertise_client_urls: self.advertise_client_urls.or(base.advertise_client_urls),
            listen_peer_urls: self.listen_peer_urls.or(base.listen_peer_urls),
            initial_advertise_peer_urls: self
                .initial_advertise_peer_urls
                .or(base.initial_advertise_peer_urls),
            initial_cluster: self.initial_cluster.or(base.initial_cluster),
            initial_cluster_state: self.initial_cluster_state.or(base.initial_cluster_state),
            initial_cluster_token: self.initial_cluster_token.or(base.initial_cluster_token),
            heartbeat_interval: self.heartbeat_interval.or(base.heartbeat_interval),
            election_timeout: self.election_timeout.or(base.election_timeout),
            snapshot_count: self.snapshot_count.or(base.snapshot_count),
            max_txn_ops: self.max_txn_ops.or(base.max_txn_ops),
            max_request_bytes: self.max_request_bytes.or(base.max_request_bytes),
            quota_backend_bytes: self.quota_backend_bytes.or(base.quota_backend_bytes),
            grpc_keepalive_min_time: self.grpc_keepalive_min_time.or(base.grpc_keepalive_min_time),
            grpc_keepalive_interval: self.grpc_keepalive_interval.or(base.grpc_keepalive_interval),
            grpc_keepalive_timeout: self.grpc_keepalive_timeout.or(base.grpc_keepalive_timeout),
            cert_check_interval: self.cert_check_interval.or(base.cert_check_interval),
            experimental_watch_progress_notify_interval: self
                .experimental_watch_progress_notify_interval
                .or(base.experimental_watch_progress_notify_interval),
            auth_token: self.auth_token.or(base.auth_token),
            auth_token_ttl: self.auth_token_ttl.or(base.auth_token_ttl),
            bcrypt_cost: self.bcrypt_cost.or(base.bcrypt_cost),
            auto_compaction_mode: self.auto_compaction_mode.or(base.auto_compaction_mode),
            auto_compaction_retention: self.auto_compaction_retention.or(base.auto_compaction_retention),
            log_format: self.log_format.or(base.log_format),
            log_level: self.log_level.or(base.log_level),
            worker_threads: self.worker_threads.or(base.worker_threads),
            unsafe_no_fsync: self.unsafe_no_fsync || base.unsafe_no_fsync,
            cert_file: self.cert_file.or(base.cert_file),
            key_file: self.key_file.or(base.key_file),
            trusted_ca_file: self.trusted_ca_file.or(base.trusted_ca_file),
            client_cert_auth: self.client_cert_auth.or(base.client_cert_auth),
            auto_tls: self.auto_tls.or(base.auto_tls),
            peer_cert_file: self.peer_cert_file.or(base.peer_cert_file),
            peer_key_file: self.peer_key_file.or(base.peer_key_file),
            peer_trusted_ca_file: self.peer_trusted_ca_file.or(base.peer_trusted_ca_file),
            peer_client_cert_auth: self.peer_client_cert_auth.or(base.peer_client_cert_auth),
            peer_auto_tls: self.peer_auto_tls.or(base.peer_auto_tls),
            cipher_suites: self.cipher_suites.or(base.cipher_suites),
            listen_metrics_urls: self.listen_metrics_urls.or(base.listen_metrics_urls),
            logger: self.logger.or(base.logger),
            log_outputs: self.log_outputs.or(base.log_outputs),
            log_package_levels: self.log_package_levels.or(base.log_package_levels),
            debug: self.debug.or(base.debug),
            enable_v2: self.enable_v2.or(base.enable_v2),
            experimental_enable_v2v3: self.experimental_enable_v2v3.or(base.experimental_enable_v2v3),
            enable_pprof: self.enable_pprof.or(base.enable_pprof),
            metrics: self.metrics.or(base.metrics),
            strict_reconfig_check: self.strict_reconfig_check.or(base.strict_reconfig_check),
            pre_vote: self.pre_vote.or(base.pre_vote),
            initial_election_tick_advance: self
                .initial_election_tick_advance
                .or(base.initial_election_tick_advance),
            experimental_enable_lease_checkpoint: self
                .experimental_enable_lease_checkpoint
                .or(base.experimental_enable_lease_checkpoint),
            experimental_initial_corrupt_check: self
                .experimental_initial_corrupt_check
                .or(base.experimental_initial_corrupt_check),
            experimental_corrupt_check_time: self
                .experimental_corrupt_check_time
                .or(base.experimental_corrupt_check_time),
            experimental_peer_skip_client_san_verification: self
                .experimental_peer_skip_client_san_verification
                .or(base.experimental_peer_skip_client_san_verification),
            max_snapshots: self.max_snapshots.or(base.max_snapshots),
            max_wals: self.max_wals.or(base.max_wals),
            backend_batch_interval: self.backend_batch_interval.or(base.backend_batch_interval),
            backend_batch_limit: self.backend_batch_limit.or(base.backend_batch_limit),
            experimental_backend_bbolt_freelist_type: self
                .experimental_backend_bbolt_freelist_type
                .or(base.experimental_backend_bbolt_freelist_type),
            experimental_compaction_batch_limit: self
                .experimental_compaction_batch_limit
                .or(base.experimental_compaction_batch_limit),
            experimental_warning_apply_duration: self
                .experimental_warning_apply_duration
                .or(base.experimental_warning_apply_duration),
            max_concurrent_streams: self.max_concurrent_streams.or(base.max_concurrent_streams),
            wal_dir: self.wal_dir.or(base.wal_dir),
            cors: self.cors.or(base.cors),
            host_whitelist: self.host_whitelist.or(base.host_whitelist),
            client_crl_file: self.client_crl_file.or(base.client_crl_file),
            peer_crl_file: self.peer_crl_file.or(base.peer_crl_file),
            client_cert_allowed_hostname: self
                .client_cert_allowed_hostname
                .or(base.client_cert_allowed_hostname),
            peer_cert_allowed_cn: self.peer_cert_allowed_cn.or(base.peer_cert_allowed_cn),
            peer_cert_allowed_hostname: self.peer_cert_allowed_hostname.or(base.peer_cert_allowed_hostname),
            discovery: self.discovery.or(base.discovery),
            discovery_srv: self.discovery_srv.or(base.discovery_srv),
            discovery_srv_name: self.discovery_srv_name.or(base.discovery_srv_name),
            discovery_proxy: self.discovery_proxy.or(base.discovery_proxy),
            discovery_fallback: self.discovery_fallback.or(base.discovery_fallback),
            force_new_cluster: self.force_new_cluster.or(base.force_new_cluster),
            proxy: self.proxy.or(base.proxy),
            proxy_failure_wait: self.proxy_failure_wait.or(base.proxy_failure_wait),
            proxy_refresh_interval: self.proxy_refresh_interval.or(base.proxy_refresh_interval),
            proxy_dial_timeout: self.proxy_dial_timeout.or(base.proxy_dial_timeout),
            proxy_write_timeout: self.proxy_write_timeout.or(base.proxy_write_timeout),
            proxy_read_timeout: self.proxy_read_timeout.or(base.proxy_read_timeout),
            config_file: self.config_file.or(base.config_file),
        }
    }
}

/// Parses `http://host:port` (or `https://`, or a bare `host:port`) into a socket address.
/// `localhost` resolves to 127.0.0.1.
pub fn parse_url(url: &str) -> Result<SocketAddr, UrlError> {
    let rest = url
        .strip_prefix("http://")
        .or_else(|| url.strip_prefix("https://"))
        .or_else(|| url.strip_prefix("unix://").map(|_| ""))
        .unwrap_or(url);
    if rest.is_empty() {
        return Err(UrlError::Unsupported(url.to_string()));
    }
    let rest = rest.trim_end_matches('/');
    let rest = rest.replace("localhost", "127.0.0.1");
    rest.parse::<SocketAddr>().map_err(|source| UrlError::Invalid { url: url.to_string(), source })
}

/// Parses the URLs given to `flag`.
fn parse_urls(flag: &'static str, urls: &[String]) -> Result<Vec<SocketAddr>, ConfigError> {
    urls.iter().map(|u| parse_url(u).map_err(|source| ConfigError::Url { flag, source })).collect()
}

fn split_urls(s: &str) -> Vec<String> {
    s.split(',').map(|u| u.trim().to_string()).filter(|u| !u.is_empty()).collect()
}

/// Parses `name=url,name=url2,other=url3` (a name may repeat to give several URLs).
pub fn parse_initial_cluster(s: &str) -> Result<Vec<InitialMember>, ConfigError> {
    let mut members: BTreeMap<String, Vec<String>> = BTreeMap::new();
    let mut order = Vec::new();
    for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let Some((name, url)) = part.split_once('=') else {
            return Err(ConfigError::ClusterEntry(part.to_string()));
        };
        let (name, url) = (name.trim(), url.trim());
        if name.is_empty() {
            return Err(ConfigError::ClusterEntryName(part.to_string()));
        }
        parse_url(url).map_err(|source| ConfigError::Url { flag: "--initial-cluster", source })?;
        if !members.contains_key(name) {
            order.push(name.to_string());
        }
        members.entry(name.to_string()).or_default().push(url.to_string());
    }
    if order.is_empty() {
        return Err(ConfigError::EmptyCluster);
    }
    Ok(order
        .into_iter()
        .map(|name| {
            let peer_urls = members.remove(&name).unwrap_or_default();
            InitialMember { name, peer_urls }
        })
        .collect())
}

impl ServerConfig {
    /// Applies defaults (etcd's) and checks the flags make sense together.
    pub fn resolve(args: ServerArgs) -> Result<ServerConfig, ConfigError> {
        let etcd = crate::etcd_flags::check(&args.etcd_flags())?;
        let args = match &args.config_file {
            Some(path) => {
                let file = ServerArgs::from_file(path)?;
                args.over(file)
            }
            None => args,
        };
        let name = args.name.unwrap_or_else(|| "default".to_string());
        let data_dir = args.data_dir.unwrap_or_else(|| PathBuf::from(format!("{name}.raftkv")));
        let listen_client_urls =
            split_urls(args.listen_client_urls.as_deref().unwrap_or("http://localhost:2379"));
        let advertise_client_urls =
            split_urls(args.advertise_client_urls.as_deref().unwrap_or("http://localhost:2379"));
        let listen_peer_urls =
            split_urls(args.listen_peer_urls.as_deref().unwrap_or("http://localhost:2380"));
        let advertise_peer_urls =
            split_urls(args.initial_advertise_peer_urls.as_deref().unwrap_or("http://localhost:2380"));
        let initial_cluster_raw = args
            .initial_cluster
            .unwrap_or_else(|| format!("{name}={}", advertise_peer_urls.join(&format!(",{name}="))));
        let initial_cluster = parse_initial_cluster(&initial_cluster_raw)?;
        let initial_cluster_state = match args.initial_cluster_state.as_deref().unwrap_or("new") {
            "new" => ClusterState::New,
            "existing" => ClusterState::Existing,
            other => {
                return Err(ConfigError::BadValue {
                    flag: "--initial-cluster-state",
                    value: other.to_string(),
                    expected: "new or existing",
                });
            }
        };
        let heartbeat_interval_ms = args.heartbeat_interval.unwrap_or(100);
        let election_timeout_ms = args.election_timeout.unwrap_or(1000);
        if heartbeat_interval_ms == 0 {
            return Err(ConfigError::OutOfRange {
                flag: "--heartbeat-interval",
                value: 0,
                allowed: "at least 1 ms",
            });
        }
        if election_timeout_ms < 5 * heartbeat_interval_ms {
            return Err(ConfigError::ElectionTimeoutTooShort {
                election_ms: election_timeout_ms,
                heartbeat_ms: heartbeat_interval_ms,
            });
        }
        if election_timeout_ms > 50_000 {
            return Err(ConfigError::OutOfRange {
                flag: "--election-timeout",
                value: election_timeout_ms,
                allowed: "at most 50000 ms",
            });
        }
        let worker_threads = match args.worker_threads {
            None => std::thread::available_parallelism().map_or(1, |n| n.get()),
            Some(n @ 1..=1024) => n,
            Some(n) => {
                return Err(ConfigError::OutOfRange {
                    flag: "--worker-threads",
                    value: u64::try_from(n).unwrap_or(u64::MAX),
                    allowed: "1 to 1024",
                });
            }
        };
        let log_format = match args.log_format.as_deref().unwrap_or("text") {
            "text" => LogFormat::Text,
            "json" => LogFormat::Json,
            other => {
                return Err(ConfigError::BadValue {
                    flag: "--log-format",
                    value: other.to_string(),
                    expected: "text or json",
                });
            }
        };
        let listen_client = parse_urls("--listen-client-urls", &listen_client_urls)?;
        let listen_peer = parse_urls("--listen-peer-urls", &listen_peer_urls)?;
        parse_urls("--advertise-client-urls", &advertise_client_urls)?;
        let mut advertised = parse_urls("--initial-advertise-peer-urls", &advertise_peer_urls)?;
        let Some(me) = initial_cluster.iter().find(|m| m.name == name) else {
            return Err(ConfigError::NotInCluster { name, cluster: initial_cluster_raw });
        };
        let mut mine = parse_urls("--initial-cluster", &me.peer_urls)?;
        mine.sort();
        advertised.sort();
        if mine != advertised {
            return Err(ConfigError::PeerUrlsMismatch {
                name,
                listed: me.peer_urls.join(","),
                advertised: advertise_peer_urls.join(","),
            });
        }
        let client_tls = crate::tls::TlsFlags {
            cert_file: args.cert_file,
            key_file: args.key_file,
            trusted_ca_file: args.trusted_ca_file,
            client_cert_auth: args.client_cert_auth.unwrap_or(false),
            auto_tls: args.auto_tls.unwrap_or(false),
        };
        let peer_tls = crate::tls::TlsFlags {
            cert_file: args.peer_cert_file,
            key_file: args.peer_key_file,
            trusted_ca_file: args.peer_trusted_ca_file,
            client_cert_auth: args.peer_client_cert_auth.unwrap_or(false),
            auto_tls: args.peer_auto_tls.unwrap_or(false),
        };
        let client_urls: Vec<&str> =
            listen_client_urls.iter().chain(&advertise_client_urls).map(String::as_str).collect();
        let client_uses_tls =
            crate::tls::urls_use_tls("--listen-client-urls and --advertise-client-urls", &client_urls)?;
        let peer_urls: Vec<&str> = listen_peer_urls
            .iter()
            .chain(&advertise_peer_urls)
            .chain(initial_cluster.iter().flat_map(|m| &m.peer_urls))
            .map(String::as_str)
            .collect();
        let peer_uses_tls = crate::tls::urls_use_tls(
            "--listen-peer-urls, --initial-advertise-peer-urls and --initial-cluster",
            &peer_urls,
        )?;
        client_tls.check("", client_uses_tls)?;
        peer_tls.check("peer-", peer_uses_tls)?;
        let auth = auth_options(
            &args.auth_token,
            args.auth_token_ttl,
            args.bcrypt_cost,
            client_tls.client_cert_auth,
        )?;
        let listen_metrics_urls = split_urls(args.listen_metrics_urls.as_deref().unwrap_or(""));
        if let Some(u) = listen_metrics_urls.iter().find(|u| u.starts_with("https://")) {
            return Err(ConfigError::HttpsMetrics(u.clone()));
        }
        let listen_metrics = parse_urls("--listen-metrics-urls", &listen_metrics_urls)?;
        let keepalive = crate::api::limits::Keepalive::from_flags(
            args.grpc_keepalive_min_time.as_deref(),
            args.grpc_keepalive_interval.as_deref(),
            args.grpc_keepalive_timeout.as_deref(),
        )?;
        let cert_check_interval = crate::api::limits::duration_flag(
            "--cert-check-interval",
            args.cert_check_interval.as_deref(),
            crate::certexpiry::CHECK_EVERY,
        )?;
        if cert_check_interval.is_zero() {
            return Err(ConfigError::OutOfRange {
                flag: "--cert-check-interval",
                value: 0,
                allowed: "a positive duration",
            });
        }
        // etcd keeps its default for an interval that is not positive.
        let watch_progress_interval = match args.experimental_watch_progress_notify_interval.as_deref() {
            Some(v) if v.trim().starts_with('-') => {
                crate::api::limits::duration_flag(
                    "--experimental-watch-progress-notify-interval",
                    Some(&v.trim()[1..]),
                    crate::api::watch::PROGRESS_INTERVAL,
                )?;
                crate::api::watch::PROGRESS_INTERVAL
            }
            v => crate::api::limits::duration_flag(
                "--experimental-watch-progress-notify-interval",
                v,
                crate::api::watch::PROGRESS_INTERVAL,
            )?,
        };
        let watch_progress_interval = if watch_progress_interval.is_zero() {
            crate::api::watch::PROGRESS_INTERVAL
        } else {
            watch_progress_interval
        };
        if args.max_request_bytes == Some(0) {
            return Err(ConfigError::OutOfRange {
                flag: "--max-request-bytes",
                value: 0,
                allowed: "a positive number",
            });
        }
        if args.max_txn_ops == Some(0) {
            return Err(ConfigError::OutOfRange {
                flag: "--max-txn-ops",
                value: 0,
                allowed: "a positive number",
            });
        }
        Ok(ServerConfig {
            client_tls,
            client_uses_tls,
            peer_tls,
            peer_uses_tls,
            cipher_suites: split_urls(args.cipher_suites.as_deref().unwrap_or("")),
            listen_metrics,
            name,
            data_dir,
            listen_client,
            advertise_client_urls,
            listen_peer,
            advertise_peer_urls,
            initial_cluster,
            initial_cluster_state,
            initial_cluster_token_explicit: args.initial_cluster_token.is_some(),
            initial_cluster_token: args.initial_cluster_token.unwrap_or_else(|| "raftkv-cluster".to_string()),
            heartbeat_interval_ms,
            election_timeout_ms,
            snapshot_count: args.snapshot_count.unwrap_or(100_000).max(1),
            max_txn_ops: args.max_txn_ops.unwrap_or(128),
            max_request_bytes: args.max_request_bytes.unwrap_or(1_572_864),
            quota_backend_bytes: crate::member::quota::QuotaBytes::from_flag(args.quota_backend_bytes),
            keepalive,
            cert_check_interval,
            watch_progress_interval,
            auth,
            auto_compaction: crate::member::autocompact::parse(
                args.auto_compaction_mode.as_deref(),
                args.auto_compaction_retention.as_deref(),
            )?,
            log_format,
            log_level: args
                .log_level
                .unwrap_or_else(|| (if etcd.debug { "debug" } else { "info" }).to_string()),
            worker_threads,
            unsafe_no_fsync: args.unsafe_no_fsync,
            etcd_flags_without_effect: etcd.no_effect,
        })
    }

    /// The Raft tick: a fraction of the heartbeat interval, so that election timeouts drawn
    /// at random in `[T, 2T)` ticks take one of many values rather than ten (two followers
    /// picking the same one split the vote and cost a whole extra election round).
    pub fn tick_ms(&self) -> u64 {
        (self.heartbeat_interval_ms / TICKS_PER_HEARTBEAT).max(1)
    }

    /// Heartbeat interval in ticks.
    pub fn heartbeat_ticks(&self) -> u32 {
        (self.heartbeat_interval_ms / self.tick_ms()).clamp(1, u32::MAX as u64) as u32
    }

    /// Election timeout in ticks.
    pub fn election_ticks(&self) -> u32 {
        let ticks = (self.election_timeout_ms / self.tick_ms()).min(u32::MAX as u64 / 2) as u32;
        ticks.max(self.heartbeat_ticks() + 1)
    }
}

/// A stable 64-bit FNV-1a hash, for deriving ids from names and URLs.
pub fn stable_hash(parts: &[&str]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for part in parts {
        for b in part.bytes().chain([0xff]) {
            h ^= b as u64;
            h = h.wrapping_mul(0x0000_0100_0000_01b3);
        }
    }
    h.max(1)
}

/// Member id: a hash of the member's peer URLs and the cluster token, as etcd derives it.
pub fn member_id(member: &InitialMember, token: &str) -> u64 {
    let mut urls = member.peer_urls.clone();
    urls.sort();
    let mut parts: Vec<&str> = urls.iter().map(String::as_str).collect();
    parts.push(token);
    stable_hash(&parts)
}

/// Cluster id: a hash of the sorted member ids and the token.
pub fn cluster_id(members: &[InitialMember], token: &str) -> u64 {
    let mut ids: Vec<String> = members.iter().map(|m| format!("{:016x}", member_id(m, token))).collect();
    ids.sort();
    let mut parts: Vec<&str> = ids.iter().map(String::as_str).collect();
    parts.push(token);
    stable_hash(&parts)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(name: &str, cluster: &str, peer: &str) -> ServerArgs {
        ServerArgs {
            name: Some(name.into()),
            initial_cluster: Some(cluster.into()),
            initial_advertise_peer_urls: Some(peer.into()),
            listen_peer_urls: Some(peer.into()),
            ..Default::default()
        }
    }

    #[test]
    fn defaults_are_etcds() {
        let c = ServerConfig::resolve(ServerArgs::default()).expect("defaults are valid");
        assert_eq!(c.name, "default");
        assert_eq!(c.listen_client, vec!["127.0.0.1:2379".parse().expect("addr")]);
        assert_eq!(c.heartbeat_interval_ms, 100);
        assert_eq!(c.election_timeout_ms, 1000);
        assert_eq!((c.tick_ms(), c.heartbeat_ticks(), c.election_ticks()), (20, 5, 50));
        assert_eq!(c.snapshot_count, 100_000);
        assert_eq!(c.initial_cluster.len(), 1);
    }

    #[test]
    fn watch_progress_interval_keeps_etcds_default_unless_positive() {
        let interval = |v: Option<&str>| {
            ServerConfig::resolve(ServerArgs {
                experimental_watch_progress_notify_interval: v.map(str::to_string),
                ..Default::default()
            })
            .map(|c| c.watch_progress_interval)
        };
        let default = crate::api::watch::PROGRESS_INTERVAL;
        assert_eq!(interval(None).expect("valid"), default);
        assert_eq!(interval(Some("1.5s")).expect("valid"), std::time::Duration::from_millis(1500));
        assert_eq!(interval(Some("0s")).expect("valid"), default);
        assert_eq!(interval(Some("-1s")).expect("valid"), default);
        for bad in ["soon", "-soon", "10"] {
            let e = interval(Some(bad)).expect_err(bad);
            assert!(e.to_string().contains("--experimental-watch-progress-notify-interval"), "{bad}: {e}");
        }
    }

    #[test]
    fn worker_threads_default_to_the_cpus_and_must_be_positive() {
        let c = ServerConfig::resolve(ServerArgs::default()).expect("defaults are valid");
        let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
        assert_eq!(c.worker_threads, cpus);
        let one = ServerArgs { worker_threads: Some(1), ..Default::default() };
        assert_eq!(ServerConfig::resolve(one).expect("valid").worker_threads, 1);
        let zero = ServerArgs { worker_threads: Some(0), ..Default::default() };
        let e = ServerConfig::resolve(zero).expect_err("0 workers");
        assert!(matches!(e, ConfigError::OutOfRange { flag: "--worker-threads", value: 0, .. }), "{e:?}");
        assert_eq!(e.to_string(), "invalid --worker-threads 0: expected 1 to 1024");
    }

    #[test]
    fn name_missing_from_initial_cluster_is_refused() {
        let e = ServerConfig::resolve(args("m4", "m1=http://127.0.0.1:2380", "http://127.0.0.1:2380"))
            .expect_err("must fail");
        assert!(matches!(&e, ConfigError::NotInCluster { name, .. } if name == "m4"), "{e:?}");
        assert!(e.to_string().contains("\"m4\" is not in --initial-cluster"), "{e}");
    }

    #[test]
    fn advertised_urls_must_match_initial_cluster() {
        let e = ServerConfig::resolve(args("m1", "m1=http://127.0.0.1:2380", "http://127.0.0.1:9999"))
            .expect_err("must fail");
        assert!(matches!(e, ConfigError::PeerUrlsMismatch { .. }), "{e:?}");
        assert!(e.to_string().contains("must match"), "{e}");
    }

    #[test]
    fn malformed_values_are_explained() {
        let e = parse_initial_cluster("m1").expect_err("no =");
        assert!(e.to_string().contains("expected name=http"), "{e}");
        let e = parse_url("http://nohost").expect_err("no port");
        assert!(matches!(&e, UrlError::Invalid { url, .. } if url == "http://nohost"), "{e:?}");
        assert!(e.to_string().contains("invalid URL"), "{e}");
        let a = ServerArgs { initial_cluster_state: Some("old".into()), ..Default::default() };
        let e = ServerConfig::resolve(a).expect_err("bad state");
        assert_eq!(e.to_string(), "invalid --initial-cluster-state \"old\": expected new or existing");
        let a = ServerArgs { election_timeout: Some(200), ..Default::default() };
        let e = ServerConfig::resolve(a).expect_err("too short");
        assert!(matches!(e, ConfigError::ElectionTimeoutTooShort { election_ms: 200, heartbeat_ms: 100 }));
        assert!(e.to_string().contains("at least 5 times"), "{e}");
    }

    #[test]
    fn config_file_yaml_and_toml_with_flag_override() {
        let dir = tempfile::tempdir().expect("tempdir");
        let yaml = dir.path().join("c.yaml");
        std::fs::write(&yaml, "name: m1\ninitial-cluster: m1=http://127.0.0.1:2380\nsnapshot-count: 42\n")
            .expect("write");
        let flags = ServerArgs { config_file: Some(yaml), snapshot_count: Some(7), ..Default::default() };
        let c = ServerConfig::resolve(flags).expect("valid");
        assert_eq!(c.name, "m1");
        assert_eq!(c.snapshot_count, 7, "flags override the file");
        let toml_path = dir.path().join("c.toml");
        std::fs::write(&toml_path, "name = \"m1\"\nheartbeat-interval = 50\nelection-timeout = 500\n")
            .expect("write");
        let c = ServerConfig::resolve(ServerArgs { config_file: Some(toml_path), ..Default::default() })
            .expect("a lone member defaults to a one-member cluster of itself");
        assert_eq!((c.heartbeat_interval_ms, c.heartbeat_ticks(), c.election_ticks()), (50, 5, 50));
        let bad = dir.path().join("c.yaml");
        std::fs::write(&bad, "nmae: typo\n").expect("write");
        let e = ServerConfig::resolve(ServerArgs { config_file: Some(bad), ..Default::default() })
            .expect_err("typo");
        assert!(matches!(&e, ConfigError::Yaml { path, .. } if path.ends_with("c.yaml")), "{e:?}");
        assert!(e.to_string().contains("unknown field"), "{e}");
    }

    /// Each kind of mistake is its own variant, and its text names the flag or file at fault.
    #[test]
    fn errors_name_the_flag_or_file() {
        let resolve = |a: ServerArgs| ServerConfig::resolve(a).expect_err("must fail");
        // A bad URL names the flag it was given to.
        let e =
            resolve(ServerArgs { listen_client_urls: Some("http://localhost".into()), ..Default::default() });
        assert!(matches!(
            &e,
            ConfigError::Url { flag: "--listen-client-urls", source: UrlError::Invalid { .. } }
        ));
        assert!(e.to_string().starts_with("--listen-client-urls: invalid URL \"http://localhost\""), "{e}");
        let e =
            resolve(ServerArgs { advertise_client_urls: Some("unix://sock".into()), ..Default::default() });
        assert!(matches!(
            &e,
            ConfigError::Url { flag: "--advertise-client-urls", source: UrlError::Unsupported(_) }
        ));
        let e = resolve(ServerArgs { listen_metrics_urls: Some("127.0.0.1:x".into()), ..Default::default() });
        assert!(e.to_string().starts_with("--listen-metrics-urls: invalid URL"), "{e}");
        let e = parse_initial_cluster("a=http://127.0.0.1:1,b=nohost").expect_err("bad url");
        assert!(e.to_string().starts_with("--initial-cluster: invalid URL \"nohost\""), "{e}");
        // Values out of range name the flag and the value.
        let e = resolve(ServerArgs { bcrypt_cost: Some(3), ..Default::default() });
        assert_eq!(e.to_string(), "invalid --bcrypt-cost 3: expected 4 to 31");
        let e = resolve(ServerArgs { max_txn_ops: Some(0), ..Default::default() });
        assert!(matches!(e, ConfigError::OutOfRange { flag: "--max-txn-ops", value: 0, .. }), "{e:?}");
        // The other modules' flag errors come through unchanged.
        let e = resolve(ServerArgs { grpc_keepalive_timeout: Some("soon".into()), ..Default::default() });
        assert!(
            matches!(e, ConfigError::Keepalive(crate::api::limits::KeepaliveError::NotADuration { .. })),
            "{e:?}"
        );
        let e = resolve(ServerArgs { auto_compaction_mode: Some("daily".into()), ..Default::default() });
        assert!(e.to_string().starts_with("invalid --auto-compaction-mode \"daily\""), "{e}");
        let e = resolve(ServerArgs { auth_token: Some("oauth".into()), ..Default::default() });
        assert!(
            matches!(e, ConfigError::AuthToken(crate::api::jwt::AuthTokenError::UnknownType(_))),
            "{e:?}"
        );
        // Conflicting TLS flags.
        let e = resolve(ServerArgs {
            listen_client_urls: Some("https://127.0.0.1:2379".into()),
            advertise_client_urls: Some("https://127.0.0.1:2379".into()),
            ..Default::default()
        });
        assert!(
            matches!(e, ConfigError::Tls(crate::tls::TlsError::NoCertificateFlags { prefix: "" })),
            "{e:?}"
        );
        assert!(e.to_string().contains("--cert-file and --key-file"), "{e}");
        // An unreadable config file is named, with the cause.
        let dir = tempfile::tempdir().expect("tempdir");
        let missing = dir.path().join("missing.toml");
        let e = resolve(ServerArgs { config_file: Some(missing.clone()), ..Default::default() });
        assert!(matches!(&e, ConfigError::ReadFile { path, .. } if *path == missing), "{e:?}");
        assert!(
            e.to_string().starts_with(&format!("cannot read config file {}: ", missing.display())),
            "{e}"
        );
        let ini = dir.path().join("c.ini");
        std::fs::write(&ini, "name = m1\n").expect("write");
        let e = resolve(ServerArgs { config_file: Some(ini), ..Default::default() });
        assert!(matches!(e, ConfigError::FileKind { .. }), "{e:?}");
    }

    #[test]
    fn ids_are_stable_and_distinct() {
        let ms = parse_initial_cluster("a=http://127.0.0.1:1,b=http://127.0.0.1:2").expect("valid");
        assert_ne!(member_id(&ms[0], "t"), member_id(&ms[1], "t"));
        assert_ne!(cluster_id(&ms, "t"), cluster_id(&ms, "u"));
        assert_eq!(cluster_id(&ms, "t"), cluster_id(&ms, "t"));
    }
}
