//! Authentication and authorisation on the client port (etcd's Auth service).
//!
//! * Who calls: every request on the client port runs inside a [`Call`] scope (a task-local)
//!   holding the `token` (or the gateway's `Authorization`) metadata and, with
//!   `--client-cert-auth`, the client certificate's common name. The scope is set in one
//!   place per path: [`scope_request`] for everything the router serves (tonic services,
//!   JSON gateway) and [`Call::from_headers`] + [`scoped`] on the direct HTTP/2 key-value
//!   path ([`crate::api::client_port`]). Work a member does on its own (lease expiry,
//!   auto-compaction, publishing) runs outside any scope and is not checked.
//! * Checks: [`Api::authorize`] resolves the caller (token, else certificate name) and runs a
//!   permission check against the member's applied auth state (`raftkv_kv::AuthStore`),
//!   recording the auth revision it checked against. [`Api::propose`] stamps that revision
//!   into the command; the state machine refuses a command checked against an older auth
//!   revision (etcd's "revision of auth store is old", which clients retry), so a permission
//!   revoked while a write was in flight is honoured.
//! * Tokens: etcd's "simple" tokens (the default), issued through the log so that every
//!   member knows them ([`Api::authenticate`]): the receiving member checks the password and
//!   proposes an `AuthAuthenticate` command (user, the auth revision checked at, the token's
//!   random part; no password); every member applying it records `<random>.<raft index>` in
//!   its [`Tokens`] through the state machine's hooks ([`crate::member::kvsm::ServerHooks`]), the
//!   one table the checks here read. A member that has not applied that index yet waits for
//!   it before checking a call ([`Api::await_token`]). Each member keeps a token for
//!   `--auth-token-ttl` seconds after its last use there, at most [`MAX_TOKENS_PER_USER`] per
//!   user and [`MAX_TOKENS`] in all; not persisted, not in snapshots (a restarted member
//!   forgets them, as etcd's). Applied user deletes and password changes drop the user's
//!   tokens on every member, disabling auth drops them all. Or, with `--auth-token jwt,...`, signed JWTs
//!   ([`crate::api::jwt`]) that any member holding the key verifies: good until their `exp`, and
//!   refused with "revision of auth store is old" once the auth state has changed since they
//!   were issued (any user, role or permission change, as etcd), so the client authenticates
//!   again. Passwords are hashed with bcrypt on the member that receives them, before they
//!   enter the log; neither passwords nor tokens are logged.

use std::cell::Cell;
use std::collections::HashMap;
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use std::borrow::Cow;

use http::{HeaderMap, HeaderName, HeaderValue};
use parking_lot::Mutex;
use raftkv_api::Command;
use raftkv_api::etcdserverpb::auth_server::{Auth, AuthServer};
use raftkv_api::etcdserverpb::request_op::Request as Op;
use raftkv_api::etcdserverpb::*;
use raftkv_api::raftkvpb::auth_command::Op as AuthOp;
use raftkv_api::raftkvpb::{AuthAuthenticate, AuthCommand, AuthUserAdd, AuthUserChangePassword};
use raftkv_kv::{AuthError, AuthStore};
use tonic::{Request, Response, Status};

use crate::api::jwt::Claims;
use crate::api::service::Api;
use crate::member::kvsm::{KvMachine, Output};

/// The metadata key etcd's clients send their token under.
static TOKEN: HeaderName = HeaderName::from_static("token");

/// etcd's default `--auth-token-ttl` (seconds).
pub const DEFAULT_TOKEN_TTL: u64 = 300;
/// etcd's default `--bcrypt-cost`.
pub const DEFAULT_BCRYPT_COST: u32 = 10;
/// Simple tokens a member keeps at most; past it, the 1% closest to expiry go.
const MAX_TOKENS: usize = 100_000;
/// Simple tokens a member keeps at most per user; past it, that user's token closest to
/// expiry goes (a client authenticating in a loop evicts its own tokens, not others').
const MAX_TOKENS_PER_USER: usize = 1_000;
/// A token (or name) longer than this is refused without a lookup.
const MAX_TOKEN_BYTES: usize = 256;
/// Bounds the bcrypt input as the algorithm does (it reads 72 bytes); longer passwords are
/// refused rather than silently cut.
const MAX_PASSWORD_BYTES: usize = 72;

/// The auth settings of a member.
#[derive(Clone, Debug)]
pub struct AuthOptions {
    pub token_ttl: Duration,
    pub bcrypt_cost: u32,
    /// `--client-cert-auth`: a verified client certificate's common name names the user when
    /// the request carries no token.
    pub client_cert_auth: bool,
    /// `--auth-token jwt,...`: the keys tokens are signed and verified with (None: simple
    /// tokens).
    pub jwt: Option<Arc<crate::api::jwt::JwtKeys>>,
}

impl Default for AuthOptions {
    fn default() -> Self {
        AuthOptions {
            token_ttl: Duration::from_secs(DEFAULT_TOKEN_TTL),
            bcrypt_cost: DEFAULT_BCRYPT_COST,
            client_cert_auth: false,
            jwt: None,
        }
    }
}

/// The common name of a connection's verified client certificate (a request extension).
#[derive(Clone, Debug)]
pub struct ClientCn(pub Arc<str>);

/// The caller of the request being served (see the module documentation).
pub struct Call {
    /// The token as sent (a shared view of the request's header block, not a copy).
    token: Option<HeaderValue>,
    cn: Option<Arc<str>>,
    /// The auth revision the last check ran against (0: none yet).
    checked_at: Cell<u64>,
}

