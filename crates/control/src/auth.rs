//! Who is calling, and what they may do.
//!
//! Every call has one [`Identity`]: a name, a [`Role`], for admins an
//! optional scope of pools, and how it was authenticated. It comes from the
//! client's certificate when the connection carried one
//! ([`tandem_tls::peer::PeerCertificate`], put there by the TLS layer),
//! else from the bearer token:
//!
//! - the admin token (`TANDEM_ADMIN_TOKEN`): `admin`, role admin;
//! - the shared node token (`TANDEM_NODE_TOKEN`): `node`, the legacy role
//!   of every proxy and agent (reads, Watch, reports, with the reporter's
//!   id not checked: a warning says so once);
//! - the peer token (`TANDEM_PEER_TOKEN`, by default derived from the
//!   admin token): `replica`, what replicas present to each other;
//! - per-name tokens of the access file (`TANDEM_ACCESS_FILE`, see
//!   [`AccessFile`]), re-read when it changes, with its deny list.
//!
//! What each role may call is [`TABLE`], one entry per RPC of
//! `proto/tandem/v1/control.proto`, enforced by [`authorize`] for every
//! call (the service's `call` wrapper and the raft transport). Tokens are
//! compared in constant time and never logged.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use tandem_core::Snapshot;
use tandem_proto::v1;
use tandem_tls::peer::{PeerCertificate, identity_of};
use tonic::{Request, Status};

use crate::error::Error;

// === identities ===

/// What a caller is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Role {
    /// Changes configuration (all of it, or the pools of its scope).
    Admin,
    /// Reads everything, changes nothing.
    Operator,
    /// A control replica: the raft transport and calls forwarded between
    /// replicas.
    Replica,
    /// A proxy: Watch, reads, ReportApplied for itself.
    Proxy,
    /// A health agent: Watch, reads, ReportHealth for itself.
    Agent,
    /// The shared node token of older setups: what proxies and agents
    /// together may do, without their ids checked.
    Node,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Admin => "admin",
            Role::Operator => "operator",
            Role::Replica => "replica",
            Role::Proxy => "proxy",
            Role::Agent => "agent",
            Role::Node => "node",
        }
    }

    /// A role a certificate or the access file may name (`node` is the
    /// shared token's alone).
    fn parse(s: &str) -> Option<Role> {
        Some(match s {
            "admin" => Role::Admin,
            "operator" => Role::Operator,
            "replica" => Role::Replica,
            "proxy" => Role::Proxy,
            "agent" => Role::Agent,
            _ => return None,
        })
    }
}

impl std::fmt::Display for Role {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// How a caller proved who it is (recorded with its name as the actor of
/// a change).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Via {
    Certificate,
    AccessFile,
    AdminToken,
    NodeToken,
    PeerToken,
}

impl Via {
    pub fn as_str(self) -> &'static str {
        match self {
            Via::Certificate => "certificate",
            Via::AccessFile => "access-file token",
            Via::AdminToken => "admin token",
            Via::NodeToken => "node token",
            Via::PeerToken => "peer token",
        }
    }
}

/// The caller of one request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    pub name: String,
    pub role: Role,
    /// For an admin: the pools it may change (None: all, and the cluster).
    pub pools: Option<BTreeSet<String>>,
    pub via: Via,
}

impl Identity {
    fn new(name: &str, role: Role, via: Via) -> Identity {
        Identity {
            name: name.to_string(),
            role,
            pools: None,
            via,
        }
    }

    /// The actor `change_log` records: `alice (access-file token)`.
    pub fn actor(&self) -> String {
        format!("{} ({})", self.name, self.via.as_str())
    }

    /// As the table sees it.
    fn who(&self) -> Who {
        match (self.role, &self.pools) {
            (Role::Admin, None) => Who::Admin,
            (Role::Admin, Some(_)) => Who::PoolAdmin,
            (Role::Operator, _) => Who::Operator,
            (Role::Replica, _) => Who::Replica,
            (Role::Proxy, _) => Who::Proxy,
            (Role::Agent, _) => Who::Agent,
            (Role::Node, _) => Who::Node,
        }
    }

