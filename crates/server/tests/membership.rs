//! Membership changes through `etcdctl` (etcd 3.4): learners, promotion, update, removal and
//! their errors compared with a real etcd side by side; replacing a member whose disk is lost
//! (remove, add, join with `--initial-cluster-state existing`, catch up by snapshot) while the
//! cluster serves; leadership moved by `etcdctl move-leader` and handed over on SIGTERM.
//!
//! Without `etcdctl` (or `etcd`) on PATH the tests say so and pass, unless
//! RAFTKV_REQUIRE_ETCD=1 is set.

mod common;

use std::fs::File;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{Cluster, Opts, Proc, die_with_parent, free_ports, have, wait_for};
use raftkv_api::etcdserverpb::{
    MemberAddRequest, MemberListRequest, MemberPromoteRequest, MemberRemoveRequest, MemberUpdateRequest,
};

const START: Duration = Duration::from_secs(20);

/// `etcdctl --endpoints=<endpoints> <args>`: (exit code, stdout, stderr without log lines).
fn etcdctl(endpoints: &str, args: &[&str]) -> (Option<i32>, String, String) {
    let out = Command::new("etcdctl")
        .env("ETCDCTL_API", "3")
        .arg(format!("--endpoints={endpoints}"))
        .args(["--dial-timeout=3s", "--command-timeout=10s"])
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("run etcdctl");
    let stderr = String::from_utf8_lossy(&out.stderr)
        .lines()
        .filter(|l| !l.starts_with("{\"level\":"))
        .map(|l| format!("{l}\n"))
        .collect();
    (out.status.code(), String::from_utf8_lossy(&out.stdout).into_owned(), stderr)
}

/// The id etcdctl printed in "Member <id> added to cluster <id>".
fn added_id(stdout: &str) -> Option<String> {
    stdout.split_whitespace().skip_while(|w| *w != "Member").nth(1).map(str::to_string)
}

/// Runs the membership script against the one-member cluster at `client` (etcdctl endpoint),
/// whose member and cluster ids are given; `start` starts the member the script adds (its
/// name m2, the `--initial-cluster` printed by `member add`, its peer URL and client port)
/// with `--initial-cluster-state existing`. Returns each command's output, normalised: ids,
/// the cluster id, raft terms and the first member's URLs replaced by tags, tables and
/// lists ordered by the tags (etcd sorts members by id), JSON members by name.
fn run_script(
    client: &str,
    own_peer: &str,
    me: u64,
    cluster: u64,
    spare: &[u16],
    start: &dyn Fn(&str, &str, u16) -> Proc,
) -> Vec<String> {
    let (x, y) = (format!("http://127.0.0.1:{}", spare[0]), format!("http://127.0.0.1:{}", spare[1]));
    let learner_client = spare[2];
    let both = format!("{client},127.0.0.1:{learner_client}");
    let me_hex = format!("{me:x}");
    let mut outputs = Vec::new();
    let mut new_id = String::from("none");
    let mut initial_cluster = String::new();
    let mut learner: Option<Proc> = None;
    let mut learner_started = Instant::now();
    let s = |v: &[&str]| v.iter().map(|a| a.to_string()).collect::<Vec<String>>();
    // (endpoints: "one" or "both", command); START and PROMOTE-IN-SYNC are the script's own.
    let steps: Vec<(&str, Vec<String>)> = vec![
        ("one", s(&["member", "add", "m2", "--learner", &format!("--peer-urls={x}")])),
        ("one", s(&["member", "list"])),
        ("one", s(&["member", "list", "-w", "table"])),
        ("one", s(&["member", "list", "-w", "json"])),
        ("one", s(&["move-leader", "<new>"])),
        ("one", s(&["member", "promote", "<new>"])),
        ("one", s(&["member", "update", &me_hex, &format!("--peer-urls={own_peer}")])),
        // Bad input while the only voter is started (etcd's check wants every voter connected
        // for 5 s before an addition: the new voter would not be yet).
        ("one", s(&["member", "add", "m3", &format!("--peer-urls={x}")])),
        ("one", s(&["member", "add", "m3", "--learner", &format!("--peer-urls={x}")])),
        ("one", s(&["member", "add", "m4", &format!("--peer-urls={own_peer}")])),
        ("one", s(&["member", "add", "m4", "--learner", &format!("--peer-urls={own_peer}")])),
        ("one", s(&["member", "remove", "1234"])),
        ("one", s(&["member", "promote", &me_hex])),
        ("one", s(&["member", "promote", "1234"])),
        ("one", s(&["member", "update", "1234", &format!("--peer-urls={y}")])),
        ("one", s(&["member", "update", &me_hex, &format!("--peer-urls={x}")])),
        ("one", s(&["move-leader", "1234"])),
        ("one", s(&["move-leader", &me_hex])),
        ("one", s(&["START"])),
        ("one", s(&["PROMOTE-IN-SYNC", "<new>"])),
        ("one", s(&["member", "list", "-w", "table"])),
        ("one", s(&["member", "list", "-w", "json"])),
        ("one", s(&["member", "update", "<new>", &format!("--peer-urls={x}")])),
        ("one", s(&["move-leader", "<new>"])),
        ("one", s(&["move-leader", &me_hex])),
        ("both", s(&["move-leader", &me_hex])),
        ("one", s(&["member", "list"])),
        ("one", s(&["member", "remove", "<new>"])),
        ("one", s(&["member", "list"])),
        ("one", s(&["member", "list", "-w", "json"])),
    ];
    let mut added_at = Instant::now();
    for (eps, step) in steps {
        let endpoints = if eps == "both" { both.as_str() } else { client };
        let args: Vec<String> =
            step.iter().map(|a| if a == "<new>" { new_id.clone() } else { a.clone() }).collect();
        if args[0] == "START" {
            learner = Some(start(&initial_cluster, &x, learner_client));
            learner_started = Instant::now();
            continue;
        }
        let (code, stdout, stderr) = if args[0] == "PROMOTE-IN-SYNC" {
            // Right after it starts the learner is catching up: etcd (and raftkv) refuse to
            // promote it until it is in sync (and, etcd, until it has published its name).
            let deadline = Instant::now() + START;
            loop {
                let out = etcdctl(endpoints, &["member", "promote", &args[1]]);
                let waiting = out.2.contains("in sync with leader") || out.2.contains("not enough started");
                if out.0 == Some(0) || !waiting || Instant::now() > deadline {
                    break out;
                }
                std::thread::sleep(Duration::from_millis(100));
            }
        } else {
            if args[..2] == ["member", "add"] {
                // etcd hashes a new member's peer URLs with the time in seconds into its id:
                // an addition on the same URLs within the same second would answer `member
                // ID already exist` instead of `Peer URLs already exists`.
                std::thread::sleep(Duration::from_millis(1100).saturating_sub(added_at.elapsed()));
            }
            if args[..2] == ["member", "remove"] && args[2] == new_id {
                // etcd removes a running voter only once every voter left has been connected
                // for 5 s (its `mayRemoveMember`).
                std::thread::sleep(Duration::from_secs(6).saturating_sub(learner_started.elapsed()));
            }
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            etcdctl(endpoints, &args)
        };
        if args[..2] == ["member", "add"] && code == Some(0) {
            added_at = Instant::now();
            new_id = added_id(&stdout).unwrap_or_default();
            initial_cluster = stdout
                .lines()
                .find_map(|l| l.strip_prefix("ETCD_INITIAL_CLUSTER=\""))
                .map(|l| l.trim_end_matches('"').to_string())
                .unwrap_or_default();
        }
        let new = u64::from_str_radix(&new_id, 16).unwrap_or(u64::MAX);
        let tags = [(me, "<me>"), (cluster, "<cluster>"), (new, "<new>")];
        let json = args.iter().any(|a| a == "json");
        let mut text = if json { normalise_json(&stdout, &tags) } else { stdout.clone() };
        text = format!("etcdctl {} -> {code:?}\n{text}{stderr}", step.join(" "));
        let mut replace =
            vec![(client.to_string(), "<client>".to_string()), (own_peer.to_string(), "<peer>".to_string())];
        if !json {
            for (id, tag) in tags {
                replace.push((format!("{id:x}"), tag.to_string()));
                replace.push((id.to_string(), tag.to_string()));
            }
        }
        for (from, to) in replace {
            text = text.replace(&from, &to);
        }
        // etcdctl pads ids to 16 columns (`%16x`) and sizes table columns to the longest
        // cell: both depend on the ids' lengths.
        let mut collapsed = String::new();
        for line in text.lines() {
            let border = line.starts_with('+');
            for ch in line.chars() {
                if (ch == ' ' || (border && ch == '-')) && collapsed.ends_with(ch) {
                    continue;
                }
                collapsed.push(ch);
            }
            collapsed.push('\n');
        }
        // Members in the order of their tags, not of their ids (also in the printed
        // ETCD_INITIAL_CLUSTER).
        let collapsed: String = collapsed
            .lines()
            .map(|l| match l.strip_prefix("ETCD_INITIAL_CLUSTER=\"") {
                Some(list) => {
                    let mut entries: Vec<&str> = list.trim_end_matches('"').split(',').collect();
                    entries.sort_unstable();
                    format!("ETCD_INITIAL_CLUSTER=\"{}\"\n", entries.join(","))
                }
                None => format!("{l}\n"),
            })
            .collect();
        let mut lines: Vec<&str> = collapsed.lines().collect();
        let rows: Vec<usize> =
            (0..lines.len()).filter(|&i| lines[i].starts_with("| <") || lines[i].starts_with('<')).collect();
        let mut sorted: Vec<&str> = rows.iter().map(|&i| lines[i]).collect();
        sorted.sort_unstable();
        for (i, row) in rows.into_iter().zip(sorted) {
            lines[i] = row;
        }
        outputs.push(lines.join("\n"));
    }
    drop(learner);
    outputs
}

