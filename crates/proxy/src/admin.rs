//! The admin port: `/metrics`, `/healthz`, `/readyz` (from
//! `tandem-telemetry`) and `/config`, the live routing table with each
//! backend's state.

use std::future::Future;
use std::sync::Arc;

use axum::Json;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use tokio::net::TcpListener;

use crate::{Error, Runtime};

pub async fn serve(
    listener: TcpListener,
    rt: Arc<Runtime>,
    prometheus: tandem_telemetry::PrometheusHandle,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), Error> {
    let ready_rt = rt.clone();
    let ready = tandem_telemetry::ready_check(move || {
        let rt = ready_rt.clone();
        async move {
            let following = rt.following.load(std::sync::atomic::Ordering::Relaxed);
            let link = match (rt.has_control_plane, following) {
                (false, _) => "; no control plane configured",
                (true, true) => "",
                (true, false) => {
                    "; control plane unreachable, serving the last known configuration"
                }
            };
            match rt.proxy.table.load_full() {
                Some(t) => Ok(format!(
                    "configuration revision {} from {}{link}",
                    t.revision,
                    t.source.as_str()
                )),
                None => Err(
                    "no configuration yet (control plane not reached, nothing saved on disk)"
                        .into(),
                ),
            }
        }
    });
    let histograms_rt = rt.clone();
    let histograms: tandem_telemetry::MetricsExtra =
        Arc::new(move |out: &mut String| render_histograms(&histograms_rt, out));
    let router = tandem_telemetry::admin_router_with(
        prometheus,
        ready,
        tandem_telemetry::Started::already(),
        Some(histograms),
    )
    .route(
        "/config",
        get(move || {
            let rt = rt.clone();
            async move { config(&rt) }
        }),
    );
    tandem_telemetry::serve_admin(listener, router, shutdown)
        .await
        .map_err(Error::Admin)
}

/// Each routed pool's request-duration histogram (see
/// [`tandem_telemetry::histogram`]).
fn render_histograms(rt: &Runtime, out: &mut String) {
    const NAME: &str = "tandem_proxy_request_duration_seconds";
    let Some(table) = rt.proxy.table.load_full() else {
        return;
    };
    out.push_str("# HELP tandem_proxy_request_duration_seconds From routing to the end of the response body, per pool.\n");
    out.push_str("# TYPE tandem_proxy_request_duration_seconds histogram\n");
    for pool in &table.pools {
        let labels = format!("pool=\"{}\"", pool.state.name);
        pool.state.latency.render(out, NAME, &labels);
    }
}

/// The routing table with each backend's state, and the TCP routes.
#[derive(serde::Serialize)]
struct ConfigView {
    #[serde(flatten)]
    http: crate::table::TableView,
    tcp: crate::tcp::TcpView,
}

fn config(rt: &Runtime) -> Response {
    match rt.proxy.table.load_full() {
        Some(t) => Json(ConfigView {
            http: t.view(),
            tcp: rt.tcp.view(),
        })
        .into_response(),
        None => (StatusCode::SERVICE_UNAVAILABLE, "no configuration yet\n").into_response(),
    }
}
