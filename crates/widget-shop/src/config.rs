//! Command-line flags and their environment fallbacks.

use std::net::SocketAddr;
use std::time::Duration;

use clap::Parser;
use tandem_telemetry::PrometheusHandle;

use crate::error::Error;
use crate::faults::Faults;
use crate::server::Settings;
use crate::store::{Store, StoreOptions};

/// Widget Works, Tandem's sample shop: a catalogue, a cart, checkout and
/// orders on its own Postgres database, with fault injection for demos.
/// Serves its pages, its JSON API (/api/...) and /healthz, /readyz and
/// /metrics on one listener.
#[derive(Debug, Clone, Parser)]
#[command(name = "widget-shop", version)]
pub struct Config {
    /// HTTP listener (host:port).
    #[arg(long, env = "SHOP_LISTEN", default_value = "0.0.0.0:3000")]
    pub listen: SocketAddr,

    /// Postgres URL of the shop's own database (never the control plane's).
    /// Migrations and the seed catalogue are applied at start-up.
    #[arg(long, env = "DATABASE_URL", hide_env_values = true)]
    pub database_url: String,

    /// Postgres URL of the shop database's replicas (a load-balanced
    /// address, such as a Tandem TCP route checked on Patroni's /replica).
    /// Set: catalogue and order pages read there first, and while the
    /// primary is away browsing goes on and writes answer 503 "orders are
    /// paused". Unset: everything uses DATABASE_URL.
    #[arg(long, env = "SHOP_REPLICA_DATABASE_URL", hide_env_values = true)]
    pub replica_database_url: Option<String>,

    /// This instance's name, shown in the "served by" badge on every page
    /// and sent in the X-Served-By header of every response.
    #[arg(long, env = "SHOP_INSTANCE", default_value = "shop")]
    pub instance: String,

    /// Bearer token for the fault-injection endpoints (/admin/fault).
    /// Unset: fault injection is disabled.
    #[arg(long, env = "SHOP_ADMIN_TOKEN", hide_env_values = true)]
    pub admin_token: Option<String>,

    /// Maximum connections to the database.
    #[arg(long, env = "SHOP_DB_MAX_CONNECTIONS", default_value_t = 16)]
    pub db_max_connections: u32,

    /// How long a request waits for a database connection before the shop
    /// answers 503, in milliseconds. Short, so a dead database means a fast
    /// error page rather than a hang.
    #[arg(long, env = "SHOP_DB_ACQUIRE_TIMEOUT_MS", default_value_t = 1_000)]
    pub db_acquire_timeout_ms: u64,

    /// The longest a request may take before it is abandoned with a 503, in
    /// milliseconds (also the database's statement_timeout). Injected
    /// faults are not bound by it.
    #[arg(long, env = "SHOP_REQUEST_TIMEOUT_MS", default_value_t = 5_000)]
    pub request_timeout_ms: u64,

    /// How long /readyz waits for the database to answer, in milliseconds.
    #[arg(long, env = "SHOP_READY_TIMEOUT_MS", default_value_t = 1_000)]
    pub ready_timeout_ms: u64,

    /// On SIGTERM, how long in-flight requests may take to finish, in
    /// milliseconds.
    #[arg(long, env = "SHOP_DRAIN_TIMEOUT_MS", default_value_t = 10_000)]
    pub drain_timeout_ms: u64,

    #[command(flatten)]
    pub telemetry: tandem_telemetry::TelemetryArgs,
}

impl Config {
    /// Checks the flags and builds what the server runs with. The database
    /// is not contacted: the shop starts, not ready, while it is down.
    pub fn settings(&self, prometheus: PrometheusHandle) -> Result<Settings, Error> {
        let instance = self.instance.trim();
        if instance.is_empty()
            || instance.len() > 64
            || !instance.bytes().all(|b| b.is_ascii_graphic())
        {
            return Err(Error::Invalid {
                field: "SHOP_INSTANCE",
                message: format!(
                    "must be 1 to 64 visible ASCII characters, such as shop-1 (got {:?})",
                    self.instance
                ),
            });
        }
        let millis = |field: &'static str, ms: u64, min: u64, max: u64| {
            if (min..=max).contains(&ms) {
                Ok(Duration::from_millis(ms))
            } else {
                Err(Error::Invalid {
                    field,
                    message: format!("must be between {min} and {max} ms (got {ms})"),
                })
            }
        };
        let acquire = millis(
            "SHOP_DB_ACQUIRE_TIMEOUT_MS",
            self.db_acquire_timeout_ms,
            10,
            60_000,
        )?;
        let request = millis(
            "SHOP_REQUEST_TIMEOUT_MS",
            self.request_timeout_ms,
            100,
            600_000,
        )?;
        let ready = millis("SHOP_READY_TIMEOUT_MS", self.ready_timeout_ms, 10, 60_000)?;
        let drain = millis("SHOP_DRAIN_TIMEOUT_MS", self.drain_timeout_ms, 0, 600_000)?;
        if !(1..=1000).contains(&self.db_max_connections) {
            return Err(Error::Invalid {
                field: "SHOP_DB_MAX_CONNECTIONS",
                message: format!(
                    "must be between 1 and 1000 (got {})",
                    self.db_max_connections
                ),
            });
        }
        let token = self.admin_token.clone().filter(|t| !t.is_empty());
        if token.as_ref().is_some_and(|t| t.len() < 16) {
            tracing::warn!("SHOP_ADMIN_TOKEN is shorter than 16 characters; use a long random one");
        }
        let store = Store::connect_lazy(
            &self.database_url,
            self.replica_database_url
                .as_deref()
                .filter(|u| !u.trim().is_empty()),
            StoreOptions {
                max_connections: self.db_max_connections,
                acquire_timeout: acquire,
                statement_timeout: request,
            },
        )?;
        Ok(Settings {
            store,
            instance: instance.to_string(),
            faults: Faults::new(token),
            prometheus,
            request_timeout: request,
            ready_timeout: ready,
            drain_timeout: drain,
        })
    }
}
