//! Alarms (etcd's `Maintenance.Alarm`) as replicated state: a member's NOSPACE (its store
//! passed the space quota) or CORRUPT. Raised and cleared through the log (an Alarm
//! [`Command`]), so every member holds the same alarms at the same index, and kept in
//! snapshots.
//!
//! While an alarm is active the applier refuses commands as etcd's does: NOSPACE refuses
//! Put, a Txn with a put and LeaseGrant; CORRUPT refuses every key-value and lease command.
//! Because the refusal happens when the command is applied, every member refuses the same
//! commands and no member applies a write another one refused.

use std::collections::BTreeSet;

use raftkv_api::Command;
use raftkv_api::Request;
use raftkv_api::etcdserverpb::alarm_request::AlarmAction;
use raftkv_api::etcdserverpb::request_op::Request as Op;
use raftkv_api::etcdserverpb::{AlarmMember, AlarmRequest, AlarmType, RequestOp};
use serde::{Deserialize, Serialize};

/// The active alarms: `(member id, alarm type)`, at most one of each type per member.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Alarms(BTreeSet<(u64, i32)>);

/// The result of an alarm command or of a command an alarm refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AlarmOutcome {
    /// The alarms an Alarm request listed, raised or cleared (etcd's response).
    Listed(Vec<AlarmMember>),
    /// Refused: a NOSPACE alarm is active.
    NoSpace,
    /// Refused: a CORRUPT alarm is active.
    Corrupt,
}

fn member(id: u64, alarm: i32) -> AlarmMember {
    AlarmMember { member_id: id, alarm }
}

/// Whether `ops` put a key (nested transactions included).
fn ops_put(ops: &[RequestOp]) -> bool {
    ops.iter().any(|op| match &op.request {
        Some(Op::RequestPut(_)) => true,
        Some(Op::RequestTxn(t)) => ops_put(&t.success) || ops_put(&t.failure),
        _ => false,
    })
}

