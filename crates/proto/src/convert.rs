//! Conversions between `tandem.v1` messages and `tandem-core` types.
//!
//! Inbound conversions validate and name the offending field the way a
//! client wrote it (`pool.health_check.interval_ms`); outbound ones cannot
//! fail.

use tandem_core as core;
use tandem_core::health::{AgentView, BackendHealth, BackendKey, HealthState};
use tandem_core::traffic::{BackendTraffic, MergedTraffic};
use tandem_core::{
    AdminState, BackendAddr, BackendRole, HealthCheckKind, HostMatch, LbPolicy, ListenAddr,
    OnUnhealthy, PathPrefix, PoolConfig, PoolName, Revision, ValidationError, Weight,
};

use crate::v1;

/// Inbound messages that break a rule.
pub type ConvertError = ValidationError;

// === enums ===

pub fn policy_to_proto(p: LbPolicy) -> v1::LbPolicy {
    match p {
        LbPolicy::RoundRobin => v1::LbPolicy::RoundRobin,
        LbPolicy::LeastConnections => v1::LbPolicy::LeastConnections,
        LbPolicy::IpHash => v1::LbPolicy::IpHash,
        LbPolicy::RandomTwoChoices => v1::LbPolicy::RandomTwoChoices,
        LbPolicy::SingleActive => v1::LbPolicy::SingleActive,
    }
}

/// `None` for UNSPECIFIED (the caller keeps its current or default value).
pub fn policy_from_proto(v: i32, field: &str) -> Result<Option<LbPolicy>, ConvertError> {
    match v1::LbPolicy::try_from(v) {
        Ok(v1::LbPolicy::Unspecified) => Ok(None),
        Ok(v1::LbPolicy::RoundRobin) => Ok(Some(LbPolicy::RoundRobin)),
        Ok(v1::LbPolicy::LeastConnections) => Ok(Some(LbPolicy::LeastConnections)),
        Ok(v1::LbPolicy::IpHash) => Ok(Some(LbPolicy::IpHash)),
        Ok(v1::LbPolicy::RandomTwoChoices) => Ok(Some(LbPolicy::RandomTwoChoices)),
        Ok(v1::LbPolicy::SingleActive) => Ok(Some(LbPolicy::SingleActive)),
        Err(_) => Err(unknown_enum(field, v)),
    }
}

pub fn role_to_proto(r: BackendRole) -> v1::BackendRole {
    match r {
        BackendRole::Primary => v1::BackendRole::Primary,
        BackendRole::Backup => v1::BackendRole::Backup,
    }
}

pub fn role_from_proto(v: i32, field: &str) -> Result<Option<BackendRole>, ConvertError> {
    match v1::BackendRole::try_from(v) {
        Ok(v1::BackendRole::Unspecified) => Ok(None),
        Ok(v1::BackendRole::Primary) => Ok(Some(BackendRole::Primary)),
        Ok(v1::BackendRole::Backup) => Ok(Some(BackendRole::Backup)),
        Err(_) => Err(unknown_enum(field, v)),
    }
}

pub fn admin_state_to_proto(s: AdminState) -> v1::AdminState {
    match s {
        AdminState::Enabled => v1::AdminState::Enabled,
        AdminState::Draining => v1::AdminState::Draining,
        AdminState::Disabled => v1::AdminState::Disabled,
    }
}

pub fn admin_state_from_proto(v: i32, field: &str) -> Result<Option<AdminState>, ConvertError> {
    match v1::AdminState::try_from(v) {
        Ok(v1::AdminState::Unspecified) => Ok(None),
        Ok(v1::AdminState::Enabled) => Ok(Some(AdminState::Enabled)),
        Ok(v1::AdminState::Draining) => Ok(Some(AdminState::Draining)),
        Ok(v1::AdminState::Disabled) => Ok(Some(AdminState::Disabled)),
        Err(_) => Err(unknown_enum(field, v)),
    }
}

fn kind_to_proto(k: HealthCheckKind) -> v1::HealthCheckKind {
    match k {
        HealthCheckKind::Http => v1::HealthCheckKind::Http,
        HealthCheckKind::Tcp => v1::HealthCheckKind::Tcp,
    }
}

fn kind_from_proto(v: i32, field: &str) -> Result<Option<HealthCheckKind>, ConvertError> {
    match v1::HealthCheckKind::try_from(v) {
        Ok(v1::HealthCheckKind::Unspecified) => Ok(None),
        Ok(v1::HealthCheckKind::Http) => Ok(Some(HealthCheckKind::Http)),
        Ok(v1::HealthCheckKind::Tcp) => Ok(Some(HealthCheckKind::Tcp)),
        Err(_) => Err(unknown_enum(field, v)),
    }
}

pub fn on_unhealthy_to_proto(o: Option<OnUnhealthy>) -> v1::OnUnhealthy {
    match o {
        None => v1::OnUnhealthy::Unspecified,
        Some(OnUnhealthy::Close) => v1::OnUnhealthy::Close,
        Some(OnUnhealthy::Keep) => v1::OnUnhealthy::Keep,
    }
}

