//! raftkv's wire contract.
//!
//! * [`etcdserverpb`] and [`mvccpb`]: the etcd v3 compatible client API (the
//!   `KV`, `Watch`, `Lease`, `Cluster` and `Maintenance` services and their
//!   messages). Names, field numbers and enum values are those etcd v3 clients
//!   use, so `etcdctl` and etcd client libraries work against raftkv.
//! * [`raftkvpb`]: the commands replicated through the Raft log
//!   ([`Command`] = [`raftkvpb::InternalRequest`]).
//!
//! All protobuf `bytes` fields are [`bytes::Bytes`].
//!
//! With the `json` feature, the [`etcdserverpb`] and [`mvccpb`] messages also
//! implement `serde::Serialize`/`Deserialize` following the proto3 JSON mapping
//! the way etcd's JSON gateway applies it: the .proto field names on output
//! (`range_end`, `cluster_id`, `peerURLs`), those names or lowerCamelCase on
//! input, `bytes` as base64, 64-bit integers as strings, enums by name (names
//! or numbers on input), default values omitted, unknown fields ignored.

pub use bytes;
pub use prost;
pub use tonic;

/// The key-value record and change events (`mvccpb` package).
#[allow(clippy::all, clippy::pedantic, missing_docs)]
pub mod mvccpb {
    include!(concat!(env!("OUT_DIR"), "/mvccpb.rs"));
    #[cfg(feature = "json")]
    include!(concat!(env!("OUT_DIR"), "/mvccpb.serde.rs"));
}

/// etcd's auth records: users, roles and permissions (`authpb` package).
#[allow(clippy::all, clippy::pedantic, missing_docs)]
pub mod authpb {
    include!(concat!(env!("OUT_DIR"), "/authpb.rs"));
    #[cfg(feature = "json")]
    include!(concat!(env!("OUT_DIR"), "/authpb.serde.rs"));
}

/// The etcd v3 client API (`etcdserverpb` package).
#[allow(clippy::all, clippy::pedantic, missing_docs)]
pub mod etcdserverpb {
    include!(concat!(env!("OUT_DIR"), "/etcdserverpb.rs"));
    #[cfg(feature = "json")]
    include!(concat!(env!("OUT_DIR"), "/etcdserverpb.serde.rs"));
}

/// etcd's Lock service (`v3lockpb` package).
#[allow(clippy::all, clippy::pedantic, missing_docs)]
pub mod v3lockpb {
    include!(concat!(env!("OUT_DIR"), "/v3lockpb.rs"));
    #[cfg(feature = "json")]
    include!(concat!(env!("OUT_DIR"), "/v3lockpb.serde.rs"));
}

/// etcd's Election service (`v3electionpb` package).
#[allow(clippy::all, clippy::pedantic, missing_docs)]
pub mod v3electionpb {
    include!(concat!(env!("OUT_DIR"), "/v3electionpb.rs"));
    #[cfg(feature = "json")]
    include!(concat!(env!("OUT_DIR"), "/v3electionpb.serde.rs"));
}

/// raftkv's replicated command format (`raftkvpb` package).
#[allow(clippy::all, clippy::pedantic, missing_docs)]
pub mod raftkvpb {
    include!(concat!(env!("OUT_DIR"), "/raftkvpb.rs"));
}

mod command;

pub use command::{Command, CommandDecodeError, Request};
