//! Observability shared by every Tandem binary: `tracing` logs (text or
//! JSON), OpenTelemetry traces over OTLP when the standard
//! `OTEL_EXPORTER_OTLP_ENDPOINT` is set, a Prometheus recorder for the
//! `metrics` facade, the admin HTTP endpoints (`/metrics`, `/healthz`,
//! `/readyz`), a lock-free latency histogram for hot paths
//! ([`LatencyHistogram`]), the shutdown signal, and HTML escaping and cookie
//! reading for the services' own pages ([`web`]).
//!
//! It holds no business logic.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::get;
use metrics_exporter_prometheus::PrometheusBuilder;
pub use metrics_exporter_prometheus::PrometheusHandle;
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_otlp::WithExportConfig;
use opentelemetry_sdk::trace::SdkTracerProvider;
use tracing_subscriber::EnvFilter;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;

pub mod admin_client;
pub mod histogram;
pub mod spans;
pub mod web;
pub use histogram::LatencyHistogram;
pub use spans::SpanSink;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("setting up OTLP export to {endpoint}: {source}")]
    Otlp {
        endpoint: String,
        source: opentelemetry_otlp::ExporterBuildError,
    },
    #[error("installing the Prometheus recorder: {0}")]
    Prometheus(String),
    #[error("installing the log subscriber: {0}")]
    Subscriber(String),
}

/// Log line format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

/// Flags every service shares.
#[derive(Debug, Clone, clap::Args)]
pub struct TelemetryArgs {
    /// Log format: `text` for people, `json` for log pipelines. Levels come
    /// from `RUST_LOG` (default `info`).
    #[arg(long, env = "TANDEM_LOG_FORMAT", default_value = "text")]
    pub log_format: LogFormat,
}

/// Keeps the exporters alive; call [`Telemetry::shutdown`] before exiting
/// to flush spans.
pub struct Telemetry {
    prometheus: PrometheusHandle,
    tracer_provider: Option<SdkTracerProvider>,
    span_sink: Option<SpanSink>,
}

/// Installs the rustls crypto provider (ring) for the whole process. Call
/// first in `main`: building a TLS client without one panics.
pub fn install_crypto_provider() {
    // Err means another provider was installed first, which is fine.
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// Sets up logging, tracing export and metrics for `service`.
pub fn init(service: &'static str, args: &TelemetryArgs) -> Result<Telemetry, Error> {
    install_crypto_provider();
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));

    let (tracer_provider, span_sink) = match std::env::var("OTEL_EXPORTER_OTLP_ENDPOINT") {
        Ok(endpoint) if !endpoint.is_empty() => {
            let (provider, sink) = otlp_provider(service, &endpoint)?;
            (Some(provider), Some(sink))
        }
        _ => (None, None),
    };
    let otel_layer = tracer_provider
        .as_ref()
        .map(|p| tracing_opentelemetry::layer().with_tracer(p.tracer(service)));
    if tracer_provider.is_some() {
        opentelemetry::global::set_text_map_propagator(
            opentelemetry_sdk::propagation::TraceContextPropagator::new(),
        );
    }

    let (text, json) = match args.log_format {
        LogFormat::Text => (
            Some(
                tracing_subscriber::fmt::layer()
                    .with_writer(std::io::stderr)
                    .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr())),
            ),
            None,
        ),
        LogFormat::Json => (
            None,
            Some(
                tracing_subscriber::fmt::layer()
                    .with_writer(std::io::stderr)
                    .json()
                    .flatten_event(true)
                    .with_current_span(false),
            ),
        ),
    };
    tracing_subscriber::registry()
        .with(filter)
        .with(text)
        .with(json)
        .with(otel_layer)
        .try_init()
        .map_err(|e| Error::Subscriber(e.to_string()))?;

    let prometheus = PrometheusBuilder::new()
        .set_buckets(&LATENCY_BUCKETS)
        .map_err(|e| Error::Prometheus(e.to_string()))?
        .install_recorder()
        .map_err(|e| Error::Prometheus(e.to_string()))?;

    Ok(Telemetry {
        prometheus,
        tracer_provider,
        span_sink,
    })
}

