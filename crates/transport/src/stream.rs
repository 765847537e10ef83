//! Peer connections over plain TCP or TLS, and their read and write halves.
//!
//! Plain connections split into tokio's owned halves (no lock between them); TLS connections
//! into `tokio::io::split`'s halves (one TLS session shared by both).

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio_rustls::TlsStream;

/// TLS for peer connections: the server side (accepting) and the client side (dialing).
/// Both should present this member's certificate; with client authentication on the server
/// side, a peer without a certificate from the trusted CA fails the handshake, before any
/// transport frame is read.
#[derive(Clone)]
pub struct PeerTlsConfig {
    pub server: Arc<tokio_rustls::rustls::ServerConfig>,
    pub client: Arc<tokio_rustls::rustls::ClientConfig>,
}

impl std::fmt::Debug for PeerTlsConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("PeerTlsConfig")
    }
}

/// One peer connection.
pub(crate) enum PeerStream {
    Plain(TcpStream),
    Tls(Box<TlsStream<TcpStream>>),
}

pub(crate) enum ReadHalf {
    Plain(OwnedReadHalf),
    Tls(tokio::io::ReadHalf<Box<TlsStream<TcpStream>>>),
}

pub(crate) enum WriteHalf {
    Plain(OwnedWriteHalf),
    Tls(tokio::io::WriteHalf<Box<TlsStream<TcpStream>>>),
}

impl PeerStream {
    pub(crate) fn into_split(self) -> (ReadHalf, WriteHalf) {
        match self {
            PeerStream::Plain(tcp) => {
                let (r, w) = tcp.into_split();
                (ReadHalf::Plain(r), WriteHalf::Plain(w))
            }
            PeerStream::Tls(tls) => {
                let (r, w) = tokio::io::split(tls);
                (ReadHalf::Tls(r), WriteHalf::Tls(w))
            }
        }
    }
}

/// The name a peer's certificate must carry: the host of its address (`host:port`).
pub(crate) fn server_name(addr: &str) -> io::Result<rustls_pki_types::ServerName<'static>> {
    let host = addr.rsplit_once(':').map_or(addr, |(h, _)| h);
    let host = host.trim_start_matches('[').trim_end_matches(']');
    rustls_pki_types::ServerName::try_from(host.to_string())
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, format!("peer address {addr:?}: {e}")))
}

macro_rules! delegate_read {
    ($t:ty, $($v:ident),*) => {
        impl AsyncRead for $t {
            fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
                match self.get_mut() {
                    $(Self::$v(s) => Pin::new(s).poll_read(cx, buf),)*
                }
            }
        }
    };
}

macro_rules! delegate_write {
    ($t:ty, $($v:ident),*) => {
        impl AsyncWrite for $t {
            fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
                match self.get_mut() {
                    $(Self::$v(s) => Pin::new(s).poll_write(cx, buf),)*
                }
            }
            fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
                match self.get_mut() {
                    $(Self::$v(s) => Pin::new(s).poll_flush(cx),)*
                }
            }
            fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
                match self.get_mut() {
                    $(Self::$v(s) => Pin::new(s).poll_shutdown(cx),)*
                }
            }
            fn poll_write_vectored(
                self: Pin<&mut Self>,
                cx: &mut Context<'_>,
                bufs: &[io::IoSlice<'_>],
            ) -> Poll<io::Result<usize>> {
                match self.get_mut() {
                    $(Self::$v(s) => Pin::new(s).poll_write_vectored(cx, bufs),)*
                }
            }
            fn is_write_vectored(&self) -> bool {
                match self {
                    $(Self::$v(s) => s.is_write_vectored(),)*
                }
            }
        }
    };
}

delegate_read!(PeerStream, Plain, Tls);
delegate_write!(PeerStream, Plain, Tls);
delegate_read!(ReadHalf, Plain, Tls);
delegate_write!(WriteHalf, Plain, Tls);

/// Why a TLS handshake (or the first read after it) failed, in an operator's words, when
/// `e` is a TLS error: the other member's certificate refused here (expired, from an
/// unknown CA, not for the address dialed) or this member's refused there (an alert).
/// `None` for other I/O errors. Returns (the reason, the reason with rustls' details): the
/// details change from one attempt to the next (times), the reason does not.
pub(crate) fn tls_failure(e: &io::Error) -> Option<(String, String)> {
    use tokio_rustls::rustls::{CertificateError, Error};
    let inner = e.get_ref()?.downcast_ref::<Error>()?;
    let why = match inner {
        Error::InvalidCertificate(c) => {
            let what = match c {
                CertificateError::Expired | CertificateError::ExpiredContext { .. } => "it has expired",
                CertificateError::NotValidYet | CertificateError::NotValidYetContext { .. } => {
                    "it is not valid yet"
                }
                CertificateError::UnknownIssuer => {
                    "it is not signed by a trusted CA (--peer-trusted-ca-file)"
                }
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. } => {
                    "it does not name the address dialed"
                }
                CertificateError::Revoked => "it is revoked",
                _ => "it is invalid",
            };
            format!("the other member's certificate is refused: {what}")
        }
        Error::AlertReceived(alert) => {
            format!(
                "the other member refused the handshake, most likely this member's certificate (alert {alert:?})"
            )
        }
        other => return Some((other.to_string(), other.to_string())),
    };
    let detailed = format!("{why} ({inner})");
    Some((why, detailed))
}

/// At most one warning per key and reason every [`TlsWarnings::EVERY`]: a peer whose
/// certificate is refused is redialed every few hundred milliseconds.
#[derive(Debug, Default)]
pub(crate) struct TlsWarnings {
    last: std::sync::Mutex<std::collections::HashMap<String, (String, std::time::Instant)>>,
}

impl TlsWarnings {
    pub(crate) const EVERY: std::time::Duration = std::time::Duration::from_secs(60);
    /// Peers remembered at most; past it (within a minute) further failures are not logged
    /// (the refused-connection counter still counts them).
    const MAX_KEYS: usize = 1024;

    /// Whether a warning about `key` (a peer) failing with `reason` is due now.
    pub(crate) fn due(&self, key: &str, reason: &str) -> bool {
        let now = std::time::Instant::now();
        let Ok(mut last) = self.last.lock() else { return true };
        match last.get(key) {
            Some((r, at)) if r == reason && now.duration_since(*at) < Self::EVERY => false,
            _ => {
                // Keyed by an address when accepting: bounded, whoever connects.
                if last.len() >= Self::MAX_KEYS {
                    last.retain(|_, (_, at)| now.duration_since(*at) < Self::EVERY);
                    if last.len() >= Self::MAX_KEYS {
                        return false;
                    }
                }
                last.insert(key.to_string(), (reason.to_string(), now));
                true
            }
        }
    }

    /// Forgets `key`: its next failure is reported at once.
    pub(crate) fn clear(&self, key: &str) {
        if let Ok(mut last) = self.last.lock() {
            last.remove(key);
        }
    }
}