/// UNSPECIFIED is a value here: "by policy".
pub fn on_unhealthy_from_proto(v: i32, field: &str) -> Result<Option<OnUnhealthy>, ConvertError> {
    match v1::OnUnhealthy::try_from(v) {
        Ok(v1::OnUnhealthy::Unspecified) => Ok(None),
        Ok(v1::OnUnhealthy::Close) => Ok(Some(OnUnhealthy::Close)),
        Ok(v1::OnUnhealthy::Keep) => Ok(Some(OnUnhealthy::Keep)),
        Err(_) => Err(unknown_enum(field, v)),
    }
}

fn unknown_enum(field: &str, v: i32) -> ConvertError {
    ValidationError::new(field, format!("unknown enum value {v}"))
}

// === pools ===

/// A pool's settings as a message (without backends or revision).
pub fn pool_config_to_proto(c: &PoolConfig) -> v1::Pool {
    let h = &c.health_check;
    v1::Pool {
        name: c.name.to_string(),
        policy: policy_to_proto(c.policy).into(),
        health_check: Some(v1::HealthCheck {
            kind: Some(kind_to_proto(h.kind).into()),
            path: Some(h.path.clone()),
            method: Some(h.method.clone()),
            host: Some(h.host.clone()),
            expected_status_min: Some(h.expected_status_min.into()),
            expected_status_max: Some(h.expected_status_max.into()),
            interval_ms: Some(h.interval_ms),
            timeout_ms: Some(h.timeout_ms),
            rise: Some(h.rise),
            fall: Some(h.fall),
            port: Some(h.port.map_or(0, u32::from)),
        }),
        connect_timeout_ms: Some(c.connect_timeout_ms),
        request_timeout_ms: Some(c.request_timeout_ms),
        retry: Some(v1::RetryPolicy {
            attempts: Some(c.retry.attempts),
            per_try_timeout_ms: Some(c.retry.per_try_timeout_ms),
            budget_percent: Some(c.retry.budget_percent),
        }),
        outlier: Some(v1::OutlierDetection {
            consecutive_failures: Some(c.outlier.consecutive_failures),
            base_ejection_ms: Some(c.outlier.base_ejection_ms),
            max_ejected_percent: Some(c.outlier.max_ejected_percent),
        }),
        panic_threshold_percent: Some(c.panic_threshold_percent),
        backends: Vec::new(),
        revision: 0,
        tcp: Some(v1::TcpSettings {
            idle_timeout_ms: Some(c.tcp.idle_timeout_ms),
            max_connections: Some(c.tcp.max_connections),
            max_queue: Some(c.tcp.max_queue),
            queue_timeout_ms: Some(c.tcp.queue_timeout_ms),
            on_unhealthy: Some(on_unhealthy_to_proto(c.tcp.on_unhealthy).into()),
            unhealthy_grace_ms: Some(c.tcp.unhealthy_grace_ms),
            proxy_protocol: Some(c.tcp.proxy_protocol),
        }),
        max_request_body_bytes: Some(c.max_request_body_bytes),
        upstream_idle_timeout_ms: Some(c.upstream_idle_timeout_ms),
        tunnel_idle_timeout_ms: Some(c.tunnel_idle_timeout_ms),
        backend_tls: Some(match &c.backend_tls {
            None => v1::BackendTls {
                enabled: Some(false),
                ..Default::default()
            },
            Some(t) => v1::BackendTls {
                enabled: Some(true),
                ca_pem: Some(t.ca_pem.clone()),
                sni: Some(t.sni.clone()),
                insecure: Some(t.insecure),
            },
        }),
        stale: None,
    }
}

pub fn pool_to_proto(p: &core::Pool) -> v1::Pool {
    v1::Pool {
        backends: p.backends.iter().map(backend_to_proto).collect(),
        revision: p.revision.0,
        ..pool_config_to_proto(&p.config)
    }
}

/// The pool name of a request, with the field named as the client sent it.
pub fn pool_name(name: &str, field: &str) -> Result<PoolName, ConvertError> {
    PoolName::new(name).map_err(|e| ValidationError::new(field, e.rule))
}

