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
mod ctl;
pub mod golden;
pub mod otlp;
pub mod patroni;
mod postgres;
mod process;
pub mod proxy;
pub mod recording;
pub mod served;
pub mod tcp;

pub use control::{
    ADMIN_TOKEN, AuthedClient, ComponentCerts, ControlCluster, ControlPlane, ControlPlaneOptions,
    NODE_TOKEN, TEST_SECRETS_KEY, add_tcp_route, client_at, client_at_tls, create_pool_with,
    declare_pool,
};
pub use control::{Grant, PEER_TOKEN, token_sha256, write_access_file};
pub use ctl::{Ran, tandemctl};
pub use postgres::Postgres;
pub use process::{Process, bin_path};

use std::future::Future;
use std::net::{IpAddr, SocketAddr, TcpListener};
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
    free_addr_on(IpAddr::from([127, 0, 0, 1]))
}

/// Ports handed to child processes come from below the kernel's ephemeral
/// range (`net.ipv4.ip_local_port_range`, 32768–60999 by default). A port
/// the kernel chose with `bind(:0)` comes from that range, and so does the
/// local port of every outgoing connection: between the test reading the
/// port and the child binding it, any client socket on the machine could
/// take it ("Address already in use" in a soak test that opens thousands of
/// connections). Below the range only another test could take it.
const TEST_PORTS: std::ops::Range<u32> = 12_000..32_000;

/// `<ip>:<port>` with a port free on `ip` a moment ago, taken from
/// [`TEST_PORTS`]. Each process walks the range from its own starting point
/// (its pid and the clock), so parallel test processes rarely try the same
/// port, and a port one of them is still about to bind is not handed out
/// twice by the same process.
pub fn free_addr_on(ip: IpAddr) -> SocketAddr {
    use std::sync::atomic::{AtomicU32, Ordering};
    static NEXT: AtomicU32 = AtomicU32::new(u32::MAX);
    let span = TEST_PORTS.end - TEST_PORTS.start;
    if NEXT.load(Ordering::Relaxed) == u32::MAX {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0);
        let seed = std::process::id().wrapping_mul(2_654_435_761) ^ nanos;
        let _ = NEXT.compare_exchange(u32::MAX, seed % span, Ordering::Relaxed, Ordering::Relaxed);
    }
    for _ in 0..span {
        let offset = NEXT.fetch_add(1, Ordering::Relaxed) % span;
        let port = (TEST_PORTS.start + offset) as u16;
        if let Ok(listener) = TcpListener::bind((ip, port)) {
            return listener
                .local_addr()
                .expect("a bound socket has an address");
        }
    }
    panic!("no free port on {ip} in {TEST_PORTS:?}")
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

/// Reads off `s` into `buf` until `buf` holds a whole HTTP/1 head (through
/// the blank line), then takes the head out of `buf`, leaving whatever
/// followed it. `None` when the peer closes or the read fails first.
pub async fn read_head<S>(s: &mut S, buf: &mut Vec<u8>) -> Option<Vec<u8>>
where
    S: tokio::io::AsyncRead + Unpin,
{
    use tokio::io::AsyncReadExt as _;
    let mut chunk = [0u8; 8192];
    let end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        match s.read(&mut chunk).await {
            Ok(0) | Err(_) => return None,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    };
    Some(buf.drain(..end).collect())
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
