//! Tandem in front of the shop: a real `tandem-control` (on its own
//! Postgres), the shop's pool and route created through the gRPC API, and
//! real `tandem-proxy` processes following the control plane.

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::bail;
use tandem_proto::v1;
use tandem_testkit::agent::AgentProcess;
use tandem_testkit::patroni::PatroniCluster;
use tandem_testkit::proxy::ProxyProcess;
use tandem_testkit::{ControlPlane, NODE_TOKEN, Postgres, declare_pool, free_addr, wait_http_ok};

use super::Shop;

/// The pool every test and stage puts the shop servers in.
pub const SHOP_POOL: &str = "shop";

/// Two shop servers on one database, behind a Tandem control plane on
/// the same Postgres cluster, with the `shop` pool of both configured.
/// Fields drop in order: Tandem, the shops, then Postgres.
pub struct ShopsBehindTandem {
    pub tandem: Tandem,
    pub shops: [Shop; 2],
    /// The shop database's URL.
    pub url: String,
    _pg: Postgres,
}

impl ShopsBehindTandem {
    pub async fn start() -> anyhow::Result<ShopsBehindTandem> {
        let (pg, url) = super::shop_database()?;
        let shops = [
            Shop::start("shop-1", &url).await?,
            Shop::start("shop-2", &url).await?,
        ];
        let tandem = Tandem::start_on(&pg.url()).await?;
        tandem.configure_shop_pool(&[&shops[0], &shops[1]]).await?;
        Ok(ShopsBehindTandem {
            tandem,
            shops,
            url,
            _pg: pg,
        })
    }
}

/// A control plane with its own database.
pub struct Tandem {
    pub control: ControlPlane,
    _pg: Option<Postgres>,
}

impl Tandem {
    /// A control plane on a Postgres cluster of its own.
    pub async fn start() -> anyhow::Result<Tandem> {
        let pg = Postgres::start()?;
        let control = ControlPlane::start(&pg.url()).await?;
        Ok(Tandem {
            control,
            _pg: Some(pg),
        })
    }

    /// [`Tandem::start`] with extra environment for the control plane.
    pub async fn start_with_env(env: Vec<(String, String)>) -> anyhow::Result<Tandem> {
        let pg = Postgres::start()?;
        let control = tandem_testkit::ControlPlane::start_with(
            &pg.url(),
            tandem_testkit::ControlPlaneOptions {
                env,
                ..Default::default()
            },
        )
        .await?;
        Ok(Tandem {
            control,
            _pg: Some(pg),
        })
    }

    /// A control plane on `database_url` (a database of its own on a
    /// cluster the caller owns).
    pub async fn start_on(database_url: &str) -> anyhow::Result<Tandem> {
        Ok(Tandem {
            control: ControlPlane::start(database_url).await?,
            _pg: None,
        })
    }

    /// Creates the `shop` pool with `shops` as backends and a catch-all
    /// route to it, as an operator would with tandemctl.
    ///
    /// Round robin; a failed connect is retried once on another backend;
    /// three consecutive failures eject a backend for 5 s (passive health,
    /// so a killed server stops getting traffic with no agent running).
    /// Declares a TLS certificate through the control API.
    pub async fn add_certificate(
        &self,
        name: &str,
        chain_pem: &str,
        key_pem: &str,
    ) -> anyhow::Result<()> {
        let mut admin = self.control.admin_client().await?;
        admin
            .add_certificate(v1::AddCertificateRequest {
                certificate: Some(v1::Certificate {
                    name: name.into(),
                    chain_pem: chain_pem.into(),
                    key_pem: key_pem.into(),
                }),
            })
            .await?;
        Ok(())
    }

    pub async fn configure_shop_pool(&self, shops: &[&Shop]) -> anyhow::Result<()> {
        let addresses: Vec<String> = shops.iter().map(|s| s.addr.to_string()).collect();
        self.configure_shop_pool_at(&addresses).await
    }

    /// [`Tandem::configure_shop_pool`] with backends at `addresses`.
    pub async fn configure_shop_pool_at(&self, addresses: &[String]) -> anyhow::Result<()> {
        let pool = v1::Pool {
            name: SHOP_POOL.into(),
            policy: v1::LbPolicy::RoundRobin.into(),
            health_check: Some(v1::HealthCheck {
                path: Some("/healthz".into()),
                interval_ms: Some(1_000),
                timeout_ms: Some(500),
                rise: Some(2),
                fall: Some(2),
                ..Default::default()
            }),
            connect_timeout_ms: Some(1_000),
            request_timeout_ms: Some(10_000),
            retry: Some(v1::RetryPolicy {
                attempts: Some(1),
                per_try_timeout_ms: Some(5_000),
                budget_percent: Some(20),
            }),
            outlier: Some(v1::OutlierDetection {
                consecutive_failures: Some(3),
                base_ejection_ms: Some(5_000),
                max_ejected_percent: Some(50),
            }),
            ..Default::default()
        };
        declare_pool(&mut self.control.admin_client().await?, pool, addresses).await
    }

    /// Starts proxy `name` following this control plane and waits until it
    /// serves the shop.
    pub async fn proxy(&self, name: &str) -> anyhow::Result<ProxyProcess> {
        self.proxy_with(name, &[] as &[(&str, &str)]).await
    }

