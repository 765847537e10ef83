//! The replicated auth state: users, roles, key permissions and whether auth is enabled,
//! with etcd 3.4's rules (`auth/store.go`, `auth/range_perm_cache.go`).
//!
//! Deterministic like the rest of this crate: commands arrive through the log
//! ([`AuthCommand`]) with passwords already hashed by the proposing member, so every
//! member applies the same bytes. Every change increments the auth revision. Permission
//! checks read a per-user cache of merged key intervals, rebuilt after every change.
//! Passwords are kept only as bcrypt hashes; this module never sees a clear password.

use std::collections::BTreeMap;

use raftkv_api::authpb::permission::Type as PermType;
use raftkv_api::raftkvpb::auth_command::Op;
use raftkv_api::raftkvpb::{AuthAuthenticate, AuthCommand};
use raftkv_api::tonic::Code;
use raftkv_api::{Command, Request};
use serde::{Deserialize, Serialize};

/// The user (and role) with every permission.
pub const ROOT: &str = "root";

/// An auth error, with etcd's message and gRPC code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthError {
    RootUserNotExist,
    RootRoleNotExist,
    UserAlreadyExist,
    UserEmpty,
    UserNotFound,
    RoleAlreadyExist,
    RoleNotFound,
    RoleEmpty,
    AuthFailed,
    PermissionNotGiven,
    PermissionDenied,
    RoleNotGranted,
    PermissionNotGranted,
    AuthNotEnabled,
    InvalidAuthToken,
    InvalidAuthMgmt,
    AuthOldRevision,
}

impl AuthError {
    /// etcd's error text (`rpctypes`).
    pub fn message(&self) -> &'static str {
        match self {
            AuthError::RootUserNotExist => "etcdserver: root user does not exist",
            AuthError::RootRoleNotExist => "etcdserver: root user does not have root role",
            AuthError::UserAlreadyExist => "etcdserver: user name already exists",
            AuthError::UserEmpty => "etcdserver: user name is empty",
            AuthError::UserNotFound => "etcdserver: user name not found",
            AuthError::RoleAlreadyExist => "etcdserver: role name already exists",
            AuthError::RoleNotFound => "etcdserver: role name not found",
            AuthError::RoleEmpty => "etcdserver: role name is empty",
            AuthError::AuthFailed => "etcdserver: authentication failed, invalid user ID or password",
            AuthError::PermissionNotGiven => "etcdserver: permission not given",
            AuthError::PermissionDenied => "etcdserver: permission denied",
            AuthError::RoleNotGranted => "etcdserver: role is not granted to the user",
            AuthError::PermissionNotGranted => "etcdserver: permission is not granted to the role",
            AuthError::AuthNotEnabled => "etcdserver: authentication is not enabled",
            AuthError::InvalidAuthToken => "etcdserver: invalid auth token",
            AuthError::InvalidAuthMgmt => "etcdserver: invalid auth management",
            AuthError::AuthOldRevision => "etcdserver: revision of auth store is old",
        }
    }

    /// etcd's gRPC code for the error.
    pub fn grpc_code(&self) -> Code {
        match self {
            AuthError::RootUserNotExist
            | AuthError::RootRoleNotExist
            | AuthError::UserAlreadyExist
            | AuthError::UserNotFound
            | AuthError::RoleAlreadyExist
            | AuthError::RoleNotFound
            | AuthError::RoleNotGranted
            | AuthError::PermissionNotGranted
            | AuthError::AuthNotEnabled => Code::FailedPrecondition,
            AuthError::UserEmpty
            | AuthError::RoleEmpty
            | AuthError::AuthFailed
            | AuthError::PermissionNotGiven
            | AuthError::InvalidAuthMgmt
            | AuthError::AuthOldRevision => Code::InvalidArgument,
            AuthError::PermissionDenied => Code::PermissionDenied,
            AuthError::InvalidAuthToken => Code::Unauthenticated,
        }
    }
}

impl std::fmt::Display for AuthError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.message())
    }
}

impl std::error::Error for AuthError {}

/// A user as replicated.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct User {
    pub name: String,
    /// bcrypt hash of the password; empty for a user added without one.
    pub password: String,
    /// Granted role names, sorted.
    pub roles: Vec<String>,
    pub no_password: bool,
    /// The auth revision at which the user was added or its password last changed: tokens
    /// issued before it are void (etcd invalidates them on delete and password change).
    pub since: u64,
}