impl Call {
    /// The caller as the request's metadata and connection name it.
    pub fn from_headers(headers: &HeaderMap, cn: Option<&ClientCn>) -> Call {
        let token = headers.get(&TOKEN).or_else(|| headers.get(http::header::AUTHORIZATION)).cloned();
        Call { token, cn: cn.map(|c| c.0.clone()), checked_at: Cell::new(0) }
    }

    /// The token as text (one that is not UTF-8 matches no token and verifies as no JWT).
    fn token(&self) -> Option<Cow<'_, str>> {
        self.token.as_ref().map(|v| String::from_utf8_lossy(v.as_bytes()))
    }

    /// A copy to carry into a task serving the same stream (a watch stream).
    fn fork(&self) -> Call {
        Call { token: self.token.clone(), cn: self.cn.clone(), checked_at: Cell::new(0) }
    }
}

tokio::task_local! {
    static CALL: Call;
}

/// Runs `f` as `call`, once this member has applied the entry that issued the call's simple
/// token (see [`Api::await_token`]).
pub async fn scoped<F: Future>(api: &Api, call: Call, f: F) -> F::Output {
    let index = call.token().as_deref().and_then(token_index);
    api.await_token(index).await;
    CALL.scope(call, f).await
}

/// Runs `f` as the current caller, if there is one (for tasks serving a client's stream).
pub fn inherit<F: Future>(f: F) -> impl Future<Output = F::Output> {
    let call = CALL.try_with(Call::fork).ok();
    async move {
        match call {
            Some(call) => CALL.scope(call, f).await,
            None => f.await,
        }
    }
}

/// Router middleware: every request the router serves runs in its caller's scope.
pub async fn scope_request(
    axum::extract::State(api): axum::extract::State<Api>,
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    let call = Call::from_headers(req.headers(), req.extensions().get::<ClientCn>());
    scoped(&api, call, next.run(req)).await
}

/// A check's first step ([`Api::gate`]).
enum Gate {
    /// Auth is off, at this auth revision.
    Open(u64),
    /// Auth is on: check the caller (with its verified JWT claims, if it sent one).
    Check(Option<Claims>),
}

/// The Raft index a simple token names: the index of the Authenticate entry that issued it
/// (`<random>.<index>`).
fn token_index(token: &str) -> Option<u64> {
    if token.len() > MAX_TOKEN_BYTES {
        return None;
    }
    let (_, index) = token.rsplit_once('.')?;
    index.parse().ok()
}

/// The auth revision the current call's permissions were checked against (0: none).
pub fn checked_at() -> u64 {
    CALL.try_with(|c| c.checked_at.get()).unwrap_or(0)
}

fn status(e: AuthError) -> Status {
    Status::new(e.grpc_code(), e.message())
}

/// etcd's auth layer's own texts for the errors a caller check gives, as the Maintenance
/// service answers them (no conversion to the `etcdserver:` errors).
const UNCONVERTED: [(AuthError, &str); 5] = [
    (AuthError::UserEmpty, "auth: user name is empty"),
    (AuthError::UserNotFound, "auth: user not found"),
    (AuthError::PermissionDenied, "auth: permission denied"),
    (AuthError::InvalidAuthToken, "auth: invalid auth token"),
    (AuthError::AuthOldRevision, "auth: revision in header is old"),
];

/// A caller check's refusal as etcd's Maintenance service answers it: code Unknown and the
/// auth layer's text. Any other status passes unchanged.
fn unconverted(s: Status) -> Status {
    match UNCONVERTED.iter().find(|(e, _)| e.grpc_code() == s.code() && e.message() == s.message()) {
        Some((_, text)) => Status::unknown(*text),
        None => s,
    }
}

struct Token {
    user: Arc<str>,
    /// The auth revision when it was issued.
    issued_at: u64,
    expires: Instant,
    /// Recording order, to break ties between equal expiry instants.
    seq: u64,
}

/// The simple tokens a member holds: recorded when an Authenticate command is applied (so
/// every member holds every token), bounded per user and in all.
#[derive(Default)]
struct TokenTable {
    tokens: HashMap<String, Token>,
    /// Each user's tokens.
    by_user: HashMap<String, Vec<String>>,
    recorded: u64,
}

impl TokenTable {
    fn remove(&mut self, token: &str) {
        let Some(t) = self.tokens.remove(token) else { return };
        if let Some(list) = self.by_user.get_mut(&*t.user) {
            list.retain(|k| k != token);
            if list.is_empty() {
                self.by_user.remove(&*t.user);
            }
        }
    }

    /// Removes the expired tokens (of `user`, or all), then the ones closest to expiry until
    /// at most `keep` are left.
    fn make_room(&mut self, user: Option<&str>, now: Instant, keep: usize) {
        let keys: Box<dyn Iterator<Item = &String>> = match user {
            Some(user) => Box::new(self.by_user.get(user).into_iter().flatten()),
            None => Box::new(self.tokens.keys()),
        };
        let mut live = Vec::new();
        let mut gone = Vec::new();
        for k in keys {
            let Some(t) = self.tokens.get(k) else { continue };
            if t.expires <= now {
                gone.push(k.clone());
            } else {
                live.push((t.expires, t.seq, k));
            }
        }
        if live.len() > keep {
            let excess = live.len() - keep;
            live.select_nth_unstable(excess - 1);
            gone.extend(live[..excess].iter().map(|(_, _, k)| (*k).clone()));
        }
        for k in &gone {
            self.remove(k);
        }
    }

    fn remove_user(&mut self, user: &str) {
        for token in self.by_user.remove(user).unwrap_or_default() {
            self.tokens.remove(&token);
        }
    }
}

/// A member's simple tokens (etcd's simple-token keeper): each lives `ttl` after its last
/// use on this member.
pub struct Tokens {
    table: Mutex<TokenTable>,
    ttl: Duration,
}

