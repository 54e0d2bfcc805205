//! Routing, the four policies and failover, through a real proxy process in
//! front of real backend processes.

mod common;

use std::net::{IpAddr, Ipv4Addr};

use common::*;
use tandem_core::{AdminState, BackendRole, LbPolicy};
use tandem_testkit::backend::FakeBackend;
use tandem_testkit::http_client;

#[tokio::test]
async fn host_and_longest_prefix_pick_the_pool() {
    let b = start_backends("route", 3).await;
    let snapshot = SnapshotBuilder::new()
        .pool(
            pool_config("web", LbPolicy::RoundRobin),
            vec![backend(&b[0].address())],
        )
        .pool(
            pool_config("api", LbPolicy::RoundRobin),
            vec![backend(&b[1].address())],
        )
        .pool(
            pool_config("img", LbPolicy::RoundRobin),
            vec![backend(&b[2].address())],
        )
        .route("shop.test", "/", "web")
        .route("shop.test", "/api", "api")
        .route("*.img.test", "/", "img")
        .build();
    let proxy = ProxyProcess::with_snapshot(&snapshot).await.unwrap();
    let client = http_client();
    let get = |host: &'static str, path: &'static str| {
        let req = client.get(proxy.url(path)).header("host", host).send();
        async move {
            let r = req.await.unwrap();
            let status = r.status().as_u16();
            let by = r
                .headers()
                .get("x-served-by")
                .map(|v| v.to_str().unwrap().to_string());
            (status, by, r.text().await.unwrap())
        }
    };
    assert_eq!(get("shop.test", "/").await.1.as_deref(), Some("route-1"));
    assert_eq!(
        get("Shop.Test:8080", "/cart").await.1.as_deref(),
        Some("route-1")
    );
    assert_eq!(
        get("shop.test", "/api/items?x=1").await.1.as_deref(),
        Some("route-2")
    );
    assert_eq!(
        get("shop.test", "/apiary").await.1.as_deref(),
        Some("route-1")
    );
    assert_eq!(
        get("a.img.test", "/logo.png").await.1.as_deref(),
        Some("route-3")
    );
    let (status, by, body) = get("elsewhere.test", "/").await;
    assert_eq!((status, by), (404, None));
    assert!(body.contains("no route"), "{body}");
}

/// Three backends weighted 1:2:3 behind each policy.
async fn distribution(policy: LbPolicy) -> (Tally, Vec<FakeBackend>) {
    let b = start_backends(policy.as_str(), 3).await;
    let snapshot = single_pool(
        pool_config("pool", policy),
        vec![
            weighted(&b[0].address(), 1),
            weighted(&b[1].address(), 2),
            weighted(&b[2].address(), 3),
        ],
    );
    let proxy = ProxyProcess::with_snapshot(&snapshot).await.unwrap();
    let t = sequential(&proxy.url("/"), 3_000).await;
    assert_eq!(t.ok(), 3_000, "{t:?}");
    (t, b)
}

fn assert_shares(t: &Tally, prefix: &str, tolerance: f64) {
    for (i, want) in [(1, 1.0 / 6.0), (2, 2.0 / 6.0), (3, 3.0 / 6.0)] {
        let got = t.share(&format!("{prefix}-{i}"));
        assert!(
            (got - want).abs() <= tolerance,
            "{prefix}-{i}: {got:.3}, want {want:.3} ± {tolerance} ({:?})",
            t.by_backend
        );
    }
}

#[tokio::test]
async fn round_robin_follows_weights_exactly() {
    let (t, _b) = distribution(LbPolicy::RoundRobin).await;
    // Smooth WRR is exact over whole cycles: 3000 = 500 cycles of 6.
    assert_shares(&t, "round_robin", 0.001);
}

#[tokio::test]
async fn least_connections_follows_weights_when_idle() {
    let (t, _b) = distribution(LbPolicy::LeastConnections).await;
    assert_shares(&t, "least_connections", 0.01);
}

#[tokio::test]
async fn random_two_choices_follows_weights_when_idle() {
    let (t, _b) = distribution(LbPolicy::RandomTwoChoices).await;
    assert_shares(&t, "random_two_choices", 0.04);
}

#[tokio::test]
async fn least_connections_avoids_a_slow_backend() {
    let slow = FakeBackend::start_with("lc-slow", &["--delay-ms", "200"])
        .await
        .unwrap();
    let fast = FakeBackend::start("lc-fast").await.unwrap();
    let snapshot = single_pool(
        pool_config("pool", LbPolicy::LeastConnections),
        vec![backend(&slow.address()), backend(&fast.address())],
    );
    let proxy = ProxyProcess::with_snapshot(&snapshot).await.unwrap();
    let t = concurrent(&proxy.url("/"), 400, 8).await;
    assert_eq!(t.ok(), 400, "{t:?}");
    // Round-robin would give each half. The slow one holds its requests
    // 200 ms, so it is rarely the least loaded.
    assert!(t.share("lc-slow") < 0.2, "{:?}", t.by_backend);
}

