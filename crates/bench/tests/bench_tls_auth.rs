//! `raftkv-bench` against a one-member `raftkv server` with mutual TLS on its client port
//! and auth enabled: puts and linearizable reads (on the leader, found over the tonic path)
//! succeed as a user with a readwrite role on the benchmark's keys; a password change in the
//! middle of a run voids the connections' tokens and the generator authenticates again
//! without a failed request; a wrong password, a missing CA file and a missing client
//! certificate stop it with clear errors. The server binary is the release `raftkv` beside
//! `raftkv-bench` (`cargo build --release -p raftkv` first).

mod common;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::{Member, json, run_bench};
use raftkv_api::authpb::Permission;
use raftkv_api::etcdserverpb::auth_client::AuthClient;
use raftkv_api::etcdserverpb::{
    AuthEnableRequest, AuthRoleAddRequest, AuthRoleGrantPermissionRequest, AuthUserAddRequest,
    AuthUserChangePasswordRequest, AuthUserGrantRoleRequest, AuthenticateRequest,
};
use raftkv_bench::Security;

/// A throwaway CA, the member's certificate (127.0.0.1, localhost) and a client certificate.
struct Pki {
    ca: PathBuf,
    server: (PathBuf, PathBuf),
    client: (PathBuf, PathBuf),
}

fn pki(dir: &Path) -> Pki {
    let ca_key = rcgen::KeyPair::generate().expect("key");
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).expect("params");
    params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    params.distinguished_name.push(rcgen::DnType::CommonName, "bench test CA");
    let ca = params.self_signed(&ca_key).expect("CA");
    let issue = |name: &str, usage: rcgen::ExtendedKeyUsagePurpose| {
        let key = rcgen::KeyPair::generate().expect("key");
        let mut params =
            rcgen::CertificateParams::new(vec!["127.0.0.1".to_string(), "localhost".to_string()])
                .expect("params");
        params.distinguished_name.push(rcgen::DnType::CommonName, name);
        params.extended_key_usages = vec![usage];
        let cert = params.signed_by(&key, &ca, &ca_key).expect("sign");
        let (c, k) = (dir.join(format!("{name}.pem")), dir.join(format!("{name}-key.pem")));
        std::fs::write(&c, cert.pem()).expect("write cert");
        std::fs::write(&k, key.serialize_pem()).expect("write key");
        (c, k)
    };
    let server = issue("member", rcgen::ExtendedKeyUsagePurpose::ServerAuth);
    let client = issue("client", rcgen::ExtendedKeyUsagePurpose::ClientAuth);
    let ca_path = dir.join("ca.pem");
    std::fs::write(&ca_path, ca.pem()).expect("write CA");
    Pki { ca: ca_path, server, client }
}

/// The member with mutual TLS on its client port.
fn start_member(pki: &Pki) -> Member {
    let flags =
        [("--cert-file", &pki.server.0), ("--key-file", &pki.server.1), ("--trusted-ca-file", &pki.ca)];
    let mut extra: Vec<std::ffi::OsString> = flags.iter().flat_map(|(f, p)| [f.into(), p.into()]).collect();
    extra.push("--client-cert-auth".into());
    common::start_member("https", &extra)
}

fn tls_args(pki: &Pki) -> Vec<String> {
    let s = |p: &Path| p.display().to_string();
    vec!["--cacert".into(), s(&pki.ca), "--cert".into(), s(&pki.client.0), "--key".into(), s(&pki.client.1)]
}

fn args(base: &[String], more: &[&str]) -> Vec<String> {
    base.iter().cloned().chain(more.iter().map(|s| s.to_string())).collect()
}

const ROOT_PW: &str = "root-pw";
const BENCH_PW: &str = "bench-pw";

