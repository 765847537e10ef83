//! Interop with the real `etcdctl` (etcd 3.4, Debian's etcd-client). The same command
//! sequence runs against a one-member raftkv and a one-member real `etcd` (Debian's
//! etcd-server) and the outputs are compared after normalising what legitimately differs
//! (member and cluster ids, ports, raft terms and indexes, db size, server version, timings).
//!
//! Every test runs in both modes of the harness (`NAME::plain`, `NAME::secure`): in secure
//! mode raftkv and etcd serve mutual TLS on both ports with auth enabled, and etcdctl runs
//! with `--cacert --cert --key --user root:...`.
//!
//! Without `etcdctl` (or `etcd`) on PATH the tests say so loudly and pass, unless
//! RAFTKV_REQUIRE_ETCD=1 is set (CI should set it), in which case they fail.

mod common;

use std::time::Duration;

use common::{Access, Cluster, Mode, Opts, Out, have, in_both_modes, start_etcd_in, wait_for};
use serde_json::Value;

const START: Duration = Duration::from_secs(20);

/// What differs legitimately between two servers' answers, to be replaced by placeholders.
struct Target {
    what: &'static str,
    access: Access,
    /// The etcdctl endpoint.
    endpoint: String,
    client: String,
    peer: String,
    member_id: u64,
    cluster_id: u64,
}

impl Target {
    async fn new(what: &'static str, access: &Access, client_port: u16, peer_port: u16) -> Target {
        let s = access.status(client_port).await.expect("status");
        let h = s.header.expect("header");
        Target {
            what,
            access: access.clone(),
            endpoint: access.etcdctl_endpoint(client_port),
            client: format!("127.0.0.1:{client_port}"),
            peer: format!("127.0.0.1:{peer_port}"),
            member_id: h.member_id,
            cluster_id: h.cluster_id,
        }
    }

    fn json(&self, v: &mut Value, parent: &str) {
        match v {
            Value::Object(map) => {
                for (k, v) in map.iter_mut() {
                    let id = v.as_u64();
                    let placeholder = match k.as_str() {
                        "member_id" | "ID" | "leader" if id == Some(self.member_id) => Some("<member-id>"),
                        "cluster_id" if id == Some(self.cluster_id) => Some("<cluster-id>"),
                        "raft_term" | "raftTerm" => Some("<term>"),
                        "raftIndex" | "raftAppliedIndex" => Some("<index>"),
                        "dbSize" | "dbSizeInUse" => Some("<size>"),
                        "took" => Some("<took>"),
                        "version" if parent == "Status" => Some("<version>"),
                        _ => None,
                    };
                    match placeholder {
                        Some(p) => *v = Value::String(p.into()),
                        None => self.json(v, k),
                    }
                }
            }
            Value::Array(items) => items.iter_mut().for_each(|i| self.json(i, parent)),
            _ => {}
        }
    }

    fn text(&self, s: &str) -> String {
        // `-w fields` prints "RaftTerm" : N
        if s.starts_with("\"RaftTerm\" : ") {
            return "\"RaftTerm\" : <term>".into();
        }
        s.replace(&format!("{:x}", self.member_id), "<member-id>")
            .replace(&self.member_id.to_string(), "<member-id>")
            .replace(&self.cluster_id.to_string(), "<cluster-id>")
            .replace(&self.client, "<client>")
            .replace(&self.peer, "<peer>")
    }

    fn line(&self, line: &str) -> String {
        let t = line.trim_start();
        if (t.starts_with('{') || t.starts_with('['))
            && let Ok(mut v) = serde_json::from_str::<Value>(t)
        {
            self.json(&mut v, "");
            return self.text(&v.to_string());
        }
        let line = self.text(line);
        // endpoint status: endpoint, id, version, db size, is leader, is learner, term, index,
        // applied index, errors
        let fields: Vec<&str> = line.split(", ").collect();
        if fields.len() == 10 && fields[0].contains("<client>") {
            let mut f: Vec<String> = fields.iter().map(|s| s.to_string()).collect();
            f[2] = "<version>".into();
            f[3] = "<size>".into();
            f[6] = "<term>".into();
            f[7] = "<index>".into();
            f[8] = "<index>".into();
            return f.join(", ");
        }
        // endpoint health: "... took = 1.2ms"
        if let Some(at) = line.find("took = ") {
            return format!("{}took = <took>", &line[..at]);
        }
        line
    }

