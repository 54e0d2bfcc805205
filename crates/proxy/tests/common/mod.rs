//! Shared pieces of the proxy's end-to-end tests: a real `tandem-proxy`
//! process started from a saved snapshot (and an unreachable control plane,
//! which is the static-stability story), snapshot builders and a load
//! generator.
#![allow(dead_code)] // each test binary uses a different subset

pub mod h2raw;
pub mod wire;

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use tandem_core::{
    AdminState, Backend, BackendAddr, BackendRole, CertName, Certificate, HostMatch, LbPolicy,
    PathPrefix, Pool, PoolConfig, PoolName, PrivateKeyPem, Revision, Route, Snapshot, Weight,
};
use tandem_testkit::backend::FakeBackend;
use tandem_testkit::certs::Issued;
use tandem_testkit::recording::RecordingBackend;
use tandem_testkit::{free_addr, http_client};

// === snapshots ===

pub fn pool_config(name: &str, policy: LbPolicy) -> PoolConfig {
    let mut c = PoolConfig::new(PoolName::new(name).expect("pool name"));
    c.policy = policy;
    c
}

pub fn backend(address: &str) -> Backend {
    Backend::new(BackendAddr::new(address).expect("backend address"))
}

pub fn weighted(address: &str, weight: u32) -> Backend {
    Backend {
        weight: Weight::new(weight).expect("weight"),
        ..backend(address)
    }
}

pub fn with_role(b: Backend, role: BackendRole) -> Backend {
    Backend { role, ..b }
}

pub fn with_state(b: Backend, admin_state: AdminState) -> Backend {
    Backend { admin_state, ..b }
}

/// A snapshot at revision 1 being built.
#[derive(Default)]
pub struct SnapshotBuilder {
    snapshot: Snapshot,
}

impl SnapshotBuilder {
    pub fn new() -> Self {
        Self {
            snapshot: Snapshot {
                revision: Revision(1),
                ..Default::default()
            },
        }
    }

    pub fn pool(mut self, config: PoolConfig, mut backends: Vec<Backend>) -> Self {
        backends.sort_by(|a, b| a.address.cmp(&b.address));
        self.snapshot.pools.insert(
            config.name.clone(),
            Pool {
                config,
                backends,
                revision: Revision(1),
            },
        );
        self
    }

    pub fn route(mut self, host: &str, prefix: &str, pool: &str) -> Self {
        self.snapshot.routes.push(Route {
            host: HostMatch::new(host).expect("host"),
            path_prefix: PathPrefix::new(prefix).expect("prefix"),
            pool: PoolName::new(pool).expect("pool"),
            redirect_https: false,
            hsts_max_age_s: 0,
        });
        self.snapshot
            .routes
            .sort_by(|a, b| (&a.host, &a.path_prefix).cmp(&(&b.host, &b.path_prefix)));
        self
    }

    pub fn build(self) -> Snapshot {
        self.snapshot
    }
}

/// One pool of `backends` behind a catch-all route.
pub fn single_pool(config: PoolConfig, backends: Vec<Backend>) -> Snapshot {
    let name = config.name.to_string();
    SnapshotBuilder::new()
        .pool(config, backends)
        .route("*", "/", &name)
        .build()
}

// === the proxy process ===

pub use tandem_testkit::proxy::ProxyProcess;

// === load ===

/// What a batch of requests saw.
#[derive(Debug, Default, Clone)]
pub struct Tally {
    pub by_backend: HashMap<String, usize>,
    pub by_status: HashMap<u16, usize>,
    /// Transport errors (no HTTP answer at all).
    pub errors: usize,
    pub error_samples: Vec<String>,
    /// (time since start, backend) of every answer.
    pub timeline: Vec<(Duration, String)>,
}

impl Tally {
    pub fn total(&self) -> usize {
        self.by_status.values().sum::<usize>() + self.errors
    }

    pub fn ok(&self) -> usize {
        *self.by_status.get(&200).unwrap_or(&0)
    }

    pub fn failures(&self) -> usize {
        self.total() - self.ok()
    }

    pub fn share(&self, backend: &str) -> f64 {
        *self.by_backend.get(backend).unwrap_or(&0) as f64 / self.total().max(1) as f64
    }

    fn merge(&mut self, other: Tally) {
        for (k, v) in other.by_backend {
            *self.by_backend.entry(k).or_default() += v;
        }
        for (k, v) in other.by_status {
            *self.by_status.entry(k).or_default() += v;
        }
        self.errors += other.errors;
        self.error_samples
            .extend(other.error_samples.into_iter().take(5));
        self.timeline.extend(other.timeline);
    }

    async fn record(&mut self, resp: reqwest::Result<reqwest::Response>, start: Instant) {
        match resp {
            Ok(r) => {
                let status = r.status().as_u16();
                let by = r
                    .headers()
                    .get("x-served-by")
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or("-")
                    .to_string();
                match r.bytes().await {
                    Ok(_) => {
                        *self.by_status.entry(status).or_default() += 1;
                        *self.by_backend.entry(by.clone()).or_default() += 1;
                        self.timeline.push((start.elapsed(), by));
                    }
                    Err(e) => self.error(format!("body: {e}")),
                }
            }
            Err(e) => self.error(format!("{e:?}")),
        }
    }