const LETTERS: &[u8] = b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ";

/// The random part of a new simple token (etcd's form: 16 random letters; the members
/// append a dot and the Raft index of the Authenticate entry).
fn token_prefix() -> Result<String, Status> {
    let mut random = [0u8; 16];
    getrandom::fill(&mut random).map_err(|e| Status::internal(format!("no randomness for a token: {e}")))?;
    Ok(random.iter().map(|b| LETTERS[*b as usize % LETTERS.len()] as char).collect())
}

impl Tokens {
    pub fn new(ttl: Duration) -> Tokens {
        Tokens { table: Mutex::new(TokenTable::default()), ttl }
    }

    /// Records `token` for `user`, issued at auth revision `issued_at`. At
    /// [`MAX_TOKENS_PER_USER`] for the user, its expired tokens go, then its one closest to
    /// expiry; at [`MAX_TOKENS`] in all, expired tokens go, then the 1% closest to expiry (one
    /// pass over the table per 1,000 new tokens at most).
    pub fn record(&self, user: &str, token: &str, issued_at: u64) {
        if token.len() > MAX_TOKEN_BYTES {
            return;
        }
        let now = Instant::now();
        let mut table = self.table.lock();
        table.remove(token);
        if table.by_user.get(user).is_some_and(|l| l.len() >= MAX_TOKENS_PER_USER) {
            table.make_room(Some(user), now, MAX_TOKENS_PER_USER - 1);
        }
        if table.tokens.len() >= MAX_TOKENS {
            table.make_room(None, now, MAX_TOKENS - MAX_TOKENS / 100);
        }
        table.recorded += 1;
        let seq = table.recorded;
        table.tokens.insert(
            token.to_string(),
            Token { user: Arc::from(user), issued_at, expires: now + self.ttl, seq },
        );
        table.by_user.entry(user.to_string()).or_default().push(token.to_string());
    }

    /// The user and issue revision of a live token, extending its life (etcd resets a simple
    /// token's TTL on use).
    fn lookup(&self, token: &str) -> Option<(Arc<str>, u64)> {
        if token.len() > MAX_TOKEN_BYTES {
            return None;
        }
        let now = Instant::now();
        let mut table = self.table.lock();
        let t = table.tokens.get_mut(token)?;
        if t.expires <= now {
            table.remove(token);
            return None;
        }
        t.expires = now + self.ttl;
        Some((t.user.clone(), t.issued_at))
    }

    /// Forgets `user`'s tokens (deleted, or a new password), or every token (auth disabled).
    pub fn void(&self, user: Option<&str>) {
        let mut table = self.table.lock();
        match user {
            Some(user) => table.remove_user(user),
            None => *table = TokenTable::default(),
        }
    }

    /// How many tokens are held.
    #[cfg(test)]
    fn len(&self) -> usize {
        self.table.lock().tokens.len()
    }
}

/// A member's auth runtime: its tokens (shared with the state machine's hooks, which record
/// and void them as auth commands are applied) and settings.
pub struct AuthRuntime {
    pub tokens: Arc<Tokens>,
    pub options: AuthOptions,
}

impl AuthRuntime {
    pub fn new(options: AuthOptions, tokens: Arc<Tokens>) -> AuthRuntime {
        AuthRuntime { tokens, options }
    }
}

impl Api {
    /// etcd's `isValidSimpleToken`: a member that has not yet applied the entry that issued
    /// the call's simple token (at `index`) waits for it (at most the request timeout), so a
    /// client may use a token on any member as soon as it has it. The checks then find the
    /// token, or not.
    async fn await_token(&self, index: Option<u64>) {
        let Some(index) = index.filter(|_| self.auth.options.jwt.is_none()) else { return };
        if self.node.applied_index() >= index {
            return;
        }
        let _ = tokio::time::timeout(self.request_timeout(), self.node.wait_applied(index)).await;
    }

    /// Checks the current call's key permissions with `check` (given the state and the
    /// caller's user name, if any) and records the auth revision it checked against. Outside a
    /// call scope (a member's own work) everything is allowed. A JWT issued before the last
    /// auth change is refused ("revision of auth store is old", as etcd's `isOpPermitted`).
    pub(crate) fn authorize(
        &self,
        check: impl FnOnce(&KvMachine, Option<&str>) -> Result<(), AuthError>,
    ) -> Result<(), Status> {
        match CALL.try_with(|call| self.authorize_call(call, check, true)) {
            Ok(result) => result,
            Err(_) => Ok(()),
        }
    }

    /// [`Api::authorize`] for checks that are not about keys (administrators, a user asking
    /// about itself, Compact): as etcd, a JWT issued before the last auth change still names
    /// its user here, unless that user's password changed (or it was re-added) since.
    pub(crate) fn authorize_any_revision(
        &self,
        check: impl FnOnce(&KvMachine, Option<&str>) -> Result<(), AuthError>,
    ) -> Result<(), Status> {
        match CALL.try_with(|call| self.authorize_call(call, check, false)) {
            Ok(result) => result,
            Err(_) => Ok(()),
        }
    }

    fn authorize_call(
        &self,
        call: &Call,
        check: impl FnOnce(&KvMachine, Option<&str>) -> Result<(), AuthError>,
        keys: bool,
    ) -> Result<(), Status> {
        match self.gate(call)? {
            Gate::Open(revision) => {
                call.checked_at.set(revision);
                Ok(())
            }
            gate => self.pass(&self.node.shared.sm.read(), call, gate, check, keys),
        }
    }

