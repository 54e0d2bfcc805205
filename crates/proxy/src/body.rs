//! Client request bodies as the request path reads them: from the proxy's
//! own HTTP/1 connection ([`Inbound`]) or from hyper's HTTP/2 stream, and
//! [`ReqBody`], which sends them on, keeps what it may need to send again,
//! and enforces the pool's size limit and the length the head announced.
//!
//! Everything that goes wrong here is the client's doing ([`ClientFault`]):
//! it is answered 408, 413 or 400 (or the connection is closed), and it is
//! never counted against a backend.

use std::future::poll_fn;
use std::io;
use std::pin::Pin;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use http_body::Body as _;
use hyper::body::Incoming;
use tandem_http::chunked::ChunkError;
use tandem_http::{BodyDecoder, Piece, UpstreamFraming};
use tokio::io::AsyncReadExt;

use crate::stream::ClientIo;

/// Room made in the read buffer before each read.
pub const READ_CHUNK: usize = 8 * 1024;
/// A request body up to this size is kept while it is sent, so that the
/// request can be sent again to another backend.
pub const REPLAY_LIMIT: usize = 64 * 1024;

/// Why a client's body could not be read: the client's fault.
#[derive(Debug, thiserror::Error)]
pub enum ClientFault {
    /// It stopped sending for the stall timeout, or the whole request took
    /// longer than the pool allows while the proxy waited for its body.
    #[error("the client stopped sending its request body")]
    Stalled,
    #[error("the client closed the connection within its request body")]
    Closed,
    #[error("the request body's framing is broken: {0}")]
    Malformed(&'static str),
    #[error("the request body is larger than the pool allows")]
    TooLarge,
    #[error("reading the request body failed: {0}")]
    Io(io::Error),
}

impl From<ChunkError> for ClientFault {
    fn from(e: ChunkError) -> Self {
        let why = match e {
            ChunkError::Size => "invalid chunk size",
            ChunkError::Extension => "invalid chunk extension",
            ChunkError::LineEnd => "chunk line not ended by CRLF",
            ChunkError::LineTooLong => "chunk line too long",
            ChunkError::DataEnd => "chunk data not followed by CRLF",
            ChunkError::Trailer => "invalid trailer field",
            ChunkError::TrailersTooLarge => "trailer section too large",
        };
        ClientFault::Malformed(why)
    }
}

// === the client's HTTP/1 connection ===

/// A client's HTTP/1 connection: its socket, what was read from it, and
/// where the current request's body stands.
pub struct Inbound {
    pub io: ClientIo,
    pub rbuf: BytesMut,
    pub body: BodyDecoder,
    /// The client waits for `100 Continue` before it sends the body.
    pub expect_continue: bool,
    /// The longest the client may go silent mid-body.
    pub stall: Duration,
}

impl Inbound {
    pub fn new(io: ClientIo, stall: Duration) -> Self {
        Self {
            io,
            rbuf: BytesMut::with_capacity(READ_CHUNK),
            body: BodyDecoder::Done,
            expect_continue: false,
            stall,
        }
    }

    /// Skips what is left of the request body if it is already in the
    /// buffer. Returns whether the body is behind us.
    pub fn skip_buffered_body(&mut self) -> bool {
        loop {
            match self.body.decode(&mut self.rbuf) {
                Ok(Piece::Data(_)) => {}
                Ok(Piece::End) => return true,
                Ok(Piece::NeedMore) | Err(_) => return false,
            }
        }
    }

    /// The next piece of the body; `None` at its end.
    async fn next(&mut self) -> Option<Result<Bytes, ClientFault>> {
        if self.expect_continue {
            self.expect_continue = false;
            let interim = b"HTTP/1.1 100 Continue\r\n\r\n";
            if let Err(e) = self.io.write_all_within(interim, self.stall).await {
                return Some(Err(ClientFault::Io(e)));
            }
        }
        loop {
            match self.body.decode(&mut self.rbuf) {
                Ok(Piece::Data(data)) => return Some(Ok(data)),
                Ok(Piece::End) => return None,
                Err(e) => return Some(Err(e.into())),
                Ok(Piece::NeedMore) => {}
            }
            self.rbuf.reserve(READ_CHUNK);
            match tokio::time::timeout(self.stall, self.io.read_buf(&mut self.rbuf)).await {
                Ok(Ok(0)) => return Some(Err(ClientFault::Closed)),
                Ok(Ok(_)) => {}
                Ok(Err(e)) => return Some(Err(ClientFault::Io(e))),
                Err(_) => return Some(Err(ClientFault::Stalled)),
            }
        }
    }
}

// === either protocol ===

/// Where a client's request body comes from.
pub enum ClientBody<'a> {
    H1(&'a mut Inbound),
    H2(Incoming),
}

impl ClientBody<'_> {
    fn is_end(&self) -> bool {
        match self {
            ClientBody::H1(c) => c.body.is_done(),
            ClientBody::H2(incoming) => incoming.is_end_stream(),
        }
    }

