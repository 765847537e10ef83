//! TLS on the client and peer ports: a 3-member cluster with mutual TLS on both, driven by
//! the real `etcdctl` (etcd 3.4) with `--cacert --cert --key`; clients without a certificate
//! or with one from another CA refused; bad TLS configuration refused at start; plain text on
//! a TLS port and TLS on a plain port closed with a clear log line; renewed certificates
//! served to new connections without a restart, on the client port and on the peer port;
//! `--cipher-suites`, `--auto-tls` and `--peer-auto-tls`; certificate expiry logged.
//!
//! Certificates are generated here with rcgen. Without `etcdctl` the etcdctl checks are
//! skipped loudly (failed under RAFTKV_REQUIRE_ETCD=1).

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{Ca, Cluster, Opts, die_with_parent, have, run_to_exit};

/// `etcdctl` with `tls` flags; returns (success, stdout, stderr).
fn etcdctl(endpoints: &str, tls: &[String], args: &[&str]) -> (bool, String, String) {
    etcdctl_in(endpoints, tls, args, "")
}

fn etcdctl_in(endpoints: &str, tls: &[String], args: &[&str], stdin: &str) -> (bool, String, String) {
    let mut cmd = Command::new("etcdctl");
    cmd.env("ETCDCTL_API", "3")
        .arg(format!("--endpoints={endpoints}"))
        .args(["--dial-timeout=3s", "--command-timeout=5s"])
        .args(tls)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = die_with_parent(&mut cmd).spawn().expect("spawn etcdctl");
    if let Some(mut input) = child.stdin.take() {
        let _ = input.write_all(stdin.as_bytes());
    }
    let out = child.wait_with_output().expect("etcdctl");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into(),
        String::from_utf8_lossy(&out.stderr).into(),
    )
}

fn https_args(c: &Cluster, i: usize, extra: &[String]) -> Vec<String> {
    let mut args: Vec<String> =
        c.args(i).into_iter().map(|a| a.replace("http://127.0.0.1", "https://127.0.0.1")).collect();
    args.extend(extra.iter().cloned());
    args
}

/// A TLS client handshake with `127.0.0.1:port`, trusting `ca`; returns the server's
/// certificate, or the handshake error.
fn tls_handshake(port: u16, ca: &Path, client: Option<(&Path, &Path)>) -> Result<Vec<u8>, String> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_file_iter(ca).expect("CA") {
        roots.add(c.expect("CA cert")).expect("add CA");
    }
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_root_certificates(roots);
    let config = match client {
        Some((cert, key)) => builder
            .with_client_auth_cert(
                CertificateDer::pem_file_iter(cert).expect("cert").map(|c| c.expect("cert")).collect(),
                PrivateKeyDer::from_pem_file(key).expect("key"),
            )
            .expect("client cert"),
        None => builder.with_no_client_auth(),
    };
    let name = ServerName::try_from("127.0.0.1").expect("name");
    let mut conn = rustls::ClientConnection::new(Arc::new(config), name).map_err(|e| e.to_string())?;
    let mut tcp = TcpStream::connect(("127.0.0.1", port)).map_err(|e| e.to_string())?;
    tcp.set_read_timeout(Some(Duration::from_secs(10))).expect("timeout");
    while conn.is_handshaking() {
        conn.complete_io(&mut tcp).map_err(|e| e.to_string())?;
    }
    // TLS 1.3: a refused client certificate is reported after the client's handshake ends.
    let mut stream = rustls::Stream::new(&mut conn, &mut tcp);
    stream
        .write_all(b"GET /version HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .map_err(|e| e.to_string())?;
    let mut answer = Vec::new();
    let _ = stream.read_to_end(&mut answer);
    if !String::from_utf8_lossy(&answer).contains("etcdserver") {
        return Err(format!("no answer: {}", String::from_utf8_lossy(&answer)));
    }
    let cert = conn.peer_certificates().and_then(|c| c.first()).ok_or("no server certificate")?;
    Ok(cert.as_ref().to_vec())
}

fn wait_until<T>(what: &str, timeout: Duration, mut f: impl FnMut() -> Result<T, String>) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        match f() {
            Ok(v) => return v,
            Err(e) if Instant::now() > deadline => panic!("{what}: not after {timeout:?}: {e}"),
            Err(_) => std::thread::sleep(Duration::from_millis(200)),
        }
    }
}

