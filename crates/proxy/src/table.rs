//! The routing table: an immutable view of one configuration revision, built
//! off the request path and swapped in whole (`ArcSwap`). Requests in flight
//! keep the table they started with.
//!
//! Per-backend state that must outlive a reload (in-flight count, passive
//! health, idle upstream connections, metric handles) lives in
//! [`BackendState`], keyed by (pool, address) in the [`Registry`] and shared
//! by every table version in which the backend persists. It is all atomics.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU8, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use metrics::Counter;
use serde::Serialize;
use tandem_core::health::HealthState;
use tandem_core::lb::{Balancer, Endpoint, select_tier};
use tandem_core::outlier::{self, OutlierState, Transition};
use tandem_core::routing::RouteTable;
use tandem_core::traffic::{FailureKind, LATENCY_BUCKETS, bucket_of};
use tandem_core::{
    AdminState, Backend, BackendAddr, BackendRole, PoolConfig, PoolName, Revision, Snapshot,
};
use tandem_telemetry::LatencyHistogram;

use crate::clock;
use crate::sampling::Sampling;
use crate::upstream::{ConnPool, UpstreamTls};

// === where a configuration came from ===

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Source {
    ControlPlane,
    Disk,
}

impl Source {
    pub fn as_str(self) -> &'static str {
        match self {
            Source::ControlPlane => "control plane",
            Source::Disk => "disk",
        }
    }
}

// === Table ===

/// Where a route sends a request, and what it asks of HTTPS.
#[derive(Debug, Clone)]
pub struct RouteTarget {
    /// Index into [`Table::pools`].
    pub pool: usize,
    /// Index into [`Table::declared_routes`].
    pub route: usize,
    /// Plain-HTTP requests get a 308 to https.
    pub redirect_https: bool,
    /// `Strict-Transport-Security` for answers over TLS.
    pub hsts: Option<http::HeaderValue>,
}

pub struct Table {
    pub revision: Revision,
    pub source: Source,
    pub routes: RouteTable<RouteTarget>,
    pub pools: Vec<PoolRt>,
    /// The declared routes, for /config.
    pub declared_routes: Vec<tandem_core::Route>,
}

pub struct PoolRt {
    pub config: PoolConfig,
    pub backends: Vec<BackendRt>,
    pub balancer: Balancer,
    pub state: Arc<PoolState>,
    /// Trace ids below this are sampled (see [`crate::forward::span`]).
    pub trace_threshold: u64,
}

/// One backend as this table version declares it, with its shared state.
pub struct BackendRt {
    pub declared: Backend,
    pub state: Arc<BackendState>,
}

/// Counters of a pool shared across table versions.
pub struct PoolState {
    pub name: PoolName,
    /// Round-robin position: shared so a reload does not restart the cycle.
    pub cursor: AtomicU64,
    /// Requests being handled (the retry budget is a share of these).
    pub active: AtomicU64,
    /// Retries being attempted right now.
    pub retrying: AtomicU64,
    /// Request durations (see [`tandem_telemetry::histogram`]).
    pub latency: LatencyHistogram,
    pub retries: Counter,
    pub budget_exhausted: Counter,
    pub no_backend: Counter,
    pub timeouts: Counter,
    pub connect_failures: Counter,
    /// Requests sent again on a fresh connection after a kept-alive one
    /// turned out stale (not counted against the backend).
    pub resends: Counter,
    /// Clients that stopped sending their body (408).
    pub client_timeouts: Counter,
    /// Bodies over the pool's limit (413).
    pub too_large: Counter,
}

