//! Requests between members over the peer transport's requests stream: a follower hands the
//! leader the calls only the leader can serve (membership changes, lease renewals and
//! TimeToLive), and every member tells a member about to join the cluster's member list.
//!
//! The caller is authorised on the member that received the client's request (where its
//! simple token, JWT or certificate name is known); the leader runs a forwarded call without
//! a caller, as it runs its own work (lease expiry), trusting the peer that passed the
//! transport's handshake (cluster id, known member, mutual TLS when configured). No client
//! can reach this path: it exists on the peer port only.
//!
//! Body of a request: `call u8 | the etcd request, prost-encoded`. Body of an answer:
//! `0 | the etcd response, prost-encoded`, or `1 | grpc code u32 | unhandled u8 | message`
//! where `unhandled` says the member refused before doing anything because it is not the
//! leader (the sender may try the new leader).

use std::sync::Arc;
use std::time::Duration;

use bytes::{BufMut, Bytes, BytesMut};
use raftkv_api::etcdserverpb::{
    LeaseKeepAliveRequest, LeaseTimeToLiveRequest, MemberAddRequest, MemberPromoteRequest,
    MemberRemoveRequest, MemberUpdateRequest,
};
use raftkv_api::prost::Message;
use raftkv_raft::NodeId;
use raftkv_transport::{PeerMember, PeerService, RequestError, RequestFuture};
use tonic::{Code, Status};

use crate::api::lease::Leases;
use crate::api::service::Api;

/// The calls a member forwards to the leader.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Call {
    MemberAdd = 1,
    MemberRemove = 2,
    MemberUpdate = 3,
    MemberPromote = 4,
    LeaseKeepAlive = 5,
    LeaseTimeToLive = 6,
}

impl Call {
    fn from_code(code: u8) -> Option<Call> {
        Some(match code {
            1 => Call::MemberAdd,
            2 => Call::MemberRemove,
            3 => Call::MemberUpdate,
            4 => Call::MemberPromote,
            5 => Call::LeaseKeepAlive,
            6 => Call::LeaseTimeToLive,
            _ => return None,
        })
    }
}

/// What the leader answers when it is no longer the leader: nothing was done, the sender
/// may try the member that leads now.
pub fn not_leader_here() -> Status {
    Status::new(Code::Unavailable, "etcdserver: not leader")
}

fn is_not_leader_here(status: &Status) -> bool {
    status.code() == Code::Unavailable && status.message() == "etcdserver: not leader"
}

/// Why a forwarded call got no answer from the leader's handler, or its refusal.
#[derive(Debug)]
pub enum ForwardError {
    /// The leader certainly did not act on it (unreachable, not the leader any more, busy):
    /// it may be sent again.
    Unhandled(Status),
    /// Sent, but no answer came (the leader died or the deadline passed): it may have acted.
    Lost(Status),
    /// The leader's answer: an etcd error.
    Answer(Status),
}

impl ForwardError {
    pub fn into_status(self) -> Status {
        match self {
            ForwardError::Unhandled(s) | ForwardError::Lost(s) | ForwardError::Answer(s) => s,
        }
    }
}

fn transport_error(leader: u64, e: RequestError) -> ForwardError {
    let status =
        Status::new(Code::Unavailable, format!("etcdserver: cannot reach the leader {leader:x}: {e}"));
    if e.unhandled() { ForwardError::Unhandled(status) } else { ForwardError::Lost(status) }
}

/// Sends `req` as `call` to member `leader` and decodes its answer, waiting at most `limit`.
pub async fn send<Req: Message, Resp: Message + Default>(
    api: &Api,
    leader: u64,
    call: Call,
    req: &Req,
    limit: Duration,
) -> Result<Resp, ForwardError> {
    let Some(transport) = api.peer_transport() else {
        return Err(ForwardError::Unhandled(Status::new(Code::Unavailable, "etcdserver: no peer transport")));
    };
    let mut body = BytesMut::with_capacity(1 + req.encoded_len());
    body.put_u8(call as u8);
    req.encode(&mut body).map_err(|e| ForwardError::Unhandled(Status::internal(e.to_string())))?;
    let answer = transport
        .request(NodeId(leader), body.freeze(), limit)
        .await
        .map_err(|e| transport_error(leader, e))?;
    decode_answer(&answer)
}

fn malformed(what: &str) -> ForwardError {
    ForwardError::Lost(Status::new(
        Code::Internal,
        format!("etcdserver: malformed answer from the leader: {what}"),
    ))
}

fn decode_answer<Resp: Message + Default>(answer: &[u8]) -> Result<Resp, ForwardError> {
    match answer.split_first() {
        Some((0, rest)) => Resp::decode(rest).map_err(|e| malformed(&e.to_string())),
        Some((1, rest)) if rest.len() >= 5 => {
            let mut code = [0u8; 4];
            code.copy_from_slice(&rest[..4]);
            let code = Code::from_i32(i32::try_from(u32::from_be_bytes(code)).unwrap_or(2));
            let unhandled = rest[4] == 1;
            let status = Status::new(code, String::from_utf8_lossy(&rest[5..]).into_owned());
            Err(if unhandled { ForwardError::Unhandled(status) } else { ForwardError::Answer(status) })
        }
        _ => Err(malformed("unknown answer kind")),
    }
}

