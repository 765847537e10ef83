//! A member's identity on disk: `<data-dir>/member/cluster.json` records the cluster id, this
//! member's id and name, and the initial members. Written once at bootstrap (temp file, fsync,
//! rename, fsync of the directory); on restart it wins over the --initial-cluster flags.

use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::config::{self, ClusterState, ServerConfig};

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct MemberRecord {
    pub id: u64,
    pub name: String,
    pub peer_urls: Vec<String>,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct ClusterRecord {
    pub format: u32,
    pub cluster_id: u64,
    pub member_id: u64,
    pub name: String,
    pub token: String,
    pub members: Vec<MemberRecord>,
    /// Started with `--initial-cluster-state existing`: `members` are the cluster's members
    /// as given on the command line, and this member waits to be brought in by the leader
    /// (it never campaigns before a configuration that makes it a voter reaches it).
    #[serde(default)]
    pub joined_existing: bool,
}

pub fn member_dir(data_dir: &Path) -> PathBuf {
    data_dir.join("member")
}

pub fn raft_dir(data_dir: &Path) -> PathBuf {
    member_dir(data_dir).join("raft")
}

fn record_path(data_dir: &Path) -> PathBuf {
    member_dir(data_dir).join("cluster.json")
}

/// The identity this member runs with, and whether it is starting for the first time.
pub struct Identity {
    pub record: ClusterRecord,
    pub fresh: bool,
}

/// Reads the member's identity from its data dir, or derives it from the flags for a new
/// member. Refuses a data dir that belongs to another member or cluster.
pub fn load_or_bootstrap(config: &ServerConfig, token_given: bool) -> Result<Identity, String> {
    let path = record_path(&config.data_dir);
    if path.exists() {
        let text =
            std::fs::read_to_string(&path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
        let record: ClusterRecord = serde_json::from_str(&text).map_err(|e| {
            format!(
                "{} is damaged ({e}); restore it from a backup or remove the member's data dir and re-add it",
                path.display()
            )
        })?;
        if record.format != 1 {
            return Err(format!("{} has unknown format {}", path.display(), record.format));
        }
        if record.name != config.name {
            return Err(format!(
                "data dir {} belongs to member {:?}, not {:?}: use --name {:?} or another --data-dir",
                config.data_dir.display(),
                record.name,
                config.name,
                record.name
            ));
        }
        if token_given && record.token != config.initial_cluster_token {
            return Err(format!(
                "data dir {} belongs to cluster token {:?} (cluster id {:x}), but --initial-cluster-token is {:?}: this data dir is from another cluster",
                config.data_dir.display(),
                record.token,
                record.cluster_id,
                config.initial_cluster_token
            ));
        }
        tracing::info!(
            cluster_id = format!("{:x}", record.cluster_id),
            member_id = format!("{:x}", record.member_id),
            "resuming from the data dir; --initial-cluster flags are ignored"
        );
        return Ok(Identity { record, fresh: false });
    }
    if raft_dir(&config.data_dir).exists() {
        return Err(format!(
            "data dir {} holds Raft data but no {}: an earlier bootstrap was interrupted; remove {} and start again",
            config.data_dir.display(),
            path.display(),
            member_dir(&config.data_dir).display()
        ));
    }
    let joining = config.initial_cluster_state == ClusterState::Existing;
    let token = &config.initial_cluster_token;
    let members: Vec<MemberRecord> = config
        .initial_cluster
        .iter()
        .map(|m| MemberRecord {
            id: config::member_id(m, token),
            name: m.name.clone(),
            peer_urls: m.peer_urls.clone(),
        })
        .collect();
    let mut ids: Vec<u64> = members.iter().map(|m| m.id).collect();
    ids.sort_unstable();
    ids.dedup();
    if ids.len() != members.len() {
        return Err("two members of --initial-cluster share the same peer URLs".into());
    }
    let me = members.iter().find(|m| m.name == config.name).ok_or("member not in --initial-cluster")?;
    let record = ClusterRecord {
        format: 1,
        // A joining member learns the running cluster's id, its own id and the members'
        // from its peers' member list (see `crate::server`); these are replaced before
        // anything is written.
        cluster_id: if joining { 0 } else { config::cluster_id(&config.initial_cluster, token) },
        member_id: me.id,
        name: config.name.clone(),
        token: token.clone(),
        members,
        joined_existing: joining,
    };
    Ok(Identity { record, fresh: true })
}

/// Durably writes the identity record (after the Raft storage was created).
pub fn save(data_dir: &Path, record: &ClusterRecord) -> Result<(), String> {
    let dir = member_dir(data_dir);
    std::fs::create_dir_all(&dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    let tmp = dir.join("cluster.json.tmp");
    let final_path = record_path(data_dir);
    let text = serde_json::to_string_pretty(record).map_err(|e| e.to_string())?;
    let io = |e: std::io::Error| format!("cannot write {}: {e}", tmp.display());
    let mut f = std::fs::File::create(&tmp).map_err(io)?;
    f.write_all(text.as_bytes()).map_err(io)?;
    f.sync_all().map_err(io)?;
    drop(f);
    std::fs::rename(&tmp, &final_path).map_err(|e| format!("cannot rename {}: {e}", tmp.display()))?;
    std::fs::File::open(&dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| format!("cannot sync {}: {e}", dir.display()))?;
    Ok(())
}