/// A backend's state shared across table versions.
pub struct BackendState {
    pub pool: PoolName,
    pub address: BackendAddr,
    /// The socket address when the backend is an IP literal (no DNS).
    pub socket_addr: Option<SocketAddr>,
    pub in_flight: AtomicU64,
    /// [`OutlierState`] packed into a u64.
    pub outlier: AtomicU64,
    /// Active health decided by the control plane ([`HealthState`] as u8).
    pub health: AtomicU8,
    pub conns: ConnPool,
    /// TLS to this backend, when its pool speaks TLS (fixed for the
    /// state's life: changed settings make a new state).
    pub tls: Option<UpstreamTls>,
    /// Responses by status class: 1xx..5xx.
    pub responses: [Counter; 5],
    pub failures: Counter,
    pub ejections: Counter,
    /// What the control plane is told (see [`crate::traffic`]).
    pub traffic: TrafficCounters,
}

/// A backend's answers, failed tries and latencies since it appeared:
/// relaxed atomic adds on the request path, read every few seconds by the
/// traffic sampler.
#[derive(Debug, Default)]
pub struct TrafficCounters {
    /// By status class, 1xx..5xx.
    pub responses: [AtomicU64; 5],
    /// By [`FailureKind`].
    pub failures: [AtomicU64; 4],
    /// Time to each answer's head, per bucket of
    /// [`tandem_core::traffic::LATENCY_BOUNDS_US`].
    pub latency: [AtomicU64; LATENCY_BUCKETS],
}

impl TrafficCounters {
    /// An answer of status class `class` (0: 1xx .. 4: 5xx) after `took`.
    pub fn answered(&self, class: usize, took: std::time::Duration) {
        self.responses[class].fetch_add(1, Ordering::Relaxed);
        let us = u64::try_from(took.as_micros()).unwrap_or(u64::MAX);
        self.latency[bucket_of(us)].fetch_add(1, Ordering::Relaxed);
    }

    pub fn failed(&self, kind: FailureKind) {
        self.failures[kind as usize].fetch_add(1, Ordering::Relaxed);
    }
}

impl BackendState {
    pub fn outlier_state(&self) -> OutlierState {
        OutlierState::from_bits(self.outlier.load(Ordering::Relaxed))
    }

    pub fn is_ejected(&self, now_ms: u64) -> bool {
        self.outlier_state().is_ejected(now_ms)
    }

    /// The agents saw this backend recover: a local ejection ends now
    /// (see [`OutlierState::on_active_recovery`]).
    fn lift_ejection(&self, now_ms: u64) {
        let before = self
            .outlier
            .fetch_update(Ordering::AcqRel, Ordering::Relaxed, |bits| {
                let s = OutlierState::from_bits(bits);
                let next = s.on_active_recovery(now_ms);
                (next != s).then(|| next.to_bits())
            });
        if let Ok(bits) = before
            && OutlierState::from_bits(bits).is_ejected(now_ms)
        {
            tracing::info!(pool = %self.pool, backend = %self.address, "agents say healthy again: local ejection lifted");
        }
    }

    pub fn health(&self) -> HealthState {
        health_from_u8(self.health.load(Ordering::Relaxed))
    }

    /// Neither ejected locally nor marked unhealthy by the agents.
    pub fn usable(&self, now_ms: u64) -> bool {
        self.health().is_usable() && !self.is_ejected(now_ms)
    }
}

fn health_to_u8(h: HealthState) -> u8 {
    match h {
        HealthState::Unknown => 0,
        HealthState::Healthy => 1,
        HealthState::Unhealthy => 2,
    }
}

fn health_from_u8(v: u8) -> HealthState {
    match v {
        1 => HealthState::Healthy,
        2 => HealthState::Unhealthy,
        _ => HealthState::Unknown,
    }
}

impl Endpoint for BackendRt {
    fn weight(&self) -> u32 {
        self.declared.weight.get()
    }
    fn role(&self) -> BackendRole {
        self.declared.role
    }
    fn admin_state(&self) -> AdminState {
        self.declared.admin_state
    }
    fn healthy(&self) -> bool {
        self.state.usable(clock::now_ms())
    }
    fn in_flight(&self) -> u64 {
        self.state.in_flight.load(Ordering::Relaxed)
    }
    fn key(&self) -> &str {
        self.declared.address.as_str()
    }
    /// Known to pass, not merely not known to fail: `single_active` never
    /// sends to a member whose check has not passed yet.
    fn passes_check(&self) -> bool {
        self.state.health() == HealthState::Healthy
    }
    fn order(&self) -> u32 {
        self.declared.order
    }
}

