//! Upstream HTTP/1.1: the proxy's own client, driven inside the request's
//! task, and a lock-free pool of idle keep-alive connections per backend.
//!
//! Why not hyper's client: hyper runs every client connection as a task of
//! its own, so each request crossed a channel to that task, came back
//! through a oneshot and woke two tasks, and the response body was fed
//! through another channel. Here the request's own task writes the request
//! head to the socket and reads the response head and body straight from
//! it, as nginx and HAProxy do: a keep-alive request costs one `write` and
//! usually one `read`, and no other task runs. Owning the exchange also
//! tells the retry logic exactly what left: nothing (the head could not be
//! written), something but no answer yet, or an answer.
//!
//! What is implemented is the client half of RFC 9112 a proxy needs:
//! request bodies as sent by the client (`Content-Length`) or chunked (HTTP/2
//! clients, chunked uploads); response bodies by `Content-Length`, chunked
//! (trailers are read and dropped) or until close; no body for HEAD, 1xx,
//! 204 and 304; interim 1xx answers skipped; 101 hands the socket to the
//! WebSocket tunnel; keep-alive unless either side said `close`.

use std::future::poll_fn;
use std::io;
use std::mem::MaybeUninit;
use std::net::SocketAddr;
use std::pin::Pin;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use bytes::{Buf, Bytes, BytesMut};
use crossbeam_queue::ArrayQueue;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, StatusCode, Uri};
use http_body::Body;
use hyper::body::Incoming;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::clock::{self, Deadline};

/// The largest response head a backend may send.
pub const MAX_HEAD: usize = 64 * 1024;
/// The most header fields in a backend's response head.
const MAX_HEADERS: usize = 128;
/// A request body up to this size is kept while it is sent, so that the
/// request can be sent again to another backend.
pub const REPLAY_LIMIT: usize = 64 * 1024;
/// Room made in the read buffer before each read.
const READ_CHUNK: usize = 16 * 1024;
/// The longest chunk-size or trailer line accepted.
const MAX_LINE: usize = 4 * 1024;

// === connections ===

/// One keep-alive HTTP/1.1 connection to a backend.
pub struct Conn {
    io: TcpStream,
    /// Bytes read but not yet consumed.
    rbuf: BytesMut,
    /// The request head being written; kept to reuse its allocation.
    wbuf: Vec<u8>,
    /// The per-try timeout, kept with the connection (taken out while an
    /// exchange runs).
    timer: Option<Deadline>,
}

impl Conn {
    fn new(io: TcpStream) -> Self {
        Self {
            io,
            rbuf: BytesMut::with_capacity(READ_CHUNK),
            wbuf: Vec::with_capacity(1024),
            timer: None,
        }
    }

    /// [`Conn::exchange`], given up at `deadline` (`None`), on this
    /// connection's own timer.
    pub async fn exchange_by(
        &mut self,
        deadline: tokio::time::Instant,
        req: &RequestHead<'_>,
        body: &mut ReqBody<'_>,
    ) -> Option<Result<ResponseHead, ExchangeError>> {
        let mut timer = self.timer.take().unwrap_or_default();
        let outcome = tokio::select! {
            biased;
            r = self.exchange(req, body) => Some(r),
            () = timer.until(deadline) => None,
        };
        self.timer = Some(timer);
        outcome
    }

    /// An idle connection can carry another request when the backend has
    /// neither closed it nor sent anything unasked. Reads nothing from the
    /// kernel unless the socket was reported readable.
    fn alive(&self) -> bool {
        if !self.rbuf.is_empty() {
            return false;
        }
        let mut probe = [0u8; 1];
        matches!(self.io.try_read(&mut probe), Err(e) if e.kind() == io::ErrorKind::WouldBlock)
    }

