//! The JSON mirror types: each reply as `-o json` prints it, with the
//! `tandem.v1` field names, enums as lowercase strings and unset optional
//! fields as `null`.

use serde::Serialize;
use tandem_proto::v1;
use tandem_proto::v1::config_change::Change;
use tandem_proto::v1::watch_event::Event;

use super::health::Health;
use super::names::{
    admin_state_name, health_kind_name, health_state_name, node_kind_name, on_unhealthy_name,
    policy_name, role_name,
};

/// Pretty JSON for one object (what `-o json` prints for a command).
pub fn to_json<T: Serialize>(value: &T) -> String {
    serde_json::to_string_pretty(value).expect("views hold only strings, numbers and lists")
}

/// Compact JSON on one line (what `watch -o json` prints per event).
pub fn to_json_line<T: Serialize>(value: &T) -> String {
    serde_json::to_string(value).expect("views hold only strings, numbers and lists")
}

/// TLS to a pool's backends (absent: plain HTTP).
#[derive(Debug, Serialize)]
pub struct BackendTlsJson<'a> {
    /// "pool bundle" or "mozilla roots"; "none" when insecure.
    pub verify_against: &'static str,
    /// Certificates in the pool's CA bundle.
    pub ca_certificates: usize,
    /// Empty: each backend's host.
    pub sni: &'a str,
    pub insecure: bool,
}

impl<'a> BackendTlsJson<'a> {
    pub(super) fn from(t: &'a v1::BackendTls) -> Option<Self> {
        if t.enabled != Some(true) {
            return None;
        }
        let ca = t.ca_pem.as_deref().unwrap_or("");
        let insecure = t.insecure.unwrap_or(false);
        Some(Self {
            verify_against: if insecure {
                "none"
            } else if ca.is_empty() {
                "mozilla roots"
            } else {
                "pool bundle"
            },
            ca_certificates: ca.matches("-----BEGIN CERTIFICATE-----").count(),
            sni: t.sni.as_deref().unwrap_or(""),
            insecure,
        })
    }
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
    #[serde(skip_serializing_if = "Option::is_none")]
    pub backend_tls: Option<BackendTlsJson<'a>>,
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
            backend_tls: p.backend_tls.as_ref().and_then(BackendTlsJson::from),
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

/// `backend drain|disable|enable` committed as a runtime override (the
/// control database was down).
#[derive(Debug, Serialize)]
pub struct OverrideReplyJson<'a> {
    pub pool: &'a str,
    pub address: &'a str,
    pub admin_state: &'a str,
    /// Always true: tells this answer from a declared change's.
    pub runtime_override: bool,
    /// The raft index it was committed at (0: not told, an older replica).
    pub raft_index: u64,
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
    /// Who made the change (`alice (access-file token)`); absent when not
    /// recorded.
    #[serde(skip_serializing_if = "str::is_empty")]
    pub actor: &'a str,
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
            actor: &e.actor,
        }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::{Value, json};

    use super::*;
    use crate::output::testdata::*;
    use crate::output::watch::watch_line;

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
            ..Default::default()
        };
        let e = change(Change::PoolDeleted("shop".into()));
        let line = to_json_line(&WatchEventJson::from(&e));
        assert!(!line.contains('\n'));
        assert_eq!(
            parse(&line),
            json!({"revision": 9, "change": {"pool_deleted": "shop"}})
        );
        assert_eq!(watch_line(&e), "revision=9 pool_deleted pool=shop");
        let by = v1::WatchEvent {
            actor: "alice (access-file token)".into(),
            ..e.clone()
        };
        assert_eq!(
            parse(&to_json_line(&WatchEventJson::from(&by))),
            json!({"revision": 9, "change": {"pool_deleted": "shop"}, "actor": "alice (access-file token)"})
        );
        assert_eq!(
            watch_line(&by),
            "revision=9 pool_deleted pool=shop actor=\"alice (access-file token)\""
        );

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
                ..Default::default()
            })),
            ..Default::default()
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
}
