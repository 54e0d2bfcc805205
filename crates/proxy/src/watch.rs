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
use tandem_core::{Revision, Snapshot};
use tandem_proto::convert::{backend_health_from_proto, change_from_proto, snapshot_from_proto};
use tandem_proto::v1::{
    self, NodeKind, ReportAppliedRequest, WatchRequest, control_plane_client::ControlPlaneClient,
    watch_event::Event,
};
use tokio::sync::watch;
use tonic::transport::{Channel, Endpoint};

use crate::Runtime;
use crate::table::Source;

/// Who we are to the control plane.
#[derive(Debug, Clone)]
pub struct Identity {
    pub node_id: String,
    pub zone: String,
    pub token: Option<String>,
}

/// How often the applied revision is reported again while it stays the same.
const REPORT_EVERY: Duration = Duration::from_secs(10);

const BACKOFF_MIN: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(10);
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
    tokio::spawn(report_applied(report_rx, me.clone()));
    let reconnects = metrics::counter!("tandem_proxy_watch_reconnects_total");

    let mut current = initial;
    let mut backoff = BACKOFF_MIN;
    let mut next = 0usize;
    let mut force_full = false;
    let mut failures = 0u64;
    loop {
        let url = &endpoints[next % endpoints.len()];
        next += 1;
        let from = if force_full {
            Revision::ZERO
        } else {
            current.as_ref().map_or(Revision::ZERO, |s| s.revision)
        };
        let outcome = follow(&rt, url, &me, from, &mut current, &report_tx).await;
        rt.following.store(false, Ordering::Relaxed);
        match outcome {
            Ok(Progress::Applied) => {
                force_full = false;
                backoff = BACKOFF_MIN;
                failures = 0;
            }
            Ok(Progress::Diverged) => {
                force_full = true;
                backoff = BACKOFF_MIN;
            }
            Ok(Progress::Nothing) => {}
            Err(e) => {
                failures += 1;
                // Loud on the first failure, then every tenth: a long outage
                // should not flood the logs.
                if failures == 1 || failures.is_multiple_of(10) {
                    tracing::warn!(endpoint = %url, error = %chain(&*e), attempts = failures, "control plane unavailable; serving the last configuration");
                } else {
                    tracing::debug!(endpoint = %url, error = %chain(&*e), "control plane unavailable");
                }
            }
        }
        reconnects.increment(1);
        // Full jitter: sleep a random time up to the current back-off.
        let sleep = backoff.mul_f64(rand::random::<f64>()).max(BACKOFF_MIN / 2);
        tokio::time::sleep(sleep).await;
        backoff = (backoff * 2).min(BACKOFF_MAX);
    }
}

enum Progress {
    /// The stream ended after applying at least one event.
    Applied,
    /// A change did not fit: ask for a fresh snapshot.
    Diverged,
    /// Nothing applied (the stream ended at once).
    Nothing,
}

