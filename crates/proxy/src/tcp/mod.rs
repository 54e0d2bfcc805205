//! TCP (layer 4) routes: listeners that forward every connection they
//! accept to a pool, bytes untouched.
//!
//! The pieces: [`listeners`] binds one socket per TCP route and keeps the
//! set in step with the configuration (a port that cannot be bound is
//! reported, and tried again); [`conn`] serves one connection (pick a
//! backend, wait in the pool's bounded queue when every backend is at its
//! limit, connect within the connect-timeout budget trying the next backend
//! on failure, the optional PROXY protocol v2 header, then [`pump`] moves
//! the bytes); [`supervisor`] closes the connections of backends that must
//! not keep them (unhealthy, disabled, removed, or no longer the active
//! member of a `single_active` pool) and raises the alert when two members
//! of such a pool claim to be usable.
//!
//! Like the HTTP path, a connection reads an immutable [`TcpTable`]
//! through an `ArcSwap`: no lock is taken to accept, pick or copy. Health
//! and passive ejection are the HTTP table's per-backend atomics, shared;
//! what only TCP needs (open connections, the kill switch) lives in
//! [`TcpBackend`], which survives reloads like the HTTP state does.

pub mod conn;
pub mod listeners;
pub mod proxy_protocol;
pub mod pump;
pub mod supervisor;

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arc_swap::{ArcSwap, ArcSwapOption};
use metrics::{Counter, Gauge};
use serde::Serialize;
use tandem_client::NodeState;
use tandem_core::lb::{self, Balancer, Endpoint};
use tandem_core::{AdminState, BackendAddr, BackendRole, LbPolicy, PoolConfig, PoolName, Snapshot};
use tokio::sync::{Notify, watch};
use tokio_util::sync::CancellationToken;

use crate::table::{BackendRt, Table};

pub use pump::CopyMode;

// === the table ===

/// The TCP side of one configuration revision.
pub struct TcpTable {
    /// The HTTP table of the same revision: its per-backend health and
    /// passive-ejection state are the ones TCP connections use too.
    pub http: Arc<Table>,
    /// Listen address → index in `pools`.
    pub routes: BTreeMap<SocketAddr, usize>,
    pub declared: Vec<tandem_core::TcpRoute>,
    /// The pools TCP routes lead to.
    pub pools: Vec<TcpPool>,
}

impl TcpTable {
    pub fn route(&self, listen: SocketAddr) -> Option<&TcpPool> {
        self.routes.get(&listen).map(|&i| &self.pools[i])
    }
}

pub struct TcpPool {
    /// Index of the pool in `http.pools` (backends are in the same order).
    pub http_index: usize,
    pub config: PoolConfig,
    pub endpoints: Vec<TcpEndpoint>,
    pub balancer: Balancer,
    pub state: Arc<TcpPoolState>,
    /// Backends that left the pool while connections to them were open.
    pub retired: Vec<Arc<TcpBackend>>,
}

/// One backend of a TCP pool as this revision declares it.
pub struct TcpEndpoint {
    /// As the HTTP table of the same revision has it: declared, with the
    /// shared health and passive-ejection state.
    pub backend: BackendRt,
    pub tcp: Arc<TcpBackend>,
}

/// The balancer sees a TCP backend as the HTTP one, except that it is as
/// busy as its open connections.
impl Endpoint for TcpEndpoint {
    fn weight(&self) -> u32 {
        self.backend.weight()
    }
    fn role(&self) -> BackendRole {
        self.backend.role()
    }
    fn admin_state(&self) -> AdminState {
        self.backend.admin_state()
    }
    fn healthy(&self) -> bool {
        self.backend.healthy()
    }
    fn in_flight(&self) -> u64 {
        self.tcp.active.load(Ordering::Relaxed)
    }
    fn key(&self) -> &str {
        self.backend.key()
    }
    fn passes_check(&self) -> bool {
        self.backend.passes_check()
    }
    fn order(&self) -> u32 {
        self.backend.order()
    }
}

// === state that survives reloads ===

