//! Starting and stopping one member: identity, storage, transport, driver, client API.

use std::sync::Arc;
use std::time::Duration;

use raftkv_kv::{ColdStore, KvConfig};
use raftkv_raft::NodeId;
use raftkv_storage::{LogOptions, NodeIds, RealFs, Storage, SyncMode};
use raftkv_transport::{Transport, TransportConfig};
use tokio::sync::mpsc;

use crate::config::{ServerConfig, parse_url};
use crate::member;
use crate::node::{Node, NodeConfig};
use crate::service::{Api, ApiConfig};

/// Runs the member until SIGINT/SIGTERM or a fatal error.
pub async fn run(config: ServerConfig) -> Result<(), String> {
    use tracing::Instrument;
    let span = tracing::info_span!("member", name = %config.name);
    run_member(config).instrument(span).await
}

async fn run_member(config: ServerConfig) -> Result<(), String> {
    let identity = member::load_or_bootstrap(&config, config.initial_cluster_token_explicit)?;
    let record = identity.record;
    let ids = NodeIds { cluster_id: record.cluster_id, node_id: record.member_id };
    let fs = Arc::new(RealFs);
    let opts = LogOptions {
        sync: if config.unsafe_no_fsync { SyncMode::NoSyncUnsafeForBenchmarksOnly } else { SyncMode::Fsync },
        ..LogOptions::default()
    };
    let raft_dir = member::raft_dir(&config.data_dir);
    let (storage, recovered) = if identity.fresh {
        let storage = Storage::create(fs, &raft_dir, ids, opts)
            .map_err(|e| format!("cannot initialise the data dir {}: {e}", config.data_dir.display()))?;
        member::save(&config.data_dir, &record)?;
        (storage, raftkv_storage::Recovered { first_index: 1, ..Default::default() })
    } else {
        Storage::open(fs, &raft_dir, ids, opts).map_err(|e| {
            format!(
                "cannot open the data dir {}: {e}\n(see docs/storage.md for what to do when storage is damaged)",
                config.data_dir.display()
            )
        })?
    };
    tracing::info!(
        name = %config.name,
        member_id = format!("{:x}", record.member_id),
        cluster_id = format!("{:x}", record.cluster_id),
        last_index = recovered.last_index,
        "starting member"
    );

    // TLS (checked before anything listens: a bad certificate file stops the member here).
    let tls = crate::tls::Ports::load(&config)?;

    // Peer transport.
    let listen_peer = *config.listen_peer.first().ok_or("no --listen-peer-urls")?;
    let mut tcfg = TransportConfig::new(record.cluster_id, NodeId(record.member_id), listen_peer);
    for m in &record.members {
        if m.id == record.member_id {
            continue;
        }
        let url = m.peer_urls.first().ok_or_else(|| format!("member {} has no peer URL", m.name))?;
        tcfg.peers.insert(NodeId(m.id), parse_url(url).map_err(|e| e.to_string())?.to_string());
    }
    tcfg.tls = tls.peer.clone();
    tcfg.snapshot_sinks = Arc::new(
        crate::peer::FileSinkFactory::new(member::member_dir(&config.data_dir).join("snap-recv"))
            .map_err(|e| format!("cannot prepare the snapshot staging directory: {e}"))?,
    );
    let (t_inbound_tx, t_inbound_rx) = mpsc::channel(4096);
    let (reports_tx, reports_rx) = mpsc::channel(1024);
    let transport = Transport::start(tcfg, t_inbound_tx, reports_tx).await.map_err(|e| e.to_string())?;
    let network = crate::peer::network(transport.clone());

    // The driver.
    let kv_config = KvConfig { max_txn_ops: config.max_txn_ops, ..KvConfig::default() };
    // Superseded values (the MVCC history) live in an unnamed cache file, off the heap.
    let member_dir = member::member_dir(&config.data_dir);
    let cold = ColdStore::temp_file_in(&member_dir)
        .map_err(|e| format!("cannot create the history cache file in {}: {e}", member_dir.display()))?;
    // Snapshots share the history's bytes through segment files (incremental snapshots).
    let sm = crate::kvsm::new_machine(kv_config, cold).with_segment_dir(member_dir.join("snapshot-history"));
    let node_config = NodeConfig {
        id: NodeId(record.member_id),
        voters: record.members.iter().map(|m| NodeId(m.id)).collect(),
        tick: Duration::from_millis(config.tick_ms()),
        heartbeat_ticks: config.heartbeat_ticks(),
        election_ticks: config.election_ticks(),
        snapshot_count: config.snapshot_count,
        snapshot_keep_entries: (config.snapshot_count / 2).clamp(1, 5000),
        request_queue: 16 * 1024,
        seed: record.member_id,
    };
    let peers = Box::new(crate::peer::TransportSource { inbound: t_inbound_rx, reports: reports_rx });
    let node = Node::start(node_config, storage, recovered, sm, network.clone(), peers)
        .map_err(|e| e.to_string())?;
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
            unsafe_stale_reads: std::env::var("RAFTKV_UNSAFE_STALE_READS").is_ok_and(|v| v == "1"),
            member_dir: member_dir.clone(),
        },
    );
    if std::env::var("RAFTKV_UNSAFE_STALE_READS").is_ok_and(|v| v == "1") {
        tracing::warn!("RAFTKV_UNSAFE_STALE_READS=1: linearizable reads skip ReadIndex (testing only)");
    }
    let leases = crate::lease::Leases::start(
        api.clone(),
        crate::lease::LeaseConfig::new(config.heartbeat_interval_ms, config.election_timeout_ms),
    );
    let recipes = crate::lock::Recipes::new(api.clone(), leases.clone());
    let routes = crate::grpc::routes(api.clone())
        .add_service(crate::lease::service(leases.clone(), crate::grpc::decode_limit(&api)));
    let router = crate::lock::add_services(routes, recipes.clone(), crate::grpc::decode_limit(&api))
        .into_axum_router();
    let router = router
        .merge(crate::gateway::router(api.clone()))
        .merge(crate::lease::gateway_router(leases))
        .merge(crate::gateway::recipes::router(recipes, api.max_request_bytes()));
    crate::metrics::attach(api.clone(), transport.clone(), Duration::from_millis(config.tick_ms()));
    let metrics_router = crate::metrics::router(api.clone());
    let router = router.merge(metrics_router.clone());
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let mut servers = Vec::new();
    for addr in &config.listen_client {
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .map_err(|e| format!("cannot listen for clients on {addr}: {e}"))?;
        let (api, router, stop) = (api.clone(), router.clone(), stop_rx.clone());
        let acceptor = tls.client.clone().map(tokio_rustls::TlsAcceptor::from);
        servers.push(tokio::spawn(crate::client_port::serve(listener, api, router, acceptor, stop)));
    }
    for addr in &config.listen_metrics {
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .map_err(|e| format!("cannot listen for metrics on {addr}: {e}"))?;
        let router = metrics_router.clone().merge(crate::gateway::health_router(api.clone()));
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
    tokio::spawn(crate::autocompact::run(api.clone(), config.auto_compaction));

    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .map_err(|e| format!("cannot install a signal handler: {e}"))?;
    let fatal = async {
        while !node.is_finished() {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => tracing::info!("interrupted; shutting down"),
        _ = term.recv() => tracing::info!("terminated; shutting down"),
        _ = fatal => tracing::error!("the Raft driver stopped"),
    }
    let _ = stop_tx.send(true);
    for s in servers {
        let _ = tokio::time::timeout(Duration::from_secs(3), s).await;
    }
    let result = node.stop().await.map_err(|e| e.to_string());
    transport.shutdown().await;
    result
}
