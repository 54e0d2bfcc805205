//! The request path: route, pick, forward, retry, answer.
//!
//! It reads the current [`Table`] once (an `ArcSwap` load, no lock) and
//! keeps it to the end, so a reload never changes a request mid-way.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use arc_swap::ArcSwapOption;
use bytes::Bytes;
use http::{HeaderValue, Method, Request, Response, StatusCode, Uri, Version, header};
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use metrics::Counter;
use tandem_core::LbPolicy;
use tandem_core::lb::{PickContext, client_hash};

use crate::headers::{self, RawFields};
use crate::table::{BackendState, PoolRt, PoolState, Table};
use crate::upstream::{self, ExchangeError, ReqBody, RequestHead, Source, UpstreamBody};

/// Everything the request path shares.
pub struct Proxy {
    pub table: ArcSwapOption<Table>,
    pub upstream_idle_timeout: Duration,
    pub no_route: Counter,
    pub no_config: Counter,
    pub bad_request: Counter,
}

impl Proxy {
    pub fn new(upstream_idle_timeout: Duration) -> Self {
        let reason = |r: &'static str| metrics::counter!("tandem_proxy_local_replies_total", "pool" => "", "reason" => r);
        Self {
            table: ArcSwapOption::empty(),
            upstream_idle_timeout,
            no_route: reason("no_route"),
            no_config: reason("no_config"),
            bad_request: reason("bad_request"),
        }
    }
}

/// Most tries of one request (the first plus at most five retries).
const MAX_TRIES: usize = 6;

/// What forwarding one request produced.
pub enum Answer {
    Response(Response<RespBody>),
    /// The backend agreed to the client's protocol switch (WebSocket):
    /// the 101 goes to the client, then the two connections are joined.
    /// Only a request that asked for an upgrade gets this.
    Switch(Response<RespBody>, Tunnel),
}

/// The backend's side of a switched connection, and the guards that keep
/// the request counted while the tunnel lasts.
pub struct Tunnel {
    pub upstream: upstream::Conn,
    _in_flight: BackendGuard,
    _request: RequestGuard,
}

/// Handles one HTTP/2 request (hyper's server). Never fails: every problem
/// is an answer.
pub async fn handle(
    proxy: Arc<Proxy>,
    req: Request<Incoming>,
    peer: SocketAddr,
) -> Result<Response<RespBody>, Infallible> {
    let (parts, body) = req.into_parts();
    Ok(
        match serve(&proxy, parts, None, Source::H2(body), peer).await {
            Answer::Response(r) => r,
            // HTTP/2 requests never ask for an upgrade.
            Answer::Switch(..) => local(
                StatusCode::BAD_GATEWAY,
                "the backend switched protocols unasked\n",
            ),
        },
    )
}

/// Routes one request and forwards it: the path both servers share. The
/// HTTP/1 server passes the head's fields as received (`raw`, and
/// `parts.headers` is empty): they are copied to the backend without
/// building a header map.
pub async fn serve(
    proxy: &Proxy,
    parts: http::request::Parts,
    raw: Option<RawFields<'_>>,
    body: Source<'_>,
    peer: SocketAddr,
) -> Answer {
    let Some(table) = proxy.table.load_full() else {
        proxy.no_config.increment(1);
        return Answer::Response(local(
            StatusCode::SERVICE_UNAVAILABLE,
            "no configuration yet: the proxy has not reached a control plane\n",
        ));
    };
    let host = match raw {
        Some(raw) => request_host_raw(&parts.uri, raw),
        None => request_host(&parts.uri, &parts.headers),
    };
    if host.is_none() && parts.version == Version::HTTP_11 {
        proxy.bad_request.increment(1);
        let mut r = local(
            StatusCode::BAD_REQUEST,
            "bad request: missing Host header\n",
        );
        r.headers_mut()
            .insert(header::CONNECTION, HeaderValue::from_static("close"));
        return Answer::Response(r);
    }
    let host_str = host.as_ref().and_then(|h| h.to_str().ok()).unwrap_or("");
    let Some(&pool_index) = table.routes.lookup(host_str, parts.uri.path()) else {
        proxy.no_route.increment(1);
        return Answer::Response(local(
            StatusCode::NOT_FOUND,
            "no route for this host and path\n",
        ));
    };
    let pool = &table.pools[pool_index];

    let upgrade = match raw {
        _ if parts.version != Version::HTTP_11 => None,
        Some(raw) => raw.upgrade().and_then(|u| HeaderValue::from_bytes(u).ok()),
        None => headers::upgrade_request(&parts.headers),
    };
    let request = RequestGuard::new(pool.state.clone());
    forward(
        proxy,
        pool,
        parts,
        raw,
        body,
        host.as_ref(),
        peer,
        upgrade,
        request,
    )
    .await
}

