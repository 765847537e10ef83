//! A member's identity on disk: `<data-dir>/member/cluster.json` records the cluster id, this
//! member's id and name, and the initial members. Written once at bootstrap (temp file, fsync,
//! rename, fsync of the directory); on restart it wins over the --initial-cluster flags.

use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::config::{self, ClusterState, ServerConfig};

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct MemberRecord {
    pub id: u64,
    pub name: String,
    pub peer_urls: Vec<String>,
    /// A learner, as the running cluster listed it to a joining member.
    #[serde(default)]
    pub is_learner: bool,
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

/// Why a member's identity cannot be read, derived or written.
#[derive(Debug, Error)]
pub enum MemberError {
    #[error("cannot {action} {}: {source}", path.display())]
    Io { action: &'static str, path: PathBuf, source: std::io::Error },
    #[error("{} is damaged ({source}); restore it from a backup or remove the member's data dir and re-add it", path.display())]
    Damaged { path: PathBuf, source: serde_json::Error },
    #[error("{} has unknown format {format}", path.display())]
    UnknownFormat { path: PathBuf, format: u32 },
    #[error(
        "data dir {} belongs to member {recorded:?}, not {given:?}: use --name {recorded:?} or another --data-dir",
        data_dir.display()
    )]
    OtherMember { data_dir: PathBuf, recorded: String, given: String },
    #[error(
        "data dir {} belongs to cluster token {recorded:?} (cluster id {cluster_id:x}), but --initial-cluster-token is {given:?}: this data dir is from another cluster",
        data_dir.display()
    )]
    OtherCluster { data_dir: PathBuf, recorded: String, cluster_id: u64, given: String },
    #[error(
        "data dir {} holds Raft data but no {}: an earlier bootstrap was interrupted; remove {} and start again",
        data_dir.display(), record.display(), member_dir.display()
    )]
    InterruptedBootstrap { data_dir: PathBuf, record: PathBuf, member_dir: PathBuf },
    #[error("two members of --initial-cluster share the same peer URLs")]
    SharedPeerUrls,
    #[error("member not in --initial-cluster")]
    NotInCluster,
    #[error("cannot encode the member record: {0}")]
    Encode(serde_json::Error),
}

fn io_error<'a>(action: &'static str, path: &'a Path) -> impl FnOnce(std::io::Error) -> MemberError + 'a {
    move |source| MemberError::Io { action, path: path.to_path_buf(), source }
}

/// The identity this member runs with, and whether it is starting for the first time.
pub struct Identity {
    pub record: ClusterRecord,
    pub fresh: bool,
}

/// Reads the member's identity from its data dir, or derives it from the flags for a new
/// member. Refuses a data dir that belongs to another member or cluster.
pub fn load_or_bootstrap(config: &ServerConfig, token_given: bool) -> Result<Identity, MemberError> {
    let path = record_path(&config.data_dir);
    if path.exists() {
        let text = std::fs::read_to_string(&path).map_err(io_error("read", &path))?;
        let record: ClusterRecord = serde_json::from_str(&text)
            .map_err(|source| MemberError::Damaged { path: path.clone(), source })?;
        if record.format != 1 {
            return Err(MemberError::UnknownFormat { path, format: record.format });
        }
        if record.name != config.name {
            return Err(MemberError::OtherMember {
                data_dir: config.data_dir.clone(),
                recorded: record.name,
                given: config.name.clone(),
            });
        }
        if token_given && record.token != config.initial_cluster_token {
            return Err(MemberError::OtherCluster {
                data_dir: config.data_dir.clone(),
                recorded: record.token,
                cluster_id: record.cluster_id,
                given: config.initial_cluster_token.clone(),
            });
        }
        tracing::info!(
            cluster_id = format!("{:x}", record.cluster_id),
            member_id = format!("{:x}", record.member_id),
            "resuming from the data dir; --initial-cluster flags are ignored"
        );
        return Ok(Identity { record, fresh: false });
    }
    if raft_dir(&config.data_dir).exists() {
        return Err(MemberError::InterruptedBootstrap {
            data_dir: config.data_dir.clone(),
            record: path,
            member_dir: member_dir(&config.data_dir),
        });
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
            is_learner: false,
        })
        .collect();
    let mut ids: Vec<u64> = members.iter().map(|m| m.id).collect();
    ids.sort_unstable();
    ids.dedup();
    if ids.len() != members.len() {
        return Err(MemberError::SharedPeerUrls);
    }
    let me = members.iter().find(|m| m.name == config.name).ok_or(MemberError::NotInCluster)?;
    let record = ClusterRecord {
        format: 1,
        // A joining member learns the running cluster's id, its own id and the members'
        // from its peers' member list (see `crate::member::server`); these are replaced before
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
pub fn save(data_dir: &Path, record: &ClusterRecord) -> Result<(), MemberError> {
    let dir = member_dir(data_dir);
    std::fs::create_dir_all(&dir).map_err(io_error("create", &dir))?;
    let tmp = dir.join("cluster.json.tmp");
    let final_path = record_path(data_dir);
    let text = serde_json::to_string_pretty(record).map_err(MemberError::Encode)?;
    let mut f = std::fs::File::create(&tmp).map_err(io_error("write", &tmp))?;
    f.write_all(text.as_bytes()).map_err(io_error("write", &tmp))?;
    f.sync_all().map_err(io_error("write", &tmp))?;
    drop(f);
    std::fs::rename(&tmp, &final_path).map_err(io_error("rename", &tmp))?;
    std::fs::File::open(&dir).and_then(|d| d.sync_all()).map_err(io_error("sync", &dir))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::ServerArgs;

    fn config(name: &str, dir: &Path) -> ServerConfig {
        let args = ServerArgs { name: Some(name.into()), data_dir: Some(dir.into()), ..Default::default() };
        ServerConfig::resolve(args).expect("valid flags")
    }

    /// Each refusal of a data dir says which dir or file and what to do.
    #[test]
    fn a_data_dir_of_another_member_or_damaged_is_refused_by_name() {
        let dir = tempfile::tempdir().expect("temp dir");
        let first = load_or_bootstrap(&config("default", dir.path()), false).expect("bootstrap");
        save(dir.path(), &first.record).expect("save");
        let again = load_or_bootstrap(&config("default", dir.path()), false).expect("resume");
        assert!(!again.fresh);
        assert_eq!(again.record, first.record);

        let e = load_or_bootstrap(&config("other", dir.path()), false).err().expect("another name");
        assert!(matches!(&e, MemberError::OtherMember { recorded, .. } if recorded == "default"), "{e:?}");
        assert!(e.to_string().contains("use --name \"default\""), "{e}");

        std::fs::write(record_path(dir.path()), b"{not json").expect("damage");
        let e = load_or_bootstrap(&config("default", dir.path()), false).err().expect("damaged");
        assert!(matches!(e, MemberError::Damaged { .. }), "{e:?}");
        assert!(e.to_string().contains("cluster.json is damaged"), "{e}");

        std::fs::remove_file(record_path(dir.path())).expect("remove");
        std::fs::create_dir_all(raft_dir(dir.path())).expect("raft dir");
        let e = load_or_bootstrap(&config("default", dir.path()), false).err().expect("interrupted");
        assert!(matches!(e, MemberError::InterruptedBootstrap { .. }), "{e:?}");
    }
}