/// etcdctl's JSON output with ids replaced by their tags, raft terms by 0 and members in
/// the order of their names (JSON itself if it does not parse).
fn normalise_json(text: &str, tags: &[(u64, &str)]) -> String {
    use serde_json::Value;
    fn walk(v: &mut Value, tags: &[(u64, &str)]) {
        match v {
            Value::Object(m) => {
                for (k, x) in m.iter_mut() {
                    if k == "raft_term" {
                        *x = Value::from(0);
                    } else if let Some(tag) =
                        x.as_u64().and_then(|n| tags.iter().find(|(id, _)| *id == n)).map(|(_, t)| *t)
                    {
                        *x = Value::from(tag);
                    }
                    walk(x, tags);
                }
                if let Some(Value::Array(members)) = m.get_mut("members") {
                    members.sort_by_key(|m| m.get("name").map(Value::to_string));
                }
            }
            Value::Array(a) => a.iter_mut().for_each(|x| walk(x, tags)),
            _ => {}
        }
    }
    match serde_json::from_str::<Value>(text.trim()) {
        Ok(mut v) => {
            walk(&mut v, tags);
            format!("{v}\n")
        }
        Err(_) => text.to_string(),
    }
}

fn start_etcd(dir: &std::path::Path) -> Option<(Proc, u16, u16)> {
    if !have("etcd") {
        return None;
    }
    let ports = free_ports(2);
    let (client, peer) = (format!("http://127.0.0.1:{}", ports[0]), format!("http://127.0.0.1:{}", ports[1]));
    let log_path = dir.join("etcd.log");
    let log = File::create(&log_path).expect("etcd log");
    let mut cmd = Command::new("etcd");
    cmd.arg("--data-dir")
        .arg(dir.join("etcd-data"))
        .args(["--listen-client-urls", &client, "--advertise-client-urls", &client])
        .args(["--listen-peer-urls", &peer, "--initial-advertise-peer-urls", &peer])
        .args(["--initial-cluster", &format!("default={peer}")])
        .stdin(Stdio::null())
        .stdout(log.try_clone().expect("dup"))
        .stderr(log);
    if cfg!(target_arch = "aarch64") {
        cmd.env("ETCD_UNSUPPORTED_ARCH", "arm64");
    }
    let child = die_with_parent(&mut cmd).spawn().expect("spawn etcd");
    Some((Proc::new("etcd", child, Some(log_path)), ports[0], ports[1]))
}

async fn ids(client_port: u16) -> (u64, u64) {
    let h = common::status(client_port).await.expect("status").header.expect("header");
    (h.member_id, h.cluster_id)
}