    /// Sends one request and reads its answer's head, skipping interim 1xx
    /// answers (but not 101).
    pub async fn exchange(
        &mut self,
        req: &RequestHead<'_>,
        body: &mut ReqBody<'_>,
    ) -> Result<ResponseHead, ExchangeError> {
        let chunked = body.chunked();
        encode_head(&mut self.wbuf, req, chunked);
        self.io
            .write_all(&self.wbuf)
            .await
            .map_err(ExchangeError::Unsent)?;
        body.send(self, chunked).await?;
        let is_head = *req.method == Method::HEAD;
        let mut received = false;
        loop {
            if !self.rbuf.is_empty() {
                received = true;
                if let Some(head) = parse_head(&mut self.rbuf, is_head)? {
                    if head.status.is_informational()
                        && head.status != StatusCode::SWITCHING_PROTOCOLS
                    {
                        continue;
                    }
                    return Ok(head);
                }
                if self.rbuf.len() >= MAX_HEAD {
                    return Err(ExchangeError::Invalid("response head too large"));
                }
            }
            self.rbuf.reserve(READ_CHUNK);
            match self.io.read_buf(&mut self.rbuf).await {
                Ok(0) if received => {
                    return Err(ExchangeError::Invalid("connection closed within the head"));
                }
                Ok(0) => {
                    return Err(ExchangeError::Reset(io::ErrorKind::UnexpectedEof.into()));
                }
                Ok(_) => {}
                Err(_) if received => {
                    return Err(ExchangeError::Invalid("connection failed within the head"));
                }
                Err(e) => return Err(ExchangeError::Reset(e)),
            }
        }
    }

    async fn write_data(&mut self, data: &Bytes, chunked: bool) -> io::Result<()> {
        if !chunked {
            return self.io.write_all(data).await;
        }
        self.wbuf.clear();
        chunk_size_line(&mut self.wbuf, data.len());
        if data.len() <= READ_CHUNK {
            // One write for the chunk: size line, data and CRLF.
            self.wbuf.extend_from_slice(data);
            self.wbuf.extend_from_slice(b"\r\n");
            return self.io.write_all(&self.wbuf).await;
        }
        self.io.write_all(&self.wbuf).await?;
        self.io.write_all(data).await?;
        self.io.write_all(b"\r\n").await
    }

    /// The response body that follows `head` on this connection.
    pub fn into_body(self, head: &ResponseHead) -> UpstreamBody {
        UpstreamBody {
            conn: Some(self),
            framing: head.framing,
            keep_alive: head.keep_alive,
        }
    }

    /// The socket and whatever the backend already sent past the head,
    /// for a tunnel after 101.
    pub fn into_parts(self) -> (TcpStream, BytesMut) {
        (self.io, self.rbuf)
    }

    fn poll_fill(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<usize>> {
        self.rbuf.reserve(READ_CHUNK);
        tokio_util::io::poll_read_buf(Pin::new(&mut self.io), cx, &mut self.rbuf)
    }
}

/// What an exchange sends: the request line and the fields to forward
/// (already rewritten for the backend), each line ending in CRLF, without
/// the blank line that ends the head.
pub struct RequestHead<'a> {
    pub method: &'a Method,
    pub lines: &'a [u8],
}

/// The request line (`uri` in origin form) and `headers` as
/// [`RequestHead::lines`].
pub fn encode_lines(buf: &mut Vec<u8>, method: &Method, uri: &Uri, headers: &HeaderMap) {
    buf.clear();
    buf.extend_from_slice(method.as_str().as_bytes());
    buf.push(b' ');
    let target = uri.path_and_query().map_or("/", |pq| pq.as_str());
    buf.extend_from_slice(target.as_bytes());
    buf.extend_from_slice(b" HTTP/1.1\r\n");
    for (name, value) in headers {
        buf.extend_from_slice(name.as_str().as_bytes());
        buf.extend_from_slice(b": ");
        buf.extend_from_slice(value.as_bytes());
        buf.extend_from_slice(b"\r\n");
    }
}

fn encode_head(buf: &mut Vec<u8>, req: &RequestHead<'_>, chunked: bool) {
    buf.clear();
    buf.extend_from_slice(req.lines);
    if chunked {
        buf.extend_from_slice(b"transfer-encoding: chunked\r\n");
    }
    buf.extend_from_slice(b"\r\n");
}