/// Applies the fields a client set onto `base` (defaults when creating, the
/// current settings when updating) and validates the result. Fields are
/// named under `pool.`.
pub fn pool_config_from_proto(
    mut base: PoolConfig,
    p: &v1::Pool,
) -> Result<PoolConfig, ConvertError> {
    if let Some(policy) = policy_from_proto(p.policy, "pool.policy")? {
        base.policy = policy;
    }
    if let Some(h) = &p.health_check {
        let spec = &mut base.health_check;
        if let Some(kind) = h.kind
            && let Some(kind) = kind_from_proto(kind, "pool.health_check.kind")?
        {
            spec.kind = kind;
        }
        set(&mut spec.path, h.path.clone());
        set(
            &mut spec.method,
            h.method.as_ref().map(|m| m.to_ascii_uppercase()),
        );
        set(&mut spec.host, h.host.clone());
        if let Some(v) = h.expected_status_min {
            spec.expected_status_min = status(v, "pool.health_check.expected_status_min")?;
        }
        if let Some(v) = h.expected_status_max {
            spec.expected_status_max = status(v, "pool.health_check.expected_status_max")?;
        }
        set(&mut spec.interval_ms, h.interval_ms);
        set(&mut spec.timeout_ms, h.timeout_ms);
        set(&mut spec.rise, h.rise);
        set(&mut spec.fall, h.fall);
        if let Some(port) = h.port {
            spec.port = match port {
                0 => None,
                p => Some(u16::try_from(p).map_err(|_| {
                    ValidationError::new(
                        "pool.health_check.port",
                        format!("must be between 1 and 65535 (got {p})"),
                    )
                })?),
            };
        }
    }
    set(&mut base.connect_timeout_ms, p.connect_timeout_ms);
    set(&mut base.request_timeout_ms, p.request_timeout_ms);
    if let Some(r) = &p.retry {
        set(&mut base.retry.attempts, r.attempts);
        set(&mut base.retry.per_try_timeout_ms, r.per_try_timeout_ms);
        set(&mut base.retry.budget_percent, r.budget_percent);
    }
    if let Some(o) = &p.outlier {
        set(
            &mut base.outlier.consecutive_failures,
            o.consecutive_failures,
        );
        set(&mut base.outlier.base_ejection_ms, o.base_ejection_ms);
        set(&mut base.outlier.max_ejected_percent, o.max_ejected_percent);
    }
    set(&mut base.panic_threshold_percent, p.panic_threshold_percent);
    if let Some(t) = &p.tcp {
        let tcp = &mut base.tcp;
        set(&mut tcp.idle_timeout_ms, t.idle_timeout_ms);
        set(&mut tcp.max_connections, t.max_connections);
        set(&mut tcp.max_queue, t.max_queue);
        set(&mut tcp.queue_timeout_ms, t.queue_timeout_ms);
        if let Some(v) = t.on_unhealthy {
            tcp.on_unhealthy = on_unhealthy_from_proto(v, "pool.tcp.on_unhealthy")?;
        }
        set(&mut tcp.unhealthy_grace_ms, t.unhealthy_grace_ms);
        set(&mut tcp.proxy_protocol, t.proxy_protocol);
    }
    set(&mut base.max_request_body_bytes, p.max_request_body_bytes);
    set(
        &mut base.upstream_idle_timeout_ms,
        p.upstream_idle_timeout_ms,
    );
    set(&mut base.tunnel_idle_timeout_ms, p.tunnel_idle_timeout_ms);
    if let Some(t) = &p.backend_tls {
        base.backend_tls = backend_tls_from_proto(base.backend_tls.take(), t);
    }
    base.validate()?;
    Ok(base)
}

/// The fields set in `t` applied onto `current`.
fn backend_tls_from_proto(
    current: Option<core::BackendTls>,
    t: &v1::BackendTls,
) -> Option<core::BackendTls> {
    let on = t.enabled.unwrap_or(
        current.is_some() || t.ca_pem.is_some() || t.sni.is_some() || t.insecure.is_some(),
    );
    if !on {
        return None;
    }
    let mut tls = current.unwrap_or_default();
    if let Some(ca) = &t.ca_pem {
        tls.ca_pem = ca.clone();
        if !ca.is_empty() {
            tls.insecure = false;
        }
    }
    set(&mut tls.sni, t.sni.clone());
    set(&mut tls.insecure, t.insecure);
    if t.insecure == Some(true) && t.ca_pem.is_none() {
        // Verification off: the bundle kept would contradict it.
        tls.ca_pem.clear();
    }
    Some(tls)
}

fn set<T>(slot: &mut T, v: Option<T>) {
    if let Some(v) = v {
        *slot = v;
    }
}

fn status(v: u32, field: &str) -> Result<u16, ConvertError> {
    u16::try_from(v)
        .ok()
        .filter(|s| (100..=599).contains(s))
        .ok_or_else(|| {
            ValidationError::new(field, format!("must be between 100 and 599 (got {v})"))
        })
}

// === backends ===

pub fn backend_to_proto(b: &core::Backend) -> v1::Backend {
    v1::Backend {
        address: b.address.to_string(),
        weight: Some(b.weight.get()),
        role: role_to_proto(b.role).into(),
        admin_state: admin_state_to_proto(b.admin_state).into(),
        order: Some(b.order),
    }
}