async fn follow(
    rt: &Runtime,
    url: &str,
    me: &Identity,
    from: Revision,
    current: &mut Option<Snapshot>,
    report: &watch::Sender<Option<(Channel, Revision)>>,
) -> Result<Progress, Box<dyn std::error::Error + Send + Sync>> {
    let channel = Endpoint::from_shared(url.to_string())?
        .connect_timeout(Duration::from_secs(3))
        .tcp_nodelay(true)
        .http2_keep_alive_interval(Duration::from_secs(10))
        .keep_alive_timeout(Duration::from_secs(5))
        .keep_alive_while_idle(true)
        .connect()
        .await?;
    let mut client = ControlPlaneClient::new(channel.clone());
    let mut req = tonic::Request::new(WatchRequest {
        node_id: me.node_id.clone(),
        kind: NodeKind::Proxy.into(),
        last_revision: from.0,
        zone: me.zone.clone(),
    });
    authorize(&mut req, me)?;
    let mut stream = client.watch(req).await?.into_inner();
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
            match apply(current, &event) {
                Ok(()) => changed = true,
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

fn apply(current: &mut Option<Snapshot>, event: &v1::WatchEvent) -> Result<(), String> {
    match &event.event {
        Some(Event::Snapshot(s)) => {
            let mut snapshot = snapshot_from_proto(s).map_err(|e| e.to_string())?;
            snapshot.revision = Revision(event.revision);
            *current = Some(snapshot);
            Ok(())
        }
        Some(Event::Change(c)) => {
            let change = change_from_proto(c).map_err(|e| e.to_string())?;
            let s = current
                .as_mut()
                .ok_or_else(|| "a change arrived before any snapshot".to_string())?;
            // Apply to a copy: a change that fails leaves nothing half-done.
            let mut next = s.clone();
            next.apply(Revision(event.revision), &change)
                .map_err(|e| e.to_string())?;
            *s = next;
            Ok(())
        }
        Some(Event::Health(_)) => Ok(()),
        None => Err("an empty watch event".into()),
    }
}

/// Committed active-health states (from the agents, via raft): unhealthy
/// backends stop taking traffic. They do not change the config revision.
fn apply_health(rt: &Runtime, update: &v1::HealthUpdate) {
    let mut states = Vec::with_capacity(update.backends.len());
    for b in &update.backends {
        match backend_health_from_proto(b) {
            Ok((key, health)) => {
                if health.state == tandem_core::health::HealthState::Unhealthy {
                    tracing::warn!(pool = %key.pool, backend = %key.address, reason = %health.reason, "backend marked unhealthy by the agents");
                }
                states.push((key.pool, key.address, health.state));
            }
            Err(e) => tracing::warn!(error = %e, "ignoring a malformed health state"),
        }
    }
    rt.registry.apply_health(update.full, states);
}

fn authorize<T>(req: &mut tonic::Request<T>, me: &Identity) -> Result<(), tonic::Status> {
    if let Some(token) = &me.token {
        let v = format!("Bearer {token}").parse().map_err(|_| {
            tonic::Status::invalid_argument("TANDEM_TOKEN is not a valid header value")
        })?;
        req.metadata_mut().insert("authorization", v);
    }
    Ok(())
}

/// Reports the latest applied revision, coalescing bursts: the watch loop
/// only overwrites the value, this task sends what is newest.
async fn report_applied(mut rx: watch::Receiver<Option<(Channel, Revision)>>, me: Identity) {
    // Report each new revision at once, and the current one again every
    // REPORT_EVERY: the control plane's "last seen" stays fresh and a
    // failed report is retried.
    let mut tick = tokio::time::interval(REPORT_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            changed = rx.changed() => if changed.is_err() { return },
            _ = tick.tick() => {}
        }
        let Some((channel, revision)) = rx.borrow_and_update().clone() else {
            continue;
        };
        let mut req = tonic::Request::new(ReportAppliedRequest {
            node_id: me.node_id.clone(),
            kind: NodeKind::Proxy.into(),
            revision: revision.0,
            zone: me.zone.clone(),
            detail: "serving from the control plane".into(),
        });
        req.set_timeout(Duration::from_secs(5));
        if authorize(&mut req, &me).is_err() {
            continue;
        }
        match ControlPlaneClient::new(channel).report_applied(req).await {
            Ok(_) => tracing::debug!(revision = revision.0, "reported applied revision"),
            Err(e) => {
                tracing::debug!(revision = revision.0, error = %e, "ReportApplied failed; will report again")
            }
        }
    }
}

/// An error with its causes: "transport error: connection refused".
fn chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let text = s.to_string();
        if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        source = s.source();
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use tandem_proto::convert::{change_to_proto, snapshot_to_proto};

    #[test]
    fn events_apply_in_order_and_a_gap_is_refused() {
        let mut current = None;
        let base = Snapshot {
            revision: Revision(3),
            ..Default::default()
        };
        let snap = v1::WatchEvent {
            revision: 3,
            event: Some(Event::Snapshot(snapshot_to_proto(&base))),
        };
        apply(&mut current, &snap).unwrap();
        let change = |revision| v1::WatchEvent {
            revision,
            event: Some(Event::Change(change_to_proto(
                &tandem_core::ConfigChange::PoolUpserted(tandem_core::PoolConfig::new(
                    tandem_core::PoolName::new("shop").unwrap(),
                )),
            ))),
        };
        apply(&mut current, &change(4)).unwrap();
        assert_eq!(current.as_ref().unwrap().revision, Revision(4));
        // Revision 6 after 4: the stream skipped one; nothing changes.
        assert!(apply(&mut current, &change(6)).is_err());
        assert_eq!(current.as_ref().unwrap().revision, Revision(4));
        let mut none = None;
        assert!(
            apply(&mut none, &change(1)).is_err(),
            "a change needs a snapshot first"
        );
    }
}
