//! Known bugs the simulator can plant in its member driver (the core's own planted bugs are
//! [`raftkv_raft::PlantedBug`]), to prove the checkers catch them. They take effect only in a
//! build with the `planted-bugs` feature.

use raftkv_raft::PlantedBug;

/// A bug in the driver around the core, not in the core itself.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum DriverBug {
    /// Serve a linearizable read as soon as its read index is confirmed, without waiting for
    /// the state machine to apply up to it.
    ServeReadBeforeApplied,
    /// ReadIndex contexts restart at 1 in every incarnation, so a reply to a read sent before
    /// a crash confirms a new read after the restart.
    ReadContextRestart,
    /// Send `messages_after_persist` (vote grants, append acknowledgements) when the persist
    /// job is queued instead of when it is durable.
    AckBeforeSync,
    /// Treat a failed write or fsync as success: the job's data is lost with the next crash,
    /// but it was acknowledged.
    AckDespiteFsyncError,
    /// Install a snapshot by compacting the log up to it, keeping entries after it even when
    /// they conflict with the leader's log.
    SnapshotKeepsTail,
}

impl DriverBug {
    pub const ALL: [DriverBug; 5] = [
        DriverBug::ServeReadBeforeApplied,
        DriverBug::ReadContextRestart,
        DriverBug::AckBeforeSync,
        DriverBug::AckDespiteFsyncError,
        DriverBug::SnapshotKeepsTail,
    ];

    /// The command-line name.
    pub fn name(self) -> &'static str {
        match self {
            DriverBug::ServeReadBeforeApplied => "serve-read-before-applied",
            DriverBug::ReadContextRestart => "read-context-restart",
            DriverBug::AckBeforeSync => "ack-before-sync",
            DriverBug::AckDespiteFsyncError => "ack-despite-fsync-error",
            DriverBug::SnapshotKeepsTail => "snapshot-keeps-tail",
        }
    }
}

/// A planted bug of either kind, as named on the command line.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Plant {
    Core(PlantedBug),
    Driver(DriverBug),
}

impl Plant {
    pub fn name(self) -> &'static str {
        match self {
            Plant::Core(b) => crate::bug_name(b),
            Plant::Driver(b) => b.name(),
        }
    }
}

/// Parses a planted bug's command-line name (a core bug or a driver bug).
pub fn parse_plant(name: &str) -> Result<Plant, String> {
    if let Some(b) = DriverBug::ALL.into_iter().find(|b| b.name() == name) {
        return Ok(Plant::Driver(b));
    }
    crate::parse_bug(name).map(Plant::Core)
}
