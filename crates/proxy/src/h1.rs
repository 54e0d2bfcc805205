//! The client-facing HTTP/1.1 server: the proxy's own, one task per
//! connection. hyper still serves HTTP/2 ([`crate::server`]).
//!
//! Why not hyper's HTTP/1 server: per request it ran a general dispatcher
//! (its own buffering, a boxed service future, a header map built and then
//! encoded again), and in front of it a byte-by-byte scanner had to follow
//! the stream to refuse smuggling attempts hyper lets through (a request
//! with both `Content-Length` and `Transfer-Encoding`). Here each head is
//! parsed once (httparse), its framing checked while it is parsed, and the
//! answer's head goes out in the same write as the start of its body, as in
//! nginx and HAProxy: a kept-alive request costs one `read` and one `write`
//! on the client's side.
//!
//! What a client gets:
//! - keep-alive (HTTP/1.1 unless `Connection: close`; HTTP/1.0 only with
//!   `Connection: keep-alive`) and pipelining (answered in order);
//! - request bodies by `Content-Length` or chunked; `Expect: 100-continue`
//!   answered when the body is first needed;
//! - 400 for a malformed head or ambiguous framing, 431 for a head over
//!   the size or field-count limit, 405 for `CONNECT`, 408 for a head not
//!   finished within the header timeout;
//! - responses by `Content-Length`, chunked (HTTP/1.1) or until close
//!   (HTTP/1.0); WebSocket-style upgrades joined to the backend after 101;
//! - a client that stops reading or sending for the stall timeout is cut
//!   off; on shutdown idle connections close at once and busy ones after
//!   their current answer.

use std::future::poll_fn;
use std::io;
use std::mem::MaybeUninit;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::Poll;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use http::header;
use http::{Method, Response, StatusCode, Uri, Version};
use http_body::Body;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::watch;

use crate::clock::Deadline;
use crate::forward::{self, Answer, Proxy, RespBody};
use crate::headers::{Field, RawFields};
use crate::server::Limits;
use crate::upstream::{self, BodyError, Chunk, Source};

/// An HTTP/2 client with prior knowledge opens with this.
const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
/// The most header fields a request may carry, whatever
/// `TANDEM_MAX_HEADERS` says.
pub const MAX_HEADERS: usize = 256;
/// Room made in the read buffer before each read.
const READ_CHUNK: usize = 8 * 1024;
/// Response data up to this size is gathered behind the head (or the
/// previous piece) so that it leaves in one write.
const GATHER: usize = 16 * 1024;

/// How a connection ended.
pub enum End {
    /// Closed (by either side, or by the drain).
    Closed,
    /// It opened with the HTTP/2 preface: hyper takes it over, with the
    /// bytes already read.
    Http2(TcpStream, BytesMut),
}

/// Serves one client connection until it ends.
pub async fn serve(
    io: TcpStream,
    peer: SocketAddr,
    proxy: &Proxy,
    limits: &Limits,
    mut drain: Drain,
) -> End {
    let mut client = Client {
        io: ClientIo {
            io,
            rbuf: BytesMut::with_capacity(READ_CHUNK),
            stall: limits.stall_timeout,
            body: BodyState::Done,
            expect_continue: false,
        },
        wbuf: Vec::with_capacity(1024),
        head_timer: Deadline::new(),
        fields: Vec::with_capacity(limits.max_headers.min(64)),
    };
    let mut first = true;
    loop {
        if drain.is_draining() {
            return End::Closed;
        }
        let head = match client.read_head(first, limits, &mut drain).await {
            Ok(Some(head)) => head,
            Ok(None) => return End::Closed,
            Err(HeadError::Http2) => {
                let Client { io, .. } = client;
                return End::Http2(io.io, io.rbuf);
            }
            Err(HeadError::Reject(status, why)) => {
                proxy.bad_request.increment(1);
                tracing::debug!(%peer, status = status.as_u16(), why, "request refused");
                let _ = client.refuse(status, why).await;
                return End::Closed;
            }
            Err(HeadError::Io) => return End::Closed,
        };
        first = false;
        let Parsed {
            parts,
            head,
            framing,
            keep_alive,
            expect_continue,
        } = head;
        let version = parts.version;
        let is_head = parts.method == Method::HEAD;
        client.io.body = framing;
        client.io.expect_continue = expect_continue;

        let raw = RawFields {
            head: &head,
            fields: &client.fields,
        };
        let answer = forward::serve(
            proxy,
            parts,
            Some(raw),
            Source::H1(RequestBody {
                client: &mut client.io,
            }),
            peer,
        )
        .await;

        // The request body must be behind us before the next head can be
        // read; what the backend did not need is skipped when it is
        // already here, otherwise the connection closes after the answer.
        let body_done = client.io.skip_buffered_body();
        let keep_alive = keep_alive && body_done && !drain.is_draining();
        match answer {
            Answer::Response(response) => {
                match client.respond(response, version, is_head, keep_alive).await {
                    Ok(true) => {}
                    Ok(false) if !body_done => {
                        client.io.linger().await;
                        return End::Closed;
                    }
                    Ok(false) | Err(_) => return End::Closed,
                }
            }
            Answer::Switch(response, tunnel) => {
                if let Err(e) = client.switch(response, tunnel).await {
                    tracing::debug!(%peer, error = %e, "upgraded connection ended");
                }
                return End::Closed;
            }
        }
    }
}

