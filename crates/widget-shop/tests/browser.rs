//! A real browser: Debian's headless Chromium, driven over WebDriver by
//! `chromedriver`, buys a widget the way a person would, through a real
//! Tandem proxy in front of two shop servers, and leaves screenshots in
//! `target/screenshots/` for people to look at (`SHOP_SCREENSHOT_DIR=docs/screenshots`
//! refreshes the ones in the docs).
//!
//! Needs the Debian packages `chromium` and `chromium-driver`
//! (`scripts/test.sh` installs them). Without them this test fails, saying
//! so: it never passes without having driven a browser.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use std::os::unix::process::CommandExt;

use anyhow::{Context, bail, ensure};
use common::tandem::Tandem;
use common::{Shop, count_orders, db, shop_database};
use fantoccini::{Client, ClientBuilder, Locator};

/// `chromedriver` on a free loopback port, in a process group of its own
/// with the browsers it starts: all of them are killed on drop, even when
/// the test fails half-way.
struct ChromeDriver {
    child: Child,
    url: String,
    _log_dir: tempfile::TempDir,
}

impl ChromeDriver {
    async fn start() -> anyhow::Result<ChromeDriver> {
        let exe = find_on_path("chromedriver").context(
            "chromedriver is not installed, so the browser test cannot run: \
             install Debian's `chromium` and `chromium-driver` packages \
             (scripts/test.sh does it; by hand: apt-get install -y chromium chromium-driver)",
        )?;
        if find_on_path("chromium").is_none() {
            bail!(
                "chromium is not installed, so the browser test cannot run: \
                 apt-get install -y chromium chromium-driver (scripts/test.sh does it)"
            );
        }
        let port = tandem_testkit::free_port();
        let log_dir = tempfile::Builder::new()
            .prefix("tandem-chromedriver-")
            .tempdir()?;
        let log = std::fs::File::create(log_dir.path().join("chromedriver.log"))?;
        let child = Command::new(&exe)
            .arg(format!("--port={port}"))
            .process_group(0)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .with_context(|| format!("starting {}", exe.display()))?;
        let driver = ChromeDriver {
            child,
            url: format!("http://127.0.0.1:{port}"),
            _log_dir: log_dir,
        };
        tandem_testkit::wait_http_ok(&format!("{}/status", driver.url), Duration::from_secs(20))
            .await
            .context("chromedriver did not come up")?;
        Ok(driver)
    }

    async fn browser(&self) -> anyhow::Result<Client> {
        let mut args = vec![
            "--headless=new",
            "--disable-gpu",
            "--disable-dev-shm-usage",
            "--hide-scrollbars",
            "--window-size=1280,1000",
            "--force-device-scale-factor=1",
        ];
        // Chromium's sandbox refuses to run as root (CI runs as root).
        if nix::unistd::Uid::effective().is_root() {
            args.push("--no-sandbox");
        }
        let mut caps = serde_json::Map::new();
        caps.insert("browserName".into(), "chrome".into());
        caps.insert(
            "goog:chromeOptions".into(),
            serde_json::json!({ "args": args }),
        );
        ClientBuilder::new(hyper_util::client::legacy::connect::HttpConnector::new())
            .capabilities(caps)
            .connect(&self.url)
            .await
            .context("opening a Chromium session through chromedriver")
    }
}

impl Drop for ChromeDriver {
    fn drop(&mut self) {
        let group = nix::unistd::Pid::from_raw(self.child.id() as i32);
        let _ = nix::sys::signal::killpg(group, nix::sys::signal::Signal::SIGKILL);
        let _ = self.child.wait();
    }
}

fn find_on_path(name: &str) -> Option<PathBuf> {
    std::env::var_os("PATH")
        .into_iter()
        .flat_map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .chain([
            PathBuf::from("/usr/bin"),
            PathBuf::from("/usr/lib/chromium"),
        ])
        .map(|dir| dir.join(name))
        .find(|p| p.is_file())
}

/// Where a screenshot goes: `target/screenshots/<name>`, so a test run
/// leaves the checkout clean; with `SHOP_SCREENSHOT_DIR=docs/screenshots`
/// (relative to the workspace root) it refreshes the ones the docs show.
fn screenshot_path(name: &str) -> PathBuf {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let dir = std::env::var("SHOP_SCREENSHOT_DIR").unwrap_or_else(|_| "target/screenshots".into());
    root.join(dir).join(name)
}

async fn save_screenshot(browser: &Client, name: &str) -> anyhow::Result<()> {
    let png = browser.screenshot().await?;
    let path = screenshot_path(name);
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    std::fs::write(&path, png).with_context(|| format!("writing {}", path.display()))?;
    eprintln!("screenshot: {}", path.display());
    Ok(())
}

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

    let browser = driver.browser().await?;
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
