//! The alert rules and the Grafana dashboard, checked by the real thing:
//! Debian's `prometheus` scrapes a live platform (a control replica on a
//! throwaway Postgres, an agent, a proxy, two widget-shop servers on their
//! own database) with the rules of `deploy/prometheus/rules/` loaded, their
//! `for:` shortened to a second.
//!
//! 1. Every PromQL expression of `deploy/grafana/dashboards/*.json` and of
//!    the rules (each side of a rule's comparison: the comparison itself is
//!    empty while all is well) must return data: a renamed metric cannot
//!    leave a panel or an alert silently empty. The failures are named.
//! 2. A shop server is broken (its health check answers 500): Prometheus's
//!    API must show `BackendUnhealthy` firing for it; once repaired, the
//!    alert must resolve.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use serde_json::{Value, json};
use tandem_proto::v1;
use tandem_testkit::agent::AgentProcess;
use tandem_testkit::certs::{KeyKind, TestCa};
use tandem_testkit::proxy::ProxyProcess;
use tandem_testkit::served::{checked_pool, quick_health_check};
use tandem_testkit::{
    ControlPlane, Postgres, Process, declare_pool, free_addr, http_client, wait_http_ok, wait_until,
};

/// The fault-injection token the shops accept.
const SHOP_ADMIN_TOKEN: &str = "alerts-test-shop-admin-token-0123";