/// Tells connections to finish: a flag each request reads (no lock), and
/// a channel that wakes the idle ones.
#[derive(Clone)]
pub struct Drain {
    flag: Arc<AtomicBool>,
    wake: watch::Receiver<()>,
}

/// Starts the drain of every connection holding a [`Drain`].
pub struct DrainSignal {
    flag: Arc<AtomicBool>,
    wake: watch::Sender<()>,
}

pub fn drain() -> (DrainSignal, Drain) {
    let flag = Arc::new(AtomicBool::new(false));
    let (tx, rx) = watch::channel(());
    (
        DrainSignal {
            flag: flag.clone(),
            wake: tx,
        },
        Drain { flag, wake: rx },
    )
}

impl DrainSignal {
    pub fn start(&self) {
        self.flag.store(true, Ordering::Release);
        self.wake.send_replace(());
    }
}

impl Drain {
    pub fn is_draining(&self) -> bool {
        self.flag.load(Ordering::Acquire)
    }

    /// Resolves once the drain has started.
    pub async fn started(&mut self) {
        while !self.is_draining() {
            if self.wake.changed().await.is_err() {
                return;
            }
        }
    }
}

/// The client's socket and what was read from it.
pub struct ClientIo {
    io: TcpStream,
    rbuf: BytesMut,
    stall: Duration,
    /// Where the current request's body stands.
    body: BodyState,
    /// The client waits for `100 Continue` before it sends the body.
    expect_continue: bool,
}

struct Client {
    io: ClientIo,
    wbuf: Vec<u8>,
    /// The header timeout, kept armed across requests.
    head_timer: Deadline,
    /// Where each header field of the head being parsed lies in it.
    fields: Vec<Field>,
}

/// A request head, ready for the forwarding path.
struct Parsed {
    /// Method, target and version (no headers: see `head`).
    parts: http::request::Parts,
    /// The head as received; the client's `fields` point into it.
    head: Bytes,
    framing: BodyState,
    keep_alive: bool,
    expect_continue: bool,
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

/// How much of a request body is still to be read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum BodyState {
    Done,
    Length(u64),
    Chunked(Chunk),
}