/// The host a client asked for: the URI's authority (HTTP/2, absolute form)
/// or the Host header. A clone of the Host header shares its bytes.
fn request_host(uri: &Uri, headers: &http::HeaderMap) -> Option<HeaderValue> {
    if let Some(a) = uri.authority() {
        return HeaderValue::from_str(a.as_str()).ok();
    }
    headers.get(header::HOST).filter(|h| !h.is_empty()).cloned()
}

fn request_host_raw(uri: &Uri, raw: RawFields<'_>) -> Option<HeaderValue> {
    if let Some(a) = uri.authority() {
        return HeaderValue::from_str(a.as_str()).ok();
    }
    raw.value(b"host")
        .filter(|h| !h.is_empty())
        .and_then(|h| HeaderValue::from_maybe_shared(h).ok())
}

fn idempotent(m: &Method) -> bool {
    matches!(
        *m,
        Method::GET | Method::HEAD | Method::OPTIONS | Method::PUT | Method::DELETE | Method::TRACE
    )
}

/// Why a try failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Failure {
    /// Nothing reached the backend: the connect failed, or the request
    /// head could not be written.
    Connect,
    /// The request left and no valid answer came back.
    Reset,
    Timeout,
    /// The client's own body broke off: nobody else is to blame.
    ClientBody,
}