impl Alarms {
    /// Every active alarm, ordered by member then type.
    pub fn list(&self) -> Vec<AlarmMember> {
        self.0.iter().map(|&(id, a)| member(id, a)).collect()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Whether any member has an alarm of type `t`.
    pub fn has(&self, t: AlarmType) -> bool {
        self.0.iter().any(|&(_, a)| a == t as i32)
    }

    /// Whether member `id` has an alarm of type `t`.
    pub fn has_for(&self, id: u64, t: AlarmType) -> bool {
        self.0.contains(&(id, t as i32))
    }

    /// Applies an Alarm request as etcd's applier does: GET lists (every type for NONE),
    /// ACTIVATE and DEACTIVATE answer the alarm raised or cleared (nothing when there was
    /// nothing to do). Only NOSPACE and CORRUPT can be raised.
    pub fn apply(&mut self, req: &AlarmRequest) -> Vec<AlarmMember> {
        let kind = AlarmType::try_from(req.alarm).unwrap_or(AlarmType::None);
        match AlarmAction::try_from(req.action) {
            Ok(AlarmAction::Get) => self
                .0
                .iter()
                .filter(|&&(_, a)| kind == AlarmType::None || a == kind as i32)
                .map(|&(id, a)| member(id, a))
                .collect(),
            Ok(AlarmAction::Activate) if kind != AlarmType::None => {
                if self.0.insert((req.member_id, kind as i32)) {
                    tracing::warn!(
                        member = format!("{:x}", req.member_id),
                        alarm = kind.as_str_name(),
                        "alarm raised"
                    );
                }
                vec![member(req.member_id, kind as i32)]
            }
            Ok(AlarmAction::Deactivate) if self.0.remove(&(req.member_id, kind as i32)) => {
                tracing::info!(
                    member = format!("{:x}", req.member_id),
                    alarm = kind.as_str_name(),
                    "alarm cleared"
                );
                vec![member(req.member_id, kind as i32)]
            }
            _ => Vec::new(),
        }
    }

    /// What applying `cmd` gives when an alarm decides it: the Alarm request itself, or the
    /// refusal of a command an active alarm forbids. `None`: apply it as usual.
    pub fn intercept(&mut self, cmd: &Command) -> Option<AlarmOutcome> {
        let request = cmd.request.as_ref()?;
        if let Request::Alarm(req) = request {
            return Some(AlarmOutcome::Listed(self.apply(req)));
        }
        if self.0.is_empty() {
            return None;
        }
        if self.has(AlarmType::Corrupt)
            && matches!(
                request,
                Request::Put(_)
                    | Request::Range(_)
                    | Request::DeleteRange(_)
                    | Request::Txn(_)
                    | Request::Compaction(_)
                    | Request::LeaseGrant(_)
                    | Request::LeaseRevoke(_)
            )
        {
            return Some(AlarmOutcome::Corrupt);
        }
        if self.has(AlarmType::Nospace) {
            let writes = match request {
                Request::Put(_) | Request::LeaseGrant(_) => true,
                Request::Txn(t) => ops_put(&t.success) || ops_put(&t.failure),
                _ => false,
            };
            if writes {
                return Some(AlarmOutcome::NoSpace);
            }
        }
        None
    }

    /// etcd's Status `errors` entries for the active alarms.
    pub fn status_errors(&self) -> Vec<String> {
        self.0
            .iter()
            .map(|&(id, a)| {
                let name = AlarmType::try_from(a).map_or("NONE", |t| t.as_str_name());
                format!("memberID:{id} alarm:{name} ")
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use raftkv_api::etcdserverpb::{
        DeleteRangeRequest, LeaseGrantRequest, PutRequest, RangeRequest, TxnRequest,
    };

    fn alarm(action: AlarmAction, id: u64, t: AlarmType) -> Command {
        Command::new(
            1,
            Request::Alarm(AlarmRequest { action: action as i32, member_id: id, alarm: t as i32 }),
        )
    }

    fn listed(o: Option<AlarmOutcome>) -> Vec<AlarmMember> {
        match o {
            Some(AlarmOutcome::Listed(v)) => v,
            other => panic!("not a listing: {other:?}"),
        }
    }

    #[test]
    fn nospace_refuses_writes_not_reads_or_deletes_until_cleared() {
        let mut a = Alarms::default();
        let put = Command::put(2, PutRequest { key: "k".into(), value: "v".into(), ..Default::default() });
        let del = Command::delete_range(3, DeleteRangeRequest { key: "k".into(), ..Default::default() });
        let grant = Command::lease_grant(4, LeaseGrantRequest { id: 1, ttl: 5 });
        let put_op =
            RequestOp { request: Some(Op::RequestPut(PutRequest { key: "k".into(), ..Default::default() })) };
        let nested = TxnRequest { failure: vec![put_op], ..Default::default() };
        let txn_put = Command::txn(
            5,
            TxnRequest {
                success: vec![RequestOp { request: Some(Op::RequestTxn(nested)) }],
                ..Default::default()
            },
        );
        let range_op = RequestOp {
            request: Some(Op::RequestRange(RangeRequest { key: "k".into(), ..Default::default() })),
        };
        let txn_read = Command::txn(6, TxnRequest { success: vec![range_op], ..Default::default() });
        for c in [&put, &del, &grant, &txn_put, &txn_read] {
            assert_eq!(a.intercept(c), None);
        }
        assert_eq!(
            listed(a.intercept(&alarm(AlarmAction::Activate, 7, AlarmType::Nospace))),
            vec![member(7, 1)]
        );
        for c in [&put, &grant, &txn_put] {
            assert_eq!(a.intercept(c), Some(AlarmOutcome::NoSpace));
        }
        for c in [&del, &txn_read] {
            assert_eq!(a.intercept(c), None);
        }
        assert_eq!(listed(a.intercept(&alarm(AlarmAction::Get, 0, AlarmType::None))), vec![member(7, 1)]);
        assert_eq!(listed(a.intercept(&alarm(AlarmAction::Get, 0, AlarmType::Corrupt))), vec![]);
        // Clearing another member's alarm, or NONE, clears nothing.
        assert_eq!(listed(a.intercept(&alarm(AlarmAction::Deactivate, 8, AlarmType::Nospace))), vec![]);
        assert_eq!(listed(a.intercept(&alarm(AlarmAction::Activate, 7, AlarmType::None))), vec![]);
        assert_eq!(
            listed(a.intercept(&alarm(AlarmAction::Deactivate, 7, AlarmType::Nospace))),
            vec![member(7, 1)]
        );
        assert_eq!(a.intercept(&put), None);
        assert!(a.is_empty());
    }

    #[test]
    fn corrupt_refuses_every_key_value_command() {
        let mut a = Alarms::default();
        a.intercept(&alarm(AlarmAction::Activate, 1, AlarmType::Corrupt));
        let del = Command::delete_range(3, DeleteRangeRequest { key: "k".into(), ..Default::default() });
        assert_eq!(a.intercept(&del), Some(AlarmOutcome::Corrupt));
        assert_eq!(a.status_errors(), vec!["memberID:1 alarm:CORRUPT ".to_string()]);
        // Undecodable action or type values list nothing and change nothing.
        let bad = Command::new(1, Request::Alarm(AlarmRequest { action: 99, member_id: 1, alarm: 42 }));
        assert_eq!(listed(a.intercept(&bad)), vec![]);
        assert_eq!(a.list(), vec![member(1, 2)]);
    }

    /// Alarms are in snapshots (and a snapshot without them restores none).
    #[test]
    fn alarms_survive_snapshots() {
        use crate::KvMachine;
        use raftkv_node::StateMachine;
        let mut m = KvMachine::new(Default::default());
        let raise = alarm(AlarmAction::Activate, 9, AlarmType::Nospace);
        assert!(m.apply(1, &raise.encode_to_bytes()).is_some());
        let snap = |m: &mut KvMachine| {
            let pin = m.pin();
            let mut buf = Vec::new();
            KvMachine::write_snapshot(&pin, &mut buf, &mut |f| f(m)).expect("snapshot");
            m.unpin(pin);
            buf
        };
        let with = snap(&mut m);
        let mut other = KvMachine::new(Default::default());
        other.restore(&mut with.as_slice(), with.len() as u64).expect("restore");
        assert_eq!(other.alarms.list(), vec![member(9, 1)]);
        let clear = alarm(AlarmAction::Deactivate, 9, AlarmType::Nospace);
        assert!(m.apply(2, &clear.encode_to_bytes()).is_some());
        let without = snap(&mut m);
        other.restore(&mut without.as_slice(), without.len() as u64).expect("restore");
        assert!(other.alarms.is_empty());
    }
}