/// How long an expression may take to return data once everything is up
/// (rates need two scrapes; a second apart here).
const DATA_WITHIN: Duration = Duration::from_secs(60);
/// From breaking a backend to its alert firing: the agent's two failed
/// probes (500 ms apart), a scrape and an evaluation (1 s each), `for: 1s`.
const FIRES_WITHIN: Duration = Duration::from_secs(60);

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn alert_rules_and_dashboards_hold_against_a_live_platform() -> anyhow::Result<()> {
    tandem_testkit::init_crypto();
    let prometheus_bin = which("prometheus").context(
        "Debian's prometheus is not installed (scripts/test.sh installs it: apt-get install prometheus)",
    )?;

    // The platform: control plane, two shops, an agent, a proxy.
    let pg = Postgres::start()?;
    let shop_db = pg.create_database("shop")?;
    let control = ControlPlane::start(&pg.url()).await?;
    let shops = [
        Shop::start("shop-1", &shop_db).await?,
        Shop::start("shop-2", &shop_db).await?,
    ];
    let mut admin = control.admin_client().await?;
    declare_pool(
        &mut admin,
        checked_pool("shop", quick_health_check(400)),
        &shops.iter().map(|s| s.addr.to_string()).collect::<Vec<_>>(),
    )
    .await?;
    // A certificate the proxy serves on a TLS listener: the expiry alert's
    // metric.
    let ca = TestCa::new("alerts-test-ca")?;
    let issued = ca.issue(&["shop.test"], KeyKind::EcP256)?;
    admin
        .add_certificate(v1::AddCertificateRequest {
            certificate: Some(v1::Certificate {
                name: "shop".into(),
                chain_pem: issued.chain_pem,
                key_pem: issued.key_pem,
            }),
        })
        .await?;
    let agent = AgentProcess::start("agent-1", "zone-a", &control.endpoint()).await?;
    let proxy = ProxyProcess::following(
        &control.endpoint(),
        &[("TANDEM_TLS_LISTEN", free_addr().to_string())],
    )
    .await?;
    wait_http_ok(&proxy.url("/api/widgets"), Duration::from_secs(20)).await?;

    // Prometheus, scraping all of it every second with the rules loaded.
    let dir = tempfile::tempdir()?;
    let web = free_addr();
    let rules = shortened_rules()?;
    std::fs::write(dir.path().join("rules.yml"), &rules)?;
    let targets = [
        ("tandem-control", vec![("control-1", control.admin)]),
        ("tandem-proxy", vec![("proxy-1", proxy.admin)]),
        ("tandem-agent", vec![("agent-1", agent.admin)]),
        (
            "widget-shop",
            shops.iter().map(|s| (s.name, s.addr)).collect(),
        ),
        ("prometheus", vec![("prometheus", web)]),
    ];
    std::fs::write(
        dir.path().join("prometheus.yml"),
        prometheus_config(&targets),
    )?;
    let config = dir.path().join("prometheus.yml").display().to_string();
    let storage = dir.path().join("data").display().to_string();
    let listen = web.to_string();
    let prometheus = Process::spawn(
        "prometheus",
        &prometheus_bin.display().to_string(),
        &[
            "--config.file",
            &config,
            "--storage.tsdb.path",
            &storage,
            "--web.listen-address",
            &listen,
            "--log.level",
            "warn",
        ],
        &[],
    )?;
    let api = Api {
        base: format!("http://{web}/api/v1"),
        client: http_client(),
    };
    if let Err(e) = wait_http_ok(&format!("http://{web}/-/ready"), Duration::from_secs(30)).await {
        bail!("{e}\n--- prometheus log ---\n{}", prometheus.logs());
    }

    // Traffic through the proxy for the whole test, and one order.
    let traffic = tokio::spawn(browse(proxy.url("")));
    place_order(&proxy.url("")).await?;

    // 1. Every expression returns data.
    let mut queries = dashboard_queries()?;
    let loaded = api.rules().await?;
    if loaded.is_empty() {
        bail!("Prometheus loaded no rules from\n{rules}");
    }
    for (name, expr) in &loaded {
        for side in comparison_sides(expr) {
            queries.push((format!("rule {name}"), side));
        }
    }
    let empty = api.without_data(&queries, DATA_WITHIN).await;
    if !empty.is_empty() {
        bail!(
            "{} expression(s) return no data against the live platform:\n{}",
            empty.len(),
            empty.join("\n")
        );
    }

    // 2. A backend breaks: its alert fires; repaired: it resolves.
    let broken = &shops[1];
    let backend = broken.addr.to_string();
    broken.set_fault(Some("error")).await?;
    let firing = api
        .wait_alert(
            "BackendUnhealthy",
            &backend,
            |s| s == Some("firing"),
            FIRES_WITHIN,
        )
        .await;
    let alerts = api.alerts().await.unwrap_or_default();
    if let Err(e) = firing {
        bail!("{e}\nalerts: {alerts}");
    }
    println!("firing: {alerts:#}");
    broken.set_fault(None).await?;
    let resolved = api
        .wait_alert("BackendUnhealthy", &backend, |s| s.is_none(), FIRES_WITHIN)
        .await;
    if let Err(e) = resolved {
        bail!("{e}\nalerts: {}", api.alerts().await.unwrap_or_default());
    }
    traffic.abort();
    Ok(())
}

// === the rules and the dashboards ===

/// The project's rules with every `for:` cut to a second.
fn shortened_rules() -> anyhow::Result<String> {
    let dir = repo().join("deploy/prometheus/rules");
    let mut out = String::new();
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .with_context(|| format!("reading {}", dir.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e == "yml"))
        .collect();
    files.sort();
    // Prometheus takes one file here: concatenate the groups of each.
    out.push_str("groups:\n");
    for f in files {
        let text = std::fs::read_to_string(&f)?;
        let mut in_groups = false;
        for line in text.lines() {
            if line.trim_start().starts_with('#') || line.trim().is_empty() {
                continue;
            }
            if line == "groups:" {
                in_groups = true;
                continue;
            }
            if !in_groups {
                continue;
            }
            let indent = line.len() - line.trim_start().len();
            if line.trim_start().starts_with("for:") {
                out.push_str(&format!("{}for: 1s\n", " ".repeat(indent)));
            } else {
                out.push_str(line);
                out.push('\n');
            }
        }
    }
    Ok(out)
}

