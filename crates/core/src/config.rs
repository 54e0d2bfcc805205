//! Pool settings, backends and routes, with their defaults and bounds.
//!
//! Defaults follow what HAProxy and Envoy users expect: probes every 2 s with
//! a 1 s timeout, rise 2, fall 3, healthy on 200-399; one retry within a 20%
//! budget; outlier ejection after 5 consecutive failures for 30 s; panic mode
//! below 50% usable primaries.

use serde::{Deserialize, Serialize};

use crate::{BackendAddr, HostMatch, ListenAddr, PathPrefix, PoolName, ValidationError, Weight};

// === LbPolicy ===

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LbPolicy {
    /// Smooth weighted round-robin.
    #[default]
    RoundRobin,
    /// Fewest in-flight requests relative to weight.
    LeastConnections,
    /// Consistent hashing of the client address.
    IpHash,
    /// The less loaded of two weighted random picks.
    RandomTwoChoices,
    /// One member at a time: the first, by declared order, whose health
    /// check passes (database primaries). Never a member whose check has not
    /// passed, not even in panic mode.
    SingleActive,
}

impl LbPolicy {
    pub const ALL: [LbPolicy; 5] = [
        Self::RoundRobin,
        Self::LeastConnections,
        Self::IpHash,
        Self::RandomTwoChoices,
        Self::SingleActive,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::RoundRobin => "round_robin",
            Self::LeastConnections => "least_connections",
            Self::IpHash => "ip_hash",
            Self::RandomTwoChoices => "random_two_choices",
            Self::SingleActive => "single_active",
        }
    }
}

impl std::str::FromStr for LbPolicy {
    type Err = ValidationError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::ALL
            .into_iter()
            .find(|p| p.as_str() == s.replace('-', "_"))
            .ok_or_else(|| {
                ValidationError::new(
                    "policy",
                    format!(
                        "must be one of round_robin, least_connections, ip_hash, random_two_choices, single_active (got {s:?})"
                    ),
                )
            })
    }
}

// === HealthCheckSpec ===

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum HealthCheckKind {
    #[default]
    Http,
    Tcp,
}

/// How agents probe a pool's backends.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HealthCheckSpec {
    pub kind: HealthCheckKind,
    /// HTTP request path.
    pub path: String,
    /// HTTP method.
    pub method: String,
    /// Host header to send; empty means the backend's address.
    pub host: String,
    /// Inclusive range of statuses that count as healthy.
    pub expected_status_min: u16,
    pub expected_status_max: u16,
    /// Time between probes, milliseconds.
    pub interval_ms: u32,
    /// Probe timeout, milliseconds; at most the interval.
    pub timeout_ms: u32,
    /// Consecutive successes before a backend is healthy.
    pub rise: u32,
    /// Consecutive failures before a backend is unhealthy.
    pub fall: u32,
    /// Probe this port of the backend's host instead of its traffic port
    /// (a Patroni REST API on 8008 beside Postgres on 5432, say). `None`:
    /// the traffic port.
    #[serde(default)]
    pub port: Option<u16>,
}

impl Default for HealthCheckSpec {
    fn default() -> Self {
        Self {
            kind: HealthCheckKind::Http,
            path: "/".into(),
            method: "GET".into(),
            host: String::new(),
            expected_status_min: 200,
            expected_status_max: 399,
            interval_ms: 2_000,
            timeout_ms: 1_000,
            rise: 2,
            fall: 3,
            port: None,
        }
    }
}

