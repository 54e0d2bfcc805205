//! The one-server → highly available progression, measured: each stage is
//! brought up from real processes (widget-shop, tandem-control,
//! tandem-proxy, Postgres), loaded by steady simulated shoppers, broken on
//! purpose, and counted.
//!
//! `stage_3_...` runs with the other tests. `progression` is the full demo
//! (`scripts/progression.sh` runs it and prints the tables):
//!
//! ```text
//! cargo build --bins -p widget-shop -p tandem-proxy -p tandem-control
//! cargo test -p widget-shop --test progression -- --ignored --nocapture progression
//! ```
//!
//! Knobs (environment): `PROGRESSION_PHASE_SECS` (8), `PROGRESSION_SHOPPERS`
//! (6), `PROGRESSION_PACE_MS` (50: each shopper's time between requests),
//! `PROGRESSION_STAGES` (`1,2,3,4`), `PROGRESSION_REPORT` (also write the
//! tables to this file).

#[path = "../common/mod.rs"]
mod common;
mod load;
mod report;
mod soak;
mod stages;

use std::time::Duration;

use stages::{RunConfig, StageResult};

fn env_u64(name: &str, default: u64) -> anyhow::Result<u64> {
    match std::env::var(name) {
        Ok(v) => v
            .parse()
            .map_err(|_| anyhow::anyhow!("{name}: expected a whole number, got {v:?}")),
        Err(_) => Ok(default),
    }
}

fn print_tables(results: &[StageResult]) -> String {
    let text = format!("{}\n{}", report::summary(results), report::phases(results));
    println!("\n{text}");
    let notes = report::notes(results);
    if !notes.is_empty() {
        println!("failed requests in detail:\n{notes}");
    }
    text
}

/// The short run of the stage tests: 4 s phases, 4 shoppers, a request
/// each every 50 ms.
const QUICK_RUN: RunConfig = RunConfig {
    phase: Duration::from_secs(4),
    shoppers: 4,
    pace: Duration::from_millis(50),
};

