//! What the request path gives the client-facing servers: an answer's
//! status, its fields (a backend's, or the proxy's own), its body, and the
//! guards that keep the request counted until the body ends.

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::StatusCode;
use http_body::{Body, Frame, SizeHint};
use tandem_http::Fields;

use super::span::PendingSpan;
use crate::table::{BackendState, PoolState};
use crate::upstream::{self, UpstreamBody};

/// What forwarding one request produced.
pub enum Answer {
    Reply(Reply),
    /// The backend agreed to the client's protocol switch (WebSocket): the
    /// 101 goes to the client, then the two connections are joined. Only a
    /// request that asked for an upgrade gets this.
    Switch(Reply, Tunnel),
}

/// An answer for the client.
pub struct Reply {
    pub status: StatusCode,
    pub head: ReplyHead,
    pub body: RespBody,
    /// The client's connection closes after this answer: the request's
    /// body was refused or broken, so what follows it cannot be trusted.
    pub close: bool,
    /// `Strict-Transport-Security` to add (the route asks for it and the
    /// request came over TLS).
    pub hsts: Option<http::HeaderValue>,
}

/// Whose fields an answer carries.
pub enum ReplyHead {
    /// A backend's, as received (the servers filter them per protocol).
    /// `declared_length`: the length a HEAD or 304 answer announces.
    Upstream {
        fields: Fields,
        declared_length: Option<u64>,
    },
    /// The proxy's own: a short plain-text answer.
    Local,
    /// The proxy's own redirect to `location` (a plain-text body).
    Redirect { location: String },
}

impl Reply {
    /// A short plain-text answer made by the proxy itself.
    pub fn local(status: StatusCode, text: &'static str) -> Self {
        Self {
            status,
            head: ReplyHead::Local,
            body: RespBody::full(Bytes::from_static(text.as_bytes())),
            close: false,
            hsts: None,
        }
    }

    /// A permanent redirect that keeps the method and body (308).
    pub fn redirect(location: String) -> Self {
        Self {
            head: ReplyHead::Redirect { location },
            ..Self::local(StatusCode::PERMANENT_REDIRECT, "moved to https\n")
        }
    }

    /// A refusal after which the client's connection closes.
    pub fn refuse(status: StatusCode, text: &'static str) -> Self {
        Self {
            close: true,
            ..Self::local(status, text)
        }
    }
}

/// The backend's side of a switched connection, and the guards that keep
/// the request counted while the tunnel lasts.
pub struct Tunnel {
    pub upstream: upstream::Conn,
    /// Both directions silent this long: the tunnel closes.
    pub idle_timeout: Duration,
    pub(crate) _in_flight: BackendGuard,
    pub(crate) _request: RequestGuard,
}

// === guards ===

pub(crate) struct CountGuard<'a>(&'a AtomicU64);

impl<'a> CountGuard<'a> {
    pub(crate) fn new(c: &'a AtomicU64) -> Self {
        c.fetch_add(1, Ordering::Relaxed);
        Self(c)
    }
}

impl Drop for CountGuard<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// One request of a pool, from routing until its response body ends:
/// counts it as active and records its duration.
pub struct RequestGuard {
    pool: Arc<PoolState>,
    pub(crate) start: Instant,
    /// The request's span, ended with it (sampled requests and errors).
    pub(crate) span: Option<Box<PendingSpan>>,
}

impl RequestGuard {
    pub(crate) fn new(pool: Arc<PoolState>) -> Self {
        pool.active.fetch_add(1, Ordering::Relaxed);
        Self {
            pool,
            start: Instant::now(),
            span: None,
        }
    }
}

impl Drop for RequestGuard {
    fn drop(&mut self) {
        self.pool.active.fetch_sub(1, Ordering::Relaxed);
        self.pool.latency.record(self.start.elapsed());
        if let Some(span) = self.span.take() {
            span.end();
        }
    }
}

/// A request in flight on a backend (least-connections and two-choices
/// read these).
pub struct BackendGuard(Arc<BackendState>);

impl BackendGuard {
    pub(crate) fn new(b: Arc<BackendState>) -> Self {
        b.in_flight.fetch_add(1, Ordering::Relaxed);
        Self(b)
    }
}