/// `member add --learner`, `list` (plain, `-w table`, `-w json`), `promote` (of a learner not
/// started, then once it has caught up; of a voter), `update`, `remove`, `move-leader` (to a
/// learner, to itself, to the promoted member and back, through a member that does not lead)
/// and the bad-input errors print as etcd 3.4's do: the same script against both, every
/// output compared as text (exit code, stdout and stderr) once ids, terms and the first
/// member's URLs are normalised.
///
/// The script does not `member update` a learner: etcd 3.4 replaces the member's Raft
/// attributes with the request's, learner flag (false) included (v3rpc `MemberUpdate`,
/// `UpdateRaftAttributes`), so its member list shows the learner as a voter that Raft still
/// treats as a learner (then `promote` answers "can only promote a learner member" and
/// `move-leader` to it times out). raftkv keeps the flag.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn member_commands_match_real_etcd() {
    if !have("etcdctl") {
        return;
    }
    let mut c = Cluster::start_named(&["default"], Opts::default());
    c.wait_leader(START).await;
    wait_published(c.port(0), 1).await;
    let spare = free_ports(3);
    let (me, cluster) = ids(c.port(0)).await;
    let start_raftkv =
        |initial: &str, peer: &str, client_port: u16| -> Proc { join(&c, "m2", initial, peer, client_port) };
    let ours =
        run_script(&c.members[0].endpoint(), &c.members[0].peer_url(), me, cluster, &spare, &start_raftkv);
    c.assert_running();

    let etcd_dir = tempfile::tempdir().expect("temp dir");
    let Some((_etcd, client, peer)) = start_etcd(etcd_dir.path()) else {
        eprintln!("no etcd to compare with; raftkv's answers:\n{}", ours.join("\n"));
        return;
    };
    wait_for("etcd to elect itself", START, || async move {
        common::status(client).await.ok().filter(|s| s.leader != 0)
    })
    .await;
    wait_published(client, 1).await;
    let (etcd_me, etcd_cluster) = ids(client).await;
    let etcd_path = etcd_dir.path().to_path_buf();
    let start_etcd_member = |initial: &str, peer: &str, client_port: u16| -> Proc {
        let client = format!("http://127.0.0.1:{client_port}");
        let log_path = etcd_path.join("m2.log");
        let log = File::create(&log_path).expect("m2 log");
        let mut cmd = Command::new("etcd");
        cmd.args(["--name", "m2", "--data-dir"])
            .arg(etcd_path.join("m2"))
            .args(["--listen-client-urls", &client, "--advertise-client-urls", &client])
            .args(["--listen-peer-urls", peer, "--initial-advertise-peer-urls", peer])
            .args(["--initial-cluster", initial, "--initial-cluster-state", "existing"])
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("dup"))
            .stderr(log);
        if cfg!(target_arch = "aarch64") {
            cmd.env("ETCD_UNSUPPORTED_ARCH", "arm64");
        }
        Proc::new("etcd m2", die_with_parent(&mut cmd).spawn().expect("spawn etcd m2"), Some(log_path))
    };
    let theirs = run_script(
        &format!("127.0.0.1:{client}"),
        &format!("http://127.0.0.1:{peer}"),
        etcd_me,
        etcd_cluster,
        &spare,
        &start_etcd_member,
    );
    let mismatches: Vec<String> = ours
        .iter()
        .zip(&theirs)
        .filter(|(a, b)| a != b)
        .map(|(a, b)| format!("raftkv: {a}\netcd:   {b}"))
        .collect();
    eprintln!("the script's outputs, normalised:\n{}", ours.join("\n"));
    assert_eq!(ours.len(), theirs.len());
    assert!(mismatches.is_empty(), "answers differ from etcd 3.4:\n{}", mismatches.join("\n"));
}

/// The runbook for a member whose disk is lost: remove it, add it back, start it with an
/// empty data dir and `--initial-cluster-state existing`. It gets a new id (learned from its
/// peers' member list), catches up (by snapshot: the log was compacted meanwhile) and serves;
/// the cluster serves throughout. Then leadership
/// moves with `etcdctl move-leader`, and a leader stopped with SIGTERM hands over first.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replace_a_member_whose_disk_is_lost() {
    if !have("etcdctl") {
        return;
    }
    let opts = Opts { snapshot_count: Some(50), ..Opts::default() };
    let mut c = Cluster::start(3, opts);
    let leader = c.wait_leader(START).await;
    let lost = (leader + 1) % 3;
    let alive: Vec<usize> = (0..3).filter(|i| *i != lost).collect();
    for i in 0..20 {
        c.put_retry(leader, &format!("before-{i}"), "v", START).await;
    }
    let lost_id = ids(c.port(lost)).await.0;
    c.kill9(lost);
    std::fs::remove_dir_all(&c.members[lost].data_dir).expect("wipe the lost member's disk");
    let endpoints = alive.iter().map(|i| c.members[*i].endpoint()).collect::<Vec<_>>().join(",");

    let (code, out, err) = etcdctl(&endpoints, &["member", "remove", &format!("{lost_id:x}")]);
    assert_eq!(code, Some(0), "{out}{err}");
    // The log moves on (and is compacted) while the member is gone.
    for i in 0..200 {
        c.put_retry(alive[i % 2], &format!("during-{i}"), "v", START).await;
    }
    let peer = c.members[lost].peer_url();
    let (code, out, err) =
        etcdctl(&endpoints, &["member", "add", &c.members[lost].name, &format!("--peer-urls={peer}")]);
    assert_eq!(code, Some(0), "{out}{err}");
    assert!(out.contains("ETCD_INITIAL_CLUSTER_STATE=\"existing\""), "{out}");
    let mut args = c.args(lost);
    let state = args.iter().position(|a| a == "--initial-cluster-state").expect("flag") + 1;
    args[state] = "existing".into();
    c.members[lost].child = Some(c.spawn_raw(lost, &args));
    let port = c.port(lost);
    wait_for("the new member to catch up", START, || async move {
        common::get(port, "during-199", true).await.ok().flatten()
    })
    .await;
    assert_eq!(common::get(port, "before-0", true).await.expect("get"), Some("v".into()));
    c.put_retry(lost, "after", "v", START).await;
    let (code, list, _) = etcdctl(&c.endpoints(), &["member", "list"]);
    assert_eq!(code, Some(0));
    assert_eq!(list.lines().filter(|l| l.contains(", started, ")).count(), 3, "{list}");
    let log = common::read_log(&c.members[lost].log_path);
    assert!(log.contains("joining a running cluster"), "{log}");
    assert!(log.contains("snapshot installed"), "caught up by snapshot:\n{log}");

    // A fresh id, not the removed incarnation's (its stale messages and refusals must not
    // reach the new member), learned by the new member from its peers.
    let new_id = ids(port).await.0;
    assert_ne!(new_id, lost_id, "the re-added member got its old id back");

    // move-leader to the new member.
    let (code, out, err) = etcdctl(&c.endpoints(), &["move-leader", &format!("{new_id:x}")]);
    assert_eq!(code, Some(0), "{out}{err}");
    assert!(out.contains("Leadership transferred"), "{out}");
    assert_eq!(common::status(port).await.expect("status").leader, new_id);

    // SIGTERM of the leader: another member leads well within one election timeout.
    let stopped = Instant::now();
    c.stop(lost, Duration::from_secs(10));
    let others: Vec<u16> = alive.iter().map(|i| c.port(*i)).collect();
    let new_leader = wait_for("a new leader after SIGTERM", START, || {
        let others = others.clone();
        async move {
            for p in others {
                if let Ok(s) = common::status(p).await
                    && s.leader != 0
                    && s.leader != new_id
                {
                    return Some(s.leader);
                }
            }
            None
        }
    })
    .await;
    assert_ne!(new_leader, new_id);
    let log = common::read_log(&c.members[lost].log_path);
    assert!(log.contains("leadership handed over before stopping"), "{log}");
    assert!(stopped.elapsed() < Duration::from_secs(5));
}

/// Starts member `name` in `c`'s directory to join `c` (`--initial-cluster-state existing`)
/// with the `--initial-cluster` that `member add` printed, on `peer` and `client_port`.
fn join(c: &Cluster, name: &str, initial: &str, peer: &str, client_port: u16) -> Proc {
    let client = format!("http://127.0.0.1:{client_port}");
    let log_path = c.dir().join(format!("{name}.log"));
    let log = File::create(&log_path).expect("member log");
    let mut cmd = Command::new(common::EXE);
    cmd.args(["server", "--name", name, "--data-dir"])
        .arg(c.dir().join(name))
        .args(["--listen-client-urls", &client, "--advertise-client-urls", &client])
        .args(["--listen-peer-urls", peer, "--initial-advertise-peer-urls", peer])
        .args(["--initial-cluster", initial, "--initial-cluster-token", &c.token])
        .args(["--initial-cluster-state", "existing"])
        .args(["--heartbeat-interval", &c.opts.heartbeat_ms.to_string()])
        .args(["--election-timeout", &c.opts.election_ms.to_string()])
        .stdin(Stdio::null())
        .stdout(log.try_clone().expect("dup"))
        .stderr(log)
        .env("NO_COLOR", "1");
    Proc::new(name, die_with_parent(&mut cmd).spawn().expect("spawn member"), Some(log_path))
}

