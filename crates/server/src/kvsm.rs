//! The replicated state machine of a raftkv member: the MVCC key-value store plus the
//! members' published attributes (client URLs), both in every snapshot.

use std::collections::BTreeMap;
use std::io::{self, BufReader, Read, Write};

use raftkv_api::Command;
use raftkv_kv::{ApplyResult, ColdStore, KvConfig, KvError, KvStore, SnapshotPoint};
use serde::{Deserialize, Serialize};

use crate::node::{StateMachine, Visit};

/// First byte of an entry that is not a key-value command. A protobuf-encoded command can
/// never start with 0 (field number 0 does not exist).
const INTERNAL_TAG: u8 = 0;

/// What a member publishes about itself through the log when it starts.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemberAttributes {
    pub id: u64,
    pub name: String,
    pub client_urls: Vec<String>,
}

#[derive(Serialize, Deserialize)]
enum Internal {
    Publish { request_id: u64, attributes: MemberAttributes },
}

/// The outcome of applying one client command.
#[derive(Debug)]
pub enum Output {
    Kv(Result<ApplyResult, KvError>),
    Published,
}

pub struct KvMachine {
    pub kv: KvStore,
    pub members: BTreeMap<u64, MemberAttributes>,
    config: KvConfig,
    /// A write error of the history cache file is being reported (logged once).
    cold_error_logged: bool,
    /// Counts restores: a pin taken outside the driver (HashKV) is only valid, and only
    /// released, on the store it was taken on.
    pub generation: u64,
}

impl KvMachine {
    /// A state machine that keeps superseded values in memory.
    #[cfg(test)]
    pub fn new(config: KvConfig) -> KvMachine {
        Self::with_cold_store(config, ColdStore::memory())
    }

    /// A state machine that keeps superseded values in `cold` (see [`ColdStore`]); a
    /// restored snapshot gets a fresh store of the same kind.
    pub fn with_cold_store(config: KvConfig, cold: ColdStore) -> KvMachine {
        KvMachine {
            kv: KvStore::with_cold_store(config.clone(), cold),
            members: BTreeMap::new(),
            config,
            cold_error_logged: false,
            generation: 0,
        }
    }

    /// Logs when writing the history cache file starts or stops failing (the values are
    /// kept in memory meanwhile; nothing is lost).
    fn report_cold_store(&mut self) {
        match (self.kv.cold_store().write_error(), self.cold_error_logged) {
            (Some(e), false) => {
                tracing::warn!(error = %e, "cannot write the history cache file; keeping past versions in memory");
                self.cold_error_logged = true;
            }
            (None, true) => {
                tracing::info!("history cache file writable again");
                self.cold_error_logged = false;
            }
            _ => {}
        }
    }

    /// Encodes a publish entry.
    pub fn encode_publish(request_id: u64, attributes: MemberAttributes) -> Vec<u8> {
        let mut out = vec![INTERNAL_TAG];
        // Serialising a plain struct of strings and integers cannot fail.
        out.extend(serde_json::to_vec(&Internal::Publish { request_id, attributes }).unwrap_or_default());
        out
    }
}

impl StateMachine for KvMachine {
    type Output = Output;

    fn apply(&mut self, index: u64, data: &[u8]) -> Option<(u64, Output)> {
        if data.first() == Some(&INTERNAL_TAG) {
            return match serde_json::from_slice::<Internal>(&data[1..]) {
                Ok(Internal::Publish { request_id, attributes }) => {
                    self.members.insert(attributes.id, attributes);
                    Some((request_id, Output::Published))
                }
                Err(e) => {
                    tracing::warn!(index, error = %e, "skipping an undecodable internal entry");
                    None
                }
            };
        }
        match Command::decode_from(data) {
            Ok(cmd) => {
                let id = cmd.id;
                let out = self.kv.apply(cmd);
                self.report_cold_store();
                Some((id, Output::Kv(out)))
            }
            Err(e) => {
                // Every replica skips it alike, so replicas stay equal.
                tracing::warn!(index, error = %e, "skipping an undecodable command");
                None
            }
        }
    }

