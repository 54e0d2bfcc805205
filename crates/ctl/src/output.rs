//! Rendering replies for people (aligned tables, one-line summaries) and for
//! scripts (JSON).
//!
//! The JSON shape is a contract: objects carry the field names of the
//! `tandem.v1` messages, enums are lowercase strings (`round_robin`,
//! `backup`, `draining`, `unhealthy`), unset optional fields are `null`.
//! Watch events and config changes keep the proto's oneof names as keys
//! (`{"revision": 7, "change": {"pool_deleted": "shop"}}`, `{"revision": 7,
//! "health": {...}}`). Everything here is pure: replies in, text out (the
//! current time is passed in).

use std::collections::{BTreeMap, HashSet};

use serde::Serialize;
use tandem_proto::v1;
use tandem_proto::v1::config_change::Change;
use tandem_proto::v1::watch_event::Event;

use crate::duration::{Millis, format_size};

// === enum names ===

pub fn policy_name(v: i32) -> &'static str {
    match v1::LbPolicy::try_from(v) {
        Ok(v1::LbPolicy::Unspecified) => "unspecified",
        Ok(v1::LbPolicy::RoundRobin) => "round_robin",
        Ok(v1::LbPolicy::LeastConnections) => "least_connections",
        Ok(v1::LbPolicy::IpHash) => "ip_hash",
        Ok(v1::LbPolicy::RandomTwoChoices) => "random_two_choices",
        Ok(v1::LbPolicy::SingleActive) => "single_active",
        Err(_) => "unknown",
    }
}

pub fn health_kind_name(v: i32) -> &'static str {
    match v1::HealthCheckKind::try_from(v) {
        Ok(v1::HealthCheckKind::Unspecified) => "unspecified",
        Ok(v1::HealthCheckKind::Http) => "http",
        Ok(v1::HealthCheckKind::Tcp) => "tcp",
        Err(_) => "unknown",
    }
}

pub fn role_name(v: i32) -> &'static str {
    match v1::BackendRole::try_from(v) {
        Ok(v1::BackendRole::Unspecified) => "unspecified",
        Ok(v1::BackendRole::Primary) => "primary",
        Ok(v1::BackendRole::Backup) => "backup",
        Err(_) => "unknown",
    }
}

pub fn admin_state_name(v: i32) -> &'static str {
    match v1::AdminState::try_from(v) {
        Ok(v1::AdminState::Unspecified) => "unspecified",
        Ok(v1::AdminState::Enabled) => "enabled",
        Ok(v1::AdminState::Draining) => "draining",
        Ok(v1::AdminState::Disabled) => "disabled",
        Err(_) => "unknown",
    }
}

pub fn node_kind_name(v: i32) -> &'static str {
    match v1::NodeKind::try_from(v) {
        Ok(v1::NodeKind::Unspecified) => "unspecified",
        Ok(v1::NodeKind::Proxy) => "proxy",
        Ok(v1::NodeKind::Agent) => "agent",
        Ok(v1::NodeKind::Cli) => "cli",
        Err(_) => "unknown",
    }
}

pub fn on_unhealthy_name(v: i32) -> &'static str {
    match v1::OnUnhealthy::try_from(v) {
        Ok(v1::OnUnhealthy::Unspecified) => "policy",
        Ok(v1::OnUnhealthy::Close) => "close",
        Ok(v1::OnUnhealthy::Keep) => "keep",
        Err(_) => "unknown",
    }
}

pub fn health_state_name(v: i32) -> &'static str {
    match v1::HealthState::try_from(v) {
        Ok(v1::HealthState::Unspecified) => "unspecified",
        Ok(v1::HealthState::Unknown) => "unknown",
        Ok(v1::HealthState::Healthy) => "healthy",
        Ok(v1::HealthState::Unhealthy) => "unhealthy",
        // A state this tandemctl does not know (a newer control plane).
        Err(_) => "unknown",
    }
}

// === JSON ===

/// Pretty JSON for one object (what `-o json` prints for a command).
pub fn to_json<T: Serialize>(value: &T) -> String {
    serde_json::to_string_pretty(value).expect("views hold only strings, numbers and lists")
}

/// Compact JSON on one line (what `watch -o json` prints per event).
pub fn to_json_line<T: Serialize>(value: &T) -> String {
    serde_json::to_string(value).expect("views hold only strings, numbers and lists")
}

#[derive(Debug, Serialize)]
pub struct PoolJson<'a> {
    pub name: &'a str,
    pub policy: &'static str,
    pub health_check: Option<HealthCheckJson<'a>>,
    pub connect_timeout_ms: Option<u32>,
    pub request_timeout_ms: Option<u32>,
    pub retry: Option<RetryJson>,
    pub outlier: Option<OutlierJson>,
    pub panic_threshold_percent: Option<u32>,
    pub tcp: Option<TcpSettingsJson>,
    pub max_request_body_bytes: Option<u64>,
    pub upstream_idle_timeout_ms: Option<u32>,
    pub tunnel_idle_timeout_ms: Option<u32>,
    pub backends: Vec<BackendJson<'a>>,
    pub revision: u64,
    /// Set when the answer came from a replica's copy in memory (boxed:
    /// rare, and `PoolJson` is a variant of `ChangeJson`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stale: Option<Box<StaleJson<'a>>>,
}

/// A `StaleRead`: the answer came from a replica's copy of the
/// configuration in memory because it cannot reach its database.
#[derive(Debug, Serialize)]
pub struct StaleJson<'a> {
    pub replica: &'a str,
    pub database: &'a str,
    pub cause: &'a str,
    pub since_unix_ms: i64,
    pub copied_from: &'a str,
}

impl<'a> From<&'a v1::StaleRead> for StaleJson<'a> {
    fn from(s: &'a v1::StaleRead) -> Self {
        Self {
            replica: &s.replica,
            database: &s.database,
            cause: &s.cause,
            since_unix_ms: s.since_unix_ms,
            copied_from: &s.copied_from,
        }
    }
}

/// The one-line warning printed (on stderr) with an answer from memory:
/// `warning: control-2 answered from its copy in memory (revision 7): it
/// cannot reach its database 127.0.0.1:5432/tandem since 35s ago
/// (connection refused); changes made since may be missing`.
pub fn stale_warning(s: &v1::StaleRead, revision: u64, now_ms: i64) -> String {
    let copied = if s.copied_from.is_empty() {
        String::new()
    } else {
        format!(", copied from {}", s.copied_from)
    };
    let cause = if s.cause.is_empty() {
        String::new()
    } else {
        format!(" ({})", s.cause)
    };
    format!(
        "warning: {} answered from its copy in memory (revision {revision}{copied}): it cannot reach its database {} since {}{cause}; changes made since may be missing",
        s.replica,
        s.database,
        ago(now_ms, s.since_unix_ms),
    )
}

#[derive(Debug, Serialize)]
pub struct TcpSettingsJson {
    pub idle_timeout_ms: Option<u32>,
    pub max_connections: Option<u32>,
    pub max_queue: Option<u32>,
    pub queue_timeout_ms: Option<u32>,
    /// `close`, `keep`, or `policy` (close for single_active, keep otherwise).
    pub on_unhealthy: Option<&'static str>,
    pub unhealthy_grace_ms: Option<u32>,
    pub proxy_protocol: Option<bool>,
}

#[derive(Debug, Serialize)]
pub struct HealthCheckJson<'a> {
    pub kind: Option<&'static str>,
    pub path: Option<&'a str>,
    pub method: Option<&'a str>,
    pub host: Option<&'a str>,
    pub expected_status_min: Option<u32>,
    pub expected_status_max: Option<u32>,
    pub interval_ms: Option<u32>,
    pub timeout_ms: Option<u32>,
    pub rise: Option<u32>,
    pub fall: Option<u32>,
    pub port: Option<u32>,
}

#[derive(Debug, Serialize)]
pub struct RetryJson {
    pub attempts: Option<u32>,
    pub per_try_timeout_ms: Option<u32>,
    pub budget_percent: Option<u32>,
}

#[derive(Debug, Serialize)]
pub struct OutlierJson {
    pub consecutive_failures: Option<u32>,
    pub base_ejection_ms: Option<u32>,
    pub max_ejected_percent: Option<u32>,
}

#[derive(Debug, Serialize)]
pub struct BackendJson<'a> {
    pub address: &'a str,
    pub weight: Option<u32>,
    pub role: &'static str,
    pub admin_state: &'static str,
    pub order: Option<u32>,
}

#[derive(Debug, Serialize)]
pub struct RouteJson<'a> {
    pub host: &'a str,
    pub path_prefix: &'a str,
    pub pool: &'a str,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub redirect_https: bool,
    #[serde(skip_serializing_if = "is_zero")]
    pub hsts_max_age_s: u32,
}

fn is_zero(v: &u32) -> bool {
    *v == 0
}

#[derive(Debug, Serialize)]
pub struct CertificateJson<'a> {
    pub name: &'a str,
    pub sans: &'a [String],
    pub not_before_unix_s: i64,
    pub not_after_unix_s: i64,
    pub fingerprint_sha256: &'a str,
    pub key_type: &'a str,
    pub revision: u64,
    pub proxies: &'a [String],
}

impl<'a> From<&'a v1::CertificateInfo> for CertificateJson<'a> {
    fn from(c: &'a v1::CertificateInfo) -> Self {
        Self {
            name: &c.name,
            sans: &c.sans,
            not_before_unix_s: c.not_before_unix_s,
            not_after_unix_s: c.not_after_unix_s,
            fingerprint_sha256: &c.fingerprint_sha256,
            key_type: &c.key_type,
            revision: c.revision,
            proxies: &c.proxies,
        }
    }
}

#[derive(Debug, Serialize)]
pub struct CertificateReplyJson<'a> {
    pub certificate: Option<CertificateJson<'a>>,
    pub revision: u64,
}

#[derive(Debug, Serialize)]
pub struct CertificatesJson<'a> {
    pub certificates: Vec<CertificateJson<'a>>,
    pub revision: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stale: Option<StaleJson<'a>>,
}

/// A Unix time in seconds as a UTC date: `2027-03-01 12:00 UTC`.
pub fn unix_date(secs: i64) -> String {
    chrono::DateTime::from_timestamp(secs, 0)
        .map(|t| t.format("%Y-%m-%d %H:%M UTC").to_string())
        .unwrap_or_else(|| secs.to_string())
}

/// `cert list`: a row per certificate.
pub fn certificates_table(reply: &v1::ListCertificatesReply) -> String {
    if reply.certificates.is_empty() {
        return format!("no certificates (revision {})", reply.revision);
    }
    let mut t = Table::new(&["name", "names (SAN)", "not after", "key", "served by"]);
    for c in &reply.certificates {
        let served = if c.proxies.is_empty() {
            "-".to_string()
        } else {
            c.proxies.join(", ")
        };
        t.row(vec![
            c.name.clone(),
            c.sans.join(", "),
            unix_date(c.not_after_unix_s),
            c.key_type.clone(),
            served,
        ]);
    }
    t.render()
}

#[derive(Debug, Serialize)]
pub struct TcpRouteJson<'a> {
    pub listen: &'a str,
    pub pool: &'a str,
}

impl<'a> From<&'a v1::TcpRoute> for TcpRouteJson<'a> {
    fn from(r: &'a v1::TcpRoute) -> Self {
        Self {
            listen: &r.listen,
            pool: &r.pool,
        }
    }
}

impl<'a> From<&'a v1::Pool> for PoolJson<'a> {
    fn from(p: &'a v1::Pool) -> Self {
        Self {
            name: &p.name,
            policy: policy_name(p.policy),
            health_check: p.health_check.as_ref().map(|h| HealthCheckJson {
                kind: h.kind.map(health_kind_name),
                path: h.path.as_deref(),
                method: h.method.as_deref(),
                host: h.host.as_deref(),
                expected_status_min: h.expected_status_min,
                expected_status_max: h.expected_status_max,
                interval_ms: h.interval_ms,
                timeout_ms: h.timeout_ms,
                rise: h.rise,
                fall: h.fall,
                port: h.port,
            }),
            connect_timeout_ms: p.connect_timeout_ms,
            request_timeout_ms: p.request_timeout_ms,
            retry: p.retry.as_ref().map(|r| RetryJson {
                attempts: r.attempts,
                per_try_timeout_ms: r.per_try_timeout_ms,
                budget_percent: r.budget_percent,
            }),
            outlier: p.outlier.as_ref().map(|o| OutlierJson {
                consecutive_failures: o.consecutive_failures,
                base_ejection_ms: o.base_ejection_ms,
                max_ejected_percent: o.max_ejected_percent,
            }),
            panic_threshold_percent: p.panic_threshold_percent,
            tcp: p.tcp.as_ref().map(|t| TcpSettingsJson {
                idle_timeout_ms: t.idle_timeout_ms,
                max_connections: t.max_connections,
                max_queue: t.max_queue,
                queue_timeout_ms: t.queue_timeout_ms,
                on_unhealthy: t.on_unhealthy.map(on_unhealthy_name),
                unhealthy_grace_ms: t.unhealthy_grace_ms,
                proxy_protocol: t.proxy_protocol,
            }),
            max_request_body_bytes: p.max_request_body_bytes,
            upstream_idle_timeout_ms: p.upstream_idle_timeout_ms,
            tunnel_idle_timeout_ms: p.tunnel_idle_timeout_ms,
            backends: p.backends.iter().map(BackendJson::from).collect(),
            revision: p.revision,
            stale: p.stale.as_ref().map(|s| Box::new(StaleJson::from(s))),
        }
    }
}

