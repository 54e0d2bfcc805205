//! Traffic figures: what each proxy sends each backend reaches the control
//! plane with the proxies' reports, merged in `GetStatus` and shown per
//! proxy on the status page. Real processes: a control plane, two proxies,
//! the shop on a throwaway Postgres, and a backend address where nothing
//! listens.

mod common;

use std::time::Duration;

use common::tandem::Tandem;
use common::{Shop, shop_database};
use tandem_proto::v1;
use tandem_testkit::{free_addr, http_client, init_crypto};

#[tokio::test]
async fn each_backends_traffic_is_merged_across_proxies_and_shown_on_the_status_page()
-> anyhow::Result<()> {
    init_crypto();
    let (_shop_pg, shop_url) = shop_database()?;
    let mut shop = Shop::spawn("shop-1", &shop_url, &[])?;
    shop.wait_ready().await?;
    let dead = free_addr();
    let tandem = Tandem::start().await?;
    tandem
        .configure_shop_pool_at(&[shop.addr.to_string(), dead.to_string()])
        .await?;
    let p1 = tandem.proxy("proxy-1").await?;
    let p2 = tandem.proxy("proxy-2").await?;

    let client = http_client();
    let mut admin = tandem.control.admin_client().await?;
    let shop_addr = shop.addr.to_string();
    let dead_addr = dead.to_string();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    let status = loop {
        // Keep traffic flowing through both proxies: a report covers the
        // few seconds before it.
        for p in [&p1, &p2] {
            for _ in 0..4 {
                let res = client.get(p.url("/api/widgets")).send().await?;
                assert_eq!(res.status(), 200, "the dead backend's tries are retried");
            }
        }
        let status = admin
            .get_status(v1::GetStatusRequest {})
            .await?
            .into_inner();
        let of = |addr: &str| status.traffic.iter().find(|t| t.address == addr).cloned();
        if let (Some(ok), Some(bad)) = (of(&shop_addr), of(&dead_addr))
            && ok.proxies == 2
            && ok.requests_per_s > 0.0
            && bad.connect_failures_per_s > 0.0
        {
            break status;
        }
        if tokio::time::Instant::now() >= deadline {
            anyhow::bail!("no merged traffic of both proxies within 60 s: {status:#?}");
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    };

    let ok = status
        .traffic
        .iter()
        .find(|t| t.address == shop_addr)
        .expect("found above");
    assert_eq!(ok.pool, "shop");
    assert!(ok.responses_per_s[1] > 0.0, "2xx answers: {ok:?}");
    assert_eq!(ok.responses_per_s[4], 0.0, "no 5xx: {ok:?}");
    assert!(ok.p99_ms > 0.0 && ok.p50_ms <= ok.p99_ms, "{ok:?}");
    let bad = status
        .traffic
        .iter()
        .find(|t| t.address == dead_addr)
        .expect("found above");
    assert!(bad.errors_per_s >= bad.connect_failures_per_s, "{bad:?}");
    assert_eq!(bad.p99_ms, 0.0, "no answers from where nothing listens");
    // Each proxy's own figures are in its node status too.
    for name in ["proxy-1", "proxy-2"] {
        let node = status
            .nodes
            .iter()
            .find(|n| n.node_id == name)
            .ok_or_else(|| anyhow::anyhow!("{name} not in {:?}", status.nodes))?;
        assert!(
            node.traffic
                .iter()
                .any(|t| t.address == shop_addr && t.window_ms > 0),
            "{name}: {:?}",
            node.traffic
        );
    }

    // `tandemctl status` prints the merged figures as a table: a row per
    // backend, the shop's answered by both proxies, the dead one's tries
    // failing. (README's example is this output.)
    let out = std::process::Command::new(tandem_testkit::bin_path("tandemctl"))
        .arg("status")
        .env("TANDEM_ENDPOINT", tandem.control.endpoint())
        .env("TANDEM_TOKEN", tandem_testkit::ADMIN_TOKEN)
        .env_remove("TANDEM_TOKEN_FILE")
        .output()?;
    let printed = String::from_utf8_lossy(&out.stdout);
    println!("{printed}");
    assert!(out.status.success(), "tandemctl status: {out:?}");
    let row = |addr: &str| {
        printed
            .lines()
            .skip_while(|l| !l.to_lowercase().contains("failed tries/s"))
            .find(|l| l.starts_with("shop ") && l.contains(addr))
            .map(|l| l.split_whitespace().collect::<Vec<_>>())
    };
    let shop_row =
        row(&shop_addr).ok_or_else(|| anyhow::anyhow!("no row for {shop_addr}:\n{printed}"))?;
    assert_eq!(
        shop_row[2], "2",
        "both proxies report the shop: {shop_row:?}"
    );
    let dead_row =
        row(&dead_addr).ok_or_else(|| anyhow::anyhow!("no row for {dead_addr}:\n{printed}"))?;
    assert_ne!(dead_row[6], "0.00", "failed tries per second: {dead_row:?}");

    // The status page shows the shop's traffic from each proxy.
    tandem_testkit::wait_until(
        Duration::from_secs(10),
        "both proxies' traffic on the status page",
        || {
            let url = tandem.control.admin_url("/ui/");
            let client = client.clone();
            async move {
                let Ok(res) = client.get(url).send().await else {
                    return false;
                };
                let page = res.text().await.unwrap_or_default();
                page.contains(r#"data-proxy="proxy-1""#)
                    && page.contains(r#"data-proxy="proxy-2""#)
                    && page.contains(" req/s")
            }
        },
    )
    .await?;
    Ok(())
}