/// `etcdctl member add NAME --peer-urls=PEER` at `endpoint`, retried while the cluster
/// refuses it as not enough members have started yet: (id, the `ETCD_*` settings printed).
async fn add_voter(endpoint: &str, name: &str, peer: &str) -> (String, Vec<(String, String)>) {
    let deadline = Instant::now() + START;
    loop {
        let (code, out, err) = etcdctl(endpoint, &["member", "add", name, &format!("--peer-urls={peer}")]);
        if code == Some(0) {
            let env: Vec<(String, String)> = out
                .lines()
                .filter_map(|l| l.split_once('='))
                .filter(|(k, _)| k.starts_with("ETCD_"))
                .map(|(k, v)| (k.to_string(), v.trim_matches('"').to_string()))
                .collect();
            assert_eq!(env.len(), 4, "{out}");
            return (added_id(&out).expect("added id"), env);
        }
        assert!(err.contains("not enough started members") && Instant::now() < deadline, "{out}{err}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Waits until the member serving `port` is a voter with something applied.
async fn wait_voter(port: u16, what: &str) {
    wait_for(what, START, || async move {
        common::status(port).await.ok().filter(|s| !s.is_learner && s.raft_applied_index > 0)
    })
    .await;
}

/// etcd's runbook for growing a one-member cluster: `member add` a voter, then start it with
/// the printed settings; again for a third, started with them as its `ETCD_*` environment.
/// The second voter joins as a learner that the
/// leader promotes once it has caught up, so the cluster keeps serving between the two steps
/// (etcd 3.4 has no quorum then), and a member added on a mistyped URL, which never starts,
/// costs nothing: writes go on, etcd's strict checks count it as an unstarted voter, and it is
/// removed as etcd removes it. The third is added as soon as the cluster accepts it (the
/// second may not be promoted yet: it is then a learner too). At the end all three are
/// voters: with two of them stopped, the first alone commits nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn voters_added_to_a_one_member_cluster_join_as_etcd_documents() {
    if !have("etcdctl") {
        return;
    }
    let mut c = Cluster::start_named(&["default"], Opts::default());
    c.wait_leader(START).await;
    wait_published(c.port(0), 1).await;
    let port = c.port(0);
    let endpoint = c.members[0].endpoint();
    let spare = free_ports(5);
    let url = |i: usize| format!("http://127.0.0.1:{}", spare[i]);

    // A voter on a URL nothing listens on: added at once, listed as an unstarted voter.
    let (code, out, err) = etcdctl(&endpoint, &["member", "add", "typo", &format!("--peer-urls={}", url(0))]);
    assert_eq!(code, Some(0), "{out}{err}");
    let typo_id = added_id(&out).expect("added id");
    let (_, list, _) = etcdctl(&endpoint, &["member", "list"]);
    assert!(list.contains(&format!("{typo_id}, unstarted, , {}, , false", url(0))), "{list}");
    // Writes go on, longer than an election timeout.
    for i in 0..20 {
        c.put_retry(0, &format!("typo-{i}"), "v", Duration::from_secs(2)).await;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // etcd's strict checks (as etcd 3.4 answers with an unstarted second voter).
    let refused = |args: &[&str]| {
        let (code, _, err) = etcdctl(&endpoint, args);
        assert_eq!(code, Some(1), "{args:?} accepted");
        err
    };
    assert_eq!(
        refused(&["member", "promote", &typo_id]),
        "Error: etcdserver: can only promote a learner member\n"
    );
    let another = format!("--peer-urls={}", url(1));
    assert_eq!(
        refused(&["member", "add", "another", &another]),
        "Error: etcdserver: re-configuration failed due to not enough started members\n"
    );
    assert_eq!(
        refused(&["member", "add", "another", &another, "--learner"]),
        "Error: etcdserver: unhealthy cluster\n"
    );
    let (code, out, err) = etcdctl(&endpoint, &["member", "remove", &typo_id]);
    assert_eq!(code, Some(0), "{out}{err}");

    // The second, started only after `member add` answered.
    let (m2_id, env) = add_voter(&endpoint, "m2", &url(1)).await;
    c.put_retry(0, "between", "add and start", Duration::from_secs(2)).await;
    let initial =
        env.iter().find(|(k, _)| k == "ETCD_INITIAL_CLUSTER").map(|(_, v)| v.clone()).expect("printed");
    let m2 = join(&c, "m2", &initial, &url(1), spare[2]);
    // The third as soon as the cluster takes it, started at once with the printed settings
    // as its environment (etcd reads every flag from ETCD_*) and only the flags they leave
    // out.
    let (m3_id, env) = add_voter(&endpoint, "m3", &url(3)).await;
    let client = format!("http://127.0.0.1:{}", spare[4]);
    let log_path = c.dir().join("m3.log");
    let log = File::create(&log_path).expect("member log");
    let mut cmd = Command::new(common::EXE);
    cmd.args(["server", "--data-dir"])
        .arg(c.dir().join("m3"))
        .args(["--listen-client-urls", &client, "--advertise-client-urls", &client])
        .args(["--listen-peer-urls", &url(3), "--initial-cluster-token", &c.token])
        .args(["--heartbeat-interval", &c.opts.heartbeat_ms.to_string()])
        .args(["--election-timeout", &c.opts.election_ms.to_string()])
        .envs(env)
        .stdin(Stdio::null())
        .stdout(log.try_clone().expect("dup"))
        .stderr(log)
        .env("NO_COLOR", "1");
    let m3 = Proc::new("m3", die_with_parent(&mut cmd).spawn().expect("spawn m3"), Some(log_path));
    wait_voter(spare[2], "m2 to be promoted").await;
    wait_voter(spare[4], "m3 to be a voter").await;
    assert_eq!(common::get(spare[2], "between", true).await.expect("get"), Some("add and start".into()));
    assert_eq!(common::get(spare[4], "between", true).await.expect("get"), Some("add and start".into()));
    let (code, list, err) = etcdctl(&endpoint, &["member", "list"]);
    assert_eq!(code, Some(0), "{err}");
    for (id, name, peer, client) in [(&m2_id, "m2", url(1), spare[2]), (&m3_id, "m3", url(3), spare[4])] {
        let line = format!("{id}, started, {name}, {peer}, http://127.0.0.1:{client}, false");
        assert!(list.contains(&line), "{line} not in\n{list}");
    }
    assert!(
        common::read_log(&c.members[0].log_path).contains("member added as a voter has caught up: promoted")
    );
    c.put_retry(0, "after", "promotion", START).await;

    // Voters: with both stopped the first member commits nothing.
    drop((m2, m3));
    let put = tokio::time::timeout(Duration::from_secs(3), common::put(port, "alone", "v")).await;
    assert!(!matches!(put, Ok(Ok(_))), "a write committed without the other voters: {put:?}");
}

/// A member started with `existing` that was never added stops with a clear error; so does
/// a removed member restarted on its old data dir.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_and_removed_members_stop_with_a_clear_error() {
    if !have("etcdctl") {
        return;
    }
    let mut c = Cluster::start(2, Opts::default());
    c.wait_leader(START).await;
    // A stranger: its --initial-cluster lists it, the cluster does not know it.
    let stranger_ports = free_ports(2);
    let mut args = c.args(1);
    let set = |args: &mut Vec<String>, flag: &str, value: String| {
        let at = args.iter().position(|a| a == flag).expect("flag") + 1;
        args[at] = value;
    };
    let (client, peer) = (
        format!("http://127.0.0.1:{}", stranger_ports[0]),
        format!("http://127.0.0.1:{}", stranger_ports[1]),
    );
    set(&mut args, "--name", "m9".into());
    set(&mut args, "--data-dir", c.dir().join("m9").display().to_string());
    for flag in ["--listen-client-urls", "--advertise-client-urls"] {
        set(&mut args, flag, client.clone());
    }
    for flag in ["--listen-peer-urls", "--initial-advertise-peer-urls"] {
        set(&mut args, flag, peer.clone());
    }
    set(&mut args, "--initial-cluster", format!("m1={},m9={peer}", c.members[0].peer_url()));
    set(&mut args, "--initial-cluster-state", "existing".into());
    let (status, out) = common::run_to_exit(&args, Duration::from_secs(30));
    assert!(!status.success());
    assert!(out.contains("is not in the cluster's configuration"), "{out}");

    // A removed member, restarted on its data dir, is told by its peers and stops.
    let id1 = ids(c.port(1)).await.0;
    let (code, o, e) = etcdctl(&c.members[0].endpoint(), &["member", "remove", &format!("{id1:x}")]);
    assert_eq!(code, Some(0), "{o}{e}");
    let mut m1 = c.members[1].child.take().expect("running");
    let exited = common::wait_exit(&mut m1, Duration::from_secs(10));
    if exited.is_none() {
        let _ = m1.kill();
        let _ = m1.wait();
        panic!("the removed member kept running");
    }
    let log = common::read_log(&c.members[1].log_path);
    assert!(log.contains("was removed from the cluster"), "{log}");
    let (status, out) = common::run_to_exit(&c.args(1), Duration::from_secs(30));
    assert!(!status.success());
    assert!(out.contains("was removed from the cluster"), "{out}");
}

/// A member change the cluster's started, reachable voters could not carry is refused before
/// it is proposed, with etcd 3.4's errors (its strict reconfiguration check, as observed on
/// etcd 3.4.23 with one of three members down): with a voter down, adding a voter or a
/// learner and removing a running voter answer `unhealthy cluster`, removing the down voter
/// is allowed; with an added voter that never started, another voter or the removal of a
/// started voter answers `not enough started members`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn changes_that_would_lose_the_quorum_are_refused() {
    let mut c = Cluster::start(3, Opts::default());
    let leader = c.wait_leader(START).await;
    let (down, up) = ((leader + 1) % 3, (leader + 2) % 3);
    let (down_id, up_id) = (ids(c.port(down)).await.0, ids(c.port(up)).await.0);
    // A member counts as started once its name and client URLs are applied (it publishes
    // them after it starts serving): wait for all three, or the first refusal is etcd's
    // `not enough started members` rather than `unhealthy cluster`.
    let leader_port = c.port(leader);
    wait_for("every member to publish its name", START, || async move {
        let list = common::cluster_client(leader_port)
            .member_list(raftkv_api::etcdserverpb::MemberListRequest::default())
            .await
            .ok()?
            .into_inner();
        (list.members.len() == 3 && list.members.iter().all(|m| !m.name.is_empty())).then_some(())
    })
    .await;
    c.kill9(down);
    let spare = free_ports(3);
    let url = |i: usize| vec![format!("http://127.0.0.1:{}", spare[i])];
    let add = |i: usize, is_learner: bool| MemberAddRequest { peer_ur_ls: url(i), is_learner };
    let port = c.port(leader);
    let unhealthy = (tonic::Code::Unavailable, "etcdserver: unhealthy cluster".to_string());
    // The leader notices the lost connection within a heartbeat or so.
    let first = wait_for("the leader to see the member down", START, || async move {
        match common::cluster_client(port).member_add(add(0, false)).await {
            Err(s) if s.code() == tonic::Code::Unavailable => Some((s.code(), s.message().to_string())),
            Err(s) => panic!("member add with a voter down: {s:?}"),
            Ok(r) => panic!("member add with a voter down accepted: {:?}", r.into_inner()),
        }
    })
    .await;
    assert_eq!(first, unhealthy);
    let mut cluster = common::cluster_client(port);
    assert_eq!(refusal(cluster.member_add(add(0, true)).await), unhealthy);
    assert_eq!(refusal(cluster.member_remove(MemberRemoveRequest { id: up_id }).await), unhealthy);
    cluster.member_remove(MemberRemoveRequest { id: down_id }).await.expect("remove the member that is down");

    // Two started voters: a third voter that never starts leaves them a quorum; a fourth
    // would not, nor would removing one of the two.
    let added = cluster.member_add(add(1, false)).await.expect("add a voter").into_inner();
    let unstarted = added.member.expect("member").id;
    let not_started = (
        tonic::Code::Unknown,
        "etcdserver: re-configuration failed due to not enough started members".to_string(),
    );
    assert_eq!(refusal(cluster.member_add(add(2, false)).await), not_started);
    assert_eq!(refusal(cluster.member_remove(MemberRemoveRequest { id: up_id }).await), not_started);
    // A learner needs every voter reachable.
    assert_eq!(refusal(cluster.member_add(add(2, true)).await), unhealthy);
    cluster.member_remove(MemberRemoveRequest { id: unstarted }).await.expect("remove the unstarted voter");
    c.put_retry(leader, "still", "serving", START).await;
}

/// A member list as compared before and after a refused change: (id, name, peer URLs,
/// client URLs, learner), by id.
type Listed = Vec<(u64, String, Vec<String>, Vec<String>, bool)>;

async fn listed(port: u16) -> Listed {
    let resp = common::cluster_client(port)
        .member_list(MemberListRequest::default())
        .await
        .expect("member list")
        .into_inner();
    let mut members: Listed = resp
        .members
        .into_iter()
        .map(|m| (m.id, m.name, m.peer_ur_ls, m.client_ur_ls, m.is_learner))
        .collect();
    members.sort();
    members
}

/// Waits until the `n` members listed at `port` have published their client URLs (etcd's
/// "started": until then a voter is not counted by the strict reconfiguration check). The
/// name is no sign: a bootstrapped member is listed with its `--initial-cluster` name before.
async fn wait_published(port: u16, n: usize) {
    wait_for("every member to publish its client URLs", START, || async move {
        let list = listed(port).await;
        (list.len() == n && list.iter().all(|m| !m.3.is_empty())).then_some(())
    })
    .await;
}

/// A call's refusal: (code, message); panics if it was accepted.
fn refusal<T: std::fmt::Debug>(r: Result<tonic::Response<T>, tonic::Status>) -> (tonic::Code, String) {
    match r {
        Ok(r) => panic!("accepted: {:?}", r.into_inner()),
        Err(s) => (s.code(), s.message().to_string()),
    }
}

/// Bad input against the one-member cluster at `port` (its member id `me`, peer URL
/// `own_peer`), in two rounds: with the voter alone, then with a learner added (on
/// `spare[0]`; removed at the end). Returns each refusal as "round: step -> code message",
/// having checked after each round that the member list (ids, names, URLs, learner flags)
/// is as before it.
async fn bad_input(port: u16, own_peer: &str, me: u64, spare: &[u16]) -> Vec<String> {
    let mut cluster = common::cluster_client(port);
    let learner_url = format!("http://127.0.0.1:{}", spare[0]);
    let other_url = format!("http://127.0.0.1:{}", spare[1]);
    let add =
        |url: &str, is_learner: bool| MemberAddRequest { peer_ur_ls: vec![url.to_string()], is_learner };
    let unknown = if me == 0x1234 { 0x4321 } else { 0x1234 };
    let mut answers = Vec::new();
    let mut learner = None;
    for round in ["one voter", "one voter and a learner"] {
        let before = listed(port).await;
        let mut steps = vec![
            ("add a voter on the voter's peer URL", refusal(cluster.member_add(add(own_peer, false)).await)),
            ("add a learner on the voter's peer URL", refusal(cluster.member_add(add(own_peer, true)).await)),
            (
                "remove an unknown id",
                refusal(cluster.member_remove(MemberRemoveRequest { id: unknown }).await),
            ),
            (
                "promote an unknown id",
                refusal(cluster.member_promote(MemberPromoteRequest { id: unknown }).await),
            ),
            (
                "update an unknown id",
                refusal(
                    cluster
                        .member_update(MemberUpdateRequest {
                            id: unknown,
                            peer_ur_ls: vec![other_url.clone()],
                        })
                        .await,
                ),
            ),
            ("promote a voter", refusal(cluster.member_promote(MemberPromoteRequest { id: me }).await)),
            ("remove the last voter", refusal(cluster.member_remove(MemberRemoveRequest { id: me }).await)),
        ];
        if learner.is_some() {
            steps.push((
                "add a voter on the learner's peer URL",
                refusal(cluster.member_add(add(&learner_url, false)).await),
            ));
            steps.push((
                "add a learner on the learner's peer URL",
                refusal(cluster.member_add(add(&learner_url, true)).await),
            ));
            steps.push((
                "update the voter to the learner's peer URL",
                refusal(
                    cluster
                        .member_update(MemberUpdateRequest { id: me, peer_ur_ls: vec![learner_url.clone()] })
                        .await,
                ),
            ));
        }
        assert_eq!(listed(port).await, before, "{round}: a refused change changed the member list");
        answers.extend(
            steps.into_iter().map(|(step, (code, msg))| format!("{round}: {step} -> {code:?} {msg}")),
        );
        if learner.is_none() {
            let added =
                cluster.member_add(add(&learner_url, true)).await.expect("add a learner").into_inner();
            learner = added.member.map(|m| m.id);
            // etcd hashes the peer URLs with the time in seconds into a new member's id: an
            // addition on the learner's URL within the same second would get the learner's id
            // and answer `member ID already exist` instead of `Peer URLs already exists`.
            tokio::time::sleep(Duration::from_millis(1100)).await;
        }
    }
    let id = learner.expect("the learner's id");
    cluster.member_remove(MemberRemoveRequest { id }).await.expect("remove the learner");
    answers
}

/// Bad input answers as etcd 3.4 answers it (gRPC code and message, the same calls against a
/// real etcd), and changes nothing: adding a member on a peer URL in use (a voter's, a
/// learner's), removing, promoting or updating an unknown id, promoting a voter, updating a
/// member to another's URL, and removing the last voter, alone and with a learner beside it
/// (etcd's strict reconfiguration check: no started voter would be left).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_gets_etcds_errors_and_changes_nothing() {
    let mut c = Cluster::start_named(&["default"], Opts::default());
    c.wait_leader(START).await;
    wait_published(c.port(0), 1).await;
    let spare = free_ports(2);
    let me = ids(c.port(0)).await.0;
    let ours = bad_input(c.port(0), &c.members[0].peer_url(), me, &spare).await;
    assert_eq!(listed(c.port(0)).await.len(), 1);

    let etcd_dir = tempfile::tempdir().expect("temp dir");
    let Some((_etcd, client, peer)) = common::start_etcd_elected(etcd_dir.path()).await else {
        eprintln!("no etcd to compare with; raftkv's answers:\n{}", ours.join("\n"));
        return;
    };
    wait_published(client, 1).await;
    let etcd_me = ids(client).await.0;
    let theirs = bad_input(client, &format!("http://127.0.0.1:{peer}"), etcd_me, &spare).await;
    c.assert_running();
    assert_eq!(ours, theirs, "raftkv's answers (left) differ from etcd 3.4's (right)");
}

