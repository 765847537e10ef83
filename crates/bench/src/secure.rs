//! TLS and authentication for the load generator, with etcdctl's flags: `--cacert`,
//! `--cert`, `--key` for `https://` endpoints (rustls with the `ring` provider), and
//! `--user name:password`.
//!
//! The certificate files are read once, before any connection is made, so a bad file stops
//! the run with an error naming it. Each connection authenticates once when it is opened
//! and sends its token in the `token` metadata, as etcd's clients do; a request answered
//! "invalid auth token" (an expired or voided simple token) or "revision of auth store is
//! old" (checked against auth state that changed before it applied) authenticates the
//! connection again and is retried once, as etcd's clientv3 does. Concurrent requests that
//! see the same stale token wait for one re-authentication between them.

use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use http::HeaderValue;
use raftkv_api::etcdserverpb::auth_client::AuthClient;
use raftkv_api::etcdserverpb::maintenance_client::MaintenanceClient;
use raftkv_api::etcdserverpb::{AuthenticateRequest, StatusRequest, StatusResponse};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;
use tonic::Status;
use tonic::transport::Channel;

use crate::BenchError;

/// A problem with the TLS flags or their files.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read {what} {path}: {source}")]
    Read { what: &'static str, path: PathBuf, source: std::io::Error },
    #[error("{what} {path} is not valid PEM: {source}")]
    Pem { what: &'static str, path: PathBuf, source: rustls::pki_types::pem::Error },
    #[error("{what} {path} holds no certificate")]
    NoCertificate { what: &'static str, path: PathBuf },
    #[error("CA file {path}: {source}")]
    BadCa { path: PathBuf, source: rustls::Error },
    #[error("key file {key} does not fit certificate file {cert}: {source}")]
    KeyMismatch { cert: PathBuf, key: PathBuf, source: rustls::Error },
    #[error("--cert and --key must be given together")]
    HalfPair,
    #[error("--cert/--key need --cacert (the CA that signed the members' certificates)")]
    NoCa,
    #[error("TLS versions: {0}")]
    Versions(#[source] rustls::Error),
}

/// `--user name:password`.
#[derive(Clone)]
pub struct Credentials {
    pub name: String,
    password: String,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials").field("name", &self.name).finish_non_exhaustive()
    }
}

impl Credentials {
    /// `name:password` (the password may itself contain ':').
    pub fn parse(s: &str) -> Result<Credentials, BenchError> {
        match s.split_once(':') {
            Some((name, password)) if !name.is_empty() => {
                Ok(Credentials { name: name.to_string(), password: password.to_string() })
            }
            _ => Err(BenchError::Usage("--user takes name:password")),
        }
    }

    pub(crate) fn request(&self) -> AuthenticateRequest {
        AuthenticateRequest { name: self.name.clone(), password: self.password.clone() }
    }
}

/// How to reach the members: TLS or not, as whom.
#[derive(Clone, Default)]
pub struct Security {
    tls: Option<Arc<rustls::ClientConfig>>,
    user: Option<Credentials>,
}

impl Security {
    /// From etcdctl's flags. TLS is on when `cacert` is given.
    pub fn new(
        cacert: Option<&Path>,
        cert: Option<&Path>,
        key: Option<&Path>,
        user: Option<&str>,
    ) -> Result<Security, BenchError> {
        let user = user.map(Credentials::parse).transpose()?;
        let tls = match (cacert, cert, key) {
            (None, None, None) => None,
            (None, _, _) => return Err(TlsError::NoCa.into()),
            (Some(_), Some(_), None) | (Some(_), None, Some(_)) => return Err(TlsError::HalfPair.into()),
            (Some(ca), pair_cert, pair_key) => Some(Arc::new(client_config(ca, pair_cert.zip(pair_key))?)),
        };
        Ok(Security { tls, user })
    }

    /// Whether endpoints are `https://`.
    pub fn tls(&self) -> bool {
        self.tls.is_some()
    }

    /// The user the connections authenticate as.
    pub fn user(&self) -> Option<&Credentials> {
        self.user.as_ref()
    }

    pub(crate) fn tls_config(&self) -> Option<&Arc<rustls::ClientConfig>> {
        self.tls.as_ref()
    }
}

/// The TLS handshake on `tcp` with the member at `authority` (checked against its name or
/// IP address).
pub(crate) async fn handshake(
    config: &Arc<rustls::ClientConfig>,
    url: &str,
    authority: &http::uri::Authority,
    tcp: TcpStream,
) -> Result<TlsStream<TcpStream>, BenchError> {
    let host = authority.host().trim_start_matches('[').trim_end_matches(']');
    let name = ServerName::try_from(host.to_string())
        .map_err(|e| BenchError::bad_endpoint(url, format!("not a TLS server name: {e}")))?;
    tokio_rustls::TlsConnector::from(config.clone())
        .connect(name, tcp)
        .await
        .map_err(|e| BenchError::connect(url, format!("TLS handshake: {e}")))
}

/// A PEM file's problem: unreadable, or not PEM.
fn pem_error(what: &'static str, path: &Path, e: rustls::pki_types::pem::Error) -> TlsError {
    match e {
        rustls::pki_types::pem::Error::Io(source) => TlsError::Read { what, path: path.into(), source },
        source => TlsError::Pem { what, path: path.into(), source },
    }
}

/// Every certificate of a PEM file (at least one).
fn certificates(what: &'static str, path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(path)
        .and_then(|all| all.collect())
        .map_err(|e| pem_error(what, path, e))?;
    match certs.is_empty() {
        true => Err(TlsError::NoCertificate { what, path: path.into() }),
        false => Ok(certs),
    }
}

fn client_config(ca: &Path, pair: Option<(&Path, &Path)>) -> Result<rustls::ClientConfig, TlsError> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in certificates("CA file", ca)? {
        roots.add(cert).map_err(|source| TlsError::BadCa { path: ca.into(), source })?;
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(TlsError::Versions)?
        .with_root_certificates(roots);
    let mut config = match pair {
        None => builder.with_no_client_auth(),
        Some((cert, key)) => {
            let certs = certificates("certificate file", cert)?;
            let der = PrivateKeyDer::from_pem_file(key).map_err(|e| pem_error("key file", key, e))?;
            builder.with_client_auth_cert(certs, der).map_err(|source| TlsError::KeyMismatch {
                cert: cert.into(),
                key: key.into(),
                source,
            })?
        }
    };
    // etcd (Go's HTTP/2 server) speaks gRPC over TLS only to clients that ask for h2.
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok(config)
}

/// Whether a request failed for its token, so that a new one is worth a retry: an expired
/// or voided token (`etcdserver: invalid auth token` on the KV service, `auth: invalid auth
/// token` on the Maintenance service) or a check against auth state that has since changed
/// (`etcdserver: revision of auth store is old`, `auth: revision in header is old`).
pub(crate) fn stale_token(status: &Status) -> bool {
    let m = status.message();
    m.ends_with("invalid auth token")
        || m.ends_with("revision of auth store is old")
        || m.ends_with("revision in header is old")
}

/// One connection's token, replaced when the members stop accepting it.
pub(crate) struct Session {
    user: Credentials,
    /// (generation, token): the generation counts re-authentications.
    token: RwLock<(u64, HeaderValue)>,
    /// Held while re-authenticating, so one request does it for all that saw the old token.
    refresh: tokio::sync::Mutex<()>,
}

impl Session {
    pub(crate) fn new(user: Credentials, token: &str) -> Result<Session, Status> {
        Ok(Session { user, token: RwLock::new((0, header(token)?)), refresh: tokio::sync::Mutex::new(()) })
    }

    pub(crate) fn request(&self) -> AuthenticateRequest {
        self.user.request()
    }

    /// Re-authentications so far.
    pub(crate) fn renewals(&self) -> u64 {
        self.current().0
    }

    /// The token in use and its generation.
    pub(crate) fn current(&self) -> (u64, HeaderValue) {
        match self.token.read() {
            Ok(t) => t.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    /// A token newer than generation `seen`: the one another request already fetched, or
    /// a new one from `authenticate` (called with the refresh lock held).
    pub(crate) async fn renew<F, Fut>(&self, seen: u64, authenticate: F) -> Result<HeaderValue, Status>
    where
        F: FnOnce(AuthenticateRequest) -> Fut,
        Fut: std::future::Future<Output = Result<String, Status>>,
    {
        let _guard = self.refresh.lock().await;
        let (generation, token) = self.current();
        if generation != seen {
            return Ok(token);
        }
        let fresh = header(&authenticate(self.request()).await?)?;
        let mut slot = match self.token.write() {
            Ok(t) => t,
            Err(poisoned) => poisoned.into_inner(),
        };
        *slot = (generation + 1, fresh.clone());
        Ok(fresh)
    }
}

fn header(token: &str) -> Result<HeaderValue, Status> {
    HeaderValue::from_str(token).map_err(|_| Status::internal("the auth token is not a valid header value"))
}

/// A tonic channel to `url`, over TLS when configured (a connector doing TCP and the TLS
/// handshake: tonic's own TLS is not built in). The generator's leader lookup uses it, and
/// so can tools and tests that set up a cluster with the same flags.
pub async fn channel(
    security: &Security,
    url: &str,
    timeout: std::time::Duration,
) -> Result<Channel, BenchError> {
    let tls = security.tls_config().cloned();
    // With TLS the connector below does the handshake itself, so tonic is given the
    // endpoint as `http://`: a tonic built with its own TLS feature (as feature unification
    // in a workspace build can make it) refuses an `https://` endpoint it has no TLS
    // configuration for.
    let endpoint_url = match (&tls, url.strip_prefix("https://")) {
        (Some(_), Some(rest)) => format!("http://{rest}"),
        _ => url.to_string(),
    };
    let endpoint = tonic::transport::Endpoint::from_shared(endpoint_url)
        .map_err(|e| BenchError::bad_endpoint(url, e))?
        .connect_timeout(std::time::Duration::from_secs(5))
        .timeout(timeout)
        .tcp_nodelay(true);
    let Some(config) = tls else {
        return endpoint.connect().await.map_err(|e| BenchError::connect(url, e));
    };
    let target = url.to_string();
    let connector = tower::service_fn(move |uri: http::Uri| {
        let (config, target) = (config.clone(), target.clone());
        async move {
            let authority =
                uri.authority().cloned().ok_or_else(|| BenchError::bad_endpoint(&target, "no host"))?;
            let tcp = crate::tcp(&target, &authority, 443).await?;
            let tls = handshake(&config, &target, &authority, tcp).await?;
            Ok::<_, BenchError>(hyper_util::rt::TokioIo::new(tls))
        }
    });
    endpoint.connect_with_connector(connector).await.map_err(|e| BenchError::connect(url, source_chain(&e)))
}

/// An error with its sources ("transport error: ...: TLS handshake: ...").
fn source_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut s = e.to_string();
    let mut next = e.source();
    while let Some(inner) = next {
        s.push_str(": ");
        s.push_str(&inner.to_string());
        next = inner.source();
    }
    s
}

/// Maintenance.Status on the tonic path, as `user` when given (authenticating first, and
/// again if the token is refused).
pub(crate) async fn status(
    channel: Channel,
    url: &str,
    user: Option<&Credentials>,
) -> Result<StatusResponse, BenchError> {
    let Some(user) = user else {
        return MaintenanceClient::new(channel)
            .status(StatusRequest {})
            .await
            .map(tonic::Response::into_inner)
            .map_err(|e| BenchError::connect(url, e.message()));
    };
    let authenticate = |req: AuthenticateRequest| {
        let channel = channel.clone();
        async move { AuthClient::new(channel).authenticate(req).await.map(|r| r.into_inner().token) }
    };
    let first = authenticate(user.request()).await.map_err(|e| BenchError::auth(url, user, &e))?;
    let session = Session::new(user.clone(), &first).map_err(|e| BenchError::auth(url, user, &e))?;
    let call = |token: HeaderValue| {
        let channel = channel.clone();
        async move {
            let mut req = tonic::Request::new(StatusRequest {});
            let token = tonic::metadata::MetadataValue::try_from(token.as_bytes())
                .map_err(|_| Status::internal("the auth token is not valid metadata"))?;
            req.metadata_mut().insert("token", token);
            MaintenanceClient::new(channel).status(req).await.map(tonic::Response::into_inner)
        }
    };
    let (generation, token) = session.current();
    let answer = match call(token).await {
        Err(e) if stale_token(&e) => match session.renew(generation, authenticate).await {
            Ok(token) => call(token).await,
            Err(e) => return Err(BenchError::auth(url, user, &e)),
        },
        other => other,
    };
    answer.map_err(|e| BenchError::connect(url, e.message()))
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicU64, Ordering};

    use super::*;

    fn write(dir: &Path, name: &str, data: &str) -> PathBuf {
        let path = dir.join(name);
        std::fs::write(&path, data).expect("write a test file");
        path
    }

    fn issued(dir: &Path) -> (PathBuf, PathBuf, PathBuf, PathBuf) {
        let ca_key = rcgen::KeyPair::generate().expect("key");
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).expect("params");
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        let ca = params.self_signed(&ca_key).expect("CA");
        let key = rcgen::KeyPair::generate().expect("key");
        let other = rcgen::KeyPair::generate().expect("key");
        let cert = rcgen::CertificateParams::new(vec!["localhost".to_string()])
            .expect("params")
            .signed_by(&key, &ca, &ca_key)
            .expect("sign");
        (
            write(dir, "ca.pem", &ca.pem()),
            write(dir, "client.pem", &cert.pem()),
            write(dir, "client-key.pem", &key.serialize_pem()),
            write(dir, "other-key.pem", &other.serialize_pem()),
        )
    }

    fn tls_error(r: Result<Security, BenchError>) -> TlsError {
        match r {
            Err(BenchError::Tls(e)) => e,
            Err(e) => panic!("expected a TLS error, got {e}"),
            Ok(_) => panic!("expected a TLS error, got a configuration"),
        }
    }

    #[test]
    fn flags_and_files_give_typed_errors() {
        let dir = tempfile::tempdir().expect("temp dir");
        let (ca, cert, key, other_key) = issued(dir.path());
        let missing = dir.path().join("missing.pem");
        let garbage =
            write(dir.path(), "garbage.pem", "-----BEGIN CERTIFICATE-----\n!!!\n-----END CERTIFICATE-----\n");
        let empty = write(dir.path(), "empty.pem", "no PEM here\n");

        let ok = Security::new(Some(&ca), Some(&cert), Some(&key), Some("bench:pw")).expect("valid flags");
        assert!(ok.tls());
        assert_eq!(ok.user().map(|u| u.name.as_str()), Some("bench"));
        assert!(!Security::new(None, None, None, None).expect("no flags").tls());

        let e = tls_error(Security::new(Some(&missing), None, None, None));
        assert!(matches!(&e, TlsError::Read { what: "CA file", path, .. } if *path == missing), "{e}");
        assert!(e.to_string().contains("missing.pem"), "{e}");
        let e = tls_error(Security::new(Some(&garbage), None, None, None));
        assert!(matches!(e, TlsError::Pem { what: "CA file", .. }), "{e}");
        let e = tls_error(Security::new(Some(&empty), None, None, None));
        assert!(matches!(e, TlsError::NoCertificate { what: "CA file", .. }), "{e}");
        let e = tls_error(Security::new(Some(&ca), Some(&cert), Some(&missing), None));
        assert!(matches!(e, TlsError::Read { what: "key file", .. }), "{e}");
        let e = tls_error(Security::new(Some(&ca), Some(&empty), Some(&key), None));
        assert!(matches!(e, TlsError::NoCertificate { what: "certificate file", .. }), "{e}");
        let e = tls_error(Security::new(Some(&ca), Some(&cert), Some(&other_key), None));
        assert!(matches!(e, TlsError::KeyMismatch { .. }), "{e}");
        assert!(matches!(tls_error(Security::new(Some(&ca), Some(&cert), None, None)), TlsError::HalfPair));
        assert!(matches!(tls_error(Security::new(None, Some(&cert), Some(&key), None)), TlsError::NoCa));
    }

    #[test]
    fn user_flag_is_name_colon_password() {
        let c = Credentials::parse("bench:p:w").expect("valid");
        assert_eq!((c.name.as_str(), c.password.as_str()), ("bench", "p:w"));
        assert!(!format!("{c:?}").contains("p:w"), "the password is not printed");
        assert!(matches!(Credentials::parse("bench"), Err(BenchError::Usage(_))));
        assert!(matches!(Credentials::parse(":pw"), Err(BenchError::Usage(_))));
    }

    #[test]
    fn stale_tokens_are_recognised() {
        for m in [
            "etcdserver: invalid auth token",
            "auth: invalid auth token",
            "etcdserver: revision of auth store is old",
            "auth: revision in header is old",
        ] {
            assert!(stale_token(&Status::unauthenticated(m)), "{m}");
        }
        assert!(!stale_token(&Status::invalid_argument("etcdserver: user name is empty")));
        assert!(!stale_token(&Status::permission_denied("etcdserver: permission denied")));
    }

    /// Requests that saw the same stale token share one re-authentication.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn one_renewal_for_many_requests() {
        let session = Arc::new(Session::new(Credentials::parse("u:p").expect("valid"), "t0").expect("token"));
        let calls = Arc::new(AtomicU64::new(0));
        let (generation, _) = session.current();
        let mut tasks = Vec::new();
        for _ in 0..16 {
            let (session, calls) = (session.clone(), calls.clone());
            tasks.push(tokio::spawn(async move {
                session
                    .renew(generation, |req| async move {
                        assert_eq!(req.name, "u");
                        let n = calls.fetch_add(1, Ordering::SeqCst) + 1;
                        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
                        Ok(format!("t{n}"))
                    })
                    .await
            }));
        }
        for t in tasks {
            assert_eq!(t.await.expect("task").expect("renewed"), "t1");
        }
        assert_eq!(calls.load(Ordering::SeqCst), 1);
        assert_eq!(session.renewals(), 1);
        // A failed renewal keeps the token and generation.
        let failed = session.renew(1, |_| async { Err(Status::invalid_argument("bad password")) }).await;
        assert!(failed.is_err());
        assert_eq!(session.current(), (1, HeaderValue::from_static("t1")));
    }
}
