//! One try of a request on one backend: a connection (a kept-alive one
//! from the pool, or a new one), the request head written by the codec's
//! rewrite, the exchange, and what it came to.

use std::time::Duration;

use http::Method;
use tandem_http::rewrite::{self, Forwarding, TraceContext};
use tandem_http::{RequestHead, ResponseHead};
use tokio::time::Instant;

use super::retry::Failure;
use crate::body::{ClientFault, ReqBody};
use crate::table::BackendState;
use crate::upstream::{self, Conn, ExchangeError};

/// The limits of one try.
pub struct Try<'a> {
    pub backend: &'a BackendState,
    /// Skip the pool: the last try on this backend met a stale connection.
    pub fresh_only: bool,
    pub connect_timeout: Duration,
    pub per_try: Duration,
    /// The request's deadline.
    pub deadline: Instant,
    /// When this try started (a clock read saved).
    pub now: Instant,
}

/// What one try came to.
// Returned once per try and taken apart at once: boxing the large variant
// would cost an allocation on every answered request.
#[allow(clippy::large_enum_variant)]
pub enum Outcome {
    Answered(ResponseHead, Conn),
    Failed {
        failure: Failure,
        /// It used a kept-alive connection from the pool.
        reused: bool,
    },
    /// The client's body failed: not the backend's fault.
    Client(ClientFault),
}

pub async fn once(
    t: &Try<'_>,
    head: &RequestHead,
    fwd: Forwarding<'_>,
    body: &mut ReqBody<'_>,
    trace: &TraceContext,
    connected: &mut Option<Instant>,
) -> Outcome {
    let b = t.backend;
    let pooled = if t.fresh_only { None } else { b.conns.take() };
    let reused = pooled.is_some();
    let mut start = t.now;
    let mut conn = match pooled {
        Some(c) => c,
        None => {
            let remaining = t.deadline.saturating_duration_since(start);
            match upstream::connect(
                b.socket_addr,
                b.address.as_str(),
                b.tls.as_ref(),
                t.connect_timeout.min(remaining),
            )
            .await
            {
                Ok(c) => {
                    // The per-try time starts once connected.
                    start = Instant::now();
                    *connected = Some(start);
                    c
                }
                Err(e @ upstream::ConnectError::Tls(_)) => {
                    // A configuration problem (wrong CA, name, a backend
                    // not speaking TLS): the operator must see it.
                    tracing::warn!(pool = %b.pool, backend = %b.address, error = %e, "upstream TLS handshake failed");
                    return Outcome::Failed {
                        failure: Failure::Connect,
                        reused: false,
                    };
                }
                Err(e) => {
                    tracing::debug!(backend = %b.address, error = %e, "upstream connect failed");
                    return Outcome::Failed {
                        failure: Failure::Connect,
                        reused: false,
                    };
                }
            }
        }
    };
    conn.wbuf.clear();
    rewrite::write_request_head(&mut conn.wbuf, head, &fwd, body.framing(), trace);
    let (failure, error) = match conn
        .exchange(
            head.method == Method::HEAD,
            body,
            start,
            t.per_try,
            t.deadline,
        )
        .await
    {
        Ok(resp) => return Outcome::Answered(resp, conn),
        Err(ExchangeError::Client(f)) => return Outcome::Client(f),
        Err(e @ ExchangeError::Unsent(_)) if reused => (Failure::Stale, e),
        Err(e @ ExchangeError::Unsent(_)) => (Failure::Connect, e),
        Err(e @ ExchangeError::NoResponse(_)) => (Failure::NoResponse, e),
        Err(e @ ExchangeError::Invalid(_)) => (Failure::Invalid, e),
        Err(e @ ExchangeError::Timeout) => (Failure::Timeout, e),
    };
    tracing::debug!(backend = %b.address, ?failure, %error, reused, method = %head.method, "upstream try failed");
    Outcome::Failed { failure, reused }
}
