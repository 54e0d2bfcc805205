//! Following the control plane: a `Watch` stream (kind AGENT), a full
//! snapshot when we are behind, then each change at exactly the next
//! revision. Every applied revision is published to the prober and
//! reported with `ReportApplied` (by a separate task, so a slow control
//! plane never holds up the stream). On any error the agent keeps probing
//! what it has and reconnects with jittered exponential back-off, rotating
//! over the endpoints. Health events are not the agent's business and are
//! skipped.

use std::sync::Arc;
use std::time::Duration;

use tandem_core::{Revision, Snapshot};
use tandem_proto::convert::{change_from_proto, snapshot_from_proto};
use tandem_proto::v1::{
    self, NodeKind, ReportAppliedRequest, WatchRequest, control_plane_client::ControlPlaneClient,
    watch_event::Event,
};
use tokio::sync::watch;
use tonic::transport::Channel;

use crate::control::{Identity, endpoint};

/// How often the applied revision is reported again while it stays the same.
const REPORT_EVERY: Duration = Duration::from_secs(10);

const BACKOFF_MIN: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(10);

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Follows the control plane forever, publishing each applied snapshot.
pub async fn run(endpoints: Vec<String>, me: Identity, out: watch::Sender<Option<Arc<Snapshot>>>) {
    let (report_tx, report_rx) = watch::channel::<Option<(Channel, Revision)>>(None);
    tokio::spawn(report_applied(report_rx, me.clone()));
    let reconnects = metrics::counter!("tandem_agent_watch_reconnects_total");
    let revision = metrics::gauge!("tandem_agent_config_revision");

    let mut current: Option<Snapshot> = None;
    let mut backoff = BACKOFF_MIN;
    let mut next = 0usize;
    let mut force_full = false;
    loop {
        let url = &endpoints[next % endpoints.len()];
        next += 1;
        let from = match (&current, force_full) {
            (Some(s), false) => s.revision,
            _ => Revision::ZERO,
        };
        let publish = |s: &Snapshot, channel: &Channel| {
            revision.set(s.revision.0 as f64);
            out.send_replace(Some(Arc::new(s.clone())));
            report_tx.send_replace(Some((channel.clone(), s.revision)));
        };
        match follow(url, &me, from, &mut current, publish).await {
            Ok(Progress::Applied) => {
                force_full = false;
                backoff = BACKOFF_MIN;
            }
            Ok(Progress::Diverged) => {
                force_full = true;
                backoff = BACKOFF_MIN;
            }
            Ok(Progress::Nothing) => {}
            Err(e) => {
                tracing::warn!(endpoint = %url, error = %e, "control plane unavailable; probing the last known targets")
            }
        }
        reconnects.increment(1);
        // Full jitter: a random time up to the current back-off, so agents
        // that lost the same replica do not come back in step.
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
    /// Nothing applied.
    Nothing,
}

async fn follow(
    url: &str,
    me: &Identity,
    from: Revision,
    current: &mut Option<Snapshot>,
    publish: impl Fn(&Snapshot, &Channel),
) -> Result<Progress, BoxError> {
    let channel = endpoint(url)?.connect().await?;
    let mut client = ControlPlaneClient::new(channel.clone());
    let mut req = tonic::Request::new(WatchRequest {
        node_id: me.node_id.clone(),
        kind: NodeKind::Agent.into(),
        last_revision: from.0,
        zone: me.zone.clone(),
    });
    me.authorize(&mut req)?;
    let mut stream = client.watch(req).await?.into_inner();
    tracing::info!(endpoint = %url, from_revision = from.0, "watching the control plane");

    let mut progress = Progress::Nothing;
    if current.is_none() {
        // A control plane with nothing declared yet (revision 0) sends no
        // snapshot to a caller at 0: we are up to date with an empty
        // configuration. Otherwise its snapshot follows and replaces this.
        let empty = Snapshot::default();
        publish(&empty, &channel);
        *current = Some(empty);
    }
    while let Some(event) = stream.message().await? {
        match apply(current, &event) {
            Ok(false) => {}
            Ok(true) => {
                if let Some(s) = current.as_ref() {
                    tracing::debug!(revision = s.revision.0, "configuration applied");
                    publish(s, &channel);
                }
                progress = Progress::Applied;
            }
            Err(why) => {
                tracing::warn!(revision = event.revision, reason = %why, "change does not apply; asking for a fresh snapshot");
                return Ok(Progress::Diverged);
            }
        }
    }
    tracing::info!(endpoint = %url, "watch stream ended");
    Ok(progress)
}

/// Applies one event; `Ok(true)` when the configuration moved.
pub(crate) fn apply(
    current: &mut Option<Snapshot>,
    event: &v1::WatchEvent,
) -> Result<bool, String> {
    match &event.event {
        Some(Event::Snapshot(s)) => {
            let mut snapshot = snapshot_from_proto(s).map_err(|e| e.to_string())?;
            snapshot.revision = Revision(event.revision);
            *current = Some(snapshot);
            Ok(true)
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
            Ok(true)
        }
        Some(Event::Health(_)) => Ok(false),
        None => Err("an empty watch event".into()),
    }
}

/// Reports the latest applied revision, coalescing bursts: the watch loop
/// only overwrites the value, this task sends the newest.
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
            kind: NodeKind::Agent.into(),
            revision: revision.0,
            zone: me.zone.clone(),
            detail: "probing".into(),
        });
        req.set_timeout(Duration::from_secs(5));
        if me.authorize(&mut req).is_err() {
            continue;
        }
        let mut client = ControlPlaneClient::new(channel);
        match tokio::time::timeout(Duration::from_secs(5), client.report_applied(req)).await {
            Ok(Ok(_)) => tracing::debug!(revision = revision.0, "reported applied revision"),
            Ok(Err(e)) => {
                tracing::debug!(revision = revision.0, error = %e, "ReportApplied failed; will report again")
            }
            Err(_) => tracing::debug!(revision = revision.0, "ReportApplied timed out"),
        }
    }
}