#[test]
fn three_members_with_mutual_tls_on_both_ports_serve_etcdctl() {
    let dir = tempfile::tempdir().expect("temp dir");
    let ca = Ca::new("raftkv test CA");
    let other = Ca::new("another CA");
    let ca_path = ca.write(&dir.path().join("ca.pem"));
    let mut c = Cluster::new(3, Opts::default());
    c.initial_cluster = c.initial_cluster.replace("http://", "https://");
    for i in 0..3 {
        let (cert, key) = ca.issue(dir.path(), &format!("m{}", i + 1));
        let s = |p: &Path| p.display().to_string();
        let tls = [
            "--cert-file",
            &s(&cert),
            "--key-file",
            &s(&key),
            "--trusted-ca-file",
            &s(&ca_path),
            "--client-cert-auth",
            "--peer-cert-file",
            &s(&cert),
            "--peer-key-file",
            &s(&key),
            "--peer-trusted-ca-file",
            &s(&ca_path),
            "--peer-client-cert-auth",
        ]
        .map(String::from);
        let child = c.spawn_raw(i, &https_args(&c, i, &tls));
        c.members[i].child = Some(child);
    }
    let (client_cert, client_key) = ca.issue(dir.path(), "client");
    let (bad_cert, bad_key) = other.issue(dir.path(), "intruder");
    let port = c.port(0);
    // The port answers TLS with a client certificate; without one it refuses.
    wait_until("TLS on the client port", Duration::from_secs(30), || {
        tls_handshake(port, &ca_path, Some((&client_cert, &client_key)))
    });
    assert!(tls_handshake(port, &ca_path, None).is_err(), "a client without a certificate was served");
    assert!(
        tls_handshake(port, &ca_path, Some((&bad_cert, &bad_key))).is_err(),
        "a client with a certificate from another CA was served"
    );
    if !have("etcdctl") {
        return;
    }
    let endpoints = c
        .members
        .iter()
        .map(|m| format!("https://127.0.0.1:{}", m.client_port))
        .collect::<Vec<_>>()
        .join(",");
    let flags = |cert: &Path, key: &Path| {
        vec![
            format!("--cacert={}", ca_path.display()),
            format!("--cert={}", cert.display()),
            format!("--key={}", key.display()),
        ]
    };
    let good = flags(&client_cert, &client_key);
    // A put needs a leader, so peers must talk over mutual TLS.
    wait_until("etcdctl put over TLS", Duration::from_secs(40), || {
        match etcdctl(&endpoints, &good, &["put", "k", "v1"]) {
            (true, out, _) if out.trim() == "OK" => Ok(()),
            other => Err(format!("{other:?}")),
        }
    });
    let (ok, out, err) = etcdctl(&endpoints, &good, &["get", "k"]);
    assert!(ok && out == "k\nv1\n", "get: {out} {err}");
    let txn = "value(\"k\") = \"v1\"\n\nput k v2\n\nput k v3\n\n";
    let (ok, out, err) = etcdctl_in(&endpoints, &good, &["txn"], txn);
    assert!(ok && out.starts_with("SUCCESS"), "txn: {out} {err}");
    let (ok, out, err) = etcdctl(&endpoints, &good, &["get", "k", "--print-value-only"]);
    assert!(ok && out == "v2\n", "get after txn: {out} {err}");
    let (ok, out, err) = etcdctl(&endpoints, &good, &["endpoint", "status", "--cluster", "-w", "json"]);
    assert!(ok, "endpoint status: {out} {err}");
    assert_eq!(out.matches("\"Endpoint\":\"https://127.0.0.1:").count(), 3, "{out}");
    let (ok, out, err) = etcdctl(&endpoints, &good, &["endpoint", "health", "--cluster"]);
    assert!(ok, "endpoint health: {out} {err}");
    // Refused: no client certificate, a certificate from another CA.
    let (ok, _, err) = etcdctl(&endpoints, &[format!("--cacert={}", ca_path.display())], &["get", "k"]);
    assert!(!ok, "a client without a certificate was served: {err}");
    let (ok, _, err) = etcdctl(&endpoints, &flags(&bad_cert, &bad_key), &["get", "k"]);
    assert!(!ok, "a client with another CA's certificate was served: {err}");
    // The JSON gateway over TLS (HTTP/1.1 through ALPN).
    let out = Command::new("curl")
        .args(["-sS", "--max-time", "10", "--cacert"])
        .arg(&ca_path)
        .arg("--cert")
        .arg(&client_cert)
        .arg("--key")
        .arg(&client_key)
        .args(["-d", r#"{"key":"aw=="}"#])
        .arg(format!("https://127.0.0.1:{port}/v3/kv/range"))
        .output();
    if let Ok(out) = out {
        let body = String::from_utf8_lossy(&out.stdout);
        assert!(
            body.contains(r#""value":"djI=""#),
            "gateway over TLS: {body} {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    // With --client-cert-auth and auth enabled, a request without a token runs as the user
    // its certificate names (etcd's common-name rule).
    let (root_cert, root_key) = ca.issue(dir.path(), "root");
    let root = flags(&root_cert, &root_key);
    for args in
        [&["user", "add", "root:rootpw"][..], &["user", "grant-role", "root", "root"], &["auth", "enable"]]
    {
        let (ok, out, err) = etcdctl(&endpoints, &good, args);
        assert!(ok, "{args:?}: {out} {err}");
    }
    let (ok, out, err) = etcdctl(&endpoints, &root, &["put", "k", "as-root"]);
    assert!(ok && out.trim() == "OK", "the certificate named root: {out} {err}");
    let (ok, _, err) = etcdctl(&endpoints, &good, &["get", "k"]);
    assert!(!ok && err.contains("etcdserver: permission denied"), "a certificate naming no user: {err}");
}

#[test]
fn bad_tls_configuration_is_refused_at_start() {
    let dir = tempfile::tempdir().expect("temp dir");
    let base = |client: &str, peer: &str| -> Vec<String> {
        [
            "server",
            "--name",
            "m1",
            "--data-dir",
            &dir.path().join("d").display().to_string(),
            "--listen-client-urls",
            client,
            "--advertise-client-urls",
            client,
            "--listen-peer-urls",
            peer,
            "--initial-advertise-peer-urls",
            peer,
            "--initial-cluster",
            &format!("m1={peer}"),
        ]
        .map(String::from)
        .to_vec()
    };
    let ports = common::free_ports(2);
    let (http_c, http_p) =
        (format!("http://127.0.0.1:{}", ports[0]), format!("http://127.0.0.1:{}", ports[1]));
    let (https_c, https_p) = (http_c.replace("http", "https"), http_p.replace("http", "https"));
    // https:// without a certificate: refused (never served in plain text).
    let (status, err) = run_to_exit(&base(&https_c, &http_p), Duration::from_secs(20));
    assert!(!status.success());
    assert!(err.contains("--cert-file and --key-file"), "{err}");
    let (status, err) = run_to_exit(&base(&http_c, &https_p), Duration::from_secs(20));
    assert!(!status.success());
    assert!(err.contains("--peer-cert-file"), "{err}");
    // Mixed schemes.
    let mixed = format!("{http_c},https://127.0.0.1:1");
    let (status, err) = run_to_exit(&base(&mixed, &http_p), Duration::from_secs(20));
    assert!(!status.success());
    assert!(err.contains("mix http:// and https://"), "{err}");
    // Malformed certificate and key files: the error names the file.
    let garbage = dir.path().join("garbage.pem");
    std::fs::write(&garbage, "-----BEGIN CERTIFICATE-----\n!!!\n-----END CERTIFICATE-----\n").expect("write");
    let ca = Ca::new("ca");
    let (cert, key) = ca.issue(dir.path(), "m1");
    for (c, k) in [(&garbage, &key), (&cert, &garbage)] {
        let mut args = base(&https_c, &http_p);
        args.extend([
            "--cert-file".into(),
            c.display().to_string(),
            "--key-file".into(),
            k.display().to_string(),
        ]);
        let (status, err) = run_to_exit(&args, Duration::from_secs(20));
        assert!(!status.success());
        assert!(err.contains("garbage.pem"), "{err}");
    }
}

#[test]
fn wrong_protocol_on_each_port_is_closed_and_renewed_certificates_are_served() {
    let dir = tempfile::tempdir().expect("temp dir");
    let ca = Ca::new("ca");
    let ca_path = ca.write(&dir.path().join("ca.pem"));
    let (cert, key) = ca.issue(dir.path(), "m1");
    let mut c = Cluster::new(1, Opts::default());
    let tls = ["--cert-file", &cert.display().to_string(), "--key-file", &key.display().to_string()]
        .map(String::from);
    // Client port TLS, peer port plain.
    let args: Vec<String> = c
        .args(0)
        .into_iter()
        .map(|a| {
            a.replace(&format!("http://127.0.0.1:{}", c.port(0)), &format!("https://127.0.0.1:{}", c.port(0)))
        })
        .chain(tls)
        .collect();
    let child = c.spawn_raw(0, &args);
    c.members[0].child = Some(child);
    let port = c.port(0);
    let first =
        wait_until("TLS on the client port", Duration::from_secs(30), || tls_handshake(port, &ca_path, None));
    // Plain HTTP on the TLS port: Go's answer, then closed.
    let mut s = TcpStream::connect(("127.0.0.1", port)).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(10))).expect("timeout");
    s.write_all(b"GET /version HTTP/1.1\r\nHost: x\r\n\r\n").expect("write");
    let mut answer = String::new();
    let _ = s.read_to_string(&mut answer);
    assert!(answer.contains("Client sent an HTTP request to an HTTPS server"), "{answer:?}");
    // Garbage on the TLS port: closed, the member keeps serving.
    let mut s = TcpStream::connect(("127.0.0.1", port)).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(10))).expect("timeout");
    s.write_all(&[0x16, 0x03, 0x01, 0x00, 0x05, 1, 2, 3, 4, 5, 6, 7]).expect("write");
    let mut buf = Vec::new();
    let _ = s.read_to_end(&mut buf);
    tls_handshake(port, &ca_path, None).expect("still serving after garbage");
    // A TLS handshake on the plain peer port: closed, logged.
    let peer = c.members[0].peer_port;
    let err = tls_handshake(peer, &ca_path, None).expect_err("the plain peer port answered TLS");
    assert!(!err.is_empty());
    // Renewal: new files in place, picked up by the next connection.
    std::thread::sleep(Duration::from_millis(50));
    let renewed_dir = dir.path().join("renewed");
    std::fs::create_dir_all(&renewed_dir).expect("dir");
    let (c2, k2) = ca.issue(&renewed_dir, "m1");
    std::fs::copy(&k2, &key).expect("copy key");
    std::fs::copy(&c2, &cert).expect("copy cert");
    let second = tls_handshake(port, &ca_path, None).expect("handshake after renewal");
    assert_ne!(first, second, "the renewed certificate is served without a restart");
    c.assert_running();
}

/// How many lines of `log` contain every one of `parts`.
fn lines_with(log: &str, parts: &[&str]) -> usize {
    log.lines().filter(|l| parts.iter().all(|p| l.contains(p))).count()
}

#[test]
fn expiring_and_expired_certificates_are_logged_clearly() {
    let dir = tempfile::tempdir().expect("temp dir");
    let ca = Ca::new("ca");
    let ca_path = ca.write(&dir.path().join("ca.pem"));
    // m1's certificate expired yesterday; m2's expires in 10 days.
    let (expired, expired_key) = ca.issue_expiring(dir.path(), "m1", -1);
    let (soon, soon_key) = ca.issue_expiring(dir.path(), "m2", 10);
    let mut c = Cluster::new(2, Opts::default());
    c.initial_cluster = c.initial_cluster.replace("http://", "https://");
    for (i, (cert, key)) in [(&expired, &expired_key), (&soon, &soon_key)].into_iter().enumerate() {
        let s = |p: &Path| p.display().to_string();
        let tls = [
            "--cert-file",
            &s(cert),
            "--key-file",
            &s(key),
            "--peer-cert-file",
            &s(cert),
            "--peer-key-file",
            &s(key),
            "--peer-trusted-ca-file",
            &s(&ca_path),
            "--peer-client-cert-auth",
        ]
        .map(String::from);
        // Checked again every second instead of every hour.
        let mut args = https_args(&c, i, &tls);
        args.extend(["--cert-check-interval".to_string(), "1s".to_string()]);
        let child = c.spawn_raw(i, &args);
        c.members[i].child = Some(child);
    }
    let (log1, log2) = (c.members[0].log_path.clone(), c.members[1].log_path.clone());
    let (expired_s, soon_s) = (expired.display().to_string(), soon.display().to_string());
    wait_until("the expiry lines", Duration::from_secs(30), || {
        let (l1, l2) = (common::read_log(&log1), common::read_log(&log2));
        // The member's own certificate: an error once expired, a warning when close, both
        // naming the file and the date, at start and again while running.
        let expired_lines =
            lines_with(&l1, &["ERROR", &format!("the certificate {expired_s} EXPIRED on 20")]);
        let soon_lines = lines_with(&l2, &["WARN", &format!("the certificate {soon_s} expires on 20")]);
        // The peer's certificate refused: a warning with the reason, on both sides of the
        // connection.
        let dialing = lines_with(
            &l2,
            &["WARN", "TLS handshake failed: the other member's certificate is refused: it has expired"],
        );
        let accepting = lines_with(&l2, &["WARN", "refusing peer connection: TLS handshake failed"]);
        if expired_lines >= 3 && soon_lines >= 3 && dialing >= 1 && accepting >= 1 {
            Ok(())
        } else {
            Err(format!(
                "expired {expired_lines}, soon {soon_lines}, dialing {dialing}, accepting {accepting}"
            ))
        }
    });
    // Redialed every few hundred milliseconds, but warned about once a minute per peer.
    std::thread::sleep(Duration::from_secs(3));
    let l2 = common::read_log(&log2);
    let dialing = lines_with(
        &l2,
        &["WARN", " at 127.0.0.1:", ": TLS handshake failed: the other member's certificate is refused"],
    );
    assert_eq!(dialing, 1, "rate-limited per peer:\n{l2}");
    let accepting = lines_with(&l2, &["WARN", "refusing peer connection: TLS handshake failed"]);
    assert_eq!(accepting, 1, "rate-limited per peer address:\n{l2}");
    assert!(
        lines_with(&common::read_log(&log1), &["WARN", "the other member refused the handshake"]) >= 1,
        "m1 is told that m2 refuses its certificate"
    );
    c.assert_running();
}

/// A rustls client configuration trusting `ca`, with a client certificate when given, and
/// only TLS 1.2 with `suite` when given.
fn client_config(
    ca: &Path,
    client: Option<(&Path, &Path)>,
    suite: Option<rustls::SupportedCipherSuite>,
) -> Arc<rustls::ClientConfig> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let mut provider = rustls::crypto::ring::default_provider();
    let versions: &[&rustls::SupportedProtocolVersion] = match suite {
        Some(s) => {
            provider.cipher_suites = vec![s];
            &[&rustls::version::TLS12]
        }
        None => rustls::DEFAULT_VERSIONS,
    };
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_file_iter(ca).expect("CA") {
        roots.add(c.expect("CA cert")).expect("add CA");
    }
    let builder = rustls::ClientConfig::builder_with_provider(Arc::new(provider))
        .with_protocol_versions(versions)
        .expect("versions")
        .with_root_certificates(roots);
    let config = match client {
        Some((cert, key)) => builder
            .with_client_auth_cert(
                CertificateDer::pem_file_iter(cert).expect("cert").map(|c| c.expect("cert")).collect(),
                PrivateKeyDer::from_pem_file(key).expect("key"),
            )
            .expect("client cert"),
        None => builder.with_no_client_auth(),
    };
    Arc::new(config)
}

