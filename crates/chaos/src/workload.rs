//! Register clients: concurrent workers sending linearizable reads, puts and
//! compare-and-sets (Txn on value or on mod_revision) to random members, recording each
//! operation with its invocation and completion times and its outcome.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use raftkv_api::etcdserverpb::compare::{CompareResult, CompareTarget, TargetUnion};
use raftkv_api::etcdserverpb::kv_client::KvClient;
use raftkv_api::etcdserverpb::request_op::Request;
use raftkv_api::etcdserverpb::{Compare, PutRequest, RangeRequest, RequestOp, TxnRequest};
use tonic::transport::{Channel, Endpoint};
use tonic::{Code, Status};

use crate::history::{OpRecord, Outcome, Record, Recorder};
use crate::linearizability::Action;
use crate::rng::Rng;

#[derive(Clone, Debug)]
pub struct WorkloadConfig {
    pub workers: usize,
    pub keys: usize,
    pub op_timeout: Duration,
    /// Percentages of reads, puts, CAS on value; the rest are CAS on mod_revision.
    pub read_pct: u64,
    pub put_pct: u64,
    pub cas_value_pct: u64,
    /// Upper bound of a random pause between a worker's operations.
    pub think_ms: u64,
}

impl Default for WorkloadConfig {
    fn default() -> Self {
        WorkloadConfig {
            workers: 10,
            keys: 6,
            op_timeout: Duration::from_secs(3),
            read_pct: 40,
            put_pct: 25,
            cas_value_pct: 20,
            think_ms: 20,
        }
    }
}

pub fn channel(url: &str, timeout: Duration) -> Result<Channel, String> {
    Ok(Endpoint::from_shared(url.to_string())
        .map_err(|e| format!("bad endpoint {url}: {e}"))?
        .connect_timeout(Duration::from_millis(1000))
        .timeout(timeout)
        .connect_lazy())
}

/// Whether an error proves the request did not take effect.
pub fn classify(status: &Status) -> Outcome {
    let msg = status.message();
    let detail = format!("{status:?}");
    match status.code() {
        Code::InvalidArgument
        | Code::FailedPrecondition
        | Code::OutOfRange
        | Code::PermissionDenied
        | Code::Unauthenticated
        | Code::Unimplemented
        | Code::NotFound
        | Code::AlreadyExists => Outcome::Fail,
        // Rejected before being proposed: the proposal queue is full, or no leader to take it.
        Code::ResourceExhausted if msg.contains("too many requests") => Outcome::Fail,
        Code::Unavailable if msg == "etcdserver: no leader" => Outcome::Fail,
        // The connection could not be made: nothing was sent.
        _ if detail.contains("tcp connect error")
            || detail.contains("Connection refused")
            || detail.contains("ConnectError") =>
        {
            Outcome::Fail
        }
        _ => Outcome::Unknown,
    }
}

fn short(status: &Status) -> String {
    let mut s = format!("{:?}: {}", status.code(), status.message());
    s.truncate(160);
    s
}

/// Runs the workers until `stop` is set. Ops whose member is in `avoid` are not sent.
pub async fn run(
    cfg: WorkloadConfig,
    endpoints: Vec<String>,
    seed: u64,
    recorder: Recorder,
    stop: Arc<AtomicBool>,
) -> Result<(), String> {
    let next_id = Arc::new(AtomicU64::new(1));
    let mut tasks = Vec::new();
    for w in 0..cfg.workers {
        let clients = endpoints
            .iter()
            .map(|u| channel(u, cfg.op_timeout + Duration::from_millis(500)).map(KvClient::new))
            .collect::<Result<Vec<_>, _>>()?;
        let (cfg, recorder, stop, next_id) = (cfg.clone(), recorder.clone(), stop.clone(), next_id.clone());
        tasks.push(tokio::spawn(async move {
            worker(w, cfg, clients, Rng::new(seed ^ ((w as u64 + 1) << 40)), recorder, stop, next_id).await
        }));
    }
    for t in tasks {
        let _ = t.await;
    }
    Ok(())
}

