//! TLS for the client and peer ports: etcd's flags, certificates from PEM files (reloaded
//! when they change on disk), self-signed certificates for `--auto-tls` / `--peer-auto-tls`.
//!
//! rustls with the `ring` provider does the work. A certificate and key pair is read once at
//! start (a malformed file stops the member with an error naming it) and then served by
//! [`ReloadingKey`]: each new handshake looks at the two files' modification times and reads
//! them again when either changed, so a renewed certificate is used for new connections
//! without a restart (etcd reads them on every handshake). A renewal that cannot be read
//! (half-written, mismatched key) is logged and the previous pair stays in use.
//!
//! The CA files (`--trusted-ca-file`, `--peer-trusted-ca-file`) are read once at start, as
//! etcd does.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::SystemTime;

use parking_lot::Mutex;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::{ResolvesClientCert, WebPkiServerVerifier};
use rustls::crypto::CryptoProvider;
use rustls::server::{ClientHello, ResolvesServerCert, WebPkiClientVerifier};
use rustls::sign::CertifiedKey;
use rustls::{DigitallySignedStruct, RootCertStore, SignatureScheme};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};

/// A TLS problem found at start, explained for the operator (file and flag names included).
/// `prefix` is `""` for the client port's flags, `"peer-"` for the peer port's.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read {what} {path}: {source}")]
    Read { what: &'static str, path: PathBuf, source: std::io::Error },
    #[error("{what} {path} is not valid PEM: {source}")]
    Pem { what: &'static str, path: PathBuf, source: rustls_pki_types::pem::Error },
    #[error("{what} {path} holds no certificate")]
    NoCertificate { what: &'static str, path: PathBuf },
    #[error("key file {key} does not fit certificate file {cert}: {source}")]
    KeyMismatch { cert: PathBuf, key: PathBuf, source: rustls::Error },
    #[error("CA file {path}: {source}")]
    BadCa { path: PathBuf, source: rustls::Error },
    #[error("cannot create the directory {path} for the self-signed certificate: {source}")]
    AutoTlsDir { path: PathBuf, source: std::io::Error },
    #[error("cannot generate a self-signed certificate: {0}")]
    AutoTlsGenerate(#[source] rcgen::Error),
    #[error("cannot write the self-signed certificate to {path}: {source}")]
    AutoTlsWrite { path: PathBuf, source: std::io::Error },
    /// `flags` names the flags the URLs came from.
    #[error(
        "{flags} mix http:// and https:// URLs ({urls}): a port either serves TLS or does not; use one scheme"
    )]
    MixedSchemes { flags: &'static str, urls: String },
    #[error("--{prefix}cert-file and --{prefix}key-file must be given together")]
    HalfPair { prefix: &'static str },
    #[error(
        "https:// {} URLs need a certificate: give --{prefix}cert-file and --{prefix}key-file (or --{prefix}auto-tls for a self-signed one), or use http:// URLs",
        port_of(prefix)
    )]
    NoCertificateFlags { prefix: &'static str },
    #[error("--{prefix}client-cert-auth needs --{prefix}trusted-ca-file")]
    ClientAuthWithoutCa { prefix: &'static str },
    #[error("unsupported --cipher-suites entry {wanted:?} (supported: {supported})")]
    UnsupportedCipherSuite { wanted: String, supported: String },
    #[error("no certificate and key files given")]
    NoPair,
    #[error("TLS versions: {0}")]
    Versions(#[source] rustls::Error),
    /// `whose`: `client` (verifying clients) or `server` (verifying the peers dialed).
    #[error("{whose} certificate verifier: {source}")]
    Verifier { whose: &'static str, source: rustls::server::VerifierBuilderError },
    #[error("client certificate authentication needs a trusted CA file")]
    ClientAuthNeedsCa,
    #[error(
        "dialing TLS peers needs a CA to check them: give --peer-trusted-ca-file (or use --peer-auto-tls)"
    )]
    PeerCaNeeded,
    /// A problem with one port's TLS (`port`: `client` or `peer`).
    #[error("{port} TLS: {source}")]
    Port { port: &'static str, source: Box<TlsError> },
}

/// The port whose flags start with `prefix`.
fn port_of(prefix: &str) -> &'static str {
    if prefix.is_empty() { "client" } else { "peer" }
}

/// One port's TLS flags (the client port's, or the peer port's with `--peer-` names).
#[derive(Clone, Debug, Default)]
pub struct TlsFlags {
    pub cert_file: Option<PathBuf>,
    pub key_file: Option<PathBuf>,
    pub trusted_ca_file: Option<PathBuf>,
    pub client_cert_auth: bool,
    pub auto_tls: bool,
}

/// Whether a port serves TLS: from its URLs, all `https://` or all `http://` (a bare
/// `host:port` counts as `http`). `flag` names the flags the URLs came from.
pub fn urls_use_tls(flags: &'static str, urls: &[&str]) -> Result<bool, TlsError> {
    let https = urls.iter().filter(|u| u.starts_with("https://")).count();
    match https {
        0 => Ok(false),
        n if n == urls.len() => Ok(true),
        _ => Err(TlsError::MixedSchemes { flags, urls: urls.join(",") }),
    }
}

impl TlsFlags {
    /// Checks the flags against the URLs' scheme. `prefix` is `""` for the client port,
    /// `"peer-"` for the peer port.
    pub fn check(&self, prefix: &'static str, tls: bool) -> Result<(), TlsError> {
        let has_pair = self.cert_file.is_some() || self.key_file.is_some();
        if has_pair && (self.cert_file.is_none() || self.key_file.is_none()) {
            return Err(TlsError::HalfPair { prefix });
        }
        if tls && !has_pair && !self.auto_tls {
            return Err(TlsError::NoCertificateFlags { prefix });
        }
        let self_signed = self.auto_tls && !has_pair;
        if tls && self.client_cert_auth && self.trusted_ca_file.is_none() && !self_signed {
            return Err(TlsError::ClientAuthWithoutCa { prefix });
        }
        Ok(())
    }

    fn any(&self) -> bool {
        self.cert_file.is_some()
            || self.key_file.is_some()
            || self.trusted_ca_file.is_some()
            || self.client_cert_auth
    }
}

/// What a port's flags ask for that the plain-text URLs make moot: worth a warning.
pub fn unused_flags_warning(prefix: &str, flags: &TlsFlags, tls: bool) -> Option<String> {
    (!tls && (flags.any() || flags.auto_tls)).then(|| {
        format!("--{prefix}* TLS flags are given but the {prefix}URLs are http://: serving without TLS")
    })
}

/// The crypto provider: ring's, with the TLS 1.2 suites narrowed to `cipher_suites` when
/// given (etcd's `--cipher-suites`, Go's names; TLS 1.3 suites are not configurable, as in Go).
pub fn provider(cipher_suites: &[String]) -> Result<Arc<CryptoProvider>, TlsError> {
    let mut provider = rustls::crypto::ring::default_provider();
    if !cipher_suites.is_empty() {
        let all = provider.cipher_suites.clone();
        let name = |s: &rustls::SupportedCipherSuite| format!("{:?}", s.suite());
        let mut chosen: Vec<rustls::SupportedCipherSuite> =
            all.iter().filter(|s| s.version() == &rustls::version::TLS13).copied().collect();
        for wanted in cipher_suites {
            // Go calls the ChaCha20 suites ..._CHACHA20_POLY1305 (and ..._SHA256 too).
            let found = all.iter().find(|s| {
                s.version() == &rustls::version::TLS12
                    && (name(s) == *wanted || name(s) == format!("{wanted}_SHA256"))
            });
            match found {
                Some(s) => chosen.push(*s),
                None => {
                    let supported: Vec<String> =
                        all.iter().filter(|s| s.version() == &rustls::version::TLS12).map(name).collect();
                    return Err(TlsError::UnsupportedCipherSuite {
                        wanted: wanted.clone(),
                        supported: supported.join(","),
                    });
                }
            }
        }
        provider.cipher_suites = chosen;
    }
    Ok(Arc::new(provider))
}

fn read_certs(what: &'static str, path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let bytes = std::fs::read(path).map_err(|source| TlsError::Read { what, path: path.into(), source })?;
    let certs = CertificateDer::pem_slice_iter(&bytes)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|source| TlsError::Pem { what, path: path.into(), source })?;
    if certs.is_empty() {
        return Err(TlsError::NoCertificate { what, path: path.into() });
    }
    Ok(certs)
}

fn load_pair(cert: &Path, key: &Path, provider: &CryptoProvider) -> Result<CertifiedKey, TlsError> {
    let certs = read_certs("certificate file", cert)?;
    crate::certexpiry::report(cert, &certs[0]);
    let key_bytes =
        std::fs::read(key).map_err(|source| TlsError::Read { what: "key file", path: key.into(), source })?;
    let der = PrivateKeyDer::from_pem_slice(&key_bytes).map_err(|source| TlsError::Pem {
        what: "key file",
        path: key.into(),
        source,
    })?;
    CertifiedKey::from_der(certs, der, provider).map_err(|source| TlsError::KeyMismatch {
        cert: cert.into(),
        key: key.into(),
        source,
    })
}

fn modified(path: &Path) -> Option<SystemTime> {
    std::fs::metadata(path).and_then(|m| m.modified()).ok()
}

/// A certificate and key from two files, read again when either file changes.
#[derive(Debug)]
pub struct ReloadingKey {
    cert: PathBuf,
    key: PathBuf,
    provider: Arc<CryptoProvider>,
    current: Mutex<Loaded>,
}

#[derive(Debug)]
struct Loaded {
    stamp: (Option<SystemTime>, Option<SystemTime>),
    key: Arc<CertifiedKey>,
}

impl ReloadingKey {
    /// Reads the pair now: an error here stops the member.
    pub fn load(cert: &Path, key: &Path, provider: Arc<CryptoProvider>) -> Result<ReloadingKey, TlsError> {
        let stamp = (modified(cert), modified(key));
        let pair = load_pair(cert, key, &provider)?;
        Ok(ReloadingKey {
            cert: cert.into(),
            key: key.into(),
            provider,
            current: Mutex::new(Loaded { stamp, key: Arc::new(pair) }),
        })
    }

    /// The pair to present, re-read first if a file changed since it was read.
    pub fn get(&self) -> Arc<CertifiedKey> {
        let stamp = (modified(&self.cert), modified(&self.key));
        let mut current = self.current.lock();
        if stamp != current.stamp {
            // Recorded even on failure: a bad renewal is reported once, not per handshake.
            current.stamp = stamp;
            match load_pair(&self.cert, &self.key, &self.provider) {
                Ok(pair) => {
                    tracing::info!(cert = %self.cert.display(), "certificate changed on disk: reloaded");
                    current.key = Arc::new(pair);
                }
                Err(e) => {
                    tracing::warn!(error = %e, "cannot reload the changed certificate; keeping the previous one")
                }
            }
        }
        current.key.clone()
    }
}

impl ResolvesServerCert for ReloadingKey {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.get())
    }
}

