//! A request-smuggling guard in front of hyper's HTTP/1 parser.
//!
//! hyper accepts a request carrying both `Content-Length` and
//! `Transfer-Encoding` (it obeys Transfer-Encoding, drops Content-Length and
//! closes the connection afterwards, as RFC 9112 allows). Such a request is
//! the classic smuggling vector, and nginx answers it with 400; so do we.
//! hyper does not show the dropped header to the service, so this wrapper
//! follows the client's byte stream: it finds each request head, checks it,
//! and skips the body by its framing to find the next head. A conflicting
//! head has its final line feed replaced, which makes hyper's parser answer
//! 400 Bad Request and close the connection.
//!
//! Anything it does not understand (HTTP/2, upgrades, malformed framing) it
//! stops following and leaves to hyper, which rejects malformed input on
//! its own.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::Sleep;

/// Heads longer than this are not followed (hyper refuses them anyway).
const MAX_HEAD: usize = 128 * 1024;
const MAX_HEADERS: usize = 256;

#[derive(Debug, Clone, PartialEq, Eq)]
enum State {
    /// Waiting for (the rest of) a request head.
    Head,
    /// Skipping a body of known length.
    Fixed(u64),
    Chunked(Chunk),
    /// No longer following the stream.
    Off,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Chunk {
    /// Reading a chunk-size line; `digits` seen so far, `size` so far.
    Size {
        size: u64,
        digits: u8,
        ext: bool,
    },
    /// Expecting the LF of the chunk-size line.
    SizeLf {
        size: u64,
    },
    Data(u64),
    /// Expecting CR LF after chunk data (`seen` of them so far).
    DataEnd {
        seen: u8,
    },
    /// Reading trailer lines after the last chunk; `len` of the current one.
    Trailer {
        len: u64,
    },
}

/// Follows an HTTP/1 request stream; see the module docs.
#[derive(Debug)]
pub struct Scanner {
    state: State,
    head: Vec<u8>,
    /// Heads refused (for tests).
    pub refused: u32,
}

impl Default for Scanner {
    fn default() -> Self {
        Self {
            state: State::Head,
            head: Vec::new(),
            refused: 0,
        }
    }
}

impl Scanner {
    /// Is a request body being received?
    pub fn in_body(&self) -> bool {
        matches!(self.state, State::Fixed(_) | State::Chunked(_))
    }

    /// Looks at bytes just read from the client, before hyper sees them.
    pub fn feed(&mut self, data: &mut [u8]) {
        let mut i = 0;
        while i < data.len() {
            match &mut self.state {
                State::Off => return,
                State::Head => i = self.feed_head(data, i),
                State::Fixed(n) => {
                    let take = (*n).min((data.len() - i) as u64);
                    *n -= take;
                    i += take as usize;
                    if *n == 0 {
                        self.state = State::Head;
                    }
                }
                State::Chunked(_) => i = self.feed_chunked(data, i),
            }
        }
    }

    /// Returns the index after what it consumed.
    fn feed_head(&mut self, data: &mut [u8], start: usize) -> usize {
        let mut i = start;
        // Empty lines before a request line are allowed (RFC 9112 §2.2).
        if self.head.is_empty() {
            while i < data.len() && (data[i] == b'\r' || data[i] == b'\n') {
                i += 1;
            }
            if i == data.len() {
                return i;
            }
        }
        let from = i;
        let prior = self.head.len();
        // Find the end of the head: "\r\n\r\n" (or a bare "\n\n").
        let mut end = None;
        for j in from..data.len() {
            if data[j] == b'\n' {
                let prev = |k: usize| -> Option<u8> {
                    // Byte k positions before j, looking back into `head`.
                    let back = j.checked_sub(k);
                    match back {
                        Some(b) if b >= from => Some(data[b]),
                        _ => {
                            let over = k - (j - from);
                            prior.checked_sub(over).map(|p| self.head[p])
                        }
                    }
                };
                let lf_lf = prev(1) == Some(b'\n');
                let crlf_crlf = prev(1) == Some(b'\r') && prev(2) == Some(b'\n');
                if lf_lf || crlf_crlf {
                    end = Some(j);
                    break;
                }
            }
        }
        let Some(end) = end else {
            self.head.extend_from_slice(&data[from..]);
            if self.head.len() > MAX_HEAD {
                self.state = State::Off;
            }
            return data.len();
        };
        let verdict = if self.head.is_empty() {
            check_head(&data[from..=end])
        } else {
            self.head.extend_from_slice(&data[from..=end]);
            let v = check_head(&self.head);
            self.head.clear();
            v
        };
        match verdict {
            Verdict::Next(state) => self.state = state,
            Verdict::Refuse => {
                // A stray byte where the blank line's LF was: hyper's parser
                // rejects the head with 400 and closes the connection.
                data[end] = b'X';
                self.refused += 1;
                self.state = State::Off;
            }
        }
        end + 1
    }

