//! The watch checker: watchers on every member run beside the register workload, through
//! the same faults, and their streams are checked against the KV history.
//!
//! Each watcher (a prefix, a single key or a range over the workload's keys) starts at
//! revision 1 on one member. Its stream is dropped and resumed from its last revision + 1
//! every few seconds, on a member drawn at random (a killed, paused or partitioned member,
//! or one that lags behind, included), and whenever the stream breaks; one time in seven it
//! stays away 4-9 s first. A compactor compacts
//! the store every few seconds to a revision seen a few seconds earlier, so watchers that
//! were away meanwhile are cancelled with `compact_revision` set; they resume from it.
//! At the end every watcher asks for progress until the member confirms the final revision.
//!
//! The check ([`check`]): every watcher's events are in revision order, without duplicates,
//! all events of one revision in one response, keys within its range; every event agrees with
//! the other watchers' and with what clients were told (the value an acknowledged write
//! wrote at its revision, the value a read returned with its mod_revision) and holds a value
//! some client wrote; and no watcher misses, within the revisions it covered (compacted
//! stretches excepted), an acknowledged write or an event another watcher saw in its range.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::time::Duration;

use raftkv_api::etcdserverpb::kv_client::KvClient;
use raftkv_api::etcdserverpb::watch_client::WatchClient;
use raftkv_api::etcdserverpb::watch_request::RequestUnion;
use raftkv_api::etcdserverpb::{
    CompactionRequest, RangeRequest, WatchCreateRequest, WatchProgressRequest, WatchRequest, WatchResponse,
};
use raftkv_api::mvccpb::event::EventType;
use serde::{Deserialize, Serialize};
use tonic::transport::{Channel, Endpoint};

use crate::history::{Outcome, Record, Recorder};
use crate::linearizability::Action;
use crate::rng::Rng;

/// One event as a watcher received it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct WatchEvent {
    pub rev: i64,
    pub key: String,
    pub value: String,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub delete: bool,
}

/// What happened on a watcher's stream.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum WatchWhat {
    /// The watcher was declared: its key range (`range_end` empty: one key).
    Declared { key: String, range_end: String },
    /// A stream created the watcher from `start` on.
    Created { start: i64 },
    /// A response with events.
    Events { events: Vec<WatchEvent> },
    /// Cancelled because `start` was compacted: resumed from `compact_revision`.
    Compacted { start: i64, compact_revision: i64 },
    /// Cancelled for another reason.
    Canceled { reason: String },
    /// A progress response: everything up to `revision` was delivered.
    Progress { revision: i64 },
    /// The progress response that confirmed the run's final revision.
    Confirmed { revision: i64 },
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct WatchRecord {
    pub t_ns: u64,
    pub watcher: usize,
    pub member: usize,
    pub what: WatchWhat,
}

#[derive(Clone, Debug)]
pub struct WatcherSpec {
    pub key: String,
    /// Empty: the key alone.
    pub range_end: String,
}

impl WatcherSpec {
    fn covers(&self, key: &str) -> bool {
        if self.range_end.is_empty() { key == self.key } else { key >= &*self.key && key < &*self.range_end }
    }
}

/// The watchers of a run over `members` members and the workload's `keys` keys (k0..): on
/// every member a prefix watcher (`k`), a single-key watcher and a range watcher.
pub fn specs(members: usize, keys: usize) -> Vec<(usize, WatcherSpec)> {
    let mut out = Vec::new();
    for m in 0..members {
        out.push((m, WatcherSpec { key: "k".into(), range_end: "l".into() }));
        out.push((m, WatcherSpec { key: format!("k{}", m % keys.max(1)), range_end: String::new() }));
        out.push((m, WatcherSpec { key: "k1".into(), range_end: "k4".into() }));
    }
    out
}

/// Shared between the runner and the watchers.
#[derive(Clone, Default)]
pub struct Control {
    /// The revision every watcher must confirm at the end (0 until the workload stopped).
    pub final_rev: Arc<AtomicI64>,
    /// Stop now, confirmed or not.
    pub halt: Arc<AtomicBool>,
}

