//! The request's span: whether the request is sampled, the trace context
//! it goes upstream with, and what its tries came to.
//!
//! The decision is made once, after routing: the caller's `traceparent`
//! decides when it sent one (its sampled flag is honoured), else the
//! pool's ratio, applied to the trace id as OpenTelemetry's
//! `TraceIdRatioBased` does (so every hop that uses the same rule agrees).
//! Whether sampled or not, the backend sees the proxy's span as its
//! parent, so a span exported later for an error fits in the trace.
//!
//! Unsampled requests build nothing: the tries are noted as plain facts in
//! a fixed array on the request's stack, and only a request that is
//! sampled or ends in error (a 5xx, or a try that failed) turns them into
//! a span, handed to the exporter's queue when the response body ends.
//! Without an exporter (`OTEL_EXPORTER_OTLP_ENDPOINT` unset) nothing is
//! noted and the caller's context passes on unchanged.

use std::fmt::Write as _;
use std::time::{Instant as StdInstant, SystemTime};

use tandem_core::lb::select_tier;
use tandem_http::rewrite::{TraceContext, TraceParent};
use tandem_telemetry::SpanSink;
use tandem_telemetry::spans::{Finished, KeyValue, Kind};
use tokio::time::Instant;

use super::retry::{Failure, Next};
use crate::clock;
use crate::sampling::sampled_by;
use crate::table::PoolRt;

// === the decision ===

/// What one request goes upstream with, and whether it is traced.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Decision {
    /// The `traceparent` the backend gets.
    pub upstream: TraceContext,
    /// The caller's span (0: none, the proxy's span is a root).
    pub caller_span: u64,
    /// Spans are exported at all (an exporter is set up).
    pub tracing: bool,
    /// This request's span is exported whatever happens.
    pub sampled: bool,
}

/// Decides for one request. `random` draws ids (called at most twice).
pub fn decide(
    tracing: bool,
    caller: Option<TraceParent>,
    threshold: u64,
    mut random: impl FnMut() -> u128,
) -> Decision {
    if !tracing {
        // Nothing is exported: the caller's context passes on as it came,
        // or a new unsampled one starts.
        let upstream = match caller {
            Some(c) => TraceContext {
                trace_id: c.trace_id,
                parent_id: c.parent_id,
                flags: c.flags,
            },
            None => TraceContext {
                trace_id: random() | 1,
                parent_id: random() as u64 | 1,
                flags: 0,
            },
        };
        return Decision {
            upstream,
            caller_span: 0,
            tracing: false,
            sampled: false,
        };
    }
    let (trace_id, caller_span, sampled, flags) = match caller {
        Some(c) => (c.trace_id, c.parent_id, c.sampled(), c.flags),
        None => {
            let id = random() | 1;
            (id, 0, sampled_by(threshold, id), 0)
        }
    };
    Decision {
        upstream: TraceContext {
            trace_id,
            parent_id: random() as u64 | 1,
            flags: (flags & !1) | u8::from(sampled),
        },
        caller_span,
        tracing: true,
        sampled,
    }
}

// === what the tries came to ===

/// What one try came to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TryResult {
    /// The backend answered with this status.
    Answered(u16),
    /// It failed, and what the retry policy made of it.
    Failed(Failure, Next),
    /// The client's body failed during the try.
    Client,
}

/// One try, as noted on the request's stack.
#[derive(Debug, Clone, Copy)]
pub struct TryFact {
    /// The backend's index in the pool.
    pub backend: usize,
    pub start: Instant,
    /// When a new connection was established (None: a kept-alive one).
    pub connected: Option<Instant>,
    /// When the answer's head was in, or the try failed.
    pub end: Instant,
    pub result: TryResult,
}

/// Most tries noted (six backends, a fresh-connection resend on two).
const MAX_FACTS: usize = 8;

/// The request's trace decision and the facts of its tries.
pub struct Recorder {
    pub decision: Decision,
    facts: [Option<TryFact>; MAX_FACTS],
    noted: usize,
}

impl Recorder {
    pub fn new(decision: Decision) -> Self {
        Self {
            decision,
            facts: [None; MAX_FACTS],
            noted: 0,
        }
    }

    /// Are tries worth noting (could a span come of them)?
    pub fn noting(&self) -> bool {
        self.decision.tracing
    }

    pub fn note(&mut self, fact: TryFact) {
        if self.noted < MAX_FACTS {
            self.facts[self.noted] = Some(fact);
            self.noted += 1;
        }
    }

