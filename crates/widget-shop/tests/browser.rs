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
use common::tandem::Tandem;
use common::{Shop, count_orders, db, shop_database};
use fantoccini::{Client, Locator};
use tandem_testkit::browser::{ChromeDriver, save_screenshot};

#[tokio::test]
async fn a_person_buys_a_widget_in_a_real_browser() -> anyhow::Result<()> {
    let driver = ChromeDriver::start().await?;
    // One Postgres cluster, two databases: the shop's and the control
    // plane's (`postgres`), never shared.
    let (pg, url) = shop_database()?;
    let shops = [
        Shop::start("shop-1", &url).await?,
        Shop::start("shop-2", &url).await?,
    ];
    let tandem = Tandem::start_on(&pg.url()).await?;
    tandem.configure_shop_pool(&[&shops[0], &shops[1]]).await?;
    let proxy = tandem.proxy("proxy-1").await?;
    let db = db(&url).await?;

    let browser = driver.browser(1000).await?;
    let result = shop_in(&browser, &proxy.url("")).await;
    let _ = browser.close().await;
    let code = result?;

    let recorded: i64 = sqlx::query_scalar("SELECT count(*) FROM orders WHERE code = $1")
        .bind(&code)
        .fetch_one(&db)
        .await?;
    assert_eq!(recorded, 1, "the order the browser saw is in the database");
    assert_eq!(count_orders(&db).await?, 1);
    Ok(())
}

/// What a person does: look at the catalogue, add a widget, check out, read
/// the order. Returns the order code shown.
async fn shop_in(browser: &Client, base: &str) -> anyhow::Result<String> {
    browser.goto(base).await?;
    let title = browser.title().await?;
    ensure!(title.contains("Widget Works"), "title {title:?}");
    let badge = browser.find(Locator::Id("served-by")).await?.text().await?;
    ensure!(badge.starts_with("served by shop-"), "badge {badge:?}");
    save_screenshot(browser, "shop.png").await?;

    browser
        .find(Locator::Css(r#"button[data-add="flux-capacitor"]"#))
        .await?
        .click()
        .await?;
    browser
        .wait()
        .at_most(Duration::from_secs(10))
        .for_element(Locator::Id("cart-lines"))
        .await?;
    let total = browser
        .find(Locator::Id("cart-total"))
        .await?
        .text()
        .await?;
    ensure!(total == "$88.00", "cart total {total:?}");

    browser
        .find(Locator::Id("name"))
        .await?
        .send_keys("Grace Hopper")
        .await?;
    browser
        .find(Locator::Id("email"))
        .await?
        .send_keys("grace@example.com")
        .await?;
    save_screenshot(browser, "shop-cart.png").await?;
    browser
        .find(Locator::Id("place-order"))
        .await?
        .click()
        .await?;

    let confirmed = browser
        .wait()
        .at_most(Duration::from_secs(10))
        .for_element(Locator::Id("order-confirmed"))
        .await?;
    let text = confirmed.text().await?;
    ensure!(text.contains("Thank you, Grace Hopper!"), "{text}");
    let code = browser
        .find(Locator::Id("order-code"))
        .await?
        .text()
        .await?;
    ensure!(code.starts_with("W-"), "order code {code:?}");
    let order_total = browser
        .find(Locator::Id("order-total"))
        .await?
        .text()
        .await?;
    ensure!(order_total == "$88.00", "order total {order_total:?}");
    save_screenshot(browser, "shop-order.png").await?;
    Ok(code)
}