/// A TLS handshake alone with `127.0.0.1:port`; returns the server's certificate and the
/// suite agreed.
fn handshake_only(
    port: u16,
    config: Arc<rustls::ClientConfig>,
) -> Result<(Vec<u8>, rustls::CipherSuite), String> {
    let name = rustls::pki_types::ServerName::try_from("127.0.0.1").expect("name");
    let mut conn = rustls::ClientConnection::new(config, name).map_err(|e| e.to_string())?;
    let mut tcp = TcpStream::connect(("127.0.0.1", port)).map_err(|e| e.to_string())?;
    tcp.set_read_timeout(Some(Duration::from_secs(10))).expect("timeout");
    while conn.is_handshaking() {
        conn.complete_io(&mut tcp).map_err(|e| e.to_string())?;
    }
    let cert = conn.peer_certificates().and_then(|c| c.first()).ok_or("no server certificate")?;
    let suite = conn.negotiated_cipher_suite().ok_or("no suite")?.suite();
    Ok((cert.as_ref().to_vec(), suite))
}

/// `--cipher-suites`: a TLS 1.2 client offering only a suite left out is refused, one offering
/// the suite given is served (TLS 1.3 stays on, as in Go); the server's certificate is ECDSA,
/// so the ECDSA suites are the ones that could be agreed.
#[test]
fn cipher_suites_restrict_the_tls12_suites_served() {
    use rustls::crypto::ring::cipher_suite as cs;
    let dir = tempfile::tempdir().expect("temp dir");
    let ca = Ca::new("ca");
    let ca_path = ca.write(&dir.path().join("ca.pem"));
    let (cert, key) = ca.issue(dir.path(), "m1");
    let mut c = Cluster::new(1, Opts::default());
    let extra = [
        "--cert-file",
        &cert.display().to_string(),
        "--key-file",
        &key.display().to_string(),
        "--cipher-suites",
        "TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256",
    ]
    .map(String::from);
    // The client port only: the peer port stays plain text.
    let port = c.port(0);
    let args: Vec<String> = c
        .args(0)
        .into_iter()
        .map(|a| a.replace(&format!("http://127.0.0.1:{port}"), &format!("https://127.0.0.1:{port}")))
        .chain(extra)
        .collect();
    let child = c.spawn_raw(0, &args);
    c.members[0].child = Some(child);
    let allowed = client_config(&ca_path, None, Some(cs::TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256));
    let (_, suite) = wait_until("TLS 1.2 with the suite given", Duration::from_secs(30), || {
        handshake_only(port, allowed.clone())
    });
    assert_eq!(suite, rustls::CipherSuite::TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256);
    for other in
        [cs::TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384, cs::TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256]
    {
        let e = handshake_only(port, client_config(&ca_path, None, Some(other))).expect_err("served");
        assert!(e.contains("HandshakeFailure"), "{:?}: {e}", other.suite());
    }
    // TLS 1.3 is not narrowed.
    handshake_only(port, client_config(&ca_path, None, None)).expect("TLS 1.3");
    // openssl, as an operator would check it.
    if Command::new("openssl").arg("version").output().is_ok_and(|o| o.status.success()) {
        let s_client = |cipher: &str| {
            let mut cmd = Command::new("openssl");
            cmd.args(["s_client", "-connect", &format!("127.0.0.1:{port}"), "-tls1_2", "-cipher", cipher])
                .arg("-CAfile")
                .arg(&ca_path)
                .stdin(Stdio::null())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped());
            let out = die_with_parent(&mut cmd).output().expect("openssl");
            String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr)
        };
        let ok = s_client("ECDHE-ECDSA-AES128-GCM-SHA256");
        assert!(ok.contains("Cipher is ECDHE-ECDSA-AES128-GCM-SHA256"), "{ok}");
        let refused = s_client("ECDHE-ECDSA-AES256-GCM-SHA384");
        assert!(refused.contains("handshake failure") || refused.contains("Cipher is (NONE)"), "{refused}");
    }
    c.assert_running();
}

