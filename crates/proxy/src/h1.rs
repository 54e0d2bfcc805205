//! The client-facing HTTP/1.1 server: the proxy's own, one task per
//! connection, on the codec (`tandem_http`). hyper serves HTTP/2 (the
//! `h2` module).
//!
//! Each head is parsed once (httparse, through the codec), its framing
//! checked while it is parsed, and the answer's head goes out in the same
//! write as the start of its body, as in nginx and HAProxy: a kept-alive
//! request costs one `read` and one `write` on the client's side.
//!
//! What a client gets:
//! - keep-alive (HTTP/1.1 unless `Connection: close`; HTTP/1.0 only with
//!   `Connection: keep-alive`) and pipelining (answered in order);
//! - request bodies by `Content-Length` or chunked; `Expect: 100-continue`
//!   answered when the body is first needed;
//! - what the codec refuses, refused with its status (400, 405, 417, 431,
//!   501) and the connection closed; 408 for a head not finished within the
//!   header timeout; after a refused or broken body (408, 413, 400) the
//!   connection closes too;
//! - responses by `Content-Length`, chunked (HTTP/1.1) or until close
//!   (HTTP/1.0); WebSocket-style upgrades joined to the backend after 101;
//! - a client that stops reading or sending for the stall timeout is cut
//!   off; on shutdown idle connections close at once and busy ones after
//!   their current answer.

use std::future::poll_fn;
use std::io;
use std::pin::Pin;
use std::task::Poll;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use http::{Method, StatusCode, Version};
use http_body::Body as _;
use tandem_http::rewrite::{self, ClientFraming};
use tandem_http::{BodyDecoder, RequestHead, Span, chunked};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::body::{ClientBody, Inbound, READ_CHUNK};
use crate::clock::Deadline;
use crate::config::Limits;
use crate::drain::Drain;
use crate::forward::{self, Answer, Peer, Proxy, Reply, ReplyHead};
use crate::stream::ClientIo;
use crate::tunnel;

/// An HTTP/2 client with prior knowledge opens with this.
const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
/// Response data up to this size is gathered behind the head (or the
/// previous piece) so that it leaves in one write.
const GATHER: usize = 16 * 1024;

/// How a connection ended.
pub enum End {
    /// Closed (by either side, or by the drain).
    Closed,
    /// It opened with the HTTP/2 preface: hyper takes it over, with the
    /// bytes already read.
    Http2(ClientIo, BytesMut),
}

/// Serves one client connection until it ends.
pub async fn serve(
    io: ClientIo,
    peer: Peer,
    proxy: &Proxy,
    limits: &Limits,
    mut drain: Drain,
) -> End {
    let mut client = Client {
        conn: Inbound::new(io, limits.stall_timeout),
        wbuf: Vec::with_capacity(1024),
        head_timer: Deadline::new(),
        spans: Vec::with_capacity(limits.max_headers.min(64)),
    };
    let mut first = true;
    loop {
        if drain.is_draining() {
            return End::Closed;
        }
        let head = match client.read_head(first, proxy, limits, &mut drain).await {
            Ok(Some(head)) => head,
            Ok(None) => return End::Closed,
            Err(HeadError::Http2) => return End::Http2(client.conn.io, client.conn.rbuf),
            Err(HeadError::Reject(status, why)) => {
                proxy.bad_request.increment(1);
                tracing::debug!(peer = %peer.addr, status = status.as_u16(), why, "request refused");
                let _ = client.refuse(status, why).await;
                // Whatever the client sent after a refused head is not
                // read as a request.
                client.conn.linger().await;
                return End::Closed;
            }
            Err(HeadError::Io) => return End::Closed,
        };
        first = false;
        client.conn.body = match head.body {
            tandem_http::Body::Length(n) => BodyDecoder::length(n),
            tandem_http::Body::Chunked => BodyDecoder::chunked(),
            tandem_http::Body::None | tandem_http::Body::Streamed => BodyDecoder::Done,
        };
        client.conn.expect_continue = head.expect_continue;

        let answer = forward::serve(proxy, &head, ClientBody::H1(&mut client.conn), &peer).await;

        // The request body must be behind us before the next head can be
        // read; what the backend did not need is skipped when it is
        // already here, otherwise the connection closes after the answer.
        let body_done = client.conn.skip_buffered_body();
        let is_head = head.method == Method::HEAD;
        let version = head.version;
        client.spans = head.fields.into_spans();
        match answer {
            Answer::Reply(reply) => {
                let keep_alive =
                    head.keep_alive && body_done && !reply.close && !drain.is_draining();
                match client.respond(reply, version, is_head, keep_alive).await {
                    Ok(true) => {}
                    Ok(false) => {
                        // The client may still be sending (a body nobody
                        // read, pipelined requests): closing with unread
                        // data would reset the connection and could destroy
                        // the answer before the client reads it.
                        client.conn.linger().await;
                        return End::Closed;
                    }
                    Err(_) => return End::Closed,
                }
            }
            Answer::Switch(reply, tunnel) => {
                if let Err(e) = client.switch(reply, tunnel).await {
                    tracing::debug!(peer = %peer.addr, error = %e, "upgraded connection ended");
                }
                return End::Closed;
            }
        }
    }
}