impl PoolRt {
    /// Records the outcome of one try on backend `i` for passive health.
    pub fn record(&self, i: usize, success: bool) {
        let b = &self.backends[i].state;
        let spec = &self.config.outlier;
        let now = clock::now_ms();
        let mut cur = b.outlier.load(Ordering::Relaxed);
        // A CAS loop: concurrent outcomes of the same backend all count.
        for _ in 0..8 {
            let s = OutlierState::from_bits(cur);
            let (next, transition) = if success {
                (s.on_success(now, spec), Transition::None)
            } else {
                let reaching = u32::from(s.consecutive_failures) + 1 >= spec.consecutive_failures;
                let may =
                    reaching && outlier::may_eject(spec, self.ejected(now), self.backends.len());
                s.on_failure(now, spec, may)
            };
            if next == s {
                return;
            }
            match b.outlier.compare_exchange_weak(
                cur,
                next.to_bits(),
                Ordering::AcqRel,
                Ordering::Relaxed,
            ) {
                Ok(_) => {
                    match transition {
                        Transition::Ejected { until_ms } => {
                            b.ejections.increment(1);
                            tracing::warn!(
                                pool = %self.config.name,
                                backend = %b.address,
                                ejected_for_ms = until_ms.saturating_sub(now),
                                ejections_in_a_row = next.ejections,
                                "backend ejected after consecutive failures"
                            );
                        }
                        Transition::EjectionRefused => tracing::debug!(
                            pool = %self.config.name,
                            backend = %b.address,
                            "ejection refused: the pool is at its max ejected percent"
                        ),
                        Transition::None => {}
                    }
                    return;
                }
                Err(actual) => cur = actual,
            }
        }
    }

    fn ejected(&self, now_ms: u64) -> usize {
        self.backends
            .iter()
            .filter(|b| b.state.is_ejected(now_ms))
            .count()
    }
}

/// What a pool serves from right now, as this proxy sees it.
pub struct Serving {
    /// The tier picks choose from (`None`: nothing may take a request).
    pub tier: Option<tandem_core::lb::Tier>,
    pub panic: bool,
    /// Enabled primaries.
    pub primaries: u64,
    /// Enabled primaries neither unhealthy nor ejected.
    pub usable_primaries: u64,
}

impl PoolRt {
    pub fn serving(&self) -> Serving {
        let tier = if self.config.policy == tandem_core::LbPolicy::SingleActive {
            tandem_core::lb::single_active_tier(&self.backends)
        } else {
            select_tier(&self.backends, self.config.panic_threshold_percent)
        };
        let primaries = self.backends.iter().filter(|b| {
            b.declared.role == BackendRole::Primary && b.declared.admin_state == AdminState::Enabled
        });
        Serving {
            tier,
            panic: tier.is_some_and(|t| t.is_panic()),
            primaries: primaries.clone().count() as u64,
            usable_primaries: primaries.filter(|b| b.healthy()).count() as u64,
        }
    }
}

// === Registry ===

/// Shared state by pool and by (pool, address). Only table builds touch the
/// locks; the request path reads the `Arc`s the table holds.
#[derive(Default)]
pub struct Registry {
    pools: Mutex<HashMap<PoolName, Arc<PoolState>>>,
    backends: Mutex<HashMap<(PoolName, BackendAddr), Arc<BackendState>>>,
    /// The latest active-health states, also for backends not (yet) in
    /// the configuration.
    health: Mutex<HashMap<(PoolName, BackendAddr), HealthState>>,
    /// Why the agents decided each backend's state, for `/explain`.
    notes: Mutex<HashMap<(PoolName, BackendAddr), HealthNote>>,
    /// Each TLS pool's client configuration with the settings it was built
    /// from: kept while they stay the same, so its session cache lives on.
    backend_tls: Mutex<HashMap<PoolName, BackendTlsConfig>>,
    pub upstream_max_idle: usize,
    /// The share of each pool's requests traced.
    pub sampling: Sampling,
}

