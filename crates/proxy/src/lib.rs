//! Tandem's data plane: the HTTP proxy.
//!
//! It owns the client listener, route matching, load balancing, passive
//! health (outlier ejection), retries, the control-plane subscription and
//! the on-disk last-known-good configuration. It must never block a request
//! on the control plane: requests read an immutable [`table::Table`] through
//! an `ArcSwap`, and the subscription only ever swaps in a new one.
//!
//! Pure decisions (routing, balancing, ejection) live in `tandem-core`; this
//! crate is the I/O around them.
//!
//! Only what the binary needs is public ([`run`], [`Args`], [`Settings`],
//! [`Error`]); the modules are the crate's own, and its tests speak to it
//! as a process, over its ports.

mod access_log;
mod admin;
mod body;
mod clock;
mod config;
mod drain;
mod error;
mod explain;
mod forward;
mod h1;
mod h2;
mod sampling;
mod server;
mod store;
mod stream;
mod table;
mod tcp;
mod tls;
mod traffic;
mod tunnel;
mod upstream;
mod watch;

use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;

use tandem_core::health::BackendKey;
use tandem_core::{AdminState, Snapshot};
use tokio::net::TcpListener;
use tokio::sync::watch as channel;

pub use config::{Args, Settings};
pub use error::Error;
use forward::Proxy;
use table::{Registry, Source};

/// The proxy's moving parts, shared by the listener, the admin port and the
/// subscription.
pub(crate) struct Runtime {
    pub proxy: Arc<Proxy>,
    /// TCP routes: their table, listeners and connections.
    pub tcp: Arc<tcp::Tcp>,
    /// The TLS listener's certificates (None: no TLS listener).
    pub tls: Option<Arc<tls::Tls>>,
    /// Is a watch stream to a control plane open right now?
    pub following: std::sync::atomic::AtomicBool,
    /// Were control-plane endpoints configured at all?
    pub has_control_plane: bool,
    pub registry: Registry,
    /// The configuration installed last, as declared, and the runtime
    /// admin-state overrides (raft, control database down) served over it.
    overrides: std::sync::Mutex<Overrides>,
    persist: Option<channel::Sender<Option<Arc<Snapshot>>>>,
    revision: metrics::Gauge,
    from_disk: metrics::Gauge,
    applies: metrics::Counter,
}

impl Runtime {
    fn new(
        settings: &Settings,
        access_log: Option<Arc<access_log::AccessLog>>,
        tls: Option<Arc<tls::Tls>>,
        spans: Option<tandem_telemetry::SpanSink>,
    ) -> Self {
        Self {
            tls,
            proxy: Arc::new(Proxy {
                https_port: settings.https_port,
                access_log,
                ..Proxy::new(
                    settings.parse_options(),
                    settings.trusted_proxies.clone(),
                    spans,
                )
            }),
            tcp: Arc::new(tcp::Tcp::new(settings.tcp.clone())),
            following: std::sync::atomic::AtomicBool::new(false),
            has_control_plane: !settings.control.is_empty(),
            registry: Registry::new(settings.upstream_max_idle)
                .with_sampling(settings.sampling.clone()),
            overrides: std::sync::Mutex::new(Overrides::default()),
            persist: settings.state_dir.clone().map(spawn_persister),
            revision: metrics::gauge!("tandem_proxy_config_revision"),
            from_disk: metrics::gauge!("tandem_proxy_config_from_disk"),
            applies: metrics::counter!("tandem_proxy_config_applies_total"),
        }
    }

    /// Where the configuration being served came from (None: none yet).
    pub fn source(&self) -> Option<Source> {
        self.proxy.table.load().as_ref().map(|t| t.source)
    }

    /// Builds the table for `snapshot` and swaps it in; requests already
    /// running keep the table they started with.
    pub fn install(&self, snapshot: Snapshot, source: Source) {
        let snapshot = Arc::new(snapshot);
        {
            let mut o = self.overrides.lock().unwrap_or_else(|p| p.into_inner());
            o.installed = Some((snapshot.clone(), source));
            self.swap_tables(&o);
        }
        if let Some(tls) = &self.tls {
            tls.install(&snapshot);
            let served = tls.served();
            self.tcp.node_state.send_if_modified(|s| {
                let changed = s.certificates != served;
                s.certificates = served;
                changed
            });
        }
        self.revision.set(snapshot.revision.0 as f64);
        self.from_disk
            .set(if source == Source::Disk { 1.0 } else { 0.0 });
        self.applies.increment(1);
        tracing::info!(
            revision = snapshot.revision.0,
            source = source.as_str(),
            pools = snapshot.pools.len(),
            routes = snapshot.routes.len(),
            tcp_routes = snapshot.tcp_routes.len(),
            certificates = snapshot.certificates.len(),
            "configuration applied"
        );
        if source == Source::ControlPlane
            && let Some(tx) = &self.persist
        {
            tx.send_replace(Some(snapshot));
        }
    }