/// The tracer provider, and a [`SpanSink`] sharing its batch queue.
fn otlp_provider(
    service: &'static str,
    endpoint: &str,
) -> Result<(SdkTracerProvider, SpanSink), Error> {
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_tonic()
        .with_endpoint(endpoint)
        .build()
        .map_err(|source| Error::Otlp {
            endpoint: endpoint.to_string(),
            source,
        })?;
    let name = std::env::var("OTEL_SERVICE_NAME").unwrap_or_else(|_| service.to_string());
    let resource = opentelemetry_sdk::Resource::builder()
        .with_service_name(name)
        .build();
    let processor = opentelemetry_sdk::trace::BatchSpanProcessor::builder(exporter).build();
    let (sink, shared) = SpanSink::new(processor, &resource, service);
    let provider = SdkTracerProvider::builder()
        .with_resource(resource)
        .with_span_processor(shared)
        .build();
    Ok((provider, sink))
}

impl Telemetry {
    pub fn prometheus(&self) -> PrometheusHandle {
        self.prometheus.clone()
    }

    /// Where spans built whole go (see [`spans`]); `None` when traces are
    /// not exported (`OTEL_EXPORTER_OTLP_ENDPOINT` unset).
    pub fn span_sink(&self) -> Option<SpanSink> {
        self.span_sink.clone()
    }

    /// Flushes buffered spans.
    pub fn shutdown(self) {
        if let Some(p) = self.tracer_provider {
            let _ = p.shutdown();
        }
    }
}

/// Upper bounds, in seconds, of every latency histogram's buckets.
pub const LATENCY_BUCKETS: [f64; 14] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

// === admin endpoints ===

type ReadyFuture = Pin<Box<dyn Future<Output = Result<String, String>> + Send>>;

/// Answers `/readyz`: `Ok(detail)` is 200, `Err(reason)` is 503.
pub type ReadyCheck = Arc<dyn Fn() -> ReadyFuture + Send + Sync>;

/// Wraps an async closure as a [`ReadyCheck`].
pub fn ready_check<F, Fut>(f: F) -> ReadyCheck
where
    F: Fn() -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<String, String>> + Send + 'static,
{
    Arc::new(move || Box::pin(f()))
}

/// Set once a service has finished starting. Until then `/healthz` answers
/// 503, so a load balancer's health check keeps a starting instance out of
/// rotation (what a Kubernetes startup probe is for); afterwards `/healthz`
/// only says the process answers.
#[derive(Clone, Debug, Default)]
pub struct Started(Arc<AtomicBool>);

impl Started {
    /// A service with nothing to do before it can serve.
    pub fn already() -> Self {
        Self(Arc::new(AtomicBool::new(true)))
    }

    pub fn set(&self) {
        self.0.store(true, Ordering::Release);
    }

    pub fn is_set(&self) -> bool {
        self.0.load(Ordering::Acquire)
    }
}

/// Appends series a service keeps itself to the `/metrics` text.
pub type MetricsExtra = Arc<dyn Fn(&mut String) + Send + Sync>;

#[derive(Clone)]
struct AdminState {
    prometheus: PrometheusHandle,
    ready: ReadyCheck,
    started: Started,
    extra: Option<MetricsExtra>,
}

/// `/metrics` (Prometheus text), `/healthz` (the process answers) and
/// `/readyz` (the service can do its job). Merge service-specific routes
/// into the returned router.
pub fn admin_router(prometheus: PrometheusHandle, ready: ReadyCheck) -> Router {
    admin_router_with(prometheus, ready, Started::already(), None)
}

/// [`admin_router`] for a service that must finish starting before it can
/// serve (`/healthz` answers 503 until `started` is set), and with series
/// it renders itself appended to `/metrics` (e.g. histograms too hot for
/// the exporter).
pub fn admin_router_with(
    prometheus: PrometheusHandle,
    ready: ReadyCheck,
    started: Started,
    extra: Option<MetricsExtra>,
) -> Router {
    Router::new()
        .route("/metrics", get(metrics_handler))
        .route("/healthz", get(health_handler))
        .route("/readyz", get(ready_handler))
        .with_state(AdminState {
            prometheus,
            ready,
            started,
            extra,
        })
}

async fn health_handler(State(s): State<AdminState>) -> (StatusCode, &'static str) {
    if s.started.is_set() {
        (StatusCode::OK, "ok\n")
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "starting\n")
    }
}