    /// Whether Watch may send this caller certificates' private keys: the
    /// proxies that serve them (and the legacy node token they use), the
    /// replicas, an unscoped admin.
    pub fn may_see_keys(&self) -> bool {
        matches!(
            self.who(),
            Who::Admin | Who::Replica | Who::Proxy | Who::Node
        )
    }
}

// === the authorization table ===

/// A caller as the table distinguishes them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Who {
    Admin,
    /// An admin scoped to named pools.
    PoolAdmin,
    Operator,
    Replica,
    Proxy,
    Agent,
    Node,
}

/// What kind of call a method is, for the checks beyond the role.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Changes nothing.
    Read,
    /// Changes the pools the request names: a pool-scoped admin only
    /// within its scope.
    PoolWrite,
    /// Changes what is not a pool's (membership, certificates, a restore).
    ClusterWrite,
    /// Reports for the caller's own name ([`Subject::reporter`]).
    Report,
    /// The raft transport.
    Raft,
}

/// Who may call a method, and what kind of call it is.
#[derive(Debug, Clone, Copy)]
pub struct Allow {
    pub who: &'static [Who],
    pub kind: Kind,
}

const EVERYONE: &[Who] = &[
    Who::Admin,
    Who::PoolAdmin,
    Who::Operator,
    Who::Replica,
    Who::Proxy,
    Who::Agent,
    Who::Node,
];
const READ: Allow = Allow {
    who: EVERYONE,
    kind: Kind::Read,
};
const POOL_WRITE: Allow = Allow {
    who: &[Who::Admin, Who::PoolAdmin],
    kind: Kind::PoolWrite,
};
const CLUSTER_WRITE: Allow = Allow {
    who: &[Who::Admin],
    kind: Kind::ClusterWrite,
};

/// Every RPC (`service`, `method`) and who may call it. The test
/// `every_rpc_of_the_proto_has_one_entry` fails when an RPC of
/// `proto/tandem/v1/control.proto` has none (an RPC without an entry is
/// refused to everyone).
pub const TABLE: &[(&str, &str, Allow)] = &[
    ("ControlPlane", "CreatePool", POOL_WRITE),
    ("ControlPlane", "GetPool", READ),
    ("ControlPlane", "ListPools", READ),
    ("ControlPlane", "UpdatePool", POOL_WRITE),
    ("ControlPlane", "DeletePool", POOL_WRITE),
    ("ControlPlane", "AddBackend", POOL_WRITE),
    ("ControlPlane", "UpdateBackend", POOL_WRITE),
    ("ControlPlane", "RemoveBackend", POOL_WRITE),
    ("ControlPlane", "AddRoute", POOL_WRITE),
    ("ControlPlane", "ListRoutes", READ),
    ("ControlPlane", "DeleteRoute", POOL_WRITE),
    ("ControlPlane", "AddTcpRoute", POOL_WRITE),
    ("ControlPlane", "DeleteTcpRoute", POOL_WRITE),
    ("ControlPlane", "GetSnapshot", READ),
    ("ControlPlane", "Watch", READ),
    (
        "ControlPlane",
        "ReportApplied",
        Allow {
            who: &[Who::Proxy, Who::Agent, Who::Node],
            kind: Kind::Report,
        },
    ),
    ("ControlPlane", "GetStatus", READ),
    (
        "ControlPlane",
        "ReportHealth",
        // Replicas: a follower forwards its agents' reports to the leader
        // (having checked them).
        Allow {
            who: &[Who::Agent, Who::Node, Who::Replica],
            kind: Kind::Report,
        },
    ),
    ("ControlPlane", "GetHealth", READ),
    ("ControlPlane", "GetClusterStatus", READ),
    ("ControlPlane", "AddMember", CLUSTER_WRITE),
    ("ControlPlane", "RemoveMember", CLUSTER_WRITE),
    (
        "ControlPlane",
        "Explain",
        // A read, but it makes the control plane call a proxy: people only.
        Allow {
            who: &[Who::Admin, Who::PoolAdmin, Who::Operator],
            kind: Kind::Read,
        },
    ),
    ("ControlPlane", "AddCertificate", CLUSTER_WRITE),
    ("ControlPlane", "ListCertificates", READ),
    ("ControlPlane", "RemoveCertificate", CLUSTER_WRITE),
    ("ControlPlane", "RestoreSnapshot", CLUSTER_WRITE),
    (
        "Raft",
        "Step",
        Allow {
            who: &[Who::Replica],
            kind: Kind::Raft,
        },
    ),
];

