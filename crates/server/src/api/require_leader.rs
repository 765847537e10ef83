//! etcd's `WithRequireLeader`: gRPC requests carrying the metadata `hasleader: true` (etcdctl's
//! watch, clientv3's `WithRequireLeader`, Kubernetes) want an answer only from a member that
//! knows a leader.
//!
//! As etcd 3.4's interceptors do: such a request (unary, or a stream at its start) fails with
//! `Unavailable: etcdserver: no leader` when this member knows no leader ([`check`], applied to
//! every gRPC request on the client port, the key-value fast path and the tonic services
//! alike); and such a stream (Watch, LeaseKeepAlive, Election.Observe, Maintenance.Snapshot) is ended with the same
//! error once the member has found no leader at [`MAX_NO_LEADER_CHECKS`] consecutive checks,
//! one per election timeout ([`UntilLeaderLost`]). Streams without the metadata are unaffected.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio_stream::Stream;
use tonic::Status;

use crate::api::service::Api;

/// The metadata key and value etcd's clients send (etcd's `rpctypes.MetadataRequireLeaderKey`
/// and `MetadataHasLeader`).
pub const METADATA_KEY: &str = "hasleader";
const METADATA_VALUE: &[u8] = b"true";
/// Consecutive election timeouts without a leader after which streams that require one end
/// (etcd's `maxNoLeaderCnt`): reconnecting a stream costs more than refusing a new request.
const MAX_NO_LEADER_CHECKS: u32 = 3;

/// etcd's `ErrGRPCNoLeader`.
pub fn no_leader() -> Status {
    Status::unavailable("etcdserver: no leader")
}

/// Whether a request's first `hasleader` value asks for a leader.
fn asks(value: Option<&[u8]>) -> bool {
    value == Some(METADATA_VALUE)
}

/// Whether these HTTP/2 request headers (gRPC metadata) ask for a leader.
pub fn required(headers: &http::HeaderMap) -> bool {
    asks(headers.get(METADATA_KEY).map(|v| v.as_bytes()))
}

/// Whether this tonic request's metadata asks for a leader.
pub fn required_by<T>(request: &tonic::Request<T>) -> bool {
    asks(request.metadata().get(METADATA_KEY).map(|v| v.as_bytes()))
}

fn has_leader(api: &Api) -> bool {
    api.node.status().leader != 0
}

/// Fails a request whose headers ask for a leader when this member knows none.
pub fn check(headers: &http::HeaderMap, api: &Api) -> Result<(), Status> {
    if required(headers) && !has_leader(api) { Err(no_leader()) } else { Ok(()) }
}

/// Resolves once the member has found no leader at [`MAX_NO_LEADER_CHECKS`] consecutive
/// checks, one per election timeout.
async fn leader_lost(api: Api) {
    let period = api.election_timeout().max(std::time::Duration::from_millis(1));
    let mut ticker = tokio::time::interval_at(tokio::time::Instant::now() + period, period);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut missing = 0;
    loop {
        ticker.tick().await;
        if has_leader(&api) {
            missing = 0;
        } else {
            missing += 1;
            if missing >= MAX_NO_LEADER_CHECKS {
                return;
            }
        }
    }
}

/// A response stream that, when its request asked for a leader, ends with
/// `etcdserver: no leader` once the member lost its leader (dropping the inner stream, which
/// ends the session feeding it).
/// Resolves once the member has been without a leader for [`MAX_NO_LEADER_CHECKS`] checks.
pub fn lost(api: &Api) -> Pin<Box<dyn Future<Output = ()> + Send>> {
    Box::pin(leader_lost(api.clone()))
}

pub struct UntilLeaderLost<S> {
    inner: Option<S>,
    lost: Option<Pin<Box<dyn Future<Output = ()> + Send>>>,
}

impl<S> UntilLeaderLost<S> {
    /// Wraps `inner`; watches the leader only if `required`.
    pub fn new(api: &Api, required: bool, inner: S) -> Self {
        let lost: Option<Pin<Box<dyn Future<Output = ()> + Send>>> =
            if required { Some(Box::pin(leader_lost(api.clone()))) } else { None };
        UntilLeaderLost { inner: Some(inner), lost }
    }
}

impl<S, T> Stream for UntilLeaderLost<S>
where
    S: Stream<Item = Result<T, Status>> + Unpin,
{
    type Item = Result<T, Status>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.get_mut();
        let Some(inner) = this.inner.as_mut() else { return Poll::Ready(None) };
        if let Some(lost) = this.lost.as_mut()
            && lost.as_mut().poll(cx).is_ready()
        {
            this.inner = None;
            this.lost = None;
            return Poll::Ready(Some(Err(no_leader())));
        }
        let next = Pin::new(inner).poll_next(cx);
        if let Poll::Ready(None) = next {
            this.inner = None;
            this.lost = None;
        }
        next
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_true_asks_for_a_leader() {
        let mut headers = http::HeaderMap::new();
        assert!(!required(&headers));
        headers.insert(METADATA_KEY, http::HeaderValue::from_static("false"));
        assert!(!required(&headers));
        headers.insert(METADATA_KEY, http::HeaderValue::from_static("true"));
        assert!(required(&headers));
        let mut request = tonic::Request::new(());
        assert!(!required_by(&request));
        request.metadata_mut().insert(METADATA_KEY, tonic::metadata::MetadataValue::from_static("true"));
        assert!(required_by(&request));
    }
}
