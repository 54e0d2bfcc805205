//! Wires the store, the hub and the gRPC and admin servers together.

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use tandem_client::{Backoff, Jitter};
use tandem_proto::v1::control_plane_server::ControlPlaneServer;
use tandem_telemetry::PrometheusHandle;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tonic::transport::server::TcpIncoming;

use crate::auth::{Authenticate, Credentials};
use crate::consensus::{Aggregator, Consensus, NoPeers, Peers, RaftSettings, Transport};
use crate::history;
use crate::hub::Hub;
use crate::service::{ControlService, Parts, RaftService};
use crate::store::Store;
use tandem_proto::v1::raft_server::RaftServer;

/// Everything a replica needs besides its listeners.
pub struct Settings {
    pub store: Store,
    pub credentials: Credentials,
    /// This replica's name in status and logs.
    pub replica: String,
    pub prometheus: PrometheusHandle,
    /// How long in-flight calls may take after shutdown begins.
    pub drain: Duration,
    pub raft: RaftSettings,
    /// Raft members' gRPC addresses, by id.
    pub members: BTreeMap<u64, String>,
    /// The token this replica presents to its peers.
    pub peer_token: String,
    /// mTLS on the gRPC listener and to the peers; `None`: plain TCP
    /// (`--insecure-plaintext`).
    pub tls: Option<crate::mtls::ReplicaTls>,
}