/// A backend as a client sends it; unset fields take their defaults. Fields
/// are named under `prefix` (e.g. `backend`).
pub fn backend_from_proto(b: &v1::Backend, prefix: &str) -> Result<core::Backend, ConvertError> {
    let address = BackendAddr::new(&b.address).map_err(|e| e.under(prefix))?;
    let mut backend = core::Backend::new(address);
    if let Some(w) = b.weight {
        backend.weight = Weight::new(w).map_err(|e| e.under(prefix))?;
    }
    if let Some(role) = role_from_proto(b.role, &format!("{prefix}.role"))? {
        backend.role = role;
    }
    if let Some(state) = admin_state_from_proto(b.admin_state, &format!("{prefix}.admin_state"))? {
        backend.admin_state = state;
    }
    backend.order = order(b.order.unwrap_or(0), &format!("{prefix}.order"))?;
    Ok(backend)
}

/// A backend's place in its pool's order: 0 (after the last) to 1,000,000.
pub fn order(v: u32, field: &str) -> Result<u32, ConvertError> {
    if v <= 1_000_000 {
        Ok(v)
    } else {
        Err(ValidationError::new(
            field,
            format!("must be between 0 and 1000000 (got {v})"),
        ))
    }
}

// === routes ===

pub fn route_to_proto(r: &core::Route) -> v1::Route {
    v1::Route {
        host: r.host.to_string(),
        path_prefix: r.path_prefix.to_string(),
        pool: r.pool.to_string(),
        redirect_https: r.redirect_https,
        hsts_max_age_s: r.hsts_max_age_s,
    }
}

pub fn route_from_proto(r: &v1::Route, prefix: &str) -> Result<core::Route, ConvertError> {
    if r.hsts_max_age_s > i32::MAX as u32 {
        return Err(ValidationError::new(
            format!("{prefix}.hsts_max_age_s"),
            format!(
                "must be at most {} seconds (got {})",
                i32::MAX,
                r.hsts_max_age_s
            ),
        ));
    }
    Ok(core::Route {
        host: HostMatch::new(&r.host).map_err(|e| e.under(prefix))?,
        path_prefix: PathPrefix::new(&r.path_prefix).map_err(|e| e.under(prefix))?,
        pool: pool_name(&r.pool, &format!("{prefix}.pool"))?,
        redirect_https: r.redirect_https,
        hsts_max_age_s: r.hsts_max_age_s,
    })
}

pub fn tcp_route_to_proto(r: &core::TcpRoute) -> v1::TcpRoute {
    v1::TcpRoute {
        listen: r.listen.to_string(),
        pool: r.pool.to_string(),
    }
}

pub fn listen_addr(s: &str, field: &str) -> Result<ListenAddr, ConvertError> {
    ListenAddr::new(s).map_err(|e| ValidationError::new(field, e.rule))
}

pub fn tcp_route_from_proto(
    r: &v1::TcpRoute,
    prefix: &str,
) -> Result<core::TcpRoute, ConvertError> {
    Ok(core::TcpRoute {
        listen: listen_addr(&r.listen, &format!("{prefix}.listen"))?,
        pool: pool_name(&r.pool, &format!("{prefix}.pool"))?,
    })
}

// === snapshots and changes ===

pub fn snapshot_to_proto(s: &core::Snapshot) -> v1::Snapshot {
    v1::Snapshot {
        revision: s.revision.0,
        pools: s.pools.values().map(pool_to_proto).collect(),
        routes: s.routes.iter().map(route_to_proto).collect(),
        tcp_routes: s.tcp_routes.iter().map(tcp_route_to_proto).collect(),
        certificates: s.certificates.values().map(certificate_to_proto).collect(),
        store_id: s.store.as_ref().map(|i| i.id.clone()).unwrap_or_default(),
        generation: s.store.as_ref().map_or(0, |i| i.generation),
        stale: None,
    }
}

/// A store identity from its wire form (empty id: unknown).
pub fn store_identity_from_proto(id: &str, generation: u64) -> Option<core::StoreIdentity> {
    (!id.is_empty()).then(|| core::StoreIdentity {
        id: id.to_string(),
        generation,
    })
}

/// A certificate with its key: for Watch streams to proxies only (see
/// [`without_keys`]).
pub fn certificate_to_proto(c: &core::Certificate) -> v1::Certificate {
    v1::Certificate {
        name: c.name.to_string(),
        chain_pem: c.chain_pem.clone(),
        key_pem: c.key_pem.expose().to_owned(),
    }
}

pub fn certificate_from_proto(
    c: &v1::Certificate,
    prefix: &str,
) -> Result<core::Certificate, ConvertError> {
    Ok(core::Certificate {
        name: core::CertName::new(&*c.name).map_err(|e| e.under(prefix))?,
        chain_pem: c.chain_pem.clone(),
        key_pem: core::PrivateKeyPem::new(c.key_pem.clone()),
    })
}

/// Empties every private key in a snapshot message: what any read, and a
/// Watch stream to anything but a proxy, sends.
pub fn snapshot_without_keys(s: &mut v1::Snapshot) {
    for c in &mut s.certificates {
        c.key_pem = String::new();
    }
}