#[allow(clippy::too_many_arguments)] // one call site; a struct would only rename them
async fn forward(
    proxy: &Proxy,
    pool: &PoolRt,
    parts: http::request::Parts,
    raw: Option<RawFields<'_>>,
    body: Source<'_>,
    host: Option<&HeaderValue>,
    peer: SocketAddr,
    upgrade: Option<HeaderValue>,
    request: RequestGuard,
) -> Answer {
    let cfg = &pool.config;
    let deadline = request.start + Duration::from_millis(cfg.request_timeout_ms.into());
    let per_try = Duration::from_millis(cfg.retry.per_try_timeout_ms.into());
    // Once the head is in, the body may not go silent for longer than the
    // whole request may take.
    let body_stall = Duration::from_millis(cfg.request_timeout_ms.into());
    let connect_timeout = Duration::from_millis(cfg.connect_timeout_ms.into());
    let method = parts.method;
    let uri = origin_form(&parts.uri);
    let mut headers = parts.headers;
    let asked_upgrade = upgrade.is_some();

    // What is read of the body is kept (up to a limit) while it is sent, so
    // an idempotent request can go to another backend even after its body
    // left.
    let content_length = match raw {
        Some(raw) => raw.values(b"content-length").next().is_some(),
        None => headers.contains_key(header::CONTENT_LENGTH),
    };
    let mut body = ReqBody::new(body, content_length);
    let may_repeat = idempotent(&method);
    let max_tries = (1 + cfg.retry.attempts as usize).min(MAX_TRIES);
    let hash = client_hash(peer.ip());

    let mut tried = [usize::MAX; MAX_TRIES];
    let mut failure = None;
    // The request line and fields for the backends, made at the first pick.
    let mut lines = Vec::new();
    for attempt in 0..max_tries {
        let mut _retrying = None;
        if attempt > 0 {
            // A try whose connect failed never reached a backend: trying
            // another cannot amplify load, so only retries of requests that
            // were sent count against the budget.
            let sent = failure != Some(Failure::Connect);
            if sent && !retry_allowed(&pool.state, cfg.retry.budget_percent) {
                pool.state.budget_exhausted.increment(1);
                break;
            }
            pool.state.retries.increment(1);
            _retrying = Some(CountGuard::new(&pool.state.retrying));
        }
        let now = Instant::now();
        if now >= deadline {
            failure = Some(Failure::Timeout);
            break;
        }
        let cx = PickContext {
            cursor: &pool.state.cursor,
            hash,
            exclude: &tried[..attempt],
            random: if pool.config.policy == LbPolicy::RandomTwoChoices {
                [rand::random(), rand::random()]
            } else {
                [0, 0]
            },
        };
        let Some(picked) = pool.balancer.pick(&pool.backends, &cx) else {
            if attempt == 0 {
                pool.state.no_backend.increment(1);
                return Answer::Response(local(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "no usable backend for this route\n",
                ));
            }
            break;
        };
        tried[attempt] = picked.index;
        let backend = &pool.backends[picked.index];
        let state = &backend.state;
        let in_flight = BackendGuard::new(state.clone());
        if lines.is_empty() {
            match raw {
                Some(raw) => headers::encode_raw_request(
                    &mut lines,
                    method.as_str().as_bytes(),
                    uri.path_and_query()
                        .map_or("/", |pq| pq.as_str())
                        .as_bytes(),
                    raw,
                    host,
                    peer.ip(),
                    upgrade.as_ref().map(HeaderValue::as_bytes),
                    state.address.as_str(),
                ),
                None => {
                    headers::prepare_request(
                        &mut headers,
                        host,
                        peer.ip(),
                        upgrade.clone(),
                        state.address.as_str(),
                    );
                    upstream::encode_lines(&mut lines, &method, &uri, &headers);
                }
            }
        }

        // A pooled connection first; a fresh one when none is idle, or once
        // when the pooled one turns out to have been closed by the backend
        // (that is not the backend's fault).
        let mut pooled = true;
        let outcome = loop {
            let remaining = deadline.saturating_duration_since(now);
            let (mut conn, reused) = match pooled
                .then(|| state.conns.take(proxy.upstream_idle_timeout))
                .flatten()
            {
                Some(c) => (c, true),
                None => {
                    match upstream::connect(
                        state.socket_addr,
                        state.address.as_str(),
                        connect_timeout.min(remaining),
                    )
                    .await
                    {
                        Ok(c) => (c, false),
                        Err(e) => {
                            tracing::debug!(backend = %state.address, error = %e, "upstream connect failed");
                            break Err(Failure::Connect);
                        }
                    }
                }
            };
            let head = RequestHead {
                method: &method,
                lines: &lines,
            };
            // A pooled connection took no time to get; after a connect the
            // clock is read again.
            let sent_at = if reused { now } else { Instant::now() };
            let try_deadline = (sent_at + per_try).min(deadline);
            match conn
                .exchange_by(try_deadline.into(), &head, &mut body)
                .await
            {
                None => break Err(Failure::Timeout),
                Some(Ok(resp)) => break Ok((resp, conn)),
                Some(Err(ExchangeError::ClientBody(e))) => {
                    tracing::debug!(error = %e, "client request body broke off");
                    break Err(Failure::ClientBody);
                }
                Some(Err(e)) => {
                    let unsent = matches!(e, ExchangeError::Unsent(_));
                    let no_answer = unsent || matches!(e, ExchangeError::Reset(_));
                    // A kept-alive connection the backend closed while it
                    // sat idle: the request goes again on a new one.
                    if reused && no_answer && body.replayable() && (unsent || may_repeat) {
                        pooled = false;
                        continue;
                    }
                    tracing::debug!(backend = %state.address, error = %e, "upstream request failed");
                    break Err(if unsent {
                        Failure::Connect
                    } else {
                        Failure::Reset
                    });
                }
            }
        };

        match outcome {
            Ok((mut resp, conn)) => {
                let status = resp.status;
                pool.record(picked.index, !status.is_server_error());
                let class = (status.as_u16() / 100).clamp(1, 5) as usize - 1;
                state.responses[class].increment(1);
                let switching = status == StatusCode::SWITCHING_PROTOCOLS;
                headers::prepare_response(&mut resp.headers, switching);
                let mut response = Response::new(RespBody::empty());
                *response.status_mut() = status;
                if switching {
                    if !asked_upgrade {
                        // A switch nobody asked for cannot be passed on.
                        return Answer::Response(local(
                            StatusCode::BAD_GATEWAY,
                            "the backend switched protocols unasked\n",
                        ));
                    }
                    *response.headers_mut() = resp.headers;
                    let tunnel = Tunnel {
                        upstream: conn,
                        _in_flight: in_flight,
                        _request: request,
                    };
                    return Answer::Switch(response, tunnel);
                }
                let body = conn.into_body(&resp);
                *response.headers_mut() = resp.headers;
                *response.body_mut() =
                    RespBody::upstream(body, state.clone(), in_flight, request, body_stall);
                return Answer::Response(response);
            }
            Err(Failure::ClientBody) => {
                proxy.bad_request.increment(1);
                return Answer::Response(local(
                    StatusCode::BAD_REQUEST,
                    "bad request: the request body could not be read\n",
                ));
            }
            Err(f) => {
                pool.record(picked.index, false);
                state.failures.increment(1);
                failure = Some(f);
                // Something was sent: only a request that may run twice and
                // can be sent again is retried.
                if !(f == Failure::Connect || (may_repeat && body.replayable())) {
                    break;
                }
            }
        }
    }
    Answer::Response(match failure {
        Some(Failure::Timeout) => {
            pool.state.timeouts.increment(1);
            local(StatusCode::GATEWAY_TIMEOUT, "upstream timed out\n")
        }
        Some(Failure::Connect | Failure::Reset | Failure::ClientBody) | None => {
            pool.state.connect_failures.increment(1);
            local(
                StatusCode::BAD_GATEWAY,
                "upstream unreachable or connection failed\n",
            )
        }
    })
}

