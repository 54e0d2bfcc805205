//! Dev-only fixtures that let an end-to-end test read like what a user does:
//! a throwaway Postgres cluster, real workspace binaries launched as
//! processes on free loopback ports, readiness waits, and real HTTP backends.
//!
//! Everything cleans up on drop, so a failing test leaves nothing running.
//! Must never be a dependency of a shipped binary.

pub mod agent;
pub mod backend;
pub mod browser;
pub mod certs;
mod control;
pub mod golden;
pub mod otlp;
pub mod patroni;
mod postgres;
mod process;
pub mod proxy;
pub mod recording;
pub mod tcp;

pub use control::{
    ADMIN_TOKEN, AuthedClient, ControlCluster, ControlPlane, ControlPlaneOptions, NODE_TOKEN,
    TEST_SECRETS_KEY, client_at, declare_pool, free_addr_on,
};
pub use postgres::Postgres;
pub use process::{Process, bin_path};

use std::future::Future;
use std::net::{SocketAddr, TcpListener};
use std::time::{Duration, Instant};

/// Installs rustls's ring provider once (reqwest panics without one).
pub fn init_crypto() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// A loopback port that was free a moment ago.
pub fn free_port() -> u16 {
    free_addr().port()
}

/// `127.0.0.1:<port>` with a port that was free a moment ago.
pub fn free_addr() -> SocketAddr {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("binding an ephemeral loopback port")
}

/// Polls `check` every 50 ms until it returns true or `timeout` passes.
pub async fn wait_until<F, Fut>(timeout: Duration, what: &str, mut check: F) -> anyhow::Result<()>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let start = Instant::now();
    loop {
        if check().await {
            return Ok(());
        }
        if start.elapsed() > timeout {
            anyhow::bail!("timed out after {timeout:?} waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A reqwest client for tests: no proxy from the environment, short timeouts.
pub fn http_client() -> reqwest::Client {
    init_crypto();
    reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(10))
        .build()
        .expect("building a reqwest client")
}

/// Waits until `GET url` answers 200.
pub async fn wait_http_ok(url: &str, timeout: Duration) -> anyhow::Result<()> {
    let client = http_client();
    wait_until(timeout, url, || {
        let req = client.get(url).timeout(Duration::from_secs(2)).send();
        async move { matches!(req.await, Ok(r) if r.status().is_success()) }
    })
    .await
}
