//! A pool served through a proxy under steady load, for tests that change
//! the control plane underneath it (a leader killed, members added or
//! removed), and waits on the health the control plane decided.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use tandem_proto::v1;
use tokio::task::JoinHandle;

use crate::backend::FakeBackend;
use crate::proxy::ProxyProcess;
use crate::{
    AuthedClient, ControlCluster, NODE_TOKEN, Process, declare_pool, free_addr, http_client,
    wait_http_ok, wait_until,
};

/// Waits until the backends' health `client` reads (GetHealth) is as
/// `want` says; `what` names it in the timeout's error.
pub async fn wait_health(
    client: &AuthedClient,
    timeout: Duration,
    what: &str,
    want: impl Fn(&[v1::BackendHealth]) -> bool,
) -> anyhow::Result<()> {
    let read = |mut c: AuthedClient| async move { c.get_health(v1::GetHealthRequest {}).await };
    wait_reply(client, timeout, what, read, |h| want(&h.backends)).await
}

/// Waits until what `read` gets from a clone of `client` is as `want`
/// says (an error is not).
async fn wait_reply<T, Fut>(
    client: &AuthedClient,
    timeout: Duration,
    what: &str,
    read: impl Fn(AuthedClient) -> Fut,
    want: impl Fn(T) -> bool,
) -> anyhow::Result<()>
where
    Fut: Future<Output = Result<tonic::Response<T>, tonic::Status>>,
{
    let (read, want) = (&read, &want);
    wait_until(timeout, what, || async move {
        read(client.clone())
            .await
            .is_ok_and(|r| want(r.into_inner()))
    })
    .await
}

/// A pool named `name` checked by `check`, with defaults otherwise.
pub fn checked_pool(name: &str, check: v1::HealthCheck) -> v1::Pool {
    v1::Pool {
        name: name.into(),
        health_check: Some(check),
        ..Default::default()
    }
}

/// A health check of `GET /healthz` every 500 ms with `timeout_ms`, up
/// after 2 passes and down after 2 failures: quick enough to wait for.
pub fn quick_health_check(timeout_ms: u32) -> v1::HealthCheck {
    v1::HealthCheck {
        path: Some("/healthz".into()),
        interval_ms: Some(500),
        timeout_ms: Some(timeout_ms),
        rise: Some(2),
        fall: Some(2),
        ..Default::default()
    }
}

/// Makes `backend` fail its health check and waits up to 10 s until the
/// replica `health` reads from has decided it unhealthy.
pub async fn fail_until_unhealthy(
    backend: &FakeBackend,
    health: &AuthedClient,
) -> anyhow::Result<()> {
    backend.set_healthy(false).await?;
    wait_health(
        health,
        Duration::from_secs(10),
        "the sick backend decided unhealthy",
        unhealthy(backend.address()),
    )
    .await
}

/// For [`wait_health`]: exactly `n` backends, all healthy.
pub fn all_healthy(n: usize) -> impl Fn(&[v1::BackendHealth]) -> bool {
    move |backends| {
        backends.len() == n
            && backends
                .iter()
                .all(|b| b.state == v1::HealthState::Healthy as i32)
    }
}

/// For [`wait_health`]: the backend at `address` is unhealthy.
pub fn unhealthy(address: String) -> impl Fn(&[v1::BackendHealth]) -> bool {
    move |backends| {
        backends
            .iter()
            .any(|b| b.address == address && b.state == v1::HealthState::Unhealthy as i32)
    }
}

/// `n` fake backends (`web-1`, ...) declared through `admin` as pool
/// `web`, with no health check, behind a catch-all route; and their
/// addresses.
pub async fn web_pool(
    admin: &mut AuthedClient,
    n: usize,
) -> anyhow::Result<(Vec<FakeBackend>, Vec<String>)> {
    let backends = FakeBackend::start_many("web", n).await?;
    let addresses: Vec<String> = backends.iter().map(|b| b.address()).collect();
    let pool = v1::Pool {
        name: "web".into(),
        ..Default::default()
    };
    declare_pool(admin, pool, &addresses).await?;
    Ok((backends, addresses))
}

/// Pool "web" of three fake backends served by a proxy, with an agent
/// deciding their health, both following every replica of a cluster.
/// Killed on drop.
pub struct ServedPool {
    pub backends: Vec<FakeBackend>,
    pub proxy: ProxyProcess,
    /// The proxy's URL for `/`.
    pub url: String,
    _agent: Process,
}

