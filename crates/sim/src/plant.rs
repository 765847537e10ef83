//! Known bugs the simulator can plant: in every core ([`raftkv_raft::PlantedBug`]) or in
//! every member's runtime ([`raftkv_node::DriverBug`], planted in the very `Driver` and
//! `DiskWorker` the server runs), to prove the checkers catch them. They take effect only in
//! a build with the `planted-bugs` feature.

use raftkv_raft::PlantedBug;

pub use raftkv_node::DriverBug;

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

/// Parses a planted bug's command-line name (a core bug or a runtime bug).
pub fn parse_plant(name: &str) -> Result<Plant, String> {
    if let Some(b) = DriverBug::ALL.into_iter().find(|b| b.name() == name) {
        return Ok(Plant::Driver(b));
    }
    crate::parse_bug(name).map(Plant::Core)
}
