//! Acceptance: JWT auth tokens (`--auth-token jwt,...`) on a three-member cluster, against
//! a real etcd 3.4 given the same keys.
//!
//! * Tokens issued by one member are good on the others; etcdctl `--user` works through any
//!   member, and a follower forwards an administrator's membership change to the leader.
//! * Expired, tampered, wrongly signed and `alg` swapped tokens, and tokens older than the
//!   last auth change, answer what etcd answers (code and message), over gRPC.
//! * A member given only the public key verifies tokens but issues none, as etcd.
//!
//! Keys come from `openssl`; without it (or `etcd`/`etcdctl`) the test says so loudly and
//! passes, unless RAFTKV_REQUIRE_ETCD=1 is set.

mod common;

use std::path::Path;
use std::process::Command;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use common::{Cluster, Opts, etcdctl, have, start_etcd_elected_with};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use raftkv_api::etcdserverpb::auth_client::AuthClient;
use raftkv_api::etcdserverpb::*;
use serde::{Deserialize, Serialize};
use tonic::Code;

const START: Duration = Duration::from_secs(20);
/// Token lifetime on both servers: short, so that a real token expires during the test.
const TTL_SECS: u64 = 3;

#[derive(Debug, Serialize, Deserialize)]
struct Claims {
    exp: u64,
    revision: u64,
    username: String,
}

fn openssl(dir: &Path, args: &[&str]) {
    let status = Command::new("openssl").current_dir(dir).args(args).status().expect("run openssl");
    assert!(status.success(), "openssl {args:?} failed");
}

/// Two RSA key pairs: the cluster's (`rsa.key`, `rsa.pub`) and a stranger's (`other.key`).
fn make_keys(dir: &Path) {
    openssl(dir, &["genrsa", "-out", "rsa.key", "2048"]);
    openssl(dir, &["rsa", "-in", "rsa.key", "-pubout", "-out", "rsa.pub"]);
    openssl(dir, &["genrsa", "-out", "other.key", "2048"]);
}

fn with_token<T>(msg: T, token: &str) -> tonic::Request<T> {
    let mut r = tonic::Request::new(msg);
    if let Ok(v) = token.parse() {
        r.metadata_mut().insert("token", v);
    }
    r
}

async fn authenticate(port: u16, name: &str, password: &str) -> Result<String, tonic::Status> {
    let req = AuthenticateRequest { name: name.into(), password: password.into() };
    AuthClient::new(common::channel(port)).authenticate(req).await.map(|r| r.into_inner().token)
}

/// The claims of a token, unverified.
fn claims(token: &str) -> Claims {
    let mut v = jsonwebtoken::Validation::new(Algorithm::RS256);
    v.insecure_disable_signature_validation();
    v.validate_exp = false;
    jsonwebtoken::decode::<Claims>(token, &jsonwebtoken::DecodingKey::from_secret(b""), &v)
        .expect("claims")
        .claims
}

fn sign(alg: Algorithm, claims: &Claims, key: &EncodingKey) -> String {
    jsonwebtoken::encode(&Header::new(alg), claims, key).expect("sign")
}

fn now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).expect("clock").as_secs()
}

/// What a request answered: Ok, or the gRPC code and message.
type Answer = Result<(), (Code, String)>;

fn answer<T>(r: Result<T, tonic::Status>) -> Answer {
    r.map(|_| ()).map_err(|s| (s.code(), s.message().to_string()))
}

async fn get(port: u16, token: &str, key: &str) -> Answer {
    let req = RangeRequest { key: key.to_string().into(), ..Default::default() };
    answer(common::kv(port).range(with_token(req, token)).await)
}

async fn put(port: u16, token: &str, key: &str) -> Answer {
    let req = PutRequest { key: key.to_string().into(), value: "v".into(), ..Default::default() };
    answer(common::kv(port).put(with_token(req, token)).await)
}

async fn user_list(port: u16, token: &str) -> Answer {
    answer(AuthClient::new(common::channel(port)).user_list(with_token(AuthUserListRequest {}, token)).await)
}

/// root (root role) and alice (reads `foo`, reads and writes `pre/`), then auth on; through
/// etcdctl, the same on both servers.
fn set_up(endpoint: &str) {
    for args in [
        "put foo bar",
        "user add root:rootpw",
        "user grant-role root root",
        "user add alice:alicepw",
        "role add reader",
        "role grant-permission reader read foo",
        "role grant-permission reader readwrite pre/ --prefix",
        "user grant-role alice reader",
        "auth enable",
    ] {
        let out = etcdctl(endpoint, &args.split(' ').collect::<Vec<_>>(), "");
        assert_eq!(out.code, Some(0), "etcdctl {args}: {out:?}");
    }
}