impl HealthCheckSpec {
    pub fn validate(&self) -> Result<(), ValidationError> {
        if !self.path.starts_with('/')
            || self
                .path
                .chars()
                .any(|c| c.is_whitespace() || c.is_control())
        {
            return Err(ValidationError::new(
                "path",
                format!(
                    "must start with '/' and contain no whitespace (got {:?})",
                    self.path
                ),
            ));
        }
        const METHODS: [&str; 4] = ["GET", "HEAD", "OPTIONS", "POST"];
        if !METHODS.contains(&self.method.as_str()) {
            return Err(ValidationError::new(
                "method",
                format!(
                    "must be one of GET, HEAD, OPTIONS, POST (got {:?})",
                    self.method
                ),
            ));
        }
        if !self.host.is_empty() && HostMatch::new(&self.host).is_err() {
            return Err(ValidationError::new(
                "host",
                format!("must be a host name (got {:?})", self.host),
            ));
        }
        in_range(
            "expected_status_min",
            self.expected_status_min.into(),
            100,
            599,
        )?;
        in_range(
            "expected_status_max",
            self.expected_status_max.into(),
            100,
            599,
        )?;
        if self.expected_status_min > self.expected_status_max {
            return Err(ValidationError::new(
                "expected_status_max",
                format!(
                    "must be at least expected_status_min ({} > {})",
                    self.expected_status_min, self.expected_status_max
                ),
            ));
        }
        in_range("interval_ms", self.interval_ms, 100, 3_600_000)?;
        in_range("timeout_ms", self.timeout_ms, 10, 3_600_000)?;
        if self.timeout_ms > self.interval_ms {
            return Err(ValidationError::new(
                "timeout_ms",
                format!(
                    "must not exceed interval_ms ({} > {})",
                    self.timeout_ms, self.interval_ms
                ),
            ));
        }
        in_range("rise", self.rise, 1, 100)?;
        in_range("fall", self.fall, 1, 100)?;
        if self.port == Some(0) {
            return Err(ValidationError::new(
                "port",
                "must be between 1 and 65535 (got 0); leave it unset to probe the traffic port",
            ));
        }
        Ok(())
    }

    /// Where the agents probe `backend`: its own address, or its host on
    /// the check's [`HealthCheckSpec::port`].
    pub fn target_address(&self, backend: &BackendAddr) -> BackendAddr {
        match self.port {
            Some(port) if port != backend.port() => backend.with_port(port),
            _ => backend.clone(),
        }
    }
}

// === RetryPolicy ===

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RetryPolicy {
    /// Extra attempts after the first (0 disables retries).
    pub attempts: u32,
    /// Timeout of each attempt, milliseconds.
    pub per_try_timeout_ms: u32,
    /// Retries allowed as a percentage of active requests.
    pub budget_percent: u32,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            attempts: 1,
            per_try_timeout_ms: 5_000,
            budget_percent: 20,
        }
    }
}

impl RetryPolicy {
    pub fn validate(&self) -> Result<(), ValidationError> {
        in_range("attempts", self.attempts, 0, 5)?;
        in_range("per_try_timeout_ms", self.per_try_timeout_ms, 10, 3_600_000)?;
        in_range("budget_percent", self.budget_percent, 0, 100)?;
        Ok(())
    }
}

// === OutlierSpec ===

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OutlierSpec {
    /// Consecutive connect failures or 5xx that eject a backend (0 disables).
    pub consecutive_failures: u32,
    /// First ejection time in milliseconds; multiplied by the number of
    /// ejections in a row.
    pub base_ejection_ms: u32,
    /// At most this percentage of a pool's backends are ejected at once.
    pub max_ejected_percent: u32,
}

impl Default for OutlierSpec {
    fn default() -> Self {
        Self {
            consecutive_failures: 5,
            base_ejection_ms: 30_000,
            max_ejected_percent: 50,
        }
    }
}

impl OutlierSpec {
    pub fn validate(&self) -> Result<(), ValidationError> {
        in_range("consecutive_failures", self.consecutive_failures, 0, 1_000)?;
        in_range("base_ejection_ms", self.base_ejection_ms, 100, 3_600_000)?;
        in_range("max_ejected_percent", self.max_ejected_percent, 0, 100)?;
        Ok(())
    }
}

// === TcpSettings ===

/// What happens to established TCP connections to a backend that becomes
/// unhealthy, is disabled or leaves the pool.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OnUnhealthy {
    /// Closed once the grace has passed (a client must not keep writing to
    /// a demoted database primary).
    Close,
    /// Left to finish by themselves.
    Keep,
}

impl OnUnhealthy {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Close => "close",
            Self::Keep => "keep",
        }
    }
}

