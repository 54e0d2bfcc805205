//! Upstream HTTP/1.1 connections: connecting with a timeout, and a
//! lock-free pool of idle keep-alive connections per backend.
//!
//! The pool is our own rather than hyper-util's client so that the proxy
//! knows whether a request left: a failed connect, or a pooled connection
//! that turns out to be closed, hands the request back untouched, and a
//! request with a body can then be retried on another backend.

use std::net::SocketAddr;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use crossbeam_queue::ArrayQueue;
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use hyper::client::conn::http1;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

use crate::clock;

// === request bodies ===

/// What the proxy sends upstream: the client's body, or nothing.
pub enum ReqBody {
    Empty,
    Incoming(Incoming),
}

impl Body for ReqBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        match self.get_mut() {
            ReqBody::Empty => Poll::Ready(None),
            ReqBody::Incoming(b) => Pin::new(b).poll_frame(cx),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            ReqBody::Empty => true,
            ReqBody::Incoming(b) => b.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            ReqBody::Empty => SizeHint::with_exact(0),
            ReqBody::Incoming(b) => b.size_hint(),
        }
    }
}

pub type Sender = http1::SendRequest<ReqBody>;

// === the pool ===

struct Idle {
    sender: Sender,
    /// When it went idle, on the coarse clock (milliseconds).
    since_ms: u64,
}

/// Idle keep-alive connections to one backend.
pub struct ConnPool {
    idle: ArrayQueue<Idle>,
}

impl ConnPool {
    pub fn new(max_idle: usize) -> Self {
        Self {
            idle: ArrayQueue::new(max_idle.max(1)),
        }
    }

    /// A ready idle connection, if any is younger than `max_idle_for`.
    pub fn take(&self, max_idle_for: Duration) -> Option<Sender> {
        while let Some(idle) = self.idle.pop() {
            let idle_for = clock::now_ms().saturating_sub(idle.since_ms);
            if idle.sender.is_ready() && u128::from(idle_for) < max_idle_for.as_millis() {
                return Some(idle.sender);
            }
            // Closed, busy or stale: dropping it closes the connection.
        }
        None
    }

    /// Returns a connection after its response was read to the end.
    pub fn put(&self, sender: Sender) {
        if sender.is_closed() {
            return;
        }
        // Full: the oldest connections stay, this one closes.
        let _ = self.idle.push(Idle {
            sender,
            since_ms: clock::now_ms(),
        });
    }

    pub fn idle(&self) -> usize {
        self.idle.len()
    }
}

// === connecting ===

#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    #[error("connect timed out after {0:?}")]
    Timeout(Duration),
    #[error("connect failed: {0}")]
    Io(#[from] std::io::Error),
    #[error("HTTP handshake failed: {0}")]
    Handshake(#[from] hyper::Error),
}

/// Opens a new HTTP/1.1 connection. With `upgrades`, the connection can be
/// taken over after a 101 answer (WebSocket) and must not be pooled.
pub async fn connect(
    addr: Option<SocketAddr>,
    host_port: &str,
    timeout: Duration,
    upgrades: bool,
) -> Result<Sender, ConnectError> {
    let stream = tokio::time::timeout(timeout, async {
        match addr {
            Some(a) => TcpStream::connect(a).await,
            None => TcpStream::connect(host_port).await,
        }
    })
    .await
    .map_err(|_| ConnectError::Timeout(timeout))??;
    let _ = stream.set_nodelay(true);
    let (sender, conn) = http1::Builder::new()
        .max_buf_size(256 * 1024)
        .handshake(TokioIo::new(stream))
        .await?;
    if upgrades {
        tokio::spawn(async move {
            if let Err(e) = conn.with_upgrades().await {
                tracing::debug!(error = %e, "upstream connection ended");
            }
        });
    } else {
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!(error = %e, "upstream connection ended");
            }
        });
    }
    Ok(sender)
}
