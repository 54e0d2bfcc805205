//! The client-facing listeners: HTTP/1.1 (the proxy's own server, [`h1`])
//! and HTTP/2 (hyper's, [`crate::h2`]) on one port, plain (HTTP/2 with
//! prior knowledge) or TLS (HTTP/2 by ALPN, [`crate::tls`]); limits on
//! heads and connections, graceful drain.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;

use crate::config::Limits;
use crate::forward::Proxy;
use crate::stream::ClientIo;
use crate::tls::{self, Tls};
use crate::{drain, h1, h2};

/// Serves clients on `listener` until `shutdown` resolves, then stops
/// accepting and lets requests in flight finish for up to the drain timeout.
///
/// HTTP/1.x connections are served by the proxy's own server ([`h1`]);
/// those that open with the HTTP/2 preface, or chose `h2` by ALPN, are
/// handed to hyper's. With `tls`, every connection starts with a TLS
/// handshake (within the header timeout).
pub async fn serve(
    listener: TcpListener,
    proxy: Arc<Proxy>,
    limits: Limits,
    tls: Option<Arc<Tls>>,
    shutdown: impl Future<Output = ()>,
) {
    let h2 = Arc::new(h2::builder(limits.max_header_bytes));
    let limits = Arc::new(limits);
    let (drain_signal, drain) = drain::new();
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
        let tls = tls.clone();
        active.increment(1.0);
        tokio::spawn(async move {
            let io = match &tls {
                None => Some((ClientIo::Plain(stream), false)),
                Some(tls) => tls
                    .accept(stream, limits.header_timeout)
                    .await
                    .map(|s| (tls::is_h2(&s), s))
                    .map(|(h2, s)| (ClientIo::Tls(Box::new(s)), h2)),
            };
            if let Some((io, alpn_h2)) = io {
                let peer = proxy.peer(peer, io.is_tls());
                if alpn_h2 {
                    let io = h2::Prefixed::new(BytesMut::new(), io);
                    h2::serve(&h2, io, proxy, peer, drain).await;
                } else {
                    match h1::serve(io, peer, &proxy, &limits, drain.clone()).await {
                        h1::End::Closed => {}
                        h1::End::Http2(io, read) => {
                            h2::serve(&h2, h2::Prefixed::new(read, io), proxy, peer, drain).await;
                        }
                    }
                }
            }
            active.decrement(1.0);
            drop(permit);
        });
    }
    drop(listener);
    let open = limits.max_connections - connections.available_permits();
    tracing::info!(
        tls = tls.is_some(),
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
