//! Upstream HTTP/1.1: the proxy's own client, driven inside the request's
//! task, and a lock-free pool of idle keep-alive connections per backend.
//!
//! Why not hyper's client: hyper runs every client connection as a task of
//! its own, so each request crossed a channel to that task, came back
//! through a oneshot and woke two tasks. Here the request's own task
//! writes the request head to the socket and reads the response head and
//! body straight from it, as nginx and HAProxy do: a keep-alive request
//! costs one `write` and usually one `read`, and no other task runs.
//! Owning the exchange also tells the retry policy exactly what left:
//! nothing (the backend's close was seen before the head was written),
//! something but no answer, or an answer.
//!
//! Heads and bodies are read and written by the codec (`tandem_http`).
//!
//! Pooled connections are reused only while the backend still keeps them:
//! never past the pool's `upstream_idle_timeout_ms` (default 4 s, below
//! common servers' idle timeouts) nor past what the backend announced with
//! `Keep-Alive: timeout=N` (less a margin), and never when the backend has
//! closed them or sent anything unasked. A connection idle for more than
//! [`PEEK_AFTER_IDLE_MS`] is checked with a `recv(MSG_PEEK)` before reuse,
//! so a close the event loop has not reported yet is seen too. The close
//! that still crosses the request on the wire (the backend's idle timer
//! fired while the request was on its way) is recognised afterwards by the
//! order of the backend's FIN and reset, and the request goes again.
//!
//! A pool may speak TLS to its backends ([`UpstreamTls`]): the connection
//! is then a rustls client stream ([`Io::Tls`]) over the same socket, made
//! within the connect timeout, pooled and reused exactly like a plain one
//! (the socket-level checks above look at the TCP socket under it). Plain
//! connections stay a bare `TcpStream` in the same enum: one branch per
//! read or write, no allocation, no lock.

use std::io;
use std::mem::MaybeUninit;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::task::{Context, Poll, ready};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use crossbeam_queue::ArrayQueue;
use tandem_http::chunked::{self, ChunkError};
use tandem_http::response::{self, MAX_INTERIM, ResponseBody};
use tandem_http::{BodyDecoder, Piece, ResponseHead, Span, UpstreamFraming};
use tokio::io::{AsyncReadExt, AsyncWriteExt, Interest};
use tokio::net::TcpStream;
use tokio::time::Instant;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;

use crate::body::{ClientFault, ReqBody};
use crate::clock::{self, Deadline};
use crate::stream::PlainOrTls;

/// The largest response head a backend may send.
pub const MAX_HEAD: usize = 64 * 1024;
/// The most header fields in a backend's response head.
const MAX_HEADERS: usize = 128;
/// Room made in the read buffer before each read.
const READ_CHUNK: usize = 16 * 1024;
/// A connection idle this long is checked with a peek before it is reused.
pub const PEEK_AFTER_IDLE_MS: u64 = 100;
/// The longest the proxy waits, after a backend's close came back instead
/// of an answer, for the reset that proves the request was refused.
const REFUSAL_WAIT: Duration = Duration::from_millis(100);

// === connections ===

/// A backend connection's byte stream: plain TCP, or TLS over it.
pub type Io = PlainOrTls<TlsStream<TcpStream>>;

impl Io {
    /// The TCP socket (under TLS, the one it runs on).
    pub fn tcp(&self) -> &TcpStream {
        match self {
            Io::Plain(s) => s,
            Io::Tls(s) => s.get_ref().0,
        }
    }
}

/// One keep-alive HTTP/1.1 connection to a backend.
pub struct Conn {
    io: Io,
    /// Bytes read but not yet consumed.
    rbuf: BytesMut,
    /// The request head being written; kept to reuse its allocation.
    pub wbuf: Vec<u8>,
    /// The per-try timer, kept with the connection (taken out while an
    /// exchange runs).
    timer: Option<Deadline>,
    /// Where the fields of the next answer's head go.
    spans: Vec<Span>,
    /// The backend's idle timeout as its `Keep-Alive` field said, seconds.
    backend_idle_s: Option<u32>,
    /// The last answer lets the connection carry another request.
    keep_alive: bool,
}

