//! Spans built whole by their caller, and W3C trace context carried in
//! other places than HTTP headers.
//!
//! The proxy decides itself whether a request is sampled, draws its span's
//! id before the request goes upstream (the backend must see it as its
//! parent) and learns what the span says only once the answer is in. The
//! `tracing` route (a span object per request, ids drawn by the SDK) fits
//! none of that and would cost every request, sampled or not. So the proxy
//! records plain facts on its stack and, for the few requests that are
//! exported, hands a [`Finished`] span to a [`SpanSink`]: the same batch
//! queue and OTLP exporter as the process's other spans, entered with one
//! non-blocking channel send.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use opentelemetry::trace::{
    SpanContext, SpanId, SpanKind, Status, TraceContextExt as _, TraceFlags, TraceId, TraceState,
};
use opentelemetry::{Context, InstrumentationScope};
pub use opentelemetry::{KeyValue, Value};
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::error::OTelSdkResult;
use opentelemetry_sdk::trace::{
    BatchSpanProcessor, SpanData, SpanEvents, SpanLinks, SpanProcessor,
};

/// A span's kind, as OpenTelemetry names them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Server,
    Client,
    Internal,
}

/// A span whose every part is known: ids, times, attributes, events.
#[derive(Debug, Clone)]
pub struct Finished {
    pub name: &'static str,
    pub kind: Kind,
    pub trace_id: u128,
    pub span_id: u64,
    /// 0: a root span.
    pub parent_span_id: u64,
    /// The parent is another process's span (from a `traceparent`).
    pub parent_remote: bool,
    pub start: SystemTime,
    pub end: SystemTime,
    pub attributes: Vec<KeyValue>,
    /// Name, time and attributes of each event, in order.
    pub events: Vec<(&'static str, SystemTime, Vec<KeyValue>)>,
    /// Set: the span ends in error, with this description.
    pub error: Option<String>,
}

/// Where [`Finished`] spans go: the process's span exporter. Cloning is
/// cheap (one `Arc`).
#[derive(Clone)]
pub struct SpanSink {
    processor: Arc<BatchSpanProcessor>,
    scope: InstrumentationScope,
}

impl std::fmt::Debug for SpanSink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SpanSink").finish_non_exhaustive()
    }
}

impl SpanSink {
    /// A sink on `processor` (which must already know the resource), and
    /// the processor to register with the tracer provider, so both kinds of
    /// span leave through one queue and one exporter.
    pub(crate) fn new(
        mut processor: BatchSpanProcessor,
        resource: &Resource,
        service: &'static str,
    ) -> (Self, SharedProcessor) {
        processor.set_resource(resource);
        let processor = Arc::new(processor);
        (
            Self {
                processor: processor.clone(),
                scope: InstrumentationScope::builder(service).build(),
            },
            SharedProcessor(processor),
        )
    }

    /// Queues `span` for export; never blocks (a full queue drops it, as
    /// the SDK does for its own spans).
    pub fn export(&self, span: Finished) {
        let mut events = SpanEvents::default();
        events.events = span
            .events
            .into_iter()
            .map(|(name, at, attributes)| opentelemetry::trace::Event::new(name, at, attributes, 0))
            .collect();
        self.processor.on_end(SpanData {
            span_context: SpanContext::new(
                TraceId::from(span.trace_id),
                SpanId::from(span.span_id),
                TraceFlags::SAMPLED,
                false,
                TraceState::NONE,
            ),
            parent_span_id: SpanId::from(span.parent_span_id),
            parent_span_is_remote: span.parent_remote,
            span_kind: match span.kind {
                Kind::Server => SpanKind::Server,
                Kind::Client => SpanKind::Client,
                Kind::Internal => SpanKind::Internal,
            },
            name: span.name.into(),
            start_time: span.start,
            end_time: span.end,
            attributes: span.attributes,
            dropped_attributes_count: 0,
            events,
            links: SpanLinks::default(),
            status: match span.error {
                Some(description) => Status::Error {
                    description: description.into(),
                },
                None => Status::Unset,
            },
            instrumentation_scope: self.scope.clone(),
        });
    }
}

/// The batch processor shared by the tracer provider and a [`SpanSink`].
#[derive(Debug)]
pub(crate) struct SharedProcessor(Arc<BatchSpanProcessor>);

impl SpanProcessor for SharedProcessor {
    fn on_start(&self, span: &mut opentelemetry_sdk::trace::Span, cx: &Context) {
        self.0.on_start(span, cx)
    }
    fn on_end(&self, span: SpanData) {
        self.0.on_end(span)
    }
    fn force_flush(&self) -> OTelSdkResult {
        self.0.force_flush()
    }
    fn shutdown_with_timeout(&self, timeout: Duration) -> OTelSdkResult {
        self.0.shutdown_with_timeout(timeout)
    }
    // The resource was set before the processor was shared.
}

// === trace context outside HTTP headers ===

/// The W3C `traceparent` of `span` (the span being the parent), when it
/// is part of a sampled trace exported over OTLP; `None` otherwise (no
/// exporter, or an unsampled trace, so there is nothing to continue).
pub fn traceparent_of(span: &tracing::Span) -> Option<String> {
    use tracing_opentelemetry::OpenTelemetrySpanExt as _;
    let cx = span.context();
    let sc = cx.span().span_context().clone();
    (sc.is_valid() && sc.is_sampled()).then(|| {
        format!(
            "00-{}-{}-{:02x}",
            sc.trace_id(),
            sc.span_id(),
            sc.trace_flags().to_u8()
        )
    })
}

/// Makes `span` continue the trace named by a `traceparent` value (from a
/// raft entry, a watch event or gRPC metadata). An invalid value leaves
/// the span a root: trace context is never worth refusing work over.
pub fn continue_from(span: &tracing::Span, traceparent: &str) {
    use tracing_opentelemetry::OpenTelemetrySpanExt as _;
    let mut carrier = std::collections::HashMap::new();
    carrier.insert("traceparent".to_string(), traceparent.to_string());
    let parent = opentelemetry::global::get_text_map_propagator(|p| p.extract(&carrier));
    if parent.span().span_context().is_valid() {
        let _ = span.set_parent(parent);
    }
}

/// Links `span` to the span a `traceparent` names (a cause in another
/// trace, e.g. the health decision behind a proxy's update).
pub fn link_to(span: &tracing::Span, traceparent: &str) {
    use tracing_opentelemetry::OpenTelemetrySpanExt as _;
    let mut carrier = std::collections::HashMap::new();
    carrier.insert("traceparent".to_string(), traceparent.to_string());
    let cx = opentelemetry::global::get_text_map_propagator(|p| p.extract(&carrier));
    let sc = cx.span().span_context().clone();
    if sc.is_valid() {
        span.add_link(sc);
    }
}