    /// [`Api::authorize`] with a key permission check, then `read` under the same hold of the
    /// state machine's read lock (a read checked and served against one state).
    pub(crate) fn read_authorized<R>(
        &self,
        check: impl FnOnce(&KvMachine, Option<&str>) -> Result<(), AuthError>,
        read: impl FnOnce(&KvMachine) -> R,
    ) -> Result<R, Status> {
        let gate = CALL.try_with(|call| self.gate(call)).ok().transpose()?;
        let sm = self.node.shared.sm.read();
        if let Some(gate) = gate {
            CALL.with(|call| self.pass(&sm, call, gate, check, true))?;
        }
        Ok(read(&sm))
    }

    /// What can be settled before the state machine is locked: a JWT is verified (a
    /// signature check is slow; as etcd, it must verify even while auth is disabled), and
    /// auth off (the common case) is answered without queueing for the lock behind the
    /// applier.
    fn gate(&self, call: &Call) -> Result<Gate, Status> {
        let jwt = match (call.token(), &self.auth.options.jwt) {
            (Some(token), Some(jwt)) => {
                Some(jwt.verify(&token).ok_or_else(|| status(AuthError::InvalidAuthToken))?)
            }
            _ => None,
        };
        match self.published.auth() {
            (false, revision) => Ok(Gate::Open(revision)),
            (true, _) => Ok(Gate::Check(jwt)),
        }
    }

    /// The rest of a check, against the locked state machine.
    fn pass(
        &self,
        sm: &KvMachine,
        call: &Call,
        gate: Gate,
        check: impl FnOnce(&KvMachine, Option<&str>) -> Result<(), AuthError>,
        keys: bool,
    ) -> Result<(), Status> {
        let jwt = match gate {
            Gate::Open(revision) => {
                call.checked_at.set(revision);
                return Ok(());
            }
            Gate::Check(jwt) => jwt,
        };
        let store = &sm.auth;
        if !store.enabled() {
            call.checked_at.set(store.revision());
            return Ok(());
        }
        // The auth revision the caller's rights are valid at: the applied one, or for a JWT
        // the one it was issued at (never older, or it is refused here).
        let mut valid_at = store.revision();
        let user: Option<Arc<str>> = match (call.token(), jwt) {
            (_, Some(claims)) => {
                if claims.revision < store.revision() {
                    if keys {
                        return Err(status(AuthError::AuthOldRevision));
                    }
                    if store.user(&claims.username).is_some_and(|u| u.since > claims.revision) {
                        return Err(status(AuthError::InvalidAuthToken));
                    }
                } else {
                    valid_at = claims.revision;
                }
                Some(Arc::from(claims.username))
            }
            (Some(token), None) => {
                let (user, issued_at) =
                    self.auth.tokens.lookup(&token).ok_or_else(|| status(AuthError::InvalidAuthToken))?;
                if !store.token_valid(&user, issued_at) {
                    return Err(status(AuthError::InvalidAuthToken));
                }
                Some(user)
            }
            (None, _) if self.auth.options.client_cert_auth => call.cn.clone(),
            (None, _) => None,
        };
        check(sm, user.as_deref()).map_err(status)?;
        call.checked_at.set(valid_at);
        Ok(())
    }

    /// etcd's `requireAuthInfo`: with auth on, the caller must be some user.
    pub(crate) fn require_user(&self) -> Result<(), Status> {
        self.authorize_any_revision(|sm, user| match user {
            None if sm.auth.enabled() => Err(AuthError::UserEmpty),
            _ => Ok(()),
        })
    }

    /// etcd's `IsAdminPermitted` for the current caller.
    pub(crate) fn require_admin(&self) -> Result<(), Status> {
        self.authorize_any_revision(|sm, user| sm.auth.check_admin(user))
    }

    /// etcd 3.4's check on the Maintenance calls Hash, HashKV, Defragment and Snapshot
    /// (`authMaintenanceServer.isAuthenticated`): an administrator, refused with the auth
    /// layer's own error, which etcd passes on unconverted (code Unknown, `auth: ...`).
    pub(crate) fn require_admin_maintenance(&self) -> Result<(), Status> {
        self.require_admin().map_err(unconverted)
    }

    /// etcd 3.4's Alarm list: any caller, even one without a user, but a token given must be
    /// valid (refused unconverted, as [`Api::require_admin_maintenance`]).
    pub(crate) fn require_valid_token_maintenance(&self) -> Result<(), Status> {
        self.authorize_any_revision(|_, _| Ok(())).map_err(unconverted)
    }

    /// Proposes an auth command and waits for its result.
    async fn propose_auth(&self, op: AuthOp) -> Result<(), Status> {
        let cmd = AuthCommand { op: Some(op) };
        match self.propose_command(|id| Command::auth(id, cmd)).await? {
            Output::Auth(result) => result.map_err(status),
            _ => Err(Status::internal("unexpected result for an auth request")),
        }
    }

    /// A linearizable view of the auth state for the Auth service's reads.
    async fn auth_read<T>(&self, read: impl FnOnce(&AuthStore) -> Result<T, AuthError>) -> Result<T, Status> {
        self.node.read_barrier(self.request_timeout()).await.map_err(crate::api::service::node_status)?;
        let sm = self.node.shared.sm.read();
        read(&sm.auth).map_err(status)
    }

    fn auth_header(&self) -> Option<ResponseHeader> {
        let revision = self.node.shared.sm.read().kv.revision();
        Some(self.header(revision))
    }

    async fn hash_password(&self, password: String) -> Result<String, Status> {
        if password.len() > MAX_PASSWORD_BYTES {
            return Err(Status::invalid_argument(format!(
                "raftkv: a password may have at most {MAX_PASSWORD_BYTES} bytes"
            )));
        }
        let cost = self.auth.options.bcrypt_cost;
        tokio::task::spawn_blocking(move || bcrypt::hash(password, cost))
            .await
            .map_err(|e| Status::internal(format!("password hashing failed: {e}")))?
            .map_err(|e| Status::internal(format!("password hashing failed: {e}")))
    }