fn rule(service: &str, method: &str) -> Option<Allow> {
    TABLE
        .iter()
        .find(|(s, m, _)| *s == service && *m == method)
        .map(|(_, _, a)| *a)
}

/// What a request says that authorization looks at beyond the method:
/// the pools it changes and whose report it is. Implemented for every
/// request type (most say nothing).
pub trait Subject {
    /// The pools a write changes (`config`: the configuration as this
    /// replica holds it, for deletes named by something else).
    fn pools(&self, _config: &Snapshot) -> Vec<String> {
        Vec::new()
    }

    /// The component a report is for.
    fn reporter(&self) -> Option<(&'static str, &str)> {
        None
    }
}

macro_rules! says_nothing {
    ($($t:ty),* $(,)?) => { $(impl Subject for $t {})* };
}

says_nothing!(
    v1::GetPoolRequest,
    v1::ListPoolsRequest,
    v1::ListRoutesRequest,
    v1::GetSnapshotRequest,
    v1::WatchRequest,
    v1::GetStatusRequest,
    v1::GetHealthRequest,
    v1::GetClusterStatusRequest,
    v1::AddMemberRequest,
    v1::RemoveMemberRequest,
    v1::ExplainRequest,
    v1::AddCertificateRequest,
    v1::ListCertificatesRequest,
    v1::RemoveCertificateRequest,
    v1::RestoreSnapshotRequest,
    v1::RaftBatch,
);

impl Subject for v1::CreatePoolRequest {
    fn pools(&self, _: &Snapshot) -> Vec<String> {
        self.pool.iter().map(|p| p.name.clone()).collect()
    }
}

impl Subject for v1::UpdatePoolRequest {
    fn pools(&self, _: &Snapshot) -> Vec<String> {
        self.pool.iter().map(|p| p.name.clone()).collect()
    }
}

impl Subject for v1::DeletePoolRequest {
    fn pools(&self, _: &Snapshot) -> Vec<String> {
        vec![self.name.clone()]
    }
}

impl Subject for v1::AddBackendRequest {
    fn pools(&self, _: &Snapshot) -> Vec<String> {
        vec![self.pool.clone()]
    }
}

impl Subject for v1::UpdateBackendRequest {
    fn pools(&self, _: &Snapshot) -> Vec<String> {
        vec![self.pool.clone()]
    }
}

impl Subject for v1::RemoveBackendRequest {
    fn pools(&self, _: &Snapshot) -> Vec<String> {
        vec![self.pool.clone()]
    }
}

impl Subject for v1::AddRouteRequest {
    fn pools(&self, _: &Snapshot) -> Vec<String> {
        self.route.iter().map(|r| r.pool.clone()).collect()
    }
}

impl Subject for v1::AddTcpRouteRequest {
    fn pools(&self, _: &Snapshot) -> Vec<String> {
        self.route.iter().map(|r| r.pool.clone()).collect()
    }
}

impl Subject for v1::DeleteRouteRequest {
    /// The pool of the route it deletes, as this replica holds it.
    fn pools(&self, config: &Snapshot) -> Vec<String> {
        let (Ok(host), Ok(prefix)) = (
            tandem_core::HostMatch::new(&self.host),
            tandem_core::PathPrefix::new(&self.path_prefix),
        ) else {
            return Vec::new();
        };
        config
            .routes
            .iter()
            .filter(|r| r.host == host && r.path_prefix == prefix)
            .map(|r| r.pool.to_string())
            .collect()
    }
}

impl Subject for v1::DeleteTcpRouteRequest {
    fn pools(&self, config: &Snapshot) -> Vec<String> {
        let Ok(listen) = tandem_core::ListenAddr::new(&self.listen) else {
            return Vec::new();
        };
        config
            .tcp_routes
            .iter()
            .filter(|r| r.listen == listen)
            .map(|r| r.pool.to_string())
            .collect()
    }
}

