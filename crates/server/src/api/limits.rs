//! Request limits and HTTP/2 keepalive, as etcd's flags define them, checked by the same
//! functions on the key-value fast path ([`crate::api::client_port`]) and for the services
//! tonic serves ([`crate::api::grpc`], leases, locks, watches).
//!
//! - `--max-request-bytes` (default 1.5 MiB): a gRPC message longer than it plus
//!   [`GRPC_OVERHEAD_BYTES`] is refused before it is buffered (`grpc: received message
//!   larger than max`, ResourceExhausted, as grpc-go); a command whose encoding is longer
//!   than the flag is refused before it is proposed (`etcdserver: request is too large`,
//!   InvalidArgument).
//! - `--max-txn-ops` (default 128): checked by [`raftkv_kv::validate_txn`] for every Txn
//!   (`etcdserver: too many operations in txn request`).
//! - `--grpc-keepalive-interval` (default 2h), `--grpc-keepalive-timeout` (default 20s) and
//!   `--grpc-keepalive-min-time` (default 5s): the HTTP/2 keepalive of the client port, as
//!   etcd's gRPC server applies it ([`crate::api::keepalive`]).

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

/// The keepalive settings of the client port's HTTP/2 connections ([`crate::api::keepalive`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Keepalive {
    /// The least time between a client's pings (0: grpc-go's default, 5 minutes).
    pub min_time: Duration,
    /// How long a connection may be silent before the member pings it.
    pub interval: Duration,
    /// How long after that ping the connection may stay silent before it is closed.
    pub timeout: Duration,
}

/// grpc-go's server keepalive when etcd passes none.
const DEFAULT_INTERVAL: Duration = Duration::from_secs(2 * 3600);
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(20);

impl Default for Keepalive {
    fn default() -> Self {
        Keepalive { min_time: Duration::from_secs(5), interval: DEFAULT_INTERVAL, timeout: DEFAULT_TIMEOUT }
    }
}

/// A keepalive flag that cannot be used.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum KeepaliveError {
    #[error("invalid {flag} {value:?}: expected a duration such as 5s, 2h or 500ms")]
    NotADuration { flag: &'static str, value: String },
}

/// A duration flag (Go syntax), or `default` when it is not given.
pub fn duration_flag(
    flag: &'static str,
    value: Option<&str>,
    default: Duration,
) -> Result<Duration, KeepaliveError> {
    match value {
        None => Ok(default),
        Some(v) => crate::member::autocompact::parse_duration(v.trim())
            .ok_or_else(|| KeepaliveError::NotADuration { flag, value: v.to_string() }),
    }
}

impl Keepalive {
    /// From the three flags (Go durations). As etcd, a 0 interval or timeout sets neither:
    /// grpc-go's defaults (2h, 20s) apply.
    pub fn from_flags(
        min_time: Option<&str>,
        interval: Option<&str>,
        timeout: Option<&str>,
    ) -> Result<Keepalive, KeepaliveError> {
        let d = Keepalive::default();
        let min_time = duration_flag("--grpc-keepalive-min-time", min_time, d.min_time)?;
        let interval = duration_flag("--grpc-keepalive-interval", interval, d.interval)?;
        let timeout = duration_flag("--grpc-keepalive-timeout", timeout, d.timeout)?;
        let (interval, timeout) = if interval.is_zero() || timeout.is_zero() {
            (DEFAULT_INTERVAL, DEFAULT_TIMEOUT)
        } else {
            (interval, timeout)
        };
        Ok(Keepalive { min_time, interval, timeout })
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
        let k = Keepalive::from_flags(Some("1s"), Some("3s"), Some("500ms")).expect("valid");
        let (s, ms) = (Duration::from_secs, Duration::from_millis);
        assert_eq!((k.min_time, k.interval, k.timeout), (s(1), s(3), ms(500)));
        // A 0 interval or timeout: grpc-go's defaults for both.
        for (interval, timeout) in [("0s", "500ms"), ("3s", "0s")] {
            let k = Keepalive::from_flags(Some("0s"), Some(interval), Some(timeout)).expect("valid");
            assert_eq!((k.min_time, k.interval, k.timeout), (s(0), s(7200), s(20)));
        }
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
    }
}
