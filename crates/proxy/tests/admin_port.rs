//! The admin port: `/config` and `/explain` reveal the topology and ask
//! for a token; `/metrics`, `/healthz` and `/readyz` stay open.

mod common;

use common::*;
use tandem_testkit::http_client;

#[tokio::test]
async fn the_topology_needs_a_token_and_the_probes_do_not() {
    let (proxy, _backend) =
        recorded_proxy(&[("TANDEM_TOKEN", "its-control-token-0123".into())], |_| {}).await;
    for path in ["/config", "/explain?host=a"] {
        let r = http_client()
            .get(proxy.admin_url(path))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 401, "{path}");
        let body = r.text().await.unwrap();
        assert!(
            body.contains("needs `Authorization: Bearer <token>`"),
            "{body}"
        );
        let r = http_client()
            .get(proxy.admin_url(path))
            .bearer_auth("not-it")
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 401, "{path} with a wrong token");
    }
    // Its admin token, and its control-plane token (what the control
    // plane's Explain presents).
    let (code, body) = proxy.admin_get("/config").await.unwrap();
    assert_eq!(code, 200, "{body}");
    let r = http_client()
        .get(proxy.admin_url("/explain?host=a"))
        .bearer_auth("its-control-token-0123")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    for path in ["/metrics", "/healthz", "/readyz"] {
        let r = http_client()
            .get(proxy.admin_url(path))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "{path} stays open");
    }
}

#[tokio::test]
async fn an_example_admin_token_stops_the_start_unless_dev() {
    let dir = tempfile::tempdir().unwrap();
    let mut p = ProxyProcess::start(
        dir,
        tandem_testkit::proxy::NO_CONTROL_PLANE,
        &[("TANDEM_ADMIN_TOKEN", "compose-proxy-admin-change-me".into())],
    )
    .unwrap();
    let start = std::time::Instant::now();
    while p.process.is_running() {
        assert!(start.elapsed().as_secs() < 20, "{}", p.process.logs());
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    let logs = p.process.logs();
    assert!(
        logs.contains(
            "TANDEM_ADMIN_TOKEN: refusing to start with a shipped example secret (*-change-me)"
        ),
        "{logs}"
    );
}