struct Client {
    conn: Inbound,
    wbuf: Vec<u8>,
    /// The header timeout, kept armed across requests.
    head_timer: Deadline,
    /// Where the fields of the next head go (kept to save its allocation).
    spans: Vec<Span>,
}

#[derive(Debug)]
enum HeadError {
    /// The connection opened with the HTTP/2 preface.
    Http2,
    /// Answer with this status and close.
    Reject(StatusCode, &'static str),
    /// The connection failed or timed out mid-head: close without answer.
    Io,
}

impl Client {
    /// Reads and parses the next request head. `None`: the client closed
    /// an idle connection, stayed idle past the header timeout, or the
    /// proxy is draining.
    async fn read_head(
        &mut self,
        first: bool,
        proxy: &Proxy,
        limits: &Limits,
        drain: &mut Drain,
    ) -> Result<Option<RequestHead>, HeadError> {
        let deadline = tokio::time::Instant::now() + limits.header_timeout;
        let rbuf = &mut self.conn.rbuf;
        loop {
            if !rbuf.is_empty() {
                let n = rbuf.len().min(H2_PREFACE.len());
                let maybe_h2 = first && rbuf[..n] == H2_PREFACE[..n];
                if maybe_h2 && n == H2_PREFACE.len() {
                    return Err(HeadError::Http2);
                }
                // (A prefix of the preface waits for the rest.)
                if !maybe_h2 {
                    let spans = &mut self.spans;
                    match tandem_http::parse_request(rbuf, &proxy.parse, spans) {
                        Ok(Some(head)) => return Ok(Some(head)),
                        Ok(None) => {}
                        Err(e) => return Err(HeadError::Reject(e.status, e.reason)),
                    }
                }
            }
            let idle = rbuf.is_empty();
            rbuf.reserve(READ_CHUNK);
            let read = tokio::select! {
                biased;
                r = self.conn.io.read_buf(rbuf) => r,
                () = self.head_timer.until(deadline) => {
                    if idle {
                        return Ok(None);
                    }
                    return Err(HeadError::Reject(
                        StatusCode::REQUEST_TIMEOUT,
                        "request head not received in time",
                    ));
                }
                () = drain.started(), if idle => return Ok(None),
            };
            match read {
                Ok(0) if idle => return Ok(None),
                Ok(0) | Err(_) => return Err(HeadError::Io),
                Ok(_) => {}
            }
        }
    }

    /// Writes an answer and its body. `Ok(true)`: the connection can take
    /// the next request.
    async fn respond(
        &mut self,
        reply: Reply,
        version: Version,
        is_head: bool,
        keep_alive: bool,
    ) -> io::Result<bool> {
        let Reply {
            status,
            head,
            mut body,
            hsts,
            ..
        } = reply;
        let framing = ClientFraming::of(status, is_head, version, body.size_hint().exact());
        let keep_alive = keep_alive && framing != ClientFraming::Close;
        self.wbuf.clear();
        // The route's HSTS replaces whatever the backend said of it.
        let sts: &[u8] = b"strict-transport-security";
        let hsts_field = hsts.as_ref().map(|v| (sts, v.as_bytes()));
        let text = (&b"content-type"[..], &b"text/plain; charset=utf-8"[..]);
        match &head {
            ReplyHead::Upstream {
                fields,
                declared_length,
            } => rewrite::write_response_head(
                &mut self.wbuf,
                status,
                rewrite::response_fields(fields)
                    .filter(|(n, _)| hsts.is_none() || !n.eq_ignore_ascii_case(sts))
                    .chain(hsts_field),
                *declared_length,
                framing,
                keep_alive,
                version,
            ),
            ReplyHead::Local => rewrite::write_response_head(
                &mut self.wbuf,
                status,
                std::iter::once(text).chain(hsts_field),
                None,
                framing,
                keep_alive,
                version,
            ),
            ReplyHead::Redirect { location } => rewrite::write_response_head(
                &mut self.wbuf,
                status,
                [text, (&b"location"[..], location.as_bytes())].into_iter(),
                None,
                framing,
                keep_alive,
                version,
            ),
        }
        drop(head);
        if framing == ClientFraming::None {
            drop(body);
            self.flush().await?;
            return Ok(keep_alive);
        }
        let chunked = framing == ClientFraming::Chunked;
        loop {
            // Take what is ready without waiting; before waiting, send
            // what was gathered so far.
            let next = match poll_fn(|cx| Poll::Ready(Pin::new(&mut body).poll_frame(cx))).await {
                Poll::Ready(next) => next,
                Poll::Pending => {
                    self.flush().await?;
                    poll_fn(|cx| Pin::new(&mut body).poll_frame(cx)).await
                }
            };
            match next {
                None => break,
                Some(Err(e)) => {
                    // The answer cannot be completed: the client learns by
                    // the close (a chunked body lacks its last chunk).
                    tracing::debug!(error = %e, "response body broke off");
                    let _ = self.flush().await;
                    return Ok(false);
                }
                Some(Ok(frame)) => {
                    if let Ok(data) = frame.into_data()
                        && !data.is_empty()
                    {
                        self.data(data, chunked).await?;
                    }
                }
            }
        }
        if chunked {
            self.wbuf.extend_from_slice(chunked::LAST_CHUNK);
        }
        self.flush().await?;
        Ok(keep_alive)
    }

