//! A real browser for tests: Debian's headless Chromium, driven over
//! WebDriver by `chromedriver` on a free loopback port, and screenshots
//! written where people look at them.
//!
//! Needs the Debian packages `chromium` and `chromium-driver`
//! (`scripts/test.sh` installs them through `scripts/lib.sh`
//! `ensure_chromium`). Without them a browser test fails, saying so: it
//! never passes without having driven a browser.

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::{Context, bail};
use fantoccini::elements::Element;
use fantoccini::{Client, ClientBuilder, Locator};

/// `chromedriver` in a process group of its own with the browsers it
/// starts: all of them are killed on drop, even when the test fails
/// half-way.
pub struct ChromeDriver {
    child: Child,
    url: String,
    _log_dir: tempfile::TempDir,
}

impl ChromeDriver {
    pub async fn start() -> anyhow::Result<ChromeDriver> {
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
        let port = crate::free_port();
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
        crate::wait_http_ok(&format!("{}/status", driver.url), Duration::from_secs(20))
            .await
            .context("chromedriver did not come up")?;
        Ok(driver)
    }

    /// A new headless browser window of 1280 x `height` CSS pixels at scale 1.
    pub async fn browser(&self, height: u32) -> anyhow::Result<Client> {
        self.session(height, true, &[]).await
    }

    /// [`ChromeDriver::browser`] with more Chromium flags (e.g. to trust a
    /// test certificate by its key, or map a host name to loopback).
    pub async fn browser_with(&self, height: u32, flags: &[&str]) -> anyhow::Result<Client> {
        self.session(height, true, flags).await
    }

    /// The same with JavaScript turned off, as some people browse.
    pub async fn browser_without_script(&self, height: u32) -> anyhow::Result<Client> {
        self.session(height, false, &[]).await
    }

    async fn session(&self, height: u32, script: bool, flags: &[&str]) -> anyhow::Result<Client> {
        let size = format!("--window-size=1280,{height}");
        let mut args = vec![
            "--headless=new",
            "--disable-gpu",
            "--disable-dev-shm-usage",
            "--hide-scrollbars",
            size.as_str(),
            "--force-device-scale-factor=1",
        ];
        // Chromium's sandbox refuses to run as root (CI runs as root).
        if nix::unistd::Uid::effective().is_root() {
            args.push("--no-sandbox");
        }
        args.extend_from_slice(flags);
        let mut options = serde_json::json!({ "args": args });
        if !script {
            options["prefs"] =
                serde_json::json!({ "profile.managed_default_content_settings.javascript": 2 });
        }
        let mut caps = serde_json::Map::new();
        caps.insert("browserName".into(), "chrome".into());
        caps.insert("goog:chromeOptions".into(), options);
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
/// leaves the checkout clean; with `TANDEM_SCREENSHOT_DIR=docs/screenshots`
/// (relative to the workspace root; `SHOP_SCREENSHOT_DIR` too, its older
/// name) it refreshes the ones the docs show.
pub fn screenshot_path(name: &str) -> PathBuf {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let dir = std::env::var("TANDEM_SCREENSHOT_DIR")
        .or_else(|_| std::env::var("SHOP_SCREENSHOT_DIR"))
        .unwrap_or_else(|_| "target/screenshots".into());
    root.join(dir).join(name)
}

/// Saves what `browser` shows as `name` (see [`screenshot_path`]).
pub async fn save_screenshot(browser: &Client, name: &str) -> anyhow::Result<()> {
    let png = browser.screenshot().await?;
    let path = screenshot_path(name);
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    std::fs::write(&path, png).with_context(|| format!("writing {}", path.display()))?;
    eprintln!("screenshot: {}", path.display());
    Ok(())
}

/// Clicks the element `at` finds on the page `browser` shows.
pub async fn click(browser: &Client, at: Locator<'_>) -> anyhow::Result<()> {
    browser.find(at).await?.click().await?;
    Ok(())
}

/// Waits up to 10 s for an element `at` finds to appear.
pub async fn wait_for(browser: &Client, at: Locator<'_>) -> anyhow::Result<Element> {
    Ok(browser
        .wait()
        .at_most(Duration::from_secs(10))
        .for_element(at)
        .await?)
}

/// The text of the element `at` finds.
pub async fn text(browser: &Client, at: Locator<'_>) -> anyhow::Result<String> {
    Ok(browser.find(at).await?.text().await?)
}

/// Types `keys` into the element `at` finds.
pub async fn type_into(browser: &Client, at: Locator<'_>, keys: &str) -> anyhow::Result<()> {
    browser.find(at).await?.send_keys(keys).await?;
    Ok(())
}