/// A key permission: `key` alone, or the range `[key, range_end)`; `range_end` `"\0"`
/// means every key from `key` on.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Permission {
    /// `authpb.Permission.Type`: 0 READ, 1 WRITE, 2 READWRITE.
    pub perm_type: i32,
    pub key: Vec<u8>,
    pub range_end: Vec<u8>,
}

/// A role as replicated: its permissions sorted by key.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Role {
    pub name: String,
    pub perms: Vec<Permission>,
}

/// The whole auth state, as a snapshot holds it.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuthState {
    pub enabled: bool,
    pub revision: u64,
    pub users: Vec<User>,
    pub roles: Vec<Role>,
}

/// The end of an interval: a key (exclusive) or past every key.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum End {
    Key(Vec<u8>),
    Infinite,
}

/// Disjoint, sorted, merged `[begin, end)` intervals.
#[derive(Clone, Debug, Default)]
struct Intervals(Vec<(Vec<u8>, End)>);

impl Intervals {
    fn from_unsorted(mut ivls: Vec<(Vec<u8>, End)>) -> Intervals {
        ivls.sort();
        let mut merged: Vec<(Vec<u8>, End)> = Vec::with_capacity(ivls.len());
        for (b, e) in ivls {
            if let Some(last) = merged.last_mut() {
                let touches = match &last.1 {
                    End::Infinite => true,
                    End::Key(le) => b.as_slice() <= le.as_slice(),
                };
                if touches {
                    if e > last.1 {
                        last.1 = e;
                    }
                    continue;
                }
            }
            merged.push((b, e));
        }
        Intervals(merged)
    }

    /// The interval holding `key`, if any.
    fn containing(&self, key: &[u8]) -> Option<&(Vec<u8>, End)> {
        let idx = self.0.partition_point(|(b, _)| b.as_slice() <= key);
        let ivl = self.0.get(idx.checked_sub(1)?)?;
        match &ivl.1 {
            End::Infinite => Some(ivl),
            End::Key(e) if key < e.as_slice() => Some(ivl),
            End::Key(_) => None,
        }
    }

    /// Whether `[key, end)` lies inside one interval (they are merged, so inside the union).
    fn covers(&self, key: &[u8], end: &End) -> bool {
        match self.containing(key) {
            Some((_, e)) => e >= end,
            None => false,
        }
    }
}

/// A point key `k` as the interval `[k, k + "\0")`.
fn point_end(key: &[u8]) -> End {
    let mut e = key.to_vec();
    e.push(0);
    End::Key(e)
}

fn is_open_ended(range_end: &[u8]) -> bool {
    range_end == [0]
}

/// etcd's `isValidPermissionRange`.
fn is_valid_permission_range(key: &[u8], range_end: &[u8]) -> bool {
    !key.is_empty() && (range_end.is_empty() || key < range_end || is_open_ended(range_end))
}

#[derive(Clone, Debug, Default)]
struct UserPerms {
    read: Intervals,
    write: Intervals,
}

/// The auth state of a member (see the module documentation).
#[derive(Clone, Debug)]
pub struct AuthStore {
    enabled: bool,
    revision: u64,
    users: BTreeMap<String, User>,
    roles: BTreeMap<String, Role>,
    /// Merged permissions per user (root users need none).
    cache: BTreeMap<String, UserPerms>,
}

impl Default for AuthStore {
    fn default() -> Self {
        AuthStore::new()
    }
}

impl AuthStore {
    /// Auth disabled, no users or roles, revision 1 (etcd's initial auth revision).
    pub fn new() -> AuthStore {
        AuthStore {
            enabled: false,
            revision: 1,
            users: BTreeMap::new(),
            roles: BTreeMap::new(),
            cache: BTreeMap::new(),
        }
    }

    pub fn enabled(&self) -> bool {
        self.enabled
    }

    pub fn revision(&self) -> u64 {
        self.revision
    }

    pub fn user(&self, name: &str) -> Option<&User> {
        self.users.get(name)
    }

    pub fn role(&self, name: &str) -> Option<&Role> {
        self.roles.get(name)
    }

    /// User names, sorted.
    pub fn user_names(&self) -> Vec<String> {
        self.users.keys().cloned().collect()
    }

