//! The status page in a real browser (headless Chromium over WebDriver)
//! against a live platform: three control replicas on a throwaway
//! Postgres, two agents probing real backends, a proxy. A person opens the
//! page, a backend is killed, and its row turns unhealthy with the agents'
//! reason within seconds, without a reload; the feed shows the transition
//! and the backend's page its history. The same page without JavaScript is
//! a complete static view. Screenshots go to `target/screenshots/`
//! (`TANDEM_SCREENSHOT_DIR=docs/screenshots` refreshes the docs' ones).
//!
//! A second story, read as a script reads the page (no browser): a
//! database pool behind a TCP route, `single_active`, checked on a
//! Patroni-like port. The pool shows its TCP route, its check's port, its
//! TCP settings and its one active member; the proxy's row shows each
//! listener, bound or not and why; and when two members claim to be
//! primary, the proxy's split-brain alert stands at the top of the page
//! until one steps down.

use std::net::IpAddr;
use std::time::{Duration, Instant};

use anyhow::{Context, bail, ensure};
use fantoccini::{Client, Locator};
use tandem_proto::v1;
use tandem_testkit::agent::AgentProcess;
use tandem_testkit::backend::FakeBackend;
use tandem_testkit::browser::{ChromeDriver, save_screenshot};
use tandem_testkit::patroni::port_free_on;
use tandem_testkit::proxy::ProxyProcess;
use tandem_testkit::served::{all_healthy, quick_health_check, wait_health};
use tandem_testkit::tcp::{Echo, PrimaryResponder, primary_pool};
use tandem_testkit::{
    ControlCluster, ControlPlane, NODE_TOKEN, Postgres, declare_pool, free_addr, http_client,
    wait_until,
};

/// How soon a killed backend must show as unhealthy on the open page: the
/// agents probe every 500 ms and need two failures; the rest is slack.
const SHOWN_WITHIN: Duration = Duration::from_secs(10);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_backend_turns_unhealthy_on_the_open_page_without_a_reload() -> anyhow::Result<()>
{
    tandem_testkit::init_crypto();
    let driver = ChromeDriver::start().await?;
    let pg = Postgres::start()?;
    let cluster = ControlCluster::start(&pg.url(), 3).await?;
    let endpoints = cluster.endpoints();

    // Pool `shop`: three servers behind a catch-all route. Pool `api`: one
    // of them as primary, one draining, one as backup.
    let mut backends = FakeBackend::start_many("web", 3).await?;
    let addresses: Vec<String> = backends.iter().map(|b| b.address()).collect();
    let mut admin = cluster.replicas[0].admin_client().await?;
    let check = || quick_health_check(250);
    declare_pool(
        &mut admin,
        v1::Pool {
            name: "shop".into(),
            health_check: Some(check()),
            ..Default::default()
        },
        &addresses,
    )
    .await?;
    api_pool(&mut admin, &addresses, check()).await?;

    let _agents = [
        AgentProcess::start("agent-1", "zone-a", &endpoints).await?,
        AgentProcess::start("agent-2", "zone-b", &endpoints).await?,
    ];
    let proxy = ProxyProcess::start(
        tempfile::tempdir()?,
        &endpoints,
        &[
            ("TANDEM_TOKEN", NODE_TOKEN.into()),
            ("TANDEM_NODE_ID", "proxy-1".into()),
            ("TANDEM_ZONE", "zone-a".into()),
            ("TANDEM_WORKERS", "1".into()),
        ],
    )?;
    proxy.wait_ready().await?;
    let health = cluster.replicas[0].node_client().await?;
    wait_health(
        &health,
        Duration::from_secs(20),
        "every backend healthy",
        all_healthy(6),
    )
    .await?;
    // Nodes report every 5 s: wait for the proxy's and agents' first.
    wait_until(
        Duration::from_secs(15),
        "the proxy and agents reported",
        || {
            let mut health = health.clone();
            async move {
                health
                    .get_status(v1::GetStatusRequest {})
                    .await
                    .is_ok_and(|s| s.into_inner().nodes.len() == 3)
            }
        },
    )
    .await?;

    let page = cluster.replicas[0].admin_url("/ui/");
    let browser = driver.browser(2200).await?;
    let result = watch_a_backend_die(&browser, &page, &mut backends[1]).await;
    let _ = browser.close().await;
    result?;

    // Without JavaScript: the same content, static, and it says so.
    let static_browser = driver.browser_without_script(1200).await?;
    let result = read_without_script(&static_browser, &page, &addresses[1]).await;
    let _ = static_browser.close().await;
    result?;
    Ok(())
}

