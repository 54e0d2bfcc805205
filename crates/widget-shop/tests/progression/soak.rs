//! The soak: stage 3's topology (two proxies, three shop servers, the
//! database on its own host) under mixed shopper traffic at a high rate,
//! nothing broken, for a million requests (or a minute, in the suite).
//! Every request must succeed: in a steady state nothing is broken, so
//! every failure is a bug.
//!
//! The races of kept-alive connections live at the idle timeouts: a
//! connection closed by one side while the other sends on it. So besides
//! busy shoppers (one request after the other), "idle" shoppers wait
//! between their requests for gaps swept across the edges: their own
//! client's pool timeout, the proxies' idle timeout for clients
//! ([`PROXY_IDLE`]) and the proxies' idle window for shop connections (4 s
//! by default). The shop itself never closes an idle connection (axum
//! sets no timer, so hyper's header timeout is off).
//!
//! Failures are counted by kind and by the hop they arose on:
//! client↔proxy (no answer: reset, closed, timeout), proxy↔shop (the
//! proxy's own 5xx), shop↔database (the shop's own 5xx) and the shop's 4xx.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use reqwest::Method;
use serde_json::{Value, json};
use tandem_testkit::proxy::ProxyProcess;

use super::common::Shop;
use super::common::tandem::Tandem;
use super::load::{cart_cookie, shopper_request, widget_slugs};
use super::stages::{ShopDb, restock};

/// The proxies' idle timeout for client connections (their header
/// timeout), short so the soak meets that edge often.
pub const PROXY_IDLE: Duration = Duration::from_secs(3);
/// The proxies' default idle window for shop connections.
const UPSTREAM_IDLE: Duration = Duration::from_secs(4);
/// The shoppers' own pool timeout: a client that knows the server's idle
/// timeout stops reusing a connection before it (a margin of a second).
const CLIENT_IDLE: Duration = Duration::from_secs(2);

#[derive(Debug, Clone)]
pub struct SoakConfig {
    /// Stop after this many requests...
    pub requests: u64,
    /// ...or after this long, whichever comes first.
    pub duration: Duration,
    /// Shoppers sending one request after the other.
    pub busy: usize,
    /// Shoppers waiting a swept gap between requests.
    pub idle: usize,
}