impl Subject for v1::ReportHealthRequest {
    fn reporter(&self) -> Option<(&'static str, &str)> {
        Some(("agent_id", &self.agent_id))
    }
}

impl Subject for v1::ReportAppliedRequest {
    fn reporter(&self) -> Option<(&'static str, &str)> {
        Some(("node_id", &self.node_id))
    }
}

static NODE_TOKEN_REPORTS: AtomicBool = AtomicBool::new(false);

/// Whether the caller of `req` may call `service`/`method`: its identity
/// (as the interceptor found it), the table, a scoped admin's pools
/// (`config` gives the configuration, asked only for a scoped admin's
/// deletes) and a reporter's name. The one place calls are authorized.
pub fn authorize<T: Subject>(
    service: &str,
    method: &str,
    req: &Request<T>,
    config: impl FnOnce() -> Arc<Snapshot>,
) -> Result<Identity, AuthError> {
    let who = match req.extensions().get::<Caller>() {
        Some(Caller(found)) => found.clone()?,
        None => return Err(AuthError::NoCredentials),
    };
    let allow = rule(service, method).ok_or_else(|| AuthError::NoRule {
        method: format!("{service}/{method}"),
    })?;
    if !allow.who.contains(&who.who()) {
        return Err(AuthError::NotAllowed {
            method: method.to_string(),
            name: who.name.clone(),
            role: who.role,
            scoped: who.pools.is_some(),
        });
    }
    match allow.kind {
        Kind::PoolWrite => {
            if let Some(scope) = &who.pools {
                let pools = req.get_ref().pools(&config());
                if pools.is_empty() {
                    return Err(AuthError::NoPool {
                        method: method.to_string(),
                        name: who.name.clone(),
                    });
                }
                if let Some(outside) = pools.iter().find(|p| !scope.contains(*p)) {
                    return Err(AuthError::OutOfScope {
                        name: who.name.clone(),
                        pool: outside.clone(),
                        scope: scope.iter().cloned().collect::<Vec<_>>().join(", "),
                    });
                }
            }
        }
        Kind::Report => match (who.role, req.get_ref().reporter()) {
            (Role::Proxy | Role::Agent, Some((field, claimed))) if claimed != who.name => {
                return Err(AuthError::NotYours {
                    name: who.name.clone(),
                    role: who.role,
                    field,
                    claimed: claimed.to_string(),
                });
            }
            (Role::Node, _) if !NODE_TOKEN_REPORTS.swap(true, Ordering::Relaxed) => {
                tracing::warn!(
                    "a report arrived with the shared node token: the reporter's id is not \
                     checked (one token can report for every agent); give each proxy and agent \
                     its own identity (access file or certificate)"
                );
            }
            _ => {}
        },
        Kind::Read | Kind::ClusterWrite | Kind::Raft => {}
    }
    Ok(who)
}

// === credentials ===

/// The tokens and the access file this replica accepts.
#[derive(Clone)]
pub struct Credentials {
    admin: Vec<u8>,
    node: Option<Vec<u8>>,
    peer: Vec<u8>,
    access: Option<Arc<AccessFile>>,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Credentials(<redacted>)")
    }
}

/// The peer token replicas use when none is configured: derived from the
/// admin token, so the replicas of a group (which share it) agree without
/// another setting, and no proxy or agent can know it.
pub fn derived_peer_token(admin: &str) -> String {
    hex(ring::digest::digest(
        &ring::digest::SHA256,
        format!("tandem peer token\0{admin}").as_bytes(),
    )
    .as_ref())
}

impl Credentials {
    /// The admin token is required; without a node token, nodes use the
    /// admin token; without a peer token, replicas use
    /// [`derived_peer_token`].
    pub fn new(
        admin: String,
        node: Option<String>,
        peer: Option<String>,
        access: Option<AccessFile>,
    ) -> Credentials {
        let peer = peer
            .filter(|p| !p.is_empty())
            .unwrap_or_else(|| derived_peer_token(&admin));
        Credentials {
            admin: admin.into_bytes(),
            node: node.filter(|n| !n.is_empty()).map(String::into_bytes),
            peer: peer.into_bytes(),
            access: access.map(Arc::new),
        }
    }