async fn api_pool(
    admin: &mut tandem_testkit::AuthedClient,
    addresses: &[String],
    check: v1::HealthCheck,
) -> anyhow::Result<()> {
    admin
        .create_pool(v1::CreatePoolRequest {
            pool: Some(v1::Pool {
                name: "api".into(),
                policy: v1::LbPolicy::LeastConnections.into(),
                health_check: Some(check),
                ..Default::default()
            }),
        })
        .await?;
    let roles = [
        (v1::BackendRole::Primary, v1::AdminState::Enabled, 2),
        (v1::BackendRole::Primary, v1::AdminState::Draining, 1),
        (v1::BackendRole::Backup, v1::AdminState::Enabled, 1),
    ];
    for (address, (role, state, weight)) in addresses.iter().zip(roles) {
        admin
            .add_backend(v1::AddBackendRequest {
                pool: "api".into(),
                backend: Some(backend(address, weight, role, state)),
                expected_revision: None,
            })
            .await?;
    }
    admin
        .add_route(v1::AddRouteRequest {
            route: Some(v1::Route {
                host: "api.local".into(),
                path_prefix: "/api".into(),
                pool: "api".into(),
                ..Default::default()
            }),
        })
        .await?;
    Ok(())
}

// Backends grow fields (a TCP pool's order) left at their defaults here.
#[allow(clippy::needless_update)]
fn backend(
    address: &str,
    weight: u32,
    role: v1::BackendRole,
    state: v1::AdminState,
) -> v1::Backend {
    v1::Backend {
        address: address.to_string(),
        weight: Some(weight),
        role: role.into(),
        admin_state: state.into(),
        ..Default::default()
    }
}