/// Settings of a pool behind TCP (layer 4) routes. HTTP routes ignore them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct TcpSettings {
    /// A connection on which no byte moved either way for this long is
    /// closed, milliseconds (0: never).
    pub idle_timeout_ms: u32,
    /// Most connections open to one backend at once (0: no limit). Further
    /// clients wait in the pool's queue.
    pub max_connections: u32,
    /// Most clients waiting for a free backend slot; beyond it a client is
    /// refused at once (0: no queue).
    pub max_queue: u32,
    /// Longest a client waits in the queue, milliseconds.
    pub queue_timeout_ms: u32,
    /// `None`: by policy, `close` for `single_active`, `keep` otherwise.
    pub on_unhealthy: Option<OnUnhealthy>,
    /// How long connections to an unhealthy, disabled or removed backend
    /// may go on before they are closed (with `close`), milliseconds.
    pub unhealthy_grace_ms: u32,
    /// Start every backend connection with a PROXY protocol v2 header
    /// carrying the client's address.
    pub proxy_protocol: bool,
}

impl Default for TcpSettings {
    fn default() -> Self {
        Self {
            idle_timeout_ms: 1_800_000,
            max_connections: 0,
            max_queue: 128,
            queue_timeout_ms: 5_000,
            on_unhealthy: None,
            unhealthy_grace_ms: 0,
            proxy_protocol: false,
        }
    }
}

impl TcpSettings {
    pub fn validate(&self) -> Result<(), ValidationError> {
        if self.idle_timeout_ms != 0 {
            in_range("idle_timeout_ms", self.idle_timeout_ms, 1_000, 86_400_000)
                .map_err(|e| ValidationError::new(e.field, format!("{} (or 0: never)", e.rule)))?;
        }
        in_range("max_connections", self.max_connections, 0, 1_000_000)?;
        in_range("max_queue", self.max_queue, 0, 1_000_000)?;
        in_range("queue_timeout_ms", self.queue_timeout_ms, 1, 3_600_000)?;
        in_range("unhealthy_grace_ms", self.unhealthy_grace_ms, 0, 3_600_000)?;
        Ok(())
    }
}

// === PoolConfig ===

/// A pool's settings (its backends live beside it in [`crate::Pool`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PoolConfig {
    pub name: PoolName,
    pub policy: LbPolicy,
    pub health_check: HealthCheckSpec,
    /// Upstream connect timeout, milliseconds.
    pub connect_timeout_ms: u32,
    /// Whole-request timeout including retries, milliseconds.
    pub request_timeout_ms: u32,
    pub retry: RetryPolicy,
    pub outlier: OutlierSpec,
    /// Below this percentage of usable primaries, spread over all (0 disables).
    pub panic_threshold_percent: u32,
    /// Layer-4 settings, for TCP routes.
    #[serde(default)]
    pub tcp: TcpSettings,
    /// Largest request body the proxy passes on, in bytes; larger ones get
    /// 413 (0: no limit).
    #[serde(default = "defaults::max_request_body_bytes")]
    pub max_request_body_bytes: u64,
    /// Longest an upstream keep-alive connection is reused after sitting
    /// idle, milliseconds (0: a new connection per request). A backend's
    /// `Keep-Alive: timeout=` shortens it. The default stays below common
    /// servers' own idle timeouts (Node.js and Apache close after 5 s), so
    /// the proxy never sends on a connection the backend is closing.
    #[serde(default = "defaults::upstream_idle_timeout_ms")]
    pub upstream_idle_timeout_ms: u32,
    /// An upgraded connection (WebSocket) silent both ways for this long is
    /// closed, milliseconds.
    #[serde(default = "defaults::tunnel_idle_timeout_ms")]
    pub tunnel_idle_timeout_ms: u32,
    /// TLS from the proxy to the backends (None: plain HTTP).
    #[serde(default)]
    pub backend_tls: Option<BackendTls>,
}

/// How the proxy speaks TLS to a pool's backends.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct BackendTls {
    /// PEM certificates the backends' chains are verified against (empty:
    /// the Mozilla root store, for backends with public certificates).
    #[serde(default)]
    pub ca_pem: String,
    /// The name sent as SNI and verified in the backend's certificate
    /// (empty: each backend's host).
    #[serde(default)]
    pub sni: String,
    /// No verification of the backends' certificates at all.
    #[serde(default)]
    pub insecure: bool,
}

impl BackendTls {
    /// The server name for a backend: the configured one or its host
    /// (an IPv6 host without its brackets).
    pub fn server_name<'a>(&'a self, backend: &'a crate::BackendAddr) -> &'a str {
        if !self.sni.is_empty() {
            return &self.sni;
        }
        let host = backend.host();
        host.strip_prefix('[')
            .and_then(|h| h.strip_suffix(']'))
            .unwrap_or(host)
    }