    /// What the control plane presents to a proxy's admin port (Explain
    /// asks its `/explain`): the node token proxies hold, else the admin
    /// token (which nodes then use).
    pub fn proxy_admin_token(&self) -> String {
        String::from_utf8_lossy(self.node.as_ref().unwrap_or(&self.admin)).into_owned()
    }

    /// The token replicas present to each other (role replica).
    pub fn peer_token(&self) -> String {
        String::from_utf8_lossy(&self.peer).into_owned()
    }

    /// The identity a bearer token stands for.
    pub fn identity_of_token(&self, presented: &[u8]) -> Option<Identity> {
        // Check all so the time taken does not reveal which one matched.
        let admin = tandem_client::constant_time_eq(presented, &self.admin);
        let node = self
            .node
            .as_ref()
            .is_some_and(|n| tandem_client::constant_time_eq(presented, n));
        let peer = tandem_client::constant_time_eq(presented, &self.peer);
        let listed = self.access.as_ref().and_then(|a| a.identity(presented));
        if admin {
            Some(Identity::new("admin", Role::Admin, Via::AdminToken))
        } else if peer {
            Some(Identity::new("replica", Role::Replica, Via::PeerToken))
        } else if node {
            Some(Identity::new("node", Role::Node, Via::NodeToken))
        } else {
            listed
        }
    }

    /// The identity a bearer token stands for, admitted as a call would be
    /// (a revoked name is refused): for the status page's sign-in.
    pub fn admitted_by_token(&self, presented: &[u8]) -> Option<Identity> {
        self.identity_of_token(presented)
            .and_then(|who| self.admit(who).ok())
    }

