//! Membership changes in the server: the replicated member registry (names, peer URLs,
//! learners, removed ids), etcd's Cluster API (MemberAdd, MemberRemove, MemberUpdate,
//! MemberPromote, MemberList) and Maintenance.MoveLeader on top of the core's configuration
//! changes, and the watcher that keeps the peer transport in step with the registry and stops
//! a member that was removed or never added.
//!
//! As etcd (its `--strict-reconfig-check`, on by default), a change that would leave the
//! cluster without a quorum of started, reachable voters is refused before it is proposed
//! (`not enough started members`, `unhealthy cluster`); once auth is enabled every change is
//! for administrators, checked on the member the client called. A follower hands a change to
//! the leader over the peer transport ([`crate::member::forward`]), retrying against a new leader.
//!
//! Each `MemberAdd` gives the new member a fresh id (a hash of its peer URLs, the cluster
//! token and the time, different from every current and removed id), as etcd does, so a
//! member replaced on the same peer URLs never takes the id of its previous incarnation; a
//! member joining with `--initial-cluster-state existing` learns its id from its peers'
//! member list (see `crate::member::server`).
//!
//! A change travels as one configuration-change entry: the core's steps (add voter, add
//! learner, remove, update) and, in the entry's context, this module's [`ChangeContext`] (the
//! request id and the member's peer URLs). Every member applies it to the [`Registry`] in
//! its state machine, so addresses are learned from the log, and from snapshots, which carry
//! the registry.

use std::collections::BTreeMap;
use std::time::Duration;

use raftkv_api::etcdserverpb::{
    Member, MemberAddRequest, MemberAddResponse, MemberPromoteRequest, MemberPromoteResponse,
    MemberRemoveRequest, MemberRemoveResponse, MemberUpdateRequest, MemberUpdateResponse, MoveLeaderRequest,
    MoveLeaderResponse,
};
use raftkv_raft::{ConfChange, ConfChangeError, ConfChangeStep, NodeId, ProposeError};
use tonic::{Code, Status};

use crate::api::service::Api;
use crate::config;
use crate::member::forward::{self, Call, ForwardError};
use crate::member::identity::MemberRecord;
use crate::node::NodeError;

pub use raftkv_kvsm::registry::{ChangeContext, Registry};

/// The registry of the members a cluster was bootstrapped with.
pub fn seed_registry(members: &[MemberRecord]) -> Registry {
    Registry::seed(members.iter().map(|m| (m.id, m.name.clone(), m.peer_urls.clone(), m.is_learner)))
}

// ----- etcd's errors (etcdserver/api/v3rpc/rpctypes/error.go, etcdserver/errors.go) -----

/// Pause between attempts of a change a new leader cannot take yet.
const CHANGE_RETRY_PAUSE: Duration = Duration::from_millis(20);
/// Pause between forwards of a change while the leader changes.
const FORWARD_RETRY_PAUSE: Duration = Duration::from_millis(50);

fn member_not_found() -> Status {
    Status::new(Code::NotFound, "etcdserver: member not found")
}
fn member_exist() -> Status {
    Status::new(Code::FailedPrecondition, "etcdserver: member ID already exist")
}
fn peer_url_exist() -> Status {
    Status::new(Code::FailedPrecondition, "etcdserver: Peer URLs already exists")
}
fn bad_urls() -> Status {
    Status::new(Code::InvalidArgument, "etcdserver: given member URLs are invalid")
}
fn not_learner() -> Status {
    Status::new(Code::FailedPrecondition, "etcdserver: can only promote a learner member")
}
fn learner_not_ready() -> Status {
    Status::new(
        Code::FailedPrecondition,
        "etcdserver: can only promote a learner member which is in sync with leader",
    )
}
/// etcd 3.4 answers it with code Unknown (its gRPC error table has no entry for it).
fn not_enough_started() -> Status {
    Status::new(Code::Unknown, "etcdserver: re-configuration failed due to not enough started members")
}
fn unhealthy() -> Status {
    Status::new(Code::Unavailable, "etcdserver: unhealthy cluster")
}
fn not_leader() -> Status {
    Status::new(Code::FailedPrecondition, "etcdserver: not leader")
}
fn bad_transferee() -> Status {
    Status::new(Code::FailedPrecondition, "etcdserver: bad leader transferee")
}
fn leader_changed() -> Status {
    Status::new(Code::Unavailable, "etcdserver: leader changed")
}