    /// Authenticate: checks the password against the applied state and issues a token. A JWT
    /// is signed here; a simple token is issued through the log (etcd's
    /// InternalAuthenticateRequest), so every member records it: the entry names the user, the
    /// auth revision the password was checked at and the token's random part, never the
    /// password. Applying it refuses the token if the user was deleted or its password changed
    /// meanwhile.
    pub async fn authenticate(&self, req: AuthenticateRequest) -> Result<AuthenticateResponse, Status> {
        let (hash, revision) = self
            .auth_read(|a| {
                if !a.enabled() {
                    return Err(AuthError::AuthNotEnabled);
                }
                match a.user(&req.name) {
                    Some(u) if !u.no_password => Ok((u.password.clone(), a.revision())),
                    _ => Err(AuthError::AuthFailed),
                }
            })
            .await?;
        let password = req.password;
        let good = tokio::task::spawn_blocking(move || bcrypt::verify(password, &hash).unwrap_or(false))
            .await
            .map_err(|e| Status::internal(format!("password check failed: {e}")))?;
        if !good {
            return Err(status(AuthError::AuthFailed));
        }
        let token = match &self.auth.options.jwt {
            Some(jwt) => jwt.issue(&req.name, revision).map_err(|e| Status::unknown(e.to_string()))?,
            None => {
                let op = AuthOp::Authenticate(AuthAuthenticate {
                    name: req.name.clone(),
                    checked_revision: revision,
                    simple_token_prefix: token_prefix()?,
                });
                let cmd = AuthCommand { op: Some(op) };
                match self.propose_command(|id| Command::auth(id, cmd)).await? {
                    Output::Authenticated(result) => result.map_err(status)?,
                    _ => return Err(Status::internal("unexpected result for an authenticate request")),
                }
            }
        };
        tracing::info!(user = %req.name, "authenticated a user");
        Ok(AuthenticateResponse { header: self.auth_header(), token })
    }

    pub async fn auth_enable(&self) -> Result<AuthEnableResponse, Status> {
        self.require_admin()?;
        self.propose_auth(AuthOp::Enable(AuthEnableRequest {})).await?;
        tracing::info!("enabled authentication");
        Ok(AuthEnableResponse { header: self.auth_header() })
    }

    pub async fn auth_disable(&self) -> Result<AuthDisableResponse, Status> {
        self.require_admin()?;
        self.propose_auth(AuthOp::Disable(AuthDisableRequest {})).await?;
        tracing::info!("disabled authentication");
        Ok(AuthDisableResponse { header: self.auth_header() })
    }

    pub async fn auth_status(&self) -> Result<AuthStatusResponse, Status> {
        self.require_admin()?;
        let (enabled, auth_revision) = self.auth_read(|a| Ok((a.enabled(), a.revision()))).await?;
        Ok(AuthStatusResponse { header: self.auth_header(), enabled, auth_revision })
    }

    pub async fn user_add(&self, req: AuthUserAddRequest) -> Result<AuthUserAddResponse, Status> {
        self.require_admin()?;
        let no_password = req.options.is_some_and(|o| o.no_password);
        if req.name.is_empty() {
            return Err(status(AuthError::UserEmpty));
        }
        let hashed_password =
            if no_password { String::new() } else { self.hash_password(req.password).await? };
        self.propose_auth(AuthOp::UserAdd(AuthUserAdd {
            name: req.name.clone(),
            hashed_password,
            no_password,
        }))
        .await?;
        tracing::info!(user = %req.name, "added a user");
        Ok(AuthUserAddResponse { header: self.auth_header() })
    }

    pub async fn user_delete(&self, req: AuthUserDeleteRequest) -> Result<AuthUserDeleteResponse, Status> {
        self.require_admin()?;
        self.propose_auth(AuthOp::UserDelete(req)).await?;
        Ok(AuthUserDeleteResponse { header: self.auth_header() })
    }

    pub async fn user_change_password(
        &self,
        req: AuthUserChangePasswordRequest,
    ) -> Result<AuthUserChangePasswordResponse, Status> {
        self.require_admin()?;
        let hashed_password = self.hash_password(req.password).await?;
        self.propose_auth(AuthOp::UserChangePassword(AuthUserChangePassword {
            name: req.name,
            hashed_password,
        }))
        .await?;
        Ok(AuthUserChangePasswordResponse { header: self.auth_header() })
    }

    pub async fn user_grant_role(
        &self,
        req: AuthUserGrantRoleRequest,
    ) -> Result<AuthUserGrantRoleResponse, Status> {
        self.require_admin()?;
        self.propose_auth(AuthOp::UserGrantRole(req)).await?;
        Ok(AuthUserGrantRoleResponse { header: self.auth_header() })
    }

    pub async fn user_revoke_role(
        &self,
        req: AuthUserRevokeRoleRequest,
    ) -> Result<AuthUserRevokeRoleResponse, Status> {
        self.require_admin()?;
        self.propose_auth(AuthOp::UserRevokeRole(req)).await?;
        Ok(AuthUserRevokeRoleResponse { header: self.auth_header() })
    }

    /// UserGet: the admin, or a user asking about itself (etcd's rule).
    pub async fn user_get(&self, req: AuthUserGetRequest) -> Result<AuthUserGetResponse, Status> {
        self.authorize_any_revision(|sm, user| match sm.auth.check_admin(user) {
            Err(e) if user != Some(req.name.as_str()) => Err(e),
            _ => Ok(()),
        })?;
        let roles = self
            .auth_read(|a| a.user(&req.name).map(|u| u.roles.clone()).ok_or(AuthError::UserNotFound))
            .await?;
        Ok(AuthUserGetResponse { header: self.auth_header(), roles })
    }

