//! The Postgres store of declared configuration.
//!
//! Every change is one transaction: lock the `config_revision` row (this
//! serialises writers, so revisions commit in order with no gaps), check and
//! write, append the change to `change_log`, bump the revision and
//! `pg_notify` the new revision to every replica's hub.
//!
//! The checks are the configuration's rules across objects and over time,
//! and live here only: the pool a backend or route names exists, names and
//! listen ports are not taken, a pool still routed to is not deleted, an
//! `expected_revision` is not stale. Made after the lock, they see the
//! committed configuration with every other writer held off. The shape of
//! each value was checked when its core type was built; replaying a
//! committed change (`Snapshot::apply`) decides nothing.
//!
//! While the replica knows its database is unreachable ([`Availability`],
//! kept by the hub), a change is refused at once with
//! [`Error::DatabaseDown`] instead of waiting out a connection timeout.

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::types::Json;
use sqlx::{PgPool, Postgres, Row, Transaction};
use tandem_core::format;
use tandem_core::traffic::BackendTraffic;
use tandem_core::{
    AdminState, Backend, BackendAddr, BackendRole, CertName, Certificate, ConfigChange,
    Error as Domain, HostMatch, ListenAddr, PathPrefix, Pool, PoolConfig, PoolName, PrivateKeyPem,
    Revision, Route, Snapshot, TcpRoute, ValidationError, Weight,
};

use tracing::Instrument as _;

use crate::database::{self, Availability};
use crate::error::Error;
use crate::hosts::{Hosts, SessionAttrs};

mod identity;
pub(crate) use identity::{IDENTITY_QUERY, identity_from_row};

/// The channel each committed revision is announced on.
pub const NOTIFY_CHANNEL: &str = "tandem_config";

/// The format of `change_log.change` this build writes (and the newest it
/// reads), kept in the row's `format_version`. Version 2 adds routes'
/// `redirect_https` and `hsts_max_age_s` and the certificate changes (their
/// key sealed); version 3 pools' `backend_tls`. Changing the format: see
/// ARCHITECTURE.md.
pub const CHANGE_FORMAT: u32 = 3;

pub type Result<T, E = Error> = std::result::Result<T, E>;

#[derive(Clone)]
pub struct Store {
    pool: PgPool,
    availability: Availability,
    /// The URL's hosts; the pool connects to one of them at a time.
    hosts: Arc<Hosts>,
    on_commit: Arc<OnceLock<OnCommit>>,
    /// What certificates' private keys are sealed under (None: they cannot
    /// be written, and stored ones cannot be read).
    secrets: Option<Arc<tandem_tls::SecretsKey>>,
}

/// Told of each change this replica commits, right after the commit,
/// with its actor.
pub type OnCommit = Box<dyn Fn(Revision, &ConfigChange, Option<&str>) + Send + Sync>;

tokio::task_local! {
    /// Who makes the changes of the current call (`name (how)`).
    static ACTOR: String;
}

/// Runs `work` with `actor` recorded in `change_log` as the actor of the
/// changes it commits (the service's call wrapper sets it for each call).
pub async fn as_actor<F: std::future::Future>(actor: String, work: F) -> F::Output {
    ACTOR.scope(actor, work).await
}

fn current_actor() -> Option<String> {
    ACTOR.try_with(Clone::clone).ok()
}

/// What a proxy or agent last said about itself.
#[derive(Debug, Clone)]
pub struct NodeReport {
    pub node_id: String,
    pub kind: String,
    pub zone: String,
    pub applied_revision: Revision,
    pub detail: String,
    pub replica: String,
    /// A proxy's TCP listeners.
    pub listeners: Vec<ListenerReport>,
    /// Problems the node raises, a line each.
    pub alerts: Vec<String>,
    /// A proxy's TLS listener: the certificates it serves.
    pub certificates: Vec<String>,
    /// A proxy's traffic figures over its last window, per backend.
    pub traffic: Vec<BackendTraffic>,
}

/// One TCP listener as its proxy reported it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ListenerReport {
    pub listen: String,
    pub pool: String,
    pub bound: bool,
    pub error: String,
}

#[derive(Debug, Clone)]
pub struct NodeRow {
    pub report: NodeReport,
    pub last_seen_unix_ms: i64,
}

/// Times this replica found the control database's primary on another
/// host than before (a Patroni failover or switchover).
const PRIMARY_CHANGES: &str = "tandem_control_database_primary_changes_total";

impl Store {
    /// A pool that connects on first use, so the service starts (and says it
    /// is not ready) while the database is down.
    ///
    /// `url` may name several hosts (`host-1:5432,host-2:5432`) and
    /// `target_session_attrs=read-write`: the pool then follows the
    /// primary, pointed at it by [`Store::probe`] whenever the database is
    /// away (see [`crate::hosts`]).
    pub fn connect_lazy(url: &str, max_connections: u32) -> Result<Store> {
        let hosts = Hosts::parse(url)?;
        let availability = Availability::new(hosts.describe());
        // Present from the start (at 0), so an alert on its increase has data.
        metrics::counter!(PRIMARY_CHANGES).absolute(0);
        let pool = PgPoolOptions::new()
            .max_connections(max_connections)
            .acquire_timeout(Duration::from_secs(3))
            .connect_lazy_with(with_name(hosts.first().clone()));
        Ok(Store {
            pool,
            availability,
            hosts: Arc::new(hosts),
            on_commit: Arc::new(OnceLock::new()),
            secrets: None,
        })
    }

    /// Seals and opens certificates' private keys under `key`.
    pub fn with_secrets(mut self, key: tandem_tls::SecretsKey) -> Store {
        self.secrets = Some(Arc::new(key));
        self
    }

