//! Lease calls that a follower forwards to the leader, made just as the leader dies: as in
//! etcd, the follower retries against the next leader instead of failing. Patroni's primary
//! otherwise took a failed `/v3/lease/keepalive` for a lost lease and re-made its leader key.

mod common;

use std::time::{Duration, Instant};

use common::{Cluster, Opts, channel, http_post, keep_alive_once};
use raftkv_api::etcdserverpb::lease_client::LeaseClient;
use raftkv_api::etcdserverpb::{LeaseGrantRequest, LeaseTimeToLiveRequest};

const START: Duration = Duration::from_secs(20);
const TTL: i64 = 30;

fn lease(port: u16) -> LeaseClient<tonic::transport::Channel> {
    LeaseClient::new(channel(port))
}

async fn time_to_live(port: u16, id: i64) -> Result<(i64, i64), tonic::Status> {
    let resp = lease(port).lease_time_to_live(LeaseTimeToLiveRequest { id, keys: false }).await?.into_inner();
    Ok((resp.ttl, resp.granted_ttl))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn renewals_through_a_follower_survive_a_leader_kill() {
    let mut c = Cluster::start(3, Opts::default());
    for round in 0..2 {
        let leader = c.wait_leader(START).await;
        let follower = (leader + 1) % c.members.len();
        let port = c.port(follower);
        let id = 0x0001_ea5e_0000 + round;
        let granted = lease(port)
            .lease_grant(LeaseGrantRequest { ttl: TTL, id })
            .await
            .expect("grant through a follower")
            .into_inner();
        assert_eq!(granted.id, id);

        // The follower still takes the dead member for its leader when these arrive.
        c.kill9(leader);
        let killed = Instant::now();
        let gateway = tokio::task::spawn_blocking(move || {
            http_post(port, "/v3/lease/keepalive", &format!(r#"{{"ID":"{id}"}}"#))
        });
        let (grpc, ttl) = tokio::join!(keep_alive_once(port, id), time_to_live(port, id));
        let gateway = gateway.await.expect("gateway call");
        eprintln!("round {round}: answers {:?} after the leader kill", killed.elapsed());

        let line: serde_json::Value = serde_json::from_str(gateway.trim()).expect("one JSON line");
        assert_eq!(
            line["result"]["TTL"],
            TTL.to_string(),
            "gateway keep-alive during the leader change: {gateway}"
        );
        assert_eq!(grpc.expect("gRPC keep-alive during the leader change"), TTL);
        let (left, granted) = ttl.expect("TimeToLive during the leader change");
        assert!(left > TTL - 5 && granted == TTL, "TimeToLive: {left} s left of {granted}");

        c.start_member(leader);
    }
    c.wait_leader(START).await;
    c.assert_running();
}
