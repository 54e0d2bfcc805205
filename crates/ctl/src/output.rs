//! Rendering replies for people (aligned tables, one-line summaries) and for
//! scripts (JSON).
//!
//! The JSON shape is a contract: objects carry the field names of the
//! `tandem.v1` messages, enums are lowercase strings (`round_robin`,
//! `backup`, `draining`), unset optional fields are `null`. Watch events and
//! config changes keep the proto's oneof names as keys (`{"revision": 7,
//! "change": {"pool_deleted": "shop"}}`). Everything here is pure: replies in,
//! text out.

use serde::Serialize;
use tandem_proto::v1;
use tandem_proto::v1::config_change::Change;
use tandem_proto::v1::watch_event::Event;

use crate::duration::Millis;

// === enum names ===

pub fn policy_name(v: i32) -> &'static str {
    match v1::LbPolicy::try_from(v) {
        Ok(v1::LbPolicy::Unspecified) => "unspecified",
        Ok(v1::LbPolicy::RoundRobin) => "round_robin",
        Ok(v1::LbPolicy::LeastConnections) => "least_connections",
        Ok(v1::LbPolicy::IpHash) => "ip_hash",
        Ok(v1::LbPolicy::RandomTwoChoices) => "random_two_choices",
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
    pub backends: Vec<BackendJson<'a>>,
    pub revision: u64,
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
}

#[derive(Debug, Serialize)]
pub struct RouteJson<'a> {
    pub host: &'a str,
    pub path_prefix: &'a str,
    pub pool: &'a str,
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
            backends: p.backends.iter().map(BackendJson::from).collect(),
            revision: p.revision,
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
        }
    }
}

impl<'a> From<&'a v1::Route> for RouteJson<'a> {
    fn from(r: &'a v1::Route) -> Self {
        Self {
            host: &r.host,
            path_prefix: &r.path_prefix,
            pool: &r.pool,
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
}

#[derive(Debug, Serialize)]
pub struct BackendReplyJson<'a> {
    pub backend: Option<BackendJson<'a>>,
    pub revision: u64,
}

/// `backend list`: a pool's backends (the pool's own revision).
#[derive(Debug, Serialize)]
pub struct BackendsJson<'a> {
    pub pool: &'a str,
    pub backends: Vec<BackendJson<'a>>,
    pub revision: u64,
}

#[derive(Debug, Serialize)]
pub struct RouteReplyJson<'a> {
    pub route: Option<RouteJson<'a>>,
    pub revision: u64,
}

#[derive(Debug, Serialize)]
pub struct RoutesJson<'a> {
    pub routes: Vec<RouteJson<'a>>,
    pub revision: u64,
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
}

impl<'a> From<&'a v1::Snapshot> for SnapshotJson<'a> {
    fn from(s: &'a v1::Snapshot) -> Self {
        Self {
            revision: s.revision,
            pools: s.pools.iter().map(PoolJson::from).collect(),
            routes: s.routes.iter().map(RouteJson::from).collect(),
        }
    }
}

#[derive(Debug, Serialize)]
pub struct StatusJson<'a> {
    pub revision: u64,
    pub replica: &'a str,
    pub database_reachable: bool,
    pub nodes: Vec<NodeJson<'a>>,
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
}

impl<'a> From<&'a v1::StatusReply> for StatusJson<'a> {
    fn from(s: &'a v1::StatusReply) -> Self {
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
                })
                .collect(),
        }
    }
}

/// A `WatchEvent`: `{"revision": N, "snapshot": {...}}` or
/// `{"revision": N, "change": {"<kind>": ...}}`.
#[derive(Debug, Serialize)]
pub struct WatchEventJson<'a> {
    pub revision: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub snapshot: Option<SnapshotJson<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub change: Option<ChangeJson<'a>>,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ChangeJson<'a> {
    PoolUpserted(PoolJson<'a>),
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
    /// A change this tandemctl does not know (a newer control plane).
    Unknown {},
}

impl<'a> From<&'a v1::ConfigChange> for ChangeJson<'a> {
    fn from(c: &'a v1::ConfigChange) -> Self {
        match &c.change {
            Some(Change::PoolUpserted(p)) => Self::PoolUpserted(p.into()),
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
            None => Self::Unknown {},
        }
    }
}