/// A change proposed while another is in progress (its entry not yet committed) is refused
/// at once and changes nothing; the change in progress completes once it can commit.
///
/// etcd 3.4 cannot be driven into this state from a test as raftkv is (it needs a change
/// that cannot commit while the leader keeps leading), so its answer is taken from its
/// sources (v3.4.23): its Raft replaces the second change by an empty entry
/// (raft/raft.go, stepLeader: "possible unapplied conf change"), and the server waits for an
/// apply that never comes until the caller's deadline (etcdserver/server.go, `configure`):
/// the client gets its own `context deadline exceeded`, or, if the server's wait ends first,
/// `etcdserver: request timed out` (Unavailable). raftkv answers at once on purpose, with
/// FailedPrecondition and a message that says what happened and what to do (docs/operations.md).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_change_while_another_is_in_progress_is_refused_and_changes_nothing() {
    // The followers are paused while the first change is in progress: CheckQuorum deposes a
    // leader that hears from no quorum for an election timeout, so it is long here.
    let opts = Opts { heartbeat_ms: 100, election_ms: 3000, ..Opts::default() };
    let mut c = Cluster::start(3, opts);
    let leader = c.wait_leader(Duration::from_secs(30)).await;
    let port = c.port(leader);
    wait_published(port, 3).await;
    let followers: Vec<usize> = (0..3).filter(|i| *i != leader).collect();
    let follower_id = ids(c.port(followers[0])).await.0;
    let follower_url = c.members[followers[0]].peer_url();
    let before = listed(port).await;
    let spare = free_ports(3);
    let url = |i: usize| vec![format!("http://127.0.0.1:{}", spare[i])];

    for &f in &followers {
        c.sigstop(f);
    }
    // The first change: appended, but it cannot commit while both followers are paused.
    let first_url = url(0);
    let first = tokio::spawn(async move {
        common::cluster_client(port)
            .member_add(MemberAddRequest { peer_ur_ls: first_url, is_learner: true })
            .await
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    let in_progress = (
        tonic::Code::FailedPrecondition,
        "etcdserver: another membership change is in progress; retry once it completes".to_string(),
    );
    let mut cluster = common::cluster_client(port);
    let answers = [
        refusal(cluster.member_add(MemberAddRequest { peer_ur_ls: url(1), is_learner: true }).await),
        refusal(cluster.member_add(MemberAddRequest { peer_ur_ls: url(2), is_learner: false }).await),
        refusal(cluster.member_remove(MemberRemoveRequest { id: follower_id }).await),
        refusal(cluster.member_update(MemberUpdateRequest { id: follower_id, peer_ur_ls: url(2) }).await),
    ];
    for &f in &followers {
        c.sigcont(f);
    }
    for answer in &answers {
        assert_eq!(answer, &in_progress);
    }
    let added = first.await.expect("task").expect("the first change completes").into_inner();
    let added = added.member.expect("member");
    // Only the first change happened: its learner is listed, nothing else moved.
    let mut expected = before.clone();
    expected.push((added.id, String::new(), url(0), Vec::new(), true));
    expected.sort();
    assert_eq!(listed(port).await, expected);
    assert!(listed(port).await.iter().any(|m| m.0 == follower_id && m.2 == vec![follower_url.clone()]));
    c.assert_running();
}

/// A member's `Maintenance.Status` and `etcdctl endpoint status -w json` agree on whether it
/// is a learner and on the leader: (is_learner, leader, member id) from both.
async fn learner_and_leader(endpoint: &str, port: u16) -> ((bool, u64, u64), (bool, u64, u64)) {
    let s = common::status(port).await.expect("status");
    let rpc = (s.is_learner, s.leader, s.header.map_or(0, |h| h.member_id));
    let (code, out, err) = etcdctl(endpoint, &["endpoint", "status", "-w", "json"]);
    assert_eq!(code, Some(0), "{out}{err}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}"));
    let status = &v[0]["Status"];
    let cli = (
        status["isLearner"].as_bool().unwrap_or(false),
        status["leader"].as_u64().unwrap_or(0),
        status["header"]["member_id"].as_u64().unwrap_or(0),
    );
    (rpc, cli)
}