/// `(panel title, expression)` of every dashboard, with Grafana's
/// variables filled in as Grafana would (`$pool`: all pools).
fn dashboard_queries() -> anyhow::Result<Vec<(String, String)>> {
    let dir = repo().join("deploy/grafana/dashboards");
    let mut out = Vec::new();
    for entry in std::fs::read_dir(&dir)? {
        let path = entry?.path();
        if path.extension().is_none_or(|e| e != "json") {
            continue;
        }
        let dashboard: Value = serde_json::from_str(&std::fs::read_to_string(&path)?)
            .with_context(|| format!("parsing {}", path.display()))?;
        collect_panels(&dashboard["panels"], &mut out);
    }
    if out.is_empty() {
        bail!("no dashboard queries found in {}", dir.display());
    }
    Ok(out
        .into_iter()
        .map(|(title, expr)| {
            let expr = expr
                .replace("$__rate_interval", "15s")
                .replace("$pool", ".*");
            (format!("panel {title:?}"), expr)
        })
        .collect())
}

fn collect_panels(panels: &Value, out: &mut Vec<(String, String)>) {
    for panel in panels.as_array().into_iter().flatten() {
        collect_panels(&panel["panels"], out);
        for target in panel["targets"].as_array().into_iter().flatten() {
            if let Some(expr) = target["expr"].as_str() {
                let title = panel["title"].as_str().unwrap_or("?").to_string();
                out.push((title, expr.to_string()));
            }
        }
    }
}

/// The operands of a rule's top-level comparison (the whole expression
/// when it has none), number literals left out, `bool` and vector
/// matching modifiers stripped: what must return data for the rule to
/// mean anything.
fn comparison_sides(expr: &str) -> Vec<String> {
    let bytes = expr.as_bytes();
    let (mut depth, mut quote, mut cut, mut sides) = (0i32, None, 0, Vec::new());
    let mut i = 0;
    while i < bytes.len() {
        let c = bytes[i];
        match quote {
            Some(q) => {
                if c == b'\\' {
                    i += 1;
                } else if c == q {
                    quote = None;
                }
            }
            None => match c {
                b'"' | b'\'' | b'`' => quote = Some(c),
                b'(' | b'{' | b'[' => depth += 1,
                b')' | b'}' | b']' => depth -= 1,
                b'=' | b'!' | b'<' | b'>' if depth == 0 => {
                    let next = bytes.get(i + 1).copied();
                    let op_len = match (c, next) {
                        (b'=' | b'!' | b'<' | b'>', Some(b'=')) => 2,
                        (b'<' | b'>', _) => 1,
                        _ => 0,
                    };
                    if op_len > 0 {
                        sides.push(expr[cut..i].to_string());
                        i += op_len;
                        cut = i;
                        continue;
                    }
                }
                _ => {}
            },
        }
        i += 1;
    }
    sides.push(expr[cut..].to_string());
    sides
        .into_iter()
        .map(|s| strip_modifiers(s.trim()))
        .filter(|s| !s.is_empty() && s.parse::<f64>().is_err())
        .collect()
}

/// `bool on(a) group_left() x` → `x`.
fn strip_modifiers(mut s: &str) -> String {
    loop {
        let before = s;
        for word in ["bool", "on", "ignoring", "group_left", "group_right"] {
            let Some(rest) = s.strip_prefix(word) else {
                continue;
            };
            // A whole word, not the start of a metric's name.
            if rest.starts_with(|c: char| c.is_alphanumeric() || c == '_') {
                continue;
            }
            {
                let rest = rest.trim_start();
                s = match rest.strip_prefix('(') {
                    Some(inner) => inner.split_once(')').map_or("", |(_, r)| r).trim_start(),
                    None if word == "bool" || word.starts_with("group_") => rest,
                    None => continue,
                };
            }
        }
        if s == before {
            return s.to_string();
        }
    }
}