/// `--auto-tls` and `--peer-auto-tls`: three members with self-signed certificates on both
/// ports elect a leader and serve etcdctl with `--insecure-skip-tls-verify`, as etcd's do.
#[test]
fn auto_tls_on_both_ports_serves_etcdctl() {
    let mut c = Cluster::new(3, Opts::default());
    c.initial_cluster = c.initial_cluster.replace("http://", "https://");
    for i in 0..3 {
        let child = c.spawn_raw(i, &https_args(&c, i, &["--auto-tls".into(), "--peer-auto-tls".into()]));
        c.members[i].child = Some(child);
    }
    // The certificates are etcd's fixtures, self-signed, in the data dir.
    for m in &c.members {
        for port in ["client", "peer"] {
            let cert = m.data_dir.join("member/fixtures").join(port).join("cert.pem");
            wait_until("the self-signed certificate", Duration::from_secs(20), || {
                cert.exists().then_some(()).ok_or(format!("{} missing", cert.display()))
            });
        }
    }
    if !have("etcdctl") {
        return;
    }
    let endpoints = c
        .members
        .iter()
        .map(|m| format!("https://127.0.0.1:{}", m.client_port))
        .collect::<Vec<_>>()
        .join(",");
    let insecure = ["--insecure-transport=false", "--insecure-skip-tls-verify"].map(String::from);
    // A put needs a leader: the peers reached each other over auto TLS.
    wait_until("etcdctl put over auto TLS", Duration::from_secs(40), || {
        match etcdctl(&endpoints, &insecure, &["put", "k", "v"]) {
            (true, out, _) if out.trim() == "OK" => Ok(()),
            other => Err(format!("{other:?}")),
        }
    });
    for m in &c.members {
        let ep = format!("https://127.0.0.1:{}", m.client_port);
        let (ok, out, err) = etcdctl(&ep, &insecure, &["get", "k", "--print-value-only"]);
        assert!(ok && out == "v\n", "get from {}: {out} {err}", m.name);
    }
    let (ok, out, err) = etcdctl(&endpoints, &insecure, &["endpoint", "health", "--cluster"]);
    assert!(ok && out.matches("is healthy").count() + err.matches("is healthy").count() == 3, "{out} {err}");
    // Verifying the self-signed certificate fails, as with etcd.
    let (ok, _, _) = etcdctl(&endpoints, &[], &["get", "k"]);
    assert!(!ok, "etcdctl verified a self-signed certificate");
    c.assert_running();
}