    pub async fn user_list(&self) -> Result<AuthUserListResponse, Status> {
        self.require_admin()?;
        let users = self.auth_read(|a| Ok(a.user_names())).await?;
        Ok(AuthUserListResponse { header: self.auth_header(), users })
    }

    pub async fn role_add(&self, req: AuthRoleAddRequest) -> Result<AuthRoleAddResponse, Status> {
        self.require_admin()?;
        self.propose_auth(AuthOp::RoleAdd(req)).await?;
        Ok(AuthRoleAddResponse { header: self.auth_header() })
    }

    pub async fn role_delete(&self, req: AuthRoleDeleteRequest) -> Result<AuthRoleDeleteResponse, Status> {
        self.require_admin()?;
        self.propose_auth(AuthOp::RoleDelete(req)).await?;
        Ok(AuthRoleDeleteResponse { header: self.auth_header() })
    }

    /// RoleGet: the admin, or a user holding the role (etcd's rule).
    pub async fn role_get(&self, req: AuthRoleGetRequest) -> Result<AuthRoleGetResponse, Status> {
        self.authorize_any_revision(|sm, user| match sm.auth.check_admin(user) {
            Err(e) if !user.is_some_and(|u| sm.auth.has_role(u, &req.role)) => Err(e),
            _ => Ok(()),
        })?;
        let perm = self
            .auth_read(|a| {
                let role = a.role(&req.role).ok_or(AuthError::RoleNotFound)?;
                Ok(role
                    .perms
                    .iter()
                    .map(|p| raftkv_api::authpb::Permission {
                        perm_type: p.perm_type,
                        key: p.key.clone().into(),
                        range_end: p.range_end.clone().into(),
                    })
                    .collect())
            })
            .await?;
        Ok(AuthRoleGetResponse { header: self.auth_header(), perm })
    }

    pub async fn role_list(&self) -> Result<AuthRoleListResponse, Status> {
        self.require_admin()?;
        let roles = self.auth_read(|a| Ok(a.role_names())).await?;
        Ok(AuthRoleListResponse { header: self.auth_header(), roles })
    }

    pub async fn role_grant_permission(
        &self,
        req: AuthRoleGrantPermissionRequest,
    ) -> Result<AuthRoleGrantPermissionResponse, Status> {
        self.require_admin()?;
        self.propose_auth(AuthOp::RoleGrantPermission(req)).await?;
        Ok(AuthRoleGrantPermissionResponse { header: self.auth_header() })
    }

    pub async fn role_revoke_permission(
        &self,
        req: AuthRoleRevokePermissionRequest,
    ) -> Result<AuthRoleRevokePermissionResponse, Status> {
        self.require_admin()?;
        self.propose_auth(AuthOp::RoleRevokePermission(req)).await?;
        Ok(AuthRoleRevokePermissionResponse { header: self.auth_header() })
    }
}

// ------------------------------------------------------------------ permission rules

/// Read permission on a range request's keys.
pub fn check_range(sm: &KvMachine, user: Option<&str>, req: &RangeRequest) -> Result<(), AuthError> {
    sm.auth.check_range(user, &req.key, &req.range_end, false)
}

/// etcd's `checkPutAuth`: write on the key, write on every key of the lease it attaches to
/// (unless admin), read on the key when the previous value is asked for.
pub fn check_put(sm: &KvMachine, user: Option<&str>, req: &PutRequest) -> Result<(), AuthError> {
    sm.auth.check_range(user, &req.key, &[], true)?;
    check_lease_keys(sm, user, req.lease, true)?;
    if req.prev_kv {
        sm.auth.check_range(user, &req.key, &[], false)?;
    }
    Ok(())
}

/// Write on the deleted range, and read when the previous values are asked for.
pub fn check_delete_range(
    sm: &KvMachine,
    user: Option<&str>,
    req: &DeleteRangeRequest,
) -> Result<(), AuthError> {
    sm.auth.check_range(user, &req.key, &req.range_end, true)?;
    if req.prev_kv {
        sm.auth.check_range(user, &req.key, &req.range_end, false)?;
    }
    Ok(())
}

/// etcd's `checkTxnAuth`: read on every compared key, and every operation of both branches,
/// nested transactions included.
pub fn check_txn(sm: &KvMachine, user: Option<&str>, req: &TxnRequest) -> Result<(), AuthError> {
    for c in &req.compare {
        sm.auth.check_range(user, &c.key, &c.range_end, false)?;
    }
    for op in req.success.iter().chain(&req.failure) {
        match &op.request {
            Some(Op::RequestRange(r)) => check_range(sm, user, r)?,
            Some(Op::RequestPut(r)) => check_put(sm, user, r)?,
            Some(Op::RequestDeleteRange(r)) => check_delete_range(sm, user, r)?,
            Some(Op::RequestTxn(r)) => check_txn(sm, user, r)?,
            None => {}
        }
    }
    Ok(())
}

/// Permission on every key attached to lease `id` (none needed for the admin or an unknown
/// lease): write for a put or revoke (etcd's `checkLeasePuts`), read to list its keys.
pub fn check_lease_keys(sm: &KvMachine, user: Option<&str>, id: i64, write: bool) -> Result<(), AuthError> {
    if id == 0 || !sm.auth.enabled() || sm.auth.check_admin(user).is_ok() {
        return Ok(());
    }
    match sm.kv.leases().get(id) {
        Some(lease) => lease.keys.iter().try_for_each(|k| sm.auth.check_range(user, k, &[], write)),
        None => Ok(()),
    }
}

