//! An in-process network: members of one process talk through bounded channels. For
//! tests, examples and embedding several members in one program.

use std::collections::HashMap;
use std::io::{Cursor, Read};
use std::sync::Arc;
use std::task::{Context, Poll};

use parking_lot::Mutex;
use raftkv_raft::{Message, NodeId};
use tokio::sync::mpsc;

use crate::{Inbound, Network, PeerSource};

/// Messages queued for one member beyond this are dropped (Raft tolerates loss).
const QUEUE: usize = 4096;
/// Largest snapshot moved (a bigger one fails its transfer).
const SNAPSHOT_MAX: u64 = 1 << 30;

/// The switchboard between the members of one process.
#[derive(Default)]
pub struct MemNetwork {
    members: Mutex<HashMap<NodeId, mpsc::Sender<Inbound>>>,
}

impl MemNetwork {
    /// An empty network.
    pub fn new() -> Arc<MemNetwork> {
        Arc::new(MemNetwork::default())
    }

    /// Connects member `id` (replacing an earlier connection of it, as after a restart):
    /// returns what [`crate::Node::start`] takes.
    pub fn join(self: &Arc<Self>, id: NodeId) -> (Arc<dyn Network>, Box<dyn PeerSource>) {
        let (tx, rx) = mpsc::channel(QUEUE);
        self.members.lock().insert(id, tx);
        (Arc::new(Endpoint { net: self.clone(), id }), Box::new(Source(rx)))
    }

    /// Disconnects member `id`: traffic to it is dropped until it joins again.
    pub fn leave(&self, id: NodeId) {
        self.members.lock().remove(&id);
    }

    fn deliver(&self, to: NodeId, inbound: Inbound) -> bool {
        let tx = self.members.lock().get(&to).cloned();
        tx.is_some_and(|tx| tx.try_send(inbound).is_ok())
    }
}

struct Endpoint {
    net: Arc<MemNetwork>,
    id: NodeId,
}

impl Network for Endpoint {
    fn send(&self, msg: Message) {
        self.net.deliver(msg.to, Inbound::Message(msg));
    }

    /// Reads the whole snapshot into memory on the caller's thread (fine for the small
    /// states of tests and examples) and delivers it at once.
    fn send_snapshot(&self, msg: Message, mut reader: Box<dyn Read + Send>, len: u64) {
        let to = msg.to;
        let mut data = Vec::new();
        let read = len <= SNAPSHOT_MAX
            && reader.by_ref().take(len).read_to_end(&mut data).is_ok()
            && data.len() as u64 == len;
        let ok = read
            && self.net.deliver(to, Inbound::Snapshot { message: msg, data: Box::new(Cursor::new(data)) });
        self.net.deliver(self.id, Inbound::SnapshotReport { to, ok });
    }
}

struct Source(mpsc::Receiver<Inbound>);

impl PeerSource for Source {
    fn poll_recv(&mut self, cx: &mut Context<'_>) -> Poll<Option<Inbound>> {
        self.0.poll_recv(cx)
    }
}
