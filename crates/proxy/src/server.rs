//! The client-facing listener: HTTP/1.1 (the proxy's own server, [`h1`])
//! and HTTP/2 with prior knowledge (hyper's, [`crate::h2`]) on one port,
//! limits on heads and connections, graceful drain.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::BytesMut;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;

use crate::config::Settings;
use crate::forward::Proxy;
use crate::{h1, h2};

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
///
/// HTTP/1.x connections are served by the proxy's own server ([`h1`]);
/// those that open with the HTTP/2 preface are handed to hyper's.
pub async fn serve(
    listener: TcpListener,
    proxy: Arc<Proxy>,
    limits: Limits,
    shutdown: impl Future<Output = ()>,
) {
    let h2 = Arc::new(h2::builder(limits.max_header_bytes));
    let limits = Arc::new(limits);
    let (drain_signal, drain) = h1::drain();
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
        let (proxy, limits, h2) = (proxy.clone(), limits.clone(), h2.clone());
        let drain = drain.clone();
        let active = active.clone();
        active.increment(1.0);
        tokio::spawn(async move {
            let peer = proxy.peer(peer);
            match h1::serve(stream, peer, &proxy, &limits, drain.clone()).await {
                h1::End::Closed => {}
                h1::End::Http2(stream, read) => {
                    h2::serve(&h2, Prefixed::new(read, stream), proxy, peer, drain).await;
                }
            }
            active.decrement(1.0);
            drop(permit);
        });
    }
    drop(listener);
    let open = limits.max_connections - connections.available_permits();
    tracing::info!(
        open_connections = open,
        drain_timeout_ms = limits.drain_timeout.as_millis() as u64,
        "stopped accepting; draining"
    );
    drain_signal.start();
    let all = u32::try_from(limits.max_connections).unwrap_or(u32::MAX);
    match tokio::time::timeout(limits.drain_timeout, connections.acquire_many(all)).await {
        Ok(_) => tracing::info!("drained"),
        Err(_) => tracing::warn!("drain deadline passed; closing the remaining connections"),
    }
}

/// A connection whose first bytes were already read (while telling HTTP/1
/// from HTTP/2): reads give those back first.
pub struct Prefixed {
    read: BytesMut,
    io: TcpStream,
}

impl Prefixed {
    fn new(read: BytesMut, io: TcpStream) -> Self {
        Self { read, io }
    }
}

impl AsyncRead for Prefixed {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let me = self.get_mut();
        if !me.read.is_empty() {
            let n = me.read.len().min(buf.remaining());
            buf.put_slice(&me.read.split_to(n));
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut me.io).poll_read(cx, buf)
    }
}

impl AsyncWrite for Prefixed {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_shutdown(cx)
    }
}