#[cfg(test)]
mod tests {
    use tandem_proto::v1::config_change::Change;

    use super::*;

    fn change(revision: u64, c: Change) -> v1::WatchEvent {
        v1::WatchEvent {
            revision,
            event: Some(Event::Change(v1::ConfigChange { change: Some(c) })),
        }
    }

    #[test]
    fn snapshot_then_changes_in_order_and_a_gap_is_refused() {
        let mut cur = None;
        let snap = v1::WatchEvent {
            revision: 1,
            event: Some(Event::Snapshot(v1::Snapshot {
                revision: 1,
                pools: vec![v1::Pool {
                    name: "shop".into(),
                    ..Default::default()
                }],
                routes: vec![],
            })),
        };
        assert_eq!(apply(&mut cur, &snap), Ok(true));
        let add = change(
            2,
            Change::BackendUpserted(v1::BackendUpserted {
                pool: "shop".into(),
                backend: Some(v1::Backend {
                    address: "10.0.0.1:80".into(),
                    ..Default::default()
                }),
            }),
        );
        assert_eq!(apply(&mut cur, &add), Ok(true));
        assert_eq!(cur.as_ref().map(|s| s.revision), Some(Revision(2)));

        // Health events do not move the configuration.
        let health = v1::WatchEvent {
            revision: 2,
            event: Some(Event::Health(v1::HealthUpdate::default())),
        };
        assert_eq!(apply(&mut cur, &health), Ok(false));

        // Revision 4 after 2, or a backend of an unknown pool: refused, and
        // nothing changed.
        let gap = change(4, Change::PoolDeleted("shop".into()));
        assert!(apply(&mut cur, &gap).is_err());
        let unknown = change(
            3,
            Change::BackendRemoved(v1::BackendRemoved {
                pool: "ghost".into(),
                address: "10.0.0.1:80".into(),
            }),
        );
        assert!(apply(&mut cur, &unknown).is_err());
        let s = cur.unwrap();
        assert_eq!(s.revision, Revision(2));
        assert_eq!(s.pools.values().next().map(|p| p.backends.len()), Some(1));

        let mut empty = None;
        assert!(
            apply(&mut empty, &add).is_err(),
            "a change before any snapshot"
        );
    }
}
