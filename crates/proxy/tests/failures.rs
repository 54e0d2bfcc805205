//! Backends that die, hang or fail: retries, passive health and the error
//! answers a client gets when nothing can serve it.

mod common;

use std::time::{Duration, Instant};

use common::*;
use tandem_core::{AdminState, LbPolicy};
use tandem_testkit::backend::FakeBackend;
use tandem_testkit::{http_client, wait_until};

#[tokio::test]
async fn a_backend_killed_under_load_costs_no_requests_and_gets_no_more_traffic() {
    let mut b = start_backends("kill", 3).await;
    let snapshot = single_pool(
        pool_config("pool", LbPolicy::RoundRobin),
        b.iter().map(|b| backend(&b.address())).collect(),
    );
    let proxy = ProxyProcess::with_snapshot(&snapshot).await.unwrap();
    let (stop, load) = steady_load(&proxy.url("/"), 8);
    tokio::time::sleep(Duration::from_millis(1_000)).await;
    let killed_at = Instant::now();
    b[1].kill();
    tokio::time::sleep(Duration::from_millis(2_000)).await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let t = load.await.unwrap();
    let since_kill = killed_at.elapsed();

    // Requests for the dead backend (refused connects, resets on pooled
    // connections) were retried elsewhere: GETs are idempotent and tiny,
    // so no response was cut mid-way.
    assert!(t.total() > 500, "{t:?}");
    assert_eq!(t.failures(), 0, "{:?} {:?}", t.by_status, t.error_samples);
    // It stops receiving traffic: nothing from it in the last second.
    let cutoff = t
        .timeline
        .iter()
        .map(|(at, _)| *at)
        .max()
        .unwrap()
        .saturating_sub(Duration::from_secs(1));
    let late = t
        .timeline
        .iter()
        .filter(|(at, by)| *at > cutoff && by == "kill-2")
        .count();
    assert_eq!(late, 0, "the killed backend still served {late} requests");
    assert!(since_kill >= Duration::from_secs(2));
    let state = proxy.backend_state("pool", &b[1].address()).await.unwrap();
    assert_eq!(state["ejected"], true, "{state}");
}

#[tokio::test]
async fn a_frozen_backend_is_retried_elsewhere_after_the_per_try_timeout() {
    let b = start_backends("freeze", 2).await;
    let mut config = pool_config("pool", LbPolicy::RoundRobin);
    config.retry.per_try_timeout_ms = 300;
    config.outlier.consecutive_failures = 3;
    let snapshot = single_pool(config, b.iter().map(|b| backend(&b.address())).collect());
    let proxy = ProxyProcess::with_snapshot(&snapshot).await.unwrap();
    assert_eq!(sequential(&proxy.url("/"), 10).await.ok(), 10);

    b[0].freeze();
    let client = http_client();
    let mut slow = 0;
    for _ in 0..20 {
        let start = Instant::now();
        let r = client.get(proxy.url("/")).send().await.unwrap();
        assert_eq!(r.status(), 200);
        assert_eq!(r.headers()["x-served-by"], "freeze-2");
        // The ones that tried the frozen backend first waited one per-try
        // timeout (a generous bound, not a measurement).
        if start.elapsed() >= Duration::from_millis(290) {
            slow += 1;
        }
    }
    // Round-robin sends every other request to the frozen one until three
    // timeouts in a row eject it; after that, no more waiting.
    assert_eq!(slow, 3, "tries that hit the frozen backend");
    b[0].thaw();
}

#[tokio::test]
async fn error_answers_are_short_and_name_the_problem() {
    let frozen = FakeBackend::start("err-frozen").await.unwrap();
    let disabled = FakeBackend::start("err-disabled").await.unwrap();
    let mut slow = pool_config("slow", LbPolicy::RoundRobin);
    slow.retry.per_try_timeout_ms = 200;
    slow.request_timeout_ms = 1_000;
    let mut dead = pool_config("dead", LbPolicy::RoundRobin);
    dead.connect_timeout_ms = 200;
    let snapshot = SnapshotBuilder::new()
        .pool(slow, vec![backend(&frozen.address())])
        .pool(
            dead,
            vec![backend(&dead_address()), backend(&dead_address())],
        )
        .pool(
            pool_config("off", LbPolicy::RoundRobin),
            vec![with_state(
                backend(&disabled.address()),
                AdminState::Disabled,
            )],
        )
        .route("slow.test", "/", "slow")
        .route("dead.test", "/", "dead")
        .route("off.test", "/", "off")
        .build();
    let proxy = ProxyProcess::with_snapshot(&snapshot).await.unwrap();
    frozen.freeze();
    let client = http_client();
    for (host, path, want, says) in [
        ("nowhere.test", "/", 404, "no route"),
        ("off.test", "/", 503, "no usable backend"),
        ("dead.test", "/", 502, "upstream"),
        ("slow.test", "/", 504, "timed out"),
    ] {
        let start = Instant::now();
        let r = client
            .get(proxy.url(path))
            .header("host", host)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status().as_u16(), want, "{host}");
        let body = r.text().await.unwrap();
        assert!(body.contains(says) && body.len() < 100, "{host}: {body:?}");
        // Never a hang: bounded by the pool's timeouts.
        assert!(start.elapsed() < Duration::from_secs(5), "{host} hung");
    }
    frozen.thaw();
    assert_eq!(disabled.requests().await.unwrap(), 0);
}

