//! The etcd v3 API layer: everything between a client's connection and the member.
//!
//! Apart from the `raftkv-api` crate (the etcd protos and their JSON mapping), this is the one
//! place in the server that knows the etcd wire contract: the service and method paths, gRPC
//! framing and status trailers, the metadata clients send (`token`, `hasleader`), the JSON
//! gateway's routes, bodies and HTTP statuses, etcd's request limits and HTTP/2 keepalive.
//! The member side (the crate's other modules) works with etcd's request and response
//! messages and answers with [`tonic::Status`], but does not see how they travel (only the
//! metrics name the gRPC methods, for their counters).
//!
//! **Parts.**
//! - The operations: [`service::Api`], the etcd v3 calls on top of the member's node
//!   (propose through Raft, linearizable reads, the member's state), independent of how they
//!   arrive. The services built on it: KV (served by the client port itself), Maintenance
//!   and Cluster ([`grpc`]), Watch ([`watch`]), Lease and the leader's lessor ([`lease`]),
//!   Lock and Election ([`lock`]), Auth ([`auth`], with JWT tokens in [`jwt`]).
//! - The client port ([`client_port`]): one listener per client URL for gRPC and the JSON
//!   gateway, and its HTTP/2 plumbing: the `:authority` shim for etcd's Go client
//!   ([`authority`]), keepalive pings and their policing ([`keepalive`]), the request limits
//!   ([`limits`]) and `hasleader` ([`require_leader`]).
//! - The JSON gateway ([`gateway`]): etcd 3.4's grpc-gateway routes (`/v3/...`), `/health`
//!   and `/version`.
//!
//! **How a request flows.** [`client_port::serve`] accepts a connection (TLS when
//! configured) and wraps it in the `:authority` shim; its first bytes say HTTP/2 (then the
//! keepalive watcher joins) or HTTP/1.1. On HTTP/2 the key-value calls (Range, Put,
//! DeleteRange, Txn, Compact) are decoded and answered by the client port itself; every
//! other request, and every HTTP/1.1 request, goes to one axum router that holds the tonic
//! services and the gateway's routes. Both HTTP/2 paths check `hasleader` and the message
//! limit the same way, and every request runs inside its caller's [`auth::Call`] scope (set
//! on the key-value path, or by the router's middleware). The service then calls
//! [`service::Api`], which proposes to or reads from the member's node (`raftkv_node`).
//! Answers go back the same way: a protobuf message in gRPC frames, or JSON.
//!
//! The router itself is assembled, and the client port started, by the member's startup
//! ([`crate::member::server`]).

pub mod auth;
pub mod authority;
pub mod client_port;
pub mod gateway;
pub mod grpc;
pub mod jwt;
pub mod keepalive;
pub mod lease;
pub mod limits;
pub mod lock;
pub mod require_leader;
pub mod service;
pub mod watch;
pub mod watch_ranges;