    fn normalise(&self, out: &Out) -> Out {
        let f = |s: &str| s.lines().map(|l| self.line(l) + "\n").collect::<String>();
        Out { code: out.code, stdout: f(&out.stdout), stderr: f(&out.stderr) }
    }

    fn etcdctl(&self, args: &[&str], stdin: &str) -> Out {
        self.access.etcdctl(&self.endpoint, args, stdin)
    }
}

/// The command sequence: (etcdctl arguments, stdin).
fn script() -> Vec<(Vec<&'static str>, String)> {
    let txn_success = "value(\"foo\") = \"bar2\"\n\nput foo from-txn\nget foo/b\n\nput foo never\n\n";
    let txn_failure =
        "version(\"foo\") = \"100\"\nmod(\"zoo\") > \"0\"\n\ndel foo\n\nget foo\nput zoo z2\n\n";
    let txn_mixed =
        "create(\"zoo\") > \"0\"\nmod(\"foo\") > \"1\"\n\ndel foo/ --prefix\nput t 1\n\nget zoo\n\n";
    let s: Vec<(&str, &str)> = vec![
        ("put foo bar", ""),
        ("put foo/a 1", ""),
        ("put foo/b 2", ""),
        ("put foo/c 3", ""),
        ("put zoo z", ""),
        ("put foo bar2 --prev-kv", ""),
        ("put foo/c 33 -w json", ""),
        ("get foo", ""),
        ("get foo -w json", ""),
        ("get foo --prefix", ""),
        ("get foo --prefix --keys-only", ""),
        ("get foo --prefix --limit 2", ""),
        ("get foo --prefix --limit 2 -w json", ""),
        ("get foo --prefix --sort-by=KEY --order=DESCEND", ""),
        ("get foo --prefix --sort-by=MODIFY --order=ASCEND -w json", ""),
        ("get foo --prefix --sort-by=VALUE --order=DESCEND", ""),
        ("get foo --prefix --sort-by=CREATE --order=DESCEND --limit 2", ""),
        ("get foo --prefix --sort-by=VERSION --order=DESCEND --keys-only", ""),
        ("get foo --prefix --print-value-only", ""),
        ("get foo --rev=2", ""),
        ("get foo --rev=2 -w json", ""),
        ("get foo --prefix --rev=4 -w json", ""),
        ("get foo --from-key --keys-only", ""),
        ("get foo/a foo/c", ""),
        ("get foo --consistency=s", ""),
        ("get missing -w json", ""),
        ("get foo --rev=100", ""),
        ("get foo -w fields", ""),
        ("get foo --hex", ""),
        ("put  x", ""),
        ("del foo/a --prev-kv", ""),
        ("del foo/a", ""),
        ("del foo/b --prev-kv -w json", ""),
        ("txn -i", txn_success),
        ("txn -i", txn_failure),
        ("txn -i -w json", txn_mixed),
        ("txn", txn_success),
        ("get --from-key  -w json", ""),
        ("compaction 5", ""),
        ("get foo --rev=3", ""),
        ("get foo --rev=5 -w json", ""),
        ("compaction 4", ""),
        ("compaction 1000", ""),
        ("compaction 8 --physical", ""),
        ("get foo --prefix -w json", ""),
        ("endpoint status", ""),
        ("endpoint status -w json", ""),
        ("endpoint health", ""),
        ("endpoint health -w json", ""),
        ("member list", ""),
        ("member list -w json", ""),
        ("del --from-key  -w json", ""),
        ("get --from-key  --keys-only", ""),
    ];
    let mut s: Vec<(Vec<&str>, String)> =
        s.into_iter().map(|(a, i)| (a.split(' ').collect(), i.into())).collect();
    // `put KEY` reads the value from stdin: over --max-request-bytes (1.5 MiB), and beyond
    // gRPC's receive limit (max-request-bytes + 512 KiB).
    s.push((vec!["put", "big"], "x".repeat(1_600_000)));
    s.push((vec!["put", "huge"], "x".repeat(3 << 20)));
    s.push((vec!["get", "big"], String::new()));
    s
}

