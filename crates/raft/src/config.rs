//! Static configuration of one node.

use crate::types::NodeId;

/// How a node behaves. Times are in logical ticks: the driver calls [`crate::Raft::tick`] at a
/// fixed interval (for example every 100 ms), so `election_timeout_ticks = 10` means about one
/// second.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Config {
    /// This node's id; must not be zero.
    pub id: NodeId,
    /// The base election timeout `T`. Each follower and candidate waits a random time in
    /// `[T, 2T)` ticks without hearing from a leader before it campaigns (§5.2). CheckQuorum
    /// and the PreVote lease also use `T`.
    pub election_timeout_ticks: u32,
    /// How often a leader sends heartbeats. Must be smaller than the election timeout.
    pub heartbeat_interval_ticks: u32,
    /// Probe with PreVote before raising the term, so a node rejoining after a partition does
    /// not depose a healthy leader (thesis §9.6).
    pub pre_vote: bool,
    /// A leader steps down when it has not heard from a quorum within an election timeout,
    /// and followers ignore vote requests while they hear from a leader (thesis §6.2).
    pub check_quorum: bool,
    /// At most this many AppendEntries in flight to one follower in the replicate state.
    pub inflight_messages_max: usize,
    /// Soft cap on the payload bytes of one AppendEntries (one entry is always sent, however
    /// large, so progress is possible).
    pub append_bytes_max: u64,
    /// Proposals are refused with [`crate::ProposeError::TooManyUncommitted`] while the
    /// leader's uncommitted log tail exceeds this many bytes: backpressure on clients.
    pub uncommitted_bytes_max: u64,
    /// At most this many ReadIndex requests waiting on one leader.
    pub pending_reads_max: usize,
    /// A leader compacting its log after a snapshot keeps, past the compaction point the
    /// application asked for, the entries that followers it heard from within an election
    /// timeout still need (those it streams to, and those a snapshot in flight will bring
    /// up to its index), up to this many bytes. Without it a follower that lags by a few
    /// entries is sent a snapshot, and under steady writes may need a new one as soon as it
    /// installed the last.
    pub catch_up_bytes_max: u64,
    /// ... and up to what streaming takes this many round trips at the flow control above
    /// (`inflight_messages_max` AppendEntries of up to `append_bytes_max` each per round
    /// trip). A follower further behind is sent a snapshot instead: with tight flow control
    /// a long replay, one small message per round trip, would hold a new voter (and the
    /// commits that need it) back for much longer than a snapshot.
    pub catch_up_round_trips_max: u64,
    /// Seed for the election-timeout randomisation. Give every node a different seed.
    pub seed: u64,
}

impl Config {
    /// Defaults suited to a 100 ms tick: heartbeat every tick, election timeout 10 ticks.
    pub fn new(id: NodeId) -> Config {
        Config {
            id,
            election_timeout_ticks: 10,
            heartbeat_interval_ticks: 1,
            pre_vote: true,
            check_quorum: true,
            inflight_messages_max: 256,
            append_bytes_max: 1 << 20,
            uncommitted_bytes_max: 64 << 20,
            pending_reads_max: 16 * 1024,
            catch_up_bytes_max: 64 << 20,
            catch_up_round_trips_max: 64,
            seed: id.0,
        }
    }

    /// Checks the values make sense together.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.id == NodeId(0) {
            return Err(ConfigError("node id must not be 0".into()));
        }
        if self.heartbeat_interval_ticks == 0 {
            return Err(ConfigError("heartbeat_interval_ticks must be at least 1".into()));
        }
        if self.election_timeout_ticks <= self.heartbeat_interval_ticks {
            return Err(ConfigError(format!(
                "election_timeout_ticks ({}) must be greater than heartbeat_interval_ticks ({})",
                self.election_timeout_ticks, self.heartbeat_interval_ticks
            )));
        }
        if self.inflight_messages_max == 0 {
            return Err(ConfigError("inflight_messages_max must be at least 1".into()));
        }
        if self.append_bytes_max == 0 {
            return Err(ConfigError("append_bytes_max must be at least 1".into()));
        }
        Ok(())
    }
}

/// An invalid configuration or initial state.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConfigError(pub String);

impl std::fmt::Display for ConfigError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "invalid raft configuration: {}", self.0)
    }
}

impl std::error::Error for ConfigError {}
