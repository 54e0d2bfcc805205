//! An OTLP/gRPC trace receiver that counts what it gets and throws it
//! away: the far end of `scripts/bench/proxy.sh`'s traced runs, so their
//! cost includes a real export.
//!
//! Usage: `otlp_sink 127.0.0.1:4317` — prints the spans received so far
//! on stdout every second.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};

struct Sink(Arc<AtomicU64>);

#[tonic::async_trait]
impl TraceService for Sink {
    async fn export(
        &self,
        req: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        let n: usize = req
            .get_ref()
            .resource_spans
            .iter()
            .flat_map(|r| &r.scope_spans)
            .map(|s| s.spans.len())
            .sum();
        self.0.fetch_add(n as u64, Ordering::Relaxed);
        Ok(tonic::Response::new(ExportTraceServiceResponse {
            partial_success: None,
        }))
    }
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let addr: std::net::SocketAddr = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:4317".into())
        .parse()?;
    let count = Arc::new(AtomicU64::new(0));
    let shown = count.clone();
    tokio::spawn(async move {
        let mut last = u64::MAX;
        loop {
            tokio::time::sleep(Duration::from_secs(1)).await;
            let n = shown.load(Ordering::Relaxed);
            if n != last {
                println!("spans {n}");
                last = n;
            }
        }
    });
    tonic::transport::Server::builder()
        .add_service(TraceServiceServer::new(Sink(count)))
        .serve(addr)
        .await?;
    Ok(())
}