/// `Status` reports `is_learner` and the leader correctly during and after changes: a
/// learner added to a one-member cluster and started with `existing` says it is a learner and
/// names the leader (the leader says it is none); once promoted, it is no learner; after
/// `move-leader` to it, both members name it as the leader.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_reports_the_learner_and_the_leader_through_changes() {
    if !have("etcdctl") {
        return;
    }
    let mut c = Cluster::new(2, Opts::default());
    let (peer0, peer1) = (c.members[0].peer_url(), c.members[1].peer_url());
    c.initial_cluster = format!("m1={peer0}");
    c.start_member(0);
    c.wait_leader(START).await;
    wait_published(c.port(0), 1).await;
    let (ep0, ep1) = (c.members[0].endpoint(), c.members[1].endpoint());
    let (port0, port1) = (c.port(0), c.port(1));
    let leader = ids(port0).await.0;
    let (code, out, err) =
        etcdctl(&ep0, &["member", "add", "m2", "--learner", &format!("--peer-urls={peer1}")]);
    assert_eq!(code, Some(0), "{out}{err}");
    let learner = u64::from_str_radix(&added_id(&out).expect("the new id"), 16).expect("a hex id");
    // An update keeps a learner a learner (etcd 3.4 loses the flag in its member list).
    let (code, out, err) =
        etcdctl(&ep0, &["member", "update", &format!("{learner:x}"), &format!("--peer-urls={peer1}")]);
    assert_eq!(code, Some(0), "{out}{err}");
    assert!(listed(port0).await.iter().any(|m| m.0 == learner && m.4), "{:?}", listed(port0).await);
    c.initial_cluster = format!("m1={peer0},m2={peer1}");
    let mut args = c.args(1);
    let state = args.iter().position(|a| a == "--initial-cluster-state").expect("flag") + 1;
    args[state] = "existing".into();
    c.members[1].child = Some(c.spawn_raw(1, &args));
    // From its first answer, before the leader's log reaches it, the joining member knows it
    // is a learner (as etcd: the member list it learns from its peers at join has the flag),
    // in its status and in its member list.
    let first =
        wait_for("the learner to answer", START, || async move { common::status(port1).await.ok() }).await;
    assert!(first.is_learner, "the joining learner's first status: {first:?}");
    assert!(listed(port1).await.iter().any(|m| m.0 == learner && m.4), "{:?}", listed(port1).await);
    wait_for("the learner to know its leader and its configuration", START, || async move {
        common::status(port1).await.ok().filter(|s| s.leader != 0 && s.raft_applied_index > 0)
    })
    .await;
    let during = learner_and_leader(&ep1, port1).await;
    assert_eq!(during, ((true, leader, learner), (true, leader, learner)), "the learner, before promotion");
    let on_leader = learner_and_leader(&ep0, port0).await;
    assert_eq!(on_leader, ((false, leader, leader), (false, leader, leader)), "the leader, meanwhile");

    // Promoted once in sync (refused with "in sync with leader" while it catches up).
    wait_for("the learner's promotion", START, || {
        let ep0 = ep0.clone();
        async move {
            let (code, out, err) = etcdctl(&ep0, &["member", "promote", &format!("{learner:x}")]);
            if code != Some(0) {
                assert!(err.contains("in sync with leader"), "{out}{err}");
            }
            (code == Some(0)).then_some(())
        }
    })
    .await;
    wait_for("the promotion to reach the new voter", START, || async move {
        common::status(port1).await.ok().filter(|s| !s.is_learner)
    })
    .await;
    let after = learner_and_leader(&ep1, port1).await;
    assert_eq!(after, ((false, leader, learner), (false, leader, learner)), "the member, promoted");

    // Leadership moved to it: both members name it.
    let (code, out, err) = etcdctl(&c.endpoints(), &["move-leader", &format!("{learner:x}")]);
    assert_eq!(code, Some(0), "{out}{err}");
    for (ep, port, id) in [(&ep0, port0, leader), (&ep1, port1, learner)] {
        let port_status = wait_for("every member to know the new leader", START, || async move {
            common::status(port).await.ok().filter(|s| s.leader == learner).map(|_| ())
        });
        port_status.await;
        assert_eq!(learner_and_leader(ep, port).await, ((false, learner, id), (false, learner, id)));
    }
    c.assert_running();
}

