//! The event trace of a run. Every event is folded into a hash (so two runs of one seed can be
//! compared cheaply) and, when tracing is on, kept as a line to print.

use std::fmt;
use std::hash::{Hash, Hasher};

/// One thing that happened in the simulation. Node ids are the Raft ids (1-based).
#[derive(Clone, Debug, Hash)]
pub enum TraceEvent {
    Deliver {
        from: u64,
        to: u64,
        kind: &'static str,
        term: u64,
    },
    Drop {
        from: u64,
        to: u64,
        kind: &'static str,
        reason: &'static str,
    },
    Persisted {
        node: u64,
        index: u64,
        term: u64,
    },
    Crash {
        node: u64,
        jobs_kept: usize,
        jobs_lost: usize,
    },
    Restart {
        node: u64,
        term: u64,
        commit: u64,
        last: u64,
    },
    Role {
        node: u64,
        role: &'static str,
        term: u64,
        leader: u64,
    },
    Commit {
        node: u64,
        index: u64,
    },
    Propose {
        client: u64,
        node: u64,
        attempt: u64,
        outcome: String,
    },
    Ack {
        client: u64,
        attempt: u64,
        index: u64,
        term: u64,
    },
    Lost {
        client: u64,
        attempt: u64,
        index: u64,
    },
    Unknown {
        client: u64,
        attempt: u64,
        reason: &'static str,
    },
    Partition {
        blocked: Vec<(u64, u64)>,
    },
    Heal,
    SnapshotTaken {
        node: u64,
        index: u64,
        compact_to: u64,
    },
    SnapshotInstalled {
        node: u64,
        index: u64,
        term: u64,
    },
    SnapFrame {
        from: u64,
        to: u64,
        kind: &'static str,
        id: u64,
    },
    SnapshotRejected {
        node: u64,
        from: u64,
        id: u64,
        reason: &'static str,
    },
    LivenessPhase,
    Pause {
        node: u64,
        ms: u64,
    },
    Torn {
        node: u64,
        job: u64,
    },
    DiskError {
        node: u64,
        job: u64,
    },
    RestartRefused {
        node: u64,
        reason: String,
    },
    Unreachable {
        node: u64,
        peer: u64,
    },
    ReadSent {
        client: u64,
        node: u64,
        key: usize,
        context: u64,
        min_index: u64,
    },
    ReadServed {
        client: u64,
        node: u64,
        key: usize,
        value: u64,
        linearizable: bool,
        read_index: u64,
        applied: u64,
    },
    ReadFailed {
        client: u64,
        node: u64,
        reason: &'static str,
    },
    /// A membership action of the nemesis or its outcome (a change proposed, accepted or
    /// refused, a member started or stopped for good, a leadership transfer).
    Member {
        node: u64,
        what: String,
    },
}