/// LeaseLeases: read on every key of every lease, unless admin (etcd's `checkLeaseLeases`).
pub fn check_all_leases(sm: &KvMachine, user: Option<&str>) -> Result<(), AuthError> {
    if !sm.auth.enabled() {
        return Ok(());
    }
    if user.is_none() {
        return Err(AuthError::UserEmpty);
    }
    if sm.auth.check_admin(user).is_ok() {
        return Ok(());
    }
    for lease in sm.kv.leases().iter() {
        check_lease_keys(sm, user, lease.id, false)?;
    }
    Ok(())
}

// ------------------------------------------------------------------ gRPC

pub struct AuthService(pub Api);

#[tonic::async_trait]
impl Auth for AuthService {
    async fn auth_enable(
        &self,
        _r: Request<AuthEnableRequest>,
    ) -> Result<Response<AuthEnableResponse>, Status> {
        self.0.auth_enable().await.map(Response::new)
    }
    async fn auth_disable(
        &self,
        _r: Request<AuthDisableRequest>,
    ) -> Result<Response<AuthDisableResponse>, Status> {
        self.0.auth_disable().await.map(Response::new)
    }
    async fn auth_status(
        &self,
        _r: Request<AuthStatusRequest>,
    ) -> Result<Response<AuthStatusResponse>, Status> {
        self.0.auth_status().await.map(Response::new)
    }
    async fn authenticate(
        &self,
        r: Request<AuthenticateRequest>,
    ) -> Result<Response<AuthenticateResponse>, Status> {
        self.0.authenticate(r.into_inner()).await.map(Response::new)
    }
    async fn user_add(
        &self,
        r: Request<AuthUserAddRequest>,
    ) -> Result<Response<AuthUserAddResponse>, Status> {
        self.0.user_add(r.into_inner()).await.map(Response::new)
    }
    async fn user_get(
        &self,
        r: Request<AuthUserGetRequest>,
    ) -> Result<Response<AuthUserGetResponse>, Status> {
        self.0.user_get(r.into_inner()).await.map(Response::new)
    }
    async fn user_list(
        &self,
        _r: Request<AuthUserListRequest>,
    ) -> Result<Response<AuthUserListResponse>, Status> {
        self.0.user_list().await.map(Response::new)
    }
    async fn user_delete(
        &self,
        r: Request<AuthUserDeleteRequest>,
    ) -> Result<Response<AuthUserDeleteResponse>, Status> {
        self.0.user_delete(r.into_inner()).await.map(Response::new)
    }
    async fn user_change_password(
        &self,
        r: Request<AuthUserChangePasswordRequest>,
    ) -> Result<Response<AuthUserChangePasswordResponse>, Status> {
        self.0.user_change_password(r.into_inner()).await.map(Response::new)
    }
    async fn user_grant_role(
        &self,
        r: Request<AuthUserGrantRoleRequest>,
    ) -> Result<Response<AuthUserGrantRoleResponse>, Status> {
        self.0.user_grant_role(r.into_inner()).await.map(Response::new)
    }
    async fn user_revoke_role(
        &self,
        r: Request<AuthUserRevokeRoleRequest>,
    ) -> Result<Response<AuthUserRevokeRoleResponse>, Status> {
        self.0.user_revoke_role(r.into_inner()).await.map(Response::new)
    }
    async fn role_add(
        &self,
        r: Request<AuthRoleAddRequest>,
    ) -> Result<Response<AuthRoleAddResponse>, Status> {
        self.0.role_add(r.into_inner()).await.map(Response::new)
    }
    async fn role_get(
        &self,
        r: Request<AuthRoleGetRequest>,
    ) -> Result<Response<AuthRoleGetResponse>, Status> {
        self.0.role_get(r.into_inner()).await.map(Response::new)
    }
    async fn role_list(
        &self,
        _r: Request<AuthRoleListRequest>,
    ) -> Result<Response<AuthRoleListResponse>, Status> {
        self.0.role_list().await.map(Response::new)
    }
    async fn role_delete(
        &self,
        r: Request<AuthRoleDeleteRequest>,
    ) -> Result<Response<AuthRoleDeleteResponse>, Status> {
        self.0.role_delete(r.into_inner()).await.map(Response::new)
    }
    async fn role_grant_permission(
        &self,
        r: Request<AuthRoleGrantPermissionRequest>,
    ) -> Result<Response<AuthRoleGrantPermissionResponse>, Status> {
        self.0.role_grant_permission(r.into_inner()).await.map(Response::new)
    }
    async fn role_revoke_permission(
        &self,
        r: Request<AuthRoleRevokePermissionRequest>,
    ) -> Result<Response<AuthRoleRevokePermissionResponse>, Status> {
        self.0.role_revoke_permission(r.into_inner()).await.map(Response::new)
    }
}

/// The Auth gRPC service.
pub fn service(api: Api, decode_limit: usize) -> AuthServer<AuthService> {
    AuthServer::new(AuthService(api)).max_decoding_message_size(decode_limit)
}

