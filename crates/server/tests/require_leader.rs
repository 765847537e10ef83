//! etcd's `WithRequireLeader` (gRPC metadata `hasleader: true`): on a member that knows no
//! leader, such requests fail with `etcdserver: no leader` and such watch streams are ended
//! with it; requests and streams without the metadata are served as before.

mod common;

use std::time::Duration;

use common::{Cluster, Opts, channel, kv, maintenance};
use raftkv_api::etcdserverpb::watch_client::WatchClient;
use raftkv_api::etcdserverpb::watch_request::RequestUnion;
use raftkv_api::etcdserverpb::{
    RangeRequest, StatusRequest, WatchCreateRequest, WatchRequest, WatchResponse,
};
use tokio::sync::mpsc;
use tokio_stream::StreamExt;
use tokio_stream::wrappers::ReceiverStream;

const START: Duration = Duration::from_secs(20);

fn with_leader<T>(message: T, require: bool) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    if require {
        request.metadata_mut().insert("hasleader", tonic::metadata::MetadataValue::from_static("true"));
    }
    request
}

/// Opens a watch stream on `key`; returns its responses once the watcher is created. The
/// sender is returned so the request stream stays open.
async fn open_watch(
    port: u16,
    key: &str,
    require: bool,
) -> Result<(mpsc::Sender<WatchRequest>, tonic::Streaming<WatchResponse>), tonic::Status> {
    let (tx, rx) = mpsc::channel(4);
    let create = WatchCreateRequest { key: key.as_bytes().to_vec().into(), ..Default::default() };
    tx.send(WatchRequest { request_union: Some(RequestUnion::CreateRequest(create)) })
        .await
        .expect("queue the create request");
    let mut responses = WatchClient::new(channel(port))
        .watch(with_leader(ReceiverStream::new(rx), require))
        .await?
        .into_inner();
    let created = responses.message().await?.expect("a created response");
    assert!(created.created, "first response: {created:?}");
    Ok((tx, responses))
}

fn assert_no_leader(result: Result<impl std::fmt::Debug, tonic::Status>, what: &str) {
    match result {
        Err(s) => {
            assert_eq!(s.code(), tonic::Code::Unavailable, "{what}: {s:?}");
            assert_eq!(s.message(), "etcdserver: no leader", "{what}");
        }
        Ok(r) => panic!("{what}: answered without a leader: {r:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_that_require_a_leader_fail_without_one() {
    let mut c = Cluster::start(3, Opts::default());
    c.wait_leader(START).await;
    let port = c.port(0);
    c.put_retry(0, "k", "v", START).await;

    // With a leader, the metadata changes nothing.
    let range = RangeRequest { key: b"k".to_vec().into(), ..Default::default() };
    kv(port).range(with_leader(range.clone(), true)).await.expect("Range with a leader");
    maintenance(port).status(with_leader(StatusRequest {}, true)).await.expect("Status with a leader");
    let (_keep_required, mut required) = open_watch(port, "k", true).await.expect("watch requiring a leader");
    let (_keep_plain, mut plain) = open_watch(port, "k", false).await.expect("plain watch");

    // Member 0 alone: it loses its leader (or, as leader, steps down for lack of a quorum).
    c.kill9_all(&[1, 2]);
    let ended =
        tokio::time::timeout(START, required.message()).await.expect("the watch requiring a leader ends");
    assert_no_leader(ended, "watch requiring a leader");
    // The plain watch stays open: nothing arrives, and the stream does not end.
    let waited = tokio::time::timeout(Duration::from_secs(3), plain.next()).await;
    assert!(waited.is_err(), "the plain watch must stay open without a leader: {waited:?}");

    // Unary calls: the key-value fast path and a tonic service, with and without the metadata.
    let serializable = RangeRequest { serializable: true, ..range };
    assert_no_leader(
        kv(port).range(with_leader(serializable.clone(), true)).await,
        "Range requiring a leader",
    );
    let read =
        kv(port).range(with_leader(serializable, false)).await.expect("serializable Range without a leader");
    assert_eq!(read.into_inner().kvs.len(), 1);
    assert_no_leader(
        maintenance(port).status(with_leader(StatusRequest {}, true)).await,
        "Status requiring a leader",
    );
    let status = maintenance(port).status(with_leader(StatusRequest {}, false)).await.expect("plain Status");
    assert_eq!(status.into_inner().leader, 0);
    // A new stream requiring a leader is refused at its start; a plain one is served.
    assert_no_leader(open_watch(port, "k", true).await.map(|_| ()), "new watch requiring a leader");
    open_watch(port, "k", false).await.expect("new plain watch without a leader");

    // The plain watch still delivers once a quorum is back.
    c.start_member(1);
    c.wait_leader(START).await;
    c.put_retry(0, "k", "v2", START).await;
    let event =
        tokio::time::timeout(START, plain.message()).await.expect("an event").expect("the plain watch");
    let event = event.expect("the plain watch is open");
    assert_eq!(event.events.len(), 1, "{event:?}");
}