    fn secrets(&self) -> Result<&tandem_tls::SecretsKey> {
        self.secrets.as_deref().ok_or_else(|| {
            Error::Secrets(
                "this control replica has no secrets key (TANDEM_SECRETS_KEY_FILE): certificates' private keys can be neither stored nor read".into(),
            )
        })
    }

    fn seal(&self, cert: &Certificate) -> Result<Vec<u8>> {
        Ok(self
            .secrets()?
            .seal(cert.name.as_str(), cert.key_pem.expose().as_bytes()))
    }

    fn open(&self, name: &CertName, sealed: &[u8]) -> Result<PrivateKeyPem> {
        let plain = self
            .secrets()?
            .open(name.as_str(), sealed)
            .map_err(|e| Error::Secrets(e.to_string()))?;
        String::from_utf8(plain)
            .map(PrivateKeyPem::new)
            .map_err(|_| Error::Corrupt(format!("certificate {name:?}: key is not text")))
    }

    /// A change as the log stores it: a certificate's key sealed
    /// (`key_sealed`, hex), never in the clear.
    fn log_form(&self, change: &ConfigChange) -> Result<serde_json::Value> {
        let mut value = serde_json::to_value(change)
            .map_err(|e| Error::Corrupt(format!("change does not serialise: {e}")))?;
        if let ConfigChange::CertificateUpserted(cert) = change {
            let sealed = tandem_tls::seal::hex(&self.seal(cert)?);
            value["key_pem"] = serde_json::Value::String(String::new());
            value["key_sealed"] = serde_json::Value::String(sealed);
        }
        Ok(value)
    }

    /// A change from the log, a certificate's key opened.
    fn open_log_form(&self, mut value: serde_json::Value) -> Result<ConfigChange> {
        let sealed = value
            .as_object_mut()
            .and_then(|o| o.remove("key_sealed"))
            .and_then(|v| v.as_str().and_then(tandem_tls::seal::unhex));
        let mut change: ConfigChange = serde_json::from_value(value)
            .map_err(|e| Error::Corrupt(format!("change_log entry: {e}")))?;
        if let ConfigChange::CertificateUpserted(cert) = &mut change {
            let sealed = sealed.ok_or_else(|| {
                Error::Corrupt(format!(
                    "change_log: certificate {:?} without its sealed key",
                    cert.name
                ))
            })?;
            cert.key_pem = self.open(&cert.name, &sealed)?;
        }
        Ok(change)
    }

    /// Whether the database must be a primary (the hub's ping then also
    /// notices a primary demoted under it).
    pub fn requires_primary(&self) -> bool {
        self.hosts.attrs() == SessionAttrs::ReadWrite
    }

    /// Tells `f` of each change this replica commits, right after the
    /// commit and before the caller hears of it (the hub applies it to its
    /// copy, so this replica's own answers include it even if the database
    /// goes away before the notification comes back). Set once.
    pub fn on_commit(&self, f: OnCommit) {
        let _ = self.on_commit.set(f);
    }

    pub fn pg(&self) -> &PgPool {
        &self.pool
    }

    /// Whether the database is reachable, as the hub last saw it.
    pub fn availability(&self) -> &Availability {
        &self.availability
    }

    /// Refuses a write at once while the database is known to be away.
    fn writable(&self) -> Result<()> {
        if self.availability.is_up() {
            Ok(())
        } else {
            Err(Error::DatabaseDown(self.availability.outage(None)))
        }
    }

    /// Opens a change: locks the revision row and returns the revision this
    /// change will commit as.
    async fn begin_change(&self) -> Result<(Transaction<'static, Postgres>, Revision)> {
        self.writable()?;
        let mut tx = self.pool.begin().await?;
        let current: i64 = sqlx::query_scalar("SELECT revision FROM config_revision FOR UPDATE")
            .fetch_one(&mut *tx)
            .await?;
        Ok((tx, Revision(current as u64).next()))
    }

    /// Applies pending migrations. Safe when several replicas start at once:
    /// sqlx holds a Postgres advisory lock while it migrates.
    pub async fn migrate(&self) -> Result<()> {
        sqlx::migrate!("../../migrations")
            .run(&self.pool)
            .await
            .map_err(|e| match e {
                sqlx::migrate::MigrateError::Execute(e) => Error::from(e),
                other => Error::Unavailable(other.to_string()),
            })
    }

    /// Opens and closes one connection outside the pool, within 2 s: while
    /// the database is away this fails at once with the real cause
    /// ("connection refused"), where the pool would retry until its acquire
    /// timeout and then only say it timed out.
    ///
    /// With several hosts (or a primary required), finds the one to use
    /// and points the pool at it: after a failover, the promoted replica.
    pub async fn probe(&self) -> Result<()> {
        use sqlx::Connection as _;
        if self.hosts.follows() {
            let found = with_name(self.hosts.find().await?);
            let current = self.pool.connect_options();
            if (current.get_host(), current.get_port()) != (found.get_host(), found.get_port()) {
                tracing::info!(
                    host = %format!("{}:{}", found.get_host(), found.get_port()),
                    "the control database moved: connecting to its new primary"
                );
                self.pool.set_connect_options(found);
                metrics::counter!(PRIMARY_CHANGES).increment(1);
            }
            return Ok(());
        }
        const WITHIN: Duration = Duration::from_secs(2);
        let options = self.pool.connect_options();
        let conn = tokio::time::timeout(WITHIN, sqlx::PgConnection::connect_with(&options))
            .await
            .map_err(|_| {
                Error::Unavailable(format!(
                    "no answer within {}",
                    database::format_duration(WITHIN)
                ))
            })??;
        let _ = conn.close().await;
        Ok(())
    }

    pub async fn ping(&self) -> Result<()> {
        sqlx::query("SELECT 1").execute(&self.pool).await?;
        Ok(())
    }