    /// Role names, sorted.
    pub fn role_names(&self) -> Vec<String> {
        self.roles.keys().cloned().collect()
    }

    /// Whether `user` has been granted `role`.
    pub fn has_role(&self, user: &str, role: &str) -> bool {
        self.users.get(user).is_some_and(|u| u.roles.iter().any(|r| r == role))
    }

    /// A copy of the state for a snapshot.
    pub fn export(&self) -> AuthState {
        AuthState {
            enabled: self.enabled,
            revision: self.revision,
            users: self.users.values().cloned().collect(),
            roles: self.roles.values().cloned().collect(),
        }
    }

    /// The store a snapshot's state describes.
    pub fn import(state: AuthState) -> AuthStore {
        let mut store = AuthStore {
            enabled: state.enabled,
            revision: state.revision.max(1),
            users: state.users.into_iter().map(|u| (u.name.clone(), u)).collect(),
            roles: state.roles.into_iter().map(|r| (r.name.clone(), r)).collect(),
            cache: BTreeMap::new(),
        };
        store.refresh_cache();
        store
    }

    /// Whether this store holds anything a snapshot must keep (a fresh store does not).
    pub fn is_pristine(&self) -> bool {
        !self.enabled && self.revision == 1 && self.users.is_empty() && self.roles.is_empty()
    }

    /// Refuses a command whose permissions were checked against an auth revision older than
    /// this state's (etcd's `ErrAuthOldRevision`). `checked_at` 0 means the command was not
    /// checked on behalf of a client (the members' own proposals) and passes.
    pub fn check_stamp(&self, checked_at: u64) -> Result<(), AuthError> {
        if self.enabled && checked_at != 0 && checked_at < self.revision {
            return Err(AuthError::AuthOldRevision);
        }
        Ok(())
    }

    /// The auth part of applying a replicated command: an auth command is applied here
    /// (`Some` with its result); a command checked against a stale auth revision is refused
    /// (`Some(Err)`); anything else is for the key-value store (`None`).
    pub fn apply_command(&mut self, cmd: &Command) -> Option<Result<(), AuthError>> {
        if let Some(Request::Auth(auth)) = &cmd.request {
            return Some(self.apply(auth));
        }
        self.check_stamp(cmd.auth_revision).err().map(Err)
    }

