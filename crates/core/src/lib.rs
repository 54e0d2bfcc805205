//! Tandem's domain: pools, backends, routes, health-check specs, the
//! configuration snapshot and the closed set of changes applied to it.
//!
//! This crate owns validation (every identifier is a newtype checked once, in
//! its constructor) and the pure algorithms the other crates share. It must
//! never do I/O, know protobuf or know SQL: the `proto` crate and the control
//! plane's store convert at their edges.

pub mod certificate;
pub mod config;
pub mod error;
pub mod format;
pub mod health;
pub mod ids;
pub mod lb;
pub mod outlier;
pub mod routing;
pub mod snapshot;
pub mod traffic;

pub use certificate::{CertName, Certificate, PrivateKeyPem};
pub use config::{
    AdminState, Backend, BackendRole, BackendTls, HealthCheckKind, HealthCheckSpec, LbPolicy,
    OnUnhealthy, OutlierSpec, PoolConfig, RetryPolicy, Route, TcpRoute, TcpSettings,
};
pub use error::{Error, ValidationError};
pub use ids::{BackendAddr, HostMatch, ListenAddr, PathPrefix, PoolName, Revision, Weight};
pub use snapshot::{ConfigChange, Pool, Snapshot, StoreIdentity};
