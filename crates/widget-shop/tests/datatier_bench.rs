//! The data tier's two measured figures, run by hand (`#[ignore]`):
//!
//! - `sync_cost`: what `synchronous_mode_strict` costs a checkout. Two
//!   Patroni clusters of three on one etcd, one with strict synchronous
//!   replication and one asynchronous, `fsync` on in both, a widget-shop
//!   on each primary; rounds of sequential checkouts alternate between the
//!   two (interleaved, same run), and each side's p50/p99 is printed.
//!   `scripts/bench/sync-cost.sh` runs it.
//! - `db_failover`: the primary's host killed → the first successful write
//!   through Tandem's TCP route (`single_active`, checked on `/primary`)
//!   and through HAProxy (`mode tcp`, `option httpchk GET /primary`,
//!   `check port <rest> inter 1s fall 2`) in front of the same Patroni
//!   cluster, both writing at once after the same kill, for several kills.
//!   `scripts/bench/db-failover.sh` runs it.
//!
//! Both print their tables on stdout and append them to
//! `$DATATIER_BENCH_REPORT` when it is set.

mod common;

use std::io::Write as _;
use std::net::SocketAddr;
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use reqwest::StatusCode;
use sqlx::Connection;
use sqlx::postgres::PgConnection;
use tandem_testkit::patroni::{Etcd, PatroniCluster, PatroniOptions};
use tandem_testkit::{Process, free_addr};

use common::tandem::{DatabaseChecks, Tandem};
use common::{Shop, Shopper};

fn env_usize(name: &str, default: usize) -> anyhow::Result<usize> {
    match std::env::var(name) {
        Ok(v) if !v.is_empty() => v
            .parse()
            .with_context(|| format!("{name} must be a whole number (got {v:?})")),
        _ => Ok(default),
    }
}

fn report(text: &str) -> anyhow::Result<()> {
    println!("{text}");
    if let Ok(path) = std::env::var("DATATIER_BENCH_REPORT")
        && !path.is_empty()
    {
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .with_context(|| format!("opening {path}"))?;
        writeln!(f, "{text}")?;
    }
    Ok(())
}

/// The `q`-quantile (0..=1) of sorted `v`, nearest rank.
fn quantile(sorted: &[Duration], q: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let rank = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    sorted[rank - 1]
}

fn ms(d: Duration) -> String {
    format!("{:.2} ms", d.as_secs_f64() * 1000.0)
}

/// `CREATE DATABASE` on the primary; `sql` is the statement.
async fn create_database(cluster: &PatroniCluster, sql: &'static str) -> anyhow::Result<usize> {
    let primary = cluster.wait_primary(Duration::from_secs(10), None).await?;
    let db = common::db(&cluster.members()[primary].url("postgres")).await?;
    sqlx::query(sql).execute(&db).await?;
    db.close().await;
    Ok(primary)
}

// === synchronous_mode_strict's cost ===

struct Side {
    label: &'static str,
    shop: Shop,
    db: sqlx::PgPool,
    latencies: Vec<Duration>,
}