    pub async fn current_revision(&self) -> Result<Revision> {
        let rev: i64 = sqlx::query_scalar("SELECT revision FROM config_revision")
            .fetch_one(&self.pool)
            .await?;
        Ok(Revision(rev as u64))
    }

    // === reads ===

    /// The whole configuration at one revision (a repeatable-read snapshot).
    pub async fn snapshot(&self) -> Result<Snapshot> {
        let mut tx = self.pool.begin().await?;
        sqlx::query("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ READ ONLY")
            .execute(&mut *tx)
            .await?;
        let row = sqlx::query(IDENTITY_QUERY).fetch_one(&mut *tx).await?;
        let (store, revision) = identity_from_row(&row)?;
        let mut snapshot = Snapshot {
            revision,
            store: Some(store),
            ..Default::default()
        };
        for row in sqlx::query("SELECT name, settings, revision FROM pools ORDER BY name")
            .fetch_all(&mut *tx)
            .await?
        {
            let pool = pool_from_row(&row)?;
            snapshot.pools.insert(pool.config.name.clone(), pool);
        }
        for row in sqlx::query(
            "SELECT pool, address, weight, role, admin_state, position FROM backends ORDER BY pool, address",
        )
        .fetch_all(&mut *tx)
        .await?
        {
            let pool: String = row.try_get("pool")?;
            let backend = backend_from_row(&row)?;
            let name = PoolName::new(pool).map_err(corrupt)?;
            if let Some(p) = snapshot.pools.get_mut(&name) {
                p.backends.push(backend);
            }
        }
        for p in snapshot.pools.values_mut() {
            p.backends.sort_by(|a, b| a.address.cmp(&b.address));
        }
        snapshot.routes = sqlx::query(
            "SELECT host, path_prefix, pool, redirect_https, hsts_max_age_s FROM routes",
        )
        .fetch_all(&mut *tx)
        .await?
        .iter()
        .map(route_from_row)
        .collect::<Result<_>>()?;
        snapshot
            .routes
            .sort_by(|a, b| (&a.host, &a.path_prefix).cmp(&(&b.host, &b.path_prefix)));
        snapshot.tcp_routes = sqlx::query("SELECT listen, pool FROM tcp_routes")
            .fetch_all(&mut *tx)
            .await?
            .iter()
            .map(tcp_route_from_row)
            .collect::<Result<_>>()?;
        snapshot.tcp_routes.sort_by_key(|r| r.listen);
        for row in sqlx::query("SELECT name, chain_pem, key_sealed FROM certificates")
            .fetch_all(&mut *tx)
            .await?
        {
            let name = CertName::new(row.try_get::<String, _>("name")?).map_err(corrupt)?;
            let sealed: Vec<u8> = row.try_get("key_sealed")?;
            let cert = Certificate {
                key_pem: self.open(&name, &sealed)?,
                chain_pem: row.try_get("chain_pem")?,
                name: name.clone(),
            };
            snapshot.certificates.insert(name, cert);
        }
        tx.commit().await?;
        Ok(snapshot)
    }

    /// Each certificate's name and the revision that last wrote it.
    pub async fn certificate_revisions(&self) -> Result<Vec<(String, Revision)>> {
        let rows = sqlx::query("SELECT name, revision FROM certificates ORDER BY name")
            .fetch_all(&self.pool)
            .await?;
        rows.iter()
            .map(|r| {
                Ok((
                    r.try_get("name")?,
                    Revision(r.try_get::<i64, _>("revision")? as u64),
                ))
            })
            .collect()
    }

    pub async fn pool(&self, name: &PoolName) -> Result<Pool> {
        let mut conn = self.pool.acquire().await?;
        load_pool(&mut conn, name).await
    }

    pub async fn pools(&self) -> Result<(Vec<Pool>, Revision)> {
        let s = self.snapshot().await?;
        Ok((s.pools.into_values().collect(), s.revision))
    }

    /// HTTP and TCP routes at one revision.
    pub async fn routes(&self) -> Result<(Vec<Route>, Vec<TcpRoute>, Revision)> {
        let s = self.snapshot().await?;
        Ok((s.routes, s.tcp_routes, s.revision))
    }

    /// Committed changes after `after`, in order, at most `limit`.
    pub async fn changes_since(
        &self,
        after: Revision,
        limit: i64,
    ) -> Result<Vec<(Revision, ConfigChange)>> {
        Ok(self
            .changes_with_actors_since(after, limit)
            .await?
            .into_iter()
            .map(|(rev, change, _)| (rev, change))
            .collect())
    }