/// The `shop` row of `address`.
fn row(address: &str) -> String {
    format!(r#"tr[data-backend="shop/{address}"]"#)
}

async fn attr(browser: &Client, css: &str, name: &str) -> anyhow::Result<Option<String>> {
    Ok(browser.find(Locator::Css(css)).await?.attr(name).await?)
}

async fn watch_a_backend_die(
    browser: &Client,
    page: &str,
    victim: &mut FakeBackend,
) -> anyhow::Result<()> {
    let address = victim.address();
    browser.goto(page).await?;
    let title = browser.title().await?;
    ensure!(title.contains("Tandem"), "title {title:?}");
    let live = browser
        .wait()
        .at_most(Duration::from_secs(10))
        .for_element(Locator::Css(r#"#live[data-state="live"]"#))
        .await
        .context("the page goes live")?;
    ensure!(live.text().await? == "Live");
    ensure!(
        attr(browser, &row(&address), "data-health")
            .await?
            .as_deref()
            == Some("healthy"),
        "the backend starts healthy"
    );
    let platform = browser
        .find(Locator::Id("platform-body"))
        .await?
        .text()
        .await?;
    ensure!(platform.contains("reachable"), "{platform}");
    ensure!(
        browser
            .find_all(Locator::Css("#members tbody tr"))
            .await?
            .len()
            == 3,
        "three raft members"
    );
    let nodes = browser
        .find(Locator::Id("nodes-body"))
        .await?
        .text()
        .await?;
    for node in ["proxy-1", "agent-1", "agent-2"] {
        ensure!(nodes.contains(node), "{node} listed: {nodes}");
    }
    // Let the relative times settle before the picture.
    tokio::time::sleep(Duration::from_millis(1200)).await;
    save_screenshot(browser, "status.png").await?;

    // Anything a reload would lose.
    browser
        .execute("window.tandemNoReload = 42; return null;", vec![])
        .await?;
    victim.kill();
    let killed = Instant::now();
    let unhealthy = format!(r#"{}[data-health="unhealthy"]"#, row(&address));
    browser
        .wait()
        .at_most(SHOWN_WITHIN)
        .for_element(Locator::Css(&unhealthy))
        .await
        .with_context(|| format!("{address} not shown unhealthy within {SHOWN_WITHIN:?}"))?;
    let shown_after = killed.elapsed();
    eprintln!("the killed backend showed as unhealthy after {shown_after:?}");
    let why = browser
        .find(Locator::Css(&format!("{} td.why", row(&address))))
        .await?
        .text()
        .await?;
    ensure!(
        why.contains("connection refused from 2/2 agents"),
        "the agents' reason: {why}"
    );
    ensure!(
        why.contains("agent-1 (zone-a)") && why.contains("agent-2 (zone-b)"),
        "each agent: {why}"
    );
    let kept = browser
        .execute("return window.tandemNoReload || null;", vec![])
        .await?;
    ensure!(
        kept == serde_json::json!(42),
        "the page was reloaded: {kept}"
    );
    let first = browser
        .find(Locator::Css("#feed-list li:first-child"))
        .await?
        .text()
        .await?;
    ensure!(
        first.contains(&address) && first.contains("unhealthy"),
        "the newest change: {first}"
    );
    tokio::time::sleep(Duration::from_millis(1200)).await;
    save_screenshot(browser, "status-unhealthy.png").await?;

    // Its own page: the transition in its history, each agent's view.
    browser
        .find(Locator::Css(&format!("{} td.addr a", row(&address))))
        .await?
        .click()
        .await?;
    browser
        .wait()
        .at_most(Duration::from_secs(10))
        .for_element(Locator::Css(r#"#backend-body [data-health="unhealthy"]"#))
        .await?;
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let history = browser
            .find(Locator::Id("history-body"))
            .await?
            .text()
            .await?;
        if history.contains("unhealthy") && history.contains("connection refused from 2/2 agents") {
            break;
        }
        if Instant::now() > deadline {
            bail!("the transition is not in the history: {history}");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let agents = browser
        .find_all(Locator::Css("#agents-table tbody tr[data-agent]"))
        .await?;
    ensure!(agents.len() == 2, "two agents' views");
    tokio::time::sleep(Duration::from_millis(1200)).await;
    save_screenshot(browser, "status-backend.png").await?;
    Ok(())
}

async fn read_without_script(browser: &Client, page: &str, down: &str) -> anyhow::Result<()> {
    browser.goto(page).await?;
    let live = browser.find(Locator::Id("live")).await?;
    ensure!(
        live.attr("data-state").await?.as_deref() == Some("static"),
        "without script the page says it is a static view"
    );
    ensure!(live.text().await?.starts_with("Static view"));
    ensure!(
        attr(browser, &row(down), "data-health").await?.as_deref() == Some("unhealthy"),
        "the static view shows the state"
    );
    let feed = browser.find(Locator::Id("feed-list")).await?.text().await?;
    ensure!(feed.contains("unhealthy"), "{feed}");
    Ok(())
}

/// The page as a script reads it.
async fn page_text(url: &str) -> anyhow::Result<String> {
    let r = http_client().get(url).send().await?;
    ensure!(r.status() == 200, "{url}: {}", r.status());
    Ok(r.text().await?)
}

/// The page's alerts section (empty when there is none).
fn alerts_of(page: &str) -> &str {
    let Some(start) = page.find(r#"<div id="alerts-body""#) else {
        return "";
    };
    let rest = &page[start..];
    &rest[..rest.find("</div>").unwrap_or(rest.len())]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tcp_pool_its_listeners_and_a_split_brain_alert_show_on_the_page() -> anyhow::Result<()> {
    tandem_testkit::init_crypto();
    let pg = Postgres::start()?;
    let cp = ControlPlane::start(&pg.url()).await?;
    // Two database members, each on a loopback "host" of its own with a
    // Patroni-like REST API on the same port; both say they are primary.
    let hosts: Vec<IpAddr> = [31, 32].map(|i| IpAddr::from([127, 0, 0, i])).to_vec();
    let members = [
        Echo::start_on("db1", hosts[0]).await?,
        Echo::start_on("db2", hosts[1]).await?,
    ];
    let health_port = port_free_on(&hosts);
    let patroni = [
        PrimaryResponder::start(hosts[0], health_port, true).await?,
        PrimaryResponder::start(hosts[1], health_port, true).await?,
    ];
    let mut admin = cp.admin_client().await?;
    admin
        .create_pool(v1::CreatePoolRequest {
            pool: Some(primary_pool("db", health_port, 1)),
        })
        .await?;
    for (m, order) in members.iter().zip([1, 2]) {
        admin
            .add_backend(v1::AddBackendRequest {
                pool: "db".into(),
                backend: Some(v1::Backend {
                    address: m.address(),
                    order: Some(order),
                    ..Default::default()
                }),
                expected_revision: None,
            })
            .await?;
    }
    // One route the proxy binds, one on a port something else holds.
    let listen = free_addr();
    let taken = std::net::TcpListener::bind("127.0.0.1:0")?;
    let busy = taken.local_addr()?;
    for at in [listen, busy] {
        admin
            .add_tcp_route(v1::AddTcpRouteRequest {
                route: Some(v1::TcpRoute {
                    listen: at.to_string(),
                    pool: "db".into(),
                }),
            })
            .await?;
    }
    let _agent = AgentProcess::start("agent-1", "zone-a", &cp.endpoint()).await?;
    let proxy = ProxyProcess::start(
        tempfile::tempdir()?,
        &cp.endpoint(),
        &[
            ("TANDEM_TOKEN", NODE_TOKEN.into()),
            ("TANDEM_NODE_ID", "proxy-1".into()),
            ("TANDEM_WORKERS", "1".into()),
        ],
    )?;
    proxy.wait_ready().await?;

    let url = cp.admin_url("/ui/");
    let bound = format!(r#"<li data-listen="{listen}" data-bound="true">"#);
    let not_bound = format!(r#"<li data-listen="{busy}" data-bound="false">"#);
    let proxy_alert = "proxy-1</strong>: pool/db (single_active): 2 members pass the health check";
    wait_until(
        Duration::from_secs(20),
        "the listeners and the proxy's split-brain alert on the page",
        || {
            let url = url.clone();
            let (bound, not_bound) = (bound.clone(), not_bound.clone());
            async move {
                page_text(&url).await.is_ok_and(|p| {
                    p.contains(&bound)
                        && p.contains(&not_bound)
                        && alerts_of(&p).contains(proxy_alert)
                })
            }
        },
    )
    .await?;
    let page = page_text(&url).await?;
    let (db1, db2) = (members[0].address(), members[1].address());

    // The pool: its TCP routes, the port its check probes, its TCP
    // settings, and the one member every connection goes to.
    for shown in [
        format!(r#"data-tcp-route="{listen}""#),
        format!(r#"data-tcp-route="{busy}""#),
        format!("HTTP GET /primary port {health_port} (200-399)"),
        "TCP: idle 30m0s, no connection limit, unhealthy: close after 0ms (policy)".to_string(),
        format!(
            r#"every connection to <span class="mono">{db1}</span>, the first member passing its check"#
        ),
        "SPLIT BRAIN? 2 members pass the check".to_string(),
    ] {
        ensure!(page.contains(&shown), "{shown:?} on the page:\n{page}");
    }
    ensure!(
        page.contains(&format!(r#"data-backend="db/{db1}" data-health="healthy""#))
            && page.contains(&format!(r#"data-backend="db/{db2}" data-health="healthy""#)),
        "both members healthy: {page}"
    );
    // The proxy's row: the port it could not bind, and why.
    let row_start = page
        .find(r#"data-node="proxy-1""#)
        .context("the proxy's row")?;
    let row = &page[row_start..row_start + page[row_start..].find("</tr>").unwrap_or(0)];
    ensure!(
        row.contains(&bound) && row.contains(&not_bound) && row.contains("Address already in use"),
        "the proxy's listeners: {row}"
    );
    // The alerts, above everything: the page's own reading of the health,
    // the proxy's, and the unbound listener.
    let alerts = alerts_of(&page);
    for said in [
        format!("Proxies send only to {db1}, the first by declared order"),
        proxy_alert.to_string(),
        format!(
            r#"TCP listener <span class="mono">{busy}</span> (pool db) <strong>NOT BOUND</strong>: Address already in use"#
        ),
    ] {
        ensure!(alerts.contains(&said), "{said:?} in the alerts:\n{alerts}");
    }
    ensure!(
        page.find(r#"id="alerts""#) < page.find(r#"id="platform""#),
        "alerts come first"
    );

    // db2 steps down: the split brain is over, on the page and at the
    // proxy; the unbound port still is not.
    patroni[1].set_primary(false);
    wait_until(
        Duration::from_secs(20),
        "the split-brain alerts gone",
        || {
            let url = url.clone();
            async move {
                page_text(&url).await.is_ok_and(|p| {
                    let alerts = alerts_of(&p);
                    !alerts.contains("split brain")
                        && !alerts.contains("2 members pass")
                        && alerts.contains("NOT BOUND")
                })
            }
        },
    )
    .await?;
    let page = page_text(&url).await?;
    ensure!(
        page.contains(&format!(
            r#"data-backend="db/{db2}" data-health="unhealthy""#
        )),
        "{page}"
    );
    drop(taken);
    Ok(())
}
