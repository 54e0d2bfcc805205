//! The client-facing listener: HTTP/1.1 and HTTP/2 (prior knowledge) on
//! one port, limits on heads and connections, graceful drain.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;

use crate::config::Settings;
use crate::forward::{self, Proxy};
use crate::guard::GuardedIo;

/// Limits on what one client may do.
#[derive(Debug, Clone)]
pub struct Limits {
    pub header_timeout: Duration,
    pub max_header_bytes: usize,
    pub max_headers: usize,
    pub max_connections: usize,
    pub drain_timeout: Duration,
    pub stall_timeout: Duration,
}

impl From<&Settings> for Limits {
    fn from(s: &Settings) -> Self {
        Self {
            header_timeout: s.header_timeout,
            max_header_bytes: s.max_header_bytes,
            max_headers: s.max_headers,
            max_connections: s.max_connections,
            drain_timeout: s.drain_timeout,
            stall_timeout: s.stall_timeout,
        }
    }
}

/// Serves clients on `listener` until `shutdown` resolves, then stops
/// accepting and lets requests in flight finish for up to the drain timeout.
pub async fn serve(
    listener: TcpListener,
    proxy: Arc<Proxy>,
    limits: Limits,
    shutdown: impl Future<Output = ()>,
) {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_timeout)
        .max_buf_size(limits.max_header_bytes)
        .max_headers(limits.max_headers)
        .keep_alive(true);
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_header_list_size(limits.max_header_bytes as u32)
        .max_concurrent_streams(256)
        .keep_alive_interval(Some(Duration::from_secs(30)))
        .keep_alive_timeout(Duration::from_secs(10));
    let builder = Arc::new(builder);
    let graceful = GracefulShutdown::new();
    let connections = Arc::new(Semaphore::new(limits.max_connections));
    let active = metrics::gauge!("tandem_proxy_active_connections");
    let accepted = metrics::counter!("tandem_proxy_connections_total");
    tokio::pin!(shutdown);

    loop {
        let permit = tokio::select! {
            p = connections.clone().acquire_owned() => match p {
                Ok(p) => p,
                Err(_) => break,
            },
            () = &mut shutdown => break,
        };
        let (stream, peer) = tokio::select! {
            r = listener.accept() => match r {
                Ok(conn) => conn,
                Err(e) => {
                    // Out of file descriptors and the like: back off a
                    // little rather than spin.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let _ = stream.set_nodelay(true);
        accepted.increment(1);
        let proxy = proxy.clone();
        let svc = service_fn(move |req| forward::handle(proxy.clone(), req, peer));
        let io = TokioIo::new(GuardedIo::new(stream, limits.stall_timeout));
        let conn = builder.serve_connection_with_upgrades(io, svc).into_owned();
        let conn = graceful.watch(conn);
        let active = active.clone();
        active.increment(1.0);
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!(%peer, error = %e, "client connection ended with an error");
            }
            active.decrement(1.0);
            drop(permit);
        });
    }
    drop(listener);
    let open = graceful.count();
    tracing::info!(
        open_connections = open,
        drain_timeout_ms = limits.drain_timeout.as_millis() as u64,
        "stopped accepting; draining"
    );
    match tokio::time::timeout(limits.drain_timeout, graceful.shutdown()).await {
        Ok(()) => tracing::info!("drained"),
        Err(_) => tracing::warn!("drain deadline passed; closing the remaining connections"),
    }
}