    /// Like [`Tandem::proxy`], with more environment (`TANDEM_*` settings).
    pub async fn proxy_with(
        &self,
        name: &str,
        extra: &[(impl AsRef<str>, impl AsRef<str>)],
    ) -> anyhow::Result<ProxyProcess> {
        let state = tempfile::Builder::new()
            .prefix("tandem-proxy-state-")
            .tempdir()?;
        let mut env: Vec<(&str, String)> = vec![
            ("TANDEM_TOKEN", NODE_TOKEN.to_string()),
            ("TANDEM_NODE_ID", name.to_string()),
            ("TANDEM_WORKERS", "1".to_string()),
        ];
        env.extend(
            extra
                .iter()
                .map(|(k, v)| (k.as_ref(), v.as_ref().to_string())),
        );
        let proxy = ProxyProcess::start(state, &self.control.endpoint(), &env)?;
        // Ready means it has a configuration; then the shop must answer
        // through it.
        proxy.wait_ready().await?;
        if let Err(e) = wait_http_ok(&proxy.url("/healthz"), Duration::from_secs(30)).await {
            bail!("{e}\n--- {name} log ---\n{}", proxy.process.logs());
        }
        Ok(proxy)
    }
}

/// The shop database's two addresses through Tandem, as in Patroni's
/// reference setup with HAProxy: a TCP route to a `single_active` pool of
/// every member checked on Patroni's `/primary`, and one to a pool of every
/// member checked on `/replica`. An agent checks them; a proxy serves both.
pub struct DatabaseRoutes {
    pub primary: SocketAddr,
    pub replica: SocketAddr,
    pub proxy: ProxyProcess,
    pub agent: AgentProcess,
}

/// How often the database pools' members are checked on Patroni's REST
/// API, and after how many results they change state.
#[derive(Debug, Clone, Copy)]
pub struct DatabaseChecks {
    pub interval_ms: u32,
    pub timeout_ms: u32,
    pub rise: u32,
    pub fall: u32,
}

impl Default for DatabaseChecks {
    /// Every 500 ms (400 ms to answer), down after 2 failures, up after 1
    /// pass.
    fn default() -> DatabaseChecks {
        DatabaseChecks {
            interval_ms: 500,
            timeout_ms: 400,
            rise: 1,
            fall: 2,
        }
    }
}

impl DatabaseRoutes {
    /// `postgres://postgres@<primary route>/<database>`
    pub fn primary_url(&self, database: &str) -> String {
        format!("postgres://postgres@{}/{database}", self.primary)
    }

    /// `postgres://postgres@<replica route>/<database>`
    pub fn replica_url(&self, database: &str) -> String {
        format!("postgres://postgres@{}/{database}", self.replica)
    }
}

impl Tandem {
    /// Declares the database pools and routes for `cluster` (checks every
    /// 500 ms, down after 2 failures, up after 1 pass) and starts an agent
    /// and a proxy.
    pub async fn route_database(&self, cluster: &PatroniCluster) -> anyhow::Result<DatabaseRoutes> {
        self.route_database_with(cluster, DatabaseChecks::default())
            .await
    }

    /// [`Tandem::route_database`] with the checks' timing given.
    pub async fn route_database_with(
        &self,
        cluster: &PatroniCluster,
        checks: DatabaseChecks,
    ) -> anyhow::Result<DatabaseRoutes> {
        let mut admin = self.control.admin_client().await?;
        let members: Vec<String> = cluster.members().iter().map(|m| m.pg.to_string()).collect();
        let (primary, replica) = (free_addr(), free_addr());
        // Connections to a demoted primary are closed; those to a promoted
        // replica are kept (it is still a fine place to read).
        for (name, policy, check, listen, on_unhealthy) in [
            (
                "shop-db-primary",
                v1::LbPolicy::SingleActive,
                "/primary",
                primary,
                v1::OnUnhealthy::Close,
            ),
            (
                "shop-db-replica",
                v1::LbPolicy::LeastConnections,
                "/replica",
                replica,
                v1::OnUnhealthy::Keep,
            ),
        ] {
            let pool = v1::Pool {
                name: name.into(),
                policy: policy.into(),
                health_check: Some(v1::HealthCheck {
                    path: Some(check.into()),
                    port: Some(cluster.rest_port().into()),
                    interval_ms: Some(checks.interval_ms),
                    timeout_ms: Some(checks.timeout_ms),
                    rise: Some(checks.rise),
                    fall: Some(checks.fall),
                    ..Default::default()
                }),
                connect_timeout_ms: Some(1_000),
                tcp: Some(v1::TcpSettings {
                    on_unhealthy: Some(on_unhealthy.into()),
                    ..Default::default()
                }),
                ..Default::default()
            };
            tandem_testkit::create_pool_with(&mut admin, pool, &members).await?;
            tandem_testkit::add_tcp_route(&mut admin, listen, name).await?;
        }
        let agent = AgentProcess::start("agent-1", "zone-a", &self.control.endpoint()).await?;
        let state = tempfile::Builder::new()
            .prefix("tandem-proxy-state-")
            .tempdir()?;
        let proxy = ProxyProcess::start(
            state,
            &self.control.endpoint(),
            &[
                ("TANDEM_TOKEN", NODE_TOKEN.to_string()),
                ("TANDEM_NODE_ID", "db-proxy".to_string()),
                ("TANDEM_WORKERS", "1".to_string()),
            ],
        )?;
        proxy.wait_ready().await?;
        Ok(DatabaseRoutes {
            primary,
            replica,
            proxy,
            agent,
        })
    }
}