/// Retries may be at most `budget_percent` of the pool's active requests
/// (with a floor of 3 concurrent retries, so a quiet pool still retries).
fn retry_allowed(pool: &PoolState, budget_percent: u32) -> bool {
    if budget_percent == 0 {
        return false;
    }
    let active = pool.active.load(Ordering::Relaxed);
    let allowed = (active * u64::from(budget_percent) / 100).max(3);
    pool.retrying.load(Ordering::Relaxed) < allowed
}

fn origin_form(uri: &Uri) -> Uri {
    match uri.path_and_query() {
        Some(pq) if uri.scheme().is_some() || uri.authority().is_some() => Uri::from(pq.clone()),
        Some(_) => uri.clone(),
        None => Uri::from_static("/"),
    }
}

/// A short plain-text answer made by the proxy itself.
pub fn local(status: StatusCode, msg: &'static str) -> Response<RespBody> {
    let mut r = Response::new(RespBody::full(Bytes::from_static(msg.as_bytes())));
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    r
}

// === guards ===

struct CountGuard<'a>(&'a AtomicU64);

impl<'a> CountGuard<'a> {
    fn new(c: &'a AtomicU64) -> Self {
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
    start: Instant,
}

impl RequestGuard {
    fn new(pool: Arc<PoolState>) -> Self {
        pool.active.fetch_add(1, Ordering::Relaxed);
        Self {
            pool,
            start: Instant::now(),
        }
    }
}

impl Drop for RequestGuard {
    fn drop(&mut self) {
        self.pool.active.fetch_sub(1, Ordering::Relaxed);
        self.pool.latency.record(self.start.elapsed());
    }
}

/// A request in flight on a backend (least-connections and two-choices
/// read these).
pub struct BackendGuard(Arc<BackendState>);

impl BackendGuard {
    fn new(b: Arc<BackendState>) -> Self {
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
}

/// A backend that sends its answer's head and then stops sending the body
/// must not hold the client forever: a body silent for this long is cut.
struct Stall {
    timeout: Duration,
    timer: Option<Pin<Box<tokio::time::Sleep>>>,
    armed: bool,
}

pub use crate::upstream::BodyError;

enum Kind {
    Full(Option<Bytes>),
    Upstream(UpstreamBody),
}

struct Done {
    backend: Arc<BackendState>,
    _in_flight: BackendGuard,
    _request: RequestGuard,
}

impl RespBody {
    pub fn full(b: Bytes) -> Self {
        Self {
            kind: Kind::Full(Some(b)),
            done: None,
            stall: None,
        }
    }

