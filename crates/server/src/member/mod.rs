//! The member side: one member of the cluster under the etcd v3 API layer ([`crate::api`]).
//!
//! - Starting and stopping a member ([`server`]): its identity on disk ([`identity`]), the
//!   storage, the peer transport and the runtime's driver (`raftkv_node`), the state
//!   machine ([`kvsm`]: the server's hooks into `raftkv_kvsm`, which feed the watch hub, the
//!   simple tokens, the metrics and the background defragmentation), then the client API.
//! - Between members: the driver's network over the peer transport ([`peer`]), the calls a
//!   follower hands to the leader ([`forward`]), and membership changes with the member
//!   registry and etcd's Cluster API calls on it ([`membership`]).
//! - The store's upkeep: the space quota and alarms ([`quota`], [`alarm`]), defragmentation
//!   ([`defrag`]), auto-compaction ([`autocompact`]), and backups in etcd's format
//!   ([`backup`], on the bbolt file format in [`bolt`]).
//!
//! Some operations of [`crate::api::service::Api`] live here, with the state they act on
//! (`impl Api` blocks for alarms, the quota check, member changes and defragmentation; the
//! Snapshot stream in [`backup`]); the API layer's services call them like any other.

pub mod alarm;
pub mod autocompact;
pub mod backup;
pub mod bolt;
pub mod defrag;
pub mod forward;
pub mod identity;
pub mod kvsm;
pub mod membership;
pub mod peer;
pub mod quota;
pub mod server;