/// `n` sequential orders of one doodad; the checkout's time is recorded.
async fn checkouts(side: &mut Side, n: usize, round: usize) -> anyhow::Result<()> {
    // Stock for every round: the catalogue's is a few hundred units.
    sqlx::query("UPDATE widgets SET stock = 1000000")
        .execute(&side.db)
        .await?;
    let mut shopper = Shopper::new(&side.shop.base());
    for i in 0..n {
        shopper.add("doodad", 1).await?;
        let key = format!("{}-{round}-{i}", side.label.replace(' ', "-"));
        let start = Instant::now();
        let res = shopper.checkout(Some(&key)).await?;
        let took = start.elapsed();
        if res.status() != StatusCode::CREATED {
            bail!(
                "{} checkout {key}: {} {}",
                side.label,
                res.status(),
                res.text().await?
            );
        }
        side.latencies.push(took);
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a benchmark: scripts/bench/sync-cost.sh"]
async fn sync_cost() -> anyhow::Result<()> {
    let rounds = env_usize("SYNC_COST_ROUNDS", 6)?;
    let per_round = env_usize("SYNC_COST_CHECKOUTS", 100)?;
    let etcd = Etcd::start().await?;
    let base = |scope: &str, subnet: u8| PatroniOptions {
        fsync: true,
        ..PatroniOptions::fast(scope, subnet)
    };
    let (strict, asynchronous) = tokio::try_join!(
        PatroniCluster::start(
            &etcd,
            PatroniOptions {
                synchronous_strict: true,
                ..base("sync", 91)
            }
        ),
        PatroniCluster::start(&etcd, base("async", 92)),
    )?;
    strict.wait_sync_standby(Duration::from_secs(60)).await?;
    let mut sides = Vec::new();
    for (label, cluster) in [
        ("strict synchronous", &strict),
        ("asynchronous", &asynchronous),
    ] {
        let primary = create_database(cluster, "CREATE DATABASE shop").await?;
        let url = cluster.members()[primary].url("shop");
        let shop = Shop::start(&format!("shop-{}", label.replace(' ', "-")), &url).await?;
        let db = common::db(&url).await?;
        sides.push(Side {
            label,
            shop,
            db,
            latencies: Vec::new(),
        });
    }
    // A warm-up round each, not counted.
    for side in &mut sides {
        checkouts(side, 20, 1000).await?;
        side.latencies.clear();
    }
    for round in 0..rounds {
        // Interleaved: the side that goes first alternates.
        let order: [usize; 2] = if round % 2 == 0 { [0, 1] } else { [1, 0] };
        for i in order {
            checkouts(&mut sides[i], per_round, round).await?;
        }
    }
    let mut rows = Vec::new();
    for side in &mut sides {
        side.latencies.sort();
        rows.push((
            side.label,
            side.latencies.len(),
            quantile(&side.latencies, 0.5),
            quantile(&side.latencies, 0.99),
        ));
    }
    let mut text = format!(
        "\nsynchronous_mode_strict's cost: {rounds} interleaved rounds of {per_round} sequential checkouts \
         per side, Patroni clusters of 3 ({}), fsync on, the shop on the primary's address\n\n\
         | replication | checkouts | p50 | p99 |\n|---|---:|---:|---:|\n",
        strict.options.timers()
    );
    for (label, n, p50, p99) in &rows {
        text += &format!("| {label} | {n} | {} | {} |\n", ms(*p50), ms(*p99));
    }
    let (s, a) = (&rows[0], &rows[1]);
    text += &format!(
        "\nstrict synchronous vs asynchronous: p50 {:+.2} ms ({:.2}x), p99 {:+.2} ms ({:.2}x)",
        (s.2.as_secs_f64() - a.2.as_secs_f64()) * 1000.0,
        s.2.as_secs_f64() / a.2.as_secs_f64(),
        (s.3.as_secs_f64() - a.3.as_secs_f64()) * 1000.0,
        s.3.as_secs_f64() / a.3.as_secs_f64(),
    );
    report(&text)?;
    Ok(())
}

// === failover: Tandem's TCP route vs HAProxy ===

/// HAProxy in front of `cluster`, as in Patroni's reference setup: TCP,
/// each member checked on `/primary` on Patroni's REST port, every second,
/// down after two failures (and up after two passes, HAProxy's default
/// `rise`); a member marked down has its sessions shut.
struct Haproxy {
    listen: SocketAddr,
    process: Process,
    _dir: tempfile::TempDir,
}

impl Haproxy {
    fn start(cluster: &PatroniCluster) -> anyhow::Result<Haproxy> {
        let program = [
            "/usr/sbin/haproxy",
            "/usr/bin/haproxy",
            "/usr/local/sbin/haproxy",
        ]
        .into_iter()
        .find(|p| std::path::Path::new(p).exists())
        .context(
            "haproxy not found: apt-get install haproxy (scripts/bench/db-failover.sh does)",
        )?;
        let dir = tempfile::Builder::new()
            .prefix("tandem-haproxy-")
            .tempdir()?;
        let listen = free_addr();
        let mut config = format!(
            "global\n  maxconn 1000\n\
             defaults\n  mode tcp\n  timeout connect 1s\n  timeout client 30m\n  timeout server 30m\n  timeout check 800ms\n\
             listen postgres-primary\n  bind {listen}\n  option httpchk GET /primary\n  http-check expect status 200\n  \
             default-server inter 1s fall 2 rise 2 on-marked-down shutdown-sessions\n"
        );
        for m in cluster.members() {
            config += &format!(
                "  server {} {} check port {}\n",
                m.name,
                m.pg,
                cluster.rest_port()
            );
        }
        let path = dir.path().join("haproxy.cfg");
        std::fs::write(&path, config)?;
        let mut cmd = Command::new(program);
        cmd.arg("-db").arg("-f").arg(&path);
        let process = Process::spawn_command("haproxy", cmd)?;
        Ok(Haproxy {
            listen,
            process,
            _dir: dir,
        })
    }
}

/// One write on a new connection through `url`: true when it committed
/// (a replica refuses it: read-only).
async fn write_once(url: &str) -> bool {
    let attempt = async {
        let mut c = PgConnection::connect(url).await?;
        sqlx::query("INSERT INTO probe (at) VALUES (now())")
            .execute(&mut c)
            .await?;
        let _ = c.close().await;
        anyhow::Ok(())
    };
    matches!(
        tokio::time::timeout(Duration::from_secs(2), attempt).await,
        Ok(Ok(()))
    )
}

/// Writes every 50 ms until one commits; the time from `since`.
async fn first_write(url: String, since: Instant, limit: Duration) -> Option<Duration> {
    while since.elapsed() < limit {
        if write_once(&url).await {
            return Some(since.elapsed());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    None
}

/// Until `n` writes in a row commit through `url`.
async fn wait_writable(url: &str, what: &str) -> anyhow::Result<()> {
    let start = Instant::now();
    let mut streak = 0;
    while streak < 5 {
        if write_once(url).await {
            streak += 1;
        } else {
            streak = 0;
        }
        if start.elapsed() > Duration::from_secs(60) {
            bail!("{what} took no write within 60 s");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a benchmark: scripts/bench/db-failover.sh"]
async fn db_failover() -> anyhow::Result<()> {
    let runs = env_usize("DB_FAILOVER_RUNS", 3)?;
    let etcd = Etcd::start().await?;
    // Asynchronous replication: the time measured is the router's part
    // (Patroni's promotion is the same for both), not a synchronous
    // replica's reconnection.
    let mut cluster = PatroniCluster::start(&etcd, PatroniOptions::fast("bench", 93)).await?;
    let primary = create_database(&cluster, "CREATE DATABASE bench").await?;
    let db = common::db(&cluster.members()[primary].url("bench")).await?;
    sqlx::query("CREATE TABLE probe (at timestamptz NOT NULL)")
        .execute(&db)
        .await?;
    db.close().await;

    let tandem = Tandem::start().await?;
    // The same checks as HAProxy's: every second, down after 2 failures,
    // up after 2 passes.
    let routes = tandem
        .route_database_with(
            &cluster,
            DatabaseChecks {
                interval_ms: 1_000,
                timeout_ms: 800,
                rise: 2,
                fall: 2,
            },
        )
        .await?;
    let mut haproxy = Haproxy::start(&cluster)?;
    let tandem_url = routes.primary_url("bench");
    let haproxy_url = format!("postgres://postgres@{}/bench", haproxy.listen);

    let mut rows = Vec::new();
    for run in 0..runs {
        cluster
            .wait_replicas(2, Duration::from_secs(90))
            .await
            .map_err(|e| anyhow::anyhow!("{e}\n{}", cluster.logs()))?;
        wait_writable(&tandem_url, "Tandem's route").await?;
        wait_writable(&haproxy_url, "HAProxy")
            .await
            .map_err(|e| anyhow::anyhow!("{e}\n{}", haproxy.process.logs()))?;
        // Past HAProxy's and the agents' rise on every member.
        tokio::time::sleep(Duration::from_secs(3)).await;
        let old = cluster.wait_primary(Duration::from_secs(10), None).await?;
        let killed = Instant::now();
        cluster.kill_host(old);
        let limit = Duration::from_secs(90);
        // Both writers start at once; which is spawned first alternates.
        let (t, h) = if run % 2 == 0 {
            let t = tokio::spawn(first_write(tandem_url.clone(), killed, limit));
            let h = tokio::spawn(first_write(haproxy_url.clone(), killed, limit));
            (t.await?, h.await?)
        } else {
            let h = tokio::spawn(first_write(haproxy_url.clone(), killed, limit));
            let t = tokio::spawn(first_write(tandem_url.clone(), killed, limit));
            (t.await?, h.await?)
        };
        let promoted = cluster.primary().await;
        let (Some(t), Some(h)) = (t, h) else {
            bail!(
                "run {run}: no write within {limit:?} (Tandem {t:?}, HAProxy {h:?})\n{}\n--- haproxy ---\n{}",
                cluster.logs(),
                haproxy.process.logs()
            );
        };
        println!(
            "run {}: {} killed, {} promoted; first write: Tandem {:.2} s, HAProxy {:.2} s",
            run + 1,
            cluster.members()[old].name,
            promoted
                .map(|p| cluster.members()[p].name.clone())
                .unwrap_or_else(|| "?".into()),
            t.as_secs_f64(),
            h.as_secs_f64()
        );
        rows.push((t, h));
        cluster.start_host(old)?;
    }
    let mut text = format!(
        "\nThe primary's host killed → first successful write (a new connection and an INSERT every 50 ms), \
         Patroni cluster of 3 ({}, asynchronous), both routers checking /primary every 1 s, fall 2, rise 2\n\n\
         | run | Tandem TCP route | HAProxy | Tandem / HAProxy |\n|---:|---:|---:|---:|\n",
        cluster.options.timers()
    );
    for (i, (t, h)) in rows.iter().enumerate() {
        text += &format!(
            "| {} | {:.2} s | {:.2} s | {:.2}x |\n",
            i + 1,
            t.as_secs_f64(),
            h.as_secs_f64(),
            t.as_secs_f64() / h.as_secs_f64()
        );
    }
    let mut ratios: Vec<f64> = rows
        .iter()
        .map(|(t, h)| t.as_secs_f64() / h.as_secs_f64())
        .collect();
    ratios.sort_by(f64::total_cmp);
    text += &format!(
        "\nTandem / HAProxy over {} runs: median {:.2}x, range {:.2}x to {:.2}x (goal ≤ 1.0x)",
        ratios.len(),
        ratios[ratios.len() / 2],
        ratios[0],
        ratios[ratios.len() - 1]
    );
    report(&text)?;
    haproxy.process.kill();
    drop(routes);
    Ok(())
}
