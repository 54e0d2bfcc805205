//! The admin port: `/metrics`, `/healthz`, `/readyz` (from
//! `tandem-telemetry`) and `/config`, the live routing table with each
//! backend's state.

use std::future::Future;
use std::sync::Arc;

use axum::Json;
use axum::extract::Query;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use tokio::net::TcpListener;

use crate::{Error, Runtime};

pub async fn serve(
    listener: TcpListener,
    rt: Arc<Runtime>,
    prometheus: tandem_telemetry::PrometheusHandle,
    tokens: Vec<String>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), Error> {
    let tokens: Arc<[String]> = tokens.into();
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
        "/explain",
        get({
            let rt = rt.clone();
            let tokens = tokens.clone();
            move |headers: HeaderMap, Query(q): Query<ExplainQuery>| {
                let rt = rt.clone();
                let tokens = tokens.clone();
                async move {
                    match authorized(&tokens, &headers, "/explain") {
                        Ok(()) => explain(&rt, q),
                        Err(refused) => refused,
                    }
                }
            }
        }),
    )
    .route(
        "/config",
        get(move |headers: HeaderMap| {
            let rt = rt.clone();
            let tokens = tokens.clone();
            async move {
                match authorized(&tokens, &headers, "/config") {
                    Ok(()) => config(&rt),
                    Err(refused) => refused,
                }
            }
        }),
    );
    tandem_telemetry::serve_admin(listener, router, shutdown)
        .await
        .map_err(Error::Admin)
}

/// Whether a request for `what` (which reveals the topology) carries one
/// of `tokens` as `Authorization: Bearer <token>`; 401 saying what is
/// needed otherwise. No token configured: refused too.
#[allow(clippy::result_large_err)]
fn authorized(tokens: &[String], headers: &HeaderMap, what: &str) -> Result<(), Response> {
    if tokens.is_empty() {
        return Err((
            StatusCode::UNAUTHORIZED,
            format!(
                "{what} reveals the topology and this proxy has no token to ask for: set \
                 TANDEM_ADMIN_TOKEN (or TANDEM_TOKEN)\n"
            ),
        )
            .into_response());
    }
    let presented = headers
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|v| v.as_bytes().strip_prefix(b"Bearer "));
    // Compare with every token, so the time taken says nothing.
    let ok = presented.is_some_and(|p| {
        tokens.iter().fold(false, |ok, t| {
            ok | tandem_client::constant_time_eq(p, t.as_bytes())
        })
    });
    if ok {
        Ok(())
    } else {
        Err((
            StatusCode::UNAUTHORIZED,
            format!(
                "{what} needs `Authorization: Bearer <token>`: the proxy's TANDEM_ADMIN_TOKEN or \
                 its control-plane token\n"
            ),
        )
            .into_response())
    }
}

/// Series rendered from the live table at each scrape: each pool's
/// request-duration histogram (see [`tandem_telemetry::histogram`]) and
/// the pool's state the alert rules read (panic mode, usable primaries).
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
    render_pool_states(&table, out);
}

fn render_pool_states(table: &crate::table::Table, out: &mut String) {
    use std::fmt::Write;
    let states: Vec<_> = table.pools.iter().map(|p| (p, p.serving())).collect();
    let gauge = |out: &mut String,
                 name: &str,
                 help: &str,
                 value: &dyn Fn(&crate::table::Serving) -> u64| {
        let _ = writeln!(out, "# HELP {name} {help}");
        let _ = writeln!(out, "# TYPE {name} gauge");
        for (pool, serving) in &states {
            let _ = writeln!(
                out,
                "{name}{{pool=\"{}\"}} {}",
                pool.state.name,
                value(serving)
            );
        }
    };
    gauge(
        out,
        "tandem_proxy_pool_panic",
        "1 while the pool is in panic mode (too few usable primaries: all of them take traffic).",
        &|s| u64::from(s.panic),
    );
    gauge(
        out,
        "tandem_proxy_pool_primaries",
        "The pool's enabled primaries.",
        &|s| s.primaries,
    );
    gauge(
        out,
        "tandem_proxy_pool_usable_primaries",
        "The pool's enabled primaries neither unhealthy per the agents nor ejected by this proxy.",
        &|s| s.usable_primaries,
    );
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

/// `GET /explain?host=H&path=P&client=IP`: what the proxy would do with
/// such a request (see [`crate::explain`]).
#[derive(serde::Deserialize)]
struct ExplainQuery {
    host: Option<String>,
    path: Option<String>,
    client: Option<String>,
}

fn explain(rt: &Runtime, q: ExplainQuery) -> Response {
    let question = match crate::explain::Question::parse(
        q.host.as_deref(),
        q.path.as_deref(),
        q.client.as_deref(),
        rt.proxy.parse.encoded_slashes,
    ) {
        Ok(question) => question,
        Err(bad) => return (StatusCode::BAD_REQUEST, format!("{bad}\n")).into_response(),
    };
    let Some(table) = rt.proxy.table.load_full() else {
        return (StatusCode::SERVICE_UNAVAILABLE, "no configuration yet\n").into_response();
    };
    let notes = |pool: &crate::table::PoolRt, i: usize| {
        rt.registry
            .health_note(&pool.config.name, &pool.backends[i].declared.address)
    };
    Json(crate::explain::explain(&table, question, &notes)).into_response()
}