/// One failure kind on one hop.
type Key = (&'static str, String);

#[derive(Debug, Default)]
pub struct SoakReport {
    pub requests: u64,
    pub elapsed: Duration,
    /// Failures by (hop, kind): how many.
    pub failures: BTreeMap<Key, u64>,
    /// The first failures in detail.
    pub notes: Vec<String>,
    /// Requests sent after each idle gap, by gap range.
    pub gaps: BTreeMap<String, u64>,
    /// The proxies' counters at the end: retries and fresh-connection
    /// resends (races met and absorbed).
    pub proxy_counters: BTreeMap<String, u64>,
}

impl SoakReport {
    pub fn failed(&self) -> u64 {
        self.failures.values().sum()
    }

    pub fn table(&self, config: &SoakConfig) -> String {
        let per_million = |n: u64| n as f64 * 1e6 / self.requests.max(1) as f64;
        let mut out = String::new();
        let _ = writeln!(
            out,
            "soak: {} requests in {:.0} s ({:.0} requests/s), {} busy and {} idle shoppers, \
             proxies' client idle timeout {} s, their shop window {} s, shoppers' pool timeout {} s",
            self.requests,
            self.elapsed.as_secs_f64(),
            self.requests as f64 / self.elapsed.as_secs_f64().max(0.001),
            config.busy,
            config.idle,
            PROXY_IDLE.as_secs(),
            UPSTREAM_IDLE.as_secs(),
            CLIENT_IDLE.as_secs(),
        );
        let _ = writeln!(out);
        let _ = writeln!(out, "| hop | kind | failed | per million |");
        let _ = writeln!(out, "|---|---|---:|---:|");
        for hop in HOPS {
            let mine: Vec<_> = self
                .failures
                .iter()
                .filter(|((h, _), _)| *h == hop)
                .collect();
            if mine.is_empty() {
                let _ = writeln!(out, "| {hop} | – | 0 | 0 |");
            }
            for ((_, kind), n) in mine {
                let _ = writeln!(out, "| {hop} | {kind} | {n} | {:.1} |", per_million(*n));
            }
        }
        let _ = writeln!(
            out,
            "| all | all | {} | {:.1} |",
            self.failed(),
            per_million(self.failed())
        );
        let _ = writeln!(out);
        let gaps: Vec<String> = self.gaps.iter().map(|(g, n)| format!("{g}: {n}")).collect();
        let _ = writeln!(
            out,
            "requests after an idle gap, by gap: {}",
            gaps.join(", ")
        );
        let counters: Vec<String> = self
            .proxy_counters
            .iter()
            .map(|(k, v)| format!("{k} {v}"))
            .collect();
        let _ = writeln!(out, "proxies (summed): {}", counters.join(", "));
        out
    }
}

const HOPS: [&str; 4] = ["client↔proxy", "proxy↔shop", "shop↔database", "shop (4xx)"];

/// Runs the soak and adds up.
pub async fn run(config: &SoakConfig) -> anyhow::Result<SoakReport> {
    let db = ShopDb::start().await?;
    let shops = [
        Shop::start("shop-1", &db.url).await?,
        Shop::start("shop-2", &db.url).await?,
        Shop::start("shop-3", &db.url).await?,
    ];
    restock(&db.url).await?;
    let tandem = Tandem::start().await?;
    tandem
        .configure_shop_pool(&[&shops[0], &shops[1], &shops[2]])
        .await?;
    let idle_ms = PROXY_IDLE.as_millis().to_string();
    let env = [("TANDEM_HEADER_TIMEOUT_MS", idle_ms.as_str())];
    let proxies = vec![
        tandem.proxy_with("proxy-1", &env).await?,
        tandem.proxy_with("proxy-2", &env).await?,
    ];
    let targets: Arc<Vec<String>> = Arc::new(proxies.iter().map(|p| p.url("")).collect());
    let slugs = Arc::new(widget_slugs(&client()?, &targets[0]).await?);

    let sent = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let start = Instant::now();
    let mut tasks = Vec::new();
    for id in 0..config.busy + config.idle {
        let mut s = SoakShopper {
            id,
            client: client()?,
            target: targets[id % targets.len()].clone(),
            slugs: slugs.clone(),
            cart: None,
            idle: id >= config.busy,
            sent: sent.clone(),
            stop: stop.clone(),
            limit: config.requests,
            report: SoakReport::default(),
            gap_step: id as u64 * 37,
        };
        tasks.push(tokio::spawn(async move {
            s.run().await;
            s.report
        }));
    }
    let deadline = start + config.duration;
    while Instant::now() < deadline && sent.load(Ordering::Relaxed) < config.requests {
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    stop.store(true, Ordering::SeqCst);
    let mut report = SoakReport::default();
    for t in tasks {
        let r = t.await?;
        report.requests += r.requests;
        for (k, n) in r.failures {
            *report.failures.entry(k).or_default() += n;
        }
        for (k, n) in r.gaps {
            *report.gaps.entry(k).or_default() += n;
        }
        report
            .notes
            .extend(r.notes.into_iter().take(20 - report.notes.len().min(20)));
    }
    report.elapsed = start.elapsed();
    report.proxy_counters = proxy_counters(&proxies).await;
    drop(proxies);
    drop(shops);
    Ok(report)
}

fn client() -> anyhow::Result<reqwest::Client> {
    tandem_testkit::init_crypto();
    Ok(reqwest::Client::builder()
        .no_proxy()
        .redirect(reqwest::redirect::Policy::none())
        .timeout(Duration::from_secs(30))
        .connect_timeout(Duration::from_secs(5))
        .pool_idle_timeout(CLIENT_IDLE)
        .build()?)
}

/// The proxies' retry and resend counters, summed over both.
async fn proxy_counters(proxies: &[ProxyProcess]) -> BTreeMap<String, u64> {
    let mut out = BTreeMap::new();
    for p in proxies {
        let Ok((_, text)) = p.admin_get("/metrics").await else {
            continue;
        };
        for line in text.lines() {
            for name in [
                "tandem_proxy_retries_total",
                "tandem_proxy_upstream_resends_total",
                "tandem_proxy_upstream_failures_total",
            ] {
                if line.starts_with(name)
                    && let Some(v) = line.rsplit(' ').next().and_then(|v| v.parse::<f64>().ok())
                {
                    *out.entry(name.to_string()).or_default() += v as u64;
                }
            }
        }
    }
    out
}

struct SoakShopper {
    id: usize,
    client: reqwest::Client,
    target: String,
    slugs: Arc<Vec<String>>,
    cart: Option<String>,
    /// Waits a swept gap before each request.
    idle: bool,
    sent: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
    limit: u64,
    report: SoakReport,
    gap_step: u64,
}

impl SoakShopper {
    fn stopped(&self) -> bool {
        self.stop.load(Ordering::Relaxed) || self.sent.load(Ordering::Relaxed) >= self.limit
    }

    async fn run(&mut self) {
        let mut visit = 0u64;
        while !self.stopped() {
            visit += 1;
            self.visit(visit).await;
        }
    }

    /// The next gap: swept from 1.5 s to 4.5 s in 10 ms steps, across the
    /// shoppers' pool timeout (2 s), the proxies' client idle timeout (3 s)
    /// and their shop window (4 s).
    fn gap(&mut self) -> Duration {
        self.gap_step += 1;
        Duration::from_millis(1_500 + (self.gap_step * 10) % 3_000)
    }

    /// Catalogue, a widget, add it, the cart; every fourth visit checks
    /// out and reads the order.
    async fn visit(&mut self, visit: u64) {
        let slug = self.slugs[(self.id * 7 + visit as usize * 5) % self.slugs.len()].clone();
        let _ = self.send(Method::GET, "/", None, None).await;
        let _ = self
            .send(Method::GET, &format!("/widgets/{slug}"), None, None)
            .await;
        let add = json!({"widget": slug, "quantity": 1});
        let _ = self
            .send(Method::POST, "/api/cart/items", Some(add), None)
            .await;
        let _ = self.send(Method::GET, "/cart", None, None).await;
        if visit.is_multiple_of(4) {
            let key = format!("soak-{}-{visit}", self.id);
            let customer =
                json!({"name": format!("Soaker {}", self.id), "email": "soak@example.com"});
            let answer = self
                .send(Method::POST, "/api/checkout", Some(customer), Some(&key))
                .await;
            if let Some(code) = answer.and_then(|b| {
                serde_json::from_str::<Value>(&b).ok()?["code"]
                    .as_str()
                    .map(str::to_string)
            }) {
                let _ = self
                    .send(Method::GET, &format!("/orders/{code}"), None, None)
                    .await;
            }
        }
    }

    /// One request; the body of a success.
    async fn send(
        &mut self,
        method: Method,
        path: &str,
        body: Option<Value>,
        key: Option<&str>,
    ) -> Option<String> {
        if self.stopped() {
            return None;
        }
        let mut gap = None;
        if self.idle {
            let g = self.gap();
            tokio::time::sleep(g).await;
            gap = Some(g);
        }
        self.sent.fetch_add(1, Ordering::Relaxed);
        let req = shopper_request(
            &self.client,
            method.clone(),
            format!("{}{path}", self.target),
            self.cart.as_deref(),
            body.as_ref(),
            key,
        );
        let start = Instant::now();
        let outcome = match req.send().await {
            Ok(res) => {
                let status = res.status();
                let by_shop = res.headers().contains_key("x-served-by");
                if let Some(cart) = cart_cookie(&res) {
                    self.cart = Some(cart);
                }
                match res.text().await {
                    Ok(text) => Ok((status, by_shop, text)),
                    Err(e) => Err(e),
                }
            }
            Err(e) => Err(e),
        };
        self.report.requests += 1;
        if let Some(g) = gap {
            let bucket = (g.as_millis() / 500) * 500;
            *self
                .report
                .gaps
                .entry(format!(
                    "{:.1}–{:.1} s",
                    bucket as f64 / 1e3,
                    (bucket + 500) as f64 / 1e3
                ))
                .or_default() += 1;
        }
        let (hop, kind, detail) = match outcome {
            Ok((status, _, text)) if status.is_success() => return Some(text),
            Ok((status, by_shop, text)) => {
                let hop = match (by_shop, status) {
                    (_, s) if s.is_client_error() => "shop (4xx)",
                    (true, _) => "shop↔database",
                    (false, _) => "proxy↔shop",
                };
                (hop, status.as_str().to_string(), text)
            }
            Err(e) => ("client↔proxy", kind_of(&e), super::load::chain(&e)),
        };
        *self.report.failures.entry((hop, kind.clone())).or_default() += 1;
        if self.report.notes.len() < 20 {
            self.report.notes.push(format!(
                "shopper {} {method} {path} after {} gap: {hop} {kind} after {} ms: {}",
                self.id,
                gap.map(|g| format!("{} ms", g.as_millis()))
                    .unwrap_or_else(|| "no".into()),
                start.elapsed().as_millis(),
                detail.trim(),
            ));
        }
        None
    }
}

fn kind_of(e: &reqwest::Error) -> String {
    if e.is_timeout() {
        "timeout".into()
    } else if e.is_connect() {
        "connection refused".into()
    } else if super::load::chain(e).contains("closed before message completed") {
        "connection closed before the answer".into()
    } else {
        "connection reset".into()
    }
}