    /// Builds the HTTP and TCP tables from the installed configuration
    /// with the overrides' admin states in place of the declared ones,
    /// exactly as if they had been declared (the balancers, panic mode
    /// and the TCP supervisor see the same thing).
    fn swap_tables(&self, o: &Overrides) {
        let Some((snapshot, source)) = &o.installed else {
            return;
        };
        let patched;
        let serve = if o.states.is_empty() {
            snapshot.as_ref()
        } else {
            let mut s = Snapshot::clone(snapshot);
            for (key, state) in &o.states {
                if let Some(b) = s
                    .pools
                    .get_mut(&key.pool)
                    .and_then(|p| p.backends.iter_mut().find(|b| b.address == key.address))
                {
                    b.admin_state = *state;
                }
            }
            patched = s;
            &patched
        };
        let table = Arc::new(self.registry.build(serve, *source));
        self.proxy.table.store(Some(table.clone()));
        self.tcp.install(serve, table);
    }

    /// Applies the runtime admin-state overrides of a health update
    /// (`full`: they replace every override; otherwise `None` clears one),
    /// rebuilding the tables when one changed.
    pub fn apply_overrides(&self, full: bool, states: Vec<(BackendKey, Option<AdminState>)>) {
        let mut o = self.overrides.lock().unwrap_or_else(|p| p.into_inner());
        let before = o.states.clone();
        if full {
            o.states.clear();
        }
        for (key, state) in states {
            match state {
                Some(s) => o.states.insert(key, s),
                None => o.states.remove(&key),
            };
        }
        if o.states == before {
            return;
        }
        for (key, state) in &o.states {
            if before.get(key) != Some(state) {
                tracing::warn!(pool = %key.pool, backend = %key.address, state = state.as_str(), "runtime admin-state override (raft, control database down)");
            }
        }
        for key in before.keys().filter(|k| !o.states.contains_key(*k)) {
            tracing::info!(pool = %key.pool, backend = %key.address, "runtime admin-state override cleared");
        }
        self.swap_tables(&o);
    }
}

/// The configuration installed last and the overrides served over it.
#[derive(Default)]
struct Overrides {
    installed: Option<(Arc<Snapshot>, Source)>,
    states: std::collections::BTreeMap<BackendKey, AdminState>,
}

impl Runtime {
    /// Applies committed health states (see [`Registry::apply_health`]);
    /// TCP routes see the update whole, never half of it.
    pub fn apply_health(
        &self,
        full: bool,
        states: Vec<(
            tandem_core::PoolName,
            tandem_core::BackendAddr,
            tandem_core::health::HealthState,
        )>,
    ) {
        self.tcp.health_applying();
        self.registry.apply_health(full, states);
        self.tcp.health_applied();
    }
}

/// Writes the newest snapshot to disk, off the watch loop; a burst of
/// revisions is written once.
fn spawn_persister(dir: PathBuf) -> channel::Sender<Option<Arc<Snapshot>>> {
    let (tx, mut rx) = channel::channel::<Option<Arc<Snapshot>>>(None);
    tokio::spawn(async move {
        while rx.changed().await.is_ok() {
            let Some(snapshot) = rx.borrow_and_update().clone() else {
                continue;
            };
            let dir = dir.clone();
            let revision = snapshot.revision;
            match tokio::task::spawn_blocking(move || store::save(&dir, &snapshot)).await {
                Ok(Ok(())) => tracing::debug!(revision = revision.0, "configuration saved to disk"),
                Ok(Err(e)) => {
                    tracing::error!(error = %e, "cannot save the configuration; a restart without the control plane would serve an older one")
                }
                Err(e) => tracing::error!(error = %e, "saving the configuration panicked"),
            }
        }
    });
    tx
}