/// A pool's TCP state, shared by every table version.
pub struct TcpPoolState {
    pub name: PoolName,
    pub cursor: AtomicU64,
    /// Clients waiting for a backend slot (or for the previous active
    /// member's connections to close).
    pub queued: AtomicU64,
    /// Woken when a connection of the pool ends or the configuration or
    /// health changes: a waiting client looks again.
    pub changed: Notify,
    pub m: PoolMetrics,
}

pub struct PoolMetrics {
    pub accepted: Counter,
    pub active: Gauge,
    pub queued: Gauge,
    pub no_backend: Counter,
    pub queue_full: Counter,
    pub queue_timeout: Counter,
    pub connect_failed: Counter,
    pub claimants: Gauge,
}

impl TcpPoolState {
    fn new(name: PoolName) -> Self {
        let p = name.to_string();
        let failed = |reason: &'static str| metrics::counter!("tandem_proxy_tcp_failed_connections_total", "pool" => p.clone(), "reason" => reason);
        Self {
            cursor: AtomicU64::new(rand::random::<u32>().into()),
            queued: AtomicU64::new(0),
            changed: Notify::new(),
            m: PoolMetrics {
                accepted: metrics::counter!("tandem_proxy_tcp_connections_total", "pool" => p.clone()),
                active: metrics::gauge!("tandem_proxy_tcp_active_connections", "pool" => p.clone()),
                queued: metrics::gauge!("tandem_proxy_tcp_queued_clients", "pool" => p.clone()),
                no_backend: failed("no_backend"),
                queue_full: failed("queue_full"),
                queue_timeout: failed("queue_timeout"),
                connect_failed: failed("connect_failed"),
                claimants: metrics::gauge!("tandem_proxy_tcp_single_active_claimants", "pool" => p),
            },
            name,
        }
    }
}

/// A backend's TCP state, shared by every table version in which it stays
/// in its pool.
pub struct TcpBackend {
    pub pool: PoolName,
    pub address: BackendAddr,
    /// The socket address when the backend is an IP literal (no DNS).
    pub socket_addr: Option<SocketAddr>,
    /// Connections open to it (or being opened).
    pub active: AtomicU64,
    /// Cancelled to close every connection open now; replaced by a fresh
    /// token for the connections after.
    kill: ArcSwap<CancellationToken>,
    /// Its pool's `on_unhealthy` as last declared: `grace_ms << 1 | close`,
    /// for when it has left the pool.
    policy: AtomicU64,
    pub m: BackendMetrics,
}

pub struct BackendMetrics {
    pub connections: Counter,
    pub connect_failures: Counter,
    pub active: Gauge,
    pub to_backend: Counter,
    pub to_client: Counter,
    pub closed_idle: Counter,
    pub closed_unhealthy: Counter,
    pub closed_disabled: Counter,
    pub closed_removed: Counter,
    pub closed_not_active: Counter,
}

/// Why the proxy closed connections to a backend.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CloseReason {
    Unhealthy,
    Disabled,
    Removed,
    /// A `single_active` pool moved to another member.
    NotActive,
}

impl CloseReason {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Unhealthy => "unhealthy",
            Self::Disabled => "disabled",
            Self::Removed => "removed",
            Self::NotActive => "not_active",
        }
    }
}

impl TcpBackend {
    fn new(pool: PoolName, address: BackendAddr) -> Self {
        let (p, b) = (pool.to_string(), address.to_string());
        let closed = |reason: &'static str| metrics::counter!("tandem_proxy_tcp_closed_connections_total", "pool" => p.clone(), "backend" => b.clone(), "reason" => reason);
        let bytes = |direction: &'static str| metrics::counter!("tandem_proxy_tcp_bytes_total", "pool" => p.clone(), "backend" => b.clone(), "direction" => direction);
        Self {
            socket_addr: address.as_str().parse().ok(),
            active: AtomicU64::new(0),
            kill: ArcSwap::from_pointee(CancellationToken::new()),
            policy: AtomicU64::new(0),
            m: BackendMetrics {
                connections: metrics::counter!("tandem_proxy_tcp_backend_connections_total", "pool" => p.clone(), "backend" => b.clone()),
                connect_failures: metrics::counter!("tandem_proxy_tcp_backend_connect_failures_total", "pool" => p.clone(), "backend" => b.clone()),
                active: metrics::gauge!("tandem_proxy_tcp_backend_active_connections", "pool" => p.clone(), "backend" => b.clone()),
                to_backend: bytes("to_backend"),
                to_client: bytes("to_client"),
                closed_idle: closed("idle_timeout"),
                closed_unhealthy: closed("unhealthy"),
                closed_disabled: closed("disabled"),
                closed_removed: closed("removed"),
                closed_not_active: closed("not_active"),
            },
            pool,
            address,
        }
    }

