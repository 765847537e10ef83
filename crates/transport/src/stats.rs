//! Counters, readable at any time from [`crate::TransportHandle::stats`].

use std::sync::atomic::{AtomicU64, Ordering};

macro_rules! counters {
    ($($(#[$doc:meta])* $name:ident),* $(,)?) => {
        #[derive(Debug, Default)]
        pub(crate) struct Counters {
            $(pub(crate) $name: AtomicU64,)*
        }

        /// A point-in-time copy of the transport's counters (all since start).
        #[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
        pub struct TransportStats {
            $($(#[$doc])* pub $name: u64,)*
        }

        impl Counters {
            pub(crate) fn snapshot(&self) -> TransportStats {
                TransportStats { $($name: self.$name.load(Ordering::Relaxed),)* }
            }
        }
    };
}

counters!(
    /// Messages written to a peer's socket.
    messages_sent,
    /// Messages dropped: queue full, peer disconnected, unknown peer, too large, or lost
    /// with a failed write.
    messages_dropped,
    /// Messages received and handed to the inbound channel.
    messages_received,
    /// Bytes written on message streams (frames, headers included).
    bytes_sent,
    /// Bytes of message frames received.
    bytes_received,
    /// Batch writes: each is one `write_all` of one or more message frames.
    batches_sent,
    /// Outbound message connections established (handshake accepted).
    connects,
    /// Of those, the ones after the first to the same peer.
    reconnects,
    /// Outbound connection attempts that failed (connect, handshake, refusal).
    connect_failures,
    /// Outbound handshakes the peer refused.
    refused_by_peer,
    /// Inbound handshakes this transport refused.
    refused_inbound,
    /// Inbound connections closed for malformed or oversized frames or protocol violations.
    malformed_closed,
    /// Inbound connections closed at once because `max_inbound_connections` were open.
    inbound_over_limit,
    /// Snapshot transfers the receiver acknowledged.
    snapshots_sent,
    /// Snapshot transfers that failed on the sending side.
    snapshots_failed,
    /// Snapshots received, verified and handed to the inbound channel.
    snapshots_received,
    /// Incoming snapshot transfers rejected (bad CRC, gap, sink error, ...).
    snapshots_rejected,
    /// Requests sent that got an answer (of any code).
    requests_sent,
    /// Requests that failed on the sending side (no connection, timeout, malformed answer).
    requests_failed,
    /// Requests from peers handed to the handler.
    requests_served,
    /// Requests from peers answered unhandled: overloaded or no handler yet.
    requests_refused,
    /// Member lists sent on members streams.
    member_lists_sent,
);

impl Counters {
    pub(crate) fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }
}
