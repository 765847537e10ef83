//! The server's side of the replicated state machine ([`raftkv_kvsm`]): applied changes go
//! to the watch streams, snapshot timings to the metrics.

use std::sync::Arc;
use std::time::Duration;

use raftkv_kv::{ColdStore, KvConfig, KvStore};
pub use raftkv_kvsm::{MemberAttributes, Output};

use crate::watch::WatchHub;

/// The state machine as the server runs it.
pub type KvMachine = raftkv_kvsm::KvMachine<ServerHooks>;

/// What the server does around applying and snapshots.
pub struct ServerHooks {
    /// Where applied changes go to the watch streams ([`crate::watch`]).
    pub watch: Arc<WatchHub>,
}

impl raftkv_kvsm::Hooks for ServerHooks {
    fn after_apply(&self, kv: &mut KvStore) {
        self.watch.after_apply(kv);
    }

    fn restored(&self, kv: &mut KvStore) {
        self.watch.restored(kv);
    }

    fn snapshot_saved(&self, took: Duration) {
        crate::metrics::get().snapshot_saved(took);
    }

    fn snapshot_restored(&self, took: Duration) {
        crate::metrics::get().snapshot_restored(took);
    }
}

/// The server's state machine: history in `cold`, a fresh watch hub.
pub fn new_machine(config: KvConfig, cold: ColdStore) -> KvMachine {
    KvMachine::with_hooks(config, cold, Arc::new(ServerHooks { watch: WatchHub::new(1) }))
}