    /// The token the connections opened from now on watch.
    pub fn kill_switch(&self) -> Arc<CancellationToken> {
        self.kill.load_full()
    }

    /// Closes every connection open to it now (those opened later are
    /// not affected). Returns how many there were.
    pub fn close_all(&self, reason: CloseReason) -> u64 {
        let open = self.active.load(Ordering::SeqCst);
        let old = self.kill.swap(Arc::new(CancellationToken::new()));
        old.cancel();
        let counter = match reason {
            CloseReason::Unhealthy => &self.m.closed_unhealthy,
            CloseReason::Disabled => &self.m.closed_disabled,
            CloseReason::Removed => &self.m.closed_removed,
            CloseReason::NotActive => &self.m.closed_not_active,
        };
        counter.increment(open);
        open
    }

    fn remember_policy(&self, config: &PoolConfig) {
        let close = config.on_unhealthy() == tandem_core::OnUnhealthy::Close;
        let bits = (u64::from(config.tcp.unhealthy_grace_ms) << 1) | u64::from(close);
        self.policy.store(bits, Ordering::Relaxed);
    }

    /// Its pool's last declared policy: (close, grace in ms).
    pub fn policy(&self) -> (bool, u64) {
        let bits = self.policy.load(Ordering::Relaxed);
        (bits & 1 == 1, bits >> 1)
    }

    /// Takes a connection slot unless `max` (0: no limit) are open.
    pub fn try_reserve(&self, max: u32) -> bool {
        self.active
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |a| {
                (max == 0 || a < u64::from(max)).then_some(a + 1)
            })
            .is_ok()
    }
}

// === Tcp ===

/// Tuning that comes from the proxy's flags, not the control plane.
#[derive(Debug, Clone)]
pub struct TcpOptions {
    pub copy: CopyMode,
    /// Bytes per read (user-space copy) or per splice.
    pub buffer: usize,
    /// How often a listener that could not bind is tried again.
    pub rebind_every: Duration,
}

impl Default for TcpOptions {
    fn default() -> Self {
        Self {
            copy: CopyMode::default(),
            buffer: 32 * 1024,
            rebind_every: Duration::from_secs(2),
        }
    }
}

/// Everything TCP routes share in one proxy.
pub struct Tcp {
    pub table: ArcSwapOption<TcpTable>,
    pub options: TcpOptions,
    pools: Mutex<HashMap<PoolName, Arc<TcpPoolState>>>,
    backends: Mutex<HashMap<(PoolName, BackendAddr), Arc<TcpBackend>>>,
    /// Backends gone from their pool while connections were open, with
    /// whether their pool closes such connections.
    retired: Mutex<Vec<Arc<TcpBackend>>>,
    /// Wakes the listener manager and the supervisor.
    pub changed: Notify,
    /// Bumped before and after every health update (odd while one is being
    /// applied), so the supervisor never acts on half of one.
    pub health_generation: AtomicU64,
    /// What the proxy reports: its listeners and alerts.
    pub node_state: watch::Sender<NodeState>,
    /// Connections open through every TCP route.
    pub open: AtomicU64,
    pub drained: Notify,
}

impl Tcp {
    pub fn new(options: TcpOptions) -> Self {
        Self {
            table: ArcSwapOption::empty(),
            options,
            pools: Mutex::default(),
            backends: Mutex::default(),
            retired: Mutex::default(),
            changed: Notify::new(),
            health_generation: AtomicU64::new(0),
            node_state: watch::Sender::new(NodeState::default()),
            open: AtomicU64::new(0),
            drained: Notify::new(),
        }
    }