    /// Appends one piece of body, with its chunk framing when `chunked`.
    async fn data(&mut self, data: Bytes, chunked: bool) -> io::Result<()> {
        if self.wbuf.len() + data.len() > GATHER {
            self.flush().await?;
        }
        if chunked {
            chunked::size_line_into(&mut self.wbuf, data.len());
        }
        if data.len() > GATHER {
            self.flush().await?;
            self.conn
                .io
                .write_all_within(&data, self.conn.stall)
                .await?;
        } else {
            self.wbuf.extend_from_slice(&data);
        }
        if chunked {
            self.wbuf.extend_from_slice(chunked::CHUNK_END);
        }
        Ok(())
    }

    async fn flush(&mut self) -> io::Result<()> {
        if !self.wbuf.is_empty() {
            self.conn
                .io
                .write_all_within(&self.wbuf, self.conn.stall)
                .await?;
            self.wbuf.clear();
        }
        Ok(())
    }

    /// A short answer made here, then the connection closes.
    async fn refuse(&mut self, status: StatusCode, why: &'static str) -> io::Result<()> {
        self.wbuf.clear();
        let what = status.canonical_reason().unwrap_or("refused");
        let text = format!("{}: {why}\n", what.to_ascii_lowercase());
        rewrite::write_response_head(
            &mut self.wbuf,
            status,
            std::iter::once((&b"content-type"[..], &b"text/plain; charset=utf-8"[..])),
            None,
            ClientFraming::Length(text.len() as u64),
            false,
            Version::HTTP_11,
        );
        self.wbuf.extend_from_slice(text.as_bytes());
        self.flush().await
    }

    /// After a 101: passes the answer on, then joins the client and the
    /// backend until both close or the tunnel goes idle.
    async fn switch(&mut self, reply: Reply, tunnel: forward::Tunnel) -> io::Result<()> {
        self.wbuf.clear();
        if let ReplyHead::Upstream { fields, .. } = &reply.head {
            rewrite::write_switch_head(
                &mut self.wbuf,
                rewrite::response_fields(fields),
                fields.get(b"upgrade"),
            );
        }
        // The tunnel's guards keep the request counted until it closes.
        let forward::Tunnel {
            upstream,
            idle_timeout,
            ..
        } = tunnel;
        let (mut backend, early) = upstream.into_parts();
        // What the backend sent right behind its 101 goes to the client
        // with it; what the client sent behind its request goes first.
        self.wbuf.extend_from_slice(&early);
        self.flush().await?;
        if !self.conn.rbuf.is_empty() {
            backend.write_all(&self.conn.rbuf).await?;
            backend.flush().await?;
            self.conn.rbuf.clear();
        }
        tunnel::join(&mut self.conn.io, &mut backend, idle_timeout).await
    }
}

/// How long a connection is kept, after its last answer, to swallow the
/// rest of a request body nobody read.
const LINGER: Duration = Duration::from_secs(2);

impl Inbound {
    /// Closes after an answer that came before the end of the request's
    /// body: the client still sending it would otherwise get a reset, which
    /// can destroy the answer before it is read. Sends FIN, then reads and
    /// drops what still comes, for at most [`LINGER`] (nginx's lingering
    /// close).
    async fn linger(&mut self) {
        if self.io.shutdown().await.is_err() {
            return;
        }
        let mut sink = [0u8; 4096];
        let _ = tokio::time::timeout(LINGER, async {
            while let Ok(n) = self.io.read(&mut sink).await {
                if n == 0 {
                    break;
                }
            }
        })
        .await;
    }
}