type BackendTlsConfig = (
    tandem_core::BackendTls,
    Result<Arc<rustls::ClientConfig>, String>,
);

/// The agents' reason for a backend's state, and since when.
#[derive(Debug, Clone, Default)]
pub struct HealthNote {
    pub reason: String,
    pub since_unix_ms: u64,
}

impl Registry {
    pub fn new(upstream_max_idle: usize) -> Self {
        Self {
            upstream_max_idle,
            ..Default::default()
        }
    }

    pub fn with_sampling(self, sampling: Sampling) -> Self {
        Self { sampling, ..self }
    }

    /// Applies committed health states; `full` replaces all of them.
    pub fn apply_health(&self, full: bool, states: Vec<(PoolName, BackendAddr, HealthState)>) {
        let mut health = self.health.lock().unwrap_or_else(|p| p.into_inner());
        let backends = self.backends.lock().unwrap_or_else(|p| p.into_inner());
        // What the agents said before, to see recoveries in a full update too.
        let previous = if full {
            std::mem::take(&mut *health)
        } else {
            HashMap::new()
        };
        if full {
            for b in backends.values() {
                b.health
                    .store(health_to_u8(HealthState::Unknown), Ordering::Relaxed);
            }
        }
        let now = clock::now_ms();
        for (pool, address, state) in states {
            let key = (pool, address);
            let was = health
                .insert(key.clone(), state)
                .or_else(|| previous.get(&key).copied());
            if let Some(b) = backends.get(&key) {
                b.health.store(health_to_u8(state), Ordering::Relaxed);
                if was == Some(HealthState::Unhealthy) && state == HealthState::Healthy {
                    b.lift_ejection(now);
                }
            }
        }
    }

    /// Keeps the agents' reasons for the states of an update (`full`
    /// replaces all of them).
    pub fn note_health(&self, full: bool, notes: Vec<((PoolName, BackendAddr), HealthNote)>) {
        let mut kept = self.notes.lock().unwrap_or_else(|p| p.into_inner());
        if full {
            kept.clear();
        }
        kept.extend(notes);
    }

    /// The agents' reason for a backend's state, if they gave one.
    pub fn health_note(&self, pool: &PoolName, address: &BackendAddr) -> Option<HealthNote> {
        let kept = self.notes.lock().unwrap_or_else(|p| p.into_inner());
        kept.get(&(pool.clone(), address.clone())).cloned()
    }