    /// The next piece of the body; `None` at its end. Trailers are not
    /// forwarded.
    async fn next(&mut self) -> Option<Result<Bytes, ClientFault>> {
        match self {
            ClientBody::H1(c) => c.next().await,
            ClientBody::H2(incoming) => loop {
                let frame = poll_fn(|cx| Pin::new(&mut *incoming).poll_frame(cx)).await?;
                match frame {
                    // hyper's HTTP/2 stream checks `content-length` against
                    // the DATA frames; a stream the client broke is its own.
                    Err(e) => {
                        return Some(Err(ClientFault::Io(io::Error::other(e))));
                    }
                    Ok(frame) => match frame.into_data() {
                        Ok(d) if !d.is_empty() => return Some(Ok(d)),
                        _ => continue,
                    },
                }
            },
        }
    }
}

// === what exchanges send ===

/// The client's request body as exchanges send it upstream, framed as the
/// proxy decided ([`UpstreamFraming`]). Up to [`REPLAY_LIMIT`] bytes of what
/// was read are kept, so a request whose body already left can be sent
/// again.
pub struct ReqBody<'a> {
    /// What was read from the client so far, while `complete` holds.
    kept: Vec<Bytes>,
    kept_len: usize,
    /// `kept` holds every byte read from the client so far.
    complete: bool,
    /// What the client has not sent yet.
    rest: Option<ClientBody<'a>>,
    framing: UpstreamFraming,
    /// Bytes read from the client so far.
    received: u64,
    /// The pool's body limit (0: none).
    limit: u64,
}

impl<'a> ReqBody<'a> {
    pub fn new(source: ClientBody<'a>, framing: UpstreamFraming, limit: u64) -> Self {
        let rest = (!source.is_end()).then_some(source);
        Self {
            kept: Vec::new(),
            kept_len: 0,
            complete: true,
            rest,
            framing,
            received: 0,
            limit,
        }
    }

    pub fn framing(&self) -> UpstreamFraming {
        self.framing
    }

    /// Nothing left to read from the client and nothing kept.
    pub fn is_empty(&self) -> bool {
        self.rest.is_none() && self.kept.is_empty()
    }

    /// The whole body can be sent again.
    pub fn replayable(&self) -> bool {
        self.complete
    }

    /// The pieces kept from earlier tries, to send first.
    pub fn kept(&self) -> &[Bytes] {
        &self.kept
    }

    /// The next piece read from the client (`None` at the end), checked
    /// against the limit and the announced length.
    pub async fn next_new(&mut self) -> Option<Result<Bytes, ClientFault>> {
        let rest = self.rest.as_mut()?;
        let data = match rest.next().await {
            None => {
                self.rest = None;
                if let UpstreamFraming::Length(n) = self.framing
                    && self.received != n
                {
                    return Some(Err(ClientFault::Malformed(
                        "the body is shorter than its content-length",
                    )));
                }
                return None;
            }
            Some(Err(e)) => return Some(Err(e)),
            Some(Ok(data)) => data,
        };
        self.received += data.len() as u64;
        if self.limit != 0 && self.received > self.limit {
            return Some(Err(ClientFault::TooLarge));
        }
        let longer = ClientFault::Malformed("the body is longer than its content-length");
        match self.framing {
            UpstreamFraming::Chunked => {}
            UpstreamFraming::None => return Some(Err(longer)),
            UpstreamFraming::Length(n) if self.received > n => return Some(Err(longer)),
            // The last byte completes the request for the backend: it goes
            // only once the client's body has ended right there (an HTTP/2
            // stream could still send more than it announced).
            UpstreamFraming::Length(n) if self.received == n => match rest.next().await {
                None => self.rest = None,
                Some(Ok(_)) => return Some(Err(longer)),
                Some(Err(e)) => return Some(Err(e)),
            },
            UpstreamFraming::Length(_) => {}
        }
        if self.complete && self.kept_len + data.len() <= REPLAY_LIMIT {
            self.kept_len += data.len();
            self.kept.push(data.clone());
        } else {
            self.complete = false;
            self.kept = Vec::new();
        }
        Some(Ok(data))
    }
}
