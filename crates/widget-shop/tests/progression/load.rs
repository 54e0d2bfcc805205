//! Steady simulated shoppers: each one browses, fills its cart and checks
//! out at a fixed pace (one request every `pace`, whatever the answers), so
//! a broken stage gets as many requests as a healthy one and availability
//! is a fair share of requests.
//!
//! Every write may be sent twice with the effect of once, as a careful
//! client makes them: the cart line is PUT (its quantity set, not added
//! to), and a checkout carries an Idempotency-Key and is retried with the
//! same key until it is confirmed. What the shopper saw confirmed is
//! "placed"; what the database holds is "recorded".

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use tokio::task::JoinHandle;
use tokio::time::MissedTickBehavior;

#[derive(Debug, Clone)]
pub struct LoadConfig {
    pub shoppers: usize,
    /// Each shopper sends one request per `pace`.
    pub pace: Duration,
    /// A request with no answer by then counts as failed.
    pub request_timeout: Duration,
    /// Idempotency keys start with it, so a stage's orders can be found.
    pub key_prefix: String,
}

/// What the requests of one phase saw.
#[derive(Debug, Clone, Default)]
pub struct Tally {
    pub requests: u64,
    /// Transport errors, timeouts and 4xx/5xx answers.
    pub failed: u64,
    /// Answers by `X-Served-By` ("proxy" when the proxy answered itself).
    pub served_by: BTreeMap<String, u64>,
    /// Failures by kind ("503", "connection refused", "timeout", ...):
    /// how many, and the longest one took to fail.
    pub failures: BTreeMap<String, (u64, Duration)>,
    /// The longest a failed request took to fail: a fast error, or a hang?
    pub slowest_failure: Duration,
    pub orders_confirmed: u64,
    /// The first failed requests in detail: what was asked, when, and the
    /// error's whole chain (the evidence a failure is explained by).
    pub notes: Vec<String>,
    /// Failed GETs (pages and API reads): browsing that did not work.
    pub reads_failed: u64,
    /// When each write (add to cart, checkout) succeeded.
    pub write_times: Vec<Instant>,
    /// Checkouts retried after a failed attempt whose retry was answered
    /// with the order an earlier attempt had committed (the answer was
    /// lost, the Idempotency-Key found the order).
    pub reconciled: u64,
    /// Checkouts retried after a failed attempt that placed the order on
    /// the retry (the earlier attempt had not committed).
    pub placed_on_retry: u64,
    /// The longest stretch of the phase with no successful write.
    pub longest_without_writes: Duration,
}

/// Failed requests noted in detail per phase (the rest are only counted).
const MAX_NOTES: usize = 20;

impl Tally {
    pub fn availability(&self) -> f64 {
        if self.requests == 0 {
            return 0.0;
        }
        100.0 * (self.requests - self.failed) as f64 / self.requests as f64
    }

    fn failed(&mut self, kind: String, took: Duration) {
        self.failed += 1;
        let e = self.failures.entry(kind).or_default();
        e.0 += 1;
        e.1 = e.1.max(took);
        self.slowest_failure = self.slowest_failure.max(took);
    }

    pub fn merge(&mut self, other: &Tally) {
        self.requests += other.requests;
        self.failed += other.failed;
        for (k, v) in &other.served_by {
            *self.served_by.entry(k.clone()).or_default() += v;
        }
        for (k, (n, slowest)) in &other.failures {
            let e = self.failures.entry(k.clone()).or_default();
            e.0 += n;
            e.1 = e.1.max(*slowest);
        }
        self.slowest_failure = self.slowest_failure.max(other.slowest_failure);
        self.orders_confirmed += other.orders_confirmed;
        for n in &other.notes {
            if self.notes.len() < MAX_NOTES {
                self.notes.push(n.clone());
            }
        }
        self.reads_failed += other.reads_failed;
        self.write_times.extend(&other.write_times);
        self.reconciled += other.reconciled;
        self.placed_on_retry += other.placed_on_retry;
        self.longest_without_writes = self
            .longest_without_writes
            .max(other.longest_without_writes);
    }

    /// Sets `longest_without_writes` from the write times, counting the
    /// phase's start and end as edges.
    fn measure_write_gaps(&mut self, start: Instant, end: Instant) {
        let mut times: Vec<Instant> = self
            .write_times
            .iter()
            .copied()
            .filter(|t| (start..=end).contains(t))
            .collect();
        times.push(start);
        times.push(end);
        times.sort();
        self.longest_without_writes = times
            .windows(2)
            .map(|w| w[1] - w[0])
            .max()
            .unwrap_or_default();
    }
}

