//! Request limits and HTTP/2 keepalive, as etcd's flags define them, checked by the same
//! functions on the key-value fast path ([`crate::client_port`]) and for the services
//! tonic serves ([`crate::grpc`], leases, locks, watches).
//!
//! - `--max-request-bytes` (default 1.5 MiB): a gRPC message longer than it plus
//!   [`GRPC_OVERHEAD_BYTES`] is refused before it is buffered (`grpc: received message
//!   larger than max`, ResourceExhausted, as grpc-go); a command whose encoding is longer
//!   than the flag is refused before it is proposed (`etcdserver: request is too large`,
//!   InvalidArgument).
//! - `--max-txn-ops` (default 128): checked by [`raftkv_kv::validate_txn`] for every Txn
//!   (`etcdserver: too many operations in txn request`).
//! - `--grpc-keepalive-interval` (default 2h) and `--grpc-keepalive-timeout` (default 20s):
//!   every HTTP/2 connection of the client port is pinged after `interval` and closed when
//!   the answer takes longer than `timeout` (0 interval: no pings).
//! - `--grpc-keepalive-min-time` (default 5s): accepted and validated, not enforced, and
//!   the member says so in its log when the flag is given. The `h2` server answers PING
//!   frames itself and tells its user nothing of them, so it cannot count a client's pings
//!   and send grpc-go's GOAWAY(ENHANCE_YOUR_CALM, `too_many_pings`).

use std::time::Duration;

use tonic::{Code, Status};

/// gRPC's own framing beyond the request itself (etcd allows the same margin).
pub const GRPC_OVERHEAD_BYTES: usize = 512 * 1024;

/// The largest gRPC message accepted on the client port for `max_request_bytes`.
pub fn message_limit(max_request_bytes: usize) -> usize {
    max_request_bytes.saturating_add(GRPC_OVERHEAD_BYTES)
}

/// Refuses a gRPC message of `len` bytes above `limit` (grpc-go's error, as etcd answers).
pub fn check_message_len(len: usize, limit: usize) -> Result<(), Status> {
    if len > limit {
        return Err(Status::resource_exhausted(format!(
            "grpc: received message larger than max ({len} vs. {limit})"
        )));
    }
    Ok(())
}

/// Refuses a command whose encoding takes `len` bytes, more than `--max-request-bytes`.
pub fn check_request_len(len: usize, max_request_bytes: usize) -> Result<(), Status> {
    if len > max_request_bytes {
        return Err(Status::new(Code::InvalidArgument, "etcdserver: request is too large"));
    }
    Ok(())
}

/// The keepalive settings of the client port's HTTP/2 connections.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Keepalive {
    pub min_time: Duration,
    /// Whether `--grpc-keepalive-min-time` was given (it is not enforced: see the module).
    pub min_time_set: bool,
    /// `None`: the server does not ping.
    pub interval: Option<Duration>,
    pub timeout: Duration,
}

impl Default for Keepalive {
    fn default() -> Self {
        Keepalive {
            min_time: Duration::from_secs(5),
            min_time_set: false,
            interval: Some(Duration::from_secs(2 * 3600)),
            timeout: Duration::from_secs(20),
        }
    }
}

/// A keepalive flag that cannot be used.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum KeepaliveError {
    #[error("invalid {flag} {value:?}: expected a duration such as 5s, 2h or 500ms")]
    NotADuration { flag: &'static str, value: String },
    #[error("--grpc-keepalive-timeout must be positive")]
    ZeroTimeout,
}

fn duration_flag(
    flag: &'static str,
    value: Option<&str>,
    default: Duration,
) -> Result<Duration, KeepaliveError> {
    match value {
        None => Ok(default),
        Some(v) => crate::autocompact::parse_duration(v.trim())
            .ok_or_else(|| KeepaliveError::NotADuration { flag, value: v.to_string() }),
    }
}

impl Keepalive {
    /// From the three flags (Go durations); 0 interval disables the server's pings.
    pub fn from_flags(
        min_time: Option<&str>,
        interval: Option<&str>,
        timeout: Option<&str>,
    ) -> Result<Keepalive, KeepaliveError> {
        let d = Keepalive::default();
        let min_time_set = min_time.is_some();
        let min_time = duration_flag("--grpc-keepalive-min-time", min_time, d.min_time)?;
        let interval = duration_flag("--grpc-keepalive-interval", interval, Duration::from_secs(2 * 3600))?;
        let timeout = duration_flag("--grpc-keepalive-timeout", timeout, d.timeout)?;
        if timeout.is_zero() {
            return Err(KeepaliveError::ZeroTimeout);
        }
        Ok(Keepalive { min_time, min_time_set, interval: (!interval.is_zero()).then_some(interval), timeout })
    }
}

/// Pings the peer of an HTTP/2 connection every `interval`; returns when a ping is not
/// answered within `timeout` (the caller then closes the connection) or the connection
/// went away. Never returns when the keepalive is off.
pub async fn keepalive_pings(mut pings: h2::PingPong, keepalive: Keepalive) {
    let Some(interval) = keepalive.interval else {
        return std::future::pending().await;
    };
    loop {
        tokio::time::sleep(interval).await;
        match tokio::time::timeout(keepalive.timeout, pings.ping(h2::Ping::opaque())).await {
            Ok(Ok(_)) => {}
            Ok(Err(_)) => return,
            Err(_) => {
                tracing::info!(timeout = ?keepalive.timeout, "closing a client connection that did not answer a keepalive ping");
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checks_and_flags() {
        assert!(check_message_len(10, 10).is_ok());
        let e = check_message_len(11, 10).expect_err("too long");
        assert_eq!(
            (e.code(), e.message()),
            (Code::ResourceExhausted, "grpc: received message larger than max (11 vs. 10)")
        );
        let e = check_request_len(1_572_865, 1_572_864).expect_err("too large");
        assert_eq!((e.code(), e.message()), (Code::InvalidArgument, "etcdserver: request is too large"));
        assert_eq!(Keepalive::from_flags(None, None, None), Ok(Keepalive::default()));
        let k = Keepalive::from_flags(Some("1s"), Some("0s"), Some("500ms")).expect("valid");
        assert_eq!(
            (k.min_time, k.min_time_set, k.interval, k.timeout),
            (Duration::from_secs(1), true, None, Duration::from_millis(500))
        );
    }

    /// A bad keepalive flag is named, with the value given.
    #[test]
    fn a_bad_keepalive_flag_is_named() {
        let e = Keepalive::from_flags(None, Some("soon"), None).expect_err("bad");
        assert_eq!(
            e,
            KeepaliveError::NotADuration { flag: "--grpc-keepalive-interval", value: "soon".into() }
        );
        assert_eq!(
            e.to_string(),
            "invalid --grpc-keepalive-interval \"soon\": expected a duration such as 5s, 2h or 500ms"
        );
        let e = Keepalive::from_flags(Some("5"), None, None).expect_err("no unit");
        assert!(e.to_string().contains("--grpc-keepalive-min-time"), "{e}");
        let e = Keepalive::from_flags(None, None, Some("0s")).expect_err("zero");
        assert_eq!(e, KeepaliveError::ZeroTimeout);
        assert!(e.to_string().contains("--grpc-keepalive-timeout"), "{e}");
    }
}