    /// Refuses a revoked name; scopes a certificate's admin by its access
    /// file entry, when it has one.
    fn admit(&self, mut who: Identity) -> Result<Identity, AuthError> {
        let Some(access) = &self.access else {
            return Ok(who);
        };
        let (revoked, scope) = access.about(&who.name);
        if revoked {
            return Err(AuthError::Revoked { name: who.name });
        }
        if who.via == Via::Certificate && who.role == Role::Admin {
            who.pools = scope;
        }
        Ok(who)
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn sha256(bytes: &[u8]) -> [u8; 32] {
    let d = ring::digest::digest(&ring::digest::SHA256, bytes);
    let mut out = [0; 32];
    out.copy_from_slice(d.as_ref());
    out
}

// === the access file ===

/// Per-name credentials and the deny list, from a JSON file
/// (`TANDEM_ACCESS_FILE`), re-read when its modification time or size
/// changes (checked on each call: a revoke needs no restart):
///
/// ```json
/// {
///   "identities": [
///     {"name": "alice", "role": "admin", "token_sha256": "<64 hex digits>"},
///     {"name": "shop-team", "role": "admin", "pools": ["shop"], "token_sha256": "…"},
///     {"name": "oncall", "role": "operator", "token_sha256": "…"},
///     {"name": "agent-1", "role": "agent", "token_sha256": "…"}
///   ],
///   "revoked": ["proxy-old"]
/// }
/// ```
///
/// Tokens are stored as their SHA-256 (`printf %s "$TOKEN" | sha256sum`),
/// never in plain text. `revoked` refuses a name whatever credential it
/// shows (certificate or token). A file that no longer parses refuses every
/// identity of the file (logged) until it is fixed.
pub struct AccessFile {
    path: PathBuf,
    loaded: Mutex<Loaded>,
}

struct Loaded {
    stamp: Option<(SystemTime, u64)>,
    access: Result<Access, String>,
}

#[derive(Debug, Default)]
struct Access {
    identities: Vec<Entry>,
    revoked: BTreeSet<String>,
}

#[derive(Debug)]
struct Entry {
    name: String,
    role: Role,
    pools: Option<BTreeSet<String>>,
    token_sha256: [u8; 32],
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct FileForm {
    #[serde(default)]
    identities: Vec<EntryForm>,
    #[serde(default)]
    revoked: Vec<String>,
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct EntryForm {
    name: String,
    role: String,
    #[serde(default)]
    pools: Option<Vec<String>>,
    token_sha256: String,
}

impl AccessFile {
    /// Reads the file; an error names what is wrong (the replica refuses
    /// to start with it).
    pub fn load(path: &Path) -> Result<AccessFile, String> {
        let stamp = stamp(path);
        let access = parse_access_file(path)?;
        tracing::info!(
            path = %path.display(),
            identities = access.identities.len(),
            revoked = access.revoked.len(),
            "access file loaded"
        );
        Ok(AccessFile {
            path: path.to_path_buf(),
            loaded: Mutex::new(Loaded {
                stamp,
                access: Ok(access),
            }),
        })
    }

    /// The file as it is now: re-read when it changed.
    fn current<R>(&self, f: impl FnOnce(&Result<Access, String>) -> R) -> R {
        let mut loaded = self.loaded.lock().unwrap_or_else(|p| p.into_inner());
        let now = stamp(&self.path);
        if now != loaded.stamp {
            loaded.stamp = now;
            loaded.access = parse_access_file(&self.path);
            match &loaded.access {
                Ok(a) => tracing::info!(
                    path = %self.path.display(),
                    identities = a.identities.len(),
                    revoked = a.revoked.len(),
                    "access file changed: reloaded"
                ),
                Err(e) => tracing::error!(
                    path = %self.path.display(),
                    error = %e,
                    "access file changed and is now unusable: its identities are refused until it is fixed"
                ),
            }
        }
        f(&loaded.access)
    }

    fn identity(&self, presented: &[u8]) -> Option<Identity> {
        let hash = sha256(presented);
        self.current(|access| {
            let access = access.as_ref().ok()?;
            let mut found = None;
            // Every entry is compared, so the time taken says nothing.
            for e in &access.identities {
                if tandem_client::constant_time_eq(&hash, &e.token_sha256) && found.is_none() {
                    found = Some(Identity {
                        name: e.name.clone(),
                        role: e.role,
                        pools: e.pools.clone(),
                        via: Via::AccessFile,
                    });
                }
            }
            found
        })
    }

    /// Whether `name` is revoked (an unusable file revokes everyone), and
    /// the pools of its admin entry.
    fn about(&self, name: &str) -> (bool, Option<BTreeSet<String>>) {
        self.current(|access| match access {
            Ok(a) => (
                a.revoked.contains(name),
                a.identities
                    .iter()
                    .find(|e| e.name == name && e.role == Role::Admin)
                    .and_then(|e| e.pools.clone()),
            ),
            Err(_) => (false, None),
        })
    }
}

fn stamp(path: &Path) -> Option<(SystemTime, u64)> {
    let m = std::fs::metadata(path).ok()?;
    Some((m.modified().ok()?, m.len()))
}

fn parse_access_file(path: &Path) -> Result<Access, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("access file {}: {e}", path.display()))?;
    parse_access(&text).map_err(|e| format!("access file {}: {e}", path.display()))
}

fn parse_access(text: &str) -> Result<Access, String> {
    let form: FileForm = serde_json::from_str(text).map_err(|e| e.to_string())?;
    let mut access = Access {
        identities: Vec::with_capacity(form.identities.len()),
        revoked: form.revoked.into_iter().collect(),
    };
    let mut names = BTreeSet::new();
    let mut hashes = BTreeSet::new();
    for (i, e) in form.identities.into_iter().enumerate() {
        let at = format!("identities[{i}]");
        let valid_name = !e.name.is_empty()
            && e.name.len() <= 128
            && e.name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'@'));
        if !valid_name {
            return Err(format!(
                "{at}.name: {:?} must be 1-128 letters, digits, '-', '_', '.' or '@'",
                e.name
            ));
        }
        if !names.insert(e.name.clone()) {
            return Err(format!("{at}.name: {:?} appears twice", e.name));
        }
        let role = Role::parse(&e.role).ok_or_else(|| {
            format!(
                "{at}.role: {:?} is not one of admin, operator, replica, proxy, agent",
                e.role
            )
        })?;
        let token_sha256 = parse_sha256(&e.token_sha256).ok_or_else(|| {
            format!("{at}.token_sha256: must be 64 hex digits (the SHA-256 of the token, `printf %s \"$TOKEN\" | sha256sum`)")
        })?;
        if !hashes.insert(token_sha256) {
            return Err(format!(
                "{at}.token_sha256: the same token as an earlier identity"
            ));
        }
        let pools = match e.pools {
            None => None,
            Some(_) if role != Role::Admin => {
                return Err(format!(
                    "{at}.pools: only an admin has a pool scope (this is a {role})"
                ));
            }
            Some(p) if p.is_empty() => {
                return Err(format!(
                    "{at}.pools: an empty scope allows nothing; omit `pools` for an admin of everything"
                ));
            }
            Some(p) => {
                for (j, pool) in p.iter().enumerate() {
                    tandem_core::PoolName::new(pool)
                        .map_err(|err| format!("{at}.pools[{j}]: {}", err.rule))?;
                }
                Some(p.into_iter().collect())
            }
        };
        access.identities.push(Entry {
            name: e.name,
            role,
            pools,
            token_sha256,
        });
    }
    Ok(access)
}