impl ResolvesClientCert for ReloadingKey {
    fn resolve(&self, _hints: &[&[u8]], _schemes: &[SignatureScheme]) -> Option<Arc<CertifiedKey>> {
        Some(self.get())
    }

    fn has_certs(&self) -> bool {
        true
    }
}

fn load_roots(path: &Path) -> Result<Arc<RootCertStore>, TlsError> {
    let mut roots = RootCertStore::empty();
    for cert in read_certs("CA file", path)? {
        roots.add(cert).map_err(|source| TlsError::BadCa { path: path.into(), source })?;
    }
    Ok(Arc::new(roots))
}

/// Writes (or reuses) a self-signed certificate for `hosts` in `dir` (etcd's
/// `<data-dir>/fixtures/client` and `.../peer`), returning the cert and key paths.
pub fn self_signed(dir: &Path, hosts: &[String]) -> Result<(PathBuf, PathBuf), TlsError> {
    let cert = dir.join("cert.pem");
    let key = dir.join("key.pem");
    if cert.exists() && key.exists() {
        return Ok((cert, key));
    }
    std::fs::create_dir_all(dir).map_err(|source| TlsError::AutoTlsDir { path: dir.into(), source })?;
    let mut names: Vec<String> = hosts.to_vec();
    names.push("localhost".into());
    names.sort();
    names.dedup();
    let generated = rcgen::generate_simple_self_signed(names).map_err(TlsError::AutoTlsGenerate)?;
    write_private(&key, generated.key_pair.serialize_pem().as_bytes())
        .map_err(|source| TlsError::AutoTlsWrite { path: key.clone(), source })?;
    std::fs::write(&cert, generated.cert.pem())
        .map_err(|source| TlsError::AutoTlsWrite { path: cert.clone(), source })?;
    Ok((cert, key))
}