/// A process in its own process group (`raftkv dev` and its members), the whole group
/// killed on drop.
struct Group(Option<std::process::Child>, std::path::PathBuf);

impl Drop for Group {
    fn drop(&mut self) {
        if let Some(mut child) = self.0.take() {
            let _ = nix::sys::signal::killpg(
                nix::unistd::Pid::from_raw(child.id() as i32),
                nix::sys::signal::Signal::SIGKILL,
            );
            let _ = child.wait();
        }
        if std::thread::panicking() {
            eprintln!("===== raftkv dev ({}) =====\n{}", self.1.display(), common::read_log(&self.1));
        }
    }
}

/// `s` with every `:PORT` of `ports` (a port ending there) moved to its pair.
fn relocate(s: &str, ports: &[(u16, u16)]) -> String {
    let mut out = String::new();
    let mut rest = s;
    while let Some(i) = rest.find(':') {
        out.push_str(&rest[..=i]);
        rest = &rest[i + 1..];
        let digits = rest.chars().take_while(char::is_ascii_digit).count();
        if let Some((_, to)) =
            rest[..digits].parse::<u16>().ok().and_then(|p| ports.iter().find(|(f, _)| *f == p))
        {
            out.push_str(&to.to_string());
            rest = &rest[digits..];
        }
    }
    out.push_str(rest);
    out
}