    /// Checks the shape; the CA bundle's certificates are parsed by the
    /// control plane (`tandem-tls`).
    pub fn validate(&self) -> Result<(), ValidationError> {
        if self.insecure && !self.ca_pem.is_empty() {
            return Err(ValidationError::new(
                "insecure",
                "skips verification: it cannot be combined with a CA bundle",
            ));
        }
        if !self.ca_pem.is_empty() && !self.ca_pem.contains("-----BEGIN CERTIFICATE-----") {
            return Err(ValidationError::new(
                "ca_pem",
                "holds no PEM certificate (-----BEGIN CERTIFICATE-----)",
            ));
        }
        if !self.sni.is_empty() {
            let ip = self.sni.parse::<std::net::IpAddr>().is_ok();
            if !ip {
                crate::ids::check_hostname(&self.sni)
                    .map_err(|rule| ValidationError::new("sni", rule))?;
            }
        }
        Ok(())
    }
}

/// Defaults of settings added after the first release, also for pools
/// stored before they existed.
mod defaults {
    pub fn max_request_body_bytes() -> u64 {
        10 * 1024 * 1024
    }
    pub fn upstream_idle_timeout_ms() -> u32 {
        4_000
    }
    pub fn tunnel_idle_timeout_ms() -> u32 {
        300_000
    }
}

/// The largest `max_request_body_bytes` (1 TiB).
pub const MAX_REQUEST_BODY_LIMIT: u64 = 1 << 40;

impl PoolConfig {
    /// A pool with every setting at its default.
    pub fn new(name: PoolName) -> Self {
        Self {
            name,
            policy: LbPolicy::default(),
            health_check: HealthCheckSpec::default(),
            connect_timeout_ms: 1_000,
            request_timeout_ms: 30_000,
            retry: RetryPolicy::default(),
            outlier: OutlierSpec::default(),
            panic_threshold_percent: 50,
            tcp: TcpSettings::default(),
            max_request_body_bytes: defaults::max_request_body_bytes(),
            upstream_idle_timeout_ms: defaults::upstream_idle_timeout_ms(),
            tunnel_idle_timeout_ms: defaults::tunnel_idle_timeout_ms(),
            backend_tls: None,
        }
    }

    /// What happens to established TCP connections to a backend that is no
    /// longer usable: as set, or by policy (`close` for `single_active`).
    pub fn on_unhealthy(&self) -> OnUnhealthy {
        self.tcp.on_unhealthy.unwrap_or(match self.policy {
            LbPolicy::SingleActive => OnUnhealthy::Close,
            _ => OnUnhealthy::Keep,
        })
    }

    /// Checks every bound; the error's field is rooted at `pool`.
    pub fn validate(&self) -> Result<(), ValidationError> {
        let at = |e: ValidationError| e.under("pool");
        self.health_check
            .validate()
            .map_err(|e| at(e.under("health_check")))?;
        in_range("connect_timeout_ms", self.connect_timeout_ms, 10, 60_000).map_err(at)?;
        in_range("request_timeout_ms", self.request_timeout_ms, 10, 3_600_000).map_err(at)?;
        self.retry.validate().map_err(|e| at(e.under("retry")))?;
        if self.retry.per_try_timeout_ms > self.request_timeout_ms {
            return Err(at(ValidationError::new(
                "retry.per_try_timeout_ms",
                format!(
                    "must not exceed request_timeout_ms ({} > {})",
                    self.retry.per_try_timeout_ms, self.request_timeout_ms
                ),
            )));
        }
        self.outlier
            .validate()
            .map_err(|e| at(e.under("outlier")))?;
        in_range(
            "panic_threshold_percent",
            self.panic_threshold_percent,
            0,
            100,
        )
        .map_err(at)?;
        self.tcp.validate().map_err(|e| at(e.under("tcp")))?;
        if self.max_request_body_bytes > MAX_REQUEST_BODY_LIMIT {
            return Err(at(ValidationError::new(
                "max_request_body_bytes",
                format!(
                    "must be between 0 and {MAX_REQUEST_BODY_LIMIT} (got {})",
                    self.max_request_body_bytes
                ),
            )));
        }
        in_range(
            "upstream_idle_timeout_ms",
            self.upstream_idle_timeout_ms,
            0,
            3_600_000,
        )
        .map_err(at)?;
        in_range(
            "tunnel_idle_timeout_ms",
            self.tunnel_idle_timeout_ms,
            1_000,
            86_400_000,
        )
        .map_err(at)?;
        if let Some(tls) = &self.backend_tls {
            tls.validate().map_err(|e| at(e.under("backend_tls")))?;
        }
        Ok(())
    }
}