impl Drop for BackendGuard {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

// === response body ===

/// What the client receives: a backend's body streamed through, or a local
/// answer. When a backend's body ends, its connection goes back to the pool
/// and the request stops counting as in flight.
pub struct RespBody {
    kind: Kind,
    done: Option<Done>,
    stall: Option<Stall>,
    /// The request's access-log line, written when the body is dropped.
    log: Option<Box<LogLine>>,
}

struct LogLine {
    log: Arc<crate::access_log::AccessLog>,
    pending: crate::access_log::Pending,
    bytes: u64,
}

impl Drop for RespBody {
    fn drop(&mut self) {
        if let Some(line) = self.log.take() {
            let LogLine {
                log,
                pending,
                bytes,
            } = *line;
            log.push(pending, bytes);
        }
    }
}

/// A backend that sends its answer's head and then stops sending the body
/// must not hold the client forever: a body silent for this long is cut.
struct Stall {
    timeout: Duration,
    timer: Option<Pin<Box<tokio::time::Sleep>>>,
    armed: bool,
}

pub type BodyError = Box<dyn std::error::Error + Send + Sync>;

enum Kind {
    Full(Option<Bytes>),
    Upstream(UpstreamBody),
}

pub(crate) struct Done {
    pub(crate) backend: Arc<BackendState>,
    /// How long the connection may then sit idle in the pool.
    pub(crate) idle_timeout_ms: u32,
    pub(crate) _in_flight: BackendGuard,
    pub(crate) _request: RequestGuard,
}

impl RespBody {
    pub fn full(b: Bytes) -> Self {
        Self {
            kind: Kind::Full(Some(b)),
            done: None,
            stall: None,
            log: None,
        }
    }

    pub fn empty() -> Self {
        Self {
            kind: Kind::Full(None),
            done: None,
            stall: None,
            log: None,
        }
    }

    pub(crate) fn upstream(body: UpstreamBody, done: Done, stall_timeout: Duration) -> Self {
        let mut me = Self {
            stall: Some(Stall {
                timeout: stall_timeout,
                timer: None,
                armed: false,
            }),
            done: Some(done),
            kind: Kind::Upstream(body),
            log: None,
        };
        // An empty body (HEAD, 204, 304) may never be polled.
        if me.is_end_stream() {
            me.finish();
        }
        me
    }

    /// Writes the request's access-log line once this body is done with,
    /// counting the bytes handed out.
    pub(crate) fn log_on_end(
        &mut self,
        log: Arc<crate::access_log::AccessLog>,
        pending: crate::access_log::Pending,
    ) {
        self.log = Some(Box::new(LogLine {
            log,
            pending,
            bytes: 0,
        }));
    }

    /// The guard of a request whose backend's body is still to come.
    pub(crate) fn request_guard(&mut self) -> Option<&mut RequestGuard> {
        self.done.as_mut().map(|d| &mut d._request)
    }

    /// The backend's body ended cleanly: its connection may serve again,
    /// and the request stops counting as in flight.
    fn finish(&mut self) {
        if let Some(done) = self.done.take()
            && let Kind::Upstream(body) = &mut self.kind
            && let Some(conn) = body.take_reusable()
        {
            done.backend.conns.put(conn, done.idle_timeout_ms);
        }
    }
}

impl Body for RespBody {
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        let me = self.get_mut();
        let polled = me.poll_inner(cx);
        if let (Some(line), Poll::Ready(Some(Ok(frame)))) = (&mut me.log, &polled)
            && let Some(data) = frame.data_ref()
        {
            line.bytes += data.len() as u64;
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        match &self.kind {
            Kind::Full(b) => b.is_none(),
            Kind::Upstream(b) => b.is_end(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.kind {
            Kind::Full(Some(b)) => SizeHint::with_exact(b.len() as u64),
            Kind::Full(None) => SizeHint::with_exact(0),
            Kind::Upstream(b) => b
                .remaining()
                .map_or_else(SizeHint::default, SizeHint::with_exact),
        }
    }
}

impl RespBody {
    fn poll_inner(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        let me = self;
        match &mut me.kind {
            Kind::Full(b) => Poll::Ready(b.take().map(|b| Ok(Frame::data(b)))),
            Kind::Upstream(body) => {
                let polled = body.poll_data(cx);
                if let Some(stall) = &mut me.stall {
                    if polled.is_pending() {
                        let timeout = stall.timeout;
                        let timer = stall
                            .timer
                            .get_or_insert_with(|| Box::pin(tokio::time::sleep(timeout)));
                        if !stall.armed {
                            timer.as_mut().reset(tokio::time::Instant::now() + timeout);
                            stall.armed = true;
                        }
                        if timer.as_mut().poll(cx).is_ready() {
                            // Not reusable: the response is cut mid-way.
                            me.done = None;
                            me.stall = None;
                            return Poll::Ready(Some(Err(
                                "the backend stopped sending its response body".into(),
                            )));
                        }
                        return Poll::Pending;
                    }
                    stall.armed = false;
                }
                match polled {
                    Poll::Ready(None) => {
                        me.finish();
                        Poll::Ready(None)
                    }
                    Poll::Ready(Some(Ok(data))) => {
                        if body.is_end() {
                            me.finish();
                        }
                        Poll::Ready(Some(Ok(Frame::data(data))))
                    }
                    Poll::Ready(Some(Err(e))) => {
                        // A broken body: the connection is not reused.
                        me.done = None;
                        Poll::Ready(Some(Err(e.into())))
                    }
                    Poll::Pending => Poll::Pending,
                }
            }
        }
    }
}
