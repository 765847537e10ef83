//! Auto-compaction, as etcd 3.4 (`etcdserver/api/v3compactor`): `--auto-compaction-mode
//! periodic|revision --auto-compaction-retention R`. Only the leader compacts (through the
//! log, like a client's Compact), so members agree on the compacted revision.
//!
//! * **periodic**: the retention is a duration (`1h`, `30m`, `10s`; a bare number is hours,
//!   as etcd reads it). The current revision is sampled every tenth of the retention (a
//!   tenth of an hour at most); a compaction goes to the newest revision sampled at least
//!   a retention ago, first once a retention has passed, then every retention (every hour
//!   at most). A failed compaction is retried at the next sample.
//! * **revision**: the retention is a count of revisions. Every 5 minutes the store is
//!   compacted to the current revision minus the retention, if that moved.

use std::collections::VecDeque;
use std::time::Duration;

use raftkv_api::etcdserverpb::CompactionRequest;
use tokio::time::Instant;

use crate::api::service::Api;

const HOUR: Duration = Duration::from_secs(3600);
/// etcd's revision compactor interval.
const REVISION_INTERVAL: Duration = Duration::from_secs(300);

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AutoCompaction {
    Off,
    Periodic(Duration),
    Revision(i64),
}

/// An auto-compaction flag that cannot be used.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum AutoCompactionError {
    #[error("invalid --auto-compaction-retention {0:?}: expected hours or a duration like 30m, 1h, 10s")]
    NotAPeriod(String),
    #[error("invalid --auto-compaction-retention {0:?}: revision mode expects a number of revisions")]
    NotARevisionCount(String),
    #[error("invalid --auto-compaction-mode {0:?}: expected periodic or revision")]
    UnknownMode(String),
}

/// Parses etcd's `--auto-compaction-mode` and `--auto-compaction-retention`.
pub fn parse(mode: Option<&str>, retention: Option<&str>) -> Result<AutoCompaction, AutoCompactionError> {
    let retention = retention.unwrap_or("0").trim();
    match mode.unwrap_or("periodic") {
        "periodic" => {
            let d = if let Ok(hours) = retention.parse::<u64>() {
                Duration::from_secs(hours.saturating_mul(3600))
            } else {
                parse_duration(retention)
                    .ok_or_else(|| AutoCompactionError::NotAPeriod(retention.to_string()))?
            };
            Ok(if d.is_zero() { AutoCompaction::Off } else { AutoCompaction::Periodic(d) })
        }
        "revision" => {
            let n = retention
                .parse::<i64>()
                .ok()
                .filter(|n| *n >= 0)
                .ok_or_else(|| AutoCompactionError::NotARevisionCount(retention.to_string()))?;
            Ok(if n == 0 { AutoCompaction::Off } else { AutoCompaction::Revision(n) })
        }
        other => Err(AutoCompactionError::UnknownMode(other.to_string())),
    }
}

/// Go-style durations: a sequence of number+unit (h, m, s, ms), e.g. `1h30m`, `2.5s`.
pub(crate) fn parse_duration(s: &str) -> Option<Duration> {
    let mut total = 0f64;
    let mut rest = s;
    if rest.is_empty() {
        return None;
    }
    while !rest.is_empty() {
        let num_end = rest.find(|c: char| !(c.is_ascii_digit() || c == '.'))?;
        let n: f64 = rest[..num_end].parse().ok()?;
        rest = &rest[num_end..];
        let unit_end = rest.find(|c: char| c.is_ascii_digit() || c == '.').unwrap_or(rest.len());
        let unit = match &rest[..unit_end] {
            "h" => 3600.0,
            "m" => 60.0,
            "s" => 1.0,
            "ms" => 0.001,
            _ => return None,
        };
        total += n * unit;
        rest = &rest[unit_end..];
    }
    (total.is_finite() && total < 1e12).then(|| Duration::from_secs_f64(total))
}

/// The periodic compactor's decisions, apart from the clock and the store.
#[derive(Debug)]
struct Periodic {
    retention: Duration,
    samples: VecDeque<(Instant, i64)>,
    next_compaction: Instant,
    last_compacted: i64,
}

impl Periodic {
    fn new(retention: Duration, now: Instant) -> Periodic {
        Periodic { retention, samples: VecDeque::new(), next_compaction: now + retention, last_compacted: 0 }
    }

    fn sample_interval(&self) -> Duration {
        self.retention.min(HOUR) / 10
    }

    /// Records the revision at `now`; returns the revision to compact to, if it is time.
    fn sample(&mut self, now: Instant, revision: i64) -> Option<i64> {
        self.samples.push_back((now, revision));
        // Keep only what can still be a target: the newest sample old enough, and newer ones.
        while self.samples.len() > 1 && self.samples[1].0 + self.retention <= now {
            self.samples.pop_front();
        }
        if now < self.next_compaction {
            return None;
        }
        let &(at, rev) = self.samples.front()?;
        (at + self.retention <= now && rev > self.last_compacted).then_some(rev)
    }

