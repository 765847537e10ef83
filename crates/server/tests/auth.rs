//! Acceptance: authentication and authorisation (etcd's Auth service).
//!
//! * The same etcdctl 3.4 `user`/`role`/`auth` and `--user` sequence runs against a
//!   one-member raftkv and a one-member real etcd; the outputs must be identical.
//! * Tokens over gRPC (both the direct key-value path and the tonic services) and the JSON
//!   gateway: a deleted user's token, oversized and garbage tokens, watch refusals.
//! * A three-member cluster: the auth state survives a restart of every member and reaches a
//!   member that catches up by snapshot.
//!
//! Without `etcdctl` (or `etcd`) on PATH the etcdctl tests say so loudly and pass, unless
//! RAFTKV_REQUIRE_ETCD=1 is set.

mod common;

use std::time::Duration;

use common::{Cluster, Opts, Out, etcdctl, have, start_etcd_elected, wait_for};
use raftkv_api::etcdserverpb::auth_client::AuthClient;
use raftkv_api::etcdserverpb::watch_client::WatchClient;
use raftkv_api::etcdserverpb::*;
use tonic::Code;

const START: Duration = Duration::from_secs(20);

/// The etcdctl sequence: (arguments, stdin). `R` is the root user's flag, `A` alice's.
fn script() -> Vec<(String, String)> {
    const R: &str = "--user root:rootpw";
    const A: &str = "--user alice:alicepw";
    let compare_only = "value(\"secret\") = \"x\"\n\n\n\n";
    let put_in_success = "value(\"foo\") = \"x\"\n\nput secret s\n\nget foo\n\n";
    let allowed_txn = "value(\"foo\") = \"bar\"\n\nput pre/t 1\n\nget foo\n\n";
    let s: Vec<(String, &str)> = vec![
        ("put foo bar".into(), ""),
        ("put secret s0".into(), ""),
        ("user add root:rootpw".into(), ""),
        ("user add alice:alicepw".into(), ""),
        ("user add alice:again".into(), ""),
        ("user add :x".into(), ""),
        ("role add reader".into(), ""),
        ("role add reader".into(), ""),
        ("role grant-permission reader read foo".into(), ""),
        ("role grant-permission reader readwrite pre/ --prefix".into(), ""),
        ("role grant-permission reader write w1 w5".into(), ""),
        ("role grant-permission reader read from/ --from-key".into(), ""),
        ("role grant-permission reader read foo".into(), ""),
        ("role grant-permission nobody read foo".into(), ""),
        ("role get reader".into(), ""),
        ("role revoke-permission reader w1 w5".into(), ""),
        ("role revoke-permission reader nothere".into(), ""),
        ("role get reader".into(), ""),
        ("role list".into(), ""),
        ("user grant-role alice reader".into(), ""),
        ("user grant-role alice nosuchrole".into(), ""),
        ("user grant-role root root".into(), ""),
        ("user get alice".into(), ""),
        ("user get nobody".into(), ""),
        ("user list".into(), ""),
        ("user revoke-role alice nosuchrole".into(), ""),
        ("auth enable".into(), ""),
        ("get foo".into(), ""),
        ("put foo x".into(), ""),
        ("user list".into(), ""),
        (format!("{A} get foo"), ""),
        ("--user alice:wrong get foo".into(), ""),
        ("--user nobody:pw get foo".into(), ""),
        (format!("{A} get secret"), ""),
        (format!("{A} put foo x"), ""),
        (format!("{A} put pre/a 1"), ""),
        (format!("{A} get pre/ --prefix"), ""),
        (format!("{A} get p --prefix"), ""),
        (format!("{A} get from/x"), ""),
        (format!("{A} del pre/a"), ""),
        (format!("{A} del foo"), ""),
        (format!("{A} txn"), compare_only),
        (format!("{A} txn"), put_in_success),
        (format!("{A} txn"), allowed_txn),
        (format!("{A} user list"), ""),
        (format!("{A} user get alice"), ""),
        (format!("{A} user get root"), ""),
        (format!("{A} role get reader"), ""),
        (format!("{A} role list"), ""),
        (format!("{A} user add eve:x"), ""),
        (format!("{A} auth disable"), ""),
        (format!("{R} get secret"), ""),
        (format!("{R} user list"), ""),
        (format!("{R} user passwd alice --interactive=false"), "newpw\n"),
        (format!("{A} get foo"), ""),
        ("--user alice:newpw get foo".into(), ""),
        (format!("{R} user revoke-role alice reader"), ""),
        ("--user alice:newpw get foo".into(), ""),
        // Membership changes are for administrators only.
        ("--user alice:newpw member remove 1234".into(), ""),
        (format!("{R} user revoke-role root root"), ""),
        (format!("{R} user delete root"), ""),
        (format!("{R} role add root"), ""),
        (format!("{R} role delete root"), ""),
        (format!("{R} role delete reader"), ""),
        (format!("{R} user delete alice"), ""),
        ("--user alice:newpw get foo".into(), ""),
        (format!("{R} auth disable"), ""),
        ("get secret".into(), ""),
        ("auth enable".into(), ""),
        ("user delete root".into(), ""),
        ("auth enable".into(), ""),
    ];
    s.into_iter().map(|(a, i)| (a, i.to_string())).collect()
}