/// Why an exchange failed.
#[derive(Debug, thiserror::Error)]
pub enum ExchangeError {
    /// Nothing the backend could act on reached it: writing the request
    /// head failed (its close was seen before the head was fully written),
    /// or its kernel refused the request because the backend had closed
    /// the connection before it arrived (see `refused_after_close`).
    #[error("the backend closed the connection before the request reached it: {0}")]
    Unsent(io::Error),
    /// The client's body failed: not the backend's fault.
    #[error("{0}")]
    Client(ClientFault),
    /// The request (or part of it) left, and the connection failed before
    /// any byte of an answer.
    #[error("connection failed before the response: {0}")]
    NoResponse(io::Error),
    /// The backend answered, but not with a usable HTTP/1.x head.
    #[error("invalid response: {0}")]
    Invalid(&'static str),
    /// No answer within the per-try timeout (or the request's deadline).
    #[error("no answer in time")]
    Timeout,
}

/// Where an exchange stands, for its timer: time spent waiting for the
/// client's body is not the backend's.
struct Progress {
    base: Instant,
    waiting_for_client: AtomicBool,
    /// When the backend's time (re)started, in nanoseconds after `base`.
    backend_since_ns: AtomicU64,
}

impl Progress {
    fn new(base: Instant) -> Self {
        Self {
            base,
            waiting_for_client: AtomicBool::new(false),
            backend_since_ns: AtomicU64::new(0),
        }
    }

    fn client(&self, waiting: bool) {
        if !waiting {
            let since = self.base.elapsed().as_nanos() as u64;
            self.backend_since_ns.store(since, Ordering::Relaxed);
        }
        self.waiting_for_client.store(waiting, Ordering::Relaxed);
    }

    fn backend_since(&self) -> Instant {
        self.base + Duration::from_nanos(self.backend_since_ns.load(Ordering::Relaxed))
    }
}

impl Conn {
    fn new(io: Io) -> Self {
        Self {
            io,
            rbuf: BytesMut::with_capacity(READ_CHUNK),
            wbuf: Vec::with_capacity(1024),
            timer: None,
            spans: Vec::new(),
            backend_idle_s: None,
            keep_alive: true,
        }
    }

    /// Sends the request head in [`Conn::wbuf`] and `body`, and reads the
    /// answer's head, interim (1xx but 101) answers skipped. The backend
    /// has `per_try` to answer, counted from `start` (now, give or take
    /// what the caller knows) and from when the proxy stopped waiting for
    /// the client's body; the whole exchange ends at `deadline`.
    pub async fn exchange(
        &mut self,
        head_request: bool,
        body: &mut ReqBody<'_>,
        start: Instant,
        per_try: Duration,
        deadline: Instant,
    ) -> Result<ResponseHead, ExchangeError> {
        let mut timer = self.timer.take().unwrap_or_default();
        let progress = Progress::new(start);
        let outcome = {
            let run = self.run(head_request, body, &progress);
            tokio::pin!(run);
            let mut at = (progress.base + per_try).min(deadline);
            loop {
                tokio::select! {
                    biased;
                    r = &mut run => break r,
                    () = timer.until(at) => {
                        let now = Instant::now();
                        let waiting = progress.waiting_for_client.load(Ordering::Relaxed);
                        if now >= deadline {
                            break Err(if waiting {
                                ExchangeError::Client(ClientFault::Stalled)
                            } else {
                                ExchangeError::Timeout
                            });
                        }
                        if waiting {
                            // The client's own stall timeout applies.
                            at = (now + per_try).min(deadline);
                            continue;
                        }
                        let due = progress.backend_since() + per_try;
                        if now >= due {
                            break Err(ExchangeError::Timeout);
                        }
                        at = due.min(deadline);
                    }
                }
            }
        };
        self.timer = Some(timer);
        outcome
    }