    type Pin = (SnapshotPoint, BTreeMap<u64, MemberAttributes>);

    fn pin(&mut self) -> Self::Pin {
        (self.kv.pin(), self.members.clone())
    }

    fn write_snapshot(pin: &Self::Pin, w: &mut dyn Write, visit: &mut Visit<'_, Self>) -> io::Result<()> {
        let mut w = w;
        KvStore::write_pinned(&pin.0, &mut w, |f| visit(&mut |m: &KvMachine| f(&m.kv)))?;
        let members = serde_json::to_vec(&pin.1).map_err(io::Error::other)?;
        w.write_all(&(members.len() as u32).to_le_bytes())?;
        w.write_all(&members)
    }

    fn unpin(&mut self, _pin: Self::Pin) {
        self.kv.unpin();
    }

    fn restore(&mut self, r: &mut dyn Read) -> Result<(), String> {
        let mut r = BufReader::new(r);
        let cold =
            self.kv.cold_store().fresh().map_err(|e| format!("cannot create the history cache file: {e}"))?;
        let kv = KvStore::restore_with(&mut r, self.config.clone(), cold).map_err(|e| e.to_string())?;
        let mut len = [0u8; 4];
        r.read_exact(&mut len).map_err(|e| format!("snapshot members section: {e}"))?;
        let len = u32::from_le_bytes(len) as usize;
        if len > 64 << 20 {
            return Err(format!("snapshot members section claims {len} bytes"));
        }
        let mut buf = vec![0u8; len];
        r.read_exact(&mut buf).map_err(|e| format!("snapshot members section: {e}"))?;
        let members = serde_json::from_slice(&buf).map_err(|e| format!("snapshot members section: {e}"))?;
        self.kv = kv;
        self.members = members;
        self.generation += 1;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use raftkv_api::etcdserverpb::PutRequest;

    #[test]
    fn snapshot_round_trip_with_members_and_garbage_is_rejected() {
        let mut m = KvMachine::new(KvConfig::default());
        let put = Command::put(7, PutRequest { key: "k".into(), value: "v".into(), ..Default::default() });
        let out = m.apply(1, &put.encode_to_bytes());
        assert!(matches!(out, Some((7, Output::Kv(Ok(_))))));
        let attrs =
            MemberAttributes { id: 5, name: "m5".into(), client_urls: vec!["http://127.0.0.1:1".into()] };
        assert!(matches!(
            m.apply(2, &KvMachine::encode_publish(9, attrs.clone())),
            Some((9, Output::Published))
        ));
        assert!(m.apply(3, b"\x00garbage").is_none());
        assert!(m.apply(4, b"\xffgarbage").is_none());
        let mut buf = Vec::new();
        let pin = m.pin();
        // A write after the pin is not in the snapshot.
        let later =
            Command::put(8, PutRequest { key: "later".into(), value: "v".into(), ..Default::default() });
        let digest_at_pin = m.kv.digest();
        assert!(matches!(m.apply(5, &later.encode_to_bytes()), Some((8, Output::Kv(Ok(_))))));
        KvMachine::write_snapshot(&pin, &mut buf, &mut |f| f(&m)).expect("snapshot");
        m.unpin(pin);
        let mut other = KvMachine::new(KvConfig::default());
        other.restore(&mut buf.as_slice()).expect("restore");
        assert_eq!(other.kv.digest(), digest_at_pin);
        assert_ne!(other.kv.digest(), m.kv.digest());
        assert_eq!(other.members.get(&5), Some(&attrs));
        let mut bad = buf.clone();
        bad[10] ^= 1;
        assert!(KvMachine::new(KvConfig::default()).restore(&mut bad.as_slice()).is_err());
    }
}