    /// [`Store::changes_since`] with each change's actor (None: not
    /// recorded).
    pub async fn changes_with_actors_since(
        &self,
        after: Revision,
        limit: i64,
    ) -> Result<Vec<(Revision, ConfigChange, Option<String>)>> {
        let rows = sqlx::query(
            "SELECT revision, change, format_version, actor FROM change_log WHERE revision > $1 ORDER BY revision LIMIT $2",
        )
        .bind(after.0 as i64)
        .bind(limit)
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| {
                let (rev, change) = logged_change_from_row(r)?;
                let actor: Option<String> = r.try_get("actor")?;
                Ok((rev, self.open_log_form(change)?, actor))
            })
            .collect()
    }

    // === writes ===

    pub async fn create_pool(&self, config: PoolConfig) -> Result<(Pool, Revision)> {
        let (mut tx, rev) = self.begin_change().await?;
        let exists: bool =
            sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM pools WHERE name = $1)")
                .bind(config.name.as_str())
                .fetch_one(&mut *tx)
                .await?;
        if exists {
            return Err(Domain::PoolExists {
                name: config.name.to_string(),
            }
            .into());
        }
        sqlx::query("INSERT INTO pools (name, settings, revision) VALUES ($1, $2, $3)")
            .bind(config.name.as_str())
            .bind(Json(&config))
            .bind(rev.0 as i64)
            .execute(&mut *tx)
            .await?;
        let pool = Pool {
            config: config.clone(),
            backends: Vec::new(),
            revision: rev,
        };
        self.finish_change(tx, rev, &ConfigChange::PoolUpserted(config))
            .await?;
        Ok((pool, rev))
    }

    /// Replaces a pool's settings with `update(current)`.
    pub async fn update_pool(
        &self,
        name: &PoolName,
        expected: Option<Revision>,
        update: impl FnOnce(PoolConfig) -> Result<PoolConfig, ValidationError>,
    ) -> Result<(Pool, Revision)> {
        let (mut tx, rev) = self.begin_change().await?;
        let mut pool = load_pool(&mut tx, name).await?;
        check_expected(name, &pool, expected)?;
        let config = update(pool.config.clone())?;
        sqlx::query("UPDATE pools SET settings = $2, revision = $3 WHERE name = $1")
            .bind(name.as_str())
            .bind(Json(&config))
            .bind(rev.0 as i64)
            .execute(&mut *tx)
            .await?;
        pool.config = config.clone();
        pool.revision = rev;
        self.finish_change(tx, rev, &ConfigChange::PoolUpserted(config))
            .await?;
        Ok((pool, rev))
    }

    pub async fn delete_pool(
        &self,
        name: &PoolName,
        expected: Option<Revision>,
    ) -> Result<Revision> {
        let (mut tx, rev) = self.begin_change().await?;
        let pool = load_pool(&mut tx, name).await?;
        check_expected(name, &pool, expected)?;
        let routes: i64 = sqlx::query_scalar(
            "SELECT (SELECT count(*) FROM routes WHERE pool = $1)
                  + (SELECT count(*) FROM tcp_routes WHERE pool = $1)",
        )
        .bind(name.as_str())
        .fetch_one(&mut *tx)
        .await?;
        if routes > 0 {
            return Err(Domain::PoolInUse {
                name: name.to_string(),
                routes: routes as usize,
            }
            .into());
        }
        sqlx::query("DELETE FROM pools WHERE name = $1")
            .bind(name.as_str())
            .execute(&mut *tx)
            .await?;
        self.finish_change(tx, rev, &ConfigChange::PoolDeleted { name: name.clone() })
            .await?;
        Ok(rev)
    }

    /// Adds a backend; one whose `order` is 0 goes after the last one.
    pub async fn add_backend(
        &self,
        pool_name: &PoolName,
        mut backend: Backend,
        expected: Option<Revision>,
    ) -> Result<(Backend, Revision)> {
        let (mut tx, rev) = self.begin_change().await?;
        let pool = load_pool(&mut tx, pool_name).await?;
        check_expected(pool_name, &pool, expected)?;
        if pool.backend(&backend.address).is_some() {
            return Err(Domain::BackendExists {
                pool: pool_name.to_string(),
                address: backend.address.to_string(),
            }
            .into());
        }
        if backend.order == 0 {
            let last = pool.backends.iter().map(|b| b.order).max().unwrap_or(0);
            backend.order = last.saturating_add(1);
        }
        self.upsert_backend_change(tx, rev, pool_name, backend)
            .await
    }

    pub async fn update_backend(
        &self,
        pool_name: &PoolName,
        address: &BackendAddr,
        expected: Option<Revision>,
        update: impl FnOnce(Backend) -> Backend,
    ) -> Result<(Backend, Revision)> {
        let (mut tx, rev) = self.begin_change().await?;
        let pool = load_pool(&mut tx, pool_name).await?;
        check_expected(pool_name, &pool, expected)?;
        let current = pool
            .backend(address)
            .cloned()
            .ok_or_else(|| Domain::UnknownBackend {
                pool: pool_name.to_string(),
                address: address.to_string(),
            })?;
        let backend = update(current);
        self.upsert_backend_change(tx, rev, pool_name, backend)
            .await
    }

    pub async fn remove_backend(
        &self,
        pool_name: &PoolName,
        address: &BackendAddr,
        expected: Option<Revision>,
    ) -> Result<Revision> {
        let (mut tx, rev) = self.begin_change().await?;
        let pool = load_pool(&mut tx, pool_name).await?;
        check_expected(pool_name, &pool, expected)?;
        if pool.backend(address).is_none() {
            return Err(Domain::UnknownBackend {
                pool: pool_name.to_string(),
                address: address.to_string(),
            }
            .into());
        }
        sqlx::query("DELETE FROM backends WHERE pool = $1 AND address = $2")
            .bind(pool_name.as_str())
            .bind(address.as_str())
            .execute(&mut *tx)
            .await?;
        touch_pool(&mut tx, pool_name, rev).await?;
        let change = ConfigChange::BackendRemoved {
            pool: pool_name.clone(),
            address: address.clone(),
        };
        self.finish_change(tx, rev, &change).await?;
        Ok(rev)
    }

    /// Adds a route. A route with the same host and prefix is a conflict:
    /// two pools for one request would be ambiguous.
    pub async fn add_route(&self, route: Route) -> Result<Revision> {
        let (mut tx, rev) = self.begin_change().await?;
        load_pool(&mut tx, &route.pool).await?;
        let existing: Option<String> =
            sqlx::query_scalar("SELECT pool FROM routes WHERE host = $1 AND path_prefix = $2")
                .bind(route.host.to_string())
                .bind(route.path_prefix.as_str())
                .fetch_optional(&mut *tx)
                .await?;
        if let Some(pool) = existing {
            return Err(Domain::RouteExists {
                host: route.host.to_string(),
                path_prefix: route.path_prefix.to_string(),
                pool,
            }
            .into());
        }
        insert_route(&mut tx, &route, rev).await?;
        self.finish_change(tx, rev, &ConfigChange::RouteUpserted(route))
            .await?;
        Ok(rev)
    }

    pub async fn delete_route(
        &self,
        host: &HostMatch,
        path_prefix: &PathPrefix,
    ) -> Result<Revision> {
        let query = sqlx::query("DELETE FROM routes WHERE host = $1 AND path_prefix = $2")
            .bind(host.to_string())
            .bind(path_prefix.as_str());
        let unknown = || Domain::UnknownRoute {
            host: host.to_string(),
            path_prefix: path_prefix.to_string(),
        };
        let change = ConfigChange::RouteDeleted {
            host: host.clone(),
            path_prefix: path_prefix.clone(),
        };
        self.delete_change(query, unknown, change).await
    }

    /// Adds a TCP route. One whose address could not be bound beside an
    /// existing one's (the same port on the same or a wildcard address) is
    /// a conflict.
    pub async fn add_tcp_route(&self, route: TcpRoute) -> Result<Revision> {
        let (mut tx, rev) = self.begin_change().await?;
        load_pool(&mut tx, &route.pool).await?;
        let existing = sqlx::query("SELECT listen, pool FROM tcp_routes")
            .fetch_all(&mut *tx)
            .await?
            .iter()
            .map(tcp_route_from_row)
            .collect::<Result<Vec<_>>>()?;
        if let Some(other) = existing
            .iter()
            .find(|r| r.listen.conflicts_with(&route.listen))
        {
            return Err(Domain::TcpRouteExists {
                listen: route.listen.to_string(),
                existing: other.listen.to_string(),
                pool: other.pool.to_string(),
            }
            .into());
        }
        insert_tcp_route(&mut tx, &route, rev).await?;
        self.finish_change(tx, rev, &ConfigChange::TcpRouteUpserted(route))
            .await?;
        Ok(rev)
    }

    pub async fn delete_tcp_route(&self, listen: &ListenAddr) -> Result<Revision> {
        let query =
            sqlx::query("DELETE FROM tcp_routes WHERE listen = $1").bind(listen.to_string());
        let unknown = || Domain::UnknownTcpRoute {
            listen: listen.to_string(),
        };
        let change = ConfigChange::TcpRouteDeleted { listen: *listen };
        self.delete_change(query, unknown, change).await
    }

    /// Adds a certificate or replaces the one with the same name (the
    /// caller has checked it). Its key is stored sealed.
    pub async fn upsert_certificate(&self, cert: Certificate) -> Result<Revision> {
        let sealed = self.seal(&cert)?;
        let (mut tx, rev) = self.begin_change().await?;
        sqlx::query(
            "INSERT INTO certificates (name, chain_pem, key_sealed, revision) VALUES ($1, $2, $3, $4)
             ON CONFLICT (name) DO UPDATE SET chain_pem = $2, key_sealed = $3, revision = $4",
        )
        .bind(cert.name.as_str())
        .bind(&cert.chain_pem)
        .bind(&sealed)
        .bind(rev.0 as i64)
        .execute(&mut *tx)
        .await?;
        self.finish_change(tx, rev, &ConfigChange::CertificateUpserted(cert))
            .await?;
        Ok(rev)
    }

    pub async fn delete_certificate(&self, name: &CertName) -> Result<Revision> {
        let query = sqlx::query("DELETE FROM certificates WHERE name = $1").bind(name.as_str());
        let unknown = || Domain::UnknownCertificate {
            name: name.to_string(),
        };
        let change = ConfigChange::CertificateDeleted { name: name.clone() };
        self.delete_change(query, unknown, change).await
    }

    // === nodes ===

    pub async fn report_node(&self, r: &NodeReport) -> Result<()> {
        self.writable()?;
        sqlx::query(
            "INSERT INTO nodes (node_id, kind, zone, applied_revision, detail, replica, listeners, alerts, certificates, traffic, last_seen)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, now())
             ON CONFLICT (node_id) DO UPDATE SET kind = $2, zone = $3, applied_revision = $4,
                 detail = $5, replica = $6, listeners = $7, alerts = $8, certificates = $9, traffic = $10, last_seen = now()",
        )
        .bind(&r.node_id)
        .bind(&r.kind)
        .bind(&r.zone)
        .bind(r.applied_revision.0 as i64)
        .bind(&r.detail)
        .bind(&r.replica)
        .bind(Json(&r.listeners))
        .bind(Json(&r.alerts))
        .bind(Json(&r.certificates))
        .bind(Json(&r.traffic))
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    pub async fn nodes(&self) -> Result<Vec<NodeRow>> {
        let rows = sqlx::query(
            "SELECT node_id, kind, zone, applied_revision, detail, replica, listeners, alerts, certificates, traffic,
                    (extract(epoch FROM last_seen) * 1000)::bigint AS last_seen_ms
             FROM nodes ORDER BY kind, node_id",
        )
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| {
                Ok(NodeRow {
                    report: NodeReport {
                        node_id: r.try_get("node_id")?,
                        kind: r.try_get("kind")?,
                        zone: r.try_get("zone")?,
                        applied_revision: Revision(r.try_get::<i64, _>("applied_revision")? as u64),
                        detail: r.try_get("detail")?,
                        replica: r.try_get("replica")?,
                        listeners: r.try_get::<Json<Vec<ListenerReport>>, _>("listeners")?.0,
                        alerts: r.try_get::<Json<Vec<String>>, _>("alerts")?.0,
                        certificates: r.try_get::<Json<Vec<String>>, _>("certificates")?.0,
                        // Written by this code from checked figures; an
                        // entry that does not read back is left out.
                        traffic: r
                            .try_get::<Json<Vec<serde_json::Value>>, _>("traffic")?
                            .0
                            .into_iter()
                            .filter_map(|v| serde_json::from_value(v).ok())
                            .collect(),
                    },
                    last_seen_unix_ms: r.try_get("last_seen_ms")?,
                })
            })
            .collect()
    }
}

