//! The history file: one JSON object per line, operations and nemesis events interleaved in
//! the order they completed, with monotonic times in nanoseconds since the run started.

use std::io::{BufRead, Write};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use crate::linearizability::Action;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, Hash, PartialOrd, Ord)]
#[serde(rename_all = "kebab-case")]
pub enum Outcome {
    /// Acknowledged (a compare-and-set whose compare failed is still `ok`).
    Ok,
    /// Definitely did not take effect (rejected before it was proposed, or never sent).
    Fail,
    /// May or may not have taken effect (timeout, dropped connection after sending, leader
    /// change while in flight).
    Unknown,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct OpRecord {
    pub id: u64,
    pub worker: usize,
    /// Index of the member the request was sent to.
    pub member: usize,
    pub key: String,
    /// `read`, `put`, `cas-value` or `cas-rev`.
    pub kind: String,
    pub invoke_ns: u64,
    pub complete_ns: u64,
    pub outcome: Outcome,
    /// The operation as the register checker sees it.
    pub action: Action,
    /// For a read, the key's mod_revision; for an acknowledged put or successful
    /// compare-and-set, the revision of the write.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revision: Option<i64>,
    /// For `cas-rev`, the mod_revision compared against.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expected_revision: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "kebab-case")]
pub enum Record {
    /// The run's parameters (first line).
    Run {
        seed: u64,
        profile: String,
        members: usize,
        started_unix_ms: u64,
        command: String,
    },
    Op(OpRecord),
    /// A fault injected or healed, or a member restarted.
    Nemesis {
        t_ns: u64,
        unix_ms: u64,
        event: String,
        detail: String,
    },
    /// A new leader observed (by polling Maintenance.Status).
    Leader {
        t_ns: u64,
        term: u64,
        member: usize,
    },
    /// What a watcher's stream delivered (the watch checker).
    Watch(crate::watchcheck::WatchRecord),
}

pub fn unix_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

struct Inner {
    out: Option<std::io::BufWriter<std::fs::File>>,
    records: Vec<Record>,
}

/// Collects records in memory and streams them to the history file.
#[derive(Clone)]
pub struct Recorder {
    start: Instant,
    inner: Arc<Mutex<Inner>>,
}

impl Recorder {
    pub fn new(path: Option<&Path>) -> std::io::Result<Recorder> {
        let out = match path {
            Some(p) => Some(std::io::BufWriter::new(std::fs::File::create(p)?)),
            None => None,
        };
        Ok(Recorder {
            start: Instant::now(),
            inner: Arc::new(Mutex::new(Inner { out, records: Vec::new() })),
        })
    }

    /// Nanoseconds since the run started (monotonic).
    pub fn now(&self) -> u64 {
        self.start.elapsed().as_nanos() as u64
    }

    pub fn record(&self, r: Record) {
        let mut g = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(out) = g.out.as_mut()
            && let Ok(line) = serde_json::to_string(&r)
        {
            let _ = writeln!(out, "{line}");
        }
        g.records.push(r);
    }

    pub fn nemesis(&self, event: &str, detail: String) {
        let t_ns = self.now();
        eprintln!("[{:>7.3} s] nemesis: {event} {detail}", t_ns as f64 / 1e9);
        self.record(Record::Nemesis { t_ns, unix_ms: unix_ms(), event: event.to_string(), detail });
    }

    pub fn flush(&self) {
        let mut g = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(out) = g.out.as_mut() {
            let _ = out.flush();
        }
    }

    pub fn records(&self) -> Vec<Record> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner()).records.clone()
    }
}

/// Reads a history file back.
pub fn load(path: &Path) -> Result<Vec<Record>, String> {
    let f = std::fs::File::open(path).map_err(|e| format!("cannot open {}: {e}", path.display()))?;
    let mut out = Vec::new();
    for (n, line) in std::io::BufReader::new(f).lines().enumerate() {
        let line = line.map_err(|e| format!("{}: {e}", path.display()))?;
        if line.trim().is_empty() {
            continue;
        }
        out.push(serde_json::from_str(&line).map_err(|e| format!("{}:{}: {e}", path.display(), n + 1))?);
    }
    Ok(out)
}
