//! The Tandem control plane: the `tandem.v1` gRPC API over a Postgres store
//! of declared configuration, with Watch fan-out driven by LISTEN/NOTIFY.
//!
//! It owns validation at the API edge (through `tandem-core`), one
//! transaction and one revision per change, and the conversion of errors to
//! gRPC codes. It must never sit on the request path: proxies keep serving
//! from what they last received when every replica is gone, and while the
//! database is away it answers reads and Watch from its copy in memory,
//! marked stale, and refuses writes at once.

mod auth;
pub mod config;
pub mod consensus;
mod database;
mod error;
mod history;
mod hosts;
mod hub;
mod leader;
mod membership;
pub mod mtls;
mod overrides;
pub mod server;
mod service;
pub mod store;
mod ui;

pub use config::Config;
pub use error::Error;
