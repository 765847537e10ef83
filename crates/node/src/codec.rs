//! Conversions between the core's types and the storage crate's plain records.

/// A stored record or snapshot meta the core cannot take.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct CodecError(String);

use std::collections::BTreeSet;

use bytes::{Buf, BufMut, Bytes, BytesMut};
use raftkv_raft::{ClusterConfig, Entry, EntryKind, HardState, LogIndex, NodeId, SnapshotMeta, Term};
use raftkv_storage as storage;

pub fn entry_to_record(e: &Entry) -> storage::LogRecord {
    storage::LogRecord { index: e.index.0, term: e.term.0, kind: e.kind.code(), data: e.data.clone() }
}

pub fn record_to_entry(r: storage::LogRecord) -> Result<Entry, CodecError> {
    let kind = EntryKind::from_code(r.kind)
        .ok_or_else(|| CodecError(format!("log record {} has unknown entry kind {}", r.index, r.kind)))?;
    Ok(Entry { term: Term(r.term), index: LogIndex(r.index), kind, data: r.data })
}

pub fn hard_state_to_storage(hs: &HardState) -> storage::HardState {
    storage::HardState { term: hs.term.0, voted_for: hs.voted_for.map_or(0, |n| n.0), commit: hs.commit.0 }
}

pub fn hard_state_from_storage(hs: &storage::HardState) -> HardState {
    HardState {
        term: Term(hs.term),
        voted_for: (hs.voted_for != 0).then_some(NodeId(hs.voted_for)),
        commit: LogIndex(hs.commit),
    }
}

fn put_set(buf: &mut BytesMut, set: &BTreeSet<NodeId>) {
    buf.put_u32_le(set.len() as u32);
    for id in set {
        buf.put_u64_le(id.0);
    }
}

fn get_set(buf: &mut &[u8]) -> Result<BTreeSet<NodeId>, CodecError> {
    if buf.remaining() < 4 {
        return Err(CodecError("cluster config truncated".into()));
    }
    let n = buf.get_u32_le() as usize;
    if n > 10_000 || buf.remaining() < n * 8 {
        return Err(CodecError(format!("cluster config claims {n} members")));
    }
    Ok((0..n).map(|_| NodeId(buf.get_u64_le())).collect())
}

pub fn encode_config(c: &ClusterConfig) -> Bytes {
    let mut buf = BytesMut::new();
    buf.put_u8(1); // version
    put_set(&mut buf, &c.voters);
    put_set(&mut buf, &c.voters_outgoing);
    put_set(&mut buf, &c.learners);
    buf.freeze()
}

pub fn decode_config(mut b: &[u8]) -> Result<ClusterConfig, CodecError> {
    if b.first() != Some(&1) {
        return Err(CodecError("unknown cluster config encoding".into()));
    }
    b.advance(1);
    let voters = get_set(&mut b)?;
    let voters_outgoing = get_set(&mut b)?;
    let learners = get_set(&mut b)?;
    Ok(ClusterConfig { voters, voters_outgoing, learners })
}

pub fn meta_to_storage(m: &SnapshotMeta) -> storage::SnapshotMeta {
    storage::SnapshotMeta { index: m.index.0, term: m.term.0, config: encode_config(&m.config) }
}

pub fn meta_from_storage(m: &storage::SnapshotMeta) -> Result<SnapshotMeta, CodecError> {
    Ok(SnapshotMeta { index: LogIndex(m.index), term: Term(m.term), config: decode_config(&m.config)? })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_round_trip_and_garbage() {
        let c = ClusterConfig::new([NodeId(3), NodeId(9)]);
        assert_eq!(decode_config(&encode_config(&c)).expect("round trip"), c);
        assert!(decode_config(&[1, 255, 255, 255, 255]).is_err());
        assert!(decode_config(&[]).is_err());
    }
}