/// A refusal by the core, as the client sees it. etcd has no error of its own for a change
/// proposed while another is in progress (its Raft drops the second change and the request
/// times out); raftkv says so at once, with FailedPrecondition.
fn refused(e: NodeError) -> Status {
    match e {
        NodeError::ConfChange(e) => match e {
            ProposeError::LearnerNotReady(_) => learner_not_ready(),
            ProposeError::ConfChangeInProgress => Status::new(
                Code::FailedPrecondition,
                "etcdserver: another membership change is in progress; retry once it completes",
            ),
            ProposeError::InvalidConfChange(ConfChangeError::NoVoters) => not_enough_started(),
            ProposeError::InvalidConfChange(ConfChangeError::NotMember(_)) => member_not_found(),
            ProposeError::InvalidConfChange(ConfChangeError::AlreadyVoter(_)) => not_learner(),
            ProposeError::InvalidConfChange(ConfChangeError::AlreadyMember(_)) => member_exist(),
            ProposeError::InvalidConfChange(other) => {
                Status::new(Code::InvalidArgument, format!("etcdserver: {other}"))
            }
            ProposeError::NotLeader { .. } => leader_changed(),
            ProposeError::NoCommitInTerm | ProposeError::TransferInProgress => Status::new(
                Code::Unavailable,
                format!("etcdserver: the leader cannot change the membership yet ({e}); retry shortly"),
            ),
            ProposeError::TooManyUncommitted | ProposeError::Empty => {
                Status::new(Code::Unavailable, format!("etcdserver: {e}"))
            }
        },
        NodeError::Transfer(e) => Status::new(Code::FailedPrecondition, format!("etcdserver: {e}")),
        other => crate::api::service::node_status(other),
    }
}

/// Checks peer URLs as etcd does (`http(s)://host:port`).
fn check_urls(urls: &[String]) -> Result<(), Status> {
    if urls.is_empty() || urls.iter().any(|u| config::parse_url(u).is_err()) {
        return Err(bad_urls());
    }
    Ok(())
}

/// The id `MemberAdd` gives a member with these peer URLs at time `nanos` (nanoseconds since
/// the epoch): a hash of the sorted URLs, the cluster token and the time, as etcd's
/// `NewMember` (which hashes the time too), so re-adding a member on the same URLs gives it
/// a new id.
pub fn new_member_id(peer_urls: &[String], token: &str, nanos: u64) -> u64 {
    let mut urls = peer_urls.to_vec();
    urls.sort();
    let time = nanos.to_string();
    let mut parts: Vec<&str> = urls.iter().map(String::as_str).collect();
    parts.push(token);
    parts.push(&time);
    config::stable_hash(&parts)
}

/// A fresh id for a new member: [`new_member_id`] at the current time, moved on until it is
/// none of the ids in `taken` (current and removed members, this one).
fn unique_member_id(peer_urls: &[String], token: &str, mut taken: impl FnMut(u64) -> bool) -> u64 {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
        .unwrap_or(0);
    let mut nanos = now;
    loop {
        let id = new_member_id(peer_urls, token, nanos);
        if !taken(id) {
            return id;
        }
        nanos = nanos.wrapping_add(1);
    }
}

/// A change refused by this member as it lost leadership meanwhile, as the client sees it.
fn as_local(status: Status) -> Status {
    if status.code() == Code::Unavailable && status.message() == forward::not_leader_here().message() {
        leader_changed()
    } else {
        status
    }
}

impl Api {
    /// The registry as this member applied it.
    pub fn registry(&self) -> Registry {
        self.node.shared.sm.read().registry.clone()
    }

    /// The members in etcd's form, with the client URLs (and names) members published.
    pub fn member_protos(&self) -> Vec<Member> {
        let sm = self.node.shared.sm.read();
        sm.registry
            .members
            .iter()
            .map(|(id, m)| {
                let published = sm.members.get(id);
                Member {
                    id: *id,
                    name: published.map_or_else(|| m.name.clone(), |p| p.name.clone()),
                    peer_ur_ls: m.peer_urls.clone(),
                    client_ur_ls: published.map(|p| p.client_urls.clone()).unwrap_or_default(),
                    // A member added as a voter is one, also while it catches up as a learner.
                    is_learner: m.is_learner && !m.promote,
                }
            })
            .collect()
    }

    /// Hands a change to the leader when this member is not the leader (`Ok(None)`: it is).
    /// A change the leader certainly did not take (unreachable, or no longer the leader) is
    /// sent again, to whichever member leads by then, until the request timeout.
    async fn via_leader<Req, Resp>(&self, call: Call, req: &Req) -> Result<Option<Resp>, Status>
    where
        Req: raftkv_api::prost::Message,
        Resp: raftkv_api::prost::Message + Default,
    {
        let deadline = tokio::time::Instant::now() + self.request_timeout();
        loop {
            let s = self.node.status();
            if s.is_leader {
                return Ok(None);
            }
            let err = if s.leader == 0 {
                Status::new(Code::Unavailable, "etcdserver: no leader")
            } else {
                let left = deadline.saturating_duration_since(tokio::time::Instant::now());
                match forward::send(self, s.leader, call, req, left).await {
                    Ok(resp) => return Ok(Some(resp)),
                    Err(ForwardError::Unhandled(status)) => status,
                    Err(e) => return Err(as_local(e.into_status())),
                }
            };
            if tokio::time::Instant::now() + FORWARD_RETRY_PAUSE >= deadline {
                return Err(as_local(err));
            }
            tokio::time::sleep(FORWARD_RETRY_PAUSE).await;
        }
    }

