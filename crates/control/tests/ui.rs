//! The status page of a real control replica, as a browser and an attacker
//! see it: a rogue agent and a rogue node put markup and line breaks in
//! everything they may send (an agent's name and zone, a probe's detail,
//! which becomes the backend's health reason, a node's id and detail, its
//! TCP listeners and its alerts); the page, a backend's page, its history
//! and the live event stream carry all of it as text, never as markup or as
//! a new event. The stream also follows changes as they commit (a TCP
//! route among them), and ends when the replica shuts down.

use std::time::{Duration, Instant};

use anyhow::{Context, bail, ensure};
use tandem_proto::v1;
use tandem_testkit::{AuthedClient, ControlPlane, Postgres, http_client, wait_until};

/// Nothing listens here: the backend the rogue agent reports on.
const BACKEND: &str = "127.0.0.1:1";

/// What a hostile agent says a probe saw: markup, quotes, and line breaks
/// that would start a new server-sent event if they reached the stream.
const EVIL_DETAIL: &str = "<img src=x onerror=alert(1)>'\"\r\nevent: platform\r\ndata: <script>alert(2)</script>\n\nevent: pools\ndata: <b>owned</b>";
const EVIL_AGENT: &str = "agent\"><script>alert(3)</script>";
const EVIL_ZONE: &str = "<i>zone</i>";
const EVIL_NODE: &str = "<script>alert(4)</script>";
const EVIL_NODE_DETAIL: &str = "<iframe src=//evil>";
const EVIL_LISTEN: &str = "<marquee>0.0.0.0:1</marquee>";
const EVIL_LISTENER_ERROR: &str = "<svg onload=alert(6)>\r\nevent: nodes\ndata: <u>x</u>";
const EVIL_ALERT: &str = "<object data=//evil>\n\nevent: alerts\ndata: <s>gone</s>";

/// Raw markup that must never reach a page or the stream.
const RAW: &[&str] = &[
    "<img",
    "<script>alert",
    "<b>owned",
    "<i>zone",
    "<iframe",
    "\"><script",
    "<marquee",
    "<svg onload",
    "<u>x",
    "<object",
    "<s>gone",
];

fn assert_no_raw(what: &str, text: &str) {
    for raw in RAW {
        assert!(
            !text.contains(raw),
            "{what} carries {raw:?} as markup:\n{text}"
        );
    }
}

/// One server-sent event.
#[derive(Debug, Default)]
struct Sse {
    name: String,
    data: String,
}

/// An open event stream, read chunk by chunk.
struct Stream {
    response: reqwest::Response,
    buf: String,
    /// Every line received, to check the framing.
    lines: Vec<String>,
}

impl Stream {
    async fn open(url: &str) -> anyhow::Result<Stream> {
        let response = http_client().get(url).send().await?;
        ensure!(response.status() == 200, "{url}: {}", response.status());
        let kind = response
            .headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_string();
        ensure!(kind.starts_with("text/event-stream"), "content-type {kind}");
        Ok(Stream {
            response,
            buf: String::new(),
            lines: Vec::new(),
        })
    }

    /// The next event with data (comments and keep-alives skipped);
    /// `None` when the stream ends.
    async fn next(&mut self, within: Duration) -> anyhow::Result<Option<Sse>> {
        let deadline = Instant::now() + within;
        loop {
            if let Some(end) = self.buf.find("\n\n") {
                let block: String = self.buf.drain(..end + 2).collect();
                let mut event = Sse::default();
                let mut data = Vec::new();
                for line in block.lines().filter(|l| !l.is_empty()) {
                    self.lines.push(line.to_string());
                    if let Some(name) = line.strip_prefix("event: ") {
                        event.name = name.to_string();
                    } else if let Some(d) = line.strip_prefix("data: ") {
                        data.push(d);
                    } else if let Some(d) = line.strip_prefix("data:") {
                        data.push(d);
                    } else if !(line.starts_with(':') || line.starts_with("retry:")) {
                        bail!("a line that is no SSE field: {line:?}");
                    }
                }
                if data.is_empty() {
                    continue;
                }
                event.data = data.join("\n");
                return Ok(Some(event));
            }
            let left = deadline.saturating_duration_since(Instant::now());
            match tokio::time::timeout(left, self.response.chunk()).await {
                Err(_) => bail!("no event within {within:?}"),
                Ok(Ok(Some(chunk))) => {
                    // A CR alone also ends a line: count it as one, as a
                    // browser does.
                    let text = String::from_utf8_lossy(&chunk).replace("\r\n", "\n");
                    self.buf.push_str(&text.replace('\r', "\n"));
                }
                Ok(Ok(None)) => return Ok(None),
                Ok(Err(e)) => return Err(e.into()),
            }
        }
    }

