//! A replicated counter: three members in one process, talking over an in-process network,
//! each keeping its log and snapshots in a directory of its own.
//!
//! `cargo run --release -p raftkv-node --example counter`

use std::io::{self, Read, Write};
use std::path::Path;
use std::time::Duration;

use raftkv_node::{MemNetwork, Node, NodeConfig, NodeId, StateMachine, Visit, open_storage};

/// The replicated state: one number.
#[derive(Default)]
pub struct Counter {
    pub value: u64,
}

/// A command is the request id (so the proposer learns the outcome) and an amount to add.
fn command(request_id: u64, add: u64) -> Vec<u8> {
    [request_id.to_le_bytes(), add.to_le_bytes()].concat()
}

impl StateMachine for Counter {
    type Output = u64; // the counter's value after the command
    type Pin = u64; // a snapshot in progress: simply the value

    fn apply(&mut self, _index: u64, data: &[u8]) -> Option<(u64, u64)> {
        let request_id = u64::from_le_bytes(data.get(..8)?.try_into().ok()?);
        let add = u64::from_le_bytes(data.get(8..16)?.try_into().ok()?);
        self.value += add;
        Some((request_id, self.value))
    }

    fn pin(&mut self) -> u64 {
        self.value
    }

    fn write_snapshot(pin: &u64, w: &mut dyn Write, _visit: &mut Visit<'_, Self>) -> io::Result<()> {
        w.write_all(&pin.to_le_bytes())
    }

    fn restore(&mut self, r: &mut dyn Read, _len: u64) -> Result<(), raftkv_node::StateMachineError> {
        let mut buf = [0u8; 8];
        r.read_exact(&mut buf).map_err(|e| format!("bad counter snapshot: {e}"))?;
        self.value = u64::from_le_bytes(buf);
        Ok(())
    }
}

/// Starts three members in `dir`, adds 1 `increments` times (through each member in turn:
/// followers forward to the leader), then reads the counter on every member with a
/// linearizable read. Returns the three values read.
pub async fn run(dir: &Path, increments: u64) -> Result<Vec<u64>, Box<dyn std::error::Error>> {
    let network = MemNetwork::new();
    let members = [NodeId(1), NodeId(2), NodeId(3)];
    let mut nodes = Vec::new();
    for id in members {
        let (storage, recovered) = open_storage(&dir.join(format!("member-{}", id.0)), 1, id)?;
        let mut config = NodeConfig::new(id, members);
        config.snapshot_count = 50; // snapshot often, to show it works
        let (net, peers) = network.join(id);
        nodes.push(Node::start(config, storage, recovered, Counter::default(), net, peers)?);
    }
    let timeout = Duration::from_secs(10);
    for i in 0..increments {
        let node = &nodes[i as usize % nodes.len()].handle;
        let id = node.next_request_id();
        // Waits (briefly) for a leader to be elected if there is none yet.
        node.propose(id, command(id, 1).into(), timeout).await?;
    }
    let mut values = Vec::new();
    for node in &nodes {
        node.handle.read_barrier(timeout).await?;
        values.push(node.handle.shared.sm.read().value);
    }
    for node in nodes {
        node.stop().await?;
    }
    Ok(values)
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let dir = tempfile::tempdir()?;
    let values = run(dir.path(), 200).await?;
    println!("counter on members 1, 2, 3: {values:?}");
    Ok(())
}