/// Empties the private key a change may carry (see [`snapshot_without_keys`]).
pub fn change_without_keys(c: &mut v1::ConfigChange) {
    if let Some(v1::config_change::Change::CertificateUpserted(cert)) = &mut c.change {
        cert.key_pem = String::new();
    }
}

/// A full pool as the control plane sends it (settings, backends, revision).
pub fn pool_from_proto(p: &v1::Pool) -> Result<core::Pool, ConvertError> {
    let name = pool_name(&p.name, "pool.name")?;
    let config = pool_config_from_proto(PoolConfig::new(name), p)?;
    let mut backends = p
        .backends
        .iter()
        .map(|b| backend_from_proto(b, "pool.backends"))
        .collect::<Result<Vec<_>, _>>()?;
    backends.sort_by(|a, b| a.address.cmp(&b.address));
    Ok(core::Pool {
        config,
        backends,
        revision: Revision(p.revision),
    })
}

pub fn snapshot_from_proto(s: &v1::Snapshot) -> Result<core::Snapshot, ConvertError> {
    let mut snapshot = core::Snapshot {
        revision: Revision(s.revision),
        store: store_identity_from_proto(&s.store_id, s.generation),
        ..Default::default()
    };
    for p in &s.pools {
        let pool = pool_from_proto(p)?;
        snapshot.pools.insert(pool.config.name.clone(), pool);
    }
    snapshot.routes = s
        .routes
        .iter()
        .map(|r| route_from_proto(r, "route"))
        .collect::<Result<_, _>>()?;
    snapshot
        .routes
        .sort_by(|a, b| (&a.host, &a.path_prefix).cmp(&(&b.host, &b.path_prefix)));
    snapshot.tcp_routes = s
        .tcp_routes
        .iter()
        .map(|r| tcp_route_from_proto(r, "tcp_route"))
        .collect::<Result<_, _>>()?;
    snapshot.tcp_routes.sort_by_key(|r| r.listen);
    for c in &s.certificates {
        let cert = certificate_from_proto(c, "certificate")?;
        snapshot.certificates.insert(cert.name.clone(), cert);
    }
    Ok(snapshot)
}

pub fn change_to_proto(c: &core::ConfigChange) -> v1::ConfigChange {
    use v1::config_change::Change;
    let change = match c {
        core::ConfigChange::PoolUpserted(config) => {
            Change::PoolUpserted(pool_config_to_proto(config))
        }
        core::ConfigChange::PoolDeleted { name } => Change::PoolDeleted(name.to_string()),
        core::ConfigChange::BackendUpserted { pool, backend } => {
            Change::BackendUpserted(v1::BackendUpserted {
                pool: pool.to_string(),
                backend: Some(backend_to_proto(backend)),
            })
        }
        core::ConfigChange::BackendRemoved { pool, address } => {
            Change::BackendRemoved(v1::BackendRemoved {
                pool: pool.to_string(),
                address: address.to_string(),
            })
        }
        core::ConfigChange::RouteUpserted(route) => Change::RouteUpserted(route_to_proto(route)),
        core::ConfigChange::RouteDeleted { host, path_prefix } => {
            Change::RouteDeleted(v1::RouteDeleted {
                host: host.to_string(),
                path_prefix: path_prefix.to_string(),
            })
        }
        core::ConfigChange::TcpRouteUpserted(route) => {
            Change::TcpRouteUpserted(tcp_route_to_proto(route))
        }
        core::ConfigChange::TcpRouteDeleted { listen } => {
            Change::TcpRouteDeleted(listen.to_string())
        }
        core::ConfigChange::CertificateUpserted(cert) => {
            Change::CertificateUpserted(certificate_to_proto(cert))
        }
        core::ConfigChange::CertificateDeleted { name } => {
            Change::CertificateDeleted(name.to_string())
        }
    };
    v1::ConfigChange {
        change: Some(change),
    }
}

