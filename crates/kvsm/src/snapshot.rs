//! The state machine's snapshot format, in one place.
//!
//! A snapshot goes through three layers:
//!
//! 1. **The snapshot file** (`raftkv_storage::SnapshotStore`, `snap-<term>-<index>.snap`):
//!    a header with the cluster and member ids, the index, term and voters (CRC32C), the
//!    state machine's bytes, and a trailer with their length and CRC32C. The storage crate
//!    owns this envelope and knows nothing of what is inside.
//! 2. **The state machine's bytes**, always read as the *full* layout (integers
//!    little-endian):
//!
//!    ```text
//!    kv snapshot (raftkv_kv, format 4):
//!      magic "RAFTKVS\0" | format u32 = 4
//!      | revision i64 | compact_revision i64
//!      | per key: key_len u32, key, count u32, version records (varints), newest value
//!      | end of keys u32 = 0xFFFF_FFFF
//!      | cold_len u64 | cold_len bytes of superseded values
//!      | crc u32 (CRC32C of everything after the format)
//!    trailer_len u32 | trailer (JSON, at most 256 MiB)
//!    ```
//!
//!    The trailer ([`Trailer`]) is the members' published attributes as a JSON map by
//!    member id or, when leases exist, an object with the members, the leases and the keys
//!    attached to them. The kv part is written and read by `raftkv_kv`
//!    (`KvStore::write_pinned`, `KvStore::restore_with`, which also reads its formats 1
//!    and 2); see `crates/kv/src/snapshot.rs` for the version records.
//! 3. **Thin snapshots** ([`crate::coldseg`]): a member's own snapshots may list the cold
//!    bytes as segment files instead of holding them (magic "RAFTKVT\0"). A thin snapshot
//!    is expanded on the fly into the full layout above whenever it is read, so peers and
//!    restores only ever see the full layout.

use std::collections::BTreeMap;
use std::io::{self, Read, Write};

use raftkv_kv::{
    AttachedRecord, AuthState, AuthStore, ColdStore, KvConfig, KvError, KvStore, LeaseRecord, SnapshotPoint,
};
use serde::{Deserialize, Serialize};

use crate::MemberAttributes;
use crate::alarm::Alarms;
use crate::registry::Registry;

/// Largest trailer (members and lease table) a snapshot may carry.
pub(crate) const MAX_TRAILER: usize = 256 << 20;

/// The section after the key-value state in a snapshot (JSON): the members' published
/// attributes, the lease table, the active alarms, the member registry and the auth state. The
/// oldest form, the members map alone, is still read (as no leases, no alarms, no registry,
/// auth disabled). A struct,
/// not an untagged enum: an untagged enum cannot read the numeric keys of the maps.
#[derive(Serialize, Deserialize)]
pub(crate) struct Trailer {
    members: BTreeMap<u64, MemberAttributes>,
    #[serde(default)]
    leases: Vec<LeaseRecord>,
    #[serde(default)]
    attached: Vec<AttachedRecord>,
    /// Active alarms (absent in snapshots taken before alarms existed).
    #[serde(default)]
    alarms: Alarms,
    /// The members as configuration changes left them (absent in snapshots taken before
    /// membership changes existed, and in snapshots made from a backup).
    #[serde(default)]
    registry: Option<Registry>,
    /// The auth state; absent (older snapshots, or never used) reads as auth disabled.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    auth: Option<AuthState>,
}

impl Trailer {
    /// The trailer of `kv` with `members`, `alarms`, `registry` and the auth state `auth`.
    pub(crate) fn of(
        kv: &KvStore,
        members: &BTreeMap<u64, MemberAttributes>,
        alarms: &Alarms,
        registry: Option<&Registry>,
        auth: Option<&AuthStore>,
    ) -> Trailer {
        let auth = auth.filter(|a| !a.is_pristine()).map(AuthStore::export);
        let (leases, attached) = kv.leases().export();
        Trailer {
            members: members.clone(),
            leases,
            attached,
            alarms: alarms.clone(),
            registry: registry.cloned(),
            auth,
        }
    }

