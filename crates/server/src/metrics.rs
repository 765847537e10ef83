//! `/metrics` (Prometheus text format) and the health endpoints `/readyz` and `/livez`.
//!
//! One registry per process (a process is one member). Names follow etcd where a metric
//! means the same, so etcd's Grafana dashboard works; raftkv's own are prefixed `raftkv_`.
//!
//! Cost on the request path: counters are atomics resolved once at start (the gRPC counters
//! per method and code sit in a table indexed by method and code: no lock, no allocation,
//! no label hashing per request). Gauges that mirror state (leader, indexes, key counts,
//! peer bytes) are read when scraped. The WAL fsync histogram is fed by the storage crate's
//! hook ([`raftkv_storage::observe`]); leader changes by a watcher that samples the
//! member's status every tick.

use std::sync::OnceLock;
use std::time::Duration;

use axum::Router;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use prometheus::{
    Encoder, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts,
    Registry, TextEncoder,
};
use tonic::Code;

use crate::api::service::Api;

/// The gRPC methods counted, as `(service, method, type)`: go-grpc-prometheus's labels.
const METHODS: &[(&str, &str, &str)] = &[
    ("etcdserverpb.KV", "Range", "unary"),
    ("etcdserverpb.KV", "Put", "unary"),
    ("etcdserverpb.KV", "DeleteRange", "unary"),
    ("etcdserverpb.KV", "Txn", "unary"),
    ("etcdserverpb.KV", "Compact", "unary"),
    ("etcdserverpb.Watch", "Watch", "bidi_stream"),
    ("etcdserverpb.Lease", "LeaseGrant", "unary"),
    ("etcdserverpb.Lease", "LeaseRevoke", "unary"),
    ("etcdserverpb.Lease", "LeaseKeepAlive", "bidi_stream"),
    ("etcdserverpb.Lease", "LeaseTimeToLive", "unary"),
    ("etcdserverpb.Lease", "LeaseLeases", "unary"),
    ("etcdserverpb.Cluster", "MemberAdd", "unary"),
    ("etcdserverpb.Cluster", "MemberRemove", "unary"),
    ("etcdserverpb.Cluster", "MemberUpdate", "unary"),
    ("etcdserverpb.Cluster", "MemberList", "unary"),
    ("etcdserverpb.Cluster", "MemberPromote", "unary"),
    ("etcdserverpb.Maintenance", "Alarm", "unary"),
    ("etcdserverpb.Maintenance", "Status", "unary"),
    ("etcdserverpb.Maintenance", "Defragment", "unary"),
    ("etcdserverpb.Maintenance", "Hash", "unary"),
    ("etcdserverpb.Maintenance", "HashKV", "unary"),
    ("etcdserverpb.Maintenance", "Snapshot", "server_stream"),
    ("etcdserverpb.Maintenance", "MoveLeader", "unary"),
    ("etcdserverpb.Auth", "AuthEnable", "unary"),
    ("etcdserverpb.Auth", "AuthDisable", "unary"),
    ("etcdserverpb.Auth", "Authenticate", "unary"),
    ("etcdserverpb.Auth", "UserAdd", "unary"),
    ("etcdserverpb.Auth", "UserGet", "unary"),
    ("etcdserverpb.Auth", "UserList", "unary"),
    ("etcdserverpb.Auth", "UserDelete", "unary"),
    ("etcdserverpb.Auth", "UserChangePassword", "unary"),
    ("etcdserverpb.Auth", "UserGrantRole", "unary"),
    ("etcdserverpb.Auth", "UserRevokeRole", "unary"),
    ("etcdserverpb.Auth", "RoleAdd", "unary"),
    ("etcdserverpb.Auth", "RoleGet", "unary"),
    ("etcdserverpb.Auth", "RoleList", "unary"),
    ("etcdserverpb.Auth", "RoleDelete", "unary"),
    ("etcdserverpb.Auth", "RoleGrantPermission", "unary"),
    ("etcdserverpb.Auth", "RoleRevokePermission", "unary"),
];

/// The 17 gRPC codes, by number, with the names go-grpc-prometheus uses.
const CODES: [&str; 17] = [
    "OK",
    "Canceled",
    "Unknown",
    "InvalidArgument",
    "DeadlineExceeded",
    "NotFound",
    "AlreadyExists",
    "PermissionDenied",
    "ResourceExhausted",
    "FailedPrecondition",
    "Aborted",
    "OutOfRange",
    "Unimplemented",
    "Internal",
    "Unavailable",
    "DataLoss",
    "Unauthenticated",
];

