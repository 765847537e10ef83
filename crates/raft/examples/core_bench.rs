//! Measures the core alone: entries committed per second by an in-memory 3-node cluster with
//! no I/O. Every Ready is "persisted" at once and messages are delivered in memory.
//!
//! `cargo run --release -p raftkv-raft --example core_bench -- [batch] [payload_bytes] [seconds]`

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use bytes::Bytes;
use raftkv_raft::{ClusterConfig, Config, InitialState, Message, NodeId, Raft, Role};

fn drain(nodes: &mut [Raft], queue: &mut VecDeque<Message>, id: usize, committed: &mut u64) {
    let raft = &mut nodes[id];
    while raft.has_ready() {
        let rd = raft.ready();
        let target = rd.persist_target();
        queue.extend(rd.messages);
        queue.extend(rd.messages_after_persist);
        if let Some((index, term)) = target {
            raft.persisted(index, term);
        }
        if let Some(last) = rd.committed_entries.last() {
            if id == 0 {
                *committed += rd.committed_entries.len() as u64;
            }
            raft.applied(last.index);
        }
    }
}

fn main() {
    let args: Vec<u64> = std::env::args().skip(1).filter_map(|a| a.parse().ok()).collect();
    let batch = args.first().copied().unwrap_or(1024) as usize;
    let payload = args.get(1).copied().unwrap_or(64) as usize;
    let seconds = args.get(2).copied().unwrap_or(5);

    let voters = ClusterConfig::new([NodeId(1), NodeId(2), NodeId(3)]);
    let mut nodes: Vec<Raft> = (1..=3)
        .map(|id| {
            let mut config = Config::new(NodeId(id));
            config.append_bytes_max = 4 << 20;
            config.uncommitted_bytes_max = 256 << 20;
            Raft::new(config, InitialState { config: voters.clone(), ..Default::default() })
                .expect("valid config")
        })
        .collect();
    let mut queue = VecDeque::new();
    let mut committed = 0u64;
    nodes[0].campaign();
    for _ in 0..100 {
        for id in 0..3 {
            drain(&mut nodes, &mut queue, id, &mut committed);
        }
        while let Some(m) = queue.pop_front() {
            let to = (m.to.0 - 1) as usize;
            let _ = nodes[to].step(m);
            drain(&mut nodes, &mut queue, to, &mut committed);
        }
    }
    assert_eq!(nodes[0].role(), Role::Leader, "node 1 leads");
    let data = Bytes::from(vec![7u8; payload]);
    committed = 0;
    let start = Instant::now();
    let deadline = start + Duration::from_secs(seconds);
    let mut rounds = 0u64;
    while Instant::now() < deadline {
        for _ in 0..16 {
            nodes[0].propose_batch(std::iter::repeat_n(data.clone(), batch)).expect("leader accepts");
            drain(&mut nodes, &mut queue, 0, &mut committed);
            while let Some(m) = queue.pop_front() {
                let to = (m.to.0 - 1) as usize;
                let _ = nodes[to].step(m);
                drain(&mut nodes, &mut queue, to, &mut committed);
            }
            rounds += 1;
        }
        // Keep the in-memory log bounded, as a real node compacts after snapshots.
        let applied = nodes[0].applied_index();
        for node in nodes.iter_mut() {
            let a = node.applied_index().min(applied);
            let _ = node.snapshot_taken(a, a);
        }
    }
    let elapsed = start.elapsed().as_secs_f64();
    println!(
        "{{\"bench\":\"core\",\"nodes\":3,\"batch\":{batch},\"payload_bytes\":{payload},\"seconds\":{elapsed:.2},\"rounds\":{rounds},\"entries_committed\":{committed},\"entries_per_sec\":{:.0}}}",
        committed as f64 / elapsed
    );
}