/// Shoppers placed orders, and every confirmed order is recorded once,
/// with the stock taken to match.
fn assert_no_order_lost(r: &StageResult) {
    assert!(!r.load.placed.is_empty(), "shoppers placed orders");
    assert!(
        r.lost().is_empty(),
        "orders confirmed but not recorded: {:?}",
        r.lost()
    );
    assert_eq!(r.duplicated(), 0, "an order confirmed twice");
    assert!(
        r.stock_consistent,
        "stock taken differs from the orders recorded"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stage_3_a_shop_server_killed_under_load_loses_no_orders() -> anyhow::Result<()> {
    let run = QUICK_RUN;
    let r = stages::stage_3(&run).await?;
    print_tables(std::slice::from_ref(&r));

    assert_no_order_lost(&r);
    // The shop kept working through each failure: orders kept being placed
    // and nearly every request succeeded (a request in flight on the killed
    // server may fail; the bound is generous on purpose).
    for (label, t) in r.phases.iter().zip(&r.load.phases) {
        assert!(
            t.orders_confirmed > 0,
            "no order placed during {label:?}: {t:?}"
        );
        assert!(
            t.availability() >= 95.0,
            "availability {:.2} % during {label:?}: {t:?}",
            t.availability()
        );
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stage_4_the_database_primary_killed_under_load_loses_no_orders() -> anyhow::Result<()> {
    let run = QUICK_RUN;
    let r = stages::stage_4(&run).await?;
    print_tables(std::slice::from_ref(&r));

    assert_no_order_lost(&r);
    // Orders resumed by themselves after the failover (the last phase
    // outlasts Patroni's ttl), and browsing went on through both failures.
    let last = r.load.phases.last().expect("phases");
    assert!(
        last.orders_confirmed > 0,
        "no order placed after the failover: {:?}",
        last.failures
    );
    for (label, t) in r.phases.iter().zip(&r.load.phases) {
        assert!(
            t.reads_failed <= 5,
            "{} reads failed during {label:?}: {:?}",
            t.reads_failed,
            t.failures
        );
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "the full demo (about two minutes): scripts/progression.sh runs it"]
async fn progression() -> anyhow::Result<()> {
    let run = RunConfig {
        phase: Duration::from_secs(env_u64("PROGRESSION_PHASE_SECS", 8)?),
        shoppers: env_u64("PROGRESSION_SHOPPERS", 6)? as usize,
        pace: Duration::from_millis(env_u64("PROGRESSION_PACE_MS", 50)?),
    };
    let wanted = std::env::var("PROGRESSION_STAGES").unwrap_or_else(|_| "1,2,3,4".into());
    println!(
        "\nprogression: {} shoppers, one request each every {} ms, {} s per phase",
        run.shoppers,
        run.pace.as_millis(),
        run.phase.as_secs()
    );
    let mut results = Vec::new();
    for stage in wanted.split(',').map(str::trim) {
        println!("stage {stage}: starting");
        let r = match stage {
            "1" => stages::stage_1(&run).await?,
            "2" => stages::stage_2(&run).await?,
            "3" => stages::stage_3(&run).await?,
            "4" => stages::stage_4(&run).await?,
            other => anyhow::bail!("PROGRESSION_STAGES: no stage {other:?} (1, 2, 3 or 4)"),
        };
        let t = r.load.total();
        println!(
            "stage {stage}: {} requests, {} failed, {} orders placed, {} recorded",
            t.requests,
            t.failed,
            r.load.placed.len(),
            r.recorded.len()
        );
        results.push(r);
    }
    let text = print_tables(&results);
    if let Ok(path) = std::env::var("PROGRESSION_REPORT") {
        std::fs::write(&path, &text)?;
        println!("tables written to {path}");
    }
    for r in &results {
        assert!(
            r.lost().is_empty(),
            "stage {}: orders lost: {:?}",
            r.name,
            r.lost()
        );
        assert_eq!(
            r.duplicated(),
            0,
            "stage {}: an order confirmed twice",
            r.name
        );
        assert!(
            r.stock_consistent,
            "stage {}: stock does not match orders",
            r.name
        );
    }
    Ok(())
}

fn soak_report(config: &soak::SoakConfig, r: &soak::SoakReport) -> String {
    let text = r.table(config);
    println!("\n{text}");
    if !r.notes.is_empty() {
        println!("failed requests in detail:");
        for n in &r.notes {
            println!("  {n}");
        }
    }
    if let Ok(path) = std::env::var("SOAK_REPORT") {
        let _ = std::fs::write(&path, &text);
        println!("report written to {path}");
    }
    text
}

/// The short soak (about a minute): stage 3's topology, mixed traffic,
/// idle gaps swept across the keep-alive timeouts; not one request may
/// fail.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn soak_short_no_request_fails_in_a_steady_state() -> anyhow::Result<()> {
    let config = soak::SoakConfig {
        requests: u64::MAX,
        duration: Duration::from_secs(env_u64("SOAK_SECS", 45)?),
        busy: 4,
        idle: 24,
    };
    let r = soak::run(&config).await?;
    soak_report(&config, &r);
    assert!(
        r.requests > 1_000,
        "the soak sent too little: {}",
        r.requests
    );
    assert_eq!(
        r.failed(),
        0,
        "requests failed in a steady state: {:?}",
        r.failures
    );
    Ok(())
}

/// The long soak: a million requests by default (`SOAK_REQUESTS`), at most
/// `SOAK_SECS` (two hours). `scripts/soak.sh` runs it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "the long soak: scripts/soak.sh runs it"]
async fn soak() -> anyhow::Result<()> {
    let config = soak::SoakConfig {
        requests: env_u64("SOAK_REQUESTS", 1_000_000)?,
        duration: Duration::from_secs(env_u64("SOAK_SECS", 7_200)?),
        busy: env_u64("SOAK_BUSY", 16)? as usize,
        idle: env_u64("SOAK_IDLE", 64)? as usize,
    };
    let r = soak::run(&config).await?;
    soak_report(&config, &r);
    assert_eq!(
        r.failed(),
        0,
        "requests failed in a steady state: {:?}",
        r.failures
    );
    Ok(())
}
