//! Alarms (etcd's `Maintenance.Alarm`): a member's NOSPACE (its store passed
//! `--quota-backend-bytes`) or CORRUPT. Raised and cleared through the log, so every member
//! holds the same alarms at the same index, and kept in snapshots.
//!
//! While an alarm is active the applier refuses commands as etcd's does: NOSPACE refuses
//! Put, a Txn with a put and LeaseGrant (`etcdserver: mvcc: database space exceeded`);
//! CORRUPT refuses every key-value and lease command (`etcdserver: corrupt cluster`).
//! Because the refusal happens when the command is applied, every member refuses the same
//! commands and no member applies a write another one refused.

//!
//! The state and the applier's refusals are [`raftkv_kvsm::alarm`]; this is the service.

use raftkv_api::Command;
use raftkv_api::Request;
use raftkv_api::etcdserverpb::alarm_request::AlarmAction;
use raftkv_api::etcdserverpb::{AlarmMember, AlarmRequest, AlarmResponse, AlarmType};
pub use raftkv_kvsm::alarm::AlarmOutcome;
use tonic::{Code, Status};

/// etcd's error for writes past the space quota.
pub fn no_space() -> Status {
    Status::new(Code::ResourceExhausted, "etcdserver: mvcc: database space exceeded")
}

/// etcd's error for requests while a CORRUPT alarm is active.
pub fn corrupt() -> Status {
    Status::new(Code::DataLoss, "etcdserver: corrupt cluster")
}

/// The refusal an outcome stands for, as the client sees it; `None` for a listing.
pub fn refusal(outcome: &AlarmOutcome) -> Option<Status> {
    match outcome {
        AlarmOutcome::Listed(_) => None,
        AlarmOutcome::NoSpace => Some(no_space()),
        AlarmOutcome::Corrupt => Some(corrupt()),
    }
}

impl crate::api::service::Api {
    /// Maintenance.Alarm: every action goes through the log (as etcd's), so a GET lists the
    /// alarms as of a committed index, and ACTIVATE/DEACTIVATE reach every member.
    ///
    /// Once auth is enabled, a GET is open to any caller (as etcd 3.4: a token given must be
    /// valid, no user is needed) and ACTIVATE/DEACTIVATE needs an administrator, refused as
    /// etcd's other Maintenance calls are (`auth: ...`, code Unknown). etcd 3.4.23 checks
    /// nothing there: any client, even without a user, could raise NOSPACE and stop every
    /// write, or disarm a CORRUPT alarm.
    pub async fn alarm(&self, req: AlarmRequest) -> Result<AlarmResponse, Status> {
        match AlarmAction::try_from(req.action) {
            Err(_) => {
                return Err(Status::invalid_argument(format!(
                    "etcdserver: unknown alarm action {}",
                    req.action
                )));
            }
            Ok(AlarmAction::Get) => self.require_valid_token_maintenance()?,
            Ok(AlarmAction::Activate | AlarmAction::Deactivate) => self.require_admin_maintenance()?,
        }
        if AlarmType::try_from(req.alarm).is_err() {
            return Err(Status::invalid_argument(format!("etcdserver: unknown alarm type {}", req.alarm)));
        }
        match self.propose_command(|id| Command::new(id, Request::Alarm(req))).await? {
            // No header, as etcd 3.4 answers.
            crate::member::kvsm::Output::Alarm(AlarmOutcome::Listed(alarms)) => {
                Ok(AlarmResponse { header: None, alarms })
            }
            _ => Err(Status::internal("unexpected result for Alarm")),
        }
    }

    /// The alarms this member has applied (no read barrier: for health checks and status).
    pub fn active_alarms(&self) -> Vec<AlarmMember> {
        self.node.shared.sm.read().alarms.list()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refusals_are_etcds() {
        let s = refusal(&AlarmOutcome::NoSpace).expect("refusal");
        assert_eq!(
            (s.code(), s.message()),
            (Code::ResourceExhausted, "etcdserver: mvcc: database space exceeded")
        );
        let s = refusal(&AlarmOutcome::Corrupt).expect("refusal");
        assert_eq!((s.code(), s.message()), (Code::DataLoss, "etcdserver: corrupt cluster"));
        assert!(refusal(&AlarmOutcome::Listed(Vec::new())).is_none());
    }
}