#[derive(Debug, thiserror::Error)]
pub enum ExchangeError {
    /// The request head could not be written: the backend got nothing it
    /// could act on.
    #[error("sending the request head failed: {0}")]
    Unsent(io::Error),
    /// The client's own body could not be read (it went away, or broke its
    /// framing): not the backend's fault.
    #[error("reading the client's request body failed: {0}")]
    ClientBody(BodyError),
    /// The request (or part of it) left, and the connection failed before
    /// any byte of an answer.
    #[error("connection failed before the response: {0}")]
    Reset(io::Error),
    /// The backend answered, but not with a valid HTTP/1.x response head.
    #[error("invalid response: {0}")]
    Invalid(&'static str),
}

// === request bodies ===

pub type BodyError = Box<dyn std::error::Error + Send + Sync>;

/// Where a client's request body comes from: hyper's HTTP/2 stream, or the
/// proxy's own HTTP/1.1 connection ([`crate::h1`]).
pub enum Source<'a> {
    H2(Incoming),
    H1(crate::h1::RequestBody<'a>),
}

impl Source<'_> {
    fn is_end(&self) -> bool {
        match self {
            Source::H2(incoming) => incoming.is_end_stream(),
            Source::H1(body) => body.is_end(),
        }
    }

    /// The next piece of the body; `None` at its end. Trailers of a
    /// chunked upload are not forwarded.
    async fn next(&mut self) -> Option<Result<Bytes, BodyError>> {
        match self {
            Source::H2(incoming) => loop {
                let frame = poll_fn(|cx| Pin::new(&mut *incoming).poll_frame(cx)).await?;
                match frame {
                    Err(e) => return Some(Err(e.into())),
                    Ok(frame) => match frame.into_data() {
                        Ok(d) if !d.is_empty() => return Some(Ok(d)),
                        _ => continue,
                    },
                }
            },
            Source::H1(body) => body.next().await,
        }
    }
}

/// The client's request body as the exchanges send it. Up to
/// [`REPLAY_LIMIT`] bytes of what was read are kept, so a request whose
/// body already left can be sent again on another backend.
pub struct ReqBody<'a> {
    /// What was read from the client so far, while `complete` holds.
    kept: Vec<Bytes>,
    kept_len: usize,
    /// `kept` holds every byte read from the client so far.
    complete: bool,
    /// What the client has not sent yet.
    rest: Option<Source<'a>>,
    /// Sent as is, framed by the client's `Content-Length`.
    length_framed: bool,
}

impl<'a> ReqBody<'a> {
    /// `content_length`: the forwarded headers carry a `Content-Length`
    /// (otherwise a body is sent chunked).
    pub fn new(source: Source<'a>, content_length: bool) -> Self {
        let rest = (!source.is_end()).then_some(source);
        Self {
            kept: Vec::new(),
            kept_len: 0,
            complete: true,
            rest,
            length_framed: content_length,
        }
    }

    fn is_empty(&self) -> bool {
        self.rest.is_none() && self.kept.is_empty()
    }

    fn chunked(&self) -> bool {
        !self.is_empty() && !self.length_framed
    }

    /// The whole body can be sent again.
    pub fn replayable(&self) -> bool {
        self.complete
    }

    async fn send(&mut self, conn: &mut Conn, chunked: bool) -> Result<(), ExchangeError> {
        if self.is_empty() {
            return Ok(());
        }
        if !self.complete {
            return Err(ExchangeError::Invalid(
                "the request body was too large to send again",
            ));
        }
        let reset = ExchangeError::Reset;
        for data in &self.kept {
            conn.write_data(data, chunked).await.map_err(reset)?;
        }
        while let Some(rest) = &mut self.rest {
            let data = match rest.next().await {
                None => {
                    self.rest = None;
                    break;
                }
                Some(Err(e)) => return Err(ExchangeError::ClientBody(e)),
                Some(Ok(data)) => data,
            };
            if self.complete && self.kept_len + data.len() <= REPLAY_LIMIT {
                self.kept_len += data.len();
                self.kept.push(data.clone());
            } else {
                self.complete = false;
                self.kept = Vec::new();
            }
            conn.write_data(&data, chunked).await.map_err(reset)?;
        }
        if chunked {
            conn.io.write_all(b"0\r\n\r\n").await.map_err(reset)?;
        }
        Ok(())
    }
}