/// A counted gRPC method (an index into the method table).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Method(usize);

impl Method {
    /// The key-value calls, by their position in the table (Range, Put, DeleteRange, Txn,
    /// Compact): no lookup on the fast path.
    pub fn kv(index: usize) -> Method {
        Method(index.min(4))
    }

    /// The method a request path (`/service/method`) names, if it is counted.
    pub fn from_path(path: &str) -> Option<Method> {
        let (service, method) = path.strip_prefix('/')?.split_once('/')?;
        METHODS.iter().position(|(s, m, _)| *s == service && *m == method).map(Method)
    }
}

/// Every metric of this process.
pub struct Metrics {
    registry: Registry,
    grpc_started: Vec<IntCounter>,
    /// `[method][code]`.
    grpc_handled: Vec<[IntCounter; 17]>,
    has_leader: IntGauge,
    is_leader: IntGauge,
    leader_changes: IntCounter,
    proposals_committed: IntGauge,
    proposals_applied: IntGauge,
    pub proposals_pending: IntGauge,
    pub proposals_failed: IntCounter,
    wal_fsync: Histogram,
    backend_commit: Histogram,
    snapshot_save: Histogram,
    snapshot_restore: Histogram,
    peer_sent_bytes: IntGaugeVec,
    peer_received_bytes: IntGaugeVec,
    peer_rtt: HistogramVec,
    db_total_size: IntGauge,
    db_total_size_debugging: IntGauge,
    db_in_use: IntGauge,
    quota_bytes: IntGauge,
    defrag_stall: Histogram,
    read_batch: Histogram,
    pub health_success: IntCounter,
    pub health_failures: IntCounter,
    client_grpc_sent_bytes: IntCounter,
    client_grpc_received_bytes: IntCounter,
    keys_total: IntGauge,
    apply_lag: IntGauge,
    raft_term: IntGauge,
    server_id: IntGaugeVec,
    /// Where scrape-time gauges are read from (set once the member runs).
    sources: OnceLock<Sources>,
}

struct Sources {
    api: Api,
    transport: raftkv_transport::TransportHandle,
}

/// etcd's disk histograms: 1 ms to about 8 s, doubling.
fn disk_buckets() -> Vec<f64> {
    prometheus::exponential_buckets(0.001, 2.0, 14).unwrap_or_default()
}

/// The process's metrics (registered on first use).
pub fn get() -> &'static Metrics {
    static METRICS: OnceLock<Metrics> = OnceLock::new();
    METRICS.get_or_init(|| match Metrics::new() {
        Ok(m) => m,
        // Only a duplicate or malformed metric name can fail, which the unit test rules out.
        Err(e) => panic!("metrics registry: {e}"),
    })
}