    /// Builds the TCP table for `snapshot` beside its HTTP `table` and swaps
    /// it in. Backends that left their pool keep their open connections
    /// (the supervisor closes them when their pool says so).
    pub fn install(&self, snapshot: &Snapshot, http: Arc<Table>) {
        let mut pool_states = self.pools.lock().unwrap_or_else(|p| p.into_inner());
        let mut backends = self.backends.lock().unwrap_or_else(|p| p.into_inner());
        let mut retired = self.retired.lock().unwrap_or_else(|p| p.into_inner());

        let wanted: std::collections::BTreeSet<&PoolName> =
            snapshot.tcp_routes.iter().map(|r| &r.pool).collect();
        // Backends no longer declared (or whose pool no TCP route uses any
        // more) retire; those without connections are forgotten.
        backends.retain(|(pool, addr), b| {
            let keep = wanted.contains(pool)
                && snapshot
                    .pools
                    .get(pool)
                    .is_some_and(|p| p.backend(addr).is_some());
            if !keep && b.active.load(Ordering::SeqCst) > 0 {
                retired.push(b.clone());
            }
            keep
        });
        retired.retain(|b| {
            b.active.load(Ordering::SeqCst) > 0
                && !snapshot
                    .pools
                    .get(&b.pool)
                    .is_some_and(|p| p.backend(&b.address).is_some() && wanted.contains(&b.pool))
        });
        pool_states.retain(|name, _| wanted.contains(name));

        let mut pools = Vec::new();
        let mut index: HashMap<&PoolName, usize> = HashMap::new();
        for name in &wanted {
            let (Some(pool), Some(http_index)) = (
                snapshot.pools.get(*name),
                http.pools.iter().position(|p| &p.config.name == *name),
            ) else {
                continue;
            };
            let rt = &http.pools[http_index];
            let state = pool_states
                .entry((*name).clone())
                .or_insert_with(|| Arc::new(TcpPoolState::new((*name).clone())))
                .clone();
            let endpoints: Vec<TcpEndpoint> = rt
                .backends
                .iter()
                .map(|b| TcpEndpoint {
                    backend: BackendRt {
                        declared: b.declared.clone(),
                        state: b.state.clone(),
                    },
                    tcp: backends
                        .entry(((*name).clone(), b.declared.address.clone()))
                        .or_insert_with(|| {
                            Arc::new(TcpBackend::new((*name).clone(), b.declared.address.clone()))
                        })
                        .clone(),
                })
                .collect();
            for e in &endpoints {
                e.tcp.remember_policy(&pool.config);
            }
            let balancer = Balancer::new(
                pool.config.policy,
                &endpoints,
                pool.config.panic_threshold_percent,
            );
            index.insert(*name, pools.len());
            pools.push(TcpPool {
                http_index,
                config: pool.config.clone(),
                endpoints,
                balancer,
                state,
                retired: retired
                    .iter()
                    .filter(|b| &b.pool == *name)
                    .cloned()
                    .collect(),
            });
        }
        let routes = snapshot
            .tcp_routes
            .iter()
            .filter_map(|r| Some((r.listen.socket_addr(), *index.get(&r.pool)?)))
            .collect();
        self.table.store(Some(Arc::new(TcpTable {
            http,
            routes,
            declared: snapshot.tcp_routes.clone(),
            pools,
        })));
        drop((pool_states, backends));
        self.changed.notify_waiters();
        if let Some(t) = self.table.load().as_ref() {
            for p in &t.pools {
                p.state.changed.notify_waiters();
            }
        }
    }

    /// Backends retired from pools that no TCP route uses any more: the
    /// supervisor closes them by the policy they had.
    pub fn orphans(&self) -> Vec<Arc<TcpBackend>> {
        let retired = self.retired.lock().unwrap_or_else(|p| p.into_inner());
        let table = self.table.load();
        retired
            .iter()
            .filter(|b| {
                table
                    .as_ref()
                    .is_none_or(|t| !t.pools.iter().any(|p| p.config.name == b.pool))
            })
            .cloned()
            .collect()
    }