// === response heads ===

/// How a response body is delimited (RFC 9112 §6.3).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Framing {
    /// No body: HEAD, 1xx, 204, 304.
    Empty,
    /// `Content-Length`: this many bytes left.
    Length(u64),
    Chunked(Chunk),
    /// Until the backend closes the connection.
    Close,
}

/// Where a chunked body's decoder stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Chunk {
    Size,
    Data(u64),
    DataEnd,
    Trailers,
    Done,
}

/// A backend's response head.
#[derive(Debug)]
pub struct ResponseHead {
    pub status: StatusCode,
    pub headers: HeaderMap,
    framing: Framing,
    keep_alive: bool,
}

/// Parses one response head off the front of `buf`, or `None` while it is
/// incomplete. Header values share the head's bytes.
fn parse_head(
    buf: &mut BytesMut,
    head_request: bool,
) -> Result<Option<ResponseHead>, ExchangeError> {
    // (name start, name end, value start, value end) within the head,
    // which is shorter than MAX_HEAD.
    let mut spans = [(0u32, 0u32, 0u32, 0u32); MAX_HEADERS];
    let (len, code, minor, count) = {
        // Left uninitialised: httparse writes only the slots it fills.
        let mut slots = [const { MaybeUninit::<httparse::Header<'_>>::uninit() }; MAX_HEADERS];
        let mut resp = httparse::Response::new(&mut []);
        let parsed = httparse::ParserConfig::default()
            .parse_response_with_uninit_headers(&mut resp, buf, &mut slots);
        let len = match parsed {
            Ok(httparse::Status::Complete(n)) => n,
            Ok(httparse::Status::Partial) => return Ok(None),
            Err(httparse::Error::TooManyHeaders) => {
                return Err(ExchangeError::Invalid("too many header fields"));
            }
            Err(_) => return Err(ExchangeError::Invalid("not an HTTP/1.x response head")),
        };
        let base = buf.as_ptr() as usize;
        for (span, h) in spans.iter_mut().zip(resp.headers.iter()) {
            let name = (h.name.as_ptr() as usize - base) as u32;
            let value = (h.value.as_ptr() as usize - base) as u32;
            *span = (
                name,
                name + h.name.len() as u32,
                value,
                value + h.value.len() as u32,
            );
        }
        (
            len,
            resp.code.unwrap_or(0),
            resp.version.unwrap_or(1),
            resp.headers.len(),
        )
    };
    if len >= MAX_HEAD {
        return Err(ExchangeError::Invalid("response head too large"));
    }
    let status = StatusCode::from_u16(code)
        .map_err(|_| ExchangeError::Invalid("status code out of range"))?;
    let head = buf.split_to(len).freeze();

    let mut headers = HeaderMap::with_capacity(count);
    // HTTP/1.1 keeps the connection unless told; 1.0 only when asked.
    let mut keep_alive = minor == 1;
    let mut transfer_encoding = false;
    let mut chunked = false;
    let mut length: Option<u64> = None;
    for &(ns, ne, vs, ve) in &spans[..count] {
        let (ns, ne, vs, ve) = (ns as usize, ne as usize, vs as usize, ve as usize);
        let name = HeaderName::from_bytes(&head[ns..ne])
            .map_err(|_| ExchangeError::Invalid("invalid header name"))?;
        let value = HeaderValue::from_maybe_shared(head.slice(vs..ve))
            .map_err(|_| ExchangeError::Invalid("invalid header value"))?;
        if name == header::CONNECTION {
            for token in value.as_bytes().split(|&b| b == b',') {
                let token = token.trim_ascii();
                if token.eq_ignore_ascii_case(b"close") {
                    keep_alive = false;
                } else if token.eq_ignore_ascii_case(b"keep-alive") && minor == 0 {
                    keep_alive = true;
                }
            }
        } else if name == header::TRANSFER_ENCODING {
            transfer_encoding = true;
            // Chunked must be the last coding for the body to be delimited.
            chunked = value
                .as_bytes()
                .rsplit(|&b| b == b',')
                .next()
                .is_some_and(|c| c.trim_ascii().eq_ignore_ascii_case(b"chunked"));
        } else if name == header::CONTENT_LENGTH {
            let n = parse_length(value.as_bytes())
                .ok_or(ExchangeError::Invalid("invalid Content-Length"))?;
            if length.is_some_and(|l| l != n) {
                return Err(ExchangeError::Invalid("conflicting Content-Length values"));
            }
            length = Some(n);
        }
        headers.append(name, value);
    }

    let no_body = head_request
        || status.is_informational()
        || status == StatusCode::NO_CONTENT
        || status == StatusCode::NOT_MODIFIED;
    let framing = if no_body {
        Framing::Empty
    } else if transfer_encoding {
        // Transfer-Encoding overrides Content-Length (RFC 9112 §6.3).
        headers.remove(header::CONTENT_LENGTH);
        if chunked {
            Framing::Chunked(Chunk::Size)
        } else {
            Framing::Close
        }
    } else if let Some(n) = length {
        Framing::Length(n)
    } else {
        Framing::Close
    };
    if framing == Framing::Close || status == StatusCode::SWITCHING_PROTOCOLS {
        keep_alive = false;
    }
    Ok(Some(ResponseHead {
        status,
        headers,
        framing,
        keep_alive,
    }))
}

/// A Content-Length value: digits only, and no overflow.
pub(crate) fn parse_length(v: &[u8]) -> Option<u64> {
    let v = v.trim_ascii();
    if v.is_empty() || v.len() > 19 || !v.iter().all(u8::is_ascii_digit) {
        return None;
    }
    std::str::from_utf8(v).ok()?.parse().ok()
}

// === response bodies ===

/// A response body read from the backend's socket by whoever polls it.
pub struct UpstreamBody {
    conn: Option<Conn>,
    framing: Framing,
    keep_alive: bool,
}

impl UpstreamBody {
    pub fn is_end(&self) -> bool {
        matches!(
            self.framing,
            Framing::Empty | Framing::Length(0) | Framing::Chunked(Chunk::Done)
        )
    }

    /// The exact length still to come, when known.
    pub fn remaining(&self) -> Option<u64> {
        match self.framing {
            Framing::Empty => Some(0),
            Framing::Length(n) => Some(n),
            _ => None,
        }
    }

    /// The connection, once the body ended and it can carry another request.
    pub fn take_reusable(&mut self) -> Option<Conn> {
        if self.is_end() && self.keep_alive {
            self.conn.take().filter(|c| c.rbuf.is_empty())
        } else {
            None
        }
    }

    pub fn poll_data(&mut self, cx: &mut Context<'_>) -> Poll<Option<io::Result<Bytes>>> {
        let Some(conn) = self.conn.as_mut() else {
            return Poll::Ready(None);
        };
        loop {
            match &mut self.framing {
                Framing::Empty | Framing::Length(0) | Framing::Chunked(Chunk::Done) => {
                    return Poll::Ready(None);
                }
                Framing::Length(left) => {
                    if !conn.rbuf.is_empty() {
                        let n = (*left).min(conn.rbuf.len() as u64) as usize;
                        *left -= n as u64;
                        return Poll::Ready(Some(Ok(conn.rbuf.split_to(n).freeze())));
                    }
                    if ready!(conn.poll_fill(cx))? == 0 {
                        return Poll::Ready(Some(Err(closed_mid_body())));
                    }
                }
                Framing::Close => {
                    if !conn.rbuf.is_empty() {
                        return Poll::Ready(Some(Ok(conn.rbuf.split().freeze())));
                    }
                    if ready!(conn.poll_fill(cx))? == 0 {
                        self.framing = Framing::Empty;
                        return Poll::Ready(None);
                    }
                }
                Framing::Chunked(state) => match decode_chunk(state, &mut conn.rbuf)? {
                    Some(data) => return Poll::Ready(Some(Ok(data))),
                    None if *state == Chunk::Done => return Poll::Ready(None),
                    None => {
                        if ready!(conn.poll_fill(cx))? == 0 {
                            return Poll::Ready(Some(Err(closed_mid_body())));
                        }
                    }
                },
            }
        }
    }
}

/// A chunk's size line: its length in lowercase hex, then CRLF.
pub(crate) fn chunk_size_line(buf: &mut Vec<u8>, len: usize) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut digits = [0u8; 16];
    let mut i = digits.len();
    let mut n = len;
    loop {
        i -= 1;
        digits[i] = HEX[n & 0xf];
        n >>= 4;
        if n == 0 {
            break;
        }
    }
    buf.extend_from_slice(&digits[i..]);
    buf.extend_from_slice(b"\r\n");
}

fn closed_mid_body() -> io::Error {
    io::Error::new(
        io::ErrorKind::UnexpectedEof,
        "the backend closed the connection within the body",
    )
}

fn bad_chunk(what: &'static str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, what)
}

/// Advances a chunked body's decoder over `buf`: the next piece of data,
/// or `None` when it needs more bytes (or is done).
pub(crate) fn decode_chunk(state: &mut Chunk, buf: &mut BytesMut) -> io::Result<Option<Bytes>> {
    loop {
        match *state {
            Chunk::Done => return Ok(None),
            Chunk::Size => {
                let Some(line) = take_line(buf)? else {
                    return Ok(None);
                };
                // Chunk extensions (after ';') are ignored.
                let digits = line[..]
                    .split(|&b| b == b';')
                    .next()
                    .unwrap_or_default()
                    .trim_ascii();
                if digits.is_empty() || digits.len() > 15 {
                    return Err(bad_chunk("invalid chunk size"));
                }
                let size = std::str::from_utf8(digits)
                    .ok()
                    .and_then(|s| u64::from_str_radix(s, 16).ok())
                    .ok_or_else(|| bad_chunk("invalid chunk size"))?;
                *state = if size == 0 {
                    Chunk::Trailers
                } else {
                    Chunk::Data(size)
                };
            }
            Chunk::Data(left) => {
                if buf.is_empty() {
                    return Ok(None);
                }
                let n = left.min(buf.len() as u64) as usize;
                *state = if n as u64 == left {
                    Chunk::DataEnd
                } else {
                    Chunk::Data(left - n as u64)
                };
                return Ok(Some(buf.split_to(n).freeze()));
            }
            Chunk::DataEnd => {
                if buf.len() < 2 {
                    return Ok(None);
                }
                if &buf[..2] != b"\r\n" {
                    return Err(bad_chunk("chunk data not followed by CRLF"));
                }
                buf.advance(2);
                *state = Chunk::Size;
            }
            Chunk::Trailers => {
                let Some(line) = take_line(buf)? else {
                    return Ok(None);
                };
                // Trailer fields are dropped; an empty line ends the body.
                if line.is_empty() {
                    *state = Chunk::Done;
                }
            }
        }
    }
}

/// One CRLF-terminated line off the front of `buf`, without its CRLF.
fn take_line(buf: &mut BytesMut) -> io::Result<Option<BytesMut>> {
    match buf.iter().position(|&b| b == b'\n') {
        Some(i) => {
            let mut line = buf.split_to(i + 1);
            line.truncate(i);
            if line.last() == Some(&b'\r') {
                line.truncate(i - 1);
            }
            Ok(Some(line))
        }
        None if buf.len() > MAX_LINE => Err(bad_chunk("chunk line too long")),
        None => Ok(None),
    }
}

// === the pool ===

struct Idle {
    conn: Conn,
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

    /// An idle connection that is still open and younger than
    /// `max_idle_for`, if any.
    pub fn take(&self, max_idle_for: Duration) -> Option<Conn> {
        while let Some(idle) = self.idle.pop() {
            let idle_for = clock::now_ms().saturating_sub(idle.since_ms);
            if u128::from(idle_for) < max_idle_for.as_millis() && idle.conn.alive() {
                return Some(idle.conn);
            }
            // Closed or stale: dropping it closes the connection.
        }
        None
    }

    /// Returns a connection whose response was read to the end.
    pub fn put(&self, conn: Conn) {
        // Full: the connections already idle stay, this one closes.
        let _ = self.idle.push(Idle {
            conn,
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
    Io(#[from] io::Error),
}

/// Opens a new connection to a backend.
pub async fn connect(
    addr: Option<SocketAddr>,
    host_port: &str,
    timeout: Duration,
) -> Result<Conn, ConnectError> {
    let stream = tokio::time::timeout(timeout, async {
        match addr {
            Some(a) => TcpStream::connect(a).await,
            None => TcpStream::connect(host_port).await,
        }
    })
    .await
    .map_err(|_| ConnectError::Timeout(timeout))??;
    let _ = stream.set_nodelay(true);
    Ok(Conn::new(stream))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunk_size_lines_are_lowercase_hex() {
        for (len, want) in [
            (0, "0\r\n"),
            (9, "9\r\n"),
            (255, "ff\r\n"),
            (4096, "1000\r\n"),
        ] {
            let mut buf = Vec::new();
            chunk_size_line(&mut buf, len);
            assert_eq!(buf, want.as_bytes());
        }
    }

    fn parse(raw: &[u8], head_request: bool) -> Result<Option<ResponseHead>, ExchangeError> {
        let mut buf = BytesMut::from(raw);
        parse_head(&mut buf, head_request)
    }

    #[test]
    fn framing_follows_rfc_9112() {
        let cases: [(&[u8], bool, Framing, bool); 9] = [
            (
                b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n",
                false,
                Framing::Length(5),
                true,
            ),
            (
                b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n",
                true,
                Framing::Empty,
                true,
            ),
            (
                b"HTTP/1.1 204 No Content\r\n\r\n",
                false,
                Framing::Empty,
                true,
            ),
            (
                b"HTTP/1.1 304 Not Modified\r\nContent-Length: 9\r\n\r\n",
                false,
                Framing::Empty,
                true,
            ),
            (
                b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\nContent-Length: 3\r\n\r\n",
                false,
                Framing::Chunked(Chunk::Size),
                true,
            ),
            (
                b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\n",
                false,
                Framing::Close,
                false,
            ),
            (b"HTTP/1.1 200 OK\r\n\r\n", false, Framing::Close, false),
            (
                b"HTTP/1.0 200 OK\r\nContent-Length: 1\r\n\r\n",
                false,
                Framing::Length(1),
                false,
            ),
            (
                b"HTTP/1.0 200 OK\r\nConnection: Keep-Alive\r\nContent-Length: 1\r\n\r\n",
                false,
                Framing::Length(1),
                true,
            ),
        ];
        for (raw, head, framing, keep_alive) in cases {
            let h = parse(raw, head).unwrap().unwrap();
            let text = String::from_utf8_lossy(raw);
            assert_eq!(h.framing, framing, "{text}");
            assert_eq!(h.keep_alive, keep_alive, "{text}");
        }
        let close = parse(
            b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 0\r\n\r\n",
            false,
        )
        .unwrap()
        .unwrap();
        assert!(!close.keep_alive);
        let chunked = parse(
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n",
            false,
        )
        .unwrap()
        .unwrap();
        assert!(
            !chunked.headers.contains_key(header::CONTENT_LENGTH),
            "Transfer-Encoding overrides Content-Length"
        );
    }

    #[test]
    fn bad_heads_are_named() {
        let invalid = |raw: &[u8]| match parse(raw, false) {
            Err(ExchangeError::Invalid(why)) => why,
            other => panic!("{}: {other:?}", String::from_utf8_lossy(raw)),
        };
        assert_eq!(
            invalid(b"SSH-2.0-OpenSSH\r\n\r\n"),
            "not an HTTP/1.x response head"
        );
        assert_eq!(
            invalid(b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n"),
            "conflicting Content-Length values"
        );
        assert_eq!(
            invalid(b"HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\n"),
            "invalid Content-Length"
        );
        let mut many = b"HTTP/1.1 200 OK\r\n".to_vec();
        for i in 0..=MAX_HEADERS {
            many.extend_from_slice(format!("x-{i}: y\r\n").as_bytes());
        }
        many.extend_from_slice(b"\r\n");
        assert_eq!(invalid(&many), "too many header fields");
        assert!(
            parse(b"HTTP/1.1 200 OK\r\nContent-Le", false)
                .unwrap()
                .is_none()
        );
    }

    #[test]
    fn heads_keep_their_fields_and_leave_the_body() {
        let mut buf = BytesMut::from(
            &b"HTTP/1.1 201 Created\r\nX-Served-By: a\r\nSet-Cookie: a=1\r\nSet-Cookie: b=2\r\nContent-Length: 2\r\n\r\nok"[..],
        );
        let h = parse_head(&mut buf, false).unwrap().unwrap();
        assert_eq!(h.status, StatusCode::CREATED);
        assert_eq!(h.headers["x-served-by"], "a");
        assert_eq!(h.headers.get_all("set-cookie").iter().count(), 2);
        assert_eq!(&buf[..], b"ok");
    }

    #[test]
    fn chunked_bodies_decode_across_any_split() {
        let raw: &[u8] = b"5;ext=1\r\nhello\r\n7\r\n, world\r\n0\r\nx-trailer: dropped\r\n\r\nNEXT";
        // Fed one byte at a time and all at once, the output is the same.
        for step in [1, 3, raw.len()] {
            let mut state = Chunk::Size;
            let mut buf = BytesMut::new();
            let mut out = Vec::new();
            for piece in raw.chunks(step) {
                buf.extend_from_slice(piece);
                while let Some(d) = decode_chunk(&mut state, &mut buf).unwrap() {
                    out.extend_from_slice(&d);
                }
                if state == Chunk::Done {
                    break;
                }
            }
            assert_eq!(state, Chunk::Done, "step {step}");
            assert_eq!(out, b"hello, world", "step {step}");
        }
        let mut state = Chunk::Size;
        let mut buf = BytesMut::from(&b"zz\r\n"[..]);
        assert!(decode_chunk(&mut state, &mut buf).is_err());
        let mut state = Chunk::Size;
        let mut buf = BytesMut::from(&b"2\r\nabXY"[..]);
        assert_eq!(
            &decode_chunk(&mut state, &mut buf).unwrap().unwrap()[..],
            b"ab"
        );
        assert!(
            decode_chunk(&mut state, &mut buf).is_err(),
            "data must end in CRLF"
        );
    }

    #[test]
    fn request_heads_are_origin_form_with_chunked_framing_when_asked() {
        let mut headers = HeaderMap::new();
        headers.insert(header::HOST, HeaderValue::from_static("shop.test"));
        headers.append("x-a", HeaderValue::from_static("1"));
        let uri: Uri = "/cart?id=7".parse().unwrap();
        let mut lines = Vec::new();
        encode_lines(&mut lines, &Method::POST, &uri, &headers);
        let head = RequestHead {
            method: &Method::POST,
            lines: &lines,
        };
        let mut buf = Vec::new();
        encode_head(&mut buf, &head, true);
        assert_eq!(
            String::from_utf8(buf).unwrap(),
            "POST /cart?id=7 HTTP/1.1\r\nhost: shop.test\r\nx-a: 1\r\ntransfer-encoding: chunked\r\n\r\n"
        );
    }
}