// === proxies' admin addresses (Explain) ===

impl Store {
    pub async fn report_admin_address(&self, node_id: &str, address: &str) -> Result<()> {
        self.writable()?;
        sqlx::query(
            "INSERT INTO node_admin (node_id, admin_address, updated) VALUES ($1, $2, now())
             ON CONFLICT (node_id) DO UPDATE SET admin_address = $2, updated = now()
             WHERE node_admin.admin_address <> $2 OR node_admin.updated < now() - interval '1 minute'",
        )
        .bind(node_id)
        .bind(address)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Every proxy's reported admin address, by node id.
    pub async fn proxy_admin_addresses(&self) -> Result<Vec<(String, String)>> {
        let rows = sqlx::query(
            "SELECT a.node_id, a.admin_address FROM node_admin a
             JOIN nodes n ON n.node_id = a.node_id AND n.kind = 'proxy'
             ORDER BY a.node_id",
        )
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| Ok((r.try_get("node_id")?, r.try_get("admin_address")?)))
            .collect()
    }
}

// === transaction helpers ===

impl Store {
    /// Writes `backend` into its pool and commits that as the change.
    async fn upsert_backend_change(
        &self,
        mut tx: Transaction<'static, Postgres>,
        rev: Revision,
        pool_name: &PoolName,
        backend: Backend,
    ) -> Result<(Backend, Revision)> {
        write_backend(&mut tx, pool_name, &backend, rev).await?;
        let change = ConfigChange::BackendUpserted {
            pool: pool_name.clone(),
            backend: backend.clone(),
        };
        self.finish_change(tx, rev, &change).await?;
        Ok((backend, rev))
    }

