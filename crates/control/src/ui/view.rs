//! The status page's view model: plain data built from what the replica
//! holds in memory (its copy of the configuration, the committed health
//! table, raft's status) and the nodes' reports, by pure functions that
//! take the time as an argument. Rendering (`html`) reads only this.
//!
//! Values that come from configuration or agents (pool names, addresses,
//! reasons, agent names) are kept as they were given: escaping is the
//! renderer's job, in one place.

use std::collections::BTreeMap;

use tandem_core::health::{AgentView, BackendHealth, BackendKey, HealthState, Transition};
use tandem_core::lb::{self, Endpoint, Tier};
use tandem_core::{
    AdminState, BackendRole, ConfigChange, HealthCheckKind, HealthCheckSpec, LbPolicy, OnUnhealthy,
    Pool, PoolConfig, Snapshot,
};
use tandem_proto::v1;

use crate::consensus::{AgentViews, Contact, RaftStatus};
use crate::hub::Source;

// === the whole page ===

/// Everything the overview shows, at `platform.now_ms`.
#[derive(Debug, Clone, PartialEq)]
pub struct Overview {
    pub platform: Platform,
    pub pools: Vec<PoolView>,
    /// Where the agents' opinions shown beside each backend come from.
    pub agents_from: ViewsFrom,
    pub nodes: Nodes,
}

// === the platform ===

#[derive(Debug, Clone, PartialEq)]
pub struct Platform {
    /// The replica that answers (this one).
    pub replica: String,
    pub now_ms: u64,
    /// The configuration revision of this replica's copy.
    pub revision: u64,
    pub copy: CopyFrom,
    pub database: DatabaseView,
    pub raft: RaftView,
}

/// Where this replica's copy of the configuration came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CopyFrom {
    /// Nothing yet: it has reached neither its database nor another replica.
    Nothing,
    Database,
    /// Another replica (named), while its own database is out of reach.
    Peer(String),
}

