//! With `OTEL_EXPORTER_OTLP_ENDPOINT` set, the control plane exports a span
//! per gRPC call over OTLP, continuing the caller's W3C trace.

use std::time::Duration;

use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use tandem_proto::v1;
use tandem_testkit::{ControlPlane, ControlPlaneOptions, Postgres, free_addr};
use tokio::sync::mpsc;

/// A real OTLP/gRPC trace receiver.
struct Collector(mpsc::UnboundedSender<ExportTraceServiceRequest>);

#[tonic::async_trait]
impl TraceService for Collector {
    async fn export(
        &self,
        req: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        let _ = self.0.send(req.into_inner());
        Ok(tonic::Response::new(ExportTraceServiceResponse {
            partial_success: None,
        }))
    }
}

#[tokio::test]
async fn calls_are_traced_over_otlp_continuing_the_callers_trace() -> anyhow::Result<()> {
    let (tx, mut rx) = mpsc::unbounded_channel();
    let addr = free_addr();
    let listener = tokio::net::TcpListener::bind(addr).await?;
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(TraceServiceServer::new(Collector(tx)))
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
    );

    let pg = Postgres::start()?;
    let cp = ControlPlane::start_with(
        &pg.url(),
        ControlPlaneOptions {
            env: vec![
                (
                    "OTEL_EXPORTER_OTLP_ENDPOINT".into(),
                    format!("http://{addr}"),
                ),
                ("OTEL_SERVICE_NAME".into(), "control-under-test".into()),
                ("OTEL_BSP_SCHEDULE_DELAY".into(), "100".into()),
            ],
            ..Default::default()
        },
    )
    .await?;

    let trace_id = "4bf92f3577b34da6a3ce929d0e0e4736";
    let mut req = tonic::Request::new(v1::ListPoolsRequest {});
    req.metadata_mut().insert(
        "traceparent",
        format!("00-{trace_id}-00f067aa0ba902b7-01").parse()?,
    );
    cp.admin_client().await?.list_pools(req).await?;

    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let batch = tokio::time::timeout_at(deadline, rx.recv())
            .await
            .map_err(|_| anyhow::anyhow!("no span for ListPools reached the collector"))?
            .ok_or_else(|| anyhow::anyhow!("collector closed"))?;
        for rs in &batch.resource_spans {
            let service = rs
                .resource
                .as_ref()
                .and_then(|r| r.attributes.iter().find(|a| a.key == "service.name"))
                .and_then(|a| a.value.as_ref())
                .map(|v| format!("{:?}", v.value));
            for ss in &rs.scope_spans {
                for span in &ss.spans {
                    let path = span
                        .attributes
                        .iter()
                        .find(|a| a.key == "path")
                        .and_then(|a| a.value.as_ref())
                        .map(|v| format!("{:?}", v.value))
                        .unwrap_or_default();
                    if path.contains("/tandem.v1.ControlPlane/ListPools") {
                        let got: String =
                            span.trace_id.iter().map(|b| format!("{b:02x}")).collect();
                        assert_eq!(got, trace_id, "the span continues the caller's trace");
                        assert!(
                            service
                                .as_deref()
                                .is_some_and(|s| s.contains("control-under-test")),
                            "{service:?}"
                        );
                        return Ok(());
                    }
                }
            }
        }
    }
}
