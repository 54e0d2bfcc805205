//! The access log, read as an operator reads it: a real proxy with
//! `TANDEM_ACCESS_LOG` set writes a line per request, with the route,
//! pool, backend, status, bytes, tries and the request's trace id; the
//! common log format too; and when the writer cannot keep up, lines are
//! dropped and counted while every request is still answered.

mod common;

use std::time::Duration;

use common::*;
use serde_json::Value;
use tandem_core::LbPolicy;
use tandem_testkit::proxy::ProxyProcess;
use tandem_testkit::{http_client, wait_until};

/// The log's lines once it has at least `n` of them.
async fn lines(path: &std::path::Path, n: usize) -> Vec<String> {
    let read = || std::fs::read_to_string(path).unwrap_or_default();
    let _ = wait_until(Duration::from_secs(10), "access log lines", || async {
        read().lines().count() >= n
    })
    .await;
    read().lines().map(str::to_string).collect()
}

#[tokio::test]
async fn each_request_gets_a_json_line_with_its_route_backend_and_trace() {
    let b = start_backends("logged", 1).await;
    let snapshot = SnapshotBuilder::new()
        .pool(
            pool_config("shop", LbPolicy::RoundRobin),
            vec![backend(&b[0].address())],
        )
        .route("shop.example", "/api", "shop")
        .build();
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("access.log");
    let proxy = ProxyProcess::with_snapshot_env(
        &snapshot,
        &[("TANDEM_ACCESS_LOG", log.display().to_string())],
    )
    .await
    .unwrap();
    let client = http_client();
    let trace = "4bf92f3577b34da6a3ce929d0e0e4736";
    let ok = client
        .get(proxy.url("/api/widgets?page=2"))
        .header("host", "shop.example")
        .header("traceparent", format!("00-{trace}-00f067aa0ba902b7-01"))
        .send()
        .await
        .unwrap();
    assert_eq!(ok.status(), 200);
    let body_len = ok.bytes().await.unwrap().len() as u64;
    let missing = client
        .get(proxy.url("/elsewhere"))
        .header("host", "shop.example")
        .send()
        .await
        .unwrap();
    assert_eq!(missing.status(), 404);
    drop(missing.bytes().await);

    let lines = lines(&log, 2).await;
    assert_eq!(lines.len(), 2, "{lines:?}");
    println!("{}", lines.join("\n"));
    let first: Value = serde_json::from_str(&lines[0]).unwrap();
    assert_eq!(first["method"], "GET");
    assert_eq!(first["host"], "shop.example");
    assert_eq!(first["path"], "/api/widgets?page=2");
    assert_eq!(first["status"], 200);
    assert_eq!(first["bytes"].as_u64(), Some(body_len));
    assert_eq!(first["route"], "shop.example /api");
    assert_eq!(first["pool"], "shop");
    assert_eq!(first["backend"], b[0].address().as_str());
    assert_eq!(first["tries"], 1);
    assert_eq!(first["trace_id"], trace);
    assert_eq!(first["client"], "127.0.0.1");
    assert!(
        first["duration_ms"].as_f64().is_some_and(|d| d > 0.0),
        "{first}"
    );
    assert!(
        first["time"].as_str().is_some_and(|t| t.ends_with('Z')),
        "{first}"
    );
    // No route: the proxy's own 404, with no pool or backend.
    let second: Value = serde_json::from_str(&lines[1]).unwrap();
    assert_eq!(
        (second["status"].as_u64(), second["pool"].is_null()),
        (Some(404), true)
    );
    assert!(
        second["backend"].is_null() && second["route"].is_null(),
        "{second}"
    );
}

#[tokio::test]
async fn the_common_log_format_starts_as_every_log_reader_expects() {
    let b = start_backends("clf", 1).await;
    let snapshot = single_pool(
        pool_config("web", LbPolicy::RoundRobin),
        vec![backend(&b[0].address())],
    );
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("access.log");
    let proxy = ProxyProcess::with_snapshot_env(
        &snapshot,
        &[
            ("TANDEM_ACCESS_LOG", log.display().to_string()),
            ("TANDEM_ACCESS_LOG_FORMAT", "common".into()),
        ],
    )
    .await
    .unwrap();
    let res = http_client().get(proxy.url("/x")).send().await.unwrap();
    let len = res.bytes().await.unwrap().len();
    let lines = lines(&log, 1).await;
    let line = &lines[0];
    assert!(line.starts_with("127.0.0.1 - - ["), "{line}");
    assert!(
        line.contains(&format!("] \"GET /x HTTP/1.1\" 200 {len} ")),
        "{line}"
    );
    assert!(
        line.contains(&format!("pool=web backend={} tries=1", b[0].address())),
        "{line}"
    );
}

#[tokio::test]
async fn a_log_that_cannot_keep_up_drops_lines_not_requests() {
    let b = start_backends("flood", 2).await;
    let snapshot = single_pool(
        pool_config("web", LbPolicy::RoundRobin),
        b.iter().map(|b| backend(&b.address())).collect(),
    );
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("access.log");
    let proxy = ProxyProcess::with_snapshot_env(
        &snapshot,
        &[
            ("TANDEM_ACCESS_LOG", log.display().to_string()),
            // One line of room: the writer wakes every 20 ms at most.
            ("TANDEM_ACCESS_LOG_BUFFER", "1".into()),
        ],
    )
    .await
    .unwrap();
    let t = concurrent(&proxy.url("/"), 600, 16).await;
    assert_eq!(t.ok(), 600, "{:?} {:?}", t.by_status, t.error_samples);
    let (_, metrics) = proxy.admin_get("/metrics").await.unwrap();
    let count = |name: &str| {
        metrics
            .lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    let dropped = count("tandem_proxy_access_log_dropped_total");
    let _ = lines(&log, 1).await;
    let (_, metrics_after) = proxy.admin_get("/metrics").await.unwrap();
    let written = metrics_after
        .lines()
        .find(|l| l.starts_with("tandem_proxy_access_log_lines_total"))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse::<f64>().ok())
        .unwrap_or(0.0);
    assert!(
        dropped > 0.0,
        "nothing dropped with a one-line buffer:\n{metrics}"
    );
    assert!(
        written > 0.0 && written + dropped <= 600.0,
        "written {written}, dropped {dropped}"
    );
    let in_file = std::fs::read_to_string(&log).unwrap().lines().count() as f64;
    assert!(
        in_file <= 600.0 - dropped,
        "{in_file} lines, {dropped} dropped"
    );
}
