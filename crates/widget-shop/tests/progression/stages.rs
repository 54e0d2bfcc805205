//! The three stages of the progression from one server to a highly
//! available shop. Processes on loopback stand for hosts: killing a host
//! kills every process it runs, at once.

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use anyhow::{Context, bail};
use tandem_testkit::Postgres;
use tandem_testkit::patroni::{Etcd, PatroniCluster, PatroniOptions};
use tandem_testkit::proxy::ProxyProcess;

use super::common::Shop;
use super::common::tandem::Tandem;
use super::load::{Load, LoadConfig, LoadReport};

/// The stock every widget gets before a load run, so shoppers never find
/// the shelves empty.
const RESTOCK: i32 = 1_000_000;

/// How a stage is run.
#[derive(Debug, Clone)]
pub struct RunConfig {
    /// Each phase (steady, then after each failure) lasts this long.
    pub phase: Duration,
    pub shoppers: usize,
    pub pace: Duration,
}

/// The measured outcome of one stage.
#[derive(Debug)]
pub struct StageResult {
    pub name: &'static str,
    pub topology: String,
    /// What happened at the start of each phase.
    pub phases: Vec<String>,
    pub load: LoadReport,
    /// Orders in the database for this stage's shoppers.
    pub recorded: Vec<String>,
    /// Widgets taken from stock equal widgets on recorded orders.
    pub stock_consistent: bool,
}

impl StageResult {
    /// Confirmed to a shopper, missing from the database.
    pub fn lost(&self) -> Vec<&String> {
        self.load
            .placed
            .iter()
            .filter(|c| !self.recorded.contains(c))
            .collect()
    }

    /// In the database, never confirmed to the shopper (the answer was
    /// lost and the run ended before a retry got it).
    pub fn unconfirmed(&self) -> usize {
        self.recorded
            .iter()
            .filter(|c| !self.load.placed.contains(c))
            .count()
    }

    /// The same order confirmed twice to shoppers (must never happen).
    pub fn duplicated(&self) -> usize {
        let mut codes = self.load.placed.clone();
        codes.sort();
        codes.dedup();
        self.load.placed.len() - codes.len()
    }
}

// === the shop's database, on a host that can die ===

/// The shop's Postgres cluster.
pub struct ShopDb {
    pg: Postgres,
    pub url: String,
    data_dir: String,
}

impl ShopDb {
    pub async fn start() -> anyhow::Result<ShopDb> {
        let pg = Postgres::start()?;
        let url = pg.create_database("shop")?;
        let db = super::common::db(&url).await?;
        let data_dir: String = sqlx::query_scalar("SHOW data_directory")
            .fetch_one(&db)
            .await?;
        db.close().await;
        Ok(ShopDb { pg, url, data_dir })
    }

    /// The host dies: every server process is aborted at once (`pg_ctl -m
    /// immediate`: no shutdown, connections cut, crash recovery on the next
    /// start), which is what the shop sees when its database host is
    /// killed.
    pub fn crash(&self) -> anyhow::Result<()> {
        pg_ctl(&["-D", &self.data_dir, "-m", "immediate", "-w", "stop"])
    }

    /// Brought back after the stage, to count what it recorded.
    pub fn restart(&self) -> anyhow::Result<()> {
        self.pg.restart()
    }
}