impl From<&Source> for CopyFrom {
    fn from(s: &Source) -> Self {
        match s {
            Source::None => CopyFrom::Nothing,
            Source::Database => CopyFrom::Database,
            Source::Peer(name) => CopyFrom::Peer(name.clone()),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DatabaseView {
    /// `host:port/name`, never credentials.
    pub name: String,
    pub up: bool,
    /// When it last went up or down, milliseconds since the Unix epoch.
    pub since_ms: u64,
    /// Why it is down (empty when up).
    pub cause: String,
    /// Whether this replica has reached it since it started.
    pub ever_up: bool,
}

impl DatabaseView {
    pub fn from_state(name: &str, s: &crate::database::State) -> DatabaseView {
        DatabaseView {
            name: name.to_string(),
            up: s.up,
            since_ms: s.since_unix_ms.max(0) as u64,
            cause: s.cause.clone(),
            ever_up: s.ever_up,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RaftView {
    /// This replica's raft id and role.
    pub me: u64,
    pub role: String,
    /// 0: none known.
    pub leader: u64,
    pub term: u64,
    pub commit: u64,
    pub applied: u64,
    pub members: Vec<MemberView>,
    /// Whose knowledge the members' progress and reachability are.
    pub seen_by: SeenBy,
}

/// Member progress is the leader's knowledge; a follower knows only of
/// itself and the leader (as `GetClusterStatus` answers).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SeenBy {
    /// This replica leads: its own view.
    ThisLeader,
    /// The leader's answer, relayed (named).
    Leader(String),
    /// This follower's own, partial view: the leader did not answer.
    ThisFollower,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemberView {
    pub id: u64,
    /// Its gRPC address.
    pub address: String,
    /// "leader", "follower", or "unknown".
    pub role: String,
    /// Entries behind the leader's log (leader's view).
    pub lag: Option<u64>,
    /// Heard from within an election timeout; `None`: not known here.
    pub reachable: Option<bool>,
    /// Milliseconds since it was last heard from; `None`: never, or not known.
    pub last_heard_ms: Option<u64>,
    /// Raft's replication state for it: replicate, probe or snapshot.
    pub progress: String,
    pub is_self: bool,
}

/// The raft group as this replica sees it: the same rules as
/// `GetClusterStatus` (a follower speaks only of itself and the leader).
pub fn raft_local(
    s: &RaftStatus,
    members: &BTreeMap<u64, String>,
    contact: impl Fn(u64) -> Contact,
) -> RaftView {
    let views = members
        .iter()
        .map(|(&id, address)| {
            let progress = s.progress.get(&id);
            let known = s.is_leader() || id == s.id || (id == s.leader && s.leader != 0);
            let contact = known.then(|| contact(id));
            MemberView {
                id,
                address: address.clone(),
                role: if id == s.leader {
                    "leader".into()
                } else if s.is_leader() {
                    "follower".into()
                } else if id == s.id {
                    s.role.to_string()
                } else {
                    "unknown".into()
                },
                lag: progress.map(|p| s.last_index.saturating_sub(p.matched)),
                reachable: contact.map(|c| c.reachable),
                last_heard_ms: contact
                    .and_then(|c| c.last_heard)
                    .map(|d| d.as_millis() as u64),
                progress: progress.map(|p| p.state.to_string()).unwrap_or_default(),
                is_self: id == s.id,
            }
        })
        .collect();
    RaftView {
        me: s.id,
        role: s.role.to_string(),
        leader: s.leader,
        term: s.term,
        commit: s.commit,
        applied: s.applied,
        members: views,
        seen_by: if s.is_leader() {
            SeenBy::ThisLeader
        } else {
            SeenBy::ThisFollower
        },
    }
}

/// A follower's view with the members as the leader's `GetClusterStatus`
/// answer gives them (this replica's own role, term and indexes stay its
/// own).
pub fn raft_from_leader(s: &RaftStatus, leader: &v1::ClusterStatus) -> RaftView {
    RaftView {
        me: s.id,
        role: s.role.to_string(),
        leader: s.leader,
        term: s.term,
        commit: s.commit,
        applied: s.applied,
        members: leader
            .members
            .iter()
            .map(|m| MemberView {
                id: m.id,
                address: m.address.clone(),
                role: m.role.clone(),
                lag: (!m.progress.is_empty()).then_some(m.lag),
                reachable: m.reachable,
                last_heard_ms: m.last_heard_ms,
                progress: m.progress.clone(),
                is_self: m.id == s.id,
            })
            .collect(),
        seen_by: SeenBy::Leader(format!("control-{}", leader.replica_id)),
    }
}

// === pools ===

#[derive(Debug, Clone, PartialEq)]
pub struct PoolView {
    pub name: String,
    pub policy: &'static str,
    /// How agents probe it, in a line: `HTTP GET /healthz · every 1s …`.
    pub health_check: String,
    pub panic_threshold_percent: u32,
    /// The routes that send traffic to it, of every kind.
    pub routes: Vec<RouteRef>,
    /// Its settings for TCP routes, in a line (`idle 30m, no connection
    /// limit, unhealthy: keep (policy)`), when a TCP route reaches it or
    /// they are not the defaults; `None` otherwise (HTTP ignores them).
    pub tcp: Option<String>,
    pub backends: Vec<BackendView>,
    /// Which of its backends take new requests now, by the committed health
    /// and the declared state (proxies may also eject one locally). For a
    /// `single_active` pool, the tier its one active member is taken from.
    pub tier: Option<Tier>,
    /// A `single_active` pool's members whose health check passes (and
    /// that are not disabled), by declared order: more than one is a split
    /// brain (two database primaries). Empty for other policies.
    pub claimants: Vec<String>,
    /// The revision at which it or one of its backends last changed.
    pub revision: u64,
}

impl PoolView {
    pub fn single_active(&self) -> bool {
        self.policy == LbPolicy::SingleActive.as_str()
    }
}

/// A route that reaches a pool; the renderer shows each kind in its own
/// words.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RouteRef {
    /// An HTTP route: requests for `host` whose path starts with `path_prefix`.
    Http { host: String, path_prefix: String },
    /// A TCP (layer 4) route: connections to `listen` on every proxy.
    Tcp { listen: String },
}

#[derive(Debug, Clone, PartialEq)]
pub struct BackendView {
    pub pool: String,
    pub address: String,
    pub weight: u32,
    pub role: BackendRole,
    pub admin: AdminState,
    /// Its place in the pool's declared order, lowest first (what a
    /// `single_active` pool goes by).
    pub order: u32,
    /// The committed health (`Unknown` until agents have decided).
    pub health: HealthState,
    /// When it entered that state; `None`: never decided.
    pub since_ms: Option<u64>,
    /// Why, as the decider said it: "connect: connection refused from 2/2 agents".
    pub reason: String,
    /// Each agent's opinion (see [`Overview::agents_from`]).
    pub agents: Vec<AgentLine>,
    /// Whether new requests go to it now (see [`PoolView::tier`]).
    pub in_rotation: bool,
    /// What proxies report of it: their local ejections and the traffic
    /// they send it (requests/s, errors, p99). `None` until proxies report
    /// traffic figures to the control plane (issue 22); never made up.
    pub proxies: Option<Vec<ProxyTraffic>>,
}

/// One proxy's figures for one backend (reported by proxies; see
/// [`BackendView::proxies`]).
#[derive(Debug, Clone, PartialEq)]
pub struct ProxyTraffic {
    pub proxy: String,
    pub requests_per_s: f64,
    pub errors_per_s: f64,
    /// `None` without answers in the window.
    pub p99_ms: Option<f64>,
    /// Ejected by this proxy's outlier detection until then (Unix ms).
    pub ejected_until_ms: Option<u64>,
}

/// One agent's opinion of one backend.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AgentLine {
    pub agent: String,
    pub zone: String,
    /// `None` until it has seen `rise` successes or `fall` failures.
    pub verdict: Option<bool>,
    /// What it last saw: "HTTP 200", "connect: connection refused".
    pub detail: String,
    pub last_seen_ms: u64,
    /// Whether it still votes (reported within three intervals).
    pub live: bool,
}

impl From<&AgentView> for AgentLine {
    fn from(v: &AgentView) -> Self {
        AgentLine {
            agent: v.agent.clone(),
            zone: v.zone.clone(),
            verdict: v.verdict,
            detail: v.last_detail.clone(),
            last_seen_ms: v.last_seen_ms,
            live: v.live,
        }
    }
}

/// Where the agents' opinions come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ViewsFrom {
    /// This replica is the deciding leader: each agent's latest report.
    Live { at_ms: u64 },
    /// The replicated table: each agent's view when the backend's current
    /// state was decided. The latest reports are held by the leader.
    Decisions { leader: Option<String> },
}

/// The pools of `config` with the committed `health`, and the agents'
/// latest views when this replica decides (`live`).
pub fn pools(
    config: &Snapshot,
    health: &BTreeMap<BackendKey, BackendHealth>,
    live: Option<&AgentViews>,
) -> Vec<PoolView> {
    config
        .pools
        .values()
        .map(|pool| pool_view(config, pool, health, live))
        .collect()
}

fn pool_view(
    config: &Snapshot,
    pool: &Pool,
    health: &BTreeMap<BackendKey, BackendHealth>,
    live: Option<&AgentViews>,
) -> PoolView {
    let name = &pool.config.name;
    let mut backends: Vec<BackendView> = pool
        .backends
        .iter()
        .map(|b| {
            let key = BackendKey {
                pool: name.clone(),
                address: b.address.clone(),
            };
            let committed = health.get(&key);
            let agents = match live.and_then(|l| l.backends.get(&key)) {
                Some(views) => views.iter().map(AgentLine::from).collect(),
                None => committed
                    .map(|h| h.views.iter().map(AgentLine::from).collect())
                    .unwrap_or_default(),
            };
            BackendView {
                pool: name.to_string(),
                address: b.address.to_string(),
                weight: b.weight.get(),
                role: b.role,
                admin: b.admin_state,
                order: b.order,
                health: committed.map(|h| h.state).unwrap_or_default(),
                since_ms: committed.map(|h| h.since_ms),
                reason: committed.map(|h| h.reason.clone()).unwrap_or_default(),
                agents,
                in_rotation: false,
                proxies: None,
            }
        })
        .collect();
    let (tier, claimants) = if pool.config.policy == LbPolicy::SingleActive {
        // One member takes every connection: the one every proxy with this
        // health view picks.
        let active = lb::single_active(&backends, &[]);
        for (i, b) in backends.iter_mut().enumerate() {
            b.in_rotation = active.is_some_and(|p| p.index == i);
        }
        let mut claiming: Vec<&BackendView> = backends
            .iter()
            .filter(|b| b.admin != AdminState::Disabled && b.passes_check())
            .collect();
        claiming.sort_by(|a, b| (a.order, &a.address).cmp(&(b.order, &b.address)));
        let claimants = claiming.iter().map(|b| b.address.clone()).collect();
        (active.map(|p| p.tier), claimants)
    } else {
        let tier = lb::select_tier(&backends, pool.config.panic_threshold_percent);
        for b in &mut backends {
            b.in_rotation = tier.is_some_and(|t| t.admits(&*b));
        }
        (tier, Vec::new())
    };
    let http = config
        .routes
        .iter()
        .filter(|r| &r.pool == name)
        .map(|r| RouteRef::Http {
            host: r.host.to_string(),
            path_prefix: r.path_prefix.as_str().to_string(),
        });
    let tcp = config
        .tcp_routes
        .iter()
        .filter(|r| &r.pool == name)
        .map(|r| RouteRef::Tcp {
            listen: r.listen.to_string(),
        });
    let routes: Vec<RouteRef> = http.chain(tcp).collect();
    let behind_tcp = routes.iter().any(|r| matches!(r, RouteRef::Tcp { .. }));
    PoolView {
        name: name.to_string(),
        policy: pool.config.policy.as_str(),
        health_check: health_check_line(&pool.config.health_check),
        panic_threshold_percent: pool.config.panic_threshold_percent,
        routes,
        tcp: (behind_tcp || pool.config.tcp != Default::default())
            .then(|| tcp_settings_line(&pool.config)),
        backends,
        tier,
        claimants,
        revision: pool.revision.0,
    }
}

/// The balancer's rules, applied to the committed health: what proxies do
/// with no local ejection in effect.
impl Endpoint for BackendView {
    fn weight(&self) -> u32 {
        self.weight
    }
    fn role(&self) -> BackendRole {
        self.role
    }
    fn admin_state(&self) -> AdminState {
        self.admin
    }
    fn healthy(&self) -> bool {
        self.health.is_usable()
    }
    fn in_flight(&self) -> u64 {
        0
    }
    fn key(&self) -> &str {
        &self.address
    }
    /// Known to pass: `single_active` never sends to an unknown member.
    fn passes_check(&self) -> bool {
        self.health == HealthState::Healthy
    }
    fn order(&self) -> u32 {
        self.order
    }
}

/// `HTTP GET /healthz (200-399) · every 1s, timeout 500ms · rise 2, fall 3`;
/// a check on another port than the backend's says which:
/// `HTTP GET /primary port 8008 (200-200) · …`, `TCP connect port 8008 · …`.
pub fn health_check_line(h: &HealthCheckSpec) -> String {
    let port = h.port.map(|p| format!(" port {p}")).unwrap_or_default();
    let probe = match h.kind {
        HealthCheckKind::Http => {
            let host = if h.host.is_empty() {
                String::new()
            } else {
                format!(" Host {}", h.host)
            };
            format!(
                "HTTP {} {}{host}{port} ({}-{})",
                h.method, h.path, h.expected_status_min, h.expected_status_max
            )
        }
        HealthCheckKind::Tcp => format!("TCP connect{port}"),
    };
    format!(
        "{probe} · every {}, timeout {} · rise {}, fall {}",
        ms(h.interval_ms),
        ms(h.timeout_ms),
        h.rise,
        h.fall
    )
}

/// A pool's settings for TCP routes, in `tandemctl pool show`'s words:
/// `idle 30m0s, max 100 per backend (queue 128 for 5.0s), unhealthy: close
/// after 0ms (policy), proxy protocol v2`.
pub fn tcp_settings_line(p: &PoolConfig) -> String {
    let t = &p.tcp;
    let idle = match t.idle_timeout_ms {
        0 => "no idle timeout".to_string(),
        v => format!("idle {}", ms(v)),
    };
    let limit = match t.max_connections {
        0 => "no connection limit".to_string(),
        n => format!(
            "max {n} per backend (queue {} for {})",
            t.max_queue,
            ms(t.queue_timeout_ms)
        ),
    };
    let why = if t.on_unhealthy.is_none() {
        " (policy)"
    } else {
        ""
    };
    let unhealthy = match p.on_unhealthy() {
        OnUnhealthy::Close => format!("unhealthy: close after {}{why}", ms(t.unhealthy_grace_ms)),
        OnUnhealthy::Keep => format!("unhealthy: keep{why}"),
    };
    let proxy = if t.proxy_protocol {
        ", proxy protocol v2"
    } else {
        ""
    };
    format!("{idle}, {limit}, {unhealthy}{proxy}")
}

fn ms(v: u32) -> String {
    crate::database::format_duration(std::time::Duration::from_millis(u64::from(v)))
}

// === proxies and agents ===

/// The nodes' reports live in the database.
#[derive(Debug, Clone, PartialEq)]
pub enum Nodes {
    Known {
        nodes: Vec<NodeView>,
    },
    /// The database could not be read: why, and the list last read (with
    /// when), if any.
    Unknown {
        why: String,
        last: Option<(Vec<NodeView>, u64)>,
    },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeView {
    pub node_id: String,
    /// `proxy`, `agent`, `cli`, or what the node said.
    pub kind: String,
    pub zone: String,
    pub applied: u64,
    /// Revisions behind this replica's copy.
    pub lag: u64,
    pub last_seen_ms: u64,
    /// No report within the bound (three report intervals).
    pub stale: bool,
    /// The replica it last reported to.
    pub replica: String,
    /// What it says of itself ("serving from the control plane").
    pub detail: String,
    /// What it listens on, as it reports it: a proxy's TCP listeners, one
    /// per TCP route, bound or not.
    pub listeners: Vec<ListenerView>,
    /// Problems it raises, a line each (a proxy's split-brain alert).
    pub alerts: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListenerView {
    pub listen: String,
    /// The pool it sends to (empty: not tied to one).
    pub pool: String,
    pub bound: bool,
    /// Why it is not bound.
    pub error: String,
}

/// The nodes as reported, judged at `now_ms` against `revision` (as
/// `GetStatus` marks them).
/// Gives every backend the traffic each proxy reports sending it (stale
/// proxies left out). While no proxy reports traffic at all, backends
/// keep `None`: the page says "not reported" rather than "no traffic".
pub fn attach_traffic(pools: &mut [PoolView], rows: &[crate::store::NodeRow], now_ms: u64) {
    let stale_before = now_ms as i64 - tandem_proto::NODE_STALE_AFTER.as_millis() as i64;
    let reporting: Vec<_> = rows
        .iter()
        .filter(|r| r.last_seen_unix_ms >= stale_before && !r.report.traffic.is_empty())
        .collect();
    if reporting.is_empty() {
        return;
    }
    for b in pools.iter_mut().flat_map(|p| &mut p.backends) {
        let list = reporting
            .iter()
            .filter_map(|r| {
                let t = r
                    .report
                    .traffic
                    .iter()
                    .find(|t| t.pool.as_str() == b.pool && t.address.as_str() == b.address)?;
                Some(ProxyTraffic {
                    proxy: r.report.node_id.clone(),
                    requests_per_s: t.requests_per_s(),
                    errors_per_s: t.errors_per_s(),
                    p99_ms: t.quantile_ms(0.99),
                    ejected_until_ms: t.ejected_until_ms,
                })
            })
            .collect();
        b.proxies = Some(list);
    }
}

pub fn nodes(rows: &[crate::store::NodeRow], revision: u64, now_ms: u64) -> Vec<NodeView> {
    let stale_before = now_ms as i64 - tandem_proto::NODE_STALE_AFTER.as_millis() as i64;
    rows.iter()
        .map(|n| NodeView {
            node_id: n.report.node_id.clone(),
            kind: n.report.kind.clone(),
            zone: n.report.zone.clone(),
            applied: n.report.applied_revision.0,
            lag: revision.saturating_sub(n.report.applied_revision.0),
            last_seen_ms: n.last_seen_unix_ms.max(0) as u64,
            stale: n.last_seen_unix_ms < stale_before,
            replica: n.report.replica.clone(),
            detail: n.report.detail.clone(),
            listeners: n
                .report
                .listeners
                .iter()
                .map(|l| ListenerView {
                    listen: l.listen.clone(),
                    pool: l.pool.clone(),
                    bound: l.bound,
                    error: l.error.clone(),
                })
                .collect(),
            alerts: n.report.alerts.clone(),
        })
        .collect()
}

// === alerts ===

/// Something an operator must look at now, shown above everything else.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Alert {
    /// Who says so: a node's id, or `control` for what the committed health
    /// shows.
    pub from: String,
    pub what: AlertWhat,
    /// From a node that stopped reporting, or from the list last read
    /// before the database went away: it may be over.
    pub stale: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AlertWhat {
    /// A line a node raised (a proxy's split-brain alert).
    Node(String),
    /// A TCP listener a proxy cannot bind: that route does not serve there.
    NotBound {
        listen: String,
        pool: String,
        error: String,
    },
    /// More than one member of a `single_active` pool passes its check by
    /// the committed health: proxies send only to the first (`members[0]`).
    SplitBrain { pool: String, members: Vec<String> },
}

/// What the page raises, as `tandemctl status` lists its problems: the
/// pools' split brains by the committed health, then each node's unbound
/// listeners and alerts.
pub fn alerts(pools: &[PoolView], nodes: &Nodes) -> Vec<Alert> {
    let mut out: Vec<Alert> = pools
        .iter()
        .filter(|p| p.claimants.len() > 1)
        .map(|p| Alert {
            from: "control".into(),
            what: AlertWhat::SplitBrain {
                pool: p.name.clone(),
                members: p.claimants.clone(),
            },
            stale: false,
        })
        .collect();
    let (list, frozen) = match nodes {
        Nodes::Known { nodes } => (nodes.as_slice(), false),
        Nodes::Unknown {
            last: Some((nodes, _)),
            ..
        } => (nodes.as_slice(), true),
        Nodes::Unknown { last: None, .. } => (&[][..], true),
    };
    for n in list {
        let stale = frozen || n.stale;
        for l in n.listeners.iter().filter(|l| !l.bound) {
            out.push(Alert {
                from: n.node_id.clone(),
                what: AlertWhat::NotBound {
                    listen: l.listen.clone(),
                    pool: l.pool.clone(),
                    error: l.error.clone(),
                },
                stale,
            });
        }
        for a in &n.alerts {
            out.push(Alert {
                from: n.node_id.clone(),
                what: AlertWhat::Node(a.clone()),
                stale,
            });
        }
    }
    out
}

// === the feed ===

/// One line of the live feed: what `tandemctl watch` prints.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FeedEntry {
    /// Its place in this replica's feed (newer is larger).
    pub seq: u64,
    /// When it happened (committed, decided), Unix ms.
    pub at_ms: u64,
    pub what: FeedWhat,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FeedWhat {
    /// A configuration change: its kind (`backend_upserted`) and fields.
    Config {
        revision: u64,
        kind: String,
        fields: Vec<(String, String)>,
    },
    /// A health transition decided through raft (at `index`).
    Health {
        index: u64,
        pool: String,
        address: String,
        from: HealthState,
        to: HealthState,
        reason: String,
    },
    /// The copy was replaced whole (read again from the database, or
    /// copied from another replica).
    Reloaded { revision: u64, from: CopyFrom },
}

impl FeedWhat {
    pub fn config(revision: u64, change: &ConfigChange) -> FeedWhat {
        let (kind, fields) = change_fields(change);
        FeedWhat::Config {
            revision,
            kind,
            fields,
        }
    }

    pub fn health(index: u64, t: &Transition) -> FeedWhat {
        FeedWhat::Health {
            index,
            pool: t.key.pool.to_string(),
            address: t.key.address.to_string(),
            from: t.from,
            to: t.to,
            reason: t.reason.clone(),
        }
    }

    /// A health transition of the backend `pool`/`address`, as its
    /// history shows it.
    pub fn history_of(&self, pool: &str, address: &str, at_ms: u64) -> Option<HistoryRow> {
        match self {
            FeedWhat::Health {
                index,
                pool: p,
                address: a,
                from,
                to,
                reason,
            } if p == pool && a == address => Some(HistoryRow {
                raft_index: *index,
                from: from.as_str().into(),
                to: to.as_str().into(),
                reason: reason.clone(),
                at_ms,
            }),
            _ => None,
        }
    }
}

/// A change as `tandemctl watch` names it: `pool_upserted pool=shop
/// policy=round_robin`.
fn change_fields(change: &ConfigChange) -> (String, Vec<(String, String)>) {
    let f = |k: &str, v: String| (k.to_string(), v);
    match change {
        ConfigChange::PoolUpserted(p) => (
            "pool_upserted".into(),
            vec![
                f("pool", p.name.to_string()),
                f("policy", p.policy.as_str().into()),
                f("health", health_check_line(&p.health_check)),
            ],
        ),
        ConfigChange::PoolDeleted { name } => {
            ("pool_deleted".into(), vec![f("pool", name.to_string())])
        }
        ConfigChange::BackendUpserted { pool, backend } => (
            "backend_upserted".into(),
            vec![
                f("pool", pool.to_string()),
                f("address", backend.address.to_string()),
                f("weight", backend.weight.get().to_string()),
                f("role", backend.role.as_str().into()),
                f("state", backend.admin_state.as_str().into()),
            ],
        ),
        ConfigChange::BackendRemoved { pool, address } => (
            "backend_removed".into(),
            vec![
                f("pool", pool.to_string()),
                f("address", address.to_string()),
            ],
        ),
        ConfigChange::RouteUpserted(r) => (
            "route_upserted".into(),
            vec![
                f("host", r.host.to_string()),
                f("prefix", r.path_prefix.as_str().into()),
                f("pool", r.pool.to_string()),
            ],
        ),
        ConfigChange::RouteDeleted { host, path_prefix } => (
            "route_deleted".into(),
            vec![
                f("host", host.to_string()),
                f("prefix", path_prefix.as_str().into()),
            ],
        ),
        ConfigChange::TcpRouteUpserted(r) => (
            "tcp_route_upserted".into(),
            vec![
                f("listen", r.listen.to_string()),
                f("pool", r.pool.to_string()),
            ],
        ),
        ConfigChange::TcpRouteDeleted { listen } => (
            "tcp_route_deleted".into(),
            vec![f("listen", listen.to_string())],
        ),
        // The name only: never the key, and the chain says nothing at a glance.
        ConfigChange::CertificateUpserted(c) => (
            "certificate_upserted".into(),
            vec![f("certificate", c.name.to_string())],
        ),
        ConfigChange::CertificateDeleted { name } => (
            "certificate_deleted".into(),
            vec![f("certificate", name.to_string())],
        ),
    }
}

// === a backend's page ===

/// The live part of a backend's page.
#[derive(Debug, Clone, PartialEq)]
pub struct BackendState {
    pub replica: String,
    pub now_ms: u64,
    pub pool: String,
    pub address: String,
    pub revision: u64,
    /// Its pool's policy (empty when the pool is gone).
    pub policy: String,
    /// `None`: not in the configuration (any more).
    pub backend: Option<BackendView>,
    pub agents_from: ViewsFrom,
}

/// A backend's page: its state and its history.
#[derive(Debug, Clone, PartialEq)]
pub struct BackendPage {
    pub state: BackendState,
    pub history: Vec<HistoryRow>,
    pub history_from: HistoryFrom,
}

/// One backend of the overview.
pub fn backend_state(o: &Overview, pool: &str, address: &str) -> BackendState {
    let found = o.pools.iter().find(|p| p.name == pool);
    BackendState {
        replica: o.platform.replica.clone(),
        now_ms: o.platform.now_ms,
        pool: pool.to_string(),
        address: address.to_string(),
        revision: o.platform.revision,
        policy: found.map(|p| p.policy.to_string()).unwrap_or_default(),
        backend: found.and_then(|p| p.backends.iter().find(|b| b.address == address).cloned()),
        agents_from: o.agents_from.clone(),
    }
}

/// One recorded transition of a backend.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HistoryRow {
    pub raft_index: u64,
    pub from: String,
    pub to: String,
    pub reason: String,
    pub at_ms: u64,
}

/// Where a backend's history was read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HistoryFrom {
    /// `health_history` in Postgres.
    Database,
    /// The replicated table's recent transitions: the database could not
    /// be read (why).
    Memory { why: String },
}

/// The recent transitions of one backend kept in the replicated table,
/// newest first: the history while the database cannot be read.
pub fn history_in_memory(
    recent: &std::collections::VecDeque<(u64, Transition)>,
    key: &BackendKey,
    limit: usize,
) -> Vec<HistoryRow> {
    recent
        .iter()
        .rev()
        .filter(|(_, t)| &t.key == key)
        .take(limit)
        .map(|(i, t)| HistoryRow {
            raft_index: *i,
            from: t.from.as_str().into(),
            to: t.to.as_str().into(),
            reason: t.reason.clone(),
            at_ms: t.at_ms,
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use tandem_core::{
        Backend, BackendAddr, HostMatch, ListenAddr, PathPrefix, PoolConfig, PoolName, Route,
        TcpRoute,
    };

    use super::*;
    use crate::consensus::MemberProgress;

    fn key(pool: &str, addr: &str) -> BackendKey {
        BackendKey {
            pool: PoolName::new(pool).unwrap(),
            address: BackendAddr::new(addr).unwrap(),
        }
    }

    fn config() -> Snapshot {
        let mut s = Snapshot::default();
        let mut pool = Pool {
            config: PoolConfig::new(PoolName::new("shop").unwrap()),
            backends: ["10.0.0.1:80", "10.0.0.2:80", "10.0.0.3:80"]
                .iter()
                .map(|a| Backend::new(BackendAddr::new(a).unwrap()))
                .collect(),
            revision: tandem_core::Revision(4),
        };
        pool.backends[2].role = BackendRole::Backup;
        s.pools.insert(pool.config.name.clone(), pool);
        s.routes.push(Route {
            host: HostMatch::new("*").unwrap(),
            path_prefix: PathPrefix::new("/").unwrap(),
            pool: PoolName::new("shop").unwrap(),
            redirect_https: false,
            hsts_max_age_s: 0,
        });
        s.revision = tandem_core::Revision(5);
        s
    }

    fn health(state: HealthState, reason: &str) -> BackendHealth {
        BackendHealth {
            state,
            since_ms: 1_000,
            reason: reason.into(),
            views: vec![AgentView {
                agent: "agent-1".into(),
                zone: "a".into(),
                verdict: Some(state == HealthState::Healthy),
                last_detail: "at the decision".into(),
                last_seen_ms: 900,
                live: true,
            }],
        }
    }

    #[test]
    fn a_pool_shows_its_routes_health_and_who_takes_traffic() {
        let mut table = BTreeMap::new();
        table.insert(
            key("shop", "10.0.0.1:80"),
            health(HealthState::Healthy, "ok"),
        );
        table.insert(
            key("shop", "10.0.0.2:80"),
            health(HealthState::Unhealthy, "HTTP 503 from 1/1 agent"),
        );
        let pools = pools(&config(), &table, None);
        let [shop] = pools.as_slice() else {
            panic!("one pool: {pools:?}")
        };
        assert_eq!(
            shop.routes,
            [RouteRef::Http {
                host: "*".into(),
                path_prefix: "/".into()
            }]
        );
        // One healthy primary of two is not below the 50% panic threshold:
        // only it takes traffic, the backup stands by.
        assert_eq!(shop.tier, Some(Tier::Primaries));
        let rotation: Vec<bool> = shop.backends.iter().map(|b| b.in_rotation).collect();
        assert_eq!(rotation, [true, false, false]);
        let sick = &shop.backends[1];
        assert_eq!(sick.health, HealthState::Unhealthy);
        assert_eq!(sick.reason, "HTTP 503 from 1/1 agent");
        assert_eq!(sick.agents[0].detail, "at the decision");
        assert!(sick.proxies.is_none(), "no traffic figures are made up");
        let unknown = &shop.backends[2];
        assert_eq!(
            (unknown.health, unknown.since_ms),
            (HealthState::Unknown, None)
        );

        // Below a 75% threshold: panic mode, every enabled primary.
        let mut panicky = config();
        for pool in panicky.pools.values_mut() {
            pool.config.panic_threshold_percent = 75;
        }
        let pools = super::pools(&panicky, &table, None);
        assert_eq!(pools[0].tier, Some(Tier::PanicPrimaries));
        let rotation: Vec<bool> = pools[0].backends.iter().map(|b| b.in_rotation).collect();
        assert_eq!(rotation, [true, true, false]);

        // The leader's latest views win over those at the decision.
        let mut live = AgentViews {
            at_ms: 5_000,
            term: 2,
            ..Default::default()
        };
        live.backends.insert(
            key("shop", "10.0.0.2:80"),
            vec![AgentView {
                agent: "agent-2".into(),
                zone: "b".into(),
                verdict: Some(true),
                last_detail: "HTTP 200".into(),
                last_seen_ms: 4_900,
                live: true,
            }],
        );
        let pools = super::pools(&config(), &table, Some(&live));
        assert_eq!(pools[0].backends[1].agents[0].agent, "agent-2");
        assert_eq!(pools[0].backends[0].agents[0].agent, "agent-1");
    }

    #[test]
    fn draining_and_disabled_backends_take_no_new_requests() {
        let mut config = config();
        let pool = config.pools.values_mut().next().unwrap();
        pool.backends[0].admin_state = AdminState::Draining;
        pool.backends[1].admin_state = AdminState::Disabled;
        let pools = pools(&config, &BTreeMap::new(), None);
        let rotation: Vec<bool> = pools[0].backends.iter().map(|b| b.in_rotation).collect();
        assert_eq!(pools[0].tier, Some(Tier::Backups));
        assert_eq!(rotation, [false, false, true]);
    }

    #[test]
    fn a_follower_speaks_only_of_itself_and_the_leader() {
        let members: BTreeMap<u64, String> = (1..=3).map(|i| (i, format!("h{i}:7400"))).collect();
        let status = RaftStatus {
            id: 2,
            leader: 1,
            term: 7,
            role: "follower",
            ..Default::default()
        };
        let contact = |_| Contact {
            reachable: true,
            last_heard: Some(Duration::from_millis(40)),
        };
        let view = raft_local(&status, &members, contact);
        assert_eq!(view.seen_by, SeenBy::ThisFollower);
        let roles: Vec<&str> = view.members.iter().map(|m| m.role.as_str()).collect();
        assert_eq!(roles, ["leader", "follower", "unknown"]);
        assert_eq!(view.members[2].reachable, None, "not known to a follower");
        assert!(view.members[1].is_self);

        // The leader knows everyone's progress.
        let mut status = RaftStatus {
            id: 1,
            leader: 1,
            term: 7,
            role: "leader",
            last_index: 20,
            ..Default::default()
        };
        status.progress.insert(
            3,
            MemberProgress {
                matched: 12,
                state: "probe",
            },
        );
        let view = raft_local(&status, &members, |id| Contact {
            reachable: id != 3,
            last_heard: (id != 3).then_some(Duration::ZERO),
        });
        assert_eq!(view.seen_by, SeenBy::ThisLeader);
        let third = &view.members[2];
        assert_eq!(
            (third.lag, third.reachable, third.progress.as_str()),
            (Some(8), Some(false), "probe")
        );
    }

    /// A `db` pool behind a TCP route, `single_active`, checked on a
    /// Patroni-like port: members db1 (order 2), db2 (order 1), db3 (order 3).
    fn database_config() -> Snapshot {
        let mut s = Snapshot::default();
        let mut config = PoolConfig::new(PoolName::new("db").unwrap());
        config.policy = LbPolicy::SingleActive;
        config.health_check.path = "/primary".into();
        config.health_check.port = Some(8008);
        let mut pool = Pool {
            config,
            backends: ["10.0.0.1:5432", "10.0.0.2:5432", "10.0.0.3:5432"]
                .iter()
                .map(|a| Backend::new(BackendAddr::new(a).unwrap()))
                .collect(),
            revision: tandem_core::Revision(3),
        };
        for (b, order) in pool.backends.iter_mut().zip([2, 1, 3]) {
            b.order = order;
        }
        s.pools.insert(pool.config.name.clone(), pool);
        s.tcp_routes.push(TcpRoute {
            listen: ListenAddr::new("0.0.0.0:5432").unwrap(),
            pool: PoolName::new("db").unwrap(),
        });
        s.revision = tandem_core::Revision(4);
        s
    }

    fn db(addr: &str) -> BackendKey {
        key("db", addr)
    }

    #[test]
    fn a_tcp_pool_shows_its_route_settings_check_port_and_its_one_active_member() {
        let mut table = BTreeMap::new();
        table.insert(db("10.0.0.1:5432"), health(HealthState::Healthy, "ok"));
        // db2 comes first by order but its state is unknown: never sent to.
        let pools = pools(&database_config(), &table, None);
        let [db_pool] = pools.as_slice() else {
            panic!("one pool: {pools:?}")
        };
        assert_eq!(
            db_pool.routes,
            [RouteRef::Tcp {
                listen: "0.0.0.0:5432".into()
            }]
        );
        assert_eq!(
            db_pool.health_check,
            "HTTP GET /primary port 8008 (200-399) · every 2.0s, timeout 1.0s · rise 2, fall 3",
            "the check names the port it probes"
        );
        assert_eq!(
            db_pool.tcp.as_deref(),
            Some("idle 30m0s, no connection limit, unhealthy: close after 0ms (policy)")
        );
        let rotation: Vec<bool> = db_pool.backends.iter().map(|b| b.in_rotation).collect();
        assert_eq!(rotation, [true, false, false]);
        assert_eq!(db_pool.claimants, ["10.0.0.1:5432"]);
        assert!(alerts(&pools, &Nodes::Known { nodes: vec![] }).is_empty());

        // Both db1 and db2 pass: db2, first by declared order, takes every
        // connection, and the page raises a split brain.
        table.insert(db("10.0.0.2:5432"), health(HealthState::Healthy, "ok"));
        let pools = super::pools(&database_config(), &table, None);
        let rotation: Vec<bool> = pools[0].backends.iter().map(|b| b.in_rotation).collect();
        assert_eq!(rotation, [false, true, false]);
        assert_eq!(pools[0].claimants, ["10.0.0.2:5432", "10.0.0.1:5432"]);
        assert_eq!(
            alerts(&pools, &Nodes::Known { nodes: vec![] }),
            [Alert {
                from: "control".into(),
                what: AlertWhat::SplitBrain {
                    pool: "db".into(),
                    members: vec!["10.0.0.2:5432".into(), "10.0.0.1:5432".into()],
                },
                stale: false,
            }]
        );

        // Nobody passes: nothing takes traffic (no panic mode).
        let mut table = BTreeMap::new();
        table.insert(
            db("10.0.0.1:5432"),
            health(HealthState::Unhealthy, "HTTP 503 from 1/1 agent"),
        );
        let pools = super::pools(&database_config(), &table, None);
        assert_eq!(pools[0].tier, None);
        assert!(pools[0].backends.iter().all(|b| !b.in_rotation));

        // An HTTP pool with default TCP settings says nothing of them; set
        // ones are said even without a TCP route.
        let http = super::pools(&config(), &BTreeMap::new(), None);
        assert_eq!(http[0].tcp, None);
        let mut tuned = config();
        for pool in tuned.pools.values_mut() {
            pool.config.tcp.max_connections = 100;
            pool.config.tcp.proxy_protocol = true;
            pool.config.tcp.on_unhealthy = Some(OnUnhealthy::Close);
            pool.config.tcp.unhealthy_grace_ms = 5_000;
            pool.config.health_check.kind = HealthCheckKind::Tcp;
            pool.config.health_check.port = Some(9000);
        }
        let tuned = super::pools(&tuned, &BTreeMap::new(), None);
        assert_eq!(
            tuned[0].tcp.as_deref(),
            Some(
                "idle 30m0s, max 100 per backend (queue 128 for 5.0s), unhealthy: close after 5.0s, proxy protocol v2"
            )
        );
        assert!(
            tuned[0]
                .health_check
                .starts_with("TCP connect port 9000 · "),
            "{}",
            tuned[0].health_check
        );
    }

    #[test]
    fn nodes_are_stale_after_three_missed_reports_and_lag_the_copy() {
        let row = |id: &str, seen: i64, applied: u64| crate::store::NodeRow {
            report: crate::store::NodeReport {
                node_id: id.into(),
                kind: "proxy".into(),
                zone: "a".into(),
                applied_revision: tandem_core::Revision(applied),
                detail: "serving from the control plane".into(),
                replica: "control-1".into(),
                listeners: Vec::new(),
                alerts: Vec::new(),
                certificates: Vec::new(),
                traffic: Vec::new(),
            },
            last_seen_unix_ms: seen,
        };
        let now = 100_000;
        let nodes = nodes(&[row("p1", 99_000, 9), row("p2", 84_000, 7)], 9, now);
        assert_eq!((nodes[0].stale, nodes[0].lag), (false, 0));
        assert_eq!((nodes[1].stale, nodes[1].lag), (true, 2));
    }

    #[test]
    fn a_proxy_shows_its_listeners_and_raises_its_alerts() {
        let listener = |listen: &str, bound: bool, error: &str| crate::store::ListenerReport {
            listen: listen.into(),
            pool: "db".into(),
            bound,
            error: error.into(),
        };
        let row = |id: &str, seen: i64| crate::store::NodeRow {
            report: crate::store::NodeReport {
                node_id: id.into(),
                kind: "proxy".into(),
                zone: "a".into(),
                applied_revision: tandem_core::Revision(4),
                detail: "serving from the control plane".into(),
                replica: "control-1".into(),
                listeners: vec![
                    listener("0.0.0.0:5432", true, ""),
                    listener("0.0.0.0:22", false, "Permission denied (os error 13)"),
                ],
                alerts: vec!["pool/db (single_active): 2 members pass the health check".into()],
                certificates: Vec::new(),
                traffic: Vec::new(),
            },
            last_seen_unix_ms: seen,
        };
        let now = 100_000;
        let list = nodes(&[row("proxy-1", 99_000), row("proxy-2", 10_000)], 4, now);
        assert_eq!(
            list[0].listeners,
            [
                ListenerView {
                    listen: "0.0.0.0:5432".into(),
                    pool: "db".into(),
                    bound: true,
                    error: String::new(),
                },
                ListenerView {
                    listen: "0.0.0.0:22".into(),
                    pool: "db".into(),
                    bound: false,
                    error: "Permission denied (os error 13)".into(),
                },
            ]
        );
        let raised = alerts(
            &[],
            &Nodes::Known {
                nodes: list.clone(),
            },
        );
        let said: Vec<(&str, bool, &AlertWhat)> = raised
            .iter()
            .map(|a| (a.from.as_str(), a.stale, &a.what))
            .collect();
        let not_bound = AlertWhat::NotBound {
            listen: "0.0.0.0:22".into(),
            pool: "db".into(),
            error: "Permission denied (os error 13)".into(),
        };
        let split =
            AlertWhat::Node("pool/db (single_active): 2 members pass the health check".into());
        assert_eq!(
            said,
            [
                ("proxy-1", false, &not_bound),
                ("proxy-1", false, &split),
                // A proxy that stopped reporting: what it last said, marked.
                ("proxy-2", true, &not_bound),
                ("proxy-2", true, &split),
            ]
        );
        // While the database is away, the list last read: every alert may
        // be over.
        let frozen = alerts(
            &[],
            &Nodes::Unknown {
                why: "down".into(),
                last: Some((list, 90_000)),
            },
        );
        assert!(frozen.iter().all(|a| a.stale) && frozen.len() == 4);
    }

    #[test]
    fn tcp_route_changes_read_as_tandemctl_watch_prints_them() {
        let line = |change: &ConfigChange| {
            let FeedWhat::Config { kind, fields, .. } = FeedWhat::config(4, change) else {
                panic!("a config entry")
            };
            let mut out = kind;
            for (k, v) in fields {
                out.push_str(&format!(" {k}={v}"));
            }
            out
        };
        let listen = ListenAddr::new("0.0.0.0:5432").unwrap();
        assert_eq!(
            line(&ConfigChange::TcpRouteUpserted(TcpRoute {
                listen,
                pool: PoolName::new("db").unwrap(),
            })),
            "tcp_route_upserted listen=0.0.0.0:5432 pool=db"
        );
        assert_eq!(
            line(&ConfigChange::TcpRouteDeleted { listen }),
            "tcp_route_deleted listen=0.0.0.0:5432"
        );
    }

    #[test]
    fn a_change_reads_as_tandemctl_watch_prints_it() {
        let change = ConfigChange::BackendUpserted {
            pool: PoolName::new("shop").unwrap(),
            backend: Backend::new(BackendAddr::new("10.0.0.9:80").unwrap()),
        };
        let FeedWhat::Config { kind, fields, .. } = FeedWhat::config(9, &change) else {
            panic!("a config entry")
        };
        assert_eq!(kind, "backend_upserted");
        let text: Vec<String> = fields.iter().map(|(k, v)| format!("{k}={v}")).collect();
        assert_eq!(
            text,
            [
                "pool=shop",
                "address=10.0.0.9:80",
                "weight=1",
                "role=primary",
                "state=enabled"
            ]
        );
    }
}