    fn feed_chunked(&mut self, data: &[u8], start: usize) -> usize {
        let State::Chunked(chunk) = &mut self.state else {
            return data.len();
        };
        let mut i = start;
        while i < data.len() {
            let b = data[i];
            match chunk {
                Chunk::Size { size, digits, ext } => {
                    if *ext {
                        if b == b'\n' {
                            *chunk = after_size(*size);
                        }
                    } else if let Some(d) = (b as char).to_digit(16) {
                        if *digits >= 16 {
                            self.state = State::Off;
                            return data.len();
                        }
                        *size = *size * 16 + u64::from(d);
                        *digits += 1;
                    } else if b == b'\r' {
                        *chunk = Chunk::SizeLf { size: *size };
                    } else if b == b';' || b == b' ' || b == b'\t' {
                        *ext = true;
                    } else if b == b'\n' && *digits > 0 {
                        *chunk = after_size(*size);
                    } else {
                        self.state = State::Off;
                        return data.len();
                    }
                    i += 1;
                }
                Chunk::SizeLf { size } => {
                    if b != b'\n' {
                        self.state = State::Off;
                        return data.len();
                    }
                    *chunk = after_size(*size);
                    i += 1;
                }
                Chunk::Data(n) => {
                    let take = (*n).min((data.len() - i) as u64);
                    *n -= take;
                    i += take as usize;
                    if *n == 0 {
                        *chunk = Chunk::DataEnd { seen: 0 };
                    }
                }
                Chunk::DataEnd { seen } => {
                    let want = if *seen == 0 { b'\r' } else { b'\n' };
                    if b != want {
                        self.state = State::Off;
                        return data.len();
                    }
                    *seen += 1;
                    i += 1;
                    if *seen == 2 {
                        *chunk = Chunk::Size {
                            size: 0,
                            digits: 0,
                            ext: false,
                        };
                    }
                }
                Chunk::Trailer { len } => {
                    i += 1;
                    if b == b'\n' {
                        if *len == 0 {
                            self.state = State::Head;
                            return i;
                        }
                        *len = 0;
                    } else if b != b'\r' {
                        *len += 1;
                    }
                }
            }
        }
        i
    }
}

fn after_size(size: u64) -> Chunk {
    if size == 0 {
        Chunk::Trailer { len: 0 }
    } else {
        Chunk::Data(size)
    }
}

enum Verdict {
    Next(State),
    Refuse,
}

fn check_head(head: &[u8]) -> Verdict {
    // Left uninitialised (8 KiB less to clear per request): httparse
    // writes only the slots it fills.
    let mut slots =
        [const { std::mem::MaybeUninit::<httparse::Header<'_>>::uninit() }; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut []);
    match req.parse_with_uninit_headers(head, &mut slots) {
        Ok(httparse::Status::Complete(_)) => {}
        // Malformed or too many headers: hyper answers that itself.
        _ => return Verdict::Next(State::Off),
    }
    let (mut cl, mut te, mut upgrade) = (None::<&[u8]>, None::<&[u8]>, false);
    for h in req.headers.iter() {
        if h.name.eq_ignore_ascii_case("content-length") {
            cl = Some(h.value);
        } else if h.name.eq_ignore_ascii_case("transfer-encoding") {
            if te.is_some() {
                // Several Transfer-Encoding lines: let hyper decide the
                // framing, stop following.
                return Verdict::Next(State::Off);
            }
            te = Some(h.value);
        } else if h.name.eq_ignore_ascii_case("upgrade") {
            upgrade = true;
        }
    }
    if cl.is_some() && te.is_some() {
        return Verdict::Refuse;
    }
    if upgrade || req.method == Some("CONNECT") || req.method == Some("PRI") {
        // After a 101 (or HTTP/2's preface) the stream is no longer HTTP/1.
        return Verdict::Next(State::Off);
    }
    if let Some(te) = te {
        let last = te.rsplit(|b| *b == b',').next().unwrap_or_default();
        return if last.trim_ascii().eq_ignore_ascii_case(b"chunked") {
            Verdict::Next(State::Chunked(Chunk::Size {
                size: 0,
                digits: 0,
                ext: false,
            }))
        } else {
            Verdict::Next(State::Off)
        };
    }
    match cl {
        None => Verdict::Next(State::Head),
        Some(v) => match std::str::from_utf8(v)
            .ok()
            .and_then(|s| s.trim().parse::<u64>().ok())
        {
            Some(0) => Verdict::Next(State::Head),
            Some(n) => Verdict::Next(State::Fixed(n)),
            None => Verdict::Next(State::Off),
        },
    }
}

// === the IO wrapper ===

/// A client connection whose inbound bytes pass through a [`Scanner`], and
/// which gives up on a client that stops reading our answer, or stops
/// sending a request body it started, for longer than `stall_timeout`.
/// (Idle keep-alive connections and slow request heads are hyper's header
/// read timeout.)
pub struct GuardedIo<T> {
    inner: T,
    scanner: Scanner,
    stall_timeout: Duration,
    read_stall: Option<Pin<Box<Sleep>>>,
    write_stall: Option<Pin<Box<Sleep>>>,
}

impl<T> GuardedIo<T> {
    pub fn new(inner: T, stall_timeout: Duration) -> Self {
        Self {
            inner,
            scanner: Scanner::default(),
            stall_timeout,
            read_stall: None,
            write_stall: None,
        }
    }
}

/// Arms the stall timer on `Pending`, disarms it on progress; an expired
/// timer turns `Pending` into a timeout error.
fn watch_stall<R>(
    polled: Poll<io::Result<R>>,
    timer: &mut Option<Pin<Box<Sleep>>>,
    timeout: Duration,
    cx: &mut Context<'_>,
    what: &'static str,
) -> Poll<io::Result<R>> {
    match polled {
        Poll::Pending => {
            let t = timer.get_or_insert_with(|| Box::pin(tokio::time::sleep(timeout)));
            if t.as_mut().poll(cx).is_ready() {
                *timer = None;
                return Poll::Ready(Err(io::Error::new(io::ErrorKind::TimedOut, what)));
            }
            Poll::Pending
        }
        ready => {
            *timer = None;
            ready
        }
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for GuardedIo<T> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let me = self.get_mut();
        let before = buf.filled().len();
        let polled = Pin::new(&mut me.inner).poll_read(cx, buf);
        if let Poll::Ready(Ok(())) = polled
            && me.scanner.state != State::Off
        {
            me.scanner.feed(&mut buf.filled_mut()[before..]);
        }
        if me.scanner.in_body() {
            watch_stall(
                polled,
                &mut me.read_stall,
                me.stall_timeout,
                cx,
                "the client stopped sending its request body",
            )
        } else {
            me.read_stall = None;
            polled
        }
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for GuardedIo<T> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let me = self.get_mut();
        let polled = Pin::new(&mut me.inner).poll_write(cx, buf);
        watch_stall(
            polled,
            &mut me.write_stall,
            me.stall_timeout,
            cx,
            WRITE_STALL,
        )
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let me = self.get_mut();
        let polled = Pin::new(&mut me.inner).poll_write_vectored(cx, bufs);
        watch_stall(
            polled,
            &mut me.write_stall,
            me.stall_timeout,
            cx,
            WRITE_STALL,
        )
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let me = self.get_mut();
        let polled = Pin::new(&mut me.inner).poll_flush(cx);
        watch_stall(
            polled,
            &mut me.write_stall,
            me.stall_timeout,
            cx,
            WRITE_STALL,
        )
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

const WRITE_STALL: &str = "the client stopped reading";

#[cfg(test)]
mod tests {
    use super::*;

    /// Feeds `input` in pieces of `step` bytes; returns what hyper would see.
    fn run(input: &[u8], step: usize) -> (Vec<u8>, Scanner) {
        let mut s = Scanner::default();
        let mut out = input.to_vec();
        for piece in out.chunks_mut(step) {
            s.feed(piece);
        }
        (out, s)
    }

    const CONFLICT: &[u8] =
        b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n";

    #[test]
    fn conflicting_framing_is_refused_however_it_arrives() {
        for step in [1, 2, 3, 7, 64, 1024] {
            let (out, s) = run(CONFLICT, step);
            assert_eq!(s.refused, 1, "step {step}");
            assert_ne!(out, CONFLICT, "step {step}");
            let mut h = [httparse::EMPTY_HEADER; 16];
            assert!(
                httparse::Request::new(&mut h).parse(&out).is_err(),
                "hyper's parser must reject it (step {step})"
            );
        }
    }

    #[test]
    fn pipelined_requests_are_followed_through_bodies() {
        let mut input = Vec::new();
        input.extend_from_slice(b"\r\nGET / HTTP/1.1\r\nHost: a\r\n\r\n");
        input.extend_from_slice(
            b"POST /x HTTP/1.1\r\nHost: a\r\nContent-Length: 11\r\n\r\nhello\r\n\r\nab",
        );
        input.extend_from_slice(
            b"POST /c HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip, chunked\r\n\r\n5;ext=1\r\nhello\r\n0\r\nX-T: 1\r\n\r\n",
        );
        input.extend_from_slice(CONFLICT);
        for step in [1, 5, 13, 4096] {
            let (out, s) = run(&input, step);
            assert_eq!(s.refused, 1, "only the last request (step {step})");
            assert_eq!(out[..input.len() - 10], input[..input.len() - 10]);
        }
        // A body that looks like a conflicting head is only a body.
        let mut input = b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 79\r\n\r\n".to_vec();
        input.extend_from_slice(&CONFLICT[..79]);
        let (out, s) = run(&input, 3);
        assert_eq!((s.refused, out), (0, input));
    }

    #[test]
    fn well_formed_requests_pass_untouched() {
        for input in [
            &b"GET / HTTP/1.1\r\nHost: a\r\nContent-Length: 0\r\n\r\n"[..],
            b"GET / HTTP/1.1\nHost: a\n\n",
            b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x12\x04",
            b"GET /ws HTTP/1.1\r\nHost: a\r\nUpgrade: websocket\r\nConnection: upgrade\r\n\r\n\x81\x05hello",
        ] {
            let (out, s) = run(input, 2);
            assert_eq!((s.refused, out.as_slice()), (0, input));
        }
    }
}