impl<'a> From<&'a v1::Backend> for BackendJson<'a> {
    fn from(b: &'a v1::Backend) -> Self {
        Self {
            address: &b.address,
            weight: b.weight,
            role: role_name(b.role),
            admin_state: admin_state_name(b.admin_state),
            order: b.order,
        }
    }
}

impl<'a> From<&'a v1::Route> for RouteJson<'a> {
    fn from(r: &'a v1::Route) -> Self {
        Self {
            host: &r.host,
            path_prefix: &r.path_prefix,
            pool: &r.pool,
            redirect_https: r.redirect_https,
            hsts_max_age_s: r.hsts_max_age_s,
        }
    }
}

/// `PoolReply`, `ListPoolsReply`, ... : the reply messages themselves.
#[derive(Debug, Serialize)]
pub struct PoolReplyJson<'a> {
    pub pool: Option<PoolJson<'a>>,
    pub revision: u64,
}

#[derive(Debug, Serialize)]
pub struct PoolsJson<'a> {
    pub pools: Vec<PoolJson<'a>>,
    pub revision: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stale: Option<StaleJson<'a>>,
}

#[derive(Debug, Serialize)]
pub struct BackendReplyJson<'a> {
    pub backend: Option<BackendJson<'a>>,
    pub revision: u64,
}

#[derive(Debug, Serialize)]
pub struct RouteReplyJson<'a> {
    pub route: Option<RouteJson<'a>>,
    pub revision: u64,
}

#[derive(Debug, Serialize)]
pub struct TcpRouteReplyJson<'a> {
    pub route: Option<TcpRouteJson<'a>>,
    pub revision: u64,
}

#[derive(Debug, Serialize)]
pub struct RoutesJson<'a> {
    pub routes: Vec<RouteJson<'a>>,
    pub tcp_routes: Vec<TcpRouteJson<'a>>,
    pub revision: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stale: Option<StaleJson<'a>>,
}

#[derive(Debug, Serialize)]
pub struct ChangeReplyJson {
    pub revision: u64,
}

#[derive(Debug, Serialize)]
pub struct SnapshotJson<'a> {
    pub revision: u64,
    pub pools: Vec<PoolJson<'a>>,
    pub routes: Vec<RouteJson<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stale: Option<StaleJson<'a>>,
    pub tcp_routes: Vec<TcpRouteJson<'a>>,
}

impl<'a> From<&'a v1::Snapshot> for SnapshotJson<'a> {
    fn from(s: &'a v1::Snapshot) -> Self {
        Self {
            revision: s.revision,
            pools: s.pools.iter().map(PoolJson::from).collect(),
            routes: s.routes.iter().map(RouteJson::from).collect(),
            stale: s.stale.as_ref().map(StaleJson::from),
            tcp_routes: s.tcp_routes.iter().map(TcpRouteJson::from).collect(),
        }
    }
}

/// `status -o json`: the `StatusReply`, plus `health` (the `HealthReply`,
/// backends no agent has reported on included as `unknown`), `null` with
/// `health_error` saying why when the replica could not tell.
#[derive(Debug, Serialize)]
pub struct StatusJson<'a> {
    pub revision: u64,
    pub replica: &'a str,
    pub database_reachable: bool,
    pub nodes: Vec<NodeJson<'a>>,
    pub health: Option<HealthJson<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub health_error: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stale: Option<StaleJson<'a>>,
    /// Problems seen from the health table (two members of a
    /// single_active pool passing their check), a line each.
    pub alerts: &'a [String],
    /// Each backend's traffic merged across the proxies reporting it.
    pub traffic: Vec<TrafficJson<'a>>,
}

/// A `MergedTraffic`.
#[derive(Debug, Serialize)]
pub struct TrafficJson<'a> {
    pub pool: &'a str,
    pub address: &'a str,
    pub proxies: u32,
    pub requests_per_s: f64,
    pub errors_per_s: f64,
    /// 1xx to 5xx.
    pub responses_per_s: &'a [f64],
    pub connect_failures_per_s: f64,
    pub timeouts_per_s: f64,
    pub resets_per_s: f64,
    pub invalid_per_s: f64,
    pub p50_ms: f64,
    pub p99_ms: f64,
}

/// A `NodeStatus`, plus `lag` (revision - applied_revision) as in the table.
#[derive(Debug, Serialize)]
pub struct NodeJson<'a> {
    pub node_id: &'a str,
    pub kind: &'static str,
    pub applied_revision: u64,
    pub lag: u64,
    pub zone: &'a str,
    pub last_seen_unix_ms: i64,
    pub replica: &'a str,
    pub detail: &'a str,
    /// No report for longer than the control plane's bound.
    pub stale: bool,
    pub listeners: Vec<ListenerJson<'a>>,
    pub alerts: &'a [String],
}

#[derive(Debug, Serialize)]
pub struct ListenerJson<'a> {
    pub listen: &'a str,
    pub pool: &'a str,
    pub bound: bool,
    pub error: &'a str,
}

impl<'a> StatusJson<'a> {
    pub fn new(s: &'a v1::StatusReply, health: &'a Health, alerts: &'a [String]) -> Self {
        let (health, health_error) = match health {
            Health::Known { reply, .. } => (Some(HealthJson::from(reply)), None),
            Health::Unavailable(why) => (None, Some(why.as_str())),
        };
        Self {
            revision: s.revision,
            replica: &s.replica,
            database_reachable: s.database_reachable,
            nodes: s
                .nodes
                .iter()
                .map(|n| NodeJson {
                    node_id: &n.node_id,
                    kind: node_kind_name(n.kind),
                    applied_revision: n.applied_revision,
                    lag: s.revision.saturating_sub(n.applied_revision),
                    zone: &n.zone,
                    last_seen_unix_ms: n.last_seen_unix_ms,
                    replica: &n.replica,
                    detail: &n.detail,
                    stale: n.stale,
                    listeners: n
                        .listeners
                        .iter()
                        .map(|l| ListenerJson {
                            listen: &l.listen,
                            pool: &l.pool,
                            bound: l.bound,
                            error: &l.error,
                        })
                        .collect(),
                    alerts: &n.alerts,
                })
                .collect(),
            health,
            health_error,
            stale: s.stale.as_ref().map(StaleJson::from),
            alerts,
            traffic: s
                .traffic
                .iter()
                .map(|t| TrafficJson {
                    pool: &t.pool,
                    address: &t.address,
                    proxies: t.proxies,
                    requests_per_s: t.requests_per_s,
                    errors_per_s: t.errors_per_s,
                    responses_per_s: &t.responses_per_s,
                    connect_failures_per_s: t.connect_failures_per_s,
                    timeouts_per_s: t.timeouts_per_s,
                    resets_per_s: t.resets_per_s,
                    invalid_per_s: t.invalid_per_s,
                    p50_ms: t.p50_ms,
                    p99_ms: t.p99_ms,
                })
                .collect(),
        }
    }
}

// === health and cluster JSON ===

/// A `HealthReply`.
#[derive(Debug, Serialize)]
pub struct HealthJson<'a> {
    pub index: u64,
    pub backends: Vec<BackendHealthJson<'a>>,
    pub leader: &'a str,
    pub term: u64,
}

#[derive(Debug, Serialize)]
pub struct BackendHealthJson<'a> {
    pub pool: &'a str,
    pub address: &'a str,
    pub state: &'static str,
    pub since_unix_ms: i64,
    pub reason: &'a str,
    pub agents: Vec<AgentViewJson<'a>>,
}

#[derive(Debug, Serialize)]
pub struct AgentViewJson<'a> {
    pub agent_id: &'a str,
    pub zone: &'a str,
    /// `null` until the agent has seen `rise` successes or `fall` failures.
    pub healthy: Option<bool>,
    pub last_detail: &'a str,
    pub last_seen_unix_ms: i64,
    pub live: bool,
}

/// A `HealthUpdate` (watch events).
#[derive(Debug, Serialize)]
pub struct HealthUpdateJson<'a> {
    pub index: u64,
    pub full: bool,
    pub backends: Vec<BackendHealthJson<'a>>,
}

impl<'a> From<&'a v1::HealthReply> for HealthJson<'a> {
    fn from(h: &'a v1::HealthReply) -> Self {
        Self {
            index: h.index,
            backends: h.backends.iter().map(BackendHealthJson::from).collect(),
            leader: &h.leader,
            term: h.term,
        }
    }
}

impl<'a> From<&'a v1::BackendHealth> for BackendHealthJson<'a> {
    fn from(b: &'a v1::BackendHealth) -> Self {
        Self {
            pool: &b.pool,
            address: &b.address,
            state: health_state_name(b.state),
            since_unix_ms: b.since_unix_ms,
            reason: &b.reason,
            agents: b
                .agents
                .iter()
                .map(|a| AgentViewJson {
                    agent_id: &a.agent_id,
                    zone: &a.zone,
                    healthy: a.healthy,
                    last_detail: &a.last_detail,
                    last_seen_unix_ms: a.last_seen_unix_ms,
                    live: a.live,
                })
                .collect(),
        }
    }
}

impl<'a> From<&'a v1::HealthUpdate> for HealthUpdateJson<'a> {
    fn from(h: &'a v1::HealthUpdate) -> Self {
        Self {
            index: h.index,
            full: h.full,
            backends: h.backends.iter().map(BackendHealthJson::from).collect(),
        }
    }
}

/// `backend list -o json`: a pool's backends, and their health (`null` when
/// the replica could not tell).
#[derive(Debug, Serialize)]
pub struct BackendsJson<'a> {
    pub pool: &'a str,
    pub backends: Vec<BackendJson<'a>>,
    pub revision: u64,
    pub health: Option<Vec<BackendHealthJson<'a>>>,
}

impl<'a> BackendsJson<'a> {
    pub fn new(p: &'a v1::Pool, health: &'a Health) -> Self {
        Self {
            pool: &p.name,
            backends: p.backends.iter().map(BackendJson::from).collect(),
            revision: p.revision,
            health: match health {
                Health::Known { reply, .. } => {
                    Some(reply.backends.iter().map(BackendHealthJson::from).collect())
                }
                Health::Unavailable(_) => None,
            },
        }
    }
}

/// A `ClusterStatus`.
#[derive(Debug, Serialize)]
pub struct ClusterStatusJson<'a> {
    pub replica_id: u64,
    pub role: &'a str,
    pub leader_id: u64,
    pub term: u64,
    pub commit_index: u64,
    pub applied_index: u64,
    pub members: Vec<ClusterMemberJson<'a>>,
    #[serde(skip_serializing_if = "str::is_empty")]
    pub apply_error: &'a str,
}

#[derive(Debug, Serialize)]
pub struct ClusterMemberJson<'a> {
    pub id: u64,
    pub address: &'a str,
    pub role: &'a str,
    pub matched_index: u64,
    pub lag: u64,
    pub reachable: Option<bool>,
    pub last_heard_ms: Option<u64>,
    pub progress: &'a str,
    /// "voter" or "learner" (absent from replicas that predate it).
    #[serde(skip_serializing_if = "str::is_empty")]
    pub suffrage: &'a str,
}

impl<'a> From<&'a v1::ClusterStatus> for ClusterStatusJson<'a> {
    fn from(c: &'a v1::ClusterStatus) -> Self {
        Self {
            replica_id: c.replica_id,
            role: &c.role,
            leader_id: c.leader_id,
            term: c.term,
            commit_index: c.commit_index,
            applied_index: c.applied_index,
            members: c
                .members
                .iter()
                .map(|m| ClusterMemberJson {
                    id: m.id,
                    address: &m.address,
                    role: &m.role,
                    matched_index: m.matched_index,
                    lag: m.lag,
                    reachable: m.reachable,
                    last_heard_ms: m.last_heard_ms,
                    progress: &m.progress,
                    suffrage: &m.suffrage,
                })
                .collect(),
            apply_error: &c.apply_error,
        }
    }
}