    /// The trailer's bytes (without their length).
    pub(crate) fn encode(&self) -> io::Result<Vec<u8>> {
        let bytes = serde_json::to_vec(self).map_err(io::Error::other)?;
        if bytes.len() > MAX_TRAILER {
            return Err(io::Error::other(format!(
                "the members and lease table take {} bytes, more than a snapshot holds ({MAX_TRAILER})",
                bytes.len()
            )));
        }
        Ok(bytes)
    }
}

/// Why a snapshot cannot be restored.
#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    /// The store for the restored history cannot be made.
    #[error("cannot create the history cache file: {0}")]
    ColdStore(io::Error),
    /// The key-value part is damaged or of an unknown format.
    #[error("{0}")]
    Kv(KvError),
    /// The members section cannot be read.
    #[error("snapshot members section: {0}")]
    Trailer(String),
    /// The lease table does not fit the restored keys.
    #[error("snapshot lease table: {0}")]
    Leases(KvError),
    /// A thin snapshot cannot be expanded.
    #[error(transparent)]
    Thin(#[from] crate::coldseg::ThinError),
}

/// Writes the full layout of the state at `point` followed by the trailer bytes.
pub(crate) fn write_full(
    point: &SnapshotPoint,
    trailer: &[u8],
    w: &mut dyn Write,
    visit: impl FnMut(&mut dyn FnMut(&KvStore)),
) -> io::Result<()> {
    let mut w = w;
    KvStore::write_pinned(point, &mut w, visit)?;
    w.write_all(&(trailer.len() as u32).to_le_bytes())?;
    w.write_all(trailer)
}

/// Writes a self-contained snapshot of `kv` with `members` and the auth state `auth` (for
/// example to seed a new member's data dir from a backup). Pins the store while it writes.
pub fn write_store_snapshot(
    kv: &mut KvStore,
    members: &BTreeMap<u64, MemberAttributes>,
    auth: Option<&AuthStore>,
    w: &mut dyn Write,
) -> io::Result<()> {
    let trailer = Trailer::of(kv, members, &Alarms::default(), None, auth).encode()?;
    let point = kv.pin();
    let written = write_full(&point, &trailer, w, |f| f(kv));
    kv.unpin();
    written
}

/// What a snapshot in the full layout holds besides the store.
pub(crate) struct TrailerState {
    pub(crate) members: BTreeMap<u64, MemberAttributes>,
    pub(crate) alarms: Alarms,
    pub(crate) registry: Option<Registry>,
    pub(crate) auth: AuthStore,
}

/// Reads a snapshot in the full layout: the store (its history kept in `cold`), the
/// members, the active alarms, the registry and the auth state (disabled when the
/// snapshot has none).
pub(crate) fn read_full(
    r: &mut impl Read,
    config: KvConfig,
    cold: ColdStore,
) -> Result<(KvStore, TrailerState), SnapshotError> {
    let mut kv = KvStore::restore_with(r, config, cold).map_err(SnapshotError::Kv)?;
    let mut len = [0u8; 4];
    r.read_exact(&mut len).map_err(|e| SnapshotError::Trailer(e.to_string()))?;
    let len = u32::from_le_bytes(len) as usize;
    if len > MAX_TRAILER {
        return Err(SnapshotError::Trailer(format!("claims {len} bytes")));
    }
    let mut buf = Vec::new();
    r.take(len as u64).read_to_end(&mut buf).map_err(|e| SnapshotError::Trailer(e.to_string()))?;
    if buf.len() != len {
        return Err(SnapshotError::Trailer("truncated".into()));
    }
    // The original form first (a map, whose numeric keys an untagged enum cannot read).
    let state = match serde_json::from_slice::<BTreeMap<u64, MemberAttributes>>(&buf) {
        Ok(members) => TrailerState {
            members,
            alarms: Alarms::default(),
            registry: None,
            auth: AuthStore::import(AuthState::default()),
        },
        Err(_) => {
            let t: Trailer =
                serde_json::from_slice(&buf).map_err(|e| SnapshotError::Trailer(e.to_string()))?;
            kv.import_leases(&t.leases, &t.attached).map_err(SnapshotError::Leases)?;
            TrailerState {
                members: t.members,
                alarms: t.alarms,
                registry: t.registry,
                auth: AuthStore::import(t.auth.unwrap_or_default()),
            }
        }
    };
    Ok((kv, state))
}
