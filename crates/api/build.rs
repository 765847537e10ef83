//! Generates the Rust types and gRPC stubs from `proto/` with protox (a pure
//! Rust protobuf compiler), so no system `protoc` is needed.
//!
//! With the `json` feature it also generates serde implementations (pbjson)
//! following the proto3 JSON mapping as etcd's JSON gateway speaks it.

use std::io;

const PROTOS: &[&str] = &[
    "mvccpb/kv.proto",
    "etcdserverpb/rpc.proto",
    "authpb/auth.proto",
    "etcdserverpb/auth.proto",
    "raftkvpb/internal.proto",
    "v3lockpb/v3lock.proto",
    "v3electionpb/v3election.proto",
];

fn main() -> io::Result<()> {
    println!("cargo:rerun-if-changed=proto");
    let fds = protox::compile(PROTOS, ["proto"]).map_err(|e| io::Error::other(e.to_string()))?;
    json(&fds)?;
    tonic_prost_build::configure()
        // Every `bytes` field becomes `bytes::Bytes`: values are shared between
        // the store and responses without copying.
        .bytes(".")
        .build_client(true)
        .build_server(true)
        .compile_fds(fds)
}

#[cfg(feature = "json")]
fn json(fds: &prost_types::FileDescriptorSet) -> io::Result<()> {
    use prost::Message;
    pbjson_build::Builder::new()
        .register_descriptors(&fds.encode_to_vec())?
        // etcd's gateway marshals with the .proto field names (`range_end`,
        // `cluster_id`, `peerURLs`) and accepts them and lowerCamelCase.
        .preserve_proto_field_names()
        // Like etcd's gateway, unknown JSON fields are skipped, not refused.
        .ignore_unknown_fields()
        .build(&[".mvccpb", ".authpb", ".etcdserverpb", ".v3lockpb", ".v3electionpb"])
}

#[cfg(not(feature = "json"))]
fn json(_: &prost_types::FileDescriptorSet) -> io::Result<()> {
    Ok(())
}