fn parse_sha256(s: &str) -> Option<[u8; 32]> {
    let s = s.trim();
    if s.len() != 64 {
        return None;
    }
    let mut out = [0; 32];
    for (i, b) in out.iter_mut().enumerate() {
        *b = u8::from_str_radix(s.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some(out)
}

// === refusals ===

/// Why a call is refused before its work starts: UNAUTHENTICATED when the
/// caller is not known, PERMISSION_DENIED when it is and may not
/// ([`AuthError::is_denied`]).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    #[error("missing `authorization: Bearer <token>` metadata (or a client certificate)")]
    Missing,
    #[error("authorization must be `Bearer <token>`")]
    Malformed,
    #[error("invalid token")]
    Invalid,
    #[error("no credentials")]
    NoCredentials,
    #[error("{0}")]
    Certificate(tandem_tls::peer::IdentityError),
    #[error("{name} is revoked (the deny list of the access file)")]
    Revoked { name: String },
    #[error("{}", not_allowed(method, name, *role, *scoped))]
    NotAllowed {
        method: String,
        name: String,
        role: Role,
        scoped: bool,
    },
    #[error("{name} may change only the pools {scope}, not {pool:?}")]
    OutOfScope {
        name: String,
        pool: String,
        scope: String,
    },
    #[error(
        "{name} is an admin scoped to pools and {method} names no pool it holds (this replica knows of none): ask an admin of every pool"
    )]
    NoPool { method: String, name: String },
    #[error("{name} (role {role}) may report only for itself, not for {claimed:?} ({field})")]
    NotYours {
        name: String,
        role: Role,
        field: &'static str,
        claimed: String,
    },
    #[error("{method} has no entry in the authorization table: refused to everyone")]
    NoRule { method: String },
}

fn not_allowed(method: &str, name: &str, role: Role, scoped: bool) -> String {
    match role {
        Role::Node => format!(
            "the node token may read, watch and report but not call {method}; use an admin token"
        ),
        Role::Admin if scoped => {
            format!("{name} is an admin scoped to pools: {method} needs an admin of everything")
        }
        _ => format!("{name} (role {role}) may not call {method}"),
    }
}

impl AuthError {
    /// The caller is known but may not make the call.
    pub fn is_denied(&self) -> bool {
        matches!(
            self,
            AuthError::Revoked { .. }
                | AuthError::NotAllowed { .. }
                | AuthError::OutOfScope { .. }
                | AuthError::NoPool { .. }
                | AuthError::NotYours { .. }
                | AuthError::NoRule { .. }
        )
    }
}

// === the interceptor ===

/// Who called, as the interceptor found it: an identity, or why none.
#[derive(Debug, Clone)]
struct Caller(Result<Identity, AuthError>);

