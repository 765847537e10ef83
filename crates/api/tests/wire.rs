//! Wire compatibility: bytes produced by a real etcd 3.4.23 server
//! (`etcdctl -w protobuf get wire/ --prefix`) decode into our types, and our
//! encoding of the decoded message is byte-identical.
#![allow(clippy::unwrap_used)]

use prost::Message;
use raftkv_api::etcdserverpb::RangeResponse;

const ETCD_RANGE_RESPONSE: &str = "0a180887d5edba8fd59dc10410c0c0caafc1ba96892e1811200212130a07776972652f6b311010181020012a02763112130a07776972652f6b321011181120012a0276322002";

fn unhex(s: &str) -> Vec<u8> {
    (0..s.len()).step_by(2).map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap()).collect()
}

#[test]
fn decodes_etcd_range_response() {
    let bytes = unhex(ETCD_RANGE_RESPONSE);
    let r = RangeResponse::decode(&bytes[..]).unwrap();
    let h = r.header.unwrap();
    assert_eq!(
        (h.cluster_id, h.member_id, h.revision, h.raft_term),
        (324952591200643719, 3319814642761637952, 17, 2)
    );
    assert_eq!(r.count, 2);
    assert!(!r.more);
    let kvs: Vec<_> = r
        .kvs
        .iter()
        .map(|kv| (kv.key.as_ref(), kv.create_revision, kv.mod_revision, kv.version, kv.value.as_ref()))
        .collect();
    assert_eq!(kvs, [(&b"wire/k1"[..], 16, 16, 1, &b"v1"[..]), (&b"wire/k2"[..], 17, 17, 1, &b"v2"[..])]);
    assert_eq!(r.encode_to_vec(), bytes);
}
