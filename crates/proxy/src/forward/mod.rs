//! The request path, for both client protocols: route, limits, then tries
//! on backends under the retry policy.
//!
//! It reads the current [`Table`] once (an `ArcSwap` load, no lock) and
//! keeps it to the end, so a reload never changes a request mid-way. Its
//! parts, each on its own: [`pick`] chooses a backend, [`attempt`] makes
//! one try on it, [`retry`] decides what a failure leads to.

mod answer;
pub mod attempt;
pub mod pick;
pub mod retry;
pub mod span;

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::time::Duration;

use arc_swap::ArcSwapOption;
use http::StatusCode;
use metrics::Counter;
use tandem_core::lb::client_hash;
use tandem_core::traffic::FailureKind;
use tandem_http::rewrite::{Forwarding, TraceParent};
use tandem_http::{Body, ParseOptions, RequestHead, UpstreamFraming};
use tandem_telemetry::SpanSink;
use tokio::time::Instant;

pub use answer::{Answer, Reply, ReplyHead, RespBody, Tunnel};
use answer::{BackendGuard, CountGuard, Done, RequestGuard};
use attempt::{Outcome, Try};
use retry::{Facts, Failure, Next};
use span::{Recorder, RequestFacts, TryFact, TryResult};

use crate::body::{ClientBody, ClientFault, ReqBody};
use crate::config::TrustedProxies;
use crate::table::{PoolRt, PoolState, Table};

/// Everything the request path shares.
pub struct Proxy {
    pub table: ArcSwapOption<Table>,
    /// How request heads are read (limits, underscores, encoded slashes).
    pub parse: ParseOptions,
    /// Peers whose `X-Forwarded-For` and `Forwarded` fields are kept.
    pub trusted: TrustedProxies,
    /// The TLS listener's port, for redirects to https (None: 443).
    pub https_port: Option<u16>,
    pub no_route: Counter,
    pub no_config: Counter,
    pub bad_request: Counter,
    /// The access log, when one is configured.
    pub access_log: Option<std::sync::Arc<crate::access_log::AccessLog>>,
    /// Where request spans go; `None`: traces are not exported.
    pub spans: Option<SpanSink>,
}

impl Proxy {
    pub fn new(parse: ParseOptions, trusted: TrustedProxies, spans: Option<SpanSink>) -> Self {
        let reason = |r: &'static str| metrics::counter!("tandem_proxy_local_replies_total", "pool" => "", "reason" => r);
        Self {
            table: ArcSwapOption::empty(),
            parse,
            trusted,
            https_port: None,
            no_route: reason("no_route"),
            no_config: reason("no_config"),
            bad_request: reason("bad_request"),
            access_log: None,
            spans,
        }
    }

    /// What the proxy knows of a client connection's peer.
    pub fn peer(&self, addr: SocketAddr, tls: bool) -> Peer {
        Peer {
            addr,
            trusted: self.trusted.contains(addr.ip()),
            tls,
        }
    }
}

/// A client connection's peer.
#[derive(Debug, Clone, Copy)]
pub struct Peer {
    pub addr: SocketAddr,
    /// A trusted proxy (`--trusted-proxies`).
    pub trusted: bool,
    /// The connection is TLS, terminated here.
    pub tls: bool,
}

/// Most tries of one request (the first plus at most five retries).
const MAX_TRIES: usize = 6;

/// What the access log needs to know of how a request went (filled in
/// only when there is a log).
#[derive(Default)]
struct Notes {
    on: bool,
    table: Option<std::sync::Arc<Table>>,
    pool: Option<usize>,
    backend: Option<usize>,
    tries: u8,
    /// The trace id the request went upstream with (the caller's, or the
    /// one the proxy started).
    trace: Option<u128>,
}