    fn error(&mut self, e: String) {
        self.errors += 1;
        if self.error_samples.len() < 5 {
            self.error_samples.push(e);
        }
    }
}

/// `n` requests one after another.
pub async fn sequential(url: &str, n: usize) -> Tally {
    let client = http_client();
    let mut t = Tally::default();
    let start = Instant::now();
    for _ in 0..n {
        t.record(client.get(url).send().await, start).await;
    }
    t
}

/// `n` requests from `concurrency` clients at once.
pub async fn concurrent(url: &str, n: usize, concurrency: usize) -> Tally {
    let mut tasks = Vec::new();
    let start = Instant::now();
    for w in 0..concurrency {
        let url = url.to_string();
        let share = n / concurrency + usize::from(w < n % concurrency);
        tasks.push(tokio::spawn(async move {
            let client = http_client();
            let mut t = Tally::default();
            for _ in 0..share {
                t.record(client.get(&url).send().await, start).await;
            }
            t
        }));
    }
    merged(tasks).await
}

/// The clients' tallies, added up (a client task that panicked adds nothing).
async fn merged(tasks: Vec<tokio::task::JoinHandle<Tally>>) -> Tally {
    let mut all = Tally::default();
    for task in tasks {
        if let Ok(t) = task.await {
            all.merge(t);
        }
    }
    all
}

/// POSTs `body` to the backend's `/echo` through `proxy`; asserts a 200
/// and returns the body that came back.
pub async fn echo(client: &reqwest::Client, proxy: &ProxyProcess, body: Vec<u8>) -> Vec<u8> {
    let r = client
        .post(proxy.url("/echo"))
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    r.bytes().await.unwrap().to_vec()
}

/// Steady load from `concurrency` clients until the returned flag is set.
pub fn steady_load(
    url: &str,
    concurrency: usize,
) -> (Arc<AtomicBool>, tokio::task::JoinHandle<Tally>) {
    let stop = Arc::new(AtomicBool::new(false));
    let url = url.to_string();
    let flag = stop.clone();
    let handle = tokio::spawn(async move {
        let start = Instant::now();
        let mut tasks = Vec::new();
        for _ in 0..concurrency {
            let (url, stop) = (url.clone(), flag.clone());
            tasks.push(tokio::spawn(async move {
                let client = http_client();
                let mut t = Tally::default();
                while !stop.load(Ordering::Relaxed) {
                    t.record(client.get(&url).send().await, start).await;
                }
                t
            }));
        }
        merged(tasks).await
    });
    (stop, handle)
}

/// A client whose connections come from `ip` (any 127.x.y.z works on
/// loopback), so ip_hash sees distinct clients.
pub fn client_from(ip: IpAddr) -> reqwest::Client {
    tandem_testkit::init_crypto();
    reqwest::Client::builder()
        .no_proxy()
        .local_address(ip)
        .timeout(Duration::from_secs(10))
        .build()
        .expect("a reqwest client")
}

pub async fn start_backends(prefix: &str, n: usize) -> Vec<FakeBackend> {
    FakeBackend::start_many(prefix, n)
        .await
        .expect("backends start")
}

/// A loopback address where nothing listens (connect is refused).
pub fn dead_address() -> String {
    free_addr().to_string()
}

/// A recording backend behind a proxy: one pool (`pool`, outlier
/// ejection off so that nothing a test does takes the backend out) on a
/// catch-all route; `tune` adjusts the pool.
pub async fn recorded_proxy(
    env: &[(&str, String)],
    tune: impl FnOnce(&mut PoolConfig),
) -> (ProxyProcess, RecordingBackend) {
    let b = RecordingBackend::start().await.expect("recording backend");
    let mut config = pool_config("pool", LbPolicy::RoundRobin);
    config.outlier.consecutive_failures = 0;
    tune(&mut config);
    let snapshot = single_pool(config, vec![backend(&b.address())]);
    let p = ProxyProcess::with_snapshot_env(&snapshot, env)
        .await
        .expect("proxy starts");
    (p, b)
}

// === TLS ===

/// A certificate named `name` as the control plane would declare it.
pub fn certificate(name: &str, issued: &Issued) -> Certificate {
    Certificate {
        name: CertName::new(name).unwrap(),
        chain_pem: issued.chain_pem.clone(),
        key_pem: PrivateKeyPem::new(issued.key_pem.clone()),
    }
}

/// A proxy serving `snapshot` with `certificates` added, and the address
/// of its TLS listener.
pub async fn tls_proxy(
    mut snapshot: Snapshot,
    certificates: impl IntoIterator<Item = Certificate>,
) -> (ProxyProcess, SocketAddr) {
    for c in certificates {
        snapshot.certificates.insert(c.name.clone(), c);
    }
    let tls = free_addr();
    let proxy =
        ProxyProcess::with_snapshot_env(&snapshot, &[("TANDEM_TLS_LISTEN", tls.to_string())])
            .await
            .expect("proxy starts");
    (proxy, tls)
}

/// curl's exit code, what it wrote (`-w` output last) and its stderr.
pub async fn curl(args: &[&str]) -> (i32, String, String) {
    let out = tokio::process::Command::new("curl")
        .args(["-sS", "--max-time", "10"])
        .args(args)
        .output()
        .await
        .expect("curl runs");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}