    /// One change that deletes the rows `query` matches; when it matches
    /// none, the change is not made and the error is `unknown()`.
    async fn delete_change<'q>(
        &self,
        query: sqlx::query::Query<'q, Postgres, sqlx::postgres::PgArguments>,
        unknown: impl FnOnce() -> Domain,
        change: ConfigChange,
    ) -> Result<Revision> {
        let (mut tx, rev) = self.begin_change().await?;
        if query.execute(&mut *tx).await?.rows_affected() == 0 {
            return Err(unknown().into());
        }
        self.finish_change(tx, rev, &change).await?;
        Ok(rev)
    }

    async fn finish_change(
        &self,
        tx: Transaction<'static, Postgres>,
        rev: Revision,
        change: &ConfigChange,
    ) -> Result<()> {
        let span = tracing::info_span!(
            "config commit",
            otel.kind = "client",
            db.system.name = "postgresql",
            revision = rev.0,
            change = change_kind(change),
        );
        let actor = current_actor();
        commit_change(tx, rev, self.log_form(change)?, change, actor.as_deref())
            .instrument(span)
            .await?;
        if let Some(f) = self.on_commit.get() {
            f(rev, change, actor.as_deref());
        }
        Ok(())
    }
}

async fn commit_change(
    mut tx: Transaction<'static, Postgres>,
    rev: Revision,
    logged: serde_json::Value,
    change: &ConfigChange,
    actor: Option<&str>,
) -> Result<()> {
    sqlx::query(
        "INSERT INTO change_log (revision, change, format_version, actor) VALUES ($1, $2, $3, $4)",
    )
    .bind(rev.0 as i64)
    .bind(Json(logged))
    .bind(CHANGE_FORMAT as i32)
    .bind(actor)
    .execute(&mut *tx)
    .await?;
    commit_notifying(tx, rev).await?;
    tracing::info!(
        revision = rev.0,
        change = change_kind(change),
        "committed change"
    );
    Ok(())
}

fn change_kind(c: &ConfigChange) -> &'static str {
    match c {
        ConfigChange::PoolUpserted(_) => "pool_upserted",
        ConfigChange::PoolDeleted { .. } => "pool_deleted",
        ConfigChange::BackendUpserted { .. } => "backend_upserted",
        ConfigChange::BackendRemoved { .. } => "backend_removed",
        ConfigChange::RouteUpserted(_) => "route_upserted",
        ConfigChange::RouteDeleted { .. } => "route_deleted",
        ConfigChange::TcpRouteUpserted(_) => "tcp_route_upserted",
        ConfigChange::TcpRouteDeleted { .. } => "tcp_route_deleted",
        ConfigChange::CertificateUpserted(_) => "certificate_upserted",
        ConfigChange::CertificateDeleted { .. } => "certificate_deleted",
    }
}

fn check_expected(name: &PoolName, pool: &Pool, expected: Option<Revision>) -> Result<()> {
    match expected {
        Some(e) if e != pool.revision => Err(Domain::StaleRevision {
            what: format!("pool \"{name}\""),
            expected: e.0,
            actual: pool.revision.0,
        }
        .into()),
        _ => Ok(()),
    }
}

async fn load_pool(conn: &mut sqlx::PgConnection, name: &PoolName) -> Result<Pool> {
    let row = sqlx::query("SELECT name, settings, revision FROM pools WHERE name = $1")
        .bind(name.as_str())
        .fetch_optional(&mut *conn)
        .await?
        .ok_or_else(|| Domain::UnknownPool {
            name: name.to_string(),
        })?;
    let mut pool = pool_from_row(&row)?;
    pool.backends = sqlx::query(
        "SELECT address, weight, role, admin_state, position FROM backends WHERE pool = $1 ORDER BY address",
    )
    .bind(name.as_str())
    .fetch_all(&mut *conn)
    .await?
    .iter()
    .map(backend_from_row)
    .collect::<Result<_>>()?;
    pool.backends.sort_by(|a, b| a.address.cmp(&b.address));
    Ok(pool)
}