/// A channel without a per-request timeout (a watch stream lives long), with HTTP/2
/// keep-alives so that a stream to a dead member breaks.
pub fn stream_channel(url: &str) -> Result<Channel, String> {
    Ok(Endpoint::from_shared(url.to_string())
        .map_err(|e| format!("bad endpoint {url}: {e}"))?
        .connect_timeout(Duration::from_millis(1000))
        .http2_keep_alive_interval(Duration::from_secs(1))
        .keep_alive_timeout(Duration::from_secs(2))
        .keep_alive_while_idle(true)
        .connect_lazy())
}

/// What one watcher's stream said, reduced to what the watcher does next.
pub enum Step {
    Go,
    /// The stream is over (cancelled, broken, or its time is up).
    Reconnect,
    /// The final revision was confirmed.
    Done,
}

/// A resumable watcher: the next revision it needs and what it records.
pub struct Resumable {
    pub id: usize,
    pub spec: WatcherSpec,
    pub next: i64,
    pub member: usize,
    pub recorder: Recorder,
    pub confirmed: bool,
}

impl Resumable {
    fn record(&self, what: WatchWhat) {
        self.recorder.record(Record::Watch(WatchRecord {
            t_ns: self.recorder.now(),
            watcher: self.id,
            member: self.member,
            what,
        }));
    }

    pub fn create_request(&self) -> WatchRequest {
        WatchRequest {
            request_union: Some(RequestUnion::CreateRequest(WatchCreateRequest {
                key: self.spec.key.clone().into(),
                range_end: self.spec.range_end.clone().into(),
                start_revision: self.next,
                ..Default::default()
            })),
        }
    }

    /// Takes one response; `final_rev` is the revision to confirm (0: not yet).
    pub fn take(&mut self, resp: WatchResponse, final_rev: i64) -> Step {
        if resp.created && !resp.canceled {
            self.record(WatchWhat::Created { start: self.next });
        }
        if resp.canceled {
            if resp.compact_revision > 0 {
                self.record(WatchWhat::Compacted {
                    start: self.next,
                    compact_revision: resp.compact_revision,
                });
                self.next = self.next.max(resp.compact_revision);
            } else {
                self.record(WatchWhat::Canceled { reason: resp.cancel_reason });
            }
            return Step::Reconnect;
        }
        if !resp.events.is_empty() {
            let events: Vec<WatchEvent> = resp
                .events
                .iter()
                .map(|e| {
                    let kv = e.kv.clone().unwrap_or_default();
                    WatchEvent {
                        rev: kv.mod_revision,
                        key: String::from_utf8_lossy(&kv.key).into_owned(),
                        value: String::from_utf8_lossy(&kv.value).into_owned(),
                        delete: e.r#type == EventType::Delete as i32,
                    }
                })
                .collect();
            let last = events.iter().map(|e| e.rev).max().unwrap_or(0);
            self.next = self.next.max(last + 1);
            self.record(WatchWhat::Events { events });
        } else if resp.watch_id == -1 && !resp.created {
            let rev = resp.header.map_or(0, |h| h.revision);
            if final_rev > 0 && rev >= final_rev {
                self.record(WatchWhat::Confirmed { revision: rev });
                self.confirmed = true;
                return Step::Done;
            }
            self.record(WatchWhat::Progress { revision: rev });
        }
        Step::Go
    }
}

fn progress_request() -> WatchRequest {
    WatchRequest { request_union: Some(RequestUnion::ProgressRequest(WatchProgressRequest {})) }
}

