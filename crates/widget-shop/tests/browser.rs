//! A real browser: Debian's headless Chromium, driven over WebDriver by
//! `chromedriver` (`tandem_testkit::browser`), buys a widget the way a
//! person would, through a real Tandem proxy in front of two shop servers,
//! and leaves screenshots in `target/screenshots/` for people to look at
//! (`TANDEM_SCREENSHOT_DIR=docs/screenshots` refreshes the ones in the docs).
//!
//! Needs the Debian packages `chromium` and `chromium-driver`
//! (`scripts/test.sh` installs them). Without them this test fails, saying
//! so: it never passes without having driven a browser.

mod common;

use std::time::Duration;

use anyhow::ensure;
use common::tandem::ShopsBehindTandem;
use common::{count_orders, db};
use fantoccini::{Client, Locator};
use tandem_testkit::browser::{ChromeDriver, click, save_screenshot, text, type_into, wait_for};
use tandem_testkit::certs::{KeyKind, TestCa, spki_sha256_base64};
use tandem_testkit::free_addr;

#[tokio::test]
async fn a_person_buys_a_widget_in_a_real_browser() -> anyhow::Result<()> {
    let driver = ChromeDriver::start().await?;
    // One Postgres cluster, two databases: the shop's and the control
    // plane's (`postgres`), never shared.
    let site = ShopsBehindTandem::start().await?;
    let proxy = site.tandem.proxy("proxy-1").await?;
    let db = db(&site.url).await?;

    let browser = driver.browser(1000).await?;
    let result = shop_in(&browser, &proxy.url(""), "").await;
    let _ = browser.close().await;
    let code = result?;

    assert_recorded(&db, &code).await?;
    assert_eq!(count_orders(&db).await?, 1);
    Ok(())
}

#[tokio::test]
async fn a_person_buys_a_widget_over_https() -> anyhow::Result<()> {
    let driver = ChromeDriver::start().await?;
    let site = ShopsBehindTandem::start().await?;
    // The certificate goes through the control API, as an operator's would.
    let ca = TestCa::new("Tandem browser test CA")?;
    let cert = ca.issue(&["shop.test"], KeyKind::EcP256)?;
    site.tandem
        .add_certificate("shop", &cert.chain_pem, &cert.key_pem)
        .await?;
    let tls = free_addr();
    let proxy = site
        .tandem
        .proxy_with("proxy-1", &[("TANDEM_TLS_LISTEN", &tls.to_string())])
        .await?;
    let db = db(&site.url).await?;

    // Chromium trusts exactly this certificate's key, and finds shop.test
    // on loopback; nothing else about TLS is relaxed.
    let pin = spki_sha256_base64(&cert.chain_pem)?;
    let trust = format!("--ignore-certificate-errors-spki-list={pin}");
    let browser = driver
        .browser_with(
            1000,
            &[&trust, "--host-resolver-rules=MAP shop.test 127.0.0.1"],
        )
        .await?;
    let base = format!("https://shop.test:{}", tls.port());
    let result = async {
        // The certificate reaches the proxy with the configuration.
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        loop {
            match browser.goto(&base).await {
                Ok(()) if browser.title().await?.contains("Widget Works") => break,
                _ if std::time::Instant::now() < deadline => {
                    tokio::time::sleep(Duration::from_millis(300)).await
                }
                other => anyhow::bail!("the shop over HTTPS did not load: {other:?}"),
            }
        }
        let code = shop_in(&browser, &base, "https-").await?;
        let at = browser.current_url().await?;
        ensure!(at.scheme() == "https", "ended on {at}");
        Ok(code)
    }
    .await;
    let _ = browser.close().await;
    let code = result?;

    assert_recorded(&db, &code).await?;
    // The browser spoke HTTP/2 over TLS 1.3 (ALPN).
    let (_, metrics) = proxy.admin_get("/metrics").await?;
    ensure!(
        metrics
            .lines()
            .any(|l| l.starts_with(r#"tandem_proxy_tls_handshakes_total{version="1.3",alpn="h2"}"#)),
        "no TLS 1.3 h2 handshake counted:\n{metrics}"
    );
    Ok(())
}

/// The order the browser saw is in the database.
async fn assert_recorded(db: &sqlx::PgPool, code: &str) -> anyhow::Result<()> {
    let recorded: i64 = sqlx::query_scalar("SELECT count(*) FROM orders WHERE code = $1")
        .bind(code)
        .fetch_one(db)
        .await?;
    assert_eq!(recorded, 1, "the order the browser saw is in the database");
    Ok(())
}

/// What a person does: look at the catalogue, add a widget, check out, read
/// the order. Returns the order code shown.
async fn shop_in(browser: &Client, base: &str, shots: &str) -> anyhow::Result<String> {
    browser.goto(base).await?;
    let title = browser.title().await?;
    ensure!(title.contains("Widget Works"), "title {title:?}");
    let badge = text(browser, Locator::Id("served-by")).await?;
    ensure!(badge.starts_with("served by shop-"), "badge {badge:?}");
    save_screenshot(browser, &format!("{shots}shop.png")).await?;

    click(
        browser,
        Locator::Css(r#"button[data-add="flux-capacitor"]"#),
    )
    .await?;
    wait_for(browser, Locator::Id("cart-lines")).await?;
    let total = text(browser, Locator::Id("cart-total")).await?;
    ensure!(total == "$88.00", "cart total {total:?}");

    type_into(browser, Locator::Id("name"), "Grace Hopper").await?;
    type_into(browser, Locator::Id("email"), "grace@example.com").await?;
    save_screenshot(browser, &format!("{shots}shop-cart.png")).await?;
    click(browser, Locator::Id("place-order")).await?;

    let confirmed = wait_for(browser, Locator::Id("order-confirmed")).await?;
    let thanks = confirmed.text().await?;
    ensure!(thanks.contains("Thank you, Grace Hopper!"), "{thanks}");
    let code = text(browser, Locator::Id("order-code")).await?;
    ensure!(code.starts_with("W-"), "order code {code:?}");
    let order_total = text(browser, Locator::Id("order-total")).await?;
    ensure!(order_total == "$88.00", "order total {order_total:?}");
    save_screenshot(browser, &format!("{shots}shop-order.png")).await?;
    Ok(code)
}