pub fn change_from_proto(c: &v1::ConfigChange) -> Result<core::ConfigChange, ConvertError> {
    use v1::config_change::Change;
    let change = c
        .change
        .as_ref()
        .ok_or_else(|| ValidationError::new("change", "must be set"))?;
    Ok(match change {
        Change::PoolUpserted(p) => {
            let name = pool_name(&p.name, "pool.name")?;
            core::ConfigChange::PoolUpserted(pool_config_from_proto(PoolConfig::new(name), p)?)
        }
        Change::PoolDeleted(name) => core::ConfigChange::PoolDeleted {
            name: pool_name(name, "pool_deleted")?,
        },
        Change::BackendUpserted(b) => core::ConfigChange::BackendUpserted {
            pool: pool_name(&b.pool, "backend_upserted.pool")?,
            backend: backend_from_proto(
                b.backend.as_ref().ok_or_else(|| {
                    ValidationError::new("backend_upserted.backend", "must be set")
                })?,
                "backend_upserted.backend",
            )?,
        },
        Change::BackendRemoved(b) => core::ConfigChange::BackendRemoved {
            pool: pool_name(&b.pool, "backend_removed.pool")?,
            address: BackendAddr::new(&b.address).map_err(|e| e.under("backend_removed"))?,
        },
        Change::RouteUpserted(r) => {
            core::ConfigChange::RouteUpserted(route_from_proto(r, "route")?)
        }
        Change::RouteDeleted(r) => core::ConfigChange::RouteDeleted {
            host: HostMatch::new(&r.host).map_err(|e| e.under("route_deleted"))?,
            path_prefix: PathPrefix::new(&r.path_prefix).map_err(|e| e.under("route_deleted"))?,
        },
        Change::TcpRouteUpserted(r) => {
            core::ConfigChange::TcpRouteUpserted(tcp_route_from_proto(r, "tcp_route_upserted")?)
        }
        Change::TcpRouteDeleted(listen) => core::ConfigChange::TcpRouteDeleted {
            listen: listen_addr(listen, "tcp_route_deleted")?,
        },
        Change::CertificateUpserted(c) => core::ConfigChange::CertificateUpserted(
            certificate_from_proto(c, "certificate_upserted")?,
        ),
        Change::CertificateDeleted(name) => core::ConfigChange::CertificateDeleted {
            name: core::CertName::new(&**name).map_err(|e| e.under("certificate_deleted"))?,
        },
    })
}

// === health ===

pub fn health_state_to_proto(s: HealthState) -> v1::HealthState {
    match s {
        HealthState::Unknown => v1::HealthState::Unknown,
        HealthState::Healthy => v1::HealthState::Healthy,
        HealthState::Unhealthy => v1::HealthState::Unhealthy,
    }
}

pub fn health_state_from_proto(v: i32) -> Result<HealthState, ConvertError> {
    match v1::HealthState::try_from(v) {
        Ok(v1::HealthState::Unknown | v1::HealthState::Unspecified) => Ok(HealthState::Unknown),
        Ok(v1::HealthState::Healthy) => Ok(HealthState::Healthy),
        Ok(v1::HealthState::Unhealthy) => Ok(HealthState::Unhealthy),
        Err(_) => Err(unknown_enum("state", v)),
    }
}

pub fn backend_health_to_proto(key: &BackendKey, h: &BackendHealth) -> v1::BackendHealth {
    v1::BackendHealth {
        pool: key.pool.to_string(),
        address: key.address.to_string(),
        state: health_state_to_proto(h.state).into(),
        since_unix_ms: h.since_ms as i64,
        reason: h.reason.clone(),
        agents: h
            .views
            .iter()
            .map(|v| v1::AgentView {
                agent_id: v.agent.clone(),
                zone: v.zone.clone(),
                healthy: v.verdict,
                last_detail: v.last_detail.clone(),
                last_seen_unix_ms: v.last_seen_ms as i64,
                live: v.live,
            })
            .collect(),
        admin_override: None,
    }
}

pub fn backend_health_from_proto(
    h: &v1::BackendHealth,
) -> Result<(BackendKey, BackendHealth), ConvertError> {
    let key = BackendKey {
        pool: pool_name(&h.pool, "pool")?,
        address: BackendAddr::new(&h.address)?,
    };
    let health = BackendHealth {
        state: health_state_from_proto(h.state)?,
        since_ms: h.since_unix_ms.max(0) as u64,
        reason: h.reason.clone(),
        views: h
            .agents
            .iter()
            .map(|a| AgentView {
                agent: a.agent_id.clone(),
                zone: a.zone.clone(),
                verdict: a.healthy,
                last_detail: a.last_detail.clone(),
                last_seen_ms: a.last_seen_unix_ms.max(0) as u64,
                live: a.live,
            })
            .collect(),
    };
    Ok((key, health))
}

// === traffic figures ===

pub fn backend_traffic_to_proto(t: &BackendTraffic) -> v1::BackendTraffic {
    use tandem_core::traffic::FailureKind as K;
    v1::BackendTraffic {
        pool: t.pool.to_string(),
        address: t.address.to_string(),
        window_ms: t.window_ms,
        responses: t.responses.to_vec(),
        connect_failures: t.failures[K::Connect as usize],
        timeouts: t.failures[K::Timeout as usize],
        resets: t.failures[K::Reset as usize],
        invalid: t.failures[K::Invalid as usize],
        latency: t.latency.to_vec(),
        ejected_until_unix_ms: t.ejected_until_ms.map_or(0, |v| v as i64),
    }
}