impl Metrics {
    fn new() -> prometheus::Result<Metrics> {
        let registry = Registry::new();
        let r = &registry;
        fn reg<C: prometheus::core::Collector + Clone + 'static>(
            r: &Registry,
            c: C,
        ) -> prometheus::Result<C> {
            r.register(Box::new(c.clone()))?;
            Ok(c)
        }
        // process_cpu_seconds_total, process_resident_memory_bytes, process_open_fds,
        // process_max_fds, process_start_time_seconds, ... as etcd's Go client exports them.
        #[cfg(target_os = "linux")]
        r.register(Box::new(prometheus::process_collector::ProcessCollector::for_self()))?;
        let gauge = |name: &str, help: &str| reg(r, IntGauge::new(name, help)?);
        let counter = |name: &str, help: &str| reg(r, IntCounter::new(name, help)?);
        let histogram = |name: &str, help: &str, buckets: Vec<f64>| {
            reg(r, Histogram::with_opts(HistogramOpts::new(name, help).buckets(buckets))?)
        };
        let labels = ["grpc_type", "grpc_service", "grpc_method"];
        let started = reg(
            r,
            IntCounterVec::new(
                Opts::new("grpc_server_started_total", "Total number of RPCs started on the server."),
                &labels,
            )?,
        )?;
        let handled = reg(
            r,
            IntCounterVec::new(
                Opts::new(
                    "grpc_server_handled_total",
                    "Total number of RPCs completed on the server, regardless of success or failure.",
                ),
                &["grpc_type", "grpc_service", "grpc_method", "grpc_code"],
            )?,
        )?;
        let grpc_started =
            METHODS.iter().map(|(s, m, t)| started.with_label_values(&[*t, *s, *m])).collect::<Vec<_>>();
        let grpc_handled = METHODS
            .iter()
            .map(|(s, m, t)| {
                std::array::from_fn(|code| handled.with_label_values(&[*t, *s, *m, CODES[code]]))
            })
            .collect::<Vec<_>>();
        Ok(Metrics {
            grpc_started,
            grpc_handled,
            has_leader: gauge(
                "etcd_server_has_leader",
                "Whether or not a leader exists. 1 is existence, 0 is not.",
            )?,
            is_leader: gauge(
                "etcd_server_is_leader",
                "Whether or not this member is a leader. 1 if is, 0 otherwise.",
            )?,
            leader_changes: counter(
                "etcd_server_leader_changes_seen_total",
                "The number of leader changes seen.",
            )?,
            proposals_committed: gauge(
                "etcd_server_proposals_committed_total",
                "The total number of consensus proposals committed.",
            )?,
            proposals_applied: gauge(
                "etcd_server_proposals_applied_total",
                "The total number of consensus proposals applied.",
            )?,
            proposals_pending: gauge(
                "etcd_server_proposals_pending",
                "The current number of pending proposals to commit.",
            )?,
            proposals_failed: counter(
                "etcd_server_proposals_failed_total",
                "The total number of failed proposals seen.",
            )?,
            wal_fsync: histogram(
                "etcd_disk_wal_fsync_duration_seconds",
                "The latency distributions of fsync called by WAL.",
                disk_buckets(),
            )?,
            backend_commit: histogram(
                "etcd_disk_backend_commit_duration_seconds",
                "The latency distributions of commit called by backend (raftkv: writing a snapshot of the key-value state).",
                disk_buckets(),
            )?,
            snapshot_save: histogram(
                "raftkv_snapshot_save_duration_seconds",
                "Time to write a snapshot of the key-value state.",
                disk_buckets(),
            )?,
            snapshot_restore: histogram(
                "raftkv_snapshot_restore_duration_seconds",
                "Time to restore the key-value state from a snapshot.",
                disk_buckets(),
            )?,
            peer_sent_bytes: reg(
                r,
                IntGaugeVec::new(
                    Opts::new(
                        "etcd_network_peer_sent_bytes_total",
                        "The total number of bytes sent to peers.",
                    ),
                    &["To"],
                )?,
            )?,
            peer_received_bytes: reg(
                r,
                IntGaugeVec::new(
                    Opts::new(
                        "etcd_network_peer_received_bytes_total",
                        "The total number of bytes received from peers.",
                    ),
                    &["From"],
                )?,
            )?,
            peer_rtt: reg(
                r,
                HistogramVec::new(
                    HistogramOpts::new(
                        "etcd_network_peer_round_trip_time_seconds",
                        "Round-Trip-Time histogram between peers (raftkv: a leader's heartbeat to its answer).",
                    )
                    .buckets(prometheus::exponential_buckets(0.0001, 2.0, 16).unwrap_or_default()),
                    &["To"],
                )?,
            )?,
            db_total_size_debugging: gauge(
                "etcd_debugging_mvcc_db_total_size_in_bytes",
                "Total size of the underlying database physically allocated in bytes (the same figure as etcd_mvcc_db_total_size_in_bytes; older dashboards read this name).",
            )?,
            db_total_size: gauge(
                "etcd_mvcc_db_total_size_in_bytes",
                "Total size of the underlying database in bytes (raftkv: the store's size as the space quota counts it, see docs/operations.md).",
            )?,
            db_in_use: gauge(
                "etcd_mvcc_db_total_size_in_use_in_bytes",
                "Total size of the underlying database logically in use in bytes.",
            )?,
            quota_bytes: gauge(
                "etcd_server_quota_backend_bytes",
                "Current backend storage quota size in bytes (0: no quota).",
            )?,
            defrag_stall: histogram(
                "raftkv_defrag_stall_seconds",
                "How long a defragmentation held the store's write lock (the longest stall it caused).",
                prometheus::exponential_buckets(0.0001, 2.0, 16).unwrap_or_default(),
            )?,
            read_batch: histogram(
                "raftkv_read_index_batch_size",
                "Linearizable reads served by each ReadIndex request (one heartbeat round).",
                prometheus::exponential_buckets(1.0, 2.0, 12).unwrap_or_default(),
            )?,
            health_success: counter(
                "etcd_server_health_success",
                "The total number of successful health checks",
            )?,
            health_failures: counter(
                "etcd_server_health_failures",
                "The total number of failed health checks",
            )?,
            client_grpc_sent_bytes: counter(
                "etcd_network_client_grpc_sent_bytes_total",
                "The total number of bytes sent to grpc clients.",
            )?,
            client_grpc_received_bytes: counter(
                "etcd_network_client_grpc_received_bytes_total",
                "The total number of bytes received from grpc clients.",
            )?,
            keys_total: gauge("etcd_debugging_mvcc_keys_total", "Total number of keys.")?,
            apply_lag: gauge(
                "raftkv_server_apply_lag_entries",
                "Committed log entries not yet applied to the key-value state.",
            )?,
            raft_term: gauge("etcd_server_term", "The current raft term (raftkv: same meaning).")?,
            server_id: reg(
                r,
                IntGaugeVec::new(
                    Opts::new(
                        "etcd_server_id",
                        "Server or member ID in hexadecimal format. 1 for 'server_id' label with current ID.",
                    ),
                    &["server_id"],
                )?,
            )?,
            sources: OnceLock::new(),
            registry,
        })
    }

    /// A gRPC call started (streams: counted once, when opened).
    #[inline]
    pub fn grpc_started(&self, method: Method) {
        self.grpc_started[method.0].inc();
    }

    /// A gRPC call finished with `code`.
    #[inline]
    pub fn grpc_handled(&self, method: Method, code: Code) {
        let code = (code as usize).min(16);
        self.grpc_handled[method.0][code].inc();
    }

    /// gRPC messages sent to clients, `bytes` long in all (without gRPC's 5-byte prefix: the
    /// encoded messages, as etcd's codec counts them).
    #[inline]
    pub fn grpc_sent_bytes(&self, bytes: u64) {
        self.client_grpc_sent_bytes.inc_by(bytes);
    }

    /// gRPC messages received from clients, `bytes` long in all (as [`Metrics::grpc_sent_bytes`]).
    #[inline]
    pub fn grpc_received_bytes(&self, bytes: u64) {
        self.client_grpc_received_bytes.inc_by(bytes);
    }

    pub fn snapshot_saved(&self, took: Duration) {
        self.snapshot_save.observe(took.as_secs_f64());
        self.backend_commit.observe(took.as_secs_f64());
    }

    pub fn defrag_stalled(&self, took: Duration) {
        self.defrag_stall.observe(took.as_secs_f64());
    }

    pub fn snapshot_restored(&self, took: Duration) {
        self.snapshot_restore.observe(took.as_secs_f64());
    }

    fn refresh(&self) {
        let Some(src) = self.sources.get() else { return };
        let status = src.api.node.status();
        self.has_leader.set(i64::from(status.leader != 0));
        self.is_leader.set(i64::from(status.is_leader));
        self.proposals_committed.set(status.commit as i64);
        self.proposals_applied.set(status.applied as i64);
        self.apply_lag.set(status.commit.saturating_sub(status.applied) as i64);
        self.raft_term.set(status.term as i64);
        let (keys, size, in_use) = {
            let sm = src.api.node.shared.sm.read();
            (sm.kv.live_keys(), sm.kv.size_bytes(), sm.kv.size_in_use_bytes())
        };
        self.keys_total.set(keys as i64);
        // The figures Maintenance.Status reports (crate::member::quota defines them).
        self.db_total_size.set(size as i64);
        self.db_total_size_debugging.set(size as i64);
        self.db_in_use.set(in_use as i64);
        self.quota_bytes.set(src.api.quota.bytes.gauge());
        for (peer, bytes) in src.transport.peer_bytes_sent() {
            self.peer_sent_bytes.with_label_values(&[&format!("{:x}", peer.0)]).set(bytes as i64);
        }
        for (peer, bytes) in src.transport.peer_bytes_received() {
            self.peer_received_bytes.with_label_values(&[&format!("{:x}", peer.0)]).set(bytes as i64);
        }
    }

    /// The text exposition of every metric.
    pub fn render(&self) -> Result<String, RenderError> {
        self.refresh();
        let mut out = Vec::new();
        TextEncoder::new().encode(&self.registry.gather(), &mut out)?;
        Ok(String::from_utf8(out)?)
    }
}

