//! Both databases share one etcd under different scopes, with Patroni's
//! `failsafe_mode`: when etcd loses its quorum, neither primary is demoted
//! (each still reaches every member of its cluster), and both keep taking
//! writes. A cluster without `failsafe_mode` on the same etcd shows what
//! failsafe prevents: its primary demotes itself once etcd is gone.

use std::time::{Duration, Instant};

use sqlx::Connection;
use sqlx::postgres::PgConnection;
use tandem_testkit::patroni::{Etcd, PatroniCluster, PatroniOptions, Role};

async fn write(url: &str) -> anyhow::Result<()> {
    let mut c = tokio::time::timeout(Duration::from_secs(5), PgConnection::connect(url)).await??;
    tokio::time::timeout(
        Duration::from_secs(5),
        sqlx::raw_sql(
            "CREATE TABLE IF NOT EXISTS t (at timestamptz); INSERT INTO t VALUES (now())",
        )
        .execute(&mut c),
    )
    .await??;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn losing_etcd_quorum_demotes_neither_primary_with_failsafe_mode() -> anyhow::Result<()> {
    let mut etcd = Etcd::start().await?;
    // The clusters bootstrap side by side.
    let (shop, control, plain) = tokio::try_join!(
        PatroniCluster::start(
            &etcd,
            PatroniOptions {
                synchronous_strict: true,
                ..PatroniOptions::fast("shop", 41)
            },
        ),
        PatroniCluster::start(&etcd, PatroniOptions::fast("control", 42)),
        // The contrast: one member, no failsafe.
        PatroniCluster::start(
            &etcd,
            PatroniOptions {
                members: 1,
                failsafe: false,
                ..PatroniOptions::fast("plain", 43)
            },
        ),
    )?;
    let shop_primary = shop.wait_primary(Duration::from_secs(10), None).await?;
    let control_primary = control.wait_primary(Duration::from_secs(10), None).await?;
    let shop_url = shop.members()[shop_primary].url("postgres");
    let control_url = control.members()[control_primary].url("postgres");
    write(&shop_url).await?;
    write(&control_url).await?;

    // Two of etcd's three members die: no quorum, no leader key renewals.
    let lost = Instant::now();
    etcd.kill(0);
    etcd.kill(1);

    // The cluster without failsafe demotes its primary once the leader
    // key cannot be renewed (ttl, plus retries).
    let ttl = Duration::from_secs(u64::from(shop.options.ttl));
    let mut demoted = None;
    while lost.elapsed() < ttl * 4 {
        if plain.role(0).await != Role::Primary {
            demoted = Some(lost.elapsed());
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let demoted = demoted.ok_or_else(|| {
        anyhow::anyhow!(
            "the cluster without failsafe_mode kept its primary with etcd gone\n{}",
            plain.logs()
        )
    })?;
    println!("without failsafe_mode: demoted {demoted:?} after etcd lost quorum");

    // Past the ttl and Patroni's retries, both failsafe primaries are still primaries, say so
    // to a load balancer's check, and commit writes (the shop's through its
    // synchronous replica).
    let retries = Duration::from_secs(u64::from(
        shop.options.retry_timeout + 2 * shop.options.loop_wait,
    ));
    while lost.elapsed() < ttl + retries {
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    for (cluster, primary, url) in [
        (&shop, shop_primary, &shop_url),
        (&control, control_primary, &control_url),
    ] {
        let scope = &cluster.options.scope;
        assert_eq!(
            cluster.role(primary).await,
            Role::Primary,
            "{scope}: demoted with failsafe_mode\n{}",
            cluster.logs()
        );
        assert!(cluster.answers_primary(primary).await, "{scope}: /primary");
        write(url)
            .await
            .map_err(|e| anyhow::anyhow!("{scope}: write with etcd gone: {e}"))?;
    }
    println!(
        "with failsafe_mode: both primaries kept for {:?} without etcd",
        lost.elapsed()
    );

    // etcd back: the clusters carry on with the same primaries.
    etcd.restart(0)?;
    etcd.restart(1)?;
    etcd.wait_healthy(Duration::from_secs(30)).await?;
    assert_eq!(
        shop.wait_primary(Duration::from_secs(20), None).await?,
        shop_primary
    );
    assert_eq!(
        control.wait_primary(Duration::from_secs(20), None).await?,
        control_primary
    );
    write(&shop_url).await?;
    Ok(())
}