    pub fn empty() -> Self {
        Self {
            kind: Kind::Full(None),
            done: None,
            stall: None,
        }
    }

    fn upstream(
        body: UpstreamBody,
        backend: Arc<BackendState>,
        in_flight: BackendGuard,
        request: RequestGuard,
        stall_timeout: Duration,
    ) -> Self {
        let mut me = Self {
            stall: Some(Stall {
                timeout: stall_timeout,
                timer: None,
                armed: false,
            }),
            done: Some(Done {
                backend,
                _in_flight: in_flight,
                _request: request,
            }),
            kind: Kind::Upstream(body),
        };
        // An empty body (HEAD, 204, 304) may never be polled.
        if me.is_end_stream() {
            me.finish();
        }
        me
    }

    /// The backend's body ended cleanly: its connection may serve again,
    /// and the request stops counting as in flight.
    fn finish(&mut self) {
        if let Some(done) = self.done.take()
            && let Kind::Upstream(body) = &mut self.kind
            && let Some(conn) = body.take_reusable()
        {
            done.backend.conns.put(conn);
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

#[cfg(test)]
mod tests {
    use super::*;
    use tandem_core::PoolName;

    #[test]
    fn the_retry_budget_is_a_share_of_active_requests_with_a_floor() {
        let pool = PoolState::new_for_test(PoolName::new("p").unwrap());
        // A quiet pool still retries, up to three at once.
        for retrying in 0..3 {
            pool.retrying.store(retrying, Ordering::Relaxed);
            assert!(retry_allowed(&pool, 20));
        }
        pool.retrying.store(3, Ordering::Relaxed);
        assert!(!retry_allowed(&pool, 20));
        // Busy: 20% of 100 active requests.
        pool.active.store(100, Ordering::Relaxed);
        pool.retrying.store(19, Ordering::Relaxed);
        assert!(retry_allowed(&pool, 20));
        pool.retrying.store(20, Ordering::Relaxed);
        assert!(!retry_allowed(&pool, 20), "a retry storm stops here");
        pool.retrying.store(0, Ordering::Relaxed);
        assert!(!retry_allowed(&pool, 0), "0 disables retries");
    }

    #[test]
    fn upstream_requests_use_origin_form() {
        let abs: Uri = "http://shop.test:8080/a/b?x=1".parse().unwrap();
        assert_eq!(origin_form(&abs), "/a/b?x=1");
        let origin: Uri = "/c?d".parse().unwrap();
        assert_eq!(origin_form(&origin), "/c?d");
        assert!(idempotent(&Method::PUT) && !idempotent(&Method::POST));
    }
}
