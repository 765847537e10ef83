//! The replicated command: one client write (or log-routed read) per Raft
//! log entry, protobuf-encoded.

use bytes::{Buf, Bytes, BytesMut};
use prost::Message;

use crate::etcdserverpb::{
    CompactionRequest, DeleteRangeRequest, LeaseGrantRequest, LeaseRevokeRequest, PutRequest, RangeRequest,
    TxnRequest,
};
use crate::raftkvpb::{AuthCommand, InternalRequest, LeaseCheckpointRequest, internal_request};

/// A command replicated through the log and applied to the state machine.
pub type Command = InternalRequest;

/// The operation a [`Command`] carries.
pub type Request = internal_request::Request;

/// A log entry that is not a valid [`Command`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CommandDecodeError(pub String);

impl std::fmt::Display for CommandDecodeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "invalid command: {}", self.0)
    }
}

impl std::error::Error for CommandDecodeError {}

impl InternalRequest {
    /// A command with proposal id `id` carrying `request`.
    pub fn new(id: u64, request: Request) -> Self {
        InternalRequest { id, request: Some(request), auth_revision: 0 }
    }

    /// Command for a put.
    pub fn put(id: u64, req: PutRequest) -> Self {
        Self::new(id, Request::Put(req))
    }

    /// Command for a delete-range.
    pub fn delete_range(id: u64, req: DeleteRangeRequest) -> Self {
        Self::new(id, Request::DeleteRange(req))
    }

    /// Command for a transaction.
    pub fn txn(id: u64, req: TxnRequest) -> Self {
        Self::new(id, Request::Txn(req))
    }

    /// Command for a compaction.
    pub fn compaction(id: u64, req: CompactionRequest) -> Self {
        Self::new(id, Request::Compaction(req))
    }

    /// Command for a range read routed through the log.
    pub fn range(id: u64, req: RangeRequest) -> Self {
        Self::new(id, Request::Range(req))
    }

    /// Command granting a lease.
    pub fn lease_grant(id: u64, req: LeaseGrantRequest) -> Self {
        Self::new(id, Request::LeaseGrant(req))
    }

    /// Command revoking a lease (and deleting its keys).
    pub fn lease_revoke(id: u64, req: LeaseRevokeRequest) -> Self {
        Self::new(id, Request::LeaseRevoke(req))
    }

    /// Command recording the remaining TTLs of leases.
    pub fn lease_checkpoint(id: u64, req: LeaseCheckpointRequest) -> Self {
        Self::new(id, Request::LeaseCheckpoint(req))
    }

    /// Command changing the auth state.
    pub fn auth(id: u64, req: AuthCommand) -> Self {
        Self::new(id, Request::Auth(req))
    }

    /// Protobuf encoding of the command.
    pub fn encode_to_bytes(&self) -> Bytes {
        let mut buf = BytesMut::with_capacity(self.encoded_len());
        // Encoding into a buffer with enough capacity cannot fail; a BytesMut
        // grows on demand anyway.
        self.encode_raw(&mut buf);
        buf.freeze()
    }

    /// Decodes a command. Byte fields of the result share `buf`'s storage when
    /// `buf` is a [`Bytes`]. Malformed input yields an error, never a panic.
    /// A command without an operation is rejected.
    pub fn decode_from(buf: impl Buf) -> Result<Self, CommandDecodeError> {
        let cmd = InternalRequest::decode(buf).map_err(|e| CommandDecodeError(e.to_string()))?;
        if cmd.request.is_none() {
            return Err(CommandDecodeError("no request in command".into()));
        }
        Ok(cmd)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roundtrip() {
        let cmd = Command::put(
            7,
            PutRequest {
                key: Bytes::from_static(b"k"),
                value: Bytes::from_static(b"v"),
                ..Default::default()
            },
        );
        let enc = cmd.encode_to_bytes();
        assert_eq!(Command::decode_from(enc).ok(), Some(cmd));
    }

    #[test]
    fn garbage_is_an_error() {
        assert!(Command::decode_from(&b"\xff\xff\xff"[..]).is_err());
        assert!(Command::decode_from(&b""[..]).is_err());
    }
}