/// Runs one watcher until it confirmed the final revision or `halt` is set.
/// `roam`: resume on other members too (otherwise always on the same one).
async fn watcher(
    mut w: Resumable,
    endpoints: Vec<String>,
    seed: u64,
    ctl: Control,
    stop: Arc<AtomicBool>,
    roam: bool,
) {
    let mut rng = Rng::new(seed ^ ((w.id as u64 + 1) << 48) ^ 0x3a7c);
    let n = endpoints.len();
    w.record(WatchWhat::Declared { key: w.spec.key.clone(), range_end: w.spec.range_end.clone() });
    while !ctl.halt.load(Ordering::Relaxed) && !w.confirmed {
        let Ok(ch) = stream_channel(&endpoints[w.member]) else { return };
        let (tx, rx) = tokio::sync::mpsc::channel::<WatchRequest>(4);
        if tx.send(w.create_request()).await.is_err() {
            return;
        }
        let mut client = WatchClient::new(ch);
        let opened = tokio::time::timeout(
            Duration::from_secs(3),
            client.watch(tokio_stream::wrappers::ReceiverStream::new(rx)),
        )
        .await;
        if let Ok(Ok(resp)) = opened {
            let mut stream = resp.into_inner();
            // The stream's lifetime: resumed elsewhere when it is up (shorter at the end,
            // where a stalled member must not hold up the confirmation).
            let lifetime = if stop.load(Ordering::Relaxed) { 3_000 } else { rng.range(1_500, 7_000) };
            let until = tokio::time::Instant::now() + Duration::from_millis(lifetime);
            let mut tick = tokio::time::interval(Duration::from_millis(400));
            loop {
                let final_rev = ctl.final_rev.load(Ordering::Relaxed);
                let step = tokio::select! {
                    m = stream.message() => match m {
                        Ok(Some(resp)) => w.take(resp, final_rev),
                        _ => Step::Reconnect,
                    },
                    _ = tokio::time::sleep_until(until) => Step::Reconnect,
                    _ = tick.tick() => {
                        if ctl.halt.load(Ordering::Relaxed) {
                            Step::Done
                        } else {
                            if final_rev > 0 {
                                let _ = tx.try_send(progress_request());
                            }
                            Step::Go
                        }
                    }
                };
                match step {
                    Step::Go => {}
                    Step::Reconnect => break,
                    Step::Done => return,
                }
            }
        }
        // Now and then a client stays away long enough for the compactor to pass its
        // revision: it must then be cancelled with compact_revision set.
        let away = if !stop.load(Ordering::Relaxed) && rng.chance(0.15) {
            rng.range(4_000, 9_000)
        } else {
            rng.range(50, 300)
        };
        tokio::time::sleep(Duration::from_millis(away)).await;
        // Mostly another member: resuming there is what the check is after.
        if roam && n > 1 && rng.chance(0.7) {
            w.member = (w.member + 1 + rng.below(n - 1)) % n;
        }
    }
}

/// Compacts every few seconds to a revision seen a few seconds before.
async fn compactor(endpoints: Vec<String>, seed: u64, recorder: Recorder, stop: Arc<AtomicBool>) {
    let mut rng = Rng::new(seed ^ 0xc0c0);
    let mut seen: VecDeque<(tokio::time::Instant, i64)> = VecDeque::new();
    let clients: Vec<KvClient<Channel>> = endpoints
        .iter()
        .filter_map(|u| crate::workload::channel(u, Duration::from_secs(2)).ok().map(KvClient::new))
        .collect();
    let mut next_compaction = tokio::time::Instant::now() + Duration::from_millis(rng.range(5_000, 9_000));
    while !stop.load(Ordering::Relaxed) && !clients.is_empty() {
        tokio::time::sleep(Duration::from_millis(500)).await;
        let mut kv = clients[rng.below(clients.len())].clone();
        let req = RangeRequest { key: "k0".into(), serializable: true, ..Default::default() };
        if let Ok(Ok(r)) = tokio::time::timeout(Duration::from_secs(2), kv.range(req)).await
            && let Some(h) = r.into_inner().header
        {
            seen.push_back((tokio::time::Instant::now(), h.revision));
        }
        let now = tokio::time::Instant::now();
        if now < next_compaction {
            continue;
        }
        next_compaction = now + Duration::from_millis(rng.range(5_000, 9_000));
        let age = Duration::from_millis(rng.range(2_000, 5_000));
        let Some(&(_, rev)) = seen.iter().rev().find(|(t, _)| now.duration_since(*t) >= age) else {
            continue;
        };
        seen.retain(|(t, _)| now.duration_since(*t) < Duration::from_secs(10));
        let req = CompactionRequest { revision: rev, physical: false };
        let r = tokio::time::timeout(Duration::from_secs(3), kv.compact(req)).await;
        let detail = match r {
            Ok(Ok(_)) => format!("to revision {rev}"),
            Ok(Err(s)) => format!("to revision {rev}: {:?} {}", s.code(), s.message()),
            Err(_) => format!("to revision {rev}: timed out"),
        };
        recorder.nemesis("compact", detail);
    }
}