fn encode_answer<Resp: Message>(result: Result<Resp, Status>) -> Bytes {
    let mut out = BytesMut::new();
    match result {
        Ok(resp) => {
            out.put_u8(0);
            // Writing into a BytesMut grows it: encoding cannot run out of room.
            let _ = resp.encode(&mut out);
        }
        Err(status) => {
            out.put_u8(1);
            out.put_u32(status.code() as i32 as u32);
            out.put_u8(u8::from(is_not_leader_here(&status)));
            out.put_slice(status.message().as_bytes());
        }
    }
    out.freeze()
}

/// Why a peer's request got no answer from the handler (its text goes back to the peer as
/// the transport's failure answer).
#[derive(Debug, thiserror::Error)]
pub enum PeerRequestError {
    #[error("empty request")]
    Empty,
    #[error("unknown call {0}")]
    UnknownCall(u8),
    #[error("malformed request: {0}")]
    Malformed(#[from] raftkv_api::prost::DecodeError),
}

fn decode_request<Req: Message + Default>(body: &[u8]) -> Result<Req, PeerRequestError> {
    Ok(Req::decode(body)?)
}

/// The member's handler of peer requests and member lists (registered with the transport).
#[derive(Clone)]
pub struct PeerRequests {
    pub api: Api,
    pub leases: Leases,
}

impl PeerRequests {
    async fn handle(self, from: NodeId, body: Bytes) -> Result<Bytes, PeerRequestError> {
        let Some((&code, req)) = body.split_first() else { return Err(PeerRequestError::Empty) };
        let call = Call::from_code(code).ok_or(PeerRequestError::UnknownCall(code))?;
        tracing::debug!(from = format!("{:x}", from.0), ?call, "request from a peer");
        Ok(match call {
            Call::MemberAdd => {
                encode_answer(self.api.member_add_here(decode_request::<MemberAddRequest>(req)?).await)
            }
            Call::MemberRemove => {
                encode_answer(self.api.member_remove_here(decode_request::<MemberRemoveRequest>(req)?).await)
            }
            Call::MemberUpdate => {
                encode_answer(self.api.member_update_here(decode_request::<MemberUpdateRequest>(req)?).await)
            }
            Call::MemberPromote => encode_answer(
                self.api.member_promote_here(decode_request::<MemberPromoteRequest>(req)?).await,
            ),
            Call::LeaseKeepAlive => {
                let req = decode_request::<LeaseKeepAliveRequest>(req)?;
                encode_answer(self.leases.renew(req.id, true).await)
            }
            Call::LeaseTimeToLive => {
                let req = decode_request::<LeaseTimeToLiveRequest>(req)?;
                encode_answer(self.leases.time_to_live(req, true).await)
            }
        })
    }
}

impl PeerService for PeerRequests {
    fn request(&self, from: NodeId, body: Bytes) -> RequestFuture {
        let this = self.clone();
        Box::pin(async move { this.handle(from, body).await.map_err(|e| e.to_string()) })
    }

    /// What etcd's peer `/members` tells: ids, names, peer URLs, learner or not.
    fn members(&self) -> Vec<PeerMember> {
        self.api
            .member_protos()
            .into_iter()
            .map(|m| PeerMember {
                id: NodeId(m.id),
                name: m.name,
                peer_urls: m.peer_ur_ls,
                is_learner: m.is_learner,
            })
            .collect()
    }
}

/// Registers the member's handler with its peer transport.
pub fn register(api: &Api, leases: &Leases) {
    if let Some(t) = api.peer_transport() {
        t.set_service(Arc::new(PeerRequests { api: api.clone(), leases: leases.clone() }));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use raftkv_api::etcdserverpb::MemberRemoveResponse;

    #[test]
    fn answers_round_trip_with_the_unhandled_flag() {
        let ok = encode_answer(Ok(MemberRemoveResponse { header: None, members: Vec::new() }));
        assert!(matches!(decode_answer::<MemberRemoveResponse>(&ok), Ok(r) if r.members.is_empty()));
        let refused = encode_answer::<MemberRemoveResponse>(Err(Status::new(
            Code::PermissionDenied,
            "etcdserver: permission denied",
        )));
        match decode_answer::<MemberRemoveResponse>(&refused) {
            Err(ForwardError::Answer(s)) => {
                assert_eq!((s.code(), s.message()), (Code::PermissionDenied, "etcdserver: permission denied"))
            }
            other => panic!("{other:?}"),
        }
        let moved = encode_answer::<MemberRemoveResponse>(Err(not_leader_here()));
        assert!(matches!(decode_answer::<MemberRemoveResponse>(&moved), Err(ForwardError::Unhandled(_))));
        assert!(matches!(decode_answer::<MemberRemoveResponse>(&[7]), Err(ForwardError::Lost(_))));
        assert!(matches!(decode_answer::<MemberRemoveResponse>(&[1, 0]), Err(ForwardError::Lost(_))));
    }
}