    /// Reads events until one named `name` satisfies `pred`; returns it
    /// and every event read on the way.
    async fn until(
        &mut self,
        name: &str,
        within: Duration,
        pred: impl Fn(&str) -> bool,
    ) -> anyhow::Result<(Sse, Vec<Sse>)> {
        let deadline = Instant::now() + within;
        let mut seen = Vec::new();
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let Some(e) = self
                .next(left)
                .await
                .with_context(|| format!("waiting for a {name} event; seen: {seen:?}"))?
            else {
                bail!("the stream ended while waiting for a {name} event");
            };
            if e.name == name && pred(&e.data) {
                return Ok((e, seen));
            }
            seen.push(e);
        }
    }
}

/// Declares pool `shop` of [`BACKEND`] behind a catch-all route, probed
/// every 200 ms and decided on one result.
async fn declare_shop(admin: &mut AuthedClient) -> anyhow::Result<()> {
    let check = v1::HealthCheck {
        interval_ms: Some(200),
        timeout_ms: Some(100),
        rise: Some(1),
        fall: Some(1),
        ..Default::default()
    };
    let pool = tandem_testkit::served::checked_pool("shop", check);
    tandem_testkit::declare_pool(admin, pool, &[BACKEND.to_string()]).await
}

/// A proxy's report of revision 2, with no TCP listener and no alert.
fn proxy_report(node_id: &str, zone: &str, detail: &str) -> v1::ReportAppliedRequest {
    v1::ReportAppliedRequest {
        node_id: node_id.into(),
        kind: v1::NodeKind::Proxy.into(),
        revision: 2,
        zone: zone.into(),
        detail: detail.into(),
        listeners: Vec::new(),
        alerts: Vec::new(),
        admin_address: String::new(),
        certificates: Vec::new(),
        traffic: Vec::new(),
    }
}

const NAMES: &[&str] = &[
    "alerts",
    "platform",
    "pools",
    "nodes",
    "feed",
    "feed-all",
    "backend",
    "history",
    "history-all",
];