async fn write_backend(
    tx: &mut Transaction<'static, Postgres>,
    pool: &PoolName,
    b: &Backend,
    rev: Revision,
) -> Result<()> {
    sqlx::query(
        "INSERT INTO backends (pool, address, weight, role, admin_state, revision, position)
         VALUES ($1, $2, $3, $4, $5, $6, $7)
         ON CONFLICT (pool, address) DO UPDATE
         SET weight = $3, role = $4, admin_state = $5, revision = $6, position = $7",
    )
    .bind(pool.as_str())
    .bind(b.address.as_str())
    .bind(b.weight.get() as i32)
    .bind(b.role.as_str())
    .bind(b.admin_state.as_str())
    .bind(rev.0 as i64)
    .bind(i32::try_from(b.order).unwrap_or(i32::MAX))
    .execute(&mut **tx)
    .await?;
    touch_pool(tx, pool, rev).await
}

/// Commits `tx`, the change to revision `rev`: sets the configuration's
/// revision to `rev`; listeners hear of it when (and only if) it commits,
/// and the revision gauge follows.
async fn commit_notifying(mut tx: Transaction<'static, Postgres>, rev: Revision) -> Result<()> {
    sqlx::query("UPDATE config_revision SET revision = $1")
        .bind(rev.0 as i64)
        .execute(&mut *tx)
        .await?;
    sqlx::query("SELECT pg_notify($1, $2)")
        .bind(NOTIFY_CHANNEL)
        .bind(rev.0.to_string())
        .execute(&mut *tx)
        .await?;
    tx.commit().await?;
    metrics::gauge!("tandem_control_revision").set(rev.0 as f64);
    Ok(())
}

/// Writes a route's row (the caller has checked it is new).
async fn insert_route(
    tx: &mut Transaction<'static, Postgres>,
    route: &Route,
    rev: Revision,
) -> Result<()> {
    sqlx::query(
        "INSERT INTO routes (host, path_prefix, pool, revision, redirect_https, hsts_max_age_s)
         VALUES ($1, $2, $3, $4, $5, $6)",
    )
    .bind(route.host.to_string())
    .bind(route.path_prefix.as_str())
    .bind(route.pool.as_str())
    .bind(rev.0 as i64)
    .bind(route.redirect_https)
    .bind(i32::try_from(route.hsts_max_age_s).unwrap_or(i32::MAX))
    .execute(&mut **tx)
    .await?;
    Ok(())
}

/// Writes a TCP route's row (the caller has checked it conflicts with none).
async fn insert_tcp_route(
    tx: &mut Transaction<'static, Postgres>,
    route: &TcpRoute,
    rev: Revision,
) -> Result<()> {
    sqlx::query("INSERT INTO tcp_routes (listen, pool, revision) VALUES ($1, $2, $3)")
        .bind(route.listen.to_string())
        .bind(route.pool.as_str())
        .bind(rev.0 as i64)
        .execute(&mut **tx)
        .await?;
    Ok(())
}

/// A backend change is a change of its pool too (for expected_revision).
async fn touch_pool(
    tx: &mut Transaction<'static, Postgres>,
    pool: &PoolName,
    rev: Revision,
) -> Result<()> {
    sqlx::query("UPDATE pools SET revision = $2 WHERE name = $1")
        .bind(pool.as_str())
        .bind(rev.0 as i64)
        .execute(&mut **tx)
        .await?;
    Ok(())
}

// === rows ===

fn corrupt(e: impl std::fmt::Display) -> Error {
    Error::Corrupt(e.to_string())
}

/// A `change_log` row (`revision`, `change`, `format_version`).
/// A certificate's key stays sealed: this is for reading what changed, not
/// for serving it.
pub(crate) fn change_from_row(row: &sqlx::postgres::PgRow) -> Result<(Revision, ConfigChange)> {
    let (rev, value) = logged_change_from_row(row)?;
    let change = serde_json::from_value(value)
        .map_err(|e| Error::Corrupt(format!("change_log row at revision {}: {e}", rev.0)))?;
    Ok((rev, change))
}

/// A `change_log` row's revision and its change as stored (certificates'
/// keys sealed), once its format version is one this build reads.
fn logged_change_from_row(row: &sqlx::postgres::PgRow) -> Result<(Revision, serde_json::Value)> {
    let rev: i64 = row.try_get("revision")?;
    let version: i32 = row.try_get("format_version")?;
    format::check(
        || format!("change_log row at revision {rev}"),
        Some(u32::try_from(version).map_err(corrupt)?),
        CHANGE_FORMAT,
    )?;
    let Json(change): Json<serde_json::Value> = row.try_get("change")?;
    Ok((Revision(rev as u64), change))
}

fn pool_from_row(row: &sqlx::postgres::PgRow) -> Result<Pool> {
    let Json(config): Json<PoolConfig> = row.try_get("settings")?;
    let rev: i64 = row.try_get("revision")?;
    Ok(Pool {
        config,
        backends: Vec::new(),
        revision: Revision(rev as u64),
    })
}

fn backend_from_row(row: &sqlx::postgres::PgRow) -> Result<Backend> {
    let address: String = row.try_get("address")?;
    let weight: i32 = row.try_get("weight")?;
    let role: String = row.try_get("role")?;
    let state: String = row.try_get("admin_state")?;
    let position: i32 = row.try_get("position")?;
    Ok(Backend {
        order: u32::try_from(position).map_err(corrupt)?,
        address: BackendAddr::new(address).map_err(corrupt)?,
        weight: Weight::new(weight as u32).map_err(corrupt)?,
        role: match role.as_str() {
            "backup" => BackendRole::Backup,
            "primary" => BackendRole::Primary,
            other => return Err(corrupt(format!("backend role {other:?}"))),
        },
        admin_state: match state.as_str() {
            "enabled" => AdminState::Enabled,
            "draining" => AdminState::Draining,
            "disabled" => AdminState::Disabled,
            other => return Err(corrupt(format!("backend admin_state {other:?}"))),
        },
    })
}