/// Starts the watchers and the compactor. The watchers run until each confirmed
/// `ctl.final_rev` or `ctl.halt` is set; the compactor until `stop` (the workload's) is set.
pub fn spawn(
    endpoints: Vec<String>,
    keys: usize,
    seed: u64,
    recorder: Recorder,
    stop: Arc<AtomicBool>,
    ctl: Control,
) -> Vec<tokio::task::JoinHandle<()>> {
    let mut tasks =
        spawn_watchers(specs(endpoints.len(), keys), &endpoints, seed, &recorder, &stop, &ctl, true);
    tasks.push(tokio::spawn(compactor(endpoints, seed, recorder, stop)));
    tasks
}

/// Starts one watcher per spec (member, range); watcher ids are the specs' indexes.
pub fn spawn_watchers(
    specs: Vec<(usize, WatcherSpec)>,
    endpoints: &[String],
    seed: u64,
    recorder: &Recorder,
    stop: &Arc<AtomicBool>,
    ctl: &Control,
    roam: bool,
) -> Vec<tokio::task::JoinHandle<()>> {
    specs
        .into_iter()
        .enumerate()
        .map(|(id, (member, spec))| {
            let w = Resumable { id, spec, next: 1, member, recorder: recorder.clone(), confirmed: false };
            tokio::spawn(watcher(w, endpoints.to_vec(), seed, ctl.clone(), stop.clone(), roam))
        })
        .collect()
}

