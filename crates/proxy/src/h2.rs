//! HTTP/2, with prior knowledge (h2c) or by ALPN over TLS, served by hyper. Its requests are
//! converted at this edge into the same [`RequestHead`] the HTTP/1 server
//! makes, checked by the same rules (plus HTTP/2's own: no
//! connection-specific fields, no invalid characters in any field), and go
//! down the same request path; answers are converted back.

use std::convert::Infallible;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::BytesMut;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use http::header::{CONTENT_TYPE, HeaderName, HeaderValue};
use http::{Request, Response};
use http_body::Body as _;
use hyper::body::Incoming;
use hyper::server::conn::http2;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tandem_http::{RequestHead, rewrite};

use crate::body::ClientBody;
use crate::drain::Drain;
use crate::forward::{self, Answer, Peer, Proxy, Reply, ReplyHead, RespBody};
use crate::stream::ClientIo;

/// hyper's HTTP/2 server as the proxy configures it.
pub fn builder(max_header_bytes: usize) -> http2::Builder<TokioExecutor> {
    let mut h2 = http2::Builder::new(TokioExecutor::new());
    h2.timer(TokioTimer::new())
        .max_header_list_size(max_header_bytes as u32)
        .max_concurrent_streams(256)
        .keep_alive_interval(Some(Duration::from_secs(30)))
        .keep_alive_timeout(Duration::from_secs(10));
    h2
}

/// One HTTP/2 connection, until it ends; on drain it is asked to finish
/// (GOAWAY) and its streams in flight complete.
pub async fn serve(
    h2: &http2::Builder<TokioExecutor>,
    io: Prefixed,
    proxy: Arc<Proxy>,
    peer: Peer,
    mut drain: Drain,
) {
    let svc = service_fn(move |req| handle(proxy.clone(), req, peer));
    let conn = h2.serve_connection(TokioIo::new(io), svc);
    tokio::pin!(conn);
    let result = tokio::select! {
        r = conn.as_mut() => r,
        () = drain.started() => {
            conn.as_mut().graceful_shutdown();
            conn.await
        }
    };
    if let Err(e) = result {
        tracing::debug!(peer = %peer.addr, error = %e, "client connection ended with an error");
    }
}

/// Handles one HTTP/2 request. Never fails: every problem is an answer.
async fn handle(
    proxy: Arc<Proxy>,
    req: Request<Incoming>,
    peer: Peer,
) -> Result<Response<RespBody>, Infallible> {
    let (parts, body) = req.into_parts();
    let head = match RequestHead::from_h2(&parts, body.is_end_stream(), &proxy.parse) {
        Ok(head) => head,
        Err(e) => {
            proxy.bad_request.increment(1);
            tracing::debug!(peer = %peer.addr, status = e.status.as_u16(), why = e.reason, "request refused");
            return Ok(to_http(Reply::local(e.status, e.reason)));
        }
    };
    Ok(
        match forward::serve(&proxy, &head, ClientBody::H2(body), &peer).await {
            Answer::Reply(r) => to_http(r),
            // HTTP/2 requests never ask for an upgrade.
            Answer::Switch(..) => to_http(Reply::local(
                http::StatusCode::BAD_GATEWAY,
                "the backend switched protocols unasked\n",
            )),
        },
    )
}

/// An answer as hyper sends it: a backend's fields without the hop-by-hop
/// ones and the framing (HTTP/2 frames the body itself).
fn to_http(reply: Reply) -> Response<RespBody> {
    let mut r = Response::new(reply.body);
    *r.status_mut() = reply.status;
    let headers = r.headers_mut();
    match reply.head {
        // (A HEAD or 304 answer's announced length is not passed on:
        // hyper frames HTTP/2 bodies from what it is given.)
        ReplyHead::Upstream { fields, .. } => {
            for (name, value) in rewrite::response_fields(&fields) {
                if let (Ok(n), Ok(v)) =
                    (HeaderName::from_bytes(name), HeaderValue::from_bytes(value))
                {
                    headers.append(n, v);
                }
            }
        }
        ReplyHead::Local => {
            headers.insert(
                CONTENT_TYPE,
                HeaderValue::from_static("text/plain; charset=utf-8"),
            );
        }
        ReplyHead::Redirect { location } => {
            headers.insert(
                CONTENT_TYPE,
                HeaderValue::from_static("text/plain; charset=utf-8"),
            );
            if let Ok(v) = HeaderValue::try_from(location) {
                headers.insert(http::header::LOCATION, v);
            }
        }
    }
    if let Some(v) = reply.hsts {
        // The route's HSTS replaces whatever the backend said of it.
        headers.insert(http::header::STRICT_TRANSPORT_SECURITY, v);
    }
    r
}

/// A connection whose first bytes were already read (while telling HTTP/1
/// from HTTP/2): reads give those back first.
pub struct Prefixed {
    read: BytesMut,
    io: ClientIo,
}

impl Prefixed {
    pub fn new(read: BytesMut, io: ClientIo) -> Self {
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