    /// Applies one auth command.
    pub fn apply(&mut self, cmd: &AuthCommand) -> Result<(), AuthError> {
        let Some(op) = &cmd.op else { return Err(AuthError::InvalidAuthMgmt) };
        let changed = match op {
            Op::Enable(_) => self.enable()?,
            Op::Disable(_) => {
                let was = self.enabled;
                self.enabled = false;
                was
            }
            Op::UserAdd(r) => {
                if r.name.is_empty() {
                    return Err(AuthError::UserEmpty);
                }
                if self.users.contains_key(&r.name) {
                    return Err(AuthError::UserAlreadyExist);
                }
                let user = User {
                    name: r.name.clone(),
                    password: if r.no_password { String::new() } else { r.hashed_password.clone() },
                    roles: Vec::new(),
                    no_password: r.no_password,
                    since: self.revision + 1,
                };
                self.users.insert(r.name.clone(), user);
                true
            }
            Op::UserDelete(r) => {
                if self.enabled && r.name == ROOT {
                    return Err(AuthError::InvalidAuthMgmt);
                }
                self.users.remove(&r.name).ok_or(AuthError::UserNotFound)?;
                true
            }
            Op::UserChangePassword(r) => {
                let since = self.revision + 1;
                let user = self.users.get_mut(&r.name).ok_or(AuthError::UserNotFound)?;
                user.password = r.hashed_password.clone();
                user.since = since;
                true
            }
            Op::UserGrantRole(r) => {
                if !self.users.contains_key(&r.user) {
                    return Err(AuthError::UserNotFound);
                }
                if r.role != ROOT && !self.roles.contains_key(&r.role) {
                    return Err(AuthError::RoleNotFound);
                }
                let user = self.users.get_mut(&r.user).ok_or(AuthError::UserNotFound)?;
                match user.roles.binary_search(&r.role) {
                    Ok(_) => false,
                    Err(at) => {
                        user.roles.insert(at, r.role.clone());
                        true
                    }
                }
            }
            Op::UserRevokeRole(r) => {
                if self.enabled && r.name == ROOT && r.role == ROOT {
                    return Err(AuthError::InvalidAuthMgmt);
                }
                let user = self.users.get_mut(&r.name).ok_or(AuthError::UserNotFound)?;
                let before = user.roles.len();
                user.roles.retain(|role| *role != r.role);
                if user.roles.len() == before {
                    return Err(AuthError::RoleNotGranted);
                }
                true
            }
            Op::RoleAdd(r) => {
                if r.name.is_empty() {
                    return Err(AuthError::RoleEmpty);
                }
                if self.roles.contains_key(&r.name) {
                    return Err(AuthError::RoleAlreadyExist);
                }
                self.roles.insert(r.name.clone(), Role { name: r.name.clone(), perms: Vec::new() });
                true
            }
            Op::RoleDelete(r) => {
                if self.enabled && r.role == ROOT {
                    return Err(AuthError::InvalidAuthMgmt);
                }
                self.roles.remove(&r.role).ok_or(AuthError::RoleNotFound)?;
                for user in self.users.values_mut() {
                    user.roles.retain(|role| *role != r.role);
                }
                true
            }
            Op::RoleGrantPermission(r) => {
                let perm = r.perm.as_ref().ok_or(AuthError::PermissionNotGiven)?;
                if !is_valid_permission_range(&perm.key, &perm.range_end) {
                    return Err(AuthError::InvalidAuthMgmt);
                }
                let role = self.roles.get_mut(&r.name).ok_or(AuthError::RoleNotFound)?;
                let idx = role.perms.partition_point(|p| p.key.as_slice() < &perm.key[..]);
                match role.perms.get_mut(idx) {
                    Some(p) if p.key == perm.key[..] && p.range_end == perm.range_end[..] => {
                        p.perm_type = perm.perm_type;
                    }
                    _ => {
                        role.perms.push(Permission {
                            perm_type: perm.perm_type,
                            key: perm.key.to_vec(),
                            range_end: perm.range_end.to_vec(),
                        });
                        // Stable, as etcd's sort.Sort on keys is for distinct keys.
                        role.perms.sort_by(|a, b| a.key.cmp(&b.key));
                    }
                }
                true
            }
            Op::Authenticate(r) => {
                self.authenticate(r)?;
                false
            }
            Op::RoleRevokePermission(r) => {
                let role = self.roles.get_mut(&r.role).ok_or(AuthError::RoleNotFound)?;
                let before = role.perms.len();
                role.perms.retain(|p| p.key != r.key[..] || p.range_end != r.range_end[..]);
                if role.perms.len() == before {
                    return Err(AuthError::PermissionNotGranted);
                }
                true
            }
        };
        if changed {
            self.revision += 1;
            self.refresh_cache();
        }
        Ok(())
    }

    /// Whether a simple token may be issued as `req` asks (auth enabled, the user still there
    /// with the password the proposing member checked): the auth revision to record the token
    /// at (see [`AuthStore::token_valid`]). Changes nothing.
    pub fn authenticate(&self, req: &AuthAuthenticate) -> Result<u64, AuthError> {
        if !self.enabled {
            return Err(AuthError::AuthNotEnabled);
        }
        match self.users.get(&req.name) {
            Some(u) if !u.no_password && u.since <= req.checked_revision => Ok(self.revision),
            _ => Err(AuthError::AuthFailed),
        }
    }

    fn enable(&mut self) -> Result<bool, AuthError> {
        if self.enabled {
            return Ok(false);
        }
        let root = self.users.get(ROOT).ok_or(AuthError::RootUserNotExist)?;
        if !root.roles.iter().any(|r| r == ROOT) {
            return Err(AuthError::RootRoleNotExist);
        }
        self.enabled = true;
        Ok(true)
    }

    fn refresh_cache(&mut self) {
        let mut cache = BTreeMap::new();
        for user in self.users.values() {
            let (mut read, mut write) = (Vec::new(), Vec::new());
            for perm in user.roles.iter().filter_map(|r| self.roles.get(r)).flat_map(|r| &r.perms) {
                let end = if perm.range_end.is_empty() {
                    point_end(&perm.key)
                } else if is_open_ended(&perm.range_end) {
                    End::Infinite
                } else {
                    End::Key(perm.range_end.clone())
                };
                let ivl = (perm.key.clone(), end);
                match PermType::try_from(perm.perm_type) {
                    Ok(PermType::Read) => read.push(ivl),
                    Ok(PermType::Write) => write.push(ivl),
                    Ok(PermType::Readwrite) => {
                        read.push(ivl.clone());
                        write.push(ivl);
                    }
                    Err(_) => {}
                }
            }
            cache.insert(
                user.name.clone(),
                UserPerms { read: Intervals::from_unsorted(read), write: Intervals::from_unsorted(write) },
            );
        }
        self.cache = cache;
    }

