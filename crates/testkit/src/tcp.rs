//! TCP fixtures: an echo server that says who it is, and an HTTP responder
//! that imitates Patroni's REST API (`/primary` answers 200 only on the
//! member designated primary, `/replica` the other way round), so a test
//! can fail a database over without Patroni itself.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

/// A TCP server that greets each connection with `hello <name>\n`, then
/// echoes everything back, closing its side when the client does. Stops
/// on drop.
pub struct Echo {
    pub addr: SocketAddr,
    /// Connections accepted so far.
    pub accepted: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl Echo {
    pub async fn start(name: &str) -> anyhow::Result<Echo> {
        Self::start_on(name, IpAddr::from([127, 0, 0, 1])).await
    }

    /// Like [`Echo::start`], on `ip` (another loopback "host").
    pub async fn start_on(name: &str, ip: IpAddr) -> anyhow::Result<Echo> {
        let listener = TcpListener::bind((ip, 0)).await?;
        let addr = listener.local_addr()?;
        let accepted = Arc::new(AtomicUsize::new(0));
        let (name, count) = (name.to_string(), accepted.clone());
        let task = tokio::spawn(async move {
            while let Ok((mut s, _)) = listener.accept().await {
                count.fetch_add(1, Ordering::SeqCst);
                let greeting = format!("hello {name}\n");
                tokio::spawn(async move {
                    if s.write_all(greeting.as_bytes()).await.is_err() {
                        return;
                    }
                    let (mut r, mut w) = s.split();
                    let _ = tokio::io::copy(&mut r, &mut w).await;
                    let _ = w.shutdown().await;
                });
            }
        });
        Ok(Echo {
            addr,
            accepted,
            task,
        })
    }

    pub fn address(&self) -> String {
        self.addr.to_string()
    }
}

impl Drop for Echo {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A `single_active` pool named `name` whose check asks each member's
/// [`PrimaryResponder`] on `health_port` for `/primary` every 200 ms (150 ms
/// timeout, rise 1, `fall` failures in a row): the pool of a database's
/// primary, as an operator declares it.
pub fn primary_pool(name: &str, health_port: u16, fall: u32) -> tandem_proto::v1::Pool {
    use tandem_proto::v1;
    v1::Pool {
        name: name.into(),
        policy: v1::LbPolicy::SingleActive.into(),
        health_check: Some(v1::HealthCheck {
            path: Some("/primary".into()),
            port: Some(health_port.into()),
            interval_ms: Some(200),
            timeout_ms: Some(150),
            rise: Some(1),
            fall: Some(fall),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// Patroni's REST API as far as a load balancer sees it: `GET /primary`
/// (and `OPTIONS`, `HEAD`) answer 200 while this member is the primary and
/// 503 otherwise; `/replica` the opposite; anything else 404. One request
/// per connection. Stops answering (connections refused) on drop or
/// [`PrimaryResponder::stop`].
pub struct PrimaryResponder {
    pub addr: SocketAddr,
    primary: Arc<AtomicBool>,
    task: tokio::task::JoinHandle<()>,
}

impl PrimaryResponder {
    /// Listens on `ip:port`.
    pub async fn start(ip: IpAddr, port: u16, primary: bool) -> anyhow::Result<Self> {
        let listener = TcpListener::bind((ip, port)).await?;
        let addr = listener.local_addr()?;
        let flag = Arc::new(AtomicBool::new(primary));
        let is_primary = flag.clone();
        let task = tokio::spawn(async move {
            while let Ok((mut s, _)) = listener.accept().await {
                let primary = is_primary.load(Ordering::SeqCst);
                tokio::spawn(async move {
                    let mut buf = Vec::with_capacity(512);
                    let mut chunk = [0u8; 512];
                    while !buf.windows(4).any(|w| w == b"\r\n\r\n") && buf.len() < 8192 {
                        match s.read(&mut chunk).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => buf.extend_from_slice(&chunk[..n]),
                        }
                    }
                    let head = String::from_utf8_lossy(&buf);
                    let path = head.split_whitespace().nth(1).unwrap_or("/");
                    let (status, body) = match (path, primary) {
                        ("/primary" | "/master" | "/read-write", true) | ("/replica", false) => {
                            ("200 OK", "{\"role\": \"primary\"}")
                        }
                        ("/primary" | "/master" | "/read-write", false) | ("/replica", true) => {
                            ("503 Service Unavailable", "{\"role\": \"replica\"}")
                        }
                        _ => ("404 Not Found", "{}"),
                    };
                    let answer = format!(
                        "HTTP/1.1 {status}\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                        body.len()
                    );
                    let _ = s.write_all(answer.as_bytes()).await;
                    let _ = s.shutdown().await;
                });
            }
        });
        Ok(Self {
            addr,
            primary: flag,
            task,
        })
    }

    /// Makes this member the primary (true) or a replica (false).
    pub fn set_primary(&self, primary: bool) {
        self.primary.store(primary, Ordering::SeqCst);
    }

    /// Stops answering: connections to it are refused from now on.
    pub fn stop(&self) {
        self.task.abort();
    }
}

impl Drop for PrimaryResponder {
    fn drop(&mut self) {
        self.task.abort();
    }
}