    /// The voting members: (id, started), a member being started once it has published
    /// its name and client URLs (etcd's `IsStarted`).
    fn voters(&self) -> Vec<(u64, bool)> {
        let sm = self.node.shared.sm.read();
        sm.registry
            .members
            .iter()
            .filter(|(id, _)| sm.registry.is_voter(**id))
            .map(|(id, _)| (*id, sm.members.contains_key(id)))
            .collect()
    }

    /// Whether this member's peer connection to `id` is up (itself counts as connected).
    fn connected(&self, id: u64) -> bool {
        id == self.member_id() || self.peer_transport().is_some_and(|t| t.is_connected(NodeId(id)))
    }

    /// etcd's strict reconfiguration check for an addition (`mayAddMember`): a voter may be
    /// added only if the started voters stay a quorum of the larger cluster (with etcd's
    /// exception of a second voter for a one-member cluster, for restoring data), and any
    /// member only while this member reaches every voter (etcd requires the connections to
    /// be up for 5 s; here they must be up).
    fn may_add(&self, is_learner: bool) -> Result<(), Status> {
        let voters = self.voters();
        let started = voters.iter().filter(|(_, s)| *s).count();
        let members = voters.len() + 1;
        // A second voter for a one-member cluster is etcd's exception (restoring data).
        let restoring = started == 1 && members == 2;
        if !is_learner && !restoring && started < members / 2 + 1 {
            return Err(not_enough_started());
        }
        if !voters.iter().all(|(id, _)| self.connected(*id)) {
            return Err(unhealthy());
        }
        Ok(())
    }

    /// etcd's strict reconfiguration check for a removal (`mayRemoveMember`): a learner may
    /// always go; a voter only if the started voters left are a quorum of what is left, and,
    /// unless it is down already, only if the voters this member reaches stay a quorum
    /// without it.
    fn may_remove(&self, id: u64, is_learner: bool) -> Result<(), Status> {
        if is_learner {
            return Ok(());
        }
        let voters = self.voters();
        let rest: Vec<&(u64, bool)> = voters.iter().filter(|(v, _)| *v != id).collect();
        let started = rest.iter().filter(|(_, s)| *s).count();
        if started < rest.len() / 2 + 1 {
            return Err(not_enough_started());
        }
        if id != self.member_id() && !self.connected(id) {
            return Ok(());
        }
        let active = voters.iter().filter(|(v, _)| self.connected(*v)).count();
        if active.saturating_sub(1) < 1 + (voters.len().saturating_sub(1)) / 2 {
            return Err(unhealthy());
        }
        Ok(())
    }

