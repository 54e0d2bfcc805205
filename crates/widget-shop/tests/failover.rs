//! The shop's database fails over under a shopper: a Patroni cluster of
//! three real Postgres servers (synchronous_mode_strict) on a three-member
//! etcd, reached through Tandem's TCP routes (`/primary` for writes,
//! `/replica` for reads). The primary's host is killed: browsing goes on
//! from the replicas, the cart and checkout answer 503 "orders are paused"
//! with Retry-After, and once Patroni has promoted a replica the shop
//! takes orders again by itself, with the cart kept and nothing confirmed
//! lost. Then the last replica's host dies too: with no synchronous
//! replica left (`synchronous_mode_strict`), a checkout waits instead of
//! confirming an order one server holds, browsing goes on, and once the
//! replica is back the retry with the same Idempotency-Key finds the order
//! that waited (its outcome was unknown to the shopper): exactly one.

mod common;

use std::time::{Duration, Instant};

use reqwest::StatusCode;
use serde_json::Value;
use sqlx::Connection;
use tandem_testkit::patroni::{Etcd, PatroniCluster, PatroniOptions};

use common::tandem::Tandem;
use common::{Shop, Shopper};

/// Creates the shop's database on the cluster's primary, and waits until
/// every member has replayed it: the asynchronous replica may lag, and a
/// read routed to it before then fails with `database "shop" does not
/// exist` (a set-up race, not the failover under test).
async fn create_shop_database(cluster: &PatroniCluster) -> anyhow::Result<()> {
    let primary = cluster.wait_primary(Duration::from_secs(10), None).await?;
    let db = common::db(&cluster.members()[primary].url("postgres")).await?;
    sqlx::query("CREATE DATABASE shop").execute(&db).await?;
    db.close().await;
    for member in cluster.members() {
        let url = member.url("shop");
        tandem_testkit::wait_until(
            Duration::from_secs(30),
            "the shop database on every member",
            || {
                let url = url.clone();
                async move { sqlx::PgConnection::connect(&url).await.is_ok() }
            },
        )
        .await?;
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_database_failover_pauses_orders_for_seconds_and_loses_nothing() -> anyhow::Result<()> {
    let etcd = Etcd::start().await?;
    let mut cluster = PatroniCluster::start(
        &etcd,
        PatroniOptions {
            synchronous_strict: true,
            ..PatroniOptions::fast("shop", 51)
        },
    )
    .await?;
    create_shop_database(&cluster).await?;
    let tandem = Tandem::start().await?;
    let routes = tandem.route_database(&cluster).await?;
    let shop = Shop::spawn(
        "shop-1",
        &routes.primary_url("shop"),
        &[("SHOP_REPLICA_DATABASE_URL", &routes.replica_url("shop"))],
    )?;
    let mut shop = shop;
    shop.wait_ready().await?;

    // An order before the failover, and a cart in progress.
    let mut ada = Shopper::new(&shop.base());
    ada.add("sprocket", 1).await?;
    let res = ada.checkout(Some("before-failover")).await?;
    assert_eq!(res.status(), StatusCode::CREATED);
    let before: Value = res.json().await?;
    let before = before["code"].as_str().expect("an order code").to_string();
    ada.add("gizmo", 2).await?;

    // The primary's host dies.
    let old = cluster.wait_primary(Duration::from_secs(5), None).await?;
    let killed = Instant::now();
    cluster.kill_host(old);

    // Until a replica is promoted: browsing works every time; adding to
    // the cart and checking out are paused, said clearly, and retryable.
    let mut browsed = 0;
    let mut paused_json = None;
    let mut paused_page = None;
    while cluster.primary().await.is_none() && killed.elapsed() < Duration::from_secs(60) {
        let page = ada.get("/").await?;
        assert_eq!(
            page.status(),
            StatusCode::OK,
            "browsing failed {:?} into the failover: {}",
            killed.elapsed(),
            page.text().await?
        );
        browsed += 1;
        let order = ada.get(&format!("/api/orders/{before}")).await?;
        assert_eq!(
            order.status(),
            StatusCode::OK,
            "the order page, from a replica"
        );
        let res = ada.checkout(Some("during-failover")).await?;
        if res.status() == StatusCode::SERVICE_UNAVAILABLE {
            let retry_after = res.headers().get("retry-after").cloned();
            let body: Value = res.json().await?;
            if body["error"]["code"] == "orders_paused" {
                assert!(retry_after.is_some(), "503 without Retry-After");
                paused_json.get_or_insert(body);
            }
        } else {
            // A checkout that got through before the routes moved must
            // still be exactly the one order below.
            assert!(res.status().is_success(), "checkout: {}", res.status());
        }
        let page = ada
            .post_form("/cart/items", &[("widget", "doohickey"), ("quantity", "1")])
            .await?;
        if page.status() == StatusCode::SERVICE_UNAVAILABLE {
            paused_page.get_or_insert(page.text().await?);
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let new = cluster
        .wait_primary(Duration::from_secs(5), Some(old))
        .await?;
    println!(
        "{} promoted {:?} after the kill; browsed {browsed} times meanwhile",
        cluster.members()[new].name,
        killed.elapsed()
    );
    let paused = paused_json.expect("a checkout during the failover answered orders_paused");
    let message = paused["error"]["message"].as_str().unwrap_or_default();
    assert!(
        message.contains("paused for a few seconds") && message.contains("your cart is kept"),
        "{paused}"
    );
    let page = paused_page.expect("adding to the cart during the failover answered 503");
    assert!(
        page.contains("Orders are paused for a few seconds") && page.contains("your cart is kept"),
        "{page}"
    );

    // The shop recovers by itself: the same key places exactly one order
    // (or replays the one that got through), with the cart as it was.
    let recovered = Instant::now();
    let placed = loop {
        let res = ada.checkout(Some("during-failover")).await?;
        if res.status().is_success() {
            break res.json::<Value>().await?;
        }
        assert!(
            recovered.elapsed() < Duration::from_secs(30),
            "no checkout within 30 s of the promotion: {} {}",
            res.status(),
            res.text().await?
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    println!(
        "first successful checkout {:?} after the kill",
        killed.elapsed()
    );
    let slugs: Vec<&str> = placed["lines"]
        .as_array()
        .map(|ls| ls.iter().filter_map(|l| l["slug"].as_str()).collect())
        .unwrap_or_default();
    assert!(slugs.contains(&"gizmo"), "the cart was kept: {placed}");
    let again = ada.checkout(Some("during-failover")).await?;
    assert_eq!(
        again
            .headers()
            .get("idempotent-replayed")
            .map(|v| v.as_bytes()),
        Some(&b"true"[..]),
        "a retry replays the one order"
    );

    // Nothing confirmed before the kill was lost (synchronous replication),
    // and the new primary holds each order once.
    let db = common::db(&cluster.members()[new].url("shop")).await?;
    let orders: Vec<(String,)> = sqlx::query_as(
        "SELECT idempotency_key FROM orders WHERE idempotency_key IS NOT NULL ORDER BY id",
    )
    .fetch_all(&db)
    .await?;
    let keys: Vec<&str> = orders.iter().map(|(k,)| k.as_str()).collect();
    assert_eq!(keys, ["before-failover", "during-failover"]);
    let res = ada.get(&format!("/api/orders/{before}")).await?;
    assert_eq!(res.status(), StatusCode::OK);

    // synchronous_mode_strict: with no synchronous replica left (the last
    // replica's host dies too), a commit waits rather than confirm an order
    // only one server holds; browsing goes on.
    let last = (0..cluster.members().len())
        .find(|i| *i != old && *i != new)
        .expect("three members");
    ada.add("doodad", 1).await?;
    cluster.kill_host(last);
    for _ in 0..5 {
        assert_eq!(ada.get("/").await?.status(), StatusCode::OK, "browsing");
    }
    let waited = Instant::now();
    let res = ada.checkout(Some("no-sync-replica")).await?;
    assert_eq!(
        res.status(),
        StatusCode::SERVICE_UNAVAILABLE,
        "a checkout with no synchronous replica must wait, not confirm: {}",
        res.text().await?
    );
    println!(
        "with no synchronous replica: checkout answered 503 after {:?}",
        waited.elapsed()
    );
    // The replica's host comes back: the commit that waited completes, and
    // the retry with the same key finds that one order.
    cluster.start_host(last)?;
    let back = Instant::now();
    let placed = loop {
        let res = ada.checkout(Some("no-sync-replica")).await?;
        if res.status().is_success() {
            break res;
        }
        assert!(
            back.elapsed() < Duration::from_secs(60),
            "no checkout within 60 s of the replica's return: {}",
            res.status()
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    println!(
        "replica back: checkout {} (replayed: {:?}) after {:?}",
        placed.status(),
        placed.headers().get("idempotent-replayed"),
        back.elapsed()
    );
    let n: i64 =
        sqlx::query_scalar("SELECT count(*) FROM orders WHERE idempotency_key = 'no-sync-replica'")
            .fetch_one(&db)
            .await?;
    assert_eq!(n, 1, "exactly one order for the key");
    drop(routes);
    Ok(())
}
