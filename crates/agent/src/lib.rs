//! Tandem's health-probe agent.
//!
//! It owns active probing: it follows the pools and backends declared on the
//! control plane (`Watch`, kind AGENT), probes every backend by HTTP or TCP
//! on its pool's interval with jitter, and reports each result to the
//! control plane (`ReportHealth`), which aggregates the reports of every
//! agent and decides. It must never decide a backend's state by itself:
//! it reports what it sees, raw, and the quorum of agents decides, so one
//! agent that lost its own path to a backend cannot take it down.
//!
//! The pieces: [`watch`] (configuration in), [`target`] (what to probe),
//! [`schedule`] (when: each target jittered, start times on a shared grid;
//! pure timing), [`engine`] (one event loop on a thread of its own running
//! every probe), [`prober`] (the engine's targets kept in step with the
//! configuration), [`probe`] (what a probe is: one TCP connect, or one HTTP request on a
//! kept-alive connection replaced every few dozen probes and after any
//! failure), [`report`] (results out, batched, never blocking a probe;
//! settled passes wait longer than anything that can move a verdict).
//!
//! The modules form layers, each using only those below it (and the
//! crate's [`Error`]): `schedule`, `probe`, `control`, `config`, `target`
//! and `watch` use nothing else of the agent's; `metrics` uses `probe`;
//! `report` uses `schedule`, `probe`, `metrics` and `control`; `engine`
//! uses `schedule`, `probe`, `metrics` and `report`; `prober` drives the
//! `engine`; [`run`] wires them together. Only the binary's needs are public: [`run`], [`Args`], [`Settings`],
//! [`Error`].

mod config;
mod control;
mod engine;
mod metrics;
mod probe;
mod prober;
mod report;
mod schedule;
mod target;
mod watch;

use std::future::Future;
use std::sync::Arc;

use tandem_core::Snapshot;
use tokio::net::TcpListener;
use tokio::sync::watch as channel;

pub use config::{Args, Settings};

use crate::engine::Context;
use crate::prober::Prober;
use crate::report::{ReportQueue, Reporter};

/// The agent's errors (all at start-up: once running, it retries forever).
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("bad configuration: {0}")]
    Config(String),
    #[error("cannot listen on {addr}: {source}")]
    Listen {
        addr: std::net::SocketAddr,
        source: std::io::Error,
    },
    #[error("admin server: {0}")]
    Admin(std::io::Error),
    #[error("cannot start the probe engine: {0}")]
    Engine(std::io::Error),
}

/// Runs the agent until `shutdown` resolves: stops probing, sends the
/// observations still queued, and returns.
pub async fn run(
    settings: Settings,
    admin_listener: TcpListener,
    prometheus: tandem_telemetry::PrometheusHandle,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), Error> {
    let me = settings.identity.clone();
    let queue = Arc::new(ReportQueue::new(settings.report_queue));
    let reporter = Reporter::new(
        &settings.control,
        me.clone(),
        settings.report_batch,
        settings.report_timeout,
    )?;
    let (config_tx, mut config_rx) = channel::channel::<Option<Arc<Snapshot>>>(None);
    let (stop_tx, stop_rx) = channel::channel(false);

    // Admin port: ready once the control plane gave us a configuration.
    let ready_rx = config_rx.clone();
    let ready = tandem_telemetry::ready_check(move || {
        let revision = ready_rx.borrow().as_ref().map(|s| s.revision);
        async move {
            match revision {
                Some(r) => Ok(format!("configuration at revision {r}")),
                None => Err("no configuration from the control plane yet".to_string()),
            }
        }
    });
    let probe_metrics = metrics::ProbeMetrics::new();
    let router = tandem_telemetry::admin_router_with(
        prometheus,
        ready,
        tandem_telemetry::Started::already(),
        Some(probe_metrics.render_latency()),
    );
    let admin = tokio::spawn(tandem_telemetry::serve_admin(admin_listener, router, {
        let mut rx = stop_rx.clone();
        async move {
            let _ = rx.wait_for(|s| *s).await;
        }
    }));

    // The probes' start grid, which the reports follow too.
    let origin = std::time::Instant::now();
    let reporting = tokio::spawn(reporter.run(
        queue.clone(),
        stop_rx.clone(),
        tokio::time::Instant::from_std(origin),
    ));
    let watching = tokio::spawn(watch::run(settings.control.clone(), me, config_tx));
    let mut prober = Prober::start(Arc::new(Context {
        origin,
        source_ip: settings.probe_source_ip,
        fresh_connection_every: settings.probe_fresh_connection_every,
        queue,
        metrics: probe_metrics,
    }))
    .map_err(Error::Engine)?;
    tracing::info!(
        node_id = %settings.identity.node_id,
        zone = %settings.identity.zone,
        control = %settings.control.join(","),
        probe_source_ip = ?settings.probe_source_ip,
        probe_fresh_connection_every = settings.probe_fresh_connection_every,
        "agent started"
    );

    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            _ = &mut shutdown => break,
            changed = config_rx.changed() => {
                if changed.is_err() {
                    break;
                }
                let snapshot = config_rx.borrow_and_update().clone();
                if let Some(s) = snapshot {
                    let stats = prober.sync(target::targets(&s));
                    if stats.added + stats.removed + stats.restarted > 0 {
                        tracing::info!(
                            revision = s.revision.0,
                            targets = stats.total,
                            added = stats.added,
                            removed = stats.removed,
                            restarted = stats.restarted,
                            "probe targets updated"
                        );
                    }
                }
            }
        }
    }

    tracing::info!("stopping: no new probes; sending the observations still queued");
    watching.abort();
    drop(prober);
    let _ = stop_tx.send(true);
    let flush = settings.report_timeout * (settings.control.len() as u32 + 1);
    if tokio::time::timeout(flush, reporting).await.is_err() {
        tracing::warn!("gave up sending the last observations");
    }
    match admin.await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) => Err(Error::Admin(e)),
        Err(e) => Err(Error::Admin(std::io::Error::other(e))),
    }
}