impl fmt::Display for TraceEvent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        use TraceEvent::*;
        match self {
            Deliver { from, to, kind, term } => write!(f, "deliver {from}->{to} {kind} term={term}"),
            Drop { from, to, kind, reason } => write!(f, "drop    {from}->{to} {kind} ({reason})"),
            Persisted { node, index, term } => write!(f, "persist n{node} up to {index}@{term}"),
            Crash { node, jobs_kept, jobs_lost } => {
                write!(f, "CRASH   n{node} (pending persist jobs: {jobs_kept} kept, {jobs_lost} lost)")
            }
            Restart { node, term, commit, last } => {
                write!(f, "RESTART n{node} term={term} commit={commit} last={last}")
            }
            Role { node, role, term, leader } => {
                write!(f, "role    n{node} {role} term={term} leader={leader}")
            }
            Commit { node, index } => write!(f, "commit  n{node} up to {index}"),
            Propose { client, node, attempt, outcome } => {
                write!(f, "propose c{client} -> n{node} attempt={attempt:#x}: {outcome}")
            }
            Ack { client, attempt, index, term } => {
                write!(f, "ack     c{client} attempt={attempt:#x} committed at {index}@{term}")
            }
            Lost { client, attempt, index } => write!(f, "lost    c{client} attempt={attempt:#x} at {index}"),
            Unknown { client, attempt, reason } => {
                write!(f, "unknown c{client} attempt={attempt:#x} ({reason})")
            }
            Partition { blocked } => {
                write!(f, "PARTITION blocked links:")?;
                for (a, b) in blocked {
                    write!(f, " {a}->{b}")?;
                }
                Ok(())
            }
            Heal => write!(f, "HEAL"),
            SnapshotTaken { node, index, compact_to } => {
                write!(f, "snapshot n{node} at {index}, log compacted to {compact_to}")
            }
            SnapshotInstalled { node, index, term } => write!(f, "install n{node} snapshot {index}@{term}"),
            SnapFrame { from, to, kind, id } => write!(f, "stream  {from}->{to} {kind} transfer={id}"),
            SnapshotRejected { node, from, id, reason } => {
                write!(f, "reject  n{node} snapshot transfer {id} from n{from}: {reason}")
            }
            LivenessPhase => write!(f, "LIVENESS PHASE: faults stop, all healed and restarted"),
            Pause { node, ms } => write!(f, "PAUSE   n{node} for {ms} ms"),
            Torn { node, job } => {
                write!(
                    f,
                    "torn    n{node}: crash while writing persist job {job}; a prefix may reach the disk"
                )
            }
            DiskError { node, job } => {
                write!(f, "DISK ERROR n{node} persist job {job} failed: the member stops")
            }
            RestartRefused { node, reason } => write!(f, "REFUSED n{node} restart: {reason}"),
            Unreachable { node, peer } => write!(f, "unreach n{node} reports n{peer} unreachable"),
            ReadSent { client, node, key, context, min_index } => {
                write!(
                    f,
                    "read    c{client} -> n{node} key={key} context={context} (acked write at {min_index} or newer)"
                )
            }
            ReadServed { client, node, key, value, linearizable, read_index, applied } => {
                let kind = if *linearizable { "linearizable" } else { "serializable" };
                write!(
                    f,
                    "served  c{client} n{node} {kind} key={key} value={value:#x} read index {read_index}, applied {applied}"
                )
            }
            ReadFailed { client, node, reason } => write!(f, "readerr c{client} n{node}: {reason}"),
            Member { node, what } => write!(f, "member  n{node}: {what}"),
        }
    }
}

/// FNV-1a: a fixed, platform-independent hasher for the trace hash.
pub struct Fnv(u64);

impl Default for Fnv {
    fn default() -> Fnv {
        Fnv(0xCBF2_9CE4_8422_2325)
    }
}

impl Hasher for Fnv {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 ^= u64::from(*b);
            self.0 = self.0.wrapping_mul(0x0000_0100_0000_01B3);
        }
    }
}

/// The running trace of one simulation.
#[derive(Default)]
pub struct Trace {
    hasher: Fnv,
    events: u64,
    /// Formatted lines, only when tracing is on.
    lines: Option<Vec<String>>,
}

impl Trace {
    pub fn new(keep_lines: bool) -> Trace {
        Trace { hasher: Fnv::default(), events: 0, lines: keep_lines.then(Vec::new) }
    }

    pub fn record(&mut self, time_us: u64, event: TraceEvent) {
        time_us.hash(&mut self.hasher);
        event.hash(&mut self.hasher);
        self.events += 1;
        if let Some(lines) = &mut self.lines {
            lines.push(format!("{:>6}.{:03}ms {event}", time_us / 1000, time_us % 1000));
        }
    }

    /// A detail line for humans (tracing only); not part of the trace hash.
    pub fn note(&mut self, time_us: u64, detail: impl FnOnce() -> String) {
        if let Some(lines) = &mut self.lines {
            lines.push(format!("{:>6}.{:03}ms   {}", time_us / 1000, time_us % 1000, detail()));
        }
    }

    /// Whether formatted lines are kept (so callers can skip building costly events).
    pub fn verbose(&self) -> bool {
        self.lines.is_some()
    }

    pub fn hash(&self) -> u64 {
        self.hasher.finish() ^ self.events
    }

    pub fn events(&self) -> u64 {
        self.events
    }

    pub fn take_lines(&mut self) -> Vec<String> {
        self.lines.take().unwrap_or_default()
    }
}
