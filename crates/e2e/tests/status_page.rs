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
use tandem_testkit::add_tcp_route;
use tandem_testkit::agent::AgentProcess;
use tandem_testkit::backend::FakeBackend;
use tandem_testkit::browser::{ChromeDriver, click, save_screenshot, wait_for};
use tandem_testkit::patroni::port_free_on;
use tandem_testkit::proxy::ProxyProcess;
use tandem_testkit::served::checked_pool;
use tandem_testkit::served::{all_healthy, quick_health_check, wait_health};
use tandem_testkit::tcp::{Echo, PrimaryResponder, primary_pool};
use tandem_testkit::{
    ADMIN_TOKEN, ControlCluster, ControlPlane, NODE_TOKEN, Postgres, declare_pool, free_addr,
    http_client, wait_until,
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
    declare_pool(&mut admin, checked_pool("shop", check()), &addresses).await?;
    api_pool(&mut admin, &addresses, check()).await?;

    let _agents = [
        AgentProcess::start("agent-1", "zone-a", &endpoints).await?,
        AgentProcess::start("agent-2", "zone-b", &endpoints).await?,
    ];
    let _proxy = ProxyProcess::following(
        &endpoints,
        &[
            ("TANDEM_ZONE", "zone-a".to_string()),
            ("TANDEM_WORKERS", "1".to_string()),
        ],
    )
    .await?;
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
    let live = wait_for(browser, Locator::Css(r#"#live[data-state="live"]"#))
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
    click(
        browser,
        Locator::Css(&format!("{} td.addr a", row(&address))),
    )
    .await?;
    wait_for(
        browser,
        Locator::Css(r#"#backend-body [data-health="unhealthy"]"#),
    )
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
        add_tcp_route(&mut admin, at, "db").await?;
    }
    let _agent = AgentProcess::start("agent-1", "zone-a", &cp.endpoint()).await?;
    let _proxy =
        ProxyProcess::following(&cp.endpoint(), &[("TANDEM_WORKERS", "1".to_string())]).await?;

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

/// A client that shows redirects instead of following them, and keeps no
/// cookies: each request carries exactly what the test gives it.
fn bare_client() -> reqwest::Client {
    tandem_testkit::init_crypto();
    reqwest::Client::builder()
        .no_proxy()
        .redirect(reqwest::redirect::Policy::none())
        .timeout(Duration::from_secs(10))
        .build()
        .expect("building a reqwest client")
}

/// A URL-encoded form body (this reqwest is built without its `form`).
fn form(req: reqwest::RequestBuilder, pairs: &[(&str, &str)]) -> reqwest::RequestBuilder {
    let enc = |s: &str| -> String {
        s.bytes()
            .map(|b| {
                if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
                    (b as char).to_string()
                } else {
                    format!("%{b:02X}")
                }
            })
            .collect()
    };
    let body: Vec<String> = pairs
        .iter()
        .map(|(k, v)| format!("{}={}", enc(k), enc(v)))
        .collect();
    req.header("content-type", "application/x-www-form-urlencoded")
        .body(body.join("&"))
}

/// The value of the hidden `csrf` input on a page.
fn csrf_of(page: &str) -> Option<String> {
    let at = page.find(r#"name="csrf" value=""#)? + r#"name="csrf" value=""#.len();
    Some(page[at..].split('"').next()?.to_string())
}

/// Requests sent through the proxy: how many each backend answered.
async fn spread(
    proxy: &ProxyProcess,
    backends: &[FakeBackend],
    n: usize,
) -> anyhow::Result<Vec<u64>> {
    let mut before = Vec::new();
    for b in backends {
        before.push(b.requests().await?);
    }
    let client = http_client();
    for _ in 0..n {
        let r = client.get(proxy.url("/")).send().await?;
        ensure!(r.status() == 200, "through the proxy: {}", r.status());
    }
    let mut after = Vec::new();
    for b in backends {
        after.push(b.requests().await?);
    }
    Ok(after.iter().zip(&before).map(|(a, b)| a - b).collect())
}

async fn pool_state(
    admin: &mut tandem_testkit::AuthedClient,
    address: &str,
) -> anyhow::Result<(i32, u64)> {
    let p = admin
        .get_pool(v1::GetPoolRequest {
            name: "shop".into(),
        })
        .await?
        .into_inner();
    let b = p
        .backends
        .iter()
        .find(|b| b.address == address)
        .context("the backend in its pool")?;
    Ok((b.admin_state, p.revision))
}

/// Signed in with the admin token, a person drains a backend from its page:
/// a confirmation first, then the new revision; the page shows it
/// draining and the proxy stops sending it requests. Without a session,
/// without the session's CSRF token or with a wrong one, and from another
/// origin, the same POST is refused and nothing changes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_admin_drains_a_backend_from_the_page_and_others_are_refused() -> anyhow::Result<()> {
    tandem_testkit::init_crypto();
    let driver = ChromeDriver::start().await?;
    let pg = Postgres::start()?;
    let cp = ControlPlane::start(&pg.url()).await?;
    let backends = FakeBackend::start_many("web", 2).await?;
    let addresses: Vec<String> = backends.iter().map(|b| b.address()).collect();
    let victim = addresses[0].clone();
    let mut admin = cp.admin_client().await?;
    declare_pool(
        &mut admin,
        checked_pool("shop", quick_health_check(250)),
        &addresses,
    )
    .await?;
    let _agent = AgentProcess::start("agent-1", "zone-a", &cp.endpoint()).await?;
    let proxy =
        ProxyProcess::following(&cp.endpoint(), &[("TANDEM_WORKERS", "1".to_string())]).await?;
    wait_until(
        Duration::from_secs(20),
        "both backends take requests through the proxy",
        || async {
            spread(&proxy, &backends, 10)
                .await
                .is_ok_and(|s| s.iter().all(|n| *n > 0))
        },
    )
    .await?;

    // Refusals, as any client could send them.
    let client = bare_client();
    let url = |path: &str| cp.admin_url(path);
    let drain = url(&format!("/ui/pools/shop/backends/{victim}/drain"));
    let (state0, rev0) = pool_state(&mut admin, &victim).await?;
    ensure!(state0 == v1::AdminState::Enabled as i32);
    let r = form(client.post(&drain), &[("csrf", "x"), ("confirm", "yes")])
        .send()
        .await?;
    ensure!(r.status() == 401, "without a session: {}", r.status());
    ensure!(r.text().await?.contains("not signed in"));
    let r = form(client.post(url("/ui/signin")), &[("token", NODE_TOKEN)])
        .send()
        .await?;
    ensure!(
        r.status() == 401,
        "the node token is no admin credential: {}",
        r.status()
    );
    ensure!(r.headers().get("set-cookie").is_none());
    ensure!(r.text().await?.contains("not an admin credential"));
    let r = form(
        client
            .post(url("/ui/signin"))
            .header("origin", "http://evil.example"),
        &[("token", ADMIN_TOKEN)],
    )
    .send()
    .await?;
    ensure!(r.status() == 403, "a cross-origin sign-in: {}", r.status());
    let r = form(client.post(url("/ui/signin")), &[("token", ADMIN_TOKEN)])
        .send()
        .await?;
    ensure!(r.status() == 303, "signing in: {}", r.status());
    let set_cookie = r
        .headers()
        .get("set-cookie")
        .context("a session cookie")?
        .to_str()?
        .to_string();
    ensure!(
        set_cookie.contains("HttpOnly")
            && set_cookie.contains("SameSite=Strict")
            && set_cookie.contains("Path=/ui")
            && !set_cookie.contains(ADMIN_TOKEN),
        "{set_cookie}"
    );
    let cookie = set_cookie.split(';').next().unwrap_or("").to_string();
    let page = client
        .get(url("/ui/"))
        .header("cookie", &cookie)
        .send()
        .await?
        .text()
        .await?;
    ensure!(page.contains("Signed in as admin"), "signed in: {page}");
    ensure!(!page.contains(ADMIN_TOKEN));
    let csrf = csrf_of(&page).context("the page's CSRF token")?;
    let post = |headers: &[(&str, &str)], pairs: &[(&str, &str)]| {
        let mut req = client.post(&drain).header("cookie", &cookie);
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        form(req, pairs).send()
    };
    let wrong = "0".repeat(64);
    for (what, headers, form) in [
        ("no CSRF token", vec![], vec![("confirm", "yes")]),
        (
            "a wrong CSRF token",
            vec![],
            vec![("csrf", wrong.as_str()), ("confirm", "yes")],
        ),
        (
            "another origin",
            vec![("origin", "http://evil.example")],
            vec![("csrf", csrf.as_str()), ("confirm", "yes")],
        ),
        (
            "a cross-site fetch",
            vec![("sec-fetch-site", "cross-site")],
            vec![("csrf", csrf.as_str()), ("confirm", "yes")],
        ),
    ] {
        let r = post(&headers, &form).await?;
        ensure!(r.status() == 403, "{what}: {}", r.status());
        let text = r.text().await?;
        ensure!(text.contains("Refused"), "{what}: {text}");
    }
    // Unconfirmed, it only asks.
    let r = post(&[], &[("csrf", csrf.as_str())]).await?;
    ensure!(r.status() == 200);
    let text = r.text().await?;
    ensure!(
        text.contains(&format!(
            r#"Drain <span class="mono">{victim}</span> in pool shop?"#
        )),
        "{text}"
    );
    ensure!(
        pool_state(&mut admin, &victim).await? == (state0, rev0),
        "nothing changed before a confirmed, same-origin POST with the token"
    );

    // In the browser: sign in, open the backend, drain it.
    let browser = driver.browser(1100).await?;
    let result = drain_in_the_browser(&browser, &cp.admin_url("/ui/"), &victim).await;
    let _ = browser.close().await;
    let revision = result?;
    let (state, rev) = pool_state(&mut admin, &victim).await?;
    ensure!(
        state == v1::AdminState::Draining as i32,
        "declared draining"
    );
    ensure!(
        rev == revision && rev > rev0,
        "the revision shown, {revision}, is the pool's, {rev}"
    );
    // The proxy sends it no new request.
    wait_until(
        Duration::from_secs(10),
        "the proxy stops sending the drained backend requests",
        || async { spread(&proxy, &backends, 10).await.is_ok_and(|s| s[0] == 0) },
    )
    .await?;
    let sent = spread(&proxy, &backends, 30).await?;
    ensure!(sent == vec![0, 30], "after the drain: {sent:?}");
    Ok(())
}

/// Signs in, drains `victim` from its page; the revision the page shows.
async fn drain_in_the_browser(browser: &Client, page: &str, victim: &str) -> anyhow::Result<u64> {
    browser.goto(page).await?;
    browser.find(Locator::Id("read-only")).await?;
    ensure!(
        browser
            .find_all(Locator::Css("button[data-action]"))
            .await?
            .is_empty(),
        "no action without a session"
    );
    click(browser, Locator::Id("sign-in")).await?;
    browser
        .find(Locator::Id("token"))
        .await?
        .send_keys(tandem_testkit::ADMIN_TOKEN)
        .await?;
    click(browser, Locator::Id("sign-in-button")).await?;
    wait_for(browser, Locator::Id("signed-in"))
        .await
        .context("signed in")?;
    wait_for(browser, Locator::Css(r#"#live[data-state="live"]"#)).await?;
    let row = format!(r#"tr[data-backend="shop/{victim}"]"#);
    ensure!(
        attr(browser, &row, "data-admin").await?.as_deref() == Some("enabled"),
        "enabled at first"
    );
    tokio::time::sleep(Duration::from_millis(1200)).await;
    save_screenshot(browser, "status-signed-in.png").await?;
    click(browser, Locator::Css(&format!("{row} td.addr a"))).await?;
    wait_for(
        browser,
        Locator::Css(r#"#actions button[data-action="drain"]"#),
    )
    .await?
    .click()
    .await?;
    let confirm = wait_for(browser, Locator::Id("confirm")).await?;
    let asks = confirm.text().await?;
    ensure!(
        asks.contains(&format!("Drain {victim} in pool shop?")),
        "the confirmation: {asks}"
    );
    save_screenshot(browser, "status-confirm.png").await?;
    click(browser, Locator::Id("confirm-button")).await?;
    let done = wait_for(browser, Locator::Id("done")).await?;
    let revision: u64 = done
        .attr("data-revision")
        .await?
        .context("the revision")?
        .parse()?;
    let said = done.text().await?;
    ensure!(
        said.contains("is now draining") && said.contains(&format!("revision {revision}")),
        "{said}"
    );
    // The status page shows it draining, live.
    browser.goto(page).await?;
    wait_for(
        browser,
        Locator::Css(&format!(r#"{row}[data-admin="draining"]"#)),
    )
    .await
    .context("the row shows it draining")?;
    let feed = browser.find(Locator::Id("feed-list")).await?.text().await?;
    ensure!(
        feed.contains(&format!("revision={revision}")),
        "the change in the feed: {feed}"
    );
    Ok(revision)
}