/// A `WatchEvent`: `{"revision": N, "snapshot": {...}}`,
/// `{"revision": N, "change": {"<kind>": ...}}` or `{"revision": N,
/// "health": {"index": I, "full": false, "backends": [...]}}`.
#[derive(Debug, Serialize)]
pub struct WatchEventJson<'a> {
    pub revision: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub snapshot: Option<SnapshotJson<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub change: Option<ChangeJson<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub health: Option<HealthUpdateJson<'a>>,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ChangeJson<'a> {
    // Boxed: a pool's view is several times the size of the other changes.
    PoolUpserted(Box<PoolJson<'a>>),
    PoolDeleted(&'a str),
    BackendUpserted {
        pool: &'a str,
        backend: Option<BackendJson<'a>>,
    },
    BackendRemoved {
        pool: &'a str,
        address: &'a str,
    },
    RouteUpserted(RouteJson<'a>),
    RouteDeleted {
        host: &'a str,
        path_prefix: &'a str,
    },
    TcpRouteUpserted(TcpRouteJson<'a>),
    /// The listen address of the TCP route deleted.
    TcpRouteDeleted(&'a str),
    /// The name of the certificate added or replaced (never its key).
    CertificateUpserted(&'a str),
    CertificateDeleted(&'a str),
    /// A change this tandemctl does not know (a newer control plane).
    Unknown {},
}

impl<'a> From<&'a v1::ConfigChange> for ChangeJson<'a> {
    fn from(c: &'a v1::ConfigChange) -> Self {
        match &c.change {
            Some(Change::PoolUpserted(p)) => Self::PoolUpserted(Box::new(p.into())),
            Some(Change::PoolDeleted(name)) => Self::PoolDeleted(name),
            Some(Change::BackendUpserted(b)) => Self::BackendUpserted {
                pool: &b.pool,
                backend: b.backend.as_ref().map(BackendJson::from),
            },
            Some(Change::BackendRemoved(b)) => Self::BackendRemoved {
                pool: &b.pool,
                address: &b.address,
            },
            Some(Change::RouteUpserted(r)) => Self::RouteUpserted(r.into()),
            Some(Change::RouteDeleted(r)) => Self::RouteDeleted {
                host: &r.host,
                path_prefix: &r.path_prefix,
            },
            Some(Change::TcpRouteUpserted(r)) => Self::TcpRouteUpserted(r.into()),
            Some(Change::TcpRouteDeleted(listen)) => Self::TcpRouteDeleted(listen),
            Some(Change::CertificateUpserted(c)) => Self::CertificateUpserted(&c.name),
            Some(Change::CertificateDeleted(name)) => Self::CertificateDeleted(name),
            None => Self::Unknown {},
        }
    }
}

impl<'a> From<&'a v1::WatchEvent> for WatchEventJson<'a> {
    fn from(e: &'a v1::WatchEvent) -> Self {
        let (snapshot, change, health) = match &e.event {
            Some(Event::Snapshot(s)) => (Some(s.into()), None, None),
            Some(Event::Change(c)) => (None, Some(c.into()), None),
            Some(Event::Health(h)) => (None, None, Some(h.into())),
            None => (None, None, None),
        };
        Self {
            revision: e.revision,
            snapshot,
            change,
            health,
        }
    }
}

// === tables ===

/// Aligned columns under an upper-case header row, kubectl style: three
/// spaces between columns, no trailing whitespace, `-` for an empty cell.
#[derive(Debug, Clone)]
pub struct Table {
    headers: Vec<&'static str>,
    rows: Vec<Vec<String>>,
}

impl Table {
    pub fn new(headers: &[&'static str]) -> Self {
        Self {
            headers: headers.to_vec(),
            rows: Vec::new(),
        }
    }

    pub fn row(&mut self, cells: Vec<String>) {
        self.rows.push(cells);
    }

    pub fn render(&self) -> String {
        let cell = |s: &str| -> String {
            if s.is_empty() {
                return "-".into();
            }
            // Text from the server must not break the alignment.
            s.chars()
                .map(|c| if c.is_control() { ' ' } else { c })
                .collect()
        };
        let rows: Vec<Vec<String>> = std::iter::once(
            self.headers
                .iter()
                .map(|h| h.to_uppercase())
                .collect::<Vec<_>>(),
        )
        .chain(
            self.rows
                .iter()
                .map(|r| r.iter().map(|c| cell(c)).collect()),
        )
        .collect();
        let columns = rows.iter().map(Vec::len).max().unwrap_or(0);
        let widths: Vec<usize> = (0..columns)
            .map(|i| {
                rows.iter()
                    .filter_map(|r| r.get(i))
                    .map(|c| c.chars().count())
                    .max()
                    .unwrap_or(0)
            })
            .collect();
        let mut out = String::new();
        for row in &rows {
            let mut line = String::new();
            for (i, c) in row.iter().enumerate() {
                if i > 0 {
                    line.push_str("   ");
                }
                line.push_str(c);
                let pad = widths[i] - c.chars().count();
                line.extend(std::iter::repeat_n(' ', pad));
            }
            out.push_str(line.trim_end());
            out.push('\n');
        }
        out
    }
}

/// `key:   value` lines with the values aligned.
pub fn fields(pairs: &[(&str, String)]) -> String {
    let width = pairs.iter().map(|(k, _)| k.len() + 1).max().unwrap_or(0);
    pairs
        .iter()
        .map(|(k, v)| format!("{:<width$}  {v}\n", format!("{k}:")))
        .collect()
}

fn ms(v: Option<u32>) -> String {
    v.map(|v| Millis(v).to_string()).unwrap_or_default()
}

fn num<T: ToString>(v: Option<T>) -> String {
    v.map(|v| v.to_string()).unwrap_or_default()
}

fn percent(v: Option<u32>) -> String {
    v.map(|v| format!("{v}%")).unwrap_or_default()
}

/// `http GET /healthz (200-399) every 1s, timeout 1s, rise 2, fall 2`.
pub fn health_summary(h: Option<&v1::HealthCheck>) -> String {
    let Some(h) = h else {
        return String::new();
    };
    let kind = h.kind.map(health_kind_name).unwrap_or("http");
    let port = h.port.filter(|p| *p != 0);
    let mut s = if kind == "tcp" {
        match port {
            Some(p) => format!("tcp connect port {p}"),
            None => "tcp connect".to_string(),
        }
    } else {
        let method = h.method.as_deref().unwrap_or("GET");
        let path = h.path.as_deref().unwrap_or("/");
        let mut s = format!("{kind} {method} {path}");
        if let Some(host) = h.host.as_deref().filter(|h| !h.is_empty()) {
            s.push_str(&format!(" Host {host}"));
        }
        if let Some(p) = port {
            s.push_str(&format!(" port {p}"));
        }
        if let (Some(min), Some(max)) = (h.expected_status_min, h.expected_status_max) {
            s.push_str(&format!(" ({min}-{max})"));
        }
        s
    };
    if h.interval_ms.is_some() {
        s.push_str(&format!(" every {}", ms(h.interval_ms)));
    }
    for (label, v) in [
        ("timeout", ms(h.timeout_ms)),
        ("rise", num(h.rise)),
        ("fall", num(h.fall)),
    ] {
        if !v.is_empty() {
            s.push_str(&format!(", {label} {v}"));
        }
    }
    s
}

pub fn backends_table(backends: &[v1::Backend]) -> String {
    backends_rows(backends, None, false)
}

/// Does the pool's policy follow the declared order (show it)?
fn ordered(p: &v1::Pool) -> bool {
    p.policy == v1::LbPolicy::SingleActive as i32
}

/// `backend list`: a pool's backends, with a HEALTH column when the replica
/// could tell, then the note saying why it could not (or what is missing).
pub fn backend_list(p: &v1::Pool, health: &Health) -> String {
    if p.backends.is_empty() {
        return format!("pool/{} has no backends\n", p.name);
    }
    let mut out = match health {
        Health::Known { reply, .. } => {
            let states: BTreeMap<&str, i32> = reply
                .backends
                .iter()
                .filter(|b| b.pool == p.name)
                .map(|b| (b.address.as_str(), b.state))
                .collect();
            backends_rows(&p.backends, Some(&states), ordered(p))
        }
        Health::Unavailable(_) => backends_rows(&p.backends, None, ordered(p)),
    };
    if let Some(note) = health.note() {
        out.push_str(&note);
        out.push('\n');
    }
    out
}

/// Backends as rows; with `health` (address to state), a HEALTH column in
/// which a backend no agent has reported on is `unknown`.
fn backends_rows(
    backends: &[v1::Backend],
    health: Option<&BTreeMap<&str, i32>>,
    with_order: bool,
) -> String {
    let mut headers = vec!["address", "weight", "role", "state"];
    if with_order {
        headers.insert(1, "order");
    }
    if health.is_some() {
        headers.push("health");
    }
    let mut t = Table::new(&headers);
    let mut sorted: Vec<&v1::Backend> = backends.iter().collect();
    if with_order {
        sorted.sort_by_key(|b| (b.order.unwrap_or(0), b.address.clone()));
    }
    for b in sorted {
        let mut row = vec![
            b.address.clone(),
            num(b.weight),
            role_name(b.role).into(),
            admin_state_name(b.admin_state).into(),
        ];
        if with_order {
            row.insert(1, num(b.order));
        }
        if let Some(health) = health {
            let state = health
                .get(b.address.as_str())
                .copied()
                .unwrap_or(v1::HealthState::Unknown as i32);
            row.push(health_state_name(state).into());
        }
        t.row(row);
    }
    t.render()
}

/// `pool get`: the settings as aligned fields, then the backends.
pub fn pool_detail(p: &v1::Pool) -> String {
    let retry = p
        .retry
        .as_ref()
        .map(|r| {
            format!(
                "{} (per try {}, budget {})",
                num(r.attempts),
                ms(r.per_try_timeout_ms),
                percent(r.budget_percent)
            )
        })
        .unwrap_or_default();
    let outlier = p
        .outlier
        .as_ref()
        .map(|o| {
            format!(
                "eject after {} failures for {}, at most {} of backends",
                num(o.consecutive_failures),
                ms(o.base_ejection_ms),
                percent(o.max_ejected_percent)
            )
        })
        .unwrap_or_default();
    let mut out = fields(&[
        ("name", p.name.clone()),
        ("revision", p.revision.to_string()),
        ("policy", policy_name(p.policy).into()),
        ("health check", health_summary(p.health_check.as_ref())),
        ("connect timeout", ms(p.connect_timeout_ms)),
        ("request timeout", ms(p.request_timeout_ms)),
        ("retries", retry),
        ("outlier detection", outlier),
        ("panic threshold", percent(p.panic_threshold_percent)),
        ("tcp routes", tcp_summary(p)),
        (
            "max request body",
            p.max_request_body_bytes
                .map(|n| {
                    if n == 0 {
                        "no limit".into()
                    } else {
                        format_size(n)
                    }
                })
                .unwrap_or_default(),
        ),
        ("upstream idle timeout", ms(p.upstream_idle_timeout_ms)),
        ("tunnel idle timeout", ms(p.tunnel_idle_timeout_ms)),
    ]);
    out.push('\n');
    if p.backends.is_empty() {
        out.push_str("no backends\n");
    } else {
        out.push_str(&backends_rows(&p.backends, None, ordered(p)));
    }
    out
}

/// `idle 30m, max 100 per backend (queue 128 for 5s), unhealthy: close after 0ms, proxy protocol v2`.
pub fn tcp_summary(p: &v1::Pool) -> String {
    let Some(t) = &p.tcp else {
        return String::new();
    };
    let idle = match t.idle_timeout_ms {
        Some(0) => "no idle timeout".to_string(),
        v => format!("idle {}", ms(v)),
    };
    let limit = match t.max_connections {
        Some(0) | None => "no connection limit".to_string(),
        Some(n) => format!(
            "max {n} per backend (queue {} for {})",
            num(t.max_queue),
            ms(t.queue_timeout_ms)
        ),
    };
    let by_policy = if ordered(p) { "close" } else { "keep" };
    let set = t.on_unhealthy.map(on_unhealthy_name).unwrap_or("policy");
    let (action, why) = match set {
        "policy" => (by_policy, " (policy)"),
        other => (other, ""),
    };
    let unhealthy = if action == "close" {
        format!("unhealthy: close after {}{why}", ms(t.unhealthy_grace_ms))
    } else {
        format!("unhealthy: {action}{why}")
    };
    let proxy = if t.proxy_protocol == Some(true) {
        ", proxy protocol v2"
    } else {
        ""
    };
    format!("{idle}, {limit}, {unhealthy}{proxy}")
}

pub fn pools_table(pools: &[v1::Pool]) -> String {
    let mut t = Table::new(&["name", "policy", "backends", "health check", "revision"]);
    for p in pools {
        let usable = p
            .backends
            .iter()
            .filter(|b| b.admin_state == v1::AdminState::Enabled as i32)
            .count();
        t.row(vec![
            p.name.clone(),
            policy_name(p.policy).into(),
            format!("{usable}/{} enabled", p.backends.len()),
            health_summary(p.health_check.as_ref()),
            p.revision.to_string(),
        ]);
    }
    t.render()
}

/// `route list`: the HTTP routes, then the TCP ones.
pub fn route_list(reply: &v1::ListRoutesReply) -> String {
    if reply.routes.is_empty() && reply.tcp_routes.is_empty() {
        return format!("no routes (revision {})", reply.revision);
    }
    let mut out = String::new();
    if !reply.routes.is_empty() {
        out.push_str(&routes_table(&reply.routes));
    }
    if !reply.tcp_routes.is_empty() {
        if !out.is_empty() {
            out.push('\n');
        }
        out.push_str(&tcp_routes_table(&reply.tcp_routes));
    }
    out
}

pub fn tcp_routes_table(routes: &[v1::TcpRoute]) -> String {
    let mut t = Table::new(&["tcp listen", "pool"]);
    for r in routes {
        t.row(vec![r.listen.clone(), r.pool.clone()]);
    }
    t.render()
}

/// One line for each `single_active` pool with more than one member whose
/// health check passes: every proxy still sends only to the first by
/// declared order, but two database primaries at once is a split brain
/// someone must look at.
pub fn single_active_alerts(pools: &[v1::Pool], health: &Health) -> Vec<String> {
    let Health::Known { reply, .. } = health else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for p in pools.iter().filter(|p| ordered(p)) {
        let mut claiming: Vec<&v1::Backend> = p
            .backends
            .iter()
            .filter(|b| b.admin_state != v1::AdminState::Disabled as i32)
            .filter(|b| {
                reply.backends.iter().any(|h| {
                    h.pool == p.name
                        && h.address == b.address
                        && h.state == v1::HealthState::Healthy as i32
                })
            })
            .collect();
        if claiming.len() < 2 {
            continue;
        }
        claiming.sort_by_key(|b| (b.order.unwrap_or(0), b.address.clone()));
        let names: Vec<&str> = claiming.iter().map(|b| b.address.as_str()).collect();
        out.push(format!(
            "pool/{} (single_active): {} members pass the health check ({}); proxies send only to {}, the first by declared order. Two primaries at once: check for a split brain",
            p.name,
            claiming.len(),
            names.join(", "),
            names[0]
        ));
    }
    out
}

pub fn routes_table(routes: &[v1::Route]) -> String {
    // The https column only when some route uses it.
    let https = routes
        .iter()
        .any(|r| r.redirect_https || r.hsts_max_age_s > 0);
    let mut t = if https {
        Table::new(&["host", "prefix", "pool", "https"])
    } else {
        Table::new(&["host", "prefix", "pool"])
    };
    for r in routes {
        let host = if r.host.is_empty() { "*" } else { &r.host };
        let mut row = vec![host.into(), r.path_prefix.clone(), r.pool.clone()];
        if https {
            let mut what = Vec::new();
            if r.redirect_https {
                what.push("redirect".to_string());
            }
            if r.hsts_max_age_s > 0 {
                what.push(format!("hsts={}s", r.hsts_max_age_s));
            }
            row.push(what.join(" "));
        }
        t.row(row);
    }
    t.render()
}

/// How long ago a Unix-millisecond time was, coarsely: `3s ago`, `5m ago`.
pub fn ago(now_ms: i64, then_ms: i64) -> String {
    if then_ms <= 0 {
        return "never".into();
    }
    let secs = (now_ms.saturating_sub(then_ms) / 1_000).max(0);
    match secs {
        0..60 => format!("{secs}s ago"),
        60..3_600 => format!("{}m ago", secs / 60),
        3_600..86_400 => format!("{}h ago", secs / 3_600),
        _ => format!("{}d ago", secs / 86_400),
    }
}

/// `status`: the replica and database, every proxy and agent (with their
/// TCP listeners that are not bound and their alerts), alerts from the
/// health table, then health.
pub fn status(s: &v1::StatusReply, health: &Health, alerts: &[String], now_ms: i64) -> String {
    let mut out = fields(&[
        ("revision", s.revision.to_string()),
        ("replica", s.replica.clone()),
        (
            "database",
            if s.database_reachable {
                "reachable".into()
            } else {
                "UNREACHABLE (config writes fail; reads and watch are served from memory; health keeps flowing)".into()
            },
        ),
    ]);
    out.push('\n');
    out.push_str(&nodes_table(s, now_ms));
    let mut problems = Vec::new();
    for n in &s.nodes {
        for l in n.listeners.iter().filter(|l| !l.bound) {
            problems.push(format!(
                "{}: tcp listener {} (pool/{}) NOT BOUND: {}",
                n.node_id, l.listen, l.pool, l.error
            ));
        }
        for a in &n.alerts {
            problems.push(format!("ALERT {}: {a}", n.node_id));
        }
    }
    problems.extend(alerts.iter().map(|a| format!("ALERT {a}")));
    if !problems.is_empty() {
        out.push('\n');
        for p in problems {
            out.push_str(&p);
            out.push('\n');
        }
    }
    if !s.traffic.is_empty() {
        out.push('\n');
        out.push_str(&traffic_table(s));
    }
    out.push('\n');
    out.push_str(&health_view(health, now_ms));
    out
}

/// Each backend's traffic over the proxies' last few seconds, merged.
fn traffic_table(s: &v1::StatusReply) -> String {
    let mut t = Table::new(&[
        "pool",
        "backend",
        "proxies",
        "req/s",
        "err/s",
        "5xx/s",
        "failed tries/s",
        "p50",
        "p99",
    ]);
    let ms = |v: f64| {
        if v > 0.0 {
            format!("≤{v} ms")
        } else {
            "-".into()
        }
    };
    for m in &s.traffic {
        let failed = m.connect_failures_per_s + m.timeouts_per_s + m.resets_per_s + m.invalid_per_s;
        t.row(vec![
            m.pool.clone(),
            m.address.clone(),
            m.proxies.to_string(),
            format!("{:.1}", m.requests_per_s),
            format!("{:.2}", m.errors_per_s),
            format!("{:.2}", m.responses_per_s.get(4).copied().unwrap_or(0.0)),
            format!("{failed:.2}"),
            ms(m.p50_ms),
            ms(m.p99_ms),
        ]);
    }
    format!(
        "traffic over the proxies' last few seconds (p50/p99: time to the answer's head, to the bucket bound)\n{}",
        t.render()
    )
}

fn nodes_table(s: &v1::StatusReply, now_ms: i64) -> String {
    if s.nodes.is_empty() && !s.database_reachable {
        return "proxies and agents: unknown while the database is unreachable (their reports live there)\n".into();
    }
    if s.nodes.is_empty() {
        return "no proxies or agents have reported yet\n".into();
    }
    let mut t = Table::new(&[
        "node",
        "kind",
        "zone",
        "applied",
        "lag",
        "last seen",
        "replica",
        "detail",
    ]);
    for n in &s.nodes {
        let mut seen = ago(now_ms, n.last_seen_unix_ms);
        if n.stale {
            seen.push_str(" STALE");
        }
        t.row(vec![
            n.node_id.clone(),
            node_kind_name(n.kind).into(),
            n.zone.clone(),
            n.applied_revision.to_string(),
            s.revision.saturating_sub(n.applied_revision).to_string(),
            seen,
            n.replica.clone(),
            n.detail.clone(),
        ]);
    }
    let mut out = t.render();
    let stale: Vec<&str> = s
        .nodes
        .iter()
        .filter(|n| n.stale)
        .map(|n| n.node_id.as_str())
        .collect();
    if !stale.is_empty() {
        out.push_str(&format!(
            "STALE: {} sent no report for over {} s (nodes report every {} s): down, or cut off from the control plane\n",
            stale.join(", "),
            tandem_proto::NODE_STALE_AFTER.as_secs(),
            tandem_proto::REPORT_APPLIED_EVERY.as_secs(),
        ));
    }
    out
}

// === health ===

/// What a command could learn of backend health.
#[derive(Debug, Clone, PartialEq)]
pub enum Health {
    /// GetHealth answered: the backends to show (see [`with_unreported`]),
    /// and a note saying what is missing, if anything.
    Known {
        reply: v1::HealthReply,
        note: Option<String>,
    },
    /// GetHealth did not answer: why, as one line (`UNAVAILABLE: ...`).
    Unavailable(String),
}

impl Health {
    /// The one line printed after the data, if any.
    pub fn note(&self) -> Option<String> {
        match self {
            Self::Known { note, .. } => note.clone(),
            Self::Unavailable(why) => Some(format!("health: unavailable ({why})")),
        }
    }
}

/// The reason shown for a configured backend no agent has reported on.
pub const NOT_REPORTED: &str = "no agent has reported on it yet";

/// The note when the configuration could not be read to find those.
pub fn unreported_unknown_note(why: &str) -> String {
    format!(
        "backends no agent has reported on are not listed: cannot read the configuration ({why})"
    )
}

/// `reply`'s backends (only pool `only`'s, when given) plus every backend of
/// `pools` it does not mention, as `unknown`: such a backend takes traffic
/// though nobody has checked it, which people should see. In pool, then
/// address order.
pub fn with_unreported(
    reply: &v1::HealthReply,
    pools: &[v1::Pool],
    only: Option<&str>,
) -> v1::HealthReply {
    let wanted = |pool: &str| only.is_none_or(|only| only == pool);
    let reported: HashSet<(&str, &str)> = reply
        .backends
        .iter()
        .map(|b| (b.pool.as_str(), b.address.as_str()))
        .collect();
    let mut backends: Vec<v1::BackendHealth> = reply
        .backends
        .iter()
        .filter(|b| wanted(&b.pool))
        .cloned()
        .collect();
    for p in pools.iter().filter(|p| wanted(&p.name)) {
        for b in &p.backends {
            if !reported.contains(&(p.name.as_str(), b.address.as_str())) {
                backends.push(v1::BackendHealth {
                    pool: p.name.clone(),
                    address: b.address.clone(),
                    state: v1::HealthState::Unknown.into(),
                    since_unix_ms: 0,
                    reason: NOT_REPORTED.into(),
                    agents: Vec::new(),
                });
            }
        }
    }
    backends.sort_by(|a, b| (&a.pool, &a.address).cmp(&(&b.pool, &b.address)));
    v1::HealthReply {
        index: reply.index,
        backends,
        leader: reply.leader.clone(),
        term: reply.term,
    }
}

/// `health decided by control-1 (term 3)`.
pub fn decided_by(h: &v1::HealthReply) -> String {
    if h.leader.is_empty() {
        format!(
            "health decided by no replica right now: no raft leader is known (term {})",
            h.term
        )
    } else {
        format!("health decided by {} (term {})", h.leader, h.term)
    }
}

/// The `health` command's text, and the health part of `status`: who
/// decides, the table, then the note if any.
pub fn health_view(health: &Health, now_ms: i64) -> String {
    let mut out = match health {
        Health::Known { reply, .. } => health_reply(reply, now_ms),
        Health::Unavailable(_) => String::new(),
    };
    if let Some(note) = health.note() {
        out.push_str(&note);
        out.push('\n');
    }
    out
}

/// Who decides, then the table.
pub fn health_reply(reply: &v1::HealthReply, now_ms: i64) -> String {
    let mut out = decided_by(reply);
    out.push('\n');
    if reply.backends.is_empty() {
        out.push_str("no backends\n");
    } else {
        out.push_str(&health_table(&reply.backends, now_ms));
    }
    out
}

pub fn health_table(backends: &[v1::BackendHealth], now_ms: i64) -> String {
    let mut t = Table::new(&["pool", "backend", "state", "since", "reason", "agents"]);
    for b in backends {
        t.row(vec![
            b.pool.clone(),
            b.address.clone(),
            health_state_name(b.state).into(),
            if b.since_unix_ms > 0 {
                ago(now_ms, b.since_unix_ms)
            } else {
                String::new()
            },
            b.reason.clone(),
            agents_compact(&b.agents),
        ]);
    }
    t.render()
}

/// Each agent's view in a few characters:
/// `agent-1:down(HTTP 503) agent-2:up agent-3:pending(HTTP 200) agent-4:(silent)`.
/// `pending`: not yet `rise` successes or `fall` failures in a row;
/// `(silent)`: no report for three intervals, so it does not vote.
pub fn agents_compact(agents: &[v1::AgentView]) -> String {
    let view = |a: &v1::AgentView| {
        let id = if a.agent_id.is_empty() {
            "?"
        } else {
            &a.agent_id
        };
        let with_detail = |word: &str| {
            let detail = a
                .last_detail
                .split_whitespace()
                .collect::<Vec<_>>()
                .join(" ");
            if detail.is_empty() {
                format!("{id}:{word}")
            } else {
                format!("{id}:{word}({detail})")
            }
        };
        match (a.live, a.healthy) {
            (false, _) => format!("{id}:(silent)"),
            (true, Some(true)) => format!("{id}:up"),
            (true, Some(false)) => with_detail("down"),
            (true, None) => with_detail("pending"),
        }
    };
    agents.iter().map(view).collect::<Vec<_>>().join(" ")
}

// === cluster ===

/// `0.1s ago` below ten seconds (heartbeats come every 100 ms), then as
/// [`ago`].
fn heard_ago(ms: u64) -> String {
    if ms < 10_000 {
        format!("{:.1}s ago", ms as f64 / 1_000.0)
    } else {
        // `ago` takes two instants; 1 ms stands for "then".
        ago(ms as i64 + 1, 1)
    }
}

/// Replicas are named after their raft id, as in `status` and `health`.
pub fn replica_name(id: u64) -> String {
    format!("control-{id}")
}

/// `cluster status`: the answering replica's view, then the members.
pub fn cluster_status(c: &v1::ClusterStatus) -> String {
    let leader_known = c.leader_id != 0;
    let is_leader = c.role == "leader";
    let mut out = fields(&[
        ("replica", replica_name(c.replica_id)),
        (
            "role",
            if c.role.is_empty() {
                "unknown".into()
            } else {
                c.role.clone()
            },
        ),
        (
            "leader",
            if leader_known {
                replica_name(c.leader_id)
            } else {
                "none known (an election may be under way)".into()
            },
        ),
        ("term", c.term.to_string()),
        ("commit index", c.commit_index.to_string()),
        ("applied index", c.applied_index.to_string()),
    ]);
    if !c.apply_error.is_empty() {
        out.push_str(&format!("APPLY STOPPED:  {}\n", c.apply_error));
    }
    out.push('\n');
    if !c.members.is_empty() {
        let mut t = Table::new(&[
            "id",
            "address",
            "role",
            "reachable",
            "last heard",
            "matched",
            "lag",
            "progress",
        ]);
        for m in &c.members {
            // Only the leader tracks progress: zeros from anyone else mean
            // "not known", not "nothing matched".
            let known = m.role != "unknown" && !m.role.is_empty();
            let progress = |v: u64| if known { v.to_string() } else { String::new() };
            let answering = m.id == c.replica_id;
            t.row(vec![
                m.id.to_string(),
                m.address.clone(),
                if m.role.is_empty() {
                    "unknown".into()
                } else if m.suffrage == "learner" {
                    format!("{} (learner)", m.role)
                } else {
                    m.role.clone()
                },
                match m.reachable {
                    Some(true) => "yes".into(),
                    Some(false) => "NO".into(),
                    None => String::new(),
                },
                match (answering, m.last_heard_ms) {
                    (true, _) => "(answering)".into(),
                    (false, Some(ms)) => heard_ago(ms),
                    (false, None) if m.reachable.is_some() => "never".into(),
                    (false, None) => String::new(),
                },
                progress(m.matched_index),
                progress(m.lag),
                if known {
                    m.progress.clone()
                } else {
                    String::new()
                },
            ]);
        }
        out.push_str(&t.render());
        let unreachable: Vec<String> = c
            .members
            .iter()
            .filter(|m| m.reachable == Some(false))
            .map(|m| replica_name(m.id))
            .collect();
        // Learners do not vote: the majority is of voters.
        let voters = c.members.iter().filter(|m| m.suffrage != "learner").count();
        if !unreachable.is_empty() {
            let whose = if is_leader {
                "the leader has"
            } else {
                "this replica has"
            };
            out.push_str(&format!(
                "unreachable: {} ({whose} not heard from {} within an election timeout); the group decides while a majority ({} of {}) is reachable\n",
                unreachable.join(", "),
                if unreachable.len() == 1 { "it" } else { "them" },
                voters / 2 + 1,
                voters,
            ));
        }
    }
    let progress_unknown = c.members.is_empty()
        || c.members
            .iter()
            .any(|m| m.role == "unknown" || m.role.is_empty());
    if !is_leader && progress_unknown {
        if leader_known {
            let leader = replica_name(c.leader_id);
            let address = c
                .members
                .iter()
                .find(|m| m.id == c.leader_id && !m.address.is_empty())
                .map(|m| &m.address);
            match address {
                Some(address) => out.push_str(&format!(
                    "member progress is known by the leader ({leader}); ask it with --endpoint {address}\n"
                )),
                None => out.push_str(&format!(
                    "member progress is known by the leader ({leader}); ask it with --endpoint\n"
                )),
            }
        } else {
            out.push_str(
                "member progress is known by the leader, and none is known right now; try again shortly\n",
            );
        }
    } else if c.members.is_empty() {
        out.push_str("no members reported\n");
    }
    out
}

fn backend_count(s: &v1::Snapshot) -> usize {
    s.pools.iter().map(|p| p.backends.len()).sum()
}

/// `revision 7: 2 pools, 3 backends, 1 route`.
pub fn snapshot_summary(s: &v1::Snapshot) -> String {
    let plural = |n: usize, word: &str| {
        if n == 1 {
            format!("{n} {word}")
        } else {
            format!("{n} {word}s")
        }
    };
    format!(
        "revision {}: {}, {}, {}",
        s.revision,
        plural(s.pools.len(), "pool"),
        plural(backend_count(s), "backend"),
        plural(s.routes.len(), "route")
    )
}

pub fn snapshot(s: &v1::Snapshot) -> String {
    let mut out = snapshot_summary(s);
    out.push_str("\n\n");
    if !s.pools.is_empty() {
        out.push_str(&pools_table(&s.pools));
        out.push('\n');
    }
    if !s.routes.is_empty() {
        out.push_str(&routes_table(&s.routes));
    }
    if !s.tcp_routes.is_empty() {
        out.push('\n');
        out.push_str(&tcp_routes_table(&s.tcp_routes));
    }
    out
}

/// `watch` for people: lines for each event, remembering each backend's
/// last health state on the stream so a transition reads
/// `unknown→unhealthy`.
#[derive(Debug, Default)]
pub struct WatchText {
    /// (pool, address) to the last state seen.
    states: BTreeMap<(String, String), i32>,
}

impl WatchText {
    pub fn lines(&mut self, e: &v1::WatchEvent) -> Vec<String> {
        match &e.event {
            Some(Event::Health(h)) => self.health(h),
            Some(Event::Change(c)) => {
                self.forget(c);
                vec![watch_line(e)]
            }
            Some(Event::Snapshot(_)) | None => vec![watch_line(e)],
        }
    }

    /// A full update: `health full index=12 backends=3`, replacing every
    /// state remembered. A partial one: one line per backend,
    /// `health pool=shop backend=10.0.0.5:3000 healthy→unhealthy reason="HTTP 503 from 2/2 agents"`.
    fn health(&mut self, h: &v1::HealthUpdate) -> Vec<String> {
        if h.full {
            self.states = h
                .backends
                .iter()
                .map(|b| ((b.pool.clone(), b.address.clone()), b.state))
                .collect();
            return vec![format!(
                "health full index={} backends={}",
                h.index,
                h.backends.len()
            )];
        }
        h.backends
            .iter()
            .map(|b| {
                let key = (b.pool.clone(), b.address.clone());
                // Never seen: no agent had an opinion, which is `unknown`.
                let from = self
                    .states
                    .insert(key, b.state)
                    .unwrap_or(v1::HealthState::Unknown as i32);
                let to = health_state_name(b.state);
                let states = if from == b.state {
                    to.to_string()
                } else {
                    format!("{}→{to}", health_state_name(from))
                };
                format!(
                    "health pool={} backend={} {states} reason={:?}",
                    b.pool, b.address, b.reason
                )
            })
            .collect()
    }

    /// A backend removed and added again starts over from `unknown`.
    fn forget(&mut self, c: &v1::ConfigChange) {
        match &c.change {
            Some(Change::PoolDeleted(pool)) => self.states.retain(|(p, _), _| p != pool),
            Some(Change::BackendRemoved(b)) => {
                self.states.remove(&(b.pool.clone(), b.address.clone()));
            }
            _ => {}
        }
    }
}

/// One line per watch event, logfmt-like so it greps well:
/// `revision=8 pool_upserted pool=shop policy=ip_hash`. Health events are
/// rendered by [`WatchText`], which knows the previous states; alone, a
/// transition reads as coming from `unknown`.
pub fn watch_line(e: &v1::WatchEvent) -> String {
    let what = match &e.event {
        Some(Event::Health(_)) => return WatchText::default().lines(e).join("\n"),
        Some(Event::Snapshot(s)) => format!(
            "snapshot pools={} backends={} routes={}",
            s.pools.len(),
            backend_count(s),
            s.routes.len()
        ),
        Some(Event::Change(c)) => match &c.change {
            Some(Change::PoolUpserted(p)) => format!(
                "pool_upserted pool={} policy={} health=\"{}\"",
                p.name,
                policy_name(p.policy),
                health_summary(p.health_check.as_ref())
            ),
            Some(Change::PoolDeleted(name)) => format!("pool_deleted pool={name}"),
            Some(Change::BackendUpserted(b)) => {
                let mut s = format!("backend_upserted pool={}", b.pool);
                if let Some(b) = &b.backend {
                    s.push_str(&format!(
                        " address={} weight={} role={} state={}",
                        b.address,
                        num(b.weight),
                        role_name(b.role),
                        admin_state_name(b.admin_state)
                    ));
                }
                s
            }
            Some(Change::BackendRemoved(b)) => {
                format!("backend_removed pool={} address={}", b.pool, b.address)
            }
            Some(Change::RouteUpserted(r)) => format!(
                "route_upserted host={} prefix={} pool={}",
                route_host(&r.host),
                r.path_prefix,
                r.pool
            ),
            Some(Change::RouteDeleted(r)) => format!(
                "route_deleted host={} prefix={}",
                route_host(&r.host),
                r.path_prefix
            ),
            Some(Change::TcpRouteUpserted(r)) => {
                format!("tcp_route_upserted listen={} pool={}", r.listen, r.pool)
            }
            Some(Change::TcpRouteDeleted(listen)) => format!("tcp_route_deleted listen={listen}"),
            Some(Change::CertificateUpserted(c)) => {
                format!("certificate_upserted certificate={}", c.name)
            }
            Some(Change::CertificateDeleted(name)) => {
                format!("certificate_deleted certificate={name}")
            }
            None => "unknown_change".into(),
        },
        None => "unknown_event".into(),
    };
    format!("revision={} {what}", e.revision)
}

pub fn route_host(host: &str) -> &str {
    if host.is_empty() { "*" } else { host }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{Value, json};

    fn shop() -> v1::Pool {
        v1::Pool {
            name: "shop".into(),
            policy: v1::LbPolicy::LeastConnections.into(),
            health_check: Some(v1::HealthCheck {
                kind: Some(v1::HealthCheckKind::Http.into()),
                path: Some("/healthz".into()),
                method: Some("GET".into()),
                host: Some(String::new()),
                expected_status_min: Some(200),
                expected_status_max: Some(399),
                interval_ms: Some(1_000),
                timeout_ms: Some(500),
                rise: Some(2),
                fall: Some(3),
                port: None,
            }),
            connect_timeout_ms: Some(1_000),
            request_timeout_ms: Some(30_000),
            retry: Some(v1::RetryPolicy {
                attempts: Some(1),
                per_try_timeout_ms: Some(5_000),
                budget_percent: Some(20),
            }),
            outlier: Some(v1::OutlierDetection {
                consecutive_failures: Some(5),
                base_ejection_ms: Some(30_000),
                max_ejected_percent: Some(50),
            }),
            panic_threshold_percent: Some(50),
            tcp: None,
            max_request_body_bytes: Some(10 << 20),
            upstream_idle_timeout_ms: Some(4_000),
            tunnel_idle_timeout_ms: Some(300_000),
            backends: vec![
                v1::Backend {
                    address: "10.0.0.5:3000".into(),
                    weight: Some(2),
                    role: v1::BackendRole::Backup.into(),
                    admin_state: v1::AdminState::Enabled.into(),
                    order: None,
                },
                v1::Backend {
                    address: "10.0.0.6:3000".into(),
                    weight: Some(1),
                    role: v1::BackendRole::Primary.into(),
                    admin_state: v1::AdminState::Draining.into(),
                    order: None,
                },
            ],
            revision: 7,
            stale: None,
        }
    }

    fn parse(s: &str) -> Value {
        serde_json::from_str(s).unwrap()
    }

    fn agent(id: &str, healthy: Option<bool>, detail: &str, live: bool) -> v1::AgentView {
        v1::AgentView {
            agent_id: id.into(),
            zone: "z1".into(),
            healthy,
            last_detail: detail.into(),
            last_seen_unix_ms: 990_000,
            live,
        }
    }

    /// 10.0.0.5:3000 down for 12 s at now = 1_003_400: two agents see 503,
    /// the third has gone quiet.
    fn failing() -> v1::BackendHealth {
        v1::BackendHealth {
            pool: "shop".into(),
            address: "10.0.0.5:3000".into(),
            state: v1::HealthState::Unhealthy.into(),
            since_unix_ms: 991_400,
            reason: "HTTP 503 from 2/2 agents".into(),
            agents: vec![
                agent("agent-1", Some(false), "HTTP 503", true),
                agent("agent-2", Some(false), "HTTP 503", true),
                agent("agent-3", Some(true), "HTTP 200", false),
            ],
        }
    }

    fn health_of(pool: &str, address: &str, state: v1::HealthState) -> v1::BackendHealth {
        v1::BackendHealth {
            pool: pool.into(),
            address: address.into(),
            state: state.into(),
            since_unix_ms: 1_000_000,
            reason: String::new(),
            agents: vec![],
        }
    }

    fn health_reply_of(backends: Vec<v1::BackendHealth>) -> v1::HealthReply {
        v1::HealthReply {
            index: 42,
            backends,
            leader: "control-1".into(),
            term: 3,
        }
    }

    fn health_event(full: bool, backends: Vec<v1::BackendHealth>) -> v1::WatchEvent {
        v1::WatchEvent {
            revision: 5,
            event: Some(Event::Health(v1::HealthUpdate {
                index: 42,
                full,
                backends,
                ..Default::default()
            })),
        }
    }

    #[test]
    fn tables_align_columns_without_trailing_space() {
        let mut t = Table::new(&["name", "policy", "detail"]);
        t.row(vec!["shop".into(), "round_robin".into(), String::new()]);
        t.row(vec![
            "a-much-longer-name".into(),
            "ip_hash".into(),
            "two\nlines".into(),
        ]);
        assert_eq!(
            t.render(),
            "\
NAME                 POLICY        DETAIL
shop                 round_robin   -
a-much-longer-name   ip_hash       two lines
"
        );
    }

    #[test]
    fn tables_count_characters_not_bytes() {
        let mut t = Table::new(&["zone", "x"]);
        t.row(vec!["zürich".into(), "1".into()]);
        t.row(vec!["a".into(), "2".into()]);
        assert_eq!(t.render(), "ZONE     X\nzürich   1\na        2\n");
    }

    #[test]
    fn backends_render_as_a_table() {
        assert_eq!(
            backends_table(&shop().backends),
            "\
ADDRESS         WEIGHT   ROLE      STATE
10.0.0.5:3000   2        backup    enabled
10.0.0.6:3000   1        primary   draining
"
        );
    }

    #[test]
    fn pool_list_summarises_each_pool() {
        let out = pools_table(&[shop()]);
        let lines: Vec<&str> = out.lines().collect();
        assert_eq!(lines.len(), 2);
        assert!(lines[0].starts_with("NAME   POLICY"), "{out}");
        assert!(lines[1].contains("least_connections"), "{out}");
        assert!(lines[1].contains("1/2 enabled"), "{out}");
        assert!(
            lines[1]
                .contains("http GET /healthz (200-399) every 1s, timeout 500ms, rise 2, fall 3"),
            "{out}"
        );
        assert!(lines[1].ends_with(" 7"), "{out}");
    }

    #[test]
    fn pool_detail_shows_every_setting() {
        let out = pool_detail(&shop());
        for needle in [
            "name:                   shop\n",
            "policy:                 least_connections\n",
            "retries:                1 (per try 5s, budget 20%)\n",
            "outlier detection:      eject after 5 failures for 30s, at most 50% of backends\n",
            "panic threshold:        50%\n",
            "max request body:       10MiB\n",
            "upstream idle timeout:  4s\n",
            "tunnel idle timeout:    5m\n",
            "10.0.0.6:3000   1        primary   draining\n",
        ] {
            assert!(out.contains(needle), "{needle:?} not in\n{out}");
        }
    }

    #[test]
    fn pool_json_uses_proto_field_names_and_lowercase_enums() {
        let p = shop();
        let v = parse(&to_json(&PoolJson::from(&p)));
        assert_eq!(
            v,
            json!({
                "name": "shop",
                "policy": "least_connections",
                "health_check": {
                    "kind": "http", "path": "/healthz", "method": "GET", "host": "",
                    "expected_status_min": 200, "expected_status_max": 399,
                    "interval_ms": 1000, "timeout_ms": 500, "rise": 2, "fall": 3, "port": null
                },
                "connect_timeout_ms": 1000,
                "request_timeout_ms": 30000,
                "retry": {"attempts": 1, "per_try_timeout_ms": 5000, "budget_percent": 20},
                "outlier": {"consecutive_failures": 5, "base_ejection_ms": 30000, "max_ejected_percent": 50},
                "panic_threshold_percent": 50,
                "tcp": null,
                "max_request_body_bytes": 10485760,
                "upstream_idle_timeout_ms": 4000,
                "tunnel_idle_timeout_ms": 300000,
                "backends": [
                    {"address": "10.0.0.5:3000", "weight": 2, "role": "backup", "admin_state": "enabled", "order": null},
                    {"address": "10.0.0.6:3000", "weight": 1, "role": "primary", "admin_state": "draining", "order": null}
                ],
                "revision": 7
            })
        );
    }

    #[test]
    fn unset_fields_are_null_and_unknown_enums_are_named() {
        let p = v1::Pool {
            name: "bare".into(),
            policy: 42,
            ..Default::default()
        };
        let v = parse(&to_json(&PoolJson::from(&p)));
        assert_eq!(v["policy"], "unknown");
        assert_eq!(v["health_check"], Value::Null);
        assert_eq!(v["connect_timeout_ms"], Value::Null);
        assert_eq!(v["backends"], json!([]));
    }

    #[test]
    fn watch_events_keep_the_oneof_names() {
        let change = |c| v1::WatchEvent {
            revision: 9,
            event: Some(Event::Change(v1::ConfigChange { change: Some(c) })),
        };
        let e = change(Change::PoolDeleted("shop".into()));
        let line = to_json_line(&WatchEventJson::from(&e));
        assert!(!line.contains('\n'));
        assert_eq!(
            parse(&line),
            json!({"revision": 9, "change": {"pool_deleted": "shop"}})
        );
        assert_eq!(watch_line(&e), "revision=9 pool_deleted pool=shop");

        let e = change(Change::BackendUpserted(v1::BackendUpserted {
            pool: "shop".into(),
            backend: Some(shop().backends[1].clone()),
        }));
        assert_eq!(
            parse(&to_json_line(&WatchEventJson::from(&e))),
            json!({"revision": 9, "change": {"backend_upserted": {
                "pool": "shop",
                "backend": {"address": "10.0.0.6:3000", "weight": 1, "role": "primary", "admin_state": "draining", "order": null}
            }}})
        );
        assert_eq!(
            watch_line(&e),
            "revision=9 backend_upserted pool=shop address=10.0.0.6:3000 weight=1 role=primary state=draining"
        );

        let e = change(Change::PoolUpserted(shop()));
        let v = parse(&to_json_line(&WatchEventJson::from(&e)));
        assert_eq!(v["change"]["pool_upserted"]["policy"], "least_connections");

        let e = change(Change::RouteDeleted(v1::RouteDeleted {
            host: String::new(),
            path_prefix: "/".into(),
        }));
        assert_eq!(watch_line(&e), "revision=9 route_deleted host=* prefix=/");

        let snap = v1::WatchEvent {
            revision: 4,
            event: Some(Event::Snapshot(v1::Snapshot {
                revision: 4,
                pools: vec![shop()],
                routes: vec![],
                stale: None,
                tcp_routes: vec![],
                certificates: vec![],
            })),
        };
        let v = parse(&to_json_line(&WatchEventJson::from(&snap)));
        assert_eq!(v["revision"], 4);
        assert_eq!(v["snapshot"]["pools"][0]["name"], "shop");
        assert!(v.get("change").is_none());
        assert_eq!(
            watch_line(&snap),
            "revision=4 snapshot pools=1 backends=2 routes=0"
        );
    }

    #[test]
    fn status_shows_each_backends_traffic_merged_across_proxies() {
        let s = v1::StatusReply {
            revision: 3,
            replica: "control-1".into(),
            database_reachable: true,
            traffic: vec![v1::MergedTraffic {
                pool: "shop".into(),
                address: "10.0.0.5:3000".into(),
                proxies: 2,
                requests_per_s: 120.5,
                errors_per_s: 1.25,
                responses_per_s: vec![0.0, 119.0, 0.0, 0.25, 1.0],
                connect_failures_per_s: 0.25,
                p50_ms: 1.0,
                p99_ms: 25.0,
                ..Default::default()
            }],
            ..Default::default()
        };
        let out = status(&s, &Health::Unavailable("x".into()), &[], 0);
        assert!(
            out.contains(
                "POOL   BACKEND         PROXIES   REQ/S   ERR/S   5XX/S   FAILED TRIES/S   P50     P99\n\
                 shop   10.0.0.5:3000   2         120.5   1.25    1.00    0.25             ≤1 ms   ≤25 ms\n"
            ),
            "{out}"
        );
        let v = parse(&to_json(&StatusJson::new(
            &s,
            &Health::Unavailable("x".into()),
            &[],
        )));
        assert_eq!(v["traffic"][0]["requests_per_s"], 120.5);
        assert_eq!(v["traffic"][0]["responses_per_s"][4], 1.0);
        assert_eq!(v["traffic"][0]["p99_ms"], 25.0);
    }

    #[test]
    fn status_shows_lag_and_age() {
        let s = v1::StatusReply {
            revision: 12,
            replica: "control-1".into(),
            database_reachable: true,
            traffic: Vec::new(),
            nodes: vec![
                v1::NodeStatus {
                    node_id: "proxy-1".into(),
                    kind: v1::NodeKind::Proxy.into(),
                    applied_revision: 10,
                    zone: "a".into(),
                    last_seen_unix_ms: 1_000_000,
                    replica: "control-1".into(),
                    detail: String::new(),
                    stale: false,
                    ..Default::default()
                },
                v1::NodeStatus {
                    node_id: "agent-2".into(),
                    kind: v1::NodeKind::Agent.into(),
                    applied_revision: 12,
                    zone: "b".into(),
                    last_seen_unix_ms: 980_000,
                    replica: "control-2".into(),
                    detail: String::new(),
                    stale: true,
                    ..Default::default()
                },
            ],
            stale: None,
        };
        let health = Health::Known {
            reply: health_reply_of(vec![failing()]),
            note: None,
        };
        let out = status(&s, &health, &[], 1_003_400);
        assert_eq!(
            out,
            "\
revision:  12
replica:   control-1
database:  reachable

NODE      KIND    ZONE   APPLIED   LAG   LAST SEEN       REPLICA     DETAIL
proxy-1   proxy   a      10        2     3s ago          control-1   -
agent-2   agent   b      12        0     23s ago STALE   control-2   -
STALE: agent-2 sent no report for over 15 s (nodes report every 5 s): down, or cut off from the control plane

health decided by control-1 (term 3)
POOL   BACKEND         STATE       SINCE     REASON                     AGENTS
shop   10.0.0.5:3000   unhealthy   12s ago   HTTP 503 from 2/2 agents   agent-1:down(HTTP 503) agent-2:down(HTTP 503) agent-3:(silent)
"
        );
        let v = parse(&to_json(&StatusJson::new(&s, &health, &[])));
        assert_eq!(v["nodes"][0]["kind"], "proxy");
        assert_eq!(v["nodes"][0]["lag"], 2);
        assert_eq!(v["nodes"][0]["stale"], false);
        assert_eq!(v["nodes"][1]["stale"], true);
        assert_eq!(v["database_reachable"], true);
        assert_eq!(v["health"]["leader"], "control-1");
        assert_eq!(v["health"]["backends"][0]["state"], "unhealthy");
        assert!(v.get("health_error").is_none(), "{v}");
    }

    #[test]
    fn status_without_health_still_shows_the_rest_and_says_why() {
        let s = v1::StatusReply {
            revision: 3,
            replica: "control-2".into(),
            database_reachable: true,
            nodes: vec![],
            stale: None,
            traffic: Vec::new(),
        };
        let health = Health::Unavailable("UNIMPLEMENTED: unknown method GetHealth".into());
        assert_eq!(
            status(&s, &health, &[], 0),
            "\
revision:  3
replica:   control-2
database:  reachable

no proxies or agents have reported yet

health: unavailable (UNIMPLEMENTED: unknown method GetHealth)
"
        );
        let v = parse(&to_json(&StatusJson::new(&s, &health, &[])));
        assert_eq!(v["health"], Value::Null);
        assert_eq!(v["health_error"], "UNIMPLEMENTED: unknown method GetHealth");
        assert_eq!(v["revision"], 3);
    }

    #[test]
    fn answers_from_memory_say_so_in_one_line_and_in_json() {
        let stale = v1::StaleRead {
            replica: "control-2".into(),
            database: "127.0.0.1:5432/tandem".into(),
            cause: "connection refused".into(),
            since_unix_ms: 1_000_000,
            copied_from: String::new(),
        };
        let line = stale_warning(&stale, 7, 1_035_000);
        assert_eq!(
            line,
            "warning: control-2 answered from its copy in memory (revision 7): it cannot reach \
             its database 127.0.0.1:5432/tandem since 35s ago (connection refused); changes made \
             since may be missing"
        );
        let copied = v1::StaleRead {
            copied_from: "control-1".into(),
            ..stale.clone()
        };
        assert!(
            stale_warning(&copied, 7, 1_035_000).contains("(revision 7, copied from control-1)")
        );

        let s = v1::StatusReply {
            revision: 7,
            replica: "control-2".into(),
            database_reachable: false,
            nodes: vec![],
            stale: Some(stale.clone()),
            traffic: Vec::new(),
        };
        let health = Health::Known {
            reply: health_reply_of(vec![]),
            note: None,
        };
        let text = status(&s, &health, &[], 1_035_000);
        assert!(
            text.contains(
                "database:  UNREACHABLE (config writes fail; reads and watch are served from memory"
            ),
            "{text}"
        );
        assert!(
            text.contains("unknown while the database is unreachable"),
            "{text}"
        );
        let v = parse(&to_json(&StatusJson::new(&s, &health, &[])));
        assert_eq!(v["stale"]["database"], "127.0.0.1:5432/tandem");

        // A fresh answer has no `stale` key at all.
        let fresh = v1::Snapshot {
            revision: 7,
            ..Default::default()
        };
        let v = parse(&to_json(&SnapshotJson::from(&fresh)));
        assert!(v.get("stale").is_none(), "{v}");
        let from_memory = v1::Snapshot {
            stale: Some(stale),
            ..fresh
        };
        let v = parse(&to_json(&SnapshotJson::from(&from_memory)));
        assert_eq!(v["stale"]["replica"], "control-2");
        assert_eq!(v["stale"]["since_unix_ms"], 1_000_000);
    }

    #[test]
    fn ages() {
        assert_eq!(ago(10_000, 0), "never");
        assert_eq!(ago(10_000, 10_500), "0s ago", "clock skew");
        assert_eq!(ago(125_000, 5_000), "2m ago");
        assert_eq!(ago(7_300_000, 100_000), "2h ago");
        assert_eq!(ago(3 * 86_400_000, 1), "2d ago");
    }

    #[test]
    fn snapshot_summary_counts() {
        let s = v1::Snapshot {
            revision: 7,
            pools: vec![shop()],
            routes: vec![v1::Route {
                host: "shop.local".into(),
                path_prefix: "/".into(),
                pool: "shop".into(),
                ..Default::default()
            }],
            stale: None,
            tcp_routes: vec![v1::TcpRoute {
                listen: "0.0.0.0:5432".into(),
                pool: "shop".into(),
            }],
            certificates: vec![],
        };
        assert_eq!(
            snapshot_summary(&s),
            "revision 7: 1 pool, 2 backends, 1 route"
        );
        assert!(snapshot(&s).contains("HOST         PREFIX   POOL\nshop.local   /        shop\n"));
        assert!(snapshot(&s).contains("TCP LISTEN     POOL\n0.0.0.0:5432   shop\n"));
        let v = parse(&to_json(&SnapshotJson::from(&s)));
        assert_eq!(v["tcp_routes"][0]["listen"], "0.0.0.0:5432");
    }

    fn db(states: &[(&str, u32, v1::HealthState)]) -> (Vec<v1::Pool>, Health) {
        let pool = v1::Pool {
            name: "db".into(),
            policy: v1::LbPolicy::SingleActive.into(),
            backends: states
                .iter()
                .map(|(a, order, _)| v1::Backend {
                    address: (*a).into(),
                    order: Some(*order),
                    admin_state: v1::AdminState::Enabled.into(),
                    ..Default::default()
                })
                .collect(),
            ..Default::default()
        };
        let reply = v1::HealthReply {
            backends: states
                .iter()
                .map(|(a, _, state)| v1::BackendHealth {
                    pool: "db".into(),
                    address: (*a).into(),
                    state: (*state).into(),
                    ..Default::default()
                })
                .collect(),
            ..Default::default()
        };
        (vec![pool], Health::Known { reply, note: None })
    }

    #[test]
    fn two_members_of_a_single_active_pool_passing_their_check_raise_an_alert() {
        use v1::HealthState::{Healthy, Unhealthy};
        let (pools, health) = db(&[
            ("10.0.0.1:5432", 1, Unhealthy),
            ("10.0.0.2:5432", 2, Healthy),
        ]);
        assert!(single_active_alerts(&pools, &health).is_empty());
        let (pools, health) = db(&[("10.0.0.9:5432", 1, Healthy), ("10.0.0.2:5432", 2, Healthy)]);
        let alerts = single_active_alerts(&pools, &health);
        assert_eq!(alerts.len(), 1);
        assert!(
            alerts[0].starts_with("pool/db (single_active): 2 members pass the health check (10.0.0.9:5432, 10.0.0.2:5432); proxies send only to 10.0.0.9:5432"),
            "{}",
            alerts[0]
        );
        // Shown loudly in `status`, with the proxies' unbound listeners.
        let s = v1::StatusReply {
            revision: 3,
            replica: "control-1".into(),
            database_reachable: true,
            traffic: Vec::new(),
            nodes: vec![v1::NodeStatus {
                node_id: "proxy-1".into(),
                kind: v1::NodeKind::Proxy.into(),
                applied_revision: 3,
                listeners: vec![v1::ListenerStatus {
                    listen: "0.0.0.0:5432".into(),
                    pool: "db".into(),
                    bound: false,
                    error: "Address already in use (os error 98)".into(),
                }],
                alerts: vec!["two claim".into()],
                ..Default::default()
            }],
            stale: None,
        };
        let out = status(&s, &health, &alerts, 0);
        assert!(out.contains("proxy-1: tcp listener 0.0.0.0:5432 (pool/db) NOT BOUND: Address already in use (os error 98)\n"), "{out}");
        assert!(out.contains("ALERT proxy-1: two claim\n"), "{out}");
        assert!(
            out.contains("ALERT pool/db (single_active): 2 members"),
            "{out}"
        );
        let v = parse(&to_json(&StatusJson::new(&s, &health, &alerts)));
        assert_eq!(v["nodes"][0]["listeners"][0]["bound"], false);
        assert_eq!(v["alerts"].as_array().unwrap().len(), 1);
        // The pool's backends in declared order, with it.
        let detail = pool_detail(&pools[0]);
        assert!(
            detail.contains(
                "ADDRESS         ORDER   WEIGHT   ROLE          STATE\n10.0.0.9:5432   1"
            ),
            "{detail}"
        );
    }

    // === health ===

    #[test]
    fn agents_read_compactly() {
        assert_eq!(
            agents_compact(&[
                agent("agent-1", Some(false), "HTTP 503", true),
                agent("agent-2", Some(true), "HTTP 200", true),
                agent("agent-3", None, "connect: connection\nrefused", true),
                agent("agent-4", Some(false), "HTTP 503", false),
                agent("agent-5", Some(false), "", true),
            ]),
            "agent-1:down(HTTP 503) agent-2:up agent-3:pending(connect: connection refused) \
             agent-4:(silent) agent-5:down"
        );
        assert_eq!(agents_compact(&[]), "");
    }

    #[test]
    fn health_renders_as_a_table_under_who_decides() {
        let healthy = v1::BackendHealth {
            address: "10.0.0.6:3000".into(),
            state: v1::HealthState::Healthy.into(),
            since_unix_ms: 1_003_400 - 125_000,
            reason: "HTTP 200 from 2/2 agents".into(),
            agents: vec![
                agent("agent-1", Some(true), "HTTP 200", true),
                agent("agent-2", Some(true), "HTTP 200", true),
            ],
            ..failing()
        };
        let reply = with_unreported(&health_reply_of(vec![healthy, failing()]), &[shop()], None);
        let out = health_view(&Health::Known { reply, note: None }, 1_003_400);
        let lines: Vec<&str> = out.lines().collect();
        assert_eq!(lines[0], "health decided by control-1 (term 3)");
        assert_eq!(
            lines[1],
            "POOL   BACKEND         STATE       SINCE     REASON                     AGENTS"
        );
        assert_eq!(
            lines[2],
            "shop   10.0.0.5:3000   unhealthy   12s ago   HTTP 503 from 2/2 agents   \
             agent-1:down(HTTP 503) agent-2:down(HTTP 503) agent-3:(silent)"
        );
        assert_eq!(
            lines[3],
            "shop   10.0.0.6:3000   healthy     2m ago    HTTP 200 from 2/2 agents   \
             agent-1:up agent-2:up"
        );
        assert_eq!(lines.len(), 4, "{out}");

        let empty = health_reply_of(vec![]);
        assert_eq!(
            health_reply(&empty, 0),
            "health decided by control-1 (term 3)\nno backends\n"
        );
        let leaderless = v1::HealthReply {
            leader: String::new(),
            ..empty
        };
        assert_eq!(
            decided_by(&leaderless),
            "health decided by no replica right now: no raft leader is known (term 3)"
        );
    }

    #[test]
    fn configured_backends_nobody_reported_on_are_unknown() {
        let mut web = shop();
        web.name = "web".into();
        web.backends.truncate(1);
        let reported = health_reply_of(vec![
            health_of("web", "10.0.0.9:80", v1::HealthState::Healthy),
            failing(),
        ]);
        let all = with_unreported(&reported, &[web.clone(), shop()], None);
        let rows: Vec<(&str, &str, &str, &str)> = all
            .backends
            .iter()
            .map(|b| {
                (
                    b.pool.as_str(),
                    b.address.as_str(),
                    health_state_name(b.state),
                    b.reason.as_str(),
                )
            })
            .collect();
        assert_eq!(
            rows,
            [
                (
                    "shop",
                    "10.0.0.5:3000",
                    "unhealthy",
                    "HTTP 503 from 2/2 agents"
                ),
                ("shop", "10.0.0.6:3000", "unknown", NOT_REPORTED),
                ("web", "10.0.0.5:3000", "unknown", NOT_REPORTED),
                // Reported though not configured (any more): still shown.
                ("web", "10.0.0.9:80", "healthy", ""),
            ]
        );
        assert_eq!(
            (all.index, all.term, all.leader.as_str()),
            (42, 3, "control-1")
        );

        let only_web = with_unreported(&reported, &[web, shop()], Some("web"));
        assert!(only_web.backends.iter().all(|b| b.pool == "web"));
        assert_eq!(only_web.backends.len(), 2);

        let out = health_table(&all.backends, 1_003_400);
        let unreported = out
            .lines()
            .find(|l| l.starts_with("shop   10.0.0.6:3000"))
            .unwrap();
        assert_eq!(
            unreported,
            "shop   10.0.0.6:3000   unknown     -         no agent has reported on it yet   -"
        );
    }

    #[test]
    fn health_json_uses_proto_field_names_and_lowercase_states() {
        let mut pending = failing();
        pending.agents = vec![agent("agent-1", None, "HTTP 503", true)];
        let reply = health_reply_of(vec![pending]);
        assert_eq!(
            parse(&to_json(&HealthJson::from(&reply))),
            json!({
                "index": 42,
                "backends": [{
                    "pool": "shop",
                    "address": "10.0.0.5:3000",
                    "state": "unhealthy",
                    "since_unix_ms": 991400,
                    "reason": "HTTP 503 from 2/2 agents",
                    "agents": [{
                        "agent_id": "agent-1",
                        "zone": "z1",
                        "healthy": null,
                        "last_detail": "HTTP 503",
                        "last_seen_unix_ms": 990000,
                        "live": true
                    }]
                }],
                "leader": "control-1",
                "term": 3
            })
        );
        for (state, name) in [
            (v1::HealthState::Unspecified, "unspecified"),
            (v1::HealthState::Unknown, "unknown"),
            (v1::HealthState::Healthy, "healthy"),
            (v1::HealthState::Unhealthy, "unhealthy"),
        ] {
            assert_eq!(health_state_name(state.into()), name);
        }
        assert_eq!(health_state_name(99), "unknown");
    }

    #[test]
    fn backend_list_gains_a_health_column() {
        let p = shop();
        let health = Health::Known {
            reply: with_unreported(
                &health_reply_of(vec![failing()]),
                std::slice::from_ref(&p),
                Some("shop"),
            ),
            note: None,
        };
        assert_eq!(
            backend_list(&p, &health),
            "\
ADDRESS         WEIGHT   ROLE      STATE      HEALTH
10.0.0.5:3000   2        backup    enabled    unhealthy
10.0.0.6:3000   1        primary   draining   unknown
"
        );
        let v = parse(&to_json(&BackendsJson::new(&p, &health)));
        assert_eq!(v["pool"], "shop");
        assert_eq!(v["backends"][1]["admin_state"], "draining");
        assert_eq!(v["health"][0]["state"], "unhealthy");
        assert_eq!(v["health"][1]["state"], "unknown");

        let gone = Health::Unavailable("UNAVAILABLE: no raft".into());
        assert_eq!(
            backend_list(&p, &gone),
            "\
ADDRESS         WEIGHT   ROLE      STATE
10.0.0.5:3000   2        backup    enabled
10.0.0.6:3000   1        primary   draining
health: unavailable (UNAVAILABLE: no raft)
"
        );
        assert_eq!(
            parse(&to_json(&BackendsJson::new(&p, &gone)))["health"],
            Value::Null
        );
        let empty = v1::Pool {
            name: "bare".into(),
            ..Default::default()
        };
        assert_eq!(backend_list(&empty, &gone), "pool/bare has no backends\n");
    }

    #[test]
    fn notes_follow_the_health_table() {
        let health = Health::Known {
            reply: health_reply_of(vec![]),
            note: Some(unreported_unknown_note("UNAVAILABLE: database down")),
        };
        assert_eq!(
            health_view(&health, 0),
            "health decided by control-1 (term 3)\nno backends\n\
             backends no agent has reported on are not listed: cannot read the configuration \
             (UNAVAILABLE: database down)\n"
        );
    }

    // === watch ===

    #[test]
    fn watch_tells_each_transition_from_the_state_seen_before() {
        let mut text = WatchText::default();
        let healthy = health_of("shop", "10.0.0.5:3000", v1::HealthState::Healthy);
        let other = health_of("shop", "10.0.0.6:3000", v1::HealthState::Healthy);
        assert_eq!(
            text.lines(&health_event(true, vec![healthy, other])),
            ["health full index=42 backends=2"]
        );
        let mut down = failing();
        let mut never_seen = health_of("web", "10.0.0.7:80", v1::HealthState::Unhealthy);
        never_seen.reason = "connect: connection refused from 1/1 agent".into();
        assert_eq!(
            text.lines(&health_event(false, vec![down.clone(), never_seen])),
            [
                "health pool=shop backend=10.0.0.5:3000 healthy→unhealthy reason=\"HTTP 503 from 2/2 agents\"",
                "health pool=web backend=10.0.0.7:80 unknown→unhealthy reason=\"connect: connection refused from 1/1 agent\"",
            ]
        );
        down.state = v1::HealthState::Healthy.into();
        down.reason = "HTTP 200 from 2/2 agents".into();
        assert_eq!(
            text.lines(&health_event(false, vec![down.clone()])),
            [
                "health pool=shop backend=10.0.0.5:3000 unhealthy→healthy reason=\"HTTP 200 from 2/2 agents\""
            ]
        );
        // The same state again (new agent views): no arrow.
        assert_eq!(
            text.lines(&health_event(false, vec![down.clone()])),
            ["health pool=shop backend=10.0.0.5:3000 healthy reason=\"HTTP 200 from 2/2 agents\""]
        );

        // A full update replaces what was remembered.
        text.lines(&health_event(
            true,
            vec![health_of(
                "shop",
                "10.0.0.5:3000",
                v1::HealthState::Unhealthy,
            )],
        ));
        let line = &text.lines(&health_event(false, vec![down.clone()]))[0];
        assert!(line.contains(" unhealthy→healthy "), "{line}");
        let line = &text.lines(&health_event(false, vec![failing()]))[0];
        assert!(line.contains(" healthy→unhealthy "), "{line}");

        // A removed backend starts over from unknown.
        let removed = v1::WatchEvent {
            revision: 6,
            event: Some(Event::Change(v1::ConfigChange {
                change: Some(Change::BackendRemoved(v1::BackendRemoved {
                    pool: "shop".into(),
                    address: "10.0.0.5:3000".into(),
                })),
            })),
        };
        assert_eq!(
            text.lines(&removed),
            ["revision=6 backend_removed pool=shop address=10.0.0.5:3000"]
        );
        let line = &text.lines(&health_event(false, vec![failing()]))[0];
        assert!(line.contains(" unknown→unhealthy "), "{line}");
        // So does every backend of a deleted pool.
        let deleted = v1::WatchEvent {
            revision: 7,
            event: Some(Event::Change(v1::ConfigChange {
                change: Some(Change::PoolDeleted("shop".into())),
            })),
        };
        text.lines(&deleted);
        let line = &text.lines(&health_event(false, vec![failing()]))[0];
        assert!(line.contains(" unknown→unhealthy "), "{line}");

        // Alone, without the stream's memory, a transition is from unknown.
        assert_eq!(
            watch_line(&health_event(false, vec![failing()])),
            "health pool=shop backend=10.0.0.5:3000 unknown→unhealthy reason=\"HTTP 503 from 2/2 agents\""
        );
        // An update naming no backend prints nothing.
        assert!(text.lines(&health_event(false, vec![])).is_empty());
    }

    #[test]
    fn health_watch_events_keep_the_oneof_name_in_json() {
        let e = health_event(false, vec![failing()]);
        let line = to_json_line(&WatchEventJson::from(&e));
        assert!(!line.contains('\n'));
        let v = parse(&line);
        assert_eq!(v["revision"], 5);
        assert_eq!(v["health"]["index"], 42);
        assert_eq!(v["health"]["full"], false);
        assert_eq!(v["health"]["backends"][0]["address"], "10.0.0.5:3000");
        assert_eq!(v["health"]["backends"][0]["state"], "unhealthy");
        assert_eq!(
            v["health"]["backends"][0]["reason"],
            "HTTP 503 from 2/2 agents"
        );
        assert_eq!(v["health"]["backends"][0]["agents"][2]["live"], false);
        assert!(v.get("snapshot").is_none() && v.get("change").is_none());
        let full = parse(&to_json_line(&WatchEventJson::from(&health_event(
            true,
            vec![],
        ))));
        assert_eq!(
            full,
            json!({"revision": 5, "health": {"index": 42, "full": true, "backends": []}})
        );
    }

    // === cluster ===

    fn member(id: u64, role: &str, matched: u64, lag: u64) -> v1::ClusterMember {
        v1::ClusterMember {
            id,
            address: format!("10.0.1.{id}:7400"),
            role: role.into(),
            matched_index: matched,
            lag,
            reachable: Some(true),
            last_heard_ms: Some(if id == 1 { 0 } else { 40 + id }),
            progress: if role == "unknown" {
                String::new()
            } else {
                "replicate".into()
            },
            ..Default::default()
        }
    }

    fn cluster(
        replica: u64,
        role: &str,
        leader: u64,
        members: Vec<v1::ClusterMember>,
    ) -> v1::ClusterStatus {
        v1::ClusterStatus {
            replica_id: replica,
            role: role.into(),
            leader_id: leader,
            term: 4,
            commit_index: 120,
            applied_index: 119,
            members,
            ..Default::default()
        }
    }

    #[test]
    fn a_learner_is_marked_and_does_not_count_toward_the_majority() {
        let mut learner = member(4, "follower", 100, 20);
        learner.suffrage = "learner".into();
        learner.reachable = Some(false);
        let mut c = cluster(
            1,
            "leader",
            1,
            vec![
                member(1, "leader", 120, 0),
                member(2, "follower", 120, 0),
                member(3, "follower", 120, 0),
                learner,
            ],
        );
        c.apply_error = "cannot decode raft entry 121".into();
        let out = cluster_status(&c);
        assert!(out.contains("follower (learner)"), "{out}");
        assert!(out.contains("a majority (2 of 3) is reachable"), "{out}");
        assert!(
            out.contains("APPLY STOPPED:  cannot decode raft entry 121"),
            "{out}"
        );
        let json = parse(&to_json(&ClusterStatusJson::from(&c)));
        assert_eq!(json["members"][3]["suffrage"], "learner");
        assert_eq!(json["apply_error"], "cannot decode raft entry 121");
    }

    #[test]
    fn the_leader_shows_every_members_progress() {
        let c = cluster(
            1,
            "leader",
            1,
            vec![
                member(1, "leader", 120, 0),
                member(2, "follower", 118, 2),
                member(3, "follower", 120, 0),
            ],
        );
        assert_eq!(
            cluster_status(&c),
            "\
replica:        control-1
role:           leader
leader:         control-1
term:           4
commit index:   120
applied index:  119

ID   ADDRESS         ROLE       REACHABLE   LAST HEARD    MATCHED   LAG   PROGRESS
1    10.0.1.1:7400   leader     yes         (answering)   120       0     replicate
2    10.0.1.2:7400   follower   yes         0.0s ago      118       2     replicate
3    10.0.1.3:7400   follower   yes         0.0s ago      120       0     replicate
"
        );
        assert_eq!(
            parse(&to_json(&ClusterStatusJson::from(&c))),
            json!({
                "replica_id": 1, "role": "leader", "leader_id": 1, "term": 4,
                "commit_index": 120, "applied_index": 119,
                "members": [
                    {"id": 1, "address": "10.0.1.1:7400", "role": "leader", "matched_index": 120, "lag": 0,
                     "reachable": true, "last_heard_ms": 0, "progress": "replicate"},
                    {"id": 2, "address": "10.0.1.2:7400", "role": "follower", "matched_index": 118, "lag": 2,
                     "reachable": true, "last_heard_ms": 42, "progress": "replicate"},
                    {"id": 3, "address": "10.0.1.3:7400", "role": "follower", "matched_index": 120, "lag": 0,
                     "reachable": true, "last_heard_ms": 43, "progress": "replicate"}
                ]
            })
        );
    }

    #[test]
    fn a_member_the_leader_has_not_heard_from_is_marked_unreachable() {
        let mut dead = member(2, "follower", 118, 2);
        dead.reachable = Some(false);
        dead.last_heard_ms = Some(14_200);
        dead.progress = "probe".into();
        let mut never = member(3, "follower", 0, 120);
        never.reachable = Some(false);
        never.last_heard_ms = None;
        never.progress = "probe".into();
        let c = cluster(
            1,
            "leader",
            1,
            vec![member(1, "leader", 120, 0), dead, never],
        );
        let out = cluster_status(&c);
        assert!(
            out.ends_with(
                "\
ID   ADDRESS         ROLE       REACHABLE   LAST HEARD    MATCHED   LAG   PROGRESS
1    10.0.1.1:7400   leader     yes         (answering)   120       0     replicate
2    10.0.1.2:7400   follower   NO          14s ago       118       2     probe
3    10.0.1.3:7400   follower   NO          never         0         120   probe
unreachable: control-2, control-3 (the leader has not heard from them within an election timeout); the group decides while a majority (2 of 3) is reachable
"
            ),
            "{out}"
        );
        let v = parse(&to_json(&ClusterStatusJson::from(&c)));
        assert_eq!(v["members"][1]["reachable"], false);
        assert_eq!(v["members"][1]["last_heard_ms"], 14_200);
        assert_eq!(v["members"][2]["last_heard_ms"], serde_json::Value::Null);
        assert_eq!(heard_ago(3_450), "3.5s ago");
        assert_eq!(heard_ago(125_000), "2m ago");
    }

    #[test]
    fn a_follower_points_at_the_leader_for_member_progress() {
        let c = cluster(
            2,
            "follower",
            1,
            vec![member(1, "unknown", 0, 0), member(2, "unknown", 0, 0)],
        );
        let out = cluster_status(&c);
        assert!(
            out.contains(
                "\
ID   ADDRESS         ROLE      REACHABLE   LAST HEARD    MATCHED   LAG   PROGRESS
1    10.0.1.1:7400   unknown   yes         0.0s ago      -         -     -
2    10.0.1.2:7400   unknown   yes         (answering)   -         -     -
member progress is known by the leader (control-1); ask it with --endpoint 10.0.1.1:7400
"
            ),
            "{out}"
        );
        assert!(
            out.starts_with(
                "replica:        control-2\nrole:           follower\nleader:         control-1\n"
            ),
            "{out}"
        );

        let out = cluster_status(&cluster(2, "follower", 1, vec![]));
        assert!(
            out.ends_with(
                "\n\nmember progress is known by the leader (control-1); ask it with --endpoint\n"
            ),
            "{out}"
        );
        let out = cluster_status(&cluster(2, "candidate", 0, vec![]));
        assert!(
            out.contains("leader:         none known (an election may be under way)\n"),
            "{out}"
        );
        assert!(
            out.ends_with("member progress is known by the leader, and none is known right now; try again shortly\n"),
            "{out}"
        );
        // A group of one whose leader lists no members.
        let out = cluster_status(&cluster(1, "leader", 1, vec![]));
        assert!(
            out.ends_with("applied index:  119\n\nno members reported\n"),
            "{out}"
        );
        assert_eq!(
            parse(&to_json(&ClusterStatusJson::from(&cluster(
                1,
                "leader",
                1,
                vec![]
            ))))["members"],
            json!([])
        );
    }
}