/// Routes one request and forwards it. Never fails: every problem is an
/// answer.
pub async fn serve(proxy: &Proxy, head: &RequestHead, body: ClientBody<'_>, peer: &Peer) -> Answer {
    let Some(log) = &proxy.access_log else {
        return route(proxy, head, body, peer, &mut Notes::default()).await;
    };
    let (started, at) = (std::time::Instant::now(), std::time::SystemTime::now());
    let mut notes = Notes {
        on: true,
        ..Default::default()
    };
    let mut answer = route(proxy, head, body, peer, &mut notes).await;
    let reply = match &mut answer {
        Answer::Reply(r) | Answer::Switch(r, _) => r,
    };
    let pending = crate::access_log::Pending {
        started,
        at,
        client: peer.addr.ip(),
        method: head.method.clone(),
        version: head.version,
        host: head.host.clone(),
        target: head.target_shared(),
        status: reply.status.as_u16(),
        table: notes.table,
        pool: notes.pool,
        backend: notes.backend,
        tries: notes.tries,
        // The trace decision's (the caller's valid one, or the one the
        // proxy started); a request answered before it was routed logs the
        // caller's, if any.
        trace_id: notes
            .trace
            .or_else(|| TraceParent::find(&head.fields).map(|t| t.trace_id)),
        head_after: started.elapsed(),
    };
    reply.body.log_on_end(log.clone(), pending);
    answer
}

async fn route(
    proxy: &Proxy,
    head: &RequestHead,
    body: ClientBody<'_>,
    peer: &Peer,
    notes: &mut Notes,
) -> Answer {
    let Some(table) = proxy.table.load_full() else {
        proxy.no_config.increment(1);
        return Answer::Reply(Reply::local(
            StatusCode::SERVICE_UNAVAILABLE,
            "no configuration yet: the proxy has not reached a control plane\n",
        ));
    };
    let Some(target) = table.routes.lookup(head.host_str(), head.path()) else {
        proxy.no_route.increment(1);
        return Answer::Reply(Reply::local(
            StatusCode::NOT_FOUND,
            "no route for this host and path\n",
        ));
    };
    if target.redirect_https && !peer.tls {
        return Answer::Reply(Reply::redirect(https_location(proxy, head)));
    }
    if notes.on {
        notes.table = Some(table.clone());
        notes.pool = Some(target.pool);
    }
    let pool = &table.pools[target.pool];
    let limit = pool.config.max_request_body_bytes;
    if let Body::Length(n) = head.body
        && limit != 0
        && n > limit
    {
        pool.state.too_large.increment(1);
        return Answer::Reply(Reply::refuse(
            StatusCode::PAYLOAD_TOO_LARGE,
            "request body larger than this route allows\n",
        ));
    }
    let request = RequestGuard::new(pool.state.clone());
    let started = request.start;
    let decision = span::decide(
        proxy.spans.is_some(),
        TraceParent::find(&head.fields),
        pool.trace_threshold,
        rand::random::<u128>,
    );
    let mut rec = Recorder::new(decision);
    let mut answer = run(proxy, pool, head, body, peer, request, notes, &mut rec).await;
    if peer.tls
        && let (Some(hsts), Answer::Reply(reply)) = (&target.hsts, &mut answer)
    {
        reply.hsts = Some(hsts.clone());
    }
    if rec.noting() {
        let at = (target.route, started);
        attach_span(&mut answer, &rec, proxy, &table, pool, at, head, peer);
    }
    answer
}

/// The same URL on https: the request's host without its port, and the
/// proxy's TLS port unless it is 443.
fn https_location(proxy: &Proxy, head: &RequestHead) -> String {
    let host = head.host_str();
    let name = match host.rsplit_once(':') {
        // (Not the colons of a bracketed IPv6 literal.)
        Some((name, port)) if !port.contains(']') => name,
        _ => host,
    };
    let target = String::from_utf8_lossy(head.target());
    match proxy.https_port {
        Some(443) | None => format!("https://{name}{target}"),
        Some(port) => format!("https://{name}:{port}{target}"),
    }
}

/// The request's span, when it gets one: it ends with the response body
/// (given to the answer's request guard), or now for an answer the proxy
/// made itself.
#[allow(clippy::too_many_arguments)] // the request's parts, each needed once
fn attach_span(
    answer: &mut Answer,
    rec: &Recorder,
    proxy: &Proxy,
    table: &Table,
    pool: &PoolRt,
    (route_index, started): (usize, std::time::Instant),
    head: &RequestHead,
    peer: &Peer,
) {
    let (status, guard) = match answer {
        Answer::Reply(r) => (r.status, r.body.request_guard()),
        Answer::Switch(r, t) => (r.status, Some(&mut t._request)),
    };
    // Most requests are neither sampled nor failed: they build nothing.
    if !rec.exported(status.as_u16()) {
        return;
    }
    let route = table
        .declared_routes
        .get(route_index)
        .map_or_else(String::new, |r| format!("{} {}", r.host, r.path_prefix));
    let facts = RequestFacts {
        sink: proxy.spans.as_ref(),
        pool,
        route,
        method: head.method.as_str(),
        host: head.host_str(),
        path: head.path(),
        client: peer.addr.ip(),
        started,
    };
    let Some(span) = rec.finish(&facts, status.as_u16()) else {
        return;
    };
    match guard {
        Some(g) => g.span = Some(span),
        None => span.end(),
    }
}

