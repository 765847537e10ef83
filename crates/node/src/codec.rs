//! Conversions between the core's types and the storage crate's plain records.

/// A stored record or snapshot meta the core cannot take.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct CodecError(String);

use bytes::{BufMut, Bytes, BytesMut};
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

/// Version of a snapshot file's configuration field: 2 is the core's encoding
/// ([`ClusterConfig::encode`], the one peer messages carry too). Version 1 (a little-endian
/// copy of it) was never released and is refused.
const CONFIG_ENCODING: u8 = 2;

pub fn encode_config(c: &ClusterConfig) -> Bytes {
    let mut buf = BytesMut::with_capacity(1 + c.encoded_len());
    buf.put_u8(CONFIG_ENCODING);
    c.encode(&mut buf);
    buf.freeze()
}

pub fn decode_config(b: &[u8]) -> Result<ClusterConfig, CodecError> {
    let Some((&CONFIG_ENCODING, mut rest)) = b.split_first() else {
        return Err(CodecError("unknown cluster config encoding".into()));
    };
    let config = ClusterConfig::decode(&mut rest).map_err(|e| CodecError(e.to_string()))?;
    if !rest.is_empty() {
        return Err(CodecError(format!("cluster config: {} trailing bytes", rest.len())));
    }
    Ok(config)
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
        assert!(decode_config(&[CONFIG_ENCODING, 255, 255, 255, 255]).is_err());
        assert!(decode_config(&[]).is_err());
        // The never-released little-endian version.
        let mut v1 = encode_config(&c).to_vec();
        v1[0] = 1;
        assert!(decode_config(&v1).is_err());
        let mut trailing = encode_config(&c).to_vec();
        trailing.push(0);
        assert!(decode_config(&trailing).is_err());
    }
}