    /// A health update is about to be applied / was applied.
    pub fn health_applying(&self) {
        self.health_generation.fetch_add(1, Ordering::SeqCst);
    }

    pub fn health_applied(&self) {
        self.health_generation.fetch_add(1, Ordering::SeqCst);
        self.changed.notify_waiters();
        if let Some(t) = self.table.load().as_ref() {
            for p in &t.pools {
                p.state.changed.notify_waiters();
            }
        }
    }

    /// Waits up to `timeout` for the connections of TCP routes to end (the
    /// listeners are closed by then); the rest are cut when the process
    /// exits.
    pub async fn drain(&self, timeout: Duration) {
        let open = self.open.load(Ordering::SeqCst);
        if open == 0 {
            return;
        }
        tracing::info!(open_connections = open, "draining tcp connections");
        let drained = async {
            loop {
                let notified = self.drained.notified();
                tokio::pin!(notified);
                notified.as_mut().enable();
                if self.open.load(Ordering::SeqCst) == 0 {
                    return;
                }
                notified.await;
            }
        };
        if tokio::time::timeout(timeout, drained).await.is_err() {
            tracing::warn!(
                open_connections = self.open.load(Ordering::SeqCst),
                "tcp drain deadline passed; closing the remaining connections"
            );
        }
    }

    /// Listeners and alerts, for `ReportApplied`.
    pub fn node_state(&self) -> watch::Receiver<NodeState> {
        self.node_state.subscribe()
    }
}

// === /config ===

#[derive(Serialize)]
pub struct TcpView {
    pub routes: Vec<TcpRouteView>,
    pub pools: Vec<TcpPoolView>,
}

#[derive(Serialize)]
pub struct TcpRouteView {
    pub listen: String,
    pub pool: String,
    pub bound: bool,
    pub error: String,
}

#[derive(Serialize)]
pub struct TcpPoolView {
    pub name: String,
    pub policy: &'static str,
    /// `single_active`: the member taking connections now.
    pub active_member: Option<String>,
    /// Members not disabled whose check passes.
    pub claimants: usize,
    pub on_unhealthy: &'static str,
    pub queued: u64,
    pub backends: Vec<TcpBackendView>,
}

#[derive(Serialize)]
pub struct TcpBackendView {
    pub address: String,
    pub order: u32,
    pub health: &'static str,
    pub usable: bool,
    pub open_connections: u64,
}

impl Tcp {
    pub fn view(&self) -> TcpView {
        let listeners = self.node_state.borrow().listeners.clone();
        let table = self.table.load_full();
        let routes = listeners
            .iter()
            .map(|l| TcpRouteView {
                listen: l.listen.clone(),
                pool: l.pool.clone(),
                bound: l.bound,
                error: l.error.clone(),
            })
            .collect();
        let pools = table
            .iter()
            .flat_map(|t| t.pools.iter())
            .map(|p| TcpPoolView {
                name: p.config.name.to_string(),
                policy: p.config.policy.as_str(),
                active_member: (p.config.policy == LbPolicy::SingleActive)
                    .then(|| lb::single_active(&p.endpoints, &[]))
                    .flatten()
                    .map(|picked| {
                        p.endpoints[picked.index]
                            .backend
                            .declared
                            .address
                            .to_string()
                    }),
                claimants: lb::claimants(&p.endpoints),
                on_unhealthy: p.config.on_unhealthy().as_str(),
                queued: p.state.queued.load(Ordering::Relaxed),
                backends: p
                    .endpoints
                    .iter()
                    .map(|e| TcpBackendView {
                        address: e.backend.declared.address.to_string(),
                        order: e.backend.declared.order,
                        health: e.backend.state.health().as_str(),
                        usable: e.healthy(),
                        open_connections: e.tcp.active.load(Ordering::Relaxed),
                    })
                    .collect(),
            })
            .collect();
        TcpView { routes, pools }
    }
}

/// The listen addresses a table asks for, with their pools.
pub fn wanted_listeners(table: &TcpTable) -> BTreeMap<SocketAddr, PoolName> {
    table
        .declared
        .iter()
        .map(|r: &tandem_core::TcpRoute| (r.listen.socket_addr(), r.pool.clone()))
        .collect()
}