/// root (role root) and bench (role bench: readwrite on the prefix "key"), then auth on.
async fn enable_auth(client: &mut AuthClient<tonic::transport::Channel>) {
    for (name, password) in [("root", ROOT_PW), ("bench", BENCH_PW)] {
        let req = AuthUserAddRequest { name: name.into(), password: password.into(), options: None };
        client.user_add(req).await.expect("user add");
    }
    client.role_add(AuthRoleAddRequest { name: "bench".into() }).await.expect("role add");
    // readwrite (2) on [key, kez): every benchmark key.
    let perm = Permission { perm_type: 2, key: "key".into(), range_end: "kez".into() };
    let req = AuthRoleGrantPermissionRequest { name: "bench".into(), perm: Some(perm) };
    client.role_grant_permission(req).await.expect("grant permission");
    for (user, role) in [("root", "root"), ("bench", "bench")] {
        let req = AuthUserGrantRoleRequest { user: user.into(), role: role.into() };
        client.user_grant_role(req).await.expect("grant role");
    }
    client.auth_enable(AuthEnableRequest {}).await.expect("auth enable");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bench_with_mutual_tls_and_auth() {
    let dir = tempfile::tempdir().expect("a temp dir");
    let pki = pki(dir.path());
    let member = start_member(&pki);
    let tls = tls_args(&pki);

    // Ready once a single put succeeds over TLS (auth still off).
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let out = run_bench(&member.url, &args(&tls, &["--op", "put", "--total", "1", "--timeout", "2"]));
        if json(&out).is_some_and(|j| j["ops"] == 1 && j["error_count"] == 0) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the member did not accept a put over TLS within 30 s: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    let security = Security::new(
        Some(&pki.ca),
        Some(&pki.client.0),
        Some(&pki.client.1),
        Some(&format!("root:{ROOT_PW}")),
    )
    .expect("TLS flags");
    let channel = raftkv_bench::secure::channel(&security, &member.url, Duration::from_secs(5))
        .await
        .expect("a TLS channel");
    let mut auth = AuthClient::new(channel);
    enable_auth(&mut auth).await;

    // Without --user the member takes the client certificate's name ("client", as etcd
    // does), which has no permissions: every request is refused, the counted errors say why.
    let anonymous = json(&run_bench(&member.url, &args(&tls, &["--op", "put", "--total", "5"])))
        .expect("the run itself succeeds");
    assert_eq!(anonymous["ops"], 0, "{anonymous}");
    assert!(anonymous.to_string().contains("permission denied"), "{anonymous}");

    let user = format!("bench:{BENCH_PW}");
    let bench_user = args(&tls, &["--user", &user]);
    let puts = json(&run_bench(
        &member.url,
        &args(
            &bench_user,
            &["--op", "put", "--duration", "2", "--clients", "8", "--conns", "2", "--key-space", "1000"],
        ),
    ))
    .expect("puts as bench succeed");
    assert!(puts["ops"].as_u64().is_some_and(|n| n > 0), "{puts}");
    assert_eq!(puts["error_count"], 0, "{puts}");
    assert_eq!(puts["reauthentications"], 0, "{puts}");

    // Linearizable reads, the leader found with Maintenance.Status over TLS as bench.
    let reads = json(&run_bench(
        &member.url,
        &args(
            &bench_user,
            &[
                "--op",
                "range",
                "--target",
                "leader",
                "--duration",
                "1",
                "--clients",
                "4",
                "--key-space",
                "1000",
            ],
        ),
    ))
    .expect("reads as bench succeed");
    assert!(reads["reads"].as_u64().is_some_and(|n| n > 0), "{reads}");
    assert_eq!(reads["error_count"], 0, "{reads}");

    // A password change voids bench's tokens in the middle of a run: each connection
    // authenticates again (same password) and no request fails.
    let url = member.url.clone();
    let during = tokio::task::spawn_blocking(move || {
        run_bench(
            &url,
            &args(
                &bench_user,
                &["--op", "put", "--duration", "3", "--clients", "8", "--conns", "2", "--key-space", "1000"],
            ),
        )
    });
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let root_token = auth
        .authenticate(AuthenticateRequest { name: "root".into(), password: ROOT_PW.into() })
        .await
        .expect("root authenticates")
        .into_inner()
        .token;
    let mut change = tonic::Request::new(AuthUserChangePasswordRequest {
        name: "bench".into(),
        password: BENCH_PW.into(),
    });
    change.metadata_mut().insert("token", root_token.parse().expect("token metadata"));
    auth.user_change_password(change).await.expect("password change");
    let renewed = json(&during.await.expect("the run")).expect("puts across the password change succeed");
    assert!(renewed["ops"].as_u64().is_some_and(|n| n > 0), "{renewed}");
    assert_eq!(renewed["error_count"], 0, "{renewed}");
    assert!(renewed["reauthentications"].as_u64().is_some_and(|n| n >= 1), "{renewed}");

    // A wrong password stops the run before any load, naming the user and the endpoint.
    let out = run_bench(&member.url, &args(&tls, &["--user", "bench:wrong", "--op", "put", "--total", "1"]));
    assert!(!out.status.success(), "a wrong password must fail the run");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains(&format!(
            "cannot authenticate as bench at {}: etcdserver: authentication failed, invalid user ID or password",
            member.url
        )),
        "{stderr}"
    );

    // A missing CA file, and no client certificate for a member that requires one.
    let missing = dir.path().join("no-such-ca.pem");
    let out = run_bench(&member.url, &["--cacert".into(), missing.display().to_string()]);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains(&format!("TLS: cannot read CA file {}", missing.display())), "{stderr}");
    let out = run_bench(
        &member.url,
        &["--cacert".into(), pki.ca.display().to_string(), "--total".into(), "1".into()],
    );
    assert!(!out.status.success(), "no client certificate: {}", String::from_utf8_lossy(&out.stdout));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains(&format!("cannot connect to {}: ", member.url))
            && stderr.contains("client certificate"),
        "{stderr}"
    );
}