    async fn run(
        &mut self,
        head_request: bool,
        body: &mut ReqBody<'_>,
        progress: &Progress,
    ) -> Result<ResponseHead, ExchangeError> {
        self.io
            .write_all(&self.wbuf)
            .await
            .map_err(ExchangeError::Unsent)?;
        // The backend's kernel refused the body with a reset after its FIN
        // (the pending error a write meets first): see `refused_after_close`.
        let mut refused = false;
        if !body.is_empty() {
            match self.send_body(body, progress).await {
                Ok(()) => {}
                Err(Sending::Client(f)) => return Err(ExchangeError::Client(f)),
                // The backend stopped reading: it may have answered
                // already (say, 413 before the body); read what it sent.
                Err(Sending::Backend(e)) => {
                    tracing::debug!(error = %e, "upstream stopped taking the request body");
                    refused = e.kind() == io::ErrorKind::BrokenPipe;
                }
            }
        }
        if let Io::Tls(tls) = &mut self.io {
            // Records rustls could not hand to the socket yet go now.
            tls.flush().await.map_err(ExchangeError::NoResponse)?;
        }
        let mut received = false;
        let mut interim = 0;
        loop {
            if !self.rbuf.is_empty() {
                received = true;
                match response::parse_head(
                    &mut self.rbuf,
                    head_request,
                    MAX_HEADERS,
                    &mut self.spans,
                ) {
                    Ok(Some(head)) => {
                        let status = head.meta.status;
                        if status.is_informational()
                            && status != http::StatusCode::SWITCHING_PROTOCOLS
                        {
                            interim += 1;
                            if interim > MAX_INTERIM {
                                return Err(ExchangeError::Invalid("too many interim responses"));
                            }
                            self.spans = head.fields.into_spans();
                            continue;
                        }
                        self.keep_alive = head.meta.keep_alive;
                        if head.meta.keep_alive_timeout.is_some() {
                            self.backend_idle_s = head.meta.keep_alive_timeout;
                        }
                        return Ok(head);
                    }
                    Ok(None) if self.rbuf.len() >= MAX_HEAD => {
                        return Err(ExchangeError::Invalid("response head too large"));
                    }
                    Ok(None) => {}
                    Err(e) => return Err(ExchangeError::Invalid(e.0)),
                }
            }
            self.rbuf.reserve(READ_CHUNK);
            match self.io.read_buf(&mut self.rbuf).await {
                Ok(0) if received => {
                    return Err(ExchangeError::Invalid("connection closed within the head"));
                }
                Ok(0) => {
                    if refused || self.refused_after_close().await {
                        return Err(ExchangeError::Unsent(io::Error::new(
                            io::ErrorKind::BrokenPipe,
                            "the backend had closed the connection when the request reached it",
                        )));
                    }
                    return Err(ExchangeError::NoResponse(
                        io::ErrorKind::UnexpectedEof.into(),
                    ));
                }
                Ok(_) => {}
                Err(_) if received => {
                    return Err(ExchangeError::Invalid("connection failed within the head"));
                }
                Err(e) => return Err(ExchangeError::NoResponse(e)),
            }
        }
    }

    /// After the backend's close (FIN) was read before any byte of an
    /// answer: did its kernel refuse the request because the backend had
    /// already closed the socket? Then none of the request reached the
    /// backend and it may go again, whatever its method.
    ///
    /// The proof is the order of the backend's segments, as the kernel
    /// reports it: a reset that arrives after the backend's FIN leaves
    /// `EPIPE` pending on the socket (Linux's `tcp_reset` in `CLOSE_WAIT`),
    /// and a backend's kernel sends that reset only for bytes its process
    /// never read: they reached a socket it had closed, or one it had shut
    /// down for writing and then closed with them unread. A backend
    /// that read the request and then closed sends a FIN alone (no error
    /// pending); one that closed with the request unread sends a reset
    /// without a FIN first (`ECONNRESET`, read as an error, not as the end).
    /// Neither is taken for proof. Over a network the reset trails the FIN
    /// by a round trip: it is waited for, briefly.
    async fn refused_after_close(&self) -> bool {
        let refused = |io: &TcpStream| matches!(io.take_error(), Ok(Some(e)) if e.kind() == io::ErrorKind::BrokenPipe);
        let tcp = self.io.tcp();
        if refused(tcp) {
            return true;
        }
        let _ = tokio::time::timeout(REFUSAL_WAIT, tcp.ready(Interest::ERROR)).await;
        refused(tcp)
    }

    async fn send_body(
        &mut self,
        body: &mut ReqBody<'_>,
        progress: &Progress,
    ) -> Result<(), Sending> {
        let chunked = body.framing() == UpstreamFraming::Chunked;
        for data in body.kept() {
            self.write_data(data, chunked)
                .await
                .map_err(Sending::Backend)?;
        }
        loop {
            progress.client(true);
            let next = body.next_new().await;
            progress.client(false);
            match next {
                None => break,
                Some(Err(f)) => return Err(Sending::Client(f)),
                Some(Ok(data)) => self
                    .write_data(&data, chunked)
                    .await
                    .map_err(Sending::Backend)?,
            }
        }
        if chunked {
            self.io
                .write_all(chunked::LAST_CHUNK)
                .await
                .map_err(Sending::Backend)?;
        }
        Ok(())
    }