impl ServedPool {
    /// Declares the pool through the first replica (health checks every
    /// 500 ms, 250 ms timeout, rise and fall 2), starts `agent-1` and a
    /// proxy with one worker, and returns once the proxy answers and the
    /// first replica has every backend healthy.
    pub async fn start(cluster: &ControlCluster) -> anyhow::Result<ServedPool> {
        let backends = FakeBackend::start_many("web", 3).await?;
        let mut admin = cluster.replicas[0].admin_client().await?;
        let pool = v1::Pool {
            name: "web".into(),
            health_check: Some(quick_health_check(250)),
            ..Default::default()
        };
        let addresses: Vec<String> = backends.iter().map(|b| b.address()).collect();
        declare_pool(&mut admin, pool, &addresses).await?;

        let endpoints = cluster.endpoints();
        let agent = Process::spawn(
            "agent-1",
            "tandem-agent",
            &[],
            &[
                ("TANDEM_CONTROL", endpoints.clone()),
                ("TANDEM_TOKEN", NODE_TOKEN.into()),
                ("TANDEM_NODE_ID", "agent-1".into()),
                ("TANDEM_ADMIN_LISTEN", free_addr().to_string()),
            ],
        )?;
        let proxy = ProxyProcess::start(
            tempfile::tempdir()?,
            &endpoints,
            &[
                ("TANDEM_TOKEN", NODE_TOKEN.into()),
                ("TANDEM_WORKERS", "1".into()),
            ],
        )?;
        proxy.wait_ready().await?;
        let url = proxy.url("/");
        wait_http_ok(&url, Duration::from_secs(20)).await?;
        // Every backend healthy as decided through raft.
        let health = cluster.replicas[0].node_client().await?;
        wait_health(
            &health,
            Duration::from_secs(15),
            "all backends healthy",
            all_healthy(backends.len()),
        )
        .await?;
        Ok(ServedPool {
            backends,
            proxy,
            url,
            _agent: agent,
        })
    }
}

/// Clients sending GET requests to one URL back to back until stopped.
pub struct SteadyLoad {
    stop: Arc<AtomicBool>,
    ok: Arc<AtomicU64>,
    failed: Arc<AtomicU64>,
    clients: Vec<JoinHandle<Vec<String>>>,
}

/// What a [`SteadyLoad`] saw.
#[derive(Debug)]
pub struct LoadOutcome {
    /// Answers with a 2xx status.
    pub ok: u64,
    /// Errors and other statuses.
    pub failed: u64,
    /// Each failure, as debug text.
    pub errors: Vec<String>,
}

impl SteadyLoad {
    /// Starts `clients` clients on `url`.
    pub fn start(url: &str, clients: usize) -> SteadyLoad {
        let stop = Arc::new(AtomicBool::new(false));
        let (ok, failed) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
        let clients = (0..clients)
            .map(|_| {
                let (stop, ok, failed) = (stop.clone(), ok.clone(), failed.clone());
                let url = url.to_string();
                tokio::spawn(async move {
                    let client = http_client();
                    let mut errors = Vec::new();
                    while !stop.load(Ordering::Relaxed) {
                        match client.get(&url).send().await {
                            Ok(r) if r.status().is_success() => {
                                ok.fetch_add(1, Ordering::Relaxed);
                            }
                            other => {
                                failed.fetch_add(1, Ordering::Relaxed);
                                errors.push(format!("{other:?}"));
                            }
                        }
                    }
                    errors
                })
            })
            .collect();
        SteadyLoad {
            stop,
            ok,
            failed,
            clients,
        }
    }

    /// Stops the clients and says what they saw.
    pub async fn stop(self) -> anyhow::Result<LoadOutcome> {
        self.stop.store(true, Ordering::Relaxed);
        let mut errors = Vec::new();
        for c in self.clients {
            errors.extend(c.await?);
        }
        Ok(LoadOutcome {
            ok: self.ok.load(Ordering::Relaxed),
            failed: self.failed.load(Ordering::Relaxed),
            errors,
        })
    }
}

impl std::fmt::Display for LoadOutcome {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} requests, {} failed", self.ok, self.failed)
    }
}

impl LoadOutcome {
    /// Panics unless more than `min_ok` requests succeeded (the load ran)
    /// and none failed, showing the first failures.
    pub fn assert_none_failed(&self, min_ok: u64) {
        let LoadOutcome { ok, failed, errors } = self;
        assert!(*ok > min_ok, "the load ran ({ok} requests)");
        assert_eq!(
            *failed,
            0,
            "{failed} of {} requests failed: {:?}",
            ok + failed,
            &errors[..errors.len().min(5)]
        );
    }
}

/// Waits until node `node_id` in the status `client` reads (GetStatus) is
/// as `want` says; `what` names it in the timeout's error.
pub async fn wait_node(
    client: &AuthedClient,
    timeout: Duration,
    what: &str,
    node_id: &str,
    want: impl Fn(&v1::NodeStatus) -> bool,
) -> anyhow::Result<()> {
    let read = |mut c: AuthedClient| async move { c.get_status(v1::GetStatusRequest {}).await };
    wait_reply(client, timeout, what, read, |s| {
        s.nodes.iter().any(|n| n.node_id == node_id && want(n))
    })
    .await
}
