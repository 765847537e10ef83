//! Known bugs that can be planted in the runtime's components (the core's own are
//! [`raftkv_raft::PlantedBug`]), so the simulator can prove its checkers catch them. They
//! take effect only in a build with the `planted-bugs` feature, which the server never
//! enables.

/// A bug in the member runtime around the core.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum DriverBug {
    /// The driver hands a read its read index as already applied: the read is served at
    /// once from whatever the state machine holds, without waiting for it to apply up to
    /// the confirmed index.
    ServeReadBeforeApplied,
    /// ReadIndex contexts restart at 1 in every start of the member, so a reply to a read
    /// sent before a crash confirms a new read after the restart.
    ReadContextRestart,
    /// `messages_after_persist` (vote grants, append acknowledgements) leave when the
    /// persist job is handed to the disk instead of when it is durable.
    AckBeforeSync,
    /// The disk worker treats a failed write or fsync as success: the job's data is lost
    /// with the next crash, but it was acknowledged.
    AckDespiteFsyncError,
    /// A snapshot is installed by compacting the log up to it, keeping entries after it
    /// even when they conflict with the leader's log.
    SnapshotKeepsTail,
    /// The driver tells the core a Ready is durable as soon as its job is handed to the
    /// disk: the core then applies entries that are not yet on the local disk (and a leader
    /// counts its own unsynced copy towards a quorum).
    ApplyBeforeDurable,
}

impl DriverBug {
    /// Every runtime bug.
    pub const ALL: [DriverBug; 6] = [
        DriverBug::ServeReadBeforeApplied,
        DriverBug::ReadContextRestart,
        DriverBug::AckBeforeSync,
        DriverBug::AckDespiteFsyncError,
        DriverBug::SnapshotKeepsTail,
        DriverBug::ApplyBeforeDurable,
    ];

    /// The command-line name.
    pub fn name(self) -> &'static str {
        match self {
            DriverBug::ServeReadBeforeApplied => "serve-read-before-applied",
            DriverBug::ReadContextRestart => "read-context-restart",
            DriverBug::AckBeforeSync => "ack-before-sync",
            DriverBug::AckDespiteFsyncError => "ack-despite-fsync-error",
            DriverBug::SnapshotKeepsTail => "snapshot-keeps-tail",
            DriverBug::ApplyBeforeDurable => "apply-before-durable",
        }
    }
}

/// The bug planted in one component (always `None` without the `planted-bugs` feature).
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct Planted(#[cfg(feature = "planted-bugs")] Option<DriverBug>);

impl Planted {
    #[cfg(feature = "planted-bugs")]
    pub(crate) fn set(&mut self, bug: Option<DriverBug>) {
        self.0 = bug;
    }

    /// Whether `bug` is planted.
    #[inline]
    pub(crate) fn is(self, _bug: DriverBug) -> bool {
        #[cfg(feature = "planted-bugs")]
        {
            self.0 == Some(_bug)
        }
        #[cfg(not(feature = "planted-bugs"))]
        {
            false
        }
    }
}