impl Client {
    /// Reads and parses the next request head. `None`: the client closed
    /// an idle connection, stayed idle past the header timeout, or the
    /// proxy is draining.
    async fn read_head(
        &mut self,
        first: bool,
        limits: &Limits,
        drain: &mut Drain,
    ) -> Result<Option<Parsed>, HeadError> {
        let deadline = tokio::time::Instant::now() + limits.header_timeout;
        loop {
            if !self.io.rbuf.is_empty() {
                let n = self.io.rbuf.len().min(H2_PREFACE.len());
                let maybe_h2 = first && self.io.rbuf[..n] == H2_PREFACE[..n];
                if maybe_h2 && n == H2_PREFACE.len() {
                    return Err(HeadError::Http2);
                }
                // (A prefix of the preface waits for the rest.)
                if !maybe_h2 && let Some(parsed) = self.parse(limits)? {
                    return Ok(Some(parsed));
                }
                if self.io.rbuf.len() >= limits.max_header_bytes {
                    return Err(HeadError::Reject(
                        StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
                        "request head too large",
                    ));
                }
            }
            let idle = self.io.rbuf.is_empty();
            self.io.rbuf.reserve(READ_CHUNK);
            let read = tokio::select! {
                biased;
                r = self.io.io.read_buf(&mut self.io.rbuf) => r,
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

    /// Parses a complete head off the front of the read buffer; `None`
    /// when it is not complete yet.
    fn parse(&mut self, limits: &Limits) -> Result<Option<Parsed>, HeadError> {
        // Uninitialised: nothing is cleared per request.
        let mut slots = [const { MaybeUninit::<httparse::Header<'_>>::uninit() }; MAX_HEADERS];
        let slots = &mut slots[..limits.max_headers.min(MAX_HEADERS)];
        let mut req = httparse::Request::new(&mut []);
        let buf = &self.io.rbuf[..];
        let len = match req.parse_with_uninit_headers(buf, slots) {
            Ok(httparse::Status::Complete(n)) => n,
            Ok(httparse::Status::Partial) => return Ok(None),
            Err(httparse::Error::TooManyHeaders) => {
                return Err(HeadError::Reject(
                    StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
                    "too many header fields",
                ));
            }
            Err(e) => return Err(HeadError::Reject(StatusCode::BAD_REQUEST, reason(e))),
        };
        if len > limits.max_header_bytes {
            return Err(HeadError::Reject(
                StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
                "request head too large",
            ));
        }
        let base = buf.as_ptr() as usize;
        let offset = |s: &[u8]| {
            let start = s.as_ptr() as usize - base;
            start..start + s.len()
        };
        let method = req.method.unwrap_or_default().as_bytes();
        let method = Method::from_bytes(method)
            .map_err(|_| HeadError::Reject(StatusCode::BAD_REQUEST, "invalid method"))?;
        let target = offset(req.path.unwrap_or_default().as_bytes());
        let version = match req.version {
            Some(0) => Version::HTTP_10,
            _ => Version::HTTP_11,
        };
        self.fields.clear();
        for h in req.headers.iter() {
            self.fields
                .push((offset(h.name.as_bytes()), offset(h.value)));
        }

        // The head is done with the buffer: its bytes are shared, not
        // copied, by the URI and the header values.
        let head = self.io.rbuf.split_to(len).freeze();
        if method == Method::CONNECT {
            return Err(HeadError::Reject(
                StatusCode::METHOD_NOT_ALLOWED,
                "CONNECT is not supported",
            ));
        }
        let uri = Uri::from_maybe_shared(head.slice(target))
            .map_err(|_| HeadError::Reject(StatusCode::BAD_REQUEST, "invalid request target"))?;
        // No header map is built: httparse has checked the names and
        // values, and the forwarding path copies them as they are.
        let raw = RawFields {
            head: &head,
            fields: &self.fields,
        };
        let framing = request_framing(raw, version)
            .map_err(|why| HeadError::Reject(StatusCode::BAD_REQUEST, why))?;
        if raw.values(b"host").nth(1).is_some() {
            return Err(HeadError::Reject(
                StatusCode::BAD_REQUEST,
                "more than one Host header",
            ));
        }
        let keep_alive = match version {
            Version::HTTP_10 => raw.has_token(b"connection", b"keep-alive"),
            _ => !raw.has_token(b"connection", b"close"),
        };
        let expect_continue = version == Version::HTTP_11
            && framing != BodyState::Done
            && raw
                .values(b"expect")
                .next()
                .is_some_and(|v| v.trim_ascii().eq_ignore_ascii_case(b"100-continue"));

        let mut parts = http::Request::new(()).into_parts().0;
        parts.method = method;
        parts.uri = uri;
        parts.version = version;
        Ok(Some(Parsed {
            parts,
            head,
            framing,
            keep_alive,
            expect_continue,
        }))
    }

    /// Writes an answer and its body. `Ok(true)`: the connection can take
    /// the next request.
    async fn respond(
        &mut self,
        response: Response<RespBody>,
        version: Version,
        is_head: bool,
        mut keep_alive: bool,
    ) -> io::Result<bool> {
        let (parts, mut body) = response.into_parts();
        let status = parts.status;
        let no_body = is_head
            || status.is_informational()
            || status == StatusCode::NO_CONTENT
            || status == StatusCode::NOT_MODIFIED;

        let wbuf = &mut self.wbuf;
        wbuf.clear();
        status_line(wbuf, status);
        for (name, value) in &parts.headers {
            if name == header::CONNECTION {
                if value
                    .as_bytes()
                    .split(|&b| b == b',')
                    .any(|t| t.trim_ascii().eq_ignore_ascii_case(b"close"))
                {
                    keep_alive = false;
                }
                continue;
            }
            field(wbuf, name.as_str().as_bytes(), value.as_bytes());
        }
        let mut chunked = false;
        if !no_body && !parts.headers.contains_key(header::CONTENT_LENGTH) {
            if let Some(n) = body.size_hint().exact() {
                let mut digits = [0u8; 20];
                field(wbuf, b"content-length", decimal(&mut digits, n));
            } else if version == Version::HTTP_11 {
                field(wbuf, b"transfer-encoding", b"chunked");
                chunked = true;
            } else {
                // An HTTP/1.0 client learns where the body ends by the close.
                keep_alive = false;
            }
        }
        if !keep_alive {
            field(wbuf, b"connection", b"close");
        } else if version == Version::HTTP_10 {
            field(wbuf, b"connection", b"keep-alive");
        }
        wbuf.extend_from_slice(b"\r\n");

        if no_body {
            drop(body);
            self.flush().await?;
            return Ok(keep_alive);
        }
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
            self.wbuf.extend_from_slice(b"0\r\n\r\n");
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
            upstream::chunk_size_line(&mut self.wbuf, data.len());
        }
        if data.len() > GATHER {
            self.flush().await?;
            write_all(&mut self.io.io, &data, self.io.stall).await?;
        } else {
            self.wbuf.extend_from_slice(&data);
        }
        if chunked {
            self.wbuf.extend_from_slice(b"\r\n");
        }
        Ok(())
    }

    async fn flush(&mut self) -> io::Result<()> {
        if !self.wbuf.is_empty() {
            write_all(&mut self.io.io, &self.wbuf, self.io.stall).await?;
            self.wbuf.clear();
        }
        Ok(())
    }

    /// A short answer made here, then the connection closes.
    async fn refuse(&mut self, status: StatusCode, why: &'static str) -> io::Result<()> {
        self.wbuf.clear();
        status_line(&mut self.wbuf, status);
        let what = status.canonical_reason().unwrap_or("refused");
        let text = format!("{}: {why}\n", what.to_ascii_lowercase());
        field(
            &mut self.wbuf,
            b"content-type",
            b"text/plain; charset=utf-8",
        );
        let mut digits = [0u8; 20];
        field(
            &mut self.wbuf,
            b"content-length",
            decimal(&mut digits, text.len() as u64),
        );
        field(&mut self.wbuf, b"connection", b"close");
        self.wbuf.extend_from_slice(b"\r\n");
        self.wbuf.extend_from_slice(text.as_bytes());
        self.flush().await
    }

    /// After a 101: passes the answer on, then joins the client and the
    /// backend until either side closes.
    async fn switch(
        &mut self,
        response: Response<RespBody>,
        tunnel: forward::Tunnel,
    ) -> io::Result<()> {
        self.wbuf.clear();
        status_line(&mut self.wbuf, response.status());
        for (name, value) in response.headers() {
            field(&mut self.wbuf, name.as_str().as_bytes(), value.as_bytes());
        }
        self.wbuf.extend_from_slice(b"\r\n");
        // The tunnel's guards keep the request counted until it closes.
        let forward::Tunnel { upstream, .. } = tunnel;
        let (mut backend, early) = upstream.into_parts();
        // What the backend sent right behind its 101 goes to the client
        // with it; what the client sent behind its request goes first.
        self.wbuf.extend_from_slice(&early);
        self.flush().await?;
        if !self.io.rbuf.is_empty() {
            backend.write_all(&self.io.rbuf).await?;
            self.io.rbuf.clear();
        }
        tokio::io::copy_bidirectional(&mut self.io.io, &mut backend).await?;
        Ok(())
    }
}

/// How long a connection is kept, after its last answer, to swallow the
/// rest of a request body nobody read.
const LINGER: Duration = Duration::from_secs(2);

impl ClientIo {
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

    /// Skips what is left of the request body if it is already in the
    /// buffer. Returns whether the body is behind us.
    fn skip_buffered_body(&mut self) -> bool {
        loop {
            match self.buffered_body() {
                Piece::Data(_) => {}
                Piece::End => return true,
                Piece::NeedMore | Piece::Broken(_) => return false,
            }
        }
    }

    /// The next piece of the request body that is already in the buffer.
    fn buffered_body(&mut self) -> Piece {
        match &mut self.body {
            BodyState::Done => Piece::End,
            BodyState::Length(_) if self.rbuf.is_empty() => Piece::NeedMore,
            BodyState::Length(left) => {
                let n = (*left).min(self.rbuf.len() as u64) as usize;
                *left -= n as u64;
                if *left == 0 {
                    self.body = BodyState::Done;
                }
                Piece::Data(self.rbuf.split_to(n).freeze())
            }
            BodyState::Chunked(state) => match upstream::decode_chunk(state, &mut self.rbuf) {
                Ok(Some(data)) => Piece::Data(data),
                Ok(None) if *state == Chunk::Done => {
                    self.body = BodyState::Done;
                    Piece::End
                }
                Ok(None) => Piece::NeedMore,
                Err(e) => Piece::Broken(e),
            },
        }
    }
}

enum Piece {
    Data(Bytes),
    End,
    /// Nothing more is in the buffer yet.
    NeedMore,
    Broken(io::Error),
}

/// A request body read from the client's connection by the forwarding
/// path, as it sends it on.
pub struct RequestBody<'a> {
    client: &'a mut ClientIo,
}

impl RequestBody<'_> {
    pub fn is_end(&self) -> bool {
        self.client.body == BodyState::Done
    }

    /// The next piece of the body; `None` at its end.
    pub async fn next(&mut self) -> Option<Result<Bytes, BodyError>> {
        let c = &mut *self.client;
        if c.expect_continue {
            c.expect_continue = false;
            if let Err(e) = write_all(&mut c.io, b"HTTP/1.1 100 Continue\r\n\r\n", c.stall).await {
                return Some(Err(e.into()));
            }
        }
        loop {
            match c.buffered_body() {
                Piece::Data(data) => return Some(Ok(data)),
                Piece::End => return None,
                Piece::Broken(e) => return Some(Err(e.into())),
                Piece::NeedMore => {}
            }
            c.rbuf.reserve(READ_CHUNK);
            match tokio::time::timeout(c.stall, c.io.read_buf(&mut c.rbuf)).await {
                Ok(Ok(0)) => {
                    return Some(Err(
                        "the client closed the connection within the body".into()
                    ));
                }
                Ok(Ok(_)) => {}
                Ok(Err(e)) => return Some(Err(e.into())),
                Err(_) => return Some(Err("the client stopped sending its body".into())),
            }
        }
    }
}

/// Writes all of `data`, giving up when the client reads nothing for
/// `stall`.
async fn write_all(io: &mut TcpStream, mut data: &[u8], stall: Duration) -> io::Result<()> {
    // Most answers fit in the socket's buffer: written at once, no timer.
    match io.try_write(data) {
        Ok(n) if n == data.len() => return Ok(()),
        Ok(n) => data = &data[n..],
        Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
        Err(e) => return Err(e),
    }
    match tokio::time::timeout(stall, io.write_all(data)).await {
        Ok(r) => r,
        Err(_) => Err(io::Error::new(
            io::ErrorKind::TimedOut,
            "the client stopped reading",
        )),
    }
}

/// How the body of a request is delimited (RFC 9112 §6), refusing what a
/// proxy must not guess at: both `Transfer-Encoding` and `Content-Length`
/// (the classic smuggling vector), `Content-Length`s that disagree or are
/// not numbers, and transfer codings that do not end in chunked.
fn request_framing(raw: RawFields<'_>, version: Version) -> Result<BodyState, &'static str> {
    let mut te = raw.values(b"transfer-encoding").peekable();
    if te.peek().is_some() {
        if version == Version::HTTP_10 {
            return Err("Transfer-Encoding in an HTTP/1.0 request");
        }
        if raw.values(b"content-length").next().is_some() {
            return Err("both Content-Length and Transfer-Encoding");
        }
        let last = te
            .flat_map(|v| v.split(|&b| b == b','))
            .map(<[u8]>::trim_ascii)
            .filter(|t| !t.is_empty())
            .last();
        return match last {
            Some(t) if t.eq_ignore_ascii_case(b"chunked") => Ok(BodyState::Chunked(Chunk::Size)),
            _ => Err("Transfer-Encoding does not end in chunked"),
        };
    }
    let mut length = None;
    for v in raw.values(b"content-length") {
        for part in v.split(|&b| b == b',') {
            let n = upstream::parse_length(part).ok_or("invalid Content-Length")?;
            if length.is_some_and(|l| l != n) {
                return Err("conflicting Content-Length values");
            }
            length = Some(n);
        }
    }
    Ok(match length {
        None | Some(0) => BodyState::Done,
        Some(n) => BodyState::Length(n),
    })
}

fn reason(e: httparse::Error) -> &'static str {
    match e {
        httparse::Error::HeaderName => "invalid header name",
        httparse::Error::HeaderValue => "invalid header value",
        httparse::Error::NewLine => "invalid line ending",
        httparse::Error::Status | httparse::Error::Token => "invalid request line",
        httparse::Error::Version => "invalid request line or HTTP version",
        httparse::Error::TooManyHeaders => "too many header fields",
    }
}

fn status_line(buf: &mut Vec<u8>, status: StatusCode) {
    buf.extend_from_slice(b"HTTP/1.1 ");
    buf.extend_from_slice(status.as_str().as_bytes());
    buf.push(b' ');
    buf.extend_from_slice(status.canonical_reason().unwrap_or("").as_bytes());
    buf.extend_from_slice(b"\r\n");
}

fn field(buf: &mut Vec<u8>, name: &[u8], value: &[u8]) {
    buf.extend_from_slice(name);
    buf.extend_from_slice(b": ");
    buf.extend_from_slice(value);
    buf.extend_from_slice(b"\r\n");
}

/// `n` in decimal, written at the end of `buf`.
fn decimal(buf: &mut [u8; 20], mut n: u64) -> &[u8] {
    let mut i = buf.len();
    loop {
        i -= 1;
        buf[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            return &buf[i..];
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::headers::test_head as head;

    #[test]
    fn request_framing_refuses_what_a_proxy_must_not_guess_at() {
        let v11 = Version::HTTP_11;
        type Case<'a> = (
            &'a [(&'a str, &'a str)],
            Version,
            Result<BodyState, &'a str>,
        );
        let cases: &[Case<'_>] = &[
            (&[], v11, Ok(BodyState::Done)),
            (&[("content-length", "0")], v11, Ok(BodyState::Done)),
            (&[("content-length", "12")], v11, Ok(BodyState::Length(12))),
            (
                &[("content-length", "12"), ("content-length", "12")],
                v11,
                Ok(BodyState::Length(12)),
            ),
            (&[("content-length", "7, 7")], v11, Ok(BodyState::Length(7))),
            (
                &[("content-length", "3"), ("content-length", "4")],
                v11,
                Err("conflicting Content-Length values"),
            ),
            (
                &[("content-length", "abc")],
                v11,
                Err("invalid Content-Length"),
            ),
            (
                &[("content-length", "-1")],
                v11,
                Err("invalid Content-Length"),
            ),
            (
                &[("content-length", "+5")],
                v11,
                Err("invalid Content-Length"),
            ),
            (
                &[("transfer-encoding", "chunked")],
                v11,
                Ok(BodyState::Chunked(Chunk::Size)),
            ),
            (
                &[("transfer-encoding", "gzip, Chunked")],
                v11,
                Ok(BodyState::Chunked(Chunk::Size)),
            ),
            (
                &[("transfer-encoding", "gzip")],
                v11,
                Err("Transfer-Encoding does not end in chunked"),
            ),
            (
                &[("transfer-encoding", "chunked, gzip")],
                v11,
                Err("Transfer-Encoding does not end in chunked"),
            ),
            (
                &[("content-length", "6"), ("transfer-encoding", "chunked")],
                v11,
                Err("both Content-Length and Transfer-Encoding"),
            ),
            (
                &[("transfer-encoding", "chunked")],
                Version::HTTP_10,
                Err("Transfer-Encoding in an HTTP/1.0 request"),
            ),
        ];
        for (fields, version, want) in cases {
            let (head, fields) = head(fields);
            let raw = RawFields {
                head: &head,
                fields: &fields,
            };
            assert_eq!(
                request_framing(raw, *version),
                *want,
                "{:?} {version:?}",
                String::from_utf8_lossy(&head)
            );
        }
    }

    #[test]
    fn lengths_are_written_in_decimal() {
        for n in [0, 7, 10, 1234567890, u64::MAX] {
            assert_eq!(decimal(&mut [0; 20], n), n.to_string().as_bytes());
        }
    }

    #[test]
    fn connection_tokens_are_matched_whole_and_case_blind() {
        let (h, f) = head(&[
            ("Connection", "Keep-Alive, Upgrade"),
            ("Upgrade", "websocket"),
        ]);
        let raw = RawFields {
            head: &h,
            fields: &f,
        };
        assert!(raw.has_token(b"connection", b"keep-alive"));
        assert!(raw.has_token(b"connection", b"upgrade"));
        assert!(!raw.has_token(b"connection", b"close"));
        assert_eq!(raw.upgrade(), Some(&b"websocket"[..]));
        let (h, f) = head(&[("connection", "closed")]);
        let raw = RawFields {
            head: &h,
            fields: &f,
        };
        assert!(!raw.has_token(b"connection", b"close"));
        assert_eq!(raw.upgrade(), None);
    }
}