/// What all shoppers saw, by phase.
#[derive(Debug, Default)]
pub struct LoadReport {
    pub phases: Vec<Tally>,
    /// Order codes the shoppers saw confirmed.
    pub placed: Vec<String>,
}

impl LoadReport {
    pub fn total(&self) -> Tally {
        let mut t = Tally::default();
        for p in &self.phases {
            t.merge(p);
        }
        t
    }
}

/// Shoppers running until [`Load::stop`].
pub struct Load {
    phase: Arc<AtomicUsize>,
    /// When each phase began (the first when the shoppers started).
    phase_starts: Arc<std::sync::Mutex<Vec<Instant>>>,
    stop: Arc<AtomicBool>,
    shoppers: Vec<JoinHandle<ShopperReport>>,
}

#[derive(Debug, Default)]
struct ShopperReport {
    phases: Vec<Tally>,
    placed: Vec<String>,
}

impl Load {
    /// Starts the shoppers against `targets` (base URLs: the shop itself or
    /// proxies). Shopper `i` prefers `targets[i % n]` and moves to the next
    /// one when a connection is refused, as a client that knows every
    /// proxy address does.
    pub async fn start(targets: Vec<String>, config: LoadConfig) -> anyhow::Result<Load> {
        tandem_testkit::init_crypto();
        let slugs = widget_slugs(&client(config.request_timeout)?, &targets[0]).await?;

        let phase = Arc::new(AtomicUsize::new(0));
        let phase_starts = Arc::new(std::sync::Mutex::new(vec![Instant::now()]));
        let stop = Arc::new(AtomicBool::new(false));
        let targets = Arc::new(targets);
        let slugs = Arc::new(slugs);
        let mut shoppers = Vec::new();
        for id in 0..config.shoppers {
            let mut s = Shopper {
                id,
                client: client(config.request_timeout)?,
                targets: targets.clone(),
                preferred: id % targets.len(),
                cart: None,
                slugs: slugs.clone(),
                phase: phase.clone(),
                phase_starts: phase_starts.clone(),
                stop: stop.clone(),
                config: config.clone(),
                report: ShopperReport::default(),
                ticker: tokio::time::interval(config.pace),
            };
            s.ticker.set_missed_tick_behavior(MissedTickBehavior::Delay);
            shoppers.push(tokio::spawn(async move {
                s.run().await;
                s.report
            }));
        }
        Ok(Load {
            phase,
            phase_starts,
            stop,
            shoppers,
        })
    }

    /// Requests answered from now on count in the next phase (call it just
    /// before breaking something: a request in flight when it breaks
    /// counts in the phase of the break).
    pub fn next_phase(&self) {
        self.phase_starts.lock().unwrap().push(Instant::now());
        self.phase.fetch_add(1, Ordering::SeqCst);
    }

    /// Stops the shoppers (requests in flight finish) and adds up.
    pub async fn stop(self) -> anyhow::Result<LoadReport> {
        let mut starts = self
            .phase_starts
            .lock()
            .map_err(|_| anyhow::anyhow!("phase clock poisoned"))?
            .clone();
        starts.push(Instant::now());
        self.stop.store(true, Ordering::SeqCst);
        let phases = self.phase.load(Ordering::SeqCst) + 1;
        let mut report = LoadReport {
            phases: vec![Tally::default(); phases],
            placed: Vec::new(),
        };
        for s in self.shoppers {
            let r = s.await?;
            for (i, t) in r.phases.iter().enumerate() {
                if let Some(p) = report.phases.get_mut(i) {
                    p.merge(t);
                }
            }
            report.placed.extend(r.placed);
        }
        for (i, t) in report.phases.iter_mut().enumerate() {
            if let (Some(start), Some(end)) = (starts.get(i), starts.get(i + 1)) {
                t.measure_write_gaps(*start, *end);
            }
        }
        Ok(report)
    }
}