/// Every token case on one server (`issuer` issues, `others` are checked): the answers in
/// order, labelled.
async fn token_cases(dir: &Path, issuer: u16, others: &[u16]) -> Vec<(String, Answer)> {
    let mut out = Vec::new();
    let alice = authenticate(issuer, "alice", "alicepw").await.expect("alice token");
    let root = authenticate(issuer, "root", "rootpw").await.expect("root token");
    let c = claims(&alice);
    assert_eq!(c.username, "alice");
    assert!((now() + TTL_SECS - 1..=now() + TTL_SECS).contains(&c.exp), "exp {} now {}", c.exp, now());
    for (i, port) in others.iter().enumerate() {
        out.push((format!("member {i}: alice reads foo"), get(*port, &alice, "foo").await));
        out.push((format!("member {i}: alice reads secret"), get(*port, &alice, "secret").await));
        out.push((format!("member {i}: alice writes pre/x"), put(*port, &alice, "pre/x").await));
        out.push((format!("member {i}: alice writes foo"), put(*port, &alice, "foo").await));
        out.push((format!("member {i}: alice lists users"), user_list(*port, &alice).await));
        out.push((format!("member {i}: root lists users"), user_list(*port, &root).await));
    }
    let port = *others.last().expect("a member");
    let key = EncodingKey::from_rsa_pem(&std::fs::read(dir.join("rsa.key")).expect("key")).expect("rsa key");
    let other =
        EncodingKey::from_rsa_pem(&std::fs::read(dir.join("other.key")).expect("key")).expect("rsa key");
    let fresh = |username: &str, exp: u64| Claims { exp, revision: c.revision, username: username.into() };
    // Signed with the right key but expired a while ago.
    let expired = sign(Algorithm::RS256, &fresh("alice", now() - 30), &key);
    out.push(("expired".into(), get(port, &expired, "foo").await));
    // Signed with another key.
    let stranger = sign(Algorithm::RS256, &fresh("root", now() + 60), &other);
    out.push(("another key".into(), get(port, &stranger, "foo").await));
    // alice's signature over root's claims.
    let forged = sign(Algorithm::RS256, &fresh("root", c.exp), &other);
    let parts: Vec<&str> = alice.split('.').collect();
    let payload = forged.split('.').nth(1).expect("payload");
    let tampered = format!("{}.{payload}.{}", parts[0], parts[2]);
    out.push(("tampered claims".into(), get(port, &tampered, "secret").await));
    // The public key used as an HMAC secret (the classic algorithm confusion).
    let public = std::fs::read(dir.join("rsa.pub")).expect("pub");
    let confused = sign(Algorithm::HS256, &fresh("root", now() + 60), &EncodingKey::from_secret(&public));
    out.push(("HS256 with the public key".into(), get(port, &confused, "secret").await));
    // The right key and algorithm with a token from before the last auth change.
    let out_of_date =
        sign(Algorithm::RS256, &Claims { revision: c.revision - 1, ..fresh("root", now() + 60) }, &key);
    out.push(("revision before the last change".into(), get(port, &out_of_date, "secret").await));
    out.push(("garbage".into(), get(port, "garbage", "foo").await));
    // An auth change: the tokens issued before it are old for keys, still good for admin.
    let root_again = authenticate(issuer, "root", "rootpw").await.expect("root token");
    let req = AuthRoleAddRequest { name: "writer".into() };
    answer(AuthClient::new(common::channel(issuer)).role_add(with_token(req, &root_again)).await)
        .expect("role add");
    tokio::time::sleep(Duration::from_millis(300)).await;
    out.push(("old token reads".into(), get(port, &alice, "foo").await));
    out.push(("old root token writes".into(), put(port, &root, "foo").await));
    out.push(("old root token lists users".into(), user_list(port, &root).await));
    let alice2 = authenticate(issuer, "alice", "alicepw").await.expect("alice token");
    out.push(("new token reads".into(), get(port, &alice2, "foo").await));
    // A real token, once its ttl has passed.
    tokio::time::sleep(Duration::from_secs(TTL_SECS + 1)).await;
    out.push(("ttl passed".into(), get(port, &alice2, "foo").await));
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jwt_tokens_on_every_member_match_real_etcd() {
    if !have("openssl") || !have("etcdctl") {
        return;
    }
    let keys = tempfile::tempdir().expect("temp dir");
    make_keys(keys.path());
    let (priv_key, pub_key) = (keys.path().join("rsa.key"), keys.path().join("rsa.pub"));
    let spec = format!(
        "jwt,pub-key={},priv-key={},sign-method=RS256,ttl={TTL_SECS}s",
        pub_key.display(),
        priv_key.display()
    );
    let opts = Opts { extra: vec!["--auth-token".into(), spec.clone()], ..Opts::default() };
    let mut c = Cluster::start(3, opts);
    let leader = c.wait_leader(START).await;
    let follower = (leader + 1) % 3;
    set_up(&c.members[0].endpoint());
    let etcd_dir = tempfile::tempdir().expect("temp dir");
    let etcd = start_etcd_elected_with(etcd_dir.path(), &["--auth-token".into(), spec]).await;
    if let Some((_, port, _)) = &etcd {
        set_up(&format!("127.0.0.1:{port}"));
    }

    // etcdctl --user through every member, and an administrator's membership change sent to
    // a follower (which forwards it to the leader with the caller's token).
    let all = c.endpoints();
    for i in 0..3 {
        let ep = c.members[i].endpoint();
        let out = etcdctl(&ep, &["--user", "alice:alicepw", "get", "foo", "--print-value-only"], "");
        assert_eq!((out.code, out.stdout.as_str()), (Some(0), "bar\n"), "member {i}: {out:?}");
        let out = etcdctl(&ep, &["--user", "alice:alicepw", "put", "pre/from", &i.to_string()], "");
        assert_eq!(out.code, Some(0), "member {i}: {out:?}");
    }
    let out = etcdctl(&all, &["--user", "alice:alicepw", "get", "secret"], "");
    assert!(out.stderr.contains("etcdserver: permission denied"), "{out:?}");
    let peer = format!("http://127.0.0.1:{}", common::free_ports(1)[0]);
    let ep = c.members[follower].endpoint();
    let out = etcdctl(
        &ep,
        &["--user", "root:rootpw", "member", "add", "extra", "--learner", "--peer-urls", &peer],
        "",
    );
    assert_eq!(out.code, Some(0), "member add through a follower: {out:?}");
    let id = out
        .stdout
        .split_whitespace()
        .skip_while(|w| *w != "Member")
        .nth(1)
        .unwrap_or_else(|| panic!("no member id in {out:?}"))
        .to_string();
    let out = etcdctl(&ep, &["--user", "root:rootpw", "member", "remove", &id], "");
    assert_eq!(out.code, Some(0), "member remove through a follower: {out:?}");
    let out = etcdctl(&ep, &["--user", "alice:alicepw", "member", "remove", &id], "");
    assert!(out.stderr.contains("etcdserver: permission denied"), "{out:?}");

    // The token cases: tokens issued by member 0 checked on every member, and by etcd on etcd.
    let ports: Vec<u16> = (0..3).map(|i| c.port(i)).collect();
    let ours = token_cases(keys.path(), ports[0], &ports).await;
    let expect_ok = [
        "alice reads foo",
        "alice writes pre/x",
        "root lists users",
        "old root token lists users",
        "new token reads",
    ];
    for (label, a) in &ours {
        if expect_ok.iter().any(|e| label.ends_with(e)) {
            assert_eq!(a, &Ok(()), "{label}");
        } else {
            assert!(a.is_err(), "{label}: {a:?}");
        }
    }
    let invalid: Answer = Err((Code::Unauthenticated, "etcdserver: invalid auth token".into()));
    for label in
        ["expired", "another key", "tampered claims", "HS256 with the public key", "garbage", "ttl passed"]
    {
        assert_eq!(ours.iter().find(|(l, _)| l == label).map(|(_, a)| a), Some(&invalid), "{label}");
    }
    let old: Answer = Err((Code::InvalidArgument, "etcdserver: revision of auth store is old".into()));
    for label in ["revision before the last change", "old token reads", "old root token writes"] {
        assert_eq!(ours.iter().find(|(l, _)| l == label).map(|(_, a)| a), Some(&old), "{label}");
    }
    if let Some((_, port, _)) = &etcd {
        let theirs = token_cases(keys.path(), *port, &[*port, *port, *port]).await;
        let mismatches: Vec<String> = ours
            .iter()
            .zip(&theirs)
            .filter(|(o, t)| o != t)
            .map(|(o, t)| format!("{}\n  raftkv: {:?}\n  etcd:   {:?}", o.0, o.1, t.1))
            .collect();
        assert!(mismatches.is_empty(), "JWT answers differ from etcd 3.4:\n{}", mismatches.join("\n"));
    }
    c.assert_running();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verify_only_member_and_bad_options() {
    if !have("openssl") {
        return;
    }
    let keys = tempfile::tempdir().expect("temp dir");
    make_keys(keys.path());
    openssl(keys.path(), &["ecparam", "-genkey", "-name", "prime256v1", "-noout", "-out", "ec.key"]);
    openssl(keys.path(), &["ec", "-in", "ec.key", "-pubout", "-out", "ec.pub"]);
    let k = |name: &str| keys.path().join(name).display().to_string();
    // An ECDSA key from `openssl ecparam` (SEC1), with only its public half on the member.
    let spec = format!("jwt,pub-key={},sign-method=ES256", k("ec.pub"));
    let opts = Opts { extra: vec!["--auth-token".into(), spec], ..Opts::default() };
    let mut c = Cluster::start(1, opts);
    c.wait_leader(START).await;
    let port = c.port(0);
    let ep = c.members[0].endpoint();
    // Tokens signed with the private half are good here; a bad one is refused even while
    // auth is disabled (as etcd).
    let key = EncodingKey::from_ec_pem(&pkcs8_of(keys.path(), "ec.key")).expect("ec key");
    let token =
        sign(Algorithm::ES256, &Claims { exp: now() + 60, revision: 100, username: "alice".into() }, &key);
    let invalid: Answer = Err((Code::Unauthenticated, "etcdserver: invalid auth token".into()));
    assert_eq!(get(port, &token, "foo").await, Ok(()));
    assert_eq!(get(port, &format!("{token}x"), "foo").await, invalid);
    set_up(&ep);
    let r = authenticate(port, "alice", "alicepw").await;
    let verify_only: Answer =
        Err((Code::Unknown, "auth: token signing attempted with verify-only key".into()));
    assert_eq!(answer(r), verify_only);
    assert_eq!(get(port, &token, "foo").await, Ok(()));
    assert_eq!(
        get(port, &token, "secret").await,
        Err((Code::PermissionDenied, "etcdserver: permission denied".into()))
    );
    // root was added at auth revision 2 (set_up's first auth change). A root token from
    // revision 2 is out of date for keys but, as etcd, still good for administration; one
    // from before root existed (revision 1) is not, even there.
    let root_at = |revision| Claims { exp: now() + 60, revision, username: "root".into() };
    let old_root = sign(Algorithm::ES256, &root_at(2), &key);
    let old: Answer = Err((Code::InvalidArgument, "etcdserver: revision of auth store is old".into()));
    assert_eq!(get(port, &old_root, "foo").await, old);
    assert_eq!(user_list(port, &old_root).await, Ok(()));
    let before_root = sign(Algorithm::ES256, &root_at(1), &key);
    assert_eq!(user_list(port, &before_root).await, invalid);
    c.assert_running();
    c.stop(0, Duration::from_secs(10));

    // Bad options and keys stop the server with the reason.
    let mut base = c.args(0);
    let at = base.iter().position(|a| a == "--auth-token").expect("--auth-token");
    base.drain(at..at + 2);
    for (spec, reason) in [
        ("jwt,sign-method=RS256".to_string(), "no key"),
        (format!("jwt,sign-method=RS256,priv-key={}", k("missing.key")), "cannot read priv-key"),
        (
            format!("jwt,sign-method=RS256,priv-key={},pub-key={}", k("other.key"), k("rsa.pub")),
            "does not match",
        ),
        (format!("jwt,sign-method=ES256,priv-key={}", k("rsa.key")), "not a usable EC private key"),
        (format!("jwt,sign-method=RS256,priv-key={},tll=5m", k("rsa.key")), "unknown option tll"),
        ("jwt,sign-method=XS1".to_string(), "unknown sign-method"),
        ("oauth".to_string(), "unknown token type"),
    ] {
        let mut args = base.clone();
        args.extend(["--auth-token".to_string(), spec.clone()]);
        let (status, output) = common::run_to_exit(&args, Duration::from_secs(20));
        assert!(!status.success(), "{spec}: started");
        assert!(output.contains(reason), "{spec}: {output}");
    }
}

/// The PKCS#8 form of a key file (jsonwebtoken signs with PKCS#8 EC keys only).
fn pkcs8_of(dir: &Path, name: &str) -> Vec<u8> {
    let out = Command::new("openssl")
        .current_dir(dir)
        .args(["pkcs8", "-topk8", "-nocrypt", "-in", name])
        .output()
        .expect("run openssl");
    assert!(out.status.success(), "openssl pkcs8: {out:?}");
    out.stdout
}