fn write_private(path: &Path, data: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new().write(true).create(true).truncate(true).mode(0o600).open(path)?;
    f.write_all(data)?;
    f.sync_all()
}

/// The peer port's TLS, ready to use: the server side, and the client side that dials the
/// other members.
#[derive(Clone)]
pub struct PeerTls {
    pub server: Arc<rustls::ServerConfig>,
    pub client: Arc<rustls::ClientConfig>,
}

/// A port's certificate, and the CAs that its peers' certificates must chain to.
struct Material {
    keys: Arc<ReloadingKey>,
    roots: Option<Arc<RootCertStore>>,
    /// Self-signed (`--auto-tls`): nothing can be verified.
    auto: bool,
}

fn material(
    flags: &TlsFlags,
    provider: &Arc<CryptoProvider>,
    auto_dir: &Path,
    hosts: &[String],
) -> Result<Material, TlsError> {
    let (cert, key, auto) = match (&flags.cert_file, &flags.key_file) {
        (Some(c), Some(k)) => (c.clone(), k.clone(), false),
        _ if flags.auto_tls => {
            let (c, k) = self_signed(auto_dir, hosts)?;
            (c, k, true)
        }
        _ => return Err(TlsError::NoPair),
    };
    let keys = Arc::new(ReloadingKey::load(&cert, &key, provider.clone())?);
    let roots = flags.trusted_ca_file.as_deref().map(load_roots).transpose()?;
    Ok(Material { keys, roots, auto })
}