impl<'a> From<&'a v1::WatchEvent> for WatchEventJson<'a> {
    fn from(e: &'a v1::WatchEvent) -> Self {
        let (snapshot, change) = match &e.event {
            Some(Event::Snapshot(s)) => (Some(s.into()), None),
            Some(Event::Change(c)) => (None, Some(c.into())),
            Some(Event::Health(_)) | None => (None, None),
        };
        Self {
            revision: e.revision,
            snapshot,
            change,
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
    let mut s = if kind == "tcp" {
        "tcp connect".to_string()
    } else {
        let method = h.method.as_deref().unwrap_or("GET");
        let path = h.path.as_deref().unwrap_or("/");
        let mut s = format!("{kind} {method} {path}");
        if let Some(host) = h.host.as_deref().filter(|h| !h.is_empty()) {
            s.push_str(&format!(" Host {host}"));
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
    let mut t = Table::new(&["address", "weight", "role", "state"]);
    for b in backends {
        t.row(vec![
            b.address.clone(),
            num(b.weight),
            role_name(b.role).into(),
            admin_state_name(b.admin_state).into(),
        ]);
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
    ]);
    out.push('\n');
    if p.backends.is_empty() {
        out.push_str("no backends\n");
    } else {
        out.push_str(&backends_table(&p.backends));
    }
    out
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

pub fn routes_table(routes: &[v1::Route]) -> String {
    let mut t = Table::new(&["host", "prefix", "pool"]);
    for r in routes {
        let host = if r.host.is_empty() { "*" } else { &r.host };
        t.row(vec![host.into(), r.path_prefix.clone(), r.pool.clone()]);
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

pub fn status(s: &v1::StatusReply, now_ms: i64) -> String {
    let mut out = fields(&[
        ("revision", s.revision.to_string()),
        ("replica", s.replica.clone()),
        (
            "database",
            if s.database_reachable {
                "reachable".into()
            } else {
                "UNREACHABLE (config writes fail; health keeps flowing)".into()
            },
        ),
    ]);
    out.push('\n');
    if s.nodes.is_empty() {
        out.push_str("no proxies or agents have reported yet\n");
        return out;
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
        t.row(vec![
            n.node_id.clone(),
            node_kind_name(n.kind).into(),
            n.zone.clone(),
            n.applied_revision.to_string(),
            s.revision.saturating_sub(n.applied_revision).to_string(),
            ago(now_ms, n.last_seen_unix_ms),
            n.replica.clone(),
            n.detail.clone(),
        ]);
    }
    out.push_str(&t.render());
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
    out
}

/// One line per watch event, logfmt-like so it greps well:
/// `revision=8 pool_upserted pool=shop policy=ip_hash`.
pub fn watch_line(e: &v1::WatchEvent) -> String {
    let what = match &e.event {
        Some(Event::Health(h)) => format!("health index={} backends={}", h.index, h.backends.len()),
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
            backends: vec![
                v1::Backend {
                    address: "10.0.0.5:3000".into(),
                    weight: Some(2),
                    role: v1::BackendRole::Backup.into(),
                    admin_state: v1::AdminState::Enabled.into(),
                },
                v1::Backend {
                    address: "10.0.0.6:3000".into(),
                    weight: Some(1),
                    role: v1::BackendRole::Primary.into(),
                    admin_state: v1::AdminState::Draining.into(),
                },
            ],
            revision: 7,
        }
    }

    fn parse(s: &str) -> Value {
        serde_json::from_str(s).unwrap()
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
            "name:               shop\n",
            "policy:             least_connections\n",
            "retries:            1 (per try 5s, budget 20%)\n",
            "outlier detection:  eject after 5 failures for 30s, at most 50% of backends\n",
            "panic threshold:    50%\n",
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
                    "interval_ms": 1000, "timeout_ms": 500, "rise": 2, "fall": 3
                },
                "connect_timeout_ms": 1000,
                "request_timeout_ms": 30000,
                "retry": {"attempts": 1, "per_try_timeout_ms": 5000, "budget_percent": 20},
                "outlier": {"consecutive_failures": 5, "base_ejection_ms": 30000, "max_ejected_percent": 50},
                "panic_threshold_percent": 50,
                "backends": [
                    {"address": "10.0.0.5:3000", "weight": 2, "role": "backup", "admin_state": "enabled"},
                    {"address": "10.0.0.6:3000", "weight": 1, "role": "primary", "admin_state": "draining"}
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
                "backend": {"address": "10.0.0.6:3000", "weight": 1, "role": "primary", "admin_state": "draining"}
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
    fn status_shows_lag_and_age() {
        let s = v1::StatusReply {
            revision: 12,
            replica: "control-1".into(),
            database_reachable: true,
            nodes: vec![v1::NodeStatus {
                node_id: "proxy-1".into(),
                kind: v1::NodeKind::Proxy.into(),
                applied_revision: 10,
                zone: "a".into(),
                last_seen_unix_ms: 1_000_000,
                replica: "control-1".into(),
                detail: String::new(),
            }],
        };
        let out = status(&s, 1_003_400);
        assert_eq!(
            out,
            "\
revision:  12
replica:   control-1
database:  reachable

NODE      KIND    ZONE   APPLIED   LAG   LAST SEEN   REPLICA     DETAIL
proxy-1   proxy   a      10        2     3s ago      control-1   -
"
        );
        let v = parse(&to_json(&StatusJson::from(&s)));
        assert_eq!(v["nodes"][0]["kind"], "proxy");
        assert_eq!(v["nodes"][0]["lag"], 2);
        assert_eq!(v["database_reachable"], true);
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
            }],
        };
        assert_eq!(
            snapshot_summary(&s),
            "revision 7: 1 pool, 2 backends, 1 route"
        );
        assert!(snapshot(&s).contains("HOST         PREFIX   POOL\nshop.local   /        shop\n"));
    }
}