#[tokio::test]
async fn ip_hash_keeps_each_client_on_one_backend_and_spreads_clients() {
    let b = start_backends("hash", 3).await;
    let snapshot = single_pool(
        pool_config("pool", LbPolicy::IpHash),
        vec![
            weighted(&b[0].address(), 1),
            weighted(&b[1].address(), 1),
            weighted(&b[2].address(), 2),
        ],
    );
    let proxy = ProxyProcess::with_snapshot(&snapshot).await.unwrap();
    let clients = 200u8;
    let mut per_backend = std::collections::HashMap::<String, usize>::new();
    for k in 0..clients {
        let ip = IpAddr::V4(Ipv4Addr::new(127, 0, 1, k.wrapping_add(1)));
        let client = client_from(ip);
        let mut seen = std::collections::HashSet::new();
        for _ in 0..5 {
            let r = client.get(proxy.url("/")).send().await.unwrap();
            assert_eq!(r.status(), 200);
            seen.insert(r.headers()["x-served-by"].to_str().unwrap().to_string());
        }
        assert_eq!(seen.len(), 1, "client {ip} moved between {seen:?}");
        *per_backend
            .entry(seen.into_iter().next().unwrap())
            .or_default() += 1;
    }
    // Weights 1:1:2 → 25%, 25%, 50% of clients, within sampling noise.
    let share = |n: &str| *per_backend.get(n).unwrap_or(&0) as f64 / f64::from(clients);
    assert!((share("hash-3") - 0.5).abs() < 0.12, "{per_backend:?}");
    assert!((share("hash-1") - 0.25).abs() < 0.1, "{per_backend:?}");
    assert!((share("hash-2") - 0.25).abs() < 0.1, "{per_backend:?}");
}

#[tokio::test]
async fn backups_serve_only_when_no_primary_can_and_drained_or_disabled_get_nothing() {
    let mut b = start_backends("failover", 4).await;
    let mut config = pool_config("pool", LbPolicy::RoundRobin);
    config.outlier.consecutive_failures = 1;
    config.outlier.base_ejection_ms = 60_000;
    let snapshot = single_pool(
        config,
        vec![
            backend(&b[0].address()),
            with_state(backend(&b[1].address()), AdminState::Draining),
            with_state(backend(&b[2].address()), AdminState::Disabled),
            with_role(backend(&b[3].address()), BackendRole::Backup),
        ],
    );
    let proxy = ProxyProcess::with_snapshot(&snapshot).await.unwrap();
    let t = sequential(&proxy.url("/"), 100).await;
    assert_eq!(t.by_backend.get("failover-1"), Some(&100), "{t:?}");

    // The only enabled primary dies: the backup takes over, and the
    // request that found the primary dead is retried there.
    b[0].kill();
    let t = sequential(&proxy.url("/"), 100).await;
    assert_eq!(t.by_backend.get("failover-4"), Some(&100), "{t:?}");
    let state = proxy.config().await.unwrap();
    assert_eq!(state["pools"][0]["serving"], "backups", "{state}");

    for i in [1, 2] {
        assert_eq!(
            b[i].requests().await.unwrap(),
            0,
            "{} got traffic",
            b[i].name()
        );
    }
}

#[tokio::test]
async fn panic_mode_spreads_over_all_primaries_when_too_few_are_healthy() {
    // Three of four backends answer 500 and get ejected; below the 50%
    // threshold the pool spreads over all four again rather than crush
    // the last one. With panic mode off, the last one takes everything.
    let mut backends = vec![FakeBackend::start("panic-ok").await.unwrap()];
    for i in 1..=3 {
        backends.push(
            FakeBackend::start_with(&format!("panic-sick-{i}"), &["--status", "500"])
                .await
                .unwrap(),
        );
    }
    for (threshold, expect_panic) in [(50, true), (0, false)] {
        let mut config = pool_config("pool", LbPolicy::RoundRobin);
        config.panic_threshold_percent = threshold;
        config.outlier.consecutive_failures = 2;
        config.outlier.max_ejected_percent = 100;
        config.retry.attempts = 0;
        let snapshot = single_pool(
            config,
            backends.iter().map(|b| backend(&b.address())).collect(),
        );
        let proxy = ProxyProcess::with_snapshot(&snapshot).await.unwrap();
        // Warm up until all three sick backends are ejected.
        let _ = sequential(&proxy.url("/"), 40).await;
        let state = proxy.config().await.unwrap();
        let ejected = state["pools"][0]["backends"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|b| b["ejected"] == true)
            .count();
        assert_eq!(ejected, 3, "{state}");
        let t = sequential(&proxy.url("/"), 100).await;
        let sick: usize = (1..=3)
            .map(|i| *t.by_backend.get(&format!("panic-sick-{i}")).unwrap_or(&0))
            .sum();
        if expect_panic {
            assert_eq!(state["pools"][0]["serving"], "panic_primaries", "{state}");
            assert!(sick >= 60, "panic spreads over all: {:?}", t.by_backend);
        } else {
            assert_eq!(state["pools"][0]["serving"], "primaries", "{state}");
            assert_eq!(sick, 0, "{:?}", t.by_backend);
        }
    }
}