fn server_config(
    m: &Material,
    flags: &TlsFlags,
    provider: &Arc<CryptoProvider>,
    alpn: &[&[u8]],
) -> Result<Arc<rustls::ServerConfig>, TlsError> {
    let versions = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(TlsError::Versions)?;
    let mut server = match (&m.roots, flags.client_cert_auth) {
        (Some(roots), true) => {
            let verifier = WebPkiClientVerifier::builder_with_provider(roots.clone(), provider.clone())
                .build()
                .map_err(|source| TlsError::Verifier { whose: "client", source })?;
            versions.with_client_cert_verifier(verifier).with_cert_resolver(m.keys.clone())
        }
        (None, true) if m.auto => {
            tracing::warn!(
                "client certificate authentication is ignored with auto TLS and no trusted CA file"
            );
            versions.with_no_client_auth().with_cert_resolver(m.keys.clone())
        }
        (None, true) => {
            return Err(TlsError::ClientAuthNeedsCa);
        }
        (_, false) => versions.with_no_client_auth().with_cert_resolver(m.keys.clone()),
    };
    server.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Ok(Arc::new(server))
}

fn client_config(
    m: &Material,
    provider: &Arc<CryptoProvider>,
) -> Result<Arc<rustls::ClientConfig>, TlsError> {
    let versions = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(TlsError::Versions)?;
    let client = match &m.roots {
        Some(roots) => {
            let verifier = WebPkiServerVerifier::builder_with_provider(roots.clone(), provider.clone())
                .build()
                .map_err(|source| TlsError::Verifier { whose: "server", source })?;
            versions.with_webpki_verifier(verifier).with_client_cert_resolver(m.keys.clone())
        }
        // Self-signed certificates cannot be checked: etcd's auto TLS skips verification too.
        None if m.auto => versions
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(AcceptAnyCert(provider.clone())))
            .with_client_cert_resolver(m.keys.clone()),
        None => {
            return Err(TlsError::PeerCaNeeded);
        }
    };
    Ok(Arc::new(client))
}

/// The client port's TLS (gRPC and the JSON gateway on one port: ALPN h2 and http/1.1).
/// `auto_dir` is where `--auto-tls` keeps its certificate, `hosts` what it is for.
pub fn client_port(
    flags: &TlsFlags,
    provider: &Arc<CryptoProvider>,
    auto_dir: &Path,
    hosts: &[String],
) -> Result<Arc<rustls::ServerConfig>, TlsError> {
    let m = material(flags, provider, auto_dir, hosts)?;
    server_config(&m, flags, provider, &[b"h2", b"http/1.1"])
}

/// The peer port's TLS: accepting other members, and dialing them with this member's
/// certificate.
pub fn peer_port(
    flags: &TlsFlags,
    provider: &Arc<CryptoProvider>,
    auto_dir: &Path,
    hosts: &[String],
) -> Result<PeerTls, TlsError> {
    let m = material(flags, provider, auto_dir, hosts)?;
    Ok(PeerTls { server: server_config(&m, flags, provider, &[])?, client: client_config(&m, provider)? })
}