    /// Whether the removal of `id` is applied here, waiting up to an election timeout for
    /// the apply to catch up with the commit.
    async fn removal_applied(&self, id: u64) -> bool {
        let deadline = tokio::time::Instant::now() + self.election_timeout();
        loop {
            if self.node.shared.sm.read().registry.removed.contains(&id) {
                return true;
            }
            if tokio::time::Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    fn is_leader(&self) -> bool {
        self.node.status().is_leader
    }

    /// Proposes `steps` with the context, waits until applied here.
    /// A leader just elected cannot change the membership until an entry of its term is
    /// committed (a few milliseconds): the change waits for it, within the request timeout.
    async fn change(&self, steps: Vec<ConfChangeStep>, peer_urls: Vec<String>) -> Result<(), Status> {
        self.change_as(steps, peer_urls, false).await
    }

    /// [`Self::change`], `voter` telling that an added learner is to be promoted once it
    /// has caught up.
    async fn change_as(
        &self,
        steps: Vec<ConfChangeStep>,
        peer_urls: Vec<String>,
        voter: bool,
    ) -> Result<(), Status> {
        let deadline = tokio::time::Instant::now() + self.request_timeout();
        loop {
            let request_id = self.node.next_request_id();
            let context = ChangeContext { request_id, peer_urls: peer_urls.clone(), voter }.encode();
            let change = ConfChange { steps: steps.clone(), context };
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            match self.node.propose_conf_change(request_id, change, left).await {
                Ok(_) => return Ok(()),
                Err(NodeError::ConfChange(ProposeError::NoCommitInTerm))
                    if tokio::time::Instant::now() + CHANGE_RETRY_PAUSE < deadline =>
                {
                    tokio::time::sleep(CHANGE_RETRY_PAUSE).await;
                }
                Err(e) => return Err(refused(e)),
            }
        }
    }

    pub async fn member_add(&self, req: MemberAddRequest) -> Result<MemberAddResponse, Status> {
        self.require_admin()?;
        check_urls(&req.peer_ur_ls)?;
        if let Some(mut resp) = self.via_leader::<_, MemberAddResponse>(Call::MemberAdd, &req).await? {
            self.fill(&mut resp.header);
            return Ok(resp);
        }
        self.member_add_here(req).await.map_err(as_local)
    }

    /// MemberAdd on the leader (for its own client or forwarded by a follower, which
    /// authorised the caller).
    pub(crate) async fn member_add_here(&self, req: MemberAddRequest) -> Result<MemberAddResponse, Status> {
        if !self.is_leader() {
            return Err(forward::not_leader_here());
        }
        check_urls(&req.peer_ur_ls)?;
        self.may_add(req.is_learner)?;
        let registry = self.registry();
        if registry.url_owner(&req.peer_ur_ls, None).is_some() {
            return Err(peer_url_exist());
        }
        let me = self.member_id();
        let id = unique_member_id(&req.peer_ur_ls, self.cluster_token(), |id| {
            id == 0 || id == me || registry.members.contains_key(&id) || registry.removed.contains(&id)
        });
        // The leader must reach the new member as soon as the entry is appended.
        if let (Some(t), Ok(addr)) = (self.peer_transport(), config::parse_url(&req.peer_ur_ls[0])) {
            t.add_peer(NodeId(id), addr.to_string());
        }
        // A configuration is in force once appended, so a second voter added to a one-member
        // cluster would be needed to commit its own addition, before it has even started
        // (and a member that never starts, a mistyped URL, would leave the cluster without a
        // quorum for good). Such a voter joins as a learner that the leader promotes once it
        // has caught up; the Cluster API shows it as a voter from the start, as etcd does.
        // Counted in the configuration: a member added this way counts once promoted.
        let config_voters = registry.members.values().filter(|m| !m.is_learner).count();
        let catch_up_first = !req.is_learner && config_voters == 1;
        let step = if req.is_learner || catch_up_first {
            ConfChangeStep::AddLearner(NodeId(id))
        } else {
            ConfChangeStep::AddVoter(NodeId(id))
        };
        if let Err(e) = self.change_as(vec![step], req.peer_ur_ls.clone(), catch_up_first).await {
            if let Some(t) = self.peer_transport()
                && !self.registry().members.contains_key(&id)
            {
                t.remove_peer(NodeId(id));
            }
            return Err(e);
        }
        tracing::info!(
            member_id = format!("{id:x}"),
            peer_urls = ?req.peer_ur_ls,
            learner = req.is_learner,
            catch_up_first,
            "member added"
        );
        let member = Member {
            id,
            name: String::new(),
            peer_ur_ls: req.peer_ur_ls,
            client_ur_ls: Vec::new(),
            is_learner: req.is_learner,
        };
        Ok(MemberAddResponse {
            header: Some(self.header(0)),
            member: Some(member),
            members: self.member_protos(),
        })
    }

    pub async fn member_remove(&self, req: MemberRemoveRequest) -> Result<MemberRemoveResponse, Status> {
        self.require_admin()?;
        if let Some(mut resp) = self.via_leader::<_, MemberRemoveResponse>(Call::MemberRemove, &req).await? {
            self.fill(&mut resp.header);
            return Ok(resp);
        }
        self.member_remove_here(req).await.map_err(as_local)
    }

    /// MemberRemove on the leader.
    pub(crate) async fn member_remove_here(
        &self,
        req: MemberRemoveRequest,
    ) -> Result<MemberRemoveResponse, Status> {
        if !self.is_leader() {
            return Err(forward::not_leader_here());
        }
        let registry = self.registry();
        let learner = registry.members.contains_key(&req.id) && !registry.is_voter(req.id);
        self.may_remove(req.id, learner)?;
        if !self.registry().members.contains_key(&req.id) {
            return Err(member_not_found());
        }
        if let Err(e) = self.change(vec![ConfChangeStep::Remove(NodeId(req.id))], Vec::new()).await {
            // A leader removing itself hands leadership over as the removal commits, which can
            // fail the wait ("leader changed") before the removal is applied here: the
            // applied registry settles whether it happened.
            if !(e.code() == Code::Unavailable && self.removal_applied(req.id).await) {
                return Err(e);
            }
        }
        tracing::info!(member_id = format!("{:x}", req.id), "member removed");
        Ok(MemberRemoveResponse { header: Some(self.header(0)), members: self.member_protos() })
    }

    pub async fn member_update(&self, req: MemberUpdateRequest) -> Result<MemberUpdateResponse, Status> {
        self.require_admin()?;
        // An unknown member first, as etcd (it checks the URLs only when applying).
        if !self.registry().members.contains_key(&req.id) {
            return Err(member_not_found());
        }
        check_urls(&req.peer_ur_ls)?;
        if let Some(mut resp) = self.via_leader::<_, MemberUpdateResponse>(Call::MemberUpdate, &req).await? {
            self.fill(&mut resp.header);
            return Ok(resp);
        }
        self.member_update_here(req).await.map_err(as_local)
    }

    /// MemberUpdate on the leader.
    pub(crate) async fn member_update_here(
        &self,
        req: MemberUpdateRequest,
    ) -> Result<MemberUpdateResponse, Status> {
        if !self.is_leader() {
            return Err(forward::not_leader_here());
        }
        check_urls(&req.peer_ur_ls)?;
        let registry = self.registry();
        if !registry.members.contains_key(&req.id) {
            return Err(member_not_found());
        }
        if registry.url_owner(&req.peer_ur_ls, Some(req.id)).is_some() {
            return Err(peer_url_exist());
        }
        self.change(vec![ConfChangeStep::Update(NodeId(req.id))], req.peer_ur_ls.clone()).await?;
        tracing::info!(member_id = format!("{:x}", req.id), peer_urls = ?req.peer_ur_ls, "member updated");
        Ok(MemberUpdateResponse { header: Some(self.header(0)), members: self.member_protos() })
    }

    pub async fn member_promote(&self, req: MemberPromoteRequest) -> Result<MemberPromoteResponse, Status> {
        self.require_admin()?;
        if let Some(mut resp) = self.via_leader::<_, MemberPromoteResponse>(Call::MemberPromote, &req).await?
        {
            self.fill(&mut resp.header);
            return Ok(resp);
        }
        self.member_promote_here(req).await.map_err(as_local)
    }

    /// MemberPromote on the leader.
    pub(crate) async fn member_promote_here(
        &self,
        req: MemberPromoteRequest,
    ) -> Result<MemberPromoteResponse, Status> {
        if !self.is_leader() {
            return Err(forward::not_leader_here());
        }
        let registry = self.registry();
        let Some(member) = registry.members.get(&req.id) else {
            return Err(member_not_found());
        };
        // A member added as a voter is one as far as the API goes (the leader promotes it).
        if !member.is_learner || member.promote {
            return Err(not_learner());
        }
        self.change(vec![ConfChangeStep::AddVoter(NodeId(req.id))], Vec::new()).await?;
        tracing::info!(member_id = format!("{:x}", req.id), "learner promoted");
        Ok(MemberPromoteResponse { header: Some(self.header(0)), members: self.member_protos() })
    }

    /// On the leader: promotes `id`, a member added as a voter that waits as a learner, if
    /// it has caught up (the core's readiness rule for promotions, etcd's: it holds at least
    /// 90% of the leader's log); otherwise it is tried again later.
    async fn promote_caught_up(&self, id: u64) {
        match self.change(vec![ConfChangeStep::AddVoter(NodeId(id))], Vec::new()).await {
            Ok(()) => tracing::info!(
                member_id = format!("{id:x}"),
                "member added as a voter has caught up: promoted"
            ),
            Err(e) => {
                tracing::debug!(member_id = format!("{id:x}"), error = %e.message(), "member added as a voter not promoted yet")
            }
        }
    }

    /// Maintenance.MoveLeader: only the leader hands over, to a voting member.
    pub async fn move_leader(&self, req: MoveLeaderRequest) -> Result<MoveLeaderResponse, Status> {
        self.require_admin()?;
        if !self.is_leader() {
            return Err(not_leader());
        }
        let registry = self.registry();
        match registry.members.get(&req.target_id) {
            Some(m) if !m.is_learner => {}
            _ => return Err(bad_transferee()),
        }
        if req.target_id == self.member_id() {
            return Ok(MoveLeaderResponse { header: Some(self.header(0)) });
        }
        let started = std::time::Instant::now();
        match self.node.transfer_leader(Some(NodeId(req.target_id)), self.request_timeout()).await {
            Ok(_) => {
                tracing::info!(
                    to = format!("{:x}", req.target_id),
                    took_ms = started.elapsed().as_millis() as u64,
                    "leadership transfer finished"
                );
                Ok(MoveLeaderResponse { header: Some(self.header(0)) })
            }
            Err(NodeError::Timeout) => Err(Status::new(
                Code::Unavailable,
                "etcdserver: request timed out, leader transfer took too long",
            )),
            Err(NodeError::Transfer(_)) => Err(bad_transferee()),
            Err(e) => Err(refused(e)),
        }
    }
}

/// Why the watcher stops the member.
pub type StopReason = String;

/// How long a member goes without a leader before it asks its peers for the member list,
/// and again between two lookups.
const LOOKUP_AFTER: Duration = Duration::from_secs(3);
/// How long one peer has to answer a lookup.
const LOOKUP_LIMIT: Duration = Duration::from_secs(2);

/// Asks the peers this member knows for the cluster's member list (the members stream, as a
/// joining member does) and learns the addresses of members it does not know yet: the
/// transport then accepts their connections and can answer them. Only addresses change
/// here; the configuration stays what this member has applied. Removed members and
/// answers of another cluster are ignored.
async fn learn_addresses(
    transport: raftkv_transport::TransportHandle,
    tls: Option<raftkv_transport::PeerTlsConfig>,
    cluster_id: u64,
    me: u64,
    removed: std::collections::BTreeSet<u64>,
) {
    let known = transport.peers();
    let mut asks = tokio::task::JoinSet::new();
    for addr in known.values() {
        let (addr, tls) = (addr.clone(), tls.clone());
        asks.spawn(
            async move { raftkv_transport::discover_members(&addr, tls.as_ref(), LOOKUP_LIMIT).await },
        );
    }
    while let Some(answer) = asks.join_next().await {
        let Ok(Ok(found)) = answer else { continue };
        if found.cluster_id != cluster_id {
            continue;
        }
        for m in &found.members {
            if m.id.0 == me || known.contains_key(&m.id) || removed.contains(&m.id.0) {
                continue;
            }
            let Some(addr) = m.peer_urls.first().and_then(|u| config::parse_url(u).ok()) else { continue };
            tracing::info!(
                peer = format!("{:x}", m.id.0),
                %addr,
                from = format!("{:x}", found.member_id.0),
                "peer address learned from a peer's member list (this member has not applied its addition yet)"
            );
            transport.add_peer(m.id, addr.to_string());
        }
        return;
    }
}

/// Keeps the peer transport in step with the registry (new members dialed, new addresses
/// used, removed members refused) and reports when this member must stop: it was removed
/// (it applied its own removal and is caught up, or the leader or a majority of its peers
/// refuse it as removed), or it joined with `--initial-cluster-state existing` but the
/// cluster does not know it.
///
/// One peer's refusal is not enough: a peer that lags (it was paused, or is replaying its
/// log after a restart) may still refuse an id the cluster has re-admitted since. Ids are not
/// reused by `MemberAdd`, but a member restored from an old data dir can meet such a peer. A
/// refusal stops counting once a connection to that peer succeeds.
///
/// A member that has been without a leader for a while asks its peers for the cluster's
/// member list ([`learn_addresses`]): when a member added while it was away (paused, cut
/// off) has become the leader, this member, which has not applied that addition, would
/// otherwise refuse the leader's connections as from an unknown peer and never catch up
/// (etcd's peers learn an unknown sender's URLs from its first message likewise).
pub async fn watch(
    api: Api,
    transport: raftkv_transport::TransportHandle,
    peer_tls: Option<raftkv_transport::PeerTlsConfig>,
    mut refusals: tokio::sync::mpsc::Receiver<(NodeId, bool)>,
    joining: bool,
    stop: tokio::sync::oneshot::Sender<StopReason>,
) {
    let me = api.member_id();
    let mut seen = 0;
    let mut unknown_since: Option<std::time::Instant> = None;
    // Peers refusing this member (`true`: as removed), until a connection to them succeeds.
    let mut refused: BTreeMap<NodeId, bool> = BTreeMap::new();
    let mut tick = tokio::time::interval(Duration::from_millis(100));
    let mut leaderless_since: Option<std::time::Instant> = None;
    let mut lookup: Option<tokio::task::JoinHandle<()>> = None;
    let mut promoting: Option<tokio::task::JoinHandle<()>> = None;
    let reason = loop {
        tokio::select! {
            _ = tick.tick() => {}
            refusal = refusals.recv() => match refusal {
                Some((by, removed)) => {
                    refused.insert(by, removed);
                    // A member that has never heard from a leader, refused: the cluster may
                    // not know it (or not yet: see below).
                    if joining && api.node.status().applied == 0 {
                        unknown_since.get_or_insert_with(std::time::Instant::now);
                    }
                }
                None => return,
            },
        }
        refused.retain(|id, _| !transport.is_connected(*id));
        let status = api.node.status();
        if status.leader != 0 || (joining && status.applied == 0) {
            leaderless_since = None;
        } else if leaderless_since.get_or_insert_with(std::time::Instant::now).elapsed() > LOOKUP_AFTER
            && lookup.as_ref().is_none_or(|l| l.is_finished())
        {
            leaderless_since = Some(std::time::Instant::now());
            let removed = api.node.shared.sm.read().registry.removed.clone();
            lookup = Some(tokio::spawn(learn_addresses(
                transport.clone(),
                peer_tls.clone(),
                api.cluster_id(),
                me,
                removed,
            )));
        }
        // The other voters this member knows of: the registry's, or before anything was
        // applied, the peers it was started with. Voters only: a removed member talks to
        // the voters (its campaigns) and to the leader, never to learners, so refusals from
        // learners never come and a majority counted over them could never be reached.
        let others: Vec<NodeId> = {
            let sm = api.node.shared.sm.read();
            if sm.registry.members.is_empty() {
                transport.peers().into_keys().filter(|id| id.0 != me).collect()
            } else {
                sm.registry
                    .members
                    .iter()
                    .filter(|(id, m)| **id != me && !m.is_learner)
                    .map(|(id, _)| NodeId(*id))
                    .collect()
            }
        };
        let refusing = |removed_only: bool| {
            others.iter().filter(|id| refused.get(id).is_some_and(|r| *r || !removed_only)).count()
        };
        let majority = others.len() / 2 + 1;
        if let Some(since) = unknown_since {
            if status.applied > 0 {
                unknown_since = None;
            } else if since.elapsed() > Duration::from_secs(5) && refusing(false) >= majority {
                break format!(
                    "this member ({me:x}) is not in the cluster's configuration: its peers refuse it as unknown. Add it first with `etcdctl member add NAME --peer-urls=URL` (and start it with the same --initial-cluster-token as the cluster)"
                );
            }
        }
        if !(joining && status.applied == 0) {
            let by_leader = status.leader != 0 && refused.get(&NodeId(status.leader)) == Some(&true);
            if by_leader || (!others.is_empty() && refusing(true) >= majority) {
                let by: Vec<String> =
                    refused.iter().filter(|(_, r)| **r).map(|(id, _)| format!("{:x}", id.0)).collect();
                break format!(
                    "this member ({me:x}) was removed from the cluster (peers {} refuse it); it stops for good: to rejoin, wipe its data dir, `etcdctl member add` it again and start it with --initial-cluster-state existing",
                    by.join(", ")
                );
            }
        }
        // Its own removal applied, with nothing committed left to apply: a member replaying
        // an old removal of its id that a later addition undoes is not stopped halfway.
        let removed_here = api.node.shared.sm.read().registry.removed.contains(&me);
        if removed_here && status.applied >= status.commit {
            break format!(
                "this member ({me:x}) was removed from the cluster; it stops for good: to rejoin, wipe its data dir, `etcdctl member add` it again and start it with --initial-cluster-state existing"
            );
        }
        // The leader promotes the members added as voters once they have caught up.
        if status.is_leader && promoting.as_ref().is_none_or(|p| p.is_finished()) {
            let due = api.node.shared.sm.read().registry.to_promote();
            if let Some(&id) = due.first() {
                let api = api.clone();
                promoting = Some(tokio::spawn(async move { api.promote_caught_up(id).await }));
            }
        }
        let registry = {
            let sm = api.node.shared.sm.read();
            if sm.registry.version == seen {
                continue;
            }
            sm.registry.clone()
        };
        seen = registry.version;
        let known = transport.peers();
        for (id, m) in &registry.members {
            if *id == me {
                continue;
            }
            let Some(addr) = m.peer_urls.first().and_then(|u| config::parse_url(u).ok()) else {
                continue;
            };
            let addr = addr.to_string();
            if known.get(&NodeId(*id)) != Some(&addr) {
                tracing::info!(peer = format!("{id:x}"), %addr, "peer address learned");
                transport.add_peer(NodeId(*id), addr);
            }
        }
        for id in &registry.removed {
            if *id != me && known.contains_key(&NodeId(*id)) {
                tracing::info!(
                    peer = format!("{id:x}"),
                    "removed member: its connections are refused from now on"
                );
            }
            transport.mark_removed(NodeId(*id));
        }
    };
    tracing::error!("{reason}");
    let _ = stop.send(reason);
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use raftkv_raft::ClusterConfig;

    fn record(id: u64, url: &str) -> MemberRecord {
        MemberRecord { id, name: format!("m{id}"), peer_urls: vec![url.into()], is_learner: false }
    }

    #[test]
    fn registry_follows_adds_promotions_updates_and_removals() {
        let mut r = seed_registry(&[record(1, "http://a:1"), record(2, "http://b:2")]);
        let mut config = ClusterConfig::new([NodeId(1), NodeId(2)]);
        let ctx = |id, urls: &[&str]| {
            ChangeContext {
                request_id: id,
                peer_urls: urls.iter().map(|u| u.to_string()).collect(),
                ..Default::default()
            }
            .encode()
        };
        let add = ConfChange {
            steps: vec![ConfChangeStep::AddLearner(NodeId(3))],
            context: ctx(7, &["http://c:3"]),
        };
        config = add.apply(&config).unwrap_or_default();
        assert_eq!(r.apply(&add, &config), Some(7));
        assert!(r.members[&3].is_learner);
        assert_eq!(r.url_owner(&["http://c:3".into()], None), Some(3));
        assert_eq!(r.url_owner(&["http://c:3".into()], Some(3)), None);
        let promote = ConfChange { steps: vec![ConfChangeStep::AddVoter(NodeId(3))], context: ctx(8, &[]) };
        config = promote.apply(&config).unwrap_or_default();
        r.apply(&promote, &config);
        assert!(!r.members[&3].is_learner);
        assert_eq!(r.members[&3].peer_urls, vec!["http://c:3".to_string()], "kept when none given");
        let update =
            ConfChange { steps: vec![ConfChangeStep::Update(NodeId(3))], context: ctx(9, &["http://d:4"]) };
        r.apply(&update, &config);
        assert_eq!(r.members[&3].peer_urls, vec!["http://d:4".to_string()]);
        let remove = ConfChange { steps: vec![ConfChangeStep::Remove(NodeId(1))], context: Bytes::new() };
        config = remove.apply(&config).unwrap_or_default();
        assert_eq!(r.apply(&remove, &config), None, "no context, no request");
        assert!(!r.members.contains_key(&1));
        assert!(r.removed.contains(&1));
        // Re-added (a member whose disk was replaced, same URLs): no longer refused.
        let readd = ConfChange {
            steps: vec![ConfChangeStep::AddLearner(NodeId(1))],
            context: ctx(10, &["http://a:1"]),
        };
        config = readd.apply(&config).unwrap_or_default();
        r.apply(&readd, &config);
        assert!(!r.removed.contains(&1));
        let json = serde_json::to_vec(&r).unwrap_or_default();
        let back: Registry = serde_json::from_slice(&json).unwrap_or_default();
        assert_eq!((back.members, back.removed), (r.members.clone(), r.removed.clone()));
    }

    #[test]
    fn a_voter_added_as_a_learner_to_catch_up_shows_as_a_voter_until_promoted() {
        let mut r = seed_registry(&[record(1, "http://a:1")]);
        let mut config = ClusterConfig::new([NodeId(1)]);
        let context = ChangeContext { request_id: 5, peer_urls: vec!["http://b:2".into()], voter: true };
        let add =
            ConfChange { steps: vec![ConfChangeStep::AddLearner(NodeId(2))], context: context.encode() };
        config = add.apply(&config).unwrap_or_default();
        r.apply(&add, &config);
        assert!(r.members[&2].is_learner && r.members[&2].promote);
        assert!(r.is_voter(2) && r.is_voter(1));
        assert_eq!(r.to_promote(), vec![2]);
        // In snapshots, and read back by a member that keeps the flag.
        let json = serde_json::to_vec(&r).unwrap_or_default();
        let back: Registry = serde_json::from_slice(&json).unwrap_or_default();
        assert_eq!(back.to_promote(), vec![2]);
        let promote = ConfChange { steps: vec![ConfChangeStep::AddVoter(NodeId(2))], context: Bytes::new() };
        config = promote.apply(&config).unwrap_or_default();
        r.apply(&promote, &config);
        assert!(!r.members[&2].is_learner && !r.members[&2].promote);
        assert!(r.to_promote().is_empty());
        // A plain learner stays one; a context written before the flag existed reads as one.
        let old = br#"{"request_id":6,"peer_urls":["http://c:3"]}"#;
        let learner = ConfChange {
            steps: vec![ConfChangeStep::AddLearner(NodeId(3))],
            context: Bytes::from_static(old),
        };
        config = learner.apply(&config).unwrap_or_default();
        assert_eq!(r.apply(&learner, &config), Some(6));
        assert!(!r.is_voter(3) && r.to_promote().is_empty());
        assert!(!String::from_utf8_lossy(&learner.context).contains("voter"));
        assert!(!String::from_utf8_lossy(&ChangeContext::default().encode()).contains("voter"));
    }

    #[test]
    fn new_member_ids_differ_by_time_and_avoid_taken_ids() {
        let urls: Vec<String> = vec!["http://b:2".into(), "http://a:1".into()];
        let reordered: Vec<String> = vec!["http://a:1".into(), "http://b:2".into()];
        assert_eq!(new_member_id(&urls, "tok", 5), new_member_id(&reordered, "tok", 5));
        assert_ne!(new_member_id(&urls, "tok", 5), new_member_id(&urls, "tok", 6));
        assert_ne!(new_member_id(&urls, "tok", 5), new_member_id(&urls, "other", 5));
        // Never the bootstrap id of the same URLs (a replaced member's old id).
        let m = config::InitialMember { name: "x".into(), peer_urls: urls.clone() };
        let bootstrap = config::member_id(&m, "tok");
        assert_ne!(new_member_id(&urls, "tok", 5), bootstrap);
        // Taken ids are skipped.
        let first = unique_member_id(&urls, "tok", |_| false);
        let mut refused = Vec::new();
        let other = unique_member_id(&urls, "tok", |id| {
            let taken = refused.len() < 3;
            if taken {
                refused.push(id);
            }
            taken
        });
        assert_eq!(refused.len(), 3);
        assert!(!refused.contains(&other));
        assert_ne!(first, 0);
    }
}
