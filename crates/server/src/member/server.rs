//! Starting and stopping one member: identity, storage, transport, driver, client API.

use std::sync::Arc;
use std::time::Duration;

use raftkv_kv::{ColdStore, KvConfig};
use raftkv_raft::NodeId;
use raftkv_storage::{LogOptions, NodeIds, RealFs, Storage, SyncMode};
use raftkv_transport::{Transport, TransportConfig};
use thiserror::Error;
use tokio::sync::mpsc;

use crate::api::service::{Api, ApiConfig};
use crate::config::{ServerConfig, UrlError, parse_url};
use crate::member::identity;
use crate::node::{Node, NodeConfig};

/// Why a member could not start, or stopped on its own.
#[derive(Debug, Error)]
pub enum ServerError {
    #[error(transparent)]
    Member(#[from] identity::MemberError),
    #[error(transparent)]
    Tls(#[from] crate::tls::TlsError),
    #[error("cannot initialise the data dir {}: {source}", dir.display())]
    CreateStorage { dir: std::path::PathBuf, source: raftkv_storage::StorageError },
    #[error(
        "cannot open the data dir {}: {source}\n(see docs/storage.md for what to do when storage is damaged)",
        dir.display()
    )]
    OpenStorage { dir: std::path::PathBuf, source: raftkv_storage::StorageError },
    #[error("no --listen-peer-urls")]
    NoListenPeer,
    #[error("member {0} has no peer URL")]
    NoPeerUrl(String),
    #[error(transparent)]
    PeerUrl(#[from] UrlError),
    #[error("cannot prepare the snapshot staging directory: {0}")]
    SnapshotStaging(std::io::Error),
    #[error(transparent)]
    Transport(#[from] raftkv_transport::TransportError),
    #[error("cannot create the history cache file in {}: {source}", dir.display())]
    HistoryCache { dir: std::path::PathBuf, source: std::io::Error },
    #[error(transparent)]
    Node(#[from] crate::node::Error),
    #[error("cannot listen for {what} on {addr}: {source}")]
    Listen { what: &'static str, addr: std::net::SocketAddr, source: std::io::Error },
    #[error("cannot install a signal handler: {0}")]
    Signal(std::io::Error),
    /// The member learnt it was removed from the cluster, or is not in it.
    #[error("{0}")]
    Removed(String),
    #[error(
        "this member ({name}, peer URLs {urls}) is not in the cluster's configuration: the member lists of {asked} do not name its peer URLs. Add it first with `etcdctl member add {name} --peer-urls={urls}`"
    )]
    NotInConfiguration { name: String, urls: String, asked: String },
    #[error(
        "--initial-cluster-state existing: no member of --initial-cluster answered ({0}); the cluster must be running, and this member added to it first with `etcdctl member add`"
    )]
    NoPeerAnswered(String),
}

/// Runs the member until SIGINT/SIGTERM or a fatal error.
pub async fn run(config: ServerConfig) -> Result<(), ServerError> {
    use tracing::Instrument;
    let span = tracing::info_span!("member", name = %config.name);
    run_member(config).instrument(span).await
}