/// A member's TLS for both ports, from its configuration (`None`: plain text).
pub struct Ports {
    pub client: Option<Arc<rustls::ServerConfig>>,
    pub peer: Option<raftkv_transport::PeerTlsConfig>,
    /// The certificate files given (`--cert-file`, `--peer-cert-file`) of the ports that serve
    /// TLS: checked for expiry while the member runs ([`crate::certexpiry::watch`]).
    pub cert_files: Vec<PathBuf>,
}

impl Ports {
    pub fn load(config: &crate::config::ServerConfig) -> Result<Ports, TlsError> {
        for w in [
            unused_flags_warning("", &config.client_tls, config.client_uses_tls),
            unused_flags_warning("peer-", &config.peer_tls, config.peer_uses_tls),
        ]
        .into_iter()
        .flatten()
        {
            tracing::warn!("{w}");
        }
        if !config.client_uses_tls && !config.peer_uses_tls {
            return Ok(Ports { client: None, peer: None, cert_files: Vec::new() });
        }
        let provider = provider(&config.cipher_suites)?;
        let fixtures = crate::member::identity::member_dir(&config.data_dir).join("fixtures");
        let hosts = |addrs: &[std::net::SocketAddr]| -> Vec<String> {
            addrs.iter().map(|a| a.ip().to_string()).collect()
        };
        let client = if config.client_uses_tls {
            let hosts = hosts(&config.listen_client);
            let server = client_port(&config.client_tls, &provider, &fixtures.join("client"), &hosts)
                .map_err(|e| TlsError::Port { port: "client", source: Box::new(e) })?;
            Some(server)
        } else {
            None
        };
        let peer = if config.peer_uses_tls {
            let hosts = hosts(&config.listen_peer);
            let t = peer_port(&config.peer_tls, &provider, &fixtures.join("peer"), &hosts)
                .map_err(|e| TlsError::Port { port: "peer", source: Box::new(e) })?;
            Some(raftkv_transport::PeerTlsConfig { server: t.server, client: t.client })
        } else {
            None
        };
        let mut cert_files: Vec<PathBuf> = [
            (config.client_uses_tls, &config.client_tls.cert_file),
            (config.peer_uses_tls, &config.peer_tls.cert_file),
        ]
        .into_iter()
        .filter_map(|(tls, file)| file.clone().filter(|_| tls))
        .collect();
        cert_files.dedup();
        Ok(Ports { client, peer, cert_files })
    }
}

/// Accepts any server certificate (signatures still checked): `--peer-auto-tls` only, where
/// every member's certificate is self-signed.
#[derive(Debug)]
struct AcceptAnyCert(Arc<CryptoProvider>);

impl ServerCertVerifier for AcceptAnyCert {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.0.signature_verification_algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.0.signature_verification_algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn provider() -> Arc<CryptoProvider> {
        super::provider(&[]).expect("default provider")
    }

    #[test]
    fn schemes_must_not_mix() {
        assert!(!urls_use_tls("--x", &["http://a:1", "b:2"]).expect("plain"));
        assert!(urls_use_tls("--x", &["https://a:1"]).expect("tls"));
        let e = urls_use_tls("--x", &["https://a:1", "http://b:2"]).expect_err("mixed");
        assert!(
            matches!(&e, TlsError::MixedSchemes { flags: "--x", urls } if urls == "https://a:1,http://b:2")
        );
        assert!(e.to_string().starts_with("--x mix http:// and https:// URLs"), "{e}");
    }

    #[test]
    fn https_without_a_certificate_is_refused() {
        let e = TlsFlags::default().check("peer-", true).expect_err("no cert");
        assert!(matches!(e, TlsError::NoCertificateFlags { prefix: "peer-" }), "{e:?}");
        assert!(e.to_string().starts_with("https:// peer URLs need a certificate"), "{e}");
        assert!(e.to_string().contains("--peer-cert-file and --peer-key-file"), "{e}");
        assert!(TlsFlags { auto_tls: true, ..Default::default() }.check("", true).is_ok());
        let half = TlsFlags { cert_file: Some("c".into()), ..Default::default() };
        let e = half.check("", true).expect_err("no key");
        assert_eq!(e.to_string(), "--cert-file and --key-file must be given together");
        let auth = TlsFlags {
            cert_file: Some("c".into()),
            key_file: Some("k".into()),
            client_cert_auth: true,
            ..Default::default()
        };
        let e = auth.check("", true).expect_err("no CA");
        assert_eq!(e.to_string(), "--client-cert-auth needs --trusted-ca-file");
    }