fn run(endpoint: &str, args: &str, stdin: &str) -> Out {
    let args: Vec<&str> = args.split(' ').collect();
    etcdctl(endpoint, &args, stdin)
}

/// The same user, role, auth and `--user` commands answer exactly as etcd 3.4's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcdctl_auth_commands_match_real_etcd() {
    if !have("etcdctl") {
        return;
    }
    let mut c = Cluster::start(1, Opts::default());
    c.wait_leader(START).await;
    let ours_ep = c.members[0].endpoint();
    let etcd_dir = tempfile::tempdir().expect("temp dir");
    let etcd = start_etcd_elected(etcd_dir.path()).await;
    let theirs_ep = etcd.as_ref().map(|(_, client, _)| format!("127.0.0.1:{client}"));
    let mut mismatches = Vec::new();
    for (args, stdin) in script() {
        let ours = run(&ours_ep, &args, &stdin);
        let Some(theirs_ep) = &theirs_ep else {
            eprintln!("etcdctl {args} -> {ours:?}");
            continue;
        };
        let theirs = run(theirs_ep, &args, &stdin);
        if ours != theirs {
            mismatches.push(format!("etcdctl {args}\n  raftkv: {ours:?}\n  etcd:   {theirs:?}"));
        }
    }
    c.assert_running();
    assert!(
        mismatches.is_empty(),
        "{} etcdctl commands answered differently from etcd 3.4:\n{}",
        mismatches.len(),
        mismatches.join("\n")
    );
}

fn auth_client(port: u16) -> AuthClient<tonic::transport::Channel> {
    AuthClient::new(common::channel(port))
}

fn with_token<T>(msg: T, token: &str) -> tonic::Request<T> {
    let mut r = tonic::Request::new(msg);
    if !token.is_empty()
        && let Ok(v) = token.parse()
    {
        r.metadata_mut().insert("token", v);
    }
    r
}

async fn authenticate(port: u16, name: &str, password: &str) -> Result<String, tonic::Status> {
    let req = AuthenticateRequest { name: name.into(), password: password.into() };
    auth_client(port).authenticate(req).await.map(|r| r.into_inner().token)
}

/// Root (with the root role) and alice (reading `foo`, reading and writing `pre/`), auth on.
async fn set_up_users(port: u16) {
    let mut a = auth_client(port);
    for (name, password) in [("root", "rootpw"), ("alice", "alicepw")] {
        let req = AuthUserAddRequest { name: name.into(), password: password.into(), options: None };
        a.user_add(req).await.expect("user add");
    }
    a.role_add(AuthRoleAddRequest { name: "reader".into() }).await.expect("role add");
    for (t, key, end) in [(0, "foo", ""), (2, "pre/", "pre0")] {
        let perm = raftkv_api::authpb::Permission { perm_type: t, key: key.into(), range_end: end.into() };
        let req = AuthRoleGrantPermissionRequest { name: "reader".into(), perm: Some(perm) };
        a.role_grant_permission(req).await.expect("grant permission");
    }
    for (user, role) in [("alice", "reader"), ("root", "root")] {
        let req = AuthUserGrantRoleRequest { user: user.into(), role: role.into() };
        a.user_grant_role(req).await.expect("grant role");
    }
    a.auth_enable(AuthEnableRequest {}).await.expect("auth enable");
}

fn range(key: &str) -> RangeRequest {
    RangeRequest { key: key.to_string().into(), ..Default::default() }
}

fn put(key: &str, value: &str) -> PutRequest {
    PutRequest { key: key.to_string().into(), value: value.to_string().into(), ..Default::default() }
}

fn assert_status(r: Result<impl std::fmt::Debug, tonic::Status>, code: Code, message: &str) {
    match r {
        Err(s) => assert_eq!((s.code(), s.message()), (code, message), "{s:?}"),
        Ok(v) => panic!("expected {code:?} {message:?}, got {v:?}"),
    }
}