/// The same etcdctl command sequence against raftkv and real etcd gives the same output.
async fn etcdctl_output_matches_real_etcd(mode: Mode) {
    if !have("etcdctl") {
        return;
    }
    // Named like etcd's default member, so that `member list` can be compared.
    let mut c = Cluster::start_named(&["default"], Opts::in_mode(mode));
    c.wait_leader(START).await;
    let raftkv = Target::new("raftkv", &c.access, c.port(0), c.members[0].peer_port).await;

    let etcd_dir = tempfile::tempdir().expect("temp dir");
    let etcd = start_etcd_in(etcd_dir.path(), mode).await;
    let etcd_target = match &etcd {
        Some(e) => Some(Target::new("etcd", &e.access, e.client, e.peer).await),
        None => None,
    };

    let mut mismatches = Vec::new();
    for (args, stdin) in script() {
        let ours = raftkv.normalise(&raftkv.etcdctl(&args, &stdin));
        let Some(theirs_target) = &etcd_target else {
            // No etcd to compare with (already reported loudly): the script still runs, so a
            // hang or a crash of the member is caught, and the outputs are shown.
            eprintln!("etcdctl {} -> {:?}", args.join(" "), ours);
            continue;
        };
        let theirs = theirs_target.normalise(&theirs_target.etcdctl(&args, &stdin));
        if ours != theirs {
            mismatches.push(format!(
                "etcdctl {}\n  {}: {:?}\n  {}: {:?}",
                args.join(" "),
                raftkv.what,
                ours,
                theirs_target.what,
                theirs
            ));
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
in_both_modes!(etcdctl_output_matches_real_etcd);

fn ok(out: &Out) -> &str {
    assert_eq!(out.code, Some(0), "etcdctl failed: {out:?}");
    &out.stdout
}

/// etcdctl against a three-member cluster: writes through one member are read through the
/// others, and the cluster commands list every member.
async fn etcdctl_against_a_three_member_cluster(mode: Mode) {
    if !have("etcdctl") {
        return;
    }
    let mut c = Cluster::start(3, Opts::in_mode(mode));
    let leader = c.wait_leader(START).await;
    let access = c.access.clone();
    let etcdctl = |endpoints: &str, args: &[&str], stdin: &str| access.etcdctl(endpoints, args, stdin);
    let all = c.endpoints();
    let eps: Vec<String> = c.members.iter().map(|m| m.endpoint()).collect();

    assert_eq!(ok(&etcdctl(&eps[0], &["put", "k1", "v1"], "")), "OK\n");
    assert_eq!(ok(&etcdctl(&eps[2], &["get", "k1"], "")), "k1\nv1\n");
    assert_eq!(ok(&etcdctl(&all, &["put", "k2", "v2"], "")), "OK\n");
    assert_eq!(ok(&etcdctl(&eps[1], &["get", "k", "--prefix", "--keys-only"], "")), "k1\n\nk2\n\n");
    let txn = "value(\"k1\") = \"v1\"\n\nput k1 v1-txn\n\n\n";
    assert_eq!(ok(&etcdctl(&eps[1], &["txn"], txn)), "SUCCESS\n\nOK\n");
    assert_eq!(ok(&etcdctl(&eps[2], &["get", "k1", "--print-value-only"], "")), "v1-txn\n");

    // member list: all three, with their names, peer and published client URLs (each member
    // publishes its client URLs through the log once there is a leader).
    let port = c.port(1);
    wait_for("every member to publish its client URLs", START, || async {
        let req = access.request(raftkv_api::etcdserverpb::MemberListRequest::default());
        let list = access.cluster_client(port).member_list(req).await.ok()?.into_inner();
        list.members.iter().all(|m| !m.client_ur_ls.is_empty()).then_some(())
    })
    .await;
    let list = ok(&etcdctl(&eps[1], &["member", "list"], "")).to_string();
    let mut lines: Vec<&str> = list.lines().collect();
    lines.sort_by_key(|l| l.split(", ").nth(2).map(str::to_string));
    assert_eq!(lines.len(), 3, "{list}");
    for (line, m) in lines.iter().zip(&c.members) {
        let f: Vec<&str> = line.split(", ").collect();
        assert_eq!(f.len(), 6, "{line}");
        assert_eq!(&f[1..], ["started", m.name.as_str(), &m.peer_url(), &m.client_url(), "false"], "{line}");
    }

    // endpoint status on every endpoint: one leader, one term.
    let status = ok(&etcdctl(&all, &["endpoint", "status", "-w", "json"], "")).to_string();
    let v: Value = serde_json::from_str(&status).expect("json");
    let items = v.as_array().expect("array");
    assert_eq!(items.len(), 3, "{status}");
    let leaders: Vec<u64> = items.iter().map(|i| i["Status"]["leader"].as_u64().expect("leader")).collect();
    assert!(leaders.iter().all(|l| *l == leaders[0]), "{status}");
    let leader_id = access.status(c.port(leader)).await.expect("status").header.expect("h").member_id;
    assert_eq!(leaders[0], leader_id);
    let simple = ok(&etcdctl(&all, &["endpoint", "status"], "")).to_string();
    let is_leader: Vec<&str> = simple.lines().filter_map(|l| l.split(", ").nth(4)).collect();
    assert_eq!(is_leader.iter().filter(|s| **s == "true").count(), 1, "{simple}");
    assert_eq!(is_leader.len(), 3, "{simple}");

    // endpoint health on every endpoint, and through the member list (--cluster).
    // (etcdctl 3.4 prints the results of --cluster on stderr.)
    for args in [&["endpoint", "health"][..], &["endpoint", "health", "--cluster"]] {
        let out = etcdctl(if args.len() == 2 { &all } else { &eps[0] }, args, "");
        ok(&out);
        let text = format!("{}{}", out.stdout, out.stderr);
        assert_eq!(text.lines().filter(|l| l.contains(" is healthy: ")).count(), 3, "{args:?}: {text}");
    }

    // endpoint hashkv: members at the same revision agree, at the current revision (once
    // every member applied everything) and at a past one; a future revision is refused.
    let hashes = |rev: &str| {
        let out = ok(&etcdctl(&all, &["endpoint", "hashkv", "--rev", rev, "-w", "json"], "")).to_string();
        let v: Value = serde_json::from_str(&out).expect("json");
        let items = v.as_array().expect("array").clone();
        items.iter().map(|i| i["HashKV"]["hash"].as_u64().expect("hash")).collect::<Vec<u64>>()
    };
    let mut now = hashes("0");
    for _ in 0..50 {
        if now.iter().all(|h| *h == now[0]) {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        now = hashes("0");
    }
    assert!(now.len() == 3 && now.iter().all(|h| *h == now[0]), "{now:?}");
    let past = hashes("2");
    assert!(past.iter().all(|h| *h == past[0]) && past[0] != now[0], "{past:?} vs {now:?}");
    let future = etcdctl(&eps[0], &["endpoint", "hashkv", "--rev", "100000"], "");
    assert!(future.stderr.contains("required revision is a future revision"), "{future:?}");

    // A killed member shows as unhealthy; the others stay healthy.
    let down = (leader + 1) % 3;
    c.kill9(down);
    let out = etcdctl(&all, &["endpoint", "health"], "");
    assert_ne!(out.code, Some(0), "{out:?}");
    let text = format!("{}{}", out.stdout, out.stderr);
    assert!(text.contains(&format!("{} is unhealthy", c.members[down].endpoint())), "{text}");
    assert_eq!(text.lines().filter(|l| l.contains(" is healthy: ")).count(), 2, "{text}");
}
// Secure mode: etcdctl authenticates once and calls every endpoint with that token (`endpoint
// hashkv`, and puts through the balancer): every member accepts it, as etcd's.
in_both_modes!(etcdctl_against_a_three_member_cluster);

/// `etcdctl endpoint status` with scheme-prefixed endpoints (`http://127.0.0.1:P`), which is
/// also what `endpoint status --cluster` uses (the members' client URLs). etcdctl 3.4 then
/// sends `:authority: http://127.0.0.1:P`, which etcd accepts (in secure mode the
/// endpoints are https URLs in both cases).
async fn etcdctl_endpoint_status_with_url_endpoints(mode: Mode) {
    if !have("etcdctl") {
        return;
    }
    let mut c = Cluster::start(3, Opts::in_mode(mode));
    c.wait_leader(START).await;
    let urls = c.members.iter().map(|m| m.client_url()).collect::<Vec<_>>().join(",");
    let out = c.access.etcdctl(&urls, &["endpoint", "status"], "");
    assert_eq!(ok(&out).lines().count(), 3, "{out:?}");
    let out = c.access.etcdctl(&c.members[0].endpoint(), &["endpoint", "status", "--cluster"], "");
    assert_eq!(ok(&out).lines().count(), 3, "{out:?}");
    assert!(out.stderr.is_empty(), "{out:?}");
}
in_both_modes!(etcdctl_endpoint_status_with_url_endpoints);

/// The lease commands: lease IDs differ between servers, so every ID a `lease grant`
/// printed is replaced (hex and decimal) by `<lease-N>`, and `$N` in later arguments is
/// that target's N-th ID; remaining TTLs vary with timing and are replaced too.
fn lease_script() -> Vec<&'static str> {
    vec![
        "lease grant 100",
        "put --lease=$1 foo bar",
        "get foo -w json",
        "lease timetolive $1",
        "lease timetolive $1 --keys",
        "lease list",
        "lease keep-alive --once $1",
        "put --lease=1234 x y",
        "lease revoke 1234",
        "lease timetolive 1234",
        "lease keep-alive --once 1234",
        "lease grant 9000000001",
        "put foo bar2",
        "lease timetolive $1 --keys",
        "put --lease=$1 foo bar3",
        "put --lease=$1 foo2 bar3",
        "put foo2 bar4 --ignore-lease",
        "get foo2 -w json",
        "lease revoke $1",
        "get foo --prefix",
        "lease timetolive $1",
        "lease grant 1",
        "lease timetolive $2",
        "lease list",
    ]
}

fn run_lease_script(target: &Target) -> Vec<(String, Out)> {
    let mut ids: Vec<i64> = Vec::new();
    let mut outs = Vec::new();
    for line in lease_script() {
        let args: Vec<String> = line
            .split(' ')
            .map(|a| {
                let mut a = a.to_string();
                for (n, id) in ids.iter().enumerate() {
                    a = a.replace(&format!("${}", n + 1), &format!("{id:x}"));
                }
                a
            })
            .collect();
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let out = target.etcdctl(&args, "");
        if line.starts_with("lease grant ")
            && let Some(rest) = out.stdout.strip_prefix("lease ")
            && let Some(hex) = rest.split(' ').next()
            && let Ok(id) = i64::from_str_radix(hex, 16)
        {
            ids.push(id);
        }
        let mut out = target.normalise(&out);
        for (n, id) in ids.iter().enumerate() {
            for s in [&mut out.stdout, &mut out.stderr] {
                // etcdctl prints ids zero-padded to 16 hex digits (`%016x`).
                *s = s.replace(&format!("{id:016x}"), &format!("<lease-{}>", n + 1));
                *s = s.replace(&format!("{id:x}"), &format!("<lease-{}>", n + 1));
                *s = s.replace(&id.to_string(), &format!("<lease-{}>", n + 1));
            }
        }
        for s in [&mut out.stdout, &mut out.stderr] {
            if let Some(at) = s.find("remaining(")
                && let Some(end) = s[at..].find("s)")
            {
                s.replace_range(at..at + end + 2, "remaining(<ttl>)");
            }
        }
        outs.push((line.to_string(), out));
    }
    outs
}

/// The same lease commands against raftkv and real etcd give the same output.
async fn etcdctl_lease_commands_match_real_etcd(mode: Mode) {
    if !have("etcdctl") {
        return;
    }
    // etcd's timing defaults: the minimum TTL (`lease grant 1`) follows from them.
    let mut c = Cluster::start_named(&["default"], Opts { mode, ..Opts::etcd_defaults() });
    c.wait_leader(START).await;
    let raftkv = Target::new("raftkv", &c.access, c.port(0), c.members[0].peer_port).await;
    let ours = run_lease_script(&raftkv);
    // The script really exercises leases (so the comparison below is not of two errors).
    assert_eq!(ours[0].1.stdout, "lease <lease-1> granted with TTL(100s)\n", "{ours:?}");
    assert!(ours[2].1.stdout.contains("\"lease\":<lease-1>"), "{ours:?}");
    assert!(ours[4].1.stdout.contains("attached keys([foo])"), "{ours:?}");
    assert_eq!(ours[21].1.stdout, "lease <lease-2> granted with TTL(2s)\n", "{ours:?}");
    let etcd_dir = tempfile::tempdir().expect("temp dir");
    let Some(real) = start_etcd_in(etcd_dir.path(), mode).await else {
        for (line, out) in &ours {
            eprintln!("etcdctl {line} -> {out:?}");
        }
        return;
    };
    let etcd = Target::new("etcd", &real.access, real.client, real.peer).await;
    let theirs = run_lease_script(&etcd);
    let mismatches: Vec<String> = ours
        .iter()
        .zip(&theirs)
        .filter(|(a, b)| a.1 != b.1)
        .map(|(a, b)| format!("etcdctl {}\n  raftkv: {:?}\n  etcd:   {:?}", a.0, a.1, b.1))
        .collect();
    c.assert_running();
    assert!(
        mismatches.is_empty(),
        "{} lease commands differ from etcd 3.4:\n{}",
        mismatches.len(),
        mismatches.join("\n")
    );
}
in_both_modes!(etcdctl_lease_commands_match_real_etcd);
