//! A real OTLP/gRPC trace receiver on a free loopback port: point a
//! process's `OTEL_EXPORTER_OTLP_ENDPOINT` at [`Collector::endpoint`] and
//! read back the spans it exported.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::any_value::Value;

use crate::free_addr;

/// One exported span, its ids in lowercase hex (the parent's empty for a
/// root span).
#[derive(Debug, Clone)]
pub struct Span {
    /// The exporting process's `service.name`.
    pub service: String,
    pub name: String,
    pub trace_id: String,
    pub span_id: String,
    pub parent_span_id: String,
    /// Attribute values as text (strings unquoted).
    pub attributes: HashMap<String, String>,
    /// The names of its events, in order, each with its attributes.
    pub events: Vec<(String, HashMap<String, String>)>,
    /// The span's status is an error.
    pub error: bool,
    /// OTLP's span kind (2: server, 3: client).
    pub kind: i32,
    /// Span links: (trace id, span id).
    pub links: Vec<(String, String)>,
}

impl Span {
    pub fn attr(&self, key: &str) -> Option<&str> {
        self.attributes.get(key).map(String::as_str)
    }
}

#[derive(Clone, Default)]
struct Received(Arc<Mutex<Vec<Span>>>);

/// The receiver; it stops when dropped.
pub struct Collector {
    pub endpoint: String,
    received: Received,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Collector {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Collector {
    pub async fn start() -> anyhow::Result<Collector> {
        let addr = free_addr();
        let listener = tokio::net::TcpListener::bind(addr).await?;
        let received = Received::default();
        let service = TraceServiceServer::new(received.clone());
        let task = tokio::spawn(async move {
            let _ = tonic::transport::Server::builder()
                .add_service(service)
                .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener))
                .await;
        });
        Ok(Collector {
            endpoint: format!("http://{addr}"),
            received,
            task,
        })
    }

    /// The environment that makes a process export here, as `service`,
    /// with spans sent within 100 ms.
    pub fn env(&self, service: &str) -> Vec<(String, String)> {
        vec![
            ("OTEL_EXPORTER_OTLP_ENDPOINT".into(), self.endpoint.clone()),
            ("OTEL_SERVICE_NAME".into(), service.into()),
            ("OTEL_BSP_SCHEDULE_DELAY".into(), "100".into()),
        ]
    }

    /// Every span received so far.
    pub fn spans(&self) -> Vec<Span> {
        self.received
            .0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// The spans received once `done` holds of them, or an error naming
    /// `what` with everything received after `timeout`.
    pub async fn wait_for(
        &self,
        timeout: Duration,
        what: &str,
        done: impl Fn(&[Span]) -> bool,
    ) -> anyhow::Result<Vec<Span>> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let spans = self.spans();
            if done(&spans) {
                return Ok(spans);
            }
            if tokio::time::Instant::now() >= deadline {
                let names: Vec<String> = spans
                    .iter()
                    .map(|s| format!("{}:{} {}", s.service, s.name, s.trace_id))
                    .collect();
                anyhow::bail!("{what}: not within {timeout:?}; received {names:#?}");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|b| format!("{b:02x}")).collect()
}

fn text(v: Option<&opentelemetry_proto::tonic::common::v1::AnyValue>) -> String {
    match v.and_then(|v| v.value.as_ref()) {
        Some(Value::StringValue(s)) => s.clone(),
        Some(Value::IntValue(i)) => i.to_string(),
        Some(Value::DoubleValue(d)) => d.to_string(),
        Some(Value::BoolValue(b)) => b.to_string(),
        Some(other) => format!("{other:?}"),
        None => String::new(),
    }
}

fn attributes(kvs: &[opentelemetry_proto::tonic::common::v1::KeyValue]) -> HashMap<String, String> {
    kvs.iter()
        .map(|kv| (kv.key.clone(), text(kv.value.as_ref())))
        .collect()
}

#[tonic::async_trait]
impl TraceService for Received {
    async fn export(
        &self,
        req: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        let mut got = Vec::new();
        for rs in req.into_inner().resource_spans {
            let service = rs
                .resource
                .as_ref()
                .and_then(|r| r.attributes.iter().find(|a| a.key == "service.name"))
                .map(|a| text(a.value.as_ref()))
                .unwrap_or_default();
            for ss in rs.scope_spans {
                for s in ss.spans {
                    got.push(Span {
                        service: service.clone(),
                        name: s.name,
                        trace_id: hex(&s.trace_id),
                        span_id: hex(&s.span_id),
                        parent_span_id: hex(&s.parent_span_id),
                        attributes: attributes(&s.attributes),
                        events: s
                            .events
                            .iter()
                            .map(|e| (e.name.clone(), attributes(&e.attributes)))
                            .collect(),
                        // STATUS_CODE_ERROR
                        error: s.status.as_ref().is_some_and(|st| st.code == 2),
                        kind: s.kind,
                        links: s
                            .links
                            .iter()
                            .map(|l| (hex(&l.trace_id), hex(&l.span_id)))
                            .collect(),
                    });
                }
            }
        }
        self.0.lock().unwrap_or_else(|p| p.into_inner()).extend(got);
        Ok(tonic::Response::new(ExportTraceServiceResponse {
            partial_success: None,
        }))
    }
}