    fn is_root(&self, user: &str) -> bool {
        self.has_role(user, ROOT)
    }

    /// etcd's `IsAdminPermitted`: the user must hold the root role (any user when auth is
    /// disabled).
    pub fn check_admin(&self, user: Option<&str>) -> Result<(), AuthError> {
        if !self.enabled {
            return Ok(());
        }
        let user = user.filter(|u| !u.is_empty()).ok_or(AuthError::UserEmpty)?;
        if !self.users.contains_key(user) {
            return Err(AuthError::UserNotFound);
        }
        if !self.is_root(user) {
            return Err(AuthError::PermissionDenied);
        }
        Ok(())
    }

    /// etcd's `isOpPermitted`: may `user` read (or write) the key `key` (`range_end` empty) or
    /// the range `[key, range_end)`?
    pub fn check_range(
        &self,
        user: Option<&str>,
        key: &[u8],
        range_end: &[u8],
        write: bool,
    ) -> Result<(), AuthError> {
        if !self.enabled {
            return Ok(());
        }
        let user = user.filter(|u| !u.is_empty()).ok_or(AuthError::UserEmpty)?;
        if !self.users.contains_key(user) {
            return Err(AuthError::PermissionDenied);
        }
        if self.is_root(user) {
            return Ok(());
        }
        let Some(perms) = self.cache.get(user) else { return Err(AuthError::PermissionDenied) };
        let ivls = if write { &perms.write } else { &perms.read };
        let permitted = if range_end.is_empty() {
            ivls.containing(key).is_some()
        } else if is_open_ended(range_end) {
            ivls.covers(key, &End::Infinite)
        } else if key < range_end {
            ivls.covers(key, &End::Key(range_end.to_vec()))
        } else {
            // An empty range names no key; etcd's interval check sees the start key alone.
            ivls.containing(key).is_some()
        };
        if permitted { Ok(()) } else { Err(AuthError::PermissionDenied) }
    }