fn tcp_route_from_row(row: &sqlx::postgres::PgRow) -> Result<TcpRoute> {
    let listen: String = row.try_get("listen")?;
    let pool: String = row.try_get("pool")?;
    Ok(TcpRoute {
        listen: ListenAddr::new(&listen).map_err(corrupt)?,
        pool: PoolName::new(pool).map_err(corrupt)?,
    })
}

fn route_from_row(row: &sqlx::postgres::PgRow) -> Result<Route> {
    let host: String = row.try_get("host")?;
    let prefix: String = row.try_get("path_prefix")?;
    let pool: String = row.try_get("pool")?;
    Ok(Route {
        host: HostMatch::new(&host).map_err(corrupt)?,
        path_prefix: PathPrefix::new(&prefix).map_err(corrupt)?,
        pool: PoolName::new(pool).map_err(corrupt)?,
        redirect_https: row.try_get("redirect_https")?,
        hsts_max_age_s: row.try_get::<i32, _>("hsts_max_age_s")?.max(0) as u32,
    })
}

// === health history ===

impl Store {
    pub async fn last_recorded_health_index(&self) -> Result<u64> {
        let max: Option<i64> = sqlx::query_scalar("SELECT max(raft_index) FROM health_history")
            .fetch_one(&self.pool)
            .await?;
        Ok(max.unwrap_or(0) as u64)
    }

    /// Records transitions (idempotent per raft index and backend).
    pub async fn record_health(
        &self,
        transitions: &[&(u64, tandem_core::health::Transition)],
    ) -> Result<()> {
        if transitions.is_empty() {
            return Ok(());
        }
        let mut tx = self.pool.begin().await?;
        for (index, t) in transitions {
            sqlx::query(
                "INSERT INTO health_history (raft_index, pool, address, from_state, to_state, reason, decided_at)
                 VALUES ($1, $2, $3, $4, $5, $6, to_timestamp($7::double precision / 1000))
                 ON CONFLICT DO NOTHING",
            )
            .bind(*index as i64)
            .bind(t.key.pool.as_str())
            .bind(t.key.address.as_str())
            .bind(t.from.as_str())
            .bind(t.to.as_str())
            .bind(&t.reason)
            .bind(t.at_ms as f64)
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    /// Recorded transitions, oldest first.
    pub async fn health_history(&self) -> Result<Vec<(u64, String, String, String, String)>> {
        let rows = sqlx::query(
            "SELECT raft_index, pool, address, from_state, to_state FROM health_history ORDER BY raft_index, pool, address",
        )
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| {
                Ok((
                    r.try_get::<i64, _>("raft_index")? as u64,
                    r.try_get("pool")?,
                    r.try_get("address")?,
                    r.try_get("from_state")?,
                    r.try_get("to_state")?,
                ))
            })
            .collect()
    }
}

fn with_name(options: PgConnectOptions) -> PgConnectOptions {
    options.application_name("tandem-control")
}

// === the raft membership record (see `membership::record`) ===

/// One raft member as recorded in the control database.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecordedMember {
    pub id: u64,
    pub address: String,
    /// "voter" or "learner".
    pub suffrage: String,
}

impl Store {
    /// Replaces the recorded membership with `members`, as the leader saw
    /// it at (`term`, `raft_index`); a record written at a later point is
    /// kept (returns false).
    pub async fn record_raft_members(
        &self,
        term: u64,
        raft_index: u64,
        members: &[RecordedMember],
    ) -> Result<bool> {
        self.writable()?;
        let mut tx = self.pool.begin().await?;
        sqlx::query("LOCK TABLE raft_members IN EXCLUSIVE MODE")
            .execute(&mut *tx)
            .await?;
        let newest: Option<(i64, i64)> = sqlx::query_as(
            "SELECT term, raft_index FROM raft_members ORDER BY term DESC, raft_index DESC LIMIT 1",
        )
        .fetch_optional(&mut *tx)
        .await?;
        if newest.is_some_and(|(t, i)| (t as u64, i as u64) > (term, raft_index)) {
            return Ok(false);
        }
        sqlx::query("DELETE FROM raft_members")
            .execute(&mut *tx)
            .await?;
        for m in members {
            sqlx::query(
                "INSERT INTO raft_members (id, address, suffrage, term, raft_index) VALUES ($1, $2, $3, $4, $5)",
            )
            .bind(m.id as i64)
            .bind(&m.address)
            .bind(&m.suffrage)
            .bind(term as i64)
            .bind(raft_index as i64)
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        Ok(true)
    }

    /// The recorded membership, by id. Read over a connection of its own
    /// to the first host (a start-up check: it must not hold up the pool
    /// while the database is away).
    pub async fn raft_members(&self) -> Result<Vec<RecordedMember>> {
        use sqlx::Connection as _;
        let mut conn =
            sqlx::PgConnection::connect_with(&with_name(self.hosts.first().clone())).await?;
        let rows: Vec<(i64, String, String)> =
            sqlx::query_as("SELECT id, address, suffrage FROM raft_members ORDER BY id")
                .fetch_all(&mut conn)
                .await?;
        let _ = conn.close().await;
        Ok(rows
            .into_iter()
            .map(|(id, address, suffrage)| RecordedMember {
                id: id as u64,
                address,
                suffrage,
            })
            .collect())
    }
}