    async fn write_data(&mut self, data: &Bytes, chunked: bool) -> io::Result<()> {
        if !chunked {
            return self.io.write_all(data).await;
        }
        self.wbuf.clear();
        if data.len() <= READ_CHUNK {
            // One write for the chunk: size line, data and CRLF.
            chunked::encode_chunk(&mut self.wbuf, data);
            return self.io.write_all(&self.wbuf).await;
        }
        chunked::size_line_into(&mut self.wbuf, data.len());
        self.io.write_all(&self.wbuf).await?;
        self.io.write_all(data).await?;
        self.io.write_all(chunked::CHUNK_END).await
    }

    /// The response body that follows `head` on this connection.
    pub fn into_body(self, body: ResponseBody) -> UpstreamBody {
        let decoder = match body {
            ResponseBody::Empty => BodyDecoder::Done,
            ResponseBody::Length(n) => BodyDecoder::length(n),
            ResponseBody::Chunked => BodyDecoder::chunked(),
            ResponseBody::UntilClose => BodyDecoder::UntilClose,
        };
        UpstreamBody {
            conn: Some(self),
            decoder,
        }
    }

    /// The stream and whatever the backend already sent past the head,
    /// for a tunnel after 101.
    pub fn into_parts(self) -> (Io, BytesMut) {
        (self.io, self.rbuf)
    }

    /// An idle connection can carry another request when the backend has
    /// neither closed it nor sent anything unasked. The event loop's view
    /// is read first (no system call unless it reported the socket
    /// readable); after `idle_ms` of at least [`PEEK_AFTER_IDLE_MS`] the
    /// kernel is asked too. Under TLS the TCP socket is looked at: any
    /// byte there (a close_notify, an answer nobody asked for) retires the
    /// connection, as a plain one would be.
    fn alive(&self, idle_ms: u64) -> bool {
        if !self.rbuf.is_empty() {
            return false;
        }
        let tcp = self.io.tcp();
        let mut probe = [0u8; 1];
        if !matches!(tcp.try_read(&mut probe), Err(e) if e.kind() == io::ErrorKind::WouldBlock) {
            return false;
        }
        if idle_ms < PEEK_AFTER_IDLE_MS {
            return true;
        }
        let mut peek = [MaybeUninit::<u8>::uninit(); 1];
        matches!(
            socket2::SockRef::from(tcp).peek(&mut peek),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock
        )
    }

    /// How long this connection may sit idle in the pool: the pool's
    /// setting, or less when the backend announced a shorter timeout (a
    /// margin of a second, or half of it for timeouts under two seconds).
    fn idle_window_ms(&self, pool_ms: u32) -> u64 {
        let pool_ms = u64::from(pool_ms);
        match self.backend_idle_s {
            Some(s) => {
                let announced = u64::from(s) * 1_000;
                pool_ms.min(announced - announced.min(1_000).min(announced / 2))
            }
            None => pool_ms,
        }
    }

    fn poll_fill(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<usize>> {
        self.rbuf.reserve(READ_CHUNK);
        tokio_util::io::poll_read_buf(Pin::new(&mut self.io), cx, &mut self.rbuf)
    }
}

enum Sending {
    Client(ClientFault),
    Backend(io::Error),
}

// === response bodies ===

/// A response body read from the backend's socket by whoever polls it.
pub struct UpstreamBody {
    conn: Option<Conn>,
    decoder: BodyDecoder,
}

impl UpstreamBody {
    pub fn is_end(&self) -> bool {
        self.decoder.is_done()
    }

    /// The exact length still to come, when known.
    pub fn remaining(&self) -> Option<u64> {
        self.decoder.remaining()
    }

    /// The connection, once the body ended and it can carry another
    /// request: nothing of another answer may be waiting in it.
    pub fn take_reusable(&mut self) -> Option<Conn> {
        if !self.decoder.is_done() {
            return None;
        }
        self.conn
            .take()
            .filter(|c| c.keep_alive && c.rbuf.is_empty())
    }

    pub fn poll_data(&mut self, cx: &mut Context<'_>) -> Poll<Option<io::Result<Bytes>>> {
        let Some(conn) = self.conn.as_mut() else {
            return Poll::Ready(None);
        };
        loop {
            match self.decoder.decode(&mut conn.rbuf).map_err(bad_chunk)? {
                Piece::Data(data) => return Poll::Ready(Some(Ok(data))),
                Piece::End => return Poll::Ready(None),
                Piece::NeedMore => {
                    if ready!(conn.poll_fill(cx))? == 0 {
                        return match self.decoder.closed() {
                            Ok(()) => Poll::Ready(None),
                            Err(e) => Poll::Ready(Some(Err(io::Error::new(
                                io::ErrorKind::UnexpectedEof,
                                e,
                            )))),
                        };
                    }
                }
            }
        }
    }
}

fn bad_chunk(e: ChunkError) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, e)
}