/// A tonic interceptor: finds the caller's identity (certificate first,
/// else bearer token) and records it for [`authorize`], which refuses or
/// admits the call in the service (so refusals are counted in the request
/// metrics like any other answer).
#[derive(Clone)]
pub struct Authenticate {
    credentials: Credentials,
}

impl Authenticate {
    pub fn new(credentials: Credentials) -> Self {
        Self { credentials }
    }

    fn identity(&self, req: &Request<()>) -> Result<Identity, AuthError> {
        let who = if let Some(PeerCertificate(der)) = req.extensions().get::<PeerCertificate>() {
            let id = identity_of(der).map_err(AuthError::Certificate)?;
            let role = Role::parse(&id.role).ok_or(AuthError::Certificate(
                tandem_tls::peer::IdentityError::None,
            ))?;
            Identity::new(&id.name, role, Via::Certificate)
        } else {
            let header = req
                .metadata()
                .get("authorization")
                .ok_or(AuthError::Missing)?;
            let token = header
                .as_bytes()
                .strip_prefix(b"Bearer ")
                .ok_or(AuthError::Malformed)?;
            self.credentials
                .identity_of_token(token)
                .ok_or(AuthError::Invalid)?
        };
        // A replica passing a call on to the leader speaks for its caller
        // (replicas are trusted with the raft log already): the caller's
        // identity travels in FORWARDED_FOR and is admitted here again.
        if who.role == Role::Replica
            && let Some(on_behalf) = req.metadata().get(FORWARDED_FOR)
        {
            let forwarded = on_behalf
                .to_str()
                .ok()
                .and_then(|v| serde_json::from_str::<OnBehalf>(v).ok())
                .and_then(OnBehalf::identity)
                .ok_or(AuthError::Malformed)?;
            return self.credentials.admit(forwarded);
        }
        self.credentials.admit(who)
    }
}

/// Metadata a replica adds when it passes a call on to the raft leader:
/// the identity of the caller it speaks for (JSON of [`OnBehalf`]).
pub const FORWARDED_FOR: &str = "x-tandem-forwarded-for";

/// An identity as it travels between replicas.
#[derive(serde::Serialize, serde::Deserialize)]
struct OnBehalf {
    name: String,
    role: String,
    via: String,
    pools: Option<Vec<String>>,
}

impl OnBehalf {
    fn identity(self) -> Option<Identity> {
        let role = match self.role.as_str() {
            "node" => Role::Node,
            r => Role::parse(r)?,
        };
        let via = [
            Via::Certificate,
            Via::AccessFile,
            Via::AdminToken,
            Via::NodeToken,
            Via::PeerToken,
        ]
        .into_iter()
        .find(|v| v.as_str() == self.via)?;
        Some(Identity {
            name: self.name,
            role,
            pools: self.pools.map(|p| p.into_iter().collect()),
            via,
        })
    }
}

/// The [`FORWARDED_FOR`] value for passing `req` on: its caller's
/// identity as this replica admitted it (None without one, or when it
/// cannot travel as ASCII metadata).
pub fn forwarded_for<T>(
    req: &Request<T>,
) -> Option<tonic::metadata::MetadataValue<tonic::metadata::Ascii>> {
    let Some(Caller(Ok(who))) = req.extensions().get::<Caller>() else {
        return None;
    };
    let on_behalf = OnBehalf {
        name: who.name.clone(),
        role: who.role.as_str().to_string(),
        via: who.via.as_str().to_string(),
        pools: who.pools.as_ref().map(|p| p.iter().cloned().collect()),
    };
    serde_json::to_string(&on_behalf).ok()?.parse().ok()
}

impl tonic::service::Interceptor for Authenticate {
    fn call(&mut self, mut req: Request<()>) -> Result<Request<()>, Status> {
        let caller = self.identity(&req);
        req.extensions_mut().insert(Caller(caller));
        Ok(req)
    }
}

/// [`authorize`] as a `Status`, for the raft transport (which has no
/// request metrics to count it in).
pub fn authorize_raft<T: Subject>(req: &Request<T>) -> Result<Identity, Status> {
    authorize("Raft", "Step", req, || Arc::new(Snapshot::default()))
        .map_err(|e| Error::from(e).into())
}

#[cfg(test)]
mod tests;
