//! The server's side of the replicated state machine ([`raftkv_kvsm`]): applied changes go
//! to the watch streams, snapshot timings to the metrics, a due history rewrite to the
//! background defragmentation, applied Authenticate commands to the member's simple tokens.

use std::sync::Arc;
use std::time::Duration;

use raftkv_kv::{ColdStore, KvConfig, KvStore};
pub use raftkv_kvsm::{MemberAttributes, Output};
use tokio::sync::Notify;

use crate::api::auth::Tokens;
use crate::api::watch::WatchHub;

/// The state machine as the server runs it.
pub type KvMachine = raftkv_kvsm::KvMachine<ServerHooks>;

/// What the server does around applying and snapshots.
pub struct ServerHooks {
    /// Where applied changes go to the watch streams ([`crate::api::watch`]).
    pub watch: Arc<WatchHub>,
    /// Notified when compaction has left the history store due for a rewrite
    /// ([`crate::member::defrag::rewrite_after_compaction`] carries it out off the apply path).
    pub rewrite_due: Arc<Notify>,
    /// This member's simple auth tokens: applied Authenticate commands record them, applied
    /// auth changes void them ([`crate::api::auth`]).
    pub tokens: Arc<Tokens>,
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

    fn token_issued(&self, user: &str, token: &str, issued_at: u64) {
        self.tokens.record(user, token, issued_at);
    }

    fn tokens_voided(&self, user: Option<&str>) {
        self.tokens.void(user);
    }
}

/// The server's state machine: history in `cold`, a fresh watch hub (progress notifications
/// every `progress_interval`), simple auth tokens that live `token_ttl` after their last use.
pub fn new_machine(
    config: KvConfig,
    cold: ColdStore,
    token_ttl: Duration,
    progress_interval: Duration,
) -> KvMachine {
    let hooks = ServerHooks {
        watch: WatchHub::with_progress_interval(1, progress_interval),
        rewrite_due: Arc::new(Notify::new()),
        tokens: Arc::new(Tokens::new(token_ttl)),
    };
    KvMachine::with_hooks(config, cold, Arc::new(hooks))
}
