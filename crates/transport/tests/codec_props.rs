//! Property tests of the codec: round trips, and no panic on any input.
#![allow(clippy::unwrap_used)]

use std::collections::BTreeSet;

use bytes::{Bytes, BytesMut};
use proptest::prelude::*;
use raftkv_raft::{
    ClusterConfig, Entry, EntryKind, LogIndex, Message, MessageBody, NodeId, RejectHint, SnapshotMeta, Term,
};
use raftkv_transport::codec::{
    self, Hello, HelloOk, HelloRefused, SnapshotAck, SnapshotBegin, SnapshotChunk, SnapshotEnd,
};
use raftkv_transport::{decode, decode_slice, encode};

fn data() -> impl Strategy<Value = Bytes> {
    prop::collection::vec(any::<u8>(), 0..64).prop_map(Bytes::from)
}

fn entry() -> impl Strategy<Value = Entry> {
    (any::<u64>(), any::<u64>(), 0u8..3, data()).prop_map(|(t, i, k, data)| Entry {
        term: Term(t),
        index: LogIndex(i),
        kind: EntryKind::from_code(k).unwrap(),
        data,
    })
}

fn set() -> impl Strategy<Value = BTreeSet<NodeId>> {
    prop::collection::btree_set(any::<u64>().prop_map(NodeId), 0..6)
}

fn body() -> impl Strategy<Value = MessageBody> {
    prop_oneof![
        (any::<bool>(), any::<u64>(), any::<u64>(), any::<bool>()).prop_map(|(p, i, t, x)| {
            MessageBody::RequestVote {
                pre_vote: p,
                last_log_index: LogIndex(i),
                last_log_term: Term(t),
                transfer: x,
            }
        }),
        (any::<bool>(), any::<bool>())
            .prop_map(|(p, g)| MessageBody::RequestVoteResponse { pre_vote: p, granted: g }),
        (any::<u64>(), any::<u64>(), prop::collection::vec(entry(), 0..8), any::<u64>()).prop_map(
            |(pi, pt, entries, c)| MessageBody::AppendEntries {
                prev_log_index: LogIndex(pi),
                prev_log_term: Term(pt),
                entries,
                leader_commit: LogIndex(c)
            }
        ),
        (any::<u64>(), prop::option::of((prop::option::of(any::<u64>()), any::<u64>()))).prop_map(
            |(i, r)| {
                MessageBody::AppendEntriesResponse {
                    index: LogIndex(i),
                    reject: r.map(|(t, ci)| RejectHint {
                        conflict_term: t.map(Term),
                        conflict_index: LogIndex(ci),
                    }),
                }
            }
        ),
        (any::<u64>(), any::<u64>())
            .prop_map(|(c, r)| MessageBody::Heartbeat { commit: LogIndex(c), read_round: r }),
        any::<u64>().prop_map(|r| MessageBody::HeartbeatResponse { read_round: r }),
        (any::<u64>(), any::<u64>(), set(), set(), set()).prop_map(|(i, t, v, o, l)| {
            MessageBody::InstallSnapshot {
                meta: SnapshotMeta {
                    index: LogIndex(i),
                    term: Term(t),
                    config: ClusterConfig { voters: v, voters_outgoing: o, learners: l },
                },
            }
        }),
        any::<u64>().prop_map(|c| MessageBody::ReadIndexRequest { context: c }),
        (any::<u64>(), prop::option::of(any::<u64>()))
            .prop_map(|(c, i)| MessageBody::ReadIndexResponse { context: c, index: i.map(LogIndex) }),
        prop::collection::vec(data(), 0..8).prop_map(|entries| MessageBody::Propose { entries }),
        Just(MessageBody::TimeoutNow),
    ]
}

fn message() -> impl Strategy<Value = Message> {
    (any::<u64>(), any::<u64>(), any::<u64>(), body()).prop_map(|(f, t, term, body)| Message {
        from: NodeId(f),
        to: NodeId(t),
        term: Term(term),
        body,
    })
}

fn encoded(m: &Message) -> Vec<u8> {
    let mut buf = BytesMut::new();
    encode(m, &mut buf).unwrap();
    assert_eq!(buf.len(), codec::encoded_len(m));
    buf.to_vec()
}