    #[test]
    fn malformed_files_are_named() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (cert, key) = self_signed(dir.path(), &["127.0.0.1".into()]).expect("self-signed");
        assert!(ReloadingKey::load(&cert, &key, provider()).is_ok());
        let garbage = dir.path().join("garbage.pem");
        std::fs::write(&garbage, "-----BEGIN CERTIFICATE-----\nnot base64!\n-----END CERTIFICATE-----\n")
            .expect("write");
        let e = ReloadingKey::load(&garbage, &key, provider()).expect_err("garbage cert");
        assert!(
            matches!(&e, TlsError::Pem { what: "certificate file", path, .. } if *path == garbage),
            "{e:?}"
        );
        let e = e.to_string();
        assert!(e.starts_with(&format!("certificate file {} is not valid PEM: ", garbage.display())), "{e}");
        let e = ReloadingKey::load(&cert, &garbage, provider()).expect_err("garbage key");
        assert!(matches!(&e, TlsError::Pem { what: "key file", path, .. } if *path == garbage), "{e:?}");
        let e = e.to_string();
        assert!(e.contains("garbage.pem"), "{e}");
        let empty = dir.path().join("empty.pem");
        std::fs::write(&empty, "").expect("write");
        let e = ReloadingKey::load(&empty, &key, provider()).expect_err("empty").to_string();
        assert!(e.contains("empty.pem") && e.contains("no certificate"), "{e}");
        let other = tempfile::tempdir().expect("tempdir");
        let (_, other_key) = self_signed(other.path(), &[]).expect("self-signed");
        let e = ReloadingKey::load(&cert, &other_key, provider()).expect_err("mismatch");
        assert!(matches!(&e, TlsError::KeyMismatch { key, .. } if *key == other_key), "{e:?}");
        assert!(e.to_string().contains("does not fit"), "{e}");
        let missing = dir.path().join("missing.pem");
        let e = ReloadingKey::load(&missing, &key, provider()).expect_err("missing");
        assert!(
            matches!(&e, TlsError::Read { path, source, .. } if *path == missing && source.kind() == std::io::ErrorKind::NotFound),
            "{e:?}"
        );
        let e = e.to_string();
        assert!(e.starts_with(&format!("cannot read certificate file {}: ", missing.display())), "{e}");
    }

    #[test]
    fn a_renewed_certificate_is_picked_up_and_a_broken_one_ignored() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (cert, key) = self_signed(dir.path(), &[]).expect("self-signed");
        let keys = ReloadingKey::load(&cert, &key, provider()).expect("load");
        let first = keys.get();
        assert!(Arc::ptr_eq(&first, &keys.get()), "unchanged files are not read again");
        // Renew: a new pair written over the old files (with a later mtime).
        std::thread::sleep(std::time::Duration::from_millis(20));
        let renewed = tempfile::tempdir().expect("tempdir");
        let (c2, k2) = self_signed(renewed.path(), &[]).expect("self-signed");
        std::fs::copy(&c2, &cert).expect("copy");
        std::fs::copy(&k2, &key).expect("copy");
        let second = keys.get();
        assert_ne!(first.cert[0], second.cert[0], "renewed certificate served");
        std::thread::sleep(std::time::Duration::from_millis(20));
        std::fs::write(&cert, "half-written").expect("write");
        assert_eq!(keys.get().cert[0], second.cert[0], "a broken renewal keeps the previous pair");
    }

    #[test]
    fn cipher_suites_by_go_name() {
        let p = super::provider(&["TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305".into()]).expect("known");
        let tls12 = p.cipher_suites.iter().filter(|s| s.version() == &rustls::version::TLS12).count();
        assert_eq!(tls12, 1);
        let e = super::provider(&["TLS_RSA_WITH_RC4_128_SHA".into()]).expect_err("unsupported");
        assert!(
            matches!(&e, TlsError::UnsupportedCipherSuite { wanted, .. } if wanted == "TLS_RSA_WITH_RC4_128_SHA")
        );
        assert!(e.to_string().contains("unsupported --cipher-suites"), "{e}");
    }
}