/// The slugs of the widgets the shop at `base` lists (one at least).
pub async fn widget_slugs(client: &reqwest::Client, base: &str) -> anyhow::Result<Vec<String>> {
    let list: Value = client
        .get(format!("{base}/api/widgets"))
        .send()
        .await?
        .error_for_status()?
        .json()
        .await?;
    let slugs: Vec<String> = list["widgets"]
        .as_array()
        .map(|ws| {
            ws.iter()
                .filter_map(|w| w["slug"].as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default();
    anyhow::ensure!(!slugs.is_empty(), "the shop lists no widgets: {list}");
    Ok(slugs)
}

/// A shopper's request: with its cart's cookie, a JSON body and an
/// `Idempotency-Key` when it has them.
pub fn shopper_request(
    client: &reqwest::Client,
    method: Method,
    url: String,
    cart: Option<&str>,
    body: Option<&Value>,
    key: Option<&str>,
) -> reqwest::RequestBuilder {
    let mut req = client.request(method, url);
    if let Some(c) = cart {
        req = req.header("cookie", format!("cart={c}"));
    }
    if let Some(b) = body {
        req = req.json(b);
    }
    if let Some(k) = key {
        req = req.header("idempotency-key", k);
    }
    req
}

/// The cart an answer's `Set-Cookie` hands the shopper, if any.
pub fn cart_cookie(res: &reqwest::Response) -> Option<String> {
    res.headers()
        .get_all("set-cookie")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .filter_map(|v| v.split(';').next())
        .find_map(|kv| kv.strip_prefix("cart="))
        .map(str::to_string)
}

fn client(timeout: Duration) -> anyhow::Result<reqwest::Client> {
    Ok(reqwest::Client::builder()
        .no_proxy()
        .redirect(reqwest::redirect::Policy::none())
        .timeout(timeout)
        .connect_timeout(Duration::from_secs(2))
        .build()?)
}

struct Shopper {
    id: usize,
    client: reqwest::Client,
    targets: Arc<Vec<String>>,
    preferred: usize,
    cart: Option<String>,
    slugs: Arc<Vec<String>>,
    phase: Arc<AtomicUsize>,
    phase_starts: Arc<std::sync::Mutex<Vec<Instant>>>,
    stop: Arc<AtomicBool>,
    config: LoadConfig,
    report: ShopperReport,
    ticker: tokio::time::Interval,
}

/// One answered request.
struct Answer {
    status: StatusCode,
    body: String,
    /// `Idempotent-Replayed: true`: an earlier attempt's order.
    replayed: bool,
}

impl Shopper {
    fn stopped(&self) -> bool {
        self.stop.load(Ordering::SeqCst)
    }

    async fn run(&mut self) {
        let mut visit = 0u64;
        while !self.stopped() {
            visit += 1;
            self.visit(visit).await;
        }
    }

    /// Catalogue, a widget, add it, the cart, checkout, the order page.
    async fn visit(&mut self, visit: u64) {
        let slug = {
            let i = (self.id * 7 + visit as usize * 5) % self.slugs.len();
            self.slugs[i].clone()
        };
        if self.send(Method::GET, "/", None, None).await.is_none() {
            return;
        }
        if self
            .send(Method::GET, &format!("/widgets/{slug}"), None, None)
            .await
            .is_none()
        {
            return;
        }
        // PUT the line (idempotent: a proxy may send it again when the
        // server it reached died before answering; a POST add may not be).
        let put = json!({"quantity": 1});
        if self
            .send(
                Method::PUT,
                &format!("/api/cart/items/{slug}"),
                Some(put),
                None,
            )
            .await
            .is_none()
        {
            return;
        }
        if self.send(Method::GET, "/cart", None, None).await.is_none() {
            return;
        }
        let key = format!("{}-{}-{}", self.config.key_prefix, self.id, visit);
        let customer =
            json!({"name": format!("Shopper {}", self.id), "email": "shopper@example.com"});
        // Retry with the same key until confirmed: the key makes it safe.
        let mut attempts = 0;
        while !self.stopped() {
            attempts += 1;
            let answer = self
                .send_raw(
                    Method::POST,
                    "/api/checkout",
                    Some(customer.clone()),
                    Some(&key),
                )
                .await;
            match answer {
                Some(a) if a.status.is_success() => {
                    if attempts > 1 {
                        let phase = self.phase.load(Ordering::SeqCst);
                        let t = self.tally_at(phase);
                        if a.replayed {
                            t.reconciled += 1;
                        } else {
                            t.placed_on_retry += 1;
                        }
                    }
                    let order: Value = serde_json::from_str(&a.body).unwrap_or_default();
                    if let Some(code) = order["code"].as_str() {
                        self.confirmed(code.to_string());
                        let _ = self
                            .send(Method::GET, &format!("/orders/{code}"), None, None)
                            .await;
                    }
                    return;
                }
                // The shop refused it for a reason a retry will not change.
                Some(a) if a.status.is_client_error() => return,
                _ => continue,
            }
        }
    }

    fn confirmed(&mut self, code: String) {
        let phase = self.phase.load(Ordering::SeqCst);
        self.tally_at(phase).orders_confirmed += 1;
        self.report.placed.push(code);
    }

    fn tally_at(&mut self, phase: usize) -> &mut Tally {
        if self.report.phases.len() <= phase {
            self.report.phases.resize(phase + 1, Tally::default());
        }
        &mut self.report.phases[phase]
    }

    /// Sends and keeps the answer only if it is a success.
    async fn send(
        &mut self,
        method: Method,
        path: &str,
        body: Option<Value>,
        key: Option<&str>,
    ) -> Option<Answer> {
        self.send_raw(method, path, body, key)
            .await
            .filter(|a| a.status.is_success())
    }

    /// One request at the shopper's pace, counted in the phase it ended in:
    /// a request still in flight when the next phase's failure is injected
    /// met that failure, so it counts there (counting it where it started
    /// put the kill's casualties in "steady").
    async fn send_raw(
        &mut self,
        method: Method,
        path: &str,
        body: Option<Value>,
        key: Option<&str>,
    ) -> Option<Answer> {
        self.ticker.tick().await;
        let started_in = self.phase.load(Ordering::SeqCst);
        let start = Instant::now();
        let n = self.targets.len();
        let first = self.preferred;
        let mut result = None;
        for k in 0..n {
            let target = &self.targets[(first + k) % n];
            let req = shopper_request(
                &self.client,
                method.clone(),
                format!("{target}{path}"),
                self.cart.as_deref(),
                body.as_ref(),
                key,
            );
            match req.send().await {
                // Nothing was sent: the next proxy, and stay with it.
                Err(e) if e.is_connect() && k + 1 < n => {
                    self.preferred = (first + k + 1) % n;
                }
                r => {
                    result = Some(r);
                    break;
                }
            }
        }
        let outcome = match result {
            Some(Ok(res)) => {
                let status = res.status();
                let replayed = res
                    .headers()
                    .get("idempotent-replayed")
                    .is_some_and(|v| v == "true");
                let by = res
                    .headers()
                    .get("x-served-by")
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or("proxy")
                    .to_string();
                if let Some(cart) = cart_cookie(&res) {
                    self.cart = Some(cart);
                }
                match res.text().await {
                    Ok(body) => Ok((status, by, body, replayed)),
                    Err(e) => Err((classify(&e), chain(&e))),
                }
            }
            Some(Err(e)) => Err((classify(&e), chain(&e))),
            None => Err(("no target".to_string(), String::new())),
        };
        let took = start.elapsed();
        let phase = self.phase.load(Ordering::SeqCst);
        let note = |kind: &str, detail: &str| {
            let starts = self.phase_starts.lock().unwrap();
            let at = |p: usize| {
                let base = starts.get(p).copied().unwrap_or(start);
                if start >= base {
                    format!("+{} ms", (start - base).as_millis())
                } else {
                    format!("-{} ms", (base - start).as_millis())
                }
            };
            format!(
                "shopper {} {method} {path}: {kind} after {} ms, sent at {} into phase {started_in} \
                 ({} relative to phase {phase}'s start){}",
                self.id,
                took.as_millis(),
                at(started_in),
                at(phase),
                if detail.is_empty() {
                    String::new()
                } else {
                    format!(": {detail}")
                },
            )
        };
        let note = match &outcome {
            Ok((status, _, body, _)) if status.is_client_error() || status.is_server_error() => {
                Some(note(status.as_str(), body.trim()))
            }
            Ok(_) => None,
            Err((kind, detail)) => Some(note(kind, detail)),
        };
        let read = method == Method::GET;
        let phase_tally = self.tally_at(phase);
        // A failure sent before the phase's break and failing after it is
        // always noted: it is the one a phase boundary could misplace.
        let straddled = started_in != phase;
        if let Some(n) = note
            && (straddled || phase_tally.notes.len() < MAX_NOTES / 4)
            && phase_tally.notes.len() < MAX_NOTES
        {
            phase_tally.notes.push(n);
        }
        phase_tally.requests += 1;
        match outcome {
            Ok((status, by, body, replayed)) => {
                *phase_tally.served_by.entry(by).or_default() += 1;
                if status.is_client_error() || status.is_server_error() {
                    phase_tally.failed(status.as_u16().to_string(), took);
                    phase_tally.reads_failed += u64::from(read);
                } else if !read {
                    phase_tally.write_times.push(Instant::now());
                }
                Some(Answer {
                    status,
                    body,
                    replayed,
                })
            }
            Err((kind, _)) => {
                phase_tally.failed(kind, took);
                phase_tally.reads_failed += u64::from(read);
                None
            }
        }
    }
}

/// The error and every source under it: hyper's "connection closed before
/// message completed" and the OS's "connection reset" read differently.
pub fn chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut parts = vec![e.to_string()];
    let mut source = e.source();
    while let Some(s) = source {
        parts.push(s.to_string());
        source = s.source();
    }
    parts.join(": ")
}

fn classify(e: &reqwest::Error) -> String {
    if e.is_timeout() {
        "timeout".into()
    } else if e.is_connect() {
        "connection refused".into()
    } else {
        "connection reset".into()
    }
}