    fn facts(&self) -> impl Iterator<Item = &TryFact> {
        self.facts[..self.noted].iter().flatten()
    }

    /// Does this request get a span: sampled, or ended in error?
    pub fn exported(&self, status: u16) -> bool {
        self.decision.tracing
            && (self.decision.sampled
                || status >= 500
                || self
                    .facts()
                    .any(|f| matches!(f.result, TryResult::Failed(..))))
    }

    /// The span of a request answered with `status`, to be ended when its
    /// response body ends; `None` when it is not exported.
    pub fn finish(&self, req: &RequestFacts<'_>, status: u16) -> Option<Box<PendingSpan>> {
        if !self.exported(status) {
            return None;
        }
        let sink = req.sink?.clone();
        let pool = req.pool;
        let now = StdInstant::now();
        let wall = SystemTime::now();
        let at = |i: Instant| wall - now.saturating_duration_since(i.into_std());
        let ms =
            |from: Instant, to: Instant| to.saturating_duration_since(from).as_secs_f64() * 1e3;
        let address = |i: usize| {
            pool.backends
                .get(i)
                .map_or_else(String::new, |b| b.declared.address.to_string())
        };

        let now_ms = clock::now_ms();
        let mut ejected = String::new();
        for b in pool.backends.iter().filter(|b| b.state.is_ejected(now_ms)) {
            if !ejected.is_empty() {
                ejected.push(',');
            }
            ejected.push_str(b.declared.address.as_str());
        }
        let tier = select_tier(&pool.backends, pool.config.panic_threshold_percent);
        let mut attributes = vec![
            KeyValue::new("http.request.method", req.method.to_string()),
            KeyValue::new("url.path", req.path.to_string()),
            KeyValue::new("server.address", req.host.to_string()),
            KeyValue::new("client.address", req.client.to_string()),
            KeyValue::new("http.response.status_code", i64::from(status)),
            KeyValue::new("tandem.route", req.route.clone()),
            KeyValue::new("tandem.pool", pool.config.name.to_string()),
            KeyValue::new("tandem.policy", pool.config.policy.as_str()),
            KeyValue::new("tandem.tries", self.noted as i64),
            KeyValue::new("tandem.sampled", self.decision.sampled),
            KeyValue::new("tandem.serving", tier.map_or("nothing", |t| t.as_str())),
            KeyValue::new("tandem.panic_mode", tier.is_some_and(|t| t.is_panic())),
            KeyValue::new("tandem.ejected_backends", ejected),
        ];
        let last = self.facts[..self.noted]
            .iter()
            .rev()
            .flatten()
            .next()
            .copied();
        if let Some(f) = last {
            attributes.push(KeyValue::new("tandem.backend", address(f.backend)));
            if let Some(c) = f.connected {
                attributes.push(KeyValue::new("tandem.upstream.connect_ms", ms(f.start, c)));
            }
            if let TryResult::Answered(_) = f.result {
                attributes.push(KeyValue::new(
                    "tandem.upstream.first_byte_ms",
                    ms(f.connected.unwrap_or(f.start), f.end),
                ));
            }
        }
        let mut events = Vec::with_capacity(self.noted);
        for (n, f) in self.facts().enumerate() {
            let mut attrs = vec![
                KeyValue::new("tandem.try", n as i64 + 1),
                KeyValue::new("tandem.backend", address(f.backend)),
                KeyValue::new("tandem.try.reused_connection", f.connected.is_none()),
                KeyValue::new("tandem.try.ms", ms(f.start, f.end)),
            ];
            if let Some(c) = f.connected {
                attrs.push(KeyValue::new("tandem.try.connect_ms", ms(f.start, c)));
            }
            let mut outcome = String::new();
            match f.result {
                TryResult::Answered(s) => {
                    let _ = write!(outcome, "answered {s}");
                    attrs.push(KeyValue::new(
                        "tandem.try.first_byte_ms",
                        ms(f.connected.unwrap_or(f.start), f.end),
                    ));
                }
                TryResult::Failed(failure, next) => {
                    outcome.push_str(failure_text(failure));
                    attrs.push(KeyValue::new("tandem.try.then", next_text(next)));
                }
                TryResult::Client => outcome.push_str("the client's body failed"),
            }
            attrs.push(KeyValue::new("tandem.try.outcome", outcome));
            events.push(("try", at(f.end), attrs));
        }
        let error = (status >= 500).then(|| match last.map(|f| f.result) {
            Some(TryResult::Failed(failure, _)) => failure_text(failure).to_string(),
            _ => format!("HTTP {status}"),
        });
        let d = &self.decision;
        Some(Box::new(PendingSpan {
            sink,
            started: req.started,
            span: Finished {
                name: "proxy request",
                kind: Kind::Server,
                trace_id: d.upstream.trace_id,
                span_id: d.upstream.parent_id,
                parent_span_id: d.caller_span,
                parent_remote: d.caller_span != 0,
                start: wall - now.saturating_duration_since(req.started),
                end: wall,
                attributes,
                events,
                error,
            },
        }))
    }
}