/// Tokens on both gRPC paths and the JSON gateway: good, missing, garbage, oversized, of a
/// deleted user; watches refused with etcd's cancel reason.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_permissions_and_the_gateway() {
    let mut c = Cluster::start(1, Opts::default());
    c.wait_leader(START).await;
    let port = c.port(0);
    common::put(port, "foo", "bar").await.expect("put");
    set_up_users(port).await;
    let root = authenticate(port, "root", "rootpw").await.expect("root token");
    let alice = authenticate(port, "alice", "alicepw").await.expect("alice token");
    assert_status(
        authenticate(port, "alice", "nope").await,
        Code::InvalidArgument,
        "etcdserver: authentication failed, invalid user ID or password",
    );
    let mut kv = common::kv(port);
    // The direct key-value path.
    assert_status(kv.range(range("foo")).await, Code::InvalidArgument, "etcdserver: user name is empty");
    let got = kv.range(with_token(range("foo"), &alice)).await.expect("alice reads foo").into_inner();
    assert_eq!(got.kvs[0].value, "bar");
    assert_status(
        kv.put(with_token(put("foo", "x"), &alice)).await,
        Code::PermissionDenied,
        "etcdserver: permission denied",
    );
    kv.put(with_token(put("pre/a", "1"), &alice)).await.expect("alice writes pre/");
    kv.put(with_token(put("secret", "s"), &root)).await.expect("root writes anything");
    // A transaction that only compares a key alice cannot read.
    let compare_only = TxnRequest {
        compare: vec![Compare { key: "secret".into(), target: 3, ..Default::default() }],
        ..Default::default()
    };
    assert_status(
        kv.txn(with_token(compare_only, &alice)).await,
        Code::PermissionDenied,
        "etcdserver: permission denied",
    );
    // A nested transaction touching a forbidden key.
    let nested = TxnRequest {
        success: vec![RequestOp {
            request: Some(request_op::Request::RequestTxn(TxnRequest {
                success: vec![RequestOp {
                    request: Some(request_op::Request::RequestPut(put("secret", "x"))),
                }],
                ..Default::default()
            })),
        }],
        ..Default::default()
    };
    assert_status(
        kv.txn(with_token(nested, &alice)).await,
        Code::PermissionDenied,
        "etcdserver: permission denied",
    );
    // Garbage and oversized tokens are invalid, not a crash; beyond the header limit the
    // request is refused by HTTP/2 itself.
    for bad in ["garbage".to_string(), "x".repeat(8 << 10)] {
        assert_status(
            kv.range(with_token(range("foo"), &bad)).await,
            Code::Unauthenticated,
            "etcdserver: invalid auth token",
        );
    }
    assert!(kv.range(with_token(range("foo"), &"x".repeat(64 << 10))).await.is_err());
    // Watch: refused with etcd's reason, permitted for a readable key.
    for (token, key, reason) in [
        (alice.as_str(), "secret", "etcdserver: permission denied"),
        ("", "foo", "etcdserver: user name is empty"),
        (alice.as_str(), "foo", ""),
    ] {
        let create = WatchRequest {
            request_union: Some(watch_request::RequestUnion::CreateRequest(WatchCreateRequest {
                key: key.to_string().into(),
                ..Default::default()
            })),
        };
        let req = with_token(tokio_stream::iter(vec![create]), token);
        let mut stream =
            WatchClient::new(common::channel(port)).watch(req).await.expect("watch").into_inner();
        let first = tokio::time::timeout(Duration::from_secs(5), stream.message())
            .await
            .expect("a watch response in time")
            .expect("watch stream")
            .expect("a response");
        assert!(first.created, "{first:?}");
        assert_eq!((first.canceled, first.cancel_reason.as_str()), (!reason.is_empty(), reason), "{key}");
    }
    // The JSON gateway: authenticate, then the Authorization header.
    let body = common::http_post_with(
        port,
        "/v3/auth/authenticate",
        r#"{"name":"alice","password":"alicepw"}"#,
        &[],
    );
    let v: serde_json::Value = serde_json::from_str(&body).expect("json");
    let gw_token = v["token"].as_str().expect("token").to_string();
    let got =
        common::http_post_with(port, "/v3/kv/range", r#"{"key":"Zm9v"}"#, &[("Authorization", &gw_token)]);
    assert!(got.contains(r#""value":"YmFy""#), "{got}");
    let denied = common::http_post_with(port, "/v3/kv/range", r#"{"key":"Zm9v"}"#, &[]);
    assert!(denied.contains("etcdserver: user name is empty"), "{denied}");
    // A deleted user's token is invalid at once; so is one issued before a password change.
    let mut a = auth_client(port);
    a.user_delete(with_token(AuthUserDeleteRequest { name: "alice".into() }, &root)).await.expect("delete");
    assert_status(
        kv.range(with_token(range("foo"), &alice)).await,
        Code::Unauthenticated,
        "etcdserver: invalid auth token",
    );
    let req = AuthUserChangePasswordRequest { name: "root".into(), password: "new".into() };
    a.user_change_password(with_token(req, &root)).await.expect("change password");
    assert_status(
        kv.range(with_token(range("foo"), &root)).await,
        Code::Unauthenticated,
        "etcdserver: invalid auth token",
    );
    let root = authenticate(port, "root", "new").await.expect("new root token");
    let status = common::maintenance(port).status(with_token(StatusRequest {}, &root)).await;
    assert!(status.is_ok(), "root may call Status: {status:?}");
    let status = common::maintenance(port).status(StatusRequest {}).await;
    assert!(status.is_ok(), "Status needs no user, as etcd 3.4's: {status:?}");
    c.assert_running();
}

/// Reads `foo` through member `port` as alice (a fresh token) and without a token.
/// A follower hands membership changes and lease calls to the leader over the peer port,
/// with the caller authorised on the follower, where its simple token is known: root's
/// changes go through, alice's are denied; lease keep-alives and TimeToLive through the
/// follower answer; the leader grants nothing to a client that sets the header the old
/// client-port forwarding used.
async fn forwarded_calls_are_authorised_by_the_follower(c: &Cluster, leader: usize) {
    use raftkv_api::etcdserverpb::lease_client::LeaseClient;
    let follower = (leader + 1) % 3;
    let port = c.port(follower);
    let root = authenticate(port, "root", "rootpw").await.expect("root token");
    let alice = authenticate(port, "alice", "alicepw").await.expect("alice token");
    let spare = format!("http://127.0.0.1:{}", common::free_ports(1)[0]);
    let add = MemberAddRequest { peer_ur_ls: vec![spare], is_learner: true };
    let mut cluster = common::cluster_client(port);
    assert_status(
        cluster.member_add(with_token(add.clone(), &alice)).await,
        Code::PermissionDenied,
        "etcdserver: permission denied",
    );
    let added = cluster.member_add(with_token(add, &root)).await.expect("member add through a follower");
    let added = added.into_inner();
    let id = added.member.expect("the new member").id;
    assert!(added.members.iter().any(|m| m.id == id), "{:?}", added.members);
    assert_status(
        cluster.member_remove(with_token(MemberRemoveRequest { id }, &alice)).await,
        Code::PermissionDenied,
        "etcdserver: permission denied",
    );
    let removed = cluster.member_remove(with_token(MemberRemoveRequest { id }, &root)).await;
    let removed = removed.expect("member remove through a follower").into_inner();
    assert!(!removed.members.iter().any(|m| m.id == id), "{:?}", removed.members);

    let mut lease = LeaseClient::new(common::channel(port));
    let grant = LeaseGrantRequest { ttl: 60, id: 0 };
    let granted = lease.lease_grant(with_token(grant, &alice)).await.expect("grant").into_inner();
    assert_eq!(common::keep_alive_once(port, granted.id).await.expect("keep-alive through a follower"), 60);
    let ttl = LeaseTimeToLiveRequest { id: granted.id, keys: false };
    let got = lease.lease_time_to_live(with_token(ttl, &alice)).await.expect("TimeToLive through a follower");
    let got = got.into_inner();
    assert!(got.ttl > 50 && got.granted_ttl == 60, "{got:?}");
    assert_status(
        lease.lease_time_to_live(ttl).await,
        Code::InvalidArgument,
        "etcdserver: user name is empty",
    );
    // The header that made the leader skip every check: no privilege any more.
    for p in [port, c.port(leader)] {
        let mut req = tonic::Request::new(ttl);
        req.metadata_mut().insert("raftkv-forwarded", tonic::metadata::MetadataValue::from_static("1"));
        let r = LeaseClient::new(common::channel(p)).lease_time_to_live(req).await;
        assert_status(r, Code::InvalidArgument, "etcdserver: user name is empty");
    }
}

async fn check_enforced(port: u16) {
    let alice = wait_for("alice to authenticate", START, || async move {
        authenticate(port, "alice", "alicepw").await.ok()
    })
    .await;
    let mut kv = common::kv(port);
    let got = kv.range(with_token(range("foo"), &alice)).await.expect("alice reads foo").into_inner();
    assert_eq!(got.kvs.len(), 1);
    assert_status(
        kv.range(with_token(range("k/1"), &alice)).await,
        Code::PermissionDenied,
        "etcdserver: permission denied",
    );
    assert_status(kv.range(range("foo")).await, Code::InvalidArgument, "etcdserver: user name is empty");
}

/// Three members: the auth state is replicated, reaches a member that catches up by snapshot
/// (--snapshot-count 100 and 400 writes while it is down), and survives a restart of all.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auth_state_survives_restart_and_snapshot_install() {
    let opts = Opts { snapshot_count: Some(100), ..Opts::default() };
    let mut c = Cluster::start(3, opts);
    let leader = c.wait_leader(START).await;
    let port = c.port(leader);
    common::put(port, "foo", "bar").await.expect("put");
    set_up_users(port).await;
    for i in 0..3 {
        check_enforced(c.port(i)).await;
    }
    forwarded_calls_are_authorised_by_the_follower(&c, leader).await;
    let down = (leader + 1) % 3;
    c.stop(down, Duration::from_secs(10));
    let writer = (down + 1) % 3;
    let root = authenticate(c.port(writer), "root", "rootpw").await.expect("root token");
    let mut kv = common::kv(c.port(writer));
    for i in 0..400 {
        kv.put(with_token(put(&format!("k/{i}"), "v"), &root)).await.expect("root put");
    }
    c.start_member(down);
    let down_port = c.port(down);
    wait_for("the restarted member to catch up", START, || async move {
        let root = authenticate(down_port, "root", "rootpw").await.ok()?;
        let got = common::kv(down_port).range(with_token(range("k/399"), &root)).await.ok()?;
        (got.into_inner().kvs.len() == 1).then_some(())
    })
    .await;
    check_enforced(down_port).await;
    for i in 0..3 {
        c.stop(i, Duration::from_secs(10));
    }
    for i in 0..3 {
        c.start_member(i);
    }
    // (Authenticating waits for a leader.)
    for i in 0..3 {
        check_enforced(c.port(i)).await;
    }
    c.assert_running();
}

/// Alice's token reads `foo` and writes `pre/` on `port`, root's computes HashKV there.
async fn tokens_work_on(port: u16, root: &str, alice: &str, value: &str) {
    let mut kv = common::kv(port);
    kv.put(with_token(put("pre/k", value), alice))
        .await
        .expect("alice puts with a token from another member");
    let got = kv
        .range(with_token(range("foo"), alice))
        .await
        .expect("alice reads with a token from another member");
    assert_eq!(got.into_inner().kvs.len(), 1);
    let hash = common::maintenance(port).hash_kv(with_token(HashKvRequest { revision: 0 }, root)).await;
    assert!(hash.is_ok(), "root's HashKV with a token from another member: {hash:?}");
}

/// Simple tokens are issued through the log (as etcd's): a token one member issues works on
/// every member at once (Range, Put, HashKV), still works after a leader change, and is void
/// on every member once its user's password changes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn simple_tokens_are_valid_on_every_member() {
    let mut c = Cluster::start(3, Opts::default());
    let leader = c.wait_leader(START).await;
    common::put(c.port(leader), "foo", "bar").await.expect("put");
    set_up_users(c.port(leader)).await;
    // Issued by a follower (through the leader's log) and by the leader.
    let follower = (leader + 1) % 3;
    let root = authenticate(c.port(follower), "root", "rootpw").await.expect("root token");
    let alice = authenticate(c.port(leader), "alice", "alicepw").await.expect("alice token");
    for i in 0..3 {
        tokens_work_on(c.port(i), &root, &alice, &format!("v{i}")).await;
    }

    // A leader change: every member keeps the tokens it applied.
    let target = (leader + 2) % 3;
    let target_id = common::status(c.port(target)).await.expect("status").header.expect("header").member_id;
    let moved = common::maintenance(c.port(leader))
        .move_leader(with_token(MoveLeaderRequest { target_id }, &root))
        .await;
    assert!(moved.is_ok(), "move leader: {moved:?}");
    let new_leader = c.wait_leader(START).await;
    assert_ne!(new_leader, leader, "the leader moved");
    for i in 0..3 {
        tokens_work_on(c.port(i), &root, &alice, &format!("w{i}")).await;
    }

    // Alice's new password voids her tokens on every member, not root's; a new token works.
    let change = AuthUserChangePasswordRequest { name: "alice".into(), password: "newpw".into() };
    auth_client(c.port(follower))
        .user_change_password(with_token(change, &root))
        .await
        .expect("change password");
    for i in 0..3 {
        assert_status(
            common::kv(c.port(i)).range(with_token(range("foo"), &alice)).await,
            Code::Unauthenticated,
            "etcdserver: invalid auth token",
        );
    }
    assert_status(
        authenticate(c.port(leader), "alice", "alicepw").await,
        Code::InvalidArgument,
        "etcdserver: authentication failed, invalid user ID or password",
    );
    let alice = authenticate(c.port(new_leader), "alice", "newpw").await.expect("alice's new token");
    for i in 0..3 {
        tokens_work_on(c.port(i), &root, &alice, &format!("x{i}")).await;
    }
    c.assert_running();
}

/// Once auth is enabled, listing alarms is open to any caller (as etcd 3.4) and raising or
/// clearing one needs an administrator (etcd 3.4.23 checked nothing: any client could raise
/// NOSPACE and stop every write), refused as etcd's Maintenance service refuses. The
/// gateway's Maintenance and Cluster routes apply the same checks as gRPC.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn alarms_and_the_maintenance_routes_need_their_permissions() {
    let mut c = Cluster::start(1, Opts::default());
    c.wait_leader(START).await;
    let port = c.port(0);
    set_up_users(port).await;
    let root = authenticate(port, "root", "rootpw").await.expect("root token");
    let alice = authenticate(port, "alice", "alicepw").await.expect("alice token");
    let status = common::maintenance(port).status(with_token(StatusRequest {}, &root)).await;
    let me = status.expect("status").into_inner().header.expect("header").member_id;
    let alarm = |action: alarm_request::AlarmAction| AlarmRequest {
        action: action as i32,
        member_id: me,
        alarm: AlarmType::Nospace as i32,
    };
    let mut m = common::maintenance(port);
    use alarm_request::AlarmAction::{Activate, Deactivate, Get};
    let empty = (Code::Unknown, "auth: user name is empty");
    let denied = (Code::Unknown, "auth: permission denied");
    for action in [Activate, Deactivate] {
        assert_status(m.alarm(with_token(alarm(action), "")).await, empty.0, empty.1);
        assert_status(m.alarm(with_token(alarm(action), &alice)).await, denied.0, denied.1);
    }
    let listed = m.alarm(with_token(alarm(Get), "")).await.expect("anyone lists the alarms");
    assert!(listed.into_inner().alarms.is_empty());
    let listed = m.alarm(with_token(alarm(Get), &alice)).await.expect("alice lists the alarms");
    assert!(listed.into_inner().alarms.is_empty());
    m.alarm(with_token(alarm(Activate), &root)).await.expect("root raises NOSPACE");
    let listed = m.alarm(with_token(alarm(Get), &alice)).await.expect("alice lists the alarms");
    assert_eq!(listed.into_inner().alarms.len(), 1);
    m.alarm(with_token(alarm(Deactivate), &root)).await.expect("root clears NOSPACE");

    // The gateway: the same refusals, in etcd's error body.
    let gw = |path: &str, body: &str, token: &str| {
        let headers: Vec<(&str, &str)> =
            if token.is_empty() { vec![] } else { vec![("Authorization", token)] };
        common::http_post_with(port, path, body, &headers)
    };
    let raise = format!(r#"{{"action":"ACTIVATE","alarm":"NOSPACE","memberID":"{me}"}}"#);
    let refusal = |(code, message): (Code, &str)| {
        format!(r#"{{"error":"{message}","message":"{message}","code":{}}}"#, code as i32)
    };
    assert_eq!(gw("/v3/maintenance/alarm", &raise, ""), refusal(empty));
    assert_eq!(gw("/v3/maintenance/alarm", &raise, &alice), refusal(denied));
    assert_eq!(gw("/v3/maintenance/alarm", "{}", ""), "{}");
    assert_eq!(gw("/v3/maintenance/alarm", "{}", &alice), "{}");
    for path in ["/v3/maintenance/defragment", "/v3/maintenance/hash"] {
        assert_eq!(gw(path, "{}", &alice), refusal(denied), "{path}");
    }
    // Membership changes answer the converted errors (etcd's cluster service converts them).
    let add = r#"{"peerURLs":["http://127.0.0.1:1"]}"#;
    let (cluster_empty, cluster_denied) = (
        (Code::InvalidArgument, "etcdserver: user name is empty"),
        (Code::PermissionDenied, "etcdserver: permission denied"),
    );
    assert_eq!(gw("/v3/cluster/member/remove", r#"{"ID":"1"}"#, &alice), refusal(cluster_denied));
    assert_eq!(gw("/v3/cluster/member/add", add, ""), refusal(cluster_empty));
    let snapshot = gw("/v3/maintenance/snapshot", "{}", &alice);
    assert!(snapshot.contains(r#""message":"auth: permission denied""#), "{snapshot}");
    assert!(!snapshot.contains("result"), "{snapshot}");
    assert!(gw("/v3/maintenance/defragment", "{}", &root).starts_with('{'));
    assert!(gw("/v3/maintenance/snapshot", "{}", &root).contains(r#"{"result":{"#));
    c.assert_running();
}

/// A call's outcome as the tests compare it: `ok`, or the refusal's code and message.
fn outcome<T>(r: Result<T, tonic::Status>) -> String {
    match r {
        Ok(_) => "ok".into(),
        Err(s) => format!("{:?} {}", s.code(), s.message()),
    }
}

/// Each Maintenance call (and MemberList, `/health`, the gateway's alarm list) without a
/// token, with a garbage token and as alice (no root role), with auth enabled: one line per
/// call and caller.
async fn maintenance_answers(port: u16) -> Vec<String> {
    let alice = authenticate(port, "alice", "alicepw").await.expect("alice token");
    let mut lines = Vec::new();
    for (who, token) in [("anonymous", ""), ("garbage token", "garbage"), ("alice", alice.as_str())] {
        let mut m = common::maintenance(port);
        let calls = [
            ("Status", outcome(m.status(with_token(StatusRequest {}, token)).await)),
            ("Alarm GET", outcome(m.alarm(with_token(AlarmRequest::default(), token)).await)),
            ("Hash", outcome(m.hash(with_token(HashRequest {}, token)).await)),
            ("HashKV", outcome(m.hash_kv(with_token(HashKvRequest { revision: 0 }, token)).await)),
            ("Defragment", outcome(m.defragment(with_token(DefragmentRequest {}, token)).await)),
            ("Snapshot", {
                // The refusal may come with the response headers or as the stream's first item.
                let first = match m.snapshot(with_token(SnapshotRequest {}, token)).await {
                    Ok(stream) => stream.into_inner().message().await.map(|_| ()),
                    Err(s) => Err(s),
                };
                outcome(first)
            }),
            (
                "MemberList",
                outcome(
                    common::cluster_client(port)
                        .member_list(with_token(MemberListRequest::default(), token))
                        .await,
                ),
            ),
        ];
        for (call, answer) in calls {
            lines.push(format!("{call} ({who}): {answer}"));
        }
        let headers: Vec<(&str, &str)> =
            if token.is_empty() { vec![] } else { vec![("Authorization", token)] };
        let (code, body) = common::http_request(port, "GET", "/health", "", &headers);
        lines.push(format!("GET /health ({who}): {code} {}", body.trim()));
        // (etcd answers errors chunked: the JSON line alone is compared.)
        let body = common::http_post_with(port, "/v3/maintenance/alarm", "{}", &headers);
        let body = body.lines().find(|l| l.starts_with('{')).unwrap_or(&body).to_string();
        lines.push(format!("POST /v3/maintenance/alarm ({who}): {body}"));
    }
    lines
}

/// With auth enabled, the Maintenance calls, MemberList and `/health` check their callers
/// as etcd 3.4: Status, MemberList and `/health` are open (a garbage token is ignored), the
/// alarm list is open to a valid token or none, Hash, HashKV, Defragment and Snapshot need
/// the root role, refused with etcd's unconverted `auth: ...` errors (code Unknown).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn maintenance_callers_are_checked_as_etcd() {
    let mut c = Cluster::start(1, Opts::default());
    c.wait_leader(START).await;
    let port = c.port(0);
    set_up_users(port).await;
    let ours = maintenance_answers(port).await;
    let empty = "Unknown auth: user name is empty";
    let garbage = "Unknown auth: invalid auth token";
    let denied = "Unknown auth: permission denied";
    let admin_only = ["Hash", "HashKV", "Defragment", "Snapshot"];
    let mut expected = Vec::new();
    for (who, refusal) in [("anonymous", empty), ("garbage token", garbage), ("alice", denied)] {
        expected.push(format!("Status ({who}): ok"));
        let alarm = if who == "garbage token" { garbage } else { "ok" };
        expected.push(format!("Alarm GET ({who}): {alarm}"));
        for call in admin_only {
            expected.push(format!("{call} ({who}): {refusal}"));
        }
        expected.push(format!("MemberList ({who}): ok"));
        expected.push(format!(r#"GET /health ({who}): 200 {{"health":"true"}}"#));
        let body = if who == "garbage token" {
            format!(r#"{{"error":"{m}","message":"{m}","code":2}}"#, m = "auth: invalid auth token")
        } else {
            "{}".into()
        };
        expected.push(format!("POST /v3/maintenance/alarm ({who}): {body}"));
    }
    assert_eq!(ours, expected);
    c.assert_running();

    let etcd_dir = tempfile::tempdir().expect("temp dir");
    if let Some((_etcd, etcd_port, _)) = start_etcd_elected(etcd_dir.path()).await {
        set_up_users(etcd_port).await;
        let theirs = maintenance_answers(etcd_port).await;
        let differ: Vec<String> = ours
            .iter()
            .zip(&theirs)
            .filter(|(a, b)| a != b)
            .map(|(a, b)| format!("  raftkv: {a}\n  etcd:   {b}"))
            .collect();
        assert!(differ.is_empty(), "answers differing from etcd 3.4:\n{}", differ.join("\n"));
    }
}

/// Lock and Election calls as alice (reading `foo`, reading and writing `pre/`), auth on: on a
/// prefix she has no permission on, then on `pre/`. One line per call.
async fn recipe_answers(port: u16) -> Vec<String> {
    use raftkv_api::v3electionpb::election_client::ElectionClient;
    use raftkv_api::v3electionpb::{
        CampaignRequest, LeaderKey, LeaderRequest, ProclaimRequest, ResignRequest,
    };
    use raftkv_api::v3lockpb::lock_client::LockClient;
    use raftkv_api::v3lockpb::{LockRequest, UnlockRequest};
    let alice = authenticate(port, "alice", "alicepw").await.expect("alice token");
    let lease = raftkv_api::etcdserverpb::lease_client::LeaseClient::new(common::channel(port))
        .lease_grant(with_token(LeaseGrantRequest { ttl: 60, id: 0 }, &alice))
        .await
        .expect("lease grant")
        .into_inner()
        .id;
    let mut lines = Vec::new();
    // The JSON gateway, with the token in the Authorization header.
    for (path, body) in [
        ("/v3/lock/lock", format!(r#"{{"name":"bG9ja3MvbA==","lease":"{lease}"}}"#)),
        ("/v3/election/campaign", format!(r#"{{"name":"bG9ja3MvZQ==","lease":"{lease}","value":"dg=="}}"#)),
        ("/v3/election/leader", r#"{"name":"bG9ja3MvZQ=="}"#.to_string()),
    ] {
        let answer = common::http_post_with(port, path, &body, &[("Authorization", &alice)]);
        // etcd's answer is chunked (with a trailer): the JSON line alone is compared.
        let answer = answer.lines().find(|l| l.starts_with('{')).unwrap_or(&answer).to_string();
        lines.push(format!("POST {path} locks/: {answer}"));
    }
    let mut lock = LockClient::new(common::channel(port));
    let mut election = ElectionClient::new(common::channel(port));
    for prefix in ["locks/", "pre/"] {
        let name = format!("{prefix}l");
        let r = lock.lock(with_token(LockRequest { name: name.clone().into(), lease }, &alice)).await;
        let key = r.as_ref().map(|r| r.get_ref().key.clone()).unwrap_or_default();
        lines.push(format!("Lock {name}: {}", outcome(r)));
        let key = if key.is_empty() { format!("{name}/{lease:x}").into() } else { key };
        let r = lock.unlock(with_token(UnlockRequest { key }, &alice)).await;
        lines.push(format!("Unlock {name}: {}", outcome(r)));
        let name = format!("{prefix}e");
        let campaign = CampaignRequest { name: name.clone().into(), lease, value: "v".into() };
        let r = election.campaign(with_token(campaign, &alice)).await;
        let leader = r.as_ref().ok().and_then(|r| r.get_ref().leader.clone()).unwrap_or(LeaderKey {
            name: name.clone().into(),
            key: format!("{name}/{lease:x}").into(),
            rev: 1,
            lease,
        });
        lines.push(format!("Campaign {name}: {}", outcome(r)));
        let r = election.leader(with_token(LeaderRequest { name: name.clone().into() }, &alice)).await;
        lines.push(format!("Leader {name}: {}", outcome(r)));
        let proclaim = ProclaimRequest { leader: Some(leader.clone()), value: "w".into() };
        let r = election.proclaim(with_token(proclaim, &alice)).await;
        lines.push(format!("Proclaim {name}: {}", outcome(r)));
        let r = election.resign(with_token(ResignRequest { leader: Some(leader) }, &alice)).await;
        lines.push(format!("Resign {name}: {}", outcome(r)));
    }
    lines
}

/// `etcdctl lock` and `etcdctl elect` as alice on a prefix she has no permission on; `lock`
/// on one she has. (stdout and the lock key are compared without the lease in hex.)
fn recipe_etcdctl(endpoint: &str) -> Vec<Out> {
    let a = "--user alice:alicepw";
    let mut outs = vec![
        run(endpoint, &format!("{a} lock locks/l echo held"), ""),
        run(endpoint, &format!("{a} elect locks/e v"), ""),
        run(endpoint, &format!("{a} elect locks/e --listen"), ""),
    ];
    let mut allowed = run(endpoint, &format!("{a} lock pre/l echo held"), "");
    allowed.stdout =
        allowed.stdout.lines().map(|l| l.split('/').take(2).collect::<Vec<_>>().join("/")).collect();
    outs.push(allowed);
    outs
}

/// Lock and Election with auth on: a user without permission on the lock's or election's
/// prefix gets etcd's permission denied error, from etcdctl's `lock` and `elect` (clientv3's recipes)
/// and from the v3lock and v3election services; with permission the calls work. Compared with
/// etcd 3.4 when it is installed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lock_and_election_permissions_match_etcd() {
    let mut c = Cluster::start(1, Opts::default());
    c.wait_leader(START).await;
    let port = c.port(0);
    set_up_users(port).await;
    let ours = recipe_answers(port).await;
    // etcd's v3lock and v3election servers call KV through an in-process client, which turns
    // the PermissionDenied status into a plain error: code Unknown, etcd's message.
    let denied = "Unknown etcdserver: permission denied";
    let gw_denied =
        r#"{"error":"etcdserver: permission denied","message":"etcdserver: permission denied","code":2}"#;
    let expected: Vec<String> = [
        format!("POST /v3/lock/lock locks/: {gw_denied}"),
        format!("POST /v3/election/campaign locks/: {gw_denied}"),
        format!("POST /v3/election/leader locks/: {gw_denied}"),
        format!("Lock locks/l: {denied}"),
        format!("Unlock locks/l: {denied}"),
        format!("Campaign locks/e: {denied}"),
        format!("Leader locks/e: {denied}"),
        format!("Proclaim locks/e: {denied}"),
        format!("Resign locks/e: {denied}"),
        "Lock pre/l: ok".into(),
        "Unlock pre/l: ok".into(),
        "Campaign pre/e: ok".into(),
        "Leader pre/e: ok".into(),
        "Proclaim pre/e: ok".into(),
        "Resign pre/e: ok".into(),
    ]
    .into();
    assert_eq!(ours, expected);
    let etcdctl_ours = have("etcdctl").then(|| recipe_etcdctl(&c.members[0].endpoint()));
    if let Some(outs) = &etcdctl_ours {
        for out in &outs[..2] {
            assert!(out.code != Some(0) && out.stderr.contains("etcdserver: permission denied"), "{out:?}");
        }
        // `elect --listen` watches the prefix: the refused watch ends it (as etcd's).
        assert_eq!(outs[2].stderr, "Error: elect: observer lost\n", "{:?}", outs[2]);
        assert!(outs[3].code == Some(0) && outs[3].stdout.contains("held"), "{:?}", outs[3]);
    }
    c.assert_running();

    let etcd_dir = tempfile::tempdir().expect("temp dir");
    if let Some((_etcd, etcd_port, _)) = start_etcd_elected(etcd_dir.path()).await {
        set_up_users(etcd_port).await;
        let theirs = recipe_answers(etcd_port).await;
        assert_eq!(ours, theirs, "raftkv (left) and etcd 3.4 (right) differ");
        if let Some(outs) = etcdctl_ours {
            let theirs = recipe_etcdctl(&format!("127.0.0.1:{etcd_port}"));
            assert_eq!(outs, theirs, "etcdctl against raftkv (left) and etcd 3.4 (right)");
        }
    }
}
