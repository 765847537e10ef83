//! A member that was away while the cluster added a member, and that member became the
//! leader: the member has not applied the addition, so the new leader is unknown to it. It
//! must still catch up (it learns the new member's address from its peers' member lists),
//! not refuse the leader's connections for ever.

mod common;

use std::time::Duration;

use common::{Cluster, Opts, wait_for};
use raftkv_api::etcdserverpb::{MemberAddRequest, MemberPromoteRequest, MoveLeaderRequest};

const START: Duration = Duration::from_secs(20);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_away_while_a_new_member_became_leader_catches_up() {
    // m1..m3 form the cluster; m4 is prepared (ports, data dir) and added later.
    let mut c = Cluster::new(4, Opts::default());
    let three = (0..3)
        .map(|i| format!("{}={}", c.members[i].name, c.members[i].peer_url()))
        .collect::<Vec<_>>()
        .join(",");
    let args_of = |c: &Cluster, i: usize| {
        let mut args = c.args(i);
        let at = args.iter().position(|a| a == "--initial-cluster").expect("flag") + 1;
        args[at] = three.clone();
        args
    };
    for i in 0..3 {
        c.members[i].child = Some(c.spawn_raw(i, &args_of(&c, i)));
    }
    let leader = c.wait_leader(START).await;
    c.put_retry(leader, "before", "v", START).await;
    let away = (leader + 1) % 3;
    let present = 3 - leader - away;
    // Paused (its connections stay up, so the cluster still counts it as connected and
    // accepts the addition), later killed: what was sent to it meanwhile is lost with it.
    c.sigstop(away);

    // While it is down: m4 added as a learner, caught up, promoted, made leader.
    let added = common::cluster_client(c.port(leader))
        .member_add(MemberAddRequest { peer_ur_ls: vec![c.members[3].peer_url()], is_learner: true })
        .await
        .expect("member add")
        .into_inner();
    let new_id = added.member.expect("the added member").id;
    let mut args = c.args(3);
    let state = args.iter().position(|a| a == "--initial-cluster-state").expect("flag") + 1;
    args[state] = "existing".into();
    c.members[3].child = Some(c.spawn_raw(3, &args));
    let port4 = c.port(3);
    wait_for("the new member to catch up", START, || async move {
        common::get(port4, "before", true).await.ok().flatten()
    })
    .await;
    let leader_port = c.port(leader);
    wait_for("the learner's promotion", START, || async move {
        common::cluster_client(leader_port).member_promote(MemberPromoteRequest { id: new_id }).await.ok()
    })
    .await;
    // Four voters, one of them down: the transfer needs the other three.
    wait_for("leadership moved to the new member", START, || async move {
        common::maintenance(leader_port).move_leader(MoveLeaderRequest { target_id: new_id }).await.ok()
    })
    .await;
    assert_eq!(common::status(port4).await.expect("status").leader, new_id);
    c.put_retry(3, "after", "v", START).await;
    let present_port = c.port(present);
    assert_eq!(common::get(present_port, "after", false).await.expect("get"), Some("v".into()));

    c.kill9(away);
    // Back on its data dir: its configuration does not have m4, the leader. It catches up from
    // it all the same and lists it.
    c.members[away].child = Some(c.spawn_raw(away, &args_of(&c, away)));
    let away_port = c.port(away);
    let caught_up = wait_for("the member that was away to follow the new leader", START, || async move {
        let status = common::status(away_port).await.ok()?;
        let read = common::get(away_port, "after", true).await.ok().flatten();
        (status.leader == new_id && read.is_some()).then_some(status)
    })
    .await;
    assert_eq!(caught_up.leader, new_id);
    let members = common::cluster_client(away_port)
        .member_list(raftkv_api::etcdserverpb::MemberListRequest {})
        .await
        .expect("member list")
        .into_inner()
        .members;
    assert!(members.iter().any(|m| m.id == new_id), "{members:?}");
    c.assert_running();
}