fn failure_text(f: Failure) -> &'static str {
    match f {
        Failure::Connect => "connect failed",
        Failure::Stale => "kept-alive connection closed by the backend",
        Failure::NoResponse => "connection closed before any answer",
        Failure::Invalid => "answer was not valid HTTP",
        Failure::Timeout => "no answer in time",
    }
}

fn next_text(n: Next) -> &'static str {
    match n {
        Next::Resend => "sent again on a fresh connection to the same backend",
        Next::Failover => "retried on another backend",
        Next::GiveUp => "not retried",
    }
}

/// What the span says of the request itself.
pub struct RequestFacts<'a> {
    pub sink: Option<&'a SpanSink>,
    pub pool: &'a PoolRt,
    /// `host` `prefix` of the route that matched.
    pub route: String,
    pub method: &'a str,
    pub host: &'a str,
    pub path: &'a str,
    pub client: std::net::IpAddr,
    pub started: StdInstant,
}

/// A span waiting for its request's end (the response body's end).
pub struct PendingSpan {
    sink: SpanSink,
    started: StdInstant,
    span: Finished,
}

impl PendingSpan {
    /// Ends the span now and queues it for export.
    pub fn end(self: Box<Self>) {
        let PendingSpan {
            sink,
            started,
            mut span,
        } = *self;
        span.end = span.start + started.elapsed();
        sink.export(span);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn counter() -> impl FnMut() -> u128 {
        let mut n = 0x10;
        move || {
            n += 0x10;
            n
        }
    }

    #[test]
    fn the_callers_decision_is_honoured_and_the_proxys_span_is_the_parent() {
        let caller = |flags| TraceParent {
            trace_id: 0xabc,
            parent_id: 0xdef,
            flags,
        };
        // Sampled by the caller, whatever the ratio.
        let d = decide(true, Some(caller(1)), 0, counter());
        assert!(d.sampled && d.tracing);
        assert_eq!(d.upstream.trace_id, 0xabc);
        assert_eq!(d.caller_span, 0xdef);
        assert_ne!(d.upstream.parent_id, 0xdef, "the proxy's own span");
        assert_eq!(d.upstream.flags, 1);
        // Not sampled by the caller, even at 100 %.
        let d = decide(true, Some(caller(0)), u64::MAX, counter());
        assert!(!d.sampled);
        assert_eq!(d.upstream.flags, 0);
        // No caller: the ratio decides, on the new trace id.
        let d = decide(true, None, u64::MAX, counter());
        assert!(d.sampled && d.caller_span == 0 && d.upstream.flags == 1);
        let d = decide(true, None, 0, counter());
        assert!(!d.sampled && d.upstream.flags == 0);
        // Not tracing: the caller's context passes on untouched.
        let d = decide(false, Some(caller(1)), u64::MAX, counter());
        assert_eq!(
            d.upstream,
            TraceContext {
                trace_id: 0xabc,
                parent_id: 0xdef,
                flags: 1
            }
        );
        assert!(!d.sampled && !d.tracing);
    }

    #[test]
    fn errors_are_exported_even_when_not_sampled() {
        let unsampled = decide(true, None, 0, counter());
        let at = Instant::now();
        let mut r = Recorder::new(unsampled);
        r.note(TryFact {
            backend: 0,
            start: at,
            connected: Some(at),
            end: at,
            result: TryResult::Answered(200),
        });
        assert!(!r.exported(200));
        assert!(r.exported(503), "a 5xx answer");
        r.note(TryFact {
            backend: 0,
            start: at,
            connected: None,
            end: at,
            result: TryResult::Failed(Failure::Connect, Next::Failover),
        });
        assert!(r.exported(200), "a failed try, retried with success");
        let off = decide(false, None, u64::MAX, counter());
        assert!(
            !Recorder::new(off).exported(503),
            "nothing without an exporter"
        );
    }
}