async fn metrics_handler(State(s): State<AdminState>) -> impl axum::response::IntoResponse {
    (
        [(
            axum::http::header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        {
            let mut text = s.prometheus.render();
            if let Some(extra) = &s.extra {
                extra(&mut text);
            }
            text
        },
    )
}

async fn ready_handler(State(s): State<AdminState>) -> (StatusCode, String) {
    match (s.ready)().await {
        Ok(detail) => (StatusCode::OK, format!("ready: {detail}\n")),
        Err(reason) => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("not ready: {reason}\n"),
        ),
    }
}

/// Serves the admin router on `listener` until `shutdown` resolves.
pub async fn serve_admin(
    listener: tokio::net::TcpListener,
    router: Router,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    axum::serve(listener, router)
        .with_graceful_shutdown(shutdown)
        .await
}

/// The start-up of every service (control, proxy, agent, shop): `main`
/// parses its flags, checks what it can before a runtime exists, then hands
/// its `start` future to this. Runs it on a runtime with `workers` threads,
/// one meaning a single-threaded runtime (no work-stealing bookkeeping, no
/// cross-thread wake-ups), and turns its outcome into the exit code: 0, or
/// 1 with the error logged and printed as `<name>: <error>` (with its
/// causes, for errors that list them under `{:#}`).
pub fn run_node<E: std::fmt::Display>(
    name: &'static str,
    workers: usize,
    main: impl std::future::Future<Output = Result<(), E>>,
) -> std::process::ExitCode {
    let runtime = if workers <= 1 {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
    } else {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(workers)
            .thread_name(name)
            .enable_all()
            .build()
    };
    let runtime = match runtime {
        Ok(r) => r,
        Err(e) => {
            eprintln!("{name}: cannot start the runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    match runtime.block_on(main) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            let error = format!("{e:#}");
            tracing::error!(%error, "{name} stopped");
            eprintln!("{name}: {error}");
            std::process::ExitCode::FAILURE
        }
    }
}

/// [`run_node`] for a service whose flags are checked into `settings`
/// before a runtime exists: if they are wrong, prints `<name>: <error>` and
/// exits with 2 (a usage error) without starting anything; otherwise runs
/// `start(settings)`.
pub fn run_node_with<S, E, F, Fut>(
    name: &'static str,
    workers: usize,
    settings: Result<S, E>,
    start: F,
) -> std::process::ExitCode
where
    E: std::fmt::Display,
    F: FnOnce(S) -> Fut,
    Fut: std::future::Future<Output = Result<(), E>>,
{
    match settings {
        Ok(settings) => run_node(name, workers, start(settings)),
        Err(e) => {
            eprintln!("{name}: {e}");
            std::process::ExitCode::from(2)
        }
    }
}

/// One worker per core, as `#[tokio::main]` would start (for services
/// without a flag of their own for it).
pub fn workers_per_core() -> usize {
    std::thread::available_parallelism().map_or(1, std::num::NonZero::get)
}

/// Resolves on SIGTERM or Ctrl-C.
pub async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(s) => s,
                Err(e) => {
                    tracing::warn!(error = %e, "cannot listen for SIGTERM; Ctrl-C only");
                    let _ = ctrl_c.await;
                    return;
                }
            };
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
    tracing::info!("shutdown signal received");
}

// === request spans ===

struct HeaderExtractor<'a>(&'a axum::http::HeaderMap);

impl opentelemetry::propagation::Extractor for HeaderExtractor<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|v| v.to_str().ok())
    }

    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(|k| k.as_str()).collect()
    }
}

/// A server span for one incoming request, continuing the caller's trace
/// when it sent a W3C `traceparent` header.
pub fn request_span(method: &str, path: &str, headers: &axum::http::HeaderMap) -> tracing::Span {
    let span = tracing::info_span!("request", otel.kind = "server", %method, %path);
    continue_http(&span, headers);
    span
}

/// Makes `span` continue the trace of an incoming request's W3C
/// `traceparent` (and `tracestate`); without one it stays a root.
pub fn continue_http(span: &tracing::Span, headers: &axum::http::HeaderMap) {
    use opentelemetry::trace::TraceContextExt as _;
    use tracing_opentelemetry::OpenTelemetrySpanExt as _;
    let parent =
        opentelemetry::global::get_text_map_propagator(|p| p.extract(&HeaderExtractor(headers)));
    if parent.span().span_context().is_valid() {
        let _ = span.set_parent(parent);
    }
}