fn pg_ctl(args: &[&str]) -> anyhow::Result<()> {
    let bin = match std::env::var_os("PG_BIN") {
        Some(dir) => PathBuf::from(dir),
        None => {
            let mut found: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")?
                .filter_map(|e| e.ok())
                .filter_map(|e| {
                    let v = e.file_name().to_string_lossy().parse::<u32>().ok()?;
                    Some((v, e.path().join("bin")))
                })
                .collect();
            found.sort();
            found
                .pop()
                .map(|(_, p)| p)
                .context("no PostgreSQL server found")?
        }
    };
    let exe = bin.join("pg_ctl");
    let mut cmd = if nix::unistd::Uid::effective().is_root() {
        let mut c = Command::new("runuser");
        c.args(["-u", "postgres", "--"]).arg(&exe);
        c
    } else {
        Command::new(&exe)
    };
    let out = cmd.args(args).output()?;
    if !out.status.success() {
        bail!(
            "pg_ctl {} failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(())
}

/// Sets every widget's stock high, so a long run never sells out.
pub async fn restock(url: &str) -> anyhow::Result<()> {
    let db = super::common::db(url).await?;
    sqlx::query("UPDATE widgets SET stock = $1")
        .bind(RESTOCK)
        .execute(&db)
        .await?;
    db.close().await;
    Ok(())
}

/// What the database holds for the stage's shoppers, and whether the stock
/// taken matches the orders.
async fn recorded(url: &str, prefix: &str) -> anyhow::Result<(Vec<String>, bool)> {
    let db = super::common::db(url).await?;
    let codes: Vec<String> =
        sqlx::query_scalar("SELECT code FROM orders WHERE idempotency_key LIKE $1 || '-%'")
            .bind(prefix)
            .fetch_all(&db)
            .await?;
    let taken: i64 = sqlx::query_scalar("SELECT COALESCE(sum($1 - stock), 0)::bigint FROM widgets")
        .bind(RESTOCK)
        .fetch_one(&db)
        .await?;
    let sold: i64 =
        sqlx::query_scalar("SELECT COALESCE(sum(quantity), 0)::bigint FROM order_items")
            .fetch_one(&db)
            .await?;
    db.close().await;
    Ok((codes, taken == sold))
}

fn load_config(run: &RunConfig, prefix: &str) -> LoadConfig {
    LoadConfig {
        shoppers: run.shoppers,
        pace: run.pace,
        request_timeout: Duration::from_secs(5),
        key_prefix: prefix.to_string(),
    }
}

async fn wait_for_db(db: &ShopDb) -> anyhow::Result<()> {
    tandem_testkit::wait_until(Duration::from_secs(30), "the shop database", || async {
        super::common::db(&db.url).await.is_ok()
    })
    .await
}

/// The end of a stage that killed the database's host: stops the load,
/// brings the database back and counts what it recorded.
async fn result_after_db_restart(
    name: &'static str,
    topology: &str,
    phases: Vec<String>,
    load: Load,
    db: &ShopDb,
    prefix: &str,
) -> anyhow::Result<StageResult> {
    let report = load.stop().await?;
    db.restart()?;
    wait_for_db(db).await?;
    let (recorded, stock_consistent) = recorded(&db.url, prefix).await?;
    Ok(StageResult {
        name,
        topology: topology.into(),
        phases,
        load: report,
        recorded,
        stock_consistent,
    })
}

// === stage 1 ===

/// One server: the shop and its database on the same host. Kill the host:
/// the shop is down.
pub async fn stage_1(run: &RunConfig) -> anyhow::Result<StageResult> {
    let prefix = "stage1";
    // host-1: shop-1 and its database.
    let db = ShopDb::start().await?;
    let mut shop = Shop::start("shop-1", &db.url).await?;
    restock(&db.url).await?;

    let load = Load::start(vec![shop.base()], load_config(run, prefix)).await?;
    let mut phases = vec!["steady".to_string()];
    tokio::time::sleep(run.phase).await;

    load.next_phase();
    shop.process.kill();
    db.crash()?;
    phases.push("host-1 killed (shop-1 and the database)".into());
    tokio::time::sleep(run.phase).await;
    let topology = "one server: shop-1 + database";
    result_after_db_restart("1", topology, phases, load, &db, prefix).await
}

// === stage 2 ===

/// A Tandem proxy in front of two shop servers; the database lives on the
/// second server's host. Kill server 1: the shop keeps working. Bring it
/// back, then kill server 2's host: the database goes with it and the shop
/// fails, with fast, clear 5xx answers.
pub async fn stage_2(run: &RunConfig) -> anyhow::Result<StageResult> {
    let prefix = "stage2";
    // host-2: shop-2 and the database. host-1: shop-1.
    let db = ShopDb::start().await?;
    let mut shop_1 = Shop::start("shop-1", &db.url).await?;
    let mut shop_2 = Shop::start("shop-2", &db.url).await?;
    restock(&db.url).await?;
    // Tandem's control plane and the proxy run on hosts of their own.
    let tandem = Tandem::start().await?;
    tandem.configure_shop_pool(&[&shop_1, &shop_2]).await?;
    let proxy = tandem.proxy("proxy-1").await?;

    let load = Load::start(vec![proxy.url("")], load_config(run, prefix)).await?;
    let mut phases = vec!["steady".to_string()];
    tokio::time::sleep(run.phase).await;

    load.next_phase();
    shop_1.process.kill();
    phases.push("host-1 killed (shop-1)".into());
    tokio::time::sleep(run.phase).await;

    shop_1.restart().await?;
    load.next_phase();
    phases.push("shop-1 back".into());
    tokio::time::sleep(run.phase).await;

    load.next_phase();
    shop_2.process.kill();
    db.crash()?;
    phases.push("host-2 killed (shop-2 and the database)".into());
    tokio::time::sleep(run.phase).await;
    let topology = "proxy-1 → shop-1, shop-2; database on host-2";
    result_after_db_restart("2", topology, phases, load, &db, prefix).await
}

// === stage 3 ===

/// Two Tandem proxies, three shop servers, the database on its own host.
/// Kill a shop server, then a proxy: the shop keeps working and no order is
/// lost or duplicated.
pub async fn stage_3(run: &RunConfig) -> anyhow::Result<StageResult> {
    let prefix = "stage3";
    let db = ShopDb::start().await?;
    let shops = [
        Shop::start("shop-1", &db.url).await?,
        Shop::start("shop-2", &db.url).await?,
        Shop::start("shop-3", &db.url).await?,
    ];
    let [shop_1, mut shop_2, shop_3] = shops;
    restock(&db.url).await?;
    let tandem = Tandem::start().await?;
    tandem
        .configure_shop_pool(&[&shop_1, &shop_2, &shop_3])
        .await?;
    let mut proxies: Vec<ProxyProcess> = vec![
        tandem.proxy("proxy-1").await?,
        tandem.proxy("proxy-2").await?,
    ];

    let targets = proxies.iter().map(|p| p.url("")).collect();
    let load = Load::start(targets, load_config(run, prefix)).await?;
    let mut phases = vec!["steady".to_string()];
    tokio::time::sleep(run.phase).await;

    load.next_phase();
    shop_2.process.kill();
    phases.push("shop-2 killed".into());
    tokio::time::sleep(run.phase).await;

    load.next_phase();
    proxies[0].process.kill();
    phases.push("proxy-1 killed too".into());
    tokio::time::sleep(run.phase).await;
    let report = load.stop().await?;

    let (recorded, stock_consistent) = recorded(&db.url, prefix).await?;
    proxies.clear();
    Ok(StageResult {
        name: "3",
        topology: "proxy-1, proxy-2 → shop-1, shop-2, shop-3; database on its own host".into(),
        phases,
        load: report,
        recorded,
        stock_consistent,
    })
}

// === stage 4 ===

/// The database gets its spare: the shop's database is a Patroni cluster
/// of three (one primary, two replicas, synchronous_mode_strict) on a
/// three-member etcd, reached through Tandem's TCP routes (`/primary` for
/// writes, `/replica` for reads). Under the same steady load, the
/// primary's Postgres is killed (Patroni restarts it in place), then,
/// once the cluster is whole again, the primary's whole host (Patroni
/// promotes a replica).
pub async fn stage_4(run: &RunConfig) -> anyhow::Result<StageResult> {
    let prefix = "stage4";
    let options = PatroniOptions {
        synchronous_strict: true,
        ..PatroniOptions::fast("shop", 61)
    };
    let etcd = Etcd::start().await?;
    let mut cluster = PatroniCluster::start(&etcd, options.clone()).await?;
    let first = cluster.wait_primary(Duration::from_secs(10), None).await?;
    let admin = super::common::db(&cluster.members()[first].url("postgres")).await?;
    sqlx::query("CREATE DATABASE shop").execute(&admin).await?;
    admin.close().await;

    // One proxy serves the database's TCP routes and the shop's HTTP route.
    let tandem = Tandem::start().await?;
    let routes = tandem.route_database(&cluster).await?;
    let (primary_url, replica_url) = (routes.primary_url("shop"), routes.replica_url("shop"));
    let replica_env = [("SHOP_REPLICA_DATABASE_URL", replica_url.as_str())];
    let mut shops = Vec::new();
    for name in ["shop-1", "shop-2"] {
        let mut shop = Shop::spawn(name, &primary_url, &replica_env)?;
        shop.wait_ready().await?;
        shops.push(shop);
    }
    restock(&primary_url).await?;
    tandem
        .configure_shop_pool(&shops.iter().collect::<Vec<_>>())
        .await?;
    let proxy = &routes.proxy;
    tandem_testkit::wait_http_ok(&proxy.url("/healthz"), Duration::from_secs(30)).await?;

    let load = Load::start(vec![proxy.url("")], load_config(run, prefix)).await?;
    let mut phases = vec!["steady".to_string()];
    tokio::time::sleep(run.phase).await;

    // Patroni restarts a crashed Postgres in place while it holds the
    // leader key: no failover, a crash recovery.
    load.next_phase();
    let primary = cluster.wait_primary(Duration::from_secs(5), None).await?;
    cluster.kill_postgres(primary)?;
    phases.push("the primary's Postgres killed (SIGKILL)".into());
    tokio::time::sleep(run.phase).await;
    cluster.wait_primary(Duration::from_secs(60), None).await?;
    cluster
        .wait_replicas(options.members - 1, Duration::from_secs(60))
        .await?;
    // Only the synchronous standby may be promoted: wait until Patroni
    // has named one again after the restart.
    cluster.wait_sync_standby(Duration::from_secs(60)).await?;

    // A failover takes at least the leader key's ttl: the phase lasts
    // longer, so it also shows the recovery.
    load.next_phase();
    let primary = cluster.wait_primary(Duration::from_secs(5), None).await?;
    cluster.kill_host(primary);
    phases.push("the primary's host killed (Patroni and Postgres)".into());
    let ttl = Duration::from_secs(u64::from(options.ttl));
    tokio::time::sleep(run.phase.max(ttl + Duration::from_secs(6))).await;
    let report = load.stop().await?;

    let new = cluster
        .wait_primary(Duration::from_secs(30), Some(primary))
        .await
        .map_err(|e| anyhow::anyhow!("{e}\n{}", cluster.logs()))?;
    let (recorded, stock_consistent) =
        recorded(&cluster.members()[new].url("shop"), prefix).await?;
    drop(shops);
    Ok(StageResult {
        name: "4",
        topology: format!(
            "proxy-1 → shop-1, shop-2; database: Patroni cluster of 3 (synchronous_mode_strict; {}) behind Tandem TCP routes",
            options.timers()
        ),
        phases,
        load: report,
        recorded,
        stock_consistent,
    })
}