/// The JSON gateway's `/v3/auth/...` routes (etcd 3.4's paths).
pub fn gateway_router(api: Api) -> axum::Router {
    use crate::api::gateway::unary_for;
    let mut router = axum::Router::new();
    for prefix in ["/v3", "/v3beta"] {
        let p = |s: &str| format!("{prefix}/auth/{s}");
        router = router
            .route(
                &p("enable"),
                unary_for(&api, |a: Api, _: AuthEnableRequest| async move { a.auth_enable().await }),
            )
            .route(
                &p("disable"),
                unary_for(&api, |a: Api, _: AuthDisableRequest| async move { a.auth_disable().await }),
            )
            .route(
                &p("status"),
                unary_for(&api, |a: Api, _: AuthStatusRequest| async move { a.auth_status().await }),
            )
            .route(&p("authenticate"), unary_for(&api, |a: Api, r| async move { a.authenticate(r).await }))
            .route(&p("user/add"), unary_for(&api, |a: Api, r| async move { a.user_add(r).await }))
            .route(&p("user/get"), unary_for(&api, |a: Api, r| async move { a.user_get(r).await }))
            .route(
                &p("user/list"),
                unary_for(&api, |a: Api, _: AuthUserListRequest| async move { a.user_list().await }),
            )
            .route(&p("user/delete"), unary_for(&api, |a: Api, r| async move { a.user_delete(r).await }))
            .route(
                &p("user/changepw"),
                unary_for(&api, |a: Api, r| async move { a.user_change_password(r).await }),
            )
            .route(&p("user/grant"), unary_for(&api, |a: Api, r| async move { a.user_grant_role(r).await }))
            .route(&p("user/revoke"), unary_for(&api, |a: Api, r| async move { a.user_revoke_role(r).await }))
            .route(&p("role/add"), unary_for(&api, |a: Api, r| async move { a.role_add(r).await }))
            .route(&p("role/get"), unary_for(&api, |a: Api, r| async move { a.role_get(r).await }))
            .route(
                &p("role/list"),
                unary_for(&api, |a: Api, _: AuthRoleListRequest| async move { a.role_list().await }),
            )
            .route(&p("role/delete"), unary_for(&api, |a: Api, r| async move { a.role_delete(r).await }))
            .route(
                &p("role/grant"),
                unary_for(&api, |a: Api, r| async move { a.role_grant_permission(r).await }),
            )
            .route(
                &p("role/revoke"),
                unary_for(&api, |a: Api, r| async move { a.role_revoke_permission(r).await }),
            );
    }
    router
}

/// The common name of a DER certificate's subject, if it has one.
pub fn common_name(der: &[u8]) -> Option<String> {
    let (_, cert) = x509_parser::parse_x509_certificate(der).ok()?;
    let cn = cert.subject().iter_common_name().next()?.as_str().ok()?.to_string();
    Some(cn)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_expire_are_bounded_and_refuse_oversized_lookups() {
        let tokens = Tokens::new(Duration::from_millis(200));
        let prefix = token_prefix().expect("prefix");
        assert_eq!(prefix.len(), 16);
        assert_ne!(token_prefix().expect("prefix"), prefix, "prefixes differ");
        tokens.record("u", "t.1", 3);
        assert_eq!(tokens.lookup("t.1"), Some((Arc::from("u"), 3)));
        assert_eq!(tokens.lookup("t.2"), None);
        assert_eq!(tokens.lookup(&"x".repeat(100_000)), None);
        tokens.record("u", &"x".repeat(MAX_TOKEN_BYTES + 1), 3);
        assert_eq!(tokens.len(), 1, "oversized tokens are not recorded");
        std::thread::sleep(Duration::from_millis(250));
        assert_eq!(tokens.lookup("t.1"), None, "expired");
        assert_eq!(tokens.len(), 0, "an expired token found is dropped");
        // Per user: past the bound, the user's own token closest to expiry goes.
        for i in 0..MAX_TOKENS_PER_USER + 5 {
            tokens.record("loop", &format!("l.{i}"), 1);
        }
        tokens.record("other", "o.1", 1);
        assert_eq!(tokens.len(), MAX_TOKENS_PER_USER + 1);
        assert_eq!(tokens.lookup("l.0"), None, "the oldest went");
        assert!(tokens.lookup(&format!("l.{}", MAX_TOKENS_PER_USER + 4)).is_some());
        assert!(tokens.lookup("o.1").is_some());
        // Voiding a user's tokens, then every token.
        tokens.void(Some("loop"));
        assert_eq!(tokens.len(), 1);
        assert!(tokens.lookup("o.1").is_some());
        tokens.void(None);
        assert_eq!(tokens.len(), 0);
        assert!(tokens.table.lock().by_user.is_empty());
    }

    #[test]
    fn tokens_are_bounded_in_all() {
        let tokens = Tokens::new(Duration::from_secs(60));
        let users = MAX_TOKENS / MAX_TOKENS_PER_USER + 1;
        for u in 0..users {
            for i in 0..MAX_TOKENS_PER_USER {
                tokens.record(&format!("u{u}"), &format!("t{u}.{i}"), 1);
            }
        }
        assert!(tokens.len() <= MAX_TOKENS, "{}", tokens.len());
        assert!(tokens.len() > MAX_TOKENS - MAX_TOKENS / 50, "{}", tokens.len());
        assert_eq!(tokens.lookup("t0.0"), None, "the ones closest to expiry went");
        assert!(tokens.lookup(&format!("t{}.{}", users - 1, MAX_TOKENS_PER_USER - 1)).is_some());
        let table = tokens.table.lock();
        assert_eq!(table.by_user.values().map(Vec::len).sum::<usize>(), MAX_TOKENS, "the index follows");
    }

    #[test]
    fn call_reads_token_then_authorization() {
        let mut h = HeaderMap::new();
        h.insert(http::header::AUTHORIZATION, http::HeaderValue::from_static("gw"));
        assert_eq!(Call::from_headers(&h, None).token().as_deref(), Some("gw"));
        h.insert("token", http::HeaderValue::from_static("grpc"));
        assert_eq!(Call::from_headers(&h, None).token().as_deref(), Some("grpc"));
        assert!(Call::from_headers(&HeaderMap::new(), None).token.is_none());
    }
}