fn prometheus_config(jobs: &[(&str, Vec<(&str, std::net::SocketAddr)>)]) -> String {
    let mut out = String::from(
        "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\nrule_files: [rules.yml]\nscrape_configs:\n",
    );
    for (job, targets) in jobs {
        out.push_str(&format!("  - job_name: {job}\n    static_configs:\n"));
        for (instance, addr) in targets {
            out.push_str(&format!(
                "      - targets: ['{addr}']\n        labels: {{instance: {instance}}}\n"
            ));
        }
    }
    out
}

// === Prometheus's HTTP API ===

struct Api {
    base: String,
    client: reqwest::Client,
}

impl Api {
    async fn get(&self, path: &str, query: &[(&str, &str)]) -> anyhow::Result<Value> {
        let url = reqwest::Url::parse_with_params(&format!("{}{path}", self.base), query)?;
        let res = self.client.get(url).send().await?;
        let status = res.status();
        let body: Value = res.json().await?;
        if !status.is_success() || body["status"] != "success" {
            bail!("{path} {query:?}: {status} {body}");
        }
        Ok(body["data"].clone())
    }

    /// `(alert name, expression)` of every loaded alerting rule.
    async fn rules(&self) -> anyhow::Result<Vec<(String, String)>> {
        let data = self.get("/rules", &[("type", "alert")]).await?;
        Ok(data["groups"]
            .as_array()
            .into_iter()
            .flatten()
            .flat_map(|g| g["rules"].as_array().into_iter().flatten())
            .filter_map(|r| {
                Some((
                    r["name"].as_str()?.to_string(),
                    r["query"].as_str()?.to_string(),
                ))
            })
            .collect())
    }

    /// Does `expr` return at least one sample that is a number?
    async fn has_data(&self, expr: &str) -> anyhow::Result<bool> {
        let data = self.get("/query", &[("query", expr)]).await?;
        let number = |v: &Value| {
            v[1].as_str()
                .and_then(|s| s.parse::<f64>().ok())
                .is_some_and(|f| !f.is_nan())
        };
        Ok(match data["resultType"].as_str() {
            Some("vector") => data["result"]
                .as_array()
                .is_some_and(|r| r.iter().any(|s| number(&s["value"]))),
            Some("scalar") => number(&data["result"]),
            _ => false,
        })
    }