fn in_range(field: &str, v: u32, min: u32, max: u32) -> Result<(), ValidationError> {
    if (min..=max).contains(&v) {
        Ok(())
    } else {
        Err(ValidationError::new(
            field,
            format!("must be between {min} and {max} (got {v})"),
        ))
    }
}

// === Backend ===

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BackendRole {
    #[default]
    Primary,
    /// Takes traffic only while no primary is usable.
    Backup,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AdminState {
    #[default]
    Enabled,
    /// No new requests; in-flight ones finish.
    Draining,
    Disabled,
}

impl AdminState {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Enabled => "enabled",
            Self::Draining => "draining",
            Self::Disabled => "disabled",
        }
    }
}

impl BackendRole {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Primary => "primary",
            Self::Backup => "backup",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Backend {
    pub address: BackendAddr,
    pub weight: Weight,
    pub role: BackendRole,
    pub admin_state: AdminState,
    /// Its place in the pool's declared order, lowest first (ties go by
    /// address): a `single_active` pool sends to the first usable member.
    /// The control plane numbers backends in the order they are added
    /// unless told otherwise.
    #[serde(default)]
    pub order: u32,
}

impl Backend {
    pub fn new(address: BackendAddr) -> Self {
        Self {
            address,
            weight: Weight::DEFAULT,
            role: BackendRole::Primary,
            admin_state: AdminState::Enabled,
            order: 0,
        }
    }
}

// === Route ===

/// Sends requests for a host and path prefix to a pool. `(host,
/// path_prefix)` is the route's identity: two routes may not share it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Route {
    pub host: HostMatch,
    pub path_prefix: PathPrefix,
    pub pool: PoolName,
    /// Requests that arrive over plain HTTP get a 308 to the same URL on
    /// https instead of being forwarded.
    #[serde(default)]
    pub redirect_https: bool,
    /// Answers to requests that arrived over TLS carry
    /// `Strict-Transport-Security: max-age=<this>` (0: none).
    #[serde(default)]
    pub hsts_max_age_s: u32,
}