    /// Whether a token issued to `user` at auth revision `issued_at` is still good: the user
    /// exists and was not re-added nor had its password changed since.
    pub fn token_valid(&self, user: &str, issued_at: u64) -> bool {
        self.users.get(user).is_some_and(|u| u.since <= issued_at)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use raftkv_api::authpb::Permission as PbPermission;
    use raftkv_api::etcdserverpb::*;
    use raftkv_api::raftkvpb::{AuthUserAdd, AuthUserChangePassword};

    fn cmd(op: Op) -> AuthCommand {
        AuthCommand { op: Some(op) }
    }

    fn add_user(s: &mut AuthStore, name: &str) -> Result<(), AuthError> {
        s.apply(&cmd(Op::UserAdd(AuthUserAdd {
            name: name.into(),
            hashed_password: format!("hash-of-{name}"),
            no_password: false,
        })))
    }

    fn grant_role(s: &mut AuthStore, user: &str, role: &str) -> Result<(), AuthError> {
        s.apply(&cmd(Op::UserGrantRole(AuthUserGrantRoleRequest { user: user.into(), role: role.into() })))
    }

    fn grant_perm(s: &mut AuthStore, role: &str, t: PermType, key: &str, end: &str) -> Result<(), AuthError> {
        s.apply(&cmd(Op::RoleGrantPermission(AuthRoleGrantPermissionRequest {
            name: role.into(),
            perm: Some(PbPermission {
                perm_type: t as i32,
                key: key.to_string().into(),
                range_end: end.to_string().into(),
            }),
        })))
    }

    fn enabled_store() -> AuthStore {
        let mut s = AuthStore::new();
        add_user(&mut s, ROOT).expect("add root");
        grant_role(&mut s, ROOT, ROOT).expect("grant root");
        s.apply(&cmd(Op::Enable(AuthEnableRequest {}))).expect("enable");
        s
    }

    #[test]
    fn enable_needs_root_user_with_root_role() {
        let mut s = AuthStore::new();
        let enable = cmd(Op::Enable(AuthEnableRequest {}));
        assert_eq!(s.apply(&enable), Err(AuthError::RootUserNotExist));
        add_user(&mut s, ROOT).expect("add");
        assert_eq!(s.apply(&enable), Err(AuthError::RootRoleNotExist));
        grant_role(&mut s, ROOT, ROOT).expect("root role needs no role record");
        let rev = s.revision();
        s.apply(&enable).expect("enable");
        assert!(s.enabled());
        assert_eq!(s.revision(), rev + 1);
        // Enabling again changes nothing.
        s.apply(&enable).expect("enable again");
        assert_eq!(s.revision(), rev + 1);
        // With auth on, root cannot be deleted nor lose the root role.
        let del = cmd(Op::UserDelete(AuthUserDeleteRequest { name: ROOT.into() }));
        assert_eq!(s.apply(&del), Err(AuthError::InvalidAuthMgmt));
        let revoke =
            cmd(Op::UserRevokeRole(AuthUserRevokeRoleRequest { name: ROOT.into(), role: ROOT.into() }));
        assert_eq!(s.apply(&revoke), Err(AuthError::InvalidAuthMgmt));
        s.apply(&cmd(Op::RoleAdd(AuthRoleAddRequest { name: ROOT.into() }))).expect("root role record");
        let del_role = cmd(Op::RoleDelete(AuthRoleDeleteRequest { role: ROOT.into() }));
        assert_eq!(s.apply(&del_role), Err(AuthError::InvalidAuthMgmt));
        s.apply(&cmd(Op::Disable(AuthDisableRequest {}))).expect("disable");
        assert!(!s.enabled());
        s.apply(&revoke).expect("allowed with auth off");
        s.apply(&del).expect("allowed with auth off");
    }

    #[test]
    fn user_and_role_errors_as_etcd() {
        let mut s = AuthStore::new();
        assert_eq!(add_user(&mut s, ""), Err(AuthError::UserEmpty));
        add_user(&mut s, "u").expect("add");
        assert_eq!(add_user(&mut s, "u"), Err(AuthError::UserAlreadyExist));
        assert_eq!(grant_role(&mut s, "nobody", "r"), Err(AuthError::UserNotFound));
        assert_eq!(grant_role(&mut s, "u", "r"), Err(AuthError::RoleNotFound));
        let add_role = |n: &str| cmd(Op::RoleAdd(AuthRoleAddRequest { name: n.into() }));
        assert_eq!(s.apply(&add_role("")), Err(AuthError::RoleEmpty));
        s.apply(&add_role("r")).expect("role");
        assert_eq!(s.apply(&add_role("r")), Err(AuthError::RoleAlreadyExist));
        grant_role(&mut s, "u", "r").expect("grant");
        let rev = s.revision();
        grant_role(&mut s, "u", "r").expect("granting twice is accepted");
        assert_eq!(s.revision(), rev, "and changes nothing");
        let revoke =
            cmd(Op::UserRevokeRole(AuthUserRevokeRoleRequest { name: "u".into(), role: "x".into() }));
        assert_eq!(s.apply(&revoke), Err(AuthError::RoleNotGranted));
        assert_eq!(grant_perm(&mut s, "r", PermType::Read, "", ""), Err(AuthError::InvalidAuthMgmt));
        assert_eq!(grant_perm(&mut s, "r", PermType::Read, "b", "a"), Err(AuthError::InvalidAuthMgmt));
        assert_eq!(grant_perm(&mut s, "nope", PermType::Read, "a", ""), Err(AuthError::RoleNotFound));
        let no_perm =
            cmd(Op::RoleGrantPermission(AuthRoleGrantPermissionRequest { name: "r".into(), perm: None }));
        assert_eq!(s.apply(&no_perm), Err(AuthError::PermissionNotGiven));
        grant_perm(&mut s, "r", PermType::Read, "k", "").expect("grant");
        grant_perm(&mut s, "r", PermType::Write, "a", "").expect("grant");
        grant_perm(&mut s, "r", PermType::Readwrite, "k", "").expect("updates the type");
        let perms = &s.role("r").expect("role").perms;
        assert_eq!(
            perms.iter().map(|p| (p.key.clone(), p.perm_type)).collect::<Vec<_>>(),
            vec![(b"a".to_vec(), 1), (b"k".to_vec(), 2)]
        );
        let revoke_perm = |k: &str| {
            cmd(Op::RoleRevokePermission(AuthRoleRevokePermissionRequest {
                role: "r".into(),
                key: k.to_string().into(),
                range_end: Default::default(),
            }))
        };
        assert_eq!(s.apply(&revoke_perm("zz")), Err(AuthError::PermissionNotGranted));
        s.apply(&revoke_perm("a")).expect("revoke");
        // Deleting a role removes it from its users.
        s.apply(&cmd(Op::RoleDelete(AuthRoleDeleteRequest { role: "r".into() }))).expect("delete");
        assert!(s.user("u").expect("user").roles.is_empty());
        let del = cmd(Op::UserDelete(AuthUserDeleteRequest { name: "zz".into() }));
        assert_eq!(s.apply(&del), Err(AuthError::UserNotFound));
        let pw = cmd(Op::UserChangePassword(AuthUserChangePassword {
            name: "zz".into(),
            hashed_password: "h".into(),
        }));
        assert_eq!(s.apply(&pw), Err(AuthError::UserNotFound));
        assert_eq!(s.apply(&AuthCommand { op: None }), Err(AuthError::InvalidAuthMgmt));
    }

    #[test]
    fn permissions_points_ranges_prefixes_and_root() {
        let mut s = enabled_store();
        add_user(&mut s, "u").expect("add");
        s.apply(&cmd(Op::RoleAdd(AuthRoleAddRequest { name: "r".into() }))).expect("role");
        grant_role(&mut s, "u", "r").expect("grant");
        grant_perm(&mut s, "r", PermType::Read, "key", "").expect("point");
        grant_perm(&mut s, "r", PermType::Readwrite, "a/", "a0").expect("prefix a/");
        grant_perm(&mut s, "r", PermType::Write, "m", "p").expect("range");
        grant_perm(&mut s, "r", PermType::Read, "p", "r").expect("adjacent range");
        grant_perm(&mut s, "r", PermType::Read, "x", "\0").expect("from x on");
        let u = Some("u");
        assert_eq!(s.check_range(u, b"key", b"", false), Ok(()));
        assert_eq!(s.check_range(u, b"key", b"", true), Err(AuthError::PermissionDenied));
        assert_eq!(s.check_range(u, b"key2", b"", false), Err(AuthError::PermissionDenied));
        assert_eq!(s.check_range(u, b"a/b", b"", true), Ok(()));
        assert_eq!(s.check_range(u, b"a/", b"a0", false), Ok(()));
        assert_eq!(s.check_range(u, b"a/", b"a1", false), Err(AuthError::PermissionDenied));
        assert_eq!(s.check_range(u, b"a", b"a0", false), Err(AuthError::PermissionDenied));
        assert_eq!(s.check_range(u, b"n", b"", true), Ok(()));
        assert_eq!(s.check_range(u, b"p", b"", true), Err(AuthError::PermissionDenied));
        // [m,p) write + [p,r) read: reading [o, q) needs both read ranges, only one is read.
        assert_eq!(s.check_range(u, b"o", b"q", false), Err(AuthError::PermissionDenied));
        assert_eq!(s.check_range(u, b"p", b"q", false), Ok(()));
        assert_eq!(s.check_range(u, b"x", b"\0", false), Ok(()));
        assert_eq!(s.check_range(u, b"y", b"zzzz", false), Ok(()));
        assert_eq!(s.check_range(u, b"w", b"\0", false), Err(AuthError::PermissionDenied));
        // Adjacent read ranges merge: [p,r) and a new [r,t) cover [q,s).
        grant_perm(&mut s, "r", PermType::Read, "r", "t").expect("range");
        assert_eq!(s.check_range(u, b"q", b"s", false), Ok(()));
        // Root may do anything; a missing user nothing; no user is "user name is empty".
        assert_eq!(s.check_range(Some(ROOT), b"anything", b"\0", true), Ok(()));
        assert_eq!(s.check_range(Some("ghost"), b"key", b"", false), Err(AuthError::PermissionDenied));
        assert_eq!(s.check_range(None, b"key", b"", false), Err(AuthError::UserEmpty));
        assert_eq!(s.check_range(Some(""), b"key", b"", false), Err(AuthError::UserEmpty));
        assert_eq!(s.check_admin(u), Err(AuthError::PermissionDenied));
        assert_eq!(s.check_admin(Some("ghost")), Err(AuthError::UserNotFound));
        assert_eq!(s.check_admin(Some(ROOT)), Ok(()));
        // Disabled: everything is allowed.
        s.apply(&cmd(Op::Disable(AuthDisableRequest {}))).expect("disable");
        assert_eq!(s.check_range(None, b"key", b"", true), Ok(()));
        assert_eq!(s.check_admin(None), Ok(()));
    }

    #[test]
    fn stamps_tokens_and_snapshots() {
        let mut s = enabled_store();
        add_user(&mut s, "u").expect("add");
        let issued = s.revision();
        assert!(s.token_valid("u", issued));
        assert_eq!(s.check_stamp(issued), Ok(()));
        assert_eq!(s.check_stamp(0), Ok(()), "members' own commands pass");
        s.apply(&cmd(Op::RoleAdd(AuthRoleAddRequest { name: "r".into() }))).expect("role");
        assert_eq!(s.check_stamp(issued), Err(AuthError::AuthOldRevision));
        assert!(s.token_valid("u", issued), "other changes keep tokens");
        let pw = cmd(Op::UserChangePassword(AuthUserChangePassword {
            name: "u".into(),
            hashed_password: "h2".into(),
        }));
        s.apply(&pw).expect("change");
        assert!(!s.token_valid("u", issued), "a new password voids older tokens");
        assert!(s.token_valid("u", s.revision()));
        let exported = s.export();
        let back = AuthStore::import(exported.clone());
        assert_eq!(back.export(), exported);
        assert!(back.enabled());
        assert_eq!(back.check_range(Some("u"), b"k", b"", false), Err(AuthError::PermissionDenied));
        assert!(AuthStore::new().is_pristine());
        assert!(!back.is_pristine());
        s.apply(&cmd(Op::UserDelete(AuthUserDeleteRequest { name: "u".into() }))).expect("delete");
        assert!(!s.token_valid("u", s.revision()));
    }

    /// Authenticate through the log: issued only with auth on, for a user that still has the
    /// password checked at `checked_revision`; it changes neither the state nor the revision.
    #[test]
    fn authenticate_is_checked_at_apply_and_changes_nothing() {
        let auth = |name: &str, checked_revision: u64| {
            cmd(Op::Authenticate(AuthAuthenticate {
                name: name.into(),
                checked_revision,
                simple_token_prefix: "p".into(),
            }))
        };
        let mut off = AuthStore::new();
        add_user(&mut off, "u").expect("add");
        assert_eq!(
            off.authenticate(&AuthAuthenticate { name: "u".into(), ..Default::default() }),
            Err(AuthError::AuthNotEnabled)
        );
        let mut s = enabled_store();
        add_user(&mut s, "u").expect("add");
        let checked = s.revision();
        let before = s.export();
        assert_eq!(s.apply(&auth("u", checked)), Ok(()));
        assert_eq!(s.export(), before, "no change, same revision");
        assert_eq!(
            s.authenticate(&AuthAuthenticate {
                name: "u".into(),
                checked_revision: checked,
                ..Default::default()
            }),
            Ok(checked)
        );
        assert_eq!(s.apply(&auth("ghost", checked)), Err(AuthError::AuthFailed));
        // Another change keeps a check valid; a new password voids it.
        s.apply(&cmd(Op::RoleAdd(AuthRoleAddRequest { name: "r".into() }))).expect("role");
        assert_eq!(s.apply(&auth("u", checked)), Ok(()));
        let pw = cmd(Op::UserChangePassword(AuthUserChangePassword {
            name: "u".into(),
            hashed_password: "h2".into(),
        }));
        s.apply(&pw).expect("change");
        assert_eq!(s.apply(&auth("u", checked)), Err(AuthError::AuthFailed));
        assert_eq!(s.apply(&auth("u", s.revision())), Ok(()));
        // Deleted (or re-added) meanwhile: no token.
        let checked = s.revision();
        s.apply(&cmd(Op::UserDelete(AuthUserDeleteRequest { name: "u".into() }))).expect("delete");
        assert_eq!(s.apply(&auth("u", checked)), Err(AuthError::AuthFailed));
        add_user(&mut s, "u").expect("re-add");
        assert_eq!(s.apply(&auth("u", checked)), Err(AuthError::AuthFailed));
    }
}