async fn worker(
    w: usize,
    cfg: WorkloadConfig,
    mut clients: Vec<KvClient<Channel>>,
    mut rng: Rng,
    recorder: Recorder,
    stop: Arc<AtomicBool>,
    next_id: Arc<AtomicU64>,
) {
    // What this worker last saw of each key: (value, mod_revision); None = absent.
    let mut seen: HashMap<String, Option<(String, i64)>> = HashMap::new();
    let mut seq = 0u64;
    while !stop.load(Ordering::Relaxed) {
        let key = format!("k{}", rng.below(cfg.keys));
        let member = rng.below(clients.len());
        let client = &mut clients[member];
        seq += 1;
        let value = format!("w{w}-{seq}");
        let roll = rng.range(0, 100);
        let last = seen.get(&key).cloned().flatten();
        let id = next_id.fetch_add(1, Ordering::Relaxed);
        let invoke_ns = recorder.now();
        let mut rec = OpRecord {
            id,
            worker: w,
            member,
            key: key.clone(),
            kind: String::new(),
            invoke_ns,
            complete_ns: 0,
            outcome: Outcome::Unknown,
            action: Action::Read { observed: None },
            revision: None,
            expected_revision: None,
            error: None,
        };
        let timeout = cfg.op_timeout;
        if roll < cfg.read_pct {
            rec.kind = "read".into();
            let req = RangeRequest { key: key.clone().into(), ..Default::default() };
            match tokio::time::timeout(timeout, client.range(req)).await {
                Ok(Ok(resp)) => {
                    let resp = resp.into_inner();
                    let kv = resp.kvs.first();
                    let observed = kv.map(|kv| String::from_utf8_lossy(&kv.value).into_owned());
                    rec.revision = kv.map(|kv| kv.mod_revision);
                    seen.insert(
                        key.clone(),
                        kv.map(|kv| (String::from_utf8_lossy(&kv.value).into_owned(), kv.mod_revision)),
                    );
                    rec.action = Action::Read { observed };
                    rec.outcome = Outcome::Ok;
                }
                Ok(Err(s)) => {
                    rec.outcome = classify(&s);
                    rec.error = Some(short(&s));
                }
                Err(_) => rec.error = Some("client timeout".into()),
            }
        } else if roll < cfg.read_pct + cfg.put_pct {
            rec.kind = "put".into();
            rec.action = Action::Write { value: value.clone() };
            let req =
                PutRequest { key: key.clone().into(), value: value.clone().into(), ..Default::default() };
            match tokio::time::timeout(timeout, client.put(req)).await {
                Ok(Ok(resp)) => {
                    let rev = resp.into_inner().header.map(|h| h.revision);
                    rec.revision = rev;
                    if let Some(rev) = rev {
                        seen.insert(key.clone(), Some((value.clone(), rev)));
                    }
                    rec.outcome = Outcome::Ok;
                }
                Ok(Err(s)) => {
                    rec.outcome = classify(&s);
                    rec.error = Some(short(&s));
                }
                Err(_) => rec.error = Some("client timeout".into()),
            }
        } else {
            let on_value = roll < cfg.read_pct + cfg.put_pct + cfg.cas_value_pct;
            let expected = last.as_ref().map(|(v, _)| v.clone());
            let compare = if on_value {
                rec.kind = "cas-value".into();
                match &expected {
                    Some(v) => Compare {
                        key: key.clone().into(),
                        target: CompareTarget::Value as i32,
                        result: CompareResult::Equal as i32,
                        target_union: Some(TargetUnion::Value(v.clone().into())),
                        ..Default::default()
                    },
                    // Absent: its create_revision compares as 0.
                    None => Compare {
                        key: key.clone().into(),
                        target: CompareTarget::Create as i32,
                        result: CompareResult::Equal as i32,
                        target_union: Some(TargetUnion::CreateRevision(0)),
                        ..Default::default()
                    },
                }
            } else {
                rec.kind = "cas-rev".into();
                let r = last.as_ref().map_or(0, |(_, r)| *r);
                rec.expected_revision = Some(r);
                Compare {
                    key: key.clone().into(),
                    target: CompareTarget::Mod as i32,
                    result: CompareResult::Equal as i32,
                    target_union: Some(TargetUnion::ModRevision(r)),
                    ..Default::default()
                }
            };
            rec.action = Action::Cas { expected: expected.clone(), new: value.clone(), succeeded: None };
            let put = RequestOp {
                request: Some(Request::RequestPut(PutRequest {
                    key: key.clone().into(),
                    value: value.clone().into(),
                    ..Default::default()
                })),
            };
            let req = TxnRequest { compare: vec![compare], success: vec![put], failure: vec![] };
            match tokio::time::timeout(timeout, client.txn(req)).await {
                Ok(Ok(resp)) => {
                    let resp = resp.into_inner();
                    rec.outcome = Outcome::Ok;
                    rec.action =
                        Action::Cas { expected, new: value.clone(), succeeded: Some(resp.succeeded) };
                    if resp.succeeded {
                        let rev = resp.header.map(|h| h.revision);
                        rec.revision = rev;
                        if let Some(rev) = rev {
                            seen.insert(key.clone(), Some((value.clone(), rev)));
                        }
                    }
                }
                Ok(Err(s)) => {
                    rec.outcome = classify(&s);
                    rec.error = Some(short(&s));
                }
                Err(_) => rec.error = Some("client timeout".into()),
            }
        }
        rec.complete_ns = recorder.now();
        recorder.record(Record::Op(rec));
        if cfg.think_ms > 0 {
            tokio::time::sleep(Duration::from_millis(rng.range(0, cfg.think_ms))).await;
        }
    }
}