/// The tries of one request under the retry policy.
#[allow(clippy::too_many_arguments)] // the request's parts, and what the log and the span note of it
async fn run(
    proxy: &Proxy,
    pool: &PoolRt,
    head: &RequestHead,
    body: ClientBody<'_>,
    peer: &Peer,
    request: RequestGuard,
    notes: &mut Notes,
    rec: &mut Recorder,
) -> Answer {
    let cfg = &pool.config;
    let start = Instant::from_std(request.start);
    let deadline = start + ms(cfg.request_timeout_ms);
    let per_try = ms(cfg.retry.per_try_timeout_ms);
    let connect_timeout = ms(cfg.connect_timeout_ms);
    // Once the head is in, the body may not go silent for longer than the
    // whole request may take.
    let body_stall = ms(cfg.request_timeout_ms);
    let mut body = ReqBody::new(body, UpstreamFraming::of(head), cfg.max_request_body_bytes);
    let idempotent = retry::replay_safe(head);
    let max_tries = (1 + cfg.retry.attempts as usize).min(MAX_TRIES);
    let hash = client_hash(peer.addr.ip());
    let base = Forwarding {
        peer: peer.addr.ip(),
        trusted_peer: peer.trusted,
        backend_host: "",
        https: peer.tls,
        underscores: proxy.parse.underscores,
    };

    let mut tried = [usize::MAX; MAX_TRIES];
    let mut last = None;
    let trace = rec.decision.upstream;
    if notes.on {
        notes.trace = Some(trace.trace_id);
    }
    for attempt in 0..max_tries {
        let mut _retrying = None;
        if let Some(failure) = last {
            if retry::spends_budget(failure)
                && !retry_allowed(&pool.state, cfg.retry.budget_percent)
            {
                pool.state.budget_exhausted.increment(1);
                break;
            }
            pool.state.retries.increment(1);
            _retrying = Some(CountGuard::new(&pool.state.retrying));
        }
        // The first try starts with the request (one clock read saved).
        let now = if attempt == 0 { start } else { Instant::now() };
        if now >= deadline {
            last = Some(Failure::Timeout);
            break;
        }
        let Some(index) = pick::backend(pool, &tried[..attempt], hash) else {
            if attempt == 0 {
                pool.state.no_backend.increment(1);
                return Answer::Reply(Reply::local(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "no usable backend for this route\n",
                ));
            }
            break;
        };
        tried[attempt] = index;
        notes.backend = Some(index);
        notes.tries = attempt as u8 + 1;
        let state = &pool.backends[index].state;
        let in_flight = BackendGuard::new(state.clone());
        let fwd = Forwarding {
            backend_host: state.address.as_str(),
            ..base
        };
        let mut t = Try {
            backend: state,
            fresh_only: false,
            connect_timeout,
            per_try,
            deadline,
            now,
        };
        let (failure, next) = loop {
            let mut connected = None;
            let outcome = attempt::once(&t, head, fwd, &mut body, &trace, &mut connected).await;
            let end = Instant::now();
            let mut fact = rec.noting().then_some(TryFact {
                backend: index,
                start: t.now,
                connected,
                end,
                result: TryResult::Client,
            });
            match outcome {
                Outcome::Answered(resp, conn) => {
                    let tandem_http::ResponseHead { meta, fields } = resp;
                    let status = meta.status;
                    if let Some(mut f) = fact.take() {
                        f.result = TryResult::Answered(status.as_u16());
                        rec.note(f);
                    }
                    pool.record(index, !status.is_server_error());
                    let class = (status.as_u16() / 100).clamp(1, 5) as usize - 1;
                    state.responses[class].increment(1);
                    state
                        .traffic
                        .answered(class, end.saturating_duration_since(t.now));
                    let fields = ReplyHead::Upstream {
                        declared_length: meta.declared_length,
                        fields,
                    };
                    if status == StatusCode::SWITCHING_PROTOCOLS {
                        if head.upgrade.is_none() {
                            // A switch nobody asked for cannot be passed on.
                            return Answer::Reply(Reply::local(
                                StatusCode::BAD_GATEWAY,
                                "the backend switched protocols unasked\n",
                            ));
                        }
                        let tunnel = Tunnel {
                            upstream: conn,
                            idle_timeout: ms(cfg.tunnel_idle_timeout_ms),
                            _in_flight: in_flight,
                            _request: request,
                        };
                        let reply = Reply {
                            status,
                            head: fields,
                            body: RespBody::empty(),
                            close: true,
                            hsts: None,
                        };
                        return Answer::Switch(reply, tunnel);
                    }
                    let upstream = conn.into_body(meta.body);
                    let done = Done {
                        backend: state.clone(),
                        idle_timeout_ms: cfg.upstream_idle_timeout_ms,
                        _in_flight: in_flight,
                        _request: request,
                    };
                    return Answer::Reply(Reply {
                        status,
                        head: fields,
                        body: RespBody::upstream(upstream, done, body_stall),
                        close: false,
                        hsts: None,
                    });
                }
                Outcome::Client(fault) => {
                    if let Some(f) = fact {
                        rec.note(f);
                    }
                    return client_fault(proxy, &pool.state, fault);
                }
                Outcome::Failed { failure, reused } => {
                    let facts = Facts {
                        idempotent,
                        replayable: body.replayable(),
                        reused,
                        resent: t.fresh_only,
                    };
                    let next = retry::next(failure, facts);
                    if let Some(mut f) = fact.take() {
                        f.result = TryResult::Failed(failure, next);
                        rec.note(f);
                    }
                    if retry::blames_backend(failure, next) {
                        pool.record(index, false);
                        state.failures.increment(1);
                        state.traffic.failed(match failure {
                            Failure::Connect | Failure::Stale => FailureKind::Connect,
                            Failure::Timeout => FailureKind::Timeout,
                            Failure::NoResponse => FailureKind::Reset,
                            Failure::Invalid => FailureKind::Invalid,
                        });
                    }
                    if next == Next::Resend {
                        pool.state.resends.increment(1);
                        t.fresh_only = true;
                        t.now = Instant::now();
                        continue;
                    }
                    break (failure, next);
                }
            }
        };
        last = Some(failure);
        if next == Next::GiveUp {
            break;
        }
    }
    Answer::Reply(match last {
        Some(Failure::Timeout) => {
            pool.state.timeouts.increment(1);
            Reply::local(StatusCode::GATEWAY_TIMEOUT, "upstream timed out\n")
        }
        _ => {
            pool.state.connect_failures.increment(1);
            Reply::local(
                StatusCode::BAD_GATEWAY,
                "upstream unreachable or connection failed\n",
            )
        }
    })
}

/// The answer to a client whose body failed. Its connection closes: what
/// follows a broken body cannot be read as a request.
fn client_fault(proxy: &Proxy, pool: &PoolState, fault: ClientFault) -> Answer {
    tracing::debug!(error = %fault, "client request body failed");
    let reply = match fault {
        ClientFault::Stalled => {
            pool.client_timeouts.increment(1);
            Reply::refuse(
                StatusCode::REQUEST_TIMEOUT,
                "request timeout: the request body did not arrive in time\n",
            )
        }
        ClientFault::TooLarge => {
            pool.too_large.increment(1);
            Reply::refuse(
                StatusCode::PAYLOAD_TOO_LARGE,
                "request body larger than this route allows\n",
            )
        }
        ClientFault::Malformed(_) | ClientFault::Closed | ClientFault::Io(_) => {
            proxy.bad_request.increment(1);
            Reply::refuse(
                StatusCode::BAD_REQUEST,
                "bad request: the request body could not be read\n",
            )
        }
    };
    Answer::Reply(reply)
}

fn ms(v: u32) -> Duration {
    Duration::from_millis(v.into())
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
}