/// A proxy's figures for one backend, checked: names valid, the window
/// bounded, exactly the counts the buckets and classes need. `field` names
/// the entry (`traffic[3]`).
pub fn backend_traffic_from_proto(
    t: &v1::BackendTraffic,
    field: &str,
) -> Result<BackendTraffic, ConvertError> {
    use tandem_core::traffic::{FailureKind as K, LATENCY_BUCKETS, MAX_WINDOW_MS};
    let at = |f: &str| format!("{field}.{f}");
    let pool = pool_name(&t.pool, &at("pool"))?;
    let address =
        BackendAddr::new(&t.address).map_err(|e| ValidationError::new(at("address"), e.rule))?;
    if !(1..=MAX_WINDOW_MS).contains(&t.window_ms) {
        return Err(ValidationError::new(
            at("window_ms"),
            format!(
                "must be between 1 and {MAX_WINDOW_MS} (got {})",
                t.window_ms
            ),
        ));
    }
    let responses: [u64; 5] = t.responses.as_slice().try_into().map_err(|_| {
        ValidationError::new(
            at("responses"),
            format!("must hold 5 counts, 1xx to 5xx (got {})", t.responses.len()),
        )
    })?;
    let latency: [u64; LATENCY_BUCKETS] = t.latency.as_slice().try_into().map_err(|_| {
        ValidationError::new(
            at("latency"),
            format!(
                "must hold {LATENCY_BUCKETS} bucket counts (got {})",
                t.latency.len()
            ),
        )
    })?;
    let mut failures = [0; 4];
    failures[K::Connect as usize] = t.connect_failures;
    failures[K::Timeout as usize] = t.timeouts;
    failures[K::Reset as usize] = t.resets;
    failures[K::Invalid as usize] = t.invalid;
    Ok(BackendTraffic {
        pool,
        address,
        window_ms: t.window_ms,
        responses,
        failures,
        latency,
        ejected_until_ms: u64::try_from(t.ejected_until_unix_ms)
            .ok()
            .filter(|v| *v > 0),
    })
}