async fn run_member(config: ServerConfig) -> Result<(), ServerError> {
    let identity = identity::load_or_bootstrap(&config, config.initial_cluster_token_explicit)?;
    let mut record = identity.record;
    // TLS (checked before anything listens: a bad certificate file stops the member here).
    let tls = crate::tls::Ports::load(&config)?;
    crate::certexpiry::watch(tls.cert_files.clone(), config.cert_check_interval);
    if identity.fresh && record.joined_existing {
        join_cluster(&mut record, tls.peer.as_ref()).await?;
    }
    let ids = NodeIds { cluster_id: record.cluster_id, node_id: record.member_id };
    let fs = Arc::new(RealFs);
    let opts = LogOptions {
        sync: if config.unsafe_no_fsync { SyncMode::NoSyncUnsafeForBenchmarksOnly } else { SyncMode::Fsync },
        ..LogOptions::default()
    };
    let raft_dir = identity::raft_dir(&config.data_dir);
    let (storage, recovered) = if identity.fresh {
        let storage = Storage::create(fs, &raft_dir, ids, opts)
            .map_err(|source| ServerError::CreateStorage { dir: config.data_dir.clone(), source })?;
        identity::save(&config.data_dir, &record)?;
        (storage, raftkv_storage::Recovered { first_index: 1, ..Default::default() })
    } else {
        Storage::open(fs, &raft_dir, ids, opts)
            .map_err(|source| ServerError::OpenStorage { dir: config.data_dir.clone(), source })?
    };
    tracing::info!(
        name = %config.name,
        member_id = format!("{:x}", record.member_id),
        cluster_id = format!("{:x}", record.cluster_id),
        last_index = recovered.last_index,
        "starting member"
    );
    if !config.etcd_flags_without_effect.is_empty() {
        tracing::info!(
            flags = config.etcd_flags_without_effect.join(" "),
            "etcd flags accepted for compatibility have no effect in raftkv"
        );
    }

    // Peer transport.
    let listen_peer = *config.listen_peer.first().ok_or(ServerError::NoListenPeer)?;
    let mut tcfg = TransportConfig::new(record.cluster_id, NodeId(record.member_id), listen_peer);
    for m in &record.members {
        if m.id == record.member_id {
            continue;
        }
        let url = m.peer_urls.first().ok_or_else(|| ServerError::NoPeerUrl(m.name.clone()))?;
        tcfg.peers.insert(NodeId(m.id), parse_url(url)?.to_string());
    }
    tcfg.tls = tls.peer.clone();
    tcfg.snapshot_sinks = Arc::new(
        crate::member::peer::FileSinkFactory::new(identity::member_dir(&config.data_dir).join("snap-recv"))
            .map_err(ServerError::SnapshotStaging)?,
    );
    let (t_inbound_tx, t_inbound_rx) = mpsc::channel(4096);
    let (reports_tx, reports_rx) = mpsc::channel(1024);
    let transport = Transport::start(tcfg, t_inbound_tx, reports_tx).await?;
    let network = crate::member::peer::network(transport.clone());

    // The driver.
    let kv_config = KvConfig { max_txn_ops: config.max_txn_ops, ..KvConfig::default() };
    // Superseded values (the MVCC history) live in an unnamed cache file, off the heap.
    let member_dir = identity::member_dir(&config.data_dir);
    let cold = ColdStore::temp_file_in(&member_dir)
        .map_err(|source| ServerError::HistoryCache { dir: member_dir.clone(), source })?;
    // Snapshots share the history's bytes through segment files (incremental snapshots).
    let mut sm = crate::member::kvsm::new_machine(
        kv_config,
        cold,
        config.auth.token_ttl,
        config.watch_progress_interval,
    )
    .with_segment_dir(member_dir.join("snapshot-history"));
    // The bootstrap members; a snapshot's registry replaces them, configuration changes
    // in the log update them.
    sm.registry = crate::member::membership::seed_registry(&record.members);
    let node_config = NodeConfig {
        id: NodeId(record.member_id),
        // A joining member starts outside the configuration (so it never campaigns) until
        // the leader's log or snapshot brings the real one.
        voters: record
            .members
            .iter()
            .filter(|m| !(record.joined_existing && m.id == record.member_id))
            .map(|m| NodeId(m.id))
            .collect(),
        tick: Duration::from_millis(config.tick_ms()),
        heartbeat_ticks: config.heartbeat_ticks(),
        election_ticks: config.election_ticks(),
        snapshot_count: config.snapshot_count,
        snapshot_keep_entries: (config.snapshot_count / 2).clamp(1, 5000),
        request_queue: 16 * 1024,
        // The member id alone would give a member the same election timeouts at every
        // start, so the same member would win every first election of a cluster started
        // at once; the OS's randomness (as etcd's timer) varies it, the id keeps members
        // apart should that fail.
        seed: record.member_id ^ getrandom::u64().unwrap_or(0),
    };
    let (refusals_tx, refusals_rx) = mpsc::channel(64);
    let peers = Box::new(crate::member::peer::TransportSource {
        inbound: t_inbound_rx,
        reports: reports_rx,
        refusals: refusals_tx,
    });
    let node = Node::start(node_config, storage, recovered, sm, network.clone(), peers)?;
    let _ = network.driver.set(node.inbound());

    // The client API.
    let api = Api::new(
        node.handle.clone(),
        ApiConfig {
            cluster: record.clone(),
            client_urls: config.advertise_client_urls.clone(),
            max_request_bytes: config.max_request_bytes,
            max_txn_ops: config.max_txn_ops,
            request_timeout: Duration::from_millis(5000 + 2 * config.election_timeout_ms),
            election_timeout: Duration::from_millis(config.election_timeout_ms),
            unsafe_stale_reads: unsafe_stale_reads(),
            member_dir: member_dir.clone(),
            quota: config.quota_backend_bytes,
            keepalive: config.keepalive,
            peer_transport: Some(transport.clone()),
            auth: config.auth.clone(),
        },
    );
    let (removed_tx, removed_rx) = tokio::sync::oneshot::channel();
    tokio::spawn(crate::member::membership::watch(
        api.clone(),
        transport.clone(),
        tls.peer.clone(),
        refusals_rx,
        record.joined_existing,
        removed_tx,
    ));
    if let Some(quota) = config.quota_backend_bytes.0
        && quota > crate::member::quota::LARGE_QUOTA_BYTES
    {
        tracing::warn!(quota, "--quota-backend-bytes exceeds the maximum etcd recommends (8 GiB)");
    }
    let leases = crate::api::lease::Leases::start(
        api.clone(),
        crate::api::lease::LeaseConfig::new(config.heartbeat_interval_ms, config.election_timeout_ms),
    );
    // Peers' requests (forwarded changes and lease calls, member lists) are served from now.
    crate::member::forward::register(&api, &leases);
    let recipes = crate::api::lock::Recipes::new(api.clone(), leases.clone());
    let routes = crate::api::grpc::routes(api.clone())
        .add_service(crate::api::lease::service(leases.clone(), crate::api::grpc::decode_limit(&api)))
        .add_service(crate::api::auth::service(api.clone(), crate::api::grpc::decode_limit(&api)));
    let router =
        crate::api::lock::add_services(routes, recipes.clone(), crate::api::grpc::decode_limit(&api))
            .into_axum_router();
    let router = router
        .merge(crate::api::gateway::router(api.clone()))
        .merge(crate::api::lease::gateway_router(leases))
        .merge(crate::api::auth::gateway_router(api.clone()))
        .merge(crate::api::gateway::recipes::router(recipes, api.max_request_bytes()))
        // Every request the router serves runs as its caller (see crate::api::auth).
        .layer(axum::middleware::from_fn_with_state(api.clone(), crate::api::auth::scope_request));
    crate::metrics::attach(api.clone(), transport.clone(), Duration::from_millis(config.tick_ms()));
    let metrics_router = crate::metrics::router(api.clone());
    let router = router.merge(metrics_router.clone());
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let mut servers = Vec::new();
    for addr in &config.listen_client {
        let listener = tokio::net::TcpListener::bind(addr).await.map_err(|source| ServerError::Listen {
            what: "clients",
            addr: *addr,
            source,
        })?;
        let (api, router, stop) = (api.clone(), router.clone(), stop_rx.clone());
        let acceptor = tls.client.clone().map(tokio_rustls::TlsAcceptor::from);
        servers.push(tokio::spawn(crate::api::client_port::serve(listener, api, router, acceptor, stop)));
    }
    for addr in &config.listen_metrics {
        let listener = tokio::net::TcpListener::bind(addr).await.map_err(|source| ServerError::Listen {
            what: "metrics",
            addr: *addr,
            source,
        })?;
        let router = metrics_router.clone().merge(crate::api::gateway::health_router(api.clone()));
        servers.push(tokio::spawn(crate::metrics::serve(listener, router, stop_rx.clone())));
    }
    tracing::info!(
        clients = ?config.listen_client,
        client_tls = config.client_uses_tls,
        peer_tls = config.peer_uses_tls,
        metrics = ?config.listen_metrics,
        peers = %listen_peer,
        advertise_peer_urls = ?config.advertise_peer_urls,
        member_id = format!("{:x}", api.member_id()),
        cluster_id = format!("{:x}", api.cluster_id()),
        "ready to serve clients"
    );
    {
        let api = api.clone();
        let name = config.name.clone();
        tokio::spawn(async move { api.publish(name).await });
    }
    tokio::spawn(crate::member::autocompact::run(api.clone(), config.auto_compaction));
    let rewrite_due = api.node.shared.sm.read().hooks.rewrite_due.clone();
    tokio::spawn(crate::member::defrag::rewrite_after_compaction(api.clone(), rewrite_due));

    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .map_err(ServerError::Signal)?;
    let fatal = async {
        while !node.is_finished() {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    };
    let mut stopped_by: Option<String> = None;
    let graceful = tokio::select! {
        _ = tokio::signal::ctrl_c() => { tracing::info!("interrupted; shutting down"); true }
        _ = term.recv() => { tracing::info!("terminated; shutting down"); true }
        _ = fatal => { tracing::error!("the Raft driver stopped"); false }
        Ok(reason) = removed_rx => { stopped_by = Some(reason); false }
    };
    if graceful && node.handle.status().is_leader {
        // As etcd on a graceful stop: hand leadership over first, so the cluster does not
        // wait an election timeout for a new leader.
        let patience = Duration::from_millis(2 * config.election_timeout_ms);
        match node.handle.transfer_leader(None, patience).await {
            Ok(to) => tracing::info!(to = format!("{:x}", to.0), "leadership handed over before stopping"),
            Err(e) => tracing::info!(error = %e, "stopping without a leadership transfer"),
        }
    }
    api.begin_stop();
    let _ = stop_tx.send(true);
    for s in servers {
        let _ = tokio::time::timeout(Duration::from_secs(3), s).await;
    }
    let result = node.stop().await.map_err(ServerError::from);
    transport.shutdown().await;
    match stopped_by {
        Some(reason) => Err(ServerError::Removed(reason)),
        None => result,
    }
}

/// Attempts at finding this member in its peers' member lists: a peer that has not applied
/// the member's addition yet does not list it.
const JOIN_ROUNDS: usize = 3;

/// Peer URLs compared as sets, as etcd compares them (order and a trailing `/` aside).
fn same_urls(a: &[String], b: &[String]) -> bool {
    let norm = |urls: &[String]| {
        let mut v: Vec<String> = urls.iter().map(|u| u.trim_end_matches('/').to_string()).collect();
        v.sort();
        v.dedup();
        v
    };
    norm(a) == norm(b)
}

/// Joining a running cluster (`--initial-cluster-state existing`): asks the members of
/// `--initial-cluster` (other than this one) for the cluster's member list, as etcd does
/// (`GetClusterFromRemotePeers`), and takes from it the cluster id, this member's id (the
/// member with this member's peer URLs, which `member add` gave a fresh id) and the other
/// members' ids and URLs.
async fn join_cluster(
    record: &mut identity::ClusterRecord,
    tls: Option<&raftkv_transport::PeerTlsConfig>,
) -> Result<(), ServerError> {
    let own_urls = record
        .members
        .iter()
        .find(|m| m.name == record.name)
        .map(|m| m.peer_urls.clone())
        .ok_or(identity::MemberError::NotInCluster)?;
    let mut peers = Vec::new();
    for m in record.members.iter().filter(|m| m.name != record.name) {
        for url in &m.peer_urls {
            peers.push(url.clone());
        }
    }
    let mut failures = Vec::new();
    let mut not_listed = Vec::new();
    for round in 0..JOIN_ROUNDS {
        if round > 0 {
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
        failures.clear();
        not_listed.clear();
        // Every peer is asked: one that has not applied a recent removal can still list this
        // member's URLs under a removed member's id (a member removed and added again on the
        // same URLs), and a member that took that id would be refused as removed.
        let mut answers: Vec<(String, raftkv_transport::ClusterMembers, u64)> = Vec::new();
        // Asked together, so that a peer that does not answer costs one timeout, not one each.
        let mut asks = tokio::task::JoinSet::new();
        for (i, url) in peers.iter().enumerate() {
            let addr = match parse_url(url) {
                Ok(a) => a.to_string(),
                Err(e) => {
                    failures.push(format!("{url}: {e}"));
                    continue;
                }
            };
            let tls = tls.cloned();
            asks.spawn(async move {
                (i, raftkv_transport::discover_members(&addr, tls.as_ref(), Duration::from_secs(3)).await)
            });
        }
        let mut found_by_peer = Vec::new();
        while let Some(joined) = asks.join_next().await {
            if let Ok(answer) = joined {
                found_by_peer.push(answer);
            }
        }
        // In the order of --initial-cluster, as before.
        found_by_peer.sort_by_key(|(i, _)| *i);
        for (i, found) in found_by_peer {
            let url = &peers[i];
            let found = match found {
                Ok(found) => found,
                Err(e) => {
                    failures.push(format!("{url}: {e}"));
                    continue;
                }
            };
            let Some(me) = found.members.iter().find(|m| same_urls(&m.peer_urls, &own_urls)) else {
                not_listed.push(url.clone());
                continue;
            };
            if me.id.0 == 0 || found.cluster_id == 0 {
                failures.push(format!("{url}: answered with a zero id"));
                continue;
            }
            let id = me.id.0;
            answers.push((url.clone(), found, id));
        }
        let agreed = answers.windows(2).all(|w| w[0].2 == w[1].2);
        if answers.is_empty() || (!agreed && round + 1 < JOIN_ROUNDS) {
            if !agreed {
                failures.push(
                    "the peers list this member under different ids (one lags behind); asking again".into(),
                );
            }
            if not_listed.is_empty() && answers.is_empty() {
                break;
            }
            continue;
        }
        // Agreed, or after the last round the id most peers list.
        let count = |id: u64| answers.iter().filter(|a| a.2 == id).count();
        let Some(best) = answers.iter().max_by_key(|a| count(a.2)) else { continue };
        let (url, found, my_id) = (best.0.clone(), best.1.clone(), best.2);
        record.cluster_id = found.cluster_id;
        record.member_id = my_id;
        record.members = found
            .members
            .iter()
            .map(|m| identity::MemberRecord {
                id: m.id.0,
                name: if m.id.0 == my_id { record.name.clone() } else { m.name.clone() },
                peer_urls: m.peer_urls.clone(),
                is_learner: m.is_learner,
            })
            .collect();
        tracing::info!(
            cluster_id = format!("{:x}", found.cluster_id),
            member_id = format!("{my_id:x}"),
            members = found.members.len(),
            peer = %url,
            "joining a running cluster"
        );
        return Ok(());
    }
    if !not_listed.is_empty() {
        return Err(ServerError::NotInConfiguration {
            name: record.name.clone(),
            urls: own_urls.join(","),
            asked: not_listed.join(", "),
        });
    }
    Err(ServerError::NoPeerAnswered(failures.join("; ")))
}

/// Whether linearizable reads skip ReadIndex: `RAFTKV_UNSAFE_STALE_READS=1`, honoured only by
/// test builds (cargo feature `unsafe-stale-reads`), so the black-box tests can prove their
/// checker catches stale reads. A shipping binary ignores the variable.
fn unsafe_stale_reads() -> bool {
    if !std::env::var("RAFTKV_UNSAFE_STALE_READS").is_ok_and(|v| v == "1") {
        return false;
    }
    if cfg!(feature = "unsafe-stale-reads") {
        tracing::warn!("RAFTKV_UNSAFE_STALE_READS=1: linearizable reads skip ReadIndex (testing only)");
        true
    } else {
        tracing::warn!(
            "RAFTKV_UNSAFE_STALE_READS ignored: this binary was built without the unsafe-stale-reads feature"
        );
        false
    }
}
