//! Wires the store, the routes and the admin endpoints together and runs
//! the HTTP server until shutdown.

use std::future::{Future, IntoFuture};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use tandem_client::{Backoff, Jitter};
use tandem_telemetry::{PrometheusHandle, Started};
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::faults::Faults;
use crate::store::Store;
use crate::web::{self, AppState};

/// Everything the shop needs besides its listener.
pub struct Settings {
    pub store: Store,
    /// Shown in the "served by" badge and the `X-Served-By` header.
    pub instance: String,
    pub faults: Faults,
    pub prometheus: PrometheusHandle,
    /// The longest a request may take before it is abandoned with a 503.
    pub request_timeout: Duration,
    /// How long `/readyz` waits for the database.
    pub ready_timeout: Duration,
    /// How long in-flight requests may take after shutdown begins.
    pub drain_timeout: Duration,
}

/// Serves the shop on `listener` until `shutdown` resolves, then stops
/// accepting connections and lets in-flight requests finish (up to the
/// drain timeout).
///
/// Migrations run in the background and are retried while the database is
/// away, so the shop starts (not ready, answering 503) without it and
/// recovers by itself.
pub async fn run(
    listener: TcpListener,
    settings: Settings,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let Settings {
        store,
        instance,
        faults,
        prometheus,
        request_timeout,
        ready_timeout,
        drain_timeout,
    } = settings;
    let migrated = Arc::new(AtomicBool::new(false));
    let started = Started::default();

    let migrations = tokio::spawn({
        let store = store.clone();
        let migrated = migrated.clone();
        let started = started.clone();
        async move {
            let mut backoff = Backoff::new(
                Duration::from_millis(100),
                Duration::from_secs(2),
                Jitter::None,
            );
            loop {
                match store.migrate().await {
                    Ok(()) => break,
                    Err(e) => {
                        let retry_in = backoff.next_wait();
                        tracing::warn!(error = %e, ?retry_in, "cannot migrate the shop database yet");
                        tokio::time::sleep(retry_in).await;
                    }
                }
            }
            migrated.store(true, Ordering::Release);
            tracing::info!("shop database migrated");
            // Health checks see the shop only once its pool is warm: a
            // restarted shop put into rotation with an empty pool made
            // its first shoppers queue behind a burst of logins.
            while let Err(e) = store.warm().await {
                let retry_in = backoff.next_wait();
                tracing::warn!(error = %e, ?retry_in, "cannot open the warm database connections yet");
                tokio::time::sleep(retry_in).await;
            }
            started.set();
            tracing::info!("database pool warm: /healthz answers ok");
        }
    });

    let ready = tandem_telemetry::ready_check({
        let store = store.clone();
        let migrated = migrated.clone();
        move || {
            let store = store.clone();
            let migrated = migrated.load(Ordering::Acquire);
            async move {
                if !migrated {
                    return Err("database not migrated yet (is it reachable?)".to_string());
                }
                match tokio::time::timeout(ready_timeout, store.ping()).await {
                    Ok(Ok(())) => Ok("database reachable".to_string()),
                    Ok(Err(e)) => Err(e.to_string()),
                    Err(_) => Err(format!(
                        "database did not answer within {} ms",
                        ready_timeout.as_millis()
                    )),
                }
            }
        }
    });
    let admin = tandem_telemetry::admin_router_with(prometheus, ready, started, None);
    let state = AppState::new(store, &instance, migrated);
    let app = web::router(state, faults, request_timeout, admin);

    let (stop_tx, mut stop_rx) = watch::channel(false);
    tracing::info!(listen = %listener.local_addr()?, %instance, "widget shop serving");
    let server = axum::serve(listener, app)
        .with_graceful_shutdown(async move {
            let _ = stop_rx.changed().await;
        })
        .into_future();
    let mut server = tokio::spawn(server);

    let result = tokio::select! {
        r = &mut server => r.map_err(std::io::Error::other).and_then(|r| r),
        _ = shutdown => {
            tracing::info!(deadline = ?drain_timeout, "shutting down: no new connections, draining");
            let _ = stop_tx.send(true);
            match tokio::time::timeout(drain_timeout, &mut server).await {
                Ok(r) => r.map_err(std::io::Error::other).and_then(|r| r),
                Err(_) => {
                    tracing::warn!("drain deadline passed; exiting with requests in flight");
                    server.abort();
                    Ok(())
                }
            }
        }
    };
    migrations.abort();
    tracing::info!("stopped");
    result
}