/// Runs the proxy until `shutdown` resolves, then drains. With
/// `tls_listener`, HTTPS is served there too.
pub async fn run(
    settings: Settings,
    listener: TcpListener,
    tls_listener: Option<TcpListener>,
    admin_listener: TcpListener,
    prometheus: tandem_telemetry::PrometheusHandle,
    spans: Option<tandem_telemetry::SpanSink>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), Error> {
    clock::start();
    let access_log = match &settings.access_log {
        Some(options) => Some(access_log::AccessLog::start(options).map_err(|e| {
            Error::Config(format!(
                "TANDEM_ACCESS_LOG: cannot open {}: {e}",
                options.path.display()
            ))
        })?),
        None => None,
    };
    let tls = match &tls_listener {
        Some(_) => Some(Arc::new(
            tls::Tls::new().map_err(|e| Error::Config(format!("TLS: {e}")))?,
        )),
        None => None,
    };
    let rt = Arc::new(Runtime::new(
        &settings,
        access_log.clone(),
        tls.clone(),
        spans,
    ));

    // Static stability: serve the last-known-good copy at once.
    let mut initial = None;
    if let Some(dir) = &settings.state_dir {
        match store::load(dir) {
            Ok(Some(snapshot)) => {
                tracing::info!(
                    revision = snapshot.revision.0,
                    path = %store::path(dir).display(),
                    "serving the configuration saved on disk until the control plane answers"
                );
                rt.install(snapshot.clone(), Source::Disk);
                initial = Some(snapshot);
            }
            Ok(None) => tracing::info!(dir = %dir.display(), "no saved configuration yet"),
            Err(e) => tracing::error!(error = %e, "ignoring the saved configuration"),
        }
    } else {
        tracing::warn!("TANDEM_STATE_DIR is unset: a restart will need the control plane");
    }

    if settings.control.is_empty() {
        tracing::warn!("TANDEM_CONTROL is empty: serving only the saved configuration");
    } else {
        tokio::spawn(watch::run(
            rt.clone(),
            settings.control.clone(),
            settings.identity.clone(),
            initial,
        ));
    }

    // One shutdown signal for the HTTP listener, the TCP listeners and the
    // admin port.
    let (down_tx, down_rx) = channel::channel(false);
    tokio::spawn(async move {
        shutdown.await;
        let _ = down_tx.send(true);
    });
    if let Ok(admin) = admin_listener.local_addr() {
        rt.tcp
            .node_state
            .send_modify(|s| s.admin_address = admin.to_string());
    }
    tokio::spawn(tcp::listeners::run(rt.tcp.clone(), down_rx.clone()));
    tokio::spawn(tcp::supervisor::run(rt.tcp.clone()));
    let (stop_tx, stop_rx) = channel::channel(false);
    let admin_tokens = settings.admin_tokens.clone();
    let admin = tokio::spawn(admin::serve(
        admin_listener,
        rt.clone(),
        prometheus,
        admin_tokens,
        {
            let mut rx = stop_rx.clone();
            async move {
                let _ = rx.wait_for(|s| *s).await;
            }
        },
    ));
    tracing::info!(
        listen = %listener.local_addr().map_err(Error::Admin)?,
        node_id = %settings.identity.node_id,
        "proxy listening"
    );
    let http_down = {
        let mut rx = down_rx.clone();
        async move {
            let _ = rx.wait_for(|s| *s).await;
        }
    };
    let down_rx_tls = down_rx.clone();
    // HTTP requests and TCP connections drain side by side.
    let tcp_drain = {
        let (tcp, mut rx, timeout) = (rt.tcp.clone(), down_rx, settings.drain_timeout);
        async move {
            let _ = rx.wait_for(|s| *s).await;
            tcp.drain(timeout).await;
        }
    };
    let https = async {
        if let Some(l) = tls_listener {
            tracing::info!(listen = %l.local_addr().map_err(Error::Admin)?, "HTTPS listening");
            let down = {
                let mut rx = down_rx_tls;
                async move {
                    let _ = rx.wait_for(|s| *s).await;
                }
            };
            server::serve(l, rt.proxy.clone(), (&settings).into(), tls, down).await;
        }
        Ok::<(), Error>(())
    };
    let (_, _, https) = tokio::join!(
        server::serve(
            listener,
            rt.proxy.clone(),
            (&settings).into(),
            None,
            http_down
        ),
        tcp_drain,
        https
    );
    https?;
    let _ = stop_tx.send(true);
    if let Some(log) = &access_log {
        log.close();
    }
    match admin.await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) => Err(e),
        Err(e) => Err(Error::Admin(std::io::Error::other(e))),
    }
}