    fn compacted(&mut self, now: Instant, revision: i64) {
        self.last_compacted = revision;
        self.next_compaction = now + self.retention.min(HOUR);
    }
}

fn is_leader(api: &Api) -> bool {
    api.node.status().leader == api.member_id()
}

fn revision(api: &Api) -> i64 {
    api.node.shared.sm.read().kv.revision()
}

async fn compact(api: &Api, revision: i64) -> bool {
    match api.compact(CompactionRequest { revision, physical: false }).await {
        Ok(_) => {
            tracing::info!(revision, "auto-compaction: compacted");
            true
        }
        // Someone compacted past it already: nothing to do.
        Err(e) if e.message().contains("compacted") => true,
        Err(e) => {
            tracing::warn!(revision, error = %e.message(), "auto-compaction failed; will retry");
            false
        }
    }
}

/// Runs the compactor until the process ends.
pub async fn run(api: Api, policy: AutoCompaction) {
    match policy {
        AutoCompaction::Off => {}
        AutoCompaction::Periodic(retention) => {
            tracing::info!(?retention, "auto-compaction: periodic");
            let mut p = Periodic::new(retention, Instant::now());
            loop {
                tokio::time::sleep(p.sample_interval()).await;
                if !is_leader(&api) {
                    // As etcd: a follower does not compact, and starts over if it leads later.
                    p = Periodic::new(retention, Instant::now());
                    continue;
                }
                let now = Instant::now();
                if let Some(target) = p.sample(now, revision(&api))
                    && compact(&api, target).await
                {
                    p.compacted(Instant::now(), target);
                }
            }
        }
        AutoCompaction::Revision(keep) => {
            tracing::info!(retention = keep, "auto-compaction: revision");
            let mut last = 0;
            loop {
                tokio::time::sleep(REVISION_INTERVAL).await;
                let target = revision(&api) - keep;
                if is_leader(&api) && target > 0 && target != last && compact(&api, target).await {
                    last = target;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_parse_as_etcd() {
        assert_eq!(parse(None, None), Ok(AutoCompaction::Off));
        assert_eq!(parse(Some("periodic"), Some("1")), Ok(AutoCompaction::Periodic(HOUR)));
        assert_eq!(parse(None, Some("30m")), Ok(AutoCompaction::Periodic(Duration::from_secs(1800))));
        assert_eq!(parse(None, Some("1h30m")), Ok(AutoCompaction::Periodic(Duration::from_secs(5400))));
        assert_eq!(parse(None, Some("2.5s")), Ok(AutoCompaction::Periodic(Duration::from_millis(2500))));
        assert_eq!(parse(Some("revision"), Some("1000")), Ok(AutoCompaction::Revision(1000)));
        assert_eq!(parse(Some("revision"), Some("0")), Ok(AutoCompaction::Off));
        for (mode, r) in
            [("periodic", "x"), ("periodic", "5q"), ("revision", "1h"), ("revision", "-3"), ("daily", "1")]
        {
            assert!(parse(Some(mode), Some(r)).is_err(), "{mode} {r}");
        }
    }

    /// Each mistake names the flag at fault and the value given.
    #[test]
    fn bad_flags_are_named() {
        let e = parse(None, Some("5q")).expect_err("not a duration");
        assert_eq!(e, AutoCompactionError::NotAPeriod("5q".into()));
        assert!(e.to_string().starts_with("invalid --auto-compaction-retention \"5q\""), "{e}");
        let e = parse(Some("revision"), Some("-3")).expect_err("negative");
        assert_eq!(e, AutoCompactionError::NotARevisionCount("-3".into()));
        assert!(e.to_string().contains("revision mode expects a number of revisions"), "{e}");
        let e = parse(Some("daily"), Some("1")).expect_err("mode");
        assert_eq!(e.to_string(), "invalid --auto-compaction-mode \"daily\": expected periodic or revision");
    }

    /// The target is the newest revision sampled at least a retention ago; the first
    /// compaction waits a retention, later ones come every retention.
    #[test]
    fn periodic_compacts_to_the_revision_of_a_retention_ago() {
        let t0 = Instant::now();
        let r = Duration::from_secs(10);
        let mut p = Periodic::new(r, t0);
        let mut out = Vec::new();
        for i in 0..=40u64 {
            let now = t0 + Duration::from_secs(i);
            // One revision per second, starting at 100.
            if let Some(target) = p.sample(now, 100 + i as i64) {
                p.compacted(now, target);
                out.push((i, target));
            }
        }
        assert_eq!(out, vec![(10, 100), (20, 110), (30, 120), (40, 130)]);
        // Nothing new written: no compaction to the same revision again.
        let mut p = Periodic::new(r, t0);
        for i in 0..=30u64 {
            if let Some(target) = p.sample(t0 + Duration::from_secs(i), 5) {
                p.compacted(t0 + Duration::from_secs(i), target);
                assert_eq!((i, target), (10, 5));
            }
        }
    }
}