/// Runs a shell command line of the README in `cwd` with `env`: (exit code, stdout, stderr).
fn sh(line: &str, cwd: &std::path::Path, env: &[(String, String)]) -> (Option<i32>, String, String) {
    let out = Command::new("bash")
        .args(["-c", line])
        .current_dir(cwd)
        .envs(env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
        .stdin(Stdio::null())
        .output()
        .expect("run bash");
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// The README's "Growing and shrinking the dev cluster" works as written: its commands, run
/// one by one from a directory holding `target/release/raftkv` (this build) next to a
/// `raftkv dev` cluster, with the walk-through's ports moved to free ones (`raftkv dev
/// --ports`) and ID replaced by the id `member add` printed. A promote refused as the new
/// member catches up is retried after the README's check, as the README says. Then m4 has
/// served, was removed and stopped, and the cluster is back to m1-m3.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readme_grow_and_shrink_walkthrough_works_as_written() {
    if !have("etcdctl") {
        return;
    }
    let readme = include_str!("../../../README.md");
    let at = readme.find("## Growing and shrinking the dev cluster").expect("the README's section");
    let section = &readme[at..];
    let section = &section[..section[3..].find("\n## ").map_or(section.len(), |i| i + 3)];
    let block = section.split("```sh\n").nth(1).and_then(|b| b.split("```").next()).expect("its sh block");
    let commands: Vec<String> = block
        .replace("\\\n", " ")
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .map(String::from)
        .collect();
    let catch_up_check = section
        .split('`')
        .find(|s| s.starts_with("etcdctl") && s.contains("endpoint status"))
        .expect("the check");

    const PORTS: [u16; 8] = [2379, 2380, 22379, 22380, 32379, 32380, 12379, 12380];
    let free = free_ports(PORTS.len());
    let ports: Vec<(u16, u16)> = PORTS.iter().copied().zip(free.iter().copied()).collect();
    let cwd = tempfile::Builder::new().prefix("raftkv-readme-").tempdir().expect("temp dir");
    let cwd = cwd.path();
    std::fs::create_dir_all(cwd.join("target/release")).expect("mkdir");
    std::os::unix::fs::symlink(common::EXE, cwd.join("target/release/raftkv")).expect("symlink");

    let dev_log = cwd.join("dev.log");
    let log = File::create(&dev_log).expect("dev log");
    let mut cmd = Command::new(common::EXE);
    cmd.args(["dev", "--data-dir", "raftkv-dev", "--ports"])
        .arg(format!("{}:{},{}:{},{}:{}", free[0], free[1], free[2], free[3], free[4], free[5]))
        .current_dir(cwd)
        .stdin(Stdio::null())
        .stdout(log.try_clone().expect("dup"))
        .stderr(log)
        .env("NO_COLOR", "1");
    std::os::unix::process::CommandExt::process_group(&mut cmd, 0);
    let _dev = Group(Some(die_with_parent(&mut cmd).spawn().expect("spawn raftkv dev")), dev_log);
    let clients = [free[0], free[2], free[4]];
    wait_for("the dev cluster to elect a leader", Duration::from_secs(30), || async move {
        let mut leaders = Vec::new();
        for p in clients {
            leaders.push(common::status(p).await.ok()?.leader);
        }
        (leaders[0] != 0 && leaders.iter().all(|l| *l == leaders[0])).then_some(())
    })
    .await;
    wait_published(clients[0], 3).await;

    let mut env: Vec<(String, String)> = Vec::new();
    let mut id = String::new();
    let mut m4: Option<Proc> = None;
    let mut promote_retries = 0;
    for line in &commands {
        let line = relocate(line, &ports);
        if let Some(assign) = line.strip_prefix("export ") {
            let (k, v) = assign.split_once('=').expect("export K=V");
            env.push((k.to_string(), v.to_string()));
            continue;
        }
        let line = line
            .split_whitespace()
            .map(|w| if w == "ID" { id.as_str() } else { w })
            .collect::<Vec<_>>()
            .join(" ");
        if let Some(background) = line.strip_suffix('&') {
            let log_path = cwd.join("m4.log");
            let log = File::create(&log_path).expect("m4 log");
            let mut cmd = Command::new("bash");
            cmd.args(["-c", &format!("exec {background}")])
                .current_dir(cwd)
                .envs(env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
                .env("NO_COLOR", "1")
                .stdin(Stdio::null())
                .stdout(log.try_clone().expect("dup"))
                .stderr(log);
            m4 = Some(Proc::new("m4", die_with_parent(&mut cmd).spawn().expect("spawn m4"), Some(log_path)));
            continue;
        }
        let deadline = Instant::now() + START;
        let (code, out, err) = loop {
            let (code, out, err) = sh(&line, cwd, &env);
            if code != Some(0) && line.contains("member promote") && err.contains("in sync with leader") {
                assert!(Instant::now() < deadline, "m4 never caught up: {err}");
                promote_retries += 1;
                let (_, status, _) = sh(&relocate(catch_up_check, &ports), cwd, &env);
                eprintln!("promote refused while m4 catches up; {catch_up_check}:\n{status}");
                std::thread::sleep(Duration::from_millis(500));
                continue;
            }
            break (code, out, err);
        };
        assert_eq!(code, Some(0), "{line}\n{out}{err}");
        if line.contains("member add") {
            id = added_id(&out).expect("member add prints the new id");
        }
        if line.contains(" put ") {
            assert_eq!(out.trim(), "OK", "{line}");
        }
    }
    eprintln!("member promote retried {promote_retries} times while m4 caught up");
    assert!(!id.is_empty() && m4.is_some(), "the walk-through adds and starts m4");
    let m4 = m4.as_mut().expect("m4");
    m4.wait_exit(Duration::from_secs(15)).expect("m4 stops once removed");
    let log = common::read_log(m4.log_path.as_ref().expect("log"));
    assert!(log.contains("was removed from the cluster"), "{log}");
    let list = listed(clients[0]).await;
    let names: Vec<&str> = list.iter().map(|m| m.1.as_str()).collect();
    assert_eq!(list.len(), 3, "{names:?}");
    assert_eq!(common::get(clients[1], "a", false).await.expect("get"), Some("b".into()));
}