/// Feeds `bytes` to every decoder; none may panic.
fn decode_everything(bytes: &[u8]) {
    let b = Bytes::copy_from_slice(bytes);
    let _ = decode(b.clone());
    let _ = Hello::decode(b.clone());
    let _ = HelloOk::decode(b.clone());
    let _ = HelloRefused::decode(b.clone());
    let _ = SnapshotBegin::decode(b.clone());
    let _ = SnapshotChunk::decode(b.clone());
    let _ = SnapshotEnd::decode(b.clone());
    let _ = SnapshotAck::decode(b);
    let mut frames = BytesMut::from(bytes);
    while let Ok(Some((_, payload))) = codec::split_frame(&mut frames, 1 << 20) {
        let _ = decode(payload);
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

    #[test]
    fn messages_round_trip(m in message()) {
        let bytes = encoded(&m);
        prop_assert_eq!(decode_slice(&bytes).unwrap(), m.clone());
        // And inside a frame.
        let mut buf = BytesMut::new();
        codec::encode_message_frame(&m, 1 << 20, &mut buf).unwrap();
        let (ty, payload) = codec::split_frame(&mut buf, 1 << 20).unwrap().unwrap();
        prop_assert_eq!(ty, codec::FrameType::Message);
        prop_assert_eq!(decode(payload).unwrap(), m);
        prop_assert!(buf.is_empty());
    }

    #[test]
    fn random_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..512)) {
        decode_everything(&bytes);
    }

    #[test]
    fn truncated_messages_are_errors(m in message(), cut in any::<prop::sample::Index>()) {
        let bytes = encoded(&m);
        let cut = cut.index(bytes.len());
        prop_assert!(decode_slice(&bytes[..cut]).is_err());
        decode_everything(&bytes[..cut]);
    }

    #[test]
    fn bit_flipped_messages_never_panic(m in message(), pos in any::<prop::sample::Index>(), bit in 0u8..8) {
        let mut bytes = encoded(&m);
        let i = pos.index(bytes.len());
        bytes[i] ^= 1 << bit;
        // Either an error or some message that re-encodes to exactly these bytes
        // (the encoding is canonical).
        if let Ok(back) = decode_slice(&bytes) {
            prop_assert_eq!(encoded(&back), bytes.clone());
        }
        decode_everything(&bytes);
    }

    #[test]
    fn bit_flipped_frames_never_panic(
        ms in prop::collection::vec(message(), 1..4),
        pos in any::<prop::sample::Index>(),
        bit in 0u8..8,
    ) {
        let mut buf = BytesMut::new();
        for m in &ms {
            codec::encode_message_frame(m, 1 << 20, &mut buf).unwrap();
        }
        let i = pos.index(buf.len());
        buf[i] ^= 1 << bit;
        decode_everything(&buf);
    }

    #[test]
    fn snapshot_frames_round_trip(
        offset in any::<u64>(),
        data in prop::collection::vec(any::<u8>(), 0..300),
        ok in any::<bool>(),
        reason in ".{0,40}",
        m in message(),
    ) {
        let chunk = SnapshotChunk { offset, data: Bytes::from(data.clone()), crc32c: crc32c::crc32c(&data) };
        let mut buf = BytesMut::new();
        chunk.encode(1 << 20, &mut buf).unwrap();
        SnapshotAck { ok, reason: reason.clone() }.encode(&mut buf);
        SnapshotBegin { total_len: offset, message: m.clone() }.encode(1 << 20, &mut buf).unwrap();
        let (_, p) = codec::split_frame(&mut buf, 1 << 20).unwrap().unwrap();
        prop_assert_eq!(SnapshotChunk::decode(p).unwrap(), chunk);
        let (_, p) = codec::split_frame(&mut buf, 1 << 20).unwrap().unwrap();
        prop_assert_eq!(SnapshotAck::decode(p).unwrap(), SnapshotAck { ok, reason });
        let (_, p) = codec::split_frame(&mut buf, 1 << 20).unwrap().unwrap();
        prop_assert_eq!(SnapshotBegin::decode(p).unwrap(), SnapshotBegin { total_len: offset, message: m });
    }
}