    /// The queries that return no data within `timeout`, each named with
    /// why (a Prometheus error or "no data").
    async fn without_data(&self, queries: &[(String, String)], timeout: Duration) -> Vec<String> {
        let start = Instant::now();
        let mut pending: Vec<(&String, &String, String)> =
            queries.iter().map(|(n, q)| (n, q, String::new())).collect();
        loop {
            let mut still = Vec::new();
            for (name, expr, _) in pending {
                match self.has_data(expr).await {
                    Ok(true) => {}
                    Ok(false) => still.push((name, expr, "no data".to_string())),
                    Err(e) => still.push((name, expr, format!("error: {e}"))),
                }
            }
            pending = still;
            if pending.is_empty() || start.elapsed() > timeout {
                return pending
                    .into_iter()
                    .map(|(name, expr, why)| format!("  {name}: {why}: {expr}"))
                    .collect();
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    }

    async fn alerts(&self) -> anyhow::Result<Value> {
        Ok(self.get("/alerts", &[]).await?["alerts"].clone())
    }

    /// Waits until the state of `name` for `backend` (None: no such alert)
    /// satisfies `want`.
    async fn wait_alert(
        &self,
        name: &str,
        backend: &str,
        want: impl Fn(Option<&str>) -> bool,
        timeout: Duration,
    ) -> anyhow::Result<()> {
        let want = &want;
        wait_until(timeout, &format!("{name} for {backend}"), || async move {
            let Ok(alerts) = self.alerts().await else {
                return false;
            };
            let state = alerts
                .as_array()
                .into_iter()
                .flatten()
                .find(|a| a["labels"]["alertname"] == name && a["labels"]["backend"] == backend)
                .and_then(|a| a["state"].as_str());
            want(state)
        })
        .await
    }
}

// === the shop ===

struct Shop {
    name: &'static str,
    addr: std::net::SocketAddr,
    _process: Process,
}

impl Shop {
    async fn start(name: &'static str, database_url: &str) -> anyhow::Result<Shop> {
        let addr = free_addr();
        let process = Process::spawn(
            name,
            "widget-shop",
            &[],
            &[
                ("DATABASE_URL", database_url.to_string()),
                ("SHOP_LISTEN", addr.to_string()),
                ("SHOP_INSTANCE", name.to_string()),
                ("SHOP_ADMIN_TOKEN", SHOP_ADMIN_TOKEN.to_string()),
            ],
        )?;
        if let Err(e) =
            wait_http_ok(&format!("http://{addr}/readyz"), Duration::from_secs(30)).await
        {
            bail!("{e}\n--- {name} log ---\n{}", process.logs());
        }
        Ok(Shop {
            name,
            addr,
            _process: process,
        })
    }

    /// Injects a fault (`error`: every answer, health checks included, is
    /// a 500), or clears it.
    async fn set_fault(&self, mode: Option<&str>) -> anyhow::Result<()> {
        let url = format!("http://{}/admin/fault", self.addr);
        let client = http_client();
        let req = match mode {
            Some(mode) => client.put(url).json(&json!({ "mode": mode })),
            None => client.delete(url),
        };
        req.bearer_auth(SHOP_ADMIN_TOKEN)
            .send()
            .await?
            .error_for_status()?;
        Ok(())
    }
}

/// Browses through the proxy until aborted, every 50 ms.
async fn browse(base: String) {
    let client = http_client();
    loop {
        for path in ["/", "/api/widgets", "/widgets/sprocket", "/no-such-page"] {
            let _ = client.get(format!("{base}{path}")).send().await;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Puts a widget in a cart and checks out, through the proxy.
async fn place_order(base: &str) -> anyhow::Result<()> {
    let client = http_client();
    let res = client
        .post(format!("{base}/api/cart/items"))
        .json(&json!({"widget": "sprocket", "quantity": 1}))
        .send()
        .await?;
    let cookie = res
        .headers()
        .get_all(reqwest::header::SET_COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .find_map(|v| v.split(';').next().filter(|kv| kv.starts_with("cart=")))
        .map(str::to_string)
        .context("the shop set no cart cookie")?;
    res.error_for_status()?;
    client
        .post(format!("{base}/api/checkout"))
        .header(reqwest::header::COOKIE, cookie)
        .header("Idempotency-Key", "alerts-test-order-1")
        .json(&json!({"name": "Ada Lovelace", "email": "ada@example.com"}))
        .send()
        .await?
        .error_for_status()?;
    Ok(())
}

fn which(name: &str) -> Option<PathBuf> {
    std::env::split_paths(&std::env::var_os("PATH")?)
        .map(|d| d.join(name))
        .find(|p| p.is_file())
}

#[test]
fn comparison_sides_are_what_must_return_data() {
    assert_eq!(
        comparison_sides(r#"max by (pool) (x{state="unhealthy"}) == 1"#),
        vec![r#"max by (pool) (x{state="unhealthy"})"#]
    );
    assert_eq!(
        comparison_sides("max(a) - on() group_right() b > 0"),
        vec!["max(a) - on() group_right() b"]
    );
    assert_eq!(
        comparison_sides(r#"a{l=~"x|y", m!="z"} >= bool on(i) group_left() b"#),
        vec![r#"a{l=~"x|y", m!="z"}"#, "b"]
    );
    assert_eq!(comparison_sides("rate(x[5m])"), vec!["rate(x[5m])"]);
    assert_eq!(
        comparison_sides("bool_x < online"),
        vec!["bool_x", "online"]
    );
}
