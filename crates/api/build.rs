//! Generates the Rust types and gRPC stubs from `proto/` with protox (a pure
//! Rust protobuf compiler), so no system `protoc` is needed.

use std::io;

const PROTOS: &[&str] = &["mvccpb/kv.proto", "etcdserverpb/rpc.proto", "raftkvpb/internal.proto"];

fn main() -> io::Result<()> {
    println!("cargo:rerun-if-changed=proto");
    let fds = protox::compile(PROTOS, ["proto"]).map_err(|e| io::Error::other(e.to_string()))?;
    tonic_prost_build::configure()
        // Every `bytes` field becomes `bytes::Bytes`: values are shared between
        // the store and responses without copying.
        .bytes(".")
        .build_client(true)
        .build_server(true)
        .compile_fds(fds)
}