#[tokio::test]
async fn failing_backends_are_ejected_and_come_back_by_themselves() {
    let good = FakeBackend::start("outlier-good").await.unwrap();
    let sick = FakeBackend::start_with("outlier-sick", &["--status", "500"])
        .await
        .unwrap();
    let mut config = pool_config("pool", LbPolicy::RoundRobin);
    config.outlier.consecutive_failures = 3;
    config.outlier.base_ejection_ms = 1_000;
    config.retry.attempts = 0;
    let snapshot = single_pool(
        config,
        vec![backend(&good.address()), backend(&sick.address())],
    );
    let proxy = ProxyProcess::with_snapshot(&snapshot).await.unwrap();

    let t = sequential(&proxy.url("/"), 40).await;
    assert_eq!(t.by_backend.get("outlier-sick"), Some(&3), "{t:?}");
    let state = proxy.backend_state("pool", &sick.address()).await.unwrap();
    assert_eq!(state["ejected"], true, "{state}");
    let (_, metrics) = proxy.admin_get("/metrics").await.unwrap();
    assert!(
        metrics
            .lines()
            .any(|l| l.starts_with("tandem_proxy_ejections_total")
                && l.contains(&sick.address())
                && !l.ends_with(" 0")),
        "{metrics}"
    );

    // Back after its ejection time, without anyone's help...
    wait_until(Duration::from_secs(5), "the ejection to end", || async {
        let s = proxy.backend_state("pool", &sick.address()).await.unwrap();
        s["ejected"] == false
    })
    .await
    .unwrap();
    let before = sick.requests().await.unwrap();
    let _ = sequential(&proxy.url("/"), 20).await;
    assert_eq!(
        sick.requests().await.unwrap() - before,
        3,
        "back, then ejected again"
    );
    // ...and the second ejection in a row lasts twice as long.
    let s = proxy.backend_state("pool", &sick.address()).await.unwrap();
    assert_eq!(s["ejections_in_a_row"], 2, "{s}");
    assert!(s["ejected_for_ms"].as_u64().unwrap() > 1_000, "{s}");
}

#[tokio::test]
async fn a_post_whose_connect_failed_is_retried_with_its_body() {
    let live = FakeBackend::start("post-live").await.unwrap();
    let mut config = pool_config("pool", LbPolicy::RoundRobin);
    config.outlier.consecutive_failures = 0; // keep the dead one in rotation
    let snapshot = single_pool(
        config,
        vec![backend(&dead_address()), backend(&live.address())],
    );
    let proxy = ProxyProcess::with_snapshot(&snapshot).await.unwrap();
    let client = http_client();
    // Every POST whose first try meets the dead backend is retried: the
    // connect failed, so its body never left.
    for i in 0..10 {
        let body = format!("order {i}").into_bytes();
        assert_eq!(echo(&client, &proxy, body.clone()).await, body);
    }
    assert_eq!(live.requests().await.unwrap(), 10);
}

#[tokio::test]
async fn a_backend_that_stops_mid_body_does_not_hold_the_client() {
    let b = FakeBackend::start("stall").await.unwrap();
    let mut config = pool_config("pool", LbPolicy::RoundRobin);
    config.request_timeout_ms = 1_000;
    config.retry.per_try_timeout_ms = 1_000;
    let snapshot = single_pool(config, vec![backend(&b.address())]);
    let proxy = ProxyProcess::with_snapshot(&snapshot).await.unwrap();
    let start = Instant::now();
    let r = http_client().get(proxy.url("/stall")).send().await.unwrap();
    assert_eq!(r.status(), 200, "the head arrived");
    // The body is cut after a second of silence rather than hanging (the
    // test client's own limit is 10 s).
    let body = r.bytes().await;
    assert!(body.is_err(), "{body:?}");
    assert!(
        start.elapsed() < Duration::from_secs(5),
        "{:?}",
        start.elapsed()
    );
    // The proxy still serves.
    assert_eq!(sequential(&proxy.url("/"), 3).await.ok(), 3);
}
