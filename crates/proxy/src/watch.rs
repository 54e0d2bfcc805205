//! Following the control plane: a `Watch` stream per connection, a full
//! snapshot when we are behind, then each change in revision order.
//!
//! Every applied revision is turned into a new [`crate::table::Table`] and
//! swapped in, written to disk (by a separate task, so a slow disk never
//! holds up the stream) and reported with `ReportApplied` (also separately,
//! so a slow control plane never does either). On any error the proxy keeps
//! serving what it has and reconnects with jittered exponential back-off,
//! rotating over the endpoints. Protobuf types stop here: everything past
//! this module sees `tandem-core` types.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use futures::FutureExt;
pub use tandem_client::Identity;
use tandem_client::{Progress, Reconnect, apply_event, open_watch, report_applied_with};
use tandem_core::{Revision, Snapshot};
use tandem_proto::convert::{backend_health_from_proto, backend_traffic_to_proto};
use tandem_proto::v1::{self, NodeKind, watch_event::Event};
use tokio::sync::watch;
use tonic::transport::Channel;

use crate::Runtime;
use crate::table::Source;
/// A stream that sends nothing this long after opening means we are
/// already at the control plane's revision.
const UP_TO_DATE_AFTER: Duration = Duration::from_millis(500);

/// Runs until the process stops.
pub async fn run(
    rt: Arc<Runtime>,
    endpoints: Vec<String>,
    me: Identity,
    initial: Option<Snapshot>,
) {
    let (report_tx, report_rx) = watch::channel::<Option<(Channel, Revision)>>(None);
    let mut sampler = crate::traffic::Sampler::new();
    let figures = rt.clone();
    let traffic: tandem_client::TrafficSource = Box::new(move || {
        let table = figures.proxy.table.load_full();
        sampler
            .sample(table.as_deref())
            .iter()
            .map(backend_traffic_to_proto)
            .collect()
    });
    tokio::spawn(report_applied_with(
        report_rx,
        Some(rt.tcp.node_state()),
        Some(traffic),
        me.clone(),
        NodeKind::Proxy,
        "serving from the control plane",
    ));
    let reconnects = metrics::counter!("tandem_proxy_watch_reconnects_total");

    let mut current = initial;
    let mut attempts = Reconnect::new(endpoints);
    loop {
        let (url, from) = attempts.attempt(current.as_ref());
        let learner = attempts.learner();
        let outcome = follow(&rt, &url, &me, from, &mut current, &report_tx, learner).await;
        rt.following.store(false, Ordering::Relaxed);
        attempts
            .ended(&url, outcome, "serving the last configuration")
            .await;
        reconnects.increment(1);
    }
}

async fn follow(
    rt: &Runtime,
    url: &str,
    me: &Identity,
    from: Revision,
    current: &mut Option<Snapshot>,
    report: &watch::Sender<Option<(Channel, Revision)>>,
    learner: tandem_client::Learner,
) -> Result<Progress, tandem_client::BoxError> {
    let (channel, mut stream) =
        open_watch(url, me, NodeKind::Proxy, from, current.as_ref(), learner).await?;
    rt.following.store(true, Ordering::Relaxed);
    tracing::info!(endpoint = %url, from_revision = from.0, "watching the control plane");

    let mut progress = Progress::Nothing;
    // A stream that sends no config soon after opening means we are already
    // at the control plane's revision: what we serve is then confirmed.
    let confirm = tokio::time::sleep(UP_TO_DATE_AFTER);
    tokio::pin!(confirm);
    let mut confirmed = false;
    loop {
        let next = tokio::select! {
            next = stream.message() => next?,
            () = &mut confirm, if !confirmed => {
                confirmed = true;
                if let Some(s) = current.as_ref() {
                    if rt.source() != Some(Source::ControlPlane) {
                        rt.install(s.clone(), Source::ControlPlane);
                    }
                    report.send_replace(Some((channel.clone(), s.revision)));
                    progress = Progress::Applied;
                }
                continue;
            }
        };
        let Some(event) = next else { break };
        let mut pending = vec![event];
        // Apply whatever else already arrived before rebuilding the table
        // once: a burst of changes costs one swap.
        while pending.len() < 256 {
            match stream.message().now_or_never() {
                Some(Ok(Some(e))) => pending.push(e),
                Some(Err(e)) => return Err(e.into()),
                Some(Ok(None)) | None => break,
            }
        }
        let mut changed = false;
        for event in pending {
            if let Some(Event::Health(update)) = &event.event {
                apply_health(rt, update);
                continue;
            }
            match apply_event(current, &event) {
                Ok(moved) => changed |= moved,
                Err(why) => {
                    tracing::warn!(revision = event.revision, reason = %why, "change does not apply; asking for a fresh snapshot");
                    if changed && let Some(s) = current.as_ref() {
                        rt.install(s.clone(), Source::ControlPlane);
                    }
                    return Ok(Progress::Diverged);
                }
            }
        }
        if changed && let Some(s) = current.as_ref() {
            confirmed = true;
            rt.install(s.clone(), Source::ControlPlane);
            report.send_replace(Some((channel.clone(), s.revision)));
            progress = Progress::Applied;
        }
    }
    tracing::info!(endpoint = %url, "watch stream ended");
    Ok(progress)
}

/// Committed active-health states (from the agents, via raft): unhealthy
/// backends stop taking traffic. They do not change the config revision.
fn apply_health(rt: &Runtime, update: &v1::HealthUpdate) {
    // A decision that was traced: this proxy's part continues its trace.
    let span = if update.traceparent.is_empty() {
        tracing::Span::none()
    } else {
        let span = tracing::info_span!(
            "health update applied",
            raft_index = update.index,
            backends = update.backends.len(),
            full = update.full,
        );
        tandem_telemetry::spans::continue_from(&span, &update.traceparent);
        span
    };
    let _entered = span.enter();
    let mut states = Vec::with_capacity(update.backends.len());
    let mut notes = Vec::with_capacity(update.backends.len());
    let mut overrides = Vec::new();
    for b in &update.backends {
        // A runtime admin-state override (raft, control database down).
        let parsed = backend_health_from_proto(b).and_then(|h| {
            let o = b.admin_override.map_or(Ok(None), |v| {
                tandem_proto::convert::admin_state_from_proto(v, "admin_override")
            })?;
            Ok((h, o))
        });
        match parsed {
            Ok(((key, health), admin_override)) => {
                overrides.push((key.clone(), admin_override));
                if health.state == tandem_core::health::HealthState::Unhealthy {
                    tracing::warn!(pool = %key.pool, backend = %key.address, reason = %health.reason, "backend marked unhealthy by the agents");
                }
                notes.push((
                    (key.pool.clone(), key.address.clone()),
                    crate::table::HealthNote {
                        reason: health.reason,
                        since_unix_ms: health.since_ms,
                    },
                ));
                states.push((key.pool, key.address, health.state));
            }
            Err(e) => tracing::warn!(error = %e, "ignoring a malformed health state"),
        }
    }
    rt.registry.note_health(update.full, notes);
    rt.apply_overrides(update.full, overrides);
    rt.apply_health(update.full, states);
}
