//! A hook for metrics: the process may register one function that is told each measured
//! round trip to a peer (the server feeds `etcd_network_peer_round_trip_time_seconds` with
//! it). Unset, nothing is called.
//!
//! A round trip is measured on the message stream itself, from a heartbeat handed to
//! [`crate::TransportHandle::send`] to the peer's response to it arriving: one probe per peer
//! outstanding at a time, so it includes the time the heartbeat waited in the peer's queue and
//! the peer's handling of it, as a leader experiences it. Only a leader sends heartbeats, so
//! only a leader measures.

use std::sync::OnceLock;
use std::time::Duration;

use raftkv_raft::NodeId;

static RTT: OnceLock<fn(NodeId, Duration)> = OnceLock::new();

/// Registers `f` to be called with each measured round trip to a peer. Only the first
/// registration in a process takes effect.
pub fn set_rtt_observer(f: fn(NodeId, Duration)) {
    let _ = RTT.set(f);
}

pub(crate) fn rtt_measured(peer: NodeId, took: Duration) {
    if let Some(f) = RTT.get() {
        f(peer, took);
    }
}