/// The current revision, by a linearizable read through any member.
pub async fn current_revision(endpoints: &[String], within: Duration) -> Option<i64> {
    let deadline = tokio::time::Instant::now() + within;
    while tokio::time::Instant::now() < deadline {
        for url in endpoints {
            let Ok(ch) = crate::workload::channel(url, Duration::from_secs(2)) else { continue };
            let req = RangeRequest { key: "k0".into(), ..Default::default() };
            if let Ok(Ok(r)) =
                tokio::time::timeout(Duration::from_secs(2), KvClient::new(ch).range(req)).await
                && let Some(h) = r.into_inner().header
            {
                return Some(h.revision);
            }
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    None
}

#[derive(Debug, Default, Clone)]
pub struct WatchReport {
    pub anomalies: Vec<String>,
    pub watchers: usize,
    pub events: usize,
    pub streams: usize,
    pub compacted: usize,
    pub confirmed: usize,
    /// Acknowledged writes checked against the watchers covering them (write x watcher).
    pub checked: usize,
}

impl WatchReport {
    pub fn invalid(&self) -> bool {
        !self.anomalies.is_empty()
    }
}

#[derive(Default)]
struct WatcherState {
    spec: Option<WatcherSpec>,
    member: usize,
    begin: Option<i64>,
    /// The next revision the stream owes.
    next: i64,
    /// The highest revision of the previous responses.
    last_rev: i64,
    /// Covered through (events and progress).
    through: i64,
    gaps: Vec<(i64, i64)>,
    seen: HashMap<(i64, String), WatchEvent>,
}

impl WatcherState {
    fn covers(&self, rev: i64, key: &str) -> bool {
        let Some(spec) = &self.spec else { return false };
        let Some(begin) = self.begin else { return false };
        spec.covers(key)
            && rev >= begin
            && rev <= self.through
            && !self.gaps.iter().any(|&(a, b)| a <= rev && rev <= b)
    }
}

const MAX_REPORTED: usize = 30;

/// Checks the watchers' records against the operations of the same history.
pub fn check(records: &[Record]) -> WatchReport {
    let mut report = WatchReport::default();
    let mut anomalies = Vec::new();
    // What clients were told: (key, revision) -> value (acknowledged writes and reads).
    let mut told: HashMap<(String, i64), (String, u64, bool)> = HashMap::new();
    let mut by_rev: HashMap<i64, (String, u64)> = HashMap::new();
    let mut written: HashSet<(String, String)> = HashSet::new();
    for r in records {
        let Record::Op(o) = r else { continue };
        match &o.action {
            Action::Write { value } | Action::Cas { new: value, .. } if o.outcome != Outcome::Fail => {
                written.insert((o.key.clone(), value.clone()));
            }
            _ => {}
        }
        if o.outcome != Outcome::Ok {
            continue;
        }
        let (value, write) = match &o.action {
            Action::Write { value } => (Some(value.clone()), true),
            Action::Cas { new, succeeded: Some(true), .. } => (Some(new.clone()), true),
            Action::Read { observed } => (observed.clone(), false),
            Action::Cas { .. } => (None, false),
        };
        if let (Some(v), Some(rev)) = (value, o.revision) {
            told.entry((o.key.clone(), rev)).or_insert((v, o.id, write));
            if write {
                by_rev.insert(rev, (o.key.clone(), o.id));
            }
        }
    }
    let mut states: BTreeMap<usize, WatcherState> = BTreeMap::new();
    for r in records {
        let Record::Watch(w) = r else { continue };
        let s = states.entry(w.watcher).or_default();
        s.member = w.member;
        match &w.what {
            WatchWhat::Declared { key, range_end } => {
                s.spec = Some(WatcherSpec { key: key.clone(), range_end: range_end.clone() });
            }
            WatchWhat::Created { start } => {
                report.streams += 1;
                if s.begin.is_none() {
                    s.begin = Some(*start);
                    s.next = *start;
                    s.through = start - 1;
                } else if *start != s.next {
                    anomalies.push(format!(
                        "watcher {} resumed on m{} from revision {start}, but it had been delivered through {}",
                        w.watcher,
                        w.member + 1,
                        s.next - 1
                    ));
                }
            }
            WatchWhat::Compacted { start, compact_revision } => {
                report.compacted += 1;
                if *compact_revision > *start {
                    s.gaps.push((*start, compact_revision - 1));
                }
                if s.begin.is_none() {
                    s.begin = Some(*start);
                    s.through = start - 1;
                }
                s.next = s.next.max(*compact_revision);
                s.through = s.through.max(compact_revision - 1);
            }
            WatchWhat::Canceled { reason } => {
                anomalies.push(format!("watcher {} on m{} cancelled: {reason}", w.watcher, w.member + 1));
            }
            WatchWhat::Progress { revision } => {
                s.through = s.through.max(*revision);
            }
            WatchWhat::Confirmed { revision } => {
                report.confirmed += 1;
                s.through = s.through.max(*revision);
            }
            WatchWhat::Events { events } => {
                report.events += events.len();
                let mut prev = s.last_rev;
                for e in events {
                    let k = (e.rev, e.key.clone());
                    if s.seen.contains_key(&k) {
                        anomalies.push(format!(
                            "watcher {} on m{}: duplicate event at revision {} key {}",
                            w.watcher,
                            w.member + 1,
                            e.rev,
                            e.key
                        ));
                    } else if e.rev <= s.last_rev {
                        anomalies.push(format!(
                            "watcher {} on m{}: revision {} ({}) arrived after revision {} in an earlier response (out of order, or one revision split over responses)",
                            w.watcher,
                            w.member + 1,
                            e.rev,
                            e.key,
                            s.last_rev
                        ));
                    } else if e.rev < prev {
                        anomalies.push(format!(
                            "watcher {} on m{}: revision {} after {} in one response",
                            w.watcher,
                            w.member + 1,
                            e.rev,
                            prev
                        ));
                    } else if e.rev < s.next {
                        anomalies.push(format!(
                            "watcher {} on m{}: event at revision {} before its start revision {}",
                            w.watcher,
                            w.member + 1,
                            e.rev,
                            s.next
                        ));
                    }
                    if let Some(spec) = &s.spec
                        && !spec.covers(&e.key)
                    {
                        anomalies.push(format!(
                            "watcher {} on m{}: key {} outside its range",
                            w.watcher,
                            w.member + 1,
                            e.key
                        ));
                    }
                    prev = prev.max(e.rev);
                    s.seen.insert(k, e.clone());
                }
                s.last_rev = s.last_rev.max(prev);
                s.next = s.next.max(prev + 1);
                s.through = s.through.max(prev);
            }
        }
    }
    report.watchers = states.len();
    // Every event against the others and against what clients were told.
    let mut union: BTreeMap<(i64, String), (WatchEvent, usize)> = BTreeMap::new();
    for (&id, s) in &states {
        for e in s.seen.values() {
            let k = (e.rev, e.key.clone());
            match union.get(&k) {
                Some((e0, id0)) if e0 != e => anomalies.push(format!(
                    "revision {} key {}: watcher {id0} saw {:?}, watcher {id} saw {:?}",
                    e.rev, e.key, e0, e
                )),
                Some(_) => {}
                None => {
                    union.insert(k.clone(), (e.clone(), id));
                }
            }
            if let Some((v, op, _)) = told.get(&(e.key.clone(), e.rev))
                && (e.delete || *v != e.value)
            {
                anomalies.push(format!(
                    "revision {} key {}: watcher {id} saw {:?}, op {op} was told {v}",
                    e.rev, e.key, e
                ));
            }
            if let Some((key, op)) = by_rev.get(&e.rev)
                && *key != e.key
            {
                anomalies.push(format!(
                    "revision {}: watcher {id} saw key {}, but op {op} wrote {key} at that revision",
                    e.rev, e.key
                ));
            }
            if !e.delete && !written.contains(&(e.key.clone(), e.value.clone())) {
                anomalies.push(format!(
                    "revision {} key {}: watcher {id} saw value {}, which no client wrote",
                    e.rev, e.key, e.value
                ));
            }
        }
    }
    // Nothing missed: acknowledged writes and events others saw, within each watcher's cover.
    for (&id, s) in &states {
        for ((key, rev), (_, op, write)) in &told {
            if *write && s.covers(*rev, key) {
                report.checked += 1;
                if !s.seen.contains_key(&(*rev, key.clone())) {
                    anomalies.push(format!(
                        "watcher {id} (last on m{}) missed revision {rev} key {key} (acknowledged write, op {op}), covering {}..={} (compacted: {:?})",
                        s.member + 1,
                        s.begin.unwrap_or(0),
                        s.through,
                        s.gaps
                    ));
                }
            }
        }
        for ((rev, key), (_, other)) in &union {
            if s.covers(*rev, key)
                && !s.seen.contains_key(&(*rev, key.clone()))
                && !told.contains_key(&(key.clone(), *rev))
            {
                anomalies.push(format!(
                    "watcher {id} (last on m{}) missed revision {rev} key {key} (seen by watcher {other})",
                    s.member + 1
                ));
            }
        }
    }
    if anomalies.len() > MAX_REPORTED {
        let more = anomalies.len() - MAX_REPORTED;
        anomalies.truncate(MAX_REPORTED);
        anomalies.push(format!("... and {more} more"));
    }
    report.anomalies = anomalies;
    report
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::history::OpRecord;

    fn put(id: u64, key: &str, value: &str, rev: i64) -> Record {
        Record::Op(OpRecord {
            id,
            worker: 0,
            member: 0,
            key: key.into(),
            kind: "put".into(),
            invoke_ns: id * 10,
            complete_ns: id * 10 + 5,
            outcome: Outcome::Ok,
            action: Action::Write { value: value.into() },
            revision: Some(rev),
            expected_revision: None,
            error: None,
        })
    }

    fn w(watcher: usize, what: WatchWhat) -> Record {
        Record::Watch(WatchRecord { t_ns: 0, watcher, member: 0, what })
    }

    fn ev(rev: i64, key: &str, value: &str) -> WatchEvent {
        WatchEvent { rev, key: key.into(), value: value.into(), delete: false }
    }

    fn base() -> Vec<Record> {
        vec![
            put(1, "k0", "a", 2),
            put(2, "k1", "b", 3),
            put(3, "k0", "c", 4),
            w(0, WatchWhat::Declared { key: "k".into(), range_end: "l".into() }),
            w(0, WatchWhat::Created { start: 1 }),
        ]
    }

    #[test]
    fn a_complete_stream_with_a_resume_passes() {
        let mut h = base();
        h.push(w(0, WatchWhat::Events { events: vec![ev(2, "k0", "a")] }));
        h.push(w(0, WatchWhat::Created { start: 3 }));
        h.push(w(0, WatchWhat::Events { events: vec![ev(3, "k1", "b"), ev(4, "k0", "c")] }));
        h.push(w(0, WatchWhat::Progress { revision: 4 }));
        let r = check(&h);
        assert!(!r.invalid(), "{:?}", r.anomalies);
        assert_eq!((r.events, r.streams, r.checked), (3, 2, 3));
    }

    #[test]
    fn a_skipped_revision_at_a_resume_is_reported() {
        let mut h = base();
        h.push(w(0, WatchWhat::Events { events: vec![ev(2, "k0", "a")] }));
        h.push(w(0, WatchWhat::Created { start: 3 }));
        h.push(w(0, WatchWhat::Events { events: vec![ev(4, "k0", "c")] }));
        let r = check(&h);
        assert!(r.anomalies.iter().any(|a| a.contains("missed revision 3 key k1")), "{:?}", r.anomalies);
    }

    #[test]
    fn duplicates_order_splits_and_wrong_values_are_reported() {
        let mut h = base();
        h.push(w(0, WatchWhat::Events { events: vec![ev(2, "k0", "a"), ev(3, "k1", "b")] }));
        h.push(w(0, WatchWhat::Events { events: vec![ev(3, "k1", "b")] }));
        let r = check(&h);
        assert!(r.anomalies.iter().any(|a| a.contains("duplicate")), "{:?}", r.anomalies);

        let mut h = base();
        h.push(w(0, WatchWhat::Events { events: vec![ev(4, "k0", "c"), ev(2, "k0", "a")] }));
        h.push(w(0, WatchWhat::Events { events: vec![ev(3, "k1", "b")] }));
        let r = check(&h);
        assert!(r.anomalies.iter().any(|a| a.contains("in one response")), "{:?}", r.anomalies);
        assert!(r.anomalies.iter().any(|a| a.contains("earlier response")), "{:?}", r.anomalies);

        let mut h = base();
        h.push(w(0, WatchWhat::Events { events: vec![ev(2, "k0", "a"), ev(3, "k1", "x")] }));
        let r = check(&h);
        assert!(r.anomalies.iter().any(|a| a.contains("was told b")), "{:?}", r.anomalies);
        assert!(r.anomalies.iter().any(|a| a.contains("no client wrote")), "{:?}", r.anomalies);
    }

    #[test]
    fn compacted_stretches_are_excused_and_unacknowledged_events_must_reach_every_watcher() {
        let mut h = base();
        h.push(w(0, WatchWhat::Events { events: vec![ev(2, "k0", "a")] }));
        h.push(w(0, WatchWhat::Compacted { start: 3, compact_revision: 4 }));
        h.push(w(0, WatchWhat::Created { start: 4 }));
        h.push(w(0, WatchWhat::Events { events: vec![ev(4, "k0", "c")] }));
        assert!(!check(&h).invalid(), "{:?}", check(&h).anomalies);

        // Revision 5 came from a write whose outcome the client never learnt (unknown): a
        // second watcher covering it must see it too.
        let mut h = base();
        if let Record::Op(o) = put(4, "k1", "d", 5) {
            h.push(Record::Op(OpRecord { outcome: Outcome::Unknown, revision: None, ..o }));
        }
        h.push(w(0, WatchWhat::Events { events: vec![ev(2, "k0", "a"), ev(3, "k1", "b")] }));
        h.push(w(0, WatchWhat::Events { events: vec![ev(4, "k0", "c")] }));
        h.push(w(0, WatchWhat::Events { events: vec![ev(5, "k1", "d")] }));
        h.push(w(1, WatchWhat::Declared { key: "k1".into(), range_end: String::new() }));
        h.push(w(1, WatchWhat::Created { start: 3 }));
        h.push(w(1, WatchWhat::Events { events: vec![ev(3, "k1", "b")] }));
        h.push(w(1, WatchWhat::Progress { revision: 6 }));
        let r = check(&h);
        assert!(
            r.anomalies.iter().any(|a| a.contains("watcher 1") && a.contains("missed revision 5")),
            "{:?}",
            r.anomalies
        );
    }
}