pub fn merged_traffic_to_proto(m: &MergedTraffic) -> v1::MergedTraffic {
    use tandem_core::traffic::FailureKind as K;
    v1::MergedTraffic {
        pool: m.pool.to_string(),
        address: m.address.to_string(),
        proxies: m.proxies,
        requests_per_s: m.requests_per_s,
        errors_per_s: m.errors_per_s,
        responses_per_s: m.responses_per_s.to_vec(),
        connect_failures_per_s: m.failures_per_s[K::Connect as usize],
        timeouts_per_s: m.failures_per_s[K::Timeout as usize],
        resets_per_s: m.failures_per_s[K::Reset as usize],
        invalid_per_s: m.failures_per_s[K::Invalid as usize],
        p50_ms: m.quantile_ms(0.5).unwrap_or(0.0),
        p99_ms: m.quantile_ms(0.99).unwrap_or(0.0),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backend_tls_fields_apply_onto_the_current_settings() {
        let name = PoolName::new("shop").unwrap();
        let with = |t: v1::BackendTls| v1::Pool {
            name: "shop".into(),
            backend_tls: Some(t),
            ..Default::default()
        };
        let plain = PoolConfig::new(name.clone());
        let ca = "-----BEGIN CERTIFICATE-----\nAA==\n-----END CERTIFICATE-----\n";
        let on = pool_config_from_proto(
            plain.clone(),
            &with(v1::BackendTls {
                enabled: Some(true),
                sni: Some("api.internal".into()),
                insecure: Some(true),
                ..Default::default()
            }),
        )
        .unwrap();
        let tls = on.backend_tls.clone().unwrap();
        assert_eq!((tls.sni.as_str(), tls.insecure), ("api.internal", true));
        // A CA bundle turns verification back on; the SNI stays.
        let verified = pool_config_from_proto(
            on.clone(),
            &with(v1::BackendTls {
                ca_pem: Some(ca.into()),
                ..Default::default()
            }),
        )
        .unwrap();
        let tls = verified.backend_tls.clone().unwrap();
        assert_eq!((tls.sni.as_str(), tls.insecure), ("api.internal", false));
        assert_eq!(tls.ca_pem, ca);
        // And off again, which drops the bundle.
        let insecure = pool_config_from_proto(
            verified.clone(),
            &with(v1::BackendTls {
                insecure: Some(true),
                ..Default::default()
            }),
        )
        .unwrap();
        let tls = insecure.backend_tls.unwrap();
        assert_eq!((tls.ca_pem.as_str(), tls.insecure), ("", true));
        // Round trip through the message the proxies get.
        let back = pool_config_from_proto(plain.clone(), &pool_config_to_proto(&verified)).unwrap();
        assert_eq!(back, verified);
        let back = pool_config_from_proto(verified.clone(), &pool_config_to_proto(&plain)).unwrap();
        assert_eq!(
            back.backend_tls, None,
            "a plain pool's message turns TLS off"
        );
        // Both at once is refused, by name.
        let e = pool_config_from_proto(
            plain,
            &with(v1::BackendTls {
                ca_pem: Some(ca.into()),
                insecure: Some(true),
                ..Default::default()
            }),
        )
        .unwrap_err();
        assert!(e.to_string().contains("pool.backend_tls.insecure"), "{e}");
    }

    #[test]
    fn pool_settings_round_trip_and_unset_fields_keep_defaults() {
        let name = PoolName::new("shop").unwrap();
        let mut msg = v1::Pool {
            name: "shop".into(),
            policy: v1::LbPolicy::IpHash.into(),
            ..Default::default()
        };
        msg.health_check = Some(v1::HealthCheck {
            interval_ms: Some(1_000),
            fall: Some(2),
            ..Default::default()
        });
        let cfg = pool_config_from_proto(PoolConfig::new(name.clone()), &msg).unwrap();
        assert_eq!(cfg.policy, LbPolicy::IpHash);
        assert_eq!(cfg.health_check.interval_ms, 1_000);
        assert_eq!(cfg.health_check.fall, 2);
        assert_eq!(cfg.health_check.rise, 2, "default kept");
        assert_eq!(cfg.max_request_body_bytes, 10 * 1024 * 1024, "default kept");
        let msg = v1::Pool {
            max_request_body_bytes: Some(1_000),
            upstream_idle_timeout_ms: Some(0),
            tunnel_idle_timeout_ms: Some(60_000),
            ..msg
        };
        let cfg = pool_config_from_proto(cfg, &msg).unwrap();
        assert_eq!(
            (
                cfg.max_request_body_bytes,
                cfg.upstream_idle_timeout_ms,
                cfg.tunnel_idle_timeout_ms
            ),
            (1_000, 0, 60_000)
        );
        let back =
            pool_config_from_proto(PoolConfig::new(name), &pool_config_to_proto(&cfg)).unwrap();
        assert_eq!(back, cfg);
    }

    #[test]
    fn bad_fields_are_named() {
        let msg = v1::Pool {
            name: "shop".into(),
            policy: 42,
            ..Default::default()
        };
        let e = pool_config_from_proto(PoolConfig::new(PoolName::new("shop").unwrap()), &msg)
            .unwrap_err();
        assert_eq!(e.field, "pool.policy");
        let e = backend_from_proto(
            &v1::Backend {
                address: "10.0.0.1:80".into(),
                weight: Some(0),
                ..Default::default()
            },
            "backend",
        )
        .unwrap_err();
        assert_eq!(e.field, "backend.weight");
    }

    #[test]
    fn tcp_settings_round_trip_and_by_policy_stays_by_policy() {
        let name = PoolName::new("db").unwrap();
        let msg = v1::Pool {
            name: "db".into(),
            policy: v1::LbPolicy::SingleActive.into(),
            health_check: Some(v1::HealthCheck {
                port: Some(8008),
                path: Some("/primary".into()),
                ..Default::default()
            }),
            tcp: Some(v1::TcpSettings {
                max_connections: Some(100),
                proxy_protocol: Some(true),
                ..Default::default()
            }),
            ..Default::default()
        };
        let cfg = pool_config_from_proto(PoolConfig::new(name.clone()), &msg).unwrap();
        assert_eq!(cfg.health_check.port, Some(8008));
        assert_eq!(cfg.tcp.max_connections, 100);
        assert!(cfg.tcp.proxy_protocol);
        assert_eq!(cfg.tcp.on_unhealthy, None);
        assert_eq!(cfg.on_unhealthy(), OnUnhealthy::Close);
        let back =
            pool_config_from_proto(PoolConfig::new(name.clone()), &pool_config_to_proto(&cfg))
                .unwrap();
        assert_eq!(back, cfg);
        // Port 0 goes back to the traffic port; a port too large is named.
        let mut reset = msg.clone();
        reset.health_check.as_mut().unwrap().port = Some(0);
        let cfg = pool_config_from_proto(cfg, &reset).unwrap();
        assert_eq!(cfg.health_check.port, None);
        reset.health_check.as_mut().unwrap().port = Some(70_000);
        let e = pool_config_from_proto(cfg, &reset).unwrap_err();
        assert_eq!(e.field, "pool.health_check.port");
    }

    #[test]
    fn tcp_routes_convert_and_name_their_fields() {
        let r = v1::TcpRoute {
            listen: "0.0.0.0:5432".into(),
            pool: "db".into(),
        };
        let route = tcp_route_from_proto(&r, "route").unwrap();
        assert_eq!(tcp_route_to_proto(&route), r);
        let change = change_to_proto(&core::ConfigChange::TcpRouteDeleted {
            listen: route.listen,
        });
        assert_eq!(
            change_from_proto(&change).unwrap(),
            core::ConfigChange::TcpRouteDeleted {
                listen: route.listen
            }
        );
        let bad = v1::TcpRoute {
            listen: "db.local:5432".into(),
            pool: "db".into(),
        };
        assert_eq!(
            tcp_route_from_proto(&bad, "route").unwrap_err().field,
            "route.listen"
        );
    }
}
