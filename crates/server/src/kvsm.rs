//! The server's side of the replicated state machine ([`raftkv_kvsm`]): applied changes go
//! to the watch streams, snapshot timings to the metrics, a due history rewrite to the
//! background defragmentation.

use std::sync::Arc;
use std::time::Duration;

use raftkv_kv::{ColdStore, KvConfig, KvStore};
pub use raftkv_kvsm::{MemberAttributes, Output};
use tokio::sync::Notify;

use crate::watch::WatchHub;

/// The state machine as the server runs it.
pub type KvMachine = raftkv_kvsm::KvMachine<ServerHooks>;

/// What the server does around applying and snapshots.
pub struct ServerHooks {
    /// Where applied changes go to the watch streams ([`crate::watch`]).
    pub watch: Arc<WatchHub>,
    /// Notified when compaction has left the history store due for a rewrite
    /// ([`crate::defrag::rewrite_after_compaction`] carries it out off the apply path).
    pub rewrite_due: Arc<Notify>,
}

impl raftkv_kvsm::Hooks for ServerHooks {
    fn after_apply(&self, kv: &mut KvStore) {
        self.watch.after_apply(kv);
        if kv.rewrite_due() {
            self.rewrite_due.notify_one();
        }
    }

    fn restored(&self, kv: &mut KvStore) {
        self.watch.restored(kv);
        if kv.rewrite_due() {
            self.rewrite_due.notify_one();
        }
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
    let hooks = ServerHooks { watch: WatchHub::new(1), rewrite_due: Arc::new(Notify::new()) };
    KvMachine::with_hooks(config, cold, Arc::new(hooks))
}