    /// Builds the table for `snapshot`, reusing the state of pools and
    /// backends that persist and forgetting the others.
    pub fn build(&self, snapshot: &Snapshot, source: Source) -> Table {
        let mut pool_states = self.pools.lock().unwrap_or_else(|p| p.into_inner());
        let mut backend_states = self.backends.lock().unwrap_or_else(|p| p.into_inner());
        let health = self.health.lock().unwrap_or_else(|p| p.into_inner());
        let mut tls_configs = self.backend_tls.lock().unwrap_or_else(|p| p.into_inner());
        pool_states.retain(|name, _| snapshot.pools.contains_key(name));
        // A backend whose pool's TLS settings changed starts afresh: its
        // pooled connections were made with the old ones.
        backend_states.retain(|(pool, addr), state| {
            snapshot.pools.get(pool).is_some_and(|p| {
                p.backend(addr).is_some()
                    && state.tls.as_ref().map(|t| &t.declared) == p.config.backend_tls.as_ref()
            })
        });
        tls_configs.retain(|name, (declared, _)| {
            snapshot
                .pools
                .get(name)
                .and_then(|p| p.config.backend_tls.as_ref())
                == Some(declared)
        });
        for (name, pool) in &snapshot.pools {
            if let Some(declared) = &pool.config.backend_tls {
                tls_configs.entry(name.clone()).or_insert_with(|| {
                    let config = tandem_tls::client::client_config(declared)
                        .map(Arc::new)
                        .map_err(|e| format!("pool {name}: backend_tls.{e}"));
                    (declared.clone(), config)
                });
            }
        }

        let mut index = HashMap::new();
        let mut pools = Vec::with_capacity(snapshot.pools.len());
        for (name, pool) in &snapshot.pools {
            let state = pool_states
                .entry(name.clone())
                .or_insert_with(|| Arc::new(PoolState::new(name.clone())))
                .clone();
            let backends: Vec<BackendRt> = pool
                .backends
                .iter()
                .map(|b| BackendRt {
                    declared: b.clone(),
                    state: backend_states
                        .entry((name.clone(), b.address.clone()))
                        .or_insert_with(|| {
                            let mut state = BackendState::new(
                                name.clone(),
                                b.address.clone(),
                                self.upstream_max_idle,
                            );
                            state.tls = tls_configs.get(name).map(|(declared, config)| {
                                UpstreamTls::new(name, &b.address, declared, config)
                            });
                            if let Some(h) = health.get(&(name.clone(), b.address.clone())) {
                                state.health.store(health_to_u8(*h), Ordering::Relaxed);
                            }
                            Arc::new(state)
                        })
                        .clone(),
                })
                .collect();
            let balancer = Balancer::new(
                pool.config.policy,
                &backends,
                pool.config.panic_threshold_percent,
            );
            index.insert(name.clone(), pools.len());
            pools.push(PoolRt {
                config: pool.config.clone(),
                backends,
                balancer,
                state,
                trace_threshold: self.sampling.for_pool(name).threshold(),
            });
        }
        let routes = RouteTable::new(snapshot.routes.iter().enumerate().filter_map(|(n, r)| {
            let target = RouteTarget {
                pool: *index.get(&r.pool)?,
                route: n,
                redirect_https: r.redirect_https,
                hsts: (r.hsts_max_age_s > 0).then(|| {
                    http::HeaderValue::try_from(format!("max-age={}", r.hsts_max_age_s))
                        .expect("digits are a valid field value")
                }),
            };
            Some((r.host.clone(), r.path_prefix.clone(), target))
        }));
        Table {
            revision: snapshot.revision,
            source,
            routes,
            pools,
            declared_routes: snapshot.routes.clone(),
        }
    }
}

impl PoolState {
    #[cfg(test)]
    pub fn new_for_test(name: PoolName) -> Self {
        Self::new(name)
    }

    fn new(name: PoolName) -> Self {
        let pool = name.to_string();
        Self {
            cursor: AtomicU64::new(rand::random::<u32>().into()),
            active: AtomicU64::new(0),
            retrying: AtomicU64::new(0),
            latency: LatencyHistogram::default(),
            retries: metrics::counter!("tandem_proxy_retries_total", "pool" => pool.clone()),
            budget_exhausted: metrics::counter!("tandem_proxy_retry_budget_exhausted_total", "pool" => pool.clone()),
            no_backend: metrics::counter!("tandem_proxy_local_replies_total", "pool" => pool.clone(), "reason" => "no_backend"),
            timeouts: metrics::counter!("tandem_proxy_local_replies_total", "pool" => pool.clone(), "reason" => "upstream_timeout"),
            connect_failures: metrics::counter!("tandem_proxy_local_replies_total", "pool" => pool.clone(), "reason" => "upstream_unreachable"),
            client_timeouts: metrics::counter!("tandem_proxy_local_replies_total", "pool" => pool.clone(), "reason" => "client_timeout"),
            too_large: metrics::counter!("tandem_proxy_local_replies_total", "pool" => pool.clone(), "reason" => "body_too_large"),
            resends: metrics::counter!("tandem_proxy_upstream_resends_total", "pool" => pool),
            name,
        }
    }
}