// === the pool ===

struct Idle {
    conn: Conn,
    /// When it went idle, and until when it may be reused, on the coarse
    /// clock (milliseconds).
    since_ms: u64,
    until_ms: u64,
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

    /// An idle connection still open and within its idle window, if any.
    pub fn take(&self) -> Option<Conn> {
        while let Some(idle) = self.idle.pop() {
            let now = clock::now_ms();
            if now < idle.until_ms && idle.conn.alive(now.saturating_sub(idle.since_ms)) {
                return Some(idle.conn);
            }
            // Closed or past its window: dropping it closes the connection.
        }
        None
    }

    /// Returns a connection whose answer was read to the end, to be reused
    /// for at most `idle_timeout_ms` (or what the backend announced).
    pub fn put(&self, conn: Conn, idle_timeout_ms: u32) {
        let window = conn.idle_window_ms(idle_timeout_ms);
        if window == 0 {
            return;
        }
        let now = clock::now_ms();
        // Full: the connections already idle stay, this one closes.
        let _ = self.idle.push(Idle {
            conn,
            since_ms: now,
            until_ms: now + window,
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
    Io(#[from] io::Error),
    #[error("TLS handshake with the backend failed: {0}")]
    Tls(String),
}

/// Opens a new connection to a backend, with a TLS handshake when its pool
/// speaks TLS; both within `timeout`.
pub async fn connect(
    addr: Option<SocketAddr>,
    host_port: &str,
    tls: Option<&UpstreamTls>,
    timeout: Duration,
) -> Result<Conn, ConnectError> {
    let deadline = Instant::now() + timeout;
    let stream = tokio::time::timeout_at(deadline, async {
        match addr {
            Some(a) => TcpStream::connect(a).await,
            None => TcpStream::connect(host_port).await,
        }
    })
    .await
    .map_err(|_| ConnectError::Timeout(timeout))??;
    let _ = stream.set_nodelay(true);
    let io = match tls {
        None => Io::Plain(stream),
        Some(tls) => {
            let handshake = tls.handshake(stream);
            let r = tokio::time::timeout_at(deadline, handshake).await;
            Io::Tls(Box::new(tls.outcome(r, timeout)?))
        }
    };
    Ok(Conn::new(io))
}

// === TLS to backends ===

/// TLS to one backend: its pool's client configuration and the server
/// name sent (SNI) and verified. Built with the table, kept with the
/// backend's state (its pooled connections are TLS ones).
pub struct UpstreamTls {
    /// The settings it was built from: a change makes a new backend state,
    /// so plain and TLS connections never share a pool.
    pub declared: tandem_core::BackendTls,
    /// Err: the settings cannot be used (a hand-edited disk copy); every
    /// connect fails with this reason.
    ready: Result<(TlsConnector, rustls::pki_types::ServerName<'static>), String>,
    handshakes: metrics::Counter,
    /// The last handshake failure, for `/config` (written only when one
    /// fails).
    last_failure: std::sync::Mutex<Option<String>>,
}

impl UpstreamTls {
    /// For `backend` of `pool`: `config` is the pool's client
    /// configuration (shared by its backends: one session cache).
    pub fn new(
        pool: &tandem_core::PoolName,
        backend: &tandem_core::BackendAddr,
        declared: &tandem_core::BackendTls,
        config: &Result<std::sync::Arc<rustls::ClientConfig>, String>,
    ) -> Self {
        let ready = config.clone().and_then(|config| {
            let name = tandem_tls::client::server_name(declared.server_name(backend))
                .map_err(|e| e.to_string())?;
            Ok((TlsConnector::from(config), name))
        });
        if let Err(e) = &ready {
            tracing::error!(%pool, %backend, error = %e, "TLS to this backend cannot be set up: every request to it fails");
        }
        Self {
            declared: declared.clone(),
            ready,
            handshakes: metrics::counter!("tandem_proxy_upstream_tls_handshakes_total", "pool" => pool.to_string(), "backend" => backend.to_string()),
            last_failure: std::sync::Mutex::new(None),
        }
    }

    async fn handshake(&self, tcp: TcpStream) -> io::Result<TlsStream<TcpStream>> {
        match &self.ready {
            Ok((connector, name)) => connector.connect(name.clone(), tcp).await,
            Err(e) => Err(io::Error::other(e.clone())),
        }
    }

    fn outcome(
        &self,
        r: Result<io::Result<TlsStream<TcpStream>>, tokio::time::error::Elapsed>,
        timeout: Duration,
    ) -> Result<TlsStream<TcpStream>, ConnectError> {
        let (reason, e) = match r {
            Ok(Ok(stream)) => {
                self.handshakes.increment(1);
                return Ok(stream);
            }
            Ok(Err(e)) => (upstream_tls_reason(&e), ConnectError::Tls(e.to_string())),
            Err(_) => ("timeout", ConnectError::Timeout(timeout)),
        };
        metrics::counter!("tandem_proxy_upstream_tls_failures_total", "reason" => reason)
            .increment(1);
        *self.last_failure.lock().unwrap_or_else(|p| p.into_inner()) = Some(e.to_string());
        Err(e)
    }

    /// The last handshake failure, if any.
    pub fn last_failure(&self) -> Option<String> {
        self.last_failure
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }
}

/// A bounded set of reasons, for the failures counter's label.
fn upstream_tls_reason(e: &io::Error) -> &'static str {
    use rustls::CertificateError as C;
    let Some(tls) = e.get_ref().and_then(|e| e.downcast_ref::<rustls::Error>()) else {
        return match e.kind() {
            io::ErrorKind::UnexpectedEof
            | io::ErrorKind::ConnectionReset
            | io::ErrorKind::BrokenPipe => "closed",
            io::ErrorKind::Other => "config",
            _ => "io",
        };
    };
    match tls {
        rustls::Error::InvalidCertificate(c) => match c {
            C::UnknownIssuer => "unknown_issuer",
            C::NotValidForName | C::NotValidForNameContext { .. } => "name_mismatch",
            C::Expired
            | C::ExpiredContext { .. }
            | C::NotValidYet
            | C::NotValidYetContext { .. } => "expired",
            _ => "bad_certificate",
        },
        rustls::Error::AlertReceived(_) => "backend_alert",
        rustls::Error::InvalidMessage(_) | rustls::Error::InappropriateMessage { .. } => "not_tls",
        rustls::Error::PeerIncompatible(_) => "incompatible",
        _ => "other",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn conn_pair() -> (Conn, TcpStream) {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let (c, s) = tokio::join!(TcpStream::connect(addr), l.accept());
        (Conn::new(Io::Plain(c.unwrap())), s.unwrap().0)
    }

    #[tokio::test]
    async fn idle_windows_follow_the_pool_and_what_the_backend_announced() {
        let (mut c, _s) = conn_pair().await;
        assert_eq!(c.idle_window_ms(4_000), 4_000);
        c.backend_idle_s = Some(5);
        assert_eq!(
            c.idle_window_ms(60_000),
            4_000,
            "Keep-Alive: timeout=5, less a second"
        );
        assert_eq!(c.idle_window_ms(2_000), 2_000);
        c.backend_idle_s = Some(1);
        assert_eq!(c.idle_window_ms(60_000), 500, "half of a short timeout");
        c.backend_idle_s = Some(0);
        assert_eq!(c.idle_window_ms(60_000), 0);
    }

    #[tokio::test]
    async fn the_pool_gives_back_only_live_connections_within_their_window() {
        clock::start();
        let pool = ConnPool::new(4);
        let (c, _s) = conn_pair().await;
        pool.put(c, 60_000);
        assert!(pool.take().is_some(), "open and fresh");

        // Closed by the backend while idle: not given back.
        let (c, s) = conn_pair().await;
        pool.put(c, 60_000);
        drop(s);
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(pool.take().is_none());

        // Something unasked arrived: not given back.
        let (c, mut s) = conn_pair().await;
        pool.put(c, 60_000);
        s.write_all(b"HTTP/1.1 200 OK\r\n").await.unwrap();
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(pool.take().is_none());

        // Past its window: not given back.
        let (c, _s) = conn_pair().await;
        pool.put(c, 30);
        tokio::time::sleep(Duration::from_millis(80)).await;
        assert!(pool.take().is_none());
        let (c, _s) = conn_pair().await;
        pool.put(c, 0);
        assert_eq!(pool.idle(), 0, "a zero window is no reuse");
    }
}