/// Why the metrics could not be rendered.
#[derive(Debug, thiserror::Error)]
pub enum RenderError {
    #[error("cannot encode the metrics: {0}")]
    Encode(#[from] prometheus::Error),
    #[error("the metrics are not UTF-8: {0}")]
    Utf8(#[from] std::string::FromUtf8Error),
}

fn observe_fsync(took: Duration) {
    get().wal_fsync.observe(took.as_secs_f64());
}

fn observe_peer_rtt(peer: raftkv_raft::NodeId, took: Duration) {
    get().peer_rtt.with_label_values(&[&format!("{:x}", peer.0)]).observe(took.as_secs_f64());
}

fn observe_read_batch(n: usize) {
    get().read_batch.observe(n as f64);
}

/// Connects the metrics to a running member: scrape-time gauges, the fsync hook, and the
/// leader-change watcher (sampling every `tick`).
pub fn attach(api: Api, transport: raftkv_transport::TransportHandle, tick: Duration) {
    let m = get();
    m.server_id.with_label_values(&[&format!("{:x}", api.member_id())]).set(1);
    raftkv_storage::observe::set_fsync_observer(observe_fsync);
    raftkv_node::observe::set_read_batch_observer(observe_read_batch);
    raftkv_transport::observe::set_rtt_observer(observe_peer_rtt);
    let node = api.node.clone();
    let _ = m.sources.set(Sources { api, transport });
    tokio::spawn(async move {
        let mut last_leader = 0u64;
        let mut interval = tokio::time::interval(tick.max(Duration::from_millis(5)));
        interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        loop {
            interval.tick().await;
            let leader = node.status().leader;
            // As etcd: each time a (new) leader becomes known.
            if leader != 0 && leader != last_leader {
                m.leader_changes.inc();
            }
            if leader != 0 {
                last_leader = leader;
            }
        }
    });
}

/// `/metrics`, `/readyz`, `/livez` (the client port merges these into its router; the
/// `--listen-metrics-urls` listeners serve them with `/health`).
pub fn router(api: Api) -> Router {
    let ready_api = api.clone();
    Router::new()
        .route("/metrics", axum::routing::get(metrics))
        .route("/livez", axum::routing::get(|| async { (StatusCode::OK, "ok\n") }))
        .route(
            "/readyz",
            axum::routing::get(move || {
                let api = ready_api.clone();
                async move { readyz(api).await }
            }),
        )
}

async fn metrics() -> Response {
    match get().render() {
        Ok(text) => {
            ([(header::CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")], text).into_response()
        }
        Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, e.to_string()).into_response(),
    }
}

/// Ready: a leader is known and a linearizable read completes within a second.
async fn readyz(api: Api) -> Response {
    if api.node.status().leader == 0 {
        return (StatusCode::SERVICE_UNAVAILABLE, "[-]leader failed: no leader\nreadyz check failed\n")
            .into_response();
    }
    let probe = raftkv_api::etcdserverpb::RangeRequest {
        key: bytes::Bytes::from_static(b"health"),
        limit: 1,
        keys_only: true,
        ..Default::default()
    };
    match tokio::time::timeout(Duration::from_secs(1), api.range(probe)).await {
        Ok(Ok(_)) => (StatusCode::OK, "ok\n").into_response(),
        _ => (StatusCode::SERVICE_UNAVAILABLE, "[-]linearizable_read failed\nreadyz check failed\n")
            .into_response(),
    }
}

/// Serves the metrics router (with `/health`) on a plain-HTTP listener until `stop`.
pub async fn serve(
    listener: tokio::net::TcpListener,
    router: Router,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    let shutdown = async move {
        let _ = stop.wait_for(|s| *s).await;
    };
    if let Err(e) = axum::serve(listener, router).with_graceful_shutdown(shutdown).await {
        tracing::warn!(error = %e, "the metrics listener stopped");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn registry_builds_and_methods_resolve() {
        let m = Metrics::new().expect("metrics");
        let put = Method::from_path("/etcdserverpb.KV/Put").expect("Put");
        m.grpc_started(put);
        m.grpc_handled(put, Code::Unavailable);
        assert!(Method::from_path("/etcdserverpb.KV/Nope").is_none());
        assert!(Method::from_path("garbage").is_none());
        let text = m.render().expect("render");
        assert!(text.contains(
            r#"grpc_server_handled_total{grpc_code="Unavailable",grpc_method="Put",grpc_service="etcdserverpb.KV",grpc_type="unary"} 1"#
        ), "{text}");
        assert!(text.contains("etcd_disk_wal_fsync_duration_seconds_bucket"));
        m.grpc_sent_bytes(27);
        m.grpc_received_bytes(10);
        assert!(text.contains("# TYPE etcd_network_client_grpc_sent_bytes_total counter"), "{text}");
        let text = m.render().expect("render");
        assert!(text.contains("\netcd_network_client_grpc_sent_bytes_total 27\n"), "{text}");
        assert!(text.contains("\netcd_network_client_grpc_received_bytes_total 10\n"), "{text}");
        #[cfg(target_os = "linux")]
        for name in ["process_cpu_seconds_total", "process_resident_memory_bytes", "process_open_fds"] {
            assert!(text.contains(&format!("\n{name} ")), "{name} missing: {text}");
        }
    }
}