#[tokio::test]
async fn hostile_text_from_agents_and_nodes_stays_text_in_pages_and_the_live_stream()
-> anyhow::Result<()> {
    tandem_testkit::init_crypto();
    let pg = Postgres::start()?;
    let cp = ControlPlane::start(&pg.url()).await?;
    let mut admin = cp.admin_client().await?;
    declare_shop(&mut admin).await?;

    // The page answers on the admin listener, linked from `/`, with a
    // policy that lets nothing but its own files run.
    let index = http_client().get(cp.admin_url("/")).send().await?;
    assert_eq!(index.status(), 200);
    assert!(index.text().await?.contains(r#"href="/ui/""#));
    let page = http_client().get(cp.admin_url("/ui/")).send().await?;
    assert_eq!(page.status(), 200);
    let csp = page
        .headers()
        .get("content-security-policy")
        .context("a Content-Security-Policy")?
        .to_str()?
        .to_string();
    assert!(
        csp.contains("script-src 'self'") && !csp.contains("unsafe-inline"),
        "{csp}"
    );
    let html = page.text().await?;
    assert!(html.contains(r#"id="read-only""#), "says it is read-only");
    assert!(html.contains(r#"data-pool="shop""#), "{html}");

    let mut events = Stream::open(&cp.admin_url("/ui/events")).await?;
    // Every section at once on connecting.
    events
        .until("feed-all", Duration::from_secs(5), |_| true)
        .await?;

    // A rogue agent reports.
    let mut node = cp.node_client().await?;
    node.report_health(v1::ReportHealthRequest {
        agent_id: EVIL_AGENT.into(),
        zone: EVIL_ZONE.into(),
        observations: vec![v1::Observation {
            pool: "shop".into(),
            address: BACKEND.into(),
            ok: false,
            detail: EVIL_DETAIL.into(),
            latency_ms: 1,
        }],
    })
    .await?;

    // The backend turns unhealthy on the stream, with the agent's words as
    // text.
    let (pools, before) = events
        .until("pools", Duration::from_secs(10), |d| {
            d.contains(r#"data-health="unhealthy""#)
        })
        .await?;
    assert!(
        pools
            .data
            .contains("&lt;img src=x onerror=alert(1)&gt;&#39;&quot;&#13;"),
        "the reason, escaped: {}",
        pools.data
    );
    assert!(
        pools
            .data
            .contains("agent&quot;&gt;&lt;script&gt;alert(3)&lt;/script&gt;")
    );
    assert!(pools.data.contains("&lt;i&gt;zone&lt;/i&gt;"));
    let (feed, _) = events
        .until("feed", Duration::from_secs(5), |d| d.contains("unhealthy"))
        .await?;
    for e in before.iter().chain([&pools, &feed]) {
        assert!(NAMES.contains(&e.name.as_str()), "event {:?}", e.name);
        assert_no_raw(&format!("event {}", e.name), &e.data);
    }
    // No line the agent wrote became a field of its own.
    for line in &events.lines {
        assert!(
            !line.starts_with("event: platform&")
                && !line.contains("event: pools\n")
                && (line.starts_with("data:")
                    || line.starts_with("event: ")
                    || line.starts_with(':')
                    || line.starts_with("retry:")),
            "{line:?}"
        );
    }

    // A rogue node reports too, with a listener it cannot bind and an
    // alert: both raised at the top of the page, as text.
    node.report_applied(v1::ReportAppliedRequest {
        listeners: vec![v1::ListenerStatus {
            listen: EVIL_LISTEN.into(),
            pool: EVIL_ZONE.into(),
            bound: false,
            error: EVIL_LISTENER_ERROR.into(),
        }],
        alerts: vec![EVIL_ALERT.into()],
        traffic: Vec::new(),
        ..proxy_report(EVIL_NODE, EVIL_ZONE, EVIL_NODE_DETAIL)
    })
    .await?;
    let (nodes, seen) = events
        .until("nodes", Duration::from_secs(10), |d| d.contains("alert(4)"))
        .await?;
    assert_no_raw("the nodes event", &nodes.data);
    assert!(nodes.data.contains("&lt;script&gt;alert(4)&lt;/script&gt;"));
    assert!(
        nodes.data.contains(
            r#"<li data-listen="&lt;marquee&gt;0.0.0.0:1&lt;/marquee&gt;" data-bound="false">"#
        ),
        "the listener's row: {}",
        nodes.data
    );
    let alerts = match seen
        .into_iter()
        .find(|e| e.name == "alerts" && e.data.contains("NOT BOUND"))
    {
        Some(e) => e,
        None => {
            events
                .until("alerts", Duration::from_secs(5), |d| {
                    d.contains("NOT BOUND")
                })
                .await?
                .0
        }
    };
    assert_no_raw("the alerts event", &alerts.data);
    assert!(
        alerts.data.contains("NOT BOUND")
            && alerts.data.contains("&lt;svg onload=alert(6)&gt;")
            && alerts.data.contains("&lt;object data=//evil&gt;"),
        "{}",
        alerts.data
    );

    // The static page says all of it, as text.
    let html = http_client()
        .get(cp.admin_url("/ui/"))
        .send()
        .await?
        .text()
        .await?;
    assert_no_raw("/ui/", &html);
    assert!(
        html.contains("&lt;img src=x onerror=alert(1)&gt;"),
        "{html}"
    );
    assert!(html.contains("&lt;iframe src=//evil&gt;"), "{html}");
    assert!(html.contains(r#"id="alerts""#), "{html}");

    // So does the backend's page, once the leader recorded the transition
    // in the database.
    let backend_url = cp.admin_url("/ui/pools/shop/backends/127.0.0.1%3A1");
    wait_until(
        Duration::from_secs(10),
        "the transition in the history",
        || {
            let url = backend_url.clone();
            async move {
                let Ok(r) = http_client().get(&url).send().await else {
                    return false;
                };
                r.text().await.is_ok_and(|t| {
                    t.contains("from the control database") && t.contains(r#"data-key="h"#)
                })
            }
        },
    )
    .await?;
    let backend = http_client().get(&backend_url).send().await?;
    assert_eq!(backend.status(), 200);
    let html = backend.text().await?;
    assert_no_raw("the backend's page", &html);
    assert!(html.contains(r#"data-agent="agent&quot;&gt;&lt;script&gt;alert(3)&lt;/script&gt;""#));

    // A path that names no pool says so, without echoing markup.
    let missing = http_client()
        .get(cp.admin_url("/ui/pools/%3Cscript%3Ealert(5)%3C%2Fscript%3E/backends/x"))
        .send()
        .await?;
    assert_eq!(missing.status(), 404);
    let html = missing.text().await?;
    assert!(!html.contains("<script>alert(5)"), "{html}");
    assert!(html.contains("&lt;script&gt;alert(5)"), "{html}");

    // A configuration change reaches the feed as it commits.
    admin
        .add_backend(v1::AddBackendRequest {
            pool: "shop".into(),
            backend: Some(v1::Backend {
                address: "127.0.0.1:2".into(),
                ..Default::default()
            }),
            expected_revision: None,
        })
        .await?;
    events
        .until("feed", Duration::from_secs(5), |d| {
            d.contains("backend_upserted") && d.contains("127.0.0.1:2")
        })
        .await?;

    // So does a TCP route, which the pool then shows.
    admin
        .add_tcp_route(v1::AddTcpRouteRequest {
            route: Some(v1::TcpRoute {
                listen: "127.0.0.1:5999".into(),
                pool: "shop".into(),
            }),
        })
        .await?;
    let (feed, before) = events
        .until("feed", Duration::from_secs(5), |d| {
            d.contains("tcp_route_upserted")
        })
        .await?;
    assert!(
        feed.data
            .contains("listen=<b>127.0.0.1:5999</b> pool=<b>shop</b>"),
        "{}",
        feed.data
    );
    let tcp_route = r#"data-tcp-route="127.0.0.1:5999""#;
    if !before
        .iter()
        .any(|e| e.name == "pools" && e.data.contains(tcp_route))
    {
        events
            .until("pools", Duration::from_secs(5), |d| d.contains(tcp_route))
            .await?;
    }

    // Open streams do not hold the replica up when it stops (its drain
    // deadline is 10 s).
    drop((node, admin));
    let started = Instant::now();
    let mut process = cp.process;
    let status =
        tokio::task::spawn_blocking(move || process.terminate(Duration::from_secs(15))).await??;
    assert!(status.success(), "{status}");
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "stopped after {:?}",
        started.elapsed()
    );
    loop {
        match events.next(Duration::from_secs(5)).await {
            Ok(None) | Err(_) => break,
            Ok(Some(_)) => continue,
        }
    }
    Ok(())
}

/// While the database is away the page still answers, from memory, and
/// says what it cannot know: the nodes as last read, a backend's history
/// from the replicated table. Back, it says so by itself.
#[tokio::test]
async fn the_page_answers_from_memory_while_the_database_is_away() -> anyhow::Result<()> {
    tandem_testkit::init_crypto();
    let pg = Postgres::start()?;
    let cp = ControlPlane::start(&pg.url()).await?;
    let mut admin = cp.admin_client().await?;
    declare_shop(&mut admin).await?;
    let mut node = cp.node_client().await?;
    node.report_applied(proxy_report(
        "proxy-1",
        "zone-a",
        "serving from the control plane",
    ))
    .await?;
    node.report_health(v1::ReportHealthRequest {
        agent_id: "agent-1".into(),
        zone: "zone-a".into(),
        observations: vec![v1::Observation {
            pool: "shop".into(),
            address: BACKEND.into(),
            ok: false,
            detail: "connect: connection refused".into(),
            latency_ms: 1,
        }],
    })
    .await?;
    let page = cp.admin_url("/ui/");
    let backend = cp.admin_url("/ui/pools/shop/backends/127.0.0.1%3A1");
    let get = |url: String| async move {
        let r = http_client().get(&url).send().await?;
        anyhow::Ok((r.status().as_u16(), r.text().await?))
    };
    wait_until(
        Duration::from_secs(10),
        "the node and the transition shown",
        || {
            let page = page.clone();
            async move {
                get(page).await.is_ok_and(|(_, t)| {
                    t.contains(r#"data-node="proxy-1""#) && t.contains(r#"data-health="unhealthy""#)
                })
            }
        },
    )
    .await?;

    // A replica alone leads: the agents' views are their latest reports.
    let (_, html) = get(page.clone()).await?;
    assert!(html.contains("each agent's latest report"), "{html}");

    pg.stop()?;
    wait_until(Duration::from_secs(10), "the replica notices", || {
        let ready = cp.admin_url("/readyz");
        async move { get(ready).await.is_ok_and(|(status, _)| status == 503) }
    })
    .await?;
    wait_until(Duration::from_secs(10), "the page says so", || {
        let page = page.clone();
        async move {
            get(page).await.is_ok_and(|(status, t)| {
                status == 200 && t.contains("UNREACHABLE") && t.contains("As last read")
            })
        }
    })
    .await?;
    let (status, html) = get(page.clone()).await?;
    assert_eq!(status, 200);
    assert!(
        html.contains(r#"data-node="proxy-1""#),
        "the nodes as last read: {html}"
    );
    assert!(
        html.contains(r#"data-health="unhealthy""#),
        "health from memory"
    );
    let (status, html) = get(backend.clone()).await?;
    assert_eq!(status, 200);
    assert!(
        html.contains("from this replica&#39;s memory")
            || html.contains("from this replica's memory"),
        "{html}"
    );
    assert!(
        html.contains("connect: connection refused from 1/1 agent"),
        "{html}"
    );

    pg.restart()?;
    wait_until(
        Duration::from_secs(15),
        "the page sees the database back",
        || {
            let page = page.clone();
            async move {
                get(page).await.is_ok_and(|(_, t)| {
                    !t.contains("UNREACHABLE")
                        && !t.contains("As last read")
                        && t.contains("reachable")
                })
            }
        },
    )
    .await?;
    let (_, html) = get(backend).await?;
    assert!(html.contains("from the control database"), "{html}");
    Ok(())
}