/// Runs a control-plane replica until `shutdown` resolves, then drains.
///
/// Migrations run in the background and are retried while the database is
/// away, so the replica starts (not ready) without it and recovers by itself;
/// meanwhile it copies the configuration from another replica if one holds
/// it, to answer reads and Watch from.
pub async fn run(
    grpc: TcpListener,
    admin: TcpListener,
    settings: Settings,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let Settings {
        store,
        credentials,
        replica,
        prometheus,
        drain,
        raft,
        members,
        peer_token,
        tls,
    } = settings;
    let peer_tls = tls.as_ref().map(|t| t.client.clone());
    let (stop_tx, stop_rx) = watch::channel(false);
    let hub = Hub::new(&replica, store.availability().clone());
    // What it served survives a restart: a database found behind it then
    // means history was rewritten (a new store generation).
    hub.remember_served_in(&raft.state_dir);
    store.on_commit(Box::new({
        let hub = hub.clone();
        move |revision, change, actor| hub.committed(revision, change, actor)
    }));
    let migrated = Arc::new(AtomicBool::new(false));

    // A new state directory under an id the group already has would
    // start with a forgotten vote: refuse, saying what to do.
    crate::membership::refuse_forgotten_member(
        raft.id,
        &raft.state_dir,
        &members,
        &peer_token,
        &store,
        peer_tls.as_ref(),
    )
    .await?;
    // Always a transport, even for a cluster of one: members can be added.
    let peers = {
        let local_ip = Some(grpc.local_addr()?.ip()).filter(|ip| !ip.is_unspecified());
        Some(Peers::new(
            raft.id,
            &members,
            &peer_token,
            local_ip,
            peer_tls.clone(),
        )?)
    };

    let (health_reporter, health_service) = tonic_health::server::health_reporter();
    health_reporter
        .set_not_serving::<ControlPlaneServer<ControlService>>()
        .await;

    // Migrate (retrying, and copying the configuration from another
    // replica meanwhile), then start listening for changes.
    tokio::spawn({
        let store = store.clone();
        let hub = hub.clone();
        let peers = peers.clone();
        let migrated = migrated.clone();
        let mut stop = stop_rx.clone();
        async move {
            let mut backoff = Backoff::new(
                Duration::from_millis(200),
                Duration::from_secs(2),
                Jitter::None,
            );
            loop {
                // The probe names the cause at once while the database is
                // away (the pool would wait out its acquire timeout).
                let migrated = match store.probe().await {
                    Ok(()) => store.migrate().await,
                    Err(e) => Err(e),
                };
                match migrated {
                    Ok(()) => break,
                    Err(e) => {
                        store.availability().down(match &e {
                            crate::Error::Unavailable(cause) => cause.clone(),
                            other => other.to_string(),
                        });
                        let retry_in = backoff.next_wait();
                        tracing::warn!(error = %e, ?retry_in, "cannot migrate the database yet");
                        if let Some(peers) = &peers {
                            hub.copy_from_peers(peers).await;
                        }
                        tokio::select! {
                            _ = tokio::time::sleep(retry_in) => {}
                            _ = stop.changed() => return,
                        }
                    }
                }
            }
            tracing::info!("database migrated");
            migrated.store(true, Ordering::Relaxed);
            health_reporter
                .set_serving::<ControlPlaneServer<ControlService>>()
                .await;
            hub.run(store, peers, stop).await;
        }
    });

    let ready = tandem_telemetry::ready_check({
        let store = store.clone();
        let migrated = migrated.clone();
        let hub = hub.clone();
        move || {
            let ready = readiness(&store, &hub, migrated.load(Ordering::Relaxed));
            async move { ready }
        }
    });
    let reflection_v1 = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(tandem_proto::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1()?;
    let reflection_v1alpha = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(tandem_proto::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1alpha()?;

    let transport: Arc<dyn Transport> = match &peers {
        Some(p) => Arc::new(p.clone()),
        None => Arc::new(NoPeers),
    };
    let consensus = Consensus::start(raft, transport, stop_rx.clone())?;
    if let Some(p) = &peers {
        p.attach(consensus.clone());
    }
    let aggregator = Aggregator::start(
        consensus.clone(),
        Arc::new({
            let hub = hub.clone();
            move || hub.config()
        }),
        stop_rx.clone(),
    );
    tokio::spawn(history::record(
        store.clone(),
        consensus.clone(),
        stop_rx.clone(),
    ));
    tokio::spawn(crate::overrides::reconcile(
        store.clone(),
        consensus.clone(),
        stop_rx.clone(),
    ));
    tokio::spawn(crate::membership::record(
        store.clone(),
        consensus.clone(),
        members.clone(),
        stop_rx.clone(),
    ));

    // The admin listener, with the status page.
    let status_page = crate::ui::Live::start(
        crate::ui::Sources {
            replica: replica.clone(),
            store: store.clone(),
            hub: hub.clone(),
            consensus: consensus.clone(),
            aggregator: aggregator.clone(),
            peers: peers.clone(),
        },
        stop_rx.clone(),
    );
    // Backends' committed health, rendered from the table at each scrape.
    let health_metrics: tandem_telemetry::MetricsExtra = Arc::new({
        let consensus = consensus.clone();
        move |out: &mut String| consensus.table().render_metrics(out)
    });
    let admin_router = tandem_telemetry::admin_router_with(
        prometheus,
        ready,
        tandem_telemetry::Started::already(),
        Some(health_metrics),
    )
    .merge(crate::ui::router(status_page, credentials.clone()));
    let admin_task = tokio::spawn(tandem_telemetry::serve_admin(admin, admin_router, {
        let mut stop = stop_rx.clone();
        async move {
            let _ = stop.changed().await;
        }
    }));
    let raft_service = RaftServer::with_interceptor(
        RaftService::new(consensus.clone()),
        Authenticate::new(credentials.clone()),
    );
    let service = ControlService::new(Parts {
        store,
        hub,
        consensus,
        aggregator,
        peers,
        members,
        replica: replica.clone(),
        shutdown: stop_rx.clone(),
        proxy_admin_token: credentials.proxy_admin_token(),
    });
    let control = ControlPlaneServer::with_interceptor(service, Authenticate::new(credentials));

    tracing::info!(
        grpc = %grpc.local_addr()?,
        %replica,
        mtls = tls.is_some(),
        "control plane serving"
    );
    let mut stop_signal = stop_rx.clone();
    let router = tonic::transport::Server::builder()
        .layer(crate::mtls::PeerLayer)
        .trace_fn(|req| tandem_telemetry::request_span("POST", req.uri().path(), req.headers()))
        .http2_keepalive_interval(Some(Duration::from_secs(10)))
        .http2_keepalive_timeout(Some(Duration::from_secs(5)))
        .add_service(health_service)
        .add_service(reflection_v1)
        .add_service(reflection_v1alpha)
        .add_service(control)
        .add_service(raft_service);
    let stopped = async move {
        let _ = stop_signal.changed().await;
    };
    type Serving = std::pin::Pin<
        Box<dyn Future<Output = Result<(), tonic::transport::Error>> + Send + 'static>,
    >;
    let server: Serving = match tls {
        Some(tls) => Box::pin(
            router.serve_with_incoming_shutdown(crate::mtls::incoming(grpc, tls.server), stopped),
        ),
        // No Nagle: small raft and watch writes must not wait for a
        // delayed ACK (it cost ~40 ms per election step and watch burst).
        None => Box::pin(router.serve_with_incoming_shutdown(
            TcpIncoming::from(grpc).with_nodelay(Some(true)),
            stopped,
        )),
    };
    let mut server = tokio::spawn(server);

    tokio::select! {
        r = &mut server => {
            r??;
            return Ok(());
        }
        _ = shutdown => {}
    }
    tracing::info!(deadline = ?drain, "shutting down: no new calls, ending watch streams, draining");
    let _ = stop_tx.send(true);
    match tokio::time::timeout(drain, server).await {
        Ok(r) => r??,
        Err(_) => tracing::warn!("drain deadline passed; exiting with calls in flight"),
    }
    let _ = admin_task.await;
    tracing::info!("stopped");
    Ok(())
}

/// `/readyz`: ready while the database is reachable and the hub follows
/// it. Otherwise not ready (a write would fail), saying what the replica
/// still serves.
fn readiness(store: &Store, hub: &Hub, migrated: bool) -> Result<String, String> {
    let availability = store.availability();
    let copy = hub.copy();
    if availability.is_up() && hub.is_listening() {
        return Ok(format!(
            "database reachable; configuration copy in memory at revision {}",
            copy.snapshot.revision.0
        ));
    }
    let serving = if copy.is_loaded() {
        format!(
            "serving reads and Watch from memory at revision {}",
            copy.snapshot.revision.0
        )
    } else {
        "no copy of the configuration to serve reads from".to_string()
    };
    let database = if availability.is_up() {
        "database reachable, but not listening for config changes yet".to_string()
    } else {
        format!(
            "database {} {}",
            availability.name(),
            availability.outage(None).how_long()
        )
    };
    let migrated = if migrated { "" } else { ", not migrated yet" };
    Err(format!("{database}{migrated}: {serving}; writes fail"))
}