impl BackendState {
    fn new(pool: PoolName, address: BackendAddr, max_idle: usize) -> Self {
        let (p, b) = (pool.to_string(), address.to_string());
        let class = |c: &'static str| metrics::counter!("tandem_proxy_requests_total", "pool" => p.clone(), "backend" => b.clone(), "status" => c);
        Self {
            socket_addr: address.as_str().parse().ok(),
            in_flight: AtomicU64::new(0),
            outlier: AtomicU64::new(0),
            health: AtomicU8::new(0),
            conns: ConnPool::new(max_idle),
            tls: None,
            responses: [
                class("1xx"),
                class("2xx"),
                class("3xx"),
                class("4xx"),
                class("5xx"),
            ],
            failures: metrics::counter!("tandem_proxy_upstream_failures_total", "pool" => p.clone(), "backend" => b.clone()),
            ejections: metrics::counter!("tandem_proxy_ejections_total", "pool" => p, "backend" => b),
            traffic: TrafficCounters::default(),
            pool,
            address,
        }
    }
}

// === /config ===

#[derive(Serialize)]
pub struct TableView {
    pub revision: u64,
    pub source: Source,
    pub routes: Vec<RouteView>,
    pub pools: Vec<PoolView>,
}

#[derive(Serialize)]
pub struct RouteView {
    pub host: String,
    pub path_prefix: String,
    pub pool: String,
}

#[derive(Serialize)]
pub struct PoolView {
    pub name: String,
    pub policy: &'static str,
    /// Which backends take traffic now (primaries, backups, panic...).
    pub serving: &'static str,
    pub active_requests: u64,
    pub config: PoolConfig,
    pub backends: Vec<BackendView>,
}

#[derive(Serialize)]
pub struct BackendView {
    pub address: String,
    pub weight: u32,
    pub role: &'static str,
    pub admin_state: &'static str,
    /// Active health from the agents: unknown, healthy or unhealthy.
    pub health: &'static str,
    pub ejected: bool,
    /// Milliseconds until the ejection ends (0 when not ejected).
    pub ejected_for_ms: u64,
    pub consecutive_failures: u16,
    pub ejections_in_a_row: u8,
    pub in_flight: u64,
    pub idle_connections: usize,
    /// The last failed TLS handshake with it (pools with TLS to backends).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tls_failure: Option<String>,
}