/// A TCP (layer 4) route: every proxy listens on `listen` and forwards
/// each connection it accepts to `pool`, bytes untouched. The listen
/// address is the route's identity.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TcpRoute {
    pub listen: ListenAddr,
    pub pool: PoolName,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pool() -> PoolConfig {
        PoolConfig::new(PoolName::new("shop").unwrap())
    }

    #[test]
    fn defaults_are_valid() {
        pool().validate().unwrap();
    }

    #[test]
    fn each_bound_names_its_field() {
        type Mutator = fn(&mut PoolConfig);
        let cases: [(Mutator, &str); 22] = [
            (
                |p| p.health_check.interval_ms = 50,
                "pool.health_check.interval_ms",
            ),
            (
                |p| p.health_check.timeout_ms = 5_000,
                "pool.health_check.timeout_ms",
            ),
            (|p| p.health_check.rise = 0, "pool.health_check.rise"),
            (|p| p.health_check.fall = 101, "pool.health_check.fall"),
            (
                |p| p.health_check.path = "healthz".into(),
                "pool.health_check.path",
            ),
            (
                |p| p.health_check.method = "PATCH".into(),
                "pool.health_check.method",
            ),
            (
                |p| p.health_check.expected_status_min = 99,
                "pool.health_check.expected_status_min",
            ),
            (
                |p| p.health_check.expected_status_min = 500,
                "pool.health_check.expected_status_max",
            ),
            (|p| p.connect_timeout_ms = 0, "pool.connect_timeout_ms"),
            (|p| p.request_timeout_ms = 5, "pool.request_timeout_ms"),
            (|p| p.retry.attempts = 6, "pool.retry.attempts"),
            (
                |p| p.retry.per_try_timeout_ms = 40_000,
                "pool.retry.per_try_timeout_ms",
            ),
            (
                |p| p.outlier.max_ejected_percent = 101,
                "pool.outlier.max_ejected_percent",
            ),
            (
                |p| p.panic_threshold_percent = 101,
                "pool.panic_threshold_percent",
            ),
            (|p| p.health_check.port = Some(0), "pool.health_check.port"),
            (|p| p.tcp.idle_timeout_ms = 10, "pool.tcp.idle_timeout_ms"),
            (|p| p.tcp.queue_timeout_ms = 0, "pool.tcp.queue_timeout_ms"),
            (
                |p| p.tcp.unhealthy_grace_ms = 3_600_001,
                "pool.tcp.unhealthy_grace_ms",
            ),
            (|p| p.tcp.max_queue = 1_000_001, "pool.tcp.max_queue"),
            (
                |p| p.max_request_body_bytes = MAX_REQUEST_BODY_LIMIT + 1,
                "pool.max_request_body_bytes",
            ),
            (
                |p| p.upstream_idle_timeout_ms = 3_600_001,
                "pool.upstream_idle_timeout_ms",
            ),
            (
                |p| p.tunnel_idle_timeout_ms = 999,
                "pool.tunnel_idle_timeout_ms",
            ),
        ];
        for (mutate, field) in cases {
            let mut p = pool();
            mutate(&mut p);
            let e = p.validate().unwrap_err();
            assert_eq!(e.field, field, "{e}");
        }
    }

    #[test]
    fn pools_stored_before_the_http_limits_read_with_their_defaults() {
        let mut v = serde_json::to_value(pool()).unwrap();
        let o = v.as_object_mut().unwrap();
        for k in [
            "max_request_body_bytes",
            "upstream_idle_timeout_ms",
            "tunnel_idle_timeout_ms",
        ] {
            o.remove(k);
        }
        let back: PoolConfig = serde_json::from_value(v).unwrap();
        assert_eq!(back, pool());
    }

    #[test]
    fn policies_parse_by_name() {
        for p in LbPolicy::ALL {
            assert_eq!(p.as_str().parse::<LbPolicy>().unwrap(), p);
        }
        assert_eq!(
            "least-connections".parse::<LbPolicy>().unwrap(),
            LbPolicy::LeastConnections
        );
        assert_eq!("fastest".parse::<LbPolicy>().unwrap_err().field, "policy");
    }

    #[test]
    fn single_active_pools_close_connections_to_unusable_members_by_default() {
        let mut p = pool();
        assert_eq!(p.on_unhealthy(), OnUnhealthy::Keep);
        p.policy = LbPolicy::SingleActive;
        assert_eq!(p.on_unhealthy(), OnUnhealthy::Close);
        p.tcp.on_unhealthy = Some(OnUnhealthy::Keep);
        assert_eq!(p.on_unhealthy(), OnUnhealthy::Keep, "as set");
        p.tcp.idle_timeout_ms = 0;
        p.validate().unwrap();
    }

    #[test]
    fn health_checks_may_probe_another_port() {
        let b = BackendAddr::new("db-1.local:5432").unwrap();
        let mut spec = HealthCheckSpec::default();
        assert_eq!(spec.target_address(&b), b);
        spec.port = Some(8008);
        assert_eq!(spec.target_address(&b).as_str(), "db-1.local:8008");
        let v6 = BackendAddr::new("[::1]:5432").unwrap();
        assert_eq!(spec.target_address(&v6).as_str(), "[::1]:8008");
    }

    #[test]
    fn settings_saved_before_tcp_pools_existed_still_load() {
        let mut old = serde_json::to_value(pool()).unwrap();
        old.as_object_mut().unwrap().remove("tcp");
        old["health_check"].as_object_mut().unwrap().remove("port");
        let back: PoolConfig = serde_json::from_value(old).unwrap();
        assert_eq!(back, pool());
        let b: Backend = serde_json::from_str(
            r#"{"address":"10.0.0.1:80","weight":1,"role":"primary","admin_state":"enabled"}"#,
        )
        .unwrap();
        assert_eq!(b.order, 0);
    }
}
