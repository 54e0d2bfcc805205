//! Errors of the domain layer.

use std::fmt;

/// A value broke a rule. `field` is the dotted path a user typed or sent
/// (`pool.health_check.interval_ms`), `rule` says what is allowed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ValidationError {
    pub field: String,
    pub rule: String,
}

impl ValidationError {
    pub fn new(field: impl Into<String>, rule: impl Into<String>) -> Self {
        Self {
            field: field.into(),
            rule: rule.into(),
        }
    }

    /// Re-roots the field under a parent, e.g. `interval_ms` → `pool.health_check.interval_ms`.
    pub fn under(mut self, parent: &str) -> Self {
        self.field = format!("{parent}.{}", self.field);
        self
    }
}

impl fmt::Display for ValidationError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.field, self.rule)
    }
}

impl std::error::Error for ValidationError {}

/// Errors from applying changes to a [`crate::Snapshot`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Invalid(#[from] ValidationError),
    #[error("pool {name:?} does not exist")]
    UnknownPool { name: String },
    #[error("pool {name:?} already exists")]
    PoolExists { name: String },
    #[error("backend {address} does not exist in pool {pool:?}")]
    UnknownBackend { pool: String, address: String },
    #[error("backend {address} already exists in pool {pool:?}")]
    BackendExists { pool: String, address: String },
    #[error("no route for host {host:?} and path prefix {path_prefix:?}")]
    UnknownRoute { host: String, path_prefix: String },
    #[error(
        "a route for host {host:?} and path prefix {path_prefix:?} already exists (to pool {pool:?})"
    )]
    RouteExists {
        host: String,
        path_prefix: String,
        pool: String,
    },
    #[error("no TCP route listens on {listen}")]
    UnknownTcpRoute { listen: String },
    #[error(
        "a TCP route on {existing} (to pool {pool:?}) already takes {listen}: two listeners cannot share a port"
    )]
    TcpRouteExists {
        listen: String,
        existing: String,
        pool: String,
    },
    #[error("certificate {name:?} does not exist")]
    UnknownCertificate { name: String },
    #[error("pool {name:?} is still the target of {routes} route(s); delete them first")]
    PoolInUse { name: String, routes: usize },
    #[error("stale revision: expected {expected}, but {what} is at {actual}")]
    StaleRevision {
        what: String,
        expected: u64,
        actual: u64,
    },
}