impl Table {
    pub fn view(&self) -> TableView {
        let now = clock::now_ms();
        TableView {
            revision: self.revision.0,
            source: self.source,
            routes: self
                .declared_routes
                .iter()
                .map(|r| RouteView {
                    host: r.host.to_string(),
                    path_prefix: r.path_prefix.to_string(),
                    pool: r.pool.to_string(),
                })
                .collect(),
            pools: self
                .pools
                .iter()
                .map(|p| PoolView {
                    name: p.config.name.to_string(),
                    policy: p.config.policy.as_str(),
                    serving: select_tier(&p.backends, p.config.panic_threshold_percent)
                        .map_or("nothing", |t| t.as_str()),
                    active_requests: p.state.active.load(Ordering::Relaxed),
                    config: p.config.clone(),
                    backends: p
                        .backends
                        .iter()
                        .map(|b| {
                            let o = b.state.outlier_state();
                            BackendView {
                                address: b.declared.address.to_string(),
                                weight: b.declared.weight.get(),
                                role: b.declared.role.as_str(),
                                admin_state: b.declared.admin_state.as_str(),
                                health: b.state.health().as_str(),
                                ejected: o.is_ejected(now),
                                ejected_for_ms: o.ejected_until_ms.saturating_sub(now),
                                consecutive_failures: o.consecutive_failures,
                                ejections_in_a_row: o.ejections,
                                in_flight: b.state.in_flight.load(Ordering::Relaxed),
                                idle_connections: b.state.conns.idle(),
                                tls_failure: b
                                    .state
                                    .tls
                                    .as_ref()
                                    .and_then(UpstreamTls::last_failure),
                            }
                        })
                        .collect(),
                })
                .collect(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tandem_core::{HostMatch, LbPolicy, PathPrefix, Pool, Route};

    fn snapshot(revision: u64, addrs: &[&str]) -> Snapshot {
        let name = PoolName::new("shop").unwrap();
        let mut config = PoolConfig::new(name.clone());
        config.policy = LbPolicy::LeastConnections;
        let mut s = Snapshot {
            revision: Revision(revision),
            ..Default::default()
        };
        s.pools.insert(
            name.clone(),
            Pool {
                config,
                backends: addrs
                    .iter()
                    .map(|a| Backend::new(BackendAddr::new(a).unwrap()))
                    .collect(),
                revision: Revision(revision),
            },
        );
        s.routes.push(Route {
            host: HostMatch::Any,
            path_prefix: PathPrefix::new("/").unwrap(),
            pool: name,
            redirect_https: false,
            hsts_max_age_s: 0,
        });
        s
    }

    #[test]
    fn a_change_of_backend_tls_settings_gives_the_backends_new_state() {
        let reg = Registry::new(8);
        let plain = snapshot(1, &["10.0.0.1:80"]);
        let state = |t: &Table| t.pools[0].backends[0].state.clone();
        let t1 = reg.build(&plain, Source::ControlPlane);
        assert!(state(&t1).tls.is_none());
        // The same settings keep the state (and its pooled connections).
        let t2 = reg.build(&plain, Source::ControlPlane);
        assert!(Arc::ptr_eq(&state(&t1), &state(&t2)));

        let mut tls = plain.clone();
        let pool = tls.pools.values_mut().next().unwrap();
        pool.config.backend_tls = Some(tandem_core::BackendTls {
            insecure: true,
            sni: "api.internal".into(),
            ..Default::default()
        });
        let t3 = reg.build(&tls, Source::ControlPlane);
        assert!(
            !Arc::ptr_eq(&state(&t1), &state(&t3)),
            "no plain connection serves TLS"
        );
        assert!(state(&t3).tls.is_some());
        let t4 = reg.build(&tls, Source::ControlPlane);
        assert!(Arc::ptr_eq(&state(&t3), &state(&t4)));

        let mut renamed = tls.clone();
        let pool = renamed.pools.values_mut().next().unwrap();
        pool.config.backend_tls.as_mut().unwrap().sni = "other.internal".into();
        let t5 = reg.build(&renamed, Source::ControlPlane);
        assert!(!Arc::ptr_eq(&state(&t3), &state(&t5)));
        let t6 = reg.build(&plain, Source::ControlPlane);
        assert!(state(&t6).tls.is_none(), "and back to plain");
    }

    #[test]
    fn backend_state_survives_reloads_and_is_forgotten_on_removal() {
        let registry = Registry::new(4);
        let t1 = registry.build(&snapshot(1, &["10.0.0.1:80", "10.0.0.2:80"]), Source::Disk);
        t1.pools[0].backends[0]
            .state
            .in_flight
            .store(7, Ordering::Relaxed);
        let t2 = registry.build(
            &snapshot(2, &["10.0.0.1:80", "10.0.0.3:80"]),
            Source::ControlPlane,
        );
        assert!(Arc::ptr_eq(
            &t1.pools[0].backends[0].state,
            &t2.pools[0].backends[0].state
        ));
        assert_eq!(
            t2.pools[0].backends[0].in_flight(),
            7,
            "in flight across versions"
        );
        assert!(
            Arc::ptr_eq(&t1.pools[0].state, &t2.pools[0].state),
            "the cursor persists"
        );
        let t = t2.routes.lookup("any.host", "/x");
        assert_eq!(t.map(|t| (t.pool, t.route)), Some((0, 0)));
        // 10.0.0.2 left: a later return starts afresh.
        let t3 = registry.build(
            &snapshot(3, &["10.0.0.1:80", "10.0.0.2:80"]),
            Source::ControlPlane,
        );
        assert!(!Arc::ptr_eq(
            &t1.pools[0].backends[1].state,
            &t3.pools[0].backends[1].state
        ));
    }

    #[test]
    fn agents_health_verdicts_take_backends_out() {
        let registry = Registry::new(4);
        let pool = PoolName::new("shop").unwrap();
        let a = BackendAddr::new("10.0.0.1:80").unwrap();
        let b = BackendAddr::new("10.0.0.2:80").unwrap();
        // A verdict that arrives before the backend is configured is kept.
        registry.apply_health(
            false,
            vec![(pool.clone(), b.clone(), HealthState::Unhealthy)],
        );
        let t = registry.build(&snapshot(1, &["10.0.0.1:80", "10.0.0.2:80"]), Source::Disk);
        assert!(t.pools[0].backends[0].healthy());
        assert!(!t.pools[0].backends[1].healthy());
        registry.apply_health(
            false,
            vec![(pool.clone(), a.clone(), HealthState::Unhealthy)],
        );
        assert!(
            !t.pools[0].backends[0].healthy(),
            "applies to the live table"
        );
        // A full update replaces everything: unmentioned backends are unknown.
        registry.apply_health(true, vec![(pool, a, HealthState::Healthy)]);
        assert!(t.pools[0].backends[0].healthy() && t.pools[0].backends[1].healthy());
    }

    #[test]
    fn consecutive_failures_eject_within_the_pool_cap() {
        let registry = Registry::new(4);
        let mut s = snapshot(1, &["10.0.0.1:80", "10.0.0.2:80"]);
        let shop = PoolName::new("shop").unwrap();
        if let Some(p) = s.pools.get_mut(&shop) {
            p.config.outlier.consecutive_failures = 2;
            p.config.outlier.max_ejected_percent = 50;
        }
        let t = registry.build(&s, Source::Disk);
        let pool = &t.pools[0];
        pool.record(0, false);
        assert!(pool.backends[0].healthy());
        pool.record(0, false);
        assert!(!pool.backends[0].healthy(), "ejected");
        // The second would take the pool past 50%: refused.
        pool.record(1, false);
        pool.record(1, false);
        assert!(pool.backends[1].healthy());
    }

    #[test]
    fn a_recovery_seen_by_the_agents_lifts_a_local_ejection() {
        let registry = Registry::new(4);
        let mut s = snapshot(1, &["10.0.0.1:80", "10.0.0.2:80"]);
        let shop = PoolName::new("shop").unwrap();
        if let Some(p) = s.pools.get_mut(&shop) {
            p.config.outlier.consecutive_failures = 2;
            p.config.outlier.base_ejection_ms = 60_000;
        }
        let t = registry.build(&s, Source::Disk);
        let a = BackendAddr::new("10.0.0.1:80").unwrap();
        let eject = || {
            t.pools[0].record(0, false);
            t.pools[0].record(0, false);
            assert!(!t.pools[0].backends[0].healthy(), "ejected for a minute");
        };
        let say = |full: bool, h: HealthState| {
            registry.apply_health(full, vec![(shop.clone(), a.clone(), h)]);
        };
        // Healthy all along: the agents saw no recovery, the ejection stands.
        say(false, HealthState::Healthy);
        eject();
        say(false, HealthState::Healthy);
        assert!(!t.pools[0].backends[0].healthy());
        // Down, then back up: the ejection is lifted.
        say(false, HealthState::Unhealthy);
        say(false, HealthState::Healthy);
        assert!(
            t.pools[0].backends[0].healthy(),
            "back with the agents' verdict"
        );
        // The same through a full update.
        eject();
        say(true, HealthState::Unhealthy);
        say(true, HealthState::Healthy);
        assert!(t.pools[0].backends[0].healthy());
    }
}