/// Renewal on the peer port: two members whose peer certificates are from the cluster's CA,
/// one of them expired, cannot form a quorum; once its files are replaced on disk (no
/// restart), new peer connections present the new certificate (dialing and accepting) and
/// the cluster elects a leader.
#[test]
fn renewed_peer_certificates_are_used_by_new_peer_connections() {
    let dir = tempfile::tempdir().expect("temp dir");
    let ca = Ca::new("ca");
    let ca_path = ca.write(&dir.path().join("ca.pem"));
    let (expired, expired_key) = ca.issue_expiring(dir.path(), "m1", -1);
    let (good, good_key) = ca.issue(dir.path(), "m2");
    let (client, client_key) = ca.issue(dir.path(), "client");
    let mut c = Cluster::new(2, Opts::default());
    c.initial_cluster = c.initial_cluster.replace("http://", "https://");
    for (i, (cert, key)) in [(&expired, &expired_key), (&good, &good_key)].into_iter().enumerate() {
        let s = |p: &Path| p.display().to_string();
        let tls = [
            "--peer-cert-file",
            &s(cert),
            "--peer-key-file",
            &s(key),
            "--peer-trusted-ca-file",
            &s(&ca_path),
            "--peer-client-cert-auth",
        ]
        .map(String::from);
        // Peer URLs only: the client port stays plain text.
        let args: Vec<String> = c
            .args(i)
            .into_iter()
            .map(|a| {
                let p = c.members[i].peer_port;
                a.replace(&format!("http://127.0.0.1:{p}"), &format!("https://127.0.0.1:{p}"))
            })
            .chain(tls)
            .collect();
        let child = c.spawn_raw(i, &args);
        c.members[i].child = Some(child);
    }
    let peer1 = c.members[0].peer_port;
    let with_client = client_config(&ca_path, Some((&client, &client_key)), None);
    // m1's peer port serves its expired certificate: refused by a verifying client.
    wait_until("m1's peer port", Duration::from_secs(30), || {
        match handshake_only(peer1, with_client.clone()) {
            Err(e) if e.contains("expired") => Ok(()),
            other => Err(format!("{other:?}")),
        }
    });
    std::thread::sleep(Duration::from_secs(2));
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let no_leader = rt.block_on(common::status(c.port(1))).map(|s| s.leader).unwrap_or(0);
    assert_eq!(no_leader, 0, "a leader was elected over an expired peer certificate");
    // Renew m1's peer certificate in place.
    let renewed = dir.path().join("renewed");
    std::fs::create_dir_all(&renewed).expect("dir");
    let (c2, k2) = ca.issue(&renewed, "m1");
    std::fs::copy(&k2, &expired_key).expect("copy key");
    std::fs::copy(&c2, &expired).expect("copy cert");
    let served = wait_until("the renewed peer certificate", Duration::from_secs(10), || {
        handshake_only(peer1, with_client.clone())
    });
    use rustls::pki_types::pem::PemObject;
    let new_der = rustls::pki_types::CertificateDer::from_pem_file(&c2).expect("renewed cert");
    assert_eq!(served.0, new_der.as_ref(), "m1's peer port serves the renewed certificate");
    rt.block_on(c.wait_leader(Duration::from_secs(30)));
    rt.block_on(c.put_retry(0, "k", "v", Duration::from_secs(10)));
    c.assert_running();
}
